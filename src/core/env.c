/* Environment settings: Istio's value syntax (Rust FromStr, duration_str) and the table walker. */
#include "core/env.h"
#include "core/log.h"

#include <errno.h>
#include <stdarg.h>
#include <string.h>
#include <strings.h>

#define NS_PER_MS 1000000ULL
#define NS_PER_S 1000000000ULL

struct unit {
    const char *name;
    uint64_t ns;
};

/* duration_str 0.21's TimeUnit::from_str (src/unit.rs), compared after ASCII lower-casing. A year is 365
 * days and a month 30 days there. */
static const struct unit units[] = {
    {"y", 365 * 86400 * NS_PER_S},
    {"year", 365 * 86400 * NS_PER_S},
    {"years", 365 * 86400 * NS_PER_S},
    {"mon", 30 * 86400 * NS_PER_S},
    {"month", 30 * 86400 * NS_PER_S},
    {"months", 30 * 86400 * NS_PER_S},
    {"w", 7 * 86400 * NS_PER_S},
    {"week", 7 * 86400 * NS_PER_S},
    {"weeks", 7 * 86400 * NS_PER_S},
    {"d", 86400 * NS_PER_S},
    {"day", 86400 * NS_PER_S},
    {"days", 86400 * NS_PER_S},
    {"h", 3600 * NS_PER_S},
    {"hr", 3600 * NS_PER_S},
    {"hour", 3600 * NS_PER_S},
    {"hours", 3600 * NS_PER_S},
    {"m", 60 * NS_PER_S},
    {"min", 60 * NS_PER_S},
    {"minute", 60 * NS_PER_S},
    {"minutes", 60 * NS_PER_S},
    {"s", NS_PER_S},
    {"sec", NS_PER_S},
    {"second", NS_PER_S},
    {"seconds", NS_PER_S},
    {"ms", NS_PER_MS},
    {"msec", NS_PER_MS},
    {"millisecond", NS_PER_MS},
    {"milliseconds", NS_PER_MS},
    {"\xc2\xb5s", 1000},
    {"\xc2\xb5sec", 1000},
    {"\xc2\xb5second", 1000},
    {"us", 1000},
    {"usec", 1000},
    {"usecond", 1000},
    {"microsecond", 1000},
    {"microseconds", 1000},
    {"ns", 1},
    {"nsec", 1},
    {"nanosecond", 1},
    {"nanoseconds", 1},
};

/* The longest unit name above ("milliseconds"). */
#define UNIT_NAME_MAX 16

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r'; /* winnow's multispace0 */
}

static const char *skip_space(const char *p)
{
    while (is_space(*p))
        p++;
    return p;
}

/* Reads a unit word (ASCII letters and 'µ') at *p. Returns its ns per unit, 0 when there is no word, or -1
 * for an unknown one. */
static int64_t read_unit(const char **p, uint64_t *ns)
{
    char word[UNIT_NAME_MAX + 1];
    size_t n = 0;
    const char *q = *p;
    for (;;) {
        unsigned char c = (unsigned char)*q;
        size_t len = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ? 1
                     : (c == 0xc2 && (unsigned char)q[1] == 0xb5)     ? 2
                                                                      : 0;
        if (!len) break;
        if (n + len > UNIT_NAME_MAX) return -1;
        for (size_t i = 0; i < len; i++)
            word[n++] = (char)(len == 1 && c >= 'A' && c <= 'Z' ? c + 32 : q[i]);
        q += len;
    }
    word[n] = 0;
    if (!n) return 0;
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++)
        if (!strcmp(word, units[i].name)) {
            *ns = units[i].ns;
            *p = q;
            return 1;
        }
    return -1;
}

