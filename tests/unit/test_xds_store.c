/* Unit tests for the client-side delta xDS resource store (src/xds/store.c): delta add / update / remove, a
 * rejected resource leaving the others applied and its old version in place, ztunnel's NACK text,
 * initial_resource_versions, removals of unknown names, type URL checks, and the snapshot a rebuild hands
 * out (its lookups find what was applied). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include "xds/pb.h"
#include "xds/resource.h"
#include "xds/store.h"

#define MAX_RES 16

/* A DeltaDiscoveryResponse under construction, with the storage its messages point into. */
struct resp {
    Envoy__Service__Discovery__V3__DeltaDiscoveryResponse r;
    Envoy__Service__Discovery__V3__Resource res[MAX_RES];
    Envoy__Service__Discovery__V3__Resource *rp[MAX_RES];
    Google__Protobuf__Any any[MAX_RES];
    uint8_t *bufs[MAX_RES];
    char *removed[MAX_RES];
};

static void resp_init(struct resp *p, const char *type_url)
{
    memset(p, 0, sizeof(*p));
    envoy__service__discovery__v3__delta_discovery_response__init(&p->r);
    p->r.type_url = (char *)type_url;
    p->r.nonce = "n1";
    p->r.resources = p->rp;
    p->r.removed_resources = p->removed;
}

/* Adds a resource of raw bytes (buf is taken over) under any type URL; any_url NULL = no Any at all. */
static void add_raw(struct resp *p, const char *name, const char *version, const char *any_url, uint8_t *buf,
                    size_t len)
{
    size_t i = p->r.n_resources++;
    assert_true(i < MAX_RES);
    envoy__service__discovery__v3__resource__init(&p->res[i]);
    p->res[i].name = (char *)name;
    p->res[i].version = (char *)version;
    if (any_url) {
        google__protobuf__any__init(&p->any[i]);
        p->any[i].type_url = (char *)any_url;
        p->any[i].value = (ProtobufCBinaryData){len, buf};
        p->res[i].resource = &p->any[i];
    }
    p->bufs[i] = buf;
    p->rp[i] = &p->res[i];
}

static void add_wl(struct resp *p, const char *name, const char *version, const struct workload *w)
{
    uint8_t *buf;
    size_t len;
    char err[XDS_REASON_MAX];
    assert_int_equal(xds_encode_workload(w, &buf, &len, err, sizeof(err)), 0);
    add_raw(p, name, version, PB_TYPE_URL_ADDRESS, buf, len);
}

static void add_svc(struct resp *p, const char *name, const char *version, const struct service *s)
{
    uint8_t *buf;
    size_t len;
    char err[XDS_REASON_MAX];
    assert_int_equal(xds_encode_service(s, &buf, &len, err, sizeof(err)), 0);
    add_raw(p, name, version, PB_TYPE_URL_ADDRESS, buf, len);
}

static void add_pol(struct resp *p, const char *name, const char *version, const struct policy *pol)
{
    uint8_t *buf;
    size_t len;
    char err[XDS_REASON_MAX];
    assert_int_equal(xds_encode_policy(pol, &buf, &len, err, sizeof(err)), 0);
    add_raw(p, name, version, PB_TYPE_URL_AUTHORIZATION, buf, len);
}

static void add_removed(struct resp *p, const char *name)
{
    assert_true(p->r.n_removed_resources < MAX_RES);
    p->removed[p->r.n_removed_resources++] = (char *)name;
}

static void resp_free(struct resp *p)
{
    for (size_t i = 0; i < p->r.n_resources; i++)
        free(p->bufs[i]);
}

static struct ip_addr ip(const char *s)
{
    struct ip_addr a;
    assert_int_equal(ip_parse(s, &a), 0);
    return a;
}

static struct workload wl(const char *uid, const char *name, const struct ip_addr *a)
{
    return (struct workload){.uid = uid,
                             .name = name,
                             .namespace_ = "ns",
                             .ips = a,
                             .n_ips = 1,
                             .healthy = true,
                             .capacity = 1,
                             .protocol = WL_PROTO_HBONE};
}

static struct xds_store *new_store(void)
{
    struct xds_store *st = NULL;
    assert_int_equal(xds_store_new(&st, NULL), 0);
    return st;
}

/* Applies p, expecting an ACK (nack_want NULL) or exactly that NACK text; returns the snapshot. */
static struct snapshot *apply(struct xds_store *st, struct resp *p, const char *nack_want)
{
    struct snapshot *s = NULL;
    char *nack = NULL;
    assert_int_equal(xds_store_apply(st, &p->r, &s, &nack), 0);
    if (nack_want) {
        if (!nack) fail_msg("expected a NACK: %s", nack_want);
        assert_string_equal(nack, nack_want);
    } else if (nack) {
        fail_msg("unexpected NACK: %s", nack);
    }
    free(nack);
    assert_non_null(s);
    return s;
}

