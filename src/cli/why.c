/* zmesh why (why.h): one request or connection explained from the cluster's objects. Each step runs the code
 * the mesh component runs for it, so the explanation cannot drift from the data path:
 *   - capture: k8s_pod_enrolment (the CNI node agent's rule);
 *   - ztunnel's choice (istio/ztunnel src/proxy/outbound.rs build_request): a Service VIP with a waypoint, a
 *     pod with a waypoint, else straight to the endpoint; never back through the waypoint the source is;
 *   - the waypoint binding and its reason: k8s_waypoints_compute (zmeshd/waypoint.h);
 *   - L7 authorization and routing: zmeshd's conversion (l7_convert_doc) into the waypoint's model (l7.h),
 *     then l7_authorize and l7_match_ex as wp_decide does (src/waypoint/route.c);
 *   - endpoints: lb_candidates (the mesh's load balancer: health, locality preference);
 *   - L4 authorization at the destination's ztunnel: authz_check with the identity that ztunnel sees (the
 *     waypoint's when one is in the path). */
#include "cli/why.h"

#include <errno.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cli/cluster.h"
#include "cli/up.h"
#include "core/net.h"
#include "mesh/authz.h"
#include "mesh/destination_rule.h"
#include "mesh/l7.h"
#include "mesh/l7authz.h"
#include "mesh/lb.h"
#include "mesh/model.h"
#include "tls/spiffe.h"
#include "zmeshd/k8s.h"
#include "zmeshd/l7.h"
#include "zmeshd/waypoint.h"

#define WHY_EXIT_USAGE 2
#define WHY_EXIT_LOOKUP 5
/* Endpoints listed per backend; the rest are counted. */
#define WHY_MAX_LISTED 8

/* Findings of the reader and the conversions: the first few are kept for the end of the report (a route that
 * was not converted explains a surprising answer). */
#define WHY_MAX_FINDINGS 5
struct why_findings {
    size_t n;
    char msg[WHY_MAX_FINDINGS][512];
};

static void count_finding(void *ud, const struct manifest_finding *f)
{
    struct why_findings *fs = ud;
    if (f->level == MANIFEST_INFO) return; /* skipped by design (e.g. a waypoint's policy is not ztunnel's) */
    if (fs->n < WHY_MAX_FINDINGS) manifest_finding_format(f, fs->msg[fs->n], sizeof(fs->msg[0]));
    fs->n++;
}

/* "ns/name", "name.ns" or "name" (in dflt) into ns/name. */
static int split_name(const char *in, const char *dflt, char *ns, size_t nn, char *name, size_t n)
{
    const char *slash = strchr(in, '/'), *dot = strchr(in, '.');
    int w;
    if (slash)
        w = snprintf(ns, nn, "%.*s", (int)(slash - in), in) < 0 || snprintf(name, n, "%s", slash + 1) < 0;
    else if (dot)
        w = snprintf(name, n, "%.*s", (int)(dot - in), in) < 0 || snprintf(ns, nn, "%s", dot + 1) < 0;
    else
        w = snprintf(ns, nn, "%s", dflt) < 0 || snprintf(name, n, "%s", in) < 0;
    if (w || !*ns || !*name || strchr(name, '/') || strchr(ns, '/') || strlen(in) >= n) return -EINVAL;
    return 0;
}

static const struct k8s_pod *find_pod(const struct manifest_store *st, const char *ns, const char *name)
{
    size_t n = 0;
    const struct k8s_pod *p = manifest_pods(st, &n);
    for (size_t i = 0; i < n; i++)
        if (!strcmp(p[i].meta.namespace_, ns) && !strcmp(p[i].meta.name, name) && !p[i].meta.deleting)
            return &p[i];
    return NULL;
}

static const struct k8s_namespace *find_ns(const struct manifest_store *st, const char *ns)
{
    size_t n = 0;
    const struct k8s_namespace *p = manifest_namespaces(st, &n);
    for (size_t i = 0; i < n; i++)
        if (!strcmp(p[i].meta.name, ns)) return &p[i];
    return NULL;
}

static const char *enrolment_text(enum k8s_enrolment e)
{
    switch (e) {
    case K8S_ENROL_POD_LABEL:
        return "the pod's label " K8S_LABEL_DATAPLANE_MODE "=" K8S_DATAPLANE_AMBIENT;
    case K8S_ENROL_NAMESPACE_LABEL:
        return "its namespace's label " K8S_LABEL_DATAPLANE_MODE "=" K8S_DATAPLANE_AMBIENT;
    case K8S_ENROL_POD_OPT_OUT:
        return "the pod's label " K8S_LABEL_DATAPLANE_MODE "=" K8S_DATAPLANE_NONE " opts it out";
    case K8S_ENROL_NOT_LABELLED:
        return "neither the pod nor its namespace has " K8S_LABEL_DATAPLANE_MODE "=" K8S_DATAPLANE_AMBIENT;
    case K8S_ENROL_HOST_NETWORK:
        return "it uses the host network";
    case K8S_ENROL_SIDECAR:
        return "it has a sidecar";
    case K8S_ENROL_ZTUNNEL:
        return "it is a ztunnel";
    }
    return "?";
}

/* The destination: a Service (by name or VIP) or a workload (by IP or pod/<name>). */
struct dest {
    const struct service *svc;
    const struct workload *wl;
    struct ip_addr ip; /* the address the client dials */
    bool has_ip;
    char shown[300]; /* what the client names (for the authority) */
};

