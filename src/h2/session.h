/* The HTTP/2 session: one connection over a transport, both roles, and its streams. HBONE (h2/hbone.h),
 * gRPC and h2c are adapters on it; the session knows nothing of CONNECT.
 *
 * Transport: TLS over our own buffers (a custom BIO: ciphertext leaves in large writes, frames are coalesced
 * into full TLS records), or plain TCP (h2c with prior knowledge: no TLS, no upgrade). The session owns the
 * connection's fd, its flush (one send() per batch), PING keepalive, handshake timeout, GOAWAY and drain,
 * receive windows (auto-tuned within the memory budget of h2/budget.h), the rapid-reset budget, the bounded
 * delivery of requests, header limits, protocol-error reporting and linger, and every lifetime (objects are
 * freed from deferred tasks: nghttp2 may be on the stack).
 *
 * Streams carry request headers (any method), response headers, a body in both directions and trailers:
 * - receive: DATA goes to the stream's on_data; the peer's window is credited only when the user says the
 *   bytes are disposed of (h2_stream_consume), so a user that does not consume stops the peer at the window;
 * - send: the user offers contiguous bytes through ops->pull; they are framed without a copy into nghttp2
 *   (NGHTTP2_DATA_FLAG_NO_COPY) and copied once into the TLS record; ops->sent says how many were taken. A
 *   pull with nothing to offer parks the stream until h2_stream_resume.
 *
 * All functions run on the loop's thread. Strings handed to callbacks are valid during the call only. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <openssl/ssl.h>

#include "core/loop.h"

struct h2_conn;
struct h2_stream;

struct h2_header {
    const char *name, *value;
};

/* Why a stream or a connection ended. Typed, so callers pick status codes and flags with a switch; the
 * detail string of struct h2_end is for logs only. */
enum h2_end_reason {
    H2_END_OK = 0,            /* clean end (both sides ended the stream; the connection closed cleanly) */
    H2_END_CONNECT_FAILED,    /* the connection's TCP connect failed or timed out */
    H2_END_HANDSHAKE_FAILED,  /* the TLS handshake failed, or the peer closed during it */
    H2_END_HANDSHAKE_TIMEOUT, /* the TLS handshake (h2c: the client preface) did not end in time */
    H2_END_IDENTITY,          /* client: the server's certificate is not one of the expected identities */
    H2_END_NO_ALPN,           /* TLS: the peer did not negotiate ALPN "h2" */
    H2_END_PING_TIMEOUT,      /* no PING ACK within ping_timeout_ms */
    H2_END_PEER_CLOSED,       /* the peer closed the connection (EOF, close_notify) while streams were open */
    H2_END_IO,                /* a socket or TLS record error */
    H2_END_PROTOCOL,      /* an HTTP/2 protocol error, ours to report (GOAWAY sent) or the peer's GOAWAY */
    H2_END_RESET_BY_PEER, /* RST_STREAM from the peer; h2_end.code holds its error code */
    H2_END_REFUSED,       /* not processed by the peer (REFUSED_STREAM, above its GOAWAY's last stream, or
                           * refused while draining): safe to retry on another connection */
    H2_END_REJECTED,      /* an adapter ended the stream for the peer's answer (e.g. a non-200 to CONNECT) */
    H2_END_LOCAL,         /* we ended it (h2_stream_end, h2_conn_close by the user) */
    H2_END_CONN_CLOSED,   /* the connection closed under the stream without an error of its own */
    H2_END_NO_MEMORY,     /* an allocation failed */
    H2_END_REASON_COUNT
};
/* The reason's name for logs ("ok", "handshake_failed", ...); static string. */
const char *h2_end_reason_to_str(enum h2_end_reason r);

/* The end of a stream (on_end) or of a connection (on_closed). */
struct h2_end {
    enum h2_end_reason reason;
    uint32_t code;      /* H2_END_RESET_BY_PEER, H2_END_REFUSED, H2_END_PROTOCOL: the HTTP/2 error code */
    const char *detail; /* for logs: NULL for H2_END_OK, else never NULL; valid during the callback */
    /* Server streams: the peer reset the stream before any response was sent (the request is abandoned;
     * charged to the connection's early-reset budget). Callers aggregate these in their logs. */
    bool reset_early;
};

/* Per-connection settings, copied at creation. hbone.h has HBONE's (Istio's values); gRPC has its own. A zero
 * field takes a default: windows 65 535 (the max fields: their init value), max_frame 16 384, header limits
 * 64 headers and 64 KiB, ping_timeout_ms twice the interval, linger 1 s, log_name "h2"; and 0 means "none"
 * for max_concurrent_streams (not advertised), max_open_streams and max_unanswered (no limit of ours),
 * ping_interval_ms (no keepalive), handshake_timeout_ms (no timeout), early_reset_burst (no budget) and
 * reset_limit_burst (nghttp2's default). */
