/* zmeshd's CA core: key material, CSR signing and the authorization of a request (see issuer.h). */
#include "core/err.h"
#include "tls/issuer.h"
#include "tls/pem.h"

#include "core/log.h"
#include "tls/ca.h"
#include "tls/tls.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

/* Longest PEM file read from a CA directory (a root bundle of a few dozen certificates fits). */
#define PEM_FILE_MAX (1024 * 1024)
#define PATH_MAX_LEN 4096

struct ca_issuer {
    X509 *signing;          /* ca-cert.pem */
    EVP_PKEY *key;          /* ca-key.pem */
    STACK_OF(X509) * chain; /* cert-chain.pem, in file order; empty in self-signed mode */
    char *root_pem;         /* root-cert.pem as read */
    long default_ttl_s, max_ttl_s;
};

/* The first OpenSSL error as text, or fallback when the queue is empty; clears the queue. */
static const char *ossl_why(char *buf, size_t n, const char *fallback)
{
    if (ERR_peek_error() == 0) return fallback;
    tls_errstr(buf, n);
    ERR_clear_error();
    return buf;
}

static int join(char *dst, const char *dir, const char *file)
{
    return snprintf(dst, PATH_MAX_LEN, "%s/%s", dir, file) < PATH_MAX_LEN ? 0 : -ENAMETOOLONG;
}

/* Loads and checks a complete directory; plugin = 0 is self-signed mode, which has no cert-chain.pem. */
static int load_dir(const char *dir, int plugin, struct ca_issuer **out, char *err, size_t errlen)
{
    char cert_path[PATH_MAX_LEN], key_path[PATH_MAX_LEN], root_path[PATH_MAX_LEN], chain_path[PATH_MAX_LEN];
    char *text = NULL, ebuf[256];
    STACK_OF(X509) *certs = NULL, *roots = NULL;
    X509_STORE *store = NULL;
    X509_STORE_CTX *vctx = NULL;
    struct ca_issuer *iss = NULL;
    FILE *f = NULL;
    struct stat st;
    int rc = -ENAMETOOLONG;

    *out = NULL;
    if (join(cert_path, dir, CA_ISSUER_CERT_FILE) < 0 || join(key_path, dir, CA_ISSUER_KEY_FILE) < 0 ||
        join(root_path, dir, CA_ISSUER_ROOT_FILE) < 0 || join(chain_path, dir, CA_ISSUER_CHAIN_FILE) < 0) {
        err_setf(err, errlen, "%s: path too long", dir);
        goto out;
    }
    rc = -ENOMEM;
    if (!(iss = calloc(1, sizeof(*iss)))) goto out;
    iss->default_ttl_s = CA_ISSUER_DEFAULT_TTL_S;
    iss->max_ttl_s = CA_ISSUER_MAX_TTL_S;

    /* ca-cert.pem: exactly the signing certificate, a CA. */
    if ((rc = tls_read_text(cert_path, PEM_FILE_MAX, &text, err, errlen)) < 0) goto out;
    if ((rc = tls_pem_certs(cert_path, text, &certs, err, errlen)) < 0) goto out;
    rc = -EINVAL;
    if (sk_X509_num(certs) != 1) {
        err_setf(err, errlen, "%s: holds %d certificates; exactly one (the signing CA) is required",
                 cert_path, sk_X509_num(certs));
        goto out;
    }
    iss->signing = sk_X509_shift(certs);
    if (X509_check_ca(iss->signing) == 0) {
        err_setf(err, errlen, "%s: not a CA certificate (it cannot sign workload certificates)", cert_path);
        goto out;
    }
    free(text);
    text = NULL;

    /* ca-key.pem: the signing key, readable by its owner only. */
    if (!(f = fopen(key_path, "r"))) {
        rc = -errno;
        err_setf(err, errlen, "%s: %s", key_path, strerror(errno));
        goto out;
    }
    if (fstat(fileno(f), &st) == 0 && (st.st_mode & (S_IRWXG | S_IRWXO)))
        LOG_W("tls", "%s is accessible to group or others (mode %03o); it should be 0600", key_path,
              (unsigned)(st.st_mode & 0777));
    /* An empty passphrase makes an encrypted key fail instead of prompting on the terminal. */
    iss->key = PEM_read_PrivateKey(f, NULL, NULL, (void *)"");
    if (!iss->key) {
        err_setf(err, errlen, "%s: no readable PEM private key: %s", key_path,
                 ossl_why(ebuf, sizeof(ebuf), "unreadable"));
        goto out;
    }
    if (X509_check_private_key(iss->signing, iss->key) != 1) {
        ERR_clear_error();
        err_setf(err, errlen, "%s: key does not match %s", key_path, CA_ISSUER_CERT_FILE);
        goto out;
    }

    /* cert-chain.pem (plug-in only): intermediates up to the root, possibly the signing cert itself. */
    if (plugin) {
        if ((rc = tls_read_text(chain_path, PEM_FILE_MAX, &text, err, errlen)) < 0) goto out;
        if ((rc = tls_pem_certs(chain_path, text, &iss->chain, err, errlen)) < 0) goto out;
        free(text);
        text = NULL;
    } else if (!(iss->chain = sk_X509_new_null())) {
        rc = -ENOMEM;
        goto out;
    }

    /* root-cert.pem: one or more roots, kept as text for the response. */
    if ((rc = tls_read_text(root_path, PEM_FILE_MAX, &iss->root_pem, err, errlen)) < 0) goto out;
    if ((rc = tls_pem_certs(root_path, iss->root_pem, &roots, err, errlen)) < 0) goto out;
    rc = -EINVAL;
    if (sk_X509_num(roots) == 0) {
        err_setf(err, errlen, "%s: no PEM certificate", root_path);
        goto out;
    }

    /* As istiod's KeyCertBundle: the signing certificate must verify against the roots through the chain. */
    rc = -ENOMEM;
    if (!(store = X509_STORE_new()) || !(vctx = X509_STORE_CTX_new())) goto out;
    for (int i = 0; i < sk_X509_num(roots); i++)
        if (!X509_STORE_add_cert(store, sk_X509_value(roots, i))) goto out;
    if (!X509_STORE_CTX_init(vctx, store, iss->signing, iss->chain)) goto out;
    if (X509_verify_cert(vctx) != 1) {
        rc = -EINVAL;
        err_setf(err, errlen, "%s: does not verify against %s%s%s: %s", cert_path, CA_ISSUER_ROOT_FILE,
                 plugin ? " through " : "", plugin ? CA_ISSUER_CHAIN_FILE : "",
                 X509_verify_cert_error_string(X509_STORE_CTX_get_error(vctx)));
        goto out;
    }
    *out = iss;
    iss = NULL;
    rc = 0;
out:
    if (rc == -ENOMEM && err && !*err) err_setf(err, errlen, "%s: out of memory", dir);
    if (f) fclose(f);
    free(text);
    sk_X509_pop_free(certs, X509_free);
    sk_X509_pop_free(roots, X509_free);
    X509_STORE_CTX_free(vctx);
    X509_STORE_free(store);
    ca_issuer_free(iss);
    ERR_clear_error();
    return rc;
}

