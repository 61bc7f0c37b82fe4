/* Pod proxy setup, socket helpers and access logs. */
#include "ztunnel/proxy.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/log.h"
#include "tls/tls.h"

static void append_bag(char *buf, size_t n, const char *key, const char *val)
{
    if (!val || !*val) return; /* empty entries are omitted, as Istio's baggage encoder does */
    size_t len = strlen(buf);
    snprintf(buf + len, n - len, "%s%s=%s", len ? "," : "", key, val);
}

/* Baggage describing a workload (reference §1.2): cluster, namespace, workload by type, canonical service
 * and revision, region and zone. */
static void make_baggage(const struct workload *w, const char *ns, const char *name, char *buf, size_t n)
{
    char key[64];
    buf[0] = 0;
    if (!w) {
        append_bag(buf, n, "k8s.namespace.name", ns);
        append_bag(buf, n, "k8s.pod.name", name);
        return;
    }
    append_bag(buf, n, "k8s.cluster.name", w->cluster_id);
    append_bag(buf, n, "k8s.namespace.name", w->namespace_);
    const char *type = *w->workload_type ? w->workload_type : "deployment";
    snprintf(key, sizeof(key), "k8s.%s.name", type);
    append_bag(buf, n, key, *w->workload_name ? w->workload_name : w->name);
    append_bag(buf, n, "service.name", w->canonical_name);
    append_bag(buf, n, "service.version", w->canonical_revision);
    append_bag(buf, n, "cloud.region", w->locality.region);
    append_bag(buf, n, "cloud.availability_zone", w->locality.zone);
}

int pod_proxy_new(struct pod_proxy **out, struct snapshot *snap, struct cert_provider *prov, const char *ns,
                  const char *name, const char *sa, char *err, size_t errlen)
{
    struct pod_proxy *pp = calloc(1, sizeof(*pp));
    char e2[256];
    if (!pp) return -ENOMEM;
    snprintf(pp->ns, sizeof(pp->ns), "%s", ns);
    snprintf(pp->name, sizeof(pp->name), "%s", name);
    snprintf(pp->sa, sizeof(pp->sa), "%s", sa);
    snapshot_ref(snap);
    pp->snap = snap;
    pp->self = snapshot_workload_by_name(snap, ns, name);
    pp->network = pp->self ? pp->self->network : "";
    /* The identity comes from the workload info we were started with; the trust domain from the config. */
    if (spiffe_set(&pp->id, pp->self ? pp->self->trust_domain : NULL, ns, sa) < 0) {
        snprintf(err, errlen, "invalid workload identity %s/%s", ns, sa);
        goto fail;
    }
    spiffe_format(&pp->id, pp->id_uri, sizeof(pp->id_uri));
    pp->cert = prov->fetch(prov, &pp->id, e2, sizeof(e2));
    if (!pp->cert) {
        snprintf(err, errlen, "certificate for %s: %s", pp->id_uri, e2);
        goto fail;
    }
    pp->server_ctx = tls_server_ctx_new(pp->cert);
    pp->client_ctx = tls_client_ctx_new(pp->cert);
    if (!pp->server_ctx || !pp->client_ctx) {
        snprintf(err, errlen, "TLS context: %s", tls_errstr(e2, sizeof(e2)));
        goto fail;
    }
    make_baggage(pp->self, ns, name, pp->baggage, sizeof(pp->baggage));
    *out = pp;
    return 0;
fail:
    if (pp->server_ctx) SSL_CTX_free(pp->server_ctx);
    if (pp->client_ctx) SSL_CTX_free(pp->client_ctx);
    if (pp->cert) tls_cert_unref(pp->cert);
    snapshot_unref(pp->snap);
    free(pp);
    return -EINVAL;
}

