/* The HBONE connection pool of one worker (istio/ztunnel src/proxy/pool.rs).
 *
 * Key: the pod the connection is dialed for (its identity, and the network namespace the connection leaves
 * from: Istio's in-pod pools are per pod), next hop, expected server identities and source IP (Istio's
 * WorkloadKey, src/proxy/h2/client.rs). Connections live in a hash table by key; each key lists its
 * connections. A
 * connection still in its handshake already takes streams, so concurrent first connections to one key
 * share one handshake, and nothing ever blocks or holds a lock: the pool is per worker. A connection that
 * got GOAWAY or reached its stream limit (100, or the peer's lower limit) takes no new streams; another is
 * dialed. Connections without streams for POOL_UNUSED_RELEASE_TIMEOUT (default 5 min) are closed.
 *
 * A connection is dialed with the pod's current identity and keeps a reference to it. After a rotation
 * it keeps taking new streams, as in Istio's pool (src/proxy/pool.rs keys connections by workload, not by
 * certificate): the peer authenticated our certificate when it was valid, and TLS does not look at it
 * again. New connections use the new certificate. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/log.h"
#include "h2/hbone.h"
#include "ztunnel/proxy.h"
#include "ztunnel/settings.h"

#define SWEEP_MS 10000

struct pool_entry {
    struct pool_entry *next, *prev; /* in its key's list */
    struct pool_key *k;
    struct hbone_conn *c;
    struct identity *ident; /* the identity c was dialed with (reference held: c borrows its SSL_CTX) */
    uint64_t idle_since;    /* ms; 0 while streams are open */
};

struct pool_key {
    struct pool_key *hnext; /* hash chain */
    struct pool *pool;
    uint64_t hash;
    struct zt_pod *pod; /* the pod the connections are for (borrowed: pool_drop_pod runs before it goes) */
    struct ip_addr hop_ip, src;
    uint16_t hop_port;
    char *sans; /* expected SANs joined by '\n' */
    struct pool_entry *conns;
};

struct pool {
    struct worker *w;
    struct pool_key **buckets;
    size_t n_buckets, n_keys;
    uint64_t idle_ms;
    struct timer sweep;
};

static uint64_t mix(uint64_t h, uint64_t v)
{
    h ^= v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
    return h;
}

static uint64_t key_hash(const struct zt_pod *pod, const struct ip_addr *hop, uint16_t port,
                         const struct ip_addr *src, const char *sans)
{
    uint64_t h = mix(mix(ip_hash(hop), port), (uint64_t)(uintptr_t)pod);
    h = mix(h, ip_hash(src));
    for (const unsigned char *p = (const unsigned char *)sans; *p; p++)
        h = (h ^ *p) * 1099511628211ULL;
    return h;
}

static char *join_sans(const char *const *sans, size_t n)
{
    size_t len = 1;
    for (size_t i = 0; i < n; i++)
        len += strlen(sans[i]) + 1;
    char *s = malloc(len), *q = s;
    if (!s) return NULL;
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(sans[i]);
        memcpy(q, sans[i], l);
        q += l;
        *q++ = '\n';
    }
    *q = 0;
    return s;
}

static void sweep_cb(struct timer *t)
{
    struct pool *p = container_of(t, struct pool, sweep);
    uint64_t now = loop_now(p->w->loop);
    for (size_t b = 0; b < p->n_buckets; b++)
        for (struct pool_key *k = p->buckets[b]; k; k = k->hnext)
            for (struct pool_entry *e = k->conns, *next; e; e = next) {
                next = e->next;
                if (hbone_conn_streams(e->c)) {
                    e->idle_since = 0;
                } else if (!e->idle_since) {
                    e->idle_since = now;
                } else if (now - e->idle_since >= p->idle_ms) {
                    LOG_D("ztunnel::proxy::pool", "closing a connection unused for %llums",
                          (unsigned long long)p->idle_ms);
                    hbone_conn_drain(e->c); /* GOAWAY, then closes: no streams */
                }
            }
    timer_start(p->w->loop, t, p->idle_ms < SWEEP_MS ? p->idle_ms / 2 + 1 : SWEEP_MS);
}

struct pool *pool_new(struct worker *w)
{
    struct pool *p = calloc(1, sizeof(*p));
    if (!p) return NULL;
    p->w = w;
    p->n_buckets = 64;
    p->buckets = calloc(p->n_buckets, sizeof(*p->buckets));
    if (!p->buckets) {
        free(p);
        return NULL;
    }
    p->idle_ms = zt_cfg.pool_unused_release_ms; /* POOL_UNUSED_RELEASE_TIMEOUT, parsed at start-up */
    p->sweep.cb = sweep_cb;
    timer_start(w->loop, &p->sweep, p->idle_ms < SWEEP_MS ? p->idle_ms / 2 + 1 : SWEEP_MS);
    return p;
}

void pool_drain(struct pool *p)
{
    for (size_t b = 0; b < p->n_buckets; b++)
        for (struct pool_key *k = p->buckets[b]; k; k = k->hnext)
            for (struct pool_entry *e = k->conns; e; e = e->next)
                hbone_conn_drain(e->c);
}

