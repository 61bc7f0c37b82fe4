/* Unit tests for src/grpc: the wire rules (wire.c). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "grpc/wire.h"

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
            assert_int_equal(grpc_deframer_feed(&d, s + a, b - a, on_msg, &g, err, sizeof(err)), GRPC_STATUS_OK);
            assert_int_equal(grpc_deframer_feed(&d, s + b, n - b, on_msg, &g, err, sizeof(err)), GRPC_STATUS_OK);
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
    assert_int_equal(grpc_deframer_feed(&d, h, 5, on_msg, &g, err, sizeof(err)), GRPC_STATUS_RESOURCE_EXHAUSTED);
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
    static const char *const bad[] = {"", "S", "1", "123456789S", "1s", "1h", "1x", "-1S", "+1S", " 1S", "1 S",
                                      "1.5S", "1SS", "0x1S"};
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
    static const char *const reserved[] = {":path", "grpc-status", "grpc-timeout", "grpc-foo", "content-type",
                                           "te", "user-agent", "connection", "transfer-encoding", "host"};
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
    } v[] = {{"", ""}, {"f", "Zg"}, {"fo", "Zm8"}, {"foo", "Zm9v"}, {"foob", "Zm9vYg"}, {"fooba", "Zm9vYmE"},
             {"foobar", "Zm9vYmFy"}};
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
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
