/* Unit tests for the waypoint's DestinationRule endpoint choice (src/waypoint/proxy.c wp_lb_prepare,
 * wp_pick_endpoint_dec): a DestinationRule manifest converted by zmeshd (subsets resolved to pods) and an
 * Address snapshot with the same pods as workloads; subsets filter the endpoints, an unknown subset is
 * Envoy's missing cluster (-ESRCH, 503 NC), ROUND_ROBIN rotates, RANDOM spreads, consistent hashing on a
 * header / cookie / source IP / query parameter sticks, and a cookie with a TTL that the request lacks is
 * generated and set on the response. */
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

#include "core/prom.h"
#include "mesh/config.h"
#include "mesh/destination_rule.h"
#include "waypoint/route.h"
#include "waypoint/tries.h"
#include "waypoint/wp.h"
#include "zmeshd/l7.h"

#define WL(name, ip)                                                                                         \
    "- name: " name "\n  uid: Kubernetes//Pod/default/" name "\n  namespace: default\n  workloadIps: [\"" ip \
    "\"]\n"                                                                                                  \
    "  services: {\"default/svc.default.svc.cluster.local\": {80: 8080}}\n"

static const char snap_yaml[] = "workloads:\n" WL("a", "10.0.0.1") WL("b", "10.0.0.2")
    WL("c",
       "10.0.0.3") "services:\n- name: svc\n  namespace: default\n  hostname: svc.default.svc.cluster.local\n"
                   "  vips: [\"/10.96.0.1\"]\n  ports: {80: 8080}\n";

#define POD(n, v)                                                                                            \
    "apiVersion: v1\nkind: Pod\nmetadata: {name: " n ", namespace: default, labels: {app: svc, version: " v  \
    "}}\nspec: {containers: [{name: c, image: i}]}\n---\n"

/* What the codecs do for a request: wp_lb_prepare once, then a pick. */
static int prep_pick(struct wp_tunnel *t, struct wp_decision *d, const struct l7_request *req, bool http2,
                     struct lb_choice *c)
{
    int rc = wp_lb_prepare(t, d, req, http2);
    return rc ? rc : wp_pick_endpoint_dec(t, d, c);
}

struct fixture {
    struct snapshot *s;
    struct l7_config *l7;
    struct wp_view v;
    struct wp_worker w;
    struct wp_tunnel t;
};

/* The snapshot, and an l7 config of the DestinationRule spec (for Service default/svc) converted by zmeshd.
 */
static void setup(struct fixture *f, const char *spec)
{
    memset(f, 0, sizeof(*f));
    char err[512];
    if (config_load_buf(snap_yaml, strlen(snap_yaml), "t.yaml", &f->s, err, sizeof(err))) fail_msg("%s", err);
    char y[4096];
    snprintf(y, sizeof(y),
             POD("a", "v1") POD("b", "v1")
                 POD("c", "v2") "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: "
                                "dr, namespace: default}\n"
                                "spec: %s\n",
             spec);
    struct manifest_store *st;
    assert_int_equal(manifest_store_new(&st), 0);
    assert_int_equal(manifest_load_buf(st, "in.yaml", y, strlen(y), NULL, NULL), 0);
    size_t n = 0;
    const struct manifest_l7_doc *docs = manifest_l7_docs(st, &n);
    assert_int_equal(n, 1);
    struct l7_builder *b = l7_builder_new();
    int type;
    uint8_t *pb;
    size_t len;
    char name[L7_NAME_MAX];
    assert_int_equal(l7_convert_doc(&docs[0], &type, &pb, &len, name, sizeof(name), NULL, NULL), 0);
    assert_int_equal(l7_builder_add(b, l7_type_urls[type], name, pb, len, err, sizeof(err)), 0);
    free(pb);
    manifest_store_free(st);
    f->l7 = l7_builder_finish(b);
    static uint64_t version; /* unique per view, as the waypoint's (its hash tables are cached by version) */
    f->v = (struct wp_view){.snap = f->s, .l7 = f->l7, .version = ++version};
    f->w.rnd = 0x9e3779b97f4a7c15ULL;
    f->t = (struct wp_tunnel){.w = &f->w, .view = &f->v, .port = 80};
    f->t.svc = snapshot_service_by_host(f->s, "default/svc.default.svc.cluster.local");
    assert_non_null(f->t.svc);
    ip_parse("10.96.0.1", &f->t.dst_ip);
    struct sockaddr_in *p = (struct sockaddr_in *)&f->t.peer;
    p->sin_family = AF_INET;
    p->sin_port = htons(40000);
    p->sin_addr.s_addr = htonl(0x0a000063); /* 10.0.0.99 */
    struct sockaddr_in *l = (struct sockaddr_in *)&f->t.local;
    l->sin_family = AF_INET;
    l->sin_port = htons(15008);
    l->sin_addr.s_addr = htonl(0x0a000064);
}

