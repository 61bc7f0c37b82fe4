/* Unit tests for the waypoint's pure parts (src/waypoint/): protocol detection from a client's first bytes,
 * Gateway API header modifiers, the least-request (power of two choices) endpoint choice, and RequestMirror's
 * shadow host. */
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
#include "waypoint/mirror.h"
#include "waypoint/route.h"
#include "waypoint/wp.h"

static void test_sniff(void **state)
{
    (void)state;
    static const struct {
        const char *bytes;
        enum wp_sniff want;
    } cases[] = {
        {"GET / HTTP/1.1\r\n", WP_SNIFF_HTTP1},
        {"POST", WP_SNIFF_MORE},      /* a method so far, no space yet */
        {"M-SEARCH * HTTP/1.1", WP_SNIFF_HTTP1},
        {"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", WP_SNIFF_H2C},
        {"PRI * HTTP/2.0\r\n", WP_SNIFF_MORE}, /* the preface so far */
        {"PRI /x HTTP/1.1", WP_SNIFF_HTTP1},   /* a method that starts like the preface */
        {"\x16\x03\x01\x02\x00", WP_SNIFF_TCP}, /* a TLS ClientHello */
        {" GET", WP_SNIFF_TCP},
        {"get / HTTP/1.1", WP_SNIFF_TCP}, /* methods are upper-case on the wire */
        {"ABCDEFGHIJKLMNOPQRSTUVWX", WP_SNIFF_TCP}, /* no space within a method's length */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        if (wp_sniff_classify(cases[i].bytes, strlen(cases[i].bytes)) != cases[i].want)
            fail_msg("case %zu: %s", i, cases[i].bytes);
}

static bool name_is(const char *a, size_t alen, const char *lower)
{
    return strlen(lower) == alen && !strncasecmp(a, lower, alen);
}

static const char *value_of(const struct http1_hdr *hv, size_t n, const char *name, int nth)
{
    for (size_t i = 0; i < n; i++)
        if (name_is(hv[i].name, hv[i].name_len, name) && nth-- == 0) return hv[i].value;
    return NULL;
}

static size_t count_of(const struct http1_hdr *hv, size_t n, const char *name)
{
    size_t c = 0;
    for (size_t i = 0; i < n; i++)
        c += name_is(hv[i].name, hv[i].name_len, name);
    return c;
}

/* RequestHeaderModifier: set replaces every field of the name (or adds it), add appends, remove drops; modifiers
 * apply in order. */
static void test_header_mods(void **state)
{
    (void)state;
    struct http1_hdr hv[16] = {{"X-A", 3, "1", 1}, {"x-a", 3, "2", 1}, {"x-gone", 6, "g", 1}, {"x-keep", 6, "k", 1}};
    size_t n = 4;
    static const struct l7_kv set[] = {{"x-a", "new"}, {"x-set", "s"}}, add[] = {{"x-keep", "k2"}};
    static const char *const rm[] = {"x-gone"};
    struct l7_header_mod m1 = {.set = set, .n_set = 2, .add = add, .n_add = 1, .remove = rm, .n_remove = 1};
    static const struct l7_kv set2[] = {{"x-set", "s2"}};
    struct l7_header_mod m2 = {.set = set2, .n_set = 1};
    const struct l7_header_mod *mods[] = {&m1, &m2};
    wp_apply_mods(mods, 2, hv, &n, 16, name_is);
    assert_int_equal(count_of(hv, n, "x-a"), 1);
    assert_string_equal(value_of(hv, n, "x-a", 0), "new");
    assert_int_equal(count_of(hv, n, "x-gone"), 0);
    assert_int_equal(count_of(hv, n, "x-keep"), 2);
    assert_string_equal(value_of(hv, n, "x-set", 0), "s2"); /* the second modifier's set wins */
    assert_int_equal(n, 4);
    /* no room: adds stop at the capacity, nothing is overwritten */
    struct http1_hdr full[2] = {{"a", 1, "1", 1}, {"b", 1, "2", 1}};
    size_t nf = 2;
    const struct l7_header_mod *only[] = {&m1};
    wp_apply_mods(only, 1, full, &nf, 2, name_is);
    assert_int_equal(nf, 2);
    assert_string_equal(value_of(full, nf, "a", 0), "1");
}

#define WL(name, ip) "- name: " name "\n  namespace: default\n  workloadIps: [\"" ip "\"]\n" \
                     "  services: {\"default/svc.default.svc.cluster.local\": {80: 8080}}\n"

/* Of two endpoints drawn at random, the one with fewer requests in flight: with many in flight on one, it is
 * chosen only when both draws fall on it (about a quarter of the time); with none in flight, both are chosen. */
static void test_least_request(void **state)
{
    (void)state;
    static const char yaml[] = "workloads:\n" WL("a", "10.0.0.1") WL("b", "10.0.0.2")
        "services:\n- name: svc\n  namespace: default\n  hostname: svc.default.svc.cluster.local\n"
        "  vips: [\"/10.96.0.1\"]\n  ports: {80: 8080}\n";
    struct snapshot *s = NULL;
    char err[256];
    if (config_load_buf(yaml, strlen(yaml), "t.yaml", &s, err, sizeof(err))) fail_msg("%s", err);
    struct wp_view v = {.snap = s};
    static struct wp_worker w = {.rnd = 0x1234567};
    struct wp_tunnel t = {.w = &w, .view = &v, .svc = snapshot_service_by_host(s, "default/svc.default.svc.cluster.local"),
                          .port = 80};
    assert_non_null(t.svc);
    ip_parse("10.96.0.1", &t.dst_ip);
    const struct workload *a = snapshot_workload_by_name(s, "default", "a");
    int picks_a = 0;
    for (int i = 0; i < 400; i++) {
        struct lb_choice c;
        assert_int_equal(wp_pick_endpoint(&t, t.svc, 80, &c), 0);
        assert_int_equal(c.port, 8080);
        picks_a += c.wl == a;
    }
    assert_true(picks_a > 120 && picks_a < 280); /* both, about half each */
    for (int i = 0; i < 50; i++)
        wp_endpoint_begin(a);
    picks_a = 0;
    for (int i = 0; i < 400; i++) {
        struct lb_choice c;
        assert_int_equal(wp_pick_endpoint(&t, t.svc, 80, &c), 0);
        picks_a += c.wl == a;
    }
    assert_true(picks_a > 40 && picks_a < 160); /* about 100: only when both draws are a */
    for (int i = 0; i < 50; i++)
        wp_endpoint_end(a);
    snapshot_unref(s);
}

/* Envoy's shadowAppendedHost: "-shadow" before the port, never inside an IPv6 literal. */
static void test_shadow_host(void **state)
{
    (void)state;
    static const struct {
        const char *in, *want;
    } cases[] = {
        {"a", "a-shadow"},
        {"a:80", "a-shadow:80"},
        {"f.example:80", "f.example-shadow:80"},
        {"10.0.0.1:8080", "10.0.0.1-shadow:8080"},
        {"10.0.0.1", "10.0.0.1-shadow"},
        {"[::1]:80", "[::1]-shadow:80"},
        {"[::1]", "[::1]-shadow"}, /* the colons are inside the brackets: no port */
        {"[fe80::1%eth0]", "[fe80::1%eth0]-shadow"},
        {"svc.ns.svc.cluster.local:9090", "svc.ns.svc.cluster.local-shadow:9090"},
        {"a:", "a-shadow:"}, /* getPortStart's rule: the last ':' starts the port */
    };
    char out[WP_SHADOW_HOST_MAX];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ssize_t n = wp_shadow_host(cases[i].in, strlen(cases[i].in), out, sizeof(out));
        assert_int_equal(n, (ssize_t)strlen(cases[i].want));
        assert_string_equal(out, cases[i].want);
    }
    /* the length given, not the NUL, bounds the host */
    assert_int_equal(wp_shadow_host("a:80xyz", 4, out, sizeof(out)), 11);
    assert_string_equal(out, "a-shadow:80");
    /* exactly fits: "ab" + "-shadow" + NUL is 10 bytes; one less refuses and leaves "" */
    assert_int_equal(wp_shadow_host("ab", 2, out, 10), 9);
    assert_string_equal(out, "ab-shadow");
    assert_int_equal(wp_shadow_host("ab", 2, out, 9), -ENOSPC);
    assert_string_equal(out, "");
    assert_int_equal(wp_shadow_host("", 0, out, sizeof(out)), -EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sniff),
        cmocka_unit_test(test_header_mods),
        cmocka_unit_test(test_least_request),
        cmocka_unit_test(test_shadow_host),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
