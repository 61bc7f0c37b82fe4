/* Pod proxy setup, socket helpers and access logs. */
#include "ztunnel/proxy.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/log.h"
#include "tls/tls.h"
#include "ztunnel/metrics.h"

static void append_bag(char *buf, size_t n, const char *key, const char *val)
{
    if (!val || !*val) return; /* empty entries are omitted, as Istio's baggage encoder does */
    size_t len = strlen(buf);
    snprintf(buf + len, n - len, "%s%s=%s", len ? "," : "", key, val);
}

/* Baggage describing a workload (istio/ztunnel src/proxy/outbound.rs): cluster, namespace, workload by type,
 * canonical service and revision, region and zone. */
static void make_baggage(const struct workload *w, const char *ns, const char *name, char *buf, size_t n)
{
    char key[64];
    buf[0] = 0;
    if (!w) {
        append_bag(buf, n, "k8s.namespace.name", ns);
        append_bag(buf, n, "k8s.pod.name", name);
        return;
    }
    append_bag(buf, n, "k8s.cluster.name", w->cluster_id);
    append_bag(buf, n, "k8s.namespace.name", w->namespace_);
    const char *type = *w->workload_type ? w->workload_type : "deployment";
    snprintf(key, sizeof(key), "k8s.%s.name", type);
    append_bag(buf, n, key, *w->workload_name ? w->workload_name : w->name);
    append_bag(buf, n, "service.name", w->canonical_name);
    append_bag(buf, n, "service.version", w->canonical_revision);
    append_bag(buf, n, "cloud.region", w->locality.region);
    append_bag(buf, n, "cloud.availability_zone", w->locality.zone);
}

static int worker_listen(struct worker *w, char *err, size_t errlen);

struct zt_view *zt_view_new(struct snapshot *snap, const char *ns, const char *name, uint64_t version)
{
    struct zt_view *v = calloc(1, sizeof(*v));
    if (!v) return NULL;
    atomic_init(&v->refs, 1);
    v->version = version;
    snapshot_ref(snap);
    v->snap = snap;
    v->self = snapshot_workload_by_name(snap, ns, name);
    v->network = v->self ? v->self->network : "";
    make_baggage(v->self, ns, name, v->baggage, sizeof(v->baggage));
    return v;
}

void zt_view_ref(struct zt_view *v)
{
    atomic_fetch_add_explicit(&v->refs, 1, memory_order_relaxed);
}

void zt_view_unref(struct zt_view *v)
{
    if (!v || atomic_fetch_sub_explicit(&v->refs, 1, memory_order_acq_rel) != 1) return;
    snapshot_unref(v->snap);
    free(v);
}

int pod_proxy_new(struct pod_proxy **out, struct zt_view *view, const char *ns, const char *name,
                  const char *sa, char *err, size_t errlen)
{
    struct pod_proxy *pp = calloc(1, sizeof(*pp));
    if (!pp) return -ENOMEM;
    snprintf(pp->ns, sizeof(pp->ns), "%s", ns);
    snprintf(pp->name, sizeof(pp->name), "%s", name);
    snprintf(pp->sa, sizeof(pp->sa), "%s", sa);
    /* The identity comes from the workload info we were started with; the trust domain from the config. */
    if (spiffe_set(&pp->id, view->self ? view->self->trust_domain : NULL, ns, sa) < 0) {
        snprintf(err, errlen, "invalid workload identity %s/%s", ns, sa);
        free(pp);
        return -EINVAL;
    }
    spiffe_format(&pp->id, pp->id_uri, sizeof(pp->id_uri));
    pthread_mutex_init(&pp->view_lock, NULL);
    zt_view_ref(view);
    pp->view = view;
    *out = pp;
    return 0;
}

/* Runs on the identity manager's thread (its lock held): hands the new certificate to the workers. */
static void pod_identity_cb(void *ud, struct identity *cur)
{
    struct pod_proxy *pp = ud;
    char serial[64] = "", to[40] = "";
    workers_publish_identity(pp->workers, pp->n_workers, cur);
    tls_cert_describe(cur->cert, serial, sizeof(serial), NULL, 0, to, sizeof(to));
    if (!atomic_exchange(&pp->has_identity, true))
        log_kv(LOG_INFO, "ztunnel", "certificate ready, accepting connections", "identity", pp->id_uri,
               "serial", serial, "expiration", to, NULL);
    else
        log_kv(LOG_INFO, "ztunnel", "certificate rotated", "identity", pp->id_uri, "serial", serial,
               "expiration", to, NULL);
}

