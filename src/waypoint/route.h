/* What the waypoint does with one request, for HTTP/1.1 and h2c alike: L7 authorization (the policies that
 * target this waypoint's Gateway or the addressed Service: 403 `RBAC: access denied`), then the route of the
 * addressed Service (Gateway API's HTTPRoute/GRPCRoute, as zmeshd converted them): no route attached means
 * the Service itself, routes without a matching rule mean 404 (Envoy's NR), a redirect or an all-zero-weight
 * rule is answered here, else the chosen backend Service and port with the rule's rewrites, header modifiers
 * and timeout. */
#pragma once
#include <stdbool.h>
#include <stddef.h>

#include "http1/codec.h"
#include "mesh/destination_rule.h"
#include "mesh/l7.h"
#include "mesh/l7authz.h"
#include "waypoint/wp.h"

#define WP_MAX_MODS 8
/* RequestAuthentication's changes to one request (src/waypoint/authn.h): headers set (payload, claims),
 * headers removed (the token's), and the bytes of their values, all owned by the decision. */
#define WP_AUTHN_MAX_SET 24
#define WP_AUTHN_MAX_REMOVE 32
#define WP_AUTHN_BUF 4096

enum wp_decision_kind { WP_DECIDE_FORWARD, WP_DECIDE_LOCAL };

struct wp_decision {
    enum wp_decision_kind kind;
    /* LOCAL: the answer (body static or "") and what the access log says */
    int status;
    const char *body, *flags;
    char details[192];
    char location[1024]; /* a redirect's Location ("" otherwise) */
    const char *policy;  /* the policy that denied, or NULL */
    /* FORWARD: where to, and what to change */
    const struct service *svc; /* NULL for a workload address */
    uint16_t port;
    const struct l7_rule *rule; /* NULL: the default route */
    const char *route_name;     /* for logs: the rule's name, or "default" */
    bool rewrite_path, rewrite_authority;
    char path[2048], authority[256];
    const struct l7_header_mod *req_mods[WP_MAX_MODS], *resp_mods[WP_MAX_MODS];
    size_t n_req_mods, n_resp_mods;
    uint64_t timeout_ms; /* 0: none */
    /* Retries: the rule's policy, else Istio's default (l7_default_retry), which also covers the default
     * route. */
    const struct l7_retry *retry;
    /* RequestMirror: the Service a copy of the request goes to (fire and forget), when this request falls in
     * the filter's fraction; NULL otherwise. */
    const struct service *mirror_svc;
    uint16_t mirror_port;
    /* ---- VirtualService (route.c's vs_* helpers) ---- */
    /* LOCAL: the grpc-status a gRPC request gets (fault abort grpcStatus), -1: mapped from status */
    int grpc_status;
    /* fault delay: the codec waits this long before it sends the request upstream (FORWARD) or sends the
     * local answer (LOCAL: a redirect, direct response or fault abort after the delay); flag DI */
    uint64_t delay_ms;
    /* corsPolicy: the response headers this request gets (in resp_mods when set). The strings live here or in
     * the config, so a decision is used where wp_decide wrote it and never copied. */
    struct l7_header_mod cors_mod;
    struct l7_kv cors_kv[5];
    char cors_origin[512], cors_max_age[24], cors_echo_method[32], cors_echo_headers[512];
    /* DestinationRule (proxy.c wp_lb_prepare): the chosen backend's subset ("" or NULL: the whole
     * Service), and the Set-Cookie of a consistent-hash cookie generated for this request (Envoy's
     * addDownstreamSetCookie), added to resp_mods by the pick. */
    const char *subset;
    char lb_cookie[512];
    struct l7_kv lb_cookie_kv;
    struct l7_header_mod lb_cookie_mod;
    /* What wp_lb_prepare resolved, for every pick of the request (retries too), released and reported by
     * wp_request_done */
    bool lb_ready, lb_hashed;
    const struct dr_subset *lb_subset;   /* NULL: the whole Service */
    struct dr_policy lb_policy;          /* the parts that apply (NULL: defaults) */
    uint64_t lb_hash;                    /* the request's key, when lb_hashed */
    uint32_t lb_picks;                   /* picks so far (the retry attempt for a hash policy) */
    void *lb_circuit;                    /* the cluster's in-flight count this request holds, or NULL */
    const struct dr_outlier *lb_outlier; /* NULL: no outlier detection */
    uint64_t lb_cluster;                 /* the cluster's key (Service, subset, port) */
    size_t lb_hosts;                     /* eligible endpoints at the last pick (maxEjectionPercent's base) */
    /* RequestAuthentication (authn.h): a LOCAL 401/403 carries www_authenticate ("" = none); a FORWARD under
     * JWT rules has authn_mod first in req_mods (the rules' output headers dropped, the token removed, its
     * payload and claims copied) and, for a token in a query parameter, the path without it (rewrite_path). */
    char www_authenticate[512];
    struct l7_header_mod authn_mod;
    struct l7_kv authn_set[WP_AUTHN_MAX_SET];
    const char *authn_remove[WP_AUTHN_MAX_REMOVE];
    char authn_buf[WP_AUTHN_BUF];
};