static int resolve_dest(const struct snapshot *snap, const char *in, const char *dflt_ns, const char *domain,
                        struct dest *d, char *err, size_t errlen)
{
    memset(d, 0, sizeof(*d));
    snprintf(d->shown, sizeof(d->shown), "%s", in);
    if (!ip_parse(in, &d->ip)) {
        d->has_ip = true;
        if ((d->svc = snapshot_service_by_vip(snap, "", &d->ip))) return 0;
        if ((d->wl = snapshot_workload_by_ip(snap, "", &d->ip))) return 0;
        snprintf(err, errlen, "no Service VIP and no pod has the address %s", in);
        return -ENOENT;
    }
    if (!strncmp(in, "pod/", 4)) {
        char ns[256], name[256];
        if (split_name(in + 4, dflt_ns, ns, sizeof(ns), name, sizeof(name)))
            return snprintf(err, errlen, "\"%s\": expected pod/<name>[.<namespace>]", in), -EINVAL;
        if (!(d->wl = snapshot_workload_by_name(snap, ns, name)))
            return snprintf(err, errlen, "no pod %s/%s", ns, name), -ENOENT;
        return 0;
    }
    /* DNS as a pod resolves it: name, name.ns, name.ns.svc, name.ns.svc.<domain>. */
    char name[256], ns[256];
    const char *dot = strchr(in, '.');
    if (!dot) {
        snprintf(name, sizeof(name), "%s", in);
        snprintf(ns, sizeof(ns), "%s", dflt_ns);
    } else {
        snprintf(name, sizeof(name), "%.*s", (int)(dot - in), in);
        const char *rest = dot + 1, *dot2 = strchr(rest, '.');
        snprintf(ns, sizeof(ns), "%.*s", dot2 ? (int)(dot2 - rest) : (int)strlen(rest), rest);
        if (dot2) {
            char tail[300];
            snprintf(tail, sizeof(tail), "svc.%s", domain);
            if (strcmp(dot2 + 1, "svc") && strcmp(dot2 + 1, tail))
                return snprintf(err, errlen,
                                "\"%s\": not a Service name of this cluster (<name>[.<ns>[.svc[.%s]]])", in,
                                domain),
                       -ENOENT;
        }
    }
    char key[1100];
    snprintf(key, sizeof(key), "%s/%s.%s.svc.%s", ns, name, ns, domain);
    if (!(d->svc = snapshot_service_by_host(snap, key)))
        return snprintf(err, errlen, "no Service %s/%s", ns, name), -ENOENT;
    return 0;
}

/* The waypoint a GatewayAddress names, among the computed ones. */
static const struct k8s_waypoint *find_waypoint(const struct k8s_waypoints *wps, const struct gateway_addr *g)
{
    size_t n = 0;
    const struct k8s_waypoint *w = k8s_waypoints_list(wps, &n);
    for (size_t i = 0; i < n; i++) {
        const struct gateway_addr *a = &w[i].addr;
        if (a->is_host != g->is_host) continue;
        if (g->is_host ? !strcmp(a->ns, g->ns) && !strcmp(a->host, g->host) : ip_equal(&a->ip, &g->ip))
            return &w[i];
    }
    return NULL;
}

/* The binding record of a Service or Pod (kind "Service"/"Pod", ns/name). */
static const struct k8s_binding *find_binding(const struct k8s_waypoints *wps, const char *kind,
                                              const char *ns, const char *name)
{
    size_t n = 0;
    const struct k8s_binding *b = k8s_waypoints_bindings(wps, &n);
    for (size_t i = 0; i < n; i++)
        if (!strcmp(b[i].kind, kind) && !strcmp(b[i].meta->namespace_, ns) && !strcmp(b[i].meta->name, name))
            return &b[i];
    return NULL;
}

/* Where an object's istio.io/use-waypoint comes from: its own label, else its namespace's. */
static void binding_source(const struct manifest_store *st, const struct k8s_meta *m, char *buf, size_t n)
{
    const char *own = k8s_kv_get(m->labels, m->n_labels, K8S_LABEL_USE_WAYPOINT);
    if (own) {
        snprintf(buf, n, "its own label %s=%s", K8S_LABEL_USE_WAYPOINT, own);
        return;
    }
    const struct k8s_namespace *ns = find_ns(st, m->namespace_);
    const char *nl = ns ? k8s_kv_get(ns->meta.labels, ns->meta.n_labels, K8S_LABEL_USE_WAYPOINT) : NULL;
    snprintf(buf, n, "namespace %s's label %s=%s", m->namespace_, K8S_LABEL_USE_WAYPOINT, nl ? nl : "?");
}

/* check_from_waypoint: the source is one of the waypoint's own workloads. */
static bool source_is_waypoint(const struct snapshot *snap, const struct service *wsvc,
                               const struct workload *src)
{
    size_t n = 0;
    const struct workload *const *eps = wsvc ? snapshot_service_endpoints(snap, wsvc, &n) : NULL;
    for (size_t i = 0; i < n; i++)
        if (eps[i] == src) return true;
    return false;
}

static const struct port_map *service_port(const struct service *s, uint16_t port)
{
    for (size_t i = 0; i < s->n_ports; i++)
        if (s->ports[i].port == port) return &s->ports[i];
    return NULL;
}

static const char *proto_name(uint8_t p)
{
    static const char *const names[] = {"unknown: detected", "HTTP/1.1", "HTTP/2", "gRPC", "TCP", "TLS"};
    return p < sizeof(names) / sizeof(names[0]) ? names[p] : "?";
}

/* Lists the endpoints the load balancer chooses among for svc:port from src (only those of DestinationRule
 * subset ss when not NULL), and returns how many. */
static size_t list_endpoints(FILE *o, const struct snapshot *snap, const struct service *svc, uint16_t port,
                             const struct workload *src, const struct dr_subset *ss, const char *indent)
{
    const struct workload *const *all = NULL, *eps[WHY_MAX_LISTED * 8];
    size_t n_all = 0, n = 0;
    unsigned rank = 0;
    struct lb_source ls = {.wl = src};
    int rc = lb_candidates(snap, svc, port, &ls, &all, &n_all, &rank);
    for (size_t i = 0; rc == 0 && i < n_all && n < sizeof(eps) / sizeof(eps[0]); i++)
        if (!ss || dr_subset_has(ss, all[i]->namespace_, all[i]->name)) eps[n++] = all[i];
    if (rc == -EAGAIN) {
        fprintf(o, "%sa Passthrough service: the original destination address is dialled\n", indent);
        return 0;
    }
    size_t total = snapshot_service_n_endpoints(snap, svc);
    if (rc < 0 || !n) {
        fprintf(o, "%sno eligible endpoint (%zu endpoint%s, none healthy with this port)\n", indent, total,
                total == 1 ? "" : "s");
        return 0;
    }
    for (size_t i = 0; i < n && i < WHY_MAX_LISTED; i++) {
        struct lb_choice c;
        char ipb[IP_STRLEN];
        const char *ip = "?";
        if (!lb_endpoint_ip(eps[i], svc->ip_families, NULL, &c.ip)) ip = ip_format(&c.ip, ipb, sizeof(ipb));
        fprintf(o, "%s%s/%s %s node %s%s\n", indent, eps[i]->namespace_, eps[i]->name, ip,
                *eps[i]->node ? eps[i]->node : "?", eps[i]->capacity ? "" : " (capacity 0: not chosen)");
    }
    if (n > WHY_MAX_LISTED) fprintf(o, "%s... and %zu more\n", indent, n - WHY_MAX_LISTED);
    if (n < total)
        fprintf(o, "%s(%zu of %zu endpoints eligible: %s)\n", indent, n, total,
                ss     ? "the subset's"
                : rank ? "the locality preference keeps the closest"
                       : "unhealthy or without the port");
    return n;
}

