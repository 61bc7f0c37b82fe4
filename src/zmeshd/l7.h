/* Kubernetes objects to the waypoint's L7 resources (proto/zmesh/l7.proto): HTTPRoute and GRPCRoute
 * (gateway.networking.k8s.io/v1) to zmesh.v1.HTTPRoute, AuthorizationPolicy with targetRefs
 * (security.istio.io/v1, v1beta1) to zmesh.v1.L7Authorization. Rules: Gateway API's (kubernetes-sigs/
 * gateway-api apis/v1/httproute_types.go, grpcroute_types.go) and Istio's conversion (istio/istio
 * pilot/pkg/config/kube/gateway/conversion.go, pilot/pkg/security/authz/model/).
 *
 * Findings go through manifest_report_fn (src/zmeshd/manifest.h): ERROR = not converted at all, WARN =
 * converted with what the message names dropped, INFO = skipped by design. A converted resource has also been
 * compiled by the waypoint's model (src/mesh/l7.h), so the waypoint accepts what zmeshd serves. */
#pragma once
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "zmeshd/manifest.h"

/* Longest resource name "<namespace>/<name>" with its NUL (253 + 1 + 253 + 1). */
#define L7_NAME_MAX 512

/* Converts an HTTPRoute or GRPCRoute (obj: the document as manifest_load_json reads it, borrowed) into the
 * packed zmesh.v1.HTTPRoute: *pb (malloc'd, the caller frees it) of *len bytes, and name "<ns>/<name>" into
 * name[0..name_n). Returns 0, -EINVAL (an ERROR was reported; nothing is returned) or -ENOMEM. */
int l7_convert_route(const json_t *obj, const struct manifest_src *src, uint8_t **pb, size_t *len, char *name,
                     size_t name_n, manifest_report_fn report, void *ud);

/* Converts an AuthorizationPolicy with targetRef/targetRefs into the packed zmesh.v1.L7Authorization, as
 * above. Returns -ENOENT, with no finding, for a policy without targets (ztunnel's, src/zmeshd/k8s.h). */
int l7_convert_authz(const json_t *obj, const struct manifest_src *src, uint8_t **pb, size_t *len, char *name,
                     size_t name_n, manifest_report_fn report, void *ud);

/* Converts one of manifest_l7_docs (the kinds the manifest reader keeps for the waypoint) into its resource:
 * *type gets its enum l7_type (src/mesh/l7.h), the rest as l7_convert_route. Returns 0, -EINVAL, -ENOENT
 * (nothing for a waypoint, no finding) or -ENOMEM. */
int l7_convert_doc(const struct manifest_l7_doc *d, int *type, uint8_t **pb, size_t *len, char *name, size_t name_n,
                   manifest_report_fn report, void *ud);

/* Gateway API's Duration (^([0-9]{1,5}(h|m|s|ms)){1,4}$, GEP-2257) in milliseconds. 0 or -EINVAL. */
int l7_gateway_duration_ms(const char *s, uint64_t *ms);

/* A duration as Istio's CRDs take it (Go's time.ParseDuration, which Istio's protobuf JSON reader uses for
 * google.protobuf.Duration: "1.5s", "100ms", "1h30m", "0"; no sign) in milliseconds, rounded down: the
 * VirtualService's and the DestinationRule's durations. 0 or -EINVAL. */
int l7_istio_duration_ms(const char *s, uint64_t *ms);
