/* The waypoint's metrics and access log (telemetry.h).
 *
 * Label values follow istio_stats' SERVER_GATEWAY branch (istio/proxy istio_stats.cc populatePeerInfo): the
 * source is the downstream peer as workload discovery describes it (istio/proxy
 * source/extensions/common/workload_discovery/api.cc `convert`: app = canonical name, version = canonical
 * revision, namespace "default" and the SPIFFE id's defaults when elided), the destination is the upstream
 * endpoint's workload, destination_service comes from the service (else the Host header), and a missing value
 * is "unknown" except source_canonical_revision ("latest") and grpc_response_status ("" when none).
 *
 * Three registries (core/prom.h), one per label layout:
 *   - HTTP sets: the peer labels + request_protocol, response_code, grpc_response_status, response_flags,
 *     connection_security_policy; a request counter and three histograms.
 *   - message sets: the peer labels alone, because istio_stats adds the gRPC message counters while its tag
 *     list holds only those (testdata/metric/server_request_messages.yaml.tmpl); an HTTP set of a gRPC
 * request finds its message set once, when it is created, so a request still costs one lookup.
 *   - TCP sets: the peer labels + request_protocol="tcp", response_flags, connection_security_policy. */
#include "waypoint/telemetry.h"

#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/log.h"
#include "core/prom.h"

/* DestinationRule outlier detection's families (proxy.c, declared in wp.h, which this file does not include). */
void wp_outlier_metrics(struct prom_buf *b, bool openmetrics);
/* DestinationRule maxRetries overflow (tries.c, declared in tries.h). */
void wp_try_metrics(struct prom_buf *b, bool openmetrics);

/* A SPIFFE id we build for a workload: "spiffe://" + trust domain + "/ns/" + ns + "/sa/" + sa. */
#define WP_SPIFFE_MAX 512
/* istio_build's tag value. */
#define WP_BUILD_TAG_MAX 128

/* Retries, all upstreams (wp_telemetry_retry). */
static _Atomic uint64_t wp_retries, wp_retries_exhausted;

struct wp_msg_set {
    struct prom_set ps; /* first: the registry hands back a struct prom_set * */
    _Atomic uint64_t request_messages, response_messages;
};

struct wp_http_set {
    struct prom_set ps;
    _Atomic uint64_t requests;
    struct prom_hist duration, request_bytes, response_bytes;
    struct wp_msg_set *msgs; /* gRPC only; set before the set is published, then read-only */
};

struct wp_tcp_set {
    struct prom_set ps;
    _Atomic uint64_t opened, closed, received, sent;
};

static struct {
    struct prom_registry http, msgs, tcp;
    pthread_mutex_t lock; /* build_tag */
    char build_tag[WP_BUILD_TAG_MAX];
} wp_reg = {
    .http = {.lock = PTHREAD_MUTEX_INITIALIZER, .limit = WP_METRICS_MAX_SETS},
    .msgs = {.lock = PTHREAD_MUTEX_INITIALIZER, .limit = WP_METRICS_MAX_SETS},
    .tcp = {.lock = PTHREAD_MUTEX_INITIALIZER, .limit = WP_METRICS_MAX_SETS},
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .build_tag = "unknown",
};

/* ---- labels ---- */

/* prom_registry_get, with the warning when the registry's limit refused a new set. *rc is -ENOSPC then,
 * -ENOMEM on another NULL. */
static struct prom_set *wp_get(struct prom_registry *r, const char *what, const char *labels, size_t len,
                               size_t obj_size, prom_set_init_fn init, void *arg, int *rc)
{
    struct prom_set *s = prom_registry_get(r, labels, len, obj_size, init, arg);
    if (s) return s;
    if (prom_registry_full(r)) {
        LOG_LIMITED(LOG_WARN, "telemetry",
                    "waypoint %s metrics hold %d label sets (WP_METRICS_MAX_SETS): not counted", what,
                    WP_METRICS_MAX_SETS);
        *rc = -ENOSPC;
    } else {
        *rc = -ENOMEM;
    }
    return NULL;
}

