/*
 * Unit tests for common/config.c and common/paths.c, linked against the real
 * modules. Every error class the parser knows gets at least one case that
 * checks the exact message, because those messages are the user interface
 * of a config file. Everything is created under a mkdtemp directory, except
 * the /tmp/mcpkeeper-UID fallback, which is only removed when this test
 * created it.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "log.h"
#include "paths.h"
#include "test.h"

#define CHECK_STREQ(a, b)                                                                  \
	do {                                                                               \
		const char *_a = (a), *_b = (b);                                           \
		if (!_a || !_b || strcmp(_a, _b) != 0) {                                   \
			fprintf(stderr, "%s:%d: check failed: %s == %s\n  got:      %s\n  expected: %s\n", \
				__FILE__, __LINE__, #a, #b, _a ? _a : "(null)", _b ? _b : "(null)"); \
			exit(1);                                                           \
		}                                                                          \
	} while (0)

static char tmpdir[] = "/tmp/test-config-XXXXXX";
static bool tmpdir_made;
/* Set while this test owns /tmp/mcpkeeper-UID, so a failure still removes it. */
static char fallback_made[600];

static char *tmp_path(const char *leaf)
{
	static char buf[4][512];
	static unsigned slot;
	char *p = buf[slot++ % ARRAY_SIZE(buf)];

	snprintf(p, sizeof(buf[0]), "%s/%s", tmpdir, leaf);
	return p;
}

static void write_file(const char *path, const char *data, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

	CHECK(fd >= 0);
	CHECK(write(fd, data, len) == (ssize_t)len);
	CHECK(close(fd) == 0);
}

/* Parses json as "config.json" in user mode and insists on success. */
static struct config *parse_ok_at(const char *json, int line)
{
	struct config *c = NULL;
	char err[512];
	int r;

	r = config_parse("config.json", json, strlen(json), false, &c, err, sizeof(err));
	if (r < 0 || !c) {
		fprintf(stderr, "%s:%d: parse failed (%d): %s\n  input: %s\n", __FILE__, line, r,
			err, json);
		exit(1);
	}
	return c;
}
#define parse_ok(json) parse_ok_at(json, __LINE__)

/* Parses json and insists on failure r with exactly message msg. */
static void parse_fails_at(const char *json, int r_want, const char *msg, int line)
{
	struct config *c = (struct config *)1;
	char err[512];
	int r;

	r = config_parse("config.json", json, strlen(json), false, &c, err, sizeof(err));
	if (r != r_want || c != NULL || strcmp(err, msg) != 0) {
		fprintf(stderr,
			"%s:%d: expected failure %d \"%s\"\n  got %d \"%s\" (config %s)\n  input: %s\n",
			__FILE__, line, r_want, msg, r, err, c ? "set" : "NULL", json);
		exit(1);
	}
}
#define parse_fails(json, msg) parse_fails_at(json, -EINVAL, msg, __LINE__)

/* The message a server entry gets, in the object form. */
#define SERVER(body) "{\"mcpServers\": {\"a\": " body "}}"

static void test_bad_json(void)
{
	TEST("bad JSON reports the line");
	parse_fails("{\n  \"listen\": \"127.0.0.1:0\",\n  \"mcpServers\": {\n"
		    "    \"a\": {\"url\": \"https://x.example\",}\n  }\n}\n",
		    "config.json: line 4: unexpected character");
	parse_fails("{\n  \"mcpServers\": {\n    \"a\": {\"url\": \"https://x.example\"}\n",
		    "config.json: line 4: unexpected end of data");
	parse_fails("{\"a\": tru}", "config.json: line 1: boolean expected");
	parse_fails("{\"a\": 1} trailing", "config.json: line 1: unexpected character");
	/* json-c accepts single-quoted keys; JSON does not. */
	parse_fails("{\n'a\\\\b': 1}", "config.json: line 2: keys must be in double quotes");
	parse_fails("{'mcpServers': {}}", "config.json: line 1: keys must be in double quotes");
	parse_fails("", "config.json: file is empty");
	parse_fails(" \n\t", "config.json: file is empty");
	parse_fails("{\"a\": \"\xff\"}", "config.json: line 1: invalid utf-8 string");

	/* A NUL inside the buffer is refused before json-c sees it. */
	{
		static const char text[] = "{\n\"a\": 1\0}";
		struct config *c = NULL;
		char err[256];

		CHECK(config_parse("config.json", text, sizeof(text) - 1, false, &c, err,
				   sizeof(err)) == -EINVAL);
		CHECK(!c);
		CHECK_STREQ(err, "config.json: line 2: NUL byte in the file");
	}
}

static void test_root_not_object(void)
{
	TEST("root must be an object");
	parse_fails("[1, 2]", "config.json: the top level must be a JSON object");
	parse_fails("42", "config.json: the top level must be a JSON object");
	parse_fails("\"x\"", "config.json: the top level must be a JSON object");
	parse_fails("null", "config.json: the top level must be a JSON object");
}

static void test_wrong_types(void)
{
	TEST("wrong types name the field");
	parse_fails("{\"idle_timeout\": \"300\"}",
		    "config.json: idle_timeout: must be an integer between 0 and 86400");
	parse_fails("{\"request_timeout\": 0}",
		    "config.json: request_timeout: must be an integer between 1 and 3600");
	parse_fails("{\"idle_timeout\": 1.5}",
		    "config.json: idle_timeout: must be an integer between 0 and 86400");
	parse_fails("{\"disable_management\": 1}",
		    "config.json: disable_management: must be a boolean");
	parse_fails("{\"listen\": 8080}", "config.json: listen: must be a string");
	parse_fails("{\"group\": \"\"}", "config.json: group: must not be empty");
	parse_fails("{\"refresh\": []}", "config.json: refresh: must be an object");
	parse_fails("{\"data_dir\": \"relative/dir\"}",
		    "config.json: data_dir: must be an absolute path");
	parse_fails("{\"mcpServers\": 3}",
		    "config.json: mcpServers: must be an object or an array");
	parse_fails(SERVER("{\"url\": 5}"), "config.json: mcpServers.a.url: must be a string");
	parse_fails(SERVER("[]"), "config.json: mcpServers.a: must be an object");
	parse_fails("{\"mcpServers\": [{\"name\": 3}]}",
		    "config.json: mcpServers[0].name: must be a string");
	parse_fails("{\"mcpServers\": [{\"url\": \"https://x.example\"}]}",
		    "config.json: mcpServers[0].name: missing");
	parse_fails("{\"mcpServers\": [7]}", "config.json: mcpServers[0]: must be an object");
	parse_fails(SERVER("{\"command\": \"x\", \"args\": [\"-v\", 2]}"),
		    "config.json: mcpServers.a.args[1]: must be a string");
	parse_fails(SERVER("{\"command\": \"x\", \"args\": \"-v\"}"),
		    "config.json: mcpServers.a.args: must be an array of strings");
	parse_fails(SERVER("{\"command\": \"x\", \"env\": {\"A\": 1}}"),
		    "config.json: mcpServers.a.env.A: must be a string");
	parse_fails(SERVER("{\"command\": \"x\", \"env\": {\"A=B\": \"1\"}}"),
		    "config.json: mcpServers.a.env.A=B: not a valid environment variable name "
		    "(empty or contains '=')");
	parse_fails(SERVER("{\"url\": \"https://x.example\", \"enabled\": \"yes\"}"),
		    "config.json: mcpServers.a.enabled: must be a boolean");
	parse_fails(SERVER("{\"url\": \"https://x.example\", \"oauth\": \"on\"}"),
		    "config.json: mcpServers.a.oauth: must be an object or false");
	parse_fails(SERVER("{\"url\": \"https://x.example\", \"headers\": {\"X\": \"a\\r\\nB: c\"}}"),
		    "config.json: mcpServers.a.headers.X: must not contain line breaks");
	parse_fails(SERVER("{\"url\": \"https://x.example\", \"headers\": {\"X Y\": \"a\"}}"),
		    "config.json: mcpServers.a.headers.X?Y: not a valid HTTP header name");
	parse_fails(SERVER("{\"command\": \"x\\u0000y\"}"),
		    "config.json: mcpServers.a.command: must not contain NUL characters");
}

static void test_bad_url(void)
{
	TEST("url must be http or https");
	parse_fails("{\"mcpServers\": {\"github\": {\"url\": \"ftp://example.com/mcp\"}}}",
		    "config.json: mcpServers.github.url: must be an http or https URL");
	parse_fails("{\"mcpServers\": [{\"name\": \"github\", \"url\": \"example.com\"}]}",
		    "config.json: mcpServers.github.url: must be an http or https URL");
	parse_fails(SERVER("{\"url\": \"\"}"),
		    "config.json: mcpServers.a.url: must be an http or https URL");
	parse_fails(SERVER("{\"url\": \"https:///mcp\"}"),
		    "config.json: mcpServers.a.url: must be an http or https URL (no host)");
	parse_fails(SERVER("{\"url\": \"https://x.example:99999/\"}"),
		    "config.json: mcpServers.a.url: must be an http or https URL (bad port)");
	parse_fails(SERVER("{\"url\": \"https://x.example/a b\"}"),
		    "config.json: mcpServers.a.url: must be an http or https URL "
		    "(no spaces or control characters)");
	parse_fails(SERVER("{\"url\": \"https://me:pw@x.example/\"}"),
		    "config.json: mcpServers.a.url: must not contain credentials; use headers or oauth");
	parse_fails(SERVER("{\"url\": \"https://x.example/mcp#x\"}"),
		    "config.json: mcpServers.a.url: must not contain a fragment");
	parse_fails(SERVER("{\"url\": \"https://x.example\", \"oauth\": {\"resource\": \"urn:x\"}}"),
		    "config.json: mcpServers.a.oauth.resource: must be an http or https URL");

	struct config *c = parse_ok(SERVER("{\"url\": \"HTTPS://[::1]:8443/mcp?x=1\"}"));
	CHECK_STREQ(c->servers[0].url, "HTTPS://[::1]:8443/mcp?x=1");
	config_free(c);
}

static void test_protocol(void)
{
	TEST("bad protocol, type alias and inference");
	parse_fails(SERVER("{\"url\": \"https://x.example\", \"protocol\": \"websocket\"}"),
		    "config.json: mcpServers.a.protocol: must be one of \"streamable-http\" "
		    "(or \"http\"), \"sse\", \"stdio\"");
	parse_fails(SERVER("{\"url\": \"https://x.example\", \"type\": \"ws\"}"),
		    "config.json: mcpServers.a.type: must be one of \"streamable-http\" "
		    "(or \"http\"), \"sse\", \"stdio\"");
	parse_fails(SERVER("{\"url\": \"https://x.example\", \"protocol\": \"sse\", \"type\": \"http\"}"),
		    "config.json: mcpServers.a.type: \"http\" conflicts with protocol \"sse\"");

	static const struct {
		const char *body;
		enum config_protocol want;
	} cases[] = {
		{ SERVER("{\"url\": \"https://x.example\"}"), CONFIG_PROTOCOL_STREAMABLE_HTTP },
		{ SERVER("{\"url\": \"https://x.example\", \"type\": \"http\"}"),
		  CONFIG_PROTOCOL_STREAMABLE_HTTP },
		{ SERVER("{\"url\": \"https://x.example\", \"type\": \"streamableHttp\"}"),
		  CONFIG_PROTOCOL_STREAMABLE_HTTP },
		{ SERVER("{\"url\": \"https://x.example\", \"type\": \"streamable-http\"}"),
		  CONFIG_PROTOCOL_STREAMABLE_HTTP },
		{ SERVER("{\"url\": \"https://x.example\", \"type\": \"sse\"}"), CONFIG_PROTOCOL_SSE },
		{ SERVER("{\"url\": \"https://x.example\", \"protocol\": \"sse\", \"type\": \"sse\"}"),
		  CONFIG_PROTOCOL_SSE },
		{ SERVER("{\"command\": \"npx\", \"type\": \"stdio\"}"), CONFIG_PROTOCOL_STDIO },
		{ SERVER("{\"command\": \"npx\"}"), CONFIG_PROTOCOL_STDIO },
	};
	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		struct config *c = parse_ok(cases[i].body);

		CHECK(c->n_servers == 1);
		if (c->servers[0].protocol != cases[i].want) {
			fprintf(stderr, "%s:%d: case %zu: protocol %s, expected %s\n", __FILE__,
				__LINE__, i, config_protocol_name(c->servers[0].protocol),
				config_protocol_name(cases[i].want));
			exit(1);
		}
		config_free(c);
	}
	CHECK_STREQ(config_protocol_name(CONFIG_PROTOCOL_STREAMABLE_HTTP), "streamable-http");
	CHECK_STREQ(config_protocol_name(CONFIG_PROTOCOL_SSE), "sse");
	CHECK_STREQ(config_protocol_name(CONFIG_PROTOCOL_STDIO), "stdio");
}

