/* zmesh up's pure parts (src/cli/cluster.c): the cluster's addresses, placement, the resource record, the Pod
 * spec reader and the manifest reading on zmeshd's reader. cluster.c is included (as test_admin.c includes
 * admin.c): the CLI's objects are not in libzmesh.a, and cluster.c needs nothing else of the CLI. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "cli/cluster.c"

static void test_cfg_derive(void **state)
{
    (void)state;
    struct cluster_cfg cfg = {.n_nodes = 2};
    char err[300];
    strcpy(cfg.prefix, "zmesh");
    strcpy(cfg.node_subnet, "172.30.0.0");
    strcpy(cfg.pod_subnet, "10.244.0.0");
    strcpy(cfg.nodes[0].name, "node1");
    strcpy(cfg.nodes[1].name, "node2");
    assert_int_equal(cluster_cfg_derive(&cfg, err, sizeof(err)), 0);
    assert_string_equal(cfg.host_ip, "172.30.0.1");
    assert_string_equal(cfg.bridge, "zmesh0");
    assert_string_equal(cfg.nodes[0].ip, "172.30.0.2");
    assert_string_equal(cfg.nodes[1].ip, "172.30.0.3");
    assert_string_equal(cfg.nodes[0].pod_cidr, "10.244.1.0/24");
    assert_string_equal(cfg.nodes[1].pod_cidr, "10.244.2.0/24");
    assert_string_equal(cfg.nodes[1].netns, "zmesh-node2");
    assert_int_equal(cfg.nodes[1].index, 2);
    char ns[128];
    cluster_pod_netns(&cfg, "shop", "web", ns, sizeof(ns));
    assert_string_equal(ns, "zmesh-shop_web");

    struct cluster_cfg bad = cfg;
    strcpy(bad.node_subnet, "172.30.0.5");
    assert_int_equal(cluster_cfg_derive(&bad, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "--node-subnet"));
    bad = cfg;
    strcpy(bad.pod_subnet, "10.244.3.0"); /* a /16 is needed: the third octet is the node */
    assert_int_equal(cluster_cfg_derive(&bad, err, sizeof(err)), -EINVAL);
    bad = cfg;
    strcpy(bad.prefix, "Bad_");
    assert_int_equal(cluster_cfg_derive(&bad, err, sizeof(err)), -EINVAL);
    bad = cfg;
    strcpy(bad.nodes[1].name, "node1");
    assert_int_equal(cluster_cfg_derive(&bad, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "declared twice"));
    bad = cfg;
    strcpy(bad.nodes[1].name, "Node_2");
    assert_int_equal(cluster_cfg_derive(&bad, err, sizeof(err)), -EINVAL);
    bad = cfg;
    bad.n_nodes = 0;
    assert_int_equal(cluster_cfg_derive(&bad, err, sizeof(err)), -EINVAL);
}

static void test_placement_round_robin(void **state)
{
    (void)state;
    unsigned rr = 0;
    size_t got[7];
    for (int i = 0; i < 7; i++)
        got[i] = cluster_place_next(&rr, 3);
    size_t want[7] = {0, 1, 2, 0, 1, 2, 0};
    assert_memory_equal(got, want, sizeof(want));
    assert_int_equal(cluster_place_next(&rr, 0), 0);
}

static void test_names(void **state)
{
    (void)state;
    assert_true(cluster_dns_label("node-1"));
    assert_false(cluster_dns_label("-node"));
    assert_false(cluster_dns_label("Node"));
    assert_false(cluster_dns_label(""));
    assert_true(cluster_dns_subdomain("web.v1"));
    assert_false(cluster_dns_subdomain("web..v1"));
    assert_false(cluster_dns_subdomain(".web"));
    char f[128];
    cluster_api_file("Pod", "shop", "web", f, sizeof(f));
    assert_string_equal(f, "pod_shop_web.json");
    cluster_api_file("Namespace", "", "shop", f, sizeof(f));
    assert_string_equal(f, "namespace__shop.json");
    assert_true(cluster_kind_cluster_scoped("Node"));
    assert_false(cluster_kind_cluster_scoped("Pod"));
    int64_t t;
    assert_int_equal(cluster_parse_rfc3339("2024-01-02T03:04:05Z", &t), 0);
    char b[32];
    cluster_rfc3339(t, b, sizeof(b));
    assert_string_equal(b, "2024-01-02T03:04:05Z");
    assert_int_equal(cluster_parse_rfc3339("yesterday", &t), -EINVAL);
}

