/* HTTPRoute, GRPCRoute and targeted AuthorizationPolicy manifests to zmesh.v1 L7 resources. */
#include "zmeshd/l7.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mesh/l7.h"
#include "mesh/l7authz.h"
#include "zmesh/l7.pb-c.h"
#include "zmeshd/l7_conv.h"
#include "zmeshd/vs.h"
#include "zmeshd/destination_rule.h"
#include "zmeshd/request_authentication.h"

#define GATEWAY_GROUP "gateway.networking.k8s.io"

static bool bad(const struct conv *c)
{
    return c->failed || c->oom;
}

static void finding(struct conv *c, enum manifest_level lvl, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void vfinding(struct conv *c, enum manifest_level lvl, const char *field, const char *fmt, va_list ap)
{
    char msg[512];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    struct manifest_finding f = {.level = lvl, .src = *c->src, .field = field, .message = msg};
    if (lvl == MANIFEST_ERROR) c->failed = true;
    manifest_finding_emit(c->report, c->ud, &f);
}

static void finding(struct conv *c, enum manifest_level lvl, const char *field, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfinding(c, lvl, field, fmt, ap);
    va_end(ap);
}

void l7c_fld(char *buf, size_t n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, n, fmt, ap);
    va_end(ap);
}

static void *alloc(struct conv *c, size_t n)
{
    void *p = l7_arena_alloc(&c->a, n ? n : 1);
    if (!p) c->oom = true;
    return p;
}

static char *dup(struct conv *c, const char *s)
{
    char *d = l7_arena_strndup(&c->a, s, strlen(s));
    if (!d) c->oom = true;
    return d;
}

/* Every key of obj not in allowed is a WARN (dropped). */
static void unknown_keys(struct conv *c, const json_t *obj, const char *path, const char *const *allowed)
{
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)obj, k, v)
    {
        bool ok = false;
        for (size_t i = 0; allowed[i]; i++)
            if (strcmp(k, allowed[i]) == 0) ok = true;
        if (!ok) {
            char f[256];
            l7c_fld(f, sizeof(f), "%s%s%s", path, *path ? "." : "", k);
            finding(c, MANIFEST_WARN, f, "unknown field, ignored");
        }
    }
}

/* obj[key] when it has JSON type t: 1 and *out when present, 0 when absent or null, -1 (ERROR "expected <what>"
 * reported) when it has another type. */
static int get_typed(struct conv *c, const json_t *obj, const char *key, const char *path, json_type t,
                     const char *what, json_t **out)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return 0;
    if (json_typeof(v) != t) {
        char f[256];
        l7c_fld(f, sizeof(f), "%s%s%s", path, *path ? "." : "", key);
        finding(c, MANIFEST_ERROR, f, "expected %s", what);
        return -1;
    }
    *out = v;
    return 1;
}

static int get_str(struct conv *c, const json_t *obj, const char *key, const char *path, const char **out)
{
    json_t *v = NULL;
    int rc = get_typed(c, obj, key, path, JSON_STRING, "a string", &v);
    if (rc == 1) *out = json_string_value(v);
    return rc;
}

static int get_obj(struct conv *c, const json_t *obj, const char *key, const char *path, json_t **out)
{
    return get_typed(c, obj, key, path, JSON_OBJECT, "a mapping", out);
}

static int get_list(struct conv *c, const json_t *obj, const char *key, const char *path, json_t **out)
{
    return get_typed(c, obj, key, path, JSON_ARRAY, "a list", out);
}

/* An integer field in [lo, hi]: 1 and *out, 0 absent, -1 reported. */
static int get_int(struct conv *c, const json_t *obj, const char *key, const char *path, long long lo,
                   long long hi, long long *out)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return 0;
    char f[256];
    l7c_fld(f, sizeof(f), "%s%s%s", path, *path ? "." : "", key);
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi) {
        finding(c, MANIFEST_ERROR, f, "expected an integer %lld-%lld", lo, hi);
        return -1;
    }
    *out = json_integer_value(v);
    return 1;
}

/* A list of strings into a NULL-free array in the arena. */
static int get_strs(struct conv *c, const json_t *obj, const char *key, const char *path, char ***out,
                    size_t *n)
{
    json_t *l;
    *out = NULL;
    *n = 0;
    int rc = get_list(c, obj, key, path, &l);
    if (rc <= 0) return rc;
    char **v = alloc(c, json_array_size(l) * sizeof(char *));
    if (!v) return -1;
    for (size_t i = 0; i < json_array_size(l); i++) {
        json_t *s = json_array_get(l, i);
        if (!json_is_string(s)) {
            char f[256];
            l7c_fld(f, sizeof(f), "%s%s%s[%zu]", path, *path ? "." : "", key, i);
            finding(c, MANIFEST_ERROR, f, "expected a string");
            return -1;
        }
        if (!(v[i] = dup(c, json_string_value(s)))) return -1;
    }
    *out = v;
    *n = json_array_size(l);
    return 1;
}

int l7_gateway_duration_ms(const char *s, uint64_t *ms)
{
    uint64_t total = 0;
    int terms = 0;
    const char *p = s;
    if (!s || !*s) return -EINVAL;
    while (*p) {
        uint64_t v = 0;
        int digits = 0;
        while (isdigit((unsigned char)*p)) {
            v = v * 10 + (uint64_t)(*p++ - '0');
            if (++digits > 5) return -EINVAL;
        }
        if (!digits) return -EINVAL;
        uint64_t mul;
        if (p[0] == 'm' && p[1] == 's') {
            mul = 1;
            p += 2;
        } else if (*p == 'h') {
            mul = 3600000;
            p++;
        } else if (*p == 'm') {
            mul = 60000;
            p++;
        } else if (*p == 's') {
            mul = 1000;
            p++;
        } else {
            return -EINVAL;
        }
        if (++terms > 4) return -EINVAL;
        total += v * mul;
    }
    *ms = total;
    return 0;
}

int l7_istio_duration_ms(const char *s, uint64_t *ms)
{
    /* Go's time.ParseDuration without the sign: one or more <decimal>[.<decimal>]<unit> terms. */
    static const struct {
        const char *u;
        double ms;
    } units[] = {{"ns", 1e-6}, {"us", 1e-3}, {"\xc2\xb5s", 1e-3}, {"ms", 1},
                 {"s", 1000},  {"m", 60000}, {"h", 3600000}};
    if (!s || !*s) return -EINVAL;
    if (!strcmp(s, "0")) {
        *ms = 0;
        return 0;
    }
    double total = 0;
    const char *p = s;
    while (*p) {
        const char *start = p;
        double v = 0, scale = 1;
        bool digits = false;
        while (isdigit((unsigned char)*p)) {
            v = v * 10 + (*p++ - '0');
            digits = true;
        }
        if (*p == '.') {
            p++;
            while (isdigit((unsigned char)*p)) {
                scale /= 10;
                v += (*p++ - '0') * scale;
                digits = true;
            }
        }
        if (!digits || p == start) return -EINVAL;
        size_t best = 0;
        double mul = 0;
        for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
            size_t ul = strlen(units[i].u);
            if (!strncmp(p, units[i].u, ul) && ul > best) {
                best = ul;
                mul = units[i].ms;
            }
        }
        if (!best) return -EINVAL;
        p += best;
        total += v * mul;
        if (total > 1e15) return -EINVAL;
    }
    *ms = (uint64_t)total;
    return 0;
}

/* metadata: name (required), namespace (default "default"), creationTimestamp (RFC 3339, optional). */
static int meta(struct conv *c, const json_t *obj, const char **ns, const char **name, int64_t *created)
{
    json_t *m;
    if (get_obj(c, obj, "metadata", "", &m) <= 0) {
        finding(c, MANIFEST_ERROR, "metadata", "missing");
        return -1;
    }
    *ns = "default";
    *name = NULL;
    if (get_str(c, m, "name", "metadata", name) <= 0 || !**name) {
        if (!c->failed) finding(c, MANIFEST_ERROR, "metadata.name", "missing");
        return -1;
    }
    if (get_str(c, m, "namespace", "metadata", ns) < 0) return -1;
    if (!**ns) *ns = "default";
    const char *ts = NULL;
    *created = 0;
    if (created && get_str(c, m, "creationTimestamp", "metadata", &ts) > 0) {
        struct tm tm;
        memset(&tm, 0, sizeof(tm));
        const char *e = strptime(ts, "%Y-%m-%dT%H:%M:%S", &tm);
        if (!e || (*e && *e != 'Z' && *e != '.' && *e != '+' && *e != '-')) {
            finding(c, MANIFEST_ERROR, "metadata.creationTimestamp", "not an RFC 3339 time: \"%.40s\"", ts);
            return -1;
        }
        *created = (int64_t)timegm(&tm);
    }
    c->ns = *ns;
    return 0;
}

