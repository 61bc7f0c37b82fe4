/* HTTP/2 with prior knowledge (h2c) through the waypoint, gRPC included (wp.h): the downstream internal
 * connection runs the generic HTTP/2 session (h2/session.h) in the server role without TLS; each request
 * stream is routed like an HTTP/1.1 request and opened on an upstream h2c connection (the client role on an
 * internal connection bridged to an HBONE tunnel to the endpoint), multiplexed and kept per worker and
 * endpoint. Headers, body and trailers are relayed stream to stream; a byte received on one side is credited
 * to its sender (h2_stream_consume) only once the other side's session has taken it, so the HTTP/2 windows
 * give end-to-end back-pressure and nothing is buffered beyond a window. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <nghttp2/nghttp2.h>
#include <unistd.h>

#include "core/log.h"
#include "waypoint/bq.h"
#include "waypoint/h2c_mirror.h"
#include "waypoint/route.h"
#include "waypoint/telemetry.h"
#include "waypoint/tries.h"
#include "waypoint/wp.h"

#define LOG_H2C "waypoint::h2c"
/* Receive windows of the waypoint's h2c sessions (auto-tuned between these, as HBONE's). */
#define HC_STREAM_WINDOW (256u << 10)
#define HC_STREAM_WINDOW_MAX (4u << 20)
#define HC_CONN_WINDOW (1u << 20)
#define HC_CONN_WINDOW_MAX (16u << 20)
/* Envoy's defaults for a waypoint's HTTP/2: 100 concurrent streams per downstream connection (Istio's
 * connect_terminate sets the same), header lists of 60 KiB and 100 headers. */
#define HC_MAX_STREAMS 100
#define HC_MAX_HEADERS 100
#define HC_MAX_HEADER_BYTES (60u << 10)
#define HC_IDLE_BUCKETS 64
#define HC_GRPC_MESSAGE_MAX 512 /* a local reply's grpc-message, percent-encoded (the texts are < 128 bytes) */
/* The request body kept for a retry (Envoy's per-request buffer limit, 1 MiB by default). */
#define HC_REPLAY_MAX (1u << 20)

struct hc_up;

struct hc_down {
    struct wp_tunnel *t;
    struct h2_conn *c;
};

struct hc_up {
    struct hc_up *hnext; /* in the worker's table while it takes streams */
    struct wp_worker *w;
    struct h2_conn *c;
    struct hbone_stream *hs;
    /* The endpoint's address, and its workload uid copied: a pooled session outlives the view whose snapshot
     * owns the workload (ep.wl is cleared). */
    struct lb_choice ep;
    char *uid;
    bool listed;
    bool tunnel_ok; /* its HBONE tunnel answered 200: a stream failing from now on is a reset */
    /* DestinationRule connectionPool (tries.h wp_try_conn_limits, from the request that opened it): the
     * connect timeout until the tunnel answers (timed_out once it fired), streams opened and the most it
     * takes (maxRequestsPerConnection, 0: unlimited; then it is drained), the idle timeout without streams. */
    struct timer connect_timer, idle_timer;
    bool timed_out;
    uint32_t requests, max_requests;
    uint64_t idle_ms, last_used;
};

/* Counts gRPC messages in a body as it passes (5-byte prefix: flag and length), without buffering them. */
struct msg_count {
    uint64_t msgs;
    uint64_t skip;     /* message bytes still to pass */
    uint8_t hdr_have;  /* prefix bytes seen of the next message */
    uint8_t hdr[5];
};

/* One request stream and its upstream stream. Freed when both have ended. */
struct hc_x {
    int refs;
    struct hc_down *d;
    struct h2_stream *ds, *us; /* NULL once that stream ended */
    struct hc_up *u;
    struct bq d2u, u2d;
    bool routed, responded, grpc, ds_parked, us_parked; /* routed: down_request ran (DATA may come first) */
    int status;
    const char *flags;
    char method[16], path[256], authority[256], request_id[WP_REQUEST_ID_LEN], upstream_host[IP_STRLEN + 32];
    uint64_t start_mono, up_start_mono, bytes_received, bytes_sent;
    struct wp_decision dec; /* what wp_decide chose (strings borrowed from the tunnel's view) */
    struct lb_choice upstream_ep;
    struct timer timer; /* the route's timeout */
    /* A VirtualService fault delay (route.c): the first try starts when delay_timer fires; meanwhile the
     * request is between tries (retrying: its DATA waits in d2u and the replay, uncredited). */
    struct timer delay_timer;
    bool delayed;      /* the delay ran: flag DI whatever else the request meets */
    bool mirror_body;  /* RequestMirror under a delay: the request has a body (its HEADERS did not end it) */
    struct msg_count req_msgs, resp_msgs;
    int grpc_status; /* from the response's trailers (or a trailers-only response), -1 when none */
    bool counted;    /* wp_endpoint_begin ran for upstream_ep */
    int64_t upstream_ms;
    uint64_t start_wall, req_head_bytes, resp_head_bytes;
    char user_agent[256];
    struct wp_h2c_mirror *mirror; /* RequestMirror's shadow while it copies the request (h2c_mirror.h) */
    /* Retries (dec.retry; src/mesh/retry.h): the request's headers and the body so far, for the next try. */
    struct h2_header *req_hdrs;
    size_t n_req_hdrs;
    char *req_hdr_mem;
    struct h2_header *req_trailers; /* request trailers once received (copies), n_req_trailers of them */
    size_t n_req_trailers;
    char *req_trailer_mem;
    struct bq replay;
    size_t credited_head; /* bytes at the head of d2u the client was credited for already (a retry's replay) */
    bool req_eof, replay_lost, retrying, abandoning;
    struct wp_tries tries;
    struct timer retry_timer, try_timer;
};

static _Thread_local struct hc_up *up_table[HC_IDLE_BUCKETS];

static bool name_eq(const char *a, size_t alen, const char *lower)
{
    return strlen(lower) == alen && !memcmp(a, lower, alen); /* HTTP/2 names are lower-case already */
}

