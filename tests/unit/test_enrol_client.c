/* The node agent's PodEnrolment client (src/xds/enrol_client.c) against zmeshd's own delta ADS server, in one
 * process and on one loop: zmeshd's daemon, its gRPC port (real TLS on loopback, the root of its state
 * directory, a token minted as `zmeshd token` mints one) and the client. Checked: the first response gives
 * the node's pods (enrolled or not, with or without an IP, not the terminated one, not another node's), once
 * synced; zmeshd sees an istio-cni proxy subscribed (wildcard) to PodEnrolment only, SYNCED in /debug/syncz;
 * a namespace label flipped in the manifest file reaches on_update through zmeshd's directory watch, as one
 * push of exactly the pods whose enrolment changed; a client with a bad token is refused and never updated.
 * Then against a peer on zmeshd's TLS gRPC port that sends hand-made responses: resources that do not decode,
 * are misnamed, of another type or listed twice are NACKed by name while the good one is kept; after the
 * server resets the stream the client reconnects reporting only what it accepted in
 * initial_resource_versions, and a removal reaches on_update. The loop runs until the expected state arrives;
 * a deadline only turns a hang into a failure. */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "envoy/service/discovery/v3/discovery.pb-c.h"
#include "xds/enrol_client.h"
#include "zmesh/enrolment.pb-c.h"
#include "xds/pb.h"
#include "zmeshd/daemon.h"
#include "zmeshd/debug.h"
#include "zmeshd/server.h"
#include "zmeshd/xds.h"

#define DEADLINE_MS 30000 /* a hang becomes a failure; nothing is timed */

static char tmp[64], manifests[128], state_dir[128], root[160], token_file[160], ns_file[200];

#define NS_DOC(name, labels)                                                                                 \
    "apiVersion: v1\nkind: Namespace\nmetadata: {name: " name ", labels: {" labels "}}\n---\n"
#define POD_DOC(ns, name, labels, node, status)                                                              \
    "apiVersion: v1\nkind: Pod\nmetadata: {name: " name ", namespace: " ns ", uid: uid-" name                \
    ", labels: {" labels "}}\nspec: {nodeName: " node ", serviceAccountName: sa-" name "}\nstatus: {" status \
    "}\n---\n"

static const char *const PODS =
    POD_DOC("demo", "web-1", "app: web", "node1",
            "phase: Running, podIP: 10.0.0.5") POD_DOC("demo", "web-2", "app: web", "node1", "phase: Pending")
        POD_DOC("demo", "opt", "istio.io/dataplane-mode: none", "node1", "phase: Running, podIP: 10.0.0.6")
            POD_DOC("demo", "done", "", "node1", "phase: Succeeded")
                POD_DOC("demo", "far", "", "node2", "phase: Running, podIP: 10.0.1.5")
                    POD_DOC("plain", "solo", "istio.io/dataplane-mode: ambient", "node1",
                            "phase: Running, podIP: 10.0.0.9")
                        POD_DOC("plain", "other", "", "node1", "phase: Running, podIP: 10.0.0.10");
static const char *const NS_BEFORE = NS_DOC("demo", "istio.io/dataplane-mode: ambient") NS_DOC("plain", "");
static const char *const NS_AFTER = NS_DOC("demo", "") NS_DOC("plain", "istio.io/dataplane-mode: ambient");

static struct {
    struct loop *l;
    struct zmeshd *d;
    struct zmeshd_server *s;
    struct zmeshd_xds *x;
} S;

/* What the owner was told, as "ns/name ambient reason uid sa node" lines. */
struct seen {
    char pods[16][160];
    size_t n, updates, synced;
};

static void on_update(void *ud, const struct enrol_pod *p, size_t n)
{
    struct seen *s = ud;
    assert_true(n <= 16);
    for (size_t i = 0; i < n; i++)
        snprintf(s->pods[i], sizeof(s->pods[i]), "%s/%s %s %s %s %s %s", p[i].namespace_, p[i].name,
                 p[i].ambient ? "ambient" : "-", p[i].reason, p[i].uid, p[i].service_account, p[i].node);
    s->n = n;
    s->updates++;
}

static void on_synced(void *ud)
{
    struct seen *s = ud;
    assert_true(s->updates > 0); /* after the first response's on_update */
    s->synced++;
}

static const struct enrol_client_ops ops = {.on_update = on_update, .on_synced = on_synced};