int ca_issuer_load_plugin(const char *dir, struct ca_issuer **out, char *err, size_t errlen)
{
    if (err && errlen) *err = '\0';
    return load_dir(dir, 1, out, err, errlen);
}

/* Writes PEM of cert or key to dir/name through dir/.name.tmp and a rename, so a crash never leaves a
 * truncated file under the real name. */
static int write_pem_atomic(const char *dir, const char *name, mode_t mode, X509 *cert, EVP_PKEY *key,
                            char *err, size_t errlen)
{
    char path[PATH_MAX_LEN], tmp[PATH_MAX_LEN];
    FILE *f = NULL;
    int fd = -1, rc = -ENAMETOOLONG;

    if (join(path, dir, name) < 0 ||
        snprintf(tmp, sizeof(tmp), "%s/.%s.tmp", dir, name) >= (int)sizeof(tmp)) {
        err_setf(err, errlen, "%s: path too long", dir);
        goto out;
    }
    unlink(tmp); /* a leftover from a crash */
    if ((fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)) < 0 || !(f = fdopen(fd, "w"))) {
        rc = -errno;
        err_setf(err, errlen, "%s: %s", tmp, strerror(errno));
        goto out;
    }
    fd = -1;
    int ok = cert ? PEM_write_X509(f, cert) : PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL);
    if (fflush(f) != 0 || fsync(fileno(f)) != 0) ok = 0;
    if (fclose(f) != 0) ok = 0;
    f = NULL;
    if (!ok || rename(tmp, path) != 0) {
        rc = -EIO;
        err_setf(err, errlen, "%s: write failed: %s", path, strerror(errno));
        unlink(tmp);
        goto out;
    }
    rc = 0;
out:
    if (f) fclose(f);
    if (fd >= 0) close(fd);
    ERR_clear_error();
    return rc;
}

