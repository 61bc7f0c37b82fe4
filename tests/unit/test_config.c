/* Unit tests for the local config loader and snapshot lookups (src/mesh/config.c, src/mesh/model.c). */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "core/log.h"
#include "mesh/config.h"

static struct snapshot *load_ok(const char *yaml)
{
    struct snapshot *s = NULL;
    char err[512];
    int rc = config_load_buf(yaml, strlen(yaml), "t.yaml", &s, err, sizeof(err));
    if (rc) fail_msg("load failed (%d): %s", rc, err);
    assert_non_null(s);
    return s;
}

static struct ip_addr ip(const char *s)
{
    struct ip_addr a;
    assert_int_equal(ip_parse(s, &a), 0);
    return a;
}

static void assert_ip(const struct ip_addr *a, const char *want)
{
    char buf[IP_STRLEN];
    assert_string_equal(ip_format(a, buf, sizeof(buf)), want);
}

static const char full_yaml[] =
    "workloads:\n"
    "- uid: c1//v1/Pod/default/server-0\n"
    "  name: server-0\n"
    "  namespace: default\n"
    "  hostname: server-0.example\n"
    "  workloadIps: [\"10.0.2.7\", \"fd00::7\"]\n"
    "  network: net1\n"
    "  protocol: HBONE\n"
    "  trustDomain: td.example\n"
    "  serviceAccount: server\n"
    "  waypoint: {destination: \"default/wp.default.svc.cluster.local\", hboneMtlsPort: 15009}\n"
    "  networkGateway: {destination: \"net2/192.168.1.1\"}\n"
    "  node: node-b\n"
    "  canonicalName: server\n"
    "  canonicalRevision: v1\n"
    "  workloadType: pod\n"
    "  workloadName: server-wl\n"
    "  applicationTunnel: {protocol: PROXY, port: 15088}\n"
    "  services:\n"
    "    \"default/server.default.svc.cluster.local\": {80: 8080, 443: 8443}\n"
    "    \"default/alt.default.svc.cluster.local\": {9000: 9001}\n"
    "  authorizationPolicies: [default/allow-client, istio-system/istio_converted_static_strict]\n"
    "  status: Unhealthy\n"
    "  clusterId: c1\n"
    "  locality: {region: r1, zone: z1, subzone: s1}\n"
    "  capacity: 3\n"
    "- name: client\n"
    "  namespace: default\n"
    "  workloadIps: [\"10.0.1.5\"]\n"
    "  tunnelProtocol: NONE\n"
    "  waypoint: {destination: \"/10.0.9.9\"}\n"
    "services:\n"
    "- name: server\n"
    "  namespace: default\n"
    "  hostname: server.default.svc.cluster.local\n"
    "  vips: [\"/10.96.0.20\", \"net1/fd00:96::20\"]\n"
    "  ports: {443: 0, 80: 8080}\n"
    "  subjectAltNames: [\"spiffe://cluster.local/ns/default/sa/server\"]\n"
    "  waypoint: {destination: \"default/wp.default.svc.cluster.local\"}\n"
    "  loadBalancer: {routingPreferences: [Network, Region, Zone], mode: Failover, healthPolicy: AllowAll}\n"
    "  ipFamilies: Dual\n"
    "policies:\n"
    "- name: allow-client\n"
    "  namespace: default\n"
    "  scope: Namespace\n"
    "  action: Allow\n"
    "  dryRun: true\n"
    "  rules:\n"
    "  - - - principals: [{Exact: \"cluster.local/ns/default/sa/client\"}, {Suffix: \"/sa/admin\"}]\n"
    "        notNamespaces: [{Prefix: \"kube-\"}]\n"
    "      - namespaces: [{Presence: []}]\n"
    "        notPrincipals: [{Presence: []}]\n"
    "    - - destinationPorts: [8080, 9090]\n"
    "        notDestinationPorts: [22]\n"
    "        sourceIps: [\"10.0.0.0/8\", \"fd00::1\"]\n"
    "        notSourceIps: [\"10.9.0.0/16\"]\n"
    "        destinationIps: [\"10.0.2.7\"]\n"
    "        notDestinationIps: [\"10.0.2.8/32\"]\n"
    "        serviceAccounts: [{namespace: default, serviceAccount: client}]\n"
    "        notServiceAccounts: [{namespace: other, serviceAccount: bad}]\n"
    "- name: deny-all\n"
    "  namespace: istio-system\n"
    "  scope: GLOBAL\n"
    "  action: DENY\n";

