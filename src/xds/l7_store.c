/* The waypoint's L7 resource store (l7_store.h). */
#include "xds/l7_store.h"

#include <errno.h>
#include <search.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "xds/nack.h"
#include "xds/store.h"


struct l7e {
    struct l7e *prv, *nxt; /* first-seen order, so a rebuild is stable */
    char *name, *version;
    uint8_t *bytes;
    size_t len;
};

struct l7_store {
    struct {
        void *root; /* tsearch tree by name */
        struct l7e *head, *tail;
        size_t n;
    } t[L7_N_TYPES];
};

bool l7_store_handles(const char *type_url)
{
    return l7_type_index(type_url) >= 0;
}

static int cmp_entry(const void *a, const void *b)
{
    return strcmp(((const struct l7e *)a)->name, ((const struct l7e *)b)->name);
}

static struct l7e *lookup(struct l7_store *st, int ti, const char *name)
{
    struct l7e key = {.name = (char *)name};
    void *p = tfind(&key, &st->t[ti].root, cmp_entry);
    return p ? *(struct l7e **)p : NULL;
}

static void entry_free(struct l7e *e)
{
    free(e->name);
    free(e->version);
    free(e->bytes);
    free(e);
}

static void entry_remove(struct l7_store *st, int ti, struct l7e *e)
{
    tdelete(e, &st->t[ti].root, cmp_entry);
    if (e->prv)
        e->prv->nxt = e->nxt;
    else
        st->t[ti].head = e->nxt;
    if (e->nxt)
        e->nxt->prv = e->prv;
    else
        st->t[ti].tail = e->prv;
    st->t[ti].n--;
    entry_free(e);
}

int l7_store_new(struct l7_store **out)
{
    *out = calloc(1, sizeof(**out));
    return *out ? 0 : -ENOMEM;
}

static void noop_free(void *p)
{
    (void)p;
}

void l7_store_free(struct l7_store *st)
{
    if (!st) return;
    for (int i = 0; i < L7_N_TYPES; i++) {
        tdestroy(st->t[i].root, noop_free);
        for (struct l7e *e = st->t[i].head, *n; e; e = n) {
            n = e->nxt;
            entry_free(e);
        }
    }
    free(st);
}

size_t l7_store_count(const struct l7_store *st, const char *type_url)
{
    int ti = l7_type_index(type_url);
    return ti < 0 ? 0 : st->t[ti].n;
}

/* Builds the config of every retained resource (each was checked when it came). */
static struct l7_config *build(struct l7_store *st)
{
    struct l7_builder *b = l7_builder_new();
    if (!b) return NULL;
    char err[512];
    for (int i = 0; i < L7_N_TYPES; i++)
        for (struct l7e *e = st->t[i].head; e; e = e->nxt)
            if (l7_builder_add(b, l7_type_urls[i], e->name, e->bytes, e->len, err, sizeof(err)) == -ENOMEM) {
                l7_builder_free(b);
                return NULL;
            }
    return l7_builder_finish(b);
}

/* Whether one resource builds on its own: 0, or -EINVAL with the reason in err, or -ENOMEM. */
static int check(const char *type, const char *name, const uint8_t *pb, size_t len, char *err, size_t errlen)
{
    struct l7_builder *b = l7_builder_new();
    if (!b) return -ENOMEM;
    int rc = l7_builder_add(b, type, name, pb, len, err, errlen);
    l7_builder_free(b);
    return rc == -ENOMEM ? -ENOMEM : rc < 0 ? -EINVAL : 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(a, b);
}

