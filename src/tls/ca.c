/* Certificate bundles and the local CA provider (mints leaves from a root key on disk). */
#include "tls/ca.h"

#include "core/log.h"
#include "tls/tls.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>

/* Leaves are valid from a minute before they were minted, so that a peer whose clock is a little behind
 * accepts them at once (istiod backdates by its ClockSkewGracePeriod, 2 minutes, for the same reason). */
#define LEAF_BACKDATE 60
#define ROOT_TTL (10L * 365 * 24 * 3600)

void tls_cert_ref(struct tls_cert *c)
{
    __atomic_add_fetch(&c->refs, 1, __ATOMIC_RELAXED);
}

void tls_cert_unref(struct tls_cert *c)
{
    if (!c) return;
    if (__atomic_sub_fetch(&c->refs, 1, __ATOMIC_ACQ_REL) != 0) return;
    X509_free(c->leaf);
    EVP_PKEY_free(c->key);
    sk_X509_pop_free(c->chain, X509_free);
    X509_free(c->root);
    free(c);
}

/* Formats "<what>: <reason>" into err; reason falls back to the OpenSSL error queue when NULL. */
static void set_err(char *err, size_t errlen, const char *what, const char *reason)
{
    char ebuf[256];
    if (!err || !errlen) {
        ERR_clear_error();
        return;
    }
    if (!reason) reason = tls_errstr(ebuf, sizeof(ebuf));
    snprintf(err, errlen, "%s: %s", what, reason);
    ERR_clear_error();
}

/* A positive, non-zero random 128-bit serial as RFC 5280 asks (at most 20 octets, unpredictable). */
static int set_random_serial(X509 *x)
{
    unsigned char raw[16];
    BIGNUM *bn = NULL;
    int rc = -EIO;

    if (RAND_bytes(raw, sizeof(raw)) != 1) goto out;
    raw[0] &= 0x7f;
    raw[0] |= 0x01; /* never zero, and keeps the encoded length stable */
    bn = BN_bin2bn(raw, sizeof(raw), NULL);
    if (!bn || !BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x))) goto out;
    rc = 0;
out:
    BN_free(bn);
    return rc;
}

/* Adds an extension from OpenSSL's config syntax; only used with fixed strings, never with identity text. */
static int add_ext_conf(X509 *x, X509V3_CTX *ctx, int nid, const char *value)
{
    X509_EXTENSION *ext = X509V3_EXT_nconf_nid(NULL, ctx, nid, value);
    int ok = ext && X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    return ok ? 0 : -EIO;
}

/* Adds one GENERAL_NAME of type (GEN_URI, GEN_DNS) with value v to gens, built directly, so no byte of it is
 * interpreted by a config parser. */
static int push_name(GENERAL_NAMES *gens, int type, const char *v)
{
    GENERAL_NAME *gn = GENERAL_NAME_new();
    ASN1_IA5STRING *ia5 = ASN1_IA5STRING_new();
    if (!gn || !ia5 || !ASN1_STRING_set(ia5, v, (int)strlen(v))) goto fail;
    GENERAL_NAME_set0_value(gn, type, ia5);
    if (!sk_GENERAL_NAME_push(gens, gn)) {
        GENERAL_NAME_free(gn);
        return -EIO;
    }
    return 0;
fail:
    ASN1_IA5STRING_free(ia5);
    GENERAL_NAME_free(gn);
    return -EIO;
}

/* Adds the SAN extension: the URI (if any), then the DNS names. Critical because the subject is empty (RFC
 * 5280 4.2.1.6). */
static int add_sans(X509 *x, const char *uri, const char *const *dns, size_t n_dns)
{
    GENERAL_NAMES *gens = sk_GENERAL_NAME_new_null();
    int rc = -EIO;

    if (!gens) goto out;
    if (uri && push_name(gens, GEN_URI, uri) < 0) goto out;
    for (size_t i = 0; i < n_dns; i++)
        if (push_name(gens, GEN_DNS, dns[i]) < 0) goto out;
    if (X509_add1_ext_i2d(x, NID_subject_alt_name, gens, 1, X509V3_ADD_DEFAULT) != 1) goto out;
    rc = 0;
out:
    GENERAL_NAMES_free(gens);
    return rc;
}

