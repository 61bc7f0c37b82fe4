/* JWT verification with Envoy jwt_authn / jwt_verify_lib semantics; see jwt.h. */
#include "mesh/jwt.h"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/pct.h"

/* Texts of jwt_verify_lib's getStatusString as Envoy vendors it today (envoyproxy/envoy
 * source/common/jwt/status.cc; google/jwt_verify_lib src/status.cc is the older copy). */
static const char *const status_str[JWT_N_STATUS] = {
    [JWT_OK] = "OK",
    [JWT_MISSED] = "Jwt is missing",
    [JWT_NOT_YET_VALID] = "Jwt not yet valid",
    [JWT_EXPIRED] = "Jwt is expired",
    [JWT_BAD_FORMAT] = "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
    [JWT_HEADER_BAD_BASE64] = "Jwt header is an invalid Base64url encoded",
    [JWT_HEADER_BAD_JSON] = "Jwt header is an invalid JSON",
    [JWT_HEADER_BAD_ALG] = "Jwt header [alg] field is required and must be a string",
    [JWT_HEADER_NOT_IMPLEMENTED_ALG] = "Jwt header [alg] is not supported",
    [JWT_HEADER_BAD_KID] = "Jwt header [kid] field is not a string",
    [JWT_PAYLOAD_BAD_BASE64] = "Jwt payload is an invalid Base64url encoded",
    [JWT_PAYLOAD_BAD_JSON] = "Jwt payload is an invalid JSON",
    [JWT_PAYLOAD_ISS_NOT_STRING] = "Jwt payload [iss] field is not a string",
    [JWT_PAYLOAD_SUB_NOT_STRING] = "Jwt payload [sub] field is not a string",
    [JWT_PAYLOAD_IAT_NOT_INTEGER] = "Jwt payload [iat] field is not an integer",
    [JWT_PAYLOAD_NBF_NOT_INTEGER] = "Jwt payload [nbf] field is not an integer",
    [JWT_PAYLOAD_EXP_NOT_INTEGER] = "Jwt payload [exp] field is not an integer",
    [JWT_PAYLOAD_AUD_NOT_STRING] = "Jwt payload [aud] field is not a string or string list",
    [JWT_SIGNATURE_BAD_BASE64] = "Jwt signature is an invalid Base64url encoded",
    [JWT_UNKNOWN_ISSUER] = "Jwt issuer is not configured",
    [JWT_AUDIENCE_NOT_ALLOWED] = "Audiences in Jwt are not allowed",
    [JWT_VERIFICATION_FAIL] = "Jwt verification fails",
    [JWKS_PARSE_ERROR] = "Jwks is an invalid JSON",
    [JWKS_NO_KEYS] = "Jwks does not have [keys] field",
    [JWKS_BAD_KEYS] = "[keys] in Jwks is not an array",
    [JWKS_NO_VALID_KEYS] = "Jwks doesn't have any valid public key",
    [JWKS_KID_ALG_MISMATCH] = "Jwks doesn't have key to match kid or alg from Jwt",
    [JWKS_PEM_PARSE_ERROR] = "PEM pubkey parse fails",
    [JWKS_FETCH_FAIL] = "Jwks remote fetch is failed",
};

const char *jwt_status_str(enum jwt_status s)
{
    if ((int)s < 0 || s >= JWT_N_STATUS || !status_str[s]) return "Unknown status";
    return status_str[s];
}

/* Strict base64url without padding (RFC 7515 section 2): '=' and the standard alphabet's '+' '/' are
 * refused, and so is a length of 1 mod 4 or non-zero trailing bits. Returns the decoded length or -1. */
static int b64val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '-') return 62;
    if (c == '_') return 63;
    return -1;
}

static long b64url_decode(const char *in, size_t len, unsigned char **out)
{
    if (len % 4 == 1) return -1;
    unsigned char *buf = malloc(len * 3 / 4 + 1);
    if (!buf) return -1;
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        int v = b64val((unsigned char)in[i]);
        if (v < 0) {
            free(buf);
            return -1;
        }
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            buf[o++] = (unsigned char)(acc >> bits);
        }
    }
    if (bits > 0 && (acc & ((1u << bits) - 1)) != 0) { /* non-canonical trailing bits */
        free(buf);
        return -1;
    }
    buf[o] = 0;
    *out = buf;
    return (long)o;
}

static char *xstrdup(const char *s)
{
    return s ? strdup(s) : NULL;
}

/* ---- JWKS ---- */

static BIGNUM *b64_bn(const char *s)
{
    unsigned char *raw;
    long n = b64url_decode(s, strlen(s), &raw);
    if (n <= 0) {
        if (n == 0) free(raw);
        return NULL;
    }
    BIGNUM *bn = BN_bin2bn(raw, (int)n, NULL);
    free(raw);
    return bn;
}

