/* zmeshd's delta ADS server logic; see ads.h for the contract and src/zmeshd/README.md ("Delta ADS server")
 * for the design. Facts follow istio/istio pilot/pkg/xds/delta.go (shouldRespondDelta, deltaWatchedResources,
 * pushDeltaXds) and pilot/pkg/xds/workload.go (GenerateDeltas, appendAddress). */
#include "zmeshd/ads.h"

#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include <openssl/evp.h>

#include "core/err.h"
#include "core/list.h"
#include "core/log.h"
#include "core/vec.h"
#include "mesh/snapshot_impl.h"
#include "xds/pb.h"

#define LOG_TARGET "ads"

/* Longest nonce kept: ours are "<8 hex>-<counter>", under 32 bytes; a longer one from a client can never
 * match one we sent, and is kept cut for introspection only. */
#define ADS_NONCE_MAX 64
/* Room for a generation number as system_version_info. */
#define ADS_VERSION_INFO_MAX 24
/* Longest peer name kept. */
#define ADS_PEER_MAX 256
/* Longest text of a client's failure. */
#define ADS_CLIENT_ERROR_MAX 512

/* ---- a keyed hash and an intrusive chained hash map ---- */

/* SipHash-2-4 (Aumasson and Bernstein): the maps hold names chosen by clients, so the hash is keyed by a
 * per-server random key, and a client cannot make its own lookups quadratic (and stall the one control-plane
 * thread). */
#define ROTL64(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                                             \
    do {                                                                                                     \
        v0 += v1;                                                                                            \
        v1 = ROTL64(v1, 13);                                                                                 \
        v1 ^= v0;                                                                                            \
        v0 = ROTL64(v0, 32);                                                                                 \
        v2 += v3;                                                                                            \
        v3 = ROTL64(v3, 16);                                                                                 \
        v3 ^= v2;                                                                                            \
        v0 += v3;                                                                                            \
        v3 = ROTL64(v3, 21);                                                                                 \
        v3 ^= v0;                                                                                            \
        v2 += v1;                                                                                            \
        v1 = ROTL64(v1, 17);                                                                                 \
        v1 ^= v2;                                                                                            \
        v2 = ROTL64(v2, 32);                                                                                 \
    } while (0)

static uint64_t siphash24(const uint64_t key[2], const void *data, size_t len)
{
    const uint8_t *p = data;
    uint64_t v0 = 0x736f6d6570736575ULL ^ key[0], v1 = 0x646f72616e646f6dULL ^ key[1];
    uint64_t v2 = 0x6c7967656e657261ULL ^ key[0], v3 = 0x7465646279746573ULL ^ key[1];
    uint64_t last = (uint64_t)len << 56;
    for (; len >= 8; p += 8, len -= 8) {
        uint64_t m;
        memcpy(&m, p, 8);
        m = le64toh(m);
        v3 ^= m;
        SIPROUND;
        SIPROUND;
        v0 ^= m;
    }
    for (size_t i = 0; i < len; i++)
        last |= (uint64_t)p[i] << (8 * i);
    v3 ^= last;
    SIPROUND;
    SIPROUND;
    v0 ^= last;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

/* A node embedded first in each element; key borrowed from the element. */
struct hnode {
    struct hnode *next;
    uint64_t hash;
    const char *key;
    size_t keylen;
};
/* Buckets are a power of two, grown at load 1. Names are hashed once with the server's key, so one hash
 * serves the table and every client's sets. */
struct hmap {
    struct hnode **b;
    size_t nb, n;
};

static struct hnode *hmap_find(const struct hmap *m, const char *key, size_t len, uint64_t h)
{
    if (!m->nb) return NULL;
    for (struct hnode *x = m->b[h & (m->nb - 1)]; x; x = x->next)
        if (x->hash == h && x->keylen == len && memcmp(x->key, key, len) == 0) return x;
    return NULL;
}

/* Inserts x (hash and key set, not present). Returns 0 or -ENOMEM (m unchanged). */
static int hmap_insert(struct hmap *m, struct hnode *x)
{
    if (m->n >= m->nb) {
        size_t nb = m->nb ? m->nb * 2 : 16;
        struct hnode **b = calloc(nb, sizeof(*b));
        if (!b) return -ENOMEM;
        for (size_t i = 0; i < m->nb; i++) {
            for (struct hnode *y = m->b[i], *nx; y; y = nx) {
                nx = y->next;
                y->next = b[y->hash & (nb - 1)];
                b[y->hash & (nb - 1)] = y;
            }
        }
        free(m->b);
        m->b = b;
        m->nb = nb;
    }
    struct hnode **head = &m->b[x->hash & (m->nb - 1)];
    x->next = *head;
    *head = x;
    m->n++;
    return 0;
}

static void hmap_del(struct hmap *m, struct hnode *x)
{
    for (struct hnode **pp = &m->b[x->hash & (m->nb - 1)]; *pp; pp = &(*pp)->next) {
        if (*pp == x) {
            *pp = x->next;
            m->n--;
            return;
        }
    }
}

/* ---- per-client name sets: a name, and for initial_resource_versions the version the client holds ---- */

struct ads_name {
    struct hnode h; /* first: the map's nodes are freed as ads_name */
    char *version;  /* in the same allocation; NULL in plain sets */
    char name[];
};

/* Frees every node of a set and empties it (the buckets go too: a set used once, like the initial versions,
 * must not keep its size). */
static void nameset_clear(struct hmap *m)
{
    for (size_t i = 0; i < m->nb; i++) {
        for (struct hnode *x = m->b[i], *nx; x; x = nx) {
            nx = x->next;
            free(x);
        }
    }
    free(m->b);
    *m = (struct hmap){0};
}

static struct ads_name *nameset_find(const struct hmap *m, const char *name, size_t len, uint64_t h)
{
    return (struct ads_name *)hmap_find(m, name, len, h);
}

/* Adds name (with version, may be NULL) unless present. Returns 1 added, 0 present, -ENOMEM. */
static int nameset_add(struct hmap *m, const char *name, size_t len, uint64_t h, const char *version)
{
    if (hmap_find(m, name, len, h)) return 0;
    size_t vlen = version ? strlen(version) + 1 : 0;
    struct ads_name *n = malloc(sizeof(*n) + len + 1 + vlen);
    if (!n) return -ENOMEM;
    memcpy(n->name, name, len);
    n->name[len] = '\0';
    n->version = version ? memcpy(n->name + len + 1, version, vlen) : NULL;
    n->h = (struct hnode){.hash = h, .key = n->name, .keylen = len};
    if (hmap_insert(m, &n->h) < 0) {
        free(n);
        return -ENOMEM;
    }
    return 1;
}

/* Removes name when present. Returns 1 removed, 0 absent. */
static int nameset_del(struct hmap *m, const char *name, size_t len, uint64_t h)
{
    struct hnode *x = hmap_find(m, name, len, h);
    if (!x) return 0;
    hmap_del(m, x);
    free(x);
    return 1;
}

/* ---- resources ---- */

/* One version of one resource: immutable once built, shared by the table and every response that sends it. */
struct ads_rv {
    atomic_uint refs;
    size_t len;
    const uint8_t *data; /* in the same allocation, after the name */
    char version[ADS_VERSION_LEN + 1];
    char name[];
};

static void rv_unref(struct ads_rv *rv)
{
    if (rv && atomic_fetch_sub(&rv->refs, 1) == 1) free(rv);
}

/* A table entry: a live resource (rv set) or a tombstone (rv NULL: removed, remembered until every client
 * that may have it was told). Entries sit on the change list in the order of their last change (seq
 * ascending), and tombstones also on the tombstone FIFO in the order of their removal. */
struct ads_res {
    struct hnode h; /* key = name */
    struct ads_res *cprev, *cnext;
    struct ads_res *tprev, *tnext;
    struct ads_rv *rv;
    uint64_t seq;  /* change that last touched the entry */
    uint64_t mark; /* ads_table_replace's pass that last saw it */
    size_t namelen;
    char name[];
};

struct ads_table {
    char *type_url;
    struct hmap by_name;
    struct ads_res *chead, *ctail; /* change list, oldest change first */
    struct ads_res *thead, *ttail; /* tombstones, oldest removal first */
    size_t n_live, n_tomb;
    uint64_t seq;                /* last change (0: none yet) */
    uint64_t published_seq;      /* seq at the last publish */
    uint64_t prev_published_seq; /* and at the one before: removals after it are never forgotten yet */
    uint64_t horizon;            /* removals up to this seq may have been forgotten */
    uint64_t generation;
    uint64_t mark;
    char version_info[ADS_VERSION_INFO_MAX];
};

struct ads_server {
    struct ads_table types[ADS_TYPES_MAX];
    size_t n_types;
    char *control_plane_id;
    struct ads_client *clients; /* LIST */
    uint64_t hkey[2];
    uint32_t nonce_prefix;
    uint64_t nonce_ctr;
};

/* One client's state for one type. */
struct ads_watch {
    bool active;         /* a first request was received */
    bool wildcard;       /* subscribed to everything */
    bool full;           /* the next response is the full state (first request, or wildcard turned on) */
    bool must_respond;   /* a request waits for an answer, even an empty one */
    uint64_t cursor;     /* every change up to this seq has been sent */
    struct hmap names;   /* explicit subscriptions */
    struct hmap initial; /* initial_resource_versions, until the full response */
    struct hmap want;    /* names subscribed since the last response, to send */
    char nonce_sent[ADS_NONCE_MAX], version_sent[ADS_VERSION_INFO_MAX];
    char nonce_acked[ADS_NONCE_MAX], version_acked[ADS_VERSION_INFO_MAX];
    char *nack_message; /* NULL when none since the last ACK */
    char nack_nonce[ADS_NONCE_MAX];
    int nack_code;
    uint64_t responses, acks, nacks, stale;
    uint64_t resources_sent, removed_sent, bytes_sent;
    uint64_t last_resources, last_removed, last_bytes;
    uint64_t last_visited;
    int64_t last_sent_unix_ms;
};

struct ads_client {
    struct ads_server *srv;
    struct ads_client *prev, *next;
    enum ads_client_state state;
    int err_rc, grpc_status;
    char error[ADS_CLIENT_ERROR_MAX];
    char peer[ADS_PEER_MAX];
    char *node_id, *cluster;
    json_t *metadata;
    ads_pending_fn on_pending;
    void *ud;
    bool signalled; /* on_pending was called and next_response has not yet come back empty */
    size_t rr;      /* type to try first in the next response */
    uint64_t unknown_type_requests;
    struct ads_watch w[ADS_TYPES_MAX];
};

struct ads_response {
    Envoy__Service__Discovery__V3__DeltaDiscoveryResponse msg;
    Envoy__Config__Core__V3__ControlPlane cp;
    Envoy__Service__Discovery__V3__Resource *res;
    Envoy__Service__Discovery__V3__Resource **resp;
    Google__Protobuf__Any *any;
    struct ads_rv **rvs;
    size_t n_rvs;
    char **removed; /* each malloc'd */
    size_t n_removed;
    char *type_url;
    char nonce[ADS_NONCE_MAX];
    char version_info[ADS_VERSION_INFO_MAX];
    size_t size;
};

/* ---- small helpers ---- */

/* True when s[0..n) is well-formed UTF-8 (no overlong forms, surrogates or code points past U+10FFFF): proto3
 * strings must be, and istiod's and ztunnel's decoders refuse a message otherwise. */
static bool utf8_valid(const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    for (size_t i = 0; i < n;) {
        unsigned c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        unsigned min;
        if (c >= 0xc2 && c <= 0xdf)
            len = 2, min = 0x80;
        else if (c >= 0xe0 && c <= 0xef)
            len = 3, min = 0x800;
        else if (c >= 0xf0 && c <= 0xf4)
            len = 4, min = 0x10000;
        else
            return false;
        if (n - i < len) return false;
        unsigned cp = c & (0x7f >> len);
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80) return false;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
        i += len;
    }
    return true;
}

