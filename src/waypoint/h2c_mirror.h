/* RequestMirror for HTTP/2 (h2c and gRPC) requests, as Envoy's request shadowing (envoyproxy/envoy
 * source/common/router/router.cc, shadow_writer_impl.cc): a copy of the routed request, headers as sent to
 * the backend but with ":authority" in its shadow form (mirror.h), goes to an endpoint of the mirror Service
 * on the same pooled upstream h2c sessions the request itself uses (h2c.c); its body and trailers are copied
 * as they arrive and its response is read and dropped. The shadow never slows or fails the request it copies:
 * its bytes wait in its own queue, and past WP_MIRROR_BUFFER_MAX waiting the copy is abandoned (the shadow
 * stream reset), never the request held back.
 *
 * The request (h2c.c) keeps the mirror in one pointer and calls the hooks below with it; the mirror clears
 * that pointer when it ends or is abandoned, so every hook takes NULL and is then a no-op. Worker thread
 * only. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "h2/session.h"
#include "mesh/lb.h"
#include "waypoint/route.h"
#include "waypoint/wp.h"

/* Request bytes queued for a shadow that has not taken them yet, at most: Envoy's default buffer limit per
 * connection (per_connection_buffer_limit_bytes, 1 MiB), which its router gives a shadow stream. */
#define WP_MIRROR_BUFFER_MAX (1u << 20)
/* A shadow whose request is complete finishes on its own after the request it copies ended, for at most this
 * long (its response is dropped anyway); then it is reset so it does not hold an upstream stream forever.
 * zmesh's bound: 15 s is Envoy's default route timeout. */
#define WP_MIRROR_DETACHED_MS 15000

struct wp_h2c_mirror;

/* h2c.c's pooled upstream h2c session to ep (per worker and endpoint) that can take one more stream, opened
 * when none can. Returns it (owned by the pool) or NULL with a static reason in *err. */
struct h2_conn *wp_h2c_upstream(struct wp_worker *w, const struct lb_choice *ep, const char **err);

/* Starts the shadow of a request of tunnel t routed with dec (dec->mirror_svc set): an endpoint of
 * mirror_svc:mirror_port, a stream with headers[0..n) (pseudo-headers first, ":authority" among them; copied,
 * the authority in its shadow form), a body to follow through the hooks when body is set. On success *slot
 * holds the mirror (the caller's pointer, cleared by the mirror when it ends) and 0 is returned; else *slot
 * is NULL and a negative errno is returned (-ENOENT: no healthy endpoint, -EINVAL: no authority, -ENOSPC: the
 * authority too long, -EIO: no upstream stream), logged rate-limited with the route's name. */
int wp_h2c_mirror_start(struct wp_h2c_mirror **slot, struct wp_tunnel *t, const struct wp_decision *dec,
                        const struct h2_header *headers, size_t n, bool body);
/* wp_h2c_mirror_start once the endpoint and its session are chosen: opens the shadow stream on the client
 * session c (any h2 client session; tests use their own). t and ep: the tunnel to hold a reference to and the
 * endpoint to count in the least-request choice, or t NULL for neither. route (copied) names the route in
 * logs. Returns 0 with *slot set, or -EINVAL, -ENOSPC, -ENOMEM, -EIO (the session refused the stream) with
 * *slot NULL. */
int wp_h2c_mirror_open(struct wp_h2c_mirror **slot, struct h2_conn *c, struct wp_tunnel *t,
                       const struct lb_choice *ep, const char *route, const struct h2_header *headers,
                       size_t n, bool body);
/* Request body bytes p[0..n) (copied). Past WP_MIRROR_BUFFER_MAX queued the shadow is abandoned. */
void wp_h2c_mirror_data(struct wp_h2c_mirror *m, const uint8_t *p, size_t n);
/* The request's trailers (copied): sent after the body. */
void wp_h2c_mirror_trailers(struct wp_h2c_mirror *m, const struct h2_header *h, size_t n);
/* The request's end (END_STREAM): the shadow's request ends after what is queued. */
void wp_h2c_mirror_eof(struct wp_h2c_mirror *m);
/* The request's downstream stream ended: a shadow whose request is complete finishes on its own (within
 * WP_MIRROR_DETACHED_MS); one whose request was cut short is reset, never ended as if complete. The caller's
 * pointer is cleared. */
void wp_h2c_mirror_detach(struct wp_h2c_mirror *m);
