/* Unit tests for RequestAuthentication: zmeshd's conversion and JWKS resolver
 * (src/zmeshd/request_authentication.c, with a real HTTP server on a loopback socket), the model
 * (src/mesh/l7authn.c) and the waypoint's check (src/waypoint/authn.c) with tokens signed here by OpenSSL. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "core/loop.h"
#include "mesh/config.h"
#include "mesh/l7authn.h"
#include "waypoint/authn.h"
#include "waypoint/settings.h"
#include "zmeshd/l7.h"
#include "zmeshd/jwks.h"
#include "zmeshd/request_authentication.h"

/* ---- keys and tokens ---- */

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

static EVP_PKEY *rsa;
static char jwks[2048];

static int setup(void **st)
{
    (void)st;
    rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
    BIGNUM *bn = NULL;
    unsigned char buf[512];
    char n[600], e[16];
    EVP_PKEY_get_bn_param(rsa, OSSL_PKEY_PARAM_RSA_N, &bn);
    b64u(buf, (size_t)BN_bn2bin(bn, buf), n);
    BN_free(bn);
    bn = NULL;
    EVP_PKEY_get_bn_param(rsa, OSSL_PKEY_PARAM_RSA_E, &bn);
    b64u(buf, (size_t)BN_bn2bin(bn, buf), e);
    BN_free(bn);
    snprintf(jwks, sizeof(jwks),
             "{\"keys\":[{\"kty\":\"RSA\",\"kid\":\"k1\",\"alg\":\"RS256\",\"n\":\"%s\",\"e\":\"%s\"}]}", n,
             e);
    return rsa ? 0 : -1;
}

static int teardown(void **st)
{
    (void)st;
    EVP_PKEY_free(rsa);
    return 0;
}

/* An RS256 token with header {"alg":"RS256","kid":"k1"} and the payload given. */
static char *token(const char *payload)
{
    static char tok[4096];
    char h[256], p[2048];
    const char *hdr = "{\"alg\":\"RS256\",\"kid\":\"k1\"}";
    b64u((const unsigned char *)hdr, strlen(hdr), h);
    b64u((const unsigned char *)payload, strlen(payload), p);
    snprintf(tok, sizeof(tok), "%s.%s", h, p);
    EVP_MD_CTX *mc = EVP_MD_CTX_new();
    assert_int_equal(EVP_DigestSignInit_ex(mc, NULL, "SHA256", NULL, NULL, rsa, NULL), 1);
    unsigned char sig[512];
    size_t sl = sizeof(sig);
    assert_int_equal(EVP_DigestSign(mc, sig, &sl, (unsigned char *)tok, strlen(tok)), 1);
    EVP_MD_CTX_free(mc);
    size_t l = strlen(tok);
    tok[l++] = '.';
    b64u(sig, sl, tok + l);
    return tok;
}

/* ---- conversion ---- */

struct findings {
    int errors, warns, infos;
    char last[1024];
};

static void on_finding(void *ud, const struct manifest_finding *f)
{
    struct findings *fs = ud;
    if (f->level == MANIFEST_ERROR) fs->errors++;
    if (f->level == MANIFEST_WARN) fs->warns++;
    if (f->level == MANIFEST_INFO) fs->infos++;
    manifest_finding_format(f, fs->last, sizeof(fs->last));
}

struct conv_out {
    int rc;
    struct findings f;
    uint8_t *pb;
    size_t len;
    char name[L7_NAME_MAX];
};

static int on_doc(void *ud, json_t *doc, const struct manifest_src *src)
{
    struct conv_out *o = ud;
    o->rc =
        zmeshd_convert_request_authn(doc, src, &o->pb, &o->len, o->name, sizeof(o->name), on_finding, &o->f);
    return 0;
}

static struct conv_out convert(const char *yaml)
{
    struct conv_out o = {.rc = -1};
    assert_int_equal(manifest_load_json("ra.yaml", yaml, strlen(yaml), on_finding, &o.f, on_doc, &o), 0);
    return o;
}

/* A policy on Service app/svc with one rule (YAML flow mapping text after "- "). */
static struct conv_out rule_policy(const char *rule)
{
    char yaml[8192];
    snprintf(yaml, sizeof(yaml),
             "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: ra, namespace: "
             "app}\n"
             "spec:\n  targetRefs: [{kind: Service, group: \"\", name: svc}]\n  jwtRules:\n  - %s\n",
             rule);
    return convert(yaml);
}

static struct l7_config *build(struct conv_out *o)
{
    assert_int_equal(o->rc, 0);
    struct l7_builder *b = l7_builder_new();
    char err[512];
    if (l7_builder_add(b, L7_TYPE_URL_REQUEST_AUTHN, o->name, o->pb, o->len, err, sizeof(err)) < 0)
        fail_msg("%s", err);
    free(o->pb);
    return l7_builder_finish(b);
}

