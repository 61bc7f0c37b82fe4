/* Unit tests for the waypoint's telemetry (src/waypoint/telemetry.c, in libzmesh.a): Istio's label set for
 * reporter="waypoint" in its order, defaults and escaping, Envoy's histogram buckets at their edges, gRPC
 * message counters, TCP counters, both exposition formats (the text one checked by promtool), the access
 * log's text line byte for byte and its JSON object parsed back, and exact totals under two recording
 * threads.
 *
 * The registries are process-wide and never shrink, so each test gives its requests a label set of its own
 * (a distinct host, principal or flag) and reads only its own samples. */
#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "mesh/config.h"
#include "waypoint/telemetry.h"

static const char *mesh_yaml = "workloads:\n"
                               "- name: client-7d4\n"
                               "  namespace: app\n"
                               "  serviceAccount: client\n"
                               "  workloadName: client\n"
                               "  canonicalName: client-svc\n"
                               "  canonicalRevision: v1\n"
                               "  clusterId: c1\n"
                               "  workloadIps: [\"10.0.0.1\"]\n"
                               "  protocol: HBONE\n"
                               "- name: server-0\n"
                               "  namespace: app\n"
                               "  serviceAccount: server\n"
                               "  trustDomain: example.org\n"
                               "  workloadName: server\n"
                               "  canonicalName: server-app\n"
                               "  canonicalRevision: v2\n"
                               "  clusterId: c2\n"
                               "  workloadIps: [\"10.0.0.2\"]\n"
                               "  protocol: HBONE\n"
                               "  services:\n"
                               "    \"app/server.app.svc.cluster.local\": {80: 8080}\n"
                               "services:\n"
                               "- name: server\n"
                               "  namespace: app\n"
                               "  hostname: server.app.svc.cluster.local\n"
                               "  vips: [\"/10.96.0.20\"]\n"
                               "  ports: {80: 8080}\n";

static struct snapshot *load_ok(const char *yaml)
{
    struct snapshot *s = NULL;
    char err[512];
    int rc = config_load_buf(yaml, strlen(yaml), "t.yaml", &s, err, sizeof(err));
    if (rc) fail_msg("load failed (%d): %s", rc, err);
    return s;
}

static char *render(bool om)
{
    size_t len = 0;
    char *t = wp_metrics_render(om, &len);
    assert_non_null(t);
    assert_int_equal(strlen(t), len);
    return t;
}

/* The value of the sample "<name>{<labels>}" (a whole line) in text, or -1 when absent. */
static long long sample(const char *text, const char *name, const char *labels)
{
    char *needle;
    assert_true(asprintf(&needle, "\n%s{%s} ", name, labels) > 0);
    const char *p = strstr(text, needle);
    long long v = p ? strtoll(p + strlen(needle), NULL, 10) : -1;
    free(needle);
    return v;
}

/* A histogram's bucket sample: labels then le, as Envoy writes them. */
static long long bucket(const char *text, const char *name, const char *labels, const char *le)
{
    char *l, *n;
    assert_true(asprintf(&l, "%s,le=\"%s\"", labels, le) > 0);
    assert_true(asprintf(&n, "%s_bucket", name) > 0);
    long long v = sample(text, n, l);
    free(l);
    free(n);
    return v;
}

static long long hist_part(const char *text, const char *name, const char *part, const char *labels)
{
    char *n;
    assert_true(asprintf(&n, "%s_%s", name, part) > 0);
    long long v = sample(text, n, labels);
    free(n);
    return v;
}

#define FULL_PEER                                                                                            \
    "reporter=\"waypoint\",source_workload=\"client\",source_canonical_service=\"client-svc\","              \
    "source_canonical_revision=\"v1\",source_workload_namespace=\"app\","                                    \
    "source_principal=\"spiffe://cluster.local/ns/app/sa/client\",source_app=\"client-svc\","                \
    "source_version=\"v1\",source_cluster=\"c1\",destination_workload=\"server\","                           \
    "destination_workload_namespace=\"app\",destination_principal=\"spiffe://example.org/ns/app/sa/"         \
    "server\","                                                                                              \
    "destination_app=\"server-app\",destination_version=\"v2\","                                             \
    "destination_service=\"server.app.svc.cluster.local\",destination_canonical_service=\"server-app\","     \
    "destination_canonical_revision=\"v2\",destination_service_name=\"server\","                             \
    "destination_service_namespace=\"app\",destination_cluster=\"c2\""

