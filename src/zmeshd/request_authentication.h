/* RequestAuthentication (security.istio.io/v1, v1beta1; istio/api
 * security/v1beta1/request_authentication.proto) with targetRefs, converted to zmesh.v1.RequestAuthentication
 * (proto/zmesh/request_authentication.proto) for the waypoint, and the JWKS resolver that fills in jwksUri as
 * istiod's does (istio/istio pilot/pkg/model/jwks_resolver.go):
 *
 * - The JWKS is always pushed inline. A jwksUri (or, without one, the issuer's OpenID discovery document
 *   "<issuer>/.well-known/openid-configuration" and its jwks_uri) is fetched over HTTP or HTTPS (libcurl;
 *   the system's CA bundle verifies HTTPS) with the rule's `timeout` (default 5 s) by a resolver thread,
 *   never by zmeshd's loop. Until the first fetch succeeds, and after it fails with nothing cached, the rule
 *   carries istiod's fake JWKS (CreateFakeJwks: an RSA key no token verifies against), so every token of that
 *   issuer is rejected (`Jwt verification fails`, or `Jwks doesn't have key to match kid or alg from Jwt` for
 *   a token with a kid), and the conversion reports the failure as a WARN on the resource.
 * - Fetched documents are cached per (issuer, jwksUri) and refreshed every ZMESHD_JWKS_REFRESH_S (istiod's
 *   PILOT_JWT_PUB_KEY_REFRESH_INTERVAL default, 20 min); a failed refresh keeps the cached document and
 *   retries after 1 min, doubling up to 60 min (JwtPubKeyRefreshIntervalOnFailure and its reset threshold).
 *   When a document changes (or a fetch fails for the first time), the watcher's callback runs on zmeshd's
 *   loop so the L7 resources are converted and pushed again. */
#pragma once
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "zmeshd/manifest.h"

struct loop;

#define ZMESHD_JWKS_TIMEOUT_MS 5000        /* istiod's jwksHTTPTimeOutInSec */
#define ZMESHD_JWKS_REFRESH_S (20 * 60)    /* PILOT_JWT_PUB_KEY_REFRESH_INTERVAL's default */
#define ZMESHD_JWKS_RETRY_S 60             /* JwtPubKeyRefreshIntervalOnFailure */
#define ZMESHD_JWKS_RETRY_MAX_S (60 * 60)  /* JwtPubKeyRefreshIntervalOnFailureResetThreshold */
#define ZMESHD_JWKS_MAX_BYTES (256u << 10) /* a bigger document is a failed fetch */
#define ZMESHD_JWKS_MAX_ENTRIES 256        /* distinct (issuer, uri) pairs cached */

/* Converts a RequestAuthentication (obj borrowed, as manifest_load_json reads it) into the packed
 * zmesh.v1.RequestAuthentication: *pb (malloc'd) of *len bytes and name "<ns>/<name>". A jwksUri comes from
 * the resolver's cache (a first use queues the fetch and pushes the fake JWKS meanwhile). Returns 0, -EINVAL
 * (an ERROR was reported), -ENOENT (a policy with a selector or without targetRefs: not a waypoint's; a
 * finding says so) or -ENOMEM. */
int zmeshd_convert_request_authn(const json_t *obj, const struct manifest_src *src, uint8_t **pb, size_t *len,
                                 char *name, size_t name_n, manifest_report_fn report, void *ud);

/* The refresh interval of fetched documents (PILOT_JWT_PUB_KEY_REFRESH_INTERVAL), seconds >= 1; default
 * ZMESHD_JWKS_REFRESH_S. Takes effect at each entry's next fetch. */
void zmeshd_jwks_set_refresh_s(unsigned s);

/* istiod's fake JWKS for uri (CreateFakeJwks), malloc'd. */
char *zmeshd_jwks_fake(const char *uri);

/* Runs fn(ud) on loop l whenever a fetched document changes or a fetch first fails (one watcher; a second
 * call replaces it). Returns 0 or -errno. */
int zmeshd_jwks_watch(struct loop *l, void (*fn)(void *ud), void *ud);
/* Removes the watcher, stops the resolver thread and drops the cache (for shutdown and tests). */
void zmeshd_jwks_shutdown(void);

/* For tests: fetches url now on the calling thread (body bounded by ZMESHD_JWKS_MAX_BYTES). Returns 0 with
 * *body malloc'd, or -errno with err set (e.g. "HTTP status 404"). */
int zmeshd_jwks_fetch(const char *url, int timeout_ms, char **body, char *err, size_t errlen);
