/* Unit tests for zmeshd's L7 conversion (src/zmeshd/l7.c): Kubernetes YAML (read by manifest_load_json) ->
 * zmesh.v1 protobuf -> the waypoint's builder -> a match; and every ERROR, WARN and INFO it reports. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "mesh/l7authz.h"
#include "zmesh/l7.pb-c.h"
#include "zmeshd/l7.h"
#include "zmeshd/vs.h"

#define MAX_F 16
struct run {
    int rc;
    size_t n;
    struct {
        enum manifest_level level;
        char text[600];
    } f[MAX_F];
    uint8_t *pb;
    size_t len;
    char name[L7_NAME_MAX];
};

static void on_finding(void *ud, const struct manifest_finding *f)
{
    struct run *r = ud;
    if (r->n < MAX_F) {
        r->f[r->n].level = f->level;
        manifest_finding_format(f, r->f[r->n].text, sizeof(r->f[r->n].text));
        r->n++;
    }
}

static int on_doc(void *ud, json_t *doc, const struct manifest_src *src)
{
    struct run *r = ud;
    const char *kind = json_string_value(json_object_get(doc, "kind"));
    if (kind && strcmp(kind, "AuthorizationPolicy") == 0)
        r->rc = l7_convert_authz(doc, src, &r->pb, &r->len, r->name, sizeof(r->name), on_finding, r);
    else if (kind && strcmp(kind, "VirtualService") == 0)
        r->rc = vs_convert(doc, src, NULL, &r->pb, &r->len, r->name, sizeof(r->name), on_finding, r);
    else
        r->rc = l7_convert_route(doc, src, &r->pb, &r->len, r->name, sizeof(r->name), on_finding, r);
    return 0;
}

static void convert(const char *yaml, struct run *r)
{
    memset(r, 0, sizeof(*r));
    r->rc = 1;
    assert_int_equal(manifest_load_json("in.yaml", yaml, strlen(yaml), on_finding, r, on_doc, r), 0);
    assert_int_not_equal(r->rc, 1);
}

static const char *findings(const struct run *r, char *buf, size_t n)
{
    size_t w = 0;
    buf[0] = 0;
    for (size_t i = 0; i < r->n && w < n; i++)
        w += (size_t)snprintf(buf + w, n - w, "[%d] %s\n", r->f[i].level, r->f[i].text);
    return buf;
}

static bool has(const struct run *r, enum manifest_level lvl, const char *text)
{
    for (size_t i = 0; i < r->n; i++)
        if (r->f[i].level == lvl && strstr(r->f[i].text, text)) return true;
    return false;
}

/* ---- the happy paths, end to end ---- */

static const char route_yaml[] =
    "apiVersion: gateway.networking.k8s.io/v1\n"
    "kind: HTTPRoute\n"
    "metadata: {name: reviews, namespace: app, creationTimestamp: \"2024-05-01T10:00:00Z\"}\n"
    "spec:\n"
    "  parentRefs:\n"
    "  - {group: \"\", kind: Service, name: reviews, port: 9080}\n"
    "  - {name: ingress}\n" /* a Gateway (the default kind): not a waypoint route */
    "  rules:\n"
    "  - name: v2-for-jason\n"
    "    matches:\n"
    "    - headers: [{name: End-User, value: jason}]\n"
    "    backendRefs: [{name: reviews-v2, port: 9080}]\n"
    "  - backendRefs:\n"
    "    - {name: reviews-v1, port: 9080, weight: 3}\n"
    "    - {name: reviews-v3, port: 9080, weight: 1}\n"
    "    timeouts: {request: 1m30s}\n";

static void test_http_route(void **state)
{
    (void)state;
    struct run r;
    char buf[4096];
    convert(route_yaml, &r);
    assert_int_equal(r.rc, 0);
    assert_string_equal(r.name, "app/reviews");
    assert_true(has(&r, MANIFEST_INFO,
                    "spec.parentRefs[1]: parent Gateway app/ingress is not a waypoint attachment"));
    assert_int_equal(r.n, 1);
    Zmesh__V1__HTTPRoute *m = zmesh__v1__httproute__unpack(NULL, r.len, r.pb);
    assert_non_null(m);
    assert_int_equal(m->creation_timestamp, 1714557600);
    assert_int_equal(m->n_parents, 1);
    assert_int_equal(m->parents[0]->port, 9080);
    assert_int_equal(m->n_rules, 2);
    /* Defaults: a match with headers only gets PathPrefix "/"; no matches at all gets one such match. */
    assert_int_equal(m->rules[0]->matches[0]->path->type, ZMESH__V1__STRING_MATCH__TYPE__PREFIX);
    assert_string_equal(m->rules[0]->matches[0]->path->value, "/");
    assert_string_equal(m->rules[0]->matches[0]->headers[0]->name, "end-user");
    assert_int_equal(m->rules[1]->n_matches, 1);
    assert_string_equal(m->rules[1]->matches[0]->path->value, "/");
    assert_int_equal(m->rules[1]->timeouts->request_ms, 90000);
    assert_int_equal(m->rules[1]->backends[0]->weight, 3);
    zmesh__v1__httproute__free_unpacked(m, NULL);

    struct l7_builder *b = l7_builder_new();
    char err[512];
    assert_int_equal(l7_builder_add(b, L7_TYPE_URL_HTTP_ROUTE, r.name, r.pb, r.len, err, sizeof(err)), 0);
    free(r.pb);
    struct l7_config *c = l7_builder_finish(b);
    assert_null(l7_routes_for(c, "app", "reviews", 80)); /* the parent names port 9080 only */
    const struct l7_service_routes *sr = l7_routes_for(c, "app", "reviews", 9080);
    assert_non_null(sr);
    struct l7_header h = {"end-user", 8, "jason", 5};
    struct l7_request q = {.method = "GET",
                           .path = "/reviews/1",
                           .path_len = 10,
                           .authority = "reviews:9080",
                           .headers = &h,
                           .n_headers = 1};
    const struct l7_rule *rule = l7_match(sr, &q);
    assert_non_null(rule);
    assert_string_equal(rule->name, "v2-for-jason");
    q.n_headers = 0;
    rule = l7_match(sr, &q);
    assert_string_equal(rule->name, "app.reviews.1");
    assert_int_equal(l7_pick_backend(rule, 2), 0);
    assert_int_equal(l7_pick_backend(rule, 3), 1);
    (void)findings(&r, buf, sizeof(buf));
    l7_config_unref(c);
}

