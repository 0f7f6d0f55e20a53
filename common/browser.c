/*
 * Opening a URL in a browser without a shell (browser.h). Used by mcpctl
 * and by the keeper; touches nothing but the processes it starts.
 *
 * The keeper runs threads of its own (Berkeley DB's replication manager),
 * so everything is prepared before the fork: the entries split into argv
 * arrays, each program found on PATH, /dev/null opened. The forked
 * children make system calls only until their exec (HACKING.md, "Between
 * fork and exec").
 */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "browser.h"
#include "log.h"
#include "util.h"

#define OPENER_MAX_WORDS 30

extern char **environ;

/* One entry of the list, ready to exec. */
struct opener {
	char *path;					/* its program, found */
	char *argv[OPENER_MAX_WORDS + 2];		/* as written, the URL in place */
	char *sh_argv[OPENER_MAX_WORDS + 3];		/* /bin/sh PATH ARGS: a file without #! */
};

/* name as execvp() would find it: as given with a slash, else the first
 * executable regular file of that name in $PATH's directories. NULL when
 * there is none. */
static char *find_program(const char *name)
{
	const char *path = getenv("PATH"), *p;

	if (strchr(name, '/'))
		return xstrdup(name);
	if (!path)
		path = "/bin:/usr/bin"; /* execvp()'s default */
	for (p = path;; p++) {
		const char *end = strchrnul(p, ':');
		char *full = NULL;
		struct stat st;

		if (asprintf(&full, "%.*s%s%s", (int)(end - p), p, end > p ? "/" : "", name) < 0)
			fatal("out of memory");
		if (access(full, X_OK) == 0 && stat(full, &st) == 0 && S_ISREG(st.st_mode))
			return full;
		free(full);
		p = end;
		if (!*p)
			return NULL;
	}
}

/* The entries of list that name a program that exists; their count. */
static size_t openers_build(char *list, const char *url, struct opener **out)
{
	struct opener *o = xcalloc(strlen(list) / 2 + 1, sizeof(*o));
	char *save = NULL;
	size_t n = 0;

	for (char *entry = strtok_r(list, ":", &save); entry; entry = strtok_r(NULL, ":", &save)) {
		struct opener *e = &o[n];
		char *wsave = NULL;
		bool had_url = false;
		int argc = 0;

		for (char *w = strtok_r(entry, " \t", &wsave); w && argc < OPENER_MAX_WORDS;
		     w = strtok_r(NULL, " \t", &wsave)) {
			if (strcmp(w, "%s") == 0) {
				e->argv[argc++] = (char *)url;
				had_url = true;
			} else {
				e->argv[argc++] = w;
			}
		}
		if (!argc)
			continue;
		if (!had_url)
			e->argv[argc++] = (char *)url;
		e->argv[argc] = NULL;
		e->path = find_program(e->argv[0]);
		if (!e->path)
			continue;
		e->sh_argv[0] = (char *)"/bin/sh";
		e->sh_argv[1] = e->path;
		for (int i = 1; i <= argc; i++)
			e->sh_argv[i + 1] = e->argv[i];
		n++;
	}
	*out = o;
	return n;
}

/* The intermediate child: tries each opener in a grandchild, tells the
 * caller on ok_fd whether one exec'd. System calls only. */
static _noreturn_ void run_openers(const struct opener *o, size_t n, int ok_fd, int devnull)
{
	char ok;

	/* The keeper's descriptors (store, sockets) stay out of the browser,
	 * whatever flags they were opened with; so do its signal settings. */
	close_range(3, ~0U, CLOSE_RANGE_CLOEXEC);
	proc_signals_default();
	if (devnull >= 0) {
		dup2(devnull, STDIN_FILENO);
		dup2(devnull, STDOUT_FILENO);
	}
	setsid();
	for (size_t i = 0; i < n; i++) {
		int ep[2];
		pid_t g;

		if (pipe2(ep, O_CLOEXEC) < 0)
			_exit(1);
		/* _Fork: no atfork handler runs in a copy of a copy. */
		g = _Fork();
		if (g == 0) {
			execve(o[i].path, o[i].argv, environ);
			if (errno == ENOEXEC)
				execve(o[i].sh_argv[0], o[i].sh_argv, environ);
			ok = 0;
			(void)!write(ep[1], &ok, 1);
			_exit(127);
		}
		close(ep[1]);
		if (g > 0 && read(ep[0], &ok, 1) == 0) {
			/* exec succeeded: the pipe closed without a byte. */
			ok = 1;
			if (write(ok_fd, &ok, 1) < 0)
				_exit(1);
			_exit(0);
		}
		close(ep[0]);
		if (g > 0)
			waitpid(g, NULL, 0);
	}
	_exit(1);
}

int browser_open(const char *list_in, const char *url)
{
	_cleanup_(freep) char *list = NULL;
	struct opener *openers = NULL;
	int pfd[2], status, devnull, r = 0;
	size_t n;
	pid_t pid;
	char ok = 0;

	if (strncmp(url, "https://", 8) != 0 && strncmp(url, "http://", 7) != 0)
		return -EINVAL;
	list = xstrdup(list_in && *list_in ? list_in : "xdg-open");
	n = openers_build(list, url, &openers);
	if (n == 0)
		r = -ENOENT;
	else if (pipe2(pfd, O_CLOEXEC) < 0)
		r = -errno;
	if (r < 0)
		goto out;
	devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
	pid = fork();
	if (pid < 0) {
		r = -errno;
		close(pfd[0]);
		close(pfd[1]);
		fd_close(devnull);
		goto out;
	}
	if (pid == 0) {
		close(pfd[0]);
		run_openers(openers, n, pfd[1], devnull);
	}
	close(pfd[1]);
	fd_close(devnull);
	if (read(pfd[0], &ok, 1) != 1)
		ok = 0;
	close(pfd[0]);
	waitpid(pid, &status, 0);
	r = ok ? 0 : -ENOENT;
out:
	for (size_t i = 0; openers && i < n; i++)
		free(openers[i].path);
	free(openers);
	return r;
}
