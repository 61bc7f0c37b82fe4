/* DestinationRule manifests to zmesh.v1.DestinationRule (destination_rule.h). */
#include "zmeshd/destination_rule.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mesh/destination_rule.h"
#include "mesh/l7.h"
#include "mesh/l7authz.h"
#include "zmesh/destination_rule.pb-c.h"
#include "zmeshd/k8s.h"
#include "zmeshd/l7.h"
#include "zmeshd/l7_conv.h"

#define DR_GROUP "networking.istio.io"

/* A field the waypoint knows but does not apply: WARN (dropped), or a key nobody knows: WARN (unknown). */
struct key_rule {
    const char *key;
    const char *unsupported; /* NULL: read; else why it is dropped */
};

static void check_keys(struct conv *c, const json_t *obj, const char *path, const struct key_rule *rules)
{
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)obj, k, v)
    {
        const struct key_rule *r = rules;
        while (r->key && strcmp(r->key, k))
            r++;
        char f[256];
        l7c_fld(f, sizeof(f), "%s%s%s", path, *path ? "." : "", k);
        if (!r->key)
            l7c_finding(c, MANIFEST_WARN, f, "unknown field, ignored");
        else if (r->unsupported)
            l7c_finding(c, MANIFEST_WARN, f, "not supported by the waypoint, ignored: %s", r->unsupported);
    }
}

static json_t *get_t(struct conv *c, const json_t *obj, const char *key, const char *path, json_type t,
                     const char *what)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return NULL;
    if (json_typeof(v) != t && !(t == JSON_TRUE && json_is_boolean(v))) {
        char f[256];
        l7c_fld(f, sizeof(f), "%s%s%s", path, *path ? "." : "", key);
        l7c_finding(c, MANIFEST_ERROR, f, "expected %s", what);
        return NULL;
    }
    return v;
}

static const char *get_str(struct conv *c, const json_t *o, const char *key, const char *path)
{
    json_t *v = get_t(c, o, key, path, JSON_STRING, "a string");
    return v ? json_string_value(v) : NULL;
}

/* An unsigned integer field: 1 and *out, 0 absent, -1 reported. */
static int get_uint(struct conv *c, const json_t *o, const char *key, const char *path, uint64_t max,
                    uint64_t *out)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return 0;
    char f[256];
    l7c_fld(f, sizeof(f), "%s%s%s", path, *path ? "." : "", key);
    if (!json_is_integer(v) || json_integer_value(v) < 0 || (uint64_t)json_integer_value(v) > max) {
        l7c_finding(c, MANIFEST_ERROR, f, "expected an integer 0-%llu", (unsigned long long)max);
        return -1;
    }
    *out = (uint64_t)json_integer_value(v);
    return 1;
}

/* A duration field: 1 and *ms, 0 absent, -1 reported. min_ms: Istio's lower bound (1 ms for most). */
static int get_dur(struct conv *c, const json_t *o, const char *key, const char *path, uint64_t min_ms,
                   uint64_t *ms)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return 0;
    char f[256];
    l7c_fld(f, sizeof(f), "%s%s%s", path, *path ? "." : "", key);
    if (!json_is_string(v) || l7_istio_duration_ms(json_string_value(v), ms) < 0) {
        l7c_finding(c, MANIFEST_ERROR, f, "expected a duration such as \"10s\" or \"100ms\"");
        return -1;
    }
    if (*ms < min_ms) {
        l7c_finding(c, MANIFEST_ERROR, f, "must be at least %llu ms", (unsigned long long)min_ms);
        return -1;
    }
    return 1;
}

/* ---- trafficPolicy ---- */

