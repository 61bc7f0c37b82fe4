/* A streaming HTTP/1.1 codec on llhttp for the waypoint's data path: an incremental parser for requests and
 * for responses that hands over the head once (start line and headers collected across llhttp's split
 * callbacks) and the body as it arrives (chunk framing removed), and serializers for heads and chunks. No
 * sockets and no loop: the caller feeds bytes and writes what the serializers produce.
 *
 *     struct http1_parser *p = http1_parser_new(HTTP1_REQUEST, NULL, &ops, ud);   NULL: default limits
 *     ssize_t used = http1_parser_feed(p, buf, n);    < n: paused (a callback said so, or a message ended)
 *     ... once the caller is ready for more: http1_parser_resume(p); feed the rest (buf + used), even when
 *     nothing is left (n 0): a message whose head or last body bytes were paused on completes then ...
 *     on a parse error (used < 0): status = http1_parser_error(p, &reason); answer it and close
 *     http1_parser_finish(p) at the peer's EOF; http1_parser_free(p)
 *
 * Back-pressure: a body callback may return HTTP1_PAUSE; nothing after the bytes it was given is consumed
 * until http1_parser_resume, so a caller feeds at most what its peer can take and stops when told. One
 * message at a time: the parser always pauses after on_complete, so a pipelined request is not parsed before
 * the caller has dealt with the one before it. Nothing here buffers a body.
 *
 * Strictness is llhttp's strict build (LLHTTP_STRICT_MODE=1, no lenient flag) plus RFC 9112's rules a proxy
 * needs (see src/http1/README.md): Content-Length with Transfer-Encoding, a repeated Content-Length, a
 * request whose final transfer coding is not chunked, obs-fold, invalid characters: all are errors with the
 * status a server should answer. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Defaults of struct http1_parser_limits (a zero field takes these). */
#define HTTP1_MAX_HEAD_BYTES (60 * 1024) /* Envoy's max_request_headers_kb default (60 KiB) */
#define HTTP1_MAX_HEADERS 100            /* Envoy's max_headers_count default */
#define HTTP1_MAX_TARGET (16 * 1024)     /* longer request-targets get 414 */

/* A callback's return value that pauses the parser after the callback (see http1_parser_ops). */
#define HTTP1_PAUSE 1

enum http1_kind { HTTP1_REQUEST, HTTP1_RESPONSE };

/* One header field as received: the name's case is kept, the value has no leading or trailing whitespace.
 * Neither is NUL-terminated. */
struct http1_hdr {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
};

/* How a message's body is delimited (RFC 9112 §6.3). */
enum http1_framing {
    HTTP1_BODY_NONE,      /* no body: no framing header, 1xx/204/304, a response to HEAD, CONNECT */
    HTTP1_BODY_LENGTH,    /* Content-Length: content_length bytes (0 is reported as NONE) */
    HTTP1_BODY_CHUNKED,   /* Transfer-Encoding: chunked */
    HTTP1_BODY_UNTIL_EOF, /* responses only: the body ends when the connection does (http1_parser_finish) */
};

const char *http1_framing_to_str(enum http1_framing f);

/* A message's head. Valid during on_head, and when on_head returned HTTP1_PAUSE, until http1_parser_resume.
 */
struct http1_head {
    const char *method; /* requests: the method as sent */
    size_t method_len;
    const char *target; /* requests: the request-target as sent */
    size_t target_len;
    int status;         /* responses */
    const char *reason; /* responses: the reason phrase as sent (may be empty) */
    size_t reason_len;
    int version_minor;               /* HTTP/1.<version_minor>: 0 or 1 */
    const struct http1_hdr *headers; /* in order, as received (names not lower-cased) */
    size_t n_headers;
    enum http1_framing framing;
    uint64_t
        content_length; /* the Content-Length header's value when there is one (also for a HEAD answer) */
    bool has_content_length;
    bool keep_alive; /* the connection may carry another message after this one (llhttp_should_keep_alive);
                      * when false, bytes after this message are an error (400): the caller closes instead */
    bool upgrade;    /* request with Upgrade (or CONNECT), 101 response, 2xx answering CONNECT: after this
                      * message the bytes are opaque (see http1_parser_state HTTP1_P_UPGRADED) */
    bool expect_continue; /* request with Expect: 100-continue */
    bool interim;         /* response 1xx other than 101: a final response follows on the same parser */
};

