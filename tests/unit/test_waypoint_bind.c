/* Waypoint binding (src/zmeshd/waypoint.h) and its effect on the snapshot (k8s.h): the binding table as
 * istiod's waypoints.go computes it, zmesh's rule for waypoints without a ready pod, the GatewayAddress, the
 * Gateway reader's findings and the /debug/waypointz document. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <jansson.h>

#include "zmeshd/k8s.h"
#include "zmeshd/manifest.h"
#include "zmeshd/waypoint.h"

#define MAX_FINDINGS 128

struct findings {
    char msg[MAX_FINDINGS][1024];
    int level[MAX_FINDINGS];
    size_t n;
};

static void collect(void *ud, const struct manifest_finding *f)
{
    struct findings *fs = ud;
    if (fs->n == MAX_FINDINGS) return;
    fs->level[fs->n] = f->level;
    manifest_finding_format(f, fs->msg[fs->n++], sizeof(fs->msg[0]));
}

static int find(const struct findings *fs, const char *s)
{
    for (size_t i = 0; i < fs->n; i++)
        if (strstr(fs->msg[i], s)) return (int)i;
    return -1;
}

#define NS(name, labels)                                                                                     \
    "apiVersion: v1\nkind: Namespace\nmetadata: {name: " name ", labels: {" labels "}}\n---\n"
#define POD(ns, name, ip, labels, ready)                                                                     \
    "apiVersion: v1\nkind: Pod\nmetadata: {name: " name ", namespace: " ns ", labels: {" labels "}}\n"       \
    "spec: {nodeName: node1, serviceAccountName: " name ", containers: [{name: c}]}\n"                       \
    "status: {phase: Running, podIP: " ip ", conditions: [{type: Ready, status: \"" ready "\"}]}\n---\n"
#define SVC(ns, name, ip, sel, labels)                                                                       \
    "apiVersion: v1\nkind: Service\nmetadata: {name: " name ", namespace: " ns ", labels: {" labels "}}\n"   \
    "spec: {clusterIP: " ip ", selector: {" sel                                                              \
    "}, ports: [{port: 80, targetPort: 8080}, {port: 15008}]}\n---\n"
/* A waypoint Gateway; extra goes into metadata (labels, annotations), listener is the listener's tail. */
#define GW(ns, name, labels, from, status)                                                                   \
    "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: " name ", namespace: " ns     \
    ", labels: {" labels "}}\n"                                                                              \
    "spec:\n  gatewayClassName: istio-waypoint\n  listeners:\n  - {name: mesh, port: 15008, protocol: "      \
    "HBONE" from "}\n" status "---\n"
#define READY_STATUS(host) "status: {addresses: [{type: Hostname, value: " host "}]}\n"
/* The waypoint's own Service and a ready pod behind it. */
#define WP_BACKING(ns, name, svc_ip, pod_ip)                                                                 \
    SVC(ns, name, svc_ip, "gateway.networking.k8s.io/gateway-name: " name, "")                               \
    POD(ns, name "-abc", pod_ip, "gateway.networking.k8s.io/gateway-name: " name, "True")

static const char *manifests = NS("app", "istio.io/use-waypoint: waypoint")       /* */
    NS("other", "team: blue")                                                     /* */
    NS("picked", "mesh-waypoints: \"yes\"")                                       /* */
    GW("app", "waypoint", "", "", READY_STATUS("waypoint.app.svc.cluster.local")) /* service (default) */
    WP_BACKING("app", "waypoint", "10.96.0.10", "10.0.0.10")                      /* */
    GW("app", "wl-wp", "istio.io/waypoint-for: workload", "",
       READY_STATUS("wl-wp.app.svc.cluster.local"))       /* */
    WP_BACKING("app", "wl-wp", "10.96.0.11", "10.0.0.11") /* */
    GW("app", "all-wp", "istio.io/waypoint-for: all", ", allowedRoutes: {namespaces: {from: All}}",
       "status: {addresses: [{type: IPAddress, value: 10.96.0.12}]}\n") /* */
    WP_BACKING("app", "all-wp", "10.96.0.12", "10.0.0.12")              /* */
    GW("app", "sel-wp", "",
       ", allowedRoutes: {namespaces: {from: Selector, selector: {matchLabels: {mesh-waypoints: \"yes\"}}}}",
       READY_STATUS("sel-wp.app.svc.cluster.local"))       /* */
    WP_BACKING("app", "sel-wp", "10.96.0.13", "10.0.0.13") /* */
    GW("app", "cold", "", "", "")                          /* no status: not ready */
    SVC("app", "reviews", "10.96.1.1", "app: reviews", "") /* namespace label */
    SVC("app", "ratings", "10.96.1.2", "app: ratings", "istio.io/use-waypoint: none")   /* opt-out */
    SVC("app", "details", "10.96.1.3", "app: details", "istio.io/use-waypoint: all-wp") /* own label wins */
    SVC("app", "wsvc", "10.96.1.4", "app: x", "istio.io/use-waypoint: wl-wp")  /* workload-only waypoint */
    SVC("app", "gone", "10.96.1.5", "app: x", "istio.io/use-waypoint: nope")   /* missing */
    SVC("app", "chilly", "10.96.1.6", "app: x", "istio.io/use-waypoint: cold") /* not ready */
    SVC("other", "denied", "10.96.2.1", "app: x",
        "istio.io/use-waypoint: waypoint, istio.io/use-waypoint-namespace: app") /* Same: denied */
    SVC("other", "allowed", "10.96.2.2", "app: x",
        "istio.io/use-waypoint: all-wp, istio.io/use-waypoint-namespace: app") /* All: allowed */
    SVC("other", "nosel", "10.96.2.3", "app: x",
        "istio.io/use-waypoint: sel-wp, istio.io/use-waypoint-namespace: app") /* Selector: no match */
    SVC("picked", "sel", "10.96.3.1", "app: x",
        "istio.io/use-waypoint: sel-wp, istio.io/use-waypoint-namespace: app")    /* Selector: match */
    POD("app", "reviews-v1", "10.0.1.1", "app: reviews", "True")                  /* ns label, service wp */
    POD("app", "pw", "10.0.1.2", "app: pw, istio.io/use-waypoint: wl-wp", "True") /* workload waypoint */
    POD("app", "pall", "10.0.1.3", "app: pall, istio.io/use-waypoint: all-wp", "True")    /* all */
    POD("app", "psvc", "10.0.1.4", "app: psvc, istio.io/use-waypoint: waypoint", "True"); /* service-only */