int ca_issuer_open_state(const char *dir, const char *org, struct ca_issuer **out, char *err, size_t errlen)
{
    static const char *const files[] = {CA_ISSUER_CERT_FILE, CA_ISSUER_KEY_FILE, CA_ISSUER_ROOT_FILE};
    char path[PATH_MAX_LEN];
    int present = 0, missing = -1, rc;
    X509 *root = NULL;
    EVP_PKEY *key = NULL;

    *out = NULL;
    if (err && errlen) *err = '\0';
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        rc = -errno;
        err_setf(err, errlen, "%s: %s", dir, strerror(errno));
        goto out;
    }
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        if ((rc = join(path, dir, files[i])) < 0) {
            err_setf(err, errlen, "%s: path too long", dir);
            goto out;
        }
        if (access(path, F_OK) == 0)
            present++;
        else if (missing < 0)
            missing = (int)i;
    }
    if (present == 3) {
        rc = load_dir(dir, 0, out, err, errlen);
        goto out;
    }
    if (present != 0) {
        /* A half-written or half-deleted CA: making a new root would silently change every identity's trust
         * anchor, so an operator decides. */
        rc = -ENOENT;
        err_setf(err, errlen,
                 "%s/%s: missing while other CA files are present; restore it, or remove %s, %s and %s "
                 "to make a new root",
                 dir, files[missing], files[0], files[1], files[2]);
        goto out;
    }
    if ((rc = ca_new_root(org, CA_ISSUER_ROOT_TTL_S, &root, &key, err, errlen)) < 0) goto out;
    /* The key first: a crash after it leaves a state the next start reports instead of a root without key. */
    if ((rc = write_pem_atomic(dir, CA_ISSUER_KEY_FILE, 0600, NULL, key, err, errlen)) < 0) goto out;
    if ((rc = write_pem_atomic(dir, CA_ISSUER_CERT_FILE, 0644, root, NULL, err, errlen)) < 0) goto out;
    if ((rc = write_pem_atomic(dir, CA_ISSUER_ROOT_FILE, 0644, root, NULL, err, errlen)) < 0) goto out;
    LOG_I("tls", "created a self-signed root CA (O=%s) in %s", org && *org ? org : "zmesh", dir);
    rc = load_dir(dir, 0, out, err, errlen);
out:
    X509_free(root);
    EVP_PKEY_free(key);
    return rc;
}

void ca_issuer_free(struct ca_issuer *iss)
{
    if (!iss) return;
    X509_free(iss->signing);
    EVP_PKEY_free(iss->key);
    sk_X509_pop_free(iss->chain, X509_free);
    free(iss->root_pem);
    free(iss);
}

int ca_issuer_set_ttl(struct ca_issuer *iss, long default_s, long max_s)
{
    if (default_s < 1 || max_s < 1) return -EINVAL;
    iss->default_ttl_s = default_s;
    iss->max_ttl_s = max_s;
    return 0;
}

const char *ca_issuer_root_pem(const struct ca_issuer *iss)
{
    return iss->root_pem;
}

void ca_chain_free(struct ca_chain *c)
{
    if (!c) return;
    for (size_t i = 0; i < c->n; i++)
        free(c->pem[i]);
    free(c->pem);
    c->pem = NULL;
    c->n = 0;
}

/* Appends a copy of text (or x as PEM when text is NULL) to c. */
static int chain_push(struct ca_chain *c, X509 *x, const char *text)
{
    char *s = NULL, *data;
    char **v = realloc(c->pem, (c->n + 1) * sizeof(*v));
    if (!v) return -ENOMEM;
    c->pem = v;
    if (text) {
        if (!(s = strdup(text))) return -ENOMEM;
    } else {
        BIO *b = BIO_new(BIO_s_mem());
        long n;
        if (!b || !PEM_write_bio_X509(b, x) || (n = BIO_get_mem_data(b, &data)) <= 0 ||
            !(s = malloc((size_t)n + 1))) {
            BIO_free(b);
            return -ENOMEM;
        }
        memcpy(s, data, (size_t)n);
        s[n] = '\0';
        BIO_free(b);
    }
    c->pem[c->n++] = s;
    return 0;
}

