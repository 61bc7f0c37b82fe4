/* The waypoint's L7 model: routes from zmesh.v1.HTTPRoute resources, policies from zmesh.v1.L7Authorization
 * (compiled by l7authz.c), indexes built once in l7_builder_finish. */
#include "mesh/l7.h"

#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "core/pct.h"
#include "mesh/destination_rule.h"
#include "mesh/l7authn.h"
#include "mesh/l7authz.h"
#include "zmesh/l7.pb-c.h"

/* ---- a per-route arena: a route's strings and arrays live and die together ---- */

struct ablk {
    struct ablk *next;
    max_align_t data[];
};

void *l7_arena_alloc(struct l7_arena *a, size_t n)
{
    struct ablk *b = calloc(1, sizeof(*b) + (n ? n : 1));
    if (!b) return NULL;
    b->next = a->head;
    a->head = b;
    return b->data;
}

char *l7_arena_strndup(struct l7_arena *a, const char *s, size_t n)
{
    char *d = l7_arena_alloc(a, n + 1);
    if (d) memcpy(d, s, n);
    return d;
}

static char *arena_printf(struct l7_arena *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static char *arena_printf(struct l7_arena *a, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) return NULL;
    char *d = l7_arena_alloc(a, (size_t)n + 1);
    if (!d) return NULL;
    va_start(ap, fmt);
    vsnprintf(d, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return d;
}

void l7_arena_free(struct l7_arena *a)
{
    while (a->head) {
        struct ablk *n = a->head->next;
        free(a->head);
        a->head = n;
    }
}

/* ---- regular expressions: PCRE2, full match, RE2's feature set ---- */

static pthread_once_t re_once = PTHREAD_ONCE_INIT;
static pcre2_match_context *re_mctx;

static void re_init(void)
{
    /* One match context for every thread: pcre2_match only reads it. */
    re_mctx = pcre2_match_context_create(NULL);
    if (re_mctx) {
        pcre2_set_match_limit(re_mctx, L7_REGEX_MATCH_LIMIT);
        pcre2_set_depth_limit(re_mctx, L7_REGEX_DEPTH_LIMIT);
    }
}

/* RE2 (Envoy's safe_regex engine) has no backreferences, lookaround, atomic groups, recursion, conditionals,
 * callouts or backtracking verbs; PCRE2 has them all. A pattern using one would mean something else (or
 * nothing) to Istio, so it is refused. Group syntax RE2 accepts: (?:...), (?P<name>...), (?<name>...) and
 * flag groups of i, m, s, U. Escapes: \1-\9, \g and \k are references, \C is refused by
 * PCRE2_NEVER_BACKSLASH_C. */
static int re2_feature_check(const char *p, char *err, size_t errlen)
{
    size_t n = strlen(p);
    bool in_class = false;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (c == '\\') {
            char e = i + 1 < n ? p[i + 1] : 0;
            if (e == 'Q') { /* \Q...\E is literal text in both */
                const char *end = strstr(p + i + 2, "\\E");
                if (!end) return 0;
                i = (size_t)(end - p) + 1;
                continue;
            }
            if ((e >= '1' && e <= '9') || e == 'g' || e == 'k' || e == 'K') {
                snprintf(err, errlen, "\\%c (a backreference or PCRE-only escape) is not RE2 syntax", e);
                return -EINVAL;
            }
            i++;
            continue;
        }
        if (in_class) {
            if (c == '[' && i + 1 < n && p[i + 1] == ':') { /* [:alpha:] inside a class */
                const char *end = strstr(p + i + 2, ":]");
                if (end) i = (size_t)(end - p) + 1;
            } else if (c == ']') {
                in_class = false;
            }
            continue;
        }
        if (c == '[') {
            in_class = true;
            if (i + 1 < n && p[i + 1] == '^') i++;
            if (i + 1 < n && p[i + 1] == ']') /* a leading ] is literal */
                i++;
            continue;
        }
        if (c != '(') continue;
        char a = i + 1 < n ? p[i + 1] : 0, b = i + 2 < n ? p[i + 2] : 0, d = i + 3 < n ? p[i + 3] : 0;
        if (a == '*') {
            snprintf(err, errlen, "(*...) verbs are not RE2 syntax");
            return -EINVAL;
        }
        if (a != '?') continue;
        if (b == ':') continue;
        if ((b == 'P' && d == '<') || (b == '<' && (isalpha((unsigned char)d) || d == '_'))) continue;
        if (b == '=' || b == '!' || (b == '<' && (d == '=' || d == '!'))) {
            snprintf(err, errlen, "lookaround assertions are not RE2 syntax");
            return -EINVAL;
        }
        if (b == 'i' || b == 'm' || b == 's' || b == 'U' || b == '-') {
            size_t j = i + 2;
            while (j < n && strchr("imsU-", p[j]))
                j++;
            if (j < n && (p[j] == ':' || p[j] == ')') && j > i + 2) continue;
        }
        snprintf(err, errlen, "the group \"(?%c\" is not RE2 syntax", b ? b : ' ');
        return -EINVAL;
    }
    return 0;
}

/* Compiles pattern with RE2's feature set: anchored for full matches (Envoy's safe_regex), unanchored for a
 * global replace (regex_rewrite). Returns 0 and *out, or -EINVAL/-ENOMEM with err set. */
static int re_compile_as(const char *pattern, bool anchored, pcre2_code **out, char *err, size_t errlen)
{
    pthread_once(&re_once, re_init);
    if (!re_mctx) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    if (strlen(pattern) > L7_MAX_STRING) {
        snprintf(err, errlen, "regular expression longer than %d bytes", L7_MAX_STRING);
        return -EINVAL;
    }
    int rc = re2_feature_check(pattern, err, errlen);
    if (rc < 0) return rc;
    int ec;
    PCRE2_SIZE eo;
    /* UTF-8 as RE2; invalid UTF-8 in a request is a non-match, not an error (PCRE2_MATCH_INVALID_UTF). */
    uint32_t opts = PCRE2_UTF | PCRE2_MATCH_INVALID_UTF | PCRE2_NEVER_BACKSLASH_C | PCRE2_DOLLAR_ENDONLY;
    if (anchored) opts |= PCRE2_ANCHORED | PCRE2_ENDANCHORED;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, opts, &ec, &eo, NULL);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(ec, msg, sizeof(msg));
        snprintf(err, errlen, "invalid regular expression at offset %zu: %s", (size_t)eo, (const char *)msg);
        return -EINVAL;
    }
    uint32_t backrefs = 0;
    pcre2_pattern_info(re, PCRE2_INFO_BACKREFMAX, &backrefs);
    if (backrefs > 0) {
        pcre2_code_free(re);
        snprintf(err, errlen, "backreferences are not RE2 syntax");
        return -EINVAL;
    }
    /* JIT when the platform has it; the interpreter otherwise. Both honour the match limit. */
    (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
    *out = re;
    return 0;
}

static int re_compile(const char *pattern, pcre2_code **out, char *err, size_t errlen)
{
    return re_compile_as(pattern, true, out, err, errlen);
}

int l7_re_compile(const char *pattern, void **out, char *err, size_t errlen)
{
    pcre2_code *re = NULL;
    int rc = re_compile(pattern, &re, err, errlen);
    *out = re;
    return rc;
}

void l7_re_free(void *re)
{
    pcre2_code_free(re);
}

static bool re_full(const pcre2_code *re, const char *s, size_t n);
bool l7_re_full(const void *re, const char *s, size_t n)
{
    return re_full(re, s, n);
}

int l7_regex_check(const char *pattern, char *err, size_t errlen)
{
    pcre2_code *re = NULL;
    int rc = re_compile(pattern, &re, err, errlen);
    pcre2_code_free(re);
    return rc;
}

/* A full match of s[0..n). A match or depth limit hit, or any other matcher error, is a non-match. */
static bool re_full(const pcre2_code *re, const char *s, size_t n)
{
    pcre2_match_data *md = pcre2_match_data_create(1, NULL);
    if (!md) return false;
    int rc = pcre2_match(re, (PCRE2_SPTR)s, n, 0, 0, md, re_mctx);
    pcre2_match_data_free(md);
    return rc >= 0;
}

/* ---- the model ---- */

enum path_kind { PK_ANY = 0, PK_EXACT, PK_PREFIX, PK_RAW_PREFIX, PK_REGEX };
enum named_kind { NM_EXACT = 0, NM_REGEX, NM_PREFIX, NM_PRESENT };

struct named_match {
    const char *name;
    size_t name_len;
    bool regex;
    uint8_t kind; /* NM_EXACT, NM_REGEX, NM_PREFIX, NM_PRESENT (VirtualService adds the last two) */
    const char *value;
    size_t value_len;
    pcre2_code *re;
};

struct match_entry {
    const struct l7_rule *rule;
    const struct route *route;
    uint32_t rule_idx, match_idx;
    uint8_t path_kind; /* enum path_kind */
    const char *path;  /* EXACT: the path; PREFIX: without trailing '/', "" for "/"; REGEX: the pattern */
    size_t path_len;
    size_t sort_len; /* the length precedence compares (the value as written, less a trailing '/') */
    const char *prefix_as_written;
    pcre2_code *path_re;
    const char *method; /* "" = any */
    const struct named_match *headers, *query;
    size_t n_headers, n_query;
    /* VirtualService: ignoreUriCase, withoutHeaders (each must not match), the service port (0 = any) */
    bool icase;
    uint16_t port;
    const struct named_match *without;
    size_t n_without;
    /* VirtualService authority and scheme (NULL = any), sourceNamespace ("" = any) and sourceLabels resolved
     * to client workloads ("ns/pod", sorted; has_src: the condition is set, even when it selects none) */
    const struct named_match *authority, *scheme;
    const char *src_ns;
    bool has_src;
    const char *const *src_wls;
    size_t n_src_wls;
};

struct route {
    char *key; /* "ns/name" */
    int64_t created;
    Zmesh__V1__HTTPRoute *pb;
    struct l7_arena arena;
    pcre2_code **res;
    size_t n_res, cap_res;
    struct l7_rule *rules;
    size_t n_rules;
    struct match_entry *entries;
    size_t n_entries;
    struct l7_tcp_rule *tcp; /* VirtualService tcp routes */
    size_t n_tcp;
};

/* A Service a VirtualService with tcp routes attaches to (sorted by key, then oldest route first). */
struct tcp_bind {
    char *key; /* "ns/name" */
    const struct route *route;
};

struct l7_service_routes {
    const struct match_entry **e;
    size_t n;
};

struct svc_port {
    uint16_t port;
    struct l7_service_routes r;
};

struct svc_index {
    char *key; /* "ns/name" */
    struct svc_port *ports;
    size_t n_ports;
    struct l7_service_routes any; /* parents without a port */
};

struct pol_bind {
    char *key; /* "G:ns/name" or "S:ns/name" */
    const struct l7_policy **p;
    size_t n;
};

struct l7_builder {
    struct route **routes;
    size_t n_routes, cap_routes;
    struct l7_policy **pols;
    size_t n_pols, cap_pols;
    struct l7_authn **authns; /* RequestAuthentication (src/mesh/l7authn.h) */
    size_t n_authns, cap_authns;
    struct dr_table *drs; /* DestinationRules (destination_rule.h) */
};

struct l7_config {
    atomic_int refs;
    struct route **routes;
    size_t n_routes;
    struct l7_policy **pols;
    size_t n_pols;
    struct svc_index *svcs;
    size_t n_svcs;
    struct pol_bind *binds;
    size_t n_binds;
    struct tcp_bind *tcp_binds;
    size_t n_tcp_binds;
    struct l7_authn **authns;
    size_t n_authns;
    struct l7_authn_index *authn_idx;
    struct dr_table *drs; /* DestinationRules (destination_rule.h), owned */
};

static void route_free(struct route *r)
{
    if (!r) return;
    for (size_t i = 0; i < r->n_res; i++)
        pcre2_code_free(r->res[i]);
    free(r->res);
    if (r->pb) zmesh__v1__httproute__free_unpacked(r->pb, NULL);
    l7_arena_free(&r->arena);
    free(r->key);
    free(r);
}

static int route_keep_re(struct route *r, pcre2_code *re)
{
    if (r->n_res == r->cap_res) {
        size_t cap = r->cap_res ? r->cap_res * 2 : 8;
        pcre2_code **n = realloc(r->res, cap * sizeof(*n));
        if (!n) return -ENOMEM;
        r->res = n;
        r->cap_res = cap;
    }
    r->res[r->n_res++] = re;
    return 0;
}

/* ---- validation helpers; each error names the field ---- */

/* A field path for an error message; a path longer than buf is cut (messages only). */
static void fld(char *buf, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void fld(char *buf, size_t n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, n, fmt, ap);
    va_end(ap);
}

struct verr {
    char *buf;
    size_t n;
    const char *what; /* "HTTPRoute ns/name" */
};