static Zmesh__V1__LoadBalancer *lb_conv(struct conv *c, const json_t *o, const char *path)
{
    static const struct key_rule keys[] = {{"simple", NULL},
                                           {"consistentHash", NULL},
                                           {"localityLbSetting",
                                            "locality load balancing is ztunnel's (Service "
                                            "trafficDistribution)"},
                                           {"warmupDurationSecs", "slow start is not implemented"},
                                           {"warmup", "slow start is not implemented"},
                                           {NULL, NULL}};
    if (!json_is_object(o)) {
        l7c_finding(c, MANIFEST_ERROR, path, "expected a mapping");
        return NULL;
    }
    check_keys(c, o, path, keys);
    Zmesh__V1__LoadBalancer *lb = l7c_alloc(c, sizeof(*lb));
    if (!lb) return NULL;
    zmesh__v1__load_balancer__init(lb);
    char f[256];
    const char *simple = get_str(c, o, "simple", path);
    if (simple) {
        static const struct {
            const char *name;
            Zmesh__V1__LoadBalancer__Simple v;
        } m[] = {
            {"UNSPECIFIED", ZMESH__V1__LOAD_BALANCER__SIMPLE__UNSPECIFIED},
            {"LEAST_REQUEST", ZMESH__V1__LOAD_BALANCER__SIMPLE__LEAST_REQUEST},
            {"LEAST_CONN",
             ZMESH__V1__LOAD_BALANCER__SIMPLE__LEAST_REQUEST}, /* deprecated alias (istio/api) */
            {"ROUND_ROBIN", ZMESH__V1__LOAD_BALANCER__SIMPLE__ROUND_ROBIN},
            {"RANDOM", ZMESH__V1__LOAD_BALANCER__SIMPLE__RANDOM},
            {"PASSTHROUGH", ZMESH__V1__LOAD_BALANCER__SIMPLE__PASSTHROUGH},
        };
        size_t i = 0;
        while (i < sizeof(m) / sizeof(m[0]) && strcmp(m[i].name, simple))
            i++;
        l7c_fld(f, sizeof(f), "%s.simple", path);
        if (i == sizeof(m) / sizeof(m[0])) {
            l7c_finding(c, MANIFEST_ERROR, f,
                        "unknown value \"%.40s\" (ROUND_ROBIN, LEAST_REQUEST, RANDOM, PASSTHROUGH)", simple);
            return NULL;
        }
        lb->simple = m[i].v;
    }
    json_t *ch = get_t(c, o, "consistentHash", path, JSON_OBJECT, "a mapping");
    if (c->failed) return NULL;
    if (ch) {
        char cp[256];
        l7c_fld(cp, sizeof(cp), "%s.consistentHash", path);
        if (simple) {
            l7c_finding(c, MANIFEST_ERROR, cp, "simple and consistentHash are exclusive");
            return NULL;
        }
        static const struct key_rule ck[] = {{"httpHeaderName", NULL},  {"httpCookie", NULL},
                                             {"useSourceIp", NULL},     {"httpQueryParameterName", NULL},
                                             {"ringHash", NULL},        {"maglev", NULL},
                                             {"minimumRingSize", NULL}, {NULL, NULL}};
        check_keys(c, ch, cp, ck);
        Zmesh__V1__ConsistentHash *h = l7c_alloc(c, sizeof(*h));
        if (!h) return NULL;
        zmesh__v1__consistent_hash__init(h);
        int keys_set = 0;
        const char *s;
        if ((s = get_str(c, ch, "httpHeaderName", cp))) {
            h->key_case = ZMESH__V1__CONSISTENT_HASH__KEY_HTTP_HEADER_NAME;
            h->http_header_name = l7c_dup(c, s);
            keys_set++;
        }
        json_t *ck2 = get_t(c, ch, "httpCookie", cp, JSON_OBJECT, "a mapping");
        if (ck2) {
            char kp[300];
            l7c_fld(kp, sizeof(kp), "%s.httpCookie", cp);
            static const struct key_rule kk[] = {{"name", NULL},
                                                 {"path", NULL},
                                                 {"ttl", NULL},
                                                 {"attributes", "cookie attributes are not written"},
                                                 {NULL, NULL}};
            check_keys(c, ck2, kp, kk);
            Zmesh__V1__HTTPCookie *hc = l7c_alloc(c, sizeof(*hc));
            if (!hc) return NULL;
            zmesh__v1__httpcookie__init(hc);
            const char *n = get_str(c, ck2, "name", kp), *pth = get_str(c, ck2, "path", kp);
            hc->name = l7c_dup(c, n ? n : "");
            hc->path = l7c_dup(c, pth ? pth : "");
            uint64_t ms = 0;
            int r = get_dur(c, ck2, "ttl", kp, 0, &ms);
            if (r < 0) return NULL;
            hc->has_ttl = r > 0;
            hc->ttl_ms = ms;
            h->key_case = ZMESH__V1__CONSISTENT_HASH__KEY_HTTP_COOKIE;
            h->http_cookie = hc;
            keys_set++;
        }
        json_t *sip = get_t(c, ch, "useSourceIp", cp, JSON_TRUE, "a boolean");
        if (sip && json_is_true(sip)) {
            h->key_case = ZMESH__V1__CONSISTENT_HASH__KEY_USE_SOURCE_IP;
            h->use_source_ip = 1;
            keys_set++;
        }
        if ((s = get_str(c, ch, "httpQueryParameterName", cp))) {
            h->key_case = ZMESH__V1__CONSISTENT_HASH__KEY_HTTP_QUERY_PARAMETER_NAME;
            h->http_query_parameter_name = l7c_dup(c, s);
            keys_set++;
        }
        if (c->failed) return NULL;
        if (keys_set != 1) {
            l7c_finding(
                c, MANIFEST_ERROR, cp,
                "exactly one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName is required "
                "(%d set)",
                keys_set);
            return NULL;
        }
        json_t *rh = get_t(c, ch, "ringHash", cp, JSON_OBJECT, "a mapping");
        json_t *mg = get_t(c, ch, "maglev", cp, JSON_OBJECT, "a mapping");
        if (c->failed) return NULL;
        uint64_t v = 0;
        if (rh && mg) {
            l7c_finding(c, MANIFEST_ERROR, cp, "ringHash and maglev are exclusive");
            return NULL;
        }
        if (get_uint(c, ch, "minimumRingSize", cp, DR_RING_MAX, &v) > 0) {
            h->minimum_ring_size = v;
            if (mg) {
                l7c_finding(c, MANIFEST_ERROR, cp, "minimumRingSize is for ringHash, not maglev");
                return NULL;
            }
        }
        if (rh) {
            char rp[300];
            l7c_fld(rp, sizeof(rp), "%s.ringHash", cp);
            static const struct key_rule rk[] = {{"minimumRingSize", NULL}, {NULL, NULL}};
            check_keys(c, rh, rp, rk);
            if (get_uint(c, rh, "minimumRingSize", rp, DR_RING_MAX, &v) > 0) h->minimum_ring_size = v;
        }
        if (mg) {
            char mp[300];
            l7c_fld(mp, sizeof(mp), "%s.maglev", cp);
            static const struct key_rule mk[] = {{"tableSize", NULL}, {NULL, NULL}};
            check_keys(c, mg, mp, mk);
            h->algorithm = ZMESH__V1__CONSISTENT_HASH__ALGORITHM__MAGLEV;
            if (get_uint(c, mg, "tableSize", mp, DR_MAGLEV_MAX, &v) > 0) h->table_size = v;
        }
        if (c->failed) return NULL;
        lb->consistent_hash = h;
    }
    return c->failed || c->oom ? NULL : lb;
}