static void test_missing_url_command(void)
{
	TEST("missing url, missing command, url with command");
	parse_fails(SERVER("{\"protocol\": \"sse\"}"),
		    "config.json: mcpServers.a.url: missing, required for sse servers");
	parse_fails(SERVER("{\"type\": \"http\", \"headers\": {}}"),
		    "config.json: mcpServers.a.url: missing, required for streamable-http servers");
	parse_fails(SERVER("{\"type\": \"stdio\", \"args\": []}"),
		    "config.json: mcpServers.a.command: missing, required for stdio servers");
	parse_fails(SERVER("{\"enabled\": true}"),
		    "config.json: mcpServers.a: needs url (http servers) or command (stdio servers)");
	parse_fails(SERVER("{\"url\": \"https://x.example\", \"command\": \"npx\"}"),
		    "config.json: mcpServers.a: has both url and command; an http server needs url, "
		    "a stdio server command");
	parse_fails(SERVER("{\"url\": \"https://x.example\", \"type\": \"stdio\"}"),
		    "config.json: mcpServers.a.url: not used by stdio servers (they run command)");
	parse_fails(SERVER("{\"command\": \"npx\", \"type\": \"sse\"}"),
		    "config.json: mcpServers.a.command: not used by http servers (they use url)");
	parse_fails(SERVER("{\"url\": \"https://x.example\", \"args\": []}"),
		    "config.json: mcpServers.a.args: only for stdio servers");
	parse_fails(SERVER("{\"command\": \"npx\", \"headers\": {}}"),
		    "config.json: mcpServers.a.headers: only for http servers");
	parse_fails(SERVER("{\"command\": \"\"}"),
		    "config.json: mcpServers.a.command: must not be empty");
}

static void test_oauth(void)
{
	struct config *c;

	TEST("oauth: stdio refuses it, false disables it, default for http");
	parse_fails(SERVER("{\"command\": \"npx\", \"oauth\": {\"client_id\": \"x\"}}"),
		    "config.json: mcpServers.a.oauth: OAuth does not apply to stdio servers");
	parse_fails(SERVER("{\"command\": \"npx\", \"oauth\": true}"),
		    "config.json: mcpServers.a.oauth: OAuth does not apply to stdio servers");
	parse_fails(SERVER("{\"url\": \"https://x.example\", \"oauth\": {\"client_secret\": \"s\"}}"),
		    "config.json: mcpServers.a.oauth.client_secret: requires client_id");

	c = parse_ok("{\"mcpServers\": {"
		     "\"http\": {\"url\": \"https://x.example\"},"
		     "\"sse\": {\"url\": \"https://x.example\", \"type\": \"sse\"},"
		     "\"off\": {\"url\": \"https://x.example\", \"oauth\": false},"
		     "\"on\": {\"url\": \"https://x.example\", \"oauth\": true},"
		     "\"local\": {\"command\": \"npx\"},"
		     "\"local-off\": {\"command\": \"npx\", \"oauth\": false}}}");
	CHECK(c->n_servers == 6);
	CHECK(config_find_server(c, "http")->oauth_enabled);
	CHECK(config_find_server(c, "sse")->oauth_enabled);
	CHECK(!config_find_server(c, "off")->oauth_enabled);
	CHECK(config_find_server(c, "on")->oauth_enabled);
	CHECK(!config_find_server(c, "local")->oauth_enabled);
	CHECK(!config_find_server(c, "local-off")->oauth_enabled);
	/* No oauth block: every setting at its "discover it" default. */
	const struct config_oauth *o = &config_find_server(c, "http")->oauth;
	CHECK(!o->client_id && !o->client_secret && !o->scopes && o->n_scopes == 0);
	CHECK(o->redirect_port == 0 && !o->resource);
	config_free(c);

	c = parse_ok(SERVER("{\"url\": \"https://x.example/mcp\", \"oauth\": {"
			    "\"client_id\": \"id\", \"client_secret\": \"secret\","
			    "\"redirect_port\": 33418, \"resource\": \"https://x.example\"}}"));
	o = &c->servers[0].oauth;
	CHECK(c->servers[0].oauth_enabled);
	CHECK_STREQ(o->client_id, "id");
	CHECK_STREQ(o->client_secret, "secret");
	CHECK(o->redirect_port == 33418);
	CHECK_STREQ(o->resource, "https://x.example");
	config_free(c);

	TEST("oauth.redirect_port out of range");
	parse_fails(SERVER("{\"url\": \"https://x.example\", \"oauth\": {\"redirect_port\": 65536}}"),
		    "config.json: mcpServers.a.oauth.redirect_port: must be an integer between 0 "
		    "and 65535");
	parse_fails(SERVER("{\"url\": \"https://x.example\", \"oauth\": {\"redirect_port\": -1}}"),
		    "config.json: mcpServers.a.oauth.redirect_port: must be an integer between 0 "
		    "and 65535");
	parse_fails(SERVER("{\"url\": \"https://x.example\", \"oauth\": {\"redirect_port\": \"80\"}}"),
		    "config.json: mcpServers.a.oauth.redirect_port: must be an integer between 0 "
		    "and 65535");
}

static char *parse_capturing_stderr(const char *json);

static void test_insecure_http(void)
{
	const char *log;
	struct config *c;

	TEST("allow_insecure_http: OAuth over plain http to a host that is not loopback");
	parse_fails(SERVER("{\"url\": \"http://10.0.0.1/mcp\"}"),
		    "config.json: mcpServers.a.url: plain http to a host that is not loopback would send the "
		    "OAuth bearer token in clear: use https, or set \"allow_insecure_http\": true (\"oauth\": "
		    "false for a server without OAuth)");
	parse_fails(SERVER("{\"url\": \"HTTP://mcp.example.com:8080/mcp\", \"oauth\": {\"client_id\": \"x\"}}"),
		    "config.json: mcpServers.a.url: plain http to a host that is not loopback would send the "
		    "OAuth bearer token in clear: use https, or set \"allow_insecure_http\": true (\"oauth\": "
		    "false for a server without OAuth)");
	parse_fails(SERVER("{\"url\": \"http://10.0.0.1/mcp\", \"allow_insecure_http\": false}"),
		    "config.json: mcpServers.a.url: plain http to a host that is not loopback would send the "
		    "OAuth bearer token in clear: use https, or set \"allow_insecure_http\": true (\"oauth\": "
		    "false for a server without OAuth)");
	parse_fails(SERVER("{\"url\": \"http://10.0.0.1/mcp\", \"allow_insecure_http\": \"yes\"}"),
		    "config.json: mcpServers.a.allow_insecure_http: must be a boolean");
	parse_fails(SERVER("{\"command\": \"npx\", \"allow_insecure_http\": true}"),
		    "config.json: mcpServers.a.allow_insecure_http: only for http servers");

	/* Loopback, https and servers without OAuth need no flag, and are not insecure. */
	c = parse_ok("{\"mcpServers\": {"
		     "\"v4\": {\"url\": \"http://127.0.0.1:8080/mcp\"},"
		     "\"v6\": {\"url\": \"http://[::1]:8080/mcp\"},"
		     "\"name\": {\"url\": \"http://localhost/mcp\"},"
		     "\"tls\": {\"url\": \"https://10.0.0.1/mcp\"},"
		     "\"plain\": {\"url\": \"http://10.0.0.1/mcp\", \"oauth\": false}}}");
	for (size_t i = 0; i < c->n_servers; i++)
		CHECK(!c->servers[i].insecure_http && !c->servers[i].allow_insecure_http);
	config_free(c);

	c = parse_ok(SERVER("{\"url\": \"http://10.0.0.1/mcp\", \"allow_insecure_http\": true}"));
	CHECK(c->servers[0].allow_insecure_http && c->servers[0].insecure_http);
	config_free(c);
	c = parse_ok(SERVER("{\"url\": \"https://x.example/mcp\", \"allow_insecure_http\": true}"));
	CHECK(c->servers[0].allow_insecure_http && !c->servers[0].insecure_http);
	config_free(c);

	TEST("allow_insecure_http is warned about at every load");
	log = parse_capturing_stderr(SERVER("{\"url\": \"http://10.0.0.1/mcp\", \"allow_insecure_http\": true}"));
	CHECK(strstr(log, "warning: config.json: mcpServers.a.url: plain http with OAuth (allow_insecure_http): "
			  "the bearer token and the login's secrets travel in clear\n"));
	log = parse_capturing_stderr(SERVER("{\"url\": \"https://x.example/mcp\", \"allow_insecure_http\": true}"));
	CHECK(log[0] == '\0');

	TEST("oauth.allow_private_endpoints");
	c = parse_ok(SERVER("{\"url\": \"https://x.example/mcp\", \"oauth\": {\"allow_private_endpoints\": true}}"));
	CHECK(c->servers[0].oauth.allow_private_endpoints);
	config_free(c);
	c = parse_ok(SERVER("{\"url\": \"https://x.example/mcp\"}"));
	CHECK(!c->servers[0].oauth.allow_private_endpoints);
	config_free(c);
	parse_fails(SERVER("{\"url\": \"https://x.example\", \"oauth\": {\"allow_private_endpoints\": 1}}"),
		    "config.json: mcpServers.a.oauth.allow_private_endpoints: must be a boolean");
}