/* DestinationRule for a request that d forwards (d->svc, d->port, d->subset), once, after wp_decide: the
 * subset (-ESRCH when no DestinationRule defines it: Envoy's missing cluster, 503, flag NC,
 * cluster_not_found), the policy, the hash key from req (a generated hash cookie is added to d's response
 * modifiers) and the connection pool's admission (-EUSERS past its limits: Envoy's overflow, 503, flag UO,
 * WP_OVERFLOW_BODY; -EINPROGRESS for an HTTP/1.1 request beyond maxConnections, which waits for a
 * connection: tries.h wp_pending_wait). http2: the request is HTTP/2 (its pool limits differ). Returns 0 when
 * d may go on. */
int wp_lb_prepare(struct wp_tunnel *t, struct wp_decision *d, const struct l7_request *req, bool http2);
/* One endpoint for d (each try of a request calls it; a hash policy mutates the key per attempt as Envoy's
 * retries do): wp_pick_endpoint's contract under what wp_lb_prepare resolved (without it, wp_pick_endpoint). */
int wp_pick_endpoint_dec(struct wp_tunnel *t, struct wp_decision *d, struct lb_choice *out);
/* A try of d's request ended with status at w (a retry follows): outlier detection counts it. */
void wp_try_done(struct wp_decision *d, const struct workload *w, int status);
/* Envoy's local reply to a circuit breaker's overflow (details upstream_reset_before_response_started{overflow}). */
#define WP_OVERFLOW_BODY "upstream connect error or disconnect/reset before headers. reset reason: overflow"
/* The request that d decided has ended with status (0: no response) from endpoint w (NULL when none was
 * reached): releases its connectionPool slot and reports the outcome to outlier detection. Idempotent. */
void wp_request_done(struct wp_decision *d, const struct workload *w, int status);

/* Decides for req (borrowed) on tunnel t. Returns 0 with *d filled. A LOCAL answer carries resp_mods too (a
 * rule's response headers on its redirect or direct response, CORS headers on a preflight): the codecs add
 * them to the local reply. */
int wp_decide(struct wp_tunnel *t, const struct l7_request *req, struct wp_decision *d);
/* A TCP stream's L7 authorization (the policies of wp_decide, Istio's TCP semantics: l7_authz_input.tcp):
 * true when allowed; *matched is the deciding policy or NULL. */
bool wp_authorize_stream(struct wp_tunnel *t, const char **matched);

/* A TCP passthrough connection on tunnel t: the Service and port it goes to. A VirtualService tcp route
 * attached to the addressed Service and port picks one of its weighted destinations (and *subset its
 * destination.subset, "" for none, for the DestinationRule's endpoint choice); otherwise *svc and *port are
 * the tunnel's. Returns 0, or -ENOENT when the picked destination names no Service (Envoy closes such a
 * connection). */
int wp_decide_tcp(struct wp_tunnel *t, const struct service **svc, uint16_t *port, const char **subset);
/* The endpoint of a TCP connection to svc:port: with a subset ("" or NULL: none), one of the endpoints of that
 * DestinationRule subset under its load balancer (-ESRCH when no DestinationRule defines it, as Envoy has no
 * such cluster), else wp_pick_endpoint. 0, or a negative errno (no healthy endpoint: -ENOENT). */
int wp_pick_tcp_endpoint(struct wp_tunnel *t, const struct service *svc, uint16_t port, const char *subset,
                         struct lb_choice *out);

/* Applies header modifiers in order to hv[0..*n) (room for cap): set replaces every field of that name (or
 * adds one), add appends, remove drops; names compared with name_eq (a name against a lower-case one). The
 * modifiers' strings are borrowed from the view's config. */
void wp_apply_mods(const struct l7_header_mod *const *mods, size_t n_mods, struct http1_hdr *hv, size_t *n,
                   size_t cap, bool (*name_eq)(const char *a, size_t alen, const char *lower));
