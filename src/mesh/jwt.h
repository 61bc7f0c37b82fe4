/* JWT verification for RequestAuthentication (istio/api security/v1beta1/request_authentication.proto) with
 * Envoy's jwt_authn semantics (envoyproxy/envoy source/extensions/filters/http/jwt_authn/, and its
 * jwt_verify_lib: jwt.cc, jwks.cc, verify.cc, status.cc). Signatures go through OpenSSL 3 EVP and JSON
 * through jansson. Debian 12's libjwt (1.10) lacks PS256, so it is deliberately not used here. */
#pragma once
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* jwt_verify_lib's Status values that this module can produce; jwt_status_str gives Envoy's exact text,
 * which is also the body of the 401 that jwt_authn sends. */
enum jwt_status {
    JWT_OK = 0,
    JWT_MISSED,
    JWT_NOT_YET_VALID,
    JWT_EXPIRED,
    JWT_BAD_FORMAT,
    JWT_HEADER_BAD_BASE64,
    JWT_HEADER_BAD_JSON,
    JWT_HEADER_BAD_ALG,
    JWT_HEADER_NOT_IMPLEMENTED_ALG,
    JWT_HEADER_BAD_KID,
    JWT_PAYLOAD_BAD_BASE64,
    JWT_PAYLOAD_BAD_JSON,
    JWT_PAYLOAD_ISS_NOT_STRING,
    JWT_PAYLOAD_SUB_NOT_STRING,
    JWT_PAYLOAD_IAT_NOT_INTEGER,
    JWT_PAYLOAD_NBF_NOT_INTEGER,
    JWT_PAYLOAD_EXP_NOT_INTEGER,
    JWT_PAYLOAD_AUD_NOT_STRING,
    JWT_SIGNATURE_BAD_BASE64,
    JWT_UNKNOWN_ISSUER,
    JWT_AUDIENCE_NOT_ALLOWED,
    JWT_VERIFICATION_FAIL,
    JWKS_PARSE_ERROR,
    JWKS_NO_KEYS,
    JWKS_BAD_KEYS,
    JWKS_NO_VALID_KEYS,
    JWKS_KID_ALG_MISMATCH,
    JWKS_PEM_PARSE_ERROR, /* Envoy's JwksPemBadBase64 */
    JWKS_FETCH_FAIL,
    JWT_N_STATUS
};
const char *jwt_status_str(enum jwt_status s);
/* The status code of jwt_authn's local reply for a failed token: 403 for JWT_AUDIENCE_NOT_ALLOWED, else 401
 * (envoy source/extensions/filters/http/jwt_authn/filter.cc onComplete). */
int jwt_status_http_code(enum jwt_status s);

/* Envoy's clock skew for exp/nbf (jwt_authn config `clock_skew_seconds` default, jwt_verify_lib
 * kClockSkewInSecond). */
#define JWT_CLOCK_SKEW_S 60

enum jwt_kty { JWT_KTY_RSA, JWT_KTY_EC };

struct jwt_key {
    enum jwt_kty kty;
    char *kid;  /* NULL when the JWK has none */
    char *alg;  /* NULL when the JWK has none */
    int ec_nid; /* NID of the EC curve (EC keys) */
    void *pkey; /* EVP_PKEY * */
};

struct jwt_jwks {
    struct jwt_key *keys;
    size_t n;
};

/* Parses a JWKS JSON document ({"keys":[...]}) or, as jwt_verify_lib's Jwks::createFrom(PEM) does, a PEM
 * public key (RSA or EC). Keys of other kty (oct, OKP) are skipped with no error unless none remains, as
 * jwt_verify_lib does. A bad key is an error: *err (size errlen) names the key index and field, e.g.
 * "keys[1].n: not valid base64url". Returns JWT_OK and fills *out, else a JWKS_* status. */
enum jwt_status jwt_jwks_parse(const char *text, size_t len, struct jwt_jwks *out, char *err, size_t errlen);
void jwt_jwks_free(struct jwt_jwks *jwks);

/* What a rule (one JWTRule of a RequestAuthentication) checks: issuer, and audiences (none = any). */
struct jwt_rule {
    const char *issuer;
    const char *const *audiences;
    size_t n_audiences;
};

/* A verified token. Strings are owned by the struct; free with jwt_result_free. */
struct jwt_result {
    char *principal; /* "<iss>/<sub>", Istio's request.auth.principal */
    char *issuer;
    char *subject;   /* "" when absent */
    char *presenter; /* azp, NULL when absent */
    char **audiences;
    size_t n_audiences;
    json_t *claims; /* the whole payload */
};

