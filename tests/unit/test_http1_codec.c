/* Unit tests for the streaming HTTP/1.1 codec (src/http1/codec.c). A recorder writes every callback into an
 * event log ("H ..." for a head with its fields, "T ..." for trailers, "C" for a message end) and gathers the
 * body, so a table of messages can be checked for exact heads, framing, bodies and errors, each fed whole and
 * in every split from one byte up. Then the pieces a table cannot say: pipelining (the second request only
 * after resume), back-pressure (a body paused mid-way resumes exactly), interim responses, HEAD and CONNECT
 * answers, until-EOF bodies, limits, the serializers' exact bytes and hop-by-hop fields. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "http1/codec.h"

#define LOG_CAP 160000
#define BODY_CAP 65536

struct rec {
    struct http1_parser *p;
    char log[LOG_CAP];
    size_t log_len;
    char body[BODY_CAP];
    size_t body_len;
    int heads, completes, body_calls;
    struct http1_head last; /* scalars of the last head (pointers not valid after on_head) */
    /* behaviour */
    bool pause_head;         /* on_head returns HTTP1_PAUSE */
    size_t pause_body_after; /* on_body pauses once this many body bytes were seen (0: never) */
    bool fail_head;          /* on_head fails */
    bool head_on_head_reply; /* a response parser: mark the next response as answering HEAD */
};

