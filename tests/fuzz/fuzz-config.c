/*
 * Fuzz target for common/config.c: config_parse() over arbitrary bytes, the
 * way a hand-edited or pasted config file reaches it.
 *
 * A config that loads must keep the promises config.h makes to the rest of
 * the program (defaults filled in, stdio servers always have args, names
 * unique, values in range); one that does not load must come back as NULL
 * with a one-line message naming the file, and never as out of memory. A
 * broken promise abort()s.
 *
 * The input is handed over without a terminating NUL, as the parser's
 * contract allows, so a read past its end shows up under AddressSanitizer.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "fuzz.h"
#include "log.h"

#define FUZZ_NAME "fuzz.json"
/* The parser only formats default paths from these; it creates nothing. */
#define FUZZ_DIR "/tmp/mcpkeeper-fuzz"

static _Noreturn void die(const char *what, const char *detail)
{
	fprintf(stderr, "fuzz-config: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
	abort();
}

static void init(void)
{
	setenv("XDG_RUNTIME_DIR", FUZZ_DIR "/run", 1);
	setenv("XDG_STATE_HOME", FUZZ_DIR "/state", 1);
	setenv("XDG_CONFIG_HOME", FUZZ_DIR "/config", 1);
	/* Unknown fields are warned about; thousands of warnings help no one. */
	log_set_level(LOG_LEVEL_ERROR);
	/* Also hides sanitizer reports: prefer libFuzzer's -close_fd_mask=2. */
	if (getenv("FUZZ_QUIET")) {
		int fd = open("/dev/null", O_WRONLY | O_CLOEXEC);

		if (fd >= 0) {
			dup2(fd, STDERR_FILENO);
			close(fd);
		}
	}
}

static void check_strv(char **v, size_t n, const char *what)
{
	if (!v)
		return;
	for (size_t i = 0; i < n; i++)
		if (!v[i])
			die("a string list ends before its count", what);
	if (v[n])
		die("a string list is not NULL-terminated at its count", what);
}

static void check_kv(const struct config_kv *kv, size_t n, const char *what)
{
	for (size_t i = 0; i < n; i++)
		if (!kv[i].key || !kv[i].value)
			die("a key/value pair with a NULL side", what);
}

static void check_server(const struct config *c, const struct config_server *s)
{
	if (!s->name || !*s->name)
		die("a server without a name", NULL);
	if (config_find_server(c, s->name) != s)
		die("server names are not unique", s->name);
	check_strv(s->args, s->n_args, "args");
	check_kv(s->env, s->n_env, "env");
	check_kv(s->headers, s->n_headers, "headers");

	switch (s->protocol) {
	case CONFIG_PROTOCOL_STDIO:
		if (!s->command || !*s->command || !s->args || s->url)
			die("a stdio server needs command and args, and no url", s->name);
		if (s->n_headers || s->oauth_enabled)
			die("a stdio server with headers or oauth", s->name);
		break;
	case CONFIG_PROTOCOL_STREAMABLE_HTTP:
	case CONFIG_PROTOCOL_SSE:
		if (!s->url || s->command || s->args || s->n_env)
			die("an http server needs url, and no command, args or env", s->name);
		break;
	default:
		die("unknown protocol", s->name);
	}
	if (s->oauth.client_secret && !s->oauth.client_id)
		die("oauth.client_secret without client_id", s->name);
	if (s->oauth.scopes && s->oauth.n_scopes == 0)
		die("an empty scope list that is not NULL", s->name);
	check_strv(s->oauth.scopes, s->oauth.n_scopes, "oauth.scopes");
	if (s->oauth.redirect_port < 0 || s->oauth.redirect_port > 65535)
		die("oauth.redirect_port out of range", s->name);
}

static void check_config(const struct config *c)
{
	const struct config_refresh *rf = &c->refresh;

	if (!c->path || strcmp(c->path, FUZZ_NAME) != 0)
		die("path is not the name given", c->path);
	if (c->system_mode)
		die("system mode from a user-mode parse", NULL);
	if (!c->data_dir || c->data_dir[0] != '/' || !c->runtime_dir || c->runtime_dir[0] != '/')
		die("data_dir and runtime_dir must be absolute", NULL);
	if (!c->listen || !c->users.oauth || !c->users.http || !c->users.worker)
		die("a default was not filled in", NULL);
	if (c->idle_timeout_sec < 0 || c->idle_timeout_sec > 86400)
		die("idle_timeout out of range", NULL);
	if (!(rf->threshold > 0.0 && rf->threshold < 1.0) || rf->max_retries < 0 ||
	    rf->max_retries > 20 || rf->timeout_sec < 1 || rf->timeout_sec > 600 ||
	    rf->max_in_flight < 1 || rf->max_in_flight > 4096)
		die("a refresh setting out of range", NULL);
	if (c->n_servers && !c->servers)
		die("servers counted but not there", NULL);
	for (size_t i = 0; i < c->n_servers; i++)
		check_server(c, &c->servers[i]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static bool initialized;
	struct config *c = (struct config *)1;
	char err[512];
	int r;

	if (!initialized) {
		init();
		initialized = true;
	}
	memset(err, 'x', sizeof(err));
	r = config_parse(FUZZ_NAME, (const char *)data, size, false, &c, err, sizeof(err));
	if (r == 0) {
		if (!c)
			die("success without a config", NULL);
		check_config(c);
		config_free(c);
		return 0;
	}
	if (r > 0)
		die("a positive outcome config.h does not define", NULL);
	/* Inputs here are far below the size limit: memory does not run out. */
	if (r == -ENOMEM)
		die("out of memory reported for a small input", err);
	if (c)
		die("a failure left *out set", NULL);
	if (!memchr(err, '\0', sizeof(err)))
		die("the error message is not NUL-terminated", NULL);
	if (strncmp(err, FUZZ_NAME ": ", strlen(FUZZ_NAME ": ")) != 0)
		die("the error message does not name the file", err);
	if (strchr(err, '\n'))
		die("the error message is more than one line", err);
	return 0;
}