/* Verifies a compact JWS `token` (len bytes) against `rule` and `jwks` at unix time `now`. The order of
 * checks is jwt_verify_lib's: format, header, payload, issuer, times, audiences, then the signature. */
enum jwt_status jwt_verify(const char *token, size_t len, const struct jwt_rule *rule,
                           const struct jwt_jwks *jwks, int64_t now, struct jwt_result *out);
void jwt_result_free(struct jwt_result *r);

/* A cache of verified tokens for one provider (one rule with its JWKS), as Envoy's jwt_authn JwtCache
 * (envoyproxy/envoy source/extensions/filters/http/jwt_authn/jwt_cache.cc): keyed by the token's text, at
 * most `cap` entries (JWT_CACHE_DEFAULT_SIZE when 0; the least recently used goes first), tokens longer than
 * JWT_CACHE_MAX_TOKEN never cached, only tokens that verified cached, and an entry whose exp has passed (with
 * the clock skew) dropped at its next lookup so that token fails as expired. Thread-safe (one mutex; the
 * signature check runs outside it). Envoy keeps one per worker and enables it only with jwt_cache_config,
 * which istiod does not set; the result is the same either way, since an entry lives as long as its rule and
 * JWKS. */
#define JWT_CACHE_DEFAULT_SIZE 100
#define JWT_CACHE_MAX_TOKEN 4096
struct jwt_cache;
struct jwt_cache *jwt_cache_new(size_t cap);
void jwt_cache_free(struct jwt_cache *c);
/* jwt_verify through cache c (NULL: no cache): a token verified before and not expired at now gives JWT_OK
 * and a copy of its result without parsing it or checking its signature again. */
enum jwt_status jwt_verify_cached(struct jwt_cache *c, const char *token, size_t len,
                                  const struct jwt_rule *rule, const struct jwt_jwks *jwks, int64_t now,
                                  struct jwt_result *out);
/* Lookups that found a live entry, lookups that did not, and entries held now. */
void jwt_cache_stats(struct jwt_cache *c, uint64_t *hits, uint64_t *misses, size_t *n);

/* Claim access for request.auth.claims[a][b]: walks `path` (n names) through nested objects. */
const json_t *jwt_claim(const struct jwt_result *r, const char *const *path, size_t n);
/* The claim's string values: a string gives one, an array of strings gives each (non-strings skipped), a
 * number or bool its JSON text (as Envoy's metadata matching sees it). Returns the count written (<= max)
 * into vals, each malloc'd (caller frees); -1 when absent or an object. */
int jwt_claim_strings(const struct jwt_result *r, const char *const *path, size_t n, char **vals, size_t max);

/* Token extraction. The defaults: with no fromHeaders, fromParams and fromCookies configured,
 * `Authorization: Bearer <t>` and the `access_token` query parameter (envoyproxy/envoy
 * source/extensions/filters/http/jwt_authn/extractor.cc addProvider; istiod passes the rule's locations
 * through). */
struct jwt_from_header {
    const char *name;
    const char *prefix; /* "" or NULL: the whole value */
};
struct jwt_locations {
    const struct jwt_from_header *headers;
    size_t n_headers;
    const char *const *params;
    size_t n_params;
    const char *const *cookies;
    size_t n_cookies;
};
/* A callback returning request header `name` (lower case) or NULL. */
typedef const char *(*jwt_header_fn)(void *ctx, const char *name);
/* Finds the token as Envoy's extractor does: headers first (with a prefix, the prefix anywhere in the value,
 * case-sensitive, and the token from the first base64url or '.' character after it to the end of the value; a
 * value without the prefix is not a token), then query parameters of `path` (the first parameter whose
 * percent-decoded name matches), then cookies (from the `cookie` header). Writes a pointer into the request
 * data and its length: for a query parameter the raw value, which the caller percent-decodes with
 * pct_decode (core/pct.h) before verifying it (Envoy's extractor takes the decoded value). Returns true when found. */
bool jwt_extract(const struct jwt_locations *loc, jwt_header_fn get, void *ctx, const char *path,
                 const char **tok, size_t *tok_len);

/* Whether query parameter name s (n raw bytes), percent-decoded, equals name (nl bytes). */
bool jwt_param_name_eq(const char *s, size_t n, const char *name, size_t nl);

/* The `www-authenticate` value of jwt_authn's 401: `Bearer realm="http://<host><path>"` plus
 * `, error="invalid_token"` for every failure but a missing token (envoy source/extensions/filters/http/
 * jwt_authn/filter.cc onComplete). The path is without the query. Returns the length as snprintf. */
int jwt_www_authenticate(char *buf, size_t len, const char *host, const char *path, enum jwt_status s);