static void test_convert(void **st)
{
    (void)st;
    char rule[4096];
    snprintf(rule, sizeof(rule),
             "{issuer: \"https://idp\", audiences: [web], jwks: '%s', fromHeaders: [{name: X-Token, prefix: "
             "\"Tok \"}],"
             " fromParams: [tok], forwardOriginalToken: true, outputPayloadToHeader: X-Payload,"
             " outputClaimToHeaders: [{header: X-Team, claim: org.team}]}",
             jwks);
    struct conv_out o = rule_policy(rule);
    assert_int_equal(o.f.errors + o.f.warns, 0);
    assert_string_equal(o.name, "app/ra");
    struct l7_config *c = build(&o);
    assert_non_null(c);
    assert_int_equal(l7_config_n_authn(c), 1);
    size_t n;
    const struct l7_authn *const *as = l7_config_authn_for(c, "S:app/svc", &n);
    assert_int_equal(n, 1);
    assert_null(l7_config_authn_for(c, "S:app/other", &n));
    assert_int_equal(n, 0);
    const struct l7_jwt_rule *r = l7_authn_rule(as[0], 0);
    assert_string_equal(r->rule.issuer, "https://idp");
    assert_int_equal(r->rule.n_audiences, 1);
    assert_string_equal(r->rule.audiences[0], "web");
    assert_int_equal(r->jwks.n, 1);
    assert_int_equal(r->loc.n_headers, 1);
    assert_string_equal(r->loc.headers[0].name, "x-token"); /* lower-cased */
    assert_string_equal(r->loc.headers[0].prefix, "Tok ");
    assert_int_equal(r->loc.n_params, 1);
    assert_true(r->forward);
    assert_string_equal(r->payload_header, "x-payload");
    assert_int_equal(r->n_claim_headers, 1);
    assert_string_equal(r->claim_headers[0].header, "x-team");
    assert_int_equal(r->claim_headers[0].n_path, 2);
    assert_string_equal(r->claim_headers[0].path[1], "team");
    l7_config_unref(c);
}

static void test_convert_errors(void **st)
{
    (void)st;
    struct conv_out o = rule_policy("{jwks: '{\"keys\":[]}'}");
    assert_int_equal(o.rc, -EINVAL);
    assert_non_null(strstr(o.f.last, "spec.jwtRules[0].issuer"));
    o = rule_policy("{issuer: x, jwks: '{\"keys\": 3}'}");
    assert_int_equal(o.rc, -EINVAL);
    assert_non_null(strstr(o.f.last, "jwt_rules[0].jwks"));
    assert_non_null(strstr(o.f.last, "[keys] in Jwks is not an array"));
    char rule[4096];
    snprintf(rule, sizeof(rule),
             "{issuer: x, jwks: '%s', outputClaimToHeaders: [{header: \"bad header\", claim: a}]}", jwks);
    o = rule_policy(rule);
    assert_int_equal(o.rc, -EINVAL);
    assert_non_null(strstr(o.f.last, "jwt_rules[0].output_claim_to_headers[0].header"));
    snprintf(rule, sizeof(rule),
             "{issuer: x, jwks: '%s', outputClaimToHeaders: [{header: h, claim: \"a..b\"}]}", jwks);
    o = rule_policy(rule);
    assert_int_equal(o.rc, -EINVAL);
    assert_non_null(strstr(o.f.last, "output_claim_to_headers[0].claim"));
    o = rule_policy("{issuer: x, jwksUri: \"ftp://idp/keys\"}");
    assert_int_equal(o.rc, -EINVAL);
    assert_non_null(strstr(o.f.last, "spec.jwtRules[0].jwksUri"));
    o = rule_policy("{issuer: x, jwks: '{}', timeout: forever}");
    assert_int_equal(o.rc, -EINVAL);
    assert_non_null(strstr(o.f.last, "spec.jwtRules[0].timeout"));
    /* An unknown field is a WARN, the rest converted. */
    snprintf(rule, sizeof(rule), "{issuer: x, jwks: '%s', futureField: 1}", jwks);
    o = rule_policy(rule);
    assert_int_equal(o.rc, 0);
    assert_int_equal(o.f.warns, 1);
    assert_non_null(strstr(o.f.last, "spec.jwtRules[0].futureField"));
    free(o.pb);
    /* A selector: not a waypoint's policy (WARN), nothing served. */
    o = convert("apiVersion: security.istio.io/v1beta1\nkind: RequestAuthentication\nmetadata: {name: s}\n"
                "spec:\n  selector: {matchLabels: {app: x}}\n  jwtRules: [{issuer: x, jwks: '{}'}]\n");
    assert_int_equal(o.rc, -ENOENT);
    assert_int_equal(o.f.warns, 1);
    assert_non_null(strstr(o.f.last, "spec.selector"));
    o = convert("apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: s}\n"
                "spec:\n  targetRefs: [{kind: Deployment, group: apps, name: x}]\n  jwtRules: [{issuer: x, "
                "jwks: '{}'}]\n");
    assert_int_equal(o.rc, -EINVAL);
    assert_non_null(strstr(o.f.last, "spec.targetRefs[0].kind"));
}

