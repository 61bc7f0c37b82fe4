/* The ztunnel proxy: the listener set of one pod (15001 outbound, 15006 inbound plaintext, 15008 inbound
 * HBONE) and the per-worker state that serves it. A pod_proxy is read-only once built and shared by all
 * workers; each worker has its own loop, listener sockets (SO_REUSEPORT) and connection pool. */
#pragma once
#include <openssl/ssl.h>
#include <stdatomic.h>
#include <stdint.h>

#include "core/loop.h"
#include "core/net.h"
#include "mesh/model.h"
#include "tls/ca.h"
#include "tls/spiffe.h"

#define PORT_OUTBOUND 15001
#define PORT_INBOUND_PLAIN 15006
#define PORT_HBONE 15008
#define PORT_SOCKS5 15080
#define ZT_MARK 0x539

/* One pod's identity, certificates and config; immutable after pod_proxy_new. */
struct pod_proxy {
    char ns[128], name[128], sa[128];
    struct spiffe_id id;
    char id_uri[SPIFFE_MAX];
    struct snapshot *snap;        /* reference held */
    const struct workload *self;  /* in snap; NULL when the config does not list this pod */
    const char *network;          /* self's network, "" by default */
    struct tls_cert *cert;        /* reference held */
    SSL_CTX *server_ctx, *client_ctx;
    char baggage[1024];           /* this pod's baggage header value */
};

struct pool;

/* Per-thread state: one loop, this worker's listeners and pool. */
struct worker {
    int index;
    struct loop *loop;
    struct pod_proxy *pp;
    struct io listeners[3];
    struct pool *pool;
    _Atomic uint64_t active;
};

/* Builds the pod proxy for namespace/name/sa from snap (borrowed reference taken) and the provider.
 * Returns 0 or -errno with err filled. */
int pod_proxy_new(struct pod_proxy **out, struct snapshot *snap, struct cert_provider *prov, const char *ns,
                  const char *name, const char *sa, char *err, size_t errlen);
/* Opens this worker's listeners (SO_REUSEPORT) and registers them with its loop. Returns 0 or -errno. */
int worker_listen(struct worker *w, char *err, size_t errlen);

/* Outbound (15001) and inbound (15006, 15008) accept handlers. */
void outbound_accept(struct io *io, uint32_t ev);
void inbound_plain_accept(struct io *io, uint32_t ev);
void inbound_hbone_accept(struct io *io, uint32_t ev);

/* The HBONE connection pool of one worker (reference §1.5). */
struct pool *pool_new(struct worker *w);
struct hbone_stream;
struct hbone_stream_ops;
struct hbone_header;
/* Opens a CONNECT stream to next_hop (expecting one of the SANs), reusing a pooled connection with room or
 * dialing a new one; concurrent first streams to one key share one handshake. Takes tcp_fd. Returns the
 * stream, or NULL with errno-style reason in *err (tcp_fd closed). */
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
 * capture it again), TCP_NODELAY and keepalive; if spoof_src is set, binds it to that address with
 * IP_TRANSPARENT/IP_FREEBIND (best effort), then starts connecting. Returns fd or -errno. */
int zt_connect(const struct sockaddr_storage *dst, const struct ip_addr *spoof_src);

/* Writes a "connection complete"/"connection failed" access log line. Any string may be NULL. */
struct access_rec {
    const char *direction;
    struct sockaddr_storage src, dst;   /* dst: the L4 next hop */
    const char *hbone_addr;             /* authority, or NULL */
    const struct workload *src_wl, *dst_wl;
    const char *src_identity, *dst_identity;
    uint64_t bytes_sent, bytes_recv;    /* from the client's point of view: sent = to the client */
    uint64_t start_ms;
    const char *error;
};
void access_log(struct worker *w, const struct access_rec *r);
/* Monotonic milliseconds. */
uint64_t zt_now_ms(void);
