/* The snapshot builder: the one way to build a snapshot, whatever the source (the LocalConfig YAML walker in
 * config.c today, the xDS resource store next). A feeder hands it resources as plain model structs; the
 * builder validates each one alone, applies ztunnel's defaults, copies it into the snapshot's arena, indexes
 * it and checks it against the resources added before it. A rejected resource leaves the builder as it was
 * (unless BUILDER_STRICT), so an xDS store can NACK it and go on with the others.
 *
 *     struct snapshot_builder *b;
 *     snapshot_builder_new(&b, &(struct builder_opts){0});
 *     if (builder_add_workload(b, &w, &err) == -EINVAL) nack(err.resource, err.path, err.reason);
 *     ...
 *     builder_finish(b, &snap);     (refcount 1; b is freed either way)
 *
 * Collisions between resources, as ztunnel's state resolves them when two xDS resources collide:
 *   - the same workload uid, service "ns/hostname" or policy "ns/name" as an earlier resource: the later
 *     resource is rejected alone (ztunnel's stores are keyed by these, so it would silently replace the
 *     earlier one; zmesh rejects loudly so the NACK names it);
 *   - the same (network, IP) as another workload: both are kept and the IP index holds the one ztunnel's
 *     WorkloadByAddr::get prefers (a pod over a non-pod uid, then HBONE over TCP, then the later one);
 *   - the same service VIP or workload (namespace, name): both kept, the index holds the first.
 * With BUILDER_STRICT (the LocalConfig file, all or nothing) a shared IP is an error too, and any rejection
 * fails the whole build. Nothing else rejects the whole snapshot except running out of memory. */
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "mesh/model.h"

/* Longest string the builder accepts in any field; longer keys could not be looked up. */
#define BUILDER_MAX_STR 1024
/* Default GatewayAddress.hbone_mtls_port when a destination is given without one. */
#define BUILDER_DEFAULT_HBONE_PORT 15008
#define BUILDER_DEFAULT_TRUST_DOMAIN "cluster.local"
#define BUILDER_DEFAULT_SERVICE_ACCOUNT "default"
#define BUILDER_DEFAULT_CLUSTER_ID "Kubernetes"

enum builder_kind { BUILDER_WORKLOAD = 0, BUILDER_SERVICE = 1, BUILDER_POLICY = 2 };

/* The field a finding points at. idx[] holds the list indexes along the way, in input order (see each). */
enum builder_field {
    BF_NONE = 0, /* the resource as a whole */
    BF_WL_UID,   /* string fields of a workload ... */
    BF_WL_NAME,
    BF_WL_NAMESPACE,
    BF_WL_HOSTNAME,
    BF_WL_NETWORK,
    BF_WL_TRUST_DOMAIN,
    BF_WL_SERVICE_ACCOUNT,
    BF_WL_NODE,
    BF_WL_CLUSTER_ID,
    BF_WL_CANONICAL_NAME,
    BF_WL_CANONICAL_REVISION,
    BF_WL_WORKLOAD_TYPE,
    BF_WL_WORKLOAD_NAME,
    BF_WL_LOCALITY,
    BF_WL_ADDRESSES, /* idx[0] = address */
    BF_WL_PROTOCOL,
    BF_WL_NETWORK_MODE,
    BF_WL_WAYPOINT,
    BF_WL_NETWORK_GATEWAY,
    BF_WL_APP_TUNNEL,
    BF_WL_SERVICES,      /* idx[0] = entry */
    BF_WL_SERVICE_PORTS, /* idx[0] = entry, idx[1] = port */
    BF_WL_AUTHZ,         /* idx[0] = policy name */
    BF_SVC_NAME,
    BF_SVC_NAMESPACE,
    BF_SVC_HOSTNAME,
    BF_SVC_VIPS,  /* idx[0] = address */
    BF_SVC_PORTS, /* idx[0] = port */
    BF_SVC_SANS,  /* idx[0] = name */
    BF_SVC_WAYPOINT,
    BF_SVC_ROUTING_PREFS, /* idx[0] = scope */
    BF_SVC_LB_MODE,
    BF_SVC_HEALTH_POLICY,
    BF_SVC_IP_FAMILIES,
    BF_POL_NAME,
    BF_POL_NAMESPACE,
    BF_POL_SCOPE,
    BF_POL_ACTION,
    BF_POL_RULES, /* idx[0] = rule, idx[1] = clause, idx[2] = match */
    /* One per Match list, in auth_match order; idx[0..2] as BF_POL_RULES, idx[3] = item. */
    BF_POL_NAMESPACES,
    BF_POL_NOT_NAMESPACES,
    BF_POL_PRINCIPALS,
    BF_POL_NOT_PRINCIPALS,
    BF_POL_SERVICE_ACCOUNTS,
    BF_POL_NOT_SERVICE_ACCOUNTS,
    BF_POL_SOURCE_IPS,
    BF_POL_NOT_SOURCE_IPS,
    BF_POL_DESTINATION_IPS,
    BF_POL_NOT_DESTINATION_IPS,
    BF_POL_DESTINATION_PORTS,
    BF_POL_NOT_DESTINATION_PORTS,
    BF_FIELD_COUNT
};

