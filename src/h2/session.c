/* The generic HTTP/2 session over nghttp2 (1.52 API), on TLS (OpenSSL for the handshake, then TLS 1.3 records
 * sealed and opened by src/tls/record.c; OpenSSL's SSL_read/SSL_write through a custom BIO where it cannot
 * hand over) or plain TCP (h2c).
 *
 * Output: nghttp2_session_mem_send frames are staged into a per-thread 16 KiB record (small frames share a
 * record; h2c: appended as they are), DATA with NO_COPY: a payload that fills the record is sealed from where
 * it lies (ops->pull's bytes), only a short tail is staged. Ciphertext (or h2c bytes) goes to a per-thread
 * output buffer written with one send() per batch; only what the socket refuses stays with the connection
 * (its "cout"). Input: one recv() of up to 256 KiB, decrypted into a per-thread plaintext buffer and fed to
 * nghttp2 in one call (h2c: fed as received). Windows are credited only as the stream's user consumes bytes
 * (h2_stream_consume). */
#include "h2/session.h"

#include <errno.h>
#include <nghttp2/nghttp2.h>
#include <openssl/err.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/list.h"
#include "core/log.h"
#include "core/net.h"
#include "core/vec.h"
#include "h2/budget.h"
#include "h2/obuf.h"
#include "tls/record.h"
#include "tls/tls.h"

#define CIN_CAP (256u * 1024)
#define PLAIN_CAP (256u * 1024)
#define PT_REC 16384u
#define COUT_HIGH (512u * 1024)
#define MAX_DATA_FRAME (256u * 1024)
#define READS_PER_EVENT 8
#define H2_DEFAULT_WINDOW 65535 /* RFC 9113 §6.9.2: the connection window every peer starts with */
#define H2_DEFAULT_HEADERS 64
#define H2_DEFAULT_HEADER_BYTES (64u * 1024)
#define H2_DEFAULT_LINGER_MS 1000
/* A stream's window grows only if, while it drained a whole window, no more than this fraction of it waited
 * unconsumed: the user kept up, so the window (not the user) was what limited the stream. */
#define WINDOW_GROW_MAX_BACKLOG_DIV 4
/* After an error GOAWAY, the linger reads and discards at most this much. */
#define LINGER_MAX_BYTES (4u << 20)

enum conn_state {
    C_CONNECTING, /* client: TCP connect in progress */
    C_HANDSHAKE,  /* TLS handshake; h2c server: waiting for the first bytes */
    C_OPEN,       /* the nghttp2 session runs */
    C_CLOSED,
};

/* A received header block being assembled (request, response or trailers). */
struct hblock {
    char *method, *scheme, *authority, *path;
    int status;
    struct vec hdrs; /* struct h2_header, strings owned */
    size_t bytes;
    bool too_big;
};

struct h2_conn {
    struct io io;
    struct loop *loop;
    SSL *ssl;            /* NULL: h2c */
    struct tls_rec *rec; /* after the handshake: application records sealed and opened here, not by ssl */
    nghttp2_session *ng;
    bool server, eof, draining, goaway_recv, ping_wait, established;
    bool rdhup; /* FIN or error signalled: a short read is not the end of what is queued */
    enum conn_state st;
    struct h2_settings set;
    const struct h2_conn_ops *ops;
    void *ud;
    const uint8_t *cin; /* ciphertext the BIO serves to OpenSSL */
    size_t cin_len;
    struct obuf cout; /* output waiting for send() */
    bool out_err;
    bool out_high; /* send_data_cb refused a frame at COUT_HIGH during this flush */
    struct task flush_task, free_task, read_task, deliver_task;
    struct timer hs_timer, ping_timer;
    char **expected;
    size_t n_expected;
    bool chain_only;
    char peer_id[512];
    struct h2_stream *streams;
    unsigned n_streams;
    /* Server: complete requests waiting to be handed to on_request (FIFO), and those handed over but not yet
     * answered (at most set.max_unanswered). */
    struct h2_stream *req_head, *req_tail;
    unsigned n_unanswered;
    struct h2_bucket early_resets; /* server: budget for streams reset before their response */
    uint64_t n_early_resets;
    /* Flow control: our connection receive window and what of it is reserved from the memory budget. */
    uint32_t conn_win;
    uint64_t conn_reserved;
    uint64_t streams_grown; /* open streams' window growth beyond set.stream_window, summed */
    uint32_t goaway_code;   /* the peer's GOAWAY error code */
    bool perr; /* a protocol error was reported (log, metric) for this conn; the GOAWAY carries it */
};

struct h2_stream {
    struct h2_stream *next, *prev;
    struct h2_conn *c;
    int32_t id;
    const struct h2_stream_ops *ops;
    void *ud;
    int status;
    bool body;      /* we send a body through ops->pull */
    bool deferred;  /* nghttp2 waits for h2_stream_resume */
    bool ng_closed; /* nghttp2 closed the stream */
    bool done;      /* ended: on_end ran or runs */
    bool peer_eof, rst_recv, responded;
    bool rst_when_done; /* h2_stream_reset_when_done */
    /* Client: the request, kept until it is submitted after the handshake. */
    nghttp2_nv *nva;
    size_t nnv;
    nghttp2_nv *trailers;
    size_t ntrailers;
    /* Header blocks being received, allocated while they are: an open stream holds none. */
    struct hblock *req;                    /* server: the request, until it is handed to on_request */
    struct hblock *hb;                     /* a response or trailers */
    bool req_end;                          /* server: the request's HEADERS ended the peer's side (no body) */
    struct h2_stream *req_next, *req_prev; /* server: in the conn's request queue while queued */
    bool queued, delivered, answered, reset_early;
    /* Flow control: our receive window for this stream, bytes consumed since it last grew, bytes handed to
     * on_data and not yet consumed ("held"), the largest such backlog meanwhile, and the growth beyond
     * set.stream_window (the connection window grew by as much, reserved from the memory budget). */
    uint32_t win;
    uint64_t drained, held, backlog_peak, grown;
    struct task free_task;
    _Alignas(16) unsigned char user[];
};

static __thread uint8_t *tl_cin, *tl_plain, *tl_pt;
static __thread size_t tl_pt_len;
/* Output is written into the thread's buffer and sent from there; a connection keeps its own "cout" only for
 * what send() refused. tl_out holds the bytes of at most one connection (tl_out_conn), which come after that
 * connection's cout; it is emptied (sent, or moved into cout) by conn_write_out, so a round trip allocates
 * no output buffer and an idle connection holds none. */
static __thread struct obuf tl_out;
static __thread struct h2_conn *tl_out_conn;
static _Atomic uint64_t proto_errors[H2_PERR_COUNT], early_resets_total, tls_conns[2];

static BIO_METHOD *bio_meth;
static pthread_once_t bio_once = PTHREAD_ONCE_INIT;

static void conn_close(struct h2_conn *c, enum h2_end_reason reason, uint32_t code, const char *detail);
static void conn_schedule_flush(struct h2_conn *c);
static void conn_flush(struct h2_conn *c);
static void stream_finish(struct h2_stream *s, const struct h2_end *e, uint32_t rst_code);
static void deliver_request(struct h2_conn *c, struct h2_stream *s);

const char *h2_end_reason_to_str(enum h2_end_reason r)
{
    switch (r) {
    case H2_END_OK:
        return "ok";
    case H2_END_CONNECT_FAILED:
        return "connect_failed";
    case H2_END_HANDSHAKE_FAILED:
        return "handshake_failed";
    case H2_END_HANDSHAKE_TIMEOUT:
        return "handshake_timeout";
    case H2_END_IDENTITY:
        return "identity";
    case H2_END_NO_ALPN:
        return "no_alpn";
    case H2_END_PING_TIMEOUT:
        return "ping_timeout";
    case H2_END_PEER_CLOSED:
        return "peer_closed";
    case H2_END_IO:
        return "io";
    case H2_END_PROTOCOL:
        return "protocol";
    case H2_END_RESET_BY_PEER:
        return "reset_by_peer";
    case H2_END_REFUSED:
        return "refused";
    case H2_END_REJECTED:
        return "rejected";
    case H2_END_LOCAL:
        return "local";
    case H2_END_CONN_CLOSED:
        return "conn_closed";
    case H2_END_NO_MEMORY:
        return "no_memory";
    case H2_END_REASON_COUNT:
        break;
    }
    return "unknown";
}

const char *h2_proto_err_to_str(enum h2_proto_err e)
{
    switch (e) {
    case H2_PERR_FLOOD:
        return "flood";
    case H2_PERR_CONTINUATION:
        return "continuation_flood";
    case H2_PERR_EARLY_RESETS:
        return "early_resets";
    case H2_PERR_PROTOCOL:
        return "protocol_error";
    case H2_PERR_HEADERS_TOO_LARGE:
        return "request_headers_too_large";
    case H2_PERR_COUNT:
        break;
    }
    return "unknown";
}

