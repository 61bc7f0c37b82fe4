/* Unit tests for the xDS resource codec (src/xds/resource.c): model -> encode -> decode -> the same model for
 * rich resources (every field set), decoding of hand-built protoc-c messages, every rejection with its
 * reason, warnings for what zmesh ignores, the wire form of what is encoded (as istiod writes it), and the
 * resource names. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "google/protobuf/empty.pb-c.h"
#include "google/protobuf/wrappers.pb-c.h"
#include "xds/pb.h"
#include "xds/resource.h"

static struct ip_addr ip(const char *s)
{
    struct ip_addr a;
    assert_int_equal(ip_parse(s, &a), 0);
    return a;
}

/* Warnings captured by the tests (the last few). */
struct warns {
    char msg[8][XDS_REASON_MAX];
    char key[8][160];
    int n;
};

static void on_warn(void *ud, const char *key, const char *msg)
{
    struct warns *w = ud;
    if (w->n < 8) {
        snprintf(w->msg[w->n], sizeof(w->msg[0]), "%s", msg);
        snprintf(w->key[w->n], sizeof(w->key[0]), "%s", key);
    }
    w->n++;
}

/* ---- model equality ---- */

static void gw_equal(const struct gateway_addr *a, const struct gateway_addr *b)
{
    assert_int_equal(a->set, b->set);
    if (!a->set) return;
    assert_int_equal(a->is_host, b->is_host);
    assert_int_equal(a->hbone_port, b->hbone_port);
    if (a->is_host) {
        assert_string_equal(a->ns, b->ns);
        assert_string_equal(a->host, b->host);
    } else {
        assert_string_equal(a->network, b->network);
        assert_true(ip_equal(&a->ip, &b->ip));
    }
}

static void ports_equal(const struct port_map *a, size_t na, const struct port_map *b, size_t nb)
{
    assert_int_equal(na, nb);
    for (size_t i = 0; i < na; i++) {
        assert_int_equal(a[i].port, b[i].port);
        assert_int_equal(a[i].target, b[i].target);
        assert_int_equal(a[i].app_protocol, b[i].app_protocol);
    }
}

static void strs_equal(const char *const *a, size_t na, const char *const *b, size_t nb)
{
    assert_int_equal(na, nb);
    for (size_t i = 0; i < na; i++)
        assert_string_equal(a[i], b[i]);
}

static void wl_equal(const struct workload *a, const struct workload *b)
{
    assert_string_equal(a->uid, b->uid);
    assert_string_equal(a->name, b->name);
    assert_string_equal(a->namespace_, b->namespace_);
    assert_string_equal(a->hostname, b->hostname);
    assert_string_equal(a->network, b->network);
    assert_string_equal(a->trust_domain, b->trust_domain);
    assert_string_equal(a->service_account, b->service_account);
    assert_string_equal(a->node, b->node);
    assert_string_equal(a->cluster_id, b->cluster_id);
    assert_string_equal(a->canonical_name, b->canonical_name);
    assert_string_equal(a->canonical_revision, b->canonical_revision);
    assert_string_equal(a->workload_type, b->workload_type);
    assert_string_equal(a->workload_name, b->workload_name);
    assert_int_equal(a->n_ips, b->n_ips);
    for (size_t i = 0; i < a->n_ips; i++)
        assert_true(ip_equal(&a->ips[i], &b->ips[i]));
    assert_int_equal(a->protocol, b->protocol);
    assert_int_equal(a->healthy, b->healthy);
    assert_int_equal(a->capacity, b->capacity);
    assert_string_equal(a->locality.region, b->locality.region);
    assert_string_equal(a->locality.zone, b->locality.zone);
    assert_string_equal(a->locality.subzone, b->locality.subzone);
    gw_equal(&a->waypoint, &b->waypoint);
    gw_equal(&a->network_gateway, &b->network_gateway);
    assert_int_equal(a->app_tunnel_protocol, b->app_tunnel_protocol);
    assert_int_equal(a->app_tunnel_port, b->app_tunnel_port);
    assert_int_equal(a->n_services, b->n_services);
    for (size_t i = 0; i < a->n_services; i++) {
        assert_string_equal(a->services[i].key, b->services[i].key);
        ports_equal(a->services[i].ports, a->services[i].n_ports, b->services[i].ports,
                    b->services[i].n_ports);
    }
    strs_equal(a->authorization_policies, a->n_authorization_policies, b->authorization_policies,
               b->n_authorization_policies);
    assert_int_equal(a->network_mode, b->network_mode);
}

static void svc_equal(const struct service *a, const struct service *b)
{
    assert_string_equal(a->name, b->name);
    assert_string_equal(a->namespace_, b->namespace_);
    assert_string_equal(a->hostname, b->hostname);
    assert_int_equal(a->n_vips, b->n_vips);
    for (size_t i = 0; i < a->n_vips; i++) {
        assert_string_equal(a->vips[i].network, b->vips[i].network);
        assert_true(ip_equal(&a->vips[i].ip, &b->vips[i].ip));
    }
    ports_equal(a->ports, a->n_ports, b->ports, b->n_ports);
    strs_equal(a->subject_alt_names, a->n_sans, b->subject_alt_names, b->n_sans);
    gw_equal(&a->waypoint, &b->waypoint);
    assert_int_equal(a->n_routing_prefs, b->n_routing_prefs);
    for (size_t i = 0; i < a->n_routing_prefs; i++)
        assert_int_equal(a->routing_prefs[i], b->routing_prefs[i]);
    assert_int_equal(a->lb_mode, b->lb_mode);
    assert_int_equal(a->health_policy, b->health_policy);
    assert_int_equal(a->ip_families, b->ip_families);
}

static void sm_equal(const struct string_match *a, size_t na, const struct string_match *b, size_t nb)
{
    assert_int_equal(na, nb);
    for (size_t i = 0; i < na; i++) {
        assert_int_equal(a[i].kind, b[i].kind);
        assert_string_equal(a[i].value, b[i].value);
    }
}

static void sa_equal(const struct sa_match *a, size_t na, const struct sa_match *b, size_t nb)
{
    assert_int_equal(na, nb);
    for (size_t i = 0; i < na; i++) {
        assert_string_equal(a[i].namespace_, b[i].namespace_);
        assert_string_equal(a[i].service_account, b[i].service_account);
    }
}

static void cidr_equal(const struct cidr *a, size_t na, const struct cidr *b, size_t nb)
{
    assert_int_equal(na, nb);
    for (size_t i = 0; i < na; i++) {
        assert_true(ip_equal(&a[i].ip, &b[i].ip));
        assert_int_equal(a[i].len, b[i].len);
    }
}

