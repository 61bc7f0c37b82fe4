/* The waypoint's side doors on the main loop (http1/server.h): admin on localhost (/config_dump,
 * /quitquitquit), metrics (/metrics, /stats/prometheus) and readiness (/healthz/ready), each port with its own
 * connection limit, as ztunnel's. */
#include "waypoint/admin.h"

#include <errno.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/log.h"
#include "http1/server.h"
#include "tls/tls.h"
#include "llhttp.h"
#include "waypoint/telemetry.h"
#include "waypoint/wp.h"

static struct http1_server *srv;
static const struct wp_admin_hooks *hooks;

static json_t *gateway_json(const struct gateway_addr *g)
{
    if (!g->set) return json_null();
    char ipb[IP_STRLEN];
    if (g->is_host) return json_pack("{s:s, s:i}", "destination", g->host, "hboneMtlsPort", g->hbone_port);
    return json_pack("{s:s, s:i}", "destination", ip_format(&g->ip, ipb, sizeof(ipb)), "hboneMtlsPort",
                     g->hbone_port);
}

/* What this waypoint serves and with which certificate: the services and workloads bound to it, in the
 * spirit of Envoy's /config_dump (listeners by destination) reduced to what a waypoint has. */
static char *config_dump(size_t *len)
{
    json_t *root = json_object(), *svcs = json_array(), *wls = json_array(), *certs = json_array();
    struct wp_view *v = wp_view_current();
    if (v) {
        for (size_t i = 0; i < snapshot_n_services(v->snap); i++) {
            const struct service *s = snapshot_service_at(v->snap, i);
            if (!wp_serves(&s->waypoint)) continue;
            json_t *vips = json_array(), *ports = json_array();
            char ipb[IP_STRLEN];
            for (size_t k = 0; k < s->n_vips; k++)
                json_array_append_new(vips, json_string(ip_format(&s->vips[k].ip, ipb, sizeof(ipb))));
            for (size_t k = 0; k < s->n_ports; k++)
                json_array_append_new(ports, json_pack("{s:i, s:i, s:i}", "port", s->ports[k].port, "targetPort",
                                                       s->ports[k].target, "appProtocol", s->ports[k].app_protocol));
            size_t n_eps = 0;
            snapshot_service_endpoints(v->snap, s, &n_eps);
            json_array_append_new(svcs, json_pack("{s:s, s:s, s:s, s:o, s:o, s:i, s:o}", "name", s->name,
                                                  "namespace", s->namespace_, "hostname", s->hostname, "vips", vips,
                                                  "ports", ports, "endpoints", (int)n_eps, "waypoint",
                                                  gateway_json(&s->waypoint)));
        }
        for (size_t i = 0; i < snapshot_n_workloads(v->snap); i++) {
            const struct workload *w = snapshot_workload_at(v->snap, i);
            if (!wp_serves(&w->waypoint)) continue;
            json_array_append_new(wls, json_pack("{s:s, s:s, s:s}", "uid", w->uid, "name", w->name, "namespace",
                                                 w->namespace_));
        }
        json_object_set_new(root, "configVersion", json_integer((json_int_t)v->version));
        wp_view_unref(v);
    }
    struct identity_status *st = NULL;
    int n = hooks->certs ? hooks->certs(&st) : 0;
    for (int i = 0; i < n; i++) {
        json_t *c = json_pack("{s:s, s:s}", "identity", st[i].uri, "state", identity_state_to_str(st[i].state));
        if (*st[i].error) json_object_set_new(c, "error", json_string(st[i].error));
        if (st[i].cur) {
            char serial[128], from[64], to[64];
            if (tls_cert_describe(st[i].cur->cert, serial, sizeof(serial), from, sizeof(from), to, sizeof(to)) == 0)
                json_object_set_new(c, "certChain",
                                    json_pack("[{s:s, s:s, s:s}]", "serialNumber", serial, "validFrom", from,
                                              "expirationTime", to));
        }
        json_array_append_new(certs, c);
    }
    identity_status_free(st, n > 0 ? (size_t)n : 0);
    json_object_set_new(root, "identity", json_string(wp_self_uri));
    json_object_set_new(root, "hostname", json_string(wp_self_host));
    json_object_set_new(root, "services", svcs);
    json_object_set_new(root, "workloads", wls);
    json_object_set_new(root, "certificates", certs);
    json_object_set_new(root, "outlierEjections", wp_outlier_json()); /* DestinationRule (proxy.c) */
    char *out = json_dumps(root, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(root);
    *len = out ? strlen(out) : 0;
    return out;
}

static void quit_after(void *ud)
{
    (void)ud;
    kill(getpid(), SIGTERM); /* the main loop's signalfd turns it into a drain */
}

static void admin_handler(void *ud, struct http1_request *req)
{
    (void)ud;
    if (!strcmp(req->path, "/config_dump")) {
        size_t len;
        char *body = config_dump(&len);
        if (!body) {
            http1_respond_text(req, 500, "out of memory\n");
            return;
        }
        http1_respond(req, 200, "application/json", body, len);
        free(body);
    } else if (!strcmp(req->path, "/quitquitquit")) {
        if (req->method != HTTP_POST) {
            http1_respond_text(req, 405, "use POST\n");
            return;
        }
        http1_respond_text(req, 200, "OK\n");
        req->after_write = quit_after;
    } else if (!strcmp(req->path, "/healthz/ready")) {
        const char *p = hooks->pending();
        http1_respond_text(req, p ? 503 : 200, p ? p : "ready\n");
    } else {
        http1_respond_text(req, 404, "not found: /config_dump, /quitquitquit, /healthz/ready\n");
    }
}

static void metrics_handler(void *ud, struct http1_request *req)
{
    (void)ud;
    if (strcmp(req->path, "/metrics") && strcmp(req->path, "/stats/prometheus")) {
        http1_respond_text(req, 404, "not found: /metrics, /stats/prometheus\n");
        return;
    }
    bool om = strstr(req->accept, "application/openmetrics-text") != NULL;
    size_t len = 0;
    char *body = hooks->metrics(om, &len);
    if (!body) {
        http1_respond_text(req, 500, "out of memory\n");
        return;
    }
    http1_respond(req, 200, wp_metrics_content_type(om), body, len);
    free(body);
}

/* Envoy's readiness through pilot-agent: 200 once the proxy has its config and certificate, else 503 naming
 * what is pending. */
static void ready_handler(void *ud, struct http1_request *req)
{
    (void)ud;
    if (strcmp(req->path, "/healthz/ready")) {
        http1_respond_text(req, 404, "not found: /healthz/ready\n");
        return;
    }
    const char *p = hooks->pending();
    if (!p) {
        http1_respond_text(req, 200, "");
        return;
    }
    char body[512];
    snprintf(body, sizeof(body), "not ready: %s\n", p);
    http1_respond_text(req, 503, body);
}

static int listen_on(const char *addr, const char *name, int max_conns, http1_handler_fn fn, char *err,
                     size_t errlen)
{
    int fd = http1_listen(addr, NULL, err, errlen);
    if (fd < 0) return fd;
    struct http1_limits lim = {.max_conns = max_conns};
    int rc = http1_server_listen(srv, fd, name, &lim, fn, NULL);
    if (rc < 0) snprintf(err, errlen, "%s: %s", name, strerror(-rc));
    return rc;
}

int wp_admin_start(struct loop *l, const struct wp_admin_hooks *h, char *err, size_t errlen)
{
    hooks = h;
    if (!(srv = http1_server_new(l, "waypoint::admin"))) return -ENOMEM;
    char a[64], nm[3][32];
    int rc;
    snprintf(a, sizeof(a), "127.0.0.1:%lld", (long long)wp_cfg.admin_port);
    snprintf(nm[0], sizeof(nm[0]), "admin :%lld", (long long)wp_cfg.admin_port);
    if ((rc = listen_on(a, nm[0], 16, admin_handler, err, errlen)) < 0) return rc;
    snprintf(a, sizeof(a), ":%lld", (long long)wp_cfg.metrics_port);
    snprintf(nm[1], sizeof(nm[1]), "metrics :%lld", (long long)wp_cfg.metrics_port);
    if ((rc = listen_on(a, nm[1], 16, metrics_handler, err, errlen)) < 0) return rc;
    snprintf(a, sizeof(a), ":%lld", (long long)wp_cfg.readiness_port);
    snprintf(nm[2], sizeof(nm[2]), "readiness :%lld", (long long)wp_cfg.readiness_port);
    /* Readiness has its own slots, so scrapers and the admin port cannot lock a kubelet out. */
    return listen_on(a, nm[2], 32, ready_handler, err, errlen);
}
