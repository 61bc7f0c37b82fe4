/* Unit tests for service endpoint choice (src/mesh/lb.c): target ports, health, weights, locality modes,
 * IP family choice, and a randomized cross-check of the indexed choice against a direct transcription of
 * ztunnel's per-connection filter-and-rank. */
#include <arpa/inet.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "mesh/config.h"
#include "mesh/lb.h"

static struct snapshot *load_ok(const char *yaml)
{
    struct snapshot *s = NULL;
    char err[512];
    int rc = config_load_buf(yaml, strlen(yaml), "t.yaml", &s, err, sizeof(err));
    if (rc) fail_msg("load failed (%d): %s\n%s", rc, err, yaml);
    assert_non_null(s);
    return s;
}

static uint64_t splitmix(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static const struct workload *wl_named(const struct snapshot *s, const char *name)
{
    const struct workload *w = snapshot_workload_by_name(s, "default", name);
    if (!w) fail_msg("no workload %s", name);
    return w;
}

/* ---- table-driven cases ---- */

/* Workload lines: name, IPs, then any extra fields. */
#define WL(name, ips, extra) "- name: " name "\n  namespace: default\n  workloadIps: " ips "\n" extra
#define SVC_HDR "services:\n- name: svc\n  namespace: default\n  hostname: svc.default.svc.cluster.local\n"
#define MEMBER(ports) "  services: {\"default/svc.default.svc.cluster.local\": " ports "}\n"
#define MEMBER0 MEMBER("{}")

struct lb_case {
    const char *name;
    const char *yaml;
    uint16_t port;
    const char *src;      /* client workload name, or NULL */
    const char *orig_dst; /* or NULL */
    int rc;
    /* When rc == 0: every pick is one of these "name port ip" and each is picked at least once. */
    const char *const want[4];
};

static const struct lb_case cases[] = {
    {"target port: workload map first, then service target",
     "workloads:\n" WL("a", "[\"10.0.0.1\"]", MEMBER("{80: 9080}")) WL("b", "[\"10.0.0.2\"]", MEMBER0) SVC_HDR
     "  vips: [\"/10.96.0.1\"]\n  ports: {80: 8080}\n",
     80,
     NULL,
     "10.96.0.1",
     0,
     {"a 9080 10.0.0.1", "b 8080 10.0.0.2"}},
    {"target port 0 on the service: only endpoints mapping the port",
     "workloads:\n" WL("a", "[\"10.0.0.1\"]", MEMBER("{81: 9081}")) WL("b", "[\"10.0.0.2\"]", MEMBER0)
         WL("c", "[\"10.0.0.3\"]", MEMBER("{80: 9000}")) SVC_HDR
     "  vips: [\"/10.96.0.1\"]\n  ports: {80: 8080, 81: 0}\n",
     81,
     NULL,
     "10.96.0.1",
     0,
     {"a 9081 10.0.0.1"}},
    {"no endpoint has a target port",
     "workloads:\n" WL("a", "[\"10.0.0.1\"]", MEMBER0) SVC_HDR "  vips: [\"/10.96.0.1\"]\n  ports: {81: 0}\n",
     81,
     NULL,
     "10.96.0.1",
     -ENOENT,
     {NULL}},
    {"port not on the service",
     "workloads:\n" WL("a", "[\"10.0.0.1\"]", MEMBER("{82: 9082}")) SVC_HDR
     "  vips: [\"/10.96.0.1\"]\n  ports: {80: 8080}\n",
     82,
     NULL,
     "10.96.0.1",
     -ENOENT,
     {NULL}},
    {"OnlyHealthy drops unhealthy endpoints",
     "workloads:\n" WL("a", "[\"10.0.0.1\"]", MEMBER0 "  status: Unhealthy\n")
         WL("b", "[\"10.0.0.2\"]", MEMBER0) SVC_HDR "  vips: [\"/10.96.0.1\"]\n  ports: {80: 8080}\n",
     80,
     NULL,
     NULL,
     0,
     {"b 8080 10.0.0.2"}},
    {"OnlyHealthy with every endpoint unhealthy",
     "workloads:\n" WL("a", "[\"10.0.0.1\"]", MEMBER0 "  status: Unhealthy\n") SVC_HDR
     "  vips: [\"/10.96.0.1\"]\n  ports: {80: 8080}\n  loadBalancer: {healthPolicy: OnlyHealthy}\n",
     80,
     NULL,
     NULL,
     -ENOENT,
     {NULL}},
    {"AllowAll keeps unhealthy endpoints",
     "workloads:\n" WL("a", "[\"10.0.0.1\"]", MEMBER0 "  status: Unhealthy\n")
         WL("b", "[\"10.0.0.2\"]", MEMBER0) SVC_HDR
     "  vips: [\"/10.96.0.1\"]\n  ports: {80: 8080}\n  loadBalancer: {healthPolicy: AllowAll}\n",
     80,
     NULL,
     NULL,
     0,
     {"a 8080 10.0.0.1", "b 8080 10.0.0.2"}},
    {"workloads without IPs are skipped",
     "workloads:\n" WL("a", "[]", MEMBER0 "  hostname: a.example\n") WL("b", "[\"10.0.0.2\"]", MEMBER0)
         SVC_HDR "  vips: [\"/10.96.0.1\"]\n  ports: {80: 8080}\n",
     80,
     NULL,
     NULL,
     0,
     {"b 8080 10.0.0.2"}},
    {"no endpoints at all",
     "workloads:\n" WL("a", "[\"10.0.0.1\"]", "") SVC_HDR "  vips: [\"/10.96.0.1\"]\n  ports: {80: 8080}\n",
     80,
     NULL,
     NULL,
     -ENOENT,
     {NULL}},
    {"Passthrough",
     "workloads:\n" WL("a", "[\"10.0.0.1\"]", MEMBER0) SVC_HDR
     "  vips: [\"/10.96.0.1\"]\n  ports: {80: 8080}\n  loadBalancer: {mode: Passthrough}\n",
     80,
     NULL,
     "10.96.0.1",
     -EAGAIN,
     {NULL}},
    {"capacity 0 is never chosen",
     "workloads:\n" WL("a", "[\"10.0.0.1\"]", MEMBER0 "  capacity: 0\n") WL("b", "[\"10.0.0.2\"]", MEMBER0)
         SVC_HDR "  vips: [\"/10.96.0.1\"]\n  ports: {80: 8080}\n",
     80,
     NULL,
     NULL,
     0,
     {"b 8080 10.0.0.2"}},
    {"every endpoint has capacity 0",
     "workloads:\n" WL("a", "[\"10.0.0.1\"]", MEMBER0 "  capacity: 0\n") SVC_HDR
     "  vips: [\"/10.96.0.1\"]\n  ports: {80: 8080}\n",
     80,
     NULL,
     NULL,
     -ENOENT,
     {NULL}},
/* Locality. Source "client" is in r1/z1 on node n1, network net1. */
#define CLIENT                                                                                               \
    WL("client", "[\"10.1.0.1\"]", "  locality: {region: r1, zone: z1}\n  node: n1\n  network: net1\n")
#define LOC3(extra_a, extra_b)                                                                               \
    "workloads:\n" CLIENT WL("a", "[\"10.0.0.1\"]", MEMBER0 "  locality: {region: r1, zone: z1}\n" extra_a)  \
        WL("b", "[\"10.0.0.2\"]", MEMBER0 "  locality: {region: r1, zone: z2}\n" extra_b)                    \
            WL("c", "[\"10.0.0.3\"]", MEMBER0 "  locality: {region: r2, zone: z1}\n")
    {"Failover: same zone first",
     LOC3("", "") SVC_HDR "  vips: [\"/10.96.0.1\"]\n  ports: {80: 8080}\n"
                          "  loadBalancer: {routingPreferences: [Region, Zone], mode: Failover}\n",
     80,
     "client",
     NULL,
     0,
     {"a 8080 10.0.0.1"}},
    {"Failover: same region when the same zone is unhealthy",
     LOC3("  status: Unhealthy\n", "") SVC_HDR
     "  vips: [\"/10.96.0.1\"]\n  ports: {80: 8080}\n"
     "  loadBalancer: {routingPreferences: [Region, Zone], mode: Failover}\n",
     80,
     "client",
     NULL,
     0,
     {"b 8080 10.0.0.2"}},
    {"Failover: anywhere when the region is down",
     LOC3("  status: Unhealthy\n", "  status: Unhealthy\n") SVC_HDR
     "  vips: [\"/10.96.0.1\"]\n  ports: {80: 8080}\n"
     "  loadBalancer: {routingPreferences: [Region, Zone], mode: Failover}\n",
     80,
     "client",
     NULL,
     0,
     {"c 8080 10.0.0.3"}},
    {"Failover: the order of preferences matters (zone before region)",
     LOC3("  status: Unhealthy\n", "") SVC_HDR
     "  vips: [\"/10.96.0.1\"]\n  ports: {80: 8080}\n"
     "  loadBalancer: {routingPreferences: [Zone, Region], mode: Failover}\n",
     80,
     "client",
     NULL,
     0,
     {"c 8080 10.0.0.3"}},
    {"Failover without a source: every endpoint",
     LOC3("", "") SVC_HDR "  vips: [\"/10.96.0.1\"]\n  ports: {80: 8080}\n"
                          "  loadBalancer: {routingPreferences: [Region, Zone], mode: Failover}\n",
     80,
     NULL,
     NULL,
     0,
     {"a 8080 10.0.0.1", "b 8080 10.0.0.2", "c 8080 10.0.0.3"}},
    {"Failover with NETWORK first: same network over same region",
     "workloads:\n" CLIENT WL("x", "[\"10.0.0.1\"]", MEMBER0 "  network: net1\n  locality: {region: r9}\n")
         WL("y", "[\"10.0.0.2\"]", MEMBER0 "  network: net2\n  locality: {region: r1, zone: z1}\n") SVC_HDR
     "  vips: [\"/10.96.0.1\"]\n  ports: {80: 8080}\n"
     "  loadBalancer: {routingPreferences: [Network, Region, Zone], mode: Failover}\n",
     80,
     "client",
     NULL,
     0,
     {"x 8080 10.0.0.1"}},
    {"Strict: full match only",
     LOC3("", "") SVC_HDR "  vips: [\"/10.96.0.1\"]\n  ports: {80: 8080}\n"
                          "  loadBalancer: {routingPreferences: [Region, Zone], mode: Strict}\n",
     80,
     "client",
     NULL,
     0,
     {"a 8080 10.0.0.1"}},
    {"Strict: no full match",
     LOC3("  status: Unhealthy\n", "") SVC_HDR
     "  vips: [\"/10.96.0.1\"]\n  ports: {80: 8080}\n"
     "  loadBalancer: {routingPreferences: [Region, Zone], mode: Strict}\n",
     80,
     "client",
     NULL,
     -ENOENT,
     {NULL}},
    {"Strict: node scope",
     LOC3("", "  node: n1\n") SVC_HDR "  vips: [\"/10.96.0.1\"]\n  ports: {80: 8080}\n"
                                      "  loadBalancer: {routingPreferences: [Node], mode: Strict}\n",
     80,
     "client",
     NULL,
     0,
     {"b 8080 10.0.0.2"}},
    {"Strict without a source",
     LOC3("", "") SVC_HDR "  vips: [\"/10.96.0.1\"]\n  ports: {80: 8080}\n"
                          "  loadBalancer: {routingPreferences: [Region], mode: Strict}\n",
     80,
     NULL,
     NULL,
     -ENOENT,
     {NULL}},
    {"Standard ignores routing preferences",
     LOC3("", "") SVC_HDR "  vips: [\"/10.96.0.1\"]\n  ports: {80: 8080}\n"
                          "  loadBalancer: {routingPreferences: [Region, Zone], mode: Standard}\n",
     80,
     "client",
     NULL,
     0,
     {"a 8080 10.0.0.1", "b 8080 10.0.0.2", "c 8080 10.0.0.3"}},
    /* Endpoint IPs. */
    {"dual-stack endpoint, IPv6 request",
     "workloads:\n" WL("a", "[\"10.0.0.1\", \"fd00::1\"]", MEMBER0) SVC_HDR
     "  vips: [\"/10.96.0.1\", \"/fd00:96::1\"]\n  ports: {80: 8080}\n",
     80,
     NULL,
     "fd00:96::1",
     0,
     {"a 8080 fd00::1"}},
    {"dual-stack endpoint, IPv4 request",
     "workloads:\n" WL("a", "[\"fd00::1\", \"10.0.0.1\"]", MEMBER0) SVC_HDR
     "  vips: [\"/10.96.0.1\", \"/fd00:96::1\"]\n  ports: {80: 8080}\n",
     80,
     NULL,
     "10.96.0.1",
     0,
     {"a 8080 10.0.0.1"}},
    {"ipFamilies IPv4 overrides the request's family",
     "workloads:\n" WL("a", "[\"fd00::1\", \"10.0.0.1\"]", MEMBER0) SVC_HDR
     "  vips: [\"/fd00:96::1\"]\n  ports: {80: 8080}\n  ipFamilies: IPv4\n",
     80,
     NULL,
     "fd00:96::1",
     0,
     {"a 8080 10.0.0.1"}},
    {"ipFamilies IPv6: IPv4-only endpoints are not eligible",
     "workloads:\n" WL("a", "[\"10.0.0.1\"]", MEMBER0) WL("b", "[\"fd00::2\"]", MEMBER0) SVC_HDR
     "  vips: [\"/fd00:96::1\"]\n  ports: {80: 8080}\n  ipFamilies: IPv6\n",
     80,
     NULL,
     "10.96.0.1",
     0,
     {"b 8080 fd00::2"}},
    {"IPv4 request, IPv6-only endpoint: its IPv6 address",
     "workloads:\n" WL("a", "[\"fd00::1\"]", MEMBER0) SVC_HDR
     "  vips: [\"/10.96.0.1\"]\n  ports: {80: 8080}\n",
     80,
     NULL,
     "10.96.0.1",
     0,
     {"a 8080 fd00::1"}},
    {"ipFamilies IPv6, IPv4-only endpoint: not eligible even when dialled by its own IP",
     "workloads:\n" WL("a", "[\"10.0.0.1\", \"10.0.0.9\"]", MEMBER0) SVC_HDR
     "  vips: [\"/10.96.0.1\"]\n  ports: {80: 8080}\n  ipFamilies: IPv6\n",
     80,
     NULL,
     "10.0.0.9",
     -ENOENT,
     {NULL}},
    {"original destination that is the workload's own IP (second address)",
     "workloads:\n" WL("a", "[\"10.0.0.1\", \"10.0.0.9\"]", MEMBER0) SVC_HDR
     "  vips: [\"/10.96.0.1\"]\n  ports: {80: 8080}\n",
     80,
     NULL,
     "10.0.0.9",
     0,
     {"a 8080 10.0.0.9"}},
};

static void run_case(const struct lb_case *c)
{
    struct snapshot *s = load_ok(c->yaml);
    const struct service *svc = snapshot_service_by_host(s, "default/svc.default.svc.cluster.local");
    assert_non_null(svc);
    struct lb_source src = {.wl = c->src ? wl_named(s, c->src) : NULL};
    struct ip_addr dst, *dstp = NULL;
    if (c->orig_dst) {
        assert_int_equal(ip_parse(c->orig_dst, &dst), 0);
        dstp = &dst;
    }
    unsigned seen[4] = {0};
    uint64_t seed = 42;
    for (int i = 0; i < 2000; i++) {
        struct lb_choice ch;
        memset(&ch, 0, sizeof(ch));
        int rc = lb_pick(s, svc, c->port, &src, dstp, splitmix(&seed), &ch);
        if (rc != c->rc) fail_msg("%s: lb_pick returned %d, want %d", c->name, rc, c->rc);
        if (rc) break;
        char got[128], ipbuf[IP_STRLEN];
        snprintf(got, sizeof(got), "%s %u %s", ch.wl->name, ch.port, ip_format(&ch.ip, ipbuf, sizeof(ipbuf)));
        size_t k = 0;
        while (k < 4 && c->want[k] && strcmp(c->want[k], got))
            k++;
        if (k == 4 || !c->want[k]) fail_msg("%s: unexpected pick \"%s\"", c->name, got);
        seen[k]++;
    }
    for (size_t k = 0; k < 4 && c->want[k]; k++)
        if (!seen[k]) fail_msg("%s: \"%s\" never picked", c->name, c->want[k]);
    snapshot_unref(s);
}

static void test_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        run_case(&cases[i]);
}

