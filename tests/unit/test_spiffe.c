/* Unit tests for SPIFFE id parsing, formatting and defaults (src/tls/spiffe.c). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "tls/spiffe.h"

static int parse_str(const char *s, struct spiffe_id *id)
{
    return spiffe_parse(s, strlen(s), id);
}

static void test_parse_accepts(void **state)
{
    (void)state;
    struct spiffe_id id;
    assert_int_equal(parse_str("spiffe://cluster.local/ns/default/sa/server", &id), 0);
    assert_string_equal(id.td, "cluster.local");
    assert_string_equal(id.ns, "default");
    assert_string_equal(id.sa, "server");

    assert_int_equal(parse_str("spiffe://td.example-1/ns/ns_a/sa/Sa.B-2", &id), 0);
    assert_string_equal(id.td, "td.example-1");
    assert_string_equal(id.ns, "ns_a");
    assert_string_equal(id.sa, "Sa.B-2");

    /* A namespace or account literally named "ns"/"sa" is fine. */
    assert_int_equal(parse_str("spiffe://a/ns/ns/sa/sa", &id), 0);
    assert_string_equal(id.ns, "ns");
    assert_string_equal(id.sa, "sa");
}

static void test_parse_not_nul_terminated(void **state)
{
    (void)state;
    struct spiffe_id id;
    const char buf[] = "spiffe://cluster.local/ns/default/sa/serverXYZ";
    /* Only the first len bytes count; the trailing "XYZ" is outside. */
    assert_int_equal(spiffe_parse(buf, strlen(buf) - 3, &id), 0);
    assert_string_equal(id.sa, "server");
    /* A length that cuts the account to nothing is rejected. */
    assert_int_equal(spiffe_parse(buf, strlen("spiffe://cluster.local/ns/default/sa/"), &id), -EINVAL);
    /* An embedded NUL is not a valid byte. */
    const char nul[] = "spiffe://cluster.local/ns/def\0ault/sa/server";
    assert_int_equal(spiffe_parse(nul, sizeof(nul) - 1, &id), -EINVAL);
}

static void test_parse_rejects(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        "spiffe://",
        "cluster.local/ns/default/sa/server",          /* missing prefix */
        "spiffe:/cluster.local/ns/default/sa/server",  /* broken prefix */
        "SPIFFE://cluster.local/ns/default/sa/server", /* scheme is case-sensitive here */
        "Spiffe://cluster.local/ns/default/sa/server",
        "http://cluster.local/ns/default/sa/server",
        "spiffe://cluster.local/namespace/default/sa/server", /* wrong segment names */
        "spiffe://cluster.local/ns/default/serviceaccount/server",
        "spiffe://cluster.local/NS/default/sa/server",
        "spiffe://cluster.local/sa/default/ns/server",
        "spiffe://cluster.local/ns/default/sa",          /* 4 segments */
        "spiffe://cluster.local/ns/default/sa/server/x", /* 6 segments */
        "spiffe://cluster.local/ns/default/sa/server/",  /* trailing slash */
        "spiffe://cluster.local/ns//sa/server",          /* empty ns */
        "spiffe://cluster.local/ns/default/sa/",         /* empty sa */
        "spiffe:///ns/default/sa/server",                /* empty td */
        "spiffe://cluster.local//ns/default/sa/server",
        "spiffe://cluster.local/ns/default/sa/server?x=1",  /* query */
        "spiffe://cluster.local/ns/default/sa/server#frag", /* fragment */
        "spiffe://cluster.local/ns/def ault/sa/server",     /* whitespace */
        "spiffe://cluster.local/ns/default/sa/ser\nver",    /* control byte */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct spiffe_id id;
        memset(&id, 'x', sizeof(id));
        if (parse_str(bad[i], &id) != -EINVAL) fail_msg("accepted: \"%s\"", bad[i]);
        assert_int_equal(id.td[0], '\0'); /* output zeroed on failure */
    }
}

