/* Unit tests for `zmesh ztunnel-config` rendering (src/cli/zc.c) from the canned dump
 * tests/unit/zc_dump.json: istioctl's columns, sorting, waypoint names, endpoint counts, certificate rows,
 * filters, -o json, and Go tabwriter's padding. The expected tables were checked against istioctl's rules
 * (istio/istio istioctl/pkg/writer/ztunnel/configdump/). Also `zmesh proxy-status` (src/cli/ps.c) from the
 * syncz document tests/unit/ps_syncz.json, captured from zmeshd with two grpcio clients (one NACKing) and a
 * third proxy added by hand that watches one type, not yet sent (checked against
 * istioctl/pkg/writer/pilot/status.go). Run from the repository root. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cli/http_get.h"
#include "cli/ps.h"
#include "cli/waypoint.h"
#include "cli/zc.h"

#define DUMP_PATH "tests/unit/zc_dump.json"
/* 2027-01-15T08:00:00Z: inside the validity of the canned chain's leaf (2027-01-15 .. 2027-01-16). */
#define NOW 1800000000

struct dump {
    char *raw;
    size_t len;
    json_t *json;
};

static int setup(void **state)
{
    struct dump *d = calloc(1, sizeof(*d));
    FILE *fp = fopen(DUMP_PATH, "rb");
    if (!d || !fp) {
        fprintf(stderr, "%s: cannot open (run the unit tests from the repository root)\n", DUMP_PATH);
        free(d);
        if (fp) fclose(fp);
        return -1;
    }
    fseek(fp, 0, SEEK_END);
    d->len = (size_t)ftell(fp);
    rewind(fp);
    d->raw = malloc(d->len + 1);
    if (fread(d->raw, 1, d->len, fp) != d->len) return -1;
    d->raw[d->len] = '\0';
    fclose(fp);
    char err[256];
    if (zc_parse(d->raw, d->len, &d->json, err, sizeof(err))) {
        fprintf(stderr, "%s: %s\n", DUMP_PATH, err);
        return -1;
    }
    *state = d;
    return 0;
}

static int teardown(void **state)
{
    struct dump *d = *state;
    json_decref(d->json);
    free(d->raw);
    free(d);
    return 0;
}

/* Renders one view into a malloc'd string (the caller frees it). */
static char *render(const struct dump *d, enum zc_kind kind, enum zc_format fmt, const struct zc_filter *f)
{
    char *buf = NULL;
    size_t n = 0;
    FILE *out = open_memstream(&buf, &n);
    assert_non_null(out);
    assert_int_equal(zc_render(out, d->json, d->raw, d->len, kind, fmt, f, NOW), 0);
    fclose(out);
    return buf;
}

static const char workloads_table[] = "NAMESPACE POD NAME ADDRESS          NODE  WAYPOINT PROTOCOL\n"
                                      "a         db-0     db.example.com   node0 NA       HBONE\n"
                                      "a         db-0     10.0.0.1,fd00::1 node1 wp       TCP\n"
                                      "b         web-1    10.0.0.3         node2 wp       HBONE\n"
                                      "b         w\xc3\xa9"
                                      "b      10.0.0.4               None     HBONE\n";

/* Sorted by namespace.name then node; ADDRESS is the IPs joined by "," or else the hostname; WAYPOINT is the
 * service whose ns/hostname or VIP is the destination, "NA" when none is, "None" without a waypoint; "wéb"
 * is padded by characters, not bytes. */
static void test_workloads(void **state)
{
    char *s = render(*state, ZC_WORKLOADS, ZC_SHORT, NULL);
    assert_string_equal(s, workloads_table);
    free(s);
}

static void test_workload_filters(void **state)
{
    struct zc_filter f = {.workload_namespace = "A"}; /* case-insensitive, as strings.EqualFold */
    char *s = render(*state, ZC_WORKLOADS, ZC_SHORT, &f);
    assert_string_equal(s, "NAMESPACE POD NAME ADDRESS          NODE  WAYPOINT PROTOCOL\n"
                           "a         db-0     db.example.com   node0 NA       HBONE\n"
                           "a         db-0     10.0.0.1,fd00::1 node1 wp       TCP\n");
    free(s);
    f = (struct zc_filter){.workload_node = "node2"};
    s = render(*state, ZC_WORKLOADS, ZC_SHORT, &f);
    assert_string_equal(s, "NAMESPACE POD NAME ADDRESS  NODE  WAYPOINT PROTOCOL\n"
                           "b         web-1    10.0.0.3 node2 wp       HBONE\n");
    free(s);
    f = (struct zc_filter){.workload_namespace = "nowhere"};
    s = render(*state, ZC_WORKLOADS, ZC_SHORT, &f);
    assert_string_equal(s, "NAMESPACE POD NAME ADDRESS NODE WAYPOINT PROTOCOL\n");
    free(s);
}

static const char services_table[] = "NAMESPACE SERVICE NAME SERVICE VIP           WAYPOINT ENDPOINTS\n"
                                     "a         db                                 None     0/0\n"
                                     "a         db           10.96.0.10,10.96.1.10 wp       1/3\n"
                                     "b         wp           10.96.0.99            None     0/0\n";

/* Sorted by namespace, name, hostname; VIPs without their network; ENDPOINTS healthy/total where healthy
 * means the workload with the endpoint's uid is in the dump and Healthy (db-0 is Unhealthy, "gone" absent).
 */
static void test_services(void **state)
{
    char *s = render(*state, ZC_SERVICES, ZC_SHORT, NULL);
    assert_string_equal(s, services_table);
    free(s);
    struct zc_filter f = {.service_namespace = "b"};
    s = render(*state, ZC_SERVICES, ZC_SHORT, &f);
    assert_string_equal(s, "NAMESPACE SERVICE NAME SERVICE VIP WAYPOINT ENDPOINTS\n"
                           "b         wp           10.96.0.99  None     0/0\n");
    free(s);
}

static const char policies_table[] = "NAMESPACE POLICY NAME ACTION SCOPE\n"
                                     "a         allow-ns    Allow  Global\n"
                                     "a         deny-all    Deny   Namespace\n"
                                     "b         z-allow     Allow  WorkloadSelector\n";

static void test_policies(void **state)
{
    char *s = render(*state, ZC_POLICIES, ZC_SHORT, NULL);
    assert_string_equal(s, policies_table);
    free(s);
    struct zc_filter f = {.policy_namespace = "b"};
    s = render(*state, ZC_POLICIES, ZC_SHORT, &f);
    assert_string_equal(s, "NAMESPACE POLICY NAME ACTION SCOPE\n"
                           "b         z-allow     Allow  WorkloadSelector\n");
    free(s);
}