static const char *jstr(json_t *o, const char *k, bool *bad)
{
    json_t *v = json_object_get(o, k);
    if (!v) return NULL;
    if (!json_is_string(v)) {
        *bad = true;
        return NULL;
    }
    return json_string_value(v);
}

static EVP_PKEY *fromdata(const char *type, OSSL_PARAM_BLD *bld)
{
    OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(bld);
    EVP_PKEY *pkey = NULL;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, type, NULL);
    if (params && ctx && EVP_PKEY_fromdata_init(ctx) == 1)
        if (EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) != 1) pkey = NULL;
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    return pkey;
}

static EVP_PKEY *rsa_key(json_t *k, size_t i, char *err, size_t errlen)
{
    bool bad = false;
    const char *n = jstr(k, "n", &bad);
    if (!n) {
        snprintf(err, errlen, "keys[%zu].n: %s", i, bad ? "not a string" : "missing");
        return NULL;
    }
    const char *e = jstr(k, "e", &bad);
    if (!e) {
        snprintf(err, errlen, "keys[%zu].e: %s", i, bad ? "not a string" : "missing");
        return NULL;
    }
    BIGNUM *bn = b64_bn(n), *be = b64_bn(e);
    EVP_PKEY *pkey = NULL;
    if (!bn || !be) {
        snprintf(err, errlen, "keys[%zu].%s: not valid base64url", i, !bn ? "n" : "e");
    } else {
        OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
        if (bld && OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn) &&
            OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, be))
            pkey = fromdata("RSA", bld);
        OSSL_PARAM_BLD_free(bld);
        if (!pkey) snprintf(err, errlen, "keys[%zu].n: not a valid RSA public key", i);
    }
    BN_free(bn);
    BN_free(be);
    return pkey;
}

static EVP_PKEY *ec_key(json_t *k, size_t i, int *nid, char *err, size_t errlen)
{
    bool bad = false;
    const char *crv = jstr(k, "crv", &bad);
    const char *group;
    size_t clen;
    if (crv && strcmp(crv, "P-256") == 0) {
        group = "P-256", clen = 32, *nid = NID_X9_62_prime256v1;
    } else if (crv && strcmp(crv, "P-384") == 0) {
        group = "P-384", clen = 48, *nid = NID_secp384r1;
    } else {
        snprintf(err, errlen, "keys[%zu].crv: %s", i,
                 bad   ? "not a string"
                 : crv ? "unsupported curve (P-256, P-384)"
                       : "missing");
        return NULL;
    }
    const char *fx[2] = {"x", "y"};
    unsigned char pt[1 + 2 * 48];
    pt[0] = 0x04; /* uncompressed point */
    for (int j = 0; j < 2; j++) {
        const char *s = jstr(k, fx[j], &bad);
        if (!s) {
            snprintf(err, errlen, "keys[%zu].%s: %s", i, fx[j], bad ? "not a string" : "missing");
            return NULL;
        }
        unsigned char *raw;
        long n = b64url_decode(s, strlen(s), &raw);
        if (n < 0 || (size_t)n != clen) {
            if (n >= 0) free(raw);
            snprintf(err, errlen, "keys[%zu].%s: not %zu bytes of base64url", i, fx[j], clen);
            return NULL;
        }
        memcpy(pt + 1 + j * clen, raw, clen);
        free(raw);
    }
    EVP_PKEY *pkey = NULL;
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    if (bld && OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, group, 0) &&
        OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, pt, 1 + 2 * clen))
        pkey = fromdata("EC", bld);
    OSSL_PARAM_BLD_free(bld);
    /* fromdata does not check that the point is on the curve; a public-key check does. */
    if (pkey) {
        EVP_PKEY_CTX *c = EVP_PKEY_CTX_new(pkey, NULL);
        if (!c || EVP_PKEY_public_check(c) != 1) {
            EVP_PKEY_free(pkey);
            pkey = NULL;
        }
        EVP_PKEY_CTX_free(c);
    }
    if (!pkey) snprintf(err, errlen, "keys[%zu].x: not a point on %s", i, group);
    return pkey;
}