uint64_t h2_proto_errors(enum h2_proto_err e)
{
    return (unsigned)e < H2_PERR_COUNT ? atomic_load_explicit(&proto_errors[e], memory_order_relaxed) : 0;
}

uint64_t h2_early_resets(void)
{
    return atomic_load_explicit(&early_resets_total, memory_order_relaxed);
}

uint64_t h2_tls_conns(bool own)
{
    return atomic_load_explicit(&tls_conns[own], memory_order_relaxed);
}

/* ---- output: the thread's buffer, then the conn's own for what the socket refused ---- */

/* The buffer c's next output goes to: the thread's buffer if it holds c's bytes, or is free and nothing of
 * c's waits in cout (order is kept: cout is always sent first); else cout. */
static struct obuf *out_target(struct h2_conn *c)
{
    return tl_out_conn == c || (!tl_out_conn && !obuf_used(&c->cout)) ? &tl_out : &c->cout;
}

/* n bytes written at b's end (b from out_target) are c's output. */
static void out_commit(struct h2_conn *c, struct obuf *b, size_t n)
{
    b->len += n;
    if (b == &tl_out) tl_out_conn = c;
}

/* Appends output for c (see out_target). */
static int out_append(struct h2_conn *c, const void *data, size_t len)
{
    struct obuf *b = out_target(c);
    uint8_t *w = obuf_reserve(b, len);
    if (!w) return -ENOMEM;
    memcpy(w, data, len);
    out_commit(c, b, len);
    return 0;
}

/* Seals pieces (total bytes, at most one record) straight into c's output. */
static void rec_seal(struct h2_conn *c, const struct tls_piece *pc, size_t n, size_t total)
{
    struct obuf *b = out_target(c);
    uint8_t *w = obuf_reserve(b, tls_rec_seal_room(total));
    ssize_t k = w ? tls_rec_seal(c->rec, pc, n, w) : -1;
    if (k < 0) {
        c->out_err = true;
        return;
    }
    out_commit(c, b, (size_t)k);
}

/* ---- custom BIO over the connection's buffers ---- */

static int bio_write_cb(BIO *b, const char *data, int len)
{
    struct h2_conn *c = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    return out_append(c, data, (size_t)len) < 0 ? -1 : len;
}

static int bio_read_cb(BIO *b, char *buf, int len)
{
    struct h2_conn *c = BIO_get_data(b);
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
    bio_meth = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "h2");
    BIO_meth_set_write(bio_meth, bio_write_cb);
    BIO_meth_set_read(bio_meth, bio_read_cb);
    BIO_meth_set_ctrl(bio_meth, bio_ctrl_cb);
    BIO_meth_set_create(bio_meth, bio_create_cb);
}

/* A thread that ends (the identity manager's, whose CA calls run on sessions; a test's) frees its buffers: a
 * key's destructor runs at thread exit, while the thread's __thread variables are still there. Threads that
 * live as long as the process (workers) never get here. */
static pthread_key_t tl_key;
static pthread_once_t tl_key_once = PTHREAD_ONCE_INIT;

static void thread_bufs_free(void *unused)
{
    (void)unused;
    free(tl_cin);
    free(tl_plain);
    free(tl_pt);
    obuf_free(&tl_out);
    tl_cin = tl_plain = tl_pt = NULL;
    tl_out_conn = NULL;
}

static void tl_key_init(void)
{
    (void)pthread_key_create(&tl_key, thread_bufs_free);
}

static int thread_bufs(void)
{
    if (tl_cin) return 0;
    pthread_once(&tl_key_once, tl_key_init);
    tl_cin = malloc(CIN_CAP);
    tl_plain = malloc(PLAIN_CAP);
    tl_pt = malloc(PT_REC);
    /* Any non-NULL value arms the destructor. */
    if (tl_cin) (void)pthread_setspecific(tl_key, tl_cin);
    return tl_cin && tl_plain && tl_pt ? 0 : -ENOMEM;
}

/* ---- plaintext staging: coalesce small frames into full TLS records ---- */

static void pt_write(struct h2_conn *c, const uint8_t *d, size_t n)
{
    size_t w;
    if (!c->ssl) {
        if (!c->out_err && out_append(c, d, n) < 0) c->out_err = true;
        return;
    }
    if (c->rec) {
        while (n && !c->out_err) {
            size_t k = n < PT_REC ? n : PT_REC;
            rec_seal(c, &(struct tls_piece){d, k}, 1, k);
            d += k;
            n -= k;
        }
        return;
    }
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

static void pt_append(struct h2_conn *c, const uint8_t *d, size_t n)
{
    while (n) {
        if (c->rec && tl_pt_len && tl_pt_len + n >= PT_REC) {
            /* Our own records: the staged frames and the head of d sealed as one record, d not copied. */
            size_t k = PT_REC - tl_pt_len;
            struct tls_piece pc[2] = {{tl_pt, tl_pt_len}, {d, k}};
            rec_seal(c, pc, 2, PT_REC);
            tl_pt_len = 0;
            d += k;
            n -= k;
            continue;
        }
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

static void pt_flush(struct h2_conn *c)
{
    if (tl_pt_len) pt_write(c, tl_pt, tl_pt_len);
    tl_pt_len = 0;
}

/* A remainder of the thread's buffer up to this size is copied into the conn's cout; a larger one hands the
 * whole buffer over (no copy; the thread allocates a new one when it next writes). */
#define OUT_COPY_MAX (16u * 1024)

/* Output queued for c: its cout, then the thread's buffer if that holds c's bytes. */
static size_t conn_out_used(const struct h2_conn *c)
{
    return obuf_used(&c->cout) + (tl_out_conn == c ? obuf_used(&tl_out) : 0);
}

/* The thread's buffer no longer holds c's bytes (sent, moved, or dropped with the conn). */
static void tl_out_release(const struct h2_conn *c)
{
    if (tl_out_conn != c) return;
    tl_out_conn = NULL;
    tl_out.off = tl_out.len = 0;
}

/* Sends what b holds until the socket is full. Returns 0, or -1 when the connection was closed. b is the
 * conn's cout (freed when drained: idle connections keep no buffer) or the thread's buffer (kept). */
static int out_send(struct h2_conn *c, struct obuf *b)
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
        conn_close(c, H2_END_IO, 0, n < 0 ? strerror(errno) : "send returned 0");
        return -1;
    }
    return 0;
}

/* Sends queued output: cout, then the thread's buffer if it holds c's bytes; what the socket refuses of the
 * latter moves into cout. Returns 0, or -1 when the connection was closed. */
static int conn_write_out(struct h2_conn *c)
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
        conn_close(c, H2_END_NO_MEMORY, 0, "out of memory");
        return -1;
    }
    tl_out_release(c);
    return 0;
}

static void conn_flush(struct h2_conn *c)
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
                    conn_close(c, n == NGHTTP2_ERR_NOMEM ? H2_END_NO_MEMORY : H2_END_PROTOCOL, 0,
                               nghttp2_strerror((int)n));
                    return;
                }
                if (n == 0) break;
                pt_append(c, d, (size_t)n);
            }
            pt_flush(c);
            if (c->out_err) {
                conn_close(c, H2_END_IO, 0, c->ssl ? "TLS write failed" : "out of memory");
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
            if (c->perr)
                conn_close(c, H2_END_PROTOCOL, 0, "HTTP/2 protocol error (GOAWAY sent)");
            else
                conn_close(c, H2_END_OK, 0, NULL);
            return;
        }
        if ((c->draining || c->goaway_recv) && c->n_streams == 0) {
            conn_close(c, H2_END_OK, 0, NULL);
            return;
        }
    }
}

static void flush_task_cb(struct task *t)
{
    conn_flush(container_of(t, struct h2_conn, flush_task));
}

static void conn_schedule_flush(struct h2_conn *c)
{
    if (c->st != C_CLOSED) loop_defer(c->loop, &c->flush_task);
}

/* ---- protocol errors: one rate-limited line, a counter, and a GOAWAY that reaches the peer ---- */

/* Counts e and logs it (rate-limited: a peer can repeat it) with the peer's address and identity. */
static void conn_report_perr(struct h2_conn *c, enum h2_proto_err e, const char *detail)
{
    static struct log_limit lim;
    char peer[SOCKADDR_STRLEN] = "unknown";
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    atomic_fetch_add_explicit(&proto_errors[e], 1, memory_order_relaxed);
    if (!log_enabled(LOG_WARN)) return;
    if (c->io.fd >= 0 && getpeername(c->io.fd, (struct sockaddr *)&ss, &len) == 0)
        sockaddr_format(&ss, peer, sizeof(peer));
    log_fmt_limited(&lim, LOG_WARN, c->set.log_name,
                    "HTTP/2 protocol error: reason=%s peer.addr=%s peer.id=%s%s%s", h2_proto_err_to_str(e),
                    peer, c->peer_id[0] ? c->peer_id : "unknown", detail ? " detail=" : "",
                    detail ? detail : "");
}

