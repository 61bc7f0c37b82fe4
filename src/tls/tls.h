/* OpenSSL contexts for HBONE (mutual TLS 1.3, ALPN h2) and peer identity checks. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <openssl/ssl.h>

#include "tls/ca.h"

/* HBONE server context: TLS 1.3 only, AES-GCM suites, X25519/P-256, ALPN exactly "h2" (a ClientHello without
 * "h2", including one with no ALPN at all, fails with no_application_protocol), presents c->leaf + c->chain,
 * requires a client certificate chaining to c->root whose leaf has a SPIFFE URI SAN in c->id.td. No session
 * tickets or cache. The context keeps its own references to c's objects. Returns a new SSL_CTX (caller frees
 * with SSL_CTX_free) or NULL (see tls_errstr). */
SSL_CTX *tls_server_ctx_new(const struct tls_cert *c);

/* HBONE client context: same versions/suites/groups, ALPN "h2", presents c->leaf + c->chain, verifies the
 * server chain against c->root (serverAuth), no resumption, no SNI. The server's identity is checked by the
 * caller after the handshake with tls_peer_has_san. Returns a new SSL_CTX (caller frees) or NULL. */
SSL_CTX *tls_client_ctx_new(const struct tls_cert *c);

/* True when the handshake verified the peer and its leaf has a URI SAN exactly equal to one of
 * expected[0..n). */
bool tls_peer_has_san(SSL *ssl, const char *const *expected, size_t n);

/* Copies the peer leaf's first URI SAN that parses as a SPIFFE id into buf (NUL-terminated).
 * Returns its length, -ENOENT if there is none, or -ENOSPC if buf is too small. */
int tls_peer_identity(SSL *ssl, char *buf, size_t n);

/* True when ALPN negotiated exactly "h2". */
bool tls_alpn_is_h2(SSL *ssl);

/* Formats the OpenSSL error queue (oldest first, "; "-separated, truncated to n) into buf and clears the
 * queue. Writes "no OpenSSL error" when empty. Returns buf. */
const char *tls_errstr(char *buf, size_t n);

/* Writes the certificate's serial number (lowercase hex) and its validity bounds as RFC 3339 UTC text
 * ("2024-01-02T03:04:05Z"). Any output pointer may be NULL. Returns 0 or -ENOSPC. */
int tls_cert_describe(const struct tls_cert *c, char *serial, size_t sn, char *from, size_t fn, char *to,
                      size_t tn);
