/* Leveled logging to stderr. One formatted line per call, written with a single write() so lines from
 * several worker threads never interleave. Layouts and filter syntax follow Istio's ztunnel (src/telemetry.rs
 * in istio/ztunnel) and tracing-subscriber's Targets filter (filter/targets.rs, filter/directive.rs). */
#include "core/log.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

int log_level_max = LOG_INFO;
static bool log_json;

static const char *const level_names[] = {"error", "warn", "info", "debug", "trace"};

const char *log_level_name(int level)
{
    if (level == LOG_OFF) return "off";
    return level >= 0 && level <= LOG_TRACE ? level_names[level] : "info";
}

/* ---- the filter ---- */

struct directive {
    char target[LOG_TARGET_MAX]; /* "" for the default directive */
    int level;                   /* LOG_OFF..LOG_TRACE */
};

struct filter {
    struct directive d[LOG_MAX_DIRECTIVES]; /* most specific first (longest target), the default last */
    int n;
};

static pthread_mutex_t filter_mu = PTHREAD_MUTEX_INITIALIZER;
static struct filter cur = {.d = {{"", LOG_INFO}}, .n = 1}, startup = {.d = {{"", LOG_INFO}}, .n = 1};
/* Bumped on every change (under filter_mu); per-thread caches of target levels compare against it. Starts at
 * 1 so that a zeroed cache entry never matches. */
static _Atomic uint64_t filter_gen = 1;

/* tracing-core's LevelFilter::from_str: 0..5, or a name in any case; -2 when not a level. */
static int level_parse(const char *s, size_t n)
{
    if (n == 1 && s[0] >= '0' && s[0] <= '5') return s[0] - '0' - 1;
    if (n == 3 && !strncasecmp(s, "off", 3)) return LOG_OFF;
    for (int i = 0; i <= LOG_TRACE; i++)
        if (strlen(level_names[i]) == n && !strncasecmp(s, level_names[i], n)) return i;
    return -2;
}

/* tracing-subscriber orders directives most specific first: with a target before without, longer targets
 * first, then (to be total) reverse lexicographic. */
static int directive_cmp(const struct directive *a, const struct directive *b)
{
    size_t la = strlen(a->target), lb = strlen(b->target);
    if (la != lb) return la > lb ? -1 : 1;
    return -strcmp(a->target, b->target);
}

/* Adds d to f, replacing a directive for the same target (DirectiveSet::add). */
static int filter_add(struct filter *f, const struct directive *d)
{
    int i = 0;
    while (i < f->n && directive_cmp(&f->d[i], d) < 0)
        i++;
    if (i < f->n && !strcmp(f->d[i].target, d->target)) {
        f->d[i].level = d->level;
        return 0;
    }
    if (f->n == LOG_MAX_DIRECTIVES) return -E2BIG;
    memmove(&f->d[i + 1], &f->d[i], (size_t)(f->n - i) * sizeof(f->d[0]));
    f->d[i] = *d;
    f->n++;
    return 0;
}

/* Parses spec into f (which may already hold directives). */
static int filter_parse(struct filter *f, const char *spec, bool *bare, char *why, size_t whylen)
{
    const char *p = spec;
    char dummy[1];
    if (!why) why = dummy, whylen = sizeof(dummy);
    if (bare) *bare = false;
    for (;;) {
        size_t n = strcspn(p, ",");
        const char *eq = memchr(p, '=', n);
        struct directive d = {.level = LOG_TRACE};
        if (n == 0) {
            /* tracing reads an empty directive as "error" for everything, which "info," surely does not
             * mean: refuse it instead of silently lowering the level. */
            snprintf(why, whylen, "empty directive");
            return -EINVAL;
        }
        if (eq) {
            size_t tn = (size_t)(eq - p);
            if (memchr(eq + 1, '=', n - tn - 1)) {
                snprintf(why, whylen, "too many '=' in \"%.*s\"", (int)n, p);
                return -EINVAL;
            }
            if (memchr(p, '[', tn)) {
                snprintf(why, whylen, "field filters are not supported: \"%.*s\"", (int)n, p);
                return -EINVAL;
            }
            if (tn >= LOG_TARGET_MAX) {
                snprintf(why, whylen, "target longer than %d bytes", LOG_TARGET_MAX - 1);
                return -EINVAL;
            }
            memcpy(d.target, p, tn);
            d.target[tn] = 0;
            /* tracing reads an empty level ("target=") as error. */
            d.level = n - tn - 1 == 0 ? LOG_ERROR : level_parse(eq + 1, n - tn - 1);
            if (d.level == -2) {
                snprintf(why, whylen,
                         "unknown level \"%.*s\" (expected off, error, warn, info, debug or trace)",
                         (int)(n - tn - 1), eq + 1);
                return -EINVAL;
            }
        } else if ((d.level = level_parse(p, n)) == -2) {
            /* A bare word that is not a level names a target, enabled at trace (tracing's rule). */
            if (n >= LOG_TARGET_MAX) {
                snprintf(why, whylen, "target longer than %d bytes", LOG_TARGET_MAX - 1);
                return -EINVAL;
            }
            memcpy(d.target, p, n);
            d.target[n] = 0;
            d.level = LOG_TRACE;
            if (bare) *bare = true;
        }
        if (filter_add(f, &d) < 0) {
            snprintf(why, whylen, "more than %d directives", LOG_MAX_DIRECTIVES);
            return -EINVAL;
        }
        if (!p[n]) return 0;
        p += n + 1;
    }
}

