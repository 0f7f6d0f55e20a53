/*
 * Inside config_load() and config_parse(), shared by the config*.c files and
 * by nobody else: the parser's state, the limits every part checks against,
 * and the helpers more than one part uses.
 *
 *   config.c           the public entry points: load, parse, free, lookup
 *   config-read.c      the JSON text, walked one mcpServers value at a time;
 *                      syntax errors, duplicate keys, the set of server names
 *   config-field.c     file/field error messages and field paths; the typed
 *                      readers of one field (get_string, get_bool, get_int...)
 *   config-mem.c       the arena every string and array of a config lives in
 *   config-server.c    one entry of mcpServers: url/command, protocol, args,
 *                      env, headers, oauth
 *   config-validate.c  what a URL, a listen address, a server name and a
 *                      header name may be (no JSON, no parser state)
 *   config-globals.c   the top-level settings and their defaults
 *   config-replication.c  "replication": the group this keeper is a site of
 *
 * Errors follow STYLE.md 10: 0, or a negative errno value with the message
 * already written by config_fail(); CONFIG_NAME_DUPLICATE is the one named
 * outcome. Out of memory is fatal (util.h), so nothing here returns -ENOMEM.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "config.h"
#include "util.h"

struct json_object;
struct json_tokener;

#define CONFIG_NAME_MAX 64
#define CONFIG_PATH_MAX 384	/* field paths in messages; longer ones are cut */

#define CONFIG_NAME_RULE \
	"must be 1 to 64 characters of A-Z a-z 0-9 . _ -, not starting with . or -"

/* The first error of one kind, kept while the rest of the file is read. */
struct deferred {
	int r;
	char *msg;		/* NULL when the caller passed no err buffer */
};

/* Names of the servers read so far: open addressing, strings in c->mem. */
struct name_set {
	const char **slot;
	size_t cap;		/* a power of two, or 0 */
	size_t n;
};

struct parser {
	const char *name;	/* what messages call the file */
	char *err;
	size_t errlen;
	struct config *c;

	/* The walk over the text (which holds no NUL); see config-read.c. */
	const char *text;
	size_t len;
	size_t pos;
	struct json_tokener *tok[2];	/* values 1 and 2 containers deep */
	struct json_object *root;	/* the top-level values but mcpServers */
	struct name_set names;
	size_t cap_servers;
	struct deferred dup;		/* a duplicate or single-quoted key */
	struct deferred servers;	/* a wrong field in mcpServers */
};

/* config-read.c */

/* The whole text, for its syntax and keys; servers converted on the way. */
int config_read_text(struct parser *p);
/* Frees what config_read_text() left in p; p->c stays. */
void config_read_done(struct parser *p);
/* The line (from 1) that byte off of text is on. */
unsigned config_line_at(const char *text, size_t off);

/* config_names_add(): the name was in the set already. */
#define CONFIG_NAME_DUPLICATE 1
/* Adds name (which must outlive the set): 0 or CONFIG_NAME_DUPLICATE. */
int config_names_add(struct name_set *set, const char *name);

/* config-field.c */

/*
 * Writes "FILE: PATH: message" (or "FILE: message" without a path) to
 * p->err and returns r, a negative errno value.
 */
int config_fail(struct parser *p, int r, const char *path, const char *fmt, ...) _printf_(4, 5);
/* Keeps error r (just written to p->err) if it is the first of its kind. */
void config_defer(struct parser *p, struct deferred *d, int r);
/* Puts the kept message back in p->err; returns its error. */
int config_deferred_report(struct parser *p, const struct deferred *d);

/* prefix.key and prefix[i] into buf: printable, and cut rather than failed. */
void config_path_join(char *buf, size_t len, const char *prefix, const char *key);
void config_path_index(char *buf, size_t len, const char *prefix, size_t i);
/* A warning for each key of obj not in known (NULL-terminated). */
void config_warn_unknown(struct parser *p, struct json_object *obj, const char *prefix,
			 const char *const *known);

/* A string value, checked; *out points into v. */
int config_string_peek(struct parser *p, struct json_object *v, const char *path, bool nonempty,
		       const char **out);
/* The same, copied into the config. */
int config_string_value(struct parser *p, struct json_object *v, const char *path,
			bool nonempty, char **out);
/* A NULL-terminated copy of an array of strings. */
int config_strv_from_array(struct parser *p, struct json_object *v, const char *path,
			   char ***out, size_t *n_out);

/*
 * Field key of obj (at prefix): absent leaves *out as it was; present and
 * of the wrong type or out of range fails with the field's path.
 */
int config_get_string(struct parser *p, struct json_object *obj, const char *prefix,
		      const char *key, bool nonempty, char **out);
int config_get_bool(struct parser *p, struct json_object *obj, const char *prefix,
		    const char *key, bool *out);
int config_get_int(struct parser *p, struct json_object *obj, const char *prefix,
		   const char *key, int min, int max, int *out);
/* An object; absent is fine (*out is NULL then). */
int config_get_object(struct parser *p, struct json_object *obj, const char *prefix,
		      const char *key, struct json_object **out);

/* config-mem.c: zeroed memory that goes with config_mem_free(); never NULL. */

struct config_mem *config_mem_new(void);
void config_mem_free(struct config_mem *m);
void *config_mem_array(struct config_mem *m, size_t n, size_t size);
char *config_mem_strndup(struct config_mem *m, const char *s, size_t len);
char *config_mem_strdup(struct config_mem *m, const char *s);

/* config-server.c */

/*
 * One entry of mcpServers into s (zeroed). key is the name in the object
 * form (already in p->names: a repeated key is the reader's to report), NULL
 * in the list form (where index locates the entry until its name is known).
 */
int config_server_parse(struct parser *p, struct json_object *obj, char *key, size_t index,
			struct config_server *s);

/* config-validate.c */

/* NULL when the value is usable, else what is wrong with it. */
const char *config_url_problem(const char *u);
const char *config_listen_problem(const char *s);
/* A server name (CONFIG_NAME_RULE); an HTTP header field name (RFC 9110). */
bool config_name_valid(const char *s);
bool config_header_name_valid(const char *s);

/* config-globals.c */

/* The defaults of the numeric settings, before the file is read. */
void config_globals_init(struct config *c);
/* config-replication.c */
void config_replication_init(struct config_replication *rc);
int config_replication_parse(struct parser *p, struct json_object *root);
/* The top-level settings in root (the file's object but mcpServers). */
int config_globals_parse(struct parser *p, struct json_object *root);
