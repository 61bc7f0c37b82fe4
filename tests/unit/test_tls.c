/* Unit tests for the local CA (src/tls/ca.c) and the HBONE TLS contexts (src/tls/tls.c): certificates are
 * minted from roots generated here, and handshakes run in memory over a BIO pair. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "tls/ca.h"
#include "tls/spiffe.h"
#include "tls/tls.h"

#define ID_SERVER "spiffe://cluster.local/ns/default/sa/server"
#define ID_CLIENT "spiffe://cluster.local/ns/default/sa/client"
#define ID_FOREIGN "spiffe://other.domain/ns/default/sa/client"

/* Shared fixtures: root A made here with the OpenSSL API, root B with ca_write_root. */
static char dir_a[64], dir_b[64], dir_bad[64];
static struct cert_provider *ca_a, *ca_b;
static X509 *root_a;
static EVP_PKEY *root_a_key;

static void rm_dir(const char *dir)
{
    char p[128];
    if (!dir[0]) return;
    snprintf(p, sizeof(p), "%s/root-cert.pem", dir);
    unlink(p);
    snprintf(p, sizeof(p), "%s/root-key.pem", dir);
    unlink(p);
    rmdir(dir);
}

static int write_file_pem(const char *dir, const char *name, X509 *x, EVP_PKEY *k)
{
    char p[128];
    snprintf(p, sizeof(p), "%s/%s", dir, name);
    FILE *f = fopen(p, "w");
    if (!f) return -1;
    int ok = x ? PEM_write_X509(f, x) : PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL);
    fclose(f);
    return ok ? 0 : -1;
}

static int add_ext(X509 *x, X509 *issuer, int nid, const char *v)
{
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, issuer, x, NULL, NULL, 0);
    X509_EXTENSION *e = X509V3_EXT_nconf_nid(NULL, &ctx, nid, v);
    int ok = e && X509_add_ext(x, e, -1);
    X509_EXTENSION_free(e);
    return ok ? 0 : -1;
}

/* A self-signed EC P-256 CA valid from now+nb_s to now+na_s, written as dir/root-cert.pem +
 * dir/root-key.pem; *keyp receives the key. */
static X509 *make_root_at(const char *dir, const char *cn, EVP_PKEY **keyp, long nb_s, long na_s)
{
    EVP_PKEY *k = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    if (!k || !x) goto fail;
    X509_set_version(x, X509_VERSION_3);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 4242);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC, (const unsigned char *)cn, -1,
                               -1, 0);
    X509_set_issuer_name(x, X509_get_subject_name(x));
    X509_gmtime_adj(X509_getm_notBefore(x), nb_s);
    X509_gmtime_adj(X509_getm_notAfter(x), na_s);
    X509_set_pubkey(x, k);
    if (add_ext(x, x, NID_basic_constraints, "critical,CA:TRUE") < 0) goto fail;
    if (add_ext(x, x, NID_key_usage, "critical,keyCertSign") < 0) goto fail;
    if (X509_sign(x, k, EVP_sha256()) <= 0) goto fail;
    if (dir && (write_file_pem(dir, "root-cert.pem", x, NULL) < 0 ||
                write_file_pem(dir, "root-key.pem", NULL, k) < 0))
        goto fail;
    if (keyp)
        *keyp = k;
    else
        EVP_PKEY_free(k);
    return x;
fail:
    X509_free(x);
    EVP_PKEY_free(k);
    return NULL;
}

/* The usual root: valid from an hour ago for 30 days. */
static X509 *make_root(const char *dir, const char *cn, EVP_PKEY **keyp)
{
    return make_root_at(dir, cn, keyp, -3600, 30L * 86400);
}

static struct tls_cert *fetch(struct cert_provider *p, const char *uri)
{
    struct spiffe_id id;
    char err[256] = "";
    if (spiffe_parse(uri, strlen(uri), &id) < 0) return NULL;
    struct tls_cert *c = p->fetch(p, &id, err, sizeof(err));
    if (!c) print_error("fetch %s: %s\n", uri, err);
    return c;
}

static int group_setup(void **state)
{
    (void)state;
    char err[256];
    strcpy(dir_a, "/tmp/zmesh-tls-a-XXXXXX");
    strcpy(dir_b, "/tmp/zmesh-tls-b-XXXXXX");
    strcpy(dir_bad, "/tmp/zmesh-tls-x-XXXXXX");
    if (!mkdtemp(dir_a) || !mkdtemp(dir_b) || !mkdtemp(dir_bad)) return -1;
    if (!(root_a = make_root(dir_a, "zmesh test root A", &root_a_key))) return -1;
    if (ca_write_root(dir_b, "zmesh test root B", err, sizeof(err)) < 0) {
        print_error("ca_write_root: %s\n", err);
        return -1;
    }
    if (!(ca_a = ca_local_new(dir_a, err, sizeof(err))) || !(ca_b = ca_local_new(dir_b, err, sizeof(err)))) {
        print_error("ca_local_new: %s\n", err);
        return -1;
    }
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    if (ca_a) ca_a->destroy(ca_a);
    if (ca_b) ca_b->destroy(ca_b);
    X509_free(root_a);
    EVP_PKEY_free(root_a_key);
    rm_dir(dir_a);
    rm_dir(dir_b);
    rm_dir(dir_bad);
    return 0;
}

/* ---- local CA ---- */

