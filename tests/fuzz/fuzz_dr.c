/* libFuzzer target for the DestinationRule model and the consistent-hash tables (src/mesh/destination_rule.c,
 * src/mesh/chash.c). The first byte picks the mode:
 *   0: the rest is a zmesh.v1.DestinationRule encoding, added to a builder as "app/d";
 *   1: the rest describes hosts (a length-prefixed key and a weight byte each) for a ring and a Maglev table,
 *      then 8-byte hashes to pick with.
 * Besides memory safety it checks the contract:
 *   - l7_builder_add returns 0, -EINVAL or -ENOMEM; on -EINVAL the message names the resource
 *     ("DestinationRule app/d: ");
 *   - an accepted rule is found for its Service, and every (subset, port) policy has a known load balancer,
 *     a Maglev table size that is a prime, and a ring size within bounds;
 *   - a table built from n hosts picks an index below n, the same for the same hash. */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mesh/chash.h"
#include "mesh/destination_rule.h"
#include "mesh/l7.h"

static void check_policy(const struct dr_policy *p)
{
    if (!p->lb) return;
    if (p->lb->lb > DR_LB_MAGLEV) abort();
    if (p->lb->lb == DR_LB_MAGLEV && (p->lb->table_size < 2 || p->lb->table_size > DR_MAGLEV_MAX)) abort();
    if (p->lb->lb == DR_LB_RING_HASH && (!p->lb->ring_size || p->lb->ring_size > DR_RING_MAX)) abort();
    if (p->outlier && (p->outlier->max_ejection_percent > 100 || p->outlier->min_health_percent > 100))
        abort();
}

static void rule_mode(const uint8_t *d, size_t n)
{
    struct l7_builder *b = l7_builder_new();
    if (!b) return;
    char err[512];
    int rc = l7_builder_add(b, L7_TYPE_URL_DESTINATION_RULE, "app/d", d, n, err, sizeof(err));
    if (rc != 0 && rc != -EINVAL && rc != -ENOMEM) abort();
    if (rc == -EINVAL && strncmp(err, "DestinationRule app/d: ", 23)) abort();
    struct l7_config *c = l7_builder_finish(b);
    if (c && rc == 0 && l7_config_n_destination_rules(c) != 1) abort();
    l7_config_unref(c);
    if (rc) return;
    /* the same bytes decoded into a table of its own, to walk the rule */
    struct dr_table *t = NULL;
    if (dr_table_add(&t, "app/d", d, n, err, sizeof(err)) != 0 || dr_table_finish(t) != 0) {
        dr_table_free(t);
        return;
    }
    const struct dr_rule *r = dr_table_at(t, 0);
    if (!r || dr_table_find(t, r->svc_ns, r->svc_name) != r) abort();
    static const uint16_t ports[] = {0, 1, 80, 8080, 65535};
    for (size_t p = 0; p < sizeof(ports) / sizeof(ports[0]); p++) {
        struct dr_policy pol = dr_policy_for(r, NULL, ports[p]);
        check_policy(&pol);
        for (size_t i = 0; i < r->n_subsets; i++) {
            pol = dr_policy_for(r, &r->subsets[i], ports[p]);
            check_policy(&pol);
        }
    }
    for (size_t i = 0; i < r->n_subsets; i++) {
        const struct dr_subset *s = &r->subsets[i];
        if (dr_subset_find(r, s->name) != s) abort();
        for (size_t e = 0; e < s->n_endpoints; e++) {
            char ns[600];
            const char *slash = strchr(s->endpoints[e], '/');
            if (!slash) abort();
            snprintf(ns, sizeof(ns), "%.*s", (int)(slash - s->endpoints[e]), s->endpoints[e]);
            if (strlen(ns) < sizeof(ns) - 1 && !strchr(slash + 1, '/') && !dr_subset_has(s, ns, slash + 1))
                abort();
        }
    }
    dr_table_free(t);
}

static void hash_mode(const uint8_t *d, size_t n)
{
    struct chash_host hosts[64];
    char keys[64][65];
    size_t nh = 0, i = 0;
    while (i < n && nh < 64) {
        size_t kl = d[i++] % 64;
        if (i + kl + 1 > n) break;
        memcpy(keys[nh], d + i, kl);
        keys[nh][kl] = 0;
        i += kl;
        hosts[nh] = (struct chash_host){keys[nh], d[i++]};
        nh++;
    }
    struct chash *ring = NULL, *mag = NULL;
    int r1 = chash_ring_build(hosts, nh, 16 + (n % 64), &ring);
    int r2 = chash_maglev_build(hosts, nh, 251, &mag);
    if ((r1 && r1 != -EINVAL && r1 != -ENOMEM) || (r2 && r2 != -EINVAL && r2 != -ENOMEM)) abort();
    for (; i + 8 <= n; i += 8) {
        uint64_t h;
        memcpy(&h, d + i, 8);
        if (ring) {
            int a = chash_pick(ring, h);
            if (a < 0 || (size_t)a >= nh || a != chash_pick(ring, h)) abort();
        }
        if (mag) {
            int a = chash_pick(mag, h);
            if (a < 0 || (size_t)a >= nh || a != chash_pick(mag, h)) abort();
        }
    }
    chash_free(ring);
    chash_free(mag);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!size) return 0;
    if (data[0] % 2 == 0) {
        rule_mode(data + 1, size - 1);
    } else {
        hash_mode(data + 1, size - 1);
    }
    return 0;
}