static void test_full_example(void **state)
{
    (void)state;
    struct snapshot *s = load_ok(full_yaml);
    assert_int_equal(snapshot_n_workloads(s), 2);
    assert_int_equal(snapshot_n_services(s), 1);
    assert_int_equal(snapshot_n_policies(s), 2);

    const struct workload *w = snapshot_workload_at(s, 0);
    assert_string_equal(w->uid, "c1//v1/Pod/default/server-0");
    assert_string_equal(w->name, "server-0");
    assert_string_equal(w->namespace_, "default");
    assert_string_equal(w->hostname, "server-0.example");
    assert_int_equal(w->n_ips, 2);
    assert_ip(&w->ips[0], "10.0.2.7");
    assert_ip(&w->ips[1], "fd00::7");
    assert_string_equal(w->network, "net1");
    assert_int_equal(w->protocol, WL_PROTO_HBONE);
    assert_string_equal(w->trust_domain, "td.example");
    assert_string_equal(w->service_account, "server");
    assert_true(w->waypoint.set);
    assert_true(w->waypoint.is_host);
    assert_string_equal(w->waypoint.ns, "default");
    assert_string_equal(w->waypoint.host, "wp.default.svc.cluster.local");
    assert_int_equal(w->waypoint.hbone_port, 15009);
    assert_true(w->network_gateway.set);
    assert_false(w->network_gateway.is_host);
    assert_string_equal(w->network_gateway.network, "net2");
    assert_ip(&w->network_gateway.ip, "192.168.1.1");
    assert_int_equal(w->network_gateway.hbone_port, 15008);
    assert_string_equal(w->node, "node-b");
    assert_string_equal(w->canonical_name, "server");
    assert_string_equal(w->canonical_revision, "v1");
    assert_string_equal(w->workload_type, "pod");
    assert_string_equal(w->workload_name, "server-wl");
    assert_int_equal(w->app_tunnel_protocol, WL_APP_TUNNEL_PROXY);
    assert_int_equal(w->app_tunnel_port, 15088);
    /* services are sorted by key, ports by port */
    assert_int_equal(w->n_services, 2);
    assert_string_equal(w->services[0].key, "default/alt.default.svc.cluster.local");
    assert_int_equal(w->services[0].n_ports, 1);
    assert_int_equal(w->services[0].ports[0].port, 9000);
    assert_int_equal(w->services[0].ports[0].target, 9001);
    assert_string_equal(w->services[1].key, "default/server.default.svc.cluster.local");
    assert_int_equal(w->services[1].n_ports, 2);
    assert_int_equal(w->services[1].ports[0].port, 80);
    assert_int_equal(w->services[1].ports[0].target, 8080);
    assert_int_equal(w->services[1].ports[1].port, 443);
    assert_int_equal(w->services[1].ports[1].target, 8443);
    assert_int_equal(w->n_authorization_policies, 2);
    assert_string_equal(w->authorization_policies[0], "default/allow-client");
    assert_string_equal(w->authorization_policies[1], "istio-system/istio_converted_static_strict");
    assert_false(w->healthy);
    assert_string_equal(w->cluster_id, "c1");
    assert_string_equal(w->locality.region, "r1");
    assert_string_equal(w->locality.zone, "z1");
    assert_string_equal(w->locality.subzone, "s1");
    assert_int_equal(w->capacity, 3);
    assert_int_equal(w->network_mode, WL_NET_STANDARD);

    const struct workload *c = snapshot_workload_at(s, 1);
    assert_int_equal(c->protocol, WL_PROTO_TCP);
    assert_true(c->waypoint.set);
    assert_false(c->waypoint.is_host);
    assert_string_equal(c->waypoint.network, "");
    assert_ip(&c->waypoint.ip, "10.0.9.9");
    assert_false(c->network_gateway.set);
    assert_string_equal(c->network_gateway.ns, "");

    const struct service *svc = snapshot_service_at(s, 0);
    assert_string_equal(svc->name, "server");
    assert_string_equal(svc->namespace_, "default");
    assert_string_equal(svc->hostname, "server.default.svc.cluster.local");
    assert_int_equal(svc->n_vips, 2);
    assert_string_equal(svc->vips[0].network, "");
    assert_ip(&svc->vips[0].ip, "10.96.0.20");
    assert_string_equal(svc->vips[1].network, "net1");
    assert_ip(&svc->vips[1].ip, "fd00:96::20");
    assert_int_equal(svc->n_ports, 2);
    assert_int_equal(svc->ports[0].port, 80);
    assert_int_equal(svc->ports[0].target, 8080);
    assert_int_equal(svc->ports[1].port, 443);
    assert_int_equal(svc->ports[1].target, 0);
    assert_int_equal(svc->n_sans, 1);
    assert_string_equal(svc->subject_alt_names[0], "spiffe://cluster.local/ns/default/sa/server");
    assert_true(svc->waypoint.set && svc->waypoint.is_host);
    assert_string_equal(svc->waypoint.host, "wp.default.svc.cluster.local");
    assert_int_equal(svc->n_routing_prefs, 3);
    assert_int_equal(svc->routing_prefs[0], LB_SCOPE_NETWORK);
    assert_int_equal(svc->routing_prefs[1], LB_SCOPE_REGION);
    assert_int_equal(svc->routing_prefs[2], LB_SCOPE_ZONE);
    assert_int_equal(svc->lb_mode, LB_MODE_FAILOVER);
    assert_int_equal(svc->health_policy, LB_HEALTH_ALLOW_ALL);
    assert_int_equal(svc->ip_families, IP_FAMILIES_DUAL);

    const struct policy *p = snapshot_policy_at(s, 0);
    assert_string_equal(p->name, "allow-client");
    assert_string_equal(p->namespace_, "default");
    assert_int_equal(p->scope, POLICY_SCOPE_NAMESPACE);
    assert_int_equal(p->action, POLICY_ALLOW);
    assert_true(p->dry_run);
    assert_int_equal(p->n_rules, 1);
    const struct auth_rule *r = &p->rules[0];
    assert_int_equal(r->n_clauses, 2);
    assert_int_equal(r->clauses[0].n_matches, 2);
    const struct auth_match *m = &r->clauses[0].matches[0];
    assert_int_equal(m->n_principals, 2);
    assert_int_equal(m->principals[0].kind, SM_EXACT);
    assert_string_equal(m->principals[0].value, "cluster.local/ns/default/sa/client");
    assert_int_equal(m->principals[1].kind, SM_SUFFIX);
    assert_string_equal(m->principals[1].value, "/sa/admin");
    assert_int_equal(m->n_not_namespaces, 1);
    assert_int_equal(m->not_namespaces[0].kind, SM_PREFIX);
    assert_string_equal(m->not_namespaces[0].value, "kube-");
    assert_int_equal(m->n_namespaces, 0);
    m = &r->clauses[0].matches[1];
    assert_int_equal(m->n_namespaces, 1);
    assert_int_equal(m->namespaces[0].kind, SM_PRESENCE);
    assert_string_equal(m->namespaces[0].value, "");
    assert_int_equal(m->n_not_principals, 1);
    assert_int_equal(m->not_principals[0].kind, SM_PRESENCE);
    assert_int_equal(r->clauses[1].n_matches, 1);
    m = &r->clauses[1].matches[0];
    assert_int_equal(m->n_destination_ports, 2);
    assert_int_equal(m->destination_ports[0], 8080);
    assert_int_equal(m->destination_ports[1], 9090);
    assert_int_equal(m->n_not_destination_ports, 1);
    assert_int_equal(m->not_destination_ports[0], 22);
    assert_int_equal(m->n_source_ips, 2);
    assert_ip(&m->source_ips[0].ip, "10.0.0.0");
    assert_int_equal(m->source_ips[0].len, 8);
    assert_ip(&m->source_ips[1].ip, "fd00::1");
    assert_int_equal(m->source_ips[1].len, 128);
    assert_int_equal(m->n_not_source_ips, 1);
    assert_int_equal(m->not_source_ips[0].len, 16);
    assert_int_equal(m->n_destination_ips, 1);
    assert_int_equal(m->destination_ips[0].len, 32);
    assert_int_equal(m->n_not_destination_ips, 1);
    assert_ip(&m->not_destination_ips[0].ip, "10.0.2.8");
    assert_int_equal(m->n_service_accounts, 1);
    assert_string_equal(m->service_accounts[0].namespace_, "default");
    assert_string_equal(m->service_accounts[0].service_account, "client");
    assert_int_equal(m->n_not_service_accounts, 1);
    assert_string_equal(m->not_service_accounts[0].namespace_, "other");
    assert_string_equal(m->not_service_accounts[0].service_account, "bad");

    p = snapshot_policy_at(s, 1);
    assert_int_equal(p->scope, POLICY_SCOPE_GLOBAL);
    assert_int_equal(p->action, POLICY_DENY);
    assert_false(p->dry_run);
    assert_int_equal(p->n_rules, 0);
    snapshot_unref(s);
}

