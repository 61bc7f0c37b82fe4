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

int zt_home_netns = -1;

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

/* ---- pods ---- */

static void pod_proxy_unref(struct pod_proxy *pp)
{
    if (atomic_fetch_sub_explicit(&pp->refs, 1, memory_order_acq_rel) != 1) return;
    zt_view_unref(pp->view);
    pthread_mutex_destroy(&pp->view_lock);
    if (pp->netns_fd >= 0) close(pp->netns_fd);
    free(pp->slots);
    free(pp);
}

static const uint16_t listen_ports[3] = {PORT_OUTBOUND, PORT_INBOUND_PLAIN, PORT_HBONE};

/* The listener sockets of every slot, made in the pod's namespace (the main thread enters it for this and
 * comes back: it serves no traffic). IP_TRANSPARENT is best effort, as in Istio (INPOD_PORT_REUSE, backlog
 * 128). */
static int make_listeners(struct pod_proxy *pp, char *err, size_t errlen)
{
    int rc = 0;
    if (pp->netns_fd >= 0 && (rc = net_netns_enter(pp->netns_fd)) < 0) {
        snprintf(err, errlen, "cannot enter the pod's network namespace: %s", strerror(-rc));
        return rc;
    }
    for (int i = 0; i < pp->n_workers && rc == 0; i++)
        for (int k = 0; k < 3; k++) {
            int fd = net_listen(listen_ports[k], 128, true);
            if (fd < 0) {
                snprintf(err, errlen, "listen on port %u: %s", listen_ports[k], strerror(-fd));
                rc = fd;
                break;
            }
            /* Accepted sockets inherit these: TCP_NODELAY everywhere, keepalive on the HBONE port. */
            net_set_nodelay(fd);
            if (listen_ports[k] == PORT_HBONE) net_set_keepalive(fd);
            pp->slots[i].listen_fds[k] = fd;
        }
    if (pp->netns_fd >= 0 && net_netns_enter(zt_home_netns) < 0) {
        LOG_E("ztunnel", "cannot return to ztunnel's network namespace: %s", strerror(errno));
        abort();
    }
    return rc;
}