static void test_add_update_remove(void **state)
{
    (void)state;
    struct xds_store *st = new_store();
    struct ip_addr a1 = ip("10.0.0.1"), a2 = ip("10.0.0.2"), a1b = ip("10.0.1.1"), vip = ip("10.96.0.1");
    struct workload w1 = wl("c//v1/Pod/ns/a", "a", &a1), w2 = wl("c//v1/Pod/ns/b", "b", &a2);
    const struct port_map pm[] = {{80, 8080, 0}};
    struct net_addr v = {"", vip};
    struct service s1 = {.name = "svc",
                         .namespace_ = "ns",
                         .hostname = "svc.ns.svc.cluster.local",
                         .vips = &v,
                         .n_vips = 1,
                         .ports = pm,
                         .n_ports = 1};

    struct resp p;
    resp_init(&p, PB_TYPE_URL_ADDRESS);
    add_wl(&p, w1.uid, "1", &w1);
    add_wl(&p, w2.uid, "1", &w2);
    add_svc(&p, "ns/svc.ns.svc.cluster.local", "7", &s1);
    struct snapshot *s = apply(st, &p, NULL);
    resp_free(&p);
    assert_int_equal(xds_store_count(st, PB_TYPE_URL_ADDRESS), 3);
    assert_int_equal(snapshot_n_workloads(s), 2);
    assert_int_equal(snapshot_n_services(s), 1);
    const struct workload *g = snapshot_workload_by_ip(s, "", &a1);
    assert_non_null(g);
    assert_string_equal(g->uid, w1.uid);
    assert_non_null(snapshot_workload_by_uid(s, w2.uid));
    assert_non_null(snapshot_service_by_vip(s, "", &vip));
    assert_non_null(snapshot_service_by_host(s, "ns/svc.ns.svc.cluster.local"));
    assert_string_equal(xds_store_version(st, PB_TYPE_URL_ADDRESS, "ns/svc.ns.svc.cluster.local"), "7");
    snapshot_unref(s);

    /* Update w1 with a new address: the rebuild finds it there and no longer at the old one. */
    w1.ips = &a1b;
    resp_init(&p, PB_TYPE_URL_ADDRESS);
    add_wl(&p, w1.uid, "2", &w1);
    s = apply(st, &p, NULL);
    resp_free(&p);
    assert_int_equal(xds_store_count(st, PB_TYPE_URL_ADDRESS), 3);
    assert_string_equal(xds_store_version(st, PB_TYPE_URL_ADDRESS, w1.uid), "2");
    assert_string_equal(xds_store_version(st, PB_TYPE_URL_ADDRESS, w2.uid), "1");
    g = snapshot_workload_by_ip(s, "", &a1b);
    assert_non_null(g);
    assert_string_equal(g->uid, w1.uid);
    assert_null(snapshot_workload_by_ip(s, "", &a1));
    /* First-seen order survives an update. */
    assert_string_equal(snapshot_workload_at(s, 0)->uid, w1.uid);
    snapshot_unref(s);

    /* Remove w2 and the service. */
    resp_init(&p, PB_TYPE_URL_ADDRESS);
    add_removed(&p, w2.uid);
    add_removed(&p, "ns/svc.ns.svc.cluster.local");
    s = apply(st, &p, NULL);
    assert_int_equal(xds_store_count(st, PB_TYPE_URL_ADDRESS), 1);
    assert_null(xds_store_get(st, PB_TYPE_URL_ADDRESS, w2.uid));
    assert_null(xds_store_version(st, PB_TYPE_URL_ADDRESS, w2.uid));
    assert_null(snapshot_workload_by_uid(s, w2.uid));
    assert_null(snapshot_workload_by_ip(s, "", &a2));
    assert_null(snapshot_service_by_host(s, "ns/svc.ns.svc.cluster.local"));
    assert_int_equal(snapshot_n_workloads(s), 1);
    snapshot_unref(s);

    /* The other type: a policy joins the same snapshot, the workloads stay. */
    struct policy pol = {
        .name = "deny", .namespace_ = "ns", .scope = POLICY_SCOPE_NAMESPACE, .action = POLICY_DENY};
    resp_init(&p, PB_TYPE_URL_AUTHORIZATION);
    add_pol(&p, "ns/deny", "p1", &pol);
    s = apply(st, &p, NULL);
    resp_free(&p);
    assert_non_null(snapshot_policy_by_name(s, "ns/deny"));
    size_t n;
    assert_non_null(snapshot_namespace_policies(s, "ns", &n));
    assert_int_equal(n, 1);
    assert_non_null(snapshot_workload_by_uid(s, w1.uid));
    assert_int_equal(xds_store_count(st, PB_TYPE_URL_AUTHORIZATION), 1);
    assert_int_equal(xds_store_count(st, PB_TYPE_URL_ADDRESS), 1);
    const struct xds_resource *r = xds_store_get(st, PB_TYPE_URL_AUTHORIZATION, "ns/deny");
    assert_non_null(r);
    assert_int_equal(r->kind, BUILDER_POLICY);
    snapshot_unref(s);

    /* A removal in one type does not touch the other. */
    resp_init(&p, PB_TYPE_URL_AUTHORIZATION);
    add_removed(&p, w1.uid);
    s = apply(st, &p, NULL);
    assert_non_null(snapshot_workload_by_uid(s, w1.uid));
    snapshot_unref(s);
    xds_store_free(st);
}

