/*
 * forkcheck-shim: a test-only LD_PRELOAD library that checks the rule
 * "between fork and exec, async-signal-safe calls only" (HACKING.md,
 * daemon/child.c) in the keeper. Built for the tests only, never installed,
 * and only without sanitizers (an interposed malloc cannot sit beside
 * ASan's); tests/integration/test_forkcheck.py puts it into the keeper
 * alone.
 *
 *   MCPKEEPER_FORKCHECK_LOG=FILE      lines appended with open/write/close:
 *       fork PID                      a forked child began (said by the child)
 *       exec PID                      that child called an exec function
 *       VIOLATION PID NAME            that child called NAME before its exec
 *   MCPKEEPER_FORKCHECK_PROGRAM=NAME  only a process of that name checks
 *                                     (program_invocation_short_name); the
 *                                     programs the keeper starts with its
 *                                     environment (login.browser) do not
 *
 * A forked child is marked by the fork wrapper; the mark ends with the
 * process image at exec. While it is set, every call of the allocator, of
 * stdio and formatting, and of the libc functions that allocate, lock or
 * run handlers (NSS lookups, environment changes, strerror, localtime,
 * exit) is recorded, then carried out as it would have been: the test
 * fails on the record, not on a hang. Calls inside libc (strdup's malloc,
 * snprintf's) reach the wrappers too, as glibc routes them through the
 * interposable symbols. fork, vfork and _Fork are wrapped (vfork as fork);
 * the test checks that the keeper imports no other way to make a process.
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <malloc.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

/* glibc's allocator under the names it exports for interposers. */
extern void *__libc_malloc(size_t size);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_realloc(void *p, size_t size);
extern void __libc_free(void *p);
extern void *__libc_memalign(size_t align, size_t size);
extern void *__libc_valloc(size_t size);
extern void *__libc_pvalloc(size_t size);
extern pid_t _Fork(void);

#define MAX_RECORDS 32

static char log_path[4096];
static bool active;
static volatile int in_child;	/* set in a forked child until its exec */
static int records;

/* --- recording, with raw system calls only --- */

static size_t put_str(char *buf, size_t n, size_t cap, const char *s)
{
	while (*s && n + 1 < cap)
		buf[n++] = *s++;
	return n;
}

static size_t put_uint(char *buf, size_t n, size_t cap, unsigned long v)
{
	char digits[24];
	size_t d = 0;

	do
		digits[d++] = (char)('0' + v % 10);
	while ((v /= 10) && d < sizeof(digits));
	while (d && n + 1 < cap)
		buf[n++] = digits[--d];
	return n;
}