static void test_lookups(void **state)
{
    (void)state;
    struct snapshot *s = load_ok(full_yaml);
    struct ip_addr a;

    a = ip("10.0.2.7");
    const struct workload *w = snapshot_workload_by_ip(s, "net1", &a);
    assert_non_null(w);
    assert_string_equal(w->name, "server-0");
    a = ip("fd00::7");
    assert_ptr_equal(snapshot_workload_by_ip(s, "net1", &a), w);
    a = ip("10.0.2.7");
    assert_null(snapshot_workload_by_ip(s, "", &a)); /* other network */
    a = ip("10.0.2.8");
    assert_null(snapshot_workload_by_ip(s, "net1", &a));
    a = ip("10.0.1.5");
    assert_string_equal(snapshot_workload_by_ip(s, "", &a)->name, "client");

    assert_ptr_equal(snapshot_workload_by_uid(s, "c1//v1/Pod/default/server-0"), w);
    assert_null(snapshot_workload_by_uid(s, "c1//v1/Pod/default/server-1"));
    /* A missing uid defaults to istiod's format. */
    assert_string_equal(snapshot_workload_by_uid(s, "Kubernetes//v1/Pod/default/client")->name, "client");

    assert_ptr_equal(snapshot_workload_by_name(s, "default", "server-0"), w);
    assert_null(snapshot_workload_by_name(s, "other", "server-0"));
    assert_null(snapshot_workload_by_name(s, "default", "server"));

    a = ip("10.96.0.20");
    const struct service *svc = snapshot_service_by_vip(s, "", &a);
    assert_non_null(svc);
    assert_string_equal(svc->name, "server");
    assert_null(snapshot_service_by_vip(s, "net1", &a));
    a = ip("fd00:96::20");
    assert_ptr_equal(snapshot_service_by_vip(s, "net1", &a), svc);
    a = ip("10.96.0.21");
    assert_null(snapshot_service_by_vip(s, "", &a));

    assert_ptr_equal(snapshot_service_by_host(s, "default/server.default.svc.cluster.local"), svc);
    assert_null(snapshot_service_by_host(s, "other/server.default.svc.cluster.local"));
    assert_null(snapshot_service_by_host(s, "server.default.svc.cluster.local"));

    assert_ptr_equal(snapshot_policy_by_name(s, "default/allow-client"), snapshot_policy_at(s, 0));
    assert_ptr_equal(snapshot_policy_by_name(s, "istio-system/deny-all"), snapshot_policy_at(s, 1));
    assert_null(snapshot_policy_by_name(s, "default/deny-all"));
    size_t n;
    const struct policy *const *pl = snapshot_namespace_policies(s, "default", &n);
    assert_int_equal(n, 1);
    assert_ptr_equal(pl[0], snapshot_policy_at(s, 0));
    assert_null(snapshot_namespace_policies(s, "istio-system", &n));
    assert_int_equal(n, 0);
    pl = snapshot_global_policies(s, &n);
    assert_int_equal(n, 1);
    assert_ptr_equal(pl[0], snapshot_policy_at(s, 1));

    /* Target ports: workload map first, then the service's (> 0), else 0; unknown service port 0. */
    assert_int_equal(service_target_port(svc, w, 80), 8080);
    assert_int_equal(service_target_port(svc, w, 443), 8443);
    const struct workload *client = snapshot_workload_by_name(s, "default", "client");
    assert_int_equal(service_target_port(svc, client, 80), 8080);
    assert_int_equal(service_target_port(svc, client, 443), 0);
    assert_int_equal(service_target_port(svc, NULL, 80), 8080);
    assert_int_equal(service_target_port(svc, w, 9000), 0);
    assert_non_null(workload_service_ports(w, "default", "alt.default.svc.cluster.local"));
    assert_null(workload_service_ports(w, "default", "alt"));

    char buf[128];
    assert_int_equal(workload_spiffe_id(w, buf, sizeof(buf)),
                     (int)strlen("spiffe://td.example/ns/default/sa/server"));
    assert_string_equal(buf, "spiffe://td.example/ns/default/sa/server");
    assert_int_equal(workload_spiffe_id(w, buf, 10), -ENOSPC);

    const struct cidr *blk = &snapshot_policy_at(s, 0)->rules[0].clauses[1].matches[0].source_ips[0];
    a = ip("10.200.3.4");
    assert_true(cidr_contains(blk, &a));
    a = ip("11.0.0.1");
    assert_false(cidr_contains(blk, &a));
    a = ip("fd00::1");
    assert_false(cidr_contains(blk, &a));
    snapshot_unref(s);
}