static void test_record(void **state)
{
    (void)state;
    struct record_entry e;
    bool added;
    assert_int_equal(cluster_record_parse_line("+ netns zmesh-node1", &e, &added), 0);
    assert_true(added);
    assert_int_equal(e.kind, REC_NETNS);
    assert_string_equal(e.a, "zmesh-node1");
    assert_int_equal(cluster_record_parse_line("- route 10.244.1.0/24 172.30.0.2", &e, &added), 0);
    assert_false(added);
    assert_string_equal(e.b, "172.30.0.2");
    assert_int_equal(cluster_record_parse_line("+ pod shop web node1 0123abcd", &e, &added), 0);
    assert_string_equal(e.d, "0123abcd");
    assert_int_equal(cluster_record_parse_line("+ route 10.244.1.0/24", &e, &added),
                     -EINVAL);                                                      /* a field short */
    assert_int_equal(cluster_record_parse_line("+ volume x", &e, &added), -EINVAL); /* unknown kind */
    assert_int_equal(cluster_record_parse_line("* netns x", &e, &added), -EINVAL);

    const char *text = "+ bridge zmesh0\n"
                       "+ netns zmesh-node1\n"
                       "+ pod shop web node1 aa\n"
                       "+ netns zmesh-shop_web\n"
                       "- netns zmesh-shop_web\n"
                       "- pod shop web node1 aa\n"
                       "+ proc 123 456 zmeshd\n"
                       "garbage\n"
                       "+ netns torn"; /* no newline: torn by a crash */
    struct record_entry *v;
    size_t n, bad;
    assert_int_equal(cluster_record_live(text, &v, &n, &bad), 0);
    assert_int_equal(n, 3);
    assert_int_equal(bad, 2);
    assert_int_equal(v[0].kind, REC_BRIDGE);
    assert_string_equal(v[1].a, "zmesh-node1");
    assert_int_equal(v[2].kind, REC_PROC);
    assert_string_equal(v[2].c, "zmeshd");
    free(v);
}

struct findings {
    int errors, warnings;
    char last_error[800], all[4000];
};

static void collect(void *ud, bool warn, const char *msg)
{
    struct findings *f = ud;
    if (warn)
        f->warnings++;
    else {
        f->errors++;
        snprintf(f->last_error, sizeof(f->last_error), "%s", msg);
    }
    size_t l = strlen(f->all);
    snprintf(f->all + l, sizeof(f->all) - l, "%s\n", msg);
}

static json_t *pod_json(const char *text)
{
    json_error_t je;
    json_t *o = json_loads(text, 0, &je);
    assert_non_null(o);
    return o;
}