static void test_grpc_route(void **state)
{
    (void)state;
    static const char yaml[] =
        "apiVersion: gateway.networking.k8s.io/v1\n"
        "kind: GRPCRoute\n"
        "metadata: {name: echo, namespace: app}\n"
        "spec:\n"
        "  parentRefs: [{group: \"\", kind: Service, name: echo}]\n"
        "  rules:\n"
        "  - matches: [{method: {service: grpc.Echo, method: Say}}]\n"
        "    filters: [{type: RequestHeaderModifier, requestHeaderModifier: {add: [{name: "
        "x-via, value: wp}]}}]\n"
        "    backendRefs: [{name: echo-v2, port: 50051}]\n"
        "  - backendRefs: [{name: echo-v1, port: 50051}]\n";
    struct run r;
    convert(yaml, &r);
    assert_int_equal(r.rc, 0);
    assert_int_equal(r.n, 0);
    struct l7_builder *b = l7_builder_new();
    char err[512];
    assert_int_equal(l7_builder_add(b, L7_TYPE_URL_HTTP_ROUTE, r.name, r.pb, r.len, err, sizeof(err)), 0);
    free(r.pb);
    struct l7_config *c = l7_builder_finish(b);
    struct l7_request q = {
        .method = "POST", .path = "/grpc.Echo/Say", .path_len = 14, .authority = "echo", .grpc = true};
    const struct l7_rule *rule = l7_match(l7_routes_for(c, "app", "echo", 50051), &q);
    assert_non_null(rule);
    assert_string_equal(rule->backends[0].name, "echo-v2");
    assert_int_equal(rule->kind, L7_ROUTE_GRPC);
    q.path = "/grpc.Echo/Other";
    q.path_len = 16;
    rule = l7_match(l7_routes_for(c, "app", "echo", 50051), &q);
    assert_string_equal(rule->backends[0].name, "echo-v1"); /* a rule without matches matches everything */
    l7_config_unref(c);
}

static void test_authz_policy(void **state)
{
    (void)state;
    static const char yaml[] = "apiVersion: security.istio.io/v1\n"
                               "kind: AuthorizationPolicy\n"
                               "metadata: {name: viewers, namespace: app}\n"
                               "spec:\n"
                               "  targetRefs: [{kind: Service, group: \"\", name: reviews}]\n"
                               "  action: ALLOW\n"
                               "  rules:\n"
                               "  - from: [{source: {serviceAccounts: [productpage]}}]\n"
                               "    to: [{operation: {methods: [GET], paths: [\"/reviews/*\"]}}]\n";
    struct run r;
    convert(yaml, &r);
    assert_int_equal(r.rc, 0);
    assert_int_equal(r.n, 0);
    Zmesh__V1__L7Authorization *m = zmesh__v1__l7_authorization__unpack(NULL, r.len, r.pb);
    assert_non_null(m);
    assert_int_equal(m->targets[0]->kind, ZMESH__V1__POLICY_TARGET__KIND__SERVICE);
    assert_string_equal(m->targets[0]->namespace_, "app");
    assert_string_equal(m->rules[0]->from[0]->service_accounts[0],
                        "app/productpage"); /* the policy's namespace */
    zmesh__v1__l7_authorization__free_unpacked(m, NULL);
    struct l7_builder *b = l7_builder_new();
    char err[512];
    assert_int_equal(l7_builder_add(b, L7_TYPE_URL_AUTHORIZATION, r.name, r.pb, r.len, err, sizeof(err)), 0);
    free(r.pb);
    struct l7_config *c = l7_builder_finish(b);
    struct l7_request q = {.method = "GET", .path = "/reviews/1", .path_len = 10, .authority = "reviews"};
    struct l7_authz_input in = {.source_principal = "cluster.local/ns/app/sa/productpage", .req = &q};
    const char *mt;
    assert_int_equal(l7_authorize(c, NULL, NULL, "app", "reviews", &in, &mt, NULL), L7_ALLOW);
    assert_string_equal(mt, "app/viewers");
    in.source_principal = "cluster.local/ns/app/sa/ratings";
    assert_int_equal(l7_authorize(c, NULL, NULL, "app", "reviews", &in, &mt, NULL), L7_DENY);
    l7_config_unref(c);

    /* Without targetRefs the policy is ztunnel's: -ENOENT, nothing reported. */
    static const char l4[] = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
                             "metadata: {name: l4, namespace: app}\nspec: {action: DENY, rules: [{}]}\n";
    convert(l4, &r);
    assert_int_equal(r.rc, -ENOENT);
    assert_int_equal(r.n, 0);
    assert_null(r.pb);
}

/* ---- every finding ---- */

#define ROUTE(spec)                                                                                          \
    "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: "             \
    "app}\nspec:\n"                                                                                          \
    "  parentRefs: [{group: \"\", kind: Service, name: svc}]\n" spec
#define GROUTE(spec)                                                                                         \
    "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: g, namespace: "             \
    "app}\nspec:\n"                                                                                          \
    "  parentRefs: [{group: \"\", kind: Service, name: svc}]\n" spec
#define POLICY(spec)                                                                                         \
    "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: "           \
    "app}\nspec:\n" spec
#define TARGET "  targetRefs: [{kind: Service, group: \"\", name: svc}]\n"

