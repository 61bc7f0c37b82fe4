/* The waypoint's telemetry: Istio's HTTP and TCP metrics with reporter="waypoint" (what Envoy's istio_stats
 * filter reports for a SERVER_GATEWAY: istio/proxy source/extensions/filters/http/istio_stats/istio_stats.cc,
 * testdata/metric/server_waypoint_proxy_*.yaml.tmpl), their exposition for :15020/metrics, and Istio's
 * default access log line in text and JSON (istio/istio pilot/pkg/model/telemetry_logging.go).
 *
 * Cost model (as ztunnel's metrics): a request builds its label text once on the stack and finds its label
 * set with one hash lookup (core/prom.h's registry, a mutex around one chain walk); a set that exists costs
 * no allocation, and its counters and histogram buckets move with relaxed atomics. Label sets live as long as
 * the process. Every function here is thread-safe. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mesh/model.h"

/* ---- response flags: a set, printed as Envoy prints it ---- */

/* Envoy's response flags, one bit each, in the order of its CoreResponseFlag enum (envoyproxy/envoy
 * envoy/stream_info/stream_info.h), which is the order ResponseFlagUtils::toShortString prints a set in,
 * joined with "," (source/common/stream_info/utility.cc; "UT,DI,FI" in its tests). */
enum wp_response_flag {
    WP_RF_LH,
    WP_RF_UH,
    WP_RF_UT,
    WP_RF_LR,
    WP_RF_UR,
    WP_RF_UF,
    WP_RF_UC,
    WP_RF_UO,
    WP_RF_NR,
    WP_RF_DI,
    WP_RF_FI,
    WP_RF_RL,
    WP_RF_UAEX,
    WP_RF_RLSE,
    WP_RF_DC,
    WP_RF_URX,
    WP_RF_SI,
    WP_RF_IH,
    WP_RF_DPE,
    WP_RF_UMSDR,
    WP_RF_RFCF,
    WP_RF_NFCF,
    WP_RF_DT,
    WP_RF_UPE,
    WP_RF_NC,
    WP_RF_OM,
    WP_RF_DF,
    WP_RF_DO,
    WP_RF_DR,
    WP_RF_UDO,
    WP_RF_COUNT
};
/* Longest printed set the waypoint keeps (with its NUL); a longer one is cut at a flag boundary (logged). */
#define WP_RF_TEXT_MAX 64
/* The set of the comma-separated short names in s ("DI,FI"; NULL, "" and "-" are the empty set). A name that
 * is not one of Envoy's is left out with a rate-limited warning. */
uint32_t wp_flags_parse(const char *s);
/* Writes set f as Envoy prints it ("-" when empty) into buf[0..n). Returns buf. */
const char *wp_flags_format(uint32_t f, char *buf, size_t n);
/* The set of s with bit flag added, printed into buf[0..n). Returns buf. */
const char *wp_flags_add(const char *s, enum wp_response_flag flag, char *buf, size_t n);

/* What one finished HTTP request knows. Everything is borrowed and only read during the call. */
struct wp_req_info {
    /* The downstream peer: its workload by source IP in the Address snapshot (NULL when unknown) and the
     * HBONE peer certificate's SPIFFE id (NULL on a connection without one). */
    const struct workload *src_wl;
    const char *src_principal;
    /* The upstream endpoint's workload (NULL when no endpoint was chosen) and the service the request was
     * addressed to (the HBONE CONNECT's target; NULL when it named a workload, not a service). */
    const struct workload *dst_wl;
    const struct service *dst_svc;
    /* The request's Host / :authority, Envoy's "host header fallback" for destination_service and
     * destination_service_name when dst_svc is NULL. May be NULL. */
    const char *host;
    bool grpc;                  /* request_protocol "grpc" (content-type application/grpc*), else "http" */
    int response_code;          /* 0 when no response was sent (downstream reset), as Envoy reports it */
    int grpc_status;            /* grpc-status of the response, -1 when none (grpc_response_status="") */
    const char *response_flags; /* Envoy's short flags: "-" (or NULL) when none, "NR", "UH", "UF", "URX"... */
    /* Envoy's downstream wire bytes (headers and body as received from / sent to the downstream). */
    uint64_t request_bytes, response_bytes;
    uint64_t duration_ms; /* request start to the last byte of the response */
    /* gRPC messages in each direction (istio_request_messages_total / istio_response_messages_total). */
    uint64_t request_messages, response_messages;
};

/* Most label sets per layout (HTTP, gRPC messages, TCP). Label values come partly from outside (the Host
 * header when no service was addressed, peer identities), so their number is bounded: past the limit a
 * request is not counted (-ENOSPC), a rate-limited warning says so, and
 * zmesh_metrics_label_sets_refused_total counts it. An HTTP set renders to about 70 KiB (three histograms),
 * which sets the scale. */
#define WP_METRICS_MAX_SETS 2048
/* Longest Host header used as a label value (destination_service); a longer one is "unknown", with a warning.
 */
#define WP_HOST_LABEL_MAX 253

/* Records one finished request: istio_requests_total, the histograms istio_request_duration_milliseconds,
 * istio_request_bytes and istio_response_bytes, and for gRPC istio_request_messages_total and
 * istio_response_messages_total. Returns 0, -EINVAL for a NULL ri, -ENOSPC past WP_METRICS_MAX_SETS, or
 * -ENOMEM (the request is then not counted). */
int wp_metrics_request(const struct wp_req_info *ri);

/* The gRPC message counters of one peer label set; owned by the registry, never freed. */
struct wp_grpc_msgs;

