/* Waypoints (waypoint.h): istioctl's `waypoint` command on the local cluster, and the pure parts of zmesh
 * up's waypoint deployment controller (objects and status). */
#include "cli/waypoint.h"

#include <errno.h>
#include <getopt.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <yaml.h>

#include "cli/cluster.h"
#include "cli/cluster_ctl.h"
#include "cli/up.h"
#include "cli/zc.h"
#include "core/env.h"

#define EXIT_USAGE 2
/* istioctl's tables: text/tabwriter with padding 5. */
#define WP_TAB_PAD 5
/* An apply or delete through the controller may stop a pod (its grace period): as zmesh apply. */
#define WP_CALL_TIMEOUT_MS 120000
/* --wait polls the API server's view this often (istioctl ticks every second). */
#define WP_POLL_MS 250
#define WP_CLUSTER_DOMAIN "svc.cluster.local"
#define WP_TRUST_DOMAIN "cluster.local"
#define WP_CLUSTER_ID "Kubernetes"
#define WP_ISTIOD_HOST "istiod.istio-system.svc"
/* The alphabet of Kubernetes' generated names (k8s.io/apimachinery/pkg/util/rand: no vowels, no 0/1/3). */
static const char wp_alnum[] = "bcdfghjklmnpqrstvwxz2456789";

static const char *const wp_traffic_types[] = {"all", "none", "service", "workload", NULL};

/* ---- small JSON helpers ---- */

static const char *str_at(const json_t *o, const char *a, const char *b)
{
    const json_t *v = json_object_get(o, a);
    if (b) v = json_object_get(v, b);
    return json_string_value(v);
}

static const char *label_of(const json_t *o, const char *k)
{
    const char *v =
        json_string_value(json_object_get(json_object_get(json_object_get(o, "metadata"), "labels"), k));
    return v ? v : "";
}

static const char *annotation_of(const json_t *o, const char *k)
{
    const char *v =
        json_string_value(json_object_get(json_object_get(json_object_get(o, "metadata"), "annotations"), k));
    return v ? v : "";
}

/* ---- the Gateway istioctl makes, and YAML ---- */

json_t *wp_gateway_make(const char *ns, const char *name, const char *for_type)
{
    json_t *md = json_pack("{s:s}", "name", name);
    if (ns) json_object_set_new(md, "namespace", json_string(ns));
    if (for_type) json_object_set_new(md, "labels", json_pack("{s:s}", WP_LABEL_FOR, for_type));
    return json_pack("{s:s,s:s,s:o,s:{s:s,s:[{s:s,s:i,s:s}]}}", "apiVersion", WP_GATEWAY_API, "kind",
                     "Gateway", "metadata", md, "spec", "gatewayClassName", WP_CLASS, "listeners", "name",
                     "mesh", "port", WP_MESH_PORT, "protocol", "HBONE");
}

/* A string that YAML 1.1 (Go's yaml.v2) would read as something else is quoted, as yaml.v2 quotes it. */
static bool needs_quotes(const char *s)
{
    static const char *const words[] = {"",     "~",     "null",  "Null",  "NULL", "true", "True",
                                        "TRUE", "false", "False", "FALSE", "yes",  "Yes",  "YES",
                                        "no",   "No",    "NO",    "on",    "On",   "ON",   "off",
                                        "Off",  "OFF",   "y",     "Y",     "n",    "N",    NULL};
    for (const char *const *w = words; *w; w++)
        if (!strcmp(*w, s)) return true;
    char *end;
    errno = 0;
    (void)strtod(s, &end);
    return *end == '\0';
}

static int emit_scalar(yaml_emitter_t *e, const char *s, bool quote)
{
    yaml_event_t ev;
    yaml_scalar_event_initialize(&ev, NULL, NULL, (yaml_char_t *)s, (int)strlen(s), 1, 1,
                                 quote ? YAML_DOUBLE_QUOTED_SCALAR_STYLE : YAML_ANY_SCALAR_STYLE);
    return yaml_emitter_emit(e, &ev) ? 0 : -EIO;
}

static int key_cmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int emit_node(yaml_emitter_t *e, const json_t *v)
{
    yaml_event_t ev;
    char num[64];
    int rc = 0;
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        size_t n = json_object_size(v), i = 0;
        const char **keys = calloc(n ? n : 1, sizeof(*keys));
        const char *k;
        json_t *x;
        if (!keys) return -ENOMEM;
        json_object_foreach((json_t *)v, k, x) keys[i++] = k;
        qsort(keys, n, sizeof(*keys), key_cmp); /* sigs.k8s.io/yaml goes through a map: keys sorted */
        yaml_mapping_start_event_initialize(&ev, NULL, NULL, 1, YAML_BLOCK_MAPPING_STYLE);
        if (!yaml_emitter_emit(e, &ev)) rc = -EIO;
        for (i = 0; !rc && i < n; i++)
            if (!(rc = emit_scalar(e, keys[i], needs_quotes(keys[i]))))
                rc = emit_node(e, json_object_get(v, keys[i]));
        free(keys);
        if (rc) return rc;
        yaml_mapping_end_event_initialize(&ev);
        return yaml_emitter_emit(e, &ev) ? 0 : -EIO;
    }
    case JSON_ARRAY: {
        size_t i;
        json_t *x;
        yaml_sequence_start_event_initialize(&ev, NULL, NULL, 1, YAML_BLOCK_SEQUENCE_STYLE);
        if (!yaml_emitter_emit(e, &ev)) return -EIO;
        json_array_foreach(v, i, x) if ((rc = emit_node(e, x))) return rc;
        yaml_sequence_end_event_initialize(&ev);
        return yaml_emitter_emit(e, &ev) ? 0 : -EIO;
    }
    case JSON_STRING:
        return emit_scalar(e, json_string_value(v), needs_quotes(json_string_value(v)));
    case JSON_INTEGER:
        snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return emit_scalar(e, num, false);
    case JSON_REAL:
        snprintf(num, sizeof(num), "%.17g", json_real_value(v));
        return emit_scalar(e, num, false);
    case JSON_TRUE:
        return emit_scalar(e, "true", false);
    case JSON_FALSE:
        return emit_scalar(e, "false", false);
    default:
        return emit_scalar(e, "null", false);
    }
}

