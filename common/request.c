/*
 * evhttp request helpers shared by the processes that serve HTTP
 * (request.h).
 */
#include <string.h>

#include <event2/http.h>
#include <sodium.h>

#include "request.h"

void request_wipe_query(struct evhttp_request *req)
{
	char *uri = (char *)evhttp_request_get_uri(req), *q;
	const struct evhttp_uri *parsed = evhttp_request_get_evhttp_uri(req);
	char *pq = parsed ? (char *)evhttp_uri_get_query(parsed) : NULL;

	if (uri && (q = strchr(uri, '?')))
		sodium_memzero(q + 1, strlen(q + 1));
	if (pq)
		sodium_memzero(pq, strlen(pq));
}