/* Ends c for what the peer did: reports it once, queues GOAWAY(code) after what is already queued; the conn
 * closes once it is sent (nghttp2 then wants neither to read nor to write). */
static void conn_abort(struct h2_conn *c, enum h2_proto_err e, uint32_t code, const char *detail)
{
    if (c->st != C_OPEN || c->perr) return;
    c->perr = true;
    conn_report_perr(c, e, detail);
    nghttp2_session_terminate_session(c->ng, code);
    conn_schedule_flush(c);
}

/* A closed connection's socket, kept a little while so the GOAWAY is not lost: closing a socket whose input
 * is unread makes the kernel send RST and drop what was still to be sent. Reads and discards until the peer's
 * FIN, an error, linger_ms or LINGER_MAX_BYTES. */
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
static void fd_linger(struct loop *l, int fd, uint32_t ms)
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
    timer_start(l, &lf->timer, ms);
}

/* ---- flow control: receive windows that grow for streams that drain, within the memory budget ---- */

/* Grows the connection window to at least want (capped at conn_window_max), reserving the growth from the
 * process-wide budget. The window never shrinks while the conn lives (taking credit back from a peer that
 * may already use it would be a flow-control error); its reservation is returned when the conn closes.
 * Returns false when the budget is spent. */
static bool conn_grow_window(struct h2_conn *c, uint64_t want)
{
    if (want > c->set.conn_window_max) want = c->set.conn_window_max;
    if (want <= c->conn_win) return true;
    uint64_t delta = want - c->conn_win;
    if (!h2_mem_reserve(delta)) return false;
    c->conn_reserved += delta;
    c->conn_win = (uint32_t)want;
    nghttp2_session_set_local_window_size(c->ng, NGHTTP2_FLAG_NONE, 0, (int32_t)c->conn_win);
    return true;
}

/* Called when s has drained a whole window: if its user kept up meanwhile, the window limited the stream,
 * so double it (up to stream_window_max), with the connection window grown by as much so that the grown
 * stream does not take its siblings' share. A stream whose user lags keeps its window. */
static void stream_grow_window(struct h2_stream *s)
{
    struct h2_conn *c = s->c;
    bool kept_up = s->backlog_peak <= s->win / WINDOW_GROW_MAX_BACKLOG_DIV;
    uint32_t max = c->set.stream_window_max;
    s->drained = 0;
    s->backlog_peak = 0;
    if (!kept_up || s->win >= max) return;
    uint32_t delta = s->win;
    if (delta > max - s->win) delta = max - s->win;
    if (!conn_grow_window(c, (uint64_t)c->set.conn_window + c->streams_grown + delta)) return;
    s->win += delta;
    s->grown += delta;
    c->streams_grown += delta;
    nghttp2_session_set_local_window_size(c->ng, NGHTTP2_FLAG_NONE, s->id, (int32_t)s->win);
}

/* ---- header blocks ---- */

static char *dupn(const uint8_t *p, size_t n)
{
    char *s = malloc(n + 1);
    if (s) {
        memcpy(s, p, n);
        s[n] = 0;
    }
    return s;
}

/* Frees the block *pb (if any). */
static void hblock_drop(struct hblock **pb)
{
    struct hblock *b = *pb;
    if (!b) return;
    struct h2_header *h = (struct h2_header *)b->hdrs.p;
    for (size_t i = 0; i < b->hdrs.n; i++) {
        free((char *)h[i].name);
        free((char *)h[i].value);
    }
    vec_free(&b->hdrs);
    free(b->method);
    free(b->scheme);
    free(b->authority);
    free(b->path);
    free(b);
    *pb = NULL;
}

/* The block *pb, allocated empty on first use. NULL on allocation failure. */
static struct hblock *hblock_get(struct hblock **pb)
{
    if (!*pb && (*pb = calloc(1, sizeof(**pb)))) (*pb)->hdrs = VEC(struct h2_header);
    return *pb;
}

/* An nghttp2_nv array with its names and values in one allocation: first (name, value) if first_name is not
 * NULL, then h[0..n). Returns NULL on allocation failure. */
static nghttp2_nv *nv_block(const char *first_name, const char *first_value, const struct h2_header *h,
                            size_t n, size_t *out_n)
{
    size_t m = n + (first_name ? 1 : 0), bytes = m * sizeof(nghttp2_nv);
    if (first_name) bytes += strlen(first_name) + strlen(first_value) + 2;
    for (size_t i = 0; i < n; i++)
        bytes += strlen(h[i].name) + strlen(h[i].value) + 2;
    nghttp2_nv *nva = malloc(bytes ? bytes : 1);
    if (!nva) return NULL;
    char *p = (char *)(nva + m);
    for (size_t i = 0; i < m; i++) {
        const char *name = first_name && i == 0 ? first_name : h[i - (first_name ? 1 : 0)].name;
        const char *value = first_name && i == 0 ? first_value : h[i - (first_name ? 1 : 0)].value;
        size_t nl = strlen(name), vl = strlen(value);
        memcpy(p, name, nl + 1);
        nva[i].name = (uint8_t *)p;
        nva[i].namelen = nl;
        p += nl + 1;
        memcpy(p, value, vl + 1);
        nva[i].value = (uint8_t *)p;
        nva[i].valuelen = vl;
        p += vl + 1;
        nva[i].flags = NGHTTP2_NV_FLAG_NONE;
    }
    *out_n = m;
    return nva;
}

/* ---- streams ---- */

static void stream_link(struct h2_conn *c, struct h2_stream *s)
{
    s->c = c;
    s->next = c->streams;
    if (c->streams) c->streams->prev = s;
    c->streams = s;
    c->n_streams++;
}

static void stream_unlink(struct h2_stream *s)
{
    struct h2_conn *c = s->c;
    if (s->prev)
        s->prev->next = s->next;
    else
        c->streams = s->next;
    if (s->next) s->next->prev = s->prev;
    s->next = s->prev = NULL;
    c->n_streams--;
}

static void stream_free_cb(struct task *t)
{
    struct h2_stream *s = container_of(t, struct h2_stream, free_task);
    hblock_drop(&s->req);
    hblock_drop(&s->hb);
    free(s->nva);
    free(s->trailers);
    free(s);
}

static struct h2_stream *stream_new(struct h2_conn *c)
{
    struct h2_stream *s = calloc(1, sizeof(*s) + c->set.stream_user_size);
    if (!s) return NULL;
    s->win = c->set.stream_window;
    s->free_task.cb = stream_free_cb;
    return s;
}

static struct h2_stream *stream_of(nghttp2_session *ng, int32_t id)
{
    struct h2_stream *s = nghttp2_session_get_stream_user_data(ng, id);
    return s && !s->done ? s : NULL;
}

/* ---- server: requests are handed to on_request from a task, at most max_unanswered at a time ---- */

static void request_dequeue(struct h2_stream *s)
{
    struct h2_conn *c = s->c;
    if (!s->queued) return;
    QUEUE_DEL(c->req_head, c->req_tail, s, req_prev, req_next);
    s->queued = false;
}

/* s's request was answered or abandoned: its slot goes to the next queued request. */
static void request_answered(struct h2_stream *s)
{
    struct h2_conn *c = s->c;
    if (!s->delivered || s->answered) return;
    s->answered = true;
    c->n_unanswered--;
    if (c->req_head) loop_defer(c->loop, &c->deliver_task);
}

/* Ends s: resets it if HTTP/2 still has it open, returns the bytes its user never consumed to the connection
 * window, frees its slot, and calls on_end. Freed from a task (nghttp2 or the caller may be on the stack). */
static void stream_finish(struct h2_stream *s, const struct h2_end *e, uint32_t rst_code)
{
    struct h2_conn *c = s->c;
    if (s->done) return;
    s->done = true;
    if (s->id > 0 && c->ng) {
        /* A stream whose both halves are closed (the peer's END_STREAM is being delivered, ours was sent)
         * closes in nghttp2 as this callback returns: a RST_STREAM would only cost the peer, and an nghttp2
         * server counts every RST_STREAM it receives against its rapid-reset limit (1000, then 33/s) and
         * ends the connection with GOAWAY INTERNAL_ERROR past it. */
        bool closing = s->peer_eof && nghttp2_session_get_stream_local_close(c->ng, s->id) == 1;
        if (!s->ng_closed && !closing && c->st == C_OPEN) {
            nghttp2_submit_rst_stream(c->ng, NGHTTP2_FLAG_NONE, s->id, rst_code);
            conn_schedule_flush(c);
        }
        /* Bytes the user held were counted against the connection window: return them, or a conn whose
         * streams end with unconsumed bytes would shrink its window for good. */
        if (s->held && c->st == C_OPEN) {
            nghttp2_session_consume_connection(c->ng, s->held);
            conn_schedule_flush(c);
        }
        nghttp2_session_set_stream_user_data(c->ng, s->id, NULL);
    }
    s->held = 0;
    request_dequeue(s);
    request_answered(s);
    stream_unlink(s);
    c->streams_grown -= s->grown; /* header blocks go with the stream: a callback may still read them */
    struct h2_end end = *e;
    end.reset_early = s->reset_early;
    if (end.reason != H2_END_OK && !end.detail) end.detail = h2_end_reason_to_str(end.reason);
    if (s->ops && s->ops->on_end) s->ops->on_end(s, s->ud, &end);
    loop_defer(c->loop, &s->free_task);
    if ((c->draining || c->goaway_recv) && c->n_streams == 0) conn_schedule_flush(c);
}

