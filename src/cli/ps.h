/* `zmesh proxy-status`: istioctl's proxy-status table (istio/istio istioctl/pkg/writer/pilot/status.go) from
 * zmeshd's /debug/syncz (src/zmeshd/debug.h). Rendering only: the caller fetches the document. */
#ifndef ZMESH_CLI_PS_H
#define ZMESH_CLI_PS_H

#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

enum ps_format {
    PS_SHORT, /* istioctl's columns with each type's state: fits 80 columns for usual names */
    PS_WIDE,  /* the same with istioctl's age of each state: "SYNCED (5m2s)" */
    PS_JSON,  /* the syncz document as zmeshd sent it */
};

/* Parses a /debug/syncz body into *syncz (the caller json_decref()s it). Returns 0, or -EINVAL with a reason
 * in err when the body is not a JSON array of objects. */
int ps_parse(const char *body, size_t len, json_t **syncz, char *err, size_t errlen);

/* A new array of the entries of syncz whose "namespace" (the proxy's node metadata NAMESPACE) is ns, as
 * istioctl proxy-status --namespace filters. NULL on ENOMEM. */
json_t *ps_filter_namespace(const json_t *syncz, const char *ns);

/* Writes the view to out: the table (proxies by name; columns NAME, CLUSTER, one per xDS type seen
 * (istioctl's short names: CDS LDS EDS RDS first, then the others by type URL, so WADS before WDS), ISTIOD,
 * VERSION; a type a proxy does not watch is IGNORED), then, when a type is in ERROR, one line per NACK with
 * its message. now_ms (Unix milliseconds) dates the ages of PS_WIDE. Returns 0, -ENOENT when syncz lists no
 * proxy (nothing is written), -ENOMEM, or -EIO when out fails. */
int ps_render(FILE *out, const json_t *syncz, enum ps_format fmt, int64_t now_ms);

/* Kubernetes' duration.HumanDuration (k8s.io/apimachinery/pkg/util/duration), which istioctl prints:
 * "45s", "3m20s", "15m", "2h30m", "5h", "3d4h", "30d", "2y10d", "9y"; "0s" for small negatives,
 * "<invalid>" below -1 s. */
void ps_human_duration(int64_t ms, char *buf, size_t n);

#endif
