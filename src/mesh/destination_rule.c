/* zmesh.v1.DestinationRule decoded and validated (destination_rule.h). */
#include "mesh/destination_rule.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mesh/l7authz.h"
#include "zmesh/destination_rule.pb-c.h"

struct dr_entry {
    struct dr_rule r;
    struct l7_arena a;
};

struct dr_table {
    struct dr_entry **e;
    size_t n, cap;
    /* by (svc_ns, svc_name, created, key) after dr_table_finish */
    const struct dr_rule **idx;
    size_t n_idx;
};

struct derr {
    char *buf;
    size_t n;
    const char *what; /* "DestinationRule ns/name" */
    struct l7_arena *a;
    bool oom;
};

static int fail(struct derr *v, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(struct derr *v, const char *field, const char *fmt, ...)
{
    if (v->buf && v->n) {
        char msg[400];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        snprintf(v->buf, v->n, "%s: %s%s%s", v->what, field, *field ? ": " : "", msg);
    }
    return -EINVAL;
}

/* A field path; cut when longer than buf (messages only). */
static void fld(char *buf, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void fld(char *buf, size_t n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, n, fmt, ap);
    va_end(ap);
}

const char *dr_lb_to_str(int lb)
{
    switch (lb) {
    case DR_LB_LEAST_REQUEST:
        return "LEAST_REQUEST";
    case DR_LB_ROUND_ROBIN:
        return "ROUND_ROBIN";
    case DR_LB_RANDOM:
        return "RANDOM";
    case DR_LB_PASSTHROUGH:
        return "PASSTHROUGH";
    case DR_LB_RING_HASH:
        return "RING_HASH";
    case DR_LB_MAGLEV:
        return "MAGLEV";
    }
    return "?";
}

static void *dalloc(struct derr *v, size_t n)
{
    void *p = l7_arena_alloc(v->a, n ? n : 1);
    if (!p) v->oom = true;
    return p;
}

/* A string field: bounded, no control characters; copied into the arena. */
static int str_field(struct derr *v, const char *field, const char *s, bool required, const char **out)
{
    if (!s) s = "";
    size_t n = strlen(s);
    if (required && !n) return fail(v, field, "required");
    if (n > DR_MAX_STRING) return fail(v, field, "longer than %u bytes", DR_MAX_STRING);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) return fail(v, field, "control character at %zu", i);
    char *d = l7_arena_strndup(v->a, s, n);
    if (!d) {
        v->oom = true;
        return -ENOMEM;
    }
    *out = d;
    return 0;
}

/* An HTTP header name (RFC 9110 token), lower-cased. */
static int header_name(struct derr *v, const char *field, const char *s, const char **out)
{
    int rc = str_field(v, field, s, true, out);
    if (rc) return rc;
    for (char *p = (char *)*out; *p; p++) {
        if (!isalnum((unsigned char)*p) && !strchr("!#$%&'*+-.^_`|~", *p))
            return fail(v, field, "not a valid header name: \"%.64s\"", s);
        *p = (char)tolower((unsigned char)*p);
    }
    return 0;
}

static bool is_prime(uint64_t n)
{
    if (n < 2) return false;
    for (uint64_t d = 2; d * d <= n; d++)
        if (n % d == 0) return false;
    return true;
}

