/* VirtualService manifests to zmesh.v1.HTTPRoute (kind VIRTUAL_SERVICE); see vs.h. Field names and defaults:
 * istio/api networking/v1alpha3/virtual_service.proto; translation: istio/istio
 * pilot/pkg/networking/core/route/route.go and route/retry/retry.go. */
#include "zmeshd/vs.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mesh/l7.h"
#include "zmesh/l7.pb-c.h"
#include "zmeshd/l7.h"
#include "zmeshd/l7_conv.h"
#include "zmeshd/waypoint.h"

#define NETWORKING_GROUP "networking.istio.io"
/* Most entries of one VirtualService list we convert (hosts, http routes, matches, destinations); the model
 * has its own bounds (src/mesh/l7.h) and refuses more, these keep the conversion's arrays small. */
#define VS_MAX_LIST 256

#define ERR(c, f, ...) l7c_finding(c, MANIFEST_ERROR, f, __VA_ARGS__)
#define WARN(c, f, ...) l7c_finding(c, MANIFEST_WARN, f, __VA_ARGS__)

/* A VirtualService's conversion: the shared state, and the pods sourceLabels select from (NULL: none). Every
 * struct conv of this file is the first member of one. */
struct vs_conv {
    struct conv c;
    const struct manifest_store *st;
};

/* A duration field: 1 and *ms, 0 absent, -1 reported. */
static int get_duration(struct conv *c, const json_t *o, const char *key, const char *path, uint64_t *ms)
{
    const char *s = NULL;
    int rc = l7c_get_str(c, o, key, path, &s);
    if (rc <= 0) return rc;
    if (l7_istio_duration_ms(s, ms) < 0) {
        char f[300];
        l7c_fld(f, sizeof(f), "%s.%s", path, key);
        ERR(c, f, "not a duration (e.g. \"1.5s\", \"100ms\", \"1m\"): \"%.40s\"", s);
        return -1;
    }
    return 1;
}

/* A Percent ({value: 0.0-100.0}) or a deprecated integer percent into parts per million: 1 set, 0 absent. */
static int get_percent(struct conv *c, const json_t *o, const char *key, const char *int_key,
                       const char *path, uint32_t *ppm)
{
    char f[300];
    json_t *p = json_object_get(o, key);
    if (p && !json_is_null(p)) {
        l7c_fld(f, sizeof(f), "%s.%s", path, key);
        json_t *v = json_is_object(p) ? json_object_get(p, "value") : NULL;
        if (json_is_object(p) && !v) { /* {} is 0% (protobuf's default value) */
            *ppm = 0;
            return 1;
        }
        if (!v || !json_is_number(v) || json_number_value(v) < 0 || json_number_value(v) > 100) {
            ERR(c, f, "expected {value: 0.0-100.0}");
            return -1;
        }
        static const char *const pk[] = {"value", NULL};
        l7c_unknown_keys(c, p, f, pk);
        *ppm = (uint32_t)(json_number_value(v) * (L7_PPM / 100) + 0.5);
        return 1;
    }
    if (int_key) {
        long long pct = 0;
        int rc = l7c_get_int(c, o, int_key, path, 0, 100, &pct);
        if (rc != 0) {
            if (rc > 0) *ppm = (uint32_t)pct * (L7_PPM / 100);
            return rc;
        }
    }
    return 0;
}

/* A host of hosts or destination.host naming a Service: "name" (the VirtualService's namespace) or
 * "name.ns.svc.<domain>". Returns true with ns/name; false for anything else (wildcards, other FQDNs). */
static bool host_service(const char *host, const char *vs_ns, char *ns, size_t nsn, char *name, size_t nn)
{
    if (!*host || strchr(host, '*')) return false;
    const char *d1 = strchr(host, '.');
    if (!d1) {
        snprintf(ns, nsn, "%s", vs_ns);
        snprintf(name, nn, "%s", host);
        return strlen(host) < nn;
    }
    const char *d2 = strchr(d1 + 1, '.');
    if (!d2 || strncmp(d2, ".svc.", 5) != 0 || !d2[5]) return false;
    size_t a = (size_t)(d1 - host), b = (size_t)(d2 - d1 - 1);
    if (!a || !b || a >= nn || b >= nsn) return false;
    snprintf(name, nn, "%.*s", (int)a, host);
    snprintf(ns, nsn, "%.*s", (int)b, d1 + 1);
    return true;
}

/* ---- matches ---- */

/* A StringMatch {exact|prefix|regex}: type and value; present (an empty {}) only when allow_present. */
static int string_match(struct conv *c, const json_t *o, const char *path, bool allow_present,
                        Zmesh__V1__StringMatch__Type *type, const char **value)
{
    static const char *const keys[] = {"exact", "prefix", "regex", NULL};
    if (!json_is_object(o)) {
        ERR(c, path, "expected a mapping with one of exact, prefix, regex");
        return -1;
    }
    l7c_unknown_keys(c, o, path, keys);
    int set = 0;
    const char *v = NULL;
    for (int i = 0; i < 3; i++) {
        const char *s = NULL;
        int rc = l7c_get_str(c, o, keys[i], path, &s);
        if (rc < 0) return -1;
        if (rc == 0) continue;
        set++;
        v = s;
        *type = i == 0   ? ZMESH__V1__STRING_MATCH__TYPE__EXACT
                : i == 1 ? ZMESH__V1__STRING_MATCH__TYPE__STRING_PREFIX
                         : ZMESH__V1__STRING_MATCH__TYPE__REGEX;
    }
    if (set > 1) {
        ERR(c, path, "exact, prefix and regex are mutually exclusive");
        return -1;
    }
    if (!set) {
        if (!allow_present) {
            ERR(c, path, "one of exact, prefix, regex is required");
            return -1;
        }
        *type = ZMESH__V1__STRING_MATCH__TYPE__PRESENT;
        v = "";
    }
    /* Istio's canBeConvertedToPresentMatch: regex "*" is not RE2, it means "present" (istio/istio#20629). */
    if (allow_present && *type == ZMESH__V1__STRING_MATCH__TYPE__REGEX && !strcmp(v, "*")) {
        *type = ZMESH__V1__STRING_MATCH__TYPE__PRESENT;
        v = "";
    }
    if (*type == ZMESH__V1__STRING_MATCH__TYPE__REGEX) {
        char err[300], f[300];
        l7c_fld(f, sizeof(f), "%s.regex", path);
        if (l7_regex_check(v, err, sizeof(err)) < 0) {
            ERR(c, f, "%s", err);
            return -1;
        }
    }
    *value = v;
    return 0;
}

/* A map of name -> StringMatch (headers, withoutHeaders, queryParams). */
static int named_map(struct conv *c, const json_t *o, const char *key, const char *path, bool header,
                     Zmesh__V1__NamedMatch ***out, size_t *n)
{
    json_t *m;
    *n = 0;
    int rc = l7c_get_obj(c, o, key, path, &m);
    if (rc <= 0) return rc;
    size_t cnt = json_object_size(m);
    Zmesh__V1__NamedMatch **v = l7c_alloc(c, cnt * sizeof(*v));
    if (!v) return -1;
    const char *k;
    json_t *e;
    size_t i = 0;
    json_object_foreach(m, k, e)
    {
        char f[300];
        l7c_fld(f, sizeof(f), "%s.%s.%s", path, key, k);
        v[i] = l7c_alloc(c, sizeof(**v));
        if (!v[i]) return -1;
        zmesh__v1__named_match__init(v[i]);
        const char *val = NULL;
        Zmesh__V1__StringMatch__Type t;
        if (string_match(c, e, f, true, &t, &val) < 0) return -1;
        v[i]->type = t;
        v[i]->name = l7c_dup(c, k);
        v[i]->value = l7c_dup(c, val);
        if (header && v[i]->name)
            for (char *x = v[i]->name; *x; x++)
                *x = (char)tolower((unsigned char)*x);
        i++;
    }
    *out = v;
    *n = cnt;
    return l7c_bad(c) ? -1 : 1;
}

/* True when a list of gateways applies to the mesh (the waypoint): absent, or it names "mesh". */
static bool gateways_mesh(const json_t *l, bool *others)
{
    *others = false;
    if (!l) return true;
    bool mesh = false;
    for (size_t i = 0; i < json_array_size(l); i++) {
        const char *g = json_string_value(json_array_get(l, i));
        if (g && !strcmp(g, "mesh"))
            mesh = true;
        else
            *others = true;
    }
    return mesh;
}

/* authority or scheme: a StringMatch (exact, prefix, regex) on :authority or :scheme, as Istio's header
 * matchers on those pseudo-headers. 0 absent, 1 set, -1 reported. */
static int attr_match(struct conv *c, const json_t *o, const char *key, const char *path,
                      Zmesh__V1__StringMatch **out)
{
    json_t *a;
    int rc = l7c_get_obj(c, o, key, path, &a);
    if (rc <= 0) return rc;
    char f[300];
    l7c_fld(f, sizeof(f), "%s.%s", path, key);
    const char *val;
    Zmesh__V1__StringMatch__Type t;
    if (string_match(c, a, f, false, &t, &val) < 0) return -1;
    if (!(*out = l7c_alloc(c, sizeof(**out)))) return -1;
    zmesh__v1__string_match__init(*out);
    (*out)->type = t;
    (*out)->value = l7c_dup(c, val);
    return 1;
}

static int k8s_kv_cmp(const void *a, const void *b)
{
    return strcmp(((const struct k8s_kv *)a)->key, ((const struct k8s_kv *)b)->key);
}

