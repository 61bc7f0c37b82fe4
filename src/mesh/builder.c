/* The snapshot builder (builder.h): per-resource validation, ztunnel's defaults, copies into the snapshot
 * arena, the primary indexes and the collision checks. The derived indexes (policy groups, load-balancing
 * pools, SPIFFE ids) are built once by snapshot_finalize() from builder_finish().
 *
 * Each add runs in three phases so that a rejected resource leaves no trace: validate the input alone,
 * look for collisions with what is already indexed, then copy and index (which can only fail with ENOMEM). */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "mesh/builder.h"
#include "mesh/snapshot_impl.h"

/* Initial capacity of the resource arrays; they double from there. */
#define BUILDER_INITIAL_CAP 16
/* Room for a defaulted uid: "<cluster>//v1/Pod/<ns>/<name>" with each part at most BUILDER_MAX_STR. */
#define BUILDER_UID_MAX (3 * BUILDER_MAX_STR + 16)
/* Room for "ns/host" and "ns/name" keys. */
#define BUILDER_KEY_MAX (2 * BUILDER_MAX_STR + 2)

/* Reusable sort buffers, so that checking a resource allocates nothing in the steady state. */
enum { TMP_SVCS, TMP_PORTS, TMP_COUNT };

struct snapshot_builder {
    struct builder_opts opts;
    struct snapshot *s;
    size_t cap[3]; /* allocated entries of workloads[], services[], policies[] */
    int fatal;     /* first error that ends the build, or 0 */
    uint32_t *tmp[TMP_COUNT];
    size_t tmp_cap[TMP_COUNT];
};

/* State of one add: where findings go and which resource they name. */
struct addctx {
    struct snapshot_builder *b;
    struct builder_err *e;
    enum builder_kind kind;
    const char *key;
};

static const char *const kind_names[] = {"workload", "service", "policy"};

const char *builder_kind_name(enum builder_kind kind)
{
    return (unsigned)kind < 3 ? kind_names[kind] : "?";
}

const char *mesh_printable(const char *s, char out[MESH_PRINTABLE_MAX])
{
    size_t i = 0;
    for (; s[i] && i < 64; i++)
        out[i] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
    if (s[i]) {
        memcpy(out + i, "...", 3);
        i += 3;
    }
    out[i] = '\0';
    return out;
}

static inline const char *S(const char *s)
{
    return s ? s : "";
}

/* ---- findings ---- */

/* Field names as in workload.proto and authorization.proto. */
static const char *const field_names[BF_FIELD_COUNT] = {
    [BF_WL_UID] = "uid",
    [BF_WL_NAME] = "name",
    [BF_WL_NAMESPACE] = "namespace",
    [BF_WL_HOSTNAME] = "hostname",
    [BF_WL_NETWORK] = "network",
    [BF_WL_TRUST_DOMAIN] = "trust_domain",
    [BF_WL_SERVICE_ACCOUNT] = "service_account",
    [BF_WL_NODE] = "node",
    [BF_WL_CLUSTER_ID] = "cluster_id",
    [BF_WL_CANONICAL_NAME] = "canonical_name",
    [BF_WL_CANONICAL_REVISION] = "canonical_revision",
    [BF_WL_WORKLOAD_TYPE] = "workload_type",
    [BF_WL_WORKLOAD_NAME] = "workload_name",
    [BF_WL_LOCALITY] = "locality",
    [BF_WL_ADDRESSES] = "addresses",
    [BF_WL_PROTOCOL] = "tunnel_protocol",
    [BF_WL_NETWORK_MODE] = "network_mode",
    [BF_WL_WAYPOINT] = "waypoint",
    [BF_WL_NETWORK_GATEWAY] = "network_gateway",
    [BF_WL_APP_TUNNEL] = "application_tunnel",
    [BF_WL_SERVICES] = "services",
    [BF_WL_SERVICE_PORTS] = "services",
    [BF_WL_AUTHZ] = "authorization_policies",
    [BF_SVC_NAME] = "name",
    [BF_SVC_NAMESPACE] = "namespace",
    [BF_SVC_HOSTNAME] = "hostname",
    [BF_SVC_VIPS] = "addresses",
    [BF_SVC_PORTS] = "ports",
    [BF_SVC_SANS] = "subject_alt_names",
    [BF_SVC_WAYPOINT] = "waypoint",
    [BF_SVC_ROUTING_PREFS] = "load_balancing.routing_preference",
    [BF_SVC_LB_MODE] = "load_balancing.mode",
    [BF_SVC_HEALTH_POLICY] = "load_balancing.health_policy",
    [BF_SVC_IP_FAMILIES] = "ip_families",
    [BF_POL_NAME] = "name",
    [BF_POL_NAMESPACE] = "namespace",
    [BF_POL_SCOPE] = "scope",
    [BF_POL_ACTION] = "action",
    [BF_POL_RULES] = "rules",
    [BF_POL_NAMESPACES] = "namespaces",
    [BF_POL_NOT_NAMESPACES] = "not_namespaces",
    [BF_POL_PRINCIPALS] = "principals",
    [BF_POL_NOT_PRINCIPALS] = "not_principals",
    [BF_POL_SERVICE_ACCOUNTS] = "service_accounts",
    [BF_POL_NOT_SERVICE_ACCOUNTS] = "not_service_accounts",
    [BF_POL_SOURCE_IPS] = "source_ips",
    [BF_POL_NOT_SOURCE_IPS] = "not_source_ips",
    [BF_POL_DESTINATION_IPS] = "destination_ips",
    [BF_POL_NOT_DESTINATION_IPS] = "not_destination_ips",
    [BF_POL_DESTINATION_PORTS] = "destination_ports",
    [BF_POL_NOT_DESTINATION_PORTS] = "not_destination_ports",
};

