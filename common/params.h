/*
 * Parameters of a method, checked through one table per method instead of
 * a hand-written check per field. A handler declares what it takes:
 *
 *	struct login_params { const char *server; int64_t timeout; bool wait; };
 *	static const struct param_spec login_spec[] = {
 *		PARAM_STRING(struct login_params, server, PARAM_KEY_SERVER, PARAM_REQUIRED | PARAM_NONEMPTY),
 *		PARAM_INT(struct login_params, timeout, PARAM_KEY_TIMEOUT, 0, 1, 3600),
 *		PARAM_BOOL(struct login_params, wait, PARAM_KEY_WAIT, 0),
 *	};
 *	struct login_params p = { .timeout = 120, .wait = true };	(defaults)
 *	if (params_parse(m->params, login_spec, ARRAY_SIZE(login_spec), &p, &bad) < 0)
 *		... answer invalid_params naming bad ...
 *
 * Strings, objects and arrays are borrowed from params: they live as long as
 * the message. Keys the table does not name are ignored (a newer peer may
 * send more). A JSON null counts as absent. params itself may be NULL or
 * absent only when no field is required.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct json_object;

enum param_type {
	PARAM_T_STRING,		/* const char * */
	PARAM_T_INT,		/* int64_t, within [min, max] */
	PARAM_T_BOOL,		/* bool */
	PARAM_T_OBJECT,		/* struct json_object * (borrowed) */
	PARAM_T_ARRAY,		/* struct json_object * (borrowed) */
};

#define PARAM_REQUIRED 0x1	/* absent is an error */
#define PARAM_NONEMPTY 0x2	/* strings: "" is an error */

struct param_spec {
	const char *key;
	enum param_type type;
	unsigned flags;
	size_t offset;		/* where the value goes in the caller's struct */
	int64_t min, max;	/* PARAM_T_INT only */
};

#define PARAM_STRING(type, field, key, flags) { (key), PARAM_T_STRING, (flags), offsetof(type, field), 0, 0 }
#define PARAM_INT(type, field, key, flags, lo, hi) { (key), PARAM_T_INT, (flags), offsetof(type, field), (lo), (hi) }
#define PARAM_BOOL(type, field, key, flags) { (key), PARAM_T_BOOL, (flags), offsetof(type, field), 0, 0 }
#define PARAM_OBJECT(type, field, key, flags) { (key), PARAM_T_OBJECT, (flags), offsetof(type, field), 0, 0 }
#define PARAM_ARRAY(type, field, key, flags) { (key), PARAM_T_ARRAY, (flags), offsetof(type, field), 0, 0 }

/*
 * Checks params against spec[0..n) and stores every present value into out
 * (fields that are absent keep what the caller put there: the defaults).
 * Returns 0, or -EINVAL with *bad set to the offending key ("params" when
 * params is not an object); nothing is half-stored that the caller must undo.
 */
int params_parse(struct json_object *params, const struct param_spec *spec, size_t n, void *out, const char **bad);

/* "\"KEY\" is missing or not a TYPE": the message for an invalid_params
 * error about key bad of spec, written into buf. */
const char *params_strerror(const struct param_spec *spec, size_t n, const char *bad, char *buf, size_t len);
