/* Unit tests for zmeshd's delta ADS server logic (src/zmeshd/ads.c): requests go in as protobuf bytes,
 * responses come out serialized and are decoded again, so each test sees what a ztunnel would see on the
 * wire. The expected behaviour is istiod's (istio/istio pilot/pkg/xds/delta.go, workload.go). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "envoy/service/discovery/v3/discovery.pb-c.h"
#include "google/protobuf/struct.pb-c.h"
#include "workload.pb-c.h"
#include "xds/pb.h"
#include "zmeshd/ads.h"

#define ADDR PB_TYPE_URL_ADDRESS
#define AUTHZ PB_TYPE_URL_AUTHORIZATION

typedef Envoy__Service__Discovery__V3__DeltaDiscoveryRequest Req;
typedef Envoy__Service__Discovery__V3__DeltaDiscoveryResponse Resp;

static struct ads_server *server(void)
{
    const char *types[] = {ADDR, AUTHZ};
    struct ads_server *s = NULL;
    char err[256];
    assert_int_equal(
        ads_server_new(&(struct ads_server_opts){.type_urls = types, .n_types = 2}, &s, err, sizeof(err)), 0);
    return s;
}

/* Sets name to the bytes of the string val. */
static void put(struct ads_server *s, const char *type, const char *name, const char *val)
{
    assert_true(ads_table_put(s, type, name, (const uint8_t *)val, strlen(val), NULL, 0) >= 0);
}

static int wakes[64];
static void on_pending(struct ads_client *c, void *ud)
{
    (void)c;
    wakes[(intptr_t)ud]++;
}

static struct ads_client *client(struct ads_server *s, intptr_t id)
{
    struct ads_client *c = NULL;
    wakes[id] = 0;
    assert_int_equal(ads_client_new(s, "10.0.0.1:4000", on_pending, (void *)id, &c), 0);
    return c;
}

/* One request, encoded and handed over as bytes. Arrays are NULL-terminated (init: name, version pairs). */
struct rq {
    const char *type, *node, *nonce, *error;
    const char *const *sub, *const *unsub, *const *init;
};

static size_t count(const char *const *v)
{
    size_t n = 0;
    while (v && v[n])
        n++;
    return n;
}

static int send_rq(struct ads_client *c, struct rq q)
{
    Req r = ENVOY__SERVICE__DISCOVERY__V3__DELTA_DISCOVERY_REQUEST__INIT;
    Envoy__Config__Core__V3__Node node = ENVOY__CONFIG__CORE__V3__NODE__INIT;
    Google__Rpc__Status st = GOOGLE__RPC__STATUS__INIT;
    if (q.node) {
        node.id = (char *)q.node;
        r.node = &node;
    }
    r.type_url = (char *)q.type;
    r.n_resource_names_subscribe = count(q.sub);
    r.resource_names_subscribe = (char **)q.sub;
    r.n_resource_names_unsubscribe = count(q.unsub);
    r.resource_names_unsubscribe = (char **)q.unsub;
    size_t ni = count(q.init) / 2;
    Envoy__Service__Discovery__V3__DeltaDiscoveryRequest__InitialResourceVersionsEntry ents[64], *pents[64];
    assert_true(ni <= 64);
    for (size_t i = 0; i < ni; i++) {
        envoy__service__discovery__v3__delta_discovery_request__initial_resource_versions_entry__init(
            &ents[i]);
        ents[i].key = (char *)q.init[2 * i];
        ents[i].value = (char *)q.init[2 * i + 1];
        pents[i] = &ents[i];
    }
    r.n_initial_resource_versions = ni;
    r.initial_resource_versions = pents;
    if (q.nonce) r.response_nonce = (char *)q.nonce;
    if (q.error) {
        st.code = 3;
        st.message = (char *)q.error;
        r.error_detail = &st;
    }
    size_t n = protobuf_c_message_get_packed_size(&r.base);
    uint8_t *buf = malloc(n + 1);
    protobuf_c_message_pack(&r.base, buf);
    int rc = ads_client_recv(c, buf, n);
    free(buf);
    return rc;
}

/* The next response as a ztunnel decodes it, or NULL when there is none. */
static Resp *next(struct ads_client *c)
{
    struct ads_response *r = NULL;
    assert_int_equal(ads_client_next_response(c, &r), 0);
    if (!r) return NULL;
    size_t n = ads_response_size(r);
    uint8_t *buf = malloc(n + 1);
    ads_response_pack(r, buf);
    ads_response_free(r);
    ProtobufCMessage *m = NULL;
    assert_int_equal(
        pb_message_unpack(&envoy__service__discovery__v3__delta_discovery_response__descriptor, buf, n, &m),
        0);
    free(buf);
    return (Resp *)m;
}

static void resp_free(Resp *r)
{
    if (r) protobuf_c_message_free_unpacked(&r->base, NULL);
}

/* The resource named name in r, or NULL. */
static const Envoy__Service__Discovery__V3__Resource *res_of(const Resp *r, const char *name)
{
    for (size_t i = 0; i < r->n_resources; i++)
        if (strcmp(r->resources[i]->name, name) == 0) return r->resources[i];
    return NULL;
}

static bool removed_has(const Resp *r, const char *name)
{
    for (size_t i = 0; i < r->n_removed_resources; i++)
        if (strcmp(r->removed_resources[i], name) == 0) return true;
    return false;
}

/* Checks that r carries name with the table's version and the bytes val. */
static void assert_res(struct ads_server *s, const Resp *r, const char *name, const char *val)
{
    const Envoy__Service__Discovery__V3__Resource *x = res_of(r, name);
    assert_non_null(x);
    assert_string_equal(x->version, ads_table_version(s, r->type_url, name));
    assert_non_null(x->resource);
    assert_string_equal(x->resource->type_url, r->type_url);
    assert_int_equal(x->resource->value.len, strlen(val));
    assert_memory_equal(x->resource->value.data, val, strlen(val));
}

/* Subscribes c (wildcard) to type, takes the first response and ACKs it. */
static void sync_wildcard(struct ads_client *c, const char *type, const char *node)
{
    assert_int_equal(send_rq(c, (struct rq){.type = type, .node = node}), 0);
    Resp *r = next(c);
    assert_non_null(r);
    assert_int_equal(send_rq(c, (struct rq){.type = type, .nonce = r->nonce}), 0);
    resp_free(r);
}