static int lb_build(struct derr *v, const char *field, const Zmesh__V1__LoadBalancer *pb,
                    const struct dr_lb_policy **out)
{
    struct dr_lb_policy *lb = dalloc(v, sizeof(*lb));
    if (!lb) return -ENOMEM;
    lb->hash_name = lb->cookie_path = "";
    char f[256];
    if (pb->consistent_hash) {
        const Zmesh__V1__ConsistentHash *ch = pb->consistent_hash;
        if (pb->simple != ZMESH__V1__LOAD_BALANCER__SIMPLE__UNSPECIFIED) {
            fld(f, sizeof(f), "%s.simple", field);
            return fail(v, f, "simple and consistentHash are exclusive");
        }
        lb->lb =
            ch->algorithm == ZMESH__V1__CONSISTENT_HASH__ALGORITHM__MAGLEV ? DR_LB_MAGLEV : DR_LB_RING_HASH;
        int rc = 0;
        switch (ch->key_case) {
        case ZMESH__V1__CONSISTENT_HASH__KEY_HTTP_HEADER_NAME:
            lb->hash_key = DR_HASH_HEADER;
            fld(f, sizeof(f), "%s.consistentHash.httpHeaderName", field);
            rc = header_name(v, f, ch->http_header_name, &lb->hash_name);
            break;
        case ZMESH__V1__CONSISTENT_HASH__KEY_HTTP_COOKIE:
            lb->hash_key = DR_HASH_COOKIE;
            fld(f, sizeof(f), "%s.consistentHash.httpCookie.name", field);
            rc = str_field(v, f, ch->http_cookie->name, true, &lb->hash_name);
            if (!rc) {
                for (const char *p = lb->hash_name; *p && !rc; p++)
                    if (*p == ';' || *p == '=' || *p == ',' || *p == ' ' || *p == '"')
                        rc = fail(v, f, "not a valid cookie name: \"%.64s\"", lb->hash_name);
            }
            if (!rc) {
                fld(f, sizeof(f), "%s.consistentHash.httpCookie.path", field);
                rc = str_field(v, f, ch->http_cookie->path, false, &lb->cookie_path);
            }
            lb->cookie_ttl = ch->http_cookie->has_ttl;
            lb->cookie_ttl_ms = ch->http_cookie->ttl_ms;
            break;
        case ZMESH__V1__CONSISTENT_HASH__KEY_USE_SOURCE_IP:
            lb->hash_key = DR_HASH_SOURCE_IP;
            if (!ch->use_source_ip) {
                fld(f, sizeof(f), "%s.consistentHash.useSourceIp", field);
                rc = fail(v, f, "false selects no hash key");
            }
            break;
        case ZMESH__V1__CONSISTENT_HASH__KEY_HTTP_QUERY_PARAMETER_NAME:
            lb->hash_key = DR_HASH_QUERY;
            fld(f, sizeof(f), "%s.consistentHash.httpQueryParameterName", field);
            rc = str_field(v, f, ch->http_query_parameter_name, true, &lb->hash_name);
            break;
        default:
            fld(f, sizeof(f), "%s.consistentHash", field);
            rc = fail(v, f,
                      "one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName is required");
        }
        if (rc) return rc;
        lb->ring_size = ch->minimum_ring_size ? ch->minimum_ring_size : DR_RING_DEFAULT;
        lb->table_size = ch->table_size ? ch->table_size : DR_MAGLEV_DEFAULT;
        if (lb->ring_size > DR_RING_MAX) {
            fld(f, sizeof(f), "%s.consistentHash.ringHash.minimumRingSize", field);
            return fail(v, f, "%llu is above the maximum ring size %u", (unsigned long long)lb->ring_size,
                        DR_RING_MAX);
        }
        if (lb->lb == DR_LB_MAGLEV && (lb->table_size > DR_MAGLEV_MAX || !is_prime(lb->table_size))) {
            fld(f, sizeof(f), "%s.consistentHash.maglev.tableSize", field);
            return fail(v, f, "%llu is not a prime up to %u (Envoy requires a prime)",
                        (unsigned long long)lb->table_size, DR_MAGLEV_MAX);
        }
    } else {
        switch (pb->simple) {
        case ZMESH__V1__LOAD_BALANCER__SIMPLE__UNSPECIFIED:
        case ZMESH__V1__LOAD_BALANCER__SIMPLE__LEAST_REQUEST:
            lb->lb = DR_LB_LEAST_REQUEST;
            break;
        case ZMESH__V1__LOAD_BALANCER__SIMPLE__ROUND_ROBIN:
            lb->lb = DR_LB_ROUND_ROBIN;
            break;
        case ZMESH__V1__LOAD_BALANCER__SIMPLE__RANDOM:
            lb->lb = DR_LB_RANDOM;
            break;
        case ZMESH__V1__LOAD_BALANCER__SIMPLE__PASSTHROUGH:
            lb->lb = DR_LB_PASSTHROUGH;
            break;
        default:
            fld(f, sizeof(f), "%s.simple", field);
            return fail(v, f, "unknown value %d", (int)pb->simple);
        }
    }
    *out = lb;
    return 0;
}

