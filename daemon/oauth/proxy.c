/*
 * Which proxy, if any, an OAuth request goes through: the environment's
 * proxy variables as libcurl reads them (https_proxy or HTTPS_PROXY for
 * https, http_proxy for http, then all_proxy or ALL_PROXY; no_proxy or
 * NO_PROXY), decided here rather than by libcurl so that fetch.c knows
 * whether a connection goes to the proxy (whose address is the
 * administrator's choice) or to the host itself (whose address the policy
 * checks). A loopback host never goes through a proxy: no proxy can reach
 * this machine's loopback.
 *
 * What it may touch: the environment, read only.
 */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "addr.h"
#include "oauth.h"

static const char *env_first(const char *a, const char *b)
{
	const char *v = getenv(a);

	if ((!v || !*v) && b)
		v = getenv(b);
	return v && *v ? v : NULL;
}

/* Whether host (len bytes, as written in the URL) matches an entry of
 * no_proxy: "*", or a name equal to host or a parent domain of it (a
 * leading dot allowed), an IP literal written the same way; ":port" and
 * case are ignored. */
static bool no_proxy_matches(const char *list, const char *host, size_t len)
{
	const char *p = list;

	if (len > 2 && host[0] == '[') {
		host++;
		len -= 2;
	}
	while (*p) {
		size_t n = strcspn(p, ", \t"), m = n;
		const char *e = p;

		if (n == 1 && *e == '*')
			return true;
		if (m && *e == '[') {
			const char *close = memchr(e, ']', m);

			if (close) {
				e++;
				m = (size_t)(close - e);
			}
		} else if (memchr(e, ':', m) && memchr(e, ':', m) == memrchr(e, ':', m)) {
			m = (size_t)((const char *)memchr(e, ':', m) - e);	/* name:port */
		}
		if (m && *e == '.') {
			e++;
			m--;
		}
		if (m && m <= len && strncasecmp(host + len - m, e, m) == 0 &&
		    (m == len || host[len - m - 1] == '.'))
			return true;
		p += n;
		p += strspn(p, ", \t");
	}
	return false;
}

const char *proxy_for_url(const char *url)
{
	const char *host, *proxy, *no;
	size_t len;
	bool https;

	if (addr_url_host(url, &host, &len, &https) < 0 || addr_class_host(host, len) == ADDR_LOOPBACK)
		return NULL;
	proxy = https ? env_first("https_proxy", "HTTPS_PROXY") : env_first("http_proxy", NULL);
	if (!proxy)
		proxy = env_first("all_proxy", "ALL_PROXY");
	if (!proxy)
		return NULL;
	no = env_first("no_proxy", "NO_PROXY");
	return no && no_proxy_matches(no, host, len) ? NULL : proxy;
}
