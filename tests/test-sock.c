/*
 * Unit test for common/sock.c against the real kernel: sockets live in a
 * private mkdtemp directory that is removed at exit. The credential case
 * forks a child that drops to other ids, which needs root; as another user
 * it is skipped (tests/test.h), and with $CI set it fails.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sock.h"
#include "test.h"
#include "util.h"

#define check(expr)                                                              \
	do {                                                                     \
		if (!(expr)) {                                                   \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__,   \
				__LINE__, #expr);                                \
			exit(1);                                                 \
		}                                                                \
	} while (0)

#define CHILD_UID 65534
#define CHILD_GID 23456
#define CHILD_GROUP 12345
#define CHILD_GROUPS_MAX 100

static char tmpdir[] = "/tmp/test-sock-XXXXXX";
static pid_t tmpdir_owner;

/* Runs at exit (also after a failed check) in the process that made the
 * directory; forked children leave with _exit and never get here. */
static void tmpdir_remove(void)
{
	DIR *d;
	struct dirent *de;

	if (getpid() != tmpdir_owner)
		return;
	d = opendir(tmpdir);
	if (!d)
		return;
	while ((de = readdir(d))) {
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
			(void)unlinkat(dirfd(d), de->d_name, 0);
	}
	closedir(d);
	(void)rmdir(tmpdir);
}

static void tmp_path(char *buf, size_t size, const char *name)
{
	int k = snprintf(buf, size, "%s/%s", tmpdir, name);

	check(k > 0 && (size_t)k < size);
}

static void ok(const char *name)
{
	test_ok(name);
}

static int fd_count(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *de;
	int n = 0;

	check(d);
	while ((de = readdir(d)))
		n++;
	closedir(d);
	return n;
}

static int fd_has_flag(int fd, int flag)
{
	int flags = fcntl(fd, F_GETFD);

	check(flags >= 0);
	return (flags & flag) != 0;
}

static int fd_has_status(int fd, int flag)
{
	int flags = fcntl(fd, F_GETFL);

	check(flags >= 0);
	return (flags & flag) != 0;
}

/* The listeners are non-blocking: wait for a connection, then accept it. */
static int accept_wait(int lfd)
{
	struct pollfd p = { .fd = lfd, .events = POLLIN };
	int fd;

	check(poll(&p, 1, 10000) == 1);
	fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	check(fd >= 0);
	return fd;
}

static void write_all(int fd, const void *buf, size_t len)
{
	check(write(fd, buf, len) == (ssize_t)len);
}

static void read_exact(int fd, void *buf, size_t len)
{
	check(read(fd, buf, len) == (ssize_t)len);
}

static void test_round_trip(void)
{
	_cleanup_(closep) int lfd = -1, cfd = -1, afd = -1;
	char path[256], buf[8];

	tmp_path(path, sizeof(path), "rt.sock");
	check(sock_listen_unix(path, 0600, 16, &lfd) == 0);
	check(fd_has_flag(lfd, FD_CLOEXEC));
	check(fd_has_status(lfd, O_NONBLOCK));

	check(sock_connect_unix(path, 0, &cfd) == 0);
	check(fd_has_flag(cfd, FD_CLOEXEC));
	check(!fd_has_status(cfd, O_NONBLOCK));
	afd = accept_wait(lfd);

	write_all(cfd, "ping", 4);
	read_exact(afd, buf, 4);
	check(memcmp(buf, "ping", 4) == 0);
	write_all(afd, "pong", 4);
	read_exact(cfd, buf, 4);
	check(memcmp(buf, "pong", 4) == 0);

	closep(&cfd);
	check(sock_connect_unix(path, 1, &cfd) == 0);
	check(fd_has_status(cfd, O_NONBLOCK));
	check(fd_has_flag(cfd, FD_CLOEXEC));
	ok("listen, connect, accept round trip; cloexec and nonblock flags");
}

static void test_mode(void)
{
	_cleanup_(closep) int lfd = -1;
	char path[256];
	struct stat st;
	mode_t old;

	tmp_path(path, sizeof(path), "mode.sock");
	/* A umask that would strip the group bits shows that the mode is
	 * set explicitly, not left to bind. */
	old = umask(0077);
	check(sock_listen_unix(path, 0660, 16, &lfd) == 0);
	umask(old);

	check(lstat(path, &st) == 0);
	check(S_ISSOCK(st.st_mode));
	check((st.st_mode & 07777) == 0660);
	ok("socket file mode is the requested 0660");
}

