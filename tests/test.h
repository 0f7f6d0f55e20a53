/*
 * The smallest test harness: CHECK() prints where and what failed and exits
 * 1; TEST() names each case on stdout so a failing log shows how far it got.
 *
 * It also counts: when the program exits, its first process prints one
 * machine-readable line that scripts/test collects from meson's testlog.json
 * (HACKING.md, "No silent skips"):
 *
 *     CASES test-store passed=13 failed=0 skipped=1
 *
 * and every skipped case one line of its own:
 *
 *     SKIPPED test-store: root opening another user's state directory ...: not root
 *
 * A case is counted passed when the next one starts or the program exits 0,
 * failed when the program exits non-zero while it runs. Include this header
 * in the test's main file only.
 */
#pragma once

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CHECK(expr)                                                                          \
	do {                                                                                 \
		if (!(expr)) {                                                               \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #expr); \
			exit(1);                                                             \
		}                                                                            \
	} while (0)

#define CHECK_EQ(a, b)                                                                            \
	do {                                                                                      \
		long long _a = (long long)(a), _b = (long long)(b);                               \
		if (_a != _b) {                                                                   \
			fprintf(stderr, "%s:%d: check failed: %s == %s (%lld != %lld)\n", __FILE__, \
				__LINE__, #a, #b, _a, _b);                                        \
			exit(1);                                                          \
		}                                                                                 \
	} while (0)

static struct {
	pid_t pid;		/* the process that prints the counts; 0 before the first case */
	const char *open;	/* the case running now, if any */
	unsigned passed, skipped;
} test_counts;

/* The program's name for the counts: its main file without folder and ".c". */
static inline const char *test_program(void)
{
	static char name[64];
	const char *base = strrchr(__BASE_FILE__, '/') ? strrchr(__BASE_FILE__, '/') + 1 : __BASE_FILE__;
	size_t len = strcspn(base, ".");

	if (!name[0])
		snprintf(name, sizeof(name), "%.*s", (int)(len < sizeof(name) ? len : sizeof(name) - 1), base);
	return name;
}

static inline void test_counts_print(int status, void *arg)
{
	unsigned failed = status != 0;

	(void)arg;
	if (getpid() != test_counts.pid)
		return; /* a forked child of the test */
	if (test_counts.open && status == 0)
		test_counts.passed++;
	printf("CASES %s passed=%u failed=%u skipped=%u\n", test_program(), test_counts.passed, failed,
	       test_counts.skipped);
	fflush(stdout);
}

static inline void test_counts_start(void)
{
	if (test_counts.pid == 0) {
		test_counts.pid = getpid();
		on_exit(test_counts_print, NULL);
	}
}

/* Starts a case; the one before it passed. */
static inline void test_case(const char *name)
{
	test_counts_start();
	if (test_counts.open)
		test_counts.passed++;
	test_counts.open = name;
	printf("# %s\n", name);
	fflush(stdout);
}

#define TEST(name) test_case(name)

/* A case that ran to its end (for tests that name a case when it is done). */
static inline void test_ok(const char *name)
{
	test_counts_start();
	if (test_counts.open)
		test_counts.passed++;
	test_counts.open = NULL;
	test_counts.passed++;
	printf("ok - %s\n", name);
	fflush(stdout);
}

/* The running case (or name, when none runs) did not run: reason says why.
 * Only for what tests/allowed-skips allows; CI fails on any other skip. */
static inline void test_skip(const char *name, const char *reason)
{
	test_counts_start();
	if (test_counts.open && name)
		test_counts.passed++;
	if (!name)
		name = test_counts.open ? test_counts.open : "?";
	test_counts.open = NULL;
	test_counts.skipped++;
	printf("SKIPPED %s: %s: %s\n", test_program(), name, reason);
	fflush(stdout);
}

/*
 * For cases that need root: true when not root, and then the case is
 * skipped, or, with $CI set, the program fails: CI runs as root, so there a
 * root-only case must run.
 */
static inline int test_needs_root(const char *name)
{
	if (geteuid() == 0)
		return 0;
	if (getenv("CI") && *getenv("CI")) {
		fprintf(stderr, "%s: needs root, and CI is set: run the suite as root\n",
			name ? name : test_counts.open ? test_counts.open : test_program());
		exit(1);
	}
	test_skip(name, "needs root");
	return 1;
}

/*
 * A sanitizer report in the log of a child the test started (its stderr)
 * fails the test: the report goes to stderr, since the children's Landlock
 * rules leave them no file to write it to. Call it before the test ends.
 */
static inline void test_sanitizer_check(const char *path)
{
	static const char *const markers[] = { "ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
					       "WARNING: ThreadSanitizer", "ERROR: MemorySanitizer" };
	char line[4096];
	int lines = 0;
	FILE *f = fopen(path, "r");

	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		for (size_t i = 0; !lines && i < sizeof(markers) / sizeof(markers[0]); i++)
			if (strstr(line, markers[i])) {
				fprintf(stderr, "sanitizer report in %s:\n", path);
				lines = 1;
			}
		if (lines && lines++ <= 40)
			fputs(line, stderr);
	}
	fclose(f);
	if (lines)
		exit(1);
}
