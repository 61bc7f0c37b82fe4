/* HBONE: CONNECT tunnels on the generic HTTP/2 session (h2/session.c), each bridged to a TCP socket.
 *
 * Data path, TCP -> HTTP/2: recv() into the stream's "up" buffer; the session pulls those bytes (ops->pull)
 * and frames them with NGHTTP2_DATA_FLAG_NO_COPY straight into its TLS record; ops->sent frees the buffer
 * space. HTTP/2 -> TCP: DATA payloads (ops->on_data) are sent straight to the TCP socket and only what the
 * socket refuses is buffered ("down"); the window is credited (h2_stream_consume) exactly as bytes reach the
 * socket. The stream's state lives in the user area of its h2_stream. */
#include "h2/hbone.h"

#include <errno.h>
#include <nghttp2/nghttp2.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/log.h"
#include "h2/budget.h"
#include "h2/obuf.h"

#define UP_SMALL (16u * 1024) /* largest read of an interactive stream */
#define UP_POOL_MAX 8         /* UP_SMALL buffers per thread, lent to interactive streams holding bytes */
#define UP_BIG (256u * 1024)
#define UP_GROW_AFTER (1u << 20)
#define HBONE_MAX_REQ_HEADERS 64
#define HBONE_MAX_REQ_BYTES (64u * 1024)
#define HBONE_RESET_BURST 20000
#define HBONE_RESET_RATE 10000    /* per second */
#define HBONE_MAX_OPEN_HEADERS 64 /* request headers a client stream may carry, besides :method */

struct hbone_conn {
    struct h2_conn *h;
    const struct hbone_conn_ops *ops;
    void *ud;
};

/* Lives in the user area of its h2_stream. */
struct hbone_stream {
    struct h2_stream *h;
    struct hbone_conn *c;
    struct loop *loop;
    struct io io;    /* TCP side; fd -1 until attached */
    bool registered; /* io is in epoll (edge-triggered, registered once) */
    bool can_read;   /* an edge said readable and no read has seen the socket empty since */
    bool rdhup;      /* the peer's FIN (or an error) was signalled: read on until recv says so */
    struct obuf up, down;
    bool relaying, up_eof, down_eof, wr_shut, h2_closed, done;
    int status;
    uint64_t to_h2, to_tcp;
    const struct hbone_stream_ops *ops;
    void *ud;
    bool up_reserved; /* the bulk "up" buffer is reserved from the memory budget */
    bool up_pooled;   /* the "up" buffer is lent by the thread's pool */
    struct task read_task;
};

/* Interactive streams read into an UP_SMALL buffer lent by this pool and give it back as soon as the session
 * has taken its bytes, so a round trip allocates nothing. A thread makes at most UP_POOL_MAX of them: when
 * all are lent, a stream reads into the thread's scratch and keeps a copy of just the bytes that arrived, so
 * many streams with bytes waiting (a burst of new connections, a full connection window) cost what they hold,
 * not 16 KiB each. */
static __thread uint8_t *tl_up_pool[UP_POOL_MAX];
static __thread unsigned tl_up_n, tl_up_made;
static __thread uint8_t *tl_scratch;
static _Atomic uint64_t buffered_total;
static uint32_t ping_interval_ms = HBONE_PING_INTERVAL_MS, ping_timeout_ms = HBONE_PING_TIMEOUT_MS;

uint64_t hbone_buffered_bytes(void)
{
    return atomic_load_explicit(&buffered_total, memory_order_relaxed);
}

static void buffered_add(int64_t n)
{
    atomic_fetch_add_explicit(&buffered_total, (uint64_t)n, memory_order_relaxed);
}

void hbone_set_keepalive(uint32_t interval_ms, uint32_t timeout_ms)
{
    ping_interval_ms = interval_ms ? interval_ms : HBONE_PING_INTERVAL_MS;
    ping_timeout_ms = timeout_ms ? timeout_ms : HBONE_PING_TIMEOUT_MS;
}