static void teardown(struct fixture *f)
{
    l7_config_unref(f->l7);
    snapshot_unref(f->s);
}

/* Picks for a request with headers h[0..nh) and path; returns the workload's name ("" on error, *rc set). */
static const char *pick(struct fixture *f, const char *subset, const struct l7_header *h, size_t nh,
                        const char *path, struct wp_decision *d, int *rc)
{
    memset(d, 0, sizeof(*d));
    d->svc = f->t.svc;
    d->port = 80;
    d->subset = subset;
    struct l7_request req = {.method = "GET",
                             .path = path,
                             .path_len = strlen(path),
                             .authority = "svc",
                             .headers = h,
                             .n_headers = nh};
    struct lb_choice c;
    *rc = prep_pick(&f->t, d, &req, false, &c);
    if (*rc) return "";
    assert_int_equal(c.port, 8080);
    return c.wl->name;
}

static void test_subsets(void **state)
{
    (void)state;
    struct fixture f;
    setup(&f, "{host: svc, subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}, "
              "{name: none, labels: {version: v9}}]}");
    struct wp_decision d;
    int rc, seen[3] = {0};
    for (int i = 0; i < 200; i++) {
        const char *n = pick(&f, "v1", NULL, 0, "/", &d, &rc);
        assert_int_equal(rc, 0);
        assert_true(!strcmp(n, "a") || !strcmp(n, "b"));
        seen[n[0] - 'a']++;
        assert_string_equal(pick(&f, "v2", NULL, 0, "/", &d, &rc), "c");
        n = pick(&f, NULL, NULL, 0, "/", &d, &rc); /* the Service as a whole */
        seen[n[0] - 'a']++;
    }
    assert_true(seen[0] > 50 && seen[1] > 50 && seen[2] > 20);
    pick(&f, "v3", NULL, 0, "/", &d, &rc);
    assert_int_equal(rc, -ESRCH); /* no such subset: Envoy's missing cluster */
    pick(&f, "none", NULL, 0, "/", &d, &rc);
    assert_int_equal(rc, -ENOENT); /* a subset without endpoints: no healthy upstream */
    teardown(&f);
    /* no DestinationRule at all: a subset is a missing cluster too */
    setup(&f, "{host: other}");
    pick(&f, "v1", NULL, 0, "/", &d, &rc);
    assert_int_equal(rc, -ESRCH);
    assert_int_equal(pick(&f, NULL, NULL, 0, "/", &d, &rc)[0] != 0, 1);
    teardown(&f);
}

static void test_round_robin_random(void **state)
{
    (void)state;
    struct fixture f;
    setup(&f, "{host: svc, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}, "
              "subsets: [{name: r, labels: {app: svc}, trafficPolicy: {loadBalancer: {simple: RANDOM}}}]}");
    struct wp_decision d;
    int rc;
    char first[3];
    for (int i = 0; i < 3; i++)
        first[i] = pick(&f, NULL, NULL, 0, "/", &d, &rc)[0];
    assert_true(first[0] != first[1] && first[1] != first[2] && first[0] != first[2]);
    for (int i = 0; i < 30; i++) /* the same rotation, exactly */
        assert_int_equal(pick(&f, NULL, NULL, 0, "/", &d, &rc)[0], first[i % 3]);
    int seen[3] = {0};
    for (int i = 0; i < 300; i++)
        seen[pick(&f, "r", NULL, 0, "/", &d, &rc)[0] - 'a']++;
    for (int i = 0; i < 3; i++)
        assert_true(seen[i] > 60 && seen[i] < 140);
    teardown(&f);
}

