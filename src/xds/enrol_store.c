/* The node agent's PodEnrolment store (see enrol_store.h). */
#include "xds/enrol_store.h"
#include "xds/nack.h"

#include <errno.h>
#include <search.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "xds/pb.h"
#include "xds/store.h"
#include "zmesh/enrolment.pb-c.h"

/* One retained pod: the last accepted version of a name. */
struct enrol_entry {
    struct enrol_entry *prv, *nxt; /* first-seen order */
    char *name, *version;
    Zmesh__V1__PodEnrolment *m;
};

struct enrol_store {
    void *root; /* tsearch tree of struct enrol_entry by name */
    struct enrol_entry *head, *tail;
    size_t n;
    struct enrol_pod *pods; /* the last enrol_store_pods result */
};

static int cmp_entry(const void *a, const void *b)
{
    return strcmp(((const struct enrol_entry *)a)->name, ((const struct enrol_entry *)b)->name);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(a, b);
}

static void noop_free(void *p)
{
    (void)p;
}

static struct enrol_entry *lookup(const struct enrol_store *c, const char *name)
{
    struct enrol_entry k = {.name = (char *)name};
    void *p = tfind(&k, &c->root, cmp_entry);
    return p ? *(struct enrol_entry **)p : NULL;
}

static void entry_free(struct enrol_entry *e)
{
    if (e->m) protobuf_c_message_free_unpacked(&e->m->base, NULL);
    free(e->name);
    free(e->version);
    free(e);
}

static void entry_remove(struct enrol_store *c, struct enrol_entry *e)
{
    tdelete(e, &c->root, cmp_entry);
    if (e->prv)
        e->prv->nxt = e->nxt;
    else
        c->head = e->nxt;
    if (e->nxt)
        e->nxt->prv = e->prv;
    else
        c->tail = e->prv;
    c->n--;
    entry_free(e);
}

/* Decodes and checks one resource. Returns the message, or NULL with the NACK entry added. */
static Zmesh__V1__PodEnrolment *decode(const Envoy__Service__Discovery__V3__Resource *r, struct xds_nack *k)
{
    const char *name = r->name;
    ProtobufCMessage *pm = NULL;
    if (!r->resource) {
        xds_nack_add(k, name, "XDS payload without resource");
        return NULL;
    }
    int rc = pb_any_unpack(r->resource, &zmesh__v1__pod_enrolment__descriptor, &pm);
    if (rc == -EPROTOTYPE) {
        xds_nack_add(k, name, "resource of type %.200s in a response of type %s", r->resource->type_url,
                 PB_TYPE_URL_POD_ENROLMENT);
        return NULL;
    }
    if (rc < 0) {
        xds_nack_add(k, name, "decode: %s", rc == -ELOOP ? "nested too deep" : "not a zmesh.v1.PodEnrolment");
        return NULL;
    }
    Zmesh__V1__PodEnrolment *m = (void *)pm;
    size_t ln = strlen(m->namespace_), lm = strlen(m->name);
    if (!lm || !ln) {
        xds_nack_add(k, name, "%s: missing", !ln ? "namespace" : "name");
    } else if (strlen(name) != ln + 1 + lm || strncmp(name, m->namespace_, ln) || name[ln] != '/' ||
               strcmp(name + ln + 1, m->name)) {
        /* Removal is by name: a resource not named after its pod could never be removed. */
        xds_nack_add(k, name, "resource name is not <namespace>/<name> (%.200s/%.200s)", m->namespace_, m->name);
    } else {
        /* A newer zmeshd's fields: accepted (proto3 rules) and said, rate-limited (a full push repeats it).
         */
        if (m->base.n_unknown_fields)
            LOG_LIMITED(LOG_WARN, "xds", "pod enrolment %s: %u unknown field(s) ignored (first: field %u)",
                        name, m->base.n_unknown_fields, m->base.unknown_fields[0].tag);
        return m;
    }
    protobuf_c_message_free_unpacked(pm, NULL);
    return NULL;
}

