/* Consistent hashing as Envoy's load balancers do it, for DestinationRule's consistentHash in the waypoint:
 * ring hash (envoyproxy/envoy source/extensions/load_balancing_policies/ring_hash/ring_hash_lb.cc) and Maglev
 * (source/extensions/load_balancing_policies/maglev/maglev_lb.cc). Both hash with xxHash64 (Debian's
 * libxxhash), as Envoy's HashUtil::xxHash64, so a host set and a key pick the host Envoy would pick given the
 * same host keys ("ip:port", Envoy's hashKey without use_hostname_for_hashing).
 *
 * A table is immutable once built: any number of threads may pick from it. */
#pragma once
#include <stddef.h>
#include <stdint.h>

/* Envoy's bounds: ring sizes at most 8M entries, a Maglev table a prime at most 5000011 (these are zmesh's
 * allocation bounds; Envoy's DefaultMaxRingSize is 8M). */
#define CHASH_RING_MAX (8u * 1024 * 1024)
#define CHASH_MAGLEV_MAX 5000011u
#define CHASH_MAX_HOSTS 65536u

struct chash_host {
    const char *key; /* hashed to place the host ("ip:port"); borrowed during the build only */
    uint32_t weight; /* > 0 */
};
struct chash;

/* xxHash64 of data[0..len) with seed 0: the request key's hash (Envoy's hash policies) and the ring's. */
uint64_t chash_xxh64(const void *data, size_t len, uint64_t seed);

/* A ring of at least min_ring entries (0: 1024), each host getting entries in proportion to its normalized
 * weight, the least-weighted a whole number. Returns 0 and *out, -EINVAL (no host, a weight 0, min_ring over
 * CHASH_RING_MAX) or -ENOMEM. */
int chash_ring_build(const struct chash_host *hosts, size_t n, uint64_t min_ring, struct chash **out);
/* A Maglev table of table_size entries (0: 65537; a prime), hosts ordered by key, each filling slots in
 * proportion to its weight (Envoy's target_weight scheme). Returns 0 and *out, -EINVAL or -ENOMEM. */
int chash_maglev_build(const struct chash_host *hosts, size_t n, uint64_t table_size, struct chash **out);
/* The index (into the hosts the table was built from) of the host for hash; -1 when the table is empty. */
int chash_pick(const struct chash *c, uint64_t hash);
/* The same for a retry's attempt-th pick (0: chash_pick), as Envoy mutates it to reach another host: the ring
 * takes the entry attempt places further, Maglev the slot of hash ^ (~0 - attempt + 1). */
int chash_pick_attempt(const struct chash *c, uint64_t hash, uint32_t attempt);
/* Entries of the ring / slots of the table (for tests and /config_dump). */
size_t chash_size(const struct chash *c);
void chash_free(struct chash *c);
