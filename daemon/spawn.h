/*
 * The keeper's fork to exec of a child (spawn.c): everything the child
 * needs is prepared in a struct spawn_plan before fork(), and the forked
 * child carries it out with system calls only, because the keeper runs
 * threads it does not own (Berkeley DB's replication manager) and a forked
 * copy of a threaded process may deadlock on any lock another thread held
 * at the fork (HACKING.md, "Between fork and exec").
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* What a child failed at before its exec. */
enum spawn_step {
	SPAWN_STEP_NONE = 0,		/* it exec'd */
	SPAWN_STEP_DESCRIPTORS,		/* moving its descriptors into place */
	SPAWN_STEP_READ_IDS,		/* reading its ids (getresuid, getgroups) */
	SPAWN_STEP_SETGROUPS,
	SPAWN_STEP_SETRESGID,
	SPAWN_STEP_SETRESUID,
	SPAWN_STEP_IDS,			/* the switch of user is incomplete */
	SPAWN_STEP_AMBIENT,		/* clearing the ambient capabilities */
	SPAWN_STEP_EXEC,		/* execveat */
};

/* The child's report, one write(2) on a close-on-exec pipe; end of file
 * without one: the exec succeeded. */
struct spawn_report {
	int32_t step;			/* enum spawn_step */
	int32_t err;			/* its errno; 0 for SPAWN_STEP_IDS */
	uint32_t uids[3], gids[3];	/* SPAWN_STEP_IDS: real, effective, saved */
	int32_t groups;			/* SPAWN_STEP_IDS: supplementary groups kept */
};

#define SPAWN_MAX_ENV 32

/* A child's start, prepared by the keeper before fork(): the child reads
 * it and allocates nothing. */
struct spawn_plan {
	int channel;			/* becomes fd 3 (CHILD_FD_CHANNEL) */
	int descriptors;		/* fd 4 (CHILD_FD_DESCRIPTORS), or -1 */
	int fd5;			/* fd 5: the sandbox or the listener, or -1 */
	int dir_fd;			/* the binary's directory, for execveat() */
	const char *name;		/* the binary's name in it */
	char *argv[2];			/* its path, NULL */
	const char *envp[SPAWN_MAX_ENV + 1];	/* "NAME=VALUE" of environ, NULL */
	size_t n_env;
	bool switch_user;		/* system mode: become uid and gid */
	uid_t uid;
	gid_t gid;
};

/* Adds to p's environment the variables of names (NULL-terminated) that are
 * set in the keeper's, as getenv() finds them. In the keeper only. */
void spawn_env_keep(struct spawn_plan *p, const char *const *names);

/*
 * Forks and, in the child, carries out p and execs. Returns the child's pid
 * or a negative errno value (pipe, fork). Waits until the child has exec'd
 * or reported the step that failed in *rep (step SPAWN_STEP_NONE: it
 * exec'd); a child that failed exits with status 127, reaped as any other.
 */
pid_t spawn_run(const struct spawn_plan *p, struct spawn_report *rep);

/*
 * Async-signal-safe, for a forked child: becomes uid and gid with no
 * supplementary group, by raw system calls (glibc's wrappers would signal
 * the other threads, which a forked child does not have), and checks the
 * result. A process that already has exactly those ids changes nothing.
 * SPAWN_STEP_NONE, or the step that failed with *rep filled.
 */
enum spawn_step spawn_become(uid_t uid, gid_t gid, struct spawn_report *rep);

/* The step's name for messages ("setresuid", "execveat"). */
const char *spawn_step_name(enum spawn_step step);
