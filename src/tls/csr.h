/* The client half of Istio's CA protocol without its transport: the certificate signing request ztunnel sends
 * (istio/ztunnel src/tls/csr.rs) and the checks on what comes back (src/identity/caclient.rs,
 * tls::WorkloadCertificate::new), producing the same struct tls_cert the local CA mints, so the identity
 * lifecycle (tls/identity.h) cannot tell the two apart. */
#pragma once
#include <stddef.h>
#include <openssl/evp.h>

#include "tls/ca.h"
#include "tls/spiffe.h"

/* Longest PEM element of a CA answer accepted (a certificate is about 1 KiB; a root bundle a few). */
#define TLS_CA_PEM_MAX (256 * 1024)
/* Most elements in a cert_chain answer. */
#define TLS_CA_CHAIN_MAX 16

/* A CSR for uri as ztunnel makes it: a new ECDSA P-256 key, an empty subject, one critical URI SAN = uri
 * (written as a GENERAL_NAME, never through a config parser), signed with SHA-256. Returns 0 with *key
 * (caller frees with EVP_PKEY_free) and *pem (PEM text, malloc'd, NUL-terminated; caller frees), or -EINVAL
 * (uri empty or longer than SPIFFE_MAX) / -EIO with err filled. */
int tls_csr_new(const char *uri, EVP_PKEY **key, char **pem, char *err, size_t errlen);

/* Builds a certificate from a CreateCertificate answer for the request made with key (borrowed; the result
 * takes its own reference): pem[0] the leaf, pem[1..n-1) intermediates (one certificate each), pem[n-1] the
 * root or roots (istiod puts every root of its bundle there; n == 1 is a leaf with no root, refused: ztunnel
 * warns and goes on with an empty chain, but zmesh needs a root to verify peers). The leaf must carry key's
 * public key, pass tls_leaf_identity for id's trust domain with exactly id (ztunnel checks the identity only
 * when impersonating; zmesh always does, since a CA answering with another identity is wrong either way), and
 * verify now through the intermediates to one of the roots, which becomes the certificate's trust anchor.
 * When pem[n-1] holds more than one root, the others are not trusted for peers (struct tls_cert has one
 * anchor): *extra_roots says how many were left out so the caller can warn. Returns 0 with *out (one
 * reference), or -EINVAL / -ENOMEM with err saying which element and why. */
int tls_cert_from_ca_answer(EVP_PKEY *key, const char *const *pem, size_t n, const struct spiffe_id *id,
                            struct tls_cert **out, size_t *extra_roots, char *err, size_t errlen);