/* The parser's callbacks. Each returns 0 to go on, HTTP1_PAUSE to stop consuming after this callback (resume
 * with http1_parser_resume), or a negative value to fail the parse (http1_parser_error then says 400, or
 * whatever status the callback set with http1_parser_set_error). */
struct http1_parser_ops {
    int (*on_head)(void *ud, const struct http1_head *h);
    /* Decoded body bytes (chunk framing removed); they are consumed whatever the return value. */
    int (*on_body)(void *ud, const uint8_t *p, size_t n);
    /* Trailer fields of a chunked message, before on_complete. Optional (NULL: trailers are parsed and
     * dropped with a debug line). Valid during the call only. */
    int (*on_trailers)(void *ud, const struct http1_hdr *t, size_t n);
    /* The message ended. The parser pauses after it whatever the return value (HTTP1_PAUSE or 0). Not called
     * for an interim (1xx) response. */
    int (*on_complete)(void *ud);
};

/* Bounds of one parser; a zero field takes the default. A head over max_head_bytes or max_headers gets 431,
 * a target over max_target 414, a body over max_body (0: no limit, the body is streamed) 413. */
struct http1_parser_limits {
    size_t max_head_bytes; /* HTTP1_MAX_HEAD_BYTES: start line and header fields, also bounds the trailers */
    size_t max_headers;    /* HTTP1_MAX_HEADERS, also bounds the number of trailer fields */
    size_t max_target;     /* HTTP1_MAX_TARGET */
    uint64_t max_body;     /* 0: unlimited */
};

/* Where a parser is; for callers deciding what to do after a short feed, and for logs. */
enum http1_parser_state {
    HTTP1_P_IDLE,     /* between messages (nothing of the next one seen yet) */
    HTTP1_P_HEAD,     /* inside a head */
    HTTP1_P_BODY,     /* inside a body (or trailers) */
    HTTP1_P_PAUSED,   /* a callback paused inside a message: http1_parser_resume */
    HTTP1_P_DONE,     /* a message ended (on_complete ran): http1_parser_resume for the next one */
    HTTP1_P_UPGRADED, /* an upgrade or CONNECT message ended: the rest of the stream is not HTTP/1 */
    HTTP1_P_CLOSED,   /* the peer's EOF was handled by http1_parser_finish */
    HTTP1_P_ERROR,    /* a parse error: http1_parser_error */
};

const char *http1_parser_state_to_str(enum http1_parser_state s);

struct http1_parser;

/* A new parser of requests or responses (lim NULL or zero fields: defaults; ops copied, on_head and
 * on_complete required); NULL on allocation failure or missing callbacks. Owned by the caller. */
struct http1_parser *http1_parser_new(enum http1_kind k, const struct http1_parser_limits *lim,
                                      const struct http1_parser_ops *ops, void *ud);

/* Frees p (NULL is fine). Not from one of p's callbacks. */
void http1_parser_free(struct http1_parser *p);

/* Feeds bytes; returns how many were consumed: n, or fewer when a callback paused or a message completed (the
 * caller keeps the rest and feeds it after http1_parser_resume); 0 while paused, done or upgraded; a negative
 * errno-style value on a parse error (-EPROTO; http1_parser_error says which) or when fed after one. */
ssize_t http1_parser_feed(struct http1_parser *p, const uint8_t *data, size_t n);

/* Resumes after a pause, after on_complete (the next message may begin), or after an upgrade that did not
 * happen (the server answered the Upgrade request without 101: parsing goes on as HTTP/1). No-op otherwise.
 */
void http1_parser_resume(struct http1_parser *p);

/* The peer's EOF: completes an until-EOF body (on_complete runs); 0 between messages or after one ended;
 * -EPROTO when a message is cut short (http1_parser_error: 400, "connection closed mid-message"). */
int http1_parser_finish(struct http1_parser *p);

/* Response parsers: the next final response answers a HEAD request; it has no body whatever its headers
 * (framing NONE; Content-Length still reported in content_length). Applies to one final response. */
void http1_parser_response_to_head(struct http1_parser *p);

/* Response parsers: the next final response answers a CONNECT request; a 2xx has no body and makes the
 * stream opaque (head->upgrade, state UPGRADED); any other status is an ordinary response. */
void http1_parser_response_to_connect(struct http1_parser *p);

/* After an error: the status a server should answer (400 malformed, 413 body too large, 414 target too long,
 * 431 header fields too large, 501 unsupported transfer coding, 505 HTTP version) and a short static reason
 * for logs (reason may be NULL). 0 when there was no error. For a response parser the statuses say what was
 * wrong with the upstream's response; a proxy answers its client 502 whatever the status. */
