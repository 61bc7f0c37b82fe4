/* Duration parsing for environment settings. */
#include "core/env.h"

#include <ctype.h>
#include <errno.h>
#include <string.h>

struct unit {
    const char *name;
    double ms; /* milliseconds per unit */
};

/* Longest names first where one is a prefix of another ("ms" before "m", "min" before "m"). */
static const struct unit units[] = {
    {"msec", 1},    {"ms", 1},     {"ns", 1e-6},   {"us", 1e-3},         {"\xc2\xb5s", 1e-3},
    {"sec", 1000},  {"s", 1000},   {"min", 60000}, {"m", 60000},         {"hr", 3600000},
    {"h", 3600000}, {"d", 86400000}, {"w", 604800000},
};

int duration_parse_ms(const char *s, uint64_t *ms)
{
    double total = 0;
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
        double v = 0;
        while (isdigit((unsigned char)*p)) v = v * 10 + (*p++ - '0');
        if (*p == '.') {
            double scale = 0.1;
            if (!isdigit((unsigned char)*++p)) return -EINVAL;
            while (isdigit((unsigned char)*p)) {
                v += (*p++ - '0') * scale;
                scale /= 10;
            }
        }
        while (*p == ' ' || *p == '\t') p++;
        double mult = 1000; /* a bare number is seconds */
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
            mult = u->ms;
        }
        total += v * mult;
        if (total > 1.8e19) return -ERANGE;
        terms++;
    }
    if (!terms) return -EINVAL;
    *ms = (uint64_t)total;
    return 0;
}
