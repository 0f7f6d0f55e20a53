/*
 * Flows: the logins and logouts the keeper is running (flow.h). Their list
 * in struct keeper, freeing one with everything it still waits for, the
 * JSON both kinds report with, and what happens when their caller goes away.
 * May touch: the keeper's list of flows and the children's pending requests.
 */
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <json-c/json.h>

#include "addr.h"
#include "config.h"
#include "flow.h"
#include "keeper.h"
#include "proto.h"

/* ---- common ---- */

/*
 * The address policy of proto.h: the class of the server URL's host as
 * written and the two config switches. The oauth child refuses connections
 * by it. A server no longer configured (an orphan's revocation) has no
 * switches: its stored resource, which names the server's origin, gives
 * the class; without one the child allows public https only.
 */
void flow_add_policy(struct json_object *params, const struct config_server *cs, const char *orphan_url)
{
	const char *url = cs ? cs->url : orphan_url, *host;
	enum addr_class c = ADDR_PUBLIC;
	size_t len;
	bool https;

	if (!url)
		return;
	if (addr_url_host(url, &host, &len, &https) == 0)
		c = addr_class_host(host, len);
	json_object_object_add(params, PARAM_KEY_SERVER_ADDRESS, json_object_new_string(addr_class_name(c)));
	json_object_object_add(params, PARAM_KEY_ALLOW_PRIVATE_ENDPOINTS,
			       json_object_new_boolean(cs && cs->oauth.allow_private_endpoints));
	json_object_object_add(params, PARAM_KEY_ALLOW_INSECURE_HTTP, json_object_new_boolean(cs && cs->allow_insecure_http));
}

void flow_discover_params(struct json_object *p, const struct config_server *cs)
{
	struct json_object *h = json_object_new_object();

	flow_add_str(p, PARAM_KEY_SERVER, cs->name);
	flow_add_str(p, PARAM_KEY_URL, cs->url);
	flow_add_str(p, PARAM_KEY_PROTOCOL, config_protocol_name(cs->protocol));
	for (size_t i = 0; i < cs->n_headers; i++)
		flow_add_str(h, cs->headers[i].key, cs->headers[i].value);
	json_object_object_add(p, PARAM_KEY_HEADERS, h);
	flow_add_policy(p, cs, NULL);
}

void flow_link(struct keeper *k, struct flow *f)
{
	f->next = k->flows;
	k->flows = f;
}

static void flow_unlink(struct keeper *k, struct flow *f)
{
	for (struct flow **p = &k->flows; *p; p = &(*p)->next) {
		if (*p == f) {
			*p = f->next;
			return;
		}
	}
}

void flow_free(struct flow *f)
{
	struct keeper *k = f->k;

	flow_unlink(k, f);
	if (f->slot)
		*f->slot = NULL;
	if (f->requesting && k->oauth)
		child_cancel(k->oauth, f->request_id);
	for (size_t i = 0; i < f->n_revoke_ids; i++)
		if (k->oauth)
			child_cancel(k->oauth, f->revoke_ids[i]);
	free(f->revoke_ids);
	while (f->acks) {
		struct clear_ack *a = f->acks;

		f->acks = a->next;
		if (a->s->worker)
			child_cancel(a->s->worker, a->id);
		free(a);
	}
	if (f->guard)
		event_free(f->guard);
	if (f->retry)
		event_free(f->retry);
	json_object_put(f->meta);
	json_object_put(f->results);
	client_clear(&f->client);
	free(f);
}

void flow_add_str(struct json_object *o, const char *key, const char *val)
{
	if (val)
		json_object_object_add(o, key, json_object_new_string(val));
}

struct json_object *flow_error_json(const char *kind, const char *reason, const char *message)
{
	struct json_object *e = json_object_new_object();

	flow_add_str(e, PARAM_KEY_KIND, kind);
	flow_add_str(e, PARAM_KEY_REASON, reason);
	flow_add_str(e, PARAM_KEY_MESSAGE, message);
	return e;
}

const char *flow_error_field(struct json_object *error, const char *key)
{
	struct json_object *v, *data;

	if (strcmp(key, PARAM_KEY_MESSAGE) == 0)
		return json_object_object_get_ex(error, PARAM_KEY_MESSAGE, &v) ? json_object_get_string(v) : NULL;
	if (!json_object_object_get_ex(error, PARAM_KEY_DATA, &data) || !json_object_object_get_ex(data, key, &v))
		return NULL;
	return json_object_get_string(v);
}

void flow_detach(struct flow *f)
{
	f->slot = NULL;
	f->url_fn = NULL;
	f->done_fn = NULL;
	f->ctx = NULL;
	if (f->type == FLOW_LOGIN)
		login_abandon(f, "login cancelled: the caller went away");
}

void flow_release(struct flow *f)
{
	f->slot = NULL;
	f->url_fn = NULL;
	f->done_fn = NULL;
	f->ctx = NULL;
}

void flows_free_all(struct keeper *k)
{
	while (k->flows) {
		struct flow *f = k->flows;

		f->slot = NULL;
		f->url_fn = NULL;
		f->done_fn = NULL;
		if (f->type == FLOW_LOGIN)
			login_abandon(f, "the keeper is stopping");
		else
			flow_free(f);
	}
}
