/* A small HTTP/1.1 server for side doors (debug, metrics, readiness ports) on one event loop: keep-alive and
 * pipelining, requests parsed by llhttp, bounded request sizes, per-port connection limits with eviction,
 * and per-state deadlines that no progress extends (a slowloris keeps no slot). The generic half of ztunnel's
 * admin server (src/ztunnel/admin.c, which it was taken from and which can adopt it); zmeshd's debug port
 * (src/zmeshd/debug.c) serves on it.
 *
 *     struct http1_server *s = http1_server_new(loop, "zmeshd::debug");
 *     http1_server_listen(s, fd, "debug :15014", &limits, handler, ud);   any number of ports
 *     ... loop_run(loop) ...
 *     http1_server_free(s);                                             closes ports and connections
 *
 * The handler runs on the loop thread once per complete request and must answer it (http1_respond) before it
 * returns; a handler that does not gets a 500. Each connection parses at most one request ahead: the next is
 * not read until the response of the current one is written. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct loop;
struct http1_server;

/* Limits of one port; a zero field takes the default named beside it. */
struct http1_limits {
    size_t url_max;      /* longer request targets get 414 (8192) */
    size_t headers_max;  /* a larger header block gets 431 (8 KiB, hyper's max_buf_size) */
    size_t body_max;     /* a larger body gets 413 (64 KiB) */
    int max_conns;       /* connections; when full the oldest idle (else oldest busy) one is closed (32) */
    uint64_t request_ms; /* from a request's first byte (the accept, for the first) to its end (2000) */
    uint64_t write_ms;   /* to write one response (10000) */
    uint64_t idle_ms;    /* keep-alive between requests (60000) */
};

#define HTTP1_ACCEPT_MAX 1024 /* the Accept header value kept for the handler (longer ones are cut) */

/* One request, for the handler. Strings live until the handler returns. */
struct http1_request {
    int method;         /* llhttp's enum llhttp_method: HTTP_GET, HTTP_HEAD, HTTP_POST... */
    const char *path;   /* the target without its query: "/debug/syncz" */
    char *query;        /* after '?', NUL-terminated, writable; NULL when there is none */
    const char *accept; /* the Accept header ("" when absent; several are joined with ", ") */
    uint16_t port;      /* the local port it came in on (0 for a fed connection) */
    /* Called once the response was handed to the kernel (or, fed, to on_response), or when the connection
     * ends before that (write error, write deadline), e.g. to start a shutdown after answering it. Set by the
     * handler; must not block. */
    void (*after_write)(void *ud);
    void *after_write_ud;
};

typedef void (*http1_handler_fn)(void *ud, struct http1_request *req);

/* A server on l; log_target names it in logs ("zmeshd::debug"; copied). NULL on ENOMEM. */
struct http1_server *http1_server_new(struct loop *l, const char *log_target);
/* Serves the listening, non-blocking socket fd (taken over, also on failure) with lim (NULL: defaults) and
 * handler fn. name is for logs ("debug :15014"; copied). Returns 0 or -errno. */
int http1_server_listen(struct http1_server *s, int fd, const char *name, const struct http1_limits *lim,
                        http1_handler_fn fn, void *ud);
/* Closes every port and connection and frees s. NULL is a no-op. */
void http1_server_free(struct http1_server *s);
/* Open connections on every port. */
int http1_server_connections(const struct http1_server *s);

/* Queues the response to req: status line, content-type (NULL: none, then body must be empty), content-length
 * and the body (copied; left out for HEAD). A second call replaces the first. */
void http1_respond(struct http1_request *req, int status, const char *ctype, const char *body, size_t blen);
/* http1_respond with text/plain and a NUL-terminated body. */
void http1_respond_text(struct http1_request *req, int status, const char *text);
/* The reason phrase of status ("OK", "Not Found", ... "Unknown"). */
const char *http1_reason(int status);

/* Feeds data[0..len), the bytes a client sent on one connection, through the parser and fn exactly as a
 * socket connection would (reads of at most `chunk` bytes, 0 = the read buffer's size), without sockets or a
 * loop: for fuzzers and unit tests. Each complete response (borrowed during the call) goes to on_response
 * (may be NULL). Returns the number of responses. */
size_t http1_feed(const struct http1_limits *lim, http1_handler_fn fn, void *ud, const uint8_t *data,
                  size_t len, size_t chunk, void (*on_response)(void *rud, const char *resp, size_t n),
                  void *rud);

/* Parses "ip:port", "[ip6]:port" or ":port" (every address; IPv6 wildcard with IPv4) as Go's host:port,
 * port 0..65535, and returns a listening non-blocking socket bound there (no SO_REUSEPORT: a second daemon
 * must fail rather than share the port), with the bound port in *port (may be NULL). Returns the fd, or
 * -errno with err set (-EINVAL for a bad address). */
int http1_listen(const char *addr, uint16_t *port, char *err, size_t errlen);