void hbone_settings(struct h2_settings *set, bool server)
{
    *set = (struct h2_settings){
        .log_name = "hbone",
        .max_concurrent_streams = server ? HBONE_SERVER_MAX_STREAMS : 0,
        .max_open_streams = HBONE_CLIENT_MAX_STREAMS,
        .stream_window = HBONE_STREAM_WINDOW_INIT,
        .stream_window_max = HBONE_STREAM_WINDOW,
        .conn_window = HBONE_CONN_WINDOW_INIT,
        .conn_window_max = HBONE_CONN_WINDOW,
        .max_frame = HBONE_MAX_FRAME,
        /* Istio's: 64 KiB on the server, 16 KiB on the client (istio/ztunnel
           src/proxy/h2/{server,client}.rs). */
        .max_header_list = server ? 64 * 1024 : 16 * 1024,
        .max_headers = HBONE_MAX_REQ_HEADERS,
        .max_header_bytes = HBONE_MAX_REQ_BYTES,
        .ping_interval_ms = ping_interval_ms,
        .ping_timeout_ms = ping_timeout_ms,
        .handshake_timeout_ms = HBONE_HANDSHAKE_TIMEOUT_MS,
        .max_unanswered = HBONE_MAX_UNANSWERED,
        .early_reset_burst = server ? HBONE_EARLY_RESET_BURST : 0,
        .early_reset_rate = HBONE_EARLY_RESET_RATE,
        /* nghttp2's rapid-reset guard (1000 resets, then 33/s) would end a pooled connection whose client
         * apps simply reset many TCP connections: each becomes an RST_STREAM. The peer is an authenticated
         * mesh member, so allow a much higher, still bounded, rate; the early-reset budget bounds what
         * they cost. */
        .reset_limit_burst = server ? HBONE_RESET_BURST : 0,
        .reset_limit_rate = HBONE_RESET_RATE,
        .linger_ms = HBONE_LINGER_MS,
        .stream_user_size = sizeof(struct hbone_stream),
    };
}

static void stream_read_tcp(struct hbone_stream *s);

/* ---- the TCP side ---- */

static void stream_close_tcp(struct hbone_stream *s)
{
    if (s->io.fd < 0) return;
    loop_io_close(s->loop, &s->io);
    s->registered = false;
}

/* Drops s's "up" buffer: a small one goes back to the thread's pool, a bulk one is freed (its budget
 * reservation is the caller's). */
static void stream_up_release(struct hbone_stream *s)
{
    if (s->up_pooled)
        tl_up_pool[tl_up_n++] = s->up.p;
    else
        free(s->up.p);
    s->up_pooled = false;
    memset(&s->up, 0, sizeof(s->up));
}

/* Ends the stream; the session resets it if HTTP/2 still has it open, and calls on_end (hb_on_end). */
static void stream_finish(struct hbone_stream *s, enum h2_end_reason reason, const char *err)
{
    if (s->done) return;
    h2_stream_end(s->h, reason, NGHTTP2_CANCEL, err);
}

/* A stream ends cleanly once HTTP/2 is done with it and everything received reached the TCP socket. */
static void stream_check_finish(struct hbone_stream *s)
{
    if (s->done || !s->h2_closed) return;
    if (s->io.fd >= 0 && obuf_used(&s->down)) return;
    stream_finish(s, H2_END_OK, NULL);
}

/* Sockets are registered once, edge-triggered, for both directions: a busy tunnel then costs no epoll_ctl
 * at all. Readiness is remembered in can_read; a read that stopped on a full buffer resumes from a task
 * when the buffer drains (stream_wants_read), since no new edge may come. */
static void stream_arm(struct hbone_stream *s)
{
    if (s->done || s->io.fd < 0 || s->registered) return;
    if (loop_io_add(s->loop, &s->io, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET) == 0) s->registered = true;
}

static bool stream_read_room(const struct hbone_stream *s)
{
    return s->relaying && !s->up_eof && !s->done && s->io.fd >= 0 && (!s->up.p || s->up.len < s->up.cap);
}

static void stream_read_task_cb(struct task *t)
{
    struct hbone_stream *s = container_of(t, struct hbone_stream, read_task);
    if (!s->done && s->can_read && stream_read_room(s)) stream_read_tcp(s);
}