/* Go's time.Duration.String() for whole seconds ("2160h0m0s", "5m0s", "1s"), as istiod's TTL error shows. */
static void go_duration(int64_t s, char *buf, size_t n)
{
    const char *sign = s < 0 ? "-" : "";
    uint64_t u = s < 0 ? (uint64_t)(-(s + 1)) + 1 : (uint64_t)s;
    if (u >= 3600)
        snprintf(buf, n, "%s%lluh%llum%llus", sign, (unsigned long long)(u / 3600),
                 (unsigned long long)(u % 3600 / 60), (unsigned long long)(u % 60));
    else if (u >= 60)
        snprintf(buf, n, "%s%llum%llus", sign, (unsigned long long)(u / 60), (unsigned long long)(u % 60));
    else
        snprintf(buf, n, "%s%llus", sign, (unsigned long long)u);
}

/* The key types a workload key may be: what Go's x509 (istiod) signs for, with weak RSA refused. */
static int key_acceptable(EVP_PKEY *k, char *err, size_t errlen)
{
    switch (EVP_PKEY_get_base_id(k)) {
    case EVP_PKEY_RSA:
        if (EVP_PKEY_get_bits(k) >= CA_ISSUER_RSA_MIN_BITS) return 0;
        err_setf(err, errlen, "CSR has a %d-bit RSA key; at least %d bits are required", EVP_PKEY_get_bits(k),
                 CA_ISSUER_RSA_MIN_BITS);
        return -EINVAL;
    case EVP_PKEY_EC: {
        char curve[64] = "";
        size_t len = 0;
        if (EVP_PKEY_get_utf8_string_param(k, "group", curve, sizeof(curve), &len) == 1 &&
            (!strcmp(curve, "prime256v1") || !strcmp(curve, "secp384r1") || !strcmp(curve, "secp521r1")))
            return 0;
        err_setf(err, errlen, "CSR has an EC key on curve \"%s\"; P-256, P-384 or P-521 is required", curve);
        return -EINVAL;
    }
    case EVP_PKEY_ED25519:
        return 0;
    default:
        err_setf(err, errlen, "CSR has an unsupported key type (RSA, ECDSA or Ed25519 is required)");
        return -EINVAL;
    }
}

/* As istiod's certificate template: an expired signing certificate signs nothing, and a leaf never outlives
 * it. Sets *not_after for a leaf of lifetime seconds from now. Returns 0, -EKEYEXPIRED or -EIO. */
static int leaf_end(const struct ca_issuer *iss, time_t now, int64_t lifetime, time_t *not_after, char *err,
                    size_t errlen)
{
    struct tm tm;
    if (X509_cmp_time(X509_get0_notAfter(iss->signing), &now) <= 0) {
        err_setf(err, errlen, "signing certificate (%s) has expired", CA_ISSUER_CERT_FILE);
        return -EKEYEXPIRED;
    }
    if (!ASN1_TIME_to_tm(X509_get0_notAfter(iss->signing), &tm)) {
        err_setf(err, errlen, "signing certificate has an unreadable notAfter");
        return -EIO;
    }
    time_t signing_end = timegm(&tm);
    *not_after = now + (time_t)lifetime;
    if (*not_after > signing_end) *not_after = signing_end;
    return 0;
}

/* Response order (server.go): the leaf, each certificate of the chain file, then the root file whole.
 * Returns 0 or -ENOMEM (out freed by the caller). */
static int answer_chain(const struct ca_issuer *iss, X509 *leaf, struct ca_chain *out)
{
    if (chain_push(out, leaf, NULL) < 0) return -ENOMEM;
    for (int i = 0; i < sk_X509_num(iss->chain); i++)
        if (chain_push(out, sk_X509_value(iss->chain, i), NULL) < 0) return -ENOMEM;
    if (chain_push(out, NULL, iss->root_pem) < 0) return -ENOMEM;
    return 0;
}

