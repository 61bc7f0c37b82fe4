/* The waypoint's internals, shared by its modules (src/waypoint/README.md).
 *
 * Data path: a worker accepts HBONE on 15008 (mutual TLS 1.3, the peer's SPIFFE id is the source principal),
 * checks each CONNECT's :authority against what this waypoint serves (a service VIP:port bound to it, or a
 * workload IP bound to it), answers 200 and bridges the tunnel to one end of a socketpair: the waypoint's
 * internal connection, what Envoy's waypoint does with its internal listener (connect_terminate ->
 * main_internal). The other end is read by the protocol handler: TCP passthrough (proxy.c), HTTP/1.1
 * (http1.c). Upstream, each request or passthrough connection opens an HBONE tunnel to the chosen endpoint
 * (podIP:15008, :authority podIP:targetPort, the waypoint's own certificate: Envoy's connect_originate) from
 * the worker's pool, again bridged to a socketpair end that the handler writes to.
 *
 * Threads: the main thread owns config (xDS or a file), the identity manager's subscription, admin and
 * signals; each worker owns a loop, its listener, its HBONE pool and its connections. A view (snapshot and,
 * later, L7 config) is refcounted and immutable; a tunnel keeps the view it started with. */
#pragma once
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include <jansson.h>

#include "core/acceptor.h"
#include "core/loop.h"
#include "core/net.h"
#include "h2/hbone.h"
#include "h2/hbone_pool.h"
#include "mesh/l7.h"
#include "mesh/lb.h"
#include "mesh/model.h"
#include "tls/identity.h"
#include "tls/spiffe.h"
#include "waypoint/settings.h"

/* TLS handshakes in progress per worker at most; at the bound the listener is held until one ends, so a
 * handshake flood cannot starve established tunnels (ztunnel's ZT_HANDSHAKES_MAX). */
#define WP_HANDSHAKES_MAX 16
/* An undeclared port's protocol is detected from the client's first bytes; a client that sends nothing for
 * this long is taken to speak a server-first protocol and relayed as TCP. */
#define WP_SNIFF_TIMEOUT_MS 1000
/* Bytes looked at to detect HTTP/1.1 (a method token and a space) or the HTTP/2 preface. */
#define WP_SNIFF_BYTES 24
/* Where endpoints take HBONE: their node's ztunnel on the pod's IP (Envoy's connect_originate cluster
 * overrides the port to 15008, istio/istio pilot/pkg/networking/core/cluster_waypoint.go). */
#define WP_HBONE_UPSTREAM_PORT 15008

/* What the waypoint works with: immutable, refcounted; a tunnel keeps the one it started with. */
struct wp_view {
    _Atomic int refs;
    struct snapshot *snap; /* reference held */
    struct l7_config *l7;  /* routes and L7 policies (reference held); NULL: none */
    uint64_t version;
};

/* A new reference to the current view, or NULL before the first config. Any thread. */
struct wp_view *wp_view_current(void);
void wp_view_unref(struct wp_view *v);
/* Main thread: publishes a view of snap and l7 (NULL: none; references are taken). Returns 0 or -ENOMEM. */
int wp_view_publish(struct snapshot *snap, struct l7_config *l7);

struct wp_in_conn;

struct wp_worker {
    int id;
    struct loop *loop;
    pthread_t thread;
    struct acceptor hbone;
    bool listening;
    struct hbone_pool *pool;
    unsigned handshakes;          /* inbound TLS handshakes in progress */
    _Atomic uint64_t active;      /* open downstream tunnels (the drain waits for 0) */
    struct wp_in_conn *in_conns;  /* live inbound HBONE connections */
    struct io mbox;               /* eventfd: the main thread's requests (drain) */
    _Atomic bool drain_requested;
    uint64_t rnd;                 /* xorshift state for load balancing */
};

extern struct wp_worker wp_workers[WP_MAX_WORKERS];
extern int wp_n_workers;

/* The waypoint's SPIFFE id and the current certificate for it (a new reference, or NULL before the first).
 * Any thread. */
extern struct spiffe_id wp_self;
extern char wp_self_uri[SPIFFE_MAX];
struct identity *wp_identity(void);
/* Main thread, before the workers start: the manager wp_identity asks. */
void wp_identity_source(struct identity_mgr *m);
/* The hostname services name this waypoint by: <gateway>.<ns>.svc.<cluster domain>. */
extern char wp_self_host[256];

/* True when g (a service's or workload's waypoint) is this waypoint. */
bool wp_serves(const struct gateway_addr *g);

/* Workers: creates them (listener on HBONE_PORT each, SO_REUSEPORT) and starts their threads. Returns 0 or
 * -1 (logged). */
int wp_workers_start(void);
/* Main thread: asks every worker to stop accepting and send GOAWAY on its HBONE connections. */
void wp_workers_drain(void);
/* Open downstream tunnels, all workers. */
uint64_t wp_active(void);

/* A uniformly random 64-bit value from the worker's generator. */
uint64_t wp_rand(struct wp_worker *w);
/* A new x-request-id (a UUID v4, as Envoy generates them) into out. */
#define WP_REQUEST_ID_LEN 40
void wp_request_id(struct wp_worker *w, char out[WP_REQUEST_ID_LEN]);

