/* The waypoint's workers, its HBONE inbound, the tunnels, protocol choice and TCP passthrough (wp.h). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "core/list.h"
#include "core/log.h"
#include "core/prom.h"
#include "mesh/chash.h"
#include "mesh/destination_rule.h"
#include "waypoint/route.h"
#include "waypoint/telemetry.h"
#include "waypoint/tries.h"
#include "waypoint/wp.h"

#define LOG_IN "waypoint::inbound"

struct wp_worker wp_workers[WP_MAX_WORKERS];
int wp_n_workers;
struct spiffe_id wp_self;
char wp_self_uri[SPIFFE_MAX];
char wp_self_host[256];

static struct identity_mgr *identity_src;

void wp_identity_source(struct identity_mgr *m)
{
    identity_src = m;
}

struct identity *wp_identity(void)
{
    return identity_src ? identity_mgr_current(identity_src, &wp_self) : NULL;
}

uint64_t wp_now_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (uint64_t)tv.tv_sec * 1000 + (uint64_t)tv.tv_usec / 1000;
}

uint64_t wp_rand(struct wp_worker *w)
{
    /* xorshift64*: the load balancer's choices need to be uniform, not secret */
    uint64_t x = w->rnd;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    w->rnd = x;
    return x * 0x2545F4914F6CDD1DULL;
}

void wp_request_id(struct wp_worker *w, char out[WP_REQUEST_ID_LEN])
{
    uint64_t a = wp_rand(w), b = wp_rand(w);
    /* UUID version 4, variant 1, as Envoy generates them */
    snprintf(out, WP_REQUEST_ID_LEN, "%08x-%04x-4%03x-%04x-%012llx", (unsigned)(a >> 32),
             (unsigned)(a >> 16) & 0xffff, (unsigned)a & 0xfff, (unsigned)((b >> 48) & 0x3fff) | 0x8000,
             (unsigned long long)(b & 0xffffffffffffULL));
}

/* ---- views ---- */

static pthread_mutex_t view_lock = PTHREAD_MUTEX_INITIALIZER;
static struct wp_view *view_cur;

struct wp_view *wp_view_current(void)
{
    pthread_mutex_lock(&view_lock);
    struct wp_view *v = view_cur;
    if (v) atomic_fetch_add(&v->refs, 1);
    pthread_mutex_unlock(&view_lock);
    return v;
}

void wp_view_unref(struct wp_view *v)
{
    if (!v || atomic_fetch_sub(&v->refs, 1) != 1) return;
    snapshot_unref(v->snap);
    l7_config_unref(v->l7);
    free(v);
}

int wp_view_publish(struct snapshot *snap, struct l7_config *l7)
{
    static uint64_t version;
    struct wp_view *v = calloc(1, sizeof(*v));
    if (!v) return -ENOMEM;
    atomic_init(&v->refs, 1);
    snapshot_ref(snap);
    v->snap = snap;
    if (l7) l7_config_ref(l7);
    v->l7 = l7;
    v->version = ++version;
    pthread_mutex_lock(&view_lock);
    struct wp_view *old = view_cur;
    view_cur = v;
    pthread_mutex_unlock(&view_lock);
    wp_view_unref(old);
    return 0;
}

bool wp_serves(const struct gateway_addr *g)
{
    if (!g->set) return false;
    if (g->is_host) return !strcmp(g->ns, wp_cfg.pod_namespace) && !strcmp(g->host, wp_self_host);
    struct ip_addr me;
    return wp_cfg.instance_ip && ip_parse(wp_cfg.instance_ip, &me) == 0 && ip_equal(&me, &g->ip);
}

/* ---- tunnels ---- */

void wp_tunnel_ref(struct wp_tunnel *t)
{
    t->refs++;
}

void wp_tunnel_unref(struct wp_tunnel *t)
{
    if (--t->refs) return;
    atomic_fetch_sub(&t->w->active, 1);
    wp_view_unref(t->view);
    free(t);
}

int wp_socketpair(int sv[2])
{
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0) return -errno;
    return 0;
}

/* Requests in flight per endpoint on this worker, for the least-request choice. Keyed by the workload's uid
 * (stable across snapshots), open addressing; an entry whose count drops to 0 stays as a tombstone-free slot
 * with 0 (cheap to reuse, bounded by WP_LR_SLOTS). */
#define WP_LR_SLOTS 4096
struct lr_slot {
    uint64_t hash; /* 0: empty */
    uint32_t active;
};
static _Thread_local struct lr_slot lr_table[WP_LR_SLOTS];

static uint64_t uid_hash(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h ? h : 1;
}

static struct lr_slot *lr_find(const struct workload *w, bool create)
{
    uint64_t h = uid_hash(w->uid);
    for (size_t i = 0, k = h % WP_LR_SLOTS; i < WP_LR_SLOTS; i++, k = (k + 1) % WP_LR_SLOTS) {
        if (lr_table[k].hash == h) return &lr_table[k];
        if (!lr_table[k].hash || (create && !lr_table[k].active && i > 8)) {
            if (!create) return NULL;
            lr_table[k] = (struct lr_slot){.hash = h};
            return &lr_table[k];
        }
    }
    return NULL;
}

void wp_endpoint_begin(const struct workload *w)
{
    struct lr_slot *e = w ? lr_find(w, true) : NULL;
    if (e) e->active++;
}

void wp_endpoint_end(const struct workload *w)
{
    struct lr_slot *e = w ? lr_find(w, false) : NULL;
    if (e && e->active) e->active--;
}

static uint32_t lr_active(const struct workload *w)
{
    struct lr_slot *e = lr_find(w, false);
    return e ? e->active : 0;
}

/* ---- DestinationRule load balancing (route.h wp_lb_prepare, wp_pick_endpoint_dec) ---- */

/* ROUND_ROBIN's position per (Service, subset, port) on this worker, as Envoy's per-worker round robin. Keyed
 * by a hash of the names (stable across snapshots); a full table reuses the slot the key lands on. */
#define WP_RR_SLOTS 1024
struct rr_slot {
    uint64_t key;
    uint64_t next;
};
static _Thread_local struct rr_slot rr_table[WP_RR_SLOTS];

static uint64_t names_hash(const struct service *svc, const char *subset, uint16_t port)
{
    char k[600];
    int n = snprintf(k, sizeof(k), "%s/%s|%s|%u", svc->namespace_, svc->name, subset ? subset : "", port);
    return chash_xxh64(k, n > 0 ? (size_t)n : 0, 0) | 1;
}

static uint64_t rr_next(uint64_t key)
{
    for (size_t i = 0, k = key % WP_RR_SLOTS; i < 8; i++, k = (k + 1) % WP_RR_SLOTS) {
        if (rr_table[k].key == key) return rr_table[k].next++;
        if (!rr_table[k].key) {
            rr_table[k] = (struct rr_slot){.key = key, .next = 1};
            return 0;
        }
    }
    rr_table[key % WP_RR_SLOTS] = (struct rr_slot){.key = key, .next = 1};
    return 0;
}

/* A consistent-hash table per (view, Service, subset, port, policy) on this worker, built on first use from
 * the eligible endpoints of that view (immutable, so valid for as long as the view is). */
#define WP_CH_CACHE 16
struct ch_cache {
    uint64_t version;
    const struct service *svc;
    const struct dr_subset *ss;
    const struct dr_lb_policy *lb;
    uint16_t port;
    uint64_t set; /* signature of the endpoints it was built from (an ejection changes them) */
    struct chash *ch;
    const struct workload **eps; /* the hosts, in the table's index order */
    size_t n;
};
static _Thread_local struct ch_cache ch_cache[WP_CH_CACHE];
static _Thread_local unsigned ch_cache_next;

static void ch_entry_clear(struct ch_cache *e)
{
    chash_free(e->ch);
    free(e->eps);
    memset(e, 0, sizeof(*e));
}