static int filter_level(const struct filter *f, const char *target)
{
    for (int i = 0; i < f->n; i++) {
        size_t tn = strlen(f->d[i].target);
        if (!strncmp(target, f->d[i].target, tn)) return f->d[i].level;
    }
    return LOG_OFF; /* no default directive: everything else is off, as in tracing */
}

/* Installs f as the current filter. Caller holds filter_mu. */
static void filter_install(const struct filter *f)
{
    int max = LOG_OFF;
    cur = *f;
    for (int i = 0; i < f->n; i++)
        if (f->d[i].level > max) max = f->d[i].level;
    /* Raise log_level_max before the generation moves, so no enabled line is skipped by the fast test. */
    __atomic_store_n(&log_level_max, max, __ATOMIC_RELEASE);
    atomic_fetch_add_explicit(&filter_gen, 1, memory_order_release);
}

int log_filter_check(const char *spec, bool *bare_target, char *why, size_t whylen)
{
    struct filter f = {.n = 0};
    if (!spec) return -EINVAL;
    return filter_parse(&f, spec, bare_target, why, whylen);
}

int log_filter_set(const char *spec)
{
    struct filter f = {.n = 0};
    if (!spec || filter_parse(&f, spec, NULL, NULL, 0) < 0) return -EINVAL;
    pthread_mutex_lock(&filter_mu);
    filter_install(&f);
    pthread_mutex_unlock(&filter_mu);
    return 0;
}

int log_set_level(const char *spec)
{
    return log_filter_set(spec);
}

int log_filter_update(bool reset, const char *spec)
{
    int rc = 0;
    pthread_mutex_lock(&filter_mu);
    struct filter f = reset ? startup : cur;
    if (spec && *spec) rc = filter_parse(&f, spec, NULL, NULL, 0);
    if (rc == 0) filter_install(&f);
    pthread_mutex_unlock(&filter_mu);
    return rc < 0 ? -EINVAL : 0;
}

void log_filter_str(char *buf, size_t n)
{
    size_t w = 0;
    if (!n) return;
    buf[0] = 0;
    pthread_mutex_lock(&filter_mu);
    for (int i = 0; i < cur.n && w < n; i++) {
        const struct directive *d = &cur.d[i];
        w += (size_t)snprintf(buf + w, n - w, "%s%s%s%s", i ? "," : "", d->target, *d->target ? "=" : "",
                              log_level_name(d->level));
    }
    if (cur.n == 0) snprintf(buf, n, "off");
    pthread_mutex_unlock(&filter_mu);
}

/* Per-thread cache of target levels, direct-mapped by the target's address. */
#define TCACHE_SIZE 64
struct tcache_entry {
    const char *target;
    uint64_t gen;
    int level;
};
static __thread struct tcache_entry tcache[TCACHE_SIZE];

int log_target_level(const char *target)
{
    uint64_t gen = atomic_load_explicit(&filter_gen, memory_order_acquire);
    struct tcache_entry *e = &tcache[((uintptr_t)target >> 3) % TCACHE_SIZE];
    if (e->target == target && e->gen == gen) return e->level;
    pthread_mutex_lock(&filter_mu);
    int level = filter_level(&cur, target);
    pthread_mutex_unlock(&filter_mu);
    /* A change between the load of gen and the lock leaves an entry with the old gen: recomputed next time.
     */
    *e = (struct tcache_entry){.target = target, .gen = gen, .level = level};
    return level;
}

int log_init(const char *spec, bool json)
{
    struct filter f = {.n = 0};
    if (!spec || !*spec) spec = "info";
    if (filter_parse(&f, spec, NULL, NULL, 0) < 0) return -EINVAL;
    pthread_mutex_lock(&filter_mu);
    startup = f;
    filter_install(&f);
    pthread_mutex_unlock(&filter_mu);
    log_json = json;
    return 0;
}

/* ---- formatting ---- */

struct line {
    char buf[4096];
    size_t len;
    bool truncated;
};

