/*
 * stdio upstreams: one child process per client, running the configured
 * command with its args, and an environment of PATH, HOME and LANG (from
 * ours, which the keeper cleaned) with the configured env merged over it.
 *
 * The child's stdin and stdout carry newline-delimited JSON-RPC, relayed
 * both ways; its stderr goes to our log, line by line, as "NAME: LINE"
 * (control characters replaced, lines cut at STDIO_MAX_LOG_LINE). The child
 * gets nothing else of ours: every descriptor above 2 is closed before exec
 * (fd 3 and fd 4 are close-on-exec anyway), signal dispositions are reset,
 * and it runs in a process group of its own, so that ending it ends what it
 * started.
 *
 * A child that exits ends its client: the requests in flight get an error
 * and the connection closes. A client that goes closes the child's stdin;
 * a child still running after STDIO_TERM_DELAY_MS gets SIGTERM, and SIGKILL
 * STDIO_KILL_DELAY_MS later. Children are reaped on SIGCHLD.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <json-c/json.h>

#include "frame.h"
#include "log.h"
#include "proto.h"
#include "util.h"
#include "worker.h"

#define STDIO_MAX_LOG_LINE 1024
#define STDIO_TERM_DELAY_MS 1000
#define STDIO_KILL_DELAY_MS 5000
/* After the exit, time for the last output to arrive through the pipe. */
#define STDIO_DRAIN_MS 1000

struct proc {
	LIST_ENTRY(proc) link;
	struct worker *w;
	struct client *c;		/* NULL once its client has gone */
	unsigned long long number;	/* the client's, for the log */
	pid_t pid;
	struct bufferevent *in, *out, *err;
	struct event *timer;
	int stage;			/* 0 running, 1 stdin closed, 2 SIGTERM sent, 3 SIGKILL sent */
	bool exited;
	bool err_skipping;		/* inside a stderr line past the limit */
};

static void proc_free(struct proc *p)
{
	struct worker *w = p->w;

	if (p->c)
		p->c->proc = NULL;
	if (p->in)
		bufferevent_free(p->in);
	if (p->out)
		bufferevent_free(p->out);
	if (p->err)
		bufferevent_free(p->err);
	if (p->timer)
		event_free(p->timer);
	LIST_REMOVE(p, link);
	free(p);
	worker_check_stop(w);
}

/* -- stderr to the log -- */

static void log_child_line(struct proc *p, char *line, size_t len, bool cut)
{
	while (len > 0 && (line[len - 1] == '\r' || line[len - 1] == '\n'))
		len--;
	for (size_t i = 0; i < len; i++)
		if (((unsigned char)line[i] < 0x20 && line[i] != '\t') || line[i] == 0x7f)
			line[i] = '?';
	log_info("%s: %.*s%s", p->w->name, (int)len, line, cut ? " [cut]" : "");
}

static void proc_stderr_lines(struct proc *p, bool at_eof)
{
	struct evbuffer *in = bufferevent_get_input(p->err);

	for (;;) {
		size_t avail = evbuffer_get_length(in);
		struct evbuffer_ptr nl;
		size_t len, take;
		char *line;

		if (avail == 0)
			return;
		nl = evbuffer_search(in, "\n", 1, NULL);
		if (nl.pos < 0 && avail <= STDIO_MAX_LOG_LINE && !at_eof)
			return;
		len = nl.pos >= 0 ? (size_t)nl.pos : avail;
		take = len < STDIO_MAX_LOG_LINE ? len : STDIO_MAX_LOG_LINE;
		if (!p->err_skipping) {
			line = (char *)evbuffer_pullup(in, (ev_ssize_t)take);
			if (line)
				log_child_line(p, line, take, len > STDIO_MAX_LOG_LINE || (nl.pos < 0 && !at_eof));
		}
		if (nl.pos >= 0) {
			evbuffer_drain(in, len + 1);
			p->err_skipping = false;
		} else {
			evbuffer_drain(in, avail);
			p->err_skipping = !at_eof;
		}
	}
}

static void proc_err_read_cb(struct bufferevent *bev, void *arg)
{
	proc_stderr_lines(arg, false);
}

static void proc_err_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct proc *p = arg;

	proc_stderr_lines(p, true);
	bufferevent_free(p->err);
	p->err = NULL;
}

/* -- the child's end -- */

/* The command is gone for its client (exited, or broke the framing). */
static void proc_lost(struct proc *p, const char *why)
{
	struct client *c = p->c;

	if (!c)
		return;
	client_fail_all(c, RPC_INTERNAL_ERROR, "upstream %s: the command %s", p->w->name, why);
	client_shutdown(c, "the command has gone");
}

