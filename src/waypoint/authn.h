/* RequestAuthentication in the waypoint: the JWT check that runs before L7 authorization for every request,
 * with the behaviour Istio users see from Envoy's jwt_authn filter as istiod configures it (istio/istio
 * pilot/pkg/security/authn/policy_applier.go; envoyproxy/envoy source/extensions/filters/http/jwt_authn/
 * filter.cc, authenticator.cc, extractor.cc).
 *
 * The rules are those of every RequestAuthentication targeting this waypoint's Gateway or the addressed
 * Service (src/mesh/l7authn.h). Each rule looks for a token where it says (Istio's default: `Authorization:
 * Bearer` and `access_token`); a token is verified by the rule of its issuer. No token: the request goes on
 * without a request principal (authorization decides). A token that fails: a LOCAL reply, 401 (403 for
 * JWT_AUDIENCE_NOT_ALLOWED) with jwt_verify_lib's text as the body and `www-authenticate: Bearer
 * realm="http://<host><path>", error="invalid_token"`. CORS preflights pass unchecked (Istio sets
 * bypass_cors_preflight). */
#pragma once
#include <stdbool.h>

#include "mesh/jwt.h"
#include "mesh/l7.h"
#include "waypoint/route.h"
#include "waypoint/wp.h"

/* Most rules one request is checked against (all policies of its Gateway and Service together); the rest
 * are left out with a log line. */
#define WP_AUTHN_MAX_RULES 64
/* The request's header values and path the token search copies (to NUL-terminate them). */
#define WP_AUTHN_SCRATCH 16384

/* Checks req on tunnel t (d is zeroed FORWARD by wp_decide). Returns true when the request goes on: *auth
 * holds the first verified token (auth->principal NULL when the request had none; free with
 * jwt_result_free) and d->authn_mod is in d->req_mods when headers change. Returns false when d became a
 * LOCAL reply (*auth is then empty). */
bool wp_authn_check(struct wp_tunnel *t, const struct l7_request *req, struct wp_decision *d,
                    struct jwt_result *auth);