static Zmesh__V1__ConnectionPool *pool_conv(struct conv *c, const json_t *o, const char *path)
{
    static const struct key_rule keys[] = {{"tcp", NULL}, {"http", NULL}, {NULL, NULL}};
    if (!json_is_object(o)) {
        l7c_finding(c, MANIFEST_ERROR, path, "expected a mapping");
        return NULL;
    }
    check_keys(c, o, path, keys);
    Zmesh__V1__ConnectionPool *p = l7c_alloc(c, sizeof(*p));
    if (!p) return NULL;
    zmesh__v1__connection_pool__init(p);
    char f[256];
    uint64_t v;
    json_t *tcp = get_t(c, o, "tcp", path, JSON_OBJECT, "a mapping");
    if (tcp) {
        l7c_fld(f, sizeof(f), "%s.tcp", path);
        static const struct key_rule tk[] = {
            {"maxConnections", NULL},
            {"connectTimeout", NULL},
            {"tcpKeepalive", "TCP keepalive settings are not applied"},
            {"maxConnectionDuration", "not applied"},
            {"idleTimeout", "not applied (connectionPool.http.idleTimeout is)"},
            {NULL, NULL}};
        check_keys(c, tcp, f, tk);
        if (get_uint(c, tcp, "maxConnections", f, INT32_MAX, &v) > 0) p->max_connections = (uint32_t)v;
        if (get_dur(c, tcp, "connectTimeout", f, 1, &v) > 0) p->connect_timeout_ms = v;
    }
    json_t *http = get_t(c, o, "http", path, JSON_OBJECT, "a mapping");
    if (http) {
        l7c_fld(f, sizeof(f), "%s.http", path);
        static const struct key_rule hk[] = {
            {"http1MaxPendingRequests", NULL},
            {"http2MaxRequests", NULL},
            {"maxRequestsPerConnection", NULL},
            {"maxRetries", NULL},
            {"idleTimeout", NULL},
            {"h2UpgradePolicy", "the upstream protocol follows the downstream's"},
            {"useClientProtocol", "the upstream protocol follows the downstream's"},
            {"maxConcurrentStreams", "not applied"},
            {NULL, NULL}};
        check_keys(c, http, f, hk);
        if (get_uint(c, http, "http1MaxPendingRequests", f, INT32_MAX, &v) > 0)
            p->http1_max_pending_requests = (uint32_t)v;
        if (get_uint(c, http, "http2MaxRequests", f, INT32_MAX, &v) > 0) p->http2_max_requests = (uint32_t)v;
        if (get_uint(c, http, "maxRequestsPerConnection", f, INT32_MAX, &v) > 0)
            p->max_requests_per_connection = (uint32_t)v;
        if (get_uint(c, http, "maxRetries", f, INT32_MAX, &v) > 0) p->max_retries = (uint32_t)v;
        if (get_dur(c, http, "idleTimeout", f, 1, &v) > 0) p->idle_timeout_ms = v;
    }
    return c->failed || c->oom ? NULL : p;
}

