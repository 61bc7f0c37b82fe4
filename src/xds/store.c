/* The client-side delta xDS resource store; see store.h. */
#include "xds/store.h"

#include <errno.h>
#include <search.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/list.h"
#include "core/log.h"
#include "core/vec.h"
#include "mesh/builder.h"
#include "xds/pb.h"

/* One retained resource: the last accepted version of a name. */
struct store_entry {
    struct store_entry *prv, *nxt; /* first-seen order within its type */
    char *name, *version;
    struct xds_resource res;
};

/* The resources of one type URL: a tree by name (tsearch: O(log n) insert, find and delete) and the
 * first-seen list the builder is fed from. */
struct rtype {
    const char *url;
    void *root;
    struct store_entry *head, *tail;
    size_t n;
};

enum { T_ADDRESS = 0, T_AUTHORIZATION = 1, T_COUNT };

struct xds_store {
    struct rtype t[T_COUNT];
    struct xds_store_opts opts;
};

/* A resource of the response being applied. */
struct cand {
    const char *name, *version; /* borrowed from the response */
    struct xds_resource res;
    struct vec warnings; /* char *, emitted only once the resource is accepted */
    bool ok;
};

static inline const char *S(const char *s)
{
    return s ? s : "";
}

static int cmp_entry(const void *a, const void *b)
{
    return strcmp(((const struct store_entry *)a)->name, ((const struct store_entry *)b)->name);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(a, b);
}

static void noop_free(void *p)
{
    (void)p;
}

static struct rtype *type_of(struct xds_store *st, const char *url)
{
    for (int i = 0; i < T_COUNT; i++)
        if (!strcmp(st->t[i].url, S(url))) return &st->t[i];
    return NULL;
}

static const struct rtype *ctype_of(const struct xds_store *st, const char *url)
{
    return type_of((struct xds_store *)st, url);
}

static struct store_entry *lookup(const struct rtype *t, const char *name)
{
    struct store_entry k = {.name = (char *)name};
    void *p = tfind(&k, &t->root, cmp_entry);
    return p ? *(struct store_entry **)p : NULL;
}

static void entry_free(struct store_entry *e)
{
    xds_resource_free(&e->res);
    free(e->name);
    free(e->version);
    free(e);
}

int xds_store_new(struct xds_store **out, const struct xds_store_opts *opts)
{
    struct xds_store *st = calloc(1, sizeof(*st));
    if (!st) return -ENOMEM;
    st->t[T_ADDRESS].url = PB_TYPE_URL_ADDRESS;
    st->t[T_AUTHORIZATION].url = PB_TYPE_URL_AUTHORIZATION;
    if (opts) st->opts = *opts;
    *out = st;
    return 0;
}

void xds_store_free(struct xds_store *st)
{
    if (!st) return;
    for (int i = 0; i < T_COUNT; i++) {
        tdestroy(st->t[i].root, noop_free);
        for (struct store_entry *e = st->t[i].head, *next; e; e = next) {
            next = e->nxt;
            entry_free(e);
        }
    }
    free(st);
}

static void store_warn(const struct xds_store *st, const char *url, const char *name, const char *msg)
{
    if (st->opts.warn)
        st->opts.warn(st->opts.warn_ud, url, name, msg);
    else
        log_kv(LOG_WARN, "xds", msg, "type_url", url, "resource", name, NULL);
}

/* Decoder and builder warnings are held in the candidate until it is accepted. */
static void cand_warn(struct cand *c, const char *msg)
{
    char *copy = strdup(msg);
    char **slot = copy ? vec_push(&c->warnings) : NULL;
    if (!slot) {
        free(copy);
        return; /* out of memory: the warning is lost, the resource is not */
    }
    *slot = copy;
}

static void decode_warn(void *ud, const char *key, const char *msg)
{
    (void)key;
    cand_warn(ud, msg);
}

static void builder_warn(void *ud, const struct builder_err *w)
{
    struct cand **cur = ud;
    char m[XDS_REASON_MAX];
    if (*w->detail)
        snprintf(m, sizeof(m), "%s (addresses: %s)", w->reason, w->detail);
    else
        snprintf(m, sizeof(m), "%s", w->reason);
    if (*cur) cand_warn(*cur, m);
}

static void cand_free(struct cand *c)
{
    xds_resource_free(&c->res);
    char **w = (char **)c->warnings.p;
    for (size_t i = 0; i < c->warnings.n; i++)
        free(w[i]);
    vec_free(&c->warnings);
}

/* The NACK entries, "name: reason", in two groups as ztunnel orders them. */
struct rejects {
    struct vec handler, decode; /* char * */
    bool oom;
};