struct ybuf {
    char *p;
    size_t len, cap;
};

static int ybuf_write(void *data, unsigned char *buf, size_t size)
{
    struct ybuf *b = data;
    if (b->len + size + 1 > b->cap) {
        size_t nc = (b->len + size + 1) * 2;
        char *np = realloc(b->p, nc);
        if (!np) return 0;
        b->p = np;
        b->cap = nc;
    }
    memcpy(b->p + b->len, buf, size);
    b->len += size;
    b->p[b->len] = '\0';
    return 1;
}

char *wp_yaml(const json_t *o)
{
    yaml_emitter_t e;
    yaml_event_t ev;
    struct ybuf b = {0};
    if (!yaml_emitter_initialize(&e)) return NULL;
    yaml_emitter_set_output(&e, ybuf_write, &b);
    yaml_emitter_set_indent(&e, 2);
    yaml_emitter_set_width(&e, -1);
    yaml_emitter_set_unicode(&e, 1);
    bool ok = yaml_stream_start_event_initialize(&ev, YAML_UTF8_ENCODING) && yaml_emitter_emit(&e, &ev) &&
              yaml_document_start_event_initialize(&ev, NULL, NULL, NULL, 1) && yaml_emitter_emit(&e, &ev) &&
              emit_node(&e, o) == 0 && yaml_document_end_event_initialize(&ev, 1) &&
              yaml_emitter_emit(&e, &ev) && yaml_stream_end_event_initialize(&ev) &&
              yaml_emitter_emit(&e, &ev);
    yaml_emitter_delete(&e);
    if (!ok) {
        free(b.p);
        return NULL;
    }
    return b.p;
}

/* ---- what the controller reads ---- */

bool wp_is_gateway(const json_t *o)
{
    const char *av = json_string_value(json_object_get(o, "apiVersion"));
    return !strcmp(cluster_obj_kind(o), "Gateway") && av &&
           (!strcmp(av, WP_GATEWAY_GROUP "/v1") || !strcmp(av, WP_GATEWAY_GROUP "/v1beta1"));
}

bool wp_is_waypoint(const json_t *o)
{
    const char *c = str_at(o, "spec", "gatewayClassName");
    return wp_is_gateway(o) && c && !strcmp(c, WP_CLASS);
}

int wp_gateway_check(const json_t *gw, char *err, size_t errlen, json_t *warnings)
{
    const char *name = cluster_obj_name(gw), *ns = cluster_obj_ns(gw);
    const json_t *spec = json_object_get(gw, "spec");
#define BAD(...)                                                                                             \
    do {                                                                                                     \
        int k_ = snprintf(err, errlen, "gateway/%s (namespace %s): ", name, ns);                             \
        snprintf(err + (k_ > 0 && (size_t)k_ < errlen ? k_ : 0),                                             \
                 errlen - (k_ > 0 && (size_t)k_ < errlen ? k_ : 0), __VA_ARGS__);                            \
        return -EINVAL;                                                                                      \
    } while (0)
    if (!json_is_object(spec)) BAD("spec: required field is missing");
    if (!json_is_string(json_object_get(spec, "gatewayClassName")))
        BAD("spec.gatewayClassName: expected a string");
    const json_t *ls = json_object_get(spec, "listeners"), *l;
    if (ls && !json_is_array(ls)) BAD("spec.listeners: expected a list");
    if (json_array_size(ls) > WP_LISTENERS_MAX)
        BAD("spec.listeners: %zu listeners, at most %d (the Gateway API's limit)", json_array_size(ls),
            WP_LISTENERS_MAX);
    size_t i;
    json_array_foreach(ls, i, l)
    {
        const json_t *port = json_object_get(l, "port");
        if (!json_is_object(l)) BAD("spec.listeners[%zu]: expected an object", i);
        if (!json_is_string(json_object_get(l, "name")) || !*json_string_value(json_object_get(l, "name")))
            BAD("spec.listeners[%zu].name: required string", i);
        if (!json_is_integer(port) || json_integer_value(port) < 1 || json_integer_value(port) > 65535)
            BAD("spec.listeners[%zu].port: expected an integer 1-65535", i);
        if (!json_is_string(json_object_get(l, "protocol")))
            BAD("spec.listeners[%zu].protocol: required string", i);
    }
    static const char *const anns[] = {WP_ANN_NAME_OVERRIDE, WP_ANN_SERVICE_ACCOUNT};
    for (size_t k = 0; k < 2; k++) {
        const json_t *a =
            json_object_get(json_object_get(json_object_get(gw, "metadata"), "annotations"), anns[k]);
        if (!a) continue;
        if (!json_is_string(a) || !cluster_dns_label(json_string_value(a)))
            BAD("metadata.annotations.%s: expected a DNS label (lowercase letters, digits, '-', at most 63)",
                anns[k]);
    }
    const json_t *labels = json_object_get(json_object_get(gw, "metadata"), "labels");
    const char *f = json_string_value(json_object_get(labels, WP_LABEL_FOR));
    if (json_object_get(labels, WP_LABEL_FOR)) {
        bool ok = false;
        for (const char *const *t = wp_traffic_types; f && *t; t++)
            ok |= !strcmp(*t, f);
        if (!ok) BAD("metadata.labels.%s: must be one of all, none, service, workload", WP_LABEL_FOR);
    }
    char line[400];
    if (warnings && json_object_get(spec, "addresses")) {
        snprintf(line, sizeof(line),
                 "gateway/%s (namespace %s): spec.addresses: not used by zmesh up's waypoint controller (the "
                 "address is the Service's hostname)",
                 name, ns);
        json_array_append_new(warnings, json_string(line));
    }
    if (warnings && json_object_get(json_object_get(spec, "infrastructure"), "parametersRef")) {
        snprintf(
            line, sizeof(line),
            "gateway/%s (namespace %s): spec.infrastructure.parametersRef: not supported by zmesh up; the "
            "default waypoint template is used",
            name, ns);
        json_array_append_new(warnings, json_string(line));
    }
#undef BAD
    return 0;
}