static const char certificates_table[] =
    "CERTIFICATE NAME                       TYPE             STATUS          VALID CERT     SERIAL NUMBER    "
    "     NOT AFTER                NOT BEFORE\n"
    "spiffe://cluster.local/ns/a/sa/db      Leaf             Available       true           ff               "
    "     2027-01-16T00:00:00Z     2027-01-15T00:00:00Z\n"
    "spiffe://cluster.local/ns/a/sa/db      Intermediate     Available       true           1000             "
    "     2028-01-01T00:00:00Z     2027-01-01T00:00:00Z\n"
    "spiffe://cluster.local/ns/a/sa/db      Root             Available       true           1                "
    "     2036-01-01T00:00:00Z     2026-01-01T00:00:00Z\n"
    "spiffe://cluster.local/ns/b/sa/web     NA               Unavailable     false          NA               "
    "     NA                       NA\n"
    "spiffe://cluster.local/ns/b/sa/old     Leaf             Available       false          10000000000000000"
    "     2020-01-02T00:00:00Z     2020-01-01T00:00:00Z\n"
    "spiffe://cluster.local/ns/b/sa/old     Root             Available       true           0                "
    "     2030-01-01T00:00:00Z     2020-01-01T00:00:00Z\n";

/* In the dump's order, padding 5: Leaf, Intermediate, then rootCerts as Root; a chain without rootCerts
 * (older ztunnels) ends with its Root; "Unavailable: <error>" shows as Unavailable with NA cells; serials
 * in lowercase hex (2^64 needs more than 64 bits); VALID CERT is now strictly inside the validity. */
static void test_certificates(void **state)
{
    char *s = render(*state, ZC_CERTIFICATES, ZC_SHORT, NULL);
    assert_string_equal(s, certificates_table);
    free(s);
}

/* istioctl's PrintFullSummary: a blank line before each table, optional headers, and the connections table
 * (its header only, as zmesh's dump has no workloadState). */
static void test_all(void **state)
{
    char *s = render(*state, ZC_ALL, ZC_SHORT, NULL);
    char *want = NULL;
    assert_true(asprintf(&want, "\n%s\n%s\n%s\n%s\nWORKLOAD DIRECTION LOCAL REMOTE REMOTE TARGET PROTOCOL\n",
                         workloads_table, services_table, policies_table, certificates_table) > 0);
    assert_string_equal(s, want);
    free(s);
    free(want);
    struct zc_filter f = {.with_headers = true};
    s = render(*state, ZC_ALL, ZC_SHORT, &f);
    assert_true(!strncmp(s, "\n------ WORKLOAD INFO ------\n\nNAMESPACE POD NAME", 48));
    assert_non_null(strstr(s, "\n\n------ SERVICE INFO ------\n\nNAMESPACE SERVICE NAME"));
    assert_non_null(strstr(s, "\n\n------ POLICY INFO ------\n\n"));
    assert_non_null(strstr(s, "\n\n------ SECRET INFO ------\n\nCERTIFICATE NAME"));
    assert_non_null(strstr(s, "\n\n------ CONNECTIONS INFO ------\n\nWORKLOAD DIRECTION"));
    free(s);
}

/* -o json: the dump's own objects; services and policies sorted as the tables, workloads and certificates in
 * the dump's order, filters applied; `all` is the dump byte for byte plus a newline. */
static void test_json(void **state)
{
    struct dump *d = *state;
    char *s = render(d, ZC_SERVICES, ZC_JSON, NULL);
    json_error_t je;
    json_t *v = json_loads(s, 0, &je);
    assert_non_null(v);
    assert_int_equal(json_array_size(v), 3);
    assert_string_equal(json_string_value(json_object_get(json_array_get(v, 0), "hostname")),
                        "alt.a.svc.cluster.local");
    assert_string_equal(json_string_value(json_object_get(json_array_get(v, 2), "name")), "wp");
    assert_non_null(strstr(s, "[\n    {\n        \"name\": \"db\",\n")); /* four spaces, keys in order */
    json_decref(v);
    free(s);

    struct zc_filter f = {.workload_namespace = "b"};
    s = render(d, ZC_WORKLOADS, ZC_JSON, &f);
    v = json_loads(s, 0, &je);
    assert_non_null(v);
    assert_int_equal(json_array_size(v), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(v, 0), "name")), "web-1");
    assert_string_equal(json_string_value(json_object_get(json_array_get(v, 1), "name")), "w\xc3\xa9"
                                                                                          "b");
    json_decref(v);
    free(s);

    s = render(d, ZC_POLICIES, ZC_JSON, NULL);
    v = json_loads(s, 0, &je);
    assert_string_equal(json_string_value(json_object_get(json_array_get(v, 0), "name")), "allow-ns");
    json_decref(v);
    free(s);

    s = render(d, ZC_CERTIFICATES, ZC_JSON, NULL);
    v = json_loads(s, 0, &je);
    assert_int_equal(json_array_size(v), 3);
    assert_string_equal(json_string_value(json_object_get(json_array_get(v, 1), "state")),
                        "Unavailable: CA unreachable");
    json_decref(v);
    free(s);

    s = render(d, ZC_ALL, ZC_JSON, NULL);
    assert_int_equal(strlen(s), d->len + 1);
    assert_memory_equal(s, d->raw, d->len);
    assert_int_equal(s[d->len], '\n');
    free(s);
}

/* istioctl accepts each section as a map of values too (unmarshalListOrMap); absent sections are empty. */
static void test_map_sections_and_bad_input(void **state)
{
    static const char doc[] = "{\"policies\": {\"a/p\": {\"name\": \"p\", \"namespace\": \"a\", \"action\": "
                              "\"Deny\", \"scope\": \"Global\"}}}";
    json_t *j = NULL;
    char err[256], *buf = NULL;
    size_t n = 0;
    assert_int_equal(zc_parse(doc, strlen(doc), &j, err, sizeof(err)), 0);
    FILE *out = open_memstream(&buf, &n);
    assert_int_equal(zc_render(out, j, doc, strlen(doc), ZC_POLICIES, ZC_SHORT, NULL, NOW), 0);
    assert_int_equal(zc_render(out, j, doc, strlen(doc), ZC_WORKLOADS, ZC_SHORT, NULL, NOW), 0);
    fclose(out);
    assert_string_equal(buf, "NAMESPACE POLICY NAME ACTION SCOPE\n"
                             "a         p           Deny   Global\n"
                             "NAMESPACE POD NAME ADDRESS NODE WAYPOINT PROTOCOL\n");
    free(buf);
    json_decref(j);

    assert_int_equal(zc_parse("[1]", 3, &j, err, sizeof(err)), -EINVAL);
    assert_string_equal(err, "not a JSON object");
    assert_int_equal(zc_parse("{\"workloads\": [", 15, &j, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "line 1"));
    assert_null(j);
}

