/* Unit tests for the admin servers' resistance to lock-out (src/ztunnel/admin.c): deadlines that trickled
 * bytes do not extend, per-port connection limits, closing the oldest idle connection when a port is full,
 * and admin_feed (the socket-free request path the fuzzer uses). Connections are socketpairs driven by hand;
 * libzmesh.a does not contain src/ztunnel, so the sources are included here (as test_metrics.c does). */
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

static int srv_setup(void **state)
{
    (void)state;
    adm.loop = loop_new();
    assert_non_null(adm.loop);
    adm.hooks = (struct admin_hooks){0};
    adm_settings_init();
    return 0;
}

static int srv_teardown(void **state)
{
    (void)state;
    for (int k = 0; k < 3; k++)
        while (adm.ports_[k].head)
            adm_conn_close(adm.ports_[k].head);
    assert_int_equal(adm.nconns, 0);
    loop_free(adm.loop);
    adm.loop = NULL;
    return 0;
}

/* A server connection of kind on one end of a socketpair; *client gets the other end. */
static struct adm_conn *conn_new(enum adm_kind kind, int *client)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    *client = sv[1];
    struct adm_conn *c = adm_conn_new(sv[0], kind);
    assert_non_null(c);
    return c;
}

/* True when the server closed its end (the client reads EOF). */
static bool closed_by_server(int client)
{
    char b[4096];
    ssize_t n;
    while ((n = read(client, b, sizeof(b))) > 0)
        ;
    return n == 0;
}

static void test_deadline_not_extended_by_trickle(void **state)
{
    (void)state;
    int cl;
    struct adm_conn *c = conn_new(ADM_READY, &cl);
    assert_int_equal(c->st, ADM_ST_NEW);
    assert_true(timer_armed(&c->deadline));
    uint64_t deadline = c->deadline.when;
    assert_int_equal(deadline, loop_now(adm.loop) + ADM_REQUEST_MS);
    /* A request trickled one byte at a time: every byte is read, none moves the deadline (the old idle
     * timer restarted on each read, so one byte every 20 s held the slot forever). */
    const char *req = "GET /healthz/ready HTTP/1.1\r\nX-Slow: ";
    for (const char *p = req; *p; p++) {
        assert_int_equal(write(cl, p, 1), 1);
        adm_conn_io(&c->io, EPOLLIN);
        assert_int_equal(c->st, ADM_ST_READING);
        assert_int_equal(c->deadline.when, deadline);
    }
    /* At the deadline the connection goes, without a response. */
    adm_conn_deadline(&c->deadline);
    assert_true(closed_by_server(cl));
    assert_int_equal(adm.nconns, 0);
    close(cl);
}

static void test_keepalive_states_and_deadlines(void **state)
{
    (void)state;
    int cl;
    char buf[4096];
    struct adm_conn *c = conn_new(ADM_READY, &cl);
    const char *req = "GET /healthz/ready HTTP/1.1\r\n\r\n";
    assert_int_equal(write(cl, req, strlen(req)), (ssize_t)strlen(req));
    adm_conn_io(&c->io, EPOLLIN);
    ssize_t n = read(cl, buf, sizeof(buf) - 1);
    assert_true(n > 0);
    buf[n] = 0;
    assert_non_null(strstr(buf, "200 OK"));
    /* Response written: keep-alive idle, under the idle timeout. */
    assert_int_equal(c->st, ADM_ST_IDLE);
    assert_int_equal(c->deadline.when, loop_now(adm.loop) + ADM_IDLE_MS);
    /* The next request's first byte starts its own request deadline. */
    assert_int_equal(write(cl, "G", 1), 1);
    adm_conn_io(&c->io, EPOLLIN);
    assert_int_equal(c->st, ADM_ST_READING);
    assert_int_equal(c->deadline.when, loop_now(adm.loop) + ADM_REQUEST_MS);
    close(cl);
}

static void test_full_port_closes_oldest_idle(void **state)
{
    (void)state;
    int cls[ADM_READY_MAX_CONNS + 1];
    struct adm_conn *cs[ADM_READY_MAX_CONNS];
    /* The port is full: every connection has begun a request except number 5, which is idle. */
    for (int i = 0; i < ADM_READY_MAX_CONNS; i++) {
        cs[i] = conn_new(ADM_READY, &cls[i]);
        if (i != 5) {
            assert_int_equal(write(cls[i], "G", 1), 1);
            adm_conn_io(&cs[i]->io, EPOLLIN);
            assert_int_equal(cs[i]->st, ADM_ST_READING);
        }
    }
    assert_int_equal(adm.ports_[ADM_READY].nconns, ADM_READY_MAX_CONNS);
    /* Other ports have their own slots: a full readiness port does not touch them, nor they it. */
    int other;
    conn_new(ADM_METRICS, &other);
    assert_int_equal(adm.ports_[ADM_READY].nconns, ADM_READY_MAX_CONNS);
    /* A new one is admitted and the idle one is closed, not the oldest busy one. */
    struct adm_conn *fresh = conn_new(ADM_READY, &cls[ADM_READY_MAX_CONNS]);
    assert_int_equal(adm.ports_[ADM_READY].nconns, ADM_READY_MAX_CONNS);
    assert_true(closed_by_server(cls[5]));
    assert_false(closed_by_server(cls[0]));
    /* Full again with only busy connections: the one whose request began first goes (cs[0]). */
    assert_int_equal(write(cls[ADM_READY_MAX_CONNS], "G", 1), 1);
    adm_conn_io(&fresh->io, EPOLLIN);
    int last;
    conn_new(ADM_READY, &last);
    assert_true(closed_by_server(cls[0]));
    assert_false(closed_by_server(cls[1]));
    for (int i = 0; i <= ADM_READY_MAX_CONNS; i++)
        close(cls[i]);
    close(other);
    close(last);
}

struct collected {
    int n;
    char first[256];
};

static void collect(void *ud, const char *resp, size_t n)
{
    struct collected *c = ud;
    if (c->n++ == 0) snprintf(c->first, sizeof(c->first), "%.*s", (int)(n < 255 ? n : 255), resp);
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

int main(void)
{
    log_set_level("error");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_deadline_not_extended_by_trickle, srv_setup, srv_teardown),
        cmocka_unit_test_setup_teardown(test_keepalive_states_and_deadlines, srv_setup, srv_teardown),
        cmocka_unit_test_setup_teardown(test_full_port_closes_oldest_idle, srv_setup, srv_teardown),
        cmocka_unit_test(test_feed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