static Zmesh__V1__OutlierDetection *outlier_conv(struct conv *c, const json_t *o, const char *path)
{
    static const struct key_rule keys[] = {
        {"consecutive5xxErrors", NULL},
        {"consecutiveGatewayErrors", NULL},
        {"consecutiveErrors", NULL},
        {"interval", NULL},
        {"baseEjectionTime", NULL},
        {"maxEjectionPercent", NULL},
        {"minHealthPercent", NULL},
        {"splitExternalLocalOriginErrors", "local-origin errors are not told apart"},
        {"consecutiveLocalOriginFailures", "local-origin errors are not told apart"},
        {NULL, NULL}};
    if (!json_is_object(o)) {
        l7c_finding(c, MANIFEST_ERROR, path, "expected a mapping");
        return NULL;
    }
    check_keys(c, o, path, keys);
    Zmesh__V1__OutlierDetection *d = l7c_alloc(c, sizeof(*d));
    if (!d) return NULL;
    zmesh__v1__outlier_detection__init(d);
    uint64_t v;
    if (get_uint(c, o, "consecutiveErrors", path, INT32_MAX, &v) > 0) { /* deprecated: 502, 503, 504 */
        d->consecutive_gateway_errors = (uint32_t)v;
        d->has_consecutive_5xx = 1; /* istiod sets consecutive5xx 0 with it */
    }
    if (get_uint(c, o, "consecutive5xxErrors", path, INT32_MAX, &v) > 0) {
        d->consecutive_5xx_errors = (uint32_t)v;
        d->has_consecutive_5xx = 1;
    }
    if (get_uint(c, o, "consecutiveGatewayErrors", path, INT32_MAX, &v) > 0)
        d->consecutive_gateway_errors = (uint32_t)v;
    if (get_dur(c, o, "interval", path, 1, &v) > 0) d->interval_ms = v;
    if (get_dur(c, o, "baseEjectionTime", path, 1, &v) > 0) d->base_ejection_time_ms = v;
    if (get_uint(c, o, "maxEjectionPercent", path, 100, &v) > 0) d->max_ejection_percent = (uint32_t)v;
    if (get_uint(c, o, "minHealthPercent", path, 100, &v) > 0) d->min_health_percent = (uint32_t)v;
    return c->failed || c->oom ? NULL : d;
}

