/* Workload certificates: a refcounted certificate bundle and the providers that mint or fetch them. */
#pragma once
#include <stddef.h>
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

/* Seconds since the epoch at which a certificate should be replaced: not_before + half its lifetime. */
time_t tls_cert_refresh_at(const struct tls_cert *c);

struct cert_provider {
    /* Returns a new reference to a certificate for id (minting or fetching as needed), or NULL with err
     * filled. */
    struct tls_cert *(*fetch)(struct cert_provider *p, const struct spiffe_id *id, char *err, size_t errlen);
    /* Frees the provider; certificates already handed out stay valid until unreferenced. */
    void (*destroy)(struct cert_provider *p);
};

/* Local CA mode: dir holds root-cert.pem and root-key.pem. Each fetch mints (or returns a cached, less than
 * half-expired) ECDSA P-256 leaf for the identity, valid for 24 h, signed by the root. Thread-safe.
 * Returns a provider (free with p->destroy(p)) or NULL with err = "<path>: <reason>". */
struct cert_provider *ca_local_new(const char *dir, char *err, size_t errlen);

/* Test and script helper: creates dir/root-cert.pem and dir/root-key.pem (mode 0600), a self-signed EC P-256
 * CA certificate with subject O=<org> (default "zmesh"), valid for 10 years. dir must exist.
 * Returns 0, or a negative errno with err filled. */
int ca_write_root(const char *dir, const char *org, char *err, size_t errlen);
