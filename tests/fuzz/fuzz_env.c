/* libFuzzer target for duration_parse_ms (src/core/env.h), the one parser of every duration setting.
 * Built and run by `make fuzz` (seeds: tests/fuzz/corpus/fuzz_env/). Besides memory safety (the input is
 * copied into a heap buffer of exactly its length plus the NUL, so ASan checks every read) it checks the
 * parser's contract (duration_str's syntax, as Istio's ztunnel reads durations):
 *   - it returns 0, -EINVAL or -ERANGE, and leaves *ms untouched on failure;
 *   - an accepted text holds only digits, '+', '*', blanks and unit letters (ASCII letters, plus the two
 *     bytes of "µ"), at least one digit, and no '.' (duration_str has no fractions);
 *   - blanks around the text change nothing, accepted or not, and a leading "0s + " term changes nothing
 *     for an accepted sum (a product cannot be mixed with '+');
 *   - the value round-trips: "<v>ms" (and "<v/1000>s" when whole seconds) parse back to v;
 *   - a single term "<int><unit>" is exact: floor(int * unit) in milliseconds, computed here with integers
 *     (sub-millisecond remainders round down, nothing else is lost). */
#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/env.h"

/* Values above this go through doubles inexactly in any parser that sums floating terms, and a formatted
 * value this large is not a meaningful setting, so the round-trip and exactness checks stop here. */
#define EXACT_LIMIT_MS (1ull << 50)
#define SENTINEL 0xdeadbeefcafef00dull
/* Longest integer part the exactness check handles without overflowing its own arithmetic. */
#define EXACT_MAX_INT_DIGITS 12

/* Units and their length in nanoseconds, as documented in env.h (duration_str 0.21's TimeUnit). */
static const struct {
    const char *name;
    uint64_t ns;
} units[] = {
    {"ns", 1ull},
    {"nsec", 1ull},
    {"us", 1000ull},
    {"usec", 1000ull},
    {"\xc2\xb5s", 1000ull},
    {"ms", 1000000ull},
    {"msec", 1000000ull},
    {"s", 1000000000ull},
    {"sec", 1000000000ull},
    {"m", 60000000000ull},
    {"min", 60000000000ull},
    {"h", 3600000000000ull},
    {"hr", 3600000000000ull},
    {"d", 86400000000000ull},
    {"w", 604800000000000ull},
    {"mon", 2592000000000000ull},
    {"y", 31536000000000000ull},
    {"", 1000000000ull}, /* a bare number is seconds */
};

static int parse(const char *s, uint64_t *ms)
{
    *ms = SENTINEL;
    int rc = duration_parse_ms(s, ms);
    if (rc != 0 && rc != -EINVAL && rc != -ERANGE) abort();
    if (rc != 0 && *ms != SENTINEL) abort();
    return rc;
}

static int byte_allowed(unsigned char c)
{
    return (c >= '0' && c <= '9') || c == '+' || c == '*' || c == ' ' || c == '\t' || c == '\n' ||
           c == '\r' || c == 0xc2 || c == 0xb5 || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* Returns a malloc'd "<pre><s><post>" (caller frees). */
static char *wrap(const char *pre, const char *s, const char *post)
{
    size_t n = strlen(pre) + strlen(s) + strlen(post) + 1;
    char *out = malloc(n);
    if (!out) abort();
    snprintf(out, n, "%s%s%s", pre, s, post);
    return out;
}

static void check_same(const char *text, int rc, uint64_t v)
{
    uint64_t again;
    int rc2 = parse(text, &again);
    if (rc2 != rc || (rc == 0 && again != v)) abort();
}

/* When s is exactly <digits><unit>, returns 1 and the exact value in *want (floor, in ms). */
static int exact_single_term(const char *s, uint64_t *want)
{
    const char *p = s;
    uint64_t ip = 0;
    size_t ni = 0;
    while (*p >= '0' && *p <= '9') {
        if (++ni > EXACT_MAX_INT_DIGITS) return 0;
        ip = ip * 10 + (uint64_t)(*p++ - '0');
    }
    if (!ni) return 0;
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (strcmp(p, units[i].name) != 0) continue;
        /* ip * ns / 1e6 in 128-bit integers: ip < 1e12, ns < 1e17. */
        unsigned __int128 q = (unsigned __int128)ip * units[i].ns / 1000000u;
        if (q >= EXACT_LIMIT_MS) return 0;
        *want = (uint64_t)q;
        return 1;
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (!s) abort();
    memcpy(s, data, size);
    s[size] = '\0';

    uint64_t v;
    int rc = parse(s, &v);

    /* Context never changes the verdict: blanks around any text; a zero term in front of an accepted sum (a
     * rejected text may become valid after "0s + ", e.g. one that is only blanks, so only accepted ones; a
     * product would mix '*' with '+'). */
    char *padded = wrap(" \t", s, "\t ");
    char *zero = wrap("0s + ", s, "");
    check_same(padded, rc, v);
    if (rc == 0 && !strchr(s, '*')) check_same(zero, rc, v);
    free(padded);
    free(zero);

    if (rc == 0) {
        int digits = 0;
        for (size_t i = 0; s[i]; i++) {
            if (!byte_allowed((unsigned char)s[i]) || s[i] == '.') abort();
            digits += s[i] >= '0' && s[i] <= '9';
        }
        if (!digits) abort();

        if (v < EXACT_LIMIT_MS) {
            char text[64];
            snprintf(text, sizeof(text), "%" PRIu64 "ms", v);
            check_same(text, 0, v);
            if (v % 1000 == 0) {
                snprintf(text, sizeof(text), "%" PRIu64 "s", v / 1000);
                check_same(text, 0, v);
            }
        }
        uint64_t want;
        if (exact_single_term(s, &want) && want != v) {
            fprintf(stderr, "duration \"%s\" parsed as %" PRIu64 " ms, exact value %" PRIu64 " ms\n", s, v,
                    want);
            abort();
        }
    }
    free(s);
    return 0;
}