int enrol_store_apply(struct enrol_store *c,
                      const Envoy__Service__Discovery__V3__DeltaDiscoveryResponse *resp, char **nack)
{
    struct xds_nack k = {0};
    void *seen = NULL; /* names of this response, to refuse one listed twice */
    int rc = 0;
    *nack = NULL;
    if (strcmp(resp->type_url, PB_TYPE_URL_POD_ENROLMENT) != 0) {
        /* Not subscribed to: said to the server (ztunnel logs it and ACKs), as store.h does. */
        if (asprintf(nack, "unknown resource type: %.200s", resp->type_url) < 0) {
            *nack = NULL;
            return -ENOMEM;
        }
        return 0;
    }
    for (size_t i = 0; i < resp->n_resources && !rc; i++) {
        const Envoy__Service__Discovery__V3__Resource *r = resp->resources[i];
        if (!r->name || !*r->name) {
            char where[32];
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
        Zmesh__V1__PodEnrolment *m = decode(r, &k);
        if (!m) continue; /* a rejected update keeps the previous version, and reports it on reconnect */
        char *version = strdup(r->version ? r->version : "");
        struct enrol_entry *e = lookup(c, r->name);
        if (!version) {
            protobuf_c_message_free_unpacked(&m->base, NULL);
            rc = -ENOMEM;
            break;
        }
        if (e) {
            protobuf_c_message_free_unpacked(&e->m->base, NULL);
            free(e->version);
            e->m = m;
            e->version = version;
            continue;
        }
        if (!(e = calloc(1, sizeof(*e))) || !(e->name = strdup(r->name)) ||
            !tsearch(e, &c->root, cmp_entry)) {
            if (e) free(e->name);
            free(e);
            free(version);
            protobuf_c_message_free_unpacked(&m->base, NULL);
            rc = -ENOMEM;
            break;
        }
        e->m = m;
        e->version = version;
        e->prv = c->tail;
        if (c->tail)
            c->tail->nxt = e;
        else
            c->head = e;
        c->tail = e;
        c->n++;
    }
    tdestroy(seen, noop_free);
    /* Removals after the updates, as ztunnel: a name both updated and removed ends removed. */
    for (size_t i = 0; i < resp->n_removed_resources && !rc; i++) {
        struct enrol_entry *e = lookup(c, resp->removed_resources[i]);
        if (e)
            entry_remove(c, e);
        else
            LOG_D("xds", "removed pod enrolment %s was not held", resp->removed_resources[i]);
    }
    *nack = xds_nack_done(&k);
    if (rc) {
        free(*nack);
        *nack = NULL;
    }
    return rc;
}

int enrol_store_initial_versions(const struct enrol_store *c,
                                 Envoy__Service__Discovery__V3__DeltaDiscoveryRequest *req)
{
    req->initial_resource_versions = NULL;
    req->n_initial_resource_versions = 0;
    if (!c->n) return 0;
    Envoy__Service__Discovery__V3__DeltaDiscoveryRequest__InitialResourceVersionsEntry *ents =
        xds_initial_versions_alloc(req, c->n);
    if (!ents) return -ENOMEM;
    size_t i = 0;
    for (struct enrol_entry *e = c->head; e; e = e->nxt, i++) {
        ents[i].key = e->name;
        ents[i].value = e->version;
    }
    return 0;
}

static int pod_cmp(const void *a, const void *b)
{
    const struct enrol_pod *x = a, *y = b;
    int r = strcmp(x->namespace_, y->namespace_);
    return r ? r : strcmp(x->name, y->name);
}

int enrol_store_pods(struct enrol_store *c, const char *node, const struct enrol_pod **out, size_t *n)
{
    struct enrol_pod *v = calloc(c->n ? c->n : 1, sizeof(*v));
    size_t k = 0;
    *out = NULL;
    *n = 0;
    if (!v) return -ENOMEM;
    for (const struct enrol_entry *e = c->head; e; e = e->nxt) {
        const Zmesh__V1__PodEnrolment *m = e->m;
        if (node && *node && strcmp(m->node_name, node)) continue;
        v[k++] = (struct enrol_pod){.uid = m->uid,
                                    .name = m->name,
                                    .namespace_ = m->namespace_,
                                    .service_account = m->service_account,
                                    .node = m->node_name,
                                    .ambient = m->ambient,
                                    .reason = m->reason};
    }
    qsort(v, k, sizeof(*v), pod_cmp);
    free(c->pods);
    c->pods = v;
    *out = v;
    *n = k;
    return 0;
}

int enrol_store_new(struct enrol_store **out)
{
    *out = calloc(1, sizeof(**out));
    return *out ? 0 : -ENOMEM;
}

void enrol_store_free(struct enrol_store *c)
{
    if (!c) return;
    tdestroy(c->root, noop_free);
    for (struct enrol_entry *e = c->head, *next; e; e = next) {
        next = e->nxt;
        entry_free(e);
    }
    free(c->pods);
    free(c);
}

int enrol_store_apply_bytes(struct enrol_store *c, const uint8_t *data, size_t len, char **nack)
{
    ProtobufCMessage *m = NULL;
    *nack = NULL;
    int rc = pb_message_unpack(&envoy__service__discovery__v3__delta_discovery_response__descriptor, data,
                               len, &m);
    if (rc < 0) {
        *nack = strdup(rc == -ELOOP ? "decode: nested too deep" : "decode: not a DeltaDiscoveryResponse");
        return rc;
    }
    rc = enrol_store_apply(c, (const Envoy__Service__Discovery__V3__DeltaDiscoveryResponse *)m, nack);
    protobuf_c_message_free_unpacked(m, NULL);
    return rc;
}

size_t enrol_store_count(const struct enrol_store *c)
{
    return c->n;
}

const char *enrol_store_version(const struct enrol_store *c, const char *name)
{
    const struct enrol_entry *e = lookup(c, name);
    return e ? e->version : NULL;
}