static void test_ca_load_errors(void **state)
{
    (void)state;
    char err[512] = "";
    char expect[128];

    /* Empty directory: the message names the missing file. */
    assert_null(ca_local_new(dir_bad, err, sizeof(err)));
    snprintf(expect, sizeof(expect), "%s/root-cert.pem: ", dir_bad);
    assert_non_null(strstr(err, expect));

    /* Cert present, key missing. */
    EVP_PKEY *other_key = NULL;
    X509 *other = make_root(NULL, "unused", &other_key);
    assert_non_null(other);
    assert_int_equal(write_file_pem(dir_bad, "root-cert.pem", root_a, NULL), 0);
    err[0] = '\0';
    assert_null(ca_local_new(dir_bad, err, sizeof(err)));
    snprintf(expect, sizeof(expect), "%s/root-key.pem: ", dir_bad);
    assert_non_null(strstr(err, expect));

    /* Key that does not belong to the certificate. */
    assert_int_equal(write_file_pem(dir_bad, "root-key.pem", NULL, other_key), 0);
    err[0] = '\0';
    assert_null(ca_local_new(dir_bad, err, sizeof(err)));
    assert_non_null(strstr(err, "does not match"));

    /* Garbage certificate file. */
    char p[128];
    snprintf(p, sizeof(p), "%s/root-cert.pem", dir_bad);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fputs("not a certificate\n", f);
    fclose(f);
    err[0] = '\0';
    assert_null(ca_local_new(dir_bad, err, sizeof(err)));
    snprintf(expect, sizeof(expect), "%s/root-cert.pem: ", dir_bad);
    assert_non_null(strstr(err, expect));

    X509_free(other);
    EVP_PKEY_free(other_key);
}

static void test_ca_mint(void **state)
{
    (void)state;
    struct tls_cert *c = fetch(ca_a, ID_CLIENT);
    assert_non_null(c);
    assert_string_equal(c->uri, ID_CLIENT);
    assert_string_equal(c->id.td, "cluster.local");
    assert_string_equal(c->id.sa, "client");
    assert_non_null(c->chain);
    assert_int_equal(sk_X509_num(c->chain), 0);
    assert_int_equal(X509_cmp(c->root, root_a), 0);

    /* Exactly one SAN, a URI equal to the id, in a critical extension. */
    int crit = -1;
    GENERAL_NAMES *gens = X509_get_ext_d2i(c->leaf, NID_subject_alt_name, &crit, NULL);
    assert_non_null(gens);
    assert_int_equal(crit, 1);
    assert_int_equal(sk_GENERAL_NAME_num(gens), 1);
    GENERAL_NAME *gn = sk_GENERAL_NAME_value(gens, 0);
    assert_int_equal(gn->type, GEN_URI);
    assert_string_equal((const char *)ASN1_STRING_get0_data(gn->d.uniformResourceIdentifier), ID_CLIENT);
    GENERAL_NAMES_free(gens);

    /* Validity: starts in the past, ends 24 h from now (+-2 min); the struct mirrors the certificate. */
    int days = 0, secs = 0;
    assert_int_equal(ASN1_TIME_diff(&days, &secs, NULL, X509_get0_notAfter(c->leaf)), 1);
    long left = days * 86400L + secs;
    assert_in_range(left, 24 * 3600 - 120, 24 * 3600 + 120);
    assert_true(X509_cmp_current_time(X509_get0_notBefore(c->leaf)) < 0);
    assert_in_range(c->not_after - c->not_before, 24 * 3600, 24 * 3600 + 120);
    assert_in_range(c->not_after - time(NULL), 24 * 3600 - 120, 24 * 3600 + 120);

    /* Usages: leaf, not CA; digitalSignature + keyEncipherment; serverAuth + clientAuth. */
    assert_int_equal(X509_check_ca(c->leaf), 0);
    uint32_t ku = X509_get_key_usage(c->leaf);
    assert_true(ku & KU_DIGITAL_SIGNATURE);
    assert_true(ku & KU_KEY_ENCIPHERMENT);
    assert_false(ku & KU_KEY_CERT_SIGN);
    uint32_t xku = X509_get_extended_key_usage(c->leaf);
    assert_int_equal(xku & (XKU_SSL_SERVER | XKU_SSL_CLIENT), XKU_SSL_SERVER | XKU_SSL_CLIENT);

    /* Issued and signed by root A; the key is EC P-256 and matches the leaf. */
    assert_int_equal(X509_NAME_cmp(X509_get_issuer_name(c->leaf), X509_get_subject_name(root_a)), 0);
    assert_int_equal(X509_verify(c->leaf, X509_get0_pubkey(root_a)), 1);
    assert_int_equal(X509_get_signature_nid(c->leaf), NID_ecdsa_with_SHA256);
    assert_int_equal(EVP_PKEY_get_id(c->key), EVP_PKEY_EC);
    assert_int_equal(EVP_PKEY_get_bits(c->key), 256);
    assert_int_equal(X509_check_private_key(c->leaf, c->key), 1);
    assert_int_equal(X509_NAME_entry_count(X509_get_subject_name(c->leaf)), 0);

    /* Random 128-bit serial: positive, at least 120 significant bits given the fixed low bit of byte 0. */
    BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(c->leaf), NULL);
    assert_non_null(bn);
    assert_false(BN_is_negative(bn));
    assert_in_range(BN_num_bits(bn), 121, 128);
    BN_free(bn);

    /* Describe: lowercase hex serial and RFC 3339 times. */
    char serial[80], from[40], to[40];
    assert_int_equal(tls_cert_describe(c, serial, sizeof(serial), from, sizeof(from), to, sizeof(to)), 0);
    assert_in_range(strlen(serial), 31, 32);
    assert_int_equal(strspn(serial, "0123456789abcdef"), strlen(serial));
    assert_int_equal(strlen(from), 20);
    assert_int_equal(from[4], '-');
    assert_int_equal(from[10], 'T');
    assert_int_equal(from[19], 'Z');
    assert_true(strcmp(from, to) < 0);
    assert_int_equal(tls_cert_describe(c, serial, 8, NULL, 0, NULL, 0), -ENOSPC);
    assert_int_equal(tls_cert_describe(c, NULL, 0, from, 10, NULL, 0), -ENOSPC);

    tls_cert_unref(c);
}