static const struct {
    const char *yaml;
    enum manifest_level level;
    const char *text;
} finding_cases[] = {
    /* routes: ERROR, nothing converted */
    {"apiVersion: gateway.networking.k8s.io/v1alpha2\nkind: HTTPRoute\nmetadata: {name: r}\nspec: {}\n",
     MANIFEST_ERROR, "apiVersion: expected gateway.networking.k8s.io/v1"},
    {ROUTE("  rules: [{matches: [{path: {type: Regex, value: /a}}]}]\n"), MANIFEST_ERROR,
     "spec.rules[0].matches[0].path.type: expected Exact, PathPrefix or RegularExpression, got \"Regex\""},
    {ROUTE("  rules: [{matches: [{path: {type: RegularExpression, value: \"/a(\"}}]}]\n"), MANIFEST_ERROR,
     "spec.rules[0].matches[0].path.value: invalid regular expression"},
    {ROUTE("  rules: [{matches: [{headers: [{type: RegularExpression, name: x, value: \"(?=a)\"}]}]}]\n"),
     MANIFEST_ERROR, "spec.rules[0].matches[0].headers[0].value: lookaround assertions are not RE2 syntax"},
    {ROUTE("  rules: [{matches: [{path: {type: PathPrefix, value: foo}}]}]\n"), MANIFEST_ERROR,
     "rules[0].matches[0].path.value: a path must start with '/'"},
    {ROUTE("  rules: [{matches: [{method: FETCH}]}]\n"), MANIFEST_ERROR,
     "rules[0].matches[0].method: expected GET, HEAD, POST"},
    {ROUTE("  rules: [{filters: [{type: ExtensionRef, extensionRef: {group: x, kind: y, name: z}}]}]\n"),
     MANIFEST_ERROR, "spec.rules[0].filters[0].type: unsupported filter type \"ExtensionRef\""},
    {ROUTE("  rules: [{filters: [{type: CORS, cors: {allowOrigins: [\"*\"]}}]}]\n"), MANIFEST_ERROR,
     "unsupported filter type \"CORS\" (CORS is not implemented"},
    {ROUTE("  rules: [{filters: [{type: RequestRedirect, requestRedirect: {statusCode: 305}}]}]\n"),
     MANIFEST_ERROR,
     "spec.rules[0].filters[0].requestRedirect.statusCode: expected 301, 302, 303, 307 or 308, got 305"},
    {ROUTE("  rules: [{matches: [{path: {type: Exact, value: /a}}], filters: [{type: URLRewrite, urlRewrite: "
           "{path: "
           "{type: ReplacePrefixMatch, replacePrefixMatch: /b}}}]}]\n"),
     MANIFEST_ERROR, "ReplacePrefixMatch needs every match of the rule to be a PathPrefix"},
    {ROUTE("  rules: [{filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath}}}]}]\n"),
     MANIFEST_ERROR, "urlRewrite.path.replaceFullPath: missing for type ReplaceFullPath"},
    {ROUTE("  rules: [{filters: [{type: URLRewrite, urlRewrite: {hostname: a}}, {type: RequestRedirect, "
           "requestRedirect: {hostname: b}}]}]\n"),
     MANIFEST_ERROR, "RequestRedirect and URLRewrite cannot both be set in one rule"},
    {ROUTE("  rules: [{filters: [{type: RequestMirror, requestMirror: {backendRef: {name: m, port: 80}, "
           "percent: 10, "
           "fraction: {numerator: 1}}}]}]\n"),
     MANIFEST_ERROR, "percent and fraction are mutually exclusive"},
    {ROUTE("  rules: [{backendRefs: [{group: networking.istio.io, kind: Hostname, name: x, port: 80}]}]\n"),
     MANIFEST_ERROR,
     "spec.rules[0].backendRefs[0].kind: unsupported backend kind networking.istio.io/Hostname"},
    {ROUTE("  rules: [{backendRefs: [{name: x}]}]\n"), MANIFEST_ERROR,
     "spec.rules[0].backendRefs[0].port: missing: a Service backend needs a port"},
    {ROUTE("  rules: [{backendRefs: [{name: x, port: 80, weight: 1000001}]}]\n"), MANIFEST_ERROR,
     "spec.rules[0].backendRefs[0].weight: expected an integer 0-1000000"},
    {ROUTE("  rules: [{timeouts: {request: 1.5s}}]\n"), MANIFEST_ERROR,
     "spec.rules[0].timeouts.request: not a Gateway API duration"},
    {ROUTE("  rules: [{timeouts: {request: 1s, backendRequest: 2s}}]\n"), MANIFEST_ERROR,
     "timeouts.backend_request_ms: longer than the request timeout"},
    {"apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: app}\nspec:\n"
     "  parentRefs: [{group: \"\", kind: Service, name: svc, sectionName: http}]\n",
     MANIFEST_ERROR, "spec.parentRefs[0]: sectionName on a Service parent is not supported"},
    {GROUTE("  rules: [{filters: [{type: URLRewrite, urlRewrite: {hostname: a}}]}]\n"), MANIFEST_ERROR,
     "unsupported filter type \"URLRewrite\""},
    {GROUTE("  rules: [{matches: [{method: {type: Exact}}]}]\n"), MANIFEST_ERROR,
     "spec.rules[0].matches[0].method: one or both of service and method must be set"},
    {GROUTE("  rules: [{matches: [{method: {service: \"bad name\"}}]}]\n"), MANIFEST_ERROR,
     "matches[0].grpc_service: not a gRPC service name"},
    {GROUTE("  rules: [{matches: [{method: {type: RegularExpression, service: \"\\\\Qa.b\"}}]}]\n"),
     MANIFEST_ERROR, "\\Q is not allowed in a gRPC service or method pattern"},
    /* routes: WARN, converted with something dropped; INFO */
    {ROUTE("  hostnames: [reviews.example]\n"), MANIFEST_WARN, "spec.hostnames: ignored"},
    {ROUTE("  rules: [{retry: {attempts: 3}}]\n"), MANIFEST_WARN,
     "spec.rules[0].retry: not supported by zmesh's waypoint yet, ignored"},
    {ROUTE("  colour: blue\n"), MANIFEST_WARN, "spec.colour: unknown field, ignored"},

    {ROUTE("  rules: [{matches: [{path: {value: /a, extra: 1}}]}]\n"), MANIFEST_WARN,
     "spec.rules[0].matches[0].path.extra: unknown field, ignored"},
    {"apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: app}\nspec:\n"
     "  parentRefs: [{group: networking.istio.io, kind: ServiceEntry, name: se}]\n",
     MANIFEST_WARN, "parent kind networking.istio.io/ServiceEntry is not supported (only Service), skipped"},
    {"apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: app}\nspec:\n"
     "  parentRefs: [{group: \"\", kind: Service, name: svc, namespace: other}]\n",
     MANIFEST_WARN, "(a consumer route) is not supported by the waypoint, skipped"},
    /* policies */
    {POLICY(TARGET "  action: CUSTOM\n  provider: {name: ext}\n"), MANIFEST_ERROR,
     "spec.action: CUSTOM (external authorization) is not supported by zmesh"},
    {POLICY("  targetRefs: [{kind: ServiceEntry, group: networking.istio.io, name: se}]\n"), MANIFEST_ERROR,
     "spec.targetRefs[0].kind: unsupported target networking.istio.io/ServiceEntry"},
    {POLICY("  targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}]\n"),
     MANIFEST_ERROR, "unsupported target gateway.networking.k8s.io/GatewayClass"},
    {POLICY(TARGET "  selector: {matchLabels: {app: x}}\n"), MANIFEST_ERROR,
     "spec.selector: only one of selector and targetRefs may be set"},
    {POLICY("  targetRef: {kind: Service, group: \"\", name: svc, namespace: other}\n"), MANIFEST_ERROR,
     "spec.targetRef.namespace: a target must be in the policy's namespace app"},
    {POLICY(TARGET "  action: PERMIT\n"), MANIFEST_ERROR,
     "spec.action: expected ALLOW, DENY, AUDIT or CUSTOM"},
    {POLICY(TARGET "  rules: [{from: [{source: {ipBlocks: [not-an-ip]}}]}]\n"), MANIFEST_ERROR,
     "rules[0].from[0].ip_blocks[0]: not an IP address or CIDR block"},
    {POLICY(TARGET "  rules: [{when: [{key: source.ip}]}]\n"), MANIFEST_ERROR,
     "spec.rules[0].when[0]: values or notValues must be set"},
    {POLICY(TARGET "  rules: [{from: [{source: {trustDomains: [td]}}]}]\n"), MANIFEST_WARN,
     "spec.rules[0].from[0].source.trustDomains: not supported by zmesh: the ALLOW rule is left out (fail "
     "closed)"},
    {POLICY(TARGET "  action: DENY\n  rules: [{from: [{source: {trustDomains: [td]}}]}]\n"), MANIFEST_WARN,
     "trustDomains: not supported by zmesh, ignored (the rule matches more)"},
    {POLICY(TARGET "  rules: [{when: [{key: request.colour, values: [red]}]}]\n"), MANIFEST_WARN,
     "spec.rules[0].when[0].key: unknown attribute \"request.colour\": the rule is left out"},
    {POLICY(TARGET "  sidecar: true\n"), MANIFEST_WARN, "spec.sidecar: unknown field, ignored"},
};

