/* Inbound: HBONE on 15008 (mTLS + HTTP/2 CONNECT, istio/ztunnel src/proxy/inbound.rs) and plaintext on 15006.
 * Connections to the app carry the client's IP as their source (IP_TRANSPARENT), so the app sees who called.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/log.h"
#include "core/relay.h"
#include "h2/hbone.h"
#include "mesh/authz.h"
#include "ztunnel/metrics.h"
#include "ztunnel/proxy.h"

#define APP_CONNECT_TIMEOUT_MS 10000

/* One accepted HBONE connection. */
struct in_conn {
    struct in_conn *next, *prev;
    struct zt_pod *pod;
    struct hbone_conn *c;
    struct identity *ident; /* the identity c was accepted with (reference held: c borrows its SSL_CTX) */
    struct sockaddr_storage peer, local;
    unsigned streams;
    bool closed;
    bool handshaking; /* counted in worker.handshakes, linked in worker.hs_head */
    struct in_conn *hs_next, *hs_prev;
    uint64_t hs_start; /* accept time, loop ms */
};

/* One CONNECT stream, from request to end. */
struct in_stream {
    struct in_stream *next, *prev;
    struct zt_view *view; /* the config this stream was authorized with */
    struct in_conn *ic;
    struct hbone_stream *s;
    struct io io; /* app connect in progress; fd -1 otherwise */
    struct timer timer;
    struct access_rec rec;
    const char *peer_id;  /* the HBONE connection's (it outlives its streams); NULL without one */
    struct authz_conn az; /* what the policies judge; kept to re-check on policy changes */
    bool authorized;
    bool late_denied; /* closed by a policy change after it was admitted */
    struct zt_stats stats;
};

/* Applies the view's policies to a connection to the workload at az->dst_ip. */
static bool authorized(const struct zt_view *v, const struct authz_conn *az)
{
    const struct workload *dst = snapshot_workload_by_ip(v->snap, v->network, &az->dst_ip);
    const char *policy = NULL;
    if (!dst) return true; /* nothing to enforce on an unknown destination; it gets 503 anyway */
    if (authz_check(v->snap, dst, az, &policy) == AUTHZ_ALLOW) return true;
    LOG_D("authz", "denied by %s", policy ? policy : "no matching ALLOW policy");
    return false;
}

static void in_conn_put(struct in_conn *ic)
{
    if (!ic->closed || ic->streams != 0) return;
    struct zt_pod *pod = ic->pod;
    identity_unref(ic->ident);
    free(ic);
    zt_pod_put(pod);
}

static void in_cancel_connect(struct in_stream *is)
{
    if (is->io.fd < 0) return;
    loop_io_close(is->ic->pod->w->loop, &is->io);
    timer_stop(is->ic->pod->w->loop, &is->timer);
}

static void in_stream_done(struct hbone_stream *s, void *ud, const struct hbone_result *r)
{
    (void)s;
    struct in_stream *is = ud;
    struct in_conn *ic = is->ic;
    in_cancel_connect(is);
    is->rec.bytes_recv = r->bytes_to_tcp;
    is->rec.bytes_sent = r->bytes_to_h2;
    char err[96];
    if (!r->error && r->status == 401) {
        is->rec.error = "connection closed due to policy rejection";
    } else if (!r->error && r->status != 200) {
        snprintf(err, sizeof(err), "rejected with HTTP status %d", r->status);
        is->rec.error = err;
    } else {
        is->rec.error = r->error;
    }
    if (r->reset_early) {
        /* The peer abandoned the request before our answer. A peer can do that thousands of times a second
         * (rapid reset), so these share one rate-limited line whose suppressed count aggregates them; hbone
         * counts them all (zmesh_hbone_early_resets_total) and ends a connection that overdoes it. */
        char src[SOCKADDR_STRLEN], dst[SOCKADDR_STRLEN];
        LOG_LIMITED(LOG_INFO, "access",
                    "streams reset by peer before response: src.addr=%s src.identity=%s dst.addr=%s",
                    sockaddr_format(&ic->peer, src, sizeof(src)), is->peer_id ? is->peer_id : "unknown",
                    ip_port_format(&is->rec.hbone_addr, dst, sizeof(dst)));
    } else {
        access_log(&is->rec);
    }
    /* response_flags: DENY for an RBAC rejection, also one that comes later with a policy change (a failure,
     * as istio/ztunnel src/proxy/metrics.rs counts AuthorizationPolicyLateRejection); CONNECT when the app
     * could not be reached. */
    bool denied = r->status == 401 || is->late_denied;
    const char *flags = denied ? "DENY" : (r->status == 503 && is->authorized) ? "CONNECT" : "-";
    zt_stats_close(&is->stats, r->bytes_to_tcp, r->bytes_to_h2, flags, r->status != 200 || denied);
    LIST_DEL(ic->pod->in_streams, is);
    ic->pod->w->active--;
    zt_view_unref(is->view);
    free(is);
    ic->streams--;
    in_conn_put(ic);
}

