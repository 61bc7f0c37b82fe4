/* libFuzzer target for the waypoint's streaming HTTP/1.1 codec (src/http1/codec.c): the bytes as a request
 * stream or a response stream, fed in fuzzer-chosen splits, with body callbacks that pause at fuzzer-chosen
 * points and a caller that resumes after every pause and message end, as the waypoint's proxy drives it.
 * Checked, besides no crash, leak or UB (ASan/UBSan, every byte of every head and body span is read):
 *   - feed never reports more bytes consumed than it was given, and makes progress unless paused, done,
 *     upgraded or failed;
 *   - a failed parse has a status among 400/413/414/431/501/505 and a reason;
 *   - a head respects the limits (fields, target) and its framing agrees with its flags;
 *   - every head re-serialized with http1_write_request_head / http1_write_response_head parses back to the
 *     same start line and the same fields (Content-Length and Transfer-Encoding aside, which framing
 *     decides);
 *   - on_complete runs exactly as often as http1_parser_messages says.
 * Not covered: sockets and the proxy's use of the codec.
 *
 * Input: byte 0 bit 0 picks requests (0) or responses (1), bit 1 marks responses as answering HEAD, bit 2
 * answering CONNECT, bit 3 small limits (200-byte head, 4 fields, 16-byte target, 64-byte body); byte 1
 * seeds the split sizes and pauses (0: whole); the rest is the stream, ended by the peer's EOF.
 *
 * Build: `make fuzz-build`; run: build/fuzz/fuzz_http1_codec -max_total_time=10
 * tests/fuzz/corpus/fuzz_http1_codec Seeds: tests/fuzz/corpus/fuzz_http1_codec/ (a pipelined pair, chunked
 * with trailers, 100 then 200, HEAD, CONNECT, an upgrade). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http1/codec.h"

struct fz {
    struct http1_parser *p;
    enum http1_kind kind;
    const struct http1_parser_limits *lim;
    uint32_t rng;
    uint64_t completes;
    volatile uint8_t sink;
    bool check_roundtrip;
    /* the round trip's second parse */
    const struct http1_head *want;
    int got;
};

static uint32_t fz_next(struct fz *f)
{
    f->rng = f->rng * 1103515245u + 12345u;
    return f->rng >> 16;
}

static void fz_touch(struct fz *f, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        f->sink ^= b[i];
}

static bool fz_framing_header(const struct http1_hdr *h)
{
    return http1_name_is(h->name, h->name_len, "content-length") ||
           http1_name_is(h->name, h->name_len, "transfer-encoding");
}

/* The fields of a and b, framing ones aside, are the same list. */
static bool fz_same_fields(const struct http1_head *a, const struct http1_head *b)
{
    size_t i = 0, j = 0;
    for (;;) {
        while (i < a->n_headers && fz_framing_header(&a->headers[i]))
            i++;
        while (j < b->n_headers && fz_framing_header(&b->headers[j]))
            j++;
        if (i == a->n_headers || j == b->n_headers) return i == a->n_headers && j == b->n_headers;
        const struct http1_hdr *x = &a->headers[i++], *y = &b->headers[j++];
        if (x->name_len != y->name_len || memcmp(x->name, y->name, x->name_len) ||
            x->value_len != y->value_len || memcmp(x->value, y->value, x->value_len))
            return false;
    }
}

static int rt_head(void *ud, const struct http1_head *h)
{
    struct fz *f = ud;
    const struct http1_head *w = f->want;
    if (w->method) {
        if (h->method_len != w->method_len || memcmp(h->method, w->method, h->method_len) ||
            h->target_len != w->target_len || memcmp(h->target, w->target, h->target_len))
            abort();
    } else if (h->status != w->status || h->reason_len != w->reason_len ||
               memcmp(h->reason, w->reason, h->reason_len)) {
        abort();
    }
    if (!fz_same_fields(w, h)) abort();
    f->got++;
    return HTTP1_PAUSE;
}

static int rt_complete(void *ud)
{
    (void)ud;
    return 0;
}

/* Writes h back out and parses the result with a fresh parser of the same kind. */
static void fz_roundtrip(struct fz *f, const struct http1_head *h)
{
    struct http1_out o = {0};
    if (f->kind == HTTP1_REQUEST && h->framing == HTTP1_BODY_UNTIL_EOF)
        abort(); /* requests never read until EOF */
    int r;
    if (f->kind == HTTP1_REQUEST) {
        /* The writer speaks HTTP/1.1, which needs Host; an HTTP/1.0 request may lack it, and then its
         * forwarder must add one (the parser would rightly refuse the written head). */
        bool host = false;
        for (size_t i = 0; i < h->n_headers; i++)
            if (http1_name_is(h->headers[i].name, h->headers[i].name_len, "host")) host = true;
        if (!host) return;
        r = http1_write_request_head(&o, h->method, h->method_len, h->target, h->target_len, h->headers,
                                     h->n_headers, h->framing, h->content_length);
    } else {
        /* The writer takes a NUL-terminated reason; a reason llhttp accepted has no NUL. */
        char reason[1024];
        if (h->reason_len >= sizeof(reason)) return;
        if (memchr(h->reason, '\0', h->reason_len)) abort();
        memcpy(reason, h->reason, h->reason_len);
        reason[h->reason_len] = '\0';
        r = http1_write_response_head(&o, h->status, reason, h->headers, h->n_headers, h->framing,
                                      h->content_length);
    }
    if (r) abort(); /* whatever the parser accepted, the writer can write */
    struct fz g = {.kind = f->kind, .want = h};
    struct http1_parser_ops ops = {.on_head = rt_head, .on_complete = rt_complete};
    struct http1_parser_limits big = {.max_head_bytes = 4 * HTTP1_MAX_HEAD_BYTES,
                                      .max_headers = 4 * HTTP1_MAX_HEADERS,
                                      .max_target = 4 * HTTP1_MAX_TARGET};
    struct http1_parser *q = http1_parser_new(f->kind, &big, &ops, &g);
    if (!q) abort();
    if (http1_parser_feed(q, (const uint8_t *)o.p, o.n) < 0 || g.got != 1) abort();
    http1_parser_free(q);
    http1_out_free(&o);
}