/* No provider cache (the identity manager is the one cache): every fetch mints a new leaf. */
static void test_ca_fetch_mints_anew(void **state)
{
    (void)state;
    struct tls_cert *a = fetch(ca_a, ID_SERVER);
    struct tls_cert *b = fetch(ca_a, ID_SERVER);
    assert_non_null(a);
    assert_non_null(b);
    assert_ptr_not_equal(a, b);
    assert_int_not_equal(ASN1_INTEGER_cmp(X509_get0_serialNumber(a->leaf), X509_get0_serialNumber(b->leaf)),
                         0);
    assert_string_equal(a->uri, b->uri);
    assert_int_equal(__atomic_load_n(&a->refs, __ATOMIC_RELAXED), 1);
    /* The default lifetime is 24 h, backdated by one minute. */
    assert_int_equal(a->not_after - a->not_before, CA_DEFAULT_TTL_S + 60);
    tls_cert_unref(a);
    tls_cert_unref(b);
}

/* ca_local_new_ttl mints for the requested lifetime, short ones included, and refuses 0 and > 90 days. */
static void test_ca_ttl(void **state)
{
    (void)state;
    char err[256] = "";
    assert_null(ca_local_new_ttl(dir_a, 0, err, sizeof(err)));
    assert_non_null(strstr(err, "outside the local CA's range"));
    err[0] = 0;
    assert_null(ca_local_new_ttl(dir_a, CA_MAX_TTL_S + 1, err, sizeof(err)));
    assert_non_null(strstr(err, "90 days"));
    struct cert_provider *p = ca_local_new_ttl(dir_a, 10, err, sizeof(err));
    assert_non_null(p);
    time_t before = time(NULL);
    struct tls_cert *c = fetch(p, ID_SERVER);
    time_t after = time(NULL);
    assert_non_null(c);
    assert_true(c->not_after >= before + 10 && c->not_after <= after + 10);
    assert_true(c->not_before >= before - 60 && c->not_before <= after - 60);
    /* OpenSSL agrees: the leaf expires within 10 s. */
    assert_true(X509_cmp_time(X509_get0_notAfter(c->leaf), &(time_t){after + 11}) < 0);
    assert_true(X509_cmp_time(X509_get0_notAfter(c->leaf), &(time_t){before + 9}) > 0);
    tls_cert_unref(c);
    p->destroy(p);
}

/* The local CA loads a root that is not valid now (it may be fixed by a clock or a new root) but refuses to
 * mint under it, with a message the identity manager shows as the Unavailable reason. */
static void test_ca_root_not_valid_now(void **state)
{
    (void)state;
    const long when[2][2] = {{-7200, -3600}, {3600, 7200}}; /* expired; not valid yet */
    const char *want[2] = {"has expired", "is not valid yet"};
    for (int i = 0; i < 2; i++) {
        char dir[] = "/tmp/zmesh-tls-old-XXXXXX", err[256] = "";
        assert_non_null(mkdtemp(dir));
        X509 *r = make_root_at(dir, "zmesh test root (time)", NULL, when[i][0], when[i][1]);
        assert_non_null(r);
        struct cert_provider *p = ca_local_new(dir, err, sizeof(err));
        assert_non_null(p);
        struct spiffe_id id;
        assert_int_equal(spiffe_parse(ID_SERVER, strlen(ID_SERVER), &id), 0);
        assert_null(p->fetch(p, &id, err, sizeof(err)));
        assert_non_null(strstr(err, want[i]));
        assert_non_null(strstr(err, ID_SERVER));
        p->destroy(p);
        X509_free(r);
        rm_dir(dir);
    }
}

struct fetch_arg {
    struct tls_cert *got[8];
};

static void *fetch_thread(void *p)
{
    struct fetch_arg *fa = p;
    for (int i = 0; i < 8; i++)
        fa->got[i] = fetch(ca_a, "spiffe://cluster.local/ns/threads/sa/x");
    return NULL;
}

/* Concurrent fetches share the root key without a lock: all 32 succeed and verify against the root. */
static void test_ca_threads(void **state)
{
    (void)state;
    pthread_t t[4];
    struct fetch_arg fa[4];
    EVP_PKEY *root_pub = X509_get0_pubkey(root_a);
    for (int i = 0; i < 4; i++)
        assert_int_equal(pthread_create(&t[i], NULL, fetch_thread, &fa[i]), 0);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 8; j++) {
            assert_non_null(fa[i].got[j]);
            assert_int_equal(X509_verify(fa[i].got[j]->leaf, root_pub), 1);
            if (i || j) assert_ptr_not_equal(fa[i].got[j], fa[0].got[0]);
        }
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 8; j++)
            tls_cert_unref(fa[i].got[j]);
}

/* ---- handshakes ---- */