static void write_file(const char *path, const char *text)
{
    char t[256];
    snprintf(t, sizeof(t), "%s.tmp", path);
    FILE *f = fopen(t, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    assert_int_equal(rename(t, path), 0); /* as kubectl-like tools replace a file */
}

static struct {
    struct zmeshd_server *s; /* a second gRPC port of the daemon, with the peer's ADS method */
    unsigned streams, acks;
    char nack[1024];
    char initial[256]; /* the second stream's initial_resource_versions, "k=v," */
    bool ended;
} P;

struct waiter {
    struct timer poll, deadline;
    bool (*done)(void *);
    void *arg;
    bool timed_out;
};

static void poll_cb(struct timer *t)
{
    struct waiter *w = container_of(t, struct waiter, poll);
    if (w->done(w->arg)) {
        loop_stop(S.l);
        return;
    }
    timer_start(S.l, &w->poll, 5);
}

static void deadline_cb(struct timer *t)
{
    struct waiter *w = container_of(t, struct waiter, deadline);
    w->timed_out = true;
    loop_stop(S.l);
}

/* Runs the loop until done(arg); fails after DEADLINE_MS. */
static void run_until(bool (*done)(void *), void *arg, const char *what)
{
    struct waiter w = {.poll.cb = poll_cb, .deadline.cb = deadline_cb, .done = done, .arg = arg};
    timer_start(S.l, &w.poll, 0);
    timer_start(S.l, &w.deadline, DEADLINE_MS);
    loop_run(S.l);
    timer_stop(S.l, &w.poll);
    timer_stop(S.l, &w.deadline);
    if (w.timed_out)
        fail_msg("gave up waiting for %s (peer: %u streams, nack \"%s\")", what, P.streams, P.nack);
}

static int setup(void **state)
{
    (void)state;
    char err[512], path[200];
    signal(SIGPIPE, SIG_IGN);
    snprintf(tmp, sizeof(tmp), "/tmp/zmesh-enrol-XXXXXX");
    if (!mkdtemp(tmp)) return -1;
    snprintf(manifests, sizeof(manifests), "%s/manifests", tmp);
    snprintf(state_dir, sizeof(state_dir), "%s/state", tmp);
    snprintf(root, sizeof(root), "%s/root-cert.pem", state_dir);
    snprintf(token_file, sizeof(token_file), "%s/token", tmp);
    snprintf(ns_file, sizeof(ns_file), "%s/namespaces.yaml", manifests);
    if (mkdir(manifests, 0700) < 0) return -1;
    snprintf(path, sizeof(path), "%s/pods.yaml", manifests);
    write_file(path, PODS);
    write_file(ns_file, NS_BEFORE);
    S.l = loop_new();
    struct zmeshd_config cfg = {
        .manifests = manifests, .state_dir = state_dir, .listen = "127.0.0.1:0", .debounce_after_ms = 10};
    if (zmeshd_new(S.l, &cfg, &S.d, err, sizeof(err)) < 0 || zmeshd_start(S.d, err, sizeof(err)) < 0 ||
        zmeshd_server_new(S.l, S.d, &S.s, err, sizeof(err)) < 0 ||
        zmeshd_xds_new(S.d, S.s, &S.x, err, sizeof(err)) < 0) {
        fprintf(stderr, "zmeshd: %s\n", err);
        return -1;
    }
    /* The node agent's token, as `zmesh token --sa istio-system/istio-cni --node node1` makes it. */
    char *tok = NULL;
    struct token_subject sub = {.ns = "istio-system", .sa = "istio-cni", .node = "node1"};
    if (zmeshd_token_mint(state_dir, &sub, 3600, &tok, err, sizeof(err)) < 0) return -1;
    write_file(token_file, tok);
    free(tok);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    zmeshd_server_free(S.s);
    loop_run_tasks(S.l);
    zmeshd_xds_free(S.x);
    zmeshd_free(S.d);
    loop_run_tasks(S.l);
    loop_free(S.l);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmp);
    return system(cmd) == 0 ? 0 : -1;
}

static struct enrol_client *client(const char *token, struct seen *s)
{
    char addr[64], err[512];
    snprintf(addr, sizeof(addr), "https://127.0.0.1:%u", zmeshd_server_port(S.s));
    struct enrol_client_opts o = {
        .endpoint = {.address = addr,
                     .roots = root,
                     .alt_hostname = "istiod.istio-system.svc",
                     .token = token,
                     .cluster_id = "Kubernetes"},
        .node_name = "node1",
        .node = {.instance_ip = "10.0.0.2",
                 .pod_name = "istio-cni-node-abcde",
                 .pod_ns = "istio-system",
                 .node_name = "node1"},
    };
    struct enrol_client *c = NULL;
    if (enrol_client_new(S.l, &o, &ops, s, &c, err, sizeof(err)) < 0) fail_msg("enrol_client_new: %s", err);
    return c;
}