/* HTTP/2 closed s: its user ends it (ops->on_close) or it ends now. */
static void stream_h2_closed(struct h2_stream *s, const struct h2_end *e)
{
    if (s->ops && s->ops->on_close) {
        s->ops->on_close(s, s->ud, e);
        return;
    }
    stream_finish(s, e, NGHTTP2_NO_ERROR);
}

/* ---- nghttp2 callbacks ---- */

static ssize_t data_read_cb(nghttp2_session *ng, int32_t id, uint8_t *buf, size_t length, uint32_t *flags,
                            nghttp2_data_source *src, void *ud)
{
    (void)buf, (void)src, (void)ud;
    struct h2_stream *s = stream_of(ng, id);
    if (!s || !s->ops || !s->ops->pull) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    const uint8_t *p = NULL;
    bool eof = false;
    size_t avail = s->ops->pull(s, s->ud, &p, &eof);
    size_t n = avail < length ? avail : length;
    if (avail) *flags |= NGHTTP2_DATA_FLAG_NO_COPY;
    if (eof && n == avail) {
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        if (s->trailers) {
            /* nghttp2 copies the trailers; they follow this last DATA frame (then without END_STREAM). */
            int rv = nghttp2_submit_trailer(ng, id, s->trailers, s->ntrailers);
            free(s->trailers);
            s->trailers = NULL;
            if (rv == 0)
                *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
            else /* the body still ends; say that its trailers did not go */
                LOG_W(s->c->set.log_name, "stream %d: trailers not sent: %s", id, nghttp2_strerror(rv));
        }
        return (ssize_t)n;
    }
    if (n) return (ssize_t)n;
    s->deferred = true;
    return NGHTTP2_ERR_DEFERRED;
}

static int send_data_cb(nghttp2_session *ng, nghttp2_frame *frame, const uint8_t *framehd, size_t length,
                        nghttp2_data_source *src, void *ud)
{
    (void)src;
    struct h2_conn *c = ud;
    if (conn_out_used(c) >= COUT_HIGH) {
        c->out_high = true;
        return NGHTTP2_ERR_WOULDBLOCK;
    }
    struct h2_stream *s = stream_of(ng, frame->hd.stream_id);
    const uint8_t *p = NULL;
    bool eof = false;
    if (!s) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    if (length && s->ops->pull(s, s->ud, &p, &eof) < length) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    pt_append(c, framehd, 9);
    if (length) {
        pt_append(c, p, length);
        if (s->ops->sent) s->ops->sent(s, s->ud, length);
    }
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
    struct h2_conn *c = ud;
    struct h2_stream *s = stream_of(ng, id);
    if (!s || !s->ops || !s->ops->on_data) {
        /* Nobody will read these bytes: return the window at once. */
        nghttp2_session_consume(ng, id, len);
        conn_schedule_flush(c);
        return 0;
    }
    s->held += len;
    s->ops->on_data(s, s->ud, data, len);
    if (!s->done && s->held > s->backlog_peak) s->backlog_peak = s->held;
    return 0;
}

static int on_begin_headers_cb(nghttp2_session *ng, const nghttp2_frame *frame, void *ud)
{
    struct h2_conn *c = ud;
    if (frame->hd.type != NGHTTP2_HEADERS) return 0;
    if (!c->server || frame->headers.cat != NGHTTP2_HCAT_REQUEST) {
        struct h2_stream *s = stream_of(ng, frame->hd.stream_id);
        if (s) hblock_drop(&s->hb); /* a response, an interim response or trailers: a new block */
        return 0;
    }
    if (c->draining) {
        nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, frame->hd.stream_id, NGHTTP2_REFUSED_STREAM);
        return 0;
    }
    struct h2_stream *s = stream_new(c);
    if (!s) return NGHTTP2_ERR_CALLBACK_FAILURE;
    s->id = frame->hd.stream_id;
    stream_link(c, s);
    nghttp2_session_set_stream_user_data(ng, s->id, s);
    c->ops->on_stream(c, c->ud, s);
    return 0;
}

static int on_header_cb(nghttp2_session *ng, const nghttp2_frame *frame, const uint8_t *name, size_t namelen,
                        const uint8_t *value, size_t valuelen, uint8_t flags, void *ud)
{
    (void)flags;
    struct h2_conn *c = ud;
    struct h2_stream *s = stream_of(ng, frame->hd.stream_id);
    if (!s || frame->hd.type != NGHTTP2_HEADERS) return 0;
    /* A request waits for its delivery in its own block: trailers may arrive before it is handed over. */
    struct hblock *b = hblock_get(frame->headers.cat == NGHTTP2_HCAT_REQUEST ? &s->req : &s->hb);
    if (!b) return NGHTTP2_ERR_CALLBACK_FAILURE;
    b->bytes += namelen + valuelen;
    if (b->bytes > c->set.max_header_bytes) {
        b->too_big = true;
        return 0;
    }
    char **slot = NULL;
    if (namelen && name[0] == ':') {
        if (namelen == 7 && memcmp(name, ":status", 7) == 0) {
            int st = 0;
            for (size_t i = 0; i < valuelen && i < 3; i++)
                st = st * 10 + (value[i] - '0');
            b->status = st;
        } else if (namelen == 7 && memcmp(name, ":method", 7) == 0) {
            slot = &b->method;
        } else if (namelen == 7 && memcmp(name, ":scheme", 7) == 0) {
            slot = &b->scheme;
        } else if (namelen == 10 && memcmp(name, ":authority", 10) == 0) {
            slot = &b->authority;
        } else if (namelen == 5 && memcmp(name, ":path", 5) == 0) {
            slot = &b->path;
        }
        if (slot) {
            free(*slot);
            if (!(*slot = dupn(value, valuelen))) return NGHTTP2_ERR_CALLBACK_FAILURE;
        }
        return 0;
    }
    if (b->hdrs.n >= c->set.max_headers) {
        b->too_big = true;
        return 0;
    }
    struct h2_header *h = vec_push(&b->hdrs);
    if (!h) return NGHTTP2_ERR_CALLBACK_FAILURE;
    h->name = dupn(name, namelen);
    h->value = dupn(value, valuelen);
    if (!h->name || !h->value) return NGHTTP2_ERR_CALLBACK_FAILURE;
    return 0;
}

/* Hands queued requests to on_request, in arrival order, while fewer than max_unanswered wait for their
 * answer. Running after the batch of input means a stream reset in the same read never reaches the caller. */
static void deliver_task_cb(struct task *t)
{
    struct h2_conn *c = container_of(t, struct h2_conn, deliver_task);
    while (c->st == C_OPEN && c->req_head &&
           (!c->set.max_unanswered || c->n_unanswered < c->set.max_unanswered)) {
        struct h2_stream *s = c->req_head;
        request_dequeue(s);
        s->delivered = true;
        c->n_unanswered++;
        deliver_request(c, s); /* s stays allocated until its free task, which runs after this one */
    }
    conn_schedule_flush(c);
}

static void handle_request(struct h2_conn *c, struct h2_stream *s)
{
    if (s->req && s->req->too_big) {
        char detail[96];
        snprintf(detail, sizeof(detail), "431: more than %u headers or %u KiB", c->set.max_headers,
                 c->set.max_header_bytes / 1024);
        conn_report_perr(c, H2_PERR_HEADERS_TOO_LARGE, detail);
        h2_stream_respond(s, 431, NULL, 0, 0);
        hblock_drop(&s->req);
        return;
    }
    s->queued = true;
    QUEUE_APPEND(c->req_head, c->req_tail, s, req_prev, req_next);
    loop_defer(c->loop, &c->deliver_task);
}

static void deliver_request(struct h2_conn *c, struct h2_stream *s)
{
    static const struct hblock empty;
    const struct hblock *b = s->req ? s->req : &empty;
    struct h2_request req = {
        .method = b->method ? b->method : "",
        .scheme = b->scheme ? b->scheme : "",
        .authority = b->authority ? b->authority : "",
        .path = b->path ? b->path : "",
        .headers = (const struct h2_header *)b->hdrs.p,
        .n_headers = b->hdrs.n,
        .end_stream = s->req_end,
    };
    c->ops->on_request(s, c->ud, &req);
    /* The request is only valid during on_request: an open stream keeps none of it. */
    hblock_drop(&s->req);
}