int ca_issuer_sign_csr(const struct ca_issuer *iss, const char *csr, size_t len, const struct spiffe_id *id,
                       int64_t ttl_s, struct ca_chain *out, char *err, size_t errlen)
{
    char uri[SPIFFE_MAX], ebuf[256], a[32], b[32];
    X509_REQ *req = NULL;
    EVP_PKEY *pub = NULL;
    X509 *leaf = NULL;
    BIO *bio = NULL;
    time_t now = time(NULL);
    int64_t lifetime;
    int rc = -EINVAL;

    memset(out, 0, sizeof(*out));
    if (err && errlen) *err = '\0';
    if (spiffe_format(id, uri, sizeof(uri)) < 0) {
        err_setf(err, errlen, "identity does not fit a SPIFFE id");
        goto out;
    }
    if (len == 0 || len > CA_ISSUER_CSR_MAX) {
        err_setf(err, errlen, "CSR is empty or larger than %d bytes", CA_ISSUER_CSR_MAX);
        goto out;
    }
    if (!(bio = BIO_new_mem_buf(csr, (int)len))) {
        rc = -ENOMEM;
        goto out;
    }
    if (!(req = PEM_read_bio_X509_REQ(bio, NULL, NULL, NULL))) {
        err_setf(err, errlen, "certificate signing request is not in PEM format: %s",
                 ossl_why(ebuf, sizeof(ebuf), "no CERTIFICATE REQUEST block"));
        goto out;
    }
    if (!(pub = X509_REQ_get_pubkey(req))) {
        err_setf(err, errlen, "CSR public key is unreadable: %s",
                 ossl_why(ebuf, sizeof(ebuf), "unknown type"));
        goto out;
    }
    if ((rc = key_acceptable(pub, err, errlen)) < 0) goto out;
    /* Proof of possession: the CSR is signed by the key it certifies (istiod's csr.CheckSignature). */
    if (X509_REQ_verify(req, pub) != 1) {
        rc = -EINVAL;
        err_setf(err, errlen, "CSR signature does not verify: %s",
                 ossl_why(ebuf, sizeof(ebuf), "signature mismatch"));
        goto out;
    }
    /* istiod's TTL rule: <= 0 is the default; above the maximum is an error (not a clamp). */
    lifetime = ttl_s <= 0 ? iss->default_ttl_s : ttl_s;
    if (ttl_s > iss->max_ttl_s) {
        rc = -ERANGE;
        go_duration(ttl_s, a, sizeof(a));
        go_duration(iss->max_ttl_s, b, sizeof(b));
        err_setf(err, errlen, "requested TTL %s is greater than the max allowed TTL %s", a, b);
        goto out;
    }
    time_t not_after;
    if ((rc = leaf_end(iss, now, lifetime, &not_after, err, errlen)) < 0) goto out;
    rc = -EIO;
    if (!(leaf = ca_sign_leaf(iss->signing, iss->key, pub, uri, now - CA_ISSUER_BACKDATE_S, not_after, err,
                              errlen)))
        goto out;
    rc = answer_chain(iss, leaf, out);
out:
    if (rc == -ENOMEM && err && !*err) err_setf(err, errlen, "out of memory");
    if (rc < 0) ca_chain_free(out);
    X509_free(leaf);
    EVP_PKEY_free(pub);
    X509_REQ_free(req);
    BIO_free(bio);
    ERR_clear_error();
    return rc;
}

int ca_issuer_sign_server(const struct ca_issuer *iss, const char *const *dns, size_t n, int64_t ttl_s,
                          struct ca_chain *out, EVP_PKEY **key, char *err, size_t errlen)
{
    X509 *leaf = NULL;
    time_t now = time(NULL), not_after;
    int rc;

    memset(out, 0, sizeof(*out));
    *key = NULL;
    if (!n || ttl_s <= 0) {
        err_setf(err, errlen, "a serving certificate needs a DNS name and a lifetime");
        return -EINVAL;
    }
    if ((rc = leaf_end(iss, now, ttl_s, &not_after, err, errlen)) < 0) return rc;
    if (!(*key = EVP_EC_gen("P-256"))) {
        err_setf(err, errlen, "cannot make a key");
        ERR_clear_error();
        return -EIO;
    }
    rc = -EIO;
    if ((leaf = ca_sign_leaf_sans(iss->signing, iss->key, *key, NULL, dns, n, now - CA_ISSUER_BACKDATE_S,
                                  not_after, err, errlen)))
        rc = answer_chain(iss, leaf, out);
    if (rc == -ENOMEM) err_setf(err, errlen, "out of memory");
    X509_free(leaf);
    if (rc < 0) {
        ca_chain_free(out);
        EVP_PKEY_free(*key);
        *key = NULL;
    }
    ERR_clear_error();
    return rc;
}

/* ---- authorization ---- */