static bool synced(void *arg)
{
    return ((struct seen *)arg)->synced > 0;
}

static bool web1_left(void *arg)
{
    struct seen *s = arg;
    return s->n && !strncmp(s->pods[0], "demo/opt", 8) && strstr(s->pods[1], "demo/web-1 -") != NULL;
}

static bool refused(void *arg)
{
    (void)arg;
    json_t *st = zmeshd_xds_status(S.x);
    json_int_t n = json_integer_value(json_object_get(json_object_get(st, "totals"), "streams_refused"));
    json_decref(st);
    return n >= 1;
}

/* The one client zmeshd has whose node id starts with prefix. */
static const struct ads_client *zmeshd_client(const char *prefix)
{
    for (const struct ads_client *c = ads_server_first_client(zmeshd_xds_ads(S.x)); c; c = ads_client_next(c))
        if (!strncmp(ads_client_node_id(c), prefix, strlen(prefix))) return c;
    return NULL;
}

static void test_sync_and_flip(void **state)
{
    (void)state;
    struct seen s = {0};
    struct enrol_client *c = client(token_file, &s);
    run_until(synced, &s, "the first response");
    assert_int_equal(s.synced, 1);
    /* node1's pods, sorted; not demo/done (terminated), not demo/far (node2). */
    assert_int_equal(s.n, 5);
    assert_string_equal(s.pods[0], "demo/opt - pod-opt-out uid-opt sa-opt node1");
    assert_string_equal(s.pods[1], "demo/web-1 ambient namespace-label uid-web-1 sa-web-1 node1");
    assert_string_equal(s.pods[2], "demo/web-2 ambient namespace-label uid-web-2 sa-web-2 node1"); /* no IP */
    assert_string_equal(s.pods[3], "plain/other - not-labelled uid-other sa-other node1");
    assert_string_equal(s.pods[4], "plain/solo ambient pod-label uid-solo sa-solo node1");
    assert_int_equal(enrol_client_count(c), 6); /* the store holds every node's pods */

    /* zmeshd's side: an istio-cni proxy, wildcard on PodEnrolment only, its one response ACKed. */
    const struct ads_client *ac = zmeshd_client("istio-cni~10.0.0.2~istio-cni-node-abcde.istio-system~");
    assert_non_null(ac);
    struct ads_watch_info wi;
    for (size_t i = 0; i < 2; i++) {
        assert_int_equal(ads_client_watch_info(ac, i, &wi), 0);
        assert_false(wi.subscribed); /* Address, Authorization */
    }
    assert_int_equal(ads_client_watch_info(ac, 2, &wi), 0);
    assert_string_equal(wi.type_url, PB_TYPE_URL_POD_ENROLMENT);
    assert_true(wi.subscribed && wi.wildcard);
    assert_int_equal(wi.last_resources, 6);
    json_t *st = zmeshd_xds_status(S.x), *syncz = zmeshd_debug_syncz(st, "zmeshd", "Kubernetes");
    assert_non_null(syncz);
    json_t *p = json_array_get(syncz, 0), *types = json_object_get(p, "types");
    assert_string_equal(json_string_value(json_object_get(p, "proxy_type")), "istio-cni");
    assert_int_equal(json_array_size(types), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(types, 0), "type")), "ENROL");
    json_decref(syncz);
    json_decref(st);

    /* The flip, through the directory watch: demo loses the label, plain gains it. */
    size_t before = s.updates;
    write_file(ns_file, NS_AFTER);
    run_until(web1_left, &s, "the namespace flip");
    assert_int_equal(s.updates, before + 1); /* one push */
    assert_int_equal(s.n, 5);
    assert_string_equal(s.pods[0], "demo/opt - not-labelled uid-opt sa-opt node1");
    assert_string_equal(s.pods[1], "demo/web-1 - not-labelled uid-web-1 sa-web-1 node1");
    assert_string_equal(s.pods[2], "demo/web-2 - not-labelled uid-web-2 sa-web-2 node1");
    assert_string_equal(s.pods[3], "plain/other ambient namespace-label uid-other sa-other node1");
    assert_string_equal(s.pods[4], "plain/solo ambient pod-label uid-solo sa-solo node1");
    /* Exactly what changed went out: demo's opt, web-1, web-2 and far, and plain/other; plain/solo did not.
     */
    assert_int_equal(ads_client_watch_info(zmeshd_client("istio-cni~"), 2, &wi), 0);
    assert_int_equal(wi.last_resources, 5);
    assert_int_equal(wi.last_removed, 0);
    unsigned long long acks, nacks;
    enrol_client_stats(c, &acks, &nacks);
    assert_int_equal(acks, 2);
    assert_int_equal(nacks, 0);
    enrol_client_free(c);
}

