/* zmesh why (src/cli/why.h): the explanation of one request from a cluster's objects: capture, the waypoint
 * in the path and why, L7 authorization, the route and its weighted backends, the endpoints, L4 authorization
 * at the destination with the identity that ztunnel sees, and the result line first with its code. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "cli/why.h"
#include "zmeshd/manifest.h"

#define POD(ns, name, sa, ip, node, labels, ready)                                                           \
    "apiVersion: v1\nkind: Pod\nmetadata: {name: " name ", namespace: " ns ", labels: {" labels "}}\n"       \
    "spec: {nodeName: " node ", serviceAccountName: " sa ", containers: [{name: c}]}\n"                      \
    "status: {phase: Running, podIP: " ip ", conditions: [{type: Ready, status: \"" ready "\"}]}\n---\n"
#define SVC(ns, name, ip, sel, labels, ports)                                                                \
    "apiVersion: v1\nkind: Service\nmetadata: {name: " name ", namespace: " ns ", labels: {" labels "}}\n"   \
    "spec: {clusterIP: " ip ", selector: {" sel "}, ports: [" ports "]}\n---\n"
#define HTTP_PORT "{name: http, port: 80, targetPort: 8080}"

static const char *base =
    "apiVersion: v1\nkind: Namespace\nmetadata: {name: app, labels: {istio.io/dataplane-mode: "
    "ambient}}\n---\n"
    "apiVersion: v1\nkind: Namespace\nmetadata: {name: plain}\n---\n"
    /* the waypoint of namespace app, bound by the Service's own label */
    "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: waypoint, namespace: app}\n"
    "spec:\n  gatewayClassName: istio-waypoint\n  listeners:\n  - {name: mesh, port: 15008, protocol: "
    "HBONE}\n"
    "status: {addresses: [{type: Hostname, value: waypoint.app.svc.cluster.local}]}\n---\n" /* */
    SVC("app", "waypoint", "10.96.0.10", "gateway.networking.k8s.io/gateway-name: waypoint", "",
        "{name: mesh, port: 15008}")
        POD("app", "waypoint-0", "waypoint", "10.0.2.10", "n2",
            "gateway.networking.k8s.io/gateway-name: waypoint, istio.io/dataplane-mode: none",
            "True") SVC("app", "svc", "10.96.1.1", "app: svc", "istio.io/use-waypoint: waypoint",
                        HTTP_PORT) SVC("app", "svc-v1", "10.96.1.2", "app: svc, version: v1", "", HTTP_PORT)
            SVC("app", "svc-v2", "10.96.1.3", "app: svc, version: v2", "",
                HTTP_PORT) SVC("app", "db", "10.96.1.4", "app: db", "", "{name: tcp, port: 5432}")
                SVC("app", "web", "10.96.1.5", "app: svc", "istio.io/use-waypoint: waypoint", HTTP_PORT)
                    POD("app", "client", "client", "10.0.1.2", "n1", "app: client", "True")
                        POD("app", "svc-v1-0", "svc", "10.0.1.3", "n1", "app: svc, version: v1", "True")
                            POD("app", "svc-v2-0", "svc", "10.0.2.3", "n2", "app: svc, version: v2", "True")
                                POD("app", "db-0", "db", "10.0.2.4", "n2", "app: db", "True")
                                    POD("plain", "outsider", "outsider", "10.0.1.9", "n1", "app: outsider",
                                        "True")
    /* a 90/10 split for /api, and an L7 policy that denies POST */
    "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: split, namespace: app}\n"
    "spec:\n  parentRefs: [{group: \"\", kind: Service, name: svc}]\n  rules:\n"
    "  - matches: [{path: {type: PathPrefix, value: /api}}]\n"
    "    backendRefs: [{name: svc-v1, port: 80, weight: 90}, {name: svc-v2, port: 80, weight: 10}]\n---\n"
    "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: no-post, namespace: app}\n"
    "spec:\n  targetRefs: [{kind: Service, group: \"\", name: svc}]\n  action: DENY\n"
    "  rules: [{to: [{operation: {methods: [POST]}}]}]\n---\n"
    /* L4: db admits only the client's identity */
    "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: db-only-client, "
    "namespace: "
    "app}\n"
    "spec:\n  selector: {matchLabels: {app: db}}\n  action: ALLOW\n"
    "  rules: [{from: [{source: {principals: [cluster.local/ns/app/sa/client]}}]}]\n";

