/*
 * The keeper's fork to exec of a child (spawn.h). The keeper prepares the
 * whole start before fork(): the environment (pointers into its own
 * environ), argv, the descriptors, the user's ids (looked up at start and
 * reload). The forked child then makes system calls only, no allocation,
 * no stdio, no log line, no NSS, until its exec, and leaves with _exit():
 * the keeper runs threads of its own (Berkeley DB's replication manager)
 * and a lock one of them held at the fork stays held forever in the copy.
 * A step that fails is reported to the keeper as a fixed-size record on a
 * close-on-exec pipe, which the keeper logs (child.c); the pipe's end of
 * file says the exec succeeded.
 *
 * Touches: the descriptors and ids of the forked child, nothing else.
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "log.h"
#include "proto.h"
#include "spawn.h"
#include "util.h"

/* The 32-bit id calls where the plain ones take 16-bit ids (i386, arm). */
#ifdef SYS_setresuid32
#define SYS_GETRESUID SYS_getresuid32
#define SYS_GETRESGID SYS_getresgid32
#define SYS_GETGROUPS SYS_getgroups32
#define SYS_SETGROUPS SYS_setgroups32
#define SYS_SETRESGID SYS_setresgid32
#define SYS_SETRESUID SYS_setresuid32
#else
#define SYS_GETRESUID SYS_getresuid
#define SYS_GETRESGID SYS_getresgid
#define SYS_GETGROUPS SYS_getgroups
#define SYS_SETGROUPS SYS_setgroups
#define SYS_SETRESGID SYS_setresgid
#define SYS_SETRESUID SYS_setresuid
#endif

extern char **environ;

void spawn_env_keep(struct spawn_plan *p, const char *const *names)
{
	for (size_t i = 0; names[i]; i++) {
		size_t len = strlen(names[i]);

		for (char **e = environ; e && *e; e++) {
			if (strncmp(*e, names[i], len) != 0 || (*e)[len] != '=')
				continue;
			if (p->n_env >= SPAWN_MAX_ENV)
				fatal("a child's environment holds more than %d variables", SPAWN_MAX_ENV);
			p->envp[p->n_env++] = *e;
			break;
		}
	}
	p->envp[p->n_env] = NULL;
}

const char *spawn_step_name(enum spawn_step step)
{
	switch (step) {
	case SPAWN_STEP_NONE:
		return "none";
	case SPAWN_STEP_DESCRIPTORS:
		return "moving its descriptors into place";
	case SPAWN_STEP_READ_IDS:
		return "reading its ids";
	case SPAWN_STEP_SETGROUPS:
		return "setgroups";
	case SPAWN_STEP_SETRESGID:
		return "setresgid";
	case SPAWN_STEP_SETRESUID:
		return "setresuid";
	case SPAWN_STEP_IDS:
		return "checking its ids";
	case SPAWN_STEP_AMBIENT:
		return "clearing its ambient capabilities";
	case SPAWN_STEP_EXEC:
		return "execveat";
	}
	return "an unknown step";
}

/* --- from here to spawn_run(): the forked child's code, async-signal-safe --- */

/* Whether this process's real, effective and saved uid and gid are exactly
 * uid and gid, with no supplementary group but gid: SPAWN_STEP_NONE, else
 * the step with *rep filled. */
static enum spawn_step ids_are(uid_t uid, gid_t gid, struct spawn_report *rep)
{
	uid_t u[3];
	gid_t g[3], groups[2];
	long n;

	if (syscall(SYS_GETRESUID, &u[0], &u[1], &u[2]) < 0 || syscall(SYS_GETRESGID, &g[0], &g[1], &g[2]) < 0) {
		rep->err = errno;
		return SPAWN_STEP_READ_IDS;
	}
	n = syscall(SYS_GETGROUPS, (int)ARRAY_SIZE(groups), groups);
	if (n < 0 && errno == EINVAL)
		n = (long)ARRAY_SIZE(groups) + 1; /* more than fit: too many anyway */
	if (n < 0) {
		rep->err = errno;
		return SPAWN_STEP_READ_IDS;
	}
	for (int i = 0; i < 3; i++) {
		rep->uids[i] = (uint32_t)u[i];
		rep->gids[i] = (uint32_t)g[i];
	}
	rep->groups = (int32_t)n;
	for (int i = 0; i < 3; i++)
		if (u[i] != uid || g[i] != gid)
			return SPAWN_STEP_IDS;
	if (n > 1 || (n == 1 && groups[0] != gid))
		return SPAWN_STEP_IDS;
	return SPAWN_STEP_NONE;
}

enum spawn_step spawn_become(uid_t uid, gid_t gid, struct spawn_report *rep)
{
	enum spawn_step step = ids_are(uid, gid, rep);

	if (step == SPAWN_STEP_NONE)
		return step;
	rep->err = 0;
	if (syscall(SYS_SETGROUPS, 0, NULL) < 0)
		step = SPAWN_STEP_SETGROUPS;
	else if (syscall(SYS_SETRESGID, gid, gid, gid) < 0)
		step = SPAWN_STEP_SETRESGID;
	else if (syscall(SYS_SETRESUID, uid, uid, uid) < 0)
		step = SPAWN_STEP_SETRESUID;
	else
		return ids_are(uid, gid, rep);
	rep->err = errno;
	return step;
}

static _noreturn_ void fail(int report, struct spawn_report *rep, enum spawn_step step, int err)
{
	rep->step = (int32_t)step;
	if (err)
		rep->err = err;
	(void)!write(report, rep, sizeof(*rep));
	_exit(127);
}