static void u16_equal(const uint16_t *a, size_t na, const uint16_t *b, size_t nb)
{
    assert_int_equal(na, nb);
    for (size_t i = 0; i < na; i++)
        assert_int_equal(a[i], b[i]);
}

static void pol_equal(const struct policy *a, const struct policy *b)
{
    assert_string_equal(a->name, b->name);
    assert_string_equal(a->namespace_, b->namespace_);
    assert_int_equal(a->scope, b->scope);
    assert_int_equal(a->action, b->action);
    assert_int_equal(a->dry_run, b->dry_run);
    assert_int_equal(a->n_rules, b->n_rules);
    for (size_t i = 0; i < a->n_rules; i++) {
        assert_int_equal(a->rules[i].n_clauses, b->rules[i].n_clauses);
        for (size_t j = 0; j < a->rules[i].n_clauses; j++) {
            const struct auth_clause *ca = &a->rules[i].clauses[j], *cb = &b->rules[i].clauses[j];
            assert_int_equal(ca->n_matches, cb->n_matches);
            for (size_t k = 0; k < ca->n_matches; k++) {
                const struct auth_match *x = &ca->matches[k], *y = &cb->matches[k];
                sm_equal(x->namespaces, x->n_namespaces, y->namespaces, y->n_namespaces);
                sm_equal(x->not_namespaces, x->n_not_namespaces, y->not_namespaces, y->n_not_namespaces);
                sm_equal(x->principals, x->n_principals, y->principals, y->n_principals);
                sm_equal(x->not_principals, x->n_not_principals, y->not_principals, y->n_not_principals);
                sa_equal(x->service_accounts, x->n_service_accounts, y->service_accounts,
                         y->n_service_accounts);
                sa_equal(x->not_service_accounts, x->n_not_service_accounts, y->not_service_accounts,
                         y->n_not_service_accounts);
                cidr_equal(x->source_ips, x->n_source_ips, y->source_ips, y->n_source_ips);
                cidr_equal(x->not_source_ips, x->n_not_source_ips, y->not_source_ips, y->n_not_source_ips);
                cidr_equal(x->destination_ips, x->n_destination_ips, y->destination_ips,
                           y->n_destination_ips);
                cidr_equal(x->not_destination_ips, x->n_not_destination_ips, y->not_destination_ips,
                           y->n_not_destination_ips);
                u16_equal(x->destination_ports, x->n_destination_ports, y->destination_ports,
                          y->n_destination_ports);
                u16_equal(x->not_destination_ports, x->n_not_destination_ports, y->not_destination_ports,
                          y->n_not_destination_ports);
            }
        }
    }
}

/* ---- rich resources ---- */

static struct ip_addr wl_ips[2];
static const struct port_map sp_a[] = {{80, 8080, 0}, {443, 8443, 0}};
static const struct port_map sp_b[] = {{9090, 0, 0}};
static const struct wl_service_ports wl_svcs[] = {{"ns/a.ns.svc.cluster.local", sp_a, 2},
                                                  {"ns/b.ns.svc.cluster.local", sp_b, 1}};
static const char *const wl_pols[] = {"ns/allow-a", "istio-system/istio_converted_static_strict"};

static struct workload rich_workload(void)
{
    wl_ips[0] = ip("10.0.0.7");
    wl_ips[1] = ip("fd00::7");
    struct workload w = {
        .uid = "cluster1//v1/Pod/ns/pod-7",
        .name = "pod-7",
        .namespace_ = "ns",
        .hostname = "pod-7.example",
        .network = "net1",
        .trust_domain = "td.example",
        .service_account = "sa7",
        .node = "node-1",
        .cluster_id = "cluster1",
        .canonical_name = "app7",
        .canonical_revision = "v2",
        .workload_type = "pod",
        .workload_name = "deploy7",
        .ips = wl_ips,
        .n_ips = 2,
        .protocol = WL_PROTO_HBONE,
        .healthy = false,
        .capacity = 5,
        .locality = {"region1", "zone1", "sub1"},
        .waypoint =
            {.set = true, .is_host = true, .network = "", .ns = "ns", .host = "wp.ns", .hbone_port = 15008},
        .network_gateway = {.set = true,
                            .network = "net2",
                            .ip = ip("192.0.2.1"),
                            .ns = "",
                            .host = "",
                            .hbone_port = 15009},
        .app_tunnel_protocol = WL_APP_TUNNEL_PROXY,
        .app_tunnel_port = 15088,
        .services = wl_svcs,
        .n_services = 2,
        .authorization_policies = wl_pols,
        .n_authorization_policies = 2,
        .network_mode = WL_NET_HOST,
        .spiffe_id = "",
    };
    return w;
}

static struct net_addr svc_vips[2];
static const struct port_map svc_ports[] = {{80, 8080, PORT_PROTO_HTTP11}, {443, 0, PORT_PROTO_TCP}};
static const char *const svc_sans[] = {"spiffe://td/ns/ns/sa/a", "spiffe://td/ns/ns/sa/b"};
static const uint8_t svc_prefs[] = {LB_SCOPE_NETWORK, LB_SCOPE_REGION, LB_SCOPE_ZONE,
                                    LB_SCOPE_SUBZONE, LB_SCOPE_NODE,   LB_SCOPE_CLUSTER};

static struct service rich_service(void)
{
    svc_vips[0] = (struct net_addr){"net1", ip("10.96.0.10")};
    svc_vips[1] = (struct net_addr){"", ip("fd00:96::10")};
    struct service s = {
        .name = "a",
        .namespace_ = "ns",
        .hostname = "a.ns.svc.cluster.local",
        .vips = svc_vips,
        .n_vips = 2,
        .ports = svc_ports,
        .n_ports = 2,
        .subject_alt_names = svc_sans,
        .n_sans = 2,
        .waypoint =
            {.set = true, .network = "net1", .ip = ip("10.0.9.9"), .ns = "", .host = "", .hbone_port = 15008},
        .routing_prefs = svc_prefs,
        .n_routing_prefs = 6,
        .lb_mode = LB_MODE_FAILOVER,
        .health_policy = LB_HEALTH_ALLOW_ALL,
        .ip_families = IP_FAMILIES_DUAL,
    };
    return s;
}

static const struct string_match m_ns[] = {{SM_EXACT, "ns1"}, {SM_PREFIX, "team-"}};
static const struct string_match m_nns[] = {{SM_SUFFIX, "-test"}};
static const struct string_match m_pr[] = {{SM_EXACT, "td/ns/ns1/sa/a"}, {SM_PRESENCE, ""}};
static const struct string_match m_npr[] = {{SM_PRESENCE, ""}};
static const struct sa_match m_sa[] = {{"ns1", "a"}};
static const struct sa_match m_nsa[] = {{"ns2", "b"}, {"ns3", "c"}};
static struct cidr m_src[2], m_nsrc[1], m_dst[1], m_ndst[1];
static const uint16_t m_dp[] = {80, 8080};
static const uint16_t m_ndp[] = {9090};
static struct auth_match p_matches[2];
static struct auth_clause p_clauses[2];
static struct auth_rule p_rules[2];

