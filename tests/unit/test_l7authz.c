/* Unit tests for L7 authorization (src/mesh/l7authz.c), table-driven from Istio's semantics
 * (istio/istio pilot/pkg/security/authz/model/). Each case writes one AuthorizationPolicy with targetRefs in
 * YAML, converts it (src/zmeshd/l7.c), builds a config and asks l7_authorize about one request. */
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
#include "zmeshd/l7.h"

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
    if (l7_convert_authz(doc, src, &pb, &len, name, sizeof(name), on_finding, l) < 0) return 0;
    if (l7_builder_add(l->b, L7_TYPE_URL_AUTHORIZATION, name, pb, len, err, sizeof(err)) < 0) {
        l->errors++;
        snprintf(l->err, sizeof(l->err), "%s", err);
    }
    free(pb);
    return 0;
}

static struct l7_config *load(const char *yaml)
{
    struct load l = {.b = l7_builder_new()};
    assert_int_equal(manifest_load_json("p.yaml", yaml, strlen(yaml), on_finding, &l, on_doc, &l), 0);
    if (l.errors) fail_msg("unexpected error: %s\n%s", l.err, yaml);
    struct l7_config *c = l7_builder_finish(l.b);
    assert_non_null(c);
    return c;
}

/* A policy on Service app/svc with the given action and rules (YAML flow text). */
static struct l7_config *policy(const char *action, const char *rules)
{
    char yaml[4096];
    snprintf(yaml, sizeof(yaml),
             "apiVersion: security.istio.io/v1\n"
             "kind: AuthorizationPolicy\n"
             "metadata: {name: p, namespace: app}\n"
             "spec:\n"
             "  targetRefs: [{kind: Service, group: \"\", name: svc}]\n"
             "  action: %s\n"
             "  rules: %s\n",
             action, rules);
    return load(yaml);
}

/* The request: defaults, overridden per case. */
struct req {
    const char *principal, *ns, *src, *remote, *dst, *method, *path, *host, *h0, *h1, *sni;
    uint16_t port;
    const char *jwt; /* the verified token's payload (JSON), or NULL: no token */
    bool tcp;        /* a TCP stream: no request */
};

/* A verified token as src/mesh/jwt.c returns it, from its payload. */
static void auth_from(const char *payload, struct jwt_result *r)
{
    memset(r, 0, sizeof(*r));
    json_error_t je;
    r->claims = json_loads(payload, 0, &je);
    assert_non_null(r->claims);
    const char *iss = json_string_value(json_object_get(r->claims, "iss"));
    const char *sub = json_string_value(json_object_get(r->claims, "sub"));
    r->issuer = strdup(iss ? iss : "");
    r->subject = strdup(sub ? sub : "");
    size_t n = strlen(r->issuer) + strlen(r->subject) + 2;
    r->principal = malloc(n);
    snprintf(r->principal, n, "%s/%s", r->issuer, r->subject);
    const char *azp = json_string_value(json_object_get(r->claims, "azp"));
    r->presenter = azp ? strdup(azp) : NULL;
    json_t *aud = json_object_get(r->claims, "aud");
    r->audiences = calloc(8, sizeof(char *));
    if (json_is_string(aud)) r->audiences[r->n_audiences++] = strdup(json_string_value(aud));
    size_t i;
    json_t *v;
    json_array_foreach(aud, i, v) if (r->n_audiences < 8) r->audiences[r->n_audiences++] =
        strdup(json_string_value(v));
}

static const struct req base = {
    .principal = "cluster.local/ns/client/sa/web",
    .src = "10.1.0.5",
    .dst = "10.0.0.2",
    .method = "GET",
    .path = "/api/users?x=1",
    .host = "svc.app.svc.cluster.local:8080",
    .port = 8080,
};