/* EdDSA keys sign without a separate digest; everything else signs SHA-256. */
static const EVP_MD *sign_md(EVP_PKEY *key)
{
    int id = EVP_PKEY_get_id(key);
    return (id == EVP_PKEY_ED25519 || id == EVP_PKEY_ED448) ? NULL : EVP_sha256();
}

X509 *ca_sign_leaf(X509 *issuer, EVP_PKEY *issuer_key, EVP_PKEY *subject_key, const char *uri,
                   time_t not_before, time_t not_after, char *err, size_t errlen)
{
    return ca_sign_leaf_sans(issuer, issuer_key, subject_key, uri, NULL, 0, not_before, not_after, err,
                             errlen);
}

X509 *ca_sign_leaf_sans(X509 *issuer, EVP_PKEY *issuer_key, EVP_PKEY *subject_key, const char *uri,
                        const char *const *dns, size_t n_dns, time_t not_before, time_t not_after, char *err,
                        size_t errlen)
{
    X509 *x = X509_new();
    X509V3_CTX v3;
    char what[SPIFFE_MAX + 16];

    snprintf(what, sizeof(what), "sign %s", uri ? uri : n_dns ? dns[0] : "(no name)");
    if (!x) goto ossl_fail;
    if (!X509_set_version(x, X509_VERSION_3)) goto ossl_fail;
    if (set_random_serial(x) < 0) goto ossl_fail;
    if (!X509_set_issuer_name(x, X509_get_subject_name(issuer))) goto ossl_fail;
    /* The subject stays empty: the identity lives only in the critical URI SAN, as in Istio's certificates.
     */
    if (!ASN1_TIME_set(X509_getm_notBefore(x), not_before)) goto ossl_fail;
    if (!ASN1_TIME_set(X509_getm_notAfter(x), not_after)) goto ossl_fail;
    if (!X509_set_pubkey(x, subject_key)) goto ossl_fail;

    X509V3_set_ctx(&v3, issuer, x, NULL, NULL, 0);
    if (add_ext_conf(x, &v3, NID_basic_constraints, "critical,CA:FALSE") < 0) goto ossl_fail;
    if (add_ext_conf(x, &v3, NID_key_usage, "critical,digitalSignature,keyEncipherment") < 0) goto ossl_fail;
    if (add_ext_conf(x, &v3, NID_ext_key_usage, "serverAuth,clientAuth") < 0) goto ossl_fail;
    /* The authority key id lets verifiers pick the right issuer when several share a subject name. */
    if (X509_get0_subject_key_id(issuer) && add_ext_conf(x, &v3, NID_authority_key_identifier, "keyid") < 0)
        goto ossl_fail;
    if (add_sans(x, uri, dns, n_dns) < 0) goto ossl_fail;
    if (X509_sign(x, issuer_key, sign_md(issuer_key)) <= 0) goto ossl_fail;
    return x;

ossl_fail:
    set_err(err, errlen, what, NULL);
    X509_free(x);
    return NULL;
}

/* Mints a leaf with a new P-256 key for id signed by root/root_key. Returns a cert with one reference, or
 * NULL with err filled. */
static struct tls_cert *mint_leaf(X509 *root, EVP_PKEY *root_key, const struct spiffe_id *id, uint32_t ttl_s,
                                  char *err, size_t errlen)
{
    struct tls_cert *c = calloc(1, sizeof(*c));
    time_t now = time(NULL);
    char what[SPIFFE_MAX + 16] = "";

    if (!c) {
        set_err(err, errlen, "mint", "out of memory");
        return NULL;
    }
    c->refs = 1;
    c->id = *id;
    if (spiffe_format(id, c->uri, sizeof(c->uri)) < 0) {
        set_err(err, errlen, "mint", "identity too long");
        goto fail;
    }
    snprintf(what, sizeof(what), "mint %s", c->uri);
    /* A leaf under a root that is not valid now would be refused by every peer: say so here instead, and let
     * the identity manager retry (the clock may be wrong, or the root about to be replaced). */
    if (X509_cmp_time(X509_get0_notAfter(root), &now) < 0) {
        set_err(err, errlen, what, "the root certificate (root-cert.pem) has expired");
        goto fail;
    }
    if (X509_cmp_time(X509_get0_notBefore(root), &now) > 0) {
        set_err(err, errlen, what, "the root certificate (root-cert.pem) is not valid yet");
        goto fail;
    }
    if (!(c->key = EVP_EC_gen("P-256"))) {
        set_err(err, errlen, what, NULL);
        goto fail;
    }
    c->not_before = now - LEAF_BACKDATE;
    c->not_after = now + (time_t)ttl_s;
    if (!(c->leaf = ca_sign_leaf(root, root_key, c->key, c->uri, c->not_before, c->not_after, err, errlen)))
        goto fail;
    c->chain = sk_X509_new_null();
    if (!c->chain || !X509_up_ref(root)) {
        set_err(err, errlen, what, "out of memory");
        goto fail;
    }
    c->root = root;
    return c;

fail:
    X509_free(c->leaf);
    EVP_PKEY_free(c->key);
    sk_X509_free(c->chain);
    free(c);
    return NULL;
}