static void test_findings(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(finding_cases) / sizeof(finding_cases[0]); i++) {
        struct run r;
        char buf[8192];
        convert(finding_cases[i].yaml, &r);
        if (!has(&r, finding_cases[i].level, finding_cases[i].text))
            fail_msg("case %zu: want [%d] \"%s\", got:\n%s", i, finding_cases[i].level, finding_cases[i].text,
                     findings(&r, buf, sizeof(buf)));
        /* ERROR: nothing handed over; WARN/INFO: converted. */
        if (finding_cases[i].level == MANIFEST_ERROR) {
            assert_int_equal(r.rc, -EINVAL);
            assert_null(r.pb);
        } else {
            if (r.rc != 0) fail_msg("case %zu: rc %d:\n%s", i, r.rc, findings(&r, buf, sizeof(buf)));
            assert_non_null(r.pb);
        }
        free(r.pb);
    }
}

/* A mirror is applied to HTTP/1.1 and HTTP/2 (h2c, gRPC) alike: an HTTPRoute's and a GRPCRoute's convert with no
 * finding, and the filter carries the mirror's backend. */
static void test_mirror_no_finding(void **state)
{
    (void)state;
    static const char *const docs[] = {
        ROUTE("  rules: [{filters: [{type: RequestMirror, requestMirror: {backendRef: {name: m, port: 80}}}]}]\n"),
        GROUTE("  rules: [{filters: [{type: RequestMirror, requestMirror: {backendRef: {name: m, port: 80}}}]}]\n"),
    };
    for (size_t i = 0; i < sizeof(docs) / sizeof(docs[0]); i++) {
        struct run r;
        char buf[8192];
        convert(docs[i], &r);
        if (r.rc != 0 || r.n != 0) fail_msg("doc %zu: rc %d, findings:\n%s", i, r.rc, findings(&r, buf, sizeof(buf)));
        Zmesh__V1__HTTPRoute *m = zmesh__v1__httproute__unpack(NULL, r.len, r.pb);
        assert_non_null(m);
        assert_int_equal(m->n_rules, 1);
        assert_int_equal(m->rules[0]->n_filters, 1);
        const Zmesh__V1__RouteFilter *f = m->rules[0]->filters[0];
        assert_int_equal(f->kind_case, ZMESH__V1__ROUTE_FILTER__KIND_REQUEST_MIRROR);
        assert_non_null(f->request_mirror->backend);
        assert_string_equal(f->request_mirror->backend->name, "m");
        assert_int_equal(f->request_mirror->backend->port, 80);
        zmesh__v1__httproute__free_unpacked(m, NULL);
        free(r.pb);
    }
}

/* An ALLOW rule left out (fail closed) leaves a policy that allows less: here nothing. */
static void test_allow_rule_dropped_fails_closed(void **state)
{
    (void)state;
    struct run r;
    convert(POLICY(TARGET "  rules: [{from: [{source: {trustDomains: [td]}}]}]\n"), &r);
    assert_int_equal(r.rc, 0);
    struct l7_builder *b = l7_builder_new();
    char err[256];
    assert_int_equal(l7_builder_add(b, L7_TYPE_URL_AUTHORIZATION, r.name, r.pb, r.len, err, sizeof(err)), 0);
    free(r.pb);
    struct l7_config *c = l7_builder_finish(b);
    struct l7_request q = {.method = "GET", .path = "/", .path_len = 1, .authority = "svc"};
    struct l7_authz_input in = {.source_principal = "td/ns/app/sa/x", .req = &q};
    assert_int_equal(l7_authorize(c, NULL, NULL, "app", "svc", &in, NULL, NULL), L7_DENY);
    l7_config_unref(c);
}

/* ---- VirtualService (src/zmeshd/vs.c) ---- */

#define VS_HEAD                                                                                              \
    "apiVersion: networking.istio.io/v1\n"                                                                   \
    "kind: VirtualService\n"                                                                                 \
    "metadata: {name: reviews, namespace: app}\n"