void wp_names(const json_t *gw, char *deploy, size_t dn, char *sa, size_t sn)
{
    const char *o = annotation_of(gw, WP_ANN_NAME_OVERRIDE), *s = annotation_of(gw, WP_ANN_SERVICE_ACCOUNT);
    snprintf(deploy, dn, "%s", *o ? o : cluster_obj_name(gw));
    snprintf(sa, sn, "%s", *s ? s : deploy);
}

/* ---- the managed objects (the waypoint template) ---- */

/* Labels every managed object carries: spec.infrastructure.labels, then the controller's own. */
static json_t *managed_labels(const json_t *gw)
{
    json_t *l = json_object();
    const char *k;
    json_t *v;
    json_object_foreach(
        json_object_get(json_object_get(json_object_get(gw, "spec"), "infrastructure"), "labels"), k,
        v) if (json_is_string(v)) json_object_set(l, k, v);
    json_object_set_new(l, WP_LABEL_GATEWAY_NAME, json_string(cluster_obj_name(gw)));
    json_object_set_new(l, WP_LABEL_CLASS_NAME, json_string(WP_CLASS));
    json_object_set_new(l, WP_LABEL_MANAGED, json_string(WP_MANAGED_VALUE));
    return l;
}

static json_t *managed_meta(const json_t *gw, const char *name)
{
    const char *uid = str_at(json_object_get(gw, "metadata"), "uid", NULL);
    json_t *owner = json_pack("{s:s,s:s,s:s}", "apiVersion", WP_GATEWAY_API, "kind", "Gateway", "name",
                              cluster_obj_name(gw));
    if (uid) json_object_set_new(owner, "uid", json_string(uid));
    return json_pack("{s:s,s:s,s:o,s:[o]}", "name", name, "namespace", cluster_obj_ns(gw), "labels",
                     managed_labels(gw), "ownerReferences", owner);
}

json_t *wp_service_account(const json_t *gw)
{
    char deploy[WP_NAME_MAX + 1], sa[WP_NAME_MAX + 1];
    wp_names(gw, deploy, sizeof(deploy), sa, sizeof(sa));
    return json_pack("{s:s,s:s,s:o}", "apiVersion", "v1", "kind", "ServiceAccount", "metadata",
                     managed_meta(gw, sa));
}

/* A listener name as a Service port name (istiod's sanitizeListenerNameForPort: lowercase, '.' and other
 * characters to single '-', trimmed, at most 63). */
