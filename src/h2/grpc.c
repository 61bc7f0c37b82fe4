/* gRPC calls on the HTTP/2 session: server and client roles; see grpc.h and src/h2/README.md ("gRPC").
 *
 * Protocol facts from grpc/grpc doc/PROTOCOL-HTTP2.md and doc/statuscodes.md; statuses for malformed
 * requests as grpc-go answers them (internal/transport/http2_server.go). */
#include "h2/grpc.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>
#include <nghttp2/nghttp2.h>

#include "core/list.h"
#include "core/log.h"
#include "core/net.h"

#define LOG_T "grpc"
/* Small messages are packed into send chunks of this size, so a burst of them leaves in few DATA frames. */
#define CHUNK_SIZE (16u << 10)
#define USER_AGENT "grpc-c-zmesh/0.1"

struct chunk {
    struct chunk *next;
    size_t len, off, cap;
    uint8_t data[];
};

struct method {
    char *path;
    enum grpc_method_kind kind;
    grpc_handler_fn fn;
    void *ud;
};

struct grpc_server {
    struct loop *l;
    struct grpc_opts o;
    struct h2_settings set;
    struct method methods[GRPC_MAX_METHODS];
    size_t n_methods;
    struct sconn *conns;
    unsigned n_conns;
    bool free_pending; /* grpc_server_free ran; the last on_closed frees */
};

struct sconn {
    struct sconn *prev, *next;
    struct grpc_server *srv;
    struct h2_conn *c;
};

struct grpc_channel {
    struct loop *l;
    struct grpc_opts o;
    struct h2_conn *c;
    char *authority;
    bool tls;
    bool free_pending;
};

/* What the handler gets, kept from on_request until a unary call's request is complete. */
struct pending_info {
    char *path, *authority, *peer_id;
    struct grpc_md *md;
    size_t n_md;
    uint8_t *arena;
    uint64_t timeout_ns;
};

struct grpc_call {
    bool server, unary;
    struct loop *l;
    struct h2_stream *s; /* NULL once the stream ended */
    const struct grpc_call_ops *ops;
    void *ud;
    uint32_t max_send;
    size_t queue_max;
    struct grpc_deframer df;
    /* send side */
    struct chunk *head, *tail;
    size_t queued;
    bool parked;        /* pull found nothing: h2_stream_resume when there is */
    bool want_writable; /* a send was refused: on_writable when the queue drains */
    bool send_closed;   /* no more messages: the body ends after the queue (client EOS, server trailers) */
    uint64_t sent_msgs;
    /* receive side */
    uint64_t received;
    bool peer_eof;
    /* the status: server, what finish sent; client, what the layer decided locally (deadline, limits) */
    bool finished;
    enum grpc_status st;
    char *msg;
    /* server */
    const struct method *m;
    struct pending_info *pi; /* unary: what on_call gets, until the request is complete */
    bool request_seen, headers_sent;
    uint8_t *pend; /* DATA that came before on_request, not yet consumed (the peer waits at its window) */
    size_t pend_n;
    uint8_t *req; /* unary: the one request */
    size_t req_n;
    bool have_req;
    /* client */
    int http_status;
    bool grpc_ct, got_status;
    enum grpc_status peer_st;
    char *peer_msg;
    struct grpc_md *trailers;
    size_t n_trailers;
    uint8_t *trailer_arena;
    /* deadline */
    struct timer deadline;
    uint64_t deadline_at; /* loop ms, 0 = none */
    bool deadline_hit;
    /* lifetime: the task runs on_writable when due, and frees the call once it is dead */
    struct task task;
    bool writable_due, dead;
};

static const char *const consumed_headers[] = {
    "content-type",         "te",          "grpc-timeout", "grpc-encoding",
    "grpc-accept-encoding", "grpc-status", "grpc-message"};

/* ---- small helpers ---- */

static char *xstrdup(const char *s)
{
    return s ? strdup(s) : NULL;
}

static void set_status(struct grpc_call *c, enum grpc_status st, const char *msg)
{
    c->st = st;
    free(c->msg);
    c->msg = xstrdup(msg ? msg : "");
}

/* A list of outgoing headers whose strings may be owned. */
struct hlist {
    struct h2_header *h;
    char **own;
    size_t n, cap, nown;
};

static int hl_init(struct hlist *hl, size_t cap)
{
    hl->h = calloc(cap, sizeof(*hl->h));
    hl->own = calloc(cap, sizeof(*hl->own));
    hl->n = hl->nown = 0;
    hl->cap = cap;
    return hl->h && hl->own ? 0 : -ENOMEM;
}

static void hl_add(struct hlist *hl, const char *name, const char *value)
{
    if (hl->n < hl->cap) hl->h[hl->n++] = (struct h2_header){name, value};
}

/* Adds a value the list owns (freed with the list); NULL v means allocation failed. */
static int hl_add_own(struct hlist *hl, const char *name, char *v)
{
    if (!v) return -ENOMEM;
    hl->own[hl->nown++] = v;
    hl_add(hl, name, v);
    return 0;
}

static void hl_free(struct hlist *hl)
{
    for (size_t i = 0; i < hl->nown; i++)
        free(hl->own[i]);
    free(hl->own);
    free(hl->h);
}

/* Appends custom metadata md[0..n) (validated) to hl. */
static int hl_add_md(struct hlist *hl, const struct grpc_md *md, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        size_t nl = strlen(md[i].name);
        if (!grpc_md_name_valid(md[i].name, nl) || grpc_md_reserved(md[i].name, nl)) return -EINVAL;
        char *v;
        if (grpc_md_is_bin(md[i].name, nl)) {
            v = malloc(4 * (md[i].len / 3 + 1) + 1);
            if (v) grpc_b64_encode(md[i].value, md[i].len, v);
        } else {
            if (!grpc_md_value_valid((const char *)md[i].value, md[i].len)) return -EINVAL;
            v = strndup((const char *)md[i].value, md[i].len);
        }
        if (hl_add_own(hl, md[i].name, v) < 0) return -ENOMEM;
    }
    return 0;
}

static bool is_consumed(const char *name)
{
    for (size_t i = 0; i < sizeof(consumed_headers) / sizeof(consumed_headers[0]); i++)
        if (strcmp(name, consumed_headers[i]) == 0) return true;
    return false;
}