/* ---- weights, VIPs, endpoint index, argument checks ---- */

static void test_weights(void **state)
{
    (void)state;
    struct snapshot *s = load_ok("workloads:\n" WL("a", "[\"10.0.0.1\"]", MEMBER0 "  capacity: 1\n")
                                     WL("b", "[\"10.0.0.2\"]", MEMBER0 "  capacity: 2\n")
                                         WL("c", "[\"10.0.0.3\"]", MEMBER0 "  capacity: 7\n") SVC_HDR
                                 "  vips: [\"/10.96.0.1\"]\n  ports: {80: 8080}\n");
    const struct service *svc = snapshot_service_by_host(s, "default/svc.default.svc.cluster.local");
    unsigned n[3] = {0};
    uint64_t seed = 7;
    for (int i = 0; i < 10000; i++) {
        struct lb_choice ch;
        assert_int_equal(lb_pick(s, svc, 80, NULL, NULL, splitmix(&seed), &ch), 0);
        n[ch.wl->name[0] - 'a']++;
    }
    /* Expected 1000 / 2000 / 7000; the binomial standard deviation is at most ~46, so 200 is > 4 sigma. */
    const unsigned want[3] = {1000, 2000, 7000};
    for (int i = 0; i < 3; i++)
        if (n[i] + 200 < want[i] || n[i] > want[i] + 200)
            fail_msg("endpoint %c picked %u times, want about %u", 'a' + i, n[i], want[i]);
    /* The map from rnd to endpoint is exact: the lowest rnd gives the first, the highest the last. */
    struct lb_choice ch;
    assert_int_equal(lb_pick(s, svc, 80, NULL, NULL, 0, &ch), 0);
    assert_string_equal(ch.wl->name, "a");
    assert_int_equal(lb_pick(s, svc, 80, NULL, NULL, UINT64_MAX, &ch), 0);
    assert_string_equal(ch.wl->name, "c");
    assert_int_equal(lb_pick(s, svc, 80, NULL, NULL, UINT64_MAX / 10 * 2, &ch), 0);
    assert_string_equal(ch.wl->name, "b");
    snapshot_unref(s);
}

