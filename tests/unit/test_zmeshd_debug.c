/* Unit tests for zmeshd's debug documents (src/zmeshd/debug.c) from a zmeshd_xds_status() object: the syncz
 * entries (istiod's proxy id, the metadata's CLUSTER_ID and ISTIO_VERSION, watched types only, istioctl's
 * short type names, last_updated in RFC 3339), /debug/connections, and /metrics (every family with HELP and
 * TYPE, per-type counters). The HTTP side is exercised by tests/e2e/test_proxy_status.py. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "zmeshd/debug.h"

#define ADDR "type.googleapis.com/istio.workload.Address"
#define AUTHZ "type.googleapis.com/istio.security.Authorization"

static json_t *status(void)
{
    static const char doc[] =
        "{\"types\": [], \"generations\": 3,"
        " \"totals\": {\"streams_opened\": 5, \"streams_refused\": 1, \"types\": ["
        "   {\"type_url\": \"" ADDR "\", \"responses\": 7, \"acks\": 6, \"nacks\": 0, \"resources_sent\": 40,"
        "    \"bytes_sent\": 4096},"
        "   {\"type_url\": \"" AUTHZ "\", \"responses\": 4, \"acks\": 2, \"nacks\": 2, \"resources_sent\": 3,"
        "    \"bytes_sent\": 300}]},"
        " \"clients\": ["
        "  {\"peer\": \"istio-system/ztunnel\","
        "   \"node_id\": \"ztunnel~10.0.0.1~ztunnel-x.istio-system~istio-system.svc.cluster.local\","
        "   \"cluster\": \"envoy-cluster\", \"state\": \"active\", \"error\": \"\","
        "   \"metadata\": {\"CLUSTER_ID\": \"east\", \"ISTIO_VERSION\": \"1.24.1\", \"NAMESPACE\": "
        "\"istio-system\"},"
        "   \"types\": ["
        "    {\"type_url\": \"" ADDR "\", \"sync_status\": \"SYNCED\", \"subscribed\": true,"
        "     \"subscription\": \"wildcard\", \"version_sent\": \"4\", \"nonce_sent\": \"n-4\","
        "     \"version_acked\": \"4\", \"nonce_acked\": \"n-4\", \"last_nack\": null, \"responses\": 2,"
        "     \"acks\": 2, \"nacks\": 0, \"last_push\": {\"unix_ms\": 1800000000123}},"
        "    {\"type_url\": \"" AUTHZ "\", \"sync_status\": \"ERROR\", \"subscribed\": true,"
        "     \"subscription\": \"wildcard\", \"version_sent\": \"2\", \"nonce_sent\": \"n-5\","
        "     \"version_acked\": \"1\", \"nonce_acked\": \"n-3\","
        "     \"last_nack\": {\"message\": \"bad\", \"nonce\": \"n-5\", \"code\": 3}, \"responses\": 2,"
        "     \"acks\": 1, \"nacks\": 1, \"last_push\": {\"unix_ms\": 1800000000000}}]},"
        "  {\"peer\": \"demo/app\", \"node_id\": \"odd-node\", \"cluster\": \"\", \"state\": \"failed\","
        "   \"error\": \"too many names\", \"metadata\": {},"
        "   \"types\": ["
        "    {\"type_url\": \"" ADDR "\", \"sync_status\": \"NOT_SENT\", \"subscribed\": false,"
        "     \"last_push\": {\"unix_ms\": 0}}]},"
        "  {\"peer\": \"demo/new\", \"node_id\": \"\", \"cluster\": \"\", \"state\": \"new\", \"error\": "
        "\"\","
        "   \"metadata\": {}, \"types\": []}]}";
    json_error_t je;
    json_t *j = json_loads(doc, 0, &je);
    if (!j) fail_msg("status document: %s", je.text);
    return j;
}

static void test_syncz(void **state)
{
    (void)state;
    json_t *st = status(), *z = zmeshd_debug_syncz(st, "zmeshd-0", "west");
    assert_non_null(z);
    /* The third client has sent no request yet: not a proxy in syncz (it is a connection). */
    assert_int_equal(json_array_size(z), 2);
    json_t *p = json_array_get(z, 0);
    assert_string_equal(json_string_value(json_object_get(p, "proxy")), "ztunnel-x.istio-system");
    assert_string_equal(json_string_value(json_object_get(p, "proxy_type")), "ztunnel");
    /* istiod's ClusterID is the metadata's, not Envoy's node.cluster. */
    assert_string_equal(json_string_value(json_object_get(p, "cluster_id")), "east");
    assert_string_equal(json_string_value(json_object_get(p, "istio_version")), "1.24.1");
    assert_string_equal(json_string_value(json_object_get(p, "namespace")), "istio-system");
    assert_string_equal(json_string_value(json_object_get(p, "istiod")), "zmeshd-0");
    json_t *types = json_object_get(p, "types");
    assert_int_equal(json_array_size(types), 2);
    json_t *a = json_array_get(types, 0), *z1 = json_array_get(types, 1);
    assert_string_equal(json_string_value(json_object_get(a, "type")), "WDS");
    assert_string_equal(json_string_value(json_object_get(a, "status")), "SYNCED");
    assert_string_equal(json_string_value(json_object_get(a, "last_updated")), "2027-01-15T08:00:00.123Z");
    assert_true(json_is_null(json_object_get(a, "last_nack")));
    assert_string_equal(json_string_value(json_object_get(z1, "type")), "WADS");
    assert_string_equal(json_string_value(json_object_get(z1, "status")), "ERROR");
    assert_string_equal(json_string_value(json_object_get(json_object_get(z1, "last_nack"), "message")),
                        "bad");
    assert_string_equal(json_string_value(json_object_get(z1, "nonce_acked")), "n-3");
    /* A node id that is not Istio's four parts is shown as it is; a type not watched is not listed. */
    p = json_array_get(z, 1);
    assert_string_equal(json_string_value(json_object_get(p, "proxy")), "odd-node");
    assert_string_equal(json_string_value(json_object_get(p, "proxy_type")), "");
    assert_string_equal(json_string_value(json_object_get(p, "error")), "too many names");
    /* No CLUSTER_ID in its metadata: zmeshd's own cluster, as istiod assumes. */
    assert_string_equal(json_string_value(json_object_get(p, "cluster_id")), "west");
    assert_int_equal(json_array_size(json_object_get(p, "types")), 0);
    json_decref(z);

    z = zmeshd_debug_connections(st, NULL);
    assert_int_equal(json_array_size(z), 3);
    assert_string_equal(json_string_value(json_object_get(json_array_get(z, 0), "identity")),
                        "istio-system/ztunnel");
    assert_string_equal(json_string_value(json_object_get(json_array_get(z, 1), "state")), "failed");
    assert_string_equal(json_string_value(json_object_get(json_array_get(z, 1), "cluster_id")), "");
    json_decref(z);
    json_decref(st);
}