struct hs {
    SSL *c, *s;
    bool c_ok, s_ok; /* handshake completed */
    bool c_fail, s_fail;
    char s_err[512]; /* the server's error queue when its handshake failed */
};

static void hs_step(SSL *ssl, bool *ok, bool *failed, char *err, size_t errlen)
{
    if (*ok || *failed) return;
    int r = SSL_do_handshake(ssl);
    if (r == 1) {
        *ok = true;
        return;
    }
    int e = SSL_get_error(ssl, r);
    if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
        *failed = true;
        if (err) tls_errstr(err, errlen);
    }
}

/* Runs a handshake between fresh SSLs of cctx and sctx over an in-memory BIO pair. */
static void hs_run(struct hs *h, SSL_CTX *cctx, SSL_CTX *sctx, void (*tweak)(SSL *client))
{
    BIO *bc = NULL, *bs = NULL;
    memset(h, 0, sizeof(*h));
    h->c = SSL_new(cctx);
    h->s = SSL_new(sctx);
    assert_non_null(h->c);
    assert_non_null(h->s);
    assert_int_equal(BIO_new_bio_pair(&bc, 0, &bs, 0), 1);
    SSL_set_bio(h->c, bc, bc);
    SSL_set_bio(h->s, bs, bs);
    SSL_set_connect_state(h->c);
    SSL_set_accept_state(h->s);
    if (tweak) tweak(h->c);
    for (int i = 0; i < 20; i++) {
        hs_step(h->c, &h->c_ok, &h->c_fail, NULL, 0);
        hs_step(h->s, &h->s_ok, &h->s_fail, h->s_err, sizeof(h->s_err));
        if ((h->c_ok || h->c_fail) && (h->s_ok || h->s_fail)) break;
    }
    ERR_clear_error();
}

static void hs_free(struct hs *h)
{
    SSL_free(h->c);
    SSL_free(h->s);
}

/* In TLS 1.3 the client finishes before the server has checked its certificate, so a server-side rejection
 * shows up to the client as an alert on its first read. */
static void assert_client_sees_alert(SSL *c)
{
    char buf[16];
    int r = SSL_read(c, buf, sizeof(buf));
    assert_true(r <= 0);
    assert_int_equal(SSL_get_error(c, r), SSL_ERROR_SSL);
    ERR_clear_error();
}

static void test_handshake_ok(void **state)
{
    (void)state;
    struct tls_cert *sc = fetch(ca_a, ID_SERVER), *cc = fetch(ca_a, ID_CLIENT);
    SSL_CTX *sctx = tls_server_ctx_new(sc), *cctx = tls_client_ctx_new(cc);
    assert_non_null(sctx);
    assert_non_null(cctx);
    /* Contexts hold their own references: dropping ours must not break them. */
    tls_cert_unref(sc);
    tls_cert_unref(cc);

    struct hs h;
    hs_run(&h, cctx, sctx, NULL);
    assert_true(h.c_ok);
    assert_true(h.s_ok);
    assert_int_equal(SSL_version(h.c), TLS1_3_VERSION);
    assert_string_equal(SSL_get_cipher_name(h.c), "TLS_AES_256_GCM_SHA384");
    assert_true(tls_alpn_is_h2(h.c));
    assert_true(tls_alpn_is_h2(h.s));

    char id[SPIFFE_MAX];
    assert_int_equal(tls_peer_identity(h.s, id, sizeof(id), NULL, 0), (int)strlen(ID_CLIENT));
    assert_string_equal(id, ID_CLIENT);
    assert_int_equal(tls_peer_identity(h.c, id, sizeof(id), NULL, 0), (int)strlen(ID_SERVER));
    assert_string_equal(id, ID_SERVER);
    assert_int_equal(tls_peer_identity(h.c, id, 10, NULL, 0), -ENOSPC);

    const char *good[] = {"spiffe://cluster.local/ns/default/sa/nope", ID_SERVER};
    const char *bad[] = {"spiffe://cluster.local/ns/default/sa/nope", ID_CLIENT, ID_SERVER "x"};
    assert_true(tls_peer_has_san(h.c, good, 2));
    assert_false(tls_peer_has_san(h.c, good, 1));
    assert_false(tls_peer_has_san(h.c, bad, 3));
    assert_false(tls_peer_has_san(h.c, good, 0));
    assert_true(tls_peer_has_san(h.s, (const char *const[]){ID_CLIENT}, 1));

    /* Data flows both ways, and the server issued no session ticket. */
    char buf[16] = "";
    assert_int_equal(SSL_write(h.c, "ping", 4), 4);
    assert_int_equal(SSL_read(h.s, buf, sizeof(buf)), 4);
    assert_memory_equal(buf, "ping", 4);
    assert_int_equal(SSL_write(h.s, "pong", 4), 4);
    assert_int_equal(SSL_read(h.c, buf, sizeof(buf)), 4);
    assert_memory_equal(buf, "pong", 4);
    assert_int_equal(SSL_SESSION_is_resumable(SSL_get0_session(h.c)), 0);

    hs_free(&h);
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
}

static void test_server_rejects_other_trust_domain(void **state)
{
    (void)state;
    struct tls_cert *sc = fetch(ca_a, ID_SERVER), *cc = fetch(ca_a, ID_FOREIGN);
    SSL_CTX *sctx = tls_server_ctx_new(sc), *cctx = tls_client_ctx_new(cc);
    struct hs h;
    hs_run(&h, cctx, sctx, NULL);
    assert_true(h.s_fail);
    assert_false(h.s_ok);
    assert_int_equal(SSL_get_verify_result(h.s), X509_V_ERR_APPLICATION_VERIFICATION);
    assert_client_sees_alert(h.c);
    hs_free(&h);
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
    tls_cert_unref(sc);
    tls_cert_unref(cc);
}