static int fz_head(void *ud, const struct http1_head *h)
{
    struct fz *f = ud;
    size_t max_headers = f->lim ? f->lim->max_headers : HTTP1_MAX_HEADERS;
    size_t max_target = f->lim ? f->lim->max_target : HTTP1_MAX_TARGET;
    if (h->n_headers > max_headers || h->target_len > max_target) abort();
    if (h->version_minor != 0 && h->version_minor != 1) abort();
    if (f->kind == HTTP1_REQUEST ? !h->method || !h->method_len : h->status < 100 || h->status > 599) abort();
    if (h->framing == HTTP1_BODY_LENGTH && (!h->has_content_length || !h->content_length)) abort();
    if (h->interim && (h->framing != HTTP1_BODY_NONE || h->upgrade)) abort();
    fz_touch(f, h->method, h->method_len);
    fz_touch(f, h->target, h->target_len);
    fz_touch(f, h->reason, h->reason_len);
    for (size_t i = 0; i < h->n_headers; i++) {
        fz_touch(f, h->headers[i].name, h->headers[i].name_len);
        fz_touch(f, h->headers[i].value, h->headers[i].value_len);
    }
    if (f->check_roundtrip) fz_roundtrip(f, h);
    return (fz_next(f) & 7) == 0 ? HTTP1_PAUSE : 0;
}

static int fz_body(void *ud, const uint8_t *p, size_t n)
{
    struct fz *f = ud;
    if (!n) abort();
    fz_touch(f, p, n);
    return (fz_next(f) & 3) == 0 ? HTTP1_PAUSE : 0;
}

static int fz_trailers(void *ud, const struct http1_hdr *t, size_t n)
{
    struct fz *f = ud;
    for (size_t i = 0; i < n; i++) {
        fz_touch(f, t[i].name, t[i].name_len);
        fz_touch(f, t[i].value, t[i].value_len);
    }
    return 0;
}

static int fz_complete(void *ud)
{
    struct fz *f = ud;
    f->completes++;
    return 0;
}

static void fz_check_error(struct http1_parser *p)
{
    const char *why = NULL;
    int st = http1_parser_error(p, &why);
    if (!why || (st != 400 && st != 413 && st != 414 && st != 431 && st != 501 && st != 505)) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const struct http1_parser_limits small = {
        .max_head_bytes = 200, .max_headers = 4, .max_target = 16, .max_body = 64};
    if (size < 2) return 0;
    struct fz f = {
        .kind = (data[0] & 1) ? HTTP1_RESPONSE : HTTP1_REQUEST, .rng = data[1], .check_roundtrip = true};
    f.lim = (data[0] & 8) ? &small : NULL;
    bool whole = data[1] == 0;
    static const struct http1_parser_ops ops = {fz_head, fz_body, fz_trailers, fz_complete};
    f.p = http1_parser_new(f.kind, f.lim, &ops, &f);
    if (!f.p) abort();
    if (data[0] & 2) http1_parser_response_to_head(f.p);
    if (data[0] & 4) http1_parser_response_to_connect(f.p);
    const uint8_t *in = data + 2;
    size_t n = size - 2, off = 0;
    bool failed = false, stopped = false;
    while (off < n && !failed && !stopped) {
        size_t piece = whole ? n - off : 1 + fz_next(&f) % 64;
        if (piece > n - off) piece = n - off;
        size_t used = 0;
        for (;;) {
            ssize_t r = http1_parser_feed(f.p, in + off + used, piece - used);
            if (r < 0) {
                fz_check_error(f.p);
                failed = true;
                break;
            }
            if ((size_t)r > piece - used) abort();
            used += (size_t)r;
            enum http1_parser_state st = http1_parser_state(f.p);
            if (st == HTTP1_P_PAUSED || st == HTTP1_P_DONE) {
                http1_parser_resume(f.p);
                if ((data[0] & 1) && st == HTTP1_P_DONE && (fz_next(&f) & 1))
                    http1_parser_response_to_head(f.p);
                continue;
            }
            if (st == HTTP1_P_UPGRADED) {
                /* Half the time the upgrade is refused and HTTP/1 goes on; else the rest is a tunnel. */
                if (fz_next(&f) & 1) {
                    stopped = true;
                    break;
                }
                http1_parser_resume(f.p);
                continue;
            }
            if (used != piece) abort(); /* not paused, not failed: everything was consumed */
            break;
        }
        off += used;
    }
    if (!failed && !stopped && http1_parser_finish(f.p) < 0) fz_check_error(f.p);
    if (f.completes != http1_parser_messages(f.p)) abort();
    http1_parser_free(f.p);
    return 0;
}