/* The load balancer the waypoint uses for svc:port (subset ss), from its DestinationRule dr (NULL: none). */
static void lb_text(const struct dr_rule *dr, const struct dr_subset *ss, uint16_t port, char *buf, size_t n)
{
    struct dr_policy p = dr_policy_for(dr, ss, port);
    const struct dr_lb_policy *lb = p.lb;
    static const char *const keys[] = {"", "header", "cookie", "source IP", "query parameter"};
    if (!lb) {
        snprintf(buf, n, "LEAST_REQUEST: the less loaded of two random endpoints (Istio's default%s%s)",
                 dr ? "; DestinationRule " : "", dr ? dr->key : "");
        return;
    }
    if (lb->lb == DR_LB_RING_HASH || lb->lb == DR_LB_MAGLEV)
        snprintf(buf, n, "%s on the %s%s%s (DestinationRule %s)", dr_lb_to_str(lb->lb),
                 lb->hash_key < 5 ? keys[lb->hash_key] : "?", *lb->hash_name ? " " : "", lb->hash_name,
                 dr->key);
    else
        snprintf(buf, n, "%s (DestinationRule %s)", dr_lb_to_str(lb->lb), dr->key);
}

/* L4 authorization at the ztunnel of each eligible endpoint (the verdict of the first is the answer; the
 * others are shown when they differ). Returns true when allowed. */
static bool l4_verdict(FILE *o, const struct snapshot *snap, const struct workload *dst, uint16_t target_port,
                       const char *identity, const struct ip_addr *src_ip, const char **policy_out)
{
    struct authz_conn c = {.dst_port = target_port, .src_identity = identity && *identity ? identity : NULL};
    if (src_ip) c.src_ip = *src_ip;
    if (dst->n_ips) c.dst_ip = dst->ips[0];
    const char *matched = NULL;
    enum authz_result r = authz_check(snap, dst, &c, &matched);
    static char keep[AUTHZ_POLICY_KEY_MAX];
    snprintf(keep, sizeof(keep), "%s", matched ? matched : "");
    *policy_out = keep;
    fprintf(o, "  at %s/%s's ztunnel (node %s), identity %s, port %u: %s", dst->namespace_, dst->name,
            *dst->node ? dst->node : "?", c.src_identity ? c.src_identity : "none (plaintext)", target_port,
            r == AUTHZ_ALLOW ? "ALLOW" : "DENY");
    if (matched)
        fprintf(o, " by AuthorizationPolicy %s\n", keep);
    else
        fprintf(o, r == AUTHZ_ALLOW ? " (no ALLOW policy applies)\n"
                                    : " (ALLOW policies apply, none matches)\n");
    return r == AUTHZ_ALLOW;
}

struct why_ctx {
    const struct manifest_store *st;
    const struct why_query *q;
    struct snapshot *snap;
    struct k8s_waypoints *wps;
    struct l7_config *l7;
    const char *domain;
    char ns[256];
    FILE *o; /* the body, printed after the result line */
    /* Where the waypoint may send it (the route's backends, or the Service): L4 is checked at each. */
    struct {
        const struct service *svc;
        uint16_t port;
    } to[L7_MAX_BACKENDS];
    size_t n_to;
    char result[1024];
    enum why_result code;
    bool l4_header;
};