static void test_hash_keys(void **state)
{
    (void)state;
    struct fixture f;
    struct wp_decision d;
    int rc;
    /* a header: each value always to one host, values over several hosts; no header: random */
    setup(&f, "{host: svc, trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user}}}}");
    int hosts_seen[3] = {0};
    for (int u = 0; u < 30; u++) {
        char val[32];
        snprintf(val, sizeof(val), "user-%d", u);
        struct l7_header h = {"x-user", 6, val, strlen(val)};
        const char *first = pick(&f, NULL, &h, 1, "/", &d, &rc);
        assert_int_equal(rc, 0);
        hosts_seen[first[0] - 'a'] = 1;
        for (int i = 0; i < 10; i++)
            assert_string_equal(pick(&f, NULL, &h, 1, "/", &d, &rc), first);
    }
    assert_int_equal(hosts_seen[0] + hosts_seen[1] + hosts_seen[2], 3);
    /* a retry's pick of the same request (attempt 1) moves the key, as Envoy's retries: for some keys to
     * another host */
    int moved = 0;
    for (int u = 0; u < 30; u++) {
        char val[32];
        snprintf(val, sizeof(val), "user-%d", u);
        struct l7_header h = {"x-user", 6, val, strlen(val)};
        struct l7_request req = {
            .method = "GET", .path = "/", .path_len = 1, .authority = "svc", .headers = &h, .n_headers = 1};
        memset(&d, 0, sizeof(d));
        d.svc = f.t.svc;
        d.port = 80;
        struct lb_choice c0, c1;
        assert_int_equal(prep_pick(&f.t, &d, &req, false, &c0), 0);
        assert_int_equal(wp_pick_endpoint_dec(&f.t, &d, &c1), 0);
        moved += c0.wl != c1.wl;
    }
    assert_true(moved > 0);
    int seen[3] = {0};
    for (int i = 0; i < 150; i++)
        seen[pick(&f, NULL, NULL, 0, "/", &d, &rc)[0] - 'a']++;
    assert_true(seen[0] && seen[1] && seen[2]);
    teardown(&f);

    /* a query parameter, on Maglev */
    setup(&f,
          "{host: svc, trafficPolicy: {loadBalancer: {consistentHash: {httpQueryParameterName: sid, maglev: "
          "{}}}}}");
    for (int u = 0; u < 10; u++) {
        char path[32];
        snprintf(path, sizeof(path), "/x?a=1&sid=%d&b", u);
        const char *first = pick(&f, NULL, NULL, 0, path, &d, &rc);
        for (int i = 0; i < 5; i++)
            assert_string_equal(pick(&f, NULL, NULL, 0, path, &d, &rc), first);
    }
    teardown(&f);

    /* the source IP: one host for one client */
    setup(&f, "{host: svc, trafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: true}}}}");
    const char *first = pick(&f, NULL, NULL, 0, "/", &d, &rc);
    for (int i = 0; i < 20; i++)
        assert_string_equal(pick(&f, NULL, NULL, 0, "/", &d, &rc), first);
    teardown(&f);
}

