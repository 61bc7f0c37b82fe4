/* Prometheus / OpenMetrics writing helpers and the label-set registry (prom.h). Depends on libc only. */
#include "core/prom.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* First bucket array size; doubled whenever the sets outnumber the buckets. */
#define PROM_REGISTRY_MIN_BUCKETS 256

/* ---- string builder ---- */

void prom_buf_init(struct prom_buf *b)
{
    b->p = b->inl;
    b->len = 0;
    b->cap = sizeof(b->inl);
    b->oom = false;
    b->p[0] = '\0';
}

void prom_buf_free(struct prom_buf *b)
{
    if (b->p != b->inl) free(b->p);
    b->p = b->inl;
    b->len = 0;
    b->cap = sizeof(b->inl);
}

bool prom_buf_reserve(struct prom_buf *b, size_t extra)
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

void prom_put(struct prom_buf *b, const char *s, size_t n)
{
    /* The common case (room left, no earlier failure) skips the call into prom_buf_reserve. */
    if ((b->oom || b->len + n + 1 > b->cap) && !prom_buf_reserve(b, n)) return;
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void prom_puts(struct prom_buf *b, const char *s)
{
    prom_put(b, s, strlen(s));
}

void prom_printf(struct prom_buf *b, const char *fmt, ...)
{
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < sizeof(tmp)) {
        prom_put(b, tmp, (size_t)n);
        return;
    }
    if (!prom_buf_reserve(b, (size_t)n)) return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

char *prom_buf_take(struct prom_buf *b, size_t *len)
{
    char *out = NULL;
    if (b->oom) goto out;
    if (b->p == b->inl) {
        out = malloc(b->len + 1);
        if (!out) goto out;
        memcpy(out, b->inl, b->len + 1);
    } else {
        out = b->p;
        b->p = b->inl; /* ownership moves to the caller */
    }
    if (len) *len = b->len;
out:
    prom_buf_free(b);
    return out;
}

/* ---- labels ---- */

void prom_value_raw(struct prom_buf *b, const char *v)
{
    if (!v) return;
    /* Copy the runs between characters to escape whole: label values rarely have any. */
    for (;;) {
        size_t run = strcspn(v, "\\\"\n");
        prom_put(b, v, run);
        v += run;
        switch (*v) {
        case '\\':
            prom_put(b, "\\\\", 2);
            break;
        case '"':
            prom_put(b, "\\\"", 2);
            break;
        case '\n':
            prom_put(b, "\\n", 2);
            break;
        default: /* '\0' */
            return;
        }
        v++;
    }
}

void prom_value(struct prom_buf *b, const char *v)
{
    prom_value_raw(b, v && *v ? v : "unknown");
}

static void prom_label_open(struct prom_buf *b, const char *name)
{
    if (b->len) prom_put(b, ",", 1);
    prom_puts(b, name);
    prom_put(b, "=\"", 2);
}

void prom_label(struct prom_buf *b, const char *name, const char *v)
{
    prom_label_open(b, name);
    prom_value(b, v);
    prom_put(b, "\"", 1);
}

void prom_label_raw(struct prom_buf *b, const char *name, const char *v)
{
    prom_label_open(b, name);
    prom_value_raw(b, v);
    prom_put(b, "\"", 1);
}

/* ---- families ---- */

void prom_header(struct prom_buf *b, bool om, const char *name, enum prom_type type, const char *help)
{
    static const char *const types[] = {
        [PROM_COUNTER] = "counter", [PROM_GAUGE] = "gauge", [PROM_HISTOGRAM] = "histogram"};
    const char *suffix = type == PROM_COUNTER && !om ? "_total" : "";
    prom_printf(b, "# HELP %s%s %s.\n", name, suffix, help);
    prom_printf(b, "# TYPE %s%s %s\n", name, suffix, types[type]);
}

const char *prom_content_type(bool om)
{
    return om ? "application/openmetrics-text;charset=utf-8;version=1.0.0"
              : "text/plain; version=0.0.4; charset=utf-8";
}

/* ---- histograms ---- */

const double prom_envoy_buckets[PROM_ENVOY_NBUCKETS] = {
    0.5,  1,    5,     10,    25,    50,     100,    250,     500,     1000,
    2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000,
};

void prom_hist_observe(struct prom_hist *h, uint64_t v)
{
    /* Binary search for the first bound >= v; index PROM_ENVOY_NBUCKETS is +Inf. */
    size_t lo = 0, hi = PROM_ENVOY_NBUCKETS;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if ((double)v <= prom_envoy_buckets[mid])
            hi = mid;
        else
            lo = mid + 1;
    }
    atomic_fetch_add_explicit(&h->bucket[lo], 1, memory_order_relaxed);
    if (v) atomic_fetch_add_explicit(&h->sum, v, memory_order_relaxed);
}