static struct policy rich_policy(void)
{
    m_src[0] = (struct cidr){ip("10.0.0.0"), 8};
    m_src[1] = (struct cidr){ip("fd00::1"), 128};
    m_nsrc[0] = (struct cidr){ip("10.1.2.3"), 32};
    m_dst[0] = (struct cidr){ip("10.2.0.0"), 16};
    m_ndst[0] = (struct cidr){ip("0.0.0.0"), 0};
    p_matches[0] = (struct auth_match){
        .namespaces = m_ns,
        .n_namespaces = 2,
        .not_namespaces = m_nns,
        .n_not_namespaces = 1,
        .principals = m_pr,
        .n_principals = 2,
        .not_principals = m_npr,
        .n_not_principals = 1,
        .service_accounts = m_sa,
        .n_service_accounts = 1,
        .not_service_accounts = m_nsa,
        .n_not_service_accounts = 2,
        .source_ips = m_src,
        .n_source_ips = 2,
        .not_source_ips = m_nsrc,
        .n_not_source_ips = 1,
        .destination_ips = m_dst,
        .n_destination_ips = 1,
        .not_destination_ips = m_ndst,
        .n_not_destination_ips = 1,
        .destination_ports = m_dp,
        .n_destination_ports = 2,
        .not_destination_ports = m_ndp,
        .n_not_destination_ports = 1,
    };
    p_matches[1] = (struct auth_match){.destination_ports = m_ndp, .n_destination_ports = 1};
    p_clauses[0] = (struct auth_clause){p_matches, 2};
    p_clauses[1] = (struct auth_clause){&p_matches[1], 1};
    p_rules[0] = (struct auth_rule){p_clauses, 2};
    p_rules[1] = (struct auth_rule){NULL, 0}; /* an empty rule: kept, it matches everything */
    struct policy p = {
        .name = "allow-a",
        .namespace_ = "ns",
        .scope = POLICY_SCOPE_WORKLOAD_SELECTOR,
        .action = POLICY_DENY,
        .dry_run = true,
        .rules = p_rules,
        .n_rules = 2,
    };
    return p;
}

static void test_round_trip_workload(void **state)
{
    (void)state;
    struct workload w = rich_workload();
    uint8_t *buf = NULL;
    size_t len = 0;
    char err[XDS_REASON_MAX];
    assert_int_equal(xds_encode_workload(&w, &buf, &len, err, sizeof(err)), 0);
    struct xds_resource r;
    struct warns ws = {0};
    struct xds_decode_opts o = {on_warn, &ws};
    assert_int_equal(xds_resource_decode(PB_TYPE_URL_ADDRESS, buf, len, &o, &r, err, sizeof(err)), 0);
    assert_int_equal(r.kind, BUILDER_WORKLOAD);
    assert_string_equal(r.key, w.uid);
    wl_equal(&w, &r.workload);
    assert_int_equal(ws.n, 0);

    /* Through the builder too: the snapshot's copy encodes to a resource that builds the same workload. */
    struct snapshot_builder *b;
    assert_int_equal(snapshot_builder_new(&b, NULL), 0);
    assert_int_equal(xds_resource_add(b, &r, NULL), 0);
    struct snapshot *s;
    assert_int_equal(builder_finish(b, &s), 0);
    const struct workload *sw = snapshot_workload_by_uid(s, w.uid);
    assert_non_null(sw);
    uint8_t *buf2 = NULL;
    size_t len2 = 0;
    assert_int_equal(xds_encode_workload(sw, &buf2, &len2, err, sizeof(err)), 0);
    assert_int_equal(len2, len);
    assert_memory_equal(buf2, buf, len);
    snapshot_unref(s);
    free(buf2);
    xds_resource_free(&r);
    free(buf);

    /* Unset and default values: TCP, healthy, capacity 1, no gateways, no tunnel, no locality. */
    struct ip_addr a = ip("10.0.0.8");
    struct workload m = {
        .uid = "u8", .name = "n", .namespace_ = "ns", .ips = &a, .n_ips = 1, .healthy = true, .capacity = 1};
    assert_int_equal(xds_encode_workload(&m, &buf, &len, err, sizeof(err)), 0);
    assert_int_equal(xds_resource_decode(PB_TYPE_URL_ADDRESS, buf, len, &o, &r, err, sizeof(err)), 0);
    assert_int_equal(r.workload.capacity, 1);
    assert_true(r.workload.healthy);
    assert_false(r.workload.waypoint.set);
    assert_string_equal(r.workload.workload_type, "deployment"); /* the proto's 0 */
    assert_string_equal(r.workload.trust_domain, "");            /* the builder's default to apply */
    xds_resource_free(&r);
    free(buf);
}

static void test_round_trip_service(void **state)
{
    (void)state;
    struct service s = rich_service();
    uint8_t *buf = NULL;
    size_t len = 0;
    char err[XDS_REASON_MAX];
    assert_int_equal(xds_encode_service(&s, &buf, &len, err, sizeof(err)), 0);
    struct xds_resource r;
    assert_int_equal(xds_resource_decode(PB_TYPE_URL_ADDRESS, buf, len, NULL, &r, err, sizeof(err)), 0);
    assert_int_equal(r.kind, BUILDER_SERVICE);
    assert_string_equal(r.key, "ns/a.ns.svc.cluster.local");
    svc_equal(&s, &r.service);
    xds_resource_free(&r);
    free(buf);
}

static void test_round_trip_policy(void **state)
{
    (void)state;
    struct policy p = rich_policy();
    uint8_t *buf = NULL;
    size_t len = 0;
    char err[XDS_REASON_MAX];
    assert_int_equal(xds_encode_policy(&p, &buf, &len, err, sizeof(err)), 0);
    struct xds_resource r;
    assert_int_equal(xds_resource_decode(PB_TYPE_URL_AUTHORIZATION, buf, len, NULL, &r, err, sizeof(err)), 0);
    assert_int_equal(r.kind, BUILDER_POLICY);
    assert_string_equal(r.key, "ns/allow-a");
    pol_equal(&p, &r.policy);
    xds_resource_free(&r);
    free(buf);
}