/* Client: a response or trailers block arrived on s. */
static void handle_headers(struct h2_stream *s, bool end_stream)
{
    static const struct hblock empty;
    const struct hblock *b = s->hb ? s->hb : &empty;
    struct h2_headers h = {
        .headers = (const struct h2_header *)b->hdrs.p, .n_headers = b->hdrs.n, .end_stream = end_stream};
    if (!s->c->server && s->status < 200) {
        if (b->status >= 100 && b->status < 200 && !end_stream) { /* interim: not delivered */
            hblock_drop(&s->hb);
            return;
        }
        s->status = b->status;
        h.kind = H2_HEADERS_RESPONSE;
        h.status = b->status;
    } else {
        h.kind = H2_HEADERS_TRAILERS;
    }
    if (b->too_big) {
        struct h2_end e = {.reason = H2_END_PROTOCOL,
                           .code = NGHTTP2_CANCEL,
                           .detail = h.kind == H2_HEADERS_RESPONSE ? "response headers too large"
                                                                   : "trailers too large"};
        stream_finish(s, &e, NGHTTP2_CANCEL);
        return;
    }
    if (s->ops && s->ops->on_headers) s->ops->on_headers(s, s->ud, &h);
    hblock_drop(&s->hb);
}

/* Server: the peer reset s. Before a response, that is an abandoned request, charged to the budget. */
static void conn_early_reset(struct h2_conn *c, struct h2_stream *s)
{
    if (!s || s->responded) return;
    s->reset_early = true;
    c->n_early_resets++;
    atomic_fetch_add_explicit(&early_resets_total, 1, memory_order_relaxed);
    if (!c->set.early_reset_burst || h2_bucket_take(&c->early_resets, loop_now(c->loop))) return;
    char detail[96];
    snprintf(detail, sizeof(detail), "%llu streams reset before their response",
             (unsigned long long)c->n_early_resets);
    conn_abort(c, H2_PERR_EARLY_RESETS, NGHTTP2_ENHANCE_YOUR_CALM, detail);
}

static void stream_peer_eof(struct h2_stream *s)
{
    if (s->peer_eof) return;
    s->peer_eof = true;
    if (s->ops && s->ops->on_eof) s->ops->on_eof(s, s->ud);
}

static int on_frame_recv_cb(nghttp2_session *ng, const nghttp2_frame *frame, void *ud)
{
    struct h2_conn *c = ud;
    if (c->st == C_CLOSED) return NGHTTP2_ERR_CALLBACK_FAILURE;
    switch (frame->hd.type) {
    case NGHTTP2_PING:
        if ((frame->hd.flags & NGHTTP2_FLAG_ACK) && c->set.ping_interval_ms) {
            c->ping_wait = false;
            timer_start(c->loop, &c->ping_timer, c->set.ping_interval_ms);
        }
        return 0;
    case NGHTTP2_GOAWAY:
        c->goaway_recv = true;
        c->goaway_code = frame->goaway.error_code;
        return 0;
    case NGHTTP2_RST_STREAM: {
        struct h2_stream *s = stream_of(ng, frame->hd.stream_id);
        if (s) s->rst_recv = true;
        if (c->server) conn_early_reset(c, s);
        return 0;
    }
    case NGHTTP2_HEADERS:
    case NGHTTP2_DATA:
        break;
    default:
        return 0;
    }
    struct h2_stream *s = stream_of(ng, frame->hd.stream_id);
    if (!s) return 0;
    bool end = frame->hd.flags & NGHTTP2_FLAG_END_STREAM;
    if (frame->hd.type == NGHTTP2_HEADERS) {
        if (c->server && frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
            s->req_end = end;
            if (end) stream_peer_eof(s);
            if (!s->done) handle_request(c, s);
            return 0;
        }
        handle_headers(s, end);
        if (s->done) return 0;
    }
    if (end) stream_peer_eof(s);
    return 0;
}

static int on_frame_send_cb(nghttp2_session *ng, const nghttp2_frame *frame, void *ud)
{
    struct h2_conn *c = ud;
    if (frame->hd.type == NGHTTP2_GOAWAY && frame->goaway.error_code != NGHTTP2_NO_ERROR && !c->perr) {
        /* nghttp2 found a connection error in the peer's input and ends the session with this GOAWAY. */
        char detail[160];
        uint32_t code = frame->goaway.error_code;
        snprintf(detail, sizeof(detail), "%s: %.*s", nghttp2_http2_strerror(code),
                 (int)(frame->goaway.opaque_data_len < 100 ? frame->goaway.opaque_data_len : 100),
                 frame->goaway.opaque_data ? (const char *)frame->goaway.opaque_data : "");
        c->perr = true;
        conn_report_perr(c, code == NGHTTP2_ENHANCE_YOUR_CALM ? H2_PERR_FLOOD : H2_PERR_PROTOCOL, detail);
        return 0;
    }
    if (!c->server || (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA)) return 0;
    struct h2_stream *s = stream_of(ng, frame->hd.stream_id);
    /* A response without a body (an error status) while the peer still sends: tell it to stop (RFC 9113
     * §8.1), so that a client that keeps sending does not hold the stream. Trailers after a body, or a body's
     * END_STREAM, do so only when the stream asked for it (h2_stream_reset_when_done: gRPC, whose call is
     * over with its trailers); HBONE's END_STREAM is a half-close and the peer may go on sending. */
    bool end = frame->hd.flags & NGHTTP2_FLAG_END_STREAM;
    if (s && end && !s->ng_closed && !s->peer_eof &&
        ((frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_RESPONSE) ||
         s->rst_when_done))
        nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_NO_ERROR);
    return 0;
}

static int on_frame_not_send_cb(nghttp2_session *ng, const nghttp2_frame *frame, int lib_error, void *ud)
{
    (void)ud;
    struct h2_stream *s = stream_of(ng, frame->hd.stream_id);
    if (!s || frame->hd.type != NGHTTP2_HEADERS) return 0;
    /* A request refused before it left (the peer's GOAWAY, stream ids exhausted) may be retried elsewhere. */
    bool refused =
        lib_error == NGHTTP2_ERR_START_STREAM_NOT_ALLOWED || lib_error == NGHTTP2_ERR_STREAM_ID_NOT_AVAILABLE;
    struct h2_end e = {.reason = refused ? H2_END_REFUSED : H2_END_LOCAL,
                       .detail = nghttp2_strerror(lib_error)};
    stream_finish(s, &e, NGHTTP2_CANCEL);
    return 0;
}

static int on_stream_close_cb(nghttp2_session *ng, int32_t id, uint32_t error_code, void *ud)
{
    (void)ud;
    struct h2_stream *s = stream_of(ng, id);
    if (!s) return 0;
    s->ng_closed = true;
    struct h2_end e = {.code = error_code};
    if (error_code == NGHTTP2_REFUSED_STREAM) {
        e.reason = H2_END_REFUSED;
        e.detail = nghttp2_http2_strerror(error_code);
    } else if (s->rst_recv) {
        e.reason = H2_END_RESET_BY_PEER;
        e.detail = nghttp2_http2_strerror(error_code);
    } else if (error_code != NGHTTP2_NO_ERROR) {
        e.reason = H2_END_PROTOCOL; /* nghttp2 reset it for what the peer sent */
        e.detail = nghttp2_http2_strerror(error_code);
    } else {
        e.reason = H2_END_OK;
    }
    stream_h2_closed(s, &e);
    return 0;
}

static int on_error_cb(nghttp2_session *ng, int code, const char *msg, size_t len, void *ud)
{
    (void)ng, (void)code;
    struct h2_conn *c = ud;
    LOG_D(c->set.log_name, "http2: %.*s", (int)len, msg);
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
    struct h2_conn *c = container_of(t, struct h2_conn, free_task);
    if (c->ng) nghttp2_session_del(c->ng);
    tls_rec_free(c->rec);
    if (c->ssl) SSL_free(c->ssl);
    obuf_free(&c->cout);
    for (size_t i = 0; i < c->n_expected; i++)
        free(c->expected[i]);
    free(c->expected);
    free(c);
}