/* ---- routes ---- */

static Zmesh__V1__HeaderModifier *header_mod(struct conv *c, const json_t *o, const char *path)
{
    static const char *const keys[] = {"set", "add", "remove", NULL};
    Zmesh__V1__HeaderModifier *hm = alloc(c, sizeof(*hm));
    if (!hm) return NULL;
    zmesh__v1__header_modifier__init(hm);
    unknown_keys(c, o, path, keys);
    for (int l = 0; l < 2; l++) {
        json_t *lst;
        if (get_list(c, o, l ? "add" : "set", path, &lst) <= 0) continue;
        size_t n = json_array_size(lst);
        Zmesh__V1__HeaderValue **hv = alloc(c, n * sizeof(*hv));
        if (!hv) return NULL;
        for (size_t i = 0; i < n; i++) {
            json_t *e = json_array_get(lst, i);
            char f[256];
            l7c_fld(f, sizeof(f), "%s.%s[%zu]", path, l ? "add" : "set", i);
            const char *name = NULL, *value = "";
            if (!json_is_object(e) || get_str(c, e, "name", f, &name) <= 0 ||
                get_str(c, e, "value", f, &value) < 0) {
                if (!c->failed) finding(c, MANIFEST_ERROR, f, "expected {name, value}");
                return NULL;
            }
            hv[i] = alloc(c, sizeof(**hv));
            if (!hv[i]) return NULL;
            zmesh__v1__header_value__init(hv[i]);
            hv[i]->name = dup(c, name);
            hv[i]->value = dup(c, value);
            if (hv[i]->name)
                for (char *x = hv[i]->name; *x; x++)
                    *x = (char)tolower((unsigned char)*x);
        }
        if (l) {
            hm->add = hv;
            hm->n_add = n;
        } else {
            hm->set = hv;
            hm->n_set = n;
        }
    }
    if (get_strs(c, o, "remove", path, &hm->remove, &hm->n_remove) < 0) return NULL;
    for (size_t i = 0; i < hm->n_remove; i++)
        for (char *x = hm->remove[i]; *x; x++)
            *x = (char)tolower((unsigned char)*x);
    return bad(c) ? NULL : hm;
}

static Zmesh__V1__PathModifier *path_mod(struct conv *c, const json_t *o, const char *path)
{
    static const char *const keys[] = {"type", "replaceFullPath", "replacePrefixMatch", NULL};
    Zmesh__V1__PathModifier *pm = alloc(c, sizeof(*pm));
    if (!pm) return NULL;
    zmesh__v1__path_modifier__init(pm);
    unknown_keys(c, o, path, keys);
    const char *type = NULL, *v = NULL;
    char f[256];
    l7c_fld(f, sizeof(f), "%s.type", path);
    if (get_str(c, o, "type", path, &type) <= 0) {
        if (!c->failed) finding(c, MANIFEST_ERROR, f, "missing");
        return NULL;
    }
    if (strcmp(type, "ReplaceFullPath") == 0) {
        pm->type = ZMESH__V1__PATH_MODIFIER__TYPE__FULL;
        if (get_str(c, o, "replaceFullPath", path, &v) <= 0) {
            l7c_fld(f, sizeof(f), "%s.replaceFullPath", path);
            if (!c->failed) finding(c, MANIFEST_ERROR, f, "missing for type ReplaceFullPath");
            return NULL;
        }
    } else if (strcmp(type, "ReplacePrefixMatch") == 0) {
        pm->type = ZMESH__V1__PATH_MODIFIER__TYPE__PREFIX_MATCH;
        if (get_str(c, o, "replacePrefixMatch", path, &v) <= 0) {
            l7c_fld(f, sizeof(f), "%s.replacePrefixMatch", path);
            if (!c->failed) finding(c, MANIFEST_ERROR, f, "missing for type ReplacePrefixMatch");
            return NULL;
        }
    } else {
        finding(c, MANIFEST_ERROR, f, "expected ReplaceFullPath or ReplacePrefixMatch, got \"%.40s\"", type);
        return NULL;
    }
    pm->value = dup(c, v);
    return pm;
}

/* A backendRef's Service: group "" (or absent) and kind Service (the default) only. */
static Zmesh__V1__BackendRef *backend_ref(struct conv *c, const json_t *o, const char *path, bool weight_ok)
{
    static const char *const keys[] = {"group", "kind",   "name",    "namespace",
                                       "port",  "weight", "filters", NULL};
    static const char *const keys_mirror[] = {"group", "kind", "name", "namespace", "port", NULL};
    unknown_keys(c, o, path, weight_ok ? keys : keys_mirror);
    const char *group = "", *kind = "Service", *name = NULL, *ns = c->ns;
    char f[256];
    if (get_str(c, o, "group", path, &group) < 0 || get_str(c, o, "kind", path, &kind) < 0 ||
        get_str(c, o, "namespace", path, &ns) < 0)
        return NULL;
    if (*group || strcmp(kind, "Service") != 0) {
        l7c_fld(f, sizeof(f), "%s.kind", path);
        finding(c, MANIFEST_ERROR, f, "unsupported backend kind %s%s%s (only Service is supported)", group,
                *group ? "/" : "", kind);
        return NULL;
    }
    if (get_str(c, o, "name", path, &name) <= 0 || !*name) {
        l7c_fld(f, sizeof(f), "%s.name", path);
        if (!c->failed) finding(c, MANIFEST_ERROR, f, "missing");
        return NULL;
    }
    long long port = 0;
    int rc = get_int(c, o, "port", path, 1, 65535, &port);
    if (rc < 0) return NULL;
    if (rc == 0) {
        l7c_fld(f, sizeof(f), "%s.port", path);
        finding(c, MANIFEST_ERROR, f, "missing: a Service backend needs a port");
        return NULL;
    }
    Zmesh__V1__BackendRef *b = alloc(c, sizeof(*b));
    if (!b) return NULL;
    zmesh__v1__backend_ref__init(b);
    b->namespace_ = dup(c, ns);
    b->name = dup(c, name);
    b->port = (uint32_t)port;
    return bad(c) ? NULL : b;
}