static enum l7_verdict decide(const struct l7_config *c, const struct req *r, const char **matched, bool *dry)
{
    struct ip_addr src, remote, dst;
    struct l7_header h[2];
    size_t nh = 0;
    const char *hs[2] = {r->h0, r->h1};
    for (int i = 0; i < 2; i++)
        if (hs[i]) {
            const char *colon = strchr(hs[i], ':');
            h[nh++] = (struct l7_header){hs[i], (size_t)(colon - hs[i]), colon + 2, strlen(colon + 2)};
        }
    struct l7_request q = {.method = r->method,
                           .path = r->path,
                           .path_len = strlen(r->path),
                           .authority = r->host,
                           .headers = h,
                           .n_headers = nh};
    if (r->src) assert_int_equal(ip_parse(r->src, &src), 0);
    if (r->remote) assert_int_equal(ip_parse(r->remote, &remote), 0);
    if (r->dst) assert_int_equal(ip_parse(r->dst, &dst), 0);
    struct l7_authz_input in = {.source_principal = r->principal,
                                .source_namespace = r->ns,
                                .source_ip = r->src ? &src : NULL,
                                .remote_ip = r->remote ? &remote : NULL,
                                .dest_ip = r->dst ? &dst : NULL,
                                .dest_port = r->port,
                                .sni = r->sni,
                                .req = r->tcp ? NULL : &q,
                                .tcp = r->tcp};
    struct jwt_result auth;
    if (r->jwt) {
        auth_from(r->jwt, &auth);
        in.auth = &auth;
    }
    enum l7_verdict v = l7_authorize(c, "app", "waypoint", "app", "svc", &in, matched, dry);
    if (r->jwt) jwt_result_free(&auth);
    return v;
}

#define A L7_ALLOW
#define D L7_DENY
#define JWT                                                                                                  \
    "{\"iss\":\"https://"                                                                                    \
    "idp\",\"sub\":\"alice\",\"aud\":[\"web\",\"api\"],\"azp\":\"cli\",\"groups\":[\"dev\","                 \
    "\"admin\"],\"org\":{\"team\":\"payments\"},\"level\":3,\"admin\":true}"

