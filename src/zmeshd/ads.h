/* zmeshd's delta ADS server logic (envoy.service.discovery.v3.AggregatedDiscoveryService/
 * DeltaAggregatedResources), without a transport: the gRPC stream hands request bytes to an ads_client and
 * asks it for the next response when it has room to write. Behaviour follows istiod (istio/istio
 * pilot/pkg/xds/delta.go, pilot/pkg/xds/workload.go); src/zmeshd/README.md ("Delta ADS server") says where
 * and why it differs.
 *
 * Model. One resource table per type URL: name -> (content-hash version, serialized resource). The owner
 * (zmeshd's main loop) replaces a table with a new generation (ads_table_replace) or changes it entry by
 * entry (ads_table_put / ads_table_remove, then ads_table_publish). Each client stream keeps, per type, its
 * subscription and a cursor into the table's change order; what it has not been sent yet is every entry
 * changed after its cursor, so a client that cannot keep up gets the latest state of each changed name in one
 * response, never the intermediate ones, and a change costs O(1) in the table plus an O(1) wake-up per
 * client.
 *
 * Threads: none of these functions lock; call them all from one thread (zmeshd's main loop). A response may
 * be packed and freed on another thread: it holds references to the bytes it sends. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "envoy/service/discovery/v3/discovery.pb-c.h"

/* Most types one server serves (ztunnel subscribes to two: Address and Authorization). */
#define ADS_TYPES_MAX 8
/* Longest resource name accepted, in the table or in a request (Istio's are "network/IP", a workload UID or
 * "namespace/name", far shorter). */
#define ADS_NAME_MAX 4096
/* Most names one client may subscribe to or report in initial_resource_versions, per type. ztunnel reports
 * every resource it holds on reconnect, so this is the largest mesh a client may hold; beyond it the stream
 * ends with RESOURCE_EXHAUSTED. */
#define ADS_NAMES_MAX ((size_t)1 << 18)
/* Longest node id kept (Istio's are "ztunnel~<ip>~<pod>.<ns>~<ns>.svc.<domain>"). */
#define ADS_NODE_ID_MAX 1024
/* Longest NACK message kept for introspection; a longer one is cut and marked "... (truncated)". */
#define ADS_ERROR_MAX 4096
/* Length of a version string: 16 lowercase hex digits (64 bits of the resource's SHA-256). */
#define ADS_VERSION_LEN 16
/* Removed names remembered for clients that have not been sent them yet: those of the latest generation, and
 * of older ones at least this many, or as many as there are live resources if that is more. A client so far
 * behind that older removals were forgotten is told to reconnect (ads_client_next_response returns -ESTALE):
 * its initial_resource_versions then give the exact difference. */
#define ADS_TOMBSTONES_MIN 16384

/* gRPC status codes the transport ends a failed stream with (grpc/grpc doc/statuscodes.md). */
#define ADS_GRPC_INVALID_ARGUMENT 3
#define ADS_GRPC_RESOURCE_EXHAUSTED 8
#define ADS_GRPC_UNAVAILABLE 14

struct ads_server;
struct ads_client;
struct ads_response;

/* ---- server and resource tables ---- */

struct ads_server_opts {
    /* Type URLs served (at least one, at most ADS_TYPES_MAX, distinct), e.g. PB_TYPE_URL_ADDRESS and
     * PB_TYPE_URL_AUTHORIZATION (src/xds/pb.h). Copied. */
    const char *const *type_urls;
    size_t n_types;
    /* DeltaDiscoveryResponse.control_plane.identifier, as istiod fills it (pilot/pkg/xds/xdsgen.go,
     * ControlPlane); NULL or "" leaves the field out. Copied. */
    const char *control_plane_id;
};

/* Creates a server with one empty table per type. Returns 0, -EINVAL (bad opts; err says which) or -ENOMEM.
 * err (may be NULL) receives a NUL-terminated reason of at most errlen bytes. The caller frees *out with
 * ads_server_free. */
int ads_server_new(const struct ads_server_opts *opts, struct ads_server **out, char *err, size_t errlen);
/* Frees the server, its tables and every client still attached (their callbacks are not called). */
void ads_server_free(struct ads_server *s);

/* One resource of a new generation: name and the serialized message (an Any's value bytes, the message of the
 * table's type). Borrowed for the call: the table copies what changed. */
struct ads_resource_in {
    const char *name;
    const uint8_t *value;
    size_t len;
};

/* What one update did to a table. */
struct ads_diff {
    size_t added, changed, removed, unchanged;
};

