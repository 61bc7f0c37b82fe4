/* zmeshd's debug port (see debug.h). */
#include "zmeshd/debug.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <llhttp.h>

#include "core/log.h"
#include "http1/server.h"
#include "zmeshd/daemon.h"
#include "zmeshd/waypoint.h"

#define DBG_ID_MAX 256

struct zmeshd_debug {
    struct http1_server *srv;
    struct zmeshd_xds *x;
    struct zmeshd *d; /* for /debug/waypointz; NULL until set */
    uint16_t port;
    char id[DBG_ID_MAX];
    char cluster[DBG_ID_MAX];
};

/* ---- documents ---- */

void zmeshd_debug_proxy_id(const char *node_id, char *buf, size_t n)
{
    /* Istio's node id: type~ip~id~domain (istio/istio pilot/pkg/model/context.go
     * ParseServiceNodeWithMetadata), and istiod's syncz reports the third part. */
    const char *parts[4] = {0};
    int k = 0;
    parts[k++] = node_id;
    for (const char *p = node_id; *p && k < 4; p++)
        if (*p == '~') parts[k++] = p + 1;
    if (k == 4 && !strchr(parts[3], '~') && parts[3] - parts[2] > 1) {
        snprintf(buf, n, "%.*s", (int)(parts[3] - parts[2] - 1), parts[2]);
        return;
    }
    snprintf(buf, n, "%s", node_id);
}

static const char *str_of(const json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : "";
}

static json_int_t int_of(const json_t *o, const char *key)
{
    return json_integer_value(json_object_get(o, key));
}

/* RFC 3339 UTC with milliseconds, as Go's protobuf Timestamp in JSON. */
static void rfc3339_ms(int64_t unix_ms, char *buf, size_t n)
{
    time_t t = (time_t)(unix_ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    char s[32];
    strftime(s, sizeof(s), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf, n, "%s.%03dZ", s, (int)(unix_ms % 1000));
}

/* istioctl's short names (istio/istio pilot/pkg/xds/v3/model.go GetShortType). */
static const char *short_type(const char *type_url)
{
    if (!strcmp(type_url, "type.googleapis.com/istio.workload.Address") ||
        !strcmp(type_url, "type.googleapis.com/istio.workload.Workload"))
        return "WDS";
    if (!strcmp(type_url, "type.googleapis.com/istio.security.Authorization")) return "WADS";
    /* zmesh's own type (node agents); istioctl has no name for it. Also the metrics' type label ("enrol"). */
    if (!strcmp(type_url, "type.googleapis.com/zmesh.v1.PodEnrolment")) return "ENROL";
    return type_url;
}

/* istiod's ClusterID of a proxy: its metadata's CLUSTER_ID (istio/istio pilot/pkg/model/context.go), not the
 * Envoy node.cluster field; a proxy that sends none (zmesh's ztunnel) is in the control plane's own cluster,
 * as istiod assumes. */
static const char *cluster_of(const json_t *client, const char *dflt)
{
    const char *c = str_of(json_object_get(client, "metadata"), "CLUSTER_ID");
    return *c || !dflt ? c : dflt;
}

static json_t *syncz_type(const json_t *t)
{
    char when[40];
    json_int_t ms = int_of(json_object_get(t, "last_push"), "unix_ms");
    json_t *nack = json_object_get(t, "last_nack");
    if (ms > 0) rfc3339_ms(ms, when, sizeof(when));
    return json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:O, s:s?, s:I, s:I, s:I}", "type_url",
                     str_of(t, "type_url"), "type", short_type(str_of(t, "type_url")), "status",
                     str_of(t, "sync_status"), "subscription", str_of(t, "subscription"), "version_sent",
                     str_of(t, "version_sent"), "nonce_sent", str_of(t, "nonce_sent"), "version_acked",
                     str_of(t, "version_acked"), "nonce_acked", str_of(t, "nonce_acked"), "last_nack",
                     nack ? nack : json_null(), "last_updated", ms > 0 ? when : NULL, "responses",
                     int_of(t, "responses"), "acks", int_of(t, "acks"), "nacks", int_of(t, "nacks"));
}

