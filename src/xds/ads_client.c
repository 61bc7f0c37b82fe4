/* The delta ADS client (see ads_client.h): the generic delta client (delta_client.h) over the resource store.
 */
#include "xds/ads_client.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "xds/pb.h"
#include "xds/store.h"

static const char *const types[] = {PB_TYPE_URL_ADDRESS, PB_TYPE_URL_AUTHORIZATION};
#define N_TYPES 2

/* Process-wide counters for ztunnel's istio_xds_* metrics (istio/ztunnel src/xds/metrics.rs); any thread
 * reads them, the client's loop writes. */
static struct xds_delta_metrics metrics;

struct xds_client {
    struct xds_delta *dc;
    const struct xds_client_ops *ops;
    void *ud;
    struct xds_store *store;
    struct snapshot *snap; /* built by the last apply, handed over once its ACK/NACK is sent */
};

static int apply(void *ud, const Envoy__Service__Discovery__V3__DeltaDiscoveryResponse *resp, char **nack)
{
    struct xds_client *c = ud;
    snapshot_unref(c->snap);
    c->snap = NULL;
    return xds_store_apply(c->store, resp, &c->snap, nack);
}

static int initial_versions(void *ud, const char *type_url,
                            Envoy__Service__Discovery__V3__DeltaDiscoveryRequest *req)
{
    struct xds_client *c = ud;
    return xds_store_initial_versions(c->store, type_url, req);
}

static void initial_versions_clear(void *ud, Envoy__Service__Discovery__V3__DeltaDiscoveryRequest *req)
{
    (void)ud;
    xds_store_initial_versions_clear(req);
}

static void on_response(void *ud)
{
    struct xds_client *c = ud;
    struct snapshot *snap = c->snap;
    c->snap = NULL;
    if (!snap) return;
    if (c->ops->on_snapshot) c->ops->on_snapshot(c->ud, snap);
    snapshot_unref(snap);
}

static void on_synced(void *ud)
{
    struct xds_client *c = ud;
    if (c->ops->on_synced) c->ops->on_synced(c->ud);
}

static const struct xds_delta_ops delta_ops = {.apply = apply,
                                               .initial_versions = initial_versions,
                                               .initial_versions_clear = initial_versions_clear,
                                               .on_response = on_response,
                                               .on_synced = on_synced};

uint64_t xds_client_terminations(enum xds_term_reason r)
{
    return (unsigned)r < XDS_TERM_COUNT ? atomic_load_explicit(&metrics.term[r], memory_order_relaxed) : 0;
}

const char *xds_client_metric_type(size_t i, uint64_t *messages, uint64_t *bytes)
{
    if (i >= N_TYPES) return NULL;
    *messages = atomic_load_explicit(&metrics.messages[i], memory_order_relaxed);
    *bytes = atomic_load_explicit(&metrics.bytes[i], memory_order_relaxed);
    return types[i];
}

int xds_client_new(struct loop *l, const struct xds_client_opts *o, const struct xds_client_ops *ops,
                   void *ud, struct xds_client **out, char *err, size_t errlen)
{
    struct xds_client *c = calloc(1, sizeof(*c));
    int rc;
    *out = NULL;
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    c->ops = ops;
    c->ud = ud;
    if ((rc = xds_store_new(&c->store, NULL)) < 0) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    struct xds_delta_opts dopts = {.endpoint = o->endpoint,
                                   .err_prefix = "XDS",
                                   .node_kind = XDS_NODE_KIND_ZTUNNEL,
                                   .node = o->node,
                                   .type_urls = types,
                                   .n_types = N_TYPES,
                                   .name = "XDS client",
                                   .metrics = &metrics};
    if ((rc = xds_delta_new(l, &dopts, &delta_ops, c, &c->dc, err, errlen)) < 0) goto fail;
    *out = c;
    return 0;
fail:
    xds_client_free(c);
    return rc;
}

void xds_client_free(struct xds_client *c)
{
    if (!c) return;
    xds_delta_free(c->dc); /* first: no callback after this */
    snapshot_unref(c->snap);
    xds_store_free(c->store);
    free(c);
}
