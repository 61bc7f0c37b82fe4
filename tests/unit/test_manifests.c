/* Unit tests for zmeshd's manifest reader and conversion (src/zmeshd/manifest.c, k8s.c): Kubernetes YAML in,
 * snapshot out, compared field by field with what istiod computes (istio/istio
 * pilot/pkg/serviceregistry/kube/controller/ambient/ workloads.go, services.go, authorization.go). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "zmeshd/k8s.h"
#include "zmeshd/manifest.h"

#define MAX_FINDINGS 64

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

/* Index of the first finding containing s, or -1. */
static int find(const struct findings *fs, const char *s)
{
    for (size_t i = 0; i < fs->n; i++)
        if (strstr(fs->msg[i], s)) return (int)i;
    return -1;
}

static size_t count(const struct findings *fs, const char *s)
{
    size_t n = 0;
    for (size_t i = 0; i < fs->n; i++)
        n += strstr(fs->msg[i], s) != NULL;
    return n;
}

static void dump(const struct findings *fs)
{
    for (size_t i = 0; i < fs->n; i++)
        print_message("finding: %s\n", fs->msg[i]);
}

/* Loads documents (one file each, named file0.yaml ...) and builds the snapshot. */
static struct snapshot *build(struct findings *fs, const struct k8s_options *o, const char *const *files,
                              size_t n)
{
    struct manifest_store *st = NULL;
    assert_int_equal(manifest_store_new(&st), 0);
    for (size_t i = 0; i < n; i++) {
        char name[32];
        snprintf(name, sizeof(name), "file%zu.yaml", i);
        assert_int_equal(manifest_load_buf(st, name, files[i], strlen(files[i]), collect, fs), 0);
    }
    struct snapshot *s = NULL;
    assert_int_equal(k8s_build_snapshot(st, o, &s, collect, fs), 0);
    manifest_store_free(st);
    assert_non_null(s);
    return s;
}

static struct snapshot *build1(struct findings *fs, const char *yaml)
{
    const char *f[] = {yaml};
    return build(fs, NULL, f, 1);
}

static const struct workload *wl(const struct snapshot *s, const char *ns, const char *name)
{
    char uid[256];
    snprintf(uid, sizeof(uid), "Kubernetes//Pod/%s/%s", ns, name);
    return snapshot_workload_by_uid(s, uid);
}

static bool has_policy_ref(const struct workload *w, const char *key)
{
    for (size_t i = 0; i < w->n_authorization_policies; i++)
        if (!strcmp(w->authorization_policies[i], key)) return true;
    return false;
}

#define NS(name, labels)                                                                                     \
    "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: " name "\n  labels: {" labels "}\n---\n"
/* A running, ready pod with one IP and the given labels. */
#define POD(ns, name, ip, labels)                                                                            \
    "apiVersion: v1\nkind: Pod\nmetadata:\n  name: " name "\n  namespace: " ns "\n  labels: {" labels "}\n"  \
    "spec:\n  nodeName: node1\n  serviceAccountName: sa1\n  containers:\n  - name: c\n    ports:\n"          \
    "    - {name: http, containerPort: 8080}\n    - {name: dns, containerPort: 5353, protocol: UDP}\n"       \
    "status:\n  phase: Running\n  podIP: " ip "\n  conditions:\n  - {type: Ready, status: \"True\"}\n---\n"

/* ---- reader ---- */

static void test_multi_document(void **state)
{
    (void)state;
    struct findings fs = {0};
    struct snapshot *s = build1(
        &fs, NS("a", "") POD("a", "p1", "10.0.0.1",
                             "app: x") "---\n"
                                       "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c1}\n---\n"
                                       "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c2}\n---\n" POD(
                                           "a", "p2", "10.0.0.2", "app: x"));
    dump(&fs);
    assert_non_null(wl(s, "a", "p1"));
    assert_non_null(wl(s, "a", "p2"));
    /* Unknown kinds: one warning, naming the first document of that kind (#4; #3 is empty). */
    assert_int_equal(count(&fs, "kind ConfigMap is not used by zmeshd"), 1);
    assert_true(find(&fs, "file0.yaml#4: kind: kind ConfigMap") >= 0);
    snapshot_unref(s);
}

static void test_list(void **state)
{
    (void)state;
    struct findings fs = {0};
    /* What `kubectl get pods -o yaml` writes: one bad item is left out, the others apply. */
    struct snapshot *s = build1(
        &fs, "apiVersion: v1\nkind: List\nitems:\n"
             "- {apiVersion: v1, kind: Pod, metadata: {name: a, namespace: n}, status: {podIP: 10.0.0.1}}\n"
             "- {apiVersion: v1, kind: Pod, metadata: {name: b, namespace: n}, spec: {containers: 3}}\n"
             "- {apiVersion: v1, kind: Pod, metadata: {name: c, namespace: n}, status: {podIP: 10.0.0.3}}\n");
    dump(&fs);
    assert_non_null(wl(s, "n", "a"));
    assert_null(wl(s, "n", "b"));
    assert_non_null(wl(s, "n", "c"));
    assert_true(find(&fs, "file0.yaml#1: items[1].spec.containers: expected a list, got a scalar") >= 0);
    snapshot_unref(s);
}

static void test_broken_document(void **state)
{
    (void)state;
    struct findings fs = {0};
    struct snapshot *s = build1(
        &fs, POD("a", "p1", "10.0.0.1", "") "apiVersion: v1\nkind: Pod\nmetadata:\n"
                                            "  name: bad\n  namespace: a\nspec:\n"
                                            "  containers: oops\n---\n" POD("a", "p3", "10.0.0.3", ""));
    dump(&fs);
    assert_non_null(wl(s, "a", "p1"));
    assert_null(wl(s, "a", "bad"));
    assert_non_null(wl(s, "a", "p3"));
    int i = find(&fs, "file0.yaml#2: spec.containers: expected a list, got a scalar (line ");
    assert_true(i >= 0);
    assert_int_equal(fs.level[i], MANIFEST_ERROR);
    snapshot_unref(s);
}