/* Every label from the peers' workloads and the service, in istio_stats' order; the three histograms. */
static void test_full_labels(void **state)
{
    struct snapshot *s = load_ok(mesh_yaml);
    struct wp_req_info ri = {
        .src_wl = snapshot_workload_at(s, 0),
        .src_principal = "spiffe://cluster.local/ns/app/sa/client",
        .dst_wl = snapshot_workload_at(s, 1),
        .dst_svc = snapshot_service_at(s, 0),
        .host = "ignored.example", /* the service wins over the Host header */
        .response_code = 200,
        .grpc_status = -1,
        .response_flags = "-",
        .request_bytes = 120,
        .response_bytes = 2048,
        .duration_ms = 5,
    };
    assert_int_equal(wp_metrics_request(&ri), 0);
    assert_int_equal(wp_metrics_request(&ri), 0);
    char *t = render(false);
    const char *labels =
        FULL_PEER ",request_protocol=\"http\",response_code=\"200\",grpc_response_status=\"\","
                  "response_flags=\"-\",connection_security_policy=\"mutual_tls\"";
    if (sample(t, "istio_requests_total", labels) != 2) fail_msg("no sample {%s} in:\n%s", labels, t);
    /* 5 ms lands in le="5" (inclusive), not in le="1". */
    const char *d = "istio_request_duration_milliseconds";
    assert_int_equal(bucket(t, d, labels, "1"), 0);
    assert_int_equal(bucket(t, d, labels, "5"), 2);
    assert_int_equal(bucket(t, d, labels, "10"), 2);
    assert_int_equal(bucket(t, d, labels, "3600000"), 2);
    assert_int_equal(bucket(t, d, labels, "+Inf"), 2);
    assert_int_equal(hist_part(t, d, "sum", labels), 10);
    assert_int_equal(hist_part(t, d, "count", labels), 2);
    /* Sizes use the same default buckets. */
    assert_int_equal(bucket(t, "istio_request_bytes", labels, "100"), 0);
    assert_int_equal(bucket(t, "istio_request_bytes", labels, "250"), 2);
    assert_int_equal(bucket(t, "istio_response_bytes", labels, "1000"), 0);
    assert_int_equal(bucket(t, "istio_response_bytes", labels, "2500"), 2);
    assert_int_equal(hist_part(t, "istio_response_bytes", "sum", labels), 4096);
    /* Plain HTTP has no message counters. */
    assert_int_equal(sample(t, "istio_request_messages_total", FULL_PEER), -1);
    assert_int_equal(sample(t, "istio_response_messages_total", FULL_PEER), -1);
    free(t);
    snapshot_unref(s);
}

/* Nothing known: "unknown" everywhere except source_canonical_revision ("latest", as istio_stats), no
 * response is code "0", no peer certificate is "none", and the Host header names the destination service. */
static void test_missing_labels(void **state)
{
    struct wp_req_info ri = {.host = "missing.example:8080", .grpc_status = -1, .response_flags = "NR"};
    assert_int_equal(wp_metrics_request(&ri), 0);
    char *t = render(false);
    const char *labels =
        "reporter=\"waypoint\",source_workload=\"unknown\",source_canonical_service=\"unknown\","
        "source_canonical_revision=\"latest\",source_workload_namespace=\"unknown\",source_principal="
        "\"unknown\","
        "source_app=\"unknown\",source_version=\"unknown\",source_cluster=\"unknown\","
        "destination_workload=\"unknown\",destination_workload_namespace=\"unknown\","
        "destination_principal=\"unknown\",destination_app=\"unknown\",destination_version=\"unknown\","
        "destination_service=\"missing.example:8080\",destination_canonical_service=\"unknown\","
        "destination_canonical_revision=\"unknown\",destination_service_name=\"missing.example:8080\","
        "destination_service_namespace=\"unknown\",destination_cluster=\"unknown\",request_protocol=\"http\","
        "response_code=\"0\",grpc_response_status=\"\",response_flags=\"NR\",connection_security_policy="
        "\"none\"";
    if (sample(t, "istio_requests_total", labels) != 1) fail_msg("no sample {%s} in:\n%s", labels, t);
    free(t);
    /* NULL info is refused. */
    assert_int_equal(wp_metrics_request(NULL), -EINVAL);
    assert_null(wp_metrics_tcp_open(NULL));
}

/* A principal without a workload: the namespace comes from the SPIFFE id; values are escaped. */
static void test_escaping(void **state)
{
    struct wp_req_info ri = {
        .src_principal = "spiffe://td/ns/esc-ns/sa/x",
        .host = "a\"b\\c\nd",
        .response_code = 503,
        .grpc_status = -1,
        .response_flags = "UF",
    };
    assert_int_equal(wp_metrics_request(&ri), 0);
    char *t = render(false);
    assert_non_null(
        strstr(t, ",source_workload_namespace=\"esc-ns\",source_principal=\"spiffe://td/ns/esc-ns/sa/x\","));
    assert_non_null(strstr(t, ",destination_service=\"a\\\"b\\\\c\\nd\","));
    assert_non_null(strstr(t, ",destination_service_name=\"a\\\"b\\\\c\\nd\","));
    assert_non_null(strstr(t, ",response_code=\"503\",grpc_response_status=\"\",response_flags=\"UF\","
                              "connection_security_policy=\"mutual_tls\"} 1\n"));
    free(t);
}

/* gRPC: request_protocol and grpc_response_status on the HTTP metrics, message counters under the peer labels
 * alone (as istio_stats reports them), added up over calls, present even when a call moved no message. */