static void format_path(struct builder_err *e)
{
    size_t n = sizeof(e->path), off = 0;
    e->path[0] = '\0';
    if (e->field == BF_NONE || e->field >= BF_FIELD_COUNT) return;
#define PUT(...)                                                                                             \
    do {                                                                                                     \
        int r_ = snprintf(e->path + off, n - off, __VA_ARGS__);                                              \
        if (r_ > 0) off += (size_t)r_;                                                                       \
        if (off >= n) return;                                                                                \
    } while (0)
    if (e->field == BF_WL_SERVICE_PORTS) {
        PUT("services[%u]", e->idx[0]);
        if (e->n_idx > 1) PUT(".ports[%u]", e->idx[1]);
        return;
    }
    if (e->field >= BF_POL_RULES) {
        static const char *const lv[] = {"rules", "clauses", "matches"};
        for (unsigned i = 0; i < e->n_idx && i < 3; i++)
            PUT("%s%s[%u]", i ? "." : "", lv[i], e->idx[i]);
        if (e->field == BF_POL_RULES) return;
        PUT(".%s", field_names[e->field]);
        if (e->n_idx > 3) PUT("[%u]", e->idx[3]);
        return;
    }
    PUT("%s", field_names[e->field]);
    for (unsigned i = 0; i < e->n_idx; i++)
        PUT("[%u]", e->idx[i]);
#undef PUT
}

static void err_init(struct addctx *a, enum builder_field f, unsigned n_idx, const uint32_t *idx)
{
    struct builder_err *e = a->e;
    char p[MESH_PRINTABLE_MAX];
    memset(e, 0, sizeof(*e));
    e->kind = a->kind;
    e->field = f;
    e->other = UINT32_MAX;
    e->n_idx = n_idx > BUILDER_MAX_IDX ? BUILDER_MAX_IDX : n_idx;
    for (unsigned i = 0; i < e->n_idx; i++)
        e->idx[i] = idx[i];
    snprintf(e->resource, sizeof(e->resource), "%s", mesh_printable(S(a->key), p));
    format_path(e);
}

/* Rejects the resource being added. In strict mode the whole build fails with it. */
__attribute__((format(printf, 5, 6))) static int
reject(struct addctx *a, enum builder_field f, unsigned n_idx, const uint32_t *idx, const char *fmt, ...)
{
    err_init(a, f, n_idx, idx);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(a->e->reason, sizeof(a->e->reason), fmt, ap);
    va_end(ap);
    if (a->b->opts.strict) a->b->fatal = -EINVAL;
    return -EINVAL;
}

static int fatal(struct snapshot_builder *b, int rc)
{
    if (!b->fatal) b->fatal = rc;
    return rc;
}

const char *builder_err_format(const struct builder_err *e, char *buf, size_t n)
{
    if (e->path[0])
        snprintf(buf, n, "%s %s: %s: %s", builder_kind_name(e->kind), e->resource, e->path, e->reason);
    else
        snprintf(buf, n, "%s %s: %s", builder_kind_name(e->kind), e->resource, e->reason);
    return buf;
}

/* ---- lifetime ---- */

int snapshot_builder_new(struct snapshot_builder **out, const struct builder_opts *opts)
{
    struct snapshot_builder *b = calloc(1, sizeof(*b));
    if (!b) return -ENOMEM;
    b->s = snapshot_new();
    if (!b->s) {
        free(b);
        return -ENOMEM;
    }
    if (opts) b->opts = *opts;
    *out = b;
    return 0;
}

void builder_free(struct snapshot_builder *b)
{
    if (!b) return;
    snapshot_unref(b->s);
    for (int i = 0; i < TMP_COUNT; i++)
        free(b->tmp[i]);
    free(b);
}

/* Sort buffer `which` with room for n indexes, filled with 0..n-1; NULL on ENOMEM (then fatal). */
static uint32_t *tmp_order(struct snapshot_builder *b, int which, size_t n)
{
    if (n > b->tmp_cap[which]) {
        size_t ncap = n < BUILDER_INITIAL_CAP ? BUILDER_INITIAL_CAP : n;
        uint32_t *p = realloc(b->tmp[which], ncap * sizeof(*p));
        if (!p) {
            fatal(b, -ENOMEM);
            return NULL;
        }
        b->tmp[which] = p;
        b->tmp_cap[which] = ncap;
    }
    for (size_t i = 0; i < n; i++)
        b->tmp[which][i] = (uint32_t)i;
    return b->tmp[which];
}

int builder_finish(struct snapshot_builder *b, struct snapshot **out)
{
    int rc = b->fatal;
    if (!rc) rc = snapshot_finalize(b->s);
    if (!rc) {
        *out = b->s;
        b->s = NULL;
    }
    builder_free(b);
    return rc;
}

size_t builder_count(const struct snapshot_builder *b, enum builder_kind kind)
{
    switch (kind) {
    case BUILDER_WORKLOAD:
        return b->s->n_workloads;
    case BUILDER_SERVICE:
        return b->s->n_services;
    default:
        return b->s->n_policies;
    }
}

/* ---- shared checks and copies ---- */

static char *dup_str(struct snapshot_builder *b, const char *s)
{
    s = S(s);
    if (!*s) return (char *)"";
    char *d = arena_strndup(&b->s->arena, s, strlen(s));
    if (!d) fatal(b, -ENOMEM);
    return d;
}

/* Copies an array of n elements of size esz into the arena (NULL when n == 0). */
static void *dup_arr(struct snapshot_builder *b, const void *p, size_t n, size_t esz)
{
    if (!n) return NULL;
    void *d = arena_memdup(&b->s->arena, p, n * esz);
    if (!d) fatal(b, -ENOMEM);
    return d;
}

