/* What a node agent keeps of the zmesh.v1.PodEnrolment resources zmeshd sent (proto/zmesh/enrolment.proto),
 * as store.h is what ztunnel keeps of Address and Authorization; transport-free, so enrol_client.h drives it
 * and tests/fuzz/fuzz_enrol_store.c feeds it. Not xds_store: that one feeds ztunnel's snapshot builder.
 *
 *     struct enrol_store *st;  enrol_store_new(&st);
 *     enrol_store_apply(st, resp, &nack);              (nack NULL = ACK; else error_detail.message)
 *     enrol_store_pods(st, "node1", &pods, &n);        (sorted; borrowed until the next apply or pods call)
 *     enrol_store_initial_versions(st, &req);          (on reconnect; freed by
 * xds_store_initial_versions_clear)
 *
 * Semantics, as store.h's: each resource is checked alone and a bad one is a NACK entry "name: reason"
 * ("XDS payload without resource", "decode: not a zmesh.v1.PodEnrolment", "resource of type <url> in a
 * response of type <url>", "name: missing", "resource name is not <namespace>/<name> (ns/name)", "listed
 * twice in one response", "resources[i]: no name"), the entries joined by "; " up to XDS_NACK_MAX; the others
 * are applied; a rejected update keeps the previous version (reported on reconnect, so the server resends);
 * removed_resources after the updates; removing a name not held is not an error. One thread. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "envoy/service/discovery/v3/discovery.pb-c.h"

/* One pod as zmeshd sees it. Strings are borrowed (for the on_update call, or until the store's next apply).
 */
struct enrol_pod {
    const char *uid; /* metadata.uid (K8S_POD_UID); "" when the manifest has none */
    const char *name, *namespace_;
    const char *service_account; /* never "" from zmeshd ("default" for a pod without one) */
    const char *node;            /* spec.nodeName; "" while unscheduled */
    bool ambient;                /* redirect it and hand it to ztunnel */
    const char *reason; /* why (enrolment.proto: "pod-label", "namespace-label", "pod-opt-out", ...) */
};

struct enrol_store;

/* A new empty store in *out (freed with enrol_store_free). Returns 0 or -ENOMEM. */
int enrol_store_new(struct enrol_store **out);
void enrol_store_free(struct enrol_store *st);
/* Applies one response (borrowed); another type than PB_TYPE_URL_POD_ENROLMENT changes nothing and is a NACK
 * "unknown resource type: <url>". *nack: NULL for an ACK, else malloc'd text the caller frees. Returns 0 or
 * -ENOMEM (what was applied before stays; *nack NULL). */
int enrol_store_apply(struct enrol_store *st,
                      const Envoy__Service__Discovery__V3__DeltaDiscoveryResponse *resp, char **nack);
/* The same from bytes: not a DeltaDiscoveryResponse is -EBADMSG/-ELOOP with *nack "decode: ...". */
int enrol_store_apply_bytes(struct enrol_store *st, const uint8_t *data, size_t len, char **nack);
/* The retained pods with spec.nodeName node (NULL or "": all), sorted by namespace then name, in *out (owned
 * by the store, valid until its next apply or pods call). Returns 0 or -ENOMEM. */
int enrol_store_pods(struct enrol_store *st, const char *node, const struct enrol_pod **out, size_t *n);
size_t enrol_store_count(const struct enrol_store *st);
/* The retained version of name, or NULL. Borrowed until the next apply. */
const char *enrol_store_version(const struct enrol_store *st, const char *name);
/* Fills req->initial_resource_versions with name -> version of every retained pod (strings borrowed until the
 * next apply); free with xds_store_initial_versions_clear. Returns 0 or -ENOMEM. */
int enrol_store_initial_versions(const struct enrol_store *st,
                                 Envoy__Service__Discovery__V3__DeltaDiscoveryRequest *req);