/* Copies h[0..n) into one block (*mem) and an array (*out); frees what they held. 0 or -ENOMEM. */
static int copy_headers(const struct h2_header *h, size_t n, struct h2_header **out, char **mem)
{
    size_t need = 1;
    for (size_t i = 0; i < n; i++)
        need += strlen(h[i].name) + strlen(h[i].value) + 2;
    struct h2_header *a = malloc((n ? n : 1) * sizeof(*a));
    char *m = malloc(need), *q = m;
    if (!a || !m) {
        free(a);
        free(m);
        return -ENOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        size_t ln = strlen(h[i].name) + 1, lv = strlen(h[i].value) + 1;
        a[i].name = memcpy(q, h[i].name, ln);
        q += ln;
        a[i].value = memcpy(q, h[i].value, lv);
        q += lv;
    }
    free(*out);
    free(*mem);
    *out = a;
    *mem = m;
    return 0;
}

/* ---- exchanges ---- */

static void count_msgs(struct msg_count *m, const uint8_t *p, size_t n)
{
    while (n) {
        if (m->skip) {
            size_t k = m->skip < n ? (size_t)m->skip : n;
            m->skip -= k;
            p += k;
            n -= k;
            continue;
        }
        m->hdr[m->hdr_have++] = *p++;
        n--;
        if (m->hdr_have == 5) {
            m->msgs++;
            m->hdr_have = 0;
            m->skip = (uint64_t)m->hdr[1] << 24 | (uint64_t)m->hdr[2] << 16 | (uint64_t)m->hdr[3] << 8 | m->hdr[4];
        }
    }
}

/* The request's metrics and access log line. */
static void x_record(struct hc_x *x)
{
    struct wp_tunnel *t = x->d->t;
    const struct service *svc = x->dec.kind == WP_DECIDE_FORWARD && x->dec.svc ? x->dec.svc : t->svc;
    char fl[WP_FLAGS_MAX];
    const char *flags = wp_try_flags(&x->tries, x->flags, fl);
    if (x->delayed) flags = wp_flags_add(flags, WP_RF_DI, fl, sizeof(fl)); /* a set: DI stays */
    wp_record_request(&(struct wp_record){
        .t = t,
        .method = x->method,
        .path = x->path,
        .protocol = "HTTP/2",
        .authority = x->authority,
        .user_agent = *x->user_agent ? x->user_agent : NULL,
        .request_id = x->request_id,
        .dst_wl = *x->upstream_host ? x->upstream_ep.wl : NULL,
        .dst_svc = svc,
        .status = x->status,
        .grpc_status = x->grpc_status,
        .grpc = x->grpc,
        .flags = flags,
        .details = x->dec.kind == WP_DECIDE_LOCAL ? x->dec.details : x->status ? "via_upstream" : NULL,
        .req_wire = x->req_head_bytes + x->bytes_received,
        .resp_wire = x->resp_head_bytes + x->bytes_sent,
        .body_in = x->bytes_received,
        .body_out = x->bytes_sent,
        .start_wall = x->start_wall,
        .duration_ms = loop_now(t->w->loop) - x->start_mono,
        .upstream_ms = x->upstream_ms,
        .upstream_host = *x->upstream_host ? x->upstream_host : NULL,
        .route_name = x->dec.route_name,
        .req_msgs = x->req_msgs.msgs,
        .resp_msgs = x->resp_msgs.msgs,
    });
}

static void x_unref(struct hc_x *x)
{
    if (--x->refs) return;
    struct loop *l = x->d->t->w->loop;
    if (x->counted) wp_endpoint_end(x->upstream_ep.wl);
    /* DestinationRule; a gRPC response counts by its grpc-status for outlier detection, as Envoy's router */
    wp_request_done(&x->dec, x->counted ? x->upstream_ep.wl : NULL,
                    x->grpc && x->grpc_status >= 0 ? l7_grpc_to_http_status(x->grpc_status) : x->status);
    wp_tries_end(&x->tries); /* a retry it holds (maxRetries) */
    if (timer_armed(&x->timer)) timer_stop(l, &x->timer);
    if (timer_armed(&x->retry_timer)) timer_stop(l, &x->retry_timer);
    if (timer_armed(&x->try_timer)) timer_stop(l, &x->try_timer);
    if (timer_armed(&x->delay_timer)) timer_stop(l, &x->delay_timer);
    x_record(x);
    bq_free(&x->d2u);
    bq_free(&x->u2d);
    bq_free(&x->replay);
    free(x->req_hdrs);
    free(x->req_hdr_mem);
    free(x->req_trailers);
    free(x->req_trailer_mem);
    free(x);
}

/* Drops the request bytes waiting for an upstream that will not take them, crediting the client for them. */
static void drop_d2u(struct hc_x *x)
{
    if (x->ds && x->d2u.bytes > x->credited_head) h2_stream_consume(x->ds, x->d2u.bytes - x->credited_head);
    x->credited_head = 0;
    bq_free(&x->d2u);
    bq_free(&x->replay);
    x->replay_lost = true;
}

/* Envoy's Grpc::Utility::httpToGrpcStatus (envoyproxy/envoy source/common/grpc/status.cc, after grpc's
 * doc/http-grpc-status-mapping.md): the grpc-status of a local reply to a gRPC request. */
static int http_to_grpc_status(int status)
{
    switch (status) {
    case 400: return 13; /* INTERNAL */
    case 401: return 16; /* UNAUTHENTICATED */
    case 403: return 7;  /* PERMISSION_DENIED */
    case 404: return 12; /* UNIMPLEMENTED */
    case 429:
    case 502:
    case 503:
    case 504: return 14; /* UNAVAILABLE */
    default: return 2;   /* UNKNOWN */
    }
}

/* grpc-message is percent-encoded (gRPC's PROTOCOL-HTTP2.md: bytes outside 0x20-0x7E, and '%'), as Envoy's
 * PercentEncoding::encode does it. Cut at the buffer (local reply texts are short and ASCII). */
static void grpc_message_encode(const char *in, char *out, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)in; *p && o + 4 <= n; p++) {
        if (*p < 0x20 || *p > 0x7e || *p == '%') {
            out[o++] = '%';
            out[o++] = hex[*p >> 4];
            out[o++] = hex[*p & 15];
        } else {
            out[o++] = (char)*p;
        }
    }
    out[o < n ? o : n - 1] = '\0';
}

