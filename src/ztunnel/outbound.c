/* Outbound (15001): captured connections from the pod's apps. HBONE destinations go over a pooled mTLS
 * HTTP/2 connection as a CONNECT stream; anything else is relayed as plain TCP (istio/ztunnel
 * src/proxy/outbound.rs, src/state.rs). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/log.h"
#include "core/relay.h"
#include "h2/hbone.h"
#include "mesh/lb.h"
#include "ztunnel/metrics.h"
#include "ztunnel/proxy.h"

struct out_conn {
    struct out_conn *next, *prev;
    struct zt_pod *pod;
    struct hbone_stream *stream; /* while HBONE */
    struct relay *relay;         /* while plain TCP */
    struct zt_stats stats;
    bool mtls, linked, established;
    struct zt_view *view; /* the config this connection started with */
    struct access_rec rec;
};

/* response_flags for a failed outbound connection, from the reason that ended it. */
static const char *out_flags(enum h2_end_reason reason)
{
    switch (reason) {
    case H2_END_OK:
        return "-";
    case H2_END_HANDSHAKE_FAILED:
        return "TLS_FAILURE";
    case H2_END_IDENTITY:
        return "IDENTITY_ERROR";
    case H2_END_NO_ALPN:
        return "H2_HANDSHAKE_FAILURE";
    default:
        return "CONNECT";
    }
}

/* Ends oc: access log, counters. reason says why a connection that was never established failed
 * (H2_END_OK: it ended without an error). */
static void out_finish(struct out_conn *oc, uint64_t recv, uint64_t sent, const char *err,
                       enum h2_end_reason reason, bool established)
{
    oc->rec.bytes_recv = recv;
    oc->rec.bytes_sent = sent;
    oc->rec.error = err;
    access_log(&oc->rec);
    zt_stats_close(&oc->stats, recv, sent, established ? "-" : out_flags(reason), !established);
    metrics_socket_close(false);
    if (oc->linked) LIST_DEL(oc->pod->out_conns, oc);
    oc->pod->w->active--;
    zt_view_unref(oc->view);
    struct zt_pod *pod = oc->pod;
    free(oc);
    zt_pod_put(pod);
}

/* Counts the connection opened, with the labels of the destination it resolved to. */
static void out_open_stats(struct out_conn *oc, bool mtls)
{
    struct conn_info ci = {.inbound = false,
                           .src_wl = oc->rec.src_wl,
                           .dst_wl = oc->rec.dst_wl,
                           .dst_svc = oc->rec.dst_svc,
                           .src_principal = mtls ? oc->rec.src_identity : NULL,
                           .dst_principal = mtls ? oc->rec.dst_identity : NULL,
                           .mtls = mtls};
    oc->mtls = mtls;
    zt_stats_open(&oc->stats, &ci);
    access_log_opened(&oc->rec);
    LIST_PUSH(oc->pod->out_conns, oc);
    oc->linked = true;
}

void outbound_report(struct zt_pod *p)
{
    for (struct out_conn *oc = p->out_conns; oc; oc = oc->next) {
        uint64_t recv = 0, sent = 0;
        if (oc->stream)
            hbone_stream_bytes(oc->stream, &recv, &sent);
        else if (oc->relay)
            relay_bytes(oc->relay, &recv, &sent);
        zt_stats_update(&oc->stats, recv, sent);
    }
}

static void out_stream_done(struct hbone_stream *s, void *ud, const struct hbone_result *r)
{
    (void)s;
    struct out_conn *oc = ud;
    oc->stream = NULL;
    out_finish(oc, r->bytes_to_h2, r->bytes_to_tcp, r->error, r->reason, r->status == 200);
}

static const struct hbone_stream_ops out_stream_ops = {.on_done = out_stream_done};

static void out_relay_done(struct relay *r, void *ud, uint64_t a_to_b, uint64_t b_to_a, const char *err)
{
    (void)r;
    struct out_conn *oc = ud;
    oc->relay = NULL;
    out_finish(oc, a_to_b, b_to_a, err, err ? H2_END_CONNECT_FAILED : H2_END_OK, oc->established);
}

static void out_relay_connected(struct relay *r, void *ud, int err)
{
    (void)r;
    ((struct out_conn *)ud)->established = err == 0;
}