/* The table for the eligible endpoints el[0..n), or NULL (out of memory, logged). */
static const struct ch_cache *ch_table(struct wp_tunnel *t, const struct service *svc,
                                       const struct dr_subset *ss, uint16_t port,
                                       const struct dr_lb_policy *lb, const struct workload **el, size_t n)
{
    uint64_t set = n;
    for (size_t i = 0; i < n; i++)
        set = set * 0x100000001b3ULL ^ (uint64_t)(uintptr_t)el[i];
    for (size_t i = 0; i < WP_CH_CACHE; i++) {
        struct ch_cache *e = &ch_cache[i];
        if (e->ch && e->version == t->view->version && e->svc == svc && e->ss == ss && e->port == port &&
            e->lb == lb && e->set == set)
            return e;
    }
    struct ch_cache *e = &ch_cache[ch_cache_next++ % WP_CH_CACHE];
    ch_entry_clear(e);
    struct chash_host *hosts = calloc(n, sizeof(*hosts));
    char(*keys)[IP_STRLEN + 8] = calloc(n, sizeof(*keys));
    e->eps = malloc(n * sizeof(*e->eps));
    int rc = hosts && keys && e->eps ? 0 : -ENOMEM;
    for (size_t i = 0; i < n && !rc; i++) {
        /* Envoy hashes a host by its address: the endpoint's IP and target port. */
        struct ip_addr ip;
        char ipb[IP_STRLEN];
        if (lb_endpoint_ip(el[i], svc->ip_families, NULL, &ip) < 0) memset(&ip, 0, sizeof(ip));
        snprintf(keys[i], sizeof(keys[i]), "%s:%u", ip_format(&ip, ipb, sizeof(ipb)),
                 service_target_port(svc, el[i], port));
        hosts[i] = (struct chash_host){keys[i], el[i]->capacity ? el[i]->capacity : 1};
        e->eps[i] = el[i];
    }
    if (!rc)
        rc = lb->lb == DR_LB_MAGLEV ? chash_maglev_build(hosts, n, lb->table_size, &e->ch)
                                    : chash_ring_build(hosts, n, lb->ring_size, &e->ch);
    free(hosts);
    free(keys);
    if (rc) {
        LOG_LIMITED(LOG_WARN, "waypoint::lb", "cannot build the %s table for %s: %s", dr_lb_to_str(lb->lb),
                    svc->hostname, strerror(-rc));
        ch_entry_clear(e);
        return NULL;
    }
    e->version = t->view->version;
    e->svc = svc;
    e->ss = ss;
    e->lb = lb;
    e->port = port;
    e->set = set;
    e->n = n;
    return e;
}

/* A request header's value (the first of that name), or NULL. */
static const char *req_header(const struct l7_request *req, const char *name, size_t *len)
{
    size_t nl = strlen(name);
    for (size_t i = 0; req && i < req->n_headers; i++)
        if (req->headers[i].name_len == nl && !memcmp(req->headers[i].name, name, nl)) {
            *len = req->headers[i].value_len;
            return req->headers[i].value;
        }
    return NULL;
}

/* The value of cookie name in the request's Cookie headers (quotes removed, as Envoy's parseCookieValue), or
 * NULL. */
static const char *req_cookie(const struct l7_request *req, const char *name, size_t *len)
{
    size_t nl = strlen(name);
    for (size_t i = 0; req && i < req->n_headers; i++) {
        if (req->headers[i].name_len != 6 || memcmp(req->headers[i].name, "cookie", 6)) continue;
        const char *p = req->headers[i].value, *end = p + req->headers[i].value_len;
        while (p < end) {
            while (p < end && (*p == ' ' || *p == ';'))
                p++;
            const char *eq = memchr(p, '=', (size_t)(end - p));
            const char *semi = memchr(p, ';', (size_t)(end - p));
            if (!semi) semi = end;
            if (eq && eq < semi && (size_t)(eq - p) == nl && !memcmp(p, name, nl)) {
                const char *v = eq + 1, *ve = semi;
                if (ve - v >= 2 && *v == '"' && ve[-1] == '"') {
                    v++;
                    ve--;
                }
                *len = (size_t)(ve - v);
                return v;
            }
            p = semi;
        }
    }
    return NULL;
}

/* The raw value of query parameter name in :path, or NULL. */
static const char *req_query(const struct l7_request *req, const char *name, size_t *len)
{
    if (!req || !req->path) return NULL;
    const char *q = memchr(req->path, '?', req->path_len), *end = req->path + req->path_len;
    if (!q) return NULL;
    size_t nl = strlen(name);
    for (const char *p = q + 1; p < end;) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        if (!amp) amp = end;
        const char *eq = memchr(p, '=', (size_t)(amp - p));
        const char *ke = eq ? eq : amp;
        if ((size_t)(ke - p) == nl && !memcmp(p, name, nl)) {
            const char *v = eq ? eq + 1 : amp;
            *len = (size_t)(amp - v);
            return v;
        }
        p = amp + 1;
    }
    return NULL;
}

/* The request's hash (Envoy's hash policies: xxHash64 of the header value, cookie value, source IP text or
 * query value). False when the key is absent (Envoy then picks at random). A cookie with a TTL that the
 * request lacks is generated as Envoy's router does (hex of xxHash64 of the downstream remote and local
 * addresses) and set on the response through d. */
static bool request_hash(struct wp_tunnel *t, const struct dr_lb_policy *lb, const struct l7_request *req,
                         struct wp_decision *d, uint64_t *h)
{
    const char *v = NULL;
    size_t n = 0;
    char buf[IP_STRLEN * 2 + 32];
    switch (lb->hash_key) {
    case DR_HASH_HEADER:
        v = req_header(req, lb->hash_name, &n);
        break;
    case DR_HASH_QUERY:
        v = req_query(req, lb->hash_name, &n);
        break;
    case DR_HASH_SOURCE_IP: {
        struct ip_addr ip;
        sockaddr_to(&t->peer, &ip, NULL);
        v = ip_format(&ip, buf, sizeof(buf));
        n = strlen(v);
        break;
    }
    case DR_HASH_COOKIE:
        v = req_cookie(req, lb->hash_name, &n);
        if (!v && lb->cookie_ttl && d && req) {
            char r[SOCKADDR_STRLEN], l[SOCKADDR_STRLEN];
            int k = snprintf(buf, sizeof(buf), "%s%s", sockaddr_format(&t->peer, r, sizeof(r)),
                             sockaddr_format(&t->local, l, sizeof(l)));
            char val[17];
            snprintf(val, sizeof(val), "%016llx",
                     (unsigned long long)chash_xxh64(buf, k > 0 ? (size_t)k : 0, 0));
            /* Envoy's makeSetCookieValue: name="value"; Max-Age=N (when not 0); Path=p; HttpOnly */
            int w = snprintf(d->lb_cookie, sizeof(d->lb_cookie), "%s=\"%s\"", lb->hash_name, val);
            if (lb->cookie_ttl_ms / 1000)
                w += snprintf(d->lb_cookie + w, sizeof(d->lb_cookie) - (size_t)w, "; Max-Age=%llu",
                              (unsigned long long)(lb->cookie_ttl_ms / 1000));
            if (*lb->cookie_path)
                w += snprintf(d->lb_cookie + w, sizeof(d->lb_cookie) - (size_t)w, "; Path=%s",
                              lb->cookie_path);
            snprintf(d->lb_cookie + w, sizeof(d->lb_cookie) - (size_t)w, "; HttpOnly");
            if (d->n_resp_mods < WP_MAX_MODS) {
                d->lb_cookie_kv = (struct l7_kv){"set-cookie", d->lb_cookie};
                d->lb_cookie_mod = (struct l7_header_mod){.add = &d->lb_cookie_kv, .n_add = 1};
                d->resp_mods[d->n_resp_mods++] = &d->lb_cookie_mod;
            }
            *h = chash_xxh64(val, 16, 0);
            return true;
        }
        break;
    }
    if (!v) return false;
    *h = chash_xxh64(v, n, 0);
    return true;
}

/* connectionPool: requests in flight per cluster (Service, subset, port), across every worker, as Envoy's
 * per-cluster resource manager counts them. Slots are claimed once per cluster key and never freed (bounded
 * by WP_CB_SLOTS; past it a cluster is not limited, with a warning). */
#define WP_CB_SLOTS 1024
struct cb_slot {
    _Atomic uint64_t key;
    _Atomic int64_t active;  /* requests in flight (an HTTP/1.1 one holds a connection), TCP streams */
    _Atomic int64_t pending; /* HTTP/1.1 requests waiting for a connection (wp_pending_wait) */
};
static struct cb_slot cb_table[WP_CB_SLOTS];