/* A local reply on the downstream stream (no upstream stream yet, or it failed before its response). To a
 * gRPC request it is Envoy's trailers-only response (envoyproxy/envoy source/common/http/utility.cc
 * sendLocalReply): :status 200, content-type application/grpc, grpc-status mapped from the HTTP status and
 * the text as grpc-message, so a gRPC client sees PERMISSION_DENIED "RBAC: access denied" rather than a bare
 * HTTP 403 its library must guess at. Telemetry then reports what went on the wire, as Envoy's stream info
 * takes the response code from the encoded :status (response_code 200, grpc_response_status the mapped code). */
static void x_local_reply(struct hc_x *x, int status, const char *body, const char *flags)
{
    x->status = status;
    x->flags = flags;
    if (!x->ds || x->responded) return;
    x->responded = true;
    bool decided = x->dec.kind == WP_DECIDE_LOCAL;
    if (x->grpc) {
        char code[16], msg[HC_GRPC_MESSAGE_MAX];
        /* a VirtualService fault abort's grpcStatus, else Envoy's mapping */
        x->grpc_status =
            decided && x->dec.grpc_status >= 0 ? x->dec.grpc_status : http_to_grpc_status(status);
        x->status = 200;
        snprintf(code, sizeof(code), "%d", x->grpc_status);
        grpc_message_encode(body, msg, sizeof(msg));
        struct h2_header g[4] = {{"content-type", "application/grpc"}, {"grpc-status", code}};
        size_t ng = 2;
        if (*msg) g[ng++] = (struct h2_header){"grpc-message", msg};
        /* RequestAuthentication's 401: jwt_authn's header modifier runs for a gRPC local reply too */
        if (*x->dec.www_authenticate) g[ng++] = (struct h2_header){"www-authenticate", x->dec.www_authenticate};
        if (h2_stream_respond(x->ds, 200, g, ng, 0) == 0) x->u2d.eof = true;
        return;
    }
    char len[24];
    snprintf(len, sizeof(len), "%zu", strlen(body));
    struct h2_header h[3 + 2 * L7_MAX_HEADER_MODS] = {{"content-type", "text/plain"},
                                                      {"content-length", len}};
    size_t nh = 2;
    if (*x->dec.www_authenticate) /* RequestAuthentication's 401 */
        h[nh++] = (struct h2_header){"www-authenticate", x->dec.www_authenticate};
    else if (!strcmp(flags, "UO")) /* a circuit breaker's overflow: Envoy's router adds it */
        h[nh++] = (struct h2_header){"x-envoy-overloaded", "true"};
    if (decided && x->dec.n_resp_mods) { /* a decided local answer carries the rule's response headers */
        struct http1_hdr hv[3 + 2 * L7_MAX_HEADER_MODS];
        for (size_t i = 0; i < nh; i++)
            hv[i] = (struct http1_hdr){h[i].name, strlen(h[i].name), h[i].value, strlen(h[i].value)};
        wp_apply_mods(x->dec.resp_mods, x->dec.n_resp_mods, hv, &nh, sizeof(hv) / sizeof(hv[0]), name_eq);
        for (size_t i = 0; i < nh; i++)
            h[i] = (struct h2_header){hv[i].name, hv[i].value};
    }
    if (bq_push(&x->u2d, (const uint8_t *)body, strlen(body)) < 0 ||
        h2_stream_respond(x->ds, status, h, nh, *body ? H2_BODY : 0) < 0)
        return;
    x->u2d.eof = true;
    x->bytes_sent = strlen(body);
    if (*body) h2_stream_resume(x->ds);
}

/* The route's timeout passed before the response ended: Envoy's 504 `upstream request timeout` (UT) before
 * the response began, else the stream is reset. */
static void timeout_cb(struct timer *tm)
{
    struct hc_x *x = container_of(tm, struct hc_x, timer);
    struct loop *l = x->d->t->w->loop;
    bool backoff = timer_armed(&x->retry_timer); /* between tries: the back-off holds a reference */
    if (backoff) timer_stop(l, &x->retry_timer);
    if (timer_armed(&x->try_timer)) timer_stop(l, &x->try_timer);
    if (timer_armed(&x->timer)) timer_stop(l, &x->timer); /* called for a per-try timeout too */
    x->retrying = false;
    struct h2_stream *us = x->us;
    bool started = x->responded;
    x->flags = "UT";
    if (!started) {
        drop_d2u(x);
        x_local_reply(x, 504, "upstream request timeout", "UT");
    } else if (x->ds) {
        h2_stream_end(x->ds, H2_END_LOCAL, NGHTTP2_CANCEL, "upstream request timeout");
    }
    /* us_end sees responded set (the local reply) and leaves the downstream alone */
    if (us) h2_stream_end(us, H2_END_LOCAL, NGHTTP2_CANCEL, "upstream request timeout");
    if (backoff) x_unref(x);
}

/* ---- downstream stream ---- */

static size_t ds_pull(struct h2_stream *s, void *ud, const uint8_t **data, bool *eof)
{
    struct hc_x *x = ud;
    size_t n = bq_peek(&x->u2d, data);
    if (n) return n;
    if (x->u2d.eof) {
        *eof = true;
        return 0;
    }
    x->ds_parked = true;
    return 0;
}

static void ds_sent(struct h2_stream *s, void *ud, size_t n)
{
    (void)s;
    struct hc_x *x = ud;
    bq_drop(&x->u2d, n);
    if (x->us) h2_stream_consume(x->us, n); /* the client took them: credit the upstream */
}