static int str_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* sourceNamespace (the client identity's namespace) and sourceLabels, resolved here to the pods that carry
 * every label (in sourceNamespace when set): Istio evaluates both against the labels and namespace of the
 * proxy that runs the route, which under sidecars is the client (istio/istio
 * pilot/pkg/networking/core/route/route.go sourceMatchHTTP); the waypoint evaluates them against the client
 * of each request. */
static int source_conv(struct conv *c, const json_t *o, const char *path, Zmesh__V1__RouteMatch *m)
{
    char f[300];
    const char *sns = NULL;
    int rc = l7c_get_str(c, o, "sourceNamespace", path, &sns);
    if (rc < 0) return -1;
    if (rc > 0) {
        l7c_fld(f, sizeof(f), "%s.sourceNamespace", path);
        if (!*sns || strlen(sns) > 63 || strchr(sns, '/')) {
            ERR(c, f, "expected a namespace name, got \"%.64s\"", sns);
            return -1;
        }
        m->source_namespace = l7c_dup(c, sns);
    }
    json_t *labels;
    if ((rc = l7c_get_obj(c, o, "sourceLabels", path, &labels)) < 0) return -1;
    if (rc == 0) return 0;
    l7c_fld(f, sizeof(f), "%s.sourceLabels", path);
    size_t nl = json_object_size(labels);
    struct k8s_kv *sel = l7c_alloc(c, (nl ? nl : 1) * sizeof(*sel));
    if (!sel) return -1;
    const char *k;
    json_t *v;
    size_t i = 0;
    json_object_foreach(labels, k, v)
    {
        if (!json_is_string(v)) {
            char g[400];
            l7c_fld(g, sizeof(g), "%s.%s", f, k);
            ERR(c, g, "expected a string");
            return -1;
        }
        sel[i++] = (struct k8s_kv){k, json_string_value(v)};
    }
    qsort(sel, nl, sizeof(*sel), k8s_kv_cmp);
    m->has_source_labels = true;
    const struct manifest_store *st = ((struct vs_conv *)c)->st;
    size_t np = 0;
    const struct k8s_pod *pods = st ? manifest_pods(st, &np) : NULL;
    if (!(m->source_workloads = l7c_alloc(c, (np ? np : 1) * sizeof(*m->source_workloads)))) return -1;
    for (size_t p = 0; p < np; p++) {
        const struct k8s_pod *pd = &pods[p];
        if (pd->meta.deleting || (sns && strcmp(pd->meta.namespace_, sns) != 0)) continue;
        if (!k8s_selector_matches(sel, nl, pd->meta.labels, pd->meta.n_labels)) continue;
        size_t n = strlen(pd->meta.namespace_) + strlen(pd->meta.name) + 2;
        char *e = l7c_alloc(c, n);
        if (!e) return -1;
        snprintf(e, n, "%s/%s", pd->meta.namespace_, pd->meta.name);
        m->source_workloads[m->n_source_workloads++] = e;
    }
    qsort(m->source_workloads, m->n_source_workloads, sizeof(char *), str_cmp);
    if (!m->n_source_workloads)
        l7c_finding(c, MANIFEST_INFO, f, "selects no pod now: the match matches no request until one exists");
    return 1;
}

/* One HTTPMatchRequest. NULL with *skip set: a match for gateways only (INFO). */
static Zmesh__V1__RouteMatch *match_conv(struct conv *c, const json_t *o, const char *path, bool *skip)
{
    static const char *const keys[] = {"name",
                                       "uri",
                                       "scheme",
                                       "method",
                                       "authority",
                                       "headers",
                                       "port",
                                       "sourceLabels",
                                       "gateways",
                                       "queryParams",
                                       "ignoreUriCase",
                                       "withoutHeaders",
                                       "sourceNamespace",
                                       "statPrefix",
                                       NULL};
    char f[300];
    *skip = false;
    if (!json_is_object(o)) {
        ERR(c, path, "expected a mapping");
        return NULL;
    }
    l7c_unknown_keys(c, o, path, keys);
    if (json_object_get(o, "statPrefix")) {
        l7c_fld(f, sizeof(f), "%s.statPrefix", path);
        WARN(c, f, "not supported by zmesh's waypoint, ignored");
    }
    json_t *gw = NULL;
    if (l7c_get_list(c, o, "gateways", path, &gw) < 0) return NULL;
    bool others;
    if (!gateways_mesh(gw, &others)) {
        l7c_fld(f, sizeof(f), "%s.gateways", path);
        l7c_finding(c, MANIFEST_INFO, f,
                    "a match for gateways only (no \"mesh\"): not for the waypoint, skipped");
        *skip = true;
        return NULL;
    }
    Zmesh__V1__RouteMatch *m = l7c_alloc(c, sizeof(*m));
    if (!m) return NULL;
    zmesh__v1__route_match__init(m);
    json_t *u;
    int rc = l7c_get_obj(c, o, "uri", path, &u);
    if (rc < 0) return NULL;
    if (rc > 0) {
        l7c_fld(f, sizeof(f), "%s.uri", path);
        const char *val;
        Zmesh__V1__StringMatch__Type t;
        if (string_match(c, u, f, false, &t, &val) < 0) return NULL;
        if (!(m->path = l7c_alloc(c, sizeof(*m->path)))) return NULL;
        zmesh__v1__string_match__init(m->path);
        m->path->type = t;
        m->path->value = l7c_dup(c, val);
    }
    json_t *meth;
    if ((rc = l7c_get_obj(c, o, "method", path, &meth)) < 0) return NULL;
    if (rc > 0) {
        l7c_fld(f, sizeof(f), "%s.method", path);
        const char *val;
        Zmesh__V1__StringMatch__Type t;
        if (string_match(c, meth, f, false, &t, &val) < 0) return NULL;
        if (t != ZMESH__V1__STRING_MATCH__TYPE__EXACT) {
            ERR(c, f, "only an exact method match is supported by zmesh's waypoint");
            return NULL;
        }
        m->method = l7c_dup(c, val);
    }
    json_t *ic = json_object_get(o, "ignoreUriCase");
    if (ic && !json_is_boolean(ic)) {
        l7c_fld(f, sizeof(f), "%s.ignoreUriCase", path);
        ERR(c, f, "expected true or false");
        return NULL;
    }
    m->ignore_uri_case = ic && json_is_true(ic);
    long long port = 0;
    if (l7c_get_int(c, o, "port", path, 1, 65535, &port) < 0) return NULL;
    m->port = (uint32_t)port;
    if (named_map(c, o, "headers", path, true, &m->headers, &m->n_headers) < 0 ||
        named_map(c, o, "withoutHeaders", path, true, &m->without_headers, &m->n_without_headers) < 0 ||
        named_map(c, o, "queryParams", path, false, &m->query_params, &m->n_query_params) < 0)
        return NULL;
    if (attr_match(c, o, "authority", path, &m->authority) < 0 ||
        attr_match(c, o, "scheme", path, &m->scheme) < 0 || source_conv(c, o, path, m) < 0)
        return NULL;
    return l7c_bad(c) ? NULL : m;
}

/* ---- headers, destinations ---- */

/* HeaderOperations {set: map, add: map, remove: list} into a header modifier filter; NULL when o is absent.
 */
/* Istio's isInternalHeader: pseudo-headers and Host are not modified as headers (TranslateHeadersOperations).
 */
static bool internal_header(const char *k)
{
    return k[0] == ':' || !strcasecmp(k, "host");
}

/* HeaderOperations into a header modifier filter. A request set/add of Host or :authority is Istio's
 * authority rewrite: *authority gets it (set before add), and it is not a header operation; other
 * pseudo-headers are dropped with a WARN, as Istio drops them. */
static Zmesh__V1__RouteFilter *header_ops(struct conv *c, const json_t *o, const char *path, bool response,
                                          const char **authority)
{
    static const char *const keys[] = {"set", "add", "remove", NULL};
    char f[300];
    if (!json_is_object(o)) {
        ERR(c, path, "expected a mapping");
        return NULL;
    }
    l7c_unknown_keys(c, o, path, keys);
    Zmesh__V1__HeaderModifier *hm = l7c_alloc(c, sizeof(*hm));
    Zmesh__V1__RouteFilter *rf = l7c_alloc(c, sizeof(*rf));
    if (!hm || !rf) return NULL;
    zmesh__v1__header_modifier__init(hm);
    zmesh__v1__route_filter__init(rf);
    for (int l = 0; l < 2; l++) {
        json_t *m;
        int rc = l7c_get_obj(c, o, l ? "add" : "set", path, &m);
        if (rc < 0) return NULL;
        if (rc == 0) continue;
        size_t n = json_object_size(m);
        Zmesh__V1__HeaderValue **hv = l7c_alloc(c, n * sizeof(*hv));
        if (!hv) return NULL;
        const char *k;
        json_t *v;
        size_t i = 0;
        json_object_foreach(m, k, v)
        {
            l7c_fld(f, sizeof(f), "%s.%s.%s", path, l ? "add" : "set", k);
            if (!json_is_string(v)) {
                ERR(c, f, "expected a string");
                return NULL;
            }
            if (internal_header(k)) {
                bool auth = !strcasecmp(k, "host") || !strcasecmp(k, ":authority");
                if (auth && !response && (!*authority || !l)) {
                    *authority = json_string_value(v);
                } else if (!auth || response) {
                    WARN(c, f,
                         "a pseudo-header or Host is not modified as a header (Istio drops it), ignored");
                }
                continue;
            }
            if (!(hv[i] = l7c_alloc(c, sizeof(**hv)))) return NULL;
            zmesh__v1__header_value__init(hv[i]);
            hv[i]->name = l7c_dup(c, k);
            hv[i]->value = l7c_dup(c, json_string_value(v));
            if (hv[i]->name)
                for (char *x = hv[i]->name; *x; x++)
                    *x = (char)tolower((unsigned char)*x);
            i++;
        }
        if (l) {
            hm->add = hv;
            hm->n_add = i;
        } else {
            hm->set = hv;
            hm->n_set = i;
        }
    }
    if (l7c_get_strs(c, o, "remove", path, &hm->remove, &hm->n_remove) < 0) return NULL;
    size_t w = 0;
    for (size_t i = 0; i < hm->n_remove; i++) {
        if (internal_header(hm->remove[i])) { /* Istio's dropInternal */
            l7c_fld(f, sizeof(f), "%s.remove[%zu]", path, i);
            WARN(c, f, "a pseudo-header or Host cannot be removed (Istio drops it), ignored");
            continue;
        }
        for (char *x = hm->remove[i]; *x; x++)
            *x = (char)tolower((unsigned char)*x);
        hm->remove[w++] = hm->remove[i];
    }
    hm->n_remove = w;
    if (response) {
        rf->kind_case = ZMESH__V1__ROUTE_FILTER__KIND_RESPONSE_HEADER_MODIFIER;
        rf->response_header_modifier = hm;
    } else {
        rf->kind_case = ZMESH__V1__ROUTE_FILTER__KIND_REQUEST_HEADER_MODIFIER;
        rf->request_header_modifier = hm;
    }
    return l7c_bad(c) ? NULL : rf;
}

/* Headers {request, response} into up to two filters appended to fl[*n]. */
static int headers_conv(struct conv *c, const json_t *o, const char *path, Zmesh__V1__RouteFilter **fl,
                        size_t *n, const char **authority)
{
    json_t *h;
    int rc = l7c_get_obj(c, o, "headers", path, &h);
    if (rc <= 0) return rc;
    char f[300];
    l7c_fld(f, sizeof(f), "%s.headers", path);
    static const char *const keys[] = {"request", "response", NULL};
    l7c_unknown_keys(c, h, f, keys);
    for (int d = 0; d < 2; d++) {
        json_t *ops;
        if ((rc = l7c_get_obj(c, h, d ? "response" : "request", f, &ops)) < 0) return -1;
        if (rc == 0) continue;
        char of[320];
        l7c_fld(of, sizeof(of), "%s.%s", f, d ? "response" : "request");
        if (!(fl[(*n)++] = header_ops(c, ops, of, d == 1, authority))) return -1;
    }
    return 1;
}

/* A Destination {host, subset, port {number}} into a BackendRef (and *subset). */
static Zmesh__V1__BackendRef *destination(struct conv *c, const json_t *o, const char *path,
                                          const char **subset)
{
    static const char *const keys[] = {"host", "subset", "port", NULL};
    char f[300];
    if (!json_is_object(o)) {
        ERR(c, path, "expected a mapping");
        return NULL;
    }
    l7c_unknown_keys(c, o, path, keys);
    const char *host = NULL;
    *subset = "";
    if (l7c_get_str(c, o, "host", path, &host) <= 0 || !*host) {
        l7c_fld(f, sizeof(f), "%s.host", path);
        if (!c->failed) ERR(c, f, "missing");
        return NULL;
    }
    if (subset && l7c_get_str(c, o, "subset", path, subset) < 0) return NULL;
    char ns[254], name[254];
    if (!host_service(host, c->ns, ns, sizeof(ns), name, sizeof(name))) {
        l7c_fld(f, sizeof(f), "%s.host", path);
        ERR(c, f,
            "\"%.100s\" is not a Service (a short name, or <name>.<namespace>.svc.<domain>); only Services "
            "are supported as destinations",
            host);
        return NULL;
    }
    long long port = 0;
    json_t *p;
    int rc = l7c_get_obj(c, o, "port", path, &p);
    if (rc < 0) return NULL;
    if (rc > 0) {
        l7c_fld(f, sizeof(f), "%s.port", path);
        static const char *const pk[] = {"number", NULL};
        l7c_unknown_keys(c, p, f, pk);
        if (l7c_get_int(c, p, "number", f, 1, 65535, &port) < 0) return NULL;
    }
    Zmesh__V1__BackendRef *b = l7c_alloc(c, sizeof(*b));
    if (!b) return NULL;
    zmesh__v1__backend_ref__init(b);
    b->namespace_ = l7c_dup(c, ns);
    b->name = l7c_dup(c, name);
    b->port = (uint32_t)port; /* 0: the port the request came to (Istio: the Service's only port) */
    return l7c_bad(c) ? NULL : b;
}

/* ---- the rule's parts ---- */

static int redirect_conv(struct conv *c, const json_t *o, const char *path, Zmesh__V1__RouteFilter **out)
{
    static const char *const keys[] = {"uri",    "authority",    "port", "derivePort",
                                       "scheme", "redirectCode", NULL};
    l7c_unknown_keys(c, o, path, keys);
    const char *uri = NULL, *auth = "", *scheme = "", *derive = NULL;
    long long port = 0, code = 301; /* HTTPRedirect's default redirectCode: 301 */
    if (l7c_get_str(c, o, "uri", path, &uri) < 0 || l7c_get_str(c, o, "authority", path, &auth) < 0 ||
        l7c_get_str(c, o, "scheme", path, &scheme) < 0 ||
        l7c_get_str(c, o, "derivePort", path, &derive) < 0 ||
        l7c_get_int(c, o, "port", path, 1, 65535, &port) < 0 ||
        l7c_get_int(c, o, "redirectCode", path, 300, 399, &code) < 0)
        return -1;
    char f[300];
    if (derive && strcmp(derive, "FROM_PROTOCOL_DEFAULT") != 0 && strcmp(derive, "FROM_REQUEST_PORT") != 0) {
        l7c_fld(f, sizeof(f), "%s.derivePort", path);
        ERR(c, f, "expected FROM_PROTOCOL_DEFAULT or FROM_REQUEST_PORT, got \"%.40s\"", derive);
        return -1;
    }
    if (derive && port) {
        l7c_fld(f, sizeof(f), "%s.derivePort", path);
        ERR(c, f, "port and derivePort are mutually exclusive");
        return -1;
    }
    Zmesh__V1__RequestRedirect *rd = l7c_alloc(c, sizeof(*rd));
    Zmesh__V1__RouteFilter *rf = l7c_alloc(c, sizeof(*rf));
    if (!rd || !rf) return -1;
    zmesh__v1__request_redirect__init(rd);
    zmesh__v1__route_filter__init(rf);
    rd->scheme = l7c_dup(c, scheme);
    rd->hostname = l7c_dup(c, auth);
    rd->port = (uint32_t)port;
    rd->status_code = (uint32_t)code;
    if (uri) {
        if (!(rd->path = l7c_alloc(c, sizeof(*rd->path)))) return -1;
        zmesh__v1__path_modifier__init(rd->path);
        rd->path->type = ZMESH__V1__PATH_MODIFIER__TYPE__FULL; /* Envoy's path_redirect */
        rd->path->value = l7c_dup(c, uri);
    }
    rf->kind_case = ZMESH__V1__ROUTE_FILTER__KIND_REQUEST_REDIRECT;
    rf->request_redirect = rd;
    *out = rf;
    return l7c_bad(c) ? -1 : 0;
}

static int rewrite_conv(struct conv *c, const json_t *o, const char *path, Zmesh__V1__RouteFilter **out)
{
    static const char *const keys[] = {"uri", "authority", "uriRegexRewrite", NULL};
    l7c_unknown_keys(c, o, path, keys);
    const char *uri = NULL, *auth = "";
    json_t *rx;
    int rrc;
    char f[300];
    if (l7c_get_str(c, o, "uri", path, &uri) < 0 || l7c_get_str(c, o, "authority", path, &auth) < 0 ||
        (rrc = l7c_get_obj(c, o, "uriRegexRewrite", path, &rx)) < 0)
        return -1;
    if (uri && rrc > 0) {
        l7c_fld(f, sizeof(f), "%s.uriRegexRewrite", path);
        ERR(c, f, "uri and uriRegexRewrite are mutually exclusive");
        return -1;
    }
    Zmesh__V1__URLRewrite *rw = l7c_alloc(c, sizeof(*rw));
    Zmesh__V1__RouteFilter *rf = l7c_alloc(c, sizeof(*rf));
    if (!rw || !rf) return -1;
    zmesh__v1__urlrewrite__init(rw);
    zmesh__v1__route_filter__init(rf);
    rw->hostname = l7c_dup(c, auth); /* Envoy's host_rewrite_literal */
    if (uri || rrc > 0) {
        if (!(rw->path = l7c_alloc(c, sizeof(*rw->path)))) return -1;
        zmesh__v1__path_modifier__init(rw->path);
    }
    if (uri) {
        rw->path->type = ZMESH__V1__PATH_MODIFIER__TYPE__PREFIX_REWRITE;
        rw->path->value = l7c_dup(c, uri);
    } else if (rrc > 0) {
        l7c_fld(f, sizeof(f), "%s.uriRegexRewrite", path);
        static const char *const rk[] = {"match", "rewrite", NULL};
        l7c_unknown_keys(c, rx, f, rk);
        const char *m = NULL, *r = NULL;
        char mf[320];
        l7c_fld(mf, sizeof(mf), "%s.match", f);
        if (l7c_get_str(c, rx, "match", f, &m) <= 0 || !*m) {
            if (!c->failed) ERR(c, mf, "missing");
            return -1;
        }
        if (l7c_get_str(c, rx, "rewrite", f, &r) <= 0) {
            l7c_fld(mf, sizeof(mf), "%s.rewrite", f);
            if (!c->failed) ERR(c, mf, "missing");
            return -1;
        }
        struct l7_regex *re = NULL;
        char err[300];
        if (l7_regex_compile_rewrite(m, &re, err, sizeof(err)) < 0) {
            ERR(c, mf, "%s", err);
            return -1;
        }
        l7_regex_free(re);
        rw->path->type = ZMESH__V1__PATH_MODIFIER__TYPE__REGEX;
        rw->path->pattern = l7c_dup(c, m);
        rw->path->value = l7c_dup(c, r);
    }
    rf->kind_case = ZMESH__V1__ROUTE_FILTER__KIND_URL_REWRITE;
    rf->url_rewrite = rw;
    *out = rf;
    return l7c_bad(c) ? -1 : 0;
}

/* gRPC status names (grpc/grpc doc/statuscodes.md), as HTTPFaultInjection.Abort.grpcStatus takes them. */
static int grpc_status_code(const char *s)
{
    static const char *const names[] = {
        "OK",        "CANCELLED",      "UNKNOWN",           "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED",
        "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
        "ABORTED",   "OUT_OF_RANGE",   "UNIMPLEMENTED",     "INTERNAL",           "UNAVAILABLE",
        "DATA_LOSS", "UNAUTHENTICATED"};
    for (int i = 0; i < (int)(sizeof(names) / sizeof(names[0])); i++)
        if (!strcmp(s, names[i])) return i;
    if (isdigit((unsigned char)s[0]) && strlen(s) <= 2) {
        int v = atoi(s);
        if (v <= 16) return v;
    }
    return -1;
}

static Zmesh__V1__Fault *fault_conv(struct conv *c, const json_t *o, const char *path)
{
    static const char *const keys[] = {"delay", "abort", NULL};
    char f[300], g[320];
    l7c_unknown_keys(c, o, path, keys);
    Zmesh__V1__Fault *ft = l7c_alloc(c, sizeof(*ft));
    if (!ft) return NULL;
    zmesh__v1__fault__init(ft);
    json_t *d, *a;
    int rd = l7c_get_obj(c, o, "delay", path, &d), ra = l7c_get_obj(c, o, "abort", path, &a);
    if (rd < 0 || ra < 0) return NULL;
    if (rd > 0) {
        static const char *const dk[] = {"fixedDelay", "exponentialDelay", "percentage", "percent", NULL};
        l7c_fld(f, sizeof(f), "%s.delay", path);
        l7c_unknown_keys(c, d, f, dk);
        if (json_object_get(d, "exponentialDelay")) {
            l7c_fld(g, sizeof(g), "%s.exponentialDelay", f);
            ERR(c, g, "not supported (Istio does not implement it either); use fixedDelay");
            return NULL;
        }
        int rc = get_duration(c, d, "fixedDelay", f, &ft->delay_ms);
        if (rc <= 0) {
            l7c_fld(g, sizeof(g), "%s.fixedDelay", f);
            if (!c->failed) ERR(c, g, "missing");
            return NULL;
        }
        ft->delay_ppm = L7_PPM; /* no percentage: every request (Istio's translation) */
        if (get_percent(c, d, "percentage", "percent", f, &ft->delay_ppm) < 0) return NULL;
        if (!ft->delay_ms) {
            l7c_fld(g, sizeof(g), "%s.fixedDelay", f);
            WARN(c, g, "0: no delay is injected");
        }
    }
    if (ra > 0) {
        static const char *const ak[] = {"httpStatus", "grpcStatus", "http2Error", "percentage", NULL};
        l7c_fld(f, sizeof(f), "%s.abort", path);
        l7c_unknown_keys(c, a, f, ak);
        if (json_object_get(a, "http2Error")) {
            l7c_fld(g, sizeof(g), "%s.http2Error", f);
            ERR(c, g, "not supported (Istio does not implement it either); use httpStatus or grpcStatus");
            return NULL;
        }
        long long st = 0;
        const char *gs = NULL;
        int rh = l7c_get_int(c, a, "httpStatus", f, 200, 599, &st),
            rg = l7c_get_str(c, a, "grpcStatus", f, &gs);
        if (rh < 0 || rg < 0) return NULL;
        if ((rh > 0) == (rg > 0)) {
            ERR(c, f, "exactly one of httpStatus and grpcStatus is required");
            return NULL;
        }
        if (rh > 0) {
            ft->abort_http_status = (uint32_t)st;
        } else {
            int code = grpc_status_code(gs);
            if (code < 0) {
                l7c_fld(g, sizeof(g), "%s.grpcStatus", f);
                ERR(c, g, "not a gRPC status name (OK, CANCELLED, ..., UNAUTHENTICATED): \"%.40s\"", gs);
                return NULL;
            }
            ft->abort_grpc = true;
            ft->abort_grpc_status = (uint32_t)code;
        }
        ft->abort_ppm = L7_PPM;
        if (get_percent(c, a, "percentage", NULL, f, &ft->abort_ppm) < 0) return NULL;
    }
    return l7c_bad(c) ? NULL : ft;
}

/* retryOn: Envoy's condition names, and status codes (Istio's parseRetryOn in route/retry/retry.go). */
static Zmesh__V1__Retry *retry_conv(struct conv *c, const json_t *o, const char *path)
{
    static const char *const keys[] = {"attempts",
                                       "perTryTimeout",
                                       "retryOn",
                                       "retryRemoteLocalities",
                                       "retryIgnorePreviousHosts",
                                       "backoff",
                                       NULL};
    static const char *const known[] = {"5xx",
                                        "gateway-error",
                                        "reset",
                                        "connect-failure",
                                        "retriable-4xx",
                                        "refused-stream",
                                        "retriable-status-codes",
                                        "cancelled",
                                        "deadline-exceeded",
                                        "internal",
                                        "resource-exhausted",
                                        "unavailable",
                                        NULL};
    char f[300];
    l7c_unknown_keys(c, o, path, keys);
    Zmesh__V1__Retry *r = l7c_alloc(c, sizeof(*r));
    if (!r) return NULL;
    zmesh__v1__retry__init(r);
    long long att = 0;
    if (l7c_get_int(c, o, "attempts", path, 0, 100, &att) < 0) return NULL;
    r->attempts = (uint32_t)att;
    if (get_duration(c, o, "perTryTimeout", path, &r->per_try_timeout_ms) < 0) return NULL;
    /* retryIgnorePreviousHosts: Istio sets the previous_hosts predicate unless it is false (retry.go). */
    r->retry_other_hosts = true;
    json_t *ip = json_object_get(o, "retryIgnorePreviousHosts");
    if (ip && !json_is_null(ip)) {
        if (!json_is_boolean(ip)) {
            l7c_fld(f, sizeof(f), "%s.retryIgnorePreviousHosts", path);
            ERR(c, f, "expected true or false");
            return NULL;
        }
        r->retry_other_hosts = json_is_true(ip);
    }
    /* backoff: Envoy's retry_back_off.base_interval, which must be at least 1 ms (its max_interval is 10x).
     */
    int brc = get_duration(c, o, "backoff", path, &r->backoff_base_ms);
    if (brc < 0) return NULL;
    if (brc > 0 && !r->backoff_base_ms) {
        l7c_fld(f, sizeof(f), "%s.backoff", path);
        ERR(c, f, "expected at least 1ms (Envoy's retry_back_off.base_interval)");
        return NULL;
    }
    if (json_object_get(o, "retryRemoteLocalities")) {
        l7c_fld(f, sizeof(f), "%s.retryRemoteLocalities", path);
        WARN(c, f, "not supported by zmesh's waypoint, ignored");
    }
    const char *on = NULL;
    if (l7c_get_str(c, o, "retryOn", path, &on) < 0) return NULL;
    if (!on || !*on) on = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";
    char *copy = l7c_dup(c, on);
    if (!copy) return NULL;
    size_t cap = 1;
    for (const char *p = copy; *p; p++)
        cap += *p == ',';
    r->retry_on = l7c_alloc(c, cap * sizeof(char *));
    r->retry_on_codes = l7c_alloc(c, cap * sizeof(uint32_t));
    if (!r->retry_on || !r->retry_on_codes) return NULL;
    l7c_fld(f, sizeof(f), "%s.retryOn", path);
    char *save = NULL;
    for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        while (*t == ' ')
            t++;
        size_t tl = strlen(t);
        while (tl && t[tl - 1] == ' ')
            t[--tl] = 0;
        if (!*t) continue;
        if (strspn(t, "0123456789") == strlen(t)) {
            char *end;
            long v = strtol(t, &end, 10);
            if (*end || v < 100 || v > 599) {
                ERR(c, f, "not a retry condition or an HTTP status: \"%.40s\"", t);
                return NULL;
            }
            r->retry_on_codes[r->n_retry_on_codes++] = (uint32_t)v;
            continue;
        }
        bool ok = false;
        for (size_t i = 0; known[i] && !ok; i++)
            ok = !strcmp(t, known[i]);
        if (!ok) {
            ERR(c, f,
                "unknown retry condition \"%.40s\" (expected Envoy's x-envoy-retry-on or "
                "x-envoy-retry-grpc-on "
                "names, or a status code)",
                t);
            return NULL;
        }
        r->retry_on[r->n_retry_on++] = t;
    }
    /* Istio's default policy carries 503 as its retriable status code; a retryOn that lists none keeps none.
     */
    if (!json_object_get(o, "retryOn") || !*json_string_value(json_object_get(o, "retryOn")))
        r->retry_on_codes[r->n_retry_on_codes++] = 503;
    return l7c_bad(c) ? NULL : r;
}