/* A rejected update leaves the previous version applied and retained; the other resources are applied. */
static void test_nack_keeps_old(void **state)
{
    (void)state;
    struct xds_store *st = new_store();
    struct ip_addr a1 = ip("10.0.0.1"), a1b = ip("10.0.9.1"), a3 = ip("10.0.0.3");
    struct workload w1 = wl("u1", "a", &a1), w3 = wl("u3", "c", &a3);
    struct resp p;
    resp_init(&p, PB_TYPE_URL_ADDRESS);
    add_wl(&p, "u1", "1", &w1);
    snapshot_unref(apply(st, &p, NULL));
    resp_free(&p);

    /* v2 of u1 is LEGACY_ISTIO_MTLS (built by hand: the model cannot say it); u3 is fine. */
    Istio__Workload__Workload bad = ISTIO__WORKLOAD__WORKLOAD__INIT;
    bad.uid = "u1";
    bad.name = "a";
    bad.namespace_ = "ns";
    ProtobufCBinaryData addr = {4, a1b.a};
    bad.n_addresses = 1;
    bad.addresses = &addr;
    bad.tunnel_protocol = ISTIO__WORKLOAD__TUNNEL_PROTOCOL__LEGACY_ISTIO_MTLS;
    Istio__Workload__Address ba = ISTIO__WORKLOAD__ADDRESS__INIT;
    ba.type_case = ISTIO__WORKLOAD__ADDRESS__TYPE_WORKLOAD;
    ba.workload = &bad;
    size_t len = istio__workload__address__get_packed_size(&ba);
    uint8_t *buf = malloc(len);
    assert_non_null(buf);
    istio__workload__address__pack(&ba, buf);

    resp_init(&p, PB_TYPE_URL_ADDRESS);
    add_raw(&p, "u1", "2", PB_TYPE_URL_ADDRESS, buf, len);
    add_wl(&p, "u3", "1", &w3);
    struct snapshot *s = apply(st, &p, "u1: tunnel_protocol: unsupported tunnel protocol: legacy istio mtls");
    resp_free(&p);
    assert_string_equal(xds_store_version(st, PB_TYPE_URL_ADDRESS, "u1"), "1");
    const struct workload *g = snapshot_workload_by_uid(s, "u1");
    assert_non_null(g);
    assert_true(ip_equal(&g->ips[0], &a1));
    assert_int_equal(g->protocol, WL_PROTO_HBONE);
    assert_null(snapshot_workload_by_ip(s, "", &a1b));
    assert_non_null(snapshot_workload_by_uid(s, "u3"));
    assert_string_equal(xds_store_version(st, PB_TYPE_URL_ADDRESS, "u3"), "1");
    snapshot_unref(s);

    /* A rejected resource of a new name is not retained at all. */
    buf = malloc(len);
    assert_non_null(buf);
    bad.uid = "u9";
    len = istio__workload__address__get_packed_size(&ba);
    istio__workload__address__pack(&ba, buf);
    resp_init(&p, PB_TYPE_URL_ADDRESS);
    add_raw(&p, "u9", "1", PB_TYPE_URL_ADDRESS, buf, len);
    s = apply(st, &p, "u9: tunnel_protocol: unsupported tunnel protocol: legacy istio mtls");
    resp_free(&p);
    assert_null(xds_store_version(st, PB_TYPE_URL_ADDRESS, "u9"));
    assert_null(snapshot_workload_by_uid(s, "u9"));
    assert_int_equal(xds_store_count(st, PB_TYPE_URL_ADDRESS), 2);
    snapshot_unref(s);
    xds_store_free(st);
}

