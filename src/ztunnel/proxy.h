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

/* One loaded config as this pod sees it. Immutable; refcounted; a connection keeps the view it started
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

/* One pod's names and SPIFFE id (immutable after pod_proxy_new) and its certificate subscription. */
struct pod_proxy {
    char ns[128], name[128], sa[128];
    struct spiffe_id id;
    char id_uri[SPIFFE_MAX];
    /* The certificate comes from the identity manager; each new one is handed to every worker. */
    struct identity_mgr *idm;
    struct identity_sub *id_sub;
    struct worker *workers;
    int n_workers;
    _Atomic bool has_identity; /* the first certificate reached the workers (readiness) */
    /* The current view, for threads other than the workers (admin). Workers get theirs by message. */
    pthread_mutex_t view_lock;
    struct zt_view *view;
};

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
/* Outbound: reports the bytes of every live outbound connection (called by the worker's stats timer). */
void outbound_report(struct worker *w);
/* Inbound: the same for inbound connections. */
void inbound_report(struct worker *w);

struct pool;
struct out_conn;
struct in_conn;
struct in_stream;
struct plain_conn;

/* Per-thread state: one loop, this worker's listeners, pool and live connections. */
struct worker {
    int index;
    pthread_t thread;
    struct loop *loop;
    struct pod_proxy *pp;
    struct zt_view *view; /* this worker's current view (reference held) */
    /* This worker's certificate and TLS contexts (reference held); NULL until the first one arrives. New
     * connections take it; each keeps a reference to the one it was made with. */
    struct identity *ident;
    struct acceptor listeners[3]; /* 15001, 15006, 15008; held (not accepting) until ident arrives */
    bool listening;
    unsigned handshakes; /* inbound TLS handshakes in progress on 15008 (at most ZT_HANDSHAKES_MAX) */
    struct in_conn *hs_head, *hs_tail; /* those handshakes, oldest first */
    struct timer hs_timer;             /* at the bound: when the oldest one has stalled */
    struct pool *pool;
    /* Messages from other threads: a new view, a new identity or a drain request, signalled through an
     * eventfd. */
    struct io wake;
    pthread_mutex_t msg_lock;
    struct zt_view *msg_view;
    struct identity *msg_ident;
    bool msg_drain;
    bool draining;
    /* Live connections, for policy re-evaluation, drain and live byte counters. */
    struct out_conn *out_conns;
    struct in_conn *in_conns;
    struct in_stream *in_streams;
    struct plain_conn *plain_conns;
    _Atomic uint64_t active; /* open client-facing connections, read by the main thread */
    struct timer stats_timer;
};

/* Builds the pod proxy for namespace/name/sa (trust domain from view's workload). Returns 0 or -errno. */
int pod_proxy_new(struct pod_proxy **out, struct zt_view *view, const char *ns, const char *name,
                  const char *sa, char *err, size_t errlen);
/* Subscribes the pod's SPIFFE id at idm (borrowed, must outlive pp) and hands every certificate it gets to
 * ws[0..n) (initialised workers); until the first one arrives the workers' listeners queue connections
 * without accepting them. Returns 0 or -ENOMEM. */
int pod_proxy_start_identity(struct pod_proxy *pp, struct identity_mgr *idm, struct worker *ws, int n);
/* Returns a new reference to the current view (any thread). */
struct zt_view *pod_proxy_view(struct pod_proxy *pp);
/* Sets up worker w (loop, eventfd, pool, listener sockets; they accept once the first identity arrives).
 * Returns 0 or -errno with err filled. */
int worker_init(struct worker *w, int index, struct pod_proxy *pp, struct zt_view *view, char *err,
                size_t errlen);
/* Hands a new view to every worker (each takes its own reference) and records it as current. */
void workers_publish_view(struct pod_proxy *pp, struct worker *ws, int n, struct zt_view *v);
/* Hands a new identity to every worker (each takes its own reference). Any thread; does not block. */
void workers_publish_identity(struct worker *ws, int n, struct identity *id);
/* Asks a worker to stop accepting and drain its connections. */
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
void inbound_reauthorize(struct worker *w);
/* Inbound: sends GOAWAY on every HBONE connection (drain). */
void inbound_drain(struct worker *w);

/* The HBONE connection pool of one worker (istio/ztunnel src/proxy/pool.rs). */
struct pool *pool_new(struct worker *w);
void pool_drain(struct pool *p);
struct hbone_stream;
struct hbone_stream_ops;
struct hbone_header;
/* Opens a CONNECT stream to next_hop (expecting one of the SANs), reusing a pooled connection with room or
 * dialing a new one; concurrent first streams to one key share one handshake. Takes tcp_fd. Returns the
 * stream, or NULL with a reason in *err (tcp_fd closed). */
struct hbone_stream *pool_open_stream(struct pool *p, const struct sockaddr_storage *next_hop,
                                      const char *const *sans, size_t n_sans, const struct ip_addr *src_ip,
                                      const struct hbone_header *hdrs, size_t n_hdrs, int tcp_fd,
                                      const struct hbone_stream_ops *ops, void *ud, const char **err);

/* True for ports that are ztunnel's own (a destination there would loop). */
static inline bool zt_illegal_port(uint16_t p)
{
    return p == PORT_OUTBOUND || p == PORT_INBOUND_PLAIN || p == PORT_HBONE || p == PORT_SOCKS5;
}

/* Creates a non-blocking TCP socket of the address's family with SO_MARK 0x539 (so the in-pod rules do not
 * capture it again), TCP_NODELAY and, for long-lived HBONE connections, keepalive; if spoof_src is set, binds
 * it to that address with IP_TRANSPARENT/IP_FREEBIND (best effort), then starts connecting. Returns fd or
 * -errno. */
int zt_connect(const struct sockaddr_storage *dst, const struct ip_addr *spoof_src, bool keepalive);

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
