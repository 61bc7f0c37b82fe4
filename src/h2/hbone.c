/* HBONE connections and CONNECT tunnels over nghttp2 (1.52 API) and OpenSSL.
 *
 * Data path, TCP -> HTTP/2: recv() into the stream's "up" buffer; nghttp2 asks for DATA with NO_COPY and our
 * send_data callback copies frame header + payload into a per-thread 16 KiB staging record that is handed
 * to SSL_write whole; the custom BIO appends ciphertext to a per-thread output buffer, written with one
 * send() per batch (only what the socket refuses stays with the connection, in its "cout"). HTTP/2 -> TCP:
 * one read() of up to 256 KiB of ciphertext, decrypted into a per-thread plaintext buffer, fed to nghttp2 in
 * one call; DATA payloads are sent straight to the TCP socket and only what the socket refuses is buffered
 * ("down"). Windows are consumed exactly as bytes reach the socket. */
#include "h2/hbone.h"

#include <errno.h>
#include <nghttp2/nghttp2.h>
#include <openssl/err.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/list.h"
#include "core/log.h"
#include "core/net.h"
#include "h2/budget.h"
#include "tls/tls.h"

#define CIN_CAP (256u * 1024)
#define PLAIN_CAP (256u * 1024)
#define PT_REC 16384u
#define COUT_HIGH (512u * 1024)
#define UP_SMALL (16u * 1024) /* largest read of an interactive stream */
#define UP_POOL_MAX 8         /* UP_SMALL buffers per thread, lent to interactive streams holding bytes */
#define UP_BIG (256u * 1024)
#define UP_GROW_AFTER (1u << 20)
#define MAX_DATA_FRAME (256u * 1024)
#define MAX_REQ_HEADERS 64
#define MAX_REQ_BYTES (64u * 1024)
#define HBONE_RESET_BURST 20000
#define HBONE_RESET_RATE 10000  /* per second */
#define H2_DEFAULT_WINDOW 65535 /* RFC 9113 §6.9.2: the connection window every peer starts with */
/* A stream's window grows only if, while it drained a whole window, no more than this fraction of it waited
 * in our buffer: the app kept up, so the window (not the app) was what limited the stream. */
#define WINDOW_GROW_MAX_BACKLOG_DIV 4

/* A byte buffer holding p[off..len). */
struct obuf {
    uint8_t *p;
    size_t off, len, cap;
};

static size_t obuf_used(const struct obuf *b)
{
    return b->len - b->off;
}

static void obuf_free(struct obuf *b)
{
    free(b->p);
    memset(b, 0, sizeof(*b));
}

static void obuf_consume(struct obuf *b, size_t n)
{
    b->off += n;
    if (b->off == b->len) obuf_free(b); /* idle connections keep no buffer */
}

static int obuf_append(struct obuf *b, const void *d, size_t n)
{
    if (b->len + n > b->cap) {
        /* Compact only when the dead prefix is at least as large as the live bytes, so each byte is moved
         * at most about once (amortized O(1)); otherwise grow. */
        if (b->off && b->off >= b->len - b->off) {
            memmove(b->p, b->p + b->off, b->len - b->off);
            b->len -= b->off;
            b->off = 0;
        }
        if (b->len + n > b->cap) {
            size_t cap = b->cap ? b->cap : 16384;
            while (cap < b->len + n)
                cap *= 2;
            uint8_t *p = realloc(b->p, cap);
            if (!p) return -ENOMEM;
            b->p = p;
            b->cap = cap;
        }
    }
    memcpy(b->p + b->len, d, n);
    b->len += n;
    return 0;
}

enum conn_state { C_CONNECTING, C_HANDSHAKE, C_OPEN, C_CLOSED };

struct hbone_conn {
    struct io io;
    struct loop *loop;
    SSL *ssl;
    nghttp2_session *ng;
    bool server, eof, draining, goaway_recv, ping_wait, established;
    bool rdhup; /* FIN or error signalled: a short read is not the end of what is queued */
    enum conn_state st;
    const struct hbone_conn_ops *ops;
    void *ud;
    const uint8_t *cin; /* ciphertext the BIO serves to OpenSSL */
    size_t cin_len;
    struct obuf cout; /* ciphertext waiting for send() */
    bool out_err;
    bool out_high; /* send_data_cb refused a frame at COUT_HIGH during this flush */
    struct task flush_task, free_task, read_task;
    struct timer hs_timer, ping_timer;
    char **expected;
    size_t n_expected;
    char peer_id[512];
    struct hbone_stream *streams;
    unsigned n_streams;
    /* Server: complete requests waiting to be handed to on_request (FIFO), and those handed over but not yet
     * answered (at most HBONE_MAX_UNANSWERED). */
    struct hbone_stream *req_head, *req_tail;
    unsigned n_unanswered;
    struct task deliver_task;
    struct h2_bucket early_resets; /* server: budget for streams reset before their response */
    uint64_t n_early_resets;
    /* Flow control: our connection receive window and what of it is reserved from the memory budget. */
    uint32_t conn_win;
    uint64_t conn_reserved;
    uint64_t streams_grown; /* open streams' window growth beyond HBONE_STREAM_WINDOW_INIT, summed */
    bool perr; /* a protocol error was reported (log, metric) for this conn; the GOAWAY carries it */
};

struct hbone_stream {
    struct hbone_stream *next, *prev;
    struct hbone_conn *c;
    int32_t id;
    struct io io;    /* TCP side; fd -1 until attached */
    bool registered; /* io is in epoll (edge-triggered, registered once) */
    bool can_read;   /* an edge said readable and no read has seen the socket empty since */
    bool rdhup;      /* the peer's FIN (or an error) was signalled: read on until recv says so */
    struct obuf up, down;
    bool relaying, up_eof, deferred, down_eof, wr_shut, ng_closed, done;
    int status;
    uint64_t to_h2, to_tcp;
    const struct hbone_stream_ops *ops;
    void *ud;
    /* Client: the request, kept until it is submitted after the handshake. */
    nghttp2_nv *nva;
    size_t nnv;
    /* Server: the request being received. */
    char *method, *authority;
    struct hbone_header *hdrs;
    size_t n_hdrs, req_bytes;
    bool req_too_big;
    struct hbone_stream *req_next, *req_prev; /* server: in the conn's request queue while queued */
    bool queued, delivered, answered, reset_early;
    /* Flow control: our receive window for this stream, the bytes drained since it last grew, the largest
     * backlog ("down") seen meanwhile, and how much it grew beyond HBONE_STREAM_WINDOW_INIT (the connection
     * window grew by as much, reserved from the memory budget by the conn). */
    uint32_t win;
    uint64_t drained, backlog_peak, grown;
    bool up_reserved; /* the bulk "up" buffer is reserved from the memory budget */
    bool up_pooled;   /* the "up" buffer is lent by the thread's pool */
    struct task free_task, read_task;
};

static __thread uint8_t *tl_cin, *tl_plain, *tl_pt;
/* Ciphertext is written into the thread's output buffer and sent from there; a connection keeps its own
 * "cout" only for what send() refused. tl_out holds the bytes of at most one connection (tl_out_conn), which
 * come after that connection's cout; it is emptied (sent, or moved into cout) by conn_write_out, so a round
 * trip allocates no output buffer and an idle connection holds none. */
static __thread struct obuf tl_out;
static __thread struct hbone_conn *tl_out_conn;
/* Interactive streams read into an UP_SMALL buffer lent by this pool and give it back as soon as nghttp2 has
 * taken its bytes, so a round trip allocates nothing. A thread makes at most UP_POOL_MAX of them: when all
 * are lent, a stream reads into the thread's scratch and keeps a copy of just the bytes that arrived, so many
 * streams with bytes waiting (a burst of new connections, a full connection window) cost what they hold, not
 * 16 KiB each. */
static __thread uint8_t *tl_up_pool[UP_POOL_MAX];
static __thread unsigned tl_up_n, tl_up_made;
static _Atomic uint64_t proto_errors[HBONE_PERR_COUNT], early_resets_total, buffered_total;

