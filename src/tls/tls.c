/* HBONE TLS contexts: mutual TLS 1.3 with SPIFFE identities, following Istio ztunnel's rustls configuration.
 */
#include "tls/tls.h"

#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

#include "tls/record.h"

#define TLS_CIPHERSUITES "TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256"
#define TLS_GROUPS "X25519:P-256"
static const unsigned char alpn_h2_wire[] = {2, 'h', '2'};
/* Room for the reason a peer certificate is refused; a longer one (a long foreign id) is truncated. */
#define TLS_WHY_MAX 256

/* SSL_CTX ex-data slot holding the server's trust domain (a malloc'd string freed with the context). */
static int td_idx = -1;
static pthread_once_t td_once = PTHREAD_ONCE_INIT;

static void td_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
    (void)parent, (void)ad, (void)idx, (void)argl, (void)argp;
    free(ptr);
}

static void td_idx_init(void)
{
    td_idx = CRYPTO_get_ex_new_index(CRYPTO_EX_INDEX_SSL_CTX, 0, NULL, NULL, NULL, td_free);
}

int tls_leaf_identity(X509 *leaf, const char *td, char *buf, size_t n, char *why, size_t wn)
{
    GENERAL_NAMES *gens = NULL;
    const ASN1_IA5STRING *uri = NULL;
    struct spiffe_id id;
    int crit = -1, n_uri = 0, rc = -EINVAL;
    char discard[1]; /* stands in for a caller who does not want the reason */

    if (!why || !wn) {
        why = discard;
        wn = sizeof(discard);
    }
    why[0] = '\0';
    if (buf && n) buf[0] = '\0';
    if (!leaf) {
        snprintf(why, wn, "no peer certificate");
        rc = -ENOENT;
        goto out;
    }
    if (!td || !td[0]) {
        snprintf(why, wn, "no trust domain to check against");
        goto out;
    }
    /* basicConstraints CA:TRUE. webpki (rustls, which Istio's ztunnel uses) refuses such a certificate as an
     * end entity; OpenSSL's chain check does not, so it is refused here. */
    if (X509_get_extension_flags(leaf) & EXFLAG_CA) {
        snprintf(why, wn, "certificate is a CA (basicConstraints CA:TRUE), not a workload certificate");
        goto out;
    }
    gens = X509_get_ext_d2i(leaf, NID_subject_alt_name, &crit, NULL);
    if (!gens) {
        snprintf(why, wn,
                 crit == -2   ? "certificate has more than one subjectAltName extension"
                 : crit == -1 ? "certificate has no subjectAltName"
                              : "certificate has an unreadable subjectAltName");
        goto out;
    }
    for (int i = 0; i < sk_GENERAL_NAME_num(gens); i++) {
        const GENERAL_NAME *gn = sk_GENERAL_NAME_value(gens, i);
        if (gn->type != GEN_URI) continue; /* DNS, IP ... names are not identities; they are ignored */
        n_uri++;
        uri = gn->d.uniformResourceIdentifier;
    }
    /* One URI SAN and no more: with several, which one is "the" identity would be a guess (Istio's ztunnel
     * checks the trust domain on any of them and then uses the first), so a certificate naming both an
     * outside identity and one of ours could pass as either. */
    if (n_uri != 1) {
        snprintf(why, wn, "certificate has %d URI SANs; exactly one SPIFFE id is required", n_uri);
        goto out;
    }
    const char *u = (const char *)ASN1_STRING_get0_data(uri);
    size_t ulen = (size_t)ASN1_STRING_length(uri);
    if (spiffe_parse(u, ulen, &id) < 0) {
        snprintf(why, wn, "URI SAN is not a SPIFFE id spiffe://<trust domain>/ns/<namespace>/sa/<account>");
        goto out;
    }
    if (strcmp(id.td, td) != 0) {
        /* The id passed spiffe_parse, so it is printable ASCII without spaces: safe in a log line. */
        snprintf(why, wn, "SPIFFE id %.*s is outside trust domain %s", (int)ulen, u, td);
        goto out;
    }
    if (buf) {
        if (ulen >= n) {
            snprintf(why, wn, "SPIFFE id longer than the caller's buffer");
            rc = -ENOSPC;
            goto out;
        }
        memcpy(buf, u, ulen);
        buf[ulen] = '\0';
    }
    rc = (int)ulen;
out:
    GENERAL_NAMES_free(gens);
    return rc;
}