static void port_name(const char *in, char *out, size_t n)
{
    size_t o = 0;
    bool dash = false;
    for (const char *c = in; *c && o + 1 < n && o < WP_NAME_MAX; c++) {
        char ch = (char)(*c >= 'A' && *c <= 'Z' ? *c + 32 : *c);
        if ((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9')) {
            out[o++] = ch;
            dash = false;
        } else if (o > 0 && !dash) {
            out[o++] = '-';
            dash = true;
        }
    }
    while (o > 0 && out[o - 1] == '-')
        o--;
    out[o] = '\0';
}

json_t *wp_service(const json_t *gw)
{
    char deploy[WP_NAME_MAX + 1], sa[WP_NAME_MAX + 1];
    wp_names(gw, deploy, sizeof(deploy), sa, sizeof(sa));
    json_t *ports = json_array();
    json_array_append_new(ports, json_pack("{s:s,s:i,s:s,s:s}", "name", "status-port", "port", WP_STATUS_PORT,
                                           "protocol", "TCP", "appProtocol", "tcp"));
    size_t i;
    json_t *l;
    json_array_foreach(json_object_get(json_object_get(gw, "spec"), "listeners"), i, l)
    {
        json_int_t port = json_integer_value(json_object_get(l, "port"));
        bool seen = port == WP_STATUS_PORT;
        size_t j;
        json_t *p;
        json_array_foreach(ports, j, p) seen |= json_integer_value(json_object_get(p, "port")) == port;
        if (seen) continue;
        char pn[WP_NAME_MAX + 32], app[24];
        const char *proto = str_at(l, "protocol", NULL);
        port_name(str_at(l, "name", NULL), pn, sizeof(pn));
        size_t k = 0;
        for (; proto[k] && k + 1 < sizeof(app); k++)
            app[k] = (char)(proto[k] >= 'A' && proto[k] <= 'Z' ? proto[k] + 32 : proto[k]);
        app[k] = '\0';
        if (!*pn) snprintf(pn, sizeof(pn), "%s-%zu", app, i);
        json_array_append_new(ports, json_pack("{s:s,s:I,s:s,s:s}", "name", pn, "port", (json_int_t)port,
                                               "protocol", "TCP", "appProtocol", app));
    }
    json_t *md = managed_meta(gw, deploy);
    json_object_set_new(md, "annotations",
                        json_pack("{s:s}", "networking.istio.io/traffic-distribution", "PreferClose"));
    return json_pack("{s:s,s:s,s:o,s:{s:s,s:o,s:{s:s},s:s}}", "apiVersion", "v1", "kind", "Service",
                     "metadata", md, "spec", "ipFamilyPolicy", "PreferDualStack", "ports", ports, "selector",
                     WP_LABEL_GATEWAY_NAME, cluster_obj_name(gw), "type", "ClusterIP");
}

static void env_add(json_t *env, const char *k, const char *v)
{
    json_array_append_new(env, json_pack("{s:s,s:s}", "name", k, "value", v));
}

json_t *wp_pod(const json_t *gw, const struct wp_pod_params *p)
{
    char deploy[WP_NAME_MAX + 1], sa[WP_NAME_MAX + 1], cmd[CLUSTER_PATH_MAX + 16];
    wp_names(gw, deploy, sizeof(deploy), sa, sizeof(sa));
    snprintf(cmd, sizeof(cmd), "%s/waypoint", p->bin_dir);
    json_t *md = managed_meta(gw, p->pod_name), *labels = json_object_get(md, "labels");
    /* The template's pod labels: ztunnel must not capture its own waypoint (dataplane-mode none). */
    json_object_set_new(labels, "sidecar.istio.io/inject", json_string("false"));
    json_object_set_new(labels, "istio.io/dataplane-mode", json_string("none"));
    json_object_set_new(labels, "service.istio.io/canonical-name", json_string(deploy));
    json_object_set_new(labels, "service.istio.io/canonical-revision", json_string("latest"));
    json_object_set_new(md, "annotations",
                        json_pack("{s:s,s:s,s:s,s:s}", "istio.io/rev", "default", "prometheus.io/path",
                                  "/stats/prometheus", "prometheus.io/port", "15020", "prometheus.io/scrape",
                                  "true"));
    if (p->pod_uid) json_object_set_new(md, "uid", json_string(p->pod_uid));
    json_t *env = json_array();
    env_add(env, "XDS_ADDRESS", p->xds);
    env_add(env, "CA_ADDRESS", p->xds);
    env_add(env, "XDS_ROOT_CA", p->root_ca);
    env_add(env, "CA_ROOT_CA", p->root_ca);
    env_add(env, "ALT_XDS_HOSTNAME", WP_ISTIOD_HOST);
    env_add(env, "ALT_CA_HOSTNAME", WP_ISTIOD_HOST);
    env_add(env, "AUTH_TOKEN", p->token);
    env_add(env, "POD_NAME", p->pod_name);
    env_add(env, "POD_NAMESPACE", cluster_obj_ns(gw));
    env_add(env, "SERVICE_ACCOUNT", sa);
    env_add(env, "NODE_NAME", p->node);
    env_add(env, "TRUST_DOMAIN", WP_TRUST_DOMAIN);
    env_add(env, "CLUSTER_ID", WP_CLUSTER_ID);
    env_add(env, "GATEWAY_NAME", cluster_obj_name(gw));
    /* zmesh up has no startupProbe (the template's covers the first 30 s at 1 s): a short readiness period
     * instead, so a fresh waypoint is Ready within a second or two of answering. */
    json_t *probe =
        json_pack("{s:{s:s,s:i,s:s},s:i,s:i,s:i,s:i,s:i}", "httpGet", "path", "/healthz/ready", "port",
                  WP_STATUS_PORT, "scheme", "HTTP", "initialDelaySeconds", 0, "periodSeconds", 1,
                  "timeoutSeconds", 1, "successThreshold", 1, "failureThreshold", 4);
    json_t *ports = json_pack("[{s:i,s:s,s:s},{s:i,s:s,s:s}]", "containerPort", WP_METRICS_PORT, "name",
                              "metrics", "protocol", "TCP", "containerPort", WP_STATUS_PORT, "name",
                              "status-port", "protocol", "TCP");
    json_t *c = json_pack("{s:s,s:[s],s:o,s:o,s:o}", "name", "istio-proxy", "command", cmd, "env", env,
                          "ports", ports, "readinessProbe", probe);
    if (p->workdir && *p->workdir) json_object_set_new(c, "workingDir", json_string(p->workdir));
    return json_pack("{s:s,s:s,s:o,s:{s:s,s:s,s:[o]}}", "apiVersion", "v1", "kind", "Pod", "metadata", md,
                     "spec", "serviceAccountName", sa, "nodeName", p->node, "containers", c);
}

bool wp_managed_by(const json_t *o, const char *ns, const char *gw)
{
    return !strcmp(label_of(o, WP_LABEL_MANAGED), WP_MANAGED_VALUE) &&
           !strcmp(label_of(o, WP_LABEL_GATEWAY_NAME), gw) && !strcmp(cluster_obj_ns(o), ns);
}

void wp_pod_name(const char *deploy, const unsigned char *rnd, char *buf, size_t n)
{
    char h[11], s[6];
    for (int i = 0; i < 10; i++)
        h[i] = wp_alnum[rnd[i] % (sizeof(wp_alnum) - 1)];
    h[10] = '\0';
    for (int i = 0; i < 5; i++)
        s[i] = wp_alnum[rnd[10 + i] % (sizeof(wp_alnum) - 1)];
    s[5] = '\0';
    char prefix[CLUSTER_PATH_MAX];
    snprintf(prefix, sizeof(prefix), "%s-%s-", deploy, h);
    if (strlen(prefix) > WP_POD_PREFIX_MAX) prefix[WP_POD_PREFIX_MAX] = '\0';
    snprintf(buf, n, "%s%s", prefix, s);
}

/* ---- status ---- */

static int str_cmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The listener ports, distinct, as "<host>:<port>" strings sorted as text (istiod's sets.SortedList). */
static size_t host_ports(const json_t *gw, const char *host, char (*out)[300], size_t max)
{
    size_t n = 0, i;
    json_t *l;
    json_array_foreach(json_object_get(json_object_get(gw, "spec"), "listeners"), i, l)
    {
        char hp[300];
        snprintf(hp, sizeof(hp), "%.256s:%" JSON_INTEGER_FORMAT, host,
                 json_integer_value(json_object_get(l, "port")));
        bool dup = false;
        for (size_t j = 0; j < n; j++)
            dup |= !strcmp(out[j], hp);
        if (!dup && n < max) snprintf(out[n++], sizeof(out[0]), "%s", hp);
    }
    const char *ptrs[WP_LISTENERS_MAX];
    for (size_t j = 0; j < n; j++)
        ptrs[j] = out[j];
    qsort(ptrs, n, sizeof(*ptrs), str_cmp);
    char tmp[WP_LISTENERS_MAX][300];
    for (size_t j = 0; j < n; j++)
        snprintf(tmp[j], sizeof(tmp[j]), "%s", ptrs[j]);
    memcpy(out, tmp, n * sizeof(tmp[0]));
    return n;
}

static json_t *condition(const json_t *old_status, const char *type, bool ok, const char *reason,
                         const char *msg, const char *now)
{
    const char *ts = now;
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(old_status, "conditions"), i, c)
    {
        const char *t = str_at(c, "type", NULL), *s = str_at(c, "status", NULL),
                   *lt = str_at(c, "lastTransitionTime", NULL);
        if (t && s && lt && !strcmp(t, type) && !strcmp(s, ok ? "True" : "False")) ts = lt;
    }
    return json_pack("{s:s,s:s,s:s,s:s,s:s}", "type", type, "status", ok ? "True" : "False", "reason", reason,
                     "message", msg, "lastTransitionTime", ts);
}

json_t *wp_gateway_status(const json_t *gw, bool ready, const char *now)
{
    char deploy[WP_NAME_MAX + 1], sa[WP_NAME_MAX + 1], host[256], msg[WP_LISTENERS_MAX * 320];
    char hp[WP_LISTENERS_MAX][300];
    wp_names(gw, deploy, sizeof(deploy), sa, sizeof(sa));
    snprintf(host, sizeof(host), "%s.%s.%s", deploy, cluster_obj_ns(gw), WP_CLUSTER_DOMAIN);
    const json_t *old = json_object_get(gw, "status");
    size_t n = host_ports(gw, host, hp, WP_LISTENERS_MAX);
    json_t *st = json_object(), *conds = json_array();
    json_array_append_new(conds, condition(old, "Accepted", true, "Accepted", "Resource accepted", now));
    size_t len = 0;
    if (ready) {
        /* istiod: "Resource programmed, assigned to service(s) a, b, and c" (humanReadableJoin). */
        len = (size_t)snprintf(msg, sizeof(msg), "Resource programmed");
        for (size_t i = 0; i < n && len < sizeof(msg); i++)
            len += (size_t)snprintf(msg + len, sizeof(msg) - len, "%s%s",
                                    i == 0       ? ", assigned to service(s) "
                                    : n == 2     ? " and "
                                    : i + 1 == n ? ", and "
                                                 : ", ",
                                    hp[i]);
        json_array_append_new(conds, condition(old, "Programmed", true, "Programmed", msg, now));
        json_object_set_new(st, "addresses", json_pack("[{s:s,s:s}]", "type", "Hostname", "value", host));
    } else {
        /* istiod's ResolveGatewayInstances finds the Service but no ready endpoint: one warning per listener
         * port, the reason AddressNotAssigned (every address usable, none assigned). */
        len = (size_t)snprintf(msg, sizeof(msg), "Failed to assign to any requested addresses");
        for (size_t i = 0; i < n && len < sizeof(msg); i++)
            len += (size_t)snprintf(msg + len, sizeof(msg) - len, "%sno instances found for hostname \"%s\"",
                                    i ? "; " : ": ", host);
        json_array_append_new(conds, condition(old, "Programmed", false, "AddressNotAssigned", msg, now));
    }
    json_object_set_new(st, "conditions", conds);
    return st;
}

bool wp_programmed(const json_t *gw)
{
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(json_object_get(gw, "status"), "conditions"), i, c)
    {
        const char *t = str_at(c, "type", NULL), *s = str_at(c, "status", NULL);
        if (t && s && !strcmp(t, "Programmed") && !strcmp(s, "True")) return true;
    }
    return false;
}