static void test_server_rejects_other_root(void **state)
{
    (void)state;
    struct tls_cert *sc = fetch(ca_a, ID_SERVER), *cc = fetch(ca_b, ID_CLIENT);
    SSL_CTX *sctx = tls_server_ctx_new(sc), *cctx = tls_client_ctx_new(cc);
    /* Let the client trust root A so that only the server's check can fail. */
    X509_STORE *st = X509_STORE_new();
    X509_STORE_add_cert(st, root_a);
    SSL_CTX_set_cert_store(cctx, st);
    struct hs h;
    hs_run(&h, cctx, sctx, NULL);
    assert_true(h.c_ok);
    assert_true(h.s_fail);
    assert_int_not_equal(SSL_get_verify_result(h.s), X509_V_OK);
    assert_client_sees_alert(h.c);
    hs_free(&h);
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
    tls_cert_unref(sc);
    tls_cert_unref(cc);
}

static void test_client_rejects_other_root(void **state)
{
    (void)state;
    struct tls_cert *sc = fetch(ca_b, ID_SERVER), *cc = fetch(ca_a, ID_CLIENT);
    SSL_CTX *sctx = tls_server_ctx_new(sc), *cctx = tls_client_ctx_new(cc);
    struct hs h;
    hs_run(&h, cctx, sctx, NULL);
    assert_true(h.c_fail);
    assert_false(h.s_ok);
    assert_int_not_equal(SSL_get_verify_result(h.c), X509_V_OK);
    hs_free(&h);
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
    tls_cert_unref(sc);
    tls_cert_unref(cc);
}

static SSL_CTX *plain_client_ctx(int max_version, struct tls_cert *with_cert)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    assert_non_null(ctx);
    SSL_CTX_set_max_proto_version(ctx, max_version);
    SSL_CTX_set_alpn_protos(ctx, (const unsigned char *)"\x02h2", 3);
    X509_STORE_add_cert(SSL_CTX_get_cert_store(ctx), root_a);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (with_cert) {
        assert_int_equal(SSL_CTX_use_certificate(ctx, with_cert->leaf), 1);
        assert_int_equal(SSL_CTX_use_PrivateKey(ctx, with_cert->key), 1);
    }
    return ctx;
}

static void test_server_requires_client_cert(void **state)
{
    (void)state;
    struct tls_cert *sc = fetch(ca_a, ID_SERVER);
    SSL_CTX *sctx = tls_server_ctx_new(sc), *cctx = plain_client_ctx(TLS1_3_VERSION, NULL);
    struct hs h;
    hs_run(&h, cctx, sctx, NULL);
    assert_true(h.c_ok);
    assert_true(h.s_fail);
    assert_null(SSL_get0_peer_certificate(h.s));
    assert_client_sees_alert(h.c);

    /* The same plain client with a valid certificate succeeds, so the failure above is about the cert. */
    struct tls_cert *cc = fetch(ca_a, ID_CLIENT);
    SSL_CTX *cctx2 = plain_client_ctx(TLS1_3_VERSION, cc);
    struct hs h2;
    hs_run(&h2, cctx2, sctx, NULL);
    assert_true(h2.c_ok);
    assert_true(h2.s_ok);

    hs_free(&h);
    hs_free(&h2);
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
    SSL_CTX_free(cctx2);
    tls_cert_unref(sc);
    tls_cert_unref(cc);
}

static void test_server_rejects_tls12(void **state)
{
    (void)state;
    struct tls_cert *sc = fetch(ca_a, ID_SERVER), *cc = fetch(ca_a, ID_CLIENT);
    SSL_CTX *sctx = tls_server_ctx_new(sc), *cctx = plain_client_ctx(TLS1_2_VERSION, cc);
    struct hs h;
    hs_run(&h, cctx, sctx, NULL);
    assert_true(h.s_fail);
    assert_true(h.c_fail);
    hs_free(&h);
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
    tls_cert_unref(sc);
    tls_cert_unref(cc);
}

static void alpn_http11(SSL *c)
{
    SSL_set_alpn_protos(c, (const unsigned char *)"\x08http/1.1", 9);
}

static void alpn_none(SSL *c)
{
    SSL_set_alpn_protos(c, NULL, 0);
}

static void alpn_h2_among_others(SSL *c)
{
    SSL_set_alpn_protos(c, (const unsigned char *)"\x08http/1.1\x02h2", 12);
}

static void test_server_alpn(void **state)
{
    (void)state;
    struct tls_cert *sc = fetch(ca_a, ID_SERVER), *cc = fetch(ca_a, ID_CLIENT);
    SSL_CTX *sctx = tls_server_ctx_new(sc), *cctx = tls_client_ctx_new(cc);
    struct hs h;

    hs_run(&h, cctx, sctx, alpn_http11);
    assert_true(h.s_fail);
    assert_true(h.c_fail);
    hs_free(&h);

    hs_run(&h, cctx, sctx, alpn_none);
    assert_true(h.s_fail);
    assert_true(h.c_fail);
    hs_free(&h);

    hs_run(&h, cctx, sctx, alpn_h2_among_others);
    assert_true(h.s_ok);
    assert_true(tls_alpn_is_h2(h.s));
    hs_free(&h);

    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
    tls_cert_unref(sc);
    tls_cert_unref(cc);
}

