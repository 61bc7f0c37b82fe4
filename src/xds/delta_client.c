/* The generic delta xDS client (see delta_client.h). */
#include "xds/delta_client.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "xds/pb.h"

struct xds_delta {
    struct loop *l;
    struct xds_endpoint *ep;
    Envoy__Config__Core__V3__Node *node;
    const struct xds_delta_ops *ops;
    void *ud;
    const char *const *types;
    size_t n_types;
    const char *name;
    struct xds_delta_metrics *m;
    struct grpc_channel *ch;
    struct grpc_call *call;
    struct timer retry;
    uint64_t backoff_ms;
    bool synced[XDS_DELTA_MAX_TYPES], synced_reported, freeing;
    /* Counters of the client's life, for its log lines. */
    uint64_t connects, responses, acks, nacks;
    char last_error[256]; /* why the last stream ended, "" if none */
};

static void connect_now(struct xds_delta *c);

static void count_term(struct xds_delta *c, enum xds_term_reason why)
{
    if (c->m) atomic_fetch_add_explicit(&c->m->term[why], 1, memory_order_relaxed);
}

static void schedule_retry(struct xds_delta *c, bool grow)
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
    connect_now(container_of(t, struct xds_delta, retry));
}

static int type_index(const struct xds_delta *c, const char *url)
{
    for (size_t i = 0; i < c->n_types; i++)
        if (url && !strcmp(url, c->types[i])) return (int)i;
    return -1;
}

static void on_message(struct grpc_call *call, void *ud, const uint8_t *p, size_t n)
{
    struct xds_delta *c = ud;
    ProtobufCMessage *m = NULL;
    (void)call;
    if (pb_message_unpack(&envoy__service__discovery__v3__delta_discovery_response__descriptor, p, n, &m) <
        0) {
        LOG_W("xds", "the server sent something that is not a DeltaDiscoveryResponse; ending the stream");
        grpc_call_cancel(c->call, GRPC_STATUS_INTERNAL, "undecodable response");
        return;
    }
    Envoy__Service__Discovery__V3__DeltaDiscoveryResponse *resp = (void *)m;
    char *nack = NULL;
    c->responses++;
    int ti = type_index(c, resp->type_url);
    /* Every response goes to the owner, also of a type not subscribed to: its store says so in the NACK
     * (ztunnel logs it and ACKs), and counts and readiness are only for the client's own types. */
    int rc = c->ops->apply(c->ud, resp, &nack);
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
        c->nacks++;
        LOG_LIMITED(LOG_ERROR, "xds", "type=%s nonce=%s: rejecting resources: %s", resp->type_url,
                    resp->nonce, nack);
    } else {
        c->acks++;
        LOG_D("xds", "type=%s nonce=%s: ACK (%zu resources, %zu removed)", resp->type_url, resp->nonce,
              resp->n_resources, resp->n_removed_resources);
    }
    if (pb_call_send(c->call, &req.base) < 0) LOG_W("xds", "cannot send the ACK for nonce %s", resp->nonce);
    if (ti >= 0) {
        c->synced[ti] = true;
        /* Istio counts each response of a type, and the bytes of its resources' values (metrics.rs). */
        uint64_t bytes = 0;
        for (size_t k = 0; k < resp->n_resources; k++)
            if (resp->resources[k]->resource) bytes += resp->resources[k]->resource->value.len;
        if (c->m) {
            atomic_fetch_add_explicit(&c->m->messages[ti], 1, memory_order_relaxed);
            atomic_fetch_add_explicit(&c->m->bytes[ti], bytes, memory_order_relaxed);
        }
    }
    free(nack);
    protobuf_c_message_free_unpacked(m, NULL);
    if (c->ops->on_response) c->ops->on_response(c->ud);
    bool all = true;
    for (size_t i = 0; i < c->n_types; i++)
        all = all && c->synced[i];
    if (all && !c->synced_reported) {
        c->synced_reported = true;
        LOG_I("xds", "first sync of every type from %s", xds_endpoint_authority(c->ep));
        if (c->ops->on_synced) c->ops->on_synced(c->ud);
    }
}

const char *xds_term_reason_to_str(enum xds_term_reason r)
{
    static const char *const names[XDS_TERM_COUNT] = {"ConnectionError", "Error", "Reconnect", "Complete"};
    return (unsigned)r < XDS_TERM_COUNT ? names[r] : "?";
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
    struct xds_delta *c = ud;
    (void)call;
    c->call = NULL;
    if (c->freeing) return; /* xds_delta_free is freeing the channel */
    snprintf(c->last_error, sizeof(c->last_error), "%s%s%s", grpc_status_to_str(r->status),
             r->message[0] ? ": " : "", r->message);
    enum xds_term_reason why = term_reason(r);
    count_term(c, why);
    bool grow = why == XDS_TERM_CONNECTION_ERROR || why == XDS_TERM_ERROR;
    grpc_channel_free(c->ch); /* allowed from a call's on_end (grpc.h) */
    c->ch = NULL;
    schedule_retry(c, grow);
    LOG_W("xds", "%s %s: %s, retrying in %llums", c->name, grow ? "connection error" : "stream ended",
          c->last_error, (unsigned long long)c->backoff_ms);
}