static void rec_printf(struct rec *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void rec_printf(struct rec *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(r->log + r->log_len, LOG_CAP - r->log_len, fmt, ap);
    va_end(ap);
    assert_true(n >= 0 && (size_t)n < LOG_CAP - r->log_len);
    r->log_len += (size_t)n;
}

static void rec_fields(struct rec *r, const struct http1_hdr *h, size_t n)
{
    for (size_t i = 0; i < n; i++)
        rec_printf(r, " [%.*s: %.*s]", (int)h[i].name_len, h[i].name, (int)h[i].value_len, h[i].value);
}

static int on_head(void *ud, const struct http1_head *h)
{
    struct rec *r = ud;
    r->heads++;
    r->last = *h;
    if (h->method)
        rec_printf(r, "H %.*s %.*s 1.%d", (int)h->method_len, h->method, (int)h->target_len, h->target,
                   h->version_minor);
    else
        rec_printf(r, "H %d %.*s 1.%d", h->status, (int)h->reason_len, h->reason, h->version_minor);
    rec_printf(r, " %s", http1_framing_to_str(h->framing));
    if (h->has_content_length) rec_printf(r, " cl=%llu", (unsigned long long)h->content_length);
    if (!h->keep_alive) rec_printf(r, " close");
    if (h->upgrade) rec_printf(r, " upgrade");
    if (h->expect_continue) rec_printf(r, " continue");
    if (h->interim) rec_printf(r, " interim");
    rec_fields(r, h->headers, h->n_headers);
    rec_printf(r, "\n");
    if (r->fail_head) {
        http1_parser_set_error(r->p, 403, "refused");
        return -1;
    }
    return r->pause_head ? HTTP1_PAUSE : 0;
}

static int on_body(void *ud, const uint8_t *p, size_t n)
{
    struct rec *r = ud;
    assert_true(n > 0);
    assert_true(n <= BODY_CAP - r->body_len);
    memcpy(r->body + r->body_len, p, n);
    r->body_len += n;
    r->body_calls++;
    if (r->pause_body_after && r->body_len >= r->pause_body_after) {
        r->pause_body_after = 0;
        return HTTP1_PAUSE;
    }
    return 0;
}

static int on_trailers(void *ud, const struct http1_hdr *t, size_t n)
{
    struct rec *r = ud;
    rec_printf(r, "T");
    rec_fields(r, t, n);
    rec_printf(r, "\n");
    return 0;
}

static int on_complete(void *ud)
{
    struct rec *r = ud;
    r->completes++;
    rec_printf(r, "C\n");
    return 0;
}

static const struct http1_parser_ops rec_ops = {on_head, on_body, on_trailers, on_complete};

static void rec_init(struct rec *r, enum http1_kind k, const struct http1_parser_limits *lim)
{
    memset(r, 0, sizeof(*r));
    r->p = http1_parser_new(k, lim, &rec_ops, r);
    assert_non_null(r->p);
}

/* Feeds data in pieces of split bytes (0: whole), resuming after each message end and pause, then the EOF if
 * eof. Returns 0, or the error status. */
static int feed_all(struct rec *r, const char *data, size_t n, size_t split, bool eof)
{
    size_t off = 0;
    while (off < n) {
        size_t piece = split && split < n - off ? split : n - off;
        size_t used_total = 0;
        for (;;) {
            ssize_t used =
                http1_parser_feed(r->p, (const uint8_t *)data + off + used_total, piece - used_total);
            if (used < 0) return http1_parser_error(r->p, NULL);
            used_total += (size_t)used;
            enum http1_parser_state st = http1_parser_state(r->p);
            if (st == HTTP1_P_DONE || st == HTTP1_P_PAUSED) {
                http1_parser_resume(r->p);
                continue; /* even with nothing left: a resumed message may complete without more bytes */
            }
            if (st == HTTP1_P_UPGRADED) return 0;
            assert_int_equal(used_total, piece);
            break;
        }
        off += piece;
    }
    if (eof && http1_parser_finish(r->p) < 0) return http1_parser_error(r->p, NULL);
    return 0;
}

/* ---- the table ---- */

struct msg_case {
    const char *name;
    enum http1_kind kind;
    const char *in;
    const char *log;  /* the events expected (when no error, or the events before it) */
    const char *body; /* decoded body */
    int status;       /* error status expected, 0 none */
    bool eof;         /* the peer closes after the input */
};

static const struct msg_case cases[] = {
    {"content-length", HTTP1_REQUEST,
     "POST /up?x=1 HTTP/1.1\r\nHost: a.example\r\nContent-Length: 5\r\n\r\nhello",
     "H POST /up?x=1 1.1 content-length cl=5 [Host: a.example] [Content-Length: 5]\nC\n", "hello", 0, false},
    {"chunked", HTTP1_REQUEST,
     "PUT /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n1;ext=v\r\n "
     "\r\n6\r\nworld!\r\n0\r\n\r\n",
     "H PUT /c 1.1 chunked [Host: a] [Transfer-Encoding: chunked]\nC\n", "hello world!", 0, false},
    {"chunked with trailers", HTTP1_REQUEST,
     "POST /t HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\nTrailer: "
     "grpc-status\r\n\r\n3\r\nabc\r\n0\r\ngrpc-status: 0\r\n"
     "X-Sum:  12 \r\n\r\n",
     "H POST /t 1.1 chunked [Host: h] [Transfer-Encoding: Chunked] [Trailer: grpc-status]\nT [grpc-status: "
     "0] [X-Sum: "
     "12]\nC\n",
     "abc", 0, false},
    {"no body, HTTP/1.0 closes", HTTP1_REQUEST, "GET / HTTP/1.0\r\nUser-Agent: t\r\n\r\n",
     "H GET / 1.0 none close [User-Agent: t]\nC\n", "", 0, false},
    {"value whitespace trimmed, empty value, case kept", HTTP1_REQUEST,
     "GET /x HTTP/1.1\r\nHost: h\r\nX-A:\t  spaced out \t\r\nX-Empty:\r\nx-lower: v\r\n\r\n",
     "H GET /x 1.1 none [Host: h] [X-A: spaced out] [X-Empty: ] [x-lower: v]\nC\n", "", 0, false},
    {"expect 100-continue", HTTP1_REQUEST,
     "POST /e HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\nContent-Length: 2\r\n\r\nok",
     "H POST /e 1.1 content-length cl=2 continue [Host: h] [Expect: 100-Continue] [Content-Length: 2]\nC\n",
     "ok", 0, false},
    {"connection close", HTTP1_REQUEST, "GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
     "H GET / 1.1 none close [Host: h] [Connection: close]\nC\n", "", 0, false},
    {"content-length 0", HTTP1_REQUEST, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
     "H POST / 1.1 none cl=0 [Host: h] [Content-Length: 0]\nC\n", "", 0, false},
    {"absolute-form target", HTTP1_REQUEST,
     "GET http://a.example:8080/p?q HTTP/1.1\r\nHost: a.example:8080\r\n\r\n",
     "H GET http://a.example:8080/p?q 1.1 none [Host: a.example:8080]\nC\n", "", 0, false},
    /* responses */
    {"response content-length", HTTP1_RESPONSE, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
     "H 200 OK 1.1 content-length cl=3 [Content-Length: 3]\nC\n", "abc", 0, false},
    {"response chunked", HTTP1_RESPONSE,
     "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n",
     "H 201 Created 1.1 chunked [Transfer-Encoding: chunked]\nC\n", "ab", 0, false},
    {"response until eof", HTTP1_RESPONSE, "HTTP/1.1 200 OK\r\nServer: s\r\n\r\nall of it",
     "H 200 OK 1.1 until-eof close [Server: s]\nC\n", "all of it", 0, true},
    {"204 with content-length has no body", HTTP1_RESPONSE,
     "HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n",
     "H 204 No Content 1.1 none cl=7 [Content-Length: 7]\nC\n", "", 0, false},
    {"304 without body", HTTP1_RESPONSE, "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n",
     "H 304 Not Modified 1.1 none [ETag: \"x\"]\nC\n", "", 0, false},
    {"100 then 200", HTTP1_RESPONSE,
     "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nz",
     "H 100 Continue 1.1 none interim\nH 200 OK 1.1 content-length cl=1 [Content-Length: 1]\nC\n", "z", 0,
     false},
    {"empty reason", HTTP1_RESPONSE, "HTTP/1.1 404 \r\nContent-Length: 0\r\n\r\n",
     "H 404  1.1 none cl=0 [Content-Length: 0]\nC\n", "", 0, false},
    /* errors */
    {"CL and TE", HTTP1_REQUEST, "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
     "", "", 400, false},
    {"TE then CL", HTTP1_REQUEST,
     "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", "", "", 400, false},
    {"differing content-lengths", HTTP1_REQUEST,
     "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", "", "", 400, false},
    {"content-length list", HTTP1_REQUEST, "POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\nabc", "", "", 400,
     false},
    {"bad chunk size", HTTP1_REQUEST,
     "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
     "H POST / 1.1 chunked [Host: h] [Transfer-Encoding: chunked]\n", "", 400, false},
    {"invalid header char", HTTP1_REQUEST,
     "GET / HTTP/1.1\r\nX: a\x01"
     "b\r\n\r\n",
     "", "", 400, false},
    {"space before colon", HTTP1_REQUEST, "GET / HTTP/1.1\r\nHost : a\r\n\r\n", "", "", 400, false},
    {"obs-fold", HTTP1_REQUEST, "GET / HTTP/1.1\r\nX-Long: a\r\n  b\r\n\r\n", "", "", 400, false},
    {"final coding not chunked", HTTP1_REQUEST, "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", "", "",
     400, false},
    {"chunked then gzip", HTTP1_REQUEST, "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", "",
     "", 400, false},
    {"gzip, chunked unsupported", HTTP1_REQUEST,
     "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "", "", 501, false},
    {"CONNECT with a transfer coding", HTTP1_REQUEST,
     "CONNECT a:443 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", "", "", 501, false},
    {"missing Host", HTTP1_REQUEST, "GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", "", "", 400, false},
    {"two Hosts", HTTP1_REQUEST, "GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", "", "", 400, false},
    {"two Hosts in HTTP/1.0", HTTP1_REQUEST, "GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n", "", "", 400,
     false},
    {"HTTP/2.0 request line", HTTP1_REQUEST, "GET / HTTP/2.0\r\n\r\n", "", "", 505, false},
    {"HTTP/1.2 request line", HTTP1_REQUEST, "GET / HTTP/1.2\r\n\r\n", "", "", 505, false},
    {"h2 preface", HTTP1_REQUEST, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "", "", 505, false},
    {"garbage method", HTTP1_REQUEST, "G@T / HTTP/1.1\r\n\r\n", "", "", 400, false},
    {"cut mid-body", HTTP1_REQUEST, "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc",
     "H POST / 1.1 content-length cl=10 [Host: h] [Content-Length: 10]\n", "abc", 400, true},
    {"cut mid-head", HTTP1_REQUEST, "GET / HTTP/1.1\r\nHost: a\r\n", "", "", 400, true},
    {"chunk data without CRLF", HTTP1_REQUEST,
     "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
     "H POST / 1.1 chunked [Host: h] [Transfer-Encoding: chunked]\n", "hello", 400, false},
    {"data after connection close", HTTP1_REQUEST,
     "GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n",
     "H GET / 1.1 none close [Host: h] [Connection: close]\nC\n", "", 400, false},
    {"malformed version", HTTP1_REQUEST, "GET / HTTP/1.x\r\n\r\n", "", "", 400, false},
    {"HTTP/3.0", HTTP1_REQUEST, "GET / HTTP/3.0\r\n\r\n", "", "", 505, false},
    {"bare LF", HTTP1_REQUEST, "GET / HTTP/1.1\nHost: a\n\n", "", "", 400, false},
    {"response name whitespace", HTTP1_RESPONSE, "HTTP/1.1 200 OK\r\nServer : s\r\nContent-Length: 0\r\n\r\n",
     "", "", 400, false},
    {"obs-fold at a feed's end", HTTP1_REQUEST, "GET / HTTP/1.1\r\nX: a\r\n\tb\r\nY: c\r\n\r\n", "", "", 400,
     false},
    {"control in reason", HTTP1_RESPONSE, "HTTP/1.1 200 O\x01K\r\n\r\n", "", "", 400, false},
    {"response status 600", HTTP1_RESPONSE, "HTTP/1.1 600 Odd\r\n\r\n", "", "", 400, false},
    {"response gzip coding", HTTP1_RESPONSE, "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxx", "", "",
     501, false},
};

static void run_case(const struct msg_case *c, size_t split)
{
    struct rec r;
    rec_init(&r, c->kind, NULL);
    int st = feed_all(&r, c->in, strlen(c->in), split, c->eof);
    if (st != c->status || strcmp(r.log, c->log) != 0 || r.body_len != strlen(c->body) ||
        memcmp(r.body, c->body, r.body_len) != 0) {
        const char *why = NULL;
        http1_parser_error(r.p, &why);
        print_error(
            "case '%s' split %zu: status %d (want %d, %s)\nlog:\n%s\nwant:\n%s\nbody '%.*s' want '%s'\n",
            c->name, split, st, c->status, why ? why : "-", r.log, c->log, (int)r.body_len, r.body, c->body);
        fail();
    }
    if (c->status) {
        const char *why = NULL;
        assert_int_equal(http1_parser_error(r.p, &why), c->status);
        assert_non_null(why);
        assert_int_equal(http1_parser_state(r.p), HTTP1_P_ERROR);
        /* After an error the parser refuses further input. */
        assert_int_equal(http1_parser_feed(r.p, (const uint8_t *)"x", 1), -EPROTO);
    } else {
        assert_int_equal(http1_parser_error(r.p, NULL), 0);
    }
    http1_parser_free(r.p);
}

static void test_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t n = strlen(cases[i].in);
        run_case(&cases[i], 0);
        for (size_t split = 1; split <= n; split++)
            run_case(&cases[i], split);
    }
}