/* The trust domain stored on the SSL's context by tls_server_ctx_new/tls_client_ctx_new, or NULL. */
static const char *ssl_trust_domain(SSL *ssl)
{
    pthread_once(&td_once, td_idx_init);
    if (!ssl || td_idx < 0) return NULL;
    return SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), td_idx);
}

/* Adds Istio's TrustDomainVerifier to normal chain verification, stricter (tls_leaf_identity): the client
 * leaf must be a non-CA certificate with exactly one URI SAN, a SPIFFE id of the server's own trust domain.
 * A failure aborts the handshake with an alert, and the reason goes onto the error queue for the log. */
static int server_verify_cb(int ok, X509_STORE_CTX *sctx)
{
    char why[TLS_WHY_MAX];
    if (!ok) return 0;
    if (X509_STORE_CTX_get_error_depth(sctx) != 0) return 1;
    SSL *ssl = X509_STORE_CTX_get_ex_data(sctx, SSL_get_ex_data_X509_STORE_CTX_idx());
    if (tls_leaf_identity(X509_STORE_CTX_get_current_cert(sctx), ssl_trust_domain(ssl), NULL, 0, why,
                          sizeof(why)) >= 0)
        return 1;
    ERR_raise_data(ERR_LIB_SSL, SSL_R_CERTIFICATE_VERIFY_FAILED, "client identity refused: %s", why);
    X509_STORE_CTX_set_error(sctx, X509_V_ERR_APPLICATION_VERIFICATION);
    return 0;
}

/* Selects "h2" and nothing else; with no overlap the handshake fails with no_application_protocol. */
int tls_alpn_select_h2(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                       unsigned int inlen, void *arg)
{
    (void)ssl, (void)arg;
    for (unsigned int i = 0; i < inlen;) {
        unsigned int l = in[i];
        if (i + 1 + l > inlen) break;
        if (l == 2 && in[i + 1] == 'h' && in[i + 2] == '2') {
            *out = in + i + 1;
            *outlen = 2;
            return SSL_TLSEXT_ERR_OK;
        }
        i += 1 + l;
    }
    return SSL_TLSEXT_ERR_ALERT_FATAL;
}

/* OpenSSL skips the ALPN callback when a ClientHello has no ALPN extension at all; HBONE is only ever h2, so
 * such a client is refused up front with the same alert instead of getting a connection that speaks nothing.
 */
static int client_hello_cb(SSL *ssl, int *al, void *arg)
{
    const unsigned char *p;
    size_t len;
    (void)arg;
    if (!SSL_client_hello_get0_ext(ssl, TLSEXT_TYPE_application_layer_protocol_negotiation, &p, &len)) {
        *al = SSL_AD_NO_APPLICATION_PROTOCOL;
        return SSL_CLIENT_HELLO_ERROR;
    }
    return SSL_CLIENT_HELLO_SUCCESS;
}

/* Settings shared by both sides: protocol, suites, groups, no resumption, buffer modes, our certificate, and
 * a trust store holding only c->root. Returns 0 or -1 (OpenSSL error queue set). */