int worker_listen(struct worker *w, char *err, size_t errlen)
{
    static const uint16_t ports[3] = {PORT_OUTBOUND, PORT_INBOUND_PLAIN, PORT_HBONE};
    void (*cbs[3])(struct io *, uint32_t) = {outbound_accept, inbound_plain_accept, inbound_hbone_accept};
    for (int i = 0; i < 3; i++) {
        /* IP_TRANSPARENT on the listeners is best effort, as in Istio (INPOD_PORT_REUSE, backlog 128). */
        int fd = net_listen(ports[i], 128, true);
        if (fd < 0) {
            snprintf(err, errlen, "listen on port %u: %s", ports[i], strerror(-fd));
            return fd;
        }
        w->listeners[i] = (struct io){.fd = fd, .cb = cbs[i]};
        int rc = loop_io_add(w->loop, &w->listeners[i], EPOLLIN);
        if (rc < 0) {
            snprintf(err, errlen, "epoll: %s", strerror(-rc));
            return rc;
        }
    }
    return 0;
}

int zt_connect(const struct sockaddr_storage *dst, const struct ip_addr *spoof_src)
{
    int one = 1, err;
    int fd = socket(dst->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    net_set_mark(fd, ZT_MARK);
    net_set_nodelay(fd);
    net_set_keepalive(fd);
    if (spoof_src && spoof_src->family) {
        struct sockaddr_storage src;
        struct ip_addr sip = *spoof_src;
        /* A v4 client on a v6 destination cannot be spoofed as such; keep the kernel's choice then. */
        if ((sip.family == AF_INET) == (dst->ss_family == AF_INET)) {
            if (dst->ss_family == AF_INET6)
                setsockopt(fd, SOL_IPV6, IPV6_TRANSPARENT, &one, sizeof(one));
            else
                setsockopt(fd, SOL_IP, IP_TRANSPARENT, &one, sizeof(one));
            setsockopt(fd, SOL_IP, IP_FREEBIND, &one, sizeof(one));
            socklen_t sl = sockaddr_from(&src, &sip, 0);
            if (bind(fd, (struct sockaddr *)&src, sl) < 0) {
                char ipb[IP_STRLEN];
                LOG_D("proxy", "cannot bind source %s (%s); connecting without spoofing",
                      ip_format(&sip, ipb, sizeof(ipb)), strerror(errno));
            }
        }
    }
    socklen_t len = dst->ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
    if (connect(fd, (const struct sockaddr *)dst, len) < 0 && errno != EINPROGRESS) {
        err = -errno;
        close(fd);
        return err;
    }
    return fd;
}

uint64_t zt_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

void access_log(struct worker *w, const struct access_rec *r)
{
    (void)w;
    char src[SOCKADDR_STRLEN], dst[SOCKADDR_STRLEN], sent[24], recv[24], dur[32];
    uint64_t now = zt_now_ms();
    snprintf(sent, sizeof(sent), "%" PRIu64, r->bytes_sent);
    snprintf(recv, sizeof(recv), "%" PRIu64, r->bytes_recv);
    snprintf(dur, sizeof(dur), "%" PRIu64 "ms", now - r->start_ms);
    const char *kv[] = {
        "src.addr", sockaddr_format(&r->src, src, sizeof(src)),
        "src.workload", r->src_wl ? r->src_wl->name : NULL,
        "src.namespace", r->src_wl ? r->src_wl->namespace_ : NULL,
        "src.identity", r->src_identity && *r->src_identity ? r->src_identity : NULL,
        "dst.addr", sockaddr_format(&r->dst, dst, sizeof(dst)),
        "dst.hbone_addr", r->hbone_addr,
        "dst.workload", r->dst_wl ? r->dst_wl->name : NULL,
        "dst.namespace", r->dst_wl ? r->dst_wl->namespace_ : NULL,
        "dst.identity", r->dst_identity && *r->dst_identity ? r->dst_identity : NULL,
        "direction", r->direction,
        "bytes_sent", sent,
        "bytes_recv", recv,
        "duration", dur,
        "error", r->error,
    };
    log_kvv(r->error ? LOG_ERROR : LOG_INFO, "access", "connection complete", kv, sizeof(kv) / sizeof(kv[0]) / 2);
}