/* What is encoded is what istiod sends, read back with protoc-c's own decoder. */
static void test_encoded_wire_form(void **state)
{
    (void)state;
    char err[XDS_REASON_MAX];
    uint8_t *buf;
    size_t len;
    struct workload w = rich_workload();
    assert_int_equal(xds_encode_workload(&w, &buf, &len, err, sizeof(err)), 0);
    Istio__Workload__Address *a = istio__workload__address__unpack(NULL, len, buf);
    assert_non_null(a);
    assert_int_equal(a->type_case, ISTIO__WORKLOAD__ADDRESS__TYPE_WORKLOAD);
    Istio__Workload__Workload *pw = a->workload;
    assert_string_equal(pw->uid, "cluster1//v1/Pod/ns/pod-7");
    assert_int_equal(pw->n_addresses, 2);
    assert_int_equal(pw->addresses[0].len, 4);
    assert_int_equal(pw->addresses[1].len, 16);
    assert_int_equal(pw->tunnel_protocol, ISTIO__WORKLOAD__TUNNEL_PROTOCOL__HBONE);
    assert_int_equal(pw->workload_type, ISTIO__WORKLOAD__WORKLOAD_TYPE__POD);
    assert_int_equal(pw->status, ISTIO__WORKLOAD__WORKLOAD_STATUS__UNHEALTHY);
    assert_int_equal(pw->network_mode, ISTIO__WORKLOAD__NETWORK_MODE__HOST_NETWORK);
    assert_non_null(pw->capacity);
    assert_int_equal(pw->capacity->value, 5);
    assert_int_equal(pw->waypoint->destination_case, ISTIO__WORKLOAD__GATEWAY_ADDRESS__DESTINATION_HOSTNAME);
    assert_string_equal(pw->waypoint->hostname->hostname, "wp.ns");
    assert_int_equal(pw->waypoint->hbone_mtls_port, 15008);
    assert_int_equal(pw->network_gateway->destination_case,
                     ISTIO__WORKLOAD__GATEWAY_ADDRESS__DESTINATION_ADDRESS);
    assert_int_equal(pw->network_gateway->address->length_present_case,
                     ISTIO__WORKLOAD__NETWORK_ADDRESS__LENGTH_PRESENT__NOT_SET);
    assert_int_equal(pw->application_tunnel->protocol, ISTIO__WORKLOAD__APPLICATION_TUNNEL__PROTOCOL__PROXY);
    assert_int_equal(pw->n_services, 2);
    assert_string_equal(pw->services[0]->key, "ns/a.ns.svc.cluster.local");
    assert_int_equal(pw->services[0]->value->ports[1]->target_port, 8443);
    assert_string_equal(pw->locality->subzone, "sub1");
    assert_false(pw->native_tunnel);
    istio__workload__address__free_unpacked(a, NULL);
    free(buf);

    /* Capacity 1 is the default and is not written; HEALTHY and STANDARD are the proto's zeros. */
    w.capacity = 1;
    w.healthy = true;
    w.network_mode = WL_NET_STANDARD;
    w.app_tunnel_protocol = 0;
    w.app_tunnel_port = 0;
    w.locality = (struct locality){"", "", ""};
    assert_int_equal(xds_encode_workload(&w, &buf, &len, err, sizeof(err)), 0);
    a = istio__workload__address__unpack(NULL, len, buf);
    assert_non_null(a);
    assert_null(a->workload->capacity);
    assert_null(a->workload->application_tunnel);
    assert_null(a->workload->locality);
    assert_int_equal(a->workload->status, ISTIO__WORKLOAD__WORKLOAD_STATUS__HEALTHY);
    istio__workload__address__free_unpacked(a, NULL);
    free(buf);

    /* Service VIPs carry no prefix length (istiod's toNetworkAddress). */
    struct service s = rich_service();
    assert_int_equal(xds_encode_service(&s, &buf, &len, err, sizeof(err)), 0);
    a = istio__workload__address__unpack(NULL, len, buf);
    assert_non_null(a);
    assert_int_equal(a->type_case, ISTIO__WORKLOAD__ADDRESS__TYPE_SERVICE);
    assert_int_equal(a->service->addresses[0]->length_present_case,
                     ISTIO__WORKLOAD__NETWORK_ADDRESS__LENGTH_PRESENT__NOT_SET);
    assert_string_equal(a->service->addresses[0]->network, "net1");
    assert_int_equal(a->service->load_balancing->mode, ISTIO__WORKLOAD__LOAD_BALANCING__MODE__FAILOVER);
    assert_int_equal(a->service->load_balancing->routing_preference[0],
                     ISTIO__WORKLOAD__LOAD_BALANCING__SCOPE__NETWORK);
    assert_int_equal(a->service->ip_families, ISTIO__WORKLOAD__IPFAMILIES__DUAL);
    istio__workload__address__free_unpacked(a, NULL);
    free(buf);
    /* No load balancing settings: no LoadBalancing message. */
    s.n_routing_prefs = 0;
    s.lb_mode = 0;
    s.health_policy = 0;
    assert_int_equal(xds_encode_service(&s, &buf, &len, err, sizeof(err)), 0);
    a = istio__workload__address__unpack(NULL, len, buf);
    assert_non_null(a);
    assert_null(a->service->load_balancing);
    istio__workload__address__free_unpacked(a, NULL);
    free(buf);

    /* Policy addresses always carry their length, presence is an Empty. */
    struct policy p = rich_policy();
    assert_int_equal(xds_encode_policy(&p, &buf, &len, err, sizeof(err)), 0);
    Istio__Security__Authorization *pa = istio__security__authorization__unpack(NULL, len, buf);
    assert_non_null(pa);
    Istio__Security__Match *m = pa->rules[0]->clauses[0]->matches[0];
    assert_int_equal(m->source_ips[0]->length, 8);
    assert_int_equal(m->source_ips[1]->length, 128);
    assert_int_equal(m->source_ips[1]->address.len, 16);
    assert_int_equal(m->principals[1]->match_type_case, ISTIO__SECURITY__STRING_MATCH__MATCH_TYPE_PRESENCE);
    assert_non_null(m->principals[1]->presence);
    assert_string_equal(m->not_service_accounts[1]->serviceaccount, "c");
    assert_int_equal(pa->action, ISTIO__SECURITY__ACTION__DENY);
    assert_int_equal(pa->scope, ISTIO__SECURITY__SCOPE__WORKLOAD_SELECTOR);
    assert_true(pa->dry_run);
    assert_int_equal(pa->rules[1]->n_clauses, 0);
    istio__security__authorization__free_unpacked(pa, NULL);
    free(buf);
}

