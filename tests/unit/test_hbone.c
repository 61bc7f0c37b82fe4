/* Unit tests for HBONE (src/h2/hbone.c): an in-process client and server on one loop, over a real TCP
 * loopback connection, with real certificates minted by the local CA. The "apps" at both ends of a tunnel are
 * socketpairs driven by the same loop; they move a position-dependent byte pattern so loss, duplication or
 * reordering is caught. Every wait is bounded: the loop runs until a condition holds or a safety timeout
 * stops it. */
#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>
#include <nghttp2/nghttp2.h>
#include <sys/time.h>

#include "core/loop.h"
#include "core/net.h"
#include "h2/budget.h"
#include "h2/hbone.h"
#include "tls/ca.h"
#include "tls/spiffe.h"
#include "tls/tls.h"

#define ID_SERVER "spiffe://cluster.local/ns/default/sa/server"
#define ID_CLIENT "spiffe://cluster.local/ns/default/sa/client"
#define ID_OTHER "spiffe://cluster.local/ns/default/sa/other"
#define MIB (1u << 20)
#define MAX_STREAMS 160

static char dir[64];
static struct cert_provider *ca;
static struct tls_cert *cert_server, *cert_client;
static SSL_CTX *sctx, *cctx;
static struct loop *L;

/* ---- running the loop until a condition holds ---- */

struct waiter {
    struct timer tick, safety;
    bool (*pred)(void);
    bool met;
};

static void tick_cb(struct timer *t)
{
    struct waiter *w = container_of(t, struct waiter, tick);
    if (w->pred && w->pred()) {
        w->met = true;
        loop_stop(L);
        return;
    }
    timer_start(L, &w->tick, 1);
}

static void safety_cb(struct timer *t)
{
    (void)t;
    loop_stop(L);
}

/* Runs the loop until pred() is true (checked every millisecond) or timeout_ms passes; pred NULL just runs
 * for timeout_ms. Returns whether pred became true. */
static bool run_until(bool (*pred)(void), uint64_t timeout_ms)
{
    struct waiter w = {.tick = {.cb = tick_cb}, .safety = {.cb = safety_cb}, .pred = pred};
    timer_start(L, &w.tick, 0);
    timer_start(L, &w.safety, timeout_ms);
    loop_run(L);
    timer_stop(L, &w.tick);
    timer_stop(L, &w.safety);
    return w.met;
}

/* ---- pattern apps: tests/unit/pattern_app.h ---- */

#include "pattern_app.h"

/* ---- server side ---- */

struct srv_stream {
    struct app app;
    int done_calls;
    struct hbone_result res;
    char err[256];
};

static struct {
    struct io lio;
    int lfd;
    uint16_t port;
    struct hbone_conn *conn;
    int accepted, closed_calls;
    int requests, bad_requests;
    int done_total;
    char last_authority[64];
    /* Template for the apps behind accepted streams. */
    uint64_t app_send, app_extra;
    bool app_shut_after_eof;
    const int *app_peer_done;
    struct srv_stream st[MAX_STREAMS];
    bool app_paused;
    int unanswered;
    uint16_t app9_port;
    int app9_requests;
} srv;

static void srv_stream_done(struct hbone_stream *s, void *ud, const struct hbone_result *r)
{
    (void)s;
    struct srv_stream *ss = ud;
    ss->done_calls++;
    ss->res = *r;
    snprintf(ss->err, sizeof(ss->err), "%s", r->error ? r->error : "");
    ss->res.error = r->error ? ss->err : NULL;
    srv.done_total++;
}

static const struct hbone_stream_ops srv_stream_ops = {.on_done = srv_stream_done};

static void srv_on_request(struct hbone_stream *s, void *ud, const struct hbone_request *req)
{
    (void)ud;
    /* Port 9 connects to a real TCP "app" (rapid-reset test) and answers when connected. */
    if (strstr(req->authority, ":9") && strlen(strstr(req->authority, ":9")) == 2) {
        srv.app9_requests++;
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        struct sockaddr_in sa = {
            .sin_family = AF_INET, .sin_port = htons(srv.app9_port), .sin_addr = {htonl(INADDR_LOOPBACK)}};
        if (fd < 0 || (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 && errno != EINPROGRESS)) {
            if (fd >= 0) close(fd);
            hbone_stream_respond(s, 503, -1, NULL, 0);
            return;
        }
        hbone_stream_respond(s, 200, fd, NULL, 0);
        return;
    }
    /* Port 7 never gets an answer: the client resets it (reset-storm test). */
    if (strstr(req->authority, ":7") && strlen(strstr(req->authority, ":7")) == 2) {
        srv.unanswered++;
        return;
    }
    int i = srv.requests++;
    if (i >= MAX_STREAMS) {
        hbone_stream_respond(s, 503, -1, NULL, 0);
        return;
    }
    struct srv_stream *ss = &srv.st[i];
    memset(ss, 0, sizeof(*ss));
    hbone_stream_set_ops(s, &srv_stream_ops, ss);
    snprintf(srv.last_authority, sizeof(srv.last_authority), "%s", req->authority);
    /* The request as the client built it: CONNECT, the authority, our extra header in lower case. */
    bool hdr_ok = false;
    for (size_t k = 0; k < req->n_headers; k++)
        if (strcmp(req->headers[k].name, "x-zmesh-test") == 0 && strcmp(req->headers[k].value, "hello") == 0)
            hdr_ok = true;
    struct ip_addr ip;
    uint16_t port;
    if (strcmp(req->method, "CONNECT") != 0 || !hdr_ok ||
        authority_parse(req->authority, strlen(req->authority), &ip, &port) < 0) {
        srv.bad_requests++;
        hbone_stream_respond(s, 400, -1, NULL, 0);
        return;
    }
    /* The port picks the answer, so one server serves every test case. */
    if (port == 400 || port == 503) {
        hbone_stream_respond(s, port, -1, NULL, 0);
        return;
    }
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0) {
        hbone_stream_respond(s, 503, -1, NULL, 0);
        return;
    }
    app_init(&ss->app, sv[1], 2, 1, srv.app_send);
    ss->app.extra_after_eof = srv.app_extra;
    ss->app.shut_after_eof = srv.app_shut_after_eof;
    ss->app.peer_done = srv.app_peer_done;
    ss->app.paused = srv.app_paused;
    hbone_stream_respond(s, 200, sv[0], NULL, 0);
    app_go(&ss->app);
}

static void srv_on_closed(struct hbone_conn *c, void *ud, const struct h2_end *e)
{
    (void)ud, (void)e;
    srv.closed_calls++;
    if (c == srv.conn) srv.conn = NULL;
}

static const struct hbone_conn_ops srv_ops = {.on_closed = srv_on_closed, .on_request = srv_on_request};

static void accept_cb(struct io *io, uint32_t ev)
{
    (void)ev;
    for (;;) {
        int fd = accept4(io->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) return;
        struct hbone_conn *c = hbone_server_new(L, fd, sctx, &srv_ops, NULL);
        if (c) {
            srv.conn = c;
            srv.accepted++;
        }
    }
}