static void test_stale(void)
{
	_cleanup_(closep) int lfd = -1, cfd = -1, afd = -1;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	char path[256], c;
	struct stat st;
	int s;

	tmp_path(path, sizeof(path), "stale.sock");
	check(strlen(path) < sizeof(sa.sun_path));
	strcpy(sa.sun_path, path);
	s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	check(s >= 0);
	check(bind(s, (struct sockaddr *)&sa, sizeof(sa)) == 0);
	check(listen(s, 1) == 0);
	close(s);
	check(lstat(path, &st) == 0 && S_ISSOCK(st.st_mode));

	check(sock_listen_unix(path, 0600, 16, &lfd) == 0);
	check(sock_connect_unix(path, 0, &cfd) == 0);
	afd = accept_wait(lfd);
	write_all(cfd, "x", 1);
	read_exact(afd, &c, 1);
	check(c == 'x');
	ok("stale socket file is replaced");
}

static void test_in_use(void)
{
	_cleanup_(closep) int lfd = -1, lfd2 = -1, cfd = -1;
	char path[256], c;
	struct stat before, after;
	int got = 0;

	tmp_path(path, sizeof(path), "live.sock");
	check(sock_listen_unix(path, 0600, 16, &lfd) == 0);
	check(lstat(path, &before) == 0);

	check(sock_listen_unix(path, 0600, 16, &lfd2) == SOCK_E_IN_USE);
	check(lfd2 == -1);
	check(lstat(path, &after) == 0);
	check(before.st_ino == after.st_ino && before.st_dev == after.st_dev);

	check(sock_connect_unix(path, 0, &cfd) == 0);
	write_all(cfd, "y", 1);
	/* The probe of the second listen is in the backlog too and ends at
	 * once: skip it and find our client. */
	for (int i = 0; i < 4 && !got; i++) {
		_cleanup_(closep) int afd = accept_wait(lfd);
		ssize_t k = read(afd, &c, 1);

		check(k >= 0);
		if (k == 1) {
			check(c == 'y');
			got = 1;
		}
	}
	check(got);
	ok("live listener gives SOCK_E_IN_USE and keeps working");
}

/* A live listener whose backlog is full answers a non-blocking connect with
 * EAGAIN: it is still alive and its file must stay. */
static void test_in_use_backlog_full(void)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	_cleanup_(closep) int lfd = -1, lfd2 = -1;
	int clients[64];
	size_t n = 0;
	char path[256];
	struct stat st;

	tmp_path(path, sizeof(path), "full.sock");
	check(strlen(path) < sizeof(sa.sun_path));
	strcpy(sa.sun_path, path);
	check(sock_listen_unix(path, 0600, 1, &lfd) == 0);

	for (;;) {
		int c;

		check(n < ARRAY_SIZE(clients));
		c = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
		check(c >= 0);
		if (connect(c, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
			check(errno == EAGAIN);
			close(c);
			break;
		}
		clients[n++] = c;
	}

	check(sock_listen_unix(path, 0600, 16, &lfd2) == SOCK_E_IN_USE);
	check(lstat(path, &st) == 0 && S_ISSOCK(st.st_mode));
	for (size_t i = 0; i < n; i++)
		close(clients[i]);
	ok("live listener with a full backlog gives SOCK_E_IN_USE");
}

/* With SO_PASSCRED the kernel puts credentials ahead of the descriptor; the
 * descriptor must still arrive whole. */
static void test_pass_fd_passcred(void)
{
	_cleanup_(closep) int a = -1, b = -1, pr = -1, pw = -1, got = -1;
	int sp[2], p[2], on = 1;
	char buf[16];
	size_t received;

	check(sock_pair(0, sp) == 0);
	a = sp[0];
	b = sp[1];
	check(setsockopt(b, SOL_SOCKET, SO_PASSCRED, &on, sizeof(on)) == 0);
	check(pipe2(p, O_CLOEXEC) == 0);
	pr = p[0];
	pw = p[1];

	check(sock_send_fd(a, pw, "cred", 4) == 0);
	closep(&pw);
	check(sock_recv_fd(b, buf, sizeof(buf), &received, &got) == 0);
	check(received == 4 && memcmp(buf, "cred", 4) == 0);
	check(got >= 0);
	write_all(got, "q", 1);
	read_exact(pr, buf, 1);
	check(buf[0] == 'q');
	ok("descriptor passing with SO_PASSCRED set on the receiver");
}

