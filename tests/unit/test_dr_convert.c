/* Unit tests for zmeshd's DestinationRule conversion (src/zmeshd/destination_rule.c): Kubernetes YAML read
 * into a manifest store (the kind registered in manifest.c) -> l7_convert_doc -> zmesh.v1.DestinationRule ->
 * the waypoint's builder; host resolution, subsets resolved to the pods their labels select, the three API
 * versions, and every ERROR and WARN. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "mesh/destination_rule.h"
#include "mesh/l7.h"
#include "zmeshd/destination_rule.h"
#include "zmeshd/l7.h"

#define MAX_F 32
struct run {
    int rc;
    size_t n;
    struct {
        enum manifest_level level;
        char text[700];
    } f[MAX_F];
    struct l7_config *cfg;
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
    "apiVersion: v1\nkind: Pod\nmetadata: {name: a1, namespace: app, labels: {app: svc, version: v1}}\n"
    "spec: {containers: [{name: c, image: i}]}\n---\n"
    "apiVersion: v1\nkind: Pod\nmetadata: {name: a2, namespace: app, labels: {app: svc, version: v1, "
    "zone: x}}\nspec: {containers: [{name: c, image: i}]}\n---\n"
    "apiVersion: v1\nkind: Pod\nmetadata: {name: b1, namespace: app, labels: {app: svc, version: v2}}\n"
    "spec: {containers: [{name: c, image: i}]}\n---\n"
    "apiVersion: v1\nkind: Pod\nmetadata: {name: elsewhere, namespace: other, labels: {app: svc, version: "
    "v1}}\n"
    "spec: {containers: [{name: c, image: i}]}\n---\n";

/* Loads pods + yaml, converts every DestinationRule document and builds a config of the ones converted. */
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
    struct l7_builder *b = l7_builder_new();
    r->rc = 1;
    for (size_t i = 0; i < n; i++) {
        int type = -1;
        uint8_t *pb = NULL;
        size_t len = 0;
        char name[L7_NAME_MAX], err[512];
        r->rc = l7_convert_doc(&docs[i], &type, &pb, &len, name, sizeof(name), on_finding, r);
        assert_int_equal(type, L7_T_DESTINATION_RULE);
        if (r->rc == 0) {
            assert_int_equal(l7_builder_add(b, l7_type_urls[type], name, pb, len, err, sizeof(err)), 0);
            free(pb);
        }
    }
    r->cfg = l7_builder_finish(b);
    manifest_store_free(st);
}

static bool has(const struct run *r, enum manifest_level lvl, const char *text)
{
    for (size_t i = 0; i < r->n; i++)
        if (r->f[i].level == lvl && strstr(r->f[i].text, text)) return true;
    return false;
}

static void dump(const struct run *r)
{
    for (size_t i = 0; i < r->n; i++)
        print_message("[%d] %s\n", r->f[i].level, r->f[i].text);
}

static const char dr_yaml[] =
    "apiVersion: networking.istio.io/v1\n"
    "kind: DestinationRule\n"
    "metadata: {name: svc-dr, namespace: app}\n"
    "spec:\n"
    "  host: svc\n"
    "  trafficPolicy:\n"
    "    loadBalancer: {simple: ROUND_ROBIN}\n"
    "    portLevelSettings:\n"
    "    - port: {number: 9090}\n"
    "      loadBalancer:\n"
    "        consistentHash: {httpCookie: {name: user, path: /, ttl: 60s}, maglev: {tableSize: 251}}\n"
    "  subsets:\n"
    "  - name: v1\n"
    "    labels: {version: v1}\n"
    "    trafficPolicy:\n"
    "      loadBalancer:\n"
    "        consistentHash: {httpHeaderName: X-User, ringHash: {minimumRingSize: 2048}}\n"
    "  - name: v2\n"
    "    labels: {version: v2}\n"
    "  - name: all\n";

static void test_happy(void **state)
{
    (void)state;
    struct run r;
    convert(dr_yaml, &r);
    if (r.rc) dump(&r);
    assert_int_equal(r.rc, 0);
    assert_int_equal(r.n, 0); /* nothing to say */
    const struct dr_rule *d = l7_destination_rule_for(r.cfg, "app", "svc");
    assert_non_null(d);
    assert_string_equal(d->key, "app/svc-dr");
    assert_string_equal(d->host, "svc");
    const struct dr_subset *v1 = dr_subset_find(d, "v1"), *v2 = dr_subset_find(d, "v2"),
                           *all = dr_subset_find(d, "all");
    assert_non_null(v1);
    assert_non_null(v2);
    assert_non_null(all);
    assert_int_equal(v1->n_endpoints, 2); /* a1, a2; not other/elsewhere */
    assert_true(dr_subset_has(v1, "app", "a1"));
    assert_true(dr_subset_has(v1, "app", "a2"));
    assert_false(dr_subset_has(v1, "app", "b1"));
    assert_false(dr_subset_has(v1, "other", "elsewhere"));
    assert_int_equal(v2->n_endpoints, 1);
    assert_true(dr_subset_has(v2, "app", "b1"));
    assert_int_equal(all->n_endpoints, 3); /* no labels: every pod of the namespace */
    struct dr_policy p = dr_policy_for(d, NULL, 80);
    assert_int_equal(p.lb->lb, DR_LB_ROUND_ROBIN);
    p = dr_policy_for(d, NULL, 9090);
    assert_int_equal(p.lb->lb, DR_LB_MAGLEV);
    assert_int_equal(p.lb->hash_key, DR_HASH_COOKIE);
    assert_string_equal(p.lb->hash_name, "user");
    assert_string_equal(p.lb->cookie_path, "/");
    assert_true(p.lb->cookie_ttl);
    assert_int_equal(p.lb->cookie_ttl_ms, 60000);
    assert_int_equal(p.lb->table_size, 251);
    p = dr_policy_for(d, v1, 80);
    assert_int_equal(p.lb->lb, DR_LB_RING_HASH);
    assert_string_equal(p.lb->hash_name, "x-user");
    assert_int_equal(p.lb->ring_size, 2048);
    l7_config_unref(r.cfg);
}

