/*
 * See config.h. Turns one JSON file into a validated struct config: the
 * public entry points (load, parse, free, lookup) are here, the work is in
 * the config-*.c files that config-private.h lists.
 *
 * The file is written by people, often pasted from an MCP desktop client's
 * config, so every message names the file, the field path and what is wrong,
 * and two shapes of "mcpServers" are accepted. A config that loads is
 * complete: defaults are filled in while it is parsed, so no other module
 * needs to know them.
 *
 * Touches the config file (open and read only, nothing else on disk but
 * what paths.h does for the default directories) and the heap.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "config-private.h"

#define CONFIG_MAX_SIZE (16u * 1024 * 1024)
#define CONFIG_MAX_SIZE_TEXT "16 MiB"

struct config *config_free(struct config *c)
{
	if (!c)
		return NULL;
	free(c->servers);
	config_mem_free(c->mem);
	free(c);
	return NULL;
}

void config_freep(struct config **c)
{
	*c = config_free(*c);
}

static int parse(struct parser *p, bool system_mode)
{
	struct config *c;
	int r;

	c = p->c = xcalloc(1, sizeof(*c));
	c->mem = config_mem_new();
	c->path = config_mem_strdup(c->mem, p->name);
	c->system_mode = system_mode;
	config_globals_init(c);

	r = config_read_text(p);
	if (r < 0)
		return r;
	return config_globals_parse(p, p->root);
}

int config_parse(const char *name, const char *text, size_t len, bool system_mode,
		 struct config **out, char *err, size_t errlen)
{
	struct parser p = {
		.name = name && *name ? name : "config",
		.err = err,
		.errlen = errlen,
	};
	const char *nul, *whole = text;
	size_t whole_len = len;
	int r;

	*out = NULL;
	if (err && errlen)
		err[0] = '\0';
	if (len > CONFIG_MAX_SIZE)
		return config_fail(&p, -EFBIG, NULL,
				   "file is larger than the " CONFIG_MAX_SIZE_TEXT " limit");
	/* Editors on some systems start UTF-8 files with a byte order mark. */
	if (len >= 3 && memcmp(text, "\xef\xbb\xbf", 3) == 0) {
		text += 3;
		len -= 3;
	}
	/* json-c would stop at a NUL and report the rest as missing. */
	nul = memchr(text, '\0', len);
	if (nul)
		return config_fail(&p, -EINVAL, NULL, "line %u: NUL byte in the file",
				   config_line_at(text, (size_t)(nul - text)));

	p.text = text;
	p.len = len;
	r = parse(&p, system_mode);
	config_read_done(&p);
	if (r < 0) {
		config_free(p.c);
		return r;
	}
	config_digest(whole, whole_len, p.c->digest);
	*out = p.c;
	return 0;
}

void config_digest(const char *text, size_t len, unsigned char out[CONFIG_DIGEST_LEN])
{
	crypto_generichash(out, CONFIG_DIGEST_LEN, (const unsigned char *)text, len, NULL, 0);
}

int config_parse_path(const char *path, const char *text, size_t len, bool system_mode,
		      struct config **out, char *err, size_t errlen)
{
	const char *slash = strrchr(path, '/');
	const char *base = slash && slash[1] ? slash + 1 : path;
	int r = config_parse(base, text, len, system_mode, out, err, errlen);

	if (r < 0)
		return r;
	(*out)->path = config_mem_strdup((*out)->mem, path);
	return 0;
}

/* size is what fstat() said: one read usually does, but the file may grow. */
static int read_all(int fd, size_t size, char **out, size_t *out_len)
{
	_cleanup_(freep) char *buf = NULL;
	size_t len = 0, cap = 0;

	for (;;) {
		ssize_t n;

		if (len == cap) {
			/* One byte past the limit is enough to know it is too large. */
			size_t ncap = cap ? cap * 2 : size + 1;

			if (cap > CONFIG_MAX_SIZE)
				return -EFBIG;
			if (ncap < 4096)
				ncap = 4096;
			if (ncap > CONFIG_MAX_SIZE + 1)
				ncap = CONFIG_MAX_SIZE + 1;
			buf = xrealloc(buf, ncap);
			cap = ncap;
		}
		n = read(fd, buf + len, cap - len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			break;
		len += (size_t)n;
		if (len > CONFIG_MAX_SIZE)
			return -EFBIG;
	}
	*out = TAKE_PTR(buf);
	*out_len = len;
	return 0;
}

int config_read_file(const char *path, char **text, size_t *len, char *err, size_t errlen)
{
	_cleanup_(closep) int fd = -1;
	struct parser p = { .name = path, .err = err, .errlen = errlen };
	struct stat st;
	int r;

	*text = NULL;
	*len = 0;
	if (err && errlen)
		err[0] = '\0';
	/* O_NONBLOCK: a FIFO in place of the file must not hang start-up. */
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0) {
		r = -errno;
		return config_fail(&p, r, NULL, "cannot open: %s", strerror(-r));
	}
	if (fstat(fd, &st) < 0) {
		r = -errno;
		return config_fail(&p, r, NULL, "cannot stat: %s", strerror(-r));
	}
	if (!S_ISREG(st.st_mode))
		return config_fail(&p, -EINVAL, NULL, "not a regular file");
	if (st.st_size > (off_t)CONFIG_MAX_SIZE)
		return config_fail(&p, -EFBIG, NULL,
				   "file is larger than the " CONFIG_MAX_SIZE_TEXT " limit (%lld bytes)",
				   (long long)st.st_size);
	r = read_all(fd, (size_t)st.st_size, text, len);
	if (r == -EFBIG)
		return config_fail(&p, r, NULL,
				   "file is larger than the " CONFIG_MAX_SIZE_TEXT " limit");
	if (r < 0)
		return config_fail(&p, r, NULL, "cannot read: %s", strerror(-r));
	return 0;
}

int config_load(const char *path, bool system_mode, struct config **out, char *err, size_t errlen)
{
	_cleanup_(freep) char *text = NULL;
	size_t len = 0;
	int r;

	*out = NULL;
	r = config_read_file(path, &text, &len, err, errlen);
	if (r < 0)
		return r;
	return config_parse_path(path, text, len, system_mode, out, err, errlen);
}

const struct config_server *config_find_server(const struct config *c, const char *name)
{
	for (size_t i = 0; i < c->n_servers; i++)
		if (strcmp(c->servers[i].name, name) == 0)
			return &c->servers[i];
	return NULL;
}