static void test_several_vips(void **state)
{
    (void)state;
    struct snapshot *s = load_ok("workloads:\n" WL("a", "[\"10.0.0.1\", \"fd00::1\"]", MEMBER0) SVC_HDR
                                 "  vips: [\"/10.96.0.1\", \"/fd00:96::1\", \"net2/10.96.0.2\"]\n"
                                 "  ports: {80: 8080}\n");
    const char *vips[][3] = {
        {"", "10.96.0.1", "10.0.0.1"}, {"", "fd00:96::1", "fd00::1"}, {"net2", "10.96.0.2", "10.0.0.1"}};
    for (size_t i = 0; i < 3; i++) {
        struct ip_addr vip, want;
        assert_int_equal(ip_parse(vips[i][1], &vip), 0);
        assert_int_equal(ip_parse(vips[i][2], &want), 0);
        const struct service *svc = snapshot_service_by_vip(s, vips[i][0], &vip);
        assert_non_null(svc);
        struct lb_choice ch;
        assert_int_equal(lb_pick(s, svc, 80, NULL, &vip, 1, &ch), 0);
        assert_string_equal(ch.wl->name, "a");
        assert_true(ip_equal(&ch.ip, &want));
    }
    snapshot_unref(s);
}

static void test_endpoint_index(void **state)
{
    (void)state;
    struct snapshot *s = load_ok(
        "workloads:\n" WL("a", "[\"10.0.0.1\"]",
                          "  services: {\"default/svc.default.svc.cluster.local\": {}, \"default/other\": {},"
                          " \"default/missing\": {}}\n")
            WL("b", "[\"10.0.0.2\"]", MEMBER0 "  status: Unhealthy\n") WL("c", "[\"10.0.0.3\"]", "") SVC_HDR
        "  ports: {80: 8080}\n"
        "- name: other\n  namespace: default\n  hostname: other\n"
        "- name: none\n  namespace: default\n  hostname: none\n");
    const struct service *svc = snapshot_service_by_host(s, "default/svc.default.svc.cluster.local");
    const struct service *other = snapshot_service_by_host(s, "default/other");
    const struct service *none = snapshot_service_by_host(s, "default/none");
    /* All endpoints, before filtering (b is unhealthy but counted). */
    assert_int_equal(snapshot_service_n_endpoints(s, svc), 2);
    assert_int_equal(snapshot_service_n_endpoints(s, other), 1);
    assert_int_equal(snapshot_service_n_endpoints(s, none), 0);
    size_t n;
    const struct workload *const *eps = snapshot_service_endpoints(s, svc, &n);
    assert_int_equal(n, 2);
    assert_string_equal(eps[0]->name, "a");
    assert_string_equal(eps[1]->name, "b");
    assert_null(snapshot_service_endpoints(s, none, &n));
    assert_int_equal(n, 0);
    /* other has no ports: nothing to pick. */
    struct lb_choice ch;
    assert_int_equal(lb_pick(s, other, 80, NULL, NULL, 0, &ch), -ENOENT);
    /* A service that is not from this snapshot. */
    struct service fake = *svc;
    assert_int_equal(lb_pick(s, &fake, 80, NULL, NULL, 0, &ch), -EINVAL);
    assert_int_equal(snapshot_service_n_endpoints(s, &fake), 0);
    snapshot_unref(s);
}

