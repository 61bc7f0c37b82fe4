/* The mesh model: workloads, services and L4 authorization policies, held in an immutable,
 * reference-counted snapshot. Field names and enum values follow Istio's workload.proto and
 * authorization.proto (istio/ztunnel proto/workload.proto, proto/authorization.proto) so that xDS and the
 * local YAML config produce the same structures.
 *
 * Memory: every pointer reachable from a snapshot (strings, arrays, nested structs) is owned by
 * that snapshot and stays valid until its last reference is dropped with snapshot_unref(). Strings
 * are NUL-terminated and never NULL ("" when unset); arrays are NULL only when their count is 0. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/net.h"

/* Workload.tunnel_protocol. LEGACY_ISTIO_MTLS is rejected, as ztunnel does. */
enum wl_protocol { WL_PROTO_TCP = 0, WL_PROTO_HBONE = 1 };
/* ApplicationTunnel.protocol. */
enum wl_app_tunnel { WL_APP_TUNNEL_NONE = 0, WL_APP_TUNNEL_PROXY = 1 };
/* Workload.network_mode: host-network workloads share the node IP, so they are not indexed by IP. */
enum wl_network_mode { WL_NET_STANDARD = 0, WL_NET_HOST = 1 };
/* LoadBalancing.Scope (routing preferences). */
enum lb_scope {
    LB_SCOPE_UNSPECIFIED = 0,
    LB_SCOPE_REGION = 1,
    LB_SCOPE_ZONE = 2,
    LB_SCOPE_SUBZONE = 3,
    LB_SCOPE_NODE = 4,
    LB_SCOPE_CLUSTER = 5,
    LB_SCOPE_NETWORK = 6,
};
/* LoadBalancing.Mode; the local config's "Standard" is the proto's UNSPECIFIED_MODE. */
enum lb_mode { LB_MODE_STANDARD = 0, LB_MODE_STRICT = 1, LB_MODE_FAILOVER = 2, LB_MODE_PASSTHROUGH = 3 };
/* LoadBalancing.HealthPolicy. */
enum lb_health { LB_HEALTH_ONLY_HEALTHY = 0, LB_HEALTH_ALLOW_ALL = 1 };
/* Service.ip_families; AUTOMATIC (0) when unset. */
enum ip_families {
    IP_FAMILIES_AUTOMATIC = 0,
    IP_FAMILIES_IPV4_ONLY = 1,
    IP_FAMILIES_IPV6_ONLY = 2,
    IP_FAMILIES_DUAL = 3
};

struct port_map {
    uint16_t port;   /* service port, 1..65535 */
    uint16_t target; /* target port; 0 = "use the endpoint's own mapping" (services only) */
    /* Services only: the port's declared protocol (enum port_app_protocol, workload.proto AppProtocol), which
     * the waypoint uses to skip protocol detection; 0 = unknown. */
    uint8_t app_protocol;
};

/* workload.proto's AppProtocol values. */
enum port_app_protocol {
    PORT_PROTO_UNKNOWN = 0,
    PORT_PROTO_HTTP11 = 1,
    PORT_PROTO_HTTP2 = 2,
    PORT_PROTO_GRPC = 3,
    PORT_PROTO_TCP = 4,
    PORT_PROTO_TLS = 5,
};

/* One entry of Workload.services: the port map this workload uses for service key "ns/host".
 * A workload's entries are sorted by key (strcmp) and each ports array by port. */
struct wl_service_ports {
    const char *key; /* "ns/host" */
    const struct port_map *ports;
    size_t n_ports;
};

struct locality {
    const char *region, *zone, *subzone; /* "" when unset, never NULL */
};

/* GatewayAddress: either an address ("network/ip": is_host false, network + ip) or a namespaced
 * hostname ("ns/host": is_host true, ns + host). Unused strings are "". hbone_port defaults to 15008. */
struct gateway_addr {
    bool set;
    bool is_host;
    const char *network;
    struct ip_addr ip;
    const char *ns, *host;
    uint16_t hbone_port;
};

struct workload {
    const char *uid, *name, *namespace_, *hostname, *network, *trust_domain, *service_account, *node,
        *cluster_id, *canonical_name, *canonical_revision, *workload_type,
        *workload_name; /* "" when unset, never NULL */
    const struct ip_addr *ips;
    size_t n_ips;
    enum wl_protocol protocol;
    bool healthy;
    uint32_t capacity;
    struct locality locality;
    struct gateway_addr waypoint, network_gateway;
    uint8_t app_tunnel_protocol; /* enum wl_app_tunnel: 0 = none; 1 = PROXY */
    uint16_t app_tunnel_port;    /* 0 when unset */
    const struct wl_service_ports *services;
    size_t n_services;
    const char *const *authorization_policies; /* "ns/name" */
    size_t n_authorization_policies;
    uint8_t network_mode;  /* enum wl_network_mode (extension of the required layout) */
    const char *spiffe_id; /* "spiffe://<td>/ns/<ns>/sa/<sa>", built once at load ("" if too long) */
};

/* A "network/ip" address; network "" is the default network. */
struct net_addr {
    const char *network;
    struct ip_addr ip;
};

struct service {
    const char *name, *namespace_, *hostname;
    const struct net_addr *vips;
    size_t n_vips;
    const struct port_map *ports; /* sorted by port */
    size_t n_ports;
    const char *const *subject_alt_names;
    size_t n_sans;
    struct gateway_addr waypoint;
    /* load balancer: */
    const uint8_t *routing_prefs; /* enum lb_scope, in preference order */
    size_t n_routing_prefs;
    uint8_t lb_mode;       /* enum lb_mode */
    uint8_t health_policy; /* enum lb_health */
    uint8_t ip_families;   /* enum ip_families */
};

