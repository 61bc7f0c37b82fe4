/* Unit tests for the VirtualService matches on the request's authority and scheme and on its source
 * (sourceNamespace, sourceLabels): Kubernetes YAML (pods and a VirtualService) read into a manifest store ->
 * l7_convert_doc (src/zmeshd/vs.c) -> zmesh.v1.HTTPRoute -> the waypoint's builder (src/mesh/l7.c) ->
 * l7_match for requests that differ in one attribute each. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "mesh/l7.h"
#include "mesh/retry.h"
#include "zmesh/l7.pb-c.h"
#include "zmeshd/l7.h"
#include "zmeshd/vs.h"

#define MAX_F 32
struct run {
    int rc;
    size_t n;
    struct {
        enum manifest_level level;
        char text[700];
    } f[MAX_F];
    struct l7_config *cfg;
    Zmesh__V1__HTTPRoute *pb; /* the converted message */
};

static void on_finding(void *ud, const struct manifest_finding *f)
{
    struct run *r = ud;
    if (r->n < MAX_F) {
        r->f[r->n].level = f->level;
        manifest_finding_format(f, r->f[r->n].text, sizeof(r->f[r->n].text));
        r->n++;
    }
}

static const char pods_yaml[] =
    "apiVersion: v1\nkind: Pod\nmetadata: {name: c1, namespace: app, labels: {app: client, version: v1}}\n"
    "spec: {containers: [{name: c, image: i}]}\n---\n"
    "apiVersion: v1\nkind: Pod\nmetadata: {name: c2, namespace: app, labels: {app: client, version: v2}}\n"
    "spec: {containers: [{name: c, image: i}]}\n---\n"
    "apiVersion: v1\nkind: Pod\nmetadata: {name: c3, namespace: other, labels: {app: client, version: v1}}\n"
    "spec: {containers: [{name: c, image: i}]}\n---\n";

#define VS_HEAD                                                                                              \
    "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: svc, namespace: app}\n"      \
    "spec:\n  hosts: [svc]\n  http:\n"

static void convert(const char *yaml, struct run *r)
{
    memset(r, 0, sizeof(*r));
    struct manifest_store *st;
    assert_int_equal(manifest_store_new(&st), 0);
    char buf[8192];
    snprintf(buf, sizeof(buf), "%s%s", pods_yaml, yaml);
    assert_int_equal(manifest_load_buf(st, "in.yaml", buf, strlen(buf), on_finding, r), 0);
    size_t n = 0;
    const struct manifest_l7_doc *docs = manifest_l7_docs(st, &n);
    assert_int_equal(n, 1);
    struct l7_builder *b = l7_builder_new();
    int type = -1;
    uint8_t *pb = NULL;
    size_t len = 0;
    char name[L7_NAME_MAX], err[512];
    r->rc = l7_convert_doc(&docs[0], &type, &pb, &len, name, sizeof(name), on_finding, r);
    if (r->rc == 0) {
        assert_int_equal(type, L7_T_HTTP_ROUTE);
        r->pb = zmesh__v1__httproute__unpack(NULL, len, pb);
        assert_non_null(r->pb);
        if (l7_builder_add(b, l7_type_urls[type], name, pb, len, err, sizeof(err)) != 0) fail_msg("%s", err);
        free(pb);
    }
    r->cfg = l7_builder_finish(b);
    manifest_store_free(st);
}

static void run_free(struct run *r)
{
    l7_config_unref(r->cfg);
    if (r->pb) zmesh__v1__httproute__free_unpacked(r->pb, NULL);
}

static bool has(const struct run *r, enum manifest_level lvl, const char *text)
{
    for (size_t i = 0; i < r->n; i++)
        if (r->f[i].level == lvl && strstr(r->f[i].text, text)) return true;
    return false;
}