static void conn_close(struct h2_conn *c, enum h2_end_reason reason, uint32_t code, const char *detail)
{
    if (c->st == C_CLOSED) return;
    /* Streams learn about it first, so their logs carry the reason. */
    c->st = C_CLOSED;
    tl_out_release(c); /* unsent output goes with the conn, as its cout does */
    struct h2_end se = {.reason = reason == H2_END_OK ? H2_END_CONN_CLOSED : reason,
                        .code = code,
                        .detail = detail ? detail : "connection closed"};
    while (c->streams)
        stream_finish(c->streams, &se, NGHTTP2_CANCEL);
    timer_stop(c->loop, &c->hs_timer);
    timer_stop(c->loop, &c->ping_timer);
    if ((c->perr || c->draining) && c->io.fd >= 0) {
        /* A GOAWAY was sent (an error's, or a drain's): keep the socket briefly so that it arrives. A request
         * the peer sent before reading it would otherwise meet a RST, which drops the GOAWAY from the peer's
         * receive queue: the peer would see a reset connection instead of a refused (retryable) stream. */
        loop_io_del(c->loop, &c->io);
        fd_linger(c->loop, c->io.fd, c->set.linger_ms);
        c->io.fd = -1;
    } else {
        loop_io_close(c->loop, &c->io);
    }
    if (c->conn_reserved) h2_mem_release(c->conn_reserved);
    c->conn_reserved = 0;
    struct h2_end ce = {.reason = reason,
                        .code = code,
                        .detail = reason == H2_END_OK ? NULL
                                  : detail            ? detail
                                                      : h2_end_reason_to_str(reason)};
    if (c->ops->on_closed) c->ops->on_closed(c, c->ud, &ce);
    /* nghttp2 may be on the stack (we can be called from its callbacks): free after the batch. */
    loop_defer(c->loop, &c->free_task);
}

static void ping_timer_cb(struct timer *t)
{
    struct h2_conn *c = container_of(t, struct h2_conn, ping_timer);
    if (c->st != C_OPEN) return;
    if (c->ping_wait) {
        conn_close(c, H2_END_PING_TIMEOUT, 0, "ping timeout");
        return;
    }
    nghttp2_submit_ping(c->ng, NGHTTP2_FLAG_NONE, NULL);
    c->ping_wait = true;
    timer_start(c->loop, &c->ping_timer, c->set.ping_timeout_ms);
    conn_schedule_flush(c);
}

static void hs_timer_cb(struct timer *t)
{
    struct h2_conn *c = container_of(t, struct h2_conn, hs_timer);
    if (c->st == C_CONNECTING)
        conn_close(c, H2_END_CONNECT_FAILED, 0, "connect timeout");
    else
        conn_close(c, H2_END_HANDSHAKE_TIMEOUT, 0,
                   c->ssl ? "TLS handshake timeout" : "HTTP/2 preface timeout");
}

/* Submits s's request. Returns the stream id, or a negative nghttp2 error (s untouched). */
static int32_t stream_submit(struct h2_stream *s)
{
    struct h2_conn *c = s->c;
    nghttp2_data_provider prd = {.source.ptr = s, .read_callback = data_read_cb};
    int32_t id = nghttp2_submit_request(c->ng, NULL, s->nva, s->nnv, s->body ? &prd : NULL, s);
    if (id < 0) return id;
    free(s->nva);
    s->nva = NULL;
    s->id = id;
    return id;
}

/* Submits a stream queued behind the handshake; one that cannot be sent ends. */
static void stream_submit_queued(struct h2_stream *s)
{
    int32_t id = stream_submit(s);
    if (id >= 0) return;
    struct h2_end e = {.reason = id == NGHTTP2_ERR_NOMEM ? H2_END_NO_MEMORY : H2_END_REFUSED,
                       .detail = nghttp2_strerror(id)};
    stream_finish(s, &e, NGHTTP2_CANCEL);
}

static int conn_start_h2(struct h2_conn *c)
{
    nghttp2_session_callbacks *cb = make_callbacks();
    nghttp2_option *opt;
    int rv;
    if (!cb) return -ENOMEM;
    if (nghttp2_option_new(&opt) != 0) {
        nghttp2_session_callbacks_del(cb);
        return -ENOMEM;
    }
    /* WINDOW_UPDATE only for bytes the user consumed: end-to-end back-pressure. */
    nghttp2_option_set_no_auto_window_update(opt, 1);
    if (c->set.max_open_streams) nghttp2_option_set_peer_max_concurrent_streams(opt, c->set.max_open_streams);
    /* nghttp2's rapid-reset guard (1000 resets, then 33/s) may be too tight for a pooled connection whose
     * clients simply reset many streams; the settings may raise it (HBONE does). */
    if (c->server && c->set.reset_limit_burst)
        nghttp2_option_set_stream_reset_rate_limit(opt, c->set.reset_limit_burst, c->set.reset_limit_rate);
    if (c->server && c->set.early_reset_burst)
        h2_bucket_init(&c->early_resets, c->set.early_reset_burst, c->set.early_reset_rate,
                       loop_now(c->loop));
    if (c->server)
        rv = nghttp2_session_server_new2(&c->ng, cb, c, opt);
    else
        rv = nghttp2_session_client_new2(&c->ng, cb, c, opt);
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cb);
    if (rv != 0) return -ENOMEM;
    nghttp2_settings_entry ents[5];
    size_t n = 0;
    if (c->server && c->set.max_concurrent_streams)
        ents[n++] =
            (nghttp2_settings_entry){NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, c->set.max_concurrent_streams};
    if (!c->server) ents[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_ENABLE_PUSH, 0};
    ents[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, c->set.stream_window};
    ents[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_MAX_FRAME_SIZE, c->set.max_frame};
    ents[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, c->set.max_header_list};
    if (nghttp2_submit_settings(c->ng, NGHTTP2_FLAG_NONE, ents, n) != 0) return -EINVAL;
    /* The connection window starts at conn_window if the budget allows, else at the protocol's 65 535 bytes
     * (the conn still works, just slower). */
    c->conn_win = H2_DEFAULT_WINDOW;
    conn_grow_window(c, c->set.conn_window);
    return 0;
}

/* Client: does the server's certificate carry one of the expected identities? */
static bool peer_identity_ok(struct h2_conn *c)
{
    if (c->chain_only) return SSL_get0_peer_certificate(c->ssl) && SSL_get_verify_result(c->ssl) == X509_V_OK;
    const char *spiffe[c->n_expected ? c->n_expected : 1], *dns[c->n_expected ? c->n_expected : 1];
    size_t ns = 0, nd = 0;
    for (size_t i = 0; i < c->n_expected; i++) {
        if (strncmp(c->expected[i], "spiffe://", 9) == 0)
            spiffe[ns++] = c->expected[i];
        else
            dns[nd++] = c->expected[i];
    }
    return (ns && tls_peer_has_san(c->ssl, spiffe, ns)) || (nd && tls_peer_has_dns_san(c->ssl, dns, nd));
}

static void conn_handshake_done(struct h2_conn *c)
{
    timer_stop(c->loop, &c->hs_timer);
    if (c->ssl) {
        char err[1200], why[256];
        if (!tls_alpn_is_h2(c->ssl)) {
            conn_close(c, H2_END_NO_ALPN, 0, "peer did not negotiate ALPN h2");
            return;
        }
        if (tls_peer_identity(c->ssl, c->peer_id, sizeof(c->peer_id), why, sizeof(why)) < 0)
            c->peer_id[0] = 0;
        if (!c->server && !peer_identity_ok(c)) {
            const char *exp = c->n_expected ? c->expected[0] : "";
            /* A refused certificate has no identity to show: say why it was refused instead. */
            if (c->peer_id[0])
                snprintf(err, sizeof(err), "identity verification error: peer is \"%s\", expected \"%s\"",
                         c->peer_id, exp);
            else if (c->n_expected && strncmp(exp, "spiffe://", 9) != 0)
                snprintf(err, sizeof(err),
                         "identity verification error: no DNS SAN of the peer certificate matches, expected "
                         "\"%s\"",
                         exp);
            else
                snprintf(err, sizeof(err),
                         "identity verification error: peer certificate refused (%s), expected \"%s\"", why,
                         exp);
            conn_close(c, H2_END_IDENTITY, 0, err);
            return;
        }
        /* Application records from here on are ours (src/tls/record.c); OpenSSL's path stays for what it
         * cannot hand over (TLS 1.2 on a control-plane connection, tickets sent by an OpenSSL server). */
        if (!(c->rec = tls_rec_new(c->ssl, why, sizeof(why))))
            LOG_D(c->set.log_name, "TLS records through OpenSSL: %s", why);
        atomic_fetch_add_explicit(&tls_conns[c->rec != NULL], 1, memory_order_relaxed);
    }
    if (conn_start_h2(c) < 0) {
        conn_close(c, H2_END_NO_MEMORY, 0, "cannot start HTTP/2 session");
        return;
    }
    c->st = C_OPEN;
    c->established = true;
    if (c->set.ping_interval_ms) timer_start(c->loop, &c->ping_timer, c->set.ping_interval_ms);
    /* Streams opened during the handshake, oldest first (the list is newest-first). */
    struct h2_stream *s = c->streams;
    while (s && s->next)
        s = s->next;
    for (struct h2_stream *prev; s && c->st == C_OPEN; s = prev) {
        prev = s->prev;
        if (s->id == 0 && !s->done) stream_submit_queued(s);
    }
    if (c->ops->on_ready && c->st == C_OPEN) c->ops->on_ready(c, c->ud);
    conn_schedule_flush(c);
}