/* ---- pipelining, pauses, resumption ---- */

static void test_pipelined(void **state)
{
    (void)state;
    static const char two[] =
        "GET /one HTTP/1.1\r\nHost: a\r\n\r\nPOST /two HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi";
    size_t first = strlen("GET /one HTTP/1.1\r\nHost: a\r\n\r\n");
    struct rec r;
    rec_init(&r, HTTP1_REQUEST, NULL);
    ssize_t used = http1_parser_feed(r.p, (const uint8_t *)two, strlen(two));
    assert_int_equal(used, (ssize_t)first); /* stops at the end of the first request */
    assert_int_equal(http1_parser_state(r.p), HTTP1_P_DONE);
    assert_int_equal(r.heads, 1);
    assert_int_equal(r.completes, 1);
    /* Not resumed: nothing more is consumed. */
    assert_int_equal(http1_parser_feed(r.p, (const uint8_t *)two + used, strlen(two) - (size_t)used), 0);
    assert_int_equal(r.heads, 1);
    http1_parser_resume(r.p);
    assert_int_equal(http1_parser_state(r.p), HTTP1_P_IDLE);
    ssize_t used2 = http1_parser_feed(r.p, (const uint8_t *)two + used, strlen(two) - (size_t)used);
    assert_int_equal(used2, (ssize_t)(strlen(two) - first));
    assert_string_equal(r.log, "H GET /one 1.1 none [Host: a]\nC\nH POST /two 1.1 content-length cl=2 "
                               "[Host: a] [Content-Length: 2]\nC\n");
    assert_int_equal(http1_parser_messages(r.p), 2);
    http1_parser_resume(r.p);
    assert_int_equal(http1_parser_finish(r.p), 0);
    assert_int_equal(http1_parser_state(r.p), HTTP1_P_CLOSED);
    http1_parser_free(r.p);
}