int pod_proxy_start_identity(struct pod_proxy *pp, struct identity_mgr *idm, struct worker *ws, int n)
{
    pp->idm = idm;
    pp->workers = ws;
    pp->n_workers = n;
    pp->id_sub = identity_mgr_acquire(idm, &pp->id, pod_identity_cb, pp);
    return pp->id_sub ? 0 : -ENOMEM;
}

struct zt_view *pod_proxy_view(struct pod_proxy *pp)
{
    pthread_mutex_lock(&pp->view_lock);
    struct zt_view *v = pp->view;
    zt_view_ref(v);
    pthread_mutex_unlock(&pp->view_lock);
    return v;
}

/* Runs on the worker: applies what other threads posted. */
static void worker_wake_cb(struct io *io, uint32_t ev)
{
    (void)ev;
    struct worker *w = container_of(io, struct worker, wake);
    uint64_t n;
    if (read(io->fd, &n, sizeof(n)) < 0 && errno != EAGAIN)
        LOG_W("ztunnel::proxy", "eventfd: %s", strerror(errno));
    pthread_mutex_lock(&w->msg_lock);
    struct zt_view *v = w->msg_view;
    struct identity *ident = w->msg_ident;
    bool drain = w->msg_drain;
    w->msg_view = NULL;
    w->msg_ident = NULL;
    w->msg_drain = false;
    pthread_mutex_unlock(&w->msg_lock);
    if (v) {
        struct zt_view *old = w->view;
        w->view = v;
        inbound_reauthorize(w);
        zt_view_unref(old);
    }
    if (ident) {
        /* Open connections hold their own reference to the identity they were made with. */
        struct identity *old = w->ident;
        w->ident = ident;
        identity_unref(old);
        /* The listeners were held until the first certificate: connections waited in the backlog, as Istio's
         * ztunnel makes them wait for its certificate fetch. */
        for (int i = 0; i < 3 && w->listening; i++)
            acceptor_resume(&w->listeners[i]);
    }
    if (drain && !w->draining) {
        w->draining = true;
        for (int i = 0; i < 3 && w->listening; i++)
            acceptor_close(&w->listeners[i]);
        w->listening = false;
        inbound_drain(w);
        pool_drain(w->pool);
    }
}

#define STATS_INTERVAL_MS 1000

void zt_stats_open(struct zt_stats *st, const struct conn_info *ci)
{
    st->ms = metrics_conn_open(ci);
    st->recv = st->sent = 0;
}

void zt_stats_update(struct zt_stats *st, uint64_t recv, uint64_t sent)
{
    if (!st->ms || (recv == st->recv && sent == st->sent)) return;
    metrics_add_bytes(st->ms, recv - st->recv, sent - st->sent);
    st->recv = recv;
    st->sent = sent;
}

void zt_stats_close(struct zt_stats *st, uint64_t recv, uint64_t sent, const char *flags, bool failed)
{
    if (!st->ms) return;
    zt_stats_update(st, recv, sent);
    metrics_set_close(st->ms, flags, failed);
    st->ms = NULL;
}

/* Byte counters advance while long connections are open, not only when they end. */
static void stats_timer_cb(struct timer *t)
{
    struct worker *w = container_of(t, struct worker, stats_timer);
    outbound_report(w);
    inbound_report(w);
    timer_start(w->loop, t, STATS_INTERVAL_MS);
}

int worker_init(struct worker *w, int index, struct pod_proxy *pp, struct zt_view *view, char *err,
                size_t errlen)
{
    int rc;
    w->index = index;
    w->pp = pp;
    zt_view_ref(view);
    w->view = view;
    pthread_mutex_init(&w->msg_lock, NULL);
    w->loop = loop_new();
    if (!w->loop) goto oom;
    w->pool = pool_new(w);
    if (!w->pool) goto oom;
    w->stats_timer.cb = stats_timer_cb;
    timer_start(w->loop, &w->stats_timer, STATS_INTERVAL_MS);
    w->wake = (struct io){.fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC), .cb = worker_wake_cb};
    if (w->wake.fd < 0 || (rc = loop_io_add(w->loop, &w->wake, EPOLLIN)) < 0) {
        snprintf(err, errlen, "eventfd: %s", strerror(errno));
        return -EIO;
    }
    return worker_listen(w, err, errlen);