int duration_parse_ms(const char *s, uint64_t *ms)
{
    char op = 0; /* '+' or '*' once a second term was seen */
    unsigned __int128 total = 0;
    int terms = 0;
    const char *p = s;

    if (!s || !*s) return -EINVAL;
    for (;;) {
        p = skip_space(p);
        if (!*p) break;
        if (terms) {
            char this_op = '+'; /* juxtaposed terms ("1m30s") add up */
            if (*p == '+' || *p == '*') {
                this_op = *p;
                p = skip_space(p + 1);
            }
            if (op && op != this_op) return -EINVAL; /* duration_str: "not support '+' with '*' calculate" */
            op = this_op;
        }
        if (*p < '0' || *p > '9') return -EINVAL;
        uint64_t v = 0;
        while (*p >= '0' && *p <= '9') {
            if (v > (UINT64_MAX - (uint64_t)(*p - '0')) / 10) return -ERANGE;
            v = v * 10 + (uint64_t)(*p++ - '0');
        }
        p = skip_space(p);
        uint64_t unit_ns = NS_PER_S; /* a bare number is seconds */
        int64_t u = read_unit(&p, &unit_ns);
        if (u < 0) return -EINVAL;
        if (u == 0) {
            /* A term without a unit must end the input or be followed by an operator ("5 5" is refused). */
            const char *q = skip_space(p);
            if (*q && *q != '+' && *q != '*') return -EINVAL;
        }
        if (unit_ns && v > UINT64_MAX / unit_ns) return -ERANGE;
        uint64_t term = v * unit_ns;
        if (!terms) {
            total = term;
        } else if (op == '+') {
            total += term;
        } else {
            /* A product: the first term times every further term counted in seconds. */
            total = total * term / NS_PER_S;
        }
        if (total > DURATION_MAX_NS) return -ERANGE;
        terms++;
    }
    if (!terms) return -EINVAL;
    *ms = (uint64_t)(total / NS_PER_MS);
    return 0;
}

int env_parse_bool(const char *s, bool *out)
{
    if (!s) return -EINVAL;
    if (!strcmp(s, "true")) {
        *out = true;
        return 0;
    }
    if (!strcmp(s, "false")) {
        *out = false;
        return 0;
    }
    return -EINVAL;
}

int env_parse_int(const char *s, int64_t lo, int64_t hi, int64_t *out)
{
    bool neg = false;
    uint64_t v = 0;
    if (!s) return -EINVAL;
    if (*s == '+') {
        s++;
    } else if (*s == '-' && lo < 0) {
        neg = true;
        s++;
    }
    if (!*s) return -EINVAL;
    for (; *s; s++) {
        if (*s < '0' || *s > '9') return -EINVAL;
        if (v > (UINT64_MAX - (uint64_t)(*s - '0')) / 10) return -ERANGE;
        v = v * 10 + (uint64_t)(*s - '0');
    }
    if (v > (uint64_t)INT64_MAX + (neg ? 1 : 0)) return -ERANGE;
    int64_t r = neg ? (int64_t)(0 - v) : (int64_t)v;
    if (r < lo || r > hi) return -ERANGE;
    *out = r;
    return 0;
}

static const char *const kind_names[] = {
    [ENV_STRING] = "string",
    [ENV_BOOL] = "bool",
    [ENV_INT] = "int",
    [ENV_DURATION] = "duration",
    [ENV_ENUM] = "enum",
    [ENV_CUSTOM] = "string",
    [ENV_UNSUPPORTED] = "not implemented",
};

const char *env_kind_to_str(enum env_kind k)
{
    return (unsigned)k < sizeof(kind_names) / sizeof(kind_names[0]) ? kind_names[k] : "?";
}

void env_diag_add(struct env_diag *d, const char *fmt, ...)
{
    va_list ap;
    size_t room = sizeof(d->buf) - d->len;
    d->n++;
    if (room < 5) return; /* already full and marked */
    va_start(ap, fmt);
    int w = vsnprintf(d->buf + d->len, room - 1, fmt, ap);
    va_end(ap);
    if (w < 0) return;
    if ((size_t)w >= room - 1) {
        /* Truncated: say so rather than cutting the line silently. */
        d->len = sizeof(d->buf) - 5;
        memcpy(d->buf + d->len, "...\n", 5);
        d->len += 4;
        return;
    }
    d->len += (size_t)w;
    d->buf[d->len++] = '\n';
    d->buf[d->len] = 0;
}