const char *hbone_proto_err_to_str(enum hbone_proto_err e)
{
    switch (e) {
    case HBONE_PERR_FLOOD:
        return "flood";
    case HBONE_PERR_CONTINUATION:
        return "continuation_flood";
    case HBONE_PERR_EARLY_RESETS:
        return "early_resets";
    case HBONE_PERR_PROTOCOL:
        return "protocol_error";
    case HBONE_PERR_HEADERS_TOO_LARGE:
        return "request_headers_too_large";
    case HBONE_PERR_COUNT:
        break;
    }
    return "unknown";
}

uint64_t hbone_proto_errors(enum hbone_proto_err e)
{
    return (unsigned)e < HBONE_PERR_COUNT ? atomic_load_explicit(&proto_errors[e], memory_order_relaxed) : 0;
}

uint64_t hbone_early_resets(void)
{
    return atomic_load_explicit(&early_resets_total, memory_order_relaxed);
}

uint64_t hbone_buffered_bytes(void)
{
    return atomic_load_explicit(&buffered_total, memory_order_relaxed);
}

static void buffered_add(int64_t n)
{
    atomic_fetch_add_explicit(&buffered_total, (uint64_t)n, memory_order_relaxed);
}
static uint32_t ping_interval_ms = HBONE_PING_INTERVAL_MS, ping_timeout_ms = HBONE_PING_TIMEOUT_MS;

void hbone_set_keepalive(uint32_t interval_ms, uint32_t timeout_ms)
{
    ping_interval_ms = interval_ms ? interval_ms : HBONE_PING_INTERVAL_MS;
    ping_timeout_ms = timeout_ms ? timeout_ms : HBONE_PING_TIMEOUT_MS;
}
static __thread size_t tl_pt_len;

static BIO_METHOD *bio_meth;
static pthread_once_t bio_once = PTHREAD_ONCE_INIT;

static void conn_close(struct hbone_conn *c, const char *err);
static void conn_schedule_flush(struct hbone_conn *c);
static void stream_finish(struct hbone_stream *s, const char *err);
static void stream_arm(struct hbone_stream *s);
static void stream_wants_read(struct hbone_stream *s);
static void stream_read_tcp(struct hbone_stream *s);
static void stream_read_task_cb(struct task *t);
static void stream_check_finish(struct hbone_stream *s);
static void conn_flush(struct hbone_conn *c);
static void deliver_request(struct hbone_conn *c, struct hbone_stream *s);

/* ---- custom BIO over the connection's buffers ---- */

static int bio_write_cb(BIO *b, const char *data, int len)
{
    struct hbone_conn *c = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    /* Into the thread's buffer if it holds our bytes, or is free and nothing of ours waits in cout. */
    if (tl_out_conn == c || (!tl_out_conn && !obuf_used(&c->cout))) {
        if (obuf_append(&tl_out, data, (size_t)len) < 0) return -1;
        tl_out_conn = c;
        return len;
    }
    if (obuf_append(&c->cout, data, (size_t)len) < 0) return -1;
    return len;
}

static int bio_read_cb(BIO *b, char *buf, int len)
{
    struct hbone_conn *c = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (c->cin_len == 0) {
        if (c->eof) return 0;
        BIO_set_retry_read(b);
        return -1;
    }
    size_t n = (size_t)len < c->cin_len ? (size_t)len : c->cin_len;
    memcpy(buf, c->cin, n);
    c->cin += n;
    c->cin_len -= n;
    return (int)n;
}