static int check_str(struct addctx *a, const char *s, enum builder_field f, unsigned n_idx,
                     const uint32_t *idx)
{
    size_t n = s ? strnlen(s, BUILDER_MAX_STR + 1) : 0;
    if (n > BUILDER_MAX_STR)
        return reject(a, f, n_idx, idx, "value too long (limit %d bytes)", BUILDER_MAX_STR);
    return 0;
}

static bool ip_valid(const struct ip_addr *ip)
{
    return ip->family == AF_INET || ip->family == AF_INET6;
}

/* False for addresses no connection can be made to: unspecified, multicast, IPv4 broadcast. */
static bool ip_usable(const struct ip_addr *ip)
{
    static const uint8_t zero[16];
    if (ip->family == AF_INET)
        return memcmp(ip->a, zero, 4) && ip->a[0] < 224 && memcmp(ip->a, "\xff\xff\xff\xff", 4);
    return memcmp(ip->a, zero, 16) && ip->a[0] != 0xff;
}

/* A "namespace/hostname" (or "namespace/name") pair: one '/', both sides non-empty. */
static bool ns_key_valid(const char *k)
{
    const char *slash = strchr(k, '/');
    return slash && slash != k && slash[1] && !strchr(slash + 1, '/');
}

static int check_gateway(struct addctx *a, const struct gateway_addr *g, enum builder_field f)
{
    if (!g->set) {
        /* A port without a destination is a half-written gateway, not "no gateway". */
        if (g->hbone_port) return reject(a, f, 0, NULL, "destination is required");
        return 0;
    }
    if (g->is_host) {
        if (!*S(g->ns) || !*S(g->host) || strchr(S(g->host), '/'))
            return reject(a, f, 0, NULL, "invalid destination (expected a namespace and a hostname)");
        if (check_str(a, g->ns, f, 0, NULL) || check_str(a, g->host, f, 0, NULL)) return -EINVAL;
        return 0;
    }
    if (!ip_valid(&g->ip)) return reject(a, f, 0, NULL, "invalid destination address (not IPv4 or IPv6)");
    return check_str(a, g->network, f, 0, NULL);
}

/* Copies a gateway, applying the default HBONE port; unset gateways become all "". */
static void copy_gateway(struct snapshot_builder *b, struct gateway_addr *dst, const struct gateway_addr *src)
{
    *dst = (struct gateway_addr){.network = "", .ns = "", .host = ""};
    if (!src->set) return;
    dst->set = true;
    dst->is_host = src->is_host;
    dst->hbone_port = src->hbone_port ? src->hbone_port : BUILDER_DEFAULT_HBONE_PORT;
    if (src->is_host) {
        dst->ns = dup_str(b, src->ns);
        dst->host = dup_str(b, src->host);
    } else {
        dst->network = dup_str(b, src->network);
        dst->ip = src->ip;
    }
}

/* Sort orders keep the input index as a tie-break, so a duplicate reported is the later of two equal
 * entries. */
static int cmp_port_idx(const void *x, const void *y, void *arg)
{
    const struct port_map *pm = arg;
    uint32_t i = *(const uint32_t *)x, j = *(const uint32_t *)y;
    if (pm[i].port != pm[j].port) return pm[i].port < pm[j].port ? -1 : 1;
    return i < j ? -1 : i > j;
}

/* Validates a port map: ports 1..65535, each once. field/n_idx/idx name the map; the port index is
 * appended. */
static int check_ports(struct addctx *a, const struct port_map *pm, size_t n, enum builder_field f,
                       unsigned n_idx, const uint32_t *idx)
{
    uint32_t at[BUILDER_MAX_IDX] = {0};
    if (!n) return 0;
    if (n > UINT32_MAX) return reject(a, f, n_idx, idx, "too many ports");
    for (unsigned k = 0; k < n_idx; k++)
        at[k] = idx[k];
    for (size_t i = 0; i < n; i++) {
        at[n_idx] = (uint32_t)i;
        if (!pm[i].port) return reject(a, f, n_idx + 1, at, "invalid port 0 (expected 1-65535)");
    }
    if (n == 1) return 0;
    uint32_t *o = tmp_order(a->b, TMP_PORTS, n);
    if (!o) return -ENOMEM;
    qsort_r(o, n, sizeof(*o), cmp_port_idx, (void *)pm);
    for (size_t i = 1; i < n; i++) {
        if (pm[o[i]].port == pm[o[i - 1]].port) {
            at[n_idx] = o[i];
            return reject(a, f, n_idx + 1, at, "duplicate port %u", pm[o[i]].port);
        }
    }
    return 0;
}

static int cmp_port(const void *x, const void *y)
{
    const struct port_map *p = x, *q = y;
    return p->port < q->port ? -1 : p->port > q->port;
}

/* Copies a checked port map into the arena, sorted by port (ports are unique, so the order is total). */
static struct port_map *copy_ports(struct snapshot_builder *b, const struct port_map *pm, size_t n)
{
    struct port_map *d = dup_arr(b, pm, n, sizeof(*pm));
    if (d && n > 1) qsort(d, n, sizeof(*d), cmp_port);
    return d;
}

static int grow(struct snapshot_builder *b, void **arr, size_t n, enum builder_kind kind, size_t esz)
{
    if (n < b->cap[kind]) return 0;
    size_t ncap = b->cap[kind] ? b->cap[kind] * 2 : BUILDER_INITIAL_CAP;
    void *p = realloc(*arr, ncap * esz);
    if (!p) return fatal(b, -ENOMEM);
    *arr = p;
    b->cap[kind] = ncap;
    return 0;
}

/* Builds "a/b" (sep '/') or "a\0b" (sep '\0') in the arena; *len gets the key length. */
static char *make_key(struct snapshot_builder *b, const char *x, char sep, const char *y, size_t *len)
{
    size_t xl = strlen(x), yl = strlen(y);
    char *k = arena_alloc(&b->s->arena, xl + yl + 2);
    if (!k) {
        fatal(b, -ENOMEM);
        return NULL;
    }
    memcpy(k, x, xl);
    k[xl] = sep;
    memcpy(k + xl + 1, y, yl);
    *len = xl + 1 + yl;
    return k;
}