static void stream_wants_read(struct hbone_stream *s)
{
    if (s->can_read && stream_read_room(s)) loop_defer(s->loop, &s->read_task);
}

/* Writes buffered HTTP/2 bytes to the TCP socket. */
static void stream_write_tcp(struct hbone_stream *s)
{
    while (obuf_used(&s->down)) {
        ssize_t n = send(s->io.fd, s->down.p + s->down.off, obuf_used(&s->down), MSG_NOSIGNAL);
        if (n > 0) {
            obuf_consume(&s->down, (size_t)n);
            buffered_add(-n);
            s->to_tcp += (uint64_t)n;
            h2_stream_consume(s->h, (size_t)n);
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        stream_finish(s, H2_END_IO, n < 0 ? strerror(errno) : "send returned 0");
        return;
    }
    if (!obuf_used(&s->down) && s->down_eof && !s->wr_shut && s->io.fd >= 0) {
        shutdown(s->io.fd, SHUT_WR); /* END_STREAM becomes FIN */
        s->wr_shut = true;
    }
    stream_check_finish(s);
}

static void stream_read_tcp(struct hbone_stream *s)
{
    bool got = false;
    while (s->can_read && stream_read_room(s)) {
        ssize_t n;
        size_t want;
        if (s->up.p) {
            want = s->up.cap - s->up.len;
            n = recv(s->io.fd, s->up.p + s->up.len, want, 0);
            if (n > 0) s->up.len += (size_t)n;
        } else if (s->to_h2 >= UP_GROW_AFTER && (s->up_reserved || h2_mem_reserve(UP_BIG))) {
            /* A bulk stream: one large buffer, read into directly and kept until the stream ends. It is
             * reserved from the memory budget; when that is spent the stream stays on small reads. */
            s->up_reserved = true;
            s->up.p = malloc(UP_BIG);
            if (!s->up.p) break;
            s->up.cap = want = UP_BIG;
            n = recv(s->io.fd, s->up.p, want, 0);
            if (n > 0) s->up.len = (size_t)n;
        } else {
            /* Interactive streams read into a buffer lent by the thread's pool, given back as soon as the
             * session has taken the bytes; when all are lent, into the thread's scratch, keeping a copy of
             * only what arrived. Either way thousands of chatty or idle connections hold no buffer each. */
            uint8_t *pb = tl_up_n ? tl_up_pool[--tl_up_n] : NULL;
            if (!pb && tl_up_made < UP_POOL_MAX && (pb = malloc(UP_SMALL))) tl_up_made++;
            if (!pb && !tl_scratch && !(tl_scratch = malloc(UP_SMALL))) {
                stream_finish(s, H2_END_NO_MEMORY, "out of memory");
                return;
            }
            want = UP_SMALL;
            n = recv(s->io.fd, pb ? pb : tl_scratch, want, 0);
            if (pb && n > 0) {
                s->up.p = pb;
                s->up_pooled = true;
                s->up.cap = UP_SMALL;
                s->up.len = (size_t)n;
            } else if (pb) {
                tl_up_pool[tl_up_n++] = pb;
            } else if (n > 0) {
                s->up.p = malloc((size_t)n);
                if (!s->up.p) {
                    stream_finish(s, H2_END_NO_MEMORY, "out of memory");
                    return;
                }
                memcpy(s->up.p, tl_scratch, (size_t)n);
                s->up.cap = s->up.len = (size_t)n;
            }
        }
        if (n > 0) {
            got = true;
            /* A short read emptied the socket: the next byte brings a new edge. A FIN signalled earlier,
             * while the buffer was full, brings none: then read on until recv returns 0. */
            if ((size_t)n < want && !s->rdhup) s->can_read = false;
            continue;
        }
        if (n == 0) {
            s->up_eof = true; /* FIN becomes END_STREAM once the buffer is sent */
            got = true;
            if (!obuf_used(&s->up)) stream_up_release(s);
            break;
        }
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            s->can_read = false;
            break;
        }
        stream_finish(s, H2_END_IO, strerror(errno));
        return;
    }
    if (got) h2_stream_resume(s->h);
}