static void ds_data(struct h2_stream *s, void *ud, const uint8_t *data, size_t len)
{
    struct hc_x *x = ud;
    x->bytes_received += len;
    if (x->grpc) count_msgs(&x->req_msgs, data, len);
    wp_h2c_mirror_data(x->mirror, data, len);
    if (x->routed && !x->us && !x->retrying) { /* answered locally or the upstream is gone: drop */
        h2_stream_consume(s, len);
        return;
    }
    if (bq_push(&x->d2u, data, len) < 0) {
        h2_stream_end(s, H2_END_NO_MEMORY, NGHTTP2_INTERNAL_ERROR, "out of memory");
        return;
    }
    if (!x->replay_lost && (x->replay.bytes + len > HC_REPLAY_MAX || bq_push(&x->replay, data, len) < 0)) {
        bq_free(&x->replay); /* past the buffer: this request is not retried */
        x->replay_lost = true;
    }
    if (x->us && x->us_parked) {
        x->us_parked = false;
        h2_stream_resume(x->us);
    }
}

static void ds_eof(struct h2_stream *s, void *ud)
{
    (void)s;
    struct hc_x *x = ud;
    x->d2u.eof = true;
    x->req_eof = true;
    wp_h2c_mirror_eof(x->mirror);
    if (x->us && x->us_parked) {
        x->us_parked = false;
        h2_stream_resume(x->us);
    }
}

static void ds_headers(struct h2_stream *s, void *ud, const struct h2_headers *h)
{
    (void)s;
    struct hc_x *x = ud;
    /* request trailers: forwarded after the body (gRPC clients rarely send them), to the shadow too */
    if (h->kind != H2_HEADERS_TRAILERS) return;
    wp_h2c_mirror_trailers(x->mirror, h->headers, h->n_headers);
    if (copy_headers(h->headers, h->n_headers, &x->req_trailers, &x->req_trailer_mem) < 0)
        x->replay_lost = true; /* a retry could not send them */
    else
        x->n_req_trailers = h->n_headers;
    if (x->us) (void)h2_stream_trailers(x->us, h->headers, h->n_headers);
}

static void ds_end(struct h2_stream *s, void *ud, const struct h2_end *e)
{
    (void)s;
    struct hc_x *x = ud;
    x->ds = NULL;
    wp_h2c_mirror_detach(x->mirror); /* no more of the request comes */
    if (e->reason != H2_END_OK && x->us) {
        if (!x->flags) x->flags = "DC";
        h2_stream_end(x->us, H2_END_LOCAL, NGHTTP2_CANCEL, "the client reset its stream");
    }
    x_unref(x);
}

static const struct h2_stream_ops ds_ops = {.on_headers = ds_headers,
                                            .on_data = ds_data,
                                            .on_eof = ds_eof,
                                            .pull = ds_pull,
                                            .sent = ds_sent,
                                            .on_end = ds_end};

/* ---- upstream stream ---- */

static bool x_retry(struct hc_x *x, const struct l7_try *t);

static size_t us_pull(struct h2_stream *s, void *ud, const uint8_t **data, bool *eof)
{
    (void)s;
    struct hc_x *x = ud;
    size_t n = bq_peek(&x->d2u, data);
    if (n) return n;
    if (x->d2u.eof) {
        *eof = true;
        return 0;
    }
    x->us_parked = true;
    return 0;
}

static void us_sent(struct h2_stream *s, void *ud, size_t n)
{
    (void)s;
    struct hc_x *x = ud;
    bq_drop(&x->d2u, n);
    size_t skip = x->credited_head < n ? x->credited_head : n; /* a retry's replayed bytes: credited once */
    x->credited_head -= skip;
    if (x->ds && n > skip) h2_stream_consume(x->ds, n - skip);
}

static void us_headers(struct h2_stream *s, void *ud, const struct h2_headers *h)
{
    (void)s;
    struct hc_x *x = ud;
    if (!x->ds) return;
    if (h->kind == H2_HEADERS_TRAILERS) {
        if (!x->responded) return;
        for (size_t i = 0; i < h->n_headers; i++)
            if (!strcmp(h->headers[i].name, "grpc-status")) x->grpc_status = atoi(h->headers[i].value);
        /* the session sends them after the body, once pull reports its end */
        (void)h2_stream_trailers(x->ds, h->headers, h->n_headers);
        x->u2d.eof = true;
        if (x->ds_parked) {
            x->ds_parked = false;
            h2_stream_resume(x->ds);
        }
        return;
    }
    if (!x->responded) {
        /* A retriable answer (its status, or a trailers-only gRPC status) is not forwarded: its stream is
         * reset and another try comes. */
        struct l7_try t = {.end = L7_TRY_RESPONSE, .status = h->status, .grpc_status = -1};
        for (size_t i = 0; i < h->n_headers; i++)
            if (!strcmp(h->headers[i].name, "grpc-status")) t.grpc_status = atoi(h->headers[i].value);
        if (x_retry(x, &t)) {
            x->abandoning = true;
            h2_stream_end(s, H2_END_LOCAL, NGHTTP2_CANCEL, "retried");
            return;
        }
    }
    struct http1_hdr mv[HC_MAX_HEADERS + 2 + WP_MAX_MODS * 8];
    size_t n = 0;
    for (size_t i = 0; i < h->n_headers && n < HC_MAX_HEADERS; i++) {
        mv[n++] = (struct http1_hdr){h->headers[i].name, strlen(h->headers[i].name), h->headers[i].value,
                                     strlen(h->headers[i].value)};
        x->resp_head_bytes += mv[n - 1].name_len + mv[n - 1].value_len + 32; /* HPACK's accounting size */
        if (!strcmp(h->headers[i].name, "grpc-status")) x->grpc_status = atoi(h->headers[i].value);
    }
    wp_apply_mods(x->dec.resp_mods, x->dec.n_resp_mods, mv, &n, sizeof(mv) / sizeof(mv[0]) - 1, name_eq);
    struct h2_header hv[HC_MAX_HEADERS + 2 + WP_MAX_MODS * 8];
    for (size_t i = 0; i < n; i++)
        hv[i] = (struct h2_header){mv[i].name, mv[i].value};
    char ust[24];
    snprintf(ust, sizeof(ust), "%llu", (unsigned long long)(loop_now(x->d->t->w->loop) - x->up_start_mono));
    hv[n++] = (struct h2_header){"x-envoy-upstream-service-time", ust};
    x->status = h->status;
    x->upstream_ms = (int64_t)(loop_now(x->d->t->w->loop) - x->up_start_mono);
    x->responded = true;
    bq_free(&x->replay); /* no retry once the response is on its way */
    x->replay_lost = true;
    if (timer_armed(&x->try_timer)) timer_stop(x->d->t->w->loop, &x->try_timer);
    if (h2_stream_respond(x->ds, h->status, hv, n, h->end_stream ? 0 : H2_BODY) < 0) return;
    if (h->end_stream) x->u2d.eof = true;
}

