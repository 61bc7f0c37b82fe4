/* RequestMirror for h2c and gRPC requests (h2c_mirror.h): one shadow stream per mirrored request, on h2c.c's
 * upstream pool, fed by the request's hooks, its response dropped. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <nghttp2/nghttp2.h>

#include "core/log.h"
#include "waypoint/bq.h"
#include "waypoint/h2c_mirror.h"
#include "waypoint/mirror.h"

#define LOG_MIRROR "waypoint::mirror"
#define MIRROR_MAX_HEADERS 256 /* h2c.c hands over at most its own header limit plus modifiers */

/* What the shadow is doing. */
enum mirror_state {
    MIRROR_COPYING,  /* the request it copies is still arriving */
    MIRROR_COMPLETE, /* its whole request is queued (END_STREAM seen): it ends on its own */
};

static const char *mirror_state_to_str(enum mirror_state s)
{
    return s == MIRROR_COPYING ? "copying" : "complete";
}

struct wp_h2c_mirror {
    struct wp_h2c_mirror **owner; /* the request's pointer to us; NULL once detached */
    struct wp_tunnel *t;          /* reference held (NULL: none): the view outlives the request */
    struct loop *loop;
    struct h2_stream *s;
    struct lb_choice ep;
    struct bq q; /* request bytes the shadow's session has not taken yet */
    enum mirror_state state;
    bool parked;
    struct timer timer; /* detached: the bound on its life */
    char route[128];
};

static void m_wake(struct wp_h2c_mirror *m)
{
    if (!m->parked) return;
    m->parked = false;
    h2_stream_resume(m->s);
}

/* Resets the shadow (on_end then frees it); the request goes on. lvl: the log line's level. */
static void m_abandon(struct wp_h2c_mirror *m, enum log_level lvl, const char *why)
{
    LOG_LIMITED(lvl, LOG_MIRROR, "RequestMirror of route %s: shadow abandoned (%s), the request goes on",
                m->route, why);
    h2_stream_end(m->s, H2_END_LOCAL, NGHTTP2_CANCEL, why);
}

static void m_timeout(struct timer *tm)
{
    struct wp_h2c_mirror *m = container_of(tm, struct wp_h2c_mirror, timer);
    m_abandon(m, LOG_INFO, "no response within the detached bound");
}

static size_t m_pull(struct h2_stream *s, void *ud, const uint8_t **data, bool *eof)
{
    (void)s;
    struct wp_h2c_mirror *m = ud;
    size_t n = bq_peek(&m->q, data);
    if (n) return n;
    if (m->q.eof) {
        *eof = true;
        return 0;
    }
    m->parked = true;
    return 0;
}

static void m_sent(struct h2_stream *s, void *ud, size_t n)
{
    (void)s;
    struct wp_h2c_mirror *m = ud;
    bq_drop(&m->q, n);
}

static void m_headers(struct h2_stream *s, void *ud, const struct h2_headers *h)
{
    (void)s;
    struct wp_h2c_mirror *m = ud;
    if (h->kind == H2_HEADERS_RESPONSE)
        LOG_D(LOG_MIRROR, "RequestMirror of route %s: the shadow answered %d (dropped)", m->route, h->status);
}

/* The shadow's response body: dropped, the window credited at once. */
static void m_data(struct h2_stream *s, void *ud, const uint8_t *data, size_t len)
{
    (void)ud;
    (void)data;
    h2_stream_consume(s, len);
}

static void m_end(struct h2_stream *s, void *ud, const struct h2_end *e)
{
    (void)s;
    struct wp_h2c_mirror *m = ud;
    if (e->reason != H2_END_OK && e->reason != H2_END_LOCAL)
        LOG_D(LOG_MIRROR, "RequestMirror of route %s: the shadow ended (%s, %s): %s", m->route,
              h2_end_reason_to_str(e->reason), mirror_state_to_str(m->state), e->detail);
    if (m->owner) *m->owner = NULL;
    if (timer_armed(&m->timer)) timer_stop(m->loop, &m->timer);
    bq_free(&m->q);
    if (m->t) {
        wp_endpoint_end(m->ep.wl);
        wp_tunnel_unref(m->t);
    }
    free(m);
}

static const struct h2_stream_ops m_ops = {
    .on_headers = m_headers, .on_data = m_data, .pull = m_pull, .sent = m_sent, .on_end = m_end};