/* A certificate minted this second is valid (istioctl's clock has sub-second precision, the dump does not);
 * one that expires this second is not (the second, without rootCerts, is the legacy chain's Root). */
static void test_valid_at_the_edges(void **state)
{
    static const char doc[] =
        "{\"certificates\": [{\"identity\": \"i\", \"state\": \"Available\", \"certChain\": ["
        "{\"serialNumber\": \"1\", \"validFrom\": \"2027-01-15T08:00:00Z\", \"expirationTime\": "
        "\"2027-01-15T09:00:00Z\"},"
        "{\"serialNumber\": \"2\", \"validFrom\": \"2027-01-15T07:00:00Z\", \"expirationTime\": "
        "\"2027-01-15T08:00:00Z\"}], \"rootCerts\": []}]}";
    json_t *j = NULL;
    char err[256], *buf = NULL;
    size_t n = 0;
    assert_int_equal(zc_parse(doc, strlen(doc), &j, err, sizeof(err)), 0);
    FILE *out = open_memstream(&buf, &n);
    assert_int_equal(zc_render(out, j, doc, strlen(doc), ZC_CERTIFICATES, ZC_SHORT, NULL, NOW), 0);
    fclose(out);
    assert_non_null(strstr(buf, "\ni                    Leaf     Available     true           1   "));
    assert_non_null(strstr(buf, "\ni                    Root     Available     false          2   "));
    free(buf);
    json_decref(j);
}

static void test_serial_hex(void **state)
{
    char b[64];
    assert_int_equal(zc_serial_hex("255", b, sizeof(b)), 0);
    assert_string_equal(b, "ff");
    assert_int_equal(zc_serial_hex("0", b, sizeof(b)), 0);
    assert_string_equal(b, "0");
    assert_int_equal(zc_serial_hex("16", b, sizeof(b)), 0); /* BN_bn2hex says "10"; no leading zero octet */
    assert_string_equal(b, "10");
    assert_int_equal(zc_serial_hex("15", b, sizeof(b)), 0); /* "0F" from BN_bn2hex */
    assert_string_equal(b, "f");
    /* A 20-octet X.509 serial (2^159 + 1). */
    assert_int_equal(zc_serial_hex("730750818665451459101842416358141509827966271489", b, sizeof(b)), 0);
    assert_string_equal(b, "8000000000000000000000000000000000000001");
    assert_int_equal(zc_serial_hex("-26", b, sizeof(b)), 0);
    assert_string_equal(b, "-1a");
    /* What Go's big.Int SetString refuses prints as a nil *big.Int does. */
    assert_int_equal(zc_serial_hex("", b, sizeof(b)), 0);
    assert_string_equal(b, "<nil>");
    assert_int_equal(zc_serial_hex("12ab", b, sizeof(b)), 0);
    assert_string_equal(b, "<nil>");
    assert_int_equal(zc_serial_hex("4096", b, 3), -ENOSPC);
}

static void test_rfc3339(void **state)
{
    time_t t;
    assert_int_equal(zc_parse_rfc3339("2027-01-15T08:00:00Z", &t), 0);
    assert_int_equal(t, NOW);
    assert_int_equal(zc_parse_rfc3339("2027-01-15T09:30:00.123456+01:30", &t), 0);
    assert_int_equal(t, NOW);
    assert_int_equal(zc_parse_rfc3339("2027-01-15T03:00:00-05:00", &t), 0);
    assert_int_equal(t, NOW);
    assert_int_equal(zc_parse_rfc3339("2027-01-15 08:00:00Z", &t), -EINVAL);
    assert_int_equal(zc_parse_rfc3339("2027-01-15T08:00:00", &t), -EINVAL);
    assert_int_equal(zc_parse_rfc3339("2027-01-15T08:00:00Zjunk", &t), -EINVAL);
    assert_int_equal(zc_parse_rfc3339("", &t), -EINVAL);
}

/* Go text/tabwriter: every cell but a row's last is padded to the column's widest plus the padding; an
 * all-empty column still takes the padding. */
static void test_table(void **state)
{
    struct zc_table *t = zc_table_new(3, 2);
    const char *r1[] = {"a", "", "last"}, *r2[] = {"\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac", "", "x"};
    assert_int_equal(zc_table_row(t, r1), 0);
    assert_int_equal(zc_table_row(t, r2), 0);
    char *buf = NULL;
    size_t n = 0;
    FILE *out = open_memstream(&buf, &n);
    assert_int_equal(zc_table_flush(t, out), 0);
    fclose(out);
    assert_string_equal(buf, "a    "
                             "  "
                             "last\n"
                             "\xe2\x82\xac\xe2\x82\xac\xe2\x82\xac  "
                             "  "
                             "x\n");
    free(buf);
}

/* ---- the GET client against a one-shot server on the loopback ---- */

struct canned {
    int lfd;
    const char *reply; /* NULL: read the request and send nothing until the client gives up */
    char request[1024];
};

static void *serve_once(void *arg)
{
    struct canned *c = arg;
    int fd = accept(c->lfd, NULL, NULL);
    if (fd < 0) return NULL;
    ssize_t n = recv(fd, c->request, sizeof(c->request) - 1, 0);
    c->request[n > 0 ? n : 0] = '\0';
    if (c->reply) {
        ssize_t w = send(fd, c->reply, strlen(c->reply), MSG_NOSIGNAL);
        (void)w;
    } else {
        char b[16];
        while (recv(fd, b, sizeof(b), 0) > 0) /* until the client closes */
            ;
    }
    close(fd);
    return NULL;
}

/* Runs one GET against a server answering reply; returns http_get's result. */
static int get_from(const char *reply, int timeout_ms, size_t max_body, struct http_get_resp *r,
                    struct canned *c)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof(sa);
    char port[8], err[256];
    pthread_t th;
    memset(c, 0, sizeof(*c));
    c->reply = reply;
    c->lfd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(c->lfd >= 0);
    assert_int_equal(bind(c->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(c->lfd, 1), 0);
    assert_int_equal(getsockname(c->lfd, (struct sockaddr *)&sa, &sl), 0);
    snprintf(port, sizeof(port), "%u", ntohs(sa.sin_port));
    assert_int_equal(pthread_create(&th, NULL, serve_once, c), 0);
    int rc = http_get("127.0.0.1", port, "/config_dump", timeout_ms, max_body, r, err, sizeof(err));
    pthread_join(th, NULL);
    close(c->lfd);
    return rc;
}

