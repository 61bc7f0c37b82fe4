/* Istio's DestinationRule (networking.istio.io/v1, v1beta1, v1alpha3; istio/api
 * networking/v1alpha3/destination_rule.proto) to the waypoint's zmesh.v1.DestinationRule
 * (proto/zmesh/destination_rule.proto, src/mesh/destination_rule.h).
 *
 * The host is resolved as istiod resolves it (a short name is a Service in the rule's namespace, an FQDN
 * "<name>.<ns>.svc.<domain>" names its Service); each subset's labels are resolved to the pods of the
 * Service's namespace they select (st's pods), as istiod selects a subset cluster's endpoints. Findings as
 * src/zmeshd/l7.h: ERROR = not converted, WARN = converted with the named field dropped (tls, exportTo,
 * workloadSelector and every other field the waypoint does not apply). */
#pragma once
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "zmeshd/manifest.h"

/* Converts obj (borrowed) into the packed zmesh.v1.DestinationRule: *pb (malloc'd, the caller frees it) of
 * *len bytes and name "<ns>/<name>". st may be NULL (no pods: subsets select none). Returns 0, -EINVAL (an
 * ERROR was reported) or -ENOMEM. */
int dr_convert(const json_t *obj, const struct manifest_src *src, const struct manifest_store *st,
               uint8_t **pb, size_t *len, char *name, size_t name_n, manifest_report_fn report, void *ud);