static const struct key_rule policy_keys[] = {
    {"loadBalancer", NULL},
    {"connectionPool", NULL},
    {"outlierDetection", NULL},
    {"portLevelSettings", NULL},
    {"tls", "the waypoint's upstream is HBONE with the mesh's mutual TLS"},
    {"tunnel", "not applied"},
    {"proxyProtocol", "not applied"},
    {"retryBudget", "not applied"},
    {NULL, NULL}};

static int parts_conv(struct conv *c, const json_t *o, const char *path, Zmesh__V1__LoadBalancer **lb,
                      Zmesh__V1__ConnectionPool **pool, Zmesh__V1__OutlierDetection **od)
{
    char f[256];
    json_t *v;
    if ((v = json_object_get(o, "loadBalancer")) && !json_is_null(v)) {
        l7c_fld(f, sizeof(f), "%s.loadBalancer", path);
        if (!(*lb = lb_conv(c, v, f))) return -1;
    }
    if ((v = json_object_get(o, "connectionPool")) && !json_is_null(v)) {
        l7c_fld(f, sizeof(f), "%s.connectionPool", path);
        if (!(*pool = pool_conv(c, v, f))) return -1;
    }
    if ((v = json_object_get(o, "outlierDetection")) && !json_is_null(v)) {
        l7c_fld(f, sizeof(f), "%s.outlierDetection", path);
        if (!(*od = outlier_conv(c, v, f))) return -1;
    }
    return 0;
}

static Zmesh__V1__TrafficPolicy *policy_conv(struct conv *c, const json_t *o, const char *path)
{
    if (!json_is_object(o)) {
        l7c_finding(c, MANIFEST_ERROR, path, "expected a mapping");
        return NULL;
    }
    check_keys(c, o, path, policy_keys);
    Zmesh__V1__TrafficPolicy *t = l7c_alloc(c, sizeof(*t));
    if (!t) return NULL;
    zmesh__v1__traffic_policy__init(t);
    if (parts_conv(c, o, path, &t->load_balancer, &t->connection_pool, &t->outlier_detection) < 0)
        return NULL;
    json_t *pl = get_t(c, o, "portLevelSettings", path, JSON_ARRAY, "a list");
    if (c->failed) return NULL;
    if (pl) {
        t->port_level_settings = l7c_alloc(c, json_array_size(pl) * sizeof(*t->port_level_settings));
        if (!t->port_level_settings) return NULL;
        for (size_t i = 0; i < json_array_size(pl); i++) {
            json_t *e = json_array_get(pl, i);
            char f[256];
            l7c_fld(f, sizeof(f), "%s.portLevelSettings[%zu]", path, i);
            if (!json_is_object(e)) {
                l7c_finding(c, MANIFEST_ERROR, f, "expected a mapping");
                return NULL;
            }
            static const struct key_rule pk[] = {
                {"port", NULL},
                {"loadBalancer", NULL},
                {"connectionPool", NULL},
                {"outlierDetection", NULL},
                {"tls", "the waypoint's upstream is HBONE with the mesh's mutual TLS"},
                {NULL, NULL}};
            check_keys(c, e, f, pk);
            Zmesh__V1__PortTrafficPolicy *p = l7c_alloc(c, sizeof(*p));
            if (!p) return NULL;
            zmesh__v1__port_traffic_policy__init(p);
            json_t *port = get_t(c, e, "port", f, JSON_OBJECT, "a mapping");
            uint64_t num = 0;
            char pf[300];
            l7c_fld(pf, sizeof(pf), "%s.port", f);
            if (!port || get_uint(c, port, "number", pf, 65535, &num) <= 0 || !num) {
                if (!c->failed) l7c_finding(c, MANIFEST_ERROR, pf, "port.number 1-65535 is required");
                return NULL;
            }
            p->port = (uint32_t)num;
            if (parts_conv(c, e, f, &p->load_balancer, &p->connection_pool, &p->outlier_detection) < 0)
                return NULL;
            t->port_level_settings[t->n_port_level_settings++] = p;
        }
    }
    return c->failed || c->oom ? NULL : t;
}

