/* HTTP/1.1 through the waypoint (wp.h): the downstream connection is the internal connection of one HBONE
 * tunnel, parsed with the streaming codec (http1/codec.h); each request is routed, authorized and sent on an
 * upstream HTTP/1.1 connection, itself an HBONE tunnel to the chosen endpoint bridged to an internal
 * connection, kept per worker for reuse across requests (Envoy's HTTP/1 connection pool: one request at a
 * time per connection). Bodies are streamed both ways with back-pressure: a side is not read while the other
 * side has more than H1_HIGH_WATER bytes waiting. Envoy's behaviour where a client sees it: local replies
 * (503 `no healthy upstream`, 503 `upstream connect error ...`, 4xx for a malformed request) with Envoy's
 * bodies, `Expect: 100-continue` answered by the proxy, `x-request-id` generated when absent,
 * `x-envoy-upstream-service-time` on responses, WebSocket (`Upgrade`) passed through after a 101. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/log.h"
#include "core/relay.h"
#include "http1/codec.h"
#include "waypoint/mirror.h"
#include "waypoint/route.h"
#include "waypoint/telemetry.h"
#include "waypoint/tries.h"
#include "waypoint/wp.h"

#define LOG_HTTP "waypoint::http"
/* Bytes queued toward one side before the other side stops being read. */
#define H1_HIGH_WATER (256u << 10)
/* One read from a side. */
#define H1_READ_MAX (64u << 10)
/* Unparsed bytes kept from the downstream (a pipelined request waits here while the current one runs). */
#define H1_IN_MAX (128u << 10)
/* Idle upstream connections kept per worker, and buckets of their table. */
#define H1_IDLE_MAX 256
#define H1_IDLE_BUCKETS 64
/* The request as sent (head and framed body) is kept this far for a retry: Envoy's per-request buffer limit
 * (per_connection_buffer_limit_bytes, 1 MiB by default). A body streamed past it is not retried. */
#define H1_REPLAY_MAX (1u << 20)

struct h1_x;

/* One side's socket and its queues. */
struct side {
    struct io io;
    struct http1_out out; /* to write */
    size_t out_off;       /* bytes of out already written */
    uint8_t *in;          /* read, not parsed yet */
    size_t in_len, in_cap;
    bool eof;  /* the peer's EOF was read */
    bool dead; /* the socket is closed */
};

struct h1_down {
    struct wp_tunnel *t;
    struct side s;
    struct http1_parser *p;
    struct h1_x *x;   /* the exchange in progress */
    bool close_after; /* close once out is written (no keep-alive) */
    bool in_feed;     /* inside http1_parser_feed: frees wait */
    bool freed;
};

struct h1_up {
    struct h1_up *hnext;  /* idle table chain */
    struct wp_worker *w;
    struct side s;
    struct http1_parser *p;
    struct hbone_stream *hs; /* the tunnel; NULL once it ended */
    struct h1_x *x;          /* the exchange using it, NULL when idle */
    /* The endpoint's address, and its workload uid copied: a pooled connection outlives the view whose snapshot
     * owns the workload (ep.wl is cleared). */
    struct lb_choice ep;
    char *uid;
    uint64_t idle_since;
    bool in_feed, freed;
    bool mirror;      /* a shadow request's connection: its response is read and dropped, then it closes */
    bool established; /* its tunnel answered 200: a failure from now on is a reset, not a connect failure */
    /* DestinationRule connectionPool (tries.h wp_try_conn_limits, from the exchange that uses it): the
     * connect timeout until the tunnel is established, the idle timeout while pooled, requests sent on it
     * and the most it takes (0: unlimited). */
    struct timer connect_timer, idle_timer;
    uint64_t idle_ms;
    uint32_t requests, max_requests;
};

/* One request and its response. */
struct h1_x {
    struct h1_down *d;
    struct h1_up *u;
    char *head; /* copies of the request's strings */
    const char *method, *target, *authority, *user_agent, *xff;
    char request_id[WP_REQUEST_ID_LEN];
    enum http1_framing req_framing, resp_framing_down;
    bool head_req, upgrade, req_done, resp_started, resp_done, local, keep_alive, http10, up_reusable;
    struct wp_decision dec; /* what wp_decide chose (its strings borrowed from the tunnel's view) */
    const char *route_name;
    struct lb_choice upstream_ep;
    struct timer timer; /* the route's timeout */
    struct timer delay_timer; /* a VirtualService fault delay (route.c): the request waits in the replay */
    bool delayed;             /* the delay ran: flag DI whatever else the request meets */
    /* RequestMirror under a fault delay: the shadow's head, sent with the body so far (the replay past
     * mirror_body_off) when the delay is over, as Envoy's router shadows only what passed the fault filter */
    struct http1_out mirror_head;
    size_t mirror_body_off;
    uint64_t req_head_bytes, resp_head_bytes; /* the heads' sizes on the downstream wire (metrics) */
    int64_t upstream_ms;                      /* x-envoy-upstream-service-time, -1 before the response */
    bool counted;                             /* wp_endpoint_begin ran for upstream_ep */
    struct h1_up *mu; /* RequestMirror: the shadow request's connection while its body is being copied */
    int status;
    const char *flags, *details;
    uint64_t start_wall, start_mono, up_start_mono;
    uint64_t bytes_received, bytes_sent; /* body bytes, as Envoy's %BYTES_RECEIVED% / %BYTES_SENT% */
    char upstream_host[IP_STRLEN + 32];
    /* Retries (dec.retry; src/mesh/retry.h): the request as sent so far, for the next try. */
    struct http1_out replay;
    bool replay_lost; /* past H1_REPLAY_MAX: no more retries */
    bool retrying;    /* waiting out the back-off: the downstream is not read meanwhile */
    struct wp_tries tries;
    struct timer retry_timer, try_timer; /* the back-off; perTryTimeout */
    /* DestinationRule connectionPool: waiting for a connection (tries.h wp_pending_wait; pend_needed until it
     * is queued), and overloaded for Envoy's x-envoy-overloaded on an overflow's reply */
    struct wp_pending pend;
    bool pend_needed, overloaded;
};

/* Per-worker idle upstream connections by endpoint. */
struct h1_pool {
    struct h1_up *buckets[H1_IDLE_BUCKETS];
    unsigned n_idle;
};
static _Thread_local struct h1_pool pool;

static void down_kick(struct h1_down *d);
static void up_kick(struct h1_up *u);
static void x_finish(struct h1_x *x);
static void delay_start(struct h1_x *x, uint64_t ms);

/* ---- sides ---- */

static int side_want(struct side *s, bool rd)
{
    uint32_t ev = (rd && !s->eof ? EPOLLIN : 0) | (s->out.n > s->out_off ? EPOLLOUT : 0);
    return ev;
}

static size_t side_pending(const struct side *s)
{
    return s->out.n - s->out_off;
}

/* Writes what is queued; returns 0, or -errno when the socket failed. */
static int side_flush(struct side *s)
{
    while (s->out_off < s->out.n) {
        ssize_t n = send(s->io.fd, s->out.p + s->out_off, s->out.n - s->out_off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) return 0;
            return -errno;
        }
        s->out_off += (size_t)n;
    }
    http1_out_reset(&s->out);
    s->out_off = 0;
    return 0;
}

/* Reads what the socket has (at most H1_READ_MAX, and no more than the buffer bound); returns bytes read,
 * 0 at EOF (s->eof set), -EAGAIN when nothing, or -errno. */
static ssize_t side_read(struct side *s, size_t cap)
{
    if (s->in_len >= cap) return -EAGAIN;
    size_t want = cap - s->in_len;
    if (want > H1_READ_MAX) want = H1_READ_MAX;
    if (s->in_cap < s->in_len + want) {
        uint8_t *np = realloc(s->in, s->in_len + want);
        if (!np) return -ENOMEM;
        s->in = np;
        s->in_cap = s->in_len + want;
    }
    ssize_t n = recv(s->io.fd, s->in + s->in_len, want, 0);
    if (n < 0) return errno == EINTR || errno == EAGAIN ? -EAGAIN : -errno;
    if (n == 0) {
        s->eof = true;
        return 0;
    }
    s->in_len += (size_t)n;
    return n;
}

