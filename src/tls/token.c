/* zmeshd's bearer tokens: ES256 JWTs shaped like Kubernetes projected service-account tokens. */
#include "core/err.h"
#include "tls/token.h"

#include "tls/spiffe.h"
#include "tls/tls.h"

#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <jwt.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>

/* Kubernetes' service-account username prefix (k8s.io/apiserver pkg/authentication/serviceaccount). */
#define SA_PREFIX "system:serviceaccount:"
/* The private claim of projected tokens. */
#define K8S_CLAIM "kubernetes.io"
/* Longest key file read (a PEM P-256 key is about 250 bytes). */
#define KEY_FILE_MAX 16384

struct token_key {
    char *priv_pem; /* PKCS#8 PEM, what libjwt signs with */
    int priv_len;
    char *pub_pem; /* SubjectPublicKeyInfo PEM, what libjwt verifies with */
    int pub_len;
};

/* Writes key as PEM into a new malloc'd string (private or public half). Returns its length or -EIO. */
static int key_pem(EVP_PKEY *key, int private, char **out)
{
    BIO *b = BIO_new(BIO_s_mem());
    char *data;
    long n;
    int rc = -EIO;

    if (!b) return -ENOMEM;
    if (private ? !PEM_write_bio_PrivateKey(b, key, NULL, NULL, 0, NULL, NULL)
                : !PEM_write_bio_PUBKEY(b, key))
        goto out;
    n = BIO_get_mem_data(b, &data);
    if (n <= 0 || !(*out = malloc((size_t)n + 1))) goto out;
    memcpy(*out, data, (size_t)n);
    (*out)[n] = '\0';
    rc = (int)n;
out:
    BIO_free(b);
    return rc;
}

/* Creates path exclusively (mode 0600) holding a new P-256 key; fills *key. */
static int create_key(const char *path, EVP_PKEY **key, char *err, size_t errlen)
{
    char *pem = NULL;
    int fd = -1, n, rc = -EIO;

    if (!(*key = EVP_EC_gen("P-256"))) {
        err_setf(err, errlen, "%s: cannot generate a P-256 key", path);
        goto out;
    }
    if ((n = key_pem(*key, 1, &pem)) < 0) {
        err_setf(err, errlen, "%s: cannot encode the key", path);
        goto out;
    }
    /* O_EXCL: two zmeshd starting at once must not overwrite each other's key. */
    if ((fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600)) < 0) {
        rc = -errno;
        err_setf(err, errlen, "%s: %s", path, strerror(errno));
        goto out;
    }
    if (write(fd, pem, (size_t)n) != n || fsync(fd) != 0) {
        rc = -EIO;
        err_setf(err, errlen, "%s: write failed: %s", path, strerror(errno));
        unlink(path);
        goto out;
    }
    rc = 0;
out:
    if (fd >= 0) close(fd);
    free(pem);
    ERR_clear_error();
    return rc;
}

int token_key_open(const char *path, struct token_key **out, char *err, size_t errlen)
{
    struct token_key *k = NULL;
    EVP_PKEY *key = NULL;
    FILE *f = NULL;
    int rc = -EIO;

    *out = NULL;
    if (!(f = fopen(path, "r"))) {
        if (errno != ENOENT) {
            rc = -errno;
            err_setf(err, errlen, "%s: %s", path, strerror(errno));
            goto out;
        }
        if ((rc = create_key(path, &key, err, errlen)) < 0) goto out;
    } else {
        struct stat st;
        /* Whoever reads this key can mint a token for any service account, ztunnel's included. */
        if (fstat(fileno(f), &st) == 0 && (st.st_mode & (S_IRWXG | S_IRWXO))) {
            rc = -EPERM;
            snprintf(err, errlen, "%s: accessible to group or others (mode %03o); it must be 0600", path,
                     (unsigned)(st.st_mode & 0777));
            goto out;
        }
        key = PEM_read_PrivateKey(f, NULL, NULL, (void *)"");
        if (!key || EVP_PKEY_get_id(key) != EVP_PKEY_EC || EVP_PKEY_get_bits(key) != 256) {
            rc = -EINVAL;
            err_setf(err, errlen, "%s: not a PEM EC P-256 private key (ES256 needs one)", path);
            goto out;
        }
    }
    if (!(k = calloc(1, sizeof(*k)))) {
        rc = -ENOMEM;
        goto out;
    }
    if ((k->priv_len = key_pem(key, 1, &k->priv_pem)) < 0 ||
        (k->pub_len = key_pem(key, 0, &k->pub_pem)) < 0) {
        rc = -EIO;
        err_setf(err, errlen, "%s: cannot encode the key", path);
        goto out;
    }
    *out = k;
    k = NULL;
    rc = 0;
out:
    if (f) fclose(f);
    EVP_PKEY_free(key);
    token_key_free(k);
    ERR_clear_error();
    return rc;
}

