/* The HBONE client connection pool (hbone_pool.h). */
#include "h2/hbone_pool.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/log.h"

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
    struct hbone_pool *pool;
    uint64_t hash;
    const void *owner; /* NULL once the owner was dropped */
    struct ip_addr hop_ip, src;
    uint16_t hop_port;
    char *sans; /* expected SANs joined by '\n' */
    struct pool_entry *conns;
};

struct hbone_pool {
    struct loop *loop;
    const char *log_target;
    struct pool_key **buckets;
    size_t n_buckets, n_keys, n_conns;
    uint64_t idle_ms;
    struct timer sweep;
    bool freed; /* hbone_pool_free ran: the last entry_closed frees the pool */
};

static uint64_t mix(uint64_t h, uint64_t v)
{
    h ^= v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2);
    return h;
}

static uint64_t key_hash(const void *owner, const struct ip_addr *hop, uint16_t port, const struct ip_addr *src,
                         const char *sans)
{
    uint64_t h = mix(mix(ip_hash(hop), port), (uint64_t)(uintptr_t)owner);
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

static uint64_t sweep_interval(const struct hbone_pool *p)
{
    return p->idle_ms < SWEEP_MS ? p->idle_ms / 2 + 1 : SWEEP_MS;
}

static void sweep_cb(struct timer *t)
{
    struct hbone_pool *p = container_of(t, struct hbone_pool, sweep);
    uint64_t now = loop_now(p->loop);
    for (size_t b = 0; b < p->n_buckets; b++)
        for (struct pool_key *k = p->buckets[b]; k; k = k->hnext)
            for (struct pool_entry *e = k->conns, *next; e; e = next) {
                next = e->next;
                if (hbone_conn_streams(e->c)) {
                    e->idle_since = 0;
                } else if (!e->idle_since) {
                    e->idle_since = now;
                } else if (now - e->idle_since >= p->idle_ms) {
                    LOG_D(p->log_target, "closing a connection unused for %llums", (unsigned long long)p->idle_ms);
                    hbone_conn_drain(e->c); /* GOAWAY, then closes: no streams */
                }
            }
    timer_start(p->loop, t, sweep_interval(p));
}

struct hbone_pool *hbone_pool_new(struct loop *l, uint64_t idle_ms, const char *log_target)
{
    struct hbone_pool *p = calloc(1, sizeof(*p));
    if (!p) return NULL;
    p->loop = l;
    p->log_target = log_target;
    p->n_buckets = 64;
    p->buckets = calloc(p->n_buckets, sizeof(*p->buckets));
    if (!p->buckets) {
        free(p);
        return NULL;
    }
    p->idle_ms = idle_ms;
    p->sweep.cb = sweep_cb;
    timer_start(l, &p->sweep, sweep_interval(p));
    return p;
}

static void close_all(struct hbone_pool *p, const void *owner, bool any, const char *reason)
{
    for (size_t b = 0; b < p->n_buckets; b++)
        for (struct pool_key *k = p->buckets[b], *knext; k; k = knext) {
            knext = k->hnext;
            if (!any && k->owner != owner) continue;
            /* Each close unlinks its entry (and the key with the last one), perhaps not at once: forget the
             * owner either way so the key never matches a later owner at the same address. */
            k->owner = NULL;
            for (struct pool_entry *e = k->conns, *next; e; e = next) {
                next = e->next;
                hbone_conn_close(e->c, reason);
            }
        }
}

void hbone_pool_free(struct hbone_pool *p)
{
    if (!p) return;
    timer_stop(p->loop, &p->sweep);
    close_all(p, NULL, true, "the pool was closed");
    p->freed = true; /* after: a close that runs its callbacks at once must not free p under close_all */
    /* A connection's on_closed may run later (the session defers it): the last one frees the pool. */
    if (p->n_conns) return;
    free(p->buckets);
    free(p);
}

void hbone_pool_drain(struct hbone_pool *p)
{
    for (size_t b = 0; b < p->n_buckets; b++)
        for (struct pool_key *k = p->buckets[b]; k; k = k->hnext)
            for (struct pool_entry *e = k->conns; e; e = e->next)
                hbone_conn_drain(e->c);
}

void hbone_pool_drop_owner(struct hbone_pool *p, const void *owner, const char *reason)
{
    close_all(p, owner, false, reason);
}

size_t hbone_pool_conns(const struct hbone_pool *p)
{
    return p->n_conns;
}

static void pool_grow(struct hbone_pool *p)
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

static struct pool_key *key_get(struct hbone_pool *p, const void *owner, const struct ip_addr *hop, uint16_t port,
                                const struct ip_addr *src, const char *sans)
{
    uint64_t h = key_hash(owner, hop, port, src, sans);
    for (struct pool_key *k = p->buckets[h & (p->n_buckets - 1)]; k; k = k->hnext)
        if (k->hash == h && k->owner == owner && k->hop_port == port && ip_equal(&k->hop_ip, hop) &&
            ip_equal(&k->src, src) && strcmp(k->sans, sans) == 0)
            return k;
    struct pool_key *k = calloc(1, sizeof(*k));
    if (!k || !(k->sans = strdup(sans))) {
        free(k);
        return NULL;
    }
    k->hash = h;
    k->pool = p;
    k->owner = owner;
    k->hop_ip = *hop;
    k->hop_port = port;
    k->src = *src;
    if (p->n_keys >= p->n_buckets) pool_grow(p);
    k->hnext = p->buckets[h & (p->n_buckets - 1)];
    p->buckets[h & (p->n_buckets - 1)] = k;
    p->n_keys++;
    return k;
}

static void key_release(struct hbone_pool *p, struct pool_key *k)
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
    struct hbone_pool *p = k->pool;
    if (end->reason != H2_END_OK) LOG_D(p->log_target, "connection closed: %s", end->detail);
    if (e->prev)
        e->prev->next = e->next;
    else
        k->conns = e->next;
    if (e->next) e->next->prev = e->prev;
    identity_unref(e->ident);
    free(e);
    p->n_conns--;
    key_release(p, k);
    if (p->freed && !p->n_conns) {
        free(p->buckets);
        free(p);
    }
}