static void test_parse_lengths(void **state)
{
    (void)state;
    struct spiffe_id id;
    char s[2048], part[1024];

    /* td of 255 bytes fits td[256]; 256 does not. */
    memset(part, 'a', 255);
    part[255] = '\0';
    snprintf(s, sizeof(s), "spiffe://%s/ns/n/sa/s", part);
    assert_int_equal(parse_str(s, &id), 0);
    assert_int_equal(strlen(id.td), 255);
    memset(part, 'a', 256);
    part[256] = '\0';
    snprintf(s, sizeof(s), "spiffe://%s/ns/n/sa/s", part);
    assert_int_equal(parse_str(s, &id), -EINVAL);

    /* ns of 127 fits, 128 does not. */
    memset(part, 'b', 127);
    part[127] = '\0';
    snprintf(s, sizeof(s), "spiffe://td/ns/%s/sa/s", part);
    assert_int_equal(parse_str(s, &id), 0);
    memset(part, 'b', 128);
    part[128] = '\0';
    snprintf(s, sizeof(s), "spiffe://td/ns/%s/sa/s", part);
    assert_int_equal(parse_str(s, &id), -EINVAL);

    /* sa of 128 does not fit. */
    snprintf(s, sizeof(s), "spiffe://td/ns/n/sa/%s", part);
    assert_int_equal(parse_str(s, &id), -EINVAL);

    /* Parts that each fit but whose total reaches SPIFFE_MAX are rejected, so format always fits. */
    char td[256], ns[128], sa[128];
    memset(td, 't', 255), td[255] = '\0';
    memset(ns, 'n', 127), ns[127] = '\0';
    memset(sa, 's', 127), sa[127] = '\0';
    snprintf(s, sizeof(s), "spiffe://%s/ns/%s/sa/%s", td, ns, sa);
    assert_true(strlen(s) >= SPIFFE_MAX);
    assert_int_equal(parse_str(s, &id), -EINVAL);
}

static void test_format_round_trip(void **state)
{
    (void)state;
    const char *in = "spiffe://example.org/ns/prod/sa/api-server";
    struct spiffe_id id, id2;
    char buf[SPIFFE_MAX];

    assert_int_equal(parse_str(in, &id), 0);
    assert_int_equal(spiffe_format(&id, buf, sizeof(buf)), (int)strlen(in));
    assert_string_equal(buf, in);
    assert_int_equal(parse_str(buf, &id2), 0);
    assert_memory_equal(&id, &id2, sizeof(id));

    /* Exact fit needs room for the NUL. */
    assert_int_equal(spiffe_format(&id, buf, strlen(in) + 1), (int)strlen(in));
    assert_int_equal(spiffe_format(&id, buf, strlen(in)), -ENOSPC);
    assert_int_equal(spiffe_format(&id, buf, 5), -ENOSPC);
}

static void test_set_defaults(void **state)
{
    (void)state;
    struct spiffe_id id;
    char buf[SPIFFE_MAX];

    assert_int_equal(spiffe_set(&id, NULL, "default", "client"), 0);
    assert_string_equal(id.td, "cluster.local");
    assert_int_equal(spiffe_set(&id, "", "app", NULL), 0);
    assert_string_equal(id.td, "cluster.local");
    assert_string_equal(id.sa, "default");
    assert_int_equal(spiffe_set(&id, "corp.example", "app", ""), 0);
    assert_int_equal(spiffe_format(&id, buf, sizeof(buf)),
                     (int)strlen("spiffe://corp.example/ns/app/sa/default"));
    assert_string_equal(buf, "spiffe://corp.example/ns/app/sa/default");

    /* Invalid: missing ns, separators, oversize parts. */
    assert_int_equal(spiffe_set(&id, NULL, "", "x"), -EINVAL);
    assert_int_equal(spiffe_set(&id, NULL, NULL, "x"), -EINVAL);
    assert_int_equal(spiffe_set(&id, NULL, "a/b", "x"), -EINVAL);
    assert_int_equal(spiffe_set(&id, "td?", "a", "x"), -EINVAL);
    char big[300];
    memset(big, 'z', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    assert_int_equal(spiffe_set(&id, big, "a", "b"), -EINVAL);
    big[128] = '\0';
    assert_int_equal(spiffe_set(&id, NULL, big, "b"), -EINVAL);
    assert_int_equal(spiffe_set(&id, NULL, "a", big), -EINVAL);
    /* A failed set leaves the previous value. */
    assert_string_equal(id.td, "corp.example");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_accepts),     cmocka_unit_test(test_parse_not_nul_terminated),
        cmocka_unit_test(test_parse_rejects),     cmocka_unit_test(test_parse_lengths),
        cmocka_unit_test(test_format_round_trip), cmocka_unit_test(test_set_defaults),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
