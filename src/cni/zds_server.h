/* The ZDS server: the node agent's side of the protocol over which it hands a shared ztunnel the pods it must
 * serve and their network namespaces (istio/istio cni/pkg/nodeagent/ztunnelserver.go; ztunnel's side is
 * src/ztunnel/zds.c). ztunnel connects to a SOCK_SEQPACKET Unix socket and says ZdsHello{V1}; the server then
 * sends the snapshot (one AddWorkload per known pod, its netns fd as the packet's one SCM_RIGHTS fd, then
 * SnapshotSent), one request at a time, each waiting for its WorkloadResponse. Afterwards an Add goes to the
 * newest connection only and a Del to every connection, queued per connection and sent one at a time (answers
 * correlate with requests only by order). ztunnel never speaks unprompted: anything it sends while no request
 * is outstanding, an undecodable or truncated answer, or an fd from it ends that connection.
 *
 * Runs on one loop and never blocks it: sockets are non-blocking, the 5 s answer deadline is a timer. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/loop.h"

/* Istio's default INPOD_UDS (ztunnel src/config.rs; the agent's ZTUNNEL_SOCKET path). */
#define ZDS_SERVER_DEFAULT_PATH "/var/run/ztunnel/ztunnel.sock"
/* The largest packet either side reads (ztunnelserver.go readProto's buffer). */
#define ZDS_SERVER_MSG_MAX 1024
/* How long the hello and each answer may take (ztunnelserver.go readWriteDeadline). After it the request is
 * counted as timed out and the next one is sent, as Istio does. */
#define ZDS_SERVER_DEADLINE_MS 5000
/* Connections at once: a node runs one ztunnel, two while one replaces the other; a client that connects in
 * a loop is refused beyond this (Istio rate-limits accepts to 5 a second for the same reason). */
#define ZDS_SERVER_CONNS_MAX 16
/* Pods known at once (ztunnel NACKs beyond its own ZDS_WORKLOADS_MAX, 4096). */
#define ZDS_SERVER_PODS_MAX 4096
/* Requests queued on one connection: a ztunnel that answers nothing for a long time is closed beyond it. */
#define ZDS_SERVER_QUEUE_MAX 8192

struct zds_server;

/* The end of one Add at the connection it went to: status 0 (acked), -EPROTO (NACKed: error is ztunnel's
 * reason), -ETIMEDOUT (no answer within the deadline), -ECONNRESET (the connection ended first) or -ECANCELED
 * (the server was freed), -EMSGSIZE (the request does not fit one packet). error is "" unless NACKed. */
typedef void (*zds_server_done_fn)(void *ud, int status, const char *error);

/* Listens on path (NULL: ZDS_SERVER_DEFAULT_PATH), creating its parent directory and replacing a stale socket
 * file (as Istio does at start). Returns 0 with *out, -ENAMETOOLONG, -ENOMEM or -errno of mkdir/bind/listen. */
int zds_server_new(struct loop *l, const char *path, struct zds_server **out);
/* Closes every connection and the listener (unlinking the socket file), closes every kept netns fd, and calls
 * pending done callbacks with -ECANCELED. NULL is a no-op. */
void zds_server_free(struct zds_server *s);

/* Adds (or updates) pod uid: the server dup()s netns_fd (the caller keeps its own) and keeps it for later
 * snapshots; strings are copied. An Add is queued on the newest connection; done (may be NULL) is called
 * once with its end, usually later from the loop, but already inside this call when the send fails at once. Returns 0 (done will be called), -ENOTCONN (no ztunnel connected: the pod is kept for
 * the next snapshot, done is not called), -EINVAL (empty uid, bad fd), -ENOSPC (ZDS_SERVER_PODS_MAX), -ENOMEM. */
int zds_server_add(struct zds_server *s, const char *uid, const char *name, const char *namespace_,
                   const char *service_account, int netns_fd, zds_server_done_fn done, void *ud);
/* Forgets pod uid (closing its fd) and queues Del{uid} on every connection. Returns 0, or -ENOENT when the
 * pod was not known (a Del is sent all the same: ztunnel acks an unknown uid). */
int zds_server_del(struct zds_server *s, const char *uid);
/* Whether uid is among the pods kept for snapshots. */
bool zds_server_has_pod(const struct zds_server *s, const char *uid);

struct zds_server_stats {
    size_t connections;   /* open (hello received or awaited) */
    size_t pods;          /* kept for snapshots */
    uint64_t accepted;    /* connections ever accepted */
    uint64_t snapshots;   /* SnapshotSent acked */
    uint64_t acks, nacks; /* answers */
    uint64_t timeouts;    /* requests that got no answer in time */
    uint64_t protocol_errors; /* connections closed for a bad hello, answer or unsolicited message */
};
void zds_server_stats(const struct zds_server *s, struct zds_server_stats *out);