/* istiod's fake JWKS parses, and rejects every token: no key for the kid, or a failed signature. */
static void test_fake_jwks(void **st)
{
    (void)st;
    char *fake = zmeshd_jwks_fake("http://idp/keys");
    assert_non_null(strstr(fake, "\"kid\":\"abc\""));
    assert_non_null(strstr(fake, "\"e\":\"AQAB\""));
    struct jwt_jwks ks;
    char err[256];
    assert_int_equal(jwt_jwks_parse(fake, strlen(fake), &ks, err, sizeof(err)), JWT_OK);
    const struct jwt_rule r = {"https://idp", NULL, 0};
    const char *t = token("{\"iss\":\"https://idp\",\"sub\":\"a\"}");
    struct jwt_result res;
    assert_int_equal(jwt_verify(t, strlen(t), &r, &ks, 1700000000, &res), JWKS_KID_ALG_MISMATCH);
    jwt_jwks_free(&ks);
    /* Without a kid in the token, the fake key is tried and fails. */
    char *p = strstr(fake, "\"kid\":\"abc\",");
    memmove(p, p + 12, strlen(p + 12) + 1);
    assert_int_equal(jwt_jwks_parse(fake, strlen(fake), &ks, err, sizeof(err)), JWT_OK);
    assert_int_equal(jwt_verify(t, strlen(t), &r, &ks, 1700000000, &res), JWT_VERIFICATION_FAIL);
    jwt_jwks_free(&ks);
    free(fake);
}

/* ---- a small HTTP server on a loopback socket ---- */

struct srv {
    int fd;
    uint16_t port;
    pthread_t th;
    volatile int hits;
    int silent; /* accept, read, never answer */
};

static void *serve(void *arg)
{
    struct srv *s = arg;
    for (;;) {
        int c = accept(s->fd, NULL, NULL);
        if (c < 0) return NULL;
        char req[2048];
        ssize_t n = read(c, req, sizeof(req) - 1);
        if (n <= 0) {
            close(c);
            continue;
        }
        req[n] = 0;
        s->hits++;
        if (s->silent) {
            sleep(2);
            close(c);
            continue;
        }
        char resp[4096];
        if (!strncmp(req, "GET /jwks ", 10))
            snprintf(resp, sizeof(resp),
                     "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n%s", strlen(jwks),
                     jwks);
        else if (!strncmp(req, "GET /.well-known/openid-configuration ", 38))
            snprintf(
                resp, sizeof(resp),
                "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{\"jwks_uri\":\"http://127.0.0.1:%u/jwks\"}",
                s->port);
        else
            snprintf(resp, sizeof(resp),
                     "HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found");
        (void)!write(c, resp, strlen(resp));
        close(c);
    }
}

static void srv_start(struct srv *s)
{
    s->fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(s->fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(s->fd, 8), 0);
    socklen_t l = sizeof(a);
    getsockname(s->fd, (struct sockaddr *)&a, &l);
    s->port = ntohs(a.sin_port);
    assert_int_equal(pthread_create(&s->th, NULL, serve, s), 0);
}

static void srv_stop(struct srv *s)
{
    shutdown(s->fd, SHUT_RDWR);
    close(s->fd);
    pthread_join(s->th, NULL);
}

static void test_fetch(void **st)
{
    (void)st;
    struct srv s = {0};
    srv_start(&s);
    char url[128], err[256], *body;
    snprintf(url, sizeof(url), "http://127.0.0.1:%u/jwks", s.port);
    assert_int_equal(zmeshd_jwks_fetch(url, 2000, &body, err, sizeof(err)), 0);
    assert_string_equal(body, jwks);
    free(body);
    snprintf(url, sizeof(url), "http://127.0.0.1:%u/nope", s.port);
    assert_int_equal(zmeshd_jwks_fetch(url, 2000, &body, err, sizeof(err)), -EPROTO);
    assert_string_equal(err, "status 404, message \"not found\"");
    srv_stop(&s);
    /* Nothing listens any more. */
    snprintf(url, sizeof(url), "http://127.0.0.1:%u/jwks", s.port);
    assert_true(zmeshd_jwks_fetch(url, 2000, &body, err, sizeof(err)) < 0);
    /* A server that never answers: the timeout ends the fetch. */
    struct srv q = {.silent = 1};
    srv_start(&q);
    snprintf(url, sizeof(url), "http://127.0.0.1:%u/jwks", q.port);
    assert_int_equal(zmeshd_jwks_fetch(url, 300, &body, err, sizeof(err)), -ETIMEDOUT);
    srv_stop(&q);
}

/* An HTTPS server with a self-signed certificate: the fetch verifies the peer with the system's CAs, so it
 * fails with a certificate error and the document is never read. */
struct tls_srv {
    int fd;
    uint16_t port;
    pthread_t th;
    SSL_CTX *ctx;
    volatile int served;
};

