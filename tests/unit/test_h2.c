/* Unit tests for the generic HTTP/2 session (src/h2/session.c): an in-process client and server on one loop
 * over TCP loopback, with TLS (real certificates from the local CA) and without (h2c with prior knowledge).
 * Streams are plain HTTP (POST with a body both ways and trailers), not CONNECT: HBONE's own tests are in
 * test_hbone.c. Python's h2 library (python3-h2, /usr/bin/python3) is an h2c peer that shares no code with
 * us. Every wait is bounded. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>
#include <nghttp2/nghttp2.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "core/loop.h"
#include "core/net.h"
#include "h2/session.h"
#include "tls/ca.h"
#include "tls/spiffe.h"
#include "tls/tls.h"

#define ID_SERVER "spiffe://cluster.local/ns/default/sa/server"
#define ID_CLIENT "spiffe://cluster.local/ns/default/sa/client"
#define ID_OTHER "spiffe://cluster.local/ns/default/sa/other"
#define DNS_NAME "zmeshd.istio-system.svc"
#define BODY_MAX (1u << 20)
#define WIN 65535u

extern char **environ;

static char dir[64];
static struct cert_provider *ca;
static struct tls_cert *cert_server, *cert_client;
static SSL_CTX *sctx, *cctx, *dns_sctx, *selfsigned_sctx;
static struct loop *L;
static uint8_t pattern[BODY_MAX];

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

/* ---- a body source and sink ---- */

struct body {
    size_t len, off; /* send: bytes to send and sent (taken by the session) */
    size_t recv;     /* receive: bytes received, checked against pattern */
    bool bad, eof;   /* a received byte differs; the peer's END_STREAM */
    bool hold;       /* do not consume received bytes (back-pressure) */
    size_t held;     /* bytes received and not consumed */
};

/* Offers the pattern in chunks of at most 20000 bytes, so a body takes several pulls. */
static size_t body_pull(struct body *b, const uint8_t **data, bool *eof)
{
    size_t n = b->len - b->off;
    if (n > 20000) n = 20000;
    *data = pattern + b->off;
    *eof = b->off + n == b->len;
    return n;
}

static void body_recv(struct h2_stream *s, struct body *b, const uint8_t *data, size_t len)
{
    if (b->recv + len > BODY_MAX || memcmp(data, pattern + b->recv, len) != 0) b->bad = true;
    b->recv += len;
    if (b->hold)
        b->held += len;
    else
        h2_stream_consume(s, len);
}

static const char *hdr(const struct h2_header *h, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(h[i].name, name) == 0) return h[i].value;
    return NULL;
}

/* ---- server ---- */

enum srv_mode { SRV_ECHO, SRV_RESET, SRV_HOLD, SRV_SILENT /* holds the body, never answers */ };

/* The user area of each server stream. */
struct srv_stream {
    struct h2_stream *s;
    struct body in, out;
    char method[16], path[64], scheme[16], ctype[64], trailer[32];
    int requests, ends;
    struct h2_end end;
};

static struct {
    int lfd;
    uint16_t port;
    struct io lio;
    SSL_CTX *ctx; /* NULL: h2c */
    enum srv_mode mode;
    size_t resp_len;
    struct h2_conn *conn;
    struct srv_stream *last; /* the newest stream, or the copy of it once it ended */
    struct srv_stream ended;
    int streams, closed_calls;
} srv;

static size_t srv_pull(struct h2_stream *s, void *ud, const uint8_t **data, bool *eof)
{
    (void)s;
    return body_pull(&((struct srv_stream *)ud)->out, data, eof);
}

static void srv_sent(struct h2_stream *s, void *ud, size_t n)
{
    (void)s;
    ((struct srv_stream *)ud)->out.off += n;
}

static void srv_data(struct h2_stream *s, void *ud, const uint8_t *data, size_t len)
{
    body_recv(s, &((struct srv_stream *)ud)->in, data, len);
}

static void srv_eof(struct h2_stream *s, void *ud)
{
    (void)s;
    ((struct srv_stream *)ud)->in.eof = true;
}

static void srv_headers(struct h2_stream *s, void *ud, const struct h2_headers *h)
{
    (void)s;
    struct srv_stream *ss = ud;
    const char *v = hdr(h->headers, h->n_headers, "x-request-trailer");
    if (h->kind == H2_HEADERS_TRAILERS && v) snprintf(ss->trailer, sizeof(ss->trailer), "%s", v);
}

static void srv_end(struct h2_stream *s, void *ud, const struct h2_end *e)
{
    (void)s;
    struct srv_stream *ss = ud;
    ss->ends++;
    ss->end = *e;
    ss->end.detail = NULL;
    /* ss lives in the stream's user area, freed after this call: the checks read a copy. */
    srv.ended = *ss;
    if (srv.last == ss) srv.last = &srv.ended;
}