static bool wp_set(const char *s)
{
    return s && *s;
}

/* The namespace of "spiffe://<td>/ns/<ns>/sa/<sa>" into buf, or NULL when id has no such part (istio_stats
 * prefers the peer certificate's namespace to the peer metadata's). */
static const char *wp_spiffe_ns(const char *id, char *buf, size_t n)
{
    static const char scheme[] = "spiffe://";
    if (!wp_set(id) || strncmp(id, scheme, sizeof(scheme) - 1)) return NULL;
    const char *p = strstr(id + sizeof(scheme) - 1, "/ns/");
    if (!p) return NULL;
    p += 4;
    const char *end = strchr(p, '/');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    if (!len || len >= n) return NULL;
    memcpy(buf, p, len);
    buf[len] = '\0';
    return buf;
}

/* Workload discovery's identity of w: its own id when the model built one, else one with Istio's defaults for
 * an elided trust domain, namespace or service account. */
static const char *wp_identity(const struct workload *w, char *buf, size_t n)
{
    if (wp_set(w->spiffe_id)) return w->spiffe_id;
    int len = snprintf(buf, n, "spiffe://%s/ns/%s/sa/%s",
                       wp_set(w->trust_domain) ? w->trust_domain : "cluster.local",
                       wp_set(w->namespace_) ? w->namespace_ : "default",
                       wp_set(w->service_account) ? w->service_account : "default");
    return len > 0 && (size_t)len < n ? buf : NULL;
}

static const char *wp_ns(const struct workload *w)
{
    return wp_set(w->namespace_) ? w->namespace_ : "default";
}

/* The labels every waypoint metric starts with, in istio_stats' order: reporter, the eight source_* and the
 * eleven destination_* (testdata/metric/server_waypoint_proxy_request_total.yaml.tmpl). */
static void wp_peer_labels(struct prom_buf *b, const struct wp_req_info *ri)
{
    const struct workload *s = ri->src_wl, *d = ri->dst_wl;
    const struct service *svc = ri->dst_svc;
    char src_ns[256], dst_id[WP_SPIFFE_MAX], host[WP_HOST_LABEL_MAX];
    const char *ns = wp_spiffe_ns(ri->src_principal, src_ns, sizeof(src_ns));
    if (!ns && s) ns = wp_ns(s);

    prom_label(b, "reporter", "waypoint");
    prom_label(b, "source_workload", s ? s->workload_name : NULL);
    prom_label(b, "source_canonical_service", s ? s->canonical_name : NULL);
    prom_label(b, "source_canonical_revision",
               s && wp_set(s->canonical_revision) ? s->canonical_revision : "latest");
    prom_label(b, "source_workload_namespace", ns);
    prom_label(b, "source_principal", ri->src_principal);
    prom_label(b, "source_app", s ? s->canonical_name : NULL);
    prom_label(b, "source_version", s ? s->canonical_revision : NULL);
    prom_label(b, "source_cluster", s ? s->cluster_id : NULL);

    /* destination_service: the service's hostname, else the Host header; destination_service_name: the
     * service's name, else its hostname up to the first dot, else the whole Host header. */
    const char *svc_host = NULL, *svc_name = NULL;
    if (svc) {
        svc_host = svc->hostname;
        if (wp_set(svc->name)) {
            svc_name = svc->name;
        } else if (wp_set(svc->hostname)) {
            size_t l = strcspn(svc->hostname, ".");
            if (l < sizeof(host)) {
                memcpy(host, svc->hostname, l);
                host[l] = '\0';
                svc_name = host;
            }
        }
    } else if (wp_set(ri->host)) {
        if (strlen(ri->host) <= WP_HOST_LABEL_MAX)
            svc_host = svc_name = ri->host;
        else
            LOG_LIMITED(
                LOG_WARN, "telemetry",
                "Host header of %zu bytes (over WP_HOST_LABEL_MAX, %d): destination_service=\"unknown\"",
                strlen(ri->host), WP_HOST_LABEL_MAX);
    }

    prom_label(b, "destination_workload", d ? d->workload_name : NULL);
    prom_label(b, "destination_workload_namespace", d ? wp_ns(d) : NULL);
    prom_label(b, "destination_principal", d ? wp_identity(d, dst_id, sizeof(dst_id)) : NULL);
    prom_label(b, "destination_app", d ? d->canonical_name : NULL);
    prom_label(b, "destination_version", d ? d->canonical_revision : NULL);
    prom_label(b, "destination_service", svc_host);
    prom_label(b, "destination_canonical_service", d ? d->canonical_name : NULL);
    prom_label(b, "destination_canonical_revision", d ? d->canonical_revision : NULL);
    prom_label(b, "destination_service_name", svc_name);
    prom_label(b, "destination_service_namespace", svc ? svc->namespace_ : NULL);
    prom_label(b, "destination_cluster", d ? d->cluster_id : NULL);
}

