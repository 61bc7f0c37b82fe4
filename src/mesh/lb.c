/* Service endpoint choice (see lb.h). Semantics follow ztunnel src/state.rs (`load_balance`,
 * `find_upstream_from_service`, `pick_workload_destination_or_resolve`) and src/state/service.rs
 * (`should_include_endpoint`); the code is ours.
 *
 * What is precomputed, and why it is exact
 * ----------------------------------------
 * ztunnel filters a service's endpoints on every connection, then ranks them against the source and does a
 * weighted random choice: O(n) per connection. Everything in that filter except the source's locality is
 * a property of (service, service port, endpoint), fixed for the life of a snapshot:
 *   - health: UNHEALTHY endpoints are dropped unless healthPolicy is AllowAll (ztunnel drops them when the
 *     endpoint is inserted into the service);
 *   - target port: an endpoint needs the service's target port (> 0) or its own mapping for that port.
 *     So all ports whose service target is > 0 share one eligible set ("shared pool"), and each port whose
 *     target is 0 has its own set: the endpoints with an explicit mapping;
 *   - an address: workloads without an IP are skipped (see "Deviations").
 * lb_index_build() computes, per service, those sets ("pools") once, as an array of endpoints with a
 * running sum of capacities (cum[i] = capacity of endpoints 0..i). A Standard pick is then one multiply
 * and one binary search over cum: O(log n), no allocation.
 *
 * Failover/Strict depend on the source, but only through a prefix rule: rank = the number of LEADING
 * routing preferences (scopes) whose value (region, zone, subzone, node, cluster id or network) equals
 * the source's, stopping at the first mismatch. For Failover/Strict services each pool is sorted
 * lexicographically by the tuple (value of prefs[0], value of prefs[1], ...), config order breaking ties.
 * In that order the endpoints matching the source on prefs[0..k) form one contiguous range, and the
 * range for k+1 is a sub-range of the range for k, found by two binary searches (lower/upper bound of the
 * source's value of prefs[k]) inside it. Narrowing while the range stays non-empty yields k_max (the top
 * rank) and exactly the endpoints of rank k_max: every endpoint matching k_max + 1 scopes would have rank
 * k_max + 1, and there is none. Since the range is contiguous, the weighted choice among the top rank uses
 * the same prefix sums (cum[hi-1] - cum[lo-1]). Cost per pick: at most 2·P binary searches of log2(n)
 * strcmp calls each (P = number of routing preferences, ≤ 6 distinct scopes in practice) plus the
 * weighted binary search: O(P log n), independent of the source and never linear in n. Strict = the
 * same with k_max required to be P.
 *
 * On a NETWORK-first bonus (a description of ztunnel's ranking we were given says same-network endpoints get
 * +(len−1) when NETWORK is the first routing preference): ztunnel's `load_balance` (istio/ztunnel
 * src/state.rs, checked at commit 0eff13c) has no such bonus; it counts leading matches only, which is what
 * this file does. For Failover the two agree anyway: a bonus given only to endpoints that match prefs[0]
 * keeps every one of them above every endpoint that does not (rank ≥ 1 vs 0) and keeps their order among
 * themselves, so the top-rank set is the same.
 *
 * Build cost: one hash probe per (workload, service entry) to find the service, then per service and
 * pool O(n log n) for the sort (Failover/Strict only) and O(n) for the sums. Memory: the endpoint list
 * (8 bytes per endpoint) plus 16 bytes per pool entry; a pool entry exists per endpoint in the shared
 * pool and per explicit port mapping in a target-0 port's pool, so the total is linear in the config.
 * Everything lives in the snapshot's arena and is freed with it.
 *
 * Deviations from ztunnel (deliberate):
 *   - Workloads with no IP (ztunnel would DNS-resolve `hostname` or go through the network gateway) are
 *     never chosen: lb_choice has to carry an IP. Likewise a workload none of whose IPs is allowed by the
 *     service's ipFamilies is not eligible (ztunnel picks it, then fails the connection).
 *   - A capacity of 0 makes an endpoint eligible but never chosen; when every top-rank endpoint has
 *     capacity 0 the result is -ENOENT (ztunnel's weighted choice fails the same way). */
#include "mesh/lb.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "mesh/snapshot_impl.h"

struct lb_pool {
    uint32_t n;                 /* > 0 (an empty set is a NULL pool) */
    const struct workload **wl; /* for Failover/Strict: sorted by the routing-preference tuple */
    uint64_t *cum;              /* cum[i] = sum of wl[0..i]->capacity */
};

