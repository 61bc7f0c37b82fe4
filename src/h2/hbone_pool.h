/* A per-thread pool of HBONE client connections (istio/ztunnel src/proxy/pool.rs), for every program that
 * originates HBONE: ztunnel (per worker, for the pods it serves) and the waypoint (per worker, for its own
 * identity).
 *
 * Key: an owner (opaque: ztunnel's pod, whose identity and network namespace the connection leaves with;
 * the waypoint passes itself), next hop, expected server identities and source IP (Istio's WorkloadKey,
 * src/proxy/h2/client.rs). A connection still in its handshake already takes streams, so concurrent first
 * streams to one key share one handshake; nothing blocks or locks: a pool belongs to one loop. A connection
 * that got GOAWAY or reached its stream limit takes no new streams; another is dialed. Connections without
 * streams for idle_ms are drained. A connection keeps a reference to the identity it was dialed with (it
 * borrows its SSL_CTX); after a rotation it keeps taking streams, as in Istio's pool (the peer authenticated
 * the certificate when it was valid), while new connections use the new identity. */
#pragma once
#include <stdint.h>
#include <sys/socket.h>

#include "core/loop.h"
#include "core/net.h"
#include "h2/hbone.h"
#include "tls/identity.h"

struct hbone_pool;

/* Makes a non-blocking socket connecting to hop for the owner (e.g. in the owner's network namespace), or
 * returns -errno. */
typedef int (*hbone_pool_dial_fn)(void *ud, const struct sockaddr_storage *hop);

/* A pool on loop l whose unused connections close after idle_ms; log_target names its log lines
 * ("ztunnel::proxy::pool"; static string). NULL on ENOMEM. */
struct hbone_pool *hbone_pool_new(struct loop *l, uint64_t idle_ms, const char *log_target);
/* Closes every connection now and frees the pool (the loop is stopping). */
void hbone_pool_free(struct hbone_pool *p);
/* Sends GOAWAY on every connection: they close when their streams end. */
void hbone_pool_drain(struct hbone_pool *p);
/* Closes every connection dialed for owner now (reason for their streams' logs) and forgets the owner, so a
 * later owner at the same address never matches its keys. */
void hbone_pool_drop_owner(struct hbone_pool *p, const void *owner, const char *reason);
/* Opens a CONNECT stream (hdrs include ":authority") for owner to hop, expecting one of sans[0..n_sans), with
 * src_ip as the key's source address: on a pooled connection with room, else on a new one dialed with
 * dial(dial_ud, hop) and ident's client context (a reference is taken). Takes tcp_fd. Returns the stream, or
 * NULL with a static reason in *err (tcp_fd closed). */
struct hbone_stream *hbone_pool_open(struct hbone_pool *p, const void *owner, struct identity *ident,
                                     hbone_pool_dial_fn dial, void *dial_ud, const struct sockaddr_storage *hop,
                                     const char *const *sans, size_t n_sans, const struct ip_addr *src_ip,
                                     const struct hbone_header *hdrs, size_t n_hdrs, int tcp_fd,
                                     const struct hbone_stream_ops *ops, void *ud, const char **err);
/* Connections in the pool (open or in their handshake). */
size_t hbone_pool_conns(const struct hbone_pool *p);