static void test_http_get(void **state)
{
    struct http_get_resp r;
    struct canned c;
    /* A chunked body is reassembled; the request is a plain HTTP/1.1 GET that asks to close. */
    assert_int_equal(get_from("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                              "5\r\n{\"a\":\r\n2\r\n1}\r\n0\r\n\r\n",
                              2000, 1024, &r, &c),
                     0);
    assert_int_equal(r.status, 200);
    assert_int_equal(r.len, 7);
    assert_string_equal(r.body, "{\"a\":1}");
    static const char want_head[] = "GET /config_dump HTTP/1.1\r\nHost: 127.0.0.1:";
    assert_memory_equal(c.request, want_head, sizeof(want_head) - 1);
    assert_non_null(strstr(c.request, "\r\nConnection: close\r\n\r\n"));
    free(r.body);
    /* A body delimited by the close, and a status that is not 200, are returned as they are. */
    assert_int_equal(get_from("HTTP/1.1 503 Service Unavailable\r\n\r\nnot ready", 2000, 1024, &r, &c), 0);
    assert_int_equal(r.status, 503);
    assert_string_equal(r.body, "not ready");
    free(r.body);
    /* Bounds: a body over max_body, a truncated body, not HTTP, and a server that never answers. */
    assert_int_equal(get_from("HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n0123456789a", 2000, 10, &r, &c),
                     -EFBIG);
    assert_null(r.body);
    assert_int_equal(get_from("HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\nshort", 2000, 1024, &r, &c),
                     -EPROTO);
    assert_true(r.connected);
    assert_int_equal(get_from("SSH-2.0-OpenSSH\r\n", 2000, 1024, &r, &c), -EPROTO);
    assert_int_equal(get_from("", 2000, 1024, &r, &c), -ECONNRESET); /* accepted, then closed */
    assert_int_equal(get_from(NULL, 200, 1024, &r, &c), -ETIMEDOUT);
}

/* A port nobody listens on: -ECONNREFUSED with the reason in words. */
static void test_http_refused(void **state)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
    char port[8], err[256];
    snprintf(port, sizeof(port), "%u", ntohs(sa.sin_port));
    struct http_get_resp r;
    assert_int_equal(http_get("127.0.0.1", port, "/config_dump", 1000, 1024, &r, err, sizeof(err)),
                     -ECONNREFUSED);
    assert_string_equal(err, "connection refused");
    close(fd); /* bound but not listening until here, so no one else took the port */
    assert_int_equal(http_get("no-such-host.invalid", "15000", "/", 1000, 1024, &r, err, sizeof(err)),
                     -ENOENT);
    assert_non_null(strstr(err, "cannot resolve no-such-host.invalid"));
}

/* ---- zmesh proxy-status ---- */

#define SYNCZ_PATH "tests/unit/ps_syncz.json"
/* 2027-01-15T08:00:00Z, as NOW; the capture's last_updated were set relative to it. */
#define PS_NOW_MS (1800000000LL * 1000)

static json_t *load_syncz(void)
{
    FILE *fp = fopen(SYNCZ_PATH, "rb");
    assert_non_null(fp);
    char buf[65536];
    size_t n = fread(buf, 1, sizeof(buf), fp);
    fclose(fp);
    json_t *j = NULL;
    char err[256];
    assert_int_equal(ps_parse(buf, n, &j, err, sizeof(err)), 0);
    return j;
}

static char *ps_render_str(const json_t *j, enum ps_format fmt, int want_rc)
{
    char *buf = NULL;
    size_t n = 0;
    FILE *out = open_memstream(&buf, &n);
    assert_non_null(out);
    assert_int_equal(ps_render(out, j, fmt, PS_NOW_MS), want_rc);
    fclose(out);
    return buf;
}

/* istioctl's columns for ztunnels: WADS before WDS (by type URL), a type not watched IGNORED, NOT_SENT as
 * "NOT SENT", rows by name whatever zmeshd's order; the NACK's message under the table. */
static void test_ps_table(void **state)
{
    (void)state;
    json_t *j = load_syncz();
    char *s = ps_render_str(j, PS_SHORT, 0);
    assert_string_equal(s,
                        "NAME                     CLUSTER      WADS      WDS        ISTIOD          VERSION\n"
                        "waypoint-x.demo          Kubernetes   IGNORED   NOT SENT   zmeshd-test-0   \n"
                        "ztunnel-a.istio-system   Kubernetes   SYNCED    SYNCED     zmeshd-test-0   1.24.0\n"
                        "ztunnel-b.istio-system   Kubernetes   ERROR     SYNCED     zmeshd-test-0   1.24.0\n"
                        "\n"
                        "NACKs:\n"
                        "  ztunnel-b.istio-system WADS (nonce 2374f7e0-4, code 3): policy demo/allow-demo: "
                        "unsupported field\n");
    free(s);
    /* A table of ztunnels fits 80 columns (the NACK lines are not the table's). */
    assert_int_equal(json_array_remove(j, 2), 0);
    s = ps_render_str(j, PS_SHORT, 0);
    for (char *l = s, *nl; (nl = strchr(l, '\n')); l = nl + 1)
        if (strncmp(l, "  ", 2)) assert_true(nl - l <= 80);
    free(s);
    json_decref(j);
}

static void test_ps_wide_and_json(void **state)
{
    (void)state;
    json_t *j = load_syncz();
    char *s = ps_render_str(j, PS_WIDE, 0);
    /* Ages as HumanDuration from whole seconds: 4.75 s -> 5s, 5 min -> 5m, under 3 h in minutes. */
    assert_string_equal(
        s, "NAME                     CLUSTER      WADS           WDS             ISTIOD          "
           "VERSION   NODE\n"
           "waypoint-x.demo          Kubernetes   IGNORED        NOT SENT        zmeshd-test-0             \n"
           "ztunnel-a.istio-system   Kubernetes   SYNCED (5m)    SYNCED (5s)     zmeshd-test-0   "
           "1.24.0    node1\n"
           "ztunnel-b.istio-system   Kubernetes   ERROR (151m)   SYNCED (120m)   zmeshd-test-0   "
           "1.24.0    node2\n"
           "\n"
           "NACKs:\n"
           "  ztunnel-b.istio-system WADS (nonce 2374f7e0-4, code 3): policy demo/allow-demo: "
           "unsupported field\n");
    free(s);
    s = ps_render_str(j, PS_JSON, 0);
    json_error_t je;
    json_t *back = json_loads(s, 0, &je);
    assert_non_null(back);
    assert_true(json_equal(back, j));
    json_decref(back);
    free(s);
    json_decref(j);
    /* No proxy: -ENOENT and nothing written. */
    json_t *empty = json_array();
    s = ps_render_str(empty, PS_SHORT, -ENOENT);
    assert_string_equal(s, "");
    free(s);
    json_decref(empty);
}

