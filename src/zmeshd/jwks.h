/* zmeshd's JWKS resolver for RequestAuthentication's jwksUri (request_authentication.h says how it behaves,
 * as istiod's pilot/pkg/model/jwks_resolver.go): a thread fetching with libcurl, the cache and its refresh,
 * and a watcher on zmeshd's loop. Linked only into zmeshd. */
#pragma once
#include <stddef.h>

#include "zmeshd/request_authentication.h"

struct loop;

/* The refresh interval of fetched documents (PILOT_JWT_PUB_KEY_REFRESH_INTERVAL), seconds >= 1; default
 * ZMESHD_JWKS_REFRESH_S. Takes effect at each entry's next fetch. */
void zmeshd_jwks_set_refresh_s(unsigned s);

/* The lookup the conversion uses once zmeshd_jwks_watch installed it (zmeshd_jwks_lookup_fn); a first use
 * creates the entry and wakes the resolver thread. */
int zmeshd_jwks_lookup(const char *issuer, const char *uri, int timeout_ms, char **body, char *err,
                       size_t errlen);

/* Runs fn(ud) on loop l whenever a fetched document changes or a fetch first fails (one watcher; a second
 * call replaces it). Returns 0 or -errno. */
int zmeshd_jwks_watch(struct loop *l, void (*fn)(void *ud), void *ud);
/* Removes the watcher, stops the resolver thread and drops the cache (for shutdown and tests). */
void zmeshd_jwks_shutdown(void);

/* Extra root certificates (PEM, one or more) trusted for HTTPS jwksUri fetches besides the system's CA
 * bundle, as istiod appends its /cacerts/extra.pem to the system pool (istio/istio
 * pilot/pkg/model/jwks_resolver.go jwksExtraRootCABundlePath). zmeshd reads the file named by
 * JWKS_RESOLVER_EXTRA_ROOT_CA, else <plug-in CA directory>/extra.pem when it exists. NULL or "" drops them.
 * Returns 0, or -errno with err naming the file and what is wrong ("no certificate in it"). */
int zmeshd_jwks_set_extra_ca(const char *path, char *err, size_t errlen);

/* Eviction of sources no RequestAuthentication uses any more: zmeshd brackets each complete conversion of
 * the L7 resources with these; a cached (issuer, uri) that no conversion in the pass looked up is dropped at
 * pass_end (istiod drops entries unused for JwtPubKeyEvictionDuration, 7 days, since it cannot know; zmeshd
 * converts every policy in a pass, so it does). Returns how many were dropped; a fetch under way for one ends
 * first. */
void zmeshd_jwks_pass_begin(void);
size_t zmeshd_jwks_pass_end(void);
/* Sources cached now (for tests and status). */
size_t zmeshd_jwks_n_entries(void);

/* For tests: fetches url now on the calling thread (body bounded by ZMESHD_JWKS_MAX_BYTES). Returns 0 with
 * *body malloc'd, or -errno with err set (e.g. "HTTP status 404"). */
int zmeshd_jwks_fetch(const char *url, int timeout_ms, char **body, char *err, size_t errlen);
