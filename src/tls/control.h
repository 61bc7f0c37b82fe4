/* TLS for the control plane's connections (xDS and CA over gRPC, port 15012), as opposed to the mesh's mutual
 * TLS (tls.h): the client verifies the server's chain against configured roots and its DNS name (the
 * session's h2_peer, tls_peer_has_dns_san), and authenticates itself with a bearer token in gRPC metadata,
 * not with a certificate — as Istio's ztunnel does towards istiod (istio/ztunnel src/tls/control.rs,
 * src/config.rs XDS_ROOT_CA / CA_ROOT_CA). TLS 1.2 or 1.3, ALPN h2. */
#pragma once
#include <stddef.h>
#include <openssl/ssl.h>

/* The special roots value Istio reads as "the system's trust store" (config.rs CERT_SYSTEM). */
#define TLS_ROOTS_SYSTEM "SYSTEM"

/* A client context whose roots come from roots: a readable PEM file, TLS_ROOTS_SYSTEM (OpenSSL's default
 * paths), or else the PEM text itself (Istio's "static" form). Returns the context, or NULL with err naming
 * the file (or "inline roots") and the reason; a file or text without any certificate is an error. */
SSL_CTX *tls_control_client_ctx_new(const char *roots, char *err, size_t errlen);

/* A server context presenting pem[0] (the leaf) and pem[1..n-1) (intermediates; pem[n-1], the roots, is not
 * sent), with key. Client certificates are not requested: callers authenticate with tokens. Returns the
 * context or NULL with err. */
SSL_CTX *tls_control_server_ctx_new(const char *const *pem, size_t n, EVP_PKEY *key, char *err,
                                    size_t errlen);
