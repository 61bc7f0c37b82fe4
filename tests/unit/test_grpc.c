/* Unit tests for gRPC (src/h2/grpc.c, grpc_wire.c): the wire rules, and calls between a zmesh client and a zmesh server on
 * one loop over h2c on loopback (grpc.c). Interoperability with grpcio is tests/e2e/test_grpc.py's. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>

#include "core/net.h"
#include "h2/grpc.h"
#include "tls/ca.h"
#include "tls/tls.h"
#include "h2/grpc_wire.h"

static void test_status_names(void **state)
{
    (void)state;
    /* grpc's names and numbers (include/grpc/status.h). */
    assert_int_equal(GRPC_STATUS_DEADLINE_EXCEEDED, 4);
    assert_int_equal(GRPC_STATUS_RESOURCE_EXHAUSTED, 8);
    assert_int_equal(GRPC_STATUS_UNIMPLEMENTED, 12);
    assert_int_equal(GRPC_STATUS_INTERNAL, 13);
    assert_int_equal(GRPC_STATUS_UNAVAILABLE, 14);
    assert_int_equal(GRPC_STATUS_UNAUTHENTICATED, 16);
    assert_string_equal(grpc_status_to_str(GRPC_STATUS_OK), "OK");
    assert_string_equal(grpc_status_to_str(GRPC_STATUS_FAILED_PRECONDITION), "FAILED_PRECONDITION");
    assert_string_equal(grpc_status_to_str(GRPC_STATUS_UNAUTHENTICATED), "UNAUTHENTICATED");
    assert_string_equal(grpc_status_to_str((enum grpc_status)17), "?");

    enum grpc_status s;
    assert_true(grpc_status_parse("0", 1, &s));
    assert_int_equal(s, GRPC_STATUS_OK);
    assert_true(grpc_status_parse("16", 2, &s));
    assert_int_equal(s, GRPC_STATUS_UNAUTHENTICATED);
    /* Not a code: UNKNOWN. */
    assert_false(grpc_status_parse("17", 2, &s));
    assert_int_equal(s, GRPC_STATUS_UNKNOWN);
    assert_false(grpc_status_parse("", 0, &s));
    assert_false(grpc_status_parse("04", 2, &s));
    assert_false(grpc_status_parse("1x", 2, &s));
    assert_false(grpc_status_parse("-1", 2, &s));
    assert_false(grpc_status_parse("100", 3, &s));
    assert_int_equal(s, GRPC_STATUS_UNKNOWN);
}

/* ---- deframer ---- */

struct got {
    int n;
    size_t lens[16];
    uint8_t data[16][64];
    int stop_after; /* return non-zero after this many messages (0 = never) */
};

static int on_msg(void *ud, const uint8_t *p, size_t n)
{
    struct got *g = ud;
    g->lens[g->n] = n;
    memcpy(g->data[g->n], p, n < 64 ? n : 64);
    g->n++;
    return g->stop_after && g->n >= g->stop_after;
}

/* Three messages (one empty) in one buffer. */
static size_t make_stream(uint8_t *out)
{
    size_t o = 0;
    grpc_frame_header(out + o, false, 3);
    o += 5;
    memcpy(out + o, "abc", 3);
    o += 3;
    grpc_frame_header(out + o, false, 0);
    o += 5;
    grpc_frame_header(out + o, false, 10);
    o += 5;
    memcpy(out + o, "0123456789", 10);
    o += 10;
    return o;
}

static void check_three(const struct got *g)
{
    assert_int_equal(g->n, 3);
    assert_int_equal(g->lens[0], 3);
    assert_memory_equal(g->data[0], "abc", 3);
    assert_int_equal(g->lens[1], 0);
    assert_int_equal(g->lens[2], 10);
    assert_memory_equal(g->data[2], "0123456789", 10);
}

static void test_frame_header(void **state)
{
    (void)state;
    uint8_t h[5];
    grpc_frame_header(h, false, 0x01020304);
    assert_memory_equal(h, "\x00\x01\x02\x03\x04", 5);
    grpc_frame_header(h, true, 200u << 20);
    assert_memory_equal(h, "\x01\x0c\x80\x00\x00", 5);
}

/* Every split of the stream into 1, 2 and 3 chunks, and byte by byte, gives the same three messages. */
static void test_deframer_chunking(void **state)
{
    (void)state;
    uint8_t s[64];
    size_t n = make_stream(s);
    char err[128];
    for (size_t a = 0; a <= n; a++) {
        for (size_t b = a; b <= n; b++) {
            struct grpc_deframer d;
            struct got g = {0};
            grpc_deframer_init(&d, 0);
            assert_int_equal(grpc_deframer_feed(&d, s, a, on_msg, &g, err, sizeof(err)), GRPC_STATUS_OK);
            assert_int_equal(grpc_deframer_feed(&d, s + a, b - a, on_msg, &g, err, sizeof(err)),
                             GRPC_STATUS_OK);
            assert_int_equal(grpc_deframer_feed(&d, s + b, n - b, on_msg, &g, err, sizeof(err)),
                             GRPC_STATUS_OK);
            check_three(&g);
            assert_false(grpc_deframer_partial(&d));
            assert_int_equal(grpc_deframer_finish(&d, err, sizeof(err)), GRPC_STATUS_OK);
            assert_int_equal(d.messages, 3);
            grpc_deframer_free(&d);
        }
    }
    struct grpc_deframer d;
    struct got g = {0};
    grpc_deframer_init(&d, 0);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(grpc_deframer_feed(&d, s + i, 1, on_msg, &g, err, sizeof(err)), GRPC_STATUS_OK);
    check_three(&g);
    grpc_deframer_free(&d);
}

/* A callback that asks to stop ends feeding at once. */
static void test_deframer_stop(void **state)
{
    (void)state;
    uint8_t s[64];
    size_t n = make_stream(s);
    char err[128];
    struct grpc_deframer d;
    struct got g = {.stop_after = 1};
    grpc_deframer_init(&d, 0);
    assert_int_equal(grpc_deframer_feed(&d, s, n, on_msg, &g, err, sizeof(err)), GRPC_STATUS_OK);
    assert_int_equal(g.n, 1);
    grpc_deframer_free(&d);
}

/* Over the limit: RESOURCE_EXHAUSTED with grpc's message, as soon as the prefix is seen (nothing of the body
 * is buffered); exactly the limit passes. */