/* ztunnel's NACK text: "name: reason" entries joined by "; ", conversion (handler) rejections first, then
 * decode failures (client.rs HandlerWrapper::handle appends those after the handler's). */
static void test_nack_format(void **state)
{
    (void)state;
    struct xds_store *st = new_store();
    struct ip_addr a = ip("10.0.0.1"), b = ip("10.0.0.2");
    struct workload ok = wl("ok", "ok", &a);
    struct workload mismatch = wl("u4", "d", &b);
    const struct port_map pm[] = {{80, 8080, 0}};
    const struct wl_service_ports sp = {"nohost", pm, 1};
    struct workload badkey = wl("u5", "e", &b);
    badkey.services = &sp;
    badkey.n_services = 1;
    static const uint8_t garbage[] = {0x0a, 0x05, 0x01};
    uint8_t *g = malloc(sizeof(garbage));
    assert_non_null(g);
    memcpy(g, garbage, sizeof(garbage));

    struct resp p;
    resp_init(&p, PB_TYPE_URL_ADDRESS);
    add_raw(&p, "bad1", "1", PB_TYPE_URL_ADDRESS, g, sizeof(garbage));
    add_wl(&p, "ok", "1", &ok);
    add_wl(&p, "wrong", "1", &mismatch);
    add_raw(&p, "bad3", "1", NULL, NULL, 0);
    add_wl(&p, "u5", "1", &badkey);
    struct snapshot *s =
        apply(st, &p,
              "wrong: resource name does not match its key \"u4\"; "
              "u5: services[0]: invalid service key \"nohost\" (expected \"namespace/hostname\"); "
              "bad1: decode: invalid protobuf message; "
              "bad3: XDS payload without resource");
    resp_free(&p);
    /* Only the good one is applied. */
    assert_int_equal(xds_store_count(st, PB_TYPE_URL_ADDRESS), 1);
    assert_non_null(snapshot_workload_by_uid(s, "ok"));
    assert_null(snapshot_workload_by_uid(s, "u4"));
    snapshot_unref(s);

    /* A name twice in one response: the second is refused, the first applied. */
    resp_init(&p, PB_TYPE_URL_ADDRESS);
    add_wl(&p, "ok", "2", &ok);
    add_wl(&p, "ok", "3", &ok);
    s = apply(st, &p, "ok: duplicate resource name in one response");
    resp_free(&p);
    assert_string_equal(xds_store_version(st, PB_TYPE_URL_ADDRESS, "ok"), "2");
    snapshot_unref(s);
    xds_store_free(st);
}

struct versions {
    const char *names[8], *versions[8];
    int n;
};

static int collect(void *ud, const char *name, const char *version)
{
    struct versions *v = ud;
    if (v->n < 8) {
        v->names[v->n] = name;
        v->versions[v->n] = version;
    }
    v->n++;
    return 0;
}

static void test_initial_versions(void **state)
{
    (void)state;
    struct xds_store *st = new_store();
    struct ip_addr a = ip("10.0.0.1"), b = ip("10.0.0.2");
    struct workload w1 = wl("u1", "a", &a), w2 = wl("u2", "b", &b);
    struct resp p;
    resp_init(&p, PB_TYPE_URL_ADDRESS);
    add_wl(&p, "u1", "v1", &w1);
    add_wl(&p, "u2", "v7", &w2);
    snapshot_unref(apply(st, &p, NULL));
    resp_free(&p);

    /* A rejected update of u2 (name not its key) and a rejected new name: neither shows in the map. */
    struct workload other = wl("zz", "z", &b);
    resp_init(&p, PB_TYPE_URL_ADDRESS);
    add_wl(&p, "u2", "v8", &other);
    add_wl(&p, "u3", "v1", &other);
    snapshot_unref(apply(st, &p,
                         "u2: resource name does not match its key \"zz\"; "
                         "u3: resource name does not match its key \"zz\""));
    resp_free(&p);

    Envoy__Service__Discovery__V3__DeltaDiscoveryRequest req =
        ENVOY__SERVICE__DISCOVERY__V3__DELTA_DISCOVERY_REQUEST__INIT;
    req.type_url = PB_TYPE_URL_ADDRESS;
    assert_int_equal(xds_store_initial_versions(st, PB_TYPE_URL_ADDRESS, &req), 0);
    assert_int_equal(req.n_initial_resource_versions, 2);
    assert_string_equal(req.initial_resource_versions[0]->key, "u1");
    assert_string_equal(req.initial_resource_versions[0]->value, "v1");
    assert_string_equal(req.initial_resource_versions[1]->key, "u2");
    assert_string_equal(req.initial_resource_versions[1]->value, "v7");
    /* It packs and unpacks as a proto map. */
    size_t len = envoy__service__discovery__v3__delta_discovery_request__get_packed_size(&req);
    uint8_t *buf = malloc(len);
    assert_non_null(buf);
    envoy__service__discovery__v3__delta_discovery_request__pack(&req, buf);
    Envoy__Service__Discovery__V3__DeltaDiscoveryRequest *back =
        envoy__service__discovery__v3__delta_discovery_request__unpack(NULL, len, buf);
    assert_non_null(back);
    assert_int_equal(back->n_initial_resource_versions, 2);
    envoy__service__discovery__v3__delta_discovery_request__free_unpacked(back, NULL);
    free(buf);
    xds_store_initial_versions_clear(&req);
    assert_int_equal(req.n_initial_resource_versions, 0);
    assert_null(req.initial_resource_versions);

    struct versions v = {0};
    assert_int_equal(xds_store_foreach(st, PB_TYPE_URL_ADDRESS, collect, &v), 0);
    assert_int_equal(v.n, 2);
    assert_string_equal(v.names[1], "u2");
    assert_string_equal(v.versions[1], "v7");

    /* A type with nothing retained: an empty map. */
    assert_int_equal(xds_store_initial_versions(st, PB_TYPE_URL_AUTHORIZATION, &req), 0);
    assert_int_equal(req.n_initial_resource_versions, 0);
    xds_store_initial_versions_clear(&req);
    xds_store_free(st);
}

