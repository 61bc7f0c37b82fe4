/* RequestAuthentication in the waypoint's model: zmesh.v1.RequestAuthentication resources
 * (proto/zmesh/request_authentication.proto) compiled once, at build time, into rules with their JWKS parsed
 * (src/mesh/jwt.h), held by an l7_config (src/mesh/l7.h) and found by target like L7 policies.
 *
 * Semantics: istio/api security/v1beta1/request_authentication.proto as istiod translates it into Envoy's
 * jwt_authn (istio/istio pilot/pkg/security/authn/policy_applier.go): every rule of every policy that
 * targets the Gateway or the addressed Service is a provider; a token is verified by the provider of its
 * issuer; a missing token passes (no request principal); a token that fails is answered 401 (403 for
 * audiences) by the waypoint (src/waypoint/authn.h). */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mesh/jwt.h"
#include "mesh/l7.h"

#define L7_MAX_JWT_RULES 64     /* one policy's jwtRules (istio/api: maxItems 4096; zmesh keeps fewer) */
#define L7_MAX_JWT_LOCATIONS 16 /* fromHeaders, fromParams, fromCookies each */
#define L7_MAX_JWT_AUDIENCES 64
#define L7_MAX_CLAIM_HEADERS 16 /* outputClaimToHeaders */
#define L7_MAX_CLAIM_DEPTH 8    /* "a.b.c": nested claim names */
#define L7_MAX_JWKS_BYTES (256u << 10)

struct l7_claim_header {
    const char *header;      /* lower-case */
    const char *const *path; /* the claim's names, outermost first */
    size_t n_path;
};

/* One JWTRule, compiled. Everything is owned by the l7_authn that holds it. */
struct l7_jwt_rule {
    struct jwt_rule rule; /* issuer, audiences */
    struct jwt_jwks jwks;
    struct jwt_locations loc;   /* as written: empty = Istio's defaults (jwt_extract applies them) */
    bool forward;               /* forwardOriginalToken */
    const char *payload_header; /* outputPayloadToHeader, NULL = none */
    const struct l7_claim_header *claim_headers;
    size_t n_claim_headers;
    const char *jwks_uri;    /* "" when inline in the manifest */
    struct jwt_cache *cache; /* verified tokens (jwt.h), as long as this rule and its JWKS live */
};

struct l7_authn;

/* Decodes and validates one RequestAuthentication (pb[0..len), named name "ns/name"): 0 and *out, or -EINVAL
 * with err naming the field ("RequestAuthentication ns/name: jwt_rules[0].jwks: ..."), or -ENOMEM. */
int l7_authn_compile(const char *name, const uint8_t *pb, size_t len, struct l7_authn **out, char *err,
                     size_t errlen);
void l7_authn_free(struct l7_authn *a);
const char *l7_authn_name(const struct l7_authn *a);
size_t l7_authn_n_rules(const struct l7_authn *a);
const struct l7_jwt_rule *l7_authn_rule(const struct l7_authn *a, size_t i);
/* Its targets as index keys "G:ns/name" / "S:ns/name" (as l7_policy_target_key). */
size_t l7_authn_n_targets(const struct l7_authn *a);
int l7_authn_target_key(const struct l7_authn *a, size_t i, char *buf, size_t n);

/* The target index of a config: built by l7_builder_finish from its policies (borrowed, they outlive it). */
struct l7_authn_index;
int l7_authn_index_build(struct l7_authn *const *a, size_t n, struct l7_authn_index **out);
void l7_authn_index_free(struct l7_authn_index *idx);
/* The policies bound to key, in name order (borrowed), or NULL with *n 0. */
const struct l7_authn *const *l7_authn_index_get(const struct l7_authn_index *idx, const char *key,
                                                 size_t *n);

/* From src/mesh/l7.c: the RequestAuthentications of c bound to key ("G:ns/name" or "S:ns/name"). */
const struct l7_authn *const *l7_config_authn_for(const struct l7_config *c, const char *key, size_t *n);
size_t l7_config_n_authn(const struct l7_config *c);
