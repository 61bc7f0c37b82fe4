/* The waypoint's L7 model: HTTPRoute/GRPCRoute routing tables and L7 AuthorizationPolicies, built once from
 * the zmesh.v1 resources (proto/zmesh/l7.proto) into an immutable, reference-counted l7_config that any
 * number of threads read without locks.
 *
 * Memory: everything reachable from an l7_config (rules, backends, filters, strings) is owned by it and stays
 * valid until its last reference is dropped with l7_config_unref(). Strings are NUL-terminated and never NULL
 * ("" when unset). Semantics: Gateway API (kubernetes-sigs/gateway-api apis/v1/httproute_types.go,
 * grpcroute_types.go) as Istio translates it (istio/istio pilot/pkg/config/kube/gateway/conversion.go). */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define L7_TYPE_URL_HTTP_ROUTE "type.googleapis.com/zmesh.v1.HTTPRoute"
#define L7_TYPE_URL_AUTHORIZATION "type.googleapis.com/zmesh.v1.L7Authorization"
#define L7_TYPE_URL_REQUEST_AUTHN "type.googleapis.com/zmesh.v1.RequestAuthentication"
#define L7_TYPE_URL_DESTINATION_RULE "type.googleapis.com/zmesh.v1.DestinationRule"

/* The L7 resource types a waypoint subscribes to, in the order stores and tables keep them: one list for
 * zmeshd's tables, the waypoint's subscription, its store and the builder's dispatch. */
enum l7_type { L7_T_HTTP_ROUTE, L7_T_AUTHORIZATION, L7_T_REQUEST_AUTHN, L7_T_DESTINATION_RULE, L7_N_TYPES };
/* The type URLs in enum l7_type's order, as an initializer list (for static tables that add their own). */
#define L7_TYPE_URLS                                                                                         \
    L7_TYPE_URL_HTTP_ROUTE, L7_TYPE_URL_AUTHORIZATION, L7_TYPE_URL_REQUEST_AUTHN, L7_TYPE_URL_DESTINATION_RULE
extern const char *const l7_type_urls[L7_N_TYPES];
/* The enum l7_type of url, or -1. */
int l7_type_index(const char *url);

/* Bounds (Gateway API's CRD maxItems where it has one). A resource beyond one is refused, never truncated. */
#define L7_MAX_RESOURCE_BYTES (1u << 20)
#define L7_MAX_PARENTS 32
#define L7_MAX_RULES 16
/* A VirtualService's http and tcp routes: Istio sets no maximum; this bound only keeps one resource's tables
 * sane (L7_MAX_RESOURCE_BYTES bounds it first in practice). */
#define L7_MAX_VS_RULES 4096
#define L7_MAX_MATCHES 64
#define L7_MAX_FILTERS 16
#define L7_MAX_BACKENDS 16
#define L7_MAX_HEADER_MATCHES 16
#define L7_MAX_QUERY_MATCHES 16
#define L7_MAX_HEADER_MODS 16
#define L7_MAX_STRING 4096
/* PCRE2 limits per match (pcre2_set_match_limit / pcre2_set_depth_limit): a pattern that backtracks past
 * them is a non-match, never a stalled worker. PCRE2's defaults are 10,000,000 each. */
#define L7_REGEX_MATCH_LIMIT 100000u
#define L7_REGEX_DEPTH_LIMIT 1000u
/* Longest joined value of one header name that a header match reads (Envoy joins repeats with ","); a
 * request whose joined value is longer does not match that header match. */
#define L7_MAX_JOINED_HEADER 16384

struct l7_config;
struct l7_builder;
struct l7_service_routes;

/* ---- building ---- */

/* A new, empty builder, or NULL (out of memory). */
struct l7_builder *l7_builder_new(void);
/* Adds one resource: pb[0..len) is the protobuf encoding of the message type_url names (L7_TYPE_URL_*), name
 * its "<namespace>/<name>". On error the resource is left out whole, err gets "HTTPRoute ns/name: rules[0].
 * matches[1].path.value: ..." and the return is -EINVAL (bad resource), -EEXIST (name added twice),
 * -EPROTONOSUPPORT (unknown type_url) or -ENOMEM. Nothing of pb is kept. */