/* ---- client side ---- */

struct cli_stream {
    struct app app;
    struct hbone_stream *s;
    int resp_calls, resp_status, done_calls;
    struct hbone_result res;
    char err[256];
};

static struct {
    struct hbone_conn *c;
    int ready_calls, closed_calls;
    bool closed_err_set, established_at_close;
    char closed_err[512];
    enum h2_end_reason closed_reason;
    int resp_total, resp_200, done_total;
    struct cli_stream st[MAX_STREAMS];
    int n_st;
} cli;

static void cli_on_ready(struct hbone_conn *c, void *ud)
{
    (void)c, (void)ud;
    cli.ready_calls++;
}

static void cli_on_closed(struct hbone_conn *c, void *ud, const struct h2_end *e)
{
    (void)ud;
    const char *err = e->detail;
    cli.closed_reason = e->reason;
    cli.closed_calls++;
    cli.closed_err_set = err != NULL;
    cli.established_at_close = hbone_conn_established(c);
    snprintf(cli.closed_err, sizeof(cli.closed_err), "%s", err ? err : "");
    if (c == cli.c) cli.c = NULL;
}

static const struct hbone_conn_ops cli_ops = {.on_ready = cli_on_ready, .on_closed = cli_on_closed};

static void cli_stream_response(struct hbone_stream *s, void *ud, int status)
{
    (void)s;
    struct cli_stream *cs = ud;
    cs->resp_calls++;
    cs->resp_status = status;
    cli.resp_total++;
    if (status == 200) cli.resp_200++;
}

static void cli_stream_done(struct hbone_stream *s, void *ud, const struct hbone_result *r)
{
    (void)s;
    struct cli_stream *cs = ud;
    cs->done_calls++;
    cs->res = *r;
    snprintf(cs->err, sizeof(cs->err), "%s", r->error ? r->error : "");
    cs->res.error = r->error ? cs->err : NULL;
    cs->s = NULL;
    cli.done_total++;
}

static const struct hbone_stream_ops cli_stream_ops = {.on_done = cli_stream_done,
                                                       .on_response = cli_stream_response};

static void cli_connect_sndbuf(const char *expected, int sndbuf)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    if (sndbuf) assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf)), 0);
    struct sockaddr_in sa = {
        .sin_family = AF_INET, .sin_port = htons(srv.port), .sin_addr = {htonl(INADDR_LOOPBACK)}};
    int rc = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
    assert_true(rc == 0 || errno == EINPROGRESS);
    const char *exp[1] = {expected};
    cli.c = hbone_client_new(L, fd, cctx, exp, 1, &cli_ops, NULL);
    assert_non_null(cli.c);
}

static void cli_connect(const char *expected)
{
    cli_connect_sndbuf(expected, 0);
}

/* Opens a stream to 127.0.0.1:port with an app that sends to_send bytes. Returns the stream slot, or NULL
 * when the conn refused the stream (the fd is then checked to still be ours, and closed). */
static struct cli_stream *cli_open(uint16_t port, uint64_t to_send, bool shut_after_eof)
{
    assert_true(cli.n_st < MAX_STREAMS);
    struct cli_stream *cs = &cli.st[cli.n_st];
    memset(cs, 0, sizeof(*cs));
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), 0);
    char auth[32];
    snprintf(auth, sizeof(auth), "127.0.0.1:%u", port);
    struct hbone_header h[] = {{":authority", auth}, {"x-zmesh-test", "hello"}};
    cs->s = hbone_stream_open(cli.c, h, 2, sv[0], &cli_stream_ops, cs);
    if (!cs->s) {
        assert_true(fcntl(sv[0], F_GETFD) >= 0); /* "tcp_fd untouched" */
        close(sv[0]);
        close(sv[1]);
        return NULL;
    }
    cli.n_st++;
    app_init(&cs->app, sv[1], 1, 2, to_send);
    cs->app.shut_after_eof = shut_after_eof;
    app_go(&cs->app);
    return cs;
}

/* ---- fixtures ---- */

static struct tls_cert *fetch(const char *uri)
{
    struct spiffe_id id;
    char err[256] = "";
    if (spiffe_parse(uri, strlen(uri), &id) < 0) return NULL;
    struct tls_cert *c = ca->fetch(ca, &id, err, sizeof(err));
    if (!c) print_error("fetch %s: %s\n", uri, err);
    return c;
}

static int group_setup(void **state)
{
    (void)state;
    char err[256];
    strcpy(dir, "/tmp/zmesh-hbone-XXXXXX");
    if (!mkdtemp(dir)) return -1;
    if (ca_write_root(dir, NULL, err, sizeof(err)) < 0 || !(ca = ca_local_new(dir, err, sizeof(err)))) {
        print_error("CA: %s\n", err);
        return -1;
    }
    if (!(cert_server = fetch(ID_SERVER)) || !(cert_client = fetch(ID_CLIENT))) return -1;
    if (!(sctx = tls_server_ctx_new(cert_server)) || !(cctx = tls_client_ctx_new(cert_client))) {
        print_error("SSL_CTX: %s\n", tls_errstr(err, sizeof(err)));
        return -1;
    }
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    char p[128];
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
    tls_cert_unref(cert_server);
    tls_cert_unref(cert_client);
    if (ca) ca->destroy(ca);
    snprintf(p, sizeof(p), "%s/root-cert.pem", dir);
    unlink(p);
    snprintf(p, sizeof(p), "%s/root-key.pem", dir);
    unlink(p);
    rmdir(dir);
    return 0;
}

static int setup(void **state)
{
    (void)state;
    memset(&srv, 0, sizeof(srv));
    memset(&cli, 0, sizeof(cli));
    L = loop_new();
    if (!L) return -1;
    srv.lfd = net_listen_local(0, 128);
    if (srv.lfd < 0) return -1;
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    struct ip_addr ip;
    getsockname(srv.lfd, (struct sockaddr *)&ss, &len);
    sockaddr_to(&ss, &ip, &srv.port);
    srv.lio = (struct io){.fd = srv.lfd, .cb = accept_cb};
    return loop_io_add(L, &srv.lio, EPOLLIN);
}

static bool both_closed(void)
{
    return !cli.c && !srv.conn;
}

static int teardown(void **state)
{
    (void)state;
    if (cli.c) hbone_conn_close(cli.c, "test teardown");
    run_until(both_closed, 2000);
    if (srv.conn) hbone_conn_close(srv.conn, "test teardown");
    run_until(NULL, 5); /* deferred frees */
    for (int i = 0; i < MAX_STREAMS; i++) {
        app_close(&cli.st[i].app);
        app_close(&srv.st[i].app);
    }
    loop_io_del(L, &srv.lio);
    close(srv.lfd);
    loop_free(L);
    L = NULL;
    return 0;
}

/* ---- tests ---- */