int pod_proxy_new(struct pod_proxy **out, const char *uid, const char *ns, const char *name, const char *sa,
                  const char *trust_domain, int netns_fd, struct worker *ws, int n, char *err, size_t errlen)
{
    struct pod_proxy *pp = calloc(1, sizeof(*pp));
    if (!pp || !(pp->slots = calloc((size_t)n, sizeof(*pp->slots)))) {
        free(pp);
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    snprintf(pp->uid, sizeof(pp->uid), "%s", uid);
    snprintf(pp->ns, sizeof(pp->ns), "%s", ns);
    snprintf(pp->name, sizeof(pp->name), "%s", name);
    snprintf(pp->sa, sizeof(pp->sa), "%s", sa);
    if (spiffe_set(&pp->id, trust_domain, ns, sa) < 0) {
        snprintf(err, errlen, "invalid workload identity %s/%s", ns, sa);
        free(pp->slots);
        free(pp);
        return -EINVAL;
    }
    spiffe_format(&pp->id, pp->id_uri, sizeof(pp->id_uri));
    pp->workers = ws;
    pp->n_workers = n;
    for (int i = 0; i < n; i++) {
        struct zt_pod *p = &pp->slots[i];
        p->w = &ws[i];
        p->pp = pp;
        for (int k = 0; k < 3; k++)
            p->listen_fds[k] = -1;
    }
    pp->netns_fd = netns_fd;
    int rc = make_listeners(pp, err, errlen);
    if (rc < 0) {
        for (int i = 0; i < n; i++)
            for (int k = 0; k < 3; k++)
                if (pp->slots[i].listen_fds[k] >= 0) close(pp->slots[i].listen_fds[k]);
        free(pp->slots);
        free(pp);
        return rc;
    }
    pthread_mutex_init(&pp->view_lock, NULL);
    atomic_init(&pp->refs, 1);
    *out = pp;
    return 0;
}

static void worker_poke(struct worker *w)
{
    uint64_t one = 1;
    if (write(w->wake.fd, &one, sizeof(one)) < 0)
        LOG_W("ztunnel::proxy", "eventfd write: %s", strerror(errno));
}

/* Queues p in its worker's mailbox (msg_lock held). */
static void post_locked(struct zt_pod *p)
{
    if (p->msg_queued) return;
    p->msg_queued = true;
    p->msg_next = p->w->msg_head;
    p->w->msg_head = p;
}

/* Runs on the identity manager's thread (its lock held): hands the new certificate to the workers. */
static void pod_identity_cb(void *ud, struct identity *cur)
{
    struct pod_proxy *pp = ud;
    char serial[64] = "", to[40] = "";
    for (int i = 0; i < pp->n_workers; i++) {
        struct zt_pod *p = &pp->slots[i];
        identity_ref(cur);
        pthread_mutex_lock(&p->w->msg_lock);
        struct identity *stale = p->msg_ident;
        p->msg_ident = cur;
        post_locked(p);
        pthread_mutex_unlock(&p->w->msg_lock);
        identity_unref(stale);
        worker_poke(p->w);
    }
    tls_cert_describe(cur->cert, serial, sizeof(serial), NULL, 0, to, sizeof(to));
    if (!atomic_exchange(&pp->has_identity, true))
        log_kv(LOG_INFO, "ztunnel", "certificate ready, accepting connections", "identity", pp->id_uri,
               "serial", serial, "expiration", to, NULL);
    else
        log_kv(LOG_INFO, "ztunnel", "certificate rotated", "identity", pp->id_uri, "serial", serial,
               "expiration", to, NULL);
}

int pod_proxy_start(struct pod_proxy *pp, struct zt_view *view, struct identity_mgr *idm)
{
    zt_view_ref(view);
    pp->view = view;
    /* Each worker holds a reference to pp until it has freed its slot. */
    atomic_fetch_add(&pp->refs, pp->n_workers);
    for (int i = 0; i < pp->n_workers; i++) {
        struct zt_pod *p = &pp->slots[i];
        zt_view_ref(view);
        p->view = view;
        pthread_mutex_lock(&p->w->msg_lock);
        p->msg_add = true;
        post_locked(p);
        pthread_mutex_unlock(&p->w->msg_lock);
        worker_poke(p->w);
    }
    /* The first certificate is fetched on the identity manager's thread; the listeners accept once it is
     * here. */
    pp->idm = idm;
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

void pod_proxy_publish_view(struct pod_proxy *pp, struct zt_view *v)
{
    pthread_mutex_lock(&pp->view_lock);
    struct zt_view *old = pp->view;
    zt_view_ref(v);
    pp->view = v;
    pthread_mutex_unlock(&pp->view_lock);
    zt_view_unref(old);
    for (int i = 0; i < pp->n_workers; i++) {
        struct zt_pod *p = &pp->slots[i];
        zt_view_ref(v);
        pthread_mutex_lock(&p->w->msg_lock);
        struct zt_view *stale = p->msg_view;
        p->msg_view = v;
        post_locked(p);
        pthread_mutex_unlock(&p->w->msg_lock);
        zt_view_unref(stale);
        worker_poke(p->w);
    }
}

void pod_proxy_retire(struct pod_proxy *pp)
{
    /* No certificate callback runs after this returns, so nothing else posts to the slots. */
    identity_mgr_release(pp->idm, pp->id_sub);
    pp->id_sub = NULL;
    for (int i = 0; i < pp->n_workers; i++) {
        struct zt_pod *p = &pp->slots[i];
        pthread_mutex_lock(&p->w->msg_lock);
        p->msg_remove = true;
        post_locked(p);
        pthread_mutex_unlock(&p->w->msg_lock);
        worker_poke(p->w);
    }
    pod_proxy_unref(pp);
}

/* ---- the worker side of a pod ---- */

static const struct acceptor_ops listener_ops[3];
static const char *const listener_names[3] = {"outbound :15001", "inbound plaintext :15006",
                                              "inbound HBONE :15008"};

/* The pod's listeners join the worker's loop (held until the first certificate). */
static void pod_listen(struct zt_pod *p)
{
    for (int k = 0; k < 3; k++) {
        int fd = p->listen_fds[k];
        p->listen_fds[k] = -1;
        int rc = acceptor_start(&p->listeners[k], p->w->loop, fd, listener_names[k], &listener_ops[k]);
        if (rc < 0) {
            /* epoll_ctl on a fresh socket fails only without memory: this pod goes unserved on this worker,
             * the others keep serving it. */
            LOG_E("ztunnel::proxy", "pod %s/%s: %s on worker %d: %s", p->pp->ns, p->pp->name, listener_names[k],
                  p->w->index, strerror(-rc));
            close(fd);
            for (int j = 0; j < k; j++)
                acceptor_close(&p->listeners[j]);
            for (int j = k + 1; j < 3; j++) {
                close(p->listen_fds[j]);
                p->listen_fds[j] = -1;
            }
            return;
        }
    }
    p->listening = true;
}

static void pod_stop_listening(struct zt_pod *p)
{
    for (int k = 0; k < 3 && p->listening; k++)
        acceptor_close(&p->listeners[k]);
    p->listening = false;
    for (int k = 0; k < 3; k++)
        if (p->listen_fds[k] >= 0) {
            close(p->listen_fds[k]);
            p->listen_fds[k] = -1;
        }
}

/* Frees p's share once it is removed and nothing of it is left. The removal is the last message anyone
 * posts to a slot (pod_proxy_retire stops the certificate callbacks first), so nothing is in its mailbox. */
static void pod_maybe_free(struct zt_pod *p)
{
    if (!p->removed || p->refs) return;
    struct worker *w = p->w;
    if (p->linked) LIST_DEL(w->pods, p);
    p->linked = false;
    zt_view_unref(p->view);
    identity_unref(p->ident);
    p->view = NULL;
    p->ident = NULL;
    pod_proxy_unref(p->pp);
}

void zt_pod_put(struct zt_pod *p)
{
    p->refs--;
    pod_maybe_free(p);
}

/* A deleted pod: its listeners close and its connections end now; its slot goes when the last one is gone. */
static void pod_remove(struct zt_pod *p)
{
    if (p->removed) return;
    pod_stop_listening(p);
    inbound_abort(p);
    outbound_abort(p);
    pool_drop_pod(p->w->pool, p);
    p->removed = true;
    pod_maybe_free(p);
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
    struct zt_pod *list = w->msg_head;
    bool drain = w->msg_drain;
    w->msg_head = NULL;
    w->msg_drain = false;
    pthread_mutex_unlock(&w->msg_lock);
    while (list) {
        struct zt_pod *p = list;
        pthread_mutex_lock(&w->msg_lock);
        list = p->msg_next;
        struct zt_view *v = p->msg_view;
        struct identity *ident = p->msg_ident;
        bool add = p->msg_add, remove = p->msg_remove;
        p->msg_view = NULL;
        p->msg_ident = NULL;
        p->msg_add = p->msg_remove = false;
        p->msg_queued = false;
        p->msg_next = NULL;
        pthread_mutex_unlock(&w->msg_lock);
        if (add) {
            LIST_PUSH(w->pods, p);
            p->linked = true;
            if (!w->draining) pod_listen(p);
        }
        if (v) {
            struct zt_view *old = p->view;
            p->view = v;
            inbound_reauthorize(p);
            zt_view_unref(old);
        }
        if (ident) {
            /* Open connections hold their own reference to the identity they were made with. */
            struct identity *old = p->ident;
            p->ident = ident;
            identity_unref(old);
            /* The listeners were held until the first certificate: connections waited in the backlog, as
             * Istio's ztunnel makes them wait for its certificate fetch. */
            for (int k = 0; k < 3 && p->listening; k++)
                acceptor_resume(&p->listeners[k]);
        }
        if (remove) pod_remove(p);
    }
    if (drain && !w->draining) {
        w->draining = true;
        for (struct zt_pod *p = w->pods; p; p = p->next) {
            pod_stop_listening(p);
            inbound_drain(p);
        }
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
    for (struct zt_pod *p = w->pods; p; p = p->next) {
        outbound_report(p);
        inbound_report(p);
    }
    timer_start(w->loop, t, STATS_INTERVAL_MS);
}

int worker_init(struct worker *w, int index, char *err, size_t errlen)
{
    int rc;
    w->index = index;
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
    return 0;
oom:
    snprintf(err, errlen, "out of memory");
    return -ENOMEM;
}

void worker_post_drain(struct worker *w)
{
    pthread_mutex_lock(&w->msg_lock);
    w->msg_drain = true;
    pthread_mutex_unlock(&w->msg_lock);
    worker_poke(w);
}

/* Every listener is held until the pod has its first certificate on this worker (the backlog keeps the
 * connections). */
static bool outbound_may_accept(struct acceptor *a)
{
    return container_of(a, struct zt_pod, listeners[0])->ident != NULL;
}

static bool plain_may_accept(struct acceptor *a)
{
    return container_of(a, struct zt_pod, listeners[1])->ident != NULL;
}

static const struct acceptor_ops listener_ops[3] = {
    {.on_accept = outbound_accept, .may_accept = outbound_may_accept},
    {.on_accept = inbound_plain_accept, .may_accept = plain_may_accept},
    {.on_accept = inbound_hbone_accept, .may_accept = inbound_hbone_may_accept},
};

int zt_connect(int netns_fd, const struct sockaddr_storage *dst, const struct ip_addr *spoof_src, bool keepalive)
{
    int one = 1, err;
    int fd = net_socket_in(netns_fd, zt_home_netns, dst->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return fd;
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