static _Atomic int64_t *cb_counter(uint64_t key)
{
    for (size_t i = 0, k = key % WP_CB_SLOTS; i < WP_CB_SLOTS; i++, k = (k + 1) % WP_CB_SLOTS) {
        uint64_t cur = atomic_load_explicit(&cb_table[k].key, memory_order_acquire);
        if (cur == key) return &cb_table[k].active;
        if (!cur) {
            uint64_t zero = 0;
            if (atomic_compare_exchange_strong(&cb_table[k].key, &zero, key) || zero == key)
                return &cb_table[k].active;
        }
    }
    LOG_LIMITED(LOG_WARN, "waypoint::lb", "more than %d clusters with connection pool limits: not limited",
                WP_CB_SLOTS);
    return NULL;
}

/* The most requests of pool in flight at once: Envoy's max_requests (http2MaxRequests) for every request, and
 * for HTTP/1.1, where each request in flight holds one upstream connection, maxConnections. UINT64_MAX:
 * none. */
static uint64_t cb_max(const struct dr_conn_pool *pool, bool http2)
{
    uint64_t max = UINT64_MAX;
    if (pool->http2_max_requests) max = pool->http2_max_requests;
    if (!http2 && pool->max_connections && pool->max_connections < max) max = pool->max_connections;
    return max;
}

/* Takes one of c's places when fewer than max are taken. */
static bool cb_claim(_Atomic int64_t *c, uint64_t max)
{
    int64_t cur = atomic_load(c);
    while ((uint64_t)cur < max)
        if (atomic_compare_exchange_weak(c, &cur, cur + 1)) return true;
    return false;
}

/* Admits one request under pool's limits. An HTTP/1.1 request beyond maxConnections may wait for a connection
 * (Envoy's pending request, at most http1MaxPendingRequests of them: -EINPROGRESS, the codec queues it with
 * wp_pending_wait); anything else past a limit is -EUSERS (overflow). */
static int cb_admit(struct wp_decision *d, uint64_t key, const struct dr_conn_pool *pool, bool http2)
{
    uint64_t max = cb_max(pool, http2);
    if (max == UINT64_MAX) return 0;
    _Atomic int64_t *c = cb_counter(key);
    if (!c) return 0;
    if (cb_claim(c, max)) {
        d->lb_circuit = (void *)c;
        return 0;
    }
    return !http2 && pool->max_connections ? -EINPROGRESS : -EUSERS;
}

/* ---- Envoy's pending requests (tries.h wp_pending_wait): each worker queues its own, in arrival order; a
 * place freed on one worker serves that worker's queue first, then wakes the workers with waiters (their
 * mailbox) to claim it. Waiting costs nothing: no timer, no polling. */
static _Thread_local struct wp_pending *pend_head, *pend_tail;
static _Atomic unsigned pend_n[WP_MAX_WORKERS]; /* waiters per worker */
static _Atomic bool pend_kick[WP_MAX_WORKERS];  /* a place may be free: serve the queue */

static void pend_unlink(struct wp_pending *p)
{
    if (p->prev)
        p->prev->next = p->next;
    else
        pend_head = p->next;
    if (p->next)
        p->next->prev = p->prev;
    else
        pend_tail = p->prev;
    p->next = p->prev = NULL;
    p->queued = false;
    atomic_fetch_sub(&pend_n[p->w->id % WP_MAX_WORKERS], 1);
}

static void pend_fire(struct timer *tm)
{
    struct wp_pending *p = container_of(tm, struct wp_pending, tm);
    p->ready(p);
}

/* This thread's queue: each waiter whose cluster has a free place takes it and is started (from the loop, not
 * from inside the caller). */
static void pending_serve(void)
{
    for (struct wp_pending *p = pend_head, *next; p; p = next) {
        next = p->next;
        struct cb_slot *s = p->slot;
        if (!cb_claim(&s->active, p->max)) continue;
        pend_unlink(p);
        atomic_fetch_sub(&s->pending, 1);
        p->d->lb_circuit = (void *)&s->active;
        p->tm.cb = pend_fire;
        timer_start(p->w->loop, &p->tm, 0);
    }
}

/* A place of s was freed: waiters here first, then the other workers that have some. */
static void pending_kick(struct cb_slot *s)
{
    if (atomic_load(&s->pending) <= 0) return;
    pending_serve();
    if (atomic_load(&s->pending) <= 0) return;
    uint64_t one = 1;
    for (int i = 0; i < wp_n_workers && i < WP_MAX_WORKERS; i++)
        if (atomic_load(&pend_n[i]) && !atomic_exchange(&pend_kick[i], true) &&
            write(wp_workers[i].mbox.fd, &one, sizeof(one)) < 0) {
            /* the counter is full: a wakeup is pending anyway */
        }
}

static void cb_release(_Atomic int64_t *c)
{
    atomic_fetch_sub(c, 1); /* seq_cst, against wp_pending_wait's pending count then place check */
    pending_kick(container_of(c, struct cb_slot, active));
}

int wp_pending_wait(struct wp_tunnel *t, struct wp_decision *d, struct wp_pending *p,
                    void (*ready)(struct wp_pending *p))
{
    const struct dr_conn_pool *pool = d->lb_policy.pool;
    _Atomic int64_t *c = pool ? cb_counter(d->lb_cluster) : NULL;
    memset(p, 0, sizeof(*p));
    if (!c) return -EUSERS;
    struct cb_slot *s = container_of(c, struct cb_slot, active);
    /* Istio's default for http1MaxPendingRequests is 2^32-1 */
    uint64_t maxp = pool->http1_max_pending_requests ? pool->http1_max_pending_requests : UINT32_MAX;
    if ((uint64_t)(atomic_fetch_add(&s->pending, 1) + 1) > maxp) {
        atomic_fetch_sub(&s->pending, 1);
        return -EUSERS;
    }
    *p = (struct wp_pending){.w = t->w,
                             .d = d,
                             .slot = s,
                             .max = cb_max(pool, false),
                             .ready = ready,
                             .queued = true,
                             .prev = pend_tail};
    if (pend_tail)
        pend_tail->next = p;
    else
        pend_head = p;
    pend_tail = p;
    atomic_fetch_add(&pend_n[t->w->id % WP_MAX_WORKERS], 1);
    pending_serve(); /* a place freed since cb_admit looked (its releaser may not have seen this waiter) */
    return 0;
}

void wp_pending_cancel(struct wp_pending *p)
{
    if (p->queued) {
        pend_unlink(p);
        atomic_fetch_sub(&p->slot->pending, 1);
    }
    if (p->w && timer_armed(&p->tm)) timer_stop(p->w->loop, &p->tm); /* it holds a place: wp_request_done */
}

size_t wp_pending_n(void)
{
    size_t n = 0;
    for (struct wp_pending *p = pend_head; p; p = p->next)
        n++;
    return n;
}

/* outlierDetection: per (cluster, endpoint) consecutive errors and ejection, shared by the workers (Envoy's
 * detector is per cluster). Reads on the pick are lock-free; reports and ejections take the lock. */
#define WP_OD_SLOTS 4096
#define WP_OD_MAX_CLUSTERS 256 /* clusters in the outlier metrics at most (a bound on their label sets) */
#define WP_OD_MAX_EJECTION_MS 300000 /* Envoy's max_ejection_time default (or the base time when longer) */
struct od_slot {
    _Atomic uint64_t key; /* cluster key ^ endpoint uid hash; 0 free */
    _Atomic uint64_t ejected_until_ms;
    uint64_t cluster;
    uint32_t c5xx, cgw, n_ejections;
    uint64_t ejections; /* enforced so far */
    uint64_t epoch;     /* first report: the interval timer's ticks are epoch + k x interval */
    char uid[160];
    char cluster_name[320]; /* Istio's cluster name: outbound|<port>|<subset>|<host> */
};
static struct od_slot od_table[WP_OD_SLOTS];
static pthread_mutex_t od_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic uint64_t od_ejections_total;

static uint64_t od_key(uint64_t cluster, const struct workload *w)
{
    return (cluster ^ chash_xxh64(w->uid, strlen(w->uid), 2)) | 1;
}

static struct od_slot *od_find(uint64_t key, bool create)
{
    for (size_t i = 0, k = key % WP_OD_SLOTS; i < WP_OD_SLOTS; i++, k = (k + 1) % WP_OD_SLOTS) {
        uint64_t cur = atomic_load_explicit(&od_table[k].key, memory_order_acquire);
        if (cur == key) return &od_table[k];
        if (!cur) {
            if (!create) return NULL;
            uint64_t zero = 0;
            if (atomic_compare_exchange_strong(&od_table[k].key, &zero, key) || zero == key)
                return &od_table[k];
        }
    }
    return NULL;
}

