/* libFuzzer target for the HBONE server (src/h2/hbone.c), driven through its public API only.
 *
 * What it covers: each input is a fresh server connection (hbone_server_new on one end of a socketpair) with
 * the real TLS 1.3 server context and certificates from the local CA. The fuzzer side completes a real
 * mutual-TLS handshake as a client, then sends the HTTP/2 client preface followed by the input bytes,
 * encrypted, so the input reaches hbone's TLS read path, nghttp2 and every hbone callback (requests, headers
 * limits, DATA into the tunnel, RST_STREAM, GOAWAY, PING, window updates, errors). Requests with an ip:port
 * authority are answered 200 and bridged to a socketpair "app" that has sent a few bytes, others get 400, so
 * both the tunnel and the error path run. The client then closes; the server must close the conn, end every
 * stream it reported, and free everything (ASan/LSan). Checked invariants (abort on violation): on_closed
 * exactly once, one on_done per on_request, never more open streams than HBONE_SERVER_MAX_STREAMS. What it
 * does not cover: the TLS handshake itself with hostile bytes (the handshake is always well-formed) and the
 * client role. Each run pays for a full handshake (~4 ms of CPU), so expect a few hundred runs per second.
 *
 * Built and run by `make fuzz` (see tests/fuzz/README.md). The input is what follows the 24-byte preface, so
 * a seed is a client's frames: SETTINGS, HEADERS (CONNECT with :authority), DATA...; the seeds in
 * tests/fuzz/corpus/fuzz_hbone_server/ were made with python3-h2 (header validation off), as the README
 * shows. */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "core/log.h"
#include "core/loop.h"
#include "core/net.h"
#include "h2/hbone.h"
#include "tls/ca.h"
#include "tls/spiffe.h"
#include "tls/tls.h"

#define MAX_APPS 256

static struct loop *L;
static SSL_CTX *sctx, *cctx;
static struct timer step_timer;

static int closed_calls, requests, dones;
static int app_fds[MAX_APPS];
static int n_apps;

static void step_cb(struct timer *t)
{
    (void)t;
    loop_stop(L);
}

/* One loop iteration: tasks, a non-blocking epoll_wait, callbacks, tasks, due timers. */
static void step(void)
{
    timer_start(L, &step_timer, 0);
    loop_run(L);
}

static void on_done(struct hbone_stream *s, void *ud, const struct hbone_result *r)
{
    (void)s, (void)ud, (void)r;
    dones++;
}

static const struct hbone_stream_ops stream_ops = {.on_done = on_done};

static void on_request(struct hbone_stream *s, void *ud, const struct hbone_request *req)
{
    (void)ud;
    struct ip_addr ip;
    uint16_t port;
    int sv[2];
    requests++;
    hbone_stream_set_ops(s, &stream_ops, NULL);
    if (strcmp(req->method, "CONNECT") != 0 ||
        authority_parse(req->authority, strlen(req->authority), &ip, &port) || n_apps == MAX_APPS ||
        socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0) {
        hbone_stream_respond(s, 400, -1, NULL, 0);
        return;
    }
    /* The app has something to say, so DATA flows toward the fuzzer's client too. */
    if (write(sv[1], "hello from the app", 18) < 0) abort();
    app_fds[n_apps++] = sv[1];
    struct hbone_header h = {"x-fuzz", "1"};
    hbone_stream_respond(s, 200, sv[0], &h, 1);
}

static void on_closed(struct hbone_conn *c, void *ud, const struct h2_end *err)
{
    (void)c, (void)ud, (void)err;
    closed_calls++;
}

static const struct hbone_conn_ops conn_ops = {.on_closed = on_closed, .on_request = on_request};

