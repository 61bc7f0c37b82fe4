/* Identities (certificate + TLS contexts) and the manager that keeps them fresh. See identity.h.
 *
 * The manager owns one thread with its own event loop (core/loop.h). Other threads only touch the table
 * under the manager's mutex: acquire adds an entry or a subscriber and wakes the thread through an
 * eventfd; release marks an entry for removal. Everything timed (fetches, renewals, retries) happens on the
 * manager's thread: each entry has a loop timer armed for its next wall-clock deadline, and a periodic clock
 * check re-arms them when the wall clock and the monotonic clock disagree. */
#include "tls/identity.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"
#include "core/loop.h"
#include "tls/tls.h"

#define IDENTITY_BUCKETS 256

/* ---- identity ---- */

int identity_new(struct tls_cert *cert, struct identity **out, char *err, size_t errlen)
{
    struct identity *id = calloc(1, sizeof(*id));
    char ebuf[256];
    int rc = -ENOMEM;

    if (!id) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    atomic_init(&id->refs, 1);
    id->server_ctx = tls_server_ctx_new(cert);
    id->client_ctx = id->server_ctx ? tls_client_ctx_new(cert) : NULL;
    if (!id->server_ctx || !id->client_ctx) {
        snprintf(err, errlen, "TLS context: %s", tls_errstr(ebuf, sizeof(ebuf)));
        rc = -EINVAL;
        goto out;
    }
    tls_cert_ref(cert);
    id->cert = cert;
    *out = id;
    id = NULL;
    rc = 0;
out:
    if (id) {
        SSL_CTX_free(id->server_ctx);
        SSL_CTX_free(id->client_ctx);
        free(id);
    }
    return rc;
}

void identity_ref(struct identity *id)
{
    atomic_fetch_add_explicit(&id->refs, 1, memory_order_relaxed);
}

void identity_unref(struct identity *id)
{
    if (!id || atomic_fetch_sub_explicit(&id->refs, 1, memory_order_acq_rel) != 1) return;
    SSL_CTX_free(id->server_ctx);
    SSL_CTX_free(id->client_ctx);
    tls_cert_unref(id->cert);
    free(id);
}

const char *identity_state_to_str(enum identity_state s)
{
    switch (s) {
    case IDENTITY_INITIALIZING:
        return "Initializing";
    case IDENTITY_AVAILABLE:
        return "Available";
    case IDENTITY_UNAVAILABLE:
        return "Unavailable";
    }
    return "?";
}

/* ---- schedule arithmetic ---- */

uint64_t identity_backoff_ms(unsigned failures, uint64_t rnd)
{
    uint64_t base = IDENTITY_BACKOFF_INITIAL_MS;
    for (unsigned i = 0; i < failures && base < IDENTITY_BACKOFF_MAX_MS; i++)
        base *= 2;
    if (base > IDENTITY_BACKOFF_MAX_MS) base = IDENTITY_BACKOFF_MAX_MS;
    /* rnd mapped onto [0, 2 * spread]; spread = 20 % of base. */
    uint64_t spread = base * IDENTITY_BACKOFF_JITTER_PCT / 100;
    uint64_t off = (uint64_t)(((unsigned __int128)rnd * (2 * spread + 1)) >> 64);
    return base - spread + off;
}

int64_t identity_refresh_at_ms(int64_t not_before_ms, int64_t not_after_ms, int64_t received_ms)
{
    int64_t t0 = not_before_ms > received_ms ? not_before_ms : received_ms;
    int64_t at = not_after_ms > t0 ? t0 + (not_after_ms - t0) / 2 : received_ms;
    if (at < received_ms + IDENTITY_MIN_REFRESH_MS) at = received_ms + IDENTITY_MIN_REFRESH_MS;
    return at;
}

/* ---- manager ---- */

struct identity_sub {
    struct identity_sub *next, *prev;
    struct id_entry *e;
    identity_watch_fn cb;
    void *ud;
};