#define BUILDER_MAX_IDX 4

/* What the builder found wrong (or, for warnings, worth saying) about one resource. */
struct builder_err {
    enum builder_kind kind;
    enum builder_field field;
    uint32_t idx[BUILDER_MAX_IDX]; /* meaningful up to n_idx */
    unsigned n_idx;
    uint32_t other;     /* the earlier resource of the same kind a duplicate collides with, or UINT32_MAX */
    char resource[160]; /* the resource's key: uid, "ns/hostname" or "ns/name" (truncated, printable) */
    char path[192];     /* the field in workload.proto / authorization.proto names, e.g. "addresses[1]" */
    char reason[256];
    char detail[96]; /* warnings only: a short qualifier ("none", ...) */
};

struct builder_opts {
    /* LocalConfig semantics: a shared (network, IP) is an error and any rejection fails builder_finish. */
    bool strict;
    /* Called for each warning (a workload with no usable IP) with the finding; NULL logs it (target
     * "config") naming the resource. */
    void (*warn)(void *ud, const struct builder_err *w);
    void *warn_ud;
};

struct snapshot_builder;

/* Starts a snapshot. *out is owned by the caller until builder_finish() or builder_free(). Returns 0 or
 * -ENOMEM. opts is copied (NULL = defaults). */
int snapshot_builder_new(struct snapshot_builder **out, const struct builder_opts *opts);

/* Adds one resource. The input is borrowed: strings (NULL means "") and arrays are copied into the snapshot.
 * Arrays need not be sorted. Returns 0; -EINVAL when the resource is rejected (err says why; the builder is
 * unchanged unless strict); -ENOMEM or -E2BIG (too many resources), after which only builder_free() or a
 * failing builder_finish() remain. err may be NULL. */
int builder_add_workload(struct snapshot_builder *b, const struct workload *w, struct builder_err *err);
int builder_add_service(struct snapshot_builder *b, const struct service *svc, struct builder_err *err);
int builder_add_policy(struct snapshot_builder *b, const struct policy *p, struct builder_err *err);

/* Builds the derived indexes and hands over the snapshot (refcount 1) in *out. Frees b. Returns 0, or the
 * first fatal error (-ENOMEM, -E2BIG, -EINVAL after a strict rejection) with *out untouched. */
int builder_finish(struct snapshot_builder *b, struct snapshot **out);
/* Abandons a build. NULL is a no-op. */
void builder_free(struct snapshot_builder *b);

/* Number of resources of a kind accepted so far (their index in the snapshot is the add order). */
size_t builder_count(const struct snapshot_builder *b, enum builder_kind kind);

/* "workload <uid>: <path>: <reason>" (the path part only when set) into buf. Returns buf. */
const char *builder_err_format(const struct builder_err *e, char *buf, size_t n);
/* "workload", "service" or "policy". */
const char *builder_kind_name(enum builder_kind kind);
