/* HBONE: HTTP/2 CONNECT tunnels over mutual TLS, both roles; an adapter on the generic HTTP/2 session
 * (h2/session.h).
 *
 * An hbone_conn is one TLS+HTTP/2 session (h2_conn) with HBONE's settings (Istio's values, see below); an
 * hbone_stream is one CONNECT tunnel on it, bridged to a TCP socket, whose state lives in the user area of
 * its h2_stream (one allocation per stream). The adapter owns the byte relay in both directions with
 * end-to-end back-pressure: HTTP/2 windows are consumed only when bytes reach the TCP socket, and a TCP
 * socket is read only while its stream has room; DATA leaves without a copy from the stream's "up" buffer,
 * and received DATA is send() straight to the socket, only what it refuses is buffered. Streams and
 * connections end with a typed reason (enum h2_end_reason) and a detail text for logs. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <openssl/ssl.h>

#include "core/loop.h"
#include "h2/session.h"

struct hbone_conn;
struct hbone_stream;

/* A header (name, value) is the session's. */
#define hbone_header h2_header

/* A received CONNECT request (server role). Strings are NUL-terminated and valid during on_request only. */
struct hbone_request {
    const char *method;
    const char *authority;
    const struct hbone_header *headers; /* regular headers, lower-case names */
    size_t n_headers;
};

/* The end of a stream, passed to on_done. status is the HTTP status sent or received (0 if none). */
struct hbone_result {
    int status;
    uint64_t bytes_to_h2;      /* read from the TCP side, sent as DATA */
    uint64_t bytes_to_tcp;     /* received as DATA, written to the TCP side */
    enum h2_end_reason reason; /* H2_END_OK on a clean end; what callers switch on */
    uint32_t code;             /* the HTTP/2 error code for H2_END_RESET_BY_PEER, _REFUSED, _PROTOCOL */
    const char *error;         /* NULL on a clean end; else the reason in words, for logs */
    /* The peer reset the stream before any response was sent (server: the request is abandoned; such
     * resets are charged to the connection's reset budget). Callers aggregate these in their logs instead of
     * writing a line each: a peer can send them by the thousand. */
    bool reset_early;
};

struct hbone_conn_ops {
    /* The handshake completed. Client: TLS done, ALPN h2, server identity verified; streams opened earlier
     * are now being sent. Server: TLS done, ALPN h2, the session is open (the end of the handshake, e.g. to
     * bound handshakes in progress; a failed handshake ends in on_closed instead). Optional. */
    void (*on_ready)(struct hbone_conn *c, void *ud);
    /* The connection is gone (error, EOF, GOAWAY drained, ping timeout): e->reason (H2_END_OK on a clean
     * end) and e->detail (NULL on a clean end). Every stream got its on_done before this. c is freed right
     * after the call. */
    void (*on_closed)(struct hbone_conn *c, void *ud, const struct h2_end *e);
    /* Server: a complete request. The callee must eventually call hbone_stream_respond (now or later),
     * unless the stream ends first (on_done). */
    void (*on_request)(struct hbone_stream *s, void *ud, const struct hbone_request *req);
};

struct hbone_stream_ops {
    /* The stream finished; s is invalid after the call. */
    void (*on_done)(struct hbone_stream *s, void *ud, const struct hbone_result *r);
    /* Client: the response headers arrived (status 200 means bytes flow now). Optional. */
    void (*on_response)(struct hbone_stream *s, void *ud, int status);
};

/* HTTP/2 settings, from istio/ztunnel src/config.rs and src/proxy/h2/server.rs. Istio's stream
 * and connection windows are the largest windows auto-tuning grants here; see HBONE_STREAM_WINDOW_INIT. */
#define HBONE_STREAM_WINDOW (4u << 20)
#define HBONE_CONN_WINDOW (16u << 20)
/* Receive windows start small and grow for streams that drain (auto-tuning), so that a peer sending to an app
 * that does not read pins HBONE_STREAM_WINDOW_INIT per stream and HBONE_CONN_WINDOW_INIT per connection,
 * not Istio's 4 MiB / 16 MiB. SETTINGS_INITIAL_WINDOW_SIZE advertises HBONE_STREAM_WINDOW_INIT (a credit
 * once given cannot be taken back); each time a stream has drained a whole window while its app kept up, its
 * window doubles (WINDOW_UPDATE), up to HBONE_STREAM_WINDOW, and the connection window grows by the same
 * amount, up to HBONE_CONN_WINDOW. Every byte of credit beyond the protocol's initial 65 535-byte connection
 * window is reserved from the process-wide budget (h2/budget.h): when it is spent, windows stop growing
 * until streams end and return theirs. */
#define HBONE_STREAM_WINDOW_INIT (256u << 10)
#define HBONE_CONN_WINDOW_INIT (4 * HBONE_STREAM_WINDOW_INIT) /* Istio's 4× connection/stream ratio */
#define HBONE_MAX_FRAME (1u << 20)
#define HBONE_CLIENT_MAX_STREAMS 100
#define HBONE_SERVER_MAX_STREAMS 200
#define HBONE_PING_INTERVAL_MS 10000
#define HBONE_PING_TIMEOUT_MS 20000
/* Overrides the PING interval and timeout for connections created afterwards (tests); 0 keeps the default. */
void hbone_set_keepalive(uint32_t interval_ms, uint32_t timeout_ms);
#define HBONE_HANDSHAKE_TIMEOUT_MS 10000
/* Requests handed to on_request and not yet answered, per connection; later requests wait in arrival order
 * (bounded by SETTINGS_MAX_CONCURRENT_STREAMS, beyond which nghttp2 refuses streams with REFUSED_STREAM).
 * Istio's inbound spawns a task per stream with no bound of its own; this bounds the app connects a peer can
 * keep in flight on one connection. */