/* response_flags and connection_security_policy, the last two labels of every HTTP and TCP set. istio_stats
 * says mutual_tls when both the peer's and its own certificate carry a SPIFFE id; the waypoint's own always
 * does on HBONE, so the peer's decides, and "none" without one. */
static void wp_tail_labels(struct prom_buf *b, const struct wp_req_info *ri)
{
    prom_label(b, "response_flags", wp_set(ri->response_flags) ? ri->response_flags : "-");
    prom_label(b, "connection_security_policy", wp_set(ri->src_principal) ? "mutual_tls" : "none");
}

/* ---- HTTP ---- */

struct wp_http_init {
    const char *labels; /* the message set's labels: a prefix of the HTTP set's */
    size_t len;
    bool grpc;
};

static void wp_http_set_init(struct prom_set *ps, void *arg)
{
    struct wp_http_set *h = (struct wp_http_set *)ps;
    const struct wp_http_init *in = arg;
    int rc;
    /* The message registry's lock is taken inside the HTTP registry's, never the other way round. When it
     * fails (ENOMEM, or the message sets reached their limit: wp_get warns), the set keeps counting requests
     * and skips message counts. */
    if (in->grpc)
        h->msgs = (struct wp_msg_set *)wp_get(&wp_reg.msgs, "gRPC message", in->labels, in->len,
                                              sizeof(struct wp_msg_set), NULL, NULL, &rc);
}

int wp_metrics_request(const struct wp_req_info *ri)
{
    struct prom_buf b;
    char code[16], grpc_status[16];
    int rc = 0;

    if (!ri) return -EINVAL;
    prom_buf_init(&b);
    wp_peer_labels(&b, ri);
    struct wp_http_init in = {.len = b.len, .grpc = ri->grpc};
    prom_label(&b, "request_protocol", ri->grpc ? "grpc" : "http");
    snprintf(code, sizeof(code), "%d", ri->response_code > 0 ? ri->response_code : 0);
    prom_label(&b, "response_code", code);
    grpc_status[0] = '\0';
    if (ri->grpc && ri->grpc_status >= 0) snprintf(grpc_status, sizeof(grpc_status), "%d", ri->grpc_status);
    prom_label_raw(&b, "grpc_response_status", grpc_status);
    wp_tail_labels(&b, ri);
    if (b.oom) {
        rc = -ENOMEM;
        goto out;
    }
    in.labels = b.p;
    struct wp_http_set *h = (struct wp_http_set *)wp_get(
        &wp_reg.http, "HTTP", b.p, b.len, sizeof(struct wp_http_set), wp_http_set_init, &in, &rc);
    if (!h) goto out;
    atomic_fetch_add_explicit(&h->requests, 1, memory_order_relaxed);
    prom_hist_observe(&h->duration, ri->duration_ms);
    prom_hist_observe(&h->request_bytes, ri->request_bytes);
    prom_hist_observe(&h->response_bytes, ri->response_bytes);
    if (h->msgs) {
        /* istio_stats adds the deltas even when they are 0, so a gRPC call always has both samples. */
        atomic_fetch_add_explicit(&h->msgs->request_messages, ri->request_messages, memory_order_relaxed);
        atomic_fetch_add_explicit(&h->msgs->response_messages, ri->response_messages, memory_order_relaxed);
    }
out:
    prom_buf_free(&b);
    return rc;
}