static int pool_build(struct derr *v, const char *field, const Zmesh__V1__ConnectionPool *pb,
                      const struct dr_conn_pool **out)
{
    struct dr_conn_pool *p = dalloc(v, sizeof(*p));
    if (!p) return -ENOMEM;
    *p = (struct dr_conn_pool){
        .max_connections = pb->max_connections,
        .http1_max_pending_requests = pb->http1_max_pending_requests,
        .http2_max_requests = pb->http2_max_requests,
        .max_requests_per_connection = pb->max_requests_per_connection,
        .max_retries = pb->max_retries,
        .connect_timeout_ms = pb->connect_timeout_ms,
        .idle_timeout_ms = pb->idle_timeout_ms,
    };
    (void)field;
    *out = p;
    return 0;
}

static int outlier_build(struct derr *v, const char *field, const Zmesh__V1__OutlierDetection *pb,
                         const struct dr_outlier **out)
{
    char f[256];
    if (pb->max_ejection_percent > 100) {
        fld(f, sizeof(f), "%s.maxEjectionPercent", field);
        return fail(v, f, "%u is above 100", pb->max_ejection_percent);
    }
    if (pb->min_health_percent > 100) {
        fld(f, sizeof(f), "%s.minHealthPercent", field);
        return fail(v, f, "%u is above 100", pb->min_health_percent);
    }
    struct dr_outlier *o = dalloc(v, sizeof(*o));
    if (!o) return -ENOMEM;
    /* Istio's defaults for a written outlierDetection (cluster_traffic_policy.go applyOutlierDetection and
     * Envoy's): 5 consecutive 5xx unless written, 10 s interval, 30 s base ejection, 10 % at most. */
    *o = (struct dr_outlier){
        .consecutive_5xx = pb->has_consecutive_5xx ? pb->consecutive_5xx_errors : 5,
        .consecutive_gateway = pb->consecutive_gateway_errors,
        .interval_ms = pb->interval_ms ? pb->interval_ms : 10000,
        .base_ejection_ms = pb->base_ejection_time_ms ? pb->base_ejection_time_ms : 30000,
        .max_ejection_percent = pb->max_ejection_percent ? pb->max_ejection_percent : 10,
        .min_health_percent = pb->min_health_percent,
    };
    *out = o;
    return 0;
}

static int parts_build(struct derr *v, const char *field, const Zmesh__V1__LoadBalancer *lb,
                       const Zmesh__V1__ConnectionPool *pool, const Zmesh__V1__OutlierDetection *od,
                       struct dr_policy *p)
{
    char f[256];
    int rc = 0;
    if (lb) {
        fld(f, sizeof(f), "%s.loadBalancer", field);
        rc = lb_build(v, f, lb, &p->lb);
    }
    if (!rc && pool) {
        fld(f, sizeof(f), "%s.connectionPool", field);
        rc = pool_build(v, f, pool, &p->pool);
    }
    if (!rc && od) {
        fld(f, sizeof(f), "%s.outlierDetection", field);
        rc = outlier_build(v, f, od, &p->outlier);
    }
    return rc;
}

