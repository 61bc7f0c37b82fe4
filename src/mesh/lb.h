/* Service endpoint choice, as Istio ztunnel does it (ztunnel src/state.rs
 * `find_upstream_from_service`, `load_balance`, `pick_workload_destination_or_resolve`).
 *
 * The endpoints of service "ns/host" are the workloads whose `services` map has that key. They are
 * indexed when the snapshot is built (snapshot_finalize() calls lb_index_build()), so nothing here scans
 * the workloads of the snapshot. Per service and per service port, the endpoints that can ever be chosen
 * (health policy, a target port, an IP of an allowed family) are kept with a prefix sum of capacities and,
 * for Failover/Strict services, sorted by the service's routing preferences, so one pick costs
 * O(P log n) string comparisons (P = number of routing preferences, n = eligible endpoints) and never
 * allocates. Details and complexity: lb.c.
 *
 * Memory: everything returned is borrowed from the snapshot (valid while the caller holds a reference). */
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "mesh/model.h"

/* The client workload: its locality, node, cluster and network drive Failover/Strict. */
struct lb_source {
    const struct workload *wl; /* NULL: matches no routing preference */
};

struct lb_choice {
    const struct workload *wl; /* chosen endpoint, borrowed from the snapshot */
    struct ip_addr ip;         /* endpoint IP to dial: orig_dst when it is one of the workload's IPs, else the
                                  first IP allowed by the service's ipFamilies in orig_dst's family, else the
                                  first allowed IP */
    uint16_t port;             /* target port: the workload's own map for the service first, then the
                                  service's target (> 0) */
};

/* Resolves a connection to service svc (borrowed from s) on service port `port`, the original destination
 * orig_dst (may be NULL) being one of its VIPs. Filters endpoints (UNHEALTHY dropped unless healthPolicy
 * AllowAll; endpoints without a target port dropped; workloads with no IP allowed by ipFamilies skipped),
 * then chooses by mode: Standard = random weighted by capacity; Failover = only the endpoints with the
 * highest rank (number of leading routing preferences equal to src's), weighted; Strict = as Failover but
 * the rank must be all of the preferences. rnd is a uniformly random 64-bit value supplied by the caller.
 * Returns 0 and fills *out; -ENOENT when no endpoint is eligible, the port is not a port of svc, or every
 * eligible endpoint has capacity 0 (ztunnel's NoHealthyUpstream); -EAGAIN for a Passthrough service (the
 * caller dials the original destination); -EINVAL when svc is not from s. */
int lb_pick(const struct snapshot *s, const struct service *svc, uint16_t port, const struct lb_source *src,
            const struct ip_addr *orig_dst, uint64_t rnd, struct lb_choice *out);

/* The endpoints lb_pick would choose among for (svc, port, src), as a borrowed slice of *n workloads
 * (also those of capacity 0); *rank gets the rank they share (0 for Standard). Returns 0, -ENOENT (no
 * eligible endpoint; *n = 0), -EAGAIN (Passthrough) or -EINVAL. For retries, tests and /config_dump. */
int lb_candidates(const struct snapshot *s, const struct service *svc, uint16_t port,
                  const struct lb_source *src, const struct workload *const **eps, size_t *n, unsigned *rank);

/* The workload's value for a routing-preference scope (region, zone, subzone, node, cluster, network). */
const char *lb_scope_value(const struct workload *w, uint8_t scope);

/* The number of endpoints of a service (every workload naming it, before any filtering); 0 when svc is
 * not from s. O(1). */
size_t snapshot_service_n_endpoints(const struct snapshot *s, const struct service *svc);
/* All endpoints of svc in config order, as a borrowed array of *n workloads (NULL and 0 when none). */
const struct workload *const *snapshot_service_endpoints(const struct snapshot *s, const struct service *svc,
                                                         size_t *n);
/* Picks the endpoint IP as lb_pick does (orig_dst may be NULL). Returns 0, or -ENOENT when w has no IP
 * allowed by ip_families (enum ip_families). */
int lb_endpoint_ip(const struct workload *w, uint8_t ip_families, const struct ip_addr *orig_dst,
                   struct ip_addr *out);