static void test_defaults_and_empty(void **state)
{
    (void)state;
    struct snapshot *s = load_ok("workloads:\n- name: a\n  namespace: ns\n  workloadIps: [10.1.1.1]\n"
                                 "services:\n- hostname: h.ns\n  namespace: ns\n");
    const struct workload *w = snapshot_workload_at(s, 0);
    assert_string_equal(w->trust_domain, "cluster.local");
    assert_string_equal(w->service_account, "default");
    assert_string_equal(w->cluster_id, "Kubernetes");
    assert_int_equal(w->capacity, 1);
    assert_true(w->healthy);
    assert_int_equal(w->protocol, WL_PROTO_TCP);
    assert_string_equal(w->hostname, "");
    assert_string_equal(w->network, "");
    assert_string_equal(w->node, "");
    assert_string_equal(w->workload_type, "");
    assert_string_equal(w->locality.region, "");
    assert_false(w->waypoint.set);
    assert_int_equal(w->n_services, 0);
    assert_int_equal(w->app_tunnel_protocol, 0);
    char buf[128];
    workload_spiffe_id(w, buf, sizeof(buf));
    assert_string_equal(buf, "spiffe://cluster.local/ns/ns/sa/default");
    const struct service *svc = snapshot_service_at(s, 0);
    assert_int_equal(svc->lb_mode, LB_MODE_STANDARD);
    assert_int_equal(svc->health_policy, LB_HEALTH_ONLY_HEALTHY);
    assert_int_equal(svc->ip_families, IP_FAMILIES_AUTOMATIC);
    assert_ptr_equal(snapshot_service_by_host(s, "ns/h.ns"), svc);
    snapshot_unref(s);

    const char *empties[] = {"", "{}", "# only a comment\n", "workloads:\nservices: []\npolicies: ~\n",
                             "---\n"};
    for (size_t i = 0; i < sizeof(empties) / sizeof(empties[0]); i++) {
        s = load_ok(empties[i]);
        assert_int_equal(snapshot_n_workloads(s), 0);
        assert_int_equal(snapshot_n_services(s), 0);
        assert_int_equal(snapshot_n_policies(s), 0);
        struct ip_addr a = ip("10.0.0.1");
        assert_null(snapshot_workload_by_ip(s, "", &a));
        assert_null(snapshot_workload_by_uid(s, "x"));
        assert_null(snapshot_service_by_host(s, "a/b"));
        snapshot_unref(s);
    }

    /* Older ztunnel examples: a bare list of workloads with a single workloadIp; SCREAMING_CASE enums. */
    s = load_ok("- name: local\n  namespace: default\n  workloadIp: \"127.0.0.1\"\n  protocol: HBONE\n"
                "  status: UNHEALTHY\n  workloadType: DEPLOYMENT\n");
    w = snapshot_workload_at(s, 0);
    assert_int_equal(w->n_ips, 1);
    assert_ip(&w->ips[0], "127.0.0.1");
    assert_false(w->healthy);
    assert_string_equal(w->workload_type, "deployment");
    snapshot_unref(s);

    /* Host-network workloads may share an IP and are not IP-indexed. */
    s = load_ok("workloads:\n- {name: a, workloadIps: [10.0.0.1], networkMode: HostNetwork}\n"
                "- {name: b, workloadIps: [10.0.0.1], networkMode: HOST_NETWORK}\n");
    struct ip_addr a = ip("10.0.0.1");
    assert_null(snapshot_workload_by_ip(s, "", &a));
    assert_int_equal(snapshot_n_workloads(s), 2);
    snapshot_unref(s);
}

