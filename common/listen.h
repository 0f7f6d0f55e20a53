/*
 * The HTTP API's listening socket: "127.0.0.1:PORT" or "[::1]:PORT",
 * loopback only. The keeper binds it once and hands it to every http child
 * it starts (fd CHILD_FD_LISTEN), so the address (a port 0 picked by the
 * kernel too) outlives the child's restarts; or it comes from systemd.
 */
#pragma once

#include <stddef.h>

/* The host ("127.0.0.1" or "::1") and port of a listen address: 0, or
 * -EINVAL for anything else. */
int listen_parse(const char *listen, char *host, size_t host_len, int *port);

/* Binds host:port and listens (close-on-exec, non-blocking): the socket,
 * or a negative errno value. *bound is the port bound. */
int listen_open(const char *host, int port, int *bound);

/* What an inherited socket is: a listening TCP socket on 127.0.0.1 or ::1.
 * 0 with its host and port, -ENOTSOCK for anything else, -EADDRNOTAVAIL
 * for a listener that is not on loopback. */
int listen_describe(int fd, char *host, size_t host_len, int *port);

/* "127.0.0.1:PORT" or "[::1]:PORT". */
void listen_format(const char *host, int port, char *buf, size_t len);
