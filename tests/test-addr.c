/*
 * addr.c: which kind of network an address is on (the oauth child refuses
 * connections by it), for IPv4, IPv6 and IPv4 carried in IPv6 (mapped,
 * translated, NAT64, 6to4); URL hosts as written; the plain-http check of
 * server URLs.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#include "addr.h"
#include "test.h"

static enum addr_class of(const char *text)
{
	struct sockaddr_in6 s6 = { .sin6_family = AF_INET6 };
	struct sockaddr_in s4 = { .sin_family = AF_INET };

	if (inet_pton(AF_INET, text, &s4.sin_addr) == 1)
		return addr_class_sockaddr((struct sockaddr *)&s4, sizeof(s4));
	CHECK(inet_pton(AF_INET6, text, &s6.sin6_addr) == 1);
	return addr_class_sockaddr((struct sockaddr *)&s6, sizeof(s6));
}

static enum addr_class host(const char *h)
{
	return addr_class_host(h, strlen(h));
}

static const struct {
	const char *addr;
	enum addr_class cls;
} cases[] = {
	/* IPv4 */
	{ "8.8.8.8", ADDR_PUBLIC },
	{ "1.1.1.1", ADDR_PUBLIC },
	{ "0.0.0.0", ADDR_UNSPECIFIED },
	{ "0.1.2.3", ADDR_UNSPECIFIED },
	{ "127.0.0.1", ADDR_LOOPBACK },
	{ "127.255.255.254", ADDR_LOOPBACK },
	{ "10.0.0.1", ADDR_PRIVATE },
	{ "10.255.255.255", ADDR_PRIVATE },
	{ "11.0.0.1", ADDR_PUBLIC },
	{ "172.16.0.1", ADDR_PRIVATE },
	{ "172.31.255.255", ADDR_PRIVATE },
	{ "172.32.0.1", ADDR_PUBLIC },
	{ "172.15.255.255", ADDR_PUBLIC },
	{ "192.168.1.1", ADDR_PRIVATE },
	{ "192.169.0.1", ADDR_PUBLIC },
	{ "100.64.0.1", ADDR_PRIVATE },
	{ "100.127.255.255", ADDR_PRIVATE },
	{ "100.128.0.1", ADDR_PUBLIC },
	{ "100.63.255.255", ADDR_PUBLIC },
	{ "169.254.169.254", ADDR_LINK_LOCAL },
	{ "169.254.0.1", ADDR_LINK_LOCAL },
	{ "169.255.0.1", ADDR_PUBLIC },
	{ "224.0.0.1", ADDR_MULTICAST },
	{ "239.255.255.250", ADDR_MULTICAST },
	{ "240.0.0.1", ADDR_RESERVED },
	{ "255.255.255.255", ADDR_RESERVED },
	{ "192.0.2.1", ADDR_RESERVED },
	{ "198.18.0.1", ADDR_RESERVED },
	{ "198.51.100.7", ADDR_RESERVED },
	{ "203.0.113.9", ADDR_RESERVED },
	/* IPv6 */
	{ "::", ADDR_UNSPECIFIED },
	{ "::1", ADDR_LOOPBACK },
	{ "::2", ADDR_RESERVED },
	{ "fe80::1", ADDR_LINK_LOCAL },
	{ "febf::1", ADDR_LINK_LOCAL },
	{ "fec0::1", ADDR_PRIVATE },
	{ "fc00::1", ADDR_PRIVATE },
	{ "fd12:3456::1", ADDR_PRIVATE },
	{ "fe00::1", ADDR_RESERVED },
	{ "ff02::1", ADDR_MULTICAST },
	{ "2001:db8::1", ADDR_RESERVED },
	{ "2606:4700:4700::1111", ADDR_PUBLIC },
	{ "2a00:1450::1", ADDR_PUBLIC },
	{ "100::1", ADDR_RESERVED },
	{ "64:ff9b:1::1", ADDR_PRIVATE },
	/* IPv4 carried in IPv6: the class of the IPv4 address */
	{ "::ffff:127.0.0.1", ADDR_LOOPBACK },
	{ "::ffff:169.254.169.254", ADDR_LINK_LOCAL },
	{ "::ffff:10.0.0.1", ADDR_PRIVATE },
	{ "::ffff:192.168.0.1", ADDR_PRIVATE },
	{ "::ffff:100.64.0.1", ADDR_PRIVATE },
	{ "::ffff:0.0.0.0", ADDR_UNSPECIFIED },
	{ "::ffff:8.8.8.8", ADDR_PUBLIC },
	{ "::ffff:0:127.0.0.1", ADDR_LOOPBACK },
	{ "64:ff9b::169.254.169.254", ADDR_LINK_LOCAL },
	{ "64:ff9b::8.8.8.8", ADDR_PUBLIC },
	{ "2002:a9fe:a9fe::1", ADDR_LINK_LOCAL },
	{ "2002:0a00:0001::1", ADDR_PRIVATE },
	{ "2002:0808:0808::1", ADDR_PUBLIC },
	{ "::127.0.0.1", ADDR_RESERVED },
};