/* Copies at most n - 1 bytes of src into dst with a NUL, cutting on a UTF-8 character boundary so that valid
 * UTF-8 stays valid (the introspection JSON needs it). */
static void copy_trunc(char *dst, size_t n, const char *src)
{
    size_t l = strnlen(src, n - 1);
    if (src[l])
        while (l > 0 && ((unsigned char)src[l] & 0xc0) == 0x80)
            l--;
    memcpy(dst, src, l);
    dst[l] = '\0';
}

static uint64_t name_hash(const struct ads_server *s, const char *name, size_t len)
{
    return siphash24(s->hkey, name, len);
}

static struct ads_table *find_table(const struct ads_server *s, const char *type_url, size_t *idx)
{
    for (size_t i = 0; i < s->n_types; i++) {
        if (strcmp(s->types[i].type_url, type_url) == 0) {
            if (idx) *idx = i;
            return (struct ads_table *)&s->types[i];
        }
    }
    return NULL;
}

static struct ads_res *table_find(const struct ads_table *t, const char *name, size_t len, uint64_t h)
{
    return (struct ads_res *)hmap_find(&t->by_name, name, len, h);
}

/* Checks a resource name from the owner or a client. Returns 0, or -EINVAL with the reason in err. */
static int check_name(const char *name, size_t len, char *err, size_t errlen)
{
    char pb[MESH_PRINTABLE_MAX];
    if (len == 0) {
        err_setf(err, errlen, "empty resource name");
        return -EINVAL;
    }
    if (len > ADS_NAME_MAX) {
        err_setf(err, errlen, "resource name \"%s\" is %zu bytes, longer than %d", mesh_printable(name, pb),
                 len, ADS_NAME_MAX);
        return -EINVAL;
    }
    if (!utf8_valid(name, len)) {
        err_setf(err, errlen, "resource name \"%s\" is not valid UTF-8", mesh_printable(name, pb));
        return -EINVAL;
    }
    return 0;
}

/* ---- tables ---- */

static void change_unlink(struct ads_table *t, struct ads_res *e)
{
    QUEUE_DEL(t->chead, t->ctail, e, cprev, cnext);
}

/* Records a change of e: it moves to the end of the change order with the next seq. */
static void change_touch(struct ads_table *t, struct ads_res *e)
{
    change_unlink(t, e);
    e->seq = ++t->seq;
    QUEUE_APPEND(t->chead, t->ctail, e, cprev, cnext);
}

static void res_free(struct ads_table *t, struct ads_res *e)
{
    hmap_del(&t->by_name, &e->h);
    change_unlink(t, e);
    if (!e->rv) {
        QUEUE_DEL(t->thead, t->ttail, e, tprev, tnext);
        t->n_tomb--;
    } else {
        rv_unref(e->rv);
        t->n_live--;
    }
    free(e);
}

/* The first 64 bits of the SHA-256 of the bytes, in hex: a content version, the same for the same bytes in
 * any run of zmeshd (istiod's Address versions are content hashes too: pilot/pkg/model/service.go, xxhash).
 */
static int content_version(const uint8_t *data, size_t len, char out[ADS_VERSION_LEN + 1])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL) != 1 || mdlen < 8) return -ENOMEM;
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < ADS_VERSION_LEN / 2; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[ADS_VERSION_LEN] = '\0';
    return 0;
}

enum put_result { PUT_UNCHANGED, PUT_ADDED, PUT_CHANGED };

