/* ztunnel's L4 telemetry: Istio's TCP metrics (istio/ztunnel src/proxy/metrics.rs) in a registry shared by
 * all worker threads, and their Prometheus / OpenMetrics rendering for :15020/metrics.
 *
 * Cost model: a connection resolves its label set once (metrics_conn_open: one label string build, one hash
 * lookup under a mutex, no allocation when the set exists) and then adds bytes with relaxed atomics, so the
 * counters move while a long connection is still open. Label sets are never freed while the process runs. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mesh/model.h"

/* The facts a connection knows. Everything is borrowed and only read during the call. */
struct conn_info {
    bool inbound;                           /* reporter "destination" (inbound) or "source" (outbound) */
    const struct workload *src_wl, *dst_wl; /* may be NULL */
    /* Full spiffe:// ids or NULL. src_principal, as Istio sets it: inbound, the verified mTLS peer's id (NULL
     * on plaintext 15006); outbound, this pod's own id when the connection goes over HBONE (NULL for plain
     * TCP). It is never derived from src_wl. dst_principal is used only when dst_wl is NULL: with a known
     * destination workload the label is that workload's identity, as Istio does. */
    const char *src_principal, *dst_principal;
    const struct service *dst_svc; /* may be NULL */
    bool mtls;                     /* connection_security_policy: mutual_tls, else unknown */
};

/* The counters of one label set; owned by the registry, never freed while running. */
struct metric_set;

/* Counts a connection open (response_flags "-") and returns the set to add bytes to. Thread-safe.
 * NULL only on ENOMEM (every other metrics_* call accepts NULL and does nothing). */
struct metric_set *metrics_conn_open(const struct conn_info *ci);

/* Adds bytes to the set: received = downstream->upstream, sent = upstream->downstream. Relaxed atomics. */
void metrics_add_bytes(struct metric_set *m, uint64_t received, uint64_t sent);

/* Counts the close under the label set of ci with response_flags = flags ("-" when clean, "DENY", "CONNECT",
 * "TLS_FAILURE"...; NULL means "-"); also counts istio_tcp_connections_failed_total there when failed.
 * ci's pointers must still be valid (the connection holds its snapshot). Thread-safe. */
void metrics_conn_close(const struct conn_info *ci, const char *flags, bool failed);

/* Same as metrics_conn_close, for a connection that kept only the set metrics_conn_open returned: the label
 * set is that one with response_flags replaced by flags. Needs no conn_info. Thread-safe. */
void metrics_set_close(struct metric_set *m, const char *flags, bool failed);

/* istio_tcp_sockets_open{reporter} gauge: one open per accepted downstream socket, one close when it is
 * closed (inbound = reporter "destination"). Relaxed atomics. */
void metrics_socket_open(bool inbound);
void metrics_socket_close(bool inbound);

/* Sets the tag label of istio_build{component="ztunnel",tag=...} (copied; default "unknown"). Call before
 * the first render. */
void metrics_set_build_tag(const char *tag);
/* Shared mode's pod proxy metrics (istio/ztunnel src/inpod/metrics.rs, registered under istio_): the pods
 * served and waiting for a retry, and proxies started and stopped. Rendered once metrics_inpod_set ran. Any
 * thread. */
void metrics_inpod_set(uint64_t active, uint64_t pending);
void metrics_inpod_started(void);
void metrics_inpod_stopped(void);

/* Renders every metric: OpenMetrics 1.0 (family names without _total in HELP/TYPE, "# EOF" last) when
 * openmetrics, else Prometheus text 0.0.4. Returns a malloc'd NUL-terminated buffer (caller frees) and its
 * length in *len, or NULL on ENOMEM. */
char *metrics_render(bool openmetrics, size_t *len);

/* Content-Type to send with metrics_render's output. */
const char *metrics_content_type(bool openmetrics);