static void test_candidates_rank(void **state)
{
    (void)state;
    struct snapshot *s = load_ok(
        LOC3("", "") SVC_HDR "  vips: [\"/10.96.0.1\"]\n  ports: {80: 8080}\n"
                             "  loadBalancer: {routingPreferences: [Region, Zone, Node], mode: Failover}\n");
    const struct service *svc = snapshot_service_by_host(s, "default/svc.default.svc.cluster.local");
    struct lb_source src = {.wl = wl_named(s, "client")};
    const struct workload *const *eps;
    size_t n;
    unsigned rank;
    assert_int_equal(lb_candidates(s, svc, 80, &src, &eps, &n, &rank), 0);
    assert_int_equal(n, 1);
    assert_string_equal(eps[0]->name, "a");
    assert_int_equal(rank, 2); /* region and zone match; the node does not */
    snapshot_unref(s);
}

/* ---- randomized cross-check against a transcription of ztunnel's load_balance ---- */

static const char *ref_scope(const struct workload *w, uint8_t scope)
{
    switch (scope) {
    case LB_SCOPE_REGION:
        return w->locality.region;
    case LB_SCOPE_ZONE:
        return w->locality.zone;
    case LB_SCOPE_SUBZONE:
        return w->locality.subzone;
    case LB_SCOPE_NODE:
        return w->node;
    case LB_SCOPE_CLUSTER:
        return w->cluster_id;
    default:
        return w->network;
    }
}

