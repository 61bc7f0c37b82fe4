/* The node agent's client of zmeshd's PodEnrolment resources (proto/zmesh/enrolment.proto): which pods are in
 * ambient mode. The generic delta client (delta_client.h) with one wildcard subscription, to
 * type.googleapis.com/zmesh.v1.PodEnrolment only, configured like ztunnel's xDS client (xds/endpoint.h: the
 * address, roots, token, clusterid, headers); every response applied to the client's store and ACKed or
 * NACKed ("name: reason; ..." for each resource that does not decode or is not named "<namespace>/<name>"; a
 * rejected update keeps the previous version), reconnection with Istio's backoff and
 * initial_resource_versions. After each response the owner gets the full current set of its node's pods.
 * Runs on one loop (the agent's).
 *
 *     struct enrol_client *c;
 *     enrol_client_new(loop, &(struct enrol_client_opts){.endpoint = {.address = "zmeshd:15012", ...},
 *                      .node_name = "node1", .node = {.pod_name = ..., .pod_ns = "istio-system"}},
 *                      &ops, ud, &c, err, sizeof(err));
 *     loop_run(loop);  ...  enrol_client_free(c);
 */
#pragma once
#include <stdbool.h>
#include <stddef.h>

#include "core/loop.h"
#include "xds/endpoint.h"
#include "xds/enrol_store.h"
#include "xds/node.h"

struct enrol_client_ops {
    /* After every response (ACKed or NACKed): every retained pod on the client's node (all pods when
     * node_name is empty), sorted by namespace then name. pods and its strings are borrowed for the call. */
    void (*on_update)(void *ud, const struct enrol_pod *pods, size_t n);
    /* The first response arrived (on any stream): the set is complete. Once, after that response's on_update.
     */
    void (*on_synced)(void *ud);
};

struct enrol_client_opts {
    /* As ztunnel's: address ("https://host:port" or "host:port"), roots, alt_hostname, token (a file re-read
     * for every stream, or the token), cluster_id, header_prefix ("XDS_HEADER_") and envp, mark. Errors name
     * the settings "XDS_*". */
    struct xds_endpoint_opts endpoint;
    const char *node_name; /* only pods with this spec.nodeName; NULL or "": every pod */
    /* The Node: id "istio-cni~<ip>~<pod>.<ns>~<ns>.svc.cluster.local", metadata NAME, NAMESPACE,
     * INSTANCE_IPS, NODE_NAME and ISTIO_META_* / ISTIO_METAJSON_* from endpoint.envp (xds/node.h). */
    struct xds_node_info node;
};

struct enrol_client;

/* Checks the options, builds the Node and starts connecting on l (nothing happens before the loop runs).
 * Strings of o are copied or used during the call only, except endpoint.envp, read now. Returns 0 with *out,
 * or -EINVAL / -ENOMEM with err naming the setting. */
int enrol_client_new(struct loop *l, const struct enrol_client_opts *o, const struct enrol_client_ops *ops,
                     void *ud, struct enrol_client **out, char *err, size_t errlen);
/* Ends the stream (no reconnect) and frees everything; no callback after it. NULL is a no-op. Not from inside
 * a callback. */
void enrol_client_free(struct enrol_client *c);

/* Pods retained (all nodes), and responses ACKed and NACKed since the start, for logs and tests. */
size_t enrol_client_count(const struct enrol_client *c);
void enrol_client_stats(const struct enrol_client *c, unsigned long long *acks, unsigned long long *nacks);
