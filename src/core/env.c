/* Duration parsing for environment settings. */
#include "core/env.h"

#include <ctype.h>
#include <errno.h>
#include <string.h>

struct unit {
    const char *name;
    uint64_t ns; /* nanoseconds per unit */
};

/* Longest names first where one is a prefix of another ("ms" before "m", "min" before "m"). */
static const struct unit units[] = {
    {"msec", 1000000},      {"ms", 1000000},      {"ns", 1},
    {"us", 1000},           {"\xc2\xb5s", 1000},  {"sec", 1000000000},
    {"s", 1000000000},      {"min", 60000000000}, {"m", 60000000000},
    {"hr", 3600000000000},  {"h", 3600000000000}, {"d", 86400000000000},
    {"w", 604800000000000},
};

/* Fraction digits past this many are ignored: they weigh less than 1e-5 ns even for weeks. */
#define DURATION_MAX_FRAC_DIGITS 20
#define NS_PER_MS 1000000u

int duration_parse_ms(const char *s, uint64_t *ms)
{
    /* Integer nanoseconds, each term exact as in Istio's (Rust Duration) parse; doubles would turn "2.01s"
     * into 2009 ms. The largest total that still fits *ms: */
    const unsigned __int128 max_ns = (unsigned __int128)UINT64_MAX * NS_PER_MS + (NS_PER_MS - 1);
    unsigned __int128 total = 0;
    int terms = 0;
    const char *p = s;
    if (!s) return -EINVAL;
    for (;;) {
        while (*p == ' ' || *p == '\t') p++;
        if (!*p) break;
        if (terms && *p == '+') {
            p++;
            while (*p == ' ' || *p == '\t') p++;
        }
        if (!isdigit((unsigned char)*p)) return -EINVAL;
        /* The integer part stops growing once it is too large for any unit (the term then fails below). */
        unsigned __int128 ip = 0, frac = 0, scale = 1;
        for (; isdigit((unsigned char)*p); p++)
            if (ip <= max_ns) ip = ip * 10 + (unsigned)(*p - '0');
        if (*p == '.') {
            if (!isdigit((unsigned char)*++p)) return -EINVAL;
            for (int n = 0; isdigit((unsigned char)*p); p++, n++)
                if (n < DURATION_MAX_FRAC_DIGITS) {
                    frac = frac * 10 + (unsigned)(*p - '0');
                    scale *= 10;
                }
        }
        while (*p == ' ' || *p == '\t') p++;
        uint64_t unit_ns = 1000000000; /* a bare number is seconds */
        if (*p && *p != '+') {
            const struct unit *u = NULL;
            for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
                size_t n = strlen(units[i].name);
                if (!strncmp(p, units[i].name, n) && !isalpha((unsigned char)p[n])) {
                    u = &units[i];
                    p += n;
                    break;
                }
            }
            if (!u) return -EINVAL;
            unit_ns = u->ns;
        }
        if (ip > max_ns / unit_ns) return -ERANGE;
        total += ip * unit_ns + frac * unit_ns / scale;
        if (total > max_ns) return -ERANGE;
        terms++;
    }
    if (!terms) return -EINVAL;
    *ms = (uint64_t)(total / NS_PER_MS);
    return 0;
}