static void us_data(struct h2_stream *s, void *ud, const uint8_t *data, size_t len)
{
    struct hc_x *x = ud;
    x->bytes_sent += len;
    if (x->grpc) count_msgs(&x->resp_msgs, data, len);
    if (!x->ds) {
        h2_stream_consume(s, len);
        return;
    }
    if (bq_push(&x->u2d, data, len) < 0) {
        h2_stream_end(s, H2_END_NO_MEMORY, NGHTTP2_INTERNAL_ERROR, "out of memory");
        return;
    }
    if (x->ds_parked) {
        x->ds_parked = false;
        h2_stream_resume(x->ds);
    }
}

static void us_eof(struct h2_stream *s, void *ud)
{
    (void)s;
    struct hc_x *x = ud;
    x->u2d.eof = true;
    if (x->ds && x->ds_parked) {
        x->ds_parked = false;
        h2_stream_resume(x->ds);
    }
}

static void us_end(struct h2_stream *s, void *ud, const struct h2_end *e)
{
    struct hc_x *x = ud;
    if (x->us == s) x->us = NULL;
    if (x->abandoning) { /* reset for a retry, which is on its way */
        x->abandoning = false;
        x_unref(x);
        return;
    }
    if (e->reason != H2_END_OK && x->ds && !x->responded) {
        struct l7_try t = {.end = e->reason == H2_END_REFUSED          ? L7_TRY_REFUSED_STREAM
                                  : x->u && x->u->tunnel_ok ? L7_TRY_RESET
                                                            : L7_TRY_CONNECT_FAILURE,
                           .grpc_status = -1};
        if (x_retry(x, &t)) {
            x_unref(x);
            return;
        }
    }
    drop_d2u(x);
    if (e->reason != H2_END_OK && x->ds) {
        if (!x->responded) {
            x_local_reply(x, 503,
                          x->u && x->u->timed_out ? WP_CONNECT_TIMEOUT_BODY
                                                  : "upstream connect error or disconnect/reset before "
                                                    "headers. reset reason: connection failure",
                          "UF");
        } else {
            x->flags = "UR";
            h2_stream_end(x->ds, H2_END_LOCAL, e->code ? e->code : NGHTTP2_INTERNAL_ERROR, "upstream reset");
        }
    }
    x_unref(x);
}

static const struct h2_stream_ops us_ops = {.on_headers = us_headers,
                                            .on_data = us_data,
                                            .on_eof = us_eof,
                                            .pull = us_pull,
                                            .sent = us_sent,
                                            .on_end = us_end};

/* ---- upstream connections ---- */

static void settings(struct h2_settings *set, bool server)
{
    *set = (struct h2_settings){
        .log_name = "waypoint::h2c",
        .max_concurrent_streams = server ? HC_MAX_STREAMS : 0,
        .max_open_streams = server ? 0 : HC_MAX_STREAMS,
        .stream_window = HC_STREAM_WINDOW,
        .stream_window_max = HC_STREAM_WINDOW_MAX,
        .conn_window = HC_CONN_WINDOW,
        .conn_window_max = HC_CONN_WINDOW_MAX,
        .max_header_list = HC_MAX_HEADER_BYTES,
        .max_headers = HC_MAX_HEADERS,
        .max_header_bytes = HC_MAX_HEADER_BYTES,
        .handshake_timeout_ms = 10000,
        .max_unanswered = server ? HC_MAX_STREAMS : 0,
        .early_reset_burst = server ? 1000 : 0,
        .early_reset_rate = server ? 100 : 0,
        .linger_ms = 1000,
        .stream_user_size = sizeof(struct hc_x *),
    };
}

static unsigned ep_bucket(const struct lb_choice *c)
{
    return (unsigned)((ip_hash(&c->ip) ^ c->port) % HC_IDLE_BUCKETS);
}

static void up_unlist(struct hc_up *u)
{
    if (!u->listed) return;
    u->listed = false;
    for (struct hc_up **pp = &up_table[ep_bucket(&u->ep)]; *pp; pp = &(*pp)->hnext)
        if (*pp == u) {
            *pp = u->hnext;
            return;
        }
}

static void up_closed(struct h2_conn *c, void *ud, const struct h2_end *e)
{
    (void)c;
    (void)e;
    struct hc_up *u = ud;
    up_unlist(u);
    if (timer_armed(&u->connect_timer)) timer_stop(u->w->loop, &u->connect_timer);
    if (timer_armed(&u->idle_timer)) timer_stop(u->w->loop, &u->idle_timer);
    /* the internal connection's end closed with the session: the tunnel sees EOF and ends */
    free(u->uid);
    free(u);
}

static const struct h2_conn_ops up_conn_ops = {.on_closed = up_closed};

static void up_tunnel_done(struct hbone_stream *s, void *ud, const struct hbone_result *r)
{
    (void)s;
    (void)r;
    (void)ud; /* the session sees its socket close and ends its streams (us_end: 503 UF or reset) */
}

static void up_tunnel_response(struct hbone_stream *s, void *ud, int status)
{
    (void)s;
    struct hc_up *u = ud;
    if (timer_armed(&u->connect_timer)) timer_stop(u->w->loop, &u->connect_timer);
    if (status == 200) u->tunnel_ok = true;
}

/* connectionPool.tcp.connectTimeout: the tunnel did not answer in time; its streams end as connect failures
 * (503 UF, reset reason "connection timeout", retried as Envoy's connect_timeout is). */
static void up_connect_timeout_cb(struct timer *tm)
{
    struct hc_up *u = container_of(tm, struct hc_up, connect_timer);
    if (u->tunnel_ok) return;
    u->timed_out = true;
    up_unlist(u);
    h2_conn_close(u->c, H2_END_CONNECT_FAILED, "connection timeout");
}