static struct manifest_store *load(struct findings *fs, const char *yaml)
{
    struct manifest_store *st = NULL;
    assert_int_equal(manifest_store_new(&st), 0);
    assert_int_equal(manifest_load_buf(st, "m.yaml", yaml, strlen(yaml), collect, fs), 0);
    return st;
}

static const struct k8s_binding *binding(const struct k8s_waypoints *w, const char *kind, const char *ns,
                                         const char *name)
{
    size_t n;
    const struct k8s_binding *b = k8s_waypoints_bindings(w, &n);
    for (size_t i = 0; i < n; i++)
        if (!strcmp(b[i].kind, kind) && !strcmp(b[i].meta->namespace_, ns) && !strcmp(b[i].meta->name, name))
            return &b[i];
    return NULL;
}

static void expect(const struct k8s_waypoints *w, const char *kind, const char *ns, const char *name,
                   const char *wp, bool bound, enum k8s_bind_reason reason)
{
    const struct k8s_binding *b = binding(w, kind, ns, name);
    if (!b) fail_msg("no binding for %s %s/%s", kind, ns, name);
    print_message("%s %s/%s -> %s bound=%d %s: %s\n", kind, ns, name, b->waypoint, b->wp != NULL,
                  k8s_bind_reason_to_str(b->reason), b->message);
    assert_string_equal(b->waypoint, wp);
    assert_int_equal(b->wp != NULL, bound);
    assert_int_equal(b->reason, reason);
}

static void test_binding_table(void **state)
{
    (void)state;
    struct findings fs = {0};
    struct manifest_store *st = load(&fs, manifests);
    struct k8s_waypoints *w = NULL;
    assert_int_equal(k8s_waypoints_compute(st, NULL, &w, collect, &fs), 0);
    for (size_t i = 0; i < fs.n; i++)
        print_message("finding: %s\n", fs.msg[i]);
    size_t n;
    k8s_waypoints_list(w, &n);
    assert_int_equal(n, 5);
    /* The namespace's label binds its Services to a service waypoint. */
    expect(w, "Service", "app", "reviews", "app/waypoint", true, K8S_BIND_BOUND);
    /* "none" on the Service opts out: no binding at all. */
    assert_null(binding(w, "Service", "app", "ratings"));
    /* The Service's own label wins over the namespace's. */
    expect(w, "Service", "app", "details", "app/all-wp", true, K8S_BIND_BOUND);
    /* A Service cannot use a workload waypoint. */
    expect(w, "Service", "app", "wsvc", "app/wl-wp", false, K8S_BIND_UNSUPPORTED_TRAFFIC);
    /* A waypoint that does not exist: istiod's reason, no waypoint. */
    expect(w, "Service", "app", "gone", "app/nope", false, K8S_BIND_NOT_READY);
    /* zmesh's rule: a waypoint without a ready pod still binds. */
    expect(w, "Service", "app", "chilly", "app/cold", true, K8S_BIND_NOT_READY);
    /* Cross-namespace: Same denies, All allows, Selector allows only matching namespaces. */
    expect(w, "Service", "other", "denied", "app/waypoint", false, K8S_BIND_ATTACHMENT_DENIED);
    expect(w, "Service", "other", "allowed", "app/all-wp", true, K8S_BIND_BOUND);
    expect(w, "Service", "other", "nosel", "app/sel-wp", false, K8S_BIND_ATTACHMENT_DENIED);
    expect(w, "Service", "picked", "sel", "app/sel-wp", true, K8S_BIND_BOUND);
    /* Pods: the namespace's service waypoint does not take workload traffic. */
    expect(w, "Pod", "app", "reviews-v1", "app/waypoint", false, K8S_BIND_UNSUPPORTED_TRAFFIC);
    expect(w, "Pod", "app", "pw", "app/wl-wp", true, K8S_BIND_BOUND);
    expect(w, "Pod", "app", "pall", "app/all-wp", true, K8S_BIND_BOUND);
    expect(w, "Pod", "app", "psvc", "app/waypoint", false, K8S_BIND_UNSUPPORTED_TRAFFIC);
    /* The waypoints' own Services and pods never get one, although their namespace is labelled. */
    assert_null(binding(w, "Service", "app", "waypoint"));
    assert_null(binding(w, "Pod", "app", "waypoint-abc"));
    assert_null(binding(w, "Service", "app", "all-wp"));
    /* One finding per binding error, naming the object and istiod's reason; the own-label ones warn. */
    int i = find(&fs, "Service app/wsvc: UnsupportedTrafficType");
    assert_true(i >= 0);
    assert_int_equal(fs.level[i], MANIFEST_WARN);
    assert_true(find(&fs,
                     "Service other/denied: AttachmentDenied: we are not permitted to attach to waypoint "
                     "\"app/waypoint\"") >= 0);
    assert_true(find(&fs, "Service app/gone: WaypointIsNotReady: waypoint \"app/nope\" is not ready: no such "
                          "Gateway") >= 0);
    assert_true(find(&fs, "Service app/chilly: WaypointIsNotReady") >= 0);
    /* The namespace's service waypoint and its pods: INFO, not a warning per pod. */
    i = find(&fs, "Pod app/reviews-v1 (its namespace's label): UnsupportedTrafficType");
    assert_true(i >= 0);
    assert_int_equal(fs.level[i], MANIFEST_INFO);
    assert_true(find(&fs, "Service app/reviews") < 0); /* bound and ready: nothing to say */
    k8s_waypoints_free(w);
    manifest_store_free(st);
}

