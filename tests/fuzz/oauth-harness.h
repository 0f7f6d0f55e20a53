/*
 * What the fuzz targets of the oauth child share (fuzz-tokenanswer.c,
 * fuzz-metadata.c, fuzz-redirect.c): the child's one context as main()
 * builds it (an event base, libcurl on it, the channel to the keeper on one
 * end of a socketpair), never run: a request the code under test starts
 * stays queued and is freed with its step or login. Each target includes
 * the file it fuzzes, so that it can call that file's static functions,
 * and links the child's other files (oauth.c with its main() renamed).
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>

struct oauth;
struct rpc_msg;

/* The process's one struct oauth, set up on first use. */
struct oauth *fuzz_oauth(void);

/* Reads what the child queued for the keeper since the last call: every
 * message must be a line the keeper's frame reader accepts (abort()s
 * otherwise). check, when not NULL, sees each. The number of messages. */
size_t fuzz_oauth_drain(void (*check)(struct rpc_msg *m, void *arg), void *arg);

/* abort()s with "NAME: what". */
_Noreturn void fuzz_fail(const char *name, const char *what);
