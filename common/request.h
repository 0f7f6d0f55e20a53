/*
 * Helpers for the children that answer HTTP requests with libevent's evhttp
 * (the oauth child's redirect listener, the http child). Nothing here
 * allocates.
 */
#pragma once

struct evhttp_request;

/* libevent keeps the request line and its parsed URI until the request is
 * freed, and their query may hold a secret (an authorization code, the API
 * key). Wipes the query bytes of both in place (same length, still
 * terminated): call it once nothing reads the query any more. */
void request_wipe_query(struct evhttp_request *req);