static void test_cookie(void **state)
{
    (void)state;
    struct fixture f;
    struct wp_decision d;
    int rc;
    setup(&f,
          "{host: svc, trafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {name: sticky, path: /, "
          "ttl: 3600s}}}}}");
    const char *host = pick(&f, NULL, NULL, 0, "/", &d, &rc);
    assert_int_equal(rc, 0);
    /* Envoy's Set-Cookie: name="<16 hex>"; Max-Age=3600; Path=/; HttpOnly */
    assert_int_equal(d.n_resp_mods, 1);
    assert_string_equal(d.resp_mods[0]->add[0].name, "set-cookie");
    char val[17] = {0};
    assert_int_equal(sscanf(d.lb_cookie, "sticky=\"%16[0-9a-f]\"; Max-Age=3600; Path=/; HttpOnly", val), 1);
    assert_int_equal(strlen(val), 16);
    assert_non_null(strstr(d.lb_cookie, "; Max-Age=3600; Path=/; HttpOnly"));
    /* the same downstream connection gets the same cookie, and the cookie sticks to the host */
    struct wp_decision d2;
    pick(&f, NULL, NULL, 0, "/", &d2, &rc);
    assert_string_equal(d.lb_cookie, d2.lb_cookie);
    char cookie[64];
    snprintf(cookie, sizeof(cookie), "other=1; sticky=\"%s\"", val);
    struct l7_header h = {"cookie", 6, cookie, strlen(cookie)};
    for (int i = 0; i < 20; i++) {
        assert_string_equal(pick(&f, NULL, &h, 1, "/", &d2, &rc), host);
        assert_int_equal(d2.n_resp_mods, 0); /* present: nothing set */
    }
    teardown(&f);
    /* without a ttl, no cookie is generated */
    setup(&f, "{host: svc, trafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {name: sticky}}}}}");
    pick(&f, NULL, NULL, 0, "/", &d, &rc);
    assert_int_equal(rc, 0);
    assert_int_equal(d.n_resp_mods, 0);
    assert_string_equal(d.lb_cookie, "");
    teardown(&f);
}

/* connectionPool: Envoy's overflow (-EUSERS, 503 UO) past http2MaxRequests in flight, and for HTTP/1.1 past
 * maxConnections + http1MaxPendingRequests; a finished request frees its slot. */
static int pend_ready_calls;
static struct wp_pending *pend_ready_last;
static void pend_ready(struct wp_pending *p)
{
    pend_ready_calls++;
    pend_ready_last = p;
    loop_stop(p->w->loop);
}

