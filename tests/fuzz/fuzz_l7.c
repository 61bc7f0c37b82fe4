/* libFuzzer target for the waypoint's L7 model (src/mesh/l7.c, src/mesh/l7authz.c). The first byte picks the
 * mode:
 *   0: the rest is a zmesh.v1.HTTPRoute encoding, added to a builder as "app/r";
 *   1: the rest is a zmesh.v1.L7Authorization encoding, added as "app/p";
 *   2: the rest is a request ("method\npath\nauthority\nname: value\n...") against a fixed config built once
 *      from YAML through zmeshd's conversion (routes with every match kind, filters, a catastrophic regex,
 * a VirtualService on Service vsvc with string-prefix, ignoreUriCase and withoutHeaders matches, both
 * rewrites and CORS, and policies with every field). Besides memory safety it checks the model's contract:
 *   - l7_builder_add returns 0 or -EINVAL / -ENOMEM; on -EINVAL the message names the resource
 *     ("HTTPRoute app/r: " or "VirtualService app/r: " / "L7Authorization app/p: ");
 *   - an accepted resource is in the finished config (route and policy counts);
 *   - a match returns a rule of the config; l7_pick_backend is -1 or an index below n_backends, and -1 only
 *     when the total weight is 0; a rewrite of a PathPrefix match succeeds or says -ENOSPC;
 *   - l7_authorize answers ALLOW or DENY, and a DENY that names a policy names one of the config's. */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mesh/l7authz.h"
#include "zmeshd/l7.h"
#include "zmeshd/vs.h"

static struct l7_config *fixed;

static const char fixed_yaml[] =
    "apiVersion: gateway.networking.k8s.io/v1\n"
    "kind: HTTPRoute\n"
    "metadata: {name: r, namespace: app}\n"
    "spec:\n"
    "  parentRefs: [{group: \"\", kind: Service, name: svc}]\n"
    "  rules:\n"
    "  - matches: [{path: {type: Exact, value: /exact}}, {path: {type: RegularExpression, value: "
    "\"/(a|aa)+[yz]\"}}]\n"
    "    backendRefs: [{name: a, port: 80, weight: 0}, {name: b, port: 80, weight: 3}]\n"
    "  - matches: [{path: {type: PathPrefix, value: /p}, headers: [{name: x-a, value: \"1\"}, {type: "
    "RegularExpression, name: x-b, value: \"[0-9]+\"}], queryParams: [{name: q, value: v}], method: GET}]\n"
    "    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: "
    "/x}}}]\n"
    "    backendRefs: [{name: a, port: 80}]\n"
    "  - matches: [{path: {type: PathPrefix, value: /r}}]\n"
    "    filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplacePrefixMatch, "
    "replacePrefixMatch: "
    "/}}}]\n"
    "  - backendRefs: [{name: zero, port: 80, weight: 0}]\n"
    "---\n"
    "apiVersion: security.istio.io/v1\n"
    "kind: AuthorizationPolicy\n"
    "metadata: {name: p, namespace: app}\n"
    "spec:\n"
    "  targetRefs: [{kind: Service, group: \"\", name: svc}]\n"
    "  action: DENY\n"
    "  rules:\n"
    "  - from: [{source: {principals: [\"*/sa/x\"], notNamespaces: [a], ipBlocks: [10.0.0.0/8]}}]\n"
    "    to: [{operation: {hosts: [\"*.local\"], paths: [\"/u/{*}/v/{**}\"], methods: [GET], notPorts: "
    "[\"1\"]}}]\n"
    "    when: [{key: \"request.headers[x-a]\", values: [\"1*\"]}, {key: connection.sni, notValues: "
    "[\"*\"]}]\n"
    "---\n"
    "apiVersion: security.istio.io/v1\n"
    "kind: AuthorizationPolicy\n"
    "metadata: {name: q, namespace: app}\n"
    "spec:\n"
    "  targetRefs: [{kind: Service, group: \"\", name: svc}]\n"
    "  rules: [{to: [{operation: {paths: [\"/exact\", \"/p*\"]}}]}]\n"
    "---\n"
    "apiVersion: networking.istio.io/v1\n"
    "kind: VirtualService\n"
    "metadata: {name: v, namespace: app}\n"
    "spec:\n"
    "  hosts: [vsvc]\n"
    "  http:\n"
    "  - match: [{uri: {prefix: /p}, ignoreUriCase: true, withoutHeaders: {x-a: {prefix: \"1\"}}}]\n"
    "    rewrite: {uri: /x}\n"
    "    route: [{destination: {host: a}}]\n"
    "    corsPolicy: {allowOrigins: [{regex: \"https?://(a|aa)+z\"}, {prefix: \"http://\"}]}\n"
    "  - match: [{uri: {regex: \"/r/.*\"}}]\n"
    "    rewrite: {uriRegexRewrite: {match: \"(a+)+\", rewrite: \"<\\\\1>\"}}\n"
    "    route: [{destination: {host: a}}]\n"
    "  - route: [{destination: {host: a}, weight: 1}, {destination: {host: b}, weight: 2}]\n";