int ca_trusted_parse(const char *s, struct ca_trusted *out, char *err, size_t errlen)
{
    char *copy = NULL, *save = NULL, *tok;
    int rc = -ENOMEM;

    memset(out, 0, sizeof(*out));
    if (!s) s = CA_TRUSTED_NODE_ACCOUNTS_DEFAULT;
    if (!*s) return 0;
    if (!(copy = strdup(s))) goto out;
    for (tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        char *slash = strchr(tok, '/');
        struct spiffe_id probe;
        struct ca_account *v;
        rc = -EINVAL;
        if (!slash || slash == tok || !slash[1] || strchr(slash + 1, '/') ||
            (size_t)(slash - tok) >= TOKEN_NAME_MAX || strlen(slash + 1) >= TOKEN_NAME_MAX) {
            err_setf(err, errlen, "CA_TRUSTED_NODE_ACCOUNTS: \"%s\" is not <namespace>/<service account>",
                     tok);
            goto out;
        }
        *slash = '\0';
        if (spiffe_set(&probe, NULL, tok, slash + 1) < 0) {
            err_setf(err, errlen,
                     "CA_TRUSTED_NODE_ACCOUNTS: \"%s/%s\" has a character a SPIFFE id cannot carry", tok,
                     slash + 1);
            goto out;
        }
        rc = -ENOMEM;
        if (!(v = realloc(out->v, (out->n + 1) * sizeof(*v)))) goto out;
        out->v = v;
        snprintf(v[out->n].ns, sizeof(v[out->n].ns), "%s", tok);
        snprintf(v[out->n].sa, sizeof(v[out->n].sa), "%s", slash + 1);
        out->n++;
    }
    rc = 0;
out:
    if (rc == -ENOMEM) err_setf(err, errlen, "CA_TRUSTED_NODE_ACCOUNTS: out of memory");
    if (rc < 0) ca_trusted_free(out);
    free(copy);
    return rc;
}

void ca_trusted_free(struct ca_trusted *t)
{
    if (!t) return;
    free(t->v);
    t->v = NULL;
    t->n = 0;
}

int ca_authorize(const struct token_caller *caller, const char *td, const char *impersonate,
                 const struct ca_trusted *trusted, ca_pod_on_node_fn pod_on_node, void *ud,
                 struct spiffe_id *out, char *why, size_t whylen)
{
    struct spiffe_id want;
    int trusted_caller = 0, rc = -EACCES;

    memset(out, 0, sizeof(*out));
    if (!td || !*td) td = "cluster.local";
    if (spiffe_set(out, td, caller->ns, caller->sa) < 0) {
        err_setf(why, whylen, "caller %s/%s does not form a SPIFFE id", caller->ns, caller->sa);
        goto out;
    }
    /* By default a caller gets its own identity (server.go: sans := caller.Identities). */
    if (!impersonate || !*impersonate) {
        rc = 0;
        goto out;
    }
    /* node_auth.go, in its order: the caller may impersonate at all, the identity parses, then a pod of that
     * account runs on the caller's node. */
    if (!trusted || trusted->n == 0) {
        err_setf(why, whylen,
                 "impersonation not allowed, as node authorizer (CA_TRUSTED_NODE_ACCOUNTS) is not "
                 "configured");
        goto out;
    }
    for (size_t i = 0; i < trusted->n && !trusted_caller; i++)
        trusted_caller = !strcmp(trusted->v[i].ns, caller->ns) && !strcmp(trusted->v[i].sa, caller->sa);
    if (!trusted_caller) {
        err_setf(why, whylen,
                 "impersonation failed for identity %s, error: caller (%s/%s) is not allowed to "
                 "impersonate",
                 impersonate, caller->ns, caller->sa);
        goto out;
    }
    /* zmesh also requires the requested id to be of the CA's trust domain (istiod's spiffe.ParseIdentity
     * accepts any), so a node proxy cannot obtain a certificate another mesh would trust. */
    if (spiffe_parse(impersonate, strlen(impersonate), &want) < 0 || strcmp(want.td, td) != 0) {
        err_setf(why, whylen,
                 "impersonation failed for identity %s, error: failed to validate impersonated "
                 "identity (not a SPIFFE id of trust domain %s)",
                 impersonate, td);
        goto out;
    }
    /* istiod reads the caller's node from its pod object; zmeshd's tokens carry it (like node-bound projected
     * tokens), signed by zmeshd itself. */
    if (!caller->node[0]) {
        err_setf(why, whylen,
                 "impersonation failed for identity %s, error: caller's token (%s/%s) is not bound "
                 "to a node",
                 impersonate, caller->ns, caller->sa);
        goto out;
    }
    if (!pod_on_node || pod_on_node(ud, want.ns, want.sa, caller->node) != 1) {
        err_setf(why, whylen,
                 "impersonation failed for identity %s, error: no instances of \"%s/%s\" found on "
                 "node \"%s\"",
                 impersonate, want.ns, want.sa, caller->node);
        goto out;
    }
    *out = want;
    rc = 0;
out:
    if (rc < 0) memset(out, 0, sizeof(*out));
    return rc;
}