static bool od_ejected(uint64_t cluster, const struct workload *w, uint64_t now)
{
    struct od_slot *o = od_find(od_key(cluster, w), false);
    return o && atomic_load_explicit(&o->ejected_until_ms, memory_order_acquire) > now;
}

/* Called with od_lock held: how many endpoints of cluster are ejected now. */
static size_t od_ejected_in(uint64_t cluster, uint64_t now)
{
    size_t n = 0;
    for (size_t k = 0; k < WP_OD_SLOTS; k++)
        if (atomic_load_explicit(&od_table[k].key, memory_order_relaxed) && od_table[k].cluster == cluster &&
            atomic_load_explicit(&od_table[k].ejected_until_ms, memory_order_relaxed) > now)
            n++;
    return n;
}

/* Envoy's consecutive 5xx and consecutive gateway failure detectors (source/common/upstream/
 * outlier_detection_impl.cc putHttpResponseCode): a 5xx counts toward both (502, 503, 504 toward the gateway
 * count, another 5xx resets it), anything else resets both; at a threshold the host is ejected for
 * baseEjectionTime x its ejection count, unless maxEjectionPercent of the hosts are out already (one host may
 * always be ejected). The ejection count decays by one per interval the host spends back in. */
static void od_report(uint64_t cluster, const struct wp_decision *d, const struct workload *w, int status)
{
    const struct dr_outlier *od = d->lb_outlier;
    size_t hosts = d->lb_hosts;
    uint64_t now = wp_now_ms();
    pthread_mutex_lock(&od_lock);
    struct od_slot *o = od_find(od_key(cluster, w), true);
    if (!o) {
        pthread_mutex_unlock(&od_lock);
        LOG_LIMITED(LOG_WARN, "waypoint::outlier", "more than %d endpoints tracked: %s not tracked",
                    WP_OD_SLOTS, w->uid);
        return;
    }
    if (!o->cluster) {
        o->cluster = cluster;
        o->epoch = now;
        snprintf(o->uid, sizeof(o->uid), "%s", w->uid);
        snprintf(o->cluster_name, sizeof(o->cluster_name), "outbound|%u|%s|%s", d->port,
                 d->subset ? d->subset : "", d->svc ? d->svc->hostname : "");
    }
    if (atomic_load_explicit(&o->ejected_until_ms, memory_order_relaxed) > now) { /* a late answer */
        pthread_mutex_unlock(&od_lock);
        return;
    }
    bool eject = false;
    if (status >= 500 && status <= 599) {
        if (status >= 502 && status <= 504) {
            if (od->consecutive_gateway && ++o->cgw >= od->consecutive_gateway) eject = true;
        } else {
            o->cgw = 0;
        }
        if (od->consecutive_5xx && ++o->c5xx >= od->consecutive_5xx) eject = true;
    } else {
        o->c5xx = o->cgw = 0;
    }
    if (eject) {
        size_t out = od_ejected_in(cluster, now);
        bool allowed =
            out == 0 || (hosts && 100.0 * (double)(out + 1) / (double)hosts <= od->max_ejection_percent);
        if (allowed) {
            uint64_t back = atomic_load_explicit(&o->ejected_until_ms, memory_order_relaxed);
            if (back && od->interval_ms && now > back) {
                uint64_t decay = (now - back) / od->interval_ms;
                o->n_ejections = o->n_ejections > decay ? o->n_ejections - (uint32_t)decay : 0;
            }
            o->n_ejections++;
            uint64_t cap =
                od->base_ejection_ms > WP_OD_MAX_EJECTION_MS ? od->base_ejection_ms : WP_OD_MAX_EJECTION_MS;
            uint64_t dur = od->base_ejection_ms * o->n_ejections;
            if (dur > cap) dur = cap;
            /* Envoy unejects on its interval timer: the host is back at the first tick after its time */
            uint64_t until = now + dur;
            uint64_t iv = od->interval_ms;
            if (iv) until = o->epoch + (until - o->epoch + iv - 1) / iv * iv;
            atomic_store_explicit(&o->ejected_until_ms, until, memory_order_release);
            atomic_fetch_add_explicit(&od_ejections_total, 1, memory_order_relaxed);
            o->ejections++;
            LOG_I(
                "waypoint::outlier",
                "ejected %s for %llu ms (ejection %u, last status %d, back at the interval tick in %llu ms)",
                w->uid, (unsigned long long)dur, o->n_ejections, status, (unsigned long long)(until - now));
        } else {
            LOG_LIMITED(LOG_INFO, "waypoint::outlier", "%s not ejected: maxEjectionPercent %u%% reached",
                        w->uid, od->max_ejection_percent);
        }
        o->c5xx = o->cgw = 0;
    }
    pthread_mutex_unlock(&od_lock);
}

uint64_t wp_outlier_ejections_total(void)
{
    return atomic_load_explicit(&od_ejections_total, memory_order_relaxed);
}

size_t wp_outlier_ejected(char *buf, size_t n)
{
    uint64_t now = wp_now_ms();
    size_t w = 0, count = 0;
    if (n) buf[0] = 0;
    pthread_mutex_lock(&od_lock);
    for (size_t k = 0; k < WP_OD_SLOTS; k++) {
        uint64_t until = atomic_load_explicit(&od_table[k].ejected_until_ms, memory_order_relaxed);
        if (!atomic_load_explicit(&od_table[k].key, memory_order_relaxed) || until <= now) continue;
        count++;
        if (w < n) {
            int r = snprintf(buf + w, n - w, "%s%s", w ? "," : "", od_table[k].uid);
            if (r > 0) w += (size_t)r;
        }
    }
    pthread_mutex_unlock(&od_lock);
    return count;
}

/* Envoy's outlier stats per cluster (envoy_cluster_outlier_detection_ejections_enforced_total, a counter, and
 * envoy_cluster_outlier_detection_ejections_active, a gauge), for the clusters that have had reports. */
void wp_outlier_metrics(struct prom_buf *b, bool openmetrics)
{
    struct {
        const char *name;
        uint64_t enforced, active;
    } cl[WP_OD_MAX_CLUSTERS];
    size_t n = 0;
    bool cut = false;
    uint64_t now = wp_now_ms();
    pthread_mutex_lock(&od_lock);
    for (size_t k = 0; k < WP_OD_SLOTS; k++) {
        struct od_slot *o = &od_table[k];
        if (!atomic_load_explicit(&o->key, memory_order_relaxed) || !o->cluster) continue;
        size_t i = 0;
        while (i < n && strcmp(cl[i].name, o->cluster_name))
            i++;
        if (i == n) {
            if (n == WP_OD_MAX_CLUSTERS) {
                cut = true;
                continue;
            }
            cl[n++] = (typeof(cl[0])){o->cluster_name, 0, 0};
        }
        cl[i].enforced += o->ejections;
        cl[i].active += atomic_load_explicit(&o->ejected_until_ms, memory_order_relaxed) > now;
    }
    if (n) {
        prom_header(b, openmetrics, "envoy_cluster_outlier_detection_ejections_enforced", PROM_COUNTER,
                    "Endpoints ejected by outlier detection");
        for (size_t i = 0; i < n; i++) {
            prom_puts(b, "envoy_cluster_outlier_detection_ejections_enforced_total{cluster_name=\"");
            prom_value(b, cl[i].name);
            prom_printf(b, "\"} %llu\n", (unsigned long long)cl[i].enforced);
        }
        prom_header(b, openmetrics, "envoy_cluster_outlier_detection_ejections_active", PROM_GAUGE,
                    "Endpoints ejected now");
        for (size_t i = 0; i < n; i++) {
            prom_puts(b, "envoy_cluster_outlier_detection_ejections_active{cluster_name=\"");
            prom_value(b, cl[i].name);
            prom_printf(b, "\"} %llu\n", (unsigned long long)cl[i].active);
        }
    }
    pthread_mutex_unlock(&od_lock);
    if (cut)
        LOG_LIMITED(LOG_WARN, "waypoint::outlier", "more than %d clusters with outlier reports: metrics cut",
                    WP_OD_MAX_CLUSTERS);
}