int l7_builder_add(struct l7_builder *b, const char *type_url, const char *name, const uint8_t *pb,
                   size_t len, char *err, size_t errlen);
/* Derives the indexes and returns the config (refcount 1), or NULL (out of memory). Consumes b always. */
struct l7_config *l7_builder_finish(struct l7_builder *b);
/* Frees a builder that is not finished (NULL is a no-op). */
void l7_builder_free(struct l7_builder *b);

void l7_config_ref(struct l7_config *c);
/* Drops a reference; the last one frees everything the config handed out. NULL is a no-op. */
void l7_config_unref(struct l7_config *c);
/* How many routes and policies the config holds (for logs and /config_dump). */
size_t l7_config_n_routes(const struct l7_config *c);
size_t l7_config_n_policies(const struct l7_config *c);

/* ---- DestinationRule (src/mesh/destination_rule.h) ---- */
struct dr_rule;
/* The DestinationRule for Service svc_ns/svc_name, or NULL (none: Envoy's defaults). Borrowed from c. */
const struct dr_rule *l7_destination_rule_for(const struct l7_config *c, const char *svc_ns,
                                              const char *svc_name);
size_t l7_config_n_destination_rules(const struct l7_config *c);

/* ---- what a matched rule carries ---- */

/* Where a rule came from: Gateway API's HTTPRoute or GRPCRoute, or Istio's VirtualService
 * (networking.istio.io v1/v1beta1, istio/api networking/v1alpha3/virtual_service.proto), which zmeshd
 * converts into the same zmesh.v1.HTTPRoute. */
enum l7_route_kind { L7_ROUTE_HTTP = 0, L7_ROUTE_GRPC = 1, L7_ROUTE_VIRTUAL_SERVICE = 2 };
enum l7_filter_kind {
    L7_FILTER_REQUEST_HEADERS = 1,  /* RequestHeaderModifier */
    L7_FILTER_RESPONSE_HEADERS = 2, /* ResponseHeaderModifier */
    L7_FILTER_REDIRECT = 3,         /* RequestRedirect */
    L7_FILTER_REWRITE = 4,          /* URLRewrite */
    L7_FILTER_MIRROR = 5,           /* RequestMirror */
};
/* REGEX: VirtualService's uriRegexRewrite (every match of a pattern in the path replaced, \\N
 * back-references, Envoy's regex_rewrite). RAW_PREFIX: VirtualService's rewrite.uri, Envoy's prefix_rewrite
 * (the matched part of the path replaced as written). */
enum l7_path_mod {
    L7_PATH_KEEP = 0,
    L7_PATH_FULL = 1,
    L7_PATH_PREFIX = 2,
    L7_PATH_REGEX = 3,
    L7_PATH_RAW_PREFIX = 4
};

struct l7_kv {
    const char *name; /* lower-case */
    const char *value;
};
struct l7_header_mod {
    const struct l7_kv *set, *add;
    size_t n_set, n_add;
    const char *const *remove; /* lower-case */
    size_t n_remove;
};
struct l7_redirect {
    const char *scheme, *hostname; /* "" = the request's */
    uint8_t path_kind;             /* enum l7_path_mod */
    const char *path;              /* FULL: the path; PREFIX: the replacement of the matched prefix */
    uint16_t port;                 /* 0 = unset */
    uint16_t status;               /* 301, 302, 303, 307, 308 */
};
struct l7_regex; /* a compiled PCRE2 pattern, owned by the config */
struct l7_rewrite {
    const char *hostname; /* "" = unchanged (VirtualService's rewrite.authority lands here too) */
    uint8_t path_kind;    /* enum l7_path_mod */
    const char *path;     /* FULL/PREFIX: the value; REGEX: the substitution */
    const struct l7_regex *path_regex; /* REGEX: the pattern */
};
struct l7_mirror {
    const char *ns, *name;
    uint16_t port;
    uint32_t numerator, denominator; /* mirror when rnd % denominator < numerator */
};
struct l7_filter {
    uint8_t kind; /* enum l7_filter_kind */
    union {
        struct l7_header_mod headers; /* REQUEST_HEADERS, RESPONSE_HEADERS */
        struct l7_redirect redirect;
        struct l7_rewrite rewrite;
        struct l7_mirror mirror;
    } u;
};
struct l7_backend {
    const char *ns, *name; /* the Service */
    const char *subset;    /* VirtualService destination.subset: a DestinationRule subset's name, "" = none */
    uint16_t port;
    uint32_t weight;
    const struct l7_filter *filters; /* header modifiers only */
    size_t n_filters;
    const char *authority; /* VirtualService: this destination's Host rewrite, "" = none (the rule's wins) */
};
/* ---- VirtualService-only parts of a rule (NULL in a rule that has none) ---- */

