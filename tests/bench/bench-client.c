/*
 * bench-client: the load generators of mcpkeeper's benchmarks, driven by
 * tests/bench/run. Written in C so that a measured ratio is the proxy's cost,
 * not the client's: every mode is a closed loop (each client sends one
 * request, waits for its whole answer, sends the next) with one thread per
 * client and a monotonic clock around each request.
 *
 *   bench-client mcp-direct URL CLIENTS SECONDS WARMUP
 *       MCP streamable HTTP straight to URL with libcurl: one easy handle
 *       (one keep-alive connection) per client, the access token from
 *       $BENCH_TOKEN, an MCP session per client (initialize,
 *       notifications/initialized), then tools/call echo in a loop.
 *   bench-client mcp-stdio CLIENTS SECONDS WARMUP -- CMD [ARG...]
 *       The same session and calls as newline-delimited JSON-RPC over the
 *       stdin/stdout pipes of one CMD per client (`mcpctl connect NAME`).
 *   bench-client mcp-socket SOCKET SERVER CLIENTS SECONDS WARMUP
 *       The same over the connection itself: `connect` on the keeper's control
 *       socket, then that socket (now the worker's) carries the session. This
 *       is the proxied path without the mcpctl bridge in it.
 *   bench-client control SOCKET CLIENTS SECONDS WARMUP [METHOD]
 *       One Unix socket connection per client to the keeper's control
 *       socket, sending METHOD (default status) in a loop.
 *   bench-client logins ORIGIN CLIENT_ID COUNT
 *       COUNT authorization-code logins (PKCE S256) at the test peer over one
 *       keep-alive connection; prints "ACCESS<TAB>REFRESH" per login.
 *
 * The load modes run WARMUP seconds unmeasured, then SECONDS measured, and
 * print one JSON object: requests completed in the measured window, errors,
 * requests per second, and latency percentiles in microseconds. A request
 * counts when it completes inside the window; the error count includes
 * JSON-RPC errors and failed transfers. Exit status 0 only if the setup of
 * every client worked and no request failed.
 *
 * CPU: with BENCH_WATCH="NAME=PID,..." the object also holds cpu_us_per_req:
 * the CPU time each named process spent inside the measured window (all its
 * threads, from /proc/PID/task/TID/schedstat) divided by the requests
 * completed in it; "client" is this process (from getrusage), "bridges" the
 * sum of the mcp-stdio children. It says where a request's time goes.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <json-c/json.h>
#include <sodium.h>

#define ECHO_TEXT "hello from mcpkeeper's benchmark"
#define PROTOCOL_VERSION "2025-06-18"
#define INITIALIZE                                                                                         \
	"{\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"initialize\",\"params\":{\"protocolVersion\":\"" \
	PROTOCOL_VERSION "\",\"capabilities\":{},\"clientInfo\":{\"name\":\"bench-client\",\"version\":\"1\"}}}"
#define INITIALIZED "{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}"
#define SETUP_TIMEOUT_S 30

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void die(const char *fmt, ...)
{
	va_list ap;

	fputs("bench-client: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(1);
}

static void *xrealloc(void *p, size_t n)
{
	p = realloc(p, n);
	if (!p)
		die("out of memory");
	return p;
}

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static long parse_num(const char *s, const char *what, long min, long max)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || *end || v < min || v > max)
		die("%s: expected a number in %ld..%ld, got \"%s\"", what, min, max, s);
	return v;
}

/* ---- a growable byte buffer ---- */

struct buf {
	char *data;
	size_t len, cap;
};

static void buf_add(struct buf *b, const void *p, size_t n)
{
	if (b->len + n + 1 > b->cap) {
		b->cap = (b->len + n + 1) * 2;
		b->data = xrealloc(b->data, b->cap);
	}
	memcpy(b->data + b->len, p, n);
	b->len += n;
	b->data[b->len] = '\0';
}

/* ---- newline framing over a file descriptor ---- */

struct lines {
	int fd;
	struct buf in;
	size_t start;		/* where the next line begins in in */
};

/* The next line without its newline (NUL-terminated, valid until the next
 * call), or NULL at EOF or error. */