/* Writes the reason an ENV_INT or ENV_DURATION value is out of range. */
static void range_why(const struct env_setting *e, char *why, size_t n)
{
    if (e->kind == ENV_DURATION) {
        if (e->max)
            snprintf(why, n, "must be between %lldms and %lldms", (long long)e->min, (long long)e->max);
        else
            snprintf(why, n, "must be at least %lldms", (long long)e->min);
    } else {
        snprintf(why, n, "expected an integer in %lld..%lld", (long long)e->min, (long long)e->max);
    }
}

static int parse_one(const struct env_setting *e, const char *v, void *dst, char *why, size_t n)
{
    int rc = 0;
    switch (e->kind) {
    case ENV_STRING:
        *(const char **)dst = v;
        return 0;
    case ENV_BOOL:
        if ((rc = env_parse_bool(v, (bool *)dst)) < 0) snprintf(why, n, "expected true or false");
        return rc;
    case ENV_INT: {
        int64_t x;
        rc = env_parse_int(v, e->min, e->max, &x);
        if (rc == -EINVAL)
            snprintf(why, n, "expected an integer");
        else if (rc < 0)
            range_why(e, why, n);
        else
            *(int64_t *)dst = x;
        return rc;
    }
    case ENV_DURATION: {
        uint64_t ms;
        rc = duration_parse_ms(v, &ms);
        if (rc == -ERANGE) {
            snprintf(why, n, "duration too large");
        } else if (rc < 0) {
            snprintf(why, n, "expected a duration such as 500ms, 5s, 1m30s or 1h");
        } else if (ms < (uint64_t)e->min || (e->max && ms > (uint64_t)e->max)) {
            range_why(e, why, n);
            rc = -ERANGE;
        } else {
            *(uint64_t *)dst = ms;
        }
        return rc;
    }
    case ENV_ENUM: {
        size_t w = 0;
        for (int i = 0; e->choices[i]; i++)
            if (!strcmp(v, e->choices[i])) {
                *(int *)dst = i;
                return 0;
            }
        w = (size_t)snprintf(why, n, "unknown value; %s must be one of ", e->name);
        for (int i = 0; e->choices[i] && w < n; i++)
            w += (size_t)snprintf(why + w, n - w, "%s%s", i ? ", " : "", e->choices[i]);
        return -EINVAL;
    }
    case ENV_CUSTOM:
        return e->parse(v, dst, why, n);
    case ENV_UNSUPPORTED:
        return 0;
    }
    return -EINVAL;
}

int env_parse_table(const struct env_setting *t, size_t n, void *base, env_lookup_fn lookup, bool *set,
                    struct env_diag *errors, struct env_diag *warnings)
{
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        const struct env_setting *e = &t[i];
        const char *v = lookup(e->name);
        if (set) set[i] = v != NULL;
        if (e->kind == ENV_UNSUPPORTED) {
            if (v)
                env_diag_add(warnings, "%s=%s: an Istio setting zmesh does not implement yet; ignored",
                             e->name, v);
            continue;
        }
        if (!v || (e->required && !*v)) {
            if (e->required) {
                env_diag_add(errors, "%s must be set (%s)", e->name, e->help);
                rc = -EINVAL;
            }
            continue;
        }
        char why[256] = "";
        if (parse_one(e, v, (char *)base + e->offset, why, sizeof(why)) < 0) {
            env_diag_add(errors, "invalid env var %s=%s (%s)", e->name, v, why);
            rc = -EINVAL;
        }
    }
    return rc;
}

void env_print_help(FILE *f, const struct env_setting *t, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const struct env_setting *e = &t[i];
        fprintf(f, "  %s (%s", e->name, e->type ? e->type : env_kind_to_str(e->kind));
        if (e->required)
            fprintf(f, ", required");
        else if (e->def)
            fprintf(f, ", default %s", e->def);
        fprintf(f, ")\n      %s\n", e->help);
        if (e->kind == ENV_ENUM) {
            fprintf(f, "      one of:");
            for (int j = 0; e->choices[j]; j++)
                fprintf(f, " %s", e->choices[j]);
            fprintf(f, "\n");
        }
    }
}

void env_diag_log(struct env_diag *d, int level, const char *target)
{
    for (char *line = d->buf, *nl; *line && (nl = strchr(line, '\n')); line = nl + 1) {
        *nl = 0;
        log_fmt(level, target, "%s", line);
    }
}