static void side_consume(struct side *s, size_t n)
{
    memmove(s->in, s->in + n, s->in_len - n);
    s->in_len -= n;
}

static void side_close(struct loop *l, struct side *s)
{
    if (s->dead) return;
    s->dead = true;
    loop_io_close(l, &s->io);
}

static void side_free(struct side *s)
{
    http1_out_free(&s->out);
    free(s->in);
}

/* ---- local replies ---- */

/* Envoy's local reply: status, text/plain body, Content-Length. */
static void local_reply(struct h1_x *x, int status, const char *body, const char *flags, const char *details,
                        const char *location)
{
    struct h1_down *d = x->d;
    size_t blen = strlen(body);
    struct http1_hdr h[5 + 2 * L7_MAX_HEADER_MODS];
    size_t nh = 0;
    if (location) h[nh++] = (struct http1_hdr){"location", 8, location, strlen(location)};
    if (x->overloaded) h[nh++] = (struct http1_hdr){"x-envoy-overloaded", 18, "true", 4}; /* Envoy's router */
    if (*x->dec.www_authenticate) /* RequestAuthentication's 401 (authn.h) */
        h[nh++] = (struct http1_hdr){"www-authenticate", 16, x->dec.www_authenticate,
                                     strlen(x->dec.www_authenticate)};
    if (blen) h[nh++] = (struct http1_hdr){"content-type", 12, "text/plain", 10};
    /* A decided local answer carries the rule's response headers (route.h). */
    if (x->dec.kind == WP_DECIDE_LOCAL)
        wp_apply_mods(x->dec.resp_mods, x->dec.n_resp_mods, h, &nh, sizeof(h) / sizeof(h[0]) - 1,
                      http1_name_is);
    if (!x->keep_alive) h[nh++] = (struct http1_hdr){"connection", 10, "close", 5};
    (void)http1_write_response_head(&d->s.out, status, NULL, h, nh, HTTP1_BODY_LENGTH, blen);
    if (!x->head_req) (void)http1_out_append(&d->s.out, body, blen);
    x->status = status;
    x->flags = flags;
    x->details = details;
    x->resp_started = x->resp_done = x->local = true;
    x->bytes_sent = x->head_req ? 0 : blen;
}

/* A parse error before a response began: Envoy's answer for it, then the connection closes. */
static void reply_parse_error(struct h1_down *d)
{
    const char *why = NULL;
    int st = http1_parser_error(d->p, &why);
    if (!st) st = 400;
    char src[SOCKADDR_STRLEN];
    LOG_LIMITED(LOG_DEBUG, LOG_HTTP, "malformed request from %s: %d %s", sockaddr_format(&d->t->peer, src, sizeof(src)),
                st, why ? why : "");
    struct http1_hdr h[] = {{"connection", 10, "close", 5}};
    (void)http1_write_response_head(&d->s.out, st, NULL, h, 1, HTTP1_BODY_LENGTH, 0);
    d->close_after = true;
}

/* ---- upstream connections ---- */

static unsigned ep_bucket(const struct lb_choice *c)
{
    return (unsigned)((ip_hash(&c->ip) ^ c->port) % H1_IDLE_BUCKETS);
}

static bool ep_equal(const struct h1_up *u, const struct lb_choice *b)
{
    return u->ep.port == b->port && ip_equal(&u->ep.ip, &b->ip) && !strcmp(u->uid, b->wl->uid);
}

static void idle_remove(struct h1_up *u)
{
    struct h1_up **pp = &pool.buckets[ep_bucket(&u->ep)];
    for (; *pp; pp = &(*pp)->hnext)
        if (*pp == u) {
            *pp = u->hnext;
            u->hnext = NULL;
            pool.n_idle--;
            return;
        }
}

static void up_timers_stop(struct h1_up *u)
{
    if (timer_armed(&u->connect_timer)) timer_stop(u->w->loop, &u->connect_timer);
    if (timer_armed(&u->idle_timer)) timer_stop(u->w->loop, &u->idle_timer);
}

static void up_free(struct h1_up *u)
{
    if (u->in_feed) {
        u->freed = true;
        return;
    }
    up_timers_stop(u);
    side_close(u->w->loop, &u->s);
    side_free(&u->s);
    http1_parser_free(u->p);
    free(u->uid);
    free(u);
}

static void orphan_done(struct hbone_stream *s, void *ud, const struct hbone_result *r)
{
    (void)s;
    (void)ud;
    (void)r;
}

/* A tunnel whose connection object is gone: its end reports to nobody. */
static const struct hbone_stream_ops orphan_ops = {.on_done = orphan_done};

/* Ends the upstream connection: its tunnel is reset (or already gone) and its socket closed. */
static void up_close(struct h1_up *u, const char *why)
{
    if (!u->x && u->idle_since) idle_remove(u);
    u->idle_since = 0;
    up_timers_stop(u);
    struct hbone_stream *hs = u->hs;
    u->hs = NULL;
    side_close(u->w->loop, &u->s);
    if (hs) {
        hbone_stream_set_ops(hs, &orphan_ops, NULL);
        hbone_stream_reset(hs, why ? why : "connection closed");
    }
    up_free(u);
}

static bool x_retry(struct h1_x *x, const struct l7_try *t);

/* The upstream failed under exchange x (end: how the try ended): another try when the retry policy says so,
 * else a local reply if nothing of the response went out yet, else the downstream connection is cut (a
 * response cannot be finished). */
static void up_failed(struct h1_x *x, enum l7_try_end end, const char *reset_reason)
{
    struct h1_up *u = x->u;
    x->u = NULL;
    if (u) {
        u->x = NULL;
        up_close(u, reset_reason);
    }
    if (x_retry(x, &(struct l7_try){.end = end, .grpc_status = -1})) return;
    if (!x->resp_started) {
        char body[160];
        snprintf(body, sizeof(body), "upstream connect error or disconnect/reset before headers. reset reason: %s",
                 reset_reason);
        local_reply(x, 503, body, "UF",
                    strcmp(reset_reason, "connection timeout")
                        ? "upstream_reset_before_response_started{connection_failure}"
                        : "upstream_reset_before_response_started{connection_timeout}",
                    NULL);
        struct h1_down *d = x->d; /* x_finish frees x */
        if (x->req_done) x_finish(x);
        down_kick(d);
        return;
    }
    x->flags = "UC";
    x->details = "upstream_reset_after_response_started";
    x->d->close_after = true;
    x->resp_done = true;
    x->req_done = true;
    x_finish(x);
}