/* ---- workloads ---- */

static int cmp_svc_idx(const void *x, const void *y, void *arg)
{
    const struct wl_service_ports *sp = arg;
    uint32_t i = *(const uint32_t *)x, j = *(const uint32_t *)y;
    int c = strcmp(sp[i].key, sp[j].key);
    if (c) return c;
    return i < j ? -1 : i > j;
}

/* ztunnel's preference among workloads sharing an address (WorkloadByAddr::get): pods are not easily
 * spoofed, and an HBONE workload carries more context than a TCP one. */
static int addr_rank(const struct workload *w)
{
    return (strstr(w->uid, "//Pod/") ? 2 : 0) + (w->protocol == WL_PROTO_HBONE ? 1 : 0);
}

static void warn_default(void *ud, const struct builder_err *w)
{
    log_kv(LOG_WARN, "config", w->reason, builder_kind_name(w->kind), w->resource, "addresses", w->detail,
           NULL);
}

/* Validates a workload alone: everything that needs no other resource. */
/* On success *svc_ord is the order of w->services sorted by key (borrowed from the builder; NULL when there
 * are fewer than two entries). */
static int check_workload(struct addctx *a, const struct workload *w, const uint32_t **svc_ord)
{
    const struct {
        const char *s;
        enum builder_field f;
    } strs[] = {
        {w->uid, BF_WL_UID},
        {w->name, BF_WL_NAME},
        {w->namespace_, BF_WL_NAMESPACE},
        {w->hostname, BF_WL_HOSTNAME},
        {w->network, BF_WL_NETWORK},
        {w->trust_domain, BF_WL_TRUST_DOMAIN},
        {w->service_account, BF_WL_SERVICE_ACCOUNT},
        {w->node, BF_WL_NODE},
        {w->cluster_id, BF_WL_CLUSTER_ID},
        {w->canonical_name, BF_WL_CANONICAL_NAME},
        {w->canonical_revision, BF_WL_CANONICAL_REVISION},
        {w->workload_type, BF_WL_WORKLOAD_TYPE},
        {w->workload_name, BF_WL_WORKLOAD_NAME},
        {w->locality.region, BF_WL_LOCALITY},
        {w->locality.zone, BF_WL_LOCALITY},
        {w->locality.subzone, BF_WL_LOCALITY},
    };
    for (size_t i = 0; i < sizeof(strs) / sizeof(strs[0]); i++)
        if (check_str(a, strs[i].s, strs[i].f, 0, NULL)) return -EINVAL;
    for (size_t i = 0; i < w->n_ips; i++)
        if (!ip_valid(&w->ips[i]))
            return reject(a, BF_WL_ADDRESSES, 1, (uint32_t[]){(uint32_t)i},
                          "invalid address (not IPv4 or IPv6)");
    if (w->protocol != WL_PROTO_TCP && w->protocol != WL_PROTO_HBONE)
        return reject(a, BF_WL_PROTOCOL, 0, NULL, "unsupported tunnel protocol %d", (int)w->protocol);
    if (w->network_mode > WL_NET_HOST)
        return reject(a, BF_WL_NETWORK_MODE, 0, NULL, "unknown network mode %u", w->network_mode);
    if (w->app_tunnel_protocol > WL_APP_TUNNEL_PROXY)
        return reject(a, BF_WL_APP_TUNNEL, 0, NULL, "unknown application tunnel protocol %u",
                      w->app_tunnel_protocol);
    if (check_gateway(a, &w->waypoint, BF_WL_WAYPOINT) ||
        check_gateway(a, &w->network_gateway, BF_WL_NETWORK_GATEWAY))
        return -EINVAL;
    for (size_t i = 0; i < w->n_authorization_policies; i++)
        if (check_str(a, w->authorization_policies[i], BF_WL_AUTHZ, 1, (uint32_t[]){(uint32_t)i}))
            return -EINVAL;
    if (w->n_services > UINT32_MAX) return reject(a, BF_WL_SERVICES, 0, NULL, "too many services");
    char p[MESH_PRINTABLE_MAX];
    for (size_t i = 0; i < w->n_services; i++) {
        const char *k = S(w->services[i].key);
        uint32_t at[1] = {(uint32_t)i};
        if (check_str(a, k, BF_WL_SERVICES, 1, at)) return -EINVAL;
        /* ztunnel rejects a workload whose services key is not "namespace/hostname". */
        if (!ns_key_valid(k))
            return reject(a, BF_WL_SERVICES, 1, at,
                          "invalid service key \"%s\" (expected \"namespace/hostname\")",
                          mesh_printable(k, p));
    }
    *svc_ord = NULL;
    for (size_t i = 0; i < w->n_services; i++)
        if (check_ports(a, w->services[i].ports, w->services[i].n_ports, BF_WL_SERVICE_PORTS, 1,
                        (uint32_t[]){(uint32_t)i}))
            return -EINVAL;
    if (w->n_services < 2) return 0;
    uint32_t *o = tmp_order(a->b, TMP_SVCS, w->n_services);
    if (!o) return -ENOMEM;
    qsort_r(o, w->n_services, sizeof(*o), cmp_svc_idx, (void *)w->services);
    for (size_t i = 1; i < w->n_services; i++)
        if (!strcmp(w->services[o[i]].key, w->services[o[i - 1]].key))
            return reject(a, BF_WL_SERVICES, 1, (uint32_t[]){o[i]}, "duplicate service key \"%s\"",
                          mesh_printable(w->services[o[i]].key, p));
    *svc_ord = o;
    return 0;
}