static long bio_ctrl_cb(BIO *b, int cmd, long num, void *ptr)
{
    (void)b, (void)num, (void)ptr;
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static int bio_create_cb(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

static void bio_init_once(void)
{
    bio_meth = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "hbone");
    BIO_meth_set_write(bio_meth, bio_write_cb);
    BIO_meth_set_read(bio_meth, bio_read_cb);
    BIO_meth_set_ctrl(bio_meth, bio_ctrl_cb);
    BIO_meth_set_create(bio_meth, bio_create_cb);
}

static int thread_bufs(void)
{
    if (tl_cin) return 0;
    tl_cin = malloc(CIN_CAP);
    tl_plain = malloc(PLAIN_CAP);
    tl_pt = malloc(PT_REC);
    return tl_cin && tl_plain && tl_pt ? 0 : -ENOMEM;
}

/* ---- plaintext staging: coalesce small frames into full TLS records ---- */

static void pt_write(struct hbone_conn *c, const uint8_t *d, size_t n)
{
    size_t w;
    /* Our BIO never refuses, so SSL_write only fails for good; with partial writes enabled it may return
     * after each record, hence the loop. */
    while (n && !c->out_err) {
        if (!SSL_write_ex(c->ssl, d, n, &w)) {
            c->out_err = true;
            return;
        }
        d += w;
        n -= w;
    }
}

static void pt_append(struct hbone_conn *c, const uint8_t *d, size_t n)
{
    while (n) {
        if (tl_pt_len == 0 && n >= PT_REC) {
            size_t k = n - n % PT_REC;
            pt_write(c, d, k);
            d += k;
            n -= k;
            continue;
        }
        size_t k = PT_REC - tl_pt_len;
        if (k > n) k = n;
        memcpy(tl_pt + tl_pt_len, d, k);
        tl_pt_len += k;
        d += k;
        n -= k;
        if (tl_pt_len == PT_REC) {
            pt_write(c, tl_pt, PT_REC);
            tl_pt_len = 0;
        }
    }
}

static void pt_flush(struct hbone_conn *c)
{
    if (tl_pt_len) pt_write(c, tl_pt, tl_pt_len);
    tl_pt_len = 0;
}

/* ---- connection output ---- */

/* A remainder of the thread's buffer up to this size is copied into the conn's cout; a larger one hands the
 * whole buffer over (no copy; the thread allocates a new one when it next writes). */
#define OUT_COPY_MAX (16u * 1024)

/* Ciphertext queued for c: its cout, then the thread's buffer if that holds c's bytes. */
static size_t conn_out_used(const struct hbone_conn *c)
{
    return obuf_used(&c->cout) + (tl_out_conn == c ? obuf_used(&tl_out) : 0);
}

/* The thread's buffer no longer holds c's bytes (sent, moved, or dropped with the conn). */
static void tl_out_release(const struct hbone_conn *c)
{
    if (tl_out_conn != c) return;
    tl_out_conn = NULL;
    tl_out.off = tl_out.len = 0;
}

/* Sends what b holds until the socket is full. Returns 0, or -1 when the connection was closed. b is the
 * conn's cout (freed when drained: idle connections keep no buffer) or the thread's buffer (kept). */
static int out_send(struct hbone_conn *c, struct obuf *b)
{
    while (obuf_used(b)) {
        ssize_t n = send(c->io.fd, b->p + b->off, obuf_used(b), MSG_NOSIGNAL);
        if (n > 0) {
            if (b == &tl_out)
                b->off += (size_t)n;
            else
                obuf_consume(b, (size_t)n);
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        conn_close(c, n < 0 ? strerror(errno) : "send returned 0");
        return -1;
    }
    return 0;
}

/* Sends queued ciphertext: cout, then the thread's buffer if it holds c's bytes; what the socket refuses of
 * the latter moves into cout. Returns 0, or -1 when the connection was closed. */
static int conn_write_out(struct hbone_conn *c)
{
    if (tl_out_conn != c) return out_send(c, &c->cout);
    if (obuf_used(&c->cout) && out_send(c, &c->cout) < 0) return -1;
    if (!obuf_used(&c->cout) && out_send(c, &tl_out) < 0) return -1;
    size_t left = obuf_used(&tl_out);
    if (left > OUT_COPY_MAX && !obuf_used(&c->cout)) {
        obuf_free(&c->cout);
        c->cout = tl_out;
        memset(&tl_out, 0, sizeof(tl_out));
    } else if (left && obuf_append(&c->cout, tl_out.p + tl_out.off, left) < 0) {
        conn_close(c, "out of memory");
        return -1;
    }
    tl_out_release(c);
    return 0;
}

static void conn_flush(struct hbone_conn *c)
{
    if (c->st == C_CLOSED) return;
    /* Many flushes follow input that needs no answer: when nghttp2 has nothing to send, skip mem_send. */
    bool want = c->st == C_OPEN && nghttp2_session_want_write(c->ng);
    for (;;) {
        bool high = false; /* stopped at the high-water mark with more to send */
        if (want) {
            tl_pt_len = 0;
            c->out_high = false;
            for (;;) {
                if (conn_out_used(c) >= COUT_HIGH) {
                    high = true;
                    break;
                }
                const uint8_t *d;
                ssize_t n = nghttp2_session_mem_send(c->ng, &d);
                if (n < 0) {
                    conn_close(c, nghttp2_strerror((int)n));
                    return;
                }
                if (n == 0) break;
                pt_append(c, d, (size_t)n);
            }
            pt_flush(c);
            if (c->out_err) {
                conn_close(c, "TLS write failed");
                return;
            }
            high = high || c->out_high; /* send_data_cb refused a DATA frame at the mark */
        }
        if (conn_write_out(c) < 0) return;
        /* The fd is edge-triggered: a socket that took everything sends no EPOLLOUT edge, so if we stopped at
         * the high-water mark, produce the rest now. A socket that refused bytes will signal. */
        if (!high || conn_out_used(c) || c->st != C_OPEN || !(want = nghttp2_session_want_write(c->ng)))
            break;
    }
    if (c->st == C_OPEN && !conn_out_used(c)) {
        if (!nghttp2_session_want_read(c->ng) && !nghttp2_session_want_write(c->ng)) {
            conn_close(c, c->perr ? "HTTP/2 protocol error (GOAWAY sent)" : NULL);
            return;
        }
        if ((c->draining || c->goaway_recv) && c->n_streams == 0) {
            conn_close(c, NULL);
            return;
        }
    }
}

static void flush_task_cb(struct task *t)
{
    conn_flush(container_of(t, struct hbone_conn, flush_task));
}

static void conn_schedule_flush(struct hbone_conn *c)
{
    if (c->st != C_CLOSED) loop_defer(c->loop, &c->flush_task);
}

/* ---- protocol errors: one rate-limited line, a counter, and a GOAWAY that reaches the peer ---- */

/* Counts e and logs it (rate-limited: a peer can repeat it) with the peer's address and identity. */
static void conn_report_perr(struct hbone_conn *c, enum hbone_proto_err e, const char *detail)
{
    static struct log_limit lim;
    char peer[SOCKADDR_STRLEN] = "unknown";
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    atomic_fetch_add_explicit(&proto_errors[e], 1, memory_order_relaxed);
    if (!log_enabled(LOG_WARN)) return;
    if (c->io.fd >= 0 && getpeername(c->io.fd, (struct sockaddr *)&ss, &len) == 0)
        sockaddr_format(&ss, peer, sizeof(peer));
    log_fmt_limited(&lim, LOG_WARN, "hbone", "HTTP/2 protocol error: reason=%s peer.addr=%s peer.id=%s%s%s",
                    hbone_proto_err_to_str(e), peer, c->peer_id[0] ? c->peer_id : "unknown",
                    detail ? " detail=" : "", detail ? detail : "");
}

/* Ends c for what the peer did: reports it once, queues GOAWAY(code) after what is already queued; the conn
 * closes once it is sent (nghttp2 then wants neither to read nor to write). */
static void conn_abort(struct hbone_conn *c, enum hbone_proto_err e, uint32_t code, const char *detail)
{
    if (c->st != C_OPEN || c->perr) return;
    c->perr = true;
    conn_report_perr(c, e, detail);
    nghttp2_session_terminate_session(c->ng, code);
    conn_schedule_flush(c);
}

/* A closed connection's socket, kept a little while so the GOAWAY is not lost: closing a socket whose input
 * is unread makes the kernel send RST and drop what was still to be sent. Reads and discards until the peer's
 * FIN, an error, HBONE_LINGER_MS or LINGER_MAX_BYTES. */
#define LINGER_MAX_BYTES (4u << 20)
struct linger_fd {
    struct io io;
    struct timer timer;
    struct task free_task;
    struct loop *loop;
    size_t discarded;
};

static void linger_free_cb(struct task *t)
{
    free(container_of(t, struct linger_fd, free_task));
}

static void linger_end(struct linger_fd *lf)
{
    if (lf->io.fd < 0) return;
    loop_io_close(lf->loop, &lf->io);
    timer_stop(lf->loop, &lf->timer);
    loop_defer(lf->loop, &lf->free_task);
}

static void linger_io_cb(struct io *io, uint32_t ev)
{
    (void)ev;
    struct linger_fd *lf = container_of(io, struct linger_fd, io);
    char buf[16384];
    for (;;) {
        ssize_t n = recv(io->fd, buf, sizeof(buf), 0);
        if (n > 0) {
            lf->discarded += (size_t)n;
            if (lf->discarded < LINGER_MAX_BYTES) continue;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return;
        }
        linger_end(lf);
        return;
    }
}

static void linger_timer_cb(struct timer *t)
{
    linger_end(container_of(t, struct linger_fd, timer));
}

/* Takes fd over: FIN after what the kernel holds, then discard input until done. Closes fd on failure. */
static void fd_linger(struct loop *l, int fd)
{
    struct linger_fd *lf = calloc(1, sizeof(*lf));
    shutdown(fd, SHUT_WR);
    if (!lf) {
        close(fd);
        return;
    }
    lf->loop = l;
    lf->io = (struct io){.fd = fd, .cb = linger_io_cb};
    lf->timer.cb = linger_timer_cb;
    lf->free_task.cb = linger_free_cb;
    if (loop_io_add(l, &lf->io, EPOLLIN | EPOLLRDHUP) < 0) {
        close(fd);
        free(lf);
        return;
    }
    timer_start(l, &lf->timer, HBONE_LINGER_MS);
}

/* ---- flow control: receive windows that grow for streams that drain, within the memory budget ---- */

/* Grows the connection window to at least want (capped at HBONE_CONN_WINDOW), reserving the growth from the
 * process-wide budget. The window never shrinks while the conn lives (taking credit back from a peer that
 * may already use it would be a flow-control error); its reservation is returned when the conn closes.
 * Returns false when the budget is spent. */
static bool conn_grow_window(struct hbone_conn *c, uint64_t want)
{
    if (want > HBONE_CONN_WINDOW) want = HBONE_CONN_WINDOW;
    if (want <= c->conn_win) return true;
    uint64_t delta = want - c->conn_win;
    if (!h2_mem_reserve(delta)) return false;
    c->conn_reserved += delta;
    c->conn_win = (uint32_t)want;
    nghttp2_session_set_local_window_size(c->ng, NGHTTP2_FLAG_NONE, 0, (int32_t)c->conn_win);
    return true;
}

/* Called when s has drained a whole window: if its app kept up meanwhile, the window limited the stream,
 * so double it (up to HBONE_STREAM_WINDOW), with the connection window grown by as much so that the grown
 * stream does not take its siblings' share. A stream whose app lags keeps its window. */
static void stream_grow_window(struct hbone_stream *s)
{
    struct hbone_conn *c = s->c;
    bool kept_up = s->backlog_peak <= s->win / WINDOW_GROW_MAX_BACKLOG_DIV;
    s->drained = 0;
    s->backlog_peak = 0;
    if (!kept_up || s->win >= HBONE_STREAM_WINDOW) return;
    uint32_t delta = s->win;
    if (delta > HBONE_STREAM_WINDOW - s->win) delta = HBONE_STREAM_WINDOW - s->win;
    if (!conn_grow_window(c, (uint64_t)HBONE_CONN_WINDOW_INIT + c->streams_grown + delta)) return;
    s->win += delta;
    s->grown += delta;
    c->streams_grown += delta;
    nghttp2_session_set_local_window_size(c->ng, NGHTTP2_FLAG_NONE, s->id, (int32_t)s->win);
}

/* ---- streams ---- */

static void stream_link(struct hbone_conn *c, struct hbone_stream *s)
{
    s->c = c;
    s->next = c->streams;
    if (c->streams) c->streams->prev = s;
    c->streams = s;
    c->n_streams++;
}

static void stream_unlink(struct hbone_stream *s)
{
    struct hbone_conn *c = s->c;
    if (s->prev)
        s->prev->next = s->next;
    else
        c->streams = s->next;
    if (s->next) s->next->prev = s->prev;
    s->next = s->prev = NULL;
    c->n_streams--;
}

static void stream_free_request(struct hbone_stream *s)
{
    for (size_t i = 0; i < s->n_hdrs; i++) {
        free((char *)s->hdrs[i].name);
        free((char *)s->hdrs[i].value);
    }
    free(s->hdrs);
    free(s->method);
    free(s->authority);
    s->hdrs = NULL;
    s->n_hdrs = 0;
    s->method = s->authority = NULL;
}

static void stream_free_cb(struct task *t)
{
    struct hbone_stream *s = container_of(t, struct hbone_stream, free_task);
    stream_free_request(s);
    free(s->nva);
    free(s);
}

static struct hbone_stream *stream_new(void)
{
    struct hbone_stream *s = calloc(1, sizeof(*s));
    if (!s) return NULL;
    s->io.fd = -1;
    s->win = HBONE_STREAM_WINDOW_INIT;
    s->free_task.cb = stream_free_cb;
    s->read_task.cb = stream_read_task_cb;
    return s;
}

/* ---- server: requests are handed to on_request from a task, at most HBONE_MAX_UNANSWERED at a time ---- */

static void request_dequeue(struct hbone_stream *s)
{
    struct hbone_conn *c = s->c;
    if (!s->queued) return;
    QUEUE_DEL(c->req_head, c->req_tail, s, req_prev, req_next);
    s->queued = false;
}

/* s's request was answered or abandoned: its slot goes to the next queued request. */
static void request_answered(struct hbone_stream *s)
{
    struct hbone_conn *c = s->c;
    if (!s->delivered || s->answered) return;
    s->answered = true;
    c->n_unanswered--;
    if (c->req_head) loop_defer(c->loop, &c->deliver_task);
}

static void stream_close_tcp(struct hbone_stream *s)
{
    if (s->io.fd < 0) return;
    loop_io_close(s->c->loop, &s->io);
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

static void stream_finish(struct hbone_stream *s, const char *err)
{
    struct hbone_conn *c = s->c;
    if (s->done) return;
    s->done = true;
    stream_close_tcp(s);
    if (s->id > 0 && c->ng) {
        if (!s->ng_closed && c->st == C_OPEN) {
            nghttp2_submit_rst_stream(c->ng, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_CANCEL);
            conn_schedule_flush(c);
        }
        nghttp2_session_set_stream_user_data(c->ng, s->id, NULL);
    }
    request_dequeue(s);
    request_answered(s);
    stream_unlink(s);
    c->streams_grown -= s->grown;
    if (s->up_reserved) h2_mem_release(UP_BIG);
    s->up_reserved = false;
    buffered_add(-(int64_t)obuf_used(&s->down));
    stream_up_release(s);
    obuf_free(&s->down);
    struct hbone_result r = {.status = s->status,
                             .bytes_to_h2 = s->to_h2,
                             .bytes_to_tcp = s->to_tcp,
                             .error = err,
                             .reset_early = s->reset_early};
    if (s->ops && s->ops->on_done) s->ops->on_done(s, s->ud, &r);
    loop_defer(c->loop, &s->free_task);
    if ((c->draining || c->goaway_recv) && c->n_streams == 0) conn_schedule_flush(c);
}

/* A stream ends cleanly once HTTP/2 is done with it and everything received reached the TCP socket. */
static void stream_check_finish(struct hbone_stream *s)
{
    if (s->done || !s->ng_closed) return;
    if (s->io.fd >= 0 && obuf_used(&s->down)) return;
    stream_finish(s, NULL);
}

/* Sockets are registered once, edge-triggered, for both directions: a busy tunnel then costs no epoll_ctl
 * at all. Readiness is remembered in can_read; a read that stopped on a full buffer resumes from a task
 * when the buffer drains (stream_wants_read), since no new edge may come. */
static void stream_arm(struct hbone_stream *s)
{
    if (s->done || s->io.fd < 0 || s->registered) return;
    if (loop_io_add(s->c->loop, &s->io, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET) == 0) s->registered = true;
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
    if (s->can_read && stream_read_room(s)) loop_defer(s->c->loop, &s->read_task);
}

static void stream_consume(struct hbone_stream *s, size_t n)
{
    struct hbone_conn *c = s->c;
    if (c->st == C_OPEN && n) {
        nghttp2_session_consume(c->ng, s->id, n);
        s->drained += n;
        if (s->drained >= s->win) stream_grow_window(s);
        conn_schedule_flush(c);
    }
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
            stream_consume(s, (size_t)n);
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        stream_finish(s, n < 0 ? strerror(errno) : "send returned 0");
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
    struct hbone_conn *c = s->c;
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
            /* Interactive streams read into a buffer lent by the thread's pool, given back as soon as
             * nghttp2 has taken the bytes; when all are lent, into the thread's scratch, keeping a copy of
             * only what arrived. Either way thousands of chatty or idle connections hold no buffer each.
             * (tl_cin is free here: it only holds data inside conn_read.) */
            uint8_t *pb = tl_up_n ? tl_up_pool[--tl_up_n] : NULL;
            if (!pb && tl_up_made < UP_POOL_MAX && (pb = malloc(UP_SMALL))) tl_up_made++;
            want = UP_SMALL;
            n = recv(s->io.fd, pb ? pb : tl_cin, want, 0);
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
                    stream_finish(s, "out of memory");
                    return;
                }
                memcpy(s->up.p, tl_cin, (size_t)n);
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
        stream_finish(s, strerror(errno));
        return;
    }
    if (!got) return;
    if (s->deferred && s->id > 0 && c->st == C_OPEN) {
        s->deferred = false;
        nghttp2_session_resume_data(c->ng, s->id);
    }
    conn_schedule_flush(c);
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

/* ---- nghttp2 callbacks ---- */

static struct hbone_stream *stream_of(nghttp2_session *ng, int32_t id)
{
    struct hbone_stream *s = nghttp2_session_get_stream_user_data(ng, id);
    return s && !s->done ? s : NULL;
}

static ssize_t data_read_cb(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t length, uint32_t *flags,
                            nghttp2_data_source *src, void *ud)
{
    (void)buf, (void)src, (void)ud;
    struct hbone_stream *s = stream_of(ng, id);
    if (!s) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    size_t avail = obuf_used(&s->up);
    if (avail) {
        size_t n = avail < length ? avail : length;
        *flags |= NGHTTP2_DATA_FLAG_NO_COPY;
        if (s->up_eof && n == avail) *flags |= NGHTTP2_DATA_FLAG_EOF;
        return (ssize_t)n;
    }
    if (s->up_eof) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        return 0;
    }
    s->deferred = true;
    return NGHTTP2_ERR_DEFERRED;
}

static int send_data_cb(nghttp2_session *ng, nghttp2_frame *frame, const uint8_t *framehd, size_t length,
                        nghttp2_data_source *src, void *ud)
{
    (void)src;
    struct hbone_conn *c = ud;
    if (conn_out_used(c) >= COUT_HIGH) {
        c->out_high = true;
        return NGHTTP2_ERR_WOULDBLOCK;
    }
    struct hbone_stream *s = stream_of(ng, frame->hd.stream_id);
    if (!s || obuf_used(&s->up) < length) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    pt_append(c, framehd, 9);
    if (length) pt_append(c, s->up.p + s->up.off, length);
    s->to_h2 += length;
    bool was_full = s->up.len == s->up.cap;
    if (s->up.off + length < s->up.len)
        s->up.off += length;
    else if (s->up.cap == UP_BIG)
        s->up.off = s->up.len = 0; /* a bulk stream keeps its buffer */
    else
        stream_up_release(s); /* back to the pool: an idle tunnel holds no buffer */
    if (was_full) stream_wants_read(s);
    return 0;
}

static ssize_t read_length_cb(nghttp2_session *ng, uint8_t type, int32_t id, int32_t sess_win,
                              int32_t stream_win, uint32_t max_frame, void *ud)
{
    (void)ng, (void)type, (void)id, (void)ud;
    ssize_t n = max_frame < MAX_DATA_FRAME ? max_frame : MAX_DATA_FRAME;
    if (sess_win < n) n = sess_win;
    if (stream_win < n) n = stream_win;
    return n > 0 ? n : 1;
}

static int on_data_chunk_cb(nghttp2_session *ng, uint8_t flags, int32_t id, const uint8_t *data, size_t len,
                            void *ud)
{
    (void)flags;
    struct hbone_conn *c = ud;
    struct hbone_stream *s = stream_of(ng, id);
    if (!s) {
        /* Nobody will read these bytes: return the window at once. */
        nghttp2_session_consume(ng, id, len);
        conn_schedule_flush(c);
        return 0;
    }
    if (s->io.fd >= 0 && !obuf_used(&s->down)) {
        ssize_t n = send(s->io.fd, data, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            s->to_tcp += (uint64_t)n;
            stream_consume(s, (size_t)n);
            data += n;
            len -= (size_t)n;
        } else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            nghttp2_session_consume(ng, id, len);
            stream_finish(s, strerror(errno));
            return 0;
        }
    }
    if (len) {
        if (obuf_append(&s->down, data, len) < 0) {
            stream_finish(s, "out of memory");
            return 0;
        }
        buffered_add((int64_t)len);
        if (obuf_used(&s->down) > s->backlog_peak) s->backlog_peak = obuf_used(&s->down);
        /* The socket refused part of it: its EPOLLOUT edge will come. */
    }
    return 0;
}

