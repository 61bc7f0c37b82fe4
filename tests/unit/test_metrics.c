/* Unit tests for ztunnel's telemetry and admin side doors: the metrics registry and its rendering
 * (src/ztunnel/metrics.c), the JSON writer and /config_dump (configdump.c), and the admin HTTP server's
 * request handling driven over a socketpair (admin.c). libzmesh.a does not contain src/ztunnel, so the
 * sources are included here. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <cmocka.h>

#include "../../src/http1/server.c"
#include "../../src/ztunnel/metrics.c"
#include "../../src/ztunnel/configdump.c"
#include "../../src/ztunnel/admin.c"

#include "mesh/config.h"
#include "tls/spiffe.h"

static struct snapshot *load_ok(const char *yaml)
{
    struct snapshot *s = NULL;
    char err[512];
    int rc = config_load_buf(yaml, strlen(yaml), "t.yaml", &s, err, sizeof(err));
    if (rc) fail_msg("load failed (%d): %s", rc, err);
    return s;
}

/* The value of the sample "<name>{<labels>}" in the rendered text, or -1 when absent. */
static long long sample(const char *text, const char *name, const char *labels)
{
    char *needle;
    assert_true(asprintf(&needle, "\n%s{%s} ", name, labels) > 0);
    const char *p = strstr(text, needle);
    long long v = p ? strtoll(p + strlen(needle), NULL, 10) : -1;
    free(needle);
    return v;
}

static char *render(bool om)
{
    size_t len = 0;
    char *t = metrics_render(om, &len);
    assert_non_null(t);
    assert_int_equal(strlen(t), len);
    return t;
}

#define UNKNOWN_SRC                                                                                          \
    "source_workload=\"unknown\",source_canonical_service=\"unknown\",source_canonical_revision="            \
    "\"unknown\","                                                                                           \
    "source_workload_namespace=\"unknown\""

/* With nothing known every label is "unknown" (principal included), in Istio's order, without locality. */
static void test_unknown_defaults_and_order(void **state)
{
    struct conn_info ci = {.inbound = false, .src_principal = "spiffe://td/ns/order/sa/x"};
    struct metric_set *m = metrics_conn_open(&ci);
    assert_non_null(m);
    char *t = render(false);
    const char *want =
        "reporter=\"source\"," UNKNOWN_SRC ",source_principal=\"spiffe://td/ns/order/sa/x\","
        "source_app=\"unknown\",source_version=\"unknown\",source_cluster=\"unknown\","
        "destination_service=\"unknown\",destination_service_namespace=\"unknown\","
        "destination_service_name=\"unknown\",destination_workload=\"unknown\","
        "destination_canonical_service=\"unknown\",destination_canonical_revision=\"unknown\","
        "destination_workload_namespace=\"unknown\",destination_principal=\"unknown\","
        "destination_app=\"unknown\",destination_version=\"unknown\",destination_cluster=\"unknown\","
        "request_protocol=\"tcp\",response_flags=\"-\",connection_security_policy=\"unknown\"";
    assert_int_equal(sample(t, "istio_tcp_connections_opened_total", want), 1);
    assert_int_equal(sample(t, "istio_tcp_received_bytes_total", want), 0);
    assert_int_equal(sample(t, "istio_tcp_sent_bytes_total", want), 0);
    /* Not closed yet: no closed sample for this set. */
    assert_int_equal(sample(t, "istio_tcp_connections_closed_total", want), -1);
    free(t);
}

static const char *mesh_yaml =
    "workloads:\n"
    "- name: client-7d4\n"
    "  namespace: app\n"
    "  serviceAccount: client\n"
    "  workloadName: client\n"
    "  canonicalName: client-svc\n"
    "  canonicalRevision: v1\n"
    "  clusterId: c1\n"
    "  workloadIps: [\"10.0.0.1\"]\n"
    "  protocol: HBONE\n"
    "  locality: {region: r1, zone: z1}\n"
    "- name: server-0\n"
    "  namespace: app\n"
    "  serviceAccount: server\n"
    "  trustDomain: example.org\n"
    "  workloadName: server\n"
    "  workloadIps: [\"10.0.0.2\"]\n"
    "  protocol: HBONE\n"
    "  waypoint: {destination: \"app/wp.app.svc.cluster.local\", hboneMtlsPort: 15008}\n"
    "  services:\n"
    "    \"app/server.app.svc.cluster.local\": {80: 8080}\n"
    "services:\n"
    "- name: server\n"
    "  namespace: app\n"
    "  hostname: server.app.svc.cluster.local\n"
    "  vips: [\"/10.96.0.20\"]\n"
    "  ports: {80: 8080}\n"
    "policies:\n"
    "- name: deny-x\n"
    "  namespace: app\n"
    "  scope: Namespace\n"
    "  action: Deny\n"
    "  rules:\n"
    "  - - - principals: [{Exact: \"td/ns/a\\\"b/sa/c\"}, {Presence: []}]\n"
    "        sourceIps: [\"10.1.0.0/16\"]\n"
    "    - - destinationPorts: [8080]\n";

