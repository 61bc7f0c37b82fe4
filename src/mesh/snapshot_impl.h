/* Internals shared by the snapshot builder (builder.c), the YAML walker (config.c), lb.c and model.c.
 * Not for use outside src/mesh/: other layers build snapshots through builder.h. */
#pragma once
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "mesh/model.h"

/* A bump allocator: all of a snapshot's strings and arrays live in a few large chunks, so building is
 * cheap and freeing is a walk over the chunk list. */
struct arena_chunk;
struct arena {
    struct arena_chunk *head;
    size_t bytes; /* total allocated from malloc, for stats */
};
/* Returns n zeroed bytes aligned to 16, owned by a, or NULL on ENOMEM. */
void *arena_alloc(struct arena *a, size_t n);
/* Copies n bytes into a (NULL when n == 0 or on ENOMEM; check n first). */
void *arena_memdup(struct arena *a, const void *p, size_t n);
/* Copies s[0..n) plus a NUL into a. NULL on ENOMEM. */
char *arena_strndup(struct arena *a, const char *s, size_t n);
void arena_free(struct arena *a);
/* Forgets everything allocated from a but keeps one chunk for reuse (a scratch arena per resource). */
void arena_reset(struct arena *a);

/* Open-addressing hash table (linear probing, power-of-two capacity, load <= 1/2) from a byte-string
 * key to a 32-bit value (an index into a snapshot array). Keys are borrowed: they must outlive the
 * table (they live in the snapshot's arena). */
struct htab_slot {
    uint64_t hash;
    const char *key; /* NULL = empty slot */
    uint32_t keylen;
    uint32_t val;
};
struct htab {
    struct htab_slot *slots;
    size_t cap, n;
};
uint64_t htab_hash(const void *key, size_t len);
/* Inserts key -> val. Returns 0, -EEXIST (and the existing value in *old when old != NULL) if the key is
 * present (the table is unchanged), or -ENOMEM. */
int htab_insert(struct htab *t, const char *key, size_t keylen, uint32_t val, uint32_t *old);
/* Returns true and the value in *val when key is present. */
bool htab_find(const struct htab *t, const char *key, size_t keylen, uint32_t *val);
/* Points an existing key at val (the key pointer stays the first one inserted). Returns 0 or -ENOENT. */
int htab_set(struct htab *t, const char *key, size_t keylen, uint32_t val);
void htab_free(struct htab *t);

/* Longest key built by the helpers below: a network name (<= 1024 bytes) + NUL + family + 16 bytes. */
#define SNAP_KEY_MAX 1100
/* Builds the (network, ip) key into buf (SNAP_KEY_MAX bytes). Returns its length, or 0 when the network
 * is too long to ever have been stored. */
size_t snap_ip_key(char *buf, const char *network, const struct ip_addr *ip);

/* Copies s for an error message: at most 64 bytes then "...", non-printable bytes as '?'. Returns out. */
#define MESH_PRINTABLE_MAX 80
const char *mesh_printable(const char *s, char out[MESH_PRINTABLE_MAX]);

struct snapshot {
    atomic_uint refs;
    struct arena arena;
    struct workload *workloads; /* malloc'd array, owned */
    size_t n_workloads;
    struct service *services;
    size_t n_services;
    struct policy *policies;
    size_t n_policies;
    struct htab wl_by_ip, wl_by_uid, wl_by_name; /* values index workloads[] */
    struct htab svc_by_vip, svc_by_host;         /* values index services[] */
    struct htab pol_by_name;                     /* values index policies[] */
    /* Built by snapshot_finalize(): Namespace-scoped policies grouped by namespace, and Global ones. */
    struct htab pol_by_ns; /* namespace -> index into pol_ns_groups */
    struct pol_group {
        uint32_t start, n; /* range in pol_ns_list */
    } * pol_ns_groups;
    const struct policy **pol_ns_list;
    const struct policy **pol_global;
    size_t n_pol_global;
    /* Built by lb_index_build() (lb.c) from snapshot_finalize(): per service (parallel to services[]), its
     * endpoints and load-balancing pools. In the arena; NULL when there are no services. */
    struct lb_svc *lb_svcs;
};

/* A new empty snapshot with refcount 1, or NULL on ENOMEM. */
struct snapshot *snapshot_new(void);
/* Builds the derived indexes (policies by namespace, service endpoints) once every array is final.
 * Returns 0 or -ENOMEM. */
int snapshot_finalize(struct snapshot *s);
/* The endpoint index and LB pools (lb.c); called by snapshot_finalize(). Returns 0, -ENOMEM or -E2BIG. */
int lb_index_build(struct snapshot *s);