/* Indexes workload idx's addresses. Strict: a shared (network, IP) rejects it (the build fails anyway, so
 * the keys already inserted need no undo). Otherwise the index keeps ztunnel's preferred workload. */
static int index_ips(struct addctx *a, uint32_t idx)
{
    struct snapshot *s = a->b->s;
    const struct workload *w = &s->workloads[idx];
    char p[MESH_PRINTABLE_MAX], p2[MESH_PRINTABLE_MAX], ipb[IP_STRLEN];
    /* Host-network workloads share the node's IP with each other, so they are not IP-indexed. */
    if (w->network_mode == WL_NET_HOST) return 0;
    for (size_t i = 0; i < w->n_ips; i++) {
        char key[SNAP_KEY_MAX];
        size_t kl = snap_ip_key(key, w->network, &w->ips[i]);
        char *k = arena_memdup(&s->arena, key, kl);
        if (!k) return fatal(a->b, -ENOMEM);
        uint32_t old;
        int rc = htab_insert(&s->wl_by_ip, k, kl, idx, &old);
        if (rc == -EEXIST && old != idx) {
            if (a->b->opts.strict)
                return reject(a, BF_WL_ADDRESSES, 1, (uint32_t[]){(uint32_t)i},
                              "duplicate address \"%s/%s\" in network (already used by %s)",
                              mesh_printable(w->network, p), ip_format(&w->ips[i], ipb, sizeof(ipb)),
                              mesh_printable(s->workloads[old].uid, p2));
            /* Rust's max_by_key keeps the last of equals, so a later workload of the same rank wins. */
            if (addr_rank(w) >= addr_rank(&s->workloads[old])) htab_set(&s->wl_by_ip, k, kl, idx);
            continue;
        }
        if (rc == -EEXIST) {
            /* The same address twice in one workload. */
            if (a->b->opts.strict)
                return reject(a, BF_WL_ADDRESSES, 1, (uint32_t[]){(uint32_t)i},
                              "duplicate address \"%s/%s\" in network (already used by this workload)",
                              mesh_printable(w->network, p), ip_format(&w->ips[i], ipb, sizeof(ipb)));
            continue;
        }
        if (rc) return fatal(a->b, rc);
    }
    return 0;
}

int builder_add_workload(struct snapshot_builder *b, const struct workload *in, struct builder_err *err)
{
    struct builder_err scratch;
    struct addctx a = {.b = b, .e = err ? err : &scratch, .kind = BUILDER_WORKLOAD};
    struct snapshot *s = b->s;
    const uint32_t *svc_ord = NULL;
    char uidbuf[BUILDER_UID_MAX], p[MESH_PRINTABLE_MAX];
    int rc = b->fatal;
    if (rc) goto out;
    if (s->n_workloads >= UINT32_MAX) {
        rc = fatal(b, -E2BIG);
        goto out;
    }
    /* ztunnel's defaults (istio/ztunnel src/state/workload.rs, TryFrom<XdsWorkload>), applied before anything
     * is keyed. */
    const char *cluster = *S(in->cluster_id) ? in->cluster_id : BUILDER_DEFAULT_CLUSTER_ID;
    const char *uid = S(in->uid);
    if (!*uid) {
        /* istiod's uid format for pods, so a config without uids still gets unique keys. */
        snprintf(uidbuf, sizeof(uidbuf), "%.*s//v1/Pod/%.*s/%.*s", BUILDER_MAX_STR, cluster, BUILDER_MAX_STR,
                 S(in->namespace_), BUILDER_MAX_STR, S(in->name));
        uid = uidbuf;
    }
    a.key = uid;
    rc = check_workload(&a, in, &svc_ord);
    if (rc) goto out;
    uint32_t old;
    if (htab_find(&s->wl_by_uid, uid, strlen(uid), &old)) {
        rc = reject(&a, BF_WL_UID, 0, NULL, "duplicate workload uid \"%s\"", mesh_printable(uid, p));
        a.e->other = old;
        goto out;
    }

    rc = grow(b, (void **)&s->workloads, s->n_workloads, BUILDER_WORKLOAD, sizeof(struct workload));
    if (rc) goto out;
    uint32_t idx = (uint32_t)s->n_workloads;
    struct workload *w = &s->workloads[idx];
    *w = *in;
    w->uid = dup_str(b, uid);
    w->name = dup_str(b, in->name);
    w->namespace_ = dup_str(b, in->namespace_);
    w->hostname = dup_str(b, in->hostname);
    w->network = dup_str(b, in->network);
    w->trust_domain = dup_str(b, *S(in->trust_domain) ? in->trust_domain : BUILDER_DEFAULT_TRUST_DOMAIN);
    w->service_account =
        dup_str(b, *S(in->service_account) ? in->service_account : BUILDER_DEFAULT_SERVICE_ACCOUNT);
    w->node = dup_str(b, in->node);
    w->cluster_id = dup_str(b, cluster);
    w->canonical_name = dup_str(b, in->canonical_name);
    w->canonical_revision = dup_str(b, in->canonical_revision);
    w->workload_type = dup_str(b, in->workload_type);
    w->workload_name = dup_str(b, in->workload_name);
    w->locality.region = dup_str(b, in->locality.region);
    w->locality.zone = dup_str(b, in->locality.zone);
    w->locality.subzone = dup_str(b, in->locality.subzone);
    w->ips = dup_arr(b, in->ips, in->n_ips, sizeof(*in->ips));
    copy_gateway(b, &w->waypoint, &in->waypoint);
    copy_gateway(b, &w->network_gateway, &in->network_gateway);
    w->spiffe_id = ""; /* built by snapshot_finalize() */
    w->services = NULL;
    if (in->n_services) {
        struct wl_service_ports *sp = arena_alloc(&s->arena, in->n_services * sizeof(*sp));
        if (!sp) {
            rc = fatal(b, -ENOMEM);
            goto out;
        }
        for (size_t i = 0; i < in->n_services; i++) {
            const struct wl_service_ports *src = &in->services[svc_ord ? svc_ord[i] : i];
            sp[i].key = dup_str(b, src->key);
            sp[i].n_ports = src->n_ports;
            sp[i].ports = copy_ports(b, src->ports, src->n_ports);
        }
        w->services = sp;
    }
    w->authorization_policies = NULL;
    if (in->n_authorization_policies) {
        const char **pl = arena_alloc(&s->arena, in->n_authorization_policies * sizeof(*pl));
        if (!pl) {
            rc = fatal(b, -ENOMEM);
            goto out;
        }
        for (size_t i = 0; i < in->n_authorization_policies; i++)
            pl[i] = dup_str(b, in->authorization_policies[i]);
        w->authorization_policies = pl;
    }
    rc = b->fatal;
    if (rc) goto out;

    rc = index_ips(&a, idx);
    if (rc) goto out;
    rc = htab_insert(&s->wl_by_uid, w->uid, strlen(w->uid), idx, NULL);
    if (rc) {
        rc = fatal(b, rc);
        goto out;
    }
    size_t kl;
    char *nk = make_key(b, w->namespace_, '\0', w->name, &kl);
    if (!nk) {
        rc = -ENOMEM;
        goto out;
    }
    /* Several workloads may share (namespace, name); the first one is indexed. */
    rc = htab_insert(&s->wl_by_name, nk, kl, idx, NULL);
    if (rc && rc != -EEXIST) {
        rc = fatal(b, rc);
        goto out;
    }
    rc = 0;
    s->n_workloads++;

    /* A workload nothing can reach by IP is likely a mistake; it still loads (ztunnel would resolve its
     * hostname or use its network gateway, which zmesh does not do yet). */
    size_t usable = 0;
    for (size_t i = 0; i < w->n_ips; i++)
        usable += ip_usable(&w->ips[i]);
    if (!usable && !w->network_gateway.set) {
        struct builder_err wn;
        struct addctx wa = {.b = b, .e = &wn, .kind = BUILDER_WORKLOAD, .key = w->uid};
        err_init(&wa, BF_NONE, 0, NULL);
        snprintf(wn.reason, sizeof(wn.reason), "%s",
                 "workload has no usable IP address: it cannot be reached and is never chosen as a service "
                 "endpoint");
        snprintf(wn.detail, sizeof(wn.detail), "%s",
                 w->n_ips ? "unspecified, multicast or broadcast only" : "none");
        if (b->opts.warn)
            b->opts.warn(b->opts.warn_ud, &wn);
        else
            warn_default(NULL, &wn);
    }
out:
    return rc;
}