static int on_begin_headers_cb(nghttp2_session *ng, const nghttp2_frame *frame, void *ud)
{
    struct hbone_conn *c = ud;
    if (!c->server || frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    if (c->draining) {
        nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, frame->hd.stream_id, NGHTTP2_REFUSED_STREAM);
        return 0;
    }
    struct hbone_stream *s = stream_new();
    if (!s) return NGHTTP2_ERR_CALLBACK_FAILURE;
    s->id = frame->hd.stream_id;
    stream_link(c, s);
    nghttp2_session_set_stream_user_data(ng, s->id, s);
    return 0;
}

static char *dupn(const uint8_t *p, size_t n)
{
    char *s = malloc(n + 1);
    if (s) {
        memcpy(s, p, n);
        s[n] = 0;
    }
    return s;
}

static int on_header_cb(nghttp2_session *ng, const nghttp2_frame *frame, const uint8_t *name, size_t namelen,
                        const uint8_t *value, size_t valuelen, uint8_t flags, void *ud)
{
    (void)flags;
    struct hbone_conn *c = ud;
    struct hbone_stream *s = stream_of(ng, frame->hd.stream_id);
    if (!s || frame->hd.type != NGHTTP2_HEADERS) return 0;
    if (!c->server) {
        if (namelen == 7 && memcmp(name, ":status", 7) == 0) {
            int st = 0;
            for (size_t i = 0; i < valuelen && i < 3; i++)
                st = st * 10 + (value[i] - '0');
            s->status = st;
        }
        return 0;
    }
    s->req_bytes += namelen + valuelen;
    if (s->req_bytes > MAX_REQ_BYTES) {
        s->req_too_big = true;
        return 0;
    }
    if (namelen == 7 && memcmp(name, ":method", 7) == 0) {
        free(s->method);
        s->method = dupn(value, valuelen);
    } else if (namelen == 10 && memcmp(name, ":authority", 10) == 0) {
        free(s->authority);
        s->authority = dupn(value, valuelen);
    } else if (namelen && name[0] != ':') {
        if (s->n_hdrs >= MAX_REQ_HEADERS) {
            s->req_too_big = true;
            return 0;
        }
        if (!s->hdrs) s->hdrs = calloc(MAX_REQ_HEADERS, sizeof(*s->hdrs));
        if (!s->hdrs) return NGHTTP2_ERR_CALLBACK_FAILURE;
        s->hdrs[s->n_hdrs].name = dupn(name, namelen);
        s->hdrs[s->n_hdrs].value = dupn(value, valuelen);
        s->n_hdrs++;
    }
    return 0;
}

