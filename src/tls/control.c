/* Control-plane TLS contexts (see control.h). */
#include "tls/control.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/err.h>
#include <openssl/pem.h>

#include "core/err.h"
#include "tls/pem.h"
#include "tls/record.h"
#include "tls/tls.h"

static const unsigned char alpn_h2[] = {2, 'h', '2'};

/* Settings both sides share: TLS 1.2 (Go's default minimum, which istiod uses) to 1.3, no renegotiation. */
static int ctx_base(SSL_CTX *ctx)
{
    if (!SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION)) return -1;
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    /* TLS 1.3 connections: application records through src/tls/record.c after the handshake. */
    return tls_rec_enable(ctx);
}

/* Roots of a PEM file and a limit for it, as zmeshd's CA files (tls_read_text). */
#define ROOTS_FILE_MAX (1024 * 1024)

SSL_CTX *tls_control_client_ctx_new(const char *roots, char *err, size_t errlen)
{
    char ebuf[256];
    struct stat st;
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx || ctx_base(ctx) < 0) goto ossl_fail;
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (SSL_CTX_set_alpn_protos(ctx, alpn_h2, sizeof(alpn_h2)) != 0) goto ossl_fail;
    if (!roots || !*roots) {
        err_setf(err, errlen, "no roots to verify the server with");
        goto fail;
    }
    if (!strcmp(roots, TLS_ROOTS_SYSTEM)) {
        if (SSL_CTX_set_default_verify_paths(ctx) != 1) goto ossl_fail;
        return ctx;
    }
    bool is_file = stat(roots, &st) == 0;
    const char *what = is_file ? roots : "inline roots";
    char *text = NULL;
    STACK_OF(X509) *certs = NULL;
    if (is_file && tls_read_text(roots, ROOTS_FILE_MAX, &text, err, errlen) < 0) goto fail;
    int n = tls_pem_certs(what, is_file ? text : roots, &certs, err, errlen);
    free(text);
    if (n == 0) err_setf(err, errlen, "%s: no PEM certificate", what);
    for (int i = 0; i < n; i++)
        if (!X509_STORE_add_cert(SSL_CTX_get_cert_store(ctx), sk_X509_value(certs, i))) {
            err_setf(err, errlen, "%s: %s", what, tls_errstr(ebuf, sizeof(ebuf)));
            n = -1;
        }
    sk_X509_pop_free(certs, X509_free);
    if (n <= 0) goto fail;
    return ctx;
ossl_fail:
    err_setf(err, errlen, "TLS context: %s", tls_errstr(ebuf, sizeof(ebuf)));
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

SSL_CTX *tls_control_server_ctx_new(const char *const *pem, size_t n, EVP_PKEY *key, char *err, size_t errlen)
{
    char ebuf[256];
    SSL_CTX *ctx = NULL;
    if (n < 1) {
        err_setf(err, errlen, "no certificate to serve");
        return NULL;
    }
    if (!(ctx = SSL_CTX_new(TLS_server_method())) || ctx_base(ctx) < 0) goto ossl_fail;
    SSL_CTX_set_mode(ctx, SSL_MODE_NO_AUTO_CHAIN);
    /* The leaf and the intermediates; the last element (the roots) is not sent unless it is all there is. */
    size_t send = n > 1 ? n - 1 : 1;
    for (size_t i = 0; i < send; i++) {
        BIO *bio = BIO_new_mem_buf(pem[i], -1);
        X509 *x = bio ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
        BIO_free(bio);
        if (!x) {
            err_setf(err, errlen, "certificate %zu: %s", i, tls_errstr(ebuf, sizeof(ebuf)));
            goto fail;
        }
        int ok = i == 0 ? SSL_CTX_use_certificate(ctx, x) : SSL_CTX_add1_chain_cert(ctx, x);
        X509_free(x);
        if (ok != 1) goto ossl_fail;
    }
    if (SSL_CTX_use_PrivateKey(ctx, key) != 1 || SSL_CTX_check_private_key(ctx) != 1) goto ossl_fail;
    SSL_CTX_set_alpn_select_cb(ctx, tls_alpn_select_h2, NULL);
    return ctx;
ossl_fail:
    err_setf(err, errlen, "TLS context: %s", tls_errstr(ebuf, sizeof(ebuf)));
fail:
    SSL_CTX_free(ctx);
    return NULL;
}