/* ---- L4 authorization (authorization.proto). Semantics: istio/ztunnel src/rbac.rs, src/state.rs assert_rbac
 * ---- */

enum string_match_kind { SM_EXACT = 0, SM_PREFIX = 1, SM_SUFFIX = 2, SM_PRESENCE = 3 };
struct string_match {
    uint8_t kind;      /* enum string_match_kind */
    const char *value; /* "" for SM_PRESENCE */
};
/* An address block; host bits are kept as written (cidr_contains masks them). */
struct cidr {
    struct ip_addr ip;
    uint8_t len; /* prefix length: 0..32 for IPv4, 0..128 for IPv6; a bare IP gets the full length */
};
struct sa_match {
    const char *namespace_, *service_account;
};
/* A Match: AND across the populated lists; a positive list needs any hit, a not_ list needs none.
 * A Match with every list empty matches nothing. */
struct auth_match {
    const struct string_match *namespaces, *not_namespaces, *principals, *not_principals;
    size_t n_namespaces, n_not_namespaces, n_principals, n_not_principals;
    const struct sa_match *service_accounts, *not_service_accounts;
    size_t n_service_accounts, n_not_service_accounts;
    const struct cidr *source_ips, *not_source_ips, *destination_ips, *not_destination_ips;
    size_t n_source_ips, n_not_source_ips, n_destination_ips, n_not_destination_ips;
    const uint16_t *destination_ports, *not_destination_ports;
    size_t n_destination_ports, n_not_destination_ports;
};
/* A clause is the OR of its matches (the YAML's innermost list). */
struct auth_clause {
    const struct auth_match *matches;
    size_t n_matches;
};
/* A rule is the AND of its clauses (an empty clause is true). A policy matches if any rule does. */
struct auth_rule {
    const struct auth_clause *clauses;
    size_t n_clauses;
};
enum policy_scope { POLICY_SCOPE_GLOBAL = 0, POLICY_SCOPE_NAMESPACE = 1, POLICY_SCOPE_WORKLOAD_SELECTOR = 2 };
enum policy_action { POLICY_ALLOW = 0, POLICY_DENY = 1 };
struct policy {
    const char *name, *namespace_;
    uint8_t scope;  /* enum policy_scope */
    uint8_t action; /* enum policy_action */
    bool dry_run;
    const struct auth_rule *rules; /* OR; no rules = never matches */
    size_t n_rules;
};

struct snapshot; /* opaque, immutable once published */

/* Takes one more reference (atomic; any thread). */
void snapshot_ref(struct snapshot *s);
/* Drops a reference (atomic); frees the snapshot and everything it owns at zero. NULL is a no-op. */
void snapshot_unref(struct snapshot *s);
/* Current reference count (for tests and /config_dump; racy by nature). */
unsigned snapshot_refcount(const struct snapshot *s);

/* Lookups: O(1) hash probes. Results are borrowed from s (valid while the caller holds a reference);
 * NULL on a miss. network "" is the default network. */
const struct workload *snapshot_workload_by_ip(const struct snapshot *s, const char *network,
                                               const struct ip_addr *ip);
const struct workload *snapshot_workload_by_uid(const struct snapshot *s, const char *uid);
/* When several workloads share (ns, name), the first in the config wins. */
const struct workload *snapshot_workload_by_name(const struct snapshot *s, const char *ns, const char *name);
/* When several services share a VIP, the first in the config wins. */
const struct service *snapshot_service_by_vip(const struct snapshot *s, const char *network,
                                              const struct ip_addr *ip);
const struct service *snapshot_service_by_host(const struct snapshot *s, const char *ns_slash_host);
const struct policy *snapshot_policy_by_name(const struct snapshot *s, const char *ns_slash_name);
/* Namespace-scoped policies of namespace ns, in config order (*n = 0 and NULL when none). Borrowed from s. */
const struct policy *const *snapshot_namespace_policies(const struct snapshot *s, const char *ns, size_t *n);
/* Global-scoped policies, in config order (*n = 0 and NULL when none). Borrowed from s. */
const struct policy *const *snapshot_global_policies(const struct snapshot *s, size_t *n);

/* Iteration in config order; i must be < the matching count. Results are borrowed from s. */
size_t snapshot_n_workloads(const struct snapshot *s);
const struct workload *snapshot_workload_at(const struct snapshot *s, size_t i);
size_t snapshot_n_services(const struct snapshot *s);
const struct service *snapshot_service_at(const struct snapshot *s, size_t i);
size_t snapshot_n_policies(const struct snapshot *s);
const struct policy *snapshot_policy_at(const struct snapshot *s, size_t i);

/* Writes the workload's SPIFFE id "spiffe://<td>/ns/<ns>/sa/<sa>" (NUL-terminated) into buf.
 * Returns its length or -ENOSPC when buf is too small. */
int workload_spiffe_id(const struct workload *w, char *buf, size_t n);
/* Target port for service port svc_port on endpoint w (w may be NULL): 0 when the service has no such
 * port; else the workload's own port map for that service when it has a non-zero entry; else the
 * service's target port when > 0; else 0 (ztunnel drops such endpoints). */
uint16_t service_target_port(const struct service *svc, const struct workload *w, uint16_t svc_port);
/* The workload's port list for service key "ns/host" (binary search), or NULL. */
const struct wl_service_ports *workload_service_ports(const struct workload *w, const char *ns,
                                                      const char *host);
/* True when ip is inside block c (same family, first c->len bits equal). */
bool cidr_contains(const struct cidr *c, const struct ip_addr *ip);
/* Names of enum values as written in the local config (e.g. "HBONE", "Failover"); "?" if unknown. */
const char *lb_mode_name(uint8_t mode);
const char *lb_scope_name(uint8_t scope);