/* Moves fd above the descriptors the child's layout takes, or fails. */
static int out_of_the_way(int fd, int cmd, int report, struct spawn_report *rep)
{
	int moved;

	if (fd < 0)
		return -1;
	moved = fcntl(fd, cmd, 10);
	if (moved < 0)
		fail(report, rep, SPAWN_STEP_DESCRIPTORS, errno);
	return moved;
}

/* In the forked child, before exec: nothing of the keeper may leak. */
static _noreturn_ void spawn_child(const struct spawn_plan *p, int report)
{
	struct spawn_report rep;
	int fd, desc, fd5, bin, devnull, flags, err, first_free;
	enum spawn_step step;

	memset(&rep, 0, sizeof(rep));
	proc_signals_default();

	/* Move every end out of the way of 3 to 7 first, then into place. */
	report = fcntl(report, F_DUPFD_CLOEXEC, 10);
	if (report < 0)
		_exit(127); /* nothing to report through: the keeper logs the exit */
	fd = out_of_the_way(p->channel, F_DUPFD, report, &rep);
	desc = out_of_the_way(p->descriptors, F_DUPFD, report, &rep);
	fd5 = out_of_the_way(p->fd5, F_DUPFD, report, &rep);
	bin = out_of_the_way(p->dir_fd, F_DUPFD_CLOEXEC, report, &rep);
	/* fd5 is the stdio worker's sandbox or the http child's listener: both
	 * go to fd 5 (CHILD_FD_JAIL, CHILD_FD_LISTEN), after fd 4. */
	if (fd5 >= 0 && desc < 0)
		fail(report, &rep, SPAWN_STEP_DESCRIPTORS, EBADF);
	if (dup2(fd, CHILD_FD_CHANNEL) < 0 || (desc >= 0 && dup2(desc, CHILD_FD_DESCRIPTORS) < 0) ||
	    (fd5 >= 0 && dup2(fd5, CHILD_FD_JAIL) < 0))
		fail(report, &rep, SPAWN_STEP_DESCRIPTORS, errno);
	/* The binary's directory goes right above the channels (5 stays free
	 * without fd5: a script's interpreter inherits this one), the report
	 * pipe above it; both close at exec (O_CLOEXEC). */
	first_free = CHILD_FD_JAIL + 1;
	if (dup3(bin, first_free, O_CLOEXEC) < 0 || dup3(report, first_free + 1, O_CLOEXEC) < 0)
		fail(report, &rep, SPAWN_STEP_DESCRIPTORS, errno);
	bin = first_free;
	report = first_free + 1;
	/* What the layout leaves out stays closed (an original end may sit there). */
	if (desc < 0)
		close(CHILD_FD_DESCRIPTORS);
	if (fd5 < 0)
		close(CHILD_FD_JAIL);
	flags = fcntl(CHILD_FD_CHANNEL, F_GETFL);
	if (flags < 0 || fcntl(CHILD_FD_CHANNEL, F_SETFL, flags & ~O_NONBLOCK) < 0)
		fail(report, &rep, SPAWN_STEP_DESCRIPTORS, errno);
	devnull = open("/dev/null", O_RDONLY);
	if (devnull >= 0 && devnull != STDIN_FILENO) {
		dup2(devnull, STDIN_FILENO);
		close(devnull);
	}
	/* Everything above closes: the store, the control socket, other
	 * children's channels, the originals moved above. */
	if (close_range((unsigned)report + 1, ~0U, 0) < 0) {
		for (int i = report + 1; i < 65536; i++)
			close(i);
	}

	/* System mode: each role has its own user, which cannot read the state
	 * directory nor another role's memory. */
	if (p->switch_user) {
		step = spawn_become(p->uid, p->gid, &rep);
		if (step != SPAWN_STEP_NONE)
			fail(report, &rep, step, 0);
	}
	/*
	 * The unit gives the keeper CAP_SETUID/CAP_SETGID as ambient capabilities.
	 * A switch between two non-root uids keeps ambient capabilities across
	 * execve, which would let a child switch back to the keeper's user.
	 */
	if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0 && errno != EINVAL)
		fail(report, &rep, SPAWN_STEP_AMBIENT, errno);

	execveat(bin, p->name, p->argv, (char *const *)p->envp, 0);
	err = errno;
	/* A script (a test's wrapper) is handed to its interpreter as
	 * /dev/fd/N/NAME, which a close-on-exec N makes unreachable: only then
	 * the directory's descriptor stays open across the exec. */
	if (err == ENOENT && fcntl(bin, F_SETFD, 0) == 0) {
		execveat(bin, p->name, p->argv, (char *const *)p->envp, 0);
		err = errno;
	}
	fail(report, &rep, SPAWN_STEP_EXEC, err);
}

/* --- the keeper's side --- */

pid_t spawn_run(const struct spawn_plan *p, struct spawn_report *rep)
{
	int pfd[2];
	size_t got = 0;
	pid_t pid;

	memset(rep, 0, sizeof(*rep));
	if (pipe2(pfd, O_CLOEXEC) < 0)
		return -errno;
	pid = fork();
	if (pid < 0) {
		int r = -errno;

		close(pfd[0]);
		close(pfd[1]);
		return r;
	}
	if (pid == 0) {
		close(pfd[0]);
		spawn_child(p, pfd[1]);
	}
	close(pfd[1]);
	/* Until the exec closes the pipe or the report comes: the child makes
	 * a few system calls only, and cannot block on a lock. */
	while (got < sizeof(*rep)) {
		ssize_t n = read(pfd[0], (char *)rep + got, sizeof(*rep) - got);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	close(pfd[0]);
	if (got != sizeof(*rep))
		memset(rep, 0, sizeof(*rep)); /* exec'd, or died without a word (its exit says how) */
	return pid;
}