static Zmesh__V1__RouteFilter *filter_conv(struct conv *c, const json_t *o, const char *path, bool grpc,
                                           bool backend)
{
    static const char *const keys[] = {"type",
                                       "requestHeaderModifier",
                                       "responseHeaderModifier",
                                       "requestRedirect",
                                       "urlRewrite",
                                       "requestMirror",
                                       "cors",
                                       "extensionRef",
                                       NULL};
    char f[256];
    const char *type = NULL;
    if (!json_is_object(o)) {
        finding(c, MANIFEST_ERROR, path, "expected a mapping");
        return NULL;
    }
    unknown_keys(c, o, path, keys);
    l7c_fld(f, sizeof(f), "%s.type", path);
    if (get_str(c, o, "type", path, &type) <= 0) {
        if (!c->failed) finding(c, MANIFEST_ERROR, f, "missing");
        return NULL;
    }
    Zmesh__V1__RouteFilter *rf = alloc(c, sizeof(*rf));
    if (!rf) return NULL;
    zmesh__v1__route_filter__init(rf);
    bool hdr = strcmp(type, "RequestHeaderModifier") == 0 || strcmp(type, "ResponseHeaderModifier") == 0;
    bool supported =
        hdr ||
        (!backend && (strcmp(type, "RequestMirror") == 0 ||
                      (!grpc && (strcmp(type, "RequestRedirect") == 0 || strcmp(type, "URLRewrite") == 0))));
    if (!supported) {
        /* Istio's status text for a filter it does not translate (conversion.go). */
        finding(c, MANIFEST_ERROR, f, "unsupported filter type \"%.40s\"%s", type,
                strcmp(type, "CORS") == 0 ? " (CORS is not implemented by zmesh's waypoint yet)" : "");
        return NULL;
    }
    json_t *body;
    const char *key = strcmp(type, "RequestHeaderModifier") == 0    ? "requestHeaderModifier"
                      : strcmp(type, "ResponseHeaderModifier") == 0 ? "responseHeaderModifier"
                      : strcmp(type, "RequestRedirect") == 0        ? "requestRedirect"
                      : strcmp(type, "URLRewrite") == 0             ? "urlRewrite"
                                                                    : "requestMirror";
    char bp[256];
    l7c_fld(bp, sizeof(bp), "%s.%s", path, key);
    if (get_obj(c, o, key, path, &body) <= 0) {
        if (!c->failed) finding(c, MANIFEST_ERROR, bp, "missing for type %s", type);
        return NULL;
    }
    if (strcmp(key, "requestHeaderModifier") == 0) {
        rf->kind_case = ZMESH__V1__ROUTE_FILTER__KIND_REQUEST_HEADER_MODIFIER;
        rf->request_header_modifier = header_mod(c, body, bp);
        return rf->request_header_modifier ? rf : NULL;
    }
    if (strcmp(key, "responseHeaderModifier") == 0) {
        rf->kind_case = ZMESH__V1__ROUTE_FILTER__KIND_RESPONSE_HEADER_MODIFIER;
        rf->response_header_modifier = header_mod(c, body, bp);
        return rf->response_header_modifier ? rf : NULL;
    }
    if (strcmp(key, "requestRedirect") == 0) {
        static const char *const rk[] = {"scheme", "hostname", "path", "port", "statusCode", NULL};
        unknown_keys(c, body, bp, rk);
        Zmesh__V1__RequestRedirect *rd = alloc(c, sizeof(*rd));
        if (!rd) return NULL;
        zmesh__v1__request_redirect__init(rd);
        const char *scheme = "", *host = "";
        long long port = 0, status = 302;
        json_t *p;
        if (get_str(c, body, "scheme", bp, &scheme) < 0 || get_str(c, body, "hostname", bp, &host) < 0 ||
            get_int(c, body, "port", bp, 1, 65535, &port) < 0 ||
            get_int(c, body, "statusCode", bp, 100, 599, &status) < 0)
            return NULL;
        if (status != 301 && status != 302 && status != 303 && status != 307 && status != 308) {
            l7c_fld(f, sizeof(f), "%s.statusCode", bp);
            finding(c, MANIFEST_ERROR, f, "expected 301, 302, 303, 307 or 308, got %lld", status);
            return NULL;
        }
        rd->scheme = dup(c, scheme);
        rd->hostname = dup(c, host);
        rd->port = (uint32_t)port;
        rd->status_code = (uint32_t)status;
        int rc = get_obj(c, body, "path", bp, &p);
        if (rc < 0) return NULL;
        if (rc > 0) {
            l7c_fld(f, sizeof(f), "%s.path", bp);
            if (!(rd->path = path_mod(c, p, f))) return NULL;
        }
        rf->kind_case = ZMESH__V1__ROUTE_FILTER__KIND_REQUEST_REDIRECT;
        rf->request_redirect = rd;
        return rf;
    }
    if (strcmp(key, "urlRewrite") == 0) {
        static const char *const uk[] = {"hostname", "path", NULL};
        unknown_keys(c, body, bp, uk);
        Zmesh__V1__URLRewrite *rw = alloc(c, sizeof(*rw));
        if (!rw) return NULL;
        zmesh__v1__urlrewrite__init(rw);
        const char *host = "";
        json_t *p;
        if (get_str(c, body, "hostname", bp, &host) < 0) return NULL;
        rw->hostname = dup(c, host);
        int rc = get_obj(c, body, "path", bp, &p);
        if (rc < 0) return NULL;
        if (rc > 0) {
            l7c_fld(f, sizeof(f), "%s.path", bp);
            if (!(rw->path = path_mod(c, p, f))) return NULL;
        }
        rf->kind_case = ZMESH__V1__ROUTE_FILTER__KIND_URL_REWRITE;
        rf->url_rewrite = rw;
        return rf;
    }
    static const char *const mk[] = {"backendRef", "percent", "fraction", NULL};
    unknown_keys(c, body, bp, mk);
    Zmesh__V1__RequestMirror *m = alloc(c, sizeof(*m));
    if (!m) return NULL;
    zmesh__v1__request_mirror__init(m);
    json_t *br, *fr;
    l7c_fld(f, sizeof(f), "%s.backendRef", bp);
    if (get_obj(c, body, "backendRef", bp, &br) <= 0) {
        if (!c->failed) finding(c, MANIFEST_ERROR, f, "missing");
        return NULL;
    }
    if (!(m->backend = backend_ref(c, br, f, false))) return NULL;
    long long pct = -1;
    int rp = get_int(c, body, "percent", bp, 0, 100, &pct), rfr = get_obj(c, body, "fraction", bp, &fr);
    if (rp < 0 || rfr < 0) return NULL;
    if (rp > 0 && rfr > 0) {
        finding(c, MANIFEST_ERROR, bp, "percent and fraction are mutually exclusive");
        return NULL;
    }
    m->numerator = m->denominator = 1;
    if (rp > 0) {
        m->numerator = (uint32_t)pct;
        m->denominator = 100;
    } else if (rfr > 0) {
        long long num = 0, den = 100;
        l7c_fld(f, sizeof(f), "%s.fraction", bp);
        if (get_int(c, fr, "numerator", f, 0, 0x7fffffff, &num) <= 0 ||
            get_int(c, fr, "denominator", f, 1, 0x7fffffff, &den) < 0) {
            if (!c->failed) finding(c, MANIFEST_ERROR, f, "numerator missing");
            return NULL;
        }
        if (num > den) {
            finding(c, MANIFEST_ERROR, f, "numerator %lld larger than denominator %lld", num, den);
            return NULL;
        }
        m->numerator = (uint32_t)num;
        m->denominator = (uint32_t)den;
    }
    rf->kind_case = ZMESH__V1__ROUTE_FILTER__KIND_REQUEST_MIRROR;
    rf->request_mirror = m;
    return rf;
}

static int match_type(struct conv *c, const char *type, const char *field, bool path,
                      Zmesh__V1__StringMatch__Type *out)
{
    if (strcmp(type, "Exact") == 0)
        *out = ZMESH__V1__STRING_MATCH__TYPE__EXACT;
    else if (strcmp(type, "RegularExpression") == 0)
        *out = ZMESH__V1__STRING_MATCH__TYPE__REGEX;
    else if (path && strcmp(type, "PathPrefix") == 0)
        *out = ZMESH__V1__STRING_MATCH__TYPE__PREFIX;
    else {
        finding(c, MANIFEST_ERROR, field, "expected %s, got \"%.40s\"",
                path ? "Exact, PathPrefix or RegularExpression" : "Exact or RegularExpression", type);
        return -1;
    }
    return 0;
}

