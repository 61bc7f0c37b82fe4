/* Unit tests for ztunnel's admin servers (src/ztunnel/admin.c): each port's limits (the lock-out defences
 * themselves, deadlines not extended by trickled bytes and the oldest idle connection closed when a port is
 * full, are the HTTP server's and tested in test_http1.c), the routes of each port, the OpenMetrics choice
 * from Accept, and admin_feed (the socket-free request path the fuzzer uses). libzmesh.a does not contain
 * src/ztunnel, so the sources are included here (as test_metrics.c does). */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <cmocka.h>

#include "../../src/ztunnel/metrics.c"
#include "../../src/ztunnel/configdump.c"
#include "../../src/ztunnel/admin.c"

/* The limits each port hands to the HTTP server: istio's ztunnel's hyper settings and a slot count per port,
 * so one full port never takes another's slots (the server's own behaviour is in test_http1.c). */
static void test_port_limits(void **state)
{
    (void)state;
    static const int conns[3] = {ADM_ADMIN_MAX_CONNS, ADM_METRICS_MAX_CONNS, ADM_READY_MAX_CONNS};
    for (int k = 0; k < 3; k++) {
        assert_int_equal(adm_limits[k].max_conns, conns[k]);
        assert_int_equal(adm_limits[k].request_ms, ADM_REQUEST_MS);
        assert_int_equal(adm_limits[k].write_ms, ADM_WRITE_MS);
        assert_int_equal(adm_limits[k].idle_ms, ADM_IDLE_MS);
        assert_int_equal(adm_limits[k].url_max, ADM_URL_MAX);
        assert_int_equal(adm_limits[k].headers_max, ADM_HEADERS_MAX);
        assert_int_equal(adm_limits[k].body_max, ADM_BODY_MAX);
    }
    assert_int_equal(ADM_REQUEST_MS, 2000);
}

/* Istio's content_type: any Accept entry whose media type is application/openmetrics-text. */
static void test_accept_openmetrics(void **state)
{
    (void)state;
    assert_true(adm_accept_openmetrics("application/openmetrics-text"));
    assert_true(adm_accept_openmetrics("text/plain;q=0.5, Application/OpenMetrics-Text; version=1.0.0"));
    assert_true(adm_accept_openmetrics("text/plain,application/openmetrics-text;q=0.9"));
    assert_true(adm_accept_openmetrics("  application/openmetrics-text  "));
    assert_false(adm_accept_openmetrics(""));
    assert_false(adm_accept_openmetrics("text/plain"));
    assert_false(adm_accept_openmetrics("application/openmetrics-textx"));
    assert_false(adm_accept_openmetrics("xapplication/openmetrics-text"));
    assert_false(adm_accept_openmetrics("text/plain; x=application/openmetrics-text"));
}

struct collected {
    int n;
    char first[256], last[256];
};

static void collect(void *ud, const char *resp, size_t n)
{
    struct collected *c = ud;
    snprintf(c->n++ == 0 ? c->first : c->last, sizeof(c->first), "%.*s", (int)(n < 255 ? n : 255), resp);
}

