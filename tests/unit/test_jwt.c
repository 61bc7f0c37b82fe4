/* Unit tests for src/mesh/jwt.c: keys generated and tokens signed here with OpenSSL, JWKS built from them. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>

#include "core/pct.h"
#include "mesh/jwt.h"

#define NOW 1700000000

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

static EVP_PKEY *rsa, *ec;
static char jwks_json[4096];

/* pad > 0: the field's fixed width (an EC coordinate is always 32 bytes for P-256, RFC 7518 6.2.1.2; without
 * the padding a coordinate with a leading zero byte, 1 key in 256, makes a JWKS the parser rightly refuses).
 */
static void bn_b64_pad(EVP_PKEY *k, const char *name, char *out, int pad)
{
    BIGNUM *bn = NULL;
    EVP_PKEY_get_bn_param(k, name, &bn);
    unsigned char buf[512];
    int n = pad ? BN_bn2binpad(bn, buf, pad) : BN_bn2bin(bn, buf);
    b64u(buf, (size_t)n, out);
    BN_free(bn);
}

static void bn_b64(EVP_PKEY *k, const char *name, char *out)
{
    bn_b64_pad(k, name, out, 0);
}

/* Signs header.payload; ec_len > 0 converts the DER ECDSA signature to JOSE r||s. */
static char *sign(EVP_PKEY *k, const char *md, bool pss, size_t ec_len, const char *hdr, const char *pl)
{
    static char tok[12288];
    char h[1024], p[8192];
    b64u((const unsigned char *)hdr, strlen(hdr), h);
    b64u((const unsigned char *)pl, strlen(pl), p);
    snprintf(tok, sizeof(tok), "%s.%s", h, p);
    EVP_MD_CTX *mc = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pc;
    assert_int_equal(EVP_DigestSignInit_ex(mc, &pc, md, NULL, NULL, k, NULL), 1);
    if (pss) {
        EVP_PKEY_CTX_set_rsa_padding(pc, RSA_PKCS1_PSS_PADDING);
        EVP_PKEY_CTX_set_rsa_pss_saltlen(pc, RSA_PSS_SALTLEN_DIGEST);
    }
    unsigned char sig[1024];
    size_t sl = sizeof(sig);
    assert_int_equal(EVP_DigestSign(mc, sig, &sl, (unsigned char *)tok, strlen(tok)), 1);
    EVP_MD_CTX_free(mc);
    if (ec_len) {
        const unsigned char *q = sig;
        ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &q, (long)sl);
        unsigned char raw[96] = {0};
        BN_bn2binpad(ECDSA_SIG_get0_r(es), raw, (int)ec_len);
        BN_bn2binpad(ECDSA_SIG_get0_s(es), raw + ec_len, (int)ec_len);
        ECDSA_SIG_free(es);
        memcpy(sig, raw, 2 * ec_len);
        sl = 2 * ec_len;
    }
    size_t l = strlen(tok);
    tok[l++] = '.';
    b64u(sig, sl, tok + l);
    return tok;
}

static int setup(void **st)
{
    rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    ec = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    char n[600], e[16], x[64], y[64];
    bn_b64(rsa, OSSL_PKEY_PARAM_RSA_N, n);
    bn_b64(rsa, OSSL_PKEY_PARAM_RSA_E, e);
    bn_b64_pad(ec, OSSL_PKEY_PARAM_EC_PUB_X, x, 32);
    bn_b64_pad(ec, OSSL_PKEY_PARAM_EC_PUB_Y, y, 32);
    snprintf(jwks_json, sizeof(jwks_json),
             "{\"keys\":[{\"kty\":\"oct\",\"k\":\"AA\"},{\"kty\":\"RSA\",\"kid\":\"r1\",\"n\":\"%s\",\"e\":"
             "\"%s\"},"
             "{\"kty\":\"EC\",\"kid\":\"e1\",\"crv\":\"P-256\",\"x\":\"%s\",\"y\":\"%s\"}]}",
             n, e, x, y);
    return rsa && ec ? 0 : -1;
}

