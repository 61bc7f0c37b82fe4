/* Unit tests for the DestinationRule model (src/mesh/destination_rule.c) through l7_builder_add: decoding,
 * validation errors that name the field, the lookup by Service (oldest rule wins), subset endpoints and the
 * policy precedence (rule, rule port-level, subset, subset port-level). */
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
#include "zmesh/destination_rule.pb-c.h"

static int add(struct l7_builder *b, const char *name, const Zmesh__V1__DestinationRule *m, char *err,
               size_t n)
{
    size_t len = zmesh__v1__destination_rule__get_packed_size(m);
    uint8_t *buf = malloc(len ? len : 1);
    zmesh__v1__destination_rule__pack(m, buf);
    int rc = l7_builder_add(b, L7_TYPE_URL_DESTINATION_RULE, name, buf, len, err, n);
    free(buf);
    return rc;
}

static void base(Zmesh__V1__DestinationRule *m, const char *svc)
{
    zmesh__v1__destination_rule__init(m);
    m->namespace_ = "ns";
    m->name = (char *)svc;
    m->host = (char *)svc;
    m->service_namespace = "ns";
    m->service_name = (char *)svc;
}

static void test_lookup_and_policy(void **state)
{
    (void)state;
    struct l7_builder *b = l7_builder_new();
    char err[512];
    /* rule: ROUND_ROBIN; port 8080: RANDOM; subset v1: ring hash on x-user (own policy); subset v2 none;
     * subset v1's port 9090 entry: MAGLEV on source IP. */
    Zmesh__V1__LoadBalancer rr = ZMESH__V1__LOAD_BALANCER__INIT, rnd = ZMESH__V1__LOAD_BALANCER__INIT,
                            ring = ZMESH__V1__LOAD_BALANCER__INIT, mag = ZMESH__V1__LOAD_BALANCER__INIT;
    rr.simple = ZMESH__V1__LOAD_BALANCER__SIMPLE__ROUND_ROBIN;
    rnd.simple = ZMESH__V1__LOAD_BALANCER__SIMPLE__RANDOM;
    Zmesh__V1__ConsistentHash ch1 = ZMESH__V1__CONSISTENT_HASH__INIT, ch2 = ZMESH__V1__CONSISTENT_HASH__INIT;
    ch1.key_case = ZMESH__V1__CONSISTENT_HASH__KEY_HTTP_HEADER_NAME;
    ch1.http_header_name = "X-User";
    ring.consistent_hash = &ch1;
    ch2.key_case = ZMESH__V1__CONSISTENT_HASH__KEY_USE_SOURCE_IP;
    ch2.use_source_ip = 1;
    ch2.algorithm = ZMESH__V1__CONSISTENT_HASH__ALGORITHM__MAGLEV;
    mag.consistent_hash = &ch2;
    Zmesh__V1__PortTrafficPolicy p8080 = ZMESH__V1__PORT_TRAFFIC_POLICY__INIT,
                                 p9090 = ZMESH__V1__PORT_TRAFFIC_POLICY__INIT;
    p8080.port = 8080;
    p8080.load_balancer = &rnd;
    p9090.port = 9090;
    p9090.load_balancer = &mag;
    Zmesh__V1__PortTrafficPolicy *pl1[] = {&p8080}, *pl2[] = {&p9090};
    Zmesh__V1__TrafficPolicy tp = ZMESH__V1__TRAFFIC_POLICY__INIT, stp = ZMESH__V1__TRAFFIC_POLICY__INIT;
    tp.load_balancer = &rr;
    tp.port_level_settings = pl1;
    tp.n_port_level_settings = 1;
    Zmesh__V1__OutlierDetection od = ZMESH__V1__OUTLIER_DETECTION__INIT;
    tp.outlier_detection = &od;
    stp.load_balancer = &ring;
    stp.port_level_settings = pl2;
    stp.n_port_level_settings = 1;
    Zmesh__V1__Label l1 = ZMESH__V1__LABEL__INIT, l2 = ZMESH__V1__LABEL__INIT;
    l1.key = "version";
    l1.value = "v1";
    l2.key = "version";
    l2.value = "v2";
    Zmesh__V1__Label *ls1[] = {&l1}, *ls2[] = {&l2};
    char *eps1[] = {"ns/pod-b", "ns/pod-a"};
    Zmesh__V1__Subset s1 = ZMESH__V1__SUBSET__INIT, s2 = ZMESH__V1__SUBSET__INIT;
    s1.name = "v1";
    s1.labels = ls1;
    s1.n_labels = 1;
    s1.endpoints = eps1;
    s1.n_endpoints = 2;
    s1.traffic_policy = &stp;
    s2.name = "v2";
    s2.labels = ls2;
    s2.n_labels = 1;
    Zmesh__V1__Subset *ss[] = {&s1, &s2};
    Zmesh__V1__DestinationRule m;
    base(&m, "svc");
    m.traffic_policy = &tp;
    m.subsets = ss;
    m.n_subsets = 2;
    m.creation_timestamp = 200;
    assert_int_equal(add(b, "ns/svc", &m, err, sizeof(err)), 0);
    /* an older rule for the same Service wins; a duplicate name is refused */
    Zmesh__V1__DestinationRule old;
    base(&old, "svc");
    old.creation_timestamp = 100;
    assert_int_equal(add(b, "ns/older", &old, err, sizeof(err)), 0);
    assert_int_equal(add(b, "ns/older", &old, err, sizeof(err)), -EEXIST);
    Zmesh__V1__DestinationRule other;
    base(&other, "other");
    other.traffic_policy = &tp;
    other.subsets = ss;
    other.n_subsets = 2;
    assert_int_equal(add(b, "ns/other", &other, err, sizeof(err)), 0);
    struct l7_config *c = l7_builder_finish(b);
    assert_non_null(c);
    assert_int_equal(l7_config_n_destination_rules(c), 3);
    const struct dr_rule *r = l7_destination_rule_for(c, "ns", "svc");
    assert_non_null(r);
    assert_string_equal(r->key, "ns/older");
    assert_null(l7_destination_rule_for(c, "ns", "nope"));
    assert_null(l7_destination_rule_for(c, "other-ns", "other"));
    r = l7_destination_rule_for(c, "ns", "other");
    assert_non_null(r);
    assert_string_equal(r->key, "ns/other");

    struct dr_policy p = dr_policy_for(r, NULL, 80);
    assert_non_null(p.lb);
    assert_int_equal(p.lb->lb, DR_LB_ROUND_ROBIN);
    assert_non_null(p.outlier);
    assert_int_equal(p.outlier->consecutive_5xx, 5); /* Istio's default for a written block */
    assert_int_equal(p.outlier->base_ejection_ms, 30000);
    p = dr_policy_for(r, NULL, 8080); /* the port entry replaces all parts: no outlier detection there */
    assert_int_equal(p.lb->lb, DR_LB_RANDOM);
    assert_null(p.outlier);
    const struct dr_subset *v1 = dr_subset_find(r, "v1"), *v2 = dr_subset_find(r, "v2");
    assert_non_null(v1);
    assert_non_null(v2);
    assert_null(dr_subset_find(r, "v3"));
    p = dr_policy_for(r, v1, 80); /* the subset's loadBalancer replaces the rule's, outlier kept */
    assert_int_equal(p.lb->lb, DR_LB_RING_HASH);
    assert_int_equal(p.lb->hash_key, DR_HASH_HEADER);
    assert_string_equal(p.lb->hash_name, "x-user");
    assert_int_equal(p.lb->ring_size, 1024);
    assert_non_null(p.outlier);
    p = dr_policy_for(r, v1, 8080); /* rule's port entry, then the subset's loadBalancer */
    assert_int_equal(p.lb->lb, DR_LB_RING_HASH);
    p = dr_policy_for(r, v1, 9090);
    assert_int_equal(p.lb->lb, DR_LB_MAGLEV);
    assert_int_equal(p.lb->hash_key, DR_HASH_SOURCE_IP);
    assert_int_equal(p.lb->table_size, 65537);
    assert_null(p.outlier);
    p = dr_policy_for(r, v2, 80);
    assert_int_equal(p.lb->lb, DR_LB_ROUND_ROBIN);
    assert_true(dr_subset_has(v1, "ns", "pod-a"));
    assert_true(dr_subset_has(v1, "ns", "pod-b"));
    assert_false(dr_subset_has(v1, "ns", "pod-c"));
    assert_false(dr_subset_has(v1, "other", "pod-a"));
    assert_false(dr_subset_has(v2, "ns", "pod-a"));
    p = dr_policy_for(NULL, NULL, 80);
    assert_null(p.lb);
    l7_config_unref(c);
}