static Zmesh__V1__CorsPolicy *cors_conv(struct conv *c, const json_t *o, const char *path)
{
    static const char *const keys[] = {"allowOrigin",      "allowOrigins",        "allowMethods",
                                       "allowHeaders",     "exposeHeaders",       "maxAge",
                                       "allowCredentials", "unmatchedPreflights", NULL};
    char f[300];
    l7c_unknown_keys(c, o, path, keys);
    Zmesh__V1__CorsPolicy *cp = l7c_alloc(c, sizeof(*cp));
    if (!cp) return NULL;
    zmesh__v1__cors_policy__init(cp);
    json_t *l;
    int rc = l7c_get_list(c, o, "allowOrigins", path, &l);
    if (rc < 0) return NULL;
    char **legacy = NULL;
    size_t n_legacy = 0;
    if (l7c_get_strs(c, o, "allowOrigin", path, &legacy, &n_legacy) < 0) return NULL;
    size_t n = (rc > 0 ? json_array_size(l) : 0) + n_legacy;
    cp->allow_origins = l7c_alloc(c, n * sizeof(*cp->allow_origins));
    if (!cp->allow_origins) return NULL;
    for (size_t i = 0; rc > 0 && i < json_array_size(l); i++) {
        l7c_fld(f, sizeof(f), "%s.allowOrigins[%zu]", path, i);
        Zmesh__V1__StringMatch *m = l7c_alloc(c, sizeof(*m));
        if (!m) return NULL;
        zmesh__v1__string_match__init(m);
        const char *val;
        Zmesh__V1__StringMatch__Type t;
        if (string_match(c, json_array_get(l, i), f, false, &t, &val) < 0) return NULL;
        m->type = t;
        m->value = l7c_dup(c, val);
        cp->allow_origins[cp->n_allow_origins++] = m;
    }
    /* The deprecated allowOrigin: exact strings (Istio's translation). */
    for (size_t i = 0; i < n_legacy; i++) {
        Zmesh__V1__StringMatch *m = l7c_alloc(c, sizeof(*m));
        if (!m) return NULL;
        zmesh__v1__string_match__init(m);
        m->type = ZMESH__V1__STRING_MATCH__TYPE__EXACT;
        m->value = legacy[i];
        cp->allow_origins[cp->n_allow_origins++] = m;
    }
    if (l7c_get_strs(c, o, "allowMethods", path, &cp->allow_methods, &cp->n_allow_methods) < 0 ||
        l7c_get_strs(c, o, "allowHeaders", path, &cp->allow_headers, &cp->n_allow_headers) < 0 ||
        l7c_get_strs(c, o, "exposeHeaders", path, &cp->expose_headers, &cp->n_expose_headers) < 0)
        return NULL;
    uint64_t ms = 0;
    if ((rc = get_duration(c, o, "maxAge", path, &ms)) < 0) return NULL;
    if (rc > 0) {
        cp->has_max_age = true;
        cp->max_age_s = (int64_t)(ms / 1000); /* Envoy's max_age is seconds */
    }
    json_t *cr = json_object_get(o, "allowCredentials");
    if (cr && !json_is_null(cr)) {
        if (!json_is_boolean(cr)) {
            l7c_fld(f, sizeof(f), "%s.allowCredentials", path);
            ERR(c, f, "expected true or false");
            return NULL;
        }
        cp->allow_credentials = json_is_true(cr) ? ZMESH__V1__CORS_POLICY__TRISTATE__TRUE
                                                 : ZMESH__V1__CORS_POLICY__TRISTATE__FALSE;
    }
    const char *up = NULL;
    if (l7c_get_str(c, o, "unmatchedPreflights", path, &up) < 0) return NULL;
    if (up && strcmp(up, "FORWARD") && strcmp(up, "IGNORE") && strcmp(up, "UNSPECIFIED")) {
        l7c_fld(f, sizeof(f), "%s.unmatchedPreflights", path);
        ERR(c, f, "expected FORWARD or IGNORE, got \"%.40s\"", up);
        return NULL;
    }
    cp->unmatched_preflight_ignore = up && !strcmp(up, "IGNORE");
    return l7c_bad(c) ? NULL : cp;
}