__attribute__((format(printf, 4, 5))) static void reject(struct rejects *r, bool decode, const char *name,
                                                         const char *fmt, ...)
{
    char reason[XDS_REASON_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof(reason), fmt, ap);
    va_end(ap);
    char *s = NULL;
    if (asprintf(&s, "%s: %s", name, reason) < 0) {
        r->oom = true;
        return;
    }
    char **slot = vec_push(decode ? &r->decode : &r->handler);
    if (!slot) {
        free(s);
        r->oom = true;
        return;
    }
    *slot = s;
}

static void rejects_free(struct rejects *r)
{
    struct vec *v[2] = {&r->handler, &r->decode};
    for (int k = 0; k < 2; k++) {
        char **s = (char **)v[k]->p;
        for (size_t i = 0; i < v[k]->n; i++)
            free(s[i]);
        vec_free(v[k]);
    }
}

/* Joins the entries with "; " (client.rs handle_stream_event), up to XDS_NACK_MAX bytes. NULL when none. */
static int rejects_text(struct rejects *r, char **out)
{
    *out = NULL;
    size_t total = r->handler.n + r->decode.n;
    if (!total) return 0;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) return -ENOMEM;
    size_t written = 0, used = 0;
    struct vec *v[2] = {&r->handler, &r->decode};
    for (int k = 0; k < 2; k++) {
        char **s = (char **)v[k]->p;
        for (size_t i = 0; i < v[k]->n; i++) {
            size_t add = strlen(s[i]) + (written ? 2 : 0);
            if (used + add > XDS_NACK_MAX) goto full;
            fprintf(f, "%s%s", written ? "; " : "", s[i]);
            used += add;
            written++;
        }
    }
full:
    if (written < total) {
        fprintf(f, "; ... and %zu more rejected", total - written);
        char lim[24], more[24];
        snprintf(lim, sizeof(lim), "%d", XDS_NACK_MAX);
        snprintf(more, sizeof(more), "%zu", total - written);
        log_kv(LOG_WARN, "xds", "NACK text truncated", "limit_bytes", lim, "entries_left_out", more, NULL);
    }
    if (fclose(f) || !buf) {
        free(buf);
        return -ENOMEM;
    }
    *out = buf;
    return 0;
}

/* Decodes and validates one resource into c; a refusal goes to r. Returns 0 or a fatal -ENOMEM / -E2BIG. */
static int check_one(const struct rtype *t, const Envoy__Service__Discovery__V3__Resource *res,
                     struct cand *c, void **seen, struct snapshot_builder *scratch, struct cand **cur,
                     struct rejects *r)
{
    c->name = S(res->name);
    c->version = S(res->version);
    c->warnings = VEC(char *);
    if (tfind(c->name, seen, cmp_str)) {
        reject(r, false, c->name, "duplicate resource name in one response");
        return 0;
    }
    if (!tsearch(c->name, seen, cmp_str)) return -ENOMEM;
    const Google__Protobuf__Any *any = res->resource;
    if (!any) {
        reject(r, true, c->name, "XDS payload without resource"); /* ztunnel's AdsError::MissingResource */
        return 0;
    }
    if (strcmp(S(any->type_url), t->url)) {
        reject(r, true, c->name, "decode: resource type URL \"%.200s\" is not the response's \"%s\"",
               S(any->type_url), t->url);
        return 0;
    }
    char why[XDS_REASON_MAX];
    struct xds_decode_opts dopts = {decode_warn, c};
    int rc = xds_resource_decode(t->url, any->value.data, any->value.len, &dopts, &c->res, why, sizeof(why));
    if (rc == -ENOMEM) return rc;
    if (rc == -EBADMSG || rc == -ELOOP) {
        reject(r, true, c->name, "%s", why);
        return 0;
    }
    if (rc) {
        reject(r, false, c->name, "%s", why);
        return 0;
    }
    if (strcmp(c->res.key, c->name)) {
        reject(r, false, c->name, "resource name does not match its key \"%.200s\"", c->res.key);
        return 0;
    }
    /* The builder's own checks, run now on a scratch build so a refusal is this resource's NACK entry and the
     * store only ever holds what the real build will accept (builder findings depend on the resource alone:
     * the keys that could collide are the names, unique per type). */
    struct builder_err be;
    *cur = c;
    rc = xds_resource_add(scratch, &c->res, &be);
    *cur = NULL;
    if (rc == -EINVAL) {
        if (*be.path)
            reject(r, false, c->name, "%s: %s", be.path, be.reason);
        else
            reject(r, false, c->name, "%s", be.reason);
        return 0;
    }
    if (rc) return rc;
    if (res->ttl) cand_warn(c, "ttl: not supported, the resource does not expire");
    if (res->n_aliases) cand_warn(c, "aliases: not supported, ignored");
    c->ok = true;
    return 0;
}

