/*
 * The HTTP API's listening socket (listen.h): parsing the address, binding
 * it, and checking one that was inherited (from the keeper, or from
 * systemd's socket activation).
 *
 * What it may touch: the sockets it is given or makes.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "listen.h"
#include "util.h"

union listen_addr {
	struct sockaddr sa;
	struct sockaddr_in in;
	struct sockaddr_in6 in6;
	struct sockaddr_storage ss;
};

int listen_parse(const char *listen, char *host, size_t host_len, int *port)
{
	const char *colon;
	char *end;
	long p;

	if (strncmp(listen, "127.0.0.1:", 10) == 0) {
		snprintf(host, host_len, "127.0.0.1");
		colon = listen + 9;
	} else if (strncmp(listen, "[::1]:", 6) == 0) {
		snprintf(host, host_len, "::1");
		colon = listen + 5;
	} else {
		return -EINVAL;
	}
	if (colon[1] < '0' || colon[1] > '9')
		return -EINVAL;
	errno = 0;
	p = strtol(colon + 1, &end, 10);
	if (errno || *end || p < 0 || p > 65535)
		return -EINVAL;
	*port = (int)p;
	return 0;
}

int listen_open(const char *host, int port, int *bound)
{
	union listen_addr a;
	socklen_t alen;
	int fd, one = 1, r;
	bool v6 = strchr(host, ':') != NULL;

	memset(&a, 0, sizeof(a));
	if (v6) {
		a.in6.sin6_family = AF_INET6;
		a.in6.sin6_port = htons((uint16_t)port);
		if (inet_pton(AF_INET6, host, &a.in6.sin6_addr) != 1)
			return -EINVAL;
		alen = sizeof(a.in6);
	} else {
		a.in.sin_family = AF_INET;
		a.in.sin_port = htons((uint16_t)port);
		if (inet_pton(AF_INET, host, &a.in.sin_addr) != 1)
			return -EINVAL;
		alen = sizeof(a.in);
	}
	fd = socket(a.sa.sa_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	/* SO_REUSEADDR lets a restart bind over TIME_WAIT; a live listener
	 * on the port still gives EADDRINUSE. */
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    (v6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) < 0) ||
	    bind(fd, &a.sa, alen) < 0 || listen(fd, 128) < 0)
		goto fail;
	r = listen_describe(fd, (char[64]){ 0 }, 64, bound);
	if (r < 0) {
		fd_close(fd);
		return r;
	}
	return fd;
fail:
	r = -errno;
	fd_close(fd);
	return r;
}

int listen_describe(int fd, char *host, size_t host_len, int *port)
{
	union listen_addr a;
	socklen_t alen = sizeof(a), olen;
	int v = 0;

	olen = sizeof(v);
	if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &v, &olen) < 0 || v != SOCK_STREAM)
		return -ENOTSOCK;
	olen = sizeof(v);
	if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &v, &olen) < 0 || !v)
		return -ENOTSOCK;
	if (getsockname(fd, &a.sa, &alen) < 0)
		return -ENOTSOCK;
	if (a.sa.sa_family == AF_INET && a.in.sin_addr.s_addr == htonl(INADDR_LOOPBACK)) {
		snprintf(host, host_len, "127.0.0.1");
		*port = ntohs(a.in.sin_port);
		return 0;
	}
	if (a.sa.sa_family == AF_INET6 && IN6_IS_ADDR_LOOPBACK(&a.in6.sin6_addr)) {
		snprintf(host, host_len, "::1");
		*port = ntohs(a.in6.sin6_port);
		return 0;
	}
	if (a.sa.sa_family == AF_INET || a.sa.sa_family == AF_INET6)
		return -EADDRNOTAVAIL;
	return -ENOTSOCK;
}

void listen_format(const char *host, int port, char *buf, size_t len)
{
	if (strchr(host, ':'))
		snprintf(buf, len, "[%s]:%d", host, port);
	else
		snprintf(buf, len, "%s:%d", host, port);
}