static void conn_handshake(struct h2_conn *c)
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
            conn_close(c, H2_END_PEER_CLOSED, 0, "connection closed during TLS handshake");
        }
        return;
    }
    snprintf(err, sizeof(err), "TLS handshake failed: %s", tls_errstr(e2, sizeof(e2)));
    conn_write_out(c); /* send the alert */
    conn_close(c, H2_END_HANDSHAKE_FAILED, 0, err);
}

/* nghttp2 refused the input for good (a flood guard, too many CONTINUATIONs, bad preface, or one of our
 * callbacks failed). A peer's fault gets a GOAWAY with the matching code, flushed before the close; the
 * session still serializes frames after such an error. Returns 0, or -1 when the conn was closed. */
static int conn_fatal(struct h2_conn *c, int rv)
{
    enum h2_proto_err e;
    uint32_t code;
    switch (rv) {
    case NGHTTP2_ERR_FLOODED:
        e = H2_PERR_FLOOD;
        code = NGHTTP2_ENHANCE_YOUR_CALM;
        break;
    case NGHTTP2_ERR_TOO_MANY_CONTINUATIONS:
        e = H2_PERR_CONTINUATION;
        code = NGHTTP2_ENHANCE_YOUR_CALM;
        break;
    case NGHTTP2_ERR_BAD_CLIENT_MAGIC:
        e = H2_PERR_PROTOCOL;
        code = NGHTTP2_PROTOCOL_ERROR;
        break;
    default: /* ours (out of memory in a callback): nothing the peer did */
        conn_close(c,
                   rv == NGHTTP2_ERR_NOMEM || rv == NGHTTP2_ERR_CALLBACK_FAILURE ? H2_END_NO_MEMORY
                                                                                 : H2_END_PROTOCOL,
                   0, nghttp2_strerror(rv));
        return -1;
    }
    conn_abort(c, e, code, nghttp2_strerror(rv));
    conn_flush(c);
    return c->st == C_CLOSED ? -1 : 0;
}

/* Feeds plaintext to nghttp2. Returns 0, or -1 when the conn was closed. */
static int conn_feed(struct h2_conn *c, const uint8_t *p, size_t n)
{
    /* After a protocol error the GOAWAY is on its way: what the peer sends meanwhile is dropped. */
    if (!n || c->perr) return 0;
    ssize_t rv = nghttp2_session_mem_recv(c->ng, p, n);
    if (c->st == C_CLOSED) return -1;
    if (rv < 0 && conn_fatal(c, (int)rv) < 0) return -1;
    return 0;
}

/* The peer closed its side: a clean end without streams, else the streams' reason. */
static void conn_peer_closed(struct h2_conn *c)
{
    if (!c->n_streams)
        conn_close(c, H2_END_OK, 0, NULL);
    else if (c->goaway_recv && c->goaway_code != NGHTTP2_NO_ERROR)
        conn_close(c, H2_END_PROTOCOL, c->goaway_code, "connection closed by peer");
    else
        conn_close(c, H2_END_PEER_CLOSED, 0, "connection closed by peer");
}

/* conn_decrypt with our own records. */
static int conn_open_records(struct h2_conn *c)
{
    char err[200];
    while (c->cin_len) {
        size_t olen, used;
        uint8_t alert;
        enum tls_rec_status st = tls_rec_open(c->rec, c->cin, c->cin_len, tl_plain, PLAIN_CAP, &olen, &used,
                                              &alert, err, sizeof(err));
        c->cin += used;
        c->cin_len -= used;
        if (conn_feed(c, tl_plain, olen) < 0) return -1;
        if (st == TLS_REC_CLOSED) {
            c->cin_len = 0;
            conn_peer_closed(c);
            return -1;
        }
        if (st == TLS_REC_ERROR) {
            uint8_t a[TLS_REC_OVERHEAD + 2];
            ssize_t k = alert ? tls_rec_seal_alert(c->rec, alert, a) : -1;
            if (k > 0 && out_append(c, a, (size_t)k) == 0) conn_write_out(c);
            c->cin_len = 0;
            char detail[240];
            snprintf(detail, sizeof(detail), "%s%s",
                     strncmp(err, "TLS ", 4) == 0 ? "" : "TLS record error: ", err);
            conn_close(c, H2_END_IO, 0, detail);
            return -1;
        }
    }
    /* The peer asked for our KeyUpdate: it goes before anything else we send. */
    size_t need = tls_rec_pending(c->rec);
    if (need) {
        struct obuf *b = out_target(c);
        uint8_t *w = obuf_reserve(b, need);
        ssize_t k = w ? tls_rec_seal_pending(c->rec, w) : -1;
        if (k < 0) {
            conn_close(c, H2_END_IO, 0, "TLS KeyUpdate failed");
            return -1;
        }
        out_commit(c, b, (size_t)k);
        conn_schedule_flush(c);
    }
    return 0;
}

/* Decrypts everything available and feeds it to nghttp2. Returns 0, or -1 when the conn was closed. */
static int conn_decrypt(struct h2_conn *c)
{
    char e2[200];
    if (c->rec) return conn_open_records(c);
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
        if (conn_feed(c, tl_plain, plen) < 0) return -1;
        if (drained) return 0; /* conn_read notices EOF (c->eof) itself */
        if (!err) continue;
        if (err == SSL_ERROR_WANT_READ) return 0;
        if (err == SSL_ERROR_ZERO_RETURN || c->eof) {
            ERR_clear_error();
            conn_peer_closed(c);
            return -1;
        }
        conn_close(c, H2_END_IO, 0, tls_errstr(e2, sizeof(e2)));
        return -1;
    }
}

/* The fd is edge-triggered: read until the socket is empty (a short read), or, after a fair share, continue
 * from a task so other connections get their turn. */
static void conn_read(struct h2_conn *c)
{
    for (int iter = 0;; iter++) {
        if (iter == READS_PER_EVENT) {
            loop_defer(c->loop, &c->read_task);
            break;
        }
        ssize_t n = recv(c->io.fd, tl_cin, CIN_CAP, 0);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            conn_close(c, H2_END_IO, 0, strerror(errno));
            return;
        }
        if (n == 0) c->eof = true;
        if (!c->ssl) {
            /* h2c: the server's "handshake" ends with the first bytes (the preface, checked by nghttp2). */
            if (c->st == C_HANDSHAKE) {
                if (c->eof) {
                    conn_close(c, H2_END_HANDSHAKE_FAILED, 0, "connection closed before the HTTP/2 preface");
                    return;
                }
                conn_handshake_done(c);
                if (c->st != C_OPEN) return;
            }
            if (conn_feed(c, tl_cin, (size_t)n) < 0) return;
        } else {
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
        }
        if (c->eof) {
            conn_peer_closed(c);
            return;
        }
        if ((size_t)n < CIN_CAP && !c->rdhup) break;
    }
    c->cin_len = 0;
    conn_schedule_flush(c);
}

static void conn_read_task_cb(struct task *t)
{
    struct h2_conn *c = container_of(t, struct h2_conn, read_task);
    if (c->st == C_HANDSHAKE || c->st == C_OPEN) conn_read(c);
}