/* Fractions are parts per million of requests (VirtualService's Percent 0..100 with decimals: 100% =
 * 1000000). */
#define L7_PPM 1000000u
/* fault: delay (fixedDelay) and abort (httpStatus or grpcStatus), each for its own fraction of requests. */
struct l7_fault {
    uint64_t delay_ms; /* 0 = no delay fault */
    uint32_t delay_ppm;
    uint16_t
        abort_status;   /* HTTP status of an abort, 0 = no abort fault (or a gRPC abort: grpc_status set) */
    int16_t abort_grpc; /* grpc-status of a gRPC abort (answered 200 trailers-only), -1 = none */
    uint32_t abort_ppm;
};
/* retries.retryOn conditions (Envoy's x-envoy-retry-on and x-envoy-retry-grpc-on names). */
enum l7_retry_on {
    L7_RETRY_5XX = 1u << 0,
    L7_RETRY_GATEWAY_ERROR = 1u << 1,
    L7_RETRY_RESET = 1u << 2,
    L7_RETRY_CONNECT_FAILURE = 1u << 3,
    L7_RETRY_RETRIABLE_4XX = 1u << 4,
    L7_RETRY_REFUSED_STREAM = 1u << 5,
    L7_RETRY_RETRIABLE_STATUS_CODES = 1u << 6,
    L7_RETRY_GRPC_CANCELLED = 1u << 7,
    L7_RETRY_GRPC_DEADLINE_EXCEEDED = 1u << 8,
    L7_RETRY_GRPC_INTERNAL = 1u << 9,
    L7_RETRY_GRPC_RESOURCE_EXHAUSTED = 1u << 10,
    L7_RETRY_GRPC_UNAVAILABLE = 1u << 11,
};
#define L7_MAX_RETRY_CODES 16
/* retries: attempts are retries after the first try (VirtualService's attempts); status codes are the ones
 * retryOn lists as numbers (Envoy's retriable_status_codes; 503 in Istio's default). */
struct l7_retry {
    uint32_t attempts;           /* 0 = no retries */
    uint64_t per_try_timeout_ms; /* 0 = none */
    uint32_t on;                 /* enum l7_retry_on bits */
    uint16_t codes[L7_MAX_RETRY_CODES];
    size_t n_codes;
    bool retry_other_hosts; /* Envoy's previous_hosts predicate: each retry goes to another host */
    uint64_t backoff_base_ms; /* retries.backoff: the back-off's base interval (max 10x); 0 = Envoy's 25 ms */
};
/* Istio's default retry policy, which applies to every rule (HTTPRoute and VirtualService) without retries:
 * 2 attempts, connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes (503), another host
 * each time (istio/istio pilot/pkg/networking/core/route/retry/retry.go). */