static void test_wildcard_gets_everything(void **state)
{
    (void)state;
    struct ads_server *s = server();
    put(s, ADDR, "Kubernetes//Pod/default/a", "A1");
    put(s, ADDR, "Kubernetes//Pod/default/b", "B1");
    put(s, ADDR, "default/svc.default.svc.cluster.local", "S1");
    ads_table_publish(s, ADDR);
    struct ads_client *c = client(s, 0);
    assert_false(ads_client_pending(c));

    /* ztunnel's first request: node, type, nothing subscribed (istio/ztunnel src/xds/client.rs). */
    assert_int_equal(
        send_rq(c, (struct rq){.type = ADDR, .node = "ztunnel~10.0.0.1~zt.istio-system~istio-system"}), 0);
    assert_int_equal(wakes[0], 1);
    assert_string_equal(ads_client_node_id(c), "ztunnel~10.0.0.1~zt.istio-system~istio-system");
    Resp *r = next(c);
    assert_non_null(r);
    assert_string_equal(r->type_url, ADDR);
    assert_int_equal(r->n_resources, 3);
    assert_int_equal(r->n_removed_resources, 0);
    assert_res(s, r, "Kubernetes//Pod/default/a", "A1");
    assert_res(s, r, "Kubernetes//Pod/default/b", "B1");
    assert_res(s, r, "default/svc.default.svc.cluster.local", "S1");
    assert_string_equal(r->system_version_info, "1");
    assert_true(strlen(r->nonce) > 0);
    assert_null(next(c)); /* nothing more */
    assert_false(ads_client_pending(c));

    /* An empty table still answers the first request, or ztunnel would wait for readiness forever. */
    assert_int_equal(send_rq(c, (struct rq){.type = AUTHZ}), 0);
    assert_int_equal(wakes[0], 2);
    Resp *r2 = next(c);
    assert_non_null(r2);
    assert_string_equal(r2->type_url, AUTHZ);
    assert_int_equal(r2->n_resources, 0);
    assert_int_equal(r2->n_removed_resources, 0);
    assert_string_not_equal(r2->nonce, r->nonce); /* nonces are unique per response */
    assert_null(next(c));
    resp_free(r);
    resp_free(r2);
    ads_server_free(s);
}

/* A real Address decodes from what the client receives, with the Any type URL of the table. */
static void test_real_address_round_trip(void **state)
{
    (void)state;
    struct ads_server *s = server();
    static const uint8_t ip[4] = {10, 0, 1, 2};
    ProtobufCBinaryData addr = {sizeof(ip), (uint8_t *)ip};
    Istio__Workload__Workload w = ISTIO__WORKLOAD__WORKLOAD__INIT;
    w.uid = "Kubernetes//Pod/default/a";
    w.name = "a";
    w.n_addresses = 1;
    w.addresses = &addr;
    Istio__Workload__Address a = ISTIO__WORKLOAD__ADDRESS__INIT;
    a.type_case = ISTIO__WORKLOAD__ADDRESS__TYPE_WORKLOAD;
    a.workload = &w;
    size_t n = protobuf_c_message_get_packed_size(&a.base);
    uint8_t *buf = malloc(n);
    protobuf_c_message_pack(&a.base, buf);
    struct ads_diff d;
    assert_int_equal(ads_table_replace(s, ADDR, &(struct ads_resource_in){w.uid, buf, n}, 1, &d, NULL, 0), 0);
    free(buf);
    struct ads_client *c = client(s, 0);
    assert_int_equal(send_rq(c, (struct rq){.type = ADDR, .node = "n"}), 0);
    Resp *r = next(c);
    assert_int_equal(r->n_resources, 1);
    ProtobufCMessage *m = NULL;
    assert_int_equal(pb_any_unpack(r->resources[0]->resource, &istio__workload__address__descriptor, &m), 0);
    Istio__Workload__Address *got = (Istio__Workload__Address *)m;
    assert_int_equal(got->type_case, ISTIO__WORKLOAD__ADDRESS__TYPE_WORKLOAD);
    assert_string_equal(got->workload->uid, "Kubernetes//Pod/default/a");
    protobuf_c_message_free_unpacked(m, NULL);
    resp_free(r);
    ads_server_free(s);
}

static void test_one_change_sends_only_it(void **state)
{
    (void)state;
    struct ads_server *s = server();
    char name[64], val[64];
    for (int i = 0; i < 10000; i++) {
        snprintf(name, sizeof(name), "Kubernetes//Pod/ns/p%d", i);
        snprintf(val, sizeof(val), "v1-%d", i);
        put(s, ADDR, name, val);
    }
    ads_table_publish(s, ADDR);
    struct ads_client *c = client(s, 0);
    sync_wildcard(c, ADDR, "n");
    assert_false(ads_client_pending(c));

    const char *old = ads_table_version(s, ADDR, "Kubernetes//Pod/ns/p4242");
    char oldv[ADS_VERSION_LEN + 1];
    strcpy(oldv, old);
    put(s, ADDR, "Kubernetes//Pod/ns/p4242", "v2-4242");
    assert_int_equal(wakes[0], 1); /* not before the publish */
    ads_table_publish(s, ADDR);
    assert_int_equal(wakes[0], 2);
    assert_true(ads_client_pending(c));
    Resp *r = next(c);
    assert_non_null(r);
    assert_int_equal(r->n_resources, 1);
    assert_int_equal(r->n_removed_resources, 0);
    assert_res(s, r, "Kubernetes//Pod/ns/p4242", "v2-4242");
    assert_string_not_equal(r->resources[0]->version, oldv);
    assert_string_equal(r->system_version_info, "2");
    struct ads_watch_info wi;
    assert_int_equal(ads_client_watch_info(c, 0, &wi), 0);
    assert_int_equal(wi.last_resources, 1);
    assert_int_equal(wi.last_visited, 1); /* the push looked at the one change, not at the 10 000 entries */
    assert_true(wi.last_bytes > 0 && wi.last_bytes < 200); /* the size of one resource, not of the table */
    assert_int_equal(wi.resources_sent, 10001);
    resp_free(r);
    assert_null(next(c));

    /* Setting the same bytes again is no change: no version, no push. */
    assert_int_equal(
        ads_table_put(s, ADDR, "Kubernetes//Pod/ns/p4242", (const uint8_t *)"v2-4242", 7, NULL, 0), 0);
    ads_table_publish(s, ADDR);
    assert_int_equal(wakes[0], 2);
    assert_false(ads_client_pending(c));
    ads_server_free(s);
}