static void test_encode_errors(void **state)
{
    (void)state;
    char err[XDS_REASON_MAX];
    uint8_t *buf = NULL;
    size_t len;
    struct workload w = rich_workload();
    w.workload_type = "statefulset";
    assert_int_equal(xds_encode_workload(&w, &buf, &len, err, sizeof(err)), -EINVAL);
    assert_string_equal(
        err, "workload_type: unknown value \"statefulset\" (expected deployment, cronjob, pod or job)");
    w = rich_workload();
    struct ip_addr bad = {0};
    w.ips = &bad;
    w.n_ips = 1;
    assert_int_equal(xds_encode_workload(&w, &buf, &len, err, sizeof(err)), -EINVAL);
    assert_string_equal(err, "addresses[0]: not an IPv4 or IPv6 address");
    struct service s = rich_service();
    const uint8_t unspecified = LB_SCOPE_UNSPECIFIED;
    s.routing_prefs = &unspecified;
    s.n_routing_prefs = 1;
    assert_int_equal(xds_encode_service(&s, &buf, &len, err, sizeof(err)), -EINVAL);
    assert_string_equal(err, "load_balancing.routing_preference[0]: invalid scope 0");
    struct policy p = rich_policy();
    p.action = 7;
    assert_int_equal(xds_encode_policy(&p, &buf, &len, err, sizeof(err)), -EINVAL);
    assert_string_equal(err, "action: unknown value 7");
    assert_null(buf);
}

static void test_names(void **state)
{
    (void)state;
    char buf[64];
    struct workload w = rich_workload();
    assert_int_equal(xds_workload_name(&w, buf, sizeof(buf)), (int)strlen(w.uid));
    assert_string_equal(buf, "cluster1//v1/Pod/ns/pod-7");
    struct service s = rich_service();
    assert_true(xds_service_name(&s, buf, sizeof(buf)) > 0);
    assert_string_equal(buf, "ns/a.ns.svc.cluster.local");
    struct policy p = rich_policy();
    assert_true(xds_policy_name(&p, buf, sizeof(buf)) > 0);
    assert_string_equal(buf, "ns/allow-a");
    char small[4];
    assert_int_equal(xds_policy_name(&p, small, sizeof(small)), -ENOSPC);
    assert_string_equal(small, "");
}

/* A Workload built by hand as a server would send it, decoded field by field. */
static void test_decode_hand_built(void **state)
{
    (void)state;
    static uint8_t v4[4] = {10, 1, 2, 3};
    ProtobufCBinaryData addrs[1] = {{4, v4}};
    Istio__Workload__Port p80 = ISTIO__WORKLOAD__PORT__INIT;
    p80.service_port = 80;
    p80.target_port = 8080;
    p80.app_protocol = ISTIO__WORKLOAD__APP_PROTOCOL__HTTP11; /* not kept, as ztunnel */
    Istio__Workload__Port *pp[1] = {&p80};
    Istio__Workload__PortList pl = ISTIO__WORKLOAD__PORT_LIST__INIT;
    pl.n_ports = 1;
    pl.ports = pp;
    Istio__Workload__Workload__ServicesEntry se = ISTIO__WORKLOAD__WORKLOAD__SERVICES_ENTRY__INIT;
    se.key = "ns/svc.ns.svc.cluster.local";
    se.value = &pl;
    Istio__Workload__Workload__ServicesEntry *sep[1] = {&se};
    Istio__Workload__NamespacedHostname nh = ISTIO__WORKLOAD__NAMESPACED_HOSTNAME__INIT;
    nh.namespace_ = "ns";
    nh.hostname = "waypoint.ns.svc.cluster.local";
    Istio__Workload__GatewayAddress gw = ISTIO__WORKLOAD__GATEWAY_ADDRESS__INIT;
    gw.destination_case = ISTIO__WORKLOAD__GATEWAY_ADDRESS__DESTINATION_HOSTNAME;
    gw.hostname = &nh;
    gw.hbone_mtls_port = 15008;
    Google__Protobuf__UInt32Value cap = GOOGLE__PROTOBUF__UINT32_VALUE__INIT;
    cap.value = 0; /* present and 0: no share of the load, not the default */
    char *pols[1] = {"ns/p"};
    Istio__Workload__Workload w = ISTIO__WORKLOAD__WORKLOAD__INIT;
    w.uid = "Kubernetes//v1/Pod/ns/a";
    w.name = "a";
    w.namespace_ = "ns";
    w.n_addresses = 1;
    w.addresses = addrs;
    w.tunnel_protocol = ISTIO__WORKLOAD__TUNNEL_PROTOCOL__HBONE;
    w.service_account = "sa";
    w.waypoint = &gw;
    w.workload_type = ISTIO__WORKLOAD__WORKLOAD_TYPE__CRONJOB;
    w.n_services = 1;
    w.services = sep;
    w.n_authorization_policies = 1;
    w.authorization_policies = pols;
    w.capacity = &cap;
    Istio__Workload__Address a = ISTIO__WORKLOAD__ADDRESS__INIT;
    a.type_case = ISTIO__WORKLOAD__ADDRESS__TYPE_WORKLOAD;
    a.workload = &w;

    struct xds_resource r;
    char err[XDS_REASON_MAX];
    struct warns ws = {0};
    struct xds_decode_opts o = {on_warn, &ws};
    assert_int_equal(xds_resource_from_address(&a, &o, &r, err, sizeof(err)), 0);
    assert_int_equal(ws.n, 0);
    assert_string_equal(r.key, "Kubernetes//v1/Pod/ns/a");
    const struct workload *d = &r.workload;
    assert_string_equal(d->name, "a");
    assert_string_equal(d->service_account, "sa");
    assert_string_equal(d->workload_type, "cronjob");
    assert_int_equal(d->n_ips, 1);
    assert_true(ip_equal(&d->ips[0], &(struct ip_addr){.family = AF_INET, .a = {10, 1, 2, 3}}));
    assert_int_equal(d->protocol, WL_PROTO_HBONE);
    assert_true(d->waypoint.set && d->waypoint.is_host);
    assert_string_equal(d->waypoint.host, "waypoint.ns.svc.cluster.local");
    assert_int_equal(d->n_services, 1);
    assert_int_equal(d->services[0].ports[0].port, 80);
    assert_int_equal(d->services[0].ports[0].target, 8080);
    assert_string_equal(d->authorization_policies[0], "ns/p");
    assert_int_equal(d->capacity, 0);
    assert_true(d->healthy);
    /* The model borrows the message's strings: no copy. */
    assert_ptr_equal(d->name, w.name);
    xds_resource_free(&r);
    xds_resource_free(&r); /* idempotent */

    /* A hand-built Authorization. */
    Google__Protobuf__Empty empty = GOOGLE__PROTOBUF__EMPTY__INIT;
    Istio__Security__StringMatch pres = ISTIO__SECURITY__STRING_MATCH__INIT;
    pres.match_type_case = ISTIO__SECURITY__STRING_MATCH__MATCH_TYPE_PRESENCE;
    pres.presence = &empty;
    Istio__Security__StringMatch *np[1] = {&pres};
    Istio__Security__Match m = ISTIO__SECURITY__MATCH__INIT;
    m.n_not_principals = 1;
    m.not_principals = np;
    Istio__Security__Match *mp[1] = {&m};
    Istio__Security__Clause c = ISTIO__SECURITY__CLAUSE__INIT;
    c.n_matches = 1;
    c.matches = mp;
    Istio__Security__Clause *cp[1] = {&c};
    Istio__Security__Rule rule = ISTIO__SECURITY__RULE__INIT;
    rule.n_clauses = 1;
    rule.clauses = cp;
    Istio__Security__Rule *rp[1] = {&rule};
    Istio__Security__Authorization pa = ISTIO__SECURITY__AUTHORIZATION__INIT;
    pa.name = "istio_converted_static_strict";
    pa.namespace_ = "istio-system";
    pa.scope = ISTIO__SECURITY__SCOPE__WORKLOAD_SELECTOR;
    pa.action = ISTIO__SECURITY__ACTION__DENY;
    pa.n_rules = 1;
    pa.rules = rp;
    assert_int_equal(xds_resource_from_authorization(&pa, &o, &r, err, sizeof(err)), 0);
    assert_string_equal(r.key, "istio-system/istio_converted_static_strict");
    assert_int_equal(r.policy.action, POLICY_DENY);
    assert_int_equal(r.policy.n_rules, 1);
    assert_int_equal(r.policy.rules[0].clauses[0].matches[0].n_not_principals, 1);
    assert_int_equal(r.policy.rules[0].clauses[0].matches[0].not_principals[0].kind, SM_PRESENCE);
    xds_resource_free(&r);
}