/* Hands queued requests to on_request, in arrival order, while fewer than HBONE_MAX_UNANSWERED wait for
 * their answer. Running after the batch of input means a stream reset in the same read never reaches the
 * caller: no app connect, no log line. */
static void deliver_task_cb(struct task *t)
{
    struct hbone_conn *c = container_of(t, struct hbone_conn, deliver_task);
    while (c->st == C_OPEN && c->req_head && c->n_unanswered < HBONE_MAX_UNANSWERED) {
        struct hbone_stream *s = c->req_head;
        request_dequeue(s);
        s->delivered = true;
        c->n_unanswered++;
        deliver_request(c, s); /* s stays allocated until its free task, which runs after this one */
    }
    conn_schedule_flush(c);
}

static void handle_request(struct hbone_conn *c, struct hbone_stream *s)
{
    if (s->req_too_big) {
        conn_report_perr(c, HBONE_PERR_HEADERS_TOO_LARGE, "431: more than 64 headers or 64 KiB");
        hbone_stream_respond(s, 431, -1, NULL, 0);
        return;
    }
    s->queued = true;
    QUEUE_APPEND(c->req_head, c->req_tail, s, req_prev, req_next);
    loop_defer(c->loop, &c->deliver_task);
}

static void deliver_request(struct hbone_conn *c, struct hbone_stream *s)
{
    struct hbone_request req = {
        .method = s->method ? s->method : "",
        .authority = s->authority ? s->authority : "",
        .headers = s->hdrs,
        .n_headers = s->n_hdrs,
    };
    if (c->ops->on_request)
        c->ops->on_request(s, c->ud, &req);
    else
        hbone_stream_respond(s, 503, -1, NULL, 0);
    /* The request is only valid during on_request: an open tunnel keeps none of it. */
    stream_free_request(s);
}

static void handle_response(struct hbone_stream *s)
{
    if (s->ops && s->ops->on_response) s->ops->on_response(s, s->ud, s->status);
    if (s->done) return;
    if (s->status == 200) {
        s->relaying = true;
        stream_arm(s); /* registering reports what the app already sent */
    } else {
        char err[48];
        snprintf(err, sizeof(err), "HBONE CONNECT rejected with status %d", s->status);
        stream_finish(s, err);
    }
}

/* Server: the peer reset s. Before a response, that is an abandoned request, charged to the budget. */
static void conn_early_reset(struct hbone_conn *c, struct hbone_stream *s)
{
    if (!s || s->status) return;
    s->reset_early = true;
    c->n_early_resets++;
    atomic_fetch_add_explicit(&early_resets_total, 1, memory_order_relaxed);
    if (h2_bucket_take(&c->early_resets, loop_now(c->loop))) return;
    char detail[96];
    snprintf(detail, sizeof(detail), "%llu streams reset before their response",
             (unsigned long long)c->n_early_resets);
    conn_abort(c, HBONE_PERR_EARLY_RESETS, NGHTTP2_ENHANCE_YOUR_CALM, detail);
}

static int on_frame_recv_cb(nghttp2_session *ng, const nghttp2_frame *frame, void *ud)
{
    struct hbone_conn *c = ud;
    if (c->st == C_CLOSED) return NGHTTP2_ERR_CALLBACK_FAILURE;
    switch (frame->hd.type) {
    case NGHTTP2_PING:
        if (frame->hd.flags & NGHTTP2_FLAG_ACK) {
            c->ping_wait = false;
            timer_start(c->loop, &c->ping_timer, ping_interval_ms);
        }
        return 0;
    case NGHTTP2_GOAWAY:
        c->goaway_recv = true;
        return 0;
    case NGHTTP2_RST_STREAM:
        if (c->server) conn_early_reset(c, stream_of(ng, frame->hd.stream_id));
        return 0;
    case NGHTTP2_HEADERS:
    case NGHTTP2_DATA:
        break;
    default:
        return 0;
    }
    struct hbone_stream *s = stream_of(ng, frame->hd.stream_id);
    if (!s) return 0;
    if (frame->hd.type == NGHTTP2_HEADERS) {
        if (c->server && frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
            if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) s->down_eof = true;
            handle_request(c, s);
            return 0;
        }
        if (!c->server && frame->headers.cat == NGHTTP2_HCAT_RESPONSE) {
            handle_response(s);
            if (!s->done && (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
                s->down_eof = true;
                stream_write_tcp(s);
            }
            return 0;
        }
    }
    if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) {
        s->down_eof = true;
        if (s->io.fd >= 0) stream_write_tcp(s);
    }
    return 0;
}

