/*
 * Small helpers every module uses: scope-bound cleanup, array sizes and
 * checked descriptor handling. Nothing here allocates secrets.
 */
#pragma once

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <unistd.h>

#define _cleanup_(f) __attribute__((cleanup(f)))
#define _unused_ __attribute__((unused))
#define _printf_(a, b) __attribute__((format(printf, a, b)))
#define _noreturn_ __attribute__((noreturn))

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

static inline void freep(void *p)
{
	free(*(void **)p);
}

static inline int fd_close(int fd)
{
	if (fd >= 0) {
		int saved = errno;
		close(fd);
		errno = saved;
	}
	return -1;
}

static inline void closep(int *fd)
{
	*fd = fd_close(*fd);
}

/* Move ownership out of a cleanup variable: returns the value, clears the source. */
#define TAKE_PTR(p) ({ __typeof__(p) _t = (p); (p) = NULL; _t; })
#define TAKE_FD(fd) ({ int _t = (fd); (fd) = -1; _t; })

/*
 * Out of memory is fatal (HACKING.md, "Out of memory"): every allocation
 * outside sodium_malloc goes through these, which log and exit 1 instead of
 * returning NULL. xstrdup(NULL) is NULL. A keeper reload builds the new
 * configuration completely before it swaps it in, so dying here never
 * leaves a half-applied state behind.
 */
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);

/* Writes all of data (retrying short writes and EINTR): 0 or a negative errno value. */
int fd_write_all(int fd, const void *data, size_t len);
int fd_set_cloexec(int fd, int on);
/* No core file and not dumpable (no ptrace, no /proc/PID/mem for peers):
 * processes that hold secrets call it first. 0 or a negative errno value. */
int proc_no_core_dumps(void);
int fd_set_nonblock(int fd, int on);
/* Every signal's default disposition and an empty mask, as a fresh process
 * expects them; async-signal-safe, for a forked child before its exec. */
void proc_signals_default(void);

/* The longest scope list the keeper and the workers pass on. */
#define OAUTH_SCOPE_MAX 2048
/* A scope list as RFC 6749 section 3.3 has it: scope-tokens of %x21,
 * %x23-5B and %x5D-7E separated by single spaces; 1 .. OAUTH_SCOPE_MAX
 * bytes. What an upstream's challenge names goes on only when it is one. */
bool oauth_scope_valid(const char *s);
