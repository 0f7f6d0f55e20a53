/*
 * Table-driven parameter checks (params.h): every method of every channel
 * reads its params through params_parse(), so a missing or mistyped field
 * gets the same answer everywhere.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <json-c/json.h>

#include "params.h"

static bool value_ok(const struct param_spec *s, struct json_object *v)
{
	switch (s->type) {
	case PARAM_T_STRING:
		if (!json_object_is_type(v, json_type_string))
			return false;
		return !(s->flags & PARAM_NONEMPTY) || json_object_get_string_len(v) > 0;
	case PARAM_T_INT: {
		int64_t i;

		if (!json_object_is_type(v, json_type_int))
			return false;
		i = json_object_get_int64(v);
		return (s->min == 0 && s->max == 0) || (i >= s->min && i <= s->max);
	}
	case PARAM_T_BOOL:
		return json_object_is_type(v, json_type_boolean);
	case PARAM_T_OBJECT:
		return json_object_is_type(v, json_type_object);
	case PARAM_T_ARRAY:
		return json_object_is_type(v, json_type_array);
	}
	return false;
}

static void value_store(const struct param_spec *s, struct json_object *v, void *out)
{
	char *at = (char *)out + s->offset;

	switch (s->type) {
	case PARAM_T_STRING: {
		const char *str = json_object_get_string(v);

		memcpy(at, &str, sizeof(str));
		break;
	}
	case PARAM_T_INT: {
		int64_t i = json_object_get_int64(v);

		memcpy(at, &i, sizeof(i));
		break;
	}
	case PARAM_T_BOOL: {
		bool b = json_object_get_boolean(v);

		memcpy(at, &b, sizeof(b));
		break;
	}
	case PARAM_T_OBJECT:
	case PARAM_T_ARRAY:
		memcpy(at, &v, sizeof(v));
		break;
	}
}

int params_parse(struct json_object *params, const struct param_spec *spec, size_t n, void *out, const char **bad)
{
	bool is_object = params && json_object_is_type(params, json_type_object);

	if (params && !is_object) {
		*bad = "params";
		return -EINVAL;
	}
	/* Check everything first: out is written only when all of it is good. */
	for (size_t i = 0; i < n; i++) {
		struct json_object *v = NULL;

		if (is_object)
			json_object_object_get_ex(params, spec[i].key, &v);
		if (!v) {
			if (spec[i].flags & PARAM_REQUIRED) {
				*bad = spec[i].key;
				return -EINVAL;
			}
			continue;
		}
		if (!value_ok(&spec[i], v)) {
			*bad = spec[i].key;
			return -EINVAL;
		}
	}
	for (size_t i = 0; is_object && i < n; i++) {
		struct json_object *v = NULL;

		if (json_object_object_get_ex(params, spec[i].key, &v) && v)
			value_store(&spec[i], v, out);
	}
	return 0;
}

const char *params_strerror(const struct param_spec *spec, size_t n, const char *bad, char *buf, size_t len)
{
	static const char *const names[] = {
		[PARAM_T_STRING] = "string", [PARAM_T_INT] = "integer", [PARAM_T_BOOL] = "boolean",
		[PARAM_T_OBJECT] = "object", [PARAM_T_ARRAY] = "array",
	};

	for (size_t i = 0; i < n; i++) {
		const struct param_spec *s = &spec[i];

		if (strcmp(s->key, bad) != 0)
			continue;
		if (s->type == PARAM_T_INT && (s->min || s->max))
			snprintf(buf, len, "\"%s\" must be an integer from %lld to %lld", s->key, (long long)s->min,
				 (long long)s->max);
		else
			snprintf(buf, len, "\"%s\" must be a%s %s%s", s->key, s->type == PARAM_T_INT || s->type == PARAM_T_OBJECT || s->type == PARAM_T_ARRAY ? "n" : "",
				 s->type == PARAM_T_STRING && (s->flags & PARAM_NONEMPTY) ? "non-empty " : "",
				 names[s->type]);
		return buf;
	}
	snprintf(buf, len, "params must be an object");
	return buf;
}