struct bad_case {
    const char *yaml;
    const char *prefix; /* exact "file:line:col: field: " */
    const char *reason; /* substring */
};

static const struct bad_case bad_cases[] = {
    {"workloads:\n- name: a\n  uid: u1\n  namespace: ns\n  workloadIps: [\"10.0.0.1\",\n"
     "                \"10.0.0.x\"]\n",
     "t.yaml:6:17: workloads[0].workloadIps[1]: ", "invalid IP address \"10.0.0.x\""},
    {"workloads:\n- name: a\n  protocol: QUIC\n",
     "t.yaml:3:13: workloads[0].protocol: ", "invalid value \"QUIC\" (expected TCP or HBONE)"},
    {"workloads:\n- name: a\n  protocol: hbone\n",
     "t.yaml:3:13: workloads[0].protocol: ", "invalid value \"hbone\""},
    {"workloads:\n- name: a\n  serviceAcount: x\n",
     "t.yaml:3:3: workloads[0].serviceAcount: ", "unknown field \"serviceAcount\""},
    {"servics: []\n", "t.yaml:1:1: servics: ", "unknown field"},
    {"services:\n- hostname: h\n  ports: {80: 70000}\n",
     "t.yaml:3:15: services[0].ports[80]: ", "invalid port \"70000\""},
    {"services:\n- hostname: h\n  ports: {0: 80}\n",
     "t.yaml:3:11: services[0].ports[0]: ", "invalid port \"0\""},
    {"services:\n- hostname: h\n  ports: {80: 1, 80: 2}\n",
     "t.yaml:3:18: services[0].ports[80]: ", "duplicate port 80"},
    {"workloads:\n- {uid: u1, name: a}\n- {uid: u2, name: b}\n- {uid: u1, name: c}\n",
     "t.yaml:4:9: workloads[2].uid: ", "duplicate workload uid \"u1\" (also workloads[0])"},
    {"workloads:\n- {uid: u1, workloadIps: [10.0.0.1]}\n- {uid: u2, network: n, workloadIps: [10.0.0.1]}\n"
     "- {uid: u3, workloadIps: [10.0.0.2, 10.0.0.1]}\n",
     "t.yaml:4:37: workloads[2].workloadIps[1]: ", "duplicate address \"/10.0.0.1\""},
    {"workloads:\n- name: a\n  workloadIps: [10.0.0.1\n",
     "t.yaml:4:1: workloads[0].workloadIps: ", "YAML syntax error"},
    {"workloads:\n  - name: a\n   bad indent: x\n", "t.yaml:3:4: ", "YAML syntax error"},
    {"workloads:\n  name: a\n", "t.yaml:2:3: workloads: ", "expected a list, got a mapping"},
    /* A scalar where a list is expected is an error, not a one-element list (workloadIp takes one). */
    {"workloads:\n- name: a\n  workloadIps: \"10.0.1.2\"\n",
     "t.yaml:3:16: workloads[0].workloadIps: ", "expected a list, got \"10.0.1.2\""},
    {"workloads:\n- name: a\n  workloadIp: [10.0.1.2]\n",
     "t.yaml:3:15: workloads[0].workloadIp: ", "expected an IP address string, got a list"},
    {"services:\n- hostname: h\n  vips: /10.0.0.1\n", "t.yaml:3:9: services[0].vips: ", "expected a list"},
    {"workloads:\n- name: [a]\n", "t.yaml:2:9: workloads[0].name: ", "expected a string, got a list"},
    {"workloads:\n- capacity: lots\n", "t.yaml:2:13: workloads[0].capacity: ", "invalid integer \"lots\""},
    {"workloads:\n- waypoint: {destination: nowhere}\n",
     "t.yaml:2:27: workloads[0].waypoint.destination: ", "invalid destination \"nowhere\""},
    {"workloads:\n- waypoint: {hboneMtlsPort: 15008}\n",
     "t.yaml:2:13: workloads[0].waypoint: ", "destination is required"},
    {"workloads:\n- name: a\n  name: b\n", "t.yaml:3:3: workloads[0].name: ", "duplicate field \"name\""},
    {"workloads:\n- services: {\"nohost\": {80: 80}}\n",
     "t.yaml:2:14: workloads[0].services[\"nohost\"]: ", "invalid service key"},
    {"workloads:\n- applicationTunnel: {protocol: PROXY, port: 0}\n",
     "t.yaml:2:46: workloads[0].applicationTunnel.port: ", "invalid port \"0\""},
    {"services:\n- hostname: h\n  vips: [\"10.0.0.1\"]\n",
     "t.yaml:3:10: services[0].vips[0]: ", "expected \"network/ip\""},
    {"services:\n- hostname: h\n  loadBalancer: {mode: failover}\n",
     "t.yaml:3:24: services[0].loadBalancer.mode: ", "invalid value \"failover\""},
    {"services:\n- name: x\n", "t.yaml:2:3: services[0].hostname: ", "hostname is required"},
    {"services:\n- {hostname: h, namespace: n}\n- {hostname: h, namespace: n}\n",
     "t.yaml:3:14: services[1].hostname: ", "duplicate service \"n/h\""},
    {"policies:\n- name: p\n  action: Audit\n",
     "t.yaml:3:11: policies[0].action: ", "invalid value \"Audit\""},
    {"policies:\n- name: p\n  rules: [[[{sourceIps: [\"10.0.0.0/33\"]}]]]\n",
     "t.yaml:3:26: policies[0].rules[0][0][0].sourceIps[0]: ", "invalid prefix length"},
    {"policies:\n- name: p\n  rules: [[[{principals: [{Regex: x}]}]]]\n",
     "t.yaml:3:28: policies[0].rules[0][0][0].principals[0].Regex: ", "unknown field \"Regex\""},
    {"policies:\n- name: p\n  rules: [[[{principals: [\"x\"]}]]]\n",
     "t.yaml:3:27: policies[0].rules[0][0][0].principals[0]: ", "expected a string match"},
    {"policies:\n- name: p\n  rules: [[[{destinationPorts: [65536]}]]]\n",
     "t.yaml:3:33: policies[0].rules[0][0][0].destinationPorts[0]: ", "invalid port \"65536\""},
    {"policies:\n- name: p\n  rules: [[{namespaces: []}]]\n",
     "t.yaml:3:12: policies[0].rules[0][0]: ", "expected a list of matches, got a mapping"},
    {"policies:\n- name: p\n  dryRun: maybe\n", "t.yaml:3:11: policies[0].dryRun: ", "invalid boolean"},
    {"policies:\n- {name: p, namespace: n}\n- {name: p, namespace: n}\n",
     "t.yaml:3:10: policies[1].name: ", "duplicate policy \"n/p\""},
    /* Builder findings come out at the mark of the field they name, with the walker's path. */
    {"workloads:\n- uid: u1\n  services: {\"ns/a\": {80: 1, 81: 2, 80: 3}}\n",
     "t.yaml:3:37: workloads[0].services[\"ns/a\"][80]: ", "duplicate port 80"},
    {"workloads:\n- uid: u1\n  services: {\"ns/a\": {80: 1}, \"ns/a\": {81: 2}}\n",
     "t.yaml:3:31: workloads[0].services[\"ns/a\"]: ", "duplicate service key \"ns/a\""},
    {"services:\n- hostname: h\n  waypoint: {hboneMtlsPort: 15008}\n",
     "t.yaml:3:13: services[0].waypoint: ", "destination is required"},
    /* A defaulted key has no mark of its own: the resource's start, and the key's name. */
    {"workloads:\n- {name: a, workloadIps: [10.0.0.1]}\n- {name: a, workloadIps: [10.0.0.2]}\n",
     "t.yaml:3:3: workloads[1].uid: ",
     "duplicate workload uid \"Kubernetes//v1/Pod//a\" (also workloads[0])"},
    {"policies:\n- {namespace: n}\n- {namespace: n}\n",
     "t.yaml:3:3: policies[1].name: ", "duplicate policy \"n/\" (also policies[0])"},
    {"a: &x 1\nworkloads: *x\n", "t.yaml:1:1: a: ", "unknown field"},
    {"workloads: &x []\nservices: *x\n", "t.yaml:2:11: services: ", "YAML aliases are not supported"},
    {"{}\n---\n{}\n", "t.yaml:2:1: (root): ", "multiple YAML documents"},
    {"just a string\n", "t.yaml:1:1: (root): ", "expected a mapping"},
    {"workloads:\n- name: \"a\\0b\"\n", "t.yaml:2:9: workloads[0].name: ", "NUL byte"},
};

