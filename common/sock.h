/*
 * Unix stream sockets: listen, connect, peer credentials and descriptor
 * passing. Every descriptor this module creates is close-on-exec and
 * non-blocking unless the function says otherwise.
 */
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Named outcomes (positive) the caller must decide on. */
#define SOCK_E_IN_USE 1 /* another process answers on that path */

/*
 * Binds and listens on path with the given mode (chmod after bind).
 * A socket file nobody answers on (stale) is replaced; a live one gives
 * SOCK_E_IN_USE and leaves it alone; a path that exists and is not a socket
 * gives -EEXIST. Returns 0 and *fd, or a negative errno value.
 */
int sock_listen_unix(const char *path, mode_t mode, int backlog, int *fd);

/* Connects (blocking connect, then the descriptor is made non-blocking when
 * nonblock is set). Returns 0 and *fd, or a negative errno value
 * (-ENOENT, -ECONNREFUSED, -EACCES, -ENAMETOOLONG ...). */
int sock_connect_unix(const char *path, int nonblock, int *fd);

/* SO_PEERCRED of a connected Unix socket. */
int sock_peer_cred(int fd, pid_t *pid, uid_t *uid, gid_t *gid);

/*
 * SO_PEERGROUPS: the peer's supplementary groups at connect time, in a
 * malloc'ed array (*groups, *n). Returns 0, or a negative errno value
 * (-ENOPROTOOPT on kernels without SO_PEERGROUPS).
 */
int sock_peer_groups(int fd, gid_t **groups, size_t *n);

/*
 * Sends len bytes (len >= 1) with one descriptor attached (SCM_RIGHTS).
 * Retries on EINTR; returns 0 when all bytes went in one sendmsg, -EAGAIN
 * when the socket is full, another negative errno value otherwise.
 */
int sock_send_fd(int fd, int pass_fd, const void *data, size_t len);
/* The same with n descriptors (1 to 8) attached, in that order. */
int sock_send_fds(int fd, const int *pass_fds, size_t n, const void *data, size_t len);

/*
 * Receives up to len bytes and at most one descriptor. *received is the byte
 * count (0 at end of stream), *pass_fd the descriptor made close-on-exec or -1
 * when none came. Extra descriptors and truncated control data are closed and
 * reported as -EBADMSG. Returns 0 or a negative errno value (-EAGAIN).
 */
int sock_recv_fd(int fd, void *data, size_t len, size_t *received, int *pass_fd);
/* The same with up to max descriptors (at most 8): *n of them in pass_fds,
 * in the order they were sent; more than max is -EBADMSG. */
int sock_recv_fds(int fd, void *data, size_t len, size_t *received, int *pass_fds, size_t max, size_t *n);

/* socketpair(AF_UNIX, SOCK_STREAM) with both ends close-on-exec;
 * nonblock applies to both. */
int sock_pair(int nonblock, int fds[2]);

/*
 * The descriptor channel of the keeper's children (fd 4, common/proto.h):
 * each packet is an 8-byte little-endian number, flags_len bytes of flags
 * (0 or 1) and one descriptor. The keeper sends with sock_send_numbered();
 * the http child and the workers receive with sock_recv_numbered(): 0 with
 * *number, *flags (0 without flag bytes) and *pass_fd (close-on-exec, a
 * Unix stream socket); SOCK_END at end of stream; -EAGAIN when none waits;
 * -EBADMSG for a packet of another size or without a descriptor, -ENOTSOCK
 * for a descriptor that is not a Unix stream socket (neither leaks it);
 * another negative errno value otherwise.
 */
#define SOCK_END 1
int sock_send_numbered(int fd, uint64_t number, const unsigned char *flags, size_t flags_len, int pass_fd);
int sock_recv_numbered(int fd, size_t flags_len, uint64_t *number, unsigned *flags, int *pass_fd);
/* What a negative result of sock_recv_numbered() other than -EAGAIN says
 * about the keeper, for the child's log line before it exits. */
const char *sock_numbered_strerror(int r);