oom:
    snprintf(err, errlen, "out of memory");
    return -ENOMEM;
}

static void worker_poke(struct worker *w)
{
    uint64_t one = 1;
    if (write(w->wake.fd, &one, sizeof(one)) < 0)
        LOG_W("ztunnel::proxy", "eventfd write: %s", strerror(errno));
}

void workers_publish_view(struct pod_proxy *pp, struct worker *ws, int n, struct zt_view *v)
{
    pthread_mutex_lock(&pp->view_lock);
    struct zt_view *old = pp->view;
    zt_view_ref(v);
    pp->view = v;
    pthread_mutex_unlock(&pp->view_lock);
    zt_view_unref(old);
    for (int i = 0; i < n; i++) {
        zt_view_ref(v);
        pthread_mutex_lock(&ws[i].msg_lock);
        struct zt_view *stale = ws[i].msg_view;
        ws[i].msg_view = v;
        pthread_mutex_unlock(&ws[i].msg_lock);
        zt_view_unref(stale);
        worker_poke(&ws[i]);
    }
}

void workers_publish_identity(struct worker *ws, int n, struct identity *id)
{
    for (int i = 0; i < n; i++) {
        identity_ref(id);
        pthread_mutex_lock(&ws[i].msg_lock);
        struct identity *stale = ws[i].msg_ident;
        ws[i].msg_ident = id;
        pthread_mutex_unlock(&ws[i].msg_lock);
        identity_unref(stale);
        worker_poke(&ws[i]);
    }
}

void worker_post_drain(struct worker *w)
{
    pthread_mutex_lock(&w->msg_lock);
    w->msg_drain = true;
    pthread_mutex_unlock(&w->msg_lock);
    worker_poke(w);
}

/* Every listener is held until the worker has its first certificate (the backlog keeps the connections). */
static bool outbound_may_accept(struct acceptor *a)
{
    return container_of(a, struct worker, listeners[0])->ident != NULL;
}

static bool plain_may_accept(struct acceptor *a)
{
    return container_of(a, struct worker, listeners[1])->ident != NULL;
}

static const struct acceptor_ops listener_ops[3] = {
    {.on_accept = outbound_accept, .may_accept = outbound_may_accept},
    {.on_accept = inbound_plain_accept, .may_accept = plain_may_accept},
    {.on_accept = inbound_hbone_accept, .may_accept = inbound_hbone_may_accept},
};
static const char *const listener_names[3] = {"outbound :15001", "inbound plaintext :15006",
                                              "inbound HBONE :15008"};

static int worker_listen(struct worker *w, char *err, size_t errlen)
{
    static const uint16_t ports[3] = {PORT_OUTBOUND, PORT_INBOUND_PLAIN, PORT_HBONE};
    for (int i = 0; i < 3; i++) {
        /* IP_TRANSPARENT on the listeners is best effort, as in Istio (INPOD_PORT_REUSE, backlog 128). */
        int fd = net_listen(ports[i], 128, true);
        if (fd < 0) {
            snprintf(err, errlen, "listen on port %u: %s", ports[i], strerror(-fd));
            return fd;
        }
        /* Accepted sockets inherit these: TCP_NODELAY everywhere, keepalive on the HBONE port. */
        net_set_nodelay(fd);
        if (ports[i] == PORT_HBONE) net_set_keepalive(fd);
        int rc = acceptor_start(&w->listeners[i], w->loop, fd, listener_names[i], &listener_ops[i]);
        if (rc < 0) {
            snprintf(err, errlen, "epoll: %s", strerror(-rc));
            return rc;
        }
    }
    w->listening = true;
    return 0;
}