static Zmesh__V1__DirectResponse *direct_conv(struct conv *c, const json_t *o, const char *path)
{
    static const char *const keys[] = {"status", "body", NULL};
    char f[300];
    l7c_unknown_keys(c, o, path, keys);
    Zmesh__V1__DirectResponse *dr = l7c_alloc(c, sizeof(*dr));
    if (!dr) return NULL;
    zmesh__v1__direct_response__init(dr);
    long long st = 0;
    int rc = l7c_get_int(c, o, "status", path, 200, 599, &st);
    if (rc <= 0) {
        l7c_fld(f, sizeof(f), "%s.status", path);
        if (!c->failed) ERR(c, f, "missing");
        return NULL;
    }
    dr->status = (uint32_t)st;
    json_t *b;
    if ((rc = l7c_get_obj(c, o, "body", path, &b)) < 0) return NULL;
    if (rc > 0) {
        l7c_fld(f, sizeof(f), "%s.body", path);
        static const char *const bk[] = {"string", "bytes", NULL};
        l7c_unknown_keys(c, b, f, bk);
        const char *s = NULL, *bytes = NULL;
        if (l7c_get_str(c, b, "string", f, &s) < 0 || l7c_get_str(c, b, "bytes", f, &bytes) < 0) return NULL;
        if (s && bytes) {
            ERR(c, f, "string and bytes are mutually exclusive");
            return NULL;
        }
        if (bytes) {
            /* protobuf JSON bytes: base64 (standard or URL alphabet, padding optional). */
            size_t bl = strlen(bytes);
            uint8_t *out = l7c_alloc(c, bl);
            if (!out) return NULL;
            size_t w = 0;
            uint32_t acc = 0;
            int bits = 0;
            for (size_t i = 0; i < bl; i++) {
                char ch = bytes[i];
                int v = ch >= 'A' && ch <= 'Z'   ? ch - 'A'
                        : ch >= 'a' && ch <= 'z' ? ch - 'a' + 26
                        : ch >= '0' && ch <= '9' ? ch - '0' + 52
                        : ch == '+' || ch == '-' ? 62
                        : ch == '/' || ch == '_' ? 63
                        : ch == '='              ? -2
                                                 : -1;
                if (v == -2) break;
                if (v < 0) {
                    char g[320];
                    l7c_fld(g, sizeof(g), "%s.bytes", f);
                    ERR(c, g, "not base64");
                    return NULL;
                }
                acc = (acc << 6) | (uint32_t)v;
                bits += 6;
                if (bits >= 8) {
                    bits -= 8;
                    out[w++] = (uint8_t)(acc >> bits);
                }
            }
            dr->body.data = out;
            dr->body.len = w;
        } else if (s) {
            dr->body.data = (uint8_t *)l7c_dup(c, s);
            dr->body.len = strlen(s);
        }
    }
    return l7c_bad(c) ? NULL : dr;
}

