/* Retry decisions (src/mesh/retry.h): Envoy's retry_on semantics, one case per condition, Istio's default
 * policy, and the jittered exponential back-off's ranges. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <cmocka.h>

#include "mesh/retry.h"

static struct l7_try resp(int status)
{
    return (struct l7_try){.end = L7_TRY_RESPONSE, .status = status, .grpc_status = -1};
}

static struct l7_try grpc(int gs)
{
    return (struct l7_try){.end = L7_TRY_RESPONSE, .status = 200, .grpc_status = gs};
}

static struct l7_try ended(enum l7_try_end e)
{
    return (struct l7_try){.end = e, .grpc_status = -1};
}

struct tcase {
    uint32_t on;
    struct l7_try t;
    bool want;
};

static void test_conditions(void **state)
{
    (void)state;
    const struct tcase cases[] = {
        {L7_RETRY_5XX, resp(500), true},
        {L7_RETRY_5XX, resp(503), true},
        {L7_RETRY_5XX, resp(499), false},
        {L7_RETRY_5XX, ended(L7_TRY_RESET), true},           /* a reset counts as a 5xx */
        {L7_RETRY_5XX, ended(L7_TRY_CONNECT_FAILURE), true}, /* so does a connect failure */
        {L7_RETRY_5XX, ended(L7_TRY_PER_TRY_TIMEOUT), true}, /* judged as a 504 */
        {L7_RETRY_GATEWAY_ERROR, resp(502), true},
        {L7_RETRY_GATEWAY_ERROR, resp(504), true},
        {L7_RETRY_GATEWAY_ERROR, resp(500), false},
        {L7_RETRY_GATEWAY_ERROR, ended(L7_TRY_PER_TRY_TIMEOUT), true},
        {L7_RETRY_RESET, ended(L7_TRY_RESET), true},
        {L7_RETRY_RESET, resp(503), false},
        {L7_RETRY_RESET, ended(L7_TRY_PER_TRY_TIMEOUT), false},
        {L7_RETRY_CONNECT_FAILURE, ended(L7_TRY_CONNECT_FAILURE), true},
        {L7_RETRY_CONNECT_FAILURE, ended(L7_TRY_RESET), false},
        {L7_RETRY_REFUSED_STREAM, ended(L7_TRY_REFUSED_STREAM), true},
        {L7_RETRY_REFUSED_STREAM, ended(L7_TRY_RESET), false},
        {L7_RETRY_RETRIABLE_4XX, resp(409), true},
        {L7_RETRY_RETRIABLE_4XX, resp(429), false},
        {L7_RETRY_GRPC_CANCELLED, grpc(1), true},
        {L7_RETRY_GRPC_DEADLINE_EXCEEDED, grpc(4), true},
        {L7_RETRY_GRPC_RESOURCE_EXHAUSTED, grpc(8), true},
        {L7_RETRY_GRPC_INTERNAL, grpc(13), true},
        {L7_RETRY_GRPC_UNAVAILABLE, grpc(14), true},
        {L7_RETRY_GRPC_UNAVAILABLE, grpc(13), false},
        {L7_RETRY_GRPC_UNAVAILABLE, resp(503), false},
        {L7_RETRY_5XX | L7_RETRY_RESET, ended(L7_TRY_OVERFLOW), false}, /* a circuit breaker: never */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct l7_retry p = {.attempts = 1, .on = cases[i].on};
        if (l7_retry_wanted(&p, &cases[i].t) != cases[i].want)
            fail_msg("case %zu: on=%#x end=%d status=%d grpc=%d: want %d", i, cases[i].on, cases[i].t.end,
                     cases[i].t.status, cases[i].t.grpc_status, cases[i].want);
    }
    /* listed status codes only with retriable-status-codes */
    struct l7_retry p = {
        .attempts = 1, .on = L7_RETRY_RETRIABLE_STATUS_CODES, .codes = {429, 418}, .n_codes = 2};
    struct l7_try t = resp(418);
    assert_true(l7_retry_wanted(&p, &t));
    t = resp(503);
    assert_false(l7_retry_wanted(&p, &t));
    p.on = 0;
    t = resp(418);
    assert_false(l7_retry_wanted(&p, &t));
    /* no attempts: never */
    p = (struct l7_retry){.attempts = 0, .on = L7_RETRY_5XX};
    t = resp(500);
    assert_false(l7_retry_wanted(&p, &t));
}