/* Sets name (checked by the caller) to value. Returns a put_result or -ENOMEM. */
static int table_put(struct ads_server *s, struct ads_table *t, const char *name, size_t nlen,
                     const uint8_t *value, size_t len)
{
    uint64_t h = name_hash(s, name, nlen);
    struct ads_res *e = table_find(t, name, nlen, h);
    if (e && e->rv && e->rv->len == len && (len == 0 || memcmp(e->rv->data, value, len) == 0)) {
        e->mark = t->mark;
        return PUT_UNCHANGED;
    }
    struct ads_rv *rv = malloc(sizeof(*rv) + nlen + 1 + len);
    if (!rv) return -ENOMEM;
    atomic_init(&rv->refs, 1);
    memcpy(rv->name, name, nlen);
    rv->name[nlen] = '\0';
    uint8_t *data = (uint8_t *)rv->name + nlen + 1;
    if (len) memcpy(data, value, len);
    rv->data = data;
    rv->len = len;
    if (content_version(data, len, rv->version) < 0) {
        free(rv);
        return -ENOMEM;
    }
    int res = PUT_CHANGED;
    if (!e) {
        e = calloc(1, sizeof(*e) + nlen + 1);
        if (!e) {
            free(rv);
            return -ENOMEM;
        }
        memcpy(e->name, name, nlen);
        e->namelen = nlen;
        e->h = (struct hnode){.hash = h, .key = e->name, .keylen = nlen};
        if (hmap_insert(&t->by_name, &e->h) < 0) {
            free(e);
            free(rv);
            return -ENOMEM;
        }
        QUEUE_APPEND(t->chead, t->ctail, e, cprev, cnext);
        t->n_live++;
        res = PUT_ADDED;
    } else if (!e->rv) {
        QUEUE_DEL(t->thead, t->ttail, e, tprev, tnext);
        t->n_tomb--;
        t->n_live++;
        res = PUT_ADDED;
    } else {
        rv_unref(e->rv);
    }
    e->rv = rv;
    e->mark = t->mark;
    change_touch(t, e);
    return res;
}

/* Turns a live entry into a tombstone. */
static void table_remove_entry(struct ads_table *t, struct ads_res *e)
{
    rv_unref(e->rv);
    e->rv = NULL;
    t->n_live--;
    t->n_tomb++;
    QUEUE_APPEND(t->thead, t->ttail, e, tprev, tnext);
    change_touch(t, e);
}

static bool watch_pending(const struct ads_watch *w, const struct ads_table *t)
{
    return w->active && (w->full || w->must_respond || w->want.n > 0 || t->seq > w->cursor);
}

static void wake(struct ads_client *c)
{
    if (c->signalled || c->state == ADS_CLIENT_FAILED) return;
    c->signalled = true;
    if (c->on_pending) c->on_pending(c, c->ud);
}

/* Forgets the tombstones every client has been told about (seq at or below the lowest cursor of the clients
 * following changes), then the oldest ones beyond the bound, which leaves the clients behind them lost. */
static void table_gc(struct ads_server *s, size_t idx)
{
    struct ads_table *t = &s->types[idx];
    uint64_t min = UINT64_MAX;
    for (struct ads_client *c = s->clients; c; c = c->next) {
        const struct ads_watch *w = &c->w[idx];
        /* A watch waiting for its full state needs no removals: it will get the current state. */
        if (w->active && !w->full && c->state != ADS_CLIENT_FAILED && w->cursor < min) min = w->cursor;
    }
    size_t cap = t->n_live > ADS_TOMBSTONES_MIN ? t->n_live : ADS_TOMBSTONES_MIN;
    size_t forced = 0;
    /* Removals of the latest generation are kept whatever their number: every client must get a chance to
     * take them before it counts as behind. */
    while (t->thead &&
           (t->thead->seq <= min || (t->n_tomb > cap && t->thead->seq <= t->prev_published_seq))) {
        struct ads_res *e = t->thead;
        if (e->seq > min) forced++;
        if (e->seq > t->horizon) t->horizon = e->seq;
        res_free(t, e);
    }
    if (forced)
        LOGF(LOG_WARN, LOG_TARGET,
             "ADS: %s: forgot %zu removals not yet sent to slow clients (more than %zu remembered); "
             "those clients will be asked to reconnect",
             t->type_url, forced, cap);
}

int ads_table_publish(struct ads_server *s, const char *type_url)
{
    size_t idx;
    struct ads_table *t = find_table(s, type_url, &idx);
    if (!t) return -ENOENT;
    if (t->seq == t->published_seq) return 0;
    t->prev_published_seq = t->published_seq;
    t->published_seq = t->seq;
    t->generation++;
    snprintf(t->version_info, sizeof(t->version_info), "%" PRIu64, t->generation);
    table_gc(s, idx);
    for (struct ads_client *c = s->clients; c; c = c->next)
        if (watch_pending(&c->w[idx], t)) wake(c);
    return 0;
}

int ads_table_put(struct ads_server *s, const char *type_url, const char *name, const uint8_t *value,
                  size_t len, char *err, size_t errlen)
{
    struct ads_table *t = find_table(s, type_url, NULL);
    if (!t) {
        err_setf(err, errlen, "type %s is not served", type_url);
        return -ENOENT;
    }
    if (!name) name = "";
    size_t nlen = strlen(name);
    int rc = check_name(name, nlen, err, errlen);
    if (rc < 0) return rc;
    rc = table_put(s, t, name, nlen, value, len);
    if (rc < 0) return rc;
    return rc == PUT_UNCHANGED ? 0 : 1;
}

int ads_table_remove(struct ads_server *s, const char *type_url, const char *name)
{
    struct ads_table *t = find_table(s, type_url, NULL);
    if (!t) return -ENOENT;
    size_t nlen = strlen(name);
    struct ads_res *e = table_find(t, name, nlen, name_hash(s, name, nlen));
    if (!e || !e->rv) return 0;
    table_remove_entry(t, e);
    return 1;
}

int ads_table_replace(struct ads_server *s, const char *type_url, const struct ads_resource_in *in, size_t n,
                      struct ads_diff *diff, char *err, size_t errlen)
{
    struct ads_table *t = find_table(s, type_url, NULL);
    if (!t) {
        err_setf(err, errlen, "type %s is not served", type_url);
        return -ENOENT;
    }
    struct ads_diff d = {0};
    int rc = 0;
    /* Check the whole generation first, so a bad one leaves the table as it was. */
    struct hmap seen = {0};
    struct hnode *nodes = n ? calloc(n, sizeof(*nodes)) : NULL;
    if (n && !nodes) return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        const char *name = in[i].name ? in[i].name : "";
        size_t nlen = strlen(name);
        char why[ADS_CLIENT_ERROR_MAX];
        if ((rc = check_name(name, nlen, why, sizeof(why))) < 0) {
            err_setf(err, errlen, "resource %zu: %s", i, why);
            goto out;
        }
        uint64_t h = name_hash(s, name, nlen);
        if (hmap_find(&seen, name, nlen, h)) {
            char pb[MESH_PRINTABLE_MAX];
            err_setf(err, errlen, "resource %zu: duplicate name \"%s\"", i, mesh_printable(name, pb));
            rc = -EINVAL;
            goto out;
        }
        nodes[i] = (struct hnode){.hash = h, .key = name, .keylen = nlen};
        if ((rc = hmap_insert(&seen, &nodes[i])) < 0) goto out;
    }
    t->mark++;
    for (size_t i = 0; i < n; i++) {
        rc = table_put(s, t, nodes[i].key, nodes[i].keylen, in[i].value, in[i].len);
        if (rc < 0) goto publish;
        if (rc == PUT_ADDED)
            d.added++;
        else if (rc == PUT_CHANGED)
            d.changed++;
        else
            d.unchanged++;
    }
    rc = 0;
    /* Everything not seen in this generation goes. Removing moves an entry to the end of the change list, so
     * collect first. */
    struct vec gone = VEC(struct ads_res *);
    for (struct ads_res *e = t->chead; e; e = e->cnext) {
        if (e->rv && e->mark != t->mark) {
            struct ads_res **slot = vec_push(&gone);
            if (!slot) {
                rc = -ENOMEM;
                break;
            }
            *slot = e;
        }
    }
    for (size_t i = 0; i < gone.n; i++)
        table_remove_entry(t, ((struct ads_res **)gone.p)[i]);
    d.removed = gone.n;
    vec_free(&gone);
publish:
    ads_table_publish(s, type_url);
    if (rc == -ENOMEM) err_setf(err, errlen, "out of memory applying the generation");
out:
    free(seen.b);
    free(nodes);
    if (diff) *diff = d;
    return rc;
}