/* istioctl's --namespace: the proxies whose node metadata NAMESPACE matches, in zmeshd's order. */
static void test_ps_namespace(void **state)
{
    (void)state;
    json_t *j = load_syncz(), *f = ps_filter_namespace(j, "istio-system");
    assert_int_equal(json_array_size(f), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(f, 0), "proxy")),
                        "ztunnel-b.istio-system");
    json_decref(f);
    f = ps_filter_namespace(j, "demo");
    assert_int_equal(json_array_size(f), 1);
    char *s = ps_render_str(f, PS_SHORT, 0);
    assert_string_equal(s, "NAME              CLUSTER      WDS        ISTIOD          VERSION\n"
                           "waypoint-x.demo   Kubernetes   NOT SENT   zmeshd-test-0   \n");
    free(s);
    json_decref(f);
    f = ps_filter_namespace(j, "nowhere");
    s = ps_render_str(f, PS_SHORT, -ENOENT);
    free(s);
    json_decref(f);
    json_decref(j);
}

static void test_ps_bad_input(void **state)
{
    (void)state;
    json_t *j = NULL;
    char err[256];
    assert_int_equal(ps_parse("{}", 2, &j, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "not a JSON array"));
    assert_int_equal(ps_parse("[1]", 3, &j, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "entry 0"));
    assert_int_equal(ps_parse("[{\"proxy\": 1}]", 14, &j, err, sizeof(err)), -EINVAL);
    assert_int_equal(ps_parse("[", 1, &j, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "line 1"));
    assert_null(j);
}

