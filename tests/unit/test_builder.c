/* Unit tests for the snapshot builder (src/mesh/builder.c), fed directly with model structs (no YAML):
 * defaults, per-resource validation naming resource and field, rejection of one bad resource alone,
 * collisions, indexes, and equality with the snapshot the YAML loader builds from the same resources. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "mesh/builder.h"
#include "mesh/config.h"

static struct ip_addr ip(const char *s)
{
    struct ip_addr a;
    assert_int_equal(ip_parse(s, &a), 0);
    return a;
}

static struct snapshot_builder *new_builder(bool strict)
{
    struct snapshot_builder *b = NULL;
    struct builder_opts o = {.strict = strict};
    assert_int_equal(snapshot_builder_new(&b, &o), 0);
    return b;
}

static struct snapshot *finish(struct snapshot_builder *b)
{
    struct snapshot *s = NULL;
    assert_int_equal(builder_finish(b, &s), 0);
    assert_non_null(s);
    return s;
}

static void add_wl_ok(struct snapshot_builder *b, const struct workload *w)
{
    struct builder_err e;
    char msg[768];
    int rc = builder_add_workload(b, w, &e);
    if (rc) fail_msg("add_workload: %d %s", rc, builder_err_format(&e, msg, sizeof(msg)));
}

static void test_defaults(void **state)
{
    (void)state;
    struct snapshot_builder *b = new_builder(false);
    struct ip_addr a = ip("10.0.0.1");
    /* Everything unset (NULL strings, zero enums) but a name, a namespace and an address. */
    struct workload w = {.name = "a", .namespace_ = "ns", .ips = &a, .n_ips = 1};
    w.waypoint = (struct gateway_addr){.set = true, .is_host = true, .ns = "ns", .host = "wp"};
    add_wl_ok(b, &w);
    struct service svc = {.namespace_ = "ns", .hostname = "h.ns"};
    svc.waypoint = (struct gateway_addr){.set = true, .ip = ip("10.9.9.9"), .hbone_port = 15010};
    assert_int_equal(builder_add_service(b, &svc, NULL), 0);
    struct policy p = {.name = "p"};
    assert_int_equal(builder_add_policy(b, &p, NULL), 0);
    struct snapshot *s = finish(b);

    const struct workload *g = snapshot_workload_at(s, 0);
    assert_string_equal(g->uid, "Kubernetes//v1/Pod/ns/a");
    assert_string_equal(g->trust_domain, "cluster.local");
    assert_string_equal(g->service_account, "default");
    assert_string_equal(g->cluster_id, "Kubernetes");
    assert_string_equal(g->spiffe_id, "spiffe://cluster.local/ns/ns/sa/default");
    /* NULL inputs come out as "", never NULL. */
    assert_string_equal(g->hostname, "");
    assert_string_equal(g->network, "");
    assert_string_equal(g->node, "");
    assert_string_equal(g->locality.region, "");
    assert_string_equal(g->network_gateway.ns, "");
    assert_false(g->network_gateway.set);
    assert_true(g->waypoint.set);
    assert_int_equal(g->waypoint.hbone_port, BUILDER_DEFAULT_HBONE_PORT);
    assert_string_equal(g->waypoint.network, "");
    assert_ptr_equal(snapshot_workload_by_uid(s, "Kubernetes//v1/Pod/ns/a"), g);

    const struct service *v = snapshot_service_at(s, 0);
    assert_string_equal(v->name, "");
    assert_int_equal(v->waypoint.hbone_port, 15010); /* an explicit port is kept */
    assert_string_equal(v->waypoint.network, "");
    assert_ptr_equal(snapshot_service_by_host(s, "ns/h.ns"), v);
    assert_ptr_equal(snapshot_policy_by_name(s, "/p"), snapshot_policy_at(s, 0));
    snapshot_unref(s);

    /* A cluster id feeds the default uid; given values are kept as they are. */
    b = new_builder(false);
    w = (struct workload){.name = "b",
                          .namespace_ = "ns",
                          .cluster_id = "c1",
                          .trust_domain = "td",
                          .service_account = "sa",
                          .ips = &a,
                          .n_ips = 1};
    add_wl_ok(b, &w);
    s = finish(b);
    g = snapshot_workload_at(s, 0);
    assert_string_equal(g->uid, "c1//v1/Pod/ns/b");
    assert_string_equal(g->spiffe_id, "spiffe://td/ns/ns/sa/sa");
    snapshot_unref(s);
}

/* The input is copied: changing or freeing it after the add does not change the snapshot. */
static void test_input_copied(void **state)
{
    (void)state;
    char uid[] = "u1", key[] = "ns/svc";
    struct ip_addr *ips = malloc(2 * sizeof(*ips));
    struct port_map *pm = malloc(2 * sizeof(*pm));
    assert_non_null(ips);
    assert_non_null(pm);
    ips[0] = ip("10.0.0.2");
    ips[1] = ip("10.0.0.1");
    pm[0] = (struct port_map){443, 8443, 0};
    pm[1] = (struct port_map){80, 8080, 0};
    struct wl_service_ports sp = {key, pm, 2};
    struct workload w = {.uid = uid, .ips = ips, .n_ips = 2, .services = &sp, .n_services = 1};
    struct snapshot_builder *b = new_builder(false);
    add_wl_ok(b, &w);
    uid[0] = 'X';
    key[0] = 'X';
    memset(ips, 0, 2 * sizeof(*ips));
    memset(pm, 0, 2 * sizeof(*pm));
    free(ips);
    free(pm);
    struct snapshot *s = finish(b);
    const struct workload *g = snapshot_workload_by_uid(s, "u1");
    assert_non_null(g);
    assert_int_equal(g->n_ips, 2);
    struct ip_addr a = ip("10.0.0.1");
    assert_ptr_equal(snapshot_workload_by_ip(s, "", &a), g);
    /* Port maps come out sorted by port. */
    assert_string_equal(g->services[0].key, "ns/svc");
    assert_int_equal(g->services[0].ports[0].port, 80);
    assert_int_equal(g->services[0].ports[1].port, 443);
    assert_int_equal(g->services[0].ports[1].target, 8443);
    snapshot_unref(s);
}