static void *tls_serve(void *arg)
{
    struct tls_srv *s = arg;
    for (;;) {
        int c = accept(s->fd, NULL, NULL);
        if (c < 0) return NULL;
        SSL *ssl = SSL_new(s->ctx);
        SSL_set_fd(ssl, c);
        if (SSL_accept(ssl) == 1) {
            char buf[1024];
            if (SSL_read(ssl, buf, sizeof(buf)) > 0) {
                s->served++;
                (void)SSL_write(ssl, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", 40);
            }
        }
        SSL_free(ssl);
        close(c);
    }
}

static void tls_srv_start(struct tls_srv *s, X509 *cert, EVP_PKEY *key)
{
    s->ctx = SSL_CTX_new(TLS_server_method());
    assert_int_equal(SSL_CTX_use_certificate(s->ctx, cert), 1);
    assert_int_equal(SSL_CTX_use_PrivateKey(s->ctx, key), 1);
    s->fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(s->fd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(s->fd, 4), 0);
    socklen_t l = sizeof(a);
    getsockname(s->fd, (struct sockaddr *)&a, &l);
    s->port = ntohs(a.sin_port);
    assert_int_equal(pthread_create(&s->th, NULL, tls_serve, s), 0);
}

static void tls_srv_stop(struct tls_srv *s)
{
    shutdown(s->fd, SHUT_RDWR);
    close(s->fd);
    pthread_join(s->th, NULL);
    SSL_CTX_free(s->ctx);
}

/* A v3 certificate for key, signed by issuer_key (issuer NULL: self-signed): a CA, or a server certificate
 * for IP 127.0.0.1. */
static X509 *make_cert(EVP_PKEY *key, const char *cn, X509 *issuer, EVP_PKEY *issuer_key, bool ca)
{
    X509 *x = X509_new();
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), ca ? 1 : 2);
    X509_gmtime_adj(X509_getm_notBefore(x), -60);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_set_pubkey(x, key);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC, (const unsigned char *)cn, -1,
                               -1, 0);
    X509_set_issuer_name(x, X509_get_subject_name(issuer ? issuer : x));
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, issuer ? issuer : x, x, NULL, NULL, 0);
    const char *exts[][2] = {
        {"basicConstraints", ca ? "critical,CA:TRUE" : "critical,CA:FALSE"},
        {ca ? "keyUsage" : "subjectAltName", ca ? "critical,keyCertSign" : "IP:127.0.0.1"}};
    for (int i = 0; i < 2; i++) {
        X509_EXTENSION *e = X509V3_EXT_conf(NULL, &v3, exts[i][0], exts[i][1]);
        assert_non_null(e);
        X509_add_ext(x, e, -1);
        X509_EXTENSION_free(e);
    }
    assert_true(X509_sign(x, issuer_key, EVP_sha256()) > 0);
    return x;
}

static void write_pem(const char *path, X509 *x)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(PEM_write_X509(f, x), 1);
    fclose(f);
}

/* An HTTPS jwksUri on a server whose certificate a test CA signed: with that CA as the extra root the fetch
 * succeeds (the system's CAs alone refuse it); with another CA it fails with libcurl's certificate error; a
 * file that is not PEM, or missing, is refused naming it. */
static void test_fetch_https_extra_ca(void **st)
{
    (void)st;
    EVP_PKEY *ca_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    EVP_PKEY *other_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    EVP_PKEY *leaf_key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    X509 *ca = make_cert(ca_key, "test-ca", NULL, ca_key, true);
    X509 *other = make_cert(other_key, "other-ca", NULL, other_key, true);
    X509 *leaf = make_cert(leaf_key, "127.0.0.1", ca, ca_key, false);
    char dir[] = "/tmp/zmesh-test-jwks-XXXXXX", ca_path[64], other_path[64], junk_path[64];
    assert_non_null(mkdtemp(dir));
    snprintf(ca_path, sizeof(ca_path), "%s/ca.pem", dir);
    snprintf(other_path, sizeof(other_path), "%s/other.pem", dir);
    snprintf(junk_path, sizeof(junk_path), "%s/junk.pem", dir);
    write_pem(ca_path, ca);
    write_pem(other_path, other);
    FILE *f = fopen(junk_path, "w");
    fputs("not a certificate\n", f);
    fclose(f);
    struct tls_srv s = {0};
    tls_srv_start(&s, leaf, leaf_key);
    char url[128], err[512] = "", *body = NULL;
    snprintf(url, sizeof(url), "https://127.0.0.1:%u/jwks", s.port);
    assert_int_equal(zmeshd_jwks_fetch(url, 3000, &body, err, sizeof(err)), -EIO); /* system CAs only */
    assert_int_equal(zmeshd_jwks_set_extra_ca(ca_path, err, sizeof(err)), 0);
    assert_int_equal(zmeshd_jwks_fetch(url, 3000, &body, err, sizeof(err)), 0);
    assert_string_equal(body, "{}");
    free(body);
    body = NULL;
    assert_int_equal(zmeshd_jwks_set_extra_ca(other_path, err, sizeof(err)), 0);
    assert_int_equal(zmeshd_jwks_fetch(url, 3000, &body, err, sizeof(err)), -EIO);
    assert_null(body);
    assert_non_null(
        strstr(err, "certificate")); /* "SSL certificate problem: unable to get local issuer ..." */
    assert_int_equal(s.served, 1);
    assert_int_equal(zmeshd_jwks_set_extra_ca(junk_path, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, junk_path));
    assert_int_equal(zmeshd_jwks_set_extra_ca("/nonexistent/extra.pem", err, sizeof(err)), -ENOENT);
    assert_non_null(strstr(err, "/nonexistent/extra.pem"));
    assert_int_equal(zmeshd_jwks_set_extra_ca(NULL, err, sizeof(err)), 0);
    tls_srv_stop(&s);
    unlink(ca_path), unlink(other_path), unlink(junk_path), rmdir(dir);
    X509_free(ca), X509_free(other), X509_free(leaf);
    EVP_PKEY_free(ca_key), EVP_PKEY_free(other_key), EVP_PKEY_free(leaf_key);
}