static int resp_head(void *ud, const struct http1_head *h)
{
    struct h1_up *u = ud;
    struct h1_x *x = u->x;
    if (!x || h->interim) return 0; /* 1xx: the proxy answered 100-continue itself, as Envoy does */
    struct h1_down *d = x->d;
    if (h->status != 101 || !x->upgrade) {
        /* A retriable answer is not forwarded: this connection (with the unread body) goes, another try
         * comes. */
        struct l7_try t = {.end = L7_TRY_RESPONSE, .status = h->status, .grpc_status = -1};
        u->x = NULL;
        x->u = NULL;
        if (x_retry(x, &t)) {
            up_close(u, NULL);
            return -1;
        }
        u->x = x;
        x->u = u;
    }
    struct http1_hdr hv[HTTP1_MAX_HEADERS + 4 + WP_MAX_MODS * 8];
    size_t n = 0;
    const char *conn = NULL;
    size_t conn_len = 0;
    for (size_t i = 0; i < h->n_headers; i++)
        if (http1_name_is(h->headers[i].name, h->headers[i].name_len, "connection")) {
            conn = h->headers[i].value;
            conn_len = h->headers[i].value_len;
        }
    bool upgraded = h->status == 101 && x->upgrade;
    for (size_t i = 0; i < h->n_headers && n < HTTP1_MAX_HEADERS; i++) {
        const struct http1_hdr *e = &h->headers[i];
        if (upgraded && (http1_name_is(e->name, e->name_len, "upgrade") ||
                         http1_name_is(e->name, e->name_len, "connection"))) {
            hv[n++] = *e;
            continue;
        }
        if (http1_hop_by_hop(e->name, e->name_len, conn, conn_len)) continue;
        if (http1_name_is(e->name, e->name_len, "content-length")) continue;
        hv[n++] = *e;
    }
    wp_apply_mods(x->dec.resp_mods, x->dec.n_resp_mods, hv, &n, sizeof(hv) / sizeof(hv[0]) - 2, http1_name_is);
    char ust[24];
    snprintf(ust, sizeof(ust), "%llu", (unsigned long long)(loop_now(u->w->loop) - x->up_start_mono));
    hv[n++] = (struct http1_hdr){"x-envoy-upstream-service-time", 29, ust, strlen(ust)};
    enum http1_framing f = h->framing;
    uint64_t cl = h->content_length;
    if (upgraded) {
        f = HTTP1_BODY_NONE;
    } else if (x->head_req) {
        f = h->has_content_length ? HTTP1_BODY_LENGTH : HTTP1_BODY_NONE;
    } else if (f == HTTP1_BODY_UNTIL_EOF || f == HTTP1_BODY_CHUNKED) {
        /* An HTTP/1.0 client cannot take chunks: its body ends with the connection. */
        f = x->http10 ? HTTP1_BODY_UNTIL_EOF : HTTP1_BODY_CHUNKED;
        if (f == HTTP1_BODY_UNTIL_EOF) d->close_after = true;
    }
    if (!x->keep_alive && !upgraded) hv[n++] = (struct http1_hdr){"connection", 10, "close", 5};
    size_t before = d->s.out.n;
    if (http1_write_response_head(&d->s.out, h->status, NULL, hv, n, f, cl) < 0) return -1;
    x->resp_head_bytes = d->s.out.n - before;
    x->resp_framing_down = f;
    x->status = h->status;
    x->upstream_ms = (int64_t)(loop_now(u->w->loop) - x->up_start_mono);
    x->resp_started = true;
    x->up_reusable = h->keep_alive;
    http1_out_free(&x->replay); /* no retry once the response is on its way */
    x->replay_lost = true;
    if (timer_armed(&x->try_timer)) timer_stop(u->w->loop, &x->try_timer);
    return 0;
}

static int resp_body(void *ud, const uint8_t *p, size_t n)
{
    struct h1_up *u = ud;
    struct h1_x *x = u->x;
    if (!x) return 0;
    struct http1_out *o = &x->d->s.out;
    int rc = 0;
    if (x->resp_framing_down == HTTP1_BODY_CHUNKED) rc = http1_write_chunk_header(o, n);
    if (!rc) rc = http1_out_append(o, p, n);
    if (!rc && x->resp_framing_down == HTTP1_BODY_CHUNKED) rc = http1_write_chunk_end(o);
    if (rc) return -1;
    x->bytes_sent += n;
    return side_pending(&x->d->s) > H1_HIGH_WATER ? HTTP1_PAUSE : 0;
}

static int resp_trailers(void *ud, const struct http1_hdr *t, size_t n)
{
    struct h1_up *u = ud;
    struct h1_x *x = u->x;
    if (!x || x->resp_framing_down != HTTP1_BODY_CHUNKED) return 0;
    x->resp_done = true; /* the last chunk carries them */
    return http1_write_last_chunk(&x->d->s.out, t, n) < 0 ? -1 : 0;
}

static int resp_complete(void *ud)
{
    struct h1_up *u = ud;
    struct h1_x *x = u->x;
    if (!x) return 0;
    if (x->resp_framing_down == HTTP1_BODY_CHUNKED && !x->resp_done)
        (void)http1_write_last_chunk(&x->d->s.out, NULL, 0);
    x->resp_done = true;
    return 0;
}

static const struct http1_parser_ops resp_ops = {
    .on_head = resp_head, .on_body = resp_body, .on_trailers = resp_trailers, .on_complete = resp_complete};

static void ws_done(struct relay *r, void *ud, uint64_t a_to_b, uint64_t b_to_a, const char *err)
{
    (void)r;
    (void)err;
    struct h1_x *x = ud;
    x->bytes_received += a_to_b;
    x->bytes_sent += b_to_a;
    x->resp_done = x->req_done = true;
    x->d->close_after = true;
    x_finish(x);
}

static const struct relay_ops ws_ops = {.on_done = ws_done};

/* After a 101: both internal connections carry opaque bytes; splice them together. The parsers' leftover
 * bytes are written first. */
static void start_tunnel(struct h1_x *x)
{
    struct h1_down *d = x->d;
    struct h1_up *u = x->u;
    if (d->s.in_len) (void)http1_out_append(&u->s.out, d->s.in, d->s.in_len);
    if (u->s.in_len) (void)http1_out_append(&d->s.out, u->s.in, u->s.in_len);
    d->s.in_len = u->s.in_len = 0;
    (void)side_flush(&d->s);
    (void)side_flush(&u->s);
    int dfd = d->s.io.fd, ufd = u->s.io.fd;
    loop_io_del(u->w->loop, &d->s.io);
    loop_io_del(u->w->loop, &u->s.io);
    d->s.dead = u->s.dead = true; /* the relay owns the fds now */
    x->u = NULL;
    u->x = NULL;
    if (u->hs) hbone_stream_set_ops(u->hs, &orphan_ops, NULL); /* it ends when the relay closes its end */
    u->hs = NULL;
    up_free(u);
    if (!relay_new(d->t->w->loop, dfd, ufd, 0, &ws_ops, x)) {
        x->flags = "DC";
        x->resp_done = x->req_done = true;
        d->close_after = true;
        x_finish(x);
    }
}

/* Moves the response along: parses what is buffered (resuming a parser paused for back-pressure) and reads
 * more, while the client's queue has room. */
static void mirror_pump(struct h1_up *u);

static void up_pump(struct h1_up *u)
{
    struct h1_x *x = u->x;
    ssize_t r = 0;
    if (u->mirror) {
        mirror_pump(u);
        return;
    }
    if (!x) { /* idle: readable means the peer closed it (or sent garbage) */
        char b;
        ssize_t n = recv(u->s.io.fd, &b, 1, MSG_PEEK);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR) || n > 0) up_close(u, "closed while idle");
        return;
    }
    u->in_feed = true;
    for (;;) {
        if (!u->x || side_pending(&x->d->s) > H1_HIGH_WATER) break; /* the client is slow: wait */
        bool paused = http1_parser_state(u->p) == HTTP1_P_PAUSED;
        if (!u->s.in_len && !paused) {
            if (u->s.eof) break;
            r = side_read(&u->s, H1_IN_MAX);
            if (r == -EAGAIN) {
                r = 0;
                break;
            }
            if (r <= 0) break;
        }
        if (paused) http1_parser_resume(u->p);
        ssize_t n = http1_parser_feed(u->p, u->s.in, u->s.in_len);
        if (n < 0) break;
        side_consume(&u->s, (size_t)n);
        if (n == 0) break; /* paused again, done or upgraded (or fed nothing after a resume) */
    }
    u->in_feed = false;
    if (u->freed) {
        u->freed = false;
        up_free(u);
        return;
    }
    if (!(x = u->x)) return;
    enum http1_parser_state st = http1_parser_state(u->p);
    if (st == HTTP1_P_ERROR) {
        up_failed(x, L7_TRY_RESET, "protocol error");
        return;
    }
    if (st == HTTP1_P_UPGRADED && x->status == 101) {
        start_tunnel(x);
        return;
    }
    if ((u->s.eof && !u->s.in_len) || r < 0) {
        if (!x->resp_done && (r < 0 || http1_parser_finish(u->p) < 0 || !x->resp_done)) {
            up_failed(x, u->established ? L7_TRY_RESET : L7_TRY_CONNECT_FAILURE,
                      r < 0 ? "connection failure" : "connection termination");
            return;
        }
        x->up_reusable = false; /* nothing to reuse; the client's connection may go on */
    }
    if (x->resp_done) {
        x_finish(x);
        return;
    }
    down_kick(x->d);
    up_kick(u);
}

/* A shadow request's response: read and dropped; the connection closes once it ended (or failed). Its
 * exchange may be gone already (a mirror never holds up the request it copies). */
