/*
 * Logging: one line per call with the process name, journald priority
 * prefixes only when stderr really is the journal stream, levels filter.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "test.h"

static char path[] = "/tmp/test-log-XXXXXX";

/* Runs fn with stderr on a fresh file and returns what it wrote. */
static char *capture(void (*fn)(void))
{
	static char buf[8192];
	int fd = mkstemp(path), saved = dup(STDERR_FILENO);
	ssize_t n;

	CHECK(fd >= 0 && saved >= 0);
	CHECK(dup2(fd, STDERR_FILENO) == STDERR_FILENO);
	fn();
	CHECK(dup2(saved, STDERR_FILENO) == STDERR_FILENO);
	close(saved);
	n = pread(fd, buf, sizeof(buf) - 1, 0);
	CHECK(n >= 0);
	buf[n] = '\0';
	close(fd);
	unlink(path);
	memcpy(path + strlen(path) - 6, "XXXXXX", 6);
	return buf;
}

static void plain_lines(void)
{
	unsetenv("JOURNAL_STREAM");
	log_init("tester");
	log_set_level(LOG_LEVEL_INFO);
	log_error("first %d", 1);
	log_debug("hidden");
	log_info("two\nlines");
}

static void journal_lines(void)
{
	struct stat st;
	char js[64];

	CHECK(fstat(STDERR_FILENO, &st) == 0);
	snprintf(js, sizeof(js), "%llu:%llu", (unsigned long long)st.st_dev, (unsigned long long)st.st_ino);
	setenv("JOURNAL_STREAM", js, 1);
	log_init("tester");
	log_warn("careful");
	log_error("broken");
	setenv("JOURNAL_STREAM", "1:2", 1); /* someone else's stream */
	log_init("tester");
	log_warn("not journal");
	unsetenv("JOURNAL_STREAM");
}

int main(void)
{
	enum log_level l;
	char *out;

	TEST("plain lines: name, level, one line per call, debug filtered");
	out = capture(plain_lines);
	CHECK(strstr(out, "tester[") != NULL);
	CHECK(strstr(out, "error: first 1\n") != NULL);
	CHECK(strstr(out, "hidden") == NULL);
	CHECK(strstr(out, "info: two lines\n") != NULL);
	CHECK(strchr(out, '<') == NULL);

	TEST("journal stream: <N> priority prefixes, only for the real stream");
	out = capture(journal_lines);
	CHECK(strstr(out, "<4>tester: careful\n") != NULL);
	CHECK(strstr(out, "<3>tester: broken\n") != NULL);
	CHECK(strstr(out, "<4>tester: not journal") == NULL);
	CHECK(strstr(out, "warning: not journal\n") != NULL);

	TEST("level names parse");
	CHECK(log_level_parse("debug", &l) == 0 && l == LOG_LEVEL_DEBUG);
	CHECK(log_level_parse("loud", &l) < 0);
	printf("all log tests passed\n");
	return 0;
}