static char *lines_next(struct lines *l, size_t *len)
{
	for (;;) {
		char *nl = l->in.len > l->start ? memchr(l->in.data + l->start, '\n', l->in.len - l->start) : NULL;
		char chunk[65536];
		ssize_t n;

		if (nl) {
			char *line = l->in.data + l->start;

			*nl = '\0';
			*len = (size_t)(nl - line);
			l->start = (size_t)(nl - l->in.data) + 1;
			return line;
		}
		if (l->start > 0) {
			memmove(l->in.data, l->in.data + l->start, l->in.len - l->start);
			l->in.len -= l->start;
			l->start = 0;
		}
		n = read(l->fd, chunk, sizeof(chunk));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return NULL;
		buf_add(&l->in, chunk, (size_t)n);
	}
}

static int write_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* ---- the measured loop, common to every load mode ---- */

struct run;

struct client {
	struct run *run;
	int index;
	/* mcp-stdio */
	pid_t pid;
	int to_fd;
	struct lines from;
	/* mcp-direct */
	CURL *easy;
	struct curl_slist *headers;
	struct buf resp;
	char session[257];
	/* control */
	int sock;
	/* results */
	int64_t *lat_ns;
	size_t n_lat, cap_lat;
	long errors;
	long setup_failed;
	char first_error[256];
};

struct run {
	const char *mode;
	int n;
	struct client *clients;
	pthread_barrier_t ready;
	int64_t t_warm, t_end;	/* set by the main thread between the two barriers */
	/* One request: 0 when it succeeded. */
	int (*request)(struct client *c, int64_t id);
	int (*setup)(struct client *c);
	const char *url;
	const char *token;
	const char *socket_path;
	const char *method;
	char *const *cmd;
};

/* Keeps the first error's text; the caller counts. */
static void record_error(struct client *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void record_error(struct client *c, const char *fmt, ...)
{
	va_list ap;

	if (c->first_error[0])
		return;
	va_start(ap, fmt);
	vsnprintf(c->first_error, sizeof(c->first_error), fmt, ap);
	va_end(ap);
}

static void *client_main(void *arg)
{
	struct client *c = arg;
	struct run *r = c->run;
	int64_t id = 1;

	if (r->setup(c) < 0)
		c->setup_failed = 1;
	pthread_barrier_wait(&r->ready);	/* every client set up */
	pthread_barrier_wait(&r->ready);	/* the main thread set the window */
	if (c->setup_failed)
		return NULL;
	for (;;) {
		int64_t t0 = now_ns(), t1;
		int bad;

		if (t0 >= r->t_end)
			break;
		bad = r->request(c, id++);
		t1 = now_ns();
		if (t0 < r->t_warm || t1 > r->t_end)
			continue;
		if (bad) {
			c->errors++;
			if (bad < 0)
				break;	/* the connection is gone */
			continue;
		}
		if (c->n_lat == c->cap_lat) {
			c->cap_lat = c->cap_lat ? c->cap_lat * 2 : 4096;
			c->lat_ns = xrealloc(c->lat_ns, c->cap_lat * sizeof(*c->lat_ns));
		}
		c->lat_ns[c->n_lat++] = t1 - t0;
	}
	return NULL;
}

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

	return (x > y) - (x < y);
}

/* Nearest rank. */
static double pct_us(const int64_t *v, size_t n, double p)
{
	size_t i;

	if (n == 0)
		return 0;
	i = (size_t)(p * (double)n + 0.999999);
	if (i < 1)
		i = 1;
	if (i > n)
		i = n;
	return (double)v[i - 1] / 1000.0;
}

/* ---- CPU time of the processes on the path ---- */

static int stdio_setup(struct client *c);

#define WATCH_MAX 8

struct watch {
	char name[32];
	pid_t pids[4096];
	int n_pids;
	int64_t start_ns, end_ns;
};

/* CPU time of every thread of pid, in ns; 0 when it is gone. */
static int64_t cpu_ns(pid_t pid)
{
	char path[64], line[128];
	int64_t total = 0;
	DIR *d;
	struct dirent *e;

	snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
	d = opendir(path);
	if (!d)
		return 0;
	while ((e = readdir(d))) {
		char p2[320];
		FILE *f;
		long long ns;

		if (e->d_name[0] == '.')
			continue;
		snprintf(p2, sizeof(p2), "/proc/%d/task/%s/schedstat", (int)pid, e->d_name);
		f = fopen(p2, "re");
		if (!f)
			continue;
		if (fgets(line, sizeof(line), f) && sscanf(line, "%lld", &ns) == 1)
			total += ns;
		fclose(f);
	}
	closedir(d);
	return total;
}

