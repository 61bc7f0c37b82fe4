/* CSRs for a remote CA and the checks on its answer (see csr.h). */
#include "tls/csr.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "core/err.h"
#include "tls/tls.h"

/* Formats "<what>: <OpenSSL's reason>" and clears the error queue. */
static void set_ossl_err(char *err, size_t errlen, const char *what)
{
    char ebuf[256];
    err_setf(err, errlen, "%s: %s", what, tls_errstr(ebuf, sizeof(ebuf)));
}

int tls_csr_new(const char *uri, EVP_PKEY **key, char **pem, char *err, size_t errlen)
{
    X509_REQ *req = NULL;
    EVP_PKEY *pk = NULL;
    GENERAL_NAMES *gens = NULL;
    GENERAL_NAME *gen = NULL;
    ASN1_IA5STRING *ia5 = NULL;
    STACK_OF(X509_EXTENSION) *exts = NULL;
    X509_EXTENSION *ext = NULL;
    BIO *bio = NULL;
    int rc = -EIO;
    size_t ulen = uri ? strlen(uri) : 0;

    *key = NULL;
    *pem = NULL;
    if (!ulen || ulen >= SPIFFE_MAX) {
        err_setf(err, errlen, "CSR: the identity must be 1 to %d bytes", SPIFFE_MAX - 1);
        return -EINVAL;
    }
    if (!(pk = EVP_EC_gen("P-256")) || !(req = X509_REQ_new())) goto ossl_fail;
    /* Version 1 (value 0) with an empty subject: the identity is only in the SAN, as ztunnel asks. */
    if (!X509_REQ_set_version(req, X509_REQ_VERSION_1) || !X509_REQ_set_pubkey(req, pk)) goto ossl_fail;
    if (!(gens = GENERAL_NAMES_new()) || !(gen = GENERAL_NAME_new()) || !(ia5 = ASN1_IA5STRING_new()))
        goto ossl_fail;
    if (!ASN1_STRING_set(ia5, uri, (int)ulen)) goto ossl_fail;
    GENERAL_NAME_set0_value(gen, GEN_URI, ia5);
    ia5 = NULL;
    if (!sk_GENERAL_NAME_push(gens, gen)) goto ossl_fail;
    gen = NULL;
    if (!(ext = X509V3_EXT_i2d(NID_subject_alt_name, 1 /* critical, as ztunnel's */, gens))) goto ossl_fail;
    if (!(exts = sk_X509_EXTENSION_new_null()) || !sk_X509_EXTENSION_push(exts, ext)) goto ossl_fail;
    ext = NULL;
    if (!X509_REQ_add_extensions(req, exts)) goto ossl_fail;
    if (X509_REQ_sign(req, pk, EVP_sha256()) <= 0) goto ossl_fail;
    if (!(bio = BIO_new(BIO_s_mem())) || !PEM_write_bio_X509_REQ(bio, req)) goto ossl_fail;
    char *data;
    long len = BIO_get_mem_data(bio, &data);
    if (len <= 0 || !(*pem = malloc((size_t)len + 1))) {
        err_setf(err, errlen, "CSR: out of memory");
        rc = -ENOMEM;
        goto out;
    }
    memcpy(*pem, data, (size_t)len);
    (*pem)[len] = 0;
    *key = pk;
    pk = NULL;
    rc = 0;
    goto out;

ossl_fail:
    set_ossl_err(err, errlen, "CSR");
out:
    BIO_free(bio);
    X509_EXTENSION_free(ext);
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    ASN1_IA5STRING_free(ia5);
    GENERAL_NAME_free(gen);
    GENERAL_NAMES_free(gens);
    X509_REQ_free(req);
    EVP_PKEY_free(pk);
    return rc;
}

/* Every certificate in pem (one element of the answer), appended to out. Refuses anything else in the
 * element (a key, trailing garbage that is not whitespace). Returns the count added, or -EINVAL. */
static int read_pems(const char *pem, STACK_OF(X509) * out, size_t idx, char *err, size_t errlen)
{
    size_t len = strnlen(pem, TLS_CA_PEM_MAX + 1);
    if (len > TLS_CA_PEM_MAX) {
        err_setf(err, errlen, "cert_chain[%zu]: longer than %d bytes", idx, TLS_CA_PEM_MAX);
        return -EINVAL;
    }
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    if (!bio) {
        err_setf(err, errlen, "cert_chain[%zu]: out of memory", idx);
        return -ENOMEM;
    }
    int n = 0;
    for (;;) {
        X509 *x = PEM_read_bio_X509(bio, NULL, NULL, NULL);
        if (!x) break;
        if (!sk_X509_push(out, x)) {
            X509_free(x);
            n = -ENOMEM;
            break;
        }
        n++;
    }
    /* PEM_read_bio_X509 ends with "no start line" once only whitespace is left; anything else is an error
     * worth naming (a truncated certificate, a bad base64 body). */
    unsigned long e = ERR_peek_last_error();
    bool clean_end = ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE;
    char *rest;
    long left = BIO_get_mem_data(bio, &rest);
    for (long i = 0; clean_end && i < left; i++)
        if (!strchr(" \t\r\n", rest[i])) clean_end = false;
    if (n >= 0 && (!clean_end || n == 0)) {
        char ebuf[200];
        if (n == 0)
            err_setf(err, errlen, "cert_chain[%zu]: no PEM certificate", idx);
        else
            err_setf(err, errlen, "cert_chain[%zu]: %s", idx, tls_errstr(ebuf, sizeof(ebuf)));
        n = -EINVAL;
    }
    ERR_clear_error();
    BIO_free(bio);
    if (n == -ENOMEM) err_setf(err, errlen, "cert_chain[%zu]: out of memory", idx);
    return n;
}