static struct manifest_store *load(const char *extra)
{
    struct manifest_store *st = NULL;
    assert_int_equal(manifest_store_new(&st), 0);
    assert_int_equal(manifest_load_buf(st, "base.yaml", base, strlen(base), NULL, NULL), 0);
    if (extra) assert_int_equal(manifest_load_buf(st, "extra.yaml", extra, strlen(extra), NULL, NULL), 0);
    return st;
}

/* Runs why on q; out gets the report (malloc'd, the caller frees it). */
static int run(struct manifest_store *st, const struct why_query *q, char **out, char *err, size_t errlen)
{
    size_t len = 0;
    FILE *f = open_memstream(out, &len);
    assert_non_null(f);
    int rc = why_explain(st, q, f, err, errlen);
    fclose(f);
    return rc;
}

static void has(const char *text, const char *want)
{
    if (!strstr(text, want)) fail_msg("missing \"%s\" in:\n%s", want, text);
}

static void test_split_through_the_waypoint(void **state)
{
    (void)state;
    struct manifest_store *st = load(NULL);
    struct why_query q = {.source = "app/client", .dest = "svc", .path = "/api/x"};
    char *out = NULL, err[512] = "";
    assert_int_equal(run(st, &q, &out, err, sizeof(err)), WHY_ALLOWED);
    /* the result comes first */
    assert_int_equal(
        strncmp(out,
                "RESULT: ALLOWED: GET /api/x through the waypoint app/waypoint, route app/split, "
                "to app/svc-v1:80 (90%), app/svc-v2:80 (10%)\n",
                strlen("RESULT: ALLOWED: GET /api/x through the waypoint app/waypoint, route app/split, "
                       "to app/svc-v1:80 (90%), app/svc-v2:80 (10%)\n")),
        0);
    has(out, "in the mesh: its namespace's label istio.io/dataplane-mode=ambient");
    has(out, "identity spiffe://cluster.local/ns/app/sa/client; node n1's ztunnel");
    has(out, "Service app/svc uses waypoint app/waypoint (its own label istio.io/use-waypoint=waypoint)");
    has(out, "waypoint pod app/waypoint-0 (node n2) over HBONE, :authority 10.96.1.1:80");
    has(out, "ztunnel expects spiffe://cluster.local/ns/app/sa/waypoint");
    has(out, "route: app/split rule 0");
    has(out, "backend app/svc-v1:80 weight 90 (90.0%)");
    has(out, "app/svc-v2-0 10.0.2.3 node n2");
    /* L4 at the destination sees the waypoint's identity */
    has(out,
        "identity spiffe://cluster.local/ns/app/sa/waypoint, port 8080: ALLOW (no ALLOW policy applies)");
    free(out);
    /* outside /api: routes attach, none matches: 404 NR */
    q.path = "/other";
    assert_int_equal(run(st, &q, &out, err, sizeof(err)), WHY_NO_ROUTE);
    has(out,
        "RESULT: NO ROUTE: 404 NR at the waypoint app/waypoint: no rule of the routes of app/svc matches");
    free(out);
    /* a Service on the waypoint without routes: the default route, the Service itself */
    q.dest = "web";
    assert_int_equal(run(st, &q, &out, err, sizeof(err)), WHY_ALLOWED);
    has(out, "RESULT: ALLOWED: GET /other through the waypoint app/waypoint to app/web:80 (default route)");
    has(out, "route: none attaches to app/web port 80");
    has(out, "app/svc-v1-0 10.0.1.3 node n1");
    free(out);
    manifest_store_free(st);
}