/* connectionPool.http.idleTimeout: closed once it has had no stream for idle_ms (checked when the timer
 * fires, re-armed for the rest otherwise). */
static void up_idle_timeout_cb(struct timer *tm)
{
    struct hc_up *u = container_of(tm, struct hc_up, idle_timer);
    uint64_t now = loop_now(u->w->loop);
    if (h2_conn_streams(u->c)) u->last_used = now;
    if (now - u->last_used >= u->idle_ms) {
        up_unlist(u);
        h2_conn_close(u->c, H2_END_LOCAL, "idle timeout");
        return;
    }
    timer_start(u->w->loop, &u->idle_timer, u->idle_ms - (now - u->last_used));
}

/* A request of d opens a stream on u: its pool limits apply; at maxRequestsPerConnection the session takes
 * no more streams and is drained (GOAWAY, closed when its streams end). */
static void up_take(struct hc_up *u, const struct wp_decision *d)
{
    struct wp_conn_limits l = wp_try_conn_limits(d);
    u->last_used = loop_now(u->w->loop);
    if (!u->requests++) {
        u->max_requests = l.max_requests;
        u->idle_ms = l.idle_ms;
        if (!u->tunnel_ok) timer_start(u->w->loop, &u->connect_timer, l.connect_timeout_ms);
        if (u->idle_ms) timer_start(u->w->loop, &u->idle_timer, u->idle_ms);
    }
    if (u->max_requests && u->requests >= u->max_requests) {
        up_unlist(u);
        h2_conn_drain(u->c);
    }
}

static const struct hbone_stream_ops up_tunnel_ops = {.on_done = up_tunnel_done, .on_response = up_tunnel_response};

static struct hc_up *up_get(struct wp_worker *w, const struct lb_choice *ep, const char **err)
{
    for (struct hc_up *u = up_table[ep_bucket(ep)]; u; u = u->hnext)
        if (u->ep.port == ep->port && ip_equal(&u->ep.ip, &ep->ip) && !strcmp(u->uid, ep->wl->uid) &&
            h2_conn_usable(u->c) && h2_conn_streams(u->c) < h2_conn_max_streams(u->c))
            return u;
    int sv[2];
    if (wp_socketpair(sv) < 0) {
        *err = "no socket";
        return NULL;
    }
    struct hc_up *u = calloc(1, sizeof(*u));
    if (!u) {
        close(sv[0]);
        close(sv[1]);
        *err = "out of memory";
        return NULL;
    }
    u->w = w;
    u->ep = *ep;
    u->ep.wl = NULL;
    u->connect_timer.cb = up_connect_timeout_cb;
    u->idle_timer.cb = up_idle_timeout_cb;
    if (!(u->uid = strdup(ep->wl->uid))) {
        close(sv[0]);
        close(sv[1]);
        free(u);
        *err = "out of memory";
        return NULL;
    }
    /* The tunnel first: its socket end must exist before the session writes its preface. */
    u->hs = wp_upstream_open(w, ep, sv[0], &up_tunnel_ops, u, err);
    if (!u->hs) {
        close(sv[1]);
        free(u->uid);
        free(u);
        return NULL;
    }
    struct h2_settings set;
    settings(&set, false);
    u->c = h2_client_new(w->loop, sv[1], NULL, NULL, &set, &up_conn_ops, u);
    if (!u->c) {
        free(u->uid);
        free(u); /* sv[1] closed by h2_client_new; the tunnel sees EOF */
        *err = "out of memory";
        return NULL;
    }
    unsigned b = ep_bucket(ep);
    u->hnext = up_table[b];
    up_table[b] = u;
    u->listed = true;
    return u;
}

/* up_get for a request of d: a session opened under other connectionPool settings takes no more streams (it
 * is drained), as Envoy drains a cluster's pools when its settings change. */
static struct hc_up *up_get_for(struct wp_worker *w, const struct lb_choice *ep, const struct wp_decision *d,
                                const char **err)
{
    struct wp_conn_limits l = wp_try_conn_limits(d);
    for (;;) {
        struct hc_up *u = up_get(w, ep, err);
        if (!u || !u->requests || (u->max_requests == l.max_requests && u->idle_ms == l.idle_ms)) return u;
        up_unlist(u);
        h2_conn_drain(u->c);
    }
}

struct h2_conn *wp_h2c_upstream(struct wp_worker *w, const struct lb_choice *ep, const char **err)
{
    struct hc_up *u = up_get(w, ep, err);
    return u ? u->c : NULL;
}

/* ---- downstream connection ---- */

/* RequestMirror: the shadow of a request whose own upstream stream is open (as Envoy's router shadows once the
 * request has an upstream), given the body that arrived before the request was routed. */
static void start_mirror(struct hc_x *x, const struct h2_header *out, size_t no, bool body)
{
    if (wp_h2c_mirror_start(&x->mirror, x->d->t, &x->dec, out, no, body) < 0) return;
    for (struct bq_chunk *k = x->d2u.head; k && x->mirror; k = k->next)
        wp_h2c_mirror_data(x->mirror, k->data + k->off, k->len - k->off);
    if (body && x->d2u.eof) wp_h2c_mirror_eof(x->mirror);
}

static void down_stream(struct h2_conn *c, void *ud, struct h2_stream *s)
{
    (void)c;
    struct hc_down *d = ud;
    struct hc_x *x = calloc(1, sizeof(*x));
    if (!x) {
        h2_stream_end(s, H2_END_NO_MEMORY, NGHTTP2_INTERNAL_ERROR, "out of memory");
        return;
    }
    x->refs = 1; /* the downstream stream's */
    x->d = d;
    x->ds = s;
    x->start_mono = loop_now(d->t->w->loop);
    x->start_wall = wp_now_ms();
    x->grpc_status = -1;
    x->upstream_ms = -1;
    *(struct hc_x **)h2_stream_user(s) = x; /* for down_request */
    h2_stream_set_ops(s, &ds_ops, x);
}

static void delay_cb(struct timer *tm);

/* ---- tries and retries ---- */

/* Starts a try: an endpoint (wp_try_pick), an upstream stream with the request's headers, the body so far (d2u), the
 * trailers if they came. Returns 0 when the try is on its way or a retry is scheduled, -1 when the request
 * was answered locally. */
