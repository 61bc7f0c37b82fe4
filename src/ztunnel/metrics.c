/* Istio's TCP metrics for ztunnel (istio/ztunnel src/proxy/metrics.rs).
 *
 * A label set is stored as its rendered Prometheus label text ("reporter=\"source\",source_workload=...");
 * that string is the hash key of core/prom.h's registry, so a lookup is one hash of a short stack string and
 * one chain walk. Sets are allocated once, linked in creation order (so the output is stable), and never
 * freed. This file depends only on the mesh model, core/prom and the h2 and xds layers' counters (unit tests
 * #include it). */
#include "ztunnel/metrics.h"

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "core/prom.h"
#include "h2/budget.h"
#include "h2/hbone.h"
#include "xds/ads_client.h"

/* Which families a set has been counted in: a family lists a set only once it was touched, as Istio's
 * prometheus_client families only hold label sets that were get_or_create'd. */
enum {
    M_OPENED = 1 << 0,
    M_CLOSED = 1 << 1,
    M_FAILED = 1 << 2,
    M_BYTES = 1 << 3,
};

struct metric_set {
    struct prom_set ps; /* labels, hash and links (first: the registry hands back a struct prom_set *) */
    _Atomic uint64_t opened, closed, failed, received, sent;
    atomic_uint touched;           /* M_* bits */
    uint32_t flags_off, flags_len; /* response_flags value (escaped) inside labels */
};

static struct {
    struct prom_registry sets;
    pthread_mutex_t lock; /* build_tag */
    char build_tag[128];
    _Atomic int64_t sockets[2]; /* [0] reporter source, [1] destination */
    atomic_bool sockets_touched[2];
} m_reg = {.sets = PROM_REGISTRY_INIT, .lock = PTHREAD_MUTEX_INITIALIZER, .build_tag = "unknown"};

/* Builds the label text of ci with the given flags, in Istio's order (CommonTrafficLabels), and reports
 * where the response_flags value sits. The field mapping mirrors metrics.rs: with_source / with_destination
 * (app = canonical name, version = canonical revision), with_destination_service (hostname, namespace,
 * name), and the locality labels only once a source or destination workload is known. */
static void m_build(struct prom_buf *b, const struct conn_info *ci, const char *flags, uint32_t *foff,
                    uint32_t *flen)
{
    const struct workload *s = ci->src_wl, *d = ci->dst_wl;
    const struct service *svc = ci->dst_svc;
    char dst_id[512];
    const char *dst_principal = ci->dst_principal;

    if (d && workload_spiffe_id(d, dst_id, sizeof(dst_id)) >= 0) dst_principal = dst_id;

    prom_label(b, "reporter", ci->inbound ? "destination" : "source");
    prom_label(b, "source_workload", s ? s->workload_name : NULL);
    prom_label(b, "source_canonical_service", s ? s->canonical_name : NULL);
    prom_label(b, "source_canonical_revision", s ? s->canonical_revision : NULL);
    prom_label(b, "source_workload_namespace", s ? s->namespace_ : NULL);
    prom_label(b, "source_principal", ci->src_principal);
    prom_label(b, "source_app", s ? s->canonical_name : NULL);
    prom_label(b, "source_version", s ? s->canonical_revision : NULL);
    prom_label(b, "source_cluster", s ? s->cluster_id : NULL);
    prom_label(b, "destination_service", svc ? svc->hostname : NULL);
    prom_label(b, "destination_service_namespace", svc ? svc->namespace_ : NULL);
    prom_label(b, "destination_service_name", svc ? svc->name : NULL);
    prom_label(b, "destination_workload", d ? d->workload_name : NULL);
    prom_label(b, "destination_canonical_service", d ? d->canonical_name : NULL);
    prom_label(b, "destination_canonical_revision", d ? d->canonical_revision : NULL);
    prom_label(b, "destination_workload_namespace", d ? d->namespace_ : NULL);
    prom_label(b, "destination_principal", dst_principal);
    prom_label(b, "destination_app", d ? d->canonical_name : NULL);
    prom_label(b, "destination_version", d ? d->canonical_revision : NULL);
    prom_label(b, "destination_cluster", d ? d->cluster_id : NULL);
    prom_label(b, "request_protocol", "tcp");
    prom_puts(b, ",response_flags=\"");
    *foff = (uint32_t)b->len;
    prom_value(b, flags ? flags : "-");
    *flen = (uint32_t)(b->len - *foff);
    prom_put(b, "\"", 1);
    prom_label(b, "connection_security_policy", ci->mtls ? "mutual_tls" : "unknown");
    if (s || d) {
        prom_label(b, "source_region", s ? s->locality.region : NULL);
        prom_label(b, "source_zone", s ? s->locality.zone : NULL);
        prom_label(b, "destination_region", d ? d->locality.region : NULL);
        prom_label(b, "destination_zone", d ? d->locality.zone : NULL);
    }
}