json_t *zmeshd_debug_syncz(const json_t *status, const char *id, const char *cluster)
{
    json_t *out = json_array(), *c;
    size_t i;
    if (!out) return NULL;
    json_array_foreach(json_object_get(status, "clients"), i, c)
    {
        char proxy[512], type[64];
        const char *node = str_of(c, "node_id");
        if (!*node) continue; /* no request yet: not a proxy until it says who it is (as istiod's syncz) */
        zmeshd_debug_proxy_id(node, proxy, sizeof(proxy));
        snprintf(type, sizeof(type), "%.*s", (int)strcspn(node, "~"), node);
        json_t *md = json_object_get(c, "metadata"), *types = json_array(), *t;
        size_t j;
        if (!types) goto fail;
        json_array_foreach(json_object_get(c, "types"), j, t)
        {
            if (!json_is_true(json_object_get(t, "subscribed"))) continue; /* istiod lists watched types */
            if (json_array_append_new(types, syncz_type(t)) < 0) {
                json_decref(types);
                goto fail;
            }
        }
        json_t *o =
            json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:o}", "proxy", proxy, "node_id",
                      node, "proxy_type", strchr(node, '~') ? type : "", "namespace", str_of(md, "NAMESPACE"),
                      "node", str_of(md, "NODE_NAME"),
                      "cluster_id", cluster_of(c, cluster), "istio_version", str_of(md, "ISTIO_VERSION"),
                      "istiod", id ? id : "", "identity", str_of(c, "peer"), "state", str_of(c, "state"),
                      "error", str_of(c, "error"), "types", types);
        if (!o || json_array_append_new(out, o) < 0) goto fail;
    }
    return out;
fail:
    json_decref(out);
    return NULL;
}

json_t *zmeshd_debug_connections(const json_t *status, const char *cluster)
{
    json_t *out = json_array(), *c;
    size_t i;
    if (!out) return NULL;
    json_array_foreach(json_object_get(status, "clients"), i, c)
    {
        char proxy[512];
        zmeshd_debug_proxy_id(str_of(c, "node_id"), proxy, sizeof(proxy));
        json_t *o = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "proxy", proxy, "node_id",
                              str_of(c, "node_id"), "cluster_id", cluster_of(c, cluster), "identity",
                              str_of(c, "peer"), "state", str_of(c, "state"), "error", str_of(c, "error"));
        if (!o || json_array_append_new(out, o) < 0) {
            json_decref(out);
            return NULL;
        }
    }
    return out;
}

/* A growing text buffer; after a failed append it stays failed (NULL). */
struct buf {
    char *p;
    size_t n, cap;
    bool failed;
};

static void __attribute__((format(printf, 2, 3))) bprintf(struct buf *b, const char *fmt, ...)
{
    if (b->failed) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(b->p ? b->p + b->n : NULL, b->p ? b->cap - b->n : 0, fmt, ap);
        va_end(ap);
        if (k < 0) {
            b->failed = true;
            return;
        }
        if (b->p && (size_t)k < b->cap - b->n) {
            b->n += (size_t)k;
            return;
        }
        size_t cap = b->cap ? b->cap * 2 : 4096;
        while (cap < b->n + (size_t)k + 1)
            cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np) {
            b->failed = true;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
}

/* One metric family with a line per xDS type: name{type="wds"} value. */
static void metric_per_type(struct buf *b, const json_t *types, const char *name, const char *help,
                            const char *key)
{
    json_t *t;
    size_t i;
    bprintf(b, "# HELP %s %s\n# TYPE %s counter\n", name, help, name);
    json_array_foreach(types, i, t)
    {
        char lower[16];
        const char *s = short_type(str_of(t, "type_url"));
        size_t k = 0;
        for (; s[k] && k + 1 < sizeof(lower); k++)
            lower[k] = (char)(s[k] >= 'A' && s[k] <= 'Z' ? s[k] + 32 : s[k]);
        lower[k] = 0;
        bprintf(b, "%s{type=\"%s\"} %lld\n", name, lower, (long long)int_of(t, key));
    }
}