static void stream_io_cb(struct io *io, uint32_t ev)
{
    struct hbone_stream *s = container_of(io, struct hbone_stream, io);
    if (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)) {
        if (obuf_used(&s->down)) stream_write_tcp(s);
        if (s->done) return;
    }
    if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP)) {
        s->can_read = true;
        if (ev & (EPOLLRDHUP | EPOLLERR | EPOLLHUP)) s->rdhup = true;
        stream_read_tcp(s);
    }
}

static void stream_attach_tcp(struct hbone_stream *s, int fd)
{
    s->io.fd = fd;
    s->io.cb = stream_io_cb;
    s->relaying = true;
    if (obuf_used(&s->down)) stream_write_tcp(s);
    stream_arm(s); /* registering reports what is already pending */
}

/* ---- the session's stream callbacks ---- */

static size_t hb_pull(struct h2_stream *h, void *ud, const uint8_t **data, bool *eof)
{
    (void)h;
    struct hbone_stream *s = ud;
    *data = s->up.p ? s->up.p + s->up.off : NULL;
    *eof = s->up_eof;
    return obuf_used(&s->up);
}

static void hb_sent(struct h2_stream *h, void *ud, size_t n)
{
    (void)h;
    struct hbone_stream *s = ud;
    s->to_h2 += n;
    bool was_full = s->up.len == s->up.cap;
    if (s->up.off + n < s->up.len)
        s->up.off += n;
    else if (s->up.cap == UP_BIG)
        s->up.off = s->up.len = 0; /* a bulk stream keeps its buffer */
    else
        stream_up_release(s); /* back to the pool: an idle tunnel holds no buffer */
    if (was_full) stream_wants_read(s);
}

static void hb_on_data(struct h2_stream *h, void *ud, const uint8_t *data, size_t len)
{
    struct hbone_stream *s = ud;
    if (s->io.fd >= 0 && !obuf_used(&s->down)) {
        ssize_t n = send(s->io.fd, data, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            s->to_tcp += (uint64_t)n;
            h2_stream_consume(h, (size_t)n);
            data += n;
            len -= (size_t)n;
        } else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            stream_finish(s, H2_END_IO, strerror(errno)); /* the session returns the window */
            return;
        }
    }
    if (len) {
        if (obuf_append(&s->down, data, len) < 0) {
            stream_finish(s, H2_END_NO_MEMORY, "out of memory");
            return;
        }
        buffered_add((int64_t)len);
        /* The socket refused part of it: its EPOLLOUT edge will come. */
    }
}

static void hb_on_eof(struct h2_stream *h, void *ud)
{
    (void)h;
    struct hbone_stream *s = ud;
    s->down_eof = true;
    if (s->io.fd >= 0) stream_write_tcp(s);
}

static void hb_on_headers(struct h2_stream *h, void *ud, const struct h2_headers *hd)
{
    struct hbone_stream *s = ud;
    if (hd->kind != H2_HEADERS_RESPONSE)
        return; /* CONNECT has no trailers; HTTP/2 ends the stream as usual */
    s->status = hd->status;
    if (s->ops && s->ops->on_response) s->ops->on_response(s, s->ud, s->status);
    if (s->done) return;
    if (s->status == 200) {
        s->relaying = true;
        stream_arm(s); /* registering reports what the app already sent */
    } else {
        char err[48];
        snprintf(err, sizeof(err), "HBONE CONNECT rejected with status %d", s->status);
        (void)h;
        stream_finish(s, H2_END_REJECTED, err);
    }
}