static void test_removal(void **state)
{
    (void)state;
    struct ads_server *s = server();
    put(s, AUTHZ, "default/allow", "P1");
    put(s, AUTHZ, "default/deny", "P2");
    ads_table_publish(s, AUTHZ);
    struct ads_client *c = client(s, 0);
    sync_wildcard(c, AUTHZ, "n");
    assert_int_equal(ads_table_remove(s, AUTHZ, "default/deny"), 1);
    assert_int_equal(ads_table_remove(s, AUTHZ, "default/deny"), 0);
    assert_int_equal(ads_table_remove(s, AUTHZ, "default/never"), 0);
    ads_table_publish(s, AUTHZ);
    Resp *r = next(c);
    assert_non_null(r);
    assert_int_equal(r->n_resources, 0);
    assert_int_equal(r->n_removed_resources, 1);
    assert_string_equal(r->removed_resources[0], "default/deny");
    assert_null(ads_table_version(s, AUTHZ, "default/deny"));
    resp_free(r);

    /* A full replacement: added, changed, removed, unchanged are counted and only the difference is sent. */
    struct ads_diff d;
    struct ads_resource_in gen[] = {{"default/allow", (const uint8_t *)"P1", 2},
                                    {"default/new", (const uint8_t *)"N", 1}};
    assert_int_equal(ads_table_replace(s, AUTHZ, gen, 2, &d, NULL, 0), 0);
    assert_int_equal(d.added, 1);
    assert_int_equal(d.changed, 0);
    assert_int_equal(d.unchanged, 1);
    assert_int_equal(d.removed, 0);
    r = next(c);
    assert_int_equal(r->n_resources, 1);
    assert_res(s, r, "default/new", "N");
    resp_free(r);
    struct ads_resource_in gen2[] = {{"default/new", (const uint8_t *)"N2", 2}};
    assert_int_equal(ads_table_replace(s, AUTHZ, gen2, 1, &d, NULL, 0), 0);
    assert_int_equal(d.changed, 1);
    assert_int_equal(d.removed, 1);
    r = next(c);
    assert_int_equal(r->n_resources, 1);
    assert_res(s, r, "default/new", "N2");
    assert_int_equal(r->n_removed_resources, 1);
    assert_true(removed_has(r, "default/allow"));
    resp_free(r);
    /* The tombstones are forgotten once every client was told. */
    ads_table_publish(s, AUTHZ);
    struct ads_table_info ti;
    assert_int_equal(ads_table_info(s, AUTHZ, &ti), 0);
    assert_int_equal(ti.resources, 1);
    assert_int_equal(ads_table_replace(s, AUTHZ, gen2, 1, &d, NULL, 0),
                     0); /* unchanged: gc on the next change */
    put(s, AUTHZ, "x/y", "z");
    ads_table_publish(s, AUTHZ);
    assert_int_equal(ads_table_info(s, AUTHZ, &ti), 0);
    assert_int_equal(ti.tombstones, 0);
    ads_server_free(s);
}

static void test_reconnect_initial_versions(void **state)
{
    (void)state;
    struct ads_server *s = server();
    put(s, ADDR, "a", "A1");
    put(s, ADDR, "b", "B1");
    ads_table_publish(s, ADDR);
    char va[ADS_VERSION_LEN + 1], vb_old[ADS_VERSION_LEN + 1];
    strcpy(va, ads_table_version(s, ADDR, "a"));
    strcpy(vb_old, ads_table_version(s, ADDR, "b"));
    /* While the client was away: b changed, c vanished, d appeared. */
    put(s, ADDR, "b", "B2");
    put(s, ADDR, "d", "D1");
    ads_table_publish(s, ADDR);

    /* A content hash: a restarted zmeshd (a new server) gives the same bytes the same version. */
    struct ads_server *s2 = server();
    put(s2, ADDR, "a", "A1");
    assert_string_equal(ads_table_version(s2, ADDR, "a"), va);
    ads_server_free(s2);

    struct ads_client *c = client(s, 0);
    assert_int_equal(
        send_rq(c, (struct rq){.type = ADDR,
                               .node = "n",
                               .init = (const char *[]){"a", va, "b", vb_old, "c", "0123", NULL}}),
        0);
    Resp *r = next(c);
    assert_non_null(r);
    assert_int_equal(r->n_resources, 2); /* b (changed) and d (new); a is unchanged */
    assert_null(res_of(r, "a"));
    assert_res(s, r, "b", "B2");
    assert_res(s, r, "d", "D1");
    assert_int_equal(r->n_removed_resources, 1);
    assert_true(removed_has(r, "c"));
    resp_free(r);
    assert_null(next(c));

    /* Nothing changed at all: the reconnect is answered by an empty response. */
    struct ads_client *c2 = client(s, 1);
    assert_int_equal(
        send_rq(c2, (struct rq){.type = ADDR,
                                .node = "n2",
                                .init = (const char *[]){"a", va, "b", ads_table_version(s, ADDR, "b"), "d",
                                                         ads_table_version(s, ADDR, "d"), NULL}}),
        0);
    r = next(c2);
    assert_non_null(r);
    assert_int_equal(r->n_resources, 0);
    assert_int_equal(r->n_removed_resources, 0);
    resp_free(r);
    /* The wildcard watch does not keep the names of initial_resource_versions (istiod's memory argument). */
    struct ads_watch_info wi;
    ads_client_watch_info(c2, 0, &wi);
    assert_true(wi.wildcard);
    assert_int_equal(wi.names, 0);
    ads_server_free(s);
}

