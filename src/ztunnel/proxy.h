/* The ztunnel proxy: the listener set of one pod (15001 outbound, 15006 inbound plaintext, 15008 inbound
 * HBONE) and the per-worker state that serves it. A pod_proxy (names, SPIFFE id) is read-only once built and
 * shared by all workers; the config (a view) and the certificate (an identity) are refcounted objects that
 * are swapped as a whole and handed to each worker by message. Each worker has its own loop, listener
 * sockets (SO_REUSEPORT) and connection pool. */
#pragma once
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "core/acceptor.h"
#include "core/list.h"
#include "core/loop.h"
#include "core/net.h"
#include "mesh/model.h"
#include "tls/ca.h"
#include "tls/identity.h"
#include "tls/spiffe.h"

#define PORT_OUTBOUND 15001
#define PORT_INBOUND_PLAIN 15006
#define PORT_HBONE 15008
#define PORT_SOCKS5 15080
#define ZT_MARK 0x539

/* One loaded config as one pod sees it. Immutable; refcounted; a connection keeps the view it started
 * with, so a reload never changes what an open connection points to. */
struct zt_view {
    _Atomic int refs;
    uint64_t version;
    struct snapshot *snap;       /* reference held */
    const struct workload *self; /* in snap; NULL when the config does not list this pod */
    const char *network;         /* self's network, "" by default */
    char baggage[1024];          /* this pod's baggage header value */
};

/* Builds a view of snap (a reference is taken) for the pod ns/name. Returns NULL on OOM. */
struct zt_view *zt_view_new(struct snapshot *snap, const char *ns, const char *name, uint64_t version);
void zt_view_ref(struct zt_view *v);
void zt_view_unref(struct zt_view *v);

struct worker;
struct zt_pod;

/* One pod this ztunnel serves: its names, SPIFFE id and network namespace (immutable once built), its
 * certificate subscription, and one zt_pod per worker. Dedicated mode has one, in ztunnel's own namespace;
 * shared mode one per pod the node agent handed over ZDS. Built, published and retired by the main thread;
 * freed when the main thread and every worker have let go of it (refs). */
struct pod_proxy {
    struct pod_proxy *next, *prev; /* the main thread's list */
    char uid[128];                 /* the ZDS uid; "" in dedicated mode */
    char ns[128], name[128], sa[128];
    struct spiffe_id id;
    char id_uri[SPIFFE_MAX];
    /* The pod's network namespace (owned), or -1 for ztunnel's own: every socket on the pod's side is
     * created in it (listeners, connections to the app, outbound connections to peers). */
    int netns_fd;
    /* The certificate comes from the identity manager; each new one is handed to every worker. */
    struct identity_mgr *idm;
    struct identity_sub *id_sub;
    struct worker *workers;
    int n_workers;
    struct zt_pod *slots; /* [n_workers]: slots[i] is served by workers[i] */
    _Atomic int refs;
    _Atomic bool has_identity; /* the first certificate reached the workers (readiness) */
    /* The current view, for threads other than the workers (admin). Workers get theirs by message. */
    pthread_mutex_t view_lock;
    struct zt_view *view;
};

/* One pod as one worker serves it: its listener set, the view and certificate new connections take, and
 * the pod's live connections on this worker. Worker thread only, except the mailbox. */
struct out_conn;
struct in_conn;
struct in_stream;
struct plain_conn;
struct zt_pod {
    struct zt_pod *next, *prev; /* in worker.pods once added */
    struct worker *w;
    struct pod_proxy *pp;
    struct zt_view *view;   /* reference held */
    struct identity *ident; /* reference held; NULL until the first one arrives */
    struct acceptor listeners[3]; /* 15001, 15006, 15008; held (not accepting) until ident arrives */
    int listen_fds[3];            /* made by the main thread in the pod's namespace; -1 once started */
    bool listening, linked, removed;
    unsigned refs; /* this pod's connections (and other objects) alive on the worker */
    struct out_conn *out_conns;
    struct in_conn *in_conns;
    struct in_stream *in_streams;
    struct plain_conn *plain_conns;
    /* Mailbox, under the worker's msg_lock: what other threads posted since the worker last looked. */
    struct zt_pod *msg_next;
    bool msg_queued, msg_add, msg_remove;
    struct zt_view *msg_view;
    struct identity *msg_ident;
};
/* A connection of p (or another object) starts or ends: the pod is freed once it is removed and the last
 * one has ended. Worker thread. */
static inline void zt_pod_hold(struct zt_pod *p)
{
    p->refs++;
}
void zt_pod_put(struct zt_pod *p);

