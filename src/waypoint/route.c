/* What the waypoint does with one request (route.h): L7 authorization, then the route, for HTTP/1.1 and h2c
 * alike. */
#include "waypoint/route.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "core/log.h"
#include "tls/spiffe.h"
#include "waypoint/authn.h"

static void local(struct wp_decision *d, int status, const char *body, const char *flags, const char *details)
{
    d->kind = WP_DECIDE_LOCAL;
    d->status = status;
    d->body = body;
    d->flags = flags;
    snprintf(d->details, sizeof(d->details), "%s", details);
}

/* The rule's first RequestMirror whose fraction this request falls in, resolved to its Service. */
static void pick_mirror(struct wp_tunnel *t, struct wp_decision *d, const struct l7_filter *f, size_t n)
{
    for (size_t i = 0; i < n && !d->mirror_svc; i++) {
        if (f[i].kind != L7_FILTER_MIRROR) continue;
        const struct l7_mirror *m = &f[i].u.mirror;
        if (!m->denominator || wp_rand(t->w) % m->denominator >= m->numerator) continue;
        char key[512];
        snprintf(key, sizeof(key), "%s/%s.%s.svc.%s", m->ns, m->name, m->ns, wp_cfg.cluster_domain);
        const struct service *svc = snapshot_service_by_host(t->view->snap, key);
        if (!svc) {
            LOG_LIMITED(LOG_WARN, "waypoint::route", "RequestMirror of %s: no Service %s/%s; not mirrored",
                        d->route_name, m->ns, m->name);
            continue;
        }
        d->mirror_svc = svc;
        d->mirror_port = m->port ? m->port : t->port;
    }
}

/* The rule's and the chosen backend's header modifiers, in order, split by direction. */
static void collect_mods(struct wp_decision *d, const struct l7_filter *f, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (f[i].kind == L7_FILTER_REQUEST_HEADERS && d->n_req_mods < WP_MAX_MODS)
            d->req_mods[d->n_req_mods++] = &f[i].u.headers;
        else if (f[i].kind == L7_FILTER_RESPONSE_HEADERS && d->n_resp_mods < WP_MAX_MODS)
            d->resp_mods[d->n_resp_mods++] = &f[i].u.headers;
    }
}

/* ---- VirtualService: CORS, fault injection, direct response (Envoy's cors and fault filters, which run
 * before the router in Istio's filter chain; istio/istio pilot/pkg/networking/core/route/route.go) ---- */

/* The request's value of header name (lower-case), or NULL. */
static const char *req_header(const struct l7_request *req, const char *name, size_t *len)
{
    size_t nl = strlen(name);
    for (size_t i = 0; i < req->n_headers; i++)
        if (req->headers[i].name_len == nl && !strncasecmp(req->headers[i].name, name, nl)) {
            *len = req->headers[i].value_len;
            return req->headers[i].value;
        }
    return NULL;
}

static void cors_add(struct wp_decision *d, const char *name, const char *value)
{
    struct l7_kv *kv = (struct l7_kv *)d->cors_mod.set;
    if (d->cors_mod.n_set < sizeof(d->cors_kv) / sizeof(d->cors_kv[0]))
        kv[d->cors_mod.n_set++] = (struct l7_kv){name, value};
}

/* Envoy's cors filter (source/extensions/filters/http/cors/cors_filter.cc). A request with an Origin is a
 * CORS request. A preflight (OPTIONS with Origin and Access-Control-Request-Method) is answered 200 here
 * (details cors_response) with access-control-allow-origin when the origin is allowed, and
 * -allow-credentials, -allow-methods, -allow-headers ("*" echoes the request's), -max-age; one whose origin
 * is not allowed goes on to the backend instead when unmatchedPreflights is FORWARD (Istio's default).
 * Another request from an allowed origin gets access-control-allow-origin (and -allow-credentials,
 * -expose-headers) on whatever answers it, local replies included. Returns true when the decision is now
 * LOCAL. */