static void test_grpc_messages(void **state)
{
    struct wp_req_info ri = {
        .src_principal = "spiffe://td/ns/grpc/sa/x",
        .host = "grpc.example",
        .grpc = true,
        .response_code = 200,
        .grpc_status = 14,
        .response_flags = "-",
        .request_messages = 3,
        .response_messages = 5,
        .duration_ms = 1,
    };
    assert_int_equal(wp_metrics_request(&ri), 0);
    ri.request_messages = 1;
    ri.response_messages = 0;
    assert_int_equal(wp_metrics_request(&ri), 0);
    struct wp_req_info none = ri;
    none.host = "grpc-none.example";
    none.request_messages = none.response_messages = 0;
    none.grpc_status = -1;
    assert_int_equal(wp_metrics_request(&none), 0);

    char *t = render(false);
    const char *peer =
        "reporter=\"waypoint\",source_workload=\"unknown\",source_canonical_service=\"unknown\","
        "source_canonical_revision=\"latest\",source_workload_namespace=\"grpc\","
        "source_principal=\"spiffe://td/ns/grpc/sa/x\",source_app=\"unknown\",source_version=\"unknown\","
        "source_cluster=\"unknown\",destination_workload=\"unknown\",destination_workload_namespace="
        "\"unknown\","
        "destination_principal=\"unknown\",destination_app=\"unknown\",destination_version=\"unknown\","
        "destination_service=\"grpc.example\",destination_canonical_service=\"unknown\","
        "destination_canonical_revision=\"unknown\",destination_service_name=\"grpc.example\","
        "destination_service_namespace=\"unknown\",destination_cluster=\"unknown\"";
    if (sample(t, "istio_request_messages_total", peer) != 4) fail_msg("no sample {%s} in:\n%s", peer, t);
    assert_int_equal(sample(t, "istio_response_messages_total", peer), 5);
    char full[4096];
    snprintf(
        full, sizeof(full),
        "%s,request_protocol=\"grpc\",response_code=\"200\",grpc_response_status=\"14\",response_flags=\"-\","
        "connection_security_policy=\"mutual_tls\"",
        peer);
    assert_int_equal(sample(t, "istio_requests_total", full), 2);
    /* 1 ms is in le="1", not in le="0.5". */
    assert_int_equal(bucket(t, "istio_request_duration_milliseconds", full, "0.5"), 0);
    assert_int_equal(bucket(t, "istio_request_duration_milliseconds", full, "1"), 2);
    /* A call without messages still has both samples, at 0, and no grpc-status is "". */
    assert_non_null(strstr(
        t, "destination_service=\"grpc-none.example\",destination_canonical_service=\"unknown\","
           "destination_canonical_revision=\"unknown\",destination_service_name=\"grpc-none."
           "example\",destination_service_namespace=\"unknown\",destination_cluster=\"unknown\"} 0\n"));
    assert_non_null(
        strstr(t, "destination_service_name=\"grpc-none.example\",destination_service_namespace=\"unknown\","
                  "destination_cluster=\"unknown\",request_protocol=\"grpc\",response_code=\"200\","
                  "grpc_response_status=\"\","));
    free(t);
}

/* A long gRPC stream counts messages as they pass, into the same set its final request adds the rest to. */
static void test_grpc_stream(void **state)
{
    struct wp_req_info ri = {.src_principal = "spiffe://td/ns/stream/sa/x",
                             .host = "stream.example",
                             .grpc = true,
                             .grpc_status = 0,
                             .response_code = 200};
    struct wp_grpc_msgs *m = wp_metrics_grpc_stream(&ri);
    assert_non_null(m);
    wp_metrics_grpc_add(m, 10, 20);
    char *t = render(false);
    const char *peer =
        "reporter=\"waypoint\",source_workload=\"unknown\",source_canonical_service=\"unknown\","
        "source_canonical_revision=\"latest\",source_workload_namespace=\"stream\","
        "source_principal=\"spiffe://td/ns/stream/sa/x\",source_app=\"unknown\",source_version=\"unknown\","
        "source_cluster=\"unknown\",destination_workload=\"unknown\",destination_workload_namespace="
        "\"unknown\","
        "destination_principal=\"unknown\",destination_app=\"unknown\",destination_version=\"unknown\","
        "destination_service=\"stream.example\",destination_canonical_service=\"unknown\","
        "destination_canonical_revision=\"unknown\",destination_service_name=\"stream.example\","
        "destination_service_namespace=\"unknown\",destination_cluster=\"unknown\"";
    /* Visible while the stream is still open. */
    assert_int_equal(sample(t, "istio_request_messages_total", peer), 10);
    assert_int_equal(sample(t, "istio_response_messages_total", peer), 20);
    free(t);
    ri.request_messages = 1;
    ri.response_messages = 2;
    assert_int_equal(wp_metrics_request(&ri), 0);
    t = render(false);
    assert_int_equal(sample(t, "istio_request_messages_total", peer), 11);
    assert_int_equal(sample(t, "istio_response_messages_total", peer), 22);
    free(t);
    wp_metrics_grpc_add(NULL, 1, 1);
    assert_null(wp_metrics_grpc_stream(NULL));
}

