/* Leveled logging, RUST_LOG-style levels, text or JSON (LOG_FORMAT=json) on stderr. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdint.h>

enum log_level { LOG_ERROR = 0, LOG_WARN, LOG_INFO, LOG_DEBUG, LOG_TRACE };

extern int log_level_cur;

/* Reads RUST_LOG (e.g. "info", "debug", "warn") and LOG_FORMAT ("json" or text). */
void log_init(void);
/* Sets the level from a name ("error".."trace", or "target=level,..." where the last level wins).
 * Returns 0 or -EINVAL. */
int log_set_level(const char *spec);
const char *log_level_name(int level);
static inline bool log_enabled(int level)
{
    return level <= log_level_cur;
}
/* Writes one line: message plus key/value fields (pairs of const char *, ended by NULL). */
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
/* A rate-limited log_fmt: writes the line with " (N more suppressed)" appended when lines were dropped. */
void log_fmt_limited(struct log_limit *l, int level, const char *target, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
#define LOG_LIMITED(lvl, target, ...)                                                                        \
    do {                                                                                                     \
        static struct log_limit lim_;                                                                        \
        if (log_enabled(lvl)) log_fmt_limited(&lim_, lvl, target, __VA_ARGS__);                              \
    } while (0)

#define LOGF(lvl, target, ...)                                                                               \
    do {                                                                                                     \
        if (log_enabled(lvl)) log_fmt(lvl, target, __VA_ARGS__);                                             \
    } while (0)
#define LOG_E(t, ...) LOGF(LOG_ERROR, t, __VA_ARGS__)
#define LOG_W(t, ...) LOGF(LOG_WARN, t, __VA_ARGS__)
#define LOG_I(t, ...) LOGF(LOG_INFO, t, __VA_ARGS__)
#define LOG_D(t, ...) LOGF(LOG_DEBUG, t, __VA_ARGS__)
