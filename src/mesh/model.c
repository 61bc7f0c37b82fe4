/* Snapshot storage (arena, hash tables), lifetime and lookups. */
#include <errno.h>
#include <stdalign.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mesh/snapshot_impl.h"

/* ---- arena ---- */

#define ARENA_CHUNK (256 * 1024)

struct arena_chunk {
    struct arena_chunk *next;
    size_t cap, used;
    alignas(16) unsigned char data[];
};

static struct arena_chunk *chunk_new(size_t cap)
{
    struct arena_chunk *c = malloc(sizeof(*c) + cap);
    if (!c) return NULL;
    c->next = NULL;
    c->cap = cap;
    c->used = 0;
    return c;
}

void *arena_alloc(struct arena *a, size_t n)
{
    size_t need = (n + 15) & ~(size_t)15;
    if (need < n) return NULL;
    struct arena_chunk *c = a->head;
    if (!c || c->cap - c->used < need) {
        /* Large requests get a chunk of their own, linked behind the current one, so the space left in
         * the current chunk is not wasted. */
        if (need > ARENA_CHUNK / 4) {
            struct arena_chunk *big = chunk_new(need);
            if (!big) return NULL;
            a->bytes += need;
            big->used = need;
            if (c) {
                big->next = c->next;
                c->next = big;
            } else {
                a->head = big;
            }
            memset(big->data, 0, need);
            return big->data;
        }
        c = chunk_new(ARENA_CHUNK);
        if (!c) return NULL;
        a->bytes += ARENA_CHUNK;
        c->next = a->head;
        a->head = c;
    }
    void *p = c->data + c->used;
    c->used += need;
    memset(p, 0, need);
    return p;
}

void *arena_memdup(struct arena *a, const void *p, size_t n)
{
    if (n == 0) return NULL;
    void *d = arena_alloc(a, n);
    if (d) memcpy(d, p, n);
    return d;
}

