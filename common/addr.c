/*
 * See addr.h. The tables are the IANA special-purpose address registries
 * (RFC 6890 and its updates) cut down to what decides a connection: is it
 * the Internet, this machine, a private network or this link.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <strings.h>

#include "addr.h"

struct v4_range {
	uint32_t net;
	unsigned bits;
	enum addr_class cls;
};

static const struct v4_range v4_ranges[] = {
	{ 0x00000000, 8, ADDR_UNSPECIFIED },	/* 0/8 "this network" */
	{ 0x0a000000, 8, ADDR_PRIVATE },	/* 10/8 */
	{ 0x64400000, 10, ADDR_PRIVATE },	/* 100.64/10 shared address space */
	{ 0x7f000000, 8, ADDR_LOOPBACK },	/* 127/8 */
	{ 0xa9fe0000, 16, ADDR_LINK_LOCAL },	/* 169.254/16 */
	{ 0xac100000, 12, ADDR_PRIVATE },	/* 172.16/12 */
	{ 0xc0000000, 24, ADDR_RESERVED },	/* 192.0.0/24 protocol assignments */
	{ 0xc0000200, 24, ADDR_RESERVED },	/* 192.0.2/24 documentation */
	{ 0xc0586300, 24, ADDR_RESERVED },	/* 192.88.99/24 6to4 relay anycast */
	{ 0xc0a80000, 16, ADDR_PRIVATE },	/* 192.168/16 */
	{ 0xc6120000, 15, ADDR_RESERVED },	/* 198.18/15 benchmarking */
	{ 0xc6336400, 24, ADDR_RESERVED },	/* 198.51.100/24 documentation */
	{ 0xcb007100, 24, ADDR_RESERVED },	/* 203.0.113/24 documentation */
	{ 0xe0000000, 4, ADDR_MULTICAST },	/* 224/4 */
	{ 0xf0000000, 4, ADDR_RESERVED },	/* 240/4 and 255.255.255.255 */
};

enum addr_class addr_class_v4(uint32_t a)
{
	for (size_t i = 0; i < sizeof(v4_ranges) / sizeof(v4_ranges[0]); i++) {
		uint32_t mask = ~(uint32_t)0 << (32 - v4_ranges[i].bits);

		if ((a & mask) == v4_ranges[i].net)
			return v4_ranges[i].cls;
	}
	return ADDR_PUBLIC;
}

static uint32_t v4_at(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static bool v6_zero(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i])
			return false;
	return true;
}

enum addr_class addr_class_v6(const struct in6_addr *addr)
{
	static const uint8_t nat64[12] = { 0x00, 0x64, 0xff, 0x9b };
	const uint8_t *b = addr->s6_addr;

	if (v6_zero(b, 10)) {
		/* ::ffff:a.b.c.d (mapped) and ::ffff:0:a.b.c.d (translated). */
		if (b[10] == 0xff && b[11] == 0xff)
			return addr_class_v4(v4_at(b + 12));
		if (b[10] == 0 && b[11] == 0) {
			if (v6_zero(b + 12, 4))
				return ADDR_UNSPECIFIED;
			if (v6_zero(b + 12, 3) && b[15] == 1)
				return ADDR_LOOPBACK;
			return ADDR_RESERVED;	/* IPv4-compatible, deprecated */
		}
	}
	if (v6_zero(b, 8) && b[8] == 0xff && b[9] == 0xff && b[10] == 0 && b[11] == 0)
		return addr_class_v4(v4_at(b + 12));
	if (memcmp(b, nat64, sizeof(nat64)) == 0)
		return addr_class_v4(v4_at(b + 12));	/* 64:ff9b::/96 */
	if (b[0] == 0x00 && b[1] == 0x64 && b[2] == 0xff && b[3] == 0x9b && b[4] == 0x00 && b[5] == 0x01)
		return ADDR_PRIVATE;			/* 64:ff9b:1::/48 local-use NAT64 */
	if (b[0] == 0x01 && b[1] == 0x00 && v6_zero(b + 2, 6))
		return ADDR_RESERVED;			/* 100::/64 discard */
	if (b[0] == 0x20 && b[1] == 0x01 && b[2] == 0x0d && b[3] == 0xb8)
		return ADDR_RESERVED;			/* 2001:db8::/32 documentation */
	if (b[0] == 0x20 && b[1] == 0x02)
		return addr_class_v4(v4_at(b + 2));	/* 2002::/16 6to4 */
	if ((b[0] & 0xfe) == 0xfc)
		return ADDR_PRIVATE;			/* fc00::/7 unique local */
	if (b[0] == 0xfe && (b[1] & 0xc0) == 0x80)
		return ADDR_LINK_LOCAL;			/* fe80::/10 */
	if (b[0] == 0xfe && (b[1] & 0xc0) == 0xc0)
		return ADDR_PRIVATE;			/* fec0::/10 site-local, deprecated */
	if (b[0] == 0xff)
		return ADDR_MULTICAST;
	if ((b[0] & 0xe0) == 0x20)
		return ADDR_PUBLIC;			/* 2000::/3 global unicast */
	return ADDR_RESERVED;
}