/* Bucket edges: 0 in le="0.5", the largest bound is inclusive, one more ms is only in +Inf. */
static void test_bucket_edges(void **state)
{
    const uint64_t ms[] = {0, 3600000, 3600001};
    const char *hosts[] = {"edge0.example", "edge1.example", "edge2.example"};
    char *t;
    for (int i = 0; i < 3; i++) {
        struct wp_req_info ri = {
            .host = hosts[i], .grpc_status = -1, .response_code = 204, .duration_ms = ms[i]};
        assert_int_equal(wp_metrics_request(&ri), 0);
    }
    t = render(false);
    for (int i = 0; i < 3; i++) {
        char labels[4096];
        snprintf(labels, sizeof(labels),
                 "reporter=\"waypoint\",source_workload=\"unknown\",source_canonical_service=\"unknown\","
                 "source_canonical_revision=\"latest\",source_workload_namespace=\"unknown\","
                 "source_principal=\"unknown\",source_app=\"unknown\",source_version=\"unknown\","
                 "source_cluster=\"unknown\",destination_workload=\"unknown\","
                 "destination_workload_namespace=\"unknown\",destination_principal=\"unknown\","
                 "destination_app=\"unknown\",destination_version=\"unknown\",destination_service=\"%s\","
                 "destination_canonical_service=\"unknown\",destination_canonical_revision=\"unknown\","
                 "destination_service_name=\"%s\",destination_service_namespace=\"unknown\","
                 "destination_cluster=\"unknown\",request_protocol=\"http\",response_code=\"204\","
                 "grpc_response_status=\"\",response_flags=\"-\",connection_security_policy=\"none\"",
                 hosts[i], hosts[i]);
        const char *d = "istio_request_duration_milliseconds";
        assert_int_equal(bucket(t, d, labels, "0.5"), i == 0);
        assert_int_equal(bucket(t, d, labels, "1800000"), i == 0);
        assert_int_equal(bucket(t, d, labels, "3600000"), i <= 1);
        assert_int_equal(bucket(t, d, labels, "+Inf"), 1);
        assert_int_equal(hist_part(t, d, "sum", labels), (long long)ms[i]);
    }
    free(t);
}

/* TCP through the waypoint: opened, bytes and closed share one label set (request_protocol="tcp", no
 * response_code); a failed connect is its own set. */
static void test_tcp(void **state)
{
    struct snapshot *s = load_ok(mesh_yaml);
    struct wp_req_info ri = {
        .src_wl = snapshot_workload_at(s, 0),
        .src_principal = "spiffe://cluster.local/ns/app/sa/client",
        .dst_wl = snapshot_workload_at(s, 1),
        .dst_svc = snapshot_service_at(s, 0),
        .response_code = 200, /* not a TCP label */
    };
    struct wp_tcp_set *a = wp_metrics_tcp_open(&ri), *b = wp_metrics_tcp_open(&ri);
    assert_non_null(a);
    assert_ptr_equal(a, b);
    wp_metrics_tcp_bytes(a, 10, 100);
    wp_metrics_tcp_bytes(b, 5, 0);
    wp_metrics_tcp_close(a);
    ri.response_flags = "UF";
    struct wp_tcp_set *f = wp_metrics_tcp_open(&ri);
    assert_ptr_not_equal(f, a);
    wp_metrics_tcp_close(f);
    wp_metrics_tcp_bytes(NULL, 1, 1); /* NULL is accepted */
    wp_metrics_tcp_close(NULL);

    char *t = render(false);
    const char *ok =
        FULL_PEER ",request_protocol=\"tcp\",response_flags=\"-\",connection_security_policy=\"mutual_tls\"";
    const char *uf =
        FULL_PEER ",request_protocol=\"tcp\",response_flags=\"UF\",connection_security_policy=\"mutual_tls\"";
    if (sample(t, "istio_tcp_connections_opened_total", ok) != 2) fail_msg("no sample {%s} in:\n%s", ok, t);
    assert_int_equal(sample(t, "istio_tcp_connections_closed_total", ok), 1);
    assert_int_equal(sample(t, "istio_tcp_received_bytes_total", ok), 15);
    assert_int_equal(sample(t, "istio_tcp_sent_bytes_total", ok), 100);
    assert_int_equal(sample(t, "istio_tcp_connections_opened_total", uf), 1);
    assert_int_equal(sample(t, "istio_tcp_connections_closed_total", uf), 1);
    assert_int_equal(sample(t, "istio_tcp_sent_bytes_total", uf), 0);
    free(t);
    snapshot_unref(s);
}

