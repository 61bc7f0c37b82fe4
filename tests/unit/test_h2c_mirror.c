/* Unit tests for RequestMirror's HTTP/2 shadow (src/waypoint/h2c_mirror.c) on real HTTP/2 sessions: a client
 * session (the waypoint's upstream role) and a server session (the mirror's endpoint) on one loop over a
 * socketpair, h2c. The shadow's :authority, headers, body and trailers as the endpoint receives them, its
 * response dropped, the 1 MiB bound that abandons a shadow that does not keep up, and the end of the request
 * it copies (cut short: reset; complete: it finishes on its own). Every wait is bounded. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <cmocka.h>
#include <nghttp2/nghttp2.h>

#include "h2/session.h"
#include "loop_pump.h"
#include "waypoint/h2c_mirror.h"

#define WIN 65535u
#define RESP_LEN (100u << 10) /* the endpoint's answer: more than a window, so it must be consumed */
#define BODY_MAX (2u << 20)

static uint8_t pattern[BODY_MAX];

/* The endpoint: one request stream at a time. */
static struct {
    struct h2_conn *c;
    struct h2_stream *s;
    bool hold;   /* do not consume the body (a shadow that does not keep up) */
    bool answer; /* answer at the request's end, RESP_LEN bytes */
    bool got_request, eof, ended, end_stream;
    char authority[128], path[64], method[16], ctype[64], custom[16], trailer[16];
    size_t recv, resp_off;
    bool bad;
    struct h2_end end;
} E;

static struct h2_conn *client;
static struct wp_h2c_mirror *slot;

static size_t e_pull(struct h2_stream *s, void *ud, const uint8_t **data, bool *eof)
{
    (void)s;
    (void)ud;
    size_t n = RESP_LEN - E.resp_off;
    if (n > 16384) n = 16384;
    *data = pattern + E.resp_off;
    *eof = E.resp_off + n == RESP_LEN;
    return n;
}

static void e_sent(struct h2_stream *s, void *ud, size_t n)
{
    (void)s;
    (void)ud;
    E.resp_off += n;
}

static void e_data(struct h2_stream *s, void *ud, const uint8_t *data, size_t len)
{
    (void)ud;
    if (E.recv + len > BODY_MAX || memcmp(data, pattern + E.recv, len) != 0) E.bad = true;
    E.recv += len;
    if (!E.hold) h2_stream_consume(s, len);
}

static void e_headers(struct h2_stream *s, void *ud, const struct h2_headers *h)
{
    (void)s;
    (void)ud;
    if (h->kind != H2_HEADERS_TRAILERS) return;
    for (size_t i = 0; i < h->n_headers; i++)
        if (!strcmp(h->headers[i].name, "x-trailer"))
            snprintf(E.trailer, sizeof(E.trailer), "%s", h->headers[i].value);
}

static void e_eof(struct h2_stream *s, void *ud)
{
    (void)ud;
    if (E.eof) return; /* a request without a body: from on_request already */
    E.eof = true;
    if (E.answer) {
        struct h2_header h[] = {{"content-type", "application/grpc"}};
        assert_int_equal(h2_stream_respond(s, 200, h, 1, H2_BODY), 0);
    }
}

static void e_end(struct h2_stream *s, void *ud, const struct h2_end *e)
{
    (void)s;
    (void)ud;
    E.ended = true;
    E.end = (struct h2_end){.reason = e->reason, .code = e->code};
    E.s = NULL;
}

static const struct h2_stream_ops e_ops = {.on_headers = e_headers,
                                           .on_data = e_data,
                                           .on_eof = e_eof,
                                           .pull = e_pull,
                                           .sent = e_sent,
                                           .on_end = e_end};

static void e_stream(struct h2_conn *c, void *ud, struct h2_stream *s)
{
    (void)c;
    (void)ud;
    E.s = s;
    h2_stream_set_ops(s, &e_ops, NULL);
}

static void e_request(struct h2_stream *s, void *ud, const struct h2_request *req)
{
    (void)ud;
    E.got_request = true;
    E.end_stream = req->end_stream;
    snprintf(E.authority, sizeof(E.authority), "%s", req->authority);
    snprintf(E.path, sizeof(E.path), "%s", req->path);
    snprintf(E.method, sizeof(E.method), "%s", req->method);
    for (size_t i = 0; i < req->n_headers; i++) {
        if (!strcmp(req->headers[i].name, "content-type"))
            snprintf(E.ctype, sizeof(E.ctype), "%s", req->headers[i].value);
        if (!strcmp(req->headers[i].name, "x-custom"))
            snprintf(E.custom, sizeof(E.custom), "%s", req->headers[i].value);
    }
    if (req->end_stream) e_eof(s, NULL);
}