static enum jwt_status parse_pem(const char *text, size_t len, struct jwt_jwks *out, char *err, size_t errlen)
{
    BIO *bio = BIO_new_mem_buf(text, (int)len);
    EVP_PKEY *pkey = bio ? PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);
    if (!pkey) {
        snprintf(err, errlen, "jwks: not a JSON key set nor a PEM public key");
        return JWKS_PEM_PARSE_ERROR;
    }
    out->keys = calloc(1, sizeof(*out->keys));
    if (!out->keys) {
        EVP_PKEY_free(pkey);
        return JWKS_PEM_PARSE_ERROR;
    }
    out->n = 1;
    out->keys[0].pkey = pkey;
    if (EVP_PKEY_is_a(pkey, "EC")) {
        char g[32];
        out->keys[0].kty = JWT_KTY_EC;
        if (EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_GROUP_NAME, g, sizeof(g), NULL))
            out->keys[0].ec_nid = OBJ_sn2nid(g) != NID_undef ? OBJ_sn2nid(g) : EC_curve_nist2nid(g);
    } else if (EVP_PKEY_is_a(pkey, "RSA")) {
        out->keys[0].kty = JWT_KTY_RSA;
    } else {
        jwt_jwks_free(out);
        snprintf(err, errlen, "jwks: PEM key is neither RSA nor EC");
        return JWKS_PEM_PARSE_ERROR;
    }
    return JWT_OK;
}

enum jwt_status jwt_jwks_parse(const char *text, size_t len, struct jwt_jwks *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    if (errlen) err[0] = 0;
    json_error_t je;
    json_t *root = json_loadb(text, len, 0, &je);
    if (!root) {
        /* jwt_verify_lib's Jwks::createFrom takes a JWKS or a PEM; Envoy's local_jwks inline_string
         * accepts both too, so a text that is not JSON is tried as PEM. */
        if (len > 10 && memmem(text, len, "-----BEGIN", 10)) return parse_pem(text, len, out, err, errlen);
        snprintf(err, errlen, "jwks: invalid JSON: %s", je.text);
        return JWKS_PARSE_ERROR;
    }
    enum jwt_status st = JWT_OK;
    json_t *keys = json_object_get(root, "keys");
    if (!keys) {
        snprintf(err, errlen, "jwks.keys: missing");
        st = JWKS_NO_KEYS;
        goto done;
    }
    if (!json_is_array(keys)) {
        snprintf(err, errlen, "jwks.keys: not an array");
        st = JWKS_BAD_KEYS;
        goto done;
    }
    size_t nk = json_array_size(keys);
    out->keys = calloc(nk ? nk : 1, sizeof(*out->keys));
    if (!out->keys) {
        st = JWKS_PARSE_ERROR;
        goto done;
    }
    for (size_t i = 0; i < nk; i++) {
        json_t *k = json_array_get(keys, i);
        bool bad = false;
        if (!json_is_object(k)) {
            snprintf(err, errlen, "keys[%zu]: not an object", i);
            st = JWKS_BAD_KEYS;
            goto done;
        }
        const char *kty = jstr(k, "kty", &bad);
        const char *kid = jstr(k, "kid", &bad);
        const char *alg = jstr(k, "alg", &bad);
        if (bad) {
            snprintf(err, errlen, "keys[%zu]: kty, kid and alg must be strings", i);
            st = JWKS_BAD_KEYS;
            goto done;
        }
        if (!kty) {
            snprintf(err, errlen, "keys[%zu].kty: missing", i);
            st = JWKS_BAD_KEYS;
            goto done;
        }
        struct jwt_key *key = &out->keys[out->n];
        EVP_PKEY *pk;
        if (strcmp(kty, "RSA") == 0) {
            /* jwt_verify_lib: an RSA key's alg, when present, must start with RS or PS. */
            if (alg && strncmp(alg, "RS", 2) != 0 && strncmp(alg, "PS", 2) != 0) {
                snprintf(err, errlen, "keys[%zu].alg: %s is not an RSA algorithm", i, alg);
                st = JWKS_BAD_KEYS;
                goto done;
            }
            key->kty = JWT_KTY_RSA;
            pk = rsa_key(k, i, err, errlen);
        } else if (strcmp(kty, "EC") == 0) {
            if (alg && strncmp(alg, "ES", 2) != 0) {
                snprintf(err, errlen, "keys[%zu].alg: %s is not an EC algorithm", i, alg);
                st = JWKS_BAD_KEYS;
                goto done;
            }
            key->kty = JWT_KTY_EC;
            pk = ec_key(k, i, &key->ec_nid, err, errlen);
        } else {
            /* oct (HS*) and OKP (EdDSA) are not supported; jwt_verify_lib skips keys it cannot use. */
            continue;
        }
        if (!pk) {
            st = JWKS_BAD_KEYS;
            goto done;
        }
        key->pkey = pk;
        key->kid = xstrdup(kid);
        key->alg = xstrdup(alg);
        out->n++;
    }
    if (out->n == 0) {
        snprintf(err, errlen, "jwks.keys: no RSA or EC key");
        st = JWKS_NO_VALID_KEYS;
    }
done:
    json_decref(root);
    if (st != JWT_OK) jwt_jwks_free(out);
    return st;
}