static bool bulk_done(void)
{
    return cli.st[0].app.eof && srv.st[0].app.eof && cli.st[0].done_calls && srv.st[0].done_calls;
}

/* 3 MiB each way (more than half the 4 MiB stream window, over several window updates), then a half-close:
 * the client app's FIN reaches the server app as EOF, and the server's reply written after that EOF still
 * arrives before the tunnel closes. */
static void test_bulk_and_half_close(void **state)
{
    (void)state;
    const uint64_t n = 3 * MIB, reply = 4096;
    srv.app_send = n;
    srv.app_extra = reply;
    srv.app_shut_after_eof = true;
    srv.app_peer_done = &cli.st[0].done_calls;
    cli_connect(ID_SERVER);
    assert_true(hbone_conn_usable(cli.c));
    assert_false(hbone_conn_ready(cli.c));
    struct cli_stream *cs = cli_open(8080, n, false); /* FIN right after the last byte */
    assert_non_null(cs);
    assert_int_equal(hbone_conn_streams(cli.c), 1); /* queued during the handshake */
    assert_true(run_until(bulk_done, 30000));

    assert_int_equal(cli.ready_calls, 1);
    assert_int_equal(srv.requests, 1);
    assert_int_equal(srv.bad_requests, 0);
    assert_string_equal(srv.last_authority, "127.0.0.1:8080");
    struct app *ca_app = &cs->app, *sa_app = &srv.st[0].app;
    assert_false(ca_app->bad);
    assert_false(sa_app->bad);
    assert_int_equal(ca_app->err, 0);
    assert_int_equal(sa_app->err, 0);
    assert_int_equal(sa_app->recvd, n);
    assert_int_equal(ca_app->recvd, n + reply);
    assert_int_equal(sa_app->sent, n + reply);
    assert_int_equal(sa_app->peer_done_at_eof, 0); /* the client stream was alive when the server saw EOF */
    /* Exact counts and clean ends on both sides. */
    assert_int_equal(cs->resp_calls, 1);
    assert_int_equal(cs->resp_status, 200);
    assert_int_equal(cs->done_calls, 1);
    assert_int_equal(cs->res.status, 200);
    assert_int_equal(cs->res.bytes_to_h2, n);
    assert_int_equal(cs->res.bytes_to_tcp, n + reply);
    assert_null(cs->res.error);
    struct srv_stream *ss = &srv.st[0];
    assert_int_equal(ss->done_calls, 1);
    assert_int_equal(ss->res.status, 200);
    assert_int_equal(ss->res.bytes_to_tcp, n);
    assert_int_equal(ss->res.bytes_to_h2, n + reply);
    assert_null(ss->res.error);
    /* Identities both ways. */
    assert_non_null(cli.c);
    assert_non_null(srv.conn);
    assert_true(hbone_conn_ready(cli.c));
    assert_true(hbone_conn_established(cli.c));
    assert_string_equal(hbone_conn_peer_id(cli.c), ID_SERVER);
    assert_string_equal(hbone_conn_peer_id(srv.conn), ID_CLIENT);
    assert_int_equal(hbone_conn_streams(cli.c), 0);
    assert_int_equal(hbone_conn_streams(srv.conn), 0);
    /* The conn outlives its streams (pooling) and still takes new ones. */
    assert_true(hbone_conn_usable(cli.c));
    /* A client close ends the server conn too. */
    hbone_conn_close(cli.c, NULL);
    assert_int_equal(cli.closed_calls, 1);
    assert_false(cli.closed_err_set);
    assert_true(run_until(both_closed, 5000));
    assert_int_equal(srv.closed_calls, 1);
}

#define CHATTY_STREAMS 40
#define CHATTY_BYTES (200u * 1024)

static bool chatty_done(void)
{
    if (cli.done_total != CHATTY_STREAMS || srv.done_total != CHATTY_STREAMS) return false;
    /* A stream's on_done comes when its bytes left for the app's socket; the test's apps read them from
     * their sockets in later loop turns (under ASan, many turns later): wait for the apps too. */
    for (int i = 0; i < CHATTY_STREAMS; i++)
        if (cli.st[i].app.recvd < CHATTY_BYTES || srv.st[i].app.recvd < CHATTY_BYTES) return false;
    return true;
}

/* Many interactive streams (each below the 1 MiB after which a stream gets its own bulk buffer) moving data
 * both ways at once on one connection, client and server conns on one thread: more streams hold bytes at
 * once than the thread's pool of small "up" buffers has (8), so both the pooled and the copy-what-arrived
 * reads run, and the two conns share the thread's output buffer. The client's TLS socket has a small send
 * buffer, so sends stop part-way and what is left of the thread's buffer moves to the conn (copied when
 * small, handed over when large). Every byte arrives once, in order. */
static void test_many_chatty_streams(void **state)
{
    (void)state;
    srv.app_send = CHATTY_BYTES;
    cli_connect_sndbuf(ID_SERVER, 8192);
    for (int i = 0; i < CHATTY_STREAMS; i++)
        assert_non_null(cli_open(8080, CHATTY_BYTES, true));
    assert_true(run_until(chatty_done, 30000));
    for (int i = 0; i < CHATTY_STREAMS; i++) {
        struct cli_stream *cs = &cli.st[i];
        struct srv_stream *ss = &srv.st[i];
        assert_false(cs->app.bad);
        assert_false(ss->app.bad);
        assert_int_equal(cs->app.recvd, CHATTY_BYTES);
        assert_int_equal(ss->app.recvd, CHATTY_BYTES);
        assert_null(cs->res.error);
        assert_null(ss->res.error);
        assert_int_equal(cs->res.bytes_to_h2, CHATTY_BYTES);
        assert_int_equal(cs->res.bytes_to_tcp, CHATTY_BYTES);
    }
    assert_non_null(cli.c);
    assert_true(hbone_conn_usable(cli.c));
    assert_int_equal(hbone_buffered_bytes(), 0);
}

static bool errors_done(void)
{
    return cli.done_total == 3 && srv.done_total == 3 && cli.st[0].app.eof && cli.st[1].app.eof;
}