/* ---- rejections ---- */

static Istio__Workload__Workload base_wl(void)
{
    static uint8_t v4[4] = {10, 0, 0, 1};
    static ProtobufCBinaryData one[1] = {{4, v4}};
    Istio__Workload__Workload w = ISTIO__WORKLOAD__WORKLOAD__INIT;
    w.uid = "u1";
    w.name = "a";
    w.namespace_ = "ns";
    w.n_addresses = 1;
    w.addresses = one;
    return w;
}

static void expect_wl(Istio__Workload__Workload *w, int rc, const char *reason)
{
    Istio__Workload__Address a = ISTIO__WORKLOAD__ADDRESS__INIT;
    a.type_case = ISTIO__WORKLOAD__ADDRESS__TYPE_WORKLOAD;
    a.workload = w;
    struct xds_resource r;
    char err[XDS_REASON_MAX];
    struct warns ws = {0};
    struct xds_decode_opts o = {on_warn, &ws};
    assert_int_equal(xds_resource_from_address(&a, &o, &r, err, sizeof(err)), rc);
    if (rc) assert_string_equal(err, reason);
    xds_resource_free(&r);
}

static void expect_svc(Istio__Workload__Service *s, const char *reason)
{
    Istio__Workload__Address a = ISTIO__WORKLOAD__ADDRESS__INIT;
    a.type_case = ISTIO__WORKLOAD__ADDRESS__TYPE_SERVICE;
    a.service = s;
    struct xds_resource r;
    char err[XDS_REASON_MAX];
    struct warns ws = {0};
    struct xds_decode_opts o = {on_warn, &ws};
    assert_int_equal(xds_resource_from_address(&a, &o, &r, err, sizeof(err)), -EINVAL);
    assert_string_equal(err, reason);
    xds_resource_free(&r);
}

static void test_reject_workload(void **state)
{
    (void)state;
    Istio__Workload__Workload w = base_wl();
    expect_wl(&w, 0, NULL);

    static uint8_t five[5] = {1, 2, 3, 4, 5};
    ProtobufCBinaryData two[2] = {w.addresses[0], {5, five}};
    w.n_addresses = 2;
    w.addresses = two;
    expect_wl(&w, -EINVAL, "addresses[1]: failed to parse address, had 5 bytes");

    w = base_wl();
    w.tunnel_protocol = ISTIO__WORKLOAD__TUNNEL_PROTOCOL__LEGACY_ISTIO_MTLS;
    expect_wl(&w, -EINVAL, "tunnel_protocol: unsupported tunnel protocol: legacy istio mtls");
    w.tunnel_protocol = 9;
    expect_wl(&w, -EINVAL, "tunnel_protocol: unknown enum value 9");

    w = base_wl();
    w.uid = "";
    expect_wl(&w, -EINVAL, "uid: missing");

    w = base_wl();
    Istio__Workload__GatewayAddress gw = ISTIO__WORKLOAD__GATEWAY_ADDRESS__INIT;
    gw.hbone_mtls_port = 15008;
    w.waypoint = &gw;
    expect_wl(&w, -EINVAL, "waypoint: nonempty gateway address is missing address");
    Istio__Workload__NetworkAddress na = ISTIO__WORKLOAD__NETWORK_ADDRESS__INIT;
    na.address = (ProtobufCBinaryData){3, five};
    gw.destination_case = ISTIO__WORKLOAD__GATEWAY_ADDRESS__DESTINATION_ADDRESS;
    gw.address = &na;
    w.waypoint = NULL;
    w.network_gateway = &gw;
    expect_wl(&w, -EINVAL, "network_gateway.address: failed to parse address, had 3 bytes");
    na.address = (ProtobufCBinaryData){4, five};
    na.length_present_case = ISTIO__WORKLOAD__NETWORK_ADDRESS__LENGTH_PRESENT_LENGTH;
    na.length = 24;
    expect_wl(&w, -EINVAL,
              "network_gateway.address.length: a gateway is one address, not a block (length 24)");
    na.length = 32;
    expect_wl(&w, 0, NULL);
    gw.hbone_mtls_port = 70000;
    expect_wl(&w, -EINVAL, "network_gateway.hbone_mtls_port: port 70000 out of range (expected 0-65535)");

    w = base_wl();
    Istio__Workload__ApplicationTunnel at = ISTIO__WORKLOAD__APPLICATION_TUNNEL__INIT;
    at.protocol = 4;
    w.application_tunnel = &at;
    expect_wl(&w, -EINVAL, "application_tunnel.protocol: unknown enum value 4");
    at.protocol = ISTIO__WORKLOAD__APPLICATION_TUNNEL__PROTOCOL__PROXY;
    at.port = 65536;
    expect_wl(&w, -EINVAL, "application_tunnel.port: port 65536 out of range (expected 0-65535)");

    w = base_wl();
    Istio__Workload__Port p = ISTIO__WORKLOAD__PORT__INIT;
    p.service_port = 80;
    p.target_port = 65616; /* ztunnel's "as u16" would make it 80 */
    Istio__Workload__Port *pp[1] = {&p};
    Istio__Workload__PortList pl = ISTIO__WORKLOAD__PORT_LIST__INIT;
    pl.n_ports = 1;
    pl.ports = pp;
    Istio__Workload__Workload__ServicesEntry se = ISTIO__WORKLOAD__WORKLOAD__SERVICES_ENTRY__INIT;
    se.key = "ns/h";
    se.value = &pl;
    Istio__Workload__Workload__ServicesEntry *sep[1] = {&se};
    w.n_services = 1;
    w.services = sep;
    expect_wl(&w, -EINVAL, "services[0].ports[0].target_port: port 65616 out of range (expected 0-65535)");

    w = base_wl();
    w.status = 2;
    expect_wl(&w, -EINVAL, "status: unknown enum value 2");
    w = base_wl();
    w.network_mode = 2;
    expect_wl(&w, -EINVAL, "network_mode: unknown enum value 2");

    /* An Address with neither a Workload nor a Service: ztunnel's words. */
    Istio__Workload__Address a = ISTIO__WORKLOAD__ADDRESS__INIT;
    struct xds_resource r;
    char err[XDS_REASON_MAX];
    assert_int_equal(xds_resource_from_address(&a, NULL, &r, err, sizeof(err)), -EINVAL);
    assert_string_equal(err, "unknown address type");
}