static void mirror_pump(struct h1_up *u)
{
    for (;;) {
        ssize_t r = side_read(&u->s, H1_IN_MAX);
        if (r == -EAGAIN) break;
        if (r <= 0) {
            up_close(u, NULL);
            return;
        }
        ssize_t n;
        do {
            if (http1_parser_state(u->p) == HTTP1_P_PAUSED) http1_parser_resume(u->p);
            n = http1_parser_feed(u->p, u->s.in, u->s.in_len);
            if (n > 0) side_consume(&u->s, (size_t)n);
        } while (n > 0 && u->s.in_len);
        enum http1_parser_state st = http1_parser_state(u->p);
        if (n < 0 || st == HTTP1_P_DONE || st == HTTP1_P_UPGRADED || st == HTTP1_P_ERROR) {
            up_close(u, NULL);
            return;
        }
        u->s.in_len = 0;
    }
    up_kick(u);
}

static void up_io(struct io *io, uint32_t ev)
{
    struct h1_up *u = container_of(io, struct h1_up, s.io);
    struct h1_x *x = u->x;
    if (ev & EPOLLOUT) {
        if (side_flush(&u->s) < 0) {
            if (x)
                up_failed(x, u->established ? L7_TRY_RESET : L7_TRY_CONNECT_FAILURE, "connection failure");
            else
                up_close(u, "write failed");
            return;
        }
        /* room again upstream: the request body may flow */
        if (x && side_pending(&u->s) <= H1_HIGH_WATER / 2) down_kick(x->d);
        if (u->freed || u->s.dead) return;
    }
    if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
        up_pump(u);
        return;
    }
    up_kick(u);
}

static void up_hbone_done(struct hbone_stream *s, void *ud, const struct hbone_result *r)
{
    (void)s;
    struct h1_up *u = ud;
    if (!u->hs) return; /* we ended it */
    u->hs = NULL;
    if (r->status == 200 && !r->error) return; /* the tunnel ended cleanly: the socket sees the EOF */
    struct h1_x *x = u->x;
    LOG_D(LOG_HTTP, "upstream tunnel to %s ended: %s (status %d)", x ? x->upstream_host : "idle",
          r->error ? r->error : "-", r->status);
    enum l7_try_end end = r->reason == H2_END_REFUSED ? L7_TRY_REFUSED_STREAM
                          : u->established            ? L7_TRY_RESET
                                                      : L7_TRY_CONNECT_FAILURE;
    if (x)
        up_failed(x, end, "connection failure");
    else
        up_close(u, NULL);
}

static void up_hbone_response(struct hbone_stream *s, void *ud, int status)
{
    (void)s;
    struct h1_up *u = ud;
    if (timer_armed(&u->connect_timer)) timer_stop(u->w->loop, &u->connect_timer);
    if (status == 200) u->established = true;
}

/* connectionPool.tcp.connectTimeout: the tunnel did not come up in time (Envoy's connect_timeout: UF,
 * reset reason "connection timeout", retried as a connect failure). */
static void up_connect_timeout_cb(struct timer *tm)
{
    struct h1_up *u = container_of(tm, struct h1_up, connect_timer);
    if (u->established) return;
    if (u->x)
        up_failed(u->x, L7_TRY_CONNECT_FAILURE, "connection timeout");
    else
        up_close(u, "connection timeout");
}

/* connectionPool.http.idleTimeout: a pooled connection unused this long is closed. */
static void up_idle_timeout_cb(struct timer *tm)
{
    struct h1_up *u = container_of(tm, struct h1_up, idle_timer);
    LOG_D(LOG_HTTP, "idle upstream connection to %s closed after %llu ms", u->uid,
          (unsigned long long)u->idle_ms);
    up_close(u, "idle timeout");
}

/* An exchange of d takes u: its pool limits apply, and a connection not yet up gets its connect timeout. */
static void up_take(struct h1_up *u, const struct wp_decision *d)
{
    struct wp_conn_limits l = wp_try_conn_limits(d);
    u->requests++;
    u->max_requests = l.max_requests;
    u->idle_ms = l.idle_ms;
    if (!u->established && u->hs && !timer_armed(&u->connect_timer))
        timer_start(u->w->loop, &u->connect_timer, l.connect_timeout_ms);
}

static const struct hbone_stream_ops up_hbone_ops = {.on_done = up_hbone_done,
                                                     .on_response = up_hbone_response};

/* An upstream connection to ep: an idle one, else a new tunnel. NULL with *err. */
static struct h1_up *up_get(struct wp_worker *w, const struct lb_choice *ep, const char **err)
{
    for (struct h1_up **pp = &pool.buckets[ep_bucket(ep)]; *pp; pp = &(*pp)->hnext) {
        struct h1_up *u = *pp;
        if (ep_equal(u, ep)) {
            *pp = u->hnext;
            u->hnext = NULL;
            pool.n_idle--;
            u->idle_since = 0;
            if (timer_armed(&u->idle_timer)) timer_stop(w->loop, &u->idle_timer);
            return u;
        }
    }
    int sv[2];
    if (wp_socketpair(sv) < 0) {
        *err = "no socket";
        return NULL;
    }
    struct h1_up *u = calloc(1, sizeof(*u));
    if (!u || !(u->p = http1_parser_new(HTTP1_RESPONSE, NULL, &resp_ops, u))) {
        free(u);
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
        http1_parser_free(u->p);
        free(u);
        *err = "out of memory";
        return NULL;
    }
    u->s.io = (struct io){.fd = sv[1], .cb = up_io};
    if (loop_io_add(w->loop, &u->s.io, EPOLLIN | EPOLLRDHUP) < 0) {
        close(sv[0]);
        close(sv[1]);
        http1_parser_free(u->p);
        free(u->uid);
        free(u);
        *err = "out of memory";
        return NULL;
    }
    u->hs = wp_upstream_open(w, ep, sv[0], &up_hbone_ops, u, err);
    if (!u->hs) {
        side_close(w->loop, &u->s);
        http1_parser_free(u->p);
        free(u->uid);
        free(u);
        return NULL;
    }
    return u;
}

/* up_get for a request of d: a pooled connection made under other connectionPool settings is closed rather
 * than reused, as Envoy drains a cluster's pools when its settings change. */
static struct h1_up *up_get_for(struct wp_worker *w, const struct lb_choice *ep, const struct wp_decision *d,
                                const char **err)
{
    struct wp_conn_limits l = wp_try_conn_limits(d);
    for (;;) {
        struct h1_up *u = up_get(w, ep, err);
        if (!u || !u->requests || (u->max_requests == l.max_requests && u->idle_ms == l.idle_ms)) return u;
        up_close(u, "connection pool settings changed");
    }
}

/* The exchange is over on the upstream side: the connection goes back to the idle table or closes. */
static void up_release(struct h1_up *u, bool reusable)
{
    u->x = NULL;
    /* connectionPool.http.maxRequestsPerConnection: closed after its last request (Envoy's
     * max_requests_per_connection) */
    if (u->max_requests && u->requests >= u->max_requests) reusable = false;
    if (!reusable || !u->hs || u->s.in_len || pool.n_idle >= H1_IDLE_MAX ||
        http1_parser_state(u->p) != HTTP1_P_DONE) {
        up_close(u, NULL);
        return;
    }
    http1_parser_resume(u->p);
    u->idle_since = loop_now(u->w->loop);
    unsigned b = ep_bucket(&u->ep);
    u->hnext = pool.buckets[b];
    pool.buckets[b] = u;
    pool.n_idle++;
    if (u->idle_ms) timer_start(u->w->loop, &u->idle_timer, u->idle_ms);
    loop_io_mod(u->w->loop, &u->s.io, EPOLLIN | EPOLLRDHUP); /* to see it close while idle */
}

static void up_kick(struct h1_up *u)
{
    if (u->s.dead) return;
    bool rd = !u->x || side_pending(&u->x->d->s) <= H1_HIGH_WATER;
    uint32_t ev = side_want(&u->s, rd) | EPOLLRDHUP;
    if (ev != u->s.io.events) loop_io_mod(u->w->loop, &u->s.io, ev);
}

/* ---- exchanges ---- */