struct m_flags_pos {
    uint32_t off, len;
};

static void m_set_init(struct prom_set *ps, void *arg)
{
    struct metric_set *m = (struct metric_set *)ps;
    const struct m_flags_pos *fp = arg;
    m->flags_off = fp->off;
    m->flags_len = fp->len;
}

/* Finds or creates the set for labels (len bytes, flags value at foff/flen). */
static struct metric_set *m_get(const char *labels, size_t len, uint32_t foff, uint32_t flen)
{
    struct m_flags_pos fp = {foff, flen};
    return (struct metric_set *)prom_registry_get(&m_reg.sets, labels, len, sizeof(struct metric_set),
                                                  m_set_init, &fp);
}

struct metric_set *metrics_conn_open(const struct conn_info *ci)
{
    struct prom_buf b;
    uint32_t foff, flen;
    struct metric_set *m = NULL;

    prom_buf_init(&b);
    m_build(&b, ci, "-", &foff, &flen);
    if (b.oom) goto out;
    m = m_get(b.p, b.len, foff, flen);
    if (!m) goto out;
    atomic_fetch_add_explicit(&m->opened, 1, memory_order_relaxed);
    if ((atomic_load_explicit(&m->touched, memory_order_relaxed) & (M_OPENED | M_BYTES)) !=
        (M_OPENED | M_BYTES))
        atomic_fetch_or_explicit(&m->touched, M_OPENED | M_BYTES, memory_order_relaxed);
out:
    prom_buf_free(&b);
    return m;
}

void metrics_add_bytes(struct metric_set *m, uint64_t received, uint64_t sent)
{
    if (!m) return;
    if (received) atomic_fetch_add_explicit(&m->received, received, memory_order_relaxed);
    if (sent) atomic_fetch_add_explicit(&m->sent, sent, memory_order_relaxed);
}

static void m_count_close(struct metric_set *m, bool failed)
{
    unsigned bits = M_CLOSED | (failed ? M_FAILED : 0);
    atomic_fetch_add_explicit(&m->closed, 1, memory_order_relaxed);
    if (failed) atomic_fetch_add_explicit(&m->failed, 1, memory_order_relaxed);
    if ((atomic_load_explicit(&m->touched, memory_order_relaxed) & bits) != bits)
        atomic_fetch_or_explicit(&m->touched, bits, memory_order_relaxed);
}

void metrics_conn_close(const struct conn_info *ci, const char *flags, bool failed)
{
    struct prom_buf b;
    uint32_t foff, flen;

    prom_buf_init(&b);
    m_build(&b, ci, flags, &foff, &flen);
    if (!b.oom) {
        struct metric_set *m = m_get(b.p, b.len, foff, flen);
        if (m) m_count_close(m, failed);
    }
    prom_buf_free(&b);
}

void metrics_set_close(struct metric_set *m, const char *flags, bool failed)
{
    struct prom_buf b;
    uint32_t flen;

    if (!m) return;
    if (!flags) flags = "-";
    prom_buf_init(&b);
    prom_put(&b, m->ps.labels, m->flags_off);
    prom_value(&b, flags);
    flen = (uint32_t)(b.len - m->flags_off);
    prom_put(&b, m->ps.labels + m->flags_off + m->flags_len, m->ps.len - m->flags_off - m->flags_len);
    if (!b.oom) {
        struct metric_set *c = m_get(b.p, b.len, m->flags_off, flen);
        if (c) m_count_close(c, failed);
    }
    prom_buf_free(&b);
}

void metrics_socket_open(bool inbound)
{
    atomic_fetch_add_explicit(&m_reg.sockets[inbound], 1, memory_order_relaxed);
    if (!atomic_load_explicit(&m_reg.sockets_touched[inbound], memory_order_relaxed))
        atomic_store_explicit(&m_reg.sockets_touched[inbound], true, memory_order_relaxed);
}

void metrics_socket_close(bool inbound)
{
    atomic_fetch_sub_explicit(&m_reg.sockets[inbound], 1, memory_order_relaxed);
}

void metrics_set_build_tag(const char *tag)
{
    pthread_mutex_lock(&m_reg.lock);
    snprintf(m_reg.build_tag, sizeof(m_reg.build_tag), "%s", tag && *tag ? tag : "unknown");
    pthread_mutex_unlock(&m_reg.lock);
}

const char *metrics_content_type(bool openmetrics)
{
    return prom_content_type(openmetrics);
}

/* ---- rendering ---- */