/* Moves an accepted candidate into the store. Returns 0 or -ENOMEM (the store keeps the old version). */
static int commit(struct rtype *t, struct cand *c)
{
    char *version = strdup(c->version);
    if (!version) return -ENOMEM;
    struct store_entry *e = lookup(t, c->name);
    if (e) {
        xds_resource_free(&e->res);
        free(e->version);
    } else {
        e = calloc(1, sizeof(*e));
        char *name = e ? strdup(c->name) : NULL;
        if (!name) {
            free(e);
            free(version);
            return -ENOMEM;
        }
        e->name = name;
        if (!tsearch(e, &t->root, cmp_entry)) {
            free(name);
            free(e);
            free(version);
            return -ENOMEM;
        }
        QUEUE_APPEND(t->head, t->tail, e, prv, nxt);
        t->n++;
    }
    e->version = version;
    e->res = c->res;
    memset(&c->res, 0, sizeof(c->res));
    return 0;
}

static void remove_name(struct rtype *t, const char *name)
{
    struct store_entry *e = lookup(t, name);
    if (!e) {
        /* ztunnel too treats a removal of something it does not hold as a no-op. */
        log_kv(LOG_DEBUG, "xds", "removed resource not held", "type_url", t->url, "resource", name, NULL);
        return;
    }
    tdelete(e, &t->root, cmp_entry);
    QUEUE_DEL(t->head, t->tail, e, prv, nxt);
    t->n--;
    entry_free(e);
}

static void silent_warn(void *ud, const struct builder_err *w)
{
    (void)ud;
    (void)w;
}

int xds_store_build(struct xds_store *st, struct snapshot **out)
{
    struct snapshot_builder *b;
    /* Warnings were given when each resource was accepted; a rebuild repeats none. */
    int rc = snapshot_builder_new(&b, &(struct builder_opts){.warn = silent_warn});
    if (rc) return rc;
    for (int i = 0; i < T_COUNT; i++) {
        for (struct store_entry *e = st->t[i].head; e; e = e->nxt) {
            struct builder_err be;
            rc = xds_resource_add(b, &e->res, &be);
            if (rc == -EINVAL) {
                /* Cannot happen: every retained resource passed the same checks alone, and the only keys that
                 * could collide are the names. Said loudly if it ever does. */
                char m[sizeof(be.path) + sizeof(be.reason) + 64];
                snprintf(m, sizeof(m), "retained resource refused by the builder: %s: %s", be.path,
                         be.reason);
                log_kv(LOG_ERROR, "xds", m, "type_url", st->t[i].url, "resource", e->name, NULL);
                continue;
            }
            if (rc) {
                builder_free(b);
                return rc;
            }
        }
    }
    return builder_finish(b, out);
}

int xds_store_apply(struct xds_store *st, const Envoy__Service__Discovery__V3__DeltaDiscoveryResponse *resp,
                    struct snapshot **snap, char **nack)
{
    *nack = NULL;
    if (snap) *snap = NULL;
    struct rtype *t = type_of(st, resp->type_url);
    if (!t) {
        /* ztunnel logs "unknown type" and ACKs; a NACK tells the server instead. */
        if (asprintf(nack, "unknown resource type: %.200s", S(resp->type_url)) < 0) {
            *nack = NULL;
            return -ENOMEM;
        }
        if (snap && xds_store_build(st, snap)) {
            free(*nack);
            *nack = NULL;
            return -ENOMEM;
        }
        return 0;
    }

    int rc = 0;
    struct rejects r = {.handler = VEC(char *), .decode = VEC(char *)};
    struct cand *cands = NULL;
    void *seen = NULL;
    struct snapshot_builder *scratch = NULL;
    struct cand *cur = NULL;
    size_t n = resp->n_resources;
    if (n) {
        cands = calloc(n, sizeof(*cands));
        if (!cands) {
            rc = -ENOMEM;
            goto out;
        }
        rc = snapshot_builder_new(&scratch, &(struct builder_opts){.warn = builder_warn, .warn_ud = &cur});
        if (rc) goto out;
    }
    for (size_t i = 0; i < n; i++)
        if ((rc = check_one(t, resp->resources[i], &cands[i], &seen, scratch, &cur, &r))) goto out;
    if (r.oom) {
        rc = -ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        if (!cands[i].ok) continue;
        if ((rc = commit(t, &cands[i]))) goto out;
        char **w = (char **)cands[i].warnings.p;
        for (size_t k = 0; k < cands[i].warnings.n; k++)
            store_warn(st, t->url, cands[i].name, w[k]);
    }
    /* After the updates, as ztunnel's handlers apply them: a name both updated and removed ends removed. */
    for (size_t i = 0; i < resp->n_removed_resources; i++)
        remove_name(t, S(resp->removed_resources[i]));
    if ((rc = rejects_text(&r, nack))) goto out;
    if (snap && (rc = xds_store_build(st, snap))) {
        free(*nack);
        *nack = NULL;
    }
out:
    builder_free(scratch);
    tdestroy(seen, noop_free);
    for (size_t i = 0; cands && i < n; i++)
        cand_free(&cands[i]);
    free(cands);
    rejects_free(&r);
    return rc;
}