static void test_sandbox(void)
{
	struct config *c;

	TEST("sandbox: stdio servers are sandboxed unless it says false");
	c = parse_ok(SERVER("{\"command\": \"npx\"}"));
	CHECK(c->servers[0].sandbox);
	CHECK(c->servers[0].n_sandbox_read == 0 && c->servers[0].sandbox_read && !c->servers[0].sandbox_read[0]);
	CHECK(c->servers[0].n_sandbox_write == 0 && c->servers[0].sandbox_write);
	config_free(c);
	c = parse_ok(SERVER("{\"command\": \"npx\", \"sandbox\": false}"));
	CHECK(!c->servers[0].sandbox);
	config_free(c);
	c = parse_ok(SERVER("{\"command\": \"npx\", \"sandbox\": {\"read\": [\"/srv/docs\", \"/opt/x/\"], "
			    "\"write\": [\"/srv/out\"]}}"));
	CHECK(c->servers[0].sandbox && c->servers[0].n_sandbox_read == 2 && c->servers[0].n_sandbox_write == 1);
	CHECK(strcmp(c->servers[0].sandbox_read[1], "/opt/x/") == 0 && !c->servers[0].sandbox_read[2]);
	CHECK(strcmp(c->servers[0].sandbox_write[0], "/srv/out") == 0);
	config_free(c);

	TEST("sandbox: bad paths and types");
	parse_fails(SERVER("{\"command\": \"npx\", \"sandbox\": {\"read\": [\"docs\"]}}"),
		    "config.json: mcpServers.a.sandbox.read[0]: must be an absolute path");
	parse_fails(SERVER("{\"command\": \"npx\", \"sandbox\": {\"write\": [\"//\"]}}"),
		    "config.json: mcpServers.a.sandbox.write[0]: must not be / (name the folders the server needs)");
	parse_fails(SERVER("{\"command\": \"npx\", \"sandbox\": {\"read\": [\"/srv/../var/lib\"]}}"),
		    "config.json: mcpServers.a.sandbox.read[0]: must not contain a .. component");
	parse_fails(SERVER("{\"command\": \"npx\", \"sandbox\": {\"read\": [\"/srv/..\"]}}"),
		    "config.json: mcpServers.a.sandbox.read[0]: must not contain a .. component");
	c = parse_ok(SERVER("{\"command\": \"npx\", \"sandbox\": {\"read\": [\"/srv/..x/a..b\"]}}"));
	config_free(c);
	parse_fails(SERVER("{\"command\": \"npx\", \"sandbox\": {\"read\": \"/srv\"}}"),
		    "config.json: mcpServers.a.sandbox.read: must be an array of strings");
	c = parse_ok(SERVER("{\"command\": \"npx\", \"sandbox\": true}"));
	CHECK(c->servers[0].sandbox);
	config_free(c);
	parse_fails(SERVER("{\"command\": \"npx\", \"sandbox\": \"on\"}"),
		    "config.json: mcpServers.a.sandbox: must be false or an object with read and write lists");
	parse_fails(SERVER("{\"url\": \"https://x.example/mcp\", \"sandbox\": false}"),
		    "config.json: mcpServers.a.sandbox: only for stdio servers (an http server runs no command of its own)");
}

static void test_scopes(void)
{
	struct config *c;
	const struct config_oauth *o;

	TEST("scopes as a string and as an array");
	c = parse_ok(SERVER("{\"url\": \"https://x.example\", \"oauth\": {"
			    "\"scopes\": \"  repo read:org\\tuser  \"}}"));
	o = &c->servers[0].oauth;
	CHECK(o->n_scopes == 3);
	CHECK_STREQ(o->scopes[0], "repo");
	CHECK_STREQ(o->scopes[1], "read:org");
	CHECK_STREQ(o->scopes[2], "user");
	CHECK(o->scopes[3] == NULL);
	config_free(c);

	c = parse_ok(SERVER("{\"url\": \"https://x.example\", \"oauth\": {"
			    "\"scopes\": [\"repo\", \"read:org\"]}}"));
	o = &c->servers[0].oauth;
	CHECK(o->n_scopes == 2);
	CHECK_STREQ(o->scopes[0], "repo");
	CHECK_STREQ(o->scopes[1], "read:org");
	CHECK(o->scopes[2] == NULL);
	config_free(c);

	/* Nothing configured means NULL, whichever way it was spelled. */
	c = parse_ok(SERVER("{\"url\": \"https://x.example\", \"oauth\": {\"scopes\": \" \"}}"));
	CHECK(c->servers[0].oauth.scopes == NULL && c->servers[0].oauth.n_scopes == 0);
	config_free(c);
	c = parse_ok(SERVER("{\"url\": \"https://x.example\", \"oauth\": {\"scopes\": []}}"));
	CHECK(c->servers[0].oauth.scopes == NULL && c->servers[0].oauth.n_scopes == 0);
	config_free(c);

	parse_fails(SERVER("{\"url\": \"https://x.example\", \"oauth\": {\"scopes\": [\"a b\"]}}"),
		    "config.json: mcpServers.a.oauth.scopes[0]: must be a non-empty scope without "
		    "spaces");
	parse_fails(SERVER("{\"url\": \"https://x.example\", \"oauth\": {\"scopes\": 3}}"),
		    "config.json: mcpServers.a.oauth.scopes: must be an array of strings or a "
		    "space-separated string");
}

static void test_names(void)
{
	TEST("server names");
	parse_fails("{\"mcpServers\": {\"bad name\": {\"url\": \"https://x.example\"}}}",
		    "config.json: mcpServers.bad?name: invalid server name: must be 1 to 64 "
		    "characters of A-Z a-z 0-9 . _ -, not starting with . or -");
	parse_fails("{\"mcpServers\": {\"\": {\"url\": \"https://x.example\"}}}",
		    "config.json: mcpServers.: invalid server name: must be 1 to 64 "
		    "characters of A-Z a-z 0-9 . _ -, not starting with . or -");
	parse_fails("{\"mcpServers\": [{\"name\": \".hidden\", \"url\": \"https://x.example\"}]}",
		    "config.json: mcpServers[0].name: must be 1 to 64 characters of A-Z a-z 0-9 . _ -, "
		    "not starting with . or -");
	parse_fails("{\"mcpServers\": [{\"name\": \"-x\", \"url\": \"https://x.example\"}]}",
		    "config.json: mcpServers[0].name: must be 1 to 64 characters of A-Z a-z 0-9 . _ -, "
		    "not starting with . or -");
	parse_fails("{\"mcpServers\": [{\"name\": \"a/b\", \"url\": \"https://x.example\"}]}",
		    "config.json: mcpServers[0].name: must be 1 to 64 characters of A-Z a-z 0-9 . _ -, "
		    "not starting with . or -");

	char name64[65], name65[66], json[256], msg[256];
	memset(name64, 'n', 64);
	name64[64] = '\0';
	memset(name65, 'n', 65);
	name65[65] = '\0';
	snprintf(json, sizeof(json), "{\"mcpServers\": [{\"name\": \"%s\", \"command\": \"x\"}]}",
		 name64);
	config_free(parse_ok(json));
	snprintf(json, sizeof(json), "{\"mcpServers\": [{\"name\": \"%s\", \"command\": \"x\"}]}",
		 name65);
	parse_fails(json, "config.json: mcpServers[0].name: must be 1 to 64 characters of "
			  "A-Z a-z 0-9 . _ -, not starting with . or -");
	snprintf(json, sizeof(json), "{\"mcpServers\": {\"%s\": {\"command\": \"x\"}}}", name65);
	snprintf(msg, sizeof(msg), "config.json: mcpServers.%s...: invalid server name: must be "
		 "1 to 64 characters of A-Z a-z 0-9 . _ -, not starting with . or -", name64);
	parse_fails(json, msg);

	struct config *c = parse_ok("{\"mcpServers\": {\"A.b_c-9\": {\"command\": \"x\"}, "
				    "\"_x\": {\"command\": \"x\"}}}");
	CHECK(config_find_server(c, "A.b_c-9") && config_find_server(c, "_x"));
	config_free(c);

	TEST("duplicate server names");
	parse_fails("{\"mcpServers\": [{\"name\": \"github\", \"url\": \"https://a.example\"},\n"
		    "{\"name\": \"x\", \"command\": \"x\"},\n"
		    "{\"name\": \"github\", \"url\": \"https://b.example\"}]}",
		    "config.json: mcpServers[2].name: duplicate server name \"github\"");
	/* json-c would keep the second silently; the raw scan finds it with its line. */
	parse_fails("{\"mcpServers\": {\n  \"github\": {\"url\": \"https://a.example\"},\n"
		    "  \"github\": {\"url\": \"https://b.example\"}\n}}",
		    "config.json: mcpServers.github: duplicate server name (line 3)");
	parse_fails("{\"mcpServers\": {\"github\": {\"url\": \"https://a.example\"},"
		    " \"gith\\u0075b\": {\"url\": \"https://b.example\"}}}",
		    "config.json: mcpServers.github: duplicate server name (line 1)");
	parse_fails("{\"listen\": \"127.0.0.1:1\",\n\"listen\": \"127.0.0.1:2\"}",
		    "config.json: listen: duplicate key (line 2)");
	parse_fails("{\"mcpServers\": [{\"name\": \"a\", \"command\": \"x\",\n"
		    " \"args\": [{\"k\": 1, \"k\": 2}]}]}",
		    "config.json: mcpServers[0].args[0].k: duplicate key (line 2)");
	/* Equal keys in different objects are not duplicates. */
	c = parse_ok("{\"mcpServers\": {\"a\": {\"command\": \"x\", \"env\": {\"url\": \"1\"}},"
		     " \"b\": {\"command\": \"x\", \"env\": {\"url\": \"1\"}}}}");
	CHECK(c->n_servers == 2);
	config_free(c);

	TEST("config_find_server matches exactly");
	c = parse_ok("{\"mcpServers\": {\"github-enterprise\": {\"url\": \"https://a.example\"}}}");
	CHECK(config_find_server(c, "github") == NULL);
	CHECK(config_find_server(c, "github-enterprise") == &c->servers[0]);
	config_free(c);
}

static void test_refresh_ranges(void)
{
	static const char *const bad_min_interval[] = { "0", "99", "3600001", "-2000", "2.5", "\"2000\"", "null" };
	struct config *c;

	TEST("refresh.threshold range");
	parse_fails("{\"refresh\": {\"threshold\": 1}}",
		    "config.json: refresh.threshold: must be a number greater than 0 and less than 1");
	parse_fails("{\"refresh\": {\"threshold\": 1.0}}",
		    "config.json: refresh.threshold: must be a number greater than 0 and less than 1");
	parse_fails("{\"refresh\": {\"threshold\": 0}}",
		    "config.json: refresh.threshold: must be a number greater than 0 and less than 1");
	parse_fails("{\"refresh\": {\"threshold\": -0.5}}",
		    "config.json: refresh.threshold: must be a number greater than 0 and less than 1");
	parse_fails("{\"refresh\": {\"threshold\": \"0.5\"}}",
		    "config.json: refresh.threshold: must be a number greater than 0 and less than 1");
	parse_fails("{\"refresh\": {\"threshold\": NaN}}",
		    "config.json: refresh.threshold: must be a number greater than 0 and less than 1");
	c = parse_ok("{\"refresh\": {\"threshold\": 0.5}}");
	CHECK(c->refresh.threshold == 0.5);
	config_free(c);

	TEST("refresh.max_retries, timeout, max_in_flight ranges");
	parse_fails("{\"refresh\": {\"max_retries\": 21}}",
		    "config.json: refresh.max_retries: must be an integer between 0 and 20");
	parse_fails("{\"refresh\": {\"max_retries\": -1}}",
		    "config.json: refresh.max_retries: must be an integer between 0 and 20");
	parse_fails("{\"refresh\": {\"max_retries\": 99999999999999999999}}",
		    "config.json: refresh.max_retries: must be an integer between 0 and 20");
	parse_fails("{\"refresh\": {\"timeout\": 0}}",
		    "config.json: refresh.timeout: must be an integer between 1 and 600");
	parse_fails("{\"refresh\": {\"max_in_flight\": 4097}}",
		    "config.json: refresh.max_in_flight: must be an integer between 1 and 4096");
	c = parse_ok("{\"refresh\": {\"max_retries\": 0, \"timeout\": 600, \"max_in_flight\": 1}}");
	CHECK(c->refresh.max_retries == 0);
	CHECK(c->refresh.timeout_sec == 600);
	CHECK(c->refresh.max_in_flight == 1);
	config_free(c);
	c = parse_ok("{\"refresh\": {\"max_retries\": 20}}");
	CHECK(c->refresh.max_retries == 20);
	config_free(c);

	/* Milliseconds, 100 ms .. 1 h: 0 would be no floor at all. */
	TEST("refresh.min_interval range");
	for (size_t i = 0; i < ARRAY_SIZE(bad_min_interval); i++) {
		char text[128];

		snprintf(text, sizeof(text), "{\"refresh\": {\"min_interval\": %s}}", bad_min_interval[i]);
		parse_fails(text, "config.json: refresh.min_interval: must be an integer between 100 and 3600000");
	}
	c = parse_ok("{\"refresh\": {\"min_interval\": 100}}");
	CHECK(c->refresh.min_interval_ms == 100);
	config_free(c);
	c = parse_ok("{\"refresh\": {\"min_interval\": 3600000}}");
	CHECK(c->refresh.min_interval_ms == 3600000);
	config_free(c);

	TEST("refresh.retry_after_crash: a boolean, false by default");
	c = parse_ok("{}");
	CHECK(!c->refresh.retry_after_crash);
	config_free(c);
	c = parse_ok("{\"refresh\": {\"retry_after_crash\": true}}");
	CHECK(c->refresh.retry_after_crash);
	config_free(c);
	parse_fails("{\"refresh\": {\"retry_after_crash\": 1}}",
		    "config.json: refresh.retry_after_crash: must be a boolean");
}