void jwt_jwks_free(struct jwt_jwks *jwks)
{
    for (size_t i = 0; i < jwks->n; i++) {
        EVP_PKEY_free(jwks->keys[i].pkey);
        free(jwks->keys[i].kid);
        free(jwks->keys[i].alg);
    }
    free(jwks->keys);
    jwks->keys = NULL;
    jwks->n = 0;
}

/* ---- tokens ---- */

struct alg_info {
    const char *name;
    enum jwt_kty kty;
    const char *md;
    bool pss;
    int ec_nid;
    size_t ec_len; /* bytes of r (and of s) in the JOSE signature */
};

/* HS* (a shared secret) and none are refused: RequestAuthentication only carries public keys. */
static const struct alg_info algs[] = {
    {"RS256", JWT_KTY_RSA, "SHA256", false, 0, 0},
    {"RS384", JWT_KTY_RSA, "SHA384", false, 0, 0},
    {"RS512", JWT_KTY_RSA, "SHA512", false, 0, 0},
    {"PS256", JWT_KTY_RSA, "SHA256", true, 0, 0},
    {"ES256", JWT_KTY_EC, "SHA256", false, NID_X9_62_prime256v1, 32},
    {"ES384", JWT_KTY_EC, "SHA384", false, NID_secp384r1, 48},
};

/* JOSE ECDSA signatures are r||s (RFC 7518 section 3.4); OpenSSL wants DER. */
static unsigned char *ec_sig_der(const unsigned char *sig, size_t len, size_t half, size_t *der_len)
{
    if (len != 2 * half) return NULL;
    ECDSA_SIG *es = ECDSA_SIG_new();
    BIGNUM *r = BN_bin2bn(sig, (int)half, NULL), *s = BN_bin2bn(sig + half, (int)half, NULL);
    if (!es || !r || !s || ECDSA_SIG_set0(es, r, s) != 1) {
        BN_free(r);
        BN_free(s);
        ECDSA_SIG_free(es);
        return NULL;
    }
    unsigned char *der = NULL;
    int n = i2d_ECDSA_SIG(es, &der);
    ECDSA_SIG_free(es);
    if (n <= 0) return NULL;
    *der_len = (size_t)n;
    return der;
}

static bool verify_sig(const struct alg_info *a, EVP_PKEY *pkey, const char *input, size_t in_len,
                       const unsigned char *sig, size_t sig_len)
{
    unsigned char *der = NULL;
    size_t der_len = 0;
    if (a->kty == JWT_KTY_EC) {
        der = ec_sig_der(sig, sig_len, a->ec_len, &der_len);
        if (!der) return false;
        sig = der, sig_len = der_len;
    }
    EVP_MD_CTX *mc = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pc = NULL;
    bool ok = mc && EVP_DigestVerifyInit_ex(mc, &pc, a->md, NULL, NULL, pkey, NULL) == 1;
    if (ok && a->pss)
        ok = EVP_PKEY_CTX_set_rsa_padding(pc, RSA_PKCS1_PSS_PADDING) == 1 &&
             EVP_PKEY_CTX_set_rsa_pss_saltlen(pc, RSA_PSS_SALTLEN_DIGEST) == 1;
    ok = ok && EVP_DigestVerify(mc, sig, sig_len, (const unsigned char *)input, in_len) == 1;
    EVP_MD_CTX_free(mc);
    OPENSSL_free(der);
    return ok;
}

static json_t *decode_json(const char *s, size_t len, bool *bad_b64)
{
    unsigned char *raw;
    long n = b64url_decode(s, len, &raw);
    *bad_b64 = n < 0;
    if (n < 0) return NULL;
    json_t *j = json_loadb((const char *)raw, (size_t)n, JSON_REJECT_DUPLICATES, NULL);
    free(raw);
    if (j && !json_is_object(j)) {
        json_decref(j);
        return NULL;
    }
    return j;
}

/* jwt_verify_lib reads exp/nbf/iat as integers; jansson gives a real for 1.5e9, which is refused too. */
static bool int_claim(json_t *p, const char *k, int64_t *v)
{
    json_t *j = json_object_get(p, k);
    *v = 0;
    if (!j) return true;
    if (!json_is_integer(j) || json_integer_value(j) < 0) return false;
    *v = json_integer_value(j);
    return true;
}