static void test_body_back_pressure(void **state)
{
    (void)state;
    static const char req[] = "POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n0123456789";
    size_t head = strlen(req) - 10;
    for (size_t split = 0; split <= 4; split++) {
        struct rec r;
        rec_init(&r, HTTP1_REQUEST, NULL);
        r.pause_body_after = 4;
        size_t off = 0, n = strlen(req);
        /* Feed head plus 6 body bytes in one go: the body pauses after the span it was given. */
        ssize_t used = http1_parser_feed(r.p, (const uint8_t *)req, head + 6);
        assert_int_equal(used, (ssize_t)(head + 6));
        assert_int_equal(http1_parser_state(r.p), HTTP1_P_PAUSED);
        assert_int_equal(r.body_len, 6);
        /* While paused nothing is consumed. */
        assert_int_equal(http1_parser_feed(r.p, (const uint8_t *)req + head + 6, 4), 0);
        assert_int_equal(r.body_len, 6);
        http1_parser_resume(r.p);
        assert_int_equal(http1_parser_state(r.p), HTTP1_P_BODY);
        off = head + 6;
        assert_int_equal(feed_all(&r, req + off, n - off, split, false), 0);
        assert_int_equal(r.body_len, 10);
        assert_memory_equal(r.body, "0123456789", 10);
        assert_int_equal(r.completes, 1);
        http1_parser_free(r.p);
    }
}

/* A pause in on_body before the body's last span is fed: consumption stops exactly at the pause, and the rest
 * of the bytes (body tail and a pipelined request) go through after resume. */
