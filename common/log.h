/*
 * Logging for every mcpkeeper process: one line per event on stderr, prefixed
 * with the process name set once at start. When stderr is connected to the
 * journal (JOURNAL_STREAM names it) each line carries a syslog priority
 * prefix ("<3>") that journald understands, and no timestamp of our own.
 *
 * Never pass token bytes, response bodies or anything a token endpoint sent
 * to these functions: logs leave the trust boundary.
 *
 * Format strings are printf's, with glibc's %m for strerror(errno).
 */
#pragma once

#include <stdarg.h>

#include "util.h"

enum log_level {
	LOG_LEVEL_ERROR = 3,
	LOG_LEVEL_WARN = 4,
	LOG_LEVEL_INFO = 6,
	LOG_LEVEL_DEBUG = 7,
};

void log_init(const char *procname);
void log_set_level(enum log_level level);
enum log_level log_get_level(void);
/* Parses "error", "warn", "info", "debug"; returns -EINVAL otherwise. */
int log_level_parse(const char *s, enum log_level *out);
const char *log_procname(void);

void log_msg(enum log_level level, const char *fmt, ...) _printf_(2, 3);
void log_vmsg(enum log_level level, const char *fmt, va_list ap);

#define log_error(...) log_msg(LOG_LEVEL_ERROR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_LEVEL_WARN, __VA_ARGS__)
#define log_info(...) log_msg(LOG_LEVEL_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_LEVEL_DEBUG, __VA_ARGS__)

/* Start-up failures and broken invariants only: log at error level, exit 1. */
_noreturn_ void fatal(const char *fmt, ...) _printf_(1, 2);
