/* DestinationRule in the waypoint: the zmesh.v1.DestinationRule resources
 * (proto/zmesh/destination_rule.proto), decoded and validated into rules that an l7_config (src/mesh/l7.h)
 * holds and looks up by Service, and the policy that applies to one (subset, port) of a Service. Semantics:
 * istio/api networking/v1alpha3/destination_rule.proto as istiod applies it (istio/istio
 * pilot/pkg/networking/core/cluster_traffic_policy.go selectTrafficPolicyComponents, MergeTrafficPolicy).
 *
 * Memory: a dr_table owns its rules and everything they point to (strings never NULL, "" when unset); an
 * l7_config that took the table frees it with the config. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DR_TYPE_URL "type.googleapis.com/zmesh.v1.DestinationRule"

/* Bounds: a resource beyond one is refused with the field named, never truncated. */
#define DR_MAX_SUBSETS 64
#define DR_MAX_LABELS 32
#define DR_MAX_PORTS 64
#define DR_MAX_ENDPOINTS 4096
#define DR_MAX_STRING 1024
/* Envoy's defaults and bounds (envoyproxy/envoy ring_hash_lb.h DefaultMinRingSize, maglev_lb.h
 * DefaultTableSize; ring sizes at most 8M as Envoy's maximum_ring_size default). */
#define DR_RING_DEFAULT 1024u
#define DR_RING_MAX (8u * 1024 * 1024)
#define DR_MAGLEV_DEFAULT 65537u
#define DR_MAGLEV_MAX 5000011u

/* The load balancer of a (subset, port): LEAST_REQUEST is the default of Istio's clusters. */
enum dr_lb {
    DR_LB_LEAST_REQUEST = 0,
    DR_LB_ROUND_ROBIN,
    DR_LB_RANDOM,
    DR_LB_PASSTHROUGH,
    DR_LB_RING_HASH,
    DR_LB_MAGLEV,
};
const char *dr_lb_to_str(int lb);
/* What a consistent hash hashes. */
enum dr_hash_key { DR_HASH_NONE = 0, DR_HASH_HEADER, DR_HASH_COOKIE, DR_HASH_SOURCE_IP, DR_HASH_QUERY };

struct dr_lb_policy {
    uint8_t lb;              /* enum dr_lb */
    uint8_t hash_key;        /* enum dr_hash_key (RING_HASH, MAGLEV) */
    const char *hash_name;   /* header (lower-case), cookie or query parameter name; "" otherwise */
    const char *cookie_path; /* "" = none */
    bool cookie_ttl;         /* a cookie is generated when absent */
    uint64_t cookie_ttl_ms;
    uint64_t ring_size;  /* RING_HASH: minimum ring size */
    uint64_t table_size; /* MAGLEV: table size (prime) */
};
struct dr_conn_pool {
    uint32_t max_connections, http1_max_pending_requests, http2_max_requests, max_requests_per_connection,
        max_retries;                              /* 0 = unlimited */
    uint64_t connect_timeout_ms, idle_timeout_ms; /* 0 = default */
};
struct dr_outlier {
    uint32_t consecutive_5xx, consecutive_gateway; /* 0 = off */
    uint64_t interval_ms, base_ejection_ms;
    uint32_t max_ejection_percent, min_health_percent;
};
/* What applies to one (subset, port): each part NULL when no rule sets it (the waypoint's defaults). */
struct dr_policy {
    const struct dr_lb_policy *lb;
    const struct dr_conn_pool *pool;
    const struct dr_outlier *outlier;
};

struct dr_port_policy {
    uint16_t port;
    struct dr_policy p; /* parts the entry leaves out are NULL: per-port settings do not inherit */
};
struct dr_traffic {
    struct dr_policy base;
    const struct dr_port_policy *ports;
    size_t n_ports;
};
struct dr_label {
    const char *key, *value;
};
struct dr_subset {
    const char *name;
    const struct dr_label *labels;
    size_t n_labels;
    const char *const *endpoints; /* "ns/pod", sorted (strcmp) */
    size_t n_endpoints;
    const struct dr_traffic *traffic; /* NULL: none */
};
struct dr_rule {
    const char *key;               /* "<ns>/<name>" of the DestinationRule */
    const char *host;              /* as written */
    const char *svc_ns, *svc_name; /* the Service */
    int64_t created;
    const struct dr_traffic *traffic; /* NULL: none */
    const struct dr_subset *subsets;
    size_t n_subsets;
};

struct dr_table;

/* Adds one resource to *t (created on first use): pb[0..len) a zmesh.v1.DestinationRule, name its
 * "<namespace>/<name>". On error nothing is added, err gets "DestinationRule ns/name: subsets[1].labels: ..."
 * and the return is -EINVAL, -EEXIST (name added twice) or -ENOMEM. Nothing of pb is kept. */
int dr_table_add(struct dr_table **t, const char *name, const uint8_t *pb, size_t len, char *err,
                 size_t errlen);
/* Derives the lookup index (t may be NULL). Returns 0 or -ENOMEM. */
int dr_table_finish(struct dr_table *t);
/* Frees t and its rules (NULL is a no-op). */
void dr_table_free(struct dr_table *t);
size_t dr_table_n(const struct dr_table *t);
/* The i-th rule added (i < dr_table_n), borrowed from t. */
const struct dr_rule *dr_table_at(const struct dr_table *t, size_t i);

/* The rule for Service svc_ns/svc_name, or NULL: of several, the oldest, then the first by name (istiod keeps
 * the first of conflicting rules). Borrowed from t. */
const struct dr_rule *dr_table_find(const struct dr_table *t, const char *svc_ns, const char *svc_name);

/* The subset named name in r, or NULL. */
const struct dr_subset *dr_subset_find(const struct dr_rule *r, const char *name);
/* True when pod "ns/name" is one of s's endpoints. */
bool dr_subset_has(const struct dr_subset *s, const char *ns, const char *name);

/* The policy for traffic to subset s (NULL: the Service as a whole) on service port port: the rule's policy,
 * its port-level entry for port replacing all three parts, then the subset's policy replacing the parts it
 * sets, then the subset's port-level entry for port replacing all three. r may be NULL (all parts NULL). */
struct dr_policy dr_policy_for(const struct dr_rule *r, const struct dr_subset *s, uint16_t port);