static void test_error_status(void **state)
{
    (void)state;
    cli_connect(ID_SERVER);
    struct cli_stream *s400 = cli_open(400, 0, true);
    struct cli_stream *s503 = cli_open(503, 0, true);
    /* A request the server finds malformed: the authority is not ip:port. */
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), 0);
    struct cli_stream *sbad = &cli.st[cli.n_st++];
    memset(sbad, 0, sizeof(*sbad));
    struct hbone_header h[] = {{":authority", "example.com:80"}, {"x-zmesh-test", "hello"}};
    sbad->s = hbone_stream_open(cli.c, h, 2, sv[0], &cli_stream_ops, sbad);
    assert_non_null(sbad->s);
    app_init(&sbad->app, sv[1], 1, 2, 0);
    sbad->app.shut_after_eof = true;
    app_go(&sbad->app);
    assert_non_null(s400);
    assert_non_null(s503);
    assert_true(run_until(errors_done, 10000));

    assert_int_equal(s400->resp_calls, 1);
    assert_int_equal(s400->resp_status, 400);
    assert_int_equal(s400->done_calls, 1);
    assert_int_equal(s400->res.status, 400);
    assert_non_null(s400->res.error);
    assert_non_null(strstr(s400->res.error, "400"));
    assert_int_equal(s400->res.bytes_to_h2, 0);
    assert_int_equal(s400->res.bytes_to_tcp, 0);
    assert_true(s400->app.eof); /* the client-side tcp fd was closed */
    assert_int_equal(s400->app.recvd, 0);

    assert_int_equal(s503->res.status, 503);
    assert_non_null(s503->res.error);
    assert_true(s503->app.eof);

    assert_int_equal(sbad->res.status, 400);
    assert_int_equal(srv.bad_requests, 1);

    /* The server saw each stream end with the status it sent. */
    int seen400 = 0, seen503 = 0;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(srv.st[i].done_calls, 1);
        if (srv.st[i].res.status == 400) seen400++;
        if (srv.st[i].res.status == 503) seen503++;
    }
    assert_int_equal(seen400, 2);
    assert_int_equal(seen503, 1);
    /* Error responses end streams, not the connection. */
    assert_non_null(cli.c);
    assert_true(hbone_conn_usable(cli.c));
    assert_int_equal(hbone_conn_streams(cli.c), 0);
    assert_int_equal(cli.closed_calls, 0);
}

/* The tunnel's end of the socketpair was closed: EOF, or ECONNRESET when the app had sent bytes nobody read.
 */
static bool app_peer_closed(const struct app *a)
{
    return a->eof || a->err == ECONNRESET;
}

static bool cli_closed(void)
{
    return cli.closed_calls > 0 && app_peer_closed(&cli.st[0].app);
}

static void test_san_mismatch(void **state)
{
    (void)state;
    cli_connect(ID_OTHER);
    struct cli_stream *cs = cli_open(8080, 100, false);
    assert_non_null(cs);
    bool ok = run_until(cli_closed, 10000);
    if (!ok)
        print_error("closed_calls %d err \"%s\" stream done %d app eof %d srv requests %d\n",
                    cli.closed_calls, cli.closed_err, cs->done_calls, cs->app.eof, srv.requests);
    assert_true(ok);
    assert_int_equal(cli.closed_calls, 1);
    assert_true(cli.closed_err_set);
    if (!strstr(cli.closed_err, "identity")) print_error("closed with: %s\n", cli.closed_err);
    assert_non_null(strstr(cli.closed_err, "identity verification error"));
    assert_int_equal(cli.closed_reason, H2_END_IDENTITY);
    assert_false(cli.established_at_close);
    assert_int_equal(cli.ready_calls, 0);
    assert_int_equal(cs->done_calls, 1);
    assert_non_null(cs->res.error);
    assert_int_equal(cs->res.reason, H2_END_IDENTITY); /* what outbound turns into IDENTITY_ERROR */
    assert_int_equal(cs->res.status, 0);
    assert_int_equal(cs->resp_calls, 0);
    assert_true(app_peer_closed(&cs->app));
    assert_int_equal(srv.requests, 0); /* no request went out to the wrong peer */
}

static bool got_100(void)
{
    return cli.resp_200 == 100;
}

static bool got_150(void)
{
    return cli.resp_200 == 150 && srv.done_total == 50;
}

static bool all_ended(void)
{
    return srv.done_total == 150 && srv.closed_calls == 1;
}

static void test_stream_limit(void **state)
{
    (void)state;
    srv.app_shut_after_eof = true; /* server apps stay open until the tunnel ends */
    cli_connect(ID_SERVER);
    for (int i = 0; i < 100; i++) {
        assert_true(hbone_conn_usable(cli.c));
        assert_non_null(cli_open(8080, 0, true));
    }
    assert_int_equal(hbone_conn_streams(cli.c), 100);
    assert_false(hbone_conn_usable(cli.c));
    assert_null(cli_open(8080, 0, true)); /* refused, fd left to the caller */
    assert_true(run_until(got_100, 10000));
    assert_int_equal(hbone_conn_max_streams(cli.c), HBONE_CLIENT_MAX_STREAMS);
    assert_int_equal(hbone_conn_streams(cli.c), 100);
    assert_int_equal(hbone_conn_streams(srv.conn), 100);
    assert_false(hbone_conn_usable(cli.c));

    /* Ending 50 frees 50 slots at once. */
    for (int i = 0; i < 50; i++)
        hbone_stream_reset(cli.st[i].s, "test reset");
    for (int i = 0; i < 50; i++) {
        assert_int_equal(cli.st[i].done_calls, 1);
        assert_string_equal(cli.st[i].res.error, "test reset");
        assert_int_equal(cli.st[i].res.status, 200);
    }
    assert_int_equal(hbone_conn_streams(cli.c), 50);
    int opened = 0;
    while (hbone_conn_usable(cli.c) && opened < 60) {
        assert_non_null(cli_open(8080, 0, true));
        opened++;
    }
    assert_int_equal(opened, 50);
    assert_int_equal(hbone_conn_streams(cli.c), 100);
    assert_true(run_until(got_150, 10000));
    assert_int_equal(srv.requests, 150);
    assert_int_equal(hbone_conn_streams(srv.conn), 100);
    /* The reset reached the server as the end of those tunnels. */
    for (int i = 0; i < 50; i++)
        assert_true(srv.st[i].app.eof);

    /* Closing the conn ends every remaining stream with the reason, before on_closed. */
    hbone_conn_close(cli.c, "bye");
    assert_int_equal(cli.closed_calls, 1);
    assert_string_equal(cli.closed_err, "bye");
    assert_int_equal(cli.done_total, 150);
    for (int i = 50; i < 150; i++) {
        assert_int_equal(cli.st[i].done_calls, 1);
        assert_string_equal(cli.st[i].res.error, "bye");
    }
    assert_true(run_until(all_ended, 10000));
}

static bool got_2(void)
{
    return cli.resp_200 == 2;
}

static bool goaway_seen(void)
{
    return cli.c && !hbone_conn_usable(cli.c);
}

static bool data_after_goaway(void)
{
    return srv.st[0].app.recvd == 10000 && cli.st[1].app.recvd == 20000;
}

static bool drained(void)
{
    return cli.closed_calls == 1 && srv.closed_calls == 1 && cli.st[0].app.eof && cli.st[1].app.eof;
}