static void test_http_limits(void)
{
	struct config *c;

	TEST("http.max_connections, header_timeout: ranges and defaults");
	c = parse_ok("{}");
	CHECK(c->http.max_connections == 256);
	CHECK(c->http.header_timeout_sec == 10);
	config_free(c);
	parse_fails("{\"http\": {\"max_connections\": 0}}",
		    "config.json: http.max_connections: must be an integer between 1 and 1024");
	parse_fails("{\"http\": {\"max_connections\": 1025}}",
		    "config.json: http.max_connections: must be an integer between 1 and 1024");
	parse_fails("{\"http\": {\"max_connections\": \"256\"}}",
		    "config.json: http.max_connections: must be an integer between 1 and 1024");
	parse_fails("{\"http\": {\"header_timeout\": 0}}",
		    "config.json: http.header_timeout: must be an integer between 1 and 300");
	parse_fails("{\"http\": {\"header_timeout\": 301}}",
		    "config.json: http.header_timeout: must be an integer between 1 and 300");
	parse_fails("{\"http\": {\"header_timeout\": 1.5}}",
		    "config.json: http.header_timeout: must be an integer between 1 and 300");
	parse_fails("{\"http\": 256}", "config.json: http: must be an object");
	c = parse_ok("{\"http\": {\"max_connections\": 1, \"header_timeout\": 300}}");
	CHECK(c->http.max_connections == 1);
	CHECK(c->http.header_timeout_sec == 300);
	config_free(c);
	c = parse_ok("{\"http\": {\"max_connections\": 1024, \"header_timeout\": 1}}");
	CHECK(c->http.max_connections == 1024);
	CHECK(c->http.header_timeout_sec == 1);
	config_free(c);
}

static void test_replication(void)
{
	struct config *c;

#define REP(body) "{\"replication\": {" body "}}"
#define PEERS "\"peers\": [\"10.0.0.2:7000\", \"[fd00::3]:7000\"]"
	TEST("replication: sites, defaults, the rules a group needs");
	c = parse_ok("{}");
	CHECK(!c->replication.enabled);
	config_free(c);
	c = parse_ok(REP("\"listen\": \"10.0.0.1:7000\", " PEERS));
	CHECK(c->replication.enabled);
	CHECK(strcmp(c->replication.local.host, "10.0.0.1") == 0 && c->replication.local.port == 7000);
	CHECK(c->replication.n_peers == 2);
	CHECK(strcmp(c->replication.peers[1].host, "fd00::3") == 0 && c->replication.peers[1].port == 7000);
	CHECK(c->replication.priority == 100 && !c->replication.create);
	CHECK(c->replication.lease_timeout_ms == 5000 && c->replication.heartbeat_ms == 1000);
	CHECK(c->replication.ack_timeout_ms == 2000);
	config_free(c);
	c = parse_ok(REP("\"listen\": \"keeper-a.example:7000\", " PEERS ", \"priority\": 0, \"create\": true, "
			 "\"lease_timeout\": 2000, \"heartbeat\": 1000, \"ack_timeout\": 500"));
	CHECK(strcmp(c->replication.local.host, "keeper-a.example") == 0);
	CHECK(c->replication.priority == 0 && c->replication.create);
	CHECK(c->replication.lease_timeout_ms == 2000 && c->replication.ack_timeout_ms == 500);
	config_free(c);
	parse_fails(REP(PEERS), "config.json: replication.listen: is required (this site's HOST:PORT)");
	parse_fails(REP("\"listen\": \"10.0.0.1:7000\""),
		    "config.json: replication.peers: is required: an array of the other sites' HOST:PORT");
	parse_fails(REP("\"listen\": \"10.0.0.1:7000\", \"peers\": [\"10.0.0.2:7000\"]"),
		    "config.json: replication.peers: names 1 other site(s): a group has 3 or more sites, an odd "
		    "number (at most 32), so that a majority can always be told apart");
	parse_fails(REP("\"listen\": \"10.0.0.1:7000\", \"peers\": [\"10.0.0.2:7000\", \"10.0.0.3:7000\", "
			"\"10.0.0.4:7000\"]"),
		    "config.json: replication.peers: names 3 other site(s): a group has 3 or more sites, an odd "
		    "number (at most 32), so that a majority can always be told apart");
	parse_fails(REP("\"listen\": \"0.0.0.0:7000\", " PEERS),
		    "config.json: replication.listen: is a wildcard address: name the one address to bind and reach");
	parse_fails(REP("\"listen\": \"[::]:7000\", " PEERS),
		    "config.json: replication.listen: is a wildcard address: name the one address to bind and reach");
	parse_fails(REP("\"listen\": \"10.0.0.1\", " PEERS), "config.json: replication.listen: must be HOST:PORT");
	parse_fails(REP("\"listen\": \"10.0.0.1:0\", " PEERS),
		    "config.json: replication.listen: has a port outside 1..65535");
	parse_fails(REP("\"listen\": \"a b:70\", " PEERS),
		    "config.json: replication.listen: has a host that is neither an address nor a host name");
	parse_fails(REP("\"listen\": \"10.0.0.1:7000\", \"peers\": [\"10.0.0.2:7000\", \"10.0.0.2:7000\"]"),
		    "config.json: replication.peers[1]: names a site twice");
	parse_fails(REP("\"listen\": \"10.0.0.1:7000\", \"peers\": [\"10.0.0.1:7000\", \"10.0.0.2:7000\"]"),
		    "config.json: replication.peers[0]: is this site's own listen address");
	parse_fails(REP("\"listen\": \"10.0.0.1:7000\", " PEERS ", \"lease_timeout\": 1000, \"heartbeat\": 600"),
		    "config.json: replication.heartbeat: must be at most half of replication.lease_timeout (1000 ms)");
	parse_fails(REP("\"listen\": \"10.0.0.1:7000\", " PEERS ", \"priority\": -1"),
		    "config.json: replication.priority: must be an integer between 0 and 1000000");
	parse_fails("{\"replication\": true}", "config.json: replication: must be an object");
#undef PEERS
#undef REP
}

static void test_login(void)
{
	struct config *c;
	char err[512];

	TEST("login.browser, browser_on_migration: defaults, $BROWSER, false");
	unsetenv("BROWSER");
	c = parse_ok("{}");
	CHECK(c->login.browser == NULL);
	CHECK(!c->login.browser_on_migration);
	config_free(c);
	setenv("BROWSER", "firefox --new-tab:xdg-open", 1);
	c = parse_ok("{}");
	CHECK(c->login.browser && strcmp(c->login.browser, "firefox --new-tab:xdg-open") == 0);
	config_free(c);
	/* false in the file: no opener, whatever $BROWSER says. */
	c = parse_ok("{\"login\": {\"browser\": false}}");
	CHECK(c->login.browser == NULL);
	config_free(c);
	c = parse_ok("{\"login\": {\"browser\": \"/usr/bin/open-url %s\", \"browser_on_migration\": true}}");
	CHECK(strcmp(c->login.browser, "/usr/bin/open-url %s") == 0);
	CHECK(c->login.browser_on_migration);
	config_free(c);
	/* System mode: no default opener (a system keeper has no user's desktop). */
	c = NULL;
	CHECK(config_parse("config.json", "{}", 2, true, &c, err, sizeof(err)) == 0 && c);
	CHECK(c->login.browser == NULL);
	config_free(c);
	unsetenv("BROWSER");
	parse_fails("{\"login\": {\"browser\": true}}",
		    "config.json: login.browser: must be a command or false (true names no command)");
	parse_fails("{\"login\": {\"browser\": \"\"}}", "config.json: login.browser: must not be empty");
	parse_fails("{\"login\": {\"browser\": \"open\\nx\"}}", "config.json: login.browser: holds a control character");
	parse_fails("{\"login\": {\"browser_on_migration\": 1}}",
		    "config.json: login.browser_on_migration: must be a boolean");
	parse_fails("{\"login\": []}", "config.json: login: must be an object");
}

static void test_listen(void)
{
	static const char *const bad[] = {
		"0.0.0.0:8080", "192.168.1.1:80", "localhost:80", "127.0.0.1", "127.0.0.1:",
		"127.0.0.1:-1", "127.0.0.1:80x", "[::]:80", "[::1]80", "::1:80",
		"[::ffff:127.0.0.1]:80", ":80", "",
	};
	static const char *const good[] = {
		"127.0.0.1:0", "127.0.0.1:8080", "127.1.2.3:65535", "[::1]:0", "[::1]:8080",
	};
	char json[128];
	struct config *c;

	TEST("listen must be a loopback address with a port");
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		snprintf(json, sizeof(json), "{\"listen\": \"%s\"}", bad[i]);
		parse_fails(json, "config.json: listen: must be a loopback address and port, "
				  "e.g. 127.0.0.1:0 or [::1]:8080");
	}
	parse_fails("{\"listen\": \"127.0.0.1:65536\"}",
		    "config.json: listen: port must be between 0 and 65535");
	for (size_t i = 0; i < ARRAY_SIZE(good); i++) {
		snprintf(json, sizeof(json), "{\"listen\": \"%s\"}", good[i]);
		c = parse_ok(json);
		CHECK_STREQ(c->listen, good[i]);
		config_free(c);
	}
}