static void test_pause_mid_feed(void **state)
{
    (void)state;
    static const char req[] =
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n3\r\nefg\r\n0\r\n\r\n"
        "GET /next HTTP/1.1\r\nHost: h\r\n\r\n";
    struct rec r;
    rec_init(&r, HTTP1_REQUEST, NULL);
    r.pause_body_after = 1;
    ssize_t used = http1_parser_feed(r.p, (const uint8_t *)req, strlen(req));
    /* The first chunk's data ends at offset head + "4\r\nabcd" */
    size_t head = strlen("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert_int_equal(used, (ssize_t)(head + 7));
    assert_int_equal(r.body_len, 4);
    assert_int_equal(r.completes, 0);
    http1_parser_resume(r.p);
    ssize_t used2 = http1_parser_feed(r.p, (const uint8_t *)req + used, strlen(req) - (size_t)used);
    assert_true(used2 > 0);
    assert_int_equal(r.completes, 1);
    assert_int_equal(r.body_len, 7);
    assert_memory_equal(r.body, "abcdefg", 7);
    assert_int_equal((size_t)used + (size_t)used2,
                     strlen(req) - strlen("GET /next HTTP/1.1\r\nHost: h\r\n\r\n"));
    http1_parser_resume(r.p);
    assert_int_equal(
        http1_parser_feed(r.p, (const uint8_t *)req + used + used2, strlen(req) - (size_t)(used + used2)),
        (ssize_t)strlen("GET /next HTTP/1.1\r\nHost: h\r\n\r\n"));
    assert_int_equal(r.completes, 2);
    http1_parser_free(r.p);
}

/* on_head pausing at the very end of the input: after resume, an empty feed completes the body-less request.
 */
static void test_pause_head_then_empty_feed(void **state)
{
    (void)state;
    static const char req[] = "GET /p HTTP/1.1\r\nHost: h\r\n\r\n";
    struct rec r;
    rec_init(&r, HTTP1_REQUEST, NULL);
    r.pause_head = true;
    assert_int_equal(http1_parser_feed(r.p, (const uint8_t *)req, strlen(req)), (ssize_t)strlen(req));
    assert_int_equal(http1_parser_state(r.p), HTTP1_P_PAUSED);
    assert_int_equal(r.completes, 0);
    http1_parser_resume(r.p);
    assert_int_equal(http1_parser_feed(r.p, NULL, 0), 0);
    assert_int_equal(r.completes, 1);
    assert_int_equal(http1_parser_state(r.p), HTTP1_P_DONE);
    http1_parser_free(r.p);
}

/* The peer's EOF while on_head is paused on a complete body-less request: the request still completes. */
static void test_finish_while_head_paused(void **state)
{
    (void)state;
    static const char req[] = "GET /p HTTP/1.1\r\nHost: h\r\n\r\n";
    struct rec r;
    rec_init(&r, HTTP1_REQUEST, NULL);
    r.pause_head = true;
    assert_int_equal(http1_parser_feed(r.p, (const uint8_t *)req, strlen(req)), (ssize_t)strlen(req));
    assert_int_equal(http1_parser_state(r.p), HTTP1_P_PAUSED);
    assert_int_equal(http1_parser_finish(r.p), 0);
    assert_int_equal(r.completes, 1);
    assert_int_equal(http1_parser_state(r.p), HTTP1_P_CLOSED);
    http1_parser_free(r.p);
    /* ... but a body cut short is still an error. */
    static const char cut[] = "POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nab";
    rec_init(&r, HTTP1_REQUEST, NULL);
    r.pause_head = true;
    assert_int_equal(http1_parser_feed(r.p, (const uint8_t *)cut, strlen(cut)), (ssize_t)strlen(cut) - 2);
    assert_int_equal(http1_parser_finish(r.p), -EPROTO);
    assert_int_equal(http1_parser_error(r.p, NULL), 400);
    assert_int_equal(r.completes, 0);
    http1_parser_free(r.p);
}

static void test_callback_failure(void **state)
{
    (void)state;
    struct rec r;
    rec_init(&r, HTTP1_REQUEST, NULL);
    r.fail_head = true;
    assert_int_equal(http1_parser_feed(r.p, (const uint8_t *)"GET / HTTP/1.1\r\nHost: h\r\n\r\n", 27),
                     -EPROTO);
    const char *why;
    assert_int_equal(http1_parser_error(r.p, &why), 403);
    assert_string_equal(why, "refused");
    http1_parser_free(r.p);
}

/* ---- responses ---- */

static void test_head_response(void **state)
{
    (void)state;
    static const char resp[] =
        "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    size_t first = strlen("HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n");
    struct rec r;
    rec_init(&r, HTTP1_RESPONSE, NULL);
    http1_parser_response_to_head(r.p);
    assert_int_equal(http1_parser_feed(r.p, (const uint8_t *)resp, strlen(resp)), (ssize_t)first);
    assert_int_equal(r.last.framing, HTTP1_BODY_NONE);
    assert_int_equal(r.last.content_length, 1234);
    assert_true(r.last.keep_alive);
    assert_int_equal(r.body_len, 0);
    assert_int_equal(r.completes, 1);
    /* The next response (to a GET) has its body again. */
    http1_parser_resume(r.p);
    assert_int_equal(http1_parser_feed(r.p, (const uint8_t *)resp + first, strlen(resp) - first),
                     (ssize_t)(strlen(resp) - first));
    assert_int_equal(r.last.framing, HTTP1_BODY_LENGTH);
    assert_int_equal(r.body_len, 2);
    assert_int_equal(r.completes, 2);
    http1_parser_free(r.p);
}

/* A HEAD answer preceded by 100 Continue: the HEAD mark holds for the final response. */
static void test_interim_keeps_head_mark(void **state)
{
    (void)state;
    static const char resp[] = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n";
    struct rec r;
    rec_init(&r, HTTP1_RESPONSE, NULL);
    http1_parser_response_to_head(r.p);
    assert_int_equal(feed_all(&r, resp, strlen(resp), 0, false), 0);
    assert_string_equal(r.log,
                        "H 100 Continue 1.1 none interim\nH 200 OK 1.1 none cl=9 [Content-Length: 9]\nC\n");
    assert_int_equal(http1_parser_messages(r.p), 1);
    http1_parser_free(r.p);
}

static void test_connect_response(void **state)
{
    (void)state;
    static const char resp[] = "HTTP/1.1 200 Connection established\r\n\r\n\x16\x03\x01tunnel bytes";
    size_t head = strlen("HTTP/1.1 200 Connection established\r\n\r\n");
    struct rec r;
    rec_init(&r, HTTP1_RESPONSE, NULL);
    http1_parser_response_to_connect(r.p);
    assert_int_equal(http1_parser_feed(r.p, (const uint8_t *)resp, sizeof(resp) - 1), (ssize_t)head);
    assert_int_equal(http1_parser_state(r.p), HTTP1_P_UPGRADED);
    assert_true(r.last.upgrade);
    assert_int_equal(r.last.framing, HTTP1_BODY_NONE);
    assert_int_equal(r.completes, 1);
    assert_int_equal(r.body_len, 0);
    /* Upgraded: the rest is not HTTP and is not consumed. */
    assert_int_equal(http1_parser_feed(r.p, (const uint8_t *)resp + head, 5), 0);
    http1_parser_free(r.p);

    /* A refused CONNECT (403) is an ordinary response with its body. */
    static const char no[] = "HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno";
    rec_init(&r, HTTP1_RESPONSE, NULL);
    http1_parser_response_to_connect(r.p);
    assert_int_equal(feed_all(&r, no, strlen(no), 0, false), 0);
    assert_false(r.last.upgrade);
    assert_int_equal(r.body_len, 2);
    http1_parser_free(r.p);
}

static void test_upgrade_request(void **state)
{
    (void)state;
    static const char req[] =
        "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x05hello";
    size_t head = strlen("GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
    struct rec r;
    rec_init(&r, HTTP1_REQUEST, NULL);
    assert_int_equal(http1_parser_feed(r.p, (const uint8_t *)req, sizeof(req) - 1), (ssize_t)head);
    assert_true(r.last.upgrade);
    assert_int_equal(http1_parser_state(r.p), HTTP1_P_UPGRADED);
    assert_int_equal(r.completes, 1);
    http1_parser_free(r.p);

    /* CONNECT: upgrade, no body even with a Content-Length. */
    static const char con[] = "CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\nopaque";
    rec_init(&r, HTTP1_REQUEST, NULL);
    assert_int_equal(http1_parser_feed(r.p, (const uint8_t *)con, strlen(con)), (ssize_t)(strlen(con) - 6));
    assert_string_equal(r.log, "H CONNECT a.example:443 1.1 none upgrade [Host: a.example:443]\nC\n");
    http1_parser_free(r.p);

    /* An upgrade the server refused: resume goes on parsing HTTP/1 (the next request). */
    static const char two[] = "GET /ws HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: "
                              "websocket\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n";
    size_t first = strlen("GET /ws HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n");
    rec_init(&r, HTTP1_REQUEST, NULL);
    assert_int_equal(http1_parser_feed(r.p, (const uint8_t *)two, strlen(two)), (ssize_t)first);
    http1_parser_resume(r.p);
    assert_int_equal(http1_parser_feed(r.p, (const uint8_t *)two + first, strlen(two) - first),
                     (ssize_t)(strlen(two) - first));
    assert_int_equal(r.completes, 2);
    assert_false(r.last.upgrade);
    http1_parser_free(r.p);
}

static void test_switching_protocols(void **state)
{
    (void)state;
    static const char resp[] =
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81";
    struct rec r;
    rec_init(&r, HTTP1_RESPONSE, NULL);
    assert_int_equal(http1_parser_feed(r.p, (const uint8_t *)resp, sizeof(resp) - 1),
                     (ssize_t)(sizeof(resp) - 2));
    assert_true(r.last.upgrade);
    assert_false(r.last.interim);
    assert_int_equal(http1_parser_state(r.p), HTTP1_P_UPGRADED);
    http1_parser_free(r.p);
}

static void test_until_eof_paused(void **state)
{
    (void)state;
    /* EOF arriving while the body is paused for back-pressure still ends the message. */
    static const char resp[] = "HTTP/1.0 200 OK\r\n\r\nbody";
    struct rec r;
    rec_init(&r, HTTP1_RESPONSE, NULL);
    r.pause_body_after = 1;
    assert_int_equal(http1_parser_feed(r.p, (const uint8_t *)resp, strlen(resp)), (ssize_t)strlen(resp));
    assert_int_equal(http1_parser_state(r.p), HTTP1_P_PAUSED);
    assert_int_equal(r.last.framing, HTTP1_BODY_UNTIL_EOF);
    assert_int_equal(http1_parser_finish(r.p), 0);
    assert_int_equal(r.completes, 1);
    assert_int_equal(http1_parser_state(r.p), HTTP1_P_CLOSED);
    http1_parser_free(r.p);
}

/* ---- limits ---- */

static void test_limits(void **state)
{
    (void)state;
    struct http1_parser_limits lim = {
        .max_head_bytes = 200, .max_headers = 3, .max_target = 16, .max_body = 8};
    struct {
        const char *in;
        int status;
    } t[] = {
        {"GET /123456789abcdef HTTP/1.1\r\nHost: h\r\n\r\n", 0},    /* target of exactly 16 */
        {"GET /0123456789abcdef HTTP/1.1\r\nHost: h\r\n\r\n", 414}, /* 17 */
        {"GET / HTTP/1.1\r\nHost: h\r\nB: 2\r\nC: 3\r\n\r\n", 0},
        {"GET / HTTP/1.1\r\nHost: h\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n", 431},
        {"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 8\r\n\r\n12345678", 0},
        {"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 9\r\n\r\n123456789", 413},
        {"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: "
         "chunked\r\n\r\n5\r\n12345\r\n4\r\n6789\r\n0\r\n\r\n",
         413},
        {"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\nA: 1\r\nB: 2\r\nC: "
         "3\r\nD: "
         "4\r\n\r\n",
         431},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        for (size_t split = 0; split <= 3; split++) {
            struct rec r;
            rec_init(&r, HTTP1_REQUEST, &lim);
            int st = feed_all(&r, t[i].in, strlen(t[i].in), split, false);
            if (st != t[i].status) print_error("limit case %zu split %zu: %d\n", i, split, st);
            assert_int_equal(st, t[i].status);
            http1_parser_free(r.p);
        }
    }
    /* A header block over max_head_bytes: a long value, and whitespace llhttp skips without a callback. */
    char big[512];
    snprintf(big, sizeof(big), "GET / HTTP/1.1\r\nX: %0300d\r\n\r\n", 0);
    char ws[512];
    int n = snprintf(ws, sizeof(ws), "GET / HTTP/1.1\r\nX:");
    memset(ws + n, ' ', 300);
    for (size_t split = 0; split <= 1; split++) {
        struct rec r;
        rec_init(&r, HTTP1_REQUEST, &lim);
        assert_int_equal(feed_all(&r, big, strlen(big), split, false), 431);
        http1_parser_free(r.p);
        rec_init(&r, HTTP1_REQUEST, &lim);
        assert_int_equal(feed_all(&r, ws, (size_t)n + 300, split ? 7 : 0, false), 431);
        http1_parser_free(r.p);
    }
}

/* The defaults: 100 fields pass, 101 get 431; 60 KiB of head. */
static void test_default_limits(void **state)
{
    (void)state;
    size_t cap = 200000;
    char *buf = malloc(cap);
    assert_non_null(buf);
    for (int count = 100; count <= 101; count++) {
        size_t n = (size_t)snprintf(buf, cap, "GET / HTTP/1.1\r\nHost: h\r\n");
        for (int i = 1; i < count; i++)
            n += (size_t)snprintf(buf + n, cap - n, "X-%d: v\r\n", i);
        n += (size_t)snprintf(buf + n, cap - n, "\r\n");
        struct rec r;
        rec_init(&r, HTTP1_REQUEST, NULL);
        assert_int_equal(feed_all(&r, buf, n, 0, false), count == 100 ? 0 : 431);
        if (count == 100) assert_int_equal(r.last.n_headers, 100);
        http1_parser_free(r.p);
    }
    for (size_t vlen = 60 * 1024 - 64; vlen <= 60 * 1024 + 64; vlen += 128) {
        size_t n = (size_t)snprintf(buf, cap, "GET / HTTP/1.1\r\nHost: h\r\nX-Big: ");
        memset(buf + n, 'v', vlen);
        n += vlen;
        n += (size_t)snprintf(buf + n, cap - n, "\r\n\r\n");
        struct rec r;
        rec_init(&r, HTTP1_REQUEST, NULL);
        assert_int_equal(feed_all(&r, buf, n, 4096, false), vlen < 60 * 1024 ? 0 : 431);
        http1_parser_free(r.p);
    }
    free(buf);
}

/* Chunk extensions are dropped but bounded (4 KiB per chunk); an HTTP/1.0 Expect means nothing. */
static void test_chunk_extensions(void **state)
{
    (void)state;
    static char buf[16384];
    for (size_t ext = 4000; ext <= 5000; ext += 1000) {
        int n = snprintf(buf, sizeof(buf),
                         "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1;x=");
        memset(buf + n, 'a', ext);
        n += (int)ext;
        n += snprintf(buf + n, sizeof(buf) - (size_t)n, "\r\nz\r\n0\r\n\r\n");
        for (size_t split = 0; split <= 1000; split += 1000) {
            struct rec r;
            rec_init(&r, HTTP1_REQUEST, NULL);
            assert_int_equal(feed_all(&r, buf, (size_t)n, split, false), ext < 4092 ? 0 : 400);
            assert_int_equal(r.completes, ext < 4092 ? 1 : 0);
            http1_parser_free(r.p);
        }
    }
    struct rec r;
    rec_init(&r, HTTP1_REQUEST, NULL);
    static const char old[] = "POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx";
    assert_int_equal(feed_all(&r, old, strlen(old), 0, false), 0);
    assert_false(r.last.expect_continue);
    http1_parser_free(r.p);
}

/* A header name split across feeds at every point arrives whole (table cases cover this too; this checks the
 * name pointer and length seen by on_head directly). */
static void test_split_name(void **state)
{
    (void)state;
    static const char req[] = "GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-Client-Cert: By=spiffe://a\r\n\r\n";
    size_t at = strlen("GET / HTTP/1.1\r\nHost: h\r\nX-Forw");
    struct rec r;
    rec_init(&r, HTTP1_REQUEST, NULL);
    assert_int_equal(http1_parser_feed(r.p, (const uint8_t *)req, at), (ssize_t)at);
    assert_int_equal(http1_parser_state(r.p), HTTP1_P_HEAD);
    assert_int_equal(http1_parser_feed(r.p, (const uint8_t *)req + at, strlen(req) - at),
                     (ssize_t)(strlen(req) - at));
    assert_string_equal(r.log, "H GET / 1.1 none [Host: h] [X-Forwarded-Client-Cert: By=spiffe://a]\nC\n");
    http1_parser_free(r.p);
}

/* ---- serializers ---- */

static void test_write_heads(void **state)
{
    (void)state;
    struct http1_out o = {0};
    const struct http1_hdr h[] = {
        {"Host", 4, "b.example", 9},
        {"Content-Length", 14, "99", 2},         /* skipped: framing decides */
        {"transfer-encoding", 17, "chunked", 7}, /* skipped */
        {"X-Empty", 7, "", 0},
    };
    assert_int_equal(http1_write_request_head(&o, "POST", 4, "/p?q=1", 6, h, 4, HTTP1_BODY_LENGTH, 12), 0);
    static const char want1[] =
        "POST /p?q=1 HTTP/1.1\r\nHost: b.example\r\nX-Empty: \r\ncontent-length: 12\r\n\r\n";
    assert_int_equal(o.n, strlen(want1));
    assert_memory_equal(o.p, want1, o.n);
    http1_out_reset(&o);
    assert_int_equal(http1_write_request_head(&o, "GET", 3, "/", 1, h, 1, HTTP1_BODY_NONE, 0), 0);
    assert_int_equal(o.n, strlen("GET / HTTP/1.1\r\nHost: b.example\r\n\r\n"));
    assert_memory_equal(o.p, "GET / HTTP/1.1\r\nHost: b.example\r\n\r\n", o.n);
    http1_out_reset(&o);
    assert_int_equal(http1_write_request_head(&o, "PUT", 3, "/c", 2, NULL, 0, HTTP1_BODY_CHUNKED, 0), 0);
    assert_int_equal(o.n, strlen("PUT /c HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n"));
    assert_memory_equal(o.p, "PUT /c HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n", o.n);

    http1_out_reset(&o);
    assert_int_equal(http1_write_response_head(&o, 503, NULL, h, 1, HTTP1_BODY_LENGTH, 19), 0);
    static const char want2[] =
        "HTTP/1.1 503 Service Unavailable\r\nHost: b.example\r\ncontent-length: 19\r\n\r\n";
    assert_int_equal(o.n, strlen(want2));
    assert_memory_equal(o.p, want2, o.n);
    http1_out_reset(&o);
    assert_int_equal(http1_write_response_head(&o, 200, "Fine", NULL, 0, HTTP1_BODY_UNTIL_EOF, 0), 0);
    assert_int_equal(o.n, strlen("HTTP/1.1 200 Fine\r\n\r\n"));
    assert_memory_equal(o.p, "HTTP/1.1 200 Fine\r\n\r\n", o.n);

    /* Bad input: the buffer is unchanged. */
    size_t before = o.n;
    const struct http1_hdr crlf[] = {{"X", 1, "a\r\nInjected: 1", 14}};
    const struct http1_hdr badname[] = {{"X Y", 3, "v", 1}};
    const struct http1_hdr nul[] = {{"X", 1, "a\0b", 3}};
    assert_int_equal(http1_write_response_head(&o, 200, NULL, crlf, 1, HTTP1_BODY_NONE, 0), -EINVAL);
    assert_int_equal(http1_write_response_head(&o, 200, NULL, badname, 1, HTTP1_BODY_NONE, 0), -EINVAL);
    assert_int_equal(http1_write_response_head(&o, 200, NULL, nul, 1, HTTP1_BODY_NONE, 0), -EINVAL);
    assert_int_equal(http1_write_response_head(&o, 200, "bad\nreason", NULL, 0, HTTP1_BODY_NONE, 0), -EINVAL);
    assert_int_equal(http1_write_response_head(&o, 99, NULL, NULL, 0, HTTP1_BODY_NONE, 0), -EINVAL);
    assert_int_equal(http1_write_request_head(&o, "GET", 3, "/a b", 4, NULL, 0, HTTP1_BODY_NONE, 0), -EINVAL);
    assert_int_equal(http1_write_request_head(&o, "G(T", 3, "/", 1, NULL, 0, HTTP1_BODY_NONE, 0), -EINVAL);
    assert_int_equal(http1_write_request_head(&o, "GET", 3, "/", 1, NULL, 0, HTTP1_BODY_UNTIL_EOF, 0),
                     -EINVAL);
    assert_int_equal(http1_write_request_head(&o, "GET", 3, "/", 1, crlf, 1, HTTP1_BODY_NONE, 0), -EINVAL);
    assert_int_equal(o.n, before);
    http1_out_free(&o);
    assert_null(o.p);
}

static void test_write_chunks(void **state)
{
    (void)state;
    struct http1_out o = {0};
    assert_int_equal(http1_write_chunk_header(&o, 26), 0);
    assert_int_equal(http1_out_append(&o, "abcdefghijklmnopqrstuvwxyz", 26), 0);
    assert_int_equal(http1_write_chunk_end(&o), 0);
    assert_int_equal(http1_write_chunk_header(&o, 4096), 0);
    assert_int_equal(http1_write_chunk_header(&o, 0), -EINVAL);
    const struct http1_hdr t[] = {{"grpc-status", 11, "0", 1}, {"grpc-message", 12, "", 0}};
    http1_out_reset(&o);
    assert_int_equal(http1_write_last_chunk(&o, t, 2), 0);
    assert_int_equal(o.n, strlen("0\r\ngrpc-status: 0\r\ngrpc-message: \r\n\r\n"));
    assert_memory_equal(o.p, "0\r\ngrpc-status: 0\r\ngrpc-message: \r\n\r\n", o.n);
    http1_out_reset(&o);
    assert_int_equal(http1_write_last_chunk(&o, NULL, 0), 0);
    assert_int_equal(o.n, 5);
    assert_memory_equal(o.p, "0\r\n\r\n", 5);
    const struct http1_hdr bad[] = {{"x", 1, "\r\n", 2}};
    assert_int_equal(http1_write_last_chunk(&o, bad, 1), -EINVAL);
    assert_int_equal(o.n, 5);

    /* Round trip: what the serializers write, the parser reads back to the same message. */
    http1_out_reset(&o);
    const struct http1_hdr h[] = {{"Host", 4, "r", 1}};
    assert_int_equal(http1_write_request_head(&o, "POST", 4, "/rt", 3, h, 1, HTTP1_BODY_CHUNKED, 0), 0);
    assert_int_equal(http1_write_chunk_header(&o, 3), 0);
    assert_int_equal(http1_out_append(&o, "xyz", 3), 0);
    assert_int_equal(http1_write_chunk_end(&o), 0);
    assert_int_equal(http1_write_last_chunk(&o, t, 1), 0);
    struct rec r;
    rec_init(&r, HTTP1_REQUEST, NULL);
    assert_int_equal(feed_all(&r, o.p, o.n, 1, false), 0);
    assert_string_equal(
        r.log, "H POST /rt 1.1 chunked [Host: r] [transfer-encoding: chunked]\nT [grpc-status: 0]\nC\n");
    assert_int_equal(r.body_len, 3);
    assert_memory_equal(r.body, "xyz", 3);
    http1_parser_free(r.p);

    /* Chunk sizes in hex. */
    http1_out_reset(&o);
    assert_int_equal(http1_write_chunk_header(&o, 0xabc), 0);
    assert_int_equal(o.n, 5);
    assert_memory_equal(o.p, "abc\r\n", 5);
    http1_out_free(&o);
}

/* ---- helpers ---- */

static void test_hop_by_hop(void **state)
{
    (void)state;
    static const char cv[] = "close, x-foo ,,X-Bar";
    struct {
        const char *name;
        bool hop;
    } t[] = {
        {"Connection", true},
        {"keep-alive", true},
        {"Proxy-Connection", true},
        {"TE", true},
        {"Transfer-Encoding", true},
        {"UPGRADE", true},
        {"Trailer", true},
        {"X-Foo", true},
        {"x-bar", true},
        {"close", true}, /* named by Connection too (a token, whatever it means) */
        {"x-fo", false},
        {"x-foo2", false},
        {"Proxy-Authorization", false},
        {"Proxy-Authenticate", false},
        {"Host", false},
        {"Content-Length", false},
        {"Trailers", false},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        bool got = http1_hop_by_hop(t[i].name, strlen(t[i].name), cv, strlen(cv));
        if (got != t[i].hop) print_error("%s: %d\n", t[i].name, got);
        assert_int_equal(got, t[i].hop);
    }
    assert_false(http1_hop_by_hop("X-Foo", 5, NULL, 0));
    assert_true(http1_hop_by_hop("te", 2, NULL, 0));
}

static void test_reason_and_methods(void **state)
{
    (void)state;
    assert_string_equal(http1_reason_phrase(200), "OK");
    assert_string_equal(http1_reason_phrase(431), "Request Header Fields Too Large");
    assert_string_equal(http1_reason_phrase(505), "HTTP Version Not Supported");
    assert_string_equal(http1_reason_phrase(413), "Content Too Large");
    assert_string_equal(http1_reason_phrase(799), "Unknown");
    bool safe = true;
    assert_true(http1_method_idempotent("PUT", 3, &safe));
    assert_false(safe);
    assert_true(http1_method_idempotent("GET", 3, &safe));
    assert_true(safe);
    assert_false(http1_method_idempotent("POST", 4, &safe));
    assert_false(safe);
    assert_false(http1_method_idempotent("get", 3, NULL));
    assert_string_equal(http1_parser_state_to_str(HTTP1_P_UPGRADED), "upgraded");
    assert_string_equal(http1_framing_to_str(HTTP1_BODY_UNTIL_EOF), "until-eof");
    assert_null(http1_parser_new(HTTP1_REQUEST, NULL, &(struct http1_parser_ops){0}, NULL));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_pipelined),
        cmocka_unit_test(test_body_back_pressure),
        cmocka_unit_test(test_pause_mid_feed),
        cmocka_unit_test(test_pause_head_then_empty_feed),
        cmocka_unit_test(test_finish_while_head_paused),
        cmocka_unit_test(test_callback_failure),
        cmocka_unit_test(test_head_response),
        cmocka_unit_test(test_interim_keeps_head_mark),
        cmocka_unit_test(test_connect_response),
        cmocka_unit_test(test_upgrade_request),
        cmocka_unit_test(test_switching_protocols),
        cmocka_unit_test(test_until_eof_paused),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_default_limits),
        cmocka_unit_test(test_split_name),
        cmocka_unit_test(test_chunk_extensions),
        cmocka_unit_test(test_write_heads),
        cmocka_unit_test(test_write_chunks),
        cmocka_unit_test(test_hop_by_hop),
        cmocka_unit_test(test_reason_and_methods),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
