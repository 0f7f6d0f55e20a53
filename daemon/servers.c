/*
 * Runtime changes of the server list: servers.add, servers.remove and
 * servers.update (common/proto.h), for the control socket and, through the
 * http child's control connections, the REST API.
 *
 * One model: a change is made to the config file's JSON, the whole new text
 * goes through config_parse() (so a change is refused with exactly the
 * message the same edit by hand would get at a reload), the file is
 * replaced, and only then is the new configuration applied by
 * keeper_apply_config(), as a SIGHUP would apply it. The reply therefore
 * comes after the change is on disk.
 *
 * The file is the user's: an edit made since the keeper read it (its
 * content's digest, not its mtime, differs from the one the running
 * configuration was parsed from) refuses the change instead of losing the
 * edit. The rewrite keeps keys the keeper does not know, the order of keys,
 * the object or list form of mcpServers and the file's mode, and goes to
 * the target of a symlink. What it loses is the file's layout: it is written
 * back pretty-printed.
 *
 * In system mode the file is the administrator's and is never written: the
 * changes go to an overlay in the store (STORE_SERVERS, sealed like the
 * tokens): per server name its entry, or a tombstone for a server of the
 * file that was removed. servers_load_config() merges it over the file at
 * start and at every reload, so a change made here is applied the same way
 * whichever of the two comes first.
 *
 * Touches the config file and its directory (user mode), the store's
 * servers database (system mode), and the keeper's server list through
 * keeper_apply_config().
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <json-c/json.h>
#include <sodium.h>

#include "config.h"
#include "keeper.h"
#include "log.h"
#include "proto.h"
#include "secret.h"
#include "util.h"

/* What the http child may not set: running a command (or widening what it
 * may reach) and sending a bearer token in clear need the control socket. */
static const char *const shell_keys[] = {
	PARAM_KEY_COMMAND, PARAM_KEY_ARGS, PARAM_KEY_ENV, PARAM_KEY_SANDBOX, PARAM_KEY_ALLOW_INSECURE_HTTP,
};

#define SERVERS_FAIL(kind, ...) (snprintf(err, errlen, __VA_ARGS__), (kind))

/* The parsed file: root, its mcpServers (object or array) and a BOM. */
struct doc {
	struct json_object *root;
	struct json_object *servers;
	bool bom;
};

static void doc_done(struct doc *d)
{
	json_object_put(d->root);
}

static int doc_parse(struct doc *d, const char *text, size_t len)
{
	struct json_tokener *tok;

	d->bom = len >= 3 && memcmp(text, "\xef\xbb\xbf", 3) == 0;
	if (d->bom) {
		text += 3;
		len -= 3;
	}
	if (len > INT_MAX)
		return -EFBIG;
	tok = json_tokener_new();
	if (!tok)
		fatal("out of memory");
	d->root = json_tokener_parse_ex(tok, text, (int)len);
	json_tokener_free(tok);
	if (!d->root || !json_object_is_type(d->root, json_type_object))
		return -EINVAL;
	if (!json_object_object_get_ex(d->root, "mcpServers", &d->servers) || !d->servers) {
		d->servers = json_object_new_object();
		json_object_object_add(d->root, "mcpServers", d->servers);
	}
	if (!json_object_is_type(d->servers, json_type_object) && !json_object_is_type(d->servers, json_type_array))
		return -EINVAL;
	return 0;
}

static bool is_list(const struct doc *d)
{
	return json_object_is_type(d->servers, json_type_array);
}

/* The entry named name: its object, and in the list form its index. */
static struct json_object *doc_find(const struct doc *d, const char *name, size_t *index)
{
	struct json_object *e, *n;

	if (!is_list(d))
		return json_object_object_get_ex(d->servers, name, &e) ? e : NULL;
	for (size_t i = 0; i < json_object_array_length(d->servers); i++) {
		e = json_object_array_get_idx(d->servers, i);
		if (json_object_object_get_ex(e, PARAM_KEY_NAME, &n) && json_object_is_type(n, json_type_string) &&
		    strcmp(json_object_get_string(n), name) == 0) {
			*index = i;
			return e;
		}
	}
	return NULL;
}

/* The object form: entry old (NULL: none) replaced by value under name
 * (value NULL: removed), in place, the other keys in their order. */
