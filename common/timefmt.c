/* See timefmt.h. No state; callable from every process. */
#include <stdio.h>
#include <time.h>

#include <json-c/json.h>

#include "timefmt.h"

int64_t time_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

const char *time_text(int64_t ms, char buf[TIME_TEXT_MAX])
{
	time_t sec;
	struct tm tm;
	char base[24];

	if (ms < 0)
		ms = 0;
	sec = (time_t)(ms / 1000);
	if (!gmtime_r(&sec, &tm) || strftime(base, sizeof(base), "%Y-%m-%dT%H:%M:%S", &tm) == 0)
		snprintf(base, sizeof(base), "9999-12-31T23:59:59");
	snprintf(buf, TIME_TEXT_MAX, "%s.%03dZ", base, (int)(ms % 1000));
	return buf;
}

void time_json_add(struct json_object *o, const char *key, const char *key_unix, int64_t ms)
{
	char text[TIME_TEXT_MAX];

	json_object_object_add(o, key, ms ? json_object_new_string(time_text(ms, text)) : NULL);
	json_object_object_add(o, key_unix, ms ? json_object_new_int64(ms / 1000) : NULL);
}