/* ztunnel's per-connection algorithm, linear in the number of workloads: returns how many workloads are
 * eligible, marking them in mark[] (indexed like snapshot_workload_at). */
static size_t ref_eligible(const struct snapshot *s, const struct service *svc, uint16_t port,
                           const struct workload *src, bool *mark)
{
    size_t nw = snapshot_n_workloads(s), n = 0;
    int *rank = calloc(nw, sizeof(*rank));
    int max = -1;
    for (size_t i = 0; i < nw; i++) {
        const struct workload *w = snapshot_workload_at(s, i);
        rank[i] = -1;
        mark[i] = false;
        if (!workload_service_ports(w, svc->namespace_, svc->hostname)) continue;
        if (!w->healthy && svc->health_policy != LB_HEALTH_ALLOW_ALL) continue;
        if (!w->n_ips) continue;
        if (!service_target_port(svc, w, port)) continue;
        int r = 0;
        if (svc->lb_mode != LB_MODE_STANDARD) {
            for (size_t k = 0; k < svc->n_routing_prefs; k++) {
                if (!src ||
                    strcmp(ref_scope(src, svc->routing_prefs[k]), ref_scope(w, svc->routing_prefs[k])))
                    break;
                r++;
            }
            if (svc->lb_mode == LB_MODE_STRICT && (size_t)r != svc->n_routing_prefs) continue;
        }
        rank[i] = r;
        if (r > max) max = r;
    }
    for (size_t i = 0; i < nw; i++)
        if (rank[i] >= 0 && rank[i] == max) {
            mark[i] = true;
            n++;
        }
    free(rank);
    return n;
}

