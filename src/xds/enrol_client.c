/* The node agent's PodEnrolment client (see enrol_client.h): the delta client over an enrol_store. */
#include "xds/enrol_client.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "xds/delta_client.h"
#include "xds/pb.h"
#include "xds/store.h"

static const char *const types[] = {PB_TYPE_URL_POD_ENROLMENT};

struct enrol_client {
    struct xds_delta *dc;
    const struct enrol_client_ops *ops;
    void *ud;
    char *node_name;
    struct enrol_store *store;
    unsigned long long acks, nacks;
};

static int apply(void *ud, const Envoy__Service__Discovery__V3__DeltaDiscoveryResponse *resp, char **nack)
{
    struct enrol_client *c = ud;
    int rc = enrol_store_apply(c->store, resp, nack);
    if (*nack || rc)
        c->nacks++;
    else
        c->acks++;
    return rc;
}

static int initial_versions(void *ud, const char *type_url,
                            Envoy__Service__Discovery__V3__DeltaDiscoveryRequest *req)
{
    struct enrol_client *c = ud;
    (void)type_url;
    return enrol_store_initial_versions(c->store, req);
}

static void initial_versions_clear(void *ud, Envoy__Service__Discovery__V3__DeltaDiscoveryRequest *req)
{
    (void)ud;
    xds_store_initial_versions_clear(req); /* the same layout */
}

static void on_response(void *ud)
{
    struct enrol_client *c = ud;
    const struct enrol_pod *v;
    size_t n;
    if (!c->ops->on_update) return;
    if (enrol_store_pods(c->store, c->node_name, &v, &n) < 0) {
        /* The store is intact; the next response hands over the full set again. */
        LOG_E("xds", "out of memory: the node agent is not told about this pod enrolment update");
        return;
    }
    c->ops->on_update(c->ud, v, n);
}

static void on_synced(void *ud)
{
    struct enrol_client *c = ud;
    if (c->ops->on_synced) c->ops->on_synced(c->ud);
}

static const struct xds_delta_ops delta_ops = {.apply = apply,
                                               .initial_versions = initial_versions,
                                               .initial_versions_clear = initial_versions_clear,
                                               .on_response = on_response,
                                               .on_synced = on_synced};

int enrol_client_new(struct loop *l, const struct enrol_client_opts *o, const struct enrol_client_ops *ops,
                     void *ud, struct enrol_client **out, char *err, size_t errlen)
{
    struct enrol_client *c = calloc(1, sizeof(*c));
    int rc;
    *out = NULL;
    if (!c || !(c->node_name = strdup(o->node_name ? o->node_name : ""))) {
        free(c);
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    c->ops = ops;
    c->ud = ud;
    if ((rc = enrol_store_new(&c->store)) < 0) {
        snprintf(err, errlen, "out of memory");
        enrol_client_free(c);
        return rc;
    }
    struct xds_delta_opts dopts = {.endpoint = o->endpoint,
                                   .err_prefix = "XDS",
                                   .node_kind = XDS_NODE_KIND_CNI,
                                   .node = o->node,
                                   .type_urls = types,
                                   .n_types = 1,
                                   .name = "enrolment client"};
    if ((rc = xds_delta_new(l, &dopts, &delta_ops, c, &c->dc, err, errlen)) < 0) {
        enrol_client_free(c);
        return rc;
    }
    *out = c;
    return 0;
}

void enrol_client_free(struct enrol_client *c)
{
    if (!c) return;
    xds_delta_free(c->dc);
    enrol_store_free(c->store);
    free(c->node_name);
    free(c);
}

size_t enrol_client_count(const struct enrol_client *c)
{
    return enrol_store_count(c->store);
}

void enrol_client_stats(const struct enrol_client *c, unsigned long long *acks, unsigned long long *nacks)
{
    *acks = c->acks;
    *nacks = c->nacks;
}