/* One ALLOW policy per case: whether the request is allowed tells whether the rule matched. */
static const struct {
    const char *rules;
    struct req r; /* fields left NULL/0 take base's (see merge) */
    bool no_identity;
    enum l7_verdict want;
} allow_cases[] = {
    /* principals: exact, prefix, suffix, presence; without "spiffe://" */
    {"[{from: [{source: {principals: [cluster.local/ns/client/sa/web]}}]}]", {0}, false, A},
    {"[{from: [{source: {principals: [cluster.local/ns/client/sa/other]}}]}]", {0}, false, D},
    {"[{from: [{source: {principals: [\"cluster.local/ns/client/*\"]}}]}]", {0}, false, A},
    {"[{from: [{source: {principals: [\"*/sa/web\"]}}]}]", {0}, false, A},
    {"[{from: [{source: {principals: [\"*\"]}}]}]", {0}, false, A},
    {"[{from: [{source: {principals: [\"*\"]}}]}]", {0}, true, D}, /* presence needs an identity */
    {"[{from: [{source: {notPrincipals: [cluster.local/ns/client/sa/web]}}]}]", {0}, false, D},
    {"[{from: [{source: {notPrincipals: [cluster.local/ns/client/sa/web]}}]}]", {0}, true, A},
    /* requestPrincipals: no JWT in zmesh's waypoint: never matches; the not_ form always holds */
    {"[{from: [{source: {requestPrincipals: [\"*\"]}}]}]", {0}, false, D},
    {"[{from: [{source: {notRequestPrincipals: [\"*\"]}}]}]", {0}, false, A},
    /* namespaces */
    {"[{from: [{source: {namespaces: [client]}}]}]", {0}, false, A},
    {"[{from: [{source: {namespaces: [\"cli*\"]}}]}]", {0}, false, A},
    {"[{from: [{source: {namespaces: [other]}}]}]", {0}, false, D},
    {"[{from: [{source: {notNamespaces: [client]}}]}]", {0}, false, D},
    {"[{from: [{source: {namespaces: [client]}}]}]", {0}, true, D},
    /* serviceAccounts: ns/sa, or a bare name in the policy's namespace (app) */
    {"[{from: [{source: {serviceAccounts: [client/web]}}]}]", {0}, false, A},
    {"[{from: [{source: {serviceAccounts: [web]}}]}]", {0}, false, D},
    {"[{from: [{source: {serviceAccounts: [web]}}]}]",
     {.principal = "cluster.local/ns/app/sa/web"},
     false,
     A},
    {"[{from: [{source: {notServiceAccounts: [client/web]}}]}]", {0}, false, D},
    /* ipBlocks and remoteIpBlocks (remote = source without X-Forwarded-For trust) */
    {"[{from: [{source: {ipBlocks: [10.1.0.0/16]}}]}]", {0}, false, A},
    {"[{from: [{source: {ipBlocks: [10.2.0.0/16, 10.1.0.5]}}]}]", {0}, false, A},
    {"[{from: [{source: {ipBlocks: [10.2.0.0/16]}}]}]", {0}, false, D},
    {"[{from: [{source: {notIpBlocks: [10.1.0.0/16]}}]}]", {0}, false, D},
    {"[{from: [{source: {remoteIpBlocks: [10.1.0.0/16]}}]}]", {0}, false, A},
    {"[{from: [{source: {remoteIpBlocks: [10.1.0.0/16]}}]}]", {.remote = "192.168.1.1"}, false, D},
    {"[{from: [{source: {notRemoteIpBlocks: [192.168.0.0/16]}}]}]", {.remote = "192.168.1.1"}, false, D},
    /* hosts: case-insensitive, the whole authority */
    {"[{to: [{operation: {hosts: [\"SVC.app.svc.cluster.local:8080\"]}}]}]", {0}, false, A},
    {"[{to: [{operation: {hosts: [\"svc.app.svc.cluster.local\"]}}]}]", {0}, false, D},
    {"[{to: [{operation: {hosts: [\"svc.app.svc.cluster.local*\"]}}]}]", {0}, false, A},
    {"[{to: [{operation: {hosts: [\"*.Cluster.Local:8080\"]}}]}]", {0}, false, A},
    {"[{to: [{operation: {notHosts: [\"svc.*\"]}}]}]", {0}, false, D},
    /* ports: the service port */
    {"[{to: [{operation: {ports: [\"8080\"]}}]}]", {0}, false, A},
    {"[{to: [{operation: {ports: [\"80\"]}}]}]", {0}, false, D},
    {"[{to: [{operation: {notPorts: [\"8080\"]}}]}]", {0}, false, D},
    /* methods */
    {"[{to: [{operation: {methods: [GET, HEAD]}}]}]", {0}, false, A},
    {"[{to: [{operation: {methods: [POST]}}]}]", {0}, false, D},
    {"[{to: [{operation: {notMethods: [GET]}}]}]", {0}, false, D},
    /* paths: without the query; prefix, suffix, templates, gRPC */
    {"[{to: [{operation: {paths: [/api/users]}}]}]", {0}, false, A},
    {"[{to: [{operation: {paths: [\"/api/*\"]}}]}]", {0}, false, A},
    {"[{to: [{operation: {paths: [\"*/users\"]}}]}]", {0}, false, A},
    {"[{to: [{operation: {paths: [/api]}}]}]", {0}, false, D},
    {"[{to: [{operation: {notPaths: [\"/api/*\"]}}]}]", {0}, false, D},
    {"[{to: [{operation: {paths: [\"/u/{*}/profile\"]}}]}]", {.path = "/u/42/profile"}, false, A},
    {"[{to: [{operation: {paths: [\"/u/{*}/profile\"]}}]}]", {.path = "/u/4/2/profile"}, false, D},
    {"[{to: [{operation: {paths: [\"/u/{*}/profile\"]}}]}]", {.path = "/u//profile"}, false, D},
    {"[{to: [{operation: {paths: [\"/static/{**}\"]}}]}]", {.path = "/static/a/b/c.css"}, false, A},
    {"[{to: [{operation: {paths: [\"/static/{**}\"]}}]}]", {.path = "/static"}, false, D},
    {"[{to: [{operation: {paths: [\"/{*}/users\"]}}]}]", {0}, false, A},
    {"[{to: [{operation: {paths: [/pkg.Echo/Say]}}]}]",
     {.method = "POST", .path = "/pkg.Echo/Say"},
     false,
     A},
    /* when */
    {"[{when: [{key: \"request.headers[X-Token]\", values: [abc]}]}]", {.h0 = "x-token: abc"}, false, A},
    {"[{when: [{key: \"request.headers[x-token]\", values: [abc]}]}]", {.h0 = "x-token: xyz"}, false, D},
    {"[{when: [{key: \"request.headers[x-token]\", values: [abc]}]}]",
     {.h0 = "x-token: xyz", .h1 = "x-token: abc"},
     false,
     A}, /* one element of the joined value */
    {"[{when: [{key: \"request.headers[x-token]\", notValues: [\"*\"]}]}]", {0}, false, A},
    {"[{when: [{key: \"request.headers[x-token]\", notValues: [\"*\"]}]}]", {.h0 = "x-token: a"}, false, D},
    {"[{when: [{key: source.ip, values: [10.1.0.0/16]}]}]", {0}, false, A},
    {"[{when: [{key: remote.ip, notValues: [10.1.0.5]}]}]", {0}, false, D},
    {"[{when: [{key: source.namespace, values: [client]}]}]", {0}, false, A},
    {"[{when: [{key: source.principal, values: [\"*/sa/web\"]}]}]", {0}, false, A},
    {"[{when: [{key: source.serviceAccount, values: [client/web]}]}]", {0}, false, A},
    {"[{when: [{key: destination.ip, values: [10.0.0.0/24]}]}]", {0}, false, A},
    {"[{when: [{key: destination.port, values: [\"8080\"]}]}]", {0}, false, A},
    {"[{when: [{key: destination.port, notValues: [\"8080\"]}]}]", {0}, false, D},
    {"[{when: [{key: connection.sni, values: [\"*.local\"]}]}]", {.sni = "svc.local"}, false, A},
    {"[{when: [{key: connection.sni, values: [\"*.local\"]}]}]", {0}, false, D},
    {"[{when: [{key: \"request.auth.claims[iss]\", values: [\"*\"]}]}]", {0}, false, D},
    /* RequestAuthentication's verified token (src/waypoint/authn.h): requestPrincipals "<iss>/<sub>" */
    {"[{from: [{source: {requestPrincipals: [\"*\"]}}]}]", {.jwt = JWT}, false, A},
    {"[{from: [{source: {requestPrincipals: [\"https://idp/alice\"]}}]}]", {.jwt = JWT}, false, A},
    {"[{from: [{source: {requestPrincipals: [\"https://idp/bob\"]}}]}]", {.jwt = JWT}, false, D},
    {"[{from: [{source: {requestPrincipals: [\"https://idp/*\"]}}]}]", {.jwt = JWT}, false, A},
    {"[{from: [{source: {requestPrincipals: [\"*/alice\"]}}]}]", {.jwt = JWT}, false, A},
    {"[{from: [{source: {notRequestPrincipals: [\"*\"]}}]}]", {.jwt = JWT}, false, D},
    {"[{from: [{source: {notRequestPrincipals: [\"https://idp/bob\"]}}]}]", {.jwt = JWT}, false, A},
    /* request.auth.principal, audiences (any), presenter */
    {"[{when: [{key: request.auth.principal, values: [\"https://idp/alice\"]}]}]", {.jwt = JWT}, false, A},
    {"[{when: [{key: request.auth.principal, values: [\"https://idp/alice\"]}]}]", {0}, false, D},
    {"[{when: [{key: request.auth.audiences, values: [web]}]}]", {.jwt = JWT}, false, A},
    {"[{when: [{key: request.auth.audiences, values: [api]}]}]", {.jwt = JWT}, false, A},
    {"[{when: [{key: request.auth.audiences, values: [other]}]}]", {.jwt = JWT}, false, D},
    {"[{when: [{key: request.auth.presenter, values: [\"cli*\"]}]}]", {.jwt = JWT}, false, A},
    {"[{when: [{key: request.auth.presenter, notValues: [cli]}]}]", {.jwt = JWT}, false, D},
    /* request.auth.claims[a][b]: strings, any string of a list, nested objects, numbers and booleans */
    {"[{when: [{key: \"request.auth.claims[iss]\", values: [\"*\"]}]}]", {.jwt = JWT}, false, A},
    {"[{when: [{key: \"request.auth.claims[groups]\", values: [admin]}]}]", {.jwt = JWT}, false, A},
    {"[{when: [{key: \"request.auth.claims[groups]\", values: [root]}]}]", {.jwt = JWT}, false, D},
    {"[{when: [{key: \"request.auth.claims[groups]\", notValues: [dev]}]}]", {.jwt = JWT}, false, D},
    {"[{when: [{key: \"request.auth.claims[org][team]\", values: [\"pay*\"]}]}]", {.jwt = JWT}, false, A},
    {"[{when: [{key: \"request.auth.claims[org][team]\", values: [other]}]}]", {.jwt = JWT}, false, D},
    {"[{when: [{key: \"request.auth.claims[org]\", values: [\"*\"]}]}]", {.jwt = JWT}, false, D},
    {"[{when: [{key: \"request.auth.claims[level]\", values: [\"3\"]}]}]", {.jwt = JWT}, false, A},
    {"[{when: [{key: \"request.auth.claims[admin]\", values: [\"true\"]}]}]", {.jwt = JWT}, false, A},
    {"[{when: [{key: \"request.auth.claims[missing]\", notValues: [x]}]}]", {.jwt = JWT}, false, A},
    /* combinations: fields AND'd, entries OR'd, rules OR'd, from/to/when AND'd */
    {"[{from: [{source: {namespaces: [client], principals: [\"*/sa/other\"]}}]}]", {0}, false, D},
    {"[{from: [{source: {namespaces: [x]}}, {source: {principals: [\"*/sa/web\"]}}]}]", {0}, false, A},
    {"[{from: [{source: {namespaces: [client]}}], to: [{operation: {methods: [POST]}}]}]", {0}, false, D},
    {"[{to: [{operation: {methods: [POST]}}]}, {to: [{operation: {methods: [GET]}}]}]", {0}, false, A},
    {"[{from: [{source: {namespaces: [client]}}], to: [{operation: {methods: [GET]}}], when: [{key: "
     "destination.port, values: [\"80\"]}]}]",
     {0},
     false,
     D},
    {"[{}]", {0}, false, A}, /* an empty rule matches everything */
    {"[]", {0}, false, D},   /* an ALLOW policy with no rules allows nothing */
};