static int ctx_common(SSL_CTX *ctx, const struct tls_cert *c)
{
    X509_STORE *store = NULL;

    if (!SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION)) return -1;
    if (!SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION)) return -1;
    if (!SSL_CTX_set_ciphersuites(ctx, TLS_CIPHERSUITES)) return -1;
    if (!SSL_CTX_set1_groups_list(ctx, TLS_GROUPS)) return -1;
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET | SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    /* Partial writes and moving buffers suit the non-blocking event loop. Record buffers (about 34 KiB per
     * connection) are released whenever they are empty: an idle pooled connection then holds none, and on a
     * busy one the cost is a malloc/free per batch of records, small next to the AES work. */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_NO_AUTO_CHAIN | SSL_MODE_RELEASE_BUFFERS);
    /* After the handshake, application records are sealed and opened by src/tls/record.c (the h2 session
     * takes over with tls_rec_new): OpenSSL's record buffers are then released for good. */
    if (tls_rec_enable(ctx) < 0) return -1;

    if (!c || !c->leaf || !c->key || !c->root) {
        ERR_raise_data(ERR_LIB_SSL, ERR_R_PASSED_NULL_PARAMETER, "incomplete tls_cert");
        return -1;
    }
    if (SSL_CTX_use_certificate(ctx, c->leaf) != 1) return -1;
    if (SSL_CTX_use_PrivateKey(ctx, c->key) != 1) return -1;
    if (SSL_CTX_check_private_key(ctx) != 1) return -1;
    /* Explicit chain (possibly empty) and NO_AUTO_CHAIN: send leaf + intermediates, never the root. */
    if (c->chain && SSL_CTX_set1_chain(ctx, c->chain) != 1) return -1;

    store = X509_STORE_new();
    if (!store || X509_STORE_add_cert(store, c->root) != 1) {
        X509_STORE_free(store);
        return -1;
    }
    /* The configured root is a trust anchor even when it is not self-signed (an intermediate used as a root),
     * as webpki treats it. */
    X509_STORE_set_flags(store, X509_V_FLAG_PARTIAL_CHAIN);
    SSL_CTX_set_cert_store(ctx, store);
    return 0;
}

/* Stores a copy of c's trust domain on ctx (freed with it), the one peers are checked against. Returns 0 or
 * -1 (OpenSSL error queue set). */
static int ctx_set_trust_domain(SSL_CTX *ctx, const struct tls_cert *c)
{
    char *td;
    pthread_once(&td_once, td_idx_init);
    if (td_idx < 0) return -1;
    if (!c->id.td[0]) {
        ERR_raise_data(ERR_LIB_SSL, ERR_R_PASSED_INVALID_ARGUMENT, "certificate has no trust domain");
        return -1;
    }
    if (!(td = strdup(c->id.td))) return -1;
    if (!SSL_CTX_set_ex_data(ctx, td_idx, td)) {
        free(td);
        return -1;
    }
    return 0; /* owned by ctx now, freed by td_free */
}

SSL_CTX *tls_server_ctx_new(const struct tls_cert *c)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx || ctx_common(ctx, c) < 0 || ctx_set_trust_domain(ctx, c) < 0) goto fail;
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, server_verify_cb);
    SSL_CTX_set_num_tickets(ctx, 0);
    SSL_CTX_set_alpn_select_cb(ctx, tls_alpn_select_h2, NULL);
    SSL_CTX_set_client_hello_cb(ctx, client_hello_cb, NULL);
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

SSL_CTX *tls_client_ctx_new(const struct tls_cert *c)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx || ctx_common(ctx, c) < 0 || ctx_set_trust_domain(ctx, c) < 0) goto fail;
    /* Chain verification only (serverAuth purpose is OpenSSL's client default); no host name check, because
     * the identity is compared with the expected SANs by the caller (tls_peer_has_san). */
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (SSL_CTX_set_alpn_protos(ctx, alpn_h2_wire, sizeof(alpn_h2_wire)) != 0) goto fail;
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

/* tls_peer_identity with the reason of a refusal in why (may be NULL). */
static int peer_identity(SSL *ssl, char *buf, size_t n, char *why, size_t wn)
{
    if (buf && n) buf[0] = '\0';
    if (why && wn) why[0] = '\0';
    if (!ssl) return -ENOENT;
    if (SSL_get_verify_result(ssl) != X509_V_OK) {
        if (why && wn) snprintf(why, wn, "peer certificate chain did not verify");
        return -EINVAL;
    }
    return tls_leaf_identity(SSL_get0_peer_certificate(ssl), ssl_trust_domain(ssl), buf, n, why, wn);
}

int tls_peer_identity(SSL *ssl, char *buf, size_t n, char *why, size_t wn)
{
    return peer_identity(ssl, buf, n, why, wn);
}

bool tls_peer_has_san(SSL *ssl, const char *const *expected, size_t n)
{
    char id[SPIFFE_MAX];
    if (!n || peer_identity(ssl, id, sizeof(id), NULL, 0) < 0) return false;
    for (size_t i = 0; i < n; i++)
        if (expected[i] && strcmp(expected[i], id) == 0) return true;
    return false;
}