static void test_bad_token_refused(void **state)
{
    (void)state;
    struct seen s = {0};
    struct enrol_client *c = client("not-a-token", &s);
    run_until(refused, NULL, "the refusal");
    assert_int_equal(s.updates, 0);
    assert_int_equal(s.synced, 0);
    enrol_client_free(c);
}

/* ---- a hand-made server ---- */

static void pack_enrolment(const char *ns, const char *name, Google__Protobuf__Any *any, uint8_t *buf,
                           size_t n)
{
    Zmesh__V1__PodEnrolment m = ZMESH__V1__POD_ENROLMENT__INIT;
    m.name = (char *)name;
    m.namespace_ = (char *)ns;
    m.service_account = "sa";
    m.node_name = "node1";
    m.ambient = true;
    m.reason = "pod-label";
    assert_true(zmesh__v1__pod_enrolment__get_packed_size(&m) <= n);
    any->type_url = PB_TYPE_URL_POD_ENROLMENT;
    any->value.data = buf;
    any->value.len = zmesh__v1__pod_enrolment__pack(&m, buf);
}

static void peer_send(struct grpc_call *c, Envoy__Service__Discovery__V3__DeltaDiscoveryResponse *r)
{
    uint8_t buf[4096];
    size_t n = envoy__service__discovery__v3__delta_discovery_response__get_packed_size(r);
    assert_true(n <= sizeof(buf));
    envoy__service__discovery__v3__delta_discovery_response__pack(r, buf);
    assert_int_equal(grpc_call_send(c, buf, n), 0);
}

/* First stream: one good resource and four bad ones. */
static void send_bad(struct grpc_call *c)
{
    uint8_t good[256], misnamed[256], dup[256];
    Google__Protobuf__Any a[5] = {GOOGLE__PROTOBUF__ANY__INIT, GOOGLE__PROTOBUF__ANY__INIT,
                                  GOOGLE__PROTOBUF__ANY__INIT, GOOGLE__PROTOBUF__ANY__INIT,
                                  GOOGLE__PROTOBUF__ANY__INIT};
    pack_enrolment("demo", "good", &a[0], good, sizeof(good));
    a[1].type_url = PB_TYPE_URL_POD_ENROLMENT; /* field 1, length 100, 1 byte: truncated */
    a[1].value = (ProtobufCBinaryData){.data = (uint8_t *)"\x0a\x64x", .len = 3};
    pack_enrolment("other", "x", &a[2], misnamed, sizeof(misnamed));
    pack_enrolment("demo", "wrongtype", &a[3], dup, sizeof(dup));
    a[3].type_url = PB_TYPE_URL_ADDRESS;
    a[4] = a[0];
    const char *names[5] = {"demo/good", "demo/garbage", "demo/misnamed", "demo/wrongtype", "demo/good"};
    Envoy__Service__Discovery__V3__Resource res[5], *rp[5];
    for (int i = 0; i < 5; i++) {
        envoy__service__discovery__v3__resource__init(&res[i]);
        res[i].name = (char *)names[i];
        res[i].version = i == 4 ? "v-dup" : "v-good";
        res[i].resource = &a[i];
        rp[i] = &res[i];
    }
    Envoy__Service__Discovery__V3__DeltaDiscoveryResponse r =
        ENVOY__SERVICE__DISCOVERY__V3__DELTA_DISCOVERY_RESPONSE__INIT;
    r.type_url = PB_TYPE_URL_POD_ENROLMENT;
    r.nonce = "n1";
    r.system_version_info = "1";
    r.resources = rp;
    r.n_resources = 5;
    peer_send(c, &r);
}