static const struct relay_ops out_relay_ops = {.on_connected = out_relay_connected,
                                               .on_done = out_relay_done};

static void hex(char *out, const uint8_t *in, size_t n)
{
    static const char d[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = d[in[i] >> 4];
        out[2 * i + 1] = d[in[i] & 15];
    }
    out[2 * n] = 0;
}

/* HBONE to an endpoint: TCP to ip:15008, :authority ip:port (istio/ztunnel src/proxy/outbound.rs). The
 * expected server identities are the service's subjectAltNames (when service-addressed) plus the workload's
 * own SPIFFE id. */
static void outbound_hbone(struct out_conn *oc, int fd, const struct workload *wl, const struct ip_addr *dip,
                           uint16_t dport)
{
    struct zt_pod *pod = oc->pod;
    const struct service *svc = oc->rec.dst_svc;
    char fwd[SOCKADDR_STRLEN + 300], csrc[SOCKADDR_STRLEN], tp[64], tid[33], sid[17],
        authority[SOCKADDR_STRLEN];
    uint8_t rnd[24];
    struct sockaddr_storage hop;
    const char *err = NULL;

    sockaddr_from(&hop, dip, PORT_HBONE);
    oc->rec.dst = ip_port_of(&hop);
    oc->rec.hbone_addr = (struct ip_port){.ip = *dip, .port = dport};
    ip_port_format(&oc->rec.hbone_addr, authority, sizeof(authority));
    oc->rec.dst_identity = wl->spiffe_id;
    int n = snprintf(fwd, sizeof(fwd), "for=\"%s\"", ip_port_format(&oc->rec.src, csrc, sizeof(csrc)));
    if (svc && *svc->hostname) snprintf(fwd + n, sizeof(fwd) - (size_t)n, ";host=%s", svc->hostname);
    for (size_t i = 0; i < sizeof(rnd); i += 8) {
        uint64_t r = zt_random();
        memcpy(rnd + i, &r, 8);
    }
    hex(tid, rnd, 16);
    hex(sid, rnd + 16, 8);
    snprintf(tp, sizeof(tp), "00-%s-%s-00", tid, sid);
    struct hbone_header hdrs[] = {
        {":authority", authority},
        {"baggage", oc->view->baggage},
        {"forwarded", fwd},
        {"traceparent", tp},
    };
    const char *sans[17];
    size_t n_sans = 0;
    for (size_t i = 0; svc && i < svc->n_sans && n_sans < 16; i++)
        sans[n_sans++] = svc->subject_alt_names[i];
    sans[n_sans++] = wl->spiffe_id;
    out_open_stats(oc, true);
    oc->stream = pool_open_stream(pod->w->pool, pod, &hop, sans, n_sans, &oc->rec.src.ip, hdrs,
                                  sizeof(hdrs) / sizeof(hdrs[0]), fd, &out_stream_ops, oc, &err);
    if (!oc->stream)
        out_finish(oc, 0, 0, err ? err : "cannot open HBONE stream", H2_END_CONNECT_FAILED, false);
}

/* Plain TCP to dst (not meshed or unknown): connection_security_policy=unknown. */
static void outbound_plain(struct out_conn *oc, int fd, const struct sockaddr_storage *dst)
{
    oc->rec.dst = ip_port_of(dst);
    out_open_stats(oc, false);
    int up = zt_connect(oc->pod->pp->netns_fd, dst, NULL, false);
    if (up < 0) {
        close(fd);
        out_finish(oc, 0, 0, strerror(-up), H2_END_CONNECT_FAILED, false);
        return;
    }
    oc->relay = relay_new(oc->pod->w->loop, fd, up, 1, &out_relay_ops, oc);
    if (!oc->relay) out_finish(oc, 0, 0, "relay setup failed", H2_END_NO_MEMORY, false);
}

/* Istio sends a destination that has a waypoint through it (the service's waypoint when addressed by VIP,
 * the workload's when addressed by its IP). zmesh has no waypoint routing yet: sending such a connection
 * around the waypoint would skip the L7 policy it enforces, so the connection is refused and the access log
 * says why. Returns true when it was refused (fd closed, oc finished). */