/* A connection's share of the TCP metrics: its label set and what was already added to it. */
struct zt_stats {
    struct metric_set *ms;
    uint64_t recv, sent; /* reported so far: received = client->server, sent = server->client */
};
struct metric_set;
struct conn_info;
/* Opens the metrics of a connection (counts it opened). */
void zt_stats_open(struct zt_stats *st, const struct conn_info *ci);
/* Adds the bytes moved since the last call (totals so far in recv/sent). */
void zt_stats_update(struct zt_stats *st, uint64_t recv, uint64_t sent);
/* Final totals, then counts the close under flags ("-" when clean); failed when it never got through. */
void zt_stats_close(struct zt_stats *st, uint64_t recv, uint64_t sent, const char *flags, bool failed);
/* Outbound: reports the bytes of every live outbound connection of the pod (the worker's stats timer). */
void outbound_report(struct zt_pod *p);
/* Inbound: the same for inbound connections. */
void inbound_report(struct zt_pod *p);

struct pool;

/* Per-thread state: one loop, the pods it serves (each with its own listeners), one connection pool. */
struct worker {
    int index;
    pthread_t thread;
    struct loop *loop;
    struct zt_pod *pods; /* every pod added and not yet freed */
    unsigned handshakes; /* inbound TLS handshakes in progress on 15008 (at most ZT_HANDSHAKES_MAX) */
    struct in_conn *hs_head, *hs_tail; /* those handshakes, oldest first */
    struct timer hs_timer;             /* at the bound: when the oldest one has stalled */
    struct pool *pool;
    /* Messages from other threads (pods' mailboxes with something new, a drain request), signalled through
     * an eventfd. */
    struct io wake;
    pthread_mutex_t msg_lock;
    struct zt_pod *msg_head;
    bool msg_drain;
    bool draining;
    _Atomic uint64_t active; /* open client-facing connections, read by the main thread */
    struct timer stats_timer;
};

/* Builds the proxy of pod ns/name/sa (identity in trust_domain, NULL for the default) to be served by
 * ws[0..n) (initialised workers) in the network namespace netns_fd (owned on success; -1 for ztunnel's own):
 * its listener sockets are made now, in that namespace, with SO_REUSEPORT so another ztunnel can serve the
 * same pod during an upgrade. uid is the ZDS uid ("" without one). Main thread. Returns 0 or -errno with err
 * filled (nothing is kept then, and netns_fd is still the caller's). */
int pod_proxy_new(struct pod_proxy **out, const char *uid, const char *ns, const char *name, const char *sa,
                  const char *trust_domain, int netns_fd, struct worker *ws, int n, char *err, size_t errlen);
/* Hands the pod to its workers with its first view (a reference is taken) and subscribes its SPIFFE id at
 * idm (borrowed, must outlive pp): every certificate goes to the workers; until the first one arrives the
 * pod's listeners queue connections without accepting them. Returns 0 or -ENOMEM (then retire it). */
int pod_proxy_start(struct pod_proxy *pp, struct zt_view *view, struct identity_mgr *idm);
/* Returns a new reference to the current view (any thread). */
struct zt_view *pod_proxy_view(struct pod_proxy *pp);
/* Hands a new view to every worker serving the pod (each takes its own reference) and records it as current.
 * Main thread. */
void pod_proxy_publish_view(struct pod_proxy *pp, struct zt_view *v);
/* Stops serving the pod and drops the caller's reference: its identity is released (the certificate is
 * forgotten when no other pod has it), and each worker closes the pod's listeners and connections at once,
 * as Istio drains a deleted pod (DrainMode::Immediate), then frees its slot. Other pods are not touched.
 * Main thread. */
void pod_proxy_retire(struct pod_proxy *pp);
/* Sets up worker w (loop, eventfd, pool); pods are added to it by pod_proxy_start. Returns 0 or -errno with
 * err filled. */
int worker_init(struct worker *w, int index, char *err, size_t errlen);
/* Asks a worker to stop accepting and drain its connections (every pod's). */
void worker_post_drain(struct worker *w);

/* Inbound TLS handshakes in progress per worker on 15008. A handshake costs the server about 2.3 ms of CPU
 * (TESTING.md: OpenSSL 3.0, P-256), and a worker runs every ClientHello of a batch before it serves the
 * next event of an established tunnel; with the bound, one batch holds at most this many handshakes (about
 * 40 ms), while more wait in the kernel's backlog. Handshakes end within HBONE_HANDSHAKE_TIMEOUT_MS. */