/* For a long gRPC stream, whose message counters istio_stats moves every reporting interval rather than at
 * the end: resolves the stream's message set once (from ri's peer fields: workloads, principal, service,
 * host) so that wp_metrics_grpc_add can count messages as they pass. The final wp_metrics_request then
 * carries only the messages not yet added. NULL on ENOMEM or a NULL ri. */
struct wp_grpc_msgs *wp_metrics_grpc_stream(const struct wp_req_info *ri);
/* Adds messages to the set (relaxed atomics); NULL does nothing. */
void wp_metrics_grpc_add(struct wp_grpc_msgs *m, uint64_t request_messages, uint64_t response_messages);

/* The counters of a TCP stream proxied through the waypoint; owned by the registry, never freed. */
struct wp_tcp_set;

/* Counts istio_tcp_connections_opened_total for a TCP stream (request_protocol "tcp") under ri's labels
 * (ri's HTTP-only fields are not used; response_flags is ri->response_flags) and returns the set that its
 * bytes and its close are counted in: Envoy's istio_stats fixes a TCP stream's labels once, so all four TCP
 * counters share them. Call it once the upstream outcome is known (e.g. "UF" on a failed connect). NULL only
 * on ENOMEM or a NULL ri; the other wp_metrics_tcp_* accept NULL and do nothing. */
struct wp_tcp_set *wp_metrics_tcp_open(const struct wp_req_info *ri);
/* Adds bytes: received = from the downstream, sent = to the downstream (istio_tcp_received_bytes_total and
 * istio_tcp_sent_bytes_total). May be called as bytes move. */
void wp_metrics_tcp_bytes(struct wp_tcp_set *m, uint64_t received, uint64_t sent);
/* Counts istio_tcp_connections_closed_total for the stream. */
void wp_metrics_tcp_close(struct wp_tcp_set *m);

/* A retry started / a request ran out of attempts on a retriable failure (Envoy's URX): the counters
 * zmesh_waypoint_upstream_rq_retry_total and zmesh_waypoint_upstream_rq_retry_limit_exceeded_total. */
void wp_telemetry_retry(void);
void wp_telemetry_retry_exhausted(void);

/* Sets the tag label of istio_build{component="proxy",tag=...} (copied; NULL or "" means "unknown"). */
void wp_metrics_set_build_tag(const char *tag);

/* Renders every waypoint metric: OpenMetrics 1.0 (counter families named without _total in HELP/TYPE, "# EOF"
 * last) when openmetrics, else Prometheus text 0.0.4. Returns a malloc'd NUL-terminated buffer (caller frees)
 * and its length in *len (len may be NULL), or NULL on ENOMEM. */
char *wp_metrics_render(bool openmetrics, size_t *len);
/* Content-Type to send with wp_metrics_render's output. */
const char *wp_metrics_content_type(bool openmetrics);

/* One access log line's fields. Strings are borrowed; NULL or "" is printed "-" (text) or null (JSON), as
 * Envoy prints an empty command operator. */
struct wp_access {
    uint64_t start_ms_wall;               /* %START_TIME%: ms since the epoch, printed as UTC with ms */
    const char *method, *path, *protocol; /* %REQ(:METHOD)%, %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%, %PROTOCOL%
                                             ("HTTP/1.1", "HTTP/2") */
    int response_code;                    /* %RESPONSE_CODE%: 0 when no response was sent */
    const char *response_flags;           /* %RESPONSE_FLAGS% ("-" when none) */
    const char *response_code_details;    /* %RESPONSE_CODE_DETAILS% ("via_upstream", "route_not_found"...) */
    const char *termination_details;      /* %CONNECTION_TERMINATION_DETAILS% */
    const char *upstream_failure;         /* %UPSTREAM_TRANSPORT_FAILURE_REASON% */
    uint64_t bytes_received, bytes_sent;  /* %BYTES_RECEIVED% / %BYTES_SENT%: bodies */
    uint64_t duration_ms;                 /* %DURATION% */
    int64_t upstream_service_time_ms;     /* %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%; -1 when none */
    const char *xff, *user_agent, *request_id, *authority; /* %REQ(...)% */
    const char *upstream_host;     /* %UPSTREAM_HOST%: "envoy://connect_originate/ip:port" on a waypoint */
    const char *upstream_cluster;  /* %UPSTREAM_CLUSTER_RAW% */
    const char *upstream_local;    /* %UPSTREAM_LOCAL_ADDRESS% */
    const char *downstream_local;  /* %DOWNSTREAM_LOCAL_ADDRESS% */
    const char *downstream_remote; /* %DOWNSTREAM_REMOTE_ADDRESS% */
    const char *sni;               /* %REQUESTED_SERVER_NAME% */
    const char *route_name;        /* %ROUTE_NAME% */
};

/* Room for an ordinary access log line (Envoy bounds each header by its 60 KiB header limit; a line longer
 * than the caller's buffer is refused, not cut). */
#define WP_ACCESS_LINE_MAX 16384

/* Formats Istio's default access log line for a into buf (n bytes): the EnvoyTextLogFormat text line, or when
 * json the EnvoyJSONLogFormatIstio object (its keys, compact, in key order) with Envoy's JSON types (numbers
 * for codes, sizes and durations; null for empty values). The line ends in '\n' and buf is NUL-terminated.
 * Returns the line's length, -ENOSPC when it does not fit (buf is then ""), -ENOMEM, or -EINVAL. */
int wp_access_format(const struct wp_access *a, bool json, char *buf, size_t n);