void token_key_free(struct token_key *k)
{
    if (!k) return;
    if (k->priv_pem) OPENSSL_cleanse(k->priv_pem, (size_t)k->priv_len);
    free(k->priv_pem);
    free(k->pub_pem);
    free(k);
}

const char *token_key_public_pem(const struct token_key *k)
{
    return k->pub_pem;
}

/* A name that Kubernetes could have produced and a SPIFFE id can carry: 1..TOKEN_NAME_MAX-1 bytes, no ':'
 * (it separates the parts of sub) and nothing spiffe_set refuses. */
static int name_ok(const char *s)
{
    struct spiffe_id id;
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n >= TOKEN_NAME_MAX || strchr(s, ':')) return 0;
    return spiffe_set(&id, NULL, s, s) == 0;
}

/* An optional name: absent, or a name_ok. */
static int opt_name_ok(const char *s)
{
    return !s || !*s || name_ok(s);
}

/* {"name": name[, "uid": uid]}; NULL on ENOMEM. */
static json_t *ref_obj(const char *name, const char *uid)
{
    json_t *o = json_object();
    if (!o || json_object_set_new(o, "name", json_string(name)) < 0 ||
        (uid && *uid && json_object_set_new(o, "uid", json_string(uid)) < 0)) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* A random UUID (version 4) for jti, as the apiserver sets one per token. */
static int new_jti(char out[37])
{
    unsigned char r[16];
    if (RAND_bytes(r, sizeof(r)) != 1) return -EIO;
    r[6] = (unsigned char)((r[6] & 0x0f) | 0x40);
    r[8] = (unsigned char)((r[8] & 0x3f) | 0x80);
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", r[0], r[1],
             r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12], r[13], r[14], r[15]);
    return 0;
}

int token_mint(const struct token_key *k, const char *issuer, const struct token_subject *s, long ttl_s,
               time_t now, char **out, char *err, size_t errlen)
{
    json_t *claims = NULL, *kube = NULL, *aud = NULL;
    char *json = NULL, *tok = NULL, sub[sizeof(SA_PREFIX) + 2 * TOKEN_NAME_MAX], jti[37];
    jwt_t *j = NULL;
    int rc = -EINVAL;

    *out = NULL;
    if (!issuer) issuer = TOKEN_DEFAULT_ISSUER;
    if (!name_ok(s->ns) || !name_ok(s->sa)) {
        err_setf(err, errlen, "service account \"%s/%s\" is not a valid namespace/name", s->ns ? s->ns : "",
                 s->sa ? s->sa : "");
        goto out;
    }
    if (!opt_name_ok(s->node) || !opt_name_ok(s->pod) ||
        (s->pod_uid && strlen(s->pod_uid) >= TOKEN_NAME_MAX)) {
        err_setf(err, errlen, "node \"%s\" or pod \"%s\" is not a valid name", s->node ? s->node : "",
                 s->pod ? s->pod : "");
        goto out;
    }
    if (ttl_s < 1 || ttl_s > TOKEN_MAX_TTL_S) {
        if (err && errlen)
            snprintf(err, errlen, "token lifetime %lds is outside 1s..%lds", ttl_s, (long)TOKEN_MAX_TTL_S);
        goto out;
    }
    snprintf(sub, sizeof(sub), SA_PREFIX "%s:%s", s->ns, s->sa);
    rc = -ENOMEM;
    if (new_jti(jti) < 0) {
        rc = -EIO;
        goto out;
    }
    if (!(claims = json_object()) || !(kube = json_object()) || !(aud = json_array())) goto out;
    if (json_array_append_new(aud, json_string(TOKEN_AUDIENCE)) < 0) goto out;
    if (json_object_set_new(claims, "iss", json_string(issuer)) < 0 ||
        json_object_set_new(claims, "sub", json_string(sub)) < 0 || json_object_set(claims, "aud", aud) < 0 ||
        json_object_set_new(claims, "iat", json_integer(now)) < 0 ||
        json_object_set_new(claims, "nbf", json_integer(now)) < 0 ||
        json_object_set_new(claims, "exp", json_integer(now + ttl_s)) < 0 ||
        json_object_set_new(claims, "jti", json_string(jti)) < 0)
        goto out;
    if (json_object_set_new(kube, "namespace", json_string(s->ns)) < 0 ||
        json_object_set_new(kube, "serviceaccount", ref_obj(s->sa, NULL)) < 0)
        goto out;
    if (s->pod && *s->pod && json_object_set_new(kube, "pod", ref_obj(s->pod, s->pod_uid)) < 0) goto out;
    if (s->node && *s->node && json_object_set_new(kube, "node", ref_obj(s->node, NULL)) < 0) goto out;
    if (json_object_set(claims, K8S_CLAIM, kube) < 0) goto out;
    if (!(json = json_dumps(claims, JSON_COMPACT))) goto out;
    if (jwt_new(&j) != 0 || jwt_add_grants_json(j, json) != 0) goto out;
    rc = -EIO;
    if (jwt_set_alg(j, JWT_ALG_ES256, (const unsigned char *)k->priv_pem, k->priv_len) != 0) {
        err_setf(err, errlen, "token: libjwt refused the ES256 key");
        goto out;
    }
    if (!(tok = jwt_encode_str(j))) {
        err_setf(err, errlen, "token: signing failed");
        goto out;
    }
    if (strlen(tok) > TOKEN_MAX_LEN) {
        rc = -EINVAL;
        err_setf(err, errlen, "token: longer than TOKEN_MAX_LEN; shorten the names");
        goto out;
    }
    *out = tok;
    tok = NULL;
    rc = 0;
out:
    if (rc == -ENOMEM) err_setf(err, errlen, "token: out of memory");
    free(tok);
    free(json);
    jwt_free(j);
    json_decref(aud);
    json_decref(kube);
    json_decref(claims);
    ERR_clear_error();
    return rc;
}