/* A mirror destination and its fraction into a RequestMirror filter. */
static Zmesh__V1__RouteFilter *mirror_conv(struct conv *c, const json_t *dest, const char *path, uint32_t ppm)
{
    const char *subset = "";
    Zmesh__V1__BackendRef *b = destination(c, dest, path, &subset);
    if (!b) return NULL;
    if (*subset) {
        char f[300];
        l7c_fld(f, sizeof(f), "%s.subset", path);
        WARN(
            c, f,
            "a mirror's subset is not supported by zmesh's waypoint yet: the copy goes to the whole Service");
    }
    Zmesh__V1__RequestMirror *m = l7c_alloc(c, sizeof(*m));
    Zmesh__V1__RouteFilter *rf = l7c_alloc(c, sizeof(*rf));
    if (!m || !rf) return NULL;
    zmesh__v1__request_mirror__init(m);
    zmesh__v1__route_filter__init(rf);
    m->backend = b;
    m->numerator = ppm;
    m->denominator = L7_PPM;
    rf->kind_case = ZMESH__V1__ROUTE_FILTER__KIND_REQUEST_MIRROR;
    rf->request_mirror = m;
    return rf;
}

/* One http route. NULL with *skip: left out with a finding (delegate; matches only for gateways). */
static Zmesh__V1__RouteRule *rule_conv(struct conv *c, const json_t *o, const char *path, bool *skip)
{
    static const char *const keys[] = {"name",           "match",
                                       "route",          "redirect",
                                       "directResponse", "delegate",
                                       "rewrite",        "timeout",
                                       "retries",        "fault",
                                       "mirror",         "mirrors",
                                       "mirrorPercent",  "mirrorPercentage",
                                       "mirror_percent", "corsPolicy",
                                       "headers",        NULL};
    char f[300];
    *skip = false;
    if (!json_is_object(o)) {
        ERR(c, path, "expected a mapping");
        return NULL;
    }
    l7c_unknown_keys(c, o, path, keys);
    if (json_object_get(o, "delegate")) {
        l7c_fld(f, sizeof(f), "%s.delegate", path);
        WARN(c, f,
             "delegation is not supported by zmesh's waypoint (Istio supports it for gateways only): this "
             "http route is left out");
        *skip = true;
        return NULL;
    }
    Zmesh__V1__RouteRule *r = l7c_alloc(c, sizeof(*r));
    if (!r) return NULL;
    zmesh__v1__route_rule__init(r);
    const char *name = "";
    if (l7c_get_str(c, o, "name", path, &name) < 0) return NULL;
    r->name = l7c_dup(c, name);
    json_t *l;
    int rc = l7c_get_list(c, o, "match", path, &l);
    if (rc < 0) return NULL;
    size_t nm = rc > 0 ? json_array_size(l) : 0;
    if (nm > VS_MAX_LIST) {
        l7c_fld(f, sizeof(f), "%s.match", path);
        ERR(c, f, "more than %d entries", VS_MAX_LIST);
        return NULL;
    }
    r->matches = l7c_alloc(c, (nm ? nm : 1) * sizeof(*r->matches));
    if (!r->matches) return NULL;
    if (nm == 0) { /* no match: every request (the model's prefix "/") */
        if (!(r->matches[0] = l7c_alloc(c, sizeof(**r->matches)))) return NULL;
        zmesh__v1__route_match__init(r->matches[0]);
        r->n_matches = 1;
    }
    for (size_t i = 0; i < nm; i++) {
        l7c_fld(f, sizeof(f), "%s.match[%zu]", path, i);
        bool mskip;
        Zmesh__V1__RouteMatch *m = match_conv(c, json_array_get(l, i), f, &mskip);
        if (!m && !mskip) return NULL;
        if (m) r->matches[r->n_matches++] = m;
    }
    if (nm && !r->n_matches) { /* every match was for gateways only */
        *skip = true;
        return NULL;
    }
    /* Filters: request and response headers, redirect or rewrite, mirrors. */
    json_t *mirrors = NULL;
    if (l7c_get_list(c, o, "mirrors", path, &mirrors) < 0) return NULL;
    size_t cap = 4 + (mirrors ? json_array_size(mirrors) : 0);
    r->filters = l7c_alloc(c, cap * sizeof(*r->filters));
    if (!r->filters) return NULL;
    const char *hauth = NULL; /* headers.request set/add of Host: Istio's authority rewrite */
    if (headers_conv(c, o, path, r->filters, &r->n_filters, &hauth) < 0) return NULL;
    json_t *rd, *rw, *dr;
    int rrd = l7c_get_obj(c, o, "redirect", path, &rd), rrw = l7c_get_obj(c, o, "rewrite", path, &rw),
        rdr = l7c_get_obj(c, o, "directResponse", path, &dr);
    if (rrd < 0 || rrw < 0 || rdr < 0) return NULL;
    json_t *routes;
    if ((rc = l7c_get_list(c, o, "route", path, &routes)) < 0) return NULL;
    size_t nr = rc > 0 ? json_array_size(routes) : 0;
    /* Istio's validation: exactly one of route, redirect, directResponse (delegate handled above). */
    if ((nr > 0) + (rrd > 0) + (rdr > 0) != 1) {
        ERR(c, path, "exactly one of route, redirect and directResponse is required");
        return NULL;
    }
    if (rrw > 0 && nr == 0) {
        l7c_fld(f, sizeof(f), "%s.rewrite", path);
        ERR(c, f, "a rewrite needs a route");
        return NULL;
    }
    if (rrd > 0) {
        l7c_fld(f, sizeof(f), "%s.redirect", path);
        if (redirect_conv(c, rd, f, &r->filters[r->n_filters]) < 0) return NULL;
        r->n_filters++;
    }
    if (rrw > 0) {
        l7c_fld(f, sizeof(f), "%s.rewrite", path);
        if (rewrite_conv(c, rw, f, &r->filters[r->n_filters]) < 0) return NULL;
        r->n_filters++;
    }
    if (rdr > 0) {
        l7c_fld(f, sizeof(f), "%s.directResponse", path);
        if (!(r->direct_response = direct_conv(c, dr, f))) return NULL;
    }
    /* mirror + mirrorPercentage (or the deprecated mirrorPercent), and mirrors[] */
    json_t *mi;
    if ((rc = l7c_get_obj(c, o, "mirror", path, &mi)) < 0) return NULL;
    if (rc > 0) {
        uint32_t ppm = L7_PPM;
        if (get_percent(c, o, "mirrorPercentage", "mirrorPercent", path, &ppm) < 0) return NULL;
        l7c_fld(f, sizeof(f), "%s.mirror", path);
        if (!(r->filters[r->n_filters] = mirror_conv(c, mi, f, ppm))) return NULL;
        r->n_filters++;
    } else if (json_object_get(o, "mirrorPercentage") || json_object_get(o, "mirrorPercent")) {
        l7c_fld(f, sizeof(f), "%s.mirrorPercentage", path);
        WARN(c, f, "without mirror: ignored");
    }
    if (json_object_get(o, "mirror_percent")) {
        l7c_fld(f, sizeof(f), "%s.mirror_percent", path);
        WARN(c, f, "not supported (use mirrorPercentage), ignored");
    }
    for (size_t i = 0; mirrors && i < json_array_size(mirrors); i++) {
        json_t *e = json_array_get(mirrors, i);
        l7c_fld(f, sizeof(f), "%s.mirrors[%zu]", path, i);
        if (!json_is_object(e)) {
            ERR(c, f, "expected a mapping");
            return NULL;
        }
        static const char *const mk[] = {"destination", "percentage", NULL};
        l7c_unknown_keys(c, e, f, mk);
        json_t *d;
        if (l7c_get_obj(c, e, "destination", f, &d) <= 0) {
            char g[320];
            l7c_fld(g, sizeof(g), "%s.destination", f);
            if (!c->failed) ERR(c, g, "missing");
            return NULL;
        }
        uint32_t ppm = L7_PPM;
        if (get_percent(c, e, "percentage", NULL, f, &ppm) < 0) return NULL;
        char g[320];
        l7c_fld(g, sizeof(g), "%s.destination", f);
        if (!(r->filters[r->n_filters] = mirror_conv(c, d, g, ppm))) return NULL;
        r->n_filters++;
    }
    /* destinations */
    if (nr > VS_MAX_LIST) {
        l7c_fld(f, sizeof(f), "%s.route", path);
        ERR(c, f, "more than %d entries", VS_MAX_LIST);
        return NULL;
    }
    r->backends = l7c_alloc(c, (nr ? nr : 1) * sizeof(*r->backends));
    if (!r->backends) return NULL;
    uint64_t total = 0;
    for (size_t i = 0; i < nr; i++) {
        json_t *e = json_array_get(routes, i);
        l7c_fld(f, sizeof(f), "%s.route[%zu]", path, i);
        if (!json_is_object(e)) {
            ERR(c, f, "expected a mapping");
            return NULL;
        }
        static const char *const dk[] = {"destination", "weight", "headers", NULL};
        l7c_unknown_keys(c, e, f, dk);
        Zmesh__V1__Backend *b = l7c_alloc(c, sizeof(*b));
        if (!b) return NULL;
        zmesh__v1__backend__init(b);
        json_t *d;
        char g[320];
        l7c_fld(g, sizeof(g), "%s.destination", f);
        if (l7c_get_obj(c, e, "destination", f, &d) <= 0) {
            if (!c->failed) ERR(c, g, "missing");
            return NULL;
        }
        const char *subset = "";
        if (!(b->service = destination(c, d, g, &subset))) return NULL;
        b->subset = l7c_dup(c, subset);
        /* A lone destination without a weight takes all traffic; with several, a missing weight is 0. */
        long long w = nr == 1 ? 100 : 0;
        if (l7c_get_int(c, e, "weight", f, 0, 1000000, &w) < 0) return NULL;
        if (nr == 1 && w == 0) w = 100; /* Istio: a single destination's weight is ignored */
        b->weight = (uint32_t)w;
        total += (uint64_t)w;
        b->filters = l7c_alloc(c, 2 * sizeof(*b->filters));
        if (!b->filters) return NULL;
        const char *dauth = NULL;
        if (headers_conv(c, e, f, b->filters, &b->n_filters, &dauth) < 0) return NULL;
        /* Istio: a lone destination's Host applies when the route sets none; a weighted one's is Envoy's
         * per-cluster host rewrite (ClusterWeight host_rewrite_literal), which the route's own rewrite
         * overrides. */
        if (dauth && nr == 1 && !hauth)
            hauth = dauth;
        else if (dauth && nr > 1)
            b->authority = l7c_dup(c, dauth);
        r->backends[r->n_backends++] = b;
    }
    if (hauth && nr > 0) {
        Zmesh__V1__URLRewrite *rw = NULL;
        for (size_t i = 0; i < r->n_filters; i++)
            if (r->filters[i]->kind_case == ZMESH__V1__ROUTE_FILTER__KIND_URL_REWRITE)
                rw = r->filters[i]->url_rewrite;
        if (!rw) {
            Zmesh__V1__RouteFilter *rf = l7c_alloc(c, sizeof(*rf));
            rw = l7c_alloc(c, sizeof(*rw));
            if (!rf || !rw) return NULL;
            zmesh__v1__route_filter__init(rf);
            zmesh__v1__urlrewrite__init(rw);
            rf->kind_case = ZMESH__V1__ROUTE_FILTER__KIND_URL_REWRITE;
            rf->url_rewrite = rw;
            r->filters[r->n_filters++] = rf;
        }
        if (!*rw->hostname) rw->hostname = l7c_dup(c, hauth); /* rewrite.authority wins (Istio's order) */
    }
    if (nr > 1 && total == 0) {
        l7c_fld(f, sizeof(f), "%s.route", path);
        ERR(c, f, "the destinations' weights add up to 0");
        return NULL;
    }
    uint64_t to = 0;
    if ((rc = get_duration(c, o, "timeout", path, &to)) < 0) return NULL;
    if (rc > 0 && to) {
        if (!(r->timeouts = l7c_alloc(c, sizeof(*r->timeouts)))) return NULL;
        zmesh__v1__timeouts__init(r->timeouts);
        r->timeouts->request_ms = to;
    }
    json_t *x;
    if ((rc = l7c_get_obj(c, o, "retries", path, &x)) < 0) return NULL;
    if (rc > 0) {
        l7c_fld(f, sizeof(f), "%s.retries", path);
        if (!(r->retry = retry_conv(c, x, f))) return NULL;
    }
    if ((rc = l7c_get_obj(c, o, "fault", path, &x)) < 0) return NULL;
    if (rc > 0) {
        l7c_fld(f, sizeof(f), "%s.fault", path);
        if (!(r->fault = fault_conv(c, x, f))) return NULL;
    }
    if ((rc = l7c_get_obj(c, o, "corsPolicy", path, &x)) < 0) return NULL;
    if (rc > 0) {
        l7c_fld(f, sizeof(f), "%s.corsPolicy", path);
        if (!(r->cors = cors_conv(c, x, f))) return NULL;
    }
    return l7c_bad(c) ? NULL : r;
}

