/* Unit tests for the consistent-hash load balancers (src/mesh/chash.c), ring hash and Maglev alike: the same
 * key always picks the same host (also across rebuilds and host orders), keys spread over hosts within a
 * tolerance, removing one host moves only (about) the keys that host had, and weights are respected. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "mesh/chash.h"

#define NKEYS 20000

enum { RING, MAGLEV };

static struct chash *build(int kind, const struct chash_host *h, size_t n, uint64_t size)
{
    struct chash *c = NULL;
    int rc = kind == RING ? chash_ring_build(h, n, size, &c) : chash_maglev_build(h, n, size, &c);
    assert_int_equal(rc, 0);
    assert_non_null(c);
    return c;
}

static uint64_t key_hash(unsigned i)
{
    char k[48];
    int n = snprintf(k, sizeof(k), "user-%u", i);
    return chash_xxh64(k, (size_t)n, 0);
}

static void hosts_n(struct chash_host *h, char names[][48], size_t n)
{
    for (size_t i = 0; i < n; i++) {
        snprintf(names[i], 48, "10.0.0.%zu:8080", i + 1);
        h[i] = (struct chash_host){names[i], 1};
    }
}

static void check_determinism(int kind)
{
    char names[5][48];
    struct chash_host h[5], rev[5];
    hosts_n(h, names, 5);
    for (size_t i = 0; i < 5; i++)
        rev[i] = h[4 - i];
    struct chash *a = build(kind, h, 5, 0), *b = build(kind, h, 5, 0), *r = build(kind, rev, 5, 0);
    assert_int_equal(chash_size(a), kind == RING ? 1025 : 65537); /* 5 x ceil(1024/5) = 1025 */
    for (unsigned i = 0; i < 2000; i++) {
        uint64_t k = key_hash(i);
        int x = chash_pick(a, k);
        assert_true(x >= 0 && x < 5);
        assert_int_equal(x, chash_pick(b, k));
        assert_int_equal(x, chash_pick(a, k));
        /* the same host key, whatever its index in the input */
        assert_string_equal(h[x].key, rev[chash_pick(r, k)].key);
    }
    chash_free(a);
    chash_free(b);
    chash_free(r);
}

static void check_spread(int kind, double tolerance)
{
    char names[5][48];
    struct chash_host h[5];
    hosts_n(h, names, 5);
    struct chash *c = build(kind, h, 5, 0);
    unsigned count[5] = {0};
    for (unsigned i = 0; i < NKEYS; i++)
        count[chash_pick(c, key_hash(i))]++;
    for (int i = 0; i < 5; i++) {
        double share = count[i] / (double)NKEYS;
        if (share < 0.2 - tolerance || share > 0.2 + tolerance)
            fail_msg("kind %d host %d has %.3f of the keys (expected 0.2 +- %.2f)", kind, i, share,
                     tolerance);
    }
    chash_free(c);
}

static void check_disruption(int kind, double max_moved)
{
    char names[5][48];
    struct chash_host h[5];
    hosts_n(h, names, 5);
    struct chash *before = build(kind, h, 5, 0);
    /* host 2 leaves */
    struct chash_host less[4] = {h[0], h[1], h[3], h[4]};
    struct chash *after = build(kind, less, 4, 0);
    unsigned moved = 0, had = 0;
    for (unsigned i = 0; i < NKEYS; i++) {
        uint64_t k = key_hash(i);
        const char *b = h[chash_pick(before, k)].key, *a = less[chash_pick(after, k)].key;
        assert_string_not_equal(a, h[2].key);
        if (!strcmp(b, h[2].key)) {
            had++;
            continue; /* these must move */
        }
        if (strcmp(a, b)) moved++;
    }
    /* The keys of the hosts that stayed mostly keep their host (ideal: none move; Maglev moves a few). */
    double frac = moved / (double)(NKEYS - had);
    if (frac > max_moved)
        fail_msg("kind %d: %.3f of the staying hosts' keys moved (max %.2f)", kind, frac, max_moved);
    assert_true(had > NKEYS / 10);
    chash_free(before);
    chash_free(after);
}