int ads_table_info(const struct ads_server *s, const char *type_url, struct ads_table_info *out)
{
    const struct ads_table *t = find_table(s, type_url, NULL);
    if (!t) return -ENOENT;
    *out =
        (struct ads_table_info){.resources = t->n_live, .tombstones = t->n_tomb, .generation = t->generation};
    return 0;
}

const char *ads_table_version(const struct ads_server *s, const char *type_url, const char *name)
{
    const struct ads_table *t = find_table(s, type_url, NULL);
    if (!t) return NULL;
    size_t nlen = strlen(name);
    const struct ads_res *e = table_find(t, name, nlen, name_hash(s, name, nlen));
    return e && e->rv ? e->rv->version : NULL;
}

/* ---- server ---- */

int ads_server_new(const struct ads_server_opts *opts, struct ads_server **out, char *err, size_t errlen)
{
    *out = NULL;
    if (!opts || !opts->n_types || opts->n_types > ADS_TYPES_MAX || !opts->type_urls) {
        err_setf(err, errlen, "between 1 and %d type URLs are needed, got %zu", ADS_TYPES_MAX,
                 opts ? opts->n_types : 0);
        return -EINVAL;
    }
    for (size_t i = 0; i < opts->n_types; i++) {
        const char *u = opts->type_urls[i];
        if (!u || !*u || strlen(u) >= PB_TYPE_URL_MAX) {
            err_setf(err, errlen, "type URL %zu is empty or longer than %d bytes", i, PB_TYPE_URL_MAX - 1);
            return -EINVAL;
        }
        for (size_t k = 0; k < i; k++) {
            if (strcmp(opts->type_urls[k], u) == 0) {
                err_setf(err, errlen, "type URL %s is listed twice", u);
                return -EINVAL;
            }
        }
    }
    struct ads_server *s = calloc(1, sizeof(*s));
    if (!s) return -ENOMEM;
    /* The hash key only has to be unknown to clients; the nonce prefix keeps nonces of two runs apart. */
    uint32_t rnd[5];
    if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd)) {
        err_setf(err, errlen, "getrandom failed: %s", strerror(errno));
        free(s);
        return -EIO;
    }
    s->hkey[0] = (uint64_t)rnd[0] << 32 | rnd[1];
    s->hkey[1] = (uint64_t)rnd[2] << 32 | rnd[3];
    s->nonce_prefix = rnd[4];
    s->n_types = opts->n_types;
    for (size_t i = 0; i < s->n_types; i++) {
        s->types[i].type_url = strdup(opts->type_urls[i]);
        snprintf(s->types[i].version_info, sizeof(s->types[i].version_info), "0");
        if (!s->types[i].type_url) goto nomem;
    }
    if (opts->control_plane_id && *opts->control_plane_id) {
        s->control_plane_id = strdup(opts->control_plane_id);
        if (!s->control_plane_id) goto nomem;
    }
    *out = s;
    return 0;
nomem:
    ads_server_free(s);
    return -ENOMEM;
}

static void watch_clear(struct ads_watch *w)
{
    nameset_clear(&w->names);
    nameset_clear(&w->initial);
    nameset_clear(&w->want);
    free(w->nack_message);
    w->nack_message = NULL;
}

void ads_server_free(struct ads_server *s)
{
    if (!s) return;
    while (s->clients)
        ads_client_free(s->clients);
    for (size_t i = 0; i < s->n_types; i++) {
        struct ads_table *t = &s->types[i];
        while (t->chead)
            res_free(t, t->chead);
        free(t->by_name.b);
        free(t->type_url);
    }
    free(s->control_plane_id);
    free(s);
}

size_t ads_server_types(const struct ads_server *s)
{
    return s->n_types;
}

/* ---- clients ---- */

const char *ads_client_state_to_str(enum ads_client_state st)
{
    switch (st) {
    case ADS_CLIENT_NEW:
        return "new";
    case ADS_CLIENT_ACTIVE:
        return "active";
    case ADS_CLIENT_FAILED:
        return "failed";
    }
    return "?";
}

int ads_client_new(struct ads_server *s, const char *peer, ads_pending_fn on_pending, void *ud,
                   struct ads_client **out)
{
    struct ads_client *c = calloc(1, sizeof(*c));
    if (!c) return -ENOMEM;
    c->srv = s;
    c->on_pending = on_pending;
    c->ud = ud;
    copy_trunc(c->peer, sizeof(c->peer), peer ? peer : "");
    if (!utf8_valid(c->peer, strlen(c->peer))) {
        char pb[MESH_PRINTABLE_MAX];
        copy_trunc(c->peer, sizeof(c->peer), mesh_printable(peer, pb));
    }
    LIST_PUSH(s->clients, c);
    *out = c;
    return 0;
}

void ads_client_free(struct ads_client *c)
{
    if (!c) return;
    LIST_DEL(c->srv->clients, c);
    for (size_t i = 0; i < ADS_TYPES_MAX; i++)
        watch_clear(&c->w[i]);
    free(c->node_id);
    free(c->cluster);
    json_decref(c->metadata);
    free(c);
}

static int client_fail(struct ads_client *c, int rc, int grpc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int client_fail(struct ads_client *c, int rc, int grpc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->error, sizeof(c->error), fmt, ap);
    va_end(ap);
    c->state = ADS_CLIENT_FAILED;
    c->err_rc = rc;
    c->grpc_status = grpc;
    LOG_LIMITED(LOG_WARN, LOG_TARGET, "ADS: %s %s: stream failed: %s", c->peer, c->node_id ? c->node_id : "",
                c->error);
    return rc;
}

/* google.protobuf.Struct/Value to JSON, for introspection. Returns NULL on a string that is not UTF-8 (*bad
 * set), nesting past PB_MAX_DEPTH (*bad set) or ENOMEM. */
static json_t *struct_to_json(const Google__Protobuf__Struct *st, int depth, bool *bad);
static json_t *value_to_json(const Google__Protobuf__Value *v, int depth, bool *bad)
{
    if (depth > PB_MAX_DEPTH) {
        *bad = true;
        return NULL;
    }
    if (!v) return json_null();
    switch (v->kind_case) {
    case GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE:
        /* JSON has no NaN or infinity; proto3's JSON mapping writes them as strings. */
        if (isnan(v->number_value)) return json_string("NaN");
        if (isinf(v->number_value)) return json_string(v->number_value > 0 ? "Infinity" : "-Infinity");
        return json_real(v->number_value);
    case GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE:
        if (!utf8_valid(v->string_value, strlen(v->string_value))) {
            *bad = true;
            return NULL;
        }
        return json_string(v->string_value);
    case GOOGLE__PROTOBUF__VALUE__KIND_BOOL_VALUE:
        return json_boolean(v->bool_value);
    case GOOGLE__PROTOBUF__VALUE__KIND_STRUCT_VALUE:
        return struct_to_json(v->struct_value, depth + 1, bad);
    case GOOGLE__PROTOBUF__VALUE__KIND_LIST_VALUE: {
        json_t *a = json_array();
        if (!a) return NULL;
        for (size_t i = 0; v->list_value && i < v->list_value->n_values; i++) {
            json_t *x = value_to_json(v->list_value->values[i], depth + 1, bad);
            if (!x || json_array_append_new(a, x) < 0) {
                json_decref(a);
                return NULL;
            }
        }
        return a;
    }
    default:
        return json_null();
    }
}

static json_t *struct_to_json(const Google__Protobuf__Struct *st, int depth, bool *bad)
{
    if (depth > PB_MAX_DEPTH) {
        *bad = true;
        return NULL;
    }
    json_t *o = json_object();
    if (!o || !st) return o;
    for (size_t i = 0; i < st->n_fields; i++) {
        const char *k = st->fields[i]->key;
        if (!utf8_valid(k, strlen(k))) {
            *bad = true;
            json_decref(o);
            return NULL;
        }
        json_t *x = value_to_json(st->fields[i]->value, depth + 1, bad);
        if (!x || json_object_set_new(o, k, x) < 0) {
            json_decref(o);
            return NULL;
        }
    }
    return o;
}