/* A string member of o copied into dst (dstlen), or refused: absent (unless optional), not a string, or too
 * long. Returns 0 or -EACCES with err naming the claim. */
static int get_str(json_t *o, const char *key, const char *claim, int optional, char *dst, size_t dstlen,
                   char *err, size_t errlen)
{
    json_t *v = o ? json_object_get(o, key) : NULL;
    dst[0] = '\0';
    if (!v && optional) return 0;
    if (!json_is_string(v) || json_string_length(v) >= dstlen ||
        strlen(json_string_value(v)) != json_string_length(v)) {
        err_setf(err, errlen, "claim %s is %s", claim, !v ? "missing" : "not a string of a valid length");
        return -EACCES;
    }
    memcpy(dst, json_string_value(v), json_string_length(v) + 1);
    return 0;
}

/* A NumericDate claim as an integer: -ENOENT when absent (and optional), -EACCES when not an integer. */
static int get_time(json_t *claims, const char *key, int64_t *v, char *err, size_t errlen)
{
    json_t *j = json_object_get(claims, key);
    if (!j) return -ENOENT;
    if (!json_is_integer(j)) {
        err_setf(err, errlen, "claim %s is not an integer NumericDate", key);
        return -EACCES;
    }
    *v = json_integer_value(j);
    return 0;
}

/* The checks on a token whose signature verified; claims is the decoded payload. */
static int check_claims(json_t *claims, const char *issuer, const char *audience, time_t now,
                        struct token_caller *o, char *err, size_t errlen)
{
    char iss[1024], sub[sizeof(SA_PREFIX) + 2 * TOKEN_NAME_MAX], ns[TOKEN_NAME_MAX];
    json_t *aud, *kube, *v;
    int64_t t;
    size_t i;
    int rc, found = 0;

