/* Unit tests for the side-door HTTP/1.1 server (src/http1/server.c): deadlines that trickled bytes do not
 * extend, keep-alive states, per-port connection limits closing the oldest idle connection when a port is
 * full, the request handed to the handler (path, query, Accept, method), size limits (414/431/413),
 * pipelining one response at a time, HEAD, a handler that does not answer, after_write, and http1_listen's
 * addresses. Connections are socketpairs driven by hand; the source is included to reach its states (the
 * library's copy is then not linked). */
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

#include "../../src/http1/server.c"

/* The handler: echoes what it was given, answers 200 unless the path says otherwise. */
struct seen {
    int calls, after;
    char path[128], query[128], accept[HTTP1_ACCEPT_MAX + 1];
    int method;
    bool silent; /* do not respond */
};

static void after(void *ud)
{
    ((struct seen *)ud)->after++;
}

static void handler(void *ud, struct http1_request *req)
{
    struct seen *s = ud;
    s->calls++;
    s->method = req->method;
    snprintf(s->path, sizeof(s->path), "%s", req->path);
    snprintf(s->query, sizeof(s->query), "%s", req->query ? req->query : "(none)");
    snprintf(s->accept, sizeof(s->accept), "%s", req->accept);
    if (s->silent) return;
    if (!strcmp(req->path, "/after")) {
        req->after_write = after;
        req->after_write_ud = s;
    }
    http1_respond_text(req, strcmp(req->path, "/missing") ? 200 : 404, "hello\n");
}

struct fixture {
    struct loop *loop;
    struct http1_server *srv;
    struct h1_port *pt;
    struct seen seen;
};

#define MAX_CONNS 8

static int srv_setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    char err[256];
    f->loop = loop_new();
    f->srv = http1_server_new(f->loop, "test::http1");
    int fd = http1_listen("127.0.0.1:0", NULL, err, sizeof(err));
    assert_true(fd >= 0);
    struct http1_limits lim = {.max_conns = MAX_CONNS};
    assert_int_equal(http1_server_listen(f->srv, fd, "test", &lim, handler, &f->seen), 0);
    f->pt = f->srv->ports;
    *state = f;
    return 0;
}

static int srv_teardown(void **state)
{
    struct fixture *f = *state;
    http1_server_free(f->srv);
    loop_free(f->loop);
    free(f);
    return 0;
}

/* A server connection on one end of a socketpair, adopted as an accepted one; *client gets the other end. */
static struct h1_conn *conn_new(struct fixture *f, int *client)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    *client = sv[1];
    h1_accept(&f->pt->acc, sv[0], NULL);
    assert_non_null(f->pt->tail);
    return f->pt->tail;
}

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
    struct fixture *f = *state;
    int cl;
    struct h1_conn *c = conn_new(f, &cl);
    assert_int_equal(c->st, H1_NEW);
    uint64_t deadline = c->deadline.when;
    assert_int_equal(deadline, loop_now(f->loop) + 2000);
    const char *req = "GET /x HTTP/1.1\r\nX-Slow: ";
    for (const char *p = req; *p; p++) {
        assert_int_equal(write(cl, p, 1), 1);
        h1_conn_io(&c->io, EPOLLIN);
        assert_int_equal(c->st, H1_READING);
        assert_int_equal(c->deadline.when, deadline);
    }
    h1_conn_deadline(&c->deadline);
    assert_true(closed_by_server(cl));
    assert_int_equal(http1_server_connections(f->srv), 0);
    assert_int_equal(f->seen.calls, 0);
    close(cl);
}

