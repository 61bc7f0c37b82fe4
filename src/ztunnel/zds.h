/* The ZDS client: the ztunnel side of the protocol over which the node agent (istio-cni) hands a shared
 * ztunnel the pods it must serve and their network namespaces (istio/ztunnel src/inpod/workloadmanager.rs,
 * protocol.rs, statemanager.rs; the server is istio/istio cni/pkg/nodeagent/ztunnelserver.go). One
 * SOCK_SEQPACKET Unix connection to INPOD_UDS, one protobuf per packet (proto/zds.proto): ztunnel says
 * ZdsHello{V1}, then answers every WorkloadRequest (Add with the netns fd in SCM_RIGHTS, Keep, Del,
 * SnapshotSent) with one Ack, in request order, and never sends anything else. Runs on one loop; shared mode
 * plugs its per-pod proxies in through struct zds_ops.
 *
 * The module keeps the protocol's state (Istio's statemanager): which uids are served and in which netns
 * (by inode, so a repeated Add is idempotent and a new inode replaces the proxy), which failed to start
 * (retried every retry_ms), which the current snapshot mentioned, and whether SnapshotSent came. The owner
 * only starts and stops proxies. Requests are taken one at a time: while the owner has not answered one, or a
 * retry pass runs, the socket is not read (as Istio awaits each message), so answers can be asynchronous and
 * still go out in order. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/loop.h"

/* INPOD_UDS's default (istio/ztunnel src/config.rs). */
#define ZDS_DEFAULT_PATH "/var/run/ztunnel/ztunnel.sock"
/* The largest packet either side reads (protocol.rs reads into 1024 bytes); a longer one is MSG_TRUNC. */
#define ZDS_MSG_MAX 1024
/* Room for this many fds in one packet's ancillary data. A request may carry at most one; up to this many
 * extra are received and closed ("expected 1 fd, got N"), beyond it the kernel sets MSG_CTRUNC. */
#define ZDS_FDS_MAX 8
/* Reconnect backoff (workloadmanager.rs: 10 ms doubled before each wait, at most 15 s) and the interval of
 * retries of failed proxy starts (RETRY_DURATION). */
#define ZDS_BACKOFF_INITIAL_MS 10
#define ZDS_BACKOFF_MAX_MS 15000
#define ZDS_RETRY_MS 5000
/* How long the node agent waits for each answer (istio/istio cni/pkg/nodeagent/ztunnelserver.go
 * readWriteDeadline). It then logs a timeout and sends its next request, and answers correlate with requests
 * only by order: an answer later than this is taken for the next request's. The owner should answer well
 * within it; a later answer is sent all the same (the module cannot tell what the agent did) with a warning.
 */
#define ZDS_AGENT_DEADLINE_MS 5000
/* Most workloads known at once (a node runs at most a few hundred pods; kubelet's default is 110). An Add
 * beyond it is NACKed, so a runaway node agent cannot make ztunnel hold unbounded netns fds. */
#define ZDS_WORKLOADS_MAX 4096
/* The NACK prefix of a failed proxy start (workloadmanager.rs), and of the other NACKs Istio sends before it
 * ends the connection. */
#define ZDS_NACK_START "failure to start proxy : "
#define ZDS_NACK_READ "failure to read message : "
#define ZDS_NACK_PROCESS "failure to process message : "

struct zds_client;

/* One pod to serve (an Add, or the module's retry of a failed one). Strings are borrowed for the call. */
struct zds_add {
    const char *uid;
    const char *name, *namespace_, *service_account; /* WorkloadInfo; "" when the field is empty */
    /* The pod's network namespace: lent by the module, valid until the callback that ends this uid returns
     * (del, snapshot_sent listing it as stale, an add with replace, or zds_client_free). dup() it to keep it.
     */
    int netns_fd;
    uint64_t netns_ino, netns_dev; /* fstat of netns_fd: what makes two Adds the same */
    bool replace; /* the owner serves uid in another netns: drain that proxy, then start this one */
    bool retry;   /* the module retrying a start that failed; the answer goes to no one but the module */
};

/* The owner's callbacks. Each gets a ticket and must answer it exactly once with zds_reply, inside the
 * callback or later from the same loop; nothing else is read from the node agent until it does. A NULL keep,
 * del or snapshot_sent is answered with an Ack by the module itself. */