/* ---- tables ---- */

static int gw_cmp(const void *a, const void *b)
{
    const json_t *x = *(const json_t *const *)a, *y = *(const json_t *const *)b;
    int r = strcmp(cluster_obj_ns(x), cluster_obj_ns(y));
    return r ? r : strcmp(cluster_obj_name(x), cluster_obj_name(y));
}

/* The waypoint Gateways of gws, sorted; *n set. Caller frees the array (borrowed elements). */
static const json_t **sorted_waypoints(const json_t *gws, size_t *n)
{
    size_t i, k = 0;
    json_t *g;
    const json_t **v = calloc(json_array_size(gws) + 1, sizeof(*v));
    if (!v) return NULL;
    json_array_foreach(gws, i, g) if (wp_is_waypoint(g)) v[k++] = g;
    qsort(v, k, sizeof(*v), gw_cmp);
    *n = k;
    return v;
}

int wp_list_render(FILE *out, const json_t *gws, bool all_ns)
{
    /* As istioctl: the emptiness check comes before the class filter. */
    if (!json_array_size(gws)) return fprintf(out, "No waypoints found.\n") < 0 ? -EIO : 0;
    size_t n = 0, off = all_ns ? 0 : 1;
    const json_t **v = sorted_waypoints(gws, &n);
    struct zc_table *t = zc_table_new(5 - off, WP_TAB_PAD);
    int rc = -ENOMEM;
    if (!v || !t) goto out;
    static const char *const head[] = {"NAMESPACE", "NAME", "REVISION", "TRAFFIC TYPE", "PROGRAMMED"};
    if (zc_table_row(t, head + off)) goto out;
    for (size_t i = 0; i < n; i++) {
        const char *rev = label_of(v[i], WP_LABEL_REV), *tt = label_of(v[i], WP_LABEL_FOR), *prog = "False";
        size_t j;
        json_t *c;
        json_array_foreach(json_object_get(json_object_get(v[i], "status"), "conditions"), j, c)
        {
            const char *ty = str_at(c, "type", NULL), *s = str_at(c, "status", NULL);
            if (ty && s && !strcmp(ty, "Programmed")) prog = s;
        }
        /* istioctl shows "none" for a Gateway without the label (istiod then treats it as "service"). */
        const char *row[] = {cluster_obj_ns(v[i]), cluster_obj_name(v[i]), *rev ? rev : "default",
                             *tt ? tt : "none", prog};
        if (zc_table_row(t, row + off)) goto out;
    }
    rc = zc_table_flush(t, out);
    t = NULL;
out:
    zc_table_free(t);
    free(v);
    return rc;
}

int wp_status_render(FILE *out, const json_t *gws, bool with_ns)
{
    if (!json_array_size(gws)) return fprintf(out, "No waypoints found.\n") < 0 ? -EIO : 0;
    size_t n = 0, off = with_ns ? 0 : 1;
    const json_t **v = sorted_waypoints(gws, &n);
    struct zc_table *t = zc_table_new(6 - off, WP_TAB_PAD);
    int rc = -ENOMEM;
    if (!v || !t) goto out;
    static const char *const head[] = {"NAMESPACE", "NAME", "STATUS", "TYPE", "REASON", "MESSAGE"};
    if (zc_table_row(t, head + off)) goto out;
    for (size_t i = 0; i < n; i++) {
        size_t j;
        json_t *c;
        json_t *conds = json_object_get(json_object_get(v[i], "status"), "conditions");
        if (!json_array_size(conds)) {
            /* No status yet (no controller wrote one): the row istioctl prints from an empty condition. */
            const char *row[] = {cluster_obj_ns(v[i]), cluster_obj_name(v[i]), "", "", "", ""};
            if (zc_table_row(t, row + off)) goto out;
        }
        json_array_foreach(conds, j, c)
        {
            const char *s = str_at(c, "status", NULL), *ty = str_at(c, "type", NULL),
                       *re = str_at(c, "reason", NULL), *m = str_at(c, "message", NULL);
            const char *row[] = {cluster_obj_ns(v[i]), cluster_obj_name(v[i]), s ? s : "",
                                 ty ? ty : "",         re ? re : "",           m ? m : ""};
            if (zc_table_row(t, row + off)) goto out;
        }
    }
    rc = zc_table_flush(t, out);
    t = NULL;
out:
    zc_table_free(t);
    free(v);
    return rc;
}