static void test_gateway_address(void **state)
{
    (void)state;
    struct findings fs = {0};
    struct manifest_store *st = load(&fs, manifests);
    struct k8s_waypoints *w = NULL;
    assert_int_equal(
        k8s_waypoints_compute(st, &(struct k8s_options){.domain_suffix = "cluster.local"}, &w, collect, &fs),
        0);
    size_t n;
    const struct k8s_waypoint *wp = k8s_waypoints_list(w, &n);
    /* Hostname from status.addresses, in the Gateway's namespace, port 15008. */
    assert_string_equal(wp[0].gw->meta.name, "waypoint");
    assert_true(wp[0].addr.set && wp[0].addr.is_host);
    assert_string_equal(wp[0].addr.ns, "app");
    assert_string_equal(wp[0].addr.host, "waypoint.app.svc.cluster.local");
    assert_int_equal(wp[0].addr.hbone_port, 15008);
    assert_true(wp[0].ready);
    assert_int_equal(wp[0].traffic, K8S_WP_FOR_SERVICE);
    assert_int_equal(wp[1].traffic, K8S_WP_FOR_WORKLOAD);
    /* Only an IPAddress: the address form. */
    assert_string_equal(wp[2].gw->meta.name, "all-wp");
    assert_false(wp[2].addr.is_host);
    char ip[64];
    assert_string_equal(ip_format(&wp[2].addr.ip, ip, sizeof(ip)), "10.96.0.12");
    assert_string_equal(wp[2].from, "All");
    /* Not ready: no status, no Service: the hostname istiod would write, reason said. */
    assert_string_equal(wp[4].gw->meta.name, "cold");
    assert_false(wp[4].ready);
    assert_true(wp[4].addr.is_host);
    assert_string_equal(wp[4].addr.host, "cold.app.svc.cluster.local");
    assert_string_equal(wp[4].reason, "NoAddress");
    /* Bound resources carry exactly that address. */
    /* Store order: the four waypoint Services, reviews, ratings, details, wsvc, gone (8), chilly (9). */
    assert_ptr_equal(k8s_waypoints_service(w, 9), &wp[4].addr);
    assert_null(k8s_waypoints_service(w, 8));
    k8s_waypoints_free(w);
    manifest_store_free(st);
}

