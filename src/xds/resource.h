/* The xDS resource codec: istio.workload.Address (a Workload or a Service) and istio.security.Authorization
 * protobuf messages to and from the model structs of src/mesh/model.h.
 *
 * Decoding follows istio/ztunnel's conversions (src/state/workload.rs TryFrom<XdsWorkload>,
 * src/state/service.rs TryFrom<&XdsService>, src/rbac.rs TryFrom<XdsRbac>): what ztunnel refuses is refused
 * here with the same words where ztunnel has them; what ztunnel truncates or drops silently (ports above
 * 65535, an unparsable address or an empty StringMatch inside a policy) is refused too, naming the field,
 * because a policy with an entry quietly missing enforces something else than what was written. A field the
 * model cannot hold is a rejection when ignoring it would change where traffic goes or who may send it
 * (CIDR VIPs, weighted waypoints, namespace-only visibility, Match extensions), and a warning otherwise
 * (extensions, native_tunnel, canonical, ingress_use_waypoint, unknown fields). Defaults (trust domain,
 * service account, cluster id, gateway port) are left to the builder, which applies ztunnel's.
 *
 * Encoding produces what istiod sends for the same resource (istio/istio pilot/pkg/serviceregistry/ambient):
 * every set field, plain VIPs without a prefix length, policy addresses with their length, and the xDS
 * resource names ztunnel keys on: workload -> uid, service -> "namespace/hostname", authorization ->
 * "namespace/name" (istio/istio pilot/pkg/model/service.go ResourceName). */
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "authorization.pb-c.h"
#include "core/vec.h"
#include "envoy/service/discovery/v3/discovery.pb-c.h"
#include "mesh/builder.h"
#include "mesh/model.h"
#include "workload.pb-c.h"

/* Room for a rejection reason ("<field path>: <why>"). */
#define XDS_REASON_MAX 384

/* Called once per warning about a resource being decoded: key is the resource's key (uid, "ns/host",
 * "ns/name"; may be "" when the key itself is missing), msg names the field. */
typedef void (*xds_warn_fn)(void *ud, const char *key, const char *msg);

struct xds_decode_opts {
    xds_warn_fn warn; /* NULL: log at warn level, target "xds" */
    void *warn_ud;
};

/* One decoded resource. The model struct borrows strings from the protobuf message it was decoded from (owned
 * here when decoded from bytes, the caller's otherwise) and arrays allocated for it here. */
struct xds_resource {
    enum builder_kind kind;
    union {
        struct workload workload; /* kind BUILDER_WORKLOAD */
        struct service service;   /* kind BUILDER_SERVICE */
        struct policy policy;     /* kind BUILDER_POLICY */
    };
    const char *key;       /* uid, "ns/hostname" or "ns/name"; owned */
    ProtobufCMessage *msg; /* the unpacked message when decoded from bytes, else NULL */
    struct vec allocs;     /* void *: every block allocated for the model struct */
};

/* Decodes an Address (Workload or Service) into *out. The message is borrowed and must outlive *out. Returns
 * 0; -EINVAL with err ("<field>: <reason>", NUL-terminated, at most n bytes) when the resource is refused;
 * -ENOMEM. On failure *out holds nothing to free (xds_resource_free is still safe). opts may be NULL. */
int xds_resource_from_address(const Istio__Workload__Address *a, const struct xds_decode_opts *opts,
                              struct xds_resource *out, char *err, size_t n);
/* Same for an Authorization. */
int xds_resource_from_authorization(const Istio__Security__Authorization *a,
                                    const struct xds_decode_opts *opts, struct xds_resource *out, char *err,
                                    size_t n);
/* Decodes data[0..len) as the message type_url names (PB_TYPE_URL_ADDRESS or PB_TYPE_URL_AUTHORIZATION)
 * through pb_message_unpack; *out then owns the message. Returns 0, -EPROTOTYPE (another type URL),
 * -EBADMSG / -ELOOP (not a valid message; err says so), -EINVAL (refused), -ENOMEM. */
int xds_resource_decode(const char *type_url, const uint8_t *data, size_t len,
                        const struct xds_decode_opts *opts, struct xds_resource *out, char *err, size_t n);
/* Frees what *r owns and zeroes it. Safe on a zeroed or failed resource. */
void xds_resource_free(struct xds_resource *r);

/* Adds r to builder b with builder_add_workload/_service/_policy; returns what that returns. */
int xds_resource_add(struct snapshot_builder *b, const struct xds_resource *r, struct builder_err *err);

/* The xDS resource name of a model resource, as istiod names it: the workload's uid, the service's
 * "namespace/hostname", the policy's "namespace/name". Writes it with a NUL into buf; returns its length or
 * -ENOSPC. */
int xds_workload_name(const struct workload *w, char *buf, size_t n);
int xds_service_name(const struct service *s, char *buf, size_t n);
int xds_policy_name(const struct policy *p, char *buf, size_t n);

/* Encodes a model workload or service as a serialized istio.workload.Address, or a policy as an
 * istio.security.Authorization, field by field as istiod would. On success *out is a malloc'd buffer of *len
 * bytes the caller frees. Returns 0, -EINVAL (a value the protocol cannot carry, e.g. an unknown
 * workload_type string or enum value; err says which) or -ENOMEM. The input is only read; NULL strings are
 * "". err may be NULL. */
int xds_encode_workload(const struct workload *w, uint8_t **out, size_t *len, char *err, size_t n);
int xds_encode_service(const struct service *s, uint8_t **out, size_t *len, char *err, size_t n);
int xds_encode_policy(const struct policy *p, uint8_t **out, size_t *len, char *err, size_t n);

/* Fills *out with what a delta xDS server puts in DeltaDiscoveryResponse.resources for the model resource
 * (a struct workload, service or policy as kind says): its xDS name, version, and an Any of its type URL
 * (PB_TYPE_URL_ADDRESS or PB_TYPE_URL_AUTHORIZATION) holding the encoding above. *out is initialised here;
 * on success the caller releases it with xds_encoded_resource_clear. Returns 0, -EINVAL (err says why) or
 * -ENOMEM. */
int xds_encode_resource(enum builder_kind kind, const void *model, const char *version,
                        Envoy__Service__Discovery__V3__Resource *out, char *err, size_t n);
/* Frees what xds_encode_resource allocated in r and re-initialises it. */
void xds_encoded_resource_clear(Envoy__Service__Discovery__V3__Resource *r);