static const struct h2_stream_ops srv_stream_ops = {.on_headers = srv_headers,
                                                    .on_data = srv_data,
                                                    .on_eof = srv_eof,
                                                    .pull = srv_pull,
                                                    .sent = srv_sent,
                                                    .on_end = srv_end};

static void srv_on_stream(struct h2_conn *c, void *ud, struct h2_stream *s)
{
    (void)c, (void)ud;
    struct srv_stream *ss = h2_stream_user(s);
    ss->s = s;
    ss->in.hold = srv.mode == SRV_HOLD || srv.mode == SRV_SILENT;
    srv.last = ss;
    srv.streams++;
    h2_stream_set_ops(s, &srv_stream_ops, ss);
}

static void srv_on_request(struct h2_stream *s, void *ud, const struct h2_request *req)
{
    (void)ud;
    struct srv_stream *ss = h2_stream_user(s);
    ss->requests++;
    snprintf(ss->method, sizeof(ss->method), "%s", req->method);
    snprintf(ss->path, sizeof(ss->path), "%s", req->path);
    snprintf(ss->scheme, sizeof(ss->scheme), "%s", req->scheme);
    const char *ct = hdr(req->headers, req->n_headers, "content-type");
    snprintf(ss->ctype, sizeof(ss->ctype), "%s", ct ? ct : "");
    if (srv.mode == SRV_RESET) {
        h2_stream_end(s, H2_END_LOCAL, NGHTTP2_INTERNAL_ERROR, "test reset");
        return;
    }
    if (srv.mode == SRV_SILENT) return;
    ss->out.len = srv.resp_len;
    struct h2_header h[] = {{"content-type", "application/octet-stream"}, {"x-test", "yes"}};
    assert_int_equal(h2_stream_respond(s, 200, h, 2, H2_BODY), 0);
    assert_int_equal(h2_stream_respond(s, 200, h, 2, H2_BODY), -EINVAL); /* answered already */
    struct h2_header t[] = {{"grpc-status", "0"}, {"grpc-message", "fine"}};
    assert_int_equal(h2_stream_trailers(s, t, 2), 0);
}

static void srv_on_closed(struct h2_conn *c, void *ud, const struct h2_end *e)
{
    (void)ud, (void)e;
    srv.closed_calls++;
    if (c == srv.conn) srv.conn = NULL;
}

static struct h2_settings test_settings(bool server)
{
    return (struct h2_settings){
        .log_name = "test",
        .max_concurrent_streams = server ? 100 : 0,
        .max_open_streams = 100,
        .stream_window = WIN,
        .stream_window_max = WIN, /* no auto-tuning: the window is exactly WIN */
        .conn_window = 4 * WIN,
        .conn_window_max = 4 * WIN,
        .max_frame = 16384,
        .max_header_list = 64 * 1024,
        .max_headers = 64,
        .max_header_bytes = 64 * 1024,
        .ping_interval_ms = 10000,
        .ping_timeout_ms = 20000,
        .handshake_timeout_ms = 5000,
        .max_unanswered = 16,
        .early_reset_burst = server ? 100 : 0,
        .early_reset_rate = 10,
        .linger_ms = 100,
        .stream_user_size = server ? sizeof(struct srv_stream) : 0,
    };
}

static const struct h2_conn_ops srv_ops = {
    .on_closed = srv_on_closed, .on_stream = srv_on_stream, .on_request = srv_on_request};

static void accept_cb(struct io *io, uint32_t ev)
{
    (void)ev;
    for (;;) {
        int fd = accept4(io->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) return;
        struct h2_settings set = test_settings(true);
        struct h2_conn *c = h2_server_new(L, fd, srv.ctx, &set, &srv_ops, NULL);
        if (c) srv.conn = c;
    }
}

/* ---- client ---- */

static struct {
    struct h2_conn *c;
    int ready_calls, closed_calls;
    struct h2_end closed;
    char closed_detail[512];
    /* one stream */
    struct h2_stream *s;
    struct body out, in;
    int status, ends, headers_calls;
    char x_test[16], grpc_status[8], grpc_message[16];
    bool trailers_eos;
    struct h2_end end;
    char end_detail[256];
    enum h2_end_reason reasons[4]; /* of each end, in order */
} cli;

static void cli_on_ready(struct h2_conn *c, void *ud)
{
    (void)c, (void)ud;
    cli.ready_calls++;
}

static void cli_on_closed(struct h2_conn *c, void *ud, const struct h2_end *e)
{
    (void)ud;
    cli.closed_calls++;
    cli.closed = *e;
    snprintf(cli.closed_detail, sizeof(cli.closed_detail), "%s", e->detail ? e->detail : "");
    cli.closed.detail = NULL;
    if (c == cli.c) cli.c = NULL;
}

