/*
 * The smallest test harness: CHECK() prints where and what failed and exits
 * 1; TEST() names each case on stdout so a failing log shows how far it got.
 */
#pragma once

#include <stdio.h>
#include <stdlib.h>

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

#define TEST(name) printf("# %s\n", name), fflush(stdout)
