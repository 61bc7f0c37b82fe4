/* L7 authorization: Istio's AuthorizationPolicy semantics for the policies a waypoint enforces (those with
 * targetRefs), held in an l7_config (src/mesh/l7.h) as zmesh.v1.L7Authorization resources.
 *
 * Semantics: istio/api security/v1beta1/authorization_policy.proto and istio/istio
 * pilot/pkg/security/authz/model/ (model.go, generator.go, matcher/): rules OR'd; within a rule from, to and
 * when AND'd; entries of from (or to) OR'd; within a source or operation the fields AND'd, a field's values
 * OR'd and its not_ values excluded; values are exact, "prefix*", "*suffix" or "*" (present). */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/net.h"
#include "mesh/jwt.h"
#include "mesh/l7.h"

/* Most targets of one policy (istio/api: targetRefs maxItems 16). */
#define L7_MAX_TARGETS 16
#define L7_MAX_POLICY_RULES 512
#define L7_MAX_POLICY_VALUES 1024

struct l7_authz_input {
    /* The peer's SPIFFE id without "spiffe://" ("cluster.local/ns/a/sa/b"), or NULL (no identity). */
    const char *source_principal;
    /* The peer's namespace; NULL = taken from source_principal. */
    const char *source_namespace;
    const struct ip_addr *source_ip; /* the downstream client (ipBlocks, source.ip); NULL = unknown */
    /* The original client (remoteIpBlocks, remote.ip). NULL = source_ip: Envoy's remote address with
     * xff_num_trusted_hops 0, Istio's default, is the downstream's own address. */
    const struct ip_addr *remote_ip;
    const struct ip_addr *dest_ip; /* destination.ip; NULL = unknown */
    uint16_t dest_port;            /* the service port (ports, destination.port); 0 = unknown */
    const char *sni;               /* connection.sni; NULL = none (plaintext HTTP inside HBONE) */
    const struct l7_request *req;  /* hosts = authority, methods, paths (query dropped), request.headers[] */
    /* The request's verified JWT (RequestAuthentication, src/waypoint/authn.h): requestPrincipals and
     * request.auth.principal, .audiences, .presenter, .claims[a][b]. NULL = no token: those attributes are
     * absent, so a value never matches (an ALLOW on requestPrincipals ["*"] denies a request without one)
     * and a not_ value always holds. */
    const struct jwt_result *auth;
    /* A TCP stream, not a request (the waypoint relays a TCP port): HTTP-only attributes (hosts, methods,
     * paths, request.headers, requestPrincipals, request.auth.*) cannot be evaluated, and Istio's builder for
     * a TCP filter chain (istio/istio pilot/pkg/security/authz/model/model.go checkError) drops an ALLOW rule
     * that uses one (a smaller ALLOW) and ignores the attribute in a DENY or AUDIT rule (a wider DENY). */
    bool tcp;
};

enum l7_verdict { L7_ALLOW = 0, L7_DENY = 1 };
const char *l7_verdict_to_str(enum l7_verdict v);

/* Evaluates the policies that target Gateway gw_ns/gw_name or Service svc_ns/svc_name (either pair may be
 * NULL): DENY first (any match denies), then, if any ALLOW policy applies, deny unless one matches; else
 * allow. AUDIT policies never change the verdict. dry_run policies are evaluated on their own and only
 * reported: *dry_run_would_deny (may be NULL) is whether they alone would deny. *matched (may be NULL) is the
 * deciding policy "ns/name" (the DENY that matched or the ALLOW that matched), NULL when none decided
 * (no policy, or no ALLOW matched); borrowed from c. A NULL config allows. */
enum l7_verdict l7_authorize(const struct l7_config *c, const char *gw_ns, const char *gw_name,
                             const char *svc_ns, const char *svc_name, const struct l7_authz_input *in,
                             const char **matched, bool *dry_run_would_deny);
/* The AUDIT policies (not dry-run) among those targets that match in; *first gets the first one's name. */
size_t l7_audit_matches(const struct l7_config *c, const char *gw_ns, const char *gw_name, const char *svc_ns,
                        const char *svc_name, const struct l7_authz_input *in, const char **first);

/* ---- for src/mesh/l7.c only: one compiled policy ---- */
struct l7_policy;
/* Decodes and validates one L7Authorization (pb[0..len), named name): 0 and *out, or -EINVAL with err naming
 * the field, or -ENOMEM. */
int l7_policy_compile(const char *name, const uint8_t *pb, size_t len, struct l7_policy **out, char *err,
                      size_t errlen);
void l7_policy_free(struct l7_policy *p);
const char *l7_policy_name(const struct l7_policy *p);
/* Its targets as index keys "G:ns/name" / "S:ns/name", written with a NUL into buf[0..n). Returns the number
 * of targets, and writes target i with l7_policy_target_key. */
size_t l7_policy_n_targets(const struct l7_policy *p);
int l7_policy_target_key(const struct l7_policy *p, size_t i, char *buf, size_t n);
/* From src/mesh/l7.c: the policies of c bound to key ("G:ns/name" or "S:ns/name"), in name order. */
const struct l7_policy *const *l7_config_policies_for(const struct l7_config *c, const char *key, size_t *n);

/* ---- shared by src/mesh/l7.c, l7authz.c and src/zmeshd/l7.c (one arena, one regex compiler) ---- */
/* A list of blocks freed at once: a route's or a policy's arrays and strings. Zero-initialise. */
struct l7_arena {
    struct ablk *head;
};
void *l7_arena_alloc(struct l7_arena *a, size_t n); /* zeroed; NULL on out of memory */
char *l7_arena_strndup(struct l7_arena *a, const char *s, size_t n);
void l7_arena_free(struct l7_arena *a);
/* PCRE2 with the model's options and limits (l7.c); re is a pcre2_code. */
int l7_re_compile(const char *pattern, void **re, char *err, size_t errlen);
bool l7_re_full(const void *re, const char *s, size_t n);
void l7_re_free(void *re);
/* True when s has no control character and at most L7_MAX_STRING bytes (the model's strings). */
bool l7_text_ok(const char *s);
/* True when a policy's namespace and name are set, pass l7_text_ok and read "namespace/name" as the resource
 * name it was sent under. */
bool l7_resource_name_is(const char *ns, const char *name, const char *resource);
/* A PolicyTarget as L7Authorization and RequestAuthentication keep it. */
struct l7_target {
    uint8_t kind; /* PolicyTarget.Kind */
    const char *ns, *name;
};
struct Zmesh__V1__PolicyTarget;
/* Checks the n PolicyTargets of a resource (1 to L7_MAX_TARGETS, known kinds, a namespace and a name each)
 * and copies them into a: 0 with *out, -EINVAL with the field ("targets", "targets[i]") and the reason
 * written into field and why, or -ENOMEM. */
int l7_targets_compile(struct l7_arena *a, struct Zmesh__V1__PolicyTarget *const *pts, size_t n,
                       const struct l7_target **out, char *field, size_t field_n, char *why, size_t why_n);
/* The index key of a target: "G:ns/name" (Gateway) or "S:ns/name" (Service). 0 or -ENOSPC. */
int l7_target_key(const struct l7_target *t, char *buf, size_t n);