static bool vs_cors(struct wp_decision *d, const struct l7_cors *c, const struct l7_request *req)
{
    size_t on = 0, mn = 0, hn = 0;
    const char *origin = req_header(req, "origin", &on);
    if (!origin || !on) return false;
    const char *method = req_header(req, "access-control-request-method", &mn);
    bool preflight = !strcmp(req->method, "OPTIONS") && method && mn;
    bool allowed = on < sizeof(d->cors_origin) && l7_cors_origin_allowed(c, origin, on);
    if (!allowed && (!preflight || c->unmatched_preflight_forward)) return false;
    d->cors_mod = (struct l7_header_mod){.set = d->cors_kv};
    if (allowed) {
        memcpy(d->cors_origin, origin, on);
        d->cors_origin[on] = 0;
        cors_add(d, "access-control-allow-origin", d->cors_origin);
    }
    if (c->allow_credentials == 1) cors_add(d, "access-control-allow-credentials", "true");
    if (!preflight) {
        if (*c->expose_headers) cors_add(d, "access-control-expose-headers", c->expose_headers);
        if (d->n_resp_mods < WP_MAX_MODS) d->resp_mods[d->n_resp_mods++] = &d->cors_mod;
        return false;
    }
    /* "*" echoes what the preflight asks for; the echoed values are the request's, copied here. */
    const char *methods = c->allow_methods, *headers = c->allow_headers;
    if (!strcmp(methods, "*") && mn < sizeof(d->cors_echo_method)) {
        memcpy(d->cors_echo_method, method, mn);
        d->cors_echo_method[mn] = 0;
        methods = d->cors_echo_method;
    }
    if (!strcmp(headers, "*")) {
        const char *h = req_header(req, "access-control-request-headers", &hn);
        if (!h) hn = 0;
        if (hn >= sizeof(d->cors_echo_headers)) hn = 0;
        if (hn) memcpy(d->cors_echo_headers, h, hn);
        d->cors_echo_headers[hn] = 0;
        headers = d->cors_echo_headers;
    }
    if (*methods) cors_add(d, "access-control-allow-methods", methods);
    if (*headers) cors_add(d, "access-control-allow-headers", headers);
    if (c->max_age_s >= 0) {
        snprintf(d->cors_max_age, sizeof(d->cors_max_age), "%lld", (long long)c->max_age_s);
        cors_add(d, "access-control-max-age", d->cors_max_age);
    }
    d->n_resp_mods = 0;
    d->resp_mods[d->n_resp_mods++] = &d->cors_mod;
    local(d, 200, "", "-", "cors_response");
    return true;
}

/* True when the request falls in a fraction of ppm parts per million. */
static bool in_fraction(struct wp_tunnel *t, uint32_t ppm)
{
    return ppm >= L7_PPM || (ppm && wp_rand(t->w) % L7_PPM < ppm);
}

/* Envoy's fault filter (source/extensions/filters/http/fault/fault_filter.cc): a delay, then an abort, each
 * for its own fraction. The delay is the decision's delay_ms, which the codec waits before it forwards the
 * request or sends a local answer (flag DI); the abort answers with its status and body "fault filter abort"
 * (flag FI, details fault_filter_abort); a grpcStatus abort is status 200 with that grpc-status, which a gRPC
 * request gets trailers-only. Returns true when the decision is now LOCAL. */
static bool vs_fault(struct wp_tunnel *t, struct wp_decision *d, const struct l7_fault *f)
{
    if (f->delay_ms && in_fraction(t, f->delay_ppm)) d->delay_ms = f->delay_ms;
    if ((f->abort_status || f->abort_grpc >= 0) && in_fraction(t, f->abort_ppm)) {
        int status = f->abort_status;
        if (f->abort_grpc >= 0) {
            d->grpc_status = f->abort_grpc;
            status = 200;
        }
        /* The route's response headers do not apply to a filter's local reply; the cors filter's do. */
        d->n_resp_mods = 0;
        if (d->cors_mod.n_set) d->resp_mods[d->n_resp_mods++] = &d->cors_mod;
        local(d, status, "fault filter abort", d->delay_ms ? "DI,FI" : "FI", "fault_filter_abort");
        return true;
    }
    return false;
}

