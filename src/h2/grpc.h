/* gRPC over zmesh's own HTTP/2 session (h2/session.h): servers with handlers registered by method path,
 * clients (channels) with unary and streaming calls. Messages are opaque bytes (the caller packs and unpacks
 * its protobuf); the layer owns framing, headers, metadata, deadlines, statuses, size limits and the send
 * queue. See src/h2/README.md ("gRPC").
 *
 * One struct grpc_call is one RPC in either role. It is valid from the moment it is handed out (server:
 * on_call; client: grpc_call_start) until its on_end returns; on_end runs exactly once, whatever ends the
 * call (a status sent or received, a deadline, a reset, the connection going away, grpc_call_cancel). All
 * functions run on the loop's thread. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <openssl/ssl.h>

#include "core/loop.h"
#include "h2/grpc_wire.h"
#include "h2/session.h"

struct grpc_server;
struct grpc_channel;
struct grpc_call;

/* One metadata entry. Received: name lower-case, value decoded from base64 for "-bin" names (value[len] is a
 * NUL for convenience), valid during the callback only. Sent: value is raw bytes for "-bin" names (encoded
 * by the layer), else ASCII-Value text. */
struct grpc_md {
    const char *name;
    const uint8_t *value;
    size_t len;
};

/* How a call ended (on_end). */
struct grpc_result {
    enum grpc_status status;
    const char *message;            /* grpc-message decoded, or the layer's reason; never NULL ("" if none) */
    const struct grpc_md *trailers; /* client: the trailers' custom metadata */
    size_t n_trailers;
    int http_status;              /* client: :status received (0 if none) */
    enum h2_end_reason h2_reason; /* how the HTTP/2 stream ended (H2_END_OK normally) */
};

struct grpc_call_ops {
    /* A complete message from the peer, valid during the call. Server unary calls get their one request in
     * on_call instead. */
    void (*on_message)(struct grpc_call *c, void *ud, const uint8_t *p, size_t n);
    /* Server: the client finished sending (END_STREAM). Optional. */
    void (*on_half_close)(struct grpc_call *c, void *ud);
    /* grpc_call_send refused a message (-EAGAIN) or grpc_call_writable said false, and the send queue has
     * drained below half its bound: send again. Optional. */
    void (*on_writable)(struct grpc_call *c, void *ud);
    /* The call is over; c is invalid after the call. */
    void (*on_end)(struct grpc_call *c, void *ud, const struct grpc_result *r);
};

/* Limits. 0 in a field means its default. */
struct grpc_opts {
    uint32_t max_recv;     /* largest message received (GRPC_DEFAULT_MAX_RECV, 4 MiB, as grpc-core) */
    uint32_t max_send;     /* largest message sent (default: no limit but the 32-bit length) */
    size_t send_queue_max; /* bytes queued per call before grpc_call_send says -EAGAIN (GRPC_SEND_QUEUE_MAX);
                            * a message is always taken when nothing is queued, so one big message passes */
    /* HTTP/2 keepalive: PING after this much quiet, the connection ends without an ACK within the timeout.
     * Off by default: grpc servers (grpc-core) punish a client that pings an idle connection more often than
     * every 5 minutes with GOAWAY(ENHANCE_YOUR_CALM, "too_many_pings"). */
    uint32_t ping_interval_ms, ping_timeout_ms;
};
#define GRPC_SEND_QUEUE_MAX (1u << 20)
/* Request and response header blocks: grpc suggests at least 8 KiB; grpc-core's default limit is 16 KiB. */
#define GRPC_MAX_HEADER_BYTES (16u << 10)
#define GRPC_MAX_HEADERS 64
/* Methods one server can register (lookups are by exact path among these few). */
#define GRPC_MAX_METHODS 32

/* ---- server ---- */

enum grpc_method_kind {
    GRPC_UNARY,     /* exactly one request message; on_call runs once it has arrived with END_STREAM */
    GRPC_STREAMING, /* any number of messages both ways (client, server and bidirectional streaming); on_call
                     * runs when the request headers arrive, messages go to ops->on_message */
};