/* Converts received headers to custom metadata: consumed headers are left out, "-bin" values are split on
 * ',' (PROTOCOL-HTTP2.md: joined duplicates) and decoded. *arena holds the values (caller frees). Returns
 * 0, -EINVAL when a "-bin" value is not base64 (*bad names it), -ENOMEM. */
static int md_from_headers(const struct h2_header *h, size_t n, struct grpc_md **out, size_t *nout,
                           uint8_t **arena, const char **bad)
{
    size_t bytes = 0, cnt = 0;
    for (size_t i = 0; i < n; i++) {
        if (is_consumed(h[i].name)) continue;
        size_t vl = strlen(h[i].value);
        /* The name (copied: the header strings die with the callback), the value (a decoded value is never
         * longer than its text) and NULs, with slack for decoding's last quantum. */
        bytes += strlen(h[i].name) + 1 + vl + 4;
        cnt++;
        if (grpc_md_is_bin(h[i].name, strlen(h[i].name)))
            for (size_t k = 0; k < vl; k++)
                if (h[i].value[k] == ',') {
                    cnt++;
                    bytes += 4;
                }
    }
    *out = NULL;
    *nout = 0;
    *arena = NULL;
    if (cnt == 0) return 0;
    struct grpc_md *md = calloc(cnt, sizeof(*md));
    uint8_t *a = malloc(bytes);
    if (!md || !a) {
        free(md);
        free(a);
        return -ENOMEM;
    }
    size_t k = 0, off = 0;
    for (size_t i = 0; i < n; i++) {
        if (is_consumed(h[i].name)) continue;
        const char *v = h[i].value;
        size_t vl = strlen(v), nl = strlen(h[i].name);
        char *name = (char *)a + off;
        memcpy(name, h[i].name, nl + 1);
        off += nl + 1;
        if (!grpc_md_is_bin(name, nl)) {
            memcpy(a + off, v, vl + 1);
            md[k++] = (struct grpc_md){name, a + off, vl};
            off += vl + 1;
            continue;
        }
        const char *p = v, *end = v + vl;
        for (;;) {
            const char *comma = memchr(p, ',', (size_t)(end - p));
            const char *e = comma ? comma : end;
            /* Values may carry spaces after the comma when a proxy joined them. */
            while (p < e && *p == ' ')
                p++;
            int dn = grpc_b64_decode(p, (size_t)(e - p), a + off);
            if (dn < 0) {
                *bad = h[i].name;
                free(md);
                free(a);
                return -EINVAL;
            }
            a[off + (size_t)dn] = 0;
            md[k++] = (struct grpc_md){name, a + off, (size_t)dn};
            off += (size_t)dn + 1;
            if (!comma) break;
            p = comma + 1;
        }
    }
    *out = md;
    *nout = k;
    *arena = a;
    return 0;
}

static const char *hdr_get(const struct h2_header *h, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(h[i].name, name) == 0) return h[i].value;
    return NULL;
}

/* ---- call lifetime ---- */

static void pending_free(struct pending_info *pi);

static void call_free(struct grpc_call *c)
{
    for (struct chunk *k = c->head, *nx; k; k = nx) {
        nx = k->next;
        free(k);
    }
    grpc_deframer_free(&c->df);
    free(c->msg);
    free(c->peer_msg);
    free(c->pend);
    free(c->req);
    free(c->trailers);
    free(c->trailer_arena);
    pending_free(c->pi);
    free(c);
}

static void call_task(struct task *t)
{
    struct grpc_call *c = container_of(t, struct grpc_call, task);
    if (c->dead) {
        call_free(c);
        return;
    }
    if (c->writable_due) {
        c->writable_due = false;
        if (c->ops && c->ops->on_writable) c->ops->on_writable(c, c->ud);
    }
}

static void on_deadline(struct timer *t);

static struct grpc_call *call_new(struct loop *l, bool server, const struct grpc_opts *o)
{
    struct grpc_call *c = calloc(1, sizeof(*c));
    if (!c) return NULL;
    c->server = server;
    c->l = l;
    c->max_send = o->max_send;
    c->queue_max = o->send_queue_max ? o->send_queue_max : GRPC_SEND_QUEUE_MAX;
    grpc_deframer_init(&c->df, o->max_recv);
    c->task.cb = call_task;
    c->deadline.cb = on_deadline;
    c->st = GRPC_STATUS_OK;
    return c;
}

static void arm_deadline(struct grpc_call *c, uint64_t ms)
{
    c->deadline_at = loop_now(c->l) + ms;
    if (c->deadline_at == 0) c->deadline_at = 1;
    timer_start(c->l, &c->deadline, ms);
}

/* Ends the stream now with RST_STREAM CANCEL (if HTTP/2 still has it); on_end follows. */
static void call_reset(struct grpc_call *c, const char *why)
{
    if (c->s) h2_stream_end(c->s, H2_END_LOCAL, NGHTTP2_CANCEL, why);
}

/* ---- sending ---- */

size_t grpc_call_queued(const struct grpc_call *c)
{
    return c->queued;
}

bool grpc_call_writable(struct grpc_call *c, size_t n)
{
    if (c->queued == 0 || c->queued + GRPC_FRAME_HDR + n <= c->queue_max) return true;
    c->want_writable = true;
    return false;
}

void grpc_call_notify_writable(struct grpc_call *c)
{
    if (c->dead) return;
    if (c->queued <= c->queue_max / 2) {
        c->writable_due = true; /* from a task, as after a refused send */
        loop_defer(c->l, &c->task);
    } else {
        c->want_writable = true;
    }
}

static void wake(struct grpc_call *c)
{
    if (c->parked && c->s) {
        c->parked = false;
        h2_stream_resume(c->s);
    }
}

static int server_send_headers(struct grpc_call *c);