static void hb_on_close(struct h2_stream *h, void *ud, const struct h2_end *e)
{
    (void)h;
    struct hbone_stream *s = ud;
    s->h2_closed = true;
    /* RST_STREAM NO_ERROR/CANCEL counts as EOF (as in Istio); other codes end the tunnel with an error. */
    bool clean = e->reason == H2_END_OK || (e->reason == H2_END_RESET_BY_PEER &&
                                            (e->code == NGHTTP2_NO_ERROR || e->code == NGHTTP2_CANCEL));
    if (!clean) {
        h2_stream_end(s->h, e->reason, e->code, e->detail); /* closed already: no RST, the code is kept */
        return;
    }
    if (!s->relaying) {
        if (s->status)
            stream_finish(s, H2_END_OK, NULL);
        else
            stream_finish(s, e->reason == H2_END_OK ? H2_END_PROTOCOL : e->reason,
                          "stream closed before response");
        return;
    }
    s->down_eof = true;
    if (s->io.fd >= 0) stream_write_tcp(s);
    if (!s->done) stream_check_finish(s);
}

static void hb_on_end(struct h2_stream *h, void *ud, const struct h2_end *e)
{
    (void)h;
    struct hbone_stream *s = ud;
    s->done = true;
    stream_close_tcp(s);
    if (s->up_reserved) h2_mem_release(UP_BIG);
    s->up_reserved = false;
    buffered_add(-(int64_t)obuf_used(&s->down));
    stream_up_release(s);
    obuf_free(&s->down);
    struct hbone_result r = {.status = s->status,
                             .bytes_to_h2 = s->to_h2,
                             .bytes_to_tcp = s->to_tcp,
                             .reason = e->reason,
                             .code = e->code,
                             .error = e->reason == H2_END_OK ? NULL : e->detail,
                             .reset_early = e->reset_early};
    if (s->ops && s->ops->on_done) s->ops->on_done(s, s->ud, &r);
}

static const struct h2_stream_ops hb_stream_ops = {
    .on_headers = hb_on_headers,
    .on_data = hb_on_data,
    .on_eof = hb_on_eof,
    .pull = hb_pull,
    .sent = hb_sent,
    .on_close = hb_on_close,
    .on_end = hb_on_end,
};

/* Initializes the adapter's state in h's user area. */
static struct hbone_stream *stream_init(struct hbone_conn *c, struct h2_stream *h, int tcp_fd)
{
    struct hbone_stream *s = h2_stream_user(h);
    s->h = h;
    s->c = c;
    s->loop = h2_conn_loop(c->h);
    s->io.fd = tcp_fd;
    s->io.cb = stream_io_cb;
    s->read_task.cb = stream_read_task_cb;
    h2_stream_set_ops(h, &hb_stream_ops, s);
    return s;
}

/* ---- the session's connection callbacks ---- */

static void hb_on_ready(struct h2_conn *h, void *ud)
{
    (void)h;
    struct hbone_conn *c = ud;
    if (c->ops->on_ready) c->ops->on_ready(c, c->ud);
}

static void hb_on_closed(struct h2_conn *h, void *ud, const struct h2_end *e)
{
    (void)h;
    struct hbone_conn *c = ud;
    if (c->ops->on_closed) c->ops->on_closed(c, c->ud, e);
    free(c); /* the session calls nothing more; it frees itself after the batch */
}

static void hb_on_stream(struct h2_conn *h, void *ud, struct h2_stream *hs)
{
    (void)h;
    stream_init(ud, hs, -1);
}

static void hb_on_request(struct h2_stream *hs, void *ud, const struct h2_request *req)
{
    struct hbone_conn *c = ud;
    struct hbone_stream *s = h2_stream_user(hs);
    struct hbone_request r = {
        .method = req->method,
        .authority = req->authority,
        .headers = req->headers,
        .n_headers = req->n_headers,
    };
    if (c->ops->on_request)
        c->ops->on_request(s, c->ud, &r);
    else
        hbone_stream_respond(s, 503, -1, NULL, 0);
}

static const struct h2_conn_ops hb_conn_ops = {
    .on_ready = hb_on_ready,
    .on_closed = hb_on_closed,
    .on_stream = hb_on_stream,
    .on_request = hb_on_request,
};

/* ---- public API ---- */