static struct tls_cert *fetch(struct cert_provider *p, const char *uri)
{
    struct spiffe_id id;
    char err[256];
    if (spiffe_parse(uri, strlen(uri), &id) < 0) return NULL;
    struct tls_cert *c = p->fetch(p, &id, err, sizeof(err));
    if (!c) fprintf(stderr, "fetch %s: %s\n", uri, err);
    return c;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    char dir[] = "/tmp/zmesh-fuzz-hbone-XXXXXX", err[256], p[128];
    log_set_level("error");
    /* The client side writes with OpenSSL's socket BIO (plain write()); a server that already closed must not
     * kill the fuzzer with SIGPIPE. ztunnel ignores SIGPIPE the same way. */
    signal(SIGPIPE, SIG_IGN);
    if (!mkdtemp(dir) || ca_write_root(dir, NULL, err, sizeof(err)) < 0) abort();
    struct cert_provider *ca = ca_local_new(dir, err, sizeof(err));
    if (!ca) abort();
    struct tls_cert *srv = fetch(ca, "spiffe://cluster.local/ns/default/sa/server");
    struct tls_cert *cli = fetch(ca, "spiffe://cluster.local/ns/default/sa/client");
    if (!srv || !cli) abort();
    sctx = tls_server_ctx_new(srv);
    cctx = tls_client_ctx_new(cli);
    if (!sctx || !cctx) abort();
    /* The contexts hold their own references; the certificates and the CA directory are no longer needed. */
    tls_cert_unref(srv);
    tls_cert_unref(cli);
    ca->destroy(ca);
    snprintf(p, sizeof(p), "%s/root-cert.pem", dir);
    unlink(p);
    snprintf(p, sizeof(p), "%s/root-key.pem", dir);
    unlink(p);
    rmdir(dir);
    L = loop_new();
    if (!L) abort();
    step_timer.cb = step_cb;
    return 0;
}

/* Reads and discards whatever the server sent. */
static void drain_client(SSL *ssl)
{
    uint8_t buf[16384];
    size_t n;
    while (SSL_read_ex(ssl, buf, sizeof(buf), &n)) {
    }
    ERR_clear_error();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    int sv[2];
    closed_calls = requests = dones = n_apps = 0;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0) abort();
    struct hbone_conn *c = hbone_server_new(L, sv[0], sctx, &conn_ops, NULL);
    if (!c) abort();
    SSL *ssl = SSL_new(cctx);
    if (!ssl || !SSL_set_fd(ssl, sv[1])) abort();
    SSL_set_connect_state(ssl);

    /* Handshake: the client and the loop take turns. */
    int hs = 0;
    for (int i = 0; i < 200 && hs != 1; i++) {
        hs = SSL_do_handshake(ssl);
        if (hs != 1) {
            int e = SSL_get_error(ssl, hs);
            if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) abort();
            step();
        }
    }
    if (hs != 1) abort();

    /* Preface + input as one plaintext stream, written as the socket accepts it. */
    size_t total = sizeof(preface) - 1 + size, off = 0;
    uint8_t *msg = malloc(total ? total : 1);
    if (!msg) abort();
    memcpy(msg, preface, sizeof(preface) - 1);
    if (size) memcpy(msg + sizeof(preface) - 1, data, size);
    for (int i = 0; i < 1000 && off < total && closed_calls == 0; i++) {
        size_t w = 0;
        if (SSL_write_ex(ssl, msg + off, total - off, &w)) {
            off += w;
        } else {
            int e = SSL_get_error(ssl, 0);
            ERR_clear_error();
            if (e != SSL_ERROR_WANT_WRITE && e != SSL_ERROR_WANT_READ) break; /* server went away */
        }
        step();
        drain_client(ssl);
    }
    free(msg);
    for (int i = 0; i < 20 && closed_calls == 0; i++) {
        step();
        drain_client(ssl);
        if (hbone_conn_streams(c) > HBONE_SERVER_MAX_STREAMS) abort();
    }

    /* The client leaves: the server sees EOF and must wind everything down by itself. */
    SSL_free(ssl);
    close(sv[1]);
    for (int i = 0; i < 50 && closed_calls == 0; i++)
        step();
    if (closed_calls == 0) abort(); /* a conn that ignores its peer's EOF would leak in production */
    step();                         /* deferred frees */
    step();
    if (closed_calls != 1) abort();
    if (dones != requests) abort();
    for (int i = 0; i < n_apps; i++)
        close(app_fds[i]);
    return 0;
}