/* Prometheus text vs OpenMetrics headers, istio_build, and the text format as Prometheus parses it. */
static void test_exposition(void **state)
{
    wp_metrics_set_build_tag("1.2.3-zm");
    char *t = render(false), *o = render(true);
    assert_non_null(strstr(t, "# TYPE istio_requests_total counter\n"));
    assert_non_null(strstr(t, "# HELP istio_requests_total "));
    assert_non_null(strstr(t, "# TYPE istio_tcp_connections_opened_total counter\n"));
    assert_non_null(strstr(t, "# TYPE istio_request_duration_milliseconds histogram\n"));
    assert_non_null(
        strstr(t, "# TYPE istio_build gauge\nistio_build{component=\"proxy\",tag=\"1.2.3-zm\"} 1\n"));
    assert_null(strstr(t, "# EOF"));
    assert_non_null(strstr(o, "# TYPE istio_requests counter\n"));
    assert_non_null(strstr(o, "# TYPE istio_request_messages counter\n"));
    assert_non_null(strstr(o, "# TYPE istio_response_bytes histogram\n"));
    assert_null(strstr(o, "# TYPE istio_requests_total"));
    size_t ol = strlen(o);
    assert_true(ol > 6 && !strcmp(o + ol - 6, "# EOF\n"));
    /* Samples are the same in both. */
    assert_non_null(strstr(o, "\nistio_requests_total{reporter=\"waypoint\","));
    assert_string_equal(wp_metrics_content_type(false), "text/plain; version=0.0.4; charset=utf-8");
    assert_string_equal(wp_metrics_content_type(true),
                        "application/openmetrics-text;charset=utf-8;version=1.0.0");

    /* promtool (Debian's prometheus package) parses and lints the text exposition. */
    char path[] = "/tmp/wp_metrics_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    assert_non_null(f);
    assert_int_equal(fwrite(t, 1, strlen(t), f), strlen(t));
    fclose(f);
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "promtool check metrics < %s 2>&1", path);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char out[4096];
    size_t n = fread(out, 1, sizeof(out) - 1, p);
    out[n] = '\0';
    int st = pclose(p);
    unlink(path);
    /* promtool exits 1 when the text does not parse and 3 for lint findings only. Istio's own name
     * istio_request_duration_milliseconds draws the one finding allowed ("use base unit seconds"). */
    assert_true(WIFEXITED(st));
    if (WEXITSTATUS(st) == 3) {
        for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n"))
            if (strcmp(line, "istio_request_duration_milliseconds use base unit \"seconds\" instead of "
                             "\"milliseconds\""))
                fail_msg("promtool check metrics: %s", line);
    } else if (WEXITSTATUS(st) != 0) {
        fail_msg("promtool check metrics failed (%d): %s", WEXITSTATUS(st), out);
    }
    free(t);
    free(o);
}

static const struct wp_access sample_access = {
    .start_ms_wall = 1764654756123ULL, /* 2025-12-02T05:52:36.123Z */
    .method = "GET",
    .path = "/api/v1/items?x=1",
    .protocol = "HTTP/1.1",
    .response_code = 200,
    .response_flags = "-",
    .response_code_details = "via_upstream",
    .bytes_received = 0,
    .bytes_sent = 612,
    .duration_ms = 7,
    .upstream_service_time_ms = 5,
    .user_agent = "curl/7.88.1",
    .request_id = "4d2a0e4c-0000-4000-8000-000000000001",
    .authority = "server.app.svc.cluster.local",
    .upstream_host = "envoy://connect_originate/10.0.0.2:8080",
    .upstream_cluster = "inbound-vip|80|http|server.app.svc.cluster.local",
    .upstream_local = "envoy://internal_client_address/",
    .downstream_local = "10.96.0.20:80",
    .downstream_remote = "10.0.0.1:43210",
    .route_name = "default",
};

/* Istio's default text line, byte for byte: "-" for empty values, quotes where the format has them. */
static void test_access_text(void **state)
{
    char buf[WP_ACCESS_LINE_MAX];
    int n = wp_access_format(&sample_access, false, buf, sizeof(buf));
    const char *want =
        "[2025-12-02T05:52:36.123Z] \"GET /api/v1/items?x=1 HTTP/1.1\" 200 - via_upstream - \"-\" 0 612 7 5 "
        "\"-\" \"curl/7.88.1\" \"4d2a0e4c-0000-4000-8000-000000000001\" \"server.app.svc.cluster.local\" "
        "\"envoy://connect_originate/10.0.0.2:8080\" inbound-vip|80|http|server.app.svc.cluster.local "
        "envoy://internal_client_address/ 10.96.0.20:80 10.0.0.1:43210 - default\n";
    assert_string_equal(buf, want);
    assert_int_equal(n, strlen(want));

    /* A reset before any response: code 0, no upstream time; a control character stays on one line. */
    struct wp_access a = {.start_ms_wall = 5,
                          .method = "POST",
                          .path = "/x\ny",
                          .protocol = "HTTP/2",
                          .response_flags = "DC",
                          .response_code_details = "downstream_remote_disconnect",
                          .upstream_service_time_ms = -1,
                          .duration_ms = 12};
    n = wp_access_format(&a, false, buf, sizeof(buf));
    assert_string_equal(buf,
                        "[1970-01-01T00:00:00.005Z] \"POST /x?y HTTP/2\" 0 DC downstream_remote_disconnect - "
                        "\"-\" 0 0 12 - \"-\" \"-\" \"-\" \"-\" \"-\" - - - - - -\n");
    assert_true(n > 0);

    /* Too small a buffer is refused, not cut. */
    char small[32];
    assert_int_equal(wp_access_format(&sample_access, false, small, sizeof(small)), -ENOSPC);
    assert_string_equal(small, "");
    assert_int_equal(wp_access_format(NULL, false, buf, sizeof(buf)), -EINVAL);
}