static const struct h2_conn_ops cli_ops = {.on_ready = cli_on_ready, .on_closed = cli_on_closed};

static size_t cli_pull(struct h2_stream *s, void *ud, const uint8_t **data, bool *eof)
{
    (void)s, (void)ud;
    return body_pull(&cli.out, data, eof);
}

static void cli_sent(struct h2_stream *s, void *ud, size_t n)
{
    (void)s, (void)ud;
    cli.out.off += n;
}

static void cli_data(struct h2_stream *s, void *ud, const uint8_t *data, size_t len)
{
    (void)ud;
    body_recv(s, &cli.in, data, len);
}

static void cli_eof(struct h2_stream *s, void *ud)
{
    (void)s, (void)ud;
    cli.in.eof = true;
}

static void cli_headers(struct h2_stream *s, void *ud, const struct h2_headers *h)
{
    (void)s, (void)ud;
    const char *v;
    cli.headers_calls++;
    if (h->kind == H2_HEADERS_RESPONSE) {
        cli.status = h->status;
        if ((v = hdr(h->headers, h->n_headers, "x-test"))) snprintf(cli.x_test, sizeof(cli.x_test), "%s", v);
        return;
    }
    cli.trailers_eos = h->end_stream;
    if ((v = hdr(h->headers, h->n_headers, "grpc-status")))
        snprintf(cli.grpc_status, sizeof(cli.grpc_status), "%s", v);
    if ((v = hdr(h->headers, h->n_headers, "grpc-message")))
        snprintf(cli.grpc_message, sizeof(cli.grpc_message), "%s", v);
}

static void cli_end(struct h2_stream *s, void *ud, const struct h2_end *e)
{
    (void)s, (void)ud;
    if (cli.ends < 4) cli.reasons[cli.ends] = e->reason;
    cli.ends++;
    cli.end = *e;
    snprintf(cli.end_detail, sizeof(cli.end_detail), "%s", e->detail ? e->detail : "");
    cli.end.detail = NULL;
    cli.s = NULL;
}

static const struct h2_stream_ops cli_stream_ops = {.on_headers = cli_headers,
                                                    .on_data = cli_data,
                                                    .on_eof = cli_eof,
                                                    .pull = cli_pull,
                                                    .sent = cli_sent,
                                                    .on_end = cli_end};

static void cli_connect(SSL_CTX *ctx, const struct h2_peer *peer, const struct h2_settings *set)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {
        .sin_family = AF_INET, .sin_port = htons(srv.port), .sin_addr = {htonl(INADDR_LOOPBACK)}};
    int rc = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
    assert_true(rc == 0 || errno == EINPROGRESS);
    struct h2_settings def = test_settings(false);
    cli.c = h2_client_new(L, fd, ctx, peer, set ? set : &def, &cli_ops, NULL);
    assert_non_null(cli.c);
}

/* Opens a POST with a body of len bytes and trailers. */
static void cli_post(size_t len)
{
    memset(&cli.out, 0, sizeof(cli.out));
    memset(&cli.in, 0, sizeof(cli.in));
    cli.status = cli.ends = cli.headers_calls = 0;
    cli.x_test[0] = cli.grpc_status[0] = cli.grpc_message[0] = 0;
    cli.trailers_eos = false;
    cli.out.len = len;
    struct h2_header h[] = {{":method", "POST"},
                            {":scheme", srv.ctx ? "https" : "http"},
                            {":authority", "test.example"},
                            {":path", "/pkg.Service/Method"},
                            {"content-type", "application/grpc"}};
    cli.s = h2_stream_open(cli.c, h, 5, H2_BODY, &cli_stream_ops, NULL);
    assert_non_null(cli.s);
    struct h2_header t[] = {{"x-request-trailer", "bye"}};
    assert_int_equal(h2_stream_trailers(cli.s, t, 1), 0);
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

static int alpn_h2_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                      unsigned int inlen, void *arg)
{
    (void)ssl, (void)arg;
    for (unsigned i = 0; i + 1 <= inlen && i + 1 + in[i] <= inlen; i += 1u + in[i])
        if (in[i] == 2 && memcmp(in + i + 1, "h2", 2) == 0) {
            *out = in + i + 1;
            *outlen = 2;
            return SSL_TLSEXT_ERR_OK;
        }
    return SSL_TLSEXT_ERR_ALERT_FATAL;
}

