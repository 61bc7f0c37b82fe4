/* What a waypoint keeps of the zmesh.v1.HTTPRoute and zmesh.v1.L7Authorization resources zmeshd sent
 * (proto/zmesh/l7.proto), and the L7 config (mesh/l7.h) built from them after each response. Transport-free,
 * with the semantics of store.h and enrol_store.h: each resource is checked alone (it must build: a route or
 * policy the builder refuses is a NACK entry "name: reason" and the previous version stays applied, so it is
 * reported on reconnect and the server resends); removed_resources after the updates; a name listed twice in
 * one response is refused. One thread.
 *
 *     struct l7_store *st;  l7_store_new(&st);
 *     struct l7_config *cfg;  char *nack;
 *     l7_store_apply(st, resp, &cfg, &nack);      cfg: everything retained, refcount 1 (the caller's)
 *     l7_store_initial_versions(st, L7_TYPE_URL_HTTP_ROUTE, &req);   (freed by xds_store_initial_versions_clear)
 */
#pragma once
#include <stdbool.h>
#include <stddef.h>

#include "envoy/service/discovery/v3/discovery.pb-c.h"
#include "mesh/l7.h"

struct l7_store;

int l7_store_new(struct l7_store **out);
void l7_store_free(struct l7_store *st);
/* True for the type URLs the store keeps. */
bool l7_store_handles(const char *type_url);
/* Applies one response (borrowed) of a type l7_store_handles; *cfg gets a new config of every retained
 * resource (NULL on failure). *nack: NULL for an ACK, else malloc'd text. Returns 0, or -ENOMEM (what was
 * applied before stays; *cfg and *nack NULL), or -EINVAL for another type (NACK text set). */
int l7_store_apply(struct l7_store *st, const Envoy__Service__Discovery__V3__DeltaDiscoveryResponse *resp,
                   struct l7_config **cfg, char **nack);
/* Resources retained for type_url. */
size_t l7_store_count(const struct l7_store *st, const char *type_url);
/* Fills req->initial_resource_versions for type_url (strings borrowed until the next apply). 0 or -ENOMEM. */
int l7_store_initial_versions(const struct l7_store *st, const char *type_url,
                              Envoy__Service__Discovery__V3__DeltaDiscoveryRequest *req);