uint8_t *grpc_call_send_alloc(struct grpc_call *c, size_t n, int *err)
{
    char why[128];
    *err = 0;
    if (!c->s || c->send_closed || (c->server && c->finished)) {
        *err = -EPIPE;
    } else if (grpc_check_send_size(n, c->max_send, why, sizeof(why)) != GRPC_STATUS_OK) {
        *err = -EMSGSIZE;
    } else if (c->server && c->unary && c->sent_msgs > 0) {
        *err = -EINVAL;
    } else if (!grpc_call_writable(c, n)) {
        *err = -EAGAIN;
    } else if (c->server && !c->headers_sent) {
        *err = server_send_headers(c);
    }
    if (*err < 0) return NULL;
    size_t need = GRPC_FRAME_HDR + n;
    struct chunk *k = c->tail;
    if (!k || k->cap - k->len < need) {
        size_t cap = need > CHUNK_SIZE ? need : CHUNK_SIZE;
        k = malloc(sizeof(*k) + cap);
        if (!k) {
            *err = -ENOMEM;
            return NULL;
        }
        k->next = NULL;
        k->len = k->off = 0;
        k->cap = cap;
        if (c->tail)
            c->tail->next = k;
        else
            c->head = k;
        c->tail = k;
    }
    uint8_t *msg = k->data + k->len;
    grpc_frame_header(msg, false, (uint32_t)n);
    k->len += need;
    c->queued += need;
    c->sent_msgs++;
    /* The session pulls from a deferred flush, never from inside resume: the caller fills the bytes first. */
    wake(c);
    return msg + GRPC_FRAME_HDR;
}

int grpc_call_send(struct grpc_call *c, const uint8_t *p, size_t n)
{
    int err;
    uint8_t *dst = grpc_call_send_alloc(c, n, &err);
    if (!dst) return err;
    if (n) memcpy(dst, p, n);
    return 0;
}

static size_t st_pull(struct h2_stream *s, void *ud, const uint8_t **data, bool *eof)
{
    struct grpc_call *c = ud;
    if (c->head) {
        *data = c->head->data + c->head->off;
        return c->head->len - c->head->off;
    }
    if (c->send_closed) {
        *eof = true;
        return 0;
    }
    c->parked = true;
    return 0;
}

static void st_sent(struct h2_stream *s, void *ud, size_t n)
{
    struct grpc_call *c = ud;
    while (n > 0 && c->head) {
        struct chunk *k = c->head;
        size_t take = k->len - k->off < n ? k->len - k->off : n;
        k->off += take;
        c->queued -= take;
        n -= take;
        if (k->off == k->len) {
            c->head = k->next;
            if (!c->head) c->tail = NULL;
            free(k);
        }
    }
    if (c->want_writable && c->queued <= c->queue_max / 2) {
        /* From a task: the handler's sends must not run inside the session's flush. */
        c->want_writable = false;
        c->writable_due = true;
        loop_defer(c->l, &c->task);
    }
}

/* ---- receiving ---- */

static void server_deliver_unary(struct grpc_call *c);