static const struct m_family {
    const char *name; /* without the istio_ prefix and _total suffix */
    const char *help;
    unsigned bit;
    size_t off; /* counter inside struct metric_set */
} m_families[] = {
    {"tcp_connections_opened", "The total number of TCP connections opened", M_OPENED,
     offsetof(struct metric_set, opened)},
    {"tcp_connections_closed", "The total number of TCP connections closed", M_CLOSED,
     offsetof(struct metric_set, closed)},
    {"tcp_received_bytes", "The size of total bytes received during request in case of a TCP connection",
     M_BYTES, offsetof(struct metric_set, received)},
    {"tcp_sent_bytes", "The size of total bytes sent during response in case of a TCP connection", M_BYTES,
     offsetof(struct metric_set, sent)},
    {"tcp_connections_failed", "The total number of TCP connections that failed to establish (unstable)",
     M_FAILED, offsetof(struct metric_set, failed)},
};

static long m_open_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    long n = 0;
    if (!d) return -1;
    while (readdir(d))
        n++;
    closedir(d);
    /* ".", ".." and the directory's own fd are not open files of the process. */
    return n >= 3 ? n - 3 : 0;
}

/* Istio ztunnel's xDS client metrics (istio/ztunnel src/xds/metrics.rs): streams ended by reason, responses
 * and the bytes of their resources by type URL. Samples appear once counted, as a prometheus_client family
 * does. */
static void m_render_xds(struct prom_buf *b, bool om)
{
    prom_header(b, om, "istio_xds_connection_terminations", PROM_COUNTER,
                "The total number of completed connections to xds server (unstable)");
    for (int r = 0; r < XDS_TERM_COUNT; r++) {
        uint64_t v = xds_client_terminations(r);
        if (v)
            prom_printf(b, "istio_xds_connection_terminations_total{reason=\"%s\"} %llu\n",
                        xds_term_reason_to_str(r), (unsigned long long)v);
    }
    uint64_t msgs, bytes;
    prom_header(b, om, "istio_xds_message", PROM_COUNTER, "Total number of messages received (unstable)");
    for (size_t i = 0; xds_client_metric_type(i, &msgs, &bytes); i++)
        if (msgs)
            prom_printf(b, "istio_xds_message_total{url=\"%s\"} %llu\n",
                        xds_client_metric_type(i, &msgs, &bytes), (unsigned long long)msgs);
    prom_header(b, om, "istio_xds_message_bytes", PROM_COUNTER, "Total number of bytes received (unstable)");
    for (size_t i = 0; xds_client_metric_type(i, &msgs, &bytes); i++)
        if (msgs)
            prom_printf(b, "istio_xds_message_bytes_total{url=\"%s\"} %llu\n",
                        xds_client_metric_type(i, &msgs, &bytes), (unsigned long long)bytes);
}

static _Atomic bool inpod_on;
static _Atomic uint64_t inpod_active, inpod_pending, inpod_started, inpod_stopped;

void metrics_inpod_set(uint64_t active, uint64_t pending)
{
    atomic_store(&inpod_active, active);
    atomic_store(&inpod_pending, pending);
    atomic_store(&inpod_on, true);
}

void metrics_inpod_started(void)
{
    atomic_fetch_add(&inpod_started, 1);
}

void metrics_inpod_stopped(void)
{
    atomic_fetch_add(&inpod_stopped, 1);
}

static void m_render_inpod(struct prom_buf *b, bool om)
{
    if (!atomic_load(&inpod_on)) return;
    prom_header(b, om, "istio_active_proxy_count", PROM_GAUGE,
                "The total number current workloads with active proxies (unstable)");
    prom_printf(b, "istio_active_proxy_count %llu\n", (unsigned long long)atomic_load(&inpod_active));
    prom_header(b, om, "istio_pending_proxy_count", PROM_GAUGE,
                "The total number current workloads with pending proxies (unstable)");
    prom_printf(b, "istio_pending_proxy_count %llu\n", (unsigned long long)atomic_load(&inpod_pending));
    prom_header(b, om, "istio_proxies_started", PROM_COUNTER,
                "The total number of proxies that were started (unstable)");
    prom_printf(b, "istio_proxies_started_total %llu\n", (unsigned long long)atomic_load(&inpod_started));
    prom_header(b, om, "istio_proxies_stopped", PROM_COUNTER,
                "The total number of proxies that were stopped (unstable)");
    prom_printf(b, "istio_proxies_stopped_total %llu\n", (unsigned long long)atomic_load(&inpod_stopped));
}

/* zmesh's own HBONE counters (istio/ztunnel has no metric for HTTP/2 protocol errors or flow-control memory):
 * zmesh_-prefixed, in Istio's style. */
