/* Waypoint binding (waypoint.h): Gateways to waypoints, use-waypoint labels to bindings, as istiod's
 * waypoints.go does, with zmesh's stricter rule for waypoints that are not ready. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/net.h"
#include "mesh/snapshot_impl.h"
#include "zmeshd/waypoint.h"

/* Longest message or name built here; longer ones are cut (they only describe). */
#define WP_MSG_MAX 512

struct k8s_waypoints {
    struct arena a;
    struct k8s_options o;
    manifest_report_fn report;
    void *ud;
    const struct manifest_store *st;
    struct k8s_waypoint *wps;
    size_t n_wps;
    struct k8s_binding *binds;
    size_t n_binds;
    const struct gateway_addr **svc_wp, **pod_wp; /* per store index */
    const struct k8s_binding **svc_bind;          /* per store index, NULL: asks for no waypoint */
    const struct k8s_namespace **ns_sorted;       /* by name, for the namespace lookups */
    size_t n_ns;
};

const char *k8s_waypoint_for_to_str(enum k8s_waypoint_for f)
{
    static const char *const names[] = {"service", "workload", "all", "none"};
    return (unsigned)f < sizeof(names) / sizeof(names[0]) ? names[f] : "?";
}

const char *k8s_bind_reason_to_str(enum k8s_bind_reason r)
{
    static const char *const names[] = {"Bound", "WaypointIsNotReady", "AttachmentDenied",
                                        "UnsupportedTrafficType"};
    return (unsigned)r < sizeof(names) / sizeof(names[0]) ? names[r] : "?";
}