/* ---- services ---- */

static int check_service(struct addctx *a, const struct service *v)
{
    const struct {
        const char *s;
        enum builder_field f;
    } strs[] = {{v->name, BF_SVC_NAME}, {v->namespace_, BF_SVC_NAMESPACE}, {v->hostname, BF_SVC_HOSTNAME}};
    for (size_t i = 0; i < sizeof(strs) / sizeof(strs[0]); i++)
        if (check_str(a, strs[i].s, strs[i].f, 0, NULL)) return -EINVAL;
    if (!*S(v->hostname)) return reject(a, BF_SVC_HOSTNAME, 0, NULL, "hostname is required");
    for (size_t i = 0; i < v->n_vips; i++) {
        uint32_t at[1] = {(uint32_t)i};
        if (!ip_valid(&v->vips[i].ip))
            return reject(a, BF_SVC_VIPS, 1, at, "invalid address (not IPv4 or IPv6)");
        if (check_str(a, v->vips[i].network, BF_SVC_VIPS, 1, at)) return -EINVAL;
    }
    for (size_t i = 0; i < v->n_sans; i++)
        if (check_str(a, v->subject_alt_names[i], BF_SVC_SANS, 1, (uint32_t[]){(uint32_t)i})) return -EINVAL;
    if (check_gateway(a, &v->waypoint, BF_SVC_WAYPOINT)) return -EINVAL;
    /* ztunnel refuses an unspecified or unknown routing scope (istio/ztunnel src/state/service.rs,
     * TryFrom<XdsScope>). */
    for (size_t i = 0; i < v->n_routing_prefs; i++)
        if (v->routing_prefs[i] < LB_SCOPE_REGION || v->routing_prefs[i] > LB_SCOPE_NETWORK)
            return reject(a, BF_SVC_ROUTING_PREFS, 1, (uint32_t[]){(uint32_t)i}, "invalid routing scope %u",
                          v->routing_prefs[i]);
    if (v->lb_mode > LB_MODE_PASSTHROUGH)
        return reject(a, BF_SVC_LB_MODE, 0, NULL, "unknown mode %u", v->lb_mode);
    if (v->health_policy > LB_HEALTH_ALLOW_ALL)
        return reject(a, BF_SVC_HEALTH_POLICY, 0, NULL, "unknown health policy %u", v->health_policy);
    if (v->ip_families > IP_FAMILIES_DUAL)
        return reject(a, BF_SVC_IP_FAMILIES, 0, NULL, "unknown ip families %u", v->ip_families);
    return check_ports(a, v->ports, v->n_ports, BF_SVC_PORTS, 0, NULL);
}