/* What a handler learns about a call. Valid during on_call only: copy what you keep. */
struct grpc_call_info {
    const char *path;         /* "/package.Service/Method" */
    const char *authority;    /* :authority ("" if absent) */
    const char *peer_id;      /* the client's SPIFFE id from its certificate, "" for h2c or none */
    const struct grpc_md *md; /* custom metadata (authorization, clusterid, user-agent, ...); the headers the
                               * layer consumes (content-type, te, grpc-timeout, grpc-encoding,
                               * grpc-accept-encoding) and pseudo-headers are not included */
    size_t n_md;
    uint64_t timeout_ns;    /* from grpc-timeout; UINT64_MAX without one */
    const uint8_t *request; /* GRPC_UNARY: the request message */
    size_t request_len;
};

/* A new call for a registered method. The handler sets its callbacks with grpc_call_set_ops (needed for
 * on_end and, for streaming calls, on_message), and answers now or later with grpc_call_send and
 * grpc_call_finish. */
typedef void (*grpc_handler_fn)(struct grpc_call *c, void *ud, const struct grpc_call_info *info);

/* Creates a server on loop l. o may be NULL (defaults). Returns NULL on allocation failure. */
struct grpc_server *grpc_server_new(struct loop *l, const struct grpc_opts *o);
/* Registers path ("/package.Service/Method", copied). Returns 0, -EEXIST, -EINVAL (not "/x/y"), -ENOSPC
 * beyond GRPC_MAX_METHODS, -ENOMEM. */
int grpc_server_add(struct grpc_server *s, const char *path, enum grpc_method_kind kind, grpc_handler_fn fn,
                    void *ud);
/* Serves one accepted connection (fd non-blocking; ownership passes to the server). ctx: a TLS server
 * context with ALPN h2 (borrowed, must outlive the server), or NULL for h2c with prior knowledge. Returns 0
 * or -ENOMEM (fd closed). */
int grpc_server_serve(struct grpc_server *s, int fd, SSL_CTX *ctx);
/* Graceful shutdown: GOAWAY on every connection. Calls in progress go on; new ones are refused (clients
 * retry elsewhere: PROTOCOL-HTTP2.md "GOAWAY Frame"); each connection closes when its calls have ended.
 * Connections served afterwards are not drained: stop accepting first. */
void grpc_server_drain(struct grpc_server *s);
/* Open connections. */
unsigned grpc_server_conns(const struct grpc_server *s);
/* Closes every connection (each call's on_end runs with CANCELLED) and frees the server. NULL is ignored. */
void grpc_server_free(struct grpc_server *s);

/* ---- client ---- */

/* A client connection to one server on fd (connecting or connected, non-blocking; ownership passes here).
 * ctx: a TLS client context with ALPN h2 (borrowed, must outlive the channel) or NULL for h2c. authority is
 * sent as :authority (copied); peer says how the server's certificate is checked (TLS only, copied; NULL
 * with TLS fails every handshake closed). o may be NULL. Returns NULL on allocation failure (fd closed). */
struct grpc_channel *grpc_channel_new(struct loop *l, int fd, SSL_CTX *ctx, const struct h2_peer *peer,
                                      const char *authority, const struct grpc_opts *o);
/* Connects to ss (non-blocking) and makes a channel on the socket. A failed connect ends the calls with
 * UNAVAILABLE. Returns NULL when no socket could be made. */
struct grpc_channel *grpc_channel_dial(struct loop *l, const struct sockaddr_storage *ss, SSL_CTX *ctx,
                                       const struct h2_peer *peer, const char *authority,
                                       const struct grpc_opts *o);
/* True while the connection can take new calls (not closed, no GOAWAY received). */
bool grpc_channel_usable(const struct grpc_channel *ch);
/* Ends every call (CANCELLED), closes the connection and frees the channel. NULL is ignored. May be called from
 * inside a call's on_end (the call is done with the channel by then; the session frees its connection from a
 * task), which is how the xDS and CA clients drop a channel whose stream ended. */
