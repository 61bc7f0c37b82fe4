/* Leveled logging on stderr in Istio ztunnel's layouts (src/telemetry.rs in istio/ztunnel): text
 *   <RFC 3339 UTC, µs>\t<level>\t<target>\t<message>\t<k=v k=v ...>
 * or JSON (LOG_FORMAT=json) {"level":..,"time":..,"scope":<target>,"message":..,<fields>}, filtered per
 * target with RUST_LOG's syntax (tracing-subscriber's Targets: "info,access=off,ztunnel::proxy=debug"). */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdint.h>

enum log_level { LOG_OFF = -1, LOG_ERROR = 0, LOG_WARN, LOG_INFO, LOG_DEBUG, LOG_TRACE };

/* The most verbose level any target is enabled at: a cheap first test before the per-target one. */
extern int log_level_max;

/* Limits of a filter: directives and the length of a target in one. */
#define LOG_MAX_DIRECTIVES 32
#define LOG_TARGET_MAX 128
/* Room needed by log_filter_str for the longest filter. */
#define LOG_FILTER_STR_MAX (LOG_MAX_DIRECTIVES * (LOG_TARGET_MAX + 8))

/* Sets the start-up filter (the one POST /logging?reset returns to) and the output format. spec NULL or ""
 * means "info". Returns 0 or -EINVAL (nothing changed; see log_filter_check). */
int log_init(const char *spec, bool json);
/* Checks a RUST_LOG spec: comma-separated "level", "target=level" or a bare "target" (= trace for it), levels
 * off|error|warn|info|debug|trace (any case) or 0..5. Returns 0, or -EINVAL with the reason in why. Sets
 * *bare_target (may be NULL) when a word that is not a level was read as a target name. */
int log_filter_check(const char *spec, bool *bare_target, char *why, size_t whylen);
/* Replaces the filter with spec (later directives for the same target win). Returns 0 or -EINVAL. */
int log_filter_set(const char *spec);
/* Istio's telemetry::set_level: the current filter (or, with reset, the start-up one) followed by spec (may
 * be
 * "" with reset). Returns 0 or -EINVAL (nothing changed). Thread-safe. */
int log_filter_update(bool reset, const char *spec);
/* Writes the current filter as tracing-subscriber prints it (most specific first, default last, e.g.
 * "access=off,info"; "off" when nothing is enabled) into buf (NUL-terminated, truncated to n). */
void log_filter_str(char *buf, size_t n);
/* The level target is enabled at (LOG_OFF..LOG_TRACE): the directive with the longest target that is a prefix
 * of target, else the default. target must have static storage (a literal): levels are cached per thread by
 * its address until the filter changes. */
int log_target_level(const char *target);
/* Compatibility name for log_filter_set. */
int log_set_level(const char *spec);
const char *log_level_name(int level);
/* True when some target logs at level (the per-target test follows in the log_* functions). */
static inline bool log_enabled(int level)
{
    return level <= log_level_max;
}
/* True when target logs at level. */
static inline bool log_target_enabled(int level, const char *target)
{
    return level <= log_level_max && level <= log_target_level(target);
}

/* Writes one line: message plus key/value fields (pairs of const char *, ended by NULL). As in tracing, a key
 * written "%name" is a Display value (text: unquoted), any other string value is quoted and escaped like
 * Rust's Debug, and all-digit values are numbers (unquoted; JSON numbers). NULL values are written "". */
void log_kv(int level, const char *target, const char *msg, ...) __attribute__((sentinel));
/* Same with an array of n key/value pairs (kv[2i], kv[2i+1]); NULL values are skipped. */
void log_kvv(int level, const char *target, const char *msg, const char *const *kv, size_t n);
/* printf-style message without fields. */
void log_fmt(int level, const char *target, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Rate limit for log lines an outside party can trigger (accept errors, protocol errors, resets): at most
 * LOG_LIMIT_BURST lines per LOG_LIMIT_INTERVAL_MS per limiter; the rest are counted, and the first line of
 * the next interval says how many were suppressed. One static limiter per call site; thread-safe. */
#define LOG_LIMIT_INTERVAL_MS 10000
#define LOG_LIMIT_BURST 5
struct log_limit {
    _Atomic uint64_t window; /* start of the current interval, monotonic ms */
    _Atomic uint32_t used;   /* lines written in it */
    _Atomic uint64_t suppressed;
};
/* True when a line may be written now; then *suppressed is the number of lines dropped since the last one
 * written (0 if none), to be reported in that line. */
bool log_limit_allow(struct log_limit *l, uint64_t *suppressed);
/* log_limit_allow with the monotonic time given (ms), for tests. */
bool log_limit_allow_at(struct log_limit *l, uint64_t now_ms, uint64_t *suppressed);
/* A rate-limited log_fmt: writes the line with " (N more suppressed)" appended when lines were dropped. */
void log_fmt_limited(struct log_limit *l, int level, const char *target, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
#define LOG_LIMITED(lvl, target, ...)                                                                        \
    do {                                                                                                     \
        static struct log_limit lim_;                                                                        \
        if (log_target_enabled(lvl, target)) log_fmt_limited(&lim_, lvl, target, __VA_ARGS__);               \
    } while (0)

#define LOGF(lvl, target, ...)                                                                               \
    do {                                                                                                     \
        if (log_target_enabled(lvl, target)) log_fmt(lvl, target, __VA_ARGS__);                              \
    } while (0)
#define LOG_E(t, ...) LOGF(LOG_ERROR, t, __VA_ARGS__)
#define LOG_W(t, ...) LOGF(LOG_WARN, t, __VA_ARGS__)
#define LOG_I(t, ...) LOGF(LOG_INFO, t, __VA_ARGS__)
#define LOG_D(t, ...) LOGF(LOG_DEBUG, t, __VA_ARGS__)