/* The snapshot: bound Services and Pods carry `waypoint`; the others do not. */
static void test_snapshot_fields(void **state)
{
    (void)state;
    struct findings fs = {0};
    struct manifest_store *st = load(&fs, manifests);
    struct snapshot *s = NULL;
    assert_int_equal(k8s_build_snapshot(st, NULL, &s, collect, &fs), 0);
    const struct service *r = snapshot_service_by_host(s, "app/reviews.app.svc.cluster.local");
    assert_true(r->waypoint.set && r->waypoint.is_host);
    assert_string_equal(r->waypoint.ns, "app");
    assert_string_equal(r->waypoint.host, "waypoint.app.svc.cluster.local");
    assert_int_equal(r->waypoint.hbone_port, 15008);
    assert_false(snapshot_service_by_host(s, "app/ratings.app.svc.cluster.local")->waypoint.set);
    assert_false(snapshot_service_by_host(s, "app/gone.app.svc.cluster.local")->waypoint.set);
    assert_false(snapshot_service_by_host(s, "app/wsvc.app.svc.cluster.local")->waypoint.set);
    /* Not ready: still set, so ztunnel refuses rather than goes around it. */
    const struct service *c = snapshot_service_by_host(s, "app/chilly.app.svc.cluster.local");
    assert_true(c->waypoint.set);
    assert_string_equal(c->waypoint.host, "cold.app.svc.cluster.local");
    assert_false(snapshot_service_by_host(s, "app/waypoint.app.svc.cluster.local")->waypoint.set);
    const struct workload *pw = snapshot_workload_by_uid(s, "Kubernetes//Pod/app/pw");
    assert_true(pw->waypoint.set);
    assert_string_equal(pw->waypoint.host, "wl-wp.app.svc.cluster.local");
    assert_false(snapshot_workload_by_uid(s, "Kubernetes//Pod/app/reviews-v1")->waypoint.set);
    assert_false(snapshot_workload_by_uid(s, "Kubernetes//Pod/app/waypoint-abc")->waypoint.set);
    const struct workload *pall = snapshot_workload_by_uid(s, "Kubernetes//Pod/app/pall");
    assert_true(pall->waypoint.set && !pall->waypoint.is_host);
    snapshot_unref(s);
    manifest_store_free(st);
}

static void test_invalid_gateways(void **state)
{
    (void)state;
    struct findings fs = {0};
    struct manifest_store *st = load(
        &fs,
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: nolis, namespace: a}\n"
        "spec: {gatewayClassName: istio-waypoint, listeners: [{name: http, port: 80, protocol: HTTP}]}\n---\n"
        "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: Gateway\nmetadata: {name: badfor, namespace: "
        "a, "
        "labels: {istio.io/waypoint-for: everything}}\n"
        "spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}\n"
        "---\n"
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: ingress, namespace: a}\n"
        "spec: {gatewayClassName: istio, listeners: [{name: http, port: 80, protocol: HTTP, hostname: x}]}\n"
        "---\n"
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: badfrom, namespace: a}\n"
        "spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE, "
        "allowedRoutes: {namespaces: {from: Everywhere}}}]}\n---\n"
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: noport, namespace: a}\n"
        "spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, protocol: HBONE}]}\n---\n"
        "apiVersion: gateway.networking.k8s.io/v2\nkind: Gateway\nmetadata: {name: v2, namespace: a}\n"
        "spec: {gatewayClassName: istio-waypoint}\n---\n" NS("a", "istio.io/use-waypoint: nolis")
            SVC("a", "s", "10.96.0.1", "app: s", ""));
    struct k8s_waypoints *w = NULL;
    assert_int_equal(k8s_waypoints_compute(st, NULL, &w, collect, &fs), 0);
    for (size_t i = 0; i < fs.n; i++)
        print_message("finding: %s\n", fs.msg[i]);
    size_t n;
    k8s_waypoints_list(w, &n);
    assert_int_equal(n, 0);
    int i = find(&fs,
                 "m.yaml#1: spec.listeners: a Gateway of class istio-waypoint needs a listener {port: 15008, "
                 "protocol: HBONE}");
    assert_true(i >= 0);
    assert_int_equal(fs.level[i], MANIFEST_ERROR);
    assert_true(find(&fs,
                     "m.yaml#2: metadata.labels: istio.io/waypoint-for: expected service, workload, all or "
                     "none, got \"everything\"") >= 0);
    /* Another class is not a waypoint, silently; its ingress-only fields are said to be unread. */
    assert_true(find(&fs, "m.yaml#3: spec.listeners[0].hostname: field not read by zmeshd") >= 0);
    assert_true(find(&fs, "m.yaml#4: spec.listeners[0].allowedRoutes.namespaces.from: expected All, Same or "
                          "Selector, got \"Everywhere\"") >= 0);
    assert_true(find(&fs, "m.yaml#5: spec.listeners[0].port: required field is missing") >= 0);
    assert_true(find(&fs, "m.yaml#6: apiVersion: apiVersion gateway.networking.k8s.io/v2 is not supported") >=
                0);
    /* A Service asking for the invalid one is told why. */
    assert_true(find(&fs,
                     "Service a/s (its namespace's label): WaypointIsNotReady: waypoint \"a/nolis\" is not "
                     "ready: the Gateway is not a valid waypoint") >= 0);
    k8s_waypoints_free(w);
    manifest_store_free(st);
}