static void test_pool(void **state)
{
    (void)state;
    struct fixture f;
    struct wp_pending pend[2];
    setup(&f, "{host: svc, trafficPolicy: {connectionPool: {tcp: {maxConnections: 1}, http: "
              "{http1MaxPendingRequests: 1}}}, subsets: [{name: h2, labels: {app: svc}, trafficPolicy: "
              "{connectionPool: {http: {http2MaxRequests: 2}}}}]}");
    f.w.loop = loop_new();
    assert_non_null(f.w.loop);
    struct l7_request req = {.method = "GET", .path = "/", .path_len = 1, .authority = "svc"};
    struct wp_decision d[4];
    struct lb_choice c;
    for (int i = 0; i < 4; i++) {
        memset(&d[i], 0, sizeof(d[i]));
        d[i].svc = f.t.svc;
        d[i].port = 80;
    }
    assert_int_equal(prep_pick(&f.t, &d[0], &req, false, &c), 0); /* the one connection */
    /* beyond maxConnections an HTTP/1.1 request waits (Envoy's pending request), one of them at most */
    assert_int_equal(wp_lb_prepare(&f.t, &d[1], &req, false), -EINPROGRESS);
    assert_int_equal(wp_pending_wait(&f.t, &d[1], &pend[0], pend_ready), 0);
    assert_int_equal(wp_pending_n(), 1);
    assert_int_equal(wp_lb_prepare(&f.t, &d[2], &req, false), -EINPROGRESS);
    assert_int_equal(wp_pending_wait(&f.t, &d[2], &pend[1], pend_ready), -EUSERS); /* overflow */
    wp_request_done(&d[2], NULL, 0);
    assert_int_equal(prep_pick(&f.t, &d[3], &req, true, &c), 0); /* HTTP/2: maxConnections does not apply */
    wp_request_done(&d[3], NULL, 0);
    /* the connection frees: the waiter gets it, started from the loop */
    assert_int_equal(pend_ready_calls, 0);
    wp_request_done(&d[0], c.wl, 200);
    wp_request_done(&d[0], c.wl, 200); /* idempotent */
    assert_int_equal(wp_pending_n(), 0);
    loop_run(f.w.loop); /* until pend_ready stops it */
    assert_int_equal(pend_ready_calls, 1);
    assert_ptr_equal(pend_ready_last, &pend[0]);
    assert_int_equal(wp_pick_endpoint_dec(&f.t, &d[1], &c), 0);
    /* a waiter that goes away leaves the queue and frees its pending place */
    memset(&d[2], 0, sizeof(d[2]));
    d[2].svc = f.t.svc;
    d[2].port = 80;
    assert_int_equal(wp_lb_prepare(&f.t, &d[2], &req, false), -EINPROGRESS);
    assert_int_equal(wp_pending_wait(&f.t, &d[2], &pend[1], pend_ready), 0);
    wp_pending_cancel(&pend[1]);
    wp_pending_cancel(&pend[1]); /* idempotent */
    wp_request_done(&d[2], NULL, 0);
    assert_int_equal(wp_pending_n(), 0);
    memset(&d[3], 0, sizeof(d[3]));
    d[3].svc = f.t.svc;
    d[3].port = 80;
    assert_int_equal(wp_lb_prepare(&f.t, &d[3], &req, false), -EINPROGRESS);
    assert_int_equal(wp_pending_wait(&f.t, &d[3], &pend[1], pend_ready), 0); /* its place is free again */
    wp_pending_cancel(&pend[1]);
    wp_request_done(&d[3], NULL, 0);
    wp_request_done(&d[1], c.wl, 200);
    /* nothing in flight: a request goes at once */
    memset(&d[2], 0, sizeof(d[2]));
    d[2].svc = f.t.svc;
    d[2].port = 80;
    assert_int_equal(prep_pick(&f.t, &d[2], &req, false, &c), 0);
    wp_request_done(&d[2], NULL, 0);
    /* the subset: http2MaxRequests 2 for every protocol */
    for (int i = 0; i < 3; i++) {
        memset(&d[i], 0, sizeof(d[i]));
        d[i].svc = f.t.svc;
        d[i].port = 80;
        d[i].subset = "h2";
    }
    assert_int_equal(prep_pick(&f.t, &d[0], &req, true, &c), 0);
    assert_int_equal(prep_pick(&f.t, &d[1], &req, false, &c), 0);
    assert_int_equal(prep_pick(&f.t, &d[2], &req, true, &c), -EUSERS);
    wp_request_done(&d[0], NULL, 0);
    wp_request_done(&d[1], NULL, 0);
    loop_free(f.w.loop);
    teardown(&f);
}

/* The upstream connection limits a request's codec applies (tries.h): Istio's defaults without a rule
 * (connect timeout 10 s, idle 1 h, no request limit), the rule's values, a subset's pool replacing them. */
static void test_conn_limits(void **state)
{
    (void)state;
    struct wp_conn_limits l = wp_try_conn_limits(NULL);
    assert_int_equal(l.connect_timeout_ms, 10000);
    assert_int_equal(l.idle_ms, 3600ull * 1000);
    assert_int_equal(l.max_requests, 0);
    struct fixture f;
    setup(&f, "{host: svc, trafficPolicy: {connectionPool: {tcp: {connectTimeout: 250ms}, http: "
              "{maxRequestsPerConnection: 3, idleTimeout: 2s}}}, subsets: [{name: s, labels: {app: svc}, "
              "trafficPolicy: {connectionPool: {http: {maxRequestsPerConnection: 1}}}}]}");
    struct l7_request req = {.method = "GET", .path = "/", .path_len = 1, .authority = "svc"};
    struct wp_decision d;
    struct lb_choice c;
    memset(&d, 0, sizeof(d));
    d.svc = f.t.svc;
    d.port = 80;
    l = wp_try_conn_limits(&d); /* not prepared yet: the defaults */
    assert_int_equal(l.connect_timeout_ms, 10000);
    assert_int_equal(prep_pick(&f.t, &d, &req, false, &c), 0);
    l = wp_try_conn_limits(&d);
    assert_int_equal(l.connect_timeout_ms, 250);
    assert_int_equal(l.idle_ms, 2000);
    assert_int_equal(l.max_requests, 3);
    wp_request_done(&d, c.wl, 200);
    memset(&d, 0, sizeof(d));
    d.svc = f.t.svc;
    d.port = 80;
    d.subset = "s";
    assert_int_equal(prep_pick(&f.t, &d, &req, false, &c), 0);
    l = wp_try_conn_limits(&d); /* the subset's pool replaces the rule's: its unset fields are defaults */
    assert_int_equal(l.max_requests, 1);
    assert_int_equal(l.connect_timeout_ms, 10000);
    assert_int_equal(l.idle_ms, 3600ull * 1000);
    wp_request_done(&d, c.wl, 200);
    teardown(&f);
}