/* Workload fields map as in metrics.rs (app = canonical name, version = canonical revision, destination
 * principal = the destination workload's identity), and locality labels appear once a workload is known. */
static void test_workload_labels(void **state)
{
    struct snapshot *s = load_ok(mesh_yaml);
    struct conn_info ci = {
        .inbound = true,
        .src_wl = snapshot_workload_at(s, 0),
        .dst_wl = snapshot_workload_at(s, 1),
        .src_principal = "spiffe://cluster.local/ns/app/sa/client",
        .dst_principal = "spiffe://ignored/ns/x/sa/y",
        .dst_svc = snapshot_service_at(s, 0),
        .mtls = true,
    };
    struct metric_set *m = metrics_conn_open(&ci);
    metrics_add_bytes(m, 10, 20);
    metrics_add_bytes(m, 5, 0);
    const char *want =
        "reporter=\"destination\",source_workload=\"client\",source_canonical_service=\"client-svc\","
        "source_canonical_revision=\"v1\",source_workload_namespace=\"app\","
        "source_principal=\"spiffe://cluster.local/ns/app/sa/client\",source_app=\"client-svc\","
        "source_version=\"v1\",source_cluster=\"c1\",destination_service=\"server.app.svc.cluster.local\","
        "destination_service_namespace=\"app\",destination_service_name=\"server\","
        "destination_workload=\"server\",destination_canonical_service=\"unknown\","
        "destination_canonical_revision=\"unknown\",destination_workload_namespace=\"app\","
        "destination_principal=\"spiffe://example.org/ns/app/sa/server\",destination_app=\"unknown\","
        "destination_version=\"unknown\",destination_cluster=\"Kubernetes\",request_protocol=\"tcp\","
        "response_flags=\"-\",connection_security_policy=\"mutual_tls\",source_region=\"r1\","
        "source_zone=\"z1\",destination_region=\"unknown\",destination_zone=\"unknown\"";
    char *t = render(false);
    assert_int_equal(sample(t, "istio_tcp_connections_opened_total", want), 1);
    assert_int_equal(sample(t, "istio_tcp_received_bytes_total", want), 15);
    assert_int_equal(sample(t, "istio_tcp_sent_bytes_total", want), 20);
    free(t);

    /* The same facts again: the same set, no new allocation. */
    assert_ptr_equal(metrics_conn_open(&ci), m);
    /* Without a destination workload the given dst_principal is used. */
    ci.dst_wl = NULL;
    struct metric_set *m2 = metrics_conn_open(&ci);
    assert_ptr_not_equal(m2, m);
    assert_non_null(strstr(m2->ps.labels, "destination_principal=\"spiffe://ignored/ns/x/sa/y\""));
    snapshot_unref(s);
}

/* Label values are escaped for the text format. */
static void test_label_escaping(void **state)
{
    struct conn_info ci = {.src_principal = "a\"b\\c\nd"};
    struct metric_set *m = metrics_conn_open(&ci);
    assert_non_null(strstr(m->ps.labels, "source_principal=\"a\\\"b\\\\c\\nd\""));
}

/* Closed and failed go to the label set with the final flags; opened and bytes stay under "-". */
static void test_close_flags(void **state)
{
    struct conn_info ci = {.inbound = true, .src_principal = "spiffe://td/ns/flags/sa/x", .mtls = true};
    struct metric_set *m = metrics_conn_open(&ci);
    metrics_add_bytes(m, 7, 9);
    metrics_set_close(m, "DENY", true);
    metrics_conn_close(&ci, "DENY", true);
    metrics_conn_close(&ci, NULL, false);

    char base[2048], deny[2048];
    snprintf(base, sizeof(base), "%s", m->ps.labels);
    char *f = strstr(base, "response_flags=\"-\"");
    assert_non_null(f);
    snprintf(deny, sizeof(deny), "%.*sresponse_flags=\"DENY\"%s", (int)(f - base), base,
             f + strlen("response_flags=\"-\""));

    char *t = render(false);
    assert_int_equal(sample(t, "istio_tcp_connections_opened_total", base), 1);
    assert_int_equal(sample(t, "istio_tcp_connections_opened_total", deny), -1);
    assert_int_equal(sample(t, "istio_tcp_connections_closed_total", deny), 2);
    assert_int_equal(sample(t, "istio_tcp_connections_failed_total", deny), 2);
    assert_int_equal(sample(t, "istio_tcp_connections_closed_total", base), 1);
    assert_int_equal(sample(t, "istio_tcp_connections_failed_total", base), -1);
    assert_int_equal(sample(t, "istio_tcp_received_bytes_total", base), 7);
    assert_int_equal(sample(t, "istio_tcp_sent_bytes_total", base), 9);
    assert_int_equal(sample(t, "istio_tcp_received_bytes_total", deny), -1);
    free(t);
    /* NULL sets are ignored. */
    metrics_add_bytes(NULL, 1, 1);
    metrics_set_close(NULL, "-", false);
}