static struct req merge(const struct req *over, bool no_identity)
{
    struct req r = base;
#define M(f)                                                                                                 \
    if (over->f) r.f = over->f;
    M(principal)
    M(ns)
    M(src)
    M(remote) M(dst) M(method) M(path) M(host) M(h0) M(h1) M(sni) M(port) M(jwt)
#undef M
        if (no_identity) r.principal = NULL;
    return r;
}

static void test_allow_fields(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(allow_cases) / sizeof(allow_cases[0]); i++) {
        struct l7_config *c = policy("ALLOW", allow_cases[i].rules);
        struct req r = merge(&allow_cases[i].r, allow_cases[i].no_identity);
        const char *matched;
        enum l7_verdict v = decide(c, &r, &matched, NULL);
        if (v != allow_cases[i].want)
            fail_msg("case %zu %s (path %s): got %s, want %s", i, allow_cases[i].rules, r.path,
                     l7_verdict_to_str(v), l7_verdict_to_str(allow_cases[i].want));
        if (v == L7_ALLOW)
            assert_string_equal(matched, "app/p");
        else
            assert_null(matched);
        l7_config_unref(c);
    }
}

/* DENY uses the same matchers; the not_ forms that matter most for DENY. */
static void test_deny_policies(void **state)
{
    (void)state;
    struct l7_config *c = policy("DENY", "[{from: [{source: {notRequestPrincipals: [\"*\"]}}]}]");
    struct req r = base;
    const char *matched;
    assert_int_equal(decide(c, &r, &matched, NULL), L7_DENY); /* "require a JWT": none here, so denied */
    assert_string_equal(matched, "app/p");
    l7_config_unref(c);
    c = policy("DENY", "[{to: [{operation: {methods: [DELETE]}}]}]");
    assert_int_equal(decide(c, &r, &matched, NULL), L7_ALLOW); /* no ALLOW policy: allowed */
    assert_null(matched);
    r.method = "DELETE";
    assert_int_equal(decide(c, &r, &matched, NULL), L7_DENY);
    l7_config_unref(c);
    c = policy("DENY", "[]");
    assert_int_equal(decide(c, &r, NULL, NULL), L7_ALLOW); /* a DENY without rules denies nothing */
    l7_config_unref(c);
}