static void test_waypointz_json(void **state)
{
    (void)state;
    struct findings fs = {0};
    struct manifest_store *st = load(&fs, manifests);
    struct k8s_waypoints *w = NULL;
    assert_int_equal(k8s_waypoints_compute(st, NULL, &w, collect, &fs), 0);
    json_t *j = k8s_waypoints_json(w);
    assert_non_null(j);
    char *dump = json_dumps(j, JSON_INDENT(1));
    print_message("%s\n", dump);
    free(dump);
    json_t *wp0 = json_array_get(json_object_get(j, "waypoints"), 0);
    assert_string_equal(json_string_value(json_object_get(wp0, "namespace")), "app");
    assert_string_equal(json_string_value(json_object_get(wp0, "name")), "waypoint");
    assert_string_equal(json_string_value(json_object_get(wp0, "class")), "istio-waypoint");
    assert_string_equal(json_string_value(json_object_get(wp0, "for")), "service");
    json_t *addr = json_object_get(wp0, "address");
    assert_string_equal(json_string_value(json_object_get(addr, "hostname")),
                        "waypoint.app.svc.cluster.local");
    assert_int_equal(json_integer_value(json_object_get(addr, "port")), 15008);
    assert_true(json_is_true(json_object_get(wp0, "ready")));
    assert_string_equal(json_string_value(json_object_get(wp0, "reason")), "");
    json_t *svcs = json_object_get(wp0, "services");
    assert_int_equal(json_array_size(svcs), 1);
    assert_string_equal(json_string_value(json_array_get(svcs, 0)), "app/reviews");
    assert_int_equal(json_array_size(json_object_get(wp0, "workloads")), 0);
    json_t *wl =
        json_array_get(json_object_get(json_array_get(json_object_get(j, "waypoints"), 1), "workloads"), 0);
    assert_string_equal(json_string_value(wl), "Kubernetes//Pod/app/pw");
    json_t *cold = json_array_get(json_object_get(j, "waypoints"), 4);
    assert_true(json_is_false(json_object_get(cold, "ready")));
    assert_string_equal(json_string_value(json_object_get(cold, "reason")), "NoAddress");
    /* Bindings: kind, namespace, name, waypoint, bound, reason, message. */
    json_t *b0 = json_array_get(json_object_get(j, "bindings"), 0);
    assert_string_equal(json_string_value(json_object_get(b0, "kind")), "Service");
    assert_string_equal(json_string_value(json_object_get(b0, "name")), "reviews");
    assert_string_equal(json_string_value(json_object_get(b0, "waypoint")), "app/waypoint");
    assert_true(json_is_true(json_object_get(b0, "bound")));
    assert_string_equal(json_string_value(json_object_get(b0, "reason")), "Bound");
    assert_string_equal(json_string_value(json_object_get(b0, "message")), "bound to waypoint app/waypoint");
    /* And the condition istiod would write on it. */
    json_t *c0 = json_object_get(b0, "condition");
    assert_string_equal(json_string_value(json_object_get(c0, "type")), "istio.io/WaypointBound");
    assert_string_equal(json_string_value(json_object_get(c0, "status")), "True");
    assert_string_equal(json_string_value(json_object_get(c0, "reason")), "WaypointAccepted");
    assert_string_equal(json_string_value(json_object_get(c0, "message")),
                        "Successfully attached to waypoint app/waypoint");
    bool saw_denied = false;
    size_t i;
    json_t *b;
    json_array_foreach(json_object_get(j, "bindings"), i, b)
    {
        if (strcmp(json_string_value(json_object_get(b, "name")), "denied")) continue;
        saw_denied = true;
        assert_true(json_is_false(json_object_get(b, "bound")));
        assert_string_equal(json_string_value(json_object_get(b, "reason")), "AttachmentDenied");
        assert_string_equal(json_string_value(json_object_get(json_object_get(b, "condition"), "status")),
                            "False");
    }
    assert_true(saw_denied);
    json_decref(j);
    k8s_waypoints_free(w);
    manifest_store_free(st);
}

/* clang-format off */
static const char *override_manifests =
    NS("b", "istio.io/use-waypoint: wp")
    GW("b", "nopod", "", "", READY_STATUS("nopod.b.svc.cluster.local"))
    SVC("b", "nopod", "10.96.0.4", "app: nopod", "")
    POD("b", "nopod-1", "10.0.0.4", "app: nopod", "False")
    GW("b", "nosvc", "", "", READY_STATUS("nosvc.b.svc.cluster.local"))
    "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n"
    "metadata: {name: wp, namespace: b, annotations: {gateway.istio.io/name-override: wp-svc}}\n"
    "spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}\n---\n"
    "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n"
    "metadata: {name: wp, namespace: b, labels: {istio.io/waypoint-for: workload}}\n"
    "spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}\n---\n"
    "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: sel, namespace: b}\n"
    "spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE, "
    "allowedRoutes: {namespaces: {from: Selector}}}]}\n"
    "status: {addresses: [{type: Hostname, value: sel.b.svc.cluster.local}]}\n---\n"
    SVC("b", "wp-svc", "10.96.0.1", "app: wp", "")
    SVC("b", "s", "10.96.0.2", "app: s", "")
    SVC("b", "s", "10.96.0.9", "app: s", "")
    SVC("c", "t", "10.96.0.3", "app: t", "istio.io/use-waypoint: sel, istio.io/use-waypoint-namespace: b");
/* clang-format on */

/* gateway.istio.io/name-override names the Service (and so the hostname and what is the waypoint's own); a
 * duplicate Gateway does not replace the first; a Selector listener without a selector admits nobody. */