static void test_deframer_max(void **state)
{
    (void)state;
    char err[128];
    struct grpc_deframer d;
    struct got g = {0};
    uint8_t h[5];
    grpc_deframer_init(&d, 10);
    grpc_frame_header(h, false, 11);
    assert_int_equal(grpc_deframer_feed(&d, h, 5, on_msg, &g, err, sizeof(err)),
                     GRPC_STATUS_RESOURCE_EXHAUSTED);
    assert_string_equal(err, "grpc: received message larger than max (11 vs. 10)");
    assert_null(d.buf);
    grpc_deframer_free(&d);

    grpc_deframer_init(&d, 10);
    uint8_t s[15];
    grpc_frame_header(s, false, 10);
    memset(s + 5, 'x', 10);
    assert_int_equal(grpc_deframer_feed(&d, s, 15, on_msg, &g, err, sizeof(err)), GRPC_STATUS_OK);
    assert_int_equal(g.n, 1);
    grpc_deframer_free(&d);

    /* The default is grpc's 4 MiB; Istio's xDS limit is 200 MiB. */
    grpc_deframer_init(&d, 0);
    assert_int_equal(d.max_len, 4u << 20);
    grpc_deframer_init(&d, GRPC_XDS_MAX_MSG);
    grpc_frame_header(h, false, 200u << 20);
    assert_int_equal(grpc_deframer_feed(&d, h, 5, on_msg, &g, err, sizeof(err)), GRPC_STATUS_OK);
    /* A peer that announces 200 MiB and sends 3 bytes made us allocate a small buffer, not 200 MiB. */
    assert_int_equal(grpc_deframer_feed(&d, (const uint8_t *)"abc", 3, on_msg, &g, err, sizeof(err)),
                     GRPC_STATUS_OK);
    assert_true(d.buf_cap <= 4096);
    assert_true(grpc_deframer_partial(&d));
    grpc_deframer_free(&d);

    assert_int_equal(grpc_check_send_size(11, 10, err, sizeof(err)), GRPC_STATUS_RESOURCE_EXHAUSTED);
    assert_string_equal(err, "grpc: trying to send message larger than max (11 vs. 10)");
    assert_int_equal(grpc_check_send_size(10, 10, err, sizeof(err)), GRPC_STATUS_OK);
    assert_int_equal(grpc_check_send_size(1u << 30, 0, err, sizeof(err)), GRPC_STATUS_OK);
}

/* A large message collected over many chunks arrives intact. */
static void test_deframer_large(void **state)
{
    (void)state;
    size_t len = 1u << 20;
    uint8_t *s = malloc(len + 5);
    assert_non_null(s);
    grpc_frame_header(s, false, (uint32_t)len);
    for (size_t i = 0; i < len; i++)
        s[5 + i] = (uint8_t)(i * 7);
    struct grpc_deframer d;
    struct got g = {0};
    char err[128];
    grpc_deframer_init(&d, 2u << 20);
    for (size_t o = 0; o < len + 5; o += 1000) {
        size_t k = len + 5 - o < 1000 ? len + 5 - o : 1000;
        assert_int_equal(grpc_deframer_feed(&d, s + o, k, on_msg, &g, err, sizeof(err)), GRPC_STATUS_OK);
    }
    assert_int_equal(g.n, 1);
    assert_int_equal(g.lens[0], len);
    assert_memory_equal(g.data[0], s + 5, 64);
    /* The buffer of a message over 64 KiB is not kept. */
    assert_null(d.buf);
    grpc_deframer_free(&d);
    free(s);
}

/* The compressed flag: without grpc-encoding INTERNAL (grpc-go's message); with an encoding we cannot
 * decompress UNIMPLEMENTED; a flag other than 0/1 INTERNAL. */
static void test_deframer_compressed(void **state)
{
    (void)state;
    char err[128];
    struct grpc_deframer d;
    struct got g = {0};
    uint8_t h[5];
    grpc_frame_header(h, true, 1);
    grpc_deframer_init(&d, 0);
    assert_int_equal(grpc_deframer_feed(&d, h, 5, on_msg, &g, err, sizeof(err)), GRPC_STATUS_INTERNAL);
    assert_string_equal(err, "grpc: compressed flag set with identity or empty encoding");
    grpc_deframer_init(&d, 0);
    d.encoding_set = true;
    assert_int_equal(grpc_deframer_feed(&d, h, 5, on_msg, &g, err, sizeof(err)), GRPC_STATUS_UNIMPLEMENTED);
    h[0] = 2;
    grpc_deframer_init(&d, 0);
    assert_int_equal(grpc_deframer_feed(&d, h, 5, on_msg, &g, err, sizeof(err)), GRPC_STATUS_INTERNAL);
    assert_string_equal(err, "grpc: received unexpected payload format 2");
    assert_int_equal(g.n, 0);
}

/* The stream ending inside a prefix or a body is INTERNAL. */
static void test_deframer_truncated(void **state)
{
    (void)state;
    char err[128];
    struct grpc_deframer d;
    struct got g = {0};
    uint8_t s[10];
    grpc_frame_header(s, false, 5);
    memcpy(s + 5, "abcde", 5);
    for (size_t cut = 1; cut < 10; cut++) {
        grpc_deframer_init(&d, 0);
        assert_int_equal(grpc_deframer_feed(&d, s, cut, on_msg, &g, err, sizeof(err)), GRPC_STATUS_OK);
        assert_int_equal(grpc_deframer_finish(&d, err, sizeof(err)), GRPC_STATUS_INTERNAL);
        assert_non_null(strstr(err, "unexpected EOF"));
        grpc_deframer_free(&d);
    }
    assert_int_equal(g.n, 0);
}

/* ---- grpc-timeout ---- */

static void test_timeout_parse(void **state)
{
    (void)state;
    static const struct {
        const char *v;
        uint64_t ns;
    } ok[] = {
        {"1n", 1},
        {"1u", 1000},
        {"1m", 1000000},
        {"1S", 1000000000ull},
        {"2M", 120000000000ull},
        {"1H", 3600000000000ull},
        {"5124095H", 5124095ull * 3600000000000ull},
        {"99999999H", UINT64_MAX}, /* past 2^64 ns: saturates */
        {"00000005m", 5000000},
        {"0S", 0},
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        uint64_t ns = 7;
        assert_int_equal(grpc_timeout_parse(ok[i].v, strlen(ok[i].v), &ns), 0);
        assert_true(ns == ok[i].ns);
    }
    static const char *const bad[] = {"",    "S",   "1",   "123456789S", "1s",   "1h",  "1x",
                                      "-1S", "+1S", " 1S", "1 S",        "1.5S", "1SS", "0x1S"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        uint64_t ns;
        assert_int_equal(grpc_timeout_parse(bad[i], strlen(bad[i]), &ns), -EINVAL);
    }
}