static void wreport(struct k8s_waypoints *w, enum manifest_level lvl, const struct manifest_src *src,
                    const char *field, const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static void wreport(struct k8s_waypoints *w, enum manifest_level lvl, const struct manifest_src *src,
                    const char *field, const char *fmt, ...)
{
    char msg[WP_MSG_MAX + 256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    struct manifest_finding f = {.level = lvl, .src = *src, .field = field ? field : "", .message = msg};
    manifest_finding_emit(w->report, w->ud, &f);
}

static const char *wfmt(struct k8s_waypoints *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static const char *wfmt(struct k8s_waypoints *w, const char *fmt, ...)
{
    char buf[WP_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (n < 0) return NULL;
    return arena_strndup(&w->a, buf, strlen(buf));
}

static int ns_cmp(const void *a, const void *b)
{
    const struct k8s_namespace *x = *(const struct k8s_namespace *const *)a,
                               *y = *(const struct k8s_namespace *const *)b;
    int r = strcmp(x->meta.name, y->meta.name);
    return r ? r : (x->meta.order > y->meta.order) - (x->meta.order < y->meta.order);
}

/* The first Namespace object of that name, or NULL (a namespace without a manifest has no labels). */
static const struct k8s_namespace *find_ns(const struct k8s_waypoints *w, const char *name)
{
    size_t l = 0, h = w->n_ns;
    while (l < h) {
        size_t m = l + (h - l) / 2;
        if (strcmp(w->ns_sorted[m]->meta.name, name) < 0)
            l = m + 1;
        else
            h = m;
    }
    return l < w->n_ns && !strcmp(w->ns_sorted[l]->meta.name, name) ? w->ns_sorted[l] : NULL;
}

static const char *label(const struct k8s_meta *m, const char *key)
{
    return k8s_kv_get(m->labels, m->n_labels, key);
}

/* A pod that becomes a workload (k8s.c convert_pod's rule): running or pending, with an address. */
static bool pod_has_workload(const struct k8s_pod *p)
{
    return strcmp(p->phase, "Succeeded") && strcmp(p->phase, "Failed") && p->ips.n > 0;
}

static int meta_key_cmp(const void *a, const void *b)
{
    const struct k8s_meta *x = *(const struct k8s_meta *const *)a, *y = *(const struct k8s_meta *const *)b;
    int r = strcmp(x->namespace_, y->namespace_);
    if (!r) r = strcmp(x->name, y->name);
    return r ? r : (x->order > y->order) - (x->order < y->order);
}

/* Flags (n, in w's arena) for the objects that repeat an earlier one's namespace and name: k8s.c leaves those
 * out (and reports them), so they get no binding here either. NULL on ENOMEM. */
static bool *mark_dups(struct k8s_waypoints *w, const void *objs, size_t n, size_t stride)
{
    bool *dup = arena_alloc(&w->a, n + 1);
    const struct k8s_meta **v = n ? malloc(n * sizeof(*v)) : NULL;
    if (!dup || (n && !v)) {
        free(v);
        return NULL;
    }
    memset(dup, 0, n + 1);
    for (size_t i = 0; i < n; i++)
        v[i] = (const struct k8s_meta *)((const char *)objs +
                                         i * stride); /* every object starts with its meta */
    if (n > 1) qsort(v, n, sizeof(*v), meta_key_cmp);
    for (size_t i = 1; i < n; i++)
        if (!strcmp(v[i]->namespace_, v[i - 1]->namespace_) && !strcmp(v[i]->name, v[i - 1]->name))
            dup[((const char *)v[i] - (const char *)objs) / stride] = true;
    free(v);
    return dup;
}

/* ---- waypoints (WaypointsCollection, makeWaypoint, getGatewayAddress) ---- */

static const struct k8s_service *find_service(const struct k8s_waypoints *w, const char *ns, const char *name)
{
    size_t n;
    const struct k8s_service *s = manifest_services(w->st, &n);
    for (size_t i = 0; i < n; i++)
        if (!strcmp(s[i].meta.namespace_, ns) && !strcmp(s[i].meta.name, name)) return &s[i];
    return NULL;
}

/* Readiness: istiod waits for status.addresses, which the deployment controller sets once the waypoint's
 * Deployment has a ready pod; zmeshd has no controller, so it also checks that the Service exists and selects
 * a Ready pod, which is what ztunnel will need to reach it. */
static int waypoint_readiness(struct k8s_waypoints *w, struct k8s_waypoint *wp)
{
    const struct k8s_gateway *g = wp->gw;
    const char *ns = g->meta.namespace_;
    wp->reason = wp->message = "";
    const struct k8s_service *svc = wp->svc = find_service(w, ns, wp->service_name);
    if (!g->n_addresses) {
        wp->reason = "NoAddress";
        wp->message = wfmt(w, "status.addresses is not set: the waypoint has no ready pod yet");
    } else if (!svc) {
        wp->reason = "ServiceNotFound";
        wp->message = wfmt(w, "Service %s/%s does not exist", ns, wp->service_name);
    } else {
        size_t n;
        const struct k8s_pod *p = manifest_pods(w->st, &n);
        bool any = false;
        for (size_t i = 0; i < n && !any; i++)
            any =
                !strcmp(p[i].meta.namespace_, ns) && svc->has_selector &&
                k8s_selector_matches(svc->selector, svc->n_selector, p[i].meta.labels, p[i].meta.n_labels) &&
                p[i].ready && !p[i].meta.deleting && pod_has_workload(&p[i]);
        if (!any) {
            wp->reason = "NoReadyPod";
            wp->message = wfmt(w, "no Ready pod behind Service %s/%s", ns, wp->service_name);
        }
    }
    if (!wp->reason || !wp->message) return -ENOMEM;
    wp->ready = !*wp->reason;
    return 0;
}

static int waypoint_address(struct k8s_waypoints *w, struct k8s_waypoint *wp)
{
    const struct k8s_gateway *g = wp->gw;
    struct gateway_addr *a = &wp->addr;
    *a = (struct gateway_addr){
        .set = true, .network = "", .ns = "", .host = "", .hbone_port = K8S_WAYPOINT_PORT};
    /* getGatewayAddress: the Hostname address first (a stable key, and family-neutral), then an IPAddress. */
    for (size_t i = 0; i < g->n_addresses; i++)
        if (!strcmp(g->addresses[i].type, "Hostname")) {
            a->is_host = true;
            a->ns = g->meta.namespace_;
            a->host = g->addresses[i].value;
            return 0;
        }
    for (size_t i = 0; i < g->n_addresses; i++) {
        const char *t = g->addresses[i].type;
        if ((!*t || !strcmp(t, "IPAddress")) && !ip_parse(g->addresses[i].value, &a->ip)) return 0;
        if (!*t || !strcmp(t, "IPAddress"))
            wreport(w, MANIFEST_WARN, &g->meta.src, "status.addresses",
                    "\"%s\" is not an IP address: skipped, as istiod skips it", g->addresses[i].value);
    }
    /* Not ready yet (or only unusable addresses): the hostname istiod will write once it is, so the bound
     * resources already name it and ztunnel refuses rather than goes around it. */
    a->is_host = true;
    a->ns = g->meta.namespace_;
    a->host = wfmt(w, "%s.%s.svc.%s", wp->service_name, g->meta.namespace_, w->o.domain_suffix);
    return a->host ? 0 : -ENOMEM;
}

/* Fills *wp from g when g is a waypoint. Returns 1 (a waypoint), 0 (not one: another class, or invalid, which
 * is reported), or -ENOMEM. */
static int make_waypoint(struct k8s_waypoints *w, const struct k8s_gateway *g, struct k8s_waypoint *wp)
{
    if (strcmp(g->class_name, K8S_WAYPOINT_CLASS)) return 0;
    memset(wp, 0, sizeof(*wp));
    wp->gw = g;
    for (size_t i = 0; i < g->n_listeners && !wp->listener; i++)
        if (g->listeners[i].port == K8S_WAYPOINT_PORT &&
            !strcmp(g->listeners[i].protocol, K8S_WAYPOINT_PROTOCOL))
            wp->listener = &g->listeners[i];
    if (!wp->listener) {
        wreport(
            w, MANIFEST_ERROR, &g->meta.src, "spec.listeners",
            "a Gateway of class %s needs a listener {port: %d, protocol: %s}: not a waypoint, nothing binds "
            "to it",
            K8S_WAYPOINT_CLASS, K8S_WAYPOINT_PORT, K8S_WAYPOINT_PROTOCOL);
        return 0;
    }
    /* The Gateway's label wins; GatewayClass objects are not read (their label would come next). */
    const char *tt = label(&g->meta, K8S_LABEL_WAYPOINT_FOR);
    if (!tt || !strcmp(tt, "service"))
        wp->traffic = K8S_WP_FOR_SERVICE;
    else if (!strcmp(tt, "workload"))
        wp->traffic = K8S_WP_FOR_WORKLOAD;
    else if (!strcmp(tt, "all"))
        wp->traffic = K8S_WP_FOR_ALL;
    else if (!strcmp(tt, "none"))
        wp->traffic = K8S_WP_FOR_NONE;
    else {
        wreport(
            w, MANIFEST_ERROR, &g->meta.src, "metadata.labels",
            "%s: expected service, workload, all or none, got \"%s\": not a waypoint, nothing binds to it",
            K8S_LABEL_WAYPOINT_FOR, tt);
        return 0;
    }
    const char *from = wp->listener->from;
    wp->from = *from ? from : "Same";
    const char *ovr = k8s_kv_get(g->meta.annotations, g->meta.n_annotations, K8S_ANNOTATION_NAME_OVERRIDE);
    wp->service_name = ovr && *ovr ? ovr : g->meta.name;
    int rc = waypoint_address(w, wp);
    if (!rc) rc = waypoint_readiness(w, wp);
    return rc ? rc : 1;
}

/* ---- bindings (fetchWaypointForTarget, getUseWaypoint, AllowsAttachmentFromNamespace) ---- */

static const struct k8s_waypoint *find_waypoint(const struct k8s_waypoints *w, const char *ns,
                                                const char *name)
{
    for (size_t i = 0; i < w->n_wps; i++)
        if (!strcmp(w->wps[i].gw->meta.namespace_, ns) && !strcmp(w->wps[i].gw->meta.name, name))
            return &w->wps[i];
    return NULL;
}

static const struct k8s_gateway *find_gateway(const struct k8s_waypoints *w, const char *ns, const char *name)
{
    size_t n;
    const struct k8s_gateway *g = manifest_gateways(w->st, &n);
    for (size_t i = 0; i < n; i++)
        if (!strcmp(g[i].meta.namespace_, ns) && !strcmp(g[i].meta.name, name)) return &g[i];
    return NULL;
}

/* Selector: the listener's matchLabels against the namespace's labels; no selector matches nothing, as
 * LabelSelectorAsSelector(nil) is labels.Nothing(). */
static bool allows_namespace(const struct k8s_waypoints *w, const struct k8s_waypoint *wp, const char *ns)
{
    if (!strcmp(wp->from, "All")) return true;
    if (!strcmp(wp->from, "Selector")) {
        if (!wp->listener->has_ns_selector) return false;
        const struct k8s_namespace *n = find_ns(w, ns);
        return k8s_selector_matches(wp->listener->ns_selector, wp->listener->n_ns_selector,
                                    n ? n->meta.labels : NULL, n ? n->meta.n_labels : 0);
    }
    return !strcmp(wp->gw->meta.namespace_, ns);
}

/* Whether the object is part of a waypoint (its Service or one of its pods): those never get a waypoint. */
static bool is_waypoint_service(const struct k8s_waypoints *w, const struct k8s_service *s)
{
    const char *m = label(&s->meta, K8S_LABEL_GATEWAY_MANAGED);
    if (m && !strcmp(m, K8S_GATEWAY_MANAGED_MESH)) return true;
    for (size_t i = 0; i < w->n_wps; i++)
        if (!strcmp(w->wps[i].gw->meta.namespace_, s->meta.namespace_) &&
            !strcmp(w->wps[i].service_name, s->meta.name))
            return true;
    return false;
}

static bool is_waypoint_pod(const struct k8s_waypoints *w, const struct k8s_pod *p)
{
    const char *m = label(&p->meta, K8S_LABEL_GATEWAY_MANAGED), *gn = label(&p->meta, K8S_LABEL_GATEWAY_NAME);
    if (m && !strcmp(m, K8S_GATEWAY_MANAGED_MESH)) return true;
    for (size_t i = 0; i < w->n_wps; i++) {
        const struct k8s_waypoint *wp = &w->wps[i];
        if (strcmp(wp->gw->meta.namespace_, p->meta.namespace_)) continue;
        if (gn && !strcmp(gn, wp->gw->meta.name)) return true;
        const struct k8s_service *s = wp->svc;
        if (s && s->has_selector &&
            k8s_selector_matches(s->selector, s->n_selector, p->meta.labels, p->meta.n_labels))
            return true;
    }
    return false;
}

/* Go's strconv.ParseBool, which istiod reads istio.io/ingress-use-waypoint with: 1 for true, 0 for false, -1
 * for anything else (istiod: false, with a warning in its log). */
static int parse_bool(const char *v)
{
    static const char *const t[] = {"1", "t", "T", "TRUE", "true", "True"}, *const f[] = {"0",     "f",
                                                                                          "F",     "FALSE",
                                                                                          "false", "False"};
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        if (!strcmp(v, t[i])) return 1;
        if (!strcmp(v, f[i])) return 0;
    }
    return -1;
}

/* The istio.io/WaypointBound condition of b (ServiceInfo.GetConditions / WorkloadInfo.GetConditions, with
 * status.go's messages). Returns 0 or -ENOMEM. */
static int bind_condition(struct k8s_waypoints *w, struct k8s_binding *b, bool is_service, bool from_ns)
{
    struct k8s_status_condition *c = &b->cond;
    *c = (struct k8s_status_condition){.type = K8S_COND_WAYPOINT_BOUND};
    switch (b->reason) {
    case K8S_BIND_BOUND: {
        /* The ingress sentence is part of istiod's message for Services (the label on the Service, else on
         * its namespace); zmesh has no ingress gateway, so it only describes. */
        const char *ing = NULL;
        if (is_service) {
            ing = label(b->meta, K8S_LABEL_INGRESS_USE_WAYPOINT);
            const struct k8s_namespace *ns = ing ? NULL : find_ns(w, b->meta->namespace_);
            if (ns) ing = label(&ns->meta, K8S_LABEL_INGRESS_USE_WAYPOINT);
            if (ing && parse_bool(ing) < 0)
                wreport(w, MANIFEST_WARN, &b->meta->src, "metadata.labels",
                        "%s: expected true or false, got \"%s\": taken as false, as istiod does",
                        K8S_LABEL_INGRESS_USE_WAYPOINT, ing);
        }
        c->status = true;
        c->reason = K8S_REASON_WAYPOINT_ACCEPTED;
        c->message = wfmt(w, "Successfully attached to waypoint %s%s", b->waypoint,
                          !ing                   ? ""
                          : parse_bool(ing) == 1 ? ". Ingress traffic will traverse the waypoint"
                                                 : ". Ingress traffic is not using the waypoint, set the "
                                                   "istio.io/ingress-use-waypoint label to true if desired.");
        break;
    }
    case K8S_BIND_NOT_READY:
        c->reason = k8s_bind_reason_to_str(b->reason);
        c->message = wfmt(w, "waypoint \"%s\" is not ready", b->waypoint);
        break;
    case K8S_BIND_ATTACHMENT_DENIED:
        c->reason = k8s_bind_reason_to_str(b->reason);
        c->message = wfmt(w, "we are not permitted to attach to waypoint \"%s\" (missing allowedRoutes?)",
                          b->waypoint);
        break;
    case K8S_BIND_UNSUPPORTED_TRAFFIC:
        /* fetchWaypointForWorkload: a workload that inherits a service waypoint from its namespace is not an
         * error. */
        if (!is_service && from_ns) {
            c->type = NULL;
            return 0;
        }
        c->reason = k8s_bind_reason_to_str(b->reason);
        c->message =
            wfmt(w, "attempting to bind to traffic type \"%s\" which the waypoint \"%s\" does not support",
                 is_service ? "service" : "workload", b->waypoint);
        break;
    }
    return c->message ? 0 : -ENOMEM;
}

/* Binds one object (kind "Service" or "Pod"). Appends a binding when it asks for a waypoint (*bout: it, else
 * NULL); *out gets the address to set or NULL. Returns 0 or -ENOMEM. */
static int bind_object(struct k8s_waypoints *w, const char *kind, const struct k8s_meta *m, const char *uid,
                       bool is_service, const struct gateway_addr **out, const struct k8s_binding **bout)
{
    *out = NULL;
    *bout = NULL;
    /* getUseWaypoint: the object's own label wins (also when it names a waypoint that does not exist, which
     * does not fall back to the namespace's); "none" opts out; use-waypoint-namespace from the same object.
     */
    const char *name = label(m, K8S_LABEL_USE_WAYPOINT), *wns = NULL, *via = "";
    if (name) {
        if (!strcmp(name, K8S_USE_WAYPOINT_NONE)) return 0;
        wns = label(m, K8S_LABEL_USE_WAYPOINT_NAMESPACE);
    } else {
        const struct k8s_namespace *ns = find_ns(w, m->namespace_);
        if (!ns || !(name = label(&ns->meta, K8S_LABEL_USE_WAYPOINT)) || !strcmp(name, K8S_USE_WAYPOINT_NONE))
            return 0;
        wns = label(&ns->meta, K8S_LABEL_USE_WAYPOINT_NAMESPACE);
        via = " (its namespace's label)";
    }
    if (!wns || !*wns) wns = m->namespace_;
    struct k8s_binding *b = &w->binds[w->n_binds];
    *b = (struct k8s_binding){.kind = kind, .meta = m, .uid = uid};
    if (!(b->waypoint = wfmt(w, "%s/%s", wns, name))) return -ENOMEM;
    const struct k8s_waypoint *wp = find_waypoint(w, wns, name);
    const char *field = "metadata.labels";
    enum manifest_level lvl = MANIFEST_WARN;
    if (!wp) {
        const struct k8s_gateway *g = find_gateway(w, wns, name);
        b->reason = K8S_BIND_NOT_READY;
        b->message = wfmt(
            w, "waypoint \"%s\" is not ready: %s; no waypoint is set, so traffic goes directly", b->waypoint,
            !g                                          ? "no such Gateway"
            : strcmp(g->class_name, K8S_WAYPOINT_CLASS) ? "the Gateway is not of class istio-waypoint"
                                                        : "the Gateway is not a valid waypoint");
    } else if (!allows_namespace(w, wp, m->namespace_)) {
        b->reason = K8S_BIND_ATTACHMENT_DENIED;
        b->message = wfmt(w,
                          "we are not permitted to attach to waypoint \"%s\" (missing allowedRoutes?): its "
                          "listener allows namespaces from %s",
                          b->waypoint, wp->from);
    } else if (is_service ? !(wp->traffic == K8S_WP_FOR_SERVICE || wp->traffic == K8S_WP_FOR_ALL)
                          : !(wp->traffic == K8S_WP_FOR_WORKLOAD || wp->traffic == K8S_WP_FOR_ALL)) {
        b->reason = K8S_BIND_UNSUPPORTED_TRAFFIC;
        b->message =
            wfmt(w,
                 "attempting to bind to traffic type \"%s\" which the waypoint \"%s\" does not support "
                 "(it is for %s)",
                 is_service ? "service" : "workload", b->waypoint, k8s_waypoint_for_to_str(wp->traffic));
    } else {
        b->wp = wp;
        *out = &wp->addr;
        if (wp->ready) {
            b->reason = K8S_BIND_BOUND;
            b->message = wfmt(w, "bound to waypoint %s", b->waypoint);
        } else {
            b->reason = K8S_BIND_NOT_READY;
            b->message =
                wfmt(w,
                     "waypoint \"%s\" is not ready (%s): the waypoint is set anyway, so connections are "
                     "refused until it is, rather than sent around it",
                     b->waypoint, wp->message);
        }
    }
    if (!b->message || bind_condition(w, b, is_service, *via)) return -ENOMEM;
    w->n_binds++;
    *bout = b;
    /* A namespace's service waypoint does not serve its pods, nor a workload waypoint its Services: the usual
     * case of a labelled namespace, said at INFO rather than warned once per object. */
    if (b->reason == K8S_BIND_UNSUPPORTED_TRAFFIC && *via) lvl = MANIFEST_INFO;
    /* Bound and ready is not worth a line per object; everything else is. */
    if (b->reason != K8S_BIND_BOUND)
        wreport(w, lvl, &m->src, field, "%s %s/%s%s: %s: %s", kind, m->namespace_, m->name, via,
                k8s_bind_reason_to_str(b->reason), b->message);
    return 0;
}

int k8s_waypoints_compute(const struct manifest_store *st, const struct k8s_options *opts,
                          struct k8s_waypoints **out, manifest_report_fn report, void *ud)
{
    int rc = -ENOMEM;
    struct k8s_waypoints *w = calloc(1, sizeof(*w));
    *out = NULL;
    if (!w) return -ENOMEM;
    w->st = st;
    w->report = report;
    w->ud = ud;
    if (opts) w->o = *opts;
    if (!w->o.domain_suffix || !*w->o.domain_suffix) w->o.domain_suffix = K8S_DEFAULT_DOMAIN_SUFFIX;
    if (!w->o.cluster_id || !*w->o.cluster_id) w->o.cluster_id = K8S_DEFAULT_CLUSTER_ID;
    size_t n_ns, n_gw, n_svc, n_pod;
    const struct k8s_namespace *nss = manifest_namespaces(st, &n_ns);
    const struct k8s_gateway *gws = manifest_gateways(st, &n_gw);
    const struct k8s_service *svcs = manifest_services(st, &n_svc);
    const struct k8s_pod *pods = manifest_pods(st, &n_pod);
    w->ns_sorted = n_ns ? arena_alloc(&w->a, n_ns * sizeof(*w->ns_sorted)) : NULL;
    w->wps = n_gw ? arena_alloc(&w->a, n_gw * sizeof(*w->wps)) : NULL;
    w->binds = n_svc + n_pod ? arena_alloc(&w->a, (n_svc + n_pod) * sizeof(*w->binds)) : NULL;
    w->svc_wp = arena_alloc(&w->a, (n_svc + 1) * sizeof(*w->svc_wp));
    w->pod_wp = arena_alloc(&w->a, (n_pod + 1) * sizeof(*w->pod_wp));
    w->svc_bind = arena_alloc(&w->a, (n_svc + 1) * sizeof(*w->svc_bind));
    if ((n_ns && !w->ns_sorted) || (n_gw && !w->wps) || (n_svc + n_pod && !w->binds) || !w->svc_wp ||
        !w->pod_wp || !w->svc_bind)
        goto fail;
    for (size_t i = 0; i < n_ns; i++)
        w->ns_sorted[i] = &nss[i];
    w->n_ns = n_ns;
    if (n_ns > 1) qsort(w->ns_sorted, n_ns, sizeof(*w->ns_sorted), ns_cmp);
    for (size_t i = 0; i < n_gw; i++) {
        /* A duplicate (k8s.c reports it): the first in load order is the Gateway, valid or not. */
        bool dup = false;
        for (size_t j = 0; j < i && !dup; j++)
            dup = !strcmp(gws[j].meta.namespace_, gws[i].meta.namespace_) &&
                  !strcmp(gws[j].meta.name, gws[i].meta.name);
        if (dup) continue;
        int r = make_waypoint(w, &gws[i], &w->wps[w->n_wps]);
        if (r < 0) goto fail;
        w->n_wps += (size_t)r;
    }
    bool *dup_svc = mark_dups(w, svcs, n_svc, sizeof(*svcs)),
         *dup_pod = mark_dups(w, pods, n_pod, sizeof(*pods));
    if (!dup_svc || !dup_pod) goto fail;
    for (size_t i = 0; i < n_svc; i++) {
        w->svc_wp[i] = NULL;
        w->svc_bind[i] = NULL;
        if (dup_svc[i] || is_waypoint_service(w, &svcs[i])) continue;
        const char *uid = wfmt(w, "%s/%s.%s.svc.%s", svcs[i].meta.namespace_, svcs[i].meta.name,
                               svcs[i].meta.namespace_, w->o.domain_suffix);
        if (!uid || bind_object(w, "Service", &svcs[i].meta, uid, true, &w->svc_wp[i], &w->svc_bind[i]))
            goto fail;
    }
    for (size_t i = 0; i < n_pod; i++) {
        w->pod_wp[i] = NULL;
        if (dup_pod[i] || !pod_has_workload(&pods[i]) || is_waypoint_pod(w, &pods[i])) continue;
        char uid[WP_MSG_MAX];
        if (k8s_pod_uid(w->o.cluster_id, pods[i].meta.namespace_, pods[i].meta.name, uid, sizeof(uid)) < 0)
            continue; /* the builder refuses such a pod anyway */
        const char *u = arena_strndup(&w->a, uid, strlen(uid));
        const struct k8s_binding *unused;
        if (!u || bind_object(w, "Pod", &pods[i].meta, u, false, &w->pod_wp[i], &unused)) goto fail;
    }
    *out = w;
    return 0;
fail:
    k8s_waypoints_free(w);
    return rc;
}

void k8s_waypoints_free(struct k8s_waypoints *w)
{
    if (!w) return;
    arena_free(&w->a);
    free(w);
}

const struct gateway_addr *k8s_waypoints_service(const struct k8s_waypoints *w, size_t i)
{
    size_t n;
    manifest_services(w->st, &n);
    return i < n ? w->svc_wp[i] : NULL;
}

const struct gateway_addr *k8s_waypoints_pod(const struct k8s_waypoints *w, size_t i)
{
    size_t n;
    manifest_pods(w->st, &n);
    return i < n ? w->pod_wp[i] : NULL;
}

const struct k8s_binding *k8s_waypoints_service_binding(const struct k8s_waypoints *w, size_t i)
{
    size_t n;
    manifest_services(w->st, &n);
    return i < n ? w->svc_bind[i] : NULL;
}

const struct k8s_waypoint *k8s_waypoints_list(const struct k8s_waypoints *w, size_t *n)
{
    *n = w->n_wps;
    return w->wps;
}

const struct k8s_binding *k8s_waypoints_bindings(const struct k8s_waypoints *w, size_t *n)
{
    *n = w->n_binds;
    return w->binds;
}

/* ---- the condition on an object (istiod's status queue, translateToPatch) ---- */

static bool cond_is(const json_t *c, const char *type)
{
    const char *t = json_string_value(json_object_get(c, "type"));
    return t && !strcmp(t, type);
}

int k8s_waypoint_bound_apply(json_t *obj, const struct k8s_status_condition *c, const char *now)
{
    if (c && !c->type) c = NULL;
    return k8s_condition_apply(obj, c ? c->type : K8S_COND_WAYPOINT_BOUND, c, now);
}

int k8s_condition_apply(json_t *obj, const char *type, const struct k8s_status_condition *c, const char *now)
{
    json_t *st = json_object_get(obj, "status");
    if (st && !json_is_object(st)) return -EINVAL;
    json_t *conds = st ? json_object_get(st, "conditions") : NULL;
    if (conds && !json_is_array(conds)) return -EINVAL;
    size_t first = SIZE_MAX, n_same = 0;
    for (size_t i = 0; i < json_array_size(conds); i++)
        if (cond_is(json_array_get(conds, i), type)) {
            if (first == SIZE_MAX) first = i;
            n_same++;
        }
    if (!c) {
        if (!n_same) return 0;
        for (size_t i = json_array_size(conds); i-- > 0;)
            if (cond_is(json_array_get(conds, i), type)) json_array_remove(conds, i);
        /* What istiod's empty patch leaves: nothing of ours, so an object with no other status is as applied.
         */
        if (!json_array_size(conds)) json_object_del(st, "conditions");
        if (!json_object_size(st)) json_object_del(obj, "status");
        return 1;
    }
    const char *s = c->status ? "True" : "False", *ts = now;
    const json_t *cur = first == SIZE_MAX ? NULL : json_array_get(conds, first);
    const char *cs = json_string_value(json_object_get(cur, "status")),
               *clt = json_string_value(json_object_get(cur, "lastTransitionTime"));
    if (cs && clt && !strcmp(cs, s)) ts = clt;
    json_t *nc = json_pack("{s:s, s:s, s:s, s:s, s:s}", "type", type, "status", s, "lastTransitionTime", ts,
                           "reason", c->reason ? c->reason : "", "message", c->message ? c->message : "");
    if (!nc) return -ENOMEM;
    if (n_same == 1 && json_equal(cur, nc)) {
        json_decref(nc);
        return 0;
    }
    if (!st) {
        if (!(st = json_object()) || json_object_set_new(obj, "status", st)) {
            json_decref(nc);
            return -ENOMEM;
        }
    }
    if (!conds) {
        if (!(conds = json_array()) || json_object_set_new(st, "conditions", conds)) {
            json_decref(nc);
            return -ENOMEM;
        }
    }
    /* The first one replaced in place, any repeat of it removed. */
    for (size_t i = json_array_size(conds); i-- > 0;)
        if (i != first && cond_is(json_array_get(conds, i), type)) json_array_remove(conds, i);
    int rc = first == SIZE_MAX ? json_array_append_new(conds, nc) : json_array_set_new(conds, first, nc);
    return rc ? -ENOMEM : 1;
}

/* ---- /debug/waypointz ---- */

static json_t *addr_json(const struct gateway_addr *a)
{
    char ip[IP_STRLEN];
    if (a->is_host)
        return json_pack("{s:s, s:s, s:i}", "namespace", a->ns, "hostname", a->host, "port", a->hbone_port);
    return json_pack("{s:s, s:s, s:i}", "network", a->network, "address", ip_format(&a->ip, ip, sizeof(ip)),
                     "port", a->hbone_port);
}

json_t *k8s_waypoints_json(const struct k8s_waypoints *w)
{
    json_t *root = json_object(), *wps = json_array(), *binds = json_array();
    if (!root || !wps || !binds || json_object_set_new(root, "waypoints", wps) ||
        json_object_set_new(root, "bindings", binds))
        goto fail;
    for (size_t i = 0; i < w->n_wps; i++) {
        const struct k8s_waypoint *wp = &w->wps[i];
        json_t *svcs = json_array(), *wls = json_array();
        json_t *o =
            json_pack("{s:s, s:s, s:s, s:s, s:o, s:b, s:s, s:s, s:s, s:o, s:o}", "namespace",
                      wp->gw->meta.namespace_, "name", wp->gw->meta.name, "class", wp->gw->class_name, "for",
                      k8s_waypoint_for_to_str(wp->traffic), "address", addr_json(&wp->addr), "ready",
                      wp->ready, "reason", wp->reason, "message", wp->message, "allowedRoutes", wp->from,
                      "services", svcs ? svcs : json_null(), "workloads", wls ? wls : json_null());
        if (!o || !svcs || !wls || json_array_append_new(wps, o)) {
            json_decref(o);
            goto fail;
        }
        for (size_t j = 0; j < w->n_binds; j++) {
            const struct k8s_binding *b = &w->binds[j];
            if (b->wp != wp) continue;
            json_t *s = b->kind[0] == 'S' ? json_sprintf("%s/%s", b->meta->namespace_, b->meta->name)
                                          : json_string(b->uid);
            if (json_array_append_new(b->kind[0] == 'S' ? svcs : wls, s)) goto fail;
        }
    }
    for (size_t j = 0; j < w->n_binds; j++) {
        const struct k8s_binding *b = &w->binds[j];
        const struct k8s_status_condition *c = &b->cond;
        json_t *cj = c->type
                         ? json_pack("{s:s, s:s, s:s, s:s}", "type", c->type, "status",
                                     c->status ? "True" : "False", "reason", c->reason, "message", c->message)
                         : json_null();
        json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:s, s:b, s:s, s:s, s:o}", "kind", b->kind, "namespace",
                              b->meta->namespace_, "name", b->meta->name, "uid", b->uid, "waypoint",
                              b->waypoint, "bound", b->wp != NULL, "reason",
                              k8s_bind_reason_to_str(b->reason), "message", b->message, "condition", cj);
        if (!o || json_array_append_new(binds, o)) goto fail;
    }
    return root;
fail:
    json_decref(root);
    return NULL;
}