static int named_list(struct conv *c, const json_t *o, const char *key, const char *path, bool header,
                      Zmesh__V1__NamedMatch ***out, size_t *n)
{
    json_t *l;
    *n = 0;
    int rc = get_list(c, o, key, path, &l);
    if (rc <= 0) return rc;
    Zmesh__V1__NamedMatch **v = alloc(c, json_array_size(l) * sizeof(*v));
    if (!v) return -1;
    for (size_t i = 0; i < json_array_size(l); i++) {
        json_t *e = json_array_get(l, i);
        char f[256], tf[280];
        l7c_fld(f, sizeof(f), "%s.%s[%zu]", path, key, i);
        static const char *const keys[] = {"type", "name", "value", NULL};
        const char *type = "Exact", *name = NULL, *value = NULL;
        if (!json_is_object(e)) {
            finding(c, MANIFEST_ERROR, f, "expected a mapping");
            return -1;
        }
        unknown_keys(c, e, f, keys);
        if (get_str(c, e, "type", f, &type) < 0 || get_str(c, e, "name", f, &name) <= 0 ||
            get_str(c, e, "value", f, &value) <= 0) {
            if (!c->failed) finding(c, MANIFEST_ERROR, f, "expected {type, name, value}");
            return -1;
        }
        v[i] = alloc(c, sizeof(**v));
        if (!v[i]) return -1;
        zmesh__v1__named_match__init(v[i]);
        l7c_fld(tf, sizeof(tf), "%s.type", f);
        if (match_type(c, type, tf, false, &v[i]->type) < 0) return -1;
        if (v[i]->type == ZMESH__V1__STRING_MATCH__TYPE__REGEX) {
            char err[300];
            l7c_fld(tf, sizeof(tf), "%s.value", f);
            if (l7_regex_check(value, err, sizeof(err)) < 0) {
                finding(c, MANIFEST_ERROR, tf, "%s", err);
                return -1;
            }
        }
        v[i]->name = dup(c, name);
        v[i]->value = dup(c, value);
        if (header && v[i]->name)
            for (char *x = v[i]->name; *x; x++)
                *x = (char)tolower((unsigned char)*x);
    }
    *out = v;
    *n = json_array_size(l);
    return bad(c) ? -1 : 1;
}

static Zmesh__V1__RouteMatch *match_conv(struct conv *c, const json_t *o, const char *path, bool grpc)
{
    static const char *const hk[] = {"path", "headers", "queryParams", "method", NULL};
    static const char *const gk[] = {"method", "headers", NULL};
    Zmesh__V1__RouteMatch *m = alloc(c, sizeof(*m));
    char f[256];
    if (!m) return NULL;
    zmesh__v1__route_match__init(m);
    if (!json_is_object(o)) {
        finding(c, MANIFEST_ERROR, path, "expected a mapping");
        return NULL;
    }
    unknown_keys(c, o, path, grpc ? gk : hk);
    if (named_list(c, o, "headers", path, true, &m->headers, &m->n_headers) < 0) return NULL;
    if (grpc) {
        json_t *gm;
        int rc = get_obj(c, o, "method", path, &gm);
        if (rc < 0) return NULL;
        if (rc > 0) {
            static const char *const mk[] = {"type", "service", "method", NULL};
            const char *type = "Exact", *svc = "", *meth = "";
            l7c_fld(f, sizeof(f), "%s.method", path);
            unknown_keys(c, gm, f, mk);
            if (get_str(c, gm, "type", f, &type) < 0 || get_str(c, gm, "service", f, &svc) < 0 ||
                get_str(c, gm, "method", f, &meth) < 0)
                return NULL;
            char tf[280];
            l7c_fld(tf, sizeof(tf), "%s.type", f);
            if (match_type(c, type, tf, false, &m->grpc_type) < 0) return NULL;
            if (!*svc && !*meth) {
                finding(c, MANIFEST_ERROR, f, "one or both of service and method must be set");
                return NULL;
            }
            m->grpc_service = dup(c, svc);
            m->grpc_method = dup(c, meth);
        }
        return bad(c) ? NULL : m;
    }
    if (named_list(c, o, "queryParams", path, false, &m->query_params, &m->n_query_params) < 0) return NULL;
    const char *method = "";
    if (get_str(c, o, "method", path, &method) < 0) return NULL;
    m->method = dup(c, method);
    /* Gateway API's default: PathPrefix "/". */
    const char *type = "PathPrefix", *value = "/";
    json_t *p;
    int rc = get_obj(c, o, "path", path, &p);
    if (rc < 0) return NULL;
    l7c_fld(f, sizeof(f), "%s.path", path);
    if (rc > 0) {
        static const char *const pk[] = {"type", "value", NULL};
        unknown_keys(c, p, f, pk);
        if (get_str(c, p, "type", f, &type) < 0 || get_str(c, p, "value", f, &value) < 0) return NULL;
    }
    m->path = alloc(c, sizeof(*m->path));
    if (!m->path) return NULL;
    zmesh__v1__string_match__init(m->path);
    char tf[280];
    l7c_fld(tf, sizeof(tf), "%s.type", f);
    if (match_type(c, type, tf, true, &m->path->type) < 0) return NULL;
    if (m->path->type == ZMESH__V1__STRING_MATCH__TYPE__REGEX) {
        char err[300];
        l7c_fld(tf, sizeof(tf), "%s.value", f);
        if (l7_regex_check(value, err, sizeof(err)) < 0) {
            finding(c, MANIFEST_ERROR, tf, "%s", err);
            return NULL;
        }
    }
    m->path->value = dup(c, value);
    return bad(c) ? NULL : m;
}

static Zmesh__V1__RouteRule *rule_conv(struct conv *c, const json_t *o, const char *path, bool grpc)
{
    static const char *const keys[] = {
        "name", "matches", "filters", "backendRefs", "timeouts", "retry", "sessionPersistence", NULL};
    char f[256];
    Zmesh__V1__RouteRule *r = alloc(c, sizeof(*r));
    if (!r) return NULL;
    zmesh__v1__route_rule__init(r);
    if (!json_is_object(o)) {
        finding(c, MANIFEST_ERROR, path, "expected a mapping");
        return NULL;
    }
    unknown_keys(c, o, path, keys);
    static const char *const dropped[] = {"retry", "sessionPersistence", NULL};
    for (size_t i = 0; dropped[i]; i++)
        if (json_object_get(o, dropped[i])) {
            l7c_fld(f, sizeof(f), "%s.%s", path, dropped[i]);
            finding(c, MANIFEST_WARN, f, "not supported by zmesh's waypoint yet, ignored");
        }
    const char *name = "";
    if (get_str(c, o, "name", path, &name) < 0) return NULL;
    r->name = dup(c, name);
    json_t *l;
    int rc = get_list(c, o, "matches", path, &l);
    if (rc < 0) return NULL;
    size_t nm = rc > 0 ? json_array_size(l) : 0;
    if (nm == 0 && !grpc) {
        /* No matches: Gateway API's one default match, PathPrefix "/". */
        json_t *def = json_object();
        r->matches = alloc(c, sizeof(*r->matches));
        l7c_fld(f, sizeof(f), "%s.matches[0]", path);
        if (!def || !r->matches || !(r->matches[0] = match_conv(c, def, f, grpc))) {
            json_decref(def);
            return NULL;
        }
        json_decref(def);
        r->n_matches = 1;
    } else if (nm == 0) {
        /* A GRPCRoute rule without matches matches every request. */
        r->matches = alloc(c, sizeof(*r->matches));
        if (!r->matches || !(r->matches[0] = alloc(c, sizeof(**r->matches)))) return NULL;
        zmesh__v1__route_match__init(r->matches[0]);
        r->n_matches = 1;
    } else {
        r->matches = alloc(c, nm * sizeof(*r->matches));
        if (!r->matches) return NULL;
        for (size_t i = 0; i < nm; i++) {
            l7c_fld(f, sizeof(f), "%s.matches[%zu]", path, i);
            if (!(r->matches[i] = match_conv(c, json_array_get(l, i), f, grpc))) return NULL;
        }
        r->n_matches = nm;
    }
    if ((rc = get_list(c, o, "filters", path, &l)) < 0) return NULL;
    if (rc > 0) {
        r->filters = alloc(c, json_array_size(l) * sizeof(*r->filters));
        if (!r->filters) return NULL;
        for (size_t i = 0; i < json_array_size(l); i++) {
            l7c_fld(f, sizeof(f), "%s.filters[%zu]", path, i);
            if (!(r->filters[i] = filter_conv(c, json_array_get(l, i), f, grpc, false))) return NULL;
        }
        r->n_filters = json_array_size(l);
    }
    if ((rc = get_list(c, o, "backendRefs", path, &l)) < 0) return NULL;
    if (rc > 0) {
        r->backends = alloc(c, json_array_size(l) * sizeof(*r->backends));
        if (!r->backends) return NULL;
        for (size_t i = 0; i < json_array_size(l); i++) {
            json_t *e = json_array_get(l, i);
            l7c_fld(f, sizeof(f), "%s.backendRefs[%zu]", path, i);
            if (!json_is_object(e)) {
                finding(c, MANIFEST_ERROR, f, "expected a mapping");
                return NULL;
            }
            Zmesh__V1__Backend *b = alloc(c, sizeof(*b));
            if (!b) return NULL;
            zmesh__v1__backend__init(b);
            if (!(b->service = backend_ref(c, e, f, true))) return NULL;
            long long w = 1; /* Gateway API's default weight */
            if (get_int(c, e, "weight", f, 0, 1000000, &w) < 0) return NULL;
            b->weight = (uint32_t)w;
            json_t *bl;
            int brc = get_list(c, e, "filters", f, &bl);
            if (brc < 0) return NULL;
            if (brc > 0) {
                b->filters = alloc(c, json_array_size(bl) * sizeof(*b->filters));
                if (!b->filters) return NULL;
                for (size_t j = 0; j < json_array_size(bl); j++) {
                    char bf[300];
                    l7c_fld(bf, sizeof(bf), "%s.filters[%zu]", f, j);
                    if (!(b->filters[j] = filter_conv(c, json_array_get(bl, j), bf, grpc, true))) return NULL;
                }
                b->n_filters = json_array_size(bl);
            }
            r->backends[i] = b;
        }
        r->n_backends = json_array_size(l);
    }
    json_t *t;
    if ((rc = get_obj(c, o, "timeouts", path, &t)) < 0) return NULL;
    if (rc > 0) {
        static const char *const tk[] = {"request", "backendRequest", NULL};
        l7c_fld(f, sizeof(f), "%s.timeouts", path);
        if (grpc) {
            finding(c, MANIFEST_ERROR, f, "a GRPCRoute rule has no timeouts");
            return NULL;
        }
        unknown_keys(c, t, f, tk);
        r->timeouts = alloc(c, sizeof(*r->timeouts));
        if (!r->timeouts) return NULL;
        zmesh__v1__timeouts__init(r->timeouts);
        for (int i = 0; i < 2; i++) {
            const char *d = NULL, *k = i ? "backendRequest" : "request";
            char tf[280];
            l7c_fld(tf, sizeof(tf), "%s.%s", f, k);
            if (get_str(c, t, k, f, &d) < 0) return NULL;
            uint64_t ms = 0;
            if (d && l7_gateway_duration_ms(d, &ms) < 0) {
                finding(c, MANIFEST_ERROR, tf,
                        "not a Gateway API duration (^([0-9]{1,5}(h|m|s|ms)){1,4}$): \"%.40s\"", d);
                return NULL;
            }
            if (i)
                r->timeouts->backend_request_ms = ms;
            else
                r->timeouts->request_ms = ms;
        }
    }
    return bad(c) ? NULL : r;
}