int main(void)
{
	enum addr_class c;
	const char *h;
	size_t len;
	bool https;

	TEST("addresses: IPv4, IPv6, IPv4-mapped and other carried IPv4");
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		if (of(cases[i].addr) != cases[i].cls) {
			fprintf(stderr, "%s: %s, expected %s\n", cases[i].addr, addr_class_name(of(cases[i].addr)),
				addr_class_name(cases[i].cls));
			return 1;
		}
	}

	TEST("a family that is neither IPv4 nor IPv6, or a short address, is reserved");
	{
		struct sockaddr_in s4 = { .sin_family = AF_INET };
		struct sockaddr sa = { .sa_family = AF_UNIX };

		inet_pton(AF_INET, "8.8.8.8", &s4.sin_addr);
		CHECK_EQ(addr_class_sockaddr(&sa, sizeof(sa)), ADDR_RESERVED);
		CHECK_EQ(addr_class_sockaddr((struct sockaddr *)&s4, 4), ADDR_RESERVED);
	}

	TEST("class names both ways");
	for (int i = ADDR_PUBLIC; i <= ADDR_RESERVED; i++) {
		CHECK(addr_class_parse(addr_class_name((enum addr_class)i), &c) == 0);
		CHECK_EQ(c, i);
	}
	CHECK(strcmp(addr_class_name(ADDR_LINK_LOCAL), "link-local") == 0);
	CHECK(addr_class_parse("intranet", &c) < 0);

	TEST("URL hosts as written");
	CHECK_EQ(host("127.0.0.1"), ADDR_LOOPBACK);
	CHECK_EQ(host("[::1]"), ADDR_LOOPBACK);
	CHECK_EQ(host("[::ffff:169.254.169.254]"), ADDR_LINK_LOCAL);
	CHECK_EQ(host("[fe80::1%25eth0]"), ADDR_LINK_LOCAL);
	CHECK_EQ(host("[not-an-address]"), ADDR_RESERVED);
	CHECK_EQ(host("10.0.0.1"), ADDR_PRIVATE);
	CHECK_EQ(host("localhost"), ADDR_LOOPBACK);
	CHECK_EQ(host("LocalHost."), ADDR_LOOPBACK);
	CHECK_EQ(host("app.localhost"), ADDR_LOOPBACK);
	CHECK_EQ(host("notlocalhost"), ADDR_PUBLIC);
	CHECK_EQ(host("localhost.example.com"), ADDR_PUBLIC);
	CHECK_EQ(host("mcp.example.com"), ADDR_PUBLIC);
	/* Not a dotted quad: a name as far as the text goes (libcurl's own
	 * reading of it is what the connection check sees). */
	CHECK_EQ(host("2130706433"), ADDR_PUBLIC);

	TEST("the host of an http(s) URL");
	CHECK(addr_url_host("https://user@[::1]:8443/x?y", &h, &len, &https) == 0);
	CHECK(https && len == 5 && memcmp(h, "[::1]", 5) == 0);
	CHECK(addr_url_host("HTTP://10.0.0.1:80/mcp", &h, &len, &https) == 0);
	CHECK(!https && len == 8 && memcmp(h, "10.0.0.1", 8) == 0);
	CHECK(addr_url_host("http://example.com", &h, &len, &https) == 0);
	CHECK(len == 11);
	CHECK(addr_url_host("ftp://example.com/", &h, &len, &https) < 0);
	CHECK(addr_url_host("http:///path", &h, &len, &https) < 0);
	CHECK(addr_url_host("http://[::1/", &h, &len, &https) < 0);

	TEST("plain http to a host that is not loopback");
	CHECK(addr_url_insecure_http("http://10.0.0.1/mcp"));
	CHECK(addr_url_insecure_http("http://mcp.example.com/mcp"));
	CHECK(addr_url_insecure_http("http://127.0.0.1.nip.io/mcp"));
	CHECK(!addr_url_insecure_http("http://127.0.0.1:8080/mcp"));
	CHECK(!addr_url_insecure_http("http://[::1]:8080/mcp"));
	CHECK(!addr_url_insecure_http("http://localhost/mcp"));
	CHECK(!addr_url_insecure_http("https://10.0.0.1/mcp"));
	CHECK(!addr_url_insecure_http("https://mcp.example.com/mcp"));
	return 0;
}
