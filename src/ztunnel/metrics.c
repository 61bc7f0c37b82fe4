/* Istio's TCP metrics for ztunnel (istio/ztunnel src/proxy/metrics.rs).
 *
 * A label set is stored as its rendered Prometheus label text ("reporter=\"source\",source_workload=...");
 * that string is the hash key, so a lookup is one hash of a short stack string and one chain walk. Sets are
 * allocated once, linked into an append-only list in creation order (so the output is stable), and never
 * freed. This file depends only on the mesh model and the h2 and xds layers' counters (unit tests #include
 * it). */
#include "ztunnel/metrics.h"

#include <dirent.h>
#include <stdarg.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

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
    struct metric_set *hnext; /* hash chain; written under the lock */
    struct metric_set *onext; /* creation order; immutable once the next set is published */
    uint64_t hash;
    _Atomic uint64_t opened, closed, failed, received, sent;
    atomic_uint touched;           /* M_* bits */
    uint32_t flags_off, flags_len; /* response_flags value (escaped) inside labels */
    uint32_t len;
    char labels[]; /* NUL-terminated */
};

static struct {
    pthread_mutex_t lock;
    struct metric_set **buckets;
    size_t nbuckets, n;
    struct metric_set *head, *tail;
    char build_tag[128];
    _Atomic int64_t sockets[2]; /* [0] reporter source, [1] destination */
    atomic_bool sockets_touched[2];
} m_reg = {.lock = PTHREAD_MUTEX_INITIALIZER, .build_tag = "unknown"};

/* ---- a small string builder with inline storage (no allocation for ordinary label sets) ---- */

struct m_buf {
    char *p;
    size_t len, cap;
    bool oom;
    char inl[1024];
};

static void m_buf_init(struct m_buf *b)
{
    b->p = b->inl;
    b->len = 0;
    b->cap = sizeof(b->inl);
    b->oom = false;
    b->p[0] = '\0';
}

static void m_buf_free(struct m_buf *b)
{
    if (b->p != b->inl) free(b->p);
}

static bool m_buf_reserve(struct m_buf *b, size_t extra)
{
    if (b->oom) return false;
    if (b->len + extra + 1 <= b->cap) return true;
    size_t ncap = b->cap * 2;
    while (ncap < b->len + extra + 1)
        ncap *= 2;
    char *np = b->p == b->inl ? malloc(ncap) : realloc(b->p, ncap);
    if (!np) {
        b->oom = true;
        return false;
    }
    if (b->p == b->inl) memcpy(np, b->inl, b->len + 1);
    b->p = np;
    b->cap = ncap;
    return true;
}