/* spec.tcp (TCPRoute): match[].port (and gateways), route[] destinations with weights. A route whose matches
 * are all for gateways only is left out (INFO); other L4 match fields narrow the route and are refused. */
/* The route list of a tcp or tls route (f its field, kind "tcp" or "tls"): weighted destinations into *out.
 */
static int l4_destinations(struct conv *c, const json_t *rl, const char *f, const char *kind,
                           Zmesh__V1__Backend ***out, size_t *n)
{
    char g[128];
    *n = 0;
    size_t nr = rl ? json_array_size(rl) : 0;
    if (!nr) {
        l7c_fld(g, sizeof(g), "%s.route", f);
        ERR(c, g, "missing: a %s route needs a destination", kind);
        return -1;
    }
    (*out) = l7c_alloc(c, nr * sizeof(*(*out)));
    if (!(*out)) return -1;
    uint64_t total = 0;
    for (size_t k = 0; k < nr; k++) {
        json_t *e = json_array_get(rl, k), *d = NULL;
        l7c_fld(g, sizeof(g), "%s.route[%zu]", f, k);
        if (!json_is_object(e)) {
            ERR(c, g, "expected a mapping");
            return -1;
        }
        static const char *const dk[] = {"destination", "weight", NULL};
        l7c_unknown_keys(c, e, g, dk);
        char h[160];
        l7c_fld(h, sizeof(h), "%s.destination", g);
        if (l7c_get_obj(c, e, "destination", g, &d) <= 0) {
            if (!c->failed) ERR(c, h, "missing");
            return -1;
        }
        Zmesh__V1__Backend *b = l7c_alloc(c, sizeof(*b));
        if (!b) return -1;
        zmesh__v1__backend__init(b);
        const char *subset = "";
        if (!(b->service = destination(c, d, h, &subset))) return -1;
        b->subset = l7c_dup(c, subset);
        long long w = nr == 1 ? 100 : 0;
        if (l7c_get_int(c, e, "weight", g, 0, 1000000, &w) < 0) return -1;
        if (nr == 1 && w == 0) w = 100;
        b->weight = (uint32_t)w;
        total += (uint64_t)w;
        (*out)[(*n)++] = b;
    }
    if (total == 0) {
        l7c_fld(g, sizeof(g), "%s.route", f);
        ERR(c, g, "the destinations' weights add up to 0");
        return -1;
    }
    return 0;
}

/* Room for n more tcp_rules (tls routes come first, then tcp routes, into one list). */
static int grow_l4(struct conv *c, Zmesh__V1__HTTPRoute *m, size_t n)
{
    Zmesh__V1__TcpRule **v = l7c_alloc(c, (m->n_tcp_rules + n + 1) * sizeof(*v));
    if (!v) return -1;
    if (m->n_tcp_rules) memcpy(v, m->tcp_rules, m->n_tcp_rules * sizeof(*v));
    m->tcp_rules = v;
    return 0;
}

/* spec.tls, as Istio's waypoint reads it (istio/istio pilot/pkg/networking/core/listener_waypoint.go
 * getTLSRouteMatch, tls.go matchTLS): the waypoint does not inspect SNI; a rule without match applies to
 * every port of every Service of the VirtualService, a match applies only when its sniHosts is exactly one
 * host, the Service's own name, and its port (if set) is the connection's; a match with sourceLabels or
 * sourceNamespace never applies (the waypoint has no source there); destinationSubnets is not read. Each rule
 * becomes one tls tcp_rule per match (in order, sharing the rule's destinations). */