/* This process through getrusage: its client threads end around the end
 * of the window, and /proc forgets a thread once it is gone. */
static int64_t self_cpu_ns(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return ((int64_t)ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000 +
	       ((int64_t)ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000;
}

static int64_t watch_sample(const struct watch *w)
{
	int64_t t = 0;

	for (int i = 0; i < w->n_pids; i++)
		t += w->pids[i] == getpid() ? self_cpu_ns() : cpu_ns(w->pids[i]);
	return t;
}

static void sleep_until(int64_t t_ns)
{
	struct timespec ts = { .tv_sec = t_ns / 1000000000, .tv_nsec = t_ns % 1000000000 };

	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
		;
}

/* client, bridges (mcp-stdio), then $BENCH_WATCH. */
static int watch_setup(struct run *r, struct watch *w)
{
	const char *env = getenv("BENCH_WATCH");
	int n = 0;

	snprintf(w[n].name, sizeof(w[n].name), "client");
	w[n].pids[w[n].n_pids++] = getpid();
	n++;
	if (r->setup == stdio_setup) {
		snprintf(w[n].name, sizeof(w[n].name), "bridges");
		for (int i = 0; i < r->n && i < 4096; i++)
			if (r->clients[i].pid > 0)
				w[n].pids[w[n].n_pids++] = r->clients[i].pid;
		n++;
	}
	while (env && *env && n < WATCH_MAX) {
		const char *eq = strchr(env, '='), *comma;

		if (!eq)
			break;
		comma = strchr(eq, ',');
		snprintf(w[n].name, sizeof(w[n].name), "%.*s", (int)(eq - env), env);
		w[n].pids[w[n].n_pids++] = (pid_t)atoi(eq + 1);
		n++;
		env = comma ? comma + 1 : NULL;
	}
	return n;
}

static int run_load(struct run *r, long seconds, long warmup)
{
	pthread_t *threads = calloc((size_t)r->n, sizeof(*threads));
	int64_t *all = NULL, sum = 0;
	size_t total = 0;
	long errors = 0, setup_failed = 0;
	const char *first_error = "";
	double window;
	static struct watch watch[WATCH_MAX];
	int n_watch;

	if (!threads || pthread_barrier_init(&r->ready, NULL, (unsigned)r->n + 1))
		die("out of memory");
	for (int i = 0; i < r->n; i++) {
		r->clients[i].run = r;
		r->clients[i].index = i;
		r->clients[i].to_fd = r->clients[i].sock = -1;
		if (pthread_create(&threads[i], NULL, client_main, &r->clients[i]))
			die("pthread_create failed");
	}
	pthread_barrier_wait(&r->ready);
	r->t_warm = now_ns() + warmup * 1000000000LL;
	r->t_end = r->t_warm + seconds * 1000000000LL;
	n_watch = watch_setup(r, watch);
	pthread_barrier_wait(&r->ready);
	sleep_until(r->t_warm);
	for (int i = 0; i < n_watch; i++)
		watch[i].start_ns = watch_sample(&watch[i]);
	sleep_until(r->t_end);
	for (int i = 0; i < n_watch; i++)
		watch[i].end_ns = watch_sample(&watch[i]);
	for (int i = 0; i < r->n; i++)
		pthread_join(threads[i], NULL);
	free(threads);

	for (int i = 0; i < r->n; i++) {
		struct client *c = &r->clients[i];

		all = xrealloc(all, (total + c->n_lat + 1) * sizeof(*all));
		memcpy(all + total, c->lat_ns, c->n_lat * sizeof(*all));
		total += c->n_lat;
		errors += c->errors;
		setup_failed += c->setup_failed;
		if (!first_error[0] && c->first_error[0])
			first_error = c->first_error;
	}
	qsort(all, total, sizeof(*all), cmp_i64);
	for (size_t i = 0; i < total; i++)
		sum += all[i];
	window = (double)seconds;
	{
		struct json_object *o = json_object_new_object();

		json_object_object_add(o, "mode", json_object_new_string(r->mode));
		json_object_object_add(o, "clients", json_object_new_int(r->n));
		json_object_object_add(o, "seconds", json_object_new_double(window));
		json_object_object_add(o, "requests", json_object_new_int64((int64_t)total));
		json_object_object_add(o, "errors", json_object_new_int64(errors));
		json_object_object_add(o, "setup_failed", json_object_new_int64(setup_failed));
		json_object_object_add(o, "first_error", json_object_new_string(first_error));
		json_object_object_add(o, "rps", json_object_new_double((double)total / window));
		json_object_object_add(o, "mean_us", json_object_new_double(total ? (double)sum / (double)total / 1000.0 : 0));
		json_object_object_add(o, "p50_us", json_object_new_double(pct_us(all, total, 0.50)));
		json_object_object_add(o, "p90_us", json_object_new_double(pct_us(all, total, 0.90)));
		json_object_object_add(o, "p99_us", json_object_new_double(pct_us(all, total, 0.99)));
		json_object_object_add(o, "p999_us", json_object_new_double(pct_us(all, total, 0.999)));
		json_object_object_add(o, "max_us", json_object_new_double(total ? (double)all[total - 1] / 1000.0 : 0));
		{
			struct json_object *cpu = json_object_new_object();

			for (int i = 0; i < n_watch; i++)
				json_object_object_add(cpu, watch[i].name,
						       json_object_new_double(total ? (double)(watch[i].end_ns - watch[i].start_ns) /
										      1000.0 / (double)total
										    : 0));
			json_object_object_add(o, "cpu_us_per_req", cpu);
		}
		printf("%s\n", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
		json_object_put(o);
	}
	free(all);
	return errors || setup_failed || total == 0 ? 1 : 0;
}

/* Whether a JSON-RPC response line is a result for id (no error). The check
 * is textual on purpose: both paths pay the same for it, and it stays out of
 * the latency it measures. */
static int response_ok(const char *line, int64_t id)
{
	char want[48];

	snprintf(want, sizeof(want), "\"id\":%" PRId64, id);
	return strstr(line, "\"result\"") && strstr(line, want) && !strstr(line, "\"error\":");
}

static int format_call(char *out, size_t len, int64_t id)
{
	return snprintf(out, len,
			"{\"jsonrpc\":\"2.0\",\"id\":%" PRId64 ",\"method\":\"tools/call\",\"params\":{\"name\":\"echo\","
			"\"arguments\":{\"text\":\"" ECHO_TEXT "\"}}}",
			id);
}

/* ---- mcp-stdio: a child process per client, JSON lines on its pipes ---- */

static int stdio_setup(struct client *c)
{
	int in[2], out[2];
	size_t len;
	char *line;
	pid_t pid;

	if (pipe2(in, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0) {
		record_error(c, "pipe: %s", strerror(errno));
		return -1;
	}
	pid = fork();
	if (pid < 0) {
		record_error(c, "fork: %s", strerror(errno));
		return -1;
	}
	if (pid == 0) {
		dup2(in[0], STDIN_FILENO);
		dup2(out[1], STDOUT_FILENO);
		execvp(c->run->cmd[0], c->run->cmd);
		_exit(127);
	}
	close(in[0]);
	close(out[1]);
	c->pid = pid;
	c->to_fd = in[1];
	c->from.fd = out[0];
	if (write_all(c->to_fd, INITIALIZE "\n", sizeof(INITIALIZE)) < 0 || !(line = lines_next(&c->from, &len))) {
		record_error(c, "client %d: no answer to initialize (is the keeper up?)", c->index);
		return -1;
	}
	if (!response_ok(line, 0)) {
		record_error(c, "client %d: initialize failed: %.160s", c->index, line);
		return -1;
	}
	if (write_all(c->to_fd, INITIALIZED "\n", sizeof(INITIALIZED)) < 0) {
		record_error(c, "client %d: cannot send notifications/initialized", c->index);
		return -1;
	}
	return 0;
}

/* mcp-socket: what mcpctl connect does before it starts relaying. */
static int socket_setup(struct client *c)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	char req[512];
	size_t len;
	char *line;
	int n, fd;

	if (strlen(c->run->socket_path) >= sizeof(sa.sun_path)) {
		record_error(c, "socket path too long");
		return -1;
	}
	strcpy(sa.sun_path, c->run->socket_path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		record_error(c, "connect %s: %s", c->run->socket_path, strerror(errno));
		return -1;
	}
	c->to_fd = c->sock = fd;
	c->from.fd = fd;
	n = snprintf(req, sizeof(req), "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"connect\",\"params\":{\"server\":\"%s\"}}\n",
		     c->run->method);
	if (write_all(fd, req, (size_t)n) < 0 || !(line = lines_next(&c->from, &len)) || !response_ok(line, 1)) {
		record_error(c, "client %d: connect refused by the keeper", c->index);
		return -1;
	}
	if (write_all(fd, INITIALIZE "\n", sizeof(INITIALIZE)) < 0 || !(line = lines_next(&c->from, &len)) ||
	    !response_ok(line, 0)) {
		record_error(c, "client %d: initialize failed", c->index);
		return -1;
	}
	if (write_all(fd, INITIALIZED "\n", sizeof(INITIALIZED)) < 0) {
		record_error(c, "client %d: cannot send notifications/initialized", c->index);
		return -1;
	}
	return 0;
}

static int stdio_request(struct client *c, int64_t id)
{
	char req[512];
	int n = format_call(req, sizeof(req) - 1, id);
	size_t len;
	char *line;

	req[n++] = '\n';
	if (write_all(c->to_fd, req, (size_t)n) < 0) {
		record_error(c, "client %d: write: %s", c->index, strerror(errno));
		return -1;
	}
	/* Server-initiated notifications would come first; the peer sends none
	 * unless asked, but skip them anyway. */
	while ((line = lines_next(&c->from, &len)) && !strstr(line, "\"id\":"))
		;
	if (!line) {
		record_error(c, "client %d: the bridge closed its output", c->index);
		return -1;
	}
	if (!response_ok(line, id)) {
		record_error(c, "client %d: %.200s", c->index, line);
		return 1;
	}
	return 0;
}

static void stdio_finish(struct run *r)
{
	for (int i = 0; i < r->n; i++) {
		struct client *c = &r->clients[i];

		if (c->to_fd >= 0)
			close(c->to_fd);	/* EOF: the bridge ends the session and exits */
		if (c->from.fd > 0)
			close(c->from.fd);
	}
	for (int i = 0; i < r->n; i++)
		if (r->clients[i].pid > 0)
			waitpid(r->clients[i].pid, NULL, 0);
}

/* ---- mcp-direct: libcurl, one keep-alive connection per client ---- */

static size_t direct_write_cb(char *p, size_t size, size_t nmemb, void *arg)
{
	struct client *c = arg;

	buf_add(&c->resp, p, size * nmemb);
	return size * nmemb;
}

static size_t direct_header_cb(char *p, size_t size, size_t nmemb, void *arg)
{
	struct client *c = arg;
	size_t n = size * nmemb, len = n;
	static const char sid[] = "mcp-session-id:";

	while (len > 0 && (p[len - 1] == '\r' || p[len - 1] == '\n'))
		len--;
	if (len > sizeof(sid) - 1 && strncasecmp(p, sid, sizeof(sid) - 1) == 0) {
		const char *v = p + sizeof(sid) - 1;
		size_t vlen = len - (sizeof(sid) - 1);

		while (vlen > 0 && *v == ' ') {
			v++;
			vlen--;
		}
		if (vlen < sizeof(c->session))
			snprintf(c->session, sizeof(c->session), "%.*s", (int)vlen, v);
	}
	return n;
}

/* One POST of body; the answer (JSON) lands in c->resp. Returns the HTTP
 * status, or -1 when the transfer failed. */
static long direct_post(struct client *c, const char *body, size_t len)
{
	long status = 0;
	CURLcode rc;

	c->resp.len = 0;
	curl_easy_setopt(c->easy, CURLOPT_POSTFIELDS, body);
	curl_easy_setopt(c->easy, CURLOPT_POSTFIELDSIZE, (long)len);
	rc = curl_easy_perform(c->easy);
	if (rc != CURLE_OK) {
		record_error(c, "client %d: %s", c->index, curl_easy_strerror(rc));
		return -1;
	}
	curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &status);
	return status;
}

static int direct_headers(struct client *c)
{
	char line[512];
	struct curl_slist *h = NULL;

	h = curl_slist_append(h, "Content-Type: application/json");
	h = curl_slist_append(h, "Accept: application/json, text/event-stream");
	h = curl_slist_append(h, "Expect:");
	snprintf(line, sizeof(line), "Authorization: Bearer %s", c->run->token);
	h = curl_slist_append(h, line);
	if (c->session[0]) {
		snprintf(line, sizeof(line), "Mcp-Session-Id: %s", c->session);
		h = curl_slist_append(h, line);
		h = curl_slist_append(h, "MCP-Protocol-Version: " PROTOCOL_VERSION);
	}
	if (!h)
		return -1;
	curl_slist_free_all(c->headers);
	c->headers = h;
	curl_easy_setopt(c->easy, CURLOPT_HTTPHEADER, h);
	return 0;
}

static int direct_setup(struct client *c)
{
	long st;

	c->easy = curl_easy_init();
	if (!c->easy)
		return -1;
	curl_easy_setopt(c->easy, CURLOPT_URL, c->run->url);
	curl_easy_setopt(c->easy, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c->easy, CURLOPT_TCP_NODELAY, 1L);
	curl_easy_setopt(c->easy, CURLOPT_TIMEOUT, 30L);
	curl_easy_setopt(c->easy, CURLOPT_NOPROXY, "*");
	curl_easy_setopt(c->easy, CURLOPT_WRITEFUNCTION, direct_write_cb);
	curl_easy_setopt(c->easy, CURLOPT_WRITEDATA, c);
	curl_easy_setopt(c->easy, CURLOPT_HEADERFUNCTION, direct_header_cb);
	curl_easy_setopt(c->easy, CURLOPT_HEADERDATA, c);
	if (direct_headers(c) < 0)
		return -1;
	st = direct_post(c, INITIALIZE, sizeof(INITIALIZE) - 1);
	if (st != 200 || !c->session[0] || !c->resp.data || !response_ok(c->resp.data, 0)) {
		record_error(c, "client %d: initialize: HTTP %ld: %.160s", c->index, st,
			     c->resp.data ? c->resp.data : "");
		return -1;
	}
	if (direct_headers(c) < 0)
		return -1;
	st = direct_post(c, INITIALIZED, sizeof(INITIALIZED) - 1);
	if (st != 202 && st != 200) {
		record_error(c, "client %d: notifications/initialized: HTTP %ld", c->index, st);
		return -1;
	}
	return 0;
}

static int direct_request(struct client *c, int64_t id)
{
	char req[512];
	int n = format_call(req, sizeof(req), id);
	long st = direct_post(c, req, (size_t)n);

	if (st < 0)
		return 1;
	if (st != 200 || !c->resp.data || !response_ok(c->resp.data, id)) {
		record_error(c, "client %d: HTTP %ld: %.200s", c->index, st, c->resp.data ? c->resp.data : "");
		return 1;
	}
	return 0;
}

static void direct_finish(struct run *r)
{
	for (int i = 0; i < r->n; i++) {
		struct client *c = &r->clients[i];

		if (c->easy && c->session[0]) {
			/* End the session as the worker does when its client goes. */
			curl_easy_setopt(c->easy, CURLOPT_CUSTOMREQUEST, "DELETE");
			curl_easy_setopt(c->easy, CURLOPT_HTTPGET, 1L);
			curl_easy_setopt(c->easy, CURLOPT_NOBODY, 1L);
			curl_easy_perform(c->easy);
		}
		if (c->easy)
			curl_easy_cleanup(c->easy);
		curl_slist_free_all(c->headers);
		free(c->resp.data);
	}
}

/* ---- control: the keeper's control socket ---- */

static int control_setup(struct client *c)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };

	if (strlen(c->run->socket_path) >= sizeof(sa.sun_path)) {
		record_error(c, "socket path too long");
		return -1;
	}
	strcpy(sa.sun_path, c->run->socket_path);
	c->sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->sock < 0 || connect(c->sock, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		record_error(c, "connect %s: %s", c->run->socket_path, strerror(errno));
		return -1;
	}
	c->from.fd = c->sock;
	return 0;
}