/* Sources that no conversion pass looked up are dropped at the pass's end; one being fetched is dropped from
 * the cache at once (a new lookup makes a new entry) and freed when its fetch ends. */
static void test_resolver_evicts(void **st)
{
    (void)st;
    char err[256], *body = NULL;
    struct srv q = {.silent = 1};
    srv_start(&q);
    char a[64], b[64], slow[64];
    snprintf(a, sizeof(a), "http://127.0.0.1:1/a");
    snprintf(b, sizeof(b), "http://127.0.0.1:1/b");
    snprintf(slow, sizeof(slow), "http://127.0.0.1:%u/jwks", q.port);
    zmeshd_jwks_pass_begin();
    (void)zmeshd_jwks_lookup("https://a", a, 500, &body, err, sizeof(err));
    (void)zmeshd_jwks_lookup("https://b", b, 500, &body, err, sizeof(err));
    assert_null(body);
    assert_int_equal(zmeshd_jwks_pass_end(), 0);
    assert_int_equal(zmeshd_jwks_n_entries(), 2);
    zmeshd_jwks_pass_begin();
    (void)zmeshd_jwks_lookup("https://a", a, 500, &body, err, sizeof(err));
    assert_int_equal(zmeshd_jwks_pass_end(), 1); /* b */
    assert_int_equal(zmeshd_jwks_n_entries(), 1);
    /* The same issuer with another uri is another source. */
    zmeshd_jwks_pass_begin();
    (void)zmeshd_jwks_lookup("https://a", b, 500, &body, err, sizeof(err));
    assert_int_equal(zmeshd_jwks_pass_end(), 1);
    assert_int_equal(zmeshd_jwks_n_entries(), 1);
    zmeshd_jwks_pass_begin();
    assert_int_equal(zmeshd_jwks_pass_end(), 1);
    assert_int_equal(zmeshd_jwks_n_entries(), 0);
    /* Busy: the silent server holds the fetch (2 s, the fetch's timeout 1.5 s). */
    zmeshd_jwks_pass_begin();
    (void)zmeshd_jwks_lookup("https://slow", slow, 1500, &body, err, sizeof(err));
    assert_int_equal(zmeshd_jwks_pass_end(), 0);
    for (int i = 0; i < 200 && !q.hits; i++)
        usleep(10000);
    assert_int_equal(q.hits, 1);
    zmeshd_jwks_pass_begin();
    assert_int_equal(zmeshd_jwks_pass_end(), 1);
    assert_int_equal(zmeshd_jwks_n_entries(), 0);
    assert_int_equal(zmeshd_jwks_lookup("https://slow", slow, 1500, &body, err, sizeof(err)),
                     ZMESHD_JWKS_PENDING);
    assert_int_equal(zmeshd_jwks_n_entries(), 1);
    zmeshd_jwks_shutdown();
    assert_int_equal(zmeshd_jwks_n_entries(), 0);
    srv_stop(&q);
}

static void test_fetch_https_verifies(void **st)
{
    (void)st;
    struct tls_srv s = {0};
    X509 *x = X509_new();
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), -60);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_set_pubkey(x, rsa);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
                               (const unsigned char *)"127.0.0.1", -1, -1, 0);
    X509_set_issuer_name(x, X509_get_subject_name(x));
    assert_true(X509_sign(x, rsa, EVP_sha256()) > 0);
    tls_srv_start(&s, x, rsa);
    char url[128], err[256] = "", *body = NULL;
    snprintf(url, sizeof(url), "https://127.0.0.1:%u/jwks", s.port);
    assert_int_equal(zmeshd_jwks_fetch(url, 3000, &body, err, sizeof(err)), -EIO);
    assert_null(body);
    assert_non_null(
        strstr(err, "certificate")); /* libcurl: "SSL certificate problem: self-signed certificate" */
    tls_srv_stop(&s);
    assert_int_equal(s.served, 0);
    X509_free(x);
}