static void test_field_errors(void **state)
{
    (void)state;
    struct findings fs = {0};
    struct snapshot *s = build1(
        &fs,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: a}\nspec:\n  containers:\n  - ports:\n"
        "    - {containerPort: http}\n---\n"
        "apiVersion: v1\nkind: Pod\nmetadata: {name: q, namespace: a}\nstatus: {podIP: 10.0.0.x}\n---\n"
        "apiVersion: v2\nkind: Service\nmetadata: {name: s}\nspec: {}\n---\n"
        "apiVersion: v1\nkind: Service\nmetadata: {namespace: a}\nspec: {}\n---\n"
        "a: &x 1\nb: *x\n---\n"
        "apiVersion: v1\nkind: Pod\nmetadata: {name: d, name: e}\n---\n" POD("a", "ok", "10.0.0.9", ""));
    dump(&fs);
    assert_true(find(&fs, "file0.yaml#1: spec.containers[0].ports[0].containerPort: expected a port 1-65535, "
                          "got \"http\"") >= 0);
    assert_true(find(&fs, "file0.yaml#2: status.podIP: invalid IP address \"10.0.0.x\"") >= 0);
    assert_true(find(&fs, "file0.yaml#3: apiVersion: apiVersion v2 is not supported for kind Service") >= 0);
    assert_true(find(&fs, "file0.yaml#4: metadata.name: required field is missing") >= 0);
    assert_true(find(&fs, "file0.yaml#5: YAML aliases are not supported") >= 0);
    assert_true(find(&fs, "file0.yaml#6: metadata: duplicate key \"name\"") >= 0);
    assert_int_equal(snapshot_n_workloads(s), 1);
    assert_non_null(wl(s, "a", "ok"));
    assert_int_equal(snapshot_n_services(s), 0);
    snapshot_unref(s);
}

static void test_syntax_error(void **state)
{
    (void)state;
    struct findings fs = {0};
    const char *f[] = {POD("a", "p1", "10.0.0.1", "") "a: [1, 2\n", POD("a", "p2", "10.0.0.2", "")};
    struct snapshot *s = build(&fs, NULL, f, 2);
    dump(&fs);
    /* The document before the syntax error and the other file still apply. */
    assert_non_null(wl(s, "a", "p1"));
    assert_non_null(wl(s, "a", "p2"));
    assert_true(find(&fs, "file0.yaml#2: YAML syntax error") >= 0);
    snapshot_unref(s);
}