static void test_errors(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++) {
        const struct bad_case *b = &bad_cases[i];
        struct snapshot *s = (struct snapshot *)0x1;
        char err[512];
        int rc = config_load_buf(b->yaml, strlen(b->yaml), "t.yaml", &s, err, sizeof(err));
        if (rc != -EINVAL) fail_msg("case %zu: rc %d, want -EINVAL (err \"%s\")", i, rc, err);
        assert_ptr_equal(s, (struct snapshot *)0x1);
        if (strncmp(err, b->prefix, strlen(b->prefix)) != 0)
            fail_msg("case %zu: error \"%s\" lacks prefix \"%s\"", i, err, b->prefix);
        if (!strstr(err, b->reason)) fail_msg("case %zu: error \"%s\" lacks \"%s\"", i, err, b->reason);
    }
}

static void test_limits(void **state)
{
    (void)state;
    char err[512];
    struct snapshot *s = NULL;
    /* A string over the 1024-byte bound. */
    size_t n = 2000;
    char *y = malloc(n + 64);
    int len = snprintf(y, 64, "workloads:\n- name: ");
    memset(y + len, 'a', 1100);
    strcpy(y + len + 1100, "\n");
    assert_int_equal(config_load_buf(y, strlen(y), "t.yaml", &s, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "t.yaml:2:9: workloads[0].name: value too long"));
    free(y);
    /* Oversized input is refused before parsing. */
    assert_int_equal(config_load_buf("", CONFIG_MAX_FILE + 1, "big.yaml", &s, err, sizeof(err)), -EFBIG);
    assert_non_null(strstr(err, "big.yaml: file too large"));
    /* Deep nesting stops at the first level the schema does not allow. */
    y = malloc(200001);
    memset(y, '[', 100000);
    memset(y + 100000, ']', 100000);
    y[200000] = '\0';
    assert_int_equal(config_load_buf(y, strlen(y), "t.yaml", &s, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "t.yaml:1:2: workloads[0]: expected a mapping, got a list"));
    free(y);
    /* A tiny error buffer is still NUL-terminated. */
    char small[8];
    assert_int_equal(config_load_buf("x: 1", 4, "t.yaml", &s, small, sizeof(small)), -EINVAL);
    assert_int_equal(strlen(small), 7);
}

