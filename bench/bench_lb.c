/* Load-balancing micro-benchmark (src/mesh/lb.c): endpoint picks per second for services of 10, 1 000 and
 * 10 000 endpoints, Standard and Failover, next to a direct transcription of ztunnel's per-connection
 * algorithm (scan the service's endpoints, filter, rank, weighted choice: O(n)) run on the same snapshot;
 * then the time to load a 10 000-service / 100 000-workload config and the pick rate inside it.
 *
 * Usage: build/bench/bench_lb [--quick]
 * Prints a table; costs are also given relative to the 10-endpoint row of the same run, so the figures
 * compare within one invocation on one machine (absolute numbers vary with load). */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "mesh/config.h"
#include "mesh/lb.h"
#include "mesh/snapshot_impl.h" /* lb_index_build(), to time the index alone */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t xorshift(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
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
        if (k < 0) abort();
        if ((size_t)k < b->cap - b->n) {
            b->n += (size_t)k;
            return;
        }
        b->cap = b->cap * 2 + (size_t)k + 4096;
        b->p = realloc(b->p, b->cap);
        if (!b->p) abort();
    }
}

static struct snapshot *load(const struct sbuf *b, double *secs)
{
    struct snapshot *s = NULL;
    char err[512];
    double t0 = now_s();
    int rc = config_load_buf(b->p, b->n, "bench.yaml", &s, err, sizeof(err));
    if (secs) *secs = now_s() - t0;
    if (rc) {
        fprintf(stderr, "bench_lb: config: %s\n", err);
        exit(1);
    }
    return s;
}

/* One service "std" (Standard) and one "fo" (Failover on Network, Region, Zone, Node, as istiod's
 * PreferClose plus node), both selecting the same n endpoints spread over 3 regions x 3 zones and n/10
 * nodes, capacities 1..4, one in 20 unhealthy. The client sits in r0/z0/node0. */
static struct snapshot *make_service(unsigned n)
{
    struct sbuf b = {0};
    uint64_t x = 88172645463325252ULL;
    sb_printf(&b, "workloads:\n- name: client\n  namespace: default\n  workloadIps: [\"10.255.0.1\"]\n"
                  "  locality: {region: r0, zone: z0}\n  node: node0\n");
    for (unsigned i = 0; i < n; i++) {
        uint64_t r = xorshift(&x);
        sb_printf(&b,
                  "- name: ep%u\n  namespace: default\n  workloadIps: [\"10.%u.%u.%u\"]\n"
                  "  locality: {region: r%u, zone: z%u}\n  node: node%u\n  capacity: %u\n  status: %s\n"
                  "  services: {\"default/std\": {}, \"default/fo\": {}}\n",
                  i, i >> 16, (i >> 8) & 255, i & 255, (unsigned)(r % 3), (unsigned)(r / 3 % 3),
                  (unsigned)(r / 9 % (n / 10 + 1)), (unsigned)(r / 97 % 4 + 1),
                  r / 1013 % 20 ? "Healthy" : "Unhealthy");
    }
    sb_printf(&b, "services:\n- name: std\n  namespace: default\n  hostname: std\n  vips: [\"/10.96.0.1\"]\n"
                  "  ports: {80: 8080}\n"
                  "- name: fo\n  namespace: default\n  hostname: fo\n  vips: [\"/10.96.0.2\"]\n"
                  "  ports: {80: 8080}\n"
                  "  loadBalancer: {routingPreferences: [Network, Region, Zone, Node], mode: Failover}\n");
    struct snapshot *s = load(&b, NULL);
    free(b.p);
    return s;
}

/* ---- ztunnel's per-connection algorithm, for comparison (O(n) per pick, allocates like Istio's Vec) ---- */


static const struct workload *linear_pick(const struct snapshot *s, const struct service *svc, uint16_t port,
                                          const struct workload *src, uint64_t rnd)
{
    size_t n;
    const struct workload *const *eps = snapshot_service_endpoints(s, svc, &n);
    const struct workload **opt = malloc(n * sizeof(*opt));
    size_t k = 0;
    int max = -1;
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++) {
        const struct workload *w = eps[i];
        if (!w->healthy && svc->health_policy != LB_HEALTH_ALLOW_ALL) continue;
        if (!w->n_ips || !service_target_port(svc, w, port)) continue;
        int r = 0;
        if (svc->lb_mode != LB_MODE_STANDARD)
            for (size_t j = 0; j < svc->n_routing_prefs; j++) {
                if (strcmp(lb_scope_value(src, svc->routing_prefs[j]), lb_scope_value(w, svc->routing_prefs[j])))
                    break;
                r++;
            }
        if (r < max) continue;
        if (r > max) {
            max = r;
            k = 0;
            total = 0;
        }
        opt[k++] = w;
        total += w->capacity;
    }
    const struct workload *res = NULL;
    if (total) {
        uint64_t t = (uint64_t)(((unsigned __int128)rnd * total) >> 64);
        for (size_t i = 0; i < k; i++) {
            if (t < opt[i]->capacity) {
                res = opt[i];
                break;
            }
            t -= opt[i]->capacity;
        }
    }
    free(opt);
    return res;
}

static volatile uintptr_t sink;

/* Runs picks for at least `secs` seconds; returns nanoseconds per pick. */
static double time_picks(const struct snapshot *s, const struct service *svc, const struct workload *src,
                         bool linear, double secs)
{
    struct lb_source ls = {.wl = src};
    struct ip_addr vip = svc->vips[0].ip;
    uint64_t x = 2463534242ULL;
    unsigned long iters = 0, batch = linear ? 64 : 4096;
    double t0 = now_s(), t;
    do {
        for (unsigned long i = 0; i < batch; i++) {
            if (linear) {
                sink += (uintptr_t)linear_pick(s, svc, 80, src, xorshift(&x));
            } else {
                struct lb_choice ch;
                if (lb_pick(s, svc, 80, &ls, &vip, xorshift(&x), &ch) == 0) sink += (uintptr_t)ch.wl;
            }
        }
        iters += batch;
        t = now_s() - t0;
    } while (t < secs);
    return t * 1e9 / (double)iters;
}