static int x_try_start(struct hc_x *x)
{
    struct wp_tunnel *t = x->d->t;
    struct lb_choice ep;
    if (wp_try_pick(t, &x->dec, &x->tries, &ep) < 0) {
        drop_d2u(x);
        x_local_reply(x, 503, "no healthy upstream", "UH");
        return -1;
    }
    char ipb[IP_STRLEN];
    snprintf(x->upstream_host, sizeof(x->upstream_host), "envoy://connect_originate/%s:%u",
             ip_format(&ep.ip, ipb, sizeof(ipb)), ep.port);
    x->upstream_ep = ep;
    const char *err = "failed";
    struct hc_up *u = up_get_for(t->w, &ep, &x->dec, &err);
    bool body = !x->req_eof || x->d2u.bytes || x->n_req_trailers;
    struct h2_stream *us = u ? h2_stream_open(u->c, x->req_hdrs, x->n_req_hdrs, body ? H2_BODY : 0, &us_ops, x)
                             : NULL;
    if (!us) {
        LOG_LIMITED(LOG_WARN, LOG_H2C, "upstream %s: %s", x->upstream_host, err);
        if (x_retry(x, &(struct l7_try){.end = L7_TRY_CONNECT_FAILURE, .grpc_status = -1})) return 0;
        drop_d2u(x); /* what arrived before the request was handed over */
        x_local_reply(x, 503,
                      "upstream connect error or disconnect/reset before headers. reset reason: connection failure",
                      "UF");
        return -1;
    }
    x->u = u;
    x->us = us;
    x->us_parked = false;
    up_take(u, &x->dec);
    x->refs++;
    x->up_start_mono = loop_now(t->w->loop);
    wp_endpoint_begin(ep.wl); /* ended in x_unref, or when a retry abandons the try */
    x->counted = true;
    if (x->n_req_trailers) (void)h2_stream_trailers(us, x->req_trailers, x->n_req_trailers);
    if (x->dec.retry->per_try_timeout_ms) timer_start(t->w->loop, &x->try_timer, x->dec.retry->per_try_timeout_ms);
    return 0;
}

static void retry_cb(struct timer *tm)
{
    struct hc_x *x = container_of(tm, struct hc_x, retry_timer);
    x->retrying = false;
    if (x->replay_lost || !x->ds) {
        /* the body went past the buffer meanwhile, or the client left: the request cannot be sent again */
        drop_d2u(x);
        x_local_reply(x, 503,
                      "upstream connect error or disconnect/reset before headers. reset reason: connection failure",
                      "UF");
        x_unref(x);
        return;
    }
    /* The next try sends the whole body kept so far: what the last try took was credited already. */
    size_t unsent = x->d2u.bytes;
    bq_free(&x->d2u);
    for (struct bq_chunk *k = x->replay.head; k; k = k->next)
        if (bq_push(&x->d2u, k->data + k->off, k->len - k->off) < 0) {
            x->replay_lost = true;
            retry_cb(tm);
            return;
        }
    x->d2u.eof = x->req_eof;
    x->credited_head = x->d2u.bytes - unsent;
    (void)x_try_start(x);
    x_unref(x); /* the back-off's reference */
}

/* After a try ended as t: schedules the next one when the policy retries t, attempts are left and the request
 * can be replayed. Returns true when a retry is on its way (it holds a reference on x meanwhile). */
static bool x_retry(struct hc_x *x, const struct l7_try *t)
{
    struct wp_worker *w = x->d->t->w;
    if (x->responded || !x->ds || x->replay_lost || !wp_try_again(&x->dec, &x->tries, t)) return false;
    if (x->counted) /* outlier detection sees each try */
        wp_try_done(&x->dec, x->upstream_ep.wl,
                    t->end != L7_TRY_RESPONSE         ? (t->end == L7_TRY_PER_TRY_TIMEOUT ? 504 : 503)
                    : x->grpc && t->grpc_status >= 0 ? l7_grpc_to_http_status(t->grpc_status)
                                                      : t->status);
    if (x->counted) wp_endpoint_end(x->upstream_ep.wl);
    x->counted = false;
    if (timer_armed(&x->try_timer)) timer_stop(w->loop, &x->try_timer);
    x->retrying = true;
    x->refs++;
    timer_start(w->loop, &x->retry_timer, wp_try_backoff_ms(w, &x->dec, &x->tries));
    return true;
}

/* perTryTimeout: the try's stream is reset; retried as Envoy judges it (a 504), else the request's 504 UT. */
static void try_timeout_cb(struct timer *tm)
{
    struct hc_x *x = container_of(tm, struct hc_x, try_timer);
    if (x_retry(x, &(struct l7_try){.end = L7_TRY_PER_TRY_TIMEOUT, .grpc_status = -1})) {
        if (x->us) {
            x->abandoning = true;
            h2_stream_end(x->us, H2_END_LOCAL, NGHTTP2_CANCEL, "per try timeout");
        }
        return;
    }
    timeout_cb(&x->timer);
}