struct hbone_conn *hbone_client_new(struct loop *l, int fd, SSL_CTX *ctx, const char *const *expected,
                                    size_t n_expected, const struct hbone_conn_ops *ops, void *ud)
{
    struct h2_settings set;
    struct h2_peer peer = {.expected = expected, .n_expected = n_expected};
    struct hbone_conn *c = calloc(1, sizeof(*c));
    if (!c) {
        close(fd);
        return NULL;
    }
    c->ops = ops;
    c->ud = ud;
    hbone_settings(&set, false);
    c->h = h2_client_new(l, fd, ctx, &peer, &set, &hb_conn_ops, c);
    if (!c->h) {
        free(c);
        return NULL;
    }
    return c;
}

struct hbone_conn *hbone_server_new(struct loop *l, int fd, SSL_CTX *ctx, const struct hbone_conn_ops *ops,
                                    void *ud)
{
    struct h2_settings set;
    struct hbone_conn *c = calloc(1, sizeof(*c));
    if (!c) {
        close(fd);
        return NULL;
    }
    c->ops = ops;
    c->ud = ud;
    hbone_settings(&set, true);
    c->h = h2_server_new(l, fd, ctx, &set, &hb_conn_ops, c);
    if (!c->h) {
        free(c);
        return NULL;
    }
    return c;
}

unsigned hbone_conn_max_streams(const struct hbone_conn *c)
{
    return h2_conn_max_streams(c->h);
}

bool hbone_conn_usable(const struct hbone_conn *c)
{
    return h2_conn_usable(c->h);
}

bool hbone_conn_ready(const struct hbone_conn *c)
{
    return h2_conn_ready(c->h);
}

bool hbone_conn_established(const struct hbone_conn *c)
{
    return h2_conn_established(c->h);
}

unsigned hbone_conn_streams(const struct hbone_conn *c)
{
    return h2_conn_streams(c->h);
}

const char *hbone_conn_peer_id(const struct hbone_conn *c)
{
    return h2_conn_peer_id(c->h);
}

void hbone_conn_drain(struct hbone_conn *c)
{
    h2_conn_drain(c->h);
}

void hbone_conn_close(struct hbone_conn *c, const char *err)
{
    h2_conn_close(c->h, err ? H2_END_LOCAL : H2_END_OK, err);
}

struct hbone_stream *hbone_stream_open(struct hbone_conn *c, const struct hbone_header *headers, size_t n,
                                       int tcp_fd, const struct hbone_stream_ops *ops, void *ud)
{
    struct h2_header hdrs[1 + HBONE_MAX_OPEN_HEADERS];
    size_t m = 0;
    hdrs[m++] = (struct h2_header){":method", "CONNECT"};
    for (size_t i = 0; i < n && m < sizeof(hdrs) / sizeof(hdrs[0]); i++)
        hdrs[m++] = headers[i];
    struct h2_stream *h = h2_stream_open(c->h, hdrs, m, H2_BODY, &hb_stream_ops, NULL);
    if (!h) return NULL;
    struct hbone_stream *s = stream_init(c, h, tcp_fd);
    s->ops = ops;
    s->ud = ud;
    return s;
}

void hbone_stream_set_ops(struct hbone_stream *s, const struct hbone_stream_ops *ops, void *ud)
{
    s->ops = ops;
    s->ud = ud;
}

void hbone_stream_respond(struct hbone_stream *s, int status, int tcp_fd, const struct hbone_header *headers,
                          size_t n)
{
    bool tunnel = status == 200 && tcp_fd >= 0;
    if (s->done || h2_stream_respond(s->h, status, headers, n, tunnel ? H2_BODY : 0) < 0) {
        if (tcp_fd >= 0) close(tcp_fd);
        return;
    }
    s->status = status;
    if (tunnel)
        stream_attach_tcp(s, tcp_fd);
    else if (tcp_fd >= 0)
        close(tcp_fd);
}

void hbone_stream_reset(struct hbone_stream *s, const char *err)
{
    stream_finish(s, H2_END_LOCAL, err);
}

struct hbone_conn *hbone_stream_conn(const struct hbone_stream *s)
{
    return s->c;
}

void hbone_stream_bytes(const struct hbone_stream *s, uint64_t *to_h2, uint64_t *to_tcp)
{
    *to_h2 = s->to_h2;
    *to_tcp = s->to_tcp;
}