static int asn1_to_time(const ASN1_TIME *t, time_t *out)
{
    struct tm tm;
    if (!t || ASN1_TIME_to_tm(t, &tm) != 1) return -EINVAL;
    *out = timegm(&tm);
    return 0;
}

int tls_cert_from_ca_answer(EVP_PKEY *key, const char *const *pem, size_t n, const struct spiffe_id *id,
                            struct tls_cert **out, size_t *extra_roots, char *err, size_t errlen)
{
    STACK_OF(X509) *leafs = NULL, *chain = NULL, *roots = NULL;
    X509_STORE *store = NULL;
    X509_STORE_CTX *vctx = NULL;
    struct tls_cert *c = NULL;
    char want[SPIFFE_MAX], got[SPIFFE_MAX], why[256];
    int rc = -EINVAL;

    *out = NULL;
    if (extra_roots) *extra_roots = 0;
    if (n < 2) {
        err_setf(err, errlen, "cert_chain: %s", n ? "a leaf without a root" : "empty");
        return -EINVAL;
    }
    if (n > TLS_CA_CHAIN_MAX) {
        err_setf(err, errlen, "cert_chain: %zu elements, at most %d", n, TLS_CA_CHAIN_MAX);
        return -EINVAL;
    }
    if (spiffe_format(id, want, sizeof(want)) < 0) {
        err_setf(err, errlen, "identity too long");
        return -EINVAL;
    }
    if (!(leafs = sk_X509_new_null()) || !(chain = sk_X509_new_null()) || !(roots = sk_X509_new_null()))
        goto nomem;
    int k;
    if ((k = read_pems(pem[0], leafs, 0, err, errlen)) < 0) {
        rc = k;
        goto out;
    }
    if (k != 1) {
        err_setf(err, errlen, "cert_chain[0]: %d certificates, expected the leaf alone", k);
        goto out;
    }
    for (size_t i = 1; i + 1 < n; i++) {
        if ((k = read_pems(pem[i], chain, i, err, errlen)) < 0) {
            rc = k;
            goto out;
        }
        if (k != 1) {
            err_setf(err, errlen, "cert_chain[%zu]: %d certificates, expected one intermediate", i, k);
            goto out;
        }
    }
    if ((k = read_pems(pem[n - 1], roots, n - 1, err, errlen)) < 0) {
        rc = k;
        goto out;
    }

    X509 *leaf = sk_X509_value(leafs, 0);
    if (X509_check_private_key(leaf, key) != 1) {
        ERR_clear_error();
        err_setf(err, errlen, "cert_chain[0]: the leaf does not carry the key of the request");
        goto out;
    }
    if (tls_leaf_identity(leaf, id->td, got, sizeof(got), why, sizeof(why)) < 0) {
        err_setf(err, errlen, "cert_chain[0]: %s", why);
        goto out;
    }
    if (strcmp(got, want) != 0) {
        err_setf(err, errlen, "cert_chain[0]: the leaf is for %s, requested %s", got, want);
        goto out;
    }
    if (!(store = X509_STORE_new()) || !(vctx = X509_STORE_CTX_new())) goto nomem;
    for (int i = 0; i < sk_X509_num(roots); i++)
        if (!X509_STORE_add_cert(store, sk_X509_value(roots, i))) goto nomem;
    if (!X509_STORE_CTX_init(vctx, store, leaf, chain)) goto nomem;
    if (X509_verify_cert(vctx) != 1) {
        int e = X509_STORE_CTX_get_error(vctx);
        ERR_clear_error();
        err_setf(err, errlen, "cert_chain: the leaf does not verify to a root of cert_chain[%zu]: %s", n - 1,
                 X509_verify_cert_error_string(e));
        goto out;
    }
    STACK_OF(X509) *path = X509_STORE_CTX_get0_chain(vctx);
    X509 *anchor = sk_X509_value(path, sk_X509_num(path) - 1);

    if (!(c = calloc(1, sizeof(*c)))) goto nomem;
    c->refs = 1;
    c->id = *id;
    memcpy(c->uri, want, sizeof(want));
    if (asn1_to_time(X509_get0_notBefore(leaf), &c->not_before) < 0 ||
        asn1_to_time(X509_get0_notAfter(leaf), &c->not_after) < 0) {
        err_setf(err, errlen, "cert_chain[0]: unreadable validity period");
        goto out;
    }
    if (!EVP_PKEY_up_ref(key)) goto nomem;
    c->key = key;
    if (!X509_up_ref(leaf)) goto nomem;
    c->leaf = leaf;
    if (!X509_up_ref(anchor)) goto nomem;
    c->root = anchor;
    c->chain = chain; /* the intermediates as the CA sent them, presented after the leaf */
    chain = NULL;
    if (extra_roots) *extra_roots = (size_t)sk_X509_num(roots) - 1;
    *out = c;
    c = NULL;
    rc = 0;
    goto out;

nomem:
    ERR_clear_error();
    err_setf(err, errlen, "out of memory");
    rc = -ENOMEM;
out:
    tls_cert_unref(c); /* partly built (NULL on success): releases what was referenced into it */
    X509_STORE_CTX_free(vctx);
    X509_STORE_free(store);
    sk_X509_pop_free(leafs, X509_free);
    sk_X509_pop_free(chain, X509_free);
    sk_X509_pop_free(roots, X509_free);
    return rc;
}
