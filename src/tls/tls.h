/* OpenSSL contexts for HBONE (mutual TLS 1.3, ALPN h2) and peer identity checks. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <openssl/ssl.h>

#include "tls/ca.h"

/* HBONE server context: TLS 1.3 only, AES-GCM suites, X25519/P-256, ALPN exactly "h2" (a ClientHello without
 * "h2", including one with no ALPN at all, fails with no_application_protocol), presents c->leaf + c->chain,
 * requires a client certificate chaining to c->root whose leaf is a workload identity of c->id.td (see
 * tls_leaf_identity; a refusal fails the handshake with the reason on the error queue). No session tickets
 * or cache. The context keeps its own references to c's objects. Returns a new SSL_CTX (caller frees with
 * SSL_CTX_free) or NULL (see tls_errstr). */
SSL_CTX *tls_server_ctx_new(const struct tls_cert *c);

/* HBONE client context: same versions/suites/groups, ALPN "h2", presents c->leaf + c->chain, verifies the
 * server chain against c->root (serverAuth), no resumption, no SNI; remembers c->id.td for the peer checks.
 * The server's identity is checked by the caller after the handshake with tls_peer_has_san. Returns a new
 * SSL_CTX (caller frees) or NULL. */
SSL_CTX *tls_client_ctx_new(const struct tls_cert *c);

/* The one rule for a peer's identity, on both sides: leaf must not be a CA (basicConstraints CA:TRUE), must
 * carry exactly one URI SAN (other SAN types are ignored), and that SAN must be a SPIFFE id (spiffe_parse) in
 * trust domain td. Copies the id into buf[0..n) when buf is not NULL. Returns the id's length; -EINVAL when
 * the leaf is refused, -ENOENT when leaf is NULL, -ENOSPC when buf is too small; then why[0..wn) (may be
 * NULL) says why in one line. Borrows leaf. */
int tls_leaf_identity(X509 *leaf, const char *td, char *buf, size_t n, char *why, size_t wn);

/* True when the handshake verified the peer chain, its leaf passes tls_leaf_identity for the trust domain of
 * ssl's context (made by tls_server_ctx_new/tls_client_ctx_new), and that one id equals one of
 * expected[0..n). */
bool tls_peer_has_san(SSL *ssl, const char *const *expected, size_t n);

/* True when leaf is not a CA and one of its DNS SANs equals one of names[0..n) (ASCII case-insensitive,
 * exact: a wildcard SAN is not expanded). For servers known by DNS name (zmeshd's istiod.istio-system.svc);
 * SPIFFE identities are checked with tls_peer_has_san. Borrows leaf. */
bool tls_leaf_has_dns_san(X509 *leaf, const char *const *names, size_t n);

/* True when the handshake verified the peer chain and its leaf passes tls_leaf_has_dns_san(names, n). */
bool tls_peer_has_dns_san(SSL *ssl, const char *const *names, size_t n);

/* Copies the peer's identity, the one SAN tls_leaf_identity accepts for the trust domain of ssl's context,
 * into buf (NUL-terminated); this is the id that logs, metrics and authorization use. Returns its length,
 * -ENOENT without a peer certificate, -EINVAL when the chain did not verify or the leaf is refused, -ENOSPC
 * when buf is too small; then why[0..wn) (may be NULL) says why in one line. */
int tls_peer_identity(SSL *ssl, char *buf, size_t n, char *why, size_t wn);

/* A server's ALPN selection callback (SSL_CTX_set_alpn_select_cb) that picks "h2" and nothing else; with no
 * overlap the handshake fails with no_application_protocol. */
int tls_alpn_select_h2(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                       unsigned int inlen, void *arg);

/* True when ALPN negotiated exactly "h2". */
bool tls_alpn_is_h2(SSL *ssl);

/* Formats the OpenSSL error queue (oldest first, "; "-separated, truncated to n) into buf and clears the
 * queue. Writes "no OpenSSL error" when empty. Returns buf. */
const char *tls_errstr(char *buf, size_t n);

/* Writes the certificate's serial number (lowercase hex) and its validity bounds as RFC 3339 UTC text
 * ("2024-01-02T03:04:05Z"). Any output pointer may be NULL. Returns 0 or -ENOSPC. */
int tls_cert_describe(const struct tls_cert *c, char *serial, size_t sn, char *from, size_t fn, char *to,
                      size_t tn);
