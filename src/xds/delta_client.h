/* A delta xDS client on zmesh's gRPC layer (istio/ztunnel src/xds/client.rs), generic over what it
 * subscribes to and what it does with a response: one stream DeltaAggregatedResources over TLS
 * (xds/endpoint.h), a wildcard initial request per type (in the order given) with the Node and the
 * initial_resource_versions the owner reports, every response handed to the owner's apply and answered with
 * an ACK or a NACK carrying the owner's text, the first response of every type reported once (readiness),
 * and Istio's reconnect rule: 10 ms doubling to 15 s after connection errors and most statuses, at once
 * after a clean end, a cancellation, a deadline or the server's GOAWAY. Runs on one loop.
 *
 * ztunnel's Address/Authorization client (ads_client.h) and the node agent's PodEnrolment client
 * (enrol_client.h) are this client with their own store. */
#pragma once
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/loop.h"
#include "envoy/service/discovery/v3/discovery.pb-c.h"
#include "xds/endpoint.h"
#include "xds/node.h"

#define XDS_CLIENT_METHOD "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
/* Istio's limits and backoff (client.rs: max_decoding_message_size, INITIAL_BACKOFF, MAX_BACKOFF). */
#define XDS_CLIENT_MAX_MESSAGE (200u << 20)
#define XDS_CLIENT_BACKOFF_INITIAL_MS 10
#define XDS_CLIENT_BACKOFF_MAX_MS 15000
/* Most types one client subscribes to. */
#define XDS_DELTA_MAX_TYPES 8

/* How streams ended, for Istio's istio_xds_connection_terminations metric (istio/ztunnel src/xds/metrics.rs).
 */
enum xds_term_reason {
    XDS_TERM_CONNECTION_ERROR, /* the connection could not be made (connect, TLS, identity) */
    XDS_TERM_ERROR,            /* a status Istio backs off after */
    XDS_TERM_RECONNECT,        /* cancelled, deadline, unknown, the server's GOAWAY: reconnected at once */
    XDS_TERM_COMPLETE,         /* the server ended the stream with OK */
    XDS_TERM_COUNT
};
const char *xds_term_reason_to_str(enum xds_term_reason r);

/* Counters a client adds to (any thread may read them; the client's loop writes): stream ends by reason, and
 * per type (the index in xds_delta_opts.type_urls) the responses and the bytes of their resources' values
 * (istio_xds_message, istio_xds_message_bytes). The owner keeps them, e.g. process-wide. */
struct xds_delta_metrics {
    _Atomic uint64_t term[XDS_TERM_COUNT];
    _Atomic uint64_t messages[XDS_DELTA_MAX_TYPES], bytes[XDS_DELTA_MAX_TYPES];
};

struct xds_delta_ops {
    /* Applies one response (borrowed for the call), of any type the server sent: one the client did not
     * subscribe to is the owner's to refuse ("unknown resource type: <url>"; ztunnel logs it and ACKs).
     * *nack: NULL for an ACK, else a malloc'd error_detail.message the client frees. Returns 0, or -ENOMEM
     * (the client NACKs "out of memory" when no text was given). Required. */
    int (*apply)(void *ud, const Envoy__Service__Discovery__V3__DeltaDiscoveryResponse *resp, char **nack);
    /* Fills req->initial_resource_versions for type_url (a new stream's first request of the type); the
     * client sends req, then calls initial_versions_clear. Returns 0 or -ENOMEM. NULL: none sent. */
    int (*initial_versions)(void *ud, const char *type_url,
                            Envoy__Service__Discovery__V3__DeltaDiscoveryRequest *req);
    void (*initial_versions_clear)(void *ud, Envoy__Service__Discovery__V3__DeltaDiscoveryRequest *req);
    /* After a response was applied and its ACK/NACK sent. NULL: nothing. */
    void (*on_response)(void *ud);
    /* Every type got its first response (ACKed or NACKed) on some stream. Once. NULL: nothing. */
    void (*on_synced)(void *ud);
};

struct xds_delta_opts {
    struct xds_endpoint_opts endpoint;
    const char *err_prefix; /* names the settings in errors: "XDS" gives "XDS_ADDRESS: ..." */
    /* The Node: xds_node_new_kind(node_kind, &node, endpoint.envp); node_kind NULL = "ztunnel". */
    const char *node_kind;
    struct xds_node_info node;
    const char *const *type_urls;      /* subscribed in this order; strings borrowed for the client's life */
    size_t n_types;                    /* 1..XDS_DELTA_MAX_TYPES */
    const char *name;                  /* for log lines: "XDS client", "enrolment client" */
    struct xds_delta_metrics *metrics; /* NULL: not counted */
};

struct xds_delta;

/* Checks the options, builds the Node and starts connecting on l (from a zero timer: nothing happens before
 * the loop runs). Returns 0 with *out, or -EINVAL/-ENOMEM with err naming the setting. */
int xds_delta_new(struct loop *l, const struct xds_delta_opts *o, const struct xds_delta_ops *ops, void *ud,
                  struct xds_delta **out, char *err, size_t errlen);
/* Ends the stream (no reconnect) and frees everything. NULL is a no-op. */
void xds_delta_free(struct xds_delta *c);
/* "host:port" of the server, for logs. */
const char *xds_delta_authority(const struct xds_delta *c);
