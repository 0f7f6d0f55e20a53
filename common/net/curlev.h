/*
 * libcurl's multi interface driven by a libevent loop: the glue that every
 * process doing HTTP (the oauth child, the workers) shares. One curlev per
 * process; easy handles are added and removed with the ordinary
 * curl_multi_add_handle()/curl_multi_remove_handle() on curlev_multi().
 *
 * When a transfer ends, done(easy, result, arg) runs from the loop, outside
 * any libcurl callback: it may remove and clean up that handle and add or
 * remove others. libcurl's own callbacks (write, header) run inside
 * curl_multi_socket_action() and must not call the multi interface.
 */
#pragma once

#include <curl/curl.h>

struct event_base;
struct curlev;

typedef void (*curlev_done_fn)(CURL *easy, CURLcode result, void *arg);

/* NULL when memory is short. */
struct curlev *curlev_new(struct event_base *base, curlev_done_fn done, void *arg);
/* Every easy handle must have been removed first. Returns NULL. */
struct curlev *curlev_free(struct curlev *c);
CURLM *curlev_multi(struct curlev *c);
/*
 * Lets the connections this handle opens stay watched while idle in
 * libcurl's cache, instead of leaving epoll after each transfer and
 * joining it again at the next (two system calls per request): sets the
 * handle's CURLOPT_OPENSOCKETFUNCTION and CURLOPT_CLOSESOCKETFUNCTION,
 * which the caller must leave alone. Call before the handle's first
 * transfer. 0, or -EINVAL when libcurl refuses the options.
 */
int curlev_easy_setup(struct curlev *c, CURL *easy);