static int tls_conv(struct conv *c, const json_t *spec, Zmesh__V1__HTTPRoute *m)
{
    json_t *l;
    int rc = l7c_get_list(c, spec, "tls", "spec", &l);
    if (rc <= 0) return rc;
    size_t need = 0;
    for (size_t i = 0; i < json_array_size(l); i++) {
        json_t *ml = json_object_get(json_array_get(l, i), "match");
        need += json_is_array(ml) && json_array_size(ml) ? json_array_size(ml) : 1;
    }
    if (need > L7_MAX_VS_RULES) {
        ERR(c, "spec.tls", "more than %d entries and matches", L7_MAX_VS_RULES);
        return -1;
    }
    if (grow_l4(c, m, need) < 0) return -1;
    for (size_t i = 0; i < json_array_size(l); i++) {
        json_t *o = json_array_get(l, i), *ml = NULL, *rl = NULL;
        char f[64], g[128];
        l7c_fld(f, sizeof(f), "spec.tls[%zu]", i);
        if (!json_is_object(o)) {
            ERR(c, f, "expected a mapping");
            return -1;
        }
        static const char *const keys[] = {"match", "route", NULL};
        l7c_unknown_keys(c, o, f, keys);
        if (l7c_get_list(c, o, "match", f, &ml) < 0 || l7c_get_list(c, o, "route", f, &rl) < 0) return -1;
        Zmesh__V1__Backend **be = NULL;
        size_t nb = 0;
        if (l4_destinations(c, rl, f, "tls", &be, &nb) < 0) return -1;
        size_t nm = ml ? json_array_size(ml) : 0;
        for (size_t k = 0; k < (nm ? nm : 1); k++) {
            Zmesh__V1__TcpRule *t = l7c_alloc(c, sizeof(*t));
            if (!t) return -1;
            zmesh__v1__tcp_rule__init(t);
            t->tls = true;
            t->backends = be;
            t->n_backends = nb;
            if (nm) {
                json_t *mt = json_array_get(ml, k), *gw = NULL;
                l7c_fld(g, sizeof(g), "%s.match[%zu]", f, k);
                if (!json_is_object(mt)) {
                    ERR(c, g, "expected a mapping");
                    return -1;
                }
                static const char *const mk[] = {"sniHosts", "destinationSubnets", "port", "sourceLabels",
                                                 "gateways", "sourceNamespace",    NULL};
                l7c_unknown_keys(c, mt, g, mk);
                bool others;
                if (l7c_get_list(c, mt, "gateways", g, &gw) < 0) return -1;
                if (!gateways_mesh(gw, &others)) {
                    l7c_finding(c, MANIFEST_INFO, g,
                                "a match for gateways only (no \"mesh\"): not for the waypoint, skipped");
                    continue;
                }
                if (json_object_get(mt, "destinationSubnets")) {
                    char h[160];
                    l7c_fld(h, sizeof(h), "%s.destinationSubnets", g);
                    WARN(c, h, "not read by a waypoint (as Istio's), ignored");
                }
                json_t *sl = json_object_get(mt, "sourceLabels"),
                       *sn = json_object_get(mt, "sourceNamespace");
                if ((json_is_object(sl) && json_object_size(sl)) ||
                    (json_is_string(sn) && *json_string_value(sn))) {
                    l7c_finding(
                        c, MANIFEST_INFO, g,
                        "sourceLabels or sourceNamespace: never applies at a waypoint (Istio's waypoint "
                        "evaluates tls matches without a source), skipped");
                    continue;
                }
                char **sni = NULL;
                size_t nsni = 0;
                if (l7c_get_strs(c, mt, "sniHosts", g, &sni, &nsni) < 0) return -1;
                char sns[128], sname[128];
                bool named = false;
                if (nsni == 1 && strchr(sni[0], '.') &&
                    host_service(sni[0], c->ns, sns, sizeof(sns), sname, sizeof(sname)))
                    for (size_t p = 0; p < m->n_parents && !named; p++)
                        named =
                            !strcmp(m->parents[p]->namespace_, sns) && !strcmp(m->parents[p]->name, sname);
                if (!named) {
                    char h[160];
                    l7c_fld(h, sizeof(h), "%s.sniHosts", g);
                    l7c_finding(
                        c, MANIFEST_INFO, h,
                        "never applies at a waypoint: it applies only when sniHosts is exactly one host, "
                        "the full name of one of the VirtualService's Services (the waypoint does not "
                        "read SNI), skipped");
                    continue;
                }
                if (!(t->service = l7c_alloc(c, sizeof(*t->service)))) return -1;
                zmesh__v1__parent_ref__init(t->service);
                t->service->namespace_ = l7c_dup(c, sns);
                t->service->name = l7c_dup(c, sname);
                long long port = 0;
                if (l7c_get_int(c, mt, "port", g, 1, 65535, &port) < 0) return -1;
                if (port) {
                    if (!(t->ports = l7c_alloc(c, sizeof(*t->ports)))) return -1;
                    t->ports[0] = (uint32_t)port;
                    t->n_ports = 1;
                }
            }
            m->tcp_rules[m->n_tcp_rules++] = t;
        }
    }
    return l7c_bad(c) ? -1 : 1;
}

static int tcp_conv(struct conv *c, const json_t *spec, Zmesh__V1__HTTPRoute *m)
{
    json_t *l;
    int rc = l7c_get_list(c, spec, "tcp", "spec", &l);
    if (rc <= 0) return rc;
    if (json_array_size(l) > L7_MAX_VS_RULES) {
        ERR(c, "spec.tcp", "more than %d entries", L7_MAX_VS_RULES);
        return -1;
    }
    if (grow_l4(c, m, json_array_size(l)) < 0) return -1;
    for (size_t i = 0; i < json_array_size(l); i++) {
        json_t *o = json_array_get(l, i), *ml = NULL, *rl = NULL;
        char f[64], g[128];
        l7c_fld(f, sizeof(f), "spec.tcp[%zu]", i);
        if (!json_is_object(o)) {
            ERR(c, f, "expected a mapping");
            return -1;
        }
        static const char *const keys[] = {"match", "route", NULL};
        l7c_unknown_keys(c, o, f, keys);
        Zmesh__V1__TcpRule *t = l7c_alloc(c, sizeof(*t));
        if (!t) return -1;
        zmesh__v1__tcp_rule__init(t);
        if (l7c_get_list(c, o, "match", f, &ml) < 0 || l7c_get_list(c, o, "route", f, &rl) < 0) return -1;
        size_t nm = ml ? json_array_size(ml) : 0, kept = 0;
        bool any_port = nm == 0;
        t->ports = l7c_alloc(c, (nm ? nm : 1) * sizeof(*t->ports));
        if (!t->ports) return -1;
        for (size_t k = 0; k < nm; k++) {
            json_t *mt = json_array_get(ml, k), *gw = NULL;
            l7c_fld(g, sizeof(g), "%s.match[%zu]", f, k);
            if (!json_is_object(mt)) {
                ERR(c, g, "expected a mapping");
                return -1;
            }
            static const char *const mk[] = {
                "destinationSubnets", "port", "sourceLabels", "gateways", "sourceNamespace",
                "sourceSubnet",       NULL};
            l7c_unknown_keys(c, mt, g, mk);
            static const char *const refused[] = {"destinationSubnets", "sourceLabels", "sourceNamespace",
                                                  "sourceSubnet", NULL};
            for (size_t x = 0; refused[x]; x++)
                if (json_object_get(mt, refused[x])) {
                    char h[160];
                    l7c_fld(h, sizeof(h), "%s.%s", g, refused[x]);
                    ERR(c, h,
                        "not supported by zmesh's waypoint (a match on it cannot be dropped without widening "
                        "the route)");
                    return -1;
                }
            bool others;
            if (l7c_get_list(c, mt, "gateways", g, &gw) < 0) return -1;
            if (!gateways_mesh(gw, &others)) {
                l7c_finding(c, MANIFEST_INFO, g,
                            "a match for gateways only (no \"mesh\"): not for the waypoint, skipped");
                continue;
            }
            long long port = 0;
            if (l7c_get_int(c, mt, "port", g, 1, 65535, &port) < 0) return -1;
            kept++;
            if (!port)
                any_port = true;
            else
                t->ports[t->n_ports++] = (uint32_t)port;
        }
        if (nm && !kept) continue; /* every match was for gateways only */
        if (any_port) t->n_ports = 0;
        if (l4_destinations(c, rl, f, "tcp", &t->backends, &t->n_backends) < 0) return -1;
        m->tcp_rules[m->n_tcp_rules++] = t;
    }
    return l7c_bad(c) ? -1 : 1;
}

/* The Services spec.hosts names, as parents (each once). WARNs for hosts that are not Services. */
static int hosts_conv(struct conv *c, const json_t *spec, Zmesh__V1__HTTPRoute *m, bool quiet)
{
    if (l7c_get_strs(c, spec, "hosts", "spec", &m->hostnames, &m->n_hostnames) < 0) return -1;
    if (!m->n_hostnames) {
        ERR(c, "spec.hosts", "missing: a VirtualService needs at least one host");
        return -1;
    }
    if (m->n_hostnames > VS_MAX_LIST) {
        ERR(c, "spec.hosts", "more than %d entries", VS_MAX_LIST);
        return -1;
    }
    m->parents = l7c_alloc(c, m->n_hostnames * sizeof(*m->parents));
    if (!m->parents) return -1;
    for (size_t i = 0; i < m->n_hostnames; i++) {
        char ns[254], name[254], f[64];
        l7c_fld(f, sizeof(f), "spec.hosts[%zu]", i);
        if (!host_service(m->hostnames[i], c->ns, ns, sizeof(ns), name, sizeof(name))) {
            if (!quiet)
                WARN(c, f,
                     "\"%.100s\" does not name a Service (a short name or <name>.<namespace>.svc.<domain>; "
                     "wildcards and external hosts are not supported by zmesh's waypoint): skipped",
                     m->hostnames[i]);
            continue;
        }
        bool seen = false;
        for (size_t k = 0; k < m->n_parents && !seen; k++)
            seen = !strcmp(m->parents[k]->namespace_, ns) && !strcmp(m->parents[k]->name, name);
        if (seen) continue;
        Zmesh__V1__ParentRef *p = l7c_alloc(c, sizeof(*p));
        if (!p) return -1;
        zmesh__v1__parent_ref__init(p);
        p->namespace_ = l7c_dup(c, ns);
        p->name = l7c_dup(c, name);
        m->parents[m->n_parents++] = p;
    }
    return l7c_bad(c) ? -1 : 0;
}