/* The JSON line: Istio's keys, Envoy's types (numbers, strings, null for empty). */
static void test_access_json(void **state)
{
    char buf[WP_ACCESS_LINE_MAX];
    int n = wp_access_format(&sample_access, true, buf, sizeof(buf));
    assert_true(n > 0);
    assert_int_equal(buf[n - 1], '\n');
    assert_ptr_equal(strchr(buf, '\n'), buf + n - 1); /* one line */
    json_error_t err;
    json_t *o = json_loads(buf, 0, &err);
    if (!o) fail_msg("JSON does not parse: %s: %s", err.text, buf);
    assert_int_equal(json_object_size(o), 24);
    static const char *const keys[] = {"authority",
                                       "bytes_received",
                                       "bytes_sent",
                                       "connection_termination_details",
                                       "downstream_local_address",
                                       "downstream_remote_address",
                                       "duration",
                                       "method",
                                       "path",
                                       "protocol",
                                       "request_id",
                                       "requested_server_name",
                                       "response_code",
                                       "response_code_details",
                                       "response_flags",
                                       "route_name",
                                       "start_time",
                                       "upstream_cluster",
                                       "upstream_host",
                                       "upstream_local_address",
                                       "upstream_service_time",
                                       "upstream_transport_failure_reason",
                                       "user_agent",
                                       "x_forwarded_for"};
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        if (!json_object_get(o, keys[i])) fail_msg("key %s missing: %s", keys[i], buf);
    assert_string_equal(json_string_value(json_object_get(o, "start_time")), "2025-12-02T05:52:36.123Z");
    assert_int_equal(json_integer_value(json_object_get(o, "response_code")), 200);
    assert_int_equal(json_integer_value(json_object_get(o, "bytes_sent")), 612);
    assert_int_equal(json_integer_value(json_object_get(o, "bytes_received")), 0);
    assert_int_equal(json_integer_value(json_object_get(o, "duration")), 7);
    assert_string_equal(json_string_value(json_object_get(o, "upstream_service_time")), "5");
    assert_string_equal(json_string_value(json_object_get(o, "response_flags")), "-");
    assert_string_equal(json_string_value(json_object_get(o, "path")), "/api/v1/items?x=1");
    assert_string_equal(json_string_value(json_object_get(o, "upstream_host")),
                        "envoy://connect_originate/10.0.0.2:8080");
    assert_true(json_is_null(json_object_get(o, "x_forwarded_for")));
    assert_true(json_is_null(json_object_get(o, "requested_server_name")));
    assert_true(json_is_null(json_object_get(o, "connection_termination_details")));
    json_decref(o);

    /* Quotes and control characters are escaped by the JSON writer; no upstream time is null. */
    struct wp_access a = sample_access;
    a.user_agent = "a\"b\\c\nd";
    a.upstream_service_time_ms = -1;
    n = wp_access_format(&a, true, buf, sizeof(buf));
    assert_true(n > 0);
    o = json_loads(buf, 0, &err);
    assert_non_null(o);
    assert_string_equal(json_string_value(json_object_get(o, "user_agent")), "a\"b\\c\nd");
    assert_true(json_is_null(json_object_get(o, "upstream_service_time")));
    json_decref(o);
}

#define THREAD_REQUESTS 100000

static void *record_many(void *arg)
{
    const struct wp_req_info *ri = arg;
    for (int i = 0; i < THREAD_REQUESTS; i++)
        if (wp_metrics_request(ri)) return (void *)1;
    return NULL;
}

/* Two threads recording into the same label set: exact totals in the counter and the histograms. */
static void test_concurrency(void **state)
{
    struct wp_req_info ri = {.host = "race.example",
                             .grpc = true,
                             .grpc_status = 0,
                             .response_code = 200,
                             .duration_ms = 30,
                             .request_bytes = 3,
                             .response_bytes = 7,
                             .request_messages = 1,
                             .response_messages = 2};
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&th[i], NULL, record_many, &ri), 0);
    for (int i = 0; i < 2; i++) {
        void *rv;
        assert_int_equal(pthread_join(th[i], &rv), 0);
        assert_null(rv);
    }
    char *t = render(false);
    const char *peer =
        "reporter=\"waypoint\",source_workload=\"unknown\",source_canonical_service=\"unknown\","
        "source_canonical_revision=\"latest\",source_workload_namespace=\"unknown\",source_principal="
        "\"unknown\","
        "source_app=\"unknown\",source_version=\"unknown\",source_cluster=\"unknown\","
        "destination_workload=\"unknown\",destination_workload_namespace=\"unknown\","
        "destination_principal=\"unknown\",destination_app=\"unknown\",destination_version=\"unknown\","
        "destination_service=\"race.example\",destination_canonical_service=\"unknown\","
        "destination_canonical_revision=\"unknown\",destination_service_name=\"race.example\","
        "destination_service_namespace=\"unknown\",destination_cluster=\"unknown\"";
    char full[4096];
    snprintf(
        full, sizeof(full),
        "%s,request_protocol=\"grpc\",response_code=\"200\",grpc_response_status=\"0\",response_flags=\"-\","
        "connection_security_policy=\"none\"",
        peer);
    const long long total = 2LL * THREAD_REQUESTS;
    assert_int_equal(sample(t, "istio_requests_total", full), total);
    assert_int_equal(bucket(t, "istio_request_duration_milliseconds", full, "25"), 0);
    assert_int_equal(bucket(t, "istio_request_duration_milliseconds", full, "50"), total);
    assert_int_equal(hist_part(t, "istio_request_duration_milliseconds", "count", full), total);
    assert_int_equal(hist_part(t, "istio_request_duration_milliseconds", "sum", full), 30 * total);
    assert_int_equal(hist_part(t, "istio_request_bytes", "sum", full), 3 * total);
    assert_int_equal(hist_part(t, "istio_response_bytes", "sum", full), 7 * total);
    assert_int_equal(sample(t, "istio_request_messages_total", peer), total);
    assert_int_equal(sample(t, "istio_response_messages_total", peer), 2 * total);
    free(t);
}