static void object_replace(struct doc *d, const char *old, const char *name, struct json_object *value)
{
	struct json_object *o = json_object_new_object();

	json_object_object_foreach(d->servers, key, v) {
		if (old && strcmp(key, old) == 0) {
			if (value)
				json_object_object_add(o, name, json_object_get(value));
		} else {
			json_object_object_add(o, key, json_object_get(v));
		}
	}
	if (!old && value)
		json_object_object_add(o, name, json_object_get(value));
	json_object_object_add(d->root, "mcpServers", o);
	d->servers = o;
}

/* A copy of entry with fields applied (null removes); "name" handled by the caller. */
static struct json_object *entry_with(struct json_object *entry, struct json_object *fields)
{
	struct json_object *copy = NULL;

	if (json_object_deep_copy(entry, &copy, NULL) < 0)
		fatal("out of memory");
	json_object_object_foreach(fields, key, v) {
		if (strcmp(key, PARAM_KEY_NAME) == 0)
			continue;
		if (!v)
			json_object_object_del(copy, key);
		else
			json_object_object_add(copy, key, json_object_get(v));
	}
	return copy;
}

/*
 * Writes text over path's target: a temporary file beside it with the
 * old file's mode (and owner, where allowed), fsynced, renamed over, the
 * directory fsynced. 0 or -errno with the step in err.
 */