static int on_doc(void *ud, json_t *doc, const struct manifest_src *src)
{
    struct l7_builder *b = ud;
    uint8_t *pb;
    size_t len;
    char name[L7_NAME_MAX], err[512];
    const char *kind = json_string_value(json_object_get(doc, "kind"));
    bool pol = kind && strcmp(kind, "AuthorizationPolicy") == 0;
    bool vs = kind && strcmp(kind, "VirtualService") == 0;
    int rc = pol  ? l7_convert_authz(doc, src, &pb, &len, name, sizeof(name), NULL, NULL)
             : vs ? vs_convert(doc, src, NULL, &pb, &len, name, sizeof(name), NULL, NULL)
                  : l7_convert_route(doc, src, &pb, &len, name, sizeof(name), NULL, NULL);
    if (rc < 0) abort();
    if (l7_builder_add(b, pol ? L7_TYPE_URL_AUTHORIZATION : L7_TYPE_URL_HTTP_ROUTE, name, pb, len, err,
                       sizeof(err)) < 0)
        abort();
    free(pb);
    return 0;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    struct l7_builder *b = l7_builder_new();
    if (!b || manifest_load_json("fixed.yaml", fixed_yaml, strlen(fixed_yaml), NULL, NULL, on_doc, b) < 0)
        abort();
    fixed = l7_builder_finish(b);
    if (!fixed || l7_config_n_routes(fixed) != 2 || l7_config_n_policies(fixed) != 2) abort();
    return 0;
}

static void check_rule(const struct l7_rule *rule, const struct l7_request *q, const char *prefix,
                       size_t plen)
{
    if (!rule) return;
    if (!rule->name || !*rule->name ||
        (strcmp(rule->route, "app/r") != 0 && strcmp(rule->route, "app/v") != 0))
        abort();
    for (uint64_t rnd = 0; rnd < 4; rnd++) {
        int i = l7_pick_backend(rule, rnd * 7919);
        if (i < -1 || (i >= 0 && (size_t)i >= rule->n_backends) || ((i == -1) != (rule->total_weight == 0)))
            abort();
    }
    char out[512];
    if (rule->rewrite && rule->rewrite->path_kind == L7_PATH_PREFIX) {
        if (!prefix) abort(); /* ReplacePrefixMatch only ever sits on PathPrefix matches */
        int n = l7_rewrite_path(L7_PATH_PREFIX, rule->rewrite->path, prefix, plen, q->path, q->path_len, out,
                                sizeof(out));
        if (n < 0 && n != -ENOSPC) abort();
        if (n >= 0 && (out[0] != '/' || (size_t)n != strlen(out))) abort();
    }
    if (rule->rewrite && rule->rewrite->path_kind == L7_PATH_RAW_PREFIX) {
        if (!prefix) abort(); /* a VirtualService match always says what it matched */
        int n = l7_rewrite_path(L7_PATH_RAW_PREFIX, rule->rewrite->path, prefix, plen, q->path, q->path_len,
                                out, sizeof(out));
        if (n < 0 && n != -ENOSPC) abort();
    }
    if (rule->rewrite && rule->rewrite->path_kind == L7_PATH_REGEX) {
        int n = l7_rewrite_path_regex(rule->rewrite->path_regex, rule->rewrite->path, q->path, q->path_len,
                                      out, sizeof(out));
        if (n < 0 && n != -ENOSPC && n != -EINVAL && n != -ENOMEM) abort();
        if (n >= 0 && (size_t)n != strlen(out)) abort();
    }
    if (rule->cors)
        for (size_t i = 0; i < q->n_headers; i++)
            (void)l7_cors_origin_allowed(rule->cors, q->headers[i].value, q->headers[i].value_len);
    if (rule->redirect) {
        int n = l7_redirect_location(rule->redirect, prefix, plen, q, "http", out, sizeof(out));
        if (n < 0 && n != -ENOSPC && n != -EINVAL) abort();
    }
}

#define MAX_HEADERS 16