static int control_request(struct client *c, int64_t id)
{
	char req[256];
	int n = snprintf(req, sizeof(req), "{\"jsonrpc\":\"2.0\",\"id\":%" PRId64 ",\"method\":\"%s\"}\n", id,
			 c->run->method);
	size_t len;
	char *line;

	if (write_all(c->sock, req, (size_t)n) < 0) {
		record_error(c, "client %d: write: %s", c->index, strerror(errno));
		return -1;
	}
	line = lines_next(&c->from, &len);
	if (!line) {
		record_error(c, "client %d: the keeper closed the connection", c->index);
		return -1;
	}
	if (!response_ok(line, id)) {
		record_error(c, "client %d: %.200s", c->index, line);
		return 1;
	}
	return 0;
}

static void control_finish(struct run *r)
{
	for (int i = 0; i < r->n; i++)
		if (r->clients[i].sock >= 0)
			close(r->clients[i].sock);
}

/* ---- logins: tokens the peer will accept, fast ---- */

static size_t login_write_cb(char *p, size_t size, size_t nmemb, void *arg)
{
	buf_add(arg, p, size * nmemb);
	return size * nmemb;
}

static void b64url(char *out, size_t outlen, const unsigned char *bin, size_t len)
{
	sodium_bin2base64(out, outlen, bin, len, sodium_base64_VARIANT_URLSAFE_NO_PADDING);
}