static int on_msg(void *ud, const uint8_t *p, size_t n)
{
    struct grpc_call *c = ud;
    c->received++;
    if (c->server) {
        if (c->finished) return 1;
        if (c->unary) {
            if (c->have_req) {
                /* doc/statuscodes.md: request cardinality violation. */
                grpc_call_finish(c, GRPC_STATUS_UNIMPLEMENTED,
                                 "more than one request message for a unary method", NULL, 0);
                return 1;
            }
            c->req = malloc(n ? n : 1);
            if (!c->req) {
                grpc_call_finish(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory", NULL, 0);
                return 1;
            }
            memcpy(c->req, p, n);
            c->req_n = n;
            c->have_req = true;
            return 0;
        }
        if (!c->ops || !c->ops->on_message) {
            grpc_call_finish(c, GRPC_STATUS_INTERNAL, "the handler takes no messages", NULL, 0);
            return 1;
        }
        c->ops->on_message(c, c->ud, p, n);
        return !c->s || c->finished;
    }
    if (c->finished) return 1;
    if (c->unary && c->received > 1) {
        set_status(c, GRPC_STATUS_UNIMPLEMENTED, "more than one response message for a unary call");
        c->finished = true;
        call_reset(c, "response cardinality violation");
        return 1;
    }
    if (c->ops && c->ops->on_message) c->ops->on_message(c, c->ud, p, n);
    return !c->s || c->finished;
}

/* Feeds DATA to the deframer and credits the window; ends the call on a framing error. */
static void feed(struct grpc_call *c, const uint8_t *data, size_t len)
{
    char err[160];
    enum grpc_status st = GRPC_STATUS_OK;
    if (!c->finished) st = grpc_deframer_feed(&c->df, data, len, on_msg, c, err, sizeof(err));
    if (c->s) h2_stream_consume(c->s, len);
    if (st == GRPC_STATUS_OK || !c->s) return;
    if (c->server) {
        grpc_call_finish(c, st, err, NULL, 0);
    } else {
        /* doc/statuscodes.md: a compression the client cannot undo is INTERNAL on the client side (the
         * deframer's UNIMPLEMENTED is the server side's answer). */
        if (st == GRPC_STATUS_UNIMPLEMENTED) st = GRPC_STATUS_INTERNAL;
        set_status(c, st, err);
        c->finished = true;
        call_reset(c, err);
    }
}

static void st_data(struct h2_stream *s, void *ud, const uint8_t *data, size_t len)
{
    struct grpc_call *c = ud;
    if (c->server && !c->request_seen) {
        /* Kept unconsumed: the peer can send no more than its window before the request is handed over. */
        uint8_t *np = realloc(c->pend, c->pend_n + len);
        if (!np) {
            h2_stream_end(s, H2_END_NO_MEMORY, NGHTTP2_INTERNAL_ERROR, "out of memory");
            return;
        }
        memcpy(np + c->pend_n, data, len);
        c->pend = np;
        c->pend_n += len;
        return;
    }
    feed(c, data, len);
}

static void peer_done(struct grpc_call *c)
{
    char err[160];
    if (c->finished) return;
    enum grpc_status st = grpc_deframer_finish(&c->df, err, sizeof(err));
    if (st != GRPC_STATUS_OK) {
        if (c->server) {
            grpc_call_finish(c, st, err, NULL, 0);
        } else {
            set_status(c, st, err);
            c->finished = true;
        }
        return;
    }
    if (!c->server) {
        /* The response is complete (trailers, or Trailers-Only): the call is over whatever our side does, and
         * a server that does not reset the stream (RFC 9113 allows either) would otherwise leave it open
         * until we end it. on_end reports the server's status. */
        if (c->s) h2_stream_end(c->s, H2_END_OK, NGHTTP2_NO_ERROR, "the server completed the call");
        return;
    }
    if (c->unary) {
        server_deliver_unary(c);
    } else if (c->ops && c->ops->on_half_close) {
        c->ops->on_half_close(c, c->ud);
    }
}

static void st_eof(struct h2_stream *s, void *ud)
{
    struct grpc_call *c = ud;
    c->peer_eof = true;
    if (c->server && !c->request_seen) return; /* handled when the request is */
    peer_done(c);
}

/* Reads grpc-status and grpc-message from a response's last header block. */
static void client_take_status(struct grpc_call *c, const struct h2_header *h, size_t n)
{
    const char *st = hdr_get(h, n, "grpc-status");
    if (!st) return;
    c->got_status = true;
    if (!grpc_status_parse(st, strlen(st), &c->peer_st)) {
        free(c->peer_msg);
        size_t l = strlen(st) + 40;
        c->peer_msg = malloc(l);
        if (c->peer_msg) snprintf(c->peer_msg, l, "invalid grpc-status %.16s", st);
        return;
    }
    const char *m = hdr_get(h, n, "grpc-message");
    free(c->peer_msg);
    c->peer_msg = NULL;
    if (m) {
        size_t ml = strlen(m);
        c->peer_msg = malloc(ml + 1);
        if (c->peer_msg) grpc_message_decode(m, ml, c->peer_msg);
    }
    free(c->trailers);
    free(c->trailer_arena);
    c->trailers = NULL;
    c->trailer_arena = NULL;
    const char *bad = NULL;
    if (md_from_headers(h, n, &c->trailers, &c->n_trailers, &c->trailer_arena, &bad) == -EINVAL)
        LOG_LIMITED(LOG_WARN, LOG_T, "dropped the trailers' metadata: %s is not base64", bad);
}

static void st_headers(struct h2_stream *s, void *ud, const struct h2_headers *h)
{
    struct grpc_call *c = ud;
    if (c->server) return; /* grpc clients send no trailers; HTTP allows them and they mean nothing here */
    if (h->kind == H2_HEADERS_RESPONSE) {
        c->http_status = h->status;
        const char *ct = hdr_get(h->headers, h->n_headers, "content-type");
        c->grpc_ct = ct && grpc_content_type_ok(ct, strlen(ct), NULL, NULL);
        const char *enc = hdr_get(h->headers, h->n_headers, "grpc-encoding");
        c->df.encoding_set = enc && strcmp(enc, "identity") != 0;
        /* Trailers-Only: the status is in the response headers. */
        if (h->end_stream) client_take_status(c, h->headers, h->n_headers);
        return;
    }
    client_take_status(c, h->headers, h->n_headers);
}

/* The status a client call ended with. */
static void client_result(struct grpc_call *c, const struct h2_end *e, struct grpc_result *r, char *buf,
                          size_t bl)
{
    if (c->finished) {
        r->status = c->st;
        r->message = c->msg ? c->msg : "";
        return;
    }
    if (c->got_status) {
        /* The server's status is final, however the stream ends after it: a server that answers before our
         * END_STREAM follows its trailers with RST_STREAM NO_ERROR (PROTOCOL-HTTP2.md "Early Server
         * Closure"). */
        r->status = c->peer_st;
        r->message = c->peer_msg ? c->peer_msg : "";
        if (c->unary && r->status == GRPC_STATUS_OK && c->received != 1) {
            r->status = GRPC_STATUS_UNIMPLEMENTED;
            r->message = "no response message for a unary call";
        }
        return;
    }
    switch (e->reason) {
    case H2_END_OK:
        if (c->http_status != 200) {
            /* doc/http-grpc-status-mapping.md: only for responses without grpc-status. */
            r->status = grpc_status_from_http(c->http_status);
            snprintf(buf, bl, "HTTP status %d without grpc-status", c->http_status);
            r->message = buf;
        } else if (!c->grpc_ct) {
            r->status = GRPC_STATUS_UNKNOWN;
            r->message = "response content-type is not application/grpc";
        } else {
            r->status = GRPC_STATUS_UNKNOWN;
            r->message = "the stream ended without grpc-status";
        }
        return;
    case H2_END_RESET_BY_PEER:
        r->status = grpc_status_from_h2_error(e->code);
        /* PROTOCOL-HTTP2.md: a CANCELLED after our deadline is DEADLINE_EXCEEDED. */
        if (r->status == GRPC_STATUS_CANCELLED && c->deadline_at && loop_now(c->l) >= c->deadline_at)
            r->status = GRPC_STATUS_DEADLINE_EXCEEDED;
        snprintf(buf, bl, "stream reset by the server (HTTP/2 error 0x%x)", e->code);
        r->message = buf;
        return;
    case H2_END_PROTOCOL:
        r->status = GRPC_STATUS_INTERNAL;
        break;
    case H2_END_NO_MEMORY:
        r->status = GRPC_STATUS_RESOURCE_EXHAUSTED;
        break;
    case H2_END_LOCAL:
        r->status = GRPC_STATUS_CANCELLED;
        break;
    case H2_END_REJECTED:
        r->status = GRPC_STATUS_UNKNOWN;
        break;
    default:
        /* Connect, TLS, identity, keepalive and I/O failures, the connection closing, a refused stream:
         * "connection failure ... UNAVAILABLE" (PROTOCOL-HTTP2.md). */
        r->status = GRPC_STATUS_UNAVAILABLE;
        break;
    }
    snprintf(buf, bl, "%s: %s", h2_end_reason_to_str(e->reason), e->detail ? e->detail : "");
    r->message = buf;
}

static void server_result(struct grpc_call *c, const struct h2_end *e, struct grpc_result *r)
{
    if (c->deadline_hit) {
        r->status = GRPC_STATUS_DEADLINE_EXCEEDED;
        r->message = "Deadline Exceeded";
    } else if (c->finished && (e->reason == H2_END_OK || e->reason == H2_END_LOCAL ||
                               (e->reason == H2_END_RESET_BY_PEER && e->code == NGHTTP2_NO_ERROR))) {
        /* Our status stands: sent (a client that got the trailers before its END_STREAM may answer with
         * RST_STREAM NO_ERROR, "Early Server Closure"), or given to grpc_call_cancel. */
        r->status = c->st;
        r->message = c->msg ? c->msg : "";
    } else if (e->reason == H2_END_RESET_BY_PEER) {
        r->status = grpc_status_from_h2_error(e->code);
        /* The client's RST_STREAM CANCEL for its deadline usually arrives before our own timer fires. */
        if (r->status == GRPC_STATUS_CANCELLED && c->deadline_at && loop_now(c->l) + 50 >= c->deadline_at)
            r->status = GRPC_STATUS_DEADLINE_EXCEEDED;
        r->message = "stream reset by the client";
    } else {
        /* PROTOCOL-HTTP2.md: "For servers open calls will be closed with a CANCELLED status." */
        r->status = GRPC_STATUS_CANCELLED;
        r->message = e->detail ? e->detail : "";
    }
}

static void st_end(struct h2_stream *s, void *ud, const struct h2_end *e)
{
    struct grpc_call *c = ud;
    c->s = NULL;
    timer_stop(c->l, &c->deadline);
    struct grpc_result r = {.h2_reason = e->reason, .http_status = c->http_status, .message = ""};
    char buf[256];
    if (c->server) {
        server_result(c, e, &r);
    } else {
        client_result(c, e, &r, buf, sizeof(buf));
        r.trailers = c->trailers;
        r.n_trailers = c->n_trailers;
    }
    if (c->ops && c->ops->on_end) c->ops->on_end(c, c->ud, &r);
    c->dead = true;
    loop_defer(c->l, &c->task);
}

static const struct h2_stream_ops stream_ops = {
    .on_headers = st_headers,
    .on_data = st_data,
    .on_eof = st_eof,
    .pull = st_pull,
    .sent = st_sent,
    .on_end = st_end,
};

static void on_deadline(struct timer *t)
{
    struct grpc_call *c = container_of(t, struct grpc_call, deadline);
    if (!c->s) return;
    c->deadline_hit = true;
    if (!c->server) {
        set_status(c, GRPC_STATUS_DEADLINE_EXCEEDED, "Deadline Exceeded");
        c->finished = true;
    }
    /* PROTOCOL-HTTP2.md "Client Cancellation": both sides reset the stream with CANCEL. */
    call_reset(c, "deadline exceeded");
}

void grpc_call_set_ops(struct grpc_call *c, const struct grpc_call_ops *ops, void *ud)
{
    c->ops = ops;
    c->ud = ud;
}

uint64_t grpc_call_received(const struct grpc_call *c)
{
    return c->received;
}

void grpc_call_cancel(struct grpc_call *c, enum grpc_status st, const char *msg)
{
    if (!c->s) return;
    if (!c->server) {
        st = GRPC_STATUS_CANCELLED;
        if (!msg) msg = "Cancelled";
    }
    set_status(c, st, msg);
    c->finished = true;
    call_reset(c, msg ? msg : "cancelled");
}

/* ---- server ---- */

static int server_send_headers(struct grpc_call *c)
{
    static const struct h2_header h[] = {{"content-type", "application/grpc"},
                                         {"grpc-accept-encoding", "identity"}};
    int rc = h2_stream_respond(c->s, 200, h, 2, H2_BODY);
    if (rc < 0) return rc;
    c->headers_sent = true;
    return 0;
}

/* Builds grpc-status, grpc-message and metadata into hl. */
static int status_headers(struct hlist *hl, enum grpc_status st, const char *msg, const struct grpc_md *md,
                          size_t n_md)
{
    char num[16];
    snprintf(num, sizeof(num), "%d", (int)st);
    int rc = hl_add_own(hl, "grpc-status", strdup(num));
    if (rc == 0 && msg && *msg) {
        size_t ml = strlen(msg);
        char *e = malloc(3 * ml + 1);
        if (e) grpc_message_encode(msg, ml, e, 3 * ml + 1);
        rc = hl_add_own(hl, "grpc-message", e);
    }
    if (rc == 0) rc = hl_add_md(hl, md, n_md);
    return rc;
}

/* Answers a request the layer refuses itself, before any handler: Trailers-Only with http_status. */
static void trailers_only(struct grpc_call *c, int http_status, enum grpc_status st, const char *msg)
{
    struct hlist hl;
    c->finished = true;
    set_status(c, st, msg);
    LOG_LIMITED(LOG_DEBUG, LOG_T, "refused a call: status=%s message=%s", grpc_status_to_str(st), msg);
    if (hl_init(&hl, 4) == 0) {
        hl_add(&hl, "content-type", "application/grpc");
        if (status_headers(&hl, st, msg, NULL, 0) == 0 &&
            h2_stream_respond(c->s, http_status, hl.h, hl.n, 0) == 0) {
            hl_free(&hl);
            return;
        }
    }
    hl_free(&hl);
    h2_stream_end(c->s, H2_END_NO_MEMORY, NGHTTP2_INTERNAL_ERROR, "out of memory");
}

int grpc_call_finish(struct grpc_call *c, enum grpc_status st, const char *msg, const struct grpc_md *md,
                     size_t n_md)
{
    if (!c->server) return -EINVAL;
    if (!c->s || c->finished) return -EPIPE;
    struct hlist hl;
    int rc = hl_init(&hl, 4 + n_md);
    if (rc == 0 && !c->headers_sent && !c->head) {
        /* Nothing sent: a Trailers-Only response. */
        hl_add(&hl, "content-type", "application/grpc");
        rc = status_headers(&hl, st, msg, md, n_md);
        if (rc == 0) rc = h2_stream_respond(c->s, 200, hl.h, hl.n, 0);
    } else if (rc == 0) {
        rc = status_headers(&hl, st, msg, md, n_md);
        if (rc == 0 && !c->headers_sent) rc = server_send_headers(c);
        if (rc == 0) rc = h2_stream_trailers(c->s, hl.h, hl.n);
        if (rc == 0) {
            /* The call is over with the trailers: a client still sending is told to stop. */
            h2_stream_reset_when_done(c->s);
            c->send_closed = true;
            wake(c);
        }
    }
    hl_free(&hl);
    if (rc < 0) return rc;
    c->finished = true;
    set_status(c, st, msg);
    timer_stop(c->l, &c->deadline);
    return 0;
}

static void run_handler(struct grpc_call *c, struct pending_info *pi);

static void server_deliver_unary(struct grpc_call *c)
{
    if (c->finished) return;
    if (!c->have_req) {
        grpc_call_finish(c, GRPC_STATUS_UNIMPLEMENTED, "no request message for a unary method", NULL, 0);
        return;
    }
    /* The info was built at request time; a unary handler runs once the request is complete. */
    struct pending_info *pi = c->pi;
    c->pi = NULL;
    run_handler(c, pi);
    pending_free(pi);
}

/* Splits "/pkg.Service/Method" into service and method; false when it is not of that form. */
static bool path_split(const char *p, const char **svc, size_t *svc_n, const char **meth)
{
    if (p[0] != '/') return false;
    const char *slash = strchr(p + 1, '/');
    if (!slash || slash == p + 1 || !slash[1] || strchr(slash + 1, '/')) return false;
    *svc = p + 1;
    *svc_n = (size_t)(slash - p - 1);
    *meth = slash + 1;
    return true;
}

static const struct method *find_method(const struct grpc_server *srv, const char *path)
{
    for (size_t i = 0; i < srv->n_methods; i++)
        if (strcmp(srv->methods[i].path, path) == 0) return &srv->methods[i];
    return NULL;
}

/* grpc-go's wording: "unknown service X" when no method of the service is known, else "unknown method M
 * for service X". */
static void unknown_method(const struct grpc_server *srv, const char *path, char *buf, size_t bl)
{
    const char *svc, *meth;
    size_t sn;
    if (!path_split(path, &svc, &sn, &meth)) {
        snprintf(buf, bl, "malformed method name: %.200s", path);
        return;
    }
    for (size_t i = 0; i < srv->n_methods; i++) {
        const char *p = srv->methods[i].path;
        if (strncmp(p + 1, svc, sn) == 0 && p[1 + sn] == '/') {
            snprintf(buf, bl, "unknown method %.100s for service %.*s", meth, (int)(sn > 100 ? 100 : sn),
                     svc);
            return;
        }
    }
    snprintf(buf, bl, "unknown service %.*s", (int)(sn > 200 ? 200 : sn), svc);
}

static void srv_on_stream(struct h2_conn *hc, void *ud, struct h2_stream *s)
{
    struct sconn *sc = ud;
    struct grpc_call *c = call_new(h2_conn_loop(hc), true, &sc->srv->o);
    if (!c) {
        h2_stream_end(s, H2_END_NO_MEMORY, NGHTTP2_INTERNAL_ERROR, "out of memory");
        return;
    }
    c->s = s;
    *(struct grpc_call **)h2_stream_user(s) = c;
    h2_stream_set_ops(s, &stream_ops, c);
}

static void run_handler(struct grpc_call *c, struct pending_info *pi)
{
    struct grpc_call_info info = {
        .path = pi->path,
        .authority = pi->authority,
        .peer_id = pi->peer_id,
        .md = pi->md,
        .n_md = pi->n_md,
        .timeout_ns = pi->timeout_ns,
        .request = c->req,
        .request_len = c->req_n,
    };
    c->m->fn(c, c->m->ud, &info);
}

static void pending_free(struct pending_info *pi)
{
    if (!pi) return;
    free(pi->path);
    free(pi->authority);
    free(pi->peer_id);
    free(pi->md);
    free(pi->arena);
    free(pi);
}

static void srv_on_request(struct h2_stream *s, void *ud, const struct h2_request *req)
{
    struct sconn *sc = ud;
    struct grpc_server *srv = sc->srv;
    struct grpc_call *c = *(struct grpc_call **)h2_stream_user(s);
    char buf[320];
    c->request_seen = true;
    if (strcmp(req->method, "POST") != 0) {
        snprintf(buf, sizeof(buf), "Received a HEADERS frame with :method \"%.32s\" which should be POST",
                 req->method);
        trailers_only(c, 405, GRPC_STATUS_INTERNAL, buf);
        return;
    }
    const char *ct = hdr_get(req->headers, req->n_headers, "content-type");
    const char *sub;
    size_t sub_n;
    if (!ct || !grpc_content_type_ok(ct, strlen(ct), &sub, &sub_n)) {
        /* PROTOCOL-HTTP2.md: a content-type not beginning with application/grpc gets HTTP 415. */
        snprintf(buf, sizeof(buf), "invalid gRPC request content-type \"%.64s\"", ct ? ct : "");
        trailers_only(c, 415, GRPC_STATUS_INTERNAL, buf);
        return;
    }
    if (sub_n && !(sub_n == 5 && strncasecmp(sub, "proto", 5) == 0)) {
        /* Messages are protobuf here; grpc-go answers an unknown codec with INTERNAL. */
        snprintf(buf, sizeof(buf), "no codec registered for content-subtype %.*s",
                 (int)(sub_n > 32 ? 32 : sub_n), sub);
        trailers_only(c, 200, GRPC_STATUS_INTERNAL, buf);
        return;
    }
    const char *te = hdr_get(req->headers, req->n_headers, "te");
    if (!te || strcmp(te, "trailers") != 0) {
        /* "te: trailers" is how gRPC detects proxies that would drop the trailers (PROTOCOL-HTTP2.md). */
        trailers_only(c, 400, GRPC_STATUS_INTERNAL, "missing \"te: trailers\"");
        return;
    }
    uint64_t timeout_ns = UINT64_MAX;
    const char *to = hdr_get(req->headers, req->n_headers, "grpc-timeout");
    if (to && grpc_timeout_parse(to, strlen(to), &timeout_ns) < 0) {
        snprintf(buf, sizeof(buf), "malformed grpc-timeout: \"%.16s\"", to);
        trailers_only(c, 400, GRPC_STATUS_INTERNAL, buf);
        return;
    }
    const char *enc = hdr_get(req->headers, req->n_headers, "grpc-encoding");
    c->df.encoding_set = enc && strcmp(enc, "identity") != 0;
    const struct method *m = find_method(srv, req->path);
    if (!m) {
        unknown_method(srv, req->path, buf, sizeof(buf));
        trailers_only(c, 200, GRPC_STATUS_UNIMPLEMENTED, buf);
        return;
    }
    c->m = m;
    c->unary = m->kind == GRPC_UNARY;
    struct pending_info *pi = calloc(1, sizeof(*pi));
    const char *bad = NULL;
    int rc = -ENOMEM;
    if (pi) {
        pi->path = strdup(req->path);
        pi->authority = strdup(req->authority);
        pi->peer_id = strdup(h2_conn_peer_id(h2_stream_conn(s)));
        pi->timeout_ns = timeout_ns;
        rc = pi->path && pi->authority && pi->peer_id ? 0 : -ENOMEM;
        if (rc == 0) rc = md_from_headers(req->headers, req->n_headers, &pi->md, &pi->n_md, &pi->arena, &bad);
    }
    if (rc < 0) {
        pending_free(pi);
        if (rc == -EINVAL) snprintf(buf, sizeof(buf), "metadata %.64s is not base64", bad);
        trailers_only(c, 200, rc == -EINVAL ? GRPC_STATUS_INTERNAL : GRPC_STATUS_RESOURCE_EXHAUSTED,
                      rc == -EINVAL ? buf : "out of memory");
        return;
    }
    if (timeout_ns != UINT64_MAX) {
        if (timeout_ns == 0) {
            pending_free(pi);
            c->deadline_hit = true;
            call_reset(c, "deadline exceeded");
            return;
        }
        arm_deadline(c, grpc_timeout_ms(timeout_ns));
    }
    if (c->unary) {
        c->pi = pi;
    } else {
        run_handler(c, pi);
        pending_free(pi);
    }
    /* DATA and END_STREAM that came before the request. */
    if (c->s && c->pend_n) {
        uint8_t *p = c->pend;
        size_t n = c->pend_n;
        c->pend = NULL;
        c->pend_n = 0;
        feed(c, p, n);
        free(p);
    }
    if (c->s && c->peer_eof) peer_done(c);
}

static void srv_on_closed(struct h2_conn *hc, void *ud, const struct h2_end *e)
{
    struct sconn *sc = ud;
    struct grpc_server *srv = sc->srv;
    LIST_DEL(srv->conns, sc);
    srv->n_conns--;
    free(sc);
    if (srv->free_pending && srv->n_conns == 0) {
        for (size_t i = 0; i < srv->n_methods; i++)
            free(srv->methods[i].path);
        free(srv);
    }
}

static const struct h2_conn_ops srv_conn_ops = {
    .on_closed = srv_on_closed,
    .on_stream = srv_on_stream,
    .on_request = srv_on_request,
};

static void settings_init(struct h2_settings *set, const struct grpc_opts *o, bool server)
{
    memset(set, 0, sizeof(*set));
    set->log_name = LOG_T;
    /* grpc-core advertises no stream limit by default; 100 is HTTP/2's recommended minimum and plenty for
     * xDS and CA clients (one or two streams each). */
    set->max_concurrent_streams = server ? 100 : 0;
    set->max_open_streams = 100;
    /* Windows as HBONE's (Istio's sizes as the auto-tuning limits): a 200 MiB xDS push drains quickly. */
    set->stream_window = 256u << 10;
    set->stream_window_max = 4u << 20;
    set->conn_window = 1u << 20;
    set->conn_window_max = 16u << 20;
    set->max_frame = 16384;
    set->max_header_list = GRPC_MAX_HEADER_BYTES;
    set->max_headers = GRPC_MAX_HEADERS;
    set->max_header_bytes = GRPC_MAX_HEADER_BYTES;
    set->ping_interval_ms = o->ping_interval_ms;
    set->ping_timeout_ms = o->ping_timeout_ms ? o->ping_timeout_ms : 20000;
    set->handshake_timeout_ms = 10000;
    /* Streaming calls answer late (an xDS stream's first push, a CA call waiting for a signer): unanswered
     * requests are bounded by the stream limit only. */
    set->max_unanswered = 100;
    set->early_reset_burst = 5000;
    set->early_reset_rate = 500;
    set->linger_ms = 1000;
    set->stream_user_size = sizeof(struct grpc_call *);
}

struct grpc_server *grpc_server_new(struct loop *l, const struct grpc_opts *o)
{
    struct grpc_server *s = calloc(1, sizeof(*s));
    if (!s) return NULL;
    s->l = l;
    if (o) s->o = *o;
    settings_init(&s->set, &s->o, true);
    return s;
}

int grpc_server_add(struct grpc_server *s, const char *path, enum grpc_method_kind kind, grpc_handler_fn fn,
                    void *ud)
{
    const char *svc, *meth;
    size_t sn;
    if (!path || !fn || !path_split(path, &svc, &sn, &meth)) return -EINVAL;
    if (find_method(s, path)) return -EEXIST;
    if (s->n_methods == GRPC_MAX_METHODS) return -ENOSPC;
    char *p = strdup(path);
    if (!p) return -ENOMEM;
    s->methods[s->n_methods++] = (struct method){p, kind, fn, ud};
    return 0;
}

int grpc_server_serve(struct grpc_server *s, int fd, SSL_CTX *ctx)
{
    struct sconn *sc = calloc(1, sizeof(*sc));
    if (!sc) {
        close(fd);
        return -ENOMEM;
    }
    sc->srv = s;
    LIST_PUSH(s->conns, sc);
    s->n_conns++;
    sc->c = h2_server_new(s->l, fd, ctx, &s->set, &srv_conn_ops, sc);
    if (!sc->c) {
        LIST_DEL(s->conns, sc);
        s->n_conns--;
        free(sc);
        return -ENOMEM;
    }
    return 0;
}

void grpc_server_drain(struct grpc_server *s)
{
    /* A conn still in its handshake with no streams closes inside h2_conn_drain (on_closed unlinks it). */
    for (struct sconn *sc = s->conns, *nx; sc; sc = nx) {
        nx = sc->next;
        h2_conn_drain(sc->c);
    }
}

unsigned grpc_server_conns(const struct grpc_server *s)
{
    return s->n_conns;
}

void grpc_server_free(struct grpc_server *s)
{
    if (!s) return;
    s->free_pending = true;
    if (s->n_conns == 0) {
        for (size_t i = 0; i < s->n_methods; i++)
            free(s->methods[i].path);
        free(s);
        return;
    }
    /* h2_conn_close calls on_closed before it returns (session.h: "Closes now ... then on_closed"), which
     * unlinks the conn; the last one frees the server. */
    while (s->conns) {
        bool last = s->n_conns == 1;
        h2_conn_close(s->conns->c, H2_END_LOCAL, "server shutting down");
        if (last) return;
    }
}

/* ---- client ---- */

static void ch_on_closed(struct h2_conn *hc, void *ud, const struct h2_end *e)
{
    struct grpc_channel *ch = ud;
    ch->c = NULL;
    if (e->reason != H2_END_OK && e->reason != H2_END_LOCAL)
        LOG_LIMITED(LOG_DEBUG, LOG_T, "channel to %s closed: %s: %s", ch->authority,
                    h2_end_reason_to_str(e->reason), e->detail ? e->detail : "");
    if (ch->free_pending) {
        free(ch->authority);
        free(ch);
    }
}

static const struct h2_conn_ops ch_conn_ops = {.on_closed = ch_on_closed};

struct grpc_channel *grpc_channel_new(struct loop *l, int fd, SSL_CTX *ctx, const struct h2_peer *peer,
                                      const char *authority, const struct grpc_opts *o)
{
    struct grpc_channel *ch = calloc(1, sizeof(*ch));
    if (!ch || !(ch->authority = strdup(authority ? authority : ""))) {
        free(ch);
        close(fd);
        return NULL;
    }
    ch->l = l;
    if (o) ch->o = *o;
    ch->tls = ctx != NULL;
    struct h2_settings set;
    settings_init(&set, &ch->o, false);
    static const struct h2_peer none = {0};
    ch->c = h2_client_new(l, fd, ctx, peer ? peer : &none, &set, &ch_conn_ops, ch);
    if (!ch->c) {
        free(ch->authority);
        free(ch);
        return NULL;
    }
    return ch;
}

struct grpc_channel *grpc_channel_dial(struct loop *l, const struct sockaddr_storage *ss, SSL_CTX *ctx,
                                       const struct h2_peer *peer, const char *authority,
                                       const struct grpc_opts *o)
{
    int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return NULL;
    net_set_nodelay(fd);
    socklen_t len = ss->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    /* A refused or failing connect, immediate or later, is the session's to report (the socket never becomes
     * writable or fails on first use): calls end with UNAVAILABLE like for any other connection failure. */
    (void)connect(fd, (const struct sockaddr *)ss, len);
    return grpc_channel_new(l, fd, ctx, peer, authority, o);
}

bool grpc_channel_usable(const struct grpc_channel *ch)
{
    return ch->c && h2_conn_usable(ch->c);
}

void grpc_channel_free(struct grpc_channel *ch)
{
    if (!ch) return;
    if (!ch->c) {
        free(ch->authority);
        free(ch);
        return;
    }
    /* on_closed (run before h2_conn_close returns) frees the channel. */
    ch->free_pending = true;
    h2_conn_close(ch->c, H2_END_LOCAL, "channel closed");
}

struct grpc_call *grpc_call_start(struct grpc_channel *ch, const char *path, const struct grpc_call_opts *o,
                                  const struct grpc_call_ops *ops, void *ud, int *err)
{
    static const struct grpc_call_opts none = {0};
    const char *svc, *meth;
    size_t sn;
    int rc;
    if (!o) o = &none;
    if (!path || !path_split(path, &svc, &sn, &meth)) {
        *err = -EINVAL;
        return NULL;
    }
    if (!grpc_channel_usable(ch)) {
        *err = -EPIPE;
        return NULL;
    }
    struct grpc_call *c = call_new(ch->l, false, &ch->o);
    struct hlist hl;
    if (!c || hl_init(&hl, 10 + o->n_md) < 0) {
        if (c) {
            hl_free(&hl);
            call_free(c);
        }
        *err = -ENOMEM;
        return NULL;
    }
    c->ops = ops;
    c->ud = ud;
    /* PROTOCOL-HTTP2.md: pseudo-headers, then grpc-timeout, then the rest of Call-Definition, then
     * Custom-Metadata. */
    hl_add(&hl, ":method", "POST");
    hl_add(&hl, ":scheme", ch->tls ? "https" : "http");
    hl_add(&hl, ":path", path);
    hl_add(&hl, ":authority", ch->authority);
    rc = 0;
    if (o->timeout_ms) {
        char *t = malloc(GRPC_TIMEOUT_BUFSZ);
        uint64_t ns = o->timeout_ms > UINT64_MAX / 1000000 ? UINT64_MAX : o->timeout_ms * 1000000;
        if (t) grpc_timeout_format(ns, t);
        rc = hl_add_own(&hl, "grpc-timeout", t);
    }
    hl_add(&hl, "content-type", "application/grpc");
    hl_add(&hl, "te", "trailers");
    hl_add(&hl, "user-agent", USER_AGENT);
    /* zmesh decompresses nothing: servers must not compress what they send us. */
    hl_add(&hl, "grpc-accept-encoding", "identity");
    if (rc == 0) rc = hl_add_md(&hl, o->md, o->n_md);
    if (rc == 0) {
        c->s = h2_stream_open(ch->c, hl.h, hl.n, H2_BODY, &stream_ops, c);
        if (!c->s) rc = -EPIPE;
    }
    hl_free(&hl);
    if (rc < 0) {
        call_free(c);
        *err = rc;
        return NULL;
    }
    *(struct grpc_call **)h2_stream_user(c->s) = c;
    if (o->timeout_ms) arm_deadline(c, o->timeout_ms);
    *err = 0;
    return c;
}

struct grpc_call *grpc_call_unary(struct grpc_channel *ch, const char *path, const struct grpc_call_opts *o,
                                  const uint8_t *req, size_t n, const struct grpc_call_ops *ops, void *ud,
                                  int *err)
{
    char e[128];
    if (grpc_check_send_size(n, ch->o.max_send, e, sizeof(e)) != GRPC_STATUS_OK) {
        *err = -EMSGSIZE;
        return NULL;
    }
    struct grpc_call *c = grpc_call_start(ch, path, o, ops, ud, err);
    if (!c) return NULL;
    c->unary = true;
    /* The queue is empty, so the message is always taken. */
    int rc = grpc_call_send(c, req, n);
    if (rc == 0) rc = grpc_call_close_send(c);
    if (rc < 0) {
        /* The call exists (its stream is open): end it like any other, through on_end. */
        set_status(c, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        c->finished = true;
        call_reset(c, "out of memory");
    }
    return c;
}

int grpc_call_close_send(struct grpc_call *c)
{
    if (c->server || !c->s || c->send_closed) return -EPIPE;
    c->send_closed = true;
    wake(c);
    return 0;
}