static void request_mode(const uint8_t *data, size_t size)
{
    char *buf = malloc(size + 1);
    if (!buf) return;
    memcpy(buf, data, size);
    buf[size] = 0;
    char *lines[3 + MAX_HEADERS] = {0};
    size_t n = 0;
    char *s = buf;
    while (n < 3 + MAX_HEADERS) {
        lines[n++] = s;
        char *nl = memchr(s, '\n', size - (size_t)(s - buf));
        if (!nl) break;
        *nl = 0;
        s = nl + 1;
    }
    struct l7_header h[MAX_HEADERS];
    size_t nh = 0;
    for (size_t i = 3; i < n; i++) {
        char *colon = strchr(lines[i], ':');
        if (!colon) continue;
        h[nh++] = (struct l7_header){lines[i], (size_t)(colon - lines[i]), colon + 1, strlen(colon + 1)};
    }
    const char *path = n > 1 ? lines[1] : "/";
    struct l7_request q = {.method = lines[0],
                           .path = path,
                           .path_len = strlen(path),
                           .authority = n > 2 ? lines[2] : "",
                           .headers = h,
                           .n_headers = nh};
    const struct l7_service_routes *r = l7_routes_for(fixed, "app", "svc", 80);
    if (!r) abort();
    const char *prefix;
    size_t plen;
    const struct l7_rule *rule = l7_match_ex(r, &q, &prefix, &plen);
    check_rule(rule, &q, prefix, plen);
    r = l7_routes_for(fixed, "app", "vsvc", 80);
    if (!r) abort();
    rule = l7_match_ex(r, &q, &prefix, &plen);
    check_rule(rule, &q, prefix, plen);
    struct ip_addr src = {.family = AF_INET, .a = {10, 1, 2, 3}};
    struct l7_authz_input in = {
        .source_principal = nh ? h[0].value : NULL, .source_ip = &src, .dest_port = 80, .req = &q};
    const char *m;
    bool dry;
    enum l7_verdict v = l7_authorize(fixed, NULL, NULL, "app", "svc", &in, &m, &dry);
    if (v != L7_ALLOW && v != L7_DENY) abort();
    if (m && strcmp(m, "app/p") != 0 && strcmp(m, "app/q") != 0) abort();
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    uint8_t mode = data[0] % 3;
    data++;
    size--;
    if (mode == 2) {
        request_mode(data, size);
        return 0;
    }
    struct l7_builder *b = l7_builder_new();
    if (!b) return 0;
    char err[512];
    const char *type = mode == 0 ? L7_TYPE_URL_HTTP_ROUTE : L7_TYPE_URL_AUTHORIZATION;
    const char *name = mode == 0 ? "app/r" : "app/p";
    int rc = l7_builder_add(b, type, name, data, size, err, sizeof(err));
    if (rc != 0 && rc != -EINVAL && rc != -ENOMEM) abort();
    if (rc == -EINVAL && (mode == 0 ? strncmp(err, "HTTPRoute app/r: ", 17) != 0 &&
                                          strncmp(err, "VirtualService app/r: ", 22) != 0
                                    : strncmp(err, "L7Authorization app/p: ", 23) != 0))
        abort();
    struct l7_config *c = l7_builder_finish(b);
    if (!c) return 0;
    size_t want = rc == 0 ? 1 : 0;
    if ((mode == 0 ? l7_config_n_routes(c) : l7_config_n_policies(c)) != want) abort();
    /* Whatever was accepted must answer requests. */
    static const char *const paths[] = {"/", "/a/b?c=d", "/exact", "/u/1/v/2/3"};
    struct l7_header hd = {"x-a", 3, "1", 1};
    for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
        struct l7_request q = {.method = "GET",
                               .path = paths[i],
                               .path_len = strlen(paths[i]),
                               .authority = "svc.local",
                               .headers = &hd,
                               .n_headers = 1};
        for (uint16_t port = 0; port < 3; port++) {
            const struct l7_service_routes *r = l7_routes_for(c, "app", "svc", (uint16_t)(port * 40));
            const char *prefix;
            size_t plen;
            const struct l7_rule *rule = l7_match_ex(r, &q, &prefix, &plen);
            if (rule && strcmp(rule->route, "app/r") != 0) abort();
            if (rule)
                for (uint64_t rnd = 0; rnd < 3; rnd++) {
                    int k = l7_pick_backend(rule, rnd);
                    if (k < -1 || (k >= 0 && (size_t)k >= rule->n_backends)) abort();
                }
        }
        struct l7_authz_input in = {
            .source_principal = "cluster.local/ns/a/sa/x", .dest_port = 80, .req = &q};
        enum l7_verdict v = l7_authorize(c, "app", "gw", "app", "svc", &in, NULL, NULL);
        if (v != L7_ALLOW && v != L7_DENY) abort();
    }
    /* A VirtualService's tcp routes: a rule of this route that applies to the port, and a destination in
     * range. */
    for (uint16_t port = 0; port < 3; port++) {
        const struct l7_tcp_rule *t = l7_tcp_route_for(c, "app", "svc", (uint16_t)(port * 40));
        if (t && strcmp(t->route, "app/r") != 0) abort();
        int k = l7_tcp_pick_backend(t, 7);
        if (k < -1 || (t && k >= 0 && (size_t)k >= t->n_backends) ||
            (t && (k == -1) != (t->total_weight == 0)))
            abort();
    }
    l7_config_unref(c);
    return 0;
}