static const struct h2_conn_ops e_conn_ops = {.on_stream = e_stream, .on_request = e_request};
static const struct h2_conn_ops c_conn_ops = {0};

static struct h2_settings settings(bool server)
{
    return (struct h2_settings){.log_name = "test",
                                .stream_window = WIN,
                                .stream_window_max = WIN,
                                .conn_window = 4u << 20,
                                .conn_window_max = 4u << 20,
                                .max_concurrent_streams = server ? 100 : 0};
}

static int setup(void **state)
{
    (void)state;
    memset(&E, 0, sizeof(E));
    E.answer = true;
    slot = NULL;
    L = loop_new();
    assert_non_null(L);
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), 0);
    struct h2_settings ss = settings(true), cs = settings(false);
    E.c = h2_server_new(L, sv[0], NULL, &ss, &e_conn_ops, NULL);
    client = h2_client_new(L, sv[1], NULL, NULL, &cs, &c_conn_ops, NULL);
    assert_non_null(E.c);
    assert_non_null(client);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    h2_conn_close(client, H2_END_LOCAL, "test over");
    h2_conn_close(E.c, H2_END_LOCAL, "test over");
    pump(5); /* deferred frees */
    loop_free(L);
    return 0;
}

static bool got_request(void *a)
{
    (void)a;
    return E.got_request;
}

static bool endpoint_eof(void *a)
{
    (void)a;
    return E.eof;
}

static bool endpoint_ended(void *a)
{
    (void)a;
    return E.ended;
}

static bool mirror_gone(void *a)
{
    (void)a;
    return slot == NULL && h2_conn_streams(client) == 0;
}

#define GRPC_HEADERS(authority)                                                                              \
    {                                                                                                        \
        {":method", "POST"}, {":scheme", "http"}, {":authority", authority}, {":path", "/pkg.Svc/Method"},   \
            {"content-type", "application/grpc"}, {"x-custom", "kept"},                                      \
    }

/* The shadow's request as the endpoint sees it: "-shadow" before the port, every other header as given, the
 * body byte for byte (200 KiB: several windows), the trailers after it; its response (100 KiB) is read and
 * dropped, and once both ended the mirror is gone and its pointer cleared. */
static void test_copy(void **state)
{
    (void)state;
    const struct h2_header h[] = GRPC_HEADERS("svc.example:9090");
    assert_int_equal(wp_h2c_mirror_open(&slot, client, NULL, NULL, "ns.route.0", h, 6, true), 0);
    assert_non_null(slot);
    assert_true(pump_until(got_request, NULL, 2000));
    assert_string_equal(E.authority, "svc.example-shadow:9090");
    assert_string_equal(E.method, "POST");
    assert_string_equal(E.path, "/pkg.Svc/Method");
    assert_string_equal(E.ctype, "application/grpc");
    assert_string_equal(E.custom, "kept");
    assert_false(E.end_stream);
    const size_t total = 200u << 10;
    for (size_t off = 0; off < total; off += 50000)
        wp_h2c_mirror_data(slot, pattern + off, total - off < 50000 ? total - off : 50000);
    const struct h2_header tr[] = {{"x-trailer", "t1"}};
    wp_h2c_mirror_trailers(slot, tr, 1);
    wp_h2c_mirror_eof(slot);
    assert_true(pump_until(endpoint_eof, NULL, 2000));
    assert_int_equal(E.recv, total);
    assert_false(E.bad);
    assert_string_equal(E.trailer, "t1");
    /* the answer is consumed (it is larger than a window) and dropped; then the shadow ends on its own */
    assert_true(pump_until(mirror_gone, NULL, 2000));
    assert_true(E.ended);
    assert_int_equal(E.end.reason, H2_END_OK);
    assert_int_equal(E.resp_off, RESP_LEN);
}

/* A request without a body: the shadow's HEADERS end the stream. */
static void test_headers_only(void **state)
{
    (void)state;
    const struct h2_header h[] = {
        {":method", "GET"}, {":scheme", "http"}, {":authority", "[::1]:80"}, {":path", "/"}};
    assert_int_equal(wp_h2c_mirror_open(&slot, client, NULL, NULL, "r", h, 4, false), 0);
    assert_true(pump_until(got_request, NULL, 2000));
    assert_true(E.end_stream);
    assert_string_equal(E.authority, "[::1]-shadow:80");
    assert_true(pump_until(mirror_gone, NULL, 2000));
    assert_int_equal(E.end.reason, H2_END_OK);
}

/* An endpoint that takes nothing beyond its window: the bytes queue for the shadow and past
 * WP_MIRROR_BUFFER_MAX the shadow is abandoned (reset with CANCEL), never waited for. */