/* Allocation counting: this executable's malloc family forwards to glibc's and counts calls made by the
 * thread that turned counting on. Sanitizers bring their own allocator, so there the test is skipped. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define COUNT_ALLOCS 0
#else
#define COUNT_ALLOCS 1
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void __libc_free(void *);
static _Thread_local bool counting;
static _Thread_local unsigned long allocs;
void *malloc(size_t n)
{
    if (counting) allocs++;
    return __libc_malloc(n);
}
void *calloc(size_t a, size_t b)
{
    if (counting) allocs++;
    return __libc_calloc(a, b);
}
void *realloc(void *p, size_t n)
{
    if (counting) allocs++;
    return __libc_realloc(p, n);
}
void free(void *p)
{
    __libc_free(p);
}
#endif

/* Once its label set exists, recording a request (HTTP with the full label set, gRPC with its message set)
 * and a TCP stream allocates nothing. */
static void test_no_allocation(void **state)
{
    if (!COUNT_ALLOCS) skip();
    struct snapshot *s = load_ok(mesh_yaml);
    struct wp_req_info ri = {
        .src_wl = snapshot_workload_at(s, 0),
        .src_principal = "spiffe://cluster.local/ns/app/sa/client",
        .dst_wl = snapshot_workload_at(s, 1),
        .dst_svc = snapshot_service_at(s, 0),
        .grpc = true,
        .grpc_status = 0,
        .response_code = 200,
        .duration_ms = 3,
        .request_messages = 1,
    };
    assert_int_equal(wp_metrics_request(&ri), 0); /* creates the sets */
    struct wp_tcp_set *m = wp_metrics_tcp_open(&ri);
    assert_non_null(m);
#if COUNT_ALLOCS
    allocs = 0;
    counting = true;
    for (int i = 0; i < 1000; i++) {
        wp_metrics_request(&ri);
        struct wp_tcp_set *t = wp_metrics_tcp_open(&ri);
        wp_metrics_tcp_bytes(t, 1, 1);
        wp_metrics_tcp_close(t);
    }
    /* A new set does allocate: the counter works. */
    ri.host = NULL;
    ri.response_code = 201;
    wp_metrics_request(&ri);
    counting = false;
    assert_int_equal(allocs, 1);
#endif
    snapshot_unref(s);
}

#define RACE_SETS 600

static void *create_many(void *arg)
{
    (void)arg;
    char host[64];
    for (int i = 0; i < RACE_SETS; i++) {
        snprintf(host, sizeof(host), "set-%d.race.example", i);
        struct wp_req_info ri = {.host = host, .grpc_status = -1, .response_code = 200};
        if (wp_metrics_request(&ri)) return (void *)1;
    }
    return NULL;
}

/* Two threads creating the same 600 label sets at once (the registry grows several times meanwhile, while
 * lookups walk it without a lock): every set exists once, with both threads' requests in it. */
static void test_concurrent_creation(void **state)
{
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&th[i], NULL, create_many, NULL), 0);
    for (int i = 0; i < 2; i++) {
        void *rv;
        assert_int_equal(pthread_join(th[i], &rv), 0);
        assert_null(rv);
    }
    char *t = render(false);
    /* Line by line with bounded searches: the text is large (600 sets x 3 histograms). */
    static const char prefix[] = "istio_requests_total{", svc[] = ",destination_service=\"set-";
    int found = 0;
    for (const char *p = t, *eol; *p; p = *eol ? eol + 1 : eol) {
        for (eol = p; *eol && *eol != '\n'; eol++)
            ;
        size_t l = (size_t)(eol - p);
        if (l < sizeof(prefix) || memcmp(p, prefix, sizeof(prefix) - 1)) continue;
        if (!memmem(p, l, svc, sizeof(svc) - 1)) continue;
        const char *v = memmem(p, l, "} ", 2);
        assert_non_null(v);
        assert_int_equal(strtoll(v + 2, NULL, 10), 2);
        found++;
    }
    assert_int_equal(found, RACE_SETS);
    free(t);
}