struct id_entry {
    struct id_entry *hnext; /* hash chain (under mu) */
    struct id_entry *dirty_next;
    struct identity_mgr *m;
    struct spiffe_id id;  /* immutable */
    char uri[SPIFFE_MAX]; /* immutable */
    uint32_t hash;
    /* Under mu: */
    struct identity_sub *subs;
    unsigned users;
    bool dirty;
    enum identity_state state;
    struct identity *cur; /* reference held; NULL unless Available */
    char error[IDENTITY_ERR_MAX];
    unsigned fetches;
    /* Manager thread only: */
    struct timer timer;
    /* The next fetch is due at the earlier of two deadlines: a wall-clock one (renewal at half-life, or the
     * expiry of a retained certificate; certificates live on the wall clock) and a monotonic one (a backoff
     * retry, a duration that a wall-clock step must not stretch). INT64_MAX when unset. */
    int64_t refresh_at_ms; /* wall clock */
    int64_t retry_at_mono; /* monotonic clock */
    unsigned failures;
    bool fetching;
    bool orphan; /* removed from the table while an async fetch was in flight */
};

struct identity_mgr {
    struct cert_provider *prov;
    pthread_t thread;
    bool thread_started;
    struct loop *loop;
    struct io wake;
    struct timer clock_timer;
    int64_t clock_offset_ms; /* wall - monotonic at the last check */
    pthread_mutex_t mu;
    bool stop;              /* under mu */
    struct id_entry *dirty; /* under mu: entries the manager thread must look at */
    struct id_entry *buckets[IDENTITY_BUCKETS];
    size_t count;
};

