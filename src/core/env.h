/* Environment settings read the way Istio's ztunnel reads them (src/config.rs in istio/ztunnel): values
 * parsed with Rust's FromStr rules, durations through the duration_str crate (0.21). One duration parser and
 * one table walker for every program; each program keeps its own table (ztunnel: src/ztunnel/settings.c). */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Largest duration duration_str accepts: u64 nanoseconds (about 584 years). */
#define DURATION_MAX_NS UINT64_MAX

/* Parses a duration in duration_str's syntax into milliseconds. Terms are <integer>[<unit>] with optional
 * whitespace, joined by nothing or '+' (a sum: "1m30s", "1m 30s", "1m+30") or all by '*' (a product in
 * seconds: "1m*2" = 120 s); mixing '+' and '*' is refused. A bare number is seconds. Units (any case): y,
 * mon, w, d, h/hr, m/min, s/sec, ms/msec, us/µs/usec, ns/nsec, and their long names (hour, minutes, ...). No
 * fractions ("1.5s" is refused, as in Istio). Sub-millisecond remainders round down ("1500us" = 1 ms).
 * Returns 0, or -EINVAL (empty, stray characters, unknown unit, mixed operators) or -ERANGE (overflow). */
int duration_parse_ms(const char *s, uint64_t *ms);

/* Rust's bool::from_str: exactly "true" or "false". Returns 0 or -EINVAL. */
int env_parse_bool(const char *s, bool *out);

/* Rust's integer from_str: an optional sign ('+', or '-' when lo < 0) and decimal digits, nothing else (no
 * whitespace). Returns 0, -EINVAL (not an integer) or -ERANGE (outside lo..hi). */
int env_parse_int(const char *s, int64_t lo, int64_t hi, int64_t *out);

enum env_kind {
    ENV_STRING,      /* const char * borrowed from the environment */
    ENV_BOOL,        /* bool */
    ENV_INT,         /* int64_t within min..max */
    ENV_DURATION,    /* uint64_t milliseconds within min..max (ms) */
    ENV_ENUM,        /* int: the index of the value in choices */
    ENV_CUSTOM,      /* parse() stores the value */
    ENV_UNSUPPORTED, /* an Istio setting this program does not implement yet: one warning when set */
};

/* The name of a kind for --help ("duration", "int", ...). */
const char *env_kind_to_str(enum env_kind k);

/* One setting. The parsed value goes to base + offset (see env_parse_table); the default is applied by the
 * program when the variable is unset (def is its text, shown by --help). */
struct env_setting {
    const char *name;
    enum env_kind kind;
    const char *def;  /* default as the user would write it, or NULL (none / computed: say so in help) */
    const char *help; /* one line: meaning */
    const char *type; /* the value's syntax for --help when not the kind's name (ENV_CUSTOM), or NULL */
    size_t offset;
    bool required;
    int64_t min, max;           /* ENV_INT; ENV_DURATION in ms (max 0 = no maximum) */
    const char *const *choices; /* ENV_ENUM: NULL-terminated */
    /* ENV_CUSTOM: parses v into out; on error returns -errno and writes the reason (without the variable
     * name) into why. */
    int (*parse)(const char *v, void *out, char *why, size_t whylen);
};

/* Where to find a variable: getenv, or a fake environment in tests. Returns NULL when unset. */
typedef const char *(*env_lookup_fn)(const char *name);

/* Messages collected while parsing: one line each, '\n'-terminated, in buf (truncated with "..." when full).
 */
struct env_diag {
    char buf[4096];
    size_t len;
    unsigned n;
};

/* Logs each line of d at level under target (destructive: the lines' newlines become NULs). */
void env_diag_log(struct env_diag *d, int level, const char *target);
/* Appends one printf-formatted line to d. */
void env_diag_add(struct env_diag *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Parses every entry of t[0..n) found by lookup into base + t[i].offset; set[i] (may be NULL) says whether
 * entry i was present. An invalid value adds "invalid env var NAME=value (reason)" to errors, a missing
 * required one "NAME must be set (meaning)", an ENV_UNSUPPORTED one present a line to warnings; every entry
 * is looked at, so all problems are reported at once. Returns 0, or -EINVAL when errors were added. */
int env_parse_table(const struct env_setting *t, size_t n, void *base, env_lookup_fn lookup, bool *set,
                    struct env_diag *errors, struct env_diag *warnings);

/* Writes one block per entry (name, kind, default, meaning; choices for enums) to f, for --help. */
void env_print_help(FILE *f, const struct env_setting *t, size_t n);
