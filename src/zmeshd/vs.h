/* Istio's VirtualService (networking.istio.io v1, v1beta1, v1alpha3; istio/api
 * networking/v1alpha3/virtual_service.proto) to the waypoint's zmesh.v1.HTTPRoute of kind VIRTUAL_SERVICE
 * (proto/zmesh/l7.proto). The mapping follows istiod's translation into Envoy routes (istio/istio
 * pilot/pkg/networking/core/route/route.go, route/retry/retry.go) and the waypoint applies it with Envoy's
 * semantics (src/waypoint/route.c).
 *
 * `hosts` that name a Service (a short name: the VirtualService's namespace; `<svc>.<ns>.svc.<domain>`)
 * become the route's parents; every `http` route becomes a rule, tried in the order written; `tcp` routes
 * become tcp_rules. Findings as src/zmeshd/l7.h: ERROR = not converted, WARN = converted with what the
 * message names dropped, INFO = skipped by design. */
#pragma once
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "zmeshd/manifest.h"

/* Converts a VirtualService (obj borrowed) into the packed zmesh.v1.HTTPRoute: *pb (malloc'd, the caller
 * frees it) of *len bytes, name "<ns>/<name>" into name[0..name_n). st (borrowed, may be NULL: no pods) holds
 * the pods a match's sourceLabels select. Returns 0, -EINVAL (an ERROR was reported), -ENOENT (nothing for a
 * waypoint: no host names a Service, or only non-mesh gateways; an INFO or WARN says so) or -ENOMEM. */
int vs_convert(const json_t *obj, const struct manifest_src *src, const struct manifest_store *st,
               uint8_t **pb, size_t *len, char *name, size_t name_n, manifest_report_fn report, void *ud);

/* Reports (WARN, on the VirtualService) every Service that both a VirtualService's hosts and an HTTPRoute's
 * or GRPCRoute's Service parentRefs name: mixing them is undefined in Istio; zmesh's waypoint applies the
 * Gateway API route there (src/mesh/l7.c) and ignores the VirtualService for that Service. docs as
 * manifest_l7_docs. */
void vs_report_conflicts(const struct manifest_l7_doc *docs, size_t n, manifest_report_fn report, void *ud);

/* The condition zmesh writes on a VirtualService that shares a Service with an HTTPRoute or GRPCRoute (Istio
 * defines no behaviour for the mix): status True, reason GatewayAPIRouteApplies, a message naming each
 * Service and the route zmesh's waypoint applies there. */
#define VS_COND_ROUTE_CONFLICT "zmesh.io/RouteConflict"
/* The conflicts of VirtualService ns/name among docs (as vs_report_conflicts finds them), their messages
 * joined with "; " into buf[0..len) ("" when none; cut at len). Returns how many. */
size_t vs_conflict_message(const struct manifest_l7_doc *docs, size_t n, const char *ns, const char *name,
                           char *buf, size_t len);
/* Sets VS_COND_ROUTE_CONFLICT on the VirtualService object obj (borrowed, changed in place) with message, or
 * removes it when message is NULL or "" (and an empty status with it). now: RFC 3339, the transition time of
 * a new condition. Returns 1 when obj changed, 0 when it already said so, -EINVAL (status or conditions not
 * of their type) or -ENOMEM. */
int vs_conflict_status_apply(json_t *obj, const char *message, const char *now);