/* ---- gRPC streams ---- */

struct wp_grpc_msgs *wp_metrics_grpc_stream(const struct wp_req_info *ri)
{
    struct prom_buf b;
    struct prom_set *m = NULL;

    if (!ri) return NULL;
    prom_buf_init(&b);
    wp_peer_labels(&b, ri);
    int rc;
    if (!b.oom)
        m = wp_get(&wp_reg.msgs, "gRPC message", b.p, b.len, sizeof(struct wp_msg_set), NULL, NULL, &rc);
    prom_buf_free(&b);
    return (struct wp_grpc_msgs *)m;
}

void wp_metrics_grpc_add(struct wp_grpc_msgs *m, uint64_t request_messages, uint64_t response_messages)
{
    struct wp_msg_set *ms = (struct wp_msg_set *)m;
    if (!ms) return;
    atomic_fetch_add_explicit(&ms->request_messages, request_messages, memory_order_relaxed);
    atomic_fetch_add_explicit(&ms->response_messages, response_messages, memory_order_relaxed);
}

/* ---- TCP ---- */

struct wp_tcp_set *wp_metrics_tcp_open(const struct wp_req_info *ri)
{
    struct prom_buf b;
    struct wp_tcp_set *m = NULL;
    int rc;

    if (!ri) return NULL;
    prom_buf_init(&b);
    wp_peer_labels(&b, ri);
    prom_label(&b, "request_protocol", "tcp");
    wp_tail_labels(&b, ri);
    if (!b.oom)
        m = (struct wp_tcp_set *)wp_get(&wp_reg.tcp, "TCP", b.p, b.len, sizeof(struct wp_tcp_set), NULL, NULL,
                                        &rc);
    if (m) atomic_fetch_add_explicit(&m->opened, 1, memory_order_relaxed);
    prom_buf_free(&b);
    return m;
}

void wp_metrics_tcp_bytes(struct wp_tcp_set *m, uint64_t received, uint64_t sent)
{
    if (!m) return;
    if (received) atomic_fetch_add_explicit(&m->received, received, memory_order_relaxed);
    if (sent) atomic_fetch_add_explicit(&m->sent, sent, memory_order_relaxed);
}

void wp_metrics_tcp_close(struct wp_tcp_set *m)
{
    if (m) atomic_fetch_add_explicit(&m->closed, 1, memory_order_relaxed);
}

/* ---- exposition ---- */

void wp_metrics_set_build_tag(const char *tag)
{
    pthread_mutex_lock(&wp_reg.lock);
    snprintf(wp_reg.build_tag, sizeof(wp_reg.build_tag), "%s", wp_set(tag) ? tag : "unknown");
    pthread_mutex_unlock(&wp_reg.lock);
}

const char *wp_metrics_content_type(bool openmetrics)
{
    return prom_content_type(openmetrics);
}

/* A counter family: name without _total, the registry of its sets and the counter's offset in a set. */
struct wp_counter {
    const char *name, *help;
    struct prom_registry *reg;
    size_t off;
};