static void test_ack_nack(void **state)
{
    (void)state;
    struct ads_server *s = server();
    put(s, ADDR, "a", "A1");
    ads_table_publish(s, ADDR);
    struct ads_client *c = client(s, 0);
    assert_int_equal(send_rq(c, (struct rq){.type = ADDR, .node = "n"}), 0);
    Resp *r1 = next(c);
    struct ads_watch_info wi;
    ads_client_watch_info(c, 0, &wi);
    assert_string_equal(wi.nonce_sent, r1->nonce);
    assert_string_equal(wi.version_sent, "1");
    assert_string_equal(wi.nonce_acked, "");
    assert_int_equal(wi.sync, ADS_SYNC_STALE); /* sent, not ACKed yet */
    assert_true(wi.last_sent_unix_ms > 0);
    ads_client_watch_info(c, 1, &wi);
    assert_int_equal(wi.sync, ADS_SYNC_NOT_SENT);

    /* NACK: ztunnel names the rejected resources in error_detail.message (client.rs, handle_stream_event). */
    assert_int_equal(send_rq(c, (struct rq){.type = ADDR, .nonce = r1->nonce, .error = "a: bad address"}), 0);
    ads_client_watch_info(c, 0, &wi);
    assert_int_equal(wi.nacks, 1);
    assert_string_equal(wi.nack_message, "a: bad address");
    assert_string_equal(wi.nack_nonce, r1->nonce);
    assert_int_equal(wi.nack_code, 3);
    assert_int_equal(wi.sync, ADS_SYNC_ERROR);
    assert_string_equal(wi.nonce_acked, "");
    assert_null(next(c)); /* a NACK is not answered; the rejected resource is not resent until it changes */

    /* The NACK blocks nothing: the next change is pushed at once. */
    put(s, ADDR, "b", "B1");
    ads_table_publish(s, ADDR);
    Resp *r2 = next(c);
    assert_non_null(r2);
    assert_int_equal(r2->n_resources, 1);
    assert_res(s, r2, "b", "B1");
    /* ACK of the latest nonce: recorded with its system_version_info, and the NACK is cleared. */
    assert_int_equal(send_rq(c, (struct rq){.type = ADDR, .nonce = r2->nonce}), 0);
    ads_client_watch_info(c, 0, &wi);
    assert_int_equal(wi.acks, 1);
    assert_string_equal(wi.nonce_acked, r2->nonce);
    assert_string_equal(wi.version_acked, "2");
    assert_string_equal(wi.nack_message, "");
    assert_int_equal(wi.sync, ADS_SYNC_SYNCED);
    assert_null(next(c)); /* an ACK is not answered either */

    /* A long NACK nonce of multi-byte characters is kept cut on a character boundary: the JSON still builds.
     */
    char longnonce[200] = "";
    for (int i = 0; i < 60; i++)
        strcat(longnonce, "\xc3\xa9");
    assert_int_equal(send_rq(c, (struct rq){.type = ADDR, .nonce = longnonce, .error = "x"}), 0);
    json_t *jn = ads_client_status_json(c);
    assert_non_null(jn);
    json_decref(jn);
    assert_int_equal(send_rq(c, (struct rq){.type = ADDR, .nonce = r2->nonce}), 0); /* ACK again: clears it */

    /* Introspection as JSON carries the same. */
    json_t *j = ads_client_status_json(c);
    assert_non_null(j);
    json_t *t0 = json_array_get(json_object_get(j, "types"), 0);
    assert_string_equal(json_string_value(json_object_get(t0, "version_acked")), "2");
    assert_string_equal(json_string_value(json_object_get(t0, "subscription")), "wildcard");
    assert_string_equal(json_string_value(json_object_get(t0, "sync_status")), "SYNCED");
    assert_true(json_is_null(json_object_get(t0, "last_nack")));
    assert_int_equal(json_integer_value(json_object_get(t0, "nacks")), 2);
    assert_string_equal(json_string_value(json_object_get(j, "node_id")), "n");
    json_decref(j);
    resp_free(r1);
    resp_free(r2);
    ads_server_free(s);
}

static void test_stale_nonce_ignored(void **state)
{
    (void)state;
    struct ads_server *s = server();
    put(s, ADDR, "a", "A1");
    ads_table_publish(s, ADDR);
    struct ads_client *c = client(s, 0);
    /* Explicit subscription, so a subscription change would show. */
    assert_int_equal(send_rq(c, (struct rq){.type = ADDR, .node = "n", .sub = (const char *[]){"a", NULL}}),
                     0);
    Resp *r1 = next(c);
    put(s, ADDR, "a", "A2");
    ads_table_publish(s, ADDR);
    Resp *r2 = next(c);
    assert_non_null(r2);
    /* An ACK of the older response, carrying a subscription: ignored whole, as istiod does. */
    assert_int_equal(
        send_rq(c, (struct rq){.type = ADDR, .nonce = r1->nonce, .sub = (const char *[]){"b", NULL}}), 0);
    struct ads_watch_info wi;
    ads_client_watch_info(c, 0, &wi);
    assert_int_equal(wi.stale, 1);
    assert_int_equal(wi.acks, 0);
    assert_string_equal(wi.nonce_acked, "");
    assert_int_equal(wi.names, 1);
    assert_null(next(c));
    /* A nonce we never sent is just as stale. */
    assert_int_equal(send_rq(c, (struct rq){.type = ADDR, .nonce = "not-ours"}), 0);
    ads_client_watch_info(c, 0, &wi);
    assert_int_equal(wi.stale, 2);
    /* The current one is an ACK. */
    assert_int_equal(send_rq(c, (struct rq){.type = ADDR, .nonce = r2->nonce}), 0);
    ads_client_watch_info(c, 0, &wi);
    assert_int_equal(wi.acks, 1);
    assert_string_equal(wi.nonce_acked, r2->nonce);
    resp_free(r1);
    resp_free(r2);
    ads_server_free(s);
}

