/*
 * What store.c shares with backup.c and nothing else: the environment
 * handle of an open store. Not for the store's users (they include store.h).
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include <db.h>

#include "util.h"

struct store;

DB_ENV *store_db_env(struct store *s);

/* Formats a message into err (len bytes; nothing when err is NULL). */
void store_errf(char *err, size_t len, const char *fmt, ...) _printf_(3, 4);

/* Creates dir (0700) when missing and checks it is private (masterkey.c,
 * store.c). 0 or a negative errno, with err set. */
int store_ensure_dir(const char *dir, char *err, size_t errlen);

/* Whether name is one of the store's database files (store.c). */
bool store_file_is_db(const char *name);