static int traffic_build(struct derr *v, const char *field, const Zmesh__V1__TrafficPolicy *pb,
                         const struct dr_traffic **out)
{
    struct dr_traffic *t = dalloc(v, sizeof(*t));
    if (!t) return -ENOMEM;
    int rc = parts_build(v, field, pb->load_balancer, pb->connection_pool, pb->outlier_detection, &t->base);
    if (rc) return rc;
    char f[256];
    if (pb->n_port_level_settings > DR_MAX_PORTS) {
        fld(f, sizeof(f), "%s.portLevelSettings", field);
        return fail(v, f, "more than %u entries", DR_MAX_PORTS);
    }
    struct dr_port_policy *pp = dalloc(v, pb->n_port_level_settings * sizeof(*pp));
    if (!pp) return -ENOMEM;
    for (size_t i = 0; i < pb->n_port_level_settings; i++) {
        const Zmesh__V1__PortTrafficPolicy *e = pb->port_level_settings[i];
        fld(f, sizeof(f), "%s.portLevelSettings[%zu]", field, i);
        if (!e->port || e->port > 65535) {
            char pf[280];
            fld(pf, sizeof(pf), "%s.port.number", f);
            return fail(v, pf, "a port 1-65535 is required");
        }
        for (size_t k = 0; k < i; k++)
            if (pp[k].port == e->port) {
                char pf[280];
                fld(pf, sizeof(pf), "%s.port.number", f);
                return fail(v, pf, "port %u is set twice", e->port);
            }
        pp[i].port = (uint16_t)e->port;
        if ((rc = parts_build(v, f, e->load_balancer, e->connection_pool, e->outlier_detection, &pp[i].p)))
            return rc;
    }
    t->ports = pp;
    t->n_ports = pb->n_port_level_settings;
    *out = t;
    return 0;
}

/* RFC 1123 label: a subset name. */
static bool dns_label(const char *s)
{
    size_t n = strlen(s);
    if (!n || n > 63 || s[0] == '-' || s[n - 1] == '-') return false;
    for (size_t i = 0; i < n; i++)
        if (!islower((unsigned char)s[i]) && !isdigit((unsigned char)s[i]) && s[i] != '-') return false;
    return true;
}

static int str_cmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int subset_build(struct derr *v, size_t si, const Zmesh__V1__Subset *pb, struct dr_subset *s)
{
    char f[128];
    fld(f, sizeof(f), "subsets[%zu].name", si);
    int rc = str_field(v, f, pb->name, true, &s->name);
    if (rc) return rc;
    if (!dns_label(s->name)) return fail(v, f, "\"%.64s\" is not a DNS label (RFC 1123)", s->name);
    if (pb->n_labels > DR_MAX_LABELS) {
        fld(f, sizeof(f), "subsets[%zu].labels", si);
        return fail(v, f, "more than %u labels", DR_MAX_LABELS);
    }
    struct dr_label *l = dalloc(v, pb->n_labels * sizeof(*l));
    if (!l) return -ENOMEM;
    for (size_t i = 0; i < pb->n_labels; i++) {
        fld(f, sizeof(f), "subsets[%zu].labels", si);
        if ((rc = str_field(v, f, pb->labels[i]->key, true, &l[i].key)) ||
            (rc = str_field(v, f, pb->labels[i]->value, false, &l[i].value)))
            return rc;
    }
    s->labels = l;
    s->n_labels = pb->n_labels;
    if (pb->n_endpoints > DR_MAX_ENDPOINTS) {
        fld(f, sizeof(f), "subsets[%zu].endpoints", si);
        return fail(v, f, "more than %u endpoints", DR_MAX_ENDPOINTS);
    }
    const char **eps = dalloc(v, pb->n_endpoints * sizeof(*eps));
    if (!eps) return -ENOMEM;
    for (size_t i = 0; i < pb->n_endpoints; i++) {
        fld(f, sizeof(f), "subsets[%zu].endpoints[%zu]", si, i);
        if ((rc = str_field(v, f, pb->endpoints[i], true, &eps[i]))) return rc;
        if (!strchr(eps[i], '/')) return fail(v, f, "expected \"<namespace>/<pod>\", got \"%.64s\"", eps[i]);
    }
    qsort(eps, pb->n_endpoints, sizeof(*eps), str_cmp);
    s->endpoints = eps;
    s->n_endpoints = pb->n_endpoints;
    if (pb->traffic_policy) {
        fld(f, sizeof(f), "subsets[%zu].trafficPolicy", si);
        if ((rc = traffic_build(v, f, pb->traffic_policy, &s->traffic))) return rc;
    }
    return 0;
}