static int64_t clock_ms(clockid_t clk)
{
    struct timespec ts;
    clock_gettime(clk, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint32_t uri_hash(const char *s)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

/* RFC 3339 UTC text of a wall-clock time in ms, for log lines. */
static const char *fmt_time(int64_t ms, char *buf, size_t n)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    if (!gmtime_r(&t, &tm) || !strftime(buf, n, "%Y-%m-%dT%H:%M:%SZ", &tm)) snprintf(buf, n, "?");
    return buf;
}

static void poke(struct identity_mgr *m)
{
    uint64_t one = 1;
    if (write(m->wake.fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
        LOG_W("identity", "eventfd write: %s", strerror(errno));
}

/* Called with mu held. */
static struct id_entry *entry_find(struct identity_mgr *m, const char *uri, uint32_t h)
{
    for (struct id_entry *e = m->buckets[h % IDENTITY_BUCKETS]; e; e = e->hnext)
        if (e->hash == h && strcmp(e->uri, uri) == 0) return e;
    return NULL;
}

/* Called with mu held. */
static void entry_mark_dirty(struct identity_mgr *m, struct id_entry *e)
{
    if (e->dirty) return;
    e->dirty = true;
    e->dirty_next = m->dirty;
    m->dirty = e;
}

/* Called with mu held. */
static void entry_unlink(struct identity_mgr *m, struct id_entry *e)
{
    struct id_entry **pp = &m->buckets[e->hash % IDENTITY_BUCKETS];
    while (*pp && *pp != e)
        pp = &(*pp)->hnext;
    if (*pp) *pp = e->hnext;
    m->count--;
}

static void entry_free(struct id_entry *e)
{
    struct identity_sub *s = e->subs, *next;
    for (; s; s = next) {
        next = s->next;
        free(s);
    }
    identity_unref(e->cur);
    free(e);
}

/* Manager thread: arms e's timer for the earlier of its deadlines, the wall-clock one as seen now. */
static void entry_plan(struct id_entry *e)
{
    int64_t delay = INT64_MAX;
    if (e->refresh_at_ms != INT64_MAX) delay = e->refresh_at_ms - clock_ms(CLOCK_REALTIME);
    if (e->retry_at_mono != INT64_MAX) {
        int64_t d = e->retry_at_mono - clock_ms(CLOCK_MONOTONIC);
        if (d < delay) delay = d;
    }
    timer_start(e->m->loop, &e->timer, delay > 0 ? (uint64_t)delay : 0);
}

static void fetch_done(void *ud, struct tls_cert *c, const char *err);

/* Manager thread: the entry's deadline passed; fetch (synchronously, or start an asynchronous fetch). */
static void entry_timer_cb(struct timer *t)
{
    struct id_entry *e = container_of(t, struct id_entry, timer);
    struct cert_provider *p = e->m->prov;
    char err[IDENTITY_ERR_MAX] = "";

    if (e->fetching) return;
    e->fetching = true;
    if (p->fetch_async) {
        int rc = p->fetch_async(p, e->m->loop, &e->id, fetch_done, e);
        if (rc < 0) {
            snprintf(err, sizeof(err), "cannot start a certificate request: %s", strerror(-rc));
            fetch_done(e, NULL, err);
        }
        return;
    }
    struct tls_cert *c = p->fetch(p, &e->id, err, sizeof(err));
    fetch_done(e, c, err[0] ? err : "certificate provider failed without a reason");
}

/* Manager thread: the result of one fetch (c: a reference we own, or NULL with err). */
static void fetch_done(void *ud, struct tls_cert *c, const char *err)
{
    struct id_entry *e = ud;
    struct identity_mgr *m = e->m;
    struct identity *ni = NULL, *old = NULL;
    char ebuf[IDENTITY_ERR_MAX], until[40], retry_s[40], delay_s[24];
    int64_t now = clock_ms(CLOCK_REALTIME);

    e->fetching = false;
    if (e->orphan) {
        tls_cert_unref(c);
        entry_free(e);
        return;
    }
    if (c) {
        if (identity_new(c, &ni, ebuf, sizeof(ebuf)) < 0) err = ebuf;
        tls_cert_unref(c);
    }
    pthread_mutex_lock(&m->mu);
    if (ni) {
        old = e->cur;
        e->cur = ni;
        e->state = IDENTITY_AVAILABLE;
        e->error[0] = 0;
        e->failures = 0;
        e->fetches++;
        e->retry_at_mono = INT64_MAX;
        e->refresh_at_ms = identity_refresh_at_ms((int64_t)ni->cert->not_before * 1000,
                                                  (int64_t)ni->cert->not_after * 1000, now);
        for (struct identity_sub *s = e->subs; s; s = s->next)
            s->cb(s->ud, ni);
        pthread_mutex_unlock(&m->mu);
        identity_unref(old);
        if (log_enabled(LOG_DEBUG))
            log_kv(LOG_DEBUG, "identity", "certificate fetch succeeded", "identity", e->uri, "expiration",
                   fmt_time((int64_t)ni->cert->not_after * 1000, until, sizeof(until)), "refresh_at",
                   fmt_time(e->refresh_at_ms, retry_s, sizeof(retry_s)), NULL);
        entry_plan(e);
        return;
    }
    uint64_t rnd = 0;
    if (getrandom(&rnd, sizeof(rnd), GRND_NONBLOCK) != sizeof(rnd))
        rnd = (uint64_t)now * 0x9e3779b97f4a7c15ULL;
    uint64_t delay = identity_backoff_ms(e->failures, rnd);
    if (e->failures < 64) e->failures++;
    int64_t retry = now + (int64_t)delay; /* for the log line */
    int64_t expiry = e->cur ? (int64_t)e->cur->cert->not_after * 1000 : 0;
    bool retain = e->cur && now < expiry;
    e->retry_at_mono = clock_ms(CLOCK_MONOTONIC) + (int64_t)delay;
    if (retain) {
        /* As Istio: keep serving the still-valid certificate, and retry no later than its expiry. */
        e->refresh_at_ms = expiry;
        if (retry > expiry) retry = expiry;
    } else {
        e->state = IDENTITY_UNAVAILABLE;
        snprintf(e->error, sizeof(e->error), "%s", err);
        old = e->cur;
        e->cur = NULL;
        e->refresh_at_ms = INT64_MAX;
    }
    pthread_mutex_unlock(&m->mu);
    identity_unref(old);
    if (retain) {
        char msg[IDENTITY_ERR_MAX + 160];
        snprintf(msg, sizeof(msg),
                 "certificate renewal failed (%s); retaining existing valid certificate until %s; next retry "
                 "at %s",
                 err, fmt_time(expiry, until, sizeof(until)), fmt_time(retry, retry_s, sizeof(retry_s)));
        log_kv(LOG_INFO, "identity", msg, "identity", e->uri, NULL);
    } else {
        char msg[IDENTITY_ERR_MAX + 160];
        snprintf(delay_s, sizeof(delay_s), "%" PRIu64 "ms", delay);
        snprintf(msg, sizeof(msg),
                 "certificate fetch failed (%s) and no valid existing certificate; will retry in %s (backoff "
                 "capped at %ds)",
                 err, delay_s, IDENTITY_BACKOFF_MAX_MS / 1000);
        log_kv(LOG_WARN, "identity", msg, "identity", e->uri, NULL);
    }
    entry_plan(e);
}

/* Manager thread: the wall clock moved differently from the monotonic one; re-plan every waiting entry. */
static void clock_check_cb(struct timer *t)
{
    struct identity_mgr *m = container_of(t, struct identity_mgr, clock_timer);
    int64_t off = clock_ms(CLOCK_REALTIME) - clock_ms(CLOCK_MONOTONIC);
    int64_t drift = off - m->clock_offset_ms;
    if (drift > IDENTITY_CLOCK_SLACK_MS || drift < -IDENTITY_CLOCK_SLACK_MS) {
        m->clock_offset_ms = off;
        pthread_mutex_lock(&m->mu);
        for (size_t b = 0; b < IDENTITY_BUCKETS; b++)
            for (struct id_entry *e = m->buckets[b]; e; e = e->hnext)
                if (!e->fetching && timer_armed(&e->timer)) entry_plan(e);
        pthread_mutex_unlock(&m->mu);
    }
    timer_start(m->loop, t, IDENTITY_CLOCK_CHECK_MS);
}

/* Manager thread: new entries get their first fetch; entries nobody uses any more are dropped. */
static void wake_cb(struct io *io, uint32_t ev)
{
    (void)ev;
    struct identity_mgr *m = container_of(io, struct identity_mgr, wake);
    struct id_entry *gone = NULL;
    uint64_t n;
    if (read(io->fd, &n, sizeof(n)) < 0 && errno != EAGAIN) LOG_W("identity", "eventfd: %s", strerror(errno));
    pthread_mutex_lock(&m->mu);
    if (m->stop) loop_stop(m->loop);
    struct id_entry *e = m->dirty, *next;
    m->dirty = NULL;
    for (; e; e = next) {
        next = e->dirty_next;
        e->dirty = false;
        if (e->users == 0) {
            entry_unlink(m, e);
            timer_stop(m->loop, &e->timer);
            e->dirty_next = gone;
            gone = e;
        } else if (!e->fetching && !timer_armed(&e->timer)) {
            e->refresh_at_ms = clock_ms(CLOCK_REALTIME);
            e->retry_at_mono = INT64_MAX;
            timer_start(m->loop, &e->timer, 0);
        }
    }
    pthread_mutex_unlock(&m->mu);
    for (e = gone; e; e = next) {
        next = e->dirty_next;
        if (e->fetching)
            e->orphan = true; /* freed when its fetch completes */
        else
            entry_free(e);
    }
}

static void *mgr_main(void *arg)
{
    struct identity_mgr *m = arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL); /* signals belong to the program's main loop */
    loop_run(m->loop);
    return NULL;
}

struct identity_mgr *identity_mgr_new(struct cert_provider *prov, char *err, size_t errlen)
{
    struct identity_mgr *m = calloc(1, sizeof(*m));
    if (!m) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    m->prov = prov;
    m->wake.fd = -1;
    pthread_mutex_init(&m->mu, NULL);
    m->loop = loop_new();
    if (!m->loop) {
        snprintf(err, errlen, "cannot create the identity manager's loop");
        goto fail;
    }
    m->wake = (struct io){.fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC), .cb = wake_cb};
    int rc = m->wake.fd < 0 ? -errno : loop_io_add(m->loop, &m->wake, EPOLLIN);
    if (rc < 0) {
        snprintf(err, errlen, "identity manager eventfd: %s", strerror(-rc));
        goto fail;
    }
    m->clock_offset_ms = clock_ms(CLOCK_REALTIME) - clock_ms(CLOCK_MONOTONIC);
    m->clock_timer.cb = clock_check_cb;
    timer_start(m->loop, &m->clock_timer, IDENTITY_CLOCK_CHECK_MS);
    if ((rc = pthread_create(&m->thread, NULL, mgr_main, m)) != 0) {
        snprintf(err, errlen, "cannot start the identity manager thread: %s", strerror(rc));
        goto fail;
    }
    m->thread_started = true;
    return m;
fail:
    identity_mgr_free(m);
    return NULL;
}

void identity_mgr_stop(struct identity_mgr *m)
{
    if (!m || !m->thread_started) return;
    pthread_mutex_lock(&m->mu);
    m->stop = true;
    pthread_mutex_unlock(&m->mu);
    poke(m);
    pthread_join(m->thread, NULL); /* waits for a synchronous fetch in progress */
    m->thread_started = false;
}

void identity_mgr_free(struct identity_mgr *m)
{
    if (!m) return;
    identity_mgr_stop(m);
    for (size_t b = 0; b < IDENTITY_BUCKETS; b++) {
        struct id_entry *e = m->buckets[b], *next;
        for (; e; e = next) {
            next = e->hnext;
            entry_free(e);
        }
    }
    if (m->loop) loop_free(m->loop);
    if (m->wake.fd >= 0) close(m->wake.fd);
    pthread_mutex_destroy(&m->mu);
    free(m);
}

struct identity_sub *identity_mgr_acquire(struct identity_mgr *m, const struct spiffe_id *id,
                                          identity_watch_fn cb, void *ud)
{
    char uri[SPIFFE_MAX];
    bool created = false;
    if (spiffe_format(id, uri, sizeof(uri)) < 0) return NULL;
    struct identity_sub *s = calloc(1, sizeof(*s));
    if (!s) return NULL;
    s->cb = cb;
    s->ud = ud;
    uint32_t h = uri_hash(uri);
    pthread_mutex_lock(&m->mu);
    struct id_entry *e = entry_find(m, uri, h);
    if (!e) {
        if (!(e = calloc(1, sizeof(*e)))) {
            pthread_mutex_unlock(&m->mu);
            free(s);
            return NULL;
        }
        e->m = m;
        e->id = *id;
        memcpy(e->uri, uri, sizeof(uri));
        e->hash = h;
        e->state = IDENTITY_INITIALIZING;
        e->timer.cb = entry_timer_cb;
        e->hnext = m->buckets[h % IDENTITY_BUCKETS];
        m->buckets[h % IDENTITY_BUCKETS] = e;
        m->count++;
        entry_mark_dirty(m, e); /* the manager thread starts the first fetch */
        created = true;
    }
    s->e = e;
    s->next = e->subs;
    if (e->subs) e->subs->prev = s;
    e->subs = s;
    e->users++;
    if (e->cur) cb(ud, e->cur);
    pthread_mutex_unlock(&m->mu);
    if (created) poke(m);
    return s;
}

void identity_mgr_release(struct identity_mgr *m, struct identity_sub *s)
{
    if (!s) return;
    struct id_entry *e = s->e;
    bool last;
    pthread_mutex_lock(&m->mu);
    if (s->prev)
        s->prev->next = s->next;
    else
        e->subs = s->next;
    if (s->next) s->next->prev = s->prev;
    last = --e->users == 0;
    if (last) entry_mark_dirty(m, e);
    pthread_mutex_unlock(&m->mu);
    free(s);
    if (last) poke(m);
}

struct identity *identity_mgr_current(struct identity_mgr *m, const struct spiffe_id *id)
{
    char uri[SPIFFE_MAX];
    struct identity *cur = NULL;
    if (spiffe_format(id, uri, sizeof(uri)) < 0) return NULL;
    pthread_mutex_lock(&m->mu);
    struct id_entry *e = entry_find(m, uri, uri_hash(uri));
    if (e && e->users && e->cur) {
        cur = e->cur;
        identity_ref(cur);
    }
    pthread_mutex_unlock(&m->mu);
    return cur;
}

static int status_cmp(const void *a, const void *b)
{
    return strcmp(((const struct identity_status *)a)->uri, ((const struct identity_status *)b)->uri);
}

int identity_mgr_status(struct identity_mgr *m, struct identity_status **out)
{
    struct identity_status *st = NULL;
    size_t n = 0;
    *out = NULL;
    pthread_mutex_lock(&m->mu);
    if (m->count && !(st = calloc(m->count, sizeof(*st)))) {
        pthread_mutex_unlock(&m->mu);
        return -ENOMEM;
    }
    for (size_t b = 0; b < IDENTITY_BUCKETS; b++)
        for (struct id_entry *e = m->buckets[b]; e; e = e->hnext) {
            if (!e->users) continue; /* being forgotten */
            struct identity_status *s = &st[n++];
            memcpy(s->uri, e->uri, sizeof(s->uri));
            s->state = e->state;
            s->fetches = e->fetches;
            snprintf(s->error, sizeof(s->error), "%s", e->error);
            if (e->cur) {
                identity_ref(e->cur);
                s->cur = e->cur;
            }
        }
    pthread_mutex_unlock(&m->mu);
    if (n) qsort(st, n, sizeof(*st), status_cmp);
    if (!n) {
        free(st);
        st = NULL;
    }
    *out = st;
    return (int)n;
}

void identity_status_free(struct identity_status *s, size_t n)
{
    if (!s) return;
    for (size_t i = 0; i < n; i++)
        identity_unref(s[i].cur);
    free(s);
}