int l7_store_apply(struct l7_store *st, const Envoy__Service__Discovery__V3__DeltaDiscoveryResponse *resp,
                   struct l7_config **cfg, char **nack)
{
    struct xds_nack k = {0};
    void *seen = NULL;
    int rc = 0, ti = l7_type_index(resp->type_url);
    *cfg = NULL;
    *nack = NULL;
    if (ti < 0) {
        if (asprintf(nack, "unknown resource type: %.200s", resp->type_url ? resp->type_url : "") < 0) {
            *nack = NULL;
            return -ENOMEM;
        }
        return -EINVAL;
    }
    for (size_t i = 0; i < resp->n_resources && !rc; i++) {
        const Envoy__Service__Discovery__V3__Resource *r = resp->resources[i];
        char where[32], err[512];
        if (!r->name || !*r->name) {
            snprintf(where, sizeof(where), "resources[%zu]", i);
            xds_nack_add(&k, where, "no name");
            continue;
        }
        void **slot = tsearch(r->name, &seen, cmp_str);
        if (!slot) {
            rc = -ENOMEM;
            break;
        }
        if (*slot != r->name) {
            xds_nack_add(&k, r->name, "listed twice in one response");
            continue;
        }
        if (!r->resource) {
            xds_nack_add(&k, r->name, "XDS payload without resource");
            continue;
        }
        if (!r->resource->type_url || strcmp(r->resource->type_url, l7_type_urls[ti])) {
            xds_nack_add(&k, r->name, "resource of type %.200s in a response of type %s",
                         r->resource->type_url ? r->resource->type_url : "", l7_type_urls[ti]);
            continue;
        }
        int c = check(l7_type_urls[ti], r->name, r->resource->value.data, r->resource->value.len, err, sizeof(err));
        if (c == -ENOMEM) {
            rc = c;
            break;
        }
        if (c < 0) { /* the previous version stays, and is what a reconnect reports */
            xds_nack_add(&k, r->name, "%s", err);
            continue;
        }
        uint8_t *bytes = malloc(r->resource->value.len ? r->resource->value.len : 1);
        char *version = strdup(r->version ? r->version : "");
        if (!bytes || !version) {
            free(bytes);
            free(version);
            rc = -ENOMEM;
            break;
        }
        memcpy(bytes, r->resource->value.data, r->resource->value.len);
        struct l7e *e = lookup(st, ti, r->name);
        if (e) {
            free(e->bytes);
            free(e->version);
            e->bytes = bytes;
            e->len = r->resource->value.len;
            e->version = version;
            continue;
        }
        if (!(e = calloc(1, sizeof(*e))) || !(e->name = strdup(r->name)) || !tsearch(e, &st->t[ti].root, cmp_entry)) {
            if (e) free(e->name);
            free(e);
            free(bytes);
            free(version);
            rc = -ENOMEM;
            break;
        }
        e->bytes = bytes;
        e->len = r->resource->value.len;
        e->version = version;
        e->prv = st->t[ti].tail;
        if (st->t[ti].tail)
            st->t[ti].tail->nxt = e;
        else
            st->t[ti].head = e;
        st->t[ti].tail = e;
        st->t[ti].n++;
    }
    tdestroy(seen, noop_free);
    for (size_t i = 0; i < resp->n_removed_resources && !rc; i++) {
        struct l7e *e = lookup(st, ti, resp->removed_resources[i]);
        if (e) entry_remove(st, ti, e);
    }
    *nack = xds_nack_done(&k);
    if (!rc && !(*cfg = build(st))) rc = -ENOMEM;
    if (rc) {
        free(*nack);
        *nack = NULL;
    }
    return rc;
}

int l7_store_initial_versions(const struct l7_store *st, const char *type_url,
                              Envoy__Service__Discovery__V3__DeltaDiscoveryRequest *req)
{
    int ti = l7_type_index(type_url);
    req->initial_resource_versions = NULL;
    req->n_initial_resource_versions = 0;
    if (ti < 0 || !st->t[ti].n) return 0;
    Envoy__Service__Discovery__V3__DeltaDiscoveryRequest__InitialResourceVersionsEntry *ents =
        xds_initial_versions_alloc(req, st->t[ti].n);
    if (!ents) return -ENOMEM;
    size_t i = 0;
    for (struct l7e *e = st->t[ti].head; e; e = e->nxt, i++) {
        ents[i].key = e->name;
        ents[i].value = e->version;
    }
    return 0;
}