static void proc_out_read_cb(struct bufferevent *bev, void *arg)
{
	struct proc *p = arg;

	while (p->c) {
		char detail[128] = "";
		struct rpc_msg m;
		int r = frame_read(bufferevent_get_input(bev), PROTO_MAX_MESSAGE, &m, detail, sizeof(detail));

		if (r == FRAME_NEED_MORE)
			return;
		if (r == 0) {
			client_deliver(p->c, &m);
		} else if (r == FRAME_E_TOO_LARGE || r < 0) {
			rpc_msg_clear(&m);
			log_warn("client %llu: the command of %s wrote %s; stopping it", p->number, p->w->name,
				 r < 0 ? strerror(-r) : "a message over the size limit");
			proc_lost(p, "wrote a message over the size limit");
			return;
		} else {
			log_warn("client %llu: the command of %s wrote a line that is not JSON-RPC: %s", p->number,
				 p->w->name, detail);
		}
		rpc_msg_clear(&m);
	}
}

static void proc_out_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct proc *p = arg;

	proc_out_read_cb(bev, p);
	bufferevent_free(p->out);
	p->out = NULL;
	proc_lost(p, "exited");
}

static void proc_in_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct proc *p = arg;

	/* The child closed its stdin; its exit will follow or not. */
	bufferevent_free(p->in);
	p->in = NULL;
}

static void proc_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct proc *p = arg;
	struct timeval tv = { .tv_sec = STDIO_KILL_DELAY_MS / 1000, .tv_usec = (STDIO_KILL_DELAY_MS % 1000) * 1000 };

	if (p->exited) {
		/* Exited, but something still holds its stdout: give up waiting.
		 * Ending the client frees p (it has exited). */
		if (p->c)
			proc_lost(p, "exited");
		else
			proc_free(p);
		return;
	}
	if (p->stage < 2) {
		log_info("client %llu: stopping the command of %s (pid %d)", p->number, p->w->name, (int)p->pid);
		kill(-p->pid, SIGTERM);
		p->stage = 2;
		evtimer_add(p->timer, &tv);
	} else if (p->stage == 2) {
		log_warn("client %llu: the command of %s (pid %d) ignored SIGTERM; killing it", p->number,
			 p->w->name, (int)p->pid);
		kill(-p->pid, SIGKILL);
		p->stage = 3;
	}
}

void stdio_client_close(struct client *c)
{
	struct proc *p = c->proc;
	struct timeval tv = { .tv_sec = STDIO_TERM_DELAY_MS / 1000, .tv_usec = (STDIO_TERM_DELAY_MS % 1000) * 1000 };

	if (!p)
		return;
	c->proc = NULL;
	p->c = NULL;
	if (p->out) {
		bufferevent_free(p->out);
		p->out = NULL;
	}
	if (p->exited) {
		proc_free(p);
		return;
	}
	/* EOF on its stdin is the polite way to ask a stdio server to end. */
	if (p->in) {
		bufferevent_free(p->in);
		p->in = NULL;
	}
	p->stage = 1;
	evtimer_add(p->timer, &tv);
}

void stdio_reap(struct worker *w)
{
	for (;;) {
		struct timeval tv = { .tv_sec = STDIO_DRAIN_MS / 1000, .tv_usec = (STDIO_DRAIN_MS % 1000) * 1000 };
		struct proc *p;
		int status;
		pid_t pid = waitpid(-1, &status, WNOHANG);

		if (pid <= 0)
			return;
		LIST_FOREACH(p, &w->procs, link)
			if (p->pid == pid)
				break;
		if (!p)
			continue;
		if (WIFEXITED(status))
			log_info("client %llu: the command of %s (pid %d) exited with status %d", p->number, w->name,
				 (int)pid, WEXITSTATUS(status));
		else if (WIFSIGNALED(status))
			log_info("client %llu: the command of %s (pid %d) was killed by signal %d", p->number, w->name,
				 (int)pid, WTERMSIG(status));
		p->exited = true;
		if (p->err)
			proc_stderr_lines(p, false);
		if (!p->c) {
			proc_free(p);
			continue;
		}
		/* Its last output may still be in the pipe: stdout's EOF ends the
		 * client, or this timer when a grandchild holds the pipe open. */
		evtimer_del(p->timer);
		evtimer_add(p->timer, &tv);
	}
}

void stdio_free_all(struct worker *w)
{
	while (!LIST_EMPTY(&w->procs)) {
		struct proc *p = LIST_FIRST(&w->procs);

		if (!p->exited)
			kill(-p->pid, SIGKILL);
		proc_free(p);
	}
}

/* The command's path: as given when it has a slash, else found on PATH
 * from the environment it will run with. */
