/* Unit tests for zmeshd's CA core: key material (src/tls/issuer.c: self-signed state directory, Istio's
 * plug-in layout), CSR signing, bearer tokens (src/tls/token.c) and the authorization of a request. CSRs,
 * intermediates and hostile tokens are made here with the OpenSSL API and libjwt; returned chains are checked
 * with X509_verify_cert, and tests/unit/ca_peer.py checks a token and chains with PyJWT and Python's
 * cryptography, code zmesh did not write. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include <jwt.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509v3.h>

#include "tls/ca.h"
#include "tls/csr.h"
#include "tls/issuer.h"
#include "tls/spiffe.h"
#include "tls/tls.h"
#include "tls/token.h"

#define TD "cluster.local"
#define ID_WANTED "spiffe://cluster.local/ns/shop/sa/cart"
#define ID_EVIL "spiffe://cluster.local/ns/istio-system/sa/admin"
#define HOUR 3600L
#define DAY (24 * HOUR)

static char tmp[64]; /* one scratch directory per run, removed at the end */

static void path_of(char *buf, size_t n, const char *sub, const char *file)
{
    snprintf(buf, n, "%s/%s%s%s", tmp, sub, file ? "/" : "", file ? file : "");
}

static int group_setup(void **state)
{
    snprintf(tmp, sizeof(tmp), "/tmp/zmesh-issuer-XXXXXX");
    return mkdtemp(tmp) ? 0 : -1;
}

static int group_teardown(void **state)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmp);
    return system(cmd) == 0 ? 0 : -1;
}

/* ---- helpers: keys, certificates, CSRs ---- */

static EVP_PKEY *ec_key(void)
{
    EVP_PKEY *k = EVP_EC_gen("P-256");
    assert_non_null(k);
    return k;
}

static EVP_PKEY *rsa_key(unsigned bits)
{
    EVP_PKEY *k = EVP_RSA_gen(bits);
    assert_non_null(k);
    return k;
}

static void add_ext(X509 *x, X509 *issuer, int nid, const char *v)
{
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, issuer, x, NULL, NULL, 0);
    X509_EXTENSION *e = X509V3_EXT_nconf_nid(NULL, &ctx, nid, v);
    assert_non_null(e);
    assert_int_equal(X509_add_ext(x, e, -1), 1);
    X509_EXTENSION_free(e);
}

/* A CA certificate (an intermediate when issuer != NULL) with subject CN=cn, valid [now-60, now+ttl). */
static X509 *make_ca(const char *cn, EVP_PKEY *key, X509 *issuer, EVP_PKEY *issuer_key, long ttl, int is_ca)
{
    X509 *x = X509_new();
    time_t now = time(NULL);
    assert_int_equal(X509_set_version(x, X509_VERSION_3), 1);
    static long serial = 1000; /* distinct serials, so no two test certificates look alike to a verifier */
    ASN1_INTEGER_set(X509_get_serialNumber(x), serial++);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1,
                               -1, 0);
    X509_set_issuer_name(x, X509_get_subject_name(issuer ? issuer : x));
    ASN1_TIME_set(X509_getm_notBefore(x), now - 60);
    ASN1_TIME_set(X509_getm_notAfter(x), now + ttl);
    X509_set_pubkey(x, key);
    add_ext(x, issuer ? issuer : x, NID_basic_constraints, is_ca ? "critical,CA:TRUE" : "critical,CA:FALSE");
    add_ext(x, issuer ? issuer : x, NID_key_usage,
            is_ca ? "critical,keyCertSign,cRLSign" : "digitalSignature");
    add_ext(x, issuer ? issuer : x, NID_subject_key_identifier, "hash");
    if (issuer) add_ext(x, issuer, NID_authority_key_identifier, "keyid");
    assert_true(X509_sign(x, issuer_key ? issuer_key : key, EVP_sha256()) > 0);
    return x;
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void write_pem(const char *dir, const char *name, X509 *a, X509 *b, EVP_PKEY *k)
{
    char p[256];
    snprintf(p, sizeof(p), "%s/%s", dir, name);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    if (a) assert_int_equal(PEM_write_X509(f, a), 1);
    if (b) assert_int_equal(PEM_write_X509(f, b), 1);
    if (k) assert_int_equal(PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL), 1);
    fclose(f);
    if (k) assert_int_equal(chmod(p, 0600), 0);
}

enum csr_flaw { CSR_OK, CSR_BAD_SIGNATURE, CSR_FORGED };

/* A PEM CSR for key asking for subject CN=admin and the URI SAN ID_EVIL (which the CA must ignore). flaw
 * flips a bit of the signature, or signs with another key than the one certified. Caller frees. */
static char *make_csr(EVP_PKEY *key, enum csr_flaw flaw)
{
    X509_REQ *r = X509_REQ_new();
    EVP_PKEY *other = NULL;
    X509_REQ_set_version(r, 0);
    X509_REQ_set_pubkey(r, key);
    X509_NAME_add_entry_by_txt(X509_REQ_get_subject_name(r), "CN", MBSTRING_UTF8,
                               (const unsigned char *)"admin", -1, -1, 0);
    STACK_OF(X509_EXTENSION) *exts = sk_X509_EXTENSION_new_null();
    X509_EXTENSION *san =
        X509V3_EXT_conf_nid(NULL, NULL, NID_subject_alt_name, "URI:" ID_EVIL ",DNS:evil.example");
    assert_non_null(san);
    sk_X509_EXTENSION_push(exts, san);
    X509_REQ_add_extensions(r, exts);
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    if (flaw == CSR_FORGED) other = ec_key();
    EVP_PKEY *signer = other ? other : key;
    int id = EVP_PKEY_get_base_id(signer);
    assert_true(X509_REQ_sign(r, signer, id == EVP_PKEY_ED25519 ? NULL : EVP_sha256()) > 0);

    unsigned char *der = NULL;
    int n = i2d_X509_REQ(r, &der);
    assert_true(n > 0);
    /* The signature is the last field of the DER: flipping its last bit keeps the encoding valid. */
    if (flaw == CSR_BAD_SIGNATURE) der[n - 1] ^= 0x01;
    BIO *b = BIO_new(BIO_s_mem());
    assert_true(PEM_write_bio(b, "CERTIFICATE REQUEST", "", der, n) > 0);
    char *data;
    long len = BIO_get_mem_data(b, &data);
    char *out = strndup(data, (size_t)len);
    BIO_free(b);
    OPENSSL_free(der);
    EVP_PKEY_free(other);
    X509_REQ_free(r);
    return out;
}

/* Parses every certificate of a PEM string (appending to sk). */
static void pem_certs(const char *pem, STACK_OF(X509) * sk)
{
    BIO *b = BIO_new_mem_buf(pem, -1);
    X509 *x;
    while ((x = PEM_read_bio_X509(b, NULL, NULL, NULL)))
        sk_X509_push(sk, x);
    ERR_clear_error();
    BIO_free(b);
}

static X509 *pem_cert(const char *pem)
{
    BIO *b = BIO_new_mem_buf(pem, -1);
    X509 *x = PEM_read_bio_X509(b, NULL, NULL, NULL);
    BIO_free(b);
    assert_non_null(x);
    return x;
}