json_t *wp_outlier_json(void)
{
    json_t *a = json_array();
    uint64_t now = wp_now_ms();
    pthread_mutex_lock(&od_lock);
    for (size_t k = 0; a && k < WP_OD_SLOTS; k++) {
        struct od_slot *o = &od_table[k];
        uint64_t until = atomic_load_explicit(&o->ejected_until_ms, memory_order_relaxed);
        if (!atomic_load_explicit(&o->key, memory_order_relaxed) || !o->cluster || until <= now) continue;
        json_array_append_new(a, json_pack("{s:s, s:s, s:I, s:I}", "cluster", o->cluster_name, "endpoint",
                                           o->uid, "ejectedForMs", (json_int_t)(until - now), "ejections",
                                           (json_int_t)o->n_ejections));
    }
    pthread_mutex_unlock(&od_lock);
    return a;
}

void wp_request_done(struct wp_decision *d, const struct workload *w, int status)
{
    if (d->lb_circuit) {
        cb_release((_Atomic int64_t *)d->lb_circuit);
        d->lb_circuit = NULL;
    }
    wp_try_done(d, w, status);
    d->lb_outlier = NULL;
}

/* The eligible endpoints of this worker's last pick (grown as needed, never shrunk). */
static _Thread_local const struct workload **el_buf;
static _Thread_local size_t el_cap;

/* One pick among svc's endpoints on port under policy pol (NULL parts: Envoy's defaults), of subset ss (NULL:
 * all), leaving out the endpoints outlier detection has ejected (d, when given, gets the count for
 * maxEjectionPercent). hash/hashed: the request's key; attempt: picks before this one for the same request
 * (Envoy's retry mutation of the hash). */
static int choose(struct wp_tunnel *t, const struct service *svc, uint16_t port, const struct dr_subset *ss,
                  const struct dr_policy *pol, uint64_t cluster, bool hashed, uint64_t hash, uint32_t attempt,
                  struct wp_decision *d, struct lb_choice *out)
{
    uint8_t lbk = pol->lb ? pol->lb->lb : DR_LB_LEAST_REQUEST;
    struct lb_source src = {.wl = t->src_wl};
    const struct ip_addr *orig = svc == t->svc ? &t->dst_ip : NULL;
    const struct workload *const *eps;
    size_t n = 0;
    unsigned rank;
    if (lb_candidates(t->view->snap, svc, port, &src, &eps, &n, &rank) != 0 || n == 0) {
        /* A Passthrough service is dialed at its original destination, which for a waypoint is the VIP
         * itself: nothing to send to. */
        if (ss) return -ENOENT;
        return lb_pick(t->view->snap, svc, port, &src, orig, wp_rand(t->w), out) == 0 ? 0 : -ENOENT;
    }
    if (n > el_cap) {
        const struct workload **nb = realloc(el_buf, n * sizeof(*nb));
        if (!nb) return -ENOENT;
        el_buf = nb;
        el_cap = n;
    }
    /* The endpoints the mesh's load balancer allows (health, locality preference, ports), of the subset. */
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        const struct workload *w = eps[i];
        if (!w->capacity || !service_target_port(svc, w, port)) continue; /* capacity 0: never chosen */
        if (ss && !dr_subset_has(ss, w->namespace_, w->name)) continue;
        el_buf[m++] = w;
    }
    if (!m) {
        if (ss) return -ENOENT;
        return lb_pick(t->view->snap, svc, port, &src, orig, wp_rand(t->w), out) == 0 ? 0 : -ENOENT;
    }
    if (pol->outlier) {
        /* Ejected endpoints are left out, unless fewer than minHealthPercent would remain (Envoy's panic
         * threshold, which Istio sets from it: then every endpoint is used). */
        uint64_t now = wp_now_ms();
        size_t k = 0;
        for (size_t i = 0; i < m; i++)
            if (!od_ejected(cluster, el_buf[i], now)) k++;
        if (d) d->lb_hosts = m;
        if (k < m && k > 0 && 100 * k >= (size_t)pol->outlier->min_health_percent * m) {
            size_t j = 0;
            for (size_t i = 0; i < m; i++)
                if (!od_ejected(cluster, el_buf[i], now)) el_buf[j++] = el_buf[i];
            m = j;
        } else if (!k && !pol->outlier->min_health_percent) {
            return -ENOENT; /* every endpoint ejected, no panic threshold: no healthy upstream */
        }
    }
    const struct workload *w = NULL;
    switch (lbk) {
    case DR_LB_ROUND_ROBIN:
        w = el_buf[rr_next(cluster) % m];
        break;
    case DR_LB_RANDOM:
        w = el_buf[wp_rand(t->w) % m];
        break;
    case DR_LB_PASSTHROUGH:
        /* Envoy's ORIGINAL_DST: the address the client asked for when it is one of the endpoints (a workload
         * address); a Service VIP has none, so one endpoint at random. */
        for (size_t i = 0; i < m && !w; i++)
            for (size_t k = 0; k < el_buf[i]->n_ips && !w; k++)
                if (ip_equal(&el_buf[i]->ips[k], &t->dst_ip)) w = el_buf[i];
        if (!w) w = el_buf[wp_rand(t->w) % m];
        break;
    case DR_LB_RING_HASH:
    case DR_LB_MAGLEV: {
        const struct ch_cache *c = ch_table(t, svc, ss, port, pol->lb, el_buf, m);
        int i = c ? chash_pick_attempt(c->ch, hashed ? hash : wp_rand(t->w), attempt) : -1;
        w = i >= 0 ? c->eps[i] : el_buf[wp_rand(t->w) % m];
        break;
    }
    default: {
        /* Envoy's default for a waypoint's clusters, LEAST_REQUEST: of two endpoints drawn at random, the one
         * with fewer requests in flight (from this worker, as Envoy's per-worker load balancers count them).
         */
        w = el_buf[wp_rand(t->w) % m];
        if (m > 1) {
            const struct workload *b = el_buf[wp_rand(t->w) % m];
            if (lr_active(b) < lr_active(w)) w = b;
        }
    }
    }
    if (lb_endpoint_ip(w, svc->ip_families, orig, &out->ip) < 0) return -ENOENT;
    out->wl = w;
    out->port = service_target_port(svc, w, port);
    return 0;
}

int wp_pick_endpoint(struct wp_tunnel *t, const struct service *svc, uint16_t port, struct lb_choice *out)
{
    if (!svc) {
        *out = (struct lb_choice){.wl = t->dst_wl, .ip = t->dst_ip, .port = t->port};
        return 0;
    }
    /* Without a request (TCP passthrough, mirrors): the Service's load balancer, no subset, no limits. */
    const struct dr_rule *dr = l7_destination_rule_for(t->view->l7, svc->namespace_, svc->name);
    struct dr_policy pol = dr_policy_for(dr, NULL, port);
    pol.pool = NULL;
    pol.outlier = NULL;
    return choose(t, svc, port, NULL, &pol, names_hash(svc, NULL, port), false, 0, 0, NULL, out);
}

int wp_lb_prepare(struct wp_tunnel *t, struct wp_decision *d, const struct l7_request *req, bool http2)
{
    d->lb_ready = true;
    if (!d->svc) return 0;
    const struct dr_rule *dr = l7_destination_rule_for(t->view->l7, d->svc->namespace_, d->svc->name);
    d->lb_subset = NULL;
    if (d->subset && *d->subset) {
        /* Istio builds a cluster per subset of a DestinationRule; a subset no rule defines has no cluster. */
        if (!(d->lb_subset = dr_subset_find(dr, d->subset))) {
            LOG_LIMITED(LOG_WARN, "waypoint::lb",
                        "route %s: subset %s of %s is not defined by a DestinationRule",
                        d->route_name ? d->route_name : "-", d->subset, d->svc->hostname);
            return -ESRCH;
        }
    }
    d->lb_policy = dr_policy_for(dr, d->lb_subset, d->port);
    d->lb_cluster = names_hash(d->svc, d->subset, d->port);
    const struct dr_lb_policy *lb = d->lb_policy.lb;
    if (lb && (lb->lb == DR_LB_RING_HASH || lb->lb == DR_LB_MAGLEV))
        d->lb_hashed = request_hash(t, lb, req, d, &d->lb_hash);
    d->lb_outlier = d->lb_policy.outlier;
    return d->lb_policy.pool ? cb_admit(d, d->lb_cluster, d->lb_policy.pool, http2) : 0;
}