int builder_add_service(struct snapshot_builder *b, const struct service *in, struct builder_err *err)
{
    struct builder_err scratch;
    struct addctx a = {.b = b, .e = err ? err : &scratch, .kind = BUILDER_SERVICE};
    struct snapshot *s = b->s;
    char keybuf[BUILDER_KEY_MAX + 1], p[MESH_PRINTABLE_MAX];
    int rc = b->fatal;
    if (rc) goto out;
    if (s->n_services >= UINT32_MAX) {
        rc = fatal(b, -E2BIG);
        goto out;
    }
    snprintf(keybuf, sizeof(keybuf), "%.*s/%.*s", BUILDER_MAX_STR, S(in->namespace_), BUILDER_MAX_STR,
             S(in->hostname));
    a.key = keybuf;
    rc = check_service(&a, in);
    if (rc) goto out;
    uint32_t old;
    if (htab_find(&s->svc_by_host, keybuf, strlen(keybuf), &old)) {
        rc = reject(&a, BF_SVC_HOSTNAME, 0, NULL, "duplicate service \"%s\"", mesh_printable(keybuf, p));
        a.e->other = old;
        goto out;
    }

    rc = grow(b, (void **)&s->services, s->n_services, BUILDER_SERVICE, sizeof(struct service));
    if (rc) goto out;
    uint32_t idx = (uint32_t)s->n_services;
    struct service *v = &s->services[idx];
    *v = *in;
    v->name = dup_str(b, in->name);
    v->namespace_ = dup_str(b, in->namespace_);
    v->hostname = dup_str(b, in->hostname);
    v->vips = NULL;
    if (in->n_vips) {
        struct net_addr *va = arena_alloc(&s->arena, in->n_vips * sizeof(*va));
        if (!va) {
            rc = fatal(b, -ENOMEM);
            goto out;
        }
        for (size_t i = 0; i < in->n_vips; i++)
            va[i] = (struct net_addr){.network = dup_str(b, in->vips[i].network), .ip = in->vips[i].ip};
        v->vips = va;
    }
    v->ports = copy_ports(b, in->ports, in->n_ports);
    v->subject_alt_names = NULL;
    if (in->n_sans) {
        const char **sa = arena_alloc(&s->arena, in->n_sans * sizeof(*sa));
        if (!sa) {
            rc = fatal(b, -ENOMEM);
            goto out;
        }
        for (size_t i = 0; i < in->n_sans; i++)
            sa[i] = dup_str(b, in->subject_alt_names[i]);
        v->subject_alt_names = sa;
    }
    copy_gateway(b, &v->waypoint, &in->waypoint);
    v->routing_prefs = dup_arr(b, in->routing_prefs, in->n_routing_prefs, sizeof(*in->routing_prefs));
    rc = b->fatal;
    if (rc) goto out;

    size_t kl;
    char *key = make_key(b, v->namespace_, '/', v->hostname, &kl);
    if (!key) {
        rc = -ENOMEM;
        goto out;
    }
    rc = htab_insert(&s->svc_by_host, key, kl, idx, NULL);
    if (rc) {
        rc = fatal(b, rc);
        goto out;
    }
    for (size_t i = 0; i < v->n_vips; i++) {
        char kb[SNAP_KEY_MAX];
        size_t vl = snap_ip_key(kb, v->vips[i].network, &v->vips[i].ip);
        char *k = arena_memdup(&s->arena, kb, vl);
        if (!k) {
            rc = fatal(b, -ENOMEM);
            goto out;
        }
        /* Several services may share a VIP (ztunnel tie-breaks at lookup); the first one is indexed. */
        rc = htab_insert(&s->svc_by_vip, k, vl, idx, NULL);
        if (rc && rc != -EEXIST) {
            rc = fatal(b, rc);
            goto out;
        }
    }
    rc = 0;
    s->n_services++;
out:
    return rc;
}

/* ---- policies ---- */

/* The twelve lists of a Match, addressed uniformly (auth_match order = BF_POL_NAMESPACES + i). */
enum ml_type { ML_SM, ML_SA, ML_CIDR, ML_PORT };
struct match_list {
    const void **arr;
    size_t *n;
    enum ml_type type;
};

static void match_lists(struct auth_match *m, struct match_list out[12])
{
    const struct match_list l[12] = {
        {(const void **)&m->namespaces, &m->n_namespaces, ML_SM},
        {(const void **)&m->not_namespaces, &m->n_not_namespaces, ML_SM},
        {(const void **)&m->principals, &m->n_principals, ML_SM},
        {(const void **)&m->not_principals, &m->n_not_principals, ML_SM},
        {(const void **)&m->service_accounts, &m->n_service_accounts, ML_SA},
        {(const void **)&m->not_service_accounts, &m->n_not_service_accounts, ML_SA},
        {(const void **)&m->source_ips, &m->n_source_ips, ML_CIDR},
        {(const void **)&m->not_source_ips, &m->n_not_source_ips, ML_CIDR},
        {(const void **)&m->destination_ips, &m->n_destination_ips, ML_CIDR},
        {(const void **)&m->not_destination_ips, &m->n_not_destination_ips, ML_CIDR},
        {(const void **)&m->destination_ports, &m->n_destination_ports, ML_PORT},
        {(const void **)&m->not_destination_ports, &m->n_not_destination_ports, ML_PORT},
    };
    memcpy(out, l, sizeof(l));
}

static const size_t ml_esz[] = {sizeof(struct string_match), sizeof(struct sa_match), sizeof(struct cidr),
                                sizeof(uint16_t)};

static int check_item(struct addctx *a, enum ml_type t, const void *arr, size_t i, enum builder_field f,
                      const uint32_t at[4])
{
    switch (t) {
    case ML_SM: {
        const struct string_match *sm = (const struct string_match *)arr + i;
        if (sm->kind > SM_PRESENCE) return reject(a, f, 4, at, "unknown string match kind %u", sm->kind);
        return check_str(a, sm->value, f, 4, at);
    }
    case ML_SA: {
        const struct sa_match *sa = (const struct sa_match *)arr + i;
        return check_str(a, sa->namespace_, f, 4, at) || check_str(a, sa->service_account, f, 4, at) ? -EINVAL
                                                                                                     : 0;
    }
    case ML_CIDR: {
        const struct cidr *c = (const struct cidr *)arr + i;
        if (!ip_valid(&c->ip)) return reject(a, f, 4, at, "invalid address (not IPv4 or IPv6)");
        unsigned max = c->ip.family == AF_INET ? 32 : 128;
        if (c->len > max) return reject(a, f, 4, at, "invalid prefix length %u (expected 0-%u)", c->len, max);
        return 0;
    }
    default:
        if (!((const uint16_t *)arr)[i]) return reject(a, f, 4, at, "invalid port 0 (expected 1-65535)");
        return 0;
    }
}

