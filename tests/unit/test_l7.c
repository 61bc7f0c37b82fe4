/* Unit tests for the waypoint's route model (src/mesh/l7.c): matching, Gateway API precedence, weighted
 * backends, rewrite and redirect, regex limits and port-scoped parents. Routes are written as Kubernetes YAML
 * and go through zmeshd's conversion (src/zmeshd/l7.c) into the builder, the path the waypoint sees; a few
 * cases build the protobuf by hand to reach the model's own checks. */
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

#include "mesh/l7.h"
#include "mesh/l7authz.h"
#include "zmesh/l7.pb-c.h"
#include "zmeshd/l7.h"
#include "zmeshd/vs.h"

/* ---- loading YAML through the conversion ---- */

struct load {
    struct l7_builder *b;
    int errors;
    char err[1024];
};

static void on_finding(void *ud, const struct manifest_finding *f)
{
    struct load *l = ud;
    if (f->level == MANIFEST_ERROR) {
        l->errors++;
        manifest_finding_format(f, l->err, sizeof(l->err));
    }
}

static int on_doc(void *ud, json_t *doc, const struct manifest_src *src)
{
    struct load *l = ud;
    uint8_t *pb;
    size_t len;
    char name[L7_NAME_MAX], err[512];
    const char *kind = json_string_value(json_object_get(doc, "kind"));
    bool pol = kind && strcmp(kind, "AuthorizationPolicy") == 0;
    bool vs = kind && strcmp(kind, "VirtualService") == 0;
    int rc = pol  ? l7_convert_authz(doc, src, &pb, &len, name, sizeof(name), on_finding, l)
             : vs ? vs_convert(doc, src, NULL, &pb, &len, name, sizeof(name), on_finding, l)
                  : l7_convert_route(doc, src, &pb, &len, name, sizeof(name), on_finding, l);
    if (rc < 0) return 0;
    rc = l7_builder_add(l->b, pol ? L7_TYPE_URL_AUTHORIZATION : L7_TYPE_URL_HTTP_ROUTE, name, pb, len, err,
                        sizeof(err));
    free(pb);
    if (rc < 0) {
        l->errors++;
        snprintf(l->err, sizeof(l->err), "%s", err);
    }
    return 0;
}

static struct l7_config *load(const char *yaml)
{
    struct load l = {.b = l7_builder_new()};
    assert_non_null(l.b);
    assert_int_equal(manifest_load_json("t.yaml", yaml, strlen(yaml), on_finding, &l, on_doc, &l), 0);
    if (l.errors) fail_msg("unexpected error: %s", l.err);
    struct l7_config *c = l7_builder_finish(l.b);
    assert_non_null(c);
    return c;
}

/* ---- requests ---- */

#define MAX_H 8
struct rq {
    struct l7_request r;
    struct l7_header h[MAX_H];
};

/* hdrs: "name: value" strings, NULL-terminated. */
static const struct l7_request *mkreq(struct rq *q, const char *method, const char *path,
                                      const char *const *hdrs)
{
    memset(q, 0, sizeof(*q));
    q->r.method = method;
    q->r.path = path;
    q->r.path_len = strlen(path);
    q->r.authority = "svc.app.svc.cluster.local:8080";
    size_t n = 0;
    for (; hdrs && hdrs[n] && n < MAX_H; n++) {
        const char *colon = strchr(hdrs[n], ':');
        q->h[n].name = hdrs[n];
        q->h[n].name_len = (size_t)(colon - hdrs[n]);
        q->h[n].value = colon + 2;
        q->h[n].value_len = strlen(colon + 2);
    }
    q->r.headers = q->h;
    q->r.n_headers = n;
    return &q->r;
}

/* The rule name that matches, or "-" (none), or "NOROUTE" (no route attached). */
static const char *route_of(const struct l7_config *c, uint16_t port, const char *method, const char *path,
                            const char *const *hdrs)
{
    struct rq q;
    const struct l7_service_routes *r = l7_routes_for(c, "app", "svc", port);
    if (!r) return "NOROUTE";
    mkreq(&q, method, path, hdrs);
    q.r.port = port;
    const struct l7_rule *rule = l7_match(r, &q.r);
    return rule ? rule->name : "-";
}

#define H(...) ((const char *const[]){__VA_ARGS__, NULL})

static const char head[] = "apiVersion: gateway.networking.k8s.io/v1\n"
                           "kind: HTTPRoute\n";

/* ---- path, header, query and method matches ---- */

static const char match_yaml[] =
    "apiVersion: gateway.networking.k8s.io/v1\n"
    "kind: HTTPRoute\n"
    "metadata: {name: m, namespace: app}\n"
    "spec:\n"
    "  parentRefs: [{group: \"\", kind: Service, name: svc}]\n"
    "  rules:\n"
    "  - name: exact\n"
    "    matches: [{path: {type: Exact, value: /exact}}]\n"
    "    backendRefs: [{name: a, port: 80}]\n"
    "  - name: prefix\n"
    "    matches: [{path: {type: PathPrefix, value: /foo/}}]\n"
    "    backendRefs: [{name: a, port: 80}]\n"
    "  - name: regex\n"
    "    matches: [{path: {type: RegularExpression, value: \"/re/[0-9]+\"}}]\n"
    "    backendRefs: [{name: a, port: 80}]\n"
    "  - name: header\n"
    "    matches: [{path: {type: PathPrefix, value: /h}, headers: [{name: X-Env, value: canary}]}]\n"
    "    backendRefs: [{name: a, port: 80}]\n"
    "  - name: header-re\n"
    "    matches: [{path: {type: PathPrefix, value: /hr}, headers: [{type: RegularExpression, name: x-v, "
    "value: "
    "\"v[12]\"}]}]\n"
    "    backendRefs: [{name: a, port: 80}]\n"
    "  - name: joined\n"
    "    matches: [{path: {type: PathPrefix, value: /j}, headers: [{name: x-j, value: \"a,b\"}]}]\n"
    "    backendRefs: [{name: a, port: 80}]\n"
    "  - name: query\n"
    "    matches: [{path: {type: PathPrefix, value: /q}, queryParams: [{name: v, value: \"1 2\"}]}]\n"
    "    backendRefs: [{name: a, port: 80}]\n"
    "  - name: query-re\n"
    "    matches: [{path: {type: PathPrefix, value: /qr}, queryParams: [{type: RegularExpression, name: id, "
    "value: \"[a-z]+\"}]}]\n"
    "    backendRefs: [{name: a, port: 80}]\n"
    "  - name: method\n"
    "    matches: [{path: {type: PathPrefix, value: /mm}, method: POST}]\n"
    "    backendRefs: [{name: a, port: 80}]\n";