struct zds_ops {
    /* Start (or restart) a proxy for a->uid in a->netns_fd. An error answer means the proxy did not start:
     * the node agent gets "failure to start proxy : <error>" and the module asks again every retry_ms. */
    void (*add)(void *ud, uint64_t ticket, const struct zds_add *a);
    /* Keep{uid} before SnapshotSent: the node agent still has the pod but could not open its netns (after
     * a ztunnel restart). The module already counts uid as mentioned; informational for the owner. */
    void (*keep)(void *ud, uint64_t ticket, const char *uid);
    /* Stop serving uid (which the owner serves: the module acks a Del of an unknown or failed uid itself).
     * The module forgets uid, and closes its netns fd, when this returns. */
    void (*del)(void *ud, uint64_t ticket, const char *uid);
    /* The snapshot is complete. stale[0..n) are the uids served before it that it did not mention: drain
     * them (the module forgets them, and closes their netns fds, when this returns). */
    void (*snapshot_sent)(void *ud, uint64_t ticket, const char *const *stale, size_t n);
    /* Optional: the connection state or zds_client_ready may have changed (connected, disconnected, a
     * snapshot completed, a start failed or was retried). For owners that publish readiness elsewhere. */
    void (*state_changed)(void *ud);
};

struct zds_config {
    const char *path;        /* the node agent's socket; NULL means ZDS_DEFAULT_PATH. Copied. */
    uint64_t retry_ms;       /* 0 means ZDS_RETRY_MS */
    uint64_t backoff_max_ms; /* 0 means ZDS_BACKOFF_MAX_MS */
};

/* Creates the client on l and starts connecting (first attempt from the loop, at once). ops and ud are
 * borrowed for the client's life. Returns 0 with *out, -EINVAL (ops->add missing), -ENAMETOOLONG (path does
 * not fit sun_path) or -ENOMEM. */
int zds_client_new(struct loop *l, const struct zds_config *cfg, const struct zds_ops *ops, void *ud,
                   struct zds_client **out);
/* Closes the connection and every netns fd, without callbacks. The owner must drop any ticket it holds: c is
 * gone, so it is not answered. Not from inside a callback. NULL is a no-op. */
void zds_client_free(struct zds_client *c);

/* Answers ticket: error NULL (or "") is an Ack, anything else the failure's reason (UTF-8; cut to fit one
 * packet, with a log line). For add the node agent gets "failure to start proxy : <error>" and the start is
 * retried; for keep, del and snapshot_sent it gets "failure to process message : <error>" and the state
 * change stands (the uid deleted or drained is forgotten all the same). Returns 0, or -ESTALE when ticket is
 * not the one outstanding (answered already, or never given: nothing happens). An answer
 * to a request whose connection has ended updates the state but is not sent. */
int zds_reply(struct zds_client *c, uint64_t ticket, const char *error);

/* Istio's readiness rule for the workload manager: connected, SnapshotSent received on this connection, and
 * no proxy waiting for a retry. */
bool zds_client_ready(const struct zds_client *c);

enum zds_conn_state { ZDS_IDLE, ZDS_CONNECTED, ZDS_BACKOFF };
const char *zds_conn_state_to_str(enum zds_conn_state s);

/* For /config_dump, logs and tests. */
struct zds_stats {
    enum zds_conn_state state;
    bool snapshot_received;
    size_t running, failed;         /* workloads served; waiting for a retry */
    uint64_t connects;              /* connections made */
    uint64_t requests, acks, nacks; /* requests taken, and answers sent */
    uint64_t protocol_errors;       /* connections reset for a protocol error */
    uint64_t backoff_ms;            /* the wait before the next attempt while in ZDS_BACKOFF */
    char last_error[160];           /* why the last connection ended or failed, "" if none */
};
void zds_client_stats(const struct zds_client *c, struct zds_stats *out);

/* Processes one packet as if recvmsg had returned it on the current connection (data[0..len), its msg_flags,
 * fds[0..nfds) which the module now owns): the path of every received packet, for the fuzz target. Returns 0
 * when it was taken as a request, or -EPROTO when it was a protocol error (the connection is reset). -EBUSY
 * (fds closed) when a request or a retry pass is under way or nothing is connected. */
int zds_client_feed(struct zds_client *c, const uint8_t *data, size_t len, int msg_flags, const int *fds,
                    size_t nfds);
/* Uses fd, a connected SOCK_SEQPACKET socket, as the connection (sends the hello), for the fuzz target and
 * tests that drive the client without a listening socket. The module owns fd. Returns 0 or -errno. */
int zds_client_adopt(struct zds_client *c, int fd);
