/*
 * What kind of network an address is on, for the oauth child's check of the
 * address libcurl is about to connect to (daemon/oauth/fetch.c) and for the
 * keeper's and the config's view of a server URL's host.
 *
 * Classes: public (what the Internet routes); loopback (127/8, ::1);
 * private (RFC 1918, 100.64/10 shared address space, fc00::/7 unique local,
 * fec0::/10 site-local, 64:ff9b:1::/48 local-use NAT64); link-local
 * (169.254/16, fe80::/10); unspecified (0/8, ::); multicast (224/4,
 * ff00::/8); reserved (240/4 and the broadcast address, 192.0.0/24, the
 * documentation and benchmarking ranges, IPv6 outside 2000::/3, 2001:db8::/32,
 * 100::/64 and the deprecated IPv4-compatible ::/96). An IPv4-mapped
 * (::ffff:0:0/96), NAT64 (64:ff9b::/96) or 6to4 (2002::/16) address is the
 * class of the IPv4 address it carries.
 *
 * Touches nothing: no allocation, no resolution.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct in6_addr;

enum addr_class {
	ADDR_PUBLIC,
	ADDR_LOOPBACK,
	ADDR_PRIVATE,
	ADDR_LINK_LOCAL,
	ADDR_UNSPECIFIED,
	ADDR_MULTICAST,
	ADDR_RESERVED,
};

/* An IPv4 address in host byte order. */
enum addr_class addr_class_v4(uint32_t a);
enum addr_class addr_class_v6(const struct in6_addr *a);
/* AF_INET or AF_INET6; any other family (or a short len) is reserved. */
enum addr_class addr_class_sockaddr(const struct sockaddr *sa, socklen_t len);

/* "public", "loopback", "private", "link-local", "unspecified",
 * "multicast", "reserved". */
const char *addr_class_name(enum addr_class c);
/* The reverse: 0, or -EINVAL for a name that is none of those. */
int addr_class_parse(const char *name, enum addr_class *out);

/*
 * The class of a URL host as written (len bytes, "[...]" for IPv6, an
 * IPv6 zone "%25..." ignored): an IPv4 or IPv6 literal's class;
 * "localhost", a name under ".localhost" (RFC 6761) and either with a final
 * dot loopback; any other name public, since what it resolves to is not
 * known here.
 */
enum addr_class addr_class_host(const char *host, size_t len);

/*
 * The host of an http:// or https:// URL (after any user info, before the
 * port): 0 with *host pointing into url and *len, *https telling the
 * scheme; -EINVAL when url is not an http(s) URL with a host.
 */
int addr_url_host(const char *url, const char **host, size_t *len, bool *https);

/* Plain http:// to a host that addr_class_host() does not call loopback:
 * what an OAuth bearer token must not travel over without the config's
 * allow_insecure_http. False for https and for anything unparsable. */
bool addr_url_insecure_http(const char *url);
