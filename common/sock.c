/*
 * See sock.h. Unix stream sockets for the control socket, the keeper's
 * channels to its children and the client stream that `connect` hands to a
 * worker. This module decides nothing about who may connect: it reports
 * what the kernel says about a peer (SO_PEERCRED, SO_PEERGROUPS) and the
 * caller applies the policy.
 */
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include "sock.h"
#include "util.h"

/*
 * Room for several descriptors in one received control message although we
 * accept only one: a peer that sends more must have every one of them
 * installed so that we can close them all. Descriptors beyond this room are
 * dropped by the kernel and flagged with MSG_CTRUNC.
 */
#define SOCK_RECV_FDS_MAX 8

/* The kernel puts SCM_CREDENTIALS (when the caller set SO_PASSCRED) ahead of
 * the descriptors; without room for it a single descriptor would be cut. */
#define SOCK_RECV_CONTROL_SIZE \
	(CMSG_SPACE(sizeof(struct ucred)) + CMSG_SPACE(SOCK_RECV_FDS_MAX * sizeof(int)))

/* How often sock_listen_unix looks at the path again when someone else binds
 * it between our unlink and our bind. */
#define SOCK_BIND_ATTEMPTS 3

static int sock_addr_unix(const char *path, struct sockaddr_un *sa, socklen_t *salen)
{
	size_t len;

	if (!path || !*path)
		return -EINVAL;
	len = strlen(path);
	/* The kernel would accept a path that fills sun_path without its NUL,
	 * but nothing that reads the name back (ss, getsockname) could. */
	if (len >= sizeof(sa->sun_path))
		return -ENAMETOOLONG;

	memset(sa, 0, sizeof(*sa));
	sa->sun_family = AF_UNIX;
	memcpy(sa->sun_path, path, len + 1);
	*salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
	return 0;
}

/*
 * Does anyone accept on the socket file? 1: yes, 0: nobody (a stale file
 * left by a process that died), negative errno otherwise. The probe does not
 * block, so that a live listener with a full backlog (EAGAIN) counts as alive
 * instead of stalling us. A live listener accepts the probe and sees it end
 * at once, which every listener has to cope with anyway.
 */
static int sock_probe(const struct sockaddr_un *sa, socklen_t salen)
{
	_cleanup_(closep) int fd = -1;

	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (const struct sockaddr *)sa, salen) == 0)
		return 1;

	switch (errno) {
	case EAGAIN:
	case EINPROGRESS:
	/* A live socket of another type (datagram, seqpacket): not ours to
	 * remove either. */
	case EPROTOTYPE:
		return 1;
	case ECONNREFUSED:
		return 0;
	default:
		return -errno;
	}
}

/*
 * Makes path free for bind: 0 when nothing is there (any more), or a reason
 * not to bind. Probing and unlinking are two steps, so two processes starting
 * at the same instant can both find the file stale; single-instance is for
 * the caller to guarantee (systemd, a lock) when it matters.
 */
static int sock_clear_path(const char *path, const struct sockaddr_un *sa, socklen_t salen)
{
	struct stat st;
	int r;

	/* lstat: a symlink at the path is not a socket we may replace. */
	if (lstat(path, &st) < 0)
		return errno == ENOENT ? 0 : -errno;
	if (!S_ISSOCK(st.st_mode))
		return -EEXIST;

	r = sock_probe(sa, salen);
	if (r == -ENOENT)
		return 0;
	if (r < 0)
		return r;
	if (r > 0)
		return SOCK_E_IN_USE;

	if (unlink(path) < 0 && errno != ENOENT)
		return -errno;
	return 0;
}

int sock_listen_unix(const char *path, mode_t mode, int backlog, int *fd)
{
	_cleanup_(closep) int s = -1;
	struct sockaddr_un sa;
	socklen_t salen;
	int r;

	r = sock_addr_unix(path, &sa, &salen);
	if (r < 0)
		return r;

	s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (s < 0)
		return -errno;

	for (int attempt = 1;; attempt++) {
		r = sock_clear_path(path, &sa, salen);
		if (r != 0)
			return r;
		if (bind(s, (const struct sockaddr *)&sa, salen) == 0)
			break;
		/* Someone bound the path after we looked: look again, it may
		 * be a live listener (SOCK_E_IN_USE) this time. */
		if (errno != EADDRINUSE || attempt >= SOCK_BIND_ATTEMPTS)
			return -errno;
	}

	/* bind created the file with the umask's mode; the final mode is set
	 * before listen, and until listen every connect is refused, so nobody
	 * gets in through the wider mode in between. */
	if (chmod(path, mode) < 0 || listen(s, backlog) < 0) {
		r = -errno;
		(void)unlink(path);
		return r;
	}

	*fd = TAKE_FD(s);
	return 0;
}

