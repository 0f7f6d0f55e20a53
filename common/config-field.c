/*
 * The pieces every part of config_parse() reads a field with
 * (config-private.h): the "FILE: PATH: what is wrong" messages, the first
 * error of a kind kept while the rest of the file is read, field paths made
 * safe for a message, and the readers of one typed field (string, boolean,
 * integer in a range, object, array of strings) that name the field when it
 * is wrong.
 *
 * Touches the parser's message buffer and the config's arena; what a value
 * means is for the callers.
 */
#include <errno.h>
#include <json-c/json.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "config-private.h"
#include "log.h"

int config_fail(struct parser *p, int r, const char *path, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	if (!p->err || !p->errlen)
		return r;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (path && *path)
		snprintf(p->err, p->errlen, "%s: %s: %s", p->name, path, msg);
	else
		snprintf(p->err, p->errlen, "%s: %s", p->name, msg);
	return r;
}

void config_defer(struct parser *p, struct deferred *d, int r)
{
	if (d->r)
		return;
	d->r = r;
	if (p->err && p->errlen)
		d->msg = xstrdup(p->err);
}

int config_deferred_report(struct parser *p, const struct deferred *d)
{
	if (p->err && p->errlen && d->msg)
		snprintf(p->err, p->errlen, "%s", d->msg);
	return d->r;
}

/*
 * Keys come from the file and may hold anything; they end up in log lines
 * and error messages, so they are made printable and cut short here.
 */
static void path_append(char *buf, size_t len, const char *s)
{
	size_t n = strlen(buf);
	size_t i;

	for (i = 0; s[i] && n + 1 < len; i++) {
		if (i == CONFIG_NAME_MAX) {
			snprintf(buf + n, len - n, "...");
			return;
		}
		buf[n++] = (s[i] > 0x20 && s[i] < 0x7f) ? s[i] : '?';
	}
	buf[n] = '\0';
}

void config_path_join(char *buf, size_t len, const char *prefix, const char *key)
{
	size_t n = 0;

	/* Cut rather than fail: a path only ever ends up in a message. */
	if (prefix && *prefix) {
		n = strnlen(prefix, len - 2);
		memcpy(buf, prefix, n);
		buf[n++] = '.';
	}
	buf[n] = '\0';
	path_append(buf, len, key);
}

void config_path_index(char *buf, size_t len, const char *prefix, size_t i)
{
	size_t n = strnlen(prefix, len - 1);
	char idx[24];
	size_t m;

	memcpy(buf, prefix, n);
	snprintf(idx, sizeof(idx), "[%zu]", i);
	m = strlen(idx);
	if (m > len - 1 - n)
		m = len - 1 - n;
	memcpy(buf + n, idx, m);
	buf[n + m] = '\0';
}

void config_warn_unknown(struct parser *p, struct json_object *obj, const char *prefix,
			 const char *const *known)
{
	struct json_object_iterator it = json_object_iter_begin(obj);
	struct json_object_iterator end = json_object_iter_end(obj);
	char path[CONFIG_PATH_MAX];

	for (; !json_object_iter_equal(&it, &end); json_object_iter_next(&it)) {
		const char *key = json_object_iter_peek_name(&it);
		bool found = false;

		for (size_t i = 0; known[i]; i++) {
			if (strcmp(key, known[i]) == 0) {
				found = true;
				break;
			}
		}
		if (!found) {
			config_path_join(path, sizeof(path), prefix, key);
			log_warn("%s: %s: unknown field, ignored", p->name, path);
		}
	}
}

/* JSON strings may carry \u0000; C strings cannot. */
int config_string_peek(struct parser *p, struct json_object *v, const char *path, bool nonempty,
		       const char **out)
{
	const char *s;
	size_t len;

	if (!json_object_is_type(v, json_type_string))
		return config_fail(p, -EINVAL, path, "must be a string");
	s = json_object_get_string(v);
	len = (size_t)json_object_get_string_len(v);
	if (strlen(s) != len)
		return config_fail(p, -EINVAL, path, "must not contain NUL characters");
	if (nonempty && len == 0)
		return config_fail(p, -EINVAL, path, "must not be empty");
	*out = s;
	return 0;
}

int config_string_value(struct parser *p, struct json_object *v, const char *path,
			bool nonempty, char **out)
{
	const char *s;
	int r;

	r = config_string_peek(p, v, path, nonempty, &s);
	if (r < 0)
		return r;
	*out = config_mem_strdup(p->c->mem, s);
	return 0;
}

int config_strv_from_array(struct parser *p, struct json_object *v, const char *path,
			   char ***out, size_t *n_out)
{
	char elem[CONFIG_PATH_MAX];
	size_t n;
	char **strv;

	if (!json_object_is_type(v, json_type_array))
		return config_fail(p, -EINVAL, path, "must be an array of strings");
	n = json_object_array_length(v);
	strv = config_mem_array(p->c->mem, n + 1, sizeof(*strv));
	for (size_t i = 0; i < n; i++) {
		int r;

		config_path_index(elem, sizeof(elem), path, i);
		r = config_string_value(p, json_object_array_get_idx(v, i), elem, false, &strv[i]);
		if (r < 0)
			return r;
	}
	*out = strv;
	*n_out = n;
	return 0;
}

int config_get_string(struct parser *p, struct json_object *obj, const char *prefix,
		      const char *key, bool nonempty, char **out)
{
	char path[CONFIG_PATH_MAX];
	struct json_object *v;

	if (!json_object_object_get_ex(obj, key, &v))
		return 0;
	config_path_join(path, sizeof(path), prefix, key);
	return config_string_value(p, v, path, nonempty, out);
}

int config_get_bool(struct parser *p, struct json_object *obj, const char *prefix,
		    const char *key, bool *out)
{
	char path[CONFIG_PATH_MAX];
	struct json_object *v;

	if (!json_object_object_get_ex(obj, key, &v))
		return 0;
	if (!json_object_is_type(v, json_type_boolean)) {
		config_path_join(path, sizeof(path), prefix, key);
		return config_fail(p, -EINVAL, path, "must be a boolean");
	}
	*out = json_object_get_boolean(v);
	return 0;
}

int config_get_int(struct parser *p, struct json_object *obj, const char *prefix,
		   const char *key, int min, int max, int *out)
{
	char path[CONFIG_PATH_MAX];
	struct json_object *v;
	int64_t n;

	if (!json_object_object_get_ex(obj, key, &v))
		return 0;
	/* json-c saturates integers beyond int64, which the range check catches. */
	n = json_object_is_type(v, json_type_int) ? json_object_get_int64(v) : INT64_MIN;
	if (n < min || n > max) {
		config_path_join(path, sizeof(path), prefix, key);
		return config_fail(p, -EINVAL, path,
				   "must be an integer between %d and %d", min, max);
	}
	*out = (int)n;
	return 0;
}

int config_get_object(struct parser *p, struct json_object *obj, const char *prefix,
		      const char *key, struct json_object **out)
{
	char path[CONFIG_PATH_MAX];
	struct json_object *v;

	*out = NULL;
	if (!json_object_object_get_ex(obj, key, &v))
		return 0;
	if (!json_object_is_type(v, json_type_object)) {
		config_path_join(path, sizeof(path), prefix, key);
		return config_fail(p, -EINVAL, path, "must be an object");
	}
	*out = v;
	return 0;
}