/* Room kept at the end of a line for the closing characters ("}" and newline), so a truncated line is
 * still well-formed. */
#define LINE_RESERVE 8

static void put(struct line *l, const char *s, size_t n)
{
    size_t room = sizeof(l->buf) - LINE_RESERVE - l->len;
    if (n > room) {
        n = room;
        l->truncated = true;
    }
    memcpy(l->buf + l->len, s, n);
    l->len += n;
}

static void puts_(struct line *l, const char *s)
{
    put(l, s, strlen(s));
}

/* Copies one UTF-8 character starting at s (lead byte c >= 0xc0) whole or not at all. Returns its length. */
static size_t put_utf8(struct line *l, const char *s, unsigned char c)
{
    size_t n = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2;
    size_t have = strnlen(s, n);
    if (have < n) n = have;
    if (l->len + n > sizeof(l->buf) - LINE_RESERVE - 4) {
        l->truncated = true;
        return n;
    }
    put(l, s, n);
    return n;
}

/* Escapes s. JSON: serde_json's escapes (\" \\ \b \f \n \r \t, \u00XX for other controls). Text: Rust's
 * Debug for str (\" \\ \t \r \n \0, \u{X} for other controls), without the quote and backslash escapes
 * when only control characters must not break the line (messages, Display values). Whole escapes only: a
 * line cut short never ends inside an escape sequence or a UTF-8 character. */
enum esc { ESC_JSON, ESC_DEBUG, ESC_CONTROL };

static void put_escaped(struct line *l, const char *s, enum esc mode)
{
    for (; *s && !l->truncated; s++) {
        unsigned char c = (unsigned char)*s;
        char e[12];
        size_t n = 0;
        if (c >= 0xc0) {
            s += put_utf8(l, s, c) - 1;
            continue;
        }
        if ((c == '"' || c == '\\') && mode != ESC_CONTROL) {
            e[0] = '\\';
            e[1] = (char)c;
            n = 2;
        } else if (c < 0x20 || (c == 0x7f && mode != ESC_JSON)) {
            const char *short_esc = NULL;
            switch (c) {
            case '\n':
                short_esc = "\\n";
                break;
            case '\r':
                short_esc = "\\r";
                break;
            case '\t':
                short_esc = "\\t";
                break;
            case '\b':
                short_esc = mode == ESC_JSON ? "\\b" : NULL;
                break;
            case '\f':
                short_esc = mode == ESC_JSON ? "\\f" : NULL;
                break;
            case 0:
                break;
            }
            if (short_esc)
                n = (size_t)snprintf(e, sizeof(e), "%s", short_esc);
            else if (mode == ESC_JSON)
                n = (size_t)snprintf(e, sizeof(e), "\\u%04x", c);
            else
                n = (size_t)snprintf(e, sizeof(e), "\\u{%x}", c);
        } else {
            e[0] = (char)c;
            n = 1;
        }
        /* Keep room for the closing quote and brace. */
        if (l->len + n > sizeof(l->buf) - LINE_RESERVE - 4) {
            l->truncated = true;
            return;
        }
        put(l, e, n);
    }
}

/* "true" and "false" are written bare, as tracing writes a bool (JSON: true/false). */
static bool is_bool(const char *s)
{
    return !strcmp(s, "true") || !strcmp(s, "false");
}

static bool is_number(const char *s)
{
    /* JSON numbers have no leading zeros: "007" stays a string. */
    if (!*s || (s[0] == '0' && s[1])) return false;
    for (const char *p = s; *p; p++)
        if (*p < '0' || *p > '9') return false;
    return strlen(s) < 19;
}

/* The prefix ztunnel's text layout strips from targets ("No need to prefix everything"). */
#define TEXT_TARGET_STRIP "ztunnel::"