#define THREADS 4
#define ITERS 20000

static void *hammer(void *arg)
{
    const struct conn_info *cis = arg;
    for (int i = 0; i < ITERS; i++) {
        const struct conn_info *ci = &cis[i % 3];
        struct metric_set *m = metrics_conn_open(ci);
        metrics_add_bytes(m, 3, 5);
        if (i % 2)
            metrics_set_close(m, "-", false);
        else
            metrics_conn_close(ci, "CONNECT", true);
    }
    return NULL;
}

/* Counters add up exactly across threads that create and share sets concurrently. */
static void test_threads(void **state)
{
    struct conn_info cis[3] = {
        {.src_principal = "spiffe://td/ns/thr/sa/a"},
        {.src_principal = "spiffe://td/ns/thr/sa/b"},
        {.src_principal = "spiffe://td/ns/thr/sa/c", .mtls = true},
    };
    pthread_t th[THREADS];
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, hammer, cis), 0);
    for (int i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);

    long long opened = 0, closed = 0, failed = 0, recv = 0, sent = 0;
    char *t = render(true);
    for (int k = 0; k < 3; k++) {
        struct metric_set *m = metrics_conn_open(&cis[k]); /* one more open, subtracted below */
        opened += sample(t, "istio_tcp_connections_opened_total", m->ps.labels);
        closed += sample(t, "istio_tcp_connections_closed_total", m->ps.labels);
        recv += sample(t, "istio_tcp_received_bytes_total", m->ps.labels);
        sent += sample(t, "istio_tcp_sent_bytes_total", m->ps.labels);
        char c[2048];
        char *f = strstr(m->ps.labels, "response_flags=\"-\"");
        snprintf(c, sizeof(c), "%.*sresponse_flags=\"CONNECT\"%s", (int)(f - m->ps.labels), m->ps.labels,
                 f + strlen("response_flags=\"-\""));
        closed += sample(t, "istio_tcp_connections_closed_total", c);
        failed += sample(t, "istio_tcp_connections_failed_total", c);
    }
    free(t);
    assert_int_equal(opened, THREADS * ITERS);
    assert_int_equal(closed, THREADS * ITERS);
    assert_int_equal(failed, THREADS * ITERS / 2);
    assert_int_equal(recv, 3LL * THREADS * ITERS);
    assert_int_equal(sent, 5LL * THREADS * ITERS);
}

/* HELP/TYPE lines per format, istio_build, process metrics, and OpenMetrics' "# EOF". */
static void test_formats(void **state)
{
    metrics_set_build_tag("1.2.3");
    metrics_socket_open(true);
    metrics_socket_open(true);
    metrics_socket_close(true);
    char *t = render(false);
    assert_non_null(strstr(
        t, "# TYPE istio_tcp_sockets_open gauge\nistio_tcp_sockets_open{reporter=\"destination\"} 1\n"));
    assert_null(strstr(t, "istio_tcp_sockets_open{reporter=\"source\"}"));
    assert_non_null(strstr(t, "# HELP istio_tcp_connections_opened_total The total number of TCP connections "
                              "opened.\n# TYPE istio_tcp_connections_opened_total counter\n"));
    assert_non_null(
        strstr(t, "# TYPE istio_build gauge\nistio_build{component=\"ztunnel\",tag=\"1.2.3\"} 1\n"));
    assert_non_null(strstr(t, "\nprocess_open_fds "));
    assert_non_null(strstr(t, "\nprocess_max_fds "));
    assert_null(strstr(t, "# EOF"));
    /* Stable metrics do not say "(unstable)" (ztunnel's tests check this); the failed counter does. */
    assert_null(strstr(t, "opened (unstable)"));
    assert_non_null(strstr(t, "establish (unstable)."));
    free(t);

    t = render(true);
    assert_non_null(strstr(t, "# TYPE istio_tcp_connections_opened counter\n"));
    assert_non_null(strstr(t,
                           "# HELP istio_tcp_sent_bytes The size of total bytes sent during response in case "
                           "of a TCP connection.\n"));
    assert_non_null(strstr(t, "\nistio_tcp_connections_opened_total{reporter="));
    size_t n = strlen(t);
    assert_true(n > 6 && !strcmp(t + n - 6, "# EOF\n"));
    free(t);
    assert_string_equal(metrics_content_type(true),
                        "application/openmetrics-text;charset=utf-8;version=1.0.0");
}