static void wp_render_counter(struct prom_buf *b, bool om, const struct wp_counter *c)
{
    size_t n;
    struct prom_set *s = prom_registry_first(c->reg, &n);
    /* As Envoy, a family without any sample is not written at all. */
    if (!n) return;
    prom_header(b, om, c->name, PROM_COUNTER, c->help);
    for (size_t i = 0; i < n && s; i++, s = i < n ? s->onext : NULL) {
        uint64_t v = atomic_load_explicit((_Atomic uint64_t *)((char *)s + c->off), memory_order_relaxed);
        prom_printf(b, "%s_total{", c->name);
        prom_put(b, s->labels, s->len);
        prom_printf(b, "} %llu\n", (unsigned long long)v);
    }
}

struct wp_histogram {
    const char *name, *help;
    size_t off; /* struct prom_hist inside struct wp_http_set */
};

static void wp_render_histogram(struct prom_buf *b, bool om, const struct wp_histogram *hf)
{
    size_t n;
    struct prom_set *s = prom_registry_first(&wp_reg.http, &n);
    if (!n) return;
    prom_header(b, om, hf->name, PROM_HISTOGRAM, hf->help);
    for (size_t i = 0; i < n && s; i++, s = i < n ? s->onext : NULL)
        prom_hist_render(b, hf->name, s->labels, s->len, (const struct prom_hist *)((char *)s + hf->off));
}

char *wp_metrics_render(bool om, size_t *len)
{
    /* Envoy's order: counters, then gauges, then histograms, each by name. Help texts are istio.io's
     * (content/en/docs/reference/config/metrics). */
    static const struct wp_counter counters[] = {
        {"istio_request_messages", "Number of request messages of gRPC calls", &wp_reg.msgs,
         offsetof(struct wp_msg_set, request_messages)},
        {"istio_requests", "Number of requests handled by an Istio proxy", &wp_reg.http,
         offsetof(struct wp_http_set, requests)},
        {"istio_response_messages", "Number of response messages of gRPC calls", &wp_reg.msgs,
         offsetof(struct wp_msg_set, response_messages)},
        {"istio_tcp_connections_closed", "The total number of TCP connections closed", &wp_reg.tcp,
         offsetof(struct wp_tcp_set, closed)},
        {"istio_tcp_connections_opened", "The total number of TCP connections opened", &wp_reg.tcp,
         offsetof(struct wp_tcp_set, opened)},
        {"istio_tcp_received_bytes",
         "The size of total bytes received during request in case of a TCP connection", &wp_reg.tcp,
         offsetof(struct wp_tcp_set, received)},
        {"istio_tcp_sent_bytes", "The size of total bytes sent during response in case of a TCP connection",
         &wp_reg.tcp, offsetof(struct wp_tcp_set, sent)},
    };
    static const struct wp_histogram histograms[] = {
        {"istio_request_bytes", "HTTP request sizes (headers and body) in bytes",
         offsetof(struct wp_http_set, request_bytes)},
        {"istio_request_duration_milliseconds", "Duration of requests in milliseconds",
         offsetof(struct wp_http_set, duration)},
        {"istio_response_bytes", "HTTP response sizes (headers and body) in bytes",
         offsetof(struct wp_http_set, response_bytes)},
    };
    struct prom_buf b;
    char tag[WP_BUILD_TAG_MAX];

    pthread_mutex_lock(&wp_reg.lock);
    memcpy(tag, wp_reg.build_tag, sizeof(tag));
    pthread_mutex_unlock(&wp_reg.lock);

    prom_buf_init(&b);
    for (size_t i = 0; i < sizeof(counters) / sizeof(counters[0]); i++)
        wp_render_counter(&b, om, &counters[i]);
    /* istio_stats publishes the proxy's version as istio_build{component="proxy"} (testdata/metric/
     * istio_build.yaml): a waypoint is an Istio proxy. */
    prom_header(&b, om, "istio_build", PROM_GAUGE, "Istio component build info");
    prom_puts(&b, "istio_build{component=\"proxy\",tag=\"");
    prom_value(&b, tag);
    prom_puts(&b, "\"} 1\n");
    /* Envoy's cluster stats upstream_rq_retry and upstream_rq_retry_limit_exceeded, for all clusters. */
    prom_header(&b, om, "zmesh_waypoint_upstream_rq_retry", PROM_COUNTER,
                "Retries of upstream requests the waypoint started");
    prom_printf(&b, "zmesh_waypoint_upstream_rq_retry_total %llu\n",
                (unsigned long long)atomic_load_explicit(&wp_retries, memory_order_relaxed));
    prom_header(&b, om, "zmesh_waypoint_upstream_rq_retry_limit_exceeded", PROM_COUNTER,
                "Requests whose last try failed in a retriable way with no attempt left (flag URX)");
    prom_printf(&b, "zmesh_waypoint_upstream_rq_retry_limit_exceeded_total %llu\n",
                (unsigned long long)atomic_load_explicit(&wp_retries_exhausted, memory_order_relaxed));
    /* zmesh's own: what WP_METRICS_MAX_SETS kept out (Envoy has no such limit). */
    prom_header(
        &b, om, "zmesh_metrics_label_sets_refused", PROM_COUNTER,
        "Requests and streams not counted because their metric already had WP_METRICS_MAX_SETS label sets");
    const char *layouts[] = {"http", "grpc_messages", "tcp"};
    struct prom_registry *regs[] = {&wp_reg.http, &wp_reg.msgs, &wp_reg.tcp};
    for (size_t i = 0; i < 3; i++)
        prom_printf(&b, "zmesh_metrics_label_sets_refused_total{layout=\"%s\"} %llu\n", layouts[i],
                    (unsigned long long)atomic_load_explicit(&regs[i]->refused, memory_order_relaxed));
    wp_outlier_metrics(&b, om); /* DestinationRule outlier detection (proxy.c) */
    wp_try_metrics(&b, om);     /* DestinationRule maxRetries overflow (tries.c) */
    for (size_t i = 0; i < sizeof(histograms) / sizeof(histograms[0]); i++)
        wp_render_histogram(&b, om, &histograms[i]);
    if (om) prom_puts(&b, "# EOF\n");
    return prom_buf_take(&b, len);
}