/* connectionPool.http.maxRetries 1: one retry in flight in the cluster; a second request's retry is refused
 * (flag UO, the overflow counter) until the first request's retry is over. */
static void test_max_retries(void **state)
{
    (void)state;
    struct fixture f;
    setup(&f, "{host: svc, trafficPolicy: {connectionPool: {http: {maxRetries: 1}}}}");
    struct l7_request req = {.method = "GET", .path = "/", .path_len = 1, .authority = "svc"};
    struct wp_decision d[2];
    struct wp_tries tr[2];
    struct lb_choice c;
    for (int i = 0; i < 2; i++) {
        memset(&d[i], 0, sizeof(d[i]));
        memset(&tr[i], 0, sizeof(tr[i]));
        d[i].svc = f.t.svc;
        d[i].port = 80;
        d[i].retry = &l7_default_retry;
        assert_int_equal(wp_lb_prepare(&f.t, &d[i], &req, false), 0);
        assert_int_equal(wp_try_pick(&f.t, &d[i], &tr[i], &c), 0);
    }
    const struct l7_try e503 = {.end = L7_TRY_RESPONSE, .status = 503, .grpc_status = -1};
    uint64_t over0 = wp_try_overflows();
    char fl[WP_FLAGS_MAX];
    assert_true(wp_try_again(&d[0], &tr[0], &e503)); /* the cluster's one retry */
    assert_false(wp_try_again(&d[1], &tr[1], &e503));
    assert_true(tr[1].overflow);
    assert_false(tr[1].exhausted);
    assert_int_equal(wp_try_overflows(), over0 + 1);
    assert_string_equal(wp_try_flags(&tr[1], NULL, fl), "UO");
    assert_string_equal(wp_try_flags(&tr[0], NULL, fl), "-");
    /* the first request's retry ends (its try answered 200: no further retry, the slot is free) */
    assert_int_equal(wp_try_pick(&f.t, &d[0], &tr[0], &c), 0);
    const struct l7_try ok = {.end = L7_TRY_RESPONSE, .status = 200, .grpc_status = -1};
    assert_false(wp_try_again(&d[0], &tr[0], &ok));
    assert_null(tr[0].retry_held);
    tr[1].overflow = false;
    assert_true(wp_try_again(&d[1], &tr[1], &e503)); /* room again */
    wp_tries_end(&tr[1]);
    wp_tries_end(&tr[1]); /* idempotent */
    /* without maxRetries nothing is held */
    struct fixture g;
    setup(&g, "{host: svc, trafficPolicy: {loadBalancer: {simple: RANDOM}}}");
    struct wp_decision dd;
    struct wp_tries tt;
    memset(&dd, 0, sizeof(dd));
    memset(&tt, 0, sizeof(tt));
    dd.svc = g.t.svc;
    dd.port = 80;
    dd.retry = &l7_default_retry;
    assert_int_equal(wp_lb_prepare(&g.t, &dd, &req, false), 0);
    assert_int_equal(wp_try_pick(&g.t, &dd, &tt, &c), 0);
    assert_true(wp_try_again(&dd, &tt, &e503));
    assert_null(tt.retry_held);
    for (int i = 0; i < 2; i++)
        wp_request_done(&d[i], NULL, 0);
    wp_request_done(&dd, NULL, 0);
    teardown(&g);
    teardown(&f);
}