static void test_slow_client_gets_latest_once(void **state)
{
    (void)state;
    struct ads_server *s = server();
    put(s, ADDR, "a", "A1");
    put(s, ADDR, "b", "B1");
    put(s, ADDR, "gone", "G1");
    ads_table_publish(s, ADDR);
    struct ads_client *c = client(s, 0);
    sync_wildcard(c, ADDR, "n");
    int w0 = wakes[0];
    /* Three generations the client cannot take (its transport has no room). */
    struct ads_resource_in g1[] = {
        {"a", (const uint8_t *)"A2", 2}, {"b", (const uint8_t *)"B1", 2}, {"gone", (const uint8_t *)"G1", 2}};
    struct ads_resource_in g2[] = {
        {"a", (const uint8_t *)"A3", 2}, {"b", (const uint8_t *)"B1", 2}, {"tmp", (const uint8_t *)"T1", 2}};
    struct ads_resource_in g3[] = {
        {"a", (const uint8_t *)"A4", 2}, {"b", (const uint8_t *)"B2", 2}, {"tmp", (const uint8_t *)"T2", 2}};
    assert_int_equal(ads_table_replace(s, ADDR, g1, 3, NULL, NULL, 0), 0);
    assert_int_equal(ads_table_replace(s, ADDR, g2, 3, NULL, NULL, 0), 0);
    assert_int_equal(ads_table_replace(s, ADDR, g3, 3, NULL, NULL, 0), 0);
    assert_int_equal(wakes[0], w0 + 1); /* woken once, not per generation */
    Resp *r = next(c);
    assert_non_null(r);
    assert_int_equal(r->n_resources, 3);
    assert_res(s, r, "a", "A4");
    assert_res(s, r, "b", "B2");
    assert_res(s, r, "tmp", "T2");
    assert_int_equal(r->n_removed_resources, 1);
    assert_true(removed_has(r, "gone"));
    assert_string_equal(r->system_version_info, "4");
    resp_free(r);
    assert_null(next(c));
    ads_server_free(s);
}

static void test_explicit_subscription(void **state)
{
    (void)state;
    struct ads_server *s = server();
    put(s, ADDR, "a", "A1");
    put(s, ADDR, "b", "B1");
    ads_table_publish(s, ADDR);
    struct ads_client *c = client(s, 0);
    /* ztunnel on demand: subscribe and unsubscribe "*" = subscribed to nothing (client.rs,
     * construct_initial_request), answered with an empty response. */
    assert_int_equal(send_rq(c, (struct rq){.type = ADDR,
                                            .node = "n",
                                            .sub = (const char *[]){"*", NULL},
                                            .unsub = (const char *[]){"*", NULL}}),
                     0);
    Resp *r = next(c);
    assert_non_null(r);
    assert_int_equal(r->n_resources, 0);
    assert_int_equal(r->n_removed_resources, 0);
    struct ads_watch_info wi;
    ads_client_watch_info(c, 0, &wi);
    assert_false(wi.wildcard);
    resp_free(r);

    /* Subscribe to a and to a name that does not exist: a is sent, the other is in removed_resources. */
    assert_int_equal(send_rq(c, (struct rq){.type = ADDR, .sub = (const char *[]){"a", "missing", NULL}}), 0);
    r = next(c);
    assert_non_null(r);
    assert_int_equal(r->n_resources, 1);
    assert_res(s, r, "a", "A1");
    assert_int_equal(r->n_removed_resources, 1);
    assert_true(removed_has(r, "missing"));
    resp_free(r);
    assert_null(next(c));

    /* A change to b, not watched: nothing is sent. */
    put(s, ADDR, "b", "B2");
    ads_table_publish(s, ADDR);
    assert_null(next(c));
    /* A change to a is. */
    put(s, ADDR, "a", "A2");
    ads_table_publish(s, ADDR);
    r = next(c);
    assert_int_equal(r->n_resources, 1);
    assert_res(s, r, "a", "A2");
    resp_free(r);
    /* The name that did not exist appears: sent, since it is subscribed. */
    put(s, ADDR, "missing", "M1");
    ads_table_publish(s, ADDR);
    r = next(c);
    assert_int_equal(r->n_resources, 1);
    assert_res(s, r, "missing", "M1");
    resp_free(r);
    /* Unsubscribed: no answer, and later changes are not sent. */
    assert_int_equal(send_rq(c, (struct rq){.type = ADDR, .unsub = (const char *[]){"a", NULL}}), 0);
    assert_null(next(c));
    put(s, ADDR, "a", "A3");
    ads_table_publish(s, ADDR);
    assert_null(next(c));
    ads_client_watch_info(c, 0, &wi);
    assert_int_equal(wi.names, 1);

    /* Turning the wildcard on sends the full state. */
    assert_int_equal(send_rq(c, (struct rq){.type = ADDR, .sub = (const char *[]){"*", NULL}}), 0);
    r = next(c);
    assert_int_equal(r->n_resources, 3);
    assert_res(s, r, "a", "A3");
    resp_free(r);
    ads_server_free(s);
}

static void test_many_clients_independent(void **state)
{
    (void)state;
    struct ads_server *s = server();
    put(s, ADDR, "a", "A0");
    ads_table_publish(s, ADDR);
    enum { N = 40 };
    struct ads_client *cs[N];
    for (int i = 0; i < N; i++) {
        char node[32];
        snprintf(node, sizeof(node), "node-%d", i);
        cs[i] = client(s, i);
        sync_wildcard(cs[i], ADDR, node);
    }
    /* Even clients take every push; odd ones are stuck. */
    char val[16];
    for (int g = 1; g <= 5; g++) {
        snprintf(val, sizeof(val), "A%d", g);
        put(s, ADDR, "a", val);
        ads_table_publish(s, ADDR);
        for (int i = 0; i < N; i += 2) {
            Resp *r = next(cs[i]);
            assert_non_null(r);
            assert_int_equal(r->n_resources, 1);
            assert_res(s, r, "a", val);
            resp_free(r);
            assert_null(next(cs[i]));
        }
    }
    for (int i = 0; i < N; i++) {
        struct ads_watch_info wi;
        ads_client_watch_info(cs[i], 0, &wi);
        if (i % 2 == 0) {
            assert_int_equal(wi.responses, 6);
            assert_false(wi.pending);
            assert_int_equal(wakes[i], 6);
        } else {
            assert_int_equal(wi.responses, 1);
            assert_true(wi.pending);
            assert_int_equal(wakes[i], 2); /* the first request, then once for all five changes */
            Resp *r = next(cs[i]);
            assert_int_equal(r->n_resources, 1);
            assert_res(s, r, "a", "A5");
            resp_free(r);
        }
    }
    /* A client that goes away leaves the others alone. */
    ads_client_free(cs[3]);
    put(s, ADDR, "a", "A6");
    ads_table_publish(s, ADDR);
    Resp *r = next(cs[4]);
    assert_int_equal(r->n_resources, 1);
    resp_free(r);
    json_t *j = ads_server_status_json(s);
    assert_int_equal(json_array_size(json_object_get(j, "clients")), N - 1);
    json_decref(j);
    ads_server_free(s); /* frees the clients still attached */
}