static int on_frame_send_cb(nghttp2_session *ng, const nghttp2_frame *frame, void *ud)
{
    struct hbone_conn *c = ud;
    if (frame->hd.type == NGHTTP2_GOAWAY && frame->goaway.error_code != NGHTTP2_NO_ERROR && !c->perr) {
        /* nghttp2 found a connection error in the peer's input and ends the session with this GOAWAY. */
        char detail[160];
        uint32_t code = frame->goaway.error_code;
        snprintf(detail, sizeof(detail), "%s: %.*s", nghttp2_http2_strerror(code),
                 (int)(frame->goaway.opaque_data_len < 100 ? frame->goaway.opaque_data_len : 100),
                 frame->goaway.opaque_data ? (const char *)frame->goaway.opaque_data : "");
        c->perr = true;
        conn_report_perr(c, code == NGHTTP2_ENHANCE_YOUR_CALM ? HBONE_PERR_FLOOD : HBONE_PERR_PROTOCOL,
                         detail);
        return 0;
    }
    if (!c->server || frame->hd.type != NGHTTP2_HEADERS) return 0;
    struct hbone_stream *s = stream_of(ng, frame->hd.stream_id);
    /* An error response ends our side; reset so a client that keeps sending does not hold the stream. */
    if (s && s->status != 200 && !s->ng_closed && !s->down_eof)
        nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_NO_ERROR);
    return 0;
}

static int on_frame_not_send_cb(nghttp2_session *ng, const nghttp2_frame *frame, int lib_error, void *ud)
{
    (void)ud;
    struct hbone_stream *s = stream_of(ng, frame->hd.stream_id);
    if (s && frame->hd.type == NGHTTP2_HEADERS) stream_finish(s, nghttp2_strerror(lib_error));
    return 0;
}

static int on_stream_close_cb(nghttp2_session *ng, int32_t id, uint32_t error_code, void *ud)
{
    (void)ud;
    struct hbone_stream *s = stream_of(ng, id);
    if (!s) return 0;
    s->ng_closed = true;
    /* RST_STREAM NO_ERROR/CANCEL counts as EOF (as in Istio); other codes end the tunnel with an error. */
    if (error_code != NGHTTP2_NO_ERROR && error_code != NGHTTP2_CANCEL) {
        stream_finish(s, nghttp2_http2_strerror(error_code));
        return 0;
    }
    if (!s->relaying) {
        stream_finish(s, s->status ? NULL : "stream closed before response");
        return 0;
    }
    s->down_eof = true;
    if (s->io.fd >= 0) stream_write_tcp(s);
    if (!s->done) stream_check_finish(s);
    return 0;
}

static int on_error_cb(nghttp2_session *ng, int code, const char *msg, size_t len, void *ud)
{
    (void)ng, (void)code, (void)ud;
    LOG_D("hbone", "http2: %.*s", (int)len, msg);
    return 0;
}

static nghttp2_session_callbacks *make_callbacks(void)
{
    nghttp2_session_callbacks *cb;
    if (nghttp2_session_callbacks_new(&cb) != 0) return NULL;
    nghttp2_session_callbacks_set_send_data_callback(cb, send_data_cb);
    nghttp2_session_callbacks_set_data_source_read_length_callback(cb, read_length_cb);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk_cb);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers_cb);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header_cb);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv_cb);
    nghttp2_session_callbacks_set_on_frame_send_callback(cb, on_frame_send_cb);
    nghttp2_session_callbacks_set_on_frame_not_send_callback(cb, on_frame_not_send_cb);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close_cb);
    nghttp2_session_callbacks_set_error_callback2(cb, on_error_cb);
    return cb;
}

/* ---- connection lifecycle ---- */

static void conn_free_cb(struct task *t)
{
    struct hbone_conn *c = container_of(t, struct hbone_conn, free_task);
    if (c->ng) nghttp2_session_del(c->ng);
    if (c->ssl) SSL_free(c->ssl);
    obuf_free(&c->cout);
    for (size_t i = 0; i < c->n_expected; i++)
        free(c->expected[i]);
    free(c->expected);
    free(c);
}

static void conn_close(struct hbone_conn *c, const char *err)
{
    if (c->st == C_CLOSED) return;
    /* Streams learn about it first, so their logs carry the reason. */
    c->st = C_CLOSED;
    tl_out_release(c); /* unsent ciphertext goes with the conn, as its cout does */
    while (c->streams)
        stream_finish(c->streams, err ? err : "connection closed");
    timer_stop(c->loop, &c->hs_timer);
    timer_stop(c->loop, &c->ping_timer);
    if (c->perr && c->io.fd >= 0) {
        /* An error GOAWAY was sent: keep the socket briefly so that it arrives. */
        loop_io_del(c->loop, &c->io);
        fd_linger(c->loop, c->io.fd);
        c->io.fd = -1;
    } else {
        loop_io_close(c->loop, &c->io);
    }
    if (c->conn_reserved) h2_mem_release(c->conn_reserved);
    c->conn_reserved = 0;
    if (c->ops->on_closed) c->ops->on_closed(c, c->ud, err);
    /* nghttp2 may be on the stack (we can be called from its callbacks): free after the batch. */
    loop_defer(c->loop, &c->free_task);
}

static void ping_timer_cb(struct timer *t)
{
    struct hbone_conn *c = container_of(t, struct hbone_conn, ping_timer);
    if (c->st != C_OPEN) return;
    if (c->ping_wait) {
        conn_close(c, "ping timeout");
        return;
    }
    nghttp2_submit_ping(c->ng, NGHTTP2_FLAG_NONE, NULL);
    c->ping_wait = true;
    timer_start(c->loop, &c->ping_timer, ping_timeout_ms);
    conn_schedule_flush(c);
}

static void hs_timer_cb(struct timer *t)
{
    struct hbone_conn *c = container_of(t, struct hbone_conn, hs_timer);
    conn_close(c, c->st == C_CONNECTING ? "connect timeout" : "TLS handshake timeout");
}

static void stream_submit(struct hbone_stream *s)
{
    struct hbone_conn *c = s->c;
    nghttp2_data_provider prd = {.source.ptr = s, .read_callback = data_read_cb};
    int32_t id = nghttp2_submit_request(c->ng, NULL, s->nva, s->nnv, &prd, s);
    free(s->nva);
    s->nva = NULL;
    if (id < 0) {
        stream_finish(s, nghttp2_strerror(id));
        return;
    }
    s->id = id;
}

static int conn_start_h2(struct hbone_conn *c)
{
    nghttp2_session_callbacks *cb = make_callbacks();
    nghttp2_option *opt;
    int rv;
    if (!cb) return -ENOMEM;
    if (nghttp2_option_new(&opt) != 0) {
        nghttp2_session_callbacks_del(cb);
        return -ENOMEM;
    }
    /* WINDOW_UPDATE only for bytes that reached the other socket: end-to-end back-pressure. */
    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_option_set_peer_max_concurrent_streams(opt, HBONE_CLIENT_MAX_STREAMS);
    /* nghttp2's rapid-reset guard (1000 resets, then 33/s) would end a pooled connection whose client apps
     * simply reset many TCP connections: each becomes an RST_STREAM. The peer is an authenticated mesh
     * member, so allow a much higher, still bounded, rate. */
    if (c->server) nghttp2_option_set_stream_reset_rate_limit(opt, HBONE_RESET_BURST, HBONE_RESET_RATE);
    if (c->server)
        h2_bucket_init(&c->early_resets, HBONE_EARLY_RESET_BURST, HBONE_EARLY_RESET_RATE, loop_now(c->loop));
    if (c->server)
        rv = nghttp2_session_server_new2(&c->ng, cb, c, opt);
    else
        rv = nghttp2_session_client_new2(&c->ng, cb, c, opt);
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cb);
    if (rv != 0) return -ENOMEM;
    nghttp2_settings_entry srv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, HBONE_SERVER_MAX_STREAMS},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, HBONE_STREAM_WINDOW_INIT},
        {NGHTTP2_SETTINGS_MAX_FRAME_SIZE, HBONE_MAX_FRAME},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, 64 * 1024},
    };
    nghttp2_settings_entry cli[] = {
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, HBONE_STREAM_WINDOW_INIT},
        {NGHTTP2_SETTINGS_MAX_FRAME_SIZE, HBONE_MAX_FRAME},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, 16 * 1024},
    };
    if (c->server)
        rv = nghttp2_submit_settings(c->ng, NGHTTP2_FLAG_NONE, srv, sizeof(srv) / sizeof(srv[0]));
    else
        rv = nghttp2_submit_settings(c->ng, NGHTTP2_FLAG_NONE, cli, sizeof(cli) / sizeof(cli[0]));
    if (rv != 0) return -EINVAL;
    /* The connection window starts at HBONE_CONN_WINDOW_INIT if the budget allows, else at the protocol's
     * 65 535 bytes (the conn still works, just slower). */
    c->conn_win = H2_DEFAULT_WINDOW;
    conn_grow_window(c, HBONE_CONN_WINDOW_INIT);
    return 0;
}