/* Replaces the table of type_url with exactly the resources in[0..n): names not in it are removed, names
 * whose bytes differ get a new version, identical ones keep theirs (so versions survive a restart of zmeshd),
 * then publishes (ads_table_publish). Returns 0 with *diff (may be NULL) filled, -ENOENT (type not served),
 * -EINVAL (an empty, too long, non-UTF-8 or duplicate name; err names it; the table is unchanged) or -ENOMEM
 * (the table may hold part of the generation; it is still consistent and published). */
int ads_table_replace(struct ads_server *s, const char *type_url, const struct ads_resource_in *in, size_t n,
                      struct ads_diff *diff, char *err, size_t errlen);
/* Sets one resource (copied when its bytes changed). Clients see it after ads_table_publish. Returns 1 when
 * the table changed, 0 when the bytes were the same, -ENOENT, -EINVAL (bad name; err says why) or -ENOMEM. */
int ads_table_put(struct ads_server *s, const char *type_url, const char *name, const uint8_t *value,
                  size_t len, char *err, size_t errlen);
/* Removes one resource. Returns 1 when it was there, 0 when not, -ENOENT (type not served). */
int ads_table_remove(struct ads_server *s, const char *type_url, const char *name);
/* Ends a batch of puts and removes: when anything changed since the last publish the table's generation
 * (system_version_info) goes up by one, and every client watching the type and not already waiting is woken
 * through its on_pending callback. Returns 0 or -ENOENT. */
int ads_table_publish(struct ads_server *s, const char *type_url);

/* Introspection of one table: live resources, removed names remembered, generation. Returns 0 or -ENOENT. */
struct ads_table_info {
    size_t resources, tombstones;
    uint64_t generation;
};
int ads_table_info(const struct ads_server *s, const char *type_url, struct ads_table_info *out);
/* The version of a resource (ADS_VERSION_LEN hex digits, borrowed until the table next changes), or NULL when
 * absent. */
const char *ads_table_version(const struct ads_server *s, const char *type_url, const char *name);

/* ---- client streams ---- */

/* Called when a client goes from "nothing to send" to "something to send" (edge-triggered: not again until
 * ads_client_next_response has left nothing pending): the transport should call ads_client_next_response when
 * it has room. Called from inside ads_client_recv/handle and ads_table_publish/replace; it may call
 * ads_client_next_response at once, but must not free the client nor change tables. */
typedef void (*ads_pending_fn)(struct ads_client *c, void *ud);

enum ads_client_state {
    ADS_CLIENT_NEW,    /* no request yet */
    ADS_CLIENT_ACTIVE, /* node known, serving */
    ADS_CLIENT_FAILED, /* a protocol error: the transport ends the stream (ads_client_error*) */
};
const char *ads_client_state_to_str(enum ads_client_state st);

/* Attaches a new client stream to s. peer (may be NULL) names it in logs and introspection, e.g. the remote
 * address; copied. Returns 0 or -ENOMEM; the caller frees *out with ads_client_free. */
int ads_client_new(struct ads_server *s, const char *peer, ads_pending_fn on_pending, void *ud,
                   struct ads_client **out);
/* Detaches and frees the client (its in-flight responses stay valid until freed). NULL is a no-op. */
void ads_client_free(struct ads_client *c);

/* Decodes one DeltaDiscoveryRequest from data[0..len) (untrusted: through pb_message_unpack) and handles it
 * as ads_client_handle does. Returns 0, or a negative code after which the client is FAILED: -EBADMSG (the
 * bytes are no DeltaDiscoveryRequest), -EINVAL, -E2BIG (see ads_client_handle), -ENOMEM. */
int ads_client_recv(struct ads_client *c, const uint8_t *data, size_t len);
/* Handles one decoded request (borrowed for the call): the first request of the stream must carry a node with
 * an id (else -EINVAL "missing node information", as istiod says); per type, the first request subscribes
 * (wildcard when resource_names_subscribe is empty or holds "*") and reports initial_resource_versions; later
 * ones ACK or NACK (error_detail) response_nonce, or change the subscription. A nonce that is not the last
 * one sent for the type is stale and the request is ignored, as istiod does. Returns 0; -EINVAL for a
 * malformed request (a name empty, too long or not UTF-8, a node id too long...), -E2BIG past ADS_NAMES_MAX,
 * -ENOMEM; after an error the client is FAILED and every later call returns the same code. A type the server
 * does not serve is logged (rate-limited), counted and otherwise ignored, as istiod ignores it. */
int ads_client_handle(struct ads_client *c, const Envoy__Service__Discovery__V3__DeltaDiscoveryRequest *req);