int http1_parser_error(const struct http1_parser *p, const char **reason);

/* From a callback: makes its failure (negative return) report status and reason (a static string). */
void http1_parser_set_error(struct http1_parser *p, int status, const char *reason);

enum http1_parser_state http1_parser_state(const struct http1_parser *p);

/* Messages p completed (on_complete calls), for tests and counters. */
uint64_t http1_parser_messages(const struct http1_parser *p);

/* ---- serializers ---- */

/* A growable byte buffer the serializers append to; zero-initialised is empty. Owned by the caller: free
 * with http1_out_free. Appending never stops half-way: on failure the buffer is unchanged. */
struct http1_out {
    char *p;
    size_t n, cap;
};

/* Appends n bytes: 0 or -ENOMEM. */
int http1_out_append(struct http1_out *o, const void *data, size_t n);
/* Forgets the contents, keeps the memory. */
void http1_out_reset(struct http1_out *o);
/* Frees the memory; o is empty and reusable. */
void http1_out_free(struct http1_out *o);

/* Writes "METHOD target HTTP/1.1", the headers, the framing header and the blank line. HTTP/1.1 needs a Host
 * field (RFC 9112 §3.2): forwarding an HTTP/1.0 request that has none, the caller adds it. The headers are
 * the caller's, hop-by-hop ones already removed; any Content-Length or Transfer-Encoding among them is
 * skipped because framing alone decides them: LENGTH writes "Content-Length: <content_length>", CHUNKED
 * "Transfer-Encoding: chunked", NONE and UNTIL_EOF nothing (UNTIL_EOF is invalid for a request: -EINVAL).
 * 0, -EINVAL (a method or name that is not a token, a target or value with CR, LF or NUL; the buffer is
 * unchanged) or -ENOMEM. */
int http1_write_request_head(struct http1_out *o, const char *method, size_t method_len, const char *target,
                             size_t target_len, const struct http1_hdr *headers, size_t n,
                             enum http1_framing framing, uint64_t content_length);

/* Writes "HTTP/1.1 status reason" (reason NULL: http1_reason_phrase), the headers and framing as above
 * (UNTIL_EOF writes no framing header: the caller closes the connection after the body), and the blank line.
 * A HEAD answer passes LENGTH with the length the GET would have and writes no body. 0, -EINVAL (status
 * outside 100..999, bad name or value) or -ENOMEM. */
int http1_write_response_head(struct http1_out *o, int status, const char *reason,
                              const struct http1_hdr *headers, size_t n, enum http1_framing framing,
                              uint64_t content_length);

/* Writes a chunk's size line ("1a\r\n") for n > 0 bytes of data that the caller writes next, followed by
 * http1_write_chunk_end. 0, -EINVAL (n == 0: that is the last chunk) or -ENOMEM. */
int http1_write_chunk_header(struct http1_out *o, size_t n);
/* Writes the CRLF that ends a chunk's data. 0 or -ENOMEM. */
int http1_write_chunk_end(struct http1_out *o);
/* Writes the last chunk "0\r\n", the trailer fields (may be none) and the final CRLF. 0, -EINVAL, -ENOMEM. */
int http1_write_last_chunk(struct http1_out *o, const struct http1_hdr *trailers, size_t n);

/* ---- header helpers ---- */

/* True when a field is hop-by-hop (RFC 9110 §7.6.1) and a proxy must not forward it: Connection, Keep-Alive,
 * Proxy-Connection, TE, Transfer-Encoding, Upgrade, Trailer, and every field the message's Connection header
 * names (connection_value: that header's value, several joined with ",", or NULL). Proxy-Authenticate and
 * Proxy-Authorization are end-to-end, as in Envoy. The caller keeps Upgrade itself for a WebSocket. */
bool http1_hop_by_hop(const char *name, size_t name_len, const char *connection_value, size_t cv_len);

/* The standard reason phrase of status (RFC 9110 §15), "Unknown" for an unregistered one. Static. */
const char *http1_reason_phrase(int status);

/* True for methods RFC 9110 §9.2.2 calls idempotent (GET HEAD OPTIONS TRACE PUT DELETE), which a proxy may
 * retry; *safe (may be NULL) says whether it is also safe (§9.2.1: GET HEAD OPTIONS TRACE). */
bool http1_method_idempotent(const char *method, size_t len, bool *safe);

/* Case-insensitive comparison of a field name with a NUL-terminated lower-case one. */
bool http1_name_is(const char *name, size_t len, const char *lower);
