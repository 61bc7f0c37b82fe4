/* Consistent-hash micro-benchmark (src/mesh/chash.c): the cost of one pick (the request key's xxHash64 plus
 * the ring's binary search or the Maglev table's lookup) and of one table build, for 10, 100 and 1000 hosts,
 * ring hash (minimum ring 1024) and Maglev (table 65537), as the waypoint's DestinationRule consistentHash
 * uses them.
 *
 * Usage: build/bench/bench_chash [--quick]
 * Prints ns per pick and ms per build; figures compare within one run on one machine. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mesh/chash.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    int quick = argc > 1 && !strcmp(argv[1], "--quick");
    const size_t sizes[] = {10, 100, 1000};
    const unsigned picks = quick ? 200000 : 5000000;
    printf("%-8s %6s %12s %12s %10s\n", "lb", "hosts", "entries", "ns/pick", "ms/build");
    for (int kind = 0; kind < 2; kind++) {
        for (size_t si = 0; si < 3; si++) {
            size_t n = sizes[si];
            struct chash_host *h = calloc(n, sizeof(*h));
            char(*keys)[32] = calloc(n, sizeof(*keys));
            if (!h || !keys) return 1;
            for (size_t i = 0; i < n; i++) {
                snprintf(keys[i], sizeof(keys[i]), "10.%zu.%zu.%zu:8080", i >> 16, (i >> 8) & 255, i & 255);
                h[i] = (struct chash_host){keys[i], 1};
            }
            struct chash *c = NULL;
            int builds = quick ? 2 : 10;
            double t0 = now_s();
            for (int b = 0; b < builds; b++) {
                chash_free(c);
                c = NULL;
                if ((kind ? chash_maglev_build(h, n, 0, &c) : chash_ring_build(h, n, 0, &c)) != 0) return 1;
            }
            double build_ms = (now_s() - t0) * 1000 / builds;
            /* a request's key: a header value that changes per request, hashed then looked up */
            char key[32];
            unsigned long long sink = 0;
            t0 = now_s();
            for (unsigned i = 0; i < picks; i++) {
                int kl = snprintf(key, sizeof(key), "user-%u", i);
                sink += (unsigned long long)chash_pick(c, chash_xxh64(key, (size_t)kl, 0));
            }
            double ns = (now_s() - t0) * 1e9 / picks;
            printf("%-8s %6zu %12zu %12.1f %10.3f\n", kind ? "maglev" : "ring", n, chash_size(c), ns,
                   build_ms);
            if (sink == 42) puts(""); /* keeps the loop */
            chash_free(c);
            free(h);
            free(keys);
        }
    }
    return 0;
}