int vs_convert(const json_t *obj, const struct manifest_src *src, const struct manifest_store *st,
               uint8_t **pb, size_t *len, char *name, size_t name_n, manifest_report_fn report, void *ud)
{
    struct vs_conv vc = {.c = {.src = src, .report = report, .ud = ud}, .st = st};
    int rc = -EINVAL;
    *pb = NULL;
    *len = 0;
    if (!json_is_object(obj)) {
        ERR(&vc.c, "", "expected a mapping");
        return -EINVAL;
    }
    static const char *const top[] = {"apiVersion", "kind", "metadata", "spec", "status", NULL};
    l7c_unknown_keys(&vc.c, obj, "", top);
    const char *api = "", *kind = "", *ns, *nm;
    int64_t created = 0;
    if (l7c_get_str(&vc.c, obj, "apiVersion", "", &api) < 0 || l7c_get_str(&vc.c, obj, "kind", "", &kind) < 0)
        goto out;
    if (strcmp(kind, "VirtualService") != 0) {
        ERR(&vc.c, "kind", "expected VirtualService, got \"%.40s\"", kind);
        goto out;
    }
    if (strcmp(api, NETWORKING_GROUP "/v1") && strcmp(api, NETWORKING_GROUP "/v1beta1") &&
        strcmp(api, NETWORKING_GROUP "/v1alpha3")) {
        ERR(&vc.c, "apiVersion", "expected %s/v1, v1beta1 or v1alpha3, got \"%.60s\"", NETWORKING_GROUP, api);
        goto out;
    }
    if (l7c_meta(&vc.c, obj, &ns, &nm, &created) < 0) goto out;
    if (snprintf(name, name_n, "%s/%s", ns, nm) >= (int)name_n) {
        ERR(&vc.c, "metadata.name", "namespace/name longer than %zu bytes", name_n - 1);
        goto out;
    }
    json_t *spec;
    if (l7c_get_obj(&vc.c, obj, "spec", "", &spec) <= 0) {
        if (!vc.c.failed) ERR(&vc.c, "spec", "missing");
        goto out;
    }
    static const char *const sk[] = {"hosts", "gateways", "http", "tls", "tcp", "exportTo", NULL};
    l7c_unknown_keys(&vc.c, spec, "spec", sk);
    json_t *gw = NULL;
    if (l7c_get_list(&vc.c, spec, "gateways", "spec", &gw) < 0) goto out;
    bool others;
    if (!gateways_mesh(gw, &others)) {
        l7c_finding(&vc.c, MANIFEST_INFO, "spec.gateways",
                    "bound to gateways only (no \"mesh\"): not for the waypoint, skipped");
        rc = -ENOENT;
        goto out;
    }
    if (others)
        WARN(&vc.c, "spec.gateways", "only \"mesh\" applies to the waypoint; the other gateways are ignored");
    if (json_object_get(spec, "exportTo"))
        WARN(&vc.c, "spec.exportTo",
             "not supported by zmesh's waypoint, ignored (the VirtualService applies to every client of its "
             "Services)");
    Zmesh__V1__HTTPRoute m = ZMESH__V1__HTTPROUTE__INIT;
    m.kind = ZMESH__V1__HTTPROUTE__KIND__VIRTUAL_SERVICE;
    m.namespace_ = (char *)ns;
    m.name = (char *)nm;
    m.creation_timestamp = created;
    if (hosts_conv(&vc.c, spec, &m, false) < 0) goto out;
    if (!m.n_parents) {
        l7c_finding(&vc.c, MANIFEST_WARN, "spec.hosts", "no host names a Service: nothing for the waypoint");
        rc = -ENOENT;
        goto out;
    }
    json_t *l;
    int r = l7c_get_list(&vc.c, spec, "http", "spec", &l);
    if (r < 0) goto out;
    if (r > 0) {
        if (json_array_size(l) > L7_MAX_VS_RULES) {
            ERR(&vc.c, "spec.http", "more than %d entries", L7_MAX_VS_RULES);
            goto out;
        }
        m.rules = l7c_alloc(&vc.c, json_array_size(l) * sizeof(*m.rules));
        if (!m.rules) goto nomem;
        for (size_t i = 0; i < json_array_size(l); i++) {
            char f[64];
            l7c_fld(f, sizeof(f), "spec.http[%zu]", i);
            bool skip;
            Zmesh__V1__RouteRule *rr = rule_conv(&vc.c, json_array_get(l, i), f, &skip);
            if (!rr && !skip) goto out;
            if (rr) m.rules[m.n_rules++] = rr;
        }
    }
    if ((r = tls_conv(&vc.c, spec, &m)) < 0 || (r = tcp_conv(&vc.c, spec, &m)) < 0) goto out;
    if (l7c_bad(&vc.c)) goto out;
    rc = l7c_pack_and_check(&vc.c, &m.base, L7_TYPE_URL_HTTP_ROUTE, name, pb, len);
    goto out;
nomem:
    rc = -ENOMEM;
out:
    if (l7c_bad(&vc.c) && rc == 0) {
        free(*pb);
        *pb = NULL;
        rc = -EINVAL;
    }
    if (vc.c.oom) rc = -ENOMEM;
    l7_arena_free(&vc.c.a);
    return rc;
}

/* ---- VirtualService and HTTPRoute on one Service ---- */

/* Each (VirtualService, Service, Gateway API route) overlap among docs: cb(ud, vs doc, message). */
static void conflicts_each(const struct manifest_l7_doc *docs, size_t n,
                           void (*cb)(void *ud, const struct manifest_l7_doc *vs, const char *msg), void *ud)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(docs[i].kind, "VirtualService") != 0) continue;
        struct conv c = {.src = &docs[i].src, .report = NULL, .ud = NULL};
        const json_t *meta = json_object_get(docs[i].doc, "metadata");
        const char *vns = json_string_value(json_object_get(meta, "namespace"));
        c.ns = vns && *vns ? vns : "default";
        json_t *spec = json_object_get(docs[i].doc, "spec");
        if (!json_is_object(spec)) continue;
        Zmesh__V1__HTTPRoute m = ZMESH__V1__HTTPROUTE__INIT;
        /* Findings about the hosts themselves were given by vs_convert; this pass only looks for overlaps. */
        const json_t *hosts = json_object_get(spec, "hosts");
        if (!json_is_array(hosts) || !json_array_size(hosts)) continue;
        if (hosts_conv(&c, spec, &m, true) < 0) {
            l7_arena_free(&c.a);
            continue;
        }
        for (size_t p = 0; p < m.n_parents; p++)
            for (size_t k = 0; k < n; k++) {
                if (strcmp(docs[k].kind, "HTTPRoute") != 0 && strcmp(docs[k].kind, "GRPCRoute") != 0)
                    continue;
                const json_t *rm = json_object_get(docs[k].doc, "metadata");
                const char *rns = json_string_value(json_object_get(rm, "namespace"));
                const char *rname = json_string_value(json_object_get(rm, "name"));
                if (!rns || !*rns) rns = "default";
                const json_t *prs = json_object_get(json_object_get(docs[k].doc, "spec"), "parentRefs");
                for (size_t x = 0; x < json_array_size(prs); x++) {
                    const json_t *pr = json_array_get(prs, x);
                    const char *g = json_string_value(json_object_get(pr, "group"));
                    const char *kd = json_string_value(json_object_get(pr, "kind"));
                    const char *pns = json_string_value(json_object_get(pr, "namespace"));
                    const char *pn = json_string_value(json_object_get(pr, "name"));
                    if (!g || *g || !kd || strcmp(kd, "Service") || !pn) continue;
                    if (!pns) pns = rns;
                    if (strcmp(pns, m.parents[p]->namespace_) || strcmp(pn, m.parents[p]->name)) continue;
                    char msg[1024];
                    snprintf(
                        msg, sizeof(msg),
                        "Service %s/%s also has %s %s/%s: mixing a VirtualService and a Gateway API route "
                        "on one Service is undefined in Istio; zmesh's waypoint applies the %s there and "
                        "ignores this VirtualService for that Service",
                        pns, pn, docs[k].kind, rns, rname ? rname : "?", docs[k].kind);
                    cb(ud, &docs[i], msg);
                    x = json_array_size(prs);
                }
            }
        l7_arena_free(&c.a);
    }
}

struct report_ctx {
    manifest_report_fn report;
    void *ud;
};

static void report_one(void *ud, const struct manifest_l7_doc *vs, const char *msg)
{
    struct report_ctx *r = ud;
    struct conv rc = {.src = &vs->src, .report = r->report, .ud = r->ud};
    l7c_finding(&rc, MANIFEST_WARN, "spec.hosts", "%s", msg);
}

void vs_report_conflicts(const struct manifest_l7_doc *docs, size_t n, manifest_report_fn report, void *ud)
{
    struct report_ctx r = {report, ud};
    conflicts_each(docs, n, report_one, &r);
}

struct status_ctx {
    const char *ns, *name;
    char *buf;
    size_t len, w, count;
};

static void status_one(void *ud, const struct manifest_l7_doc *vs, const char *msg)
{
    struct status_ctx *s = ud;
    const json_t *meta = json_object_get(vs->doc, "metadata");
    const char *ns = json_string_value(json_object_get(meta, "namespace"));
    const char *name = json_string_value(json_object_get(meta, "name"));
    if (!ns || !*ns) ns = "default";
    if (!name || strcmp(ns, s->ns) || strcmp(name, s->name)) return;
    s->count++;
    if (s->w + 1 < s->len) {
        int k = snprintf(s->buf + s->w, s->len - s->w, "%s%s", s->w ? "; " : "", msg);
        if (k > 0) s->w = s->w + (size_t)k < s->len ? s->w + (size_t)k : s->len - 1;
    }
}

size_t vs_conflict_message(const struct manifest_l7_doc *docs, size_t n, const char *ns, const char *name,
                           char *buf, size_t len)
{
    struct status_ctx s = {.ns = ns, .name = name, .buf = buf, .len = len};
    if (len) buf[0] = 0;
    conflicts_each(docs, n, status_one, &s);
    return s.count;
}

int vs_conflict_status_apply(json_t *obj, const char *message, const char *now)
{
    if (!message || !*message) return k8s_condition_apply(obj, VS_COND_ROUTE_CONFLICT, NULL, now);
    const struct k8s_status_condition c = {
        .type = VS_COND_ROUTE_CONFLICT, .status = true, .reason = "GatewayAPIRouteApplies", .message = message};
    return k8s_condition_apply(obj, VS_COND_ROUTE_CONFLICT, &c, now);
}
