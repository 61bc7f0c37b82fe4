/* The client-side delta xDS resource store: what ztunnel keeps of the Address and Authorization resources a
 * control plane sent (istio/ztunnel src/xds/client.rs State.known_resources and the ProxyState it feeds).
 * Transport-free: a DeltaDiscoveryResponse (protoc-c message or bytes) goes in, the ACK/NACK text and a new
 * snapshot come out.
 *
 *     struct xds_store *st;
 *     xds_store_new(&st, NULL);
 *     char *nack;  struct snapshot *snap;
 *     xds_store_apply(st, resp, &snap, &nack);    (nack NULL = ACK; else error_detail.message)
 *     ...swap snap in; free(nack);
 *     xds_store_initial_versions(st, PB_TYPE_URL_ADDRESS, &req);   (on reconnect)
 *
 * Semantics, as ztunnel's client (src/xds/client.rs HandlerWrapper::handle, src/xds.rs handlers):
 *   - each resource is decoded and validated alone; a rejected one is named in the NACK as "name: reason",
 *     the entries joined by "; " (handler rejections first, then decode failures, as ztunnel appends them);
 *   - a rejected update of a name already held leaves the previous version applied and its version retained
 *     (ztunnel does not insert what fails to convert, and does not record the rejected version, so a
 *     reconnect's initial_resource_versions still names the old one and the server re-sends);
 *   - removed_resources are applied after the updates (a name both updated and removed ends removed); a
 *     removed name the store does not hold is not an error;
 *   - the ACK/NACK covers the response as a whole; the accepted resources are applied either way.
 * Where zmesh is stricter than ztunnel (each is a NACK entry): a resource whose Any type URL is not the
 * response's (ztunnel decodes the bytes regardless), a resource whose name is not its key (uid,
 * "namespace/hostname", "namespace/name"; ztunnel keys Workloads by uid whatever the xDS name), a name twice
 * in one response, a resource the snapshot builder refuses. A response of a type the store does not know is
 * a NACK too (ztunnel logs it and ACKs).
 *
 * Lookups by name are O(log n) (a tree per type); resources are kept in first-seen order so a rebuild feeds
 * the builder in a stable order, and a rebuild is one builder pass over every retained resource. Not
 * thread-safe: one xDS thread owns a store; the snapshots it hands out are immutable and shared freely. */
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "envoy/service/discovery/v3/discovery.pb-c.h"
#include "mesh/model.h"
#include "xds/resource.h"

/* Longest NACK text; further entries are replaced by "; ... and N more rejected". */
#define XDS_NACK_MAX (1024 * 1024)

struct xds_store_opts {
    /* Warnings about accepted resources (a field zmesh ignores, a workload nothing can reach): type URL,
     * resource name, message. NULL: log at warn level, target "xds". */
    void (*warn)(void *ud, const char *type_url, const char *name, const char *msg);
    void *warn_ud;
};

struct xds_store;

/* A new, empty store in *out (the caller frees it with xds_store_free). opts is copied; NULL = defaults.
 * Returns 0 or -ENOMEM. */
int xds_store_new(struct xds_store **out, const struct xds_store_opts *opts);
/* Frees the store and every resource it holds. NULL is a no-op. */
void xds_store_free(struct xds_store *st);

/* Applies one response (borrowed; nothing of it is kept). *nack is NULL for an ACK, else a malloc'd NACK text
 * the caller frees. When snap is not NULL, *snap is a new snapshot of every retained resource of both types
 * (refcount 1, the caller's), built even when nothing changed. Returns 0; -ENOMEM (the store holds what was
 * applied before the failure; *nack and *snap are NULL). */
int xds_store_apply(struct xds_store *st, const Envoy__Service__Discovery__V3__DeltaDiscoveryResponse *resp,
                    struct snapshot **snap, char **nack);
/* Same from the serialized response. Bytes that are not a DeltaDiscoveryResponse change nothing and return
 * -EBADMSG or -ELOOP with *nack saying why ("decode: ..."). */
int xds_store_apply_bytes(struct xds_store *st, const uint8_t *data, size_t len, struct snapshot **snap,
                          char **nack);

/* Builds a snapshot of every retained resource (Address ones in first-seen order, then Authorization ones) in
 * *out (refcount 1). Returns 0 or -ENOMEM. */
int xds_store_build(struct xds_store *st, struct snapshot **out);

/* Number of resources retained for type_url (0 for a type the store does not know). */
size_t xds_store_count(const struct xds_store *st, const char *type_url);
/* The retained resource called name, or NULL. Borrowed from the store until the next apply. */
const struct xds_resource *xds_store_get(const struct xds_store *st, const char *type_url, const char *name);
/* Its version as the server sent it, or NULL when not retained. Borrowed like xds_store_get. */
const char *xds_store_version(const struct xds_store *st, const char *type_url, const char *name);

/* Calls fn(ud, name, version) for every resource retained for type_url, in first-seen order; stops at and
 * returns the first non-zero result of fn, else 0. */
int xds_store_foreach(const struct xds_store *st, const char *type_url,
                      int (*fn)(void *ud, const char *name, const char *version), void *ud);

/* Fills req->initial_resource_versions with name -> version of every resource retained for type_url (a
 * reconnect's first request; istiod skips resources whose version matches). The entries' strings are
 * borrowed from the store until its next apply; the arrays are the caller's, freed with
 * xds_store_initial_versions_clear. req must have no entries yet. Returns 0 or -ENOMEM. */
int xds_store_initial_versions(const struct xds_store *st, const char *type_url,
                               Envoy__Service__Discovery__V3__DeltaDiscoveryRequest *req);
/* Gives req an initial_resource_versions map of n entries (one array of entries and one of pointers, as
 * xds_store_initial_versions_clear frees them), for a store to fill each entry's key and value. n > 0.
 * Returns the entries, or NULL (req untouched) without memory. */
Envoy__Service__Discovery__V3__DeltaDiscoveryRequest__InitialResourceVersionsEntry *
xds_initial_versions_alloc(Envoy__Service__Discovery__V3__DeltaDiscoveryRequest *req, size_t n);
/* Frees what xds_store_initial_versions put in req and empties the map. */
void xds_store_initial_versions_clear(Envoy__Service__Discovery__V3__DeltaDiscoveryRequest *req);