void wp_telemetry_retry(void)
{
    atomic_fetch_add_explicit(&wp_retries, 1, memory_order_relaxed);
}

void wp_telemetry_retry_exhausted(void)
{
    atomic_fetch_add_explicit(&wp_retries_exhausted, 1, memory_order_relaxed);
}

/* ---- access log ---- */

/* Envoy's default %START_TIME% layout, "%Y-%m-%dT%H:%M:%E3SZ". */
static void wp_start_time(uint64_t ms, char *buf, size_t n)
{
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    size_t l = strftime(buf, n, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + l, n - l, ".%03uZ", (unsigned)(ms % 1000));
}

/* A text field: "-" when empty, as Envoy prints an empty operator. A control character (which the HTTP
 * parsers refuse in headers, but a path or an upstream error could still carry) becomes '?', so one request
 * stays one line. */
static void wp_text(struct prom_buf *b, const char *v)
{
    if (!wp_set(v)) {
        prom_put(b, "-", 1);
        return;
    }
    const char *run = v;
    for (const char *s = v;; s++) {
        unsigned char c = (unsigned char)*s;
        if (!c) {
            prom_put(b, run, (size_t)(s - run));
            return;
        }
        if (c < 0x20 || c == 0x7f) {
            prom_put(b, run, (size_t)(s - run));
            prom_put(b, "?", 1);
            run = s + 1;
        }
    }
}

