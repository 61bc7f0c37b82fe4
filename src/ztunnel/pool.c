/* The HBONE connection pool of one worker (reference §1.5). Keyed by next hop, expected server identities
 * and source IP (the source identity is the pod's own, one per pod proxy). A connection still in its
 * handshake already takes streams, so concurrent first connections to one key share one handshake; nothing
 * blocks. A connection that got GOAWAY or reached its stream limit takes no new streams. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/log.h"
#include "h2/hbone.h"
#include "ztunnel/proxy.h"

struct pool_entry {
    struct pool_entry *next, *prev;
    struct pool *p;
    struct sockaddr_storage hop;
    struct ip_addr src;
    char *sans; /* expected SANs joined by '\n' */
    struct hbone_conn *c;
};

struct pool {
    struct worker *w;
    struct pool_entry *head;
};

struct pool *pool_new(struct worker *w)
{
    struct pool *p = calloc(1, sizeof(*p));
    if (p) p->w = w;
    return p;
}

static char *join_sans(const char *const *sans, size_t n)
{
    size_t len = 1;
    for (size_t i = 0; i < n; i++) len += strlen(sans[i]) + 1;
    char *s = malloc(len), *q = s;
    if (!s) return NULL;
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(sans[i]);
        memcpy(q, sans[i], l);
        q += l;
        *q++ = '\n';
    }
    *q = 0;
    return s;
}

static bool same_hop(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    struct ip_addr ia, ib;
    uint16_t pa, pb;
    sockaddr_to(a, &ia, &pa);
    sockaddr_to(b, &ib, &pb);
    return pa == pb && ip_equal(&ia, &ib);
}

static void entry_closed(struct hbone_conn *c, void *ud, const char *err)
{
    (void)c;
    struct pool_entry *e = ud;
    if (err) LOG_D("pool", "connection closed: %s", err);
    if (e->prev)
        e->prev->next = e->next;
    else
        e->p->head = e->next;
    if (e->next) e->next->prev = e->prev;
    free(e->sans);
    free(e);
}

static const struct hbone_conn_ops entry_ops = {.on_closed = entry_closed};

struct hbone_stream *pool_open_stream(struct pool *p, const struct sockaddr_storage *next_hop,
                                      const char *const *sans, size_t n_sans, const struct ip_addr *src_ip,
                                      const struct hbone_header *hdrs, size_t n_hdrs, int tcp_fd,
                                      const struct hbone_stream_ops *ops, void *ud, const char **err)
{
    char *key = join_sans(sans, n_sans);
    struct hbone_stream *s = NULL;
    if (!key) goto fail;
    for (struct pool_entry *e = p->head; e; e = e->next) {
        if (!same_hop(&e->hop, next_hop) || !ip_equal(&e->src, src_ip) || strcmp(e->sans, key) != 0) continue;
        if (!hbone_conn_usable(e->c)) continue;
        s = hbone_stream_open(e->c, hdrs, n_hdrs, tcp_fd, ops, ud);
        if (s) {
            free(key);
            return s;
        }
    }
    int fd = zt_connect(next_hop, NULL);
    if (fd < 0) {
        *err = strerror(-fd);
        goto fail;
    }
    struct pool_entry *e = calloc(1, sizeof(*e));
    if (!e) {
        close(fd);
        goto fail;
    }
    e->p = p;
    e->hop = *next_hop;
    e->src = *src_ip;
    e->sans = key;
    key = NULL;
    e->c = hbone_client_new(p->w->loop, fd, p->w->pp->client_ctx, sans, n_sans, &entry_ops, e);
    if (!e->c) {
        free(e->sans);
        free(e);
        goto fail;
    }
    e->next = p->head;
    if (p->head) p->head->prev = e;
    p->head = e;
    s = hbone_stream_open(e->c, hdrs, n_hdrs, tcp_fd, ops, ud);
    if (s) return s;
fail:
    free(key);
    close(tcp_fd);
    return NULL;
}