static void test_drain(void **state)
{
    (void)state;
    srv.app_shut_after_eof = true;
    cli_connect(ID_SERVER);
    struct cli_stream *a = cli_open(8080, 0, true);
    struct cli_stream *b = cli_open(8081, 0, true);
    assert_non_null(a);
    assert_non_null(b);
    assert_true(run_until(got_2, 5000));
    assert_true(hbone_conn_usable(cli.c));

    hbone_conn_drain(srv.conn);
    assert_true(run_until(goaway_seen, 5000));
    assert_null(cli_open(8082, 0, true)); /* no new streams after GOAWAY */
    assert_int_equal(hbone_conn_streams(cli.c), 2);
    assert_int_equal(cli.closed_calls, 0);

    /* Streams that existed keep working both ways. */
    a->app.to_send = 10000;
    app_go(&a->app);
    srv.st[1].app.to_send = 20000;
    app_go(&srv.st[1].app);
    assert_true(run_until(data_after_goaway, 5000));

    /* When the last stream ends, both sides close cleanly. */
    a->app.shut_after_eof = false;
    b->app.shut_after_eof = false;
    app_go(&a->app);
    app_go(&b->app);
    assert_true(run_until(drained, 5000));
    assert_false(cli.closed_err_set);
    assert_int_equal(a->done_calls, 1);
    assert_int_equal(b->done_calls, 1);
    assert_null(a->res.error);
    assert_null(b->res.error);
    assert_int_equal(a->res.bytes_to_h2, 10000);
    assert_int_equal(b->res.bytes_to_tcp, 20000);
    assert_true(a->app.eof && b->app.eof);
}

/* ---- back-pressure: windows are consumed only as bytes reach the app ---- */

static bool bp_done(void)
{
    return srv.st[0].app.recvd == 64 * MIB && cli.st[0].done_calls && srv.st[0].done_calls;
}

static void test_backpressure(void **state)
{
    (void)state;
    const uint64_t n = 64 * MIB;
    srv.app_paused = true; /* the server app does not read */
    cli_connect(ID_SERVER);
    struct cli_stream *cs = cli_open(8080, n, false);
    assert_non_null(cs);
    run_until(NULL, 1000);
    uint64_t to_h2, to_tcp;
    hbone_stream_bytes(cs->s, &to_h2, &to_tcp);
    /* At most the initial stream window beyond what the app's socket buffer took: a stream whose app does
     * not read never gets a larger window. */
    assert_true(srv.requests == 1);
    assert_true(to_h2 >= HBONE_STREAM_WINDOW_INIT);
    assert_true(to_h2 <= HBONE_STREAM_WINDOW_INIT + 2 * MIB);
    assert_true(hbone_buffered_bytes() <= HBONE_STREAM_WINDOW_INIT);
    assert_true(cs->app.sent < 12 * MIB); /* the sending app is blocked too */
    /* Once the app reads, everything arrives intact. */
    srv.st[0].app.paused = false;
    app_go(&srv.st[0].app);
    assert_true(run_until(bp_done, 60000));
    assert_false(srv.st[0].app.bad);
    assert_int_equal(cs->res.bytes_to_h2, n);
    assert_null(cs->res.error);
}

static bool cli_ready(void)
{
    return cli.ready_calls > 0;
}

/* ---- many resets: a client whose apps reset their connections must not lose the pooled connection to the
 * server's rapid-reset guard ---- */

static int storm_done;
static void storm_done_cb(struct hbone_stream *s, void *ud, const struct hbone_result *r)
{
    (void)s, (void)ud, (void)r;
    storm_done++;
}
static const struct hbone_stream_ops storm_ops = {.on_done = storm_done_cb};

static int storm_sent;
static bool storm_all_seen(void)
{
    return srv.unanswered == storm_sent;
}

static void test_reset_storm(void **state)
{
    (void)state;
    struct hbone_stream *batch[50];
    struct hbone_header h[] = {{":authority", "127.0.0.1:7"}};
    storm_done = storm_sent = 0;
    cli_connect(ID_SERVER);
    assert_true(run_until(cli_ready, 5000));
    for (int b = 0; b < 40; b++) { /* 2000 resets, twice the guard's default burst */
        for (int i = 0; i < 50; i++) {
            int sv[2];
            assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv), 0);
            batch[i] = hbone_stream_open(cli.c, h, 1, sv[0], &storm_ops, NULL);
            assert_non_null(batch[i]);
            close(sv[1]);
        }
        storm_sent += 50;
        assert_true(run_until(storm_all_seen, 5000)); /* the HEADERS reached the server */
        for (int i = 0; i < 50; i++)
            hbone_stream_reset(batch[i], "app reset");
    }
    run_until(NULL, 300);
    assert_int_equal(storm_done, 2000);
    assert_int_equal(srv.closed_calls, 0);
    assert_int_equal(cli.closed_calls, 0);
    assert_non_null(cli.c);
    assert_true(hbone_conn_usable(cli.c));
    assert_int_equal(hbone_conn_streams(srv.conn), 0); /* every reset reached the server */
}

/* ---- memory a peer can pin (issue 6 item 5): apps that do not read, senders that push far more ---- */

#define MEM_CONNS 4
#define MEM_STREAMS 8 /* per connection */
#define MEM_SEND (2 * MIB)

static bool mem_all_received(void)
{
    for (int i = 0; i < MEM_CONNS * MEM_STREAMS; i++)
        if (srv.st[i].app.recvd < MEM_SEND) return false;
    return true;
}

static bool mem_all_requested(void)
{
    return srv.requests == MEM_CONNS * MEM_STREAMS;
}

static void test_memory_budget(void **state)
{
    (void)state;
    const uint64_t limit = 1 * MIB;
    struct hbone_conn *conns[MEM_CONNS];
    h2_mem_set_limit(limit);
    srv.app_paused = true;
    for (int k = 0; k < MEM_CONNS; k++) {
        cli_connect(ID_SERVER);
        conns[k] = cli.c;
        for (int i = 0; i < MEM_STREAMS; i++)
            assert_non_null(cli_open(8080, MEM_SEND, false));
    }
    assert_true(run_until(mem_all_requested, 10000));
    run_until(NULL, 1000); /* let the senders fill every window they were given */
    /* 64 MiB pushed at apps that read nothing: what waits in our buffers stays within the budget plus the
     * protocol's 65 535-byte connection window of each connection (both ends run here). */
    uint64_t buffered = hbone_buffered_bytes();
    if (getenv("ZMESH_TEST_VERBOSE"))
        print_error("buffered %llu reserved %llu\n", (unsigned long long)buffered,
                    (unsigned long long)h2_mem_reserved());
    assert_true(buffered > 0);
    assert_true(buffered <= limit + 2 * MEM_CONNS * 65535);
    assert_true(h2_mem_reserved() <= limit);
    /* Once the apps read, every byte arrives, intact. */
    for (int i = 0; i < MEM_CONNS * MEM_STREAMS; i++) {
        srv.st[i].app.paused = false;
        app_go(&srv.st[i].app);
    }
    assert_true(run_until(mem_all_received, 60000));
    for (int i = 0; i < MEM_CONNS * MEM_STREAMS; i++) {
        assert_false(srv.st[i].app.bad);
        assert_int_equal(srv.st[i].app.recvd, MEM_SEND);
    }
    assert_int_equal(hbone_buffered_bytes(), 0);
    /* Closing returns every reservation. */
    for (int k = 0; k < MEM_CONNS; k++)
        if (k != MEM_CONNS - 1) hbone_conn_close(conns[k], NULL);
    run_until(NULL, 50);
    h2_mem_set_limit(0);
}