/* ---- subsets ---- */

static int kv_cmp(const void *a, const void *b)
{
    return strcmp(((const struct k8s_kv *)a)->key, ((const struct k8s_kv *)b)->key);
}

static Zmesh__V1__Subset *subset_conv(struct conv *c, const json_t *o, const char *path, const char *svc_ns,
                                      const struct manifest_store *st)
{
    if (!json_is_object(o)) {
        l7c_finding(c, MANIFEST_ERROR, path, "expected a mapping");
        return NULL;
    }
    static const struct key_rule keys[] = {
        {"name", NULL}, {"labels", NULL}, {"trafficPolicy", NULL}, {NULL, NULL}};
    check_keys(c, o, path, keys);
    Zmesh__V1__Subset *s = l7c_alloc(c, sizeof(*s));
    if (!s) return NULL;
    zmesh__v1__subset__init(s);
    const char *name = get_str(c, o, "name", path);
    if (!name || !*name) {
        char f[256];
        l7c_fld(f, sizeof(f), "%s.name", path);
        if (!c->failed) l7c_finding(c, MANIFEST_ERROR, f, "required");
        return NULL;
    }
    s->name = l7c_dup(c, name);
    json_t *labels = get_t(c, o, "labels", path, JSON_OBJECT, "a mapping");
    if (c->failed) return NULL;
    size_t nl = labels ? json_object_size(labels) : 0;
    struct k8s_kv *sel = l7c_alloc(c, nl * sizeof(*sel));
    s->labels = l7c_alloc(c, nl * sizeof(*s->labels));
    if (!sel || !s->labels) return NULL;
    if (labels) {
        const char *k;
        json_t *v;
        json_object_foreach(labels, k, v)
        {
            if (!json_is_string(v)) {
                char f[256];
                l7c_fld(f, sizeof(f), "%s.labels.%s", path, k);
                l7c_finding(c, MANIFEST_ERROR, f, "expected a string");
                return NULL;
            }
            Zmesh__V1__Label *l = l7c_alloc(c, sizeof(*l));
            if (!l) return NULL;
            zmesh__v1__label__init(l);
            l->key = l7c_dup(c, k);
            l->value = l7c_dup(c, json_string_value(v));
            sel[s->n_labels] = (struct k8s_kv){l->key, l->value};
            s->labels[s->n_labels++] = l;
        }
        qsort(sel, nl, sizeof(*sel), kv_cmp);
    }
    /* The pods of the Service's namespace that carry every label (istiod's subset endpoints). */
    size_t np = 0;
    const struct k8s_pod *pods = st ? manifest_pods(st, &np) : NULL;
    s->endpoints = l7c_alloc(c, np * sizeof(*s->endpoints));
    if (!s->endpoints) return NULL;
    for (size_t i = 0; i < np; i++) {
        const struct k8s_pod *p = &pods[i];
        if (p->meta.deleting || strcmp(p->meta.namespace_, svc_ns)) continue;
        if (!k8s_selector_matches(sel, nl, p->meta.labels, p->meta.n_labels)) continue;
        if (s->n_endpoints == DR_MAX_ENDPOINTS) {
            char f[256];
            l7c_fld(f, sizeof(f), "%s.labels", path);
            l7c_finding(c, MANIFEST_WARN, f, "selects more than %u pods: the subset keeps the first %u",
                        DR_MAX_ENDPOINTS, DR_MAX_ENDPOINTS);
            break;
        }
        size_t n = strlen(p->meta.namespace_) + strlen(p->meta.name) + 2;
        char *e = l7c_alloc(c, n);
        if (!e) return NULL;
        snprintf(e, n, "%s/%s", p->meta.namespace_, p->meta.name);
        s->endpoints[s->n_endpoints++] = e;
    }
    json_t *tp = json_object_get(o, "trafficPolicy");
    if (tp && !json_is_null(tp)) {
        char f[256];
        l7c_fld(f, sizeof(f), "%s.trafficPolicy", path);
        if (!(s->traffic_policy = policy_conv(c, tp, f))) return NULL;
    }
    return c->failed || c->oom ? NULL : s;
}

