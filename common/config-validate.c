/*
 * What a value from the config file may be, where the rule is more than its
 * JSON type: upstream and resource URLs, the HTTP API's listen address,
 * server names and header names. Each check takes a string and says what is
 * wrong with it; the caller names the file and field (config-field.c).
 *
 * Touches nothing: no JSON, no parser state, no allocation.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <string.h>
#include <strings.h>

#include "config-private.h"

#define CONFIG_URL_MAX 4096

static bool port_parse(const char *s, size_t len, int *port)
{
	int v = 0;

	if (len == 0 || len > 5)
		return false;
	for (size_t i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		v = v * 10 + (s[i] - '0');
	}
	*port = v;
	return true;
}

/* NULL when u is usable as an upstream or resource URL, else the problem. */
const char *config_url_problem(const char *u)
{
	const char *host, *end, *colon = NULL;
	int port;

	if (strncasecmp(u, "http://", 7) == 0)
		host = u + 7;
	else if (strncasecmp(u, "https://", 8) == 0)
		host = u + 8;
	else
		return "must be an http or https URL";
	if (strlen(u) > CONFIG_URL_MAX)
		return "must be an http or https URL of at most 4096 characters";
	for (const char *q = u; *q; q++)
		if ((unsigned char)*q <= 0x20 || *q == 0x7f)
			return "must be an http or https URL (no spaces or control characters)";

	end = host + strcspn(host, "/?#");
	if (end == host)
		return "must be an http or https URL (no host)";
	/* Credentials in the URL would end up in every log line naming it. */
	if (memchr(host, '@', (size_t)(end - host)))
		return "must not contain credentials; use headers or oauth";
	if (strchr(u, '#'))
		return "must not contain a fragment";

	if (*host == '[') {
		const char *close = memchr(host, ']', (size_t)(end - host));

		if (!close || close == host + 1)
			return "must be an http or https URL (bad IPv6 address)";
		if (close + 1 < end) {
			if (close[1] != ':')
				return "must be an http or https URL (bad host)";
			colon = close + 1;
		}
	} else {
		colon = memchr(host, ':', (size_t)(end - host));
		if (colon == host)
			return "must be an http or https URL (no host)";
	}
	if (colon && (!port_parse(colon + 1, (size_t)(end - colon - 1), &port) || port > 65535))
		return "must be an http or https URL (bad port)";
	return NULL;
}

/*
 * The HTTP API must only be reachable from this machine, and its Host check
 * compares against the address itself, so a numeric loopback address is
 * required (not "localhost", whose resolution varies).
 */
const char *config_listen_problem(const char *s)
{
	static const char *const msg =
		"must be a loopback address and port, e.g. 127.0.0.1:0 or [::1]:8080";
	char host[INET6_ADDRSTRLEN + 1];
	const char *port_s;
	size_t hlen;
	int port;

	if (s[0] == '[') {
		const char *close = strchr(s, ']');
		struct in6_addr a6;

		if (!close || close[1] != ':')
			return msg;
		hlen = (size_t)(close - s - 1);
		if (hlen >= sizeof(host))
			return msg;
		memcpy(host, s + 1, hlen);
		host[hlen] = '\0';
		if (inet_pton(AF_INET6, host, &a6) != 1 || !IN6_IS_ADDR_LOOPBACK(&a6))
			return msg;
		port_s = close + 2;
	} else {
		const char *colon = strrchr(s, ':');
		struct in_addr a4;

		if (!colon)
			return msg;
		hlen = (size_t)(colon - s);
		if (hlen >= sizeof(host))
			return msg;
		memcpy(host, s, hlen);
		host[hlen] = '\0';
		if (inet_pton(AF_INET, host, &a4) != 1 || (ntohl(a4.s_addr) >> 24) != 127)
			return msg;
		port_s = colon + 1;
	}
	if (!port_parse(port_s, strlen(port_s), &port))
		return msg;
	if (port > 65535)
		return "port must be between 0 and 65535";
	return NULL;
}

/* A server name: CONFIG_NAME_RULE. */
bool config_name_valid(const char *s)
{
	size_t len = strlen(s);

	if (len == 0 || len > CONFIG_NAME_MAX || s[0] == '.' || s[0] == '-')
		return false;
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;

		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
		      (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' || ch == '-'))
			return false;
	}
	return true;
}

/* RFC 9110 token characters: what a header field name may consist of. */
bool config_header_name_valid(const char *s)
{
	if (!*s)
		return false;
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;

		if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9'))
			continue;
		if (!strchr("!#$%&'*+-.^_`|~", ch))
			return false;
	}
	return true;
}