static void begin(struct line *l, int level, const char *target, const char *msg)
{
    struct timespec ts;
    struct tm tm;
    char tbuf[48];
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(tbuf, sizeof(tbuf), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(tbuf + n, sizeof(tbuf) - n, ".%06ldZ", ts.tv_nsec / 1000);
    l->len = 0;
    l->truncated = false;
    if (log_json) {
        puts_(l, "{\"level\":\"");
        puts_(l, log_level_name(level));
        puts_(l, "\",\"time\":\"");
        puts_(l, tbuf);
        puts_(l, "\",\"scope\":\"");
        put_escaped(l, target, ESC_JSON);
        puts_(l, "\",\"message\":\"");
        put_escaped(l, msg, ESC_JSON);
        puts_(l, "\"");
    } else {
        size_t sn = strlen(TEXT_TARGET_STRIP);
        if (!strncmp(target, TEXT_TARGET_STRIP, sn)) target += sn;
        puts_(l, tbuf);
        puts_(l, "\t");
        puts_(l, log_level_name(level));
        puts_(l, "\t");
        put_escaped(l, target, ESC_CONTROL);
        puts_(l, "\t");
        put_escaped(l, msg, ESC_CONTROL);
        puts_(l, "\t"); /* tracing writes the message, then a tab before the fields */
    }
}

static void field(struct line *l, const char *k, const char *v, bool *first)
{
    size_t before = l->len;
    bool display = *k == '%';
    if (l->truncated) return;
    if (display) k++;
    if (log_json) {
        puts_(l, ",\"");
        put_escaped(l, k, ESC_JSON);
        puts_(l, "\":");
        if (!display && (is_number(v) || is_bool(v))) {
            puts_(l, v);
        } else {
            puts_(l, "\"");
            put_escaped(l, v, ESC_JSON);
            puts_(l, "\"");
        }
    } else {
        if (!*first) puts_(l, " ");
        put_escaped(l, k, ESC_CONTROL);
        puts_(l, "=");
        if (display || is_number(v) || is_bool(v)) {
            put_escaped(l, v, ESC_CONTROL);
        } else {
            puts_(l, "\"");
            put_escaped(l, v, ESC_DEBUG);
            puts_(l, "\"");
        }
    }
    /* A field that does not fit is dropped whole, so the line stays well-formed. */
    if (l->truncated)
        l->len = before;
    else
        *first = false;
}

static void finish(struct line *l)
{
    /* put() keeps LINE_RESERVE bytes free, so the closing characters always fit. */
    if (log_json) l->buf[l->len++] = '}';
    l->buf[l->len++] = '\n';
    ssize_t w = write(STDERR_FILENO, l->buf, l->len);
    (void)w;
}

void log_kv(int level, const char *target, const char *msg, ...)
{
    struct line l;
    va_list ap;
    bool first = true;
    if (!log_target_enabled(level, target)) return;
    begin(&l, level, target, msg);
    va_start(ap, msg);
    for (;;) {
        const char *k = va_arg(ap, const char *);
        if (!k) break;
        const char *v = va_arg(ap, const char *);
        field(&l, k, v ? v : "", &first);
    }
    va_end(ap);
    finish(&l);
}

void log_kvv(int level, const char *target, const char *msg, const char *const *kv, size_t n)
{
    struct line l;
    bool first = true;
    if (!log_target_enabled(level, target)) return;
    begin(&l, level, target, msg);
    for (size_t i = 0; i < n; i++)
        if (kv[2 * i + 1]) field(&l, kv[2 * i], kv[2 * i + 1], &first);
    finish(&l);
}

static void vlog(int level, const char *target, const char *suffix, const char *fmt, va_list ap)
{
    struct line l;
    char msg[2048];
    int n = vsnprintf(msg, sizeof(msg), fmt, ap);
    if (suffix && n >= 0 && (size_t)n < sizeof(msg)) snprintf(msg + n, sizeof(msg) - (size_t)n, "%s", suffix);
    begin(&l, level, target, msg);
    finish(&l);
}

void log_fmt(int level, const char *target, const char *fmt, ...)
{
    va_list ap;
    if (!log_target_enabled(level, target)) return;
    va_start(ap, fmt);
    vlog(level, target, NULL, fmt, ap);
    va_end(ap);
}

/* ---- rate limiting ---- */

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

bool log_limit_allow_at(struct log_limit *l, uint64_t now, uint64_t *suppressed)
{
    uint64_t start = atomic_load_explicit(&l->window, memory_order_relaxed);
    /* now + 1 so that the first interval starts at a non-zero time even right after boot. */
    if (start == 0 || now + 1 >= start + LOG_LIMIT_INTERVAL_MS) {
        if (atomic_compare_exchange_strong(&l->window, &start, now + 1)) atomic_store(&l->used, 0);
    }
    if (atomic_fetch_add(&l->used, 1) >= LOG_LIMIT_BURST) {
        atomic_fetch_add_explicit(&l->suppressed, 1, memory_order_relaxed);
        return false;
    }
    *suppressed = atomic_exchange(&l->suppressed, 0);
    return true;
}

bool log_limit_allow(struct log_limit *l, uint64_t *suppressed)
{
    return log_limit_allow_at(l, mono_ms(), suppressed);
}

void log_fmt_limited(struct log_limit *l, int level, const char *target, const char *fmt, ...)
{
    uint64_t dropped;
    char suffix[48] = "";
    va_list ap;
    if (!log_target_enabled(level, target) || !log_limit_allow(l, &dropped)) return;
    if (dropped) snprintf(suffix, sizeof(suffix), " (%llu more suppressed)", (unsigned long long)dropped);
    va_start(ap, fmt);
    vlog(level, target, suffix, fmt, ap);
    va_end(ap);
}