char *arena_strndup(struct arena *a, const char *s, size_t n)
{
    char *d = arena_alloc(a, n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

void arena_free(struct arena *a)
{
    struct arena_chunk *c = a->head;
    while (c) {
        struct arena_chunk *next = c->next;
        free(c);
        c = next;
    }
    a->head = NULL;
    a->bytes = 0;
}

void arena_reset(struct arena *a)
{
    struct arena_chunk *keep = NULL, *c = a->head;
    while (c) {
        struct arena_chunk *next = c->next;
        /* Keep one standard chunk: oversized ones were for one large request and are unlikely to fit again.
         */
        if (!keep && c->cap == ARENA_CHUNK)
            keep = c;
        else
            free(c);
        c = next;
    }
    a->head = keep;
    a->bytes = 0;
    if (keep) {
        keep->next = NULL;
        keep->used = 0;
        a->bytes = ARENA_CHUNK;
    }
}

/* ---- hash table ---- */

static inline uint64_t mix64(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

/* Eight bytes per step; the inputs are operator-written config or control-plane data, not attacker-
 * chosen, so a keyed hash against flooding is not needed here. */
uint64_t htab_hash(const void *key, size_t len)
{
    const unsigned char *p = key;
    uint64_t h = 0x9e3779b97f4a7c15ULL ^ (len * 0x100000001b3ULL);
    while (len >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        h = (h ^ mix64(v)) * 0x9fb21c651e98df25ULL;
        p += 8;
        len -= 8;
    }
    if (len) {
        uint64_t v = 0;
        memcpy(&v, p, len);
        h = (h ^ mix64(v ^ 0x5555)) * 0x9fb21c651e98df25ULL;
    }
    return mix64(h);
}

static int htab_grow(struct htab *t)
{
    size_t ncap = t->cap ? t->cap * 2 : 16;
    struct htab_slot *ns = calloc(ncap, sizeof(*ns));
    if (!ns) return -ENOMEM;
    for (size_t i = 0; i < t->cap; i++) {
        struct htab_slot *o = &t->slots[i];
        if (!o->key) continue;
        size_t j = o->hash & (ncap - 1);
        while (ns[j].key)
            j = (j + 1) & (ncap - 1);
        ns[j] = *o;
    }
    free(t->slots);
    t->slots = ns;
    t->cap = ncap;
    return 0;
}

int htab_insert(struct htab *t, const char *key, size_t keylen, uint32_t val, uint32_t *old)
{
    if (keylen > UINT32_MAX) return -EINVAL;
    if ((t->n + 1) * 2 > t->cap) {
        int rc = htab_grow(t);
        if (rc) return rc;
    }
    uint64_t h = htab_hash(key, keylen);
    size_t mask = t->cap - 1;
    size_t i = h & mask;
    for (;; i = (i + 1) & mask) {
        struct htab_slot *s = &t->slots[i];
        if (!s->key) break;
        if (s->hash == h && s->keylen == keylen && memcmp(s->key, key, keylen) == 0) {
            if (old) *old = s->val;
            return -EEXIST;
        }
    }
    t->slots[i] = (struct htab_slot){.hash = h, .key = key, .keylen = (uint32_t)keylen, .val = val};
    t->n++;
    return 0;
}

bool htab_find(const struct htab *t, const char *key, size_t keylen, uint32_t *val)
{
    if (!t->cap) return false;
    uint64_t h = htab_hash(key, keylen);
    size_t mask = t->cap - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        const struct htab_slot *s = &t->slots[i];
        if (!s->key) return false;
        if (s->hash == h && s->keylen == keylen && memcmp(s->key, key, keylen) == 0) {
            *val = s->val;
            return true;
        }
    }
}

int htab_set(struct htab *t, const char *key, size_t keylen, uint32_t val)
{
    if (!t->cap) return -ENOENT;
    uint64_t h = htab_hash(key, keylen);
    size_t mask = t->cap - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        struct htab_slot *s = &t->slots[i];
        if (!s->key) return -ENOENT;
        if (s->hash == h && s->keylen == keylen && memcmp(s->key, key, keylen) == 0) {
            s->val = val;
            return 0;
        }
    }
}

void htab_free(struct htab *t)
{
    free(t->slots);
    t->slots = NULL;
    t->cap = t->n = 0;
}

size_t snap_ip_key(char *buf, const char *network, const struct ip_addr *ip)
{
    size_t nl = strlen(network);
    if (nl > SNAP_KEY_MAX - 18) return 0;
    memcpy(buf, network, nl);
    buf[nl] = '\0';
    buf[nl + 1] = (char)ip->family;
    size_t alen = ip->family == AF_INET ? 4 : 16;
    memcpy(buf + nl + 2, ip->a, alen);
    return nl + 2 + alen;
}

/* ---- lifetime ---- */

struct snapshot *snapshot_new(void)
{
    struct snapshot *s = calloc(1, sizeof(*s));
    if (!s) return NULL;
    atomic_init(&s->refs, 1);
    return s;
}

static int cmp_pol_ns(const void *a, const void *b, void *arg)
{
    const struct snapshot *s = arg;
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    int c = strcmp(s->policies[x].namespace_, s->policies[y].namespace_);
    if (c) return c;
    return x < y ? -1 : x > y;
}

int snapshot_finalize(struct snapshot *s)
{
    int rc = 0;
    size_t n_ns = 0, n_global = 0;
    uint32_t *idx = NULL;
    rc = lb_index_build(s);
    if (rc) return rc;
    /* Every connection names its peer's identity: build each once here rather than per connection. */
    for (size_t i = 0; i < s->n_workloads; i++) {
        char buf[768];
        int n = workload_spiffe_id(&s->workloads[i], buf, sizeof(buf));
        s->workloads[i].spiffe_id = arena_strndup(&s->arena, buf, n > 0 ? (size_t)n : 0);
        if (!s->workloads[i].spiffe_id) return -ENOMEM;
    }
    for (size_t i = 0; i < s->n_policies; i++) {
        if (s->policies[i].scope == POLICY_SCOPE_NAMESPACE)
            n_ns++;
        else if (s->policies[i].scope == POLICY_SCOPE_GLOBAL)
            n_global++;
    }
    if (n_global) {
        s->pol_global = arena_alloc(&s->arena, n_global * sizeof(*s->pol_global));
        if (!s->pol_global) return -ENOMEM;
        for (size_t i = 0; i < s->n_policies; i++)
            if (s->policies[i].scope == POLICY_SCOPE_GLOBAL)
                s->pol_global[s->n_pol_global++] = &s->policies[i];
    }
    if (!n_ns) return 0;
    idx = malloc(n_ns * sizeof(*idx));
    s->pol_ns_list = arena_alloc(&s->arena, n_ns * sizeof(*s->pol_ns_list));
    s->pol_ns_groups = arena_alloc(&s->arena, n_ns * sizeof(*s->pol_ns_groups));
    if (!idx || !s->pol_ns_list || !s->pol_ns_groups) {
        rc = -ENOMEM;
        goto out;
    }
    size_t k = 0;
    for (size_t i = 0; i < s->n_policies; i++)
        if (s->policies[i].scope == POLICY_SCOPE_NAMESPACE) idx[k++] = (uint32_t)i;
    /* Sorting by (namespace, index) makes each namespace one contiguous run in config order. */
    qsort_r(idx, n_ns, sizeof(*idx), cmp_pol_ns, s);
    uint32_t groups = 0;
    for (size_t i = 0; i < n_ns; i++) {
        const struct policy *p = &s->policies[idx[i]];
        s->pol_ns_list[i] = p;
        if (i && !strcmp(p->namespace_, s->pol_ns_list[i - 1]->namespace_)) {
            s->pol_ns_groups[groups - 1].n++;
            continue;
        }
        s->pol_ns_groups[groups] = (struct pol_group){.start = (uint32_t)i, .n = 1};
        rc = htab_insert(&s->pol_by_ns, p->namespace_, strlen(p->namespace_), groups, NULL);
        if (rc) goto out;
        groups++;
    }
out:
    free(idx);
    return rc;
}

void snapshot_ref(struct snapshot *s)
{
    atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
}

void snapshot_unref(struct snapshot *s)
{
    if (!s) return;
    /* Release on every drop and acquire before freeing, so writes made by other holders happen-before
     * the free. */
    if (atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) != 1) return;
    htab_free(&s->wl_by_ip);
    htab_free(&s->wl_by_uid);
    htab_free(&s->wl_by_name);
    htab_free(&s->svc_by_vip);
    htab_free(&s->svc_by_host);
    htab_free(&s->pol_by_name);
    htab_free(&s->pol_by_ns);
    free(s->workloads);
    free(s->services);
    free(s->policies);
    arena_free(&s->arena);
    free(s);
}