static int file_replace(const char *path, const char *text, size_t len, char *err, size_t errlen)
{
	char target[PATH_MAX], tmp[PATH_MAX + 16], *slash;
	_cleanup_(closep) int dfd = -1;
	int fd, r = 0;
	struct stat st;

	if (!realpath(path, target)) {
		r = -errno;
		snprintf(err, errlen, "%s: %s", path, strerror(-r));
		return r;
	}
	if (stat(target, &st) < 0) {
		r = -errno;
		snprintf(err, errlen, "%s: %s", target, strerror(-r));
		return r;
	}
	slash = strrchr(target, '/');
	if (snprintf(tmp, sizeof(tmp), "%.*s/.%s.XXXXXX", (int)(slash - target), target, slash + 1) >=
	    (int)sizeof(tmp))
		return SERVERS_FAIL(-ENAMETOOLONG, "%s: path too long", target);
	fd = mkostemp(tmp, O_CLOEXEC);
	if (fd < 0) {
		r = -errno;
		snprintf(err, errlen, "cannot create a temporary file beside %s: %s", target, strerror(-r));
		return r;
	}
	if (fchmod(fd, st.st_mode & 07777) < 0 ||
	    (fchown(fd, st.st_uid, st.st_gid) < 0 && errno != EPERM)) {
		r = -errno;
		snprintf(err, errlen, "%s: cannot set its mode: %s", tmp, strerror(-r));
	}
	for (size_t off = 0; r == 0 && off < len;) {
		ssize_t n = write(fd, text + off, len - off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			r = -errno;
			snprintf(err, errlen, "%s: cannot write: %s", tmp, strerror(-r));
		} else {
			off += (size_t)n;
		}
	}
	if (r == 0 && fsync(fd) < 0) {
		r = -errno;
		snprintf(err, errlen, "%s: fsync: %s", tmp, strerror(-r));
	}
	if (close(fd) < 0 && r == 0) {
		r = -errno;
		snprintf(err, errlen, "%s: close: %s", tmp, strerror(-r));
	}
	if (r == 0 && rename(tmp, target) < 0) {
		r = -errno;
		snprintf(err, errlen, "cannot rename over %s: %s", target, strerror(-r));
	}
	if (r < 0) {
		unlink(tmp);
		return r;
	}
	*slash = '\0';
	dfd = open(*target ? target : "/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0 || fsync(dfd) < 0)
		log_warn("%s: fsync of the directory failed: %m", *target ? target : "/");
	return 0;
}

/* A key of SERVERS_SHELL_KEYS in fields, or NULL. */
static const char *shell_key(struct json_object *fields)
{
	for (size_t i = 0; i < ARRAY_SIZE(shell_keys); i++)
		if (json_object_object_get_ex(fields, shell_keys[i], NULL))
			return shell_keys[i];
	return NULL;
}

static bool orphaned(const struct keeper *k, const char *key)
{
	for (size_t i = 0; key && i < k->n_orphans; i++)
		if (strcmp(k->orphans[i], key) == 0)
			return true;
	return false;
}

/*
 * Builds the new text in d for ch: the reason's word, or NULL with the kind
 * in *kind and the message in err. *name is the server's name after.
 */
static const char *doc_change(struct doc *d, const struct servers_change *ch, const char **name, char *err,
			      size_t errlen, const char **kind)
{
	struct json_object *entry, *v, *updated;
	size_t index = 0;

	*name = ch->server;
	entry = doc_find(d, ch->server, &index);
	if (strcmp(ch->method, METHOD_SERVERS_ADD) == 0) {
		if (entry) {
			*kind = SERVERS_FAIL(KIND_EXISTS, "a server named \"%s\" exists already", ch->server);
			return NULL;
		}
		/* The list form's entries start with their name. */
		updated = json_object_new_object();
		if (is_list(d))
			json_object_object_add(updated, PARAM_KEY_NAME, json_object_new_string(ch->server));
		entry = entry_with(updated, ch->fields);
		json_object_put(updated);
		updated = entry;
		if (is_list(d)) {
			json_object_array_add(d->servers, updated);
		} else {
			object_replace(d, NULL, ch->server, updated);
			json_object_put(updated);
		}
		return SERVERS_R_ADDED;
	}
	if (!entry) {
		*kind = SERVERS_FAIL(KIND_NOT_FOUND, "no server named \"%.64s\"", ch->server);
		return NULL;
	}
	if (strcmp(ch->method, METHOD_SERVERS_REMOVE) == 0) {
		if (is_list(d))
			json_object_array_del_idx(d->servers, index, 1);
		else
			object_replace(d, ch->server, NULL, NULL);
		return SERVERS_R_REMOVED;
	}

	if (json_object_object_get_ex(ch->fields, PARAM_KEY_NAME, &v)) {
		if (!json_object_is_type(v, json_type_string)) {
			*kind = SERVERS_FAIL(KIND_INVALID_PARAMS, "\"name\" must be a string");
			return NULL;
		}
		*name = json_object_get_string(v);
		if (strcmp(*name, ch->server) != 0 && doc_find(d, *name, &(size_t){ 0 })) {
			*kind = SERVERS_FAIL(KIND_EXISTS, "a server named \"%.64s\" exists already", *name);
			return NULL;
		}
	}
	updated = entry_with(entry, ch->fields);
	if (is_list(d)) {
		json_object_object_add(updated, PARAM_KEY_NAME, json_object_new_string(*name));
		json_object_array_put_idx(d->servers, index, updated);
	} else {
		object_replace(d, ch->server, *name, updated);
		json_object_put(updated);
	}
	return SERVERS_R_UPDATED;
}

/* The document's text (a BOM kept, a final newline), malloc'd. */
static char *doc_text(const struct doc *d, size_t *len)
{
	size_t out_len;
	const char *out = json_object_to_json_string_length(
		d->root, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED | JSON_C_TO_STRING_NOSLASHESCAPE, &out_len);
	char *text = xmalloc(out_len + 5);

	*len = 0;
	if (d->bom) {
		memcpy(text, "\xef\xbb\xbf", 3);
		*len = 3;
	}
	memcpy(text + *len, out, out_len);
	*len += out_len;
	text[(*len)++] = '\n';
	return text;
}

/* ---- system mode: the runtime overlay in the store ---- */

#define OVERLAY_REMOVED "removed"

struct overlay_walk {
	struct keeper *k;
	struct doc *d;
};

/* One record of STORE_SERVERS over the file's document. */
static int overlay_one(const char *key, const struct secret *plain, int status, void *ctx)
{
	struct overlay_walk *w = ctx;
	struct json_object *o = NULL, *entry;
	size_t index = 0;

	if (plain)
		o = json_tokener_parse((const char *)plain->data);
	if (!o || !json_object_is_type(o, json_type_object)) {
		log_warn("runtime server %s: its record does not open (%s); ignored", key,
			 plain ? "not a JSON object" : store_strerror(status));
		json_object_put(o);
		return 0;
	}
	if (json_object_object_get_ex(o, OVERLAY_REMOVED, NULL)) {
		if (doc_find(w->d, key, &index)) {
			if (is_list(w->d))
				json_object_array_del_idx(w->d->servers, index, 1);
			else
				object_replace(w->d, key, NULL, NULL);
		}
	} else if (json_object_object_get_ex(o, PARAM_KEY_CONFIG, &entry) &&
		   json_object_is_type(entry, json_type_object)) {
		bool present = doc_find(w->d, key, &index) != NULL;
		struct json_object *copy = NULL;

		if (json_object_deep_copy(entry, &copy, NULL) < 0)
			fatal("out of memory");
		if (is_list(w->d)) {
			json_object_object_add(copy, PARAM_KEY_NAME, json_object_new_string(key));
			if (present)
				json_object_array_put_idx(w->d->servers, index, copy);
			else
				json_object_array_add(w->d->servers, copy);
		} else {
			object_replace(w->d, present ? key : NULL, key, copy);
			json_object_put(copy);
		}
		json_object_object_add(w->k->runtime_servers, key, NULL);
	}
	json_object_put(o);
	return 0;
}

/* The file's text with the overlay applied (system mode), and the names
 * the overlay defines into k->runtime_servers. */
static int overlay_merge(struct keeper *k, struct doc *d, char *err, size_t errlen)
{
	struct overlay_walk w = { .k = k, .d = d };
	int r;

	json_object_put(k->runtime_servers);
	k->runtime_servers = json_object_new_object();
	r = store_list(k->store, STORE_SERVERS, overlay_one, &w);
	if (r < 0)
		return SERVERS_FAIL(r, "reading the runtime server changes from the store: %s", store_strerror(r));
	return 0;
}

int servers_load_config(struct keeper *k, struct config **out, char *err, size_t errlen)
{
	_cleanup_(freep) char *text = NULL, *merged = NULL;
	struct doc d = { 0 };
	size_t len;
	int r;

	*out = NULL;
	if (!k->system_mode || !k->store)
		return config_load(k->config_path, k->system_mode, out, err, errlen);
	r = config_read_file(k->config_path, &text, &len, err, errlen);
	if (r < 0)
		return r;
	/* The file alone first: its own errors are named as they are. */
	r = config_parse_path(k->config_path, text, len, k->system_mode, out, err, errlen);
	if (r < 0)
		return r;
	*out = config_free(*out);
	if (doc_parse(&d, text, len) < 0) {
		doc_done(&d);
		return SERVERS_FAIL(-EINVAL, "%s: mcpServers is neither an object nor a list", k->config_path);
	}
	r = overlay_merge(k, &d, err, errlen);
	if (r == 0)
		merged = doc_text(&d, &len);
	doc_done(&d);
	if (r < 0)
		return r;
	r = config_parse_path(k->config_path, merged, len, k->system_mode, out, err, errlen);
	if (r < 0)
		log_error("the runtime server changes (mcpctl servers) do not fit %s: %s", k->config_path, err);
	return r;
}

const char *servers_source(const struct keeper *k, const char *name)
{
	return k->runtime_servers && json_object_object_get_ex(k->runtime_servers, name, NULL) ? "runtime"
												   : "config";
}

static int overlay_put(struct keeper *k, const char *name, struct json_object *o)
{
	const char *text = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
	struct secret *plain = secret_from(text, strlen(text));
	int r;

	if (!plain)
		return -ENOMEM;
	r = store_put(k->store, STORE_SERVERS, name, plain);
	secret_free(plain);
	json_object_put(o);
	return r;
}

/*
 * A name that no longer names a server: a tombstone when the file defines
 * it (the administrator's entry stays in the file), else no record.
 */
static int overlay_forget(struct keeper *k, const struct doc *file, const char *name)
{
	struct json_object *o;
	size_t index;
	int r;

	if (!doc_find(file, name, &index)) {
		r = store_delete(k->store, STORE_SERVERS, name);
		return r == STORE_E_NOT_FOUND ? 0 : r;
	}
	o = json_object_new_object();
	json_object_object_add(o, OVERLAY_REMOVED, json_object_new_boolean(1));
	return overlay_put(k, name, o);
}

/* Writes the change of ch (name: the server's name after it; entry: its
 * entry then, NULL when removed) to the overlay, in synced transactions. */
static int overlay_store(struct keeper *k, const struct servers_change *ch, const char *name,
			 struct json_object *entry, char *err, size_t errlen)
{
	_cleanup_(freep) char *text = NULL;
	struct doc file = { 0 };
	size_t len;
	int r;

	r = config_read_file(k->config_path, &text, &len, err, errlen);
	if (r == 0 && doc_parse(&file, text, len) < 0)
		r = SERVERS_FAIL(-EINVAL, "%s: mcpServers is neither an object nor a list", k->config_path);
	if (r == 0 && entry) {
		struct json_object *o = json_object_new_object(), *copy = NULL;

		if (json_object_deep_copy(entry, &copy, NULL) < 0)
			fatal("out of memory");
		json_object_object_del(copy, PARAM_KEY_NAME);
		json_object_object_add(o, PARAM_KEY_CONFIG, copy);
		r = overlay_put(k, name, o);
		if (r == 0)
			json_object_object_add(k->runtime_servers, name, NULL);
	}
	if (r == 0 && strcmp(name, ch->server) != 0) {
		r = overlay_forget(k, &file, ch->server);
		if (r == 0)
			json_object_object_del(k->runtime_servers, ch->server);
	}
	if (r == 0 && !entry) {
		r = overlay_forget(k, &file, name);
		if (r == 0)
			json_object_object_del(k->runtime_servers, name);
	}
	doc_done(&file);
	if (r != 0 && err[0] == '\0')
		snprintf(err, errlen, "cannot store the change: %s", store_strerror(r));
	return r;
}

/* ---- a change ---- */

/* The text the change starts from: user mode, the file as the keeper read
 * it (else KIND_CONFLICT); system mode, the file with the overlay. */
static const char *base_text(struct keeper *k, char **text, size_t *len, char *err, size_t errlen)
{
	unsigned char digest[CONFIG_DIGEST_LEN];
	struct doc d = { 0 };
	int r;

	if (config_read_file(k->config_path, text, len, err, errlen) < 0)
		return KIND_UNAVAILABLE;
	if (k->system_mode) {
		if (doc_parse(&d, *text, *len) < 0) {
			doc_done(&d);
			return SERVERS_FAIL(KIND_CONFLICT, "%s: mcpServers is neither an object nor a list",
					    k->config_path);
		}
		r = overlay_merge(k, &d, err, errlen);
		if (r == 0) {
			free(*text);
			*text = doc_text(&d, len);
		}
		doc_done(&d);
		return r < 0 ? KIND_UNAVAILABLE : NULL;
	}
	config_digest(*text, *len, digest);
	if (sodium_memcmp(digest, k->cfg->digest, sizeof(digest)) != 0)
		return SERVERS_FAIL(KIND_CONFLICT,
				    "%s was changed since the keeper read it; not overwriting that edit: reload it "
				    "first (mcpctl reload), then try again",
				    k->config_path);
	return NULL;
}

static const char *change(struct keeper *k, const struct servers_change *ch, struct json_object **result,
			  char *err, size_t errlen)
{
	_cleanup_(freep) char *text = NULL, *old_key = NULL, *name = NULL;
	struct doc d = { 0 };
	struct config *cfg = NULL;
	const char *reason, *kind = NULL, *new_name, *bad;
	struct json_object *ev, *entry = NULL;
	struct server *s;
	size_t len, index = 0;
	int r;

	*result = NULL;
	err[0] = '\0';
	if (k->cfg->disable_management)
		return SERVERS_FAIL(KIND_FORBIDDEN, "management is disabled in the configuration");
	if (ch->restricted && (bad = shell_key(ch->fields)))
		return SERVERS_FAIL(KIND_FORBIDDEN,
				    "\"%s\" cannot be set through the HTTP API (it would let the API key run commands "
				    "or send tokens in clear): use the control socket (mcpctl servers)",
				    bad);
	if (ch->restricted && strcmp(ch->method, METHOD_SERVERS_UPDATE) == 0 &&
	    (s = keeper_find_server(k, ch->server)) && s->conf->allow_insecure_http &&
	    json_object_object_get_ex(ch->fields, PARAM_KEY_URL, NULL))
		return SERVERS_FAIL(KIND_FORBIDDEN,
				    "\"%s\" allows plain http: its url cannot be changed through the HTTP API; use the "
				    "control socket (mcpctl servers)",
				    ch->server);

	kind = base_text(k, &text, &len, err, errlen);
	if (kind)
		return kind;
	if (doc_parse(&d, text, len) < 0) {
		doc_done(&d);
		return SERVERS_FAIL(KIND_CONFLICT, "%s: mcpServers is neither an object nor a list", k->config_path);
	}
	reason = doc_change(&d, ch, &new_name, err, errlen, &kind);
	if (!reason) {
		doc_done(&d);
		return kind;
	}
	name = xstrdup(new_name);
	free(text);
	text = doc_text(&d, &len);
	if (strcmp(ch->method, METHOD_SERVERS_REMOVE) != 0)
		entry = json_object_get(doc_find(&d, name, &index));
	doc_done(&d);

	r = config_parse_path(k->config_path, text, len, k->system_mode, &cfg, err, errlen);
	if (r < 0) {
		json_object_put(entry);
		return KIND_INVALID_PARAMS;
	}
	if (k->system_mode) {
		r = overlay_store(k, ch, name, entry, err, errlen);
		if (r == 0)
			/* The merged text is no file's: no edit of the file to detect. */
			memset(cfg->digest, 0, sizeof(cfg->digest));
	} else {
		r = file_replace(k->config_path, text, len, err, errlen);
	}
	json_object_put(entry);
	if (r != 0) {
		config_free(cfg);
		log_error("%s %s: %s", ch->method, ch->server, err);
		return KIND_UNAVAILABLE;
	}

	s = keeper_find_server(k, ch->server);
	if (s && s->key)
		old_key = xstrdup(s->key);
	r = keeper_apply_config(k, cfg);
	if (r < 0) {
		log_error("%s %s: stored but not applied: %s", ch->method, ch->server, strerror(-r));
		return SERVERS_FAIL(KIND_INTERNAL, "stored but not applied (%s): run mcpctl reload", strerror(-r));
	}
	log_info("%s: %s by pid %d uid %u%s%s", name, reason, (int)ch->pid, (unsigned)ch->uid,
		 strcmp(name, ch->server) != 0 ? ", was " : "", strcmp(name, ch->server) != 0 ? ch->server : "");

	*result = json_object_new_object();
	json_object_object_add(*result, PARAM_KEY_SERVER, json_object_new_string(name));
	json_object_object_add(*result, PARAM_KEY_REASON, json_object_new_string(reason));
	if (strcmp(name, ch->server) != 0)
		json_object_object_add(*result, PARAM_KEY_PREVIOUS, json_object_new_string(ch->server));
	if (orphaned(k, old_key))
		json_object_object_add(*result, PARAM_KEY_ORPHANED, json_object_new_string(old_key));

	ev = json_object_new_object();
	json_object_object_add(ev, PARAM_KEY_REASON, json_object_new_string(reason));
	json_object_object_add(ev, PARAM_KEY_SERVER, json_object_new_string(name));
	if (strcmp(name, ch->server) != 0)
		json_object_object_add(ev, PARAM_KEY_PREVIOUS, json_object_new_string(ch->server));
	events_emit(k, EVENT_SERVERS_CHANGED, ev);
	return NULL;
}

/* A client's text for a log line: control characters (a name that was
 * refused may hold any) become '?'. */
static void printable(const char *in, char *out, size_t len)
{
	size_t i = 0;

	for (; in[i] && i + 1 < len; i++)
		out[i] = (unsigned char)in[i] < 0x20 || in[i] == 0x7f ? '?' : in[i];
	out[i] = '\0';
}

const char *servers_change(struct keeper *k, const struct servers_change *ch, struct json_object **result,
			   char *err, size_t errlen)
{
	const char *kind = change(k, ch, result, err, errlen);
	char who[80], why[1024];

	if (kind) {
		printable(ch->server, who, sizeof(who));
		printable(err, why, sizeof(why));
		log_info("%s %s by pid %d uid %u%s refused: %s", ch->method, who, (int)ch->pid, (unsigned)ch->uid,
			 ch->restricted ? " (http child)" : "", why);
	}
	return kind;
}
