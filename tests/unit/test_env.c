/* Unit tests for environment settings: Istio's value syntax (src/core/env.c: duration_str's durations, Rust's
 * bool and integer parsing, the table walker) and ztunnel's table (src/ztunnel/settings.c). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "../../src/ztunnel/settings.c"

/* ---- durations ---- */

struct dcase {
    const char *in;
    int rc;
    uint64_t ms;
};

static const struct dcase durations[] = {
    /* The forms the issue names. */
    {"500ms", 0, 500},
    {"5s", 0, 5000},
    {"1m30s", 0, 90000},
    {"1h", 0, 3600000},
    {"5m", 0, 300000}, /* minutes, not seconds */
    /* A bare number is seconds (duration_str's default unit). */
    {"5", 0, 5000},
    {"0", 0, 0},
    {" 7 ", 0, 7000},
    /* Sums: juxtaposed, spaced, with '+'; a trailing unitless term is seconds. */
    {"1m 30s", 0, 90000},
    {"1m+30s", 0, 90000},
    {"1m + 30", 0, 90000},
    {"1m31", 0, 91000},
    {"1h2m3s4ms", 0, 3723004},
    /* Products, in seconds. */
    {"1m*2", 0, 120000},
    {"2s * 500ms", 0, 1000},
    /* Units: case-insensitive, long names, µs, days, weeks, months (30 d) and years (365 d). */
    {"5S", 0, 5000},
    {"2MS", 0, 2},
    {"1hr", 0, 3600000},
    {"3 minutes", 0, 180000},
    {"1d", 0, 86400000},
    {"1w", 0, 604800000},
    {"1mon", 0, 2592000000ULL},
    {"1y", 0, 31536000000ULL},
    {"1500us", 0, 1},
    {"1500\xc2\xb5s", 0, 1},
    {"999999ns", 0, 0},
    /* Refused: empty, garbage, fractions, negatives, unknown units, mixed operators, stray operators. */
    {"", -EINVAL, 0},
    {"   ", -EINVAL, 0},
    {"abc", -EINVAL, 0},
    {"1.5s", -EINVAL, 0},
    {"-5s", -EINVAL, 0},
    {"5x", -EINVAL, 0},
    {"5 sx", -EINVAL, 0},
    {"5 5", -EINVAL, 0},
    {"1m+30s*2", -EINVAL, 0},
    {"5s+", -EINVAL, 0},
    {"+5s", -EINVAL, 0},
    {"5s,", -EINVAL, 0},
    {"0x10", -EINVAL, 0},
    /* Overflow of u64 nanoseconds (about 584 years). */
    {"18446744073709551616", -ERANGE, 0},
    {"585y", -ERANGE, 0},
    {"584y", 0, 584ULL * 31536000000ULL},
    {"400y + 400y", -ERANGE, 0},
    {"100000h*100000h", -ERANGE, 0},
};

static void test_durations(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(durations) / sizeof(durations[0]); i++) {
        const struct dcase *d = &durations[i];
        uint64_t ms = 12345;
        int rc = duration_parse_ms(d->in, &ms);
        if (rc != d->rc || (rc == 0 && ms != d->ms))
            fail_msg("duration \"%s\": rc %d ms %llu, want rc %d ms %llu", d->in, rc, (unsigned long long)ms,
                     d->rc, (unsigned long long)d->ms);
        if (rc) assert_int_equal(ms, 12345); /* untouched on error */
    }
    assert_int_equal(duration_parse_ms(NULL, &(uint64_t){0}), -EINVAL);
}