static void test_proxy_id(void **state)
{
    (void)state;
    char buf[64];
    zmeshd_debug_proxy_id("ztunnel~1.2.3.4~a.b~b.svc.cluster.local", buf, sizeof(buf));
    assert_string_equal(buf, "a.b");
    zmeshd_debug_proxy_id("sidecar~1.2.3.4~~x", buf, sizeof(buf)); /* empty id part: as it is */
    assert_string_equal(buf, "sidecar~1.2.3.4~~x");
    zmeshd_debug_proxy_id("a~b~c~d~e", buf, sizeof(buf)); /* five parts: not Istio's */
    assert_string_equal(buf, "a~b~c~d~e");
    zmeshd_debug_proxy_id("", buf, sizeof(buf));
    assert_string_equal(buf, "");
}

static void test_metrics(void **state)
{
    (void)state;
    json_t *st = status();
    size_t n = 0;
    char *m = zmeshd_debug_metrics(st, &n);
    assert_non_null(m);
    assert_int_equal(strlen(m), n);
    static const char *const want[] = {
        "# TYPE zmeshd_xds_clients gauge\nzmeshd_xds_clients 3\n",
        "zmeshd_xds_streams_total 5\n",
        "zmeshd_xds_streams_refused_total 1\n",
        "# TYPE zmeshd_xds_pushes_total counter\nzmeshd_xds_pushes_total{type=\"wds\"} 7\n"
        "zmeshd_xds_pushes_total{type=\"wads\"} 4\n",
        "zmeshd_xds_acks_total{type=\"wads\"} 2\n",
        "zmeshd_xds_nacks_total{type=\"wads\"} 2\n",
        "zmeshd_xds_resources_sent_total{type=\"wds\"} 40\n",
        "zmeshd_xds_sent_bytes_total{type=\"wds\"} 4096\n",
        "zmeshd_snapshots_total 3\n",
    };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
        if (!strstr(m, want[i])) fail_msg("missing %s in:\n%s", want[i], m);
    /* Every sample line's family has its HELP and TYPE before it. */
    for (char *l = m, *nl; (nl = strchr(l, '\n')); l = nl + 1) {
        if (*l == '#') continue;
        char fam[64], help[80];
        snprintf(fam, sizeof(fam), "%.*s", (int)strcspn(l, "{ "), l);
        snprintf(help, sizeof(help), "# HELP %s ", fam);
        char *h = strstr(m, help);
        assert_non_null(h);
        assert_true(h < l);
    }
    free(m);
    /* An empty status (no totals yet) still renders. */
    json_t *empty = json_object();
    m = zmeshd_debug_metrics(empty, &n);
    assert_non_null(strstr(m, "zmeshd_xds_clients 0\n"));
    free(m);
    json_decref(empty);
    json_decref(st);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_syncz),
        cmocka_unit_test(test_proxy_id),
        cmocka_unit_test(test_metrics),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