/* A server context presenting a leaf with subjectAltName san, signed by (issuer, ikey) or self-signed. */
static SSL_CTX *minted_server_ctx(const char *san, X509 *issuer, EVP_PKEY *ikey)
{
    EVP_PKEY *k = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    X509V3_CTX v3;
    X509_set_version(x, X509_VERSION_3);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 4242);
    X509_NAME *name = X509_NAME_new();
    X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, (const unsigned char *)"zmesh test", -1, -1, 0);
    X509_set_subject_name(x, name);
    X509_set_issuer_name(x, issuer ? X509_get_subject_name(issuer) : name);
    X509_NAME_free(name);
    X509_gmtime_adj(X509_getm_notBefore(x), -60);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_set_pubkey(x, k);
    X509V3_set_ctx(&v3, issuer ? issuer : x, x, NULL, NULL, 0);
    const char *exts[][2] = {{"basicConstraints", "critical,CA:FALSE"},
                             {"keyUsage", "critical,digitalSignature"},
                             {"extendedKeyUsage", "serverAuth,clientAuth"},
                             {"subjectAltName", san}};
    for (size_t i = 0; i < 4; i++) {
        X509_EXTENSION *e = X509V3_EXT_conf(NULL, &v3, exts[i][0], exts[i][1]);
        if (!e) return NULL;
        X509_add_ext(x, e, -1);
        X509_EXTENSION_free(e);
    }
    X509_sign(x, issuer ? ikey : k, EVP_sha256());
    SSL_CTX *c = SSL_CTX_new(TLS_server_method());
    SSL_CTX_set_min_proto_version(c, TLS1_3_VERSION);
    if (SSL_CTX_use_certificate(c, x) != 1 || SSL_CTX_use_PrivateKey(c, k) != 1) return NULL;
    SSL_CTX_set_alpn_select_cb(c, alpn_h2_cb, NULL);
    X509_free(x);
    EVP_PKEY_free(k);
    return c;
}

static int group_setup(void **state)
{
    (void)state;
    char err[256], p[128];
    signal(SIGPIPE, SIG_IGN);
    for (size_t i = 0; i < BODY_MAX; i++)
        pattern[i] = (uint8_t)(i * 131 + (i >> 9));
    strcpy(dir, "/tmp/zmesh-h2-XXXXXX");
    if (!mkdtemp(dir)) return -1;
    if (ca_write_root(dir, NULL, err, sizeof(err)) < 0 || !(ca = ca_local_new(dir, err, sizeof(err)))) {
        print_error("CA: %s\n", err);
        return -1;
    }
    if (!(cert_server = fetch(ID_SERVER)) || !(cert_client = fetch(ID_CLIENT))) return -1;
    if (!(sctx = tls_server_ctx_new(cert_server)) || !(cctx = tls_client_ctx_new(cert_client))) return -1;
    /* zmeshd-like: a leaf with DNS SANs only, from the same root. */
    snprintf(p, sizeof(p), "%s/root-key.pem", dir);
    FILE *f = fopen(p, "r");
    EVP_PKEY *rk = f ? PEM_read_PrivateKey(f, NULL, NULL, NULL) : NULL;
    if (f) fclose(f);
    if (!rk) return -1;
    dns_sctx = minted_server_ctx("DNS:istiod.istio-system.svc,DNS:" DNS_NAME, cert_server->root, rk);
    EVP_PKEY_free(rk);
    selfsigned_sctx = minted_server_ctx("URI:" ID_SERVER, NULL, NULL);
    return dns_sctx && selfsigned_sctx ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    char p[128];
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
    SSL_CTX_free(dns_sctx);
    SSL_CTX_free(selfsigned_sctx);
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
    if (cli.c) h2_conn_close(cli.c, H2_END_LOCAL, "test teardown");
    if (srv.conn) h2_conn_close(srv.conn, H2_END_LOCAL, "test teardown");
    run_until(both_closed, 2000);
    run_until(NULL, 5); /* deferred frees */
    loop_io_del(L, &srv.lio);
    close(srv.lfd);
    loop_free(L);
    L = NULL;
    return 0;
}

/* ---- tests ---- */

static bool exchange_done(void)
{
    return cli.ends && srv.last && srv.last->ends;
}