static const struct grpc_call_ops call_ops = {.on_message = on_message, .on_end = on_end};

static void connect_now(struct xds_delta *c)
{
    char err[sizeof(c->last_error) - 8];
    const struct grpc_md *md;
    if (c->freeing || c->call) return;
    int n_md = xds_endpoint_metadata(c->ep, &md, err, sizeof(err));
    struct grpc_opts go = {.max_recv = XDS_CLIENT_MAX_MESSAGE};
    if (n_md < 0 || !(c->ch = xds_endpoint_dial(c->ep, c->l, &go, err, sizeof(err)))) {
        count_term(c, XDS_TERM_CONNECTION_ERROR);
        snprintf(c->last_error, sizeof(c->last_error), "%s", err);
        schedule_retry(c, true);
        LOG_W("xds", "%s connection error: %s, retrying in %llums", c->name, err,
              (unsigned long long)c->backoff_ms);
        return;
    }
    struct grpc_call_opts co = {.md = md, .n_md = (size_t)n_md};
    int e = 0;
    if (!(c->call = grpc_call_start(c->ch, XDS_CLIENT_METHOD, &co, &call_ops, c, &e))) {
        grpc_channel_free(c->ch);
        c->ch = NULL;
        snprintf(c->last_error, sizeof(c->last_error), "cannot start the stream: %s", strerror(-e));
        schedule_retry(c, true);
        return;
    }
    c->connects++;
    /* The initial requests: wildcard (nothing subscribed), the Node, and what we hold (client.rs
     * construct_initial_request, run_internal). */
    for (size_t i = 0; i < c->n_types; i++) {
        Envoy__Service__Discovery__V3__DeltaDiscoveryRequest req =
            ENVOY__SERVICE__DISCOVERY__V3__DELTA_DISCOVERY_REQUEST__INIT;
        req.type_url = (char *)c->types[i];
        req.node = c->node;
        int rc = c->ops->initial_versions ? c->ops->initial_versions(c->ud, c->types[i], &req) : 0;
        if (rc == 0) rc = pb_call_send(c->call, &req.base);
        if (c->ops->initial_versions_clear) c->ops->initial_versions_clear(c->ud, &req);
        if (rc < 0) {
            grpc_call_cancel(c->call, GRPC_STATUS_INTERNAL, "cannot send the initial requests");
            return;
        }
    }
    LOG_I("xds", "stream to %s started (attempt %llu)", xds_endpoint_authority(c->ep),
          (unsigned long long)c->connects);
}

int xds_delta_new(struct loop *l, const struct xds_delta_opts *o, const struct xds_delta_ops *ops, void *ud,
                  struct xds_delta **out, char *err, size_t errlen)
{
    int rc;
    *out = NULL;
    if (!ops || !ops->apply || !o->n_types || o->n_types > XDS_DELTA_MAX_TYPES) {
        snprintf(err, errlen, "xDS client: an apply function and 1 to %d types are required",
                 XDS_DELTA_MAX_TYPES);
        return -EINVAL;
    }
    struct xds_delta *c = calloc(1, sizeof(*c));
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    c->l = l;
    c->ops = ops;
    c->ud = ud;
    c->types = o->type_urls;
    c->n_types = o->n_types;
    c->name = o->name ? o->name : "XDS client";
    c->m = o->metrics;
    c->retry.cb = retry_cb;
    c->backoff_ms = XDS_CLIENT_BACKOFF_INITIAL_MS;
    if ((rc = xds_endpoint_new(&o->endpoint, o->err_prefix ? o->err_prefix : "XDS", &c->ep, err, errlen)) < 0)
        goto fail;
    if ((rc = xds_node_new_kind(o->node_kind ? o->node_kind : XDS_NODE_KIND_ZTUNNEL, &o->node,
                                o->endpoint.envp, &c->node, err, errlen)) < 0)
        goto fail;
    timer_start(l, &c->retry, 0);
    *out = c;
    return 0;
fail:
    xds_delta_free(c);
    return rc;
}

void xds_delta_free(struct xds_delta *c)
{
    if (!c) return;
    c->freeing = true;
    timer_stop(c->l, &c->retry);
    grpc_channel_free(c->ch); /* ends the call; on_end sees freeing and leaves the channel alone */
    if (c->node) protobuf_c_message_free_unpacked(&c->node->base, NULL);
    xds_endpoint_free(c->ep);
    free(c);
}

const char *xds_delta_authority(const struct xds_delta *c)
{
    return xds_endpoint_authority(c->ep);
}
