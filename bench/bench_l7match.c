/* The waypoint's route match (src/mesh/l7.h l7_routes_for + l7_match_ex) as routes grow: the cost in ns of
 * finding the rule for one request among 10, 100 and 1000 routes on one Service, for HTTPRoutes (Gateway API
 * precedence, resolved once at build time) and a VirtualService (rules in the order written), with the
 * request matching the first rule, the last one, and none (404). The routes are converted from YAML by
 * zmeshd's own conversion, as the waypoint receives them.
 *
 * usage: build/bench/bench_l7match [seconds-per-row]   (default 0.3)
 * Prints one table; compare rows of the same run only. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "mesh/l7.h"
#include "zmeshd/l7.h"
#include "zmeshd/manifest.h"
#include "zmeshd/vs.h"

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

static void on_finding(void *ud, const struct manifest_finding *f)
{
    char buf[1024];
    if (f->level == MANIFEST_ERROR) {
        fprintf(stderr, "bench_l7match: %s\n", manifest_finding_format(f, buf, sizeof(buf)));
        exit(1);
    }
    (void)ud;
}

static int on_doc(void *ud, json_t *doc, const struct manifest_src *src)
{
    struct l7_builder *b = ud;
    uint8_t *pb;
    size_t len;
    char name[L7_NAME_MAX], err[512];
    const char *kind = json_string_value(json_object_get(doc, "kind"));
    int rc = kind && !strcmp(kind, "VirtualService")
                 ? vs_convert(doc, src, NULL, &pb, &len, name, sizeof(name), on_finding, NULL)
                 : l7_convert_route(doc, src, &pb, &len, name, sizeof(name), on_finding, NULL);
    if (rc < 0 || l7_builder_add(b, L7_TYPE_URL_HTTP_ROUTE, name, pb, len, err, sizeof(err)) < 0) {
        fprintf(stderr, "bench_l7match: %s\n", rc < 0 ? "conversion failed" : err);
        exit(1);
    }
    free(pb);
    return 0;
}

/* n routes on Service app/svc, each for path prefix /r<i>/ and header x-tenant: t<i>: n HTTPRoutes of one
 * rule each, or one VirtualService of n http routes. */
static struct l7_config *build(int n, bool vs)
{
    struct sbuf b = {0};
    if (vs) {
        sb_printf(
            &b, "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: big, namespace: "
                "app}\nspec:\n  hosts: [svc]\n  http:\n");
        for (int i = 0; i < n; i++)
            sb_printf(&b,
                      "  - match: [{uri: {prefix: /r%d/}, headers: {x-tenant: {exact: t%d}}}]\n"
                      "    route: [{destination: {host: svc, port: {number: 80}}}]\n",
                      i, i);
    } else {
        for (int i = 0; i < n; i++)
            sb_printf(
                &b,
                "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r%d, "
                "namespace: app, creationTimestamp: \"2026-01-01T00:00:%02dZ\"}\n"
                "spec:\n  parentRefs: [{group: \"\", kind: Service, name: svc}]\n  rules:\n"
                "  - matches: [{path: {type: PathPrefix, value: /r%d}, headers: [{name: x-tenant, value: "
                "t%d}]}]\n    backendRefs: [{name: svc, port: 80}]\n",
                i, i % 60, i, i);
    }
    struct l7_builder *bl = l7_builder_new();
    if (!bl || manifest_load_json("bench.yaml", b.p, b.len, on_finding, NULL, on_doc, bl) < 0) abort();
    free(b.p);
    struct l7_config *c = l7_builder_finish(bl);
    if (!c) abort();
    return c;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ns per match of a request for route i (-1: a path no route has). */
static double match_ns(const struct l7_config *c, int i, double secs, bool *found)
{
    char path[64], tenant[32];
    snprintf(path, sizeof(path), i < 0 ? "/none/x" : "/r%d/items?id=7", i);
    snprintf(tenant, sizeof(tenant), "t%d", i < 0 ? 0 : i);
    struct l7_header h[] = {{"user-agent", 10, "bench", 5}, {"x-tenant", 8, tenant, strlen(tenant)}};
    struct l7_request req = {.method = "GET",
                             .path = path,
                             .path_len = strlen(path),
                             .authority = "svc",
                             .headers = h,
                             .n_headers = 2};
    const struct l7_rule *rule = NULL;
    unsigned long iters = 0;
    double t0 = now_s(), t;
    do {
        for (int k = 0; k < 1000; k++) {
            const struct l7_service_routes *r = l7_routes_for(c, "app", "svc", 80);
            rule = l7_match_ex(r, &req, NULL, NULL);
        }
        iters += 1000;
    } while ((t = now_s()) - t0 < secs);
    *found = rule != NULL;
    return (t - t0) * 1e9 / (double)iters;
}

int main(int argc, char **argv)
{
    double secs = argc > 1 ? atof(argv[1]) : 0.3;
    if (secs <= 0) secs = 0.3;
    static const int sizes[] = {10, 100, 1000};
    printf("%-16s %6s %12s %12s %12s\n", "routes", "n", "first ns", "last ns", "no match ns");
    for (int v = 0; v < 2; v++)
        for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
            int n = sizes[s];
            struct l7_config *c = build(n, v == 1);
            bool f1, f2, f3;
            double first = match_ns(c, 0, secs, &f1), last = match_ns(c, n - 1, secs, &f2),
                   none = match_ns(c, -1, secs, &f3);
            if (!f1 || !f2 || f3) {
                fprintf(stderr, "bench_l7match: wrong match results (%d %d %d)\n", f1, f2, f3);
                return 1;
            }
            printf("%-16s %6d %12.0f %12.0f %12.0f\n", v ? "VirtualService" : "HTTPRoute", n, first, last,
                   none);
            l7_config_unref(c);
        }
    return 0;
}