struct sbuf {
    char *p;
    size_t n, cap;
};
static void sb_printf(struct sbuf *b, const char *fmt, ...)
{
    va_list ap;
    for (;;) {
        va_start(ap, fmt);
        int k = vsnprintf(b->p + b->n, b->cap - b->n, fmt, ap);
        va_end(ap);
        assert_true(k >= 0);
        if ((size_t)k < b->cap - b->n) {
            b->n += (size_t)k;
            return;
        }
        b->cap = b->cap * 2 + (size_t)k + 64;
        b->p = realloc(b->p, b->cap);
        assert_non_null(b->p);
    }
}

static void test_random_vs_reference(void **state)
{
    (void)state;
    static const char *const modes[] = {"Standard", "Failover", "Strict"};
    static const char *const scopes[] = {"Region", "Zone", "Subzone", "Node", "Cluster", "Network"};
    uint64_t seed = 1234;
    for (int round = 0; round < 60; round++) {
        struct sbuf b = {0};
        int nw = 1 + (int)(splitmix(&seed) % 60);
        sb_printf(&b, "workloads:\n");
        for (int i = 0; i < nw; i++) {
            uint64_t r = splitmix(&seed);
            sb_printf(&b,
                      "- name: w%d\n  namespace: default\n  workloadIps: [\"10.%d.%d.%d\"]\n"
                      "  locality: {region: r%d, zone: z%d, subzone: s%d}\n  node: n%d\n  clusterId: c%d\n"
                      "  network: net%d\n  capacity: %d\n  status: %s\n",
                      i, round, i / 250, i % 250 + 1, (int)(r % 3), (int)(r >> 2 & 1), (int)(r >> 3 & 1),
                      (int)(r >> 4 & 3), (int)(r >> 6 & 1), (int)(r >> 7 & 1), (int)(r >> 8 & 3),
                      (r >> 10) % 5 ? "Healthy" : "Unhealthy");
            if ((r >> 13) % 7) /* most are endpoints; some map port 81 */
                sb_printf(&b, "  services: {\"default/svc\": {%s}}\n", (r >> 16) % 3 ? "" : "81: 9081");
        }
        uint64_t r = splitmix(&seed);
        int np = (int)(r % 4);
        sb_printf(
            &b,
            "services:\n- name: svc\n  namespace: default\n  hostname: svc\n  ports: {80: 8080, 81: 0}\n"
            "  loadBalancer: {mode: %s, healthPolicy: %s, routingPreferences: [",
            modes[(r >> 2) % 3], (r >> 4) % 4 ? "OnlyHealthy" : "AllowAll");
        for (int k = 0; k < np; k++)
            sb_printf(&b, "%s%s", k ? ", " : "", scopes[(r >> (8 + 3 * k)) % 6]);
        sb_printf(&b, "]}\n");
        struct snapshot *s = load_ok(b.p);
        free(b.p);
        const struct service *svc = snapshot_service_by_host(s, "default/svc");
        bool *mark = calloc((size_t)nw, sizeof(*mark));
        for (int si = -1; si < nw; si++) {
            const struct workload *src = si < 0 ? NULL : snapshot_workload_at(s, (size_t)si);
            struct lb_source ls = {.wl = src};
            for (uint16_t port = 80; port <= 81; port++) {
                size_t want = ref_eligible(s, svc, port, src, mark);
                const struct workload *const *eps;
                size_t n;
                int rc = lb_candidates(s, svc, port, &ls, &eps, &n, NULL);
                if (!want) {
                    assert_int_equal(rc, -ENOENT);
                    continue;
                }
                assert_int_equal(rc, 0);
                assert_int_equal(n, want);
                for (size_t k = 0; k < n; k++) {
                    size_t idx = (size_t)(eps[k] - snapshot_workload_at(s, 0));
                    assert_true(idx < (size_t)nw && mark[idx]);
                }
                struct lb_choice ch;
                rc = lb_pick(s, svc, port, &ls, NULL, splitmix(&seed), &ch);
                if (rc == 0) {
                    assert_true(mark[ch.wl - snapshot_workload_at(s, 0)]);
                    assert_int_equal(ch.port, port == 80 ? 8080 : 9081);
                } else {
                    assert_int_equal(rc, -ENOENT); /* only when every candidate has capacity 0 */
                    for (size_t k = 0; k < n; k++)
                        assert_int_equal(eps[k]->capacity, 0);
                }
            }
        }
        free(mark);
        snapshot_unref(s);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),           cmocka_unit_test(test_weights),
        cmocka_unit_test(test_several_vips),    cmocka_unit_test(test_endpoint_index),
        cmocka_unit_test(test_candidates_rank), cmocka_unit_test(test_random_vs_reference),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