/* The request's metrics and access log line. */
static void x_record(struct h1_x *x)
{
    struct wp_tunnel *t = x->d->t;
    const struct service *svc = x->dec.kind == WP_DECIDE_FORWARD && x->dec.svc ? x->dec.svc : t->svc;
    char fl[WP_FLAGS_MAX];
    const char *flags = wp_try_flags(&x->tries, x->flags, fl);
    if (x->delayed) flags = wp_flags_add(flags, WP_RF_DI, fl, sizeof(fl)); /* a set: DI stays */
    wp_record_request(&(struct wp_record){
        .t = t,
        .method = x->method,
        .path = x->target,
        .protocol = x->http10 ? "HTTP/1.0" : "HTTP/1.1",
        .authority = x->authority,
        .user_agent = x->user_agent,
        .xff = x->xff,
        .request_id = x->request_id,
        .dst_wl = *x->upstream_host ? x->upstream_ep.wl : NULL,
        .dst_svc = svc,
        .status = x->status,
        .grpc_status = -1,
        .flags = flags,
        .details = x->details  ? x->details
                   : x->status ? "via_upstream"
                               : NULL,
        .req_wire = x->req_head_bytes + x->bytes_received,
        .resp_wire = x->resp_head_bytes + x->bytes_sent,
        .body_in = x->bytes_received,
        .body_out = x->bytes_sent,
        .start_wall = x->start_wall,
        .duration_ms = loop_now(t->w->loop) - x->start_mono,
        .upstream_ms = x->upstream_ms,
        .upstream_host = *x->upstream_host ? x->upstream_host : NULL,
        .route_name = x->route_name,
    });
}

static void x_free(struct h1_x *x)
{
    if (x->mu) up_close(x->mu, "the request it copies ended"); /* its request was cut short */
    if (x->counted) wp_endpoint_end(x->upstream_ep.wl);
    wp_pending_cancel(&x->pend); /* still waiting for a connection */
    wp_request_done(&x->dec, x->counted ? x->upstream_ep.wl : NULL, x->status); /* DestinationRule */
    wp_tries_end(&x->tries); /* a retry it holds (maxRetries) */
    struct loop *l = x->d->t->w->loop;
    if (timer_armed(&x->timer)) timer_stop(l, &x->timer);
    if (timer_armed(&x->retry_timer)) timer_stop(l, &x->retry_timer);
    if (timer_armed(&x->try_timer)) timer_stop(l, &x->try_timer);
    http1_out_free(&x->replay);
    http1_out_free(&x->mirror_head);
    if (timer_armed(&x->delay_timer)) timer_stop(l, &x->delay_timer);
    free(x->head);
    free(x);
}

/* Both halves are done: log, release the upstream, and let the downstream take its next request. */
static void x_finish(struct h1_x *x)
{
    if (!x->req_done || !x->resp_done) return;
    struct h1_down *d = x->d;
    x_record(x);
    if (x->u) up_release(x->u, x->up_reusable);
    x->u = NULL;
    d->x = NULL;
    if (!x->keep_alive) d->close_after = true;
    x_free(x);
    if (!d->close_after) http1_parser_resume(d->p);
    down_kick(d);
}

static char *copy_str(char **q, const char *s, size_t n)
{
    char *r = *q;
    memcpy(r, s, n);
    r[n] = 0;
    *q += n + 1;
    return r;
}

/* A lower-cased copy of a header name (Envoy lower-cases HTTP/1 header names it forwards). */
static char *copy_lower(char **q, const char *s, size_t n)
{
    char *r = copy_str(q, s, n);
    for (size_t i = 0; i < n; i++)
        if (r[i] >= 'A' && r[i] <= 'Z') r[i] = (char)(r[i] - 'A' + 'a');
    return r;
}

static void timeout_cb(struct timer *tm);

/* RequestMirror, as Envoy's shadowing: the same request to the mirror Service with its Host in the shadow form
 * ("-shadow" before the port, wp_shadow_host), its response dropped; the body is copied while the shadow keeps
 * up (more than H1_HIGH_WATER waiting abandons the shadow rather than slow the request). */
/* The shadow's request head into out: the request's with its Host in the shadow form. 0, or -1 (logged: no
 * shadow). hv's Host entry is changed in place. */
static int mirror_head(struct h1_x *x, const struct http1_head *h, const char *target, size_t target_len,
                       struct http1_hdr *hv, size_t n, struct http1_out *out, char *shadow, size_t shadow_n)
{
    const char *route = x->route_name ? x->route_name : "-";
    for (size_t i = 0; i < n; i++)
        if (http1_name_is(hv[i].name, hv[i].name_len, "host")) {
            ssize_t sl = wp_shadow_host(hv[i].value, hv[i].value_len, shadow, shadow_n);
            if (sl < 0) {
                LOG_LIMITED(LOG_WARN, LOG_HTTP, "RequestMirror of route %s: %s: no shadow sent", route,
                            sl == -ENOSPC ? "the Host is too long for its shadow form" : "the Host is empty");
                return -1;
            }
            hv[i].value = shadow;
            hv[i].value_len = (size_t)sl;
        }
    return http1_write_request_head(out, h->method, h->method_len, target, target_len, hv, n, h->framing,
                                    h->content_length) < 0
               ? -1
               : 0;
}

/* Opens the shadow's connection and sends head[0..hn) and the body so far, body[0..bn) (already framed). */
static void mirror_open(struct h1_x *x, const char *head, size_t hn, const char *body, size_t bn)
{
    struct wp_tunnel *t = x->d->t;
    const char *route = x->route_name ? x->route_name : "-";
    struct lb_choice ep;
    const char *err = NULL;
    if (wp_pick_endpoint(t, x->dec.mirror_svc, x->dec.mirror_port, &ep) < 0) {
        LOG_LIMITED(LOG_WARN, LOG_HTTP, "RequestMirror of route %s: no healthy endpoint of %s: no shadow sent", route,
                    x->dec.mirror_svc->hostname);
        return;
    }
    struct h1_up *m = up_get(t->w, &ep, &err);
    if (!m) {
        LOG_LIMITED(LOG_WARN, LOG_HTTP, "RequestMirror of route %s: no upstream connection to %s: %s", route,
                    x->dec.mirror_svc->hostname, err ? err : "failed");
        return;
    }
    m->mirror = true;
    if (x->head_req) http1_parser_response_to_head(m->p);
    if (http1_out_append(&m->s.out, head, hn) < 0 || (bn && http1_out_append(&m->s.out, body, bn) < 0)) {
        up_close(m, "mirror");
        return;
    }
    x->mu = m;
    up_kick(m);
}

/* RequestMirror, as Envoy's shadowing: the same request to the mirror Service with its Host in the shadow form
 * ("-shadow" before the port, wp_shadow_host), its response dropped; the body is copied while the shadow keeps
 * up (more than H1_HIGH_WATER waiting abandons the shadow rather than slow the request). */
static void start_mirror(struct h1_x *x, const struct http1_head *h, const char *target, size_t target_len,
                         struct http1_hdr *hv, size_t n)
{
    char shadow[WP_SHADOW_HOST_MAX];
    struct http1_out head = {0};
    if (mirror_head(x, h, target, target_len, hv, n, &head, shadow, sizeof(shadow)) == 0)
        mirror_open(x, head.p, head.n, NULL, 0);
    http1_out_free(&head);
}

/* Copies request bytes (already framed) to the shadow, or abandons it when it falls behind. */
static void mirror_copy(struct h1_x *x, const uint8_t *p, size_t n, bool chunk)
{
    struct h1_up *m = x->mu;
    if (!m) return;
    int rc = 0;
    if (chunk) rc = http1_write_chunk_header(&m->s.out, n);
    if (!rc) rc = http1_out_append(&m->s.out, p, n);
    if (!rc && chunk) rc = http1_write_chunk_end(&m->s.out);
    if (rc || side_pending(&m->s) > H1_HIGH_WATER) {
        x->mu = NULL;
        up_close(m, "the mirror fell behind");
        return;
    }
    up_kick(m);
}

/* ---- tries and retries ---- */

static void try_timeout_cb(struct timer *tm);
static void x_timed_out(struct h1_x *x);

/* Starts a try: an endpoint (wp_try_pick), an upstream connection, the replay written to it. Returns 0 when the try
 * is on its way (or, for a connection that could not even be made, a retry is scheduled), -1 when the request
 * was answered locally. */