static void m_render_hbone(struct prom_buf *b, bool om)
{
    prom_header(b, om, "zmesh_hbone_protocol_errors", PROM_COUNTER,
                "HBONE connections ended, or requests refused (431), for what the peer sent, by reason");
    for (int e = 0; e < HBONE_PERR_COUNT; e++)
        prom_printf(b, "zmesh_hbone_protocol_errors_total{reason=\"%s\"} %llu\n", hbone_proto_err_to_str(e),
                    (unsigned long long)hbone_proto_errors(e));
    prom_header(b, om, "zmesh_hbone_early_resets", PROM_COUNTER,
                "HBONE streams the peer reset before their response");
    prom_printf(b, "zmesh_hbone_early_resets_total %llu\n", (unsigned long long)hbone_early_resets());
    prom_header(
        b, om, "zmesh_tls_connections", PROM_COUNTER,
        "TLS connections established (HBONE and control plane), by who seals their application records: "
        "zmesh's own record layer or OpenSSL's");
    prom_printf(b, "zmesh_tls_connections_total{records=\"zmesh\"} %llu\n",
                (unsigned long long)hbone_tls_conns(true));
    prom_printf(b, "zmesh_tls_connections_total{records=\"openssl\"} %llu\n",
                (unsigned long long)hbone_tls_conns(false));
    prom_header(b, om, "zmesh_hbone_buffered_bytes", PROM_GAUGE,
                "Bytes received over HBONE that wait for a local socket to take them");
    prom_printf(b, "zmesh_hbone_buffered_bytes %llu\n", (unsigned long long)hbone_buffered_bytes());
    prom_header(b, om, "zmesh_hbone_memory_reserved_bytes", PROM_GAUGE,
                "HTTP/2 receive windows and relay buffers reserved from the memory budget");
    prom_printf(b, "zmesh_hbone_memory_reserved_bytes %llu\n", (unsigned long long)h2_mem_reserved());
    prom_header(b, om, "zmesh_hbone_memory_budget_bytes", PROM_GAUGE, "The memory budget for HBONE peers");
    prom_printf(b, "zmesh_hbone_memory_budget_bytes %llu\n", (unsigned long long)h2_mem_limit());
}

char *metrics_render(bool om, size_t *len)
{
    struct prom_buf b;
    size_t n;
    char tag[sizeof(m_reg.build_tag)];
    struct metric_set *head = (struct metric_set *)prom_registry_first(&m_reg.sets, &n);

    pthread_mutex_lock(&m_reg.lock);
    memcpy(tag, m_reg.build_tag, sizeof(tag));
    pthread_mutex_unlock(&m_reg.lock);

    prom_buf_init(&b);

    for (size_t f = 0; f < sizeof(m_families) / sizeof(m_families[0]); f++) {
        const struct m_family *fam = &m_families[f];
        char name[96];
        snprintf(name, sizeof(name), "istio_%s", fam->name);
        prom_header(&b, om, name, PROM_COUNTER, fam->help);
        /* Sets before n were linked before prom_registry_first returned; their links no longer change. */
        struct metric_set *e = head;
        for (size_t i = 0; i < n && e; i++, e = i < n ? (struct metric_set *)e->ps.onext : NULL) {
            if (!(atomic_load_explicit(&e->touched, memory_order_relaxed) & fam->bit)) continue;
            uint64_t v =
                atomic_load_explicit((_Atomic uint64_t *)((char *)e + fam->off), memory_order_relaxed);
            prom_printf(&b, "%s_total{", name);
            prom_put(&b, e->ps.labels, e->ps.len);
            prom_printf(&b, "} %llu\n", (unsigned long long)v);
        }
    }

    prom_header(&b, om, "istio_tcp_sockets_open", PROM_GAUGE,
                "The current number of open TCP sockets (unstable)");
    for (int i = 0; i < 2; i++) {
        if (!atomic_load_explicit(&m_reg.sockets_touched[i], memory_order_relaxed)) continue;
        prom_printf(&b, "istio_tcp_sockets_open{reporter=\"%s\"} %lld\n", i ? "destination" : "source",
                    (long long)atomic_load_explicit(&m_reg.sockets[i], memory_order_relaxed));
    }

    prom_header(&b, om, "istio_build", PROM_GAUGE, "Istio component build info");
    prom_puts(&b, "istio_build{component=\"ztunnel\",tag=\"");
    prom_value(&b, tag);
    prom_puts(&b, "\"} 1\n");

    m_render_hbone(&b, om);
    m_render_xds(&b, om);
    m_render_inpod(&b, om);

    long fds = m_open_fds();
    if (fds >= 0) {
        prom_header(&b, om, "process_open_fds", PROM_GAUGE, "Number of open file descriptors");
        prom_printf(&b, "process_open_fds %ld\n", fds);
    }
    struct rlimit rl;
    if (!getrlimit(RLIMIT_NOFILE, &rl)) {
        prom_header(&b, om, "process_max_fds", PROM_GAUGE, "Maximum number of file descriptors");
        prom_printf(&b, "process_max_fds %llu\n", (unsigned long long)rl.rlim_cur);
    }
    if (om) prom_puts(&b, "# EOF\n");
    return prom_buf_take(&b, len);
}