/* Label sets are bounded: past WP_METRICS_MAX_SETS a new set is refused (and counted), existing ones still
 * count, and an over-long Host header is not a label value. Runs last: it fills the TCP registry. */
static void test_set_limit(void **state)
{
    char host[64];
    struct wp_req_info ri = {.grpc_status = -1};
    struct wp_tcp_set *first = NULL;
    int made = 0;
    for (int i = 0; i < WP_METRICS_MAX_SETS + 10; i++) {
        snprintf(host, sizeof(host), "limit-%d.example", i);
        ri.host = host;
        struct wp_tcp_set *m = wp_metrics_tcp_open(&ri);
        if (!m) break;
        if (!first) first = m;
        made++;
    }
    /* Earlier tests made some TCP sets; the rest fill up to the limit exactly. */
    assert_true(made > 0 && made <= WP_METRICS_MAX_SETS);
    assert_null(wp_metrics_tcp_open(&ri));
    snprintf(host, sizeof(host), "limit-0.example"); /* an existing set still counts */
    ri.host = host;
    assert_ptr_equal(wp_metrics_tcp_open(&ri), first);
    char *t = render(false);
    assert_non_null(strstr(t, "\nzmesh_metrics_label_sets_refused_total{layout=\"tcp\"} 2\n"));
    assert_non_null(strstr(t, "\nzmesh_metrics_label_sets_refused_total{layout=\"http\"} 0\n"));
    free(t);

    /* A Host header longer than WP_HOST_LABEL_MAX is "unknown". */
    char big[WP_HOST_LABEL_MAX + 2];
    memset(big, 'h', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    struct wp_req_info hr = {.host = big, .grpc_status = -1, .response_code = 418};
    assert_int_equal(wp_metrics_request(&hr), 0);
    t = render(false);
    assert_null(strstr(t, big));
    assert_non_null(strstr(t,
                           ",destination_service=\"unknown\",destination_canonical_service=\"unknown\","
                           "destination_canonical_revision=\"unknown\",destination_service_name=\"unknown\","
                           "destination_service_namespace=\"unknown\",destination_cluster=\"unknown\","
                           "request_protocol=\"http\",response_code=\"418\""));
    free(t);
}

/* Response flags are a set printed in Envoy's order (ResponseFlagUtils::toShortString): whatever order the
 * codec noted them in, a delay stays next to a later flag, and a repeat counts once. */
static void test_flags_set(void **state)
{
    (void)state;
    static const struct {
        const char *in, *out;
    } cases[] = {
        {NULL, "-"},
        {"", "-"},
        {"-", "-"},
        {"DI", "DI"},
        {"FI,DI", "DI,FI"},
        {"DI,FI", "DI,FI"},
        {"URX,UF", "UF,URX"},
        {"DI,UT", "UT,DI"},
        {"FI,UT,DI", "UT,DI,FI"},
        {"NR,NR", "NR"},
        {"DC,DI", "DI,DC"},
        {"UO", "UO"},
        {"bogus,DI", "DI"},
        {"UDO,LH", "LH,UDO"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char buf[WP_RF_TEXT_MAX];
        const char *got = wp_flags_format(wp_flags_parse(cases[i].in), buf, sizeof(buf));
        if (strcmp(got, cases[i].out))
            fail_msg("flags \"%s\": got \"%s\", want \"%s\"", cases[i].in ? cases[i].in : "(null)", got,
                     cases[i].out);
    }
    char buf[WP_RF_TEXT_MAX];
    assert_string_equal(wp_flags_add("UT", WP_RF_DI, buf, sizeof(buf)), "UT,DI");
    snprintf(buf, sizeof(buf), "UF,URX");
    assert_string_equal(wp_flags_add(buf, WP_RF_DI, buf, sizeof(buf)), "UF,DI,URX"); /* in place */
    assert_string_equal(wp_flags_add("-", WP_RF_DI, buf, sizeof(buf)), "DI");
    /* a buffer too small for the set: cut at a flag boundary */
    char small[6];
    assert_string_equal(
        wp_flags_format(1u << WP_RF_UT | 1u << WP_RF_DI | 1u << WP_RF_FI, small, sizeof(small)), "UT,DI");
    /* the metrics label carries the set as given */
    struct wp_req_info ri = {
        .host = "flags-set.example", .response_code = 503, .grpc_status = -1, .response_flags = "DI,FI"};
    assert_int_equal(wp_metrics_request(&ri), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_labels),
        cmocka_unit_test(test_missing_labels),
        cmocka_unit_test(test_escaping),
        cmocka_unit_test(test_grpc_messages),
        cmocka_unit_test(test_bucket_edges),
        cmocka_unit_test(test_tcp),
        cmocka_unit_test(test_exposition),
        cmocka_unit_test(test_access_text),
        cmocka_unit_test(test_access_json),
        cmocka_unit_test(test_concurrency),
        cmocka_unit_test(test_concurrent_creation),
        cmocka_unit_test(test_no_allocation),
        cmocka_unit_test(test_grpc_stream),
        cmocka_unit_test(test_set_limit),
        cmocka_unit_test(test_flags_set),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