extern const struct l7_retry l7_default_retry;
/* corsPolicy: allowOrigins (StringMatch exact/prefix/regex), the rest as Envoy's CorsPolicy. */
struct l7_origin {
    uint8_t type; /* 0 exact, 1 prefix, 2 regex (full match) */
    const char *value;
    const struct l7_regex *regex;
};
struct l7_cors {
    const struct l7_origin *origins;
    size_t n_origins;
    const char *allow_methods, *allow_headers, *expose_headers; /* joined with ",", "" = unset */
    int64_t max_age_s;                                          /* -1 = unset */
    int8_t allow_credentials;                                   /* -1 unset, 0 false, 1 true */
    bool unmatched_preflight_forward; /* unmatchedPreflights FORWARD (Istio's default) vs IGNORE */
};
/* True when origin[0..len) is allowed by c's allowOrigins. */
bool l7_cors_origin_allowed(const struct l7_cors *c, const char *origin, size_t len);
/* Longest directResponse body. Istio raises Envoy's 4 KiB default to 1 MiB (istio/istio
 * pilot/pkg/networking/core/route/route.go DefaultMaxDirectResponseBodySizeBytes); zmesh's manifest reader
 * keeps scalars up to 256 KiB (src/zmeshd/manifest.h), so that is the bound here. */
#define L7_MAX_DIRECT_BODY (256u << 10)
/* directResponse: answered by the waypoint with this status and body. */
struct l7_direct_response {
    uint16_t status;
    const char *body; /* may hold NULs: body_len bytes */
    size_t body_len;
};

struct l7_rule {
    const char *name;                /* the rule's name, else "<ns>.<name>.<index>" (for logs) */
    const char *route;               /* "<ns>/<name>" of its route */
    uint8_t kind;                    /* enum l7_route_kind */
    uint32_t index;                  /* position in the route's rules */
    const struct l7_filter *filters; /* in the order written */
    size_t n_filters;
    const struct l7_backend *backends;
    size_t n_backends;
    uint64_t total_weight;
    uint64_t request_timeout_ms, backend_request_timeout_ms; /* 0 = none */
    const struct l7_redirect *redirect;                      /* the rule's RequestRedirect, or NULL */
    const struct l7_rewrite *rewrite;                        /* the rule's URLRewrite, or NULL */
    /* VirtualService-only (NULL when unset; retry NULL means l7_default_retry) */
    const struct l7_fault *fault;
    const struct l7_retry *retry;
    const struct l7_cors *cors;
    const struct l7_direct_response *direct;
};

/* ---- matching ---- */

struct l7_header {
    const char *name; /* lower-case */
    size_t name_len;
    const char *value;
    size_t value_len;
};
struct l7_request {
    const char *method; /* NUL-terminated */
    const char *path;   /* :path with the query, path_len bytes (need not be NUL-terminated) */
    size_t path_len;
    const char *authority; /* NUL-terminated, "" when absent */
    const struct l7_header *headers;
    size_t n_headers;
    bool grpc;     /* content-type application/grpc*; not a matching input (Istio's translation has none) */
    uint16_t port; /* the service port it came to, for VirtualService port matches (0 = unknown: they fail) */
    /* VirtualService scheme and source matches (NULL = unknown: a scheme match compares "http", a
     * sourceNamespace or sourceLabels match fails): the request's scheme, the namespace of the client's
     * identity, and the client workload's namespace and name (found by the peer's address). */
    const char *scheme;
    const char *source_namespace;
    const char *source_workload_ns, *source_workload;
};

/* The routes attached to Service svc_ns/svc_name on service port port: those whose parent names the Service
 * without a port, plus those naming exactly this port. NULL: no route attaches, and the caller sends to the
 * Service itself (Istio's default route). Borrowed from c. */
const struct l7_service_routes *l7_routes_for(const struct l7_config *c, const char *svc_ns,
                                              const char *svc_name, uint16_t port);
/* The first matching rule in precedence order, or NULL (the caller answers 404, Envoy's NR). */
const struct l7_rule *l7_match(const struct l7_service_routes *r, const struct l7_request *req);
/* The same, and *prefix and *prefix_len get the PathPrefix that matched (for ReplacePrefixMatch), or NULL/0
 * when the matching match was not a PathPrefix; for a VirtualService rule, the part of req->path its match
 * matched (for L7_PATH_RAW_PREFIX). prefix may be NULL. */
const struct l7_rule *l7_match_ex(const struct l7_service_routes *r, const struct l7_request *req,
                                  const char **prefix, size_t *prefix_len);
/* A VirtualService tcp route (TCPRoute): the ports it applies to (none: every port) and weighted
 * destinations. */