/* Packs msg, then has the waypoint's model compile it: what zmeshd serves is what the waypoint takes. */
static int pack_and_check(struct conv *c, const ProtobufCMessage *msg, const char *type_url, const char *name,
                          uint8_t **pb, size_t *len)
{
    size_t n = protobuf_c_message_get_packed_size(msg);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf) return -ENOMEM;
    protobuf_c_message_pack(msg, buf);
    struct l7_builder *b = l7_builder_new();
    if (!b) {
        free(buf);
        return -ENOMEM;
    }
    char err[512];
    int rc = l7_builder_add(b, type_url, name, buf, n, err, sizeof(err));
    l7_builder_free(b);
    if (rc < 0) {
        free(buf);
        if (rc == -ENOMEM) return rc;
        finding(c, MANIFEST_ERROR, "spec", "%s", err);
        return -EINVAL;
    }
    *pb = buf;
    *len = n;
    return 0;
}

int l7_convert_route(const json_t *obj, const struct manifest_src *src, uint8_t **pb, size_t *len, char *name,
                     size_t name_n, manifest_report_fn report, void *ud)
{
    struct conv c = {.src = src, .report = report, .ud = ud};
    int rc = -EINVAL;
    *pb = NULL;
    *len = 0;
    if (!json_is_object(obj)) {
        finding(&c, MANIFEST_ERROR, "", "expected a mapping");
        return -EINVAL;
    }
    static const char *const top[] = {"apiVersion", "kind", "metadata", "spec", "status", NULL};
    unknown_keys(&c, obj, "", top);
    const char *api = "", *kind = "", *ns, *nm;
    int64_t created = 0;
    if (get_str(&c, obj, "apiVersion", "", &api) < 0 || get_str(&c, obj, "kind", "", &kind) < 0) goto out;
    bool grpc = strcmp(kind, "GRPCRoute") == 0;
    if (!grpc && strcmp(kind, "HTTPRoute") != 0) {
        finding(&c, MANIFEST_ERROR, "kind", "expected HTTPRoute or GRPCRoute, got \"%.40s\"", kind);
        goto out;
    }
    if (strcmp(api, GATEWAY_GROUP "/v1") != 0 && !(strcmp(api, GATEWAY_GROUP "/v1beta1") == 0 && !grpc)) {
        finding(&c, MANIFEST_ERROR, "apiVersion", "expected %s/v1%s, got \"%.60s\"", GATEWAY_GROUP,
                grpc ? "" : " or v1beta1", api);
        goto out;
    }
    if (meta(&c, obj, &ns, &nm, &created) < 0) goto out;
    if (snprintf(name, name_n, "%s/%s", ns, nm) >= (int)name_n) {
        finding(&c, MANIFEST_ERROR, "metadata.name", "namespace/name longer than %zu bytes", name_n - 1);
        goto out;
    }
    json_t *spec;
    if (get_obj(&c, obj, "spec", "", &spec) <= 0) {
        if (!c.failed) finding(&c, MANIFEST_ERROR, "spec", "missing");
        goto out;
    }
    static const char *const sk[] = {"parentRefs", "hostnames", "rules", NULL};
    unknown_keys(&c, spec, "spec", sk);
    Zmesh__V1__HTTPRoute m = ZMESH__V1__HTTPROUTE__INIT;
    m.kind = grpc ? ZMESH__V1__HTTPROUTE__KIND__GRPC : ZMESH__V1__HTTPROUTE__KIND__HTTP;
    m.namespace_ = (char *)ns;
    m.name = (char *)nm;
    m.creation_timestamp = created;
    json_t *l;
    int r = get_list(&c, spec, "parentRefs", "spec", &l);
    if (r < 0) goto out;
    if (r > 0) {
        m.parents = alloc(&c, json_array_size(l) * sizeof(*m.parents));
        if (!m.parents) goto nomem;
        for (size_t i = 0; i < json_array_size(l); i++) {
            json_t *p = json_array_get(l, i);
            char f[64];
            l7c_fld(f, sizeof(f), "spec.parentRefs[%zu]", i);
            static const char *const pk[] = {"group",       "kind", "namespace", "name",
                                             "sectionName", "port", NULL};
            if (!json_is_object(p)) {
                finding(&c, MANIFEST_ERROR, f, "expected a mapping");
                goto out;
            }
            unknown_keys(&c, p, f, pk);
            /* parentRef defaults: group gateway.networking.k8s.io, kind Gateway. */
            const char *group = GATEWAY_GROUP, *pkind = "Gateway", *pns = ns, *pname = NULL, *section = NULL;
            long long port = 0;
            if (get_str(&c, p, "group", f, &group) < 0 || get_str(&c, p, "kind", f, &pkind) < 0 ||
                get_str(&c, p, "namespace", f, &pns) < 0 || get_str(&c, p, "sectionName", f, &section) < 0 ||
                get_int(&c, p, "port", f, 1, 65535, &port) < 0)
                goto out;
            if (get_str(&c, p, "name", f, &pname) <= 0 || !*pname) {
                char nf[80];
                l7c_fld(nf, sizeof(nf), "%s.name", f);
                if (!c.failed) finding(&c, MANIFEST_ERROR, nf, "missing");
                goto out;
            }
            if (*group || strcmp(pkind, "Service") != 0) {
                if (strcmp(group, GATEWAY_GROUP) == 0 && strcmp(pkind, "Gateway") == 0)
                    finding(&c, MANIFEST_INFO, f,
                            "parent Gateway %s/%s is not a waypoint attachment, skipped", pns, pname);
                else
                    finding(&c, MANIFEST_WARN, f,
                            "parent kind %s%s%s is not supported (only Service), skipped", group,
                            *group ? "/" : "", pkind);
                continue;
            }
            if (section) {
                finding(&c, MANIFEST_ERROR, f, "sectionName on a Service parent is not supported; use port");
                goto out;
            }
            if (strcmp(pns, ns) != 0) {
                finding(
                    &c, MANIFEST_WARN, f,
                    "a route in namespace %s for Service %s/%s (a consumer route) is not supported by the "
                    "waypoint, skipped",
                    ns, pns, pname);
                continue;
            }
            Zmesh__V1__ParentRef *pr = alloc(&c, sizeof(*pr));
            if (!pr) goto nomem;
            zmesh__v1__parent_ref__init(pr);
            pr->namespace_ = dup(&c, pns);
            pr->name = dup(&c, pname);
            pr->port = (uint32_t)port;
            m.parents[m.n_parents++] = pr;
        }
    }
    if (get_strs(&c, spec, "hostnames", "spec", &m.hostnames, &m.n_hostnames) < 0) goto out;
    if (m.n_hostnames)
        finding(&c, MANIFEST_WARN, "spec.hostnames",
                "ignored: a route attached to a Service applies to the Service's traffic (GEP-1426)");
    if ((r = get_list(&c, spec, "rules", "spec", &l)) < 0) goto out;
    if (r > 0) {
        m.rules = alloc(&c, json_array_size(l) * sizeof(*m.rules));
        if (!m.rules) goto nomem;
        for (size_t i = 0; i < json_array_size(l); i++) {
            char f[64];
            l7c_fld(f, sizeof(f), "spec.rules[%zu]", i);
            if (!(m.rules[i] = rule_conv(&c, json_array_get(l, i), f, grpc))) goto out;
            m.n_rules++;
        }
    }
    if (bad(&c)) goto out;
    rc = pack_and_check(&c, &m.base, L7_TYPE_URL_HTTP_ROUTE, name, pb, len);
    goto out;
nomem:
    rc = -ENOMEM;
out:
    if (bad(&c) && rc == 0) {
        free(*pb);
        *pb = NULL;
        rc = -EINVAL;
    }
    if (c.oom) rc = -ENOMEM;
    l7_arena_free(&c.a);
    return rc;
}

