/* zmeshd's PodEnrolment resources (src/zmeshd/enrolment.c, the rule k8s_pod_enrolment in k8s.c): manifests
 * in, serialized zmesh.v1.PodEnrolment out, decoded back with protoc-c and checked against Istio's CNI rule
 * (istio/istio cni/pkg/util/enablement_selector.go and the default enablementSelectors of
 * manifests/charts/istio-cni/values.yaml); then the table zmeshd serves them from, to check that a namespace
 * label flipped changes exactly the pods whose enrolment changed and a reload that changes nothing pushes
 * nothing. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "mesh/model.h"
#include "xds/pb.h"
#include "zmesh/enrolment.pb-c.h"
#include "zmeshd/ads.h"
#include "zmeshd/enrolment.h"
#include "zmeshd/k8s.h"
#include "zmeshd/manifest.h"

#define NS(name, labels)                                                                                     \
    "apiVersion: v1\nkind: Namespace\nmetadata: {name: " name ", labels: {" labels "}}\n---\n"
#define POD(ns, name, meta, spec, status)                                                                    \
    "apiVersion: v1\nkind: Pod\nmetadata: {name: " name ", namespace: " ns meta                              \
    "}\nspec: {containers: [{name: "                                                                         \
    "c, image: i}]" spec "}\nstatus: {" status "}\n---\n"

static const char *const PODS =
    POD("demo", "web-1", ", uid: 0f9c-1, labels: {app: web}", ", nodeName: node1, serviceAccountName: web",
        "phase: Running, podIP: 10.0.0.5")
        POD("demo", "web-2", "", ", nodeName: node1", "phase: Pending") /* no IP yet */
    POD("demo", "opt", ", labels: {istio.io/dataplane-mode: none}", ", nodeName: node1",
        "phase: Running, podIP: 10.0.0.6")
        POD("demo", "done", "", ", nodeName: node1", "phase: Succeeded, podIP: 10.0.0.7") /* terminated */
    POD("demo", "failed", "", ", nodeName: node1", "phase: Failed")                       /* terminated */
    POD("demo", "hostnet", "", ", nodeName: node1, hostNetwork: true", "phase: Running, podIP: 192.168.0.1")
        POD("demo", "sidecar", ", annotations: {sidecar.istio.io/status: '{}'}", ", nodeName: node2",
            "phase: Running, podIP: 10.0.0.8")
            POD("plain", "solo", ", labels: {istio.io/dataplane-mode: ambient}", ", nodeName: node2",
                "phase: Running") POD("plain", "other", "", "", "phase: Pending") /* unscheduled */
    POD("istio-system", "ztunnel-x", ", labels: {app: ztunnel}", ", nodeName: node1", "phase: Running")
        POD("nons", "lonely", "", ", nodeName: node1", "phase: Running"); /* no Namespace */

/* Namespaces before and after the flip: demo loses the label, plain and istio-system gain it. */
static const char *const NS_BEFORE =
    NS("demo", "istio.io/dataplane-mode: ambient") NS("plain", "team: a") NS("istio-system", "");
static const char *const NS_AFTER = NS("demo", "team: b") NS("plain", "istio.io/dataplane-mode: ambient")
    NS("istio-system", "istio.io/dataplane-mode: ambient");

struct got {
    struct zmeshd_enrolment *v;
    size_t n;
    Zmesh__V1__PodEnrolment *m[32];
};

static void load(struct got *g, const char *ns_docs)
{
    struct manifest_store *st = NULL;
    assert_int_equal(manifest_store_new(&st), 0);
    assert_int_equal(manifest_load_buf(st, "ns.yaml", ns_docs, strlen(ns_docs), NULL, NULL), 0);
    assert_int_equal(manifest_load_buf(st, "pods.yaml", PODS, strlen(PODS), NULL, NULL), 0);
    assert_int_equal(zmeshd_enrolments(st, &(struct k8s_options){0}, &g->v, &g->n), 0);
    manifest_store_free(st); /* the results are the caller's own */
    assert_true(g->n <= 32);
    for (size_t i = 0; i < g->n; i++) {
        ProtobufCMessage *m = NULL;
        assert_int_equal(
            pb_message_unpack(&zmesh__v1__pod_enrolment__descriptor, g->v[i].bytes, g->v[i].len, &m), 0);
        g->m[i] = (Zmesh__V1__PodEnrolment *)m;
    }
}

static void got_free(struct got *g)
{
    for (size_t i = 0; i < g->n; i++)
        protobuf_c_message_free_unpacked(&g->m[i]->base, NULL);
    zmeshd_enrolments_free(g->v, g->n);
}

static const Zmesh__V1__PodEnrolment *pod(const struct got *g, const char *name)
{
    for (size_t i = 0; i < g->n; i++)
        if (!strcmp(g->v[i].name, name)) return g->m[i];
    return NULL;
}

static void expect(const struct got *g, const char *name, bool ambient, const char *reason)
{
    const Zmesh__V1__PodEnrolment *m = pod(g, name);
    if (!m) fail_msg("%s: no PodEnrolment", name);
    if (m->ambient != ambient || strcmp(m->reason, reason))
        fail_msg("%s: ambient %d (%s), expected %d (%s)", name, m->ambient, m->reason, ambient, reason);
}