static void test_load_file(void **state)
{
    (void)state;
    char path[] = "/tmp/zmesh_test_config_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *yaml = "workloads:\n- {uid: u1, name: a, workloadIps: [10.0.0.1]}\n- {uid: u1}\n";
    assert_int_equal(write(fd, yaml, strlen(yaml)), (ssize_t)strlen(yaml));
    close(fd);
    struct snapshot *s = NULL;
    char err[512], want[256];
    assert_int_equal(config_load_file(path, &s, err, sizeof(err)), -EINVAL);
    snprintf(want, sizeof(want), "%s:3:9: workloads[1].uid: duplicate workload uid", path);
    assert_non_null(strstr(err, want));

    fd = open(path, O_WRONLY | O_TRUNC);
    yaml = "workloads:\n- {uid: u1, name: a, workloadIps: [10.0.0.1]}\n";
    assert_int_equal(write(fd, yaml, strlen(yaml)), (ssize_t)strlen(yaml));
    close(fd);
    assert_int_equal(config_load_file(path, &s, err, sizeof(err)), 0);
    assert_string_equal(snapshot_workload_by_uid(s, "u1")->name, "a");
    snapshot_unref(s);
    unlink(path);

    assert_int_equal(config_load_file(path, &s, err, sizeof(err)), -ENOENT);
    assert_non_null(strstr(err, path));
    assert_int_equal(config_load_file("/tmp", &s, err, sizeof(err)), -EINVAL);
}

static void test_policy_groups(void **state)
{
    (void)state;
    struct snapshot *s = load_ok("policies:\n"
                                 "- {name: a, namespace: ns1, scope: Namespace}\n"
                                 "- {name: b, namespace: ns2, scope: Namespace}\n"
                                 "- {name: c, namespace: ns1, scope: WorkloadSelector}\n"
                                 "- {name: d, namespace: ns1, scope: Namespace}\n"
                                 "- {name: e, namespace: root, scope: Global}\n"
                                 "- {name: f, namespace: ns2, scope: Global}\n");
    size_t n;
    const struct policy *const *pl = snapshot_namespace_policies(s, "ns1", &n);
    assert_int_equal(n, 2);
    assert_string_equal(pl[0]->name, "a");
    assert_string_equal(pl[1]->name, "d");
    pl = snapshot_namespace_policies(s, "ns2", &n);
    assert_int_equal(n, 1);
    assert_string_equal(pl[0]->name, "b");
    assert_null(snapshot_namespace_policies(s, "root", &n));
    pl = snapshot_global_policies(s, &n);
    assert_int_equal(n, 2);
    assert_string_equal(pl[0]->name, "e");
    assert_string_equal(pl[1]->name, "f");
    snapshot_unref(s);
}

static void test_refcount(void **state)
{
    (void)state;
    struct snapshot *s = load_ok(full_yaml);
    assert_int_equal(snapshot_refcount(s), 1);
    snapshot_ref(s);
    snapshot_ref(s);
    assert_int_equal(snapshot_refcount(s), 3);
    const struct workload *w = snapshot_workload_by_uid(s, "c1//v1/Pod/default/server-0");
    snapshot_unref(s);
    snapshot_unref(s);
    assert_int_equal(snapshot_refcount(s), 1);
    /* Still alive: the remaining reference keeps every borrowed pointer valid (ASan checks this). */
    assert_string_equal(w->name, "server-0");
    assert_string_equal(w->services[1].key, "default/server.default.svc.cluster.local");
    snapshot_unref(s);
    snapshot_unref(NULL);
}