/* ---- AuthorizationPolicy ---- */

struct field_map {
    const char *key;
    size_t off_v, off_n; /* offsets of the char ** and size_t in the proto message */
};

#define FM(T, k, f)                                                                                          \
    {                                                                                                        \
        k, offsetof(T, f), offsetof(T, n_##f)                                                                \
    }
static const struct field_map src_fields[] = {
    FM(Zmesh__V1__Source, "principals", principals),
    FM(Zmesh__V1__Source, "notPrincipals", not_principals),
    FM(Zmesh__V1__Source, "requestPrincipals", request_principals),
    FM(Zmesh__V1__Source, "notRequestPrincipals", not_request_principals),
    FM(Zmesh__V1__Source, "namespaces", namespaces),
    FM(Zmesh__V1__Source, "notNamespaces", not_namespaces),
    FM(Zmesh__V1__Source, "ipBlocks", ip_blocks),
    FM(Zmesh__V1__Source, "notIpBlocks", not_ip_blocks),
    FM(Zmesh__V1__Source, "remoteIpBlocks", remote_ip_blocks),
    FM(Zmesh__V1__Source, "notRemoteIpBlocks", not_remote_ip_blocks),
    FM(Zmesh__V1__Source, "serviceAccounts", service_accounts),
    FM(Zmesh__V1__Source, "notServiceAccounts", not_service_accounts),
    {NULL, 0, 0},
};
static const struct field_map op_fields[] = {
    FM(Zmesh__V1__Operation, "hosts", hosts),
    FM(Zmesh__V1__Operation, "notHosts", not_hosts),
    FM(Zmesh__V1__Operation, "ports", ports),
    FM(Zmesh__V1__Operation, "notPorts", not_ports),
    FM(Zmesh__V1__Operation, "methods", methods),
    FM(Zmesh__V1__Operation, "notMethods", not_methods),
    FM(Zmesh__V1__Operation, "paths", paths),
    FM(Zmesh__V1__Operation, "notPaths", not_paths),
    {NULL, 0, 0},
};

/* Fills msg's string lists from obj by table. An unknown key is returned through *unknown (the caller decides
 * what dropping it means for the rule). Returns 0 or -1 (ERROR reported). */
static int fill_fields(struct conv *c, const json_t *obj, const char *path, const struct field_map *fm,
                       void *msg, const char **unknown)
{
    const char *k;
    json_t *v;
    *unknown = NULL;
    json_object_foreach((json_t *)obj, k, v)
    {
        const struct field_map *e = NULL;
        for (size_t i = 0; fm[i].key; i++)
            if (strcmp(fm[i].key, k) == 0) e = &fm[i];
        if (!e) {
            if (!*unknown) *unknown = k;
            continue;
        }
        char **vals;
        size_t n;
        if (get_strs(c, obj, k, path, &vals, &n) < 0) return -1;
        *(char ***)((char *)msg + e->off_v) = vals;
        *(size_t *)((char *)msg + e->off_n) = n;
    }
    return 0;
}

static const char *const known_when_prefixes[] = {"request.headers[",
                                                  "source.ip",
                                                  "remote.ip",
                                                  "source.namespace",
                                                  "source.principal",
                                                  "source.serviceAccount",
                                                  "request.auth.principal",
                                                  "request.auth.audiences",
                                                  "request.auth.presenter",
                                                  "request.auth.claims[",
                                                  "destination.ip",
                                                  "destination.port",
                                                  "connection.sni",
                                                  "experimental.envoy.filters.",
                                                  NULL};

static bool when_key_known(const char *k)
{
    for (size_t i = 0; known_when_prefixes[i]; i++) {
        size_t n = strlen(known_when_prefixes[i]);
        bool prefix = known_when_prefixes[i][n - 1] == '[' || known_when_prefixes[i][n - 1] == '.';
        if (prefix ? strncmp(k, known_when_prefixes[i], n) == 0 : strcmp(k, known_when_prefixes[i]) == 0)
            return true;
    }
    return false;
}

/* One rule; *drop is set when the rule must be left out (an ALLOW rule with something zmesh cannot evaluate:
 * leaving it out allows less, never more). Returns NULL with c->failed on an ERROR. */
static Zmesh__V1__L7Rule *authz_rule(struct conv *c, const json_t *o, const char *path, bool allow,
                                     bool *drop)
{
    static const char *const rk[] = {"from", "to", "when", NULL};
    char f[256];
    *drop = false;
    Zmesh__V1__L7Rule *r = alloc(c, sizeof(*r));
    if (!r) return NULL;
    zmesh__v1__l7_rule__init(r);
    if (!json_is_object(o)) {
        finding(c, MANIFEST_ERROR, path, "expected a mapping");
        return NULL;
    }
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)o, k, v)
    {
        bool ok = false;
        for (size_t i = 0; rk[i]; i++)
            ok |= strcmp(k, rk[i]) == 0;
        if (!ok) {
            l7c_fld(f, sizeof(f), "%s.%s", path, k);
            finding(c, MANIFEST_WARN, f,
                    allow ? "unknown field: the ALLOW rule is left out" : "unknown field, ignored");
            if (allow) *drop = true;
        }
    }
    for (int side = 0; side < 2; side++) {
        json_t *l;
        const char *key = side ? "to" : "from", *inner = side ? "operation" : "source";
        int rc = get_list(c, o, key, path, &l);
        if (rc < 0) return NULL;
        if (rc == 0) continue;
        size_t n = json_array_size(l);
        void **arr = alloc(c, n * sizeof(void *));
        if (!arr) return NULL;
        for (size_t i = 0; i < n; i++) {
            json_t *e = json_array_get(l, i), *body;
            char ef[280];
            l7c_fld(f, sizeof(f), "%s.%s[%zu]", path, key, i);
            if (!json_is_object(e) || get_obj(c, e, inner, f, &body) <= 0) {
                if (!c->failed) finding(c, MANIFEST_ERROR, f, "expected {%s: {...}}", inner);
                return NULL;
            }
            l7c_fld(ef, sizeof(ef), "%s.%s", f, inner);
            void *msg;
            if (side) {
                Zmesh__V1__Operation *op = alloc(c, sizeof(*op));
                if (!op) return NULL;
                zmesh__v1__operation__init(op);
                msg = op;
            } else {
                Zmesh__V1__Source *s = alloc(c, sizeof(*s));
                if (!s) return NULL;
                zmesh__v1__source__init(s);
                msg = s;
            }
            const char *unknown;
            if (fill_fields(c, body, ef, side ? op_fields : src_fields, msg, &unknown) < 0) return NULL;
            if (unknown) {
                char uf[300];
                l7c_fld(uf, sizeof(uf), "%s.%s", ef, unknown);
                finding(c, MANIFEST_WARN, uf,
                        allow ? "not supported by zmesh: the ALLOW rule is left out (fail closed)"
                              : "not supported by zmesh, ignored (the rule matches more)");
                if (allow) *drop = true;
            }
            if (!side) {
                /* A bare service account name is in the policy's namespace. */
                Zmesh__V1__Source *s = msg;
                for (int neg = 0; neg < 2; neg++) {
                    char **sa = neg ? s->not_service_accounts : s->service_accounts;
                    size_t ns = neg ? s->n_not_service_accounts : s->n_service_accounts;
                    for (size_t j = 0; j < ns; j++)
                        if (!strchr(sa[j], '/')) {
                            char *full = alloc(c, strlen(c->ns) + strlen(sa[j]) + 2);
                            if (!full) return NULL;
                            sprintf(full, "%s/%s", c->ns, sa[j]);
                            sa[j] = full;
                        }
                }
            }
            arr[i] = msg;
        }
        if (side) {
            r->to = (Zmesh__V1__Operation **)arr;
            r->n_to = n;
        } else {
            r->from = (Zmesh__V1__Source **)arr;
            r->n_from = n;
        }
    }
    json_t *l;
    int rc = get_list(c, o, "when", path, &l);
    if (rc < 0) return NULL;
    if (rc > 0) {
        size_t n = json_array_size(l), w = 0;
        r->when = alloc(c, n * sizeof(*r->when));
        if (!r->when) return NULL;
        for (size_t i = 0; i < n; i++) {
            json_t *e = json_array_get(l, i);
            static const char *const ck[] = {"key", "values", "notValues", NULL};
            l7c_fld(f, sizeof(f), "%s.when[%zu]", path, i);
            const char *key = NULL;
            if (!json_is_object(e) || get_str(c, e, "key", f, &key) <= 0) {
                if (!c->failed) finding(c, MANIFEST_ERROR, f, "expected {key, values | notValues}");
                return NULL;
            }
            unknown_keys(c, e, f, ck);
            if (!when_key_known(key)) {
                char kf[280];
                l7c_fld(kf, sizeof(kf), "%s.key", f);
                finding(c, MANIFEST_WARN, kf, "unknown attribute \"%.60s\": the rule is left out", key);
                *drop = true; /* as Istio: a rule with an unknown key is skipped (authz/model New) */
                continue;
            }
            Zmesh__V1__Condition *cd = alloc(c, sizeof(*cd));
            if (!cd) return NULL;
            zmesh__v1__condition__init(cd);
            cd->key = dup(c, key);
            if (get_strs(c, e, "values", f, &cd->values, &cd->n_values) < 0 ||
                get_strs(c, e, "notValues", f, &cd->not_values, &cd->n_not_values) < 0)
                return NULL;
            if (!cd->n_values && !cd->n_not_values) {
                finding(c, MANIFEST_ERROR, f, "values or notValues must be set");
                return NULL;
            }
            r->when[w++] = cd;
        }
        r->n_when = w;
    }
    return bad(c) ? NULL : r;
}