enum jwt_status jwt_verify(const char *token, size_t len, const struct jwt_rule *rule,
                           const struct jwt_jwks *jwks, int64_t now, struct jwt_result *out)
{
    memset(out, 0, sizeof(*out));
    const char *d1 = memchr(token, '.', len);
    const char *d2 = d1 ? memchr(d1 + 1, '.', len - (size_t)(d1 + 1 - token)) : NULL;
    if (!d1 || !d2 || memchr(d2 + 1, '.', len - (size_t)(d2 + 1 - token))) return JWT_BAD_FORMAT;
    size_t hlen = (size_t)(d1 - token), plen = (size_t)(d2 - d1 - 1), slen = len - (size_t)(d2 + 1 - token);

    bool bad;
    enum jwt_status st = JWT_OK;
    json_t *hdr = decode_json(token, hlen, &bad), *pl = NULL;
    unsigned char *sig = NULL;
    if (!hdr) return bad ? JWT_HEADER_BAD_BASE64 : JWT_HEADER_BAD_JSON;
    json_t *jalg = json_object_get(hdr, "alg"), *jkid = json_object_get(hdr, "kid");
    const struct alg_info *a = NULL;
    if (!json_is_string(jalg)) {
        st = JWT_HEADER_BAD_ALG;
        goto out;
    }
    for (size_t i = 0; i < sizeof(algs) / sizeof(algs[0]); i++)
        if (strcmp(json_string_value(jalg), algs[i].name) == 0) a = &algs[i];
    if (!a) {
        st = JWT_HEADER_NOT_IMPLEMENTED_ALG;
        goto out;
    }
    if (jkid && !json_is_string(jkid)) {
        st = JWT_HEADER_BAD_KID;
        goto out;
    }
    pl = decode_json(d1 + 1, plen, &bad);
    if (!pl) {
        st = bad ? JWT_PAYLOAD_BAD_BASE64 : JWT_PAYLOAD_BAD_JSON;
        goto out;
    }
    json_t *jiss = json_object_get(pl, "iss"), *jsub = json_object_get(pl, "sub");
    json_t *jaud = json_object_get(pl, "aud"), *jazp = json_object_get(pl, "azp");
    if (jiss && !json_is_string(jiss)) {
        st = JWT_PAYLOAD_ISS_NOT_STRING;
        goto out;
    }
    if (jsub && !json_is_string(jsub)) {
        st = JWT_PAYLOAD_SUB_NOT_STRING;
        goto out;
    }
    int64_t exp, nbf, iat;
    if (!int_claim(pl, "iat", &iat)) {
        st = JWT_PAYLOAD_IAT_NOT_INTEGER;
        goto out;
    }
    if (!int_claim(pl, "nbf", &nbf)) {
        st = JWT_PAYLOAD_NBF_NOT_INTEGER;
        goto out;
    }
    if (!int_claim(pl, "exp", &exp)) {
        st = JWT_PAYLOAD_EXP_NOT_INTEGER;
        goto out;
    }
    if (jaud && !json_is_string(jaud)) {
        bool okaud = json_is_array(jaud);
        size_t i;
        json_t *v;
        json_array_foreach(jaud, i, v) okaud = okaud && json_is_string(v);
        if (!okaud) {
            st = JWT_PAYLOAD_AUD_NOT_STRING;
            goto out;
        }
    }
    long sl = b64url_decode(d2 + 1, slen, &sig);
    if (sl <= 0) {
        if (sl == 0) free(sig);
        sig = NULL;
        /* An empty signature is a format error in jwt_verify_lib (it would allow alg none tokens). */
        st = sl == 0 ? JWT_BAD_FORMAT : JWT_SIGNATURE_BAD_BASE64;
        goto out;
    }
    /* Issuer: Envoy picks the provider by iss, so a token for another issuer is "not configured". */
    const char *iss = jiss ? json_string_value(jiss) : "";
    if (!rule->issuer || strcmp(iss, rule->issuer) != 0) {
        st = JWT_UNKNOWN_ISSUER;
        goto out;
    }
    if (nbf && now + JWT_CLOCK_SKEW_S < nbf) {
        st = JWT_NOT_YET_VALID;
        goto out;
    }
    if (exp && now - JWT_CLOCK_SKEW_S > exp) {
        st = JWT_EXPIRED;
        goto out;
    }
    if (rule->n_audiences) {
        bool match = false;
        for (size_t r = 0; r < rule->n_audiences && !match; r++) {
            if (json_is_string(jaud)) match = strcmp(json_string_value(jaud), rule->audiences[r]) == 0;
            size_t i;
            json_t *v;
            json_array_foreach(jaud, i, v) match =
                match || strcmp(json_string_value(v), rule->audiences[r]) == 0;
        }
        if (!match) {
            st = JWT_AUDIENCE_NOT_ALLOWED;
            goto out;
        }
    }
    /* Key selection as jwt_verify_lib verifyJwt: with a kid, only keys of that kid (or without one); without,
     * every key of the alg's type (and the same alg when the key names one). No candidate at all is
     * JwksKidAlgMismatch; candidates that all fail are JwtVerificationFail. */
    const char *kid = jkid ? json_string_value(jkid) : NULL;
    bool tried = false, ok = false;
    for (size_t i = 0; i < jwks->n && !ok; i++) {
        const struct jwt_key *k = &jwks->keys[i];
        if (kid && k->kid && strcmp(kid, k->kid) != 0) continue;
        if (k->kty != a->kty) continue;
        if (k->alg && strcmp(k->alg, a->name) != 0) continue;
        if (a->kty == JWT_KTY_EC && k->ec_nid != a->ec_nid) continue;
        tried = true;
        ok = verify_sig(a, k->pkey, token, (size_t)(d2 - token), sig, (size_t)sl);
    }
    if (!ok) {
        st = tried ? JWT_VERIFICATION_FAIL : JWKS_KID_ALG_MISMATCH;
        goto out;
    }
    const char *sub = jsub ? json_string_value(jsub) : "";
    size_t plen2 = strlen(iss) + 1 + strlen(sub) + 1;
    out->principal = malloc(plen2);
    if (out->principal) snprintf(out->principal, plen2, "%s/%s", iss, sub);
    out->issuer = strdup(iss);
    out->subject = strdup(sub);
    out->presenter = json_is_string(jazp) ? strdup(json_string_value(jazp)) : NULL;
    size_t na = json_is_string(jaud) ? 1 : json_array_size(jaud);
    out->audiences = calloc(na ? na : 1, sizeof(char *));
    if (out->audiences) {
        if (json_is_string(jaud)) out->audiences[out->n_audiences++] = strdup(json_string_value(jaud));
        size_t i;
        json_t *v;
        json_array_foreach(jaud, i, v) out->audiences[out->n_audiences++] = strdup(json_string_value(v));
    }
    out->claims = json_incref(pl);
out:
    free(sig);
    json_decref(hdr);
    json_decref(pl);
    return st;
}

