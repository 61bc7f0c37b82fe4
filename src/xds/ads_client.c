/* The delta ADS client (see ads_client.h). */
#include "xds/ads_client.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "xds/pb.h"
#include "xds/store.h"

static const char *const types[] = {PB_TYPE_URL_ADDRESS, PB_TYPE_URL_AUTHORIZATION};
#define N_TYPES 2

/* Process-wide counters for ztunnel's istio_xds_* metrics (istio/ztunnel src/xds/metrics.rs); any thread
 * reads them, the client's loop writes. */
static _Atomic uint64_t term_count[XDS_TERM_COUNT];
static _Atomic uint64_t msg_count[N_TYPES], msg_bytes[N_TYPES];

/* Counters of one client's life, for its log lines. */
struct xds_client_stats {
    bool connected, synced;
    uint64_t connects, responses, acks, nacks;
    char last_error[256]; /* why the last stream ended, "" if none */
};

struct xds_client {
    struct loop *l;
    struct xds_endpoint *ep;
    Envoy__Config__Core__V3__Node *node;
    const struct xds_client_ops *ops;
    void *ud;
    struct xds_store *store;
    struct grpc_channel *ch;
    struct grpc_call *call;
    struct timer retry;
    uint64_t backoff_ms;
    bool synced[N_TYPES], synced_reported, freeing;
    struct xds_client_stats st;
};

static void connect_now(struct xds_client *c);

static void schedule_retry(struct xds_client *c, bool grow)
{
    if (c->freeing) return;
    if (grow) {
        c->backoff_ms *= 2;
        if (c->backoff_ms > XDS_CLIENT_BACKOFF_MAX_MS) c->backoff_ms = XDS_CLIENT_BACKOFF_MAX_MS;
    } else {
        c->backoff_ms = XDS_CLIENT_BACKOFF_INITIAL_MS;
    }
    timer_start(c->l, &c->retry, c->backoff_ms);
}

static void retry_cb(struct timer *t)
{
    connect_now(container_of(t, struct xds_client, retry));
}

/* Sends one request on the stream. Returns 0 or -errno. */
static int send_request(struct xds_client *c, Envoy__Service__Discovery__V3__DeltaDiscoveryRequest *req)
{
    size_t n = envoy__service__discovery__v3__delta_discovery_request__get_packed_size(req);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf) return -ENOMEM;
    envoy__service__discovery__v3__delta_discovery_request__pack(req, buf);
    int rc = grpc_call_send(c->call, buf, n);
    free(buf);
    return rc;
}

static void on_message(struct grpc_call *call, void *ud, const uint8_t *p, size_t n)
{
    struct xds_client *c = ud;
    ProtobufCMessage *m = NULL;
    (void)call;
    if (pb_message_unpack(&envoy__service__discovery__v3__delta_discovery_response__descriptor, p, n, &m) <
        0) {
        LOG_W("xds", "the server sent something that is not a DeltaDiscoveryResponse; ending the stream");
        grpc_call_cancel(c->call, GRPC_STATUS_INTERNAL, "undecodable response");
        return;
    }
    Envoy__Service__Discovery__V3__DeltaDiscoveryResponse *resp = (void *)m;
    struct snapshot *snap = NULL;
    char *nack = NULL;
    c->st.responses++;
    int rc = xds_store_apply(c->store, resp, &snap, &nack);
    Envoy__Service__Discovery__V3__DeltaDiscoveryRequest req =
        ENVOY__SERVICE__DISCOVERY__V3__DELTA_DISCOVERY_REQUEST__INIT;
    Google__Rpc__Status status = GOOGLE__RPC__STATUS__INIT;
    req.type_url = resp->type_url;
    req.response_nonce = resp->nonce;
    if (rc == -ENOMEM && !nack) nack = strdup("out of memory");
    if (nack) {
        /* ztunnel logs the NACK at error with the rejected resources (client.rs handle_stream_event). */
        status.message = nack;
        req.error_detail = &status;
        c->st.nacks++;
        LOG_LIMITED(LOG_ERROR, "xds", "type=%s nonce=%s: rejecting resources: %s", resp->type_url,
                    resp->nonce, nack);
    } else {
        c->st.acks++;
        LOG_D("xds", "type=%s nonce=%s: ACK (%zu resources, %zu removed)", resp->type_url, resp->nonce,
              resp->n_resources, resp->n_removed_resources);
    }
    if (send_request(c, &req) < 0) LOG_W("xds", "cannot send the ACK for nonce %s", resp->nonce);
    for (int i = 0; i < N_TYPES; i++) {
        if (strcmp(resp->type_url, types[i]) != 0) continue;
        c->synced[i] = true;
        /* Istio counts each response of a type, and the bytes of its resources' values (metrics.rs). */
        uint64_t bytes = 0;
        for (size_t k = 0; k < resp->n_resources; k++)
            if (resp->resources[k]->resource) bytes += resp->resources[k]->resource->value.len;
        atomic_fetch_add_explicit(&msg_count[i], 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&msg_bytes[i], bytes, memory_order_relaxed);
    }
    free(nack);
    protobuf_c_message_free_unpacked(m, NULL);
    if (snap) {
        if (c->ops->on_snapshot) c->ops->on_snapshot(c->ud, snap);
        snapshot_unref(snap);
    }
    bool all = true;
    for (int i = 0; i < N_TYPES; i++)
        all = all && c->synced[i];
    if (all && !c->synced_reported) {
        c->synced_reported = c->st.synced = true;
        LOG_I("xds", "first sync of every type from %s", xds_endpoint_authority(c->ep));
        if (c->ops->on_synced) c->ops->on_synced(c->ud);
    }
}