/* ---- JSON ---- */

static char *jw_doc(void (*build)(struct jw *))
{
    struct jw w;
    jw_init(&w);
    build(&w);
    return jw_finish(&w, NULL);
}

static void build_escapes(struct jw *w)
{
    jw_obj_begin(w);
    jw_kv_str(w, "q\"k", "a\"b\\c/d");
    jw_kv_str(w, "ctl", "\b\f\n\r\t\x01\x1f");
    jw_kv_str(w, "utf8", "h\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80");
    jw_kv_str(w, "bad", "x\xff\xc3(\xed\xa0\x80\xc0\xaf\xe2\x82");
    jw_kv_opt(w, "skipped", "");
    jw_key(w, "empty_arr");
    jw_arr_begin(w);
    jw_arr_end(w);
    jw_key(w, "empty_obj");
    jw_obj_begin(w);
    jw_obj_end(w);
    jw_key(w, "nested");
    jw_arr_begin(w);
    jw_uint(w, 1);
    jw_arr_begin(w);
    jw_bool(w, true);
    jw_bool(w, false);
    jw_arr_end(w);
    jw_arr_end(w);
    jw_obj_end(w);
}

static void build_unbalanced(struct jw *w)
{
    jw_obj_begin(w);
    jw_key(w, "a");
    jw_arr_begin(w);
}

static void build_deep(struct jw *w)
{
    for (int i = 0; i < JW_MAX_DEPTH + 2; i++)
        jw_arr_begin(w);
    for (int i = 0; i < JW_MAX_DEPTH + 2; i++)
        jw_arr_end(w);
}

static void test_json_writer(void **state)
{
    char *d = jw_doc(build_escapes);
    assert_non_null(d);
    assert_string_equal(d,
                        "{\n"
                        "  \"q\\\"k\": \"a\\\"b\\\\c/d\",\n"
                        "  \"ctl\": \"\\b\\f\\n\\r\\t\\u0001\\u001f\",\n"
                        "  \"utf8\": \"h\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\",\n"
                        "  \"bad\": \"x\\ufffd\\ufffd(\\ufffd\\ufffd\\ufffd\\ufffd\\ufffd\\ufffd\\ufffd\",\n"
                        "  \"empty_arr\": [],\n"
                        "  \"empty_obj\": {},\n"
                        "  \"nested\": [\n"
                        "    1,\n"
                        "    [\n"
                        "      true,\n"
                        "      false\n"
                        "    ]\n"
                        "  ]\n"
                        "}\n");
    free(d);
    assert_null(jw_doc(build_unbalanced));
    assert_null(jw_doc(build_deep));
}