static void test_not_socket(void)
{
	_cleanup_(closep) int lfd = -1, ffd = -1;
	char path[256], buf[8];
	struct stat st;

	tmp_path(path, sizeof(path), "regular");
	ffd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	check(ffd >= 0);
	write_all(ffd, "keep", 4);
	closep(&ffd);

	check(sock_listen_unix(path, 0600, 16, &lfd) == -EEXIST);
	check(lfd == -1);
	check(lstat(path, &st) == 0 && S_ISREG(st.st_mode));
	ffd = open(path, O_RDONLY | O_CLOEXEC);
	check(ffd >= 0);
	read_exact(ffd, buf, 4);
	check(memcmp(buf, "keep", 4) == 0);
	ok("regular file at the path gives -EEXIST and stays");
}

static void test_too_long(void)
{
	struct sockaddr_un sa;
	char path[512];
	int fd = -1;

	/* sun_path must hold the NUL: sizeof(sun_path) characters are one
	 * too many, one fewer is fine (and fails on the missing directory). */
	memset(path, 'a', sizeof(path));
	path[0] = '/';
	path[sizeof(sa.sun_path)] = '\0';
	check(sock_listen_unix(path, 0600, 16, &fd) == -ENAMETOOLONG);
	check(sock_connect_unix(path, 0, &fd) == -ENAMETOOLONG);
	path[sizeof(sa.sun_path) - 1] = '\0';
	check(sock_connect_unix(path, 0, &fd) == -ENOENT);
	memset(path, 'a', sizeof(path));
	path[0] = '/';
	path[sizeof(path) - 1] = '\0';
	check(sock_listen_unix(path, 0600, 16, &fd) == -ENAMETOOLONG);
	check(fd == -1);
	ok("too long path gives -ENAMETOOLONG");
}

static void test_missing(void)
{
	char path[256];
	int fd = -1;

	tmp_path(path, sizeof(path), "missing.sock");
	check(sock_connect_unix(path, 0, &fd) == -ENOENT);
	check(fd == -1);
	ok("connect to a missing path gives -ENOENT");
}

static void test_peer_cred_self(void)
{
	_cleanup_(closep) int lfd = -1, cfd = -1, afd = -1;
	_cleanup_(freep) gid_t *groups = NULL;
	gid_t mine[256];
	char path[256];
	pid_t pid;
	uid_t uid;
	gid_t gid;
	size_t n;
	int nmine, s;

	tmp_path(path, sizeof(path), "cred.sock");
	check(sock_listen_unix(path, 0600, 16, &lfd) == 0);
	check(sock_connect_unix(path, 0, &cfd) == 0);
	afd = accept_wait(lfd);

	check(sock_peer_cred(afd, &pid, &uid, &gid) == 0);
	check(pid == getpid());
	check(uid == getuid());
	check(gid == getgid());
	check(sock_peer_cred(cfd, &pid, &uid, &gid) == 0);
	check(pid == getpid() && uid == getuid() && gid == getgid());

	nmine = getgroups(ARRAY_SIZE(mine), mine);
	check(nmine >= 0);
	check(sock_peer_groups(afd, &groups, &n) == 0);
	check(n == (size_t)nmine);
	for (int i = 0; i < nmine; i++) {
		int found = 0;

		for (size_t j = 0; j < n; j++)
			found |= groups[j] == mine[i];
		check(found);
	}

	/* Never connected: no identity to report. */
	s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	check(s >= 0);
	check(sock_peer_cred(s, &pid, &uid, &gid) == -ENOTCONN);
	close(s);
	ok("peer credentials of this process (pid, uid, gid, groups)");
}

/* The child's supplementary groups: CHILD_GROUP first, then CHILD_GROUP+1...
 * for the larger lists. */
static void child_groups(gid_t *groups, size_t ngroups)
{
	for (size_t i = 0; i < ngroups; i++)
		groups[i] = (gid_t)(CHILD_GROUP + i);
}

/* In the child: drop to other ids, connect, say one byte. Exit codes name
 * the step that failed. */
static _noreturn_ void cred_child(const char *path, size_t ngroups)
{
	gid_t groups[CHILD_GROUPS_MAX];
	int fd = -1;

	child_groups(groups, ngroups);
	if (setgroups(ngroups, groups) < 0)
		_exit(10);
	if (setgid(CHILD_GID) < 0)
		_exit(11);
	if (setuid(CHILD_UID) < 0)
		_exit(12);
	if (getuid() != CHILD_UID || geteuid() != CHILD_UID)
		_exit(13);
	if (sock_connect_unix(path, 0, &fd) < 0)
		_exit(14);
	if (write(fd, "c", 1) != 1)
		_exit(15);
	close(fd);
	_exit(0);
}