static int check_policy(struct addctx *a, const struct policy *p)
{
    if (check_str(a, p->name, BF_POL_NAME, 0, NULL) || check_str(a, p->namespace_, BF_POL_NAMESPACE, 0, NULL))
        return -EINVAL;
    if (p->scope > POLICY_SCOPE_WORKLOAD_SELECTOR)
        return reject(a, BF_POL_SCOPE, 0, NULL, "unknown scope %u", p->scope);
    if (p->action > POLICY_DENY) return reject(a, BF_POL_ACTION, 0, NULL, "unknown action %u", p->action);
    for (size_t r = 0; r < p->n_rules; r++) {
        const struct auth_rule *ru = &p->rules[r];
        for (size_t c = 0; c < ru->n_clauses; c++) {
            const struct auth_clause *cl = &ru->clauses[c];
            for (size_t m = 0; m < cl->n_matches; m++) {
                struct match_list l[12];
                match_lists((struct auth_match *)&cl->matches[m], l);
                for (int k = 0; k < 12; k++)
                    for (size_t i = 0; i < *l[k].n; i++) {
                        uint32_t at[4] = {(uint32_t)r, (uint32_t)c, (uint32_t)m, (uint32_t)i};
                        if (check_item(a, l[k].type, *l[k].arr, i,
                                       (enum builder_field)(BF_POL_NAMESPACES + k), at))
                            return -EINVAL;
                    }
            }
        }
    }
    return 0;
}

/* Deep-copies one Match: the arrays, then the strings inside them. */
static void copy_match(struct snapshot_builder *b, struct auth_match *dst, const struct auth_match *src)
{
    struct match_list l[12];
    *dst = *src;
    match_lists(dst, l);
    for (int k = 0; k < 12; k++) {
        *l[k].arr = dup_arr(b, *l[k].arr, *l[k].n, ml_esz[l[k].type]);
        if (!*l[k].arr) continue;
        if (l[k].type == ML_SM) {
            struct string_match *sm = (struct string_match *)*l[k].arr;
            for (size_t i = 0; i < *l[k].n; i++)
                sm[i].value = dup_str(b, sm[i].value);
        } else if (l[k].type == ML_SA) {
            struct sa_match *sa = (struct sa_match *)*l[k].arr;
            for (size_t i = 0; i < *l[k].n; i++) {
                sa[i].namespace_ = dup_str(b, sa[i].namespace_);
                sa[i].service_account = dup_str(b, sa[i].service_account);
            }
        }
    }
}

static const struct auth_rule *copy_rules(struct snapshot_builder *b, const struct auth_rule *rules, size_t n)
{
    struct auth_rule *ru = dup_arr(b, rules, n, sizeof(*rules));
    if (!ru) return NULL;
    for (size_t r = 0; r < n; r++) {
        struct auth_clause *cl = dup_arr(b, ru[r].clauses, ru[r].n_clauses, sizeof(*cl));
        ru[r].clauses = cl;
        for (size_t c = 0; cl && c < ru[r].n_clauses; c++) {
            const struct auth_match *src = cl[c].matches;
            struct auth_match *m =
                cl[c].n_matches ? arena_alloc(&b->s->arena, cl[c].n_matches * sizeof(*m)) : NULL;
            if (cl[c].n_matches && !m) fatal(b, -ENOMEM);
            for (size_t i = 0; m && i < cl[c].n_matches; i++)
                copy_match(b, &m[i], &src[i]);
            cl[c].matches = m;
        }
    }
    return ru;
}

int builder_add_policy(struct snapshot_builder *b, const struct policy *in, struct builder_err *err)
{
    struct builder_err scratch;
    struct addctx a = {.b = b, .e = err ? err : &scratch, .kind = BUILDER_POLICY};
    struct snapshot *s = b->s;
    char keybuf[BUILDER_KEY_MAX + 1], p[MESH_PRINTABLE_MAX];
    int rc = b->fatal;
    if (rc) return rc;
    if (s->n_policies >= UINT32_MAX) return fatal(b, -E2BIG);
    snprintf(keybuf, sizeof(keybuf), "%.*s/%.*s", BUILDER_MAX_STR, S(in->namespace_), BUILDER_MAX_STR,
             S(in->name));
    a.key = keybuf;
    rc = check_policy(&a, in);
    if (rc) return rc;
    uint32_t old;
    if (htab_find(&s->pol_by_name, keybuf, strlen(keybuf), &old)) {
        rc = reject(&a, BF_POL_NAME, 0, NULL, "duplicate policy \"%s\"", mesh_printable(keybuf, p));
        a.e->other = old;
        return rc;
    }
    rc = grow(b, (void **)&s->policies, s->n_policies, BUILDER_POLICY, sizeof(struct policy));
    if (rc) return rc;
    uint32_t idx = (uint32_t)s->n_policies;
    struct policy *d = &s->policies[idx];
    *d = *in;
    d->name = dup_str(b, in->name);
    d->namespace_ = dup_str(b, in->namespace_);
    d->rules = copy_rules(b, in->rules, in->n_rules);
    if (b->fatal) return b->fatal;
    size_t kl;
    char *key = make_key(b, d->namespace_, '/', d->name, &kl);
    if (!key) return -ENOMEM;
    rc = htab_insert(&s->pol_by_name, key, kl, idx, NULL);
    if (rc) return fatal(b, rc);
    s->n_policies++;
    return 0;
}
