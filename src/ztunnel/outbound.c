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

/* HBONE to next hop hop_ip:hop_port with CONNECT :authority auth (istio/ztunnel src/proxy/outbound.rs). The
 * expected server identities are san_svc's subjectAltNames plus the workload's own SPIFFE id (Upstream
 * workload_and_services_san): for an endpoint, san_svc is the addressed service; for a waypoint, the
 * waypoint's own Service. */
static void outbound_hbone_to(struct out_conn *oc, int fd, const struct workload *wl,
                              const struct ip_addr *hop_ip, uint16_t hop_port, const struct ip_port *auth,
                              const struct service *san_svc)
{
    struct zt_pod *pod = oc->pod;
    const struct service *svc = oc->rec.dst_svc;
    char fwd[SOCKADDR_STRLEN + 300], csrc[SOCKADDR_STRLEN], tp[64], tid[33], sid[17],
        authority[SOCKADDR_STRLEN];
    uint8_t rnd[24];
    struct sockaddr_storage hop;
    const char *err = NULL;

    sockaddr_from(&hop, hop_ip, hop_port);
    oc->rec.dst = ip_port_of(&hop);
    oc->rec.hbone_addr = *auth;
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
    for (size_t i = 0; san_svc && i < san_svc->n_sans && n_sans < 16; i++)
        sans[n_sans++] = san_svc->subject_alt_names[i];
    sans[n_sans++] = wl->spiffe_id;
    out_open_stats(oc, true);
    oc->stream = pool_open_stream(pod->w->pool, pod, &hop, sans, n_sans, &oc->rec.src.ip, hdrs,
                                  sizeof(hdrs) / sizeof(hdrs[0]), fd, &out_stream_ops, oc, &err);
    if (!oc->stream)
        out_finish(oc, 0, 0, err ? err : "cannot open HBONE stream", H2_END_CONNECT_FAILED, false);
}