/* An ejected host is back at the first interval tick after its ejection time (Envoy unejects on its interval
 * timer): with interval 1 s and baseEjectionTime 150 ms, the ejection lasts until the tick after the first
 * report, not 150 ms. */
static void test_outlier_tick(void **state)
{
    (void)state;
    struct fixture f;
    setup(&f, "{host: svc, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}, outlierDetection: "
              "{consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 150ms, maxEjectionPercent: 100}}, "
              "subsets: [{name: t, labels: {app: svc}}]}");
    struct l7_request req = {.method = "GET", .path = "/", .path_len = 1, .authority = "svc"};
    const char *ejected = NULL;
    for (int i = 0; i < 3 && !ejected; i++) {
        struct wp_decision d;
        memset(&d, 0, sizeof(d));
        d.svc = f.t.svc;
        d.port = 80;
        d.subset = "t"; /* a cluster of its own (the other tests' ejections are elsewhere) */
        struct lb_choice c;
        assert_int_equal(prep_pick(&f.t, &d, &req, false, &c), 0);
        ejected = c.wl->uid;
        wp_request_done(&d, c.wl, 503);
    }
    json_t *dump = wp_outlier_json();
    json_int_t left = -1;
    for (size_t i = 0; i < json_array_size(dump); i++) {
        json_t *e = json_array_get(dump, i);
        if (!strcmp(json_string_value(json_object_get(e, "endpoint")), ejected) &&
            strstr(json_string_value(json_object_get(e, "cluster")), "|t|"))
            left = json_integer_value(json_object_get(e, "ejectedForMs"));
    }
    json_decref(dump);
    assert_true(left > 500); /* the 1 s tick, not the 150 ms ejection time */
    assert_true(left <= 1000);
    teardown(&f);
}

/* Picks with a decision and reports status for the endpoint chosen; returns the endpoint's name. */
static const char *od_pick(struct fixture *f, const char *subset, int status)
{
    struct wp_decision d;
    memset(&d, 0, sizeof(d));
    d.svc = f->t.svc;
    d.port = 80;
    d.subset = subset;
    struct l7_request req = {.method = "GET", .path = "/", .path_len = 1, .authority = "svc"};
    struct lb_choice c;
    if (prep_pick(&f->t, &d, &req, false, &c)) return "";
    wp_request_done(&d, c.wl, status);
    return c.wl->name;
}

/* outlierDetection: consecutive 5xx eject a host, which is then not picked until its ejection time is over;
 * maxEjectionPercent bounds how many are out; gateway errors count apart; a success resets the count. */