void jwt_result_free(struct jwt_result *r)
{
    free(r->principal);
    free(r->issuer);
    free(r->subject);
    free(r->presenter);
    for (size_t i = 0; i < r->n_audiences; i++)
        free(r->audiences[i]);
    free(r->audiences);
    json_decref(r->claims);
    memset(r, 0, sizeof(*r));
}

const json_t *jwt_claim(const struct jwt_result *r, const char *const *path, size_t n)
{
    const json_t *j = r->claims;
    for (size_t i = 0; i < n && j; i++)
        j = json_is_object(j) ? json_object_get(j, path[i]) : NULL;
    return n ? j : NULL;
}

int jwt_claim_strings(const struct jwt_result *r, const char *const *path, size_t n, char **vals, size_t max)
{
    const json_t *j = jwt_claim(r, path, n);
    if (!j || json_is_object(j)) return -1;
    int c = 0;
    if (json_is_array(j)) {
        size_t i;
        const json_t *v;
        json_array_foreach(j, i, v) if (json_is_string(v) && (size_t)c < max) vals[c++] =
            strdup(json_string_value(v));
        return c;
    }
    if (max == 0) return 0;
    if (json_is_string(j))
        vals[c++] = strdup(json_string_value(j));
    else
        vals[c++] = json_dumps(j, JSON_ENCODE_ANY);
    return c;
}

/* ---- extraction ---- */

bool jwt_param_name_eq(const char *s, size_t n, const char *name, size_t nl)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++, k++) {
        char c = s[i];
        int b = pct_escape(s, n, i);
        if (b >= 0) {
            c = (char)b;
            i += 2;
        }
        if (k >= nl || name[k] != c) return false;
    }
    return k == nl;
}

/* The first parameter whose name, percent-decoded, is `name` (Envoy's parseAndDecodeQueryString then
 * getFirstValue): its raw (still encoded) value. An empty value is no token. */
static bool find_param(const char *path, const char *name, const char **tok, size_t *tok_len)
{
    const char *q = path ? strchr(path, '?') : NULL;
    size_t nl = strlen(name);
    while (q) {
        q++;
        const char *end = strchr(q, '&');
        size_t seg = end ? (size_t)(end - q) : strlen(q);
        const char *hash = memchr(q, '#', seg);
        if (hash) seg = (size_t)(hash - q);
        const char *eq = memchr(q, '=', seg);
        size_t kl = eq ? (size_t)(eq - q) : seg;
        if (jwt_param_name_eq(q, kl, name, nl)) {
            /* Envoy takes the first occurrence, even an empty one (then no token is found). */
            *tok = eq ? eq + 1 : q + seg;
            *tok_len = eq ? seg - kl - 1 : 0;
            return *tok_len > 0;
        }
        q = hash ? NULL : end;
    }
    return false;
}

