/*
 * The driver for a fuzz target built without libFuzzer. It runs
 * LLVMFuzzerTestOneInput over every seed named on the command line (files,
 * or directories whose regular files are the seeds), then over
 * FUZZ_ITERATIONS (default 2000) mutations of each seed.
 *
 * The mutations come from a xorshift generator with a fixed seed, so a
 * failure under `meson test` is the same failure on every run and on every
 * machine. This is no replacement for libFuzzer's coverage-guided search; it
 * keeps the corpus and its near neighbours passing under every build, and
 * under -Db_sanitize it is a sanitizer check of the real parsers.
 *
 * Each input is handed over in a buffer of exactly its size, as libFuzzer
 * does, so that a read past the end is caught by AddressSanitizer. With
 * FUZZ_LAST_INPUT=FILE each input is written to FILE before it runs, so that
 * after a crash FILE holds the input that caused it.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz.h"

#define DEFAULT_ITERATIONS 2000
#define MAX_SEED_SIZE (1024 * 1024)
#define MAX_MUTANT_SIZE (64 * 1024)

struct seed {
	uint8_t *data;
	size_t size;
};

struct driver {
	const char *name;	/* the target's name, for messages */
	struct seed *seeds;
	size_t n_seeds;
	uint64_t rng;
	unsigned long long runs;
	const char *last_input;	/* FUZZ_LAST_INPUT, or NULL */
};

static _Noreturn void die(const struct driver *d, const char *fmt, const char *arg)
{
	fprintf(stderr, "%s: ", d->name);
	fprintf(stderr, fmt, arg);
	fputc('\n', stderr);
	exit(1);
}

static uint64_t rng_next(struct driver *d)
{
	uint64_t x = d->rng;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return d->rng = x;
}

/* A number in [0, n), n > 0. */
static size_t rng_below(struct driver *d, size_t n)
{
	return (size_t)(rng_next(d) % n);
}

static void save_input(const struct driver *d, const uint8_t *data, size_t size)
{
	FILE *f = fopen(d->last_input, "we");

	if (!f || fwrite(data, 1, size, f) != size || fclose(f) != 0)
		die(d, "%s: cannot write", d->last_input);
}

static void run_one(struct driver *d, const uint8_t *data, size_t size)
{
	uint8_t *copy = malloc(size ? size : 1);

	if (!copy)
		die(d, "%s", "out of memory");
	if (d->last_input)
		save_input(d, data, size);
	if (size)
		memcpy(copy, data, size);
	LLVMFuzzerTestOneInput(copy, size);
	free(copy);
	d->runs++;
}

static void seed_add(struct driver *d, const char *path)
{
	struct seed *seeds, *s;
	struct stat st;
	ssize_t n;
	size_t off = 0;
	int fd;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &st) < 0)
		die(d, "%s: cannot open", path);
	if (st.st_size > MAX_SEED_SIZE)
		die(d, "%s: seed larger than 1 MiB", path);
	seeds = realloc(d->seeds, (d->n_seeds + 1) * sizeof(*seeds));
	if (!seeds)
		die(d, "%s", "out of memory");
	d->seeds = seeds;
	s = &seeds[d->n_seeds++];
	s->size = (size_t)st.st_size;
	s->data = malloc(s->size ? s->size : 1);
	if (!s->data)
		die(d, "%s", "out of memory");
	while (off < s->size) {
		n = read(fd, s->data + off, s->size - off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			die(d, "%s: cannot read", path);
		off += (size_t)n;
	}
	close(fd);
}

static void seeds_add_path(struct driver *d, const char *path)
{
	struct dirent **list;
	struct stat st;
	int n;

	if (stat(path, &st) < 0)
		die(d, "%s: no such file or directory", path);
	if (!S_ISDIR(st.st_mode)) {
		seed_add(d, path);
		return;
	}
	/* Sorted, so that the order of runs does not depend on the file system. */
	n = scandir(path, &list, NULL, alphasort);
	if (n < 0)
		die(d, "%s: cannot read directory", path);
	for (int i = 0; i < n; i++) {
		char *file;

		if (list[i]->d_name[0] != '.') {
			if (asprintf(&file, "%s/%s", path, list[i]->d_name) < 0)
				die(d, "%s", "out of memory");
			if (stat(file, &st) == 0 && S_ISREG(st.st_mode))
				seed_add(d, file);
			free(file);
		}
		free(list[i]);
	}
	free(list);
}

/* Bytes and strings that parsers tend to treat specially. */
static const uint8_t interesting_bytes[] = {
	0x00, 0x01, 0x08, 0x0a, 0x0d, 0x20, '"', '\'', ',', '-', '.', '/', '0', '1', '9', ':',
	'[', '\\', ']', 'e', '{', '}', 0x7f, 0x80, 0xbf, 0xc0, 0xc2, 0xe0, 0xed, 0xef, 0xf4,
	0xf5, 0xff,
};

static const char *const interesting_strings[] = {
	"null", "true", "false", "0", "-0", "1e999", "-1e-999", "9223372036854775807",
	"9223372036854775808", "-9223372036854775809", "18446744073709551616", "NaN",
	"Infinity", "\"\"", "\"\\u0000\"", "\"\\ud800\"", "\"\\udc00\\ud800\"", "\\u", "{}", "[]",
	"{\"\":", "\"jsonrpc\":\"2.0\"", "\"id\":", "\"method\":", "\"result\":", "\"error\":",
	"\"params\":", "\"mcpServers\":", "\"url\":\"http://a\"", "\"command\":\"x\"",
	"\"oauth\":", "\xef\xbb\xbf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xc0\xaf", "\r\n",
};