static void prom_hist_line(struct prom_buf *b, const char *name, const char *suffix, const char *labels,
                           size_t len, const char *le, uint64_t v)
{
    prom_puts(b, name);
    prom_puts(b, suffix);
    prom_put(b, "{", 1);
    prom_put(b, labels, len);
    if (le) {
        if (len) prom_put(b, ",", 1);
        prom_printf(b, "le=\"%s\"", le);
    }
    prom_printf(b, "} %llu\n", (unsigned long long)v);
}

void prom_hist_render(struct prom_buf *b, const char *name, const char *labels, size_t len,
                      const struct prom_hist *h)
{
    uint64_t cum = 0;
    char le[48]; /* %.32g of a double: at most 32 digits, sign, point and exponent */
    /* Read each bucket once: the cumulative counts, +Inf and _count stay consistent with each other even
     * while other threads observe. */
    for (size_t i = 0; i <= PROM_ENVOY_NBUCKETS; i++) {
        cum += atomic_load_explicit(&h->bucket[i], memory_order_relaxed);
        /* Envoy writes a bound with {:.32g} (envoyproxy/envoy source/server/admin/prometheus_stats.cc):
         * fixed point for these, 0.5, 1, 1800000. */
        if (i < PROM_ENVOY_NBUCKETS)
            snprintf(le, sizeof(le), "%.32g", prom_envoy_buckets[i]);
        else
            snprintf(le, sizeof(le), "+Inf");
        prom_hist_line(b, name, "_bucket", labels, len, le, cum);
    }
    prom_hist_line(b, name, "_sum", labels, len, NULL, atomic_load_explicit(&h->sum, memory_order_relaxed));
    prom_hist_line(b, name, "_count", labels, len, NULL, cum);
}

/* ---- registry ---- */

/* A 64-bit hash of the label text, eight bytes per step (a label set is about a kilobyte, and it is hashed on
 * every request): each word is mixed in with a multiply and a shift, the tail bytes likewise, then a final
 * avalanche (the murmur3 finaliser) so the low bits that pick a bucket depend on every byte. */
static uint64_t prom_hash(const char *s, size_t n)
{
    const uint64_t k = 0x9e3779b97f4a7c15ULL;
    uint64_t h = 0xcbf29ce484222325ULL ^ (n * k);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = (h ^ w) * k;
        h ^= h >> 29;
        s += 8;
        n -= 8;
    }
    if (n) {
        uint64_t w = 0;
        memcpy(&w, s, n);
        h = (h ^ w) * k;
        h ^= h >> 29;
    }
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb3fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

struct prom_table {
    struct prom_table *retired_next;
    size_t mask; /* slots - 1 (a power of two) */
    struct prom_set *_Atomic slot[];
};

/* The set with this hash and text in t, or NULL. Safe without the lock: sets are never freed, and a chain
 * relinked by a concurrent growth still ends (it only makes this walk miss, and the caller then looks again
 * under the lock). */
