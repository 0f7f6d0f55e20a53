/*
 * The web UI's static files (ui/): index.html, app.js, style.css and
 * openapi.json, read from the UI directory the hello names, with their
 * content types and the page's Content-Security-Policy.
 *
 * Only the files in the table below are served, each by its fixed name: no
 * part of a request's path reaches open(), so nothing outside the UI
 * directory can be asked for. The files are public (they carry no data and
 * the page loads before it can send the API key), small, and read afresh on
 * every request, so a reinstall shows without a restart.
 *
 * What it may touch: reading the UI directory (Landlock allows that much).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include <event2/buffer.h>
#include <event2/http.h>

#include "http.h"
#include "log.h"
#include "proto.h"
#include "util.h"

/* The UI's files are small; anything bigger is not ours. */
#define UI_FILE_MAX (8 * 1024 * 1024)

#define CSP_UI                                                                                           \
	"default-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; " \
	"frame-ancestors 'none'"

struct ui_file {
	const char *path, *file, *ctype;
};

static const struct ui_file ui_files[] = {
	{ "/", "index.html", "text/html; charset=utf-8" },
	{ "/ui/app.js", "app.js", "text/javascript; charset=utf-8" },
	{ "/ui/style.css", "style.css", "text/css; charset=utf-8" },
	{ "/openapi.json", "openapi.json", "application/json" },
};

const struct ui_file *static_find(const char *path)
{
	for (size_t i = 0; i < ARRAY_SIZE(ui_files); i++)
		if (strcmp(path, ui_files[i].path) == 0)
			return &ui_files[i];
	return NULL;
}

void static_serve(struct http *h, struct evhttp_request *req, const struct ui_file *f)
{
	const char *file = f->file;
	struct evkeyvalq *out = evhttp_request_get_output_headers(req);
	struct evbuffer *b;
	struct stat st;
	char path[PATH_MAX];
	int fd;

	if ((size_t)snprintf(path, sizeof(path), "%s/%s", h->ui_dir, file) >= sizeof(path)) {
		http_send_error(req, 404, KIND_NOT_FOUND, "the web UI is not installed");
		return;
	}
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY);
	if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > UI_FILE_MAX) {
		if (fd < 0 && errno != ENOENT)
			log_warn("web UI: cannot open %s: %m", path);
		fd_close(fd);
		http_send_error(req, 404, KIND_NOT_FOUND, "%s is not installed", file);
		return;
	}
	b = evbuffer_new();
	if (!b)
		fatal("out of memory");
	for (;;) {
		int n = evbuffer_read(b, fd, 65536);

		if (n == 0)
			break;
		if ((n < 0 && errno != EINTR) || evbuffer_get_length(b) > UI_FILE_MAX) {
			log_warn("web UI: cannot read %s: %s", path, n < 0 ? strerror(errno) : "it grew too large");
			fd_close(fd);
			evbuffer_free(b);
			http_send_error(req, 500, KIND_INTERNAL, "cannot read %s", file);
			return;
		}
	}
	fd_close(fd);
	http_common_headers(req);
	evhttp_add_header(out, "Content-Type", f->ctype);
	evhttp_add_header(out, "Cache-Control", "no-cache");
	evhttp_add_header(out, "Content-Security-Policy", CSP_UI);
	http_log_request(req, 200, NULL);
	evhttp_send_reply(req, 200, NULL, b);
	evbuffer_free(b);
}