int wp_pick_endpoint_dec(struct wp_tunnel *t, struct wp_decision *d, struct lb_choice *out)
{
    if (!d->lb_ready || !d->svc) return wp_pick_endpoint(t, d->svc, d->port, out);
    return choose(t, d->svc, d->port, d->lb_subset, &d->lb_policy, d->lb_cluster, d->lb_hashed, d->lb_hash,
                  d->lb_picks++, d, out);
}

void wp_try_done(struct wp_decision *d, const struct workload *w, int status)
{
    if (d->lb_outlier && w) od_report(d->lb_cluster, d, w, status);
}

static int plain_dial(void *ud, const struct sockaddr_storage *hop)
{
    (void)ud;
    int fd = socket(hop->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    net_set_nodelay(fd);
    net_set_keepalive(fd);
    socklen_t len = hop->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    if (connect(fd, (const struct sockaddr *)hop, len) < 0 && errno != EINPROGRESS) {
        int e = -errno;
        close(fd);
        return e;
    }
    return fd;
}

struct hbone_stream *wp_upstream_open(struct wp_worker *w, const struct lb_choice *c, int fd,
                                      const struct hbone_stream_ops *ops, void *ud, const char **err)
{
    char ipb[IP_STRLEN], auth[IP_STRLEN + 16];
    char san[SPIFFE_MAX];
    if (workload_spiffe_id(c->wl, san, sizeof(san)) < 0) {
        *err = "the endpoint has no identity";
        close(fd);
        return NULL;
    }
    const char *sans[] = {san};
    ip_format(&c->ip, ipb, sizeof(ipb));
    snprintf(auth, sizeof(auth), c->ip.family == AF_INET6 ? "[%s]:%u" : "%s:%u", ipb, (unsigned)c->port);
    struct hbone_header hdrs[] = {{":authority", auth}};
    struct sockaddr_storage hop;
    sockaddr_from(&hop, &c->ip, WP_HBONE_UPSTREAM_PORT);
    struct identity *id = wp_identity();
    struct hbone_stream *s = hbone_pool_open(w->pool, w, id, plain_dial, NULL, &hop, sans, 1,
                                             &(struct ip_addr){0}, hdrs, 1, fd, ops, ud, err);
    identity_unref(id);
    return s;
}

/* ---- TCP passthrough ---- */

struct tcp_fwd {
    struct wp_tunnel *t;
    struct lb_choice ep;
    char upstream[IP_STRLEN + 8];
    struct wp_tcp_set *m; /* istio_tcp_* for this stream, once the upstream answered */
    _Atomic int64_t *cb;  /* the cluster's connection count this stream holds (connectionPool), or NULL */
    struct hbone_stream *hs;
    struct timer connect_timer; /* connectionPool.tcp.connectTimeout until the upstream tunnel answers */
};

/* connectionPool.tcp.maxConnections for a TCP stream through the waypoint (Envoy's tcp_proxy checks the
 * cluster's max_connections; an HTTP/1.1 request in flight holds one connection of the same count). Returns 0
 * (f->cb set when counted) or -EUSERS (overflow: the connection is closed, flag UO). */
static int tcp_admit(struct tcp_fwd *f)
{
    struct wp_tunnel *t = f->t;
    if (!t->svc) return 0;
    const struct dr_rule *dr = l7_destination_rule_for(t->view->l7, t->svc->namespace_, t->svc->name);
    struct dr_policy pol = dr_policy_for(dr, NULL, t->port);
    if (!pol.pool || !pol.pool->max_connections) return 0;
    _Atomic int64_t *c = cb_counter(names_hash(t->svc, NULL, t->port));
    if (!c) return 0;
    if ((uint64_t)(atomic_fetch_add_explicit(c, 1, memory_order_acq_rel) + 1) > pol.pool->max_connections) {
        atomic_fetch_sub_explicit(c, 1, memory_order_acq_rel);
        return -EUSERS;
    }
    f->cb = c;
    return 0;
}

static void tcp_release(struct tcp_fwd *f)
{
    if (f->cb) cb_release(f->cb);
    f->cb = NULL;
}

static struct wp_tcp_set *tcp_metrics(struct tcp_fwd *f, const char *flags)
{
    struct wp_tunnel *t = f->t;
    return wp_metrics_tcp_open(&(struct wp_req_info){.src_wl = t->src_wl,
                                                     .src_principal = *t->peer_id ? t->peer_id : NULL,
                                                     .dst_wl = f->ep.wl,
                                                     .dst_svc = t->svc,
                                                     .response_flags = flags});
}

static void tcp_response(struct hbone_stream *s, void *ud, int status)
{
    (void)s;
    struct tcp_fwd *f = ud;
    if (timer_armed(&f->connect_timer)) timer_stop(f->t->w->loop, &f->connect_timer);
    if (!f->m) f->m = tcp_metrics(f, status == 200 ? "-" : "UF");
}

/* connectionPool.tcp.connectTimeout (Envoy's cluster connect_timeout for tcp_proxy): the upstream tunnel did
 * not answer in time; the stream is reset and the connection closed (UF, "connection timeout"). */
static void tcp_connect_timeout_cb(struct timer *tm)
{
    struct tcp_fwd *f = container_of(tm, struct tcp_fwd, connect_timer);
    hbone_stream_reset(f->hs, "connection timeout"); /* tcp_done runs (f is gone after it) */
}

static void tcp_done(struct hbone_stream *s, void *ud, const struct hbone_result *r)
{
    (void)s;
    struct tcp_fwd *f = ud;
    struct wp_tunnel *t = f->t;
    if (timer_armed(&f->connect_timer)) timer_stop(t->w->loop, &f->connect_timer);
    bool failed = r->status != 200;
    if (!f->m) f->m = tcp_metrics(f, "UF"); /* the upstream never answered */
    wp_metrics_tcp_bytes(f->m, r->bytes_to_h2, r->bytes_to_tcp);
    wp_metrics_tcp_close(f->m);
    wp_endpoint_end(f->ep.wl);
    tcp_release(f);
    if (log_target_enabled(LOG_INFO, "access")) {
        /* Envoy's default access log line for a TCP stream: no request fields, the bytes, the upstream. */
        char local[SOCKADDR_STRLEN], remote[SOCKADDR_STRLEN], host[IP_STRLEN + 40], cluster[320],
            line[WP_ACCESS_LINE_MAX];
        snprintf(host, sizeof(host), "envoy://connect_originate/%s", f->upstream);
        snprintf(cluster, sizeof(cluster), "inbound-vip|%u|tcp|%s", t->port, t->svc ? t->svc->hostname : "");
        struct wp_access a = {.start_ms_wall = t->start_ms,
                              .response_flags = failed ? "UF" : "-",
                              .upstream_failure = failed ? r->error : NULL,
                              .bytes_received = r->bytes_to_h2,
                              .bytes_sent = r->bytes_to_tcp,
                              .duration_ms = wp_now_ms() - t->start_ms,
                              .upstream_service_time_ms = -1,
                              .upstream_host = host,
                              .upstream_cluster = t->svc ? cluster : NULL,
                              .downstream_local = sockaddr_format(&t->local, local, sizeof(local)),
                              .downstream_remote = sockaddr_format(&t->peer, remote, sizeof(remote))};
        int n = wp_access_format(&a, wp_cfg.access_log_json, line, sizeof(line));
        if (n > 0 && write(STDOUT_FILENO, line, (size_t)n) < 0) {
            /* stdout gone: nothing to tell */
        }
    }
    wp_tunnel_unref(t);
    free(f);
}

static const struct hbone_stream_ops tcp_ops = {.on_done = tcp_done, .on_response = tcp_response};

void wp_tcp_start(struct wp_tunnel *t, int fd)
{
    struct tcp_fwd *f = calloc(1, sizeof(*f));
    const char *err = "out of memory";
    char denied[300];
    if (!f) goto fail;
    f->t = t;
    const char *policy = NULL;
    if (!wp_authorize_stream(t, &policy)) { /* Envoy's network RBAC filter closes the connection */
        snprintf(denied, sizeof(denied), "rbac_access_denied_matched_policy[%s]", policy ? policy : "none");
        err = denied;
        goto fail;
    }
    const struct service *svc; /* a VirtualService tcp route may send it elsewhere (route.c) */
    uint16_t port;
    const char *subset; /* the DestinationRule subset the endpoint comes from ("" none) */
    if (wp_decide_tcp(t, &svc, &port, &subset) < 0) {
        err = "the tcp route's destination Service does not exist";
        goto fail;
    }
    if (wp_pick_tcp_endpoint(t, svc, port, subset, &f->ep) < 0) {
        err = "no healthy upstream";
        goto fail;
    }
    char ipb[IP_STRLEN];
    snprintf(f->upstream, sizeof(f->upstream), "%s:%u", ip_format(&f->ep.ip, ipb, sizeof(ipb)), f->ep.port);
    if (tcp_admit(f) < 0) { /* Envoy's upstream_cx_overflow: closed, UO in the TCP metrics */
        err = "overflow (DestinationRule connectionPool.tcp.maxConnections)";
        wp_metrics_tcp_close(tcp_metrics(f, "UO"));
        goto fail;
    }
    wp_endpoint_begin(f->ep.wl); /* ended in tcp_done */
    f->connect_timer.cb = tcp_connect_timeout_cb;
    if (!(f->hs = wp_upstream_open(t->w, &f->ep, fd, &tcp_ops, f, &err))) {
        wp_endpoint_end(f->ep.wl);
        tcp_release(f);
        fd = -1; /* closed by wp_upstream_open */
        goto fail;
    }
    if (svc) { /* the connect timeout of the Service's DestinationRule, else Istio's default */
        const struct dr_rule *dr = l7_destination_rule_for(t->view->l7, svc->namespace_, svc->name);
        const struct dr_conn_pool *pool = dr_policy_for(dr, NULL, port).pool;
        uint64_t ms =
            pool && pool->connect_timeout_ms ? pool->connect_timeout_ms : WP_CONNECT_TIMEOUT_DEFAULT_MS;
        timer_start(t->w->loop, &f->connect_timer, ms);
    } else {
        timer_start(t->w->loop, &f->connect_timer, WP_CONNECT_TIMEOUT_DEFAULT_MS);
    }
    return;
fail:
    LOG_LIMITED(LOG_WARN, "access",
                "connection failed: dst.service=%s direction=waypoint protocol=TCP error=%s",
                t->svc ? t->svc->hostname : t->authority, err);
    if (fd >= 0) close(fd);
    free(f);
    wp_tunnel_unref(t);
}

/* ---- protocol choice ---- */

struct sniff {
    struct wp_tunnel *t;
    struct io io;
    struct timer timer;
};

/* HTTP/1.x: a method token (RFC 9110 tchar, upper-case in practice) then a space; h2c: the client preface. */
enum wp_sniff wp_sniff_classify(const char *b, size_t n)
{
    static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    if (n >= 3 && !memcmp(b, "PRI", 3)) {
        size_t k = n < sizeof(preface) - 1 ? n : sizeof(preface) - 1;
        if (!memcmp(b, preface, k)) return k == sizeof(preface) - 1 ? WP_SNIFF_H2C : WP_SNIFF_MORE;
    }
    for (size_t i = 0; i < n; i++) {
        if (b[i] == ' ') return i > 0 ? WP_SNIFF_HTTP1 : WP_SNIFF_TCP;
        if (!(b[i] >= 'A' && b[i] <= 'Z') && b[i] != '-' && b[i] != '_') return WP_SNIFF_TCP;
        if (i >= 16) return WP_SNIFF_TCP; /* longer than any method */
    }
    return n >= WP_SNIFF_BYTES ? WP_SNIFF_TCP : WP_SNIFF_MORE;
}

static void dispatch(struct wp_tunnel *t, int fd, enum wp_sniff how)
{
    switch (how) {
    case WP_SNIFF_HTTP1:
        wp_http1_start(t, fd);
        return;
    case WP_SNIFF_H2C:
        wp_h2c_start(t, fd);
        return;
    default:
        wp_tcp_start(t, fd);
        return;
    }
}

static void sniff_finish(struct sniff *sn, enum wp_sniff how)
{
    struct wp_worker *w = sn->t->w;
    int fd = sn->io.fd;
    loop_io_del(w->loop, &sn->io);
    timer_stop(w->loop, &sn->timer);
    struct wp_tunnel *t = sn->t;
    free(sn);
    dispatch(t, fd, how);
}

static void sniff_io(struct io *io, uint32_t ev)
{
    struct sniff *sn = container_of(io, struct sniff, io);
    char b[WP_SNIFF_BYTES];
    ssize_t n = recv(io->fd, b, sizeof(b), MSG_PEEK);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (n <= 0) { /* EOF before a byte: nothing to detect, relay (the upstream sees the close) */
        sniff_finish(sn, WP_SNIFF_TCP);
        return;
    }
    enum wp_sniff r = wp_sniff_classify(b, (size_t)n);
    if (r != WP_SNIFF_MORE) sniff_finish(sn, r);
    (void)ev;
}

static void sniff_timeout(struct timer *tm)
{
    sniff_finish(container_of(tm, struct sniff, timer), WP_SNIFF_TCP);
}

/* Declared ports skip detection (so server-first protocols are not delayed): TCP and TLS are relayed,
 * HTTP/1.1 is parsed, HTTP2 and gRPC are h2c. Undeclared ports are detected. */
static void start_handler(struct wp_tunnel *t, int fd)
{
    switch (t->app_protocol) {
    case PORT_PROTO_TCP:
    case PORT_PROTO_TLS:
        wp_tcp_start(t, fd);
        return;
    case PORT_PROTO_HTTP11:
        wp_http1_start(t, fd);
        return;
    case PORT_PROTO_HTTP2:
    case PORT_PROTO_GRPC:
        wp_h2c_start(t, fd);
        return;
    default:
        break;
    }
    struct sniff *sn = calloc(1, sizeof(*sn));
    if (!sn) {
        close(fd);
        wp_tunnel_unref(t);
        return;
    }
    sn->t = t;
    sn->io = (struct io){.fd = fd, .cb = sniff_io};
    sn->timer.cb = sniff_timeout;
    if (loop_io_add(t->w->loop, &sn->io, EPOLLIN | EPOLLRDHUP) < 0) {
        free(sn);
        close(fd);
        wp_tunnel_unref(t);
        return;
    }
    timer_start(t->w->loop, &sn->timer, WP_SNIFF_TIMEOUT_MS);
}

/* ---- HBONE inbound ---- */

struct wp_in_conn {
    struct wp_in_conn *next, *prev;
    struct wp_worker *w;
    struct hbone_conn *c;
    struct identity *ident; /* the certificate this connection was accepted with (reference held) */
    struct sockaddr_storage peer, local;
    bool handshaking;
};

static void down_done(struct hbone_stream *s, void *ud, const struct hbone_result *r)
{
    (void)s;
    struct wp_tunnel *t = ud;
    t->down = NULL;
    if (r->reset_early) {
        LOG_LIMITED(LOG_DEBUG, LOG_IN, "stream reset by the peer before the answer: %s", t->authority);
    }
    wp_tunnel_unref(t);
}

static const struct hbone_stream_ops down_ops = {.on_done = down_done};

/* Where the CONNECT goes: a service VIP:port or a workload IP bound to this waypoint. Returns the HTTP status
 * to answer (200 with t filled), as Istio's ztunnel answers what it cannot serve: 400 for a bad request, 503
 * for a destination it does not serve. why: for the log. */
static int resolve(struct wp_tunnel *t, const struct hbone_request *req, const char **why)
{
    struct snapshot *snap = t->view->snap;
    if (strcmp(req->method, "CONNECT") != 0) {
        *why = "not a CONNECT";
        return 400;
    }
    if (authority_parse(req->authority, strlen(req->authority), &t->dst_ip, &t->port) < 0) {
        *why = "the authority is not ip:port";
        return 400;
    }
    snprintf(t->authority, sizeof(t->authority), "%s", req->authority);
    const struct service *svc = snapshot_service_by_vip(snap, "", &t->dst_ip);
    if (svc) {
        if (!wp_serves(&svc->waypoint)) {
            *why = "the service is not bound to this waypoint";
            return 503;
        }
        const struct port_map *pm = NULL;
        for (size_t i = 0; i < svc->n_ports; i++)
            if (svc->ports[i].port == t->port) pm = &svc->ports[i];
        if (!pm) {
            *why = "the port is not a port of the service";
            return 503;
        }
        t->svc = svc;
        t->app_protocol = pm->app_protocol;
        return 200;
    }
    const struct workload *wl = snapshot_workload_by_ip(snap, "", &t->dst_ip);
    if (wl && wp_serves(&wl->waypoint)) {
        t->dst_wl = wl;
        return 200;
    }
    *why = wl ? "the workload is not bound to this waypoint" : "unknown destination";
    return 503;
}

static void in_request(struct hbone_stream *s, void *ud, const struct hbone_request *req)
{
    struct wp_in_conn *ic = ud;
    struct wp_worker *w = ic->w;
    struct wp_tunnel *t = calloc(1, sizeof(*t));
    if (!t || !(t->view = wp_view_current())) {
        free(t);
        hbone_stream_respond(s, 503, -1, NULL, 0);
        return;
    }
    t->refs = 1;
    t->w = w;
    atomic_fetch_add(&w->active, 1);
    t->peer = ic->peer;
    t->local = ic->local;
    t->start_ms = wp_now_ms();
    snprintf(t->peer_id, sizeof(t->peer_id), "%s", hbone_conn_peer_id(ic->c));
    struct ip_addr pip;
    sockaddr_to(&ic->peer, &pip, NULL);
    t->src_wl = snapshot_workload_by_ip(t->view->snap, "", &pip);
    const char *why = NULL;
    int status = resolve(t, req, &why);
    int sv[2] = {-1, -1};
    if (status == 200 && wp_socketpair(sv) < 0) {
        status = 503;
        why = "no socket for the internal connection";
    }
    if (status != 200) {
        char src[SOCKADDR_STRLEN];
        LOG_LIMITED(
            LOG_WARN, "access",
            "connection failed: src.addr=%s src.identity=%s dst.addr=%s direction=inbound status=%d error=%s",
            sockaddr_format(&ic->peer, src, sizeof(src)), *t->peer_id ? t->peer_id : "unknown",
            req->authority, status, why);
        hbone_stream_respond(s, status, -1, NULL, 0);
        wp_tunnel_unref(t);
        return;
    }
    t->down = s;
    hbone_stream_set_ops(s, &down_ops, t);
    hbone_stream_respond(s, 200, sv[0], NULL, 0);
    wp_tunnel_ref(t); /* the handler's */
    start_handler(t, sv[1]);
}

static void hs_end(struct wp_in_conn *ic)
{
    if (!ic->handshaking) return;
    ic->handshaking = false;
    struct wp_worker *w = ic->w;
    if (w->handshakes-- == WP_HANDSHAKES_MAX && w->listening) acceptor_resume(&w->hbone);
}

static void in_ready(struct hbone_conn *c, void *ud)
{
    (void)c;
    hs_end(ud);
}

static void in_closed(struct hbone_conn *c, void *ud, const struct h2_end *e)
{
    struct wp_in_conn *ic = ud;
    hs_end(ic);
    if (e->reason != H2_END_OK && !hbone_conn_established(c)) {
        char src[SOCKADDR_STRLEN];
        LOG_LIMITED(LOG_WARN, "access", "connection failed: src.addr=%s direction=inbound error=%s",
                    sockaddr_format(&ic->peer, src, sizeof(src)), e->detail);
    }
    LIST_DEL(ic->w->in_conns, ic);
    identity_unref(ic->ident);
    free(ic);
}

static const struct hbone_conn_ops in_ops = {
    .on_ready = in_ready, .on_closed = in_closed, .on_request = in_request};

static bool hbone_may_accept(struct acceptor *a)
{
    struct wp_worker *w = container_of(a, struct wp_worker, hbone);
    if (w->handshakes < WP_HANDSHAKES_MAX) return true;
    LOG_LIMITED(LOG_DEBUG, LOG_IN, "%u TLS handshakes in progress on worker %d (the bound): not accepting",
                w->handshakes, w->id);
    return false;
}

static void hbone_accept(struct acceptor *a, int fd, const struct sockaddr_storage *peer)
{
    struct wp_worker *w = container_of(a, struct wp_worker, hbone);
    /* Small HTTP answers must not wait for Nagle's delayed ACK dance (40 ms stalls), as ztunnel's sockets. */
    net_set_nodelay(fd);
    struct wp_in_conn *ic = calloc(1, sizeof(*ic));
    if (!ic || !(ic->ident = wp_identity())) {
        free(ic);
        close(fd);
        return;
    }
    ic->w = w;
    ic->peer = *peer;
    socklen_t len = sizeof(ic->local);
    getsockname(fd, (struct sockaddr *)&ic->local, &len);
    ic->handshaking = true;
    w->handshakes++;
    LIST_PUSH(w->in_conns, ic);
    ic->c = hbone_server_new(w->loop, fd, ic->ident->server_ctx, &in_ops, ic);
    if (!ic->c) {
        hs_end(ic);
        LIST_DEL(w->in_conns, ic);
        identity_unref(ic->ident);
        free(ic);
    }
}

static const struct acceptor_ops hbone_acc_ops = {.on_accept = hbone_accept, .may_accept = hbone_may_accept};

/* ---- workers ---- */

static void mbox_cb(struct io *io, uint32_t ev)
{
    (void)ev;
    struct wp_worker *w = container_of(io, struct wp_worker, mbox);
    uint64_t v;
    while (read(io->fd, &v, sizeof(v)) == sizeof(v)) {
    }
    if (atomic_exchange(&w->drain_requested, false)) {
        if (w->listening) {
            acceptor_close(&w->hbone);
            w->listening = false;
        }
        for (struct wp_in_conn *ic = w->in_conns; ic; ic = ic->next)
            hbone_conn_drain(ic->c);
        hbone_pool_drain(w->pool);
    }
    if (atomic_exchange(&pend_kick[w->id % WP_MAX_WORKERS], false)) pending_serve();
}

static void *worker_main(void *arg)
{
    struct wp_worker *w = arg;
    loop_run(w->loop);
    return NULL;
}

static int worker_init(struct wp_worker *w, int id)
{
    static char names[WP_MAX_WORKERS][32];
    w->id = id;
    w->rnd = ((uint64_t)getpid() << 32) ^ wp_now_ms() ^ ((uint64_t)id * 0x9E3779B97F4A7C15ULL) ^ 1;
    if (!(w->loop = loop_new())) return -ENOMEM;
    if (!(w->pool = hbone_pool_new(w->loop, wp_cfg.pool_idle_ms, "waypoint::pool"))) return -ENOMEM;
    int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (efd < 0) return -errno;
    w->mbox = (struct io){.fd = efd, .cb = mbox_cb};
    int rc = loop_io_add(w->loop, &w->mbox, EPOLLIN);
    if (rc < 0) return rc;
    int fd = net_listen((uint16_t)wp_cfg.hbone_port, 1024, false);
    if (fd < 0) return fd;
    snprintf(names[id], sizeof(names[id]), "hbone :%lld", (long long)wp_cfg.hbone_port);
    if ((rc = acceptor_start(&w->hbone, w->loop, fd, names[id], &hbone_acc_ops)) < 0) return rc;
    w->listening = true;
    return 0;
}

int wp_workers_start(void)
{
    wp_n_workers = (int)wp_cfg.n_workers;
    for (int i = 0; i < wp_n_workers; i++) {
        int rc = worker_init(&wp_workers[i], i);
        if (rc < 0) {
            LOG_E("waypoint", "cannot start worker %d: %s (port %lld)", i, strerror(-rc),
                  (long long)wp_cfg.hbone_port);
            return -1;
        }
    }
    for (int i = 0; i < wp_n_workers; i++)
        if (pthread_create(&wp_workers[i].thread, NULL, worker_main, &wp_workers[i]) != 0) {
            LOG_E("waypoint", "cannot start worker thread %d", i);
            return -1;
        }
    return 0;
}

void wp_workers_drain(void)
{
    uint64_t one = 1;
    for (int i = 0; i < wp_n_workers; i++) {
        atomic_store(&wp_workers[i].drain_requested, true);
        if (write(wp_workers[i].mbox.fd, &one, sizeof(one)) < 0) {
            /* the counter is full: a wakeup is pending anyway */
        }
    }
}

uint64_t wp_active(void)
{
    uint64_t n = 0;
    for (int i = 0; i < wp_n_workers; i++)
        n += atomic_load(&wp_workers[i].active);
    return n;
}