/* A wildcard watch with names too (envoy's xDS protocol allows both): a name subscribed later is (re)sent, an
 * ACK may carry a subscription change, and unsubscribing "*" leaves the explicit names only. */
static void test_wildcard_and_names(void **state)
{
    (void)state;
    struct ads_server *s = server();
    put(s, ADDR, "a", "A1");
    put(s, ADDR, "b", "B1");
    ads_table_publish(s, ADDR);
    struct ads_client *c = client(s, 0);
    assert_int_equal(send_rq(c, (struct rq){.type = ADDR, .node = "n"}), 0);
    Resp *r = next(c);
    assert_int_equal(r->n_resources, 2);
    /* ACK and subscribe in one request: the ACK counts and the name is answered. */
    assert_int_equal(
        send_rq(c, (struct rq){.type = ADDR, .nonce = r->nonce, .sub = (const char *[]){"a", NULL}}), 0);
    resp_free(r);
    struct ads_watch_info wi;
    ads_client_watch_info(c, 0, &wi);
    assert_int_equal(wi.acks, 1);
    assert_true(wi.wildcard);
    assert_int_equal(wi.names, 1);
    r = next(c);
    assert_non_null(r);
    assert_int_equal(r->n_resources, 1);
    assert_res(s, r, "a", "A1");
    resp_free(r);
    /* Subscribing a name already subscribed changes nothing and is not answered. */
    assert_int_equal(send_rq(c, (struct rq){.type = ADDR, .sub = (const char *[]){"a", NULL}}), 0);
    assert_null(next(c));
    /* Off the wildcard: b is no longer followed, a still is. */
    assert_int_equal(send_rq(c, (struct rq){.type = ADDR, .unsub = (const char *[]){"*", NULL}}), 0);
    assert_null(next(c));
    put(s, ADDR, "b", "B2");
    put(s, ADDR, "a", "A2");
    ads_table_publish(s, ADDR);
    r = next(c);
    assert_int_equal(r->n_resources, 1);
    assert_res(s, r, "a", "A2");
    resp_free(r);
    ads_server_free(s);
}

/* A transport with room pulls from inside the callback: every change is delivered at once, each waking once.
 */
static int eager_got;
static void eager(struct ads_client *c, void *ud)
{
    (void)ud;
    struct ads_response *r;
    while (ads_client_next_response(c, &r) == 0 && r) {
        eager_got++;
        ads_response_free(r);
    }
}

static void test_pull_from_callback(void **state)
{
    (void)state;
    struct ads_server *s = server();
    struct ads_client *c = NULL;
    eager_got = 0;
    assert_int_equal(ads_client_new(s, "p", eager, NULL, &c), 0);
    assert_int_equal(send_rq(c, (struct rq){.type = ADDR, .node = "n"}), 0);
    assert_int_equal(eager_got, 1);
    for (int i = 0; i < 3; i++) {
        put(s, ADDR, "a", i == 0 ? "1" : i == 1 ? "2" : "3");
        ads_table_publish(s, ADDR);
        assert_int_equal(eager_got, 2 + i);
    }
    assert_false(ads_client_pending(c));
    ads_server_free(s);
}

/* A response keeps the bytes it sends even when the table moves on. */
static void test_response_outlives_change(void **state)
{
    (void)state;
    struct ads_server *s = server();
    put(s, ADDR, "a", "first-bytes");
    ads_table_publish(s, ADDR);
    struct ads_client *c = client(s, 0);
    assert_int_equal(send_rq(c, (struct rq){.type = ADDR, .node = "n"}), 0);
    struct ads_response *r = NULL;
    assert_int_equal(ads_client_next_response(c, &r), 0);
    assert_non_null(r);
    assert_int_equal(ads_table_replace(s, ADDR, NULL, 0, NULL, NULL, 0),
                     0); /* a removed: table drops its ref */
    put(s, ADDR, "a", "second");
    ads_table_publish(s, ADDR);
    const Resp *m = ads_response_msg(r);
    assert_int_equal(m->n_resources, 1);
    assert_memory_equal(m->resources[0]->resource->value.data, "first-bytes", 11);
    uint8_t *buf = malloc(ads_response_size(r));
    ads_response_pack(r, buf);
    free(buf);
    ads_client_free(c); /* and even when its client is gone */
    ads_response_free(r);
    ads_server_free(s);
}