/* X509_verify_cert of chain->pem[0] with the middle elements untrusted and the last element as the trust
 * anchors, for clientAuth and serverAuth. Returns the verify error (X509_V_OK = 0). */
static int verify_chain(const struct ca_chain *c)
{
    STACK_OF(X509) *mid = sk_X509_new_null(), *roots = sk_X509_new_null();
    X509_STORE *store = X509_STORE_new();
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    X509 *leaf = pem_cert(c->pem[0]);
    int err = -1;

    for (size_t i = 1; i + 1 < c->n; i++)
        pem_certs(c->pem[i], mid);
    pem_certs(c->pem[c->n - 1], roots);
    assert_true(sk_X509_num(roots) >= 1);
    for (int i = 0; i < sk_X509_num(roots); i++)
        X509_STORE_add_cert(store, sk_X509_value(roots, i));
    for (int purpose = X509_PURPOSE_SSL_CLIENT; purpose <= X509_PURPOSE_SSL_SERVER; purpose++) {
        X509_STORE_CTX_init(ctx, store, leaf, mid);
        X509_STORE_CTX_set_purpose(ctx, purpose);
        err = X509_verify_cert(ctx) == 1 ? X509_V_OK : X509_STORE_CTX_get_error(ctx);
        X509_STORE_CTX_cleanup(ctx);
        if (err != X509_V_OK) break;
    }
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(store);
    X509_free(leaf);
    sk_X509_pop_free(mid, X509_free);
    sk_X509_pop_free(roots, X509_free);
    return err;
}

static struct spiffe_id wanted_id(void)
{
    struct spiffe_id id;
    assert_int_equal(spiffe_parse(ID_WANTED, strlen(ID_WANTED), &id), 0);
    return id;
}

/* Signs a fresh P-256 CSR with iss for ID_WANTED; returns the call's result, *out filled on success. */
static int sign(struct ca_issuer *iss, int64_t ttl, struct ca_chain *out, char *err, size_t errlen)
{
    EVP_PKEY *k = ec_key();
    char *csr = make_csr(k, CSR_OK);
    struct spiffe_id id = wanted_id();
    int rc = ca_issuer_sign_csr(iss, csr, strlen(csr), &id, ttl, out, err, errlen);
    free(csr);
    EVP_PKEY_free(k);
    return rc;
}

static time_t leaf_not_after(const struct ca_chain *c)
{
    X509 *x = pem_cert(c->pem[0]);
    struct tm tm;
    assert_int_equal(ASN1_TIME_to_tm(X509_get0_notAfter(x), &tm), 1);
    X509_free(x);
    return timegm(&tm);
}

static char *read_all(const char *path)
{
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    static char buf[65536];
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    buf[n] = '\0';
    fclose(f);
    return strdup(buf);
}

/* ---- key material ---- */

/* A state directory gets a root on first start (key 0600) and the same root afterwards; a half-present state
 * is refused with the missing file named, never replaced. */