static void test_ps_human_duration(void **state)
{
    (void)state;
    static const struct {
        int64_t ms;
        const char *want;
    } cases[] = {
        {-2000, "<invalid>"},
        {-500, "0s"},
        {0, "0s"},
        {119999, "119s"},
        {120000, "2m"},
        {200000, "3m20s"},
        {600000, "10m"},
        {10799000, "179m"},
        {10800000, "3h"},
        {9000000 * 2, "5h"},
        {27000000, "7h30m"},
        {28800000, "8h"},
        {47 * 3600000LL, "47h"},
        {48 * 3600000LL, "2d"},
        {(3 * 24 + 4) * 3600000LL, "3d4h"},
        {30 * 86400000LL, "30d"},
        {729 * 86400000LL, "729d"},
        {740 * 86400000LL, "2y10d"},
        {9 * 365 * 86400000LL, "9y"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char buf[32];
        ps_human_duration(cases[i].ms, buf, sizeof(buf));
        if (strcmp(buf, cases[i].want))
            fail_msg("%lld ms: %s, want %s", (long long)cases[i].ms, buf, cases[i].want);
    }
}

/* ---- waypoints (src/cli/waypoint.c) ---- */

/* istioctl waypoint generate: sigs.k8s.io/yaml's keys sorted, the label only with --for, the namespace only
 * with -n (istioctl/pkg/waypoint/waypoint.go). */
static void test_wp_generate(void **state)
{
    (void)state;
    json_t *gw = wp_gateway_make(NULL, "waypoint", NULL);
    char *y = wp_yaml(gw);
    assert_string_equal(y, "apiVersion: gateway.networking.k8s.io/v1\n"
                           "kind: Gateway\n"
                           "metadata:\n"
                           "  name: waypoint\n"
                           "spec:\n"
                           "  gatewayClassName: istio-waypoint\n"
                           "  listeners:\n"
                           "  - name: mesh\n"
                           "    port: 15008\n"
                           "    protocol: HBONE\n");
    free(y);
    json_decref(gw);
    gw = wp_gateway_make("shop", "wp", "all");
    y = wp_yaml(gw);
    assert_string_equal(y, "apiVersion: gateway.networking.k8s.io/v1\n"
                           "kind: Gateway\n"
                           "metadata:\n"
                           "  labels:\n"
                           "    istio.io/waypoint-for: all\n"
                           "  name: wp\n"
                           "  namespace: shop\n"
                           "spec:\n"
                           "  gatewayClassName: istio-waypoint\n"
                           "  listeners:\n"
                           "  - name: mesh\n"
                           "    port: 15008\n"
                           "    protocol: HBONE\n");
    free(y);
    assert_true(wp_is_waypoint(gw));
    json_decref(gw);
    /* A string YAML would read as a number or a boolean is quoted, as yaml.v2 does. */
    json_t *o = json_pack("{s:s,s:s,s:i}", "a", "15008", "b", "true", "c", 7);
    y = wp_yaml(o);
    assert_string_equal(y, "a: \"15008\"\nb: \"true\"\nc: 7\n");
    free(y);
    json_decref(o);
}

static json_t *gw_with(const char *ns, const char *name, const char *cls, const char *prog,
                       const char *for_type, const char *rev)
{
    json_t *gw = wp_gateway_make(ns, name, for_type);
    json_object_set_new(json_object_get(gw, "spec"), "gatewayClassName", json_string(cls));
    if (rev) {
        json_t *md = json_object_get(gw, "metadata");
        if (!json_object_get(md, "labels")) json_object_set_new(md, "labels", json_object());
        json_object_set_new(json_object_get(md, "labels"), WP_LABEL_REV, json_string(rev));
    }
    if (prog)
        json_object_set_new(gw, "status",
                            json_pack("{s:[{s:s,s:s}]}", "conditions", "type", "Programmed", "status", prog));
    return gw;
}

static char *render_wp(int (*fn)(FILE *, const json_t *, bool), const json_t *gws, bool flag)
{
    char *buf = NULL;
    size_t n = 0;
    FILE *out = open_memstream(&buf, &n);
    assert_non_null(out);
    assert_int_equal(fn(out, gws, flag), 0);
    fclose(out);
    return buf;
}

/* istioctl's list (its testdata "combined-gateway", with the TRAFFIC TYPE column istioctl has since added):
 * sorted by namespace then name, other classes left out, REVISION "default" without istio.io/rev, TRAFFIC
 * TYPE "none" without the label, PROGRAMMED from the condition ("False" without one); tabwriter padding 5. */
static void test_wp_list(void **state)
{
    (void)state;
    json_t *gws = json_array();
    json_array_append_new(gws, gw_with("default", "bookinfo", WP_CLASS, "False", NULL, NULL));
    json_array_append_new(gws, gw_with("fake", "bookinfo-invalid", "other", "True", NULL, NULL));
    json_array_append_new(gws, gw_with("bookinfo", "bookinfo-valid", WP_CLASS, "True", "service", NULL));
    json_array_append_new(gws, gw_with("default", "waypoint", WP_CLASS, NULL, NULL, NULL));
    json_array_append_new(gws, gw_with("bookinfo", "bookinfo-rev", WP_CLASS, "True", NULL, "rev1"));
    char *s = render_wp(wp_list_render, gws, true);
    assert_string_equal(s, "NAMESPACE     NAME               REVISION     TRAFFIC TYPE     PROGRAMMED\n"
                           "bookinfo      bookinfo-rev       rev1         none             True\n"
                           "bookinfo      bookinfo-valid     default      service          True\n"
                           "default       bookinfo           default      none             False\n"
                           "default       waypoint           default      none             False\n");
    free(s);
    s = render_wp(wp_list_render, gws, false);
    assert_string_equal(s, "NAME               REVISION     TRAFFIC TYPE     PROGRAMMED\n"
                           "bookinfo-rev       rev1         none             True\n"
                           "bookinfo-valid     default      service          True\n"
                           "bookinfo           default      none             False\n"
                           "waypoint           default      none             False\n");
    free(s);
    json_decref(gws);
    gws = json_array();
    s = render_wp(wp_list_render, gws, false);
    assert_string_equal(s, "No waypoints found.\n");
    free(s);
    /* As istioctl: Gateways of other classes only give the header (its emptiness check comes first). */
    json_array_append_new(gws, gw_with("default", "ingress", "istio", "True", NULL, NULL));
    s = render_wp(wp_list_render, gws, false);
    assert_string_equal(s, "NAME     REVISION     TRAFFIC TYPE     PROGRAMMED\n");
    free(s);
    json_decref(gws);
}

/* istioctl's testdata "waypoint-status-notready" byte for byte (an empty REASON padded, the last cell not),
 * then one row per condition with the NAMESPACE column. */
static void test_wp_status_table(void **state)
{
    (void)state;
    json_t *gws = json_array();
    json_array_append_new(gws, gw_with("default", "waypoint", WP_CLASS, "False", NULL, NULL));
    char *s = render_wp(wp_status_render, gws, false);
    assert_string_equal(s, "NAME         STATUS     TYPE           REASON     MESSAGE\n"
                           "waypoint     False      Programmed                \n");
    free(s);
    json_t *gw = json_array_get(gws, 0);
    json_object_set_new(gw, "status", wp_gateway_status(gw, false, "2026-01-01T00:00:00Z"));
    s = render_wp(wp_status_render, gws, true);
    assert_string_equal(
        s, "NAMESPACE     NAME         STATUS     TYPE           REASON                 MESSAGE\n"
           "default       waypoint     True       Accepted       Accepted               Resource "
           "accepted\n"
           "default       waypoint     False      Programmed     AddressNotAssigned     Failed to "
           "assign to any requested addresses: no instances found for hostname "
           "\"waypoint.default.svc.cluster.local\"\n");
    free(s);
    json_decref(gws);
}

static const char *env_of(const json_t *pod, const char *name)
{
    size_t i;
    json_t *e;
    json_array_foreach(
        json_object_get(json_array_get(json_object_get(json_object_get(pod, "spec"), "containers"), 0),
                        "env"),
        i, e) if (!strcmp(json_string_value(json_object_get(e, "name")),
                          name)) return json_string_value(json_object_get(e, "value"));
    return NULL;
}

static const char *lbl(const json_t *o, const char *k)
{
    return json_string_value(json_object_get(json_object_get(json_object_get(o, "metadata"), "labels"), k));
}

/* The objects istiod's template makes, named after the Gateway (or its annotations), labelled as managed. */
static void test_wp_managed_objects(void **state)
{
    (void)state;
    json_t *gw = wp_gateway_make("shop", "wp", NULL);
    json_object_set_new(json_object_get(gw, "metadata"), "uid", json_string("gw-uid"));
    json_t *sa = wp_service_account(gw), *svc = wp_service(gw);
    assert_string_equal(json_string_value(json_object_get(sa, "kind")), "ServiceAccount");
    assert_string_equal(json_string_value(json_object_get(json_object_get(sa, "metadata"), "name")), "wp");
    assert_string_equal(lbl(sa, WP_LABEL_MANAGED), "istio.io-mesh-controller");
    assert_string_equal(lbl(svc, WP_LABEL_GATEWAY_NAME), "wp");
    json_t *owner = json_array_get(json_object_get(json_object_get(svc, "metadata"), "ownerReferences"), 0);
    assert_string_equal(json_string_value(json_object_get(owner, "uid")), "gw-uid");
    json_t *want_ports =
        json_loads("[{\"name\":\"status-port\",\"port\":15021,\"protocol\":\"TCP\",\"appProtocol\":"
                   "\"tcp\"},{\"name\":\"mesh\",\"port\":15008,\"protocol\":\"TCP\",\"appProtocol\":"
                   "\"hbone\"}]",
                   0, NULL);
    json_t *spec = json_object_get(svc, "spec");
    assert_true(json_equal(json_object_get(spec, "ports"), want_ports));
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(spec, "selector"), WP_LABEL_GATEWAY_NAME)), "wp");
    assert_null(json_object_get(spec, "clusterIP")); /* allocated by the API server, as for any Service */
    json_decref(want_ports);
    struct wp_pod_params pp = {.pod_name = "wp-bcdfghjklm-npqrs",
                               .pod_uid = "pod-uid",
                               .node = "node2",
                               .bin_dir = "/b",
                               .xds = "https://172.30.0.1:15012",
                               .root_ca = "/s/zmeshd/root-cert.pem",
                               .token = "/s/pods/shop_wp-bcdfghjklm-npqrs/istio-token",
                               .workdir = "/s"};
    json_t *pod = wp_pod(gw, &pp);
    assert_string_equal(lbl(pod, "istio.io/dataplane-mode"), "none");
    assert_string_equal(lbl(pod, "sidecar.istio.io/inject"), "false");
    assert_string_equal(lbl(pod, "service.istio.io/canonical-name"), "wp");
    assert_string_equal(lbl(pod, WP_LABEL_GATEWAY_NAME), "wp");
    assert_string_equal(lbl(pod, WP_LABEL_MANAGED), WP_MANAGED_VALUE);
    assert_true(wp_managed_by(pod, "shop", "wp"));
    assert_false(wp_managed_by(pod, "other", "wp"));
    assert_false(wp_managed_by(pod, "shop", "wp2"));
    json_t *ps = json_object_get(pod, "spec"), *c = json_array_get(json_object_get(ps, "containers"), 0);
    assert_string_equal(json_string_value(json_object_get(ps, "serviceAccountName")), "wp");
    assert_string_equal(json_string_value(json_object_get(ps, "nodeName")), "node2");
    assert_string_equal(json_string_value(json_array_get(json_object_get(c, "command"), 0)), "/b/waypoint");
    json_t *probe = json_object_get(json_object_get(c, "readinessProbe"), "httpGet");
    assert_string_equal(json_string_value(json_object_get(probe, "path")), "/healthz/ready");
    assert_int_equal(json_integer_value(json_object_get(probe, "port")), 15021);
    static const char *const env[][2] = {
        {"XDS_ADDRESS", "https://172.30.0.1:15012"},
        {"CA_ADDRESS", "https://172.30.0.1:15012"},
        {"XDS_ROOT_CA", "/s/zmeshd/root-cert.pem"},
        {"CA_ROOT_CA", "/s/zmeshd/root-cert.pem"},
        {"ALT_XDS_HOSTNAME", "istiod.istio-system.svc"},
        {"ALT_CA_HOSTNAME", "istiod.istio-system.svc"},
        {"AUTH_TOKEN", "/s/pods/shop_wp-bcdfghjklm-npqrs/istio-token"},
        {"POD_NAME", "wp-bcdfghjklm-npqrs"},
        {"POD_NAMESPACE", "shop"},
        {"SERVICE_ACCOUNT", "wp"},
        {"NODE_NAME", "node2"},
        {"TRUST_DOMAIN", "cluster.local"},
        {"CLUSTER_ID", "Kubernetes"},
        {"GATEWAY_NAME", "wp"},
    };
    for (size_t i = 0; i < sizeof(env) / sizeof(env[0]); i++) {
        assert_non_null(env_of(pod, env[i][0]));
        assert_string_equal(env_of(pod, env[i][0]), env[i][1]);
    }
    json_decref(pod);
    json_decref(sa);
    json_decref(svc);
    /* The annotations rename the deployment (Service, pod prefix, canonical name) and the service account. */
    json_object_set_new(
        json_object_get(gw, "metadata"), "annotations",
        json_pack("{s:s,s:s}", WP_ANN_NAME_OVERRIDE, "wp-x", WP_ANN_SERVICE_ACCOUNT, "wp-sa"));
    char d[64], a[64];
    wp_names(gw, d, sizeof(d), a, sizeof(a));
    assert_string_equal(d, "wp-x");
    assert_string_equal(a, "wp-sa");
    sa = wp_service_account(gw);
    svc = wp_service(gw);
    pod = wp_pod(gw, &pp);
    assert_string_equal(json_string_value(json_object_get(json_object_get(sa, "metadata"), "name")), "wp-sa");
    assert_string_equal(json_string_value(json_object_get(json_object_get(svc, "metadata"), "name")), "wp-x");
    assert_string_equal(lbl(svc, WP_LABEL_GATEWAY_NAME), "wp"); /* the Gateway's name, not the override */
    assert_string_equal(env_of(pod, "SERVICE_ACCOUNT"), "wp-sa");
    assert_string_equal(lbl(pod, "service.istio.io/canonical-name"), "wp-x");
    json_decref(pod);
    json_decref(sa);
    json_decref(svc);
    json_decref(gw);
    /* A Deployment's pod name: <deploy>-<10>-<5> from Kubernetes' alphabet; a long name is cut to 58 first.
     */
    unsigned char rnd[15] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14};
    char pn[128];
    wp_pod_name("wp", rnd, pn, sizeof(pn));
    assert_string_equal(pn, "wp-bcdfghjklm-npqrs");
    char longname[64];
    memset(longname, 'a', 63);
    longname[63] = '\0';
    wp_pod_name(longname, rnd, pn, sizeof(pn));
    assert_int_equal(strlen(pn), 63);
    assert_string_equal(pn + 58, "npqrs");
}