char *zmeshd_debug_metrics(const json_t *status, size_t *len)
{
    struct buf b = {0};
    const json_t *totals = json_object_get(status, "totals"), *types = json_object_get(totals, "types");
    size_t clients = json_array_size(json_object_get(status, "clients"));
    bprintf(&b,
            "# HELP zmeshd_xds_clients xDS streams connected now (istiod's pilot_xds).\n"
            "# TYPE zmeshd_xds_clients gauge\nzmeshd_xds_clients %zu\n",
            clients);
    bprintf(&b,
            "# HELP zmeshd_xds_streams_total xDS streams accepted since the start.\n"
            "# TYPE zmeshd_xds_streams_total counter\nzmeshd_xds_streams_total %lld\n",
            (long long)int_of(totals, "streams_opened"));
    bprintf(&b,
            "# HELP zmeshd_xds_streams_refused_total xDS streams refused as UNAUTHENTICATED.\n"
            "# TYPE zmeshd_xds_streams_refused_total counter\nzmeshd_xds_streams_refused_total %lld\n",
            (long long)int_of(totals, "streams_refused"));
    metric_per_type(&b, types, "zmeshd_xds_pushes_total", "xDS responses sent (istiod's pilot_xds_pushes).",
                    "responses");
    metric_per_type(&b, types, "zmeshd_xds_acks_total", "xDS responses ACKed.", "acks");
    metric_per_type(&b, types, "zmeshd_xds_nacks_total",
                    "xDS responses NACKed (istiod's pilot_total_xds_rejects).", "nacks");
    metric_per_type(&b, types, "zmeshd_xds_resources_sent_total", "Resources sent in xDS responses.",
                    "resources_sent");
    metric_per_type(&b, types, "zmeshd_xds_sent_bytes_total", "Bytes of xDS responses sent.", "bytes_sent");
    bprintf(&b,
            "# HELP zmeshd_snapshots_total Snapshots loaded for serving.\n"
            "# TYPE zmeshd_snapshots_total counter\nzmeshd_snapshots_total %lld\n",
            (long long)int_of(status, "generations"));
    if (b.failed) {
        free(b.p);
        return NULL;
    }
    *len = b.n;
    return b.p;
}

/* ---- the server ---- */

static void respond_json(struct http1_request *req, json_t *j)
{
    char *s = j ? json_dumps(j, JSON_INDENT(2)) : NULL;
    json_decref(j);
    if (!s) {
        http1_respond_text(req, 500, "out of memory\n");
        return;
    }
    size_t n = strlen(s);
    s[n] = '\0';
    /* A trailing newline, as curl users expect. */
    char *t = realloc(s, n + 2);
    if (t) {
        s = t;
        s[n++] = '\n';
        s[n] = '\0';
    }
    http1_respond(req, 200, "application/json", s, n);
    free(s);
}

static const char dbg_index[] = "zmeshd debug endpoints:\n"
                                "  /debug/syncz        each xDS client and its sync state per type\n"
                                "  /debug/connections  each xDS stream\n"
                                "  /debug/waypointz    waypoints and waypoint bindings\n"
                                "  /ready              200 once the first snapshot is served\n"
                                "  /metrics            Prometheus metrics\n";

static void discard_finding(void *ud, const struct manifest_finding *f)
{
    (void)ud;
    (void)f;
}

/* Computed from the daemon's current store on each request: a pure function of the manifests, so it needs no
 * state kept in step with reloads, and its findings were already logged by the reload that built the snapshot
 * (so they are not repeated here). */
static void dbg_waypointz(struct zmeshd_debug *dbg, struct http1_request *req)
{
    const struct manifest_store *st = dbg->d ? zmeshd_store(dbg->d) : NULL;
    if (!st) {
        http1_respond_text(req, 503, "not ready: no manifests loaded yet\n");
        return;
    }
    struct k8s_waypoints *w;
    if (k8s_waypoints_compute(st, &zmeshd_config(dbg->d)->k8s, &w, discard_finding, NULL)) {
        http1_respond_text(req, 500, "out of memory\n");
        return;
    }
    respond_json(req, k8s_waypoints_json(w));
    k8s_waypoints_free(w);
}