static void test_bool_int(void **state)
{
    (void)state;
    bool b = false;
    int64_t v = 0;
    assert_int_equal(env_parse_bool("true", &b), 0);
    assert_true(b);
    assert_int_equal(env_parse_bool("false", &b), 0);
    assert_false(b);
    /* Rust's bool::from_str is exact. */
    assert_int_equal(env_parse_bool("True", &b), -EINVAL);
    assert_int_equal(env_parse_bool("1", &b), -EINVAL);
    assert_int_equal(env_parse_bool("", &b), -EINVAL);
    assert_int_equal(env_parse_int("15000", 0, 65535, &v), 0);
    assert_int_equal(v, 15000);
    assert_int_equal(env_parse_int("+7", 0, 65535, &v), 0);
    assert_int_equal(v, 7);
    assert_int_equal(env_parse_int("-3", -10, 10, &v), 0);
    assert_int_equal(v, -3);
    assert_int_equal(env_parse_int("-3", 0, 10, &v), -EINVAL);
    assert_int_equal(env_parse_int("65536", 0, 65535, &v), -ERANGE);
    assert_int_equal(env_parse_int("99999999999999999999", 0, INT64_MAX, &v), -ERANGE);
    assert_int_equal(env_parse_int(" 1", 0, 10, &v), -EINVAL);
    assert_int_equal(env_parse_int("1 ", 0, 10, &v), -EINVAL);
    assert_int_equal(env_parse_int("", 0, 10, &v), -EINVAL);
    assert_int_equal(env_parse_int("+", 0, 10, &v), -EINVAL);
    assert_int_equal(env_parse_int("1e3", 0, 10000, &v), -EINVAL);
}

/* ---- ztunnel's settings table ---- */

/* A fake environment: NULL-terminated name, value pairs. */
static const char *const *fake_env;

static const char *fake_lookup(const char *name)
{
    for (const char *const *p = fake_env; p && *p; p += 2)
        if (!strcmp(p[0], name)) return p[1];
    return NULL;
}

#define BASE                                                                                                 \
    "PROXY_MODE", "dedicated", "PROXY_WORKLOAD_INFO", "ns/pod/sa", "LOCAL_XDS_PATH", "/c.yaml",              \
        "LOCAL_CA_DIR", "/ca"

static int parse_env(struct zt_settings *s, const char *const *env, struct env_diag *errors,
                     struct env_diag *warnings)
{
    fake_env = env;
    memset(errors, 0, sizeof(*errors));
    memset(warnings, 0, sizeof(*warnings));
    return zt_settings_parse(s, fake_lookup, NULL, 8, errors, warnings);
}

static void test_settings_defaults(void **state)
{
    (void)state;
    struct zt_settings s;
    struct env_diag e, w;
    static const char *const env[] = {BASE, NULL};
    assert_int_equal(parse_env(&s, env, &e, &w), 0);
    assert_int_equal(e.n, 0);
    assert_int_equal(w.n, 0);
    assert_int_equal(s.proxy_mode, ZT_MODE_DEDICATED);
    assert_string_equal(s.workload.ns, "ns");
    assert_string_equal(s.workload.name, "pod");
    assert_string_equal(s.workload.sa, "sa");
    assert_string_equal(s.local_xds_path, "/c.yaml");
    assert_int_equal(s.termination_deadline_ms, 5000);
    assert_int_equal(s.pool_unused_release_ms, 300000);
    assert_int_equal(s.secret_ttl_ms, 24ULL * 3600 * 1000);
    assert_int_equal(s.admin_port, 15000);
    assert_int_equal(s.readiness_port, 15021);
    assert_null(s.rust_log);
    assert_int_equal(s.log_format, ZT_LOG_PLAIN);
    /* Istio's default: max(2, ceil(25% of 8 CPUs)). */
    assert_int_equal(s.n_workers, 2);
}