/* A TCP stream through the waypoint, as Istio's TCP filter chain: an ALLOW rule with an HTTP-only attribute
 * is left out, a DENY rule's HTTP-only attribute is ignored (istio/istio pilot/pkg/security/authz/model/
 * model.go checkError). */
static void test_tcp_streams(void **state)
{
    (void)state;
    static const struct {
        const char *action, *rules;
        enum l7_verdict want;
    } cases[] = {
        {"ALLOW", "[{from: [{source: {principals: [cluster.local/ns/client/sa/web]}}]}]", L7_ALLOW},
        {"ALLOW", "[{from: [{source: {principals: [cluster.local/ns/client/sa/other]}}]}]", L7_DENY},
        {"ALLOW", "[{to: [{operation: {ports: [\"8080\"]}}]}]", L7_ALLOW},
        /* the rule needs a method: left out, and with it the only way to be allowed */
        {"ALLOW", "[{to: [{operation: {methods: [GET]}}]}]", L7_DENY},
        {"ALLOW", "[{from: [{source: {principals: [cluster.local/ns/client/sa/web]}}], to: [{operation: "
                  "{methods: [GET]}}]}]",
         L7_DENY},
        {"ALLOW", "[{to: [{operation: {methods: [GET]}}]}, {from: [{source: {namespaces: [client]}}]}]", L7_ALLOW},
        {"ALLOW", "[{from: [{source: {requestPrincipals: [\"*\"]}}]}]", L7_DENY},
        /* a DENY on a method denies every stream: the method is ignored, the rule holds */
        {"DENY", "[{to: [{operation: {methods: [POST]}}]}]", L7_DENY},
        {"DENY", "[{when: [{key: \"request.headers[x-a]\", values: [\"1\"]}]}]", L7_DENY},
        /* its other attributes still count */
        {"DENY", "[{from: [{source: {principals: [cluster.local/ns/client/sa/other]}}], to: [{operation: "
                 "{methods: [POST]}}]}]",
         L7_ALLOW},
        {"DENY", "[{to: [{operation: {ports: [\"9090\"], paths: [/x]}}]}]", L7_ALLOW},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct l7_config *c = policy(cases[i].action, cases[i].rules);
        struct req r = base;
        r.tcp = true;
        enum l7_verdict v = decide(c, &r, NULL, NULL);
        if (v != cases[i].want)
            fail_msg("case %zu %s %s: got %s, want %s", i, cases[i].action, cases[i].rules, l7_verdict_to_str(v),
                     l7_verdict_to_str(cases[i].want));
        l7_config_unref(c);
    }
}