int zt_connect(const struct sockaddr_storage *dst, const struct ip_addr *spoof_src, bool keepalive)
{
    int one = 1, err;
    int fd = socket(dst->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    net_set_mark(fd, ZT_MARK);
    net_set_nodelay(fd);
    if (keepalive) net_set_keepalive(fd);
    if (spoof_src && spoof_src->family) {
        struct sockaddr_storage src;
        struct ip_addr sip = *spoof_src;
        /* A v4 client on a v6 destination cannot be spoofed as such; keep the kernel's choice then. */
        if ((sip.family == AF_INET) == (dst->ss_family == AF_INET)) {
            if (dst->ss_family == AF_INET6)
                setsockopt(fd, SOL_IPV6, IPV6_TRANSPARENT, &one, sizeof(one));
            else
                setsockopt(fd, SOL_IP, IP_TRANSPARENT, &one, sizeof(one));
            setsockopt(fd, SOL_IP, IP_FREEBIND, &one, sizeof(one));
            /* Choose the source port at connect() time, against the full 4-tuple: with bind()'s own choice
             * every TIME_WAIT on the app side would hold its port for all destinations. */
            setsockopt(fd, SOL_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
            socklen_t sl = sockaddr_from(&src, &sip, 0);
            if (bind(fd, (struct sockaddr *)&src, sl) < 0) {
                char ipb[IP_STRLEN];
                LOG_D("ztunnel::proxy", "cannot bind source %s (%s); connecting without spoofing",
                      ip_format(&sip, ipb, sizeof(ipb)), strerror(errno));
            }
        }
    }
    socklen_t len = dst->ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
    if (connect(fd, (const struct sockaddr *)dst, len) < 0 && errno != EINPROGRESS) {
        err = -errno;
        close(fd);
        return err;
    }
    return fd;
}

uint64_t zt_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Writes an access-log event: "connection opened" (DEBUG, done = false) or "connection complete" (INFO, or
 * ERROR with error=), with the fields of Istio's ztunnel (istio/ztunnel src/proxy/metrics.rs). */
static void access_event(const struct access_rec *r, bool done)
{
    char src[SOCKADDR_STRLEN], dst[SOCKADDR_STRLEN], hbone[SOCKADDR_STRLEN], sent[24], recv[24], dur[32];
    uint64_t now = zt_now_ms();
    snprintf(sent, sizeof(sent), "%" PRIu64, r->bytes_sent);
    snprintf(recv, sizeof(recv), "%" PRIu64, r->bytes_recv);
    snprintf(dur, sizeof(dur), "%" PRIu64 "ms", now - r->start_ms);
    const char *kv[] = {
        "%src.addr",       ip_port_format(&r->src, src, sizeof(src)),
        "src.workload",    r->src_wl ? r->src_wl->name : NULL,
        "src.namespace",   r->src_wl ? r->src_wl->namespace_ : NULL,
        "src.identity",    r->src_identity && *r->src_identity ? r->src_identity : NULL,
        "src.cluster",     r->src_wl ? r->src_wl->cluster_id : NULL,
        "%dst.addr",       ip_port_format(&r->dst, dst, sizeof(dst)),
        "%dst.hbone_addr", r->hbone_addr.port ? ip_port_format(&r->hbone_addr, hbone, sizeof(hbone)) : NULL,
        "dst.service",     r->dst_svc ? r->dst_svc->hostname : NULL,
        "dst.workload",    r->dst_wl ? r->dst_wl->name : NULL,
        "dst.namespace",   r->dst_wl ? r->dst_wl->namespace_ : NULL,
        "dst.identity",    r->dst_identity && *r->dst_identity ? r->dst_identity : NULL,
        "dst.cluster",     r->dst_wl ? r->dst_wl->cluster_id : NULL,
        "direction",       r->direction,
        "bytes_sent",      done ? sent : NULL,
        "bytes_recv",      done ? recv : NULL,
        "duration",        done ? dur : NULL,
        "error",           r->error,
    };
    if (!done)
        log_kvv(LOG_DEBUG, "access", "connection opened", kv, sizeof(kv) / sizeof(kv[0]) / 2);
    else
        log_kvv(r->error ? LOG_ERROR : LOG_INFO, "access", "connection complete", kv,
                sizeof(kv) / sizeof(kv[0]) / 2);
}

void access_log(const struct access_rec *r)
{
    access_event(r, true);
}

void access_log_opened(const struct access_rec *r)
{
    if (log_enabled(LOG_DEBUG)) access_event(r, false);
}

uint64_t zt_random(void)
{
    static __thread uint64_t x;
    if (!x && (getrandom(&x, sizeof(x), 0) != sizeof(x) || !x)) x = zt_now_ms() | 1;
    /* xorshift64*: fast, and good enough for load-balancing choices and trace ids. */
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    return x * 0x2545F4914F6CDD1DULL;
}