static int fail(struct verr *v, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(struct verr *v, const char *field, const char *fmt, ...)
{
    char msg[384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (v->buf && v->n) snprintf(v->buf, v->n, "%s: %s%s%s", v->what, field, *field ? ": " : "", msg);
    return -EINVAL;
}

static bool str_ok(const char *s)
{
    size_t n = 0;
    for (; *s; s++, n++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f) return false;
    return n <= L7_MAX_STRING;
}

/* RFC 9110 token characters (header names). */
static bool token_ok(const char *s)
{
    if (!*s) return false;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && !strchr("!#$%&'*+-.^_`|~", *s)) return false;
    return true;
}

static void lower(char *s)
{
    for (; *s; s++)
        *s = (char)tolower((unsigned char)*s);
}

static bool method_ok(const char *m)
{
    static const char *const allowed[] = {"GET",     "HEAD",    "POST",  "PUT",  "DELETE",
                                          "CONNECT", "OPTIONS", "TRACE", "PATCH"};
    for (size_t i = 0; i < sizeof(allowed) / sizeof(allowed[0]); i++)
        if (strcmp(m, allowed[i]) == 0) return true;
    return false;
}

/* Gateway API's GRPCMethodMatch exact forms: service ^(?i)\.?[a-z_][a-z_0-9]*(\.[a-z_][a-z_0-9]*)*$, method
 * ^[A-Za-z_][A-Za-z_0-9]*$. */
static bool grpc_name_ok(const char *s, bool dots)
{
    if (dots && *s == '.') s++;
    bool start = true;
    if (!*s) return false;
    for (; *s; s++) {
        if (dots && *s == '.') {
            if (start) return false;
            start = true;
            continue;
        }
        if (!(isalpha((unsigned char)*s) || *s == '_' || (!start && isdigit((unsigned char)*s))))
            return false;
        start = false;
    }
    return !start;
}

static int copy_str(struct route *r, struct verr *v, const char *field, const char *s, char **out)
{
    if (!str_ok(s)) return fail(v, field, "control characters or longer than %d bytes", L7_MAX_STRING);
    *out = l7_arena_strndup(&r->arena, s, strlen(s));
    return *out ? 0 : -ENOMEM;
}

static int header_mod(struct route *r, struct verr *v, const char *field, const Zmesh__V1__HeaderModifier *pb,
                      struct l7_header_mod *out)
{
    char f[160];
    if (pb->n_set > L7_MAX_HEADER_MODS || pb->n_add > L7_MAX_HEADER_MODS || pb->n_remove > L7_MAX_HEADER_MODS)
        return fail(v, field, "more than %d headers in set, add or remove", L7_MAX_HEADER_MODS);
    const Zmesh__V1__HeaderValue *const *lists[2] = {(const Zmesh__V1__HeaderValue *const *)pb->set,
                                                     (const Zmesh__V1__HeaderValue *const *)pb->add};
    size_t ns[2] = {pb->n_set, pb->n_add};
    struct l7_kv *outs[2] = {NULL, NULL};
    for (int l = 0; l < 2; l++) {
        outs[l] = l7_arena_alloc(&r->arena, (ns[l] ? ns[l] : 1) * sizeof(struct l7_kv));
        if (!outs[l]) return -ENOMEM;
        for (size_t i = 0; i < ns[l]; i++) {
            fld(f, sizeof(f), "%s.%s[%zu].name", field, l ? "add" : "set", i);
            if (!token_ok(lists[l][i]->name))
                return fail(v, f, "not a header name: \"%.64s\"", lists[l][i]->name);
            char *name, *value;
            int rc = copy_str(r, v, f, lists[l][i]->name, &name);
            if (rc < 0) return rc;
            lower(name);
            fld(f, sizeof(f), "%s.%s[%zu].value", field, l ? "add" : "set", i);
            if ((rc = copy_str(r, v, f, lists[l][i]->value, &value)) < 0) return rc;
            outs[l][i] = (struct l7_kv){name, value};
        }
    }
    char **rm = l7_arena_alloc(&r->arena, (pb->n_remove ? pb->n_remove : 1) * sizeof(char *));
    if (!rm) return -ENOMEM;
    for (size_t i = 0; i < pb->n_remove; i++) {
        fld(f, sizeof(f), "%s.remove[%zu]", field, i);
        if (!token_ok(pb->remove[i])) return fail(v, f, "not a header name: \"%.64s\"", pb->remove[i]);
        int rc = copy_str(r, v, f, pb->remove[i], &rm[i]);
        if (rc < 0) return rc;
        lower(rm[i]);
    }
    *out = (struct l7_header_mod){.set = outs[0],
                                  .n_set = pb->n_set,
                                  .add = outs[1],
                                  .n_add = pb->n_add,
                                  .remove = (const char *const *)rm,
                                  .n_remove = pb->n_remove};
    return 0;
}

static int path_mod(struct route *r, struct verr *v, const char *field, const Zmesh__V1__PathModifier *pb,
                    uint8_t *kind, const char **path, const struct l7_regex **re)
{
    *kind = L7_PATH_KEEP;
    *path = "";
    if (re) *re = NULL;
    if (!pb || pb->type == ZMESH__V1__PATH_MODIFIER__TYPE__NONE) return 0;
    char f[160];
    fld(f, sizeof(f), "%s.value", field);
    bool vs = r->pb->kind == ZMESH__V1__HTTPROUTE__KIND__VIRTUAL_SERVICE;
    if ((pb->type == ZMESH__V1__PATH_MODIFIER__TYPE__PREFIX_REWRITE ||
         pb->type == ZMESH__V1__PATH_MODIFIER__TYPE__REGEX) &&
        (!vs || !re)) {
        fld(f, sizeof(f), "%s.type", field);
        return fail(v, f, "PREFIX_REWRITE and REGEX are VirtualService rewrites only");
    }
    if (pb->type == ZMESH__V1__PATH_MODIFIER__TYPE__PREFIX_REWRITE) {
        /* Envoy's prefix_rewrite takes the value as written ("" removes the matched part). */
        if (strchr(pb->value, '?') || strchr(pb->value, '#')) return fail(v, f, "a path has no '?' or '#'");
        *kind = L7_PATH_RAW_PREFIX;
        char *p;
        int rc = copy_str(r, v, f, pb->value, &p);
        *path = p;
        return rc;
    }
    if (pb->type == ZMESH__V1__PATH_MODIFIER__TYPE__REGEX) {
        char er[300], pf[170];
        fld(pf, sizeof(pf), "%s.pattern", field);
        if (!pb->pattern[0]) return fail(v, pf, "missing");
        if (!str_ok(pb->pattern))
            return fail(v, pf, "control characters or longer than %d bytes", L7_MAX_STRING);
        struct l7_regex *x = NULL;
        int rc = l7_regex_compile_rewrite(pb->pattern, &x, er, sizeof(er));
        if (rc < 0) return rc == -ENOMEM ? rc : fail(v, pf, "%s", er);
        if ((rc = route_keep_re(r, (pcre2_code *)x)) < 0) {
            l7_regex_free(x);
            return rc;
        }
        *re = x;
        *kind = L7_PATH_REGEX;
        char *p;
        rc = copy_str(r, v, f, pb->value, &p);
        *path = p;
        return rc;
    }
    if (pb->type == ZMESH__V1__PATH_MODIFIER__TYPE__FULL) {
        if (pb->value[0] != '/')
            return fail(v, f, "ReplaceFullPath must start with '/': \"%.64s\"", pb->value);
        *kind = L7_PATH_FULL;
    } else if (pb->type == ZMESH__V1__PATH_MODIFIER__TYPE__PREFIX_MATCH) {
        if (pb->value[0] && pb->value[0] != '/')
            return fail(v, f, "ReplacePrefixMatch must be empty or start with '/': \"%.64s\"", pb->value);
        *kind = L7_PATH_PREFIX;
    } else {
        fld(f, sizeof(f), "%s.type", field);
        return fail(v, f, "unknown path modifier type %d", (int)pb->type);
    }
    if (strchr(pb->value, '?') || strchr(pb->value, '#')) return fail(v, f, "a path has no '?' or '#'");
    char *p;
    int rc = copy_str(r, v, f, pb->value, &p);
    *path = p;
    return rc;
}

static int backend_ref(struct route *r, struct verr *v, const char *field, const Zmesh__V1__BackendRef *pb,
                       const char **ns, const char **name, uint16_t *port)
{
    char f[160];
    if (!pb) return fail(v, field, "missing");
    fld(f, sizeof(f), "%s.name", field);
    if (!pb->name[0] || !pb->namespace_[0]) return fail(v, f, "a backend needs a namespace and a name");
    /* A VirtualService destination may leave the port out: the port the request came to. */
    bool vs = r->pb->kind == ZMESH__V1__HTTPROUTE__KIND__VIRTUAL_SERVICE;
    if ((pb->port == 0 && !vs) || pb->port > 65535) {
        fld(f, sizeof(f), "%s.port", field);
        return fail(v, f, "expected a port 1-65535, got %u", pb->port);
    }
    char *a, *b;
    int rc;
    if ((rc = copy_str(r, v, f, pb->namespace_, &a)) < 0 || (rc = copy_str(r, v, f, pb->name, &b)) < 0)
        return rc;
    *ns = a;
    *name = b;
    *port = (uint16_t)pb->port;
    return 0;
}

/* One filter. backend: only header modifiers are allowed. */
static int filter_build(struct route *r, struct verr *v, const char *field, const Zmesh__V1__RouteFilter *pb,
                        bool backend, struct l7_filter *out)
{
    char f[160];
    memset(out, 0, sizeof(*out));
    switch (pb->kind_case) {
    case ZMESH__V1__ROUTE_FILTER__KIND_REQUEST_HEADER_MODIFIER:
        out->kind = L7_FILTER_REQUEST_HEADERS;
        fld(f, sizeof(f), "%s.request_header_modifier", field);
        return header_mod(r, v, f, pb->request_header_modifier, &out->u.headers);
    case ZMESH__V1__ROUTE_FILTER__KIND_RESPONSE_HEADER_MODIFIER:
        out->kind = L7_FILTER_RESPONSE_HEADERS;
        fld(f, sizeof(f), "%s.response_header_modifier", field);
        return header_mod(r, v, f, pb->response_header_modifier, &out->u.headers);
    default:
        break;
    }
    if (backend) return fail(v, field, "a backend's filters may only modify headers");
    int rc;
    switch (pb->kind_case) {
    case ZMESH__V1__ROUTE_FILTER__KIND_REQUEST_REDIRECT: {
        const Zmesh__V1__RequestRedirect *rd = pb->request_redirect;
        struct l7_redirect *o = &out->u.redirect;
        out->kind = L7_FILTER_REDIRECT;
        fld(f, sizeof(f), "%s.request_redirect.scheme", field);
        if (rd->scheme[0] && strcmp(rd->scheme, "http") != 0 && strcmp(rd->scheme, "https") != 0)
            return fail(v, f, "expected http or https, got \"%.32s\"", rd->scheme);
        char *s, *h;
        if ((rc = copy_str(r, v, f, rd->scheme, &s)) < 0) return rc;
        fld(f, sizeof(f), "%s.request_redirect.hostname", field);
        if (strpbrk(rd->hostname, " /?#@")) return fail(v, f, "not a hostname: \"%.64s\"", rd->hostname);
        if ((rc = copy_str(r, v, f, rd->hostname, &h)) < 0) return rc;
        o->scheme = s;
        o->hostname = h;
        fld(f, sizeof(f), "%s.request_redirect.path", field);
        if ((rc = path_mod(r, v, f, rd->path, &o->path_kind, &o->path, NULL)) < 0) return rc;
        if (rd->port > 65535) {
            fld(f, sizeof(f), "%s.request_redirect.port", field);
            return fail(v, f, "expected a port 1-65535, got %u", rd->port);
        }
        o->port = (uint16_t)rd->port;
        uint32_t st = rd->status_code ? rd->status_code : 302;
        if (st != 301 && st != 302 && st != 303 && st != 307 && st != 308) {
            fld(f, sizeof(f), "%s.request_redirect.status_code", field);
            return fail(v, f, "expected 301, 302, 303, 307 or 308, got %u", st);
        }
        o->status = (uint16_t)st;
        return 0;
    }
    case ZMESH__V1__ROUTE_FILTER__KIND_URL_REWRITE: {
        const Zmesh__V1__URLRewrite *rw = pb->url_rewrite;
        out->kind = L7_FILTER_REWRITE;
        fld(f, sizeof(f), "%s.url_rewrite.hostname", field);
        if (strpbrk(rw->hostname, " /?#@")) return fail(v, f, "not a hostname: \"%.64s\"", rw->hostname);
        char *h;
        if ((rc = copy_str(r, v, f, rw->hostname, &h)) < 0) return rc;
        out->u.rewrite.hostname = h;
        fld(f, sizeof(f), "%s.url_rewrite.path", field);
        return path_mod(r, v, f, rw->path, &out->u.rewrite.path_kind, &out->u.rewrite.path,
                        &out->u.rewrite.path_regex);
    }
    case ZMESH__V1__ROUTE_FILTER__KIND_REQUEST_MIRROR: {
        const Zmesh__V1__RequestMirror *m = pb->request_mirror;
        struct l7_mirror *o = &out->u.mirror;
        out->kind = L7_FILTER_MIRROR;
        fld(f, sizeof(f), "%s.request_mirror.backend", field);
        if ((rc = backend_ref(r, v, f, m->backend, &o->ns, &o->name, &o->port)) < 0) return rc;
        o->numerator = m->numerator;
        o->denominator = m->denominator;
        if (o->numerator == 0 && o->denominator == 0) o->numerator = o->denominator = 1;
        if (o->denominator == 0 || o->numerator > o->denominator) {
            fld(f, sizeof(f), "%s.request_mirror.numerator", field);
            return fail(v, f, "expected 0 <= numerator <= denominator and denominator > 0, got %u/%u",
                        o->numerator, o->denominator);
        }
        return 0;
    }
    default:
        return fail(v, field, "a filter with no kind set");
    }
}

static int named_matches(struct route *r, struct verr *v, const char *field, Zmesh__V1__NamedMatch *const *pb,
                         size_t n, bool header, const struct named_match **out)
{
    bool vs = r->pb->kind == ZMESH__V1__HTTPROUTE__KIND__VIRTUAL_SERVICE;
    char f[160];
    struct named_match *m = l7_arena_alloc(&r->arena, (n ? n : 1) * sizeof(*m));
    if (!m) return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        fld(f, sizeof(f), "%s[%zu].name", field, i);
        if (header ? !token_ok(pb[i]->name) : (!pb[i]->name[0] || !str_ok(pb[i]->name)))
            return fail(v, f, "not a %s name: \"%.64s\"", header ? "header" : "query parameter", pb[i]->name);
        /* Gateway API: only the first match of a name counts. */
        for (size_t j = 0; j < i; j++)
            if (header ? strcasecmp(pb[j]->name, pb[i]->name) == 0 : strcmp(pb[j]->name, pb[i]->name) == 0)
                return fail(v, f, "\"%.64s\" is matched twice", pb[i]->name);
        char *name, *value;
        int rc;
        if ((rc = copy_str(r, v, f, pb[i]->name, &name)) < 0) return rc;
        if (header) lower(name);
        fld(f, sizeof(f), "%s[%zu].value", field, i);
        if ((rc = copy_str(r, v, f, pb[i]->value, &value)) < 0) return rc;
        m[i] = (struct named_match){
            .name = name, .name_len = strlen(name), .value = value, .value_len = strlen(value)};
        if (pb[i]->type == ZMESH__V1__STRING_MATCH__TYPE__REGEX) {
            char e[300];
            m[i].regex = true;
            if ((rc = re_compile(value, &m[i].re, e, sizeof(e))) < 0)
                return rc == -ENOMEM ? rc : fail(v, f, "%s", e);
            if ((rc = route_keep_re(r, m[i].re)) < 0) {
                pcre2_code_free(m[i].re);
                return rc;
            }
            m[i].kind = NM_REGEX;
        } else if (vs && pb[i]->type == ZMESH__V1__STRING_MATCH__TYPE__STRING_PREFIX) {
            m[i].kind = NM_PREFIX;
        } else if (vs && pb[i]->type == ZMESH__V1__STRING_MATCH__TYPE__PRESENT) {
            m[i].kind = NM_PRESENT;
        } else if (pb[i]->type != ZMESH__V1__STRING_MATCH__TYPE__EXACT) {
            fld(f, sizeof(f), "%s[%zu].type", field, i);
            return fail(v, f,
                        vs ? "expected EXACT, STRING_PREFIX, REGEX or PRESENT" : "expected EXACT or REGEX");
        }
    }
    *out = m;
    return 0;
}