static void test_timeout_format(void **state)
{
    (void)state;
    char b[GRPC_TIMEOUT_BUFSZ];
    static const struct {
        uint64_t ns;
        const char *v;
    } cases[] = {
        {0, "1n"},
        {1, "1n"},
        {99999999, "99999999n"},
        {100000000, "100000u"},
        {100000001, "100001u"}, /* rounded up, never down */
        {1000000000ull, "1000000u"},
        {100000000000ull, "100000m"},
        {100000000000000ull, "100000S"},
        {UINT64_MAX, "5124096H"}, /* 2^64 ns is 5124095.6 hours: fits, rounded up */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t n = grpc_timeout_format(cases[i].ns, b);
        assert_string_equal(b, cases[i].v);
        assert_int_equal(n, strlen(cases[i].v));
        /* Round trip: what we send parses back to at least what was asked. */
        uint64_t back;
        assert_int_equal(grpc_timeout_parse(b, n, &back), 0);
        assert_true(back >= cases[i].ns);
    }
    assert_int_equal(grpc_timeout_ms(1), 1);
    assert_int_equal(grpc_timeout_ms(1000000), 1);
    assert_int_equal(grpc_timeout_ms(1000001), 2);
    assert_int_equal(grpc_timeout_ms(0), 0);
}

/* ---- grpc-message ---- */

static void test_message_encoding(void **state)
{
    (void)state;
    char out[256];
    /* Space and VCHAR except '%' stay; '%', controls and UTF-8 bytes are escaped with upper-case hex. */
    const char *in = "Hello, world! 100% \xe2\x82\xac\n~";
    size_t n = grpc_message_encode(in, strlen(in), out, sizeof(out));
    assert_string_equal(out, "Hello, world! 100%25 %E2%82%AC%0A~");
    assert_int_equal(n, strlen(out));
    char dec[256];
    assert_int_equal(grpc_message_decode(out, n, dec), strlen(in));
    assert_string_equal(dec, in);
    /* Lower-case hex decodes too. */
    assert_int_equal(grpc_message_decode("a%2fb", 5, dec), 3);
    assert_string_equal(dec, "a/b");
    /* Broken escapes are kept as they are, not an error. */
    assert_int_equal(grpc_message_decode("100%", 4, dec), 4);
    assert_string_equal(dec, "100%");
    assert_int_equal(grpc_message_decode("%zz%4", 5, dec), 5);
    assert_string_equal(dec, "%zz%4");
    /* Truncation never cuts an escape and still reports the full length. */
    char small[6];
    n = grpc_message_encode("ab\ncd", 5, small, sizeof(small));
    assert_int_equal(n, 7);
    assert_string_equal(small, "ab%0A");
    n = grpc_message_encode("abcd\n", 5, small, sizeof(small));
    assert_string_equal(small, "abcd");
    /* A NUL byte in the message is escaped too. */
    n = grpc_message_encode("a\0b", 3, out, sizeof(out));
    assert_string_equal(out, "a%00b");
}

/* ---- metadata ---- */

static void test_metadata_rules(void **state)
{
    (void)state;
    assert_true(grpc_md_name_valid("authorization", 13));
    assert_true(grpc_md_name_valid("x-trace_id.v1", 13));
    assert_false(grpc_md_name_valid("Authorization", 13));
    assert_false(grpc_md_name_valid("a b", 3));
    assert_false(grpc_md_name_valid("", 0));
    assert_false(grpc_md_name_valid(":path", 5));
    assert_true(grpc_md_value_valid("Bearer abc ~", 12));
    assert_true(grpc_md_value_valid("", 0));
    assert_false(grpc_md_value_valid("a\nb", 3));
    assert_false(grpc_md_value_valid("\x80", 1));
    assert_true(grpc_md_is_bin("trace-proto-bin", 15));
    assert_false(grpc_md_is_bin("-bin", 4));
    assert_false(grpc_md_is_bin("binary", 6));
    static const char *const reserved[] = {
        ":path", "grpc-status", "grpc-timeout", "grpc-foo",          "content-type",
        "te",    "user-agent",  "connection",   "transfer-encoding", "host"};
    for (size_t i = 0; i < sizeof(reserved) / sizeof(reserved[0]); i++)
        assert_true(grpc_md_reserved(reserved[i], strlen(reserved[i])));
    assert_false(grpc_md_reserved("authorization", 13));
    assert_false(grpc_md_reserved("clusterid", 9));
    assert_false(grpc_md_reserved("tea", 3));
}

static void test_base64(void **state)
{
    (void)state;
    static const struct {
        const char *raw, *b64;
    } v[] = {{"", ""},           {"f", "Zg"},          {"fo", "Zm8"},         {"foo", "Zm9v"},
             {"foob", "Zm9vYg"}, {"fooba", "Zm9vYmE"}, {"foobar", "Zm9vYmFy"}};
    char enc[32];
    uint8_t dec[32];
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        /* RFC 4648 §10's vectors, emitted unpadded. */
        assert_int_equal(grpc_b64_encode((const uint8_t *)v[i].raw, strlen(v[i].raw), enc), strlen(v[i].b64));
        assert_string_equal(enc, v[i].b64);
        assert_int_equal(grpc_b64_decode(v[i].b64, strlen(v[i].b64), dec), strlen(v[i].raw));
        assert_memory_equal(dec, v[i].raw, strlen(v[i].raw));
    }
    /* Padded input is accepted too. */
    assert_int_equal(grpc_b64_decode("Zg==", 4, dec), 1);
    assert_int_equal(dec[0], 'f');
    assert_int_equal(grpc_b64_decode("Zm8=", 4, dec), 2);
    /* All 256 byte values survive. */
    uint8_t all[256];
    for (int i = 0; i < 256; i++)
        all[i] = (uint8_t)i;
    char big[400];
    uint8_t back[300];
    size_t n = grpc_b64_encode(all, 256, big);
    assert_int_equal(grpc_b64_decode(big, n, back), 256);
    assert_memory_equal(back, all, 256);
    /* Bad input. */
    assert_int_equal(grpc_b64_decode("Z", 1, dec), -EINVAL);
    assert_int_equal(grpc_b64_decode("Zg=", 3, dec), -EINVAL);
    assert_int_equal(grpc_b64_decode("Z===", 4, dec), -EINVAL);
    assert_int_equal(grpc_b64_decode("Zm9v,Zg", 7, dec), -EINVAL);
    assert_int_equal(grpc_b64_decode("Zm-v", 4, dec), -EINVAL);
    assert_int_equal(grpc_b64_decode("Z=g=", 4, dec), -EINVAL);
}