/* True when ads_client_next_response may have something to send (it may still find nothing: for a client with
 * explicit subscriptions, the changes since its last push may all be to names it does not watch). */
bool ads_client_pending(const struct ads_client *c);
/* Builds the next response, taking the types in turn: *out is a new response the caller frees with
 * ads_response_free, or NULL when there is nothing to send (the next change then calls on_pending again).
 * Returns 0; -ESTALE when the client fell so far behind that removals it was not sent were forgotten
 * (ADS_TOMBSTONES_MIN): the client is FAILED with UNAVAILABLE and should reconnect; -ENOMEM (FAILED); or the
 * error code of a FAILED client. */
int ads_client_next_response(struct ads_client *c, struct ads_response **out);

enum ads_client_state ads_client_state(const struct ads_client *c);
/* Why the client FAILED ("" otherwise), and the gRPC status code to end the stream with (0 otherwise). */
const char *ads_client_error(const struct ads_client *c);
int ads_client_grpc_status(const struct ads_client *c);
/* The node id from the first request ("" before it). Borrowed from c. */
const char *ads_client_node_id(const struct ads_client *c);

/* ---- responses ---- */

/* The message to send. Borrowed from r: its resources' bytes are the table's, shared by reference. */
const Envoy__Service__Discovery__V3__DeltaDiscoveryResponse *ads_response_msg(const struct ads_response *r);
/* Size of the serialized response, and its serialization into out[0..size). */
size_t ads_response_size(const struct ads_response *r);
void ads_response_pack(const struct ads_response *r, uint8_t *out);
/* Releases r and its references. NULL is a no-op. */
void ads_response_free(struct ads_response *r);

/* ---- introspection (zmesh proxy-status, the benchmark) ---- */

/* A type's sync state as istiod reports it to istioctl proxy-status (istio/istio pilot/pkg/xds/statusgen.go,
 * debugSyncStatus): ERROR while a NACK is recorded, NOT_SENT before any response, SYNCED when the last
 * response sent was ACKed, else STALE. */
enum ads_sync { ADS_SYNC_NOT_SENT, ADS_SYNC_SYNCED, ADS_SYNC_STALE, ADS_SYNC_ERROR };
/* "NOT_SENT", "SYNCED", "STALE", "ERROR" (the names of envoy.service.status.v3.ConfigStatus). */
const char *ads_sync_to_str(enum ads_sync st);

/* One client's view of one type. Strings are borrowed from the client, valid until its next call. */
struct ads_watch_info {
    const char *type_url;
    bool subscribed;                         /* the client has sent a request for this type */
    bool wildcard;                           /* subscribed to everything */
    size_t names;                            /* explicit names subscribed */
    bool pending;                            /* something may be waiting to be sent */
    const char *nonce_sent, *version_sent;   /* last response ("" before one) */
    const char *nonce_acked, *version_acked; /* last ACK ("" before one); version = its system_version_info */
    const char *nack_message, *nack_nonce;   /* last NACK ("" when none since the last ACK) */
    int nack_code;                           /* its error_detail.code */
    enum ads_sync sync;
    int64_t last_sent_unix_ms; /* wall-clock time of the last response built (0: none), for "SYNCED (5s)" */
    uint64_t responses, acks, nacks, stale;            /* counts; stale = requests ignored for an old nonce */
    uint64_t resources_sent, removed_sent, bytes_sent; /* totals */
    uint64_t last_resources, last_removed, last_bytes; /* the last response */
    uint64_t last_visited; /* table entries and names the last build looked at: its cost, O(changes) */
};
/* Fills *out for the i-th type of the server (0 <= i < ads_server_types). Returns 0 or -ENOENT. */
int ads_client_watch_info(const struct ads_client *c, size_t i, struct ads_watch_info *out);
size_t ads_server_types(const struct ads_server *s);
/* Iterates the attached clients, newest first: ads_server_first_client(s), then ads_client_next(c); NULL
 * ends. */
struct ads_client *ads_server_first_client(const struct ads_server *s);
struct ads_client *ads_client_next(const struct ads_client *c);
/* A new JSON object describing the client: peer, node (id, cluster, metadata as JSON), state, error and per
 * type the fields of ads_watch_info. The caller owns the reference (json_decref). NULL on ENOMEM. */
json_t *ads_client_status_json(const struct ads_client *c);
/* {"types": [{type_url, generation, resources, tombstones}], "clients": [ads_client_status_json...]}. */
json_t *ads_server_status_json(const struct ads_server *s);