static void test_state_created_then_reused(void **state)
{
    char dir[128], p[192], err[512];
    struct ca_issuer *a = NULL, *b = NULL;
    struct stat st;

    path_of(dir, sizeof(dir), "state", NULL);
    assert_int_equal(ca_issuer_open_state(dir, TD, &a, err, sizeof(err)), 0);
    snprintf(p, sizeof(p), "%s/ca-key.pem", dir);
    assert_int_equal(stat(p, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(stat(dir, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    char *root_a = strdup(ca_issuer_root_pem(a));
    X509 *r = pem_cert(root_a);
    /* Named after the trust domain, as istiod names its self-signed root. */
    char subj[256];
    X509_NAME_oneline(X509_get_subject_name(r), subj, sizeof(subj));
    assert_string_equal(subj, "/O=" TD);
    assert_int_equal(X509_check_ca(r) != 0, 1);
    X509_free(r);

    struct ca_chain c;
    assert_int_equal(sign(a, 0, &c, err, sizeof(err)), 0);
    assert_int_equal(c.n, 2); /* leaf, root */
    assert_string_equal(c.pem[1], root_a);
    assert_int_equal(verify_chain(&c), X509_V_OK);
    ca_chain_free(&c);
    ca_issuer_free(a);

    assert_int_equal(ca_issuer_open_state(dir, TD, &b, err, sizeof(err)), 0);
    assert_string_equal(ca_issuer_root_pem(b), root_a); /* reused, not regenerated */
    ca_issuer_free(b);

    snprintf(p, sizeof(p), "%s/ca-cert.pem", dir);
    assert_int_equal(unlink(p), 0);
    assert_int_equal(ca_issuer_open_state(dir, TD, &b, err, sizeof(err)), -ENOENT);
    assert_null(b);
    assert_non_null(strstr(err, "ca-cert.pem: missing"));
    snprintf(p, sizeof(p), "%s/ca-key.pem", dir);
    assert_int_equal(access(p, F_OK), 0); /* the key was not touched */
    free(root_a);
}

/* A plug-in directory in Istio's layout, made here: root (EC) -> intermediate (RSA, the signing CA). */
struct plugin {
    char dir[128];
    X509 *root, *inter;
    EVP_PKEY *root_key, *inter_key;
};

static void make_plugin(struct plugin *pl, const char *name, long inter_ttl)
{
    path_of(pl->dir, sizeof(pl->dir), name, NULL);
    assert_int_equal(mkdir(pl->dir, 0700), 0);
    pl->root_key = ec_key();
    pl->root = make_ca("zmesh test root", pl->root_key, NULL, NULL, 10 * DAY * 365, 1);
    pl->inter_key = rsa_key(2048);
    pl->inter = make_ca("zmesh test intermediate", pl->inter_key, pl->root, pl->root_key, inter_ttl, 1);
    write_pem(pl->dir, "ca-cert.pem", pl->inter, NULL, NULL);
    write_pem(pl->dir, "ca-key.pem", NULL, NULL, pl->inter_key);
    /* As istio/istio tools/certs/Makefile.selfsigned.mk: cert-chain.pem = ca-cert.pem + root-cert.pem. */
    write_pem(pl->dir, "cert-chain.pem", pl->inter, pl->root, NULL);
    write_pem(pl->dir, "root-cert.pem", pl->root, NULL, NULL);
}

static void free_plugin(struct plugin *pl)
{
    X509_free(pl->root);
    X509_free(pl->inter);
    EVP_PKEY_free(pl->root_key);
    EVP_PKEY_free(pl->inter_key);
}

/* The plug-in layout loads, signs with the intermediate, and answers leaf, chain file, root file: the
 * returned chain verifies against the root for both TLS purposes. */
static void test_plugin_loads_and_chains(void **state)
{
    struct plugin pl;
    struct ca_issuer *iss = NULL;
    struct ca_chain c;
    char err[512];

    make_plugin(&pl, "plugin", 365 * DAY);
    assert_int_equal(ca_issuer_load_plugin(pl.dir, &iss, err, sizeof(err)), 0);
    assert_int_equal(sign(iss, 3600, &c, err, sizeof(err)), 0);
    assert_int_equal(c.n, 4); /* leaf, intermediate, root (both from cert-chain.pem), root-cert.pem */
    X509 *leaf = pem_cert(c.pem[0]), *mid = pem_cert(c.pem[1]), *top = pem_cert(c.pem[2]);
    assert_int_equal(X509_cmp(mid, pl.inter), 0);
    assert_int_equal(X509_cmp(top, pl.root), 0);
    assert_int_equal(X509_check_issued(pl.inter, leaf), X509_V_OK);
    assert_string_equal(c.pem[3], ca_issuer_root_pem(iss));
    assert_int_equal(verify_chain(&c), X509_V_OK);
    /* The leaf alone, with the root as anchor but no intermediate, does not verify: the order matters. */
    struct ca_chain short_chain = {.pem = (char *[]){c.pem[0], c.pem[3]}, .n = 2};
    assert_int_not_equal(verify_chain(&short_chain), X509_V_OK);
    X509_free(leaf);
    X509_free(mid);
    X509_free(top);
    ca_chain_free(&c);
    ca_issuer_free(iss);
    free_plugin(&pl);
}

/* Each broken plug-in directory is refused with the file and the reason. */
static void test_plugin_errors(void **state)
{
    struct plugin pl;
    struct ca_issuer *iss = NULL;
    char err[512], p[256];

    make_plugin(&pl, "plugin-bad", 365 * DAY);
    snprintf(p, sizeof(p), "%s/cert-chain.pem", pl.dir);
    assert_int_equal(unlink(p), 0);
    assert_int_equal(ca_issuer_load_plugin(pl.dir, &iss, err, sizeof(err)), -ENOENT);
    assert_null(iss);
    assert_non_null(strstr(err, "cert-chain.pem: No such file"));
    write_pem(pl.dir, "cert-chain.pem", pl.inter, pl.root, NULL);

    /* A key that is not the intermediate's. */
    EVP_PKEY *stranger = ec_key();
    write_pem(pl.dir, "ca-key.pem", NULL, NULL, stranger);
    assert_int_equal(ca_issuer_load_plugin(pl.dir, &iss, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "ca-key.pem: key does not match ca-cert.pem"));
    write_pem(pl.dir, "ca-key.pem", NULL, NULL, pl.inter_key);

    /* A root the intermediate does not chain to. */
    X509 *other_root = make_ca("another root", stranger, NULL, NULL, DAY, 1);
    write_pem(pl.dir, "root-cert.pem", other_root, NULL, NULL);
    write_pem(pl.dir, "cert-chain.pem", pl.inter, NULL, NULL);
    assert_int_equal(ca_issuer_load_plugin(pl.dir, &iss, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "ca-cert.pem: does not verify against root-cert.pem through cert-chain.pem"));
    write_pem(pl.dir, "root-cert.pem", pl.root, NULL, NULL);

    /* A signing certificate that is no CA. */
    X509 *not_ca = make_ca("not a CA", pl.inter_key, pl.root, pl.root_key, DAY, 0);
    write_pem(pl.dir, "ca-cert.pem", not_ca, NULL, NULL);
    assert_int_equal(ca_issuer_load_plugin(pl.dir, &iss, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "ca-cert.pem: not a CA certificate"));

    /* Not PEM at all. */
    snprintf(p, sizeof(p), "%s/ca-cert.pem", pl.dir);
    write_file(p, "hello\n");
    assert_int_equal(ca_issuer_load_plugin(pl.dir, &iss, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "ca-cert.pem: holds 0 certificates"));
    write_pem(pl.dir, "ca-cert.pem", pl.inter, NULL, NULL);
    assert_int_equal(ca_issuer_load_plugin(pl.dir, &iss, err, sizeof(err)), 0); /* repaired: loads */
    ca_issuer_free(iss);

    X509_free(other_root);
    X509_free(not_ca);
    EVP_PKEY_free(stranger);
    free_plugin(&pl);
}

/* ---- CSR signing ---- */

static struct ca_issuer *state_issuer(void)
{
    char dir[128], err[512];
    struct ca_issuer *iss = NULL;
    path_of(dir, sizeof(dir), "signer", NULL);
    assert_int_equal(ca_issuer_open_state(dir, TD, &iss, err, sizeof(err)), 0);
    return iss;
}

/* A CSR whose signature does not verify (a flipped bit, or signed by another key than it certifies), or that
 * is not a CSR, or carries a weak key, is refused as INVALID_ARGUMENT. */
static void test_csr_refused(void **state)
{
    struct ca_issuer *iss = state_issuer();
    struct spiffe_id id = wanted_id();
    struct ca_chain c;
    char err[512];
    EVP_PKEY *k = ec_key(), *weak = rsa_key(1024);

    char *bad = make_csr(k, CSR_BAD_SIGNATURE), *forged = make_csr(k, CSR_FORGED),
         *small = make_csr(weak, CSR_OK);
    assert_int_equal(ca_issuer_sign_csr(iss, bad, strlen(bad), &id, 0, &c, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "CSR signature does not verify"));
    assert_null(c.pem);
    assert_int_equal(ca_issuer_sign_csr(iss, forged, strlen(forged), &id, 0, &c, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "CSR signature does not verify"));
    assert_int_equal(ca_issuer_sign_csr(iss, small, strlen(small), &id, 0, &c, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "1024-bit RSA key"));
    const char *junk = "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n";
    assert_int_equal(ca_issuer_sign_csr(iss, junk, strlen(junk), &id, 0, &c, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "not in PEM format"));
    assert_int_equal(ca_issuer_sign_csr(iss, "", 0, &id, 0, &c, err, sizeof(err)), -EINVAL);
    free(bad);
    free(forged);
    free(small);
    EVP_PKEY_free(k);
    EVP_PKEY_free(weak);
    ca_issuer_free(iss);
}

/* The leaf carries the identity it was told, with the CSR's public key; the CSR's SANs and subject are
 * ignored. RSA and Ed25519 CSRs are signed too. */
static void test_csr_san_ignored(void **state)
{
    struct ca_issuer *iss = state_issuer();
    struct spiffe_id id = wanted_id();
    EVP_PKEY *keys[] = {ec_key(), rsa_key(2048), EVP_PKEY_Q_keygen(NULL, NULL, "ED25519")};
    char err[512], got[SPIFFE_MAX], why[256];

    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        struct ca_chain c;
        char *csr = make_csr(keys[i], CSR_OK);
        assert_int_equal(ca_issuer_sign_csr(iss, csr, strlen(csr), &id, 0, &c, err, sizeof(err)), 0);
        X509 *leaf = pem_cert(c.pem[0]);
        /* The identity rule ztunnel applies: exactly one URI SAN, a SPIFFE id of our trust domain, not a CA.
         */
        assert_int_equal(tls_leaf_identity(leaf, TD, got, sizeof(got), why, sizeof(why)), strlen(ID_WANTED));
        assert_string_equal(got, ID_WANTED);
        GENERAL_NAMES *sans = X509_get_ext_d2i(leaf, NID_subject_alt_name, NULL, NULL);
        assert_int_equal(sk_GENERAL_NAME_num(sans), 1); /* no DNS:evil.example either */
        GENERAL_NAMES_free(sans);
        assert_int_equal(X509_NAME_entry_count(X509_get_subject_name(leaf)), 0);
        assert_int_equal(EVP_PKEY_eq(X509_get0_pubkey(leaf), keys[i]), 1);
        /* serverAuth + clientAuth, CA:FALSE. */
        assert_int_equal(X509_check_purpose(leaf, X509_PURPOSE_SSL_SERVER, 0), 1);
        assert_int_equal(X509_check_purpose(leaf, X509_PURPOSE_SSL_CLIENT, 0), 1);
        assert_int_equal(X509_check_ca(leaf), 0);
        assert_true(X509_get_extended_key_usage(leaf) & XKU_SSL_SERVER);
        assert_true(X509_get_extended_key_usage(leaf) & XKU_SSL_CLIENT);
        X509_free(leaf);
        ca_chain_free(&c);
        free(csr);
        EVP_PKEY_free(keys[i]);
    }
    ca_issuer_free(iss);
}

/* istiod's TTL rule: <= 0 is 24 h, as asked up to 90 days, an error above; backdated 2 minutes; never past
 * the signing certificate. */
static void test_ttl_rules(void **state)
{
    struct ca_issuer *iss = state_issuer();
    struct ca_chain c;
    char err[512];
    time_t now = time(NULL);
    const int64_t asked[] = {0, -5, 3600, CA_ISSUER_MAX_TTL_S};
    const long expect[] = {DAY, DAY, 3600, CA_ISSUER_MAX_TTL_S};

    for (size_t i = 0; i < sizeof(asked) / sizeof(asked[0]); i++) {
        assert_int_equal(sign(iss, asked[i], &c, err, sizeof(err)), 0);
        long got = (long)(leaf_not_after(&c) - now);
        assert_true(got >= expect[i] && got <= expect[i] + 5);
        X509 *leaf = pem_cert(c.pem[0]);
        struct tm tm;
        ASN1_TIME_to_tm(X509_get0_notBefore(leaf), &tm);
        long back = (long)(now - timegm(&tm));
        assert_true(back >= CA_ISSUER_BACKDATE_S - 5 && back <= CA_ISSUER_BACKDATE_S + 5);
        X509_free(leaf);
        ca_chain_free(&c);
    }
    assert_int_equal(sign(iss, CA_ISSUER_MAX_TTL_S + 1, &c, err, sizeof(err)), -ERANGE);
    assert_string_equal(err, "requested TTL 2160h0m1s is greater than the max allowed TTL 2160h0m0s");
    assert_null(c.pem);
    /* The configurable limits (DEFAULT_WORKLOAD_CERT_TTL, MAX_WORKLOAD_CERT_TTL). */
    assert_int_equal(ca_issuer_set_ttl(iss, 600, 7200), 0);
    assert_int_equal(sign(iss, 0, &c, err, sizeof(err)), 0);
    assert_true(leaf_not_after(&c) - now >= 600 && leaf_not_after(&c) - now <= 605);
    ca_chain_free(&c);
    assert_int_equal(sign(iss, 7201, &c, err, sizeof(err)), -ERANGE);
    assert_string_equal(err, "requested TTL 2h0m1s is greater than the max allowed TTL 2h0m0s");
    assert_int_equal(ca_issuer_set_ttl(iss, 0, 10), -EINVAL);
    ca_issuer_free(iss);

    /* An intermediate valid one more hour caps a 10-hour request at its own notAfter. */
    struct plugin pl;
    make_plugin(&pl, "plugin-short", HOUR);
    assert_int_equal(ca_issuer_load_plugin(pl.dir, &iss, err, sizeof(err)), 0);
    assert_int_equal(sign(iss, 10 * HOUR, &c, err, sizeof(err)), 0);
    struct tm tm;
    ASN1_TIME_to_tm(X509_get0_notAfter(pl.inter), &tm);
    assert_int_equal(leaf_not_after(&c), timegm(&tm));
    assert_int_equal(verify_chain(&c), X509_V_OK);
    ca_chain_free(&c);
    ca_issuer_free(iss);
    free_plugin(&pl);
}

/* ---- tokens ---- */

static struct token_key *key_at(const char *name)
{
    char p[192], err[512];
    struct token_key *k = NULL;
    path_of(p, sizeof(p), name, NULL);
    assert_int_equal(token_key_open(p, &k, err, sizeof(err)), 0);
    return k;
}

static char *mint(struct token_key *k, const char *ns, const char *sa, const char *node, long ttl, time_t now)
{
    struct token_subject s = {.ns = ns, .sa = sa, .node = node, .pod = "cart-7d9f", .pod_uid = "1234-abcd"};
    char *tok = NULL, err[512];
    assert_int_equal(token_mint(k, NULL, &s, ttl, now, &tok, err, sizeof(err)), 0);
    return tok;
}

static int verify(struct token_key *k, const char *tok, time_t now, struct token_caller *c, char *err,
                  size_t n)
{
    return token_verify(k, NULL, NULL, tok, strlen(tok), now, c, err, n);
}

/* A token signed with libjwt directly: payload and algorithm as the test wants (key is PEM text). */
static char *raw_token(const char *payload_json, jwt_alg_t alg, const char *key)
{
    jwt_t *j = NULL;
    assert_int_equal(jwt_new(&j), 0);
    assert_int_equal(jwt_add_grants_json(j, payload_json), 0);
    assert_int_equal(jwt_set_alg(j, alg, (const unsigned char *)key, key ? (int)strlen(key) : 0), 0);
    char *t = jwt_encode_str(j);
    assert_non_null(t);
    jwt_free(j);
    return t;
}

/* The payload zmeshd would mint, with one claim replaced: a printf format taking iss, aud, exp, sub. */
static char *payload(const char *iss, const char *aud, long exp, const char *sub)
{
    static char buf[1024];
    snprintf(
        buf, sizeof(buf),
        "{\"iss\":\"%s\",\"aud\":%s,\"exp\":%ld,\"iat\":%ld,\"sub\":\"%s\",\"kubernetes.io\":{\"namespace\":"
        "\"shop\",\"serviceaccount\":{\"name\":\"cart\"}}}",
        iss, aud, exp, (long)time(NULL), sub);
    return buf;
}

static char *key_pem_of(const char *name)
{
    char p[192];
    path_of(p, sizeof(p), name, NULL);
    return read_all(p);
}

/* A zmesh token verifies into its caller; the key file is made once (0600) and reused. */
static void test_token_valid(void **state)
{
    struct token_key *k = key_at("token-key.pem"), *k2 = key_at("token-key.pem");
    struct token_caller c;
    char err[512], p[192];
    struct stat st;
    time_t now = time(NULL);

    path_of(p, sizeof(p), "token-key.pem", NULL);
    assert_int_equal(stat(p, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_string_equal(token_key_public_pem(k), token_key_public_pem(k2));
    char *tok = mint(k, "istio-system", "ztunnel", "node-a", HOUR, now);
    assert_int_equal(verify(k2, tok, now, &c, err, sizeof(err)), 0);
    assert_string_equal(c.ns, "istio-system");
    assert_string_equal(c.sa, "ztunnel");
    assert_string_equal(c.node, "node-a");
    assert_string_equal(c.pod, "cart-7d9f");
    assert_string_equal(c.pod_uid, "1234-abcd");
    assert_int_equal(c.exp, now + HOUR);
    free(tok);

    /* Without a node the caller has none. */
    tok = mint(k, "shop", "cart", NULL, HOUR, now);
    assert_int_equal(verify(k, tok, now, &c, err, sizeof(err)), 0);
    assert_string_equal(c.node, "");
    free(tok);

    /* A group-readable key file is refused: it mints every identity's token. */
    assert_int_equal(chmod(p, 0644), 0);
    struct token_key *k3 = NULL;
    assert_int_equal(token_key_open(p, &k3, err, sizeof(err)), -EPERM);
    assert_non_null(strstr(err, "token-key.pem: accessible to group or others"));
    assert_int_equal(chmod(p, 0600), 0);

    struct token_subject bad = {.ns = "shop", .sa = "a:b"};
    char *t = NULL;
    assert_int_equal(token_mint(k, NULL, &bad, HOUR, now, &t, err, sizeof(err)), -EINVAL);
    assert_int_equal(token_mint(k, NULL, &(struct token_subject){.ns = "shop", .sa = "cart"}, 0, now, &t, err,
                                sizeof(err)),
                     -EINVAL);
    token_key_free(k);
    token_key_free(k2);
}

/* Expired (beyond the leeway) and not-yet-valid tokens are refused; within the leeway they pass. */
static void test_token_times(void **state)
{
    struct token_key *k = key_at("token-key.pem");
    struct token_caller c;
    char err[512];
    time_t now = time(NULL);

    char *tok = mint(k, "shop", "cart", NULL, HOUR, now - 2 * HOUR);
    assert_int_equal(verify(k, tok, now, &c, err, sizeof(err)), -EACCES);
    assert_string_equal(err, "token has expired");
    assert_string_equal(c.ns, ""); /* nothing leaks out of a refused token */
    free(tok);
    tok = mint(k, "shop", "cart", NULL, HOUR, now - HOUR - TOKEN_LEEWAY_S / 2);
    assert_int_equal(verify(k, tok, now, &c, err, sizeof(err)), 0);
    free(tok);
    tok = mint(k, "shop", "cart", NULL, HOUR, now + 10 * 60);
    assert_int_equal(verify(k, tok, now, &c, err, sizeof(err)), -EACCES);
    assert_string_equal(err, "token is not valid yet");
    free(tok);

    char *priv = key_pem_of("token-key.pem");
    char *noexp =
        raw_token("{\"iss\":\"" TOKEN_DEFAULT_ISSUER "\",\"aud\":\"istio-ca\",\"sub\":\"system:"
                  "serviceaccount:shop:cart\",\"kubernetes.io\":{\"namespace\":\"shop\",\"serviceaccount\":"
                  "{\"name\":\"cart\"}}}",
                  JWT_ALG_ES256, priv);
    assert_int_equal(verify(k, noexp, now, &c, err, sizeof(err)), -EACCES);
    assert_string_equal(err, "claim exp is missing");
    char *strexp =
        raw_token(payload(TOKEN_DEFAULT_ISSUER, "\"istio-ca\"", 0, "system:serviceaccount:shop:cart"),
                  JWT_ALG_ES256, priv);
    assert_int_equal(verify(k, strexp, now, &c, err, sizeof(err)), -EACCES); /* exp 0: long past */
    char future[512];
    snprintf(
        future, sizeof(future),
        "{\"iss\":\"" TOKEN_DEFAULT_ISSUER "\",\"aud\":\"istio-ca\",\"exp\":%ld,\"iat\":%ld,\"sub\":"
        "\"system:serviceaccount:shop:cart\",\"kubernetes.io\":{\"namespace\":\"shop\",\"serviceaccount\":{"
        "\"name\":\"cart\"}}}",
        (long)now + HOUR, (long)now + 600);
    char *iat = raw_token(future, JWT_ALG_ES256, priv);
    assert_int_equal(verify(k, iat, now, &c, err, sizeof(err)), -EACCES);
    assert_string_equal(err, "token is issued in the future");
    free(iat);
    free(noexp);
    free(strexp);
    free(priv);
    token_key_free(k);
}

/* Audience and issuer must match; aud may be a string or an array. */
static void test_token_claims(void **state)
{
    struct token_key *k = key_at("token-key.pem");
    struct token_caller c;
    char err[512], *priv = key_pem_of("token-key.pem");
    time_t now = time(NULL);
    long exp = (long)now + HOUR;

    char *ok_str =
        raw_token(payload(TOKEN_DEFAULT_ISSUER, "\"istio-ca\"", exp, "system:serviceaccount:shop:cart"),
                  JWT_ALG_ES256, priv);
    assert_int_equal(verify(k, ok_str, now, &c, err, sizeof(err)), 0);
    assert_string_equal(c.sa, "cart");
    char *aud = raw_token(
        payload(TOKEN_DEFAULT_ISSUER, "[\"kubernetes\",\"vault\"]", exp, "system:serviceaccount:shop:cart"),
        JWT_ALG_ES256, priv);
    assert_int_equal(verify(k, aud, now, &c, err, sizeof(err)), -EACCES);
    assert_non_null(strstr(err, "audience \"istio-ca\""));
    char *iss = raw_token(
        payload("https://kubernetes.default.svc", "[\"istio-ca\"]", exp, "system:serviceaccount:shop:cart"),
        JWT_ALG_ES256, priv);
    assert_int_equal(verify(k, iss, now, &c, err, sizeof(err)), -EACCES);
    assert_non_null(strstr(err, "issuer \"https://kubernetes.default.svc\""));
    /* sub must agree with kubernetes.io (shop/cart) and have the service-account shape. */
    char *sub = raw_token(payload(TOKEN_DEFAULT_ISSUER, "[\"istio-ca\"]", exp,
                                  "system:serviceaccount:istio-system:"
                                  "ztunnel"),
                          JWT_ALG_ES256, priv);
    assert_int_equal(verify(k, sub, now, &c, err, sizeof(err)), -EACCES);
    assert_non_null(strstr(err, "disagrees"));
    char *user =
        raw_token(payload(TOKEN_DEFAULT_ISSUER, "[\"istio-ca\"]", exp, "admin"), JWT_ALG_ES256, priv);
    assert_int_equal(verify(k, user, now, &c, err, sizeof(err)), -EACCES);
    assert_non_null(strstr(err, "is not system:serviceaccount"));
    /* The same token verified with another audience or issuer than zmeshd's is refused too. */
    char *mine = mint(k, "shop", "cart", NULL, HOUR, now);
    assert_int_equal(token_verify(k, NULL, "other", mine, strlen(mine), now, &c, err, sizeof(err)), -EACCES);
    assert_int_equal(token_verify(k, "other", NULL, mine, strlen(mine), now, &c, err, sizeof(err)), -EACCES);
    /* Oversized input is refused unread. */
    char *big = calloc(1, TOKEN_MAX_LEN + 2);
    memset(big, 'a', TOKEN_MAX_LEN + 1);
    assert_int_equal(verify(k, big, now, &c, err, sizeof(err)), -EACCES);
    assert_non_null(strstr(err, "TOKEN_MAX_LEN"));
    free(big);
    free(mine);
    free(ok_str);
    free(aud);
    free(iss);
    free(sub);
    free(user);
    free(priv);
    token_key_free(k);
}

static void b64url(const char *in, char *out)
{
    int n = EVP_EncodeBlock((unsigned char *)out, (const unsigned char *)in, (int)strlen(in));
    for (int i = 0; i < n; i++)
        out[i] = out[i] == '+' ? '-' : out[i] == '/' ? '_' : out[i];
    while (n > 0 && out[n - 1] == '=')
        n--;
    out[n] = '\0';
}

/* Signatures: another key's, none at all, and HS256 keyed with zmeshd's public key (which libjwt alone would
 * accept: the algorithm pin is what refuses it), and a tampered payload. */
static void test_token_signatures(void **state)
{
    struct token_key *k = key_at("token-key.pem"), *foreign = key_at("foreign-key.pem");
    struct token_caller c;
    char err[512];
    time_t now = time(NULL);
    char *p =
        payload(TOKEN_DEFAULT_ISSUER, "[\"istio-ca\"]", (long)now + HOUR, "system:serviceaccount:shop:cart");

    char *tok = mint(foreign, "shop", "cart", NULL, HOUR, now);
    assert_int_equal(verify(k, tok, now, &c, err, sizeof(err)), -EACCES);
    assert_non_null(strstr(err, "signature does not verify"));
    free(tok);

    char h[256], b[1024], none[1400];
    b64url("{\"alg\":\"none\",\"typ\":\"JWT\"}", h);
    b64url(p, b);
    snprintf(none, sizeof(none), "%s.%s.", h, b);
    assert_int_equal(verify(k, none, now, &c, err, sizeof(err)), -EACCES);
    assert_non_null(strstr(err, "not ES256"));

    char *hs = raw_token(p, JWT_ALG_HS256, token_key_public_pem(k));
    /* libjwt on its own verifies it: the attack is real. */
    jwt_t *j = NULL;
    const char *pub = token_key_public_pem(k);
    assert_int_equal(jwt_decode(&j, hs, (const unsigned char *)pub, (int)strlen(pub)), 0);
    jwt_free(j);
    assert_int_equal(verify(k, hs, now, &c, err, sizeof(err)), -EACCES);
    assert_string_equal(err, "token algorithm HS256 is not ES256");
    free(hs);

    /* A workload's valid signature under a payload that claims more (a node binding and a longer life). */
    char *good = mint(k, "shop", "cart", NULL, HOUR, now);
    char evil_p[512];
    snprintf(
        evil_p, sizeof(evil_p),
        "{\"iss\":\"" TOKEN_DEFAULT_ISSUER "\",\"aud\":[\"istio-ca\"],\"exp\":%ld,\"sub\":\"system:"
        "serviceaccount:shop:cart\",\"kubernetes.io\":{\"namespace\":\"shop\",\"serviceaccount\":{\"name\":"
        "\"cart\"},\"node\":{\"name\":\"node-b\"}}}",
        (long)now + 100 * DAY);
    size_t head = strcspn(good, "."), sig = strlen(good) - strcspn(good + head + 1, ".") - head - 1;
    char swapped[2048];
    b64url(evil_p, b);
    snprintf(swapped, sizeof(swapped), "%.*s.%s%s", (int)head, good, b, good + strlen(good) - sig);
    assert_int_equal(verify(k, swapped, now, &c, err, sizeof(err)), -EACCES);
    assert_non_null(strstr(err, "signature does not verify"));
    assert_int_equal(verify(k, "not.a.jwt", now, &c, err, sizeof(err)), -EACCES);
    free(good);
    token_key_free(k);
    token_key_free(foreign);
}

/* ---- authorization ---- */

/* The manifest store's answer, faked: pods shop/cart and shop/web on node-a, bank/vault on node-b. */
static int pods(void *ud, const char *ns, const char *sa, const char *node)
{
    static const char *const have[][3] = {
        {"shop", "cart", "node-a"}, {"shop", "web", "node-a"}, {"bank", "vault", "node-b"}};
    (*(int *)ud)++;
    for (size_t i = 0; i < sizeof(have) / sizeof(have[0]); i++)
        if (!strcmp(have[i][0], ns) && !strcmp(have[i][1], sa) && !strcmp(have[i][2], node)) return 1;
    return 0;
}

static struct token_caller caller(const char *ns, const char *sa, const char *node)
{
    struct token_caller c = {0};
    snprintf(c.ns, sizeof(c.ns), "%s", ns);
    snprintf(c.sa, sizeof(c.sa), "%s", sa);
    snprintf(c.node, sizeof(c.node), "%s", node);
    return c;
}

static int authz(const struct token_caller *c, const char *imp, const struct ca_trusted *t, char *got,
                 char *why)
{
    struct spiffe_id out;
    int calls = 0;
    int rc = ca_authorize(c, TD, imp, t, pods, &calls, &out, why, 256);
    got[0] = '\0';
    if (rc == 0) spiffe_format(&out, got, SPIFFE_MAX);
    return rc;
}

static void test_impersonation_matrix(void **state)
{
    struct ca_trusted t;
    char err[256], got[SPIFFE_MAX], why[256];
    struct token_caller zt_a = caller("istio-system", "ztunnel", "node-a");
    struct token_caller cart = caller("shop", "cart", "node-a");

    assert_int_equal(ca_trusted_parse(NULL, &t, err, sizeof(err)), 0); /* the default: istio-system/ztunnel */
    assert_int_equal(t.n, 1);

    /* Own identity, with or without an empty ImpersonatedIdentity. */
    assert_int_equal(authz(&cart, NULL, &t, got, why), 0);
    assert_string_equal(got, ID_WANTED);
    assert_int_equal(authz(&cart, "", &t, got, why), 0);
    assert_string_equal(got, ID_WANTED);
    assert_int_equal(authz(&zt_a, NULL, &t, got, why), 0);
    assert_string_equal(got, "spiffe://cluster.local/ns/istio-system/sa/ztunnel");

    /* A trusted node proxy for a pod on its node. */
    assert_int_equal(authz(&zt_a, ID_WANTED, &t, got, why), 0);
    assert_string_equal(got, ID_WANTED);
    /* ... for a pod on another node. */
    assert_int_equal(authz(&zt_a, "spiffe://cluster.local/ns/bank/sa/vault", &t, got, why), -EACCES);
    assert_string_equal(got, "");
    assert_non_null(strstr(why, "no instances of \"bank/vault\" found on node \"node-a\""));
    /* ... for an account no pod has. */
    assert_int_equal(authz(&zt_a, "spiffe://cluster.local/ns/shop/sa/ghost", &t, got, why), -EACCES);
    assert_non_null(strstr(why, "no instances of \"shop/ghost\""));
    /* ... for another trust domain, or not a SPIFFE id. */
    assert_int_equal(authz(&zt_a, "spiffe://evil.example/ns/shop/sa/cart", &t, got, why), -EACCES);
    assert_non_null(strstr(why, "failed to validate impersonated identity"));
    assert_int_equal(authz(&zt_a, "shop/cart", &t, got, why), -EACCES);
    /* ... with a token not bound to a node. */
    struct token_caller zt_nowhere = caller("istio-system", "ztunnel", "");
    assert_int_equal(authz(&zt_nowhere, ID_WANTED, &t, got, why), -EACCES);
    assert_non_null(strstr(why, "not bound to a node"));
    /* An untrusted caller impersonating, even a pod on its own node. */
    assert_int_equal(authz(&cart, "spiffe://cluster.local/ns/shop/sa/web", &t, got, why), -EACCES);
    assert_non_null(strstr(why, "caller (shop/cart) is not allowed to impersonate"));
    /* The same name in another namespace is not the trusted account. */
    struct token_caller fake = caller("shop", "ztunnel", "node-a");
    assert_int_equal(authz(&fake, ID_WANTED, &t, got, why), -EACCES);
    ca_trusted_free(&t);

    /* Nobody trusted: impersonation is off, own identities still work. */
    assert_int_equal(ca_trusted_parse("", &t, err, sizeof(err)), 0);
    assert_int_equal(authz(&zt_a, ID_WANTED, &t, got, why), -EACCES);
    assert_non_null(strstr(why, "CA_TRUSTED_NODE_ACCOUNTS) is not configured"));
    assert_int_equal(authz(&cart, NULL, &t, got, why), 0);

    /* Several accounts; malformed lists are refused with the entry named. */
    assert_int_equal(ca_trusted_parse("kube-system/node-proxy,istio-system/ztunnel", &t, err, sizeof(err)),
                     0);
    assert_int_equal(t.n, 2);
    assert_int_equal(authz(&zt_a, ID_WANTED, &t, got, why), 0);
    ca_trusted_free(&t);
    const char *bad[] = {"ztunnel", "istio-system/", "/ztunnel", "a/b/c", "istio-system/zt?x"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        assert_int_equal(ca_trusted_parse(bad[i], &t, err, sizeof(err)), -EINVAL);
        assert_non_null(strstr(err, "CA_TRUSTED_NODE_ACCOUNTS"));
        assert_int_equal(t.n, 0);
    }
}

/* The path a CreateCertificate handler takes, end to end without the transport: token -> authorization ->
 * signing. A node token obtains a pod's identity on its node and nothing else. */
static void test_create_certificate_flow(void **state)
{
    struct token_key *k = key_at("token-key.pem");
    struct ca_issuer *iss = state_issuer();
    struct ca_trusted t;
    struct token_caller c;
    struct spiffe_id id;
    struct ca_chain chain;
    char err[512], why[256];
    int calls = 0;
    time_t now = time(NULL);

    assert_int_equal(ca_trusted_parse(NULL, &t, err, sizeof(err)), 0);
    char *tok = mint(k, "istio-system", "ztunnel", "node-a", HOUR, now);
    assert_int_equal(verify(k, tok, now, &c, err, sizeof(err)), 0);
    assert_int_equal(ca_authorize(&c, TD, ID_WANTED, &t, pods, &calls, &id, why, sizeof(why)), 0);
    assert_int_equal(calls, 1);
    EVP_PKEY *key = ec_key();
    char *csr = make_csr(key, CSR_OK);
    assert_int_equal(ca_issuer_sign_csr(iss, csr, strlen(csr), &id, 3600, &chain, err, sizeof(err)), 0);
    assert_int_equal(verify_chain(&chain), X509_V_OK);
    ca_chain_free(&chain);
    assert_int_equal(ca_authorize(&c, TD, "spiffe://cluster.local/ns/bank/sa/vault", &t, pods, &calls, &id,
                                  why, sizeof(why)),
                     -EACCES);
    free(csr);
    free(tok);
    EVP_PKEY_free(key);
    ca_trusted_free(&t);
    ca_issuer_free(iss);
    token_key_free(k);
}

/* Code zmesh did not write: PyJWT verifies a zmesh token (ES256, claims) with the public key, and Python's
 * cryptography parses the issued chains and checks each signature and the leaf's fields. */
static void test_python_peers(void **state)
{
    struct token_key *k = key_at("token-key.pem");
    struct ca_issuer *self = state_issuer(), *plug = NULL;
    struct plugin pl;
    char dir[128], p[256], err[512], cmd[512];
    time_t now = time(NULL);

    path_of(dir, sizeof(dir), "py", NULL);
    assert_int_equal(mkdir(dir, 0700), 0);
    char *tok = mint(k, "istio-system", "ztunnel", "node-a", HOUR, now);
    snprintf(p, sizeof(p), "%s/token", dir);
    write_file(p, tok);
    snprintf(p, sizeof(p), "%s/token-pub.pem", dir);
    write_file(p, token_key_public_pem(k));
    make_plugin(&pl, "plugin-py", 365 * DAY);
    assert_int_equal(ca_issuer_load_plugin(pl.dir, &plug, err, sizeof(err)), 0);
    struct ca_issuer *issuers[] = {self, plug};
    for (int i = 0; i < 2; i++) {
        struct ca_chain c;
        assert_int_equal(sign(issuers[i], 3600, &c, err, sizeof(err)), 0);
        for (size_t j = 0; j < c.n; j++) {
            snprintf(p, sizeof(p), "%s/chain%d.%zu.pem", dir, i, j);
            write_file(p, c.pem[j]);
        }
        ca_chain_free(&c);
    }
    /* The unit tests run from the repository root (scripts/run-tests.sh). */
    if (access("tests/unit/ca_peer.py", R_OK) != 0)
        fail_msg("tests/unit/ca_peer.py not found: run from the repository root");
    snprintf(cmd, sizeof(cmd), "/usr/bin/python3 tests/unit/ca_peer.py '%s' '%s' '%s' 2>&1", dir,
             TOKEN_DEFAULT_ISSUER, ID_WANTED);
    int st = system(cmd);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    free(tok);
    free_plugin(&pl);
    ca_issuer_free(plug);
    ca_issuer_free(self);
    token_key_free(k);
}

/* ---- the client half: ztunnel's CSR and the checks on the answer (src/tls/csr.c) ---- */

/* The CSR is ztunnel's: P-256, empty subject, one critical URI SAN, a signature that verifies. */
static void test_client_csr_shape(void **state)
{
    EVP_PKEY *key = NULL;
    char *pem = NULL, err[256];
    assert_int_equal(tls_csr_new(ID_WANTED, &key, &pem, err, sizeof(err)), 0);
    BIO *b = BIO_new_mem_buf(pem, -1);
    X509_REQ *req = PEM_read_bio_X509_REQ(b, NULL, NULL, NULL);
    assert_non_null(req);
    EVP_PKEY *pub = X509_REQ_get_pubkey(req);
    assert_int_equal(X509_REQ_verify(req, pub), 1);
    assert_int_equal(EVP_PKEY_eq(pub, key), 1);
    char curve[32];
    size_t cl;
    assert_int_equal(EVP_PKEY_get_utf8_string_param(key, "group", curve, sizeof(curve), &cl), 1);
    assert_string_equal(curve, "prime256v1");
    assert_int_equal(X509_NAME_entry_count(X509_REQ_get_subject_name(req)), 0);
    STACK_OF(X509_EXTENSION) *exts = X509_REQ_get_extensions(req);
    assert_int_equal(sk_X509_EXTENSION_num(exts), 1);
    X509_EXTENSION *ext = sk_X509_EXTENSION_value(exts, 0);
    assert_int_equal(OBJ_obj2nid(X509_EXTENSION_get_object(ext)), NID_subject_alt_name);
    assert_int_equal(X509_EXTENSION_get_critical(ext), 1);
    GENERAL_NAMES *gens = X509V3_EXT_d2i(ext);
    assert_int_equal(sk_GENERAL_NAME_num(gens), 1);
    const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, 0);
    assert_int_equal(g->type, GEN_URI);
    assert_memory_equal(ASN1_STRING_get0_data(g->d.uniformResourceIdentifier), ID_WANTED, strlen(ID_WANTED));
    GENERAL_NAMES_free(gens);
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    EVP_PKEY_free(pub);
    X509_REQ_free(req);
    BIO_free(b);
    free(pem);
    EVP_PKEY_free(key);
    assert_int_equal(tls_csr_new("", &key, &pem, err, sizeof(err)), -EINVAL);
    assert_null(key);
}

/* Request, sign, accept: the answer becomes a certificate with the requested identity, anchored at the root
 * that verifies it, through the plug-in CA's intermediate. */
static void answer_of(struct ca_issuer *iss, const char *uri, EVP_PKEY **key, struct ca_chain *out)
{
    char *pem = NULL, err[512];
    struct spiffe_id id;
    assert_int_equal(spiffe_parse(uri, strlen(uri), &id), 0);
    assert_int_equal(tls_csr_new(ID_WANTED, key, &pem, err, sizeof(err)), 0);
    assert_int_equal(ca_issuer_sign_csr(iss, pem, strlen(pem), &id, 3600, out, err, sizeof(err)), 0);
    free(pem);
}

static void test_client_accepts_answer(void **state)
{
    struct plugin pl;
    struct ca_issuer *iss = NULL;
    struct ca_chain ch;
    struct tls_cert *c = NULL;
    EVP_PKEY *key = NULL;
    char err[512];
    size_t extra = 9;
    struct spiffe_id id = wanted_id();

    make_plugin(&pl, "client-plugin", 30 * DAY);
    assert_int_equal(ca_issuer_load_plugin(pl.dir, &iss, err, sizeof(err)), 0);
    answer_of(iss, ID_WANTED, &key, &ch);
    assert_true(ch.n >= 3); /* leaf, intermediate (and the chain file's root), root file */
    assert_int_equal(
        tls_cert_from_ca_answer(key, (const char *const *)ch.pem, ch.n, &id, &c, &extra, err, sizeof(err)),
        0);
    assert_string_equal(c->uri, ID_WANTED);
    assert_int_equal(X509_cmp(c->root, pl.root), 0);
    assert_int_equal(EVP_PKEY_eq(X509_get0_pubkey(c->leaf), key), 1);
    assert_true(c->not_after - c->not_before >= 3600);
    assert_true(sk_X509_num(c->chain) >= 1);
    assert_int_equal(extra, 0);
    /* The contexts the identity lifecycle makes accept it. */
    SSL_CTX *sctx = tls_server_ctx_new(c);
    assert_non_null(sctx);
    SSL_CTX_free(sctx);
    tls_cert_unref(c);

    /* Two roots in the last element (a root being rotated in): the one that verifies anchors, the other is
     * counted so the caller can warn. */
    EVP_PKEY *k2 = ec_key();
    X509 *other = make_ca("another root", k2, NULL, NULL, DAY, 1);
    BIO *b = BIO_new(BIO_s_mem());
    PEM_write_bio_X509(b, other);
    BIO_puts(b, ch.pem[ch.n - 1]);
    char *two;
    long len = BIO_get_mem_data(b, &two);
    char *bundle = strndup(two, (size_t)len);
    char *saved = ch.pem[ch.n - 1];
    ch.pem[ch.n - 1] = bundle;
    assert_int_equal(
        tls_cert_from_ca_answer(key, (const char *const *)ch.pem, ch.n, &id, &c, &extra, err, sizeof(err)),
        0);
    assert_int_equal(extra, 1);
    assert_int_equal(X509_cmp(c->root, pl.root), 0);
    tls_cert_unref(c);

    /* Only the other root: nothing verifies. */
    ch.pem[ch.n - 1] = (char *)"";
    assert_int_equal(
        tls_cert_from_ca_answer(key, (const char *const *)ch.pem, ch.n, &id, &c, NULL, err, sizeof(err)),
        -EINVAL);
    assert_non_null(strstr(err, "no PEM certificate"));
    BIO_reset(b);
    PEM_write_bio_X509(b, other);
    len = BIO_get_mem_data(b, &two);
    free(bundle);
    bundle = strndup(two, (size_t)len);
    ch.pem[ch.n - 1] = bundle;
    assert_int_equal(
        tls_cert_from_ca_answer(key, (const char *const *)ch.pem, ch.n, &id, &c, NULL, err, sizeof(err)),
        -EINVAL);
    assert_non_null(strstr(err, "does not verify"));
    assert_null(c);
    ch.pem[ch.n - 1] = saved;
    free(bundle);
    BIO_free(b);
    X509_free(other);
    EVP_PKEY_free(k2);

    /* A truncated intermediate names its element. */
    saved = ch.pem[1];
    char *cut = strndup(saved, strlen(saved) / 2);
    ch.pem[1] = cut;
    assert_int_equal(
        tls_cert_from_ca_answer(key, (const char *const *)ch.pem, ch.n, &id, &c, NULL, err, sizeof(err)),
        -EINVAL);
    assert_non_null(strstr(err, "cert_chain[1]"));
    ch.pem[1] = saved;
    free(cut);

    /* A leaf alone, or an empty answer. */
    assert_int_equal(
        tls_cert_from_ca_answer(key, (const char *const *)ch.pem, 1, &id, &c, NULL, err, sizeof(err)),
        -EINVAL);
    assert_non_null(strstr(err, "without a root"));
    assert_int_equal(tls_cert_from_ca_answer(key, NULL, 0, &id, &c, NULL, err, sizeof(err)), -EINVAL);

    /* The answer for another request's key. */
    EVP_PKEY *k3 = ec_key();
    assert_int_equal(
        tls_cert_from_ca_answer(k3, (const char *const *)ch.pem, ch.n, &id, &c, NULL, err, sizeof(err)),
        -EINVAL);
    assert_non_null(strstr(err, "key of the request"));
    EVP_PKEY_free(k3);
    ca_chain_free(&ch);
    EVP_PKEY_free(key);

    /* A CA that signs another identity than requested is refused, whatever it is. */
    answer_of(iss, ID_EVIL, &key, &ch);
    assert_int_equal(
        tls_cert_from_ca_answer(key, (const char *const *)ch.pem, ch.n, &id, &c, NULL, err, sizeof(err)),
        -EINVAL);
    assert_non_null(strstr(err, "the leaf is for " ID_EVIL ", requested " ID_WANTED));
    ca_chain_free(&ch);
    EVP_PKEY_free(key);
    ca_issuer_free(iss);
    free_plugin(&pl);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_state_created_then_reused),
        cmocka_unit_test(test_plugin_loads_and_chains),
        cmocka_unit_test(test_plugin_errors),
        cmocka_unit_test(test_csr_refused),
        cmocka_unit_test(test_csr_san_ignored),
        cmocka_unit_test(test_ttl_rules),
        cmocka_unit_test(test_token_valid),
        cmocka_unit_test(test_token_times),
        cmocka_unit_test(test_token_claims),
        cmocka_unit_test(test_token_signatures),
        cmocka_unit_test(test_impersonation_matrix),
        cmocka_unit_test(test_create_certificate_flow),
        cmocka_unit_test(test_python_peers),
        cmocka_unit_test(test_client_csr_shape),
        cmocka_unit_test(test_client_accepts_answer),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
