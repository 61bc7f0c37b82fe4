/* Unit tests for control-plane TLS (src/tls/control.c) and zmeshd's serving certificate
 * (ca_issuer_sign_server): a real handshake over a socket pair, roots given inline, as a file, and wrong. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
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

#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "tls/control.h"
#include "tls/issuer.h"

static char tmp[64];

static int group_setup(void **state)
{
    snprintf(tmp, sizeof(tmp), "/tmp/zmesh-control-XXXXXX");
    return mkdtemp(tmp) ? 0 : -1;
}

static int group_teardown(void **state)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmp);
    return system(cmd) == 0 ? 0 : -1;
}

struct server_arg {
    SSL_CTX *ctx;
    int fd;
    int ok;
};

static void *server_main(void *p)
{
    struct server_arg *a = p;
    SSL *ssl = SSL_new(a->ctx);
    SSL_set_fd(ssl, a->fd);
    a->ok = SSL_accept(ssl) == 1;
    if (a->ok) SSL_shutdown(ssl);
    SSL_free(ssl);
    return NULL;
}

/* Handshakes a client with cctx against a server with sctx; returns the server leaf's verdict: 1 verified and
 * the name checks, 0 handshake failed. */
static int handshake(SSL_CTX *cctx, SSL_CTX *sctx, const char *host, char *alpn, size_t alpn_n)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    struct server_arg a = {.ctx = sctx, .fd = sv[1]};
    pthread_t t;
    pthread_create(&t, NULL, server_main, &a);
    SSL *ssl = SSL_new(cctx);
    SSL_set_fd(ssl, sv[0]);
    int ok = SSL_connect(ssl) == 1;
    if (ok) {
        X509 *leaf = SSL_get1_peer_certificate(ssl);
        ok = leaf && SSL_get_verify_result(ssl) == X509_V_OK && X509_check_host(leaf, host, 0, 0, NULL) == 1;
        X509_free(leaf);
        const unsigned char *p;
        unsigned int len;
        SSL_get0_alpn_selected(ssl, &p, &len);
        snprintf(alpn, alpn_n, "%.*s", (int)len, (const char *)p);
    }
    SSL_free(ssl);
    close(sv[0]);
    pthread_join(t, NULL);
    close(sv[1]);
    ERR_clear_error();
    return ok;
}

static void test_control_handshake(void **state)
{
    char dir[128], err[512], alpn[16] = "";
    struct ca_issuer *iss = NULL;
    struct ca_chain ch;
    EVP_PKEY *key = NULL;
    const char *names[] = {"istiod.istio-system.svc", "zmeshd.istio-system.svc"};

    snprintf(dir, sizeof(dir), "%s/ca", tmp);
    assert_int_equal(ca_issuer_open_state(dir, "cluster.local", &iss, err, sizeof(err)), 0);
    assert_int_equal(ca_issuer_sign_server(iss, names, 2, 3600, &ch, &key, err, sizeof(err)), 0);
    assert_int_equal(ch.n, 2); /* leaf, root file */
    SSL_CTX *sctx = tls_control_server_ctx_new((const char *const *)ch.pem, ch.n, key, err, sizeof(err));
    assert_non_null(sctx);

    /* Inline roots (Istio's static form). */
    SSL_CTX *cctx = tls_control_client_ctx_new(ca_issuer_root_pem(iss), err, sizeof(err));
    assert_non_null(cctx);
    assert_int_equal(handshake(cctx, sctx, "istiod.istio-system.svc", alpn, sizeof(alpn)), 1);
    assert_string_equal(alpn, "h2");
    assert_int_equal(handshake(cctx, sctx, "zmeshd.istio-system.svc", alpn, sizeof(alpn)), 1);
    assert_int_equal(handshake(cctx, sctx, "evil.istio-system.svc", alpn, sizeof(alpn)), 0);
    SSL_CTX_free(cctx);

    /* Roots from a file. */
    char path[160];
    snprintf(path, sizeof(path), "%s/ca/root-cert.pem", tmp);
    assert_non_null(cctx = tls_control_client_ctx_new(path, err, sizeof(err)));
    assert_int_equal(handshake(cctx, sctx, "istiod.istio-system.svc", alpn, sizeof(alpn)), 1);
    SSL_CTX_free(cctx);

    /* Other roots: the chain does not verify. */
    struct ca_issuer *other = NULL;
    snprintf(dir, sizeof(dir), "%s/other", tmp);
    assert_int_equal(ca_issuer_open_state(dir, "cluster.local", &other, err, sizeof(err)), 0);
    assert_non_null(cctx = tls_control_client_ctx_new(ca_issuer_root_pem(other), err, sizeof(err)));
    assert_int_equal(handshake(cctx, sctx, "istiod.istio-system.svc", alpn, sizeof(alpn)), 0);
    SSL_CTX_free(cctx);
    ca_issuer_free(other);

    /* Roots that are no certificate at all are refused up front. */
    assert_null(tls_control_client_ctx_new("not a certificate", err, sizeof(err)));
    assert_non_null(strstr(err, "inline roots: no PEM certificate"));
    snprintf(path, sizeof(path), "%s/empty.pem", tmp);
    FILE *f = fopen(path, "w");
    fclose(f);
    assert_null(tls_control_client_ctx_new(path, err, sizeof(err)));
    assert_non_null(strstr(err, "empty.pem: no PEM certificate"));
    assert_null(tls_control_client_ctx_new("", err, sizeof(err)));

    /* The serving certificate carries DNS names only, and no URI (it is no workload). */
    BIO *b = BIO_new_mem_buf(ch.pem[0], -1);
    X509 *leaf = PEM_read_bio_X509(b, NULL, NULL, NULL);
    BIO_free(b);
    GENERAL_NAMES *gens = X509_get_ext_d2i(leaf, NID_subject_alt_name, NULL, NULL);
    assert_int_equal(sk_GENERAL_NAME_num(gens), 2);
    for (int i = 0; i < 2; i++)
        assert_int_equal(sk_GENERAL_NAME_value(gens, i)->type, GEN_DNS);
    GENERAL_NAMES_free(gens);
    X509_free(leaf);
    struct ca_chain none;
    EVP_PKEY *nokey;
    assert_int_equal(ca_issuer_sign_server(iss, names, 0, 3600, &none, &nokey, err, sizeof(err)), -EINVAL);
    assert_null(nokey);

    SSL_CTX_free(sctx);
    ca_chain_free(&ch);
    EVP_PKEY_free(key);
    ca_issuer_free(iss);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN); /* a refused handshake writes its alert to a closed socket */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_control_handshake),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