static bool outbound_refuse_waypoint(struct out_conn *oc, int fd, const struct gateway_addr *wp,
                                     const char *what, const char *name)
{
    char why[512], ipb[IP_STRLEN];
    if (!wp->set) return false;
    const char *to = wp->is_host ? wp->host : ip_format(&wp->ip, ipb, sizeof(ipb));
    snprintf(why, sizeof(why),
             "%s %s has waypoint %s%s%s; waypoint routing is not supported yet, so the connection is refused "
             "rather than sent around the waypoint",
             what, name, wp->is_host ? wp->ns : "", wp->is_host ? "/" : "", to);
    close(fd);
    out_open_stats(oc, false);
    out_finish(oc, 0, 0, why, H2_END_LOCAL, false);
    return true;
}

static void outbound_handle(struct zt_pod *pod, int fd, const struct sockaddr_storage *peer)
{
    struct pod_proxy *pp = pod->pp;
    struct sockaddr_storage dst;
    struct ip_addr dip;
    uint16_t dport;
    struct out_conn *oc = calloc(1, sizeof(*oc));
    if (!oc) {
        close(fd);
        return;
    }
    oc->pod = pod;
    zt_pod_hold(pod);
    pod->w->active++;
    metrics_socket_open(false);
    oc->view = pod->view;
    zt_view_ref(oc->view);
    struct zt_view *v = oc->view;
    oc->rec.direction = "outbound";
    oc->rec.src = ip_port_of(peer);
    oc->rec.start_ms = zt_now_ms();
    oc->rec.src_wl = v->self;
    oc->rec.src_identity = pp->id_uri;
    if (net_original_dst(fd, &dst) < 0) {
        close(fd);
        out_finish(oc, 0, 0, "no original destination", H2_END_LOCAL, false);
        return;
    }
    oc->rec.dst = ip_port_of(&dst);
    sockaddr_to(&dst, &dip, &dport);

    /* A service VIP: choose an endpoint (istio/ztunnel src/state.rs load_balance). */
    const struct service *svc = snapshot_service_by_vip(v->snap, v->network, &dip);
    if (svc) {
        struct lb_choice ch;
        struct lb_source src = {.wl = v->self};
        oc->rec.dst_svc = svc;
        if (outbound_refuse_waypoint(oc, fd, &svc->waypoint, "service", svc->hostname)) return;
        int rc = lb_pick(v->snap, svc, dport, &src, &dip, zt_random(), &ch);
        if (rc == 0) {
            oc->rec.dst_wl = ch.wl;
            if (ch.wl->protocol == WL_PROTO_HBONE) {
                outbound_hbone(oc, fd, ch.wl, &ch.ip, ch.port);
            } else {
                struct sockaddr_storage ep;
                sockaddr_from(&ep, &ch.ip, ch.port);
                outbound_plain(oc, fd, &ep);
            }
            return;
        }
        if (rc != -EAGAIN) {
            close(fd);
            out_open_stats(oc, false);
            out_finish(oc, 0, 0, "no healthy upstream", H2_END_CONNECT_FAILED, false);
            return;
        }
        /* PASSTHROUGH: the original destination as addressed. */
    }

    const struct workload *wl = snapshot_workload_by_ip(v->snap, v->network, &dip);
    oc->rec.dst_wl = wl;
    if (zt_illegal_port(dport) && v->self && wl == v->self) {
        close(fd);
        out_finish(oc, 0, 0, "self call to a ztunnel port", H2_END_LOCAL, false);
        return;
    }
    if (wl && wl != v->self && outbound_refuse_waypoint(oc, fd, &wl->waypoint, "workload", wl->uid)) return;
    if (wl && wl->protocol == WL_PROTO_HBONE) {
        outbound_hbone(oc, fd, wl, &dip, dport);
        return;
    }
    outbound_plain(oc, fd, &dst);
}

void outbound_accept(struct acceptor *a, int fd, const struct sockaddr_storage *peer)
{
    outbound_handle(container_of(a, struct zt_pod, listeners[0]), fd, peer);
}

void outbound_abort(struct zt_pod *p)
{
    for (struct out_conn *oc = p->out_conns, *next; oc; oc = next) {
        next = oc->next;
        if (oc->stream)
            hbone_stream_reset(oc->stream, "the pod was removed");
        else if (oc->relay)
            relay_abort(oc->relay, "the pod was removed");
    }
}