static void test_feed(void **state)
{
    (void)state;
    struct collected got = {0};
    const char *in = "GET /healthz/ready HTTP/1.1\r\n\r\nGET /nope HTTP/1.1\r\n\r\n";
    /* Pieces of 3 bytes: requests split across reads, as over a socket. */
    assert_int_equal(admin_feed(ADMIN_SERVER_READINESS, (const uint8_t *)in, strlen(in), 3, collect, &got),
                     2);
    assert_int_equal(got.n, 2);
    assert_non_null(strstr(got.first, "HTTP/1.1 200 OK\r\n"));
    assert_non_null(strstr(got.first, "\r\n\r\nready\n"));
    /* Garbage gets one 400 and ends the connection. */
    memset(&got, 0, sizeof(got));
    const char *bad = "\x01\x02 nonsense\r\n\r\nGET /healthz/ready HTTP/1.1\r\n\r\n";
    assert_int_equal(admin_feed(ADMIN_SERVER_READINESS, (const uint8_t *)bad, strlen(bad), 0, collect, &got),
                     1);
    assert_non_null(strstr(got.first, "400 Bad Request"));
    /* A head over ADM_HEADERS_MAX gets 431. */
    size_t big = ADM_HEADERS_MAX + 64;
    char *req = malloc(big + 64);
    int hn = snprintf(req, 64, "GET /metrics HTTP/1.1\r\nX-Big: ");
    memset(req + hn, 'a', big);
    memcpy(req + hn + big, "\r\n\r\n", 4);
    memset(&got, 0, sizeof(got));
    assert_int_equal(
        admin_feed(ADMIN_SERVER_METRICS, (const uint8_t *)req, (size_t)hn + big + 4, 0, collect, &got), 1);
    assert_non_null(strstr(got.first, "431 Request Header Fields Too Large"));
    free(req);
    /* Out-of-range server and empty input. */
    assert_int_equal(admin_feed((enum admin_server)7, (const uint8_t *)in, strlen(in), 0, NULL, NULL), 0);
    assert_int_equal(admin_feed(ADMIN_SERVER_ADMIN, NULL, 0, 0, NULL, NULL), 0);
}

static int quits;
static void on_quit(void *ud)
{
    (void)ud;
    quits++;
}

/* Routes per port, Accept choosing the metrics format, and POST /quitquitquit answered but, fed, never
 * starting a shutdown. */
static void test_feed_routes(void **state)
{
    (void)state;
    struct collected got = {0};
    const char *om =
        "GET /stats/prometheus HTTP/1.1\r\nAccept: text/plain;q=0.5,application/openmetrics-text\r\n\r\n";
    assert_int_equal(admin_feed(ADMIN_SERVER_METRICS, (const uint8_t *)om, strlen(om), 0, collect, &got), 1);
    assert_non_null(strstr(got.first, "content-type: application/openmetrics-text"));
    memset(&got, 0, sizeof(got));
    const char *txt = "GET /metrics HTTP/1.1\r\n\r\n";
    assert_int_equal(admin_feed(ADMIN_SERVER_METRICS, (const uint8_t *)txt, strlen(txt), 0, collect, &got),
                     1);
    assert_non_null(strstr(got.first, "content-type: text/plain"));
    memset(&got, 0, sizeof(got));
    /* The admin's paths are not on the metrics port. */
    const char *cd = "GET /config_dump HTTP/1.1\r\n\r\n";
    assert_int_equal(admin_feed(ADMIN_SERVER_METRICS, (const uint8_t *)cd, strlen(cd), 0, collect, &got), 1);
    assert_non_null(strstr(got.first, "404 Not Found"));
    memset(&got, 0, sizeof(got));
    assert_int_equal(admin_feed(ADMIN_SERVER_ADMIN, (const uint8_t *)cd, strlen(cd), 0, collect, &got), 1);
    assert_non_null(strstr(got.first, "200 OK"));
    adm.hooks = (struct admin_hooks){.quit = on_quit};
    memset(&got, 0, sizeof(got));
    const char *q =
        "POST /quitquitquit HTTP/1.1\r\nContent-Length: 0\r\n\r\nGET /quitquitquit HTTP/1.1\r\n\r\n";
    assert_int_equal(admin_feed(ADMIN_SERVER_ADMIN, (const uint8_t *)q, strlen(q), 0, collect, &got), 2);
    assert_non_null(strstr(got.first, "\r\n\r\nshutdown now\n"));
    assert_non_null(strstr(got.last, "405 Method Not Allowed"));
    assert_int_equal(quits, 0);
    adm.hooks = (struct admin_hooks){0};
}

int main(void)
{
    log_set_level("error");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_port_limits),
        cmocka_unit_test(test_accept_openmetrics),
        cmocka_unit_test(test_feed),
        cmocka_unit_test(test_feed_routes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
