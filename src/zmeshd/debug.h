/* zmeshd's debug port, istiod's monitoring port (15014, istio/istio pilot/pkg/xds/debug.go): HTTP/1.1 on the
 * daemon's loop (http1/server.h), read by `zmesh proxy-status`, scrapers and people.
 *
 *   /debug/syncz        every xDS client: node, cluster, per subscribed type the sync state as istiod's
 *                       syncz reports it (SYNCED, STALE, ERROR, NOT_SENT), versions and nonces sent and
 *                       ACKed, the last NACK and when the type was last pushed
 *   /debug/connections  every xDS stream: who (authenticated identity, node), its state and error
 *   /debug/waypointz    the waypoints and the waypoint bindings of the current manifests (zmeshd/waypoint.h),
 *                       what istiod would write into Gateway and Service/Pod status (needs
 *                       zmeshd_debug_set_daemon)
 *   /ready              200 once the first snapshot is loaded for serving, else 503
 *   /metrics            Prometheus text: clients, streams, pushes, ACKs, NACKs, bytes, snapshots
 *   /                   the list of the above
 *
 * Only GET and HEAD; anything else is 405. The port is plain HTTP and unauthenticated, as istiod's: keep it
 * on loopback (the default) or a network only operators reach. */
#pragma once
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <jansson.h>

#include "core/loop.h"
#include "zmeshd/xds.h"

/* istiod's monitoring port, on loopback: the debug endpoints say everything about the mesh's proxies. */
#define ZMESHD_DEFAULT_DEBUG_LISTEN "127.0.0.1:15014"

struct zmeshd_debug;

/* Listens on addr (Go's host:port; port 0 picks a free one) and serves x's status on l. id names this
 * control plane in /debug/syncz (istiod's pod name; NULL: the host name); cluster is zmeshd's cluster id, the
 * cluster of a proxy whose metadata has no CLUSTER_ID. Returns 0 with *out, or -errno with err set (-EINVAL
 * for a bad address, -EADDRINUSE...). */
int zmeshd_debug_new(struct loop *l, struct zmeshd_xds *x, const char *addr, const char *id,
                     const char *cluster, struct zmeshd_debug **out, char *err, size_t errlen);
/* Gives /debug/waypointz the daemon whose current store it reads (borrowed; must outlive dbg). Without it
 * the endpoint answers 503. */
struct zmeshd;
void zmeshd_debug_set_daemon(struct zmeshd_debug *dbg, struct zmeshd *d);
/* The bound port. */
uint16_t zmeshd_debug_port(const struct zmeshd_debug *dbg);
/* Closes the port and its connections. NULL is a no-op. */
void zmeshd_debug_free(struct zmeshd_debug *dbg);

/* ---- the documents, from a zmeshd_xds_status() object (pure functions, for tests) ---- */

/* /debug/syncz: a new JSON array, one object per client (fields in docs/zmeshd.md), or NULL on
 * ENOMEM. id is the control plane's name, cluster the default cluster id (NULL: none). */
json_t *zmeshd_debug_syncz(const json_t *status, const char *id, const char *cluster);
/* /debug/connections: a new JSON array, or NULL on ENOMEM. */
json_t *zmeshd_debug_connections(const json_t *status, const char *cluster);
/* /metrics in the Prometheus text format 0.0.4: a malloc'd NUL-terminated buffer (caller frees) with its
 * length in *len, or NULL on ENOMEM. */
char *zmeshd_debug_metrics(const json_t *status, size_t *len);
/* The istiod proxy id of an xDS node id: "pod.ns" for "type~ip~pod.ns~ns.svc.cluster.local", else the id as
 * it is. Writes at most n bytes (NUL included). */
void zmeshd_debug_proxy_id(const char *node_id, char *buf, size_t n);