static void test_name_override_and_duplicates(void **state)
{
    (void)state;
    struct findings fs = {0};
    struct manifest_store *st = load(&fs, override_manifests);
    struct k8s_waypoints *w = NULL;
    struct snapshot *snap = NULL;
    assert_int_equal(k8s_waypoints_compute(st, NULL, &w, collect, &fs), 0);
    size_t n;
    const struct k8s_waypoint *wp = k8s_waypoints_list(w, &n);
    assert_int_equal(n, 4);
    /* status.addresses set, but no Ready pod behind the Service, or no Service: not ready, with the reason.
     */
    assert_string_equal(wp[0].gw->meta.name, "nopod");
    assert_false(wp[0].ready);
    assert_string_equal(wp[0].reason, "NoReadyPod");
    assert_string_equal(wp[0].message, "no Ready pod behind Service b/nopod");
    assert_string_equal(wp[1].gw->meta.name, "nosvc");
    assert_false(wp[1].ready);
    assert_string_equal(wp[1].reason, "ServiceNotFound");
    wp += 2;
    assert_string_equal(wp[0].service_name, "wp-svc");
    assert_string_equal(wp[0].addr.host, "wp-svc.b.svc.cluster.local");
    assert_int_equal(wp[0].traffic, K8S_WP_FOR_SERVICE); /* the first Gateway, not the duplicate */
    assert_string_equal(wp[0].reason, "NoAddress");
    assert_null(binding(w, "Service", "b", "wp-svc"));
    expect(w, "Service", "b", "s", "b/wp", true, K8S_BIND_NOT_READY);
    /* b/s is defined twice: one binding, for the first (k8s.c reports the duplicate and keeps the first). */
    size_t nb, n_s = 0;
    const struct k8s_binding *bs = k8s_waypoints_bindings(w, &nb);
    for (size_t i = 0; i < nb; i++)
        n_s += !strcmp(bs[i].meta->namespace_, "b") && !strcmp(bs[i].meta->name, "s");
    assert_int_equal(n_s, 1);
    expect(w, "Service", "c", "t", "b/sel", false, K8S_BIND_ATTACHMENT_DENIED);
    assert_int_equal(k8s_build_snapshot(st, NULL, &snap, collect, &fs), 0);
    assert_true(find(&fs, "duplicate Gateway b/wp") >= 0);
    assert_string_equal(snapshot_service_by_host(snap, "b/s.b.svc.cluster.local")->waypoint.host,
                        "wp-svc.b.svc.cluster.local");
    snapshot_unref(snap);
    k8s_waypoints_free(w);
    manifest_store_free(st);
}

/* The istio.io/WaypointBound condition of a Service (by store index), or NULL. */
static const struct k8s_status_condition *
svc_cond(const struct manifest_store *st, const struct k8s_waypoints *w, const char *ns, const char *name)
{
    size_t n;
    const struct k8s_service *s = manifest_services(st, &n);
    for (size_t i = 0; i < n; i++)
        if (!strcmp(s[i].meta.namespace_, ns) && !strcmp(s[i].meta.name, name)) {
            const struct k8s_binding *b = k8s_waypoints_service_binding(w, i);
            return b && b->cond.type ? &b->cond : NULL;
        }
    fail_msg("no Service %s/%s", ns, name);
    return NULL;
}

static void expect_cond(const struct k8s_status_condition *c, bool status, const char *reason,
                        const char *message)
{
    assert_non_null(c);
    print_message("%s %s %s: %s\n", c->type, status ? "True" : "False", c->reason, c->message);
    assert_string_equal(c->type, "istio.io/WaypointBound");
    assert_int_equal(c->status, status);
    assert_string_equal(c->reason, reason);
    assert_string_equal(c->message, message);
}

/* istiod's condition (ServiceInfo.GetConditions, status.go's ReportWaypoint*): type, status, reason and
 * message for each outcome; none for a Service that asks for no waypoint or is a waypoint's own. */