static int cmd_logins(int argc, char **argv)
{
	const char *origin, *client_id;
	long count;
	char url[2048], form[2048], resource[512];
	struct buf resp = { 0 };
	CURL *e;
	char *res_esc, *redirect_esc, *cid_esc;
	static const char redirect[] = "http://127.0.0.1:9/callback";

	if (argc != 5)
		die("usage: bench-client logins ORIGIN CLIENT_ID COUNT");
	origin = argv[2];
	client_id = argv[3];
	count = parse_num(argv[4], "COUNT", 1, 10000000);
	snprintf(resource, sizeof(resource), "%s/mcp", origin);

	e = curl_easy_init();
	if (!e)
		die("curl_easy_init failed");
	res_esc = curl_easy_escape(e, resource, 0);
	redirect_esc = curl_easy_escape(e, redirect, 0);
	cid_esc = curl_easy_escape(e, client_id, 0);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_NOPROXY, "*");
	curl_easy_setopt(e, CURLOPT_TIMEOUT, 30L);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, login_write_cb);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, &resp);

	for (long i = 0; i < count; i++) {
		unsigned char vbin[32], sbin[16], hash[crypto_hash_sha256_BYTES];
		char verifier[64], challenge[64], state[40];
		char *loc = NULL, *code, *amp, *code_esc;
		struct json_object *o, *a, *r;
		long status = 0;
		CURLcode rc;

		randombytes_buf(vbin, sizeof(vbin));
		randombytes_buf(sbin, sizeof(sbin));
		b64url(verifier, sizeof(verifier), vbin, sizeof(vbin));
		crypto_hash_sha256(hash, (const unsigned char *)verifier, strlen(verifier));
		b64url(challenge, sizeof(challenge), hash, sizeof(hash));
		b64url(state, sizeof(state), sbin, sizeof(sbin));
		snprintf(url, sizeof(url),
			 "%s/authorize?response_type=code&client_id=%s&redirect_uri=%s&state=%s&code_challenge=%s"
			 "&code_challenge_method=S256&resource=%s",
			 origin, cid_esc, redirect_esc, state, challenge, res_esc);
		resp.len = 0;
		curl_easy_setopt(e, CURLOPT_URL, url);
		curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
		rc = curl_easy_perform(e);
		if (rc != CURLE_OK)
			die("authorize: %s", curl_easy_strerror(rc));
		curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
		curl_easy_getinfo(e, CURLINFO_REDIRECT_URL, &loc);
		if ((status != 302 && status != 303) || !loc || !(code = strstr(loc, "code=")))
			die("authorize: HTTP %ld without a code", status);
		code += 5;
		amp = strchr(code, '&');
		code_esc = strndup(code, amp ? (size_t)(amp - code) : strlen(code));
		if (!code_esc)
			die("out of memory");
		snprintf(form, sizeof(form),
			 "grant_type=authorization_code&code=%s&redirect_uri=%s&client_id=%s&code_verifier=%s&resource=%s",
			 code_esc, redirect_esc, cid_esc, verifier, res_esc);
		free(code_esc);
		snprintf(url, sizeof(url), "%s/token", origin);
		resp.len = 0;
		curl_easy_setopt(e, CURLOPT_URL, url);
		curl_easy_setopt(e, CURLOPT_POSTFIELDS, form);
		rc = curl_easy_perform(e);
		if (rc != CURLE_OK)
			die("token: %s", curl_easy_strerror(rc));
		curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
		o = resp.data ? json_tokener_parse(resp.data) : NULL;
		if (status != 200 || !o || !json_object_object_get_ex(o, "access_token", &a) ||
		    !json_object_object_get_ex(o, "refresh_token", &r))
			die("token: HTTP %ld", status);
		printf("%s\t%s\n", json_object_get_string(a), json_object_get_string(r));
		json_object_put(o);
	}
	curl_free(res_esc);
	curl_free(redirect_esc);
	curl_free(cid_esc);
	curl_easy_cleanup(e);
	free(resp.data);
	return fflush(stdout) == 0 ? 0 : 1;
}