static void test_settings_values(void **state)
{
    (void)state;
    struct zt_settings s;
    struct env_diag e, w;
    static const char *const env[] = {BASE,
                                      "CONNECTION_TERMINATION_DEADLINE",
                                      "1m30s",
                                      "POOL_UNUSED_RELEASE_TIMEOUT",
                                      "5m",
                                      "SECRET_TTL",
                                      "30s",
                                      "ZTUNNEL_WORKER_THREADS",
                                      "50%",
                                      "RUST_LOG",
                                      "info,access=off",
                                      "LOG_FORMAT",
                                      "json",
                                      "ADMIN_PORT",
                                      "0",
                                      NULL};
    assert_int_equal(parse_env(&s, env, &e, &w), 0);
    assert_int_equal(s.termination_deadline_ms, 90000);
    assert_int_equal(s.pool_unused_release_ms, 300000);
    assert_int_equal(s.secret_ttl_ms, 30000);
    assert_int_equal(s.n_workers, 4);
    assert_string_equal(s.rust_log, "info,access=off");
    assert_int_equal(s.log_format, ZT_LOG_JSON);
    assert_int_equal(s.admin_port, 0);
    /* Worker counts: explicit, 0 = every CPU, the CPU limits. */
    static const char *const env2[] = {BASE, "ZTUNNEL_WORKER_THREADS", "0", NULL};
    assert_int_equal(parse_env(&s, env2, &e, &w), 0);
    assert_int_equal(s.n_workers, 8);
    static const char *const env3[] = {BASE, "ZTUNNEL_WORKER_THREADS", "3", NULL};
    assert_int_equal(parse_env(&s, env3, &e, &w), 0);
    assert_int_equal(s.n_workers, 3);
    static const char *const env4[] = {BASE, "ZTUNNEL_RESOURCE_CPU_LIMIT", "1500m", NULL};
    assert_int_equal(parse_env(&s, env4, &e, &w), 0);
    assert_int_equal(s.n_workers, 2);
    static const char *const env5[] = {BASE, "ZTUNNEL_CPU_LIMIT", "40", "ZTUNNEL_RESOURCE_CPU_REQUEST", "3",
                                       NULL};
    assert_int_equal(parse_env(&s, env5, &e, &w), 0);
    assert_int_equal(s.n_workers, 10); /* ceil(25% of 40) */
}

/* TERMINATION_GRACE_PERIOD_SECONDS sets the deadline when CONNECTION_TERMINATION_DEADLINE is unset. */
static void test_settings_grace_period(void **state)
{
    (void)state;
    struct zt_settings s;
    struct env_diag e, w;
    static const struct {
        const char *grace;
        uint64_t ms;
    } cases[] = {{"30", 25000}, {"11", 6000}, {"10", 9000}, {"2", 1000}, {"1", 1000}, {"0", 1000}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const char *env[] = {BASE, "TERMINATION_GRACE_PERIOD_SECONDS", cases[i].grace, NULL};
        assert_int_equal(parse_env(&s, env, &e, &w), 0);
        assert_int_equal(s.termination_deadline_ms, cases[i].ms);
    }
    static const char *const both[] = {
        BASE, "TERMINATION_GRACE_PERIOD_SECONDS", "30", "CONNECTION_TERMINATION_DEADLINE", "2s", NULL};
    assert_int_equal(parse_env(&s, both, &e, &w), 0);
    assert_int_equal(s.termination_deadline_ms, 2000);
    static const char *const bad[] = {BASE, "TERMINATION_GRACE_PERIOD_SECONDS", "30s", NULL};
    assert_int_equal(parse_env(&s, bad, &e, &w), -EINVAL);
    assert_non_null(
        strstr(e.buf, "invalid env var TERMINATION_GRACE_PERIOD_SECONDS=30s (expected an integer)"));
}