static Istio__Workload__Service base_svc(void)
{
    Istio__Workload__Service s = ISTIO__WORKLOAD__SERVICE__INIT;
    s.name = "a";
    s.namespace_ = "ns";
    s.hostname = "a.ns.svc.cluster.local";
    return s;
}

static void test_reject_service(void **state)
{
    (void)state;
    static uint8_t v4[4] = {10, 96, 0, 1};
    Istio__Workload__NetworkAddress na = ISTIO__WORKLOAD__NETWORK_ADDRESS__INIT;
    na.address = (ProtobufCBinaryData){4, v4};
    na.length_present_case = ISTIO__WORKLOAD__NETWORK_ADDRESS__LENGTH_PRESENT_LENGTH;
    na.length = 24;
    Istio__Workload__NetworkAddress *nap[1] = {&na};
    Istio__Workload__Service s = base_svc();
    s.n_addresses = 1;
    s.addresses = nap;
    expect_svc(&s, "addresses[0].length: CIDR VIPs are not supported (length 24)");
    na.length = 33;
    expect_svc(&s, "addresses[0].length: invalid cidr: prefix length 33 exceeds 32");
    na.address.len = 2;
    expect_svc(&s, "addresses[0]: failed to parse address, had 2 bytes");

    s = base_svc();
    Istio__Workload__Port p = ISTIO__WORKLOAD__PORT__INIT;
    p.service_port = 100000;
    Istio__Workload__Port *pp[1] = {&p};
    s.n_ports = 1;
    s.ports = pp;
    expect_svc(&s, "ports[0].service_port: port 100000 out of range (expected 0-65535)");

    s = base_svc();
    Istio__Workload__WeightedWaypoint ww = ISTIO__WORKLOAD__WEIGHTED_WAYPOINT__INIT;
    Istio__Workload__WeightedWaypoint *wwp[1] = {&ww};
    s.n_weighted_waypoints = 1;
    s.weighted_waypoints = wwp;
    expect_svc(&s, "weighted_waypoints: not supported");

    s = base_svc();
    s.visibility = ISTIO__WORKLOAD__SERVICE__VISIBILITY__NAMESPACE;
    expect_svc(&s, "visibility: NAMESPACE is not supported");

    s = base_svc();
    Istio__Workload__LoadBalancing lb = ISTIO__WORKLOAD__LOAD_BALANCING__INIT;
    Istio__Workload__LoadBalancing__Scope sc[2] = {ISTIO__WORKLOAD__LOAD_BALANCING__SCOPE__REGION,
                                                   ISTIO__WORKLOAD__LOAD_BALANCING__SCOPE__UNSPECIFIED_SCOPE};
    lb.n_routing_preference = 2;
    lb.routing_preference = sc;
    s.load_balancing = &lb;
    expect_svc(&s, "load_balancing.routing_preference[1]: invalid target 0");
    lb.n_routing_preference = 1;
    lb.mode = 4;
    expect_svc(&s, "load_balancing.mode: unknown enum value 4");
    lb.mode = 0;
    lb.health_policy = 2;
    expect_svc(&s, "load_balancing.health_policy: unknown enum value 2");

    s = base_svc();
    s.ip_families = 4;
    expect_svc(&s, "ip_families: unknown enum value 4");
}

static void expect_pol(Istio__Security__Authorization *a, const char *reason)
{
    struct xds_resource r;
    char err[XDS_REASON_MAX];
    assert_int_equal(xds_resource_from_authorization(a, NULL, &r, err, sizeof(err)), -EINVAL);
    assert_string_equal(err, reason);
    xds_resource_free(&r);
}

static void test_reject_policy(void **state)
{
    (void)state;
    Istio__Security__Authorization a = ISTIO__SECURITY__AUTHORIZATION__INIT;
    a.name = "p";
    a.namespace_ = "ns";
    a.scope = 3;
    expect_pol(&a, "scope: unknown enum value 3");
    a.scope = 0;
    a.action = 2; /* AUDIT/CUSTOM do not exist for ztunnel */
    expect_pol(&a, "action: unknown enum value 2");
    a.action = 0;

    Istio__Security__Match m0 = ISTIO__SECURITY__MATCH__INIT, m1 = ISTIO__SECURITY__MATCH__INIT;
    Istio__Security__Match *mp[2] = {&m0, &m1};
    Istio__Security__Clause c = ISTIO__SECURITY__CLAUSE__INIT;
    c.n_matches = 2;
    c.matches = mp;
    Istio__Security__Clause *cp[1] = {&c};
    Istio__Security__Rule r0 = ISTIO__SECURITY__RULE__INIT, r1 = ISTIO__SECURITY__RULE__INIT;
    r1.n_clauses = 1;
    r1.clauses = cp;
    Istio__Security__Rule *rp[2] = {&r0, &r1};
    a.n_rules = 2;
    a.rules = rp;

    Istio__Security__StringMatch none = ISTIO__SECURITY__STRING_MATCH__INIT;
    Istio__Security__StringMatch *sm[1] = {&none};
    m1.n_not_principals = 1;
    m1.not_principals = sm;
    expect_pol(&a, "rules[1].clauses[0].matches[1].not_principals[0]: string match has no match type");
    m1.n_not_principals = 0;

    static uint8_t v4[4] = {10, 0, 0, 0};
    Istio__Security__Address ad = ISTIO__SECURITY__ADDRESS__INIT;
    ad.address = (ProtobufCBinaryData){4, v4};
    ad.length = 33;
    Istio__Security__Address *adp[1] = {&ad};
    m1.n_not_destination_ips = 1;
    m1.not_destination_ips = adp;
    expect_pol(
        &a,
        "rules[1].clauses[0].matches[1].not_destination_ips[0]: invalid cidr: prefix length 33 exceeds 32");
    ad.address.len = 6;
    expect_pol(&a,
               "rules[1].clauses[0].matches[1].not_destination_ips[0]: failed to parse address, had 6 bytes");
    m1.n_not_destination_ips = 0;

    uint32_t ports[2] = {80, 65537};
    m0.n_destination_ports = 2;
    m0.destination_ports = ports;
    expect_pol(
        &a,
        "rules[1].clauses[0].matches[0].destination_ports[1]: port 65537 out of range (expected 0-65535)");
    m0.n_destination_ports = 0;

    Istio__Workload__Extension ext = ISTIO__WORKLOAD__EXTENSION__INIT;
    ext.name = "x";
    Istio__Workload__Extension *ep[1] = {&ext};
    m0.n_extensions = 1;
    m0.extensions = ep;
    expect_pol(&a, "rules[1].clauses[0].matches[0].extensions: not supported");
}