static void test_remove_unknown(void **state)
{
    (void)state;
    struct xds_store *st = new_store();
    struct ip_addr a = ip("10.0.0.1");
    struct workload w1 = wl("u1", "a", &a);
    struct resp p;
    resp_init(&p, PB_TYPE_URL_ADDRESS);
    add_wl(&p, "u1", "1", &w1);
    add_removed(&p, "never-seen");
    struct snapshot *s = apply(st, &p, NULL); /* an ACK */
    resp_free(&p);
    assert_int_equal(xds_store_count(st, PB_TYPE_URL_ADDRESS), 1);
    snapshot_unref(s);

    /* Updated and removed in one response: removed (the removals come after the updates). */
    resp_init(&p, PB_TYPE_URL_ADDRESS);
    add_wl(&p, "u1", "2", &w1);
    add_removed(&p, "u1");
    s = apply(st, &p, NULL);
    resp_free(&p);
    assert_int_equal(xds_store_count(st, PB_TYPE_URL_ADDRESS), 0);
    assert_null(snapshot_workload_by_uid(s, "u1"));
    snapshot_unref(s);
    xds_store_free(st);
}

static void test_type_urls(void **state)
{
    (void)state;
    struct xds_store *st = new_store();
    struct ip_addr a = ip("10.0.0.1");
    struct workload w1 = wl("u1", "a", &a);
    struct policy pol = {.name = "p", .namespace_ = "ns"};
    struct resp p;
    /* An Authorization inside an Address response, and an Address under another type URL. */
    resp_init(&p, PB_TYPE_URL_ADDRESS);
    add_pol(&p, "ns/p", "1", &pol);
    uint8_t *buf;
    size_t len;
    char err[XDS_REASON_MAX];
    assert_int_equal(xds_encode_workload(&w1, &buf, &len, err, sizeof(err)), 0);
    add_raw(&p, "u1", "1", "type.googleapis.com/istio.workload.Workload", buf, len);
    struct snapshot *s =
        apply(st, &p,
              "ns/p: decode: resource type URL \"type.googleapis.com/istio.security.Authorization\" "
              "is not the response's \"type.googleapis.com/istio.workload.Address\"; "
              "u1: decode: resource type URL \"type.googleapis.com/istio.workload.Workload\" "
              "is not the response's \"type.googleapis.com/istio.workload.Address\"");
    resp_free(&p);
    assert_int_equal(xds_store_count(st, PB_TYPE_URL_ADDRESS), 0);
    assert_int_equal(xds_store_count(st, PB_TYPE_URL_AUTHORIZATION), 0);
    snapshot_unref(s);

    /* A response of a type the store does not know changes nothing and is NACKed. */
    resp_init(&p, "type.googleapis.com/envoy.config.cluster.v3.Cluster");
    add_wl(&p, "u1", "1", &w1);
    s = apply(st, &p, "unknown resource type: type.googleapis.com/envoy.config.cluster.v3.Cluster");
    resp_free(&p);
    assert_int_equal(xds_store_count(st, PB_TYPE_URL_ADDRESS), 0);
    assert_int_equal(xds_store_count(st, "type.googleapis.com/envoy.config.cluster.v3.Cluster"), 0);
    assert_null(xds_store_get(st, "nope", "u1"));
    snapshot_unref(s);
    xds_store_free(st);
}

