/* Leveled logging to stderr. One formatted line per call, written with a single write() so lines from
 * several worker threads never interleave. */
#include "core/log.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

int log_level_cur = LOG_INFO;
static bool log_json;

static const char *const level_names[] = {"error", "warn", "info", "debug", "trace"};

const char *log_level_name(int level)
{
    return level >= 0 && level <= LOG_TRACE ? level_names[level] : "info";
}

static int level_from(const char *s, size_t n)
{
    for (int i = 0; i <= LOG_TRACE; i++)
        if (strlen(level_names[i]) == n && strncasecmp(s, level_names[i], n) == 0) return i;
    if (n == 7 && strncasecmp(s, "warning", 7) == 0) return LOG_WARN;
    if (n == 3 && strncasecmp(s, "off", 3) == 0) return -2;
    return -1;
}

int log_set_level(const char *spec)
{
    /* RUST_LOG-style: "info", or "target=level,...". zmesh has one global level: the last level wins. */
    int found = -1;
    const char *p = spec;
    while (p && *p) {
        const char *end = strchr(p, ',');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        const char *eq = memchr(p, '=', n);
        const char *lv = eq ? eq + 1 : p;
        size_t ln = n - (size_t)(lv - p);
        int l = level_from(lv, ln);
        if (l == -1) return -EINVAL;
        found = l == -2 ? LOG_ERROR : l;
        p = end ? end + 1 : NULL;
    }
    if (found < 0) return -EINVAL;
    log_level_cur = found;
    return 0;
}

void log_init(void)
{
    const char *lvl = getenv("RUST_LOG");
    const char *fmt = getenv("LOG_FORMAT");
    if (lvl && *lvl) log_set_level(lvl);
    log_json = fmt && strcasecmp(fmt, "json") == 0;
}

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

/* JSON string body escaping; quotes and control characters only. */
/* JSON string body escaping; quotes and control characters only. Whole escapes only: a line cut short
 * never ends inside an escape sequence or a UTF-8 character. */
static void put_json(struct line *l, const char *s)
{
    for (; *s && !l->truncated; s++) {
        unsigned char c = (unsigned char)*s;
        char e[8];
        size_t n;
        if (c == '"' || c == '\\') {
            e[0] = '\\';
            e[1] = (char)c;
            n = 2;
        } else if (c < 0x20) {
            n = (size_t)snprintf(e, sizeof(e), "\\u%04x", c);
        } else if (c >= 0xc0) {
            /* A UTF-8 lead byte: copy the whole character or nothing. */
            n = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2;
            size_t have = strnlen(s, n);
            if (have < n) n = have;
            if (l->len + n > sizeof(l->buf) - LINE_RESERVE - 4) {
                l->truncated = true;
                return;
            }
            put(l, s, n);
            s += n - 1;
            continue;
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

static bool is_number(const char *s)
{
    /* JSON numbers have no leading zeros: "007" stays a string. */
    if (!*s || (s[0] == '0' && s[1])) return false;
    for (const char *p = s; *p; p++)
        if (*p < '0' || *p > '9') return false;
    return strlen(s) < 19;
}

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
        puts_(l, "\",\"target\":\"");
        put_json(l, target);
        puts_(l, "\",\"message\":\"");
        put_json(l, msg);
        puts_(l, "\"");
    } else {
        char lv[8];
        snprintf(lv, sizeof(lv), "%5s", log_level_name(level));
        for (char *p = lv; *p; p++)
            if (*p >= 'a' && *p <= 'z') *p = (char)(*p - 32);
        puts_(l, tbuf);
        puts_(l, " ");
        puts_(l, lv);
        puts_(l, " ");
        puts_(l, target);
        puts_(l, ": ");
        puts_(l, msg);
    }
}

static void field(struct line *l, const char *k, const char *v)
{
    size_t before = l->len;
    if (l->truncated) return;
    if (log_json) {
        puts_(l, ",\"");
        put_json(l, k);
        puts_(l, "\":");
        if (is_number(v)) {
            puts_(l, v);
        } else {
            puts_(l, "\"");
            put_json(l, v);
            puts_(l, "\"");
        }
    } else {
        puts_(l, " ");
        puts_(l, k);
        puts_(l, "=");
        bool quote = strchr(v, ' ') != NULL || *v == 0;
        if (quote) puts_(l, "\"");
        puts_(l, v);
        if (quote) puts_(l, "\"");
    }
    /* A field that does not fit is dropped whole, so the line stays well-formed. */
    if (l->truncated) l->len = before;
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
    if (!log_enabled(level)) return;
    begin(&l, level, target, msg);
    va_start(ap, msg);
    for (;;) {
        const char *k = va_arg(ap, const char *);
        if (!k) break;
        const char *v = va_arg(ap, const char *);
        field(&l, k, v ? v : "");
    }
    va_end(ap);
    finish(&l);
}

void log_kvv(int level, const char *target, const char *msg, const char *const *kv, size_t n)
{
    struct line l;
    if (!log_enabled(level)) return;
    begin(&l, level, target, msg);
    for (size_t i = 0; i < n; i++)
        if (kv[2 * i + 1]) field(&l, kv[2 * i], kv[2 * i + 1]);
    finish(&l);
}

void log_fmt(int level, const char *target, const char *fmt, ...)
{
    struct line l;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    begin(&l, level, target, msg);
    finish(&l);
}

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

bool log_limit_allow(struct log_limit *l, uint64_t *suppressed)
{
    uint64_t now = mono_ms(), start = atomic_load_explicit(&l->window, memory_order_relaxed);
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

void log_fmt_limited(struct log_limit *l, int level, const char *target, const char *fmt, ...)
{
    uint64_t dropped;
    char msg[2048];
    va_list ap;
    if (!log_enabled(level) || !log_limit_allow(l, &dropped)) return;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (dropped && n >= 0 && (size_t)n < sizeof(msg))
        snprintf(msg + n, sizeof(msg) - (size_t)n, " (%llu more suppressed)", (unsigned long long)dropped);
    struct line ln;
    begin(&ln, level, target, msg);
    finish(&ln);
}
