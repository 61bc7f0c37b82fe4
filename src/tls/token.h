/* Bearer tokens for zmeshd's CA, shaped like Kubernetes projected service-account tokens: JWTs (RFC 7519)
 * signed by zmeshd with ES256, carrying the claims a kube-apiserver puts in a token it projects into a pod
 * (kubernetes/kubernetes pkg/serviceaccount/claims.go): iss, sub = "system:serviceaccount:<ns>:<sa>",
 * aud = ["istio-ca"], iat, nbf, exp, jti, and the private claim "kubernetes.io" = {namespace, serviceaccount:
 * {name}, pod: {name, uid}, node: {name}}. Signatures and the compact serialization are libjwt's; claims are
 * read and written with jansson. */
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* The audience istiod requires of tokens presented to its CA (TOKEN_AUDIENCES in istio/istio
 * pkg/security/security.go) and the one ztunnel asks the kubelet for. */
#define TOKEN_AUDIENCE "istio-ca"
/* zmeshd's default "iss": it plays the cluster's token issuer, under the name of its own service. */
#define TOKEN_DEFAULT_ISSUER "https://zmeshd.istio-system.svc"
/* Clock skew tolerated on exp, nbf and iat: go-jose's DefaultLeeway, which the kube-apiserver applies. */
#define TOKEN_LEEWAY_S 60
/* Longest token accepted or minted; real projected tokens are about 1 KiB. Longer input is refused unread. */
#define TOKEN_MAX_LEN 8192
/* Longest lifetime a minted token may have (the apiserver has no firm cap; a year keeps mistakes bounded). */
#define TOKEN_MAX_TTL_S (366L * 24 * 3600)
/* Longest namespace, service account, pod, pod UID or node name carried (Kubernetes names are at most 253).
 */
#define TOKEN_NAME_MAX 254

/* zmeshd's token signing key (EC P-256). Immutable after creation; may be shared between threads. */
struct token_key;

/* Loads the PEM private key at path, or creates one there (mode 0600, exclusive create) when the file does
 * not exist. Returns 0 with *out set (free with token_key_free), or -errno with err = "<path>: <reason>". */
int token_key_open(const char *path, struct token_key **out, char *err, size_t errlen);
/* Frees the key. NULL is ignored. */
void token_key_free(struct token_key *k);
/* The public key as PEM (SubjectPublicKeyInfo), for independent verifiers; borrowed, lives as long as k. */
const char *token_key_public_pem(const struct token_key *k);

/* Whom a token is minted for. ns and sa are required; the others are optional (NULL or ""). */
struct token_subject {
    const char *ns, *sa; /* the service account: sub = system:serviceaccount:<ns>:<sa> */
    const char *pod, *pod_uid;
    const char *node; /* the node the bearer runs on: required for a node proxy that impersonates */
};

/* Mints a token for s, issued by issuer (NULL: TOKEN_DEFAULT_ISSUER) for TOKEN_AUDIENCE, valid from now
 * until now + ttl_s (1 <= ttl_s <= TOKEN_MAX_TTL_S). Returns 0 with *out = the compact JWT (caller frees), or
 * -EINVAL (a bad argument: err names it) or -ENOMEM/-EIO. */
int token_mint(const struct token_key *k, const char *issuer, const struct token_subject *s, long ttl_s,
               time_t now, char **out, char *err, size_t errlen);

/* The caller a verified token names. */
struct token_caller {
    char ns[TOKEN_NAME_MAX];
    char sa[TOKEN_NAME_MAX];
    char pod[TOKEN_NAME_MAX];     /* "" when the token is not bound to a pod */
    char pod_uid[TOKEN_NAME_MAX]; /* "" when absent */
    char node[TOKEN_NAME_MAX];    /* "" when the token is not bound to a node */
    int64_t exp;
};

/* Verifies tok[0..len) (need not be NUL-terminated): at most TOKEN_MAX_LEN bytes, header alg exactly ES256
 * (checked before and after the signature, so "none" and HS256 keyed with the public key are refused), the
 * signature under k, iss == issuer (NULL: TOKEN_DEFAULT_ISSUER), aud (a string or an array) containing
 * audience (NULL: TOKEN_AUDIENCE), exp present and not past by more than TOKEN_LEEWAY_S, nbf and iat (when
 * present) not in the future by more than that, sub = system:serviceaccount:<ns>:<sa> agreeing with
 * kubernetes.io.namespace and .serviceaccount.name, names that form a valid SPIFFE id. Returns 0 with *out
 * filled, -EACCES with err = why the token is refused (for the log, not for the caller), or -ENOMEM. */
int token_verify(const struct token_key *k, const char *issuer, const char *audience, const char *tok,
                 size_t len, time_t now, struct token_caller *out, char *err, size_t errlen);