static const char *auds[] = {"a1", "a2"};
static const struct jwt_rule rule = {"https://iss", auds, 2};
#define PL                                                                                                   \
    "{\"iss\":\"https://iss\",\"sub\":\"u1\",\"aud\":[\"x\",\"a2\"],\"azp\":\"cli\",\"exp\":1700000100,"     \
    "\"n\":{\"a\":{\"b\":\"deep\"}},\"grp\":[\"g1\",\"g2\"],\"num\":7,\"ok\":true}"

static enum jwt_status run(const char *tok, const struct jwt_rule *r, struct jwt_result *res)
{
    struct jwt_jwks ks;
    char err[256];
    assert_int_equal(jwt_jwks_parse(jwks_json, strlen(jwks_json), &ks, err, sizeof(err)), JWT_OK);
    assert_int_equal(ks.n, 2);
    struct jwt_result tmp;
    enum jwt_status s = jwt_verify(tok, strlen(tok), r, &ks, NOW, res ? res : &tmp);
    if (!res) jwt_result_free(&tmp);
    jwt_jwks_free(&ks);
    return s;
}

static void test_algs(void **st)
{
    struct jwt_result r;
    assert_int_equal(run(sign(rsa, "SHA256", false, 0, "{\"alg\":\"RS256\"}", PL), &rule, &r), JWT_OK);
    assert_string_equal(r.principal, "https://iss/u1");
    assert_string_equal(r.presenter, "cli");
    assert_int_equal(r.n_audiences, 2);
    const char *p1[] = {"n", "a", "b"};
    char *v[4];
    assert_int_equal(jwt_claim_strings(&r, p1, 3, v, 4), 1);
    assert_string_equal(v[0], "deep");
    free(v[0]);
    const char *p2[] = {"grp"};
    assert_int_equal(jwt_claim_strings(&r, p2, 1, v, 4), 2);
    assert_string_equal(v[1], "g2");
    free(v[0]), free(v[1]);
    const char *p3[] = {"num"}, *p4[] = {"ok"}, *p5[] = {"n"};
    assert_int_equal(jwt_claim_strings(&r, p3, 1, v, 4), 1);
    assert_string_equal(v[0], "7");
    free(v[0]);
    assert_int_equal(jwt_claim_strings(&r, p4, 1, v, 4), 1);
    assert_string_equal(v[0], "true");
    free(v[0]);
    assert_int_equal(jwt_claim_strings(&r, p5, 1, v, 4), -1);
    jwt_result_free(&r);
    assert_int_equal(run(sign(rsa, "SHA384", false, 0, "{\"alg\":\"RS384\"}", PL), &rule, NULL), JWT_OK);
    assert_int_equal(run(sign(rsa, "SHA512", false, 0, "{\"alg\":\"RS512\"}", PL), &rule, NULL), JWT_OK);
    assert_int_equal(run(sign(rsa, "SHA256", true, 0, "{\"alg\":\"PS256\",\"kid\":\"r1\"}", PL), &rule, NULL),
                     JWT_OK);
    assert_int_equal(
        run(sign(ec, "SHA256", false, 32, "{\"alg\":\"ES256\",\"kid\":\"e1\"}", PL), &rule, NULL), JWT_OK);
    /* kid names another key: that key is the only candidate. */
    assert_int_equal(
        run(sign(rsa, "SHA256", false, 0, "{\"alg\":\"RS256\",\"kid\":\"zz\"}", PL), &rule, NULL),
        JWKS_KID_ALG_MISMATCH);
    assert_int_equal(
        run(sign(ec, "SHA256", false, 32, "{\"alg\":\"ES256\",\"kid\":\"r1\"}", PL), &rule, NULL),
        JWKS_KID_ALG_MISMATCH);
}