int wp_decide(struct wp_tunnel *t, const struct l7_request *req_in, struct wp_decision *d)
{
    struct wp_view *v = t->view;
    struct l7_request rq = *req_in; /* with the service port and the source, for VirtualService matches */
    rq.port = t->port;
    /* sourceNamespace: the client identity's namespace; sourceLabels: the client workload (by peer address)
     */
    struct spiffe_id pid;
    if (*t->peer_id && spiffe_parse(t->peer_id, strlen(t->peer_id), &pid) == 0) rq.source_namespace = pid.ns;
    if (t->src_wl) {
        rq.source_workload_ns = t->src_wl->namespace_;
        rq.source_workload = t->src_wl->name;
    }
    const struct l7_request *req = &rq;
    memset(d, 0, sizeof(*d));
    d->kind = WP_DECIDE_FORWARD;
    d->svc = t->svc;
    d->port = t->port;
    d->route_name = "default";
    d->grpc_status = -1;
    d->subset = "";
    d->retry = &l7_default_retry;
    /* RequestAuthentication (authn.h): a bad token is answered here; a good one is the request principal. */
    struct jwt_result auth;
    if (!wp_authn_check(t, req, d, &auth)) return 0;
    /* A token RequestAuthentication removed from the query (d->path) stays removed: a redirect or a rewrite
     * below starts from that path, as Envoy's router rewrites the :path jwt_authn changed; routes still match
     * the request as it came (Envoy keeps the route it picked before jwt_authn ran). */
    char authn_path[sizeof(d->path)];
    struct l7_request fwd = rq;
    if (d->rewrite_path) {
        fwd.path_len = strlen(d->path);
        memcpy(authn_path, d->path, fwd.path_len + 1);
        fwd.path = authn_path;
    }
    /* L7 authorization: policies targeting this waypoint's Gateway, and the addressed Service. */
    struct l7_authz_input in = {
        .source_principal = !strncmp(t->peer_id, "spiffe://", 9) ? t->peer_id + 9 : NULL,
        .dest_ip = &t->dst_ip,
        .dest_port = t->port,
        .req = req,
        .auth = auth.principal ? &auth : NULL,
    };
    struct ip_addr pip;
    sockaddr_to(&t->peer, &pip, NULL);
    in.source_ip = &pip;
    const char *matched = NULL;
    bool dry_deny = false;
    enum l7_verdict verdict =
        l7_authorize(v->l7, wp_cfg.pod_namespace, wp_cfg.gateway_name, t->svc ? t->svc->namespace_ : NULL,
                     t->svc ? t->svc->name : NULL, &in, &matched, &dry_deny);
    jwt_result_free(&auth);
    if (dry_deny)
        LOG_LIMITED(LOG_INFO, "waypoint::rbac", "dry-run policies would deny %s %s from %s", req->method,
                    t->authority, *t->peer_id ? t->peer_id : "unknown");
    if (verdict == L7_DENY) {
        char det[160];
        snprintf(det, sizeof(det), "rbac_access_denied_matched_policy[%s]", matched ? matched : "none");
        local(d, 403, "RBAC: access denied", "-", det);
        d->policy = matched;
        return 0;
    }
    if (!t->svc) return 0; /* a workload address: no routes apply (Istio's direct chains) */
    const struct l7_service_routes *r = l7_routes_for(v->l7, t->svc->namespace_, t->svc->name, t->port);
    if (!r) return 0; /* no route attaches: the service itself */
    const char *prefix = NULL;
    size_t prefix_len = 0;
    const struct l7_rule *rule = l7_match_ex(r, req, &prefix, &prefix_len);
    if (!rule) {
        local(d, 404, "", "NR", "route_not_found");
        return 0;
    }
    d->rule = rule;
    d->route_name = rule->name;
    if (rule->retry) d->retry = rule->retry;
    d->timeout_ms = rule->request_timeout_ms;
    if (rule->backend_request_timeout_ms &&
        (!d->timeout_ms || rule->backend_request_timeout_ms < d->timeout_ms))
        d->timeout_ms = rule->backend_request_timeout_ms;
    collect_mods(d, rule->filters, rule->n_filters);
    if (rule->cors && vs_cors(d, rule->cors, req)) return 0;
    if (rule->fault && vs_fault(t, d, rule->fault)) return 0;
    if (rule->direct) { /* Envoy's direct_response: the route's response headers apply */
        local(d, rule->direct->status, rule->direct->body, d->delay_ms ? "DI" : "-", "direct_response");
        return 0;
    }
    pick_mirror(t, d, rule->filters, rule->n_filters);
    if (rule->redirect) {
        int n = l7_redirect_location(rule->redirect, prefix, prefix_len, &fwd, "http", d->location,
                                     sizeof(d->location));
        if (n < 0) {
            local(d, 500, "", "-", "redirect_failed");
            return 0;
        }
        local(d, rule->redirect->status ? rule->redirect->status : 302, "", d->delay_ms ? "DI" : "-",
              "via_upstream");
        snprintf(d->details, sizeof(d->details), "direct_response");
        return 0;
    }
    if (rule->rewrite) {
        if (rule->rewrite->path_kind != L7_PATH_KEEP) {
            int n = rule->rewrite->path_kind == L7_PATH_REGEX
                        ? l7_rewrite_path_regex(rule->rewrite->path_regex, rule->rewrite->path, fwd.path,
                                                fwd.path_len, d->path, sizeof(d->path))
                        : l7_rewrite_path(rule->rewrite->path_kind, rule->rewrite->path, prefix, prefix_len,
                                          fwd.path, fwd.path_len, d->path, sizeof(d->path));
            if (n < 0) {
                local(d, 500, "", "-", "rewrite_failed");
                return 0;
            }
            d->rewrite_path = true;
        }
        if (*rule->rewrite->hostname) {
            snprintf(d->authority, sizeof(d->authority), "%s", rule->rewrite->hostname);
            d->rewrite_authority = true;
        }
    }
    int bi = l7_pick_backend(rule, wp_rand(t->w));
    if (bi < 0) { /* every weight 0, or no backend: Istio's direct response 500 */
        local(d, 500, "", "-", "direct_response");
        return 0;
    }
    const struct l7_backend *be = &rule->backends[bi];
    collect_mods(d, be->filters, be->n_filters);
    /* The destination's Host rewrite (Envoy's ClusterWeight host_rewrite_literal); the rule's wins. */
    if (be->authority && *be->authority && !d->rewrite_authority) {
        snprintf(d->authority, sizeof(d->authority), "%s", be->authority);
        d->rewrite_authority = true;
    }
    char key[512];
    snprintf(key, sizeof(key), "%s/%s.%s.svc.%s", be->ns, be->name, be->ns, wp_cfg.cluster_domain);
    const struct service *svc = snapshot_service_by_host(v->snap, key);
    if (!svc) { /* a backendRef to a Service that does not exist */
        local(d, 500, "", "-", "cluster_not_found");
        return 0;
    }
    d->svc = svc;
    d->port = be->port ? be->port : t->port;
    /* A VirtualService destination without a port: Istio's GetDestinationCluster takes the Service's only
     * port, else the port the request came to (istio/istio pilot/pkg/networking/core/route/route.go). */
    if (!be->port && rule->kind == L7_ROUTE_VIRTUAL_SERVICE && svc->n_ports == 1)
        d->port = svc->ports[0].port;
    d->subset = be->subset ? be->subset : "";
    return 0;
}