static bool find_cookie(const char *cookies, const char *name, const char **tok, size_t *tok_len)
{
    size_t nl = strlen(name);
    const char *p = cookies;
    while (p && *p) {
        while (*p == ' ' || *p == ';')
            p++;
        const char *end = strchr(p, ';');
        size_t seg = end ? (size_t)(end - p) : strlen(p);
        if (seg > nl && strncmp(p, name, nl) == 0 && p[nl] == '=') {
            *tok = p + nl + 1;
            *tok_len = seg - nl - 1;
            if (*tok_len >= 2 && (*tok)[0] == '"' && (*tok)[*tok_len - 1] == '"') (*tok)++, *tok_len -= 2;
            return *tok_len > 0;
        }
        p = end;
    }
    return false;
}

bool jwt_extract(const struct jwt_locations *loc, jwt_header_fn get, void *ctx, const char *path,
                 const char **tok, size_t *tok_len)
{
    static const struct jwt_from_header def_hdr = {"authorization", "Bearer "};
    static const char *const def_param[] = {"access_token"};
    bool defaults = !loc || (loc->n_headers == 0 && loc->n_params == 0 && loc->n_cookies == 0);
    const struct jwt_from_header *hs = defaults ? &def_hdr : loc->headers;
    size_t nh = defaults ? 1 : loc->n_headers;
    const char *const *ps = defaults ? def_param : loc->params;
    size_t np = defaults ? 1 : loc->n_params;
    for (size_t i = 0; i < nh; i++) {
        const char *v = get(ctx, hs[i].name);
        if (!v) continue;
        const char *pre = hs[i].prefix ? hs[i].prefix : "";
        if (*pre) {
            /* Envoy's extractor (extractor.cc extract, extractJWT): the prefix anywhere in the value,
             * case-sensitive; the token starts at the first base64url or '.' character after it and runs to
             * the end of the value (verification judges the rest); with no such character, the whole value.
             */
            const char *at = strstr(v, pre);
            if (!at) continue;
            const char *t = at + strlen(pre);
            t += strcspn(t, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.");
            if (*t) v = t;
        }
        size_t n = strlen(v);
        if (n == 0) continue;
        *tok = v, *tok_len = n;
        return true;
    }
    for (size_t i = 0; i < np; i++)
        if (find_param(path, ps[i], tok, tok_len)) return true;
    if (!defaults && loc->n_cookies) {
        const char *c = get(ctx, "cookie");
        for (size_t i = 0; c && i < loc->n_cookies; i++)
            if (find_cookie(c, loc->cookies[i], tok, tok_len)) return true;
    }
    return false;
}

int jwt_www_authenticate(char *buf, size_t len, const char *host, const char *path, enum jwt_status s)
{
    size_t pl = strcspn(path ? path : "", "?");
    if (s == JWT_MISSED) return snprintf(buf, len, "Bearer realm=\"http://%s%.*s\"", host, (int)pl, path);
    return snprintf(buf, len, "Bearer realm=\"http://%s%.*s\", error=\"invalid_token\"", host, (int)pl, path);
}

int jwt_status_http_code(enum jwt_status s)
{
    return s == JWT_AUDIENCE_NOT_ALLOWED ? 403 : 401;
}

/* ---- the verified-token cache ---- */

#define JWT_CACHE_BUCKETS 256 /* a power of two */

struct jwt_cache_entry {
    struct jwt_cache_entry *hnext;       /* bucket chain */
    struct jwt_cache_entry *prev, *next; /* LRU list, head = most recently used */
    uint64_t h;
    char *tok;
    size_t len;
    int64_t exp; /* 0: none */
    struct jwt_result res;
};

struct jwt_cache {
    pthread_mutex_t mu;
    size_t cap, n;
    uint64_t hits, misses;
    struct jwt_cache_entry *head, *tail;
    struct jwt_cache_entry *buckets[JWT_CACHE_BUCKETS];
};

struct jwt_cache *jwt_cache_new(size_t cap)
{
    struct jwt_cache *c = calloc(1, sizeof(*c));
    if (!c) return NULL;
    pthread_mutex_init(&c->mu, NULL);
    c->cap = cap ? cap : JWT_CACHE_DEFAULT_SIZE;
    return c;
}

static void entry_free(struct jwt_cache_entry *e)
{
    jwt_result_free(&e->res);
    free(e->tok);
    free(e);
}

void jwt_cache_free(struct jwt_cache *c)
{
    if (!c) return;
    for (struct jwt_cache_entry *e = c->head, *n; e; e = n) {
        n = e->next;
        entry_free(e);
    }
    pthread_mutex_destroy(&c->mu);
    free(c);
}

/* FNV-1a, 64 bits: the bucket and a quick inequality test before memcmp. */
static uint64_t tok_hash(const char *s, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 0x100000001b3ull;
    return h;
}

static void lru_unlink(struct jwt_cache *c, struct jwt_cache_entry *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        c->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        c->tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_front(struct jwt_cache *c, struct jwt_cache_entry *e)
{
    e->next = c->head;
    e->prev = NULL;
    if (c->head) c->head->prev = e;
    c->head = e;
    if (!c->tail) c->tail = e;
}

static void cache_remove(struct jwt_cache *c, struct jwt_cache_entry *e)
{
    struct jwt_cache_entry **pp = &c->buckets[e->h & (JWT_CACHE_BUCKETS - 1)];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    lru_unlink(c, e);
    c->n--;
    entry_free(e);
}

static char **strs_dup(char *const *v, size_t n)
{
    char **o = calloc(n ? n : 1, sizeof(char *));
    for (size_t i = 0; o && i < n; i++)
        if (!(o[i] = strdup(v[i]))) {
            while (i--)
                free(o[i]);
            free(o);
            return NULL;
        }
    return o;
}

/* A copy the caller owns (the claims shared: jansson's reference counts are atomic, and nobody writes them).
 */
static bool result_copy(const struct jwt_result *s, struct jwt_result *d)
{
    memset(d, 0, sizeof(*d));
    d->principal = strdup(s->principal ? s->principal : "");
    d->issuer = strdup(s->issuer ? s->issuer : "");
    d->subject = strdup(s->subject ? s->subject : "");
    d->presenter = s->presenter ? strdup(s->presenter) : NULL;
    d->audiences = strs_dup(s->audiences, s->n_audiences);
    if (d->audiences) d->n_audiences = s->n_audiences;
    d->claims = json_incref(s->claims);
    if (!d->principal || !d->issuer || !d->subject || (s->presenter && !d->presenter) || !d->audiences) {
        jwt_result_free(d);
        return false;
    }
    return true;
}

enum jwt_status jwt_verify_cached(struct jwt_cache *c, const char *token, size_t len,
                                  const struct jwt_rule *rule, const struct jwt_jwks *jwks, int64_t now,
                                  struct jwt_result *out)
{
    if (!c || len > JWT_CACHE_MAX_TOKEN) return jwt_verify(token, len, rule, jwks, now, out);
    uint64_t h = tok_hash(token, len);
    pthread_mutex_lock(&c->mu);
    struct jwt_cache_entry *e = c->buckets[h & (JWT_CACHE_BUCKETS - 1)];
    while (e && !(e->h == h && e->len == len && !memcmp(e->tok, token, len)))
        e = e->hnext;
    if (e && e->exp && now - JWT_CLOCK_SKEW_S > e->exp) { /* expired since: dropped, verified again below */
        cache_remove(c, e);
        e = NULL;
    }
    if (e) {
        lru_unlink(c, e);
        lru_front(c, e);
        bool ok = result_copy(&e->res, out);
        c->hits++;
        pthread_mutex_unlock(&c->mu);
        if (ok) return JWT_OK;
        return jwt_verify(token, len, rule, jwks, now, out); /* out of memory: the slow way */
    }
    c->misses++;
    pthread_mutex_unlock(&c->mu);
    /* Verified outside the lock: workers verifying other tokens do not wait for this signature. */
    enum jwt_status st = jwt_verify(token, len, rule, jwks, now, out);
    if (st != JWT_OK) return st; /* only verified tokens are cached (Envoy's insert after a good JWT) */
    struct jwt_cache_entry *n = calloc(1, sizeof(*n));
    if (!n || !(n->tok = malloc(len ? len : 1)) || !result_copy(out, &n->res)) {
        if (n) free(n->tok);
        free(n);
        return st;
    }
    memcpy(n->tok, token, len);
    n->len = len;
    n->h = h;
    json_t *jexp = json_object_get(out->claims, "exp");
    n->exp = json_is_integer(jexp) ? json_integer_value(jexp) : 0;
    pthread_mutex_lock(&c->mu);
    struct jwt_cache_entry **b = &c->buckets[h & (JWT_CACHE_BUCKETS - 1)];
    for (struct jwt_cache_entry *o = *b; o; o = o->hnext)
        if (o->h == h && o->len == len && !memcmp(o->tok, token, len)) { /* another worker was first */
            pthread_mutex_unlock(&c->mu);
            entry_free(n);
            return st;
        }
    if (c->n >= c->cap) cache_remove(c, c->tail);
    n->hnext = *b;
    *b = n;
    lru_front(c, n);
    c->n++;
    pthread_mutex_unlock(&c->mu);
    return st;
}

void jwt_cache_stats(struct jwt_cache *c, uint64_t *hits, uint64_t *misses, size_t *n)
{
    pthread_mutex_lock(&c->mu);
    *hits = c->hits;
    *misses = c->misses;
    *n = c->n;
    pthread_mutex_unlock(&c->mu);
}