static const char two_policies[] =
    "apiVersion: security.istio.io/v1\n"
    "kind: AuthorizationPolicy\n"
    "metadata: {name: allow-get, namespace: app}\n"
    "spec:\n"
    "  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]\n"
    "  rules: [{to: [{operation: {methods: [GET]}}]}]\n"
    "---\n"
    "apiVersion: security.istio.io/v1\n"
    "kind: AuthorizationPolicy\n"
    "metadata: {name: deny-admin, namespace: app}\n"
    "spec:\n"
    "  targetRefs: [{kind: Service, group: \"\", name: svc}]\n"
    "  action: DENY\n"
    "  rules: [{to: [{operation: {paths: [\"/admin*\"]}}]}]\n"
    "---\n"
    "apiVersion: security.istio.io/v1\n"
    "kind: AuthorizationPolicy\n"
    "metadata: {name: audit-all, namespace: app}\n"
    "spec:\n"
    "  targetRefs: [{kind: Service, group: \"\", name: svc}]\n"
    "  action: AUDIT\n"
    "  rules: [{}]\n"
    "---\n"
    "apiVersion: security.istio.io/v1\n"
    "kind: AuthorizationPolicy\n"
    "metadata: {name: other-svc, namespace: app}\n"
    "spec:\n"
    "  targetRef: {kind: Service, group: \"\", name: other}\n"
    "  action: DENY\n"
    "  rules: [{}]\n";