/* Every error names its variable, and all of them are reported at once. */
static void test_settings_errors(void **state)
{
    (void)state;
    struct zt_settings s;
    struct env_diag e, w;
    static const char *const env[] = {"PROXY_MODE",
                                      "dedicatd",
                                      "CONNECTION_TERMINATION_DEADLINE",
                                      "abc",
                                      "POOL_UNUSED_RELEASE_TIMEOUT",
                                      "0",
                                      "SECRET_TTL",
                                      "1.5h",
                                      "ZTUNNEL_WORKER_THREADS",
                                      "65",
                                      "RUST_LOG",
                                      "info,access=loud",
                                      "LOG_FORMAT",
                                      "jsn",
                                      "ADMIN_PORT",
                                      "70000",
                                      "PROXY_WORKLOAD_INFO",
                                      "ns/pod",
                                      NULL};
    assert_int_equal(parse_env(&s, env, &e, &w), -EINVAL);
    static const char *const want[] = {
        "invalid env var PROXY_MODE=dedicatd (unknown value; PROXY_MODE must be one of shared, dedicated)\n",
        "invalid env var PROXY_WORKLOAD_INFO=ns/pod (must match the format "
        "'namespace/name/service-account')\n",
        "no config: set XDS_ADDRESS (an xDS server such as zmeshd or istiod) or LOCAL_XDS_PATH",
        "no CA: set CA_ADDRESS (a remote CA such as zmeshd or istiod) or LOCAL_CA_DIR",
        "invalid env var CONNECTION_TERMINATION_DEADLINE=abc (expected a duration such as 500ms, 5s, 1m30s "
        "or 1h)\n",
        "invalid env var POOL_UNUSED_RELEASE_TIMEOUT=0 (must be at least 1ms)\n",
        "invalid env var SECRET_TTL=1.5h (expected a duration",
        "invalid env var ZTUNNEL_WORKER_THREADS=65 (zmesh runs at most 64 worker threads)\n",
        "invalid env var RUST_LOG=info,access=loud (unknown level \"loud\"",
        "invalid env var LOG_FORMAT=jsn (unknown value; LOG_FORMAT must be one of plain, json, text)\n",
        "invalid env var ADMIN_PORT=70000 (expected an integer in 0..65535)\n",
    };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
        if (!strstr(e.buf, want[i])) fail_msg("missing \"%s\" in:\n%s", want[i], e.buf);
    assert_int_equal(e.n, sizeof(want) / sizeof(want[0]));
    /* Missing required variables, all of them. */
    static const char *const none[] = {NULL};
    assert_int_equal(parse_env(&s, none, &e, &w), -EINVAL);
    assert_int_equal(e.n, 2); /* shared mode (the default) needs no PROXY_WORKLOAD_INFO */
    assert_null(strstr(e.buf, "PROXY_WORKLOAD_INFO"));
    assert_non_null(strstr(e.buf, "no config: set XDS_ADDRESS"));
    assert_non_null(strstr(e.buf, "no CA: set CA_ADDRESS"));
    static const char *const dedicated[] = {"PROXY_MODE", "dedicated", NULL};
    assert_int_equal(parse_env(&s, dedicated, &e, &w), -EINVAL);
    assert_int_equal(e.n, 3);
    assert_non_null(strstr(e.buf, "PROXY_WORKLOAD_INFO must be set with PROXY_MODE=dedicated"));
    /* An empty workload info is malformed; an empty duration is invalid (duration_str: "Empty input"). */
    static const char *const empty[] = {"PROXY_MODE",
                                        "dedicated",
                                        "PROXY_WORKLOAD_INFO",
                                        "",
                                        "LOCAL_XDS_PATH",
                                        "/c",
                                        "LOCAL_CA_DIR",
                                        "/ca",
                                        "CONNECTION_TERMINATION_DEADLINE",
                                        "",
                                        NULL};
    assert_int_equal(parse_env(&s, empty, &e, &w), -EINVAL);
    assert_int_equal(e.n, 2);
    assert_non_null(strstr(e.buf, "invalid env var PROXY_WORKLOAD_INFO= (must match the format"));
    assert_non_null(strstr(e.buf, "invalid env var CONNECTION_TERMINATION_DEADLINE= ("));
    /* Bad workload infos. */
    static const char *const infos[] = {"a/b/c/d", "/b/c", "a//c", "a/b/", "abc"};
    for (size_t i = 0; i < sizeof(infos) / sizeof(infos[0]); i++) {
        const char *env2[] = {"PROXY_MODE",
                              "dedicated",
                              "PROXY_WORKLOAD_INFO",
                              infos[i],
                              "LOCAL_XDS_PATH",
                              "/c",
                              "LOCAL_CA_DIR",
                              "/ca",
                              NULL};
        assert_int_equal(parse_env(&s, env2, &e, &w), -EINVAL);
        assert_non_null(strstr(e.buf, "(must match the format 'namespace/name/service-account')"));
    }
}