static int pushes;
static struct loop *test_loop;
static void on_jwks(void *ud)
{
    (void)ud;
    pushes++;
    loop_stop(test_loop);
}
static void on_give_up(struct timer *t)
{
    (void)t;
    loop_stop(test_loop);
}

/* The first conversion queues the fetch and carries the fake JWKS (INFO); when the resolver has the document
 * the watcher runs on the loop and the next conversion carries it. With discovery (no jwksUri) the same. */
static void test_resolver(void **st)
{
    (void)st;
    struct srv s = {0};
    srv_start(&s);
    test_loop = loop_new();
    assert_int_equal(zmeshd_jwks_watch(test_loop, on_jwks, NULL), 0);
    char rule[512];
    for (int discovery = 0; discovery < 2; discovery++) {
        if (discovery)
            snprintf(rule, sizeof(rule), "{issuer: \"http://127.0.0.1:%u\"}", s.port);
        else
            snprintf(rule, sizeof(rule), "{issuer: \"https://idp\", jwksUri: \"http://127.0.0.1:%u/jwks\"}",
                     s.port);
        pushes = 0;
        struct conv_out o = rule_policy(rule);
        assert_int_equal(o.rc, 0);
        assert_int_equal(o.f.infos, 1);
        assert_non_null(strstr(o.f.last, "not fetched yet"));
        struct l7_config *c = build(&o);
        size_t n;
        const struct l7_jwt_rule *r = l7_authn_rule(l7_config_authn_for(c, "S:app/svc", &n)[0], 0);
        assert_string_equal(r->jwks.keys[0].kid, "abc"); /* the fake one */
        l7_config_unref(c);
        struct timer give_up = {.cb = on_give_up};
        timer_start(test_loop, &give_up, 10000);
        loop_run(test_loop);
        timer_stop(test_loop, &give_up);
        assert_int_equal(pushes, 1);
        o = rule_policy(rule);
        assert_int_equal(o.rc, 0);
        assert_int_equal(o.f.infos + o.f.warns, 0);
        c = build(&o);
        r = l7_authn_rule(l7_config_authn_for(c, "S:app/svc", &n)[0], 0);
        assert_string_equal(r->jwks.keys[0].kid, "k1"); /* fetched */
        l7_config_unref(c);
    }
    /* A failing source: WARN with the reason once the fetch failed; the fake JWKS stays. */
    snprintf(rule, sizeof(rule), "{issuer: \"https://other\", jwksUri: \"http://127.0.0.1:%u/missing\"}",
             s.port);
    pushes = 0;
    struct conv_out o = rule_policy(rule);
    assert_int_equal(o.f.infos, 1);
    free(o.pb);
    struct timer give_up = {.cb = on_give_up};
    timer_start(test_loop, &give_up, 10000);
    loop_run(test_loop);
    timer_stop(test_loop, &give_up);
    assert_int_equal(pushes, 1);
    o = rule_policy(rule);
    assert_int_equal(o.rc, 0);
    assert_int_equal(o.f.warns, 1);
    assert_non_null(strstr(o.f.last, "fetch failed: status 404"));
    free(o.pb);
    zmeshd_jwks_shutdown();
    loop_free(test_loop);
    srv_stop(&s);
}

/* ---- the waypoint's check ---- */

struct wp_env {
    struct snapshot *snap;
    struct wp_view v;
    struct wp_tunnel t;
};

static void wp_env_init(struct wp_env *e, const char *rule)
{
    static const char yaml[] =
        "services:\n- name: svc\n  namespace: app\n  hostname: svc.app.svc.cluster.local\n"
        "  vips: [\"/10.96.0.1\"]\n  ports: {80: 8080}\n";
    char err[256];
    memset(e, 0, sizeof(*e));
    if (config_load_buf(yaml, strlen(yaml), "t.yaml", &e->snap, err, sizeof(err))) fail_msg("%s", err);
    struct conv_out o = rule_policy(rule);
    e->v = (struct wp_view){.snap = e->snap, .l7 = build(&o)};
    e->t = (struct wp_tunnel){
        .view = &e->v, .svc = snapshot_service_by_host(e->snap, "app/svc.app.svc.cluster.local"), .port = 80};
    assert_non_null(e->t.svc);
    snprintf(e->t.authority, sizeof(e->t.authority), "10.96.0.1:80");
}

static void wp_env_free(struct wp_env *e)
{
    l7_config_unref(e->v.l7);
    snapshot_unref(e->snap);
}

static bool check(struct wp_env *e, const char *path, const char *h0, const char *h1, struct wp_decision *d,
                  struct jwt_result *auth)
{
    struct l7_header h[2];
    size_t nh = 0;
    const char *hs[2] = {h0, h1};
    for (int i = 0; i < 2; i++)
        if (hs[i]) {
            const char *colon = strchr(hs[i], ':');
            h[nh++] = (struct l7_header){hs[i], (size_t)(colon - hs[i]), colon + 2, strlen(colon + 2)};
        }
    struct l7_request q = {.method = "GET",
                           .path = path,
                           .path_len = strlen(path),
                           .authority = "svc.app:80",
                           .headers = h,
                           .n_headers = nh};
    memset(d, 0, sizeof(*d));
    return wp_authn_check(&e->t, &q, d, auth);
}