static void test_config_dump(void **state)
{
    struct snapshot *s = load_ok(mesh_yaml);
    size_t len = 0;
    char *d = config_dump_render(s, NULL, 0, NULL, -1, &len);
    assert_non_null(d);
    assert_int_equal(strlen(d), len);
    assert_non_null(strstr(d, "\"workloadIps\": [\n        \"10.0.0.1\"\n      ],"));
    assert_non_null(strstr(d, "\"waypoint\": {\n        \"destination\": \"app/wp.app.svc.cluster.local\",\n"
                              "        \"hboneMtlsPort\": 15008\n      },"));
    assert_non_null(strstr(d, "\"vips\": [\n        \"/10.96.0.20\"\n      ],"));
    assert_non_null(strstr(d, "\"ports\": {\n        \"80\": 8080\n      },"));
    /* istio/ztunnel's Endpoint set, keyed by workload uid, with the workload's port map and health. */
    assert_non_null(strstr(d, "\"endpoints\": {\n        \"Kubernetes//v1/Pod/app/server-0\": {\n"
                              "          \"workloadUid\": \"Kubernetes//v1/Pod/app/server-0\",\n"
                              "          \"port\": {\n            \"80\": 8080\n          },\n"
                              "          \"status\": \"Healthy\"\n        }\n      },\n"
                              "      \"subjectAltNames\""));
    assert_non_null(strstr(d, "\"services\": [\n        \"app/server.app.svc.cluster.local\"\n      ],"));
    assert_non_null(strstr(d, "\"locality\": {\n        \"region\": \"r1\",\n        \"zone\": \"z1\",\n"));
    assert_non_null(strstr(d, "\"canonicalName\": \"client-svc\""));
    assert_non_null(strstr(d, "\"Exact\": \"td/ns/a\\\"b/sa/c\""));
    assert_non_null(strstr(d, "\"Presence\": []"));
    assert_non_null(strstr(d, "\"sourceIps\": [\n                \"10.1.0.0/16\"\n"));
    assert_non_null(strstr(d, "\"action\": \"Deny\""));
    assert_non_null(strstr(d, "\"certificates\": []\n}\n"));
    assert_null(strstr(d, "\"trustDomain\": \"\""));
    assert_null(strstr(d, "workloadState")); /* dedicated mode has none */
    free(d);

    /* Shared mode: the pods served, keyed by uid (istio/ztunnel src/inpod/admin.rs). */
    struct admin_pod pods[1] = {{.uid = "Kubernetes//Pod/app/a\"b", .name = "a", .ns = "app", .sa = "sa", .state = "Up"}};
    d = config_dump_render(NULL, NULL, 0, pods, 1, NULL);
    assert_non_null(d);
    assert_non_null(strstr(d, "\"workloadState\": {\n    \"Kubernetes//Pod/app/a\\\"b\": {\n      \"state\": \"Up\",\n"
                              "      \"info\": {\n        \"name\": \"a\",\n        \"namespace\": \"app\",\n"
                              "        \"serviceAccount\": \"sa\"\n      }\n    }\n  }\n}\n"));
    free(d);
    d = config_dump_render(NULL, NULL, 0, pods, 0, NULL);
    assert_non_null(strstr(d, "\"workloadState\": {}"));
    free(d);

    /* A real certificate: leaf in certChain, root in rootCerts, decimal serial, RFC 3339 times. */
    char dir[] = "/tmp/zm-test-metrics-XXXXXX", err[256];
    assert_non_null(mkdtemp(dir));
    assert_int_equal(ca_write_root(dir, NULL, err, sizeof(err)), 0);
    struct cert_provider *p = ca_local_new(dir, err, sizeof(err));
    assert_non_null(p);
    struct spiffe_id id;
    const char *uri = "spiffe://cluster.local/ns/app/sa/server";
    assert_int_equal(spiffe_parse(uri, strlen(uri), &id), 0);
    struct tls_cert *c = p->fetch(p, &id, err, sizeof(err));
    assert_non_null(c);
    /* Istio's CertsDump states: Available with the chain; Unavailable with its error and no chain. */
    struct identity_status st[2] = {{.state = IDENTITY_AVAILABLE}, {.state = IDENTITY_UNAVAILABLE}};
    snprintf(st[0].uri, sizeof(st[0].uri), "%s", uri);
    snprintf(st[1].uri, sizeof(st[1].uri), "spiffe://cluster.local/ns/app/sa/other");
    snprintf(st[1].error, sizeof(st[1].error), "CA unreachable");
    assert_int_equal(identity_new(c, &st[0].cur, err, sizeof(err)), 0);
    d = config_dump_render(NULL, st, 2, NULL, -1, NULL);
    assert_non_null(d);
    assert_non_null(strstr(d, "\"workloads\": [],"));
    assert_non_null(strstr(d, "\"identity\": \"spiffe://cluster.local/ns/app/sa/server\",\n"
                              "      \"state\": \"Available\",\n      \"certChain\": [\n        {\n"
                              "          \"pem\": \"LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0t"));
    assert_non_null(strstr(d, "\"rootCerts\": [\n        {\n"));
    const char *sn = strstr(d, "\"serialNumber\": \"");
    assert_non_null(sn);
    sn += strlen("\"serialNumber\": \"");
    assert_true(sn[0] >= '0' && sn[0] <= '9' && strspn(sn, "0123456789") > 5 &&
                sn[strspn(sn, "0123456789")] == '"');
    const char *vf = strstr(d, "\"validFrom\": \"");
    assert_non_null(vf);
    assert_true(strlen(vf) > 34 && vf[18] == '-' && vf[24] == 'T' && vf[33] == 'Z');
    assert_non_null(strstr(d, "\"identity\": \"spiffe://cluster.local/ns/app/sa/other\",\n"
                              "      \"state\": \"Unavailable: CA unreachable\",\n      \"certChain\": [],\n"
                              "      \"rootCerts\": []\n"));
    free(d);
    identity_unref(st[0].cur);
    tls_cert_unref(c);
    p->destroy(p);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
    snapshot_unref(s);
}

/* ---- the HTTP server, driven over a socketpair without running the loop ---- */

static const char *pending_value;
static int quit_calls;
static struct snapshot *hook_snap;

static const char *hook_pending(void *ud)
{
    return pending_value;
}
static void hook_quit(void *ud)
{
    quit_calls++;
}
static struct snapshot *hook_snapshot(void *ud)
{
    if (hook_snap) snapshot_ref(hook_snap);
    return hook_snap;
}

/* The admin's three ports on the shared HTTP server (src/http1/server.c, included above to reach its
 * connections), on loopback listeners that are never accepted from: connections are socketpairs adopted as
 * the acceptor would, and driven by hand. */
static struct h1_port *srv_ports[3];