static void test_failures(void **st)
{
    char *t = strdup(sign(rsa, "SHA256", false, 0, "{\"alg\":\"RS256\"}", PL));
    char *dot = strrchr(t, '.');
    dot[3] = dot[3] == 'A' ? 'B' : 'A';
    assert_int_equal(run(t, &rule, NULL), JWT_VERIFICATION_FAIL);
    assert_string_equal(jwt_status_str(JWT_VERIFICATION_FAIL), "Jwt verification fails");
    free(t);
    /* tampered payload: signature of another payload spliced in */
    char a[8192], b[8192];
    strcpy(a, sign(rsa, "SHA256", false, 0, "{\"alg\":\"RS256\"}", PL));
    strcpy(b,
           sign(rsa, "SHA256", false, 0, "{\"alg\":\"RS256\"}", "{\"iss\":\"https://iss\",\"aud\":\"a1\"}"));
    strcpy(strrchr(b, '.'), strrchr(a, '.'));
    assert_int_equal(run(b, &rule, NULL), JWT_VERIFICATION_FAIL);
    /* times with the 60 s skew */
    assert_int_equal(run(sign(rsa, "SHA256", false, 0, "{\"alg\":\"RS256\"}",
                              "{\"iss\":\"https://iss\",\"aud\":\"a1\",\"exp\":1699999941}"),
                         &rule, NULL),
                     JWT_OK);
    assert_int_equal(run(sign(rsa, "SHA256", false, 0, "{\"alg\":\"RS256\"}",
                              "{\"iss\":\"https://iss\",\"aud\":\"a1\",\"exp\":1699999939}"),
                         &rule, NULL),
                     JWT_EXPIRED);
    assert_int_equal(run(sign(rsa, "SHA256", false, 0, "{\"alg\":\"RS256\"}",
                              "{\"iss\":\"https://iss\",\"aud\":\"a1\",\"nbf\":1700000059}"),
                         &rule, NULL),
                     JWT_OK);
    assert_int_equal(run(sign(rsa, "SHA256", false, 0, "{\"alg\":\"RS256\"}",
                              "{\"iss\":\"https://iss\",\"aud\":\"a1\",\"nbf\":1700000061}"),
                         &rule, NULL),
                     JWT_NOT_YET_VALID);
    assert_int_equal(
        run(sign(rsa, "SHA256", false, 0, "{\"alg\":\"RS256\"}", "{\"iss\":\"other\",\"aud\":\"a1\"}"), &rule,
            NULL),
        JWT_UNKNOWN_ISSUER);
    assert_int_equal(
        run(sign(rsa, "SHA256", false, 0, "{\"alg\":\"RS256\"}", "{\"iss\":\"https://iss\",\"aud\":\"zz\"}"),
            &rule, NULL),
        JWT_AUDIENCE_NOT_ALLOWED);
    struct jwt_rule any = {"https://iss", NULL, 0};
    assert_int_equal(
        run(sign(rsa, "SHA256", false, 0, "{\"alg\":\"RS256\"}", "{\"iss\":\"https://iss\",\"aud\":\"zz\"}"),
            &any, NULL),
        JWT_OK);
    assert_int_equal(run(sign(rsa, "SHA256", false, 0, "{\"alg\":\"none\"}", PL), &rule, NULL),
                     JWT_HEADER_NOT_IMPLEMENTED_ALG);
    assert_int_equal(run(sign(rsa, "SHA256", false, 0, "{\"alg\":\"HS256\"}", PL), &rule, NULL),
                     JWT_HEADER_NOT_IMPLEMENTED_ALG);
    assert_int_equal(run("a.b", &rule, NULL), JWT_BAD_FORMAT);
    assert_int_equal(run("a.b.c.d", &rule, NULL), JWT_BAD_FORMAT);
    assert_int_equal(run("e30=.e30.AA", &rule, NULL), JWT_HEADER_BAD_BASE64);
    /* "bm9" is "no" with non-zero trailing bits: strict base64url refuses it. */
    assert_int_equal(run("bm9.e30.AA", &rule, NULL), JWT_HEADER_BAD_BASE64);
    assert_int_equal(run("bm8.e30.AA", &rule, NULL), JWT_HEADER_BAD_JSON);
    assert_int_equal(run("eyJhbGciOiJSUzI1NiJ9.e3.AA", &rule, NULL), JWT_PAYLOAD_BAD_BASE64);
    assert_string_equal(jwt_status_str(JWT_BAD_FORMAT),
                        "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections");
}