static void test_service_conditions(void **state)
{
    (void)state;
    struct findings fs = {0};
    struct manifest_store *st = load(&fs, manifests);
    struct k8s_waypoints *w = NULL;
    assert_int_equal(k8s_waypoints_compute(st, NULL, &w, collect, &fs), 0);
    /* Bound through the namespace's label, or its own. */
    expect_cond(svc_cond(st, w, "app", "reviews"), true, "WaypointAccepted",
                "Successfully attached to waypoint app/waypoint");
    expect_cond(svc_cond(st, w, "app", "details"), true, "WaypointAccepted",
                "Successfully attached to waypoint app/all-wp");
    expect_cond(svc_cond(st, w, "other", "allowed"), true, "WaypointAccepted",
                "Successfully attached to waypoint app/all-wp");
    /* The label names a waypoint that does not exist. */
    expect_cond(svc_cond(st, w, "app", "gone"), false, "WaypointIsNotReady",
                "waypoint \"app/nope\" is not ready");
    /* It exists but is not ready (zmesh sets it all the same; istiod's condition). */
    expect_cond(svc_cond(st, w, "app", "chilly"), false, "WaypointIsNotReady",
                "waypoint \"app/cold\" is not ready");
    /* waypoint-for: workload excludes Services. */
    expect_cond(
        svc_cond(st, w, "app", "wsvc"), false, "UnsupportedTrafficType",
        "attempting to bind to traffic type \"service\" which the waypoint \"app/wl-wp\" does not support");
    /* allowedRoutes: Same, and a Selector that does not match. */
    expect_cond(svc_cond(st, w, "other", "denied"), false, "AttachmentDenied",
                "we are not permitted to attach to waypoint \"app/waypoint\" (missing allowedRoutes?)");
    expect_cond(svc_cond(st, w, "other", "nosel"), false, "AttachmentDenied",
                "we are not permitted to attach to waypoint \"app/sel-wp\" (missing allowedRoutes?)");
    /* "none" opts out, and a waypoint's own Service: no condition at all (istiod prunes it). */
    assert_null(svc_cond(st, w, "app", "ratings"));
    assert_null(svc_cond(st, w, "app", "waypoint"));
    /* Pods: a workload waypoint is accepted; a namespace's service waypoint is no error for a pod (none), its
     * own label naming one is. */
    assert_string_equal(binding(w, "Pod", "app", "pw")->cond.message,
                        "Successfully attached to waypoint app/wl-wp");
    assert_null(binding(w, "Pod", "app", "reviews-v1")->cond.type);
    assert_string_equal(
        binding(w, "Pod", "app", "psvc")->cond.message,
        "attempting to bind to traffic type \"workload\" which the waypoint \"app/waypoint\" does "
        "not support");
    k8s_waypoints_free(w);
    manifest_store_free(st);

    /* No namespace label here: a Service without its own label asks for nothing;
     * istio.io/ingress-use-waypoint (the Service's, else its namespace's) adds istiod's sentence. */
    static const char *ing = NS("i", "istio.io/ingress-use-waypoint: \"true\"") /* */
        NS("j", "")                                                             /* */
        GW("i", "wp", "", ", allowedRoutes: {namespaces: {from: All}}",
           READY_STATUS("wp.i.svc.cluster.local"))                          /* */
        WP_BACKING("i", "wp", "10.96.9.10", "10.0.9.10")                    /* */
        SVC("i", "yes", "10.96.9.1", "app: x", "istio.io/use-waypoint: wp") /* ns label true */
        SVC("i", "no", "10.96.9.2", "app: x",
            "istio.io/use-waypoint: wp, istio.io/ingress-use-waypoint: \"false\"") /* own label wins */
        SVC("j", "bad", "10.96.9.3", "app: x",
            "istio.io/use-waypoint: wp, istio.io/use-waypoint-namespace: i, istio.io/ingress-use-waypoint: "
            "maybe") SVC("j", "plain", "10.96.9.4", "app: x", "");
    memset(&fs, 0, sizeof(fs));
    st = load(&fs, ing);
    assert_int_equal(k8s_waypoints_compute(st, NULL, &w, collect, &fs), 0);
    expect_cond(svc_cond(st, w, "i", "yes"), true, "WaypointAccepted",
                "Successfully attached to waypoint i/wp. Ingress traffic will traverse the waypoint");
    expect_cond(svc_cond(st, w, "i", "no"), true, "WaypointAccepted",
                "Successfully attached to waypoint i/wp. Ingress traffic is not using the waypoint, set the "
                "istio.io/ingress-use-waypoint label to true if desired.");
    expect_cond(svc_cond(st, w, "j", "bad"), true, "WaypointAccepted",
                "Successfully attached to waypoint i/wp. Ingress traffic is not using the waypoint, set the "
                "istio.io/ingress-use-waypoint label to true if desired.");
    int i = find(&fs, "istio.io/ingress-use-waypoint: expected true or false, got \"maybe\"");
    assert_true(i >= 0);
    assert_int_equal(fs.level[i], MANIFEST_WARN);
    assert_null(svc_cond(st, w, "j", "plain"));
    k8s_waypoints_free(w);
    manifest_store_free(st);
}

static json_t *conds_of(json_t *o)
{
    return json_object_get(json_object_get(o, "status"), "conditions");
}

/* Writing the condition on an object: added beside other conditions and status fields, left alone when the
 * same, the transition time kept while the status is unchanged, replaced when it flips, removed (and the
 * empty status with it) when the Service no longer asks for a waypoint. */