/* Converts yaml and returns the unpacked message (the caller frees it), asserting success. */
static Zmesh__V1__HTTPRoute *vs_ok(const char *yaml, struct run *r)
{
    char buf[4096];
    convert(yaml, r);
    if (r->rc != 0) fail_msg("rc %d, findings:\n%s", r->rc, findings(r, buf, sizeof(buf)));
    Zmesh__V1__HTTPRoute *m = zmesh__v1__httproute__unpack(NULL, r->len, r->pb);
    assert_non_null(m);
    free(r->pb);
    return m;
}

static void test_vs_hosts_and_matches(void **state)
{
    (void)state;
    struct run r;
    Zmesh__V1__HTTPRoute *m = vs_ok(VS_HEAD "spec:\n"
                                            "  hosts: [reviews, ratings.other.svc.cluster.local, "
                                            "\"*.example.com\", reviews.app.svc.cluster.local]\n"
                                            "  http:\n"
                                            "  - name: jason\n"
                                            "    match:\n"
                                            "    - uri: {prefix: /api}\n"
                                            "      ignoreUriCase: true\n"
                                            "      port: 9080\n"
                                            "      method: {exact: GET}\n"
                                            "      headers: {End-User: {exact: jason}, x-any: {}}\n"
                                            "      withoutHeaders: {x-debug: {regex: \"[0-9]+\"}}\n"
                                            "      queryParams: {v: {prefix: \"2\"}}\n"
                                            "    - {gateways: [ingress], uri: {exact: /gw}}\n"
                                            "    route: [{destination: {host: reviews, subset: v2}}]\n",
                                    &r);
    assert_string_equal(r.name, "app/reviews");
    assert_int_equal(m->kind, ZMESH__V1__HTTPROUTE__KIND__VIRTUAL_SERVICE);
    /* a short name, an FQDN in another namespace; the wildcard is skipped, the FQDN repeat counted once */
    assert_int_equal(m->n_parents, 2);
    assert_string_equal(m->parents[0]->namespace_, "app");
    assert_string_equal(m->parents[0]->name, "reviews");
    assert_string_equal(m->parents[1]->namespace_, "other");
    assert_string_equal(m->parents[1]->name, "ratings");
    assert_true(has(&r, MANIFEST_WARN, "spec.hosts[2]: \"*.example.com\" does not name a Service"));
    assert_true(has(&r, MANIFEST_INFO, "spec.http[0].match[1].gateways: a match for gateways only"));
    assert_int_equal(m->n_rules, 1);
    const Zmesh__V1__RouteRule *rule = m->rules[0];
    assert_int_equal(rule->n_matches, 1);
    const Zmesh__V1__RouteMatch *mt = rule->matches[0];
    assert_int_equal(mt->path->type, ZMESH__V1__STRING_MATCH__TYPE__STRING_PREFIX);
    assert_string_equal(mt->path->value, "/api");
    assert_true(mt->ignore_uri_case);
    assert_int_equal(mt->port, 9080);
    assert_string_equal(mt->method, "GET");
    assert_int_equal(mt->n_headers, 2);
    assert_string_equal(mt->headers[0]->name, "end-user");
    assert_int_equal(mt->headers[1]->type, ZMESH__V1__STRING_MATCH__TYPE__PRESENT);
    assert_int_equal(mt->n_without_headers, 1);
    assert_int_equal(mt->without_headers[0]->type, ZMESH__V1__STRING_MATCH__TYPE__REGEX);
    assert_int_equal(mt->query_params[0]->type, ZMESH__V1__STRING_MATCH__TYPE__STRING_PREFIX);
    assert_string_equal(rule->backends[0]->subset, "v2");
    assert_int_equal(rule->backends[0]->weight, 100);
    assert_int_equal(rule->backends[0]->service->port, 0);
    zmesh__v1__httproute__free_unpacked(m, NULL);
}