/* Istio's default: connect-failure, refused-stream, unavailable, cancelled, retriable-status-codes 503. */
static void test_istio_default(void **state)
{
    (void)state;
    struct l7_try t = resp(503);
    assert_true(l7_retry_wanted(NULL, &t));
    t = resp(500);
    assert_false(l7_retry_wanted(NULL, &t));
    t = resp(502);
    assert_false(l7_retry_wanted(NULL, &t));
    t = ended(L7_TRY_CONNECT_FAILURE);
    assert_true(l7_retry_wanted(NULL, &t));
    t = ended(L7_TRY_REFUSED_STREAM);
    assert_true(l7_retry_wanted(NULL, &t));
    t = ended(L7_TRY_RESET); /* a reset after the request left is not retried by default */
    assert_false(l7_retry_wanted(NULL, &t));
    t = ended(L7_TRY_PER_TRY_TIMEOUT);
    assert_false(l7_retry_wanted(NULL, &t));
    t = grpc(14);
    assert_true(l7_retry_wanted(NULL, &t));
    t = grpc(1);
    assert_true(l7_retry_wanted(NULL, &t));
    t = grpc(4);
    assert_false(l7_retry_wanted(NULL, &t));
    assert_int_equal(l7_default_retry.attempts, 2);
    assert_true(l7_default_retry.retry_other_hosts);
}

/* Ranges [0, 25), [0, 50), [0, 100), [0, 200), then [0, 250) for ever. */
/* Envoy's grpcToHttpStatus, which outlier detection counts a gRPC response by. */
static void test_grpc_to_http(void **state)
{
    (void)state;
    static const struct {
        int grpc, http;
    } cases[] = {{0, 200},  {1, 499},  {2, 500},  {3, 400},  {4, 504},  {5, 404},  {6, 409},
                 {7, 403},  {8, 429},  {9, 400},  {10, 409}, {11, 400}, {12, 501}, {13, 500},
                 {14, 503}, {15, 500}, {16, 401}, {17, 500}, {-1, 500}, {99, 500}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        if (l7_grpc_to_http_status(cases[i].grpc) != cases[i].http)
            fail_msg("grpc %d: %d, expected %d", cases[i].grpc, l7_grpc_to_http_status(cases[i].grpc),
                     cases[i].http);
}

static void test_backoff(void **state)
{
    (void)state;
    const uint64_t bound[] = {0, 25, 50, 100, 200, 250, 250, 250};
    for (unsigned n = 1; n < sizeof(bound) / sizeof(bound[0]); n++) {
        assert_int_equal(l7_retry_backoff_ms(n, bound[n] - 1), bound[n] - 1); /* the top of the range */
        assert_int_equal(l7_retry_backoff_ms(n, bound[n]), 0);                /* and it wraps */
        assert_int_equal(l7_retry_backoff_ms(n, 0), 0);
        uint64_t max = 0;
        for (uint64_t r = 0; r < 10000; r += 7) {
            uint64_t b = l7_retry_backoff_ms(n, r * 2654435761u);
            assert_true(b < bound[n]);
            if (b > max) max = b;
        }
        assert_true(max >= bound[n] * 9 / 10); /* the whole range is used */
    }
    assert_true(l7_retry_backoff_ms(1000, UINT64_MAX) < L7_RETRY_MAX_MS); /* no overflow at large n */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_conditions),
        cmocka_unit_test(test_istio_default),
        cmocka_unit_test(test_backoff),
        cmocka_unit_test(test_grpc_to_http),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