int wp_decide_tcp(struct wp_tunnel *t, const struct service **svc, uint16_t *port, const char **subset)
{
    *svc = t->svc;
    *port = t->port;
    *subset = "";
    if (!t->svc) return 0;
    const struct l7_tcp_rule *r = l7_tcp_route_for(t->view->l7, t->svc->namespace_, t->svc->name, t->port);
    if (!r) return 0;
    int bi = l7_tcp_pick_backend(r, wp_rand(t->w));
    if (bi < 0) return -ENOENT;
    const struct l7_backend *be = &r->backends[bi];
    char key[512];
    snprintf(key, sizeof(key), "%s/%s.%s.svc.%s", be->ns, be->name, be->ns, wp_cfg.cluster_domain);
    const struct service *s = snapshot_service_by_host(t->view->snap, key);
    if (!s) {
        LOG_LIMITED(LOG_WARN, "waypoint::route", "tcp route %s: no Service %s/%s; connection closed",
                    r->route, be->ns, be->name);
        return -ENOENT;
    }
    *svc = s;
    *subset = be->subset;
    /* no port: the Service's only port, else the connection's (Istio's GetDestinationCluster) */
    *port = be->port ? be->port : s->n_ports == 1 ? s->ports[0].port : t->port;
    return 0;
}