static int path_regex(struct route *r, struct verr *v, const char *field, struct match_entry *e,
                      const char *pat)
{
    char er[300];
    int rc = re_compile(pat, &e->path_re, er, sizeof(er));
    if (rc < 0) return rc == -ENOMEM ? rc : fail(v, field, "%s", er);
    if ((rc = route_keep_re(r, e->path_re)) < 0) {
        pcre2_code_free(e->path_re);
        return rc;
    }
    e->path_kind = PK_REGEX;
    e->path = pat;
    e->path_len = strlen(pat);
    e->sort_len = e->path_len;
    return 0;
}

static bool method_ok(const char *m);

/* A VirtualService StringMatch on a request attribute (authority, scheme): EXACT, STRING_PREFIX or REGEX into
 * *out (arena). */
static int vs_attr_match(struct route *r, struct verr *v, const char *field, const Zmesh__V1__StringMatch *pb,
                         const struct named_match **out)
{
    char f[160];
    int rc;
    struct named_match *m = l7_arena_alloc(&r->arena, sizeof(*m));
    if (!m) return -ENOMEM;
    char *value;
    fld(f, sizeof(f), "%s.value", field);
    if ((rc = copy_str(r, v, f, pb->value, &value)) < 0) return rc;
    *m = (struct named_match){.name = "", .value = value, .value_len = strlen(value)};
    switch (pb->type) {
    case ZMESH__V1__STRING_MATCH__TYPE__EXACT:
        m->kind = NM_EXACT;
        break;
    case ZMESH__V1__STRING_MATCH__TYPE__STRING_PREFIX:
        m->kind = NM_PREFIX;
        break;
    case ZMESH__V1__STRING_MATCH__TYPE__REGEX: {
        char e[300];
        if ((rc = re_compile(value, &m->re, e, sizeof(e))) < 0)
            return rc == -ENOMEM ? rc : fail(v, f, "%s", e);
        if ((rc = route_keep_re(r, m->re)) < 0) {
            pcre2_code_free(m->re);
            return rc;
        }
        m->regex = true;
        m->kind = NM_REGEX;
        break;
    }
    default:
        fld(f, sizeof(f), "%s.type", field);
        return fail(v, f, "expected EXACT, STRING_PREFIX or REGEX, got %d", (int)pb->type);
    }
    *out = m;
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* sourceNamespace and sourceLabels (resolved to workloads) of a VirtualService match. */
static int vs_source_build(struct route *r, struct verr *v, const char *field,
                           const Zmesh__V1__RouteMatch *pb, struct match_entry *e)
{
    char f[160];
    int rc;
    char *ns;
    fld(f, sizeof(f), "%s.source_namespace", field);
    if ((rc = copy_str(r, v, f, pb->source_namespace, &ns)) < 0) return rc;
    e->src_ns = ns;
    e->has_src = pb->has_source_labels;
    if (pb->n_source_workloads && !pb->has_source_labels) {
        fld(f, sizeof(f), "%s.source_workloads", field);
        return fail(v, f, "set without has_source_labels");
    }
    const char **w =
        l7_arena_alloc(&r->arena, (pb->n_source_workloads ? pb->n_source_workloads : 1) * sizeof(*w));
    if (!w) return -ENOMEM;
    for (size_t i = 0; i < pb->n_source_workloads; i++) {
        fld(f, sizeof(f), "%s.source_workloads[%zu]", field, i);
        const char *sl = strchr(pb->source_workloads[i], '/');
        if (!sl || sl == pb->source_workloads[i] || !sl[1])
            return fail(v, f, "expected \"<namespace>/<pod>\", got \"%.64s\"", pb->source_workloads[i]);
        char *c;
        if ((rc = copy_str(r, v, f, pb->source_workloads[i], &c)) < 0) return rc;
        w[i] = c;
    }
    qsort(w, pb->n_source_workloads, sizeof(*w), cmp_str);
    e->src_wls = w;
    e->n_src_wls = pb->n_source_workloads;
    return 0;
}

/* A VirtualService HTTPMatchRequest: uri exact/prefix (a plain string prefix)/regex, optionally without case,
 * method, headers and withoutHeaders (exact, prefix, regex, present), queryParams (exact, prefix, regex). No
 * path shape is required: Istio passes uri values to Envoy as written. */
static int vs_match_build(struct route *r, struct verr *v, const char *field, const Zmesh__V1__RouteMatch *pb,
                          struct match_entry *e)
{
    char f[160];
    int rc;
    if (pb->grpc_service[0] || pb->grpc_method[0]) {
        fld(f, sizeof(f), "%s.grpc_service", field);
        return fail(v, f, "a VirtualService has no gRPC method match");
    }
    if (pb->path) {
        fld(f, sizeof(f), "%s.path.value", field);
        char *p;
        if ((rc = copy_str(r, v, f, pb->path->value, &p)) < 0) return rc;
        switch (pb->path->type) {
        case ZMESH__V1__STRING_MATCH__TYPE__EXACT:
        case ZMESH__V1__STRING_MATCH__TYPE__STRING_PREFIX:
            e->path_kind = pb->path->type == ZMESH__V1__STRING_MATCH__TYPE__EXACT ? PK_EXACT : PK_RAW_PREFIX;
            e->path = p;
            e->path_len = e->sort_len = strlen(p);
            break;
        case ZMESH__V1__STRING_MATCH__TYPE__REGEX:
            /* ignoreUriCase is Envoy's case_sensitive false, which safe_regex ignores (the pattern decides).
             */
            if ((rc = path_regex(r, v, f, e, p)) < 0) return rc;
            break;
        default:
            fld(f, sizeof(f), "%s.path.type", field);
            return fail(v, f, "expected EXACT, STRING_PREFIX or REGEX, got %d", (int)pb->path->type);
        }
    } else {
        /* Istio's translation of a match without uri (and of a route without match): prefix "/". */
        e->path_kind = PK_RAW_PREFIX;
        e->path = "/";
        e->path_len = e->sort_len = 1;
    }
    e->icase = pb->ignore_uri_case;
    if (pb->port > 65535) {
        fld(f, sizeof(f), "%s.port", field);
        return fail(v, f, "expected a port 1-65535, got %u", pb->port);
    }
    e->port = (uint16_t)pb->port;
    if (pb->method[0]) {
        fld(f, sizeof(f), "%s.method", field);
        if (!method_ok(pb->method))
            return fail(
                v, f,
                "expected GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE or PATCH, got \"%.16s\"",
                pb->method);
        e->method = l7_arena_strndup(&r->arena, pb->method, strlen(pb->method));
        if (!e->method) return -ENOMEM;
    }
    if (pb->n_headers > L7_MAX_HEADER_MATCHES || pb->n_query_params > L7_MAX_QUERY_MATCHES ||
        pb->n_without_headers > L7_MAX_HEADER_MATCHES) {
        fld(f, sizeof(f), "%s.%s", field,
            pb->n_headers > L7_MAX_HEADER_MATCHES       ? "headers"
            : pb->n_query_params > L7_MAX_QUERY_MATCHES ? "query_params"
                                                        : "without_headers");
        return fail(v, f, "more than %d entries", L7_MAX_HEADER_MATCHES);
    }
    fld(f, sizeof(f), "%s.headers", field);
    if ((rc = named_matches(r, v, f, pb->headers, pb->n_headers, true, &e->headers)) < 0) return rc;
    e->n_headers = pb->n_headers;
    fld(f, sizeof(f), "%s.without_headers", field);
    if ((rc = named_matches(r, v, f, pb->without_headers, pb->n_without_headers, true, &e->without)) < 0)
        return rc;
    e->n_without = pb->n_without_headers;
    fld(f, sizeof(f), "%s.query_params", field);
    if ((rc = named_matches(r, v, f, pb->query_params, pb->n_query_params, false, &e->query)) < 0) return rc;
    e->n_query = pb->n_query_params;
    fld(f, sizeof(f), "%s.authority", field);
    if (pb->authority && (rc = vs_attr_match(r, v, f, pb->authority, &e->authority)) < 0) return rc;
    fld(f, sizeof(f), "%s.scheme", field);
    if (pb->scheme && (rc = vs_attr_match(r, v, f, pb->scheme, &e->scheme)) < 0) return rc;
    return vs_source_build(r, v, field, pb, e);
}

static int match_build(struct route *r, struct verr *v, const char *field, const Zmesh__V1__RouteMatch *pb,
                       bool grpc, struct match_entry *e)
{
    char f[160];
    int rc;
    e->method = "";
    e->path = "";
    if (pb->path && grpc) {
        fld(f, sizeof(f), "%s.path", field);
        return fail(v, f, "a GRPCRoute matches on service and method, not on the path");
    }
    if (!grpc && (pb->grpc_service[0] || pb->grpc_method[0])) {
        fld(f, sizeof(f), "%s.grpc_service", field);
        return fail(v, f, "an HTTPRoute has no gRPC method match");
    }
    bool vs = r->pb->kind == ZMESH__V1__HTTPROUTE__KIND__VIRTUAL_SERVICE;
    if (!vs && (pb->ignore_uri_case || pb->n_without_headers || pb->port)) {
        fld(f, sizeof(f), "%s.%s", field,
            pb->ignore_uri_case ? "ignore_uri_case"
            : pb->port          ? "port"
                                : "without_headers");
        return fail(v, f, "VirtualService only");
    }
    if (vs) return vs_match_build(r, v, field, pb, e);
    if (pb->path) {
        const char *val = pb->path->value;
        fld(f, sizeof(f), "%s.path.value", field);
        char *p;
        if ((rc = copy_str(r, v, f, val, &p)) < 0) return rc;
        switch (pb->path->type) {
        case ZMESH__V1__STRING_MATCH__TYPE__EXACT:
        case ZMESH__V1__STRING_MATCH__TYPE__PREFIX: {
            if (val[0] != '/') return fail(v, f, "a path must start with '/': \"%.64s\"", val);
            if (strchr(val, '?') || strchr(val, '#') || strstr(val, "//") || strstr(val, "/./") ||
                strstr(val, "/../"))
                return fail(v, f, "a path has no '?', '#', \"//\", \"/./\" or \"/../\": \"%.64s\"", val);
            size_t n = strlen(p);
            if (pb->path->type == ZMESH__V1__STRING_MATCH__TYPE__EXACT) {
                e->path_kind = PK_EXACT;
                e->path_len = e->sort_len = n;
            } else {
                /* Gateway API: a trailing '/' is ignored, and "/" matches every path. */
                e->prefix_as_written = p;
                while (n > 0 && p[n - 1] == '/')
                    n--;
                e->path_kind = PK_PREFIX;
                e->path_len = n;
                e->sort_len = n ? n : 1;
                p = l7_arena_strndup(&r->arena, p, n);
                if (!p) return -ENOMEM;
            }
            e->path = p;
            break;
        }
        case ZMESH__V1__STRING_MATCH__TYPE__REGEX:
            if ((rc = path_regex(r, v, f, e, p)) < 0) return rc;
            break;
        default:
            fld(f, sizeof(f), "%s.path.type", field);
            return fail(v, f, "unknown path match type %d", (int)pb->path->type);
        }
    } else if (grpc && (pb->grpc_service[0] || pb->grpc_method[0])) {
        /* Istio's translation of GRPCMethodMatch into a :path match (conversion.go): service and method exact
         * -> exact "/svc/method"; service only -> prefix "/svc/"; otherwise a regular expression. */
        const char *svc = pb->grpc_service, *meth = pb->grpc_method;
        if (pb->grpc_type == ZMESH__V1__STRING_MATCH__TYPE__EXACT) {
            if (svc[0] && !grpc_name_ok(svc, true)) {
                fld(f, sizeof(f), "%s.grpc_service", field);
                return fail(v, f, "not a gRPC service name: \"%.64s\"", svc);
            }
            if (meth[0] && !grpc_name_ok(meth, false)) {
                fld(f, sizeof(f), "%s.grpc_method", field);
                return fail(v, f, "not a gRPC method name: \"%.64s\"", meth);
            }
            if (svc[0] && meth[0]) {
                e->path_kind = PK_EXACT;
                e->path = arena_printf(&r->arena, "/%s/%s", svc, meth);
            } else if (svc[0]) {
                e->path_kind = PK_RAW_PREFIX;
                e->path = arena_printf(&r->arena, "/%s/", svc);
            } else {
                fld(f, sizeof(f), "%s.grpc_method", field);
                char *pat = arena_printf(&r->arena, "/[^/]+/%s", meth);
                if (!pat) return -ENOMEM;
                if ((rc = path_regex(r, v, f, e, pat)) < 0) return rc;
            }
            if (!e->path) return -ENOMEM;
            e->path_len = e->sort_len = strlen(e->path);
        } else if (pb->grpc_type == ZMESH__V1__STRING_MATCH__TYPE__REGEX) {
            char er[300];
            fld(f, sizeof(f), "%s.grpc_service", field);
            if (svc[0] && l7_regex_check(svc, er, sizeof(er)) < 0) return fail(v, f, "%s", er);
            fld(f, sizeof(f), "%s.grpc_method", field);
            if (meth[0] && l7_regex_check(meth, er, sizeof(er)) < 0) return fail(v, f, "%s", er);
            if (!str_ok(svc) || !str_ok(meth))
                return fail(v, f, "control characters or longer than %d bytes", L7_MAX_STRING);
            /* Each side is embedded in a group of one pattern: an unterminated \Q would quote the rest of it.
             */
            if (strstr(svc, "\\Q") || strstr(meth, "\\Q"))
                return fail(v, f, "\\Q is not allowed in a gRPC service or method pattern");
            char *pat =
                arena_printf(&r->arena, "/(?:%s)/(?:%s)", svc[0] ? svc : "[^/]+", meth[0] ? meth : "[^/]+");
            if (!pat) return -ENOMEM;
            if ((rc = path_regex(r, v, f, e, pat)) < 0) return rc;
        } else {
            fld(f, sizeof(f), "%s.grpc_type", field);
            return fail(v, f, "expected EXACT or REGEX");
        }
    }
    if (pb->method[0]) {
        fld(f, sizeof(f), "%s.method", field);
        if (!method_ok(pb->method))
            return fail(
                v, f,
                "expected GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE or PATCH, got \"%.16s\"",
                pb->method);
        e->method = l7_arena_strndup(&r->arena, pb->method, strlen(pb->method));
        if (!e->method) return -ENOMEM;
    }
    if (pb->n_headers > L7_MAX_HEADER_MATCHES || pb->n_query_params > L7_MAX_QUERY_MATCHES) {
        fld(f, sizeof(f), "%s.%s", field, pb->n_headers > L7_MAX_HEADER_MATCHES ? "headers" : "query_params");
        return fail(v, f, "more than %d entries", L7_MAX_HEADER_MATCHES);
    }
    fld(f, sizeof(f), "%s.headers", field);
    if ((rc = named_matches(r, v, f, pb->headers, pb->n_headers, true, &e->headers)) < 0) return rc;
    e->n_headers = pb->n_headers;
    if (grpc && pb->n_query_params) {
        fld(f, sizeof(f), "%s.query_params", field);
        return fail(v, f, "a GRPCRoute has no query parameter match");
    }
    fld(f, sizeof(f), "%s.query_params", field);
    if ((rc = named_matches(r, v, f, pb->query_params, pb->n_query_params, false, &e->query)) < 0) return rc;
    e->n_query = pb->n_query_params;
    return 0;
}

/* A retryOn name (Envoy's x-envoy-retry-on / x-envoy-retry-grpc-on), or 0. */
static uint32_t retry_on_bit(const char *s)
{
    static const struct {
        const char *name;
        uint32_t bit;
    } names[] = {
        {"5xx", L7_RETRY_5XX},
        {"gateway-error", L7_RETRY_GATEWAY_ERROR},
        {"reset", L7_RETRY_RESET},
        {"connect-failure", L7_RETRY_CONNECT_FAILURE},
        {"retriable-4xx", L7_RETRY_RETRIABLE_4XX},
        {"refused-stream", L7_RETRY_REFUSED_STREAM},
        {"retriable-status-codes", L7_RETRY_RETRIABLE_STATUS_CODES},
        {"cancelled", L7_RETRY_GRPC_CANCELLED},
        {"deadline-exceeded", L7_RETRY_GRPC_DEADLINE_EXCEEDED},
        {"internal", L7_RETRY_GRPC_INTERNAL},
        {"resource-exhausted", L7_RETRY_GRPC_RESOURCE_EXHAUSTED},
        {"unavailable", L7_RETRY_GRPC_UNAVAILABLE},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (!strcmp(s, names[i].name)) return names[i].bit;
    return 0;
}

/* The VirtualService-only parts of a rule (fault, retry, cors, direct_response); refused on other kinds. */
static int vs_rule_parts(struct route *r, struct verr *v, size_t ri, const Zmesh__V1__RouteRule *pb, bool vs,
                         struct l7_rule *rule)
{
    char f[160];
    int rc;
    if (!vs && (pb->fault || pb->retry || pb->cors || pb->direct_response)) {
        fld(f, sizeof(f), "rules[%zu].%s", ri,
            pb->fault   ? "fault"
            : pb->retry ? "retry"
            : pb->cors  ? "cors"
                        : "direct_response");
        return fail(v, f, "VirtualService only");
    }
    if (pb->fault) {
        const Zmesh__V1__Fault *fp = pb->fault;
        struct l7_fault *o = l7_arena_alloc(&r->arena, sizeof(*o));
        if (!o) return -ENOMEM;
        if (fp->delay_ppm > L7_PPM || fp->abort_ppm > L7_PPM) {
            fld(f, sizeof(f), "rules[%zu].fault.%s", ri, fp->delay_ppm > L7_PPM ? "delay_ppm" : "abort_ppm");
            return fail(v, f, "more than %u parts per million", L7_PPM);
        }
        if (fp->delay_ms > 24ull * 3600 * 1000) {
            fld(f, sizeof(f), "rules[%zu].fault.delay_ms", ri);
            return fail(v, f, "longer than a day");
        }
        if (fp->abort_http_status && (fp->abort_http_status < 200 || fp->abort_http_status > 599)) {
            fld(f, sizeof(f), "rules[%zu].fault.abort_http_status", ri);
            return fail(v, f, "expected 200-599, got %u", fp->abort_http_status);
        }
        if (fp->abort_grpc && (fp->abort_grpc_status > 16 || fp->abort_http_status)) {
            fld(f, sizeof(f), "rules[%zu].fault.abort_grpc_status", ri);
            return fail(v, f, "expected a gRPC status 0-16 and no HTTP status, got %u",
                        fp->abort_grpc_status);
        }
        o->delay_ms = fp->delay_ms;
        o->delay_ppm = fp->delay_ms ? fp->delay_ppm : 0;
        o->abort_status = (uint16_t)fp->abort_http_status;
        o->abort_grpc = fp->abort_grpc ? (int16_t)fp->abort_grpc_status : -1;
        o->abort_ppm = (o->abort_status || fp->abort_grpc) ? fp->abort_ppm : 0;
        rule->fault = o;
    }
    if (pb->retry) {
        const Zmesh__V1__Retry *rp = pb->retry;
        struct l7_retry *o = l7_arena_alloc(&r->arena, sizeof(*o));
        if (!o) return -ENOMEM;
        if (rp->attempts > 100) {
            fld(f, sizeof(f), "rules[%zu].retry.attempts", ri);
            return fail(v, f, "expected 0-100, got %u", rp->attempts);
        }
        o->attempts = rp->attempts;
        o->per_try_timeout_ms = rp->per_try_timeout_ms;
        o->retry_other_hosts = rp->retry_other_hosts;
        o->backoff_base_ms = rp->backoff_base_ms;
        for (size_t i = 0; i < rp->n_retry_on; i++) {
            uint32_t bit = retry_on_bit(rp->retry_on[i]);
            if (!bit) {
                fld(f, sizeof(f), "rules[%zu].retry.retry_on[%zu]", ri, i);
                return fail(v, f, "unknown retry condition \"%.40s\"", rp->retry_on[i]);
            }
            o->on |= bit;
        }
        if (rp->n_retry_on_codes > L7_MAX_RETRY_CODES) {
            fld(f, sizeof(f), "rules[%zu].retry.retry_on_codes", ri);
            return fail(v, f, "more than %d entries", L7_MAX_RETRY_CODES);
        }
        for (size_t i = 0; i < rp->n_retry_on_codes; i++) {
            if (rp->retry_on_codes[i] < 100 || rp->retry_on_codes[i] > 599) {
                fld(f, sizeof(f), "rules[%zu].retry.retry_on_codes[%zu]", ri, i);
                return fail(v, f, "expected 100-599, got %u", rp->retry_on_codes[i]);
            }
            o->codes[o->n_codes++] = (uint16_t)rp->retry_on_codes[i];
        }
        if (o->n_codes) o->on |= L7_RETRY_RETRIABLE_STATUS_CODES;
        rule->retry = o;
    }
    if (pb->cors) {
        const Zmesh__V1__CorsPolicy *cp = pb->cors;
        struct l7_cors *o = l7_arena_alloc(&r->arena, sizeof(*o));
        struct l7_origin *og =
            l7_arena_alloc(&r->arena, (cp->n_allow_origins ? cp->n_allow_origins : 1) * sizeof(*og));
        if (!o || !og) return -ENOMEM;
        if (cp->n_allow_origins > L7_MAX_MATCHES) {
            fld(f, sizeof(f), "rules[%zu].cors.allow_origins", ri);
            return fail(v, f, "more than %d entries", L7_MAX_MATCHES);
        }
        for (size_t i = 0; i < cp->n_allow_origins; i++) {
            const Zmesh__V1__StringMatch *m = cp->allow_origins[i];
            char *val;
            fld(f, sizeof(f), "rules[%zu].cors.allow_origins[%zu].value", ri, i);
            if ((rc = copy_str(r, v, f, m->value, &val)) < 0) return rc;
            og[i].value = val;
            if (m->type == ZMESH__V1__STRING_MATCH__TYPE__EXACT) {
                og[i].type = 0;
            } else if (m->type == ZMESH__V1__STRING_MATCH__TYPE__STRING_PREFIX) {
                og[i].type = 1;
            } else if (m->type == ZMESH__V1__STRING_MATCH__TYPE__REGEX) {
                char er[300];
                pcre2_code *re = NULL;
                og[i].type = 2;
                if ((rc = re_compile(val, &re, er, sizeof(er))) < 0)
                    return rc == -ENOMEM ? rc : fail(v, f, "%s", er);
                if ((rc = route_keep_re(r, re)) < 0) {
                    pcre2_code_free(re);
                    return rc;
                }
                og[i].regex = (const struct l7_regex *)re;
            } else {
                fld(f, sizeof(f), "rules[%zu].cors.allow_origins[%zu].type", ri, i);
                return fail(v, f, "expected EXACT, STRING_PREFIX or REGEX");
            }
        }
        o->origins = og;
        o->n_origins = cp->n_allow_origins;
        char *const *lists[3] = {cp->allow_methods, cp->allow_headers, cp->expose_headers};
        size_t ns[3] = {cp->n_allow_methods, cp->n_allow_headers, cp->n_expose_headers};
        const char *names[3] = {"allow_methods", "allow_headers", "expose_headers"};
        const char *joined[3];
        for (int l = 0; l < 3; l++) {
            size_t total = 1;
            for (size_t i = 0; i < ns[l]; i++) {
                fld(f, sizeof(f), "rules[%zu].cors.%s[%zu]", ri, names[l], i);
                if (!token_ok(lists[l][i])) return fail(v, f, "not a token: \"%.64s\"", lists[l][i]);
                total += strlen(lists[l][i]) + 1;
            }
            if (total > L7_MAX_STRING) {
                fld(f, sizeof(f), "rules[%zu].cors.%s", ri, names[l]);
                return fail(v, f, "longer than %d bytes joined", L7_MAX_STRING);
            }
            char *j = l7_arena_alloc(&r->arena, total);
            if (!j) return -ENOMEM;
            size_t w = 0;
            /* Envoy joins the lists with "," (Istio's translation: strings.Join(..., ",")). */
            for (size_t i = 0; i < ns[l]; i++)
                w += (size_t)snprintf(j + w, total - w, "%s%s", i ? "," : "", lists[l][i]);
            joined[l] = j;
        }
        o->allow_methods = joined[0];
        o->allow_headers = joined[1];
        o->expose_headers = joined[2];
        if (cp->has_max_age && cp->max_age_s < 0) {
            fld(f, sizeof(f), "rules[%zu].cors.max_age_s", ri);
            return fail(v, f, "negative");
        }
        o->max_age_s = cp->has_max_age ? cp->max_age_s : -1;
        o->allow_credentials = cp->allow_credentials == ZMESH__V1__CORS_POLICY__TRISTATE__TRUE    ? 1
                               : cp->allow_credentials == ZMESH__V1__CORS_POLICY__TRISTATE__FALSE ? 0
                                                                                                  : -1;
        o->unmatched_preflight_forward = !cp->unmatched_preflight_ignore;
        rule->cors = o;
    }
    if (pb->direct_response) {
        const Zmesh__V1__DirectResponse *dp = pb->direct_response;
        struct l7_direct_response *o = l7_arena_alloc(&r->arena, sizeof(*o));
        if (!o) return -ENOMEM;
        if (dp->status < 200 || dp->status > 599) {
            fld(f, sizeof(f), "rules[%zu].direct_response.status", ri);
            return fail(v, f, "expected 200-599, got %u", dp->status);
        }
        if (dp->body.len > L7_MAX_DIRECT_BODY) {
            fld(f, sizeof(f), "rules[%zu].direct_response.body", ri);
            return fail(v, f, "longer than %u bytes", L7_MAX_DIRECT_BODY);
        }
        char *body = l7_arena_alloc(&r->arena, dp->body.len + 1);
        if (!body) return -ENOMEM;
        if (dp->body.len) memcpy(body, dp->body.data, dp->body.len);
        o->status = (uint16_t)dp->status;
        o->body = body;
        o->body_len = dp->body.len;
        rule->direct = o;
        if (rule->redirect || pb->n_backends) {
            fld(f, sizeof(f), "rules[%zu].direct_response", ri);
            return fail(v, f, "a direct response excludes a redirect and backends");
        }
    }
    return 0;
}

static int rule_build(struct route *r, struct verr *v, size_t ri, const Zmesh__V1__RouteRule *pb, bool grpc,
                      struct l7_rule *rule, size_t *n_entries)
{
    char f[160];
    int rc;
    const Zmesh__V1__HTTPRoute *rp = r->pb;
    rule->route = r->key;
    bool vs = rp->kind == ZMESH__V1__HTTPROUTE__KIND__VIRTUAL_SERVICE;
    rule->kind = vs ? L7_ROUTE_VIRTUAL_SERVICE : grpc ? L7_ROUTE_GRPC : L7_ROUTE_HTTP;
    rule->index = (uint32_t)ri;
    fld(f, sizeof(f), "rules[%zu].name", ri);
    if (pb->name[0]) {
        char *n;
        if ((rc = copy_str(r, v, f, pb->name, &n)) < 0) return rc;
        rule->name = n;
    } else {
        rule->name = arena_printf(&r->arena, "%s.%s.%zu", rp->namespace_, rp->name, ri);
        if (!rule->name) return -ENOMEM;
    }
    if (pb->n_matches > L7_MAX_MATCHES) {
        fld(f, sizeof(f), "rules[%zu].matches", ri);
        return fail(v, f, "more than %d matches", L7_MAX_MATCHES);
    }
    if (pb->n_filters > L7_MAX_FILTERS || pb->n_backends > L7_MAX_BACKENDS) {
        fld(f, sizeof(f), "rules[%zu].%s", ri, pb->n_filters > L7_MAX_FILTERS ? "filters" : "backends");
        return fail(v, f, "more than %d entries", L7_MAX_FILTERS);
    }
    struct l7_filter *fl = l7_arena_alloc(&r->arena, (pb->n_filters ? pb->n_filters : 1) * sizeof(*fl));
    if (!fl) return -ENOMEM;
    bool seen[8] = {false};
    for (size_t i = 0; i < pb->n_filters; i++) {
        fld(f, sizeof(f), "rules[%zu].filters[%zu]", ri, i);
        if ((rc = filter_build(r, v, f, pb->filters[i], false, &fl[i])) < 0) return rc;
        /* Gateway API: only RequestMirror may repeat; RequestRedirect and URLRewrite exclude each other. */
        if (fl[i].kind != L7_FILTER_MIRROR && seen[fl[i].kind])
            return fail(v, f, "a filter of this type is already set in this rule");
        seen[fl[i].kind] = true;
        if (seen[L7_FILTER_REDIRECT] && seen[L7_FILTER_REWRITE])
            return fail(v, f, "RequestRedirect and URLRewrite cannot both be set in one rule");
        if (grpc && (fl[i].kind == L7_FILTER_REDIRECT || fl[i].kind == L7_FILTER_REWRITE))
            return fail(v, f, "a GRPCRoute supports header modifiers and mirrors only");
        if (fl[i].kind == L7_FILTER_REDIRECT) rule->redirect = &fl[i].u.redirect;
        if (fl[i].kind == L7_FILTER_REWRITE) rule->rewrite = &fl[i].u.rewrite;
    }
    rule->filters = fl;
    rule->n_filters = pb->n_filters;
    bool prefix_mod = (rule->redirect && rule->redirect->path_kind == L7_PATH_PREFIX) ||
                      (rule->rewrite && rule->rewrite->path_kind == L7_PATH_PREFIX);
    struct l7_backend *be = l7_arena_alloc(&r->arena, (pb->n_backends ? pb->n_backends : 1) * sizeof(*be));
    if (!be) return -ENOMEM;
    uint64_t total = 0;
    for (size_t i = 0; i < pb->n_backends; i++) {
        const Zmesh__V1__Backend *b = pb->backends[i];
        fld(f, sizeof(f), "rules[%zu].backends[%zu].service", ri, i);
        if ((rc = backend_ref(r, v, f, b->service, &be[i].ns, &be[i].name, &be[i].port)) < 0) return rc;
        if (b->weight > 1000000) {
            fld(f, sizeof(f), "rules[%zu].backends[%zu].weight", ri, i);
            return fail(v, f, "expected 0-1000000, got %u", b->weight);
        }
        be[i].weight = b->weight;
        total += b->weight;
        be[i].subset = "";
        if (b->subset[0]) {
            char *sub;
            fld(f, sizeof(f), "rules[%zu].backends[%zu].subset", ri, i);
            if (!vs) return fail(v, f, "VirtualService only");
            if ((rc = copy_str(r, v, f, b->subset, &sub)) < 0) return rc;
            be[i].subset = sub;
        }
        be[i].authority = "";
        if (b->authority[0]) {
            char *h;
            fld(f, sizeof(f), "rules[%zu].backends[%zu].authority", ri, i);
            if (!vs) return fail(v, f, "VirtualService only");
            if (strpbrk(b->authority, " /?#@")) return fail(v, f, "not a hostname: \"%.64s\"", b->authority);
            if ((rc = copy_str(r, v, f, b->authority, &h)) < 0) return rc;
            be[i].authority = h;
        }
        if (b->n_filters > L7_MAX_FILTERS) {
            fld(f, sizeof(f), "rules[%zu].backends[%zu].filters", ri, i);
            return fail(v, f, "more than %d entries", L7_MAX_FILTERS);
        }
        struct l7_filter *bf = l7_arena_alloc(&r->arena, (b->n_filters ? b->n_filters : 1) * sizeof(*bf));
        if (!bf) return -ENOMEM;
        for (size_t j = 0; j < b->n_filters; j++) {
            fld(f, sizeof(f), "rules[%zu].backends[%zu].filters[%zu]", ri, i, j);
            if ((rc = filter_build(r, v, f, b->filters[j], true, &bf[j])) < 0) return rc;
        }
        be[i].filters = bf;
        be[i].n_filters = b->n_filters;
    }
    rule->backends = be;
    rule->n_backends = pb->n_backends;
    rule->total_weight = total;
    if (pb->timeouts) {
        rule->request_timeout_ms = pb->timeouts->request_ms;
        rule->backend_request_timeout_ms = pb->timeouts->backend_request_ms;
        if (rule->request_timeout_ms && rule->backend_request_timeout_ms > rule->request_timeout_ms) {
            fld(f, sizeof(f), "rules[%zu].timeouts.backend_request_ms", ri);
            return fail(v, f, "longer than the request timeout (%llu > %llu ms)",
                        (unsigned long long)rule->backend_request_timeout_ms,
                        (unsigned long long)rule->request_timeout_ms);
        }
    }
    if ((rc = vs_rule_parts(r, v, ri, pb, vs, rule)) < 0) return rc;
    for (size_t i = 0; i < pb->n_matches; i++) {
        struct match_entry *e = &r->entries[*n_entries];
        memset(e, 0, sizeof(*e));
        e->rule = rule;
        e->route = r;
        e->rule_idx = (uint32_t)ri;
        e->match_idx = (uint32_t)i;
        fld(f, sizeof(f), "rules[%zu].matches[%zu]", ri, i);
        if ((rc = match_build(r, v, f, pb->matches[i], grpc, e)) < 0) return rc;
        if (prefix_mod && e->path_kind != PK_PREFIX)
            return fail(v, f, "ReplacePrefixMatch needs every match of the rule to be a PathPrefix");
        (*n_entries)++;
    }
    return 0;
}

/* A VirtualService's tcp routes: ports 1-65535 (none = all), Service destinations with weights only. */
static int tcp_rules_build(struct route *r, struct verr *v)
{
    const Zmesh__V1__HTTPRoute *pb = r->pb;
    char f[96];
    int rc;
    if (!pb->n_tcp_rules) return 0;
    if (pb->kind != ZMESH__V1__HTTPROUTE__KIND__VIRTUAL_SERVICE)
        return fail(v, "tcp_rules", "VirtualService only");
    if (pb->n_tcp_rules > L7_MAX_VS_RULES) return fail(v, "tcp_rules", "more than %d rules", L7_MAX_VS_RULES);
    r->tcp = l7_arena_alloc(&r->arena, pb->n_tcp_rules * sizeof(*r->tcp));
    if (!r->tcp) return -ENOMEM;
    for (size_t i = 0; i < pb->n_tcp_rules; i++) {
        const Zmesh__V1__TcpRule *t = pb->tcp_rules[i];
        struct l7_tcp_rule *o = &r->tcp[i];
        o->route = r->key;
        o->index = (uint32_t)i;
        if (t->n_ports > L7_MAX_MATCHES || t->n_backends > L7_MAX_BACKENDS) {
            fld(f, sizeof(f), "tcp_rules[%zu].%s", i, t->n_ports > L7_MAX_MATCHES ? "ports" : "backends");
            return fail(v, f, "more than %d entries",
                        t->n_ports > L7_MAX_MATCHES ? L7_MAX_MATCHES : L7_MAX_BACKENDS);
        }
        uint16_t *ports = l7_arena_alloc(&r->arena, (t->n_ports ? t->n_ports : 1) * sizeof(*ports));
        struct l7_backend *be = l7_arena_alloc(&r->arena, (t->n_backends ? t->n_backends : 1) * sizeof(*be));
        if (!ports || !be) return -ENOMEM;
        for (size_t k = 0; k < t->n_ports; k++) {
            if (t->ports[k] == 0 || t->ports[k] > 65535) {
                fld(f, sizeof(f), "tcp_rules[%zu].ports[%zu]", i, k);
                return fail(v, f, "expected a port 1-65535, got %u", t->ports[k]);
            }
            ports[k] = (uint16_t)t->ports[k];
        }
        if (!t->n_backends) {
            fld(f, sizeof(f), "tcp_rules[%zu].backends", i);
            return fail(v, f, "a tcp route needs a destination");
        }
        for (size_t k = 0; k < t->n_backends; k++) {
            const Zmesh__V1__Backend *b = t->backends[k];
            fld(f, sizeof(f), "tcp_rules[%zu].backends[%zu].service", i, k);
            if ((rc = backend_ref(r, v, f, b->service, &be[k].ns, &be[k].name, &be[k].port)) < 0) return rc;
            if (b->weight > 1000000 || b->n_filters) {
                fld(f, sizeof(f), "tcp_rules[%zu].backends[%zu].%s", i, k,
                    b->n_filters ? "filters" : "weight");
                return fail(v, f, b->n_filters ? "a tcp destination has no filters" : "expected 0-1000000");
            }
            be[k].weight = b->weight;
            be[k].subset = "";
            be[k].authority = "";
            if (b->subset[0]) {
                char *sub;
                if ((rc = copy_str(r, v, f, b->subset, &sub)) < 0) return rc;
                be[k].subset = sub;
            }
            o->total_weight += b->weight;
        }
        o->tls = t->tls;
        o->only_ns = o->only_name = "";
        if (t->service) {
            char *a, *bn;
            fld(f, sizeof(f), "tcp_rules[%zu].service", i);
            if (!t->tls) return fail(v, f, "tls rules only");
            if (!t->service->namespace_[0] || !t->service->name[0])
                return fail(v, f, "namespace and name required");
            if ((rc = copy_str(r, v, f, t->service->namespace_, &a)) < 0 ||
                (rc = copy_str(r, v, f, t->service->name, &bn)) < 0)
                return rc;
            o->only_ns = a;
            o->only_name = bn;
        }
        o->ports = ports;
        o->n_ports = t->n_ports;
        o->backends = be;
        o->n_backends = t->n_backends;
    }
    r->n_tcp = pb->n_tcp_rules;
    return 0;
}

static int route_build(struct route *r, struct verr *v)
{
    const Zmesh__V1__HTTPRoute *pb = r->pb;
    char f[64];
    int rc;
    bool grpc = pb->kind == ZMESH__V1__HTTPROUTE__KIND__GRPC;
    if (pb->kind != ZMESH__V1__HTTPROUTE__KIND__HTTP &&
        pb->kind != ZMESH__V1__HTTPROUTE__KIND__VIRTUAL_SERVICE && !grpc)
        return fail(v, "kind", "unknown kind %d", (int)pb->kind);
    if (!pb->namespace_[0] || !pb->name[0] || strlen(pb->namespace_) + strlen(pb->name) + 2 > 512 ||
        !str_ok(pb->namespace_) || !str_ok(pb->name))
        return fail(v, "name", "a route needs a namespace and a name");
    char want[520];
    if (snprintf(want, sizeof(want), "%s/%s", pb->namespace_, pb->name) >= (int)sizeof(want) ||
        strcmp(want, r->key) != 0)
        return fail(v, "name", "the resource name is not namespace/name (\"%s\")", want);
    r->created = pb->creation_timestamp;
    if (pb->n_parents > L7_MAX_PARENTS) return fail(v, "parents", "more than %d parents", L7_MAX_PARENTS);
    for (size_t i = 0; i < pb->n_parents; i++) {
        const Zmesh__V1__ParentRef *p = pb->parents[i];
        fld(f, sizeof(f), "parents[%zu]", i);
        if (!p->namespace_[0] || !p->name[0] || !str_ok(p->namespace_) || !str_ok(p->name) ||
            strlen(p->namespace_) + strlen(p->name) + 2 > 512)
            return fail(v, f, "a parent needs a namespace and a name");
        if (p->port > 65535) {
            fld(f, sizeof(f), "parents[%zu].port", i);
            return fail(v, f, "expected a port 1-65535, got %u", p->port);
        }
    }
    size_t max_rules = pb->kind == ZMESH__V1__HTTPROUTE__KIND__VIRTUAL_SERVICE ? L7_MAX_VS_RULES : L7_MAX_RULES;
    if (pb->n_rules > max_rules) return fail(v, "rules", "more than %zu rules", max_rules);
    size_t total = 0;
    for (size_t i = 0; i < pb->n_rules; i++)
        total += pb->rules[i]->n_matches;
    r->rules = l7_arena_alloc(&r->arena, (pb->n_rules ? pb->n_rules : 1) * sizeof(*r->rules));
    r->entries = l7_arena_alloc(&r->arena, (total ? total : 1) * sizeof(*r->entries));
    if (!r->rules || !r->entries) return -ENOMEM;
    for (size_t i = 0; i < pb->n_rules; i++)
        if ((rc = rule_build(r, v, i, pb->rules[i], grpc, &r->rules[i], &r->n_entries)) < 0) return rc;
    r->n_rules = pb->n_rules;
    return tcp_rules_build(r, v);
}

/* ---- builder ---- */

struct l7_builder *l7_builder_new(void)
{
    return calloc(1, sizeof(struct l7_builder));
}

void l7_builder_free(struct l7_builder *b)
{
    if (!b) return;
    for (size_t i = 0; i < b->n_routes; i++)
        route_free(b->routes[i]);
    for (size_t i = 0; i < b->n_pols; i++)
        l7_policy_free(b->pols[i]);
    for (size_t i = 0; i < b->n_authns; i++)
        l7_authn_free(b->authns[i]);
    free(b->routes);
    free(b->pols);
    free(b->authns);
    dr_table_free(b->drs);
    free(b);
}

static int grow(void **arr, size_t *cap, size_t n, size_t elem)
{
    if (n < *cap) return 0;
    size_t c = *cap ? *cap * 2 : 16;
    void *a = realloc(*arr, c * elem);
    if (!a) return -ENOMEM;
    *arr = a;
    *cap = c;
    return 0;
}

const char *const l7_type_urls[L7_N_TYPES] = {L7_TYPE_URLS};
_Static_assert(sizeof((const char *[]){L7_TYPE_URLS}) / sizeof(const char *) == L7_N_TYPES,
               "L7_TYPE_URLS and enum l7_type disagree");

const struct l7_retry l7_default_retry = {
    .attempts = 2,
    .on = L7_RETRY_CONNECT_FAILURE | L7_RETRY_REFUSED_STREAM | L7_RETRY_GRPC_UNAVAILABLE |
          L7_RETRY_GRPC_CANCELLED | L7_RETRY_RETRIABLE_STATUS_CODES,
    .codes = {503},
    .n_codes = 1,
    .retry_other_hosts = true,
};

int l7_type_index(const char *url)
{
    for (int i = 0; i < L7_N_TYPES; i++)
        if (url && !strcmp(url, l7_type_urls[i])) return i;
    return -1;
}

/* A RequestAuthentication, compiled by src/mesh/l7authn.c (its JWKS parsed here, once per build). */
static int authn_add(struct l7_builder *b, const char *name, const uint8_t *pb, size_t len, char *err,
                     size_t errlen)
{
    for (size_t i = 0; i < b->n_authns; i++)
        if (strcmp(l7_authn_name(b->authns[i]), name) == 0) {
            if (err && errlen) snprintf(err, errlen, "RequestAuthentication %.512s: added twice", name);
            return -EEXIST;
        }
    if (grow((void **)&b->authns, &b->cap_authns, b->n_authns, sizeof(*b->authns)) < 0) return -ENOMEM;
    struct l7_authn *a;
    int rc = l7_authn_compile(name, pb, len, &a, err, errlen);
    if (rc < 0) return rc;
    b->authns[b->n_authns++] = a;
    return 0;
}

int l7_builder_add(struct l7_builder *b, const char *type_url, const char *name, const uint8_t *pb,
                   size_t len, char *err, size_t errlen)
{
    if (err && errlen) err[0] = 0;
    int ti = l7_type_index(type_url);
    if (ti == L7_T_DESTINATION_RULE) {
        if (len > L7_MAX_RESOURCE_BYTES) {
            snprintf(err, errlen, "DestinationRule %.512s: larger than %u bytes", name, L7_MAX_RESOURCE_BYTES);
            return -EINVAL;
        }
        return dr_table_add(&b->drs, name, pb, len, err, errlen);
    }
    bool is_route = ti == L7_T_HTTP_ROUTE;
    bool is_pol = ti == L7_T_AUTHORIZATION;
    if (ti == L7_T_REQUEST_AUTHN) return authn_add(b, name, pb, len, err, errlen);
    char what[600];
    snprintf(what, sizeof(what), "%s %.512s",
             is_route ? "HTTPRoute"
             : is_pol ? "L7Authorization"
                      : type_url,
             name);
    struct verr v = {err, errlen, what};
    if (!is_route && !is_pol) {
        fail(&v, "", "unknown resource type");
        return -EPROTONOSUPPORT;
    }
    if (len > L7_MAX_RESOURCE_BYTES) return fail(&v, "", "larger than %u bytes", L7_MAX_RESOURCE_BYTES);
    if (is_route) {
        for (size_t i = 0; i < b->n_routes; i++)
            if (strcmp(b->routes[i]->key, name) == 0) {
                fail(&v, "", "added twice");
                return -EEXIST;
            }
        if (grow((void **)&b->routes, &b->cap_routes, b->n_routes, sizeof(*b->routes)) < 0) return -ENOMEM;
        struct route *r = calloc(1, sizeof(*r));
        if (!r || !(r->key = strdup(name))) {
            free(r);
            return -ENOMEM;
        }
        /* The schema has no recursion, so protobuf-c's recursive decoder is bounded by its depth (6). */
        r->pb = zmesh__v1__httproute__unpack(NULL, len, pb);
        if (!r->pb) {
            route_free(r);
            return fail(&v, "", "not a valid zmesh.v1.HTTPRoute encoding");
        }
        if (r->pb->kind == ZMESH__V1__HTTPROUTE__KIND__VIRTUAL_SERVICE)
            snprintf(what, sizeof(what), "VirtualService %.512s", name);
        int rc = route_build(r, &v);
        if (rc < 0) {
            if (rc == -ENOMEM) fail(&v, "", "out of memory");
            route_free(r);
            return rc;
        }
        b->routes[b->n_routes++] = r;
        return 0;
    }
    for (size_t i = 0; i < b->n_pols; i++)
        if (strcmp(l7_policy_name(b->pols[i]), name) == 0) {
            fail(&v, "", "added twice");
            return -EEXIST;
        }
    if (grow((void **)&b->pols, &b->cap_pols, b->n_pols, sizeof(*b->pols)) < 0) return -ENOMEM;
    struct l7_policy *p;
    int rc = l7_policy_compile(name, pb, len, &p, err, errlen);
    if (rc < 0) return rc;
    b->pols[b->n_pols++] = p;
    return 0;
}

/* Gateway API precedence as Istio sorts it (conversion.go sortHTTPRoutes): Exact path, then PathPrefix, then
 * RegularExpression; a longer path value first; a method match first; more header matches; more query
 * matches; then the oldest route, "<namespace>/<name>" alphabetically, rule order and match order. */
static int path_rank(uint8_t k)
{
    switch (k) {
    case PK_EXACT:
        return 3;
    case PK_PREFIX:
    case PK_RAW_PREFIX:
        return 2;
    case PK_REGEX:
        return 1;
    default:
        return 0;
    }
}

static int entry_cmp(const void *pa, const void *pb)
{
    const struct match_entry *a = *(const struct match_entry *const *)pa,
                             *b = *(const struct match_entry *const *)pb;
    /* A VirtualService's http routes are tried in the order written (Envoy's route list, first match wins);
     * several VirtualServices on one host are merged oldest first (Istio's merge of sidecar VirtualServices).
     */
    bool va = a->rule->kind == L7_ROUTE_VIRTUAL_SERVICE, vb = b->rule->kind == L7_ROUTE_VIRTUAL_SERVICE;
    if (va != vb) return va ? 1 : -1;
    if (va) {
        if (a->route != b->route) {
            if (a->route->created != b->route->created) return a->route->created < b->route->created ? -1 : 1;
            return strcmp(a->route->key, b->route->key);
        }
        if (a->rule_idx != b->rule_idx) return a->rule_idx < b->rule_idx ? -1 : 1;
        return a->match_idx < b->match_idx ? -1 : a->match_idx > b->match_idx;
    }
    int ra = path_rank(a->path_kind), rb = path_rank(b->path_kind);
    if (ra != rb) return rb - ra;
    if (a->sort_len != b->sort_len) return a->sort_len > b->sort_len ? -1 : 1;
    bool ma = a->method[0] != 0, mb = b->method[0] != 0;
    if (ma != mb) return ma ? -1 : 1;
    if (a->n_headers != b->n_headers) return a->n_headers > b->n_headers ? -1 : 1;
    if (a->n_query != b->n_query) return a->n_query > b->n_query ? -1 : 1;
    if (a->route != b->route) {
        if (a->route->created != b->route->created) return a->route->created < b->route->created ? -1 : 1;
        return strcmp(a->route->key, b->route->key);
    }
    if (a->rule_idx != b->rule_idx) return a->rule_idx < b->rule_idx ? -1 : 1;
    if (a->match_idx != b->match_idx) return a->match_idx < b->match_idx ? -1 : 1;
    return 0;
}

struct bind {
    const char *svc; /* "ns/name", owned by the binds array */
    uint32_t port;
    const struct match_entry *e;
};

static int bind_cmp(const void *pa, const void *pb)
{
    const struct bind *a = pa, *b = pb;
    int c = strcmp(a->svc, b->svc);
    if (c) return c;
    return a->port < b->port ? -1 : a->port > b->port;
}

static int routes_set(struct l7_service_routes *out, const struct bind *bs, size_t n, uint32_t port)
{
    /* The entries of parents without a port (port 0 sorts first) plus those of port. */
    size_t cnt = 0;
    for (size_t i = 0; i < n; i++)
        if (bs[i].port == 0 || bs[i].port == port) cnt++;
    out->e = malloc((cnt ? cnt : 1) * sizeof(*out->e));
    if (!out->e) return -ENOMEM;
    out->n = 0;
    for (size_t i = 0; i < n; i++)
        if (bs[i].port == 0 || bs[i].port == port) out->e[out->n++] = bs[i].e;
    qsort(out->e, out->n, sizeof(*out->e), entry_cmp);
    /* A route naming a Service twice (with and without a port) contributes its entries once. */
    size_t w = 0;
    for (size_t i = 0; i < out->n; i++)
        if (w == 0 || out->e[w - 1] != out->e[i]) out->e[w++] = out->e[i];
    out->n = w;
    /* GEP-1426 (Route types): when routes of different types bind one Service and port, only the most
     * specific type applies, GRPCRoute before HTTPRoute; the others are ignored there. */
    bool grpc = false, gateway = false;
    for (size_t i = 0; i < out->n; i++) {
        if (out->e[i]->rule->kind == L7_ROUTE_GRPC) grpc = true;
        if (out->e[i]->rule->kind != L7_ROUTE_VIRTUAL_SERVICE) gateway = true;
    }
    /* A VirtualService and a Gateway API route on one Service: Istio leaves it undefined; zmesh takes the
     * Gateway API route (zmeshd reports the VirtualService as ignored, src/zmeshd/vs.h). */
    if (gateway) {
        w = 0;
        for (size_t i = 0; i < out->n; i++)
            if (out->e[i]->rule->kind != L7_ROUTE_VIRTUAL_SERVICE) out->e[w++] = out->e[i];
        out->n = w;
    }
    if (grpc) {
        w = 0;
        for (size_t i = 0; i < out->n; i++)
            if (out->e[i]->rule->kind == L7_ROUTE_GRPC) out->e[w++] = out->e[i];
        out->n = w;
    }
    return 0;
}

static int svc_index_build(struct l7_config *c)
{
    size_t nb = 0;
    for (size_t i = 0; i < c->n_routes; i++)
        nb += c->routes[i]->pb->n_parents * c->routes[i]->n_entries;
    struct bind *bs = malloc((nb ? nb : 1) * sizeof(*bs));
    char **keys = calloc(nb ? nb : 1, sizeof(char *));
    int rc = -ENOMEM;
    if (!bs || !keys) goto out;
    size_t k = 0;
    for (size_t i = 0; i < c->n_routes; i++) {
        const struct route *r = c->routes[i];
        for (size_t p = 0; p < r->pb->n_parents; p++)
            for (size_t e = 0; e < r->n_entries; e++) {
                if (asprintf(&keys[k], "%s/%s", r->pb->parents[p]->namespace_, r->pb->parents[p]->name) < 0) {
                    keys[k] = NULL;
                    goto out;
                }
                bs[k] = (struct bind){keys[k], r->pb->parents[p]->port, &r->entries[e]};
                k++;
            }
    }
    qsort(bs, nb, sizeof(*bs), bind_cmp);
    size_t nsvc = 0;
    for (size_t i = 0; i < nb; i++)
        if (i == 0 || strcmp(bs[i].svc, bs[i - 1].svc) != 0) nsvc++;
    c->svcs = calloc(nsvc ? nsvc : 1, sizeof(*c->svcs));
    if (!c->svcs) goto out;
    for (size_t i = 0; i < nb;) {
        size_t j = i;
        while (j < nb && strcmp(bs[j].svc, bs[i].svc) == 0)
            j++;
        struct svc_index *s = &c->svcs[c->n_svcs++];
        if (!(s->key = strdup(bs[i].svc))) goto out;
        size_t nports = 0;
        for (size_t x = i; x < j; x++)
            if (bs[x].port && (x == i || bs[x].port != bs[x - 1].port)) nports++;
        s->ports = calloc(nports ? nports : 1, sizeof(*s->ports));
        if (!s->ports) goto out;
        for (size_t x = i; x < j; x++) {
            if (!bs[x].port || (x > i && bs[x].port == bs[x - 1].port)) continue;
            struct svc_port *sp = &s->ports[s->n_ports++];
            sp->port = (uint16_t)bs[x].port;
            if (routes_set(&sp->r, bs + i, j - i, bs[x].port) < 0) goto out;
        }
        if (routes_set(&s->any, bs + i, j - i, 0) < 0) goto out;
        i = j;
    }
    rc = 0;
out:
    if (keys)
        for (size_t i = 0; i < nb; i++)
            free(keys[i]);
    free(keys);
    free(bs);
    return rc;
}

struct pkey {
    char *key;
    const struct l7_policy *p;
};

static int pkey_cmp(const void *pa, const void *pb)
{
    const struct pkey *a = pa, *b = pb;
    int c = strcmp(a->key, b->key);
    return c ? c : strcmp(l7_policy_name(a->p), l7_policy_name(b->p));
}

static int pol_index_build(struct l7_config *c)
{
    size_t n = 0;
    for (size_t i = 0; i < c->n_pols; i++)
        n += l7_policy_n_targets(c->pols[i]);
    struct pkey *ks = calloc(n ? n : 1, sizeof(*ks));
    int rc = -ENOMEM;
    size_t k = 0;
    if (!ks) return -ENOMEM;
    for (size_t i = 0; i < c->n_pols; i++)
        for (size_t t = 0; t < l7_policy_n_targets(c->pols[i]); t++) {
            char buf[600];
            l7_policy_target_key(c->pols[i], t, buf, sizeof(buf));
            if (!(ks[k].key = strdup(buf))) goto out;
            ks[k++].p = c->pols[i];
        }
    qsort(ks, k, sizeof(*ks), pkey_cmp);
    c->binds = calloc(k ? k : 1, sizeof(*c->binds));
    if (!c->binds) goto out;
    for (size_t i = 0; i < k;) {
        size_t j = i;
        while (j < k && strcmp(ks[j].key, ks[i].key) == 0)
            j++;
        struct pol_bind *pb = &c->binds[c->n_binds];
        pb->p = malloc((j - i) * sizeof(*pb->p));
        if (!pb->p) goto out;
        pb->key = ks[i].key;
        ks[i].key = NULL;
        c->n_binds++;
        for (size_t x = i; x < j; x++)
            if (x == i || ks[x].p != ks[x - 1].p) /* a policy naming one target twice counts once */
                pb->p[pb->n++] = ks[x].p;
        i = j;
    }
    rc = 0;
out:
    for (size_t i = 0; i < k; i++)
        free(ks[i].key);
    free(ks);
    return rc;
}

static int tcp_bind_cmp(const void *pa, const void *pb)
{
    const struct tcp_bind *a = pa, *b = pb;
    int k = strcmp(a->key, b->key);
    if (k) return k;
    if (a->route->created != b->route->created) return a->route->created < b->route->created ? -1 : 1;
    return strcmp(a->route->key, b->route->key);
}

/* The (Service, VirtualService) pairs of the tcp routes, sorted for l7_tcp_route_for. */
static int tcp_index_build(struct l7_config *c)
{
    size_t n = 0;
    for (size_t i = 0; i < c->n_routes; i++)
        if (c->routes[i]->n_tcp) n += c->routes[i]->pb->n_parents;
    if (!n) return 0;
    c->tcp_binds = calloc(n, sizeof(*c->tcp_binds));
    if (!c->tcp_binds) return -ENOMEM;
    for (size_t i = 0; i < c->n_routes; i++) {
        const struct route *r = c->routes[i];
        if (!r->n_tcp) continue;
        for (size_t p = 0; p < r->pb->n_parents; p++) {
            struct tcp_bind *b = &c->tcp_binds[c->n_tcp_binds];
            if (asprintf(&b->key, "%s/%s", r->pb->parents[p]->namespace_, r->pb->parents[p]->name) < 0) {
                b->key = NULL;
                return -ENOMEM;
            }
            b->route = r;
            c->n_tcp_binds++;
        }
    }
    qsort(c->tcp_binds, c->n_tcp_binds, sizeof(*c->tcp_binds), tcp_bind_cmp);
    return 0;
}

static int tcp_key_cmp(const void *key, const void *elem)
{
    return strcmp(key, ((const struct tcp_bind *)elem)->key);
}

const struct l7_tcp_rule *l7_tcp_route_for(const struct l7_config *c, const char *svc_ns,
                                           const char *svc_name, uint16_t port)
{
    char key[600];
    if (!c || !c->n_tcp_binds || snprintf(key, sizeof(key), "%s/%s", svc_ns, svc_name) >= (int)sizeof(key))
        return NULL;
    const struct tcp_bind *b = bsearch(key, c->tcp_binds, c->n_tcp_binds, sizeof(*b), tcp_key_cmp);
    if (!b) return NULL;
    while (b > c->tcp_binds && !strcmp(b[-1].key, key))
        b--;
    /* Every VirtualService's tls routes first, then the tcp routes (GEP-1294's order, as Istio's waypoint). */
    for (int tls = 1; tls >= 0; tls--)
        for (const struct tcp_bind *x = b; x < c->tcp_binds + c->n_tcp_binds && !strcmp(x->key, key); x++)
            for (size_t i = 0; i < x->route->n_tcp; i++) {
                const struct l7_tcp_rule *t = &x->route->tcp[i];
                if (t->tls != (tls == 1)) continue;
                if (*t->only_ns && (strcmp(t->only_ns, svc_ns) || strcmp(t->only_name, svc_name))) continue;
                if (!t->n_ports) return t;
                for (size_t k = 0; k < t->n_ports; k++)
                    if (t->ports[k] == port) return t;
            }
    return NULL;
}

int l7_tcp_pick_backend(const struct l7_tcp_rule *rule, uint64_t rnd)
{
    if (!rule || rule->total_weight == 0) return -1;
    uint64_t x = rnd % rule->total_weight;
    for (size_t i = 0; i < rule->n_backends; i++) {
        if (x < rule->backends[i].weight) return (int)i;
        x -= rule->backends[i].weight;
    }
    return -1;
}

static void config_free(struct l7_config *c)
{
    for (size_t i = 0; i < c->n_tcp_binds; i++)
        free(c->tcp_binds[i].key);
    free(c->tcp_binds);
    for (size_t i = 0; i < c->n_svcs; i++) {
        for (size_t p = 0; p < c->svcs[i].n_ports; p++)
            free(c->svcs[i].ports[p].r.e);
        free(c->svcs[i].ports);
        free(c->svcs[i].any.e);
        free(c->svcs[i].key);
    }
    free(c->svcs);
    for (size_t i = 0; i < c->n_binds; i++) {
        free(c->binds[i].key);
        free(c->binds[i].p);
    }
    free(c->binds);
    for (size_t i = 0; i < c->n_routes; i++)
        route_free(c->routes[i]);
    free(c->routes);
    for (size_t i = 0; i < c->n_pols; i++)
        l7_policy_free(c->pols[i]);
    free(c->pols);
    l7_authn_index_free(c->authn_idx);
    for (size_t i = 0; i < c->n_authns; i++)
        l7_authn_free(c->authns[i]);
    free(c->authns);
    dr_table_free(c->drs);
    free(c);
}

static int tcp_index_build(struct l7_config *c);

struct l7_config *l7_builder_finish(struct l7_builder *b)
{
    if (!b) return NULL;
    struct l7_config *c = calloc(1, sizeof(*c));
    if (!c) {
        l7_builder_free(b);
        return NULL;
    }
    atomic_init(&c->refs, 1);
    c->routes = b->routes;
    c->n_routes = b->n_routes;
    c->pols = b->pols;
    c->n_pols = b->n_pols;
    c->authns = b->authns;
    c->n_authns = b->n_authns;
    c->drs = b->drs;
    free(b);
    if (svc_index_build(c) < 0 || pol_index_build(c) < 0 || tcp_index_build(c) < 0 ||
        l7_authn_index_build(c->authns, c->n_authns, &c->authn_idx) < 0 || dr_table_finish(c->drs) < 0) {
        config_free(c);
        return NULL;
    }
    return c;
}

void l7_config_ref(struct l7_config *c)
{
    if (c) atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
}

void l7_config_unref(struct l7_config *c)
{
    if (c && atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) == 1) config_free(c);
}

size_t l7_config_n_routes(const struct l7_config *c)
{
    return c ? c->n_routes : 0;
}

size_t l7_config_n_policies(const struct l7_config *c)
{
    return c ? c->n_pols : 0;
}

const struct dr_rule *l7_destination_rule_for(const struct l7_config *c, const char *svc_ns, const char *svc_name)
{
    return c ? dr_table_find(c->drs, svc_ns, svc_name) : NULL;
}

size_t l7_config_n_destination_rules(const struct l7_config *c)
{
    return c ? dr_table_n(c->drs) : 0;
}

static int svc_cmp(const void *key, const void *elem)
{
    return strcmp(key, ((const struct svc_index *)elem)->key);
}

static int port_cmp(const void *key, const void *elem)
{
    uint16_t k = *(const uint16_t *)key, p = ((const struct svc_port *)elem)->port;
    return k < p ? -1 : k > p;
}

const struct l7_service_routes *l7_routes_for(const struct l7_config *c, const char *svc_ns,
                                              const char *svc_name, uint16_t port)
{
    char key[600];
    if (!c || snprintf(key, sizeof(key), "%s/%s", svc_ns, svc_name) >= (int)sizeof(key)) return NULL;
    const struct svc_index *s = bsearch(key, c->svcs, c->n_svcs, sizeof(*c->svcs), svc_cmp);
    if (!s) return NULL;
    const struct svc_port *sp = bsearch(&port, s->ports, s->n_ports, sizeof(*s->ports), port_cmp);
    if (sp) return &sp->r;
    return s->any.n ? &s->any : NULL;
}

static int pbind_cmp(const void *key, const void *elem)
{
    return strcmp(key, ((const struct pol_bind *)elem)->key);
}

const struct l7_policy *const *l7_config_policies_for(const struct l7_config *c, const char *key, size_t *n)
{
    *n = 0;
    if (!c) return NULL;
    const struct pol_bind *b = bsearch(key, c->binds, c->n_binds, sizeof(*c->binds), pbind_cmp);
    if (!b) return NULL;
    *n = b->n;
    return b->p;
}

const struct l7_authn *const *l7_config_authn_for(const struct l7_config *c, const char *key, size_t *n)
{
    *n = 0;
    return c ? l7_authn_index_get(c->authn_idx, key, n) : NULL;
}

size_t l7_config_n_authn(const struct l7_config *c)
{
    return c ? c->n_authns : 0;
}

/* ---- matching ---- */

/* The value a header match sees: every header of that name joined with "," (Envoy's rule for repeats). NULL
 * when absent; *buf is set when a join had to allocate (the caller frees it). */
static const char *header_value(const struct l7_request *req, const char *name, size_t name_len, size_t *len,
                                char **buf)
{
    const struct l7_header *first = NULL;
    size_t count = 0, total = 0;
    *buf = NULL;
    for (size_t i = 0; i < req->n_headers; i++) {
        const struct l7_header *h = &req->headers[i];
        if (h->name_len == name_len && strncasecmp(h->name, name, name_len) == 0) {
            if (!first) first = h;
            count++;
            total += h->value_len + 1;
        }
    }
    if (!first) return NULL;
    if (count == 1) {
        *len = first->value_len;
        return first->value;
    }
    if (total > L7_MAX_JOINED_HEADER) return NULL;
    char *b = malloc(total);
    if (!b) return NULL;
    size_t w = 0;
    for (size_t i = 0; i < req->n_headers; i++) {
        const struct l7_header *h = &req->headers[i];
        if (h->name_len == name_len && strncasecmp(h->name, name, name_len) == 0) {
            if (w) b[w++] = ',';
            memcpy(b + w, h->value, h->value_len);
            w += h->value_len;
        }
    }
    *buf = b;
    *len = w;
    return b;
}

/* The first value of query parameter name in q[0..qn) (decoded into buf), or -1 when absent. */
static ssize_t query_value(const char *q, size_t qn, const char *name, size_t name_len, char *buf, size_t cap)
{
    size_t i = 0;
    while (i < qn) {
        size_t j = i;
        while (j < qn && q[j] != '&')
            j++;
        size_t eq = i;
        while (eq < j && q[eq] != '=')
            eq++;
        char nb[256];
        ssize_t nl = pct_decode(q + i, eq - i, nb, sizeof(nb));
        if (nl == (ssize_t)name_len && memcmp(nb, name, name_len) == 0) {
            if (eq >= j) return 0;
            return pct_decode(q + eq + 1, j - eq - 1, buf, cap);
        }
        i = j + 1;
    }
    return -1;
}

static bool named_ok(const struct named_match *m, const char *val, size_t n)
{
    switch (m->kind) {
    case NM_REGEX:
        return re_full(m->re, val, n);
    case NM_PREFIX:
        return n >= m->value_len && memcmp(val, m->value, m->value_len) == 0;
    case NM_PRESENT:
        return true;
    default:
        return n == m->value_len && memcmp(val, m->value, n) == 0;
    }
}

/* Whether the header match m holds for req. An absent header fails it, unless missing_empty (Envoy's
 * treat_missing_header_as_empty, which Istio sets on withoutHeaders that are not a presence match): then the
 * value matched is "". */
static bool header_ok(const struct named_match *m, const struct l7_request *req, bool missing_empty)
{
    size_t n = 0;
    char *buf;
    const char *v = header_value(req, m->name, m->name_len, &n, &buf);
    if (!v && missing_empty && m->kind != NM_PRESENT) v = "";
    bool ok = v && named_ok(m, v, n);
    free(buf);
    return ok;
}

/* sourceLabels: the client workload (ns, name) is one of the sorted "ns/pod" list. */
static bool source_wl_in(const struct match_entry *e, const struct l7_request *req)
{
    if (!req->source_workload_ns || !req->source_workload) return false;
    size_t nl = strlen(req->source_workload_ns);
    size_t lo = 0, hi = e->n_src_wls;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const char *c = e->src_wls[mid];
        /* compare "ns/name" with c without building it */
        int d = strncmp(c, req->source_workload_ns, nl);
        if (!d) d = (unsigned char)c[nl] - (unsigned char)'/';
        if (!d) d = strcmp(c + nl + 1, req->source_workload);
        if (!d) return true;
        if (d < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return false;
}

/* The VirtualService-only conditions of e: authority, scheme, sourceNamespace, sourceLabels. */
static bool vs_attrs_match(const struct match_entry *e, const struct l7_request *req)
{
    if (e->authority) {
        const char *a = req->authority ? req->authority : "";
        if (!named_ok(e->authority, a, strlen(a))) return false;
    }
    if (e->scheme) {
        const char *sc = req->scheme && *req->scheme ? req->scheme : "http";
        if (!named_ok(e->scheme, sc, strlen(sc))) return false;
    }
    if (e->src_ns && *e->src_ns && (!req->source_namespace || strcmp(req->source_namespace, e->src_ns) != 0))
        return false;
    if (e->has_src && !source_wl_in(e, req)) return false;
    return true;
}

static bool entry_matches(const struct match_entry *e, const struct l7_request *req, const char *p, size_t pn,
                          const char *q, size_t qn)
{
    switch (e->path_kind) {
    case PK_EXACT:
        if (pn != e->path_len || (e->icase ? strncasecmp(p, e->path, pn) : memcmp(p, e->path, pn)) != 0)
            return false;
        break;
    case PK_PREFIX:
        /* Whole "/"-separated elements: "/foo" matches "/foo", "/foo/" and "/foo/bar", not "/foobar". */
        if (pn < e->path_len || memcmp(p, e->path, e->path_len) != 0 ||
            (pn > e->path_len && p[e->path_len] != '/'))
            return false;
        break;
    case PK_RAW_PREFIX:
        if (pn < e->path_len ||
            (e->icase ? strncasecmp(p, e->path, e->path_len) : memcmp(p, e->path, e->path_len)) != 0)
            return false;
        break;
    case PK_REGEX:
        if (!re_full(e->path_re, p, pn)) return false;
        break;
    default:
        break;
    }
    if (e->method[0] && (!req->method || strcmp(req->method, e->method) != 0)) return false;
    if (e->port && req->port != e->port) return false;
    for (size_t i = 0; i < e->n_headers; i++)
        if (!header_ok(&e->headers[i], req, false)) return false;
    for (size_t i = 0; i < e->n_without; i++)
        if (header_ok(&e->without[i], req, true)) return false;
    if (!vs_attrs_match(e, req)) return false;
    for (size_t i = 0; i < e->n_query; i++) {
        const struct named_match *m = &e->query[i];
        char buf[L7_MAX_STRING];
        ssize_t n = query_value(q, qn, m->name, m->name_len, buf, sizeof(buf));
        if (n < 0 || !named_ok(m, buf, (size_t)n)) return false;
    }
    return true;
}

const struct l7_rule *l7_match_ex(const struct l7_service_routes *r, const struct l7_request *req,
                                  const char **prefix, size_t *prefix_len)
{
    if (prefix) {
        *prefix = NULL;
        *prefix_len = 0;
    }
    if (!r || !req || !req->path) return NULL;
    const char *p = req->path, *q = memchr(p, '?', req->path_len);
    size_t pn = q ? (size_t)(q - p) : req->path_len, qn = q ? req->path_len - pn - 1 : 0;
    const char *frag = memchr(p, '#', pn);
    if (frag) pn = (size_t)(frag - p);
    q = q ? q + 1 : "";
    for (size_t i = 0; i < r->n; i++) {
        const struct match_entry *e = r->e[i];
        if (entry_matches(e, req, p, pn, q, qn)) {
            if (prefix && e->path_kind == PK_PREFIX) {
                *prefix = e->path;
                *prefix_len = e->path_len;
            } else if (prefix && e->rule->kind == L7_ROUTE_VIRTUAL_SERVICE) {
                /* Envoy's prefix_rewrite replaces what the match matched: the prefix (the request's own
                 * bytes, which differ in case under ignoreUriCase), or the whole path for an exact or regex
                 * match. */
                *prefix = p;
                *prefix_len = e->path_kind == PK_RAW_PREFIX ? e->path_len : e->path_kind == PK_ANY ? 0 : pn;
            }
            return e->rule;
        }
    }
    return NULL;
}

const struct l7_rule *l7_match(const struct l7_service_routes *r, const struct l7_request *req)
{
    return l7_match_ex(r, req, NULL, NULL);
}

int l7_pick_backend(const struct l7_rule *rule, uint64_t rnd)
{
    if (!rule || rule->total_weight == 0) return -1;
    uint64_t x = rnd % rule->total_weight;
    for (size_t i = 0; i < rule->n_backends; i++) {
        if (x < rule->backends[i].weight) return (int)i;
        x -= rule->backends[i].weight;
    }
    return -1;
}

int l7_rewrite_path(uint8_t kind, const char *value, const char *prefix, size_t prefix_len, const char *path,
                    size_t path_len, char *out, size_t n)
{
    const char *q = memchr(path, '?', path_len);
    size_t pn = q ? (size_t)(q - path) : path_len, qn = q ? path_len - pn : 0;
    const char *head = path, *rest = "";
    size_t hn = pn, rn = 0;
    if (kind == L7_PATH_FULL) {
        head = value;
        hn = strlen(value);
    } else if (kind == L7_PATH_PREFIX) {
        if (!prefix || prefix_len > pn || memcmp(path, prefix, prefix_len) != 0) return -EINVAL;
        /* Gateway API's table: the replacement's trailing '/' is dropped, the rest of the path is kept, and
         * an empty result is "/". */
        head = value;
        hn = strlen(value);
        while (hn > 0 && head[hn - 1] == '/')
            hn--;
        rest = path + prefix_len;
        rn = pn - prefix_len;
    } else if (kind == L7_PATH_RAW_PREFIX) {
        /* Envoy's prefix_rewrite: the matched part replaced as written, nothing else touched. */
        if (!prefix || prefix_len > pn || strncasecmp(path, prefix, prefix_len) != 0) return -EINVAL;
        head = value;
        hn = strlen(value);
        rest = path + prefix_len;
        rn = pn - prefix_len;
    } else if (kind != L7_PATH_KEEP) {
        return -EINVAL;
    }
    bool slash = hn + rn == 0;
    size_t total = hn + rn + (slash ? 1 : 0) + qn;
    if (total + 1 > n) return -ENOSPC;
    size_t w = 0;
    memcpy(out + w, head, hn);
    w += hn;
    memcpy(out + w, rest, rn);
    w += rn;
    if (slash) out[w++] = '/';
    if (qn) memcpy(out + w, q, qn);
    w += qn;
    out[w] = 0;
    return (int)w;
}

int l7_redirect_location(const struct l7_redirect *rd, const char *prefix, size_t prefix_len,
                         const struct l7_request *req, const char *req_scheme, char *out, size_t n)
{
    if (!rd || !req || !req->path) return -EINVAL;
    const char *scheme = rd->scheme[0] ? rd->scheme : (req_scheme && *req_scheme ? req_scheme : "http");
    /* The authority's host and port ("host", "host:port", "[v6]:port"). */
    const char *a = req->authority ? req->authority : "";
    size_t an = strlen(a), hn = an;
    const char *aport = NULL;
    if (a[0] == '[') {
        const char *rb = strchr(a, ']');
        if (rb) {
            hn = (size_t)(rb - a) + 1;
            if (rb[1] == ':') aport = rb + 2;
        }
    } else {
        const char *colon = strrchr(a, ':');
        if (colon) {
            hn = (size_t)(colon - a);
            aport = colon + 1;
        }
    }
    char host[300];
    if (rd->hostname[0])
        snprintf(host, sizeof(host), "%s", rd->hostname);
    else if (hn < sizeof(host))
        snprintf(host, sizeof(host), "%.*s", (int)hn, a);
    else
        return -EINVAL;
    /* Gateway API: an unset port is the request's when the scheme is kept, else the new scheme's well-known
     * port; a well-known port of the scheme is left out of Location. */
    unsigned port = rd->port;
    if (!port && !rd->scheme[0] && aport && *aport) {
        char *end;
        unsigned long p = strtoul(aport, &end, 10);
        if (*end || p == 0 || p > 65535) return -EINVAL; /* the authority's port is not a port */
        port = (unsigned)p;
    }
    unsigned dflt = strcmp(scheme, "https") == 0 ? 443 : 80;
    char portbuf[16] = "";
    if (port && port != dflt) snprintf(portbuf, sizeof(portbuf), ":%u", port);
    int w = snprintf(out, n, "%s://%s%s", scheme, host, portbuf);
    if (w < 0 || (size_t)w >= n) return -ENOSPC;
    int pl = l7_rewrite_path(rd->path_kind, rd->path, prefix, prefix_len, req->path, req->path_len, out + w,
                             n - (size_t)w);
    if (pl < 0) return pl;
    return w + pl;
}

/* ---- VirtualService helpers ---- */

static bool origin_match(const struct l7_origin *o, const char *origin, size_t len)
{
    size_t vn = strlen(o->value);
    if (o->type == 0) return vn == len && memcmp(o->value, origin, len) == 0;
    if (o->type == 1) return vn <= len && memcmp(o->value, origin, vn) == 0;
    /* Envoy's allow_origin_string_match safe_regex: a full match, as every zmesh regex. */
    return o->type == 2 && o->regex && re_full((const pcre2_code *)o->regex, origin, len);
}

bool l7_cors_origin_allowed(const struct l7_cors *c, const char *origin, size_t len)
{
    if (!c) return false;
    /* Envoy's isOriginAllowed: a matcher that matches "*" allows every origin. */
    for (size_t i = 0; i < c->n_origins; i++)
        if (origin_match(&c->origins[i], "*", 1) || origin_match(&c->origins[i], origin, len)) return true;
    return false;
}

int l7_regex_compile_rewrite(const char *pattern, struct l7_regex **out, char *err, size_t errlen)
{
    *out = NULL;
    pcre2_code *re = NULL;
    /* Not anchored: Envoy's regex_rewrite (RE2::GlobalReplace) replaces every match within the path. */
    int rc = re_compile_as(pattern, false, &re, err, errlen);
    if (rc < 0) return rc;
    *out = (struct l7_regex *)re;
    return 0;
}

void l7_regex_free(struct l7_regex *re)
{
    pcre2_code_free((pcre2_code *)re);
}

int l7_rewrite_path_regex(const struct l7_regex *re, const char *sub, const char *path, size_t path_len,
                          char *out, size_t n)
{
    if (!re || n == 0) return -EINVAL;
    const char *q = memchr(path, '?', path_len);
    size_t pn = q ? (size_t)(q - path) : path_len, qn = q ? path_len - pn : 0;
    /* RE2's rewrite string (\0..\9 back-references, "\\" a backslash) in PCRE2's syntax (${N}, "$$"). */
    char rep[2 * L7_MAX_STRING + 16];
    size_t w = 0, sl = strlen(sub);
    for (size_t i = 0; i < sl; i++) {
        if (w + 5 > sizeof(rep)) return -ENOSPC;
        if (sub[i] == '\\' && i + 1 < sl && sub[i + 1] >= '0' && sub[i + 1] <= '9') {
            w += (size_t)snprintf(rep + w, sizeof(rep) - w, "${%c}", sub[i + 1]);
            i++;
        } else if (sub[i] == '\\' && i + 1 < sl && sub[i + 1] == '\\') {
            rep[w++] = '\\';
            i++;
        } else if (sub[i] == '$') {
            rep[w++] = '$';
            rep[w++] = '$';
        } else {
            rep[w++] = sub[i];
        }
    }
    pcre2_match_data *md = pcre2_match_data_create_from_pattern((const pcre2_code *)re, NULL);
    if (!md) return -ENOMEM;
    PCRE2_SIZE outlen = n;
    int rc = pcre2_substitute((const pcre2_code *)re, (PCRE2_SPTR)path, pn, 0, PCRE2_SUBSTITUTE_GLOBAL, md,
                              re_mctx, (PCRE2_SPTR)rep, w, (PCRE2_UCHAR *)out, &outlen);
    pcre2_match_data_free(md);
    if (rc == PCRE2_ERROR_NOMEMORY) return -ENOSPC;
    if (rc < 0) return -EINVAL;
    /* The query is kept as Envoy keeps it: regex_rewrite applies to the path only. */
    if (outlen + qn + 1 > n) return -ENOSPC;
    if (qn) memcpy(out + outlen, q, qn);
    out[outlen + qn] = 0;
    return (int)(outlen + qn);
}

bool l7_grpc_content_type(const char *v)
{
    static const char ct[] = "application/grpc";
    return !strncmp(v, ct, sizeof(ct) - 1) &&
           (!v[sizeof(ct) - 1] || v[sizeof(ct) - 1] == '+' || v[sizeof(ct) - 1] == ';');
}