    if (!json_is_object(claims)) {
        err_setf(err, errlen, "payload is not a JSON object");
        return -EACCES;
    }
    if ((rc = get_str(claims, "iss", "iss", 0, iss, sizeof(iss), err, errlen)) < 0) return rc;
    if (strcmp(iss, issuer) != 0) {
        err_setf(err, errlen, "issuer \"%s\" is not \"%s\"", iss, issuer);
        return -EACCES;
    }
    /* RFC 7519 4.1.3: aud is one string or an array of them; projected tokens carry an array. */
    aud = json_object_get(claims, "aud");
    if (json_is_string(aud)) found = strcmp(json_string_value(aud), audience) == 0;
    json_array_foreach(aud, i, v) found |= json_is_string(v) && strcmp(json_string_value(v), audience) == 0;
    if (!found) {
        err_setf(err, errlen, "audience \"%s\" is not among the token's", audience);
        return -EACCES;
    }
    if ((rc = get_time(claims, "exp", &t, err, errlen)) == -ENOENT) {
        err_setf(err, errlen, "claim exp is missing");
        return -EACCES;
    }
    if (rc < 0) return rc;
    if ((int64_t)now > t + TOKEN_LEEWAY_S) {
        err_setf(err, errlen, "token has expired");
        return -EACCES;
    }
    o->exp = t;
    if ((rc = get_time(claims, "nbf", &t, err, errlen)) == -EACCES) return rc;
    if (rc == 0 && t > (int64_t)now + TOKEN_LEEWAY_S) {
        err_setf(err, errlen, "token is not valid yet");
        return -EACCES;
    }
    if ((rc = get_time(claims, "iat", &t, err, errlen)) == -EACCES) return rc;
    if (rc == 0 && t > (int64_t)now + TOKEN_LEEWAY_S) {
        err_setf(err, errlen, "token is issued in the future");
        return -EACCES;
    }

    /* sub names the account; kubernetes.io must say the same (the apiserver reads the latter). */
    if ((rc = get_str(claims, "sub", "sub", 0, sub, sizeof(sub), err, errlen)) < 0) return rc;
    /* The prefix is compared first: only then does sub extend past it. */
    int has_prefix = strncmp(sub, SA_PREFIX, strlen(SA_PREFIX)) == 0;
    const char *rest = has_prefix ? sub + strlen(SA_PREFIX) : sub, *colon = strchr(rest, ':');
    if (!has_prefix || !colon || (size_t)(colon - rest) >= sizeof(o->ns)) {
        err_setf(err, errlen, "sub \"%s\" is not system:serviceaccount:<namespace>:<name>", sub);
        return -EACCES;
    }
    memcpy(o->ns, rest, (size_t)(colon - rest));
    o->ns[colon - rest] = '\0';
    if (strlen(colon + 1) >= sizeof(o->sa)) {
        err_setf(err, errlen, "sub \"%s\" has a service account name too long", sub);
        return -EACCES;
    }
    strcpy(o->sa, colon + 1);
    if (!name_ok(o->ns) || !name_ok(o->sa)) {
        err_setf(err, errlen, "sub \"%s\" does not name a valid namespace and service account", sub);
        return -EACCES;
    }
    kube = json_object_get(claims, K8S_CLAIM);
    if (!json_is_object(kube)) {
        err_setf(err, errlen, "claim " K8S_CLAIM " is missing or not an object");
        return -EACCES;
    }
    if ((rc = get_str(kube, "namespace", K8S_CLAIM ".namespace", 0, ns, sizeof(ns), err, errlen)) < 0)
        return rc;
    char sa[TOKEN_NAME_MAX];
    if ((rc = get_str(json_object_get(kube, "serviceaccount"), "name", K8S_CLAIM ".serviceaccount.name", 0,
                      sa, sizeof(sa), err, errlen)) < 0)
        return rc;
    if (strcmp(ns, o->ns) != 0 || strcmp(sa, o->sa) != 0) {
        err_setf(err, errlen, "sub \"%s\" disagrees with claim " K8S_CLAIM " (%s)", sub, ns);
        return -EACCES;
    }
    json_t *pod = json_object_get(kube, "pod"), *node = json_object_get(kube, "node");
    if ((pod && !json_is_object(pod)) || (node && !json_is_object(node))) {
        err_setf(err, errlen, "claim " K8S_CLAIM ".pod or .node is not an object");
        return -EACCES;
    }
    if (pod &&
        ((rc = get_str(pod, "name", K8S_CLAIM ".pod.name", 0, o->pod, sizeof(o->pod), err, errlen)) < 0 ||
         (rc = get_str(pod, "uid", K8S_CLAIM ".pod.uid", 1, o->pod_uid, sizeof(o->pod_uid), err, errlen)) <
             0))
        return rc;
    if (node &&
        (rc = get_str(node, "name", K8S_CLAIM ".node.name", 0, o->node, sizeof(o->node), err, errlen)) < 0)
        return rc;
    if (!opt_name_ok(o->pod) || !opt_name_ok(o->node)) {
        err_setf(err, errlen, "claim " K8S_CLAIM ".pod.name or .node.name is not a valid name");
        return -EACCES;
    }
    return 0;
}

