/* zmeshd's CA, without its transport: the signing key material (a self-signed root kept in a state directory,
 * or Istio's plug-in CA layout), CSR signing as istiod's CreateCertificate does it, and the decision which
 * identity a caller may have signed (its own, or a pod's on its node for a trusted node proxy). The gRPC
 * handler for /istio.v1.auth.IstioCertificateService/CreateCertificate calls, in order: token_verify
 * (tls/token.h), ca_authorize, ca_issuer_sign_csr.
 *
 * Behaviour follows istio/istio security/pkg/server/ca/server.go (CreateCertificate), node_auth.go
 * (impersonation), security/pkg/pki/ca/ca.go (TTL rules, plug-in files) and security/pkg/pki/util
 * (certificate template). */
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <openssl/evp.h>

#include "tls/spiffe.h"
#include "tls/token.h"

/* istiod's DEFAULT_WORKLOAD_CERT_TTL and MAX_WORKLOAD_CERT_TTL defaults (security/pkg/cmd/constants.go). */
#define CA_ISSUER_DEFAULT_TTL_S (24L * 3600)
#define CA_ISSUER_MAX_TTL_S (90L * 24 * 3600)
/* Leaves start this long before they are signed: istiod's ClockSkewGracePeriod. */
#define CA_ISSUER_BACKDATE_S 120
/* A new self-signed root lives as long as istiod's (CITADEL_SELF_SIGNED_CA_CERT_TTL default, 3650 days). */
#define CA_ISSUER_ROOT_TTL_S (3650L * 24 * 3600)
/* Longest CSR accepted (ztunnel's is about 500 bytes); longer input is refused unread. */
#define CA_ISSUER_CSR_MAX (64 * 1024)
/* Smallest RSA key a CSR may carry. */
#define CA_ISSUER_RSA_MIN_BITS 2048
/* Files of both layouts (names of istio/istio security/pkg/pki/ca/ca.go). */
#define CA_ISSUER_CERT_FILE "ca-cert.pem"
#define CA_ISSUER_KEY_FILE "ca-key.pem"
#define CA_ISSUER_ROOT_FILE "root-cert.pem"
#define CA_ISSUER_CHAIN_FILE "cert-chain.pem"
/* CA_TRUSTED_NODE_ACCOUNTS when unset: the account Istio's ztunnel chart runs as (its istiod chart sets it).
 */
#define CA_TRUSTED_NODE_ACCOUNTS_DEFAULT "istio-system/ztunnel"

struct ca_issuer;

/* Self-signed mode: dir (created with mode 0700 if missing) holds ca-cert.pem, ca-key.pem (0600) and
 * root-cert.pem, the files of istiod's istio-ca-secret. When none of them exists, a new EC P-256 root with
 * subject O=<org> (the trust domain, as istiod names its root) is made and written (key first, each file
 * through a temporary name and rename); when all exist they are loaded and checked as in plug-in mode; any
 * other combination is an error naming the missing file (nothing is overwritten). Returns 0 with *out set,
 * or -errno with err = "<path>: <reason>". */
int ca_issuer_open_state(const char *dir, const char *org, struct ca_issuer **out, char *err, size_t errlen);

/* Plug-in mode (istiod's cacerts): dir holds ca-cert.pem (the signing CA, usually an intermediate),
 * ca-key.pem (its key, EC or RSA), cert-chain.pem (the certificates from ca-cert.pem up to the root, as
 * istio/istio tools/certs makes it; may be empty) and root-cert.pem (one or more roots). ca-cert.pem must be
 * a CA, match the key and verify against root-cert.pem through cert-chain.pem now. Returns 0 with *out set,
 * or -errno with err = "<path>: <reason>". */
int ca_issuer_load_plugin(const char *dir, struct ca_issuer **out, char *err, size_t errlen);

/* Frees the issuer. NULL is ignored. */
void ca_issuer_free(struct ca_issuer *iss);

/* Overrides the default (for requests asking <= 0) and maximum lifetimes (DEFAULT_WORKLOAD_CERT_TTL,
 * MAX_WORKLOAD_CERT_TTL). Returns 0, or -EINVAL unless 1 <= default_s and 1 <= max_s. Not thread-safe against
 * concurrent signing: call before serving. */
int ca_issuer_set_ttl(struct ca_issuer *iss, long default_s, long max_s);

/* root-cert.pem's text as loaded (the trust bundle for clients); borrowed, lives as long as iss. */
const char *ca_issuer_root_pem(const struct ca_issuer *iss);