static int x_try_start(struct h1_x *x)
{
    struct wp_tunnel *t = x->d->t;
    struct lb_choice ep;
    if (wp_try_pick(t, &x->dec, &x->tries, &ep) < 0) {
        local_reply(x, 503, "no healthy upstream", "UH", "no_healthy_upstream", NULL);
        return -1;
    }
    char ipb[IP_STRLEN];
    snprintf(x->upstream_host, sizeof(x->upstream_host), "envoy://connect_originate/%s:%u",
             ip_format(&ep.ip, ipb, sizeof(ipb)), ep.port);
    x->upstream_ep = ep;
    const char *err = NULL;
    struct h1_up *u = up_get_for(t->w, &ep, &x->dec, &err);
    if (!u) {
        LOG_LIMITED(LOG_WARN, LOG_HTTP, "upstream %s: %s", x->upstream_host, err ? err : "failed");
        if (x_retry(x, &(struct l7_try){.end = L7_TRY_CONNECT_FAILURE, .grpc_status = -1})) return 0;
        local_reply(
            x, 503,
            "upstream connect error or disconnect/reset before headers. reset reason: connection failure",
            "UF", "upstream_reset_before_response_started{connection_failure}", NULL);
        return -1;
    }
    x->u = u;
    u->x = x;
    up_take(u, &x->dec);
    x->up_start_mono = loop_now(t->w->loop);
    wp_endpoint_begin(ep.wl); /* ended in x_free, or when a retry abandons the try */
    x->counted = true;
    if (x->head_req) http1_parser_response_to_head(u->p);
    if (http1_out_append(&u->s.out, x->replay.p, x->replay.n) < 0) {
        up_failed(x, L7_TRY_OVERFLOW, "out of memory");
        return -1;
    }
    if (x->dec.retry->per_try_timeout_ms)
        timer_start(t->w->loop, &x->try_timer, x->dec.retry->per_try_timeout_ms);
    up_kick(u);
    return 0;
}

/* The request got a connection place after waiting (wp_pending_wait): its first try starts. */
static void pend_ready(struct wp_pending *p)
{
    struct h1_x *x = container_of(p, struct h1_x, pend);
    struct h1_down *d = x->d;
    x->retrying = false;
    if (x_try_start(x) < 0 && x->req_done) {
        x_finish(x);
        return;
    }
    down_kick(d); /* the rest of the body may flow now */
}

/* The first try, or for a request beyond maxConnections (wp_lb_prepare's -EINPROGRESS) its wait for a
 * connection, the request held as between tries (its body waits in the replay). -1 when answered locally. */
static int x_first_try(struct h1_x *x)
{
    if (!x->pend_needed) return x_try_start(x);
    x->pend_needed = false;
    if (wp_pending_wait(x->d->t, &x->dec, &x->pend, pend_ready) < 0) {
        x->overloaded = true;
        local_reply(x, 503, WP_OVERFLOW_BODY, "UO", "upstream_reset_before_response_started{overflow}", NULL);
        return -1;
    }
    x->retrying = true;
    return 0;
}

static void retry_cb(struct timer *tm)
{
    struct h1_x *x = container_of(tm, struct h1_x, retry_timer);
    struct h1_down *d = x->d;
    x->retrying = false;
    if (x->replay_lost) {
        /* Body bytes that came during the back-off overflowed the replay: the request cannot be sent again.
         */
        local_reply(
            x, 503,
            "upstream connect error or disconnect/reset before headers. reset reason: connection failure",
            "UF", "upstream_reset_before_response_started{connection_failure}", NULL);
        d->close_after = !x->req_done; /* the rest of its body is not read */
        x->req_done = true;
        x_finish(x);
        return;
    }
    if (x_try_start(x) < 0 && x->req_done) {
        x_finish(x);
        return;
    }
    down_kick(d); /* the rest of the body may flow again */
}

/* After a try ended as t (its upstream already detached): schedules the next one when the policy retries t,
 * attempts are left and the request can be replayed. Returns true when a retry is on its way. */
static bool x_retry(struct h1_x *x, const struct l7_try *t)
{
    struct wp_worker *w = x->d->t->w;
    /* not after any of the response left, not for an Upgrade, not when the body went past what is kept */
    if (x->resp_started || x->upgrade || x->replay_lost || !wp_try_again(&x->dec, &x->tries, t)) return false;
    if (x->counted) /* outlier detection sees each try */
        wp_try_done(&x->dec, x->upstream_ep.wl,
                    t->end == L7_TRY_RESPONSE ? t->status : t->end == L7_TRY_PER_TRY_TIMEOUT ? 504 : 503);
    if (x->counted) wp_endpoint_end(x->upstream_ep.wl);
    x->counted = false;
    if (timer_armed(&x->try_timer)) timer_stop(w->loop, &x->try_timer);
    x->retrying = true;
    timer_start(w->loop, &x->retry_timer, wp_try_backoff_ms(w, &x->dec, &x->tries));
    return true;
}

/* perTryTimeout: the try is abandoned; retried as Envoy judges it (a 504), else the request's 504 UT. */
static void try_timeout_cb(struct timer *tm)
{
    struct h1_x *x = container_of(tm, struct h1_x, try_timer);
    struct h1_up *u = x->u;
    x->u = NULL;
    if (u) {
        u->x = NULL;
        up_close(u, "per try timeout");
    }
    if (x_retry(x, &(struct l7_try){.end = L7_TRY_PER_TRY_TIMEOUT, .grpc_status = -1})) return;
    x_timed_out(x); /* no retry: the request's 504 UT */
}

/* Request bytes, already framed, to the try in progress and to the replay while a retry may need them. */
static int x_send(struct h1_x *x, const uint8_t *p, size_t n, bool chunk)
{
    struct http1_out *outs[2] = {x->u ? &x->u->s.out : NULL, x->replay_lost ? NULL : &x->replay};
    if (outs[1] && x->replay.n + n + 32 > H1_REPLAY_MAX) {
        http1_out_free(&x->replay);
        x->replay_lost = true;
        outs[1] = NULL;
    }
    for (int i = 0; i < 2; i++) {
        struct http1_out *o = outs[i];
        if (!o) continue;
        int rc = 0;
        if (chunk) rc = http1_write_chunk_header(o, n);
        if (!rc) rc = http1_out_append(o, p, n);
        if (!rc && chunk) rc = http1_write_chunk_end(o);
        if (rc) return -1;
    }
    return 0;
}

/* The last chunk (with trailers) to the try in progress and the replay. */
static int x_send_last_chunk(struct h1_x *x, const struct http1_hdr *t, size_t n)
{
    if (!x->replay_lost && http1_write_last_chunk(&x->replay, t, n) < 0) return -1;
    return x->u ? http1_write_last_chunk(&x->u->s.out, t, n) : 0;
}