void grpc_channel_free(struct grpc_channel *ch);

/* A call's request options. */
struct grpc_call_opts {
    uint64_t timeout_ms;      /* deadline from now, 0 = none: sent as grpc-timeout; when it passes the call
                               * ends with DEADLINE_EXCEEDED and the stream is reset with CANCEL */
    const struct grpc_md *md; /* custom metadata (copied): valid lower-case names, not reserved
                               * (grpc_md_reserved), ASCII values unless "-bin" */
    size_t n_md;
};

/* Starts a streaming call on path. Messages go out with grpc_call_send, the client's side ends with
 * grpc_call_close_send. Returns the call, or NULL with *err set: -EINVAL (bad path or metadata), -EPIPE (the
 * channel takes no calls: on_end is not called, the caller treats it as UNAVAILABLE), -ENOMEM. */
struct grpc_call *grpc_call_start(struct grpc_channel *ch, const char *path, const struct grpc_call_opts *o,
                                  const struct grpc_call_ops *ops, void *ud, int *err);
/* A unary call: sends req[0..n) and ends the client's side; the one response message goes to on_message,
 * then on_end. A response without exactly one message is UNIMPLEMENTED (doc/statuscodes.md: response
 * cardinality violation). Same returns as grpc_call_start. */
struct grpc_call *grpc_call_unary(struct grpc_channel *ch, const char *path, const struct grpc_call_opts *o,
                                  const uint8_t *req, size_t n, const struct grpc_call_ops *ops, void *ud,
                                  int *err);

/* ---- both roles ---- */

/* Sets the callbacks and user data of c. */
void grpc_call_set_ops(struct grpc_call *c, const struct grpc_call_ops *ops, void *ud);
/* Queues one message (copied). Returns 0; -EAGAIN when the send queue is full (on_writable follows);
 * -EMSGSIZE over max_send (the call is not ended: the caller decides, e.g. RESOURCE_EXHAUSTED); -EPIPE when
 * the call is finished or our side closed; -EINVAL for a second response of a unary call; -ENOMEM. */
int grpc_call_send(struct grpc_call *c, const uint8_t *p, size_t n);
/* Queues one message of n bytes and returns where to write it (owned by the queue): the caller fills all n
 * bytes before returning to the loop (e.g. protobuf_c_message_pack straight into it, saving the copy of
 * grpc_call_send). NULL with *err as grpc_call_send's returns. */
uint8_t *grpc_call_send_alloc(struct grpc_call *c, size_t n, int *err);
/* True when grpc_call_send would take a message of n bytes now; when false, on_writable follows once the
 * queue has drained (so a producer can ask before it builds a message). */
bool grpc_call_writable(struct grpc_call *c, size_t n);
/* Asks for on_writable once the send queue is below half its bound (from a task, soon, if it already is):
 * for a sender that builds each message only when it can be sent (the latest state, not a backlog). */
void grpc_call_notify_writable(struct grpc_call *c);
/* Bytes queued and not yet taken by HTTP/2. */
size_t grpc_call_queued(const struct grpc_call *c);
/* Server: ends the call with status and message (may be NULL) after the queued messages, with trailing
 * metadata md (may be NULL). A call with nothing sent gets a Trailers-Only response. on_end follows when
 * the stream is done. Returns 0, -EPIPE when already finished, -EINVAL for bad metadata or a client call,
 * -ENOMEM. */
int grpc_call_finish(struct grpc_call *c, enum grpc_status st, const char *msg, const struct grpc_md *md,
                     size_t n_md);
/* Client: ends our side (END_STREAM after the queued messages). Returns 0 or -EPIPE. */
int grpc_call_close_send(struct grpc_call *c);
/* Ends the call now: RST_STREAM CANCEL, on_end with CANCELLED (client) or the status given. */
void grpc_call_cancel(struct grpc_call *c, enum grpc_status st, const char *msg);
/* Messages received so far. */
uint64_t grpc_call_received(const struct grpc_call *c);