static void test_deny_before_allow(void **state)
{
    (void)state;
    struct l7_config *c = load(two_policies);
    assert_int_equal(l7_config_n_policies(c), 4);
    struct req r = base;
    const char *m;
    /* GET /api: the gateway's ALLOW matches, the service's DENY does not. */
    assert_int_equal(decide(c, &r, &m, NULL), L7_ALLOW);
    assert_string_equal(m, "app/allow-get");
    /* GET /admin: allowed by ALLOW but DENY comes first. */
    r.path = "/admin/x";
    assert_int_equal(decide(c, &r, &m, NULL), L7_DENY);
    assert_string_equal(m, "app/deny-admin");
    /* POST /api: an ALLOW applies and none matches. */
    r = base;
    r.method = "POST";
    assert_int_equal(decide(c, &r, &m, NULL), L7_DENY);
    assert_null(m);
    /* AUDIT never decides, and is reported. */
    const char *first;
    struct ip_addr src;
    ip_parse("10.1.0.5", &src);
    struct l7_request q = {.method = "GET", .path = "/x", .path_len = 2, .authority = "svc"};
    struct l7_authz_input in = {.source_ip = &src, .req = &q};
    assert_int_equal(l7_audit_matches(c, "app", "waypoint", "app", "svc", &in, &first), 1);
    assert_string_equal(first, "app/audit-all");
    /* A policy on another service does not apply here; without the gateway the ALLOW set is empty. */
    r = base;
    r.method = "POST";
    struct ip_addr s2, d2;
    ip_parse(r.src, &s2);
    ip_parse(r.dst, &d2);
    struct l7_request q2 = {.method = "POST", .path = "/api", .path_len = 4, .authority = "svc"};
    struct l7_authz_input in2 = {.source_ip = &s2, .dest_ip = &d2, .req = &q2};
    assert_int_equal(l7_authorize(c, NULL, NULL, "app", "svc", &in2, &m, NULL), L7_ALLOW);
    assert_int_equal(l7_authorize(c, NULL, NULL, "app", "other", &in2, &m, NULL), L7_DENY);
    assert_string_equal(m, "app/other-svc");
    /* No policy at all: allow. */
    assert_int_equal(l7_authorize(c, "x", "y", "x", "z", &in2, &m, NULL), L7_ALLOW);
    assert_int_equal(l7_authorize(NULL, "x", "y", "x", "z", &in2, &m, NULL), L7_ALLOW);
    l7_config_unref(c);
}