static const struct hbone_stream_ops in_stream_ops = {.on_done = in_stream_done};

static void in_connected(struct in_stream *is, int soerr)
{
    int fd = is->io.fd;
    loop_io_del(is->ic->pod->w->loop, &is->io);
    timer_stop(is->ic->pod->w->loop, &is->timer);
    is->io.fd = -1;
    if (soerr) {
        close(fd);
        if (log_enabled(LOG_DEBUG)) {
            char app[SOCKADDR_STRLEN];
            LOG_D("ztunnel::proxy::inbound", "connect to app %s: %s",
                  ip_port_format(&is->rec.hbone_addr, app, sizeof(app)), strerror(soerr));
        }
        hbone_stream_respond(is->s, 503, -1, NULL, 0);
        return;
    }
    /* ENABLE_RESPONSE_BAGGAGE: the 200 describes the destination workload. */
    struct hbone_header h = {"baggage", is->view->baggage};
    hbone_stream_respond(is->s, 200, fd, &h, 1);
}

static void in_connect_cb(struct io *io, uint32_t ev)
{
    struct in_stream *is = container_of(io, struct in_stream, io);
    int soerr = 0;
    socklen_t sl = sizeof(soerr);
    if (getsockopt(io->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0) soerr = errno;
    if (!soerr && !(ev & EPOLLOUT)) return;
    in_connected(is, soerr);
}

static void in_connect_timeout(struct timer *t)
{
    in_connected(container_of(t, struct in_stream, timer), ETIMEDOUT);
}

/* The service named by `forwarded: ...;host=<hostname>` selects the destination_service label (reference
 * §1.3); it is never used for routing. */
static const struct service *forwarded_service(const struct zt_view *v, const struct hbone_request *req)
{
    for (size_t i = 0; i < req->n_headers; i++) {
        if (strcmp(req->headers[i].name, "forwarded") != 0) continue;
        const char *h = strstr(req->headers[i].value, "host=");
        if (!h) return NULL;
        h += 5;
        /* Services are indexed by "ns/hostname"; a Kubernetes hostname is <name>.<ns>.svc.<domain>. */
        char key[512];
        size_t n = strcspn(h, ";,\" ");
        const char *dot = memchr(h, '.', n);
        if (n == 0 || !dot) return NULL;
        size_t nsl = strcspn(dot + 1, ".;,\" ");
        if (!nsl || nsl + 1 + n >= sizeof(key)) return NULL;
        memcpy(key, dot + 1, nsl);
        key[nsl] = '/';
        memcpy(key + nsl + 1, h, n);
        key[nsl + 1 + n] = 0;
        return snapshot_service_by_host(v->snap, key);
    }
    return NULL;
}

static void in_request(struct hbone_stream *s, void *ud, const struct hbone_request *req)
{
    struct in_conn *ic = ud;
    struct zt_pod *pod = ic->pod;
    struct worker *w = pod->w;
    struct in_stream *is = calloc(1, sizeof(*is));
    struct ip_addr aip, local_ip, peer_ip;
    uint16_t aport;
    if (!is) {
        hbone_stream_respond(s, 503, -1, NULL, 0);
        return;
    }
    is->ic = ic;
    is->s = s;
    is->view = pod->view;
    zt_view_ref(is->view);
    struct zt_view *v = is->view;
    LIST_PUSH(pod->in_streams, is);
    w->active++;
    is->io.fd = -1;
    is->io.cb = in_connect_cb;
    is->timer.cb = in_connect_timeout;
    is->rec.direction = "inbound";
    is->rec.src = ip_port_of(&ic->peer);
    is->rec.dst = ip_port_of(&ic->local);
    is->rec.start_ms = zt_now_ms();
    is->peer_id = hbone_conn_peer_id(hbone_stream_conn(s));
    if (!*is->peer_id) is->peer_id = NULL;
    is->rec.src_identity = is->peer_id;
    sockaddr_to(&ic->peer, &peer_ip, NULL);
    sockaddr_to(&ic->local, &local_ip, NULL);
    is->rec.src_wl = snapshot_workload_by_ip(v->snap, v->network, &peer_ip);
    ic->streams++;
    hbone_stream_set_ops(s, &in_stream_ops, is);

    /* Status codes as Istio's inbound (istio/ztunnel src/proxy/inbound.rs). */
    if (strcmp(req->method, "CONNECT") != 0) {
        hbone_stream_respond(s, 400, -1, NULL, 0);
        return;
    }
    if (authority_parse(req->authority, strlen(req->authority), &aip, &aport) < 0) {
        hbone_stream_respond(s, 400, -1, NULL, 0);
        return;
    }
    is->rec.hbone_addr = (struct ip_port){.ip = aip, .port = aport};
    /* The workload is the one owning the address this connection arrived on (the pod's IP). */
    const struct workload *dst = snapshot_workload_by_ip(v->snap, v->network, &local_ip);
    is->rec.dst_wl = dst;
    if (!dst) {
        hbone_stream_respond(s, 503, -1, NULL, 0);
        return;
    }
    if (!ip_equal(&aip, &local_ip)) {
        hbone_stream_respond(s, 400, -1, NULL, 0);
        return;
    }
    is->rec.dst_identity = dst->spiffe_id;
    struct conn_info ci = {.inbound = true,
                           .src_wl = is->rec.src_wl,
                           .dst_wl = dst,
                           .src_principal = is->peer_id,
                           .dst_principal = dst->spiffe_id,
                           .dst_svc = forwarded_service(v, req),
                           .mtls = true};
    is->rec.dst_svc = ci.dst_svc;
    zt_stats_open(&is->stats, &ci);
    if (zt_illegal_port(aport)) {
        hbone_stream_respond(s, 503, -1, NULL, 0);
        return;
    }
    is->az =
        (struct authz_conn){.src_ip = peer_ip, .dst_ip = aip, .dst_port = aport, .src_identity = is->peer_id};
    if (!authorized(v, &is->az)) {
        hbone_stream_respond(s, 401, -1, NULL,
                             0); /* RBAC deny: 401, flag DENY (istio/ztunnel src/proxy/inbound.rs) */
        return;
    }
    is->authorized = true;
    access_log_opened(&is->rec);
    struct sockaddr_storage app;
    sockaddr_from(&app, &aip, aport);
    int fd = zt_connect(pod->pp->netns_fd, &app, &peer_ip, false);
    if (fd < 0) {
        hbone_stream_respond(s, 503, -1, NULL, 0);
        return;
    }
    is->io.fd = fd;
    if (loop_io_add(w->loop, &is->io, EPOLLOUT) < 0) {
        close(fd);
        is->io.fd = -1;
        hbone_stream_respond(s, 503, -1, NULL, 0);
        return;
    }
    timer_start(w->loop, &is->timer, APP_CONNECT_TIMEOUT_MS);
}

/* The TLS handshake of ic ended (success or failure): one more may be accepted. */
static void in_handshake_end(struct in_conn *ic)
{
    struct worker *w = ic->pod->w;
    if (!ic->handshaking) return;
    ic->handshaking = false;
    QUEUE_DEL(w->hs_head, w->hs_tail, ic, hs_prev, hs_next);
    /* Leaving the bound: every pod's 15008 may have been paused by it. */
    if (w->handshakes-- == ZT_HANDSHAKES_MAX)
        for (struct zt_pod *p = w->pods; p; p = p->next)
            if (p->listening) acceptor_resume(&p->listeners[2]);
}

static void in_handshake_begin(struct in_conn *ic)
{
    struct worker *w = ic->pod->w;
    ic->handshaking = true;
    ic->hs_start = loop_now(w->loop);
    QUEUE_APPEND(w->hs_head, w->hs_tail, ic, hs_prev, hs_next);
    w->handshakes++;
}

/* At the bound: closes the handshakes stalled for ZT_HANDSHAKE_STALL_MS (each close resumes the listener),
 * then waits for the next oldest one while still at the bound. */
static void in_handshake_timer(struct timer *t)
{
    struct worker *w = container_of(t, struct worker, hs_timer);
    uint64_t now = loop_now(w->loop);
    while (w->handshakes >= ZT_HANDSHAKES_MAX && w->hs_head &&
           now - w->hs_head->hs_start >= ZT_HANDSHAKE_STALL_MS) {
        struct in_conn *ic = w->hs_head;
        /* on_closed (in_closed) ends the handshake, resumes the listener, logs the error (rate-limited) and
         * may free ic. */
        hbone_conn_close(ic->c, "TLS handshake stalled while the handshake bound was reached");
        if (w->hs_head == ic) break; /* not reported closed: do not spin on it */
    }
    if (w->handshakes >= ZT_HANDSHAKES_MAX && w->hs_head) {
        uint64_t age = now - w->hs_head->hs_start;
        timer_start(w->loop, t,
                    age < ZT_HANDSHAKE_STALL_MS ? ZT_HANDSHAKE_STALL_MS - age : ZT_HANDSHAKE_STALL_MS);
    }
}

static void in_ready(struct hbone_conn *c, void *ud)
{
    (void)c;
    in_handshake_end(ud);
}

static void in_closed(struct hbone_conn *c, void *ud, const struct h2_end *e)
{
    struct in_conn *ic = ud;
    const char *err = e->detail;
    in_handshake_end(ic);
    metrics_socket_close(true);
    if (e->reason != H2_END_OK && !hbone_conn_established(c)) {
        /* Anyone who can reach 15008 can fail a handshake: rate-limited, with the count of lines dropped. */
        static struct log_limit lim;
        uint64_t dropped;
        if (log_enabled(LOG_WARN) && log_limit_allow(&lim, &dropped)) {
            char src[SOCKADDR_STRLEN], dst[SOCKADDR_STRLEN], n[24];
            snprintf(n, sizeof(n), "%llu", (unsigned long long)dropped);
            const char *kv[] = {"src.addr",   sockaddr_format(&ic->peer, src, sizeof(src)),
                                "dst.addr",   sockaddr_format(&ic->local, dst, sizeof(dst)),
                                "direction",  "inbound",
                                "error",      err,
                                "suppressed", dropped ? n : NULL};
            log_kvv(LOG_WARN, "access", "connection failed", kv, sizeof(kv) / sizeof(kv[0]) / 2);
        }
    }
    ic->closed = true;
    LIST_DEL(ic->pod->in_conns, ic);
    in_conn_put(ic);
}

static const struct hbone_conn_ops in_conn_ops = {
    .on_ready = in_ready, .on_closed = in_closed, .on_request = in_request};

bool inbound_hbone_may_accept(struct acceptor *a)
{
    struct zt_pod *pod = container_of(a, struct zt_pod, listeners[2]);
    struct worker *w = pod->w;
    if (!pod->ident) return false; /* held until the first certificate */
    if (w->handshakes < ZT_HANDSHAKES_MAX) return true;
    LOG_LIMITED(LOG_DEBUG, "ztunnel::proxy::inbound",
                "%u TLS handshakes in progress on worker %d (the bound): not accepting on %s", w->handshakes,
                w->index, a->name);
    /* Someone is waiting: make room once the oldest handshake has stalled. */
    if (!timer_armed(&w->hs_timer) && w->hs_head) {
        uint64_t age = loop_now(w->loop) - w->hs_head->hs_start;
        w->hs_timer.cb = in_handshake_timer;
        timer_start(w->loop, &w->hs_timer, age >= ZT_HANDSHAKE_STALL_MS ? 0 : ZT_HANDSHAKE_STALL_MS - age);
    }
    return false;
}

void inbound_hbone_accept(struct acceptor *a, int fd, const struct sockaddr_storage *peer)
{
    struct zt_pod *pod = container_of(a, struct zt_pod, listeners[2]);
    struct worker *w = pod->w;
    struct in_conn *ic = calloc(1, sizeof(*ic));
    if (!ic) {
        close(fd);
        return;
    }
    ic->peer = *peer;
    ic->pod = pod;
    zt_pod_hold(pod);
    socklen_t len = sizeof(ic->local);
    getsockname(fd, (struct sockaddr *)&ic->local, &len);
    /* Counted before hbone_server_new: its callbacks may already run inside. */
    in_handshake_begin(ic);
    ic->ident = pod->ident; /* set: may_accept holds the listener until the first certificate is here */
    identity_ref(ic->ident);
    ic->c = hbone_server_new(w->loop, fd, ic->ident->server_ctx, &in_conn_ops, ic);
    if (!ic->c) {
        in_handshake_end(ic);
        identity_unref(ic->ident);
        free(ic);
        zt_pod_put(pod);
        return;
    }
    metrics_socket_open(true);
    LIST_PUSH(pod->in_conns, ic);
}

/* ---- plaintext inbound (15006) ---- */

struct plain_conn {
    struct plain_conn *next, *prev;
    struct zt_pod *pod;
    struct zt_view *view;
    struct relay *relay;
    struct access_rec rec;
    struct authz_conn az; /* plaintext: no identity */
    struct zt_stats stats;
    bool connected, denied;
};

static void plain_free(struct plain_conn *pc)
{
    access_log(&pc->rec);
    zt_stats_close(&pc->stats, pc->rec.bytes_recv, pc->rec.bytes_sent,
                   pc->denied                        ? "DENY"
                   : pc->connected || !pc->rec.error ? "-"
                                                     : "CONNECT",
                   !pc->connected || pc->denied);
    if (pc->relay) LIST_DEL(pc->pod->plain_conns, pc);
    pc->pod->w->active--;
    zt_view_unref(pc->view);
    struct zt_pod *pod = pc->pod;
    free(pc);
    zt_pod_put(pod);
}

static void plain_done(struct relay *r, void *ud, uint64_t a_to_b, uint64_t b_to_a, const char *err)
{
    (void)r;
    struct plain_conn *pc = ud;
    pc->rec.bytes_recv = a_to_b;
    pc->rec.bytes_sent = b_to_a;
    pc->rec.error = err;
    plain_free(pc);
}

static void plain_connected(struct relay *r, void *ud, int err)
{
    (void)r;
    ((struct plain_conn *)ud)->connected = err == 0;
}

static const struct relay_ops plain_ops = {.on_connected = plain_connected, .on_done = plain_done};

void inbound_plain_accept(struct acceptor *a, int fd, const struct sockaddr_storage *peer)
{
    struct zt_pod *pod = container_of(a, struct zt_pod, listeners[1]);
    struct sockaddr_storage dst;
    struct plain_conn *pc = calloc(1, sizeof(*pc));
    struct ip_addr dip, sip;
    uint16_t dport;
    if (!pc || net_original_dst(fd, &dst) < 0) {
        free(pc);
        close(fd);
        return;
    }
    pc->pod = pod;
    zt_pod_hold(pod);
    pod->w->active++;
    pc->view = pod->view;
    zt_view_ref(pc->view);
    struct zt_view *v = pc->view;
    pc->rec = (struct access_rec){
        .direction = "inbound", .src = ip_port_of(peer), .dst = ip_port_of(&dst), .start_ms = zt_now_ms()};
    sockaddr_to(&dst, &dip, &dport);
    sockaddr_to(peer, &sip, NULL);
    pc->rec.src_wl = snapshot_workload_by_ip(v->snap, v->network, &sip);
    pc->rec.dst_wl = snapshot_workload_by_ip(v->snap, v->network, &dip);
    if (zt_illegal_port(dport)) {
        close(fd);
        pc->rec.error = "destination is a ztunnel port";
        plain_free(pc);
        return;
    }
    struct conn_info ci = {
        .inbound = true, .src_wl = pc->rec.src_wl, .dst_wl = pc->rec.dst_wl, .mtls = false};
    zt_stats_open(&pc->stats, &ci);
    pc->az = (struct authz_conn){.src_ip = sip, .dst_ip = dip, .dst_port = dport, .src_identity = NULL};
    if (!authorized(v, &pc->az)) {
        close(fd);
        pc->denied = true;
        pc->rec.error = "connection closed due to policy rejection";
        plain_free(pc);
        return;
    }
    int up = zt_connect(pod->pp->netns_fd, &dst, &sip, false);
    if (up < 0) {
        close(fd);
        pc->rec.error = strerror(-up);
        plain_free(pc);
        return;
    }
    pc->relay = relay_new(pod->w->loop, fd, up, 1, &plain_ops, pc);
    if (!pc->relay) {
        pc->rec.error = "relay setup failed";
        plain_free(pc);
        return;
    }
    LIST_PUSH(pod->plain_conns, pc);
}

/* A policy change re-evaluates live connections; those now denied are closed (Istio's
 * AuthorizationPolicyLateRejection). */
void inbound_reauthorize(struct zt_pod *p)
{
    for (struct in_stream *is = p->in_streams, *next; is; is = next) {
        next = is->next;
        if (is->authorized && !authorized(p->view, &is->az)) {
            is->late_denied = true;
            hbone_stream_reset(is->s, "connection closed due to policy change");
        }
    }
    for (struct plain_conn *pc = p->plain_conns, *next; pc; pc = next) {
        next = pc->next;
        if (!authorized(p->view, &pc->az)) {
            pc->denied = true;
            relay_abort(pc->relay, "connection closed due to policy change");
        }
    }
}

void inbound_report(struct zt_pod *p)
{
    for (struct in_stream *is = p->in_streams; is; is = is->next) {
        uint64_t to_h2, to_tcp;
        if (!is->authorized || is->io.fd >= 0) continue; /* no bytes before the app connection */
        hbone_stream_bytes(is->s, &to_h2, &to_tcp);
        zt_stats_update(&is->stats, to_tcp, to_h2);
    }
    for (struct plain_conn *pc = p->plain_conns; pc; pc = pc->next) {
        uint64_t a_to_b, b_to_a;
        relay_bytes(pc->relay, &a_to_b, &b_to_a);
        zt_stats_update(&pc->stats, a_to_b, b_to_a);
    }
}

void inbound_drain(struct zt_pod *p)
{
    for (struct in_conn *ic = p->in_conns; ic; ic = ic->next)
        hbone_conn_drain(ic->c);
}

void inbound_abort(struct zt_pod *p)
{
    for (struct in_conn *ic = p->in_conns, *next; ic; ic = next) {
        next = ic->next;
        hbone_conn_close(ic->c, "the pod was removed");
    }
    for (struct plain_conn *pc = p->plain_conns, *next; pc; pc = next) {
        next = pc->next;
        relay_abort(pc->relay, "the pod was removed");
    }
}
