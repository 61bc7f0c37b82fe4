/* libFuzzer target for JWT handling (src/mesh/jwt.c) and RequestAuthentication's model (src/mesh/l7authn.c).
 * The first byte picks the mode: 0: the rest is a JWKS document (JSON or PEM) for jwt_jwks_parse; 1: the rest
 * is a compact token verified by jwt_verify against a fixed JWKS (an RSA key and an EC P-256 key generated
 * once at start) at a fixed time, then its claims read as request.auth.claims[] would; 2: the rest is a
 * request's Authorization and cookie values and path ("auth\ncookie\npath") for jwt_extract with Istio's
 * default locations and with custom ones; 3: the rest is a zmesh.v1.RequestAuthentication encoding for
 * l7_authn_compile as "app/ra". Besides memory safety it checks the contract: statuses are JWT_OK or a
 * defined status with a text; an OK JWKS has keys; an OK token has a principal "<iss>/<sub>" of the fixed
 * issuer; an extracted token lies inside the input; compile returns 0, -EINVAL with a message naming the
 * resource, or -ENOMEM. */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>

#include "mesh/jwt.h"
#include "mesh/l7authn.h"

/* The fixed JWKS: an RSA 2048 key and an EC P-256 key generated once at start (public parts as JWKs). */
static void b64u(const unsigned char *in, size_t n, char *out)
{
    static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v =
            (uint32_t)in[i] << 16 | (i + 1 < n ? (uint32_t)in[i + 1] << 8 : 0) | (i + 2 < n ? in[i + 2] : 0);
        out[o++] = a[v >> 18 & 63];
        out[o++] = a[v >> 12 & 63];
        if (i + 1 < n) out[o++] = a[v >> 6 & 63];
        if (i + 2 < n) out[o++] = a[v & 63];
    }
    out[o] = 0;
}

/* pad: an EC coordinate's fixed width (32 bytes for P-256), 0 for RSA's minimal form. */
static void param(EVP_PKEY *k, const char *name, char *out, int pad)
{
    BIGNUM *bn = NULL;
    unsigned char buf[512];
    if (!EVP_PKEY_get_bn_param(k, name, &bn)) abort();
    b64u(buf, (size_t)(pad ? BN_bn2binpad(bn, buf, pad) : BN_bn2bin(bn, buf)), out);
    BN_free(bn);
}

static void make_jwks(char *out, size_t len)
{
    EVP_PKEY *rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048),
             *ec = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    if (!rsa || !ec) abort();
    char n[600], e[16], x[64], y[64];
    param(rsa, OSSL_PKEY_PARAM_RSA_N, n, 0);
    param(rsa, OSSL_PKEY_PARAM_RSA_E, e, 0);
    param(ec, OSSL_PKEY_PARAM_EC_PUB_X, x, 32);
    param(ec, OSSL_PKEY_PARAM_EC_PUB_Y, y, 32);
    snprintf(out, len,
             "{\"keys\":[{\"kty\":\"RSA\",\"kid\":\"r1\",\"n\":\"%s\",\"e\":\"%s\"},"
             "{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"%s\",\"y\":\"%s\"}]}",
             n, e, x, y);
    EVP_PKEY_free(rsa);
    EVP_PKEY_free(ec);
}

static struct jwt_jwks jwks;
static int ready;

static const char *hdr_auth, *hdr_cookie;
static const char *get(void *ctx, const char *name)
{
    (void)ctx;
    if (!strcmp(name, "authorization") || !strcmp(name, "x-token")) return hdr_auth;
    if (!strcmp(name, "cookie")) return hdr_cookie;
    return NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!ready) {
        char err[256], fixed_jwks[2048];
        make_jwks(fixed_jwks, sizeof(fixed_jwks));
        if (jwt_jwks_parse(fixed_jwks, strlen(fixed_jwks), &jwks, err, sizeof(err)) != JWT_OK || jwks.n != 2)
            abort();
        ready = 1;
    }
    if (size < 1 || size > 65536) return 0;
    const char *in = (const char *)data + 1;
    size_t n = size - 1;
    switch (data[0] % 4) {
    case 0: {
        struct jwt_jwks k;
        char err[256];
        enum jwt_status st = jwt_jwks_parse(in, n, &k, err, sizeof(err));
        if (st >= JWT_N_STATUS || !*jwt_status_str(st)) abort();
        if (st == JWT_OK) {
            if (k.n == 0) abort();
            jwt_jwks_free(&k);
        }
        return 0;
    }
    case 1: {
        static const char *const auds[] = {"web", "api"};
        const struct jwt_rule rule = {"https://idp", auds, data[0] & 4 ? 2 : 0};
        struct jwt_result r;
        enum jwt_status st = jwt_verify(in, n, &rule, &jwks, 1700000000, &r);
        if (st >= JWT_N_STATUS || !*jwt_status_str(st)) abort();
        if (st == JWT_OK) {
            if (!r.principal || strncmp(r.principal, "https://idp/", 12) != 0) abort();
            const char *path[] = {"groups", "a"};
            char *vals[8];
            int c = jwt_claim_strings(&r, path, 1 + (data[0] & 8 ? 1 : 0), vals, 8);
            for (int i = 0; i < c; i++)
                free(vals[i]);
            jwt_result_free(&r);
        }
        return 0;
    }
    case 2: {
        char *buf = malloc(n + 1);
        if (!buf) return 0;
        memcpy(buf, in, n);
        buf[n] = 0;
        char *nl1 = strchr(buf, '\n'), *nl2 = nl1 ? strchr(nl1 + 1, '\n') : NULL;
        if (!nl2) {
            free(buf);
            return 0;
        }
        *nl1 = *nl2 = 0;
        hdr_auth = buf;
        hdr_cookie = nl1 + 1;
        const char *path = nl2 + 1;
        static const struct jwt_from_header hs[] = {{"x-token", "Tok "}, {"authorization", ""}};
        static const char *const ps[] = {"t", "access_token"};
        static const char *const cs[] = {"session", "jwt"};
        const struct jwt_locations custom = {hs, 2, ps, 2, cs, 2};
        for (int k = 0; k < 2; k++) {
            const char *tok;
            size_t tl;
            if (jwt_extract(k ? &custom : NULL, get, NULL, path, &tok, &tl)) {
                if (tl == 0 || tok < buf || tok + tl > buf + n) abort();
            }
        }
        char wa[512];
        jwt_www_authenticate(wa, sizeof(wa), hdr_cookie, path, (enum jwt_status)(data[0] % JWT_N_STATUS));
        free(buf);
        return 0;
    }
    default: {
        struct l7_authn *a = NULL;
        char err[512] = "";
        int rc = l7_authn_compile("app/ra", (const uint8_t *)in, n, &a, err, sizeof(err));
        if (rc == 0) {
            if (!a || strcmp(l7_authn_name(a), "app/ra") != 0) abort();
            l7_authn_free(a);
        } else if (rc == -EINVAL) {
            if (strncmp(err, "RequestAuthentication app/ra: ", 30) != 0) abort();
        } else if (rc != -ENOMEM) {
            abort();
        }
        return 0;
    }
    }
}