static int rule_build(struct derr *v, const Zmesh__V1__DestinationRule *pb, struct dr_rule *r)
{
    int rc;
    if ((rc = str_field(v, "host", pb->host, true, &r->host)) ||
        (rc = str_field(v, "service_namespace", pb->service_namespace, true, &r->svc_ns)) ||
        (rc = str_field(v, "service_name", pb->service_name, true, &r->svc_name)))
        return rc;
    r->created = pb->creation_timestamp;
    if (pb->traffic_policy && (rc = traffic_build(v, "trafficPolicy", pb->traffic_policy, &r->traffic)))
        return rc;
    if (pb->n_subsets > DR_MAX_SUBSETS) return fail(v, "subsets", "more than %u subsets", DR_MAX_SUBSETS);
    struct dr_subset *s = dalloc(v, pb->n_subsets * sizeof(*s));
    if (!s) return -ENOMEM;
    for (size_t i = 0; i < pb->n_subsets; i++) {
        if ((rc = subset_build(v, i, pb->subsets[i], &s[i]))) return rc;
        for (size_t k = 0; k < i; k++)
            if (!strcmp(s[k].name, s[i].name)) {
                char f[64];
                fld(f, sizeof(f), "subsets[%zu].name", i);
                return fail(v, f, "subset \"%s\" is defined twice", s[i].name);
            }
    }
    r->subsets = s;
    r->n_subsets = pb->n_subsets;
    return 0;
}

int dr_table_add(struct dr_table **tp, const char *name, const uint8_t *pb, size_t len, char *err,
                 size_t errlen)
{
    if (err && errlen) err[0] = 0;
    char what[600];
    snprintf(what, sizeof(what), "DestinationRule %.512s", name);
    struct dr_entry *e = calloc(1, sizeof(*e));
    if (!e) return -ENOMEM;
    struct derr v = {err, errlen, what, &e->a, false};
    int rc = 0;
    Zmesh__V1__DestinationRule *m = NULL;
    if (!*tp && !(*tp = calloc(1, sizeof(**tp)))) {
        rc = -ENOMEM;
        goto out;
    }
    struct dr_table *t = *tp;
    for (size_t i = 0; i < t->n; i++)
        if (!strcmp(t->e[i]->r.key, name)) {
            fail(&v, "", "added twice");
            rc = -EEXIST;
            goto out;
        }
    if (!(m = zmesh__v1__destination_rule__unpack(NULL, len, pb))) {
        rc = fail(&v, "", "not a valid zmesh.v1.DestinationRule encoding");
        goto out;
    }
    if ((rc = str_field(&v, "name", name, true, &e->r.key))) goto out;
    rc = rule_build(&v, m, &e->r);
    if (!rc && v.oom) rc = -ENOMEM;
    if (rc) goto out;
    if (t->n == t->cap) {
        size_t c = t->cap ? t->cap * 2 : 8;
        struct dr_entry **ne = realloc(t->e, c * sizeof(*ne));
        if (!ne) {
            rc = -ENOMEM;
            goto out;
        }
        t->e = ne;
        t->cap = c;
    }
    t->e[t->n++] = e;
    e = NULL;
out:
    if (rc == -ENOMEM || v.oom) {
        rc = -ENOMEM;
        fail(&v, "", "out of memory");
    }
    if (m) zmesh__v1__destination_rule__free_unpacked(m, NULL);
    if (e) {
        l7_arena_free(&e->a);
        free(e);
    }
    return rc;
}

static int idx_cmp(const void *pa, const void *pb)
{
    const struct dr_rule *a = *(const struct dr_rule *const *)pa, *b = *(const struct dr_rule *const *)pb;
    int c = strcmp(a->svc_ns, b->svc_ns);
    if (!c) c = strcmp(a->svc_name, b->svc_name);
    if (!c) c = (a->created > b->created) - (a->created < b->created);
    if (!c) c = strcmp(a->key, b->key);
    return c;
}