int wp_pick_tcp_endpoint(struct wp_tunnel *t, const struct service *svc, uint16_t port, const char *subset,
                         struct lb_choice *out)
{
    if (!svc || !subset || !*subset) return wp_pick_endpoint(t, svc, port, out);
    const struct dr_rule *dr = l7_destination_rule_for(t->view->l7, svc->namespace_, svc->name);
    const struct dr_subset *sub = dr_subset_find(dr, subset);
    if (!sub) { /* Istio builds a cluster per subset; one no DestinationRule defines has none: closed */
        LOG_LIMITED(LOG_WARN, "waypoint::lb", "tcp route: subset %s of %s is not defined by a DestinationRule",
                    subset, svc->hostname);
        return -ESRCH;
    }
    /* The subset's endpoints under its policy, without connection limits or outlier detection (as a TCP
     * connection without a route gets: wp_pick_endpoint). */
    struct wp_decision d;
    memset(&d, 0, sizeof(d));
    d.svc = svc;
    d.port = port;
    d.subset = subset;
    d.route_name = "tcp";
    d.lb_ready = true;
    d.lb_subset = sub;
    d.lb_policy = dr_policy_for(dr, sub, port);
    d.lb_policy.pool = NULL;
    d.lb_policy.outlier = NULL;
    return wp_pick_endpoint_dec(t, &d, out);
}

/* Applies the modifiers to a header list: set replaces (or adds), add appends, remove drops, as Gateway API
 * specifies. hv holds *n entries and room for cap. */
void wp_apply_mods(const struct l7_header_mod *const *mods, size_t n_mods, struct http1_hdr *hv, size_t *n,
                   size_t cap, bool (*name_eq)(const char *a, size_t alen, const char *lower))
{
    for (size_t m = 0; m < n_mods; m++) {
        const struct l7_header_mod *hm = mods[m];
        for (size_t r = 0; r < hm->n_remove; r++)
            for (size_t i = 0; i < *n;)
                if (name_eq(hv[i].name, hv[i].name_len, hm->remove[r]))
                    hv[i] = hv[--*n];
                else
                    i++;
        for (size_t s = 0; s < hm->n_set; s++) {
            bool done = false;
            for (size_t i = 0; i < *n;)
                if (name_eq(hv[i].name, hv[i].name_len, hm->set[s].name)) {
                    if (done) {
                        hv[i] = hv[--*n];
                        continue;
                    }
                    hv[i].value = hm->set[s].value;
                    hv[i].value_len = strlen(hm->set[s].value);
                    done = true;
                    i++;
                } else {
                    i++;
                }
            if (!done && *n < cap)
                hv[(*n)++] = (struct http1_hdr){hm->set[s].name, strlen(hm->set[s].name), hm->set[s].value,
                                                strlen(hm->set[s].value)};
        }
        for (size_t a = 0; a < hm->n_add && *n < cap; a++)
            hv[(*n)++] = (struct http1_hdr){hm->add[a].name, strlen(hm->add[a].name), hm->add[a].value,
                                            strlen(hm->add[a].value)};
    }
}

/* A TCP stream's authorization (Envoy's network RBAC filter on the waypoint's TCP chain): the same policies
 * as wp_decide's, evaluated without a request (l7_authz_input.tcp). Returns true when allowed; *matched names
 * the deciding policy, if one did. */
bool wp_authorize_stream(struct wp_tunnel *t, const char **matched)
{
    struct ip_addr pip;
    sockaddr_to(&t->peer, &pip, NULL);
    struct l7_authz_input in = {
        .source_principal = !strncmp(t->peer_id, "spiffe://", 9) ? t->peer_id + 9 : NULL,
        .source_ip = &pip,
        .dest_ip = &t->dst_ip,
        .dest_port = t->port,
        .tcp = true,
    };
    bool dry_deny = false;
    *matched = NULL;
    enum l7_verdict v = l7_authorize(t->view->l7, wp_cfg.pod_namespace, wp_cfg.gateway_name,
                                     t->svc ? t->svc->namespace_ : NULL, t->svc ? t->svc->name : NULL, &in,
                                     matched, &dry_deny);
    if (dry_deny)
        LOG_LIMITED(LOG_INFO, "waypoint::rbac", "dry-run policies would deny a TCP stream to %s from %s",
                    t->authority, *t->peer_id ? t->peer_id : "unknown");
    return v == L7_ALLOW;
}