static void conn_handshake_done(struct hbone_conn *c)
{
    char err[1200];
    timer_stop(c->loop, &c->hs_timer);
    if (!tls_alpn_is_h2(c->ssl)) {
        conn_close(c, "peer did not negotiate ALPN h2");
        return;
    }
    char why[256];
    if (tls_peer_identity(c->ssl, c->peer_id, sizeof(c->peer_id), why, sizeof(why)) < 0) c->peer_id[0] = 0;
    if (!c->server && !tls_peer_has_san(c->ssl, (const char *const *)c->expected, c->n_expected)) {
        /* A refused certificate has no identity to show: say why it was refused instead. */
        if (c->peer_id[0])
            snprintf(err, sizeof(err), "identity verification error: peer is \"%s\", expected \"%s\"",
                     c->peer_id, c->n_expected ? c->expected[0] : "");
        else
            snprintf(err, sizeof(err),
                     "identity verification error: peer certificate refused (%s), expected \"%s\"", why,
                     c->n_expected ? c->expected[0] : "");
        conn_close(c, err);
        return;
    }
    if (conn_start_h2(c) < 0) {
        conn_close(c, "cannot start HTTP/2 session");
        return;
    }
    c->st = C_OPEN;
    c->established = true;
    timer_start(c->loop, &c->ping_timer, ping_interval_ms);
    /* Submit newest-first list in arrival order. */
    struct hbone_stream *pending[HBONE_SERVER_MAX_STREAMS * 2];
    size_t n = 0;
    for (struct hbone_stream *s = c->streams; s && n < sizeof(pending) / sizeof(pending[0]); s = s->next)
        if (s->id == 0) pending[n++] = s;
    while (n--)
        stream_submit(pending[n]);
    if (c->ops->on_ready && c->st == C_OPEN) c->ops->on_ready(c, c->ud);
    conn_schedule_flush(c);
}

static void conn_handshake(struct hbone_conn *c)
{
    char err[256], e2[200];
    int r = SSL_do_handshake(c->ssl);
    if (r == 1) {
        conn_handshake_done(c);
        return;
    }
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        if (c->eof) {
            /* Flush any alert first, then give up. */
            conn_write_out(c);
            conn_close(c, "connection closed during TLS handshake");
        }
        return;
    }
    snprintf(err, sizeof(err), "TLS handshake failed: %s", tls_errstr(e2, sizeof(e2)));
    conn_write_out(c); /* send the alert */
    conn_close(c, err);
}

/* nghttp2 refused the input for good (a flood guard, too many CONTINUATIONs, bad preface, or one of our
 * callbacks failed). A peer's fault gets a GOAWAY with the matching code, flushed before the close; the
 * session still serializes frames after such an error. Returns 0, or -1 when the conn was closed. */
static int conn_fatal(struct hbone_conn *c, int rv)
{
    enum hbone_proto_err e;
    uint32_t code;
    switch (rv) {
    case NGHTTP2_ERR_FLOODED:
        e = HBONE_PERR_FLOOD;
        code = NGHTTP2_ENHANCE_YOUR_CALM;
        break;
    case NGHTTP2_ERR_TOO_MANY_CONTINUATIONS:
        e = HBONE_PERR_CONTINUATION;
        code = NGHTTP2_ENHANCE_YOUR_CALM;
        break;
    case NGHTTP2_ERR_BAD_CLIENT_MAGIC:
        e = HBONE_PERR_PROTOCOL;
        code = NGHTTP2_PROTOCOL_ERROR;
        break;
    default: /* ours (out of memory in a callback): nothing the peer did */
        conn_close(c, nghttp2_strerror(rv));
        return -1;
    }
    conn_abort(c, e, code, nghttp2_strerror(rv));
    conn_flush(c);
    return c->st == C_CLOSED ? -1 : 0;
}

/* Decrypts everything available and feeds it to nghttp2. Returns 0, or -1 when the conn was closed. */
static int conn_decrypt(struct hbone_conn *c)
{
    char e2[200];
    for (;;) {
        size_t plen = 0, got;
        int err = 0;
        bool drained = false;
        while (plen < PLAIN_CAP) {
            if (SSL_read_ex(c->ssl, tl_plain + plen, PLAIN_CAP - plen, &got)) {
                plen += got;
                /* The BIO served every byte and OpenSSL holds neither plaintext nor a record: another
                 * SSL_read_ex would only find WANT_READ (a BIO call, SSL_get_error and the error marks). */
                if (c->cin_len == 0 && !SSL_has_pending(c->ssl)) {
                    drained = true;
                    break;
                }
                continue;
            }
            err = SSL_get_error(c->ssl, 0);
            break;
        }
        /* After a protocol error the GOAWAY is on its way: what the peer sends meanwhile is dropped. */
        if (plen && !c->perr) {
            ssize_t rv = nghttp2_session_mem_recv(c->ng, tl_plain, plen);
            if (c->st == C_CLOSED) return -1;
            if (rv < 0 && conn_fatal(c, (int)rv) < 0) return -1;
        }
        if (drained) return 0; /* conn_read notices EOF (c->eof) itself */
        if (!err) continue;
        if (err == SSL_ERROR_WANT_READ) return 0;
        if (err == SSL_ERROR_ZERO_RETURN || c->eof) {
            ERR_clear_error();
            conn_close(c, c->n_streams ? "connection closed by peer" : NULL);
            return -1;
        }
        conn_close(c, tls_errstr(e2, sizeof(e2)));
        return -1;
    }
}

/* The fd is edge-triggered: read until the socket is empty (a short read), or, after a fair share, continue
 * from a task so other connections get their turn. */
static void conn_read(struct hbone_conn *c)
{
    for (int iter = 0;; iter++) {
        if (iter == 8) {
            loop_defer(c->loop, &c->read_task);
            break;
        }
        ssize_t n = recv(c->io.fd, tl_cin, CIN_CAP, 0);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            conn_close(c, strerror(errno));
            return;
        }
        if (n == 0) c->eof = true;
        c->cin = tl_cin;
        c->cin_len = (size_t)n;
        if (c->st == C_HANDSHAKE) {
            conn_handshake(c);
            if (c->st != C_OPEN) {
                c->cin_len = 0;
                if (c->st != C_CLOSED) conn_flush(c);
                return;
            }
        }
        if (conn_decrypt(c) < 0) return;
        c->cin_len = 0;
        if (c->eof) {
            conn_close(c, c->n_streams ? "connection closed by peer" : NULL);
            return;
        }
        if ((size_t)n < CIN_CAP && !c->rdhup) break;
    }
    c->cin_len = 0;
    conn_schedule_flush(c);
}

static void conn_read_task_cb(struct task *t)
{
    struct hbone_conn *c = container_of(t, struct hbone_conn, read_task);
    if (c->st == C_HANDSHAKE || c->st == C_OPEN) conn_read(c);
}

static void conn_io_cb(struct io *io, uint32_t ev)
{
    struct hbone_conn *c = container_of(io, struct hbone_conn, io);
    if (c->st == C_CONNECTING) {
        int soerr = 0;
        socklen_t sl = sizeof(soerr);
        if (getsockopt(c->io.fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0) soerr = errno;
        if (soerr) {
            char err[128];
            snprintf(err, sizeof(err), "connect: %s", strerror(soerr));
            conn_close(c, err);
            return;
        }
        if (!(ev & EPOLLOUT)) return;
        c->st = C_HANDSHAKE;
        conn_handshake(c);
        if (c->st != C_CLOSED) conn_flush(c);
        return;
    }
    if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
        if (ev & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) c->rdhup = true;
        conn_read(c);
        if (c->st == C_CLOSED) return;
    }
    if (ev & EPOLLOUT) {
        /* Room again: write what is queued, then let nghttp2 produce more. With nothing queued the edge only
         * says that ACKs freed send buffer (it comes with most input): whatever nghttp2 has to send was
         * submitted with a flush scheduled, so there is nothing to do. */
        if (!conn_out_used(c)) return;
        if (conn_write_out(c) < 0) return;
        if (c->st == C_OPEN && !conn_out_used(c)) conn_schedule_flush(c);
    }
}