#define ZT_HANDSHAKES_MAX 16
/* At the bound, a handshake still in progress this long after its accept is closed to make room: a peer's
 * handshake takes about one round trip plus a few ms of CPU, so only a stalled or half-open client (one that
 * sends nothing, or part of a ClientHello) is this slow. Without it such clients would hold every slot for
 * HBONE_HANDSHAKE_TIMEOUT_MS and keep new HBONE connections waiting. */
#define ZT_HANDSHAKE_STALL_MS 1000

/* Accept handlers of 15001 (outbound), 15006 (inbound plaintext) and 15008 (inbound HBONE): each takes the
 * accepted fd (ownership passes). */
void outbound_accept(struct acceptor *a, int fd, const struct sockaddr_storage *peer);
void inbound_plain_accept(struct acceptor *a, int fd, const struct sockaddr_storage *peer);
void inbound_hbone_accept(struct acceptor *a, int fd, const struct sockaddr_storage *peer);
/* 15008's "may accept" hook: false while ZT_HANDSHAKES_MAX handshakes are in progress on the worker (it then
 * arms the worker's hs_timer, which closes handshakes stalled for ZT_HANDSHAKE_STALL_MS). */
bool inbound_hbone_may_accept(struct acceptor *a);
/* Inbound: re-checks live connections after a view change and closes those the policies now deny. */
void inbound_reauthorize(struct zt_pod *p);
/* Inbound: sends GOAWAY on every HBONE connection of the pod (drain). */
void inbound_drain(struct zt_pod *p);
/* Closes every connection of the pod now (a deleted pod): inbound and outbound. */
void inbound_abort(struct zt_pod *p);
void outbound_abort(struct zt_pod *p);

/* The HBONE connection pool of one worker (istio/ztunnel src/proxy/pool.rs), shared by the pods it serves:
 * connections are keyed by the pod they were dialed for (its identity and namespace) as well as the next
 * hop, the expected identities and the source IP. */
struct pool *pool_new(struct worker *w);
void pool_drain(struct pool *p);
/* Closes every connection dialed for pod (a deleted pod). */
void pool_drop_pod(struct pool *p, struct zt_pod *pod);
struct hbone_stream;
struct hbone_stream_ops;
struct hbone_header;
/* Opens a CONNECT stream for pod to next_hop (expecting one of the SANs), reusing a pooled connection with room or
 * dialing a new one; concurrent first streams to one key share one handshake. Takes tcp_fd. Returns the
 * stream, or NULL with a reason in *err (tcp_fd closed). */
struct hbone_stream *pool_open_stream(struct pool *p, struct zt_pod *pod, const struct sockaddr_storage *next_hop,
                                      const char *const *sans, size_t n_sans, const struct ip_addr *src_ip,
                                      const struct hbone_header *hdrs, size_t n_hdrs, int tcp_fd,
                                      const struct hbone_stream_ops *ops, void *ud, const char **err);

/* True for ports that are ztunnel's own (a destination there would loop). */
static inline bool zt_illegal_port(uint16_t p)
{
    return p == PORT_OUTBOUND || p == PORT_INBOUND_PLAIN || p == PORT_HBONE || p == PORT_SOCKS5;
}

/* Creates, in the network namespace netns_fd (-1: ztunnel's own), a non-blocking TCP socket of the address's family with SO_MARK 0x539 (so the in-pod rules do not
 * capture it again), TCP_NODELAY and, for long-lived HBONE connections, keepalive; if spoof_src is set, binds
 * it to that address with IP_TRANSPARENT/IP_FREEBIND (best effort), then starts connecting. Returns fd or
 * -errno. */
int zt_connect(int netns_fd, const struct sockaddr_storage *dst, const struct ip_addr *spoof_src, bool keepalive);
/* ztunnel's own network namespace, opened by the main thread before the first pod (zt_connect's way home). */
extern int zt_home_netns;

/* What an access log line says about one connection. Any string may be NULL. */
struct access_rec {
    const char *direction;
    struct ip_port src, dst;   /* dst: the L4 next hop */
    struct ip_port hbone_addr; /* the CONNECT authority; port 0 when there is none */
    const struct workload *src_wl, *dst_wl;
    const struct service *dst_svc;
    const char *src_identity, *dst_identity;
    uint64_t bytes_sent, bytes_recv; /* from the client's point of view: sent = to the client */
    uint64_t start_ms;
    const char *error;
};
/* Writes a "connection complete" access log line (INFO, or ERROR with error=). */
void access_log(const struct access_rec *r);
/* Writes a "connection opened" access log line (DEBUG). */
void access_log_opened(const struct access_rec *r);
/* Monotonic milliseconds. */
uint64_t zt_now_ms(void);
/* Random 64-bit value (per-thread xorshift seeded from getrandom). */
uint64_t zt_random(void);