/* What a server builds with xds_encode_resource is accepted as it is: name, version and Any match. */
static void test_encode_resource(void **state)
{
    (void)state;
    struct xds_store *st = new_store();
    struct ip_addr a = ip("10.0.0.1"), vip = ip("10.96.0.5");
    struct workload w = wl("c//v1/Pod/ns/a", "a", &a);
    struct net_addr v = {"", vip};
    struct service svc = {
        .name = "s", .namespace_ = "ns", .hostname = "s.ns.svc.cluster.local", .vips = &v, .n_vips = 1};
    struct policy pol = {.name = "p", .namespace_ = "ns", .scope = POLICY_SCOPE_GLOBAL};
    Envoy__Service__Discovery__V3__Resource r[3], *rp[3] = {&r[0], &r[1], &r[2]};
    char err[XDS_REASON_MAX];
    assert_int_equal(xds_encode_resource(BUILDER_WORKLOAD, &w, "w1", &r[0], err, sizeof(err)), 0);
    assert_int_equal(xds_encode_resource(BUILDER_SERVICE, &svc, "s1", &r[1], err, sizeof(err)), 0);
    assert_int_equal(xds_encode_resource(BUILDER_POLICY, &pol, "p1", &r[2], err, sizeof(err)), 0);
    assert_string_equal(r[0].name, "c//v1/Pod/ns/a");
    assert_string_equal(r[1].name, "ns/s.ns.svc.cluster.local");
    assert_string_equal(r[2].name, "ns/p");
    assert_string_equal(r[1].resource->type_url, PB_TYPE_URL_ADDRESS);
    assert_string_equal(r[2].resource->type_url, PB_TYPE_URL_AUTHORIZATION);
    Envoy__Service__Discovery__V3__DeltaDiscoveryResponse resp =
        ENVOY__SERVICE__DISCOVERY__V3__DELTA_DISCOVERY_RESPONSE__INIT;
    resp.type_url = PB_TYPE_URL_ADDRESS;
    resp.resources = rp;
    resp.n_resources = 2;
    struct snapshot *s;
    char *nack;
    assert_int_equal(xds_store_apply(st, &resp, &s, &nack), 0);
    assert_null(nack);
    snapshot_unref(s);
    resp.type_url = PB_TYPE_URL_AUTHORIZATION;
    resp.resources = &rp[2];
    resp.n_resources = 1;
    assert_int_equal(xds_store_apply(st, &resp, &s, &nack), 0);
    assert_null(nack);
    assert_non_null(snapshot_workload_by_ip(s, "", &a));
    assert_non_null(snapshot_service_by_vip(s, "", &vip));
    size_t n;
    snapshot_global_policies(s, &n);
    assert_int_equal(n, 1);
    assert_string_equal(xds_store_version(st, PB_TYPE_URL_ADDRESS, "ns/s.ns.svc.cluster.local"), "s1");
    snapshot_unref(s);
    for (int i = 0; i < 3; i++)
        xds_encoded_resource_clear(&r[i]);
    assert_null(r[0].resource);

    /* A model value the protocol cannot carry is an error naming it; nothing is left to free. */
    w.workload_type = "replicaset";
    assert_int_equal(xds_encode_resource(BUILDER_WORKLOAD, &w, "w2", &r[0], err, sizeof(err)), -EINVAL);
    assert_string_equal(
        err, "workload_type: unknown value \"replicaset\" (expected deployment, cronjob, pod or job)");
    assert_null(r[0].resource);
    xds_store_free(st);
}