/* The first request names the node (istiod: initConnection; "missing node information" is its text). */
static int take_node(struct ads_client *c, const Envoy__Config__Core__V3__Node *node)
{
    if (!node || !node->id || !node->id[0])
        return client_fail(c, -EINVAL, ADS_GRPC_INVALID_ARGUMENT, "missing node information");
    size_t idlen = strlen(node->id);
    if (idlen > ADS_NODE_ID_MAX)
        return client_fail(c, -EINVAL, ADS_GRPC_INVALID_ARGUMENT, "node.id is %zu bytes, longer than %d",
                           idlen, ADS_NODE_ID_MAX);
    const char *cluster = node->cluster ? node->cluster : "";
    if (!utf8_valid(node->id, idlen) || !utf8_valid(cluster, strlen(cluster)))
        return client_fail(c, -EINVAL, ADS_GRPC_INVALID_ARGUMENT,
                           "node.id or node.cluster is not valid UTF-8");
    bool bad = false;
    json_t *md = struct_to_json(node->metadata, 0, &bad);
    if (!md)
        return bad ? client_fail(c, -EINVAL, ADS_GRPC_INVALID_ARGUMENT,
                                 "node.metadata holds a string that is not valid UTF-8 or nests too deep")
                   : client_fail(c, -ENOMEM, ADS_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    c->node_id = strdup(node->id);
    c->cluster = strdup(cluster);
    if (!c->node_id || !c->cluster) {
        json_decref(md);
        return client_fail(c, -ENOMEM, ADS_GRPC_RESOURCE_EXHAUSTED, "out of memory");
    }
    c->metadata = md;
    return 0;
}

/* Checks every name and string of a request for a served type before anything changes. */
static int check_request(struct ads_client *c,
                         const Envoy__Service__Discovery__V3__DeltaDiscoveryRequest *req)
{
    char why[ADS_CLIENT_ERROR_MAX];
    if (req->n_resource_names_subscribe > ADS_NAMES_MAX || req->n_initial_resource_versions > ADS_NAMES_MAX)
        return client_fail(c, -E2BIG, ADS_GRPC_RESOURCE_EXHAUSTED,
                           "%s: %zu names subscribed and %zu initial_resource_versions, more than %zu",
                           req->type_url, req->n_resource_names_subscribe, req->n_initial_resource_versions,
                           ADS_NAMES_MAX);
    for (size_t i = 0; i < req->n_resource_names_subscribe; i++) {
        const char *n = req->resource_names_subscribe[i];
        if (check_name(n, strlen(n), why, sizeof(why)) < 0)
            return client_fail(c, -EINVAL, ADS_GRPC_INVALID_ARGUMENT, "%s: resource_names_subscribe[%zu]: %s",
                               req->type_url, i, why);
    }
    for (size_t i = 0; i < req->n_resource_names_unsubscribe; i++) {
        const char *n = req->resource_names_unsubscribe[i];
        if (check_name(n, strlen(n), why, sizeof(why)) < 0)
            return client_fail(c, -EINVAL, ADS_GRPC_INVALID_ARGUMENT,
                               "%s: resource_names_unsubscribe[%zu]: %s", req->type_url, i, why);
    }
    for (size_t i = 0; i < req->n_initial_resource_versions; i++) {
        const Envoy__Service__Discovery__V3__DeltaDiscoveryRequest__InitialResourceVersionsEntry *e =
            req->initial_resource_versions[i];
        if (check_name(e->key, strlen(e->key), why, sizeof(why)) < 0)
            return client_fail(c, -EINVAL, ADS_GRPC_INVALID_ARGUMENT,
                               "%s: initial_resource_versions[%zu]: %s", req->type_url, i, why);
        if (strlen(e->value) > ADS_NAME_MAX || !utf8_valid(e->value, strlen(e->value)))
            return client_fail(c, -EINVAL, ADS_GRPC_INVALID_ARGUMENT,
                               "%s: initial_resource_versions[%zu]: version is too long or not valid UTF-8",
                               req->type_url, i);
    }
    const char *nonce = req->response_nonce ? req->response_nonce : "";
    if (!utf8_valid(nonce, strlen(nonce)))
        return client_fail(c, -EINVAL, ADS_GRPC_INVALID_ARGUMENT, "%s: response_nonce is not valid UTF-8",
                           req->type_url);
    if (req->error_detail && req->error_detail->message &&
        !utf8_valid(req->error_detail->message, strlen(req->error_detail->message)))
        return client_fail(c, -EINVAL, ADS_GRPC_INVALID_ARGUMENT,
                           "%s: error_detail.message is not valid UTF-8", req->type_url);
    return 0;
}

static int nomem(struct ads_client *c)
{
    return client_fail(c, -ENOMEM, ADS_GRPC_RESOURCE_EXHAUSTED, "out of memory");
}

static int too_many(struct ads_client *c, const char *type_url)
{
    return client_fail(c, -E2BIG, ADS_GRPC_RESOURCE_EXHAUSTED, "%s: more than %zu names subscribed", type_url,
                       ADS_NAMES_MAX);
}

/* A NACK: istiod records error_detail.message as the type's last error whatever the nonce
 * (shouldRespondDelta), sends nothing and keeps the subscription. */
static int handle_nack(struct ads_client *c, const struct ads_table *t, struct ads_watch *w,
                       const Envoy__Service__Discovery__V3__DeltaDiscoveryRequest *req)
{
    const char *msg = req->error_detail->message ? req->error_detail->message : "";
    const char *nonce = req->response_nonce ? req->response_nonce : "";
    size_t len = strlen(msg);
    static const char cut[] = "... (truncated)";
    size_t keep = len;
    if (keep > ADS_ERROR_MAX) {
        keep = ADS_ERROR_MAX;
        /* Cut on a character boundary so the kept text stays UTF-8. */
        while (keep > 0 && ((unsigned char)msg[keep] & 0xc0) == 0x80)
            keep--;
    }
    char *copy = malloc(keep + sizeof(cut));
    if (!copy) return nomem(c);
    memcpy(copy, msg, keep);
    if (keep < len)
        memcpy(copy + keep, cut, sizeof(cut));
    else
        copy[keep] = '\0';
    free(w->nack_message);
    w->nack_message = copy;
    copy_trunc(w->nack_nonce, sizeof(w->nack_nonce), nonce);
    w->nack_code = req->error_detail->code;
    w->nacks++;
    char pb[MESH_PRINTABLE_MAX];
    LOG_LIMITED(LOG_WARN, LOG_TARGET, "ADS:%s: ACK ERROR %s nonce %s%s: code %d: %s", t->type_url, c->node_id,
                mesh_printable(nonce, pb),
                w->active ? (strcmp(nonce, w->nonce_sent) ? " (stale)" : "") : " (no request)", w->nack_code,
                copy);
    return 0;
}

/* The first request of a type (istiod: shouldRespondDelta with no previous WatchedResource, and
 * deltaWatchedResources): names = subscribe + initial_resource_versions - unsubscribe; wildcard when "*" is
 * in them or nothing was subscribed. A wildcard subscription keeps only the names subscribed explicitly, not
 * those of initial_resource_versions (as istiod's workload generator, whose comment gives the memory reason).
 */
static int first_request(struct ads_client *c, const struct ads_table *t, struct ads_watch *w,
                         const Envoy__Service__Discovery__V3__DeltaDiscoveryRequest *req)
{
    const struct ads_server *s = c->srv;
    bool star = false, unstar = false;
    for (size_t i = 0; i < req->n_resource_names_subscribe; i++)
        if (strcmp(req->resource_names_subscribe[i], "*") == 0) star = true;
    for (size_t i = 0; i < req->n_resource_names_unsubscribe; i++)
        if (strcmp(req->resource_names_unsubscribe[i], "*") == 0) unstar = true;
    for (size_t i = 0; i < req->n_initial_resource_versions; i++)
        if (strcmp(req->initial_resource_versions[i]->key, "*") == 0) star = true;
    w->wildcard = (star && !unstar) || req->n_resource_names_subscribe == 0;
    for (size_t i = 0; i < req->n_resource_names_subscribe; i++) {
        const char *n = req->resource_names_subscribe[i];
        size_t l = strlen(n);
        if (strcmp(n, "*") == 0) continue;
        if (nameset_add(&w->names, n, l, name_hash(s, n, l), NULL) < 0) return nomem(c);
    }
    for (size_t i = 0; i < req->n_initial_resource_versions; i++) {
        const char *n = req->initial_resource_versions[i]->key;
        size_t l = strlen(n);
        if (strcmp(n, "*") == 0) continue;
        uint64_t h = name_hash(s, n, l);
        if (nameset_add(&w->initial, n, l, h, req->initial_resource_versions[i]->value) < 0) return nomem(c);
        if (!w->wildcard && nameset_add(&w->names, n, l, h, NULL) < 0) return nomem(c);
    }
    for (size_t i = 0; i < req->n_resource_names_unsubscribe; i++) {
        const char *n = req->resource_names_unsubscribe[i];
        size_t l = strlen(n);
        nameset_del(&w->names, n, l, name_hash(s, n, l));
    }
    if (w->names.n > ADS_NAMES_MAX) return too_many(c, t->type_url);
    w->active = true;
    w->full = true;
    w->must_respond = true;
    w->cursor = 0;
    LOGF(LOG_DEBUG, LOG_TARGET, "ADS:%s: %s %s: %s, %zu names, %zu initial versions", t->type_url,
         req->n_initial_resource_versions ? "RECONNECT" : "INIT", c->node_id,
         w->wildcard ? "wildcard" : "explicit", w->names.n, w->initial.n);
    wake(c);
    return 0;
}

int ads_client_handle(struct ads_client *c, const Envoy__Service__Discovery__V3__DeltaDiscoveryRequest *req)
{
    if (c->state == ADS_CLIENT_FAILED) return c->err_rc;
    if (!req) return client_fail(c, -EINVAL, ADS_GRPC_INVALID_ARGUMENT, "no request");
    int rc;
    if (c->state == ADS_CLIENT_NEW) {
        if ((rc = take_node(c, req->node)) < 0) return rc;
        c->state = ADS_CLIENT_ACTIVE;
        LOGF(LOG_INFO, LOG_TARGET, "ADS: new delta connection for node:%s peer:%s", c->node_id, c->peer);
    }
    const char *type_url = req->type_url ? req->type_url : "";
    size_t idx;
    struct ads_table *t = find_table(c->srv, type_url, &idx);
    if (!t) {
        /* istiod finds no generator for it and answers nothing (pushDeltaXds); zmeshd says so. */
        char pb[MESH_PRINTABLE_MAX];
        c->unknown_type_requests++;
        LOG_LIMITED(LOG_WARN, LOG_TARGET,
                    "ADS: node %s asked for type \"%s\", which zmeshd does not serve: ignored", c->node_id,
                    mesh_printable(type_url, pb));
        return 0;
    }
    if ((rc = check_request(c, req)) < 0) return rc;
    struct ads_watch *w = &c->w[idx];
    if (req->error_detail) return handle_nack(c, t, w, req);
    if (!w->active) return first_request(c, t, w, req);

    const char *nonce = req->response_nonce ? req->response_nonce : "";
    if (nonce[0] && strcmp(nonce, w->nonce_sent) != 0) {
        /* A newer response was sent since: this request answers an old one (istiod: "Expired nonce"), and is
         * ignored whole, subscription changes included, as istiod ignores it. */
        char pb[MESH_PRINTABLE_MAX];
        w->stale++;
        LOGF(LOG_DEBUG, LOG_TARGET, "ADS:%s: %s expired nonce %s, sent %s", t->type_url, c->node_id,
             mesh_printable(nonce, pb), w->nonce_sent);
        return 0;
    }
    if (nonce[0]) {
        memcpy(w->nonce_acked, w->nonce_sent, sizeof(w->nonce_acked));
        memcpy(w->version_acked, w->version_sent, sizeof(w->version_acked));
        free(w->nack_message);
        w->nack_message = NULL;
        w->nack_nonce[0] = '\0';
        w->nack_code = 0;
        w->acks++;
    }
    if (req->n_initial_resource_versions)
        LOG_LIMITED(
            LOG_WARN, LOG_TARGET,
            "ADS:%s: node %s sent initial_resource_versions after its first request of the type: ignored "
            "(they only describe a new stream)",
            t->type_url, c->node_id);

    /* Spontaneous subscription changes (they may also ride on an ACK). A name newly subscribed is answered
     * (its resource, or removed_resources when it does not exist, as istiod's on-demand generator does);
     * "*" turns the wildcard on (the full state follows) or off. Unsubscribing needs no answer: the client
     * drops the resources itself (envoy's xDS protocol, "Deleting resources"). */
    const struct ads_server *s = c->srv;
    bool respond = false;
    for (size_t i = 0; i < req->n_resource_names_subscribe; i++) {
        const char *n = req->resource_names_subscribe[i];
        size_t l = strlen(n);
        if (strcmp(n, "*") == 0) {
            if (!w->wildcard) {
                w->wildcard = true;
                w->full = true;
                nameset_clear(&w->want);
                respond = true;
            }
            continue;
        }
        uint64_t h = name_hash(s, n, l);
        rc = nameset_add(&w->names, n, l, h, NULL);
        if (rc < 0) return nomem(c);
        if (rc == 0) continue;
        if (w->names.n > ADS_NAMES_MAX) return too_many(c, t->type_url);
        respond = true;
        if (!w->full && nameset_add(&w->want, n, l, h, NULL) < 0) return nomem(c);
    }
    for (size_t i = 0; i < req->n_resource_names_unsubscribe; i++) {
        const char *n = req->resource_names_unsubscribe[i];
        size_t l = strlen(n);
        if (strcmp(n, "*") == 0) {
            w->wildcard = false;
            continue;
        }
        uint64_t h = name_hash(s, n, l);
        nameset_del(&w->names, n, l, h);
        nameset_del(&w->want, n, l, h);
    }
    if (respond) {
        w->must_respond = true;
        wake(c);
    }
    return 0;
}

int ads_client_recv(struct ads_client *c, const uint8_t *data, size_t len)
{
    if (c->state == ADS_CLIENT_FAILED) return c->err_rc;
    ProtobufCMessage *m = NULL;
    int rc =
        pb_message_unpack(&envoy__service__discovery__v3__delta_discovery_request__descriptor, data, len, &m);
    if (rc < 0)
        return client_fail(c, -EBADMSG, ADS_GRPC_INVALID_ARGUMENT,
                           "a %zu-byte message is not a valid DeltaDiscoveryRequest (%s)", len,
                           rc == -ELOOP ? "nested too deep" : "malformed protobuf");
    rc = ads_client_handle(c, (Envoy__Service__Discovery__V3__DeltaDiscoveryRequest *)m);
    protobuf_c_message_free_unpacked(m, NULL);
    return rc;
}

bool ads_client_pending(const struct ads_client *c)
{
    if (c->state != ADS_CLIENT_ACTIVE) return false;
    for (size_t i = 0; i < c->srv->n_types; i++)
        if (watch_pending(&c->w[i], &c->srv->types[i])) return true;
    return false;
}

/* ---- building responses ---- */

static bool initial_match(const struct ads_watch *w, const struct ads_res *e)
{
    const struct ads_name *n = nameset_find(&w->initial, e->name, e->namelen, e->h.hash);
    return n && strcmp(n->version, e->rv->version) == 0;
}

struct build {
    struct vec rvs;     /* struct ads_rv *, referenced */
    struct vec removed; /* char *, malloc'd */
    size_t visited;     /* table entries and names looked at: the cost of the build */
};

static int add_rv(struct build *b, struct ads_rv *rv)
{
    struct ads_rv **slot = vec_push(&b->rvs);
    if (!slot) return -ENOMEM;
    atomic_fetch_add(&rv->refs, 1);
    *slot = rv;
    return 0;
}

static int add_removed(struct build *b, const char *name)
{
    char **slot = vec_push(&b->removed);
    if (!slot) return -ENOMEM;
    if (!(*slot = strdup(name))) {
        b->removed.n--;
        return -ENOMEM;
    }
    return 0;
}

static void build_free(struct build *b)
{
    for (size_t i = 0; i < b->rvs.n; i++)
        rv_unref(((struct ads_rv **)b->rvs.p)[i]);
    for (size_t i = 0; i < b->removed.n; i++)
        free(((char **)b->removed.p)[i]);
    vec_free(&b->rvs);
    vec_free(&b->removed);
}

/* The full state for w: what it subscribes to, less what initial_resource_versions says it already holds at
 * the same version (istiod: appendAddress), plus removed_resources for the names it holds or subscribed that
 * do not exist (GenerateDeltas: Subscribed - have). */
static int build_full(const struct ads_table *t, const struct ads_watch *w, struct build *b)
{
    int rc = 0;
    if (w->wildcard) {
        for (const struct ads_res *e = t->chead; e && !rc; e = e->cnext, b->visited++)
            if (e->rv && !initial_match(w, e)) rc = add_rv(b, e->rv);
        for (size_t i = 0; i < w->initial.nb && !rc; i++) {
            for (const struct hnode *x = w->initial.b[i]; x && !rc; x = x->next, b->visited++) {
                const struct ads_res *e = table_find(t, x->key, x->keylen, x->hash);
                if (!e || !e->rv) rc = add_removed(b, x->key);
            }
        }
        for (size_t i = 0; i < w->names.nb && !rc; i++) {
            for (const struct hnode *x = w->names.b[i]; x && !rc; x = x->next, b->visited++) {
                const struct ads_res *e = table_find(t, x->key, x->keylen, x->hash);
                if ((!e || !e->rv) && !hmap_find(&w->initial, x->key, x->keylen, x->hash))
                    rc = add_removed(b, x->key);
            }
        }
        return rc;
    }
    for (size_t i = 0; i < w->names.nb && !rc; i++) {
        for (const struct hnode *x = w->names.b[i]; x && !rc; x = x->next, b->visited++) {
            const struct ads_res *e = table_find(t, x->key, x->keylen, x->hash);
            if (e && e->rv) {
                if (!initial_match(w, e)) rc = add_rv(b, e->rv);
            } else {
                rc = add_removed(b, x->key);
            }
        }
    }
    return rc;
}

/* What changed after w's cursor, newest first: O(changes), whatever the size of the table. Then the names
 * subscribed since the last response that the walk did not cover. */
static int build_incremental(const struct ads_table *t, const struct ads_watch *w, struct build *b)
{
    int rc = 0;
    for (const struct ads_res *e = t->ctail; e && e->seq > w->cursor && !rc; e = e->cprev, b->visited++) {
        if (!w->wildcard && !hmap_find(&w->names, e->name, e->namelen, e->h.hash)) continue;
        rc = e->rv ? add_rv(b, e->rv) : add_removed(b, e->name);
    }
    for (size_t i = 0; i < w->want.nb && !rc; i++) {
        for (const struct hnode *x = w->want.b[i]; x && !rc; x = x->next, b->visited++) {
            const struct ads_res *e = table_find(t, x->key, x->keylen, x->hash);
            if (e && e->seq > w->cursor) continue; /* sent by the walk above */
            rc = e && e->rv ? add_rv(b, e->rv) : add_removed(b, x->key);
        }
    }
    return rc;
}

static struct ads_response *response_make(struct ads_server *s, const struct ads_table *t, struct build *b)
{
    struct ads_response *r = calloc(1, sizeof(*r));
    if (!r) return NULL;
    size_t n = b->rvs.n;
    r->type_url = strdup(t->type_url);
    r->res = n ? calloc(n, sizeof(*r->res)) : NULL;
    r->resp = n ? calloc(n, sizeof(*r->resp)) : NULL;
    r->any = n ? calloc(n, sizeof(*r->any)) : NULL;
    if (!r->type_url || (n && (!r->res || !r->resp || !r->any))) {
        ads_response_free(r);
        return NULL;
    }
    /* The references and names move from the build into the response. */
    r->rvs = (struct ads_rv **)b->rvs.p;
    r->n_rvs = n;
    r->removed = (char **)b->removed.p;
    r->n_removed = b->removed.n;
    b->rvs = VEC(struct ads_rv *);
    b->removed = VEC(char *);
    for (size_t i = 0; i < n; i++) {
        struct ads_rv *rv = r->rvs[i];
        Google__Protobuf__Any *any = &r->any[i];
        google__protobuf__any__init(any);
        any->type_url = r->type_url;
        any->value.data = (uint8_t *)rv->data;
        any->value.len = rv->len;
        Envoy__Service__Discovery__V3__Resource *res = &r->res[i];
        envoy__service__discovery__v3__resource__init(res);
        res->name = rv->name;
        res->version = rv->version;
        res->resource = any;
        r->resp[i] = res;
    }
    snprintf(r->nonce, sizeof(r->nonce), "%08" PRIx32 "-%" PRIu64, s->nonce_prefix, ++s->nonce_ctr);
    memcpy(r->version_info, t->version_info, sizeof(r->version_info));
    envoy__service__discovery__v3__delta_discovery_response__init(&r->msg);
    r->msg.type_url = r->type_url;
    r->msg.system_version_info = r->version_info;
    r->msg.nonce = r->nonce;
    r->msg.n_resources = n;
    r->msg.resources = r->resp;
    r->msg.n_removed_resources = r->n_removed;
    r->msg.removed_resources = r->removed;
    if (s->control_plane_id) {
        envoy__config__core__v3__control_plane__init(&r->cp);
        r->cp.identifier = s->control_plane_id;
        r->msg.control_plane = &r->cp;
    }
    r->size = protobuf_c_message_get_packed_size(&r->msg.base);
    return r;
}

/* Builds w's next response, or *out NULL when it has nothing to say. Returns 0 or -ENOMEM. */
static int build_response(struct ads_client *c, size_t idx, struct ads_response **out)
{
    struct ads_server *s = c->srv;
    struct ads_table *t = &s->types[idx];
    struct ads_watch *w = &c->w[idx];
    struct build b = {.rvs = VEC(struct ads_rv *), .removed = VEC(char *)};
    *out = NULL;
    int rc = w->full ? build_full(t, w, &b) : build_incremental(t, w, &b);
    if (rc < 0) {
        build_free(&b);
        return rc;
    }
    bool must = w->must_respond;
    w->last_visited = b.visited;
    if (!b.rvs.n && !b.removed.n && !must) {
        /* Changes to names this client does not watch: nothing to send, but they are behind it now. */
        w->cursor = t->seq;
        build_free(&b);
        return 0;
    }
    struct ads_response *r = response_make(s, t, &b);
    build_free(&b);
    if (!r) return -ENOMEM;
    /* Only now is the state committed: a failed build leaves the watch as it was. */
    w->cursor = t->seq;
    w->must_respond = false;
    if (w->full) {
        w->full = false;
        nameset_clear(&w->initial);
    }
    nameset_clear(&w->want);
    copy_trunc(w->nonce_sent, sizeof(w->nonce_sent), r->nonce);
    copy_trunc(w->version_sent, sizeof(w->version_sent), r->version_info);
    w->responses++;
    w->last_resources = r->n_rvs;
    w->last_removed = r->n_removed;
    w->last_bytes = r->size;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    w->last_sent_unix_ms = (int64_t)now.tv_sec * 1000 + now.tv_nsec / 1000000;
    w->resources_sent += r->n_rvs;
    w->removed_sent += r->n_removed;
    w->bytes_sent += r->size;
    LOGF(LOG_DEBUG, LOG_TARGET,
         "ADS:%s: PUSH for node:%s resources:%zu removed:%zu size:%zu nonce:%s version:%s", t->type_url,
         c->node_id, r->n_rvs, r->n_removed, r->size, r->nonce, r->version_info);
    *out = r;
    return 0;
}

int ads_client_next_response(struct ads_client *c, struct ads_response **out)
{
    *out = NULL;
    if (c->state == ADS_CLIENT_FAILED) return c->err_rc;
    if (c->state != ADS_CLIENT_ACTIVE) {
        c->signalled = false;
        return 0;
    }
    size_t n = c->srv->n_types;
    for (size_t k = 0; k < n; k++) {
        size_t i = (c->rr + k) % n;
        struct ads_watch *w = &c->w[i];
        const struct ads_table *t = &c->srv->types[i];
        if (!watch_pending(w, t)) continue;
        if (!w->full && w->cursor < t->horizon)
            return client_fail(
                c, -ESTALE, ADS_GRPC_UNAVAILABLE,
                "%s: the client fell so far behind that removals it was not sent were forgotten; "
                "reconnect to resynchronise",
                t->type_url);
        int rc = build_response(c, i, out);
        if (rc < 0) return nomem(c);
        if (*out) {
            c->rr = (i + 1) % n;
            /* Re-arm the wake-up as soon as nothing is left, so the transport need not ask once more. */
            if (!ads_client_pending(c)) c->signalled = false;
            return 0;
        }
    }
    c->signalled = false;
    return 0;
}

const Envoy__Service__Discovery__V3__DeltaDiscoveryResponse *ads_response_msg(const struct ads_response *r)
{
    return &r->msg;
}

size_t ads_response_size(const struct ads_response *r)
{
    return r->size;
}

void ads_response_pack(const struct ads_response *r, uint8_t *out)
{
    protobuf_c_message_pack(&r->msg.base, out);
}

void ads_response_free(struct ads_response *r)
{
    if (!r) return;
    for (size_t i = 0; i < r->n_rvs; i++)
        rv_unref(r->rvs[i]);
    for (size_t i = 0; i < r->n_removed; i++)
        free(r->removed[i]);
    free(r->rvs);
    free(r->removed);
    free(r->res);
    free(r->resp);
    free(r->any);
    free(r->type_url);
    free(r);
}

/* ---- introspection ---- */

enum ads_client_state ads_client_state(const struct ads_client *c)
{
    return c->state;
}

const char *ads_client_error(const struct ads_client *c)
{
    return c->state == ADS_CLIENT_FAILED ? c->error : "";
}

int ads_client_grpc_status(const struct ads_client *c)
{
    return c->state == ADS_CLIENT_FAILED ? c->grpc_status : 0;
}

const char *ads_client_node_id(const struct ads_client *c)
{
    return c->node_id ? c->node_id : "";
}

struct ads_client *ads_server_first_client(const struct ads_server *s)
{
    return s->clients;
}

struct ads_client *ads_client_next(const struct ads_client *c)
{
    return c->next;
}

const char *ads_sync_to_str(enum ads_sync st)
{
    switch (st) {
    case ADS_SYNC_NOT_SENT:
        return "NOT_SENT";
    case ADS_SYNC_SYNCED:
        return "SYNCED";
    case ADS_SYNC_STALE:
        return "STALE";
    case ADS_SYNC_ERROR:
        return "ERROR";
    }
    return "?";
}

int ads_client_watch_info(const struct ads_client *c, size_t i, struct ads_watch_info *out)
{
    if (i >= c->srv->n_types) return -ENOENT;
    const struct ads_watch *w = &c->w[i];
    enum ads_sync sync = w->nack_message                              ? ADS_SYNC_ERROR
                         : !w->nonce_sent[0]                          ? ADS_SYNC_NOT_SENT
                         : strcmp(w->nonce_acked, w->nonce_sent) == 0 ? ADS_SYNC_SYNCED
                                                                      : ADS_SYNC_STALE;
    *out = (struct ads_watch_info){
        .type_url = c->srv->types[i].type_url,
        .subscribed = w->active,
        .wildcard = w->active && w->wildcard,
        .names = w->names.n,
        .pending = c->state == ADS_CLIENT_ACTIVE && watch_pending(w, &c->srv->types[i]),
        .nonce_sent = w->nonce_sent,
        .version_sent = w->version_sent,
        .nonce_acked = w->nonce_acked,
        .version_acked = w->version_acked,
        .nack_message = w->nack_message ? w->nack_message : "",
        .nack_nonce = w->nack_nonce,
        .nack_code = w->nack_code,
        .sync = sync,
        .last_sent_unix_ms = w->last_sent_unix_ms,
        .responses = w->responses,
        .acks = w->acks,
        .nacks = w->nacks,
        .stale = w->stale,
        .resources_sent = w->resources_sent,
        .removed_sent = w->removed_sent,
        .bytes_sent = w->bytes_sent,
        .last_resources = w->last_resources,
        .last_removed = w->last_removed,
        .last_bytes = w->last_bytes,
        .last_visited = w->last_visited,
    };
    return 0;
}

/* json_pack with "s" fails on non-UTF-8; every string here was checked or is ours. */
json_t *ads_client_status_json(const struct ads_client *c)
{
    json_t *types = json_array();
    if (!types) return NULL;
    for (size_t i = 0; i < c->srv->n_types; i++) {
        struct ads_watch_info wi;
        ads_client_watch_info(c, i, &wi);
        json_t *nack = wi.nack_message[0] || wi.nack_nonce[0]
                           ? json_pack("{s:s, s:s, s:i}", "message", wi.nack_message, "nonce", wi.nack_nonce,
                                       "code", wi.nack_code)
                           : json_null();
        json_t *o = json_pack(
            "{s:s, s:s, s:b, s:s, s:I, s:b, s:s, s:s, s:s, s:s, s:o*, s:I, s:I, s:I, s:I, s:I, "
            "s:I, s:I, s:{s:I, s:I, s:I, s:I, s:I}}",
            "type_url", wi.type_url, "sync_status", ads_sync_to_str(wi.sync), "subscribed", wi.subscribed,
            "subscription",
            !wi.subscribed ? "none"
            : wi.wildcard  ? "wildcard"
                           : "explicit",
            "names", (json_int_t)wi.names, "pending", wi.pending, "nonce_sent", wi.nonce_sent, "version_sent",
            wi.version_sent, "nonce_acked", wi.nonce_acked, "version_acked", wi.version_acked, "last_nack",
            nack, "responses", (json_int_t)wi.responses, "acks", (json_int_t)wi.acks, "nacks",
            (json_int_t)wi.nacks, "stale_nonces", (json_int_t)wi.stale, "resources_sent",
            (json_int_t)wi.resources_sent, "removed_sent", (json_int_t)wi.removed_sent, "bytes_sent",
            (json_int_t)wi.bytes_sent, "last_push", "resources", (json_int_t)wi.last_resources, "removed",
            (json_int_t)wi.last_removed, "bytes", (json_int_t)wi.last_bytes, "visited",
            (json_int_t)wi.last_visited, "unix_ms", (json_int_t)wi.last_sent_unix_ms);
        if (!o || json_array_append_new(types, o) < 0) {
            json_decref(types);
            return NULL;
        }
    }
    json_t *md = c->metadata ? json_incref(c->metadata) : json_object();
    return json_pack("{s:s, s:s, s:s, s:s, s:o, s:s, s:I, s:o}", "peer", c->peer, "node_id",
                     ads_client_node_id(c), "cluster", c->cluster ? c->cluster : "", "state",
                     ads_client_state_to_str(c->state), "metadata", md, "error", ads_client_error(c),
                     "unknown_type_requests", (json_int_t)c->unknown_type_requests, "types", types);
}

json_t *ads_server_status_json(const struct ads_server *s)
{
    json_t *types = json_array(), *clients = json_array();
    if (!types || !clients) goto fail;
    for (size_t i = 0; i < s->n_types; i++) {
        const struct ads_table *t = &s->types[i];
        json_t *o = json_pack("{s:s, s:I, s:I, s:I}", "type_url", t->type_url, "generation",
                              (json_int_t)t->generation, "resources", (json_int_t)t->n_live, "tombstones",
                              (json_int_t)t->n_tomb);
        if (!o || json_array_append_new(types, o) < 0) goto fail;
    }
    for (const struct ads_client *c = s->clients; c; c = c->next) {
        json_t *o = ads_client_status_json(c);
        if (!o || json_array_append_new(clients, o) < 0) goto fail;
    }
    return json_pack("{s:o, s:o}", "types", types, "clients", clients);
fail:
    json_decref(types);
    json_decref(clients);
    return NULL;
}