static void test_slow_shadow_abandoned(void **state)
{
    (void)state;
    E.hold = true;
    E.answer = false;
    const struct h2_header h[] = GRPC_HEADERS("svc.example");
    assert_int_equal(wp_h2c_mirror_open(&slot, client, NULL, NULL, "r", h, 6, true), 0);
    assert_true(pump_until(got_request, NULL, 2000));
    assert_string_equal(E.authority, "svc.example-shadow");
    const size_t chunk = 64u << 10;
    size_t pushed = 0;
    while (slot && pushed < WP_MIRROR_BUFFER_MAX + 4 * WIN) {
        wp_h2c_mirror_data(slot, pattern + pushed, chunk);
        pushed += chunk;
        pump(2); /* the session sends what the window allows */
    }
    assert_null(slot);
    /* abandoned only once more than the bound waited: what went out (at most a window) plus 1 MiB */
    assert_true(pushed > WP_MIRROR_BUFFER_MAX);
    assert_true(pushed <= WP_MIRROR_BUFFER_MAX + WIN + chunk);
    assert_true(pump_until(endpoint_ended, NULL, 2000));
    assert_int_equal(E.end.reason, H2_END_RESET_BY_PEER);
    assert_int_equal(E.end.code, NGHTTP2_CANCEL);
    assert_true(E.recv <= WIN);
    assert_false(E.bad);
    assert_false(E.eof);
    assert_int_equal(h2_conn_streams(client), 0);
}

/* The request it copies is cut short (the client reset it): the shadow is reset, not ended as if complete. */
static void test_cut_short_is_reset(void **state)
{
    (void)state;
    const struct h2_header h[] = GRPC_HEADERS("10.0.0.1:8080");
    assert_int_equal(wp_h2c_mirror_open(&slot, client, NULL, NULL, "r", h, 6, true), 0);
    assert_true(pump_until(got_request, NULL, 2000));
    assert_string_equal(E.authority, "10.0.0.1-shadow:8080");
    wp_h2c_mirror_data(slot, pattern, 1000);
    pump(5);
    wp_h2c_mirror_detach(slot);
    assert_null(slot);
    assert_true(pump_until(endpoint_ended, NULL, 2000));
    assert_int_equal(E.end.reason, H2_END_RESET_BY_PEER);
    assert_int_equal(E.end.code, NGHTTP2_CANCEL);
    assert_false(E.eof);
    assert_int_equal(E.recv, 1000);
}

/* The request it copies ended after its whole body: the shadow, detached, still delivers what is queued, ends
 * its request and reads its response, then goes. */
static void test_complete_finishes_detached(void **state)
{
    (void)state;
    const struct h2_header h[] = GRPC_HEADERS("svc:9090");
    assert_int_equal(wp_h2c_mirror_open(&slot, client, NULL, NULL, "r", h, 6, true), 0);
    wp_h2c_mirror_data(slot, pattern, 150000); /* queued: nothing has been sent yet */
    wp_h2c_mirror_eof(slot);
    struct wp_h2c_mirror *m = slot;
    wp_h2c_mirror_detach(m);
    assert_null(slot);
    assert_true(pump_until(endpoint_eof, NULL, 2000));
    assert_int_equal(E.recv, 150000);
    assert_false(E.bad);
    assert_true(pump_until(mirror_gone, NULL, 2000));
    assert_int_equal(E.end.reason, H2_END_OK);
    assert_int_equal(E.resp_off, RESP_LEN);
}

/* No :authority: no shadow (Envoy's shadowAppendedHost needs a host), nothing opened. */
static void test_no_authority(void **state)
{
    (void)state;
    const struct h2_header h[] = {{":method", "GET"}, {":scheme", "http"}, {":path", "/"}};
    assert_int_equal(wp_h2c_mirror_open(&slot, client, NULL, NULL, "r", h, 3, false), -EINVAL);
    assert_null(slot);
    assert_int_equal(h2_conn_streams(client), 0);
    /* and every hook takes the NULL a request keeps when it has no shadow */
    wp_h2c_mirror_data(NULL, pattern, 10);
    wp_h2c_mirror_trailers(NULL, h, 1);
    wp_h2c_mirror_eof(NULL);
    wp_h2c_mirror_detach(NULL);
}

int main(void)
{
    for (size_t i = 0; i < BODY_MAX; i++)
        pattern[i] = (uint8_t)(i * 7 + (i >> 11));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_copy, setup, teardown),
        cmocka_unit_test_setup_teardown(test_headers_only, setup, teardown),
        cmocka_unit_test_setup_teardown(test_slow_shadow_abandoned, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cut_short_is_reset, setup, teardown),
        cmocka_unit_test_setup_teardown(test_complete_finishes_detached, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_authority, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
