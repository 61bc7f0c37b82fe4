/* ztunnel's HBONE pool: one generic pool per worker (h2/hbone_pool.h), shared by the pods the worker serves.
 * Each pod is the owner of the connections dialed for it: they leave from its network namespace (so they
 * carry the pod's IP) with its current identity, and close when the pod is removed. */
#include <stdlib.h>

#include "h2/hbone_pool.h"
#include "ztunnel/proxy.h"
#include "ztunnel/settings.h"

struct pool {
    struct hbone_pool *hp;
};

struct pool *pool_new(struct worker *w)
{
    struct pool *p = calloc(1, sizeof(*p));
    if (!p) return NULL;
    /* POOL_UNUSED_RELEASE_TIMEOUT, parsed at start-up */
    p->hp = hbone_pool_new(w->loop, zt_cfg.pool_unused_release_ms, "ztunnel::proxy::pool");
    if (!p->hp) {
        free(p);
        return NULL;
    }
    return p;
}

void pool_drain(struct pool *p)
{
    hbone_pool_drain(p->hp);
}

void pool_drop_pod(struct pool *p, struct zt_pod *pod)
{
    hbone_pool_drop_owner(p->hp, pod, "the pod was removed");
}

/* From the pod's namespace, so the connection has the pod's IP as its source (reference: outbound sockets are
 * created inside the pod netns). */
static int pod_dial(void *ud, const struct sockaddr_storage *hop)
{
    struct zt_pod *pod = ud;
    return zt_connect(pod->pp->netns_fd, hop, NULL, true);
}

struct hbone_stream *pool_open_stream(struct pool *p, struct zt_pod *pod, const struct sockaddr_storage *next_hop,
                                      const char *const *sans, size_t n_sans, const struct ip_addr *src_ip,
                                      const struct hbone_header *hdrs, size_t n_hdrs, int tcp_fd,
                                      const struct hbone_stream_ops *ops, void *ud, const char **err)
{
    /* pod->ident is set before the listeners accept (the first certificate is here by then) */
    return hbone_pool_open(p->hp, pod, pod->ident, pod_dial, pod, next_hop, sans, n_sans, src_ip, hdrs, n_hdrs,
                           tcp_fd, ops, ud, err);
}