/* ---- main ---- */

static void usage(void)
{
	fprintf(stderr, "usage: bench-client mcp-direct URL CLIENTS SECONDS WARMUP   (token in $BENCH_TOKEN)\n"
			"       bench-client mcp-stdio CLIENTS SECONDS WARMUP -- CMD [ARG...]\n"
			"       bench-client mcp-socket SOCKET SERVER CLIENTS SECONDS WARMUP\n"
			"       bench-client control SOCKET CLIENTS SECONDS WARMUP [METHOD]\n"
			"       bench-client logins ORIGIN CLIENT_ID COUNT\n");
	exit(2);
}

int main(int argc, char **argv)
{
	struct run r = { 0 };
	long seconds, warmup;
	int rc;

	if (argc < 2)
		usage();
	signal(SIGPIPE, SIG_IGN);
	if (sodium_init() < 0 || curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
		die("library initialisation failed");
	r.mode = argv[1];
	if (strcmp(r.mode, "logins") == 0)
		return cmd_logins(argc, argv);

	if (strcmp(r.mode, "mcp-direct") == 0 && argc == 6) {
		r.url = argv[2];
		r.token = getenv("BENCH_TOKEN");
		if (!r.token || !*r.token)
			die("mcp-direct: set BENCH_TOKEN to an access token the upstream accepts");
		r.n = (int)parse_num(argv[3], "CLIENTS", 1, 4096);
		seconds = parse_num(argv[4], "SECONDS", 1, 3600);
		warmup = parse_num(argv[5], "WARMUP", 0, 3600);
		r.setup = direct_setup;
		r.request = direct_request;
	} else if (strcmp(r.mode, "mcp-stdio") == 0 && argc >= 7 && strcmp(argv[5], "--") == 0) {
		r.n = (int)parse_num(argv[2], "CLIENTS", 1, 4096);
		seconds = parse_num(argv[3], "SECONDS", 1, 3600);
		warmup = parse_num(argv[4], "WARMUP", 0, 3600);
		r.cmd = argv + 6;
		r.setup = stdio_setup;
		r.request = stdio_request;
	} else if (strcmp(r.mode, "mcp-socket") == 0 && argc == 7) {
		r.socket_path = argv[2];
		r.method = argv[3];	/* the server's name */
		r.n = (int)parse_num(argv[4], "CLIENTS", 1, 4096);
		seconds = parse_num(argv[5], "SECONDS", 1, 3600);
		warmup = parse_num(argv[6], "WARMUP", 0, 3600);
		r.setup = socket_setup;
		r.request = stdio_request;
	} else if (strcmp(r.mode, "control") == 0 && (argc == 6 || argc == 7)) {
		r.socket_path = argv[2];
		r.n = (int)parse_num(argv[3], "CLIENTS", 1, 4096);
		seconds = parse_num(argv[4], "SECONDS", 1, 3600);
		warmup = parse_num(argv[5], "WARMUP", 0, 3600);
		r.method = argc == 7 ? argv[6] : "status";
		r.setup = control_setup;
		r.request = control_request;
	} else {
		usage();
	}
	r.clients = calloc((size_t)r.n, sizeof(*r.clients));
	if (!r.clients)
		die("out of memory");
	alarm(SETUP_TIMEOUT_S + (unsigned)(seconds + warmup) * 2);	/* never hang the script */
	rc = run_load(&r, seconds, warmup);
	if (r.setup == stdio_setup)
		stdio_finish(&r);
	else if (r.setup == direct_setup)
		direct_finish(&r);
	else
		control_finish(&r);	/* control and mcp-socket: close the sockets */
	for (int i = 0; i < r.n; i++) {
		if (r.clients[i].first_error[0])
			fprintf(stderr, "bench-client: %s\n", r.clients[i].first_error);
		free(r.clients[i].lat_ns);
		free(r.clients[i].from.in.data);
	}
	free(r.clients);
	curl_global_cleanup();
	return rc;
}
