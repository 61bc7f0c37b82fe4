/* Snapshot build benchmark (src/mesh/builder.c, src/mesh/config.c): 100 000 workloads and 10 000 services
 * (the shape of tests/unit/test_config.c's test_large: one IP, one service entry each) built twice,
 *   - through the builder directly, as the xDS store will (plain structs in, nothing parsed), and
 *   - from LocalConfig YAML end to end (config_load_buf: libyaml scanner, walker, builder).
 * Each is run REPEAT times and the best and median are printed. Built against a tree without builder.h
 * (the code before the builder existed) only the YAML figure is printed, for a before/after comparison.
 *
 * Usage: build/bench/bench_builder [repeat] */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mesh/config.h"
#if __has_include("mesh/builder.h")
#include "mesh/builder.h"
#define HAVE_BUILDER 1
#endif

#define N_WORKLOADS 100000
#define N_SERVICES 10000
#define N_NAMESPACES 100
#define DEFAULT_REPEAT 5
#define MAX_REPEAT 50

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void report(const char *what, double *t, int n)
{
    qsort(t, (size_t)n, sizeof(*t), cmp_double);
    printf("  %-44s best %7.3f s   median %7.3f s   (%d runs)\n", what, t[0], t[n / 2], n);
}

static char *make_yaml(size_t *len)
{
    size_t cap = (size_t)N_WORKLOADS * 220 + (size_t)N_SERVICES * 200 + 64, n = 0;
    char *y = malloc(cap);
    if (!y) abort();
    n += (size_t)snprintf(y + n, cap - n, "workloads:\n");
    for (int i = 0; i < N_WORKLOADS; i++)
        n += (size_t)snprintf(
            y + n, cap - n,
            "- {uid: \"c//v1/Pod/ns%d/w%d\", name: w%d, namespace: ns%d, serviceAccount: sa%d, "
            "workloadIps: [10.%d.%d.%d], protocol: HBONE, node: n%d, "
            "services: {\"ns%d/s%d.svc\": {80: 8080}}}\n",
            i % N_NAMESPACES, i, i, i % N_NAMESPACES, i % 50, i >> 16, (i >> 8) & 255, i & 255, i % 10,
            i % N_NAMESPACES, i % N_SERVICES);
    n += (size_t)snprintf(y + n, cap - n, "services:\n");
    for (int i = 0; i < N_SERVICES; i++)
        n += (size_t)snprintf(y + n, cap - n,
                              "- {name: s%d, namespace: ns%d, hostname: s%d.svc, vips: [\"/172.16.%d.%d\"], "
                              "ports: {80: 8080}}\n",
                              i, i % N_NAMESPACES, i, i >> 8, i & 255);
    *len = n;
    return y;
}

#ifdef HAVE_BUILDER
/* The same resources as plain structs, as a feeder holding decoded xDS resources would have them. */
struct feed {
    struct workload w[N_WORKLOADS];
    struct ip_addr ip[N_WORKLOADS];
    struct wl_service_ports sp[N_WORKLOADS];
    struct service s[N_SERVICES];
    struct net_addr vip[N_SERVICES];
    char strs[N_WORKLOADS * 96 + N_SERVICES * 64];
};
static const struct port_map port80 = {.port = 80, .target = 8080};

/* Formats a string into the feed's string area at *p and advances *p past it. */
__attribute__((format(printf, 2, 3))) static const char *put(char **p, const char *fmt, ...)
{
    char *s = *p;
    va_list ap;
    va_start(ap, fmt);
    *p += vsnprintf(s, 48, fmt, ap) + 1;
    va_end(ap);
    return s;
}

static void make_feed(struct feed *f)
{
    char *p = f->strs;
    for (int i = 0; i < N_WORKLOADS; i++) {
        f->ip[i] =
            (struct ip_addr){.family = AF_INET, .a = {10, (uint8_t)(i >> 16), (uint8_t)(i >> 8), (uint8_t)i}};
        f->sp[i] =
            (struct wl_service_ports){put(&p, "ns%d/s%d.svc", i % N_NAMESPACES, i % N_SERVICES), &port80, 1};
        f->w[i] = (struct workload){.uid = put(&p, "c//v1/Pod/ns%d/w%d", i % N_NAMESPACES, i),
                                    .name = put(&p, "w%d", i),
                                    .namespace_ = put(&p, "ns%d", i % N_NAMESPACES),
                                    .service_account = put(&p, "sa%d", i % 50),
                                    .node = put(&p, "n%d", i % 10),
                                    .ips = &f->ip[i],
                                    .n_ips = 1,
                                    .protocol = WL_PROTO_HBONE,
                                    .healthy = true,
                                    .capacity = 1,
                                    .services = &f->sp[i],
                                    .n_services = 1};
    }
    for (int i = 0; i < N_SERVICES; i++) {
        f->vip[i] = (struct net_addr){"", {.family = AF_INET, .a = {172, 16, (uint8_t)(i >> 8), (uint8_t)i}}};
        f->s[i] = (struct service){.name = put(&p, "s%d", i),
                                   .namespace_ = put(&p, "ns%d", i % N_NAMESPACES),
                                   .hostname = put(&p, "s%d.svc", i),
                                   .vips = &f->vip[i],
                                   .n_vips = 1,
                                   .ports = &port80,
                                   .n_ports = 1};
    }
}

static struct snapshot *build(const struct feed *f)
{
    struct snapshot_builder *b;
    struct snapshot *s = NULL;
    struct builder_err e;
    char msg[768];
    if (snapshot_builder_new(&b, NULL)) abort();
    for (int i = 0; i < N_WORKLOADS; i++)
        if (builder_add_workload(b, &f->w[i], &e)) {
            fprintf(stderr, "%s\n", builder_err_format(&e, msg, sizeof(msg)));
            abort();
        }
    for (int i = 0; i < N_SERVICES; i++)
        if (builder_add_service(b, &f->s[i], &e)) abort();
    if (builder_finish(b, &s)) abort();
    return s;
}
#endif

int main(int argc, char **argv)
{
    int repeat = argc > 1 ? atoi(argv[1]) : DEFAULT_REPEAT;
    if (repeat < 1 || repeat > MAX_REPEAT) repeat = DEFAULT_REPEAT;
    double t[MAX_REPEAT];
    size_t len;
    char *y = make_yaml(&len);
    char err[512];
    printf("snapshot build: %d workloads + %d services\n", N_WORKLOADS, N_SERVICES);
#ifdef HAVE_BUILDER
    struct feed *f = malloc(sizeof(*f));
    if (!f) abort();
    make_feed(f);
    for (int r = 0; r < repeat; r++) {
        double t0 = now_s();
        struct snapshot *s = build(f);
        t[r] = now_s() - t0;
        if (snapshot_n_workloads(s) != N_WORKLOADS) abort();
        snapshot_unref(s);
    }
    report("builder, direct calls (the xDS store's path)", t, repeat);
    free(f);
#endif
    for (int r = 0; r < repeat; r++) {
        struct snapshot *s = NULL;
        double t0 = now_s();
        if (config_load_buf(y, len, "bench.yaml", &s, err, sizeof(err))) {
            fprintf(stderr, "%s\n", err);
            return 1;
        }
        t[r] = now_s() - t0;
        snapshot_unref(s);
    }
    char what[64];
    snprintf(what, sizeof(what), "LocalConfig YAML end to end (%.1f MB)", (double)len / 1e6);
    report(what, t, repeat);
    free(y);
    return 0;
}
