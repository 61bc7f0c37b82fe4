/* L4 authorization decisions per second (src/mesh/authz.c) as the mesh grows.
 *
 * Shows that the cost of a decision depends on the policies that apply to the destination workload
 * (its namespace's, the global ones and the ones it selects by name), not on how many policies the mesh
 * holds: 10 applicable policies cost the same in a mesh of 10 and in a mesh of 10 000 spread over 1000
 * namespaces. The last rows follow ztunnel's RBAC benchmark idea: 10 000 applicable DENY policies with
 * 10 rules each that all miss, the worst case, where cost is linear in the applicable rules.
 *
 * usage: build/bench/bench_authz [seconds-per-row]   (default 0.5, split over 5 interleaved rounds)
 * Prints one table; ratios are against the first row of the same run (never compare wall-clock figures
 * across machines). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/log.h"
#include "mesh/authz.h"
#include "mesh/config.h"

struct sbuf {
    char *p;
    size_t len, cap;
};

static void sb_printf(struct sbuf *b, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) abort();
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        b->cap = b->cap ? b->cap * 2 : 1 << 16;
        b->p = realloc(b->p, b->cap);
        if (!b->p) abort();
    }
}

static const char workloads_yaml[] =
    "workloads:\n"
    "- {uid: server, name: server, namespace: ns0, workloadIps: [\"10.0.0.2\"]}\n"
    "- {uid: lonely, name: lonely, namespace: empty, workloadIps: [\"10.0.0.3\"]}\n"
    "policies:\n";

/* An ALLOW policy whose single rule needs principal .../sa/sa-<i> AND port 8080. */
static void allow_policy(struct sbuf *b, const char *ns, int i)
{
    sb_printf(b,
              "- {name: allow-%d, namespace: %s, scope: Namespace, action: Allow, rules: "
              "[[[{principals: [{Exact: \"cluster.local/ns/client/sa/sa-%d\"}]}], [{destinationPorts: "
              "[8080]}]]]}\n",
              i, ns, i % 10);
}

/* A DENY policy with 10 rules; each needs port 8080 AND a principal the benchmark's peer never has. */
static void deny_policy(struct sbuf *b, const char *ns, int i)
{
    sb_printf(b, "- {name: deny-%d, namespace: %s, scope: Namespace, action: Deny, rules: [", i, ns);
    for (int r = 0; r < 10; r++)
        sb_printf(
            b, "%s[[{destinationPorts: [8080], principals: [{Exact: \"cluster.local/ns/bad-%d/sa/x%d\"}]}]]",
            r ? ", " : "", i, r);
    sb_printf(b, "]}\n");
}

static struct snapshot *build(const struct sbuf *b)
{
    struct snapshot *s = NULL;
    char err[512];
    if (config_load_buf(b->p, b->len, "bench.yaml", &s, err, sizeof(err)) != 0) {
        fprintf(stderr, "bench_authz: %s\n", err);
        exit(1);
    }
    return s;
}

/* Meshes. n_policies ALLOW policies spread round-robin over n_ns namespaces ns0..; so ns0 holds
 * n_policies / n_ns of them. */
static struct snapshot *mesh_allow(int n_policies, int n_ns)
{
    struct sbuf b = {0};
    char ns[32];
    sb_printf(&b, "%s", workloads_yaml);
    for (int i = 0; i < n_policies; i++) {
        snprintf(ns, sizeof(ns), "ns%d", i % n_ns);
        allow_policy(&b, ns, i / n_ns);
    }
    struct snapshot *s = build(&b);
    free(b.p);
    return s;
}