/* Each bad resource is refused with the field named. */
static void test_errors(void **state)
{
    (void)state;
    char err[512];
    struct {
        const char *field;
        int which;
    } cases[] = {
        {"subsets[0].name: \"Bad_Name\" is not a DNS label", 0},
        {"subsets[1].name: subset \"a\" is defined twice", 1},
        {"trafficPolicy.loadBalancer.consistentHash.maglev.tableSize: 1000 is not a prime", 2},
        {"trafficPolicy.loadBalancer.simple: simple and consistentHash are exclusive", 3},
        {"trafficPolicy.loadBalancer.consistentHash.httpHeaderName: not a valid header name", 4},
        {"trafficPolicy.outlierDetection.maxEjectionPercent: 101 is above 100", 5},
        {"trafficPolicy.portLevelSettings[1].port.number: port 80 is set twice", 6},
        {"host: required", 7},
        {"trafficPolicy.loadBalancer.consistentHash: one of httpHeaderName", 8},
        {"subsets[0].endpoints[0]: expected \"<namespace>/<pod>\"", 9},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        Zmesh__V1__DestinationRule m;
        base(&m, "svc");
        Zmesh__V1__Subset s1 = ZMESH__V1__SUBSET__INIT, s2 = ZMESH__V1__SUBSET__INIT;
        Zmesh__V1__Subset *ss[] = {&s1, &s2};
        Zmesh__V1__TrafficPolicy tp = ZMESH__V1__TRAFFIC_POLICY__INIT;
        Zmesh__V1__LoadBalancer lb = ZMESH__V1__LOAD_BALANCER__INIT;
        Zmesh__V1__ConsistentHash ch = ZMESH__V1__CONSISTENT_HASH__INIT;
        Zmesh__V1__OutlierDetection od = ZMESH__V1__OUTLIER_DETECTION__INIT;
        Zmesh__V1__PortTrafficPolicy pa = ZMESH__V1__PORT_TRAFFIC_POLICY__INIT,
                                     pb = ZMESH__V1__PORT_TRAFFIC_POLICY__INIT;
        Zmesh__V1__PortTrafficPolicy *pl[] = {&pa, &pb};
        char *eps[] = {"no-slash"};
        s1.name = "a";
        s2.name = "a";
        ch.key_case = ZMESH__V1__CONSISTENT_HASH__KEY_HTTP_HEADER_NAME;
        ch.http_header_name = "x-ok";
        switch (cases[i].which) {
        case 0:
            s1.name = "Bad_Name";
            m.subsets = ss;
            m.n_subsets = 1;
            break;
        case 1:
            m.subsets = ss;
            m.n_subsets = 2;
            break;
        case 2:
            ch.algorithm = ZMESH__V1__CONSISTENT_HASH__ALGORITHM__MAGLEV;
            ch.table_size = 1000;
            lb.consistent_hash = &ch;
            break;
        case 3:
            lb.simple = ZMESH__V1__LOAD_BALANCER__SIMPLE__RANDOM;
            lb.consistent_hash = &ch;
            break;
        case 4:
            ch.http_header_name = "bad header";
            lb.consistent_hash = &ch;
            break;
        case 5:
            od.max_ejection_percent = 101;
            break;
        case 6:
            pa.port = pb.port = 80;
            tp.port_level_settings = pl;
            tp.n_port_level_settings = 2;
            break;
        case 7:
            m.host = "";
            break;
        case 8:
            ch.key_case = ZMESH__V1__CONSISTENT_HASH__KEY__NOT_SET;
            lb.consistent_hash = &ch;
            break;
        case 9:
            s1.endpoints = eps;
            s1.n_endpoints = 1;
            m.subsets = ss;
            m.n_subsets = 1;
            break;
        }
        if (cases[i].which >= 2 && cases[i].which <= 6) {
            m.traffic_policy = &tp;
            if (cases[i].which != 5 && cases[i].which != 6) tp.load_balancer = &lb;
            if (cases[i].which == 5) tp.outlier_detection = &od;
        }
        if (cases[i].which == 8) {
            m.traffic_policy = &tp;
            tp.load_balancer = &lb;
        }
        struct l7_builder *b = l7_builder_new();
        int rc = add(b, "ns/bad", &m, err, sizeof(err));
        if (rc != -EINVAL || !strstr(err, cases[i].field) || strncmp(err, "DestinationRule ns/bad: ", 24))
            fail_msg("case %zu: rc %d, err \"%s\", expected \"%s\"", i, rc, err, cases[i].field);
        l7_builder_free(b);
    }
    /* not a protobuf at all */
    struct l7_builder *b = l7_builder_new();
    const uint8_t junk[] = {0xff, 0xff, 0xff};
    assert_int_equal(
        l7_builder_add(b, L7_TYPE_URL_DESTINATION_RULE, "ns/j", junk, sizeof(junk), err, sizeof(err)),
        -EINVAL);
    assert_non_null(strstr(err, "not a valid zmesh.v1.DestinationRule encoding"));
    l7_builder_free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lookup_and_policy),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