static int srv_setup(void **state)
{
    char err[256];
    adm.loop = loop_new();
    assert_non_null(adm.loop);
    adm.srv = http1_server_new(adm.loop, "ztunnel::admin");
    assert_non_null(adm.srv);
    for (int k = 0; k < 3; k++) {
        int fd = http1_listen("127.0.0.1:0", NULL, err, sizeof(err));
        assert_true(fd >= 0);
        assert_int_equal(
            http1_server_listen(adm.srv, fd, "test", &adm_limits[k], adm_route, (void *)&adm_kinds[k]), 0);
        srv_ports[k] = adm.srv->ports; /* the newest port is first */
    }
    adm.hooks =
        (struct admin_hooks){.pending = hook_pending, .quit = hook_quit, .snapshot_get = hook_snapshot};
    return 0;
}

static int srv_teardown(void **state)
{
    http1_server_free(adm.srv);
    adm.srv = NULL;
    loop_free(adm.loop);
    adm.loop = NULL;
    return 0;
}

struct peer {
    int fd;               /* the client's end */
    struct h1_conn *conn; /* NULL once the server closed it */
};

static struct peer peer_new(enum adm_kind kind)
{
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    int before = http1_server_connections(adm.srv);
    h1_accept(&srv_ports[kind]->acc, sv[0], NULL);
    struct peer p = {.fd = sv[1], .conn = srv_ports[kind]->tail};
    assert_non_null(p.conn);
    assert_int_equal(http1_server_connections(adm.srv), before + 1);
    return p;
}

/* Sends text (optionally in pieces of step bytes, handing each to the server) and returns what the server
 * wrote back (malloc'd). Marks the connection gone when the server closed it. */
static char *exchange(struct peer *p, const char *text, size_t step)
{
    size_t n = strlen(text);
    if (!step) step = n;
    for (size_t off = 0; off < n; off += step) {
        size_t k = n - off < step ? n - off : step;
        assert_int_equal(write(p->fd, text + off, k), (ssize_t)k);
        assert_non_null(p->conn);
        int before = http1_server_connections(adm.srv);
        h1_conn_io(&p->conn->io, EPOLLIN);
        if (http1_server_connections(adm.srv) < before) p->conn = NULL;
    }
    char *out = calloc(1, 1 << 20);
    size_t len = 0;
    ssize_t r;
    while ((r = read(p->fd, out + len, (1 << 20) - 1 - len)) > 0)
        len += (size_t)r;
    out[len] = '\0';
    return out;
}

static void peer_close(struct peer *p)
{
    if (p->conn) h1_conn_close(p->conn);
    close(p->fd);
}