/* ---- local CA provider ---- */

struct ca_local {
    struct cert_provider base; /* first, so the provider pointer is the ca_local pointer */
    X509 *root;                /* read-only after ca_local_new_ttl, so fetches need no lock */
    EVP_PKEY *root_key;
    uint32_t ttl_s;
};

static struct tls_cert *ca_local_fetch(struct cert_provider *p, const struct spiffe_id *id, char *err,
                                       size_t errlen)
{
    struct ca_local *ca = (struct ca_local *)p;
    /* No cache here: the identity manager keeps one certificate per identity and asks again only to renew
     * it, and a P-256 leaf costs well under a millisecond to mint. Signing with a shared EVP_PKEY is
     * thread-safe in OpenSSL 3. */
    return mint_leaf(ca->root, ca->root_key, id, ca->ttl_s, err, errlen);
}

static void ca_local_destroy(struct cert_provider *p)
{
    struct ca_local *ca = (struct ca_local *)p;
    if (!ca) return;
    X509_free(ca->root);
    EVP_PKEY_free(ca->root_key);
    free(ca);
}

/* Opens path for a PEM read; on failure fills err with "<path>: <strerror>". */
static FILE *open_pem(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) set_err(err, errlen, path, strerror(errno));
    return f;
}

/* Whoever can read the root key can mint any identity of the mesh: warn when others than the owner may. */
static void warn_key_mode(FILE *f, const char *path)
{
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && (st.st_mode & (S_IRWXG | S_IRWXO)))
        LOG_W("tls", "%s is accessible to group or others (mode %03o); it should be 0600", path,
              (unsigned)(st.st_mode & 0777));
}

struct cert_provider *ca_local_new(const char *dir, char *err, size_t errlen)
{
    return ca_local_new_ttl(dir, CA_DEFAULT_TTL_S, err, errlen);
}

struct cert_provider *ca_local_new_ttl(const char *dir, uint32_t ttl_s, char *err, size_t errlen)
{
    struct ca_local *ca = NULL;
    char cert_path[4096], key_path[4096];
    FILE *f = NULL;

    if (ttl_s < 1 || ttl_s > CA_MAX_TTL_S) {
        if (err && errlen)
            snprintf(err, errlen,
                     "certificate lifetime %us is outside the local CA's range 1s..%us (90 days)",
                     (unsigned)ttl_s, (unsigned)CA_MAX_TTL_S);
        return NULL;
    }
    if (!dir || !*dir) dir = ".";
    if (snprintf(cert_path, sizeof(cert_path), "%s/root-cert.pem", dir) >= (int)sizeof(cert_path) ||
        snprintf(key_path, sizeof(key_path), "%s/root-key.pem", dir) >= (int)sizeof(key_path)) {
        set_err(err, errlen, dir, "path too long");
        return NULL;
    }
    ca = calloc(1, sizeof(*ca));
    if (!ca) {
        set_err(err, errlen, dir, "out of memory");
        return NULL;
    }
    ca->ttl_s = ttl_s;
    ca->base.fetch = ca_local_fetch;
    ca->base.destroy = ca_local_destroy;