int l7_convert_authz(const json_t *obj, const struct manifest_src *src, uint8_t **pb, size_t *len, char *name,
                     size_t name_n, manifest_report_fn report, void *ud)
{
    struct conv c = {.src = src, .report = report, .ud = ud};
    int rc = -EINVAL;
    *pb = NULL;
    *len = 0;
    if (!json_is_object(obj)) {
        finding(&c, MANIFEST_ERROR, "", "expected a mapping");
        return -EINVAL;
    }
    json_t *spec = json_object_get(obj, "spec");
    if (!json_is_object(spec) ||
        (!json_object_get(spec, "targetRef") && !json_object_get(spec, "targetRefs")))
        return -ENOENT; /* no targets: ztunnel's policy */
    static const char *const top[] = {"apiVersion", "kind", "metadata", "spec", "status", NULL};
    unknown_keys(&c, obj, "", top);
    const char *api = "", *kind = "", *ns, *nm;
    int64_t created;
    if (get_str(&c, obj, "apiVersion", "", &api) < 0 || get_str(&c, obj, "kind", "", &kind) < 0) goto out;
    if (strcmp(kind, "AuthorizationPolicy") != 0) {
        finding(&c, MANIFEST_ERROR, "kind", "expected AuthorizationPolicy, got \"%.40s\"", kind);
        goto out;
    }
    if (strcmp(api, "security.istio.io/v1") != 0 && strcmp(api, "security.istio.io/v1beta1") != 0) {
        finding(&c, MANIFEST_ERROR, "apiVersion", "expected security.istio.io/v1 or v1beta1, got \"%.60s\"",
                api);
        goto out;
    }
    if (meta(&c, obj, &ns, &nm, &created) < 0) goto out;
    if (snprintf(name, name_n, "%s/%s", ns, nm) >= (int)name_n) {
        finding(&c, MANIFEST_ERROR, "metadata.name", "namespace/name longer than %zu bytes", name_n - 1);
        goto out;
    }
    Zmesh__V1__L7Authorization m = ZMESH__V1__L7_AUTHORIZATION__INIT;
    m.namespace_ = (char *)ns;
    m.name = (char *)nm;
    json_t *md = json_object_get(obj, "metadata"), *ann = json_object_get(md, "annotations");
    json_t *dr = json_object_get(ann, "istio.io/dry-run");
    if (dr) {
        if (json_is_string(dr) && strcmp(json_string_value(dr), "true") == 0)
            m.dry_run = true;
        else if (!(json_is_string(dr) && strcmp(json_string_value(dr), "false") == 0)) {
            finding(&c, MANIFEST_ERROR, "metadata.annotations.istio.io/dry-run",
                    "expected \"true\" or \"false\"");
            goto out;
        }
    }
    static const char *const sk[] = {"targetRef", "targetRefs", "selector", "action",
                                     "provider",  "rules",      NULL};
    unknown_keys(&c, spec, "spec", sk);
    if (json_object_get(spec, "selector")) {
        finding(&c, MANIFEST_ERROR, "spec.selector", "only one of selector and targetRefs may be set");
        goto out;
    }
    if (json_object_get(spec, "targetRef") && json_object_get(spec, "targetRefs")) {
        finding(&c, MANIFEST_ERROR, "spec.targetRef", "only one of targetRef and targetRefs may be set");
        goto out;
    }
    const char *action = "ALLOW";
    if (get_str(&c, spec, "action", "spec", &action) < 0) goto out;
    if (strcmp(action, "ALLOW") == 0)
        m.action = ZMESH__V1__L7_AUTHORIZATION__ACTION__ALLOW;
    else if (strcmp(action, "DENY") == 0)
        m.action = ZMESH__V1__L7_AUTHORIZATION__ACTION__DENY;
    else if (strcmp(action, "AUDIT") == 0)
        m.action = ZMESH__V1__L7_AUTHORIZATION__ACTION__AUDIT;
    else if (strcmp(action, "CUSTOM") == 0) {
        finding(&c, MANIFEST_ERROR, "spec.action",
                "CUSTOM (external authorization) is not supported by zmesh");
        goto out;
    } else {
        finding(&c, MANIFEST_ERROR, "spec.action", "expected ALLOW, DENY, AUDIT or CUSTOM, got \"%.40s\"",
                action);
        goto out;
    }
    bool allow = m.action == ZMESH__V1__L7_AUTHORIZATION__ACTION__ALLOW;
    if (json_object_get(spec, "provider")) {
        finding(&c, MANIFEST_ERROR, "spec.provider", "only for action CUSTOM");
        goto out;
    }
    /* targetRef (one) or targetRefs (a list). */
    json_t *tl = json_object_get(spec, "targetRefs"), *single = NULL;
    const char *tpath = "spec.targetRefs";
    if (!tl) {
        single = json_array();
        if (!single) goto nomem;
        json_array_append(single, json_object_get(spec, "targetRef"));
        tl = single;
        tpath = "spec.targetRef";
    }
    if (!json_is_array(tl) || json_array_size(tl) == 0 || json_array_size(tl) > L7_MAX_TARGETS) {
        finding(&c, MANIFEST_ERROR, tpath, "expected 1-%d targets", L7_MAX_TARGETS);
        json_decref(single);
        goto out;
    }
    m.targets = alloc(&c, json_array_size(tl) * sizeof(*m.targets));
    for (size_t i = 0; m.targets && i < json_array_size(tl); i++) {
        json_t *t = json_array_get(tl, i);
        char f[64];
        if (single)
            l7c_fld(f, sizeof(f), "%s", tpath);
        else
            l7c_fld(f, sizeof(f), "%s[%zu]", tpath, i);
        static const char *const tk[] = {"group", "kind", "name", "namespace", NULL};
        const char *group = "", *tkind = "", *tname = NULL, *tns = ns;
        if (!json_is_object(t)) {
            finding(&c, MANIFEST_ERROR, f, "expected a mapping");
            break;
        }
        unknown_keys(&c, t, f, tk);
        if (get_str(&c, t, "group", f, &group) < 0 || get_str(&c, t, "kind", f, &tkind) < 0 ||
            get_str(&c, t, "namespace", f, &tns) < 0)
            break;
        if (get_str(&c, t, "name", f, &tname) <= 0 || !*tname) {
            char nf[80];
            l7c_fld(nf, sizeof(nf), "%s.name", f);
            if (!c.failed) finding(&c, MANIFEST_ERROR, nf, "missing");
            break;
        }
        if (strcmp(tns, ns) != 0) {
            char nf[80];
            l7c_fld(nf, sizeof(nf), "%s.namespace", f);
            finding(&c, MANIFEST_ERROR, nf, "a target must be in the policy's namespace %s", ns);
            break;
        }
        Zmesh__V1__PolicyTarget *pt = alloc(&c, sizeof(*pt));
        if (!pt) break;
        zmesh__v1__policy_target__init(pt);
        if (strcmp(group, GATEWAY_GROUP) == 0 && strcmp(tkind, "Gateway") == 0)
            pt->kind = ZMESH__V1__POLICY_TARGET__KIND__GATEWAY;
        else if (!*group && strcmp(tkind, "Service") == 0)
            pt->kind = ZMESH__V1__POLICY_TARGET__KIND__SERVICE;
        else {
            char kf[80];
            l7c_fld(kf, sizeof(kf), "%s.kind", f);
            finding(&c, MANIFEST_ERROR, kf, "unsupported target %s%s%s (Gateway and Service are supported)",
                    group, *group ? "/" : "", tkind);
            break;
        }
        pt->namespace_ = dup(&c, ns);
        pt->name = dup(&c, tname);
        m.targets[m.n_targets++] = pt;
    }
    json_decref(single);
    if (bad(&c)) goto out;
    json_t *rl;
    int r = get_list(&c, spec, "rules", "spec", &rl);
    if (r < 0) goto out;
    if (r > 0) {
        m.rules = alloc(&c, json_array_size(rl) * sizeof(*m.rules));
        if (!m.rules) goto nomem;
        for (size_t i = 0; i < json_array_size(rl); i++) {
            char f[64];
            bool drop;
            l7c_fld(f, sizeof(f), "spec.rules[%zu]", i);
            Zmesh__V1__L7Rule *rule = authz_rule(&c, json_array_get(rl, i), f, allow, &drop);
            if (!rule) goto out;
            if (!drop) m.rules[m.n_rules++] = rule;
        }
    }
    if (bad(&c)) goto out;
    rc = pack_and_check(&c, &m.base, L7_TYPE_URL_AUTHORIZATION, name, pb, len);
    goto out;
nomem:
    rc = -ENOMEM;
out:
    if (bad(&c) && rc == 0) {
        free(*pb);
        *pb = NULL;
        rc = -EINVAL;
    }
    if (c.oom) rc = -ENOMEM;
    l7_arena_free(&c.a);
    return rc;
}