static void test_keepalive_and_request(void **state)
{
    struct fixture *f = *state;
    int cl;
    char buf[4096];
    struct h1_conn *c = conn_new(f, &cl);
    const char *req = "GET /a/b?x=1&y=2 HTTP/1.1\r\nAccept: text/plain\r\nACCEPT: application/json\r\n\r\n";
    assert_int_equal(write(cl, req, strlen(req)), (ssize_t)strlen(req));
    h1_conn_io(&c->io, EPOLLIN);
    ssize_t n = read(cl, buf, sizeof(buf) - 1);
    assert_true(n > 0);
    buf[n] = 0;
    assert_string_equal(buf,
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 6\r\n\r\nhello\n");
    assert_string_equal(f->seen.path, "/a/b");
    assert_string_equal(f->seen.query, "x=1&y=2");
    assert_string_equal(f->seen.accept, "text/plain, application/json");
    assert_int_equal(f->seen.method, HTTP_GET);
    assert_int_equal(c->st, H1_IDLE);
    assert_int_equal(c->deadline.when, loop_now(f->loop) + 60000);
    assert_int_equal(write(cl, "G", 1), 1);
    h1_conn_io(&c->io, EPOLLIN);
    assert_int_equal(c->st, H1_READING);
    assert_int_equal(c->deadline.when, loop_now(f->loop) + 2000);
    close(cl);
}

/* after_write runs when the response cannot be written too (the client left): a /quitquitquit still quits. */
static void test_after_write_when_the_client_left(void **state)
{
    struct fixture *f = *state;
    int cl;
    struct h1_conn *c = conn_new(f, &cl);
    const char *req = "POST /after HTTP/1.1\r\nContent-Length: 0\r\n\r\n";
    assert_int_equal(write(cl, req, strlen(req)), (ssize_t)strlen(req));
    close(cl); /* the server's send fails with EPIPE */
    h1_conn_io(&c->io, EPOLLIN);
    assert_int_equal(f->seen.calls, 1);
    assert_int_equal(f->seen.after, 1);
    assert_int_equal(http1_server_connections(f->srv), 0);
}

static void test_full_port_closes_oldest_idle(void **state)
{
    struct fixture *f = *state;
    int cls[MAX_CONNS + 1];
    struct h1_conn *cs[MAX_CONNS];
    for (int i = 0; i < MAX_CONNS; i++) {
        cs[i] = conn_new(f, &cls[i]);
        if (i != 5) {
            assert_int_equal(write(cls[i], "G", 1), 1);
            h1_conn_io(&cs[i]->io, EPOLLIN);
            assert_int_equal(cs[i]->st, H1_READING);
        }
    }
    assert_int_equal(f->pt->nconns, MAX_CONNS);
    struct h1_conn *fresh = conn_new(f, &cls[MAX_CONNS]);
    assert_int_equal(f->pt->nconns, MAX_CONNS);
    assert_true(closed_by_server(cls[5]));
    assert_false(closed_by_server(cls[0]));
    assert_int_equal(write(cls[MAX_CONNS], "G", 1), 1);
    h1_conn_io(&fresh->io, EPOLLIN);
    int last;
    conn_new(f, &last);
    assert_true(closed_by_server(cls[0]));
    assert_false(closed_by_server(cls[1]));
    for (int i = 0; i <= MAX_CONNS; i++)
        close(cls[i]);
    close(last);
}

struct collected {
    int n;
    char first[512], last[512];
};

static void collect(void *ud, const char *resp, size_t n)
{
    struct collected *c = ud;
    snprintf(c->n++ == 0 ? c->first : c->last, sizeof(c->first), "%.*s", (int)(n < 511 ? n : 511), resp);
}

static size_t feed(struct seen *s, const struct http1_limits *lim, const char *in, size_t len, size_t chunk,
                   struct collected *got)
{
    memset(got, 0, sizeof(*got));
    return http1_feed(lim, handler, s, (const uint8_t *)in, len, chunk, collect, got);
}

static void test_feed_limits_and_pipelining(void **state)
{
    (void)state;
    struct seen s = {0};
    struct collected got;
    const char *two = "GET /one HTTP/1.1\r\n\r\nHEAD /missing HTTP/1.1\r\n\r\n";
    assert_int_equal(feed(&s, NULL, two, strlen(two), 3, &got), 2);
    assert_non_null(strstr(got.first, "HTTP/1.1 200 OK\r\n"));
    /* HEAD: the head with the body's length, no body. */
    assert_string_equal(got.last,
                        "HTTP/1.1 404 Not Found\r\ncontent-type: text/plain\r\ncontent-length: 6\r\n\r\n");
    assert_int_equal(s.method, HTTP_HEAD);
    /* Connection: close is honoured and said. */
    const char *cl = "GET /one HTTP/1.1\r\nConnection: close\r\n\r\nGET /two HTTP/1.1\r\n\r\n";
    assert_int_equal(feed(&s, NULL, cl, strlen(cl), 0, &got), 1);
    assert_non_null(strstr(got.first, "connection: close\r\n"));
    /* Garbage: one 400, then the connection ends. */
    const char *bad = "\x01\x02 nonsense\r\n\r\nGET /one HTTP/1.1\r\n\r\n";
    assert_int_equal(feed(&s, NULL, bad, strlen(bad), 0, &got), 1);
    assert_non_null(strstr(got.first, "400 Bad Request"));
    /* Limits: URL, header block and body, each answered without calling the handler, then closed. */
    struct http1_limits lim = {.url_max = 16, .headers_max = 64, .body_max = 8};
    s.calls = 0;
    const char *longurl = "GET /0123456789abcdefgh HTTP/1.1\r\n\r\n";
    assert_int_equal(feed(&s, &lim, longurl, strlen(longurl), 0, &got), 1);
    assert_non_null(strstr(got.first, "414 URI Too Long"));
    char big[256];
    int bn = snprintf(big, sizeof(big), "GET / HTTP/1.1\r\nX-Big: %080d\r\n\r\n", 0);
    assert_int_equal(feed(&s, &lim, big, (size_t)bn, 0, &got), 1);
    assert_non_null(strstr(got.first, "431 Request Header Fields Too Large"));
    const char *body = "POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\n123456789";
    assert_int_equal(feed(&s, &lim, body, strlen(body), 0, &got), 1);
    assert_non_null(strstr(got.first, "413 Payload Too Large"));
    assert_int_equal(s.calls, 0);
    /* A handler that does not answer: 500. after_write runs once the response is out. */
    s.silent = true;
    assert_int_equal(feed(&s, NULL, two, strlen(two), 0, &got), 2);
    assert_non_null(strstr(got.first, "500 Internal Server Error"));
    s.silent = false;
    const char *aw = "POST /after HTTP/1.1\r\nContent-Length: 0\r\n\r\n";
    assert_int_equal(feed(&s, NULL, aw, strlen(aw), 0, &got), 1);
    assert_int_equal(s.after, 1);
    assert_int_equal(feed(&s, NULL, NULL, 0, 0, &got), 0);
}

static void test_listen_addresses(void **state)
{
    (void)state;
    char err[256];
    uint16_t port = 0;
    int fd = http1_listen("127.0.0.1:0", &port, err, sizeof(err));
    assert_true(fd >= 0);
    assert_true(port > 0);
    /* No SO_REUSEPORT: a second listener on the same port fails. */
    char again[32];
    snprintf(again, sizeof(again), "127.0.0.1:%u", port);
    assert_int_equal(http1_listen(again, NULL, err, sizeof(err)), -EADDRINUSE);
    assert_non_null(strstr(err, "listen on 127.0.0.1:"));
    close(fd);
    fd = http1_listen(":0", &port, err, sizeof(err));
    assert_true(fd >= 0);
    close(fd);
    static const char *const bad[] = {"",       "127.0.0.1",    "127.0.0.1:65536", "127.0.0.1:x",
                                      "::1:80", "[1.2.3.4]:80", "localhost:80",    "127.0.0.1:123456"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(http1_listen(bad[i], NULL, err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "expected ip:port"));
    }
    assert_int_equal(http1_listen(NULL, NULL, err, sizeof(err)), -EINVAL);
    fd = http1_listen("[::1]:0", &port, err, sizeof(err));
    if (fd >= 0) close(fd); /* IPv6 may be off in the test's namespace */
}

int main(void)
{
    log_set_level("error");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_deadline_not_extended_by_trickle, srv_setup, srv_teardown),
        cmocka_unit_test_setup_teardown(test_keepalive_and_request, srv_setup, srv_teardown),
        cmocka_unit_test_setup_teardown(test_full_port_closes_oldest_idle, srv_setup, srv_teardown),
        cmocka_unit_test_setup_teardown(test_after_write_when_the_client_left, srv_setup, srv_teardown),
        cmocka_unit_test(test_feed_limits_and_pipelining),
        cmocka_unit_test(test_listen_addresses),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