static struct hbone_conn *conn_new(struct loop *l, int fd, SSL_CTX *ctx, bool server,
                                   const struct hbone_conn_ops *ops, void *ud)
{
    pthread_once(&bio_once, bio_init_once);
    struct hbone_conn *c = calloc(1, sizeof(*c));
    if (!c || thread_bufs() < 0 || !bio_meth) goto fail;
    c->loop = l;
    c->server = server;
    c->ops = ops;
    c->ud = ud;
    c->io.fd = fd;
    c->io.cb = conn_io_cb;
    c->flush_task.cb = flush_task_cb;
    c->free_task.cb = conn_free_cb;
    c->read_task.cb = conn_read_task_cb;
    c->deliver_task.cb = deliver_task_cb;
    c->hs_timer.cb = hs_timer_cb;
    c->ping_timer.cb = ping_timer_cb;
    c->ssl = SSL_new(ctx);
    if (!c->ssl) goto fail;
    BIO *b = BIO_new(bio_meth);
    if (!b) goto fail;
    BIO_set_data(b, c);
    SSL_set_bio(c->ssl, b, b);
    if (server)
        SSL_set_accept_state(c->ssl);
    else
        SSL_set_connect_state(c->ssl);
    return c;
fail:
    if (c && c->ssl) SSL_free(c->ssl);
    free(c);
    close(fd);
    return NULL;
}

/* Registers a new conn with the loop in its first state, under the handshake (and dial) timeout. */
static struct hbone_conn *conn_start(struct hbone_conn *c, enum conn_state st, uint32_t events)
{
    c->st = st;
    timer_start(c->loop, &c->hs_timer, HBONE_HANDSHAKE_TIMEOUT_MS);
    if (loop_io_add(c->loop, &c->io, events) < 0) {
        c->st = C_CLOSED;
        close(c->io.fd);
        timer_stop(c->loop, &c->hs_timer);
        loop_defer(c->loop, &c->free_task);
        return NULL;
    }
    return c;
}

struct hbone_conn *hbone_client_new(struct loop *l, int fd, SSL_CTX *ctx, const char *const *expected,
                                    size_t n_expected, const struct hbone_conn_ops *ops, void *ud)
{
    struct hbone_conn *c = conn_new(l, fd, ctx, false, ops, ud);
    if (!c) return NULL;
    c->expected = calloc(n_expected ? n_expected : 1, sizeof(char *));
    for (size_t i = 0; c->expected && i < n_expected; i++)
        c->expected[c->n_expected++] = strdup(expected[i]);
    return conn_start(c, C_CONNECTING, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET);
}

struct hbone_conn *hbone_server_new(struct loop *l, int fd, SSL_CTX *ctx, const struct hbone_conn_ops *ops,
                                    void *ud)
{
    struct hbone_conn *c = conn_new(l, fd, ctx, true, ops, ud);
    return c ? conn_start(c, C_HANDSHAKE, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET) : NULL;
}

unsigned hbone_conn_max_streams(const struct hbone_conn *c)
{
    unsigned max = HBONE_CLIENT_MAX_STREAMS;
    if (c->ng) {
        uint32_t peer = nghttp2_session_get_remote_settings(c->ng, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
        if (peer < max) max = peer;
    }
    return max;
}

bool hbone_conn_usable(const struct hbone_conn *c)
{
    return c->st != C_CLOSED && !c->draining && !c->goaway_recv && c->n_streams < hbone_conn_max_streams(c);
}

bool hbone_conn_ready(const struct hbone_conn *c)
{
    return c->st == C_OPEN;
}

bool hbone_conn_established(const struct hbone_conn *c)
{
    return c->established;
}

unsigned hbone_conn_streams(const struct hbone_conn *c)
{
    return c->n_streams;
}

const char *hbone_conn_peer_id(const struct hbone_conn *c)
{
    return c->peer_id;
}

void hbone_conn_drain(struct hbone_conn *c)
{
    if (c->st == C_CLOSED || c->draining) return;
    c->draining = true;
    if (c->st != C_OPEN) {
        if (!c->n_streams) conn_close(c, NULL);
        return;
    }
    nghttp2_submit_goaway(c->ng, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(c->ng),
                          NGHTTP2_NO_ERROR, NULL, 0);
    conn_schedule_flush(c);
}

void hbone_conn_close(struct hbone_conn *c, const char *err)
{
    conn_close(c, err);
}

struct hbone_stream *hbone_stream_open(struct hbone_conn *c, const struct hbone_header *headers, size_t n,
                                       int tcp_fd, const struct hbone_stream_ops *ops, void *ud)
{
    if (c->server || !hbone_conn_usable(c)) return NULL;
    struct hbone_stream *s = stream_new();
    if (!s) return NULL;
    /* One block: the nv array followed by the copied names and values. */
    size_t bytes = (n + 1) * sizeof(nghttp2_nv) + sizeof(":method") + sizeof("CONNECT");
    for (size_t i = 0; i < n; i++)
        bytes += strlen(headers[i].name) + strlen(headers[i].value) + 2;
    s->nva = malloc(bytes);
    if (!s->nva) {
        free(s);
        return NULL;
    }
    char *p = (char *)(s->nva + n + 1);
    const char *names[1 + 64], *values[1 + 64];
    size_t m = 0;
    names[m] = ":method";
    values[m++] = "CONNECT";
    for (size_t i = 0; i < n && m < 65; i++) {
        names[m] = headers[i].name;
        values[m++] = headers[i].value;
    }
    for (size_t i = 0; i < m; i++) {
        size_t nl = strlen(names[i]), vl = strlen(values[i]);
        memcpy(p, names[i], nl + 1);
        s->nva[i].name = (uint8_t *)p;
        s->nva[i].namelen = nl;
        p += nl + 1;
        memcpy(p, values[i], vl + 1);
        s->nva[i].value = (uint8_t *)p;
        s->nva[i].valuelen = vl;
        p += vl + 1;
        s->nva[i].flags = NGHTTP2_NV_FLAG_NONE;
    }
    s->nnv = m;
    s->ops = ops;
    s->ud = ud;
    s->io.fd = tcp_fd;
    s->io.cb = stream_io_cb;
    stream_link(c, s);
    if (c->st == C_OPEN) {
        stream_submit(s);
        conn_schedule_flush(c);
    }
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
    struct hbone_conn *c = s->c;
    char st[8];
    nghttp2_nv nva[9];
    size_t m = 0;
    request_answered(s);
    if (s->done || c->st != C_OPEN) {
        if (tcp_fd >= 0) close(tcp_fd);
        return;
    }
    snprintf(st, sizeof(st), "%d", status);
    nva[m++] = (nghttp2_nv){(uint8_t *)":status", (uint8_t *)st, 7, strlen(st), NGHTTP2_NV_FLAG_NONE};
    for (size_t i = 0; i < n && m < 9; i++)
        nva[m++] = (nghttp2_nv){(uint8_t *)headers[i].name, (uint8_t *)headers[i].value,
                                strlen(headers[i].name), strlen(headers[i].value), NGHTTP2_NV_FLAG_NONE};
    s->status = status;
    if (status == 200 && tcp_fd >= 0) {
        nghttp2_data_provider prd = {.source.ptr = s, .read_callback = data_read_cb};
        nghttp2_submit_response(c->ng, s->id, nva, m, &prd);
        stream_attach_tcp(s, tcp_fd);
    } else {
        if (tcp_fd >= 0) close(tcp_fd);
        nghttp2_submit_response(c->ng, s->id, nva, m, NULL);
    }
    conn_schedule_flush(c);
}

void hbone_stream_reset(struct hbone_stream *s, const char *err)
{
    stream_finish(s, err);
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