static const char *hget(void *ctx, const char *name)
{
    const char *const *h = ctx;
    for (; *h; h += 2)
        if (strcmp(h[0], name) == 0) return h[1];
    return NULL;
}

static void test_extract(void **st)
{
    const char *t;
    size_t n;
    const char *h1[] = {"authorization", "Bearer abc", NULL};
    assert_true(jwt_extract(NULL, hget, h1, "/p", &t, &n));
    assert_int_equal(n, 3);
    assert_memory_equal(t, "abc", 3);
    const char *h0[] = {NULL};
    assert_true(jwt_extract(NULL, hget, h0, "/p?x=1&access_token=tk", &t, &n));
    assert_memory_equal(t, "tk", 2);
    assert_false(jwt_extract(NULL, hget, h0, "/p?x=1", &t, &n));
    struct jwt_from_header fh = {"x-jwt", "Tok "};
    const char *cks[] = {"sess"};
    struct jwt_locations loc = {&fh, 1, NULL, 0, cks, 1};
    const char *h2[] = {"x-jwt", "Tok q1", "authorization", "Bearer no", NULL};
    assert_true(jwt_extract(&loc, hget, h2, "/", &t, &n));
    assert_memory_equal(t, "q1", 2);
    /* The prefix anywhere, then the first base64url character (Envoy's extractJWT). */
    const char *h4[] = {"authorization", "Token Bearer   a.b.c", NULL};
    assert_true(jwt_extract(NULL, hget, h4, "/p", &t, &n));
    assert_int_equal(n, 5);
    assert_memory_equal(t, "a.b.c", 5);
    const char *h5[] = {"authorization", "bearer abc", NULL}; /* case-sensitive */
    assert_false(jwt_extract(NULL, hget, h5, "/p", &t, &n));
    const char *h3[] = {"authorization", "Bearer no", "cookie", "a=1; sess=c9", NULL};
    assert_true(jwt_extract(&loc, hget, h3, "/", &t, &n));
    assert_int_equal(n, 2);
    assert_memory_equal(t, "c9", 2);
    /* Query parameters: the name matched percent-decoded, the raw value returned (the caller decodes it). */
    assert_true(jwt_extract(NULL, hget, h0, "/p?access%5Ftoken=a%2Eb&access_token=zz", &t, &n));
    assert_int_equal(n, 5);
    assert_memory_equal(t, "a%2Eb", 5);
    assert_false(jwt_extract(NULL, hget, h0, "/p?access_token=&x=1", &t, &n)); /* first one, empty */
    assert_false(jwt_extract(NULL, hget, h0, "/p?access_tokenx=1", &t, &n));
    char buf[256];
    jwt_www_authenticate(buf, sizeof(buf), "h.test", "/a?b", JWT_EXPIRED);
    assert_string_equal(buf, "Bearer realm=\"http://h.test/a\", error=\"invalid_token\"");
    jwt_www_authenticate(buf, sizeof(buf), "h.test", "/a", JWT_MISSED);
    assert_string_equal(buf, "Bearer realm=\"http://h.test/a\"");
}

/* Envoy's PercentEncoding::decode: %XX with two hex digits (either case) becomes the byte; a '%' without two
 * hex digits after it, and '+', stay as they are. */
static void test_pct_decode(void **st)
{
    static const struct {
        const char *in, *out;
    } cases[] = {
        {"abc", "abc"},   {"a%2Eb%2ec", "a.b.c"}, {"%41%42", "AB"}, {"%4", "%4"},       {"%", "%"},
        {"%zz1", "%zz1"}, {"a+b", "a+b"},         {"%2541", "%41"}, {"x%3D%3d", "x=="}, {"", ""},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char out[64];
        size_t n = (size_t)pct_decode(cases[i].in, strlen(cases[i].in), out, strlen(cases[i].in));
        out[n] = 0;
        assert_string_equal(out, cases[i].out);
    }
    assert_true(jwt_param_name_eq("access%5Ftoken", 14, "access_token", 12));
    assert_true(jwt_param_name_eq("access_token", 12, "access_token", 12));
    assert_false(jwt_param_name_eq("access_toke", 11, "access_token", 12));
    assert_false(jwt_param_name_eq("access_tokens", 13, "access_token", 12));
    assert_false(jwt_param_name_eq("Access_token", 12, "access_token", 12));
}