const char *xds_term_reason_to_str(enum xds_term_reason r)
{
    static const char *const names[XDS_TERM_COUNT] = {"ConnectionError", "Error", "Reconnect", "Complete"};
    return (unsigned)r < XDS_TERM_COUNT ? names[r] : "?";
}

uint64_t xds_client_terminations(enum xds_term_reason r)
{
    return (unsigned)r < XDS_TERM_COUNT ? atomic_load_explicit(&term_count[r], memory_order_relaxed) : 0;
}

const char *xds_client_metric_type(size_t i, uint64_t *messages, uint64_t *bytes)
{
    if (i >= N_TYPES) return NULL;
    *messages = atomic_load_explicit(&msg_count[i], memory_order_relaxed);
    *bytes = atomic_load_explicit(&msg_bytes[i], memory_order_relaxed);
    return types[i];
}

/* How a stream ended, as Istio's run_loop sorts it: a connection that could not be made is a ConnectionError
 * (backoff doubles); a clean end is Complete, and a cancellation, a deadline or the server going away a
 * Reconnect (both reconnect at once); any other status an Error (backoff doubles). */
static enum xds_term_reason term_reason(const struct grpc_result *r)
{
    switch (r->h2_reason) {
    case H2_END_CONNECT_FAILED:
    case H2_END_HANDSHAKE_FAILED:
    case H2_END_HANDSHAKE_TIMEOUT:
    case H2_END_IDENTITY:
    case H2_END_NO_ALPN:
        return XDS_TERM_CONNECTION_ERROR;
    case H2_END_REFUSED: /* the server's GOAWAY */
        return XDS_TERM_RECONNECT;
    default:
        break;
    }
    switch (r->status) {
    case GRPC_STATUS_OK:
        return XDS_TERM_COMPLETE;
    case GRPC_STATUS_UNKNOWN:
    case GRPC_STATUS_CANCELLED:
    case GRPC_STATUS_DEADLINE_EXCEEDED:
        return XDS_TERM_RECONNECT;
    default:
        return XDS_TERM_ERROR;
    }
}

static void on_end(struct grpc_call *call, void *ud, const struct grpc_result *r)
{
    struct xds_client *c = ud;
    (void)call;
    c->call = NULL;
    c->st.connected = false;
    if (c->freeing) return; /* xds_client_free is freeing the channel */
    snprintf(c->st.last_error, sizeof(c->st.last_error), "%s%s%s", grpc_status_to_str(r->status),
             r->message[0] ? ": " : "", r->message);
    enum xds_term_reason why = term_reason(r);
    atomic_fetch_add_explicit(&term_count[why], 1, memory_order_relaxed);
    bool grow = why == XDS_TERM_CONNECTION_ERROR || why == XDS_TERM_ERROR;
    grpc_channel_free(c->ch); /* allowed from a call's on_end (grpc.h) */
    c->ch = NULL;
    schedule_retry(c, grow);
    LOG_W("xds", "XDS client %s: %s, retrying in %llums", grow ? "connection error" : "stream ended",
          c->st.last_error, (unsigned long long)c->backoff_ms);
}