/* A DestinationRule's load balancer is what the waypoint uses for that backend; Istio's default otherwise. */
static void test_destination_rule_load_balancer(void **state)
{
    (void)state;
    const char *dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
                     "metadata: {name: v2-rr, namespace: app}\n"
                     "spec:\n  host: svc-v2\n  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}\n---\n"
                     "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
                     "metadata: {name: v1-hash, namespace: app}\n"
                     "spec:\n  host: svc-v1.app.svc.cluster.local\n"
                     "  trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user}}}\n";
    struct manifest_store *st = load(dr);
    struct why_query q = {.source = "app/client", .dest = "svc", .path = "/api"};
    char *out = NULL, err[512] = "";
    assert_int_equal(run(st, &q, &out, err, sizeof(err)), WHY_ALLOWED);
    has(out, "backend app/svc-v1:80 weight 90 (90.0%)\n    load balancer: RING_HASH on the header x-user "
             "(DestinationRule app/v1-hash)");
    has(out, "backend app/svc-v2:80 weight 10 (10.0%)\n    load balancer: ROUND_ROBIN (DestinationRule "
             "app/v2-rr)");
    free(out);
    q.dest = "web";
    assert_int_equal(run(st, &q, &out, err, sizeof(err)), WHY_ALLOWED);
    has(out, "load balancer: LEAST_REQUEST: the less loaded of two random endpoints (Istio's default)");
    free(out);
    manifest_store_free(st);
}

/* VirtualService source matches read the client as the waypoint does: the namespace of its identity, its
 * workload (sourceLabels), and the service port. */
static void test_virtual_service_source_matches(void **state)
{
    (void)state;
    const char *vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
                     "metadata: {name: by-source, namespace: app}\n"
                     "spec:\n  hosts: [web]\n  http:\n"
                     "  - match: [{sourceNamespace: other}]\n    route: [{destination: {host: svc-v2}}]\n"
                     "  - match: [{sourceLabels: {app: client}, port: 80}]\n"
                     "    route: [{destination: {host: svc-v1}}]\n";
    struct manifest_store *st = load(vs);
    struct why_query q = {.source = "app/client", .dest = "web", .path = "/"};
    char *out = NULL, err[512] = "";
    assert_int_equal(run(st, &q, &out, err, sizeof(err)), WHY_ALLOWED);
    has(out, "route: app/by-source rule 1");
    has(out, "app/svc-v1-0 10.0.1.3 node n1");
    free(out);
    manifest_store_free(st);
}

