/*
 * Opening a URL in a browser without a shell (browser.h). Used by mcpctl
 * and by the keeper; touches nothing but the processes it starts.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "browser.h"
#include "util.h"

int browser_open(const char *list_in, const char *url)
{
	int pfd[2], status;
	pid_t pid;
	char ok;

	if (strncmp(url, "https://", 8) != 0 && strncmp(url, "http://", 7) != 0)
		return -EINVAL;
	if (pipe2(pfd, O_CLOEXEC) < 0)
		return -errno;
	pid = fork();
	if (pid < 0) {
		close(pfd[0]);
		close(pfd[1]);
		return -errno;
	}
	if (pid == 0) {
		_cleanup_(freep) char *list = strdup(list_in && *list_in ? list_in : "xdg-open");
		char *save = NULL;
		int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);

		sigset_t none;

		close(pfd[0]);
		if (!list)
			_exit(1);
		/* The keeper's descriptors (store, sockets) stay out of the browser,
		 * whatever flags they were opened with; so do its signal settings. */
		close_range(3, ~0U, CLOSE_RANGE_CLOEXEC);
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		for (int sig = 1; sig < NSIG; sig++)
			signal(sig, SIG_DFL);
		if (devnull >= 0) {
			dup2(devnull, STDIN_FILENO);
			dup2(devnull, STDOUT_FILENO);
		}
		setsid();
		for (char *entry = strtok_r(list, ":", &save); entry; entry = strtok_r(NULL, ":", &save)) {
			char *argv[32], *wsave = NULL;
			int argc = 0, ep[2];
			bool had_url = false;
			pid_t g;

			for (char *w = strtok_r(entry, " \t", &wsave); w && argc < 30; w = strtok_r(NULL, " \t", &wsave)) {
				if (strcmp(w, "%s") == 0) {
					argv[argc++] = (char *)url;
					had_url = true;
				} else {
					argv[argc++] = w;
				}
			}
			if (!argc)
				continue;
			if (!had_url)
				argv[argc++] = (char *)url;
			argv[argc] = NULL;
			if (pipe2(ep, O_CLOEXEC) < 0)
				_exit(1);
			g = fork();
			if (g == 0) {
				execvp(argv[0], argv);
				ok = 0;
				if (write(ep[1], &ok, 1) < 0)
					_exit(127);
				_exit(127);
			}
			close(ep[1]);
			if (g > 0 && read(ep[0], &ok, 1) == 0) {
				/* exec succeeded: the pipe closed without a byte. */
				ok = 1;
				if (write(pfd[1], &ok, 1) < 0)
					_exit(1);
				_exit(0);
			}
			close(ep[0]);
			if (g > 0)
				waitpid(g, NULL, 0);
		}
		_exit(1);
	}
	close(pfd[1]);
	ok = 0;
	if (read(pfd[0], &ok, 1) != 1)
		ok = 0;
	close(pfd[0]);
	waitpid(pid, &status, 0);
	return ok ? 0 : -ENOENT;
}