struct h2_settings {
    const char *log_name;            /* log module of this connection's lines ("hbone"); static string */
    uint32_t max_concurrent_streams; /* server: SETTINGS_MAX_CONCURRENT_STREAMS advertised (0: not sent) */
    uint32_t max_open_streams;       /* client: streams open at once at most (0: no limit of ours), also
                                      * capped by the peer's SETTINGS (h2_conn_max_streams) */
    /* Receive windows. SETTINGS_INITIAL_WINDOW_SIZE advertises stream_window; each time a stream has drained
     * a whole window while no more than a quarter of it waited unconsumed, its window doubles up to
     * stream_window_max and the connection window (starting at conn_window) grows by as much up to
     * conn_window_max. Growth beyond the protocol's 65 535 bytes is reserved from h2/budget.h. Equal init and
     * max values turn auto-tuning off. */
    uint32_t stream_window, stream_window_max;
    uint32_t conn_window, conn_window_max;
    uint32_t max_frame;       /* SETTINGS_MAX_FRAME_SIZE advertised */
    uint32_t max_header_list; /* SETTINGS_MAX_HEADER_LIST_SIZE advertised */
    /* A received header block (request, response or trailers) over max_headers regular headers or
     * max_header_bytes (names + values) is refused: a request gets 431, a response or trailers reset the
     * stream (H2_END_PROTOCOL). */
    uint32_t max_headers, max_header_bytes;
    uint32_t ping_interval_ms, ping_timeout_ms; /* PING after interval of quiet, the conn ends without an ACK
                                                 * within timeout; interval 0: no keepalive */
    uint32_t handshake_timeout_ms;              /* TCP connect + TLS handshake (h2c: until the preface) */
    /* Server: requests handed to on_request and not yet answered (h2_stream_respond or end) at most; later
     * ones wait in arrival order (bounded by max_concurrent_streams). 0: no limit. */
    uint32_t max_unanswered;
    /* Server: streams the peer resets before their response: a burst, refilled per second; when spent the
     * connection ends with GOAWAY(ENHANCE_YOUR_CALM). burst 0: no budget. */
    uint32_t early_reset_burst, early_reset_rate;
    /* Server: nghttp2's own RST_STREAM rate limit (burst, per second); 0: nghttp2's default. */
    uint32_t reset_limit_burst, reset_limit_rate;
    uint32_t linger_ms;      /* after an error GOAWAY, keep the socket reading and discarding this long */
    size_t stream_user_size; /* bytes of user state allocated (zeroed) with each stream: h2_stream_user */
};

/* How a client checks the server's certificate (TLS only). Each expected entry is either a SPIFFE id
 * ("spiffe://..."), matched against the leaf's one URI SAN with tls_peer_has_san's rule, or a DNS name,
 * matched against the leaf's DNS SANs (tls_peer_has_dns_san). The server passes when it matches any entry.
 * chain_only skips the identity check (the chain is still verified against the context's roots): for tests
 * and peers known by their CA only; expected must then be empty. Neither: the handshake fails closed. */
struct h2_peer {
    const char *const *expected;
    size_t n_expected;
    bool chain_only;
};

/* A received request (server). Pseudo-headers are "" when absent. */
struct h2_request {
    const char *method, *scheme, *authority, *path;
    const struct h2_header *headers; /* regular headers, lower-case names */
    size_t n_headers;
    bool end_stream; /* the request has no body */
};

enum h2_headers_kind {
    H2_HEADERS_RESPONSE, /* client: the final response (1xx responses are not delivered) */
    H2_HEADERS_TRAILERS, /* both roles: the header block after the body */
};

/* A received header block other than a request. */
struct h2_headers {
    enum h2_headers_kind kind;
    int status;                      /* H2_HEADERS_RESPONSE: :status */
    const struct h2_header *headers; /* regular headers, lower-case names */
    size_t n_headers;
    bool end_stream; /* the peer's side ends with this block */
};