static const uint32_t interesting_u32[] = {
	0, 1, 2, 7, 8, 9, 0x7f, 0x80, 0xff, 0x100, 0xffff, 0x7fffffff, 0x80000000, 0xfffffff7,
	0xfffffffb, 0xfffffffe, 0xffffffff,
};

/* Inserts len bytes at pos, as far as the buffer allows. */
static void insert(uint8_t *buf, size_t *size, size_t pos, const uint8_t *bytes, size_t len)
{
	if (len > MAX_MUTANT_SIZE - *size)
		len = MAX_MUTANT_SIZE - *size;
	memmove(buf + pos + len, buf + pos, *size - pos);
	memmove(buf + pos, bytes, len);
	*size += len;
}

static void mutate_once(struct driver *d, uint8_t *buf, size_t *size)
{
	size_t pos = rng_below(d, *size + 1);
	size_t len;

	switch (rng_below(d, 11)) {
	case 0: /* flip a bit */
		if (pos < *size)
			buf[pos] ^= (uint8_t)(1u << rng_below(d, 8));
		break;
	case 1: /* set a byte */
		if (pos < *size)
			buf[pos] = (uint8_t)rng_next(d);
		break;
	case 2: /* set an interesting byte */
		if (pos < *size)
			buf[pos] = interesting_bytes[rng_below(d, sizeof(interesting_bytes))];
		break;
	case 3: { /* insert an interesting byte */
		uint8_t b = interesting_bytes[rng_below(d, sizeof(interesting_bytes))];

		insert(buf, size, pos, &b, 1);
		break;
	}
	case 4: { /* insert an interesting string */
		const char *s = interesting_strings[rng_below(
			d, sizeof(interesting_strings) / sizeof(interesting_strings[0]))];

		insert(buf, size, pos, (const uint8_t *)s, strlen(s));
		break;
	}
	case 5: /* delete a range */
		len = rng_below(d, *size - pos + 1);
		if (rng_below(d, 4))
			len = len % 8;
		memmove(buf + pos, buf + pos + len, *size - pos - len);
		*size -= len;
		break;
	case 6: { /* copy a range of this input elsewhere into it */
		size_t from = rng_below(d, *size + 1);
		uint8_t tmp[256];

		len = rng_below(d, sizeof(tmp));
		if (len > *size - from)
			len = *size - from;
		memcpy(tmp, buf + from, len);
		insert(buf, size, pos, tmp, len);
		break;
	}
	case 7: { /* splice in a range of another seed */
		const struct seed *s = &d->seeds[rng_below(d, d->n_seeds)];
		size_t from = rng_below(d, s->size + 1);

		len = rng_below(d, s->size - from + 1);
		insert(buf, size, pos, s->data + from, len);
		break;
	}
	case 8: /* truncate */
		*size = pos;
		break;
	case 9: { /* a little-endian length field, as in the token records */
		uint32_t v = interesting_u32[rng_below(
			d, sizeof(interesting_u32) / sizeof(interesting_u32[0]))];

		if (rng_below(d, 2) && pos < *size)
			v = (uint32_t)(*size - pos);
		for (size_t i = 0; i < 4 && pos + i < *size; i++)
			buf[pos + i] = (uint8_t)(v >> (8 * i));
		break;
	}
	case 10: /* repeat a byte: deep nesting, long runs */
		if (pos < *size) {
			uint8_t run[512];

			len = 1 + rng_below(d, sizeof(run));
			memset(run, buf[pos], len);
			insert(buf, size, pos, run, len);
		}
		break;
	}
}

static void run_mutations(struct driver *d, unsigned long iterations)
{
	uint8_t *buf = malloc(MAX_MUTANT_SIZE);

	if (!buf)
		die(d, "%s", "out of memory");
	for (size_t i = 0; i < d->n_seeds; i++) {
		const struct seed *s = &d->seeds[i];

		for (unsigned long k = 0; k < iterations; k++) {
			size_t size = s->size < MAX_MUTANT_SIZE ? s->size : MAX_MUTANT_SIZE;
			size_t n = 1 + rng_below(d, 4);

			memcpy(buf, s->data, size);
			while (n--)
				mutate_once(d, buf, &size);
			run_one(d, buf, size);
		}
	}
	free(buf);
}

static unsigned long iterations_from_env(const struct driver *d)
{
	const char *v = getenv("FUZZ_ITERATIONS");
	unsigned long n;
	char *end;

	if (!v || !*v)
		return DEFAULT_ITERATIONS;
	errno = 0;
	n = strtoul(v, &end, 10);
	if (errno || *end || v[0] == '-')
		die(d, "FUZZ_ITERATIONS=%s: not a number", v);
	return n;
}

int main(int argc, char **argv)
{
	const char *slash = strrchr(argv[0], '/');
	struct driver d = {
		.name = slash ? slash + 1 : argv[0],
		.rng = 0x2545f4914f6cdd1dull,
		.last_input = getenv("FUZZ_LAST_INPUT"),
	};
	unsigned long iterations = iterations_from_env(&d);

	if (argc < 2) {
		fprintf(stderr, "usage: %s SEED-DIR-OR-FILE...\n", d.name);
		return 2;
	}
	for (int i = 1; i < argc; i++)
		seeds_add_path(&d, argv[i]);
	if (d.n_seeds == 0)
		die(&d, "%s", "no seed files found");

	run_one(&d, (const uint8_t *)"", 0);
	for (size_t i = 0; i < d.n_seeds; i++)
		run_one(&d, d.seeds[i].data, d.seeds[i].size);
	run_mutations(&d, iterations);

	printf("%s: %llu inputs, no crash\n", d.name, d.runs);
	for (size_t i = 0; i < d.n_seeds; i++)
		free(d.seeds[i].data);
	free(d.seeds);
	return 0;
}