void pool_drop_pod(struct pool *p, struct zt_pod *pod)
{
    for (size_t b = 0; b < p->n_buckets; b++)
        for (struct pool_key *k = p->buckets[b], *knext; k; k = knext) {
            knext = k->hnext;
            if (k->pod != pod) continue;
            /* Each close unlinks its entry (and the key with the last one), perhaps not at once: forget
             * the pod either way so the key never matches a later pod at the same address. */
            k->pod = NULL;
            for (struct pool_entry *e = k->conns, *next; e; e = next) {
                next = e->next;
                hbone_conn_close(e->c, "the pod was removed");
            }
        }
}

static void pool_grow(struct pool *p)
{
    size_t n = p->n_buckets * 2;
    struct pool_key **nb = calloc(n, sizeof(*nb));
    if (!nb) return; /* longer chains, still correct */
    for (size_t b = 0; b < p->n_buckets; b++)
        for (struct pool_key *k = p->buckets[b], *next; k; k = next) {
            next = k->hnext;
            k->hnext = nb[k->hash & (n - 1)];
            nb[k->hash & (n - 1)] = k;
        }
    free(p->buckets);
    p->buckets = nb;
    p->n_buckets = n;
}

static struct pool_key *key_get(struct pool *p, struct zt_pod *pod, const struct ip_addr *hop, uint16_t port,
                                const struct ip_addr *src, const char *sans, bool create)
{
    uint64_t h = key_hash(pod, hop, port, src, sans);
    for (struct pool_key *k = p->buckets[h & (p->n_buckets - 1)]; k; k = k->hnext)
        if (k->hash == h && k->pod == pod && k->hop_port == port && ip_equal(&k->hop_ip, hop) &&
            ip_equal(&k->src, src) && strcmp(k->sans, sans) == 0)
            return k;
    if (!create) return NULL;
    struct pool_key *k = calloc(1, sizeof(*k));
    if (!k || !(k->sans = strdup(sans))) {
        free(k);
        return NULL;
    }
    k->hash = h;
    k->pool = p;
    k->pod = pod;
    k->hop_ip = *hop;
    k->hop_port = port;
    k->src = *src;
    if (p->n_keys >= p->n_buckets) pool_grow(p);
    k->hnext = p->buckets[h & (p->n_buckets - 1)];
    p->buckets[h & (p->n_buckets - 1)] = k;
    p->n_keys++;
    return k;
}

static void key_release(struct pool *p, struct pool_key *k)
{
    if (k->conns) return;
    struct pool_key **pp = &p->buckets[k->hash & (p->n_buckets - 1)];
    while (*pp != k)
        pp = &(*pp)->hnext;
    *pp = k->hnext;
    p->n_keys--;
    free(k->sans);
    free(k);
}

static void entry_closed(struct hbone_conn *c, void *ud, const struct h2_end *end)
{
    (void)c;
    struct pool_entry *e = ud;
    struct pool_key *k = e->k;
    if (end->reason != H2_END_OK) LOG_D("ztunnel::proxy::pool", "connection closed: %s", end->detail);
    if (e->prev)
        e->prev->next = e->next;
    else
        k->conns = e->next;
    if (e->next) e->next->prev = e->prev;
    identity_unref(e->ident);
    free(e);
    key_release(k->pool, k);
}

static const struct hbone_conn_ops entry_ops = {.on_closed = entry_closed};

struct hbone_stream *pool_open_stream(struct pool *p, struct zt_pod *pod, const struct sockaddr_storage *next_hop,
                                      const char *const *sans, size_t n_sans, const struct ip_addr *src_ip,
                                      const struct hbone_header *hdrs, size_t n_hdrs, int tcp_fd,
                                      const struct hbone_stream_ops *ops, void *ud, const char **err)
{
    struct ip_addr hop;
    uint16_t port;
    struct hbone_stream *s;
    char *joined = join_sans(sans, n_sans);
    sockaddr_to(next_hop, &hop, &port);
    struct pool_key *k = joined ? key_get(p, pod, &hop, port, src_ip, joined, true) : NULL;
    free(joined);
    if (!k) goto fail;
    for (struct pool_entry *e = k->conns; e; e = e->next) {
        if (!hbone_conn_usable(e->c)) continue;
        s = hbone_stream_open(e->c, hdrs, n_hdrs, tcp_fd, ops, ud);
        if (s) {
            e->idle_since = 0;
            return s;
        }
    }
    if (!pod->ident) { /* not reached: the listeners accept only once the first certificate is here */
        *err = "no certificate yet";
        goto fail_key;
    }
    /* From the pod's namespace, so the connection has the pod's IP as its source (reference: outbound
     * sockets are created inside the pod netns). */
    int fd = zt_connect(pod->pp->netns_fd, next_hop, NULL, true);
    if (fd < 0) {
        *err = strerror(-fd);
        goto fail_key;
    }
    struct pool_entry *e = calloc(1, sizeof(*e));
    if (!e) {
        close(fd);
        goto fail_key;
    }
    e->k = k;
    e->ident = pod->ident;
    identity_ref(e->ident);
    e->c = hbone_client_new(p->w->loop, fd, e->ident->client_ctx, sans, n_sans, &entry_ops, e);
    if (!e->c) {
        identity_unref(e->ident);
        free(e);
        goto fail_key;
    }
    e->next = k->conns;
    if (k->conns) k->conns->prev = e;
    k->conns = e;
    s = hbone_stream_open(e->c, hdrs, n_hdrs, tcp_fd, ops, ud);
    if (s) return s;
    close(tcp_fd);
    return NULL;
fail_key:
    key_release(p, k);
fail:
    close(tcp_fd);
    return NULL;
}