static void test_l7_deny_names_the_policy(void **state)
{
    (void)state;
    struct manifest_store *st = load(NULL);
    struct why_query q = {
        .source = "client.app", .dest = "svc.app.svc.cluster.local", .method = "POST", .path = "/api"};
    char *out = NULL, err[512] = "";
    assert_int_equal(run(st, &q, &out, err, sizeof(err)), WHY_DENIED);
    has(out, "RESULT: DENIED: 403 RBAC: access denied, by the waypoint app/waypoint (app/no-post)");
    has(out, "L7 authorization: DENY by AuthorizationPolicy app/no-post");
    free(out);
    manifest_store_free(st);
    /* an ALLOW policy that does not match: the policies that apply are named */
    const char *allow = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
                        "metadata: {name: web-get-only, namespace: app}\n"
                        "spec:\n  targetRefs: [{kind: Service, group: \"\", name: web}]\n  action: ALLOW\n"
                        "  rules: [{to: [{operation: {methods: [GET]}}]}]\n";
    st = load(allow);
    q.dest = "web";
    assert_int_equal(run(st, &q, &out, err, sizeof(err)), WHY_DENIED);
    has(out,
        "RESULT: DENIED: 403 RBAC: access denied, by the waypoint app/waypoint (no ALLOW policy matches: "
        "app/web-get-only)");
    has(out, "L7 policies targeting the waypoint or the Service: app/web-get-only");
    free(out);
    q.method = "GET";
    assert_int_equal(run(st, &q, &out, err, sizeof(err)), WHY_ALLOWED);
    has(out, "L7 authorization: ALLOW by AuthorizationPolicy app/web-get-only");
    free(out);
    manifest_store_free(st);
    /* a TCP port: the policy's method cannot be known, so its only rule is left out and nothing is allowed */
    const char *tcp =
        "apiVersion: v1\nkind: Service\nmetadata: {name: raw, namespace: app, labels: "
        "{istio.io/use-waypoint: waypoint}}\n"
        "spec: {clusterIP: 10.96.1.6, selector: {app: db}, ports: [{name: tcp, port: 7000}]}\n---\n"
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        "metadata: {name: raw-get-only, namespace: app}\n"
        "spec:\n  targetRefs: [{kind: Service, group: \"\", name: raw}]\n  action: ALLOW\n"
        "  rules: [{to: [{operation: {methods: [GET]}}]}]\n";
    st = load(tcp);
    q = (struct why_query){.source = "app/client", .dest = "raw"};
    assert_int_equal(run(st, &q, &out, err, sizeof(err)), WHY_DENIED);
    has(out, "RESULT: DENIED: the TCP connection is closed, by the waypoint app/waypoint (no ALLOW policy "
             "matches: "
             "app/raw-get-only)");
    has(out, "relayed as TCP; no route applies, L7 policies apply without their HTTP-only attributes");
    free(out);
    manifest_store_free(st);
}

static void test_no_route_when_routes_do_not_match(void **state)
{
    (void)state;
    /* A route that only matches /only: anything else is 404 NR, not the default route. */
    const char *extra =
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: only, namespace: app}\n"
        "spec:\n  parentRefs: [{group: \"\", kind: Service, name: svc-v1}]\n  rules:\n"
        "  - matches: [{path: {type: Exact, value: /only}}]\n    backendRefs: [{name: svc-v1, port: 80}]\n";
    struct manifest_store *st = load(extra);
    char *out = NULL, err[512] = "";
    /* svc-v1 has no waypoint: ztunnel goes straight to it, no route applies */
    struct why_query q = {.source = "app/client", .dest = "svc-v1", .path = "/x"};
    assert_int_equal(run(st, &q, &out, err, sizeof(err)), WHY_ALLOWED);
    has(out, "RESULT: ALLOWED: over HBONE from app/client to app/svc-v1:80");
    has(out, "no waypoint: node n1's ztunnel sends it over HBONE");
    free(out);
    manifest_store_free(st);
    /* give svc-v1 the waypoint: now the route applies */
    const char *bound =
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: only, namespace: app}\n"
        "spec:\n  parentRefs: [{group: \"\", kind: Service, name: svc}]\n  rules:\n"
        "  - matches: [{path: {type: Exact, value: /only}}]\n    backendRefs: [{name: svc-v1, port: 80}]\n";
    st = load(bound);
    q.dest = "svc";
    assert_int_equal(run(st, &q, &out, err, sizeof(err)), WHY_NO_ROUTE);
    has(out, "RESULT: NO ROUTE: 404 NR at the waypoint app/waypoint");
    free(out);
    manifest_store_free(st);
}

static void test_l4_policy_and_identity(void **state)
{
    (void)state;
    struct manifest_store *st = load(NULL);
    char *out = NULL, err[512] = "";
    struct why_query q = {.source = "app/client", .dest = "db"};
    assert_int_equal(run(st, &q, &out, err, sizeof(err)), WHY_ALLOWED);
    has(out, "port 5432: ALLOW by AuthorizationPolicy app/db-only-client");
    free(out);
    /* another identity is refused by db's ztunnel */
    q.source = "app/svc-v1-0";
    assert_int_equal(run(st, &q, &out, err, sizeof(err)), WHY_DENIED);
    has(out, "RESULT: DENIED: the ztunnel of app/db-0 refuses the connection (ALLOW policies apply, none "
             "matches)");
    free(out);
    /* a pod outside the mesh: plaintext, no identity, and the waypoint is not in its path */
    q.source = "plain/outsider";
    q.dest = "svc.app";
    q.port = 80;
    assert_int_equal(run(st, &q, &out, err, sizeof(err)), WHY_ALLOWED);
    has(out, "not in the mesh: neither the pod nor its namespace has istio.io/dataplane-mode=ambient");
    has(out, "does not pass the waypoint");
    has(out, "identity none (plaintext), port 8080: ALLOW");
    free(out);
    manifest_store_free(st);
}