/* Istio settings zmesh does not implement get one warning each, never an error or silence. */
static void test_settings_unsupported(void **state)
{
    (void)state;
    struct zt_settings s;
    struct env_diag e, w;
    static const char *const env[] = {BASE,       "FAKE_CA",   "true", "LOCAL_XDS", "{}", "ISTIO_META_CLUSTER_ID",
                                      "c1",       "RUST_LOG",  "info,dbug", NULL};
    /* The xDS client's prefixed variables, without XDS_ADDRESS: said, and ISTIO_META_CLUSTER_ID is the cluster
     * id (used by the CA client too). */
    char *envp[] = {"ISTIO_META_CLUSTER_ID=c1", "PATH=/bin", "XDS_HEADER_FOO=bar", "ISTIO_METAJSON_X={}", NULL};
    fake_env = env;
    memset(&e, 0, sizeof(e));
    memset(&w, 0, sizeof(w));
    assert_int_equal(zt_settings_parse(&s, fake_lookup, envp, 2, &e, &w), 0);
    assert_int_equal(e.n, 0);
    static const char *const want[] = {
        "FAKE_CA=true: an Istio setting zmesh does not implement yet; ignored\n",
        "LOCAL_XDS={}: an Istio setting",
        "XDS_HEADER_FOO: used by the xDS client only, and XDS_ADDRESS is not set; ignored",
        "ISTIO_METAJSON_X: used by the xDS client only",
        "RUST_LOG=info,dbug names a target without a level",
    };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
        if (!strstr(w.buf, want[i])) fail_msg("missing \"%s\" in:\n%s", want[i], w.buf);
    assert_int_equal(w.n, sizeof(want) / sizeof(want[0]));
    assert_string_equal(s.cluster_id, "c1");
    /* Both sources of config, or both CAs, are refused. */
    static const char *const both[] = {BASE, "XDS_ADDRESS", "https://zmeshd:15012", "CA_ADDRESS", "https://z:1",
                                       NULL};
    fake_env = both;
    memset(&e, 0, sizeof(e));
    assert_int_equal(zt_settings_parse(&s, fake_lookup, NULL, 2, &e, &w), -EINVAL);
    assert_non_null(strstr(e.buf, "LOCAL_XDS_PATH and XDS_ADDRESS are both set"));
    assert_non_null(strstr(e.buf, "LOCAL_CA_DIR and CA_ADDRESS are both set"));
    assert_null(strstr(w.buf, "PATH"));
}

/* --help prints every table entry with its default. */
static void test_settings_help(void **state)
{
    (void)state;
    char *buf = NULL;
    size_t len = 0, n;
    FILE *f = open_memstream(&buf, &len);
    zt_settings_help(f, "9.9.9");
    fclose(f);
    const struct env_setting *t = zt_settings_table(&n);
    assert_true(n > 40);
    for (size_t i = 0; i < n; i++) {
        char want[160];
        snprintf(want, sizeof(want), "\n  %s (", t[i].name);
        if (!strstr(buf, want)) fail_msg("--help lacks %s", t[i].name);
        if (t[i].def) {
            snprintf(want, sizeof(want), "\n  %s (%s, default %s)\n", t[i].name,
                     t[i].type ? t[i].type : env_kind_to_str(t[i].kind), t[i].def);
            if (!strstr(buf, want)) fail_msg("--help lacks \"%s\"", want);
        }
    }
    assert_non_null(strstr(buf, "CONNECTION_TERMINATION_DEADLINE (duration, default 5s)\n"));
    assert_non_null(strstr(buf, "XDS_ADDRESS (string)\n"));
    assert_non_null(strstr(buf, "FAKE_CA (not implemented)\n"));
    assert_non_null(strstr(buf, "9.9.9"));
    free(buf);
}