bool tls_leaf_has_dns_san(X509 *leaf, const char *const *names, size_t n)
{
    bool found = false;
    if (!leaf || !n) return false;
    /* A CA certificate is no server leaf, whatever names it carries (as in tls_leaf_identity). */
    if (X509_get_extension_flags(leaf) & EXFLAG_CA) return false;
    GENERAL_NAMES *gens = X509_get_ext_d2i(leaf, NID_subject_alt_name, NULL, NULL);
    for (int i = 0; gens && !found && i < sk_GENERAL_NAME_num(gens); i++) {
        const GENERAL_NAME *gn = sk_GENERAL_NAME_value(gens, i);
        if (gn->type != GEN_DNS) continue;
        const unsigned char *d = ASN1_STRING_get0_data(gn->d.dNSName);
        size_t len = (size_t)ASN1_STRING_length(gn->d.dNSName);
        /* Exact names only: a wildcard SAN is not expanded, a name with an embedded NUL matches nothing. */
        if (!d || memchr(d, 0, len)) continue;
        for (size_t k = 0; k < n && !found; k++)
            found = names[k] && strlen(names[k]) == len && strncasecmp(names[k], (const char *)d, len) == 0;
    }
    GENERAL_NAMES_free(gens);
    return found;
}

bool tls_peer_has_dns_san(SSL *ssl, const char *const *names, size_t n)
{
    if (!ssl || !n || SSL_get_verify_result(ssl) != X509_V_OK) return false;
    return tls_leaf_has_dns_san(SSL_get0_peer_certificate(ssl), names, n);
}

bool tls_alpn_is_h2(SSL *ssl)
{
    const unsigned char *p = NULL;
    unsigned int len = 0;
    SSL_get0_alpn_selected(ssl, &p, &len);
    return len == 2 && p[0] == 'h' && p[1] == '2';
}

const char *tls_errstr(char *buf, size_t n)
{
    const char *data;
    int flags;
    unsigned long e;
    size_t off = 0;

    if (!n) {
        ERR_clear_error();
        return buf;
    }
    buf[0] = '\0';
    while ((e = ERR_get_error_all(NULL, NULL, NULL, &data, &flags)) != 0) {
        const char *lib = ERR_lib_error_string(e), *reason = ERR_reason_error_string(e);
        char code[32];
        if (!reason) {
            snprintf(code, sizeof(code), "error %lx", e);
            reason = code;
        }
        bool has_data = (flags & ERR_TXT_STRING) && data && *data;
        if (off < n)
            off += (size_t)snprintf(buf + off, n - off, "%s%s%s%s%s%s%s", off ? "; " : "", lib ? lib : "",
                                    lib ? ": " : "", reason, has_data ? " (" : "", has_data ? data : "",
                                    has_data ? ")" : "");
    }
    if (!buf[0]) snprintf(buf, n, "no OpenSSL error");
    return buf;
}

/* Writes an ASN1_TIME as RFC 3339 UTC into buf. Returns 0 or -ENOSPC/-EINVAL. */
static int time_rfc3339(const ASN1_TIME *t, char *buf, size_t n)
{
    struct tm tm;
    if (!buf) return 0;
    if (!t || ASN1_TIME_to_tm(t, &tm) != 1) return -EINVAL;
    if (strftime(buf, n, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0) return -ENOSPC;
    return 0;
}

int tls_cert_describe(const struct tls_cert *c, char *serial, size_t sn, char *from, size_t fn, char *to,
                      size_t tn)
{
    int rc = -EINVAL;
    BIGNUM *bn = NULL;
    char *hex = NULL;

    if (!c || !c->leaf) goto out;
    if (serial) {
        bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(c->leaf), NULL);
        if (!bn || !(hex = BN_bn2hex(bn))) goto out;
        if (strlen(hex) >= sn) {
            rc = -ENOSPC;
            goto out;
        }
        for (size_t i = 0; hex[i]; i++)
            serial[i] = (char)tolower((unsigned char)hex[i]);
        serial[strlen(hex)] = '\0';
    }
    if ((rc = time_rfc3339(X509_get0_notBefore(c->leaf), from, fn)) < 0) goto out;
    if ((rc = time_rfc3339(X509_get0_notAfter(c->leaf), to, tn)) < 0) goto out;
    rc = 0;
out:
    OPENSSL_free(hex);
    BN_free(bn);
    ERR_clear_error();
    return rc;
}