struct h2_conn_ops {
    /* The handshake completed: TLS done, ALPN h2 and (client) the server's identity verified; h2c: connected
     * (client) or the first bytes arrived (server). Streams opened earlier are now being sent. Optional. */
    void (*on_ready)(struct h2_conn *c, void *ud);
    /* The connection is gone. Every stream got its on_end before this. c is freed right after the call. */
    void (*on_closed)(struct h2_conn *c, void *ud, const struct h2_end *e);
    /* Server (required): the peer opened s. Set its callbacks now (h2_stream_set_ops) and initialize its user
     * area: DATA may arrive before its request is handed over. */
    void (*on_stream)(struct h2_conn *c, void *ud, struct h2_stream *s);
    /* Server (required): a complete request header block. The callee answers with h2_stream_respond (now or
     * later) or ends the stream, unless it ends first (on_end). At most max_unanswered at a time; a stream
     * reset in the same batch of input never gets here. */
    void (*on_request)(struct h2_stream *s, void *ud, const struct h2_request *req);
};

struct h2_stream_ops {
    /* A response (client) or trailers (both). Optional. */
    void (*on_headers)(struct h2_stream *s, void *ud, const struct h2_headers *h);
    /* A DATA payload, valid during the call. The user disposes of the bytes (copies or writes them) and calls
     * h2_stream_consume for them, now or later; only then is the peer's window credited. Optional: without
     * it DATA is consumed and dropped. */
    void (*on_data)(struct h2_stream *s, void *ud, const uint8_t *data, size_t len);
    /* The peer ended its side (END_STREAM), after its last on_data and trailers. Optional. */
    void (*on_eof)(struct h2_stream *s, void *ud);
    /* Send (streams opened or answered with H2_BODY): returns the number of body bytes available now at
     * *data, contiguous; sets *eof when the body ends after them (trailers set with h2_stream_trailers
     * follow). Returning 0 without eof parks the stream until h2_stream_resume. It may be called again before
     * ops->sent: it must offer the same bytes first until they are taken. */
    size_t (*pull)(struct h2_stream *s, void *ud, const uint8_t **data, bool *eof);
    /* Send: the first n bytes offered by pull were written out; the user may drop them. */
    void (*sent)(struct h2_stream *s, void *ud, size_t n);
    /* HTTP/2 is done with the stream (both sides ended, or a reset); nothing more is sent or delivered. With
     * this op the user ends the stream with h2_stream_end when it is done (the stream and its user area live
     * until then; a connection close ends it anyway); without it the stream ends at once with e. Optional. */
    void (*on_close)(struct h2_stream *s, void *ud, const struct h2_end *e);
    /* The stream ended; s and its user area are freed after the call (not during it). */
    void (*on_end)(struct h2_stream *s, void *ud, const struct h2_end *e);
};

/* Flags of h2_stream_open / h2_stream_respond. */
#define H2_BODY 1u /* a body follows, pulled through ops->pull; without it the HEADERS carry END_STREAM */

/* Starts the client role on fd (connecting or connected, non-blocking; ownership passes to the conn). ctx:
 * TLS client context (borrowed, must outlive the conn), or NULL for h2c with prior knowledge (peer ignored).
 * peer is copied. Returns NULL on allocation failure (fd closed). */
struct h2_conn *h2_client_new(struct loop *l, int fd, SSL_CTX *ctx, const struct h2_peer *peer,
                              const struct h2_settings *set, const struct h2_conn_ops *ops, void *ud);
/* Starts the server role on an accepted fd (ownership passes to the conn); ctx NULL: h2c. */
struct h2_conn *h2_server_new(struct loop *l, int fd, SSL_CTX *ctx, const struct h2_settings *set,
                              const struct h2_conn_ops *ops, void *ud);

/* True when a new stream may be opened now or queued until the handshake ends. */
bool h2_conn_usable(const struct h2_conn *c);
/* True once the handshake succeeded and until the conn closes. */
bool h2_conn_ready(const struct h2_conn *c);
/* True when the handshake succeeded at some point (still true after close). */
bool h2_conn_established(const struct h2_conn *c);
/* Open streams (including ones queued during the handshake). */
unsigned h2_conn_streams(const struct h2_conn *c);
/* The streams this connection allows at once: max_open_streams capped by the peer's SETTINGS. */
unsigned h2_conn_max_streams(const struct h2_conn *c);
/* The peer's SPIFFE id (its one URI SAN), "" before the handshake, for h2c, or if none. */
const char *h2_conn_peer_id(const struct h2_conn *c);
/* The conn's user data. */
void *h2_conn_ud(const struct h2_conn *c);
struct loop *h2_conn_loop(const struct h2_conn *c);
/* Stops taking new streams and sends GOAWAY; the conn closes when its streams end. */
void h2_conn_drain(struct h2_conn *c);
/* Closes now: every stream ends with (reason, detail), then on_closed. detail may be NULL. */
void h2_conn_close(struct h2_conn *c, enum h2_end_reason reason, const char *detail);