#define HBONE_MAX_UNANSWERED 64
/* Budget for streams the peer resets before their response (rapid reset, CVE-2023-44487): a burst of
 * HBONE_EARLY_RESET_BURST, refilled at HBONE_EARLY_RESET_RATE per second. When it is spent the connection
 * ends with GOAWAY(ENHANCE_YOUR_CALM). The burst is well above what a pooled connection whose apps reset
 * their sockets produces (a storm of 2000 is a test case). */
#define HBONE_EARLY_RESET_BURST 5000
#define HBONE_EARLY_RESET_RATE 500
/* After an error GOAWAY the socket is kept (reading and discarding) for up to this long, so that closing it
 * with unread input does not turn into a TCP RST that discards the GOAWAY. */
#define HBONE_LINGER_MS 1000

/* Protocol errors and early resets are counted by the session (h2/session.h), for HBONE and every other
 * user; these names are kept for the metrics (zmesh_hbone_protocol_errors_total{reason}). */
#define hbone_proto_err h2_proto_err
#define HBONE_PERR_FLOOD H2_PERR_FLOOD
#define HBONE_PERR_CONTINUATION H2_PERR_CONTINUATION
#define HBONE_PERR_EARLY_RESETS H2_PERR_EARLY_RESETS
#define HBONE_PERR_PROTOCOL H2_PERR_PROTOCOL
#define HBONE_PERR_HEADERS_TOO_LARGE H2_PERR_HEADERS_TOO_LARGE
#define HBONE_PERR_COUNT H2_PERR_COUNT
#define hbone_proto_err_to_str h2_proto_err_to_str
#define hbone_proto_errors h2_proto_errors
#define hbone_early_resets h2_early_resets
#define hbone_tls_conns h2_tls_conns
/* Bytes received from peers that wait in our buffers for a local socket to take them, all threads. */
uint64_t hbone_buffered_bytes(void);

/* HBONE's session settings (the values above; the keepalive as set by hbone_set_keepalive), for the client
 * or the server role. */
void hbone_settings(struct h2_settings *set, bool server);

/* Starts the client role on fd (connecting or connected, non-blocking; ownership passes to the conn).
 * The server must present an identity in expected[0..n) (copied): SPIFFE ids as Istio checks them (the
 * leaf's URI SAN), or DNS names (see struct h2_peer). Returns NULL on allocation failure (fd closed). ctx is
 * borrowed and must outlive the conn. */
struct hbone_conn *hbone_client_new(struct loop *l, int fd, SSL_CTX *ctx, const char *const *expected,
                                    size_t n_expected, const struct hbone_conn_ops *ops, void *ud);
/* Starts the server role on an accepted fd (ownership passes to the conn). */
struct hbone_conn *hbone_server_new(struct loop *l, int fd, SSL_CTX *ctx, const struct hbone_conn_ops *ops,
                                    void *ud);

/* True when a new stream may be opened now or queued until the handshake ends. */
bool hbone_conn_usable(const struct hbone_conn *c);
/* True once the handshake succeeded. */
bool hbone_conn_ready(const struct hbone_conn *c);
/* True when the handshake succeeded at some point (still true after close). */
bool hbone_conn_established(const struct hbone_conn *c);
/* Open streams (including ones queued during the handshake). */
unsigned hbone_conn_streams(const struct hbone_conn *c);
/* The streams this connection allows at once: ours capped by the peer's SETTINGS. */
unsigned hbone_conn_max_streams(const struct hbone_conn *c);
/* The peer's SPIFFE id (first URI SAN), "" before the handshake or if none. */
const char *hbone_conn_peer_id(const struct hbone_conn *c);
/* Stops taking new streams and sends GOAWAY; the conn closes when its streams end. */
void hbone_conn_drain(struct hbone_conn *c);
/* Closes now: every stream ends with err (H2_END_LOCAL; NULL: H2_END_CONN_CLOSED, "connection closed"). */
void hbone_conn_close(struct hbone_conn *c, const char *err);

/* Client: opens a CONNECT stream. headers are (name, value) pairs including ":authority" (copied); ":method"
 * is added. tcp_fd (non-blocking, ownership passes here) is read only after a 200. Returns NULL when the
 * conn cannot take a stream (tcp_fd untouched). */
struct hbone_stream *hbone_stream_open(struct hbone_conn *c, const struct hbone_header *headers, size_t n,
                                       int tcp_fd, const struct hbone_stream_ops *ops, void *ud);
/* Server: sets the callbacks for a stream handed to on_request. */
void hbone_stream_set_ops(struct hbone_stream *s, const struct hbone_stream_ops *ops, void *ud);
/* Server: answers the request. With status 200 and tcp_fd >= 0 (ownership passes here) the tunnel starts;
 * any other status ends the stream (tcp_fd, if >= 0, is closed). Extra headers optional. */
void hbone_stream_respond(struct hbone_stream *s, int status, int tcp_fd, const struct hbone_header *headers,
                          size_t n);
/* Resets the stream (RST_STREAM CANCEL) and closes its TCP side; on_done runs with H2_END_LOCAL and err. */
void hbone_stream_reset(struct hbone_stream *s, const char *err);
struct hbone_conn *hbone_stream_conn(const struct hbone_stream *s);
/* Bytes moved so far (for counters that advance while a long connection is open). */
void hbone_stream_bytes(const struct hbone_stream *s, uint64_t *to_h2, uint64_t *to_tcp);