static void test_waypoint_without_ready_pod_is_refused(void **state)
{
    (void)state;
    /* the waypoint pod is not ready: ztunnel refuses rather than go around it */
    const char *not_ready =
        "apiVersion: v1\nkind: Pod\nmetadata: {name: waypoint-0, namespace: app, labels: "
        "{gateway.networking.k8s.io/gateway-name: waypoint, istio.io/dataplane-mode: none}}\n"
        "spec: {nodeName: n2, serviceAccountName: waypoint, containers: [{name: c}]}\n"
        "status: {phase: Running, podIP: 10.0.2.10, conditions: [{type: Ready, status: "
        "\"False\"}]}\n";
    /* the base's ready pod is replaced: load the base without it */
    const char *p = strstr(base, "apiVersion: v1\nkind: Pod\nmetadata: {name: waypoint-0");
    const char *e = strstr(p, "---\n") + 4;
    char *yaml = NULL;
    assert_true(asprintf(&yaml, "%.*s%s%s", (int)(p - base), base, e, "") > 0);
    struct manifest_store *st = NULL;
    assert_int_equal(manifest_store_new(&st), 0);
    assert_int_equal(manifest_load_buf(st, "b.yaml", yaml, strlen(yaml), NULL, NULL), 0);
    assert_int_equal(manifest_load_buf(st, "n.yaml", not_ready, strlen(not_ready), NULL, NULL), 0);
    struct why_query q = {.source = "app/client", .dest = "10.96.1.1", .port = 80};
    char *out = NULL, err[512] = "";
    assert_int_equal(run(st, &q, &out, err, sizeof(err)), WHY_REFUSED);
    has(out, "RESULT: REFUSED: waypoint app/waypoint has no ready pod");
    free(out);
    free(yaml);
    manifest_store_free(st);
}

static void test_lookup_errors(void **state)
{
    (void)state;
    struct manifest_store *st = load(NULL);
    char *out = NULL, err[512] = "";
    struct why_query q = {.source = "app/nobody", .dest = "svc"};
    assert_int_equal(run(st, &q, &out, err, sizeof(err)), -ENOENT);
    assert_string_equal(err, "no pod app/nobody");
    free(out);
    q.source = "app/client";
    q.dest = "nosuch";
    assert_int_equal(run(st, &q, &out, err, sizeof(err)), -ENOENT);
    assert_string_equal(err, "no Service app/nosuch");
    free(out);
    q.dest = "svc";
    q.port = 81;
    assert_int_equal(run(st, &q, &out, err, sizeof(err)), -ENOENT);
    assert_string_equal(err, "Service app/svc has no port 81");
    free(out);
    q.dest = "svc.app.example.com";
    q.port = 0;
    assert_int_equal(run(st, &q, &out, err, sizeof(err)), -ENOENT);
    has(err, "not a Service name of this cluster");
    free(out);
    manifest_store_free(st);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_split_through_the_waypoint),
        cmocka_unit_test(test_l7_deny_names_the_policy),
        cmocka_unit_test(test_destination_rule_load_balancer),
        cmocka_unit_test(test_virtual_service_source_matches),
        cmocka_unit_test(test_no_route_when_routes_do_not_match),
        cmocka_unit_test(test_l4_policy_and_identity),
        cmocka_unit_test(test_waypoint_without_ready_pod_is_refused),
        cmocka_unit_test(test_lookup_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