/* ---- the command ---- */

static const char usage_wp[] =
    "Manage waypoints (istioctl waypoint): the Gateway of class istio-waypoint that zmesh up's controller\n"
    "turns into a ServiceAccount, a Service and a waypoint pod.\n"
    "\n"
    "Usage:\n"
    "  zmesh waypoint generate [-n NS] [--name N] [--for T]\n"
    "  zmesh waypoint apply    [-n NS] [--name N] [--for T] [--enroll-namespace [--overwrite]] [-w]\n"
    "                          [--waypoint-timeout D]\n"
    "  zmesh waypoint list     [-n NS | -A] [--name N]\n"
    "  zmesh waypoint status   [-n NS] [--name N] [-w] [--waypoint-timeout D]\n"
    "  zmesh waypoint delete   <name>... | --all  [-n NS]\n"
    "\n"
    "Flags:\n"
    "  -n, --namespace NS          the namespace (default \"default\")\n"
    "      --name N                the waypoint's name (default \"waypoint\")\n"
    "      --for T                 traffic type: all, none, service, workload (label istio.io/waypoint-for;\n"
    "                              without it istiod's default, service, applies)\n"
    "      --enroll-namespace      label the namespace istio.io/use-waypoint=<name> (apply)\n"
    "      --overwrite             replace the namespace's existing istio.io/use-waypoint (apply)\n"
    "  -w, --wait                  wait until the waypoint is Programmed (apply, status)\n"
    "      --waypoint-timeout D    how long --wait waits (default 1m30s)\n"
    "  -A, --all-namespaces        every namespace (list)\n"
    "      --all                   every waypoint of the namespace (delete)\n"
    "      --state-dir DIR         the local cluster (default $ZMESH_STATE_DIR, else /run/zmesh)\n"
    "  -h, --help                  this help\n";

enum {
    O_NAME = 256,
    O_FOR,
    O_ENROLL,
    O_OVERWRITE,
    O_TIMEOUT,
    O_ALL,
    O_STATE,
};

struct wp_opts {
    const char *sub, *ns, *name, *for_type, *state_in;
    bool ns_given, name_given, enroll, overwrite, wait, all_ns, all;
    uint64_t timeout_ms;
    char state[CLUSTER_PATH_MAX];
};

static int wp_usage(const char *fmt, const char *arg)
{
    fputs("Error: ", stderr);
    fprintf(stderr, fmt, arg);
    fputs("\n\n", stderr);
    fputs(usage_wp, stderr);
    return EXIT_USAGE;
}

/* Which flags each subcommand takes (istioctl's: --name is persistent, the others per subcommand). */
static bool flag_allowed(const char *sub, int id)
{
    static const struct {
        const char *sub;
        int ids[12];
    } allow[] = {
        {"generate", {'n', O_NAME, O_FOR, O_STATE, 0}},
        {"apply", {'n', O_NAME, O_FOR, O_ENROLL, O_OVERWRITE, 'w', O_TIMEOUT, O_STATE, 0}},
        {"list", {'n', O_NAME, 'A', O_STATE, 0}},
        {"status", {'n', O_NAME, 'w', O_TIMEOUT, O_STATE, 0}},
        {"delete", {'n', O_ALL, O_STATE, 0}}, /* names are arguments */
    };
    for (size_t i = 0; i < sizeof(allow) / sizeof(allow[0]); i++)
        if (!strcmp(allow[i].sub, sub))
            for (int j = 0; allow[i].ids[j]; j++)
                if (allow[i].ids[j] == id) return true;
    return false;
}

/* Parses argv (from the subcommand on); positional arguments stay at argv[optind..]. Returns 0, -1 after
 * --help (printed), or EXIT_USAGE (the error printed). */