int wp_h2c_mirror_open(struct wp_h2c_mirror **slot, struct h2_conn *c, struct wp_tunnel *t,
                       const struct lb_choice *ep, const char *route, const struct h2_header *headers,
                       size_t n, bool body)
{
    *slot = NULL;
    char host[WP_SHADOW_HOST_MAX];
    ssize_t hl = -EINVAL;
    struct h2_header hv[MIRROR_MAX_HEADERS];
    if (n > MIRROR_MAX_HEADERS) {
        LOG_LIMITED(LOG_WARN, LOG_MIRROR, "RequestMirror of route %s: %zu headers, over %d: no shadow sent",
                    route, n, MIRROR_MAX_HEADERS);
        return -ENOSPC;
    }
    for (size_t i = 0; i < n; i++) {
        hv[i] = headers[i];
        if (!strcmp(headers[i].name, ":authority")) {
            hl = wp_shadow_host(headers[i].value, strlen(headers[i].value), host, sizeof(host));
            hv[i].value = host;
        }
    }
    if (hl < 0) {
        LOG_LIMITED(LOG_WARN, LOG_MIRROR, "RequestMirror of route %s: %s: no shadow sent", route,
                    hl == -ENOSPC ? "the :authority is too long for its shadow form"
                                  : "the request has no :authority");
        return (int)hl;
    }
    struct wp_h2c_mirror *m = calloc(1, sizeof(*m));
    if (!m) return -ENOMEM;
    snprintf(m->route, sizeof(m->route), "%s", route);
    m->s = h2_stream_open(c, hv, n, body ? H2_BODY : 0, &m_ops, m);
    if (!m->s) {
        LOG_LIMITED(LOG_WARN, LOG_MIRROR,
                    "RequestMirror of route %s: the upstream session refused the shadow stream", route);
        free(m);
        return -EIO;
    }
    m->owner = slot;
    m->loop = h2_conn_loop(c);
    m->t = t;
    if (t) {
        wp_tunnel_ref(t);
        m->ep = *ep;
        wp_endpoint_begin(ep->wl); /* ended in m_end */
    }
    m->timer.cb = m_timeout;
    m->state = body ? MIRROR_COPYING : MIRROR_COMPLETE;
    if (!body) m->q.eof = true;
    *slot = m;
    return 0;
}

int wp_h2c_mirror_start(struct wp_h2c_mirror **slot, struct wp_tunnel *t, const struct wp_decision *dec,
                        const struct h2_header *headers, size_t n, bool body)
{
    const char *route = dec->route_name ? dec->route_name : "-";
    *slot = NULL;
    struct lb_choice ep;
    if (wp_pick_endpoint(t, dec->mirror_svc, dec->mirror_port, &ep) < 0) {
        LOG_LIMITED(LOG_WARN, LOG_MIRROR,
                    "RequestMirror of route %s: no healthy endpoint of %s: no shadow sent", route,
                    dec->mirror_svc->hostname);
        return -ENOENT;
    }
    const char *err = "failed";
    struct h2_conn *c = wp_h2c_upstream(t->w, &ep, &err);
    if (!c) {
        LOG_LIMITED(LOG_WARN, LOG_MIRROR, "RequestMirror of route %s: no upstream session to %s: %s", route,
                    dec->mirror_svc->hostname, err);
        return -EIO;
    }
    return wp_h2c_mirror_open(slot, c, t, &ep, route, headers, n, body);
}

void wp_h2c_mirror_data(struct wp_h2c_mirror *m, const uint8_t *p, size_t n)
{
    if (!m || !n) return;
    if (m->q.bytes + n > WP_MIRROR_BUFFER_MAX) {
        m_abandon(m, LOG_WARN, "more than 1 MiB waiting for the shadow");
        return;
    }
    if (bq_push(&m->q, p, n) < 0) {
        m_abandon(m, LOG_WARN, "out of memory");
        return;
    }
    m_wake(m);
}

void wp_h2c_mirror_trailers(struct wp_h2c_mirror *m, const struct h2_header *h, size_t n)
{
    if (!m) return;
    if (h2_stream_trailers(m->s, h, n) == -ENOMEM) m_abandon(m, LOG_WARN, "out of memory");
}

void wp_h2c_mirror_eof(struct wp_h2c_mirror *m)
{
    if (!m) return;
    m->state = MIRROR_COMPLETE;
    m->q.eof = true;
    m_wake(m);
}

void wp_h2c_mirror_detach(struct wp_h2c_mirror *m)
{
    if (!m) return;
    *m->owner = NULL;
    m->owner = NULL;
    if (m->state != MIRROR_COMPLETE) {
        m_abandon(m, LOG_DEBUG, "the request it copies was cut short");
        return;
    }
    timer_start(m->loop, &m->timer, WP_MIRROR_DETACHED_MS);
}