static bool mem_cli_all_received(void)
{
    for (int i = 0; i < MEM_CONNS * MEM_STREAMS; i++)
        if (cli.st[i].app.recvd < MEM_SEND) return false;
    return true;
}

/* The other direction: the client side buffers what the server's apps send to client apps that do not read.
 */
static void test_memory_budget_client_side(void **state)
{
    (void)state;
    const uint64_t limit = 1 * MIB;
    struct hbone_conn *conns[MEM_CONNS];
    h2_mem_set_limit(limit);
    srv.app_send = MEM_SEND;
    for (int k = 0; k < MEM_CONNS; k++) {
        cli_connect(ID_SERVER);
        conns[k] = cli.c;
        for (int i = 0; i < MEM_STREAMS; i++) {
            struct cli_stream *cs = cli_open(8080, 0, true);
            assert_non_null(cs);
            cs->app.paused = true;
            app_go(&cs->app);
        }
    }
    assert_true(run_until(mem_all_requested, 10000));
    run_until(NULL, 1000);
    uint64_t buffered = hbone_buffered_bytes();
    assert_true(buffered > 0);
    assert_true(buffered <= limit + 2 * MEM_CONNS * 65535);
    assert_true(h2_mem_reserved() <= limit);
    for (int i = 0; i < MEM_CONNS * MEM_STREAMS; i++) {
        cli.st[i].app.paused = false;
        app_go(&cli.st[i].app);
    }
    assert_true(run_until(mem_cli_all_received, 60000));
    for (int i = 0; i < MEM_CONNS * MEM_STREAMS; i++) {
        assert_false(cli.st[i].app.bad);
        assert_int_equal(cli.st[i].app.recvd, MEM_SEND);
    }
    assert_int_equal(hbone_buffered_bytes(), 0);
    for (int k = 0; k < MEM_CONNS; k++)
        if (conns[k] != cli.c) hbone_conn_close(conns[k], NULL);
    run_until(NULL, 50);
    h2_mem_set_limit(0);
}

/* Without a budget to stop it, a stream whose app drains grows its window to Istio's 4 MiB: what the sender
 * has in flight while the app pauses afterwards shows it. */
static bool grow_first_part(void)
{
    return srv.st[0].app.recvd >= 16 * MIB;
}

static void test_window_grows(void **state)
{
    (void)state;
    uint64_t buffered0 = hbone_buffered_bytes(); /* 0 unless an earlier test failed and left streams */
    cli_connect(ID_SERVER);
    struct cli_stream *cs = cli_open(8080, 64 * MIB, false);
    assert_non_null(cs);
    assert_true(run_until(grow_first_part, 30000));
    srv.st[0].app.paused = true;
    app_go(&srv.st[0].app);
    run_until(NULL, 500);
    uint64_t buffered = hbone_buffered_bytes() - buffered0;
    if (getenv("ZMESH_TEST_VERBOSE"))
        print_error("buffered after growth %llu\n", (unsigned long long)buffered);
    assert_true(buffered > HBONE_STREAM_WINDOW_INIT);
    assert_true(buffered <= HBONE_STREAM_WINDOW);
    srv.st[0].app.paused = false;
    app_go(&srv.st[0].app);
}

/* ---- a hostile peer: a raw nghttp2 client over blocking TLS, in its own thread ----
 *
 * It writes frames the in-process hbone client never would (HEADERS and RST_STREAM of one stream in one TLS
 * write, PING and CONTINUATION floods, oversized requests) and records what the server answered. */

enum raw_mode { RAW_RESET_FLOOD, RAW_PING_FLOOD, RAW_CONTINUATION_FLOOD, RAW_BIG_HEADERS };

static struct {
    enum raw_mode mode;
    int n; /* streams, PINGs or CONTINUATION frames to send */
    const char *authority;
    bool connected, got_goaway, done;
    uint32_t goaway_code;
    int last_status;
    SSL *ssl;
} raw;

static int raw_frame_recv(nghttp2_session *ng, const nghttp2_frame *f, void *ud)
{
    (void)ng, (void)ud;
    if (f->hd.type == NGHTTP2_GOAWAY) {
        raw.got_goaway = true;
        raw.goaway_code = f->goaway.error_code;
    }
    return 0;
}

static int raw_header(nghttp2_session *ng, const nghttp2_frame *f, const uint8_t *name, size_t namelen,
                      const uint8_t *value, size_t valuelen, uint8_t flags, void *ud)
{
    (void)ng, (void)f, (void)flags, (void)ud;
    if (namelen == 7 && memcmp(name, ":status", 7) == 0) raw.last_status = atoi((const char *)value);
    (void)valuelen;
    return 0;
}

struct obuf_t {
    uint8_t *p;
    size_t len, cap;
};

static void raw_put(struct obuf_t *out, const void *d, size_t n)
{
    if (out->len + n > out->cap) {
        out->cap = (out->len + n) * 2;
        out->p = realloc(out->p, out->cap);
        assert_non_null(out->p);
    }
    memcpy(out->p + out->len, d, n);
    out->len += n;
}

/* Everything nghttp2 has queued, appended to out. */
static void raw_collect(nghttp2_session *ng, struct obuf_t *out)
{
    const uint8_t *d;
    ssize_t n;
    while ((n = nghttp2_session_mem_send(ng, &d)) > 0)
        raw_put(out, d, (size_t)n);
}

/* A raw frame header: 24-bit length, type, flags, stream id. */
static void raw_frame_hd(struct obuf_t *out, size_t len, uint8_t type, uint8_t flags, uint32_t id)
{
    uint8_t h[9] = {(uint8_t)(len >> 16), (uint8_t)(len >> 8), (uint8_t)len,       type,       flags,
                    (uint8_t)(id >> 24),  (uint8_t)(id >> 16), (uint8_t)(id >> 8), (uint8_t)id};
    raw_put(out, h, 9);
}