static const char *mod_set(const struct wp_decision *d, const char *name)
{
    for (size_t i = 0; i < d->authn_mod.n_set; i++)
        if (!strcmp(d->authn_mod.set[i].name, name)) return d->authn_mod.set[i].value;
    return NULL;
}

static bool mod_removes(const struct wp_decision *d, const char *name)
{
    for (size_t i = 0; i < d->authn_mod.n_remove; i++)
        if (!strcmp(d->authn_mod.remove[i], name)) return true;
    return false;
}

static void test_waypoint_check(void **st)
{
    (void)st;
    char rule[4096], hdr[4200];
    snprintf(rule, sizeof(rule),
             "{issuer: \"https://idp\", audiences: [web], jwks: '%s', outputPayloadToHeader: x-payload,"
             " outputClaimToHeaders: [{header: x-team, claim: org.team}, {header: x-level, claim: level},"
             " {header: x-evil, claim: evil}]}",
             jwks);
    struct wp_env e;
    wp_env_init(&e, rule);
    struct wp_decision d;
    struct jwt_result auth;
    long now = (long)time(NULL);
    char pl[512];
    /* Valid: the principal, the token's header removed, payload and claims copied (not a CR/LF one). */
    snprintf(
        pl, sizeof(pl),
        "{\"iss\":\"https://idp\",\"sub\":\"alice\",\"aud\":\"web\",\"exp\":%ld,\"org\":{\"team\":\"pay\"},"
        "\"level\":3,\"evil\":\"a\\r\\nx-injected: 1\"}",
        now + 600);
    const char *tok = token(pl);
    snprintf(hdr, sizeof(hdr), "authorization: Bearer %s", tok);
    assert_true(check(&e, "/p?q=1", hdr, NULL, &d, &auth));
    assert_string_equal(auth.principal, "https://idp/alice");
    jwt_result_free(&auth);
    assert_int_equal(d.kind, WP_DECIDE_FORWARD);
    assert_int_equal(d.n_req_mods, 1);
    assert_ptr_equal(d.req_mods[0], &d.authn_mod);
    /* The rule's output headers are removed first (never the client's), then the token's header. */
    assert_int_equal(d.authn_mod.n_remove, 5);
    assert_true(mod_removes(&d, "authorization"));
    assert_true(mod_removes(&d, "x-payload") && mod_removes(&d, "x-team") && mod_removes(&d, "x-level"));
    assert_false(d.rewrite_path);
    const char *d1 = strchr(tok, '.'), *d2 = strchr(d1 + 1, '.');
    assert_int_equal(strlen(mod_set(&d, "x-payload")), (size_t)(d2 - d1 - 1));
    assert_memory_equal(mod_set(&d, "x-payload"), d1 + 1, (size_t)(d2 - d1 - 1));
    assert_string_equal(mod_set(&d, "x-team"), "pay");
    assert_string_equal(mod_set(&d, "x-level"), "3");
    assert_null(mod_set(&d, "x-evil"));
    /* The access_token parameter (Istio's default location): accepted, the parameter removed from the path
     * (Envoy's JwtParamLocation), the others kept in order. */
    char path[4600];
    snprintf(path, sizeof(path), "/p?a=1&access_token=%s&b=2", tok);
    assert_true(check(&e, path, NULL, NULL, &d, &auth));
    assert_string_equal(auth.principal, "https://idp/alice");
    jwt_result_free(&auth);
    assert_false(mod_removes(&d, "authorization"));
    assert_true(d.rewrite_path);
    assert_string_equal(d.path, "/p?a=1&b=2");
    snprintf(path, sizeof(path), "/p?access_token=%s", tok);
    assert_true(check(&e, path, NULL, NULL, &d, &auth));
    jwt_result_free(&auth);
    assert_string_equal(d.path, "/p");
    /* Percent-encoded (a client that encodes every '.'; the name encoded too): Envoy's extractor decodes the
     * name and the value before verifying; the payload header carries the decoded token's payload; every
     * parameter of that decoded name is removed. */
    char enc[4300];
    size_t eo = 0;
    for (const char *c = tok; *c; c++)
        eo += (size_t)(*c == '.' ? snprintf(enc + eo, sizeof(enc) - eo, "%%2E")
                                 : snprintf(enc + eo, sizeof(enc) - eo, "%c", *c));
    snprintf(path, sizeof(path), "/p?access%%5Ftoken=%s&k=%%41&access_token=x", enc);
    assert_true(check(&e, path, NULL, NULL, &d, &auth));
    assert_string_equal(auth.principal, "https://idp/alice");
    jwt_result_free(&auth);
    assert_string_equal(d.path, "/p?k=%41"); /* the others as written */
    assert_memory_equal(mod_set(&d, "x-payload"), d1 + 1, (size_t)(d2 - d1 - 1));
    /* Undecoded, that value is no JWT: Envoy's decoding is what makes it verify. */
    snprintf(path, sizeof(path), "/p?access_token=%s%%zz", enc);
    assert_false(check(&e, path, NULL, NULL, &d, &auth));
    assert_int_equal(d.status, 401);
    /* Missing: passes without a principal; the client's own x-payload is removed all the same. */
    assert_true(check(&e, "/p", "x-payload: forged", NULL, &d, &auth));
    assert_null(auth.principal);
    assert_int_equal(d.n_req_mods, 1);
    assert_true(mod_removes(&d, "x-payload"));
    assert_int_equal(d.authn_mod.n_set, 0);
    assert_false(d.rewrite_path);
    /* Expired: 401 with Envoy's body and www-authenticate, the realm's path without the query. */
    snprintf(pl, sizeof(pl), "{\"iss\":\"https://idp\",\"sub\":\"a\",\"aud\":\"web\",\"exp\":%ld}",
             now - 120);
    snprintf(hdr, sizeof(hdr), "authorization: Bearer %s", token(pl));
    assert_false(check(&e, "/p?q=1", hdr, NULL, &d, &auth));
    assert_null(auth.principal);
    assert_int_equal(d.kind, WP_DECIDE_LOCAL);
    assert_int_equal(d.status, 401);
    assert_string_equal(d.body, "Jwt is expired");
    assert_string_equal(d.www_authenticate, "Bearer realm=\"http://svc.app:80/p\", error=\"invalid_token\"");
    assert_string_equal(d.details, "jwt_authn_access_denied{Jwt_is_expired}");
    /* Expired by less than the 60 s skew: accepted. */
    snprintf(pl, sizeof(pl), "{\"iss\":\"https://idp\",\"sub\":\"a\",\"aud\":\"web\",\"exp\":%ld}", now - 30);
    snprintf(hdr, sizeof(hdr), "authorization: Bearer %s", token(pl));
    assert_true(check(&e, "/p", hdr, NULL, &d, &auth));
    jwt_result_free(&auth);
    /* Another issuer, a wrong audience (403), a bad signature, not a JWT. */
    snprintf(hdr, sizeof(hdr), "authorization: Bearer %s", token("{\"iss\":\"https://evil\",\"sub\":\"a\"}"));
    assert_false(check(&e, "/p", hdr, NULL, &d, &auth));
    assert_int_equal(d.status, 401);
    assert_string_equal(d.body, "Jwt issuer is not configured");
    snprintf(hdr, sizeof(hdr), "authorization: Bearer %s",
             token("{\"iss\":\"https://idp\",\"sub\":\"a\",\"aud\":\"x\"}"));
    assert_false(check(&e, "/p", hdr, NULL, &d, &auth));
    assert_int_equal(d.status, 403);
    assert_string_equal(d.body, "Audiences in Jwt are not allowed");
    snprintf(hdr, sizeof(hdr), "authorization: Bearer %s",
             token("{\"iss\":\"https://idp\",\"sub\":\"a\",\"aud\":\"web\"}"));
    char *sc = hdr + strlen(hdr) - 10; /* one signature character changed (still base64url) */
    *sc = *sc == 'A' ? 'B' : 'A';
    assert_false(check(&e, "/p", hdr, NULL, &d, &auth));
    assert_int_equal(d.status, 401);
    assert_string_equal(d.body, "Jwt verification fails");
    assert_false(check(&e, "/p", "authorization: Bearer not-a-jwt", NULL, &d, &auth));
    assert_string_equal(d.body,
                        "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections");
    /* A CORS preflight is not checked. */
    struct l7_header ph[] = {{"origin", 6, "http://a", 8},
                             {"access-control-request-method", 29, "GET", 3},
                             {"authorization", 13, "Bearer x", 8}};
    struct l7_request pre = {
        .method = "OPTIONS", .path = "/", .path_len = 1, .authority = "a", .headers = ph, .n_headers = 3};
    memset(&d, 0, sizeof(d));
    assert_true(wp_authn_check(&e.t, &pre, &d, &auth));
    assert_null(auth.principal);
    /* A policy on another Service does not apply. */
    e.t.svc = NULL;
    assert_true(check(&e, "/p", "authorization: Bearer not-a-jwt", NULL, &d, &auth));
    wp_env_free(&e);
}

int main(void)
{
    wp_cfg.pod_namespace = "app";
    wp_cfg.gateway_name = "waypoint";
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_convert),
        cmocka_unit_test(test_convert_errors),
        cmocka_unit_test(test_fake_jwks),
        cmocka_unit_test(test_fetch),
        cmocka_unit_test(test_fetch_https_verifies),
        cmocka_unit_test(test_fetch_https_extra_ca),
        cmocka_unit_test(test_resolver_evicts),
        cmocka_unit_test(test_resolver),
        cmocka_unit_test(test_waypoint_check),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