static void record(const char *what, const char *name)
{
	char line[160];
	size_t n = 0;
	int saved = errno, fd;

	if (!active)
		return;
	n = put_str(line, n, sizeof(line), what);
	n = put_str(line, n, sizeof(line), " ");
	n = put_uint(line, n, sizeof(line), (unsigned long)getpid());
	if (name) {
		n = put_str(line, n, sizeof(line), " ");
		n = put_str(line, n, sizeof(line), name);
	}
	line[n++] = '\n';
	fd = open(log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
	if (fd >= 0) {
		(void)!write(fd, line, n);
		close(fd);
	}
	errno = saved;
}

static void check(const char *name)
{
	if (in_child && records < MAX_RECORDS) {
		records++;
		record("VIOLATION", name);
	}
}

/* --- the real functions, found once at load (dlsym may allocate) --- */

#define REAL(name) static __typeof__(name) *real_##name
REAL(fork);
REAL(_Fork);
REAL(execve);
REAL(execveat);
REAL(execv);
REAL(execvp);
REAL(execvpe);
REAL(fexecve);
REAL(vfprintf);
REAL(vdprintf);
REAL(vsnprintf);
REAL(vsprintf);
REAL(vasprintf);
REAL(fputs);
REAL(puts);
REAL(fputc);
REAL(putc);
REAL(putchar);
REAL(fwrite);
REAL(fflush);
REAL(perror);
REAL(vsyslog);
REAL(strerror);
REAL(strdup);
REAL(strndup);
REAL(getenv);
REAL(secure_getenv);
REAL(setenv);
REAL(unsetenv);
REAL(putenv);
REAL(getpwnam);
REAL(getpwuid);
REAL(getgrnam);
REAL(getgrgid);
REAL(getpwnam_r);
REAL(getgrouplist);
REAL(initgroups);
REAL(localtime);
REAL(localtime_r);
REAL(exit);

#define FIND(name) real_##name = (__typeof__(name) *)dlsym(RTLD_NEXT, #name)
/* Another library's constructor may call a wrapper before ours ran. */
#define REAL_CALL(name) (*({ if (!real_##name) FIND(name); real_##name; }))

__attribute__((constructor)) static void forkcheck_init(void)
{
	const char *path = getenv("MCPKEEPER_FORKCHECK_LOG");
	const char *only = getenv("MCPKEEPER_FORKCHECK_PROGRAM");

	FIND(fork);
	FIND(_Fork);
	FIND(execve);
	FIND(execveat);
	FIND(execv);
	FIND(execvp);
	FIND(execvpe);
	FIND(fexecve);
	FIND(vfprintf);
	FIND(vdprintf);
	FIND(vsnprintf);
	FIND(vsprintf);
	FIND(vasprintf);
	FIND(fputs);
	FIND(puts);
	FIND(fputc);
	FIND(putc);
	FIND(putchar);
	FIND(fwrite);
	FIND(fflush);
	FIND(perror);
	FIND(vsyslog);
	FIND(strerror);
	FIND(strdup);
	FIND(strndup);
	FIND(getenv);
	FIND(secure_getenv);
	FIND(setenv);
	FIND(unsetenv);
	FIND(putenv);
	FIND(getpwnam);
	FIND(getpwuid);
	FIND(getgrnam);
	FIND(getgrgid);
	FIND(getpwnam_r);
	FIND(getgrouplist);
	FIND(initgroups);
	FIND(localtime);
	FIND(localtime_r);
	FIND(exit);
	if (!path || !*path || strlen(path) >= sizeof(log_path))
		return;
	if (only && *only && strcmp(only, program_invocation_short_name) != 0)
		return;
	memcpy(log_path, path, strlen(path) + 1);
	active = true;
}

/* --- making processes --- */

pid_t fork(void)
{
	pid_t pid = REAL_CALL(fork)();

	if (pid == 0) {
		in_child = 1;
		records = 0;
		record("fork", NULL);
	}
	return pid;
}

/* A vfork child would return through this frame into its parent's stack:
 * fork instead, which a caller that keeps vfork's rules cannot tell apart. */
pid_t vfork(void)
{
	return fork();
}

pid_t _Fork(void)
{
	pid_t pid = REAL_CALL(_Fork)();

	if (pid == 0) {
		in_child = 1;
		records = 0;
		record("fork", NULL);
	}
	return pid;
}

static void exec_called(void)
{
	if (in_child)
		record("exec", NULL);
}

int execve(const char *path, char *const argv[], char *const envp[])
{
	exec_called();
	return REAL_CALL(execve)(path, argv, envp);
}

int execveat(int dirfd, const char *path, char *const argv[], char *const envp[], int flags)
{
	exec_called();
	return REAL_CALL(execveat)(dirfd, path, argv, envp, flags);
}

int execv(const char *path, char *const argv[])
{
	exec_called();
	return REAL_CALL(execv)(path, argv);
}

/* Not async-signal-safe (POSIX): it may search PATH with what getenv says. */
int execvp(const char *file, char *const argv[])
{
	check("execvp");
	exec_called();
	return REAL_CALL(execvp)(file, argv);
}

int execvpe(const char *file, char *const argv[], char *const envp[])
{
	check("execvpe");
	exec_called();
	return REAL_CALL(execvpe)(file, argv, envp);
}

int fexecve(int fd, char *const argv[], char *const envp[])
{
	exec_called();
	return REAL_CALL(fexecve)(fd, argv, envp);
}

/* --- the allocator --- */

void *malloc(size_t size)
{
	check("malloc");
	return __libc_malloc(size);
}

void *calloc(size_t n, size_t size)
{
	check("calloc");
	return __libc_calloc(n, size);
}

void *realloc(void *p, size_t size)
{
	check("realloc");
	return __libc_realloc(p, size);
}

void *reallocarray(void *p, size_t n, size_t size)
{
	check("reallocarray");
	if (size && n > (size_t)-1 / size) {
		errno = ENOMEM;
		return NULL;
	}
	return __libc_realloc(p, n * size);
}

void free(void *p)
{
	check("free");
	__libc_free(p);
}

int posix_memalign(void **out, size_t align, size_t size)
{
	void *p;

	check("posix_memalign");
	if (align < sizeof(void *) || (align & (align - 1)))
		return EINVAL;
	p = __libc_memalign(align, size);
	if (!p)
		return ENOMEM;
	*out = p;
	return 0;
}

void *aligned_alloc(size_t align, size_t size)
{
	check("aligned_alloc");
	return __libc_memalign(align, size);
}

void *memalign(size_t align, size_t size)
{
	check("memalign");
	return __libc_memalign(align, size);
}

void *valloc(size_t size)
{
	check("valloc");
	return __libc_valloc(size);
}

void *pvalloc(size_t size)
{
	check("pvalloc");
	return __libc_pvalloc(size);
}

/* --- stdio and formatting --- */

/* The body of a variadic wrapper: checked, then the va_list version. */
#define FORWARD_VA(name, real, ...) \
	{ \
		va_list ap; \
		int r; \
		check(#name); \
		va_start(ap, fmt); \
		r = REAL_CALL(real)(__VA_ARGS__, ap); \
		va_end(ap); \
		return r; \
	}
#define FORWARD_VA_VOID(name, real, ...) \
	{ \
		va_list ap; \
		check(#name); \
		va_start(ap, fmt); \
		REAL_CALL(real)(__VA_ARGS__, ap); \
		va_end(ap); \
	}

int vfprintf(FILE *f, const char *fmt, va_list ap)
{
	check("vfprintf");
	return REAL_CALL(vfprintf)(f, fmt, ap);
}

int fprintf(FILE *f, const char *fmt, ...)
FORWARD_VA(fprintf, vfprintf, f, fmt)

int vprintf(const char *fmt, va_list ap)
{
	check("vprintf");
	return REAL_CALL(vfprintf)(stdout, fmt, ap);
}

int printf(const char *fmt, ...)
FORWARD_VA(printf, vfprintf, stdout, fmt)

int vdprintf(int fd, const char *fmt, va_list ap)
{
	check("vdprintf");
	return REAL_CALL(vdprintf)(fd, fmt, ap);
}

int dprintf(int fd, const char *fmt, ...)
FORWARD_VA(dprintf, vdprintf, fd, fmt)

int vsnprintf(char *buf, size_t len, const char *fmt, va_list ap)
{
	check("vsnprintf");
	return REAL_CALL(vsnprintf)(buf, len, fmt, ap);
}

int snprintf(char *buf, size_t len, const char *fmt, ...)
FORWARD_VA(snprintf, vsnprintf, buf, len, fmt)

int vsprintf(char *buf, const char *fmt, va_list ap)
{
	check("vsprintf");
	return REAL_CALL(vsprintf)(buf, fmt, ap);
}

int sprintf(char *buf, const char *fmt, ...)
FORWARD_VA(sprintf, vsprintf, buf, fmt)

int vasprintf(char **out, const char *fmt, va_list ap)
{
	check("vasprintf");
	return REAL_CALL(vasprintf)(out, fmt, ap);
}

int asprintf(char **out, const char *fmt, ...)
FORWARD_VA(asprintf, vasprintf, out, fmt)

int fputs(const char *s, FILE *f)
{
	check("fputs");
	return REAL_CALL(fputs)(s, f);
}

int puts(const char *s)
{
	check("puts");
	return REAL_CALL(puts)(s);
}

int fputc(int ch, FILE *f)
{
	check("fputc");
	return REAL_CALL(fputc)(ch, f);
}

int putc(int ch, FILE *f)
{
	check("putc");
	return REAL_CALL(putc)(ch, f);
}

int putchar(int ch)
{
	check("putchar");
	return REAL_CALL(putchar)(ch);
}

size_t fwrite(const void *p, size_t size, size_t n, FILE *f)
{
	check("fwrite");
	return REAL_CALL(fwrite)(p, size, n, f);
}

int fflush(FILE *f)
{
	check("fflush");
	return REAL_CALL(fflush)(f);
}

void perror(const char *s)
{
	check("perror");
	REAL_CALL(perror)(s);
}

void vsyslog(int prio, const char *fmt, va_list ap)
{
	check("vsyslog");
	REAL_CALL(vsyslog)(prio, fmt, ap);
}

void syslog(int prio, const char *fmt, ...)
FORWARD_VA_VOID(syslog, vsyslog, prio, fmt)

/* --- libc that allocates, locks or runs handlers --- */

char *strerror(int e)
{
	check("strerror");
	return REAL_CALL(strerror)(e);
}

char *strdup(const char *s)
{
	check("strdup");
	return REAL_CALL(strdup)(s);
}

char *strndup(const char *s, size_t n)
{
	check("strndup");
	return REAL_CALL(strndup)(s, n);
}

char *getenv(const char *name)
{
	check("getenv");
	return REAL_CALL(getenv)(name);
}

char *secure_getenv(const char *name)
{
	check("secure_getenv");
	return REAL_CALL(secure_getenv)(name);
}

int setenv(const char *name, const char *value, int overwrite)
{
	check("setenv");
	return REAL_CALL(setenv)(name, value, overwrite);
}

int unsetenv(const char *name)
{
	check("unsetenv");
	return REAL_CALL(unsetenv)(name);
}

int putenv(char *s)
{
	check("putenv");
	return REAL_CALL(putenv)(s);
}

struct passwd *getpwnam(const char *name)
{
	check("getpwnam");
	return REAL_CALL(getpwnam)(name);
}

struct passwd *getpwuid(uid_t uid)
{
	check("getpwuid");
	return REAL_CALL(getpwuid)(uid);
}

struct group *getgrnam(const char *name)
{
	check("getgrnam");
	return REAL_CALL(getgrnam)(name);
}

struct group *getgrgid(gid_t gid)
{
	check("getgrgid");
	return REAL_CALL(getgrgid)(gid);
}

int getpwnam_r(const char *name, struct passwd *pw, char *buf, size_t len, struct passwd **out)
{
	check("getpwnam_r");
	return REAL_CALL(getpwnam_r)(name, pw, buf, len, out);
}

int getgrouplist(const char *user, gid_t group, gid_t *groups, int *n)
{
	check("getgrouplist");
	return REAL_CALL(getgrouplist)(user, group, groups, n);
}

int initgroups(const char *user, gid_t group)
{
	check("initgroups");
	return REAL_CALL(initgroups)(user, group);
}

struct tm *localtime(const time_t *t)
{
	check("localtime");
	return REAL_CALL(localtime)(t);
}

struct tm *localtime_r(const time_t *t, struct tm *out)
{
	check("localtime_r");
	return REAL_CALL(localtime_r)(t, out);
}

/* atexit handlers and stdio flushing: a forked child leaves with _exit. */
void exit(int status)
{
	check("exit");
	REAL_CALL(exit)(status);
	__builtin_unreachable();
}