/* A CreateCertificate response's cert_chain: pem[0] the leaf, then each certificate of cert-chain.pem, and
 * last root-cert.pem's text as it is (possibly several roots in one element), as istiod answers. */
struct ca_chain {
    char **pem; /* n NUL-terminated PEM strings */
    size_t n;
};
/* Frees the strings and the array; the struct is zeroed. */
void ca_chain_free(struct ca_chain *c);

/* Signs csr[0..len) (PEM) for id, which the caller decided (ca_authorize): the CSR's signature must verify
 * with its own public key (RSA >= CA_ISSUER_RSA_MIN_BITS, EC P-256/P-384/P-521 or Ed25519), everything else
 * it asks for (subject, SANs, extensions) is ignored, and the leaf (ca_sign_leaf) carries id as its URI SAN.
 * ttl_s <= 0 means the default; above the maximum is refused; the leaf never outlives the signing
 * certificate (its notAfter is clamped to it). Thread-safe. Returns 0 with *out filled (free with
 * ca_chain_free), or with err set (istiod's text, without its "CSR signing error (...)" wrapper):
 * -EINVAL a bad CSR and -ERANGE a TTL above the maximum (both gRPC INVALID_ARGUMENT), -EKEYEXPIRED the
 * signing certificate expired, -ENOMEM or -EIO (INTERNAL). */
int ca_issuer_sign_csr(const struct ca_issuer *iss, const char *csr, size_t len, const struct spiffe_id *id,
                       int64_t ttl_s, struct ca_chain *out, char *err, size_t errlen);

/* zmeshd's own serving certificate (its xDS and CA port), as istiod signs its own with its CA: a new P-256
 * key (*key, caller frees), a leaf with the DNS SANs dns[0..n) and no URI, valid from CA_ISSUER_BACKDATE_S
 * ago for ttl_s seconds (clamped to the signing certificate), in the same order as a CSR's answer (*out:
 * leaf, chain file, root file; free with ca_chain_free). Returns 0, -EINVAL (no name, ttl_s <= 0),
 * -EKEYEXPIRED, -EIO or -ENOMEM with err filled. */
int ca_issuer_sign_server(const struct ca_issuer *iss, const char *const *dns, size_t n, int64_t ttl_s,
                          struct ca_chain *out, EVP_PKEY **key, char *err, size_t errlen);

/* ---- authorization ---- */

/* A service account allowed to have certificates signed for other identities (a node proxy). */
struct ca_account {
    char ns[TOKEN_NAME_MAX];
    char sa[TOKEN_NAME_MAX];
};
/* CA_TRUSTED_NODE_ACCOUNTS parsed. */
struct ca_trusted {
    struct ca_account *v;
    size_t n;
};
/* Parses s = "ns/sa,ns/sa,..." (NULL: CA_TRUSTED_NODE_ACCOUNTS_DEFAULT; "": nobody may impersonate) into out
 * (free with ca_trusted_free). Istio splits on ',' and '/' the same way but skips a malformed entry with a
 * warning; zmesh refuses it. Returns 0, -EINVAL with err naming the entry, or -ENOMEM. */
int ca_trusted_parse(const char *s, struct ca_trusted *out, char *err, size_t errlen);
/* Frees the list; the struct is zeroed. */
void ca_trusted_free(struct ca_trusted *t);

/* Answers "does a pod with service account ns/sa run on node": 1 yes, 0 no. The manifest store implements it
 * (istiod counts pods that are not Failed, by spec.nodeName and spec.serviceAccountName). */
typedef int (*ca_pod_on_node_fn)(void *ud, const char *ns, const char *sa, const char *node);

/* Decides the identity to sign for a verified caller, as istiod's CreateCertificate: with no impersonated
 * identity (NULL or ""), the caller's own spiffe://<td>/ns/<ns>/sa/<sa>; with one (ImpersonatedIdentity
 * metadata), only when the caller's account is in trusted, the identity is a SPIFFE id of trust domain td,
 * the caller's token is bound to a node, and pod_on_node says a pod of that account runs on that node.
 * Returns 0 with *out set, or -EACCES with why = the reason for the log (the caller gets UNAUTHENTICATED and
 * no detail). td NULL or "" means cluster.local. */
int ca_authorize(const struct token_caller *caller, const char *td, const char *impersonate,
                 const struct ca_trusted *trusted, ca_pod_on_node_fn pod_on_node, void *ud,
                 struct spiffe_id *out, char *why, size_t whylen);
