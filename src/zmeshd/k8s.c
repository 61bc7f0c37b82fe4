/* Conversion of Kubernetes objects to model resources as istiod computes them for ztunnel. Each rule names
 * the istio/istio function it follows (pilot/pkg/serviceregistry/kube/controller/ambient/). All temporary
 * structs live in one scratch arena; the builder copies what it keeps. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/net.h"
#include "mesh/builder.h"
#include "mesh/snapshot_impl.h"
#include "zmeshd/k8s.h"
#include "zmeshd/waypoint.h"

/* Longest "ns/name" or hostname built here; the builder refuses longer strings anyway. */
#define NAME_MAX_LEN (BUILDER_MAX_STR + 1)

struct conv {
    const struct manifest_store *st;
    struct k8s_options o;
    manifest_report_fn report;
    void *ud;
    struct arena a; /* scratch for the resources handed to the builder */
    struct snapshot_builder *b;
    const struct manifest_src *cur; /* the object being added, for builder warnings */
    /* Per policy: whether it reached the snapshot (workloads reference only those). */
    bool *authz_ok, *peer_ok;
    /* Waypoint binding (waypoint.h), by store index of Services and Pods. */
    struct k8s_waypoints *wps;
    const struct k8s_service *svc_base;
    const struct k8s_pod *pod_base;
};

