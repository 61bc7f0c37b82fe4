/* The delta ADS client a ztunnel runs against istiod or zmeshd (istio/ztunnel src/xds/client.rs): one gRPC
 * stream DeltaAggregatedResources over TLS (xds/endpoint.h), wildcard subscriptions to Address then
 * Authorization with the Node of xds/node.h, every response applied to the resource store (xds/store.h) and
 * answered with an ACK or a NACK naming the rejected resources, a new snapshot handed to the owner after each
 * response, and reconnection with Istio's backoff (10 ms doubling to 15 s; at once after a clean end or the
 * server's GOAWAY) and initial_resource_versions, so the server resends nothing unchanged. While it is
 * disconnected the owner keeps serving the last snapshot. Runs on one loop (ztunnel's main loop). It is the
 * generic delta client (delta_client.h) with the resource store (store.h) as what it does with a response. */
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "core/loop.h"
#include "mesh/model.h"
#include "xds/delta_client.h"
#include "xds/endpoint.h"
#include "xds/node.h"

struct xds_client_ops {
    /* A response was applied: s is a new snapshot of every retained resource (borrowed for the call; take a
     * reference to keep it). */
    void (*on_snapshot)(void *ud, struct snapshot *s);
    /* Every type got its first response (ACKed or NACKed) on some stream: readiness may be released. Once. */
    void (*on_synced)(void *ud);
};

struct xds_client_opts {
    struct xds_endpoint_opts endpoint;
    struct xds_node_info node; /* the Node's downward-API fields; its metadata comes from endpoint.envp */
};

struct xds_client;

/* Checks the options, builds the Node and starts connecting on l. Returns 0 with *out, or -EINVAL/-ENOMEM
 * with err naming the setting ("XDS_ADDRESS: ...", "ISTIO_METAJSON_X: ..."). */
int xds_client_new(struct loop *l, const struct xds_client_opts *o, const struct xds_client_ops *ops,
                   void *ud, struct xds_client **out, char *err, size_t errlen);
/* Ends the stream (no reconnect) and frees everything. NULL is a no-op. */
void xds_client_free(struct xds_client *c);

/* How streams ended, process-wide, for ztunnel's istio_xds_connection_terminations metric (Istio's reasons,
 * istio/ztunnel src/xds/metrics.rs; enum xds_term_reason is in delta_client.h). */
uint64_t xds_client_terminations(enum xds_term_reason r);
/* The i-th type the client subscribes to (NULL past the last) with the responses received and the bytes of
 * their resources, process-wide (istio_xds_message, istio_xds_message_bytes). Any thread. */
const char *xds_client_metric_type(size_t i, uint64_t *messages, uint64_t *bytes);
