/*
 * What mcpctl prints: fields read from the keeper's replies (a field of the
 * wrong type counts as absent), durations, tables and --json. Strings from
 * the keeper pass text_clean() before they reach the terminal. Writes to
 * stdout only.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "ctl.h"
#include "proto.h"

/* Control characters in a string from the keeper would reach the terminal:
 * print '?' instead of C0, DEL and (UTF-8 encoded) C1 codes. */
char *text_clean(const char *s)
{
	char *out = malloc(strlen(s) + 1), *o = out;

	if (!out)
		ctl_out_of_memory();
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (*p < 0x20 || *p == 0x7f) {
			*o++ = '?';
		} else if (p[0] == 0xc2 && p[1] >= 0x80 && p[1] <= 0x9f) {
			*o++ = '?';
			p++;
		} else {
			*o++ = (char)*p;
		}
	}
	*o = '\0';
	return out;
}


void output_json(struct json_object *o)
{
	puts(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY |
						       JSON_C_TO_STRING_NOSLASHESCAPE));
}

const char *field_str(struct json_object *o, const char *key)
{
	struct json_object *v;

	if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string))
		return NULL;
	return json_object_get_string(v);
}

/* Absent, null or not a number: false. */
bool field_int(struct json_object *o, const char *key, int64_t *out)
{
	struct json_object *v;

	if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_int))
		return false;
	*out = json_object_get_int64(v);
	return true;
}

bool field_bool(struct json_object *o, const char *key, bool *out)
{
	struct json_object *v;

	if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_boolean))
		return false;
	*out = json_object_get_boolean(v);
	return true;
}

struct json_object *field_child(struct json_object *o, const char *key, enum json_type type)
{
	struct json_object *v;

	if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, type))
		return NULL;
	return v;
}

/* "41s", "4m 10s", "5h 12m", "3d 4h": two units at most, read at a glance. */
void duration_format(int64_t s, char *buf, size_t len)
{
	long long v = s < 0 ? 0 : (long long)s;

	if (v < 60)
		snprintf(buf, len, "%llds", v);
	else if (v < 3600 && v % 60)
		snprintf(buf, len, "%lldm %llds", v / 60, v % 60);
	else if (v < 3600)
		snprintf(buf, len, "%lldm", v / 60);
	else if (v < 86400 && (v % 3600) / 60)
		snprintf(buf, len, "%lldh %lldm", v / 3600, (v % 3600) / 60);
	else if (v < 86400)
		snprintf(buf, len, "%lldh", v / 3600);
	else if ((v % 86400) / 3600)
		snprintf(buf, len, "%lldd %lldh", v / 86400, (v % 86400) / 3600);
	else
		snprintf(buf, len, "%lldd", v / 86400);
}

struct table_row *table_add_row(struct table *t)
{
	struct table_row *rows = reallocarray(t->rows, t->n_rows + 1, sizeof(*rows));

	if (!rows)
		ctl_out_of_memory();
	t->rows = rows;
	memset(&rows[t->n_rows], 0, sizeof(rows[0]));
	return &rows[t->n_rows++];
}

void table_set(struct table_row *row, size_t col, const char *text)
{
	free(row->cell[col]);
	row->cell[col] = text_clean(text ? text : "-");
}

/* Terminal columns of UTF-8 text, counting one per character. */
static size_t text_width(const char *s)
{
	size_t w = 0;

	for (; *s; s++)
		if (((unsigned char)*s & 0xc0) != 0x80)
			w++;
	return w;
}

static void table_print_line(const struct table *t, const char *const *cells, const size_t *width)
{
	for (size_t i = 0; i < t->n_cols; i++) {
		const char *s = cells[i] ? cells[i] : "-";

		if (i + 1 == t->n_cols) {
			printf("%s\n", s);
			break;
		}
		printf("%s%*s", s, (int)(width[i] - text_width(s) + 2), "");
	}
}

void table_print(const struct table *t)
{
	size_t width[TABLE_MAX_COLS] = { 0 };

	for (size_t i = 0; i < t->n_cols; i++) {
		width[i] = text_width(t->head[i]);
		for (size_t r = 0; r < t->n_rows; r++)
			if (t->rows[r].cell[i] && text_width(t->rows[r].cell[i]) > width[i])
				width[i] = text_width(t->rows[r].cell[i]);
	}
	table_print_line(t, t->head, width);
	for (size_t r = 0; r < t->n_rows; r++) {
		table_print_line(t, (const char *const *)t->rows[r].cell, width);
		if (t->rows[r].note)
			printf("  %s\n", t->rows[r].note);
	}
}

void table_clear(struct table *t)
{
	for (size_t r = 0; r < t->n_rows; r++) {
		for (size_t i = 0; i < TABLE_MAX_COLS; i++)
			free(t->rows[r].cell[i]);
		free(t->rows[r].note);
	}
	free(t->rows);
	t->rows = NULL;
	t->n_rows = 0;
}

int output_malformed(const char *method, const char *what)
{
	fprintf(stderr, "mcpctl: malformed %s reply from the keeper: %s\n", method, what);
	return CTL_EXIT_PROTOCOL;
}

/* The servers array of a result, each element checked to be an object. */
int output_servers(struct json_object *result, const char *method, struct json_object **out)
{
	struct json_object *servers = field_child(result, PARAM_KEY_SERVERS, json_type_array);

	if (!servers)
		return output_malformed(method, "no \"servers\" array");
	for (size_t i = 0; i < json_object_array_length(servers); i++) {
		struct json_object *s = json_object_array_get_idx(servers, i);

		if (!json_object_is_type(s, json_type_object) || !field_str(s, PARAM_KEY_NAME))
			return output_malformed(method, "a server entry without a name");
	}
	*out = servers;
	return 0;
}