enum addr_class addr_class_sockaddr(const struct sockaddr *sa, socklen_t len)
{
	if (sa->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in))
		return addr_class_v4(ntohl(((const struct sockaddr_in *)(const void *)sa)->sin_addr.s_addr));
	if (sa->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6))
		return addr_class_v6(&((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr);
	return ADDR_RESERVED;
}

static const char *const class_names[] = {
	[ADDR_PUBLIC] = "public",	    [ADDR_LOOPBACK] = "loopback",   [ADDR_PRIVATE] = "private",
	[ADDR_LINK_LOCAL] = "link-local", [ADDR_UNSPECIFIED] = "unspecified", [ADDR_MULTICAST] = "multicast",
	[ADDR_RESERVED] = "reserved",
};

const char *addr_class_name(enum addr_class c)
{
	return (size_t)c < sizeof(class_names) / sizeof(class_names[0]) ? class_names[c] : "reserved";
}

int addr_class_parse(const char *name, enum addr_class *out)
{
	for (size_t i = 0; i < sizeof(class_names) / sizeof(class_names[0]); i++) {
		if (strcmp(name, class_names[i]) == 0) {
			*out = (enum addr_class)i;
			return 0;
		}
	}
	return -EINVAL;
}

enum addr_class addr_class_host(const char *host, size_t len)
{
	char buf[256];
	struct in6_addr a6;
	struct in_addr a4;
	size_t n;

	if (len == 0 || len >= sizeof(buf))
		return ADDR_PUBLIC;
	if (host[0] == '[') {
		const char *close = memchr(host, ']', len);

		if (!close)
			return ADDR_RESERVED;
		n = (size_t)(close - host - 1);
		memcpy(buf, host + 1, n);
		buf[n] = '\0';
		buf[strcspn(buf, "%")] = '\0';	/* the zone says which link, not which address */
		return inet_pton(AF_INET6, buf, &a6) == 1 ? addr_class_v6(&a6) : ADDR_RESERVED;
	}
	memcpy(buf, host, len);
	buf[len] = '\0';
	if (inet_pton(AF_INET, buf, &a4) == 1)
		return addr_class_v4(ntohl(a4.s_addr));
	if (inet_pton(AF_INET6, buf, &a6) == 1)
		return addr_class_v6(&a6);
	n = len;
	if (n > 1 && buf[n - 1] == '.')
		buf[--n] = '\0';
	if (strcasecmp(buf, "localhost") == 0 || (n > 10 && strcasecmp(buf + n - 10, ".localhost") == 0))
		return ADDR_LOOPBACK;
	return ADDR_PUBLIC;
}

int addr_url_host(const char *url, const char **host, size_t *len, bool *https)
{
	const char *p, *end, *at;

	if (strncasecmp(url, "https://", 8) == 0) {
		*https = true;
		p = url + 8;
	} else if (strncasecmp(url, "http://", 7) == 0) {
		*https = false;
		p = url + 7;
	} else {
		return -EINVAL;
	}
	end = p + strcspn(p, "/?#");
	for (at = end; at > p && at[-1] != '@'; at--)
		;
	if (at > p)
		p = at;
	if (*p == '[') {
		const char *close = memchr(p, ']', (size_t)(end - p));

		if (!close)
			return -EINVAL;
		end = close + 1;
	} else {
		const char *colon = memchr(p, ':', (size_t)(end - p));

		if (colon)
			end = colon;
	}
	if (end == p)
		return -EINVAL;
	*host = p;
	*len = (size_t)(end - p);
	return 0;
}

bool addr_url_insecure_http(const char *url)
{
	const char *host;
	size_t len;
	bool https;

	if (addr_url_host(url, &host, &len, &https) < 0 || https)
		return false;
	return addr_class_host(host, len) != ADDR_LOOPBACK;
}