static const struct hbone_conn_ops entry_ops = {.on_closed = entry_closed};

struct hbone_stream *hbone_pool_open(struct hbone_pool *p, const void *owner, struct identity *ident,
                                     hbone_pool_dial_fn dial, void *dial_ud, const struct sockaddr_storage *hop,
                                     const char *const *sans, size_t n_sans, const struct ip_addr *src_ip,
                                     const struct hbone_header *hdrs, size_t n_hdrs, int tcp_fd,
                                     const struct hbone_stream_ops *ops, void *ud, const char **err)
{
    struct ip_addr hop_ip;
    uint16_t port;
    struct hbone_stream *s;
    *err = "out of memory";
    char *joined = join_sans(sans, n_sans);
    sockaddr_to(hop, &hop_ip, &port);
    struct pool_key *k = joined ? key_get(p, owner, &hop_ip, port, src_ip, joined) : NULL;
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
    if (!ident) {
        *err = "no certificate yet";
        goto fail_key;
    }
    int fd = dial(dial_ud, hop);
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
    e->ident = ident;
    identity_ref(e->ident);
    e->c = hbone_client_new(p->loop, fd, e->ident->client_ctx, sans, n_sans, &entry_ops, e);
    if (!e->c) {
        identity_unref(e->ident);
        free(e);
        goto fail_key;
    }
    p->n_conns++;
    e->next = k->conns;
    if (k->conns) k->conns->prev = e;
    k->conns = e;
    s = hbone_stream_open(e->c, hdrs, n_hdrs, tcp_fd, ops, ud);
    if (s) return s;
    *err = "the new connection took no stream";
    close(tcp_fd);
    return NULL;
fail_key:
    key_release(p, k);
fail:
    close(tcp_fd);
    return NULL;
}