static void test_apply_bytes(void **state)
{
    (void)state;
    struct xds_store *st = new_store();
    struct ip_addr a = ip("10.0.0.1");
    struct workload w1 = wl("u1", "a", &a);
    struct resp p;
    resp_init(&p, PB_TYPE_URL_ADDRESS);
    add_wl(&p, "u1", "1", &w1);
    size_t len = envoy__service__discovery__v3__delta_discovery_response__get_packed_size(&p.r);
    uint8_t *buf = malloc(len);
    assert_non_null(buf);
    envoy__service__discovery__v3__delta_discovery_response__pack(&p.r, buf);
    resp_free(&p);
    struct snapshot *s = NULL;
    char *nack = NULL;
    assert_int_equal(xds_store_apply_bytes(st, buf, len, &s, &nack), 0);
    assert_null(nack);
    assert_non_null(snapshot_workload_by_ip(s, "", &a));
    snapshot_unref(s);
    free(buf);

    /* Bytes that are no response: nothing changes, the NACK says why. */
    static const uint8_t garbage[] = {0x12, 0x7f, 0x00};
    assert_int_equal(xds_store_apply_bytes(st, garbage, sizeof(garbage), &s, &nack), -EBADMSG);
    assert_null(s);
    assert_string_equal(nack, "decode: invalid DeltaDiscoveryResponse");
    free(nack);
    assert_int_equal(xds_store_count(st, PB_TYPE_URL_ADDRESS), 1);

    /* No snapshot asked for: applied without a build; xds_store_build makes one later. */
    resp_init(&p, PB_TYPE_URL_ADDRESS);
    add_removed(&p, "u1");
    assert_int_equal(xds_store_apply(st, &p.r, NULL, &nack), 0);
    assert_null(nack);
    assert_int_equal(xds_store_build(st, &s), 0);
    assert_int_equal(snapshot_n_workloads(s), 0);
    snapshot_unref(s);
    xds_store_free(st);
}

struct swarns {
    char name[4][64], msg[4][XDS_REASON_MAX];
    int n;
};

static void on_store_warn(void *ud, const char *type_url, const char *name, const char *msg)
{
    struct swarns *w = ud;
    assert_string_equal(type_url, PB_TYPE_URL_ADDRESS);
    if (w->n < 4) {
        snprintf(w->name[w->n], sizeof(w->name[0]), "%s", name);
        snprintf(w->msg[w->n], sizeof(w->msg[0]), "%s", msg);
    }
    w->n++;
}

/* Warnings are given once, for accepted resources only: never for a rejected one, never again on a rebuild.
 */
static void test_warnings(void **state)
{
    (void)state;
    struct swarns ws = {0};
    struct xds_store *st = NULL;
    assert_int_equal(xds_store_new(&st, &(struct xds_store_opts){on_store_warn, &ws}), 0);
    struct workload noip = wl("u1", "a", NULL);
    noip.n_ips = 0;
    struct ip_addr a = ip("10.0.0.1");
    struct workload mism = wl("zz", "z", &a);
    mism.n_ips = 0;
    struct resp p;
    resp_init(&p, PB_TYPE_URL_ADDRESS);
    add_wl(&p, "u1", "1", &noip);
    add_wl(&p, "u2", "1", &mism); /* rejected: its builder warning must not show */
    struct snapshot *s = apply(st, &p, "u2: resource name does not match its key \"zz\"");
    resp_free(&p);
    assert_int_equal(ws.n, 1);
    assert_string_equal(ws.name[0], "u1");
    assert_non_null(strstr(ws.msg[0], "no usable"));
    snapshot_unref(s);
    assert_int_equal(xds_store_build(st, &s), 0);
    assert_int_equal(ws.n, 1);
    snapshot_unref(s);
    xds_store_free(st);
}

/* 10 000 workloads in one response, then one update: lookups by name stay logarithmic, a rebuild is one
 * builder pass. Timings are printed, not asserted (the machine is shared). */