static int wp_parse(int argc, char **argv, struct wp_opts *o)
{
    static const struct option opts[] = {
        {"namespace", required_argument, NULL, 'n'},
        {"name", required_argument, NULL, O_NAME},
        {"for", required_argument, NULL, O_FOR},
        {"enroll-namespace", no_argument, NULL, O_ENROLL},
        {"overwrite", no_argument, NULL, O_OVERWRITE},
        {"wait", no_argument, NULL, 'w'},
        {"waypoint-timeout", required_argument, NULL, O_TIMEOUT},
        {"all-namespaces", no_argument, NULL, 'A'},
        {"all", no_argument, NULL, O_ALL},
        {"state-dir", required_argument, NULL, O_STATE},
        {"revision", required_argument, NULL, 'r'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    memset(o, 0, sizeof(*o));
    o->sub = argv[0];
    o->ns = "default";
    o->name = WP_DEFAULT_NAME;
    o->timeout_ms = WP_DEFAULT_TIMEOUT_MS;
    const char *env = getenv("ZMESH_STATE_DIR");
    o->state_in = env && *env ? env : CLUSTER_DEFAULT_STATE;
    optind = 1;
    opterr = 0;
    int ch;
    while ((ch = getopt_long(argc, argv, ":hn:wAr:", opts, NULL)) != -1) {
        if (ch == 'h') {
            fputs(usage_wp, stdout);
            return -1;
        }
        if (ch == ':') return wp_usage("flag needs an argument: %s", argv[optind - 1]);
        if (ch == 'r')
            return wp_usage(
                "%s: revisions are not supported: zmesh up has one control plane (revision default)",
                "--revision");
        if (ch == '?' || !flag_allowed(o->sub, ch)) return wp_usage("unknown flag: %s", argv[optind - 1]);
        switch (ch) {
        case 'n':
            o->ns = optarg;
            o->ns_given = true;
            break;
        case O_NAME:
            o->name = optarg;
            o->name_given = true;
            break;
        case O_FOR:
            o->for_type = optarg;
            break;
        case O_ENROLL:
            o->enroll = true;
            break;
        case O_OVERWRITE:
            o->overwrite = true;
            break;
        case 'w':
            o->wait = true;
            break;
        case O_TIMEOUT:
            if (duration_parse_ms(optarg, &o->timeout_ms))
                return wp_usage("invalid argument \"%s\" for \"--waypoint-timeout\" flag: not a duration",
                                optarg);
            break;
        case 'A':
            o->all_ns = true;
            break;
        case O_ALL:
            o->all = true;
            break;
        case O_STATE:
            o->state_in = optarg;
            break;
        }
    }
    /* istioctl: an empty name means the default; "none" is the opt-out value of istio.io/use-waypoint. */
    if (!*o->name) o->name = WP_DEFAULT_NAME;
    if (!strcmp(o->name, "none"))
        return wp_usage(
            "%s", "failed to create gateway: invalid name provided for waypoint, 'none' is a reserved value");
    if (!cluster_dns_label(o->name)) return wp_usage("--name: \"%s\" is not a DNS label", o->name);
    if (!cluster_dns_label(o->ns)) return wp_usage("--namespace: \"%s\" is not a DNS label", o->ns);
    if (o->for_type) {
        bool ok = false;
        for (const char *const *t = wp_traffic_types; *t; t++)
            ok |= !strcmp(*t, o->for_type);
        if (!ok) {
            fprintf(stderr,
                    "Error: failed to create gateway: invalid traffic type: %s. Valid options are: [all none "
                    "service "
                    "workload]\n\n%s",
                    o->for_type, usage_wp);
            return EXIT_USAGE;
        }
    }
    if (o->overwrite && !o->enroll) return wp_usage("%s", "--overwrite only applies with --enroll-namespace");
    if (up_state_abs(o->state_in, o->state, sizeof(o->state)))
        return wp_usage("--state-dir: %s", "invalid path");
    return 0;
}

static int call(const char *state, json_t *req, json_t **resp)
{
    char err[1024];
    int rc = ctl_call(state, req, resp, WP_CALL_TIMEOUT_MS, err, sizeof(err));
    json_decref(req);
    if (rc) {
        fprintf(stderr, "Error: %s\n", err);
        return 1;
    }
    if (!json_is_true(json_object_get(*resp, "ok"))) {
        fprintf(stderr, "Error: %s\n",
                str_at(*resp, "error", NULL) ? str_at(*resp, "error", NULL) : "failed");
        json_decref(*resp);
        *resp = NULL;
        return 1;
    }
    return 0;
}

/* The cluster's API server view must exist: else say how to get one. */
static int need_cluster(const struct wp_opts *o)
{
    char api[CLUSTER_PATH_MAX + 8];
    snprintf(api, sizeof(api), "%s/api", o->state);
    if (access(api, F_OK) == 0) return 0;
    fprintf(stderr, "Error: no local cluster in %s (start one with zmesh up, or pass --state-dir)\n",
            o->state);
    return 1;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* istioctl applies its Gateway with server-side apply: fields it does not set stay as they are. So do the
 * existing Gateway's other labels (istio.io/waypoint-for too, unless --for sets it), its annotations and its
 * other spec fields (spec.infrastructure ...); the class and the listeners are istioctl's. */
static void wp_merge_existing(json_t *gw, const json_t *cur)
{
    json_t *md = json_object_get(gw, "metadata"), *cmd = json_object_get(cur, "metadata");
    const char *k;
    json_t *v;
    json_t *labels = json_object_get(md, "labels");
    json_object_foreach(json_object_get(cmd, "labels"), k, v)
    {
        if (!labels) json_object_set_new(md, "labels", labels = json_object());
        if (!json_object_get(labels, k)) json_object_set(labels, k, v);
    }
    if (json_is_object(json_object_get(cmd, "annotations")))
        json_object_set(md, "annotations", json_object_get(cmd, "annotations"));
    json_t *spec = json_object_get(gw, "spec");
    json_object_foreach(json_object_get(cur, "spec"), k, v) if (!json_object_get(spec, k))
        json_object_set(spec, k, v);
}

static int wp_apply(struct wp_opts *o)
{
    if (need_cluster(o)) return 1;
    json_t *nso = up_api_get(o->state, "Namespace", "", o->ns);
    if (!nso) {
        fprintf(stderr, "Error: namespace: %s not found\n", o->ns);
        return 1;
    }
    bool has_wp = *label_of(nso, WP_LABEL_USE) != '\0';
    bool ambient = !strcmp(label_of(nso, "istio.io/dataplane-mode"), "ambient");
    json_decref(nso);
    if (o->enroll) {
        if (!o->overwrite && has_wp) {
            /* istioctl warns and applies nothing. */
            printf("⚠️ Warning: namespace (%s) already has an enrolled Waypoint. Consider adding the "
                   "`--overwrite` "
                   "flag to your apply command.\n",
                   o->ns);
            return 0;
        }
        if (!ambient)
            printf("⚠️ Warning: namespace is not enrolled in ambient. Consider running\t`zmesh label "
                   "namespace %s "
                   "istio.io/dataplane-mode=ambient`\n",
                   o->ns);
    }
    json_t *gw = wp_gateway_make(o->ns, o->name, o->for_type), *resp = NULL;
    json_t *cur = up_api_get(o->state, "Gateway", o->ns, o->name);
    if (cur) wp_merge_existing(gw, cur);
    json_decref(cur);
    json_t *req = json_pack("{s:s,s:[o],s:s}", "op", "apply", "objects", gw, "workdir", "");
    if (call(o->state, req, &resp)) return 1;
    json_decref(resp);
    printf("✅ waypoint %s/%s applied\n", o->ns, o->name);
    fflush(stdout);
    if (o->wait) {
        int64_t deadline = cluster_now_ms() + (int64_t)o->timeout_ms;
        for (;;) {
            json_t *cur = up_api_get(o->state, "Gateway", o->ns, o->name);
            bool done = cur && wp_programmed(cur);
            json_decref(cur);
            if (done) break;
            if (cluster_now_ms() > deadline) {
                fprintf(stderr, "Error: timed out while waiting for waypoint\t%s/%s\n", o->ns, o->name);
                return 1;
            }
            sleep_ms(WP_POLL_MS);
        }
        printf("✅ waypoint %s/%s is ready!\n", o->ns, o->name);
        fflush(stdout);
    }
    if (o->enroll) {
        req = json_pack("{s:s,s:s,s:s,s:s,s:{s:s}}", "op", "label", "kind", "Namespace", "namespace", "",
                        "name", o->ns, "set", WP_LABEL_USE, o->name);
        if (call(o->state, req, &resp)) {
            fprintf(stderr, "Error: failed to label namespace with waypoint\n");
            return 1;
        }
        json_decref(resp);
        printf("✅ namespace %s labeled with \"%s: %s\"\n", o->ns, WP_LABEL_USE, o->name);
    }
    return 0;
}

/* The Gateways of the API server's view in ns (NULL: all), optionally only the one named name. */
static json_t *gateways(const struct wp_opts *o, const char *ns, const char *name)
{
    json_t *all = up_api_list(o->state, "Gateway", ns), *out = json_array(), *g;
    size_t i;
    json_array_foreach(all, i, g) if (wp_is_gateway(g) && (!name || !strcmp(cluster_obj_name(g), name)))
        json_array_append(out, g);
    json_decref(all);
    return out;
}

static int wp_list(struct wp_opts *o)
{
    if (need_cluster(o)) return 1;
    json_t *gws = gateways(o, o->all_ns ? NULL : o->ns, o->name_given ? o->name : NULL);
    int rc = wp_list_render(stdout, gws, o->all_ns);
    json_decref(gws);
    return rc ? 1 : 0;
}

static int wp_status(struct wp_opts *o)
{
    if (need_cluster(o)) return 1;
    int64_t deadline = cluster_now_ms() + (int64_t)o->timeout_ms;
    json_t *gws;
    for (;;) {
        gws = gateways(o, o->ns, o->name_given ? o->name : NULL);
        size_t i;
        json_t *g;
        const char *late = NULL;
        json_array_foreach(gws, i, g) if (wp_is_waypoint(g) && !wp_programmed(g) && !late) late =
            cluster_obj_name(g);
        if (!o->wait || !late) break;
        if (cluster_now_ms() > deadline) {
            wp_status_render(stdout, gws, !o->ns_given);
            fprintf(stderr,
                    "Error: failed to print waypoint status: timed out while retrieving status for "
                    "waypoint\t%s/%s\n",
                    o->ns, late);
            json_decref(gws);
            return 1;
        }
        json_decref(gws);
        sleep_ms(WP_POLL_MS);
    }
    /* istioctl adds the NAMESPACE column when no namespace was given (and lists the default one). */
    int rc = wp_status_render(stdout, gws, !o->ns_given);
    json_decref(gws);
    return rc ? 1 : 0;
}

static int wp_delete(struct wp_opts *o, int argc, char **argv)
{
    if (o->all && optind < argc)
        return wp_usage("%s", "cannot specify waypoint names when deleting all waypoints");
    if (!o->all && optind >= argc)
        return wp_usage("%s",
                        "must specify a waypoint name or delete all using --all or delete specific revision "
                        "using --revision");
    if (need_cluster(o)) return 1;
    json_t *gws = gateways(o, o->ns, NULL), *names = json_array(), *g;
    size_t i;
    if (o->all) {
        json_array_foreach(gws, i, g) if (wp_is_waypoint(g))
            json_array_append_new(names, json_string(cluster_obj_name(g)));
    } else {
        for (int a = optind; a < argc; a++) {
            bool found = false;
            json_array_foreach(gws, i, g) found |= wp_is_waypoint(g) && !strcmp(cluster_obj_name(g), argv[a]);
            if (found)
                json_array_append_new(names, json_string(argv[a]));
            else
                printf("waypoint %s/%s not found\n", o->ns, argv[a]);
        }
    }
    json_decref(gws);
    int rc = 0;
    json_array_foreach(names, i, g)
    {
        const char *name = json_string_value(g);
        json_t *resp = NULL, *req = json_pack("{s:s,s:[{s:s,s:s,s:{s:s,s:s}}]}", "op", "delete", "objects",
                                              "apiVersion", WP_GATEWAY_API, "kind", "Gateway", "metadata",
                                              "name", name, "namespace", o->ns);
        if (call(o->state, req, &resp)) {
            rc = 1;
            continue;
        }
        json_decref(resp);
        printf("waypoint %s/%s deleted\n", o->ns, name);
    }
    json_decref(names);
    return rc;
}

int cmd_waypoint(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
        fputs(usage_wp, argc < 2 ? stderr : stdout);
        return argc < 2 ? EXIT_USAGE : 0;
    }
    static const char *const subs[] = {"generate", "apply", "list", "status", "delete", NULL};
    bool known = false;
    for (const char *const *s = subs; *s; s++)
        known |= !strcmp(*s, argv[1]);
    if (!known) return wp_usage("unknown subcommand \"%s\"", argv[1]);
    struct wp_opts o;
    int rc = wp_parse(argc - 1, argv + 1, &o);
    if (rc) return rc < 0 ? 0 : rc;
    if (strcmp(o.sub, "delete") && optind < argc - 1)
        return wp_usage("unexpected argument \"%s\"", argv[1 + optind]);
    if (!strcmp(o.sub, "generate")) {
        /* istioctl leaves the namespace out unless one is given. */
        json_t *gw = wp_gateway_make(o.ns_given ? o.ns : NULL, o.name, o.for_type);
        char *y = wp_yaml(gw);
        json_decref(gw);
        if (!y) return 1;
        fputs(y, stdout);
        free(y);
        return 0;
    }
    if (!strcmp(o.sub, "apply")) return wp_apply(&o);
    if (!strcmp(o.sub, "list")) return wp_list(&o);
    if (!strcmp(o.sub, "status")) return wp_status(&o);
    return wp_delete(&o, argc - 1, argv + 1);
}