/* A POST with a body both ways and trailers both ways, then the checks of what each side saw. */
static void exchange(size_t req_len, size_t resp_len)
{
    srv.resp_len = resp_len;
    cli_post(req_len);
    assert_true(run_until(exchange_done, 10000));
    struct srv_stream *ss = srv.last;
    assert_int_equal(ss->requests, 1);
    assert_string_equal(ss->method, "POST");
    assert_string_equal(ss->path, "/pkg.Service/Method");
    assert_string_equal(ss->scheme, srv.ctx ? "https" : "http");
    assert_string_equal(ss->ctype, "application/grpc");
    assert_int_equal(ss->in.recv, req_len);
    assert_false(ss->in.bad);
    assert_true(ss->in.eof);
    assert_string_equal(ss->trailer, "bye");
    assert_int_equal(ss->out.off, resp_len);
    assert_int_equal(ss->end.reason, H2_END_OK);
    assert_int_equal(cli.status, 200);
    assert_string_equal(cli.x_test, "yes");
    assert_int_equal(cli.in.recv, resp_len);
    assert_false(cli.in.bad);
    assert_true(cli.in.eof);
    assert_string_equal(cli.grpc_status, "0");
    assert_string_equal(cli.grpc_message, "fine");
    assert_true(cli.trailers_eos);
    assert_int_equal(cli.headers_calls, 2); /* response, trailers */
    assert_int_equal(cli.out.off, req_len);
    assert_int_equal(cli.end.reason, H2_END_OK);
    assert_int_equal(cli.ends, 1);
}

static void test_tls_request_response(void **state)
{
    (void)state;
    srv.ctx = sctx;
    const char *exp[] = {ID_SERVER};
    struct h2_peer peer = {.expected = exp, .n_expected = 1};
    cli_connect(cctx, &peer, NULL);
    exchange(300000, 500000); /* several windows each way */
    assert_int_equal(cli.ready_calls, 1);
    assert_string_equal(h2_conn_peer_id(cli.c), ID_SERVER);
    exchange(0, 0); /* empty bodies: END_STREAM only after the trailers */
}

static void test_h2c_request_response(void **state)
{
    (void)state;
    srv.ctx = NULL;
    cli_connect(NULL, NULL, NULL);
    exchange(200000, 100);
    assert_int_equal(cli.ready_calls, 1);
    assert_string_equal(h2_conn_peer_id(cli.c), "");
    exchange(1, 300000);
}

/* A client whose settings are all zero gets the defaults (65 535-byte windows, 64 headers, ...): without
 * them it would advertise a zero window and refuse every header. */
static void test_zero_settings(void **state)
{
    (void)state;
    srv.ctx = NULL;
    struct h2_settings zero = {0};
    cli_connect(NULL, NULL, &zero);
    exchange(100000, 100000);
}

static bool srv_stalled(void)
{
    return srv.last && srv.last->in.recv >= WIN;
}

/* A server that does not consume stops the client at the stream window: exactly WIN bytes arrive, the rest
 * waits in the client's body; consuming lets the rest through. */
static void test_backpressure(void **state)
{
    (void)state;
    srv.ctx = NULL;
    srv.mode = SRV_HOLD;
    srv.resp_len = 10;
    cli_connect(NULL, NULL, NULL);
    cli_post(BODY_MAX);
    assert_true(run_until(srv_stalled, 5000));
    run_until(NULL, 100); /* nothing more may come */
    assert_int_equal(srv.last->in.recv, WIN);
    assert_int_equal(cli.out.off, WIN);
    assert_int_equal(cli.ends, 0);
    /* Credit what was held, and consume from now on. */
    srv.last->in.hold = false;
    h2_stream_consume(srv.last->s, srv.last->in.held);
    assert_true(run_until(exchange_done, 10000));
    assert_int_equal(srv.last->in.recv, BODY_MAX);
    assert_false(srv.last->in.bad);
    assert_int_equal(cli.end.reason, H2_END_OK);
}

static bool cli_stream_ended(void)
{
    return cli.ends > 0;
}

static bool cli_closed(void)
{
    return cli.closed_calls > 0;
}

static bool srv_got_window(void)
{
    return srv.last && srv.last->in.recv == WIN;
}

/* Bytes a stream's user never consumed go back to the connection window when the stream ends: six streams
 * each leave a whole stream window unconsumed on a connection window of four; without the return the fifth
 * would stall. */
static void test_unconsumed_returned(void **state)
{
    (void)state;
    srv.ctx = NULL;
    srv.mode = SRV_SILENT;
    cli_connect(NULL, NULL, NULL);
    for (int i = 0; i < 6; i++) {
        srv.last = NULL;
        cli_post(WIN);
        if (!run_until(srv_got_window, 5000))
            fail_msg("stream %d stalled at %zu bytes", i, srv.last ? srv.last->in.recv : 0);
        assert_int_equal(srv.last->ends, 0);
        h2_stream_end(srv.last->s, H2_END_LOCAL, NGHTTP2_CANCEL, "enough");
        assert_true(run_until(cli_stream_ended, 5000));
        assert_int_equal(cli.end.reason, H2_END_RESET_BY_PEER);
        assert_int_equal(cli.end.code, NGHTTP2_CANCEL);
    }
}

/* The server resets the stream with INTERNAL_ERROR: the client's stream ends with RESET_BY_PEER and the
 * code; the connection stays usable. */
