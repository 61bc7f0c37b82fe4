/* Prometheus text 0.0.4 / OpenMetrics 1.0 writing, shared by ztunnel's metrics (src/ztunnel/metrics.c) and
 * the waypoint's (src/waypoint/telemetry.c): a string builder with inline storage, label escaping, HELP/TYPE
 * headers, Envoy's default histogram buckets, and a registry of label sets.
 *
 * Cost model: a caller renders a label set's text once into a prom_buf on the stack (no allocation up to
 * PROM_BUF_INLINE bytes), then prom_registry_get hashes it and walks one chain without taking a lock (the
 * mutex is taken only to create a set); a set, once created, is never freed or moved, so its counters are
 * updated with relaxed atomics. Workers recording requests therefore share no lock. */
#pragma once
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- string builder ---- */

/* Inline capacity: an ordinary label set (Istio's 25 HTTP labels with SPIFFE ids and hostnames) fits, so
 * building one allocates nothing. */
#define PROM_BUF_INLINE 2048

struct prom_buf {
    char *p;
    size_t len, cap;
    bool oom; /* an allocation failed: the content is truncated and must not be used */
    char inl[PROM_BUF_INLINE];
};

/* Empties b onto its inline storage. */
void prom_buf_init(struct prom_buf *b);
/* Frees b's heap storage, if any (b is then unusable until prom_buf_init). */
void prom_buf_free(struct prom_buf *b);
/* Makes room for extra more bytes plus the NUL; false (and b->oom) when memory is short. */
bool prom_buf_reserve(struct prom_buf *b, size_t extra);
/* Appends n bytes / a C string / printf output; on ENOMEM sets b->oom and appends nothing more. */
void prom_put(struct prom_buf *b, const char *s, size_t n);
void prom_puts(struct prom_buf *b, const char *s);
void prom_printf(struct prom_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Returns b's content as a malloc'd NUL-terminated string (caller frees) with its length in *len, and
 * leaves b freed; NULL (b freed too) when b->oom or on ENOMEM. */
char *prom_buf_take(struct prom_buf *b, size_t *len);

/* ---- labels ---- */

/* Appends a label value with Prometheus escaping (backslash, double quote, newline). NULL or "" becomes
 * "unknown", as Istio's ztunnel (DefaultedUnknown) and istio_stats (unknown_) write a missing value. */
void prom_value(struct prom_buf *b, const char *v);
/* Same escaping, but NULL or "" stays empty (grpc_response_status="" on a plain HTTP request). */
void prom_value_raw(struct prom_buf *b, const char *v);
/* Appends `name="value"` (prom_value's defaulting), with a comma first unless b is empty. */
void prom_label(struct prom_buf *b, const char *name, const char *v);
/* Appends `name="value"` with prom_value_raw (an empty value is kept empty). */
void prom_label_raw(struct prom_buf *b, const char *name, const char *v);

/* ---- families ---- */

enum prom_type { PROM_COUNTER, PROM_GAUGE, PROM_HISTOGRAM };

/* "# HELP" and "# TYPE" lines of a family. name is the sample name without "_total"; Prometheus 0.0.4 names a
 * counter family as its samples are named (with "_total"), OpenMetrics without. help gets a final '.'. */
void prom_header(struct prom_buf *b, bool openmetrics, const char *name, enum prom_type type,
                 const char *help);
/* Content-Type to send with an exposition in either format. */
const char *prom_content_type(bool openmetrics);

/* ---- histograms ---- */

/* Envoy's default buckets (envoyproxy/envoy source/common/stats/histogram_impl.cc), which Istio keeps for its
 * histograms (durations in ms and sizes in bytes alike) unless sidecar.istio.io/statsHistogramBuckets says
 * otherwise. */
#define PROM_ENVOY_NBUCKETS 19
extern const double prom_envoy_buckets[PROM_ENVOY_NBUCKETS];

/* A histogram over the PROM_ENVOY_NBUCKETS bounds: per-bucket (not cumulative) counts, the last one for
 * values above every bound (+Inf), and the exact sum. Zero-initialised; updated with relaxed atomics. */
struct prom_hist {
    _Atomic uint64_t bucket[PROM_ENVOY_NBUCKETS + 1];
    _Atomic uint64_t sum;
};

/* Counts v in the first bucket whose bound is >= v (Prometheus' le is inclusive). Any thread. */
void prom_hist_observe(struct prom_hist *h, uint64_t v);
/* Appends the _bucket lines (cumulative, le="+Inf" last), then _sum and _count, of one label set: labels
 * (len bytes, no braces) come first, le last, as Envoy writes them. */
void prom_hist_render(struct prom_buf *b, const char *name, const char *labels, size_t len,
                      const struct prom_hist *h);

/* ---- label-set registry ---- */

/* The head of every registered object: the caller's struct starts with one (container_of by cast). labels
 * points into the same allocation, right after the caller's object, and never moves. */
struct prom_set {
    struct prom_set *_Atomic hnext; /* hash chain; written under the registry lock, read without it */
    struct prom_set *onext;         /* creation order; immutable once the next set is published */
    uint64_t hash;
    uint32_t len;
    const char *labels; /* NUL-terminated, len bytes */
};

/* A bucket array (private to prom.c). */
struct prom_table;

/* Label sets in creation order (so the exposition is stable), hashed by their label text. Never shrinks.
 * Lookups read the current table and its chains with acquire loads; creation and growth happen under lock. */
struct prom_registry {
    pthread_mutex_t lock;
    struct prom_table *_Atomic table;
    struct prom_table *retired; /* tables replaced by a bigger one: a lookup may still walk them */
    size_t n;
    struct prom_set *head, *tail;
    size_t limit;             /* most sets it creates (0: no limit), against labels an outside party picks */
    _Atomic uint64_t refused; /* lookups that would have created a set past limit */
};
#define PROM_REGISTRY_INIT                                                                                   \
    {                                                                                                        \
        .lock = PTHREAD_MUTEX_INITIALIZER                                                                    \
    }

/* Called once for a new set, under the registry lock, before other threads can see it: the place to fill
 * fields that depend on the labels. */
typedef void (*prom_set_init_fn)(struct prom_set *s, void *arg);

/* Finds the set whose label text is labels[0..len), or creates it: obj_size bytes (>= sizeof(struct
 * prom_set), zeroed) followed by a copy of the labels, then init(s, arg) when init is not NULL. The set is
 * owned by the registry and lives as long as the process. Thread-safe. NULL on ENOMEM, or when r->limit sets
 * exist already (then r->refused counts it; see prom_registry_full). */
struct prom_set *prom_registry_get(struct prom_registry *r, const char *labels, size_t len, size_t obj_size,
                                   prom_set_init_fn init, void *arg);

/* The first set and how many existed at the call: walk n of them through onext, as in
 *     for (size_t i = 0; i < n && s; i++, s = i < n ? s->onext : NULL)
 * (later sets are not part of this snapshot; the first n links no longer change). Thread-safe. */
struct prom_set *prom_registry_first(struct prom_registry *r, size_t *n);

/* True when r has a limit and holds that many sets (a NULL from prom_registry_get was the limit, not ENOMEM).
 */
bool prom_registry_full(struct prom_registry *r);