/* The EnvoyTextLogFormat line (istio/istio pilot/pkg/model/telemetry_logging.go). */
static void wp_access_text(struct prom_buf *b, const struct wp_access *a, const char *start)
{
    prom_printf(b, "[%s] \"", start);
    wp_text(b, a->method);
    prom_put(b, " ", 1);
    wp_text(b, a->path);
    prom_put(b, " ", 1);
    wp_text(b, a->protocol);
    prom_printf(b, "\" %d ", a->response_code > 0 ? a->response_code : 0);
    wp_text(b, a->response_flags);
    prom_put(b, " ", 1);
    wp_text(b, a->response_code_details);
    prom_put(b, " ", 1);
    wp_text(b, a->termination_details);
    prom_put(b, " \"", 2);
    wp_text(b, a->upstream_failure);
    prom_printf(b, "\" %llu %llu %llu ", (unsigned long long)a->bytes_received,
                (unsigned long long)a->bytes_sent, (unsigned long long)a->duration_ms);
    if (a->upstream_service_time_ms >= 0)
        prom_printf(b, "%lld", (long long)a->upstream_service_time_ms);
    else
        prom_put(b, "-", 1);
    const char *quoted[] = {a->xff, a->user_agent, a->request_id, a->authority, a->upstream_host};
    for (size_t i = 0; i < sizeof(quoted) / sizeof(quoted[0]); i++) {
        prom_put(b, " \"", 2);
        wp_text(b, quoted[i]);
        prom_put(b, "\"", 1);
    }
    const char *plain[] = {
        a->upstream_cluster, a->upstream_local, a->downstream_local, a->downstream_remote, a->sni,
        a->route_name};
    for (size_t i = 0; i < sizeof(plain) / sizeof(plain[0]); i++) {
        prom_put(b, " ", 1);
        wp_text(b, plain[i]);
    }
    prom_put(b, "\n", 1);
}

/* A JSON string, or null when empty (Envoy's JSON formatter for an empty operator). */
static json_t *wp_jstr(const char *v)
{
    return wp_set(v) ? json_string(v) : json_null();
}

/* The EnvoyJSONLogFormatIstio object; keys sorted. */
static int wp_access_json(struct prom_buf *b, const struct wp_access *a, const char *start)
{
    char ust[24];
    int rc = -ENOMEM;
    json_t *o = json_object();
    if (!o) return -ENOMEM;
    /* The header's value is a string, as %RESP(...)% gives it. */
    if (a->upstream_service_time_ms >= 0)
        snprintf(ust, sizeof(ust), "%lld", (long long)a->upstream_service_time_ms);
    struct {
        const char *key;
        json_t *v;
    } kv[] = {
        {"authority", wp_jstr(a->authority)},
        {"bytes_received", json_integer((json_int_t)a->bytes_received)},
        {"bytes_sent", json_integer((json_int_t)a->bytes_sent)},
        {"connection_termination_details", wp_jstr(a->termination_details)},
        {"downstream_local_address", wp_jstr(a->downstream_local)},
        {"downstream_remote_address", wp_jstr(a->downstream_remote)},
        {"duration", json_integer((json_int_t)a->duration_ms)},
        {"method", wp_jstr(a->method)},
        {"path", wp_jstr(a->path)},
        {"protocol", wp_jstr(a->protocol)},
        {"request_id", wp_jstr(a->request_id)},
        {"requested_server_name", wp_jstr(a->sni)},
        {"response_code", json_integer(a->response_code > 0 ? a->response_code : 0)},
        {"response_code_details", wp_jstr(a->response_code_details)},
        {"response_flags", json_string(wp_set(a->response_flags) ? a->response_flags : "-")},
        {"route_name", wp_jstr(a->route_name)},
        {"start_time", json_string(start)},
        {"upstream_cluster", wp_jstr(a->upstream_cluster)},
        {"upstream_host", wp_jstr(a->upstream_host)},
        {"upstream_local_address", wp_jstr(a->upstream_local)},
        {"upstream_service_time", a->upstream_service_time_ms >= 0 ? json_string(ust) : json_null()},
        {"upstream_transport_failure_reason", wp_jstr(a->upstream_failure)},
        {"user_agent", wp_jstr(a->user_agent)},
        {"x_forwarded_for", wp_jstr(a->xff)},
    };
    bool ok = true;
    for (size_t i = 0; i < sizeof(kv) / sizeof(kv[0]); i++) {
        /* json_string refuses invalid UTF-8: such a value is logged as null rather than losing the line. */
        if (!kv[i].v) kv[i].v = json_null();
        if (json_object_set_new(o, kv[i].key, kv[i].v)) ok = false;
    }
    if (!ok) goto out;
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!s) goto out;
    prom_puts(b, s);
    prom_put(b, "\n", 1);
    free(s);
    rc = 0;