static void test_decode_bytes(void **state)
{
    (void)state;
    struct xds_resource r;
    char err[XDS_REASON_MAX];
    static const uint8_t garbage[] = {0x0a, 0x05, 0x01};
    assert_int_equal(
        xds_resource_decode(PB_TYPE_URL_ADDRESS, garbage, sizeof(garbage), NULL, &r, err, sizeof(err)),
        -EBADMSG);
    assert_string_equal(err, "decode: invalid protobuf message");
    assert_int_equal(xds_resource_decode("type.googleapis.com/envoy.config.cluster.v3.Cluster", garbage, 0,
                                         NULL, &r, err, sizeof(err)),
                     -EPROTOTYPE);
    assert_string_equal(err, "unknown resource type: type.googleapis.com/envoy.config.cluster.v3.Cluster");
    /* An empty Authorization decodes (every field has a zero value); its key is "/" and the builder decides.
     */
    assert_int_equal(xds_resource_decode(PB_TYPE_URL_AUTHORIZATION, garbage, 0, NULL, &r, err, sizeof(err)),
                     0);
    assert_string_equal(r.key, "/");
    xds_resource_free(&r);
}

static void test_warnings(void **state)
{
    (void)state;
    Istio__Workload__Workload w = base_wl();
    Istio__Workload__Extension ext = ISTIO__WORKLOAD__EXTENSION__INIT;
    ext.name = "istio.io/sandwich";
    Istio__Workload__Extension *ep[1] = {&ext};
    w.n_extensions = 1;
    w.extensions = ep;
    w.native_tunnel = true;
    w.workload_type = 7;
    Istio__Workload__Address a = ISTIO__WORKLOAD__ADDRESS__INIT;
    a.type_case = ISTIO__WORKLOAD__ADDRESS__TYPE_WORKLOAD;
    a.workload = &w;
    struct xds_resource r;
    char err[XDS_REASON_MAX];
    struct warns ws = {0};
    struct xds_decode_opts o = {on_warn, &ws};
    assert_int_equal(xds_resource_from_address(&a, &o, &r, err, sizeof(err)), 0);
    assert_int_equal(ws.n, 3);
    assert_string_equal(ws.key[0], "u1");
    assert_string_equal(ws.msg[0], "workload_type: unknown enum value 7, taken as DEPLOYMENT");
    assert_string_equal(ws.msg[1], "native_tunnel: not supported, ignored");
    assert_string_equal(ws.msg[2],
                        "extensions: 1 extension(s) not supported, ignored (first: \"istio.io/sandwich\")");
    assert_string_equal(r.workload.workload_type, "deployment");
    xds_resource_free(&r);

    Istio__Workload__Service s = base_svc();
    s.canonical = true;
    s.ingress_use_waypoint = true;
    s.visibility = 5;
    a.type_case = ISTIO__WORKLOAD__ADDRESS__TYPE_SERVICE;
    a.service = &s;
    ws.n = 0;
    assert_int_equal(xds_resource_from_address(&a, &o, &r, err, sizeof(err)), 0);
    assert_int_equal(ws.n, 3);
    assert_string_equal(ws.msg[0], "visibility: unknown enum value 5, taken as PUBLIC");
    assert_string_equal(ws.msg[1],
                        "canonical: not supported, ignored (a shared VIP resolves to the first service)");
    assert_string_equal(ws.msg[2], "ingress_use_waypoint: not supported, ignored");
    xds_resource_free(&r);

    /* A field this build does not know (a newer istiod): decoded as unknown, warned about. Field 99, varint.
     */
    /* Address.service (2) { hostname (3) = "h", namespace (2) = "ns", field 99 (varint) = 1 }. */
    static const uint8_t unknown[] = {0x12, 0x0a, 0x1a, 0x01, 'h', 0x12, 0x02, 'n', 's', 0x98, 0x06, 0x01};
    ws.n = 0;
    assert_int_equal(
        xds_resource_decode(PB_TYPE_URL_ADDRESS, unknown, sizeof(unknown), &o, &r, err, sizeof(err)), 0);
    assert_int_equal(ws.n, 1);
    assert_string_equal(ws.msg[0], "service: 1 unknown field(s) ignored (first: field 99)");
    assert_string_equal(r.key, "ns/h");
    xds_resource_free(&r);

    /* Deeper down too, named by the field path: Address.workload { uid = "u", locality { field 9 = 1 } },
     * and an unknown field in the Address itself. */
    static const uint8_t deep[] = {0x0a, 0x09, 0xa2, 0x01, 0x01, 'u', 0xc2,
                                   0x01, 0x02, 0x48, 0x01, 0x18, 0x05};
    ws.n = 0;
    assert_int_equal(xds_resource_decode(PB_TYPE_URL_ADDRESS, deep, sizeof(deep), &o, &r, err, sizeof(err)),
                     0);
    assert_int_equal(ws.n, 2);
    assert_string_equal(ws.msg[0], "address: 1 unknown field(s) ignored (first: field 3)");
    assert_string_equal(ws.msg[1], "workload.locality: 1 unknown field(s) ignored (first: field 9)");
    xds_resource_free(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_workload), cmocka_unit_test(test_round_trip_service),
        cmocka_unit_test(test_round_trip_policy),   cmocka_unit_test(test_encoded_wire_form),
        cmocka_unit_test(test_encode_errors),       cmocka_unit_test(test_names),
        cmocka_unit_test(test_decode_hand_built),   cmocka_unit_test(test_reject_workload),
        cmocka_unit_test(test_reject_service),      cmocka_unit_test(test_reject_policy),
        cmocka_unit_test(test_decode_bytes),        cmocka_unit_test(test_warnings),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