static char *dup_token(const char *sub, long exp)
{
    char pl[256];
    snprintf(pl, sizeof(pl), "{\"iss\":\"https://iss\",\"sub\":\"%s\",\"aud\":\"a1\",\"exp\":%ld}", sub, exp);
    return strdup(sign(rsa, "SHA256", false, 0, "{\"alg\":\"RS256\",\"kid\":\"r1\"}", pl));
}

static enum jwt_status cached(struct jwt_cache *c, const char *tok, const struct jwt_jwks *ks, int64_t now,
                              const char *principal)
{
    struct jwt_result r;
    enum jwt_status s = jwt_verify_cached(c, tok, strlen(tok), &rule, ks, now, &r);
    if (s == JWT_OK && principal) assert_string_equal(r.principal, principal);
    if (s == JWT_OK) jwt_result_free(&r);
    return s;
}

struct hammer {
    struct jwt_cache *c;
    const struct jwt_jwks *ks;
    char *toks[3];
    int bad;
};

static void *hammer_run(void *arg)
{
    struct hammer *h = arg;
    for (int i = 0; i < 300; i++)
        if (cached(h->c, h->toks[i % 3], h->ks, NOW, NULL) != JWT_OK) h->bad++;
    return NULL;
}

/* Envoy's JwtCache: a token verified once is not verified again (an empty JWKS then still accepts it), until
 * its exp passes (then Jwt is expired, and the entry is gone); failures are never cached; at most cap
 * entries, the least recently used evicted first; several threads at once. */