static void check_weights(int kind)
{
    char names[3][48];
    struct chash_host h[3];
    hosts_n(h, names, 3);
    h[0].weight = 1;
    h[1].weight = 2;
    h[2].weight = 5;
    struct chash *c = build(kind, h, 3, 0);
    unsigned count[3] = {0};
    for (unsigned i = 0; i < NKEYS; i++)
        count[chash_pick(c, key_hash(i))]++;
    double want[3] = {1 / 8.0, 2 / 8.0, 5 / 8.0};
    for (int i = 0; i < 3; i++) {
        double share = count[i] / (double)NKEYS;
        if (share < want[i] - 0.06 || share > want[i] + 0.06)
            fail_msg("kind %d host %d (weight %u) has %.3f of the keys, want %.3f", kind, i, h[i].weight,
                     share, want[i]);
    }
    chash_free(c);
}

static void test_ring(void **state)
{
    (void)state;
    check_determinism(RING);
    check_spread(RING, 0.06);
    /* Envoy rescales the ring to the host count (5 hosts: 205 entries each, 4 hosts: 256), so the staying
     * hosts' new entries take some keys from one another: 13 % here, against 80 % for a modulo hash. */
    check_disruption(RING, 0.2);
    check_weights(RING);
}

static void test_maglev(void **state)
{
    (void)state;
    check_determinism(MAGLEV);
    check_spread(MAGLEV, 0.01); /* Maglev's table balances to within a slot or so per host */
    check_disruption(MAGLEV, 0.05);
    check_weights(MAGLEV);
}

/* Envoy's Maglev: every slot is filled, and the hosts' slot counts differ by at most one with equal weights.
 */
static void test_maglev_table(void **state)
{
    (void)state;
    char names[7][48];
    struct chash_host h[7];
    hosts_n(h, names, 7);
    struct chash *c = build(MAGLEV, h, 7, 251);
    assert_int_equal(chash_size(c), 251);
    unsigned count[7] = {0};
    for (uint64_t s = 0; s < 251; s++)
        count[chash_pick(c, s)]++;
    unsigned mn = 251, mx = 0;
    for (int i = 0; i < 7; i++) {
        if (count[i] < mn) mn = count[i];
        if (count[i] > mx) mx = count[i];
    }
    assert_true(mx - mn <= 1);
    chash_free(c);
}

static void test_bad_input(void **state)
{
    (void)state;
    struct chash *c = NULL;
    struct chash_host h[2] = {{"a:1", 1}, {"b:1", 0}};
    assert_int_equal(chash_ring_build(h, 0, 0, &c), -EINVAL);
    assert_int_equal(chash_ring_build(h, 2, 0, &c), -EINVAL);     /* weight 0 */
    assert_int_equal(chash_maglev_build(h, 1, 100, &c), -EINVAL); /* not a prime */
    assert_int_equal(chash_ring_build(h, 1, CHASH_RING_MAX + 1ull, &c), -EINVAL);
    assert_int_equal(chash_pick(NULL, 1), -1);
    /* one host takes every key */
    assert_int_equal(chash_ring_build(h, 1, 16, &c), 0);
    for (unsigned i = 0; i < 100; i++)
        assert_int_equal(chash_pick(c, key_hash(i)), 0);
    chash_free(c);
    /* a retry's attempt moves the pick: the ring to a later entry, Maglev to another slot */
    char names[3][48];
    struct chash_host hs[3];
    hosts_n(hs, names, 3);
    for (int kind = 0; kind < 2; kind++) {
        struct chash *t = build(kind, hs, 3, kind == RING ? 0 : 251);
        int moved = 0;
        for (unsigned i = 0; i < 100; i++) {
            uint64_t k = key_hash(i);
            assert_int_equal(chash_pick_attempt(t, k, 0), chash_pick(t, k));
            int a1 = chash_pick_attempt(t, k, 1);
            assert_true(a1 >= 0 && a1 < 3);
            moved += a1 != chash_pick(t, k);
        }
        assert_true(moved > 20);
        chash_free(t);
    }
    /* the key hash is xxHash64 (a known vector: XXH64("", 0) = 0xef46db3751d8e999) */
    assert_true(chash_xxh64("", 0, 0) == 0xef46db3751d8e999ull);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ring),
        cmocka_unit_test(test_maglev),
        cmocka_unit_test(test_maglev_table),
        cmocka_unit_test(test_bad_input),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