/* ---- content-type and mappings ---- */

static void test_content_type(void **state)
{
    (void)state;
    const char *sub;
    size_t sn;
    assert_true(grpc_content_type_ok("application/grpc", 16, &sub, &sn));
    assert_int_equal(sn, 0);
    assert_true(grpc_content_type_ok("application/grpc+proto", 22, &sub, &sn));
    assert_int_equal(sn, 5);
    assert_memory_equal(sub, "proto", 5);
    assert_true(grpc_content_type_ok("Application/GRPC+json", 21, &sub, &sn));
    assert_memory_equal(sub, "json", 4);
    assert_true(grpc_content_type_ok("application/grpc;charset=utf-8", 30, &sub, &sn));
    assert_int_equal(sn, 0);
    assert_true(grpc_content_type_ok("application/grpc+proto;x=y", 26, &sub, &sn));
    assert_int_equal(sn, 5);
    assert_false(grpc_content_type_ok("application/grpcx", 17, NULL, NULL));
    assert_false(grpc_content_type_ok("application/grpc-web", 20, NULL, NULL));
    assert_false(grpc_content_type_ok("application/json", 16, NULL, NULL));
    assert_false(grpc_content_type_ok("", 0, NULL, NULL));
}

static void test_status_mappings(void **state)
{
    (void)state;
    /* doc/http-grpc-status-mapping.md */
    assert_int_equal(grpc_status_from_http(400), GRPC_STATUS_INTERNAL);
    assert_int_equal(grpc_status_from_http(401), GRPC_STATUS_UNAUTHENTICATED);
    assert_int_equal(grpc_status_from_http(403), GRPC_STATUS_PERMISSION_DENIED);
    assert_int_equal(grpc_status_from_http(404), GRPC_STATUS_UNIMPLEMENTED);
    assert_int_equal(grpc_status_from_http(429), GRPC_STATUS_UNAVAILABLE);
    assert_int_equal(grpc_status_from_http(431), GRPC_STATUS_INTERNAL);
    assert_int_equal(grpc_status_from_http(502), GRPC_STATUS_UNAVAILABLE);
    assert_int_equal(grpc_status_from_http(503), GRPC_STATUS_UNAVAILABLE);
    assert_int_equal(grpc_status_from_http(504), GRPC_STATUS_UNAVAILABLE);
    assert_int_equal(grpc_status_from_http(200), GRPC_STATUS_UNKNOWN);
    assert_int_equal(grpc_status_from_http(500), GRPC_STATUS_UNKNOWN);
    assert_int_equal(grpc_status_from_http(415), GRPC_STATUS_UNKNOWN);
    /* PROTOCOL-HTTP2.md "Errors" */
    assert_int_equal(grpc_status_from_h2_error(0), GRPC_STATUS_INTERNAL);
    assert_int_equal(grpc_status_from_h2_error(1), GRPC_STATUS_INTERNAL);
    assert_int_equal(grpc_status_from_h2_error(3), GRPC_STATUS_INTERNAL);
    assert_int_equal(grpc_status_from_h2_error(7), GRPC_STATUS_UNAVAILABLE);
    assert_int_equal(grpc_status_from_h2_error(8), GRPC_STATUS_CANCELLED);
    assert_int_equal(grpc_status_from_h2_error(0xb), GRPC_STATUS_RESOURCE_EXHAUSTED);
    assert_int_equal(grpc_status_from_h2_error(0xc), GRPC_STATUS_PERMISSION_DENIED);
}

/* ---- calls: zmesh client <-> zmesh server, h2c on loopback ---- */

struct env {
    struct loop *l;
    struct grpc_server *srv;
    struct io lio;
    uint16_t port;
    struct timer guard;
    int stops_wanted, stops;
    SSL_CTX *sctx; /* NULL: h2c */
};

static struct env E;
static struct got_call *G_stream;
static int G_taken;