static const struct grpc_call_ops call_ops = {.on_message = on_message, .on_end = on_end};

static void connect_now(struct xds_client *c)
{
    char err[sizeof(c->st.last_error) - 8];
    const struct grpc_md *md;
    if (c->freeing || c->call) return;
    int n_md = xds_endpoint_metadata(c->ep, &md, err, sizeof(err));
    struct grpc_opts go = {.max_recv = XDS_CLIENT_MAX_MESSAGE};
    if (n_md < 0 || !(c->ch = xds_endpoint_dial(c->ep, c->l, &go, err, sizeof(err)))) {
        atomic_fetch_add_explicit(&term_count[XDS_TERM_CONNECTION_ERROR], 1, memory_order_relaxed);
        snprintf(c->st.last_error, sizeof(c->st.last_error), "%s", err);
        schedule_retry(c, true);
        LOG_W("xds", "XDS client connection error: %s, retrying in %llums", err,
              (unsigned long long)c->backoff_ms);
        return;
    }
    struct grpc_call_opts co = {.md = md, .n_md = (size_t)n_md};
    int e = 0;
    if (!(c->call = grpc_call_start(c->ch, XDS_CLIENT_METHOD, &co, &call_ops, c, &e))) {
        grpc_channel_free(c->ch);
        c->ch = NULL;
        snprintf(c->st.last_error, sizeof(c->st.last_error), "cannot start the stream: %s", strerror(-e));
        schedule_retry(c, true);
        return;
    }
    c->st.connects++;
    c->st.connected = true;
    /* The initial requests: wildcard (nothing subscribed), the Node, and what we hold (client.rs
     * construct_initial_request, run_internal). */
    for (int i = 0; i < N_TYPES; i++) {
        Envoy__Service__Discovery__V3__DeltaDiscoveryRequest req =
            ENVOY__SERVICE__DISCOVERY__V3__DELTA_DISCOVERY_REQUEST__INIT;
        req.type_url = (char *)types[i];
        req.node = c->node;
        int rc = xds_store_initial_versions(c->store, types[i], &req);
        if (rc == 0) rc = send_request(c, &req);
        xds_store_initial_versions_clear(&req);
        if (rc < 0) {
            grpc_call_cancel(c->call, GRPC_STATUS_INTERNAL, "cannot send the initial requests");
            return;
        }
    }
    LOG_I("xds", "stream to %s started (attempt %llu)", xds_endpoint_authority(c->ep),
          (unsigned long long)c->st.connects);
}

int xds_client_new(struct loop *l, const struct xds_client_opts *o, const struct xds_client_ops *ops,
                   void *ud, struct xds_client **out, char *err, size_t errlen)
{
    struct xds_client *c = calloc(1, sizeof(*c));
    int rc;
    *out = NULL;
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    c->l = l;
    c->ops = ops;
    c->ud = ud;
    c->retry.cb = retry_cb;
    c->backoff_ms = XDS_CLIENT_BACKOFF_INITIAL_MS;
    if ((rc = xds_endpoint_new(&o->endpoint, "XDS", &c->ep, err, errlen)) < 0) goto fail;
    if ((rc = xds_node_new(&o->node, o->endpoint.envp, &c->node, err, errlen)) < 0) goto fail;
    if ((rc = xds_store_new(&c->store, NULL)) < 0) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    timer_start(l, &c->retry, 0);
    *out = c;
    return 0;
fail:
    xds_client_free(c);
    return rc;
}

void xds_client_free(struct xds_client *c)
{
    if (!c) return;
    c->freeing = true;
    timer_stop(c->l, &c->retry);
    grpc_channel_free(c->ch); /* ends the call; on_end sees freeing and leaves the channel alone */
    xds_store_free(c->store);
    if (c->node) protobuf_c_message_free_unpacked(&c->node->base, NULL);
    xds_endpoint_free(c->ep);
    free(c);
}