struct lb_svc {
    const struct workload **eps; /* every endpoint, config order */
    uint32_t n_eps;
    const struct lb_pool **port_pool; /* parallel to service.ports; NULL entry = nothing eligible */
};

const char *lb_scope_value(const struct workload *w, uint8_t scope)
{
    switch (scope) {
    case LB_SCOPE_REGION:
        return w->locality.region;
    case LB_SCOPE_ZONE:
        return w->locality.zone;
    case LB_SCOPE_SUBZONE:
        return w->locality.subzone;
    case LB_SCOPE_NODE:
        return w->node;
    case LB_SCOPE_CLUSTER:
        return w->cluster_id;
    case LB_SCOPE_NETWORK:
        return w->network;
    default:
        return ""; /* UNSPECIFIED: the loaders reject it; matching everything is harmless */
    }
}

static bool ip_allowed(uint8_t families, const struct ip_addr *ip)
{
    switch (families) {
    case IP_FAMILIES_IPV4_ONLY:
        return ip->family == AF_INET;
    case IP_FAMILIES_IPV6_ONLY:
        return ip->family == AF_INET6;
    default:
        return true; /* AUTOMATIC (no restriction) and DUAL */
    }
}

int lb_endpoint_ip(const struct workload *w, uint8_t ip_families, const struct ip_addr *orig_dst,
                   struct ip_addr *out)
{
    const struct ip_addr *first = NULL;
    bool want_family = orig_dst && orig_dst->family;
    /* A client that dialled the pod's own IP gets exactly that IP, before any family rule (as ztunnel). */
    if (want_family)
        for (size_t i = 0; i < w->n_ips; i++)
            if (ip_equal(&w->ips[i], orig_dst)) {
                *out = *orig_dst;
                return 0;
            }
    for (size_t i = 0; i < w->n_ips; i++) {
        const struct ip_addr *ip = &w->ips[i];
        if (!ip_allowed(ip_families, ip)) continue;
        if (!first) first = ip;
        if (want_family && ip->family == orig_dst->family) {
            *out = *ip;
            return 0;
        }
    }
    if (!first) return -ENOENT;
    *out = *first;
    return 0;
}

static bool has_allowed_ip(const struct workload *w, uint8_t families)
{
    for (size_t i = 0; i < w->n_ips; i++)
        if (ip_allowed(families, &w->ips[i])) return true;
    return false;
}

static bool uses_locality(const struct service *svc)
{
    return (svc->lb_mode == LB_MODE_FAILOVER || svc->lb_mode == LB_MODE_STRICT) && svc->n_routing_prefs;
}

/* Lexicographic order over the service's routing-preference tuple; config order (array position) last,
 * so the order, hence each pick for a given rnd, is deterministic. */
static int cmp_locality(const void *a, const void *b, void *arg)
{
    const struct service *svc = arg;
    const struct workload *x = *(const struct workload *const *)a, *y = *(const struct workload *const *)b;
    for (size_t i = 0; i < svc->n_routing_prefs; i++) {
        int c = strcmp(lb_scope_value(x, svc->routing_prefs[i]), lb_scope_value(y, svc->routing_prefs[i]));
        if (c) return c;
    }
    return x < y ? -1 : x > y;
}

/* Builds the pool of svc's endpoints eligible on service port `port` (0 = any port whose service target is
 * > 0). scratch holds L->n_eps pointers. *out = NULL when nothing is eligible. */
static int pool_build(struct snapshot *s, const struct service *svc, const struct lb_svc *L, uint16_t port,
                      const struct workload **scratch, const struct lb_pool **out)
{
    uint32_t n = 0;
    *out = NULL;
    for (uint32_t i = 0; i < L->n_eps; i++) {
        const struct workload *w = L->eps[i];
        if (!w->healthy && svc->health_policy != LB_HEALTH_ALLOW_ALL) continue;
        if (!has_allowed_ip(w, svc->ip_families)) continue;
        if (port && !service_target_port(svc, w, port)) continue;
        scratch[n++] = w;
    }
    if (!n) return 0;
    struct lb_pool *p = arena_alloc(&s->arena, sizeof(*p));
    if (!p) return -ENOMEM;
    p->n = n;
    p->wl = arena_memdup(&s->arena, scratch, n * sizeof(*scratch));
    p->cum = arena_alloc(&s->arena, n * sizeof(*p->cum));
    if (!p->wl || !p->cum) return -ENOMEM;
    if (uses_locality(svc)) qsort_r(p->wl, n, sizeof(*p->wl), cmp_locality, (void *)svc);
    uint64_t sum = 0;
    for (uint32_t i = 0; i < n; i++) {
        sum += p->wl[i]->capacity;
        p->cum[i] = sum;
    }
    *out = p;
    return 0;
}