static void test_peer_reset(void **state)
{
    (void)state;
    srv.ctx = sctx;
    srv.mode = SRV_RESET;
    const char *exp[] = {ID_SERVER};
    struct h2_peer peer = {.expected = exp, .n_expected = 1};
    cli_connect(cctx, &peer, NULL);
    cli_post(100);
    assert_true(run_until(cli_stream_ended, 5000));
    assert_int_equal(cli.end.reason, H2_END_RESET_BY_PEER);
    assert_int_equal(cli.end.code, NGHTTP2_INTERNAL_ERROR);
    assert_string_equal(cli.end_detail, nghttp2_http2_strerror(NGHTTP2_INTERNAL_ERROR));
    assert_int_equal(srv.last->end.reason, H2_END_LOCAL);
    assert_true(h2_conn_usable(cli.c));
}

/* The server drains (GOAWAY) while a second request is on its way: that one was never processed, so it ends
 * with REFUSED (retryable) and REFUSED_STREAM; the client conn takes no new streams. */
static void test_goaway_refused(void **state)
{
    (void)state;
    srv.ctx = NULL;
    srv.resp_len = 10;
    cli_connect(NULL, NULL, NULL);
    exchange(10, 10);
    assert_true(h2_conn_usable(cli.c));
    /* The GOAWAY and the second request leave in the same batch of flushes: each side sees the other's after
     * its own. */
    h2_conn_drain(srv.conn);
    cli_post(10);
    assert_true(run_until(cli_stream_ended, 5000));
    assert_int_equal(cli.end.reason, H2_END_REFUSED);
    assert_int_equal(cli.end.code, NGHTTP2_REFUSED_STREAM);
    assert_int_equal(srv.streams, 1); /* the server never took it */
    assert_true(cli.c == NULL || !h2_conn_usable(cli.c));
}

/* TLS handshake failure: the server's certificate is not from the client's root. */
static void test_handshake_failed(void **state)
{
    (void)state;
    srv.ctx = selfsigned_sctx;
    const char *exp[] = {ID_SERVER};
    struct h2_peer peer = {.expected = exp, .n_expected = 1};
    cli_connect(cctx, &peer, NULL);
    cli_post(10);
    assert_true(run_until(cli_closed, 5000));
    assert_int_equal(cli.closed.reason, H2_END_HANDSHAKE_FAILED);
    assert_non_null(strstr(cli.closed_detail, "TLS handshake failed"));
    assert_int_equal(cli.ends, 1);
    assert_int_equal(cli.end.reason, H2_END_HANDSHAKE_FAILED);
    assert_int_equal(cli.ready_calls, 0);
    assert_int_equal(srv.streams, 0);
}

/* Identity checks: a URI SAN that is not the expected one, a DNS SAN that is not, and the DNS SAN that is. */
static void test_identity(void **state)
{
    (void)state;
    srv.ctx = sctx;
    const char *other[] = {ID_OTHER};
    struct h2_peer peer = {.expected = other, .n_expected = 1};
    cli_connect(cctx, &peer, NULL);
    cli_post(10);
    assert_true(run_until(cli_closed, 5000));
    assert_int_equal(cli.closed.reason, H2_END_IDENTITY);
    assert_non_null(strstr(cli.closed_detail, "identity verification error: peer is \"" ID_SERVER "\""));
    assert_int_equal(cli.end.reason, H2_END_IDENTITY);
    assert_int_equal(srv.streams, 0); /* nothing left before the check */

    memset(&cli, 0, sizeof(cli));
    srv.ctx = dns_sctx;
    const char *wrong_dns[] = {"other.istio-system.svc", ID_SERVER};
    peer = (struct h2_peer){.expected = wrong_dns, .n_expected = 2};
    cli_connect(cctx, &peer, NULL);
    cli_post(10);
    assert_true(run_until(cli_closed, 5000));
    assert_int_equal(cli.closed.reason, H2_END_IDENTITY);
    assert_non_null(strstr(cli.closed_detail, "identity verification error"));
    assert_int_equal(srv.streams, 0);

    memset(&cli, 0, sizeof(cli));
    const char *good_dns[] = {ID_OTHER, DNS_NAME};
    peer = (struct h2_peer){.expected = good_dns, .n_expected = 2};
    srv.resp_len = 1000;
    cli_connect(cctx, &peer, NULL);
    exchange(1000, 1000);
    assert_string_equal(h2_conn_peer_id(cli.c), ""); /* no SPIFFE identity */
}