/* Client: opens a stream. headers are the request's, pseudo-headers first (":method", ":scheme",
 * ":authority", ":path" as the method needs; CONNECT has only ":method" and ":authority"), copied. Flags:
 * H2_BODY. The stream's user area (stream_user_size bytes, zeroed) is h2_stream_user. Returns NULL when the
 * conn cannot take a stream or on allocation failure. */
struct h2_stream *h2_stream_open(struct h2_conn *c, const struct h2_header *headers, size_t n, unsigned flags,
                                 const struct h2_stream_ops *ops, void *ud);
/* Sets the callbacks of s. */
void h2_stream_set_ops(struct h2_stream *s, const struct h2_stream_ops *ops, void *ud);
/* Server: answers the request with status and headers (copied). Flags: H2_BODY (else the response ends the
 * stream, and a peer still sending is told to stop with RST_STREAM NO_ERROR; a gRPC trailers-only response is
 * such a response). Returns 0, -EINVAL when s was answered already or is a client stream, -EPIPE when the
 * stream or conn is gone, -ENOMEM. */
int h2_stream_respond(struct h2_stream *s, int status, const struct h2_header *headers, size_t n,
                      unsigned flags);
/* Sends trailers (copied) after the body, when pull reports its end: call it once the stream has a body
 * (h2_stream_open or h2_stream_respond with H2_BODY) and before pull reports eof (e.g. set them, then report
 * eof and h2_stream_resume). Returns 0, -EINVAL without a body or when trailers were set already, -EPIPE
 * when the stream is gone, -ENOMEM. */
int h2_stream_trailers(struct h2_stream *s, const struct h2_header *headers, size_t n);
/* Server: once the response has ended (END_STREAM sent, after the trailers if any), reset the stream with
 * NO_ERROR if the peer is still sending (RFC 9113 §8.1; gRPC's "Early Server Closure"): for protocols whose
 * exchange is over with the response. Without it only a response without a body does so, and a body's
 * END_STREAM is a half-close (HBONE). */
void h2_stream_reset_when_done(struct h2_stream *s);
/* Send: pull has bytes (or the end) again after returning none. */
void h2_stream_resume(struct h2_stream *s);
/* Receive: n bytes handed to on_data were disposed of: credits the peer's window. */
void h2_stream_consume(struct h2_stream *s, size_t n);
/* Ends the stream now: if HTTP/2 still has it open it is reset with rst_code (e.g. NGHTTP2_CANCEL); on_end
 * runs with (reason, detail). No-op when it ended already. */
void h2_stream_end(struct h2_stream *s, enum h2_end_reason reason, uint32_t rst_code, const char *detail);
/* The stream's user area (h2_settings.stream_user_size bytes), or NULL when that size is 0. */
void *h2_stream_user(const struct h2_stream *s);
struct h2_conn *h2_stream_conn(const struct h2_stream *s);
/* HTTP/2 stream id, 0 while queued behind the handshake. */
int32_t h2_stream_id(const struct h2_stream *s);
/* The response status sent (server) or received (client), 0 before. */
int h2_stream_status(const struct h2_stream *s);
/* True when the stream has ended (on_end ran or is running). */
bool h2_stream_ended(const struct h2_stream *s);

/* Why a connection or request was refused for what the peer sent. Counted per reason (h2_proto_errors) and
 * logged (rate-limited) with the peer's address and identity. */
enum h2_proto_err {
    H2_PERR_FLOOD,             /* nghttp2's flood guard: too many PING/SETTINGS/RST_STREAM to answer */
    H2_PERR_CONTINUATION,      /* too many CONTINUATION frames for one header block */
    H2_PERR_EARLY_RESETS,      /* the early-reset budget is spent (GOAWAY ENHANCE_YOUR_CALM) */
    H2_PERR_PROTOCOL,          /* any other connection error nghttp2 found (GOAWAY with its code) */
    H2_PERR_HEADERS_TOO_LARGE, /* a request over max_headers or max_header_bytes (431, the conn stays) */
    H2_PERR_COUNT
};
/* The reason's metric label ("flood", "continuation_flood", ...); static string. */
const char *h2_proto_err_to_str(enum h2_proto_err e);
/* Process-wide count for e since start, all sessions. Thread-safe. */
uint64_t h2_proto_errors(enum h2_proto_err e);
/* Process-wide count of streams reset by the peer before their response. Thread-safe. */
uint64_t h2_early_resets(void);
/* Process-wide count of TLS connections whose handshake completed, by who seals and opens their application
 * records: zmesh's record layer (own, src/tls/record.h) or OpenSSL's SSL_read/SSL_write. Thread-safe. */
uint64_t h2_tls_conns(bool own);