static void down_request(struct h2_stream *s, void *ud, const struct h2_request *req)
{
    struct hc_down *d = ud;
    struct wp_tunnel *t = d->t;
    struct hc_x *x = *(struct hc_x **)h2_stream_user(s); /* set by down_stream */
    x->routed = true;
    x->timer.cb = timeout_cb;
    x->retry_timer.cb = retry_cb;
    x->try_timer.cb = try_timeout_cb;
    snprintf(x->method, sizeof(x->method), "%s", req->method);
    snprintf(x->path, sizeof(x->path), "%s", req->path);
    snprintf(x->authority, sizeof(x->authority), "%s", req->authority);
    /* Regular headers as the route sees and modifies them (all NUL-terminated: the session's, the config's
     * or ours). */
    struct http1_hdr hv[HC_MAX_HEADERS + 4 + WP_MAX_MODS * 8];
    struct l7_header lh[HC_MAX_HEADERS];
    const size_t cap = sizeof(hv) / sizeof(hv[0]);
    size_t n = 0, nl = 0;
    bool have_rid = false, have_xfp = false;
    for (size_t i = 0; i < req->n_headers && n < HC_MAX_HEADERS; i++) {
        const struct h2_header *e = &req->headers[i];
        if (!strcmp(e->name, "x-request-id")) {
            snprintf(x->request_id, sizeof(x->request_id), "%s", e->value);
            have_rid = true;
        } else if (!strcmp(e->name, "x-forwarded-proto")) {
            have_xfp = true;
        } else if (!strcmp(e->name, "content-type") && l7_grpc_content_type(e->value)) {
            x->grpc = true;
        } else if (!strcmp(e->name, "user-agent")) {
            snprintf(x->user_agent, sizeof(x->user_agent), "%s", e->value);
        }
        x->req_head_bytes += strlen(e->name) + strlen(e->value) + 32;
        hv[n++] = (struct http1_hdr){e->name, strlen(e->name), e->value, strlen(e->value)};
        lh[nl++] = (struct l7_header){e->name, strlen(e->name), e->value, strlen(e->value)};
    }
    if (!have_rid) {
        wp_request_id(t->w, x->request_id);
        hv[n++] = (struct http1_hdr){"x-request-id", 12, x->request_id, strlen(x->request_id)};
    }
    if (!have_xfp) hv[n++] = (struct http1_hdr){"x-forwarded-proto", 17, "http", 4};
    struct l7_request lr = {.method = req->method,
                            .path = req->path,
                            .path_len = strlen(req->path),
                            .authority = req->authority,
                            .headers = lh,
                            .n_headers = nl,
                            .grpc = x->grpc,
                            .scheme = req->scheme};
    wp_decide(t, &lr, &x->dec);
    if (x->dec.kind == WP_DECIDE_LOCAL) {
        drop_d2u(x);
        if (x->dec.delay_ms) { /* a VirtualService fault delay first (delay_cb answers; DATA is dropped) */
            x->flags = "DI";
            x->delayed = true;
            x->delay_timer.cb = delay_cb;
            timer_start(t->w->loop, &x->delay_timer, x->dec.delay_ms);
            return;
        }
        x_local_reply(x, x->dec.status, x->dec.body, x->dec.flags);
        return;
    }
    wp_apply_mods(x->dec.req_mods, x->dec.n_req_mods, hv, &n, cap, name_eq);
    struct h2_header out[HC_MAX_HEADERS + 8 + WP_MAX_MODS * 8];
    size_t no = 0;
    out[no++] = (struct h2_header){":method", req->method};
    out[no++] = (struct h2_header){":scheme", *req->scheme ? req->scheme : "http"};
    out[no++] = (struct h2_header){":authority", x->dec.rewrite_authority ? x->dec.authority : req->authority};
    out[no++] = (struct h2_header){":path", x->dec.rewrite_path ? x->dec.path : req->path};
    for (size_t i = 0; i < n; i++)
        out[no++] = (struct h2_header){hv[i].name, hv[i].value};

    int prc = wp_lb_prepare(t, &x->dec, &lr, true); /* DestinationRule: subset, hash key, connection pool */
    if (prc < 0) {
        drop_d2u(x);
        if (prc == -ESRCH)
            x_local_reply(x, 503, "", "NC");
        else
            x_local_reply(x, 503, WP_OVERFLOW_BODY, "UO");
        return;
    }
    if (copy_headers(out, no, &x->req_hdrs, &x->req_hdr_mem) < 0) {
        drop_d2u(x);
        x_local_reply(x, 503, "no healthy upstream", "UH");
        return;
    }
    x->n_req_hdrs = no;
    if (req->end_stream) x->d2u.eof = x->req_eof = true;
    if (x->dec.delay_ms) { /* a VirtualService fault delay: the first try starts in delay_cb */
        /* The shadow leaves when the delay is over (delay_cb), as Envoy's router shadows only what passed the
         * fault filter before it. */
        x->mirror_body = !req->end_stream;
        x->retrying = true; /* DATA waits in d2u and the replay, as between tries */
        x->flags = "DI";
        x->delayed = true;
        x->delay_timer.cb = delay_cb;
        timer_start(t->w->loop, &x->delay_timer, x->dec.delay_ms);
        return;
    }
    if (x->dec.timeout_ms) timer_start(t->w->loop, &x->timer, x->dec.timeout_ms);
    if (x_try_start(x) < 0) return;
    if (x->dec.mirror_svc && x->us) start_mirror(x, out, no, !req->end_stream);
}

/* A VirtualService fault delay is over (Envoy's fault filter runs before the router): a decided local answer
 * is sent now, or the first try starts, with the route's timeout from now. */
static void delay_cb(struct timer *tm)
{
    struct hc_x *x = container_of(tm, struct hc_x, delay_timer);
    x->retrying = false;
    if (!x->ds) return; /* the client went away meanwhile */
    if (x->dec.kind == WP_DECIDE_LOCAL) {
        x_local_reply(x, x->dec.status, x->dec.body, x->dec.flags);
        return;
    }
    if (x->dec.timeout_ms) timer_start(x->d->t->w->loop, &x->timer, x->dec.timeout_ms);
    if (x_try_start(x) < 0) return;
    if (x->dec.mirror_svc && x->us) start_mirror(x, x->req_hdrs, x->n_req_hdrs, x->mirror_body);
}

static void down_closed(struct h2_conn *c, void *ud, const struct h2_end *e)
{
    (void)c;
    (void)e;
    struct hc_down *d = ud;
    wp_tunnel_unref(d->t);
    free(d);
}

static const struct h2_conn_ops down_ops = {.on_closed = down_closed, .on_stream = down_stream, .on_request = down_request};

void wp_h2c_start(struct wp_tunnel *t, int fd)
{
    struct hc_down *d = calloc(1, sizeof(*d));
    if (!d) {
        close(fd);
        wp_tunnel_unref(t);
        return;
    }
    d->t = t;
    struct h2_settings set;
    settings(&set, true);
    d->c = h2_server_new(t->w->loop, fd, NULL, &set, &down_ops, d);
    if (!d->c) { /* fd closed by h2_server_new */
        free(d);
        wp_tunnel_unref(t);
    }
}