static char *stdio_resolve(struct worker *w)
{
	const char *path = NULL, *cmd = w->argv[0];

	if (strchr(cmd, '/'))
		return xstrdup(cmd);
	for (char **e = w->envp; *e; e++)
		if (strncmp(*e, "PATH=", 5) == 0)
			path = *e + 5;
	if (!path)
		path = "/usr/local/bin:/usr/bin:/bin";
	while (*path) {
		const char *end = strchr(path, ':');
		size_t len = end ? (size_t)(end - path) : strlen(path);

		if (len > 0) {
			size_t size = len + 1 + strlen(cmd) + 1;
			char *full = xmalloc(size);

			snprintf(full, size, "%.*s/%s", (int)len, path, cmd);
			if (access(full, X_OK) == 0)
				return full;
			free(full);
		}
		path += len;
		if (*path == ':')
			path++;
	}
	errno = ENOENT;
	return NULL;
}

int stdio_open(struct client *c)
{
	struct worker *w = c->w;
	_cleanup_(freep) char *exe = stdio_resolve(w);
	int in[2] = { -1, -1 }, out[2] = { -1, -1 }, err[2] = { -1, -1 };
	struct proc *p;
	pid_t pid;

	if (!exe) {
		log_error("client %llu: command %s of %s not found", (unsigned long long)c->number, w->argv[0], w->name);
		return -ENOENT;
	}
	if (pipe2(in, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0) {
		int r = -errno;

		log_error("client %llu: pipe: %m", (unsigned long long)c->number);
		for (int i = 0; i < 2; i++) {
			fd_close(in[i]);
			fd_close(out[i]);
			fd_close(err[i]);
		}
		return r;
	}
	pid = fork();
	if (pid < 0) {
		int r = -errno;

		log_error("client %llu: fork: %m", (unsigned long long)c->number);
		for (int i = 0; i < 2; i++) {
			fd_close(in[i]);
			fd_close(out[i]);
			fd_close(err[i]);
		}
		return r;
	}
	if (pid == 0) {
		/* Only async-signal-safe calls from here to exec. */
		const int sigs[] = { SIGTERM, SIGINT, SIGHUP, SIGPIPE, SIGCHLD };
		struct sigaction sa = { .sa_handler = SIG_DFL };
		sigset_t none;

		for (size_t i = 0; i < ARRAY_SIZE(sigs); i++)
			sigaction(sigs[i], &sa, NULL);
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		setpgid(0, 0);
		if (dup2(in[0], STDIN_FILENO) < 0 || dup2(out[1], STDOUT_FILENO) < 0 || dup2(err[1], STDERR_FILENO) < 0)
			_exit(126);
		close_range(3, ~0U, 0);
		execve(exe, w->argv, w->envp);
		{
			static const char msg[] = "cannot execute the command\n";

			(void)!write(STDERR_FILENO, msg, sizeof(msg) - 1);
		}
		_exit(127);
	}
	close(in[0]);
	close(out[1]);
	close(err[1]);
	/* Also here, so that a signal to the group never races the child's own setpgid. */
	setpgid(pid, pid);

	p = xcalloc(1, sizeof(*p));
	p->w = w;
	p->c = c;
	p->number = (unsigned long long)c->number;
	p->pid = pid;
	fd_set_nonblock(in[1], 1);
	fd_set_nonblock(out[0], 1);
	fd_set_nonblock(err[0], 1);
	p->in = bufferevent_socket_new(w->base, in[1], BEV_OPT_CLOSE_ON_FREE);
	p->out = bufferevent_socket_new(w->base, out[0], BEV_OPT_CLOSE_ON_FREE);
	p->err = bufferevent_socket_new(w->base, err[0], BEV_OPT_CLOSE_ON_FREE);
	p->timer = evtimer_new(w->base, proc_timer_cb, p);
	if (!p->in || !p->out || !p->err || !p->timer)
		fatal("out of memory");
	frame_bev_setup(p->out, PROTO_MAX_MESSAGE);
	bufferevent_setcb(p->in, NULL, NULL, proc_in_event_cb, p);
	bufferevent_setcb(p->out, proc_out_read_cb, NULL, proc_out_event_cb, p);
	bufferevent_setcb(p->err, proc_err_read_cb, NULL, proc_err_event_cb, p);
	bufferevent_enable(p->in, EV_WRITE);
	bufferevent_enable(p->out, EV_READ);
	bufferevent_enable(p->err, EV_READ);
	LIST_INSERT_HEAD(&w->procs, p, link);
	c->proc = p;
	log_info("client %llu: started %s (pid %d)", p->number, exe, (int)pid);
	return 0;
}

int stdio_send(struct client *c, const char *text, size_t len)
{
	struct proc *p = c->proc;
	struct evbuffer *out;

	if (!p || !p->in)
		return -EPIPE;
	out = bufferevent_get_output(p->in);
	if (evbuffer_expand(out, len + 1) < 0 || evbuffer_add(out, text, len) < 0 || evbuffer_add(out, "\n", 1) < 0)
		return -ENOMEM;
	return 0;
}