static void test_matches(void **state)
{
    (void)state;
    struct l7_config *c = load(match_yaml);
    static const struct {
        const char *method, *path, *h0, *h1, *want;
    } cases[] = {
        {"GET", "/exact", NULL, NULL, "exact"},
        {"GET", "/exact?x=1", NULL, NULL, "exact"}, /* the query is not part of the path */
        {"GET", "/exact/", NULL, NULL, "-"},        /* Exact is exact */
        {"GET", "/foo", NULL, NULL, "prefix"},      /* "/foo/" is "/foo": the trailing '/' is ignored */
        {"GET", "/foo/", NULL, NULL, "prefix"},
        {"GET", "/foo/bar", NULL, NULL, "prefix"},
        {"GET", "/foobar", NULL, NULL, "-"}, /* element boundaries */
        {"GET", "/re/123", NULL, NULL, "regex"},
        {"GET", "/re/123x", NULL, NULL, "-"}, /* a full match */
        {"GET", "/x/re/1", NULL, NULL, "-"},
        {"GET", "/h", "x-env: canary", NULL, "header"}, /* names are case-insensitive (written X-Env) */
        {"GET", "/h", "x-env: Canary", NULL, "-"},      /* values are not */
        {"GET", "/h", NULL, NULL, "-"},
        {"GET", "/hr", "X-V: v2", NULL, "header-re"},
        {"GET", "/hr", "x-v: v3", NULL, "-"},
        {"GET", "/j", "x-j: a", "x-j: b", "joined"}, /* repeated headers joined with ',' */
        {"GET", "/j", "x-j: a", NULL, "-"},
        {"GET", "/q?v=1%202", NULL, NULL, "query"},         /* the value is percent-decoded */
        {"GET", "/q?a=b&v=1%202&v=3", NULL, NULL, "query"}, /* the first occurrence counts */
        {"GET", "/q?v=3&v=1%202", NULL, NULL, "-"},
        {"GET", "/q?V=1%202", NULL, NULL, "-"}, /* names are case-sensitive */
        {"GET", "/qr?id=abc", NULL, NULL, "query-re"},
        {"GET", "/qr?id=ab1", NULL, NULL, "-"},
        {"POST", "/mm", NULL, NULL, "method"},
        {"GET", "/mm", NULL, NULL, "-"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *h[3] = {cases[i].h0, cases[i].h1, NULL};
        if (!cases[i].h0) h[0] = NULL;
        const char *got = route_of(c, 8080, cases[i].method, cases[i].path, h);
        if (strcmp(got, cases[i].want) != 0)
            fail_msg("case %zu %s %s: got %s, want %s", i, cases[i].method, cases[i].path, got,
                     cases[i].want);
    }
    assert_string_equal(route_of(c, 8080, "GET", "/nothing", NULL), "-");
    l7_config_unref(c);
}

/* ---- precedence (Gateway API httproute_types.go, Istio's sortHTTPRoutes) ---- */

static void test_precedence(void **state)
{
    (void)state;
    /* Two routes: "old" created first, "new" later; "b-same" and "a-same" share a timestamp. */
    static const char yaml[] =
        "apiVersion: gateway.networking.k8s.io/v1\n"
        "kind: HTTPRoute\n"
        "metadata: {name: new, namespace: app, creationTimestamp: \"2024-02-01T00:00:00Z\"}\n"
        "spec:\n"
        "  parentRefs: [{group: \"\", kind: Service, name: svc}]\n"
        "  rules:\n"
        "  - name: new-exact\n"
        "    matches: [{path: {type: Exact, value: /p/exact}}]\n"
        "  - name: new-long-prefix\n"
        "    matches: [{path: {type: PathPrefix, value: /p/long}}]\n"
        "  - name: new-method\n"
        "    matches: [{path: {type: PathPrefix, value: /m}, method: GET}]\n"
        "  - name: new-one-header\n"
        "    matches: [{path: {type: PathPrefix, value: /h}, headers: [{name: a, value: \"1\"}]}]\n"
        "  - name: new-one-query\n"
        "    matches: [{path: {type: PathPrefix, value: /q}, queryParams: [{name: a, value: \"1\"}]}]\n"
        "  - name: new-tie\n"
        "    matches: [{path: {type: PathPrefix, value: /tie}}]\n"
        "  - name: new-regex\n"
        "    matches: [{path: {type: RegularExpression, value: \"/r/.*\"}}]\n"
        "---\n"
        "apiVersion: gateway.networking.k8s.io/v1\n"
        "kind: HTTPRoute\n"
        "metadata: {name: old, namespace: app, creationTimestamp: \"2024-01-01T00:00:00Z\"}\n"
        "spec:\n"
        "  parentRefs: [{group: \"\", kind: Service, name: svc}]\n"
        "  rules:\n"
        "  - name: old-prefix\n"
        "    matches: [{path: {type: PathPrefix, value: /p}}]\n"
        "  - name: old-no-method\n"
        "    matches: [{path: {type: PathPrefix, value: /m}}]\n"
        "  - name: old-two-headers\n"
        "    matches: [{path: {type: PathPrefix, value: /h}, headers: [{name: a, value: \"1\"}, {name: b, "
        "value: "
        "\"2\"}]}]\n"
        "  - name: old-two-query\n"
        "    matches: [{path: {type: PathPrefix, value: /q}, queryParams: [{name: a, value: \"1\"}, {name: "
        "b, value: "
        "\"2\"}]}]\n"
        "  - name: old-tie\n"
        "    matches: [{path: {type: PathPrefix, value: /tie}}]\n"
        "  - name: old-r-prefix\n"
        "    matches: [{path: {type: PathPrefix, value: /r}}]\n"
        "---\n"
        "apiVersion: gateway.networking.k8s.io/v1\n"
        "kind: HTTPRoute\n"
        "metadata: {name: b-same, namespace: app, creationTimestamp: \"2023-01-01T00:00:00Z\"}\n"
        "spec:\n"
        "  parentRefs: [{group: \"\", kind: Service, name: svc}]\n"
        "  rules:\n"
        "  - name: b-alpha\n"
        "    matches: [{path: {type: PathPrefix, value: /alpha}}]\n"
        "  - name: b-first\n"
        "    matches: [{path: {type: PathPrefix, value: /order}}]\n"
        "  - name: b-second\n"
        "    matches: [{path: {type: PathPrefix, value: /order}}]\n"
        "---\n"
        "apiVersion: gateway.networking.k8s.io/v1\n"
        "kind: HTTPRoute\n"
        "metadata: {name: a-same, namespace: app, creationTimestamp: \"2023-01-01T00:00:00Z\"}\n"
        "spec:\n"
        "  parentRefs: [{group: \"\", kind: Service, name: svc}]\n"
        "  rules:\n"
        "  - name: a-alpha\n"
        "    matches: [{path: {type: PathPrefix, value: /alpha}}]\n";
    struct l7_config *c = load(yaml);
    static const struct {
        const char *path, *h0, *h1, *want, *why;
    } cases[] = {
        {"/p/exact", NULL, NULL, "new-exact", "Exact beats any prefix, even of an older route"},
        {"/p/long/x", NULL, NULL, "new-long-prefix", "the longest prefix wins over an older shorter one"},
        {"/p/other", NULL, NULL, "old-prefix", "only the shorter prefix matches"},
        {"/m", NULL, NULL, "new-method", "a method match beats none"},
        {"/h", "a: 1", "b: 2", "old-two-headers", "more header matches win"},
        {"/h", "a: 1", NULL, "new-one-header", "the two-header match does not match"},
        {"/q?a=1&b=2", NULL, NULL, "old-two-query", "more query matches win"},
        {"/tie", NULL, NULL, "old-tie", "on a full tie the oldest route wins"},
        {"/alpha", NULL, NULL, "a-alpha", "same age: namespace/name alphabetical"},
        {"/order", NULL, NULL, "b-first", "same route: rule order"},
        {"/r/x", NULL, NULL, "old-r-prefix", "Istio ranks PathPrefix above RegularExpression"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *h[3] = {cases[i].h0, cases[i].h1, NULL};
        if (!cases[i].h0) h[0] = NULL;
        const char *got = route_of(c, 80, "GET", cases[i].path, h);
        if (strcmp(got, cases[i].want) != 0)
            fail_msg("%s: %s got %s, want %s", cases[i].why, cases[i].path, got, cases[i].want);
    }
    l7_config_unref(c);
}

/* ---- backends ---- */

static void test_weights(void **state)
{
    (void)state;
    static const char yaml[] =
        "apiVersion: gateway.networking.k8s.io/v1\n"
        "kind: HTTPRoute\n"
        "metadata: {name: w, namespace: app}\n"
        "spec:\n"
        "  parentRefs: [{group: \"\", kind: Service, name: svc}]\n"
        "  rules:\n"
        "  - matches: [{path: {type: PathPrefix, value: /w}}]\n"
        "    backendRefs: [{name: v1, port: 80, weight: 90}, {name: v2, port: 8080, weight: "
        "10}, {name: v3, port: 80, weight: 0}]\n"
        "  - matches: [{path: {type: PathPrefix, value: /zero}}]\n"
        "    backendRefs: [{name: v1, port: 80, weight: 0}, {name: v2, port: 80, weight: 0}]\n"
        "  - matches: [{path: {type: PathPrefix, value: /default}}]\n"
        "    backendRefs: [{name: v1, port: 80}, {name: v2, port: 80}]\n";
    struct l7_config *c = load(yaml);
    struct rq q;
    const struct l7_service_routes *r = l7_routes_for(c, "app", "svc", 80);
    const struct l7_rule *w = l7_match(r, mkreq(&q, "GET", "/w", NULL));
    assert_non_null(w);
    assert_string_equal(w->name, "app.w.0"); /* no rule name: <ns>.<name>.<index> */
    assert_int_equal(w->n_backends, 3);
    assert_string_equal(w->backends[1].name, "v2");
    assert_string_equal(w->backends[1].ns, "app");
    assert_int_equal(w->backends[1].port, 8080);
    assert_int_equal(w->total_weight, 100);
    size_t counts[3] = {0};
    for (uint64_t rnd = 0; rnd < 10000; rnd++) {
        int i = l7_pick_backend(w, rnd * 2654435761u);
        assert_true(i >= 0 && i < 3);
        counts[i]++;
    }
    assert_int_equal(counts[2], 0); /* weight 0 is never chosen */
    assert_true(counts[0] > 8800 && counts[0] < 9200);
    assert_true(counts[1] > 800 && counts[1] < 1200);
    /* Exact over consecutive values: rnd % 100 < 90 -> v1. */
    for (uint64_t rnd = 0; rnd < 100; rnd++)
        assert_int_equal(l7_pick_backend(w, rnd), rnd < 90 ? 0 : 1);
    const struct l7_rule *z = l7_match(r, mkreq(&q, "GET", "/zero", NULL));
    assert_non_null(z);
    assert_int_equal(z->n_backends, 2); /* kept: the proxy answers 500 */
    assert_int_equal(l7_pick_backend(z, 7), -1);
    const struct l7_rule *d = l7_match(r, mkreq(&q, "GET", "/default", NULL));
    assert_int_equal(d->backends[0].weight, 1); /* Gateway API's default weight */
    assert_int_equal(l7_pick_backend(d, 0), 0);
    assert_int_equal(l7_pick_backend(d, 1), 1);
    l7_config_unref(c);
}

/* ---- rewrite and redirect ---- */

static void test_rewrite_path(void **state)
{
    (void)state;
    /* Gateway API's ReplacePrefixMatch table (httproute_types.go, HTTPPathModifier). */
    static const struct {
        const char *path, *prefix, *repl, *want;
    } cases[] = {
        {"/foo/bar", "/foo", "/xyz", "/xyz/bar"},
        {"/foo/bar", "/foo", "/xyz/", "/xyz/bar"},
        {"/foo", "/foo", "/xyz", "/xyz"},
        {"/foo/", "/foo", "/xyz", "/xyz/"},
        {"/foo/bar", "/foo", "", "/bar"},
        {"/foo/", "/foo", "", "/"},
        {"/foo", "/foo", "", "/"},
        {"/foo/", "/foo", "/", "/"},
        {"/foo", "/foo", "/", "/"},
        {"/foo/bar", "/foo", "/", "/bar"},
        {"/foo/bar?a=1", "/foo", "/x", "/x/bar?a=1"},
    };
    char out[128];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int n = l7_rewrite_path(L7_PATH_PREFIX, cases[i].repl, cases[i].prefix, strlen(cases[i].prefix),
                                cases[i].path, strlen(cases[i].path), out, sizeof(out));
        assert_int_equal(n, (int)strlen(cases[i].want));
        if (strcmp(out, cases[i].want) != 0)
            fail_msg("%s with %s -> %s: got %s, want %s", cases[i].path, cases[i].prefix, cases[i].repl, out,
                     cases[i].want);
    }
    assert_int_equal(l7_rewrite_path(L7_PATH_FULL, "/new", NULL, 0, "/old/x?q=1", 10, out, sizeof(out)), 8);
    assert_string_equal(out, "/new?q=1");
    assert_int_equal(l7_rewrite_path(L7_PATH_PREFIX, "/x", NULL, 0, "/a", 2, out, sizeof(out)), -EINVAL);
    assert_int_equal(l7_rewrite_path(L7_PATH_FULL, "/long-path", NULL, 0, "/a", 2, out, 5), -ENOSPC);
}

static void test_rewrite_and_redirect_rules(void **state)
{
    (void)state;
    static const char yaml[] =
        "apiVersion: gateway.networking.k8s.io/v1\n"
        "kind: HTTPRoute\n"
        "metadata: {name: rr, namespace: app}\n"
        "spec:\n"
        "  parentRefs: [{group: \"\", kind: Service, name: svc}]\n"
        "  rules:\n"
        "  - name: rewrite\n"
        "    matches: [{path: {type: PathPrefix, value: /api/}}]\n"
        "    filters:\n"
        "    - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-A, value: \"1\"}], add: "
        "[{name: "
        "x-b, value: \"2\"}], remove: [X-C]}}\n"
        "    - {type: URLRewrite, urlRewrite: {hostname: internal, path: {type: ReplacePrefixMatch, "
        "replacePrefixMatch: /v2}}}\n"
        "    - {type: RequestMirror, requestMirror: {backendRef: {name: shadow, port: 81}, percent: 25}}\n"
        "    backendRefs: [{name: a, port: 80}]\n"
        "    timeouts: {request: 10s, backendRequest: 1500ms}\n"
        "  - name: redirect\n"
        "    matches: [{path: {type: PathPrefix, value: /old}}]\n"
        "    filters:\n"
        "    - {type: RequestRedirect, requestRedirect: {scheme: https, hostname: new.example, path: {type: "
        "ReplacePrefixMatch, replacePrefixMatch: /new}, statusCode: 301}}\n"
        "  - name: redirect-default\n"
        "    matches: [{path: {type: Exact, value: /moved}}]\n"
        "    filters:\n"
        "    - {type: RequestRedirect, requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: "
        "/here}}}\n";
    struct l7_config *c = load(yaml);
    struct rq q;
    const struct l7_service_routes *r = l7_routes_for(c, "app", "svc", 80);
    const char *prefix;
    size_t plen;
    const struct l7_rule *rw = l7_match_ex(r, mkreq(&q, "GET", "/api/users?id=1", NULL), &prefix, &plen);
    assert_non_null(rw);
    assert_string_equal(rw->name, "rewrite");
    assert_int_equal(rw->n_filters, 3);
    assert_int_equal(rw->filters[0].kind, L7_FILTER_REQUEST_HEADERS);
    assert_string_equal(rw->filters[0].u.headers.set[0].name, "x-a"); /* lower-cased */
    assert_string_equal(rw->filters[0].u.headers.add[0].value, "2");
    assert_string_equal(rw->filters[0].u.headers.remove[0], "x-c");
    assert_int_equal(rw->filters[2].kind, L7_FILTER_MIRROR);
    assert_string_equal(rw->filters[2].u.mirror.name, "shadow");
    assert_int_equal(rw->filters[2].u.mirror.numerator, 25);
    assert_int_equal(rw->filters[2].u.mirror.denominator, 100);
    assert_int_equal(rw->request_timeout_ms, 10000);
    assert_int_equal(rw->backend_request_timeout_ms, 1500);
    assert_non_null(rw->rewrite);
    assert_string_equal(rw->rewrite->hostname, "internal");
    assert_int_equal(plen, 4);
    assert_memory_equal(prefix, "/api", 4);
    char out[256];
    int n = l7_rewrite_path(rw->rewrite->path_kind, rw->rewrite->path, prefix, plen, q.r.path, q.r.path_len,
                            out, sizeof(out));
    assert_true(n > 0);
    assert_string_equal(out, "/v2/users?id=1");

    const struct l7_rule *rd = l7_match_ex(r, mkreq(&q, "GET", "/old/page?x=y", NULL), &prefix, &plen);
    assert_non_null(rd);
    assert_non_null(rd->redirect);
    assert_int_equal(rd->redirect->status, 301);
    assert_true(l7_redirect_location(rd->redirect, prefix, plen, &q.r, "http", out, sizeof(out)) > 0);
    /* https with no port: the scheme changed, so the request's port 8080 is not carried over. */
    assert_string_equal(out, "https://new.example/new/page?x=y");

    const struct l7_rule *rdd = l7_match_ex(r, mkreq(&q, "GET", "/moved", NULL), &prefix, &plen);
    assert_non_null(rdd);
    assert_int_equal(rdd->redirect->status, 302); /* the default */
    assert_true(l7_redirect_location(rdd->redirect, prefix, plen, &q.r, "http", out, sizeof(out)) > 0);
    assert_string_equal(out, "http://svc.app.svc.cluster.local:8080/here"); /* host and port kept */
    q.r.authority = "svc:80";
    assert_true(l7_redirect_location(rdd->redirect, prefix, plen, &q.r, "http", out, sizeof(out)) > 0);
    assert_string_equal(out, "http://svc/here"); /* the scheme's default port is left out */
    q.r.authority = "[fd00::1]:8080";
    assert_true(l7_redirect_location(rdd->redirect, prefix, plen, &q.r, "http", out, sizeof(out)) > 0);
    assert_string_equal(out, "http://[fd00::1]:8080/here");
    q.r.authority = "svc:99999"; /* not a port */
    assert_int_equal(l7_redirect_location(rdd->redirect, prefix, plen, &q.r, "http", out, sizeof(out)),
                     -EINVAL);
    q.r.authority = "svc:8080";
    assert_int_equal(l7_redirect_location(rdd->redirect, prefix, plen, &q.r, "http", out, 12), -ENOSPC);
    l7_config_unref(c);
}

/* ---- GRPCRoute ---- */

static void test_grpc(void **state)
{
    (void)state;
    static const char yaml[] =
        "apiVersion: gateway.networking.k8s.io/v1\n"
        "kind: GRPCRoute\n"
        "metadata: {name: g, namespace: app}\n"
        "spec:\n"
        "  parentRefs: [{group: \"\", kind: Service, name: svc}]\n"
        "  rules:\n"
        "  - name: both\n"
        "    matches: [{method: {service: pkg.Echo, method: Say}}]\n"
        "    backendRefs: [{name: a, port: 80}]\n"
        "  - name: service\n"
        "    matches: [{method: {service: pkg.Echo}}]\n"
        "    backendRefs: [{name: a, port: 80}]\n"
        "  - name: method\n"
        "    matches: [{method: {method: Ping}}]\n"
        "    backendRefs: [{name: a, port: 80}]\n"
        "  - name: regex\n"
        "    matches: [{method: {type: RegularExpression, service: \"pkg\\\\.v[0-9]\\\\..*\", "
        "method: \"Get.*\"}}]\n"
        "    backendRefs: [{name: a, port: 80}]\n"
        "  - name: header\n"
        "    matches: [{headers: [{name: x-g, value: \"1\"}]}]\n"
        "    backendRefs: [{name: a, port: 80}]\n";
    struct l7_config *c = load(yaml);
    static const struct {
        const char *path, *h0, *want;
    } cases[] = {
        {"/pkg.Echo/Say", NULL, "both"},  {"/pkg.Echo/Other", NULL, "service"},
        {"/x.Y/Ping", NULL, "method"},    {"/pkg.v1.Store/GetItem", NULL, "regex"},
        {"/pkg.v1.Store/Put", NULL, "-"}, {"/z.Z/Q", "x-g: 1", "header"},
        {"/pkg.EchoX/Say", NULL, "-"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *h[2] = {cases[i].h0, NULL};
        const char *got = route_of(c, 80, "POST", cases[i].path, cases[i].h0 ? h : NULL);
        if (strcmp(got, cases[i].want) != 0)
            fail_msg("%s: got %s, want %s", cases[i].path, got, cases[i].want);
    }
    struct rq q;
    const struct l7_rule *r =
        l7_match(l7_routes_for(c, "app", "svc", 80), mkreq(&q, "POST", "/pkg.Echo/Say", NULL));
    assert_int_equal(r->kind, L7_ROUTE_GRPC);
    l7_config_unref(c);
}

/* ---- parents ---- */

static void test_port_scoped_parents(void **state)
{
    (void)state;
    static const char yaml[] =
        "apiVersion: gateway.networking.k8s.io/v1\n"
        "kind: HTTPRoute\n"
        "metadata: {name: all, namespace: app}\n"
        "spec:\n"
        "  parentRefs: [{group: \"\", kind: Service, name: svc}]\n"
        "  rules: [{name: all-ports, matches: [{path: {type: PathPrefix, value: /}}]}]\n"
        "---\n"
        "apiVersion: gateway.networking.k8s.io/v1\n"
        "kind: HTTPRoute\n"
        "metadata: {name: p9090, namespace: app}\n"
        "spec:\n"
        "  parentRefs: [{group: \"\", kind: Service, name: svc, port: 9090}, {group: \"\", "
        "kind: Service, name: other, port: 80}]\n"
        "  rules: [{name: only-9090, matches: [{path: {type: PathPrefix, value: /admin}}]}]\n";
    struct l7_config *c = load(yaml);
    assert_string_equal(route_of(c, 9090, "GET", "/admin", NULL), "only-9090");
    assert_string_equal(route_of(c, 9090, "GET", "/x", NULL), "all-ports");
    assert_string_equal(route_of(c, 8080, "GET", "/admin", NULL), "all-ports"); /* 9090's route is not here */
    assert_null(l7_routes_for(c, "app", "other", 81));                          /* other binds port 80 only */
    assert_non_null(l7_routes_for(c, "app", "other", 80));
    assert_null(l7_routes_for(c, "app", "nothing", 80)); /* no route: the default */
    assert_null(l7_routes_for(c, "other-ns", "svc", 80));
    assert_int_equal(l7_config_n_routes(c), 2);
    l7_config_unref(c);
}

/* GEP-1426: a GRPCRoute and an HTTPRoute on one Service and port: only the GRPCRoute applies there. */
/* ---- VirtualService (converted by src/zmeshd/vs.c into kind VIRTUAL_SERVICE) ---- */

static int add_route(struct l7_builder *b, Zmesh__V1__HTTPRoute *m, const char *name, char *err, size_t n);

static const char vs_match_yaml[] =
    "apiVersion: networking.istio.io/v1\n"
    "kind: VirtualService\n"
    "metadata: {name: vs, namespace: app}\n"
    "spec:\n"
    "  hosts: [svc]\n"
    "  http:\n"
    "  - name: exact-ci\n"
    "    match: [{uri: {exact: /Exact}, ignoreUriCase: true}]\n"
    "    route: [{destination: {host: a}}]\n"
    "  - name: string-prefix\n"
    "    match: [{uri: {prefix: /foo}}]\n"
    "    route: [{destination: {host: a}}]\n"
    "  - name: prefix-ci\n"
    "    match: [{uri: {prefix: /CI/}, ignoreUriCase: true}]\n"
    "    route: [{destination: {host: a}}]\n"
    "  - name: regex-ci\n"
    "    match: [{uri: {regex: \"/re/[a-z]+\"}, ignoreUriCase: true}]\n"
    "    route: [{destination: {host: a}}]\n"
    "  - name: without\n"
    "    match: [{uri: {prefix: /w}, withoutHeaders: {x-debug: {exact: \"1\"}}}]\n"
    "    route: [{destination: {host: a}}]\n"
    "  - name: header-prefix\n"
    "    match: [{uri: {prefix: /h}, headers: {X-User: {prefix: jas}}}]\n"
    "    route: [{destination: {host: a}}]\n"
    "  - name: header-present\n"
    "    match: [{uri: {prefix: /p}, headers: {x-p: {}}}]\n"
    "    route: [{destination: {host: a}}]\n"
    "  - name: query-prefix\n"
    "    match: [{uri: {prefix: /q}, queryParams: {v: {prefix: \"1\"}}}]\n"
    "    route: [{destination: {host: a}}]\n"
    "  - name: without-absent\n"
    "    match: [{uri: {exact: /absent}, withoutHeaders: {x-gone: {}}}]\n"
    "    route: [{destination: {host: a}}]\n"
    "  - name: method\n"
    "    match: [{uri: {exact: /m}, method: {exact: POST}}]\n"
    "    route: [{destination: {host: a}}]\n"
    "  - name: without-empty\n"
    "    match: [{uri: {exact: /xe}, withoutHeaders: {x-e: {exact: \"\"}}}]\n"
    "    route: [{destination: {host: a}}]\n"
    "  - name: query-present\n"
    "    match: [{uri: {exact: /qp}, queryParams: {a: {}}}]\n"
    "    route: [{destination: {host: a}}]\n"
    "  - name: regex-star\n"
    "    match: [{uri: {exact: /star}, headers: {x-s: {regex: \"*\"}}}]\n"
    "    route: [{destination: {host: a}}]\n"
    "  - name: port-9090\n"
    "    match: [{uri: {exact: /port}, port: 9090}]\n"
    "    route: [{destination: {host: a}}]\n"
    "  - name: catch-all\n"
    "    route: [{destination: {host: a}}]\n"
    "  - name: shadowed\n" /* after a catch-all: never reached (first match wins) */
    "    match: [{uri: {exact: /shadowed}}]\n"
    "    route: [{destination: {host: a}}]\n";

static void test_vs_matches(void **state)
{
    (void)state;
    struct l7_config *c = load(vs_match_yaml);
    assert_string_equal(route_of(c, 9090, "GET", "/port", NULL), "port-9090");
    assert_string_equal(route_of(c, 8080, "GET", "/port", NULL), "catch-all"); /* another service port */
    static const struct {
        const char *method, *path, *h0, *want;
    } cases[] = {
        {"GET", "/exact", NULL, "exact-ci"}, /* ignoreUriCase */
        {"GET", "/EXACT?x=1", NULL, "exact-ci"},
        {"GET", "/exact/", NULL, "catch-all"},
        {"GET", "/foo", NULL, "string-prefix"},
        {"GET", "/foobar", NULL, "string-prefix"}, /* a plain string prefix, not Gateway's element prefix */
        {"GET", "/fo", NULL, "catch-all"},
        {"GET", "/ci/x", NULL, "prefix-ci"},
        {"GET", "/Ci/x", NULL, "prefix-ci"},
        {"GET", "/ci", NULL, "catch-all"},
        {"GET", "/re/abc", NULL, "regex-ci"},
        {"GET", "/RE/abc", NULL,
         "catch-all"}, /* ignoreUriCase does not apply to a regex (Envoy's case_sensitive) */
        {"GET", "/xe", NULL,
         "catch-all"}, /* withoutHeaders treat a missing header as "" (Istio sets Envoy's */
        {"GET", "/xe", "x-e: v",
         "without-empty"}, /* treat_missing_header_as_empty): "" matches, so no match */
        {"GET", "/qp?a", NULL, "query-present"},
        {"GET", "/qp?b=1", NULL, "catch-all"},
        {"GET", "/star", "x-s: anything", "regex-star"}, /* regex "*" is Istio's present match */
        {"GET", "/star", NULL, "catch-all"},
        {"GET", "/re/ab1", NULL, "catch-all"},
        {"GET", "/w", NULL, "without"},           /* absent header: not matched, so withoutHeaders holds */
        {"GET", "/w", "x-debug: 2", "without"},   /* another value */
        {"GET", "/w", "x-debug: 1", "catch-all"}, /* the excluded value */
        {"GET", "/h", "x-user: jason", "header-prefix"},
        {"GET", "/h", "x-user: json", "catch-all"},
        {"GET", "/p", "x-p: ", "header-present"}, /* present with any value, even empty */
        {"GET", "/p", NULL, "catch-all"},
        {"GET", "/q?v=12", NULL, "query-prefix"},
        {"GET", "/q?v=21", NULL, "catch-all"},
        {"GET", "/absent", NULL, "without-absent"},
        {"GET", "/absent", "x-gone: y", "catch-all"},
        {"POST", "/m", NULL, "method"},
        {"GET", "/m", NULL, "catch-all"},
        {"GET", "/shadowed", NULL, "catch-all"}, /* order, not Gateway API's exact-first precedence */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *h[2] = {cases[i].h0, NULL};
        const char *got = route_of(c, 8080, cases[i].method, cases[i].path, h);
        if (strcmp(got, cases[i].want) != 0)
            fail_msg("case %zu %s %s: got %s, want %s", i, cases[i].method, cases[i].path, got,
                     cases[i].want);
    }
    l7_config_unref(c);
}

/* First match in the order written across rules, and across VirtualServices oldest first; an HTTPRoute on the
 * same Service wins over every VirtualService there. */
static void test_vs_order_and_httproute_wins(void **state)
{
    (void)state;
    static const char yaml[] =
        "apiVersion: networking.istio.io/v1beta1\n"
        "kind: VirtualService\n"
        "metadata: {name: newer, namespace: app, creationTimestamp: \"2024-06-01T00:00:00Z\"}\n"
        "spec:\n"
        "  hosts: [svc.app.svc.cluster.local, other]\n"
        "  http:\n"
        "  - {name: new-any, route: [{destination: {host: a}}]}\n"
        "---\n"
        "apiVersion: networking.istio.io/v1alpha3\n"
        "kind: VirtualService\n"
        "metadata: {name: older, namespace: app, creationTimestamp: \"2024-05-01T00:00:00Z\"}\n"
        "spec:\n"
        "  hosts: [svc, other]\n"
        "  http:\n"
        "  - {name: old-prefix, match: [{uri: {prefix: /}}], route: [{destination: {host: a}}]}\n"
        "  - {name: old-exact, match: [{uri: {exact: /x}}], route: [{destination: {host: a}}]}\n"
        "---\n"
        "apiVersion: gateway.networking.k8s.io/v1\n"
        "kind: HTTPRoute\n"
        "metadata: {name: h, namespace: app}\n"
        "spec:\n"
        "  parentRefs: [{group: \"\", kind: Service, name: other}]\n"
        "  rules: [{name: http, matches: [{path: {type: Exact, value: /only}}], "
        "backendRefs: [{name: a, port: 80}]}]\n";
    struct l7_config *c = load(yaml);
    assert_string_equal(route_of(c, 8080, "GET", "/x", NULL), "old-prefix");
    struct rq q;
    const struct l7_service_routes *o = l7_routes_for(c, "app", "other", 8080);
    assert_non_null(o);
    const struct l7_rule *r = l7_match(o, mkreq(&q, "GET", "/only", NULL));
    assert_non_null(r);
    assert_string_equal(r->name, "http");
    assert_int_equal(r->kind, L7_ROUTE_HTTP);
    assert_null(l7_match(o, mkreq(&q, "GET", "/x", NULL))); /* no VirtualService rule there: 404 */
    l7_config_unref(c);
}

static const struct l7_rule *vs_rule(const struct l7_config *c, const char *path, const char **prefix,
                                     size_t *plen, struct rq *q)
{
    const struct l7_service_routes *r = l7_routes_for(c, "app", "svc", 8080);
    assert_non_null(r);
    const struct l7_rule *rule = l7_match_ex(r, mkreq(q, "GET", path, NULL), prefix, plen);
    assert_non_null(rule);
    return rule;
}

static void test_vs_rule_parts(void **state)
{
    (void)state;
    static const char yaml[] =
        "apiVersion: networking.istio.io/v1\n"
        "kind: VirtualService\n"
        "metadata: {name: vs, namespace: app}\n"
        "spec:\n"
        "  hosts: [svc]\n"
        "  http:\n"
        "  - name: rw\n"
        "    match: [{uri: {prefix: /old}}]\n"
        "    rewrite: {uri: /new, authority: backend.example:8080}\n"
        "    route: [{destination: {host: a, subset: v1, port: {number: 9080}}, weight: 80}, "
        "{destination: {host: b}, weight: 20, headers: {request: {set: {X-B: \"1\"}}}}]\n"
        "    headers: {request: {set: {x-r: r}, add: {x-a: a}, remove: [X-Gone]}, response: {set: {x-s: "
        "s}}}\n"
        "    timeout: 1.5s\n"
        "    retries: {attempts: 3, perTryTimeout: 200ms, retryOn: \"5xx,reset,503,unavailable\"}\n"
        "    fault: {delay: {fixedDelay: 2s, percentage: {value: 12.5}}, abort: {httpStatus: 503, "
        "percentage: "
        "{value: 50}}}\n"
        "    corsPolicy: {allowOrigins: [{exact: \"https://a.example\"}, {prefix: \"https://b.\"}, {regex: "
        "\"https://.*\\\\.c\\\\.example\"}], allowMethods: [GET, POST], allowHeaders: [x-h], exposeHeaders: "
        "[x-e], "
        "maxAge: 24h, allowCredentials: true}\n"
        "  - name: rx\n"
        "    match: [{uri: {prefix: /rx}}]\n"
        "    rewrite: {uriRegexRewrite: {match: \"^/rx/([a-z]+)\", rewrite: \"/v2/\\\\1\"}}\n"
        "    route: [{destination: {host: a}}]\n"
        "    fault: {abort: {grpcStatus: UNAVAILABLE}}\n"
        "    retries: {attempts: 0}\n"
        "    corsPolicy: {allowOrigins: [{exact: \"*\"}]}\n"
        "  - name: direct\n"
        "    match: [{uri: {exact: /direct}}]\n"
        "    directResponse: {status: 418, body: {string: \"short and stout\"}}\n"
        "  - name: redirect\n"
        "    match: [{uri: {exact: /redir}}]\n"
        "    redirect: {uri: /elsewhere, authority: other.example}\n";
    struct l7_config *c = load(yaml);
    struct rq q;
    const char *prefix;
    size_t plen;
    char out[256];
    const struct l7_rule *r = vs_rule(c, "/oldpath?q=1", &prefix, &plen, &q);
    assert_string_equal(r->name, "rw");
    assert_int_equal(r->kind, L7_ROUTE_VIRTUAL_SERVICE);
    /* rewrite.uri: Envoy's prefix_rewrite of the matched "/old" */
    assert_int_equal(r->rewrite->path_kind, L7_PATH_RAW_PREFIX);
    assert_string_equal(r->rewrite->hostname, "backend.example:8080");
    assert_true(l7_rewrite_path(r->rewrite->path_kind, r->rewrite->path, prefix, plen, q.r.path, q.r.path_len,
                                out, sizeof(out)) > 0);
    assert_string_equal(out, "/newpath?q=1");
    assert_int_equal(r->n_backends, 2);
    assert_string_equal(r->backends[0].subset, "v1");
    assert_int_equal(r->backends[0].port, 9080);
    assert_int_equal(r->backends[0].weight, 80);
    assert_string_equal(r->backends[1].subset, "");
    assert_int_equal(r->backends[1].port, 0); /* the request's port */
    assert_int_equal(r->backends[1].n_filters, 1);
    assert_int_equal(r->backends[1].filters[0].u.headers.n_set, 1);
    assert_string_equal(r->backends[1].filters[0].u.headers.set[0].name, "x-b");
    assert_int_equal(r->request_timeout_ms, 1500);
    assert_non_null(r->retry);
    assert_int_equal(r->retry->attempts, 3);
    assert_int_equal(r->retry->per_try_timeout_ms, 200);
    assert_int_equal(r->retry->on, L7_RETRY_5XX | L7_RETRY_RESET | L7_RETRY_GRPC_UNAVAILABLE |
                                       L7_RETRY_RETRIABLE_STATUS_CODES);
    assert_int_equal(r->retry->n_codes, 1);
    assert_int_equal(r->retry->codes[0], 503);
    assert_non_null(r->fault);
    assert_int_equal(r->fault->delay_ms, 2000);
    assert_int_equal(r->fault->delay_ppm, 125000);
    assert_int_equal(r->fault->abort_status, 503);
    assert_int_equal(r->fault->abort_grpc, -1);
    assert_int_equal(r->fault->abort_ppm, 500000);
    assert_non_null(r->cors);
    assert_int_equal(r->cors->n_origins, 3);
    assert_true(l7_cors_origin_allowed(r->cors, "https://a.example", 17));
    assert_true(l7_cors_origin_allowed(r->cors, "https://b.anything", 18));
    assert_true(l7_cors_origin_allowed(r->cors, "https://x.c.example", 19));
    assert_false(l7_cors_origin_allowed(r->cors, "https://a.example.evil", 22));
    assert_string_equal(r->cors->allow_methods, "GET,POST");
    assert_string_equal(r->cors->allow_headers, "x-h");
    assert_string_equal(r->cors->expose_headers, "x-e");
    assert_int_equal(r->cors->max_age_s, 86400);
    assert_int_equal(r->cors->allow_credentials, 1);
    assert_true(r->cors->unmatched_preflight_forward);
    /* route-level headers: request then response modifiers */
    size_t nreq = 0, nresp = 0;
    for (size_t i = 0; i < r->n_filters; i++) {
        if (r->filters[i].kind == L7_FILTER_REQUEST_HEADERS) {
            nreq++;
            assert_string_equal(r->filters[i].u.headers.remove[0], "x-gone");
            assert_string_equal(r->filters[i].u.headers.add[0].name, "x-a");
        }
        if (r->filters[i].kind == L7_FILTER_RESPONSE_HEADERS) nresp++;
    }
    assert_int_equal(nreq, 1);
    assert_int_equal(nresp, 1);

    r = vs_rule(c, "/rx/abc/def", &prefix, &plen, &q);
    assert_string_equal(r->name, "rx");
    assert_int_equal(r->rewrite->path_kind, L7_PATH_REGEX);
    assert_true(l7_rewrite_path_regex(r->rewrite->path_regex, r->rewrite->path, q.r.path, q.r.path_len, out,
                                      sizeof(out)) > 0);
    assert_string_equal(out, "/v2/abc/def");
    assert_int_equal(r->fault->abort_status, 0);
    assert_int_equal(r->fault->abort_grpc, 14);
    assert_int_equal(r->fault->abort_ppm, L7_PPM); /* no percentage: every request */
    assert_int_equal(r->retry->attempts, 0);       /* retries disabled */
    /* Envoy's isOriginAllowed: a matcher of "*" allows every origin */
    assert_true(l7_cors_origin_allowed(r->cors, "https://any.example", 19));

    r = vs_rule(c, "/direct", &prefix, &plen, &q);
    assert_non_null(r->direct);
    assert_int_equal(r->direct->status, 418);
    assert_int_equal(r->direct->body_len, 15);
    assert_memory_equal(r->direct->body, "short and stout", 15);
    assert_int_equal(r->n_backends, 0);

    r = vs_rule(c, "/redir", &prefix, &plen, &q);
    assert_non_null(r->redirect);
    assert_int_equal(r->redirect->status, 301); /* HTTPRedirect's default */
    assert_true(l7_redirect_location(r->redirect, prefix, plen, &q.r, "http", out, sizeof(out)) > 0);
    assert_string_equal(out, "http://other.example:8080/elsewhere");
    l7_config_unref(c);
}

/* The model refuses VirtualService-only fields on Gateway API routes, naming the field. */
static void test_vs_only_fields_refused(void **state)
{
    (void)state;
    Zmesh__V1__HTTPRoute m = ZMESH__V1__HTTPROUTE__INIT;
    Zmesh__V1__ParentRef p = ZMESH__V1__PARENT_REF__INIT;
    Zmesh__V1__RouteRule rule = ZMESH__V1__ROUTE_RULE__INIT;
    Zmesh__V1__Fault fault = ZMESH__V1__FAULT__INIT;
    Zmesh__V1__ParentRef *pp[] = {&p};
    Zmesh__V1__RouteRule *rr[] = {&rule};
    m.namespace_ = "app";
    m.name = "r";
    p.namespace_ = "app";
    p.name = "svc";
    m.parents = pp;
    m.n_parents = 1;
    m.rules = rr;
    m.n_rules = 1;
    rule.fault = &fault;
    fault.abort_http_status = 503;
    fault.abort_ppm = 2000000;
    char err[512];
    struct l7_builder *b = l7_builder_new();
    assert_int_equal(add_route(b, &m, "app/r", err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "rules[0].fault: VirtualService only"));
    m.kind = ZMESH__V1__HTTPROUTE__KIND__VIRTUAL_SERVICE;
    assert_int_equal(add_route(b, &m, "app/r", err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "rules[0].fault.abort_ppm: more than 1000000 parts per million"));
    fault.abort_ppm = 1000;
    fault.abort_http_status = 99;
    assert_int_equal(add_route(b, &m, "app/r", err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "rules[0].fault.abort_http_status: expected 200-599, got 99"));
    fault.abort_http_status = 503;
    assert_int_equal(add_route(b, &m, "app/r", err, sizeof(err)), 0);
    l7_builder_free(b);
}

/* VirtualService tcp routes: by port (none = every port), in order, weighted; other Services have none. */
static void test_vs_tcp_routes(void **state)
{
    (void)state;
    static const char yaml[] = "apiVersion: networking.istio.io/v1\n"
                               "kind: VirtualService\n"
                               "metadata: {name: t, namespace: app}\n"
                               "spec:\n"
                               "  hosts: [svc]\n"
                               "  tcp:\n"
                               "  - match: [{port: 9000}, {port: 9001}]\n"
                               "    route: [{destination: {host: a, port: {number: 7000}}, weight: 1}, "
                               "{destination: {host: b}, weight: 3}]\n"
                               "  - route: [{destination: {host: c}}]\n";
    struct l7_config *c = load(yaml);
    const struct l7_tcp_rule *r = l7_tcp_route_for(c, "app", "svc", 9001);
    assert_non_null(r);
    assert_int_equal(r->index, 0);
    assert_int_equal(r->n_backends, 2);
    assert_int_equal(r->backends[0].port, 7000);
    assert_int_equal(r->backends[1].port, 0);
    int got[2] = {0, 0};
    for (uint64_t rnd = 0; rnd < 400; rnd++)
        got[l7_tcp_pick_backend(r, rnd)]++;
    assert_int_equal(got[0], 100); /* exact proportions over consecutive values: 1:3 */
    assert_int_equal(got[1], 300);
    r = l7_tcp_route_for(c, "app", "svc", 80);
    assert_non_null(r);
    assert_int_equal(r->index, 1);
    assert_string_equal(r->backends[0].name, "c");
    assert_null(l7_tcp_route_for(c, "app", "other", 9000));
    assert_null(l7_routes_for(c, "app", "svc", 80)); /* no http routes: HTTP goes to the Service itself */
    l7_config_unref(c);
}

static void test_route_type_conflict(void **state)
{
    (void)state;
    static const char yaml[] =
        "apiVersion: gateway.networking.k8s.io/v1\n"
        "kind: HTTPRoute\n"
        "metadata: {name: h, namespace: app}\n"
        "spec:\n"
        "  parentRefs: [{group: \"\", kind: Service, name: svc}]\n"
        "  rules: [{name: http, backendRefs: [{name: a, namespace: other, port: 80}]}]\n"
        "---\n"
        "apiVersion: gateway.networking.k8s.io/v1\n"
        "kind: GRPCRoute\n"
        "metadata: {name: g, namespace: app}\n"
        "spec:\n"
        "  parentRefs: [{group: \"\", kind: Service, name: svc, port: 9090}]\n"
        "  rules: [{name: grpc, matches: [{method: {service: a.B}}]}]\n";
    struct l7_config *c = load(yaml);
    assert_string_equal(route_of(c, 9090, "POST", "/a.B/C", NULL), "grpc");
    assert_string_equal(route_of(c, 9090, "GET", "/x", NULL), "-"); /* the HTTPRoute is not applied on 9090 */
    assert_string_equal(route_of(c, 8080, "GET", "/x", NULL), "http");
    /* GEP-1426: a mesh route's backends may be in any namespace, without a ReferenceGrant. */
    struct rq q;
    const struct l7_rule *r = l7_match(l7_routes_for(c, "app", "svc", 8080), mkreq(&q, "GET", "/x", NULL));
    assert_string_equal(r->backends[0].ns, "other");
    l7_config_unref(c);
}

/* ---- the model's own checks (hand-built protobuf) ---- */

static int add_route(struct l7_builder *b, Zmesh__V1__HTTPRoute *m, const char *name, char *err, size_t n)
{
    size_t len = zmesh__v1__httproute__get_packed_size(m);
    uint8_t *buf = malloc(len ? len : 1);
    zmesh__v1__httproute__pack(m, buf);
    int rc = l7_builder_add(b, L7_TYPE_URL_HTTP_ROUTE, name, buf, len, err, n);
    free(buf);
    return rc;
}

static void test_bad_regex_refused(void **state)
{
    (void)state;
    static const struct {
        const char *re, *want;
    } cases[] = {
        {"/a(", "rules[0].matches[0].path.value: invalid regular expression"},
        {"/(a)\\1", "rules[0].matches[0].path.value: \\1 (a backreference"},
        {"/a(?=b)", "rules[0].matches[0].path.value: lookaround assertions are not RE2 syntax"},
        {"/a(?<!b)", "rules[0].matches[0].path.value: lookaround"},
        {"/(?>a)", "rules[0].matches[0].path.value: the group \"(?>\" is not RE2 syntax"},
        {"/\\Ca", "rules[0].matches[0].path.value: invalid regular expression"},
        {"(*LIMIT_MATCH=99999999)a", "verbs are not RE2 syntax"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        Zmesh__V1__StringMatch sm = ZMESH__V1__STRING_MATCH__INIT;
        sm.type = ZMESH__V1__STRING_MATCH__TYPE__REGEX;
        sm.value = (char *)cases[i].re;
        Zmesh__V1__RouteMatch mt = ZMESH__V1__ROUTE_MATCH__INIT, *mts[] = {&mt};
        mt.path = &sm;
        Zmesh__V1__RouteRule rule = ZMESH__V1__ROUTE_RULE__INIT, *rules[] = {&rule};
        rule.matches = mts;
        rule.n_matches = 1;
        Zmesh__V1__ParentRef pr = ZMESH__V1__PARENT_REF__INIT, *prs[] = {&pr};
        pr.namespace_ = "app";
        pr.name = "svc";
        Zmesh__V1__HTTPRoute m = ZMESH__V1__HTTPROUTE__INIT;
        m.namespace_ = "app";
        m.name = "bad";
        m.parents = prs;
        m.n_parents = 1;
        m.rules = rules;
        m.n_rules = 1;
        struct l7_builder *b = l7_builder_new();
        char err[512];
        assert_int_equal(add_route(b, &m, "app/bad", err, sizeof(err)), -EINVAL);
        if (!strstr(err, cases[i].want) || strncmp(err, "HTTPRoute app/bad: ", 19) != 0)
            fail_msg("%s: got \"%s\", want \"%s\"", cases[i].re, err, cases[i].want);
        /* Left out whole: the config has no route for the service. */
        struct l7_config *c = l7_builder_finish(b);
        assert_int_equal(l7_config_n_routes(c), 0);
        assert_null(l7_routes_for(c, "app", "svc", 80));
        l7_config_unref(c);
    }
    char err[256];
    assert_int_equal(l7_regex_check("(?i)abc|(?P<n>x)(?:y)[[:alpha:](]", err, sizeof(err)), 0);
}

static void test_builder_errors(void **state)
{
    (void)state;
    struct l7_builder *b = l7_builder_new();
    char err[512];
    Zmesh__V1__HTTPRoute m = ZMESH__V1__HTTPROUTE__INIT;
    m.namespace_ = "app";
    m.name = "r";
    assert_int_equal(add_route(b, &m, "app/other", err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "HTTPRoute app/other: name: the resource name is not namespace/name"));
    assert_int_equal(add_route(b, &m, "app/r", err, sizeof(err)), 0);
    assert_int_equal(add_route(b, &m, "app/r", err, sizeof(err)), -EEXIST);
    uint8_t junk[] = {0xff, 0xff, 0xff};
    assert_int_equal(l7_builder_add(b, L7_TYPE_URL_HTTP_ROUTE, "app/j", junk, sizeof(junk), err, sizeof(err)),
                     -EINVAL);
    assert_non_null(strstr(err, "not a valid zmesh.v1.HTTPRoute encoding"));
    assert_int_equal(l7_builder_add(b, "type.googleapis.com/x.Y", "a/b", junk, 0, err, sizeof(err)),
                     -EPROTONOSUPPORT);
    /* A backend with port 0 and a redirect with status 200 name their fields. */
    Zmesh__V1__BackendRef br = ZMESH__V1__BACKEND_REF__INIT;
    br.namespace_ = "app";
    br.name = "a";
    Zmesh__V1__Backend be = ZMESH__V1__BACKEND__INIT, *bes[] = {&be};
    be.service = &br;
    Zmesh__V1__RouteRule rule = ZMESH__V1__ROUTE_RULE__INIT, *rules[] = {&rule};
    rule.backends = bes;
    rule.n_backends = 1;
    Zmesh__V1__HTTPRoute m2 = ZMESH__V1__HTTPROUTE__INIT;
    m2.namespace_ = "app";
    m2.name = "r2";
    m2.rules = rules;
    m2.n_rules = 1;
    assert_int_equal(add_route(b, &m2, "app/r2", err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "rules[0].backends[0].service.port: expected a port 1-65535, got 0"));
    br.port = 80;
    Zmesh__V1__RequestRedirect rd = ZMESH__V1__REQUEST_REDIRECT__INIT;
    rd.status_code = 200;
    Zmesh__V1__RouteFilter rf = ZMESH__V1__ROUTE_FILTER__INIT, *rfs[] = {&rf};
    rf.kind_case = ZMESH__V1__ROUTE_FILTER__KIND_REQUEST_REDIRECT;
    rf.request_redirect = &rd;
    rule.filters = rfs;
    rule.n_filters = 1;
    assert_int_equal(add_route(b, &m2, "app/r2", err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err,
                           "rules[0].filters[0].request_redirect.status_code: expected 301, 302, 303, 307 or "
                           "308, got 200"));
    rd.status_code = 0;
    assert_int_equal(add_route(b, &m2, "app/r2", err, sizeof(err)), 0);
    struct l7_config *c = l7_builder_finish(b);
    assert_int_equal(l7_config_n_routes(c), 2);
    l7_config_unref(c);
}

/* ---- regex limits ---- */

static void test_regex_match_limit(void **state)
{
    (void)state;
    /* (a|aa)+[yz] backtracks exponentially on a run of 'a's that ends in a mismatch (PCRE2 has no shortcut
     * for a class at the end, unlike a literal); the match limit makes it a non-match in bounded time. A sane
     * regex on the next rule still matches. */
    static const char yaml[] = "apiVersion: gateway.networking.k8s.io/v1\n"
                               "kind: HTTPRoute\n"
                               "metadata: {name: cat, namespace: app}\n"
                               "spec:\n"
                               "  parentRefs: [{group: \"\", kind: Service, name: svc}]\n"
                               "  rules:\n"
                               "  - name: catastrophic\n"
                               "    matches: [{path: {type: RegularExpression, value: \"/(a|aa)+[yz]\"}}]\n"
                               "  - name: fallback\n"
                               "    matches: [{path: {type: RegularExpression, value: \"/a+!\"}}]\n";
    struct l7_config *c = load(yaml);
    char path[80] = "/";
    memset(path + 1, 'a', 60);
    path[61] = '!';
    path[62] = 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    const char *got = route_of(c, 80, "GET", path, NULL);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    assert_string_equal(got, "fallback");
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    assert_true(secs < 1.0);
    l7_config_unref(c);
}

static void test_refcount(void **state)
{
    (void)state;
    struct l7_config *c = load(match_yaml);
    l7_config_ref(c);
    l7_config_unref(c);
    assert_string_equal(route_of(c, 80, "GET", "/exact", NULL), "exact"); /* still alive */
    l7_config_unref(c);
    l7_config_unref(NULL);
    (void)head;
}

static void test_regex_rewrite_and_cors(void **state)
{
    (void)state;
    char err[128], out[128];
    struct l7_regex *re = NULL;
    /* istio/api virtual_service.proto RegexRewrite example: match "^/service/([^/]+)(/.*)$", rewrite
     * "\\2/instance/\\1". */
    assert_int_equal(l7_regex_compile_rewrite("^/service/([^/]+)(/.*)$", &re, err, sizeof(err)), 0);
    const char *p = "/service/foo/v1/api?x=1";
    assert_int_equal(l7_rewrite_path_regex(re, "\\2/instance/\\1", p, strlen(p), out, sizeof(out)), 24);
    assert_string_equal(out, "/v1/api/instance/foo?x=1");
    assert_int_equal(l7_rewrite_path_regex(re, "/x", p, strlen(p), out, 4), -ENOSPC);
    l7_regex_free(re);
    /* Global: every match is replaced. */
    assert_int_equal(l7_regex_compile_rewrite("o", &re, err, sizeof(err)), 0);
    assert_int_equal(l7_rewrite_path_regex(re, "0$", "/foo/boo", 8, out, sizeof(out)), 12);
    assert_string_equal(out, "/f0$0$/b0$0$");
    l7_regex_free(re);
    assert_int_equal(l7_regex_compile_rewrite("(", &re, err, sizeof(err)), -EINVAL);

    void *ore = NULL;
    assert_int_equal(l7_re_compile("https://.*\\.example\\.com", &ore, err, sizeof(err)), 0);
    struct l7_origin o[] = {
        {0, "https://a.test", NULL}, {1, "http://local", NULL}, {2, "", (const struct l7_regex *)ore}};
    struct l7_cors c = {.origins = o, .n_origins = 3};
    assert_true(l7_cors_origin_allowed(&c, "https://a.test", 14));
    assert_false(l7_cors_origin_allowed(&c, "https://a.tes", 13));
    assert_true(l7_cors_origin_allowed(&c, "http://localhost:8080", 21));
    assert_true(l7_cors_origin_allowed(&c, "https://x.example.com", 21));
    assert_false(l7_cors_origin_allowed(&c, "https://x.example.com.evil", 26));
    assert_false(l7_cors_origin_allowed(NULL, "https://a.test", 14));
    l7_re_free(ore);
}

/* Envoy's hasGrpcContentType: gRPC and its +suffix/;params forms, not gRPC-Web. */
static void test_grpc_content_type(void **state)
{
    (void)state;
    assert_true(l7_grpc_content_type("application/grpc"));
    assert_true(l7_grpc_content_type("application/grpc+proto"));
    assert_true(l7_grpc_content_type("application/grpc;charset=utf-8"));
    assert_false(l7_grpc_content_type("application/grpc-web"));
    assert_false(l7_grpc_content_type("application/grpc-web+proto"));
    assert_false(l7_grpc_content_type("application/grpcx"));
    assert_false(l7_grpc_content_type("application/json"));
    assert_false(l7_grpc_content_type(""));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grpc_content_type),
        cmocka_unit_test(test_matches),
        cmocka_unit_test(test_precedence),
        cmocka_unit_test(test_weights),
        cmocka_unit_test(test_rewrite_path),
        cmocka_unit_test(test_rewrite_and_redirect_rules),
        cmocka_unit_test(test_grpc),
        cmocka_unit_test(test_port_scoped_parents),
        cmocka_unit_test(test_route_type_conflict),
        cmocka_unit_test(test_bad_regex_refused),
        cmocka_unit_test(test_builder_errors),
        cmocka_unit_test(test_regex_match_limit),
        cmocka_unit_test(test_refcount),
        cmocka_unit_test(test_regex_rewrite_and_cors),
        cmocka_unit_test(test_vs_matches),
        cmocka_unit_test(test_vs_order_and_httproute_wins),
        cmocka_unit_test(test_vs_rule_parts),
        cmocka_unit_test(test_vs_only_fields_refused),
        cmocka_unit_test(test_vs_tcp_routes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