static void test_dry_run(void **state)
{
    (void)state;
    static const char yaml[] = "apiVersion: security.istio.io/v1\n"
                               "kind: AuthorizationPolicy\n"
                               "metadata:\n"
                               "  name: dry-deny\n"
                               "  namespace: app\n"
                               "  annotations: {istio.io/dry-run: \"true\"}\n"
                               "spec:\n"
                               "  targetRefs: [{kind: Service, group: \"\", name: svc}]\n"
                               "  action: DENY\n"
                               "  rules: [{to: [{operation: {methods: [GET]}}]}]\n"
                               "---\n"
                               "apiVersion: security.istio.io/v1\n"
                               "kind: AuthorizationPolicy\n"
                               "metadata:\n"
                               "  name: dry-allow\n"
                               "  namespace: app\n"
                               "  annotations: {istio.io/dry-run: \"true\"}\n"
                               "spec:\n"
                               "  targetRefs: [{kind: Service, group: \"\", name: svc}]\n"
                               "  rules: [{to: [{operation: {paths: [/only]}}]}]\n";
    struct l7_config *c = load(yaml);
    struct req r = base;
    bool dry = false;
    const char *m;
    /* Neither policy is enforced. */
    assert_int_equal(decide(c, &r, &m, &dry), L7_ALLOW);
    assert_null(m);
    assert_true(dry); /* the dry-run DENY matches GET */
    r.method = "POST";
    r.path = "/only";
    assert_int_equal(decide(c, &r, &m, &dry), L7_ALLOW);
    assert_false(dry); /* DENY does not match, the dry-run ALLOW does */
    r.path = "/else";
    assert_int_equal(decide(c, &r, &m, &dry), L7_ALLOW);
    assert_true(dry); /* the dry-run ALLOW set would deny */
    l7_config_unref(c);
}

/* The model refuses what it cannot evaluate, naming the field (hand-written to bypass the conversion). */
static void test_policy_compile_errors(void **state)
{
    (void)state;
    static const struct {
        const char *rules, *want;
    } cases[] = {
        {"[{from: [{source: {ipBlocks: [10.0.0.0/33]}}]}]",
         "rules[0].from[0].ip_blocks[0]: not an IP address or CIDR block"},
        {"[{to: [{operation: {ports: [\"http\"]}}]}]", "rules[0].to[0].ports[0]: not a port 0-65535"},
        {"[{to: [{operation: {paths: [\"/a/{**}/b\"]}}]}]", "{**} must be the last segment"},
        {"[{to: [{operation: {paths: [\"/a{*}\"]}}]}]", "must be whole segments"},
        {"[{from: [{source: {serviceAccounts: [\"a/b/c\"]}}]}]", "rules[0].from[0].service_accounts[0]"},
        {"[{when: [{key: \"request.auth.claims[]\", values: [x]}]}]",
         "rules[0].when[0].key: expected request.auth.claims[name]"},
        {"[{when: [{key: \"request.auth.claims[a]b]\", values: [x]}]}]", "rules[0].when[0].key"},
        {"[{when: [{key: \"request.auth.claims[a][b][c][d][e][f][g][h][i]\", values: [x]}]}]",
         "1-8 non-empty names"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char yaml[2048];
        snprintf(yaml, sizeof(yaml),
                 "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, "
                 "namespace: app}\n"
                 "spec:\n  targetRefs: [{kind: Service, group: \"\", name: svc}]\n  rules: %s\n",
                 cases[i].rules);
        struct load l = {.b = l7_builder_new()};
        assert_int_equal(manifest_load_json("p.yaml", yaml, strlen(yaml), on_finding, &l, on_doc, &l), 0);
        assert_int_equal(l.errors, 1);
        if (!strstr(l.err, cases[i].want) || !strstr(l.err, "L7Authorization app/p: "))
            fail_msg("%s: got \"%s\", want \"%s\"", cases[i].rules, l.err, cases[i].want);
        struct l7_config *c = l7_builder_finish(l.b);
        assert_int_equal(l7_config_n_policies(c), 0);
        l7_config_unref(c);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_allow_fields),          cmocka_unit_test(test_deny_policies),
        cmocka_unit_test(test_tcp_streams),
        cmocka_unit_test(test_deny_before_allow),     cmocka_unit_test(test_dry_run),
        cmocka_unit_test(test_policy_compile_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