static void write_file(const char *dir, const char *name, const char *text)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void test_directory(void **state)
{
    (void)state;
    char dir[] = "/tmp/zmesh-manifests-XXXXXX";
    assert_non_null(mkdtemp(dir));
    /* Two pods with the same name: the one from the file that sorts first wins, the other is rejected. */
    write_file(dir, "b.yaml", POD("a", "p", "10.0.0.2", ""));
    write_file(dir, "a.yml", POD("a", "p", "10.0.0.1", ""));
    write_file(dir, "notes.txt", "not: yaml: at: all: [");
    struct manifest_store *st = NULL;
    struct findings fs = {0};
    assert_int_equal(manifest_store_new(&st), 0);
    assert_int_equal(manifest_load_dir(st, dir, collect, &fs), 0);
    struct snapshot *s = NULL;
    assert_int_equal(k8s_build_snapshot(st, NULL, &s, collect, &fs), 0);
    dump(&fs);
    const struct workload *w = wl(s, "a", "p");
    assert_non_null(w);
    char ip[64];
    assert_string_equal(ip_format(&w->ips[0], ip, sizeof(ip)), "10.0.0.1");
    int i = find(&fs, "b.yaml#1: metadata.name: duplicate Pod a/p (first in a.yml#1): left out");
    assert_true(i >= 0);
    assert_int_equal(fs.level[i], MANIFEST_ERROR);
    assert_int_equal(find(&fs, "notes.txt"), -1);
    assert_int_equal(manifest_load_dir(st, "/nonexistent-zmesh", collect, &fs), -ENOENT);
    snapshot_unref(s);
    manifest_store_free(st);
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

/* ---- workloads ---- */

static void test_enrolment(void **state)
{
    (void)state;
    struct findings fs = {0};
    struct snapshot *s = build1(
        &fs, NS("amb", "istio.io/dataplane-mode: ambient") NS("plain", "") POD("amb", "in-ns", "10.0.1.1", "")
                 POD("amb", "opt-out", "10.0.1.2", "istio.io/dataplane-mode: none")
                     POD("plain", "opt-in", "10.0.1.3", "istio.io/dataplane-mode: ambient")
                         POD("plain", "out", "10.0.1.4", "") POD("nowhere", "no-ns", "10.0.1.5", ""));
    dump(&fs);
    assert_int_equal(wl(s, "amb", "in-ns")->protocol, WL_PROTO_HBONE);
    assert_int_equal(wl(s, "amb", "opt-out")->protocol, WL_PROTO_TCP);
    assert_int_equal(wl(s, "plain", "opt-in")->protocol, WL_PROTO_HBONE);
    assert_int_equal(wl(s, "plain", "out")->protocol, WL_PROTO_TCP);
    assert_int_equal(wl(s, "nowhere", "no-ns")->protocol, WL_PROTO_TCP);
    snapshot_unref(s);

    /* A second Namespace of the same name is left out, loudly; the first one's label holds. */
    struct findings fs2 = {0};
    s = build1(&fs2,
               NS("amb", "istio.io/dataplane-mode: ambient") NS("amb", "") POD("amb", "p", "10.0.1.1", ""));
    dump(&fs2);
    assert_int_equal(wl(s, "amb", "p")->protocol, WL_PROTO_HBONE);
    assert_true(find(&fs2, "file0.yaml#2: metadata.name: duplicate Namespace amb (first in file0.yaml#1)") >=
                0);
    snapshot_unref(s);
}

static void test_workload_fields(void **state)
{
    (void)state;
    struct findings fs = {0};
    const char *f[] = {
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  namespace: ns1\n  labels:\n"
        "    app: a-app\n    app.kubernetes.io/name: a-k8s\n    version: v1\n    app.kubernetes.io/version: "
        "v2\n"
        "spec: {nodeName: n7, serviceAccountName: reviews, hostNetwork: false}\n"
        "status:\n  phase: Running\n  podIP: 10.1.0.1\n  podIPs: [{ip: 10.1.0.1}, {ip: 'fd00::1'}]\n"
        "  conditions: [{type: Ready, status: 'True'}]\n---\n" POD(
            "ns1", "q", "10.1.0.2", "app: only-app, version: v9") POD("ns1", "r", "10.1.0.3", "")};
    struct snapshot *s =
        build(&fs, &(struct k8s_options){.cluster_id = "c1", .trust_domain = "td.example"}, f, 1);
    dump(&fs);
    const struct workload *w = snapshot_workload_by_uid(s, "c1//Pod/ns1/p");
    assert_non_null(w);
    assert_string_equal(w->name, "p");
    assert_string_equal(w->namespace_, "ns1");
    assert_int_equal(w->n_ips, 2);
    char ip[64];
    assert_string_equal(ip_format(&w->ips[1], ip, sizeof(ip)), "fd00::1");
    assert_string_equal(w->node, "n7");
    assert_string_equal(w->service_account, "reviews");
    assert_string_equal(w->trust_domain, "td.example");
    assert_string_equal(w->cluster_id, "c1");
    assert_string_equal(w->canonical_name, "a-k8s");
    assert_string_equal(w->canonical_revision, "v2");
    assert_string_equal(w->workload_type, "pod");
    assert_true(w->healthy);
    assert_string_equal(w->spiffe_id, "spiffe://td.example/ns/ns1/sa/reviews");
    w = snapshot_workload_by_uid(s, "c1//Pod/ns1/q");
    assert_string_equal(w->canonical_name, "only-app");
    assert_string_equal(w->canonical_revision, "v9");
    w = snapshot_workload_by_uid(s, "c1//Pod/ns1/r");
    assert_string_equal(w->canonical_name, "r");
    assert_string_equal(w->canonical_revision, "latest");
    char uid[64];
    assert_int_equal(k8s_pod_uid("c1", "ns", "n", uid, sizeof(uid)), (int)strlen("c1//Pod/ns/n"));
    snapshot_unref(s);
}

#define OWNED_POD(name, ip, kind, owner, labels)                                                             \
    "apiVersion: v1\nkind: Pod\nmetadata:\n  name: " name "\n  namespace: a\n  generateName: x-\n"           \
    "  labels: {" labels "}\n  ownerReferences: [{apiVersion: v1, kind: " kind ", name: " owner              \
    ", controller: true}]\nstatus: {podIP: " ip "}\n---\n"

static void test_workload_name(void **state)
{
    (void)state;
    struct findings fs = {0};
    struct snapshot *s = build1(
        &fs, OWNED_POD("web-5d8f-abcde", "10.0.0.1", "ReplicaSet", "web-5d8f", "pod-template-hash: 5d8f")
                 OWNED_POD("rs-xyz", "10.0.0.2", "ReplicaSet", "rs", "")
                     OWNED_POD("backup-28001234-q", "10.0.0.3", "Job", "backup-28001234", "")
                         OWNED_POD("once-q", "10.0.0.4", "Job", "once", "")
                             OWNED_POD("db-0", "10.0.0.5", "StatefulSet", "db", "app: database")
                                 POD("a", "bare", "10.0.0.6", ""));
    dump(&fs);
    const struct workload *w = wl(s, "a", "web-5d8f-abcde");
    assert_string_equal(w->workload_name, "web");
    assert_string_equal(w->workload_type, "deployment");
    assert_string_equal(w->canonical_name, "web"); /* no app label: the workload name */
    w = wl(s, "a", "rs-xyz");
    assert_string_equal(w->workload_name, "rs-xyz"); /* a ReplicaSet without the hash label: the pod */
    assert_string_equal(w->workload_type, "pod");
    w = wl(s, "a", "backup-28001234-q");
    assert_string_equal(w->workload_name, "backup");
    assert_string_equal(w->workload_type, "cronjob");
    w = wl(s, "a", "once-q");
    assert_string_equal(w->workload_name, "once");
    assert_string_equal(w->workload_type, "job");
    w = wl(s, "a", "db-0");
    assert_string_equal(w->workload_name, "db-0");
    assert_string_equal(w->workload_type, "pod");
    assert_string_equal(w->canonical_name, "database");
    assert_string_equal(wl(s, "a", "bare")->workload_name, "bare");
    snapshot_unref(s);
}

static void test_health(void **state)
{
    (void)state;
    struct findings fs = {0};
    struct snapshot *s = build1(
        &fs, "apiVersion: v1\nkind: Pod\nmetadata: {name: unready, namespace: a}\n"
             "status: {phase: Running, podIP: 10.0.0.1, conditions: [{type: Ready, status: 'False'}]}\n---\n"
             "apiVersion: v1\nkind: Pod\nmetadata: {name: noconds, namespace: a}\n"
             "status: {phase: Pending, podIP: 10.0.0.2}\n---\n"
             "apiVersion: v1\nkind: Pod\nmetadata: {name: deleting, namespace: a, deletionTimestamp: "
             "'2024-01-01T00:00:00Z'}\n"
             "status: {phase: Running, podIP: 10.0.0.3, conditions: [{type: Ready, status: 'True'}]}\n---\n"
             "apiVersion: v1\nkind: Pod\nmetadata: {name: done, namespace: a}\n"
             "status: {phase: Succeeded, podIP: 10.0.0.4}\n---\n"
             "apiVersion: v1\nkind: Pod\nmetadata: {name: noip, namespace: a}\nstatus: {phase: Pending}\n");
    dump(&fs);
    assert_false(wl(s, "a", "unready")->healthy);
    assert_false(wl(s, "a", "noconds")->healthy);
    assert_false(wl(s, "a", "deleting")->healthy);
    assert_null(wl(s, "a", "done"));
    assert_null(wl(s, "a", "noip"));
    assert_true(find(&fs, "file0.yaml#4: status.phase: pod has terminated (Succeeded): no workload") >= 0);
    assert_true(find(&fs, "file0.yaml#5: status.podIPs: pod has no IP address yet: no workload") >= 0);
    snapshot_unref(s);
}

/* ---- services ---- */

static void test_services(void **state)
{
    (void)state;
    struct findings fs = {0};
    struct snapshot *s = build1(
        &fs, POD("a", "p", "10.0.0.1", "app: web")
                 POD("a", "other", "10.0.0.2",
                     "app: db") "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: a}\n"
                                "spec:\n  selector: {app: web}\n  clusterIP: 10.96.0.1\n  clusterIPs: "
                                "[10.96.0.1, 'fd00::a']\n  ports:\n"
                                "  - {name: h, port: 80, targetPort: http}\n  - {name: n, port: 81, "
                                "targetPort: 9090}\n"
                                "  - {name: d, port: 82}\n  - {name: m, port: 83, targetPort: missing}\n---\n"
                                "apiVersion: v1\nkind: Service\nmetadata: {name: headless, namespace: a}\n"
                                "spec: {clusterIP: None, selector: {app: web}, ports: [{port: 5000}]}\n---\n"
                                "apiVersion: v1\nkind: Service\nmetadata: {name: noselector, namespace: a}\n"
                                "spec: {clusterIP: 10.96.0.9, ports: [{port: 80}]}\n");
    dump(&fs);
    const struct service *svc = snapshot_service_by_host(s, "a/web.a.svc.cluster.local");
    assert_non_null(svc);
    assert_string_equal(svc->name, "web");
    assert_int_equal(svc->n_vips, 2);
    char ip[64];
    assert_string_equal(ip_format(&svc->vips[1].ip, ip, sizeof(ip)), "fd00::a");
    assert_int_equal(svc->n_ports, 4);
    assert_int_equal(svc->ports[0].port, 80);
    assert_int_equal(svc->ports[0].target, 0); /* named: each endpoint resolves it */
    assert_int_equal(svc->ports[1].target, 9090);
    assert_int_equal(svc->ports[2].target, 82); /* absent: the API server's default, the port itself */
    const struct service *hl = snapshot_service_by_host(s, "a/headless.a.svc.cluster.local");
    assert_non_null(hl);
    assert_int_equal(hl->n_vips, 0);

    const struct workload *w = wl(s, "a", "p");
    assert_int_equal(w->n_services, 2);
    const struct wl_service_ports *sp = workload_service_ports(w, "a", "web.a.svc.cluster.local");
    assert_non_null(sp);
    /* 80 by the container port named http; 81 and 82 by number; 83's name matches no TCP port: left out. */
    assert_int_equal(sp->n_ports, 3);
    assert_int_equal(sp->ports[0].port, 80);
    assert_int_equal(sp->ports[0].target, 8080);
    assert_int_equal(sp->ports[1].target, 9090);
    assert_int_equal(sp->ports[2].target, 82);
    assert_int_equal(service_target_port(svc, w, 80), 8080);
    assert_non_null(workload_service_ports(w, "a", "headless.a.svc.cluster.local"));
    assert_null(workload_service_ports(w, "a", "noselector.a.svc.cluster.local"));
    assert_true(
        find(&fs, "file0.yaml#5: spec.selector: a service without a selector has no endpoints here") >= 0);
    assert_int_equal(wl(s, "a", "other")->n_services, 0);
    snapshot_unref(s);
}

static void test_service_load_balancing(void **state)
{
    (void)state;
    struct findings fs = {0};
    struct snapshot *s = build1(
        &fs, "apiVersion: v1\nkind: Service\nmetadata: {name: local, namespace: a}\n"
             "spec: {clusterIP: 10.96.0.1, internalTrafficPolicy: Local, trafficDistribution: PreferClose, "
             "ports: [{port: 80}]}\n---\n"
             "apiVersion: v1\nkind: Service\nmetadata: {name: close, namespace: a}\n"
             "spec: {type: LoadBalancer, clusterIP: 10.96.0.2, trafficDistribution: PreferClose, ports: "
             "[{port: 80}]}\n"
             "status: {loadBalancer: {ingress: [{ip: 203.0.113.7}, {hostname: lb.example.com}]}}\n---\n"
             "apiVersion: v1\nkind: Service\nmetadata: {name: plain, namespace: a}\n"
             "spec: {clusterIP: 10.96.0.3, ports: [{port: 80}]}\n");
    dump(&fs);
    const struct service *l = snapshot_service_by_host(s, "a/local.a.svc.cluster.local");
    /* internalTrafficPolicy Local wins over trafficDistribution: node only, strict. */
    assert_int_equal(l->lb_mode, LB_MODE_STRICT);
    assert_int_equal(l->n_routing_prefs, 1);
    assert_int_equal(l->routing_prefs[0], LB_SCOPE_NODE);
    const struct service *c = snapshot_service_by_host(s, "a/close.a.svc.cluster.local");
    assert_int_equal(c->lb_mode, LB_MODE_FAILOVER);
    assert_int_equal(c->n_routing_prefs, 4);
    assert_int_equal(c->routing_prefs[0], LB_SCOPE_NETWORK);
    assert_int_equal(c->routing_prefs[3], LB_SCOPE_SUBZONE);
    /* The load balancer's address is a VIP too; an ingress with only a hostname adds none. */
    assert_int_equal(c->n_vips, 2);
    char ip[64];
    assert_string_equal(ip_format(&c->vips[1].ip, ip, sizeof(ip)), "203.0.113.7");
    const struct service *p = snapshot_service_by_host(s, "a/plain.a.svc.cluster.local");
    assert_int_equal(p->lb_mode, LB_MODE_STANDARD);
    assert_int_equal(p->n_routing_prefs, 0);
    snapshot_unref(s);
}

static void test_unsupported_warn(void **state)
{
    (void)state;
    struct findings fs = {0};
    struct snapshot *s = build1(
        &fs, NS("a", "istio.io/use-waypoint: wp")
                 POD("a", "p", "10.0.0.1",
                     "istio.io/use-waypoint: wp") "apiVersion: v1\nkind: Service\nmetadata: {name: ext, "
                                                  "namespace: a}\n"
                                                  "spec: {type: ExternalName, externalName: example.com}\n");
    dump(&fs);
    /* A waypoint that does not exist: istiod's reason, once per object that asks (not for the namespace). */
    assert_int_equal(count(&fs, "WaypointIsNotReady: waypoint \"a/wp\" is not ready: no such Gateway"), 2);
    assert_true(find(&fs, "file0.yaml#3: spec.type: ExternalName is not supported") >= 0);
    /* They still apply. */
    assert_non_null(wl(s, "a", "p"));
    assert_non_null(snapshot_service_by_host(s, "a/ext.a.svc.cluster.local"));
    snapshot_unref(s);
}

static void test_named_port_needs_tcp(void **state)
{
    (void)state;
    struct findings fs = {0};
    /* "dns" is a UDP container port: FindPortName only matches TCP ports. */
    struct snapshot *s =
        build1(&fs, POD("a", "p", "10.0.0.1",
                        "app: web") "apiVersion: v1\nkind: Service\nmetadata: {name: dns, namespace: a}\n"
                                    "spec: {selector: {app: web}, ports: [{port: 53, targetPort: dns}]}\n");
    const struct wl_service_ports *sp =
        workload_service_ports(wl(s, "a", "p"), "a", "dns.a.svc.cluster.local");
    assert_non_null(sp);
    assert_int_equal(sp->n_ports, 0);
    snapshot_unref(s);
}

static void test_builder_rejection(void **state)
{
    (void)state;
    struct findings fs = {0};
    /* A service port listed twice is the builder's finding: that service alone is left out. */
    struct snapshot *s = build1(&fs, "apiVersion: v1\nkind: Service\nmetadata: {name: dup, namespace: a}\n"
                                     "spec: {ports: [{port: 80}, {port: 80}]}\n---\n"
                                     "apiVersion: v1\nkind: Service\nmetadata: {name: ok, namespace: a}\n"
                                     "spec: {ports: [{port: 80}]}\n");
    dump(&fs);
    assert_null(snapshot_service_by_host(s, "a/dup.a.svc.cluster.local"));
    assert_non_null(snapshot_service_by_host(s, "a/ok.a.svc.cluster.local"));
    assert_true(find(&fs, "file0.yaml#1: rejected: service a/dup.a.svc.cluster.local: ports") >= 0);
    snapshot_unref(s);
}

/* ---- authorization policies (§ authorization.go) ---- */

#define AP(ns, name, spec)                                                                                   \
    "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: " name ", namespace: " ns \
    "}\nspec:\n" spec "\n---\n"

static const struct policy *pol(const struct snapshot *s, const char *key)
{
    const struct policy *p = snapshot_policy_by_name(s, key);
    if (!p) fail_msg("policy %s missing", key);
    return p;
}

static void test_policy_scope(void **state)
{
    (void)state;
    struct findings fs = {0};
    struct snapshot *s = build1(
        &fs,
        POD("a", "web", "10.0.0.1", "app: web") POD("a", "db", "10.0.0.2",
                                                    "app: db") POD("b", "web2", "10.0.0.3", "app: web")
            AP("a", "sel", "  selector: {matchLabels: {app: web}}\n  action: DENY\n  rules: [{}]")
                AP("a", "nsw", "  rules: [{}]") AP("istio-system", "glob", "  action: DENY\n  rules: [{}]")
                    AP("istio-system", "rootsel", "  selector: {matchLabels: {app: web}}\n  rules: [{}]"));
    dump(&fs);
    const struct policy *p = pol(s, "a/sel");
    assert_int_equal(p->scope, POLICY_SCOPE_WORKLOAD_SELECTOR);
    assert_int_equal(p->action, POLICY_DENY);
    assert_int_equal(p->n_rules, 1);
    assert_int_equal(p->rules[0].n_clauses, 0); /* an empty rule matches everything */
    assert_int_equal(pol(s, "a/nsw")->scope, POLICY_SCOPE_NAMESPACE);
    assert_int_equal(pol(s, "a/nsw")->action, POLICY_ALLOW);
    assert_int_equal(pol(s, "istio-system/glob")->scope, POLICY_SCOPE_GLOBAL);
    assert_int_equal(pol(s, "istio-system/rootsel")->scope, POLICY_SCOPE_WORKLOAD_SELECTOR);
    const struct workload *w = wl(s, "a", "web");
    assert_true(has_policy_ref(w, "a/sel"));
    assert_true(has_policy_ref(w, "istio-system/rootsel"));
    assert_false(has_policy_ref(w, "a/nsw")); /* namespace policies carry their scope instead */
    assert_false(has_policy_ref(wl(s, "a", "db"), "a/sel"));
    /* No PeerAuthentication at all: istiod serves no static STRICT policy. */
    assert_null(snapshot_policy_by_name(s, "istio-system/istio_converted_static_strict"));
    assert_false(has_policy_ref(wl(s, "b", "web2"), "a/sel"));
    assert_true(has_policy_ref(wl(s, "b", "web2"), "istio-system/rootsel"));
    snapshot_unref(s);
}

static void assert_sm(const struct string_match *m, int kind, const char *value)
{
    assert_int_equal(m->kind, kind);
    assert_string_equal(m->value, value);
}

static void test_policy_string_forms(void **state)
{
    (void)state;
    struct findings fs = {0};
    struct snapshot *s =
        build1(&fs, AP("a", "p",
                       "  rules:\n  - from:\n    - source:\n        principals: ['*', '*/sa/x', "
                       "'cluster.local/*', 'cluster.local/ns/a/sa/b']\n        notNamespaces: ['kube-*']"));
    dump(&fs);
    const struct policy *p = pol(s, "a/p");
    assert_int_equal(p->n_rules, 1);
    assert_int_equal(p->rules[0].n_clauses, 1);
    const struct auth_match *m = &p->rules[0].clauses[0].matches[0];
    assert_int_equal(m->n_principals, 4);
    assert_sm(&m->principals[0], SM_PRESENCE, "");
    assert_sm(&m->principals[1], SM_SUFFIX, "/sa/x");
    assert_sm(&m->principals[2], SM_PREFIX, "cluster.local/");
    assert_sm(&m->principals[3], SM_EXACT, "cluster.local/ns/a/sa/b");
    assert_int_equal(m->n_not_namespaces, 1);
    assert_sm(&m->not_namespaces[0], SM_PREFIX, "kube-");
    snapshot_unref(s);
}

static void test_policy_from_to(void **state)
{
    (void)state;
    struct findings fs = {0};
    struct snapshot *s = build1(
        &fs, AP("a", "p",
                "  rules:\n  - to:\n    - operation: {ports: ['80', '443'], notPorts: ['8080']}\n"
                "    - operation: {ports: ['9000', 'x']}\n"
                "    from:\n    - source: {ipBlocks: [10.0.0.0/8, 192.168.1.1], notIpBlocks: ['fd00::/16'], "
                "namespaces: [ns1], serviceAccounts: [ns2/sa2, sa3], notServiceAccounts: [bad], "
                "notPrincipals: [p1], notNamespaces: [n1]}\n    - source: {principals: [p2]}"));
    dump(&fs);
    const struct policy *p = pol(s, "a/p");
    assert_int_equal(p->n_rules, 1);
    const struct auth_rule *r = &p->rules[0];
    /* Clauses in istiod's order: [to matches], [from matches]. */
    assert_int_equal(r->n_clauses, 2);
    const struct auth_clause *to = &r->clauses[0], *from = &r->clauses[1];
    assert_int_equal(to->n_matches, 2);
    assert_int_equal(to->matches[0].n_destination_ports, 2);
    assert_int_equal(to->matches[0].destination_ports[0], 80);
    assert_int_equal(to->matches[0].destination_ports[1], 443);
    assert_int_equal(to->matches[0].n_not_destination_ports, 1);
    assert_int_equal(to->matches[0].not_destination_ports[0], 8080);
    assert_int_equal(to->matches[1].n_destination_ports, 1); /* "x" dropped, with a warning */
    assert_true(find(&fs, "file0.yaml#1: spec.rules[0].to[1].operation.ports: \"x\" is not a port") >= 0);
    assert_int_equal(from->n_matches, 2);
    const struct auth_match *m = &from->matches[0];
    char ip[64];
    assert_int_equal(m->n_source_ips, 2);
    assert_string_equal(ip_format(&m->source_ips[0].ip, ip, sizeof(ip)), "10.0.0.0");
    assert_int_equal(m->source_ips[0].len, 8);
    assert_int_equal(m->source_ips[1].len, 32); /* a bare address is a full-length prefix */
    assert_int_equal(m->n_not_source_ips, 1);
    assert_int_equal(m->not_source_ips[0].len, 16);
    assert_int_equal(m->n_namespaces, 1);
    assert_sm(&m->namespaces[0], SM_EXACT, "ns1");
    assert_int_equal(m->n_service_accounts, 2);
    assert_string_equal(m->service_accounts[0].namespace_, "ns2");
    assert_string_equal(m->service_accounts[0].service_account, "sa2");
    assert_string_equal(m->service_accounts[1].namespace_, "a"); /* bare name: the policy's namespace */
    assert_string_equal(m->service_accounts[1].service_account, "sa3");
    assert_int_equal(m->n_not_service_accounts, 1);
    assert_int_equal(m->n_not_principals, 1);
    assert_int_equal(m->n_not_namespaces, 1);
    assert_int_equal(from->matches[1].n_principals, 1);
    snapshot_unref(s);
}

static void test_policy_when(void **state)
{
    (void)state;
    struct findings fs = {0};
    struct snapshot *s = build1(
        &fs,
        AP("a", "p",
           "  action: DENY\n  rules:\n  - when:\n    - {key: source.ip, values: [10.0.0.0/24]}\n"
           "    - {key: source.namespace, notValues: [ns1]}\n    - {key: source.principal, values: ['*']}\n"
           "    - {key: destination.ip, values: [10.1.0.1]}\n    - {key: destination.port, notValues: "
           "['22']}"));
    dump(&fs);
    const struct policy *p = pol(s, "a/p");
    assert_int_equal(p->n_rules, 1);
    const struct auth_rule *r = &p->rules[0];
    /* One clause per condition, each with one Match. */
    assert_int_equal(r->n_clauses, 5);
    for (size_t i = 0; i < 5; i++)
        assert_int_equal(r->clauses[i].n_matches, 1);
    assert_int_equal(r->clauses[0].matches[0].n_source_ips, 1);
    assert_int_equal(r->clauses[0].matches[0].source_ips[0].len, 24);
    assert_int_equal(r->clauses[1].matches[0].n_not_namespaces, 1);
    assert_int_equal(r->clauses[1].matches[0].n_namespaces, 0);
    assert_sm(&r->clauses[2].matches[0].principals[0], SM_PRESENCE, "");
    assert_int_equal(r->clauses[3].matches[0].n_destination_ips, 1);
    assert_int_equal(r->clauses[4].matches[0].n_not_destination_ports, 1);
    assert_int_equal(r->clauses[4].matches[0].not_destination_ports[0], 22);
    assert_int_equal(find(&fs, "HTTP attributes"), -1);
    snapshot_unref(s);
}

static void test_policy_l7_allow(void **state)
{
    (void)state;
    struct findings fs = {0};
    struct snapshot *s = build1(&fs, AP("a", "p",
                                        "  rules:\n  - to: [{operation: {methods: [GET], ports: ['80']}}]\n"
                                        "  - from: [{source: {requestPrincipals: ['*']}}]\n"
                                        "  - when: [{key: 'request.headers[x]', values: [y]}]\n"
                                        "  - from: [{source: {namespaces: [ok]}}]"));
    dump(&fs);
    const struct policy *p = pol(s, "a/p");
    /* The three rules with HTTP attributes are left out; the L4 one stays. */
    assert_int_equal(p->n_rules, 1);
    assert_int_equal(p->rules[0].n_clauses, 1);
    assert_sm(&p->rules[0].clauses[0].matches[0].namespaces[0], SM_EXACT, "ok");
    int i =
        find(&fs, "file0.yaml#1: spec.rules: ztunnel does not support HTTP attributes (found: methods, "
                  "request.headers[x], requestPrincipals). In ambient mode you must use a waypoint proxy to "
                  "enforce HTTP rules. Within an ALLOW policy, rules matching HTTP attributes are omitted.");
    assert_true(i >= 0);
    assert_int_equal(fs.level[i], MANIFEST_WARN);

    /* An ALLOW whose only rule is L7 keeps no rule: it allows nothing. */
    struct findings fs2 = {0};
    struct snapshot *s2 = build1(&fs2, AP("a", "only", "  rules: [{to: [{operation: {paths: [/x]}}]}]"));
    assert_int_equal(pol(s2, "a/only")->n_rules, 0);
    snapshot_unref(s2);
    snapshot_unref(s);
}

static void test_policy_l7_deny(void **state)
{
    (void)state;
    struct findings fs = {0};
    struct snapshot *s =
        build1(&fs, AP("a", "p",
                       "  action: DENY\n  rules:\n  - to: [{operation: {methods: [POST], ports: ['80']}}]\n"
                       "    from: [{source: {namespaces: [evil], remoteIpBlocks: [1.2.3.4]}}]\n"
                       "    when: [{key: 'request.auth.claims[iss]', values: [x]}]"));
    dump(&fs);
    const struct policy *p = pol(s, "a/p");
    /* Kept with only its L4 parts: ports and namespaces; the L7 condition's Match is empty. */
    assert_int_equal(p->n_rules, 1);
    const struct auth_rule *r = &p->rules[0];
    assert_int_equal(r->n_clauses, 3);
    assert_int_equal(r->clauses[0].matches[0].n_destination_ports, 1);
    assert_int_equal(r->clauses[1].matches[0].n_namespaces, 1);
    assert_int_equal(r->clauses[1].matches[0].n_source_ips, 0);
    const struct auth_match *e = &r->clauses[2].matches[0];
    assert_int_equal(e->n_namespaces + e->n_principals + e->n_source_ips + e->n_destination_ips +
                         e->n_destination_ports + e->n_not_destination_ports,
                     0);
    assert_true(
        find(&fs, "(found: methods, remoteIpBlocks, request.auth.claims[iss]). In ambient mode you must "
                  "use a waypoint proxy to enforce HTTP rules. DENY policy with HTTP attributes is enforced "
                  "without the HTTP rules.") >= 0);
    snapshot_unref(s);
}

static void test_policy_skipped(void **state)
{
    (void)state;
    struct findings fs = {0};
    struct snapshot *s = build1(
        &fs, POD("a", "web", "10.0.0.1", "app: web")
                 AP("a", "wp",
                    "  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]\n"
                    "  rules: [{}]") AP("a", "wp1", "  targetRef: {kind: Service, name: web}\n  rules: [{}]")
                     AP("a", "custom",
                        "  selector: {matchLabels: {app: web}}\n  action: CUSTOM\n  provider: {name: ext}\n"
                        "  rules: [{}]") AP("a", "audit", "  action: AUDIT\n  rules: [{}]")
                         AP("a", "future", "  rules: [{}]\n  newField: 1"));
    dump(&fs);
    assert_null(snapshot_policy_by_name(s, "a/wp"));
    assert_null(snapshot_policy_by_name(s, "a/wp1"));
    assert_null(snapshot_policy_by_name(s, "a/custom"));
    assert_null(snapshot_policy_by_name(s, "a/audit"));
    assert_false(has_policy_ref(wl(s, "a", "web"), "a/custom"));
    assert_true(find(&fs, "spec.action: ztunnel does not support the CUSTOM action") >= 0);
    assert_true(find(&fs, "spec.action: ztunnel does not support the AUDIT action") >= 0);
    assert_true(find(&fs, "a policy for a waypoint") >= 0);
    /* An unknown field is a warning; the policy still applies. */
    assert_non_null(snapshot_policy_by_name(s, "a/future"));
    assert_true(find(&fs, "file0.yaml#6: spec.newField: field not read by zmeshd") >= 0);
    /* A misspelt spec is said out loud: the policy left is an ALLOW without rules (allow nothing). */
    struct findings fs2 = {0};
    struct snapshot *s2 = build1(&fs2, "apiVersion: security.istio.io/v1beta1\nkind: AuthorizationPolicy\n"
                                       "metadata: {name: typo, namespace: a}\nspek: {action: DENY}\n");
    assert_true(find(&fs2, "file0.yaml#1: spek: field not read by zmeshd") >= 0);
    assert_int_equal(pol(s2, "a/typo")->action, POLICY_ALLOW);
    assert_int_equal(pol(s2, "a/typo")->n_rules, 0);
    snapshot_unref(s2);
    snapshot_unref(s);
}

static void test_policy_dry_run(void **state)
{
    (void)state;
    struct findings fs = {0};
    /* istiod honours istio.io/dry-run only behind EnableWdsDryRunAuthzPol (off): the policy is enforced. */
    struct snapshot *s =
        build1(&fs, "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
                    "metadata:\n  name: p\n  namespace: a\n  annotations: {istio.io/dry-run: 'true'}\n"
                    "spec: {action: DENY, rules: [{}]}\n");
    dump(&fs);
    assert_false(pol(s, "a/p")->dry_run);
    assert_int_equal(pol(s, "a/p")->action, POLICY_DENY);
    assert_true(find(&fs, "file0.yaml#1: metadata.annotations: istio.io/dry-run is not honoured") >= 0);
    snapshot_unref(s);
}

/* ---- PeerAuthentication ---- */

#define PA(ns, name, spec)                                                                                   \
    "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {name: " name                \
    ", namespace: " ns "}\nspec:\n" spec "\n---\n"

static void assert_not_principals_presence(const struct auth_match *m)
{
    assert_int_equal(m->n_not_principals, 1);
    assert_sm(&m->not_principals[0], SM_PRESENCE, "");
    assert_int_equal(m->n_destination_ports + m->n_not_destination_ports + m->n_principals, 0);
}

static void test_peer_strict(void **state)
{
    (void)state;
    struct findings fs = {0};
    struct snapshot *s = build1(&fs, POD("a", "web", "10.0.0.1", "") POD("b", "other", "10.0.0.2", "")
                                         PA("a", "default", "  mtls: {mode: STRICT}"));
    dump(&fs);
    const struct policy *p = pol(s, "istio-system/istio_converted_static_strict");
    assert_int_equal(p->scope, POLICY_SCOPE_WORKLOAD_SELECTOR);
    assert_int_equal(p->action, POLICY_DENY);
    assert_int_equal(p->n_rules, 1);
    assert_int_equal(p->rules[0].n_clauses, 1);
    assert_int_equal(p->rules[0].clauses[0].n_matches, 1);
    assert_not_principals_presence(&p->rules[0].clauses[0].matches[0]);
    assert_true(has_policy_ref(wl(s, "a", "web"), "istio-system/istio_converted_static_strict"));
    assert_false(has_policy_ref(wl(s, "b", "other"), "istio-system/istio_converted_static_strict"));
    /* A namespace-wide policy is not converted itself. */
    assert_null(snapshot_policy_by_name(s, "a/converted_peer_authentication_default"));
    snapshot_unref(s);

    /* Mesh-wide STRICT in the root namespace, overridden by a namespace PERMISSIVE. */
    struct findings fs2 = {0};
    s = build1(&fs2, POD("a", "web", "10.0.0.1", "") POD("b", "other", "10.0.0.2", "")
                         PA("istio-system", "mesh", "  mtls: {mode: STRICT}")
                             PA("b", "perm", "  mtls: {mode: PERMISSIVE}"));
    assert_true(has_policy_ref(wl(s, "a", "web"), "istio-system/istio_converted_static_strict"));
    assert_false(has_policy_ref(wl(s, "b", "other"), "istio-system/istio_converted_static_strict"));
    snapshot_unref(s);
}

static void test_peer_port_permissive(void **state)
{
    (void)state;
    struct findings fs = {0};
    /* Workload STRICT with port 9090 PERMISSIVE: DENY [notPrincipals: presence] AND [notDestinationPorts:
     * 9090] (istio/istio architecture/ambient/peer-authentication.md). */
    struct snapshot *s =
        build1(&fs, POD("a", "web", "10.0.0.1", "app: web") POD("a", "db", "10.0.0.2", "app: db")
                        PA("a", "wl",
                           "  selector: {matchLabels: {app: web}}\n"
                           "  mtls: {mode: STRICT}\n"
                           "  portLevelMtls: {9090: {mode: PERMISSIVE}}"));
    dump(&fs);
    const struct policy *p = pol(s, "a/converted_peer_authentication_wl");
    assert_int_equal(p->scope, POLICY_SCOPE_WORKLOAD_SELECTOR);
    assert_int_equal(p->action, POLICY_DENY);
    assert_int_equal(p->n_rules, 1);
    assert_int_equal(p->rules[0].n_clauses, 2);
    assert_not_principals_presence(&p->rules[0].clauses[0].matches[0]);
    const struct auth_match *m = &p->rules[0].clauses[1].matches[0];
    assert_int_equal(m->n_not_destination_ports, 1);
    assert_int_equal(m->not_destination_ports[0], 9090);
    assert_int_equal(m->n_not_principals, 0);
    const struct workload *w = wl(s, "a", "web");
    assert_true(has_policy_ref(w, "a/converted_peer_authentication_wl"));
    /* The converted form includes the STRICT default, so the static policy is not referenced. */
    assert_false(has_policy_ref(w, "istio-system/istio_converted_static_strict"));
    assert_int_equal(wl(s, "a", "db")->n_authorization_policies, 0);
    snapshot_unref(s);
}

static void test_peer_port_strict(void **state)
{
    (void)state;
    struct findings fs = {0};
    /* Workload PERMISSIVE with ports 8080 and 8443 STRICT: one rule per port, each
     * [notPrincipals: presence, destinationPorts: port]. */
    struct snapshot *s = build1(&fs, POD("a", "web", "10.0.0.1", "app: web")
                                         PA("a", "wl",
                                            "  selector: {matchLabels: {app: web}}\n"
                                            "  mtls: {mode: PERMISSIVE}\n"
                                            "  portLevelMtls: {8443: {mode: STRICT}, 8080: {mode: STRICT}}"));
    dump(&fs);
    const struct policy *p = pol(s, "a/converted_peer_authentication_wl");
    assert_int_equal(p->n_rules, 2);
    for (size_t i = 0; i < 2; i++) {
        assert_int_equal(p->rules[i].n_clauses, 1);
        const struct auth_match *m = &p->rules[i].clauses[0].matches[0];
        assert_int_equal(m->n_not_principals, 1);
        assert_int_equal(m->n_destination_ports, 1);
        assert_int_equal(m->destination_ports[0], i ? 8443 : 8080); /* ports in numeric order */
    }
    const struct workload *w = wl(s, "a", "web");
    assert_true(has_policy_ref(w, "a/converted_peer_authentication_wl"));
    assert_false(has_policy_ref(w, "istio-system/istio_converted_static_strict"));
    snapshot_unref(s);
}

static void test_peer_inherited_merge(void **state)
{
    (void)state;
    struct findings fs = {0};
    /* Namespace STRICT, workload UNSET with 9090 PERMISSIVE: the namespace's strictness is merged in after
     * the port exception: [notDestinationPorts: 9090] AND [notPrincipals: presence]. */
    struct snapshot *s =
        build1(&fs, POD("a", "web", "10.0.0.1", "app: web") PA("a", "ns", "  mtls: {mode: STRICT}")
                        PA("a", "wl",
                           "  selector: {matchLabels: {app: web}}\n"
                           "  portLevelMtls: {9090: {mode: PERMISSIVE}}"));
    dump(&fs);
    const struct policy *p = pol(s, "a/converted_peer_authentication_wl");
    assert_int_equal(p->n_rules, 1);
    assert_int_equal(p->rules[0].n_clauses, 2);
    assert_int_equal(p->rules[0].clauses[0].matches[0].not_destination_ports[0], 9090);
    assert_not_principals_presence(&p->rules[0].clauses[1].matches[0]);
    const struct workload *w = wl(s, "a", "web");
    assert_true(has_policy_ref(w, "a/converted_peer_authentication_wl"));
    assert_false(has_policy_ref(w, "istio-system/istio_converted_static_strict"));

    /* Workload STRICT with only STRICT ports: no converted policy, the static one is referenced. */
    struct findings fs2 = {0};
    struct snapshot *s2 =
        build1(&fs2, POD("a", "web", "10.0.0.1", "app: web") PA("a", "wl",
                                                                "  selector: {matchLabels: {app: web}}\n"
                                                                "  mtls: {mode: STRICT}\n"
                                                                "  portLevelMtls: {9090: {mode: STRICT}}"));
    assert_null(snapshot_policy_by_name(s2, "a/converted_peer_authentication_wl"));
    assert_true(has_policy_ref(wl(s2, "a", "web"), "istio-system/istio_converted_static_strict"));
    snapshot_unref(s2);
    snapshot_unref(s);
}

static void test_peer_workload_override(void **state)
{
    (void)state;
    struct findings fs = {0};
    /* Mesh STRICT; a workload policy DISABLE (no ports) takes that workload out of STRICT, and a workload
     * STRICT puts another in under a PERMISSIVE namespace. */
    struct snapshot *s = build1(
        &fs, POD("a", "web", "10.0.0.1", "app: web") POD("a", "db", "10.0.0.2", "app: db")
                 POD("b", "x", "10.0.0.3", "app: x") PA("istio-system", "mesh", "  mtls: {mode: STRICT}")
                     PA("a", "off",
                        "  selector: {matchLabels: {app: web}}\n"
                        "  mtls: {mode: DISABLE}") PA("b", "ns", "  mtls: {mode: PERMISSIVE}")
                         PA("b", "on",
                            "  selector: {matchLabels: {app: x}}\n"
                            "  mtls: {mode: STRICT}"));
    dump(&fs);
    const char *strict = "istio-system/istio_converted_static_strict";
    assert_false(has_policy_ref(wl(s, "a", "web"), strict));
    assert_true(has_policy_ref(wl(s, "a", "db"), strict));
    assert_true(has_policy_ref(wl(s, "b", "x"), strict));
    assert_null(snapshot_policy_by_name(s, "a/converted_peer_authentication_off"));
    snapshot_unref(s);
}

static void test_peer_bad_mode(void **state)
{
    (void)state;
    struct findings fs = {0};
    struct snapshot *s = build1(&fs, PA("a", "x", "  mtls: {mode: STRIC}") PA(
                                         "a", "y", "  mtls: {mode: STRICT}") POD("a", "web", "10.0.0.1", ""));
    dump(&fs);
    assert_true(find(&fs, "file0.yaml#1: spec.mtls.mode: expected UNSET, DISABLE, PERMISSIVE or STRICT") >=
                0);
    assert_true(has_policy_ref(wl(s, "a", "web"), "istio-system/istio_converted_static_strict"));
    snapshot_unref(s);
}

/* Port.app_protocol from a Service port: appProtocol first, then the name's prefix (Istio's ConvertProtocol). */
static void test_port_app_protocol(void **state)
{
    (void)state;
    static const struct {
        const char *name, *protocol, *app;
        uint8_t want;
    } cases[] = {
        {"http", "TCP", "", PORT_PROTO_HTTP11},          {"http-web", "TCP", "", PORT_PROTO_HTTP11},
        {"HTTP2", "", "", PORT_PROTO_HTTP2},             {"grpc-api", "TCP", "", PORT_PROTO_GRPC},
        {"tcp-db", "TCP", "", PORT_PROTO_TCP},           {"redis", "TCP", "", PORT_PROTO_TCP},
        {"https", "TCP", "", PORT_PROTO_TLS},            {"web", "TCP", "", PORT_PROTO_UNKNOWN},
        {"httpx", "TCP", "", PORT_PROTO_UNKNOWN},        {"", "TCP", "", PORT_PROTO_UNKNOWN},
        {"tcp", "TCP", "http", PORT_PROTO_HTTP11},       {"web", "TCP", "kubernetes.io/h2c", PORT_PROTO_HTTP2},
        {"web", "TCP", "kubernetes.io/ws", PORT_PROTO_HTTP11}, {"http", "TCP", "grpc", PORT_PROTO_GRPC},
        {"http", "TCP", "example.com/custom", PORT_PROTO_UNKNOWN}, {"http", "UDP", "", PORT_PROTO_UNKNOWN},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct k8s_service_port p = {.name = cases[i].name, .protocol = cases[i].protocol, .app_protocol = cases[i].app};
        if (k8s_port_app_protocol(&p) != cases[i].want) fail_msg("case %zu (%s %s %s)", i, cases[i].name, cases[i].protocol, cases[i].app);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_multi_document),
        cmocka_unit_test(test_list),
        cmocka_unit_test(test_broken_document),
        cmocka_unit_test(test_field_errors),
        cmocka_unit_test(test_syntax_error),
        cmocka_unit_test(test_directory),
        cmocka_unit_test(test_enrolment),
        cmocka_unit_test(test_workload_fields),
        cmocka_unit_test(test_workload_name),
        cmocka_unit_test(test_health),
        cmocka_unit_test(test_services),
        cmocka_unit_test(test_service_load_balancing),
        cmocka_unit_test(test_unsupported_warn),
        cmocka_unit_test(test_named_port_needs_tcp),
        cmocka_unit_test(test_builder_rejection),
        cmocka_unit_test(test_policy_scope),
        cmocka_unit_test(test_policy_string_forms),
        cmocka_unit_test(test_policy_from_to),
        cmocka_unit_test(test_policy_when),
        cmocka_unit_test(test_policy_l7_allow),
        cmocka_unit_test(test_policy_l7_deny),
        cmocka_unit_test(test_policy_skipped),
        cmocka_unit_test(test_policy_dry_run),
        cmocka_unit_test(test_peer_strict),
        cmocka_unit_test(test_peer_port_permissive),
        cmocka_unit_test(test_peer_port_strict),
        cmocka_unit_test(test_peer_inherited_merge),
        cmocka_unit_test(test_peer_workload_override),
        cmocka_unit_test(test_peer_bad_mode),
        cmocka_unit_test(test_port_app_protocol),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