static void test_versions_and_hosts(void **state)
{
    (void)state;
    const char *cases[][3] = {
        /* apiVersion, host, "ns/name" of the Service */
        {"networking.istio.io/v1beta1", "svc.app.svc.cluster.local", "app/svc"},
        {"networking.istio.io/v1alpha3", "reviews", "app/reviews"},
        {"networking.istio.io/v1", "ratings.prod.svc.cluster.local", "prod/ratings"},
    };
    for (size_t i = 0; i < 3; i++) {
        char y[1024];
        snprintf(y, sizeof(y),
                 "apiVersion: %s\nkind: DestinationRule\nmetadata: {name: d, namespace: app}\n"
                 "spec: {host: \"%s\", trafficPolicy: {loadBalancer: {simple: RANDOM}}}\n",
                 cases[i][0], cases[i][1]);
        struct run r;
        convert(y, &r);
        assert_int_equal(r.rc, 0);
        char ns[64];
        const char *slash = strchr(cases[i][2], '/');
        snprintf(ns, sizeof(ns), "%.*s", (int)(slash - cases[i][2]), cases[i][2]);
        const struct dr_rule *d = l7_destination_rule_for(r.cfg, ns, slash + 1);
        if (!d) fail_msg("case %zu: no rule for %s", i, cases[i][2]);
        assert_int_equal(dr_policy_for(d, NULL, 80).lb->lb, DR_LB_RANDOM);
        l7_config_unref(r.cfg);
    }
}

static void test_findings(void **state)
{
    (void)state;
    struct {
        const char *spec;
        enum manifest_level lvl;
        const char *text;
        int rc;
    } cases[] = {
        {"{host: svc, exportTo: [\".\"]}", MANIFEST_WARN, "spec.exportTo: not supported by the waypoint", 0},
        {"{host: svc, workloadSelector: {matchLabels: {a: b}}}", MANIFEST_WARN,
         "spec.workloadSelector: not supported", 0},
        {"{host: svc, trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}}", MANIFEST_WARN,
         "spec.trafficPolicy.tls: not supported by the waypoint", 0},
        {"{host: svc, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN, localityLbSetting: {enabled: "
         "true}}}}",
         MANIFEST_WARN, "spec.trafficPolicy.loadBalancer.localityLbSetting: not supported", 0},
        {"{host: svc, bogus: 1}", MANIFEST_WARN, "spec.bogus: unknown field", 0},
        {"{host: svc, trafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {name: u, attributes: "
         "[{name: "
         "SameSite, value: Strict}]}}}}}",
         MANIFEST_WARN, "httpCookie.attributes: not supported", 0},
        {"{trafficPolicy: {}}", MANIFEST_ERROR, "spec.host: required", -EINVAL},
        {"{host: \"*.example.com\"}", MANIFEST_ERROR,
         "spec.host: \"*.example.com\" names no Kubernetes Service", -EINVAL},
        {"{host: svc, trafficPolicy: {loadBalancer: {simple: FASTEST}}}", MANIFEST_ERROR,
         "spec.trafficPolicy.loadBalancer.simple: unknown value \"FASTEST\"", -EINVAL},
        {"{host: svc, trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: a, useSourceIp: "
         "true}}}}",
         MANIFEST_ERROR, "consistentHash: exactly one of httpHeaderName", -EINVAL},
        {"{host: svc, trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true, maglev: {tableSize: "
         "100}}}}}",
         MANIFEST_ERROR, "consistentHash.maglev.tableSize: 100 is not a prime", -EINVAL},
        {"{host: svc, trafficPolicy: {outlierDetection: {interval: 10 seconds}}}", MANIFEST_ERROR,
         "spec.trafficPolicy.outlierDetection.interval: expected a duration", -EINVAL},
        {"{host: svc, trafficPolicy: {outlierDetection: {maxEjectionPercent: 150}}}", MANIFEST_ERROR,
         "outlierDetection.maxEjectionPercent: expected an integer 0-100", -EINVAL},
        {"{host: svc, trafficPolicy: {portLevelSettings: [{loadBalancer: {simple: RANDOM}}]}}",
         MANIFEST_ERROR, "spec.trafficPolicy.portLevelSettings[0].port: port.number 1-65535 is required",
         -EINVAL},
        {"{host: svc, subsets: [{name: v1}, {name: v1}]}", MANIFEST_ERROR,
         "subsets[1].name: subset \"v1\" is defined "
         "twice",
         -EINVAL},
        {"{host: svc, subsets: [{labels: {a: b}}]}", MANIFEST_ERROR, "spec.subsets[0].name: required",
         -EINVAL},
        {"{host: svc, subsets: [{name: v1, labels: {version: 1}}]}", MANIFEST_ERROR,
         "spec.subsets[0].labels.version: expected a string", -EINVAL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char y[1024];
        snprintf(
            y, sizeof(y),
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d, namespace: app}\n"
            "spec: %s\n",
            cases[i].spec);
        struct run r;
        convert(y, &r);
        if (r.rc != cases[i].rc || !has(&r, cases[i].lvl, cases[i].text)) {
            dump(&r);
            fail_msg("case %zu: rc %d, expected %d and [%d] \"%s\"", i, r.rc, cases[i].rc, cases[i].lvl,
                     cases[i].text);
        }
        assert_int_equal(l7_config_n_destination_rules(r.cfg), cases[i].rc == 0 ? 1 : 0);
        l7_config_unref(r.cfg);
    }
    /* an unsupported apiVersion is refused by the manifest reader, naming the kind */
    struct run r;
    memset(&r, 0, sizeof(r));
    struct manifest_store *st;
    assert_int_equal(manifest_store_new(&st), 0);
    const char *y =
        "apiVersion: networking.istio.io/v2\nkind: DestinationRule\nmetadata: {name: d}\nspec: {host: "
        "svc}\n";
    assert_int_equal(manifest_load_buf(st, "in.yaml", y, strlen(y), on_finding, &r), 0);
    size_t n = 9;
    manifest_l7_docs(st, &n);
    assert_int_equal(n, 0);
    assert_true(has(&r, MANIFEST_ERROR, "not supported for kind DestinationRule"));
    manifest_store_free(st);
}