int dr_table_finish(struct dr_table *t)
{
    if (!t) return 0;
    free(t->idx);
    t->idx = malloc((t->n ? t->n : 1) * sizeof(*t->idx));
    if (!t->idx) return -ENOMEM;
    for (size_t i = 0; i < t->n; i++)
        t->idx[i] = &t->e[i]->r;
    t->n_idx = t->n;
    qsort(t->idx, t->n_idx, sizeof(*t->idx), idx_cmp);
    return 0;
}

void dr_table_free(struct dr_table *t)
{
    if (!t) return;
    for (size_t i = 0; i < t->n; i++) {
        l7_arena_free(&t->e[i]->a);
        free(t->e[i]);
    }
    free(t->e);
    free(t->idx);
    free(t);
}

size_t dr_table_n(const struct dr_table *t)
{
    return t ? t->n : 0;
}

const struct dr_rule *dr_table_at(const struct dr_table *t, size_t i)
{
    return t && i < t->n ? &t->e[i]->r : NULL;
}

const struct dr_rule *dr_table_find(const struct dr_table *t, const char *svc_ns, const char *svc_name)
{
    if (!t || !t->n_idx || !svc_ns || !svc_name) return NULL;
    size_t lo = 0, hi = t->n_idx;
    while (lo < hi) { /* the first entry >= (svc_ns, svc_name) */
        size_t mid = (lo + hi) / 2;
        const struct dr_rule *r = t->idx[mid];
        int c = strcmp(r->svc_ns, svc_ns);
        if (!c) c = strcmp(r->svc_name, svc_name);
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < t->n_idx && !strcmp(t->idx[lo]->svc_ns, svc_ns) && !strcmp(t->idx[lo]->svc_name, svc_name))
        return t->idx[lo];
    return NULL;
}

const struct dr_subset *dr_subset_find(const struct dr_rule *r, const char *name)
{
    if (!r || !name) return NULL;
    for (size_t i = 0; i < r->n_subsets; i++)
        if (!strcmp(r->subsets[i].name, name)) return &r->subsets[i];
    return NULL;
}

bool dr_subset_has(const struct dr_subset *s, const char *ns, const char *name)
{
    char key[600];
    if (snprintf(key, sizeof(key), "%s/%s", ns, name) >= (int)sizeof(key)) return false;
    const char *k = key;
    return bsearch(&k, s->endpoints, s->n_endpoints, sizeof(*s->endpoints), str_cmp) != NULL;
}

/* The traffic policy's parts for port: its port-level entry for port replaces all three (per-port settings
 * do not inherit, istiod's selectTrafficPolicyComponents); else its own. */
static struct dr_policy port_parts(const struct dr_traffic *t, uint16_t port)
{
    for (size_t i = 0; i < t->n_ports; i++)
        if (t->ports[i].port == port) return t->ports[i].p;
    return t->base;
}

struct dr_policy dr_policy_for(const struct dr_rule *r, const struct dr_subset *s, uint16_t port)
{
    struct dr_policy p = {0};
    if (!r) return p;
    if (r->traffic) p = port_parts(r->traffic, port);
    if (s && s->traffic) {
        /* MergeTrafficPolicy: a part the subset sets replaces the rule's; its port-level entry replaces all.
         */
        const struct dr_traffic *st = s->traffic;
        bool port_entry = false;
        for (size_t i = 0; i < st->n_ports && !port_entry; i++)
            if (st->ports[i].port == port) {
                p = st->ports[i].p;
                port_entry = true;
            }
        if (!port_entry) {
            if (st->base.lb) p.lb = st->base.lb;
            if (st->base.pool) p.pool = st->base.pool;
            if (st->base.outlier) p.outlier = st->base.outlier;
        }
    }
    return p;
}