/* ---- strict identities: certificates minted here with chosen SANs and basicConstraints ---- */

#define ID_ADMIN "spiffe://cluster.local/ns/kube-system/sa/admin"
#define ID_EVIL "spiffe://evil.example/ns/kube-system/sa/admin"
#define LEAF_VALIDITY_S 3600

/* A leaf signed by root A: EC P-256, EKU serverAuth+clientAuth, the subjectAltName san in OpenSSL's config
 * syntax ("URI:a,DNS:b"; NULL for none), basicConstraints CA:TRUE when ca. *keyp receives its key. */
static X509 *mint_leaf(const char *san, bool ca, EVP_PKEY **keyp)
{
    EVP_PKEY *k = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    assert_non_null(k);
    assert_non_null(x);
    X509_set_version(x, X509_VERSION_3);
    ASN1_INTEGER_set(X509_get_serialNumber(x), (long)(random() & 0x7fffffff) + 1);
    X509_set_issuer_name(x, X509_get_subject_name(root_a));
    X509_gmtime_adj(X509_getm_notBefore(x), -60);
    X509_gmtime_adj(X509_getm_notAfter(x), LEAF_VALIDITY_S);
    X509_set_pubkey(x, k);
    assert_int_equal(add_ext(x, root_a, NID_basic_constraints, ca ? "critical,CA:TRUE" : "critical,CA:FALSE"),
                     0);
    assert_int_equal(add_ext(x, root_a, NID_key_usage,
                             ca ? "critical,digitalSignature,keyCertSign" : "critical,digitalSignature"),
                     0);
    assert_int_equal(add_ext(x, root_a, NID_ext_key_usage, "serverAuth,clientAuth"), 0);
    if (san) assert_int_equal(add_ext(x, root_a, NID_subject_alt_name, san), 0);
    assert_true(X509_sign(x, root_a_key, EVP_sha256()) > 0);
    *keyp = k;
    return x;
}

/* The certificate kinds under test. "%s" in san stands for the identity the other side expects. */
struct leaf_case {
    const char *name;
    const char *san;
    bool ca;
    bool accepted;
    const char *why; /* expected in the refusal reason */
};

static const struct leaf_case leaf_cases[] = {
    {"one good URI SAN", "URI:%s", false, true, NULL},
    {"DNS SAN beside the good URI SAN", "DNS:client.example,URI:%s,DNS:x.example", false, true, NULL},
    {"foreign trust domain first, good second", "URI:" ID_EVIL ",URI:%s", false, false, "2 URI SANs"},
    {"good first, foreign trust domain second", "URI:%s,URI:" ID_EVIL, false, false, "2 URI SANs"},
    {"another identity of the trust domain first", "URI:" ID_ADMIN ",URI:%s", false, false, "2 URI SANs"},
    {"another identity of the trust domain second", "URI:%s,URI:" ID_ADMIN, false, false, "2 URI SANs"},
    {"non-SPIFFE URI beside the good one", "URI:https://example.com/x,URI:%s", false, false, "2 URI SANs"},
    {"foreign trust domain only", "URI:" ID_EVIL, false, false, "outside trust domain cluster.local"},
    {"no subjectAltName", NULL, false, false, "no subjectAltName"},
    {"DNS SAN only", "DNS:client.example", false, false, "0 URI SANs"},
    {"non-SPIFFE URI only", "URI:https://example.com/x", false, false, "not a SPIFFE id"},
    {"SPIFFE URI of the wrong shape", "URI:spiffe://cluster.local/ns/default", false, false,
     "not a SPIFFE id"},
    {"CA:TRUE leaf with the good URI SAN", "URI:%s", true, false, "CA:TRUE"},
};

#define N_LEAF_CASES (sizeof(leaf_cases) / sizeof(leaf_cases[0]))

static X509 *mint_case(const struct leaf_case *lc, const char *good, EVP_PKEY **keyp)
{
    char san[512];
    if (!lc->san) return mint_leaf(NULL, lc->ca, keyp);
    snprintf(san, sizeof(san), lc->san, good);
    return mint_leaf(san, lc->ca, keyp);
}

static void test_leaf_identity_rules(void **state)
{
    (void)state;
    char id[SPIFFE_MAX], why[256];
    for (size_t i = 0; i < N_LEAF_CASES; i++) {
        const struct leaf_case *lc = &leaf_cases[i];
        EVP_PKEY *k = NULL;
        X509 *x = mint_case(lc, ID_CLIENT, &k);
        int rc = tls_leaf_identity(x, "cluster.local", id, sizeof(id), why, sizeof(why));
        if (lc->accepted) {
            if (rc != (int)strlen(ID_CLIENT)) fail_msg("%s: refused: %s", lc->name, why);
            assert_string_equal(id, ID_CLIENT);
        } else {
            if (rc != -EINVAL) fail_msg("%s: rc %d (id \"%s\")", lc->name, rc, id);
            assert_string_equal(id, "");
            if (!strstr(why, lc->why)) fail_msg("%s: reason \"%s\" lacks \"%s\"", lc->name, why, lc->why);
        }
        X509_free(x);
        EVP_PKEY_free(k);
    }
    /* Arguments: no certificate, no trust domain, a buffer too small, a NULL buffer or reason. */
    assert_int_equal(tls_leaf_identity(NULL, "cluster.local", id, sizeof(id), why, sizeof(why)), -ENOENT);
    EVP_PKEY *k = NULL;
    X509 *x = mint_leaf("URI:" ID_CLIENT, false, &k);
    assert_int_equal(tls_leaf_identity(x, NULL, id, sizeof(id), why, sizeof(why)), -EINVAL);
    assert_int_equal(tls_leaf_identity(x, "", id, sizeof(id), NULL, 0), -EINVAL);
    assert_int_equal(tls_leaf_identity(x, "cluster.local", id, 10, why, sizeof(why)), -ENOSPC);
    assert_int_equal(tls_leaf_identity(x, "cluster.local", NULL, 0, NULL, 0), (int)strlen(ID_CLIENT));
    assert_int_equal(tls_leaf_identity(x, "other.domain", NULL, 0, why, sizeof(why)), -EINVAL);
    X509_free(x);
    EVP_PKEY_free(k);
}