static void set_result(struct why_ctx *x, enum why_result code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_result(struct why_ctx *x, enum why_result code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(x->result, sizeof(x->result), fmt, ap);
    va_end(ap);
    x->code = code;
}

/* The L7 config the waypoints get: every L7 document converted as zmeshd converts it. */
static int build_l7(struct why_ctx *x, struct why_findings *findings)
{
    struct l7_builder *b = l7_builder_new();
    if (!b) return -ENOMEM;
    size_t n = 0;
    const struct manifest_l7_doc *docs = manifest_l7_docs(x->st, &n);
    for (size_t i = 0; i < n; i++) {
        uint8_t *pb = NULL;
        size_t len = 0;
        int type = 0;
        char name[L7_NAME_MAX], err[512];
        int rc = l7_convert_doc(&docs[i], &type, &pb, &len, name, sizeof(name), count_finding, findings);
        if (rc == -ENOMEM) {
            l7_builder_free(b);
            return rc;
        }
        if (rc < 0) continue;
        rc = l7_builder_add(b, l7_type_urls[type], name, pb, len, err, sizeof(err));
        free(pb);
        if (rc == -ENOMEM) {
            l7_builder_free(b);
            return rc;
        }
    }
    x->l7 = l7_builder_finish(b);
    return x->l7 ? 0 : -ENOMEM;
}

/* The names of the L7 policies that target Gateway gw or Service svc, ", "-separated, into buf. */
static void l7_policy_names(const struct l7_config *c, const char *gw_ns, const char *gw_name,
                            const char *svc_ns, const char *svc_name, char *buf, size_t n)
{
    char key[600];
    size_t used = 0;
    buf[0] = 0;
    for (int k = 0; k < 2; k++) {
        if (k == 1 && !svc_ns) break;
        snprintf(key, sizeof(key), "%c:%s/%s", k ? 'S' : 'G', k ? svc_ns : gw_ns, k ? svc_name : gw_name);
        size_t np = 0;
        const struct l7_policy *const *ps = l7_config_policies_for(c, key, &np);
        for (size_t i = 0; i < np && used < n; i++) {
            int w = snprintf(buf + used, n - used, "%s%s", used ? ", " : "", l7_policy_name(ps[i]));
            if (w > 0) used += (size_t)w;
        }
    }
}

/* The waypoint's part: L7 authorization, then the route and its backends (wp_decide's order). */
static void explain_waypoint(struct why_ctx *x, const struct k8s_waypoint *kw, const struct workload *wp_wl,
                             const struct workload *src, const struct dest *d, uint16_t port,
                             const struct port_map *pm)
{
    FILE *o = x->o;
    const char *gw_ns = kw->gw->meta.namespace_, *gw_name = kw->gw->meta.name;
    const struct service *svc = d->svc;
    bool tcp = pm && (pm->app_protocol == PORT_PROTO_TCP || pm->app_protocol == PORT_PROTO_TLS);
    const char *method = x->q->method ? x->q->method : "GET", *path = x->q->path ? x->q->path : "/";
    if (tcp) {
        fprintf(o,
                "\nAt the waypoint %s/%s\n  port %u is declared %s: relayed as TCP; no route applies, L7 "
                "policies "
                "apply without their HTTP-only attributes\n",
                gw_ns, gw_name, port, proto_name(pm->app_protocol));
    } else {
        fprintf(o, "\nAt the waypoint %s/%s (%s %s)\n", gw_ns, gw_name, method, path);
    }
    /* The request as the waypoint sees it. */
    struct l7_header hs[WHY_MAX_HEADERS + 1];
    size_t nh = 0;
    char authority[320];
    if (port == 80 || !port)
        snprintf(authority, sizeof(authority), "%s", d->shown);
    else
        snprintf(authority, sizeof(authority), "%s:%u", d->shown, port);
    for (size_t i = 0; i < x->q->n_headers && nh < WHY_MAX_HEADERS; i++) {
        if (!strcasecmp(x->q->headers[i].name, "host")) {
            snprintf(authority, sizeof(authority), "%s", x->q->headers[i].value);
            continue;
        }
        hs[nh++] = (struct l7_header){x->q->headers[i].name, strlen(x->q->headers[i].name),
                                      x->q->headers[i].value, strlen(x->q->headers[i].value)};
    }
    struct l7_request req = {.method = method,
                             .path = path,
                             .path_len = strlen(path),
                             .authority = authority,
                             .headers = hs,
                             .n_headers = nh,
                             .port = port,
                             .scheme = "http"};
    /* VirtualService source matches as the waypoint reads them (wp_decide): the namespace of the identity the
     * client's ztunnel presents, the client workload found by its address. */
    struct spiffe_id sid;
    if (src && src->spiffe_id[0] && spiffe_parse(src->spiffe_id, strlen(src->spiffe_id), &sid) == 0)
        req.source_namespace = sid.ns;
    if (src) {
        req.source_workload_ns = src->namespace_;
        req.source_workload = src->name;
    }
    for (size_t i = 0; i < nh; i++)
        if (!strcmp(hs[i].name, "content-type") && l7_grpc_content_type(hs[i].value)) req.grpc = true;
    struct ip_addr sip = {0};
    if (src && src->n_ips) sip = src->ips[0];
    const char *principal = src && !strncmp(src->spiffe_id, "spiffe://", 9) ? src->spiffe_id + 9 : NULL;
    struct l7_authz_input in = {.source_principal = principal,
                                .source_ip = src && src->n_ips ? &sip : NULL,
                                .dest_ip = d->has_ip ? &d->ip : NULL,
                                .dest_port = port,
                                .req = tcp ? NULL : &req,
                                .tcp = tcp};
    const char *matched = NULL;
    bool dry = false;
    enum l7_verdict v = l7_authorize(x->l7, gw_ns, gw_name, svc ? svc->namespace_ : NULL,
                                     svc ? svc->name : NULL, &in, &matched, &dry);
    char names[512];
    l7_policy_names(x->l7, gw_ns, gw_name, svc ? svc->namespace_ : NULL, svc ? svc->name : NULL, names,
                    sizeof(names));
    fprintf(o, "  L7 policies targeting the waypoint or the Service: %s\n", *names ? names : "none");
    fprintf(o, "  L7 authorization: %s", v == L7_ALLOW ? "ALLOW" : "DENY");
    if (matched)
        fprintf(o, " by AuthorizationPolicy %s\n", matched);
    else
        fprintf(o, v == L7_ALLOW ? " (no ALLOW policy targets the waypoint or the Service)\n"
                                 : " (ALLOW policies target it, none matches)\n");
    if (dry) fprintf(o, "  dry-run policies would deny it (they are only logged)\n");
    if (v == L7_DENY) {
        char none[600];
        snprintf(none, sizeof(none), "no ALLOW policy matches: %s", names);
        set_result(x, WHY_DENIED, "DENIED: %s, by the waypoint %s/%s (%s)",
                   tcp ? "the TCP connection is closed" : "403 RBAC: access denied", gw_ns, gw_name,
                   matched ? matched : none);
        return;
    }
    if (tcp) {
        set_result(x, WHY_ALLOWED, "ALLOWED: TCP through the waypoint %s/%s to %s/%s:%u", gw_ns, gw_name,
                   svc ? svc->namespace_ : d->wl->namespace_, svc ? svc->name : d->wl->name, port);
        return;
    }
    if (!svc) {
        fprintf(o, "  addressed by pod IP: no route applies (the waypoint sends it to that pod)\n");
        set_result(x, WHY_ALLOWED, "ALLOWED: %s %s to pod %s/%s through the waypoint %s/%s", method, path,
                   d->wl->namespace_, d->wl->name, gw_ns, gw_name);
        return;
    }
    const struct l7_service_routes *r = l7_routes_for(x->l7, svc->namespace_, svc->name, port);
    const struct service *to = svc;
    uint16_t to_port = port;
    if (!r) {
        fprintf(o, "  route: none attaches to %s/%s port %u: the Service itself (the default route)\n",
                svc->namespace_, svc->name, port);
    } else {
        const char *prefix = NULL;
        size_t plen = 0;
        const struct l7_rule *rule = l7_match_ex(r, &req, &prefix, &plen);
        if (!rule) {
            fprintf(o, "  route: routes attach to %s/%s, no rule matches %s %s (host %s)\n", svc->namespace_,
                    svc->name, method, path, authority);
            set_result(x, WHY_NO_ROUTE,
                       "NO ROUTE: 404 NR at the waypoint %s/%s: no rule of the routes of %s/%s "
                       "matches",
                       gw_ns, gw_name, svc->namespace_, svc->name);
            return;
        }
        fprintf(o, "  route: %s rule %u (%s)\n", rule->route, rule->index, rule->name);
        if (rule->redirect) {
            char loc[1024];
            int n = l7_redirect_location(rule->redirect, prefix, plen, &req, "http", loc, sizeof(loc));
            fprintf(o, "  redirect: %u to %s\n", rule->redirect->status ? rule->redirect->status : 302,
                    n < 0 ? "?" : loc);
            set_result(x, WHY_ALLOWED, "ANSWERED: %u redirect by the waypoint %s/%s (%s)",
                       rule->redirect->status ? rule->redirect->status : 302, gw_ns, gw_name, rule->route);
            return;
        }
        if (rule->direct) {
            set_result(x, WHY_ALLOWED, "ANSWERED: %u direct response by the waypoint %s/%s (%s)",
                       rule->direct->status, gw_ns, gw_name, rule->route);
            return;
        }
        if (!rule->n_backends || !rule->total_weight) {
            fprintf(o, "  backends: none with a weight above 0\n");
            set_result(x, WHY_NO_ROUTE, "NO BACKEND: 500 at the waypoint %s/%s (%s: every weight is 0)",
                       gw_ns, gw_name, rule->route);
            return;
        }
        /* Each backend with its share; the request goes to one of them, weighted at random. */
        size_t eligible_total = 0;
        for (size_t i = 0; i < rule->n_backends; i++) {
            const struct l7_backend *be = &rule->backends[i];
            uint16_t bp = be->port ? be->port : port;
            fprintf(o, "  backend %s/%s:%u weight %u (%.1f%%)%s%s\n", be->ns, be->name, bp, be->weight,
                    100.0 * be->weight / (double)rule->total_weight,
                    be->subset && *be->subset ? " subset " : "", be->subset ? be->subset : "");
            char key[700];
            snprintf(key, sizeof(key), "%s/%s.%s.svc.%s", be->ns, be->name, be->ns, x->domain);
            const struct service *bs = snapshot_service_by_host(x->snap, key);
            if (!bs) {
                fprintf(o, "    no such Service: a request sent here gets 500\n");
                continue;
            }
            if (!be->weight) continue;
            if (x->n_to < L7_MAX_BACKENDS) {
                x->to[x->n_to].svc = bs;
                x->to[x->n_to++].port = bp;
            }
            const struct dr_rule *dr = l7_destination_rule_for(x->l7, bs->namespace_, bs->name);
            const struct dr_subset *ss = NULL;
            if (be->subset && *be->subset && !(dr && (ss = dr_subset_find(dr, be->subset)))) {
                fprintf(
                    o, "    no DestinationRule of %s/%s defines subset %s: a request sent here gets 503 NC\n",
                    bs->namespace_, bs->name, be->subset);
                continue;
            }
            char lb[300];
            lb_text(dr, ss, bp, lb, sizeof(lb));
            fprintf(o, "    load balancer: %s\n", lb);
            eligible_total += list_endpoints(o, x->snap, bs, bp, wp_wl, ss, "    ");
        }
        if (!eligible_total) {
            set_result(x, WHY_REFUSED, "REFUSED: 503 UH at the waypoint %s/%s: no healthy endpoint behind %s",
                       gw_ns, gw_name, rule->route);
            return;
        }
        char to_s[600] = "";
        size_t tl = 0;
        for (size_t i = 0; i < rule->n_backends && tl < sizeof(to_s); i++) {
            const struct l7_backend *be = &rule->backends[i];
            if (!be->weight) continue;
            int w = snprintf(to_s + tl, sizeof(to_s) - tl, "%s%s/%s:%u", tl ? ", " : "", be->ns, be->name,
                             be->port ? be->port : port);
            if (w > 0) tl += (size_t)w;
            if (w > 0 && rule->n_backends > 1 && tl < sizeof(to_s)) {
                w = snprintf(to_s + tl, sizeof(to_s) - tl, " (%.0f%%)",
                             100.0 * be->weight / (double)rule->total_weight);
                if (w > 0) tl += (size_t)w;
            }
        }
        fprintf(
            o,
            "  the waypoint picks a backend by weight, then an endpoint with that backend's load balancer\n");
        set_result(x, WHY_ALLOWED, "ALLOWED: %s %s through the waypoint %s/%s, route %s, to %s", method, path,
                   gw_ns, gw_name, rule->route, to_s);
        return;
    }
    fprintf(o, "  endpoints of %s/%s:%u:\n", to->namespace_, to->name, to_port);
    if (!list_endpoints(o, x->snap, to, to_port, wp_wl, NULL, "    ")) {
        set_result(x, WHY_REFUSED, "REFUSED: 503 UH at the waypoint %s/%s: no healthy endpoint of %s/%s:%u",
                   gw_ns, gw_name, to->namespace_, to->name, to_port);
        return;
    }
    char lb[300];
    lb_text(l7_destination_rule_for(x->l7, to->namespace_, to->name), NULL, to_port, lb, sizeof(lb));
    fprintf(o, "  load balancer: %s\n", lb);
    x->to[0].svc = to;
    x->to[0].port = to_port;
    x->n_to = 1;
    set_result(x, WHY_ALLOWED, "ALLOWED: %s %s through the waypoint %s/%s to %s/%s:%u (default route)",
               method, path, gw_ns, gw_name, to->namespace_, to->name, to_port);
}

/* The destination ztunnel's L4 check for the endpoints that may be chosen, seen with identity. A DENY of the
 * first eligible endpoint turns the result into DENIED. */
static void explain_l4(struct why_ctx *x, const struct service *svc, const struct workload *wl, uint16_t port,
                       const struct port_map *pm, const char *identity, const struct workload *src)
{
    FILE *o = x->o;
    if (!x->l4_header) fprintf(o, "\nL4 authorization at the destination\n");
    x->l4_header = true;
    const struct workload *dst = wl;
    uint16_t target = port;
    if (svc) {
        const struct workload *const *eps = NULL;
        size_t n = 0;
        unsigned rank = 0;
        struct lb_source ls = {.wl = src};
        if (lb_candidates(x->snap, svc, port, &ls, &eps, &n, &rank) < 0 || !n) {
            fprintf(o, "  no eligible endpoint\n");
            return;
        }
        dst = eps[0];
        if (pm && pm->target) target = pm->target;
        for (size_t k = 0; k < dst->n_services; k++) {
            const struct wl_service_ports *sp = &dst->services[k];
            char key[700];
            snprintf(key, sizeof(key), "%s/%s", svc->namespace_, svc->hostname);
            if (strcmp(sp->key, key)) continue;
            for (size_t j = 0; j < sp->n_ports; j++)
                if (sp->ports[j].port == port && sp->ports[j].target) target = sp->ports[j].target;
        }
    }
    if (dst->protocol != WL_PROTO_HBONE) {
        fprintf(o, "  %s/%s is not in the mesh: no ztunnel enforces policy there\n", dst->namespace_,
                dst->name);
        return;
    }
    struct ip_addr sip = {0};
    if (src && src->n_ips) sip = src->ips[0];
    const char *policy = NULL;
    if (!l4_verdict(o, x->snap, dst, target, identity, src ? &sip : NULL, &policy) && x->code == WHY_ALLOWED)
        set_result(x, WHY_DENIED, "DENIED: the ztunnel of %s/%s refuses the connection (%s)", dst->namespace_,
                   dst->name, *policy ? policy : "ALLOW policies apply, none matches");
}

static int explain(struct why_ctx *x, char *err, size_t errlen)
{
    FILE *o = x->o;
    const struct why_query *q = x->q;
    char sns[256], sname[256];
    if (split_name(q->source, x->ns, sns, sizeof(sns), sname, sizeof(sname)))
        return snprintf(err, errlen, "source \"%s\": expected <pod>, <pod>.<namespace> or <namespace>/<pod>",
                        q->source),
               -EINVAL;
    const struct k8s_pod *pod = find_pod(x->st, sns, sname);
    if (!pod) return snprintf(err, errlen, "no pod %s/%s", sns, sname), -ENOENT;
    const struct workload *src = snapshot_workload_by_name(x->snap, sns, sname);
    enum k8s_enrolment en = k8s_pod_enrolment(pod, find_ns(x->st, sns), K8S_DEFAULT_ROOT_NAMESPACE);
    bool captured = k8s_enrolment_ambient(en) && src && src->protocol == WL_PROTO_HBONE;
    struct dest d;
    int rc = resolve_dest(x->snap, q->dest, sns, x->domain, &d, err, errlen);
    if (rc < 0) return rc;
    /* The port. */
    uint16_t port = q->port;
    const struct port_map *pm = NULL;
    if (d.svc) {
        if (!port && d.svc->n_ports == 1) port = d.svc->ports[0].port;
        if (!port)
            return snprintf(err, errlen, "Service %s/%s has %zu ports: say which with --port",
                            d.svc->namespace_, d.svc->name, d.svc->n_ports),
                   -EINVAL;
        if (!(pm = service_port(d.svc, port)))
            return snprintf(err, errlen, "Service %s/%s has no port %u", d.svc->namespace_, d.svc->name,
                            port),
                   -ENOENT;
    } else if (!port) {
        return snprintf(err, errlen, "a pod destination needs --port"), -EINVAL;
    }
    /* Source. */
    char ipb[IP_STRLEN];
    fprintf(o, "Source\n  pod %s/%s %s on node %s\n", sns, sname, pod->ips.n ? pod->ips.v[0] : "(no IP yet)",
            *pod->node_name ? pod->node_name : "?");
    fprintf(o, "  %s: %s\n", captured ? "in the mesh" : "not in the mesh", enrolment_text(en));
    if (captured)
        fprintf(o, "  identity %s; node %s's ztunnel takes its outbound connections\n", src->spiffe_id,
                *src->node ? src->node : "?");
    /* Destination. */
    fprintf(o, "\nDestination\n");
    if (d.svc) {
        fprintf(o, "  Service %s/%s (%s", d.svc->namespace_, d.svc->name, d.svc->hostname);
        for (size_t i = 0; i < d.svc->n_vips; i++)
            fprintf(o, "%s%s", i ? ", " : ", VIP ", ip_format(&d.svc->vips[i].ip, ipb, sizeof(ipb)));
        fprintf(o, ") port %u", port);
        if (pm->target) fprintf(o, " -> targetPort %u", pm->target);
        fprintf(o, ", protocol %s\n", proto_name(pm->app_protocol));
    } else {
        fprintf(o, "  pod %s/%s%s\n", d.wl->namespace_, d.wl->name,
                d.wl->protocol == WL_PROTO_HBONE ? "" : " (not in the mesh)");
    }
    const struct gateway_addr *g = d.svc ? &d.svc->waypoint : &d.wl->waypoint;
    const char *kind = d.svc ? "Service" : "Pod";
    const char *ons = d.svc ? d.svc->namespace_ : d.wl->namespace_, *oname = d.svc ? d.svc->name : d.wl->name;
    const struct k8s_binding *bind = find_binding(x->wps, kind, ons, oname);
    const struct k8s_waypoint *kw = g->set ? find_waypoint(x->wps, g) : NULL;
    /* ztunnel's choice. */
    fprintf(o, "\nPath\n");
    if (!captured) {
        fprintf(o, "  the source is not captured: its connection leaves the pod as plain TCP%s\n",
                g->set ? ", and does not pass the waypoint (only captured traffic is sent to waypoints)"
                       : "");
        if (d.svc) fprintf(o, "  endpoints of %s/%s:%u:\n", ons, oname, port);
        if (d.svc && !list_endpoints(o, x->snap, d.svc, port, NULL, NULL, "    ")) {
            set_result(x, WHY_REFUSED, "REFUSED: no endpoint of %s/%s:%u", d.svc->namespace_, d.svc->name,
                       port);
        } else {
            set_result(x, WHY_ALLOWED, "ALLOWED: plain TCP from a pod outside the mesh to %s/%s:%u", ons,
                       oname, port);
            explain_l4(x, d.svc, d.wl, port, pm, NULL, src);
        }
        return 0;
    }
    if (bind && !g->set)
        fprintf(o, "  %s %s/%s asks for waypoint %s but is not bound: %s (%s)\n", kind, ons, oname,
                bind->waypoint, k8s_bind_reason_to_str(bind->reason), bind->message ? bind->message : "");
    bool via_wp = g->set;
    if (via_wp && kw) {
        char key[700];
        snprintf(key, sizeof(key), "%s/%s", g->ns, g->host);
        const struct service *wsvc = g->is_host ? snapshot_service_by_host(x->snap, key) : NULL;
        if (wsvc && source_is_waypoint(x->snap, wsvc, src)) {
            fprintf(o, "  the source is the waypoint %s/%s itself: straight to the destination (no loop)\n",
                    kw->gw->meta.namespace_, kw->gw->meta.name);
            via_wp = false;
        }
    }
    if (!via_wp) {
        if (!g->set)
            fprintf(o, "  no waypoint: node %s's ztunnel sends it over HBONE to the endpoint's ztunnel\n",
                    *src->node ? src->node : "?");
        if (d.svc) {
            fprintf(o, "  endpoints of %s/%s:%u (the ztunnel picks by capacity, at random):\n", ons, oname,
                    port);
            if (!list_endpoints(o, x->snap, d.svc, port, src, NULL, "    ")) {
                set_result(x, WHY_REFUSED, "REFUSED: no healthy endpoint of %s/%s:%u", ons, oname, port);
                return 0;
            }
        }
        set_result(x, WHY_ALLOWED, "ALLOWED: over HBONE from %s/%s to %s/%s:%u", sns, sname, ons, oname,
                   port);
        explain_l4(x, d.svc, d.wl, port, pm, src->spiffe_id, src);
        return 0;
    }
    char why[600] = "";
    const struct k8s_meta *om = bind ? bind->meta : NULL;
    if (om) binding_source(x->st, om, why, sizeof(why));
    fprintf(o, "  %s %s/%s uses waypoint %s/%s (%s)\n", kind, ons, oname,
            kw ? kw->gw->meta.namespace_ : g->ns,
            kw           ? kw->gw->meta.name
            : g->is_host ? g->host
                         : "?",
            *why ? why : "bound by zmeshd");
    if (!kw) {
        set_result(x, WHY_REFUSED, "REFUSED: the waypoint of %s %s/%s is not a known Gateway", kind, ons,
                   oname);
        return 0;
    }
    /* Is there a ready waypoint pod? (ztunnel refuses rather than go around it.) */
    char key[700];
    snprintf(key, sizeof(key), "%s/%s", g->ns, g->host);
    const struct service *wsvc = g->is_host ? snapshot_service_by_host(x->snap, key) : NULL;
    const struct workload *const *weps = NULL;
    size_t nw = 0;
    unsigned rank = 0;
    struct lb_source ls = {.wl = src};
    if (!wsvc || lb_candidates(x->snap, wsvc, g->hbone_port, &ls, &weps, &nw, &rank) < 0 || !nw) {
        fprintf(o, "  the waypoint has no ready pod%s%s\n", kw->reason && *kw->reason ? ": " : "",
                kw->reason ? kw->reason : "");
        set_result(x, WHY_REFUSED,
                   "REFUSED: waypoint %s/%s has no ready pod; ztunnel refuses the connection "
                   "rather than send it around the waypoint",
                   kw->gw->meta.namespace_, kw->gw->meta.name);
        return 0;
    }
    const char *wp_id = weps[0]->spiffe_id;
    fprintf(o, "  node %s's ztunnel -> waypoint pod %s/%s (node %s) over HBONE, :authority %s:%u\n",
            *src->node ? src->node : "?", weps[0]->namespace_, weps[0]->name,
            *weps[0]->node ? weps[0]->node : "?",
            d.svc && d.svc->n_vips ? ip_format(&d.svc->vips[0].ip, ipb, sizeof(ipb))
            : d.has_ip             ? ip_format(&d.ip, ipb, sizeof(ipb))
                                   : "?",
            port);
    fprintf(o,
            "  identities: the source presents %s, ztunnel expects %s; the waypoint presents %s to the "
            "destination\n",
            src->spiffe_id, wp_id, wp_id);
    explain_waypoint(x, kw, weps[0], src, &d, port, pm);
    if (x->code != WHY_ALLOWED) return 0;
    if (!d.svc) {
        explain_l4(x, NULL, d.wl, port, pm, wp_id, weps[0]);
        return 0;
    }
    if (pm && (pm->app_protocol == PORT_PROTO_TCP || pm->app_protocol == PORT_PROTO_TLS)) {
        explain_l4(x, d.svc, NULL, port, pm, wp_id, weps[0]);
        return 0;
    }
    for (size_t i = 0; i < x->n_to; i++)
        explain_l4(x, x->to[i].svc, NULL, x->to[i].port, service_port(x->to[i].svc, x->to[i].port), wp_id,
                   weps[0]);
    return 0;
}

int why_explain(const struct manifest_store *st, const struct why_query *q, FILE *out, char *err,
                size_t errlen)
{
    struct why_ctx x = {.st = st, .q = q, .domain = K8S_DEFAULT_DOMAIN_SUFFIX, .code = WHY_ALLOWED};
    snprintf(x.ns, sizeof(x.ns), "%s", q->ns && *q->ns ? q->ns : "default");
    struct why_findings findings = {0};
    char *body = NULL;
    size_t body_len = 0;
    struct k8s_options opts = {0};
    int rc = k8s_build_snapshot(st, &opts, &x.snap, count_finding, &findings);
    if (!rc) rc = k8s_waypoints_compute(st, &opts, &x.wps, count_finding, &findings);
    if (!rc) rc = build_l7(&x, &findings);
    if (!rc && !(x.o = open_memstream(&body, &body_len))) rc = -ENOMEM;
    if (!rc) rc = explain(&x, err, errlen);
    if (x.o) fclose(x.o);
    if (!rc) {
        fprintf(out, "RESULT: %s\n\n%s", x.result, body ? body : "");
        if (findings.n) fprintf(out, "\nFindings while reading the objects (zmeshd reports them too)\n");
        for (size_t i = 0; i < findings.n && i < WHY_MAX_FINDINGS; i++)
            fprintf(out, "  %s\n", findings.msg[i]);
        if (findings.n > WHY_MAX_FINDINGS)
            fprintf(out, "  ... and %zu more\n", findings.n - WHY_MAX_FINDINGS);
    } else if (rc == -ENOMEM) {
        snprintf(err, errlen, "out of memory");
    }
    free(body);
    l7_config_unref(x.l7);
    if (x.wps) k8s_waypoints_free(x.wps);
    if (x.snap) snapshot_unref(x.snap);
    return rc < 0 ? rc : (int)x.code;
}

static const char why_usage[] =
    "Explain one request or connection end to end: which ztunnel takes it, the identities, whether a "
    "waypoint is\n"
    "in the path and why, the route and backends it picks, the endpoints the load balancer chooses among, "
    "and\n"
    "the L4 and L7 policies with their verdict. Computed from the cluster's objects with the mesh's own "
    "code;\n"
    "nothing is sent.\n"
    "\n"
    "Usage:\n"
    "  zmesh why <source-pod> <destination> [flags]\n"
    "\n"
    "  <source-pod>   <pod>, <pod>.<namespace> or <namespace>/<pod>\n"
    "  <destination>  a Service (<svc>, <svc>.<ns>, <svc>.<ns>.svc.cluster.local), an IP, or "
    "pod/<name>[.<ns>]\n"
    "\n"
    "Flags:\n"
    "  -p, --port int          the destination port (default: the Service's only port)\n"
    "      --path string       the request path (default \"/\")\n"
    "  -X, --method string     the request method (default GET)\n"
    "  -H, --header k=v        a request header (repeatable; host=... sets the authority)\n"
    "  -n, --namespace string  the namespace of names without one (default \"default\")\n"
    "      --state-dir string  the local cluster's state directory (default $ZMESH_STATE_DIR, else "
    "/run/zmesh)\n"
    "      --manifests string  read the objects from this directory instead of a running cluster\n"
    "  -h, --help              help for why\n"
    "\n"
    "Exit status: 0 allowed, 1 denied by a policy, 3 no route, 4 refused (no healthy upstream or waypoint),\n"
    "2 usage error, 5 a name that does not exist.\n";

static int usage_error(const char *fmt, const char *arg)
{
    fputs("Error: ", stderr);
    fprintf(stderr, fmt, arg);
    fputs("\n\n", stderr);
    fputs(why_usage, stderr);
    return WHY_EXIT_USAGE;
}

int cmd_why(int argc, char **argv)
{
    static const struct option opts[] = {{"port", required_argument, NULL, 'p'},
                                         {"path", required_argument, NULL, 'P'},
                                         {"method", required_argument, NULL, 'X'},
                                         {"header", required_argument, NULL, 'H'},
                                         {"namespace", required_argument, NULL, 'n'},
                                         {"state-dir", required_argument, NULL, 's'},
                                         {"manifests", required_argument, NULL, 'm'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    struct why_header hs[WHY_MAX_HEADERS];
    char hbuf[WHY_MAX_HEADERS][512];
    struct why_query q = {.headers = hs};
    const char *state = NULL, *manifests = NULL;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":hp:X:H:n:", opts, NULL)) != -1) {
        switch (c) {
        case 'h':
            fputs(why_usage, stdout);
            return 0;
        case 'p': {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*end || v < 1 || v > 65535) return usage_error("--port \"%s\": not a port (1-65535)", optarg);
            q.port = (uint16_t)v;
            break;
        }
        case 'P':
            if (optarg[0] != '/') return usage_error("--path \"%s\": must start with /", optarg);
            q.path = optarg;
            break;
        case 'X':
            q.method = optarg;
            break;
        case 'H': {
            const char *eq = strchr(optarg, '=');
            if (!eq || eq == optarg || (size_t)(eq - optarg) >= sizeof(hbuf[0]))
                return usage_error("--header \"%s\": expected name=value", optarg);
            if (q.n_headers == WHY_MAX_HEADERS)
                return usage_error("--header \"%s\": too many headers", optarg);
            size_t k = q.n_headers;
            size_t nl = (size_t)(eq - optarg);
            for (size_t i = 0; i < nl; i++)
                hbuf[k][i] = (char)(optarg[i] >= 'A' && optarg[i] <= 'Z' ? optarg[i] + 32 : optarg[i]);
            hbuf[k][nl] = 0;
            hs[k] = (struct why_header){hbuf[k], eq + 1};
            q.n_headers++;
            break;
        }
        case 'n':
            q.ns = optarg;
            break;
        case 's':
            state = optarg;
            break;
        case 'm':
            manifests = optarg;
            break;
        case ':':
            return usage_error("flag needs an argument: %s", argv[optind - 1]);
        default:
            return usage_error("unknown flag: %s", argv[optind - 1]);
        }
    }
    if (argc - optind != 2) return usage_error("%s", "expected <source-pod> <destination>");
    if (state && manifests) return usage_error("%s", "--state-dir and --manifests exclude each other");
    q.source = argv[optind];
    q.dest = argv[optind + 1];
    char dir[4096];
    if (manifests) {
        snprintf(dir, sizeof(dir), "%s", manifests);
    } else {
        char abs[4000];
        if (!state) state = getenv("ZMESH_STATE_DIR");
        if (!state || !*state) state = CLUSTER_DEFAULT_STATE;
        if (up_state_abs(state, abs, sizeof(abs)) < 0) {
            fprintf(stderr, "Error: bad state directory \"%s\"\n", state);
            return WHY_EXIT_USAGE;
        }
        snprintf(dir, sizeof(dir), "%s/api", abs);
    }
    struct manifest_store *st = NULL;
    struct why_findings findings = {0};
    if (manifest_store_new(&st) < 0) {
        fprintf(stderr, "Error: out of memory\n");
        return 1;
    }
    int rc = manifest_load_dir(st, dir, count_finding, &findings);
    for (size_t i = 0; i < findings.n && i < WHY_MAX_FINDINGS; i++)
        fprintf(stderr, "warning: %s\n", findings.msg[i]);
    if (findings.n > WHY_MAX_FINDINGS)
        fprintf(stderr, "warning: ... and %zu more findings in %s\n", findings.n - WHY_MAX_FINDINGS, dir);
    if (rc < 0) {
        fprintf(stderr, "Error: cannot read %s: %s%s\n", dir, strerror(-rc),
                manifests ? "" : " (is the cluster up? zmesh up, or --manifests DIR)");
        manifest_store_free(st);
        return WHY_EXIT_LOOKUP;
    }
    char err[1024] = "";
    rc = why_explain(st, &q, stdout, err, sizeof(err));
    manifest_store_free(st);
    if (rc == -ENOENT || rc == -EINVAL) {
        fprintf(stderr, "Error: %s\n", err);
        return rc == -EINVAL ? WHY_EXIT_USAGE : WHY_EXIT_LOOKUP;
    }
    if (rc < 0) {
        fprintf(stderr, "Error: %s\n", err);
        return 1;
    }
    return fflush(stdout) ? 1 : rc;
}