/* spec.host to a Service: a short name in the rule's namespace, "<name>.<ns>.svc.<suffix>", or nothing. */
static int resolve_host(struct conv *c, const char *host, const char **svc_ns, const char **svc_name)
{
    if (!strchr(host, '.')) {
        *svc_ns = c->ns;
        *svc_name = host;
        return 0;
    }
    const char *d1 = strchr(host, '.');
    const char *d2 = strchr(d1 + 1, '.');
    if (!d2 || strncmp(d2, ".svc.", 5) != 0 || !d2[5] || d1 == host || d2 == d1 + 1) return -1;
    char *name = l7_arena_strndup(&c->a, host, (size_t)(d1 - host));
    char *ns = l7_arena_strndup(&c->a, d1 + 1, (size_t)(d2 - d1 - 1));
    if (!name || !ns) {
        c->oom = true;
        return -1;
    }
    *svc_ns = ns;
    *svc_name = name;
    return 0;
}

int dr_convert(const json_t *obj, const struct manifest_src *src, const struct manifest_store *st,
               uint8_t **pb, size_t *len, char *name, size_t name_n, manifest_report_fn report, void *ud)
{
    struct conv c = {.src = src, .report = report, .ud = ud};
    int rc = -EINVAL;
    *pb = NULL;
    *len = 0;
    if (!json_is_object(obj)) {
        l7c_finding(&c, MANIFEST_ERROR, "", "expected a mapping");
        return -EINVAL;
    }
    static const struct key_rule top[] = {{"apiVersion", NULL}, {"kind", NULL},   {"metadata", NULL},
                                          {"spec", NULL},       {"status", NULL}, {NULL, NULL}};
    check_keys(&c, obj, "", top);
    const char *api = get_str(&c, obj, "apiVersion", ""), *kind = get_str(&c, obj, "kind", "");
    if (c.failed) goto out;
    if (!kind || strcmp(kind, "DestinationRule")) {
        l7c_finding(&c, MANIFEST_ERROR, "kind", "expected DestinationRule, got \"%.40s\"", kind ? kind : "");
        goto out;
    }
    if (!api || (strcmp(api, DR_GROUP "/v1") && strcmp(api, DR_GROUP "/v1beta1") &&
                 strcmp(api, DR_GROUP "/v1alpha3"))) {
        l7c_finding(&c, MANIFEST_ERROR, "apiVersion", "expected %s/v1, v1beta1 or v1alpha3, got \"%.60s\"",
                    DR_GROUP, api ? api : "");
        goto out;
    }
    json_t *md = get_t(&c, obj, "metadata", "", JSON_OBJECT, "a mapping");
    const char *ns = md ? get_str(&c, md, "namespace", "metadata") : NULL,
               *nm = md ? get_str(&c, md, "name", "metadata") : NULL;
    if (c.failed) goto out;
    if (!nm || !*nm) {
        l7c_finding(&c, MANIFEST_ERROR, "metadata.name", "missing");
        goto out;
    }
    if (!ns || !*ns) ns = "default";
    c.ns = ns;
    if (snprintf(name, name_n, "%s/%s", ns, nm) >= (int)name_n) {
        l7c_finding(&c, MANIFEST_ERROR, "metadata.name", "namespace/name longer than %zu bytes", name_n - 1);
        goto out;
    }
    Zmesh__V1__DestinationRule m = ZMESH__V1__DESTINATION_RULE__INIT;
    m.namespace_ = (char *)ns;
    m.name = (char *)nm;
    const char *ts = get_str(&c, md, "creationTimestamp", "metadata");
    if (ts) {
        struct tm tm;
        memset(&tm, 0, sizeof(tm));
        const char *e = strptime(ts, "%Y-%m-%dT%H:%M:%S", &tm);
        if (!e) {
            l7c_finding(&c, MANIFEST_ERROR, "metadata.creationTimestamp", "not an RFC 3339 time: \"%.40s\"",
                        ts);
            goto out;
        }
        m.creation_timestamp = (int64_t)timegm(&tm);
    }
    json_t *spec = get_t(&c, obj, "spec", "", JSON_OBJECT, "a mapping");
    if (!spec) {
        if (!c.failed) l7c_finding(&c, MANIFEST_ERROR, "spec", "missing");
        goto out;
    }
    static const struct key_rule sk[] = {
        {"host", NULL},
        {"trafficPolicy", NULL},
        {"subsets", NULL},
        {"exportTo", "a waypoint applies the rules of its Services' namespaces; visibility is not filtered"},
        {"workloadSelector", "selects sidecars, which a waypoint is not"},
        {NULL, NULL}};
    check_keys(&c, spec, "spec", sk);
    const char *host = get_str(&c, spec, "host", "spec");
    if (c.failed) goto out;
    if (!host || !*host) {
        l7c_finding(&c, MANIFEST_ERROR, "spec.host", "required");
        goto out;
    }
    const char *svc_ns = NULL, *svc_name = NULL;
    if (resolve_host(&c, host, &svc_ns, &svc_name) < 0) {
        if (!c.oom)
            l7c_finding(
                &c, MANIFEST_ERROR, "spec.host",
                "\"%.200s\" names no Kubernetes Service (a short name or <name>.<namespace>.svc.<domain>; "
                "wildcards and ServiceEntry hosts are not supported)",
                host);
        goto out;
    }
    m.host = (char *)host;
    m.service_namespace = (char *)svc_ns;
    m.service_name = (char *)svc_name;
    json_t *tp = json_object_get(spec, "trafficPolicy");
    if (tp && !json_is_null(tp) && !(m.traffic_policy = policy_conv(&c, tp, "spec.trafficPolicy"))) goto out;
    json_t *subs = get_t(&c, spec, "subsets", "spec", JSON_ARRAY, "a list");
    if (c.failed) goto out;
    if (subs) {
        m.subsets = l7c_alloc(&c, json_array_size(subs) * sizeof(*m.subsets));
        if (!m.subsets) goto out;
        for (size_t i = 0; i < json_array_size(subs); i++) {
            char f[64];
            l7c_fld(f, sizeof(f), "spec.subsets[%zu]", i);
            if (!(m.subsets[i] = subset_conv(&c, json_array_get(subs, i), f, svc_ns, st))) goto out;
            m.n_subsets++;
        }
    }
    if (c.failed || c.oom) goto out;
    /* Packed, then compiled by the waypoint's model: what zmeshd serves is what the waypoint takes. */
    size_t n = protobuf_c_message_get_packed_size(&m.base);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf) {
        c.oom = true;
        goto out;
    }
    protobuf_c_message_pack(&m.base, buf);
    struct l7_builder *b = l7_builder_new();
    char err[512];
    int ar = b ? l7_builder_add(b, L7_TYPE_URL_DESTINATION_RULE, name, buf, n, err, sizeof(err)) : -ENOMEM;
    l7_builder_free(b);
    if (ar < 0) {
        free(buf);
        if (ar == -ENOMEM)
            c.oom = true;
        else
            l7c_finding(&c, MANIFEST_ERROR, "spec", "%s", err);
        goto out;
    }
    *pb = buf;
    *len = n;
    rc = 0;
out:
    if (c.oom) {
        free(*pb);
        *pb = NULL;
        rc = -ENOMEM;
    }
    l7_arena_free(&c.a);
    return rc;
}
