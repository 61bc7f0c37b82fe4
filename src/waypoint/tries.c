/* A request's tries (tries.h). */
#include "waypoint/tries.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "core/log.h"
#include "core/prom.h"
#include "waypoint/telemetry.h"

/* connectionPool.http.maxRetries: retries in flight per cluster (its key, wp_decision.lb_cluster), across the
 * workers as Envoy's per-cluster resource manager counts them. Slots are claimed once per cluster and never
 * freed (bounded by WP_RETRY_SLOTS; past it a cluster's retries are not limited, with a warning). */
#define WP_RETRY_SLOTS 1024
struct retry_slot {
    _Atomic uint64_t key;
    _Atomic int64_t active;
};
static struct retry_slot retry_table[WP_RETRY_SLOTS];
static _Atomic uint64_t retry_overflows;

static _Atomic int64_t *retry_counter(uint64_t key)
{
    if (!key) key = 1; /* 0 marks a free slot */
    for (size_t i = 0, k = key % WP_RETRY_SLOTS; i < WP_RETRY_SLOTS; i++, k = (k + 1) % WP_RETRY_SLOTS) {
        uint64_t cur = atomic_load_explicit(&retry_table[k].key, memory_order_acquire);
        if (cur == key) return &retry_table[k].active;
        if (!cur) {
            uint64_t zero = 0;
            if (atomic_compare_exchange_strong(&retry_table[k].key, &zero, key) || zero == key)
                return &retry_table[k].active;
        }
    }
    LOG_LIMITED(LOG_WARN, "waypoint::retry", "more than %d clusters with maxRetries: not limited",
                WP_RETRY_SLOTS);
    return NULL;
}

void wp_tries_end(struct wp_tries *tr)
{
    if (!tr->retry_held) return;
    atomic_fetch_sub_explicit((_Atomic int64_t *)tr->retry_held, 1, memory_order_acq_rel);
    tr->retry_held = NULL;
}

/* Claims one of the cluster's retries in flight under d's maxRetries: true when it may go (held in tr). */
static bool retry_admit(const struct wp_decision *d, struct wp_tries *tr)
{
    const struct dr_conn_pool *p = d->lb_ready ? d->lb_policy.pool : NULL;
    if (!p || !p->max_retries) return true;
    _Atomic int64_t *c = retry_counter(d->lb_cluster);
    if (!c) return true;
    if (atomic_fetch_add_explicit(c, 1, memory_order_acq_rel) + 1 > (int64_t)p->max_retries) {
        atomic_fetch_sub_explicit(c, 1, memory_order_acq_rel);
        return false;
    }
    tr->retry_held = (void *)c;
    return true;
}

uint64_t wp_try_overflows(void)
{
    return atomic_load_explicit(&retry_overflows, memory_order_relaxed);
}

void wp_try_metrics(struct prom_buf *b, bool openmetrics)
{
    prom_header(
        b, openmetrics, "zmesh_waypoint_upstream_rq_retry_overflow", PROM_COUNTER,
        "Retries not made because the cluster's retries in flight were at connectionPool.http.maxRetries "
        "(flag UO)");
    prom_printf(b, "zmesh_waypoint_upstream_rq_retry_overflow_total %llu\n",
                (unsigned long long)wp_try_overflows());
}

static bool was_tried(const struct wp_tries *tr, const struct workload *w)
{
    for (unsigned i = 0; i < tr->n && i < WP_TRIED_MAX; i++)
        if (tr->host[i] == w) return true;
    return false;
}

int wp_try_pick(struct wp_tunnel *t, struct wp_decision *d, struct wp_tries *tr, struct lb_choice *out)
{
    bool found = false;
    int picks = tr->n && d->retry && d->retry->retry_other_hosts ? WP_HOST_PICKS : 1;
    for (int i = 0; i < picks; i++) {
        struct lb_choice c;
        if (wp_pick_endpoint_dec(t, d, &c) < 0) break; /* the DestinationRule's choice */
        if (!found || !was_tried(tr, c.wl)) *out = c;
        found = true;
        if (!was_tried(tr, c.wl)) break;
    }
    if (!found) return -ENOENT;
    if (tr->n < WP_TRIED_MAX) tr->host[tr->n] = out->wl;
    tr->n++;
    return 0;
}

bool wp_try_again(const struct wp_decision *d, struct wp_tries *tr, const struct l7_try *e)
{
    wp_tries_end(tr); /* the retry that led to this try is over (Envoy's resetRetry) */
    if (!d->retry || !l7_retry_wanted(d->retry, e)) return false;
    if (tr->n > d->retry->attempts) {
        if (!tr->exhausted) wp_telemetry_retry_exhausted();
        tr->exhausted = true;
        return false;
    }
    if (!retry_admit(d, tr)) {
        atomic_fetch_add_explicit(&retry_overflows, 1, memory_order_relaxed);
        tr->overflow = true;
        return false;
    }
    wp_telemetry_retry();
    return true;
}

uint64_t wp_try_backoff_ms(struct wp_worker *w, const struct wp_decision *d, const struct wp_tries *tr)
{
    return l7_retry_policy_backoff_ms(d->retry, tr->n, wp_rand(w));
}

const char *wp_try_flags(const struct wp_tries *tr, const char *flags, char buf[WP_FLAGS_MAX])
{
    if (!flags) flags = "-";
    if (!tr->exhausted && !tr->overflow) return flags;
    bool none = !strcmp(flags, "-");
    snprintf(buf, WP_FLAGS_MAX, "%s%s%s", none ? "" : flags, none ? "" : ",", tr->exhausted ? "URX" : "UO");
    return buf;
}

struct wp_conn_limits wp_try_conn_limits(const struct wp_decision *d)
{
    struct wp_conn_limits l = {.connect_timeout_ms = WP_CONNECT_TIMEOUT_DEFAULT_MS,
                               .idle_ms = WP_UPSTREAM_IDLE_DEFAULT_MS};
    const struct dr_conn_pool *p = d && d->lb_ready ? d->lb_policy.pool : NULL;
    if (!p) return l;
    if (p->connect_timeout_ms) l.connect_timeout_ms = p->connect_timeout_ms;
    if (p->idle_timeout_ms) l.idle_ms = p->idle_timeout_ms;
    l.max_requests = p->max_requests_per_connection;
    return l;
}