static void *raw_peer(void *arg)
{
    (void)arg;
    struct obuf_t out = {0};
    nghttp2_session_callbacks *cb;
    nghttp2_session *ng;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {
        .sin_family = AF_INET, .sin_port = htons(srv.port), .sin_addr = {htonl(INADDR_LOOPBACK)}};
    struct timeval tv = {.tv_sec = 10};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) goto out_fd;
    raw.ssl = SSL_new(cctx);
    SSL_set_fd(raw.ssl, fd);
    if (SSL_connect(raw.ssl) != 1) goto out_ssl;
    raw.connected = true;
    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, raw_frame_recv);
    nghttp2_session_callbacks_set_on_header_callback(cb, raw_header);
    nghttp2_session_client_new(&ng, cb, NULL);
    nghttp2_session_callbacks_del(cb);
    nghttp2_submit_settings(ng, NGHTTP2_FLAG_NONE, NULL, 0);
    raw_collect(ng, &out);
    const char *auth = raw.authority ? raw.authority : "127.0.0.1:9";
    nghttp2_nv nva[72] = {
        {(uint8_t *)":method", (uint8_t *)"CONNECT", 7, 7, NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)":authority", (uint8_t *)auth, 10, strlen(auth), NGHTTP2_NV_FLAG_NONE},
    };
    switch (raw.mode) {
    case RAW_RESET_FLOOD:
        for (int i = 0; i < raw.n; i++) {
            int32_t id = nghttp2_submit_request(ng, NULL, nva, 2, NULL, NULL);
            raw_collect(ng, &out); /* the HEADERS, then its RST_STREAM right behind it */
            nghttp2_submit_rst_stream(ng, NGHTTP2_FLAG_NONE, id, NGHTTP2_CANCEL);
            raw_collect(ng, &out);
        }
        break;
    case RAW_PING_FLOOD:
        for (int i = 0; i < raw.n; i++)
            nghttp2_submit_ping(ng, NGHTTP2_FLAG_NONE, NULL);
        raw_collect(ng, &out);
        break;
    case RAW_CONTINUATION_FLOOD: {
        /* HEADERS without END_HEADERS, then n CONTINUATIONs each carrying one literal header "x-a: b". */
        static const uint8_t lit[] = {0x00, 0x03, 'x', '-', 'a', 0x01, 'b'};
        raw_frame_hd(&out, sizeof(lit), NGHTTP2_HEADERS, 0, 1);
        raw_put(&out, lit, sizeof(lit));
        for (int i = 0; i < raw.n; i++) {
            raw_frame_hd(&out, sizeof(lit), NGHTTP2_CONTINUATION, 0, 1);
            raw_put(&out, lit, sizeof(lit));
        }
        break;
    }
    case RAW_BIG_HEADERS: {
        /* 70 regular headers: over the server's 64. */
        char names[70][16];
        for (int i = 0; i < 70; i++) {
            snprintf(names[i], sizeof(names[i]), "x-h%d", i);
            nva[2 + i] =
                (nghttp2_nv){(uint8_t *)names[i], (uint8_t *)"v", strlen(names[i]), 1, NGHTTP2_NV_FLAG_NONE};
        }
        nghttp2_submit_request(ng, NULL, nva, 72, NULL, NULL);
        raw_collect(ng, &out);
        break;
    }
    }
    for (size_t off = 0; off < out.len;) {
        size_t k = out.len - off < 65536 ? out.len - off : 65536;
        int w = SSL_write(raw.ssl, out.p + off, (int)k);
        if (w <= 0) break;
        off += (size_t)w;
    }
    /* Read the answers until GOAWAY arrives (or the 431 for RAW_BIG_HEADERS), EOF, or the 10 s timeout. */
    uint8_t buf[16384];
    for (;;) {
        int r = SSL_read(raw.ssl, buf, sizeof(buf));
        if (r <= 0) break;
        if (nghttp2_session_mem_recv(ng, buf, (size_t)r) < 0) break;
        if (raw.got_goaway || (raw.mode == RAW_BIG_HEADERS && raw.last_status)) break;
    }
    nghttp2_session_del(ng);
out_ssl:
    SSL_free(raw.ssl);
    raw.ssl = NULL;
out_fd:
    close(fd);
    free(out.p);
    raw.done = true;
    return NULL;
}

static bool raw_done(void)
{
    return raw.done;
}

/* Runs the raw peer in mode with n, serving it from this thread's loop until it is done. */
static void raw_run(enum raw_mode mode, int n)
{
    pthread_t th;
    memset(&raw, 0, sizeof(raw));
    raw.mode = mode;
    raw.n = n;
    assert_int_equal(pthread_create(&th, NULL, raw_peer, NULL), 0);
    bool ok = run_until(raw_done, 30000);
    pthread_join(th, NULL);
    assert_true(ok);
    assert_true(raw.connected);
}

/* ---- stderr into a file, to count log lines ---- */

static int cap_fd = -1, saved_err = -1;
static char cap_path[64];

static void cap_begin(void)
{
    strcpy(cap_path, "/tmp/zmesh-hbone-log-XXXXXX");
    cap_fd = mkstemp(cap_path);
    fflush(stderr);
    saved_err = dup(STDERR_FILENO);
    dup2(cap_fd, STDERR_FILENO);
}

/* Restores stderr; returns how many captured lines contain needle (and copies the first into first). */
static int cap_end(const char *needle, char *first, size_t n)
{
    fflush(stderr);
    dup2(saved_err, STDERR_FILENO);
    close(saved_err);
    int count = 0;
    FILE *f = fopen(cap_path, "r");
    char line[4096];
    if (first && n) first[0] = 0;
    while (f && fgets(line, sizeof(line), f)) {
        if (!strstr(line, needle)) continue;
        if (!count++ && first) snprintf(first, n, "%s", line);
    }
    if (f) fclose(f);
    close(cap_fd);
    unlink(cap_path);
    return count;
}

/* ---- rapid reset (issue 6 item 4): HEADERS + RST_STREAM floods ---- */

/* The "app" that port 9 reaches: a real TCP listener whose accepts are counted. */
static struct {
    struct io lio;
    int accepts;
} app9;

static void app9_accept_cb(struct io *io, uint32_t ev)
{
    (void)ev;
    for (;;) {
        int fd = accept4(io->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) return;
        app9.accepts++;
        close(fd);
    }
}

static void test_rapid_reset_flood(void **state)
{
    (void)state;
    const int n = 3 * HBONE_EARLY_RESET_BURST;
    uint64_t resets0 = hbone_early_resets(), perr0 = hbone_proto_errors(HBONE_PERR_EARLY_RESETS);
    memset(&app9, 0, sizeof(app9));
    app9.lio = (struct io){.fd = net_listen_local(0, 1024), .cb = app9_accept_cb};
    assert_true(app9.lio.fd >= 0);
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    struct ip_addr ip;
    getsockname(app9.lio.fd, (struct sockaddr *)&ss, &len);
    sockaddr_to(&ss, &ip, &srv.app9_port);
    assert_int_equal(loop_io_add(L, &app9.lio, EPOLLIN), 0);

    cap_begin();
    raw_run(RAW_RESET_FLOOD, n);
    run_until(NULL, 50); /* the app's accepts */
    char line[4096];
    int lines = cap_end("HTTP/2 protocol error", line, sizeof(line));
    loop_io_del(L, &app9.lio);
    close(app9.lio.fd);

    /* The budget ended the connection with GOAWAY(ENHANCE_YOUR_CALM), after the burst and well before the
     * end of the flood. */
    assert_true(raw.got_goaway);
    assert_int_equal(raw.goaway_code, NGHTTP2_ENHANCE_YOUR_CALM);
    assert_int_equal(srv.closed_calls, 1);
    uint64_t resets = hbone_early_resets() - resets0;
    if (resets < HBONE_EARLY_RESET_BURST || resets >= (uint64_t)n)
        print_error("early resets counted: %llu\n", (unsigned long long)resets);
    assert_true(resets >= HBONE_EARLY_RESET_BURST && resets < (uint64_t)n);
    assert_int_equal(hbone_proto_errors(HBONE_PERR_EARLY_RESETS) - perr0, 1);
    /* Resets that came with their HEADERS never reached on_request: few app connects, if any. */
    if (getenv("ZMESH_TEST_VERBOSE") || app9.accepts > 100 || srv.app9_requests > 100)
        print_error("app accepts %d, requests %d\n", app9.accepts, srv.app9_requests);
    assert_true(srv.app9_requests <= 100);
    assert_true(app9.accepts <= srv.app9_requests);
    /* One line, with the reason and the peer's identity. */
    assert_int_equal(lines, 1);
    assert_non_null(strstr(line, "reason=early_resets"));
    assert_non_null(strstr(line, ID_CLIENT));
    assert_non_null(strstr(line, "peer.addr=127.0.0.1:"));
}