/* chain_only: no identity list, the chain is still verified (a self-signed server fails). */
static void test_chain_only(void **state)
{
    (void)state;
    struct h2_peer peer = {.chain_only = true};
    srv.ctx = dns_sctx;
    srv.resp_len = 10;
    cli_connect(cctx, &peer, NULL);
    exchange(10, 10);
    h2_conn_close(cli.c, H2_END_LOCAL, "next");
    assert_int_equal(cli.closed.reason, H2_END_LOCAL);

    memset(&cli, 0, sizeof(cli));
    srv.ctx = selfsigned_sctx;
    cli_connect(cctx, &peer, NULL);
    assert_true(run_until(cli_closed, 5000));
    assert_int_equal(cli.closed.reason, H2_END_HANDSHAKE_FAILED);

    /* An empty list without chain_only fails closed. */
    memset(&cli, 0, sizeof(cli));
    srv.ctx = sctx;
    peer = (struct h2_peer){0};
    cli_connect(cctx, &peer, NULL);
    assert_true(run_until(cli_closed, 5000));
    assert_int_equal(cli.closed.reason, H2_END_IDENTITY);
}

/* A peer that accepts and never answers: the PING goes unanswered and the conn ends with PING_TIMEOUT. */
static void test_ping_timeout(void **state)
{
    (void)state;
    struct h2_settings set = test_settings(false);
    set.ping_interval_ms = 30;
    set.ping_timeout_ms = 60;
    loop_io_del(L, &srv.lio); /* the listener's backlog completes the connect; nobody reads */
    cli_connect(NULL, NULL, &set);
    cli_post(10);
    assert_true(run_until(cli_closed, 5000));
    assert_int_equal(cli.closed.reason, H2_END_PING_TIMEOUT);
    assert_string_equal(cli.closed_detail, "ping timeout");
    assert_int_equal(cli.end.reason, H2_END_PING_TIMEOUT);
    assert_int_equal(cli.ready_calls, 1);
    loop_io_add(L, &srv.lio, EPOLLIN);
}

/* Python's h2 (no code shared with nghttp2) as an h2c client with prior knowledge against our server: a POST
 * with a body, the response body and trailers. */
static const char *py_client =
    "import socket, sys, h2.connection, h2.config, h2.events\n"
    "port, n = int(sys.argv[1]), int(sys.argv[2])\n"
    "s = socket.create_connection(('127.0.0.1', port), timeout=5)\n"
    "c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))\n"
    "c.initiate_connection()\n"
    "c.send_headers(1, [(':method', 'POST'), (':scheme', 'http'), (':authority', 'x'),\n"
    "                   (':path', '/pkg.Service/Method'), ('content-type', 'application/grpc')])\n"
    "body = bytes((i * 131 + (i >> 9)) & 255 for i in range(5000))\n"
    "c.send_data(1, body)\n"
    "c.send_headers(1, [('x-request-trailer', 'bye')], end_stream=True)\n"
    "s.sendall(c.data_to_send())\n"
    "got, status, trailers, done = b'', None, {}, False\n"
    "while not done:\n"
    "    d = s.recv(65536)\n"
    "    if not d: break\n"
    "    for e in c.receive_data(d):\n"
    "        if isinstance(e, h2.events.ResponseReceived): status = dict(e.headers)[b':status']\n"
    "        elif isinstance(e, h2.events.DataReceived):\n"
    "            got += e.data; c.acknowledge_received_data(e.flow_controlled_length, 1)\n"
    "        elif isinstance(e, h2.events.TrailersReceived): trailers = dict(e.headers)\n"
    "        elif isinstance(e, h2.events.StreamEnded): done = True\n"
    "    s.sendall(c.data_to_send())\n"
    "want = bytes((i * 131 + (i >> 9)) & 255 for i in range(n))\n"
    "ok = status == b'200' and got == want and trailers.get(b'grpc-status') == b'0'\n"
    "sys.exit(0 if ok else 1)\n";

static pid_t py_pid;
static int py_status = -1;

static bool py_exited(void)
{
    return waitpid(py_pid, &py_status, WNOHANG) == py_pid;
}

static void test_h2c_python_client(void **state)
{
    (void)state;
    if (access("/usr/bin/python3", X_OK) != 0 || system("/usr/bin/python3 -c 'import h2' 2>/dev/null") != 0) {
        print_message("python3-h2 not installed: skipped\n");
        skip();
    }
    srv.ctx = NULL;
    srv.resp_len = 70000; /* more than python's initial window: it must send WINDOW_UPDATEs */
    char port[8], n[16];
    snprintf(port, sizeof(port), "%u", srv.port);
    snprintf(n, sizeof(n), "%zu", srv.resp_len);
    char *argv[] = {"/usr/bin/python3", "-c", (char *)py_client, port, n, NULL};
    assert_int_equal(posix_spawn(&py_pid, argv[0], NULL, NULL, argv, environ), 0);
    assert_true(run_until(py_exited, 20000));
    assert_true(WIFEXITED(py_status));
    assert_int_equal(WEXITSTATUS(py_status), 0);
    assert_non_null(srv.last);
    assert_string_equal(srv.last->method, "POST");
    assert_int_equal(srv.last->in.recv, 5000);
    assert_false(srv.last->in.bad);
    assert_true(srv.last->in.eof);
    assert_string_equal(srv.last->trailer, "bye");
}