static void dbg_handle(void *ud, struct http1_request *req)
{
    struct zmeshd_debug *dbg = ud;
    const char *p = req->path;
    bool known = !strcmp(p, "/debug/syncz") || !strcmp(p, "/debug/connections") ||
                 !strcmp(p, "/debug/waypointz") || !strcmp(p, "/ready") || !strcmp(p, "/metrics") ||
                 !strcmp(p, "/");
    if (!known) {
        http1_respond_text(req, 404, "not found; see / for the debug endpoints\n");
        return;
    }
    if (req->method != HTTP_GET && req->method != HTTP_HEAD) {
        http1_respond_text(req, 405, "only GET and HEAD\n");
        return;
    }
    if (!strcmp(p, "/")) {
        http1_respond_text(req, 200, dbg_index);
        return;
    }
    if (!strcmp(p, "/debug/waypointz")) {
        dbg_waypointz(dbg, req);
        return;
    }
    json_t *st = zmeshd_xds_status(dbg->x);
    if (!st) {
        http1_respond_text(req, 500, "out of memory\n");
        return;
    }
    if (!strcmp(p, "/debug/syncz")) {
        respond_json(req, zmeshd_debug_syncz(st, dbg->id, dbg->cluster));
    } else if (!strcmp(p, "/debug/connections")) {
        respond_json(req, zmeshd_debug_connections(st, dbg->cluster));
    } else if (!strcmp(p, "/ready")) {
        if (int_of(st, "generations") > 0)
            http1_respond_text(req, 200, "ready\n");
        else
            http1_respond_text(req, 503, "not ready: no snapshot loaded yet\n");
    } else {
        size_t n = 0;
        char *m = zmeshd_debug_metrics(st, &n);
        if (m)
            http1_respond(req, 200, "text/plain; version=0.0.4; charset=utf-8", m, n);
        else
            http1_respond_text(req, 500, "out of memory\n");
        free(m);
    }
    json_decref(st);
}

int zmeshd_debug_new(struct loop *l, struct zmeshd_xds *x, const char *addr, const char *id,
                     const char *cluster, struct zmeshd_debug **out, char *err, size_t errlen)
{
    struct zmeshd_debug *dbg = calloc(1, sizeof(*dbg));
    int rc;
    *out = NULL;
    if (!dbg || !(dbg->srv = http1_server_new(l, "zmeshd::debug"))) {
        free(dbg);
        snprintf(err, errlen, "debug port: out of memory");
        return -ENOMEM;
    }
    dbg->x = x;
    snprintf(dbg->cluster, sizeof(dbg->cluster), "%s", cluster ? cluster : "");
    if (id && *id)
        snprintf(dbg->id, sizeof(dbg->id), "%s", id);
    else if (gethostname(dbg->id, sizeof(dbg->id) - 1) < 0)
        snprintf(dbg->id, sizeof(dbg->id), "zmeshd");
    char why[256], name[64];
    int fd = http1_listen(addr ? addr : ZMESHD_DEFAULT_DEBUG_LISTEN, &dbg->port, why, sizeof(why));
    if (fd < 0) {
        rc = fd;
        snprintf(err, errlen, "debug port: %s", why);
        goto fail;
    }
    snprintf(name, sizeof(name), "debug :%u", dbg->port);
    /* A few operators and one scraper: 16 connections; the rest as the side doors of ztunnel. */
    struct http1_limits lim = {.max_conns = 16};
    if ((rc = http1_server_listen(dbg->srv, fd, name, &lim, dbg_handle, dbg)) < 0) {
        snprintf(err, errlen, "debug port: %s", strerror(-rc));
        goto fail;
    }
    *out = dbg;
    return 0;
fail:
    http1_server_free(dbg->srv);
    free(dbg);
    return rc;
}

void zmeshd_debug_set_daemon(struct zmeshd_debug *dbg, struct zmeshd *d)
{
    dbg->d = d;
}

uint16_t zmeshd_debug_port(const struct zmeshd_debug *dbg)
{
    return dbg->port;
}

void zmeshd_debug_free(struct zmeshd_debug *dbg)
{
    if (!dbg) return;
    http1_server_free(dbg->srv);
    free(dbg);
}