/* HBONE to an endpoint: TCP to ip:15008, :authority ip:port. */
static void outbound_hbone(struct out_conn *oc, int fd, const struct workload *wl, const struct ip_addr *dip,
                           uint16_t dport)
{
    struct ip_port auth = {.ip = *dip, .port = dport};
    outbound_hbone_to(oc, fd, wl, dip, PORT_HBONE, &auth, oc->rec.dst_svc);
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

/* ---- waypoints (istio/ztunnel src/proxy/outbound.rs build_request, src/state.rs fetch_waypoint) ---- */

/* Where a GatewayAddress leads: the waypoint workload to dial, at which address, and the waypoint's Service
 * (NULL in the address form) whose subjectAltNames are also expected. */
struct wp_target {
    const struct workload *wl;
    const struct service *svc;
    struct ip_addr ip;
    uint16_t port;
};

/* Writes "ns/name" of the waypoint (its Service when the hostname resolves, else the address as written). */
static const char *waypoint_name(const struct gateway_addr *wp, const struct service *wsvc, char *buf,
                                 size_t n)
{
    char ipb[IP_STRLEN];
    if (wsvc)
        snprintf(buf, n, "%s/%s", wsvc->namespace_, wsvc->name);
    else if (wp->is_host)
        snprintf(buf, n, "%s/%s", wp->ns, wp->host);
    else
        snprintf(buf, n, "%s", ip_format(&wp->ip, ipb, sizeof(ipb)));
    return buf;
}

/* The hostname form names a Service ("ns/hostname"), whose endpoints are chosen by the normal load balancer
 * on port hbone_port (ServiceResolutionMode::Waypoint: the Service must have that port); the address form
 * names a workload by IP (or a Service VIP). Returns 0, or -ENOENT when it resolves to no healthy endpoint;
 * t->svc is set whenever the Service was found, for the message. */
static int waypoint_resolve(const struct zt_view *v, const struct gateway_addr *wp, struct wp_target *t)
{
    struct lb_choice ch;
    struct lb_source src = {.wl = v->self};
    memset(t, 0, sizeof(*t));
    if (wp->is_host) {
        char key[512];
        snprintf(key, sizeof(key), "%s/%s", wp->ns, wp->host);
        t->svc = snapshot_service_by_host(v->snap, key);
    } else {
        const struct workload *w = snapshot_workload_by_ip(v->snap, wp->network, &wp->ip);
        if (w) {
            if (!w->healthy) return -ENOENT;
            *t = (struct wp_target){.wl = w, .ip = wp->ip, .port = wp->hbone_port};
            return 0;
        }
        t->svc = snapshot_service_by_vip(v->snap, wp->network, &wp->ip);
    }
    if (!t->svc || lb_pick(v->snap, t->svc, wp->hbone_port, &src, NULL, zt_random(), &ch)) return -ENOENT;
    t->wl = ch.wl;
    t->ip = ch.ip;
    t->port = ch.port;
    return 0;
}

/* check_from_waypoint (istio/ztunnel src/proxy.rs): the source is the destination's waypoint when one of the
 * waypoint's workloads has the source's identity and IP; its traffic must not loop back through itself. */
static bool from_waypoint(const struct zt_view *v, const struct gateway_addr *wp, const char *src_id,
                          const struct ip_addr *src_ip)
{
    const struct workload *one, *const *eps = NULL;
    size_t n = 0;
    if (!src_id || !*src_id) return false;
    if (wp->is_host) {
        char key[512];
        snprintf(key, sizeof(key), "%s/%s", wp->ns, wp->host);
        const struct service *s = snapshot_service_by_host(v->snap, key);
        if (s) eps = snapshot_service_endpoints(v->snap, s, &n);
    } else if ((one = snapshot_workload_by_ip(v->snap, wp->network, &wp->ip))) {
        eps = &one;
        n = 1;
    }
    for (size_t i = 0; i < n; i++) {
        if (strcmp(eps[i]->spiffe_id, src_id)) continue;
        for (size_t j = 0; j < eps[i]->n_ips; j++)
            if (ip_equal(&eps[i]->ips[j], src_ip)) return true;
    }
    return false;
}

/* Sends the connection to the waypoint with :authority = the original destination (a service VIP:port, or a
 * pod IP:port), so the waypoint applies its policy and does the load balancing. With no healthy waypoint
 * endpoint the connection is refused, never sent around it (Istio's ztunnel fails it too, UnknownWaypoint;
 * the difference is upstream: zmeshd sets a waypoint that is not ready yet, where istiod leaves it out and the
 * traffic silently skips the L7 policy). what/name describe the destination for the log. */
static void outbound_via_waypoint(struct out_conn *oc, int fd, const struct gateway_addr *wp,
                                  const struct ip_addr *dip, uint16_t dport, const char *what,
                                  const char *name)
{
    struct wp_target t;
    if (waypoint_resolve(oc->view, wp, &t)) {
        char why[768], wn[300];
        snprintf(
            why, sizeof(why),
            "%s %s has waypoint %s with no ready endpoint: the connection is refused rather than sent around "
            "it",
            what, name, waypoint_name(wp, t.svc, wn, sizeof(wn)));
        close(fd);
        out_open_stats(oc, false);
        out_finish(oc, 0, 0, why, H2_END_LOCAL, false);
        return;
    }
    /* Telemetry as ztunnel reports it: the actual destination workload is the waypoint, the intended
     * destination service stays the addressed one. */
    oc->rec.dst_wl = t.wl;
    struct ip_port auth = {.ip = *dip, .port = dport};
    outbound_hbone_to(oc, fd, t.wl, &t.ip, t.port, &auth, t.svc);
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
        if (svc->waypoint.set) {
            char name[300];
            snprintf(name, sizeof(name), "%s/%s", svc->namespace_, svc->name);
            outbound_via_waypoint(oc, fd, &svc->waypoint, &dip, dport, "service", name);
            return;
        }
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
    /* A pod addressed by IP goes through its own waypoint, unless the source is that waypoint. */
    if (wl && wl->waypoint.set && !from_waypoint(v, &wl->waypoint, pp->id_uri, &oc->rec.src.ip)) {
        outbound_via_waypoint(oc, fd, &wl->waypoint, &dip, dport, "workload", wl->uid);
        return;
    }
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