/* Server role: a zmesh server and a plain OpenSSL client presenting each kind of leaf. */
static void test_server_identity_strict(void **state)
{
    (void)state;
    struct tls_cert *sc = fetch(ca_a, ID_SERVER);
    SSL_CTX *sctx = tls_server_ctx_new(sc);
    assert_non_null(sctx);
    for (size_t i = 0; i < N_LEAF_CASES; i++) {
        const struct leaf_case *lc = &leaf_cases[i];
        struct tls_cert leaf = {0};
        leaf.leaf = mint_case(lc, ID_CLIENT, &leaf.key);
        SSL_CTX *cctx = plain_client_ctx(TLS1_3_VERSION, &leaf);
        struct hs h;
        hs_run(&h, cctx, sctx, NULL);
        char id[SPIFFE_MAX];
        if (lc->accepted) {
            if (!h.s_ok) fail_msg("%s: server refused: %s", lc->name, h.s_err);
            assert_int_equal(tls_peer_identity(h.s, id, sizeof(id), NULL, 0), (int)strlen(ID_CLIENT));
            assert_string_equal(id, ID_CLIENT);
            assert_true(tls_peer_has_san(h.s, (const char *const[]){ID_CLIENT}, 1));
        } else {
            if (!h.s_fail) fail_msg("%s: server accepted the client", lc->name);
            assert_int_equal(SSL_get_verify_result(h.s), X509_V_ERR_APPLICATION_VERIFICATION);
            /* The reason reaches the error queue, so the handshake failure in the log says it. */
            if (!strstr(h.s_err, lc->why))
                fail_msg("%s: error \"%s\" lacks \"%s\"", lc->name, h.s_err, lc->why);
            assert_true(tls_peer_identity(h.s, id, sizeof(id), NULL, 0) < 0);
            assert_false(tls_peer_has_san(h.s, (const char *const[]){ID_CLIENT, ID_ADMIN, ID_EVIL}, 3));
            assert_client_sees_alert(h.c);
        }
        hs_free(&h);
        SSL_CTX_free(cctx);
        X509_free(leaf.leaf);
        EVP_PKEY_free(leaf.key);
    }
    SSL_CTX_free(sctx);
    tls_cert_unref(sc);
}

