/* Ring hash and Maglev, as Envoy builds and searches them (chash.h). */
#include "mesh/chash.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

enum { CH_RING, CH_MAGLEV };

struct ring_entry {
    uint64_t hash;
    uint32_t host;
};

struct chash {
    int kind;
    size_t n; /* ring entries or table slots */
    struct ring_entry *ring;
    uint32_t *table;
};

uint64_t chash_xxh64(const void *data, size_t len, uint64_t seed)
{
    return (uint64_t)XXH64(data, len, (XXH64_hash_t)seed);
}

static int check_hosts(const struct chash_host *hosts, size_t n)
{
    if (!n || n > CHASH_MAX_HOSTS) return -EINVAL;
    for (size_t i = 0; i < n; i++)
        if (!hosts[i].weight || !hosts[i].key || !*hosts[i].key) return -EINVAL;
    return 0;
}

/* ceil() without libm, for the non-negative values here. */
static double up(double v)
{
    double t = (double)(uint64_t)v;
    return t < v ? t + 1 : t;
}

static int ring_cmp(const void *a, const void *b)
{
    const struct ring_entry *x = a, *y = b;
    return (x->hash > y->hash) - (x->hash < y->hash);
}

int chash_ring_build(const struct chash_host *hosts, size_t n, uint64_t min_ring, struct chash **out)
{
    if (check_hosts(hosts, n) < 0 || min_ring > CHASH_RING_MAX) return -EINVAL;
    if (!min_ring) min_ring = 1024;
    double total = 0, min_w = 1;
    for (size_t i = 0; i < n; i++)
        total += hosts[i].weight;
    for (size_t i = 0; i < n; i++)
        if (hosts[i].weight / total < min_w) min_w = hosts[i].weight / total;
    /* Envoy: scale so the least-weighted host gets a whole number of entries, capped at the maximum size. */
    double scale = up(min_w * (double)min_ring) / min_w;
    if (scale > (double)CHASH_RING_MAX) scale = (double)CHASH_RING_MAX;
    size_t cap = (size_t)up(scale) + n;
    struct chash *c = calloc(1, sizeof(*c));
    if (!c || !(c->ring = malloc(cap * sizeof(*c->ring)))) {
        free(c);
        return -ENOMEM;
    }
    c->kind = CH_RING;
    double current = 0, target = 0;
    char key[512];
    for (size_t i = 0; i < n; i++) {
        int kl = snprintf(key, sizeof(key), "%s_", hosts[i].key);
        if (kl < 0 || (size_t)kl >= sizeof(key) - 24) {
            chash_free(c);
            return -EINVAL;
        }
        target += scale * (hosts[i].weight / total);
        for (uint64_t k = 0; current < target && c->n < cap; k++, current++) {
            int l = kl + snprintf(key + kl, sizeof(key) - (size_t)kl, "%llu", (unsigned long long)k);
            c->ring[c->n++] = (struct ring_entry){chash_xxh64(key, (size_t)l, 0), (uint32_t)i};
        }
    }
    qsort(c->ring, c->n, sizeof(*c->ring), ring_cmp);
    *out = c;
    return 0;
}

static bool is_prime(uint64_t v)
{
    if (v < 2) return false;
    for (uint64_t d = 2; d * d <= v; d++)
        if (v % d == 0) return false;
    return true;
}

struct mg_entry {
    const char *key;
    uint32_t host;
    uint64_t offset, skip, next, count;
    double weight, target;
};

static int mg_cmp(const void *a, const void *b)
{
    const struct mg_entry *x = a, *y = b;
    int c = strcmp(x->key, y->key);
    return c ? c : (x->host > y->host) - (x->host < y->host);
}

int chash_maglev_build(const struct chash_host *hosts, size_t n, uint64_t table_size, struct chash **out)
{
    if (!table_size) table_size = 65537;
    if (check_hosts(hosts, n) < 0 || table_size > CHASH_MAGLEV_MAX || !is_prime(table_size)) return -EINVAL;
    struct chash *c = calloc(1, sizeof(*c));
    struct mg_entry *e = calloc(n, sizeof(*e));
    if (c) c->table = malloc(table_size * sizeof(*c->table));
    if (!c || !e || !c->table) {
        free(e);
        chash_free(c);
        return -ENOMEM;
    }
    c->kind = CH_MAGLEV;
    c->n = table_size;
    double total = 0, max_w = 0;
    for (size_t i = 0; i < n; i++)
        total += hosts[i].weight;
    for (size_t i = 0; i < n; i++) {
        size_t kl = strlen(hosts[i].key);
        e[i] = (struct mg_entry){
            .key = hosts[i].key,
            .host = (uint32_t)i,
            .offset = chash_xxh64(hosts[i].key, kl, 0) % table_size,
            .skip = chash_xxh64(hosts[i].key, kl, 1) % (table_size - 1) + 1,
            .weight = hosts[i].weight / total,
        };
        if (e[i].weight > max_w) max_w = e[i].weight;
    }
    /* The fill order must not depend on the order hosts came in (Envoy sorts by the hashed key). */
    qsort(e, n, sizeof(*e), mg_cmp);
    bool *used = calloc(table_size, sizeof(*used));
    if (!used) {
        free(e);
        chash_free(c);
        return -ENOMEM;
    }
    /* Pseudocode listing 1 of the Maglev paper with Envoy's weights: a host of weight max_w takes a slot
     * every iteration, one of max_w / 3 every third. */
    uint64_t filled = 0;
    for (uint64_t it = 1; filled < table_size; it++) {
        for (size_t i = 0; i < n && filled < table_size; i++) {
            struct mg_entry *x = &e[i];
            if ((double)it * x->weight < x->target) continue;
            x->target += max_w;
            uint64_t slot = (x->offset + x->skip * x->next) % table_size;
            while (used[slot]) {
                x->next++;
                slot = (x->offset + x->skip * x->next) % table_size;
            }
            used[slot] = true;
            c->table[slot] = x->host;
            x->next++;
            x->count++;
            filled++;
        }
    }
    free(used);
    free(e);
    *out = c;
    return 0;
}

int chash_pick(const struct chash *c, uint64_t hash)
{
    return chash_pick_attempt(c, hash, 0);
}

int chash_pick_attempt(const struct chash *c, uint64_t hash, uint32_t attempt)
{
    if (!c || !c->n) return -1;
    if (c->kind == CH_MAGLEV) {
        if (attempt) hash ^= ~0ULL - attempt + 1;
        return (int)c->table[hash % c->n];
    }
    /* The first entry whose hash is >= hash, wrapping to the first (ketama, as Envoy's Ring::chooseHost). */
    size_t lo = 0, hi = c->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (c->ring[mid].hash < hash)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == c->n) lo = 0;
    return (int)c->ring[(lo + attempt) % c->n].host;
}

size_t chash_size(const struct chash *c)
{
    return c ? c->n : 0;
}

void chash_free(struct chash *c)
{
    if (!c) return;
    free(c->ring);
    free(c->table);
    free(c);
}