/* ---- protocol errors are visible (issue 6 item 8) ---- */

static void test_ping_flood(void **state)
{
    (void)state;
    uint64_t perr0 = hbone_proto_errors(HBONE_PERR_FLOOD);
    cap_begin();
    raw_run(RAW_PING_FLOOD, 20000);
    run_until(NULL, 20);
    char line[4096];
    int lines = cap_end("HTTP/2 protocol error", line, sizeof(line));
    /* The GOAWAY reached the peer before the close, with the flood's code. */
    assert_true(raw.got_goaway);
    assert_int_equal(raw.goaway_code, NGHTTP2_ENHANCE_YOUR_CALM);
    assert_int_equal(srv.closed_calls, 1);
    assert_int_equal(hbone_proto_errors(HBONE_PERR_FLOOD) - perr0, 1);
    assert_int_equal(lines, 1);
    assert_non_null(strstr(line, "reason=flood"));
    assert_non_null(strstr(line, ID_CLIENT));
}

static void test_continuation_flood(void **state)
{
    (void)state;
    uint64_t perr0 = hbone_proto_errors(HBONE_PERR_CONTINUATION);
    cap_begin();
    raw_run(RAW_CONTINUATION_FLOOD, 1000);
    run_until(NULL, 20);
    char line[4096];
    int lines = cap_end("HTTP/2 protocol error", line, sizeof(line));
    assert_true(raw.got_goaway);
    assert_int_equal(raw.goaway_code, NGHTTP2_ENHANCE_YOUR_CALM);
    assert_int_equal(srv.closed_calls, 1);
    assert_int_equal(hbone_proto_errors(HBONE_PERR_CONTINUATION) - perr0, 1);
    assert_int_equal(lines, 1);
    assert_non_null(strstr(line, "reason=continuation_flood"));
}

static void test_431_logged(void **state)
{
    (void)state;
    uint64_t perr0 = hbone_proto_errors(HBONE_PERR_HEADERS_TOO_LARGE);
    cap_begin();
    raw_run(RAW_BIG_HEADERS, 0);
    char line[4096];
    int lines = cap_end("HTTP/2 protocol error", line, sizeof(line));
    assert_int_equal(raw.last_status, 431);
    assert_int_equal(srv.requests, 0); /* never handed to on_request */
    assert_int_equal(hbone_proto_errors(HBONE_PERR_HEADERS_TOO_LARGE) - perr0, 1);
    assert_int_equal(lines, 1);
    assert_non_null(strstr(line, "reason=request_headers_too_large"));
    assert_non_null(strstr(line, ID_CLIENT));
    assert_false(raw.got_goaway); /* a stream error: the connection stays */
}

/* ---- keepalive (istio/ztunnel src/config.rs and src/proxy/h2: PING every interval, no PONG within the
 * timeout kills the conn) ---- */

/* A peer that answers PINGs keeps the connection up across many intervals. */
static void test_keepalive_answered(void **state)
{
    (void)state;
    hbone_set_keepalive(30, 60);
    cli_connect(ID_SERVER);
    assert_true(run_until(cli_ready, 5000));
    run_until(NULL, 400); /* > 10 intervals */
    hbone_set_keepalive(0, 0);
    assert_int_equal(cli.closed_calls, 0);
    assert_non_null(cli.c);
    assert_true(hbone_conn_usable(cli.c));
}

/* A mute TLS server: completes the handshake, then reads and discards, never answering anything. */
static int mute_lfd;
static void *mute_server(void *arg)
{
    (void)arg;
    int fd = accept(mute_lfd, NULL, NULL);
    if (fd < 0) return NULL;
    SSL *ssl = SSL_new(sctx);
    SSL_set_fd(ssl, fd);
    if (SSL_accept(ssl) == 1) {
        char buf[4096];
        while (SSL_read(ssl, buf, sizeof(buf)) > 0) {
        }
    }
    SSL_free(ssl);
    close(fd);
    return NULL;
}

static bool cli_gone(void)
{
    return cli.closed_calls > 0;
}

static void test_keepalive_timeout(void **state)
{
    (void)state;
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    struct ip_addr ip;
    uint16_t port;
    pthread_t th;
    mute_lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr = {htonl(INADDR_LOOPBACK)}};
    assert_int_equal(bind(mute_lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(mute_lfd, 4), 0);
    getsockname(mute_lfd, (struct sockaddr *)&ss, &len);
    sockaddr_to(&ss, &ip, &port);
    assert_int_equal(pthread_create(&th, NULL, mute_server, NULL), 0);
    hbone_set_keepalive(30, 60);
    uint16_t saved = srv.port;
    srv.port = port;
    cli_connect(ID_SERVER);
    srv.port = saved;
    assert_true(run_until(cli_ready, 5000));
    assert_true(run_until(cli_gone, 5000));
    hbone_set_keepalive(0, 0);
    assert_string_equal(cli.closed_err, "ping timeout");
    pthread_join(th, NULL);
    close(mute_lfd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_bulk_and_half_close, setup, teardown),
        cmocka_unit_test_setup_teardown(test_many_chatty_streams, setup, teardown),
        cmocka_unit_test_setup_teardown(test_error_status, setup, teardown),
        cmocka_unit_test_setup_teardown(test_san_mismatch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stream_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_drain, setup, teardown),
        cmocka_unit_test_setup_teardown(test_backpressure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reset_storm, setup, teardown),
        cmocka_unit_test_setup_teardown(test_memory_budget, setup, teardown),
        cmocka_unit_test_setup_teardown(test_memory_budget_client_side, setup, teardown),
        cmocka_unit_test_setup_teardown(test_window_grows, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rapid_reset_flood, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ping_flood, setup, teardown),
        cmocka_unit_test_setup_teardown(test_continuation_flood, setup, teardown),
        cmocka_unit_test_setup_teardown(test_431_logged, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keepalive_answered, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keepalive_timeout, setup, teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