static void test_cache(void **st)
{
    struct jwt_jwks ks, none = {0};
    char err[256];
    assert_int_equal(jwt_jwks_parse(jwks_json, strlen(jwks_json), &ks, err, sizeof(err)), JWT_OK);
    struct jwt_cache *c = jwt_cache_new(2);
    uint64_t hits, misses;
    size_t n;
    char *t1 = dup_token("u1", NOW + 100), *t2 = dup_token("u2", NOW + 1000), *t3 = dup_token("u3", 0);
    assert_int_equal(cached(c, t1, &none, NOW, NULL), JWKS_KID_ALG_MISMATCH); /* not cached: a failure */
    assert_int_equal(cached(c, t1, &ks, NOW, "https://iss/u1"), JWT_OK);
    assert_int_equal(cached(c, t1, &none, NOW, "https://iss/u1"), JWT_OK); /* from the cache */
    jwt_cache_stats(c, &hits, &misses, &n);
    assert_int_equal(hits, 1);
    assert_int_equal(misses, 2);
    assert_int_equal(n, 1);
    /* Within the 60 s skew after exp: still good; past it: expired, with or without the keys, and dropped. */
    assert_int_equal(cached(c, t1, &none, NOW + 100 + JWT_CLOCK_SKEW_S, NULL), JWT_OK);
    assert_int_equal(cached(c, t1, &none, NOW + 100 + JWT_CLOCK_SKEW_S + 1, NULL), JWT_EXPIRED);
    assert_int_equal(cached(c, t1, &ks, NOW + 100 + JWT_CLOCK_SKEW_S + 1, NULL), JWT_EXPIRED);
    jwt_cache_stats(c, &hits, &misses, &n);
    assert_int_equal(n, 0);
    /* A tampered token: fails each time, never cached. */
    char *bad = strdup(t2);
    bad[strlen(bad) - 3] = bad[strlen(bad) - 3] == 'A' ? 'B' : 'A';
    assert_int_equal(cached(c, bad, &ks, NOW, NULL), JWT_VERIFICATION_FAIL);
    assert_int_equal(cached(c, bad, &ks, NOW, NULL), JWT_VERIFICATION_FAIL);
    jwt_cache_stats(c, &hits, &misses, &n);
    assert_int_equal(n, 0);
    /* Bounded at 2: t1, t2, then t2 used, then t3: t1 (least recently used) goes, t2 and t3 stay. */
    assert_int_equal(cached(c, t1, &ks, NOW, NULL), JWT_OK);
    assert_int_equal(cached(c, t2, &ks, NOW, NULL), JWT_OK);
    assert_int_equal(cached(c, t1, &none, NOW, NULL), JWT_OK); /* t1 most recent now */
    assert_int_equal(cached(c, t3, &ks, NOW, NULL), JWT_OK);   /* evicts t2 */
    jwt_cache_stats(c, &hits, &misses, &n);
    assert_int_equal(n, 2);
    assert_int_equal(cached(c, t2, &none, NOW, NULL), JWKS_KID_ALG_MISMATCH); /* verified again: gone */
    assert_int_equal(cached(c, t1, &none, NOW, "https://iss/u1"), JWT_OK);
    assert_int_equal(cached(c, t3, &none, NOW + 100000, "https://iss/u3"),
                     JWT_OK); /* no exp: never expires */
    /* Two threads on three tokens at once (one not cached at first). */
    struct hammer h = {.c = c, .ks = &ks, .toks = {t1, t2, t3}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&th[i], NULL, hammer_run, &h), 0);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(h.bad, 0);
    jwt_cache_stats(c, &hits, &misses, &n);
    assert_true(n <= 2);
    /* A token longer than JWT_CACHE_MAX_TOKEN is verified every time (Envoy's kMaxJwtSizeForCache). */
    char pl[4096];
    int w = snprintf(pl, sizeof(pl), "{\"iss\":\"https://iss\",\"sub\":\"big\",\"aud\":\"a1\",\"pad\":\"");
    memset(pl + w, 'x', 3000);
    strcpy(pl + w + 3000, "\"}");
    char *big = strdup(sign(rsa, "SHA256", false, 0, "{\"alg\":\"RS256\"}", pl));
    assert_true(strlen(big) > JWT_CACHE_MAX_TOKEN);
    assert_int_equal(cached(c, big, &ks, NOW, "https://iss/big"), JWT_OK);
    assert_int_equal(cached(c, big, &none, NOW, NULL), JWKS_KID_ALG_MISMATCH);
    jwt_cache_free(c);
    jwt_jwks_free(&ks);
    free(t1), free(t2), free(t3), free(bad), free(big);
}

static void test_bad_jwks(void **st)
{
    struct jwt_jwks ks;
    char err[256];
    const char *j =
        "{\"keys\":[{\"kty\":\"RSA\",\"n\":\"AQAB\",\"e\":\"AQAB\"},{\"kty\":\"RSA\",\"e\":\"AQAB\"}]}";
    assert_int_equal(jwt_jwks_parse(j, strlen(j), &ks, err, sizeof(err)), JWKS_BAD_KEYS);
    assert_string_equal(err, "keys[1].n: missing");
    j = "{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-521\",\"x\":\"AA\",\"y\":\"AA\"}]}";
    assert_int_equal(jwt_jwks_parse(j, strlen(j), &ks, err, sizeof(err)), JWKS_BAD_KEYS);
    assert_non_null(strstr(err, "keys[0].crv"));
    assert_int_equal(jwt_jwks_parse("{}", 2, &ks, err, sizeof(err)), JWKS_NO_KEYS);
    assert_int_equal(jwt_jwks_parse("nope", 4, &ks, err, sizeof(err)), JWKS_PARSE_ERROR);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_algs),       cmocka_unit_test(test_failures), cmocka_unit_test(test_extract),
        cmocka_unit_test(test_pct_decode), cmocka_unit_test(test_cache),    cmocka_unit_test(test_bad_jwks),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