    if (!(f = open_pem(cert_path, err, errlen))) goto fail;
    ca->root = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    if (!ca->root) {
        set_err(err, errlen, cert_path, "no PEM certificate");
        goto fail;
    }
    if (X509_check_ca(ca->root) == 0) {
        set_err(err, errlen, cert_path, "not a CA certificate");
        goto fail;
    }
    if (!(f = open_pem(key_path, err, errlen))) goto fail;
    warn_key_mode(f, key_path);
    /* An empty passphrase callback result makes encrypted keys fail instead of prompting on the terminal. */
    ca->root_key = PEM_read_PrivateKey(f, NULL, NULL, (void *)"");
    fclose(f);
    if (!ca->root_key) {
        set_err(err, errlen, key_path, "no readable PEM private key");
        goto fail;
    }
    if (X509_check_private_key(ca->root, ca->root_key) != 1) {
        set_err(err, errlen, key_path, "key does not match root-cert.pem");
        goto fail;
    }
    ERR_clear_error();
    return &ca->base;
fail:
    ca_local_destroy(&ca->base);
    return NULL;
}

/* ---- root generation for tests and scripts ---- */

static int write_pem(const char *path, mode_t mode, X509 *cert, EVP_PKEY *key, char *err, size_t errlen)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0) {
        int e = errno;
        set_err(err, errlen, path, strerror(e));
        return -e;
    }
    FILE *f = fdopen(fd, "w");
    if (!f) {
        int e = errno;
        close(fd);
        set_err(err, errlen, path, strerror(e));
        return -e;
    }
    int ok = cert ? PEM_write_X509(f, cert) : PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL);
    if (fclose(f) != 0) ok = 0;
    if (!ok) {
        set_err(err, errlen, path, "write failed");
        return -EIO;
    }
    return 0;
}

int ca_new_root(const char *org, long ttl_s, X509 **cert_out, EVP_PKEY **key_out, char *err, size_t errlen)
{
    EVP_PKEY *key = NULL;
    X509 *x = NULL;
    X509V3_CTX v3;
    time_t now = time(NULL);
    int rc = -EIO;

    if (!org || !*org) org = "zmesh";
    key = EVP_EC_gen("P-256");
    x = X509_new();
    if (!key || !x) goto out;
    if (!X509_set_version(x, X509_VERSION_3) || set_random_serial(x) < 0) goto out;
    X509_NAME *name = X509_get_subject_name(x);
    if (!X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8, (const unsigned char *)org, -1, -1, 0))
        goto out;
    if (!X509_set_issuer_name(x, name)) goto out;
    if (!ASN1_TIME_set(X509_getm_notBefore(x), now - LEAF_BACKDATE)) goto out;
    if (!ASN1_TIME_set(X509_getm_notAfter(x), now + ttl_s)) goto out;
    if (!X509_set_pubkey(x, key)) goto out;
    X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
    if (add_ext_conf(x, &v3, NID_basic_constraints, "critical,CA:TRUE") < 0) goto out;
    if (add_ext_conf(x, &v3, NID_key_usage, "critical,keyCertSign,cRLSign") < 0) goto out;
    if (add_ext_conf(x, &v3, NID_subject_key_identifier, "hash") < 0) goto out;
    if (X509_sign(x, key, EVP_sha256()) <= 0) goto out;
    *cert_out = x;
    *key_out = key;
    x = NULL;
    key = NULL;
    rc = 0;
out:
    if (rc < 0) set_err(err, errlen, "new root", NULL);
    X509_free(x);
    EVP_PKEY_free(key);
    return rc;
}

int ca_write_root(const char *dir, const char *org, char *err, size_t errlen)
{
    char cert_path[4096], key_path[4096];
    EVP_PKEY *key = NULL;
    X509 *x = NULL;
    int rc;

    if (snprintf(cert_path, sizeof(cert_path), "%s/root-cert.pem", dir) >= (int)sizeof(cert_path) ||
        snprintf(key_path, sizeof(key_path), "%s/root-key.pem", dir) >= (int)sizeof(key_path)) {
        set_err(err, errlen, dir, "path too long");
        return -ENAMETOOLONG;
    }
    if ((rc = ca_new_root(org, ROOT_TTL, &x, &key, err, errlen)) < 0) goto out;
    if ((rc = write_pem(key_path, 0600, NULL, key, err, errlen)) < 0) goto out;
    if ((rc = write_pem(cert_path, 0644, x, NULL, err, errlen)) < 0) goto out;
out:
    X509_free(x);
    EVP_PKEY_free(key);
    return rc;
}