/* The shipped example stays valid. Tests run from the repository root; elsewhere this is skipped. */
static void test_example_file(void **state)
{
    (void)state;
    struct snapshot *s = NULL;
    char err[512];
    if (access("examples/localhost.yaml", R_OK) != 0) skip();
    int rc = config_load_file("examples/localhost.yaml", &s, err, sizeof(err));
    if (rc) fail_msg("%s", err);
    assert_int_equal(snapshot_n_workloads(s), 2);
    assert_int_equal(snapshot_n_services(s), 1);
    assert_int_equal(snapshot_n_policies(s), 1);
    struct ip_addr a = ip("127.10.0.1");
    const struct service *svc = snapshot_service_by_vip(s, "", &a);
    assert_non_null(svc);
    a = ip("127.0.0.1");
    const struct workload *w = snapshot_workload_by_ip(s, "", &a);
    assert_non_null(w);
    assert_int_equal(service_target_port(svc, w, 80), 8080);
    snapshot_unref(s);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void test_large(void **state)
{
    (void)state;
    const int nw = 100000, ns = 10000;
    size_t cap = (size_t)nw * 220 + (size_t)ns * 200 + 64, len = 0;
    char *y = malloc(cap);
    assert_non_null(y);
    len += (size_t)snprintf(y + len, cap - len, "workloads:\n");
    for (int i = 0; i < nw; i++)
        len += (size_t)snprintf(
            y + len, cap - len,
            "- {uid: \"c//v1/Pod/ns%d/w%d\", name: w%d, namespace: ns%d, serviceAccount: sa%d, "
            "workloadIps: [10.%d.%d.%d], protocol: HBONE, node: n%d, "
            "services: {\"ns%d/s%d.svc\": {80: 8080}}}\n",
            i % 100, i, i, i % 100, i % 50, i >> 16, (i >> 8) & 255, i & 255, i % 10, i % 100, i % ns);
    len += (size_t)snprintf(y + len, cap - len, "services:\n");
    for (int i = 0; i < ns; i++)
        len +=
            (size_t)snprintf(y + len, cap - len,
                             "- {name: s%d, namespace: ns%d, hostname: s%d.svc, vips: [\"/172.16.%d.%d\"], "
                             "ports: {80: 8080}}\n",
                             i, i % 100, i, i >> 8, i & 255);
    assert_true(len < cap - 1);

    double t0 = now_s();
    struct snapshot *s = NULL;
    char err[512];
    int rc = config_load_buf(y, len, "big.yaml", &s, err, sizeof(err));
    double t1 = now_s();
    if (rc) fail_msg("large load failed: %s", err);
    print_message("loaded %d workloads + %d services (%.1f MB) in %.3f s\n", nw, ns, len / 1e6, t1 - t0);
    assert_int_equal(snapshot_n_workloads(s), nw);
    assert_int_equal(snapshot_n_services(s), ns);

    char buf[64];
    for (int i = 0; i < nw; i += 997) {
        snprintf(buf, sizeof(buf), "10.%d.%d.%d", i >> 16, (i >> 8) & 255, i & 255);
        struct ip_addr a = ip(buf);
        const struct workload *w = snapshot_workload_by_ip(s, "", &a);
        assert_non_null(w);
        snprintf(buf, sizeof(buf), "w%d", i);
        assert_string_equal(w->name, buf);
        snprintf(buf, sizeof(buf), "c//v1/Pod/ns%d/w%d", i % 100, i);
        assert_ptr_equal(snapshot_workload_by_uid(s, buf), w);
        snprintf(buf, sizeof(buf), "ns%d", i % 100);
        char name[32];
        snprintf(name, sizeof(name), "w%d", i);
        assert_ptr_equal(snapshot_workload_by_name(s, buf, name), w);
    }
    for (int i = 0; i < ns; i += 101) {
        snprintf(buf, sizeof(buf), "172.16.%d.%d", i >> 8, i & 255);
        struct ip_addr a = ip(buf);
        const struct service *svc = snapshot_service_by_vip(s, "", &a);
        assert_non_null(svc);
        snprintf(buf, sizeof(buf), "ns%d/s%d.svc", i % 100, i);
        assert_ptr_equal(snapshot_service_by_host(s, buf), svc);
    }
    struct ip_addr miss = ip("10.200.0.1");
    assert_null(snapshot_workload_by_ip(s, "", &miss));
    assert_null(snapshot_workload_by_uid(s, "nope"));
    snapshot_unref(s);
    free(y);
}

/* ---- warnings ---- */

static char cap[8192];

/* Loads yaml with stderr captured into cap; the load must succeed. */
static struct snapshot *load_capture(const char *yaml)
{
    int pfd[2], saved = dup(STDERR_FILENO);
    if (pipe2(pfd, O_NONBLOCK) < 0) abort();
    fcntl(pfd[1], F_SETPIPE_SZ, 1 << 20);
    dup2(pfd[1], STDERR_FILENO);
    struct snapshot *s = NULL;
    char err[512];
    int rc = config_load_buf(yaml, strlen(yaml), "t.yaml", &s, err, sizeof(err));
    dup2(saved, STDERR_FILENO);
    close(saved);
    close(pfd[1]);
    ssize_t n = read(pfd[0], cap, sizeof(cap) - 1);
    cap[n > 0 ? n : 0] = 0;
    close(pfd[0]);
    if (rc) fail_msg("load failed (%d): %s", rc, err);
    return s;
}

static void test_no_usable_ip_warns(void **state)
{
    (void)state;
    log_init("info", false);
    struct snapshot *s = load_capture("workloads:\n- {uid: u1, workloadIps: [10.0.0.1]}\n"
                                      "- {uid: u2, name: b, namespace: ns}\n"
                                      "- {uid: u3, workloadIps: [0.0.0.0, 224.0.0.1, \"::\"]}\n"
                                      "- {uid: u4, networkGateway: {destination: \"/10.9.9.9\"}}\n");
    assert_int_equal(snapshot_n_workloads(s), 4);
    /* One warning for each workload nothing can reach, with its position; none for u1 or u4 (a gateway). */
    const char *w2 = strstr(cap, "workload=\"u2\"");
    const char *w3 = strstr(cap, "workload=\"u3\"");
    assert_non_null(w2);
    assert_non_null(w3);
    assert_null(strstr(cap, "workload=\"u1\""));
    assert_null(strstr(cap, "workload=\"u4\""));
    assert_non_null(strstr(cap, "\twarn\tconfig\tworkload has no usable IP address"));
    assert_non_null(strstr(cap, "at=\"t.yaml:3:3: workloads[1]\""));
    assert_non_null(strstr(w3, "workloadIps=\"unspecified, multicast or broadcast only\""));
    int lines = 0;
    for (const char *p = cap; *p; p++)
        lines += *p == '\n';
    assert_int_equal(lines, 2);
    snapshot_unref(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_example),  cmocka_unit_test(test_no_usable_ip_warns),
        cmocka_unit_test(test_lookups),       cmocka_unit_test(test_defaults_and_empty),
        cmocka_unit_test(test_errors),        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_load_file),     cmocka_unit_test(test_refcount),
        cmocka_unit_test(test_policy_groups), cmocka_unit_test(test_large),
        cmocka_unit_test(test_example_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