struct l7_tcp_rule {
    const char *route; /* "<ns>/<name>" */
    uint32_t index;    /* position in the VirtualService's tcp list */
    const uint16_t *ports;
    size_t n_ports;
    const struct l7_backend *backends;
    size_t n_backends;
    uint64_t total_weight;
    bool tls;                     /* a tls route's match (TLSRoute): tried before every tcp route */
    const char *only_ns, *only_name; /* tls: the one Service it applies to (sniHosts), "" = every Service */
};
/* The first tls route, else the first tcp route, of the VirtualServices attached to svc_ns/svc_name (oldest
 * first, each in order) that applies to port (Istio's waypoint: getWaypointTCPRoutes), or NULL (the connection
 * goes to the Service itself). Borrowed from c. */
const struct l7_tcp_rule *l7_tcp_route_for(const struct l7_config *c, const char *svc_ns,
                                           const char *svc_name, uint16_t port);
/* Weighted destination choice for a tcp route, as l7_pick_backend. */
int l7_tcp_pick_backend(const struct l7_tcp_rule *rule, uint64_t rnd);

/* Weighted backend choice with a caller-provided random number: the index into rule->backends, or -1 when
 * there are none or every weight is 0 (the caller answers 500). */
int l7_pick_backend(const struct l7_rule *rule, uint64_t rnd);

/* The path after a path modifier (URLRewrite's or RequestRedirect's): FULL replaces the path, PREFIX replaces
 * the matched prefix (Gateway API's ReplacePrefixMatch: "/foo/bar" with "/foo" -> "/xyz" is "/xyz/bar", with
 * "/foo" -> "/" is "/bar"), RAW_PREFIX replaces it as written (Envoy's prefix_rewrite: "/foo/bar" with "/foo"
 * -> "/xyz" is "/xyz/bar", "/foobar" with "/foo" -> "/x/" is "/x/bar"), KEEP copies it; the query is kept.
 * path[0..path_len) is :path with its query. Writes a NUL-terminated string into out[0..n). Returns its
 * length, -EINVAL (PREFIX without a matched prefix) or -ENOSPC. */
int l7_rewrite_path(uint8_t kind, const char *value, const char *prefix, size_t prefix_len, const char *path,
                    size_t path_len, char *out, size_t n);
/* The Location header of a RequestRedirect: scheme (rd's or req_scheme), host (rd's or the authority's host),
 * port (rd's; else, when rd sets no scheme, the authority's; omitted when it is the scheme's default 80/443)
 * and path (l7_rewrite_path). Returns its length, -EINVAL or -ENOSPC. */
int l7_redirect_location(const struct l7_redirect *rd, const char *prefix, size_t prefix_len,
                         const struct l7_request *req, const char *req_scheme, char *out, size_t n);

/* A gRPC request's content-type, as Envoy's Grpc::Common::hasGrpcContentType: "application/grpc", or it
 * followed by "+" or ";" ("application/grpc+proto"); "application/grpc-web" is not gRPC. */
bool l7_grpc_content_type(const char *v);

/* Compiles pattern the way routes and policies do (anchored full match, UTF-8, RE2's feature set) only to
 * check it: 0, or -EINVAL with the reason in err. For zmeshd's conversion. */
int l7_regex_check(const char *pattern, char *err, size_t errlen);

/* VirtualService's uriRegexRewrite: compiles pattern unanchored (every match in the path is replaced, as
 * Envoy's regex_rewrite with RE2::GlobalReplace) into *out: 0, or -EINVAL/-ENOMEM with the reason in err.
 * Free with l7_regex_free. */
int l7_regex_compile_rewrite(const char *pattern, struct l7_regex **out, char *err, size_t errlen);
void l7_regex_free(struct l7_regex *re);
/* The path with every match of re replaced by sub (RE2 rewrite syntax: \\N back-references), the query kept.
 * Writes a NUL-terminated string into out[0..n). Returns its length, -EINVAL or -ENOSPC. */
int l7_rewrite_path_regex(const struct l7_regex *re, const char *sub, const char *path, size_t path_len,
                          char *out, size_t n);