unsigned snapshot_refcount(const struct snapshot *s)
{
    return atomic_load_explicit(&s->refs, memory_order_relaxed);
}

/* ---- lookups ---- */

const struct workload *snapshot_workload_by_ip(const struct snapshot *s, const char *network,
                                               const struct ip_addr *ip)
{
    char key[SNAP_KEY_MAX];
    uint32_t v;
    if (!ip || (ip->family != AF_INET && ip->family != AF_INET6)) return NULL;
    size_t kl = snap_ip_key(key, network ? network : "", ip);
    if (!kl || !htab_find(&s->wl_by_ip, key, kl, &v)) return NULL;
    return &s->workloads[v];
}

const struct workload *snapshot_workload_by_uid(const struct snapshot *s, const char *uid)
{
    uint32_t v;
    if (!uid || !htab_find(&s->wl_by_uid, uid, strlen(uid), &v)) return NULL;
    return &s->workloads[v];
}

const struct workload *snapshot_workload_by_name(const struct snapshot *s, const char *ns, const char *name)
{
    char key[2 * 1024 + 2];
    uint32_t v;
    if (!ns || !name) return NULL;
    size_t nl = strlen(ns), ml = strlen(name);
    if (nl + ml + 1 > sizeof(key)) return NULL;
    /* NUL separates the parts: unlike '/', it cannot appear inside a stored name. */
    memcpy(key, ns, nl);
    key[nl] = '\0';
    memcpy(key + nl + 1, name, ml);
    if (!htab_find(&s->wl_by_name, key, nl + 1 + ml, &v)) return NULL;
    return &s->workloads[v];
}

const struct service *snapshot_service_by_vip(const struct snapshot *s, const char *network,
                                              const struct ip_addr *ip)
{
    char key[SNAP_KEY_MAX];
    uint32_t v;
    if (!ip || (ip->family != AF_INET && ip->family != AF_INET6)) return NULL;
    size_t kl = snap_ip_key(key, network ? network : "", ip);
    if (!kl || !htab_find(&s->svc_by_vip, key, kl, &v)) return NULL;
    return &s->services[v];
}

const struct service *snapshot_service_by_host(const struct snapshot *s, const char *ns_slash_host)
{
    uint32_t v;
    if (!ns_slash_host || !htab_find(&s->svc_by_host, ns_slash_host, strlen(ns_slash_host), &v)) return NULL;
    return &s->services[v];
}

