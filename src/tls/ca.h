/* Workload certificates: a refcounted certificate bundle and the providers that mint or fetch them. */
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <time.h>
#include <openssl/x509.h>
#include <openssl/evp.h>

#include "tls/spiffe.h"

/* A leaf certificate with its key, intermediates and trust anchor. Immutable after creation; shared between
 * threads through the reference count. */
struct tls_cert {
    int refs; /* atomic; use tls_cert_ref/tls_cert_unref */
    X509 *leaf;
    EVP_PKEY *key;
    STACK_OF(X509) * chain; /* intermediates, leaf excluded; may be empty, never NULL */
    X509 *root;             /* trust anchor for peers */
    struct spiffe_id id;
    char uri[SPIFFE_MAX]; /* id formatted, equals the leaf's URI SAN */
    time_t not_before, not_after;
};

/* Takes one more reference. */
void tls_cert_ref(struct tls_cert *c);
/* Drops one reference; the last one frees the certificate and everything it holds. NULL is ignored. */
void tls_cert_unref(struct tls_cert *c);

struct loop;

/* Completion of an asynchronous fetch: c is a new reference (the callee owns it) or NULL with err set
 * (borrowed for the call). */
typedef void (*cert_fetch_done_fn)(void *ud, struct tls_cert *c, const char *err);

/* Where certificates come from. The identity manager (tls/identity.h) is the only caller in ztunnel and
 * calls it on its own thread, never on a worker, so fetch may block. Caching and renewal are the manager's:
 * a provider mints or fetches anew on every call. */
struct cert_provider {
    /* Returns a new reference to a certificate for id, or NULL with err filled. May block. */
    struct tls_cert *(*fetch)(struct cert_provider *p, const struct spiffe_id *id, char *err, size_t errlen);
    /* Optional (NULL for the local CA): starts a fetch on loop l (the caller's thread) and returns 0 at once;
     * done runs exactly once, later, on that thread. Returns -errno when it cannot start (done not called).
     * A remote CA client (CSR over gRPC) implements this one. */
    int (*fetch_async)(struct cert_provider *p, struct loop *l, const struct spiffe_id *id,
                       cert_fetch_done_fn done, void *ud);
    /* Frees the provider; certificates already handed out stay valid until unreferenced. */
    void (*destroy)(struct cert_provider *p);
};

/* The certificate lifetime the local CA mints when nobody asks for another (Istio's SECRET_TTL default). */
#define CA_DEFAULT_TTL_S (24 * 3600)
/* The longest lifetime the local CA mints: istiod refuses longer requests (its MAX_WORKLOAD_CERT_TTL
 * default, 90 days), and so does zmesh. */
#define CA_MAX_TTL_S (90 * 24 * 3600)

/* Local CA mode with the default lifetime: ca_local_new_ttl(dir, CA_DEFAULT_TTL_S, err, errlen). */
struct cert_provider *ca_local_new(const char *dir, char *err, size_t errlen);

/* Local CA mode: dir holds root-cert.pem and root-key.pem. Each fetch mints a new ECDSA P-256 leaf for the
 * identity, signed by the root, valid from 1 minute ago (clock skew between peers) until ttl_s seconds from
 * now; 1 <= ttl_s <= CA_MAX_TTL_S. Thread-safe. Returns a provider (free with p->destroy(p)) or NULL with
 * err = "<path>: <reason>" (or a sentence about ttl_s). */
struct cert_provider *ca_local_new_ttl(const char *dir, uint32_t ttl_s, char *err, size_t errlen);

/* The one function that makes a workload leaf (the local CA and the CSR signer in tls/issuer.h both call it):
 * a random 128-bit serial, issuer = issuer's subject, empty subject, valid [not_before, not_after], the
 * public key of subject_key, critical basicConstraints CA:FALSE, critical keyUsage digitalSignature +
 * keyEncipherment, extKeyUsage serverAuth + clientAuth, an AKI when the issuer has an SKI, and uri as the one
 * critical URI SAN (written as a GENERAL_NAME, never through a config parser). Signed with issuer_key
 * (SHA-256, or no digest for EdDSA). All arguments are borrowed. Returns a new certificate (caller frees) or
 * NULL with err = "sign <uri>: <reason>". */
X509 *ca_sign_leaf(X509 *issuer, EVP_PKEY *issuer_key, EVP_PKEY *subject_key, const char *uri,
                   time_t not_before, time_t not_after, char *err, size_t errlen);
/* ca_sign_leaf with any SANs: the URI (NULL for none), then dns[0..n_dns) as DNS names, in one critical SAN
 * extension. zmeshd's own serving certificate is the one leaf with DNS names (istiod.istio-system.svc, as
 * istiod's). Returns the certificate or NULL with err = "sign <first name>: <reason>". */
X509 *ca_sign_leaf_sans(X509 *issuer, EVP_PKEY *issuer_key, EVP_PKEY *subject_key, const char *uri,
                        const char *const *dns, size_t n_dns, time_t not_before, time_t not_after, char *err,
                        size_t errlen);

/* Makes a self-signed EC P-256 CA certificate with subject O=<org> (default "zmesh"), valid from a minute ago
 * for ttl_s seconds: critical CA:TRUE, critical keyCertSign + cRLSign, an SKI. Returns 0 with *cert and *key
 * set (caller frees both), or -EIO with err filled. */
int ca_new_root(const char *org, long ttl_s, X509 **cert, EVP_PKEY **key, char *err, size_t errlen);

/* Test and script helper: creates dir/root-cert.pem and dir/root-key.pem (mode 0600), a self-signed EC P-256
 * CA certificate with subject O=<org> (default "zmesh"), valid for 10 years. dir must exist.
 * Returns 0, or a negative errno with err filled. */
int ca_write_root(const char *dir, const char *org, char *err, size_t errlen);