static void creport(struct conv *c, enum manifest_level lvl, const struct manifest_src *src,
                    const char *field, const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static void creport(struct conv *c, enum manifest_level lvl, const struct manifest_src *src,
                    const char *field, const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    struct manifest_finding f = {.level = lvl, .src = *src, .field = field ? field : "", .message = msg};
    manifest_finding_emit(c->report, c->ud, &f);
}

static void builder_warn(void *ud, const struct builder_err *w)
{
    struct conv *c = ud;
    char buf[640];
    static const struct manifest_src none = {.file = "?"};
    creport(c, MANIFEST_WARN, c->cur ? c->cur : &none, "", "%s", builder_err_format(w, buf, sizeof(buf)));
}

/* Adds through the builder; a rejection is a finding on the manifest. Returns 0 or a fatal -errno. */
static int added(struct conv *c, int rc, const struct manifest_src *src, const struct builder_err *e,
                 bool *ok)
{
    if (ok) *ok = rc == 0;
    if (rc == -EINVAL) {
        char buf[640];
        creport(c, MANIFEST_ERROR, src, "", "rejected: %s", builder_err_format(e, buf, sizeof(buf)));
        return 0;
    }
    return rc;
}

static const char *fmt_str(struct conv *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static const char *fmt_str(struct conv *c, const char *fmt, ...)
{
    char buf[NAME_MAX_LEN * 2];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (n < 0) return NULL;
    /* Truncated names are kept truncated: the builder refuses anything this long with a finding. */
    return arena_strndup(&c->a, buf, strlen(buf));
}

int k8s_pod_uid(const char *cluster_id, const char *ns, const char *name, char *buf, size_t n)
{
    /* istiod's generatePodUID (workloads.go): "<cluster>//Pod/<ns>/<name>" (no API version). */
    int k = snprintf(buf, n, "%s//Pod/%s/%s", cluster_id, ns, name);
    return k < 0 || (size_t)k >= n ? -ENOSPC : k;
}

/* ---- lookups by namespace (sorted pointer lists, binary search for the range) ---- */

struct by_ns {
    const struct k8s_meta **v; /* sorted by (namespace, load order) */
    size_t n;
};

static int meta_ns_cmp(const void *a, const void *b)
{
    const struct k8s_meta *x = *(const struct k8s_meta *const *)a, *y = *(const struct k8s_meta *const *)b;
    int r = strcmp(x->namespace_, y->namespace_);
    return r ? r : (x->order > y->order) - (x->order < y->order);
}

static int by_ns_init(struct conv *c, struct by_ns *ix, const void *objs, size_t n, size_t stride,
                      const bool *skip)
{
    ix->n = 0;
    ix->v = n ? arena_alloc(&c->a, n * sizeof(*ix->v)) : NULL;
    if (n && !ix->v) return -ENOMEM;
    /* Every k8s object struct starts with its k8s_meta. */
    for (size_t i = 0; i < n; i++)
        if (!skip[i]) ix->v[ix->n++] = (const struct k8s_meta *)((const char *)objs + i * stride);
    if (ix->n) qsort(ix->v, ix->n, sizeof(*ix->v), meta_ns_cmp);
    return 0;
}

static int meta_key_cmp(const void *a, const void *b)
{
    const struct k8s_meta *x = *(const struct k8s_meta *const *)a, *y = *(const struct k8s_meta *const *)b;
    int r = strcmp(x->namespace_, y->namespace_);
    if (!r) r = strcmp(x->name, y->name);
    return r ? r : (x->order > y->order) - (x->order < y->order);
}

/* Marks in *out (n flags, owned by the caller) every object whose namespace and name repeat an earlier one's,
 * and reports it: Kubernetes keeps one object per kind, namespace and name, and which of two copies in a
 * directory would win must not be a silent accident of file names. The first in load order is kept. */
static int mark_duplicates(struct conv *c, const char *kind, const void *objs, size_t n, size_t stride,
                           bool **out)
{
    int rc = 0;
    const struct k8s_meta **v = NULL;
    if (!(*out = calloc(n + 1, sizeof(bool)))) return -ENOMEM;
    if (n < 2) goto out;
    if (!(v = malloc(n * sizeof(*v)))) {
        rc = -ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < n; i++)
        v[i] = (const struct k8s_meta *)((const char *)objs + i * stride);
    qsort(v, n, sizeof(*v), meta_key_cmp);
    for (size_t i = 1, first = 0; i < n; i++) {
        if (strcmp(v[i]->namespace_, v[first]->namespace_) || strcmp(v[i]->name, v[first]->name)) {
            first = i;
            continue;
        }
        (*out)[((const char *)v[i] - (const char *)objs) / stride] = true;
        creport(c, MANIFEST_ERROR, &v[i]->src, "metadata.name",
                "duplicate %s %s%s%s (first in %s#%u): left out", kind, v[i]->namespace_,
                *v[i]->namespace_ ? "/" : "", v[i]->name, v[first]->src.file, v[first]->src.doc);
    }
out:
    free(v);
    return rc;
}

/* [*lo, *hi) of the objects in namespace ns. */
static void by_ns_range(const struct by_ns *ix, const char *ns, size_t *lo, size_t *hi)
{
    size_t l = 0, h = ix->n;
    while (l < h) {
        size_t m = l + (h - l) / 2;
        if (strcmp(ix->v[m]->namespace_, ns) < 0)
            l = m + 1;
        else
            h = m;
    }
    *lo = l;
    h = ix->n;
    while (l < h) {
        size_t m = l + (h - l) / 2;
        if (strcmp(ix->v[m]->namespace_, ns) <= 0)
            l = m + 1;
        else
            h = m;
    }
    *hi = l;
}

/* Istio's "oldest wins" (getOldestPeerAuthn and friends): earlier creationTimestamp, then load order. RFC
 * 3339 timestamps of one format compare as strings; an absent one sorts first, like Go's zero time. */
static bool older(const struct k8s_meta *a, const struct k8s_meta *b)
{
    int r = strcmp(a->creation, b->creation);
    return r ? r < 0 : a->order < b->order;
}

/* ---- services (services.go constructService) ---- */

/* One token of Istio's protocol names (istio/istio pkg/config/protocol: Parse is case-insensitive). */
static uint8_t protocol_token(const char *s, size_t n)
{
    static const struct {
        const char *name;
        uint8_t proto;
    } names[] = {{"http", PORT_PROTO_HTTP11}, {"http2", PORT_PROTO_HTTP2}, {"grpc", PORT_PROTO_GRPC},
                 {"tcp", PORT_PROTO_TCP},     {"mongo", PORT_PROTO_TCP},   {"redis", PORT_PROTO_TCP},
                 {"mysql", PORT_PROTO_TCP},   {"tls", PORT_PROTO_TLS},     {"https", PORT_PROTO_TLS}};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strlen(names[i].name) == n && !strncasecmp(names[i].name, s, n)) return names[i].proto;
    return PORT_PROTO_UNKNOWN;
}

uint8_t k8s_port_app_protocol(const struct k8s_service_port *p)
{
    /* istio/istio pkg/kube ConvertProtocol: UDP/SCTP are not TCP protocols; appProtocol first (with the
     * Kubernetes names kubernetes.io/h2c and kubernetes.io/ws(s)), else the port name's prefix before '-'. */
    if (*p->protocol && strcasecmp(p->protocol, "TCP")) return PORT_PROTO_UNKNOWN;
    const char *ap = p->app_protocol ? p->app_protocol : "";
    if (*ap) {
        if (!strcmp(ap, "kubernetes.io/h2c")) return PORT_PROTO_HTTP2;
        if (!strcmp(ap, "kubernetes.io/ws") || !strcmp(ap, "kubernetes.io/wss")) return PORT_PROTO_HTTP11;
        return protocol_token(ap, strlen(ap));
    }
    const char *name = p->name ? p->name : "";
    return protocol_token(name, strcspn(name, "-"));
}

static int convert_service(struct conv *c, const struct k8s_service *ks)
{
    struct service s = {0};
    size_t n_addrs = ks->cluster_ips.n + ks->lb_ips.n;
    struct net_addr *vips = n_addrs ? arena_alloc(&c->a, n_addrs * sizeof(*vips)) : NULL;
    struct port_map *ports = ks->n_ports ? arena_alloc(&c->a, ks->n_ports * sizeof(*ports)) : NULL;
    if ((n_addrs && !vips) || (ks->n_ports && !ports)) return -ENOMEM;
    s.name = ks->meta.name;
    s.namespace_ = ks->meta.namespace_;
    if (!(s.hostname = fmt_str(c, "%s.%s.svc.%s", ks->meta.name, ks->meta.namespace_, c->o.domain_suffix)))
        return -ENOMEM;
    /* "None" is a headless service: no VIP. */
    for (size_t i = 0; i < ks->cluster_ips.n; i++)
        if (strcmp(ks->cluster_ips.v[i], "None") && !ip_parse(ks->cluster_ips.v[i], &vips[s.n_vips].ip))
            vips[s.n_vips++].network = "";
    for (size_t i = 0; i < ks->lb_ips.n; i++)
        if (!ip_parse(ks->lb_ips.v[i], &vips[s.n_vips].ip)) vips[s.n_vips++].network = "";
    s.vips = vips;
    /* Load balancing: internalTrafficPolicy Local keeps traffic on the node; else trafficDistribution
     * PreferClose (or istiod's annotation) fails over by closeness. */
    static const uint8_t node_only[] = {LB_SCOPE_NODE};
    static const uint8_t prefer_close[] = {LB_SCOPE_NETWORK, LB_SCOPE_REGION, LB_SCOPE_ZONE,
                                           LB_SCOPE_SUBZONE};
    const char *td =
        k8s_kv_get(ks->meta.annotations, ks->meta.n_annotations, K8S_ANNOTATION_TRAFFIC_DISTRIBUTION);
    if (*ks->traffic_distribution) td = ks->traffic_distribution;
    if (!strcmp(ks->internal_traffic_policy, "Local")) {
        s.routing_prefs = node_only;
        s.n_routing_prefs = 1;
        s.lb_mode = LB_MODE_STRICT;
    } else if (td && !strcasecmp(td, "PreferClose")) {
        s.routing_prefs = prefer_close;
        s.n_routing_prefs = sizeof(prefer_close);
        s.lb_mode = LB_MODE_FAILOVER;
    }
    /* A named targetPort is 0 here: each endpoint resolves it from its own container ports (the workload's
     * services map), as istiod leaves it for ztunnel. */
    for (size_t i = 0; i < ks->n_ports; i++) {
        ports[i].port = ks->ports[i].port;
        ports[i].target = *ks->ports[i].target_name ? 0 : ks->ports[i].target_port;
        ports[i].app_protocol = k8s_port_app_protocol(&ks->ports[i]);
    }
    s.ports = ports;
    s.n_ports = ks->n_ports;
    /* What zmeshd does not model yet is said, not silently dropped. */
    if (!strcmp(ks->type, "ExternalName"))
        creport(c, MANIFEST_WARN, &ks->meta.src, "spec.type",
                "ExternalName is not supported: the service has no address and no endpoints");
    else if (!ks->has_selector)
        creport(c, MANIFEST_WARN, &ks->meta.src, "spec.selector",
                "a service without a selector has no endpoints here (EndpointSlices are not read)");
    const struct gateway_addr *wp = k8s_waypoints_service(c->wps, (size_t)(ks - c->svc_base));
    if (wp) s.waypoint = *wp;
    struct builder_err e;
    c->cur = &ks->meta.src;
    return added(c, builder_add_service(c->b, &s, &e), &ks->meta.src, &e, NULL);
}

/* ---- authorization policies (authorization.go convertAuthorizationPolicy, handleRule) ---- */

struct l7_found {
    const char *names[K8S_SRC_COUNT + K8S_OP_COUNT + 16];
    size_t n;
};

static void l7_add(struct l7_found *f, const char *name)
{
    for (size_t i = 0; i < f->n; i++)
        if (!strcmp(f->names[i], name)) return;
    if (f->n < sizeof(f->names) / sizeof(f->names[0])) f->names[f->n++] = name;
}

static int cstr_cmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* stringToMatch: "*" presence, "*x" suffix, "x*" prefix, else exact. */
static int to_string_matches(struct conv *c, const struct k8s_strs *in, const struct string_match **out,
                             size_t *n)
{
    *out = NULL;
    *n = 0;
    if (!in->n) return 0;
    struct string_match *m = arena_alloc(&c->a, in->n * sizeof(*m));
    if (!m) return -ENOMEM;
    for (size_t i = 0; i < in->n; i++) {
        const char *v = in->v[i];
        size_t l = strlen(v);
        if (!strcmp(v, "*")) {
            m[i] = (struct string_match){.kind = SM_PRESENCE, .value = ""};
        } else if (v[0] == '*') {
            m[i] = (struct string_match){.kind = SM_SUFFIX, .value = v + 1};
        } else if (l && v[l - 1] == '*') {
            if (!(m[i].value = arena_strndup(&c->a, v, l - 1))) return -ENOMEM;
            m[i].kind = SM_PREFIX;
        } else {
            m[i] = (struct string_match){.kind = SM_EXACT, .value = v};
        }
    }
    *out = m;
    *n = in->n;
    return 0;
}

/* stringToPort: values that are not a port are dropped (istiod drops them silently; zmeshd says so). */
static int to_ports(struct conv *c, const struct manifest_src *src, const char *field,
                    const struct k8s_strs *in, const uint16_t **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    if (!in->n) return 0;
    uint16_t *p = arena_alloc(&c->a, in->n * sizeof(*p));
    if (!p) return -ENOMEM;
    for (size_t i = 0; i < in->n; i++) {
        char *end;
        errno = 0;
        unsigned long v = strtoul(in->v[i], &end, 10);
        /* istiod's ParseUint accepts 0..65535; port 0 never matches a connection, so it is dropped too. */
        if (!*in->v[i] || *end || errno || v > 65535 || in->v[i][0] == '-' || in->v[i][0] == '+' || v == 0) {
            creport(c, MANIFEST_WARN, src, field, "\"%s\" is not a port: dropped, as istiod drops it",
                    in->v[i]);
            continue;
        }
        p[(*n)++] = (uint16_t)v;
    }
    *out = p;
    return 0;
}

/* stringToIP: an address or a CIDR; anything else is dropped (istiod drops it silently; zmeshd says so). */
static int to_cidrs(struct conv *c, const struct manifest_src *src, const char *field,
                    const struct k8s_strs *in, const struct cidr **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    if (!in->n) return 0;
    struct cidr *p = arena_alloc(&c->a, in->n * sizeof(*p));
    if (!p) return -ENOMEM;
    for (size_t i = 0; i < in->n; i++) {
        const char *v = in->v[i];
        if (!*v) continue;
        char ipbuf[64];
        const char *slash = strchr(v, '/');
        size_t l = slash ? (size_t)(slash - v) : strlen(v);
        struct cidr *e = &p[*n];
        bool ok = l < sizeof(ipbuf);
        if (ok) {
            memcpy(ipbuf, v, l);
            ipbuf[l] = '\0';
            ok = !ip_parse(ipbuf, &e->ip);
        }
        unsigned max = ok && e->ip.family == AF_INET6 ? 128 : 32, len = max;
        if (ok && slash) {
            char *end;
            errno = 0;
            unsigned long b = strtoul(slash + 1, &end, 10);
            ok = slash[1] >= '0' && slash[1] <= '9' && !*end && !errno && b <= max;
            len = (unsigned)b;
        }
        if (!ok) {
            creport(c, MANIFEST_WARN, src, field,
                    "\"%s\" is not an IP address or CIDR: dropped, as istiod drops it", v);
            continue;
        }
        e->len = (uint8_t)len;
        (*n)++;
    }
    *out = p;
    return 0;
}

/* stringToServiceAccountMatch: "ns/sa", or a bare name in the policy's namespace. */
static int to_sa_matches(struct conv *c, const struct k8s_strs *in, const char *ns,
                         const struct sa_match **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    if (!in->n) return 0;
    struct sa_match *m = arena_alloc(&c->a, in->n * sizeof(*m));
    if (!m) return -ENOMEM;
    for (size_t i = 0; i < in->n; i++) {
        const char *slash = strchr(in->v[i], '/');
        if (slash) {
            if (!(m[i].namespace_ = arena_strndup(&c->a, in->v[i], (size_t)(slash - in->v[i]))))
                return -ENOMEM;
            m[i].service_account = slash + 1;
        } else {
            m[i].namespace_ = ns;
            m[i].service_account = in->v[i];
        }
    }
    *out = m;
    *n = in->n;
    return 0;
}

/* One AuthorizationPolicy rule to a model rule (Group): [to matches], [from matches], then one clause per
 * `when`. Sets *drop when an ALLOW rule uses L7 fields (istiod then leaves the rule out). */
static int convert_rule(struct conv *c, const struct k8s_authz_policy *p, size_t ri, bool allow,
                        struct auth_rule *out, bool *drop, struct l7_found *l7)
{
    const struct k8s_authz_rule *r = &p->rules[ri];
    const struct manifest_src *src = &p->meta.src;
    size_t n_cl = (r->n_to ? 1 : 0) + (r->n_from ? 1 : 0) + r->n_when, k = 0;
    bool found_l7 = false;
    char field[160];
    struct auth_clause *cl = n_cl ? arena_alloc(&c->a, n_cl * sizeof(*cl)) : NULL;
    if (n_cl && !cl) return -ENOMEM;
    int rc = 0;
    if (r->n_to) {
        struct auth_match *m = arena_alloc(&c->a, r->n_to * sizeof(*m));
        if (!m) return -ENOMEM;
        for (size_t i = 0; i < r->n_to; i++) {
            const struct k8s_operation *op = &r->to[i];
            static const enum k8s_op_field l7f[] = {K8S_OP_HOSTS,       K8S_OP_NOT_HOSTS, K8S_OP_METHODS,
                                                    K8S_OP_NOT_METHODS, K8S_OP_PATHS,     K8S_OP_NOT_PATHS};
            for (size_t j = 0; j < sizeof(l7f) / sizeof(l7f[0]); j++)
                if (op->f[l7f[j]].n) {
                    found_l7 = true;
                    l7_add(l7, k8s_op_field_names[l7f[j]]);
                }
            snprintf(field, sizeof(field), "spec.rules[%zu].to[%zu].operation.ports", ri, i);
            if ((rc = to_ports(c, src, field, &op->f[K8S_OP_PORTS], &m[i].destination_ports,
                               &m[i].n_destination_ports)))
                return rc;
            snprintf(field, sizeof(field), "spec.rules[%zu].to[%zu].operation.notPorts", ri, i);
            if ((rc = to_ports(c, src, field, &op->f[K8S_OP_NOT_PORTS], &m[i].not_destination_ports,
                               &m[i].n_not_destination_ports)))
                return rc;
        }
        cl[k++] = (struct auth_clause){.matches = m, .n_matches = r->n_to};
    }
    if (r->n_from) {
        struct auth_match *m = arena_alloc(&c->a, r->n_from * sizeof(*m));
        if (!m) return -ENOMEM;
        for (size_t i = 0; i < r->n_from; i++) {
            const struct k8s_source *s = &r->from[i];
            static const enum k8s_src_field l7f[] = {K8S_SRC_REMOTE_IP_BLOCKS, K8S_SRC_NOT_REMOTE_IP_BLOCKS,
                                                     K8S_SRC_REQUEST_PRINCIPALS,
                                                     K8S_SRC_NOT_REQUEST_PRINCIPALS};
            for (size_t j = 0; j < sizeof(l7f) / sizeof(l7f[0]); j++)
                if (s->f[l7f[j]].n) {
                    found_l7 = true;
                    l7_add(l7, k8s_src_field_names[l7f[j]]);
                }
            snprintf(field, sizeof(field), "spec.rules[%zu].from[%zu].source.ipBlocks", ri, i);
            if ((rc =
                     to_cidrs(c, src, field, &s->f[K8S_SRC_IP_BLOCKS], &m[i].source_ips, &m[i].n_source_ips)))
                return rc;
            snprintf(field, sizeof(field), "spec.rules[%zu].from[%zu].source.notIpBlocks", ri, i);
            if ((rc = to_cidrs(c, src, field, &s->f[K8S_SRC_NOT_IP_BLOCKS], &m[i].not_source_ips,
                               &m[i].n_not_source_ips)) ||
                (rc =
                     to_string_matches(c, &s->f[K8S_SRC_NAMESPACES], &m[i].namespaces, &m[i].n_namespaces)) ||
                (rc = to_string_matches(c, &s->f[K8S_SRC_NOT_NAMESPACES], &m[i].not_namespaces,
                                        &m[i].n_not_namespaces)) ||
                (rc = to_sa_matches(c, &s->f[K8S_SRC_SERVICE_ACCOUNTS], p->meta.namespace_,
                                    &m[i].service_accounts, &m[i].n_service_accounts)) ||
                (rc = to_sa_matches(c, &s->f[K8S_SRC_NOT_SERVICE_ACCOUNTS], p->meta.namespace_,
                                    &m[i].not_service_accounts, &m[i].n_not_service_accounts)) ||
                (rc =
                     to_string_matches(c, &s->f[K8S_SRC_PRINCIPALS], &m[i].principals, &m[i].n_principals)) ||
                (rc = to_string_matches(c, &s->f[K8S_SRC_NOT_PRINCIPALS], &m[i].not_principals,
                                        &m[i].n_not_principals)))
                return rc;
        }
        cl[k++] = (struct auth_clause){.matches = m, .n_matches = r->n_from};
    }
    for (size_t i = 0; i < r->n_when; i++) {
        const struct k8s_condition *w = &r->when[i];
        struct auth_match *m = arena_alloc(&c->a, sizeof(*m));
        if (!m) return -ENOMEM;
        snprintf(field, sizeof(field), "spec.rules[%zu].when[%zu]", ri, i);
        /* l4WhenAttributes; any other key is an HTTP attribute and its Match stays empty. */
        if (!strcmp(w->key, "source.namespace")) {
            if ((rc = to_string_matches(c, &w->values, &m->namespaces, &m->n_namespaces)) ||
                (rc = to_string_matches(c, &w->not_values, &m->not_namespaces, &m->n_not_namespaces)))
                return rc;
        } else if (!strcmp(w->key, "source.principal")) {
            if ((rc = to_string_matches(c, &w->values, &m->principals, &m->n_principals)) ||
                (rc = to_string_matches(c, &w->not_values, &m->not_principals, &m->n_not_principals)))
                return rc;
        } else if (!strcmp(w->key, "source.ip")) {
            if ((rc = to_cidrs(c, src, field, &w->values, &m->source_ips, &m->n_source_ips)) ||
                (rc = to_cidrs(c, src, field, &w->not_values, &m->not_source_ips, &m->n_not_source_ips)))
                return rc;
        } else if (!strcmp(w->key, "destination.ip")) {
            if ((rc = to_cidrs(c, src, field, &w->values, &m->destination_ips, &m->n_destination_ips)) ||
                (rc = to_cidrs(c, src, field, &w->not_values, &m->not_destination_ips,
                               &m->n_not_destination_ips)))
                return rc;
        } else if (!strcmp(w->key, "destination.port")) {
            if ((rc = to_ports(c, src, field, &w->values, &m->destination_ports, &m->n_destination_ports)) ||
                (rc = to_ports(c, src, field, &w->not_values, &m->not_destination_ports,
                               &m->n_not_destination_ports)))
                return rc;
        } else {
            found_l7 = true;
            l7_add(l7, w->key);
        }
        cl[k++] = (struct auth_clause){.matches = m, .n_matches = 1};
    }
    *drop = allow && found_l7;
    *out = (struct auth_rule){.clauses = cl, .n_clauses = k};
    return 0;
}

static int convert_authz(struct conv *c, const struct k8s_authz_policy *p, bool *ok)
{
    const struct manifest_src *src = &p->meta.src;
    *ok = false;
    if (p->has_target_refs) {
        creport(c, MANIFEST_INFO, src, "spec.targetRefs", "a policy for a waypoint: not sent to ztunnel");
        return 0;
    }
    struct policy pol = {.name = p->meta.name, .namespace_ = p->meta.namespace_};
    if (p->has_selector)
        pol.scope = POLICY_SCOPE_WORKLOAD_SELECTOR;
    else
        pol.scope =
            strcmp(p->meta.namespace_, c->o.root_namespace) ? POLICY_SCOPE_NAMESPACE : POLICY_SCOPE_GLOBAL;
    bool allow = !*p->action || !strcmp(p->action, "ALLOW");
    if (allow)
        pol.action = POLICY_ALLOW;
    else if (!strcmp(p->action, "DENY"))
        pol.action = POLICY_DENY;
    else {
        creport(c, MANIFEST_WARN, src, "spec.action",
                "ztunnel does not support the %s action: policy not applied", p->action);
        return 0;
    }
    if (k8s_kv_get(p->meta.annotations, p->meta.n_annotations, K8S_ANNOTATION_DRY_RUN))
        creport(c, MANIFEST_WARN, src, "metadata.annotations",
                "%s is not honoured (istiod's EnableWdsDryRunAuthzPol is off): the policy is enforced",
                K8S_ANNOTATION_DRY_RUN);
    struct auth_rule *rules = p->n_rules ? arena_alloc(&c->a, p->n_rules * sizeof(*rules)) : NULL;
    if (p->n_rules && !rules) return -ENOMEM;
    struct l7_found l7 = {.n = 0};
    for (size_t i = 0; i < p->n_rules; i++) {
        bool drop = false;
        int rc = convert_rule(c, p, i, allow, &rules[pol.n_rules], &drop, &l7);
        if (rc) return rc;
        if (!drop) pol.n_rules++;
    }
    pol.rules = rules;
    if (l7.n) {
        /* istiod's status message (httpRuleFmt with the action's boilerplate), attributes sorted. */
        qsort(l7.names, l7.n, sizeof(l7.names[0]), cstr_cmp);
        char found[512] = "";
        size_t off = 0;
        for (size_t i = 0; i < l7.n && off < sizeof(found); i++)
            off += (size_t)snprintf(found + off, sizeof(found) - off, "%s%s", i ? ", " : "", l7.names[i]);
        creport(
            c, MANIFEST_WARN, src, "spec.rules",
            "ztunnel does not support HTTP attributes (found: %s). In ambient mode you must use a waypoint "
            "proxy "
            "to enforce HTTP rules. %s",
            found,
            allow ? "Within an ALLOW policy, rules matching HTTP attributes are omitted. This will be more "
                    "restrictive than requested."
                  : "DENY policy with HTTP attributes is enforced without the HTTP rules. This will be more "
                    "restrictive than requested.");
    }
    struct builder_err e;
    c->cur = src;
    return added(c, builder_add_policy(c->b, &pol, &e), src, &e, ok);
}

/* ---- PeerAuthentication (authorization.go convertPeerAuthentication, convertedSelectorPeerAuthentications)
 */

static const struct string_match presence = {.kind = SM_PRESENCE, .value = ""};
static const struct auth_match not_principals_presence = {.not_principals = &presence, .n_not_principals = 1};

static int add_static_strict(struct conv *c)
{
    static const struct auth_clause clause = {.matches = &not_principals_presence, .n_matches = 1};
    static const struct auth_rule rule = {.clauses = &clause, .n_clauses = 1};
    struct policy pol = {.name = K8S_STATIC_STRICT_POLICY,
                         .namespace_ = c->o.root_namespace,
                         .scope = POLICY_SCOPE_WORKLOAD_SELECTOR,
                         .action = POLICY_DENY,
                         .rules = &rule,
                         .n_rules = 1};
    static const struct manifest_src src = {.file = "(static policy " K8S_STATIC_STRICT_POLICY ")", .doc = 0};
    struct builder_err e;
    c->cur = &src;
    return added(c, builder_add_policy(c->b, &pol, &e), &src, &e, NULL);
}

static bool mode_strict(const struct k8s_peer_authn *p)
{
    return p && p->mode == K8S_MTLS_STRICT;
}
static bool mode_unset(const struct k8s_peer_authn *p)
{
    return !p || p->mode == K8S_MTLS_UNSET;
}

/* The oldest namespace-wide (no selector) PeerAuthentication of ns, or NULL. */
static const struct k8s_peer_authn *ns_peer_authn(const struct by_ns *ix, const char *ns)
{
    size_t lo, hi;
    const struct k8s_peer_authn *best = NULL;
    by_ns_range(ix, ns, &lo, &hi);
    for (size_t i = lo; i < hi; i++) {
        const struct k8s_peer_authn *p = (const struct k8s_peer_authn *)ix->v[i];
        if (!p->n_selector && (!best || older(&p->meta, &best->meta))) best = p;
    }
    return best;
}

static int convert_peer_authn(struct conv *c, const struct k8s_peer_authn *pa, const struct by_ns *pix,
                              bool *ok)
{
    *ok = false;
    /* Only a workload policy with port-level modes outside the root namespace becomes a policy; the others
     * act through the static STRICT policy each workload references. */
    if (!strcmp(pa->meta.namespace_, c->o.root_namespace) || !pa->n_selector || !pa->n_ports) return 0;
    const struct k8s_peer_authn *ns = ns_peer_authn(pix, pa->meta.namespace_),
                                *root = ns_peer_authn(pix, c->o.root_namespace);
    /* Clauses of the one rule (Group) that holds the non-port parts, and per-port rules before it. */
    struct auth_clause *clauses = arena_alloc(&c->a, (pa->n_ports + 2) * sizeof(*clauses));
    struct auth_rule *rules = arena_alloc(&c->a, (pa->n_ports + 1) * sizeof(*rules));
    if (!clauses || !rules) return -ENOMEM;
    size_t n_cl = 0, n_rules = 0;
    bool non_strict_port = false;
    if (pa->mode == K8S_MTLS_STRICT) clauses[n_cl++] = (struct auth_clause){&not_principals_presence, 1};
    for (size_t i = 0; i < pa->n_ports; i++) {
        uint8_t pm = pa->ports[i].mode;
        uint16_t *port = arena_memdup(&c->a, &pa->ports[i].port, sizeof(uint16_t));
        if (!port) return -ENOMEM;
        if (pm == K8S_MTLS_STRICT) {
            /* Enforced by the parent policy already; the grouping follows istiod's condition as written. */
            if (mode_strict(pa) || (mode_unset(pa) && ns && mode_strict(ns)) ||
                ((!ns || mode_unset(ns)) && root && mode_strict(root)))
                continue;
            struct auth_match *m = arena_alloc(&c->a, sizeof(*m));
            struct auth_clause *cl = arena_alloc(&c->a, sizeof(*cl));
            if (!m || !cl) return -ENOMEM;
            *m = (struct auth_match){.not_principals = &presence,
                                     .n_not_principals = 1,
                                     .destination_ports = port,
                                     .n_destination_ports = 1};
            *cl = (struct auth_clause){m, 1};
            rules[n_rules++] = (struct auth_rule){cl, 1};
        } else if (pm == K8S_MTLS_PERMISSIVE || pm == K8S_MTLS_DISABLE) {
            if (pa->mode == K8S_MTLS_PERMISSIVE || pa->mode == K8S_MTLS_DISABLE) continue;
            if (pa->mode == K8S_MTLS_UNSET &&
                ((ns && !mode_strict(ns)) || (!ns && root && !mode_strict(root)) || (!ns && !root)))
                continue;
            non_strict_port = true;
            struct auth_match *m = arena_alloc(&c->a, sizeof(*m));
            if (!m) return -ENOMEM;
            *m = (struct auth_match){.not_destination_ports = port, .n_not_destination_ports = 1};
            clauses[n_cl++] = (struct auth_clause){m, 1};
        }
    }
    if (pa->mode == K8S_MTLS_STRICT && !non_strict_port) return 0; /* plain STRICT: the static policy */
    if (!n_cl && !n_rules) return 0;
    bool merge =
        (root && mode_strict(root) && (!ns || mode_unset(ns) || mode_strict(ns))) || (ns && mode_strict(ns));
    if (merge && non_strict_port) clauses[n_cl++] = (struct auth_clause){&not_principals_presence, 1};
    if (n_cl) rules[n_rules++] = (struct auth_rule){clauses, n_cl};
    struct policy pol = {.name = fmt_str(c, "%s%s", K8S_PEER_AUTHN_PREFIX, pa->meta.name),
                         .namespace_ = pa->meta.namespace_,
                         .scope = POLICY_SCOPE_WORKLOAD_SELECTOR,
                         .action = POLICY_DENY,
                         .rules = rules,
                         .n_rules = n_rules};
    if (!pol.name) return -ENOMEM;
    struct builder_err e;
    c->cur = &pa->meta.src;
    return added(c, builder_add_policy(c->b, &pol, &e), &pa->meta.src, &e, ok);
}

/* The PeerAuthentication-derived policy keys a workload references (convertedSelectorPeerAuthentications):
 * the effective mode from mesh, namespace and workload policies (oldest of each), with port-level exceptions
 * pointing at the workload policy's converted form. Writes up to 2 keys. */
static int peer_authn_keys(struct conv *c, const struct k8s_pod *pod, const struct by_ns *pix,
                           const struct k8s_peer_authn *base, const char *keys[2], size_t *n)
{
    const char *root_ns = c->o.root_namespace;
    const struct k8s_peer_authn *mesh = ns_peer_authn(pix, root_ns), *ns = NULL, *wl = NULL;
    *n = 0;
    if (strcmp(pod->meta.namespace_, root_ns)) {
        ns = ns_peer_authn(pix, pod->meta.namespace_);
        size_t lo, hi;
        by_ns_range(pix, pod->meta.namespace_, &lo, &hi);
        for (size_t i = lo; i < hi; i++) {
            const struct k8s_peer_authn *p = (const struct k8s_peer_authn *)pix->v[i];
            if (p->n_selector &&
                k8s_selector_matches(p->selector, p->n_selector, pod->meta.labels, pod->meta.n_labels) &&
                (!wl || older(&p->meta, &wl->meta)))
                wl = p;
        }
    }
    bool strict = mesh && mode_strict(mesh);
    if (ns && !mode_unset(ns)) strict = mode_strict(ns);
    const struct k8s_peer_authn *port_key = NULL;
    if (wl) {
        if (wl->mode == K8S_MTLS_STRICT) strict = true;
        if (wl->mode == K8S_MTLS_PERMISSIVE || wl->mode == K8S_MTLS_DISABLE) strict = false;
        bool any_non_strict = false, any_strict = false, any_permissive = false;
        for (size_t i = 0; i < wl->n_ports; i++) {
            any_strict |= wl->ports[i].mode == K8S_MTLS_STRICT;
            any_permissive |= wl->ports[i].mode == K8S_MTLS_PERMISSIVE;
            any_non_strict |=
                wl->ports[i].mode == K8S_MTLS_PERMISSIVE || wl->ports[i].mode == K8S_MTLS_DISABLE;
        }
        if (wl->n_ports) {
            if (wl->mode == K8S_MTLS_STRICT) {
                if (any_non_strict) port_key = wl, strict = false;
            } else if (wl->mode == K8S_MTLS_PERMISSIVE || wl->mode == K8S_MTLS_DISABLE) {
                if (any_strict) port_key = wl;
            } else if (strict) {
                /* An inherited STRICT: only PERMISSIVE ports are exceptions here (istiod's check, DISABLE
                 * not). */
                if (any_permissive) port_key = wl, strict = false;
            } else if (any_strict) {
                port_key = wl;
            }
        }
    }
    (void)base;
    if (strict && !(keys[(*n)++] = fmt_str(c, "%s/%s", root_ns, K8S_STATIC_STRICT_POLICY))) return -ENOMEM;
    if (port_key && !(keys[(*n)++] = fmt_str(c, "%s/%s%s", port_key->meta.namespace_, K8S_PEER_AUTHN_PREFIX,
                                             port_key->meta.name)))
        return -ENOMEM;
    return 0;
}

/* ---- workloads (workloads.go podWorkloadBuilder, constructServices; labels.CanonicalService) ---- */

static const char *first_label(const struct k8s_meta *m, const char *const *keys, const char *fallback)
{
    for (; *keys; keys++) {
        const char *v = k8s_kv_get(m->labels, m->n_labels, *keys);
        if (v && *v) return v;
    }
    return fallback;
}

/* kubeutil.GetDeployMetaFromPod and workloadNameAndType: the controller's name for a generated pod, with the
 * ReplicaSet hash trimmed (a Deployment) or a Job's "-<8-10 digit timestamp>" (a CronJob); the type is one of
 * deployment, job, cronjob, else the pod itself. Returns the name (borrowed from the pod or from c's arena).
 */
static const char *workload_name_type(struct conv *c, const struct k8s_pod *pod, const char **type)
{
    const char *name = pod->meta.name, *kind = "Pod";
    *type = "pod";
    if (!*pod->generate_name || !*pod->controller_kind) return name;
    kind = pod->controller_kind;
    const char *ctl = pod->controller_name;
    size_t l = strlen(ctl);
    const char *hash = k8s_kv_get(pod->meta.labels, pod->meta.n_labels, "pod-template-hash");
    if (!strcmp(kind, "ReplicaSet") && hash && *hash) {
        size_t hl = strlen(hash);
        if (l >= hl && !strcmp(ctl + l - hl, hash)) {
            /* TrimSuffix("-"+hash): only when the dash is there too. */
            size_t keep = l - hl;
            if (keep && ctl[keep - 1] == '-')
                keep--;
            else
                keep = l;
            *type = "deployment";
            return arena_strndup(&c->a, ctl, keep);
        }
    }
    if (!strcmp(kind, "Job")) {
        size_t d = 0;
        while (d < l && ctl[l - 1 - d] >= '0' && ctl[l - 1 - d] <= '9')
            d++;
        if (d >= 8 && d <= 10 && l > d + 1 && ctl[l - d - 1] == '-') {
            *type = "cronjob";
            return arena_strndup(&c->a, ctl, l - d - 1);
        }
        *type = "job";
        return *ctl ? ctl : name;
    }
    return name;
}

enum k8s_enrolment k8s_pod_enrolment(const struct k8s_pod *pod, const struct k8s_namespace *ns,
                                     const char *system_ns)
{
    const struct k8s_meta *m = &pod->meta;
    /* Matches' order: host network, then a sidecar, then the selectors; ztunnel pods are left out by the
     * agent's callers (IsZtunnelPod), checked here before the labels so a labelled namespace never enrols
     * one. */
    if (pod->host_network) return K8S_ENROL_HOST_NETWORK;
    if (k8s_kv_get(m->annotations, m->n_annotations, K8S_ANNOTATION_SIDECAR_STATUS)) return K8S_ENROL_SIDECAR;
    const char *app = k8s_kv_get(m->labels, m->n_labels, "app");
    if (system_ns && !strcmp(m->namespace_, system_ns) && app && !strcmp(app, K8S_ZTUNNEL_APP))
        return K8S_ENROL_ZTUNNEL;
    /* Selector 1: podSelector {dataplane-mode: ambient}, any namespace. Selector 2: podSelector
     * dataplane-mode NotIn [none] (an absent label matches NotIn), namespaceSelector {dataplane-mode:
     * ambient}. */
    const char *pv = k8s_kv_get(m->labels, m->n_labels, K8S_LABEL_DATAPLANE_MODE);
    if (pv && !strcmp(pv, K8S_DATAPLANE_AMBIENT)) return K8S_ENROL_POD_LABEL;
    const char *nv = ns ? k8s_kv_get(ns->meta.labels, ns->meta.n_labels, K8S_LABEL_DATAPLANE_MODE) : NULL;
    bool ns_ambient = nv && !strcmp(nv, K8S_DATAPLANE_AMBIENT);
    if (pv && !strcmp(pv, K8S_DATAPLANE_NONE))
        return ns_ambient ? K8S_ENROL_POD_OPT_OUT : K8S_ENROL_NOT_LABELLED;
    return ns_ambient ? K8S_ENROL_NAMESPACE_LABEL : K8S_ENROL_NOT_LABELLED;
}

bool k8s_enrolment_ambient(enum k8s_enrolment e)
{
    return e == K8S_ENROL_POD_LABEL || e == K8S_ENROL_NAMESPACE_LABEL;
}

const char *k8s_enrolment_to_str(enum k8s_enrolment e)
{
    static const char *const names[] = {"pod-label",    "namespace-label", "pod-opt-out", "not-labelled",
                                        "host-network", "sidecar",         "ztunnel"};
    return (unsigned)e < sizeof(names) / sizeof(names[0]) ? names[e] : "?";
}

static const struct k8s_namespace *find_namespace(const struct manifest_store *st, const struct by_ns *nix,
                                                  const char *name)
{
    /* Namespaces are indexed by name: their namespace_ is "", so the index is sorted by order; search by
     * name. */
    (void)st;
    size_t l = 0, h = nix->n;
    while (l < h) {
        size_t m = l + (h - l) / 2;
        int r = strcmp(nix->v[m]->name, name);
        if (!r) return (const struct k8s_namespace *)nix->v[m];
        if (r < 0)
            l = m + 1;
        else
            h = m;
    }
    return NULL;
}

static int meta_name_cmp(const void *a, const void *b)
{
    const struct k8s_meta *x = *(const struct k8s_meta *const *)a, *y = *(const struct k8s_meta *const *)b;
    int r = strcmp(x->name, y->name);
    return r ? r : (x->order > y->order) - (x->order < y->order);
}

struct indexes {
    struct by_ns ns, svc, authz, peer;
    const struct k8s_service *svc_base;
    const struct k8s_authz_policy *authz_base;
    const struct k8s_peer_authn *peer_base;
};

static int convert_pod(struct conv *c, const struct k8s_pod *pod, const struct indexes *ix)
{
    const struct manifest_src *src = &pod->meta.src;
    if (!strcmp(pod->phase, "Succeeded") || !strcmp(pod->phase, "Failed")) {
        creport(c, MANIFEST_INFO, src, "status.phase", "pod has terminated (%s): no workload", pod->phase);
        return 0;
    }
    if (!pod->ips.n) {
        creport(c, MANIFEST_INFO, src, "status.podIPs", "pod has no IP address yet: no workload");
        return 0;
    }
    struct workload w = {0};
    const struct gateway_addr *wp = k8s_waypoints_pod(c->wps, (size_t)(pod - c->pod_base));
    if (wp) w.waypoint = *wp;
    struct ip_addr *ips = arena_alloc(&c->a, pod->ips.n * sizeof(*ips));
    if (!ips) return -ENOMEM;
    for (size_t i = 0; i < pod->ips.n; i++)
        if (ip_parse(pod->ips.v[i], &ips[i])) return 0; /* checked by the reader */
    char uid[NAME_MAX_LEN * 2];
    k8s_pod_uid(c->o.cluster_id, pod->meta.namespace_, pod->meta.name, uid, sizeof(uid));
    if (!(w.uid = arena_strndup(&c->a, uid, strlen(uid)))) return -ENOMEM;
    w.name = pod->meta.name;
    w.namespace_ = pod->meta.namespace_;
    w.ips = ips;
    w.n_ips = pod->ips.n;
    const struct k8s_namespace *ns = find_namespace(c->st, &ix->ns, pod->meta.namespace_);
    /* istiod sets HBONE once the CNI agent has annotated the pod ambient.istio.io/redirection: enabled, which
     * it does for the pods its rule enrols; zmeshd applies the same rule (k8s_pod_enrolment) directly. */
    w.protocol = k8s_enrolment_ambient(k8s_pod_enrolment(pod, ns, c->o.root_namespace)) ? WL_PROTO_HBONE
                                                                                        : WL_PROTO_TCP;
    w.trust_domain = c->o.trust_domain;
    w.service_account = pod->service_account;
    w.node = pod->node_name;
    w.cluster_id = c->o.cluster_id;
    /* Kubernetes has Ready, Serving and Terminating; a boolean suffices (EndpointSlice's logic). */
    w.healthy = pod->ready && !pod->meta.deleting;
    w.capacity = 1;
    if (!(w.workload_name = workload_name_type(c, pod, &w.workload_type))) return -ENOMEM;
    static const char *const name_keys[] = {"service.istio.io/canonical-name", "app.kubernetes.io/name",
                                            "app", NULL};
    static const char *const rev_keys[] = {"service.istio.io/canonical-revision", "app.kubernetes.io/version",
                                           "version", NULL};
    w.canonical_name = first_label(&pod->meta, name_keys, w.workload_name);
    w.canonical_revision = first_label(&pod->meta, rev_keys, "latest");
    w.network_mode = pod->host_network ? WL_NET_HOST : WL_NET_STANDARD;

    /* services: the Services of the pod's namespace whose (non-empty) selector matches its labels. */
    size_t lo, hi;
    by_ns_range(&ix->svc, pod->meta.namespace_, &lo, &hi);
    struct wl_service_ports *sp = hi > lo ? arena_alloc(&c->a, (hi - lo) * sizeof(*sp)) : NULL;
    if (hi > lo && !sp) return -ENOMEM;
    for (size_t i = lo; i < hi; i++) {
        const struct k8s_service *s = (const struct k8s_service *)ix->svc.v[i];
        if (!s->has_selector ||
            !k8s_selector_matches(s->selector, s->n_selector, pod->meta.labels, pod->meta.n_labels))
            continue;
        struct port_map *pm = s->n_ports ? arena_alloc(&c->a, s->n_ports * sizeof(*pm)) : NULL;
        if (s->n_ports && !pm) return -ENOMEM;
        size_t np = 0;
        for (size_t j = 0; j < s->n_ports; j++) {
            uint16_t target = s->ports[j].target_port;
            if (*s->ports[j].target_name) {
                /* FindPortName: a TCP container port of that name; without one the port is left out. */
                target = 0;
                for (size_t k = 0; k < pod->n_ports && !target; k++)
                    if (!strcmp(pod->ports[k].name, s->ports[j].target_name) &&
                        !strcmp(pod->ports[k].protocol, "TCP"))
                        target = pod->ports[k].port;
                if (!target) continue;
            }
            pm[np++] = (struct port_map){.port = s->ports[j].port, .target = target};
        }
        const char *key = fmt_str(c, "%s/%s.%s.svc.%s", s->meta.namespace_, s->meta.name, s->meta.namespace_,
                                  c->o.domain_suffix);
        if (!key) return -ENOMEM;
        sp[w.n_services++] = (struct wl_service_ports){.key = key, .ports = pm, .n_ports = np};
    }
    w.services = sp;

    /* authorization_policies: selector policies of the pod's namespace and the root namespace that match
     * its labels and reached the snapshot, then the PeerAuthentication-derived keys (fetchPolicies). */
    size_t cap = 2, n_pol = 0;
    const char *root_ns = c->o.root_namespace;
    for (int pass = 0; pass < 2; pass++) {
        const char *nsn = pass ? root_ns : pod->meta.namespace_;
        if (pass && !strcmp(root_ns, pod->meta.namespace_)) break;
        by_ns_range(&ix->authz, nsn, &lo, &hi);
        cap += hi - lo;
    }
    const char **pols = arena_alloc(&c->a, cap * sizeof(*pols));
    if (!pols) return -ENOMEM;
    for (int pass = 0; pass < 2; pass++) {
        const char *nsn = pass ? root_ns : pod->meta.namespace_;
        if (pass && !strcmp(root_ns, pod->meta.namespace_)) break;
        by_ns_range(&ix->authz, nsn, &lo, &hi);
        for (size_t i = lo; i < hi; i++) {
            const struct k8s_authz_policy *p = (const struct k8s_authz_policy *)ix->authz.v[i];
            if (!c->authz_ok[p - ix->authz_base] || !p->has_selector ||
                !k8s_selector_matches(p->selector, p->n_selector, pod->meta.labels, pod->meta.n_labels))
                continue;
            if (!(pols[n_pol++] = fmt_str(c, "%s/%s", p->meta.namespace_, p->meta.name))) return -ENOMEM;
        }
    }
    /* istiod sorts the selector policies, then appends the PeerAuthentication keys (a sorted set). */
    if (n_pol) qsort(pols, n_pol, sizeof(*pols), cstr_cmp);
    size_t n_pa;
    int rc = peer_authn_keys(c, pod, &ix->peer, ix->peer_base, pols + n_pol, &n_pa);
    if (rc) return rc;
    if (n_pa) qsort(pols + n_pol, n_pa, sizeof(*pols), cstr_cmp);
    n_pol += n_pa;
    w.authorization_policies = pols;
    w.n_authorization_policies = n_pol;

    struct builder_err e;
    c->cur = src;
    return added(c, builder_add_workload(c->b, &w, &e), src, &e, NULL);
}

int k8s_build_snapshot(const struct manifest_store *st, const struct k8s_options *opts, struct snapshot **out,
                       manifest_report_fn report, void *ud)
{
    struct conv c = {.st = st, .report = report, .ud = ud};
    struct indexes ix = {0};
    bool *dup_ns = NULL, *dup_pod = NULL, *dup_svc = NULL, *dup_authz = NULL, *dup_peer = NULL,
         *dup_gw = NULL;
    int rc;
    if (opts) c.o = *opts;
#define DEFAULT(f, v)                                                                                        \
    if (!c.o.f || !*c.o.f) c.o.f = v
    DEFAULT(cluster_id, K8S_DEFAULT_CLUSTER_ID);
    DEFAULT(trust_domain, K8S_DEFAULT_TRUST_DOMAIN);
    DEFAULT(domain_suffix, K8S_DEFAULT_DOMAIN_SUFFIX);
    DEFAULT(root_namespace, K8S_DEFAULT_ROOT_NAMESPACE);
#undef DEFAULT
    size_t n_ns, n_pods, n_svc, n_authz, n_peer;
    const struct k8s_namespace *nss = manifest_namespaces(st, &n_ns);
    const struct k8s_pod *pods = manifest_pods(st, &n_pods);
    const struct k8s_service *svcs = manifest_services(st, &n_svc);
    const struct k8s_authz_policy *aps = manifest_authz_policies(st, &n_authz);
    const struct k8s_peer_authn *pas = manifest_peer_authns(st, &n_peer);
    ix.svc_base = svcs;
    ix.authz_base = aps;
    ix.peer_base = pas;
    if ((rc = snapshot_builder_new(&c.b, &(struct builder_opts){.warn = builder_warn, .warn_ud = &c})))
        goto out;
    c.authz_ok = calloc(n_authz + 1, sizeof(bool));
    c.peer_ok = calloc(n_peer + 1, sizeof(bool));
    if (!c.authz_ok || !c.peer_ok) {
        rc = -ENOMEM;
        goto out;
    }
    if ((rc = mark_duplicates(&c, "Namespace", nss, n_ns, sizeof(*nss), &dup_ns)) ||
        (rc = mark_duplicates(&c, "Pod", pods, n_pods, sizeof(*pods), &dup_pod)) ||
        (rc = mark_duplicates(&c, "Service", svcs, n_svc, sizeof(*svcs), &dup_svc)) ||
        (rc = mark_duplicates(&c, "AuthorizationPolicy", aps, n_authz, sizeof(*aps), &dup_authz)) ||
        (rc = mark_duplicates(&c, "PeerAuthentication", pas, n_peer, sizeof(*pas), &dup_peer)))
        goto out;
    /* Reported only: waypoint.c keeps the first Gateway of a name itself. */
    size_t n_gw;
    const struct k8s_gateway *gws = manifest_gateways(st, &n_gw);
    if ((rc = mark_duplicates(&c, "Gateway", gws, n_gw, sizeof(*gws), &dup_gw))) goto out;
    if ((rc = by_ns_init(&c, &ix.ns, nss, n_ns, sizeof(*nss), dup_ns)) ||
        (rc = by_ns_init(&c, &ix.svc, svcs, n_svc, sizeof(*svcs), dup_svc)) ||
        (rc = by_ns_init(&c, &ix.authz, aps, n_authz, sizeof(*aps), dup_authz)) ||
        (rc = by_ns_init(&c, &ix.peer, pas, n_peer, sizeof(*pas), dup_peer)))
        goto out;
    if (ix.ns.n) qsort(ix.ns.v, ix.ns.n, sizeof(*ix.ns.v), meta_name_cmp);
    c.svc_base = svcs;
    c.pod_base = pods;
    if ((rc = k8s_waypoints_compute(st, &c.o, &c.wps, report, ud))) goto out;
    for (size_t i = 0; i < n_svc && !rc; i++)
        if (!dup_svc[i]) rc = convert_service(&c, &svcs[i]);
    /* istiod serves the static STRICT policy as soon as any PeerAuthentication exists (policies.go,
     * DefaultPolicy); workloads under STRICT reference it. */
    if (!rc && n_peer) rc = add_static_strict(&c);
    for (size_t i = 0; i < n_authz && !rc; i++)
        if (!dup_authz[i]) rc = convert_authz(&c, &aps[i], &c.authz_ok[i]);
    for (size_t i = 0; i < n_peer && !rc; i++)
        if (!dup_peer[i]) rc = convert_peer_authn(&c, &pas[i], &ix.peer, &c.peer_ok[i]);
    for (size_t i = 0; i < n_pods && !rc; i++)
        if (!dup_pod[i]) rc = convert_pod(&c, &pods[i], &ix);
    if (rc) goto out;
    rc = builder_finish(c.b, out);
    c.b = NULL;
out:
    builder_free(c.b);
    free(c.authz_ok);
    free(c.peer_ok);
    free(dup_ns);
    free(dup_pod);
    free(dup_svc);
    free(dup_authz);
    free(dup_peer);
    free(dup_gw);
    k8s_waypoints_free(c.wps);
    arena_free(&c.a);
    return rc;
}