static void test_vs_route_parts(void **state)
{
    (void)state;
    struct run r;
    Zmesh__V1__HTTPRoute *m = vs_ok(
        VS_HEAD
        "spec:\n"
        "  hosts: [reviews]\n"
        "  http:\n"
        "  - route:\n"
        "    - {destination: {host: reviews, subset: v1, port: {number: 9080}}, weight: 75,\n"
        "       headers: {response: {add: {x-v: v1}}}}\n"
        "    - {destination: {host: reviews-v3}, weight: 25}\n"
        "    headers: {request: {set: {X-Set: s}, remove: [x-rm]}}\n"
        "    rewrite: {uri: /v1, authority: reviews.internal}\n"
        "    timeout: 0.25s\n"
        "    retries: {attempts: 2, perTryTimeout: 1s, retryOn: \"gateway-error,connect-failure,429\"}\n"
        "    fault:\n"
        "      delay: {fixedDelay: 100ms, percent: 10}\n"
        "      abort: {httpStatus: 503, percentage: {value: 0.1}}\n"
        "    mirror: {host: shadow}\n"
        "    mirrorPercentage: {value: 25.5}\n"
        "    corsPolicy: {allowOrigins: [{prefix: \"https://\"}], allowMethods: [GET], maxAge: 1m,\n"
        "                 allowCredentials: false, unmatchedPreflights: IGNORE}\n"
        "  - rewrite: {uriRegexRewrite: {match: \"^/a/(.*)\", rewrite: \"/b/\\\\1\"}}\n"
        "    route: [{destination: {host: reviews}}]\n"
        "    fault: {abort: {grpcStatus: PERMISSION_DENIED}}\n"
        "  - directResponse: {status: 503, body: {bytes: aGVsbG8=}}\n"
        "  - redirect: {uri: /new, authority: x.example, redirectCode: 308, scheme: https, port: 8443}\n",
        &r);
    assert_int_equal(r.n, 0);
    assert_int_equal(m->n_rules, 4);
    const Zmesh__V1__RouteRule *a = m->rules[0];
    assert_int_equal(a->n_backends, 2);
    assert_int_equal(a->backends[0]->weight, 75);
    assert_int_equal(a->backends[0]->service->port, 9080);
    assert_int_equal(a->backends[0]->n_filters, 1);
    assert_int_equal(a->backends[0]->filters[0]->kind_case,
                     ZMESH__V1__ROUTE_FILTER__KIND_RESPONSE_HEADER_MODIFIER);
    assert_string_equal(a->backends[1]->service->name, "reviews-v3");
    assert_int_equal(a->backends[1]->weight, 25);
    /* filters: request headers, rewrite, mirror */
    assert_int_equal(a->n_filters, 3);
    assert_string_equal(a->filters[0]->request_header_modifier->set[0]->name, "x-set");
    assert_int_equal(a->filters[1]->url_rewrite->path->type, ZMESH__V1__PATH_MODIFIER__TYPE__PREFIX_REWRITE);
    assert_string_equal(a->filters[1]->url_rewrite->hostname, "reviews.internal");
    assert_int_equal(a->filters[2]->request_mirror->numerator, 255000);
    assert_int_equal(a->filters[2]->request_mirror->denominator, 1000000);
    assert_string_equal(a->filters[2]->request_mirror->backend->name, "shadow");
    assert_int_equal(a->timeouts->request_ms, 250);
    assert_int_equal(a->retry->attempts, 2);
    assert_int_equal(a->retry->per_try_timeout_ms, 1000);
    assert_int_equal(a->retry->n_retry_on, 2);
    assert_int_equal(a->retry->n_retry_on_codes, 1);
    assert_int_equal(a->retry->retry_on_codes[0], 429);
    assert_int_equal(a->fault->delay_ms, 100);
    assert_int_equal(a->fault->delay_ppm, 100000);
    assert_int_equal(a->fault->abort_http_status, 503);
    assert_int_equal(a->fault->abort_ppm, 1000);
    assert_int_equal(a->cors->n_allow_origins, 1);
    assert_int_equal(a->cors->max_age_s, 60);
    assert_int_equal(a->cors->allow_credentials, ZMESH__V1__CORS_POLICY__TRISTATE__FALSE);
    assert_true(a->cors->unmatched_preflight_ignore);
    const Zmesh__V1__RouteRule *b = m->rules[1];
    assert_int_equal(b->filters[0]->url_rewrite->path->type, ZMESH__V1__PATH_MODIFIER__TYPE__REGEX);
    assert_string_equal(b->filters[0]->url_rewrite->path->pattern, "^/a/(.*)");
    assert_string_equal(b->filters[0]->url_rewrite->path->value, "/b/\\1");
    assert_true(b->fault->abort_grpc);
    assert_int_equal(b->fault->abort_grpc_status, 7);
    assert_null(b->retry); /* Istio's default policy */
    assert_int_equal(m->rules[2]->direct_response->status, 503);
    assert_int_equal(m->rules[2]->direct_response->body.len, 5);
    assert_memory_equal(m->rules[2]->direct_response->body.data, "hello", 5);
    const Zmesh__V1__RequestRedirect *rd = m->rules[3]->filters[0]->request_redirect;
    assert_int_equal(rd->status_code, 308);
    assert_string_equal(rd->hostname, "x.example");
    assert_string_equal(rd->scheme, "https");
    assert_int_equal(rd->port, 8443);
    assert_string_equal(rd->path->value, "/new");
    zmesh__v1__httproute__free_unpacked(m, NULL);
}