static void test_bad_requests(void **state)
{
    (void)state;
    struct ads_server *s = server();
    struct ads_client *c = client(s, 0);
    /* istiod: "missing node information", InvalidArgument. */
    assert_int_equal(send_rq(c, (struct rq){.type = ADDR}), -EINVAL);
    assert_int_equal(ads_client_state(c), ADS_CLIENT_FAILED);
    assert_string_equal(ads_client_error(c), "missing node information");
    assert_int_equal(ads_client_grpc_status(c), ADS_GRPC_INVALID_ARGUMENT);
    assert_int_equal(send_rq(c, (struct rq){.type = ADDR, .node = "n"}), -EINVAL); /* stays failed */
    ads_client_free(c);

    c = client(s, 0);
    static const uint8_t junk[] = {0x0a, 0xff}; /* field 1, length 255, 0 bytes follow */
    assert_int_equal(ads_client_recv(c, junk, sizeof(junk)), -EBADMSG);
    assert_non_null(strstr(ads_client_error(c), "not a valid DeltaDiscoveryRequest"));
    ads_client_free(c);

    c = client(s, 0);
    assert_int_equal(
        send_rq(c, (struct rq){.type = ADDR, .node = "n", .sub = (const char *[]){"ok", "\xc3\x28", NULL}}),
        -EINVAL);
    assert_non_null(strstr(ads_client_error(c), "resource_names_subscribe[1]"));
    assert_non_null(strstr(ads_client_error(c), "not valid UTF-8"));
    ads_client_free(c);

    c = client(s, 0);
    assert_int_equal(send_rq(c, (struct rq){.type = ADDR, .node = "n", .sub = (const char *[]){"", NULL}}),
                     -EINVAL);
    assert_non_null(strstr(ads_client_error(c), "empty resource name"));
    ads_client_free(c);

    /* A type zmeshd does not serve: counted and logged, nothing else. */
    c = client(s, 0);
    assert_int_equal(
        send_rq(c, (struct rq){.type = "type.googleapis.com/envoy.config.cluster.v3.Cluster", .node = "n"}),
        0);
    assert_int_equal(ads_client_state(c), ADS_CLIENT_ACTIVE);
    assert_null(next(c));
    json_t *j = ads_client_status_json(c);
    assert_int_equal(json_integer_value(json_object_get(j, "unknown_type_requests")), 1);
    json_decref(j);
    /* A NACK before any request of the type is recorded, not answered. */
    assert_int_equal(send_rq(c, (struct rq){.type = ADDR, .nonce = "x", .error = "boom"}), 0);
    assert_null(next(c));
    ads_client_free(c);

    /* Owner-side checks: duplicate names leave the table unchanged; bad names are named. */
    char err[256];
    put(s, ADDR, "keep", "K");
    ads_table_publish(s, ADDR);
    struct ads_resource_in dup[] = {{"a", (const uint8_t *)"1", 1}, {"a", (const uint8_t *)"2", 1}};
    assert_int_equal(ads_table_replace(s, ADDR, dup, 2, NULL, err, sizeof(err)), -EINVAL);
    assert_string_equal(err, "resource 1: duplicate name \"a\"");
    assert_non_null(ads_table_version(s, ADDR, "keep"));
    assert_null(ads_table_version(s, ADDR, "a"));
    assert_int_equal(ads_table_put(s, ADDR, "bad\xff", (const uint8_t *)"x", 1, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "not valid UTF-8"));
    assert_int_equal(
        ads_table_put(s, "type.googleapis.com/nope", "a", (const uint8_t *)"x", 1, err, sizeof(err)),
        -ENOENT);
    const char *types[] = {ADDR, ADDR};
    struct ads_server *bad = NULL;
    assert_int_equal(
        ads_server_new(&(struct ads_server_opts){.type_urls = types, .n_types = 2}, &bad, err, sizeof(err)),
        -EINVAL);
    assert_non_null(strstr(err, "listed twice"));
    ads_server_free(s);
}

/* Node metadata (a google.protobuf.Struct) is kept as JSON for zmesh proxy-status. */
static void test_node_metadata_json(void **state)
{
    (void)state;
    struct ads_server *s = server();
    struct ads_client *c = client(s, 0);
    Google__Protobuf__Value vname = GOOGLE__PROTOBUF__VALUE__INIT, vnum = GOOGLE__PROTOBUF__VALUE__INIT;
    vname.kind_case = GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE;
    vname.string_value = "ztunnel-abc";
    vnum.kind_case = GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE;
    vnum.number_value = 2;
    Google__Protobuf__Struct__FieldsEntry f1 = GOOGLE__PROTOBUF__STRUCT__FIELDS_ENTRY__INIT,
                                          f2 = GOOGLE__PROTOBUF__STRUCT__FIELDS_ENTRY__INIT;
    f1.key = "NAME";
    f1.value = &vname;
    f2.key = "N";
    f2.value = &vnum;
    Google__Protobuf__Struct__FieldsEntry *fs[] = {&f1, &f2};
    Google__Protobuf__Struct md = GOOGLE__PROTOBUF__STRUCT__INIT;
    md.n_fields = 2;
    md.fields = fs;
    Envoy__Config__Core__V3__Node node = ENVOY__CONFIG__CORE__V3__NODE__INIT;
    node.id = "ztunnel~10.0.0.9~zt.istio-system~istio-system.svc.cluster.local";
    node.cluster = "Kubernetes";
    node.metadata = &md;
    Req r = ENVOY__SERVICE__DISCOVERY__V3__DELTA_DISCOVERY_REQUEST__INIT;
    r.node = &node;
    r.type_url = ADDR;
    assert_int_equal(ads_client_handle(c, &r), 0);
    json_t *j = ads_client_status_json(c);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "cluster")), "Kubernetes");
    json_t *m = json_object_get(j, "metadata");
    assert_string_equal(json_string_value(json_object_get(m, "NAME")), "ztunnel-abc");
    assert_true(json_real_value(json_object_get(m, "N")) == 2.0);
    assert_string_equal(json_string_value(json_object_get(j, "peer")), "10.0.0.1:4000");
    json_decref(j);
    ads_server_free(s);
}

/* Types are served in turn: a busy Address table does not starve Authorization. */
static void test_types_take_turns(void **state)
{
    (void)state;
    struct ads_server *s = server();
    struct ads_client *c = client(s, 0);
    sync_wildcard(c, ADDR, "n");
    sync_wildcard(c, AUTHZ, "n");
    put(s, ADDR, "a", "A");
    ads_table_publish(s, ADDR);
    put(s, AUTHZ, "p", "P");
    ads_table_publish(s, AUTHZ);
    Resp *r1 = next(c), *r2 = next(c);
    assert_non_null(r1);
    assert_non_null(r2);
    assert_string_not_equal(r1->type_url, r2->type_url);
    assert_null(next(c));
    resp_free(r1);
    resp_free(r2);
    ads_server_free(s);
}