static int alpn_h2_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                      unsigned int inlen, void *arg)
{
    (void)ssl, (void)arg;
    unsigned char *sel = NULL;
    if (SSL_select_next_proto(&sel, outlen, (const unsigned char *)"\x02h2", 3, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

/* Client role: a zmesh client and a plain OpenSSL server presenting each kind of leaf. The chain verifies
 * (root A), so only the identity check can refuse it; the expected list holds every id the leaf names. */
static void test_client_identity_strict(void **state)
{
    (void)state;
    struct tls_cert *cc = fetch(ca_a, ID_CLIENT);
    SSL_CTX *cctx = tls_client_ctx_new(cc);
    assert_non_null(cctx);
    for (size_t i = 0; i < N_LEAF_CASES; i++) {
        const struct leaf_case *lc = &leaf_cases[i];
        EVP_PKEY *k = NULL;
        X509 *x = mint_case(lc, ID_SERVER, &k);
        SSL_CTX *sctx = SSL_CTX_new(TLS_server_method());
        assert_non_null(sctx);
        SSL_CTX_set_min_proto_version(sctx, TLS1_3_VERSION);
        assert_int_equal(SSL_CTX_use_certificate(sctx, x), 1);
        assert_int_equal(SSL_CTX_use_PrivateKey(sctx, k), 1);
        SSL_CTX_set_alpn_select_cb(sctx, alpn_h2_cb, NULL);
        struct hs h;
        hs_run(&h, cctx, sctx, NULL);
        if (!h.c_ok || !h.s_ok) fail_msg("%s: handshake failed (server: %s)", lc->name, h.s_err);
        const char *expected[] = {ID_SERVER, ID_ADMIN, ID_EVIL};
        char id[SPIFFE_MAX];
        if (lc->accepted) {
            assert_true(tls_peer_has_san(h.c, expected, 3));
            assert_true(tls_peer_has_san(h.c, expected, 1));
            assert_int_equal(tls_peer_identity(h.c, id, sizeof(id), NULL, 0), (int)strlen(ID_SERVER));
            assert_string_equal(id, ID_SERVER);
        } else {
            if (tls_peer_has_san(h.c, expected, 3)) fail_msg("%s: client accepted the server", lc->name);
            char why[256];
            assert_int_equal(tls_peer_identity(h.c, id, sizeof(id), why, sizeof(why)), -EINVAL);
            assert_string_equal(id, "");
            /* The reason a refused server's certificate gets in the client's log line. */
            if (!why[0]) fail_msg("%s: no reason for the refusal", lc->name);
        }
        hs_free(&h);
        SSL_CTX_free(sctx);
        X509_free(x);
        EVP_PKEY_free(k);
    }
    SSL_CTX_free(cctx);
    tls_cert_unref(cc);
}

/* DNS SANs (zmeshd's own certificate: istiod.istio-system.svc, zmeshd.istio-system.svc): exact names,
 * ASCII case-insensitive, no wildcard expansion, never a CA leaf; and the same over a real handshake, where
 * the chain must also verify. */
static void test_dns_san(void **state)
{
    (void)state;
    const char *names[] = {"zmeshd.istio-system.svc", "other.example"};
    static const struct {
        const char *san;
        bool ca, accepted;
    } cases[] = {
        {"DNS:istiod.istio-system.svc,DNS:zmeshd.istio-system.svc", false, true},
        {"URI:" ID_SERVER ",DNS:ZMESHD.Istio-System.svc", false, true},
        {"DNS:istiod.istio-system.svc", false, false},
        {"DNS:*.istio-system.svc", false, false},
        {"DNS:zmeshd.istio-system.svc.evil", false, false},
        {"DNS:zmeshd.istio-system", false, false},
        {"URI:spiffe://cluster.local/ns/istio-system/sa/zmeshd.istio-system.svc", false, false},
        {NULL, false, false},
        {"DNS:zmeshd.istio-system.svc", true, false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        EVP_PKEY *k = NULL;
        X509 *x = mint_leaf(cases[i].san, cases[i].ca, &k);
        if (tls_leaf_has_dns_san(x, names, 2) != cases[i].accepted)
            fail_msg("%s (ca %d): expected %s", cases[i].san ? cases[i].san : "no SAN", cases[i].ca,
                     cases[i].accepted ? "accepted" : "refused");
        assert_false(tls_leaf_has_dns_san(x, names, 0));
        X509_free(x);
        EVP_PKEY_free(k);
    }
    assert_false(tls_leaf_has_dns_san(NULL, names, 2));

    /* Over a handshake: the client's view of a server leaf signed by the client's root, then by another. */
    struct tls_cert *cc = fetch(ca_a, ID_CLIENT);
    SSL_CTX *cctx = tls_client_ctx_new(cc);
    assert_non_null(cctx);
    EVP_PKEY *k = NULL;
    X509 *x = mint_leaf("DNS:zmeshd.istio-system.svc", false, &k);
    SSL_CTX *sctx = SSL_CTX_new(TLS_server_method());
    assert_non_null(sctx);
    SSL_CTX_set_min_proto_version(sctx, TLS1_3_VERSION);
    assert_int_equal(SSL_CTX_use_certificate(sctx, x), 1);
    assert_int_equal(SSL_CTX_use_PrivateKey(sctx, k), 1);
    SSL_CTX_set_alpn_select_cb(sctx, alpn_h2_cb, NULL);
    struct hs h;
    hs_run(&h, cctx, sctx, NULL);
    assert_true(h.c_ok && h.s_ok);
    assert_true(tls_peer_has_dns_san(h.c, names, 2));
    assert_false(tls_peer_has_dns_san(h.c, names + 1, 1));
    assert_false(tls_peer_has_san(h.c, names, 2)); /* not a SPIFFE identity */
    hs_free(&h);
    SSL_CTX_free(sctx);
    X509_free(x);
    EVP_PKEY_free(k);
    assert_false(tls_peer_has_dns_san(NULL, names, 2));
    SSL_CTX_free(cctx);
    tls_cert_unref(cc);
}

static void test_errstr(void **state)
{
    (void)state;
    char buf[256];
    ERR_clear_error();
    assert_string_equal(tls_errstr(buf, sizeof(buf)), "no OpenSSL error");
    /* Provoke an error: a context for an incomplete certificate. */
    struct tls_cert empty;
    memset(&empty, 0, sizeof(empty));
    assert_null(tls_client_ctx_new(&empty));
    assert_null(tls_server_ctx_new(&empty));
    tls_errstr(buf, sizeof(buf));
    assert_string_not_equal(buf, "no OpenSSL error");
    assert_non_null(strstr(buf, "incomplete tls_cert"));
    assert_int_equal(ERR_peek_error(), 0); /* queue cleared */
    /* Truncation keeps a NUL inside the buffer. */
    assert_null(tls_client_ctx_new(&empty));
    tls_errstr(buf, 8);
    assert_int_equal(strlen(buf), 7);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ca_load_errors),
        cmocka_unit_test(test_ca_mint),
        cmocka_unit_test(test_ca_fetch_mints_anew),
        cmocka_unit_test(test_ca_ttl),
        cmocka_unit_test(test_ca_root_not_valid_now),
        cmocka_unit_test(test_ca_threads),
        cmocka_unit_test(test_handshake_ok),
        cmocka_unit_test(test_server_rejects_other_trust_domain),
        cmocka_unit_test(test_server_rejects_other_root),
        cmocka_unit_test(test_client_rejects_other_root),
        cmocka_unit_test(test_server_requires_client_cert),
        cmocka_unit_test(test_server_rejects_tls12),
        cmocka_unit_test(test_server_alpn),
        cmocka_unit_test(test_leaf_identity_rules),
        cmocka_unit_test(test_server_identity_strict),
        cmocka_unit_test(test_client_identity_strict),
        cmocka_unit_test(test_dns_san),
        cmocka_unit_test(test_errstr),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