int sock_connect_unix(const char *path, int nonblock, int *fd)
{
	_cleanup_(closep) int s = -1;
	struct sockaddr_un sa;
	socklen_t salen;
	int r;

	r = sock_addr_unix(path, &sa, &salen);
	if (r < 0)
		return r;

	s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s < 0)
		return -errno;

	/* A Unix connect waits only while the listener's backlog is full. An
	 * interrupted attempt leaves the socket unconnected, so it can simply
	 * be repeated. */
	while (connect(s, (const struct sockaddr *)&sa, salen) < 0) {
		if (errno != EINTR)
			return -errno;
	}

	if (nonblock) {
		r = fd_set_nonblock(s, 1);
		if (r < 0)
			return r;
	}

	*fd = TAKE_FD(s);
	return 0;
}

int sock_peer_cred(int fd, pid_t *pid, uid_t *uid, gid_t *gid)
{
	struct ucred cred;
	socklen_t len = sizeof(cred);

	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
		return -errno;
	if (len != sizeof(cred))
		return -EIO;
	/* A socket that never had a peer reports -1 for both ids instead of
	 * failing; that must not reach a policy check as an identity. */
	if (cred.uid == (uid_t)-1 && cred.gid == (gid_t)-1)
		return -ENOTCONN;

	*pid = cred.pid;
	*uid = cred.uid;
	*gid = cred.gid;
	return 0;
}

int sock_peer_groups(int fd, gid_t **groups, size_t *n)
{
#ifdef SO_PEERGROUPS
	_cleanup_(freep) gid_t *buf = NULL;
	socklen_t size = 16 * sizeof(gid_t);

	/* The list was fixed at connect time, so the size the kernel asks for
	 * after ERANGE fits on the next call; a size that does not grow means
	 * something else is wrong and must not loop. */
	for (;;) {
		socklen_t got = size;
		gid_t *nbuf;

		nbuf = realloc(buf, size);
		if (!nbuf)
			return -ENOMEM;
		buf = nbuf;

		if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, buf, &got) == 0) {
			size = got;
			break;
		}
		if (errno != ERANGE)
			return -errno;
		if (got <= size)
			return -EIO;
		size = got;
	}

	if (size % sizeof(gid_t) != 0)
		return -EIO;
	*groups = TAKE_PTR(buf);
	*n = size / sizeof(gid_t);
	return 0;
#else
	(void)fd;
	(void)groups;
	(void)n;
	return -ENOPROTOOPT;
#endif
}

int sock_send_fds(int fd, const int *pass_fds, size_t n, const void *data, size_t len)
{
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(SOCK_RECV_FDS_MAX * sizeof(int))];
	} control;
	struct iovec iov = { .iov_base = (void *)data, .iov_len = len };
	struct msghdr msg = {
		.msg_iov = &iov,
		.msg_iovlen = 1,
		.msg_control = control.buf,
		.msg_controllen = CMSG_SPACE(n * sizeof(int)),
	};
	struct cmsghdr *cmsg;
	ssize_t k;

	/* The descriptors ride on data bytes: a stream socket has no empty
	 * message that could carry them. */
	if (!data || len == 0 || n == 0 || n > SOCK_RECV_FDS_MAX)
		return -EINVAL;
	for (size_t i = 0; i < n; i++)
		if (pass_fds[i] < 0)
			return -EBADF;

	memset(&control, 0, sizeof(control));
	cmsg = CMSG_FIRSTHDR(&msg);
	cmsg->cmsg_level = SOL_SOCKET;
	cmsg->cmsg_type = SCM_RIGHTS;
	cmsg->cmsg_len = CMSG_LEN(n * sizeof(int));
	memcpy(CMSG_DATA(cmsg), pass_fds, n * sizeof(int));

	/* MSG_NOSIGNAL: a peer that went away is an error to return, not a
	 * SIGPIPE that ends the keeper. */
	do
		k = sendmsg(fd, &msg, MSG_NOSIGNAL);
	while (k < 0 && errno == EINTR);
	if (k < 0)
		return -errno;

	/* The descriptors went with the first bytes and the rest did not: the
	 * stream is out of step and cannot be resumed without sending them
	 * twice. Messages that carry descriptors are meant to be far smaller
	 * than a socket buffer, so this is the caller's bug. */
	if ((size_t)k != len)
		return -EMSGSIZE;
	return 0;
}