static void test_bound_apply(void **state)
{
    (void)state;
    json_t *o =
        json_loads("{\"kind\": \"Service\", \"metadata\": {\"name\": \"s\"}, \"status\": {\"conditions\": "
                   "[{\"type\": \"Other\", \"status\": \"True\"}], \"loadBalancer\": {}}}",
                   0, NULL);
    assert_non_null(o);
    struct k8s_status_condition nf = {.type = K8S_COND_WAYPOINT_BOUND,
                                      .status = false,
                                      .reason = "WaypointIsNotReady",
                                      .message = "waypoint \"a/nope\" is not ready"},
                                ok = {.type = K8S_COND_WAYPOINT_BOUND,
                                      .status = true,
                                      .reason = "WaypointAccepted",
                                      .message = "Successfully attached to waypoint a/wp"};
    assert_int_equal(k8s_waypoint_bound_apply(o, &nf, "2026-01-01T00:00:00Z"), 1);
    assert_int_equal(json_array_size(conds_of(o)), 2);
    json_t *c = json_array_get(conds_of(o), 1);
    assert_string_equal(json_string_value(json_object_get(c, "type")), "istio.io/WaypointBound");
    assert_string_equal(json_string_value(json_object_get(c, "status")), "False");
    assert_string_equal(json_string_value(json_object_get(c, "reason")), "WaypointIsNotReady");
    assert_string_equal(json_string_value(json_object_get(c, "message")), "waypoint \"a/nope\" is not ready");
    assert_string_equal(json_string_value(json_object_get(c, "lastTransitionTime")), "2026-01-01T00:00:00Z");
    /* The same outcome later: unchanged, the time kept. */
    assert_int_equal(k8s_waypoint_bound_apply(o, &nf, "2026-01-01T00:05:00Z"), 0);
    /* Same status, another message: rewritten, the transition time kept. */
    struct k8s_status_condition nf2 = nf;
    nf2.message = "waypoint \"a/other\" is not ready";
    assert_int_equal(k8s_waypoint_bound_apply(o, &nf2, "2026-01-01T00:06:00Z"), 1);
    c = json_array_get(conds_of(o), 1);
    assert_string_equal(json_string_value(json_object_get(c, "message")),
                        "waypoint \"a/other\" is not ready");
    assert_string_equal(json_string_value(json_object_get(c, "lastTransitionTime")), "2026-01-01T00:00:00Z");
    /* Flipped to True: replaced in place, a new time. */
    assert_int_equal(k8s_waypoint_bound_apply(o, &ok, "2026-01-01T00:10:00Z"), 1);
    assert_int_equal(json_array_size(conds_of(o)), 2);
    c = json_array_get(conds_of(o), 1);
    assert_string_equal(json_string_value(json_object_get(c, "status")), "True");
    assert_string_equal(json_string_value(json_object_get(c, "reason")), "WaypointAccepted");
    assert_string_equal(json_string_value(json_object_get(c, "lastTransitionTime")), "2026-01-01T00:10:00Z");
    /* Removed: the other condition and status field stay. */
    assert_int_equal(k8s_waypoint_bound_apply(o, NULL, "2026-01-01T00:20:00Z"), 1);
    assert_int_equal(json_array_size(conds_of(o)), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(conds_of(o), 0), "type")), "Other");
    assert_non_null(json_object_get(json_object_get(o, "status"), "loadBalancer"));
    assert_int_equal(k8s_waypoint_bound_apply(o, NULL, "2026-01-01T00:20:00Z"), 0);
    json_decref(o);

    /* No status at all: made, then removed whole; a condition of no type is a removal. */
    o = json_pack("{s:s, s:{s:s}}", "kind", "Service", "metadata", "name", "t");
    assert_int_equal(k8s_waypoint_bound_apply(o, &ok, "2026-01-01T00:00:00Z"), 1);
    assert_int_equal(json_array_size(conds_of(o)), 1);
    struct k8s_status_condition none = {0};
    assert_int_equal(k8s_waypoint_bound_apply(o, &none, "2026-01-01T00:00:00Z"), 1);
    assert_null(json_object_get(o, "status"));
    /* A status that is not an object, conditions that are not a list: refused, nothing changed. */
    json_object_set_new(o, "status", json_string("x"));
    assert_int_equal(k8s_waypoint_bound_apply(o, &ok, "2026-01-01T00:00:00Z"), -EINVAL);
    json_object_set_new(o, "status", json_pack("{s:i}", "conditions", 1));
    assert_int_equal(k8s_waypoint_bound_apply(o, &ok, "2026-01-01T00:00:00Z"), -EINVAL);
    assert_int_equal(json_integer_value(conds_of(o)), 1);
    /* Two of ours (written by hand): one left, the first, replaced. */
    json_object_set_new(o, "status",
                        json_pack("{s:[{s:s,s:s},{s:s,s:s}]}", "conditions", "type", K8S_COND_WAYPOINT_BOUND,
                                  "status", "True", "type", K8S_COND_WAYPOINT_BOUND, "status", "False"));
    assert_int_equal(k8s_waypoint_bound_apply(o, &nf, "2026-01-01T00:00:00Z"), 1);
    assert_int_equal(json_array_size(conds_of(o)), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(conds_of(o), 0), "reason")),
                        "WaypointIsNotReady");
    json_decref(o);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_binding_table),      cmocka_unit_test(test_gateway_address),
        cmocka_unit_test(test_snapshot_fields),    cmocka_unit_test(test_invalid_gateways),
        cmocka_unit_test(test_waypointz_json),     cmocka_unit_test(test_name_override_and_duplicates),
        cmocka_unit_test(test_service_conditions), cmocka_unit_test(test_bound_apply),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