/* Every refusal names the field; what zmesh drops is a WARN; a VirtualService only for gateways is INFO. */
static void test_vs_findings(void **state)
{
    (void)state;
    static const struct {
        const char *spec;
        int rc;
        enum manifest_level level;
        const char *text;
    } cases[] = {
        {"  http: [{route: [{destination: {host: a}}]}]\n", -EINVAL, MANIFEST_ERROR,
         "spec.hosts: missing: a VirtualService needs at least one host"},
        {"  hosts: [a.example.com]\n  http: [{route: [{destination: {host: a}}]}]\n", -ENOENT, MANIFEST_WARN,
         "spec.hosts: no host names a Service"},
        {"  hosts: [a]\n  gateways: [istio-system/ingress]\n", -ENOENT, MANIFEST_INFO,
         "spec.gateways: bound to gateways only"},
        {"  hosts: [a]\n  gateways: [mesh, ingress]\n  http: [{route: [{destination: {host: a}}]}]\n", 0,
         MANIFEST_WARN, "spec.gateways: only \"mesh\" applies"},
        {"  hosts: [a]\n  tls: [{match: [{sniHosts: [a]}], route: [{destination: {host: a}}]}]\n", 0,
         MANIFEST_INFO, "spec.tls[0].match[0].sniHosts: never applies at a waypoint"},
        {"  hosts: [a]\n  tcp: [{match: [{destinationSubnets: [10.0.0.0/8]}], route: [{destination: {host: "
         "a}}]}]\n",
         -EINVAL, MANIFEST_ERROR, "spec.tcp[0].match[0].destinationSubnets: not supported"},
        {"  hosts: [a]\n  tcp: [{match: [{port: 1}]}]\n", -EINVAL, MANIFEST_ERROR,
         "spec.tcp[0].route: missing: a tcp route needs a destination"},
        {"  hosts: [a]\n  tcp: [{match: [{gateways: [gw]}], route: [{destination: {host: a}}]}]\n", 0,
         MANIFEST_INFO, "spec.tcp[0].match[0]: a match for gateways only"},
        {"  hosts: [a]\n  tcp: [{route: [{destination: {host: a}, weight: 0}, {destination: {host: b}}]}]\n",
         -EINVAL, MANIFEST_ERROR, "spec.tcp[0].route: the destinations' weights add up to 0"},
        {"  hosts: [a]\n  exportTo: [\".\"]\n", 0, MANIFEST_WARN, "spec.exportTo: not supported"},
        {"  hosts: [a]\n  http: [{delegate: {name: d}}]\n", 0, MANIFEST_WARN,
         "spec.http[0].delegate: delegation is not supported"},
        {"  hosts: [a]\n  http: [{match: [{port: 0}], route: [{destination: {host: a}}]}]\n", -EINVAL,
         MANIFEST_ERROR, "spec.http[0].match[0].port: expected an integer 1-65535"},
        {"  hosts: [a]\n  http: [{match: [{uri: {exact: /a, prefix: /b}}], route: [{destination: {host: "
         "a}}]}]\n",
         -EINVAL, MANIFEST_ERROR,
         "spec.http[0].match[0].uri: exact, prefix and regex are mutually exclusive"},
        {"  hosts: [a]\n  http: [{match: [{uri: {regex: \"(?=x)\"}}], route: [{destination: {host: a}}]}]\n",
         -EINVAL, MANIFEST_ERROR, "spec.http[0].match[0].uri.regex: lookaround"},
        {"  hosts: [a]\n  http: [{match: [{method: {prefix: G}}], route: [{destination: {host: a}}]}]\n",
         -EINVAL, MANIFEST_ERROR, "spec.http[0].match[0].method: only an exact method match"},
        {"  hosts: [a]\n  http: [{route: [{destination: {host: a}}], redirect: {uri: /x}}]\n", -EINVAL,
         MANIFEST_ERROR, "spec.http[0]: exactly one of route, redirect and directResponse"},
        {"  hosts: [a]\n  http: [{match: [{uri: {exact: /a}}]}]\n", -EINVAL, MANIFEST_ERROR,
         "spec.http[0]: exactly one of route, redirect and directResponse"},
        {"  hosts: [a]\n  http: [{route: [{destination: {host: a.example.com}}]}]\n", -EINVAL, MANIFEST_ERROR,
         "spec.http[0].route[0].destination.host: \"a.example.com\" is not a Service"},
        {"  hosts: [a]\n  http: [{route: [{destination: {host: a}, weight: 0}, {destination: {host: b}}]}]\n",
         -EINVAL, MANIFEST_ERROR, "spec.http[0].route: the destinations' weights add up to 0"},
        {"  hosts: [a]\n  http: [{route: [{destination: {host: a}}], timeout: 5x}]\n", -EINVAL,
         MANIFEST_ERROR, "spec.http[0].timeout: not a duration"},
        {"  hosts: [a]\n  http: [{route: [{destination: {host: a}}], retries: {retryOn: \"5xx,bogus\"}}]\n",
         -EINVAL, MANIFEST_ERROR, "spec.http[0].retries.retryOn: unknown retry condition \"bogus\""},
        {"  hosts: [a]\n  http: [{route: [{destination: {host: a}}], retries: {attempts: 1, "
         "retryRemoteLocalities: true}}]\n",
         0, MANIFEST_WARN, "spec.http[0].retries.retryRemoteLocalities: not supported"},
        {"  hosts: [a]\n  http: [{route: [{destination: {host: a}}], fault: {abort: {percentage: {value: "
         "5}}}}]\n",
         -EINVAL, MANIFEST_ERROR, "spec.http[0].fault.abort: exactly one of httpStatus and grpcStatus"},
        {"  hosts: [a]\n  http: [{route: [{destination: {host: a}}], fault: {abort: {httpStatus: 700}}}]\n",
         -EINVAL, MANIFEST_ERROR, "spec.http[0].fault.abort.httpStatus: expected an integer 200-599"},
        {"  hosts: [a]\n  http: [{route: [{destination: {host: a}}], fault: {abort: {grpcStatus: NOPE}}}]\n",
         -EINVAL, MANIFEST_ERROR, "spec.http[0].fault.abort.grpcStatus: not a gRPC status name"},
        {"  hosts: [a]\n  http: [{route: [{destination: {host: a}}], fault: {delay: {percentage: {value: "
         "5}}}}]\n",
         -EINVAL, MANIFEST_ERROR, "spec.http[0].fault.delay.fixedDelay: missing"},
        {"  hosts: [a]\n  http: [{route: [{destination: {host: a}}], fault: {delay: {fixedDelay: 1s, "
         "percentage: {value: 101}}}}]\n",
         -EINVAL, MANIFEST_ERROR, "spec.http[0].fault.delay.percentage: expected {value: 0.0-100.0}"},
        {"  hosts: [a]\n  http: [{route: [{destination: {host: a}}], rewrite: {uri: /a, uriRegexRewrite: "
         "{match: a, rewrite: b}}}]\n",
         -EINVAL, MANIFEST_ERROR,
         "spec.http[0].rewrite.uriRegexRewrite: uri and uriRegexRewrite are mutually"},
        {"  hosts: [a]\n  http: [{route: [{destination: {host: a}}], rewrite: {uriRegexRewrite: {match: "
         "\"(a\", rewrite: b}}}]\n",
         -EINVAL, MANIFEST_ERROR, "spec.http[0].rewrite.uriRegexRewrite.match: invalid regular expression"},
        {"  hosts: [a]\n  http: [{directResponse: {status: 99}}]\n", -EINVAL, MANIFEST_ERROR,
         "spec.http[0].directResponse.status: expected an integer 200-599"},
        {"  hosts: [a]\n  http: [{redirect: {uri: /x, redirectCode: 200}}]\n", -EINVAL, MANIFEST_ERROR,
         "spec.http[0].redirect.redirectCode: expected an integer 300-399"},
        {"  hosts: [a]\n  http: [{redirect: {uri: /x, redirectCode: 305}}]\n", -EINVAL, MANIFEST_ERROR,
         "spec: VirtualService app/reviews: rules[0].filters[0].request_redirect.status_code: expected 301"},
        {"  hosts: [a]\n  http: [{route: [{destination: {host: a}}], corsPolicy: {unmatchedPreflights: "
         "X}}]\n",
         -EINVAL, MANIFEST_ERROR, "spec.http[0].corsPolicy.unmatchedPreflights: expected FORWARD or IGNORE"},
        {"  hosts: [a]\n  http: [{route: [{destination: {host: a}}], corsPolicy: {allowOrigins: [{}]}}]\n",
         -EINVAL, MANIFEST_ERROR,
         "spec.http[0].corsPolicy.allowOrigins[0]: one of exact, prefix, regex is required"},
        {"  hosts: [a]\n  http: [{route: [{destination: {host: a}}], bogus: 1}]\n", 0, MANIFEST_WARN,
         "spec.http[0].bogus: unknown field, ignored"},
        {"  hosts: [a]\n  http: [{mirror: {host: m, subset: s}, route: [{destination: {host: a}}]}]\n", 0,
         MANIFEST_WARN, "spec.http[0].mirror.subset: a mirror's subset is not supported"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char yaml[1024], buf[4096];
        snprintf(yaml, sizeof(yaml), VS_HEAD "spec:\n%s", cases[i].spec);
        struct run r;
        convert(yaml, &r);
        free(r.pb);
        if (r.rc != cases[i].rc || !has(&r, cases[i].level, cases[i].text))
            fail_msg("case %zu: rc %d (want %d), findings:\n%s\nwant [%d] %s", i, r.rc, cases[i].rc,
                     findings(&r, buf, sizeof(buf)), cases[i].level, cases[i].text);
    }
    /* v1beta1 and v1alpha3 are read as v1; another group is refused */
    struct run r;
    convert("apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata: {name: x}\n"
            "spec: {hosts: [a], http: [{route: [{destination: {host: a}}]}]}\n",
            &r);
    assert_int_equal(r.rc, 0);
    assert_string_equal(r.name, "default/x");
    free(r.pb);
    uint64_t ms;
    assert_int_equal(l7_istio_duration_ms("1h2m3.5s", &ms), 0);
    assert_int_equal(ms, 3723500);
    assert_int_equal(l7_istio_duration_ms("1500us", &ms), 0);
    assert_int_equal(ms, 1);
    assert_int_equal(l7_istio_duration_ms("0", &ms), 0);
    assert_int_equal(ms, 0);
    assert_int_equal(l7_istio_duration_ms("1.5", &ms), -EINVAL);
    assert_int_equal(l7_istio_duration_ms("-1s", &ms), -EINVAL);
    assert_int_equal(l7_istio_duration_ms("", &ms), -EINVAL);
}

/* Host in headers.request is Istio's authority rewrite; rewrite.authority wins over it; pseudo-headers are
 * dropped with a WARN. */
static void test_vs_host_header(void **state)
{
    (void)state;
    struct run r;
    Zmesh__V1__HTTPRoute *m = vs_ok(
        VS_HEAD "spec:\n"
                "  hosts: [reviews]\n"
                "  http:\n"
                "  - headers: {request: {set: {Host: h.example, x-a: a}, remove: [\":path\"]}}\n"
                "    route: [{destination: {host: reviews}}]\n"
                "  - headers: {request: {set: {host: h.example}}}\n"
                "    rewrite: {authority: r.example}\n"
                "    route: [{destination: {host: reviews}}]\n"
                "  - route: [{destination: {host: reviews}, headers: {request: {add: {host: d.example}}}}]\n",
        &r);
    const Zmesh__V1__RouteRule *a = m->rules[0];
    assert_int_equal(a->n_filters, 2);
    assert_int_equal(a->filters[0]->request_header_modifier->n_set, 1); /* x-a only */
    assert_string_equal(a->filters[0]->request_header_modifier->set[0]->name, "x-a");
    assert_int_equal(a->filters[0]->request_header_modifier->n_remove, 0);
    assert_true(has(&r, MANIFEST_WARN,
                    "spec.http[0].headers.request.remove[0]: a pseudo-header or Host cannot be removed"));
    assert_string_equal(a->filters[1]->url_rewrite->hostname, "h.example");
    assert_string_equal(m->rules[1]->filters[1]->url_rewrite->hostname, "r.example");
    assert_string_equal(m->rules[2]->filters[0]->url_rewrite->hostname,
                        "d.example"); /* a lone destination's */
    zmesh__v1__httproute__free_unpacked(m, NULL);
}

static void on_conflict(void *ud, const struct manifest_finding *f)
{
    on_finding(ud, f);
}

/* A VirtualService and an HTTPRoute on one Service: the VirtualService is reported. */
static void test_vs_httproute_conflict(void **state)
{
    (void)state;
    json_error_t je;
    struct manifest_l7_doc docs[2] = {
        {.kind = "VirtualService", .src = {.file = "vs.yaml", .doc = 1}},
        {.kind = "HTTPRoute", .src = {.file = "hr.yaml", .doc = 1}},
    };
    docs[0].doc = json_pack_ex(&je, 0, "{s:s,s:s,s:{s:s,s:s},s:{s:[s,s]}}", "apiVersion",
                               "networking.istio.io/v1", "kind", "VirtualService", "metadata", "name",
                               "reviews", "namespace", "app", "spec", "hosts", "reviews", "ratings");
    docs[1].doc = json_pack_ex(&je, 0, "{s:s,s:s,s:{s:s,s:s},s:{s:[{s:s,s:s,s:s}]}}", "apiVersion",
                               "gateway.networking.k8s.io/v1", "kind", "HTTPRoute", "metadata", "name", "r",
                               "namespace", "app", "spec", "parentRefs", "group", "", "kind", "Service",
                               "name", "reviews");
    assert_non_null(docs[0].doc);
    assert_non_null(docs[1].doc);
    struct run r;
    memset(&r, 0, sizeof(r));
    vs_report_conflicts(docs, 2, on_conflict, &r);
    assert_int_equal(r.n, 1);
    assert_true(
        has(&r, MANIFEST_WARN, "vs.yaml#1: spec.hosts: Service app/reviews also has HTTPRoute app/r"));
    assert_true(has(&r, MANIFEST_WARN, "applies the HTTPRoute there and ignores this VirtualService"));
    json_decref(docs[0].doc);
    json_decref(docs[1].doc);
}

static void test_duration(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        int rc;
        uint64_t ms;
    } cases[] = {
        {"10s", 0, 10000},          {"1h", 0, 3600000},   {"1m30s", 0, 90000},   {"250ms", 0, 250},
        {"1h2m3s4ms", 0, 3723004},  {"0s", 0, 0},         {"99999ms", 0, 99999}, {"100000s", -EINVAL, 0},
        {"1h1h1h1h1h", -EINVAL, 0}, {"1.5s", -EINVAL, 0}, {"s", -EINVAL, 0},     {"", -EINVAL, 0},
        {"10", -EINVAL, 0},         {"10us", -EINVAL, 0}, {"-1s", -EINVAL, 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint64_t ms = 12345;
        assert_int_equal(l7_gateway_duration_ms(cases[i].s, &ms), cases[i].rc);
        if (cases[i].rc == 0) assert_int_equal(ms, cases[i].ms);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_http_route),
        cmocka_unit_test(test_grpc_route),
        cmocka_unit_test(test_authz_policy),
        cmocka_unit_test(test_findings),
        cmocka_unit_test(test_mirror_no_finding),
        cmocka_unit_test(test_allow_rule_dropped_fails_closed),
        cmocka_unit_test(test_duration),
        cmocka_unit_test(test_vs_hosts_and_matches),
        cmocka_unit_test(test_vs_route_parts),
        cmocka_unit_test(test_vs_findings),
        cmocka_unit_test(test_vs_httproute_conflict),
        cmocka_unit_test(test_vs_host_header),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