static int svc_build(struct snapshot *s, size_t idx, const struct workload **scratch)
{
    const struct service *svc = &s->services[idx];
    struct lb_svc *L = &s->lb_svcs[idx];
    const struct lb_pool *shared = NULL;
    bool shared_done = false;
    /* Passthrough never chooses an endpoint, so it needs no pools. */
    if (!L->n_eps || !svc->n_ports || svc->lb_mode == LB_MODE_PASSTHROUGH) return 0;
    L->port_pool = arena_alloc(&s->arena, svc->n_ports * sizeof(*L->port_pool));
    if (!L->port_pool) return -ENOMEM;
    for (size_t j = 0; j < svc->n_ports; j++) {
        int rc;
        if (svc->ports[j].target) {
            if (!shared_done) {
                rc = pool_build(s, svc, L, 0, scratch, &shared);
                if (rc) return rc;
                shared_done = true;
            }
            L->port_pool[j] = shared;
            continue;
        }
        rc = pool_build(s, svc, L, svc->ports[j].port, scratch, &L->port_pool[j]);
        if (rc) return rc;
    }
    return 0;
}

int lb_index_build(struct snapshot *s)
{
    int rc = 0;
    uint32_t *fill = NULL;
    const struct workload **scratch = NULL;
    uint32_t max_eps = 0, v;
    if (!s->n_services) return 0;
    s->lb_svcs = arena_alloc(&s->arena, s->n_services * sizeof(*s->lb_svcs));
    fill = calloc(s->n_services, sizeof(*fill));
    if (!s->lb_svcs || !fill) {
        rc = -ENOMEM;
        goto out;
    }
    /* Two passes (count, then fill) so each service's list is one exact-size array. A `services` key that
     * names no service is ignored: ztunnel stages such endpoints until the service arrives. */
    for (size_t i = 0; i < s->n_workloads; i++) {
        const struct workload *w = &s->workloads[i];
        for (size_t k = 0; k < w->n_services; k++)
            if (htab_find(&s->svc_by_host, w->services[k].key, strlen(w->services[k].key), &v)) {
                if (s->lb_svcs[v].n_eps == UINT32_MAX) {
                    rc = -E2BIG;
                    goto out;
                }
                s->lb_svcs[v].n_eps++;
            }
    }
    for (size_t j = 0; j < s->n_services; j++) {
        struct lb_svc *L = &s->lb_svcs[j];
        if (!L->n_eps) continue;
        L->eps = arena_alloc(&s->arena, L->n_eps * sizeof(*L->eps));
        if (!L->eps) {
            rc = -ENOMEM;
            goto out;
        }
        if (L->n_eps > max_eps) max_eps = L->n_eps;
    }
    for (size_t i = 0; i < s->n_workloads; i++) {
        const struct workload *w = &s->workloads[i];
        for (size_t k = 0; k < w->n_services; k++)
            if (htab_find(&s->svc_by_host, w->services[k].key, strlen(w->services[k].key), &v))
                s->lb_svcs[v].eps[fill[v]++] = w;
    }
    if (!max_eps) goto out;
    scratch = malloc(max_eps * sizeof(*scratch));
    if (!scratch) {
        rc = -ENOMEM;
        goto out;
    }
    for (size_t j = 0; j < s->n_services; j++) {
        rc = svc_build(s, j, scratch);
        if (rc) goto out;
    }
out:
    free(scratch);
    free(fill);
    return rc;
}

/* ---- queries ---- */

/* The index of svc in s->services, or -1 when svc does not point into that array. Compared as integers
 * because relational operators on pointers into different objects are undefined. */
static ssize_t svc_index(const struct snapshot *s, const struct service *svc)
{
    if (!s || !svc || !s->n_services) return -1;
    uintptr_t base = (uintptr_t)s->services, p = (uintptr_t)svc;
    if (p < base || p >= base + s->n_services * sizeof(*s->services)) return -1;
    if ((p - base) % sizeof(*s->services)) return -1;
    return (ssize_t)((p - base) / sizeof(*s->services));
}

size_t snapshot_service_n_endpoints(const struct snapshot *s, const struct service *svc)
{
    ssize_t i = svc_index(s, svc);
    return i < 0 || !s->lb_svcs ? 0 : s->lb_svcs[i].n_eps;
}