/* Status as istiod writes it: not ready, then ready (addresses, Programmed True), then not ready again; an
 * unchanged input gives an equal object, and lastTransitionTime moves only when a condition's status does. */
static void test_wp_status_transitions(void **state)
{
    (void)state;
    json_t *gw = wp_gateway_make("shop", "wp", NULL);
    json_t *st = wp_gateway_status(gw, false, "2026-01-01T00:00:00Z");
    assert_null(json_object_get(st, "addresses"));
    json_t *c0 = json_array_get(json_object_get(st, "conditions"), 0),
           *c1 = json_array_get(json_object_get(st, "conditions"), 1);
    assert_string_equal(json_string_value(json_object_get(c0, "type")), "Accepted");
    assert_string_equal(json_string_value(json_object_get(c0, "status")), "True");
    assert_string_equal(json_string_value(json_object_get(c0, "reason")), "Accepted");
    assert_string_equal(json_string_value(json_object_get(c1, "type")), "Programmed");
    assert_string_equal(json_string_value(json_object_get(c1, "status")), "False");
    assert_string_equal(json_string_value(json_object_get(c1, "reason")), "AddressNotAssigned");
    assert_string_equal(json_string_value(json_object_get(c1, "message")),
                        "Failed to assign to any requested addresses: no instances found for hostname "
                        "\"wp.shop.svc.cluster.local\"");
    json_object_set_new(gw, "status", st);
    assert_false(wp_programmed(gw));
    /* Nothing changed, a later time: the same object (the controller does not rewrite the file). */
    json_t *again = wp_gateway_status(gw, false, "2026-01-01T00:05:00Z");
    assert_true(json_equal(again, json_object_get(gw, "status")));
    json_decref(again);
    json_t *rd = wp_gateway_status(gw, true, "2026-01-01T00:10:00Z");
    json_t *addr = json_array_get(json_object_get(rd, "addresses"), 0);
    assert_string_equal(json_string_value(json_object_get(addr, "type")), "Hostname");
    assert_string_equal(json_string_value(json_object_get(addr, "value")), "wp.shop.svc.cluster.local");
    c0 = json_array_get(json_object_get(rd, "conditions"), 0);
    c1 = json_array_get(json_object_get(rd, "conditions"), 1);
    assert_string_equal(json_string_value(json_object_get(c0, "lastTransitionTime")), "2026-01-01T00:00:00Z");
    assert_string_equal(json_string_value(json_object_get(c1, "status")), "True");
    assert_string_equal(json_string_value(json_object_get(c1, "reason")), "Programmed");
    assert_string_equal(json_string_value(json_object_get(c1, "message")),
                        "Resource programmed, assigned to service(s) wp.shop.svc.cluster.local:15008");
    assert_string_equal(json_string_value(json_object_get(c1, "lastTransitionTime")), "2026-01-01T00:10:00Z");
    json_object_set_new(gw, "status", rd);
    assert_true(wp_programmed(gw));
    json_t *down = wp_gateway_status(gw, false, "2026-01-01T00:20:00Z");
    assert_null(json_object_get(down, "addresses"));
    c1 = json_array_get(json_object_get(down, "conditions"), 1);
    assert_string_equal(json_string_value(json_object_get(c1, "status")), "False");
    assert_string_equal(json_string_value(json_object_get(c1, "lastTransitionTime")), "2026-01-01T00:20:00Z");
    json_decref(down);
    /* Two listener ports: istiod's humanReadableJoin ("a and b"), sorted as text. */
    json_array_append_new(json_object_get(json_object_get(gw, "spec"), "listeners"),
                          json_pack("{s:s,s:i,s:s}", "name", "http", "port", 8080, "protocol", "HTTP"));
    rd = wp_gateway_status(gw, true, "2026-01-01T00:30:00Z");
    c1 = json_array_get(json_object_get(rd, "conditions"), 1);
    assert_string_equal(json_string_value(json_object_get(c1, "message")),
                        "Resource programmed, assigned to service(s) wp.shop.svc.cluster.local:15008 and "
                        "wp.shop.svc.cluster.local:8080");
    json_decref(rd);
    json_t *svc = wp_service(gw);
    json_t *p2 = json_array_get(json_object_get(json_object_get(svc, "spec"), "ports"), 2);
    assert_string_equal(json_string_value(json_object_get(p2, "name")), "http");
    assert_string_equal(json_string_value(json_object_get(p2, "appProtocol")), "http");
    json_decref(svc);
    json_decref(gw);
}