/* A client stuck while more removals than the table remembers happen is told to reconnect. */
static void test_too_far_behind(void **state)
{
    (void)state;
    struct ads_server *s = server();
    enum { N = ADS_TOMBSTONES_MIN + 100 };
    struct ads_resource_in *in = calloc(N, sizeof(*in));
    char(*names)[32] = calloc(N, sizeof(*names));
    for (int i = 0; i < N; i++) {
        snprintf(names[i], sizeof(names[i]), "w%d", i);
        in[i] = (struct ads_resource_in){names[i], (const uint8_t *)"x", 1};
    }
    assert_int_equal(ads_table_replace(s, ADDR, in, N, NULL, NULL, 0), 0);
    struct ads_client *stuck = client(s, 0), *fast = client(s, 1);
    sync_wildcard(stuck, ADDR, "stuck");
    sync_wildcard(fast, ADDR, "fast");
    assert_int_equal(ads_table_replace(s, ADDR, NULL, 0, NULL, NULL, 0), 0);
    /* The fast one takes its removals; the tombstones stay for the stuck one, up to the bound. */
    Resp *r = next(fast);
    assert_int_equal(r->n_removed_resources, N);
    resp_free(r);
    struct ads_table_info ti;
    ads_table_info(s, ADDR, &ti);
    assert_int_equal(ti.tombstones, N); /* the latest generation's removals are all kept */
    /* One more generation: the older removals are cut to the bound, and the stuck client is behind them. */
    put(s, ADDR, "z", "Z");
    ads_table_publish(s, ADDR);
    ads_table_info(s, ADDR, &ti);
    assert_int_equal(ti.tombstones, ADS_TOMBSTONES_MIN);
    r = next(fast);
    assert_int_equal(r->n_resources, 1);
    assert_res(s, r, "z", "Z");
    resp_free(r);
    struct ads_response *out = NULL;
    assert_int_equal(ads_client_next_response(stuck, &out), -ESTALE);
    assert_null(out);
    assert_int_equal(ads_client_grpc_status(stuck), ADS_GRPC_UNAVAILABLE);
    assert_non_null(strstr(ads_client_error(stuck), "reconnect"));
    /* Its reconnect gets the exact difference from initial_resource_versions. */
    ads_client_free(stuck);
    struct ads_client *again = client(s, 2);
    assert_int_equal(send_rq(again, (struct rq){.type = ADDR,
                                                .node = "stuck",
                                                .init = (const char *[]){"w1", "v", "w2", "v", NULL}}),
                     0);
    r = next(again);
    assert_int_equal(r->n_resources, 1);
    assert_res(s, r, "z", "Z");
    assert_int_equal(r->n_removed_resources, 2);
    assert_true(removed_has(r, "w1") && removed_has(r, "w2"));
    resp_free(r);
    free(in);
    free(names);
    ads_server_free(s);
}

/* The scale of the design: 10 000 workloads, 500 wildcard clients. A one-resource change wakes each client
 * once and costs each push one entry, and the clients' full states share the table's bytes. */
static void test_scale(void **state)
{
    (void)state;
    struct ads_server *s = server();
    enum { W = 10000, C = 500 };
    char name[64];
    for (int i = 0; i < W; i++) {
        snprintf(name, sizeof(name), "Kubernetes//Pod/ns/p%d", i);
        put(s, ADDR, name, "payload-of-some-bytes");
    }
    ads_table_publish(s, ADDR);
    struct ads_client **cs = calloc(C, sizeof(*cs));
    struct ads_response **held = calloc(C, sizeof(*held));
    for (int i = 0; i < C; i++) {
        char node[32];
        snprintf(node, sizeof(node), "node-%d", i);
        assert_int_equal(ads_client_new(s, NULL, NULL, NULL, &cs[i]), 0);
        assert_int_equal(send_rq(cs[i], (struct rq){.type = ADDR, .node = node}), 0);
        assert_int_equal(ads_client_next_response(cs[i], &held[i]), 0);
        assert_non_null(held[i]);
        assert_int_equal(ads_response_msg(held[i])->n_resources, W);
    }
    /* Every full response points at the same bytes: one copy in the table, none per client. */
    const Resp *m0 = ads_response_msg(held[0]), *m1 = ads_response_msg(held[C - 1]);
    for (size_t k = 0; k < m0->n_resources; k++) {
        if (strcmp(m0->resources[k]->name, m1->resources[0]->name) == 0) {
            assert_ptr_equal(m0->resources[k]->resource->value.data, m1->resources[0]->resource->value.data);
            break;
        }
    }
    for (int i = 0; i < C; i++) {
        assert_int_equal(send_rq(cs[i], (struct rq){.type = ADDR, .nonce = ads_response_msg(held[i])->nonce}),
                         0);
        ads_response_free(held[i]);
    }
    put(s, ADDR, "Kubernetes//Pod/ns/p777", "changed");
    ads_table_publish(s, ADDR);
    for (int i = 0; i < C; i++) {
        struct ads_response *r = NULL;
        assert_int_equal(ads_client_next_response(cs[i], &r), 0);
        assert_non_null(r);
        assert_int_equal(ads_response_msg(r)->n_resources, 1);
        ads_response_free(r);
        struct ads_watch_info wi;
        ads_client_watch_info(cs[i], 0, &wi);
        assert_int_equal(wi.last_visited, 1);
        assert_int_equal(wi.acks, 1);
    }
    free(cs);
    free(held);
    ads_server_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_wildcard_gets_everything),
        cmocka_unit_test(test_real_address_round_trip),
        cmocka_unit_test(test_one_change_sends_only_it),
        cmocka_unit_test(test_removal),
        cmocka_unit_test(test_reconnect_initial_versions),
        cmocka_unit_test(test_ack_nack),
        cmocka_unit_test(test_stale_nonce_ignored),
        cmocka_unit_test(test_slow_client_gets_latest_once),
        cmocka_unit_test(test_explicit_subscription),
        cmocka_unit_test(test_many_clients_independent),
        cmocka_unit_test(test_wildcard_and_names),
        cmocka_unit_test(test_pull_from_callback),
        cmocka_unit_test(test_response_outlives_change),
        cmocka_unit_test(test_bad_requests),
        cmocka_unit_test(test_node_metadata_json),
        cmocka_unit_test(test_types_take_turns),
        cmocka_unit_test(test_too_far_behind),
        cmocka_unit_test(test_scale),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