static void test_peer_cred_child(size_t ngroups, const char *name)
{
	_cleanup_(closep) int lfd = -1, afd = -1;
	_cleanup_(freep) gid_t *groups = NULL;
	gid_t want[CHILD_GROUPS_MAX];
	char path[256], c;
	pid_t child, pid;
	uid_t uid;
	gid_t gid;
	size_t n;
	int status;

	if (test_needs_root(name))
		return;
	check(ngroups >= 1 && ngroups <= CHILD_GROUPS_MAX);

	tmp_path(path, sizeof(path), "child.sock");
	/* The child runs as nobody: it must reach the socket through the
	 * directory and be allowed to connect to it. */
	check(chmod(tmpdir, 0711) == 0);
	check(sock_listen_unix(path, 0666, 16, &lfd) == 0);

	fflush(stdout);
	child = fork();
	check(child >= 0);
	if (child == 0)
		cred_child(path, ngroups);

	afd = accept_wait(lfd);
	read_exact(afd, &c, 1);
	check(c == 'c');
	check(sock_peer_cred(afd, &pid, &uid, &gid) == 0);
	check(pid == child);
	check(uid == CHILD_UID);
	check(gid == CHILD_GID);

	check(sock_peer_groups(afd, &groups, &n) == 0);
	check(n == ngroups);
	child_groups(want, ngroups);
	for (size_t i = 0; i < ngroups; i++) {
		int found = 0;

		for (size_t j = 0; j < n; j++)
			found |= groups[j] == want[i];
		check(found);
	}

	check(waitpid(child, &status, 0) == child);
	check(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	check(chmod(tmpdir, 0700) == 0);
	check(unlink(path) == 0);
	ok(name);
}

static void test_pass_fd(void)
{
	_cleanup_(closep) int a = -1, b = -1, pr = -1, pw = -1, got = -1;
	int sp[2], p[2];
	char buf[16];
	size_t received;

	check(sock_pair(0, sp) == 0);
	a = sp[0];
	b = sp[1];
	check(fd_has_flag(a, FD_CLOEXEC) && fd_has_flag(b, FD_CLOEXEC));
	check(!fd_has_status(a, O_NONBLOCK) && !fd_has_status(b, O_NONBLOCK));
	check(pipe2(p, O_CLOEXEC) == 0);
	pr = p[0];
	pw = p[1];

	check(sock_send_fd(a, pw, "hello", 5) == 0);
	/* Only the received copy may keep the pipe's write end open now. */
	closep(&pw);

	check(sock_recv_fd(b, buf, sizeof(buf), &received, &got) == 0);
	check(received == 5);
	check(memcmp(buf, "hello", 5) == 0);
	check(got >= 0);
	check(fd_has_flag(got, FD_CLOEXEC));

	write_all(got, "through", 7);
	read_exact(pr, buf, 7);
	check(memcmp(buf, "through", 7) == 0);
	ok("descriptor passing: payload, working fd, close-on-exec");
}

static void test_no_fd(void)
{
	_cleanup_(closep) int a = -1, b = -1;
	int sp[2], got = 42;
	char buf[16];
	size_t received;

	check(sock_pair(1, sp) == 0);
	a = sp[0];
	b = sp[1];
	check(fd_has_status(a, O_NONBLOCK) && fd_has_status(b, O_NONBLOCK));

	check(sock_recv_fd(b, buf, sizeof(buf), &received, &got) == -EAGAIN);
	write_all(a, "abc", 3);
	check(sock_recv_fd(b, buf, sizeof(buf), &received, &got) == 0);
	check(received == 3);
	check(memcmp(buf, "abc", 3) == 0);
	check(got == -1);
	ok("receiving without a descriptor gives pass_fd -1 (and -EAGAIN when empty)");
}

/* Sends nfds descriptors (all the same pipe end) in one message, the way a
 * misbehaving peer would. */
static void send_many(int sock, int fd, size_t nfds)
{
	union {
		struct cmsghdr align;
		char buf[CMSG_SPACE(32 * sizeof(int))];
	} control;
	struct iovec iov = { .iov_base = "m", .iov_len = 1 };
	struct msghdr msg = {
		.msg_iov = &iov,
		.msg_iovlen = 1,
		.msg_control = control.buf,
		.msg_controllen = CMSG_SPACE(nfds * sizeof(int)),
	};
	struct cmsghdr *cmsg;

	check(nfds <= 32);
	memset(&control, 0, sizeof(control));
	cmsg = CMSG_FIRSTHDR(&msg);
	cmsg->cmsg_level = SOL_SOCKET;
	cmsg->cmsg_type = SCM_RIGHTS;
	cmsg->cmsg_len = CMSG_LEN(nfds * sizeof(int));
	for (size_t i = 0; i < nfds; i++)
		memcpy(CMSG_DATA(cmsg) + i * sizeof(int), &fd, sizeof(int));
	check(sendmsg(sock, &msg, 0) == 1);
}

static void test_many_fds(size_t nfds, const char *name)
{
	_cleanup_(closep) int a = -1, b = -1;
	int sp[2], p[2], got = 42, before, after;
	char buf[16];
	size_t received = 99;

	check(sock_pair(0, sp) == 0);
	a = sp[0];
	b = sp[1];

	before = fd_count();
	check(pipe2(p, O_CLOEXEC) == 0);
	send_many(a, p[1], nfds);
	/* In flight the descriptors live in the socket, not in our table. */
	close(p[0]);
	close(p[1]);

	check(sock_recv_fd(b, buf, sizeof(buf), &received, &got) == -EBADMSG);
	check(got == -1);
	check(received == 0);
	after = fd_count();
	check(before == after);
	ok(name);
}

static void test_eof(void)
{
	_cleanup_(closep) int a = -1, b = -1;
	int sp[2], got = 42;
	char buf[16];
	size_t received = 99;

	check(sock_pair(0, sp) == 0);
	a = sp[0];
	b = sp[1];
	closep(&a);
	check(sock_recv_fd(b, buf, sizeof(buf), &received, &got) == 0);
	check(received == 0);
	check(got == -1);
	ok("end of stream gives received 0");
}

/* Two descriptors (a stdio connect's stdin and stdout) arrive in order; a
 * reader that takes fewer gets -EBADMSG and none of them stays open. */
static void test_pass_two_fds(void)
{
	_cleanup_(closep) int a = -1, b = -1, pr = -1, pw = -1;
	int sp[2], p[2], got[2] = { -1, -1 }, fds[2];
	struct stat st_r, st_w, st;
	char buf[4];
	size_t received = 0, n = 0;
	int before;

	check(sock_pair(0, sp) == 0);
	a = sp[0];
	b = sp[1];
	check(pipe2(p, O_CLOEXEC) == 0);
	pr = p[0];
	pw = p[1];
	check(fstat(pr, &st_r) == 0 && fstat(pw, &st_w) == 0);
	fds[0] = pr;
	fds[1] = pw;

	check(sock_send_fds(a, fds, 2, "\0", 1) == 0);
	check(sock_recv_fds(b, buf, sizeof(buf), &received, got, 2, &n) == 0);
	check(received == 1 && buf[0] == 0 && n == 2);
	check(fstat(got[0], &st) == 0 && st.st_ino == st_r.st_ino);
	check(fstat(got[1], &st) == 0 && st.st_ino == st_w.st_ino);
	check((fcntl(got[0], F_GETFD) & FD_CLOEXEC) && (fcntl(got[1], F_GETFD) & FD_CLOEXEC));
	close(got[0]);
	close(got[1]);

	before = fd_count();
	check(sock_send_fds(a, fds, 2, "x", 1) == 0);
	check(sock_recv_fds(b, buf, sizeof(buf), &received, got, 1, &n) == -EBADMSG);
	check(fd_count() == before);
	check(sock_send_fds(a, fds, 0, "x", 1) == -EINVAL);
	check(sock_send_fds(a, fds, 9, "x", 1) == -EINVAL);
	ok("two descriptors arrive in order; more than the reader takes give -EBADMSG, none leaked");
}

static void test_send_errors(void)
{
	_cleanup_(closep) int a = -1, b = -1, pr = -1, pw = -1;
	char fill[4096];
	int sp[2], p[2];
	ssize_t k;

	memset(fill, 'f', sizeof(fill));
	check(sock_pair(1, sp) == 0);
	a = sp[0];
	b = sp[1];
	check(pipe2(p, O_CLOEXEC) == 0);
	pr = p[0];
	pw = p[1];

	while ((k = write(a, fill, sizeof(fill))) > 0)
		;
	check(k < 0 && errno == EAGAIN);
	check(sock_send_fd(a, pw, "z", 1) == -EAGAIN);

	/* With SIGPIPE at its default a plain send would kill us here. */
	check(signal(SIGPIPE, SIG_DFL) != SIG_ERR);
	closep(&b);
	check(sock_send_fd(a, pw, "z", 1) == -EPIPE);
	check(sock_send_fd(a, pw, "", 0) == -EINVAL);
	check(sock_send_fd(a, -1, "z", 1) == -EBADF);
	ok("send: -EAGAIN when full, -EPIPE (no SIGPIPE) when the peer is gone");
}

/* The descriptor channel of the children: numbered packets, flags, and the
 * refusals of what the keeper would never send. */
static void test_numbered(void)
{
	int sv[2], pair[2], pipefd[2], fd = -1, before;
	uint64_t number = 0;
	unsigned flags = 9;
	unsigned char f = 0x01, junk[12] = { 0 };

	check(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv) == 0);
	check(socketpair(AF_UNIX, SOCK_STREAM, 0, pair) == 0);
	check(pipe(pipefd) == 0);
	before = fd_count();

	check(sock_send_numbered(sv[0], 0x0102030405060708ULL, &f, 1, pair[1]) == 0);
	check(sock_recv_numbered(sv[1], 1, &number, &flags, &fd) == 0);
	check(number == 0x0102030405060708ULL && flags == 0x01 && fd >= 0);
	check((fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0);
	close(fd);

	check(sock_send_numbered(sv[0], 42, NULL, 0, pair[1]) == 0);
	check(sock_recv_numbered(sv[1], 0, &number, &flags, &fd) == 0);
	check(number == 42 && flags == 0);
	close(fd);

	/* A packet one byte too long, one too short, one without a descriptor. */
	check(sock_send_fd(sv[0], pair[1], junk, 10) == 0);
	check(sock_recv_numbered(sv[1], 1, &number, &flags, &fd) == -EBADMSG);
	check(sock_send_fd(sv[0], pair[1], junk, 7) == 0);
	check(sock_recv_numbered(sv[1], 0, &number, &flags, &fd) == -EBADMSG);
	check(send(sv[0], junk, 8, 0) == 8);
	check(sock_recv_numbered(sv[1], 0, &number, &flags, &fd) == -EBADMSG);
	/* A descriptor that is not a Unix stream socket. */
	check(sock_send_numbered(sv[0], 7, NULL, 0, pipefd[0]) == 0);
	check(sock_recv_numbered(sv[1], 0, &number, &flags, &fd) == -ENOTSOCK);
	check(fd_count() == before);
	check(strstr(sock_numbered_strerror(-ENOTSOCK), "not a Unix stream socket") != NULL);
	check(strstr(sock_numbered_strerror(-EBADMSG), "without its number") != NULL);

	check(fd_set_nonblock(sv[1], 1) == 0);
	check(sock_recv_numbered(sv[1], 0, &number, &flags, &fd) == -EAGAIN);
	close(sv[0]);
	check(sock_recv_numbered(sv[1], 0, &number, &flags, &fd) == SOCK_END);
	close(sv[1]);
	close(pair[0]);
	close(pair[1]);
	close(pipefd[0]);
	close(pipefd[1]);
	ok("numbered descriptor packets: number, flags, wrong sizes, no descriptor, not a socket, end");
}

int main(void)
{
	check(mkdtemp(tmpdir));
	tmpdir_owner = getpid();
	check(atexit(tmpdir_remove) == 0);

	test_round_trip();
	test_mode();
	test_stale();
	test_in_use();
	test_in_use_backlog_full();
	test_not_socket();
	test_too_long();
	test_missing();
	test_peer_cred_self();
	test_peer_cred_child(1, "peer credentials of a child with uid 65534, gid 23456, group 12345");
	/* More groups than sock_peer_groups's first buffer holds (ERANGE). */
	test_peer_cred_child(CHILD_GROUPS_MAX,
			     "peer groups of a child with 100 groups (buffer grows)");
	test_pass_fd();
	test_pass_fd_passcred();
	test_no_fd();
	test_many_fds(2, "two descriptors in one message give -EBADMSG, none leaked");
	test_many_fds(20, "twenty descriptors (truncated control data) give -EBADMSG, none leaked");
	test_eof();
	test_pass_two_fds();
	test_send_errors();
	test_numbered();
	return 0;
}