/* n_applicable 10-rule DENY policies in ns0 and n_elsewhere more spread over 999 other namespaces. */
static struct snapshot *mesh_deny(int n_applicable, int n_elsewhere)
{
    struct sbuf b = {0};
    char ns[32];
    sb_printf(&b, "%s", workloads_yaml);
    for (int i = 0; i < n_applicable; i++)
        deny_policy(&b, "ns0", i);
    for (int i = 0; i < n_elsewhere; i++) {
        snprintf(ns, sizeof(ns), "ns%d", 1 + i % 999);
        deny_policy(&b, ns, n_applicable + i);
    }
    struct snapshot *s = build(&b);
    free(b.p);
    return s;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

struct row {
    const char *what;
    struct snapshot *s;
    const char *dst_uid;
    enum authz_result want;
};

static double measure(const struct row *r, double secs, size_t *applicable)
{
    const struct workload *w = snapshot_workload_by_uid(r->s, r->dst_uid);
    struct authz_conn c = {.dst_port = 8080, .src_identity = "spiffe://cluster.local/ns/client/sa/sa-9"};
    size_t n_ns, n_gl;
    ip_parse("10.1.0.5", &c.src_ip);
    ip_parse("10.0.0.2", &c.dst_ip);
    snapshot_namespace_policies(r->s, w->namespace_, &n_ns);
    snapshot_global_policies(r->s, &n_gl);
    *applicable = n_ns + n_gl + w->n_authorization_policies;
    double t0 = now(), t;
    if (authz_check(r->s, w, &c, NULL) != r->want) {
        fprintf(stderr, "bench_authz: %s: unexpected decision\n", r->what);
        exit(1);
    }
    /* Read the clock about every 100 us whatever a decision costs. */
    double one = now() - t0;
    int batch = one > 1e-4 ? 1 : one < 1e-4 / 256 ? 256 : (int)(1e-4 / one);
    unsigned long n = 0;
    unsigned sink = 0;
    t0 = now();
    do {
        for (int i = 0; i < batch; i++)
            sink += (unsigned)authz_check(r->s, w, &c, NULL);
        n += (unsigned long)batch;
        t = now();
    } while (t - t0 < secs);
    if (sink == 12345) puts(""); /* keep the loop from being optimized away */
    return (double)n / (t - t0);
}

int main(int argc, char **argv)
{
    double secs = argc > 1 ? atof(argv[1]) : 0.5;
    if (secs <= 0) secs = 0.5;
    log_set_level("warn");

    fprintf(stderr, "building meshes (10 000 x 10-rule policies take a few seconds of YAML)...\n");
    struct row rows[] = {
        {"10 ALLOW in mesh, all in dst ns", mesh_allow(10, 1), "server", AUTHZ_ALLOW},
        {"10 000 ALLOW over 1000 ns, 10 in dst ns", mesh_allow(10000, 1000), "server", AUTHZ_ALLOW},
        {"10 000 ALLOW over 1000 ns, dst ns has none", NULL, "lonely", AUTHZ_ALLOW},
        {"10 DENY x 10 rules, all in dst ns", mesh_deny(10, 0), "server", AUTHZ_ALLOW},
        {"10 000 DENY x 10 rules over 1000 ns, 10 in dst ns", mesh_deny(10, 9990), "server", AUTHZ_ALLOW},
        {"10 000 DENY x 10 rules, all in dst ns", mesh_deny(10000, 0), "server", AUTHZ_ALLOW},
    };
    rows[2].s = rows[1].s;
    snapshot_ref(rows[2].s);

    /* Rows are measured in interleaved rounds and each keeps its best round, so a burst of load from
     * other processes on this shared machine does not land on one row only. */
    enum { N_ROWS = sizeof(rows) / sizeof(rows[0]), ROUNDS = 5 };
    double best[N_ROWS] = {0};
    size_t applicable[N_ROWS];
    for (int round = 0; round < ROUNDS; round++)
        for (size_t i = 0; i < N_ROWS; i++) {
            double rate = measure(&rows[i], secs / ROUNDS, &applicable[i]);
            if (rate > best[i]) best[i] = rate;
        }
    printf("%-52s %8s %10s %14s %12s %8s\n", "scenario", "mesh", "applicable", "decisions/s", "ns/decision",
           "vs row 1");
    for (size_t i = 0; i < N_ROWS; i++)
        printf("%-52s %8zu %10zu %14.0f %12.1f %7.2fx\n", rows[i].what, snapshot_n_policies(rows[i].s),
               applicable[i], best[i], 1e9 / best[i], best[0] / best[i]);
    printf("(vs row 1 = time per decision relative to row 1; rows 1-2 and 4-5 differ only in mesh size)\n");
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++)
        snapshot_unref(rows[i].s);
    return 0;
}
