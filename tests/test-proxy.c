/*
 * daemon/oauth/proxy.c: which proxy an OAuth request goes through, from the
 * environment as libcurl reads it: the scheme's variable (lower case, or
 * HTTPS_PROXY), then all_proxy; no_proxy's names, parent domains, literals
 * and "*"; loopback never through a proxy.
 */
#include <stdlib.h>
#include <string.h>

#include "oauth.h"
#include "test.h"

static const char *const vars[] = { "https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY",
				    "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY" };

static void clear(void)
{
	for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++)
		unsetenv(vars[i]);
}

static bool is(const char *url, const char *want)
{
	const char *got = proxy_for_url(url);

	return want ? got && strcmp(got, want) == 0 : got == NULL;
}

int main(void)
{
	TEST("no variable: no proxy");
	clear();
	CHECK(is("https://mcp.example.com/mcp", NULL));

	TEST("the scheme's variable; plain http reads only the lower-case one, as libcurl");
	setenv("https_proxy", "http://proxy:3128", 1);
	CHECK(is("https://mcp.example.com/mcp", "http://proxy:3128"));
	CHECK(is("http://mcp.example.com/mcp", NULL));
	setenv("HTTP_PROXY", "http://upper:1", 1);
	CHECK(is("http://mcp.example.com/mcp", NULL));
	setenv("http_proxy", "http://lower:2", 1);
	CHECK(is("http://mcp.example.com/mcp", "http://lower:2"));
	clear();
	setenv("HTTPS_PROXY", "http://upper:3", 1);
	CHECK(is("https://mcp.example.com/mcp", "http://upper:3"));
	setenv("https_proxy", "", 1);
	CHECK(is("https://mcp.example.com/mcp", "http://upper:3"));

	TEST("all_proxy when the scheme has none");
	clear();
	setenv("ALL_PROXY", "socks5h://all:1080", 1);
	CHECK(is("http://mcp.example.com/mcp", "socks5h://all:1080"));
	CHECK(is("https://mcp.example.com/mcp", "socks5h://all:1080"));

	TEST("loopback never goes through a proxy");
	CHECK(is("http://127.0.0.1:8080/mcp", NULL));
	CHECK(is("https://[::1]/mcp", NULL));
	CHECK(is("http://localhost:9/mcp", NULL));
	CHECK(is("http://a.localhost/mcp", NULL));
	CHECK(is("not a url", NULL));

	TEST("no_proxy: names, parent domains, ports, literals, case, \"*\"");
	setenv("no_proxy", " .corp.example , Other.Test:443,10.1.2.3,[2001:db8::1]", 1);
	CHECK(is("https://corp.example/x", NULL));
	CHECK(is("https://a.b.corp.example/x", NULL));
	CHECK(is("https://xcorp.example/x", "socks5h://all:1080"));
	CHECK(is("https://other.test/x", NULL));
	CHECK(is("https://sub.OTHER.test:8443/x", NULL));
	CHECK(is("https://nother.test/x", "socks5h://all:1080"));
	CHECK(is("http://10.1.2.3/x", NULL));
	CHECK(is("http://10.1.2.33/x", "socks5h://all:1080"));
	CHECK(is("https://[2001:db8::1]:8443/x", NULL));
	CHECK(is("https://[2001:db8::2]/x", "socks5h://all:1080"));
	CHECK(is("https://example.org/x", "socks5h://all:1080"));
	setenv("no_proxy", "*", 1);
	CHECK(is("https://example.org/x", NULL));
	unsetenv("no_proxy");
	setenv("NO_PROXY", "example.org", 1);
	CHECK(is("https://www.example.org/x", NULL));
	CHECK(is("https://example.com/x", "socks5h://all:1080"));
	clear();
	return 0;
}