static int req_head(void *ud, const struct http1_head *h)
{
    struct h1_down *d = ud;
    struct wp_tunnel *t = d->t;
    struct h1_x *x = calloc(1, sizeof(*x));
    size_t need = h->method_len + h->target_len + 2;
    for (size_t i = 0; i < h->n_headers; i++)
        need += 2 * (h->headers[i].name_len + h->headers[i].value_len + 2);
    if (!x || !(x->head = malloc(need + 1))) {
        free(x);
        return -1;
    }
    d->x = x;
    x->d = d;
    x->start_wall = wp_now_ms();
    x->start_mono = loop_now(t->w->loop);
    x->keep_alive = h->keep_alive;
    x->upgrade = h->upgrade;
    x->http10 = h->version_minor == 0;
    x->req_framing = h->framing;
    x->timer.cb = timeout_cb;
    x->retry_timer.cb = retry_cb;
    x->try_timer.cb = try_timeout_cb;
    x->upstream_ms = -1;
    x->req_head_bytes = h->method_len + h->target_len + 12;
    for (size_t i = 0; i < h->n_headers; i++)
        x->req_head_bytes += h->headers[i].name_len + h->headers[i].value_len + 4;
    char *q = x->head;
    x->method = copy_str(&q, h->method, h->method_len);
    x->target = copy_str(&q, h->target, h->target_len);
    x->head_req = !strcmp(x->method, "HEAD");
    x->authority = x->user_agent = x->xff = "";
    /* The headers to send, names lower-cased: hop-by-hop removed (Upgrade and Connection kept for an
     * upgrade), Expect answered here, x-request-id generated when absent. lh: the same for matching. */
    struct http1_hdr hv[HTTP1_MAX_HEADERS + 4 + 2 * WP_MAX_MODS * 4];
    struct l7_header lh[HTTP1_MAX_HEADERS];
    size_t n = 0, nl = 0;
    const size_t cap = sizeof(hv) / sizeof(hv[0]);
    const char *conn = NULL;
    size_t conn_len = 0;
    bool have_rid = false, have_xfp = false;
    for (size_t i = 0; i < h->n_headers; i++)
        if (http1_name_is(h->headers[i].name, h->headers[i].name_len, "connection")) {
            conn = h->headers[i].value;
            conn_len = h->headers[i].value_len;
        }
    for (size_t i = 0; i < h->n_headers; i++) {
        const struct http1_hdr *e = &h->headers[i];
        const char *name = copy_lower(&q, e->name, e->name_len), *value = copy_str(&q, e->value, e->value_len);
        struct http1_hdr c = {name, e->name_len, value, e->value_len};
        if (nl < HTTP1_MAX_HEADERS) lh[nl++] = (struct l7_header){name, e->name_len, value, e->value_len};
        if (!strcmp(name, "host"))
            x->authority = value;
        else if (!strcmp(name, "user-agent"))
            x->user_agent = value;
        else if (!strcmp(name, "x-forwarded-for"))
            x->xff = value;
        else if (!strcmp(name, "x-request-id") && e->value_len < sizeof(x->request_id)) {
            memcpy(x->request_id, e->value, e->value_len);
            x->request_id[e->value_len] = 0;
            have_rid = true;
        } else if (!strcmp(name, "x-forwarded-proto"))
            have_xfp = true;
        if (x->upgrade && (!strcmp(name, "upgrade") || !strcmp(name, "connection"))) {
            hv[n++] = c;
            continue;
        }
        if (!strcmp(name, "expect") && h->expect_continue) continue;
        if (http1_hop_by_hop(e->name, e->name_len, conn, conn_len)) continue;
        if (n < HTTP1_MAX_HEADERS) hv[n++] = c;
    }
    if (!have_rid) {
        wp_request_id(t->w, x->request_id);
        hv[n++] = (struct http1_hdr){"x-request-id", 12, x->request_id, strlen(x->request_id)};
    }
    if (!have_xfp) hv[n++] = (struct http1_hdr){"x-forwarded-proto", 17, "http", 4};

    if (x->http10) {
        /* Envoy's HTTP/1 codec refuses HTTP/1.0 unless accept_http_10 is set, which Istio does not set: 426,
         * and the connection closes. */
        x->keep_alive = false;
        local_reply(x, 426, "", "-", "upgrade_required", NULL);
        return 0;
    }
    struct l7_request lr = {.method = x->method,
                            .path = x->target,
                            .path_len = h->target_len,
                            .authority = x->authority,
                            .headers = lh,
                            .n_headers = nl};
    struct wp_decision *dec = &x->dec;
    wp_decide(t, &lr, dec);
    x->route_name = dec->route_name;
    if (dec->kind == WP_DECIDE_LOCAL) {
        if (dec->delay_ms) { /* a VirtualService fault delay first (delay_cb answers) */
            delay_start(x, dec->delay_ms);
            return 0;
        }
        local_reply(x, dec->status, dec->body, dec->flags, dec->details, *dec->location ? dec->location : NULL);
        return 0;
    }
    wp_apply_mods(dec->req_mods, dec->n_req_mods, hv, &n, cap, http1_name_is);
    const char *target = x->target;
    size_t target_len = h->target_len;
    if (dec->rewrite_path) {
        target = dec->path;
        target_len = strlen(dec->path);
    }
    if (dec->rewrite_authority)
        for (size_t i = 0; i < n; i++)
            if (http1_name_is(hv[i].name, hv[i].name_len, "host")) {
                hv[i].value = dec->authority;
                hv[i].value_len = strlen(dec->authority);
            }

    int prc = wp_lb_prepare(t, dec, &lr, false); /* DestinationRule: subset, hash key, connection pool */
    if (prc == -ESRCH) {
        local_reply(x, 503, "", "NC", "cluster_not_found", NULL);
        return 0;
    }
    if (prc == -EUSERS) {
        x->overloaded = true;
        local_reply(x, 503, WP_OVERFLOW_BODY, "UO", "upstream_reset_before_response_started{overflow}", NULL);
        return 0;
    }
    x->pend_needed = prc == -EINPROGRESS; /* it waits for a connection (x_first_try) */
    if (h->expect_continue) (void)http1_out_append(&d->s.out, "HTTP/1.1 100 Continue\r\n\r\n", 25);
    /* The request head goes into the replay first: each try sends the replay, then the body as it comes. */
    if (http1_write_request_head(&x->replay, h->method, h->method_len, target, target_len, hv, n, h->framing,
                                 h->content_length) < 0)
        return -1;
    if (dec->delay_ms) { /* a VirtualService fault delay: the first try starts in delay_cb */
        /* The shadow leaves after the delay too (the router shadows; the fault filter runs before it). */
        char shadow[WP_SHADOW_HOST_MAX];
        x->mirror_body_off = x->replay.n;
        if (dec->mirror_svc &&
            mirror_head(x, h, target, target_len, hv, n, &x->mirror_head, shadow, sizeof(shadow)) < 0)
            http1_out_free(&x->mirror_head);
        delay_start(x, dec->delay_ms);
        return 0;
    }
    if (dec->timeout_ms) timer_start(t->w->loop, &x->timer, dec->timeout_ms);
    bool waits = x->pend_needed;
    if (x_first_try(x) < 0) return 0;
    if (dec->mirror_svc && (x->u || waits)) start_mirror(x, h, target, target_len, hv, n);
    return 0;
}

/* A VirtualService fault delay is over: the held request's first try starts, and the route's timeout starts
 * now (Envoy's fault filter runs before the router, whose timer starts when it sees the request). While it
 * waited, it was in the state between two tries: its head in the replay, the body read no further. */
static void delay_cb(struct timer *tm)
{
    struct h1_x *x = container_of(tm, struct h1_x, delay_timer);
    if (x->dec.kind == WP_DECIDE_LOCAL) { /* the decided local answer, now (the body was read and dropped) */
        struct wp_decision *dec = &x->dec;
        struct h1_down *d = x->d;
        local_reply(x, dec->status, dec->body, dec->flags, dec->details,
                    *dec->location ? dec->location : NULL);
        x_finish(x);
        down_kick(d);
        return;
    }
    struct h1_down *d = x->d;
    x->retrying = false;
    if (x->dec.timeout_ms) timer_start(d->t->w->loop, &x->timer, x->dec.timeout_ms);
    bool waits = x->pend_needed;
    int rc = x_first_try(x);
    if (rc == 0 && (x->u || waits) && x->mirror_head.n && !x->replay_lost && x->replay.n >= x->mirror_body_off)
        mirror_open(x, x->mirror_head.p, x->mirror_head.n, x->replay.p + x->mirror_body_off,
                    x->replay.n - x->mirror_body_off);
    if (x->mu && x->req_done) x->mu = NULL; /* the shadow has its whole request: it finishes on its own */
    http1_out_free(&x->mirror_head);
    if (rc < 0 && x->req_done) {
        x_finish(x);
        return;
    }
    down_kick(d); /* the rest of the body may flow now */
}

static void delay_start(struct h1_x *x, uint64_t ms)
{
    x->retrying = x->dec.kind == WP_DECIDE_FORWARD; /* the body waits in the replay, as between tries */
    x->flags = "DI";
    x->delayed = true;
    x->delay_timer.cb = delay_cb;
    timer_start(x->d->t->w->loop, &x->delay_timer, ms);
}

/* The route's timeout passed before the response ended: Envoy's 504 `upstream request timeout` (UT) when
 * nothing of the response went out yet, else the client's connection is cut. */
static void timeout_cb(struct timer *tm)
{
    x_timed_out(container_of(tm, struct h1_x, timer));
}