static void test_pod_spec(void **state)
{
    (void)state;
    struct findings f = {0};
    struct cluster_warned w = {0};
    struct manifest_src src = {.file = "p.yaml", .doc = 2};
    struct pod_spec ps;
    json_t *o = pod_json(
        "{\"kind\":\"Pod\",\"metadata\":{\"name\":\"web\",\"namespace\":\"shop\"},\"spec\":{\"nodeName\":"
        "\"node2\","
        "\"restartPolicy\":\"OnFailure\",\"serviceAccountName\":\"web\",\"containers\":[{\"name\":\"app\","
        "\"image\":"
        "\"x\",\"command\":[\"python3\"],\"args\":[\"-m\",\"http.server\"],\"env\":[{\"name\":\"A\","
        "\"value\":\"1\"},"
        "{\"name\":\"B\"}],\"ports\":[{\"name\":\"http\",\"containerPort\":8000}],\"readinessProbe\":{"
        "\"httpGet\":"
        "{\"port\":\"http\",\"path\":\"/healthz\"},\"periodSeconds\":2}},{\"name\":\"side\",\"image\":\"y\","
        "\"command\":[\"sleep\",\"9\"],\"readinessProbe\":{\"exec\":{\"command\":[\"true\"]}}}]}}");
    assert_int_equal(cluster_pod_spec_parse(o, &src, &ps, &w, collect, &f), 0);
    assert_int_equal(f.errors, 0);
    assert_int_equal(f.warnings, 1); /* image: once, for both containers */
    assert_non_null(
        strstr(f.all, "p.yaml#2: spec.containers[0]: image: zmesh up runs command/args; image ignored"));
    assert_string_equal(ps.node, "node2");
    assert_int_equal(ps.restart, RESTART_ON_FAILURE);
    assert_int_equal(ps.grace_s, CLUSTER_GRACE_DEFAULT_S);
    assert_int_equal(ps.n, 2);
    assert_string_equal(ps.c[0].argv[0], "python3");
    assert_string_equal(ps.c[0].argv[2], "http.server");
    assert_null(ps.c[0].argv[3]);
    assert_string_equal(ps.c[0].env[0], "A=1");
    assert_string_equal(ps.c[0].env[1], "B=");
    assert_int_equal(ps.c[0].readiness.kind, PROBE_HTTP);
    assert_int_equal(ps.c[0].readiness.port, 8000);
    assert_string_equal(ps.c[0].readiness.path, "/healthz");
    assert_int_equal(ps.c[0].readiness.period_s, 2);
    assert_int_equal(ps.c[0].readiness.failure_threshold, 3);
    assert_int_equal(ps.c[1].readiness.kind, PROBE_EXEC);
    assert_int_equal(ps.c[1].readiness.period_s, 10); /* Kubernetes' default */
    cluster_pod_spec_free(&ps);
    json_decref(o);

    static const struct {
        const char *spec, *want;
    } bad[] = {
        {"{\"containers\":[{\"name\":\"a\",\"args\":[\"x\"]}]}",
         "spec.containers[0].command: required by zmesh up"},
        {"{\"containers\":[{\"name\":\"a\",\"command\":\"sleep 1\"}]}",
         "spec.containers[0].command: expected a list"},
        {"{\"containers\":[{\"name\":\"a\",\"command\":[\"sleep\",1]}]}",
         "spec.containers[0].command[1]: expected a string"},
        {"{\"restartPolicy\":\"Sometimes\",\"containers\":[{\"name\":\"a\",\"command\":[\"x\"]}]}",
         "spec.restartPolicy"},
        {"{\"containers\":[]}", "spec.containers: expected a list of 1 to 16"},
        {"{\"containers\":[{\"name\":\"a\",\"command\":[\"x\"]},{\"name\":\"a\",\"command\":[\"x\"]}]}",
         "spec.containers[1].name: duplicate container name"},
        {"{\"containers\":[{\"name\":\"a\",\"command\":[\"x\"],\"readinessProbe\":{\"tcpSocket\":{\"port\":"
         "\"web\"}}}]}",
         "readinessProbe.tcpSocket: port: \"web\" names no port"},
        {"{\"containers\":[{\"name\":\"a\",\"command\":[\"x\"],\"readinessProbe\":{\"tcpSocket\":{\"port\":1}"
         ","
         "\"exec\":{\"command\":[\"x\"]}}}]}",
         "expected exactly one of tcpSocket, exec, httpGet"},
        {"{\"containers\":[{\"name\":\"a\",\"command\":[\"x\"],\"readinessProbe\":{\"tcpSocket\":{\"port\":1}"
         ","
         "\"periodSeconds\":0}}]}",
         "periodSeconds: expected an integer 1..3600"},
        {"{\"containers\":[{\"name\":\"a\",\"command\":[\"x\"],\"env\":[{\"name\":\"N\",\"value\":3}]}]}",
         "spec.containers[0].env[0]: value: expected a string"},
        /* A named port whose containerPort is 0 (fuzz_up_pod's find: a probe of port 0). */
        {"{\"containers\":[{\"name\":\"a\",\"command\":[\"x\"],\"ports\":[{\"name\":\"http\","
         "\"containerPort\":0}],\"readinessProbe\":{\"tcpSocket\":{\"port\":\"http\"}}}]}",
         "readinessProbe.tcpSocket: port: \"http\" names a containerPort that is not a port 1-65535"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char text[1200];
        snprintf(text, sizeof(text),
                 "{\"kind\":\"Pod\",\"metadata\":{\"name\":\"p\",\"namespace\":\"d\"},\"spec\":%s}",
                 bad[i].spec);
        struct findings g = {0};
        o = pod_json(text);
        assert_int_equal(cluster_pod_spec_parse(o, &src, &ps, &w, collect, &g), -EINVAL);
        if (!strstr(g.last_error, bad[i].want))
            fail_msg("case %zu: got \"%s\", want \"%s\"", i, g.last_error, bad[i].want);
        assert_non_null(strstr(g.last_error, "p.yaml#2: "));
        cluster_pod_spec_free(&ps);
        json_decref(o);
    }
}

static void test_manifests_read(void **state)
{
    (void)state;
    char dir[] = "/tmp/zmesh-test-up-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char p[600];
    snprintf(p, sizeof(p), "%s/a.yaml", dir);
    FILE *fp = fopen(p, "w");
    fputs(
        "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: x}\n  spec:\n"
        "    containers: [{name: c, command: [\"true\"]}]\n- apiVersion: v1\n  kind: Node\n  metadata: "
        "{name: n1, "
        "namespace: ignored}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: shop}\n"
        "spec: {ports: [{port: 80}], selector: {app: x}}\n",
        fp);
    fclose(fp);
    snprintf(p, sizeof(p), "%s/.hidden.yaml", dir);
    fp = fopen(p, "w");
    fputs("this: [is not read\n", fp);
    fclose(fp);
    struct findings f = {0};
    struct cluster_warned w = {0};
    json_t *objs = NULL;
    assert_int_equal(cluster_manifests_read(dir, &objs, &w, collect, &f), 0);
    assert_int_equal(f.errors, 0);
    assert_int_equal(json_array_size(objs), 3);
    assert_string_equal(cluster_obj_kind(json_array_get(objs, 0)), "Pod");
    assert_string_equal(cluster_obj_ns(json_array_get(objs, 0)), "default");
    assert_string_equal(cluster_obj_ns(json_array_get(objs, 1)), ""); /* a Node has no namespace */
    json_t *port =
        json_array_get(json_object_get(json_object_get(json_array_get(objs, 2), "spec"), "ports"), 0);
    assert_true(json_is_integer(json_object_get(port, "port"))); /* YAML's 80 is a number */
    json_decref(objs);

    /* An error in zmeshd's reader (a port out of range) and one of the Pod reader, both named. */
    snprintf(p, sizeof(p), "%s/b.yaml", dir);
    fp = fopen(p, "w");
    fputs("apiVersion: v1\nkind: Pod\nmetadata: {name: y}\nspec:\n  containers:\n  - name: c\n    command: "
          "[\"x\"]\n"
          "    ports: [{containerPort: 70000}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: z}\nspec:\n"
          "  containers: [{name: c}]\n",
          fp);
    fclose(fp);
    memset(&f, 0, sizeof(f));
    objs = NULL;
    assert_int_equal(cluster_manifests_read(dir, &objs, &w, collect, &f), -EINVAL);
    assert_null(objs);
    assert_non_null(
        strstr(f.all, "b.yaml#1: spec.containers[0].ports[0].containerPort: expected a port 1-65535"));
    assert_non_null(strstr(f.all, "b.yaml#2: spec.containers[0].command: required by zmesh up"));
    unlink(p);
    snprintf(p, sizeof(p), "%s/a.yaml", dir);
    unlink(p);
    snprintf(p, sizeof(p), "%s/.hidden.yaml", dir);
    unlink(p);
    rmdir(dir);
    assert_int_equal(cluster_manifests_read("/nonexistent/zmesh", &objs, &w, collect, &f), -ENOENT);
}

static void test_write_atomic_and_mkdirs(void **state)
{
    (void)state;
    char dir[] = "/tmp/zmesh-test-up-XXXXXX", p[600], *s = NULL;
    assert_non_null(mkdtemp(dir));
    snprintf(p, sizeof(p), "%s/a/b/c", dir);
    assert_int_equal(cluster_mkdirs(p, 0755), 0);
    assert_int_equal(cluster_mkdirs(p, 0755), 0);
    snprintf(p, sizeof(p), "%s/a/b/c/f.json", dir);
    assert_int_equal(cluster_write_atomic(p, "{}", 2), 0);
    size_t n;
    assert_int_equal(cluster_read_file(p, 100, &s, &n), 0);
    assert_string_equal(s, "{}");
    free(s);
    assert_int_equal(cluster_read_file(p, 1, &s, &n), -EFBIG);
    unlink(p);
    for (int i = 0; i < 3; i++) {
        char *sl = strrchr(p, '/');
        *sl = '\0';
        rmdir(p);
    }
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cfg_derive),
        cmocka_unit_test(test_placement_round_robin),
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_record),
        cmocka_unit_test(test_pod_spec),
        cmocka_unit_test(test_manifests_read),
        cmocka_unit_test(test_write_atomic_and_mkdirs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