int sock_send_fd(int fd, int pass_fd, const void *data, size_t len)
{
	return sock_send_fds(fd, &pass_fd, 1, data, len);
}

int sock_recv_fds(int fd, void *data, size_t len, size_t *received, int *pass_fds, size_t max, size_t *n)
{
	union {
		struct cmsghdr align;
		char buf[SOCK_RECV_CONTROL_SIZE];
	} control;
	struct iovec iov = { .iov_base = data, .iov_len = len };
	struct msghdr msg = {
		.msg_iov = &iov,
		.msg_iovlen = 1,
		.msg_control = control.buf,
		.msg_controllen = sizeof(control.buf),
	};
	int fds[SOCK_RECV_FDS_MAX];
	size_t nfds = 0, extra = 0;
	struct cmsghdr *cmsg;
	ssize_t k;

	/* A zero-length read would return 0 and look like end of stream. */
	if (!data || len == 0 || max > SOCK_RECV_FDS_MAX)
		return -EINVAL;

	*received = 0;
	*n = 0;

	do
		k = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
	while (k < 0 && errno == EINTR);
	if (k < 0)
		return -errno;

	/* Collect every descriptor that arrived before judging the message,
	 * so that a bad one leaves none of them open. */
	for (cmsg = CMSG_FIRSTHDR(&msg); cmsg; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
		size_t count;

		if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS)
			continue;
		if (cmsg->cmsg_len < CMSG_LEN(0))
			continue;
		count = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < count; i++) {
			int f;

			memcpy(&f, CMSG_DATA(cmsg) + i * sizeof(int), sizeof(int));
			if (nfds < ARRAY_SIZE(fds)) {
				fds[nfds++] = f;
			} else {
				fd_close(f);
				extra++;
			}
		}
	}

	if ((msg.msg_flags & MSG_CTRUNC) || nfds + extra > max) {
		for (size_t i = 0; i < nfds; i++)
			fd_close(fds[i]);
		return -EBADMSG;
	}

	*received = (size_t)k;
	memcpy(pass_fds, fds, nfds * sizeof(int));
	*n = nfds;
	return 0;
}

int sock_recv_fd(int fd, void *data, size_t len, size_t *received, int *pass_fd)
{
	size_t n;

	*pass_fd = -1;
	return sock_recv_fds(fd, data, len, received, pass_fd, 1, &n);
}

int sock_pair(int nonblock, int fds[2])
{
	int type = SOCK_STREAM | SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0);

	if (socketpair(AF_UNIX, type, 0, fds) < 0)
		return -errno;
	return 0;
}

int sock_send_numbered(int fd, uint64_t number, const unsigned char *flags, size_t flags_len, int pass_fd)
{
	unsigned char buf[9];

	if (flags_len > 1)
		return -EINVAL;
	for (int i = 0; i < 8; i++)
		buf[i] = (unsigned char)(number >> (8 * i));
	if (flags_len)
		buf[8] = flags[0];
	return sock_send_fd(fd, pass_fd, buf, 8 + flags_len);
}

int sock_recv_numbered(int fd, size_t flags_len, uint64_t *number, unsigned *flags, int *pass_fd)
{
	unsigned char buf[10];
	size_t received = 0;
	int cfd = -1, type = 0, domain = 0, r;
	socklen_t len = sizeof(type), dlen = sizeof(domain);

	if (flags_len > 1)
		return -EINVAL;
	/* One byte more than a packet holds: a longer one shows as too long. */
	r = sock_recv_fd(fd, buf, 8 + flags_len + 1, &received, &cfd);
	if (r < 0)
		return r;
	if (received == 0 && cfd < 0)
		return SOCK_END;
	if (received != 8 + flags_len || cfd < 0) {
		fd_close(cfd);
		return -EBADMSG;
	}
	if (getsockopt(cfd, SOL_SOCKET, SO_TYPE, &type, &len) < 0 || type != SOCK_STREAM ||
	    getsockopt(cfd, SOL_SOCKET, SO_DOMAIN, &domain, &dlen) < 0 || domain != AF_UNIX) {
		fd_close(cfd);
		return -ENOTSOCK;
	}
	*number = 0;
	for (int i = 7; i >= 0; i--)
		*number = (*number << 8) | buf[i];
	*flags = flags_len ? buf[8] : 0;
	*pass_fd = cfd;
	return 0;
}

const char *sock_numbered_strerror(int r)
{
	switch (r) {
	case -EBADMSG:
		return "a descriptor packet without its number, flags or descriptor";
	case -ENOTSOCK:
		return "a descriptor that is not a Unix stream socket";
	default:
		return "an unreadable descriptor packet";
	}
}