/* Decodes the protected header (the text before the first '.', base64url without padding) and checks that its
 * "alg" is exactly "ES256". libjwt cannot tell: decoding without a key reports every token as "none". */
static int header_alg_is_es256(const char *tok, char *err, size_t errlen)
{
    size_t n = strcspn(tok, "."), padded = (n + 3) / 4 * 4;
    unsigned char *b64 = NULL, *raw = NULL;
    json_t *h = NULL, *alg;
    int len, rc = -EACCES;

    if (tok[n] != '.' || n == 0) {
        err_setf(err, errlen, "token is not a well-formed JWT (no header)");
        goto out;
    }
    rc = -ENOMEM;
    if (!(b64 = malloc(padded + 1)) || !(raw = malloc(padded / 4 * 3 + 1))) goto out;
    for (size_t i = 0; i < padded; i++)
        b64[i] = i >= n ? '=' : tok[i] == '-' ? '+' : tok[i] == '_' ? '/' : (unsigned char)tok[i];
    b64[padded] = '\0';
    rc = -EACCES;
    /* EVP_DecodeBlock counts padding as zero bytes; the JSON parser below stops at the real end anyway. */
    if ((len = EVP_DecodeBlock(raw, b64, (int)padded)) < 0) {
        err_setf(err, errlen, "token header is not base64url");
        goto out;
    }
    while (len > 0 && raw[len - 1] == '\0')
        len--;
    if (!(h = json_loadb((const char *)raw, (size_t)len, JSON_REJECT_DUPLICATES, NULL)) ||
        !json_is_object(h)) {
        err_setf(err, errlen, "token header is not a JSON object");
        goto out;
    }
    alg = json_object_get(h, "alg");
    if (!json_is_string(alg) || strcmp(json_string_value(alg), "ES256") != 0) {
        err_setf(err, errlen, "token algorithm %s is not ES256",
                 json_is_string(alg) ? json_string_value(alg) : "(none)");
        goto out;
    }
    rc = 0;
out:
    if (rc == -ENOMEM) err_setf(err, errlen, "token: out of memory");
    json_decref(h);
    free(raw);
    free(b64);
    return rc;
}

int token_verify(const struct token_key *k, const char *issuer, const char *audience, const char *tok,
                 size_t len, time_t now, struct token_caller *out, char *err, size_t errlen)
{
    char *buf = NULL, *payload = NULL;
    jwt_t *j = NULL;
    json_t *claims = NULL;
    json_error_t jerr;
    int rc = -EACCES;

    memset(out, 0, sizeof(*out));
    if (!issuer) issuer = TOKEN_DEFAULT_ISSUER;
    if (!audience) audience = TOKEN_AUDIENCE;
    if (len == 0 || len > TOKEN_MAX_LEN || memchr(tok, '\0', len)) {
        if (err && errlen)
            snprintf(err, errlen, "token is empty, longer than %d bytes (TOKEN_MAX_LEN) or holds a NUL byte",
                     TOKEN_MAX_LEN);
        goto out;
    }
    if (!(buf = malloc(len + 1))) {
        rc = -ENOMEM;
        goto out;
    }
    memcpy(buf, tok, len);
    buf[len] = '\0';
    /* The algorithm is pinned before any signature is checked: libjwt verifies with whatever the header
     * names, and would accept an HS256 token keyed with the (public) verification key. */
    if ((rc = header_alg_is_es256(buf, err, errlen)) < 0) goto out;
    rc = -EACCES;
    if (jwt_decode(&j, buf, (const unsigned char *)k->pub_pem, k->pub_len) != 0 || !j) {
        err_setf(err, errlen, "token signature does not verify with zmeshd's key");
        goto out;
    }
    if (jwt_get_alg(j) != JWT_ALG_ES256) { /* the same token, so this cannot differ; checked all the same */
        err_setf(err, errlen, "token algorithm is not ES256");
        goto out;
    }
    if (!(payload = jwt_get_grants_json(j, NULL))) {
        err_setf(err, errlen, "token payload is unreadable");
        goto out;
    }
    if (!(claims = json_loads(payload, JSON_REJECT_DUPLICATES, &jerr))) {
        err_setf(err, errlen, "token payload: %s", jerr.text);
        goto out;
    }
    rc = check_claims(claims, issuer, audience, now, out, err, errlen);
out:
    if (rc < 0) memset(out, 0, sizeof(*out));
    json_decref(claims);
    free(payload);
    jwt_free(j);
    free(buf);
    ERR_clear_error();
    return rc;
}