const struct policy *snapshot_policy_by_name(const struct snapshot *s, const char *ns_slash_name)
{
    uint32_t v;
    if (!ns_slash_name || !htab_find(&s->pol_by_name, ns_slash_name, strlen(ns_slash_name), &v)) return NULL;
    return &s->policies[v];
}

const struct policy *const *snapshot_namespace_policies(const struct snapshot *s, const char *ns, size_t *n)
{
    uint32_t v;
    *n = 0;
    if (!ns || !htab_find(&s->pol_by_ns, ns, strlen(ns), &v)) return NULL;
    *n = s->pol_ns_groups[v].n;
    return s->pol_ns_list + s->pol_ns_groups[v].start;
}

const struct policy *const *snapshot_global_policies(const struct snapshot *s, size_t *n)
{
    *n = s->n_pol_global;
    return s->n_pol_global ? s->pol_global : NULL;
}

size_t snapshot_n_workloads(const struct snapshot *s)
{
    return s->n_workloads;
}

const struct workload *snapshot_workload_at(const struct snapshot *s, size_t i)
{
    return i < s->n_workloads ? &s->workloads[i] : NULL;
}

size_t snapshot_n_services(const struct snapshot *s)
{
    return s->n_services;
}

const struct service *snapshot_service_at(const struct snapshot *s, size_t i)
{
    return i < s->n_services ? &s->services[i] : NULL;
}

size_t snapshot_n_policies(const struct snapshot *s)
{
    return s->n_policies;
}

const struct policy *snapshot_policy_at(const struct snapshot *s, size_t i)
{
    return i < s->n_policies ? &s->policies[i] : NULL;
}

/* ---- helpers ---- */

int workload_spiffe_id(const struct workload *w, char *buf, size_t n)
{
    int len = snprintf(buf, n, "spiffe://%s/ns/%s/sa/%s", w->trust_domain, w->namespace_, w->service_account);
    if (len < 0 || (size_t)len >= n) {
        if (n) buf[0] = '\0';
        return -ENOSPC;
    }
    return len;
}

static const struct port_map *port_find(const struct port_map *pm, size_t n, uint16_t port)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (pm[mid].port == port) return &pm[mid];
        if (pm[mid].port < port)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/* Compares "ns/host" with the pair (ns, host) without building the string. */
static int key_cmp(const char *key, const char *ns, const char *host)
{
    size_t nl = strlen(ns);
    int c = strncmp(key, ns, nl);
    if (c) return c;
    if (key[nl] != '/') return (unsigned char)key[nl] - (unsigned char)'/';
    return strcmp(key + nl + 1, host);
}

const struct wl_service_ports *workload_service_ports(const struct workload *w, const char *ns,
                                                      const char *host)
{
    size_t lo = 0, hi = w->n_services;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = key_cmp(w->services[mid].key, ns, host);
        if (c == 0) return &w->services[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

uint16_t service_target_port(const struct service *svc, const struct workload *w, uint16_t svc_port)
{
    const struct port_map *sp = port_find(svc->ports, svc->n_ports, svc_port);
    if (!sp) return 0;
    if (w) {
        const struct wl_service_ports *wp = workload_service_ports(w, svc->namespace_, svc->hostname);
        if (wp) {
            const struct port_map *p = port_find(wp->ports, wp->n_ports, svc_port);
            if (p && p->target) return p->target;
        }
    }
    return sp->target;
}

bool cidr_contains(const struct cidr *c, const struct ip_addr *ip)
{
    if (c->ip.family != ip->family) return false;
    unsigned max = ip->family == AF_INET ? 32 : 128;
    unsigned len = c->len > max ? max : c->len;
    unsigned full = len / 8, rem = len % 8;
    if (memcmp(c->ip.a, ip->a, full) != 0) return false;
    if (!rem) return true;
    uint8_t mask = (uint8_t)(0xff << (8 - rem));
    return (c->ip.a[full] & mask) == (ip->a[full] & mask);
}

const char *lb_mode_name(uint8_t mode)
{
    static const char *const n[] = {"Standard", "Strict", "Failover", "Passthrough"};
    return mode < 4 ? n[mode] : "?";
}

const char *lb_scope_name(uint8_t scope)
{
    static const char *const n[] = {"Unspecified", "Region", "Zone", "Subzone", "Node", "Cluster", "Network"};
    return scope < 7 ? n[scope] : "?";
}