/* Our h2c client against Python's h2 as the server: it answers the POST with the request's length in a
 * header, a 100000-byte body (more than our stream window: we must credit it as we consume) and trailers. */
static const char *py_server =
    "import socket, sys, h2.connection, h2.config, h2.events\n"
    "ls = socket.socket(); ls.bind(('127.0.0.1', 0)); ls.listen(1)\n"
    "print(ls.getsockname()[1], flush=True)\n"
    "ls.settimeout(10); s, _ = ls.accept(); s.settimeout(10)\n"
    "c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))\n"
    "c.initiate_connection(); s.sendall(c.data_to_send())\n"
    "body = bytes((i * 131 + (i >> 9)) & 255 for i in range(100000))\n"
    "got, trailer, sent, ended = 0, None, 0, False\n"
    "while True:\n"
    "    d = s.recv(65536)\n"
    "    if not d: break\n"
    "    for e in c.receive_data(d):\n"
    "        if isinstance(e, h2.events.DataReceived):\n"
    "            got += len(e.data); c.acknowledge_received_data(e.flow_controlled_length, e.stream_id)\n"
    "        elif isinstance(e, h2.events.TrailersReceived): trailer = "
    "dict(e.headers).get(b'x-request-trailer')\n"
    "        elif isinstance(e, h2.events.StreamEnded):\n"
    "            ended = True\n"
    "            c.send_headers(1, [(':status', '200'), ('x-test', 'yes'), ('x-got', str(got))])\n"
    "    while ended and sent < len(body):\n"
    "        n = min(len(body) - sent, c.local_flow_control_window(1), c.max_outbound_frame_size)\n"
    "        if n <= 0: break\n"
    "        c.send_data(1, body[sent:sent + n]); sent += n\n"
    "        if sent == len(body): c.send_headers(1, [('grpc-status', '0'), ('grpc-message', 'fine')], "
    "end_stream=True)\n"
    "    s.sendall(c.data_to_send())\n"
    "sys.exit(0 if got == 30000 and trailer == b'bye' else 1)\n";

static void test_h2c_python_server(void **state)
{
    (void)state;
    if (access("/usr/bin/python3", X_OK) != 0 || system("/usr/bin/python3 -c 'import h2' 2>/dev/null") != 0) {
        print_message("python3-h2 not installed: skipped\n");
        skip();
    }
    int pfd[2];
    assert_int_equal(pipe(pfd), 0);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, pfd[1], 1);
    posix_spawn_file_actions_addclose(&fa, pfd[0]);
    char *argv[] = {"/usr/bin/python3", "-c", (char *)py_server, NULL};
    assert_int_equal(posix_spawn(&py_pid, argv[0], &fa, NULL, argv, environ), 0);
    posix_spawn_file_actions_destroy(&fa);
    close(pfd[1]);
    char line[16] = "";
    FILE *f = fdopen(pfd[0], "r");
    assert_non_null(fgets(line, sizeof(line), f));
    fclose(f);
    srv.port = (uint16_t)atoi(line); /* connect to python, not to our listener */
    srv.ctx = NULL;
    cli_connect(NULL, NULL, NULL);
    cli_post(30000);
    assert_true(run_until(cli_stream_ended, 10000));
    assert_int_equal(cli.end.reason, H2_END_OK);
    assert_int_equal(cli.status, 200);
    assert_string_equal(cli.x_test, "yes");
    assert_int_equal(cli.in.recv, 100000);
    assert_false(cli.in.bad);
    assert_string_equal(cli.grpc_status, "0");
    assert_string_equal(cli.grpc_message, "fine");
    h2_conn_close(cli.c, H2_END_LOCAL, "done");
    assert_true(run_until(py_exited, 10000));
    assert_true(WIFEXITED(py_status));
    assert_int_equal(WEXITSTATUS(py_status), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_tls_request_response, setup, teardown),
        cmocka_unit_test_setup_teardown(test_h2c_request_response, setup, teardown),
        cmocka_unit_test_setup_teardown(test_zero_settings, setup, teardown),
        cmocka_unit_test_setup_teardown(test_backpressure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_peer_reset, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unconsumed_returned, setup, teardown),
        cmocka_unit_test_setup_teardown(test_goaway_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_handshake_failed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_identity, setup, teardown),
        cmocka_unit_test_setup_teardown(test_chain_only, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ping_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_h2c_python_client, setup, teardown),
        cmocka_unit_test_setup_teardown(test_h2c_python_server, setup, teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