static void m_put(struct m_buf *b, const char *s, size_t n)
{
    if (!m_buf_reserve(b, n)) return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void m_puts(struct m_buf *b, const char *s)
{
    m_put(b, s, strlen(s));
}

static void m_printf(struct m_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void m_printf(struct m_buf *b, const char *fmt, ...)
{
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < sizeof(tmp)) {
        m_put(b, tmp, (size_t)n);
        return;
    }
    if (!m_buf_reserve(b, (size_t)n)) return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

/* A label value with Prometheus escaping (backslash, double quote, newline); NULL or "" is "unknown", as
 * Istio's DefaultedUnknown encodes an empty value. */
static void m_value(struct m_buf *b, const char *v)
{
    if (!v || !*v) v = "unknown";
    for (const char *s = v; *s; s++) {
        switch (*s) {
        case '\\':
            m_put(b, "\\\\", 2);
            break;
        case '"':
            m_put(b, "\\\"", 2);
            break;
        case '\n':
            m_put(b, "\\n", 2);
            break;
        default:
            m_put(b, s, 1);
        }
    }
}

static void m_label(struct m_buf *b, const char *name, const char *v)
{
    if (b->len) m_put(b, ",", 1);
    m_puts(b, name);
    m_put(b, "=\"", 2);
    m_value(b, v);
    m_put(b, "\"", 1);
}

/* Builds the label text of ci with the given flags, in Istio's order (CommonTrafficLabels), and reports
 * where the response_flags value sits. The field mapping mirrors metrics.rs: with_source / with_destination
 * (app = canonical name, version = canonical revision), with_destination_service (hostname, namespace,
 * name), and the locality labels only once a source or destination workload is known. */
static void m_build(struct m_buf *b, const struct conn_info *ci, const char *flags, uint32_t *foff,
                    uint32_t *flen)
{
    const struct workload *s = ci->src_wl, *d = ci->dst_wl;
    const struct service *svc = ci->dst_svc;
    char dst_id[512];
    const char *dst_principal = ci->dst_principal;

    if (d && workload_spiffe_id(d, dst_id, sizeof(dst_id)) >= 0) dst_principal = dst_id;

    m_label(b, "reporter", ci->inbound ? "destination" : "source");
    m_label(b, "source_workload", s ? s->workload_name : NULL);
    m_label(b, "source_canonical_service", s ? s->canonical_name : NULL);
    m_label(b, "source_canonical_revision", s ? s->canonical_revision : NULL);
    m_label(b, "source_workload_namespace", s ? s->namespace_ : NULL);
    m_label(b, "source_principal", ci->src_principal);
    m_label(b, "source_app", s ? s->canonical_name : NULL);
    m_label(b, "source_version", s ? s->canonical_revision : NULL);
    m_label(b, "source_cluster", s ? s->cluster_id : NULL);
    m_label(b, "destination_service", svc ? svc->hostname : NULL);
    m_label(b, "destination_service_namespace", svc ? svc->namespace_ : NULL);
    m_label(b, "destination_service_name", svc ? svc->name : NULL);
    m_label(b, "destination_workload", d ? d->workload_name : NULL);
    m_label(b, "destination_canonical_service", d ? d->canonical_name : NULL);
    m_label(b, "destination_canonical_revision", d ? d->canonical_revision : NULL);
    m_label(b, "destination_workload_namespace", d ? d->namespace_ : NULL);
    m_label(b, "destination_principal", dst_principal);
    m_label(b, "destination_app", d ? d->canonical_name : NULL);
    m_label(b, "destination_version", d ? d->canonical_revision : NULL);
    m_label(b, "destination_cluster", d ? d->cluster_id : NULL);
    m_label(b, "request_protocol", "tcp");
    m_puts(b, ",response_flags=\"");
    *foff = (uint32_t)b->len;
    m_value(b, flags ? flags : "-");
    *flen = (uint32_t)(b->len - *foff);
    m_put(b, "\"", 1);
    m_label(b, "connection_security_policy", ci->mtls ? "mutual_tls" : "unknown");
    if (s || d) {
        m_label(b, "source_region", s ? s->locality.region : NULL);
        m_label(b, "source_zone", s ? s->locality.zone : NULL);
        m_label(b, "destination_region", d ? d->locality.region : NULL);
        m_label(b, "destination_zone", d ? d->locality.zone : NULL);
    }
}

/* FNV-1a, 64 bit: label strings are short and this keeps metrics.c free of other dependencies. */
static uint64_t m_hash(const char *s, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

/* Doubles the bucket array; called with the lock held. Failure only keeps chains longer. */
static void m_grow(void)
{
    size_t nb = m_reg.nbuckets ? m_reg.nbuckets * 2 : 256;
    struct metric_set **nbk = calloc(nb, sizeof(*nbk));
    if (!nbk) return;
    for (size_t i = 0; i < m_reg.nbuckets; i++) {
        struct metric_set *e = m_reg.buckets[i], *next;
        for (; e; e = next) {
            next = e->hnext;
            e->hnext = nbk[e->hash & (nb - 1)];
            nbk[e->hash & (nb - 1)] = e;
        }
    }
    free(m_reg.buckets);
    m_reg.buckets = nbk;
    m_reg.nbuckets = nb;
}

/* Finds or creates the set for labels (len bytes, flags value at foff/flen). */
static struct metric_set *m_get(const char *labels, size_t len, uint32_t foff, uint32_t flen)
{
    uint64_t h = m_hash(labels, len);
    struct metric_set *e = NULL;

    pthread_mutex_lock(&m_reg.lock);
    if (m_reg.nbuckets) {
        for (e = m_reg.buckets[h & (m_reg.nbuckets - 1)]; e; e = e->hnext)
            if (e->hash == h && e->len == len && !memcmp(e->labels, labels, len)) goto out;
    }
    if (m_reg.n >= m_reg.nbuckets) {
        m_grow();
        if (!m_reg.nbuckets) goto out;
    }
    e = calloc(1, sizeof(*e) + len + 1);
    if (!e) goto out;
    e->hash = h;
    e->len = (uint32_t)len;
    e->flags_off = foff;
    e->flags_len = flen;
    memcpy(e->labels, labels, len);
    e->hnext = m_reg.buckets[h & (m_reg.nbuckets - 1)];
    m_reg.buckets[h & (m_reg.nbuckets - 1)] = e;
    if (m_reg.tail)
        m_reg.tail->onext = e;
    else
        m_reg.head = e;
    m_reg.tail = e;
    m_reg.n++;
out:
    pthread_mutex_unlock(&m_reg.lock);
    return e;
}

struct metric_set *metrics_conn_open(const struct conn_info *ci)
{
    struct m_buf b;
    uint32_t foff, flen;
    struct metric_set *m = NULL;

    m_buf_init(&b);
    m_build(&b, ci, "-", &foff, &flen);
    if (b.oom) goto out;
    m = m_get(b.p, b.len, foff, flen);
    if (!m) goto out;
    atomic_fetch_add_explicit(&m->opened, 1, memory_order_relaxed);
    if ((atomic_load_explicit(&m->touched, memory_order_relaxed) & (M_OPENED | M_BYTES)) !=
        (M_OPENED | M_BYTES))
        atomic_fetch_or_explicit(&m->touched, M_OPENED | M_BYTES, memory_order_relaxed);
out:
    m_buf_free(&b);
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
    struct m_buf b;
    uint32_t foff, flen;

    m_buf_init(&b);
    m_build(&b, ci, flags, &foff, &flen);
    if (!b.oom) {
        struct metric_set *m = m_get(b.p, b.len, foff, flen);
        if (m) m_count_close(m, failed);
    }
    m_buf_free(&b);
}

void metrics_set_close(struct metric_set *m, const char *flags, bool failed)
{
    struct m_buf b;
    uint32_t flen;

    if (!m) return;
    if (!flags) flags = "-";
    m_buf_init(&b);
    m_put(&b, m->labels, m->flags_off);
    m_value(&b, flags);
    flen = (uint32_t)(b.len - m->flags_off);
    m_put(&b, m->labels + m->flags_off + m->flags_len, m->len - m->flags_off - m->flags_len);
    if (!b.oom) {
        struct metric_set *c = m_get(b.p, b.len, m->flags_off, flen);
        if (c) m_count_close(c, failed);
    }
    m_buf_free(&b);
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
    return openmetrics ? "application/openmetrics-text;charset=utf-8;version=1.0.0"
                       : "text/plain; version=0.0.4; charset=utf-8";
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

/* HELP and TYPE lines. OpenMetrics names a counter family without "_total"; Prometheus 0.0.4 names it as
 * its samples are named. */
static void m_header(struct m_buf *b, bool om, const char *name, bool counter, const char *help)
{
    const char *suffix = counter && !om ? "_total" : "";
    m_printf(b, "# HELP %s%s %s.\n", name, suffix, help);
    m_printf(b, "# TYPE %s%s %s\n", name, suffix, counter ? "counter" : "gauge");
}

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
static void m_render_xds(struct m_buf *b, bool om)
{
    m_header(b, om, "istio_xds_connection_terminations", true,
             "The total number of completed connections to xds server (unstable)");
    for (int r = 0; r < XDS_TERM_COUNT; r++) {
        uint64_t v = xds_client_terminations(r);
        if (v)
            m_printf(b, "istio_xds_connection_terminations_total{reason=\"%s\"} %llu\n",
                     xds_term_reason_to_str(r), (unsigned long long)v);
    }
    uint64_t msgs, bytes;
    m_header(b, om, "istio_xds_message", true, "Total number of messages received (unstable)");
    for (size_t i = 0; xds_client_metric_type(i, &msgs, &bytes); i++)
        if (msgs)
            m_printf(b, "istio_xds_message_total{url=\"%s\"} %llu\n",
                     xds_client_metric_type(i, &msgs, &bytes), (unsigned long long)msgs);
    m_header(b, om, "istio_xds_message_bytes", true, "Total number of bytes received (unstable)");
    for (size_t i = 0; xds_client_metric_type(i, &msgs, &bytes); i++)
        if (msgs)
            m_printf(b, "istio_xds_message_bytes_total{url=\"%s\"} %llu\n",
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

static void m_render_inpod(struct m_buf *b, bool om)
{
    if (!atomic_load(&inpod_on)) return;
    m_header(b, om, "istio_active_proxy_count", false,
             "The total number current workloads with active proxies (unstable)");
    m_printf(b, "istio_active_proxy_count %llu\n", (unsigned long long)atomic_load(&inpod_active));
    m_header(b, om, "istio_pending_proxy_count", false,
             "The total number current workloads with pending proxies (unstable)");
    m_printf(b, "istio_pending_proxy_count %llu\n", (unsigned long long)atomic_load(&inpod_pending));
    m_header(b, om, "istio_proxies_started", true, "The total number of proxies that were started (unstable)");
    m_printf(b, "istio_proxies_started_total %llu\n", (unsigned long long)atomic_load(&inpod_started));
    m_header(b, om, "istio_proxies_stopped", true, "The total number of proxies that were stopped (unstable)");
    m_printf(b, "istio_proxies_stopped_total %llu\n", (unsigned long long)atomic_load(&inpod_stopped));
}

/* zmesh's own HBONE counters (istio/ztunnel has no metric for HTTP/2 protocol errors or flow-control memory):
 * zmesh_-prefixed, in Istio's style. */
static void m_render_hbone(struct m_buf *b, bool om)
{
    m_header(b, om, "zmesh_hbone_protocol_errors", true,
             "HBONE connections ended, or requests refused (431), for what the peer sent, by reason");
    for (int e = 0; e < HBONE_PERR_COUNT; e++)
        m_printf(b, "zmesh_hbone_protocol_errors_total{reason=\"%s\"} %llu\n", hbone_proto_err_to_str(e),
                 (unsigned long long)hbone_proto_errors(e));
    m_header(b, om, "zmesh_hbone_early_resets", true, "HBONE streams the peer reset before their response");
    m_printf(b, "zmesh_hbone_early_resets_total %llu\n", (unsigned long long)hbone_early_resets());
    m_header(b, om, "zmesh_hbone_buffered_bytes", false,
             "Bytes received over HBONE that wait for a local socket to take them");
    m_printf(b, "zmesh_hbone_buffered_bytes %llu\n", (unsigned long long)hbone_buffered_bytes());
    m_header(b, om, "zmesh_hbone_memory_reserved_bytes", false,
             "HTTP/2 receive windows and relay buffers reserved from the memory budget");
    m_printf(b, "zmesh_hbone_memory_reserved_bytes %llu\n", (unsigned long long)h2_mem_reserved());
    m_header(b, om, "zmesh_hbone_memory_budget_bytes", false, "The memory budget for HBONE peers");
    m_printf(b, "zmesh_hbone_memory_budget_bytes %llu\n", (unsigned long long)h2_mem_limit());
}

char *metrics_render(bool om, size_t *len)
{
    struct m_buf b;
    struct metric_set *head;
    size_t n;
    char tag[sizeof(m_reg.build_tag)];

    pthread_mutex_lock(&m_reg.lock);
    head = m_reg.head;
    n = m_reg.n;
    memcpy(tag, m_reg.build_tag, sizeof(tag));
    pthread_mutex_unlock(&m_reg.lock);

    m_buf_init(&b);
    /* Start on the heap: the output is returned to the caller. */
    if (!m_buf_reserve(&b, sizeof(b.inl) + 1)) goto fail;

    for (size_t f = 0; f < sizeof(m_families) / sizeof(m_families[0]); f++) {
        const struct m_family *fam = &m_families[f];
        char name[96];
        snprintf(name, sizeof(name), "istio_%s", fam->name);
        m_header(&b, om, name, true, fam->help);
        /* Sets before n were linked under the lock we took; their onext pointers no longer change. */
        struct metric_set *e = head;
        for (size_t i = 0; i < n && e; i++, e = i < n ? e->onext : NULL) {
            if (!(atomic_load_explicit(&e->touched, memory_order_relaxed) & fam->bit)) continue;
            uint64_t v =
                atomic_load_explicit((_Atomic uint64_t *)((char *)e + fam->off), memory_order_relaxed);
            m_printf(&b, "%s_total{", name);
            m_put(&b, e->labels, e->len);
            m_printf(&b, "} %llu\n", (unsigned long long)v);
        }
    }

    m_header(&b, om, "istio_tcp_sockets_open", false, "The current number of open TCP sockets (unstable)");
    for (int i = 0; i < 2; i++) {
        if (!atomic_load_explicit(&m_reg.sockets_touched[i], memory_order_relaxed)) continue;
        m_printf(&b, "istio_tcp_sockets_open{reporter=\"%s\"} %lld\n", i ? "destination" : "source",
                 (long long)atomic_load_explicit(&m_reg.sockets[i], memory_order_relaxed));
    }

    m_header(&b, om, "istio_build", false, "Istio component build info");
    m_puts(&b, "istio_build{component=\"ztunnel\",tag=\"");
    m_value(&b, tag);
    m_puts(&b, "\"} 1\n");

    m_render_hbone(&b, om);
    m_render_xds(&b, om);
    m_render_inpod(&b, om);

    long fds = m_open_fds();
    if (fds >= 0) {
        m_header(&b, om, "process_open_fds", false, "Number of open file descriptors");
        m_printf(&b, "process_open_fds %ld\n", fds);
    }
    struct rlimit rl;
    if (!getrlimit(RLIMIT_NOFILE, &rl)) {
        m_header(&b, om, "process_max_fds", false, "Maximum number of file descriptors");
        m_printf(&b, "process_max_fds %llu\n", (unsigned long long)rl.rlim_cur);
    }
    if (om) m_puts(&b, "# EOF\n");
    if (b.oom) goto fail;
    if (len) *len = b.len;
    return b.p;
fail:
    m_buf_free(&b);
    return NULL;
}