static void test_outlier(void **state)
{
    (void)state;
    struct fixture f;
    setup(&f,
          "{host: svc, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}, outlierDetection: "
          "{consecutive5xxErrors: 3, interval: 100ms, baseEjectionTime: 150ms, maxEjectionPercent: 50}}, "
          "subsets: [{name: gw, labels: {app: svc}, trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}, "
          "outlierDetection: {consecutive5xxErrors: 0, consecutiveGatewayErrors: 2, baseEjectionTime: 60s, "
          "maxEjectionPercent: 100}}}]}");
    uint64_t ej0 = wp_outlier_ejections_total();
    /* a answers 500 every time, b and c 200 (round robin visits each in turn) */
    for (int i = 0; i < 9; i++) {
        const char *n = od_pick(&f, NULL, 0);
        (void)n;
    }
    int seen_a = 0;
    for (int i = 0; i < 12; i++) {
        struct wp_decision d;
        memset(&d, 0, sizeof(d));
        d.svc = f.t.svc;
        d.port = 80;
        struct l7_request req = {.method = "GET", .path = "/", .path_len = 1, .authority = "svc"};
        struct lb_choice c;
        assert_int_equal(prep_pick(&f.t, &d, &req, false, &c), 0);
        bool is_a = !strcmp(c.wl->name, "a");
        seen_a += is_a;
        wp_request_done(&d, c.wl, is_a ? 500 : 200);
    }
    assert_int_equal(seen_a, 3); /* the third 500 ejects it: 3 of the 12, then never */
    assert_int_equal(wp_outlier_ejections_total(), ej0 + 1);
    char buf[256];
    assert_int_equal(wp_outlier_ejected(buf, sizeof(buf)), 1);
    assert_string_equal(buf, "Kubernetes//Pod/default/a");
    for (int i = 0; i < 10; i++) {
        const char *n = od_pick(&f, NULL, 200);
        assert_true(!strcmp(n, "b") || !strcmp(n, "c"));
    }
    /* in Envoy's stats and the admin dump */
    struct prom_buf b;
    prom_buf_init(&b);
    wp_outlier_metrics(&b, false);
    size_t len;
    char *txt = prom_buf_take(&b, &len);
    assert_non_null(
        strstr(txt, "envoy_cluster_outlier_detection_ejections_enforced_total{cluster_name=\"outbound|80||"
                    "svc.default.svc.cluster.local\"} 1\n"));
    assert_non_null(strstr(txt,
                           "envoy_cluster_outlier_detection_ejections_active{cluster_name=\"outbound|80||"
                           "svc.default.svc.cluster.local\"} 1\n"));
    free(txt);
    json_t *dump = wp_outlier_json();
    assert_int_equal(json_array_size(dump), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(dump, 0), "endpoint")),
                        "Kubernetes//Pod/default/a");
    assert_true(json_integer_value(json_object_get(json_array_get(dump, 0), "ejectedForMs")) > 0);
    json_decref(dump);
    /* b fails too, but 2 of 3 out would pass 50 %: b stays */
    for (int i = 0; i < 10; i++) {
        struct wp_decision d;
        memset(&d, 0, sizeof(d));
        d.svc = f.t.svc;
        d.port = 80;
        struct l7_request req = {.method = "GET", .path = "/", .path_len = 1, .authority = "svc"};
        struct lb_choice c;
        assert_int_equal(prep_pick(&f.t, &d, &req, false, &c), 0);
        wp_request_done(&d, c.wl, !strcmp(c.wl->name, "b") ? 503 : 200);
    }
    assert_int_equal(wp_outlier_ejections_total(), ej0 + 1);
    /* after at least the base ejection time, at the interval tick after it (100 ms ticks), a is picked again
     */
    struct timespec ts = {0, 300 * 1000 * 1000};
    nanosleep(&ts, NULL);
    int back = 0;
    for (int i = 0; i < 9; i++)
        back += !strcmp(od_pick(&f, NULL, 200), "a");
    assert_true(back > 0);
    /* the subset: gateway errors count (two 502 in a row eject), a 500 in between resets the count */
    int gw_a = 0;
    for (int i = 0; i < 30; i++) {
        struct wp_decision d;
        memset(&d, 0, sizeof(d));
        d.svc = f.t.svc;
        d.port = 80;
        d.subset = "gw";
        struct l7_request req = {.method = "GET", .path = "/", .path_len = 1, .authority = "svc"};
        struct lb_choice c;
        assert_int_equal(prep_pick(&f.t, &d, &req, false, &c), 0);
        int st = 200;
        if (!strcmp(c.wl->name, "c")) st = 502;
        if (!strcmp(c.wl->name, "a")) st = (gw_a++ % 2) ? 500 : 502; /* never two gateway errors in a row */
        wp_request_done(&d, c.wl, st);
    }
    for (int i = 0; i < 12; i++) {
        const char *n = od_pick(&f, "gw", 200);
        assert_true(!strcmp(n, "a") || !strcmp(n, "b"));
    }
    assert_true(gw_a >= 10); /* a was never ejected: a 500 resets the gateway count */
    teardown(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_subsets),      cmocka_unit_test(test_round_robin_random),
        cmocka_unit_test(test_hash_keys),    cmocka_unit_test(test_cookie),
        cmocka_unit_test(test_pool),         cmocka_unit_test(test_outlier),
        cmocka_unit_test(test_conn_limits),  cmocka_unit_test(test_max_retries),
        cmocka_unit_test(test_outlier_tick),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
