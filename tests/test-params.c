/*
 * params_parse(): the table-driven check every method's params go through.
 * Each field type, required and optional, bounds, non-empty strings, null as
 * absent, and that nothing is stored when any field is bad.
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include <json-c/json.h>

#include "params.h"
#include "test.h"
#include "util.h"

struct p {
	const char *server;
	int64_t timeout;
	bool wait;
	struct json_object *headers;
	struct json_object *args;
	const char *scope;
};

static const struct param_spec spec[] = {
	PARAM_STRING(struct p, server, "server", PARAM_REQUIRED | PARAM_NONEMPTY),
	PARAM_INT(struct p, timeout, "timeout", 0, 1, 3600),
	PARAM_BOOL(struct p, wait, "wait", 0),
	PARAM_OBJECT(struct p, headers, "headers", 0),
	PARAM_ARRAY(struct p, args, "args", 0),
	PARAM_STRING(struct p, scope, "scope", 0),
};

static int parse(const char *json, struct p *out, const char **bad)
{
	struct json_object *o = json ? json_tokener_parse(json) : NULL;
	int r;

	if (json)
		CHECK(o != NULL);
	*out = (struct p){ .timeout = 120, .wait = true, .scope = "default" };
	*bad = NULL;
	r = params_parse(o, spec, ARRAY_SIZE(spec), out, bad);
	if (r == 0 && out->server)
		out->server = strcmp(out->server, "gh") == 0 ? "gh" : "other"; /* o is freed below */
	out->headers = out->headers ? (struct json_object *)1 : NULL;
	out->args = out->args ? (struct json_object *)1 : NULL;
	if (out->scope && strcmp(out->scope, "default") != 0)
		out->scope = strcmp(out->scope, "s") == 0 ? "s" : "?";
	json_object_put(o);
	return r;
}

int main(void)
{
	struct p v;
	const char *bad;
	char msg[128];

	TEST("all fields, in range");
	CHECK_EQ(parse("{\"server\":\"gh\",\"timeout\":5,\"wait\":false,\"headers\":{},\"args\":[],\"scope\":\"s\","
		       "\"newer\":1}", &v, &bad), 0);
	CHECK(strcmp(v.server, "gh") == 0 && v.timeout == 5 && !v.wait && v.headers && v.args &&
	      strcmp(v.scope, "s") == 0);

	TEST("absent and null optional fields keep the defaults");
	CHECK_EQ(parse("{\"server\":\"gh\",\"scope\":null}", &v, &bad), 0);
	CHECK(v.timeout == 120 && v.wait && !v.headers && !v.args && strcmp(v.scope, "default") == 0);

	TEST("a required field missing, null, empty or mistyped");
	CHECK_EQ(parse("{}", &v, &bad), -EINVAL);
	CHECK(strcmp(bad, "server") == 0);
	CHECK_EQ(parse("{\"server\":null}", &v, &bad), -EINVAL);
	CHECK_EQ(parse("{\"server\":\"\"}", &v, &bad), -EINVAL);
	CHECK_EQ(parse("{\"server\":7}", &v, &bad), -EINVAL);
	CHECK(strcmp(params_strerror(spec, ARRAY_SIZE(spec), bad, msg, sizeof(msg)),
		     "\"server\" must be a non-empty string") == 0);

	TEST("params absent or not an object");
	CHECK_EQ(parse(NULL, &v, &bad), -EINVAL);
	CHECK(strcmp(bad, "server") == 0);
	CHECK_EQ(parse("[1]", &v, &bad), -EINVAL);
	CHECK(strcmp(bad, "params") == 0);
	CHECK(strcmp(params_strerror(spec, ARRAY_SIZE(spec), bad, msg, sizeof(msg)), "params must be an object") == 0);

	TEST("integer bounds and types");
	CHECK_EQ(parse("{\"server\":\"gh\",\"timeout\":0}", &v, &bad), -EINVAL);
	CHECK(strcmp(bad, "timeout") == 0);
	CHECK(strcmp(params_strerror(spec, ARRAY_SIZE(spec), bad, msg, sizeof(msg)),
		     "\"timeout\" must be an integer from 1 to 3600") == 0);
	CHECK_EQ(parse("{\"server\":\"gh\",\"timeout\":3601}", &v, &bad), -EINVAL);
	CHECK_EQ(parse("{\"server\":\"gh\",\"timeout\":\"5\"}", &v, &bad), -EINVAL);
	CHECK_EQ(parse("{\"server\":\"gh\",\"timeout\":1.5}", &v, &bad), -EINVAL);
	CHECK_EQ(parse("{\"server\":\"gh\",\"timeout\":3600}", &v, &bad), 0);

	TEST("booleans, objects and arrays are checked by type");
	CHECK_EQ(parse("{\"server\":\"gh\",\"wait\":1}", &v, &bad), -EINVAL);
	CHECK(strcmp(bad, "wait") == 0);
	CHECK_EQ(parse("{\"server\":\"gh\",\"headers\":[]}", &v, &bad), -EINVAL);
	CHECK(strcmp(bad, "headers") == 0);
	CHECK_EQ(parse("{\"server\":\"gh\",\"args\":{}}", &v, &bad), -EINVAL);
	CHECK(strcmp(bad, "args") == 0);

	TEST("nothing is stored when a later field is bad");
	CHECK_EQ(parse("{\"server\":\"other\",\"timeout\":5,\"wait\":\"no\"}", &v, &bad), -EINVAL);
	CHECK(v.server == NULL && v.timeout == 120 && v.wait);
	return 0;
}
