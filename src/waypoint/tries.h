/* A request's tries, for both codecs (http1.c, h2c.c): which endpoint the next try goes to (another host than
 * the ones tried when the policy asks for it: Envoy's previous_hosts predicate, Istio's
 * host_selection_retry_max_attempts), whether a try that failed is tried again under the request's retry
 * policy (mesh/retry.h), the back-off before it, and Envoy's URX flag when the attempts ran out. What a codec
 * keeps to replay the request is its own. */
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "mesh/retry.h"
#include "waypoint/route.h"
#include "waypoint/wp.h"

/* Hosts remembered as tried; picks per try that look for one not tried (Istio's default is 5). */
#define WP_TRIED_MAX 8
#define WP_HOST_PICKS 5
/* Room for a flags string with ",URX" appended. */
#define WP_FLAGS_MAX 32

struct wp_tries {
    unsigned n; /* tries started */
    const struct workload *host[WP_TRIED_MAX];
    bool exhausted;   /* a retriable failure with no attempt left (Envoy's URX) */
    bool overflow;    /* a retry refused by connectionPool.http.maxRetries (Envoy's retry overflow: UO) */
    void *retry_held; /* the cluster's retries-in-flight count this request's retry holds, or NULL */
};

/* The endpoint for the next try of the request d decided (under its DestinationRule: wp_pick_endpoint_dec),
 * recorded in tr (n counts it). 0, or -ENOENT (no healthy upstream: Envoy's UH). */
int wp_try_pick(struct wp_tunnel *t, struct wp_decision *d, struct wp_tries *tr, struct lb_choice *out);
/* After a try ended as e: true when d's policy retries it and attempts are left (counted in the retry
 * metric); false otherwise, with tr->exhausted set (and counted) when only the attempts were missing.
 * connectionPool.http.maxRetries (Envoy's retry circuit breaker, per cluster across the workers): a retry
 * holds one of the cluster's retries in flight from when it is decided until the next decision about the
 * request (wp_try_again again, or wp_tries_end); one that would exceed the limit is not made (false,
 * tr->overflow set: flag UO, counted as Envoy's upstream_rq_retry_overflow) and the try's own outcome is the
 * answer. */
bool wp_try_again(const struct wp_decision *d, struct wp_tries *tr, const struct l7_try *e);
/* The request is over (its codec frees it): a retry it holds is released. Idempotent. */
void wp_tries_end(struct wp_tries *tr);
/* Retries refused by maxRetries so far, all clusters (zmesh_waypoint_upstream_rq_retry_overflow_total). */
uint64_t wp_try_overflows(void);
/* That counter for /metrics (appended to b). */
struct prom_buf;
void wp_try_metrics(struct prom_buf *b, bool openmetrics);
/* The back-off before the next try of d's request (Envoy's jittered exponential back-off, d's retries.backoff). */
uint64_t wp_try_backoff_ms(struct wp_worker *w, const struct wp_decision *d, const struct wp_tries *tr);
/* DestinationRule connectionPool for the upstream connections of d's request (its cluster's policy, else
 * Istio's defaults): connectionPool.tcp.connectTimeout bounds a new connection's setup (TCP, TLS, the HBONE
 * CONNECT's answer; Envoy's cluster connect_timeout, meshConfig.connectTimeout's default 10 s); a pooled
 * connection takes at most max_requests requests (http.maxRequestsPerConnection, 0: unlimited) and closes
 * after idle_ms without one (http.idleTimeout, Istio's default 1 h). */
#define WP_CONNECT_TIMEOUT_DEFAULT_MS 10000u
#define WP_UPSTREAM_IDLE_DEFAULT_MS (3600ull * 1000)
struct wp_conn_limits {
    uint64_t connect_timeout_ms, idle_ms;
    uint32_t max_requests;
};
struct wp_conn_limits wp_try_conn_limits(const struct wp_decision *d);
/* Envoy's pending requests (DestinationRule connectionPool, HTTP/1.1): after wp_lb_prepare answered
 * -EINPROGRESS (maxConnections requests in flight in the cluster), the codec queues the request in p (its own
 * storage, zeroed here) until a place frees up on any worker; then d holds the place (released by
 * wp_request_done) and ready(p) runs from t's worker loop. At most http1MaxPendingRequests wait per cluster
 * (Istio's default 2^32-1): beyond, -EUSERS (overflow: 503 UO with x-envoy-overloaded). A request that goes
 * away meanwhile (its client left, its timeout) calls wp_pending_cancel before wp_request_done. */
struct cb_slot;
struct wp_pending {
    struct wp_pending *next, *prev; /* the worker's queue */
    struct wp_worker *w;
    struct wp_decision *d;
    struct cb_slot *slot;
    uint64_t max;    /* the cluster's places (maxConnections, or http2MaxRequests when lower) */
    struct timer tm; /* ready runs from it */
    void (*ready)(struct wp_pending *p);
    bool queued;
};
int wp_pending_wait(struct wp_tunnel *t, struct wp_decision *d, struct wp_pending *p,
                    void (*ready)(struct wp_pending *p));
/* p leaves the queue (its pending place released), or a place it was given and not yet started is kept for
 * wp_request_done to release. Idempotent; a zeroed p is a no-op. */
void wp_pending_cancel(struct wp_pending *p);
/* Requests waiting in this thread's queue. */
size_t wp_pending_n(void);

/* Envoy's local reply to a connect timeout (flag UF, details
 * upstream_reset_before_response_started{connection_timeout}). */
#define WP_CONNECT_TIMEOUT_BODY                                                                              \
    "upstream connect error or disconnect/reset before headers. reset reason: connection timeout"
/* flags (NULL: "-") with URX beside them when the attempts ran out ("URX", "UF,URX"), UO when maxRetries
 * refused a retry ("UO", "UF,UO"). buf holds the result when one is made. */
const char *wp_try_flags(const struct wp_tries *tr, const char *flags, char buf[WP_FLAGS_MAX]);