/* The walker on a small table of its own: every kind, and env_diag's truncation. */
struct mini {
    const char *s;
    bool b;
    int64_t i;
    uint64_t d;
    int en;
};

static void test_table_walker(void **state)
{
    (void)state;
    static const char *const colors[] = {"red", "blue", NULL};
    static const struct env_setting t[] = {
        {.name = "S", .kind = ENV_STRING, .offset = offsetof(struct mini, s), .help = "s"},
        {.name = "B", .kind = ENV_BOOL, .offset = offsetof(struct mini, b), .help = "b"},
        {.name = "I", .kind = ENV_INT, .min = 1, .max = 9, .offset = offsetof(struct mini, i), .help = "i"},
        {.name = "D",
         .kind = ENV_DURATION,
         .min = 10,
         .max = 1000,
         .offset = offsetof(struct mini, d),
         .help = "d"},
        {.name = "E", .kind = ENV_ENUM, .choices = colors, .offset = offsetof(struct mini, en), .help = "e"},
        {.name = "R", .kind = ENV_STRING, .required = true, .offset = offsetof(struct mini, s), .help = "r"},
    };
    struct mini m = {0};
    struct env_diag e = {0}, w = {0};
    bool set[6];
    static const char *const ok[] = {"S", "x", "B", "true", "I", "9", "D", "1s", "E", "blue", "R", "y", NULL};
    fake_env = ok;
    assert_int_equal(env_parse_table(t, 6, &m, fake_lookup, set, &e, &w), 0);
    assert_true(m.b);
    assert_int_equal(m.i, 9);
    assert_int_equal(m.d, 1000);
    assert_int_equal(m.en, 1);
    assert_true(set[0] && set[5]);
    static const char *const bad[] = {"B", "yes", "I", "10", "D", "5ms", "E", "green", NULL};
    fake_env = bad;
    memset(&e, 0, sizeof(e));
    assert_int_equal(env_parse_table(t, 6, &m, fake_lookup, set, &e, &w), -EINVAL);
    assert_int_equal(e.n, 5);
    assert_non_null(strstr(e.buf, "invalid env var B=yes (expected true or false)\n"));
    assert_non_null(strstr(e.buf, "invalid env var I=10 (expected an integer in 1..9)\n"));
    assert_non_null(strstr(e.buf, "invalid env var D=5ms (must be between 10ms and 1000ms)\n"));
    assert_non_null(strstr(e.buf, "invalid env var E=green (unknown value; E must be one of red, blue)\n"));
    assert_non_null(strstr(e.buf, "R must be set (r)\n"));
    assert_false(set[0]);
    /* A full diag says it was cut. */
    memset(&e, 0, sizeof(e));
    for (int i = 0; i < 200; i++)
        env_diag_add(&e, "line %d with some text to fill the buffer up", i);
    assert_int_equal(e.n, 200);
    assert_true(e.len < sizeof(e.buf));
    assert_non_null(strstr(e.buf, "...\n"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_durations),
        cmocka_unit_test(test_bool_int),
        cmocka_unit_test(test_settings_defaults),
        cmocka_unit_test(test_settings_values),
        cmocka_unit_test(test_settings_grace_period),
        cmocka_unit_test(test_settings_errors),
        cmocka_unit_test(test_settings_unsupported),
        cmocka_unit_test(test_settings_help),
        cmocka_unit_test(test_table_walker),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