/* One downstream tunnel: an HBONE CONNECT this waypoint answered, bridged to fd (the handler's end). */
struct wp_tunnel {
    int refs; /* the downstream stream and the handler: one worker, no atomics */
    struct wp_worker *w;
    struct wp_view *view;      /* reference held */
    struct hbone_stream *down; /* NULL once it ended */
    const struct service *svc; /* the service addressed (VIP), or NULL for a workload address */
    const struct workload *dst_wl; /* the workload addressed (workload IP), or NULL */
    const struct workload *src_wl; /* by the downstream peer's IP; may be NULL */
    uint16_t port;                 /* the port of the :authority */
    struct ip_addr dst_ip;         /* the IP of the :authority */
    struct sockaddr_storage peer, local;
    char authority[64];
    char peer_id[SPIFFE_MAX]; /* the HBONE peer's SPIFFE id ("" if none) */
    uint64_t start_ms;        /* wall clock */
    uint8_t app_protocol;     /* the service port's, enum port_app_protocol */
};
void wp_tunnel_ref(struct wp_tunnel *t);
void wp_tunnel_unref(struct wp_tunnel *t);

/* The endpoint for a request of t to svc:port (a route's backend, or t's own service): Envoy's default
 * LEAST_REQUEST (power of two choices) among the endpoints the mesh's load balancer allows (health, locality
 * preference), or for a workload address (svc NULL) that workload with t's port. Returns 0, or -ENOENT (no
 * healthy upstream: Envoy's UH). */
int wp_pick_endpoint(struct wp_tunnel *t, const struct service *svc, uint16_t port, struct lb_choice *out);
/* A request (or passthrough connection) to w starts / ends: the least-request choice's counts (worker-local). */
void wp_endpoint_begin(const struct workload *w);
void wp_endpoint_end(const struct workload *w);
/* DestinationRule outlier detection, all workers: ejections so far, and the endpoints ejected now (their uids,
 * comma-separated, into buf[0..n); the return is how many). Any thread. */
uint64_t wp_outlier_ejections_total(void);
size_t wp_outlier_ejected(char *buf, size_t n);
/* The same for /metrics (Envoy's per-cluster ejection counter and gauge, appended to b) and /config_dump (a new
 * JSON array of {cluster, endpoint, ejectedForMs, ejections}, owned by the caller). */
struct prom_buf;
void wp_outlier_metrics(struct prom_buf *b, bool openmetrics);
json_t *wp_outlier_json(void);
/* Opens an HBONE tunnel for the worker to endpoint c (podIP:15008, :authority podIP:port, expecting the
 * endpoint workload's identity) bridged to fd (ownership passes; closed on failure). Returns the stream or
 * NULL with a static reason in *err. */
struct hbone_stream *wp_upstream_open(struct wp_worker *w, const struct lb_choice *c, int fd,
                                      const struct hbone_stream_ops *ops, void *ud, const char **err);
/* A connected pair of non-blocking, close-on-exec stream sockets (the internal connection). Returns 0 or
 * -errno. */
int wp_socketpair(int sv[2]);

/* What a client's first bytes say (an undeclared port): the HTTP/2 preface (h2c), an HTTP/1 method and a
 * space, anything else (TCP), or too few bytes yet. */
enum wp_sniff { WP_SNIFF_MORE, WP_SNIFF_HTTP1, WP_SNIFF_H2C, WP_SNIFF_TCP };
enum wp_sniff wp_sniff_classify(const char *b, size_t n);

/* Protocol handlers: each takes fd (its end of the downstream internal connection) and a reference to t. */
void wp_tcp_start(struct wp_tunnel *t, int fd);
void wp_http1_start(struct wp_tunnel *t, int fd);
void wp_h2c_start(struct wp_tunnel *t, int fd);

/* Milliseconds since the epoch (access logs). */
uint64_t wp_now_ms(void);

/* What one finished HTTP request knows, for the metrics and the access log (telemetry.h). Borrowed. */
struct wp_record {
    struct wp_tunnel *t;
    const char *method, *path, *protocol, *authority, *user_agent, *xff, *request_id;
    const struct workload *dst_wl;  /* the endpoint's, NULL when none was chosen */
    const struct service *dst_svc;  /* the service routed to (the addressed one by default) */
    int status;                     /* 0: no response sent */
    int grpc_status;                /* -1: none */
    bool grpc;
    const char *flags, *details;    /* Envoy's response flags ("-"), response code details */
    uint64_t req_wire, resp_wire;   /* headers and body as received / sent downstream */
    uint64_t body_in, body_out;     /* bodies only (%BYTES_RECEIVED%, %BYTES_SENT%) */
    uint64_t start_wall, duration_ms;
    int64_t upstream_ms;            /* x-envoy-upstream-service-time, -1 when none */
    const char *upstream_host, *route_name;
    uint64_t req_msgs, resp_msgs;   /* gRPC messages */
};
/* Counts r in Istio's HTTP metrics and writes its access log line (stdout, text or JSON by ACCESS_LOG_JSON). */
void wp_record_request(const struct wp_record *r);