const struct workload *const *snapshot_service_endpoints(const struct snapshot *s, const struct service *svc,
                                                         size_t *n)
{
    ssize_t i = svc_index(s, svc);
    *n = 0;
    if (i < 0 || !s->lb_svcs || !s->lb_svcs[i].n_eps) return NULL;
    *n = s->lb_svcs[i].n_eps;
    return s->lb_svcs[i].eps;
}

/* First index in [lo, hi) whose value of scope is >= v (upper = false) or > v (upper = true). */
static uint32_t bound(const struct lb_pool *p, uint32_t lo, uint32_t hi, uint8_t scope, const char *v,
                      bool upper)
{
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        int c = strcmp(lb_scope_value(p->wl[mid], scope), v);
        if (c < 0 || (upper && c == 0))
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* The eligible range [*lo, *hi) of the pool for (svc, port, src) and its rank. */
static int candidates(const struct snapshot *s, const struct service *svc, uint16_t port,
                      const struct lb_source *src, const struct lb_pool **pool, uint32_t *lo, uint32_t *hi,
                      unsigned *rank)
{
    ssize_t idx = svc_index(s, svc);
    if (idx < 0) return -EINVAL;
    if (svc->lb_mode == LB_MODE_PASSTHROUGH) return -EAGAIN;
    size_t a = 0, b = svc->n_ports;
    while (a < b) { /* ports are sorted */
        size_t mid = a + (b - a) / 2;
        if (svc->ports[mid].port < port)
            a = mid + 1;
        else
            b = mid;
    }
    if (a == svc->n_ports || svc->ports[a].port != port) return -ENOENT;
    const struct lb_svc *L = s->lb_svcs ? &s->lb_svcs[idx] : NULL;
    const struct lb_pool *p = L && L->port_pool ? L->port_pool[a] : NULL;
    if (!p) return -ENOENT;
    uint32_t l = 0, h = p->n;
    unsigned k = 0;
    if (uses_locality(svc) && src && src->wl) {
        for (; k < svc->n_routing_prefs; k++) {
            uint8_t scope = svc->routing_prefs[k];
            const char *v = lb_scope_value(src->wl, scope);
            uint32_t nl = bound(p, l, h, scope, v, false);
            uint32_t nh = bound(p, nl, h, scope, v, true);
            if (nl == nh) break;
            l = nl;
            h = nh;
        }
    }
    if (svc->lb_mode == LB_MODE_STRICT && k != svc->n_routing_prefs) return -ENOENT;
    *pool = p;
    *lo = l;
    *hi = h;
    *rank = k;
    return 0;
}

int lb_candidates(const struct snapshot *s, const struct service *svc, uint16_t port,
                  const struct lb_source *src, const struct workload *const **eps, size_t *n, unsigned *rank)
{
    const struct lb_pool *p;
    uint32_t lo, hi;
    unsigned k = 0;
    int rc = candidates(s, svc, port, src, &p, &lo, &hi, &k);
    *n = 0;
    *eps = NULL;
    if (rank) *rank = k;
    if (rc) return rc;
    *eps = p->wl + lo;
    *n = hi - lo;
    return 0;
}

int lb_pick(const struct snapshot *s, const struct service *svc, uint16_t port, const struct lb_source *src,
            const struct ip_addr *orig_dst, uint64_t rnd, struct lb_choice *out)
{
    const struct lb_pool *p;
    uint32_t lo, hi;
    unsigned k;
    int rc = candidates(s, svc, port, src, &p, &lo, &hi, &k);
    if (rc) return rc;
    uint64_t base = lo ? p->cum[lo - 1] : 0, total = p->cum[hi - 1] - base;
    if (!total) return -ENOENT;
    /* r = floor(rnd * total / 2^64) is uniform on [0, total) up to a bias below total / 2^64, with no
     * division. The chosen endpoint is the first whose running sum exceeds base + r. */
    uint64_t r = base + (uint64_t)(((unsigned __int128)rnd * total) >> 64);
    uint32_t a = lo, b = hi - 1;
    while (a < b) {
        uint32_t mid = a + (b - a) / 2;
        if (p->cum[mid] > r)
            b = mid;
        else
            a = mid + 1;
    }
    const struct workload *w = p->wl[a];
    out->wl = w;
    out->port = service_target_port(svc, w, port);
    return lb_endpoint_ip(w, svc->ip_families, orig_dst, &out->ip);
}