/* What the controller refuses names the field; what it does not act on is a warning. */
static void test_wp_check(void **state)
{
    (void)state;
    char err[300];
    json_t *w = json_array();
    json_t *gw = wp_gateway_make("shop", "wp", NULL);
    assert_int_equal(wp_gateway_check(gw, err, sizeof(err), w), 0);
    assert_int_equal(json_array_size(w), 0);
    json_object_set_new(json_object_get(gw, "spec"), "addresses", json_pack("[{s:s}]", "value", "1.2.3.4"));
    assert_int_equal(wp_gateway_check(gw, err, sizeof(err), w), 0);
    assert_int_equal(json_array_size(w), 1);
    assert_non_null(strstr(json_string_value(json_array_get(w, 0)), "spec.addresses"));
    json_t *l0 = json_array_get(json_object_get(json_object_get(gw, "spec"), "listeners"), 0);
    json_object_set_new(l0, "port", json_integer(70000));
    assert_int_equal(wp_gateway_check(gw, err, sizeof(err), NULL), -EINVAL);
    assert_string_equal(err,
                        "gateway/wp (namespace shop): spec.listeners[0].port: expected an integer 1-65535");
    json_object_set_new(l0, "port", json_integer(15008));
    json_object_set_new(json_object_get(gw, "metadata"), "annotations",
                        json_pack("{s:s}", WP_ANN_NAME_OVERRIDE, "Not_A_Label"));
    assert_int_equal(wp_gateway_check(gw, err, sizeof(err), NULL), -EINVAL);
    assert_non_null(strstr(err, "metadata.annotations.gateway.istio.io/name-override"));
    json_object_del(json_object_get(gw, "metadata"), "annotations");
    json_object_set_new(json_object_get(gw, "metadata"), "labels",
                        json_pack("{s:s}", WP_LABEL_FOR, "everything"));
    assert_int_equal(wp_gateway_check(gw, err, sizeof(err), NULL), -EINVAL);
    assert_non_null(strstr(err, "metadata.labels.istio.io/waypoint-for"));
    json_decref(gw);
    json_decref(w);
    /* Classes and API groups. */
    json_t *o = json_pack("{s:s,s:s,s:{s:s}}", "apiVersion", "networking.istio.io/v1", "kind", "Gateway",
                          "spec", "gatewayClassName", WP_CLASS);
    assert_false(wp_is_gateway(o)); /* Istio's own Gateway kind is another API */
    json_object_set_new(o, "apiVersion", json_string("gateway.networking.k8s.io/v1beta1"));
    assert_true(wp_is_waypoint(o));
    json_decref(o);
}

/* Usage errors exit 2 with istioctl's messages; a missing cluster is a failure (1) that says what to do. */
static void test_wp_usage(void **state)
{
    (void)state;
    setenv("ZMESH_STATE_DIR", "/nonexistent/zmesh-unit", 1);
    struct {
        int rc;
        const char *argv[8];
    } cases[] = {
        {2, {"waypoint", NULL}},
        {2, {"waypoint", "frobnicate", NULL}},
        {2, {"waypoint", "list", "--all", NULL}},
        {2, {"waypoint", "generate", "--enroll-namespace", NULL}},
        {2, {"waypoint", "apply", "--for", "bogus", NULL}},
        {2, {"waypoint", "apply", "--name", "none", NULL}},
        {2, {"waypoint", "apply", "--name", "Bad_Name", NULL}},
        {2, {"waypoint", "apply", "--overwrite", NULL}},
        {2, {"waypoint", "apply", "--waypoint-timeout", "soon", NULL}},
        {2, {"waypoint", "apply", "-r", "canary", NULL}},
        {2, {"waypoint", "apply", "extra", NULL}},
        {2, {"waypoint", "delete", NULL}},
        {2, {"waypoint", "delete", "--all", "wp", NULL}},
        {2, {"waypoint", "delete", "--name", "wp", NULL}},
        {2, {"waypoint", "status", "-n", NULL}},
        {0, {"waypoint", "--help", NULL}},
        {1, {"waypoint", "apply", NULL}},
        {1, {"waypoint", "list", "-A", NULL}},
        {1, {"waypoint", "delete", "wp", NULL}},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int argc = 0;
        while (cases[i].argv[argc])
            argc++;
        char *argv[8];
        for (int k = 0; k <= argc; k++)
            argv[k] = (char *)cases[i].argv[k];
        int rc = cmd_waypoint(argc, argv);
        if (rc != cases[i].rc)
            fail_msg("case %zu (%s %s): exit %d, want %d", i, argv[1] ? argv[1] : "", argc > 2 ? argv[2] : "",
                     rc, cases[i].rc);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_workloads),
        cmocka_unit_test(test_workload_filters),
        cmocka_unit_test(test_services),
        cmocka_unit_test(test_policies),
        cmocka_unit_test(test_certificates),
        cmocka_unit_test(test_all),
        cmocka_unit_test(test_json),
        cmocka_unit_test(test_map_sections_and_bad_input),
        cmocka_unit_test(test_valid_at_the_edges),
        cmocka_unit_test(test_serial_hex),
        cmocka_unit_test(test_rfc3339),
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_http_get),
        cmocka_unit_test(test_http_refused),
        cmocka_unit_test(test_ps_table),
        cmocka_unit_test(test_ps_wide_and_json),
        cmocka_unit_test(test_ps_namespace),
        cmocka_unit_test(test_ps_bad_input),
        cmocka_unit_test(test_ps_human_duration),
        cmocka_unit_test(test_wp_generate),
        cmocka_unit_test(test_wp_list),
        cmocka_unit_test(test_wp_status_table),
        cmocka_unit_test(test_wp_managed_objects),
        cmocka_unit_test(test_wp_status_transitions),
        cmocka_unit_test(test_wp_check),
        cmocka_unit_test(test_wp_usage),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