/* The name of the rule req matches on app/svc port 80, or "404". */
static const char *match_name(const struct run *r, struct l7_request req)
{
    const struct l7_service_routes *sr = l7_routes_for(r->cfg, "app", "svc", 80);
    assert_non_null(sr);
    if (!req.method) req.method = "GET";
    if (!req.path) req.path = "/";
    req.path_len = strlen(req.path);
    if (!req.authority) req.authority = "svc";
    req.port = 80;
    const struct l7_rule *rule = l7_match(sr, &req);
    return rule ? rule->name : "404";
}

static void test_authority(void **state)
{
    (void)state;
    struct run r;
    convert(VS_HEAD "  - name: exact\n    match: [{authority: {exact: svc.example}}]\n"
                    "    route: [{destination: {host: svc}}]\n"
                    "  - name: prefix\n    match: [{authority: {prefix: api.}}]\n"
                    "    route: [{destination: {host: svc}}]\n"
                    "  - name: regex\n    match: [{authority: {regex: \"svc(:[0-9]+)?\"}}]\n"
                    "    route: [{destination: {host: svc}}]\n",
            &r);
    assert_int_equal(r.rc, 0);
    const Zmesh__V1__RouteMatch *m = r.pb->rules[1]->matches[0];
    assert_int_equal(m->authority->type, ZMESH__V1__STRING_MATCH__TYPE__STRING_PREFIX);
    assert_string_equal(m->authority->value, "api.");
    static const struct {
        const char *authority, *want;
    } cases[] = {
        {"svc.example", "exact"}, {"svc.example:80", "404"}, {"api.svc", "prefix"},
        {"api.", "prefix"},       {"API.svc", "404"},        {"svc", "regex"},
        {"svc:8080", "regex"},    {"svc:x", "404"},          {"", "404"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *got = match_name(&r, (struct l7_request){.authority = cases[i].authority});
        if (strcmp(got, cases[i].want))
            fail_msg("authority \"%s\": matched %s, want %s", cases[i].authority, got, cases[i].want);
    }
    run_free(&r);
}

static void test_scheme(void **state)
{
    (void)state;
    struct run r;
    convert(VS_HEAD "  - name: https\n    match: [{scheme: {exact: https}}]\n"
                    "    route: [{destination: {host: svc}}]\n"
                    "  - name: http\n    match: [{scheme: {exact: http}, uri: {prefix: /h}}]\n"
                    "    route: [{destination: {host: svc}}]\n",
            &r);
    assert_int_equal(r.rc, 0);
    assert_string_equal(match_name(&r, (struct l7_request){.path = "/h"}), "http"); /* unknown: http */
    assert_string_equal(match_name(&r, (struct l7_request){.path = "/h", .scheme = "http"}), "http");
    assert_string_equal(match_name(&r, (struct l7_request){.path = "/h", .scheme = "https"}), "https");
    assert_string_equal(match_name(&r, (struct l7_request){.path = "/x", .scheme = "http"}), "404");
    run_free(&r);
}

static void test_source(void **state)
{
    (void)state;
    struct run r;
    convert(VS_HEAD "  - name: v1-app\n    match: [{sourceLabels: {version: v1}, sourceNamespace: app}]\n"
                    "    route: [{destination: {host: svc}}]\n"
                    "  - name: v1-any\n    match: [{sourceLabels: {app: client, version: v1}}]\n"
                    "    route: [{destination: {host: svc}}]\n"
                    "  - name: ns-other\n    match: [{sourceNamespace: other}]\n"
                    "    route: [{destination: {host: svc}}]\n"
                    "  - name: nobody\n    match: [{sourceLabels: {version: v9}}]\n"
                    "    route: [{destination: {host: svc}}]\n",
            &r);
    assert_int_equal(r.rc, 0);
    /* resolved to the pods the labels select, in sourceNamespace when it is set, sorted */
    const Zmesh__V1__RouteMatch *m0 = r.pb->rules[0]->matches[0], *m1 = r.pb->rules[1]->matches[0],
                                *m3 = r.pb->rules[3]->matches[0];
    assert_true(m0->has_source_labels);
    assert_string_equal(m0->source_namespace, "app");
    assert_int_equal(m0->n_source_workloads, 1);
    assert_string_equal(m0->source_workloads[0], "app/c1");
    assert_int_equal(m1->n_source_workloads, 2);
    assert_string_equal(m1->source_workloads[0], "app/c1");
    assert_string_equal(m1->source_workloads[1], "other/c3");
    assert_true(m3->has_source_labels);
    assert_int_equal(m3->n_source_workloads, 0);
    assert_true(has(&r, MANIFEST_INFO, "spec.http[3].match[0].sourceLabels: selects no pod now"));
    static const struct {
        const char *id_ns, *wl_ns, *wl, *want;
    } cases[] = {
        {"app", "app", "c1", "v1-app"},   /* labels and namespace */
        {"other", "app", "c1", "v1-any"}, /* identity in another namespace: the first rule's ns fails */
        {"other", "other", "c3", "v1-any"}, {"other", "other", "c9", "ns-other"}, /* no such pod */
        {"app", "app", "c2", "404"},                                              /* version v2 */
        {NULL, NULL, NULL, "404"}, /* no identity, no workload: every source match fails */
        {"other", NULL, NULL, "ns-other"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *got = match_name(&r, (struct l7_request){.source_namespace = cases[i].id_ns,
                                                             .source_workload_ns = cases[i].wl_ns,
                                                             .source_workload = cases[i].wl});
        if (strcmp(got, cases[i].want))
            fail_msg("case %zu (%s, %s/%s): matched %s, want %s", i, cases[i].id_ns ? cases[i].id_ns : "-",
                     cases[i].wl_ns ? cases[i].wl_ns : "-", cases[i].wl ? cases[i].wl : "-", got,
                     cases[i].want);
    }
    run_free(&r);
}

static void test_findings(void **state)
{
    (void)state;
    static const struct {
        const char *http;
        const char *text;
    } cases[] = {
        {"  - match: [{authority: {}}]\n    route: [{destination: {host: svc}}]\n",
         "spec.http[0].match[0].authority: one of exact, prefix, regex is required"},
        {"  - match: [{scheme: {regex: \"(\"}}]\n    route: [{destination: {host: svc}}]\n",
         "spec.http[0].match[0].scheme.regex:"},
        {"  - match: [{sourceNamespace: \"a/b\"}]\n    route: [{destination: {host: svc}}]\n",
         "spec.http[0].match[0].sourceNamespace: expected a namespace name"},
        {"  - match: [{sourceLabels: {app: 1}}]\n    route: [{destination: {host: svc}}]\n",
         "spec.http[0].match[0].sourceLabels.app: expected a string"},
        {"  - match: [{sourceLabels: [a]}]\n    route: [{destination: {host: svc}}]\n",
         "spec.http[0].match[0].sourceLabels"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char yaml[2048];
        snprintf(yaml, sizeof(yaml), VS_HEAD "%s", cases[i].http);
        struct run r;
        convert(yaml, &r);
        if (r.rc != -EINVAL || !has(&r, MANIFEST_ERROR, cases[i].text)) {
            for (size_t k = 0; k < r.n; k++)
                print_message("[%d] %s\n", r.f[k].level, r.f[k].text);
            fail_msg("case %zu: rc %d, want -EINVAL and ERROR %s", i, r.rc, cases[i].text);
        }
        run_free(&r);
    }
}

/* headers.request on a weighted destination: its header operations stay with that destination, and a Host
 * set there is its own authority rewrite (Envoy's ClusterWeight host_rewrite_literal); a lone destination's
 * becomes the rule's rewrite. */
static void test_destination_headers(void **state)
{
    (void)state;
    struct run r;
    convert(VS_HEAD
            "  - name: split\n    route:\n"
            "    - destination: {host: svc-v1}\n      weight: 50\n"
            "      headers: {request: {set: {Host: one.example, x-d: one}}, response: {add: {x-r: one}}}\n"
            "    - destination: {host: svc-v2}\n      weight: 50\n"
            "      headers: {request: {add: {\":authority\": two.example}}}\n"
            "  - name: lone\n    route:\n"
            "    - destination: {host: svc-v1}\n      headers: {request: {set: {host: lone.example}}}\n",
            &r);
    assert_int_equal(r.rc, 0);
    assert_false(has(&r, MANIFEST_WARN, "not supported"));
    const Zmesh__V1__RouteRule *split = r.pb->rules[0], *lone = r.pb->rules[1];
    assert_string_equal(split->backends[0]->authority, "one.example");
    assert_string_equal(split->backends[1]->authority, "two.example");
    assert_int_equal(split->n_filters, 0);              /* no rule-level rewrite */
    assert_int_equal(split->backends[0]->n_filters, 2); /* request and response header modifiers */
    assert_string_equal(lone->backends[0]->authority, "");
    assert_int_equal(lone->n_filters, 1);
    assert_string_equal(lone->filters[0]->url_rewrite->hostname, "lone.example");
    /* the model keeps each destination's */
    const struct l7_service_routes *sr = l7_routes_for(r.cfg, "app", "svc", 80);
    const struct l7_rule *rule = l7_match(
        sr,
        &(struct l7_request){.method = "GET", .path = "/", .path_len = 1, .authority = "svc", .port = 80});
    assert_non_null(rule);
    assert_string_equal(rule->name, "split");
    assert_int_equal(rule->n_backends, 2);
    assert_string_equal(rule->backends[0].authority, "one.example");
    assert_string_equal(rule->backends[1].authority, "two.example");
    assert_int_equal(rule->backends[0].n_filters, 2);
    run_free(&r);
}

/* retries.retryIgnorePreviousHosts (true unless false, as Istio sets the previous_hosts predicate) and
 * retries.backoff (Envoy's base_interval, max 10x) reach the model and the back-off. */
static void test_retry_hosts_backoff(void **state)
{
    (void)state;
    struct run r;
    convert(VS_HEAD
            "  - name: same\n    match: [{uri: {prefix: /same}}]\n"
            "    retries: {attempts: 3, retryOn: 5xx, retryIgnorePreviousHosts: false, backoff: 100ms}\n"
            "    route: [{destination: {host: svc}}]\n"
            "  - name: other\n    retries: {attempts: 2, retryIgnorePreviousHosts: true}\n"
            "    route: [{destination: {host: svc}}]\n",
            &r);
    assert_int_equal(r.rc, 0);
    assert_false(has(&r, MANIFEST_WARN, "retryIgnorePreviousHosts"));
    assert_false(has(&r, MANIFEST_WARN, "backoff"));
    assert_false(r.pb->rules[0]->retry->retry_other_hosts);
    assert_int_equal(r.pb->rules[0]->retry->backoff_base_ms, 100);
    assert_true(r.pb->rules[1]->retry->retry_other_hosts);
    assert_int_equal(r.pb->rules[1]->retry->backoff_base_ms, 0);
    const struct l7_service_routes *sr = l7_routes_for(r.cfg, "app", "svc", 80);
    struct l7_request rq = {.method = "GET", .path = "/same", .path_len = 5, .authority = "svc", .port = 80};
    const struct l7_rule *same = l7_match(sr, &rq);
    rq.path = "/x";
    rq.path_len = 2;
    const struct l7_rule *other = l7_match(sr, &rq);
    assert_non_null(same);
    assert_non_null(other);
    assert_false(same->retry->retry_other_hosts);
    assert_int_equal(same->retry->backoff_base_ms, 100);
    assert_true(other->retry->retry_other_hosts);
    /* the interval before retry n is base * 2^(n-1), at most 10 x base: rnd interval-1 gives interval-1, rnd
     * interval gives 0 */
    static const struct {
        unsigned n;
        uint64_t interval;
    } cases[] = {{1, 100}, {2, 200}, {3, 400}, {4, 800}, {5, 1000}, {9, 1000}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        assert_int_equal(l7_retry_policy_backoff_ms(same->retry, cases[i].n, cases[i].interval - 1),
                         cases[i].interval - 1);
        assert_int_equal(l7_retry_policy_backoff_ms(same->retry, cases[i].n, cases[i].interval), 0);
    }
    /* without a backoff: Envoy's 25 ms, max 250 ms, as l7_retry_backoff_ms */
    assert_int_equal(l7_retry_policy_backoff_ms(other->retry, 1, 24), 24);
    assert_int_equal(l7_retry_policy_backoff_ms(other->retry, 1, 25), 0);
    assert_int_equal(l7_retry_policy_backoff_ms(NULL, 5, 249), 249);
    assert_int_equal(l7_retry_policy_backoff_ms(NULL, 5, 250), l7_retry_backoff_ms(5, 250));
    run_free(&r);
    /* bad values */
    static const struct {
        const char *retries, *text;
    } bad[] = {
        {"{attempts: 1, backoff: 500us}", "spec.http[0].retries.backoff: expected at least 1ms"},
        {"{attempts: 1, backoff: soon}", "spec.http[0].retries.backoff: not a duration"},
        {"{attempts: 1, retryIgnorePreviousHosts: maybe}",
         "spec.http[0].retries.retryIgnorePreviousHosts: expected true or false"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char yaml[1024];
        snprintf(yaml, sizeof(yaml), VS_HEAD "  - retries: %s\n    route: [{destination: {host: svc}}]\n",
                 bad[i].retries);
        convert(yaml, &r);
        if (r.rc != -EINVAL || !has(&r, MANIFEST_ERROR, bad[i].text)) {
            for (size_t k = 0; k < r.n; k++)
                print_message("[%d] %s\n", r.f[k].level, r.f[k].text);
            fail_msg("case %zu: rc %d, want ERROR %s", i, r.rc, bad[i].text);
        }
        run_free(&r);
    }
}

/* tls routes as Istio's waypoint reads them: tried before tcp routes, a match applies only to the Service its
 * sniHosts names exactly (by its full name) and to its port; other matches never apply (INFO). */
static void test_tls_routes(void **state)
{
    (void)state;
    struct run r;
    convert(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: svc, namespace: app}\n"
        "spec:\n  hosts: [svc, other]\n"
        "  tcp:\n  - route: [{destination: {host: svc-v1}}]\n"
        "  tls:\n"
        "  - match: [{sniHosts: [svc.app.svc.cluster.local], port: 443}, {sniHosts: [svc]},\n"
        "            {sniHosts: [other.app.svc.cluster.local], sourceLabels: {app: x}}]\n"
        "    route: [{destination: {host: svc-v2}}]\n"
        "  - match: [{sniHosts: [other.app.svc.cluster.local], destinationSubnets: [10.0.0.0/8]}]\n"
        "    route: [{destination: {host: svc-v3, subset: s}}]\n",
        &r);
    assert_int_equal(r.rc, 0);
    assert_true(has(&r, MANIFEST_INFO, "spec.tls[0].match[1].sniHosts: never applies at a waypoint"));
    assert_true(
        has(&r, MANIFEST_INFO, "spec.tls[0].match[2]: sourceLabels or sourceNamespace: never applies"));
    assert_true(has(&r, MANIFEST_WARN, "spec.tls[1].match[0].destinationSubnets: not read by a waypoint"));
    /* two tls rules (the others skipped), then the tcp rule */
    assert_int_equal(r.pb->n_tcp_rules, 3);
    assert_true(r.pb->tcp_rules[0]->tls);
    assert_string_equal(r.pb->tcp_rules[0]->service->name, "svc");
    assert_int_equal(r.pb->tcp_rules[0]->ports[0], 443);
    assert_false(r.pb->tcp_rules[2]->tls);
    const struct l7_tcp_rule *t = l7_tcp_route_for(r.cfg, "app", "svc", 443);
    assert_non_null(t);
    assert_true(t->tls);
    assert_string_equal(t->backends[0].name, "svc-v2");
    t = l7_tcp_route_for(r.cfg, "app", "svc", 8443); /* the tls match's port differs: the tcp route */
    assert_non_null(t);
    assert_false(t->tls);
    assert_string_equal(t->backends[0].name, "svc-v1");
    t = l7_tcp_route_for(r.cfg, "app", "other", 443); /* sniHosts names other: its tls route, any port */
    assert_non_null(t);
    assert_true(t->tls);
    assert_string_equal(t->backends[0].name, "svc-v3");
    assert_string_equal(t->backends[0].subset, "s");
    run_free(&r);
}

/* A VirtualService and an HTTPRoute on one Service: the message names the Service and the route applied, and
 * the condition is set once, kept while it says the same, and removed with an empty status. */
static void test_conflict_status(void **state)
{
    (void)state;
    static const char yaml[] = VS_HEAD
        "  - route: [{destination: {host: svc}}]\n---\n"
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: hr, namespace: app}\n"
        "spec:\n  parentRefs: [{group: \"\", kind: Service, name: svc}]\n"
        "  rules: [{backendRefs: [{name: svc, port: 80}]}]\n";
    struct manifest_store *st;
    assert_int_equal(manifest_store_new(&st), 0);
    struct run r = {0};
    assert_int_equal(manifest_load_buf(st, "in.yaml", yaml, strlen(yaml), on_finding, &r), 0);
    size_t n = 0;
    const struct manifest_l7_doc *docs = manifest_l7_docs(st, &n);
    char msg[2048];
    assert_int_equal(vs_conflict_message(docs, n, "app", "svc", msg, sizeof(msg)), 1);
    assert_non_null(strstr(msg, "Service app/svc also has HTTPRoute app/hr"));
    assert_non_null(strstr(msg, "zmesh's waypoint applies the HTTPRoute there"));
    assert_int_equal(vs_conflict_message(docs, n, "app", "other", msg, sizeof(msg)), 0);
    assert_string_equal(msg, "");
    json_t *o = json_pack("{s:s, s:{s:s, s:s}}", "kind", "VirtualService", "metadata", "name", "svc",
                          "namespace", "app");
    assert_int_equal(vs_conflict_status_apply(o, "m1", "2026-01-01T00:00:00Z"), 1);
    json_t *c = json_array_get(json_object_get(json_object_get(o, "status"), "conditions"), 0);
    assert_string_equal(json_string_value(json_object_get(c, "type")), VS_COND_ROUTE_CONFLICT);
    assert_string_equal(json_string_value(json_object_get(c, "status")), "True");
    assert_string_equal(json_string_value(json_object_get(c, "reason")), "GatewayAPIRouteApplies");
    assert_string_equal(json_string_value(json_object_get(c, "message")), "m1");
    assert_int_equal(vs_conflict_status_apply(o, "m1", "2026-01-02T00:00:00Z"), 0); /* unchanged */
    assert_int_equal(vs_conflict_status_apply(o, "m2", "2026-01-02T00:00:00Z"),
                     1); /* new message, same since */
    c = json_array_get(json_object_get(json_object_get(o, "status"), "conditions"), 0);
    assert_string_equal(json_string_value(json_object_get(c, "lastTransitionTime")), "2026-01-01T00:00:00Z");
    assert_int_equal(json_array_size(json_object_get(json_object_get(o, "status"), "conditions")), 1);
    assert_int_equal(vs_conflict_status_apply(o, NULL, "x"), 1);
    assert_null(json_object_get(o, "status"));
    assert_int_equal(vs_conflict_status_apply(o, "", "x"), 0);
    json_object_set_new(o, "status", json_string("bad"));
    assert_int_equal(vs_conflict_status_apply(o, "m", "x"), -EINVAL);
    json_decref(o);
    manifest_store_free(st);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_authority),
        cmocka_unit_test(test_scheme),
        cmocka_unit_test(test_source),
        cmocka_unit_test(test_findings),
        cmocka_unit_test(test_destination_headers),
        cmocka_unit_test(test_retry_hosts_backoff),
        cmocka_unit_test(test_tls_routes),
        cmocka_unit_test(test_conflict_status),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
