/* JWT verifications per second on one core (src/mesh/jwt.c): what RequestAuthentication costs a waypoint per
 * request that carries a token, without the verified-token cache and with it warm (the waypoint keeps one per
 * rule, as Envoy's jwt_authn JwtCache; a hit skips parsing and the signature check), and the ratio of the
 * two. Keys are generated and tokens signed here with OpenSSL; the JWKS is parsed once, as the waypoint's
 * builder does.
 *
 * usage: build/bench/bench_jwt [seconds-per-row]   (default 0.5)
 * Prints one table; compare rows of one run, never wall-clock figures across machines. */
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mesh/jwt.h"

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

static void param(EVP_PKEY *k, const char *name, char *out, int pad)
{
    BIGNUM *bn = NULL;
    unsigned char buf[512];
    if (!EVP_PKEY_get_bn_param(k, name, &bn)) abort();
    b64u(buf, (size_t)(pad ? BN_bn2binpad(bn, buf, pad) : BN_bn2bin(bn, buf)), out);
    BN_free(bn);
}

/* header.payload signed with k (md, PSS or not; ec_len > 0: JOSE r||s). */
static void sign(EVP_PKEY *k, const char *alg, const char *md, int pss, size_t ec_len, char *tok, size_t cap)
{
    char h[256], p[512], hdr[64];
    snprintf(hdr, sizeof(hdr), "{\"alg\":\"%s\"}", alg);
    const char *pl =
        "{\"iss\":\"https://idp\",\"sub\":\"alice\",\"aud\":\"web\",\"exp\":4000000000,\"groups\":[\"a\"]}";
    b64u((const unsigned char *)hdr, strlen(hdr), h);
    b64u((const unsigned char *)pl, strlen(pl), p);
    snprintf(tok, cap, "%s.%s", h, p);
    EVP_MD_CTX *mc = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pc;
    if (EVP_DigestSignInit_ex(mc, &pc, md, NULL, NULL, k, NULL) != 1) abort();
    if (pss) {
        EVP_PKEY_CTX_set_rsa_padding(pc, RSA_PKCS1_PSS_PADDING);
        EVP_PKEY_CTX_set_rsa_pss_saltlen(pc, RSA_PSS_SALTLEN_DIGEST);
    }
    unsigned char sig[1024];
    size_t sl = sizeof(sig);
    if (EVP_DigestSign(mc, sig, &sl, (unsigned char *)tok, strlen(tok)) != 1) abort();
    EVP_MD_CTX_free(mc);
    if (ec_len) {
        const unsigned char *q = sig;
        ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &q, (long)sl);
        unsigned char raw[132] = {0};
        BN_bn2binpad(ECDSA_SIG_get0_r(es), raw, (int)ec_len);
        BN_bn2binpad(ECDSA_SIG_get0_s(es), raw + ec_len, (int)ec_len);
        ECDSA_SIG_free(es);
        memcpy(sig, raw, 2 * ec_len);
        sl = 2 * ec_len;
    }
    size_t l = strlen(tok);
    tok[l++] = '.';
    b64u(sig, sl, tok + l);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    double secs = argc > 1 ? atof(argv[1]) : 0.5;
    EVP_PKEY *rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    EVP_PKEY *ec = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    char n[600], e[16], x[64], y[64], doc[2048];
    param(rsa, OSSL_PKEY_PARAM_RSA_N, n, 0);
    param(rsa, OSSL_PKEY_PARAM_RSA_E, e, 0);
    param(ec, OSSL_PKEY_PARAM_EC_PUB_X, x, 32);
    param(ec, OSSL_PKEY_PARAM_EC_PUB_Y, y, 32);
    snprintf(doc, sizeof(doc),
             "{\"keys\":[{\"kty\":\"RSA\",\"n\":\"%s\",\"e\":\"%s\"},{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":"
             "\"%s\","
             "\"y\":\"%s\"}]}",
             n, e, x, y);
    struct jwt_jwks ks;
    char err[256];
    if (jwt_jwks_parse(doc, strlen(doc), &ks, err, sizeof(err)) != JWT_OK) {
        fprintf(stderr, "JWKS: %s\n", err);
        return 1;
    }
    static const char *const auds[] = {"web"};
    const struct jwt_rule rule = {"https://idp", auds, 1};
    static const struct {
        const char *alg, *md;
        int pss;
        size_t ec_len;
        int rsa;
    } rows[] = {{"RS256", "SHA256", 0, 0, 1}, {"PS256", "SHA256", 1, 0, 1}, {"ES256", "SHA256", 0, 32, 0}};
    printf("%-8s %-8s %14s %12s %10s\n", "alg", "cache", "verifies/s", "us each", "speedup");
    for (size_t r = 0; r < sizeof(rows) / sizeof(rows[0]); r++) {
        char tok[2048];
        sign(rows[r].rsa ? rsa : ec, rows[r].alg, rows[r].md, rows[r].pss, rows[r].ec_len, tok, sizeof(tok));
        size_t tl = strlen(tok);
        double uncached = 0;
        /* Without the cache, then through a warm one (the same token each time: a client reusing its token).
         */
        for (int use_cache = 0; use_cache < 2; use_cache++) {
            struct jwt_cache *c = use_cache ? jwt_cache_new(JWT_CACHE_DEFAULT_SIZE) : NULL;
            unsigned long count = 0;
            double t0 = now_s(), t;
            do {
                for (int i = 0; i < 64; i++) {
                    struct jwt_result res;
                    if (jwt_verify_cached(c, tok, tl, &rule, &ks, 1700000000, &res) != JWT_OK) abort();
                    jwt_result_free(&res);
                }
                count += 64;
            } while ((t = now_s() - t0) < secs);
            double rate = (double)count / t;
            if (!use_cache) uncached = rate;
            if (use_cache)
                printf("%-8s %-8s %14.0f %12.2f %9.1fx\n", rows[r].alg, "hit", rate, t * 1e6 / (double)count,
                       rate / uncached);
            else
                printf("%-8s %-8s %14.0f %12.2f %10s\n", rows[r].alg, "none", rate, t * 1e6 / (double)count,
                       "1.0x");
            jwt_cache_free(c);
        }
    }
    jwt_jwks_free(&ks);
    EVP_PKEY_free(rsa);
    EVP_PKEY_free(ec);
    return 0;
}
