/* Unit tests for src/h2/budget.c: the token bucket and the process-wide memory budget. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "h2/budget.h"

/* A full bucket gives exactly burst tokens, then refills at rate per second, never above burst. */
static void test_bucket(void **state)
{
    (void)state;
    struct h2_bucket b;
    h2_bucket_init(&b, 10, 1000, 5000);
    for (int i = 0; i < 10; i++)
        assert_true(h2_bucket_take(&b, 5000));
    assert_false(h2_bucket_take(&b, 5000));
    assert_true(h2_bucket_take(&b, 5001)); /* 1000/s = one per millisecond */
    assert_false(h2_bucket_take(&b, 5001));
    /* An hour idle refills to the burst, not beyond. */
    int n = 0;
    while (h2_bucket_take(&b, 5001 + 3600 * 1000))
        n++;
    assert_int_equal(n, 10);
    /* Fractions add up: at 500/s, two milliseconds make one token. */
    h2_bucket_init(&b, 1, 500, 0);
    assert_true(h2_bucket_take(&b, 0));
    assert_false(h2_bucket_take(&b, 1));
    assert_true(h2_bucket_take(&b, 2));
    /* Time going backwards (a caller's stale clock) adds nothing. */
    assert_false(h2_bucket_take(&b, 1));
}

static void test_mem_reserve(void **state)
{
    (void)state;
    h2_mem_set_limit(1000);
    assert_int_equal(h2_mem_limit(), 1000);
    assert_int_equal(h2_mem_reserved(), 0);
    assert_true(h2_mem_reserve(600));
    assert_false(h2_mem_reserve(401)); /* all or nothing */
    assert_int_equal(h2_mem_reserved(), 600);
    assert_true(h2_mem_reserve(400));
    assert_false(h2_mem_reserve(1));
    h2_mem_release(500);
    assert_true(h2_mem_reserve(500));
    h2_mem_release(1000);
    assert_int_equal(h2_mem_reserved(), 0);
    /* A lower limit leaves what is reserved, and refuses more until enough is returned. */
    assert_true(h2_mem_reserve(800));
    h2_mem_set_limit(500);
    assert_false(h2_mem_reserve(1));
    h2_mem_release(800);
    assert_true(h2_mem_reserve(500));
    h2_mem_release(500);
    h2_mem_set_limit(0);
    assert_int_equal(h2_mem_limit(), H2_MEM_BUDGET_DEFAULT);
}

/* Two threads reserving and releasing at once never hold more than the limit together. */
#define RACE_ROUNDS 200000
static _Atomic int race_over;
static void *racer(void *arg)
{
    (void)arg;
    for (int i = 0; i < RACE_ROUNDS; i++) {
        if (!h2_mem_reserve(300)) continue;
        if (h2_mem_reserved() > 1000) race_over = 1;
        h2_mem_release(300);
    }
    return NULL;
}

static void test_mem_threads(void **state)
{
    (void)state;
    pthread_t th[3];
    h2_mem_set_limit(1000);
    for (int i = 0; i < 3; i++)
        assert_int_equal(pthread_create(&th[i], NULL, racer, NULL), 0);
    for (int i = 0; i < 3; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(race_over, 0);
    assert_int_equal(h2_mem_reserved(), 0);
    h2_mem_set_limit(0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bucket),
        cmocka_unit_test(test_mem_reserve),
        cmocka_unit_test(test_mem_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