static void conn_io_cb(struct io *io, uint32_t ev)
{
    struct h2_conn *c = container_of(io, struct h2_conn, io);
    if (c->st == C_CONNECTING) {
        int soerr = 0;
        socklen_t sl = sizeof(soerr);
        if (getsockopt(c->io.fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0) soerr = errno;
        if (soerr) {
            char err[128];
            snprintf(err, sizeof(err), "connect: %s", strerror(soerr));
            conn_close(c, H2_END_CONNECT_FAILED, 0, err);
            return;
        }
        if (!(ev & EPOLLOUT)) return;
        c->st = C_HANDSHAKE;
        if (c->ssl)
            conn_handshake(c);
        else
            conn_handshake_done(c); /* h2c with prior knowledge: the preface goes out at once */
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

/* Zero fields take the protocol's defaults (see struct h2_settings), so a caller sets only what it means. */
static void settings_defaults(struct h2_settings *s)
{
    if (!s->log_name) s->log_name = "h2";
    if (!s->stream_window) s->stream_window = H2_DEFAULT_WINDOW;
    if (s->stream_window_max < s->stream_window) s->stream_window_max = s->stream_window;
    if (!s->conn_window) s->conn_window = H2_DEFAULT_WINDOW;
    if (s->conn_window_max < s->conn_window) s->conn_window_max = s->conn_window;
    if (!s->max_frame) s->max_frame = 16384;
    if (!s->max_header_list) s->max_header_list = H2_DEFAULT_HEADER_BYTES;
    if (!s->max_headers) s->max_headers = H2_DEFAULT_HEADERS;
    if (!s->max_header_bytes) s->max_header_bytes = H2_DEFAULT_HEADER_BYTES;
    if (s->ping_interval_ms && !s->ping_timeout_ms) s->ping_timeout_ms = 2 * s->ping_interval_ms;
    if (!s->linger_ms) s->linger_ms = H2_DEFAULT_LINGER_MS;
}

static struct h2_conn *conn_new(struct loop *l, int fd, SSL_CTX *ctx, bool server,
                                const struct h2_settings *set, const struct h2_conn_ops *ops, void *ud)
{
    pthread_once(&bio_once, bio_init_once);
    struct h2_conn *c = calloc(1, sizeof(*c));
    if (!c || thread_bufs() < 0 || !bio_meth) goto fail;
    c->loop = l;
    c->server = server;
    c->set = *set;
    settings_defaults(&c->set);
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
    if (!ctx) return c;
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
static struct h2_conn *conn_start(struct h2_conn *c, enum conn_state st)
{
    c->st = st;
    if (c->set.handshake_timeout_ms) timer_start(c->loop, &c->hs_timer, c->set.handshake_timeout_ms);
    if (loop_io_add(c->loop, &c->io, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET) < 0) {
        c->st = C_CLOSED;
        close(c->io.fd);
        timer_stop(c->loop, &c->hs_timer);
        loop_defer(c->loop, &c->free_task);
        return NULL;
    }
    return c;
}

struct h2_conn *h2_client_new(struct loop *l, int fd, SSL_CTX *ctx, const struct h2_peer *peer,
                              const struct h2_settings *set, const struct h2_conn_ops *ops, void *ud)
{
    struct h2_conn *c = conn_new(l, fd, ctx, false, set, ops, ud);
    if (!c) return NULL;
    size_t n = ctx && peer ? peer->n_expected : 0;
    c->chain_only = ctx && peer && peer->chain_only && !n;
    c->expected = calloc(n ? n : 1, sizeof(char *));
    for (size_t i = 0; c->expected && i < n; i++)
        if ((c->expected[c->n_expected] = strdup(peer->expected[i]))) c->n_expected++;
    /* A short list would accept what the caller did not mean to: fail closed instead. */
    if (!c->expected || c->n_expected != n) {
        conn_free_cb(&c->free_task);
        close(fd);
        return NULL;
    }
    return conn_start(c, C_CONNECTING);
}

struct h2_conn *h2_server_new(struct loop *l, int fd, SSL_CTX *ctx, const struct h2_settings *set,
                              const struct h2_conn_ops *ops, void *ud)
{
    if (!ops->on_stream || !ops->on_request) {
        LOG_E(set->log_name ? set->log_name : "h2", "HTTP/2 server without on_stream/on_request");
        close(fd);
        return NULL;
    }
    struct h2_conn *c = conn_new(l, fd, ctx, true, set, ops, ud);
    return c ? conn_start(c, C_HANDSHAKE) : NULL;
}

unsigned h2_conn_max_streams(const struct h2_conn *c)
{
    unsigned max = c->set.max_open_streams ? c->set.max_open_streams : UINT32_MAX;
    if (c->ng) {
        uint32_t peer = nghttp2_session_get_remote_settings(c->ng, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
        if (peer < max) max = peer;
    }
    return max;
}

bool h2_conn_usable(const struct h2_conn *c)
{
    return c->st != C_CLOSED && !c->draining && !c->goaway_recv && c->n_streams < h2_conn_max_streams(c);
}

bool h2_conn_ready(const struct h2_conn *c)
{
    return c->st == C_OPEN;
}

bool h2_conn_established(const struct h2_conn *c)
{
    return c->established;
}

unsigned h2_conn_streams(const struct h2_conn *c)
{
    return c->n_streams;
}

const char *h2_conn_peer_id(const struct h2_conn *c)
{
    return c->peer_id;
}

void *h2_conn_ud(const struct h2_conn *c)
{
    return c->ud;
}

struct loop *h2_conn_loop(const struct h2_conn *c)
{
    return c->loop;
}

void h2_conn_drain(struct h2_conn *c)
{
    if (c->st == C_CLOSED || c->draining) return;
    c->draining = true;
    if (c->st != C_OPEN) {
        if (!c->n_streams) conn_close(c, H2_END_OK, 0, NULL);
        return;
    }
    nghttp2_submit_goaway(c->ng, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(c->ng),
                          NGHTTP2_NO_ERROR, NULL, 0);
    conn_schedule_flush(c);
}

void h2_conn_close(struct h2_conn *c, enum h2_end_reason reason, const char *detail)
{
    conn_close(c, reason, 0, detail);
}

struct h2_stream *h2_stream_open(struct h2_conn *c, const struct h2_header *headers, size_t n, unsigned flags,
                                 const struct h2_stream_ops *ops, void *ud)
{
    if (c->server || !h2_conn_usable(c)) return NULL;
    struct h2_stream *s = stream_new(c);
    if (!s) return NULL;
    s->nva = nv_block(NULL, NULL, headers, n, &s->nnv);
    if (!s->nva) {
        free(s);
        return NULL;
    }
    s->body = flags & H2_BODY;
    s->ops = ops;
    s->ud = ud;
    stream_link(c, s);
    if (c->st == C_OPEN) {
        /* Refused now (e.g. stream ids exhausted): the caller hears it from the NULL, not from on_end. */
        if (stream_submit(s) < 0) {
            stream_unlink(s);
            stream_free_cb(&s->free_task);
            return NULL;
        }
        conn_schedule_flush(c);
    }
    return s;
}

void h2_stream_set_ops(struct h2_stream *s, const struct h2_stream_ops *ops, void *ud)
{
    s->ops = ops;
    s->ud = ud;
}

int h2_stream_respond(struct h2_stream *s, int status, const struct h2_header *headers, size_t n,
                      unsigned flags)
{
    struct h2_conn *c = s->c;
    char st[12];
    size_t m;
    if (!c->server) return -EINVAL;
    request_answered(s);
    if (s->done || c->st != C_OPEN) return -EPIPE;
    if (s->responded) return -EINVAL;
    snprintf(st, sizeof(st), "%d", status);
    nghttp2_nv *nva = nv_block(":status", st, headers, n, &m);
    if (!nva) return -ENOMEM;
    s->status = status;
    s->responded = true;
    s->body = flags & H2_BODY;
    nghttp2_data_provider prd = {.source.ptr = s, .read_callback = data_read_cb};
    int rv = nghttp2_submit_response(c->ng, s->id, nva, m, s->body ? &prd : NULL);
    free(nva);
    conn_schedule_flush(c);
    return rv == 0 ? 0 : rv == NGHTTP2_ERR_NOMEM ? -ENOMEM : -EPIPE;
}

int h2_stream_trailers(struct h2_stream *s, const struct h2_header *headers, size_t n)
{
    if (s->done || s->c->st == C_CLOSED) return -EPIPE;
    if (!s->body || s->trailers) return -EINVAL;
    s->trailers = nv_block(NULL, NULL, headers, n, &s->ntrailers);
    return s->trailers ? 0 : -ENOMEM;
}

void h2_stream_reset_when_done(struct h2_stream *s)
{
    s->rst_when_done = true;
}

void h2_stream_resume(struct h2_stream *s)
{
    struct h2_conn *c = s->c;
    if (s->done || c->st != C_OPEN) return;
    if (s->deferred && s->id > 0) {
        s->deferred = false;
        nghttp2_session_resume_data(c->ng, s->id);
    }
    conn_schedule_flush(c);
}

void h2_stream_consume(struct h2_stream *s, size_t n)
{
    struct h2_conn *c = s->c;
    if (n > s->held) n = s->held;
    s->held -= n;
    if (c->st != C_OPEN || !n || s->done) return;
    nghttp2_session_consume(c->ng, s->id, n);
    s->drained += n;
    if (s->drained >= s->win) stream_grow_window(s);
    conn_schedule_flush(c);
}

void h2_stream_end(struct h2_stream *s, enum h2_end_reason reason, uint32_t rst_code, const char *detail)
{
    struct h2_end e = {.reason = reason, .code = rst_code, .detail = detail};
    stream_finish(s, &e, rst_code);
}

void *h2_stream_user(const struct h2_stream *s)
{
    return s->c->set.stream_user_size ? (void *)s->user : NULL;
}

struct h2_conn *h2_stream_conn(const struct h2_stream *s)
{
    return s->c;
}

int32_t h2_stream_id(const struct h2_stream *s)
{
    return s->id;
}

int h2_stream_status(const struct h2_stream *s)
{
    return s->status;
}

bool h2_stream_ended(const struct h2_stream *s)
{
    return s->done;
}