static void on_accept(struct io *io, uint32_t ev)
{
    (void)ev;
    int fd;
    while ((fd = accept4(io->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0)
        assert_int_equal(grpc_server_serve(E.srv, fd, E.sctx), 0);
}

static void guard_fired(struct timer *t)
{
    (void)t;
    fail_msg("the loop did not finish in time");
}

/* Runs the loop until done() has been called n times. */
static void run_until(int n)
{
    E.stops = 0;
    E.stops_wanted = n;
    timer_start(E.l, &E.guard, 5000);
    loop_run(E.l);
    timer_stop(E.l, &E.guard);
}

static void done(void)
{
    if (++E.stops >= E.stops_wanted) loop_stop(E.l);
}

/* Runs the loop until pred() holds (checked every 2 ms). */
static bool (*E_pred)(void);
static void poll_cb(struct timer *t)
{
    if (E_pred())
        loop_stop(E.l);
    else
        timer_start(E.l, t, 2);
}

static void run_while_not(bool (*pred)(void))
{
    struct timer poll = {.cb = poll_cb};
    E_pred = pred;
    E.stops_wanted = 1 << 30;
    timer_start(E.l, &poll, 2);
    timer_start(E.l, &E.guard, 5000);
    loop_run(E.l);
    timer_stop(E.l, &E.guard);
    timer_stop(E.l, &poll);
}

static bool always(void)
{
    return true;
}

/* What a server handler saw. */
struct seen {
    int calls;
    char md[8][64];
    int n_md;
    uint64_t timeout_ns;
    char peer_id[256];
    enum grpc_status end_status;
    int ends;
    struct grpc_call *call; /* streaming: the call, to push to */
    uint64_t msgs;
    uint8_t last[16];
    size_t last_n;
    bool writable;
};
static struct seen S;

static void srv_end(struct grpc_call *c, void *ud, const struct grpc_result *r)
{
    (void)c;
    (void)ud;
    S.end_status = r->status;
    S.ends++;
    S.call = NULL;
    done();
}

static const struct grpc_call_ops srv_ops = {.on_end = srv_end};

/* Unary: echoes the request reversed, with a trailer; "slow" never answers; "fail" ends with NOT_FOUND. */
static void h_echo(struct grpc_call *c, void *ud, const struct grpc_call_info *info)
{
    (void)ud;
    S.calls++;
    S.timeout_ns = info->timeout_ns;
    snprintf(S.peer_id, sizeof(S.peer_id), "%s", info->peer_id);
    S.n_md = 0;
    for (size_t i = 0; i < info->n_md && i < 8; i++)
        snprintf(S.md[S.n_md++], sizeof(S.md[0]), "%s=%.*s", info->md[i].name, (int)info->md[i].len,
                 (const char *)info->md[i].value);
    grpc_call_set_ops(c, &srv_ops, NULL);
    if (info->request_len == 4 && !memcmp(info->request, "slow", 4)) return;
    if (info->request_len == 4 && !memcmp(info->request, "fail", 4)) {
        assert_int_equal(grpc_call_finish(c, GRPC_STATUS_NOT_FOUND, "nothing\nhere", NULL, 0), 0);
        assert_int_equal(grpc_call_finish(c, GRPC_STATUS_OK, NULL, NULL, 0), -EPIPE);
        return;
    }
    uint8_t out[256];
    for (size_t i = 0; i < info->request_len && i < sizeof(out); i++)
        out[i] = info->request[info->request_len - 1 - i];
    assert_int_equal(grpc_call_send(c, out, info->request_len), 0);
    /* A unary method answers once. */
    assert_int_equal(grpc_call_send(c, out, 1), -EINVAL);
    const struct grpc_md tr = {"x-t", (const uint8_t *)"v", 1};
    assert_int_equal(grpc_call_finish(c, GRPC_STATUS_OK, NULL, &tr, 1), 0);
}

static void srv_stream_msg(struct grpc_call *c, void *ud, const uint8_t *p, size_t n)
{
    (void)ud;
    (void)p;
    (void)n;
    S.msgs++;
    S.last_n = n < sizeof(S.last) ? n : sizeof(S.last);
    memcpy(S.last, p, S.last_n);
    (void)c;
}

static void srv_stream_half(struct grpc_call *c, void *ud)
{
    (void)ud;
    grpc_call_finish(c, GRPC_STATUS_OK, NULL, NULL, 0);
}

static void srv_writable(struct grpc_call *c, void *ud)
{
    (void)c;
    (void)ud;
    S.writable = true;
    done();
}

static const struct grpc_call_ops srv_stream_ops = {.on_message = srv_stream_msg,
                                                    .on_half_close = srv_stream_half,
                                                    .on_writable = srv_writable,
                                                    .on_end = srv_end};

static void h_stream(struct grpc_call *c, void *ud, const struct grpc_call_info *info)
{
    (void)ud;
    (void)info;
    S.calls++;
    S.call = c;
    grpc_call_set_ops(c, &srv_stream_ops, NULL);
    done();
}

static int setup_calls(void **state)
{
    (void)state;
    memset(&E, 0, sizeof(E));
    memset(&S, 0, sizeof(S));
    E.l = loop_new();
    assert_non_null(E.l);
    E.srv = grpc_server_new(E.l, &(struct grpc_opts){.max_recv = 1u << 20});
    assert_non_null(E.srv);
    assert_int_equal(grpc_server_add(E.srv, "/t.S/Echo", GRPC_UNARY, h_echo, NULL), 0);
    assert_int_equal(grpc_server_add(E.srv, "/t.S/Stream", GRPC_STREAMING, h_stream, NULL), 0);
    assert_int_equal(grpc_server_add(E.srv, "/t.S/Echo", GRPC_UNARY, h_echo, NULL), -EEXIST);
    assert_int_equal(grpc_server_add(E.srv, "t.S/Echo", GRPC_UNARY, h_echo, NULL), -EINVAL);
    assert_int_equal(grpc_server_add(E.srv, "/t.S/", GRPC_UNARY, h_echo, NULL), -EINVAL);
    int fd = net_listen_local(0, 16);
    assert_true(fd >= 0);
    net_set_nonblock(fd);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    getsockname(fd, (struct sockaddr *)&ss, &sl);
    E.port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    E.lio.fd = fd;
    E.lio.cb = on_accept;
    loop_io_add(E.l, &E.lio, EPOLLIN);
    E.guard.cb = guard_fired;
    return 0;
}

static int teardown_calls(void **state)
{
    (void)state;
    grpc_server_free(E.srv);
    /* Closes and frees finish in the loop's tasks. */
    run_while_not(always);
    loop_io_del(E.l, &E.lio);
    close(E.lio.fd);
    loop_free(E.l);
    return 0;
}

static struct grpc_channel *dial_tls(uint16_t port, const struct grpc_opts *o, SSL_CTX *ctx,
                                     const struct h2_peer *peer)
{
    struct ip_addr ip;
    struct sockaddr_storage ss;
    ip_parse("127.0.0.1", &ip);
    sockaddr_from(&ss, &ip, port);
    struct grpc_channel *ch = grpc_channel_dial(E.l, &ss, ctx, peer, "test.local", o);
    assert_non_null(ch);
    return ch;
}

static struct grpc_channel *dial(uint16_t port, const struct grpc_opts *o)
{
    struct grpc_channel *ch = dial_tls(port, o, NULL, NULL);
    assert_non_null(ch);
    return ch;
}

/* What a client call got. */
struct got_call {
    int msgs;
    uint8_t last[256];
    size_t last_n;
    bool ended;
    enum grpc_status status;
    char message[256];
    char trailer[64];
    bool writable;
};

static void cli_msg(struct grpc_call *c, void *ud, const uint8_t *p, size_t n)
{
    (void)c;
    struct got_call *g = ud;
    g->msgs++;
    g->last_n = n < sizeof(g->last) ? n : sizeof(g->last);
    memcpy(g->last, p, g->last_n);
}

static void cli_end(struct grpc_call *c, void *ud, const struct grpc_result *r)
{
    (void)c;
    struct got_call *g = ud;
    g->ended = true;
    g->status = r->status;
    snprintf(g->message, sizeof(g->message), "%s", r->message);
    if (r->n_trailers)
        snprintf(g->trailer, sizeof(g->trailer), "%s=%.*s", r->trailers[0].name, (int)r->trailers[0].len,
                 (const char *)r->trailers[0].value);
    done();
}

static void cli_writable(struct grpc_call *c, void *ud)
{
    (void)c;
    struct got_call *g = ud;
    g->writable = true;
    done();
}

static const struct grpc_call_ops cli_ops = {
    .on_message = cli_msg, .on_writable = cli_writable, .on_end = cli_end};

/* A unary round trip: the request, the metadata the handler sees (and what it does not), the response, the
 * trailers and a percent-encoded status message; and an unknown method. */
static void test_call_unary(void **state)
{
    (void)state;
    struct grpc_channel *ch = dial(E.port, NULL);
    const struct grpc_md md[] = {{"authorization", (const uint8_t *)"Bearer t", 8},
                                 {"clusterid", (const uint8_t *)"c1", 2},
                                 {"x-raw-bin", (const uint8_t *)"\x01\x02", 2}};
    struct got_call g = {0};
    int err;
    struct grpc_call *c =
        grpc_call_unary(ch, "/t.S/Echo", &(struct grpc_call_opts){.timeout_ms = 3000, .md = md, .n_md = 3},
                        (const uint8_t *)"abc", 3, &cli_ops, &g, &err);
    assert_non_null(c);
    run_until(2); /* client end + server end */
    assert_true(g.ended);
    assert_int_equal(g.status, GRPC_STATUS_OK);
    assert_int_equal(g.msgs, 1);
    assert_memory_equal(g.last, "cba", 3);
    assert_string_equal(g.trailer, "x-t=v");
    assert_int_equal(S.end_status, GRPC_STATUS_OK);
    /* user-agent, authorization, clusterid, x-raw-bin (decoded); no content-type, te or grpc-timeout. */
    assert_int_equal(S.n_md, 4);
    assert_string_equal(S.md[1], "authorization=Bearer t");
    assert_string_equal(S.md[2], "clusterid=c1");
    assert_string_equal(S.md[3], "x-raw-bin=\x01\x02");
    assert_true(S.timeout_ns > 2000000000ull && S.timeout_ns <= 3000000000ull);

    memset(&g, 0, sizeof(g));
    assert_non_null(grpc_call_unary(ch, "/t.S/Echo", NULL, (const uint8_t *)"fail", 4, &cli_ops, &g, &err));
    run_until(2);
    assert_int_equal(g.status, GRPC_STATUS_NOT_FOUND);
    assert_string_equal(g.message, "nothing\nhere");

    memset(&g, 0, sizeof(g));
    assert_non_null(grpc_call_unary(ch, "/t.S/Nope", NULL, (const uint8_t *)"x", 1, &cli_ops, &g, &err));
    run_until(1);
    assert_int_equal(g.status, GRPC_STATUS_UNIMPLEMENTED);
    assert_string_equal(g.message, "unknown method Nope for service t.S");

    /* Bad metadata and paths are refused before anything is sent. */
    const struct grpc_md bad[] = {{"Upper", (const uint8_t *)"x", 1},
                                  {"grpc-foo", (const uint8_t *)"x", 1},
                                  {"te", (const uint8_t *)"x", 1},
                                  {"ok", (const uint8_t *)"a\nb", 3}};
    for (size_t i = 0; i < 4; i++) {
        assert_null(grpc_call_start(ch, "/t.S/Echo", &(struct grpc_call_opts){.md = &bad[i], .n_md = 1},
                                    &cli_ops, &g, &err));
        assert_int_equal(err, -EINVAL);
    }
    assert_null(grpc_call_start(ch, "no-slash", NULL, &cli_ops, &g, &err));
    assert_int_equal(err, -EINVAL);
    grpc_channel_free(ch);
}

/* The client's deadline: DEADLINE_EXCEEDED on the client, and the handler's call ends as DEADLINE_EXCEEDED
 * (the client's RST_STREAM CANCEL came at the deadline). */
static void test_call_deadline(void **state)
{
    (void)state;
    struct grpc_channel *ch = dial(E.port, NULL);
    struct got_call g = {0};
    int err;
    uint64_t t0 = loop_now(E.l);
    assert_non_null(grpc_call_unary(ch, "/t.S/Echo", &(struct grpc_call_opts){.timeout_ms = 100},
                                    (const uint8_t *)"slow", 4, &cli_ops, &g, &err));
    run_until(2);
    assert_int_equal(g.status, GRPC_STATUS_DEADLINE_EXCEEDED);
    assert_true(loop_now(E.l) - t0 >= 100);
    assert_int_equal(S.ends, 1);
    assert_int_equal(S.end_status, GRPC_STATUS_DEADLINE_EXCEEDED);
    grpc_channel_free(ch);
}

/* Nobody listening: UNAVAILABLE. */
static void test_call_unavailable(void **state)
{
    (void)state;
    int fd = net_listen_local(0, 1);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    getsockname(fd, (struct sockaddr *)&ss, &sl);
    uint16_t port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    close(fd);
    struct grpc_channel *ch = dial(port, NULL);
    struct got_call g = {0};
    int err;
    assert_non_null(grpc_call_unary(ch, "/t.S/Echo", NULL, (const uint8_t *)"x", 1, &cli_ops, &g, &err));
    run_until(1);
    assert_int_equal(g.status, GRPC_STATUS_UNAVAILABLE);
    assert_false(grpc_channel_usable(ch));
    assert_null(grpc_call_start(ch, "/t.S/Echo", NULL, &cli_ops, &g, &err));
    assert_int_equal(err, -EPIPE);
    grpc_channel_free(ch);
}

static bool stream_all_in(void)
{
    return G_stream->msgs >= 1 && S.msgs >= (uint64_t)G_taken + 1;
}

/* Streaming both ways, the send queue's bound and on_writable, max_send, and the server going away under an
 * open call (the client: UNAVAILABLE; the handler: CANCELLED). */
static void test_call_stream_backpressure(void **state)
{
    (void)state;
    struct grpc_channel *ch =
        dial(E.port, &(struct grpc_opts){.max_send = 100000, .send_queue_max = 256 << 10});
    struct got_call g = {0};
    int err;
    struct grpc_call *c = grpc_call_start(ch, "/t.S/Stream", NULL, &cli_ops, &g, &err);
    assert_non_null(c);
    static uint8_t big[100001];
    assert_int_equal(grpc_call_send(c, big, sizeof(big)), -EMSGSIZE);
    /* Nothing has been sent yet (the loop has not run): the queue fills to its bound, then says -EAGAIN. */
    int taken = 0;
    while (grpc_call_send(c, big, 16384) == 0)
        taken++;
    assert_int_equal(taken, (256 << 10) / (16384 + 5));
    assert_true(grpc_call_queued(c) <= 256u << 10);
    assert_false(grpc_call_writable(c, 16384));
    run_until(2); /* the handler starts; on_writable once the queue drained below half */
    assert_true(g.writable);
    assert_non_null(S.call);
    /* A message built in place in the queue. */
    uint8_t *dst = grpc_call_send_alloc(c, 8, &err);
    assert_non_null(dst);
    memcpy(dst, "inplace!", 8);
    /* The server pushes to the client from outside any callback of the call. */
    assert_int_equal(grpc_call_send(S.call, (const uint8_t *)"push", 4), 0);
    G_stream = &g;
    G_taken = taken;
    run_while_not(stream_all_in);
    assert_memory_equal(g.last, "push", 4);
    assert_int_equal(S.msgs, taken + 1);
    assert_int_equal(S.last_n, 8);
    assert_memory_equal(S.last, "inplace!", 8);
    /* Asking before building: a full queue says no, and on_writable follows without a refused send. */
    g.writable = false;
    taken = 0;
    while (grpc_call_writable(c, 16384)) {
        assert_int_equal(grpc_call_send(c, big, 16384), 0);
        taken++;
    }
    run_until(1);
    assert_true(g.writable);
    /* The handler's call ends inside grpc_server_free (the connection closes at once), the client's when its
     * connection sees the close. */
    grpc_server_free(E.srv);
    E.srv = NULL;
    assert_int_equal(S.ends, 1);
    if (!g.ended) run_until(1);
    assert_true(g.ended);
    assert_int_equal(g.status, GRPC_STATUS_UNAVAILABLE);
    assert_int_equal(S.end_status, GRPC_STATUS_CANCELLED);
    grpc_channel_free(ch);
}

static bool both_ended(void)
{
    return G_stream->ended && S.ends == 1;
}

/* Early Server Closure (gRPC's PROTOCOL-HTTP2.md, RFC 9113 §8.1): the server ends a streaming call with a
 * status while the client's side is still open, as zmeshd ends an ADS stream it refuses. The client's call
 * ends with the server's status and trailers, without the client closing its side, and the server's call ends
 * too (its RST_STREAM NO_ERROR tells the client to stop sending). Without both halves the call stays open
 * until the connection closes. */
static void test_call_early_server_closure(void **state)
{
    (void)state;
    struct grpc_channel *ch = dial(E.port, &(struct grpc_opts){0});
    struct got_call g = {0};
    int err;
    struct grpc_call *c = grpc_call_start(ch, "/t.S/Stream", NULL, &cli_ops, &g, &err);
    assert_non_null(c);
    assert_int_equal(grpc_call_send(c, (const uint8_t *)"hello", 5), 0);
    run_until(1); /* the handler has the call */
    assert_non_null(S.call);
    assert_int_equal(grpc_call_send(S.call, (const uint8_t *)"bye", 3), 0);
    const struct grpc_md tr = {"x-why", (const uint8_t *)"stale", 5};
    assert_int_equal(grpc_call_finish(S.call, GRPC_STATUS_RESOURCE_EXHAUSTED, "too many", &tr, 1), 0);
    G_stream = &g;
    run_while_not(both_ended);
    assert_int_equal(g.msgs, 1);
    assert_memory_equal(g.last, "bye", 3);
    assert_int_equal(g.status, GRPC_STATUS_RESOURCE_EXHAUSTED);
    assert_string_equal(g.message, "too many");
    assert_string_equal(g.trailer, "x-why=stale");
    assert_int_equal(S.end_status, GRPC_STATUS_RESOURCE_EXHAUSTED);
    /* The channel is still usable: only the stream ended. */
    struct got_call g2 = {0};
    assert_non_null(grpc_call_unary(ch, "/t.S/Echo", NULL, (const uint8_t *)"abc", 3, &cli_ops, &g2, &err));
    run_until(2); /* client end + server end */
    assert_int_equal(g2.status, GRPC_STATUS_OK);
    assert_memory_equal(g2.last, "cba", 3);
    grpc_channel_free(ch);
}

/* Many unary calls on one channel, four at a time: each ends when the server's trailers close the stream, and
 * the client sends no RST_STREAM for a stream that closed by itself. An nghttp2 server counts every RST_STREAM
 * it receives against its rapid-reset limit (1000, then 33/s) and ends the connection with GOAWAY
 * INTERNAL_ERROR past it, so a client that reset each finished call saw calls refused after about 1000. */
#define MANY_CALLS 2500
static int many_left, many_ok, many_bad;
static struct grpc_channel *many_ch;
static void many_issue(void);
static void many_end(struct grpc_call *c, void *ud, const struct grpc_result *r)
{
    (void)c, (void)ud;
    if (r->status == GRPC_STATUS_OK)
        many_ok++;
    else if (many_bad++ == 0)
        print_message("first failed call: %d %s\n", r->status, r->message);
    if (many_left > 0) many_issue();
    if (many_ok + many_bad == MANY_CALLS) loop_stop(E.l);
}
static const struct grpc_call_ops many_ops = {.on_end = many_end};
static void many_issue(void)
{
    int err;
    many_left--;
    assert_non_null(grpc_call_unary(many_ch, "/t.S/Echo", NULL, (const uint8_t *)"abc", 3, &many_ops, NULL, &err));
}

static void test_call_many_on_one_channel(void **state)
{
    (void)state;
    many_ch = dial(E.port, NULL);
    many_left = MANY_CALLS;
    many_ok = many_bad = 0;
    for (int i = 0; i < 4; i++)
        many_issue();
    E.stops_wanted = 1 << 30;
    timer_start(E.l, &E.guard, 30000);
    loop_run(E.l);
    timer_stop(E.l, &E.guard);
    assert_int_equal(many_bad, 0);
    assert_int_equal(many_ok, MANY_CALLS);
    assert_int_equal(grpc_server_conns(E.srv), 1); /* no reconnect was needed */
    grpc_channel_free(many_ch);
}

/* Mutual TLS with workload certificates from zmesh's local CA (tls/ca.h) and HBONE's contexts: the handler
 * learns the client's SPIFFE id, the client checks the server's; a server that is not the one expected is
 * refused before any request leaves (UNAVAILABLE, H2_END_IDENTITY). */
#define ID_SERVER "spiffe://cluster.local/ns/istio-system/sa/istiod"
#define ID_CLIENT "spiffe://cluster.local/ns/istio-system/sa/ztunnel"

static struct tls_cert *mint(struct cert_provider *ca, const char *uri)
{
    struct spiffe_id id;
    char err[256] = "";
    assert_int_equal(spiffe_parse(uri, strlen(uri), &id), 0);
    struct tls_cert *c = ca->fetch(ca, &id, err, sizeof(err));
    assert_non_null(c);
    return c;
}

static enum h2_end_reason last_h2_reason;
static void cli_end_reason(struct grpc_call *c, void *ud, const struct grpc_result *r)
{
    last_h2_reason = r->h2_reason;
    cli_end(c, ud, r);
}
static const struct grpc_call_ops cli_ops_reason = {.on_message = cli_msg, .on_end = cli_end_reason};

static void test_call_mtls(void **state)
{
    (void)state;
    char dir[] = "/tmp/zmesh-grpc-XXXXXX", err[256], p[128];
    assert_non_null(mkdtemp(dir));
    assert_int_equal(ca_write_root(dir, NULL, err, sizeof(err)), 0);
    struct cert_provider *ca = ca_local_new(dir, err, sizeof(err));
    assert_non_null(ca);
    struct tls_cert *cs = mint(ca, ID_SERVER), *cc = mint(ca, ID_CLIENT);
    E.sctx = tls_server_ctx_new(cs);
    SSL_CTX *cctx = tls_client_ctx_new(cc);
    assert_non_null(E.sctx);
    assert_non_null(cctx);

    const char *const ok[] = {ID_SERVER};
    struct grpc_channel *ch =
        dial_tls(E.port, NULL, cctx, &(struct h2_peer){.expected = ok, .n_expected = 1});
    struct got_call g = {0};
    int rc;
    assert_non_null(grpc_call_unary(ch, "/t.S/Echo", NULL, (const uint8_t *)"tls", 3, &cli_ops, &g, &rc));
    run_until(2);
    assert_int_equal(g.status, GRPC_STATUS_OK);
    assert_memory_equal(g.last, "slt", 3);
    assert_string_equal(S.peer_id, ID_CLIENT);
    grpc_channel_free(ch);

    const char *const wrong[] = {"spiffe://cluster.local/ns/default/sa/other"};
    ch = dial_tls(E.port, NULL, cctx, &(struct h2_peer){.expected = wrong, .n_expected = 1});
    memset(&g, 0, sizeof(g));
    S.calls = 0;
    assert_non_null(
        grpc_call_unary(ch, "/t.S/Echo", NULL, (const uint8_t *)"x", 1, &cli_ops_reason, &g, &rc));
    run_until(1);
    assert_int_equal(g.status, GRPC_STATUS_UNAVAILABLE);
    assert_int_equal(last_h2_reason, H2_END_IDENTITY);
    assert_int_equal(S.calls, 0);
    grpc_channel_free(ch);

    /* Let the conns go before their contexts. */
    grpc_server_free(E.srv);
    E.srv = NULL;
    run_while_not(always);
    SSL_CTX_free(E.sctx);
    E.sctx = NULL;
    SSL_CTX_free(cctx);
    tls_cert_unref(cs);
    tls_cert_unref(cc);
    ca->destroy(ca);
    snprintf(p, sizeof(p), "%s/root-cert.pem", dir);
    unlink(p);
    snprintf(p, sizeof(p), "%s/root-key.pem", dir);
    unlink(p);
    rmdir(dir);
}

static bool no_conns(void)
{
    return grpc_server_conns(E.srv) == 0;
}

/* Drain: the open stream goes on and ends normally, a new call is refused (UNAVAILABLE), then the connection
 * closes by itself. */
static void test_server_drain(void **state)
{
    (void)state;
    struct grpc_channel *ch = dial(E.port, NULL);
    struct got_call g = {0}, g2 = {0};
    int err;
    struct grpc_call *c = grpc_call_start(ch, "/t.S/Stream", NULL, &cli_ops, &g, &err);
    assert_non_null(c);
    assert_int_equal(grpc_call_send(c, (const uint8_t *)"x", 1), 0);
    run_until(1); /* the handler has the call */
    assert_non_null(S.call);
    assert_int_equal(grpc_server_conns(E.srv), 1);
    grpc_server_drain(E.srv);
    run_while_not(always);
    run_while_not(always);
    assert_int_equal(grpc_server_conns(E.srv), 1);
    struct grpc_call *c2 =
        grpc_call_unary(ch, "/t.S/Echo", NULL, (const uint8_t *)"y", 1, &cli_ops, &g2, &err);
    if (c2) {
        run_until(1);
        assert_int_equal(g2.status, GRPC_STATUS_UNAVAILABLE);
    } else {
        assert_int_equal(err, -EPIPE); /* the GOAWAY arrived first: the channel takes no calls */
    }
    /* The old call still works both ways. */
    assert_int_equal(grpc_call_send(S.call, (const uint8_t *)"late", 4), 0);
    assert_int_equal(grpc_call_close_send(c), 0);
    run_until(2); /* half-close finishes it on the server: both ends */
    assert_int_equal(g.status, GRPC_STATUS_OK);
    assert_memory_equal(g.last, "late", 4);
    run_while_not(no_conns);
    grpc_channel_free(ch);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_status_names),
        cmocka_unit_test(test_frame_header),
        cmocka_unit_test(test_deframer_chunking),
        cmocka_unit_test(test_deframer_stop),
        cmocka_unit_test(test_deframer_max),
        cmocka_unit_test(test_deframer_large),
        cmocka_unit_test(test_deframer_compressed),
        cmocka_unit_test(test_deframer_truncated),
        cmocka_unit_test(test_timeout_parse),
        cmocka_unit_test(test_timeout_format),
        cmocka_unit_test(test_message_encoding),
        cmocka_unit_test(test_metadata_rules),
        cmocka_unit_test(test_base64),
        cmocka_unit_test(test_content_type),
        cmocka_unit_test(test_status_mappings),
        cmocka_unit_test_setup_teardown(test_call_unary, setup_calls, teardown_calls),
        cmocka_unit_test_setup_teardown(test_call_deadline, setup_calls, teardown_calls),
        cmocka_unit_test_setup_teardown(test_call_unavailable, setup_calls, teardown_calls),
        cmocka_unit_test_setup_teardown(test_call_stream_backpressure, setup_calls, teardown_calls),
        cmocka_unit_test_setup_teardown(test_call_mtls, setup_calls, teardown_calls),
        cmocka_unit_test_setup_teardown(test_call_early_server_closure, setup_calls, teardown_calls),
        cmocka_unit_test_setup_teardown(test_call_many_on_one_channel, setup_calls, teardown_calls),
        cmocka_unit_test_setup_teardown(test_server_drain, setup_calls, teardown_calls),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
