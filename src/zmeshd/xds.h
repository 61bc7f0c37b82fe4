/* zmeshd's delta ADS service: the gRPC stream
 * /envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources on zmeshd's port, driving
 * one ads_client (ads.h) per stream, and the resource tables kept in step with the daemon's snapshots: every
 * workload and service encoded as an istio.workload.Address, every policy as an istio.security.Authorization,
 * named as istiod names them (xds/resource.h). A new snapshot replaces both tables; unchanged resources keep
 * their versions, so each client is sent only what changed.
 *
 * Streams are authenticated as istiod authenticates xDS (a bearer token, zmeshd_server_authenticate); a
 * stream without one ends UNAUTHENTICATED. A client that cannot keep up never queues more than one response:
 * the next is built only when the previous one was taken by HTTP/2 (on_writable), and then holds the latest
 * state. */
#pragma once
#include <jansson.h>

#include "zmeshd/ads.h"
#include "zmeshd/daemon.h"
#include "zmeshd/server.h"

/* The methods' path and the limit of a request (ztunnel's are small; a reconnect carries every name it holds
 * in initial_resource_versions). */
/* Bytes of xDS responses on their way to all clients at once (each stream has at most one): beyond it, streams
 * wait for room before building their next response. A full push of 10 000 pods is about 3 MB per client, so
 * this lets about 20 go out at a time, bounding zmeshd's memory whatever the number of clients. */
#define ZMESHD_XDS_INFLIGHT_MAX ((size_t)64 << 20)
#define ZMESHD_ADS_METHOD "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"

struct zmeshd_xds;

/* Registers the ADS method on srv's gRPC server, subscribes to d's snapshots and loads the current one.
 * Returns 0 with *out, or -errno with err. */
int zmeshd_xds_new(struct zmeshd *d, struct zmeshd_server *srv, struct zmeshd_xds **out, char *err,
                   size_t errlen);
/* Frees x; call it after zmeshd_server_free (which ends the streams). NULL is a no-op. */
void zmeshd_xds_free(struct zmeshd_xds *x);
/* ads_server_status_json plus zmeshd's own figures (new reference): "generations" (snapshots loaded) and "totals"
 * (streams opened and refused; per type responses, acks, nacks, resources_sent, bytes_sent of every client
 * since the start, gone or connected, for monotonic counters). NULL on ENOMEM. */
json_t *zmeshd_xds_status(const struct zmeshd_xds *x);
/* The ADS server (for tests and the benchmark). */
struct ads_server *zmeshd_xds_ads(const struct zmeshd_xds *x);