/* connectionPool's enforced fields: decoded, with nothing to warn about. */
static void test_conn_pool(void **state)
{
    (void)state;
    struct run r;
    convert(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d, namespace: app}\n"
        "spec: {host: svc, trafficPolicy: {connectionPool: {tcp: {maxConnections: 3, connectTimeout: 250ms}, "
        "http: {maxRequestsPerConnection: 2, idleTimeout: 1.5s, http2MaxRequests: 7, "
        "http1MaxPendingRequests: 4, maxRetries: 5}}}}\n",
        &r);
    if (r.rc || r.n) dump(&r);
    assert_int_equal(r.rc, 0);
    assert_int_equal(r.n, 0);
    const struct dr_rule *d = l7_destination_rule_for(r.cfg, "app", "svc");
    assert_non_null(d);
    struct dr_policy p = dr_policy_for(d, NULL, 80);
    assert_non_null(p.pool);
    assert_int_equal(p.pool->max_connections, 3);
    assert_int_equal(p.pool->connect_timeout_ms, 250);
    assert_int_equal(p.pool->max_requests_per_connection, 2);
    assert_int_equal(p.pool->idle_timeout_ms, 1500);
    assert_int_equal(p.pool->http2_max_requests, 7);
    assert_int_equal(p.pool->http1_max_pending_requests, 4);
    assert_int_equal(p.pool->max_retries, 5);
    l7_config_unref(r.cfg);
}

static void test_duration(void **state)
{
    (void)state;
    uint64_t ms;
    assert_int_equal(l7_istio_duration_ms("10s", &ms), 0);
    assert_int_equal(ms, 10000);
    assert_int_equal(l7_istio_duration_ms("1.5s", &ms), 0);
    assert_int_equal(ms, 1500);
    assert_int_equal(l7_istio_duration_ms("1h30m", &ms), 0);
    assert_int_equal(ms, 5400000);
    assert_int_equal(l7_istio_duration_ms("250ms", &ms), 0);
    assert_int_equal(ms, 250);
    assert_int_equal(l7_istio_duration_ms("0s", &ms), 0);
    assert_int_equal(ms, 0);
    assert_int_equal(l7_istio_duration_ms("10", &ms), -EINVAL);
    assert_int_equal(l7_istio_duration_ms("s", &ms), -EINVAL);
    assert_int_equal(l7_istio_duration_ms("-1s", &ms), -EINVAL);
    assert_int_equal(l7_istio_duration_ms("", &ms), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_happy),    cmocka_unit_test(test_versions_and_hosts),
        cmocka_unit_test(test_findings), cmocka_unit_test(test_conn_pool),
        cmocka_unit_test(test_duration),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