static void test_large(void **state)
{
    (void)state;
    enum { N = 10000 };
    struct xds_store *st = new_store();
    Envoy__Service__Discovery__V3__DeltaDiscoveryResponse r =
        ENVOY__SERVICE__DISCOVERY__V3__DELTA_DISCOVERY_RESPONSE__INIT;
    r.type_url = PB_TYPE_URL_ADDRESS;
    Envoy__Service__Discovery__V3__Resource *res = calloc(N, sizeof(*res));
    Envoy__Service__Discovery__V3__Resource **rp = calloc(N, sizeof(*rp));
    Google__Protobuf__Any *any = calloc(N, sizeof(*any));
    char(*names)[32] = calloc(N, 32);
    assert_true(res && rp && any && names);
    for (int i = 0; i < N; i++) {
        struct ip_addr a = {.family = AF_INET, .a = {10, 1, (uint8_t)(i >> 8), (uint8_t)i}};
        snprintf(names[i], 32, "c//v1/Pod/ns/p%d", i);
        char nm[16];
        snprintf(nm, sizeof(nm), "p%d", i);
        struct workload w = wl(names[i], nm, &a);
        envoy__service__discovery__v3__resource__init(&res[i]);
        google__protobuf__any__init(&any[i]);
        char err[XDS_REASON_MAX];
        assert_int_equal(xds_encode_workload(&w, &any[i].value.data, &any[i].value.len, err, sizeof(err)), 0);
        any[i].type_url = PB_TYPE_URL_ADDRESS;
        res[i].name = names[i];
        res[i].version = "1";
        res[i].resource = &any[i];
        rp[i] = &res[i];
    }
    r.resources = rp;
    r.n_resources = N;
    struct timespec t0, t1, t2;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    struct snapshot *s = NULL;
    char *nack = NULL;
    assert_int_equal(xds_store_apply(st, &r, &s, &nack), 0);
    assert_null(nack);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    assert_int_equal(snapshot_n_workloads(s), N);
    struct ip_addr probe = {.family = AF_INET, .a = {10, 1, 0x1e, 0x0f}}; /* 7695 = 0x1e0f */
    const struct workload *g = snapshot_workload_by_ip(s, "", &probe);
    assert_non_null(g);
    assert_string_equal(g->uid, "c//v1/Pod/ns/p7695");
    snapshot_unref(s);
    /* One update. */
    r.n_resources = 1;
    rp[0] = &res[4321];
    res[4321].version = "2";
    assert_int_equal(xds_store_apply(st, &r, &s, &nack), 0);
    clock_gettime(CLOCK_MONOTONIC, &t2);
    assert_null(nack);
    assert_string_equal(xds_store_version(st, PB_TYPE_URL_ADDRESS, "c//v1/Pod/ns/p4321"), "2");
    assert_string_equal(xds_store_version(st, PB_TYPE_URL_ADDRESS, "c//v1/Pod/ns/p4320"), "1");
    assert_int_equal(snapshot_n_workloads(s), N);
    snapshot_unref(s);
    printf("    %d workloads: initial apply + build %.1f ms, one update + rebuild %.1f ms\n", N,
           (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6,
           (t2.tv_sec - t1.tv_sec) * 1e3 + (t2.tv_nsec - t1.tv_nsec) / 1e6);
    for (int i = 0; i < N; i++)
        free(any[i].value.data);
    free(res);
    free(rp);
    free(any);
    free(names);
    xds_store_free(st);
}

/* A NACK longer than XDS_NACK_MAX stops at a whole entry and says how many more were rejected. */
static void test_nack_truncated(void **state)
{
    (void)state;
    enum { N = 6000, NAME = 200 };
    struct xds_store *st = new_store();
    Envoy__Service__Discovery__V3__DeltaDiscoveryResponse r =
        ENVOY__SERVICE__DISCOVERY__V3__DELTA_DISCOVERY_RESPONSE__INIT;
    r.type_url = PB_TYPE_URL_ADDRESS;
    Envoy__Service__Discovery__V3__Resource *res = calloc(N, sizeof(*res));
    Envoy__Service__Discovery__V3__Resource **rp = calloc(N, sizeof(*rp));
    char(*names)[NAME + 1] = calloc(N, NAME + 1);
    assert_true(res && rp && names);
    for (int i = 0; i < N; i++) {
        memset(names[i], 'x', NAME);
        snprintf(names[i], 16, "%08d", i);
        names[i][8] = 'x';
        envoy__service__discovery__v3__resource__init(&res[i]);
        res[i].name = names[i]; /* no Any: "XDS payload without resource" */
        rp[i] = &res[i];
    }
    r.resources = rp;
    r.n_resources = N;
    char *nack = NULL;
    assert_int_equal(xds_store_apply(st, &r, NULL, &nack), 0);
    assert_non_null(nack);
    size_t len = strlen(nack);
    const char *tail = strstr(nack, "; ... and ");
    assert_non_null(tail);
    assert_true((size_t)(tail - nack) <= XDS_NACK_MAX);
    assert_true(len > XDS_NACK_MAX - 300);
    /* Each entry is NAME + ": XDS payload without resource" + "; ". */
    size_t entry = NAME + strlen(": XDS payload without resource");
    size_t kept = (XDS_NACK_MAX + 2) / (entry + 2);
    char want[64];
    snprintf(want, sizeof(want), "; ... and %zu more rejected", (size_t)N - kept);
    assert_string_equal(tail, want);
    assert_memory_equal(tail - strlen(": XDS payload without resource"), ": XDS payload without resource",
                        strlen(": XDS payload without resource"));
    free(nack);
    free(res);
    free(rp);
    free(names);
    xds_store_free(st);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_add_update_remove),
        cmocka_unit_test(test_nack_keeps_old),
        cmocka_unit_test(test_nack_format),
        cmocka_unit_test(test_initial_versions),
        cmocka_unit_test(test_remove_unknown),
        cmocka_unit_test(test_type_urls),
        cmocka_unit_test(test_encode_resource),
        cmocka_unit_test(test_apply_bytes),
        cmocka_unit_test(test_warnings),
        cmocka_unit_test(test_nack_truncated),
        cmocka_unit_test(test_large),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