struct bad_wl {
    struct workload w;
    const char *msg; /* the whole builder_err_format() text */
};

static void test_workload_errors(void **state)
{
    (void)state;
    static struct ip_addr ips[2];
    static const struct port_map dup_ports[] = {{80, 1, 0}, {81, 2, 0}, {80, 3, 0}}, zero_port[] = {{0, 1, 0}};
    static struct wl_service_ports bad_key[2], dup_key[2], ports_dup[1], ports_zero[1];
    ips[0] = ip("10.0.0.1");
    ips[1] = (struct ip_addr){.family = 7};
    bad_key[0] = (struct wl_service_ports){"ns/ok", NULL, 0};
    bad_key[1] = (struct wl_service_ports){"nohost", NULL, 0};
    dup_key[0] = (struct wl_service_ports){"ns/a", NULL, 0};
    dup_key[1] = (struct wl_service_ports){"ns/a", NULL, 0};
    ports_dup[0] = (struct wl_service_ports){"ns/a", dup_ports, 3};
    ports_zero[0] = (struct wl_service_ports){"ns/a", zero_port, 1};
    char longs[BUILDER_MAX_STR + 2];
    memset(longs, 'n', sizeof(longs) - 1);
    longs[sizeof(longs) - 1] = '\0';
    const struct bad_wl cases[] = {
        {{.uid = "u1", .ips = ips, .n_ips = 2},
         "workload u1: addresses[1]: invalid address (not IPv4 or IPv6)"},
        {{.uid = "u1", .protocol = 2}, "workload u1: tunnel_protocol: unsupported tunnel protocol 2"},
        {{.uid = "u1", .network_mode = 2}, "workload u1: network_mode: unknown network mode 2"},
        {{.uid = "u1", .app_tunnel_protocol = 2},
         "workload u1: application_tunnel: unknown application tunnel protocol 2"},
        {{.uid = "u1", .services = bad_key, .n_services = 2},
         "workload u1: services[1]: invalid service key \"nohost\" (expected \"namespace/hostname\")"},
        {{.uid = "u1", .services = dup_key, .n_services = 2},
         "workload u1: services[1]: duplicate service key \"ns/a\""},
        {{.uid = "u1", .services = ports_dup, .n_services = 1},
         "workload u1: services[0].ports[2]: duplicate port 80"},
        {{.uid = "u1", .services = ports_zero, .n_services = 1},
         "workload u1: services[0].ports[0]: invalid port 0 (expected 1-65535)"},
        {{.uid = "u1", .waypoint = {.hbone_port = 15008}}, "workload u1: waypoint: destination is required"},
        {{.uid = "u1", .network_gateway = {.set = true, .is_host = true, .ns = "ns"}},
         "workload u1: network_gateway: invalid destination (expected a namespace and a hostname)"},
        {{.uid = "u1", .waypoint = {.set = true}},
         "workload u1: waypoint: invalid destination address (not IPv4 or IPv6)"},
        {{.uid = "u1", .network = longs}, "workload u1: network: value too long (limit 1024 bytes)"},
        /* Without a uid the finding names the defaulted one. */
        {{.name = "a", .namespace_ = "ns", .ips = ips, .n_ips = 2},
         "workload Kubernetes//v1/Pod/ns/a: addresses[1]: invalid address (not IPv4 or IPv6)"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct snapshot_builder *b = new_builder(false);
        struct builder_err e;
        char msg[768];
        int rc = builder_add_workload(b, &cases[i].w, &e);
        if (rc != -EINVAL) fail_msg("case %zu: rc %d", i, rc);
        assert_int_equal(e.kind, BUILDER_WORKLOAD);
        builder_err_format(&e, msg, sizeof(msg));
        if (strcmp(msg, cases[i].msg)) fail_msg("case %zu: \"%s\", want \"%s\"", i, msg, cases[i].msg);
        assert_int_equal(builder_count(b, BUILDER_WORKLOAD), 0);
        builder_free(b);
    }
}

static void test_service_policy_errors(void **state)
{
    (void)state;
    struct builder_err e;
    char msg[768];
    struct net_addr vips[2] = {{"", ip("10.96.0.1")}, {"n", {.family = 0}}};
    static const struct port_map ports[] = {{443, 0, 0}, {80, 8080, 0}, {443, 1, 0}};
    static const uint8_t prefs[] = {LB_SCOPE_ZONE, LB_SCOPE_UNSPECIFIED};
    const struct {
        struct service s;
        const char *msg;
    } sc[] = {
        {{.namespace_ = "ns", .name = "x"}, "service ns/: hostname: hostname is required"},
        {{.namespace_ = "ns", .hostname = "h", .vips = vips, .n_vips = 2},
         "service ns/h: addresses[1]: invalid address (not IPv4 or IPv6)"},
        {{.namespace_ = "ns", .hostname = "h", .ports = ports, .n_ports = 3},
         "service ns/h: ports[2]: duplicate port 443"},
        {{.namespace_ = "ns", .hostname = "h", .routing_prefs = prefs, .n_routing_prefs = 2},
         "service ns/h: load_balancing.routing_preference[1]: invalid routing scope 0"},
        {{.namespace_ = "ns", .hostname = "h", .lb_mode = 4},
         "service ns/h: load_balancing.mode: unknown mode 4"},
        {{.namespace_ = "ns", .hostname = "h", .waypoint = {.hbone_port = 1}},
         "service ns/h: waypoint: destination is required"},
    };
    for (size_t i = 0; i < sizeof(sc) / sizeof(sc[0]); i++) {
        struct snapshot_builder *b = new_builder(false);
        assert_int_equal(builder_add_service(b, &sc[i].s, &e), -EINVAL);
        assert_int_equal(e.kind, BUILDER_SERVICE);
        builder_err_format(&e, msg, sizeof(msg));
        if (strcmp(msg, sc[i].msg)) fail_msg("service case %zu: \"%s\", want \"%s\"", i, msg, sc[i].msg);
        builder_free(b);
    }

    /* Policies: a finding deep in the rules names rule, clause, match, list and item. */
    struct cidr blocks[2] = {{ip("10.0.0.0"), 8}, {ip("10.1.0.0"), 33}};
    uint16_t dports[2] = {80, 0};
    struct string_match sms[1] = {{.kind = 9, .value = "x"}};
    struct auth_match m[2] = {{0}, {.source_ips = blocks, .n_source_ips = 2}};
    struct auth_match mp = {.not_destination_ports = dports, .n_not_destination_ports = 2};
    struct auth_match ms = {.principals = sms, .n_principals = 1};
    struct auth_clause cl[2] = {{NULL, 0}, {m, 2}}, clp = {&mp, 1}, cls = {&ms, 1};
    struct auth_rule rules[2] = {{NULL, 0}, {cl, 2}}, rp = {&clp, 1}, rs = {&cls, 1};
    const struct {
        struct policy p;
        const char *msg;
    } pc[] = {
        {{.name = "p", .namespace_ = "ns", .rules = rules, .n_rules = 2},
         "policy ns/p: rules[1].clauses[1].matches[1].source_ips[1]: invalid prefix length 33 (expected "
         "0-32)"},
        {{.name = "p", .namespace_ = "ns", .rules = &rp, .n_rules = 1},
         "policy ns/p: rules[0].clauses[0].matches[0].not_destination_ports[1]: invalid port 0 (expected "
         "1-65535)"},
        {{.name = "p", .namespace_ = "ns", .rules = &rs, .n_rules = 1},
         "policy ns/p: rules[0].clauses[0].matches[0].principals[0]: unknown string match kind 9"},
        {{.name = "p", .namespace_ = "ns", .scope = 3}, "policy ns/p: scope: unknown scope 3"},
        {{.name = "p", .namespace_ = "ns", .action = 2}, "policy ns/p: action: unknown action 2"},
    };
    for (size_t i = 0; i < sizeof(pc) / sizeof(pc[0]); i++) {
        struct snapshot_builder *b = new_builder(false);
        assert_int_equal(builder_add_policy(b, &pc[i].p, &e), -EINVAL);
        assert_int_equal(e.kind, BUILDER_POLICY);
        builder_err_format(&e, msg, sizeof(msg));
        if (strcmp(msg, pc[i].msg)) fail_msg("policy case %zu: \"%s\", want \"%s\"", i, msg, pc[i].msg);
        builder_free(b);
    }
    /* The structured form the YAML walker maps to marks. */
    struct snapshot_builder *b = new_builder(false);
    assert_int_equal(builder_add_policy(b, &pc[0].p, &e), -EINVAL);
    assert_int_equal(e.field, BF_POL_SOURCE_IPS);
    assert_int_equal(e.n_idx, 4);
    assert_int_equal(e.idx[0], 1);
    assert_int_equal(e.idx[1], 1);
    assert_int_equal(e.idx[2], 1);
    assert_int_equal(e.idx[3], 1);
    assert_string_equal(e.resource, "ns/p");
    assert_string_equal(e.path, "rules[1].clauses[1].matches[1].source_ips[1]");
    builder_free(b);
}

/* A bad resource is rejected alone: those before and after it are in the snapshot, it is not. */
static void test_bad_rejected_alone(void **state)
{
    (void)state;
    struct snapshot_builder *b = new_builder(false);
    struct ip_addr a1 = ip("10.0.0.1"), a2 = ip("10.0.0.2"), bad = {.family = 0};
    struct workload w1 = {.uid = "u1", .ips = &a1, .n_ips = 1};
    struct workload wbad = {.uid = "u2", .ips = &bad, .n_ips = 1};
    struct workload w3 = {.uid = "u3", .ips = &a2, .n_ips = 1};
    struct builder_err e;
    add_wl_ok(b, &w1);
    assert_int_equal(builder_add_workload(b, &wbad, &e), -EINVAL);
    assert_string_equal(e.resource, "u2");
    assert_string_equal(e.path, "addresses[0]");
    assert_int_equal(builder_count(b, BUILDER_WORKLOAD), 1);
    add_wl_ok(b, &w3);
    struct service sbad = {.namespace_ = "ns"}, sok = {.namespace_ = "ns", .hostname = "h"};
    assert_int_equal(builder_add_service(b, &sbad, &e), -EINVAL);
    assert_int_equal(builder_add_service(b, &sok, &e), 0);
    struct snapshot *s = finish(b);
    assert_int_equal(snapshot_n_workloads(s), 2);
    assert_string_equal(snapshot_workload_at(s, 1)->uid, "u3");
    assert_null(snapshot_workload_by_uid(s, "u2"));
    assert_string_equal(snapshot_workload_by_ip(s, "", &a2)->uid, "u3");
    assert_int_equal(snapshot_n_services(s), 1);
    assert_non_null(snapshot_service_by_host(s, "ns/h"));
    snapshot_unref(s);
}

static void test_duplicates(void **state)
{
    (void)state;
    struct snapshot_builder *b = new_builder(false);
    struct ip_addr a = ip("10.0.0.1"), a6 = ip("fd00::1");
    struct builder_err e;
    char msg[768];
    struct workload w = {.uid = "u1", .ips = &a, .n_ips = 1};
    add_wl_ok(b, &w);
    /* Same uid: the later one is rejected alone and names the earlier one by index. */
    struct workload wd = {.uid = "u1", .name = "other", .ips = &a6, .n_ips = 1};
    assert_int_equal(builder_add_workload(b, &wd, &e), -EINVAL);
    assert_string_equal(builder_err_format(&e, msg, sizeof(msg)),
                        "workload u1: uid: duplicate workload uid \"u1\"");
    assert_int_equal(e.other, 0);
    /* The rejected workload's address was not indexed. */
    struct service s1 = {.namespace_ = "ns", .hostname = "h"};
    assert_int_equal(builder_add_service(b, &s1, NULL), 0);
    assert_int_equal(builder_add_service(b, &s1, &e), -EINVAL);
    assert_string_equal(builder_err_format(&e, msg, sizeof(msg)),
                        "service ns/h: hostname: duplicate service \"ns/h\"");
    assert_int_equal(e.other, 0);
    struct policy p = {.name = "p", .namespace_ = "ns"};
    assert_int_equal(builder_add_policy(b, &p, NULL), 0);
    assert_int_equal(builder_add_policy(b, &p, &e), -EINVAL);
    assert_string_equal(builder_err_format(&e, msg, sizeof(msg)),
                        "policy ns/p: name: duplicate policy \"ns/p\"");
    /* Same name in another namespace is no collision. */
    p.namespace_ = "ns2";
    assert_int_equal(builder_add_policy(b, &p, NULL), 0);
    struct snapshot *s = finish(b);
    assert_int_equal(snapshot_n_workloads(s), 1);
    assert_null(snapshot_workload_by_ip(s, "", &a6));
    assert_null(snapshot_workload_by_name(s, "", "other"));
    assert_int_equal(snapshot_n_services(s), 1);
    assert_int_equal(snapshot_n_policies(s), 2);
    snapshot_unref(s);
}

/* Workloads sharing an address are all kept; the index holds the one ztunnel's WorkloadByAddr::get prefers.
 */
static void test_shared_ip(void **state)
{
    (void)state;
    struct ip_addr a = ip("10.0.0.1"), b2 = ip("10.0.0.2"), c3 = ip("10.0.0.3");
    struct snapshot_builder *b = new_builder(false);
    struct workload pod_tcp = {.uid = "c//v1/Pod/ns/a", .ips = &a, .n_ips = 1};
    struct workload vm_hbone = {
        .uid = "c/networking.istio.io/WorkloadEntry/ns/b", .ips = &a, .n_ips = 1, .protocol = WL_PROTO_HBONE};
    struct workload pod_hbone = {.uid = "c//v1/Pod/ns/c", .ips = &a, .n_ips = 1, .protocol = WL_PROTO_HBONE};
    struct workload pod_tcp2 = {.uid = "c//v1/Pod/ns/d", .ips = &a, .n_ips = 1};
    add_wl_ok(b, &pod_tcp);
    add_wl_ok(b, &vm_hbone);  /* rank 1 < 2: the pod stays */
    add_wl_ok(b, &pod_hbone); /* rank 3: wins */
    add_wl_ok(b, &pod_tcp2);  /* rank 2: loses */
    /* Equal rank: the later one wins, as Rust's max_by_key keeps the last maximum. */
    struct workload e1 = {.uid = "e1", .ips = &b2, .n_ips = 1}, e2 = {.uid = "e2", .ips = &b2, .n_ips = 1};
    add_wl_ok(b, &e1);
    add_wl_ok(b, &e2);
    /* The same address twice in one workload is harmless. */
    struct ip_addr twice[2] = {c3, c3};
    struct workload t = {.uid = "t", .ips = twice, .n_ips = 2};
    add_wl_ok(b, &t);
    struct snapshot *s = finish(b);
    assert_int_equal(snapshot_n_workloads(s), 7);
    assert_string_equal(snapshot_workload_by_ip(s, "", &a)->uid, "c//v1/Pod/ns/c");
    assert_string_equal(snapshot_workload_by_ip(s, "", &b2)->uid, "e2");
    assert_string_equal(snapshot_workload_by_ip(s, "", &c3)->uid, "t");
    for (size_t i = 0; i < snapshot_n_workloads(s); i++) {
        const struct workload *w = snapshot_workload_at(s, i);
        assert_ptr_equal(snapshot_workload_by_uid(s, w->uid), w);
    }
    snapshot_unref(s);

    /* Strict (LocalConfig): a shared address is an error, and the build fails as a whole. */
    b = new_builder(true);
    struct builder_err e;
    char msg[768];
    add_wl_ok(b, &e1);
    assert_int_equal(builder_add_workload(b, &e2, &e), -EINVAL);
    assert_string_equal(
        builder_err_format(&e, msg, sizeof(msg)),
        "workload e2: addresses[0]: duplicate address \"/10.0.0.2\" in network (already used by e1)");
    assert_int_equal(builder_add_workload(b, &pod_tcp, &e), -EINVAL); /* the builder is spent */
    struct snapshot *none = (struct snapshot *)0x1;
    assert_int_equal(builder_finish(b, &none), -EINVAL);
    assert_ptr_equal(none, (struct snapshot *)0x1);

    b = new_builder(true);
    assert_int_equal(builder_add_workload(b, &t, &e), -EINVAL);
    assert_string_equal(
        builder_err_format(&e, msg, sizeof(msg)),
        "workload t: addresses[1]: duplicate address \"/10.0.0.3\" in network (already used by this "
        "workload)");
    builder_free(b);
}

static void test_indexes(void **state)
{
    (void)state;
    enum { N = 2000, NS = 7 };
    struct snapshot_builder *b = new_builder(false);
    static char strs[N][4][48];
    static struct ip_addr ips[N][2];
    static struct net_addr vips[N];
    for (int i = 0; i < N; i++) {
        snprintf(strs[i][0], 48, "c//v1/Pod/ns%d/w%d", i % NS, i);
        snprintf(strs[i][1], 48, "w%d", i);
        snprintf(strs[i][2], 48, "ns%d", i % NS);
        snprintf(strs[i][3], 48, "h%d.svc", i);
        ips[i][0] = (struct ip_addr){.family = AF_INET, .a = {10, 1, (uint8_t)(i >> 8), (uint8_t)i}};
        ips[i][1] = (struct ip_addr){
            .family = AF_INET6,
            .a = {0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, (uint8_t)(i >> 8), (uint8_t)i}};
        struct workload w = {.uid = strs[i][0],
                             .name = strs[i][1],
                             .namespace_ = strs[i][2],
                             .network = i % 2 ? "net1" : "",
                             .ips = ips[i],
                             .n_ips = 2};
        add_wl_ok(b, &w);
        vips[i] = (struct net_addr){"", {.family = AF_INET, .a = {172, 16, (uint8_t)(i >> 8), (uint8_t)i}}};
        struct service v = {.name = strs[i][1],
                            .namespace_ = strs[i][2],
                            .hostname = strs[i][3],
                            .vips = &vips[i],
                            .n_vips = 1};
        assert_int_equal(builder_add_service(b, &v, NULL), 0);
        struct policy p = {.name = strs[i][1], .namespace_ = strs[i][2], .scope = (uint8_t)(i % 3)};
        assert_int_equal(builder_add_policy(b, &p, NULL), 0);
    }
    struct snapshot *s = finish(b);
    assert_int_equal(snapshot_n_workloads(s), N);
    assert_int_equal(snapshot_n_services(s), N);
    assert_int_equal(snapshot_n_policies(s), N);
    char key[128];
    size_t n_ns_pol = 0;
    for (int i = 0; i < N; i++) {
        const struct workload *w = snapshot_workload_at(s, (size_t)i);
        assert_string_equal(w->uid, strs[i][0]);
        assert_ptr_equal(snapshot_workload_by_uid(s, strs[i][0]), w);
        assert_ptr_equal(snapshot_workload_by_name(s, strs[i][2], strs[i][1]), w);
        assert_ptr_equal(snapshot_workload_by_ip(s, w->network, &ips[i][0]), w);
        assert_ptr_equal(snapshot_workload_by_ip(s, w->network, &ips[i][1]), w);
        assert_null(snapshot_workload_by_ip(s, i % 2 ? "" : "net1", &ips[i][0]));
        const struct service *v = snapshot_service_at(s, (size_t)i);
        snprintf(key, sizeof(key), "%s/%s", strs[i][2], strs[i][3]);
        assert_ptr_equal(snapshot_service_by_host(s, key), v);
        assert_ptr_equal(snapshot_service_by_vip(s, "", &vips[i].ip), v);
        snprintf(key, sizeof(key), "%s/%s", strs[i][2], strs[i][1]);
        assert_ptr_equal(snapshot_policy_by_name(s, key), snapshot_policy_at(s, (size_t)i));
    }
    for (int k = 0; k < NS; k++) {
        size_t n;
        snprintf(key, sizeof(key), "ns%d", k);
        const struct policy *const *pl = snapshot_namespace_policies(s, key, &n);
        for (size_t j = 0; j < n; j++) {
            assert_int_equal(pl[j]->scope, POLICY_SCOPE_NAMESPACE);
            assert_string_equal(pl[j]->namespace_, key);
        }
        n_ns_pol += n;
    }
    size_t n_global;
    snapshot_global_policies(s, &n_global);
    /* scope = i % 3: GLOBAL for i ≡ 0, NAMESPACE for i ≡ 1 (mod 3). */
    assert_int_equal(n_global, (N + 2) / 3);
    assert_int_equal(n_ns_pol, (N + 1) / 3);
    snapshot_unref(s);
}

struct warn_cap {
    int n;
    char resource[160], detail[96];
};

static void on_warn(void *ud, const struct builder_err *w)
{
    struct warn_cap *c = ud;
    c->n++;
    snprintf(c->resource, sizeof(c->resource), "%s", w->resource);
    snprintf(c->detail, sizeof(c->detail), "%s", w->detail);
}

static void test_warning(void **state)
{
    (void)state;
    struct warn_cap cap = {0};
    struct builder_opts o = {.warn = on_warn, .warn_ud = &cap};
    struct snapshot_builder *b;
    assert_int_equal(snapshot_builder_new(&b, &o), 0);
    struct ip_addr un[2] = {ip("0.0.0.0"), ip("ff02::1")}, ok = ip("10.0.0.1");
    struct workload w1 = {.uid = "ok", .ips = &ok, .n_ips = 1};
    struct workload w2 = {.uid = "unusable", .ips = un, .n_ips = 2};
    struct workload w3 = {.uid = "gw", .network_gateway = {.set = true, .ip = ok}};
    add_wl_ok(b, &w1);
    assert_int_equal(cap.n, 0);
    add_wl_ok(b, &w2);
    assert_int_equal(cap.n, 1);
    assert_string_equal(cap.resource, "unusable");
    assert_string_equal(cap.detail, "unspecified, multicast or broadcast only");
    add_wl_ok(b, &w3); /* a network gateway makes it reachable */
    assert_int_equal(cap.n, 1);
    struct snapshot *s = finish(b);
    assert_int_equal(snapshot_n_workloads(s), 3);
    snapshot_unref(s);
}

/* ---- YAML and direct calls build the same snapshot ---- */

static const char yaml[] =
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
    "  workloadType: pod\n"
    "  applicationTunnel: {protocol: PROXY, port: 15088}\n"
    "  services:\n"
    "    \"default/server.default.svc.cluster.local\": {443: 8443, 80: 8080}\n"
    "    \"default/alt.default.svc.cluster.local\": {9000: 9001}\n"
    "  authorizationPolicies: [default/allow-client]\n"
    "  status: Unhealthy\n"
    "  clusterId: c1\n"
    "  locality: {region: r1, zone: z1}\n"
    "  capacity: 3\n"
    "- {name: client, namespace: default, workloadIps: [\"10.0.1.5\"]}\n"
    "services:\n"
    "- name: server\n"
    "  namespace: default\n"
    "  hostname: server.default.svc.cluster.local\n"
    "  vips: [\"/10.96.0.20\", \"net1/fd00:96::20\"]\n"
    "  ports: {443: 0, 80: 8080}\n"
    "  subjectAltNames: [\"spiffe://cluster.local/ns/default/sa/server\"]\n"
    "  loadBalancer: {routingPreferences: [Network, Zone], mode: Failover, healthPolicy: AllowAll}\n"
    "  ipFamilies: Dual\n"
    "policies:\n"
    "- name: allow-client\n"
    "  namespace: default\n"
    "  scope: Namespace\n"
    "  rules:\n"
    "  - - - principals: [{Exact: \"cluster.local/ns/default/sa/client\"}]\n"
    "        sourceIps: [\"10.0.0.0/8\"]\n"
    "        notServiceAccounts: [{namespace: other, serviceAccount: bad}]\n"
    "    - - destinationPorts: [8080]\n"
    "- {name: deny-all, namespace: istio-system, scope: Global, action: Deny, dryRun: true}\n";

static struct snapshot *build_direct(void)
{
    struct snapshot_builder *b = new_builder(true);
    struct ip_addr ips0[2] = {ip("10.0.2.7"), ip("fd00::7")}, ips1[1] = {ip("10.0.1.5")};
    struct port_map p_server[2] = {{443, 8443, 0}, {80, 8080, 0}}, p_alt[1] = {{9000, 9001, 0}};
    struct wl_service_ports sp[2] = {{"default/server.default.svc.cluster.local", p_server, 2},
                                     {"default/alt.default.svc.cluster.local", p_alt, 1}};
    const char *authz[1] = {"default/allow-client"};
    struct workload w0 = {
        .uid = "c1//v1/Pod/default/server-0",
        .name = "server-0",
        .namespace_ = "default",
        .hostname = "server-0.example",
        .network = "net1",
        .trust_domain = "td.example",
        .service_account = "server",
        .node = "node-b",
        .cluster_id = "c1",
        .workload_type = "pod",
        .ips = ips0,
        .n_ips = 2,
        .protocol = WL_PROTO_HBONE,
        .healthy = false,
        .capacity = 3,
        .locality = {"r1", "z1", NULL},
        .waypoint = {.set = true,
                     .is_host = true,
                     .ns = "default",
                     .host = "wp.default.svc.cluster.local",
                     .hbone_port = 15009},
        .network_gateway = {.set = true, .network = "net2", .ip = ip("192.168.1.1")},
        .app_tunnel_protocol = WL_APP_TUNNEL_PROXY,
        .app_tunnel_port = 15088,
        .services = sp,
        .n_services = 2,
        .authorization_policies = authz,
        .n_authorization_policies = 1,
    };
    struct workload w1 = {
        .name = "client", .namespace_ = "default", .ips = ips1, .n_ips = 1, .healthy = true, .capacity = 1};
    add_wl_ok(b, &w0);
    add_wl_ok(b, &w1);
    struct net_addr vips[2] = {{"", ip("10.96.0.20")}, {"net1", ip("fd00:96::20")}};
    struct port_map sports[2] = {{443, 0, 0}, {80, 8080, 0}};
    const char *sans[1] = {"spiffe://cluster.local/ns/default/sa/server"};
    uint8_t prefs[2] = {LB_SCOPE_NETWORK, LB_SCOPE_ZONE};
    struct service svc = {.name = "server",
                          .namespace_ = "default",
                          .hostname = "server.default.svc.cluster.local",
                          .vips = vips,
                          .n_vips = 2,
                          .ports = sports,
                          .n_ports = 2,
                          .subject_alt_names = sans,
                          .n_sans = 1,
                          .routing_prefs = prefs,
                          .n_routing_prefs = 2,
                          .lb_mode = LB_MODE_FAILOVER,
                          .health_policy = LB_HEALTH_ALLOW_ALL,
                          .ip_families = IP_FAMILIES_DUAL};
    assert_int_equal(builder_add_service(b, &svc, NULL), 0);
    struct string_match prin = {SM_EXACT, "cluster.local/ns/default/sa/client"};
    struct cidr src = {ip("10.0.0.0"), 8};
    struct sa_match nsa = {"other", "bad"};
    uint16_t dport = 8080;
    struct auth_match m0 = {.principals = &prin,
                            .n_principals = 1,
                            .source_ips = &src,
                            .n_source_ips = 1,
                            .not_service_accounts = &nsa,
                            .n_not_service_accounts = 1};
    struct auth_match m1 = {.destination_ports = &dport, .n_destination_ports = 1};
    struct auth_clause cl[2] = {{&m0, 1}, {&m1, 1}};
    struct auth_rule rule = {cl, 2};
    struct policy p0 = {.name = "allow-client",
                        .namespace_ = "default",
                        .scope = POLICY_SCOPE_NAMESPACE,
                        .rules = &rule,
                        .n_rules = 1};
    struct policy p1 = {.name = "deny-all",
                        .namespace_ = "istio-system",
                        .scope = POLICY_SCOPE_GLOBAL,
                        .action = POLICY_DENY,
                        .dry_run = true};
    assert_int_equal(builder_add_policy(b, &p0, NULL), 0);
    assert_int_equal(builder_add_policy(b, &p1, NULL), 0);
    return finish(b);
}

static void eq_gw(const struct gateway_addr *a, const struct gateway_addr *b)
{
    assert_int_equal(a->set, b->set);
    assert_int_equal(a->is_host, b->is_host);
    assert_string_equal(a->network, b->network);
    assert_memory_equal(&a->ip, &b->ip, sizeof(a->ip));
    assert_string_equal(a->ns, b->ns);
    assert_string_equal(a->host, b->host);
    assert_int_equal(a->hbone_port, b->hbone_port);
}

static void eq_ports(const struct port_map *a, size_t na, const struct port_map *b, size_t nb)
{
    assert_int_equal(na, nb);
    for (size_t i = 0; i < na; i++) { /* field by field: the struct has padding */
        assert_int_equal(a[i].port, b[i].port);
        assert_int_equal(a[i].target, b[i].target);
        assert_int_equal(a[i].app_protocol, b[i].app_protocol);
    }
}

static void eq_workload(const struct workload *a, const struct workload *b)
{
    const char *const sa[] = {a->uid,
                              a->name,
                              a->namespace_,
                              a->hostname,
                              a->network,
                              a->trust_domain,
                              a->service_account,
                              a->node,
                              a->cluster_id,
                              a->canonical_name,
                              a->canonical_revision,
                              a->workload_type,
                              a->workload_name,
                              a->locality.region,
                              a->locality.zone,
                              a->locality.subzone,
                              a->spiffe_id};
    const char *const sb[] = {b->uid,
                              b->name,
                              b->namespace_,
                              b->hostname,
                              b->network,
                              b->trust_domain,
                              b->service_account,
                              b->node,
                              b->cluster_id,
                              b->canonical_name,
                              b->canonical_revision,
                              b->workload_type,
                              b->workload_name,
                              b->locality.region,
                              b->locality.zone,
                              b->locality.subzone,
                              b->spiffe_id};
    for (size_t i = 0; i < sizeof(sa) / sizeof(sa[0]); i++)
        assert_string_equal(sa[i], sb[i]);
    assert_int_equal(a->n_ips, b->n_ips);
    assert_memory_equal(a->ips, b->ips, a->n_ips * sizeof(*a->ips));
    assert_int_equal(a->protocol, b->protocol);
    assert_int_equal(a->healthy, b->healthy);
    assert_int_equal(a->capacity, b->capacity);
    eq_gw(&a->waypoint, &b->waypoint);
    eq_gw(&a->network_gateway, &b->network_gateway);
    assert_int_equal(a->app_tunnel_protocol, b->app_tunnel_protocol);
    assert_int_equal(a->app_tunnel_port, b->app_tunnel_port);
    assert_int_equal(a->network_mode, b->network_mode);
    assert_int_equal(a->n_services, b->n_services);
    for (size_t i = 0; i < a->n_services; i++) {
        assert_string_equal(a->services[i].key, b->services[i].key);
        eq_ports(a->services[i].ports, a->services[i].n_ports, b->services[i].ports, b->services[i].n_ports);
    }
    assert_int_equal(a->n_authorization_policies, b->n_authorization_policies);
    for (size_t i = 0; i < a->n_authorization_policies; i++)
        assert_string_equal(a->authorization_policies[i], b->authorization_policies[i]);
}

static void eq_service(const struct service *a, const struct service *b)
{
    assert_string_equal(a->name, b->name);
    assert_string_equal(a->namespace_, b->namespace_);
    assert_string_equal(a->hostname, b->hostname);
    assert_int_equal(a->n_vips, b->n_vips);
    for (size_t i = 0; i < a->n_vips; i++) {
        assert_string_equal(a->vips[i].network, b->vips[i].network);
        assert_memory_equal(&a->vips[i].ip, &b->vips[i].ip, sizeof(a->vips[i].ip));
    }
    eq_ports(a->ports, a->n_ports, b->ports, b->n_ports);
    assert_int_equal(a->n_sans, b->n_sans);
    for (size_t i = 0; i < a->n_sans; i++)
        assert_string_equal(a->subject_alt_names[i], b->subject_alt_names[i]);
    eq_gw(&a->waypoint, &b->waypoint);
    assert_int_equal(a->n_routing_prefs, b->n_routing_prefs);
    if (a->n_routing_prefs) assert_memory_equal(a->routing_prefs, b->routing_prefs, a->n_routing_prefs);
    assert_int_equal(a->lb_mode, b->lb_mode);
    assert_int_equal(a->health_policy, b->health_policy);
    assert_int_equal(a->ip_families, b->ip_families);
}

static void eq_sms(const struct string_match *a, size_t na, const struct string_match *b, size_t nb)
{
    assert_int_equal(na, nb);
    for (size_t i = 0; i < na; i++) {
        assert_int_equal(a[i].kind, b[i].kind);
        assert_string_equal(a[i].value, b[i].value);
    }
}

static void eq_sas(const struct sa_match *a, size_t na, const struct sa_match *b, size_t nb)
{
    assert_int_equal(na, nb);
    for (size_t i = 0; i < na; i++) {
        assert_string_equal(a[i].namespace_, b[i].namespace_);
        assert_string_equal(a[i].service_account, b[i].service_account);
    }
}

static void eq_raw(const void *a, size_t na, const void *b, size_t nb, size_t esz)
{
    assert_int_equal(na, nb);
    if (na) assert_memory_equal(a, b, na * esz);
}

static void eq_policy(const struct policy *a, const struct policy *b)
{
    assert_string_equal(a->name, b->name);
    assert_string_equal(a->namespace_, b->namespace_);
    assert_int_equal(a->scope, b->scope);
    assert_int_equal(a->action, b->action);
    assert_int_equal(a->dry_run, b->dry_run);
    assert_int_equal(a->n_rules, b->n_rules);
    for (size_t r = 0; r < a->n_rules; r++) {
        assert_int_equal(a->rules[r].n_clauses, b->rules[r].n_clauses);
        for (size_t c = 0; c < a->rules[r].n_clauses; c++) {
            const struct auth_clause *ca = &a->rules[r].clauses[c], *cb = &b->rules[r].clauses[c];
            assert_int_equal(ca->n_matches, cb->n_matches);
            for (size_t m = 0; m < ca->n_matches; m++) {
                const struct auth_match *x = &ca->matches[m], *y = &cb->matches[m];
                eq_sms(x->namespaces, x->n_namespaces, y->namespaces, y->n_namespaces);
                eq_sms(x->not_namespaces, x->n_not_namespaces, y->not_namespaces, y->n_not_namespaces);
                eq_sms(x->principals, x->n_principals, y->principals, y->n_principals);
                eq_sms(x->not_principals, x->n_not_principals, y->not_principals, y->n_not_principals);
                eq_sas(x->service_accounts, x->n_service_accounts, y->service_accounts,
                       y->n_service_accounts);
                eq_sas(x->not_service_accounts, x->n_not_service_accounts, y->not_service_accounts,
                       y->n_not_service_accounts);
                eq_raw(x->source_ips, x->n_source_ips, y->source_ips, y->n_source_ips, sizeof(struct cidr));
                eq_raw(x->not_source_ips, x->n_not_source_ips, y->not_source_ips, y->n_not_source_ips,
                       sizeof(struct cidr));
                eq_raw(x->destination_ips, x->n_destination_ips, y->destination_ips, y->n_destination_ips,
                       sizeof(struct cidr));
                eq_raw(x->not_destination_ips, x->n_not_destination_ips, y->not_destination_ips,
                       y->n_not_destination_ips, sizeof(struct cidr));
                eq_raw(x->destination_ports, x->n_destination_ports, y->destination_ports,
                       y->n_destination_ports, sizeof(uint16_t));
                eq_raw(x->not_destination_ports, x->n_not_destination_ports, y->not_destination_ports,
                       y->n_not_destination_ports, sizeof(uint16_t));
            }
        }
    }
}

static void test_yaml_equals_direct(void **state)
{
    (void)state;
    struct snapshot *y = NULL;
    char err[512];
    if (config_load_buf(yaml, strlen(yaml), "t.yaml", &y, err, sizeof(err))) fail_msg("%s", err);
    struct snapshot *d = build_direct();
    assert_int_equal(snapshot_n_workloads(y), snapshot_n_workloads(d));
    assert_int_equal(snapshot_n_services(y), snapshot_n_services(d));
    assert_int_equal(snapshot_n_policies(y), snapshot_n_policies(d));
    for (size_t i = 0; i < snapshot_n_workloads(y); i++) {
        const struct workload *a = snapshot_workload_at(y, i), *b = snapshot_workload_at(d, i);
        eq_workload(a, b);
        /* Same lookups: each index finds the same resource in both. */
        assert_ptr_equal(snapshot_workload_by_uid(d, a->uid), b);
        assert_ptr_equal(snapshot_workload_by_name(d, a->namespace_, a->name), b);
        for (size_t j = 0; j < a->n_ips; j++) {
            assert_ptr_equal(snapshot_workload_by_ip(y, a->network, &a->ips[j]), a);
            assert_ptr_equal(snapshot_workload_by_ip(d, a->network, &a->ips[j]), b);
        }
    }
    for (size_t i = 0; i < snapshot_n_services(y); i++) {
        const struct service *a = snapshot_service_at(y, i), *b = snapshot_service_at(d, i);
        eq_service(a, b);
        char key[256];
        snprintf(key, sizeof(key), "%s/%s", a->namespace_, a->hostname);
        assert_ptr_equal(snapshot_service_by_host(d, key), b);
        for (size_t j = 0; j < a->n_vips; j++) {
            assert_ptr_equal(snapshot_service_by_vip(y, a->vips[j].network, &a->vips[j].ip), a);
            assert_ptr_equal(snapshot_service_by_vip(d, a->vips[j].network, &a->vips[j].ip), b);
        }
        /* The load-balancing index agrees too: same target port for each endpoint. */
        for (size_t w = 0; w < snapshot_n_workloads(y); w++)
            for (size_t p = 0; p < a->n_ports; p++)
                assert_int_equal(service_target_port(a, snapshot_workload_at(y, w), a->ports[p].port),
                                 service_target_port(b, snapshot_workload_at(d, w), b->ports[p].port));
    }
    for (size_t i = 0; i < snapshot_n_policies(y); i++) {
        const struct policy *a = snapshot_policy_at(y, i), *b = snapshot_policy_at(d, i);
        eq_policy(a, b);
        char key[256];
        snprintf(key, sizeof(key), "%s/%s", a->namespace_, a->name);
        assert_ptr_equal(snapshot_policy_by_name(d, key), b);
    }
    size_t ny, nd;
    assert_non_null(snapshot_namespace_policies(y, "default", &ny));
    assert_non_null(snapshot_namespace_policies(d, "default", &nd));
    assert_int_equal(ny, nd);
    snapshot_global_policies(y, &ny);
    snapshot_global_policies(d, &nd);
    assert_int_equal(ny, 1);
    assert_int_equal(nd, 1);
    snapshot_unref(y);
    snapshot_unref(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_input_copied),
        cmocka_unit_test(test_workload_errors),
        cmocka_unit_test(test_service_policy_errors),
        cmocka_unit_test(test_bad_rejected_alone),
        cmocka_unit_test(test_duplicates),
        cmocka_unit_test(test_shared_ip),
        cmocka_unit_test(test_indexes),
        cmocka_unit_test(test_warning),
        cmocka_unit_test(test_yaml_equals_direct),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