static void x_timed_out(struct h1_x *x)
{
    struct h1_down *d = x->d;
    struct loop *l = d->t->w->loop;
    if (timer_armed(&x->timer)) timer_stop(l, &x->timer);
    if (timer_armed(&x->try_timer)) timer_stop(l, &x->try_timer);
    if (timer_armed(&x->retry_timer)) timer_stop(l, &x->retry_timer);
    x->retrying = false;
    struct h1_up *u = x->u;
    x->u = NULL;
    if (u) {
        u->x = NULL;
        up_close(u, "request timeout");
    }
    if (!x->resp_started) {
        local_reply(x, 504, "upstream request timeout", "UT", "upstream_response_timeout", NULL);
        d->close_after = !x->req_done; /* the rest of its body is not read */
        x->req_done = true;
    } else {
        x->flags = "UT";
        x->resp_done = x->req_done = true;
        d->close_after = true;
    }
    x_finish(x);
    down_kick(d);
}

static int req_body(void *ud, const uint8_t *p, size_t n)
{
    struct h1_down *d = ud;
    struct h1_x *x = d->x;
    if (!x) return 0;
    x->bytes_received += n;
    struct h1_up *u = x->u;
    if (!u && !x->retrying) return 0; /* answered locally: the body is read and dropped */
    mirror_copy(x, p, n, x->req_framing == HTTP1_BODY_CHUNKED);
    if (x_send(x, p, n, x->req_framing == HTTP1_BODY_CHUNKED) < 0) return -1;
    if (!u) return HTTP1_PAUSE; /* between tries: the rest waits for the next one */
    return side_pending(&u->s) > H1_HIGH_WATER ? HTTP1_PAUSE : 0;
}

static int req_trailers(void *ud, const struct http1_hdr *t, size_t n)
{
    struct h1_down *d = ud;
    struct h1_x *x = d->x;
    if (!x || (!x->u && !x->retrying) || x->req_framing != HTTP1_BODY_CHUNKED) return 0;
    x->req_framing = HTTP1_BODY_NONE; /* the last chunk is written here */
    if (x->mu && http1_write_last_chunk(&x->mu->s.out, t, n) == 0) up_kick(x->mu);
    return x_send_last_chunk(x, t, n);
}

static int req_complete(void *ud)
{
    struct h1_down *d = ud;
    struct h1_x *x = d->x;
    if (!x) return 0;
    if ((x->u || x->retrying) && x->req_framing == HTTP1_BODY_CHUNKED) {
        (void)x_send_last_chunk(x, NULL, 0);
        if (x->mu) (void)http1_write_last_chunk(&x->mu->s.out, NULL, 0);
    }
    if (x->mu) { /* the shadow has its whole request: it finishes on its own */
        up_kick(x->mu);
        x->mu = NULL;
    }
    x->req_done = true;
    return 0;
}

static const struct http1_parser_ops req_ops = {
    .on_head = req_head, .on_body = req_body, .on_trailers = req_trailers, .on_complete = req_complete};

/* ---- the downstream connection ---- */

static void down_free(struct h1_down *d)
{
    if (d->in_feed) {
        d->freed = true;
        return;
    }
    struct h1_x *x = d->x;
    if (x) {
        if (!x->flags) x->flags = "DC";
        x->details = "downstream_remote_disconnect";
        if (x->u) {
            x->u->x = NULL;
            up_close(x->u, "the client went away");
        }
        x_record(x);
        x_free(x);
    }
    side_close(d->t->w->loop, &d->s);
    side_free(&d->s);
    http1_parser_free(d->p);
    wp_tunnel_unref(d->t);
    free(d);
}

static void down_parse(struct h1_down *d)
{
    d->in_feed = true;
    /* A parser paused at a message's last byte completes only when fed again, even with nothing. */
    while ((d->s.in_len || http1_parser_state(d->p) == HTTP1_P_PAUSED) && !d->close_after) {
        struct h1_x *x = d->x;
        if (x && (x->retrying || (x->u && side_pending(&x->u->s) > H1_HIGH_WATER))) break;
        if (http1_parser_state(d->p) == HTTP1_P_PAUSED) http1_parser_resume(d->p);
        ssize_t n = http1_parser_feed(d->p, d->s.in, d->s.in_len);
        if (n < 0) {
            if (!d->x || !d->x->resp_started) {
                if (d->x) {
                    struct h1_x *bad = d->x;
                    if (bad->u) {
                        bad->u->x = NULL;
                        up_close(bad->u, "malformed request");
                    }
                    d->x = NULL;
                    x_free(bad);
                }
                reply_parse_error(d);
            } else {
                d->close_after = true;
            }
            break;
        }
        side_consume(&d->s, (size_t)n);
        if (n == 0) break;
    }
    /* Still "in feed" for the finish: a close it triggers is deferred to the caller, which checks d->freed. */
    if (d->x && d->x->req_done && d->x->resp_done) x_finish(d->x);
    d->in_feed = false;
}

static void down_io(struct io *io, uint32_t ev)
{
    struct h1_down *d = container_of(io, struct h1_down, s.io);
    if (ev & EPOLLOUT) {
        if (side_flush(&d->s) < 0) {
            down_free(d);
            return;
        }
        /* room again downstream: the response may flow (some may wait parsed-to-be in the upstream's buffer) */
        if (d->x && d->x->u && side_pending(&d->s) <= H1_HIGH_WATER / 2) {
            up_pump(d->x->u);
            if (d->s.dead || d->freed) return;
        }
    }
    if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
        ssize_t r = side_read(&d->s, H1_IN_MAX);
        if (r < 0 && r != -EAGAIN) {
            down_free(d);
            return;
        }
        down_parse(d);
        if (d->freed) {
            d->freed = false;
            down_free(d);
            return;
        }
        if (d->s.eof && !d->s.in_len) {
            if (!d->x) {
                /* between requests: the client is done */
                if (!side_pending(&d->s)) {
                    down_free(d);
                    return;
                }
                d->close_after = true;
            } else if (!d->x->req_done || d->x->pend.queued) {
                down_free(d); /* cut mid-request, or while it waits for a connection: Envoy's DC */
                return;
            }
        }
    }
    down_kick(d);
}

/* Re-arms the downstream socket for what it waits for, and parses what waits in its buffer. */
static void down_kick(struct h1_down *d)
{
    if (d->s.dead || d->in_feed) return;
    if (side_flush(&d->s) < 0) {
        down_free(d);
        return;
    }
    if (d->close_after && !side_pending(&d->s) && (!d->x || d->x->resp_done)) {
        down_free(d);
        return;
    }
    struct h1_x *x = d->x;
    if (!d->close_after && d->s.in_len && (!x || !x->req_done) && http1_parser_state(d->p) != HTTP1_P_DONE) {
        if (!x || (!x->retrying && (!x->u || side_pending(&x->u->s) <= H1_HIGH_WATER))) {
            down_parse(d);
            if (d->freed) {
                d->freed = false;
                down_free(d);
                return;
            }
            x = d->x;
        }
    }
    bool rd = !d->close_after && d->s.in_len < H1_IN_MAX && (!x || !x->req_done) &&
              (!x || (!x->retrying && (!x->u || side_pending(&x->u->s) <= H1_HIGH_WATER)));
    uint32_t ev = side_want(&d->s, rd) | EPOLLRDHUP;
    if (ev != d->s.io.events) loop_io_mod(d->t->w->loop, &d->s.io, ev);
    if (x && x->u) up_kick(x->u);
}

void wp_http1_start(struct wp_tunnel *t, int fd)
{
    struct h1_down *d = calloc(1, sizeof(*d));
    if (!d || !(d->p = http1_parser_new(HTTP1_REQUEST, NULL, &req_ops, d))) {
        free(d);
        close(fd);
        wp_tunnel_unref(t);
        return;
    }
    d->t = t;
    d->s.io = (struct io){.fd = fd, .cb = down_io};
    if (loop_io_add(t->w->loop, &d->s.io, EPOLLIN | EPOLLRDHUP) < 0) {
        http1_parser_free(d->p);
        free(d);
        close(fd);
        wp_tunnel_unref(t);
    }
}