static void peer_on_message(struct grpc_call *c, void *ud, const uint8_t *p, size_t n)
{
    (void)ud;
    ProtobufCMessage *m = NULL;
    assert_int_equal(
        pb_message_unpack(&envoy__service__discovery__v3__delta_discovery_request__descriptor, p, n, &m), 0);
    Envoy__Service__Discovery__V3__DeltaDiscoveryRequest *req = (void *)m;
    assert_string_equal(req->type_url, PB_TYPE_URL_POD_ENROLMENT);
    if (req->node) { /* a stream's first request: wildcard, the agent's Node */
        assert_int_equal(req->n_resource_names_subscribe, 0);
        assert_string_equal(
            req->node->id,
            "istio-cni~10.0.0.2~istio-cni-node-abcde.istio-system~istio-system.svc.cluster.local");
        if (P.streams == 1) {
            send_bad(c);
        } else {
            size_t k = 0;
            for (size_t i = 0; i < req->n_initial_resource_versions; i++)
                k += (size_t)snprintf(P.initial + k, sizeof(P.initial) - k, "%s=%s,",
                                      req->initial_resource_versions[i]->key,
                                      req->initial_resource_versions[i]->value);
            char *removed[] = {"demo/good"};
            Envoy__Service__Discovery__V3__DeltaDiscoveryResponse r =
                ENVOY__SERVICE__DISCOVERY__V3__DELTA_DISCOVERY_RESPONSE__INIT;
            r.type_url = PB_TYPE_URL_POD_ENROLMENT;
            r.nonce = "n2";
            r.removed_resources = removed;
            r.n_removed_resources = 1;
            peer_send(c, &r);
        }
    } else if (req->error_detail) {
        assert_string_equal(req->response_nonce, "n1");
        snprintf(P.nack, sizeof(P.nack), "%s", req->error_detail->message);
        /* The server goes away (RST_STREAM): the client reconnects. Not grpc_call_finish: a client call of
         * src/h2/grpc.c ends when its stream closes, not on trailers alone (peer_done), and zmesh's server
         * does not reset a stream after trailers that follow a body, so the client would wait half-open. */
        grpc_call_cancel(c, GRPC_STATUS_UNAVAILABLE, "restarting");
    } else {
        assert_string_equal(req->response_nonce, "n2");
        P.acks++;
    }
    protobuf_c_message_free_unpacked(m, NULL);
}

static void peer_on_end(struct grpc_call *c, void *ud, const struct grpc_result *r)
{
    (void)c, (void)ud, (void)r;
}

static const struct grpc_call_ops peer_ops = {.on_message = peer_on_message, .on_end = peer_on_end};

static void peer_handler(struct grpc_call *c, void *ud, const struct grpc_call_info *info)
{
    (void)ud, (void)info;
    P.streams++;
    grpc_call_set_ops(c, &peer_ops, NULL);
}

static bool peer_acked(void *arg)
{
    (void)arg;
    return P.acks > 0;
}

static void test_nack_and_reconnect(void **state)
{
    (void)state;
    char err[512], addr[64];
    assert_int_equal(zmeshd_server_new(S.l, S.d, &P.s, err, sizeof(err)), 0);
    assert_int_equal(
        grpc_server_add(zmeshd_server_grpc(P.s), ZMESHD_ADS_METHOD, GRPC_STREAMING, peer_handler, NULL), 0);
    snprintf(addr, sizeof(addr), "127.0.0.1:%u", zmeshd_server_port(P.s));
    struct seen s = {0};
    struct enrol_client_opts o = {
        .endpoint = {.address = addr,
                     .roots = root,
                     .alt_hostname = "istiod.istio-system.svc",
                     .token = token_file},
        .node_name = "",
        .node = {.instance_ip = "10.0.0.2", .pod_name = "istio-cni-node-abcde", .pod_ns = "istio-system"},
    };
    struct enrol_client *c = NULL;
    if (enrol_client_new(S.l, &o, &ops, &s, &c, err, sizeof(err)) < 0) fail_msg("enrol_client_new: %s", err);
    run_until(peer_acked, &P, "the second stream's ACK");
    /* Each bad resource named, in the response's order; the good one kept. */
    assert_string_equal(P.nack,
                        "demo/garbage: decode: not a zmesh.v1.PodEnrolment; "
                        "demo/misnamed: resource name is not <namespace>/<name> (other/x); "
                        "demo/wrongtype: resource of type type.googleapis.com/istio.workload.Address in a "
                        "response of type type.googleapis.com/zmesh.v1.PodEnrolment; "
                        "demo/good: listed twice in one response");
    assert_int_equal(P.streams, 2);
    assert_string_equal(P.initial, "demo/good=v-good,"); /* what it accepted, at the version accepted */
    assert_int_equal(s.updates, 2);
    assert_int_equal(s.synced, 1);
    assert_int_equal(s.n, 0); /* the removal */
    assert_int_equal(enrol_client_count(c), 0);
    unsigned long long acks, nacks;
    enrol_client_stats(c, &acks, &nacks);
    assert_int_equal(acks, 1);
    assert_int_equal(nacks, 1);
    enrol_client_free(c);
    zmeshd_server_free(P.s);
    loop_run_tasks(S.l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sync_and_flip),
        cmocka_unit_test(test_bad_token_refused),
        cmocka_unit_test(test_nack_and_reconnect),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