int l7_convert_doc(const struct manifest_l7_doc *d, int *type, uint8_t **pb, size_t *len, char *name, size_t name_n,
                   manifest_report_fn report, void *ud)
{
    if (!strcmp(d->kind, "VirtualService")) {
        *type = L7_T_HTTP_ROUTE; /* a zmesh.v1.HTTPRoute of kind VIRTUAL_SERVICE */
        return vs_convert(d->doc, &d->src, d->st, pb, len, name, name_n, report, ud);
    }
    if (!strcmp(d->kind, "DestinationRule")) {
        *type = L7_T_DESTINATION_RULE;
        return dr_convert(d->doc, &d->src, d->st, pb, len, name, name_n, report, ud);
    }
    if (!strcmp(d->kind, "AuthorizationPolicy")) {
        *type = L7_T_AUTHORIZATION;
        return l7_convert_authz(d->doc, &d->src, pb, len, name, name_n, report, ud);
    }
    if (!strcmp(d->kind, "RequestAuthentication")) {
        *type = L7_T_REQUEST_AUTHN;
        return zmeshd_convert_request_authn(d->doc, &d->src, pb, len, name, name_n, report, ud);
    }
    *type = L7_T_HTTP_ROUTE; /* HTTPRoute, GRPCRoute */
    return l7_convert_route(d->doc, &d->src, pb, len, name, name_n, report, ud);
}

/* ---- shared with the other conversions (l7_conv.h) ---- */

bool l7c_bad(const struct conv *c)
{
    return bad(c);
}

void l7c_finding(struct conv *c, enum manifest_level lvl, const char *field, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfinding(c, lvl, field, fmt, ap);
    va_end(ap);
}

void *l7c_alloc(struct conv *c, size_t n)
{
    return alloc(c, n);
}

char *l7c_dup(struct conv *c, const char *s)
{
    return dup(c, s);
}

void l7c_unknown_keys(struct conv *c, const json_t *obj, const char *path, const char *const *allowed)
{
    unknown_keys(c, obj, path, allowed);
}

int l7c_get_str(struct conv *c, const json_t *obj, const char *key, const char *path, const char **out)
{
    return get_str(c, obj, key, path, out);
}

int l7c_get_obj(struct conv *c, const json_t *obj, const char *key, const char *path, json_t **out)
{
    return get_obj(c, obj, key, path, out);
}

int l7c_get_list(struct conv *c, const json_t *obj, const char *key, const char *path, json_t **out)
{
    return get_list(c, obj, key, path, out);
}

int l7c_get_int(struct conv *c, const json_t *obj, const char *key, const char *path, long long lo, long long hi,
                long long *out)
{
    return get_int(c, obj, key, path, lo, hi, out);
}

int l7c_get_strs(struct conv *c, const json_t *obj, const char *key, const char *path, char ***out, size_t *n)
{
    return get_strs(c, obj, key, path, out, n);
}

int l7c_meta(struct conv *c, const json_t *obj, const char **ns, const char **name, int64_t *created)
{
    return meta(c, obj, ns, name, created);
}

int l7c_pack_and_check(struct conv *c, const ProtobufCMessage *msg, const char *type_url, const char *name,
                       uint8_t **pb, size_t *len)
{
    return pack_and_check(c, msg, type_url, name, pb, len);
}