static struct prom_set *prom_find(struct prom_table *t, uint64_t h, const char *labels, size_t len)
{
    if (!t) return NULL;
    for (struct prom_set *e = atomic_load_explicit(&t->slot[h & t->mask], memory_order_acquire); e;
         e = atomic_load_explicit(&e->hnext, memory_order_acquire))
        if (e->hash == h && e->len == len && !memcmp(e->labels, labels, len)) return e;
    return NULL;
}

/* Doubles the bucket array; called with the lock held. The old array is kept (on r->retired) because a
 * lookup may still be walking it; the arrays add up to less than twice the last one. Failure only keeps
 * chains longer. */
static void prom_grow(struct prom_registry *r)
{
    struct prom_table *old = atomic_load_explicit(&r->table, memory_order_relaxed);
    size_t nb = old ? (old->mask + 1) * 2 : PROM_REGISTRY_MIN_BUCKETS;
    struct prom_table *t = calloc(1, sizeof(*t) + nb * sizeof(t->slot[0]));
    if (!t) return;
    t->mask = nb - 1;
    /* Relink every set; the new table is published (release) only once its chains are complete. A lookup
     * still in the old table may follow a relinked hnext: release makes what it reaches there visible too. */
    for (struct prom_set *e = r->head; e; e = e->onext) {
        size_t i = e->hash & t->mask;
        atomic_store_explicit(&e->hnext, atomic_load_explicit(&t->slot[i], memory_order_relaxed),
                              memory_order_release);
        atomic_store_explicit(&t->slot[i], e, memory_order_relaxed);
    }
    atomic_store_explicit(&r->table, t, memory_order_release);
    if (old) {
        old->retired_next = r->retired;
        r->retired = old;
    }
}

struct prom_set *prom_registry_get(struct prom_registry *r, const char *labels, size_t len, size_t obj_size,
                                   prom_set_init_fn init, void *arg)
{
    uint64_t h = prom_hash(labels, len);
    struct prom_set *e;
    struct prom_table *t;

    if (obj_size < sizeof(struct prom_set) || len > UINT32_MAX) return NULL;
    /* The common case: the set exists. No lock, no write. */
    e = prom_find(atomic_load_explicit(&r->table, memory_order_acquire), h, labels, len);
    if (e) return e;

    pthread_mutex_lock(&r->lock);
    t = atomic_load_explicit(&r->table, memory_order_relaxed);
    if ((e = prom_find(t, h, labels, len))) goto out;
    if (r->limit && r->n >= r->limit) {
        atomic_fetch_add_explicit(&r->refused, 1, memory_order_relaxed);
        goto out;
    }
    if (!t || r->n > t->mask) {
        prom_grow(r);
        t = atomic_load_explicit(&r->table, memory_order_relaxed);
        if (!t) goto out;
    }
    e = calloc(1, obj_size + len + 1);
    if (!e) goto out;
    char *copy = (char *)e + obj_size;
    memcpy(copy, labels, len);
    e->labels = copy;
    e->hash = h;
    e->len = (uint32_t)len;
    if (init) init(e, arg);
    size_t i = h & t->mask;
    atomic_store_explicit(&e->hnext, atomic_load_explicit(&t->slot[i], memory_order_relaxed),
                          memory_order_relaxed);
    /* Release: a lookup that finds e sees it whole, including what init wrote. */
    atomic_store_explicit(&t->slot[i], e, memory_order_release);
    if (r->tail)
        r->tail->onext = e;
    else
        r->head = e;
    r->tail = e;
    r->n++;
out:
    pthread_mutex_unlock(&r->lock);
    return e;
}

struct prom_set *prom_registry_first(struct prom_registry *r, size_t *n)
{
    pthread_mutex_lock(&r->lock);
    struct prom_set *head = r->head;
    *n = r->n;
    pthread_mutex_unlock(&r->lock);
    return head;
}

bool prom_registry_full(struct prom_registry *r)
{
    pthread_mutex_lock(&r->lock);
    bool full = r->limit && r->n >= r->limit;
    pthread_mutex_unlock(&r->lock);
    return full;
}