static void test_http_readiness(void **state)
{
    struct peer p = peer_new(ADM_READY);
    pending_value = NULL;
    char *r = exchange(&p, "GET /healthz/ready HTTP/1.1\r\nHost: x\r\n\r\n", 0);
    assert_string_equal(r, "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 6\r\n\r\nready\n");
    free(r);
    pending_value = "state manager";
    r = exchange(&p, "GET /healthz/ready HTTP/1.1\r\nHost: x\r\n\r\n", 7); /* byte pieces through llhttp */
    assert_non_null(strstr(r, "HTTP/1.1 500 Internal Server Error\r\n"));
    assert_non_null(strstr(r, "\r\n\r\nnot ready, pending: state manager\n"));
    free(r);
    /* Pipelined: wrong method (405), unknown path (404), then a close-delimited request. */
    r = exchange(&p,
                 "POST /healthz/ready HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
                 "GET /other HTTP/1.1\r\nHost: x\r\n\r\n"
                 "HEAD /healthz/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                 0);
    assert_string_equal(r,
                        "HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n"
                        "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
                        "HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    free(r);
    assert_null(p.conn);
    peer_close(&p);
}

static void test_http_limits_and_errors(void **state)
{
    struct peer p = peer_new(ADM_READY);
    char *req = malloc(ADM_URL_MAX + 100);
    snprintf(req, ADM_URL_MAX + 100, "GET /%0*d HTTP/1.1\r\n\r\n", ADM_URL_MAX, 0);
    char *r = exchange(&p, req, 0);
    assert_string_equal(r, "HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    assert_null(p.conn);
    free(r);
    free(req);
    peer_close(&p);

    p = peer_new(ADM_ADMIN);
    r = exchange(&p, "NOT HTTP\r\n\r\n", 0);
    assert_string_equal(r, "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    assert_null(p.conn);
    free(r);
    peer_close(&p);

    /* An oversized body is refused once complete. */
    p = peer_new(ADM_ADMIN);
    size_t blen = ADM_BODY_MAX + 10;
    req = malloc(blen + 200);
    int hn = snprintf(req, 200, "POST /logging HTTP/1.1\r\nContent-Length: %zu\r\n\r\n", blen);
    memset(req + hn, 'x', blen);
    req[hn + blen] = '\0';
    r = exchange(&p, req, 4096);
    assert_string_equal(r,
                        "HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    free(r);
    free(req);
    peer_close(&p);

    /* EOF from the client closes the connection. */
    p = peer_new(ADM_ADMIN);
    shutdown(p.fd, SHUT_WR);
    h1_conn_io(&p.conn->io, EPOLLIN);
    p.conn = NULL;
    peer_close(&p);
}

static void test_http_metrics(void **state)
{
    struct peer p = peer_new(ADM_METRICS);
    char *r = exchange(&p,
                       "GET /metrics HTTP/1.1\r\nAccept: application/json, application/openmetrics-text; "
                       "version=1.0.0\r\n\r\n",
                       0);
    assert_non_null(strstr(r, "content-type: application/openmetrics-text;charset=utf-8;version=1.0.0\r\n"));
    assert_non_null(strstr(r, "# EOF\n"));
    free(r);
    r = exchange(&p, "GET /stats/prometheus HTTP/1.1\r\nAccept: text/plain\r\n\r\n", 0);
    assert_non_null(strstr(r, "content-type: text/plain; version=0.0.4; charset=utf-8\r\n"));
    assert_non_null(strstr(r, "# TYPE istio_tcp_connections_opened_total counter\n"));
    assert_null(strstr(r, "# EOF"));
    free(r);
    r = exchange(&p, "GET /config_dump HTTP/1.1\r\n\r\n", 0);
    assert_string_equal(r, "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n");
    free(r);
    peer_close(&p);
}

static void test_http_admin(void **state)
{
    struct peer p = peer_new(ADM_ADMIN);
    log_init("info", false);
    char *r = exchange(&p, "POST /logging HTTP/1.1\r\n\r\n", 0);
    assert_non_null(strstr(r, "\r\n\r\ncurrent log level is info\n"));
    free(r);
    r = exchange(&p, "POST /logging?level=debug HTTP/1.1\r\n\r\n", 0);
    assert_non_null(strstr(r, "HTTP/1.1 200 OK\r\n"));
    assert_non_null(strstr(r, "current log level is debug\n"));
    assert_int_equal(log_level_max, LOG_DEBUG);
    free(r);
    /* Directives add to the current filter (Istio's set_level). */
    r = exchange(&p, "POST /logging?level=access%3Dwarn HTTP/1.1\r\n\r\n", 0);
    assert_non_null(strstr(r, "current log level is access=warn,debug\n"));
    free(r);
    /* The target:level form of the help text, and Envoy's ?<target>=<level>. */
    r = exchange(&p, "POST /logging?level=ztunnel::proxy:trace,access:error HTTP/1.1\r\n\r\n", 0);
    assert_non_null(strstr(r, "current log level is ztunnel::proxy=trace,access=error,debug\n"));
    free(r);
    r = exchange(&p, "POST /logging?access=info HTTP/1.1\r\n\r\n", 0);
    assert_non_null(strstr(r, "current log level is ztunnel::proxy=trace,access=info,debug\n"));
    assert_int_equal(log_target_level("access"), LOG_INFO);
    free(r);
    r = exchange(&p, "POST /logging?level=loud HTTP/1.1\r\n\r\n", 0);
    assert_non_null(strstr(r, "HTTP/1.1 400 Bad Request\r\n"));
    assert_non_null(strstr(r, "Invalid level provided: loud\n"));
    free(r);
    r = exchange(&p, "POST /logging?access=loud HTTP/1.1\r\n\r\n", 0);
    assert_non_null(strstr(r, "HTTP/1.1 400 Bad Request\r\n"));
    assert_non_null(strstr(r, "Invalid level provided: access=loud\n"));
    free(r);
    /* A bare target (trace in RUST_LOG) is refused, as Istio's validate_log_level does. */
    r = exchange(&p, "POST /logging?level=access HTTP/1.1\r\n\r\n", 0);
    assert_non_null(strstr(r, "HTTP/1.1 400 Bad Request\r\n"));
    free(r);
    assert_int_equal(log_target_level("access"), LOG_INFO);
    /* The filter is bounded: past LOG_MAX_DIRECTIVES distinct targets the change is refused whole. */
    char req[4096];
    size_t n = (size_t)snprintf(req, sizeof(req), "POST /logging?level=");
    for (int i = 0; i < LOG_MAX_DIRECTIVES; i++)
        n += (size_t)snprintf(req + n, sizeof(req) - n, "%st%d=debug", i ? "," : "", i);
    snprintf(req + n, sizeof(req) - n, " HTTP/1.1\r\n\r\n");
    r = exchange(&p, req, 0);
    assert_non_null(strstr(r, "HTTP/1.1 400 Bad Request\r\n"));
    assert_non_null(strstr(r, "Failed to set new level: more than 32 directives"));
    free(r);
    char cur[LOG_FILTER_STR_MAX];
    log_filter_str(cur, sizeof(cur));
    assert_string_equal(cur, "ztunnel::proxy=trace,access=info,debug");
    r = exchange(&p, "POST /logging?reset HTTP/1.1\r\n\r\n", 0);
    assert_non_null(strstr(r, "current log level is info\n"));
    free(r);
    r = exchange(&p, "GET /logging HTTP/1.1\r\n\r\n", 0);
    assert_non_null(strstr(r, "HTTP/1.1 405 Method Not Allowed\r\n"));
    assert_non_null(strstr(r, "Invalid HTTP method\n"));
    free(r);
    log_init("info", false);

    hook_snap = load_ok(mesh_yaml);
    r = exchange(&p, "GET /config_dump HTTP/1.1\r\n\r\n", 0);
    assert_non_null(strstr(r, "content-type: application/json\r\n"));
    assert_non_null(strstr(r, "\"name\": \"server-0\""));
    free(r);
    snapshot_unref(hook_snap);
    hook_snap = NULL;

    r = exchange(&p, "GET /quitquitquit HTTP/1.1\r\n\r\n", 0);
    assert_non_null(strstr(r, "HTTP/1.1 405"));
    assert_int_equal(quit_calls, 0);
    free(r);
    r = exchange(&p, "POST /quitquitquit HTTP/1.1\r\n\r\n", 0);
    assert_non_null(strstr(r, "\r\n\r\nshutdown now\n"));
    assert_int_equal(quit_calls, 1);
    free(r);
    r = exchange(&p, "GET / HTTP/1.1\r\n\r\n", 0);
    assert_non_null(strstr(r, "content-type: text/html; charset=utf-8\r\n"));
    free(r);
    r = exchange(&p, "GET /stats/prometheus HTTP/1.1\r\n\r\n", 0);
    assert_string_equal(r, "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n");
    free(r);
    peer_close(&p);
}

/* The real listeners on free ports (env 0), over TCP; runs last because the admin thread keeps adm. */
static void test_admin_start(void **state)
{
    char err[256];
    setenv("ADMIN_PORT", "0", 1);
    setenv("METRICS_PORT", "0", 1);
    setenv("READINESS_PORT", "0", 1);
    pending_value = NULL;
    struct admin_hooks h = {.pending = hook_pending};
    assert_int_equal(admin_start(&h, err, sizeof(err)), 0);
    assert_int_equal(admin_start(&h, err, sizeof(err)), -EALREADY);
    uint16_t ports[3];
    admin_ports(&ports[0], &ports[1], &ports[2]);
    for (int i = 0; i < 3; i++)
        assert_true(ports[i] != 0);
    /* No SO_REUSEPORT: a second bind of the same port fails. */
    assert_int_equal(adm_listen(false, ports[1]), -EADDRINUSE);

    static const char *const reqs[] = {"POST /logging HTTP/1.1\r\nConnection: close\r\n\r\n",
                                       "GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n",
                                       "GET /healthz/ready HTTP/1.1\r\nConnection: close\r\n\r\n"};
    static const char *const want[] = {"current log level is", "istio_build{", "\r\n\r\nready\n"};
    for (int i = 0; i < 3; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in sa = {
            .sin_family = AF_INET, .sin_port = htons(ports[i]), .sin_addr = {htonl(INADDR_LOOPBACK)}};
        assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
        assert_int_equal(write(fd, reqs[i], strlen(reqs[i])), (ssize_t)strlen(reqs[i]));
        char buf[65536];
        size_t len = 0;
        ssize_t n;
        while ((n = read(fd, buf + len, sizeof(buf) - 1 - len)) > 0)
            len += (size_t)n;
        buf[len] = '\0';
        close(fd);
        assert_non_null(strstr(buf, "HTTP/1.1 200 OK\r\n"));
        assert_non_null(strstr(buf, want[i]));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unknown_defaults_and_order),
        cmocka_unit_test(test_workload_labels),
        cmocka_unit_test(test_label_escaping),
        cmocka_unit_test(test_close_flags),
        cmocka_unit_test(test_threads),
        cmocka_unit_test(test_formats),
        cmocka_unit_test(test_json_writer),
        cmocka_unit_test(test_config_dump),
        cmocka_unit_test_setup_teardown(test_http_readiness, srv_setup, srv_teardown),
        cmocka_unit_test_setup_teardown(test_http_limits_and_errors, srv_setup, srv_teardown),
        cmocka_unit_test_setup_teardown(test_http_metrics, srv_setup, srv_teardown),
        cmocka_unit_test_setup_teardown(test_http_admin, srv_setup, srv_teardown),
        cmocka_unit_test(test_admin_start),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