static bool str_eq(const char *a, const char *b)
{
	return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

static bool strv_eq(char **a, size_t na, char **b, size_t nb)
{
	if (na != nb || !a != !b)
		return false;
	for (size_t i = 0; i < na; i++)
		if (!str_eq(a[i], b[i]))
			return false;
	return !a || (a[na] == NULL && b[nb] == NULL);
}

static bool kv_eq(const struct config_kv *a, size_t na, const struct config_kv *b, size_t nb)
{
	if (na != nb)
		return false;
	for (size_t i = 0; i < na; i++)
		if (!str_eq(a[i].key, b[i].key) || !str_eq(a[i].value, b[i].value))
			return false;
	return true;
}

static void check_server_eq(const struct config_server *a, const struct config_server *b)
{
	CHECK_STREQ(a->name, b->name);
	CHECK(a->protocol == b->protocol);
	CHECK(str_eq(a->url, b->url));
	CHECK(str_eq(a->command, b->command));
	CHECK(strv_eq(a->args, a->n_args, b->args, b->n_args));
	CHECK(kv_eq(a->env, a->n_env, b->env, b->n_env));
	CHECK(kv_eq(a->headers, a->n_headers, b->headers, b->n_headers));
	CHECK(a->enabled == b->enabled);
	CHECK(a->eager == b->eager);
	CHECK(a->oauth_enabled == b->oauth_enabled);
	CHECK(str_eq(a->oauth.client_id, b->oauth.client_id));
	CHECK(str_eq(a->oauth.client_secret, b->oauth.client_secret));
	CHECK(strv_eq(a->oauth.scopes, a->oauth.n_scopes, b->oauth.scopes, b->oauth.n_scopes));
	CHECK(a->oauth.redirect_port == b->oauth.redirect_port);
	CHECK(str_eq(a->oauth.resource, b->oauth.resource));
}

/* The digest daemon/servers.c compares to refuse overwriting someone's edit:
 * of the content read, whatever changed in it (a byte of layout too), and
 * the same for config_load() and config_parse() of the same bytes. */
static void test_digest(void)
{
	static const char text[] = "{\"mcpServers\": {\"a\": {\"url\": \"https://a.example/mcp\"}}}";
	static const char spaced[] = "{\"mcpServers\": {\"a\": {\"url\": \"https://a.example/mcp\"}}} ";
	unsigned char d[CONFIG_DIGEST_LEN];
	struct config *a, *b, *c = NULL;
	char err[512];

	TEST("the content digest: config_parse, config_load and config_digest agree; one byte more differs");
	a = parse_ok(text);
	b = parse_ok(spaced);
	CHECK(memcmp(a->digest, b->digest, CONFIG_DIGEST_LEN) != 0);
	config_digest(text, strlen(text), d);
	CHECK(memcmp(a->digest, d, CONFIG_DIGEST_LEN) == 0);
	write_file(tmp_path("digest.json"), text, strlen(text));
	CHECK(config_load(tmp_path("digest.json"), false, &c, err, sizeof(err)) == 0);
	CHECK(memcmp(c->digest, d, CONFIG_DIGEST_LEN) == 0);
	CHECK(strcmp(c->path, tmp_path("digest.json")) == 0);
	config_free(a);
	config_free(b);
	config_free(c);
}

static void test_forms_equal(void)
{
	static const char list_form[] =
		"{\"mcpServers\": [\n"
		" {\"name\": \"github\", \"url\": \"https://api.github.example/mcp\",\n"
		"  \"headers\": {\"X-Trace\": \"1\"}, \"eager\": true,\n"
		"  \"oauth\": {\"client_id\": \"cid\", \"scopes\": \"repo user\", \"redirect_port\": 8765}},\n"
		" {\"name\": \"linear\", \"type\": \"sse\", \"url\": \"http://127.0.0.1:9000/sse\",\n"
		"  \"enabled\": false, \"oauth\": false},\n"
		" {\"name\": \"files\", \"command\": \"npx\", \"args\": [\"-y\", \"server-fs\", \"/tmp\"],\n"
		"  \"env\": {\"DEBUG\": \"1\", \"EMPTY\": \"\"}}\n"
		"]}";
	static const char object_form[] =
		"{\"mcpServers\": {\n"
		" \"github\": {\"url\": \"https://api.github.example/mcp\",\n"
		"  \"headers\": {\"X-Trace\": \"1\"}, \"eager\": true,\n"
		"  \"oauth\": {\"client_id\": \"cid\", \"scopes\": [\"repo\", \"user\"], \"redirect_port\": 8765}},\n"
		" \"linear\": {\"protocol\": \"sse\", \"url\": \"http://127.0.0.1:9000/sse\",\n"
		"  \"enabled\": false, \"oauth\": false},\n"
		" \"files\": {\"type\": \"stdio\", \"command\": \"npx\", \"args\": [\"-y\", \"server-fs\", \"/tmp\"],\n"
		"  \"env\": {\"DEBUG\": \"1\", \"EMPTY\": \"\"}}\n"
		"}}";
	struct config *a, *b;

	TEST("list and object forms of mcpServers give the same servers");
	a = parse_ok(list_form);
	b = parse_ok(object_form);
	CHECK(a->n_servers == 3 && b->n_servers == 3);
	for (size_t i = 0; i < a->n_servers; i++)
		check_server_eq(&a->servers[i], &b->servers[i]);

	/* And the values are the ones written, not just equal to each other. */
	const struct config_server *s = &a->servers[0];
	CHECK_STREQ(s->name, "github");
	CHECK(s->protocol == CONFIG_PROTOCOL_STREAMABLE_HTTP);
	CHECK(s->eager && s->enabled && s->oauth_enabled);
	CHECK(s->n_headers == 1);
	CHECK_STREQ(s->headers[0].key, "X-Trace");
	CHECK_STREQ(s->headers[0].value, "1");
	CHECK(s->args == NULL && s->n_args == 0);
	s = &a->servers[1];
	CHECK_STREQ(s->name, "linear");
	CHECK(s->protocol == CONFIG_PROTOCOL_SSE);
	CHECK(!s->enabled && !s->oauth_enabled);
	s = &a->servers[2];
	CHECK_STREQ(s->name, "files");
	CHECK(s->protocol == CONFIG_PROTOCOL_STDIO);
	CHECK(!s->url);
	CHECK(s->n_args == 3);
	CHECK_STREQ(s->args[2], "/tmp");
	CHECK(s->args[3] == NULL);
	CHECK(s->n_env == 2);
	CHECK_STREQ(s->env[1].key, "EMPTY");
	CHECK_STREQ(s->env[1].value, "");
	config_free(a);
	config_free(b);
}

static void test_defaults(void)
{
	struct config *c;
	char want[600];

	TEST("global defaults, user mode");
	c = parse_ok("{}");
	CHECK_STREQ(c->path, "config.json");
	CHECK(!c->system_mode);
	CHECK_STREQ(c->listen, "127.0.0.1:8080");
	CHECK_STREQ(c->users.oauth, "mcpkeeper-oauth");
	CHECK_STREQ(c->users.http, "mcpkeeper-http");
	CHECK_STREQ(c->users.worker, "mcpkeeper-worker");
	CHECK(c->group == NULL);
	CHECK(c->idle_timeout_sec == 300);
	CHECK(c->request_timeout_sec == 60);
	CHECK(!c->disable_management);
	CHECK(c->refresh.threshold == 0.8);
	CHECK(c->refresh.max_retries == 3);
	CHECK(c->refresh.timeout_sec == 30);
	CHECK(c->refresh.max_in_flight == 16);
	CHECK(c->refresh.min_interval_ms == 2000);
	CHECK(c->n_servers == 0 && c->servers == NULL);
	snprintf(want, sizeof(want), "%s/state/mcpkeeper", tmpdir);
	CHECK_STREQ(c->data_dir, want);
	snprintf(want, sizeof(want), "%s/run/mcpkeeper", tmpdir);
	CHECK_STREQ(c->runtime_dir, want);
	c = config_free(c);
	CHECK(c == NULL);

	TEST("global defaults, system mode");
	{
		char err[256];

		CHECK(config_parse("config.json", "{}", 2, true, &c, err, sizeof(err)) == 0);
		CHECK(c->system_mode);
		CHECK_STREQ(c->data_dir, "/var/lib/mcpkeeper");
		CHECK_STREQ(c->runtime_dir, "/run/mcpkeeper");
		config_free(c);
	}

	TEST("globals as written");
	c = parse_ok("\xef\xbb\xbf{\"data_dir\": \"/srv/keeper\", \"runtime_dir\": \"/run/k\","
		     " \"listen\": \"127.0.0.1:7000\", \"group\": \"mcp\","
		     " \"users\": {\"oauth\": \"o\", \"http\": \"h\", \"worker\": \"nobody\"},"
		     " \"idle_timeout\": 0, \"disable_management\": true, \"mcpServers\": []}");
	CHECK_STREQ(c->data_dir, "/srv/keeper");
	CHECK_STREQ(c->runtime_dir, "/run/k");
	CHECK_STREQ(c->listen, "127.0.0.1:7000");
	CHECK_STREQ(c->group, "mcp");
	CHECK_STREQ(c->users.oauth, "o");
	CHECK_STREQ(c->users.http, "h");
	CHECK_STREQ(c->users.worker, "nobody");
	CHECK(c->idle_timeout_sec == 0);
	CHECK(c->disable_management);
	CHECK(c->n_servers == 0);
	config_free(c);

	TEST("server defaults");
	c = parse_ok("{\"mcpServers\": {\"h\": {\"url\": \"https://x.example\"},"
		     " \"s\": {\"command\": \"x\"}}}");
	CHECK(c->servers[0].enabled && !c->servers[0].eager);
	CHECK(c->servers[0].n_headers == 0 && c->servers[0].headers == NULL);
	CHECK(c->servers[1].enabled && !c->servers[1].eager);
	CHECK(c->servers[1].args != NULL && c->servers[1].args[0] == NULL);
	CHECK(c->servers[1].n_args == 0);
	CHECK(c->servers[1].n_env == 0);
	config_free(c);
}

/* Runs a parse with fd 2 pointed at a file and returns what was logged. */
static char *parse_capturing_stderr(const char *json)
{
	const char *path = tmp_path("stderr.log");
	static char buf[8192];
	struct config *c;
	int saved, fd;
	ssize_t n;

	fflush(stderr);
	saved = dup(STDERR_FILENO);
	CHECK(saved >= 0);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	CHECK(fd >= 0);
	CHECK(dup2(fd, STDERR_FILENO) == STDERR_FILENO);
	c = parse_ok(json);
	CHECK(dup2(saved, STDERR_FILENO) == STDERR_FILENO);
	close(saved);
	config_free(c);

	CHECK(lseek(fd, 0, SEEK_SET) == 0);
	n = read(fd, buf, sizeof(buf) - 1);
	CHECK(n >= 0);
	buf[n] = '\0';
	close(fd);
	return buf;
}

static void test_unknown_fields(void)
{
	const char *log;

	TEST("unknown fields are warned about and ignored");
	log = parse_capturing_stderr(
		"{\"$schema\": \"x\", \"mcpServers\": {\"github\": {\"url\": \"https://x.example\","
		" \"foo\": 1, \"oauth\": {\"client_id\": \"x\", \"audience\": \"y\"}}},"
		" \"refresh\": {\"jitter\": true}}");
	CHECK(strstr(log, "warning: config.json: mcpServers.github.foo: unknown field, ignored\n"));
	CHECK(strstr(log, "config.json: $schema: unknown field, ignored\n"));
	CHECK(strstr(log, "config.json: mcpServers.github.oauth.audience: unknown field, ignored\n"));
	CHECK(strstr(log, "config.json: refresh.jitter: unknown field, ignored\n"));
	CHECK(!strstr(log, "url"));

	/* In the object form the key is the name, so "name" is not one of ours. */
	log = parse_capturing_stderr(
		"{\"mcpServers\": [{\"name\": \"x\", \"command\": \"a\", \"cwd\": \"/\"}]}");
	CHECK(strstr(log, "config.json: mcpServers.x.cwd: unknown field, ignored\n"));
	CHECK(!strstr(log, "mcpServers.x.name"));
	log = parse_capturing_stderr("{\"mcpServers\": {\"x\": {\"name\": \"x\", \"command\": \"a\"}}}");
	CHECK(strstr(log, "config.json: mcpServers.x.name: unknown field, ignored\n"));

	/* Nothing is logged for a clean file. */
	log = parse_capturing_stderr("{\"mcpServers\": {\"x\": {\"command\": \"a\"}}}");
	CHECK(log[0] == '\0');
}

/* json parses, with these users for the three roles. */
static void users_are(const char *json, const char *oauth, const char *http, const char *worker)
{
	struct config *c = parse_ok(json);

	CHECK_STREQ(c->users.oauth, oauth);
	CHECK_STREQ(c->users.http, http);
	CHECK_STREQ(c->users.worker, worker);
	config_free(c);
}

static void test_users(void)
{
	const char *log;

	TEST("users: one per role, each defaulted on its own");
	users_are("{\"users\": {\"http\": \"web\"}}", "mcpkeeper-oauth", "web", "mcpkeeper-worker");

	TEST("users: worker_user is still read, as users.worker, with a warning");
	users_are("{\"worker_user\": \"old\", \"users\": {\"oauth\": \"o\"}}", "o", "mcpkeeper-http", "old");
	log = parse_capturing_stderr("{\"worker_user\": \"old\"}");
	CHECK(strstr(log, "warning: config.json: worker_user: deprecated, read as users.worker\n"));
	log = parse_capturing_stderr("{\"users\": {\"worker\": \"new\", \"root\": \"x\"}}");
	CHECK(!strstr(log, "deprecated"));
	CHECK(strstr(log, "config.json: users.root: unknown field, ignored\n"));

	TEST("users: wrong values name the field");
	parse_fails("{\"worker_user\": \"a\", \"users\": {\"worker\": \"b\"}}",
		    "config.json: worker_user: is the old name of users.worker: give only users.worker");
	parse_fails("{\"users\": \"mcpkeeper\"}", "config.json: users: must be an object");
	parse_fails("{\"users\": {\"oauth\": \"\"}}", "config.json: users.oauth: must not be empty");
	parse_fails("{\"users\": {\"http\": 33}}", "config.json: users.http: must be a string");
	parse_fails("{\"users\": {\"worker\": null}}", "config.json: users.worker: must be a string");
	parse_fails("{\"worker_user\": \"\"}", "config.json: worker_user: must not be empty");
}

/*
 * The reader walks the top-level object and mcpServers itself and gives
 * json-c one value at a time: the cases below are where such a walk could
 * lose its place, or report something else than one json-c parse would.
 */
static void test_reader_strings(void)
{
	struct config *c;
	const struct config_server *s;

	TEST("reader: brackets, quotes and backslashes inside strings");
	c = parse_ok("{\"group\": \"g}]{[\\\"\\\\\", \"mcpServers\": {\n"
		     " \"a\": {\"command\": \"x\", \"args\": [\"}\", \"]\", \"{\", \"[\", \"\\\"\", \"\\\\\","
		     " \"\\\\\\\"}\", \"a,b:c\"]},\n"
		     " \"b\": {\"url\": \"https://x.example/?q={}[],:\", \"headers\": {\"X-A\": \"}\\\\\"}}},"
		     " \"worker_user\": \"w\\\\\"}");
	CHECK_STREQ(c->group, "g}]{[\"\\");
	CHECK_STREQ(c->users.worker, "w\\");
	CHECK(c->n_servers == 2);
	s = config_find_server(c, "a");
	CHECK(s && s->n_args == 8);
	CHECK_STREQ(s->args[0], "}");
	CHECK_STREQ(s->args[1], "]");
	CHECK_STREQ(s->args[4], "\"");
	CHECK_STREQ(s->args[5], "\\");
	CHECK_STREQ(s->args[6], "\\\"}");
	CHECK_STREQ(s->args[7], "a,b:c");
	s = config_find_server(c, "b");
	CHECK(s && s->n_headers == 1);
	CHECK_STREQ(s->url, "https://x.example/?q={}[],:");
	CHECK_STREQ(s->headers[0].value, "}\\");
	config_free(c);

	TEST("reader: \\u escapes in the keys it reads itself");
	c = parse_ok("{\"mcp\\u0053ervers\": {\"gith\\u0075b\": {\"url\": \"https://x.example\"}},"
		     " \"li\\u0073ten\": \"127.0.0.1:0\"}");
	CHECK(c->n_servers == 1);
	CHECK_STREQ(c->servers[0].name, "github");
	CHECK_STREQ(c->listen, "127.0.0.1:0");
	config_free(c);
	/* Like json-c's own keys, a name ends at an escaped NUL. */
	c = parse_ok("{\"mcpServers\": {\"ab\\u0000cd\": {\"command\": \"x\"}}}");
	CHECK_STREQ(c->servers[0].name, "ab");
	config_free(c);
	parse_fails("{\"mcpServers\": {\"a\\u00e9\": {\"command\": \"x\"}}}",
		    "config.json: mcpServers.a??: invalid server name: must be 1 to 64 characters of "
		    "A-Z a-z 0-9 . _ -, not starting with . or -");
	parse_fails("{\"mcpServers\": {\"a\\x\": {}}}", "config.json: line 1: invalid string sequence");
	parse_fails("{\"mcpServers\": {\"a\\u00zz\": {}}}",
		    "config.json: line 1: invalid string sequence");

	TEST("reader: nested arrays and objects inside a server");
	parse_fails(SERVER("{\"command\": \"x\", \"args\": [[\"a\"], \"b\"]}"),
		    "config.json: mcpServers.a.args[0]: must be a string");
	parse_fails(SERVER("{\"command\": \"x\", \"env\": {\"A\": [\"x\", [\"y\"]]}}"),
		    "config.json: mcpServers.a.env.A: must be a string");
	c = parse_ok("{\"mcpServers\": [{\"name\": \"a\", \"command\": \"x\","
		     " \"x-note\": [[{\"k\": [1, {\"m\": []}]}], {}]}], \"x-top\": [[], [[{}]]]}");
	CHECK(c->n_servers == 1);
	CHECK(c->servers[0].n_args == 0 && c->servers[0].args[0] == NULL);
	config_free(c);
}

static void test_reader_whitespace(void)
{
	static const char compact[] =
		"{\"listen\":\"127.0.0.1:0\",\"mcpServers\":{\"a\":{\"url\":\"https://x.example\"},"
		"\"b\":{\"command\":\"c\",\"args\":[[]]}}}";
	static const char spaced[] =
		" \r\n\t{ \r\n\t\"listen\" \r\n\t: \r\n\t\"127.0.0.1:0\" \r\n\t, \r\n\t"
		"\"mcpServers\" \r\n\t: \r\n\t{ \r\n\t\"a\" \r\n\t: \r\n\t"
		"{ \"url\" : \"https://x.example\" } \r\n\t, \r\n\t"
		"\"b\"\t:\t{\"command\"\n:\n\"c\"}\r\n}\r\n\t} \r\n\t";
	struct config *c;

	TEST("reader: white space between every token");
	parse_fails(compact, "config.json: mcpServers.b.args[0]: must be a string");
	c = parse_ok(spaced);
	CHECK(c->n_servers == 2);
	CHECK_STREQ(c->servers[0].name, "a");
	CHECK_STREQ(c->servers[0].url, "https://x.example");
	CHECK_STREQ(c->servers[1].command, "c");
	CHECK_STREQ(c->listen, "127.0.0.1:0");
	config_free(c);
	/* Form feed is not JSON white space. */
	parse_fails("{\f}", "config.json: line 1: quoted object property name expected");
	parse_fails("{\"mcpServers\": [\f]}", "config.json: line 1: unexpected character");

	TEST("reader: empty mcpServers in both forms");
	static const char *const empty[] = {
		"{\"mcpServers\": {}}", "{\"mcpServers\": []}", "{\"mcpServers\":{ \n }}",
		"{\"mcpServers\":[\t\r\n]}", "{\"mcpServers\": {}, \"listen\": \"127.0.0.1:1\"}",
	};
	for (size_t i = 0; i < ARRAY_SIZE(empty); i++) {
		c = parse_ok(empty[i]);
		CHECK(c->n_servers == 0 && c->servers == NULL);
		config_free(c);
	}
}

/* A config using every construct the reader walks, in ASCII and on many lines. */
static const char reader_doc[] =
	"{\n"
	"  \"listen\": \"127.0.0.1:0\",\n"
	"  \"refresh\": {\"threshold\": 0.5, \"max_retries\": 2},\n"
	"  \"mcpServers\": {\n"
	"    \"gh\": {\"url\": \"https://x.example/?q={}[]\", \"headers\": {\"X-A\": \"b\\\"}\\\\\"},\n"
	"           \"oauth\": {\"client_id\": \"c\", \"scopes\": [\"a\", \"b\"], \"redirect_port\": 8080}},\n"
	"    \"fs\": {\"command\": \"npx\", \"args\": [\"-y\", \"}\", \"[\", \"\\u0041\"], \"env\": {\"K\": \"\"},\n"
	"           \"enabled\": false},\n"
	"    \"s\\u0033\": {\"type\": \"sse\", \"url\": \"http://127.0.0.1:1/sse\", \"oauth\": false}\n"
	"  },\n"
	"  \"idle_timeout\": 30,\n"
	"  \"disable_management\": true\n"
	"}\n";

static const char reader_doc_list[] =
	"{\"mcpServers\": [\n"
	" {\"name\": \"gh\", \"url\": \"https://x.example/\", \"oauth\": {\"scopes\": \"a b\"}},\n"
	" {\"name\": \"fs\", \"command\": \"npx\", \"args\": [\"]\", \"\\\"\"], \"eager\": true}\n"
	"], \"request_timeout\": 9}";

/* Every prefix of text short of its last '}' fails cleanly, with the line where it ends. */
static void check_prefixes(const char *text)
{
	size_t len = (size_t)(strrchr(text, '}') - text);
	char err[512], want[512];

	for (size_t n = 0; n < len; n++) {
		struct config *c = (struct config *)1;
		unsigned line = 1;
		bool blank = true;
		int r;

		for (size_t i = 0; i < n; i++) {
			line += text[i] == '\n';
			blank = blank && strchr(" \t\r\n", text[i]);
		}
		if (blank)
			snprintf(want, sizeof(want), "config.json: file is empty");
		else
			snprintf(want, sizeof(want), "config.json: line %u: unexpected end of data", line);
		r = config_parse("config.json", text, n, false, &c, err, sizeof(err));
		if (r != -EINVAL || c || strcmp(err, want) != 0) {
			fprintf(stderr, "prefix of %zu bytes: got %d \"%s\", expected \"%s\"\n", n, r,
				err, want);
			exit(1);
		}
	}
}

static void test_reader_truncated(void)
{
	struct config *c;
	const struct config_server *s;

	TEST("reader: the full documents load");
	c = parse_ok(reader_doc);
	CHECK(c->n_servers == 3 && c->idle_timeout_sec == 30 && c->disable_management);
	CHECK(c->refresh.threshold == 0.5 && c->refresh.max_retries == 2);
	s = config_find_server(c, "gh");
	CHECK(s && s->n_headers == 1 && s->oauth.n_scopes == 2 && s->oauth.redirect_port == 8080);
	CHECK_STREQ(s->headers[0].value, "b\"}\\");
	s = config_find_server(c, "fs");
	CHECK(s && s->n_args == 4 && !s->enabled && s->n_env == 1);
	CHECK_STREQ(s->args[3], "A");
	s = config_find_server(c, "s3");
	CHECK(s && s->protocol == CONFIG_PROTOCOL_SSE && !s->oauth_enabled);
	config_free(c);
	c = parse_ok(reader_doc_list);
	CHECK(c->n_servers == 2 && c->request_timeout_sec == 9);
	CHECK_STREQ(c->servers[1].args[0], "]");
	config_free(c);

	TEST("reader: every prefix of a config fails cleanly");
	check_prefixes(reader_doc);
	check_prefixes(reader_doc_list);
	/* Cut inside a UTF-8 sequence, the text is bad UTF-8 rather than short. */
	parse_fails("{\"group\": \"\xc3", "config.json: line 1: invalid utf-8 string");
	parse_fails("{\"mcpServers\": {\"\xc3", "config.json: line 1: invalid utf-8 string");
}

static void test_reader_trailing(void)
{
	struct config *c;

	TEST("reader: anything after the top-level object");
	parse_fails("{} x", "config.json: line 1: unexpected character");
	parse_fails("{}\n\n]", "config.json: line 3: unexpected character");
	parse_fails("{\"mcpServers\": {}}}", "config.json: line 1: unexpected character");
	parse_fails("{\"mcpServers\": {\"a\": {\"command\": \"x\"}}}\n{}",
		    "config.json: line 2: unexpected character");
	parse_fails("{} \xc3\xa9", "config.json: line 1: unexpected character");
	parse_fails("{}\xff", "config.json: line 1: invalid utf-8 string");
	parse_fails("{} // comment", "config.json: line 1: unexpected character");
	c = parse_ok("{}  \n\t\r\n");
	config_free(c);

	TEST("reader: broken punctuation where the reader reads");
	parse_fails("{\"a\" 1}", "config.json: line 1: object property name separator ':' expected");
	parse_fails("{\"mcpServers\": {\"a\": {\"command\": \"x\"}\n \"b\": {}}}",
		    "config.json: line 2: object value separator ',' expected");
	parse_fails("{\"mcpServers\": [{\"name\": \"a\", \"command\": \"x\"} {}]}",
		    "config.json: line 1: array value separator ',' expected");
	parse_fails("{\"a\": 1,}", "config.json: line 1: unexpected character");
	parse_fails("{\"mcpServers\": [{\"name\": \"a\", \"command\": \"x\"},]}",
		    "config.json: line 1: unexpected character");
	parse_fails("{\"mcpServers\": {\"a\": {\"command\": \"x\"},}}",
		    "config.json: line 1: unexpected character");
	parse_fails("{,}", "config.json: line 1: quoted object property name expected");
	parse_fails("{\"mcpServers\": {1: {}}}",
		    "config.json: line 1: quoted object property name expected");
	parse_fails("{\"mcpServers\": tru}", "config.json: line 1: boolean expected");
	/* json-c refuses a number that runs straight into something else. */
	parse_fails("{\"idle_timeout\": 300x}", "config.json: line 1: number expected");
	parse_fails("{\"mcpServers\": [1x]}", "config.json: line 1: number expected");
	parse_fails("{\"idle_timeout\": 300 x}",
		    "config.json: line 1: object value separator ',' expected");
	parse_fails("{\"mcpServers\": [1 x]}",
		    "config.json: line 1: array value separator ',' expected");
	parse_fails("{\"mcpServers\": {\"a\": {\"command\": \"x\"} /* c */}}",
		    "config.json: line 1: object value separator ',' expected");
}

/* {"x": [[...]]}-style text: pre, depth times open, core, depth times close, post. */
static char *nested(const char *pre, const char *open, const char *core, const char *close,
		    const char *post, int depth)
{
	static char buf[4096];
	size_t n = (size_t)snprintf(buf, sizeof(buf), "%s", pre);

	for (int i = 0; i < depth; i++)
		n += (size_t)snprintf(buf + n, sizeof(buf) - n, "%s", open);
	n += (size_t)snprintf(buf + n, sizeof(buf) - n, "%s", core);
	for (int i = 0; i < depth; i++)
		n += (size_t)snprintf(buf + n, sizeof(buf) - n, "%s", close);
	snprintf(buf + n, sizeof(buf) - n, "%s", post);
	return buf;
}

static void test_reader_depth(void)
{
	static const char deep[] = "config.json: line 1: nesting too deep";

	/* 32 levels in all, the top-level object being the first, wherever they are. */
	TEST("reader: the depth limit counts the levels it walks itself");
	config_free(parse_ok(nested("{\"x\": ", "[", "", "]", "}", 31)));
	parse_fails(nested("{\"x\": ", "[", "", "]", "}", 32), deep);
	config_free(parse_ok(nested("{\"x\": ", "{\"k\": ", "1", "}", "}", 30)));
	parse_fails(nested("{\"x\": ", "{\"k\": ", "1", "}", "}", 31), deep);
	config_free(parse_ok(nested("{\"mcpServers\": {\"a\": {\"command\": \"x\", \"x-deep\": ", "[",
				    "", "]", "}}}", 29)));
	parse_fails(nested("{\"mcpServers\": {\"a\": {\"command\": \"x\", \"x-deep\": ", "[", "", "]", "}}}",
			   30), deep);
	config_free(parse_ok(nested("{\"mcpServers\": [{\"name\": \"a\", \"command\": \"x\", \"x\": ", "[",
				    "", "]", "}]}", 29)));
	parse_fails(nested("{\"mcpServers\": [{\"name\": \"a\", \"command\": \"x\", \"x\": ", "[", "", "]",
			   "}]}", 30), deep);
	parse_fails(nested("{\"mcpServers\": {\"a\": ", "[", "", "]", "}}", 30),
		    "config.json: mcpServers.a: must be an object");
	parse_fails(nested("{\"mcpServers\": {\"a\": ", "[", "", "]", "}}", 31), deep);
	parse_fails(nested("{\"mcpServers\": [", "[", "", "]", "]}", 30),
		    "config.json: mcpServers[0]: must be an object");
	parse_fails(nested("{\"mcpServers\": [", "[", "", "]", "]}", 31), deep);
}

static void test_reader_errors(void)
{
	struct config *c = (struct config *)1;

	/*
	 * Servers are converted while the rest is still unread, yet a file fails
	 * as if it had been parsed whole first: syntax, then duplicate keys, then
	 * fields in their fixed order.
	 */
	TEST("reader: which error a file with several gets");
	parse_fails("{\"mcpServers\": {\"a\": {\"url\": 5}}, \"listen\": \"x\"}",
		    "config.json: listen: must be a loopback address and port, e.g. 127.0.0.1:0 or "
		    "[::1]:8080");
	parse_fails("{\"data_dir\": \"rel\", \"mcpServers\": {\"a\": {\"url\": 5}}}",
		    "config.json: mcpServers.a.url: must be a string");
	parse_fails("{\"mcpServers\": {\"a\": {\"url\": 5}, \"b\": {\"url\": tru}}}",
		    "config.json: line 1: boolean expected");
	parse_fails("{\"mcpServers\": [{\"url\": 5}, {\"name\": \"b\", \"url\": \"https://x.example\"}]\n}x",
		    "config.json: line 2: unexpected character");
	parse_fails("{\"mcpServers\": {\"a\": {\"url\": 5}},\n\"b\": {\"k\": 1, \"k\": 2}}",
		    "config.json: b.k: duplicate key (line 2)");
	parse_fails("{\"mcpServers\": {\"a\": {\"url\": 5},\n\"a\": {\"url\": \"https://x.example\"}}}",
		    "config.json: mcpServers.a: duplicate server name (line 2)");
	parse_fails("{\"mcpServers\": {\"a\": {\"url\": \"https://x.example\"},\n\"a\": {\"url\": 5}},"
		    " \"x\": tru}", "config.json: line 2: boolean expected");
	parse_fails("{\"mcpServers\": {},\n\"mcpServers\": []}",
		    "config.json: mcpServers: duplicate key (line 2)");
	parse_fails("{\"mcpServers\": [{\"name\": \"a\", \"command\": \"x\"}, {\"name\": \"a\", "
		    "\"command\": \"y\"}, {\"name\": 5}]}",
		    "config.json: mcpServers[1].name: duplicate server name \"a\"");
	parse_fails("{\"mcpServers\": 3, \"listen\": 4}", "config.json: listen: must be a string");
	parse_fails("{\"mcpServers\": 3, \"data_dir\": 4}",
		    "config.json: mcpServers: must be an object or an array");

	TEST("reader: single-quoted keys where the reader reads");
	parse_fails("{\"mcpServers\": {'a': {\"url\": \"https://x.example\"}}}",
		    "config.json: line 1: keys must be in double quotes");
	parse_fails("{\"a\": 1, \"a\": 2,\n'b': 3}", "config.json: a: duplicate key (line 1)");
	parse_fails("{\n'b': 3, \"a\": 1, \"a\": 2}", "config.json: line 2: keys must be in double quotes");
	/* Only a syntax error comes before it, as in one json-c parse. */
	parse_fails("{'a': 1, \"b\": tru}", "config.json: line 1: boolean expected");
	parse_fails("{'a\\q': 1}", "config.json: line 1: invalid string sequence");
	parse_fails("{\n'a", "config.json: line 2: unexpected end of data");

	TEST("reader: no message buffer, several errors");
	static const char several[] = "{\"mcpServers\": {\"a\": {\"url\": 5}, \"a\": {}}}";

	CHECK(config_parse("config.json", several, strlen(several), false, &c, NULL, 0) == -EINVAL);
	CHECK(c == NULL);
}

/* The usual shape, indented with an oauth block each: what a person writes. */
static char *many_servers(size_t n, bool list, size_t *len)
{
	size_t cap = 256 + n * 160, off = 0;
	char *text = malloc(cap);

	CHECK(text);
	off += (size_t)snprintf(text + off, cap - off, "{\n  \"mcpServers\": %s\n", list ? "[" : "{");
	for (size_t i = 0; i < n; i++)
		off += (size_t)snprintf(text + off, cap - off,
					"    %s\"s%zu\"%s\"url\": \"http://127.0.0.1:1/mcp\",\n"
					"      \"oauth\": {\"client_id\": \"bench\", \"scopes\": [\"mcp\"]}\n"
					"    }%s\n",
					list ? "{\"name\": " : "", i, list ? ",\n      " : ": {\n      ",
					i + 1 < n ? "," : "");
	off += (size_t)snprintf(text + off, cap - off, "  %s\n}\n", list ? "]" : "}");
	CHECK(off < cap);
	*len = off;
	return text;
}

static void test_many_servers(void)
{
	struct config *c = NULL;
	char err[512], want[512], name[32];
	size_t len;
	char *text;

	TEST("40 000 servers, over the old 4 MiB limit, in both forms");
	for (int list = 0; list <= 1; list++) {
		text = many_servers(40000, list, &len);
		CHECK(len > 4 * 1024 * 1024);
		CHECK(config_parse("config.json", text, len, false, &c, err, sizeof(err)) == 0);
		CHECK(c->n_servers == 40000);
		for (size_t i = 0; i < c->n_servers; i += 9999) {
			const struct config_server *s = &c->servers[i];

			snprintf(name, sizeof(name), "s%zu", i);
			CHECK_STREQ(s->name, name);
			CHECK_STREQ(s->url, "http://127.0.0.1:1/mcp");
			CHECK_STREQ(s->oauth.client_id, "bench");
			CHECK(s->oauth.n_scopes == 1 && s->oauth.scopes[1] == NULL);
		}
		CHECK(config_find_server(c, "s39999") == &c->servers[39999]);
		c = config_free(c);

		/* A duplicate at the very end is still found, with its line. */
		char *last = strstr(text, "\"s39999\"");
		unsigned line = 1;

		for (const char *q = text; q < last; q++)
			line += *q == '\n';
		memcpy(last, "\"s39998\"", 8);
		if (list)
			snprintf(want, sizeof(want), "config.json: mcpServers[39999].name: duplicate "
				 "server name \"s39998\"");
		else
			snprintf(want, sizeof(want), "config.json: mcpServers.s39998: duplicate server "
				 "name (line %u)", line);
		CHECK(config_parse("config.json", text, len, false, &c, err, sizeof(err)) == -EINVAL);
		CHECK(!c);
		CHECK_STREQ(err, want);
		free(text);
	}
}

static void test_size_and_files(void)
{
	size_t big = 16 * 1024 * 1024 + 1;
	struct config *c = NULL;
	char err[512], want[600];
	char *text;

	TEST("files larger than 16 MiB are refused");
	text = malloc(big);
	CHECK(text);
	memset(text, ' ', big);
	text[0] = '{';
	text[big - 1] = '}';
	CHECK(config_parse("config.json", text, big, false, &c, err, sizeof(err)) == -EFBIG);
	CHECK(!c);
	CHECK_STREQ(err, "config.json: file is larger than the 16 MiB limit");
	/* One byte less is whitespace inside an object, and fine. */
	text[big - 2] = '}';
	c = NULL;
	CHECK(config_parse("config.json", text, big - 1, false, &c, err, sizeof(err)) == 0);
	c = config_free(c);

	write_file(tmp_path("big.json"), text, big);
	CHECK(config_load(tmp_path("big.json"), false, &c, err, sizeof(err)) == -EFBIG);
	CHECK(!c);
	snprintf(want, sizeof(want), "%s: file is larger than the 16 MiB limit (16777217 bytes)",
		 tmp_path("big.json"));
	CHECK_STREQ(err, want);
	free(text);

	TEST("a missing file is -ENOENT and named");
	CHECK(config_load(tmp_path("nope/config.json"), false, &c, err, sizeof(err)) == -ENOENT);
	CHECK(!c);
	snprintf(want, sizeof(want), "%s: cannot open: No such file or directory",
		 tmp_path("nope/config.json"));
	CHECK_STREQ(err, want);

	TEST("a directory or a FIFO is not a config file");
	CHECK(config_load(tmpdir, false, &c, err, sizeof(err)) == -EINVAL);
	snprintf(want, sizeof(want), "%s: not a regular file", tmpdir);
	CHECK_STREQ(err, want);
	/* Opening a FIFO must not block waiting for a writer. */
	CHECK(mkfifo(tmp_path("fifo"), 0600) == 0);
	CHECK(config_load(tmp_path("fifo"), false, &c, err, sizeof(err)) == -EINVAL);
	snprintf(want, sizeof(want), "%s: not a regular file", tmp_path("fifo"));
	CHECK_STREQ(err, want);

	TEST("config_load names the file by its base name in field errors");
	{
		static const char bad[] = "{\n\"mcpServers\": {\"a\": {\"url\": \"gopher://x\"}}}";
		static const char good[] = "{\"mcpServers\": {\"a\": {\"url\": \"https://x.example\"}}}";

		write_file(tmp_path("mine.json"), bad, sizeof(bad) - 1);
		CHECK(config_load(tmp_path("mine.json"), false, &c, err, sizeof(err)) == -EINVAL);
		CHECK_STREQ(err, "mine.json: mcpServers.a.url: must be an http or https URL");
		write_file(tmp_path("mine.json"), good, sizeof(good) - 1);
		CHECK(config_load(tmp_path("mine.json"), false, &c, err, sizeof(err)) == 0);
		CHECK_STREQ(c->path, tmp_path("mine.json"));
		CHECK(c->n_servers == 1);
		config_freep(&c);
		CHECK(c == NULL);
	}
}

static void check_mode(const char *path, mode_t want)
{
	struct stat st;

	CHECK(lstat(path, &st) == 0);
	CHECK(S_ISDIR(st.st_mode));
	if ((st.st_mode & 07777) != want) {
		fprintf(stderr, "%s: mode %04o, expected %04o\n", path,
			(unsigned)(st.st_mode & 07777), (unsigned)want);
		exit(1);
	}
}

static void test_private_dir(void)
{
	char err[512], want[600];
	const char *p;

	TEST("paths_ensure_private_dir creates 0700 directories");
	p = tmp_path("priv/a/b");
	CHECK(paths_ensure_private_dir(p, err, sizeof(err)) == 0);
	check_mode(tmp_path("priv"), 0700);
	check_mode(tmp_path("priv/a"), 0700);
	check_mode(p, 0700);
	/* Again, now that it exists; a trailing slash names the same directory. */
	CHECK(paths_ensure_private_dir(tmp_path("priv/a/b/"), err, sizeof(err)) == 0);

	TEST("paths_ensure_private_dir refuses a 0755 directory");
	p = tmp_path("open");
	CHECK(mkdir(p, 0700) == 0 && chmod(p, 0755) == 0);
	CHECK(paths_ensure_private_dir(p, err, sizeof(err)) == -EACCES);
	snprintf(want, sizeof(want), "%s: mode 0755 gives group or others access, expected "
		 "0700; refusing to use it", p);
	CHECK_STREQ(err, want);
	check_mode(p, 0755);

	TEST("paths_ensure_private_dir refuses a symlink");
	CHECK(symlink(tmp_path("priv"), tmp_path("link")) == 0);
	CHECK(paths_ensure_private_dir(tmp_path("link"), err, sizeof(err)) == -ELOOP);
	snprintf(want, sizeof(want),
		 "%s: is a symbolic link, refusing to use it as a private directory",
		 tmp_path("link"));
	CHECK_STREQ(err, want);
	CHECK(paths_ensure_private_dir(tmp_path("link/"), err, sizeof(err)) == -ELOOP);

	TEST("paths_ensure_private_dir refuses a file");
	write_file(tmp_path("file"), "x", 1);
	CHECK(paths_ensure_private_dir(tmp_path("file"), err, sizeof(err)) == -ENOTDIR);
	snprintf(want, sizeof(want), "%s: exists and is not a directory", tmp_path("file"));
	CHECK_STREQ(err, want);

	TEST("paths_ensure_private_dir refuses another user's directory");
	if (test_needs_root(NULL))
		return;
	p = tmp_path("theirs");
	CHECK(mkdir(p, 0700) == 0 && chown(p, 65534, 65534) == 0);
	CHECK(paths_ensure_private_dir(p, err, sizeof(err)) == -EPERM);
	snprintf(want, sizeof(want), "%s: owned by uid 65534, not by uid 0; refusing to use it", p);
	CHECK_STREQ(err, want);
}

static void test_system_mode(void)
{
	char pid[32];

	TEST("paths_system_mode");
	unsetenv("XDG_RUNTIME_DIR");
	unsetenv("INVOCATION_ID");
	unsetenv("NOTIFY_SOCKET");
	unsetenv("LISTEN_PID");
	CHECK(!paths_system_mode(false));
	CHECK(paths_system_mode(true));
	setenv("INVOCATION_ID", "0123456789abcdef", 1);
	CHECK(paths_system_mode(false));
	unsetenv("INVOCATION_ID");
	setenv("NOTIFY_SOCKET", "/run/systemd/notify", 1);
	CHECK(paths_system_mode(false));
	unsetenv("NOTIFY_SOCKET");
	snprintf(pid, sizeof(pid), "%d", (int)getpid());
	setenv("LISTEN_PID", pid, 1);
	CHECK(paths_system_mode(false));
	/* LISTEN_PID of some other process was not meant for us. */
	snprintf(pid, sizeof(pid), "%d", (int)getpid() + 1);
	setenv("LISTEN_PID", pid, 1);
	CHECK(!paths_system_mode(false));
	setenv("LISTEN_PID", "x", 1);
	CHECK(!paths_system_mode(false));
	unsetenv("LISTEN_PID");
	/* A user manager's service: started by systemd, but in user mode. */
	setenv("INVOCATION_ID", "0123456789abcdef", 1);
	setenv("XDG_RUNTIME_DIR", "/run/user/1000", 1);
	CHECK(!paths_system_mode(false));
	CHECK(paths_system_mode(true));
	unsetenv("INVOCATION_ID");
	unsetenv("XDG_RUNTIME_DIR");
}

static void test_paths_defaults(void)
{
	char buf[600], want[600];

	TEST("paths in system mode");
	CHECK(paths_config_file(true, buf, sizeof(buf)) == 0);
	CHECK_STREQ(buf, "/etc/mcpkeeper/config.json");
	CHECK(paths_data_dir(true, buf, sizeof(buf)) == 0);
	CHECK_STREQ(buf, "/var/lib/mcpkeeper");
	CHECK(paths_runtime_dir(true, buf, sizeof(buf)) == 0);
	CHECK_STREQ(buf, "/run/mcpkeeper");

	TEST("paths from XDG variables");
	setenv("XDG_CONFIG_HOME", "/x/cfg", 1);
	setenv("XDG_STATE_HOME", "/x/state", 1);
	setenv("XDG_RUNTIME_DIR", "/x/run", 1);
	CHECK(paths_config_file(false, buf, sizeof(buf)) == 0);
	CHECK_STREQ(buf, "/x/cfg/mcpkeeper/config.json");
	CHECK(paths_data_dir(false, buf, sizeof(buf)) == 0);
	CHECK_STREQ(buf, "/x/state/mcpkeeper");
	CHECK(paths_runtime_dir(false, buf, sizeof(buf)) == 0);
	CHECK_STREQ(buf, "/x/run/mcpkeeper");
	CHECK(paths_config_file(false, buf, 10) == -ENAMETOOLONG);

	TEST("paths from HOME when XDG is unset or relative");
	setenv("HOME", "/home/u", 1);
	unsetenv("XDG_CONFIG_HOME");
	setenv("XDG_STATE_HOME", "relative/state", 1);
	CHECK(paths_config_file(false, buf, sizeof(buf)) == 0);
	CHECK_STREQ(buf, "/home/u/.config/mcpkeeper/config.json");
	CHECK(paths_data_dir(false, buf, sizeof(buf)) == 0);
	CHECK_STREQ(buf, "/home/u/.local/state/mcpkeeper");
	unsetenv("HOME");
	CHECK(paths_config_file(false, buf, sizeof(buf)) == -ENOENT);
	CHECK(paths_data_dir(false, buf, sizeof(buf)) == -ENOENT);

	TEST("config data_dir without any default");
	{
		struct config *c = NULL;
		char err[256];

		CHECK(config_parse("config.json", "{}", 2, false, &c, err, sizeof(err)) == -ENOENT);
		CHECK(!c);
		CHECK_STREQ(err, "config.json: data_dir: not set, and there is no default without HOME");
	}

	TEST("runtime dir falls back to a private /tmp/mcpkeeper-UID");
	{
		struct stat st;
		bool existed;
		int r;

		unsetenv("XDG_RUNTIME_DIR");
		snprintf(want, sizeof(want), "/tmp/mcpkeeper-%u", (unsigned)geteuid());
		existed = lstat(want, &st) == 0;
		r = paths_runtime_dir(false, buf, sizeof(buf));
		if (existed) {
			char err[512];

			/* Not ours to change: only agree with the check. */
			CHECK(r == paths_ensure_private_dir(want, err, sizeof(err)));
			printf("  %s existed before this test (check result %d)\n", want, r);
			if (r == 0)
				CHECK_STREQ(buf, want);
		} else {
			if (r == 0)
				snprintf(fallback_made, sizeof(fallback_made), "%s", want);
			CHECK(r == 0);
			CHECK_STREQ(buf, want);
			check_mode(want, 0700);
			CHECK(lstat(want, &st) == 0 && st.st_uid == geteuid());

			/* Opened up behind our back, it is refused rather than used. */
			CHECK(chmod(want, 0755) == 0);
			CHECK(paths_runtime_dir(false, buf, sizeof(buf)) == -EACCES);
			CHECK(buf[0] == '\0');
			CHECK(rmdir(want) == 0);
			fallback_made[0] = '\0';
		}
	}
}

static int rm_one(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
	return type == FTW_DP ? rmdir(path) : unlink(path);
}

/* Also runs when a CHECK exits, so a failed run leaves nothing behind. */
static void cleanup(void)
{
	if (fallback_made[0])
		rmdir(fallback_made);
	if (tmpdir_made)
		nftw(tmpdir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

int main(void)
{
	char path[600];

	log_init("test-config");
	CHECK(mkdtemp(tmpdir) != NULL);
	tmpdir_made = true;
	atexit(cleanup);
	/* Defaults must come from here, never from the caller's environment. */
	snprintf(path, sizeof(path), "%s/cfg", tmpdir);
	setenv("XDG_CONFIG_HOME", path, 1);
	snprintf(path, sizeof(path), "%s/state", tmpdir);
	setenv("XDG_STATE_HOME", path, 1);
	snprintf(path, sizeof(path), "%s/run", tmpdir);
	setenv("XDG_RUNTIME_DIR", path, 1);

	test_bad_json();
	test_root_not_object();
	test_wrong_types();
	test_bad_url();
	test_protocol();
	test_missing_url_command();
	test_oauth();
	test_insecure_http();
	test_sandbox();
	test_scopes();
	test_names();
	test_refresh_ranges();
	test_http_limits();
	test_login();
	test_listen();
	test_forms_equal();
	test_digest();
	test_defaults();
	test_unknown_fields();
	test_users();
	test_replication();
	test_reader_strings();
	test_reader_whitespace();
	test_reader_truncated();
	test_reader_trailing();
	test_reader_depth();
	test_reader_errors();
	test_many_servers();
	test_size_and_files();
	test_private_dir();
	test_system_mode();
	test_paths_defaults();

	CHECK(nftw(tmpdir, rm_one, 16, FTW_DEPTH | FTW_PHYS) == 0);
	tmpdir_made = false;
	printf("all config tests passed\n");
	return 0;
}