int xds_store_apply_bytes(struct xds_store *st, const uint8_t *data, size_t len, struct snapshot **snap,
                          char **nack)
{
    *nack = NULL;
    if (snap) *snap = NULL;
    ProtobufCMessage *m = NULL;
    int rc = pb_message_unpack(&envoy__service__discovery__v3__delta_discovery_response__descriptor, data,
                               len, &m);
    if (rc) {
        if (asprintf(nack, "decode: %s",
                     rc == -ELOOP ? "response nested deeper than 100 levels"
                                  : "invalid DeltaDiscoveryResponse") < 0)
            *nack = NULL;
        return rc;
    }
    rc = xds_store_apply(st, (const Envoy__Service__Discovery__V3__DeltaDiscoveryResponse *)m, snap, nack);
    protobuf_c_message_free_unpacked(m, NULL);
    return rc;
}

size_t xds_store_count(const struct xds_store *st, const char *type_url)
{
    const struct rtype *t = ctype_of(st, type_url);
    return t ? t->n : 0;
}

const struct xds_resource *xds_store_get(const struct xds_store *st, const char *type_url, const char *name)
{
    const struct rtype *t = ctype_of(st, type_url);
    struct store_entry *e = t ? lookup(t, S(name)) : NULL;
    return e ? &e->res : NULL;
}

const char *xds_store_version(const struct xds_store *st, const char *type_url, const char *name)
{
    const struct rtype *t = ctype_of(st, type_url);
    struct store_entry *e = t ? lookup(t, S(name)) : NULL;
    return e ? e->version : NULL;
}

int xds_store_foreach(const struct xds_store *st, const char *type_url,
                      int (*fn)(void *ud, const char *name, const char *version), void *ud)
{
    const struct rtype *t = ctype_of(st, type_url);
    for (struct store_entry *e = t ? t->head : NULL; e; e = e->nxt) {
        int rc = fn(ud, e->name, e->version);
        if (rc) return rc;
    }
    return 0;
}

int xds_store_initial_versions(const struct xds_store *st, const char *type_url,
                               Envoy__Service__Discovery__V3__DeltaDiscoveryRequest *req)
{
    req->initial_resource_versions = NULL;
    req->n_initial_resource_versions = 0;
    const struct rtype *t = ctype_of(st, type_url);
    if (!t || !t->n) return 0;
    Envoy__Service__Discovery__V3__DeltaDiscoveryRequest__InitialResourceVersionsEntry *ents =
        xds_initial_versions_alloc(req, t->n);
    if (!ents) return -ENOMEM;
    size_t i = 0;
    for (struct store_entry *e = t->head; e; e = e->nxt, i++) {
        ents[i].key = e->name;
        ents[i].value = e->version;
    }
    return 0;
}

Envoy__Service__Discovery__V3__DeltaDiscoveryRequest__InitialResourceVersionsEntry *
xds_initial_versions_alloc(Envoy__Service__Discovery__V3__DeltaDiscoveryRequest *req, size_t n)
{
    Envoy__Service__Discovery__V3__DeltaDiscoveryRequest__InitialResourceVersionsEntry **pp =
        calloc(n, sizeof(*pp));
    Envoy__Service__Discovery__V3__DeltaDiscoveryRequest__InitialResourceVersionsEntry *ents =
        calloc(n, sizeof(*ents));
    if (!pp || !ents) {
        free(pp);
        free(ents);
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        envoy__service__discovery__v3__delta_discovery_request__initial_resource_versions_entry__init(
            &ents[i]);
        pp[i] = &ents[i];
    }
    req->initial_resource_versions = pp;
    req->n_initial_resource_versions = n;
    return ents;
}

void xds_store_initial_versions_clear(Envoy__Service__Discovery__V3__DeltaDiscoveryRequest *req)
{
    /* The entries were allocated as one array; pp[0] is its start. */
    if (req->n_initial_resource_versions) free(req->initial_resource_versions[0]);
    free(req->initial_resource_versions);
    req->initial_resource_versions = NULL;
    req->n_initial_resource_versions = 0;
}