static void test_rule(void **state)
{
    (void)state;
    struct got g = {0};
    load(&g, NS_BEFORE);
    /* Every pod but the two terminated ones, in load order, named <ns>/<name>. */
    assert_int_equal(g.n, 9);
    assert_string_equal(g.v[0].name, "demo/web-1");
    assert_null(pod(&g, "demo/done"));
    assert_null(pod(&g, "demo/failed"));
    expect(&g, "demo/web-1", true, "namespace-label");
    expect(&g, "demo/web-2", true, "namespace-label"); /* no IP yet: present and enrolled */
    expect(&g, "demo/opt", false, "pod-opt-out");
    expect(&g, "demo/hostnet", false, "host-network"); /* the namespace's label cannot enrol it */
    expect(&g, "demo/sidecar", false, "sidecar");
    expect(&g, "plain/solo", true, "pod-label"); /* the pod's label alone enrols, as Istio's first selector */
    expect(&g, "plain/other", false, "not-labelled");
    expect(&g, "istio-system/ztunnel-x", false, "ztunnel");
    expect(&g, "nons/lonely", false, "not-labelled");
    /* The other fields, with the API server's default service account. */
    const Zmesh__V1__PodEnrolment *w = pod(&g, "demo/web-1");
    assert_string_equal(w->uid, "0f9c-1");
    assert_string_equal(w->name, "web-1");
    assert_string_equal(w->namespace_, "demo");
    assert_string_equal(w->service_account, "web");
    assert_string_equal(w->node_name, "node1");
    assert_string_equal(pod(&g, "demo/web-2")->service_account, "default");
    assert_string_equal(pod(&g, "demo/web-2")->uid, "");
    assert_string_equal(pod(&g, "plain/other")->node_name, "");
    got_free(&g);

    load(&g, NS_AFTER);
    expect(&g, "demo/web-1", false, "not-labelled");
    expect(&g, "demo/web-2", false, "not-labelled");
    expect(&g, "demo/opt", false, "not-labelled"); /* "none" opts out of nothing now */
    expect(&g, "plain/other", true, "namespace-label");
    expect(&g, "plain/solo", true, "pod-label");
    expect(&g, "istio-system/ztunnel-x", false, "ztunnel"); /* never ztunnel's own pods */
    expect(&g, "demo/hostnet", false, "host-network");
    got_free(&g);
}

/* The same rule decides the workloads' tunnel protocol, which istiod takes from the CNI agent's annotation.
 */
static void test_workload_protocol_follows_rule(void **state)
{
    (void)state;
    struct manifest_store *st = NULL;
    struct snapshot *s = NULL;
    assert_int_equal(manifest_store_new(&st), 0);
    assert_int_equal(manifest_load_buf(st, "ns.yaml", NS_BEFORE, strlen(NS_BEFORE), NULL, NULL), 0);
    assert_int_equal(manifest_load_buf(st, "pods.yaml", PODS, strlen(PODS), NULL, NULL), 0);
    assert_int_equal(k8s_build_snapshot(st, &(struct k8s_options){0}, &s, NULL, NULL), 0);
    size_t seen = 0;
    for (size_t i = 0; i < snapshot_n_workloads(s); i++) {
        const struct workload *w = snapshot_workload_at(s, i);
        if (!strcmp(w->name, "web-1")) assert_int_equal(w->protocol, WL_PROTO_HBONE), seen++;
        if (!strcmp(w->name, "opt")) assert_int_equal(w->protocol, WL_PROTO_TCP), seen++;
        if (!strcmp(w->name, "hostnet")) assert_int_equal(w->protocol, WL_PROTO_TCP), seen++;
        if (!strcmp(w->name, "sidecar")) assert_int_equal(w->protocol, WL_PROTO_TCP), seen++;
    }
    assert_int_equal(seen, 4);
    snapshot_unref(s);
    manifest_store_free(st);
}

/* What zmeshd's xds.c does with them: the table is replaced by each reload's set and compares bytes. */
static void replace(struct ads_server *srv, const char *ns_docs, struct ads_diff *d)
{
    struct got g = {0};
    struct ads_resource_in in[32];
    char err[256];
    load(&g, ns_docs);
    for (size_t i = 0; i < g.n; i++)
        in[i] = (struct ads_resource_in){.name = g.v[i].name, .value = g.v[i].bytes, .len = g.v[i].len};
    assert_int_equal(ads_table_replace(srv, PB_TYPE_URL_POD_ENROLMENT, in, g.n, d, err, sizeof(err)), 0);
    got_free(&g);
}

static void test_table_changes(void **state)
{
    (void)state;
    const char *types[] = {PB_TYPE_URL_ADDRESS, PB_TYPE_URL_AUTHORIZATION, PB_TYPE_URL_POD_ENROLMENT};
    struct ads_server *srv = NULL;
    char err[256];
    struct ads_diff d;
    assert_int_equal(
        ads_server_new(&(struct ads_server_opts){.type_urls = types, .n_types = 3}, &srv, err, sizeof(err)),
        0);
    replace(srv, NS_BEFORE, &d);
    assert_int_equal(d.added, 9);
    replace(srv, NS_BEFORE, &d); /* a reload that changes nothing */
    assert_int_equal(d.added + d.changed + d.removed, 0);
    replace(srv, NS_AFTER, &d);
    /* demo: web-1, web-2 and opt (its reason); plain/other. Unchanged: hostnet, sidecar, ztunnel-x (not
     * enrolled either way, same reason), plain/solo (its own label), nons/lonely. */
    assert_int_equal(d.changed, 4);
    assert_int_equal(d.added + d.removed, 0);
    assert_int_equal(d.unchanged, 5);
    ads_server_free(srv);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rule),
        cmocka_unit_test(test_workload_protocol_follows_rule),
        cmocka_unit_test(test_table_changes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