out:
    json_decref(o);
    return rc;
}

int wp_access_format(const struct wp_access *a, bool json, char *buf, size_t n)
{
    struct prom_buf b;
    char start[40];
    int rc = 0;

    if (!a || !buf || !n) return -EINVAL;
    buf[0] = '\0';
    wp_start_time(a->start_ms_wall, start, sizeof(start));
    prom_buf_init(&b);
    if (json)
        rc = wp_access_json(&b, a, start);
    else
        wp_access_text(&b, a, start);
    if (rc) goto out;
    if (b.oom) {
        rc = -ENOMEM;
        goto out;
    }
    if (b.len >= n || b.len > INT32_MAX) {
        rc = -ENOSPC;
        goto out;
    }
    memcpy(buf, b.p, b.len + 1);
    rc = (int)b.len;
out:
    prom_buf_free(&b);
    return rc;
}

/* ---- response flags ---- */

_Static_assert(WP_RF_COUNT <= 32, "response flags are a uint32_t set");
static const char *const rf_names[WP_RF_COUNT] = {
    "LH",  "UH", "UT", "LR",  "UR",    "UF",   "UC",   "UO", "NR",  "DI", "FI", "RL", "UAEX", "RLSE", "DC",
    "URX", "SI", "IH", "DPE", "UMSDR", "RFCF", "NFCF", "DT", "UPE", "NC", "OM", "DF", "DO",   "DR",   "UDO",
};

uint32_t wp_flags_parse(const char *s)
{
    uint32_t f = 0;
    if (!s) return 0;
    while (*s) {
        const char *e = strchr(s, ',');
        size_t n = e ? (size_t)(e - s) : strlen(s);
        bool known = n == 1 && *s == '-';
        for (int i = 0; i < WP_RF_COUNT && !known; i++)
            if (strlen(rf_names[i]) == n && !memcmp(rf_names[i], s, n)) {
                f |= 1u << i;
                known = true;
            }
        if (!known && n)
            LOG_LIMITED(LOG_WARN, "waypoint::telemetry",
                        "response flag \"%.*s\" is not one of Envoy's; left out", (int)(n > 16 ? 16 : n), s);
        s += n;
        if (*s == ',') s++;
    }
    return f;
}

const char *wp_flags_format(uint32_t f, char *buf, size_t n)
{
    size_t w = 0;
    if (!n) return buf;
    buf[0] = 0;
    for (int i = 0; i < WP_RF_COUNT; i++) {
        if (!(f & (1u << i))) continue;
        size_t l = strlen(rf_names[i]);
        if (w + (w ? 1 : 0) + l + 1 > n) {
            LOG_LIMITED(LOG_WARN, "waypoint::telemetry",
                        "response flags longer than %zu bytes: cut after \"%s\"", n - 1, buf);
            break;
        }
        if (w) buf[w++] = ',';
        memcpy(buf + w, rf_names[i], l + 1);
        w += l;
    }
    if (!w) snprintf(buf, n, "-");
    return buf;
}

const char *wp_flags_add(const char *s, enum wp_response_flag flag, char *buf, size_t n)
{
    uint32_t f = wp_flags_parse(s); /* s may be buf: read whole before writing */
    return wp_flags_format(f | 1u << flag, buf, n);
}