static void bench_picks(double secs)
{
    static const unsigned sizes[] = {10, 1000, 10000};
    double base[2][2] = {{0}};
    printf("Endpoint picks (lb_pick: prefix sums + binary search; linear: ztunnel's per-connection scan)\n");
    printf("%-9s %9s | %12s %10s %7s | %12s %10s %7s | %7s\n", "mode", "endpoints", "lb_pick/s", "ns/pick",
           "x(10)", "linear/s", "ns/pick", "x(10)", "speedup");
    for (int m = 0; m < 2; m++) {
        for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
            struct snapshot *s = make_service(sizes[i]);
            const struct service *svc = snapshot_service_by_host(s, m ? "default/fo" : "default/std");
            const struct workload *src = snapshot_workload_by_name(s, "default", "client");
            /* Sanity: both algorithms agree that there is something to pick. */
            struct lb_choice ch;
            struct lb_source ls = {.wl = src};
            if (lb_pick(s, svc, 80, &ls, NULL, 1, &ch) || !linear_pick(s, svc, 80, src, 1)) {
                fprintf(stderr, "bench_lb: no endpoint to pick\n");
                exit(1);
            }
            double ns = time_picks(s, svc, src, false, secs);
            double lns = time_picks(s, svc, src, true, secs);
            if (i == 0) {
                base[m][0] = ns;
                base[m][1] = lns;
            }
            printf("%-9s %9u | %12.0f %10.1f %7.2f | %12.0f %10.1f %7.2f | %6.0fx\n",
                   m ? "Failover" : "Standard", sizes[i], 1e9 / ns, ns, ns / base[m][0], 1e9 / lns, lns,
                   lns / base[m][1], lns / ns);
            snapshot_unref(s);
        }
    }
}

/* 10 000 services x 10 endpoints = 100 000 workloads, each naming one service; every tenth service is
 * Failover. */
static void bench_big(double secs)
{
    const unsigned n_svc = 10000, per = 10;
    struct sbuf b = {0};
    sb_printf(&b, "workloads:\n");
    for (unsigned i = 0; i < n_svc * per; i++)
        sb_printf(&b,
                  "- name: w%u\n  namespace: ns%u\n  workloadIps: [\"10.%u.%u.%u\"]\n"
                  "  locality: {region: r%u, zone: z%u}\n  node: node%u\n"
                  "  services: {\"ns%u/svc%u.ns%u.svc.cluster.local\": {80: 8080}}\n",
                  i, i / per / 100, i >> 16, (i >> 8) & 255, i & 255, i % 3, i % 7 % 3, i % 500,
                  i / per / 100, i / per, i / per / 100);
    sb_printf(&b, "services:\n");
    for (unsigned j = 0; j < n_svc; j++)
        sb_printf(&b,
                  "- name: svc%u\n  namespace: ns%u\n  hostname: svc%u.ns%u.svc.cluster.local\n"
                  "  vips: [\"/10.%u.%u.%u\"]\n  ports: {80: 0}\n%s",
                  j, j / 100, j, j / 100, 200 + (j >> 16), (j >> 8) & 255, j & 255,
                  j % 10 ? "" : "  loadBalancer: {routingPreferences: [Region, Zone], mode: Failover}\n");
    double load_s;
    struct snapshot *s = load(&b, &load_s);
    double t0 = now_s();
    if (lb_index_build(s)) { /* rebuilt into the arena, only to time it; freed with the snapshot */
        fprintf(stderr, "bench_lb: lb_index_build failed\n");
        exit(1);
    }
    double idx_s = now_s() - t0;
    printf("\nLarge config: %u services, %u workloads, %.1f MB of YAML\n", n_svc, n_svc * per, b.n / 1e6);
    printf("  config_load_buf (parse + all indexes): %8.3f s\n", load_s);
    printf("  of which the endpoint index + LB pools: %7.3f s (measured by rebuilding it)\n", idx_s);
    /* Connect path inside the big snapshot: VIP lookup + pick on random services. */
    const struct workload *src = snapshot_workload_at(s, 0);
    struct lb_source ls = {.wl = src};
    uint64_t x = 99991;
    unsigned long iters = 0, fails = 0;
    t0 = now_s();
    double t;
    do {
        for (int i = 0; i < 4096; i++) {
            unsigned j = (unsigned)(xorshift(&x) % n_svc);
            struct ip_addr vip = {.family = AF_INET,
                                  .a = {10, (uint8_t)(200 + (j >> 16)), (uint8_t)(j >> 8), (uint8_t)j}};
            const struct service *svc = snapshot_service_by_vip(s, "", &vip);
            struct lb_choice ch;
            if (!svc || lb_pick(s, svc, 80, &ls, &vip, xorshift(&x), &ch))
                fails++;
            else
                sink += (uintptr_t)ch.wl;
        }
        iters += 4096;
        t = now_s() - t0;
    } while (t < secs);
    printf("  VIP lookup + lb_pick on random services: %.0f /s (%.1f ns each)%s\n", iters / t,
           t * 1e9 / iters, fails ? " -- SOME FAILED" : "");
    snapshot_unref(s);
    free(b.p);
}

int main(int argc, char **argv)
{
    double secs = argc > 1 && !strcmp(argv[1], "--quick") ? 0.05 : 0.3;
    bench_picks(secs);
    bench_big(secs);
    return 0;
}
