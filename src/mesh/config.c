/* Local config (LOCAL_XDS_PATH) loader: a streaming recursive-descent walk over libyaml events that
 * builds a snapshot directly. No document tree is built, so memory stays proportional to the result,
 * and the walk only descends where the schema allows, so nesting is bounded by the schema itself.
 *
 * Convention for the parse_* functions: on entry c->ev holds the first event of the value to parse;
 * on return it holds the last event of that value (the scalar, or the closing MAPPING/SEQUENCE_END). */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <yaml.h>

#include "core/log.h"
#include "mesh/config.h"
#include "mesh/snapshot_impl.h"

#define PATH_MAX_LEN 256
#define DEFAULT_TRUST_DOMAIN "cluster.local"
#define DEFAULT_SERVICE_ACCOUNT "default"
#define DEFAULT_CLUSTER_ID "Kubernetes"
#define DEFAULT_HBONE_PORT 15008

#define TRY(expr)                                                                                            \
    do {                                                                                                     \
        int rc_ = (expr);                                                                                    \
        if (rc_) return rc_;                                                                                 \
    } while (0)

struct pctx {
    yaml_parser_t yp;
    yaml_event_t ev;
    bool have_ev;
    const char *name;
    char *err;
    size_t errlen;
    bool failed;
    char path[PATH_MAX_LEN];
    size_t plen;
    struct snapshot *s;
    size_t cap_workloads, cap_services, cap_policies;
};

/* ---- errors and field paths ---- */

/* Copies s for an error message: at most 64 bytes, non-printable bytes as '?'. */
static const char *printable(const char *s, char out[80])
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

__attribute__((format(printf, 3, 4))) static int fail(struct pctx *c, yaml_mark_t m, const char *fmt, ...)
{
    if (c->failed) return -EINVAL;
    c->failed = true;
    if (!c->errlen) return -EINVAL;
    int n = snprintf(c->err, c->errlen, "%s:%zu:%zu: %s: ", c->name, m.line + 1, m.column + 1,
                     c->plen ? c->path : "(root)");
    if (n >= 0 && (size_t)n < c->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->err + n, c->errlen - n, fmt, ap);
        va_end(ap);
    }
    return -EINVAL;
}

static int fail_nomem(struct pctx *c)
{
    if (!c->failed) {
        c->failed = true;
        if (c->errlen) snprintf(c->err, c->errlen, "%s: out of memory", c->name);
    }
    return -ENOMEM;
}

static int syntax_error(struct pctx *c)
{
    if (c->yp.error == YAML_MEMORY_ERROR) return fail_nomem(c);
    /* Reader errors (bad encoding) carry a byte offset only; the reader's current mark is close. */
    yaml_mark_t m = c->yp.error == YAML_READER_ERROR ? c->yp.mark : c->yp.problem_mark;
    const char *problem = c->yp.problem ? c->yp.problem : "invalid YAML";
    if (c->yp.context)
        return fail(c, m, "YAML syntax error: %s (%s at line %zu)", problem, c->yp.context,
                    c->yp.context_mark.line + 1);
    return fail(c, m, "YAML syntax error: %s", problem);
}

static size_t path_push(struct pctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static size_t path_push(struct pctx *c, const char *fmt, ...)
{
    size_t old = c->plen;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(c->path + c->plen, sizeof(c->path) - c->plen, fmt, ap);
    va_end(ap);
    if (n > 0) c->plen += (size_t)n;
    if (c->plen >= sizeof(c->path)) c->plen = sizeof(c->path) - 1;
    return old;
}

static void path_pop(struct pctx *c, size_t old)
{
    c->plen = old;
    c->path[old] = '\0';
}

/* ---- events ---- */

static int ev_next(struct pctx *c)
{
    if (c->have_ev) {
        yaml_event_delete(&c->ev);
        c->have_ev = false;
    }
    if (!yaml_parser_parse(&c->yp, &c->ev)) return syntax_error(c);
    c->have_ev = true;
    /* Aliases would let a small file expand into a huge config ("billion laughs"); LocalConfig files
     * have no use for them. */
    if (c->ev.type == YAML_ALIAS_EVENT) return fail(c, c->ev.start_mark, "YAML aliases are not supported");
    return 0;
}

static yaml_mark_t ev_mark(const struct pctx *c)
{
    return c->ev.start_mark;
}

static bool ev_is_null(const struct pctx *c)
{
    if (c->ev.type != YAML_SCALAR_EVENT || c->ev.data.scalar.style != YAML_PLAIN_SCALAR_STYLE) return false;
    const char *v = (const char *)c->ev.data.scalar.value;
    size_t n = c->ev.data.scalar.length;
    return n == 0 || (n == 1 && v[0] == '~') ||
           (n == 4 && (!memcmp(v, "null", 4) || !memcmp(v, "Null", 4) || !memcmp(v, "NULL", 4)));
}

static const char *ev_kind(const struct pctx *c, char buf[96])
{
    switch (c->ev.type) {
    case YAML_MAPPING_START_EVENT:
        return "a mapping";
    case YAML_SEQUENCE_START_EVENT:
        return "a list";
    case YAML_SCALAR_EVENT: {
        if (ev_is_null(c)) return "null";
        char p[80];
        snprintf(buf, 96, "\"%s\"", printable((const char *)c->ev.data.scalar.value, p));
        return buf;
    }
    default:
        return "something else";
    }
}

static int type_error(struct pctx *c, const char *expected)
{
    char b[96];
    return fail(c, ev_mark(c), "expected %s, got %s", expected, ev_kind(c, b));
}

/* The current scalar as a C string, checked for the length bound and embedded NULs. */
static int ev_scalar(struct pctx *c, const char *what, const char **out, size_t *len)
{
    if (c->ev.type != YAML_SCALAR_EVENT) return type_error(c, what);
    size_t n = c->ev.data.scalar.length;
    const char *v = (const char *)c->ev.data.scalar.value;
    if (n > CONFIG_MAX_STR)
        return fail(c, ev_mark(c), "value too long (%zu bytes, limit %d)", n, CONFIG_MAX_STR);
    if (memchr(v, '\0', n)) return fail(c, ev_mark(c), "value contains a NUL byte");
    *out = v;
    *len = n;
    return 0;
}

/* ---- growable temporary arrays ---- */

struct vec {
    char *p;
    size_t n, cap, esz;
};
#define VEC(type) ((struct vec){.esz = sizeof(type)})

static void *vec_push(struct vec *v)
{
    if (v->n == v->cap) {
        size_t ncap = v->cap ? v->cap * 2 : 4;
        char *np = realloc(v->p, ncap * v->esz);
        if (!np) return NULL;
        v->p = np;
        v->cap = ncap;
    }
    void *e = v->p + v->n * v->esz;
    memset(e, 0, v->esz);
    v->n++;
    return e;
}

static void vec_free(struct vec *v)
{
    free(v->p);
    v->p = NULL;
    v->n = v->cap = 0;
}

/* Moves the contents into the snapshot arena (NULL when empty) and frees the vector. */
static int vec_finish(struct pctx *c, struct vec *v, const void **out, size_t *n)
{
    *n = v->n;
    *out = NULL;
    if (v->n) {
        *out = arena_memdup(&c->s->arena, v->p, v->n * v->esz);
        if (!*out) return fail_nomem(c);
    }
    vec_free(v);
    return 0;
}

/* ---- scalar values ---- */

/* A string field: null gives "". The result is owned by the snapshot. */
static int get_str(struct pctx *c, const char **out)
{
    const char *v;
    size_t n;
    if (ev_is_null(c)) {
        *out = "";
        return 0;
    }
    TRY(ev_scalar(c, "a string", &v, &n));
    char *d = arena_strndup(&c->s->arena, v, n);
    if (!d) return fail_nomem(c);
    *out = d;
    return 0;
}

static bool parse_u64(const char *v, size_t n, uint64_t *out)
{
    uint64_t x = 0;
    if (n == 0 || n > 20) return false;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9') return false;
        uint64_t d = (uint64_t)(v[i] - '0');
        if (x > (UINT64_MAX - d) / 10) return false;
        x = x * 10 + d;
    }
    *out = x;
    return true;
}

static int get_uint(struct pctx *c, uint64_t max, uint64_t *out)
{
    const char *v;
    size_t n;
    char p[80];
    TRY(ev_scalar(c, "an integer", &v, &n));
    if (!parse_u64(v, n, out) || *out > max)
        return fail(c, ev_mark(c), "invalid integer \"%s\" (expected 0-%llu)", printable(v, p),
                    (unsigned long long)max);
    return 0;
}

/* Ports must be 1..65535; target ports may also be 0 ("unset") when allow_zero. */
static int port_from(struct pctx *c, const char *v, size_t n, bool allow_zero, uint16_t *out)
{
    uint64_t x;
    char p[80];
    if (!parse_u64(v, n, &x) || x > 65535 || (x == 0 && !allow_zero))
        return fail(c, ev_mark(c), "invalid port \"%s\" (expected %d-65535)", printable(v, p),
                    allow_zero ? 0 : 1);
    *out = (uint16_t)x;
    return 0;
}

static int get_port(struct pctx *c, bool allow_zero, uint16_t *out)
{
    const char *v;
    size_t n;
    TRY(ev_scalar(c, "a port number", &v, &n));
    return port_from(c, v, n, allow_zero, out);
}

static int get_bool(struct pctx *c, bool *out)
{
    const char *v;
    size_t n;
    char p[80];
    TRY(ev_scalar(c, "a boolean", &v, &n));
    if (!strcmp(v, "true") || !strcmp(v, "True") || !strcmp(v, "TRUE"))
        *out = true;
    else if (!strcmp(v, "false") || !strcmp(v, "False") || !strcmp(v, "FALSE"))
        *out = false;
    else
        return fail(c, ev_mark(c), "invalid boolean \"%s\" (expected true or false)", printable(v, p));
    return 0;
}

struct enum_val {
    const char *name;
    int val;
};

/* Matches Istio's variant name or the proto's SCREAMING_CASE name, case-sensitively. */
static int get_enum(struct pctx *c, const struct enum_val *tab, const char *expected, int *out)
{
    const char *v;
    size_t n;
    char p[80];
    TRY(ev_scalar(c, expected, &v, &n));
    for (; tab->name; tab++) {
        if (!strcmp(tab->name, v)) {
            *out = tab->val;
            return 0;
        }
    }
    return fail(c, ev_mark(c), "invalid value \"%s\" (expected %s)", printable(v, p), expected);
}

static int ip_from(struct pctx *c, const char *v, struct ip_addr *ip)
{
    char p[80];
    if (ip_parse(v, ip) != 0) return fail(c, ev_mark(c), "invalid IP address \"%s\"", printable(v, p));
    return 0;
}

/* "network/ip"; the network is everything before the last '/' ("" = default network). */
static int split_net_addr(struct pctx *c, const char *v, size_t n, struct net_addr *out, bool quiet)
{
    char p[80];
    const char *slash = memrchr(v, '/', n);
    if (!slash) {
        if (quiet) return -EINVAL;
        return fail(c, ev_mark(c), "invalid address \"%s\" (expected \"network/ip\", e.g. \"/10.0.0.1\")",
                    printable(v, p));
    }
    if (ip_parse(slash + 1, &out->ip) != 0) {
        if (quiet) return -EINVAL;
        return fail(c, ev_mark(c), "invalid IP address in \"%s\"", printable(v, p));
    }
    char *net = arena_strndup(&c->s->arena, v, (size_t)(slash - v));
    if (!net) return fail_nomem(c);
    out->network = net;
    return 0;
}

/* ---- containers ---- */

struct field {
    const char *name;
    int id; /* < 64; aliases share an id so that giving both is a duplicate */
};

typedef int (*field_fn)(struct pctx *c, int id, void *ud);
typedef int (*item_fn)(struct pctx *c, size_t idx, void *ud);
typedef int (*entry_fn)(struct pctx *c, const char *key, size_t keylen, yaml_mark_t km, void *ud);

/* Walks a mapping whose keys are the given fields; null is an empty mapping. */
static int parse_struct(struct pctx *c, const struct field *fields, field_fn fn, void *ud)
{
    if (ev_is_null(c)) return 0;
    if (c->ev.type != YAML_MAPPING_START_EVENT) return type_error(c, "a mapping");
    uint64_t seen = 0;
    for (;;) {
        TRY(ev_next(c));
        if (c->ev.type == YAML_MAPPING_END_EVENT) return 0;
        const char *k;
        size_t kl;
        char key[CONFIG_MAX_STR + 1], p[80];
        TRY(ev_scalar(c, "a field name", &k, &kl));
        memcpy(key, k, kl + 1);
        yaml_mark_t km = ev_mark(c);
        size_t saved = path_push(c, c->plen ? ".%s" : "%s", printable(key, p));
        const struct field *f = fields;
        while (f->name && strcmp(f->name, key))
            f++;
        if (!f->name) return fail(c, km, "unknown field \"%s\"", printable(key, p));
        if (seen & (1ULL << f->id)) return fail(c, km, "duplicate field \"%s\"", printable(key, p));
        seen |= 1ULL << f->id;
        TRY(ev_next(c));
        TRY(fn(c, f->id, ud));
        path_pop(c, saved);
    }
}

/* Walks a list; null is an empty list. */
static int parse_seq(struct pctx *c, item_fn fn, void *ud)
{
    if (ev_is_null(c)) return 0;
    if (c->ev.type != YAML_SEQUENCE_START_EVENT) return type_error(c, "a list");
    for (size_t i = 0;; i++) {
        TRY(ev_next(c));
        if (c->ev.type == YAML_SEQUENCE_END_EVENT) return 0;
        size_t saved = path_push(c, "[%zu]", i);
        TRY(fn(c, i, ud));
        path_pop(c, saved);
    }
}

/* Walks a mapping with free-form scalar keys; null is an empty mapping. */
static int parse_dynmap(struct pctx *c, bool quote_keys, entry_fn fn, void *ud)
{
    if (ev_is_null(c)) return 0;
    if (c->ev.type != YAML_MAPPING_START_EVENT) return type_error(c, "a mapping");
    for (;;) {
        TRY(ev_next(c));
        if (c->ev.type == YAML_MAPPING_END_EVENT) return 0;
        const char *k;
        size_t kl;
        char key[CONFIG_MAX_STR + 1], p[80];
        TRY(ev_scalar(c, "a scalar key", &k, &kl));
        memcpy(key, k, kl + 1);
        yaml_mark_t km = ev_mark(c);
        size_t saved = path_push(c, quote_keys ? "[\"%s\"]" : "[%s]", printable(key, p));
        TRY(ev_next(c));
        TRY(fn(c, key, kl, km, ud));
        path_pop(c, saved);
    }
}

/* ---- port maps {svcPort: targetPort} ---- */

struct port_ent {
    struct port_map pm;
    yaml_mark_t m;
};

static int port_entry(struct pctx *c, const char *key, size_t kl, yaml_mark_t km, void *ud)
{
    struct vec *v = ud;
    struct port_ent *e = vec_push(v);
    if (!e) return fail_nomem(c);
    e->m = km;
    /* Report a bad key at the key itself. */
    uint64_t x;
    char p[80];
    if (!parse_u64(key, kl, &x) || x == 0 || x > 65535)
        return fail(c, km, "invalid port \"%s\" (expected 1-65535)", printable(key, p));
    e->pm.port = (uint16_t)x;
    return get_port(c, true, &e->pm.target);
}

static int cmp_port_ent(const void *a, const void *b)
{
    const struct port_ent *x = a, *y = b;
    if (x->pm.port != y->pm.port) return x->pm.port < y->pm.port ? -1 : 1;
    if (x->m.index != y->m.index) return x->m.index < y->m.index ? -1 : 1;
    return 0;
}

/* Parses a port map, sorted by port, into the arena. Duplicate ports are errors. */
static int parse_port_map(struct pctx *c, const struct port_map **out, size_t *n)
{
    struct vec v = VEC(struct port_ent);
    struct port_map *pm = NULL;
    int rc = parse_dynmap(c, false, port_entry, &v);
    if (rc) goto out;
    if (v.n > 1) qsort(v.p, v.n, v.esz, cmp_port_ent);
    struct port_ent *e = (struct port_ent *)v.p;
    for (size_t i = 1; i < v.n; i++) {
        if (e[i].pm.port == e[i - 1].pm.port) {
            size_t saved = path_push(c, "[%u]", e[i].pm.port);
            rc = fail(c, e[i].m, "duplicate port %u", e[i].pm.port);
            path_pop(c, saved);
            goto out;
        }
    }
    if (v.n) {
        pm = arena_alloc(&c->s->arena, v.n * sizeof(*pm));
        if (!pm) {
            rc = fail_nomem(c);
            goto out;
        }
        for (size_t i = 0; i < v.n; i++)
            pm[i] = e[i].pm;
    }
    *out = pm;
    *n = v.n;
out:
    vec_free(&v);
    return rc;
}

/* ---- string lists ---- */

static int str_item(struct pctx *c, size_t idx, void *ud)
{
    const char **e = vec_push(ud);
    if (!e) return fail_nomem(c);
    return get_str(c, e);
}

static int parse_str_list(struct pctx *c, const char *const **out, size_t *n)
{
    struct vec v = VEC(const char *);
    int rc = parse_seq(c, str_item, &v);
    if (rc) {
        vec_free(&v);
        return rc;
    }
    return vec_finish(c, &v, (const void **)out, n);
}

/* ---- gateway addresses {destination, hboneMtlsPort} ---- */

enum { G_DEST, G_PORT };
static const struct field gateway_fields[] = {{"destination", G_DEST}, {"hboneMtlsPort", G_PORT}, {NULL, 0}};

static int gateway_field(struct pctx *c, int id, void *ud)
{
    struct gateway_addr *g = ud;
    char p[80];
    if (id == G_PORT) return get_port(c, false, &g->hbone_port);
    if (ev_is_null(c)) return 0;
    const char *v;
    size_t n;
    TRY(ev_scalar(c, "a string \"network/ip\" or \"namespace/hostname\"", &v, &n));
    struct net_addr na;
    if (split_net_addr(c, v, n, &na, true) == 0) {
        g->set = true;
        g->is_host = false;
        g->network = na.network;
        g->ip = na.ip;
        return 0;
    }
    if (c->failed) return -ENOMEM;
    const char *slash = memchr(v, '/', n);
    if (!slash || slash == v || slash + 1 == v + n || memchr(slash + 1, '/', (size_t)(v + n - slash - 1)))
        return fail(c, ev_mark(c),
                    "invalid destination \"%s\" (expected \"network/ip\" or \"namespace/hostname\")",
                    printable(v, p));
    g->ns = arena_strndup(&c->s->arena, v, (size_t)(slash - v));
    g->host = arena_strndup(&c->s->arena, slash + 1, (size_t)(v + n - slash - 1));
    if (!g->ns || !g->host) return fail_nomem(c);
    g->set = true;
    g->is_host = true;
    return 0;
}

static int parse_gateway(struct pctx *c, struct gateway_addr *g)
{
    yaml_mark_t start = ev_mark(c);
    *g = (struct gateway_addr){.network = "", .ns = "", .host = ""};
    if (ev_is_null(c)) return 0;
    TRY(parse_struct(c, gateway_fields, gateway_field, g));
    if (!g->set) {
        if (g->hbone_port) return fail(c, start, "destination is required");
        return 0;
    }
    if (!g->hbone_port) g->hbone_port = DEFAULT_HBONE_PORT;
    return 0;
}

/* ---- workloads ---- */

enum {
    W_UID,
    W_NAME,
    W_NS,
    W_HOSTNAME,
    W_IPS,
    W_NETWORK,
    W_PROTO,
    W_TD,
    W_SA,
    W_WAYPOINT,
    W_NETGW,
    W_NODE,
    W_CNAME,
    W_CREV,
    W_WTYPE,
    W_WNAME,
    W_APPTUN,
    W_SERVICES,
    W_AUTHZ,
    W_STATUS,
    W_CLUSTER,
    W_LOCALITY,
    W_CAPACITY,
    W_NETMODE,
    W_IP,
};
static const struct field workload_fields[] = {
    {"uid", W_UID},
    {"name", W_NAME},
    {"namespace", W_NS},
    {"hostname", W_HOSTNAME},
    {"workloadIps", W_IPS},
    {"workloadIp", W_IP}, /* older ztunnel examples use a single address */
    {"network", W_NETWORK},
    {"protocol", W_PROTO},
    {"tunnelProtocol", W_PROTO},
    {"trustDomain", W_TD},
    {"serviceAccount", W_SA},
    {"waypoint", W_WAYPOINT},
    {"networkGateway", W_NETGW},
    {"node", W_NODE},
    {"canonicalName", W_CNAME},
    {"canonicalRevision", W_CREV},
    {"workloadType", W_WTYPE},
    {"workloadName", W_WNAME},
    {"applicationTunnel", W_APPTUN},
    {"services", W_SERVICES},
    {"authorizationPolicies", W_AUTHZ},
    {"status", W_STATUS},
    {"clusterId", W_CLUSTER},
    {"locality", W_LOCALITY},
    {"capacity", W_CAPACITY},
    {"networkMode", W_NETMODE},
    {NULL, 0},
};

static const struct enum_val proto_enum[] = {
    {"TCP", WL_PROTO_TCP}, {"HBONE", WL_PROTO_HBONE}, {"NONE", WL_PROTO_TCP}, {NULL, 0}};
static const struct enum_val status_enum[] = {
    {"Healthy", 1}, {"Unhealthy", 0}, {"HEALTHY", 1}, {"UNHEALTHY", 0}, {NULL, 0}};
static const struct enum_val netmode_enum[] = {{"Standard", WL_NET_STANDARD},
                                               {"HostNetwork", WL_NET_HOST},
                                               {"STANDARD", WL_NET_STANDARD},
                                               {"HOST_NETWORK", WL_NET_HOST},
                                               {NULL, 0}};
static const struct enum_val apptun_enum[] = {
    {"NONE", WL_APP_TUNNEL_NONE}, {"PROXY", WL_APP_TUNNEL_PROXY}, {NULL, 0}};
static const char *const wtype_names[] = {"deployment", "cronjob", "pod", "job"};
static const struct enum_val wtype_enum[] = {{"deployment", 0}, {"cronjob", 1},    {"pod", 2},
                                             {"job", 3},        {"DEPLOYMENT", 0}, {"CRONJOB", 1},
                                             {"POD", 2},        {"JOB", 3},        {NULL, 0}};

struct ip_ent {
    struct ip_addr ip;
    yaml_mark_t m;
};
struct svc_ent {
    struct wl_service_ports sp;
    yaml_mark_t m;
};

struct wl_ctx {
    struct workload w;
    struct vec ips, svcs, pols;
    yaml_mark_t uid_mark;
    bool has_uid;
};

/* False for addresses no connection can be made to: unspecified, multicast, IPv4 broadcast. */
static bool ip_usable(const struct ip_addr *ip)
{
    static const uint8_t zero[16];
    if (ip->family == AF_INET)
        return memcmp(ip->a, zero, 4) && ip->a[0] < 224 && memcmp(ip->a, "\xff\xff\xff\xff", 4);
    return memcmp(ip->a, zero, 16) && ip->a[0] != 0xff;
}

static int ip_item(struct pctx *c, size_t idx, void *ud)
{
    struct ip_ent *e = vec_push(ud);
    const char *v;
    size_t n;
    if (!e) return fail_nomem(c);
    e->m = ev_mark(c);
    TRY(ev_scalar(c, "an IP address string", &v, &n));
    return ip_from(c, v, &e->ip);
}

static int wl_service_entry(struct pctx *c, const char *key, size_t kl, yaml_mark_t km, void *ud)
{
    struct svc_ent *e = vec_push(ud);
    char p[80];
    if (!e) return fail_nomem(c);
    e->m = km;
    const char *slash = memchr(key, '/', kl);
    if (!slash || slash == key || slash + 1 == key + kl)
        return fail(c, km, "invalid service key \"%s\" (expected \"namespace/hostname\")", printable(key, p));
    e->sp.key = arena_strndup(&c->s->arena, key, kl);
    if (!e->sp.key) return fail_nomem(c);
    return parse_port_map(c, &e->sp.ports, &e->sp.n_ports);
}

static int cmp_svc_ent(const void *a, const void *b)
{
    const struct svc_ent *x = a, *y = b;
    int r = strcmp(x->sp.key, y->sp.key);
    if (r) return r;
    return x->m.index < y->m.index ? -1 : x->m.index > y->m.index;
}

static int lstr_field(struct pctx *c, int id, void *ud)
{
    struct locality *l = ud;
    return get_str(c, id == 0 ? &l->region : id == 1 ? &l->zone : &l->subzone);
}
static const struct field locality_fields[] = {{"region", 0}, {"zone", 1}, {"subzone", 2}, {NULL, 0}};

static int apptun_field(struct pctx *c, int id, void *ud)
{
    struct workload *w = ud;
    int v = 0;
    if (id == 1) return get_port(c, false, &w->app_tunnel_port);
    TRY(get_enum(c, apptun_enum, "NONE or PROXY", &v));
    w->app_tunnel_protocol = (uint8_t)v;
    return 0;
}
static const struct field apptun_fields[] = {{"protocol", 0}, {"port", 1}, {NULL, 0}};

static int workload_field(struct pctx *c, int id, void *ud)
{
    struct wl_ctx *x = ud;
    struct workload *w = &x->w;
    int v = 0;
    uint64_t u = 0;
    switch (id) {
    case W_UID:
        x->uid_mark = ev_mark(c);
        x->has_uid = true;
        return get_str(c, &w->uid);
    case W_NAME:
        return get_str(c, &w->name);
    case W_NS:
        return get_str(c, &w->namespace_);
    case W_HOSTNAME:
        return get_str(c, &w->hostname);
    case W_IPS: /* a list only: a scalar here is a mistake, not one address */
        return parse_seq(c, ip_item, &x->ips);
    case W_IP:
        return ip_item(c, 0, &x->ips);
    case W_NETWORK:
        return get_str(c, &w->network);
    case W_PROTO:
        TRY(get_enum(c, proto_enum, "TCP or HBONE", &v));
        w->protocol = (enum wl_protocol)v;
        return 0;
    case W_TD:
        return get_str(c, &w->trust_domain);
    case W_SA:
        return get_str(c, &w->service_account);
    case W_WAYPOINT:
        return parse_gateway(c, &w->waypoint);
    case W_NETGW:
        return parse_gateway(c, &w->network_gateway);
    case W_NODE:
        return get_str(c, &w->node);
    case W_CNAME:
        return get_str(c, &w->canonical_name);
    case W_CREV:
        return get_str(c, &w->canonical_revision);
    case W_WTYPE:
        TRY(get_enum(c, wtype_enum, "deployment, cronjob, pod or job", &v));
        w->workload_type = wtype_names[v];
        return 0;
    case W_WNAME:
        return get_str(c, &w->workload_name);
    case W_APPTUN:
        return parse_struct(c, apptun_fields, apptun_field, w);
    case W_SERVICES:
        return parse_dynmap(c, true, wl_service_entry, &x->svcs);
    case W_AUTHZ:
        return parse_seq(c, str_item, &x->pols);
    case W_STATUS:
        TRY(get_enum(c, status_enum, "Healthy or Unhealthy", &v));
        w->healthy = v;
        return 0;
    case W_CLUSTER:
        return get_str(c, &w->cluster_id);
    case W_LOCALITY:
        return parse_struct(c, locality_fields, lstr_field, &w->locality);
    case W_CAPACITY:
        TRY(get_uint(c, UINT32_MAX, &u));
        w->capacity = (uint32_t)u;
        return 0;
    case W_NETMODE:
        TRY(get_enum(c, netmode_enum, "Standard or HostNetwork", &v));
        w->network_mode = (uint8_t)v;
        return 0;
    }
    return -EINVAL;
}

static int grow_array(struct pctx *c, void **arr, size_t n, size_t *cap, size_t esz)
{
    if (n < *cap) return 0;
    size_t ncap = *cap ? *cap * 2 : 16;
    void *p = realloc(*arr, ncap * esz);
    if (!p) return fail_nomem(c);
    *arr = p;
    *cap = ncap;
    return 0;
}

/* Moves the parsed lists into the arena and indexes the workload as s->workloads[idx]. */
static int workload_finish(struct pctx *c, struct wl_ctx *x, uint32_t idx, yaml_mark_t start)
{
    struct snapshot *s = c->s;
    struct workload *w = &x->w;
    char p[80], p2[80], ipb[IP_STRLEN];
    size_t saved;

    if (!*w->trust_domain) w->trust_domain = DEFAULT_TRUST_DOMAIN;
    if (!*w->service_account) w->service_account = DEFAULT_SERVICE_ACCOUNT;
    if (!*w->cluster_id) w->cluster_id = DEFAULT_CLUSTER_ID;
    if (!*w->uid) {
        /* istiod's uid format for pods, so a config without uids still gets unique keys. */
        size_t n = strlen(w->cluster_id) + strlen(w->namespace_) + strlen(w->name) + 16;
        char *uid = arena_alloc(&s->arena, n);
        if (!uid) return fail_nomem(c);
        snprintf(uid, n, "%s//v1/Pod/%s/%s", w->cluster_id, w->namespace_, w->name);
        w->uid = uid;
        x->uid_mark = start;
    }

    /* Service keys: sorted for binary search, duplicates rejected. */
    if (x->svcs.n > 1) qsort(x->svcs.p, x->svcs.n, x->svcs.esz, cmp_svc_ent);
    struct svc_ent *se = (struct svc_ent *)x->svcs.p;
    for (size_t i = 1; i < x->svcs.n; i++) {
        if (!strcmp(se[i].sp.key, se[i - 1].sp.key)) {
            path_push(c, ".services[\"%s\"]", printable(se[i].sp.key, p));
            return fail(c, se[i].m, "duplicate service key");
        }
    }
    if (x->svcs.n) {
        struct wl_service_ports *sp = arena_alloc(&s->arena, x->svcs.n * sizeof(*sp));
        if (!sp) return fail_nomem(c);
        for (size_t i = 0; i < x->svcs.n; i++)
            sp[i] = se[i].sp;
        w->services = sp;
        w->n_services = x->svcs.n;
    }
    TRY(vec_finish(c, &x->pols, (const void **)&w->authorization_policies, &w->n_authorization_policies));

    struct ip_ent *ie = (struct ip_ent *)x->ips.p;
    if (x->ips.n) {
        struct ip_addr *ips = arena_alloc(&s->arena, x->ips.n * sizeof(*ips));
        if (!ips) return fail_nomem(c);
        for (size_t i = 0; i < x->ips.n; i++)
            ips[i] = ie[i].ip;
        w->ips = ips;
        w->n_ips = x->ips.n;
    }

    uint32_t old;
    int rc = htab_insert(&s->wl_by_uid, w->uid, strlen(w->uid), idx, &old);
    if (rc == -EEXIST) {
        path_push(c, ".uid");
        return fail(c, x->uid_mark, "duplicate workload uid \"%s\" (also workloads[%u])",
                    printable(w->uid, p), old);
    }
    if (rc) return fail_nomem(c);

    size_t nl = strlen(w->namespace_), ml = strlen(w->name);
    char *nk = arena_alloc(&s->arena, nl + ml + 1);
    if (!nk) return fail_nomem(c);
    memcpy(nk, w->namespace_, nl);
    memcpy(nk + nl + 1, w->name, ml);
    rc = htab_insert(&s->wl_by_name, nk, nl + 1 + ml, idx, NULL);
    if (rc && rc != -EEXIST) return fail_nomem(c);

    /* A workload nothing can reach by IP is likely a mistake; it still loads (ztunnel would resolve its
     * hostname or use its network gateway, which zmesh does not do yet). */
    size_t usable = 0;
    for (size_t i = 0; i < x->ips.n; i++)
        usable += ip_usable(&ie[i].ip);
    if (!usable && !w->network_gateway.set) {
        char where[PATH_MAX_LEN + 64];
        snprintf(where, sizeof(where), "%s:%zu:%zu: %s", c->name, start.line + 1, start.column + 1, c->path);
        log_kv(LOG_WARN, "config",
               "workload has no usable IP address: it cannot be reached and is never chosen as a service "
               "endpoint",
               "at", where, "workload", w->uid, "workloadIps",
               x->ips.n ? "unspecified, multicast or broadcast only" : "none", NULL);
    }

    /* Host-network workloads share the node's IP with each other, so they are not IP-indexed. */
    if (w->network_mode == WL_NET_HOST) return 0;
    for (size_t i = 0; i < x->ips.n; i++) {
        char key[SNAP_KEY_MAX];
        size_t kl = snap_ip_key(key, w->network, &ie[i].ip);
        char *k = arena_memdup(&s->arena, key, kl);
        if (!k) return fail_nomem(c);
        rc = htab_insert(&s->wl_by_ip, k, kl, idx, &old);
        if (rc == -EEXIST) {
            saved = path_push(c, ".workloadIps[%zu]", i);
            const char *other = old == idx ? "this workload" : s->workloads[old].uid;
            rc = fail(c, ie[i].m, "duplicate address \"%s/%s\" in network (already used by %s)",
                      printable(w->network, p), ip_format(&ie[i].ip, ipb, sizeof(ipb)), printable(other, p2));
            path_pop(c, saved);
            return rc;
        }
        if (rc) return fail_nomem(c);
    }
    return 0;
}

static int workload_item(struct pctx *c, size_t idx, void *ud)
{
    struct snapshot *s = c->s;
    yaml_mark_t start = ev_mark(c);
    struct wl_ctx x = {
        .w = {.uid = "",
              .name = "",
              .namespace_ = "",
              .hostname = "",
              .network = "",
              .trust_domain = "",
              .service_account = "",
              .node = "",
              .cluster_id = "",
              .canonical_name = "",
              .canonical_revision = "",
              .workload_type = "",
              .workload_name = "",
              .healthy = true,
              .capacity = 1,
              .locality = {"", "", ""}},
        .ips = VEC(struct ip_ent),
        .svcs = VEC(struct svc_ent),
        .pols = VEC(const char *),
    };
    x.w.waypoint = x.w.network_gateway = (struct gateway_addr){.network = "", .ns = "", .host = ""};
    int rc;
    if (s->n_workloads >= UINT32_MAX) {
        rc = fail(c, start, "too many workloads");
        goto out;
    }
    if (c->ev.type != YAML_MAPPING_START_EVENT) {
        rc = type_error(c, "a mapping");
        goto out;
    }
    rc = parse_struct(c, workload_fields, workload_field, &x);
    if (rc) goto out;
    rc = grow_array(c, (void **)&s->workloads, s->n_workloads, &c->cap_workloads, sizeof(struct workload));
    if (rc) goto out;
    /* The array is written before indexing so a duplicate-IP message can name the other workload. */
    uint32_t i = (uint32_t)s->n_workloads;
    rc = workload_finish(c, &x, i, start);
    if (rc) goto out;
    s->workloads[i] = x.w;
    s->n_workloads++;
out:
    vec_free(&x.ips);
    vec_free(&x.svcs);
    vec_free(&x.pols);
    return rc;
}

/* ---- services ---- */

enum { S_NAME, S_NS, S_HOST, S_VIPS, S_PORTS, S_SANS, S_WAYPOINT, S_LB, S_IPFAM };
static const struct field service_fields[] = {
    {"name", S_NAME},         {"namespace", S_NS},
    {"hostname", S_HOST},     {"vips", S_VIPS},
    {"ports", S_PORTS},       {"subjectAltNames", S_SANS},
    {"waypoint", S_WAYPOINT}, {"loadBalancer", S_LB},
    {"ipFamilies", S_IPFAM},  {NULL, 0},
};
static const struct enum_val ipfam_enum[] = {{"Automatic", IP_FAMILIES_AUTOMATIC},
                                             {"IPv4", IP_FAMILIES_IPV4_ONLY},
                                             {"IPv6", IP_FAMILIES_IPV6_ONLY},
                                             {"Dual", IP_FAMILIES_DUAL},
                                             {"AUTOMATIC", IP_FAMILIES_AUTOMATIC},
                                             {"IPV4_ONLY", IP_FAMILIES_IPV4_ONLY},
                                             {"IPV6_ONLY", IP_FAMILIES_IPV6_ONLY},
                                             {"DUAL", IP_FAMILIES_DUAL},
                                             {NULL, 0}};
static const struct enum_val scope_enum[] = {{"Region", LB_SCOPE_REGION},
                                             {"Zone", LB_SCOPE_ZONE},
                                             {"Subzone", LB_SCOPE_SUBZONE},
                                             {"Node", LB_SCOPE_NODE},
                                             {"Cluster", LB_SCOPE_CLUSTER},
                                             {"Network", LB_SCOPE_NETWORK},
                                             {"REGION", LB_SCOPE_REGION},
                                             {"ZONE", LB_SCOPE_ZONE},
                                             {"SUBZONE", LB_SCOPE_SUBZONE},
                                             {"NODE", LB_SCOPE_NODE},
                                             {"CLUSTER", LB_SCOPE_CLUSTER},
                                             {"NETWORK", LB_SCOPE_NETWORK},
                                             {NULL, 0}};
static const struct enum_val mode_enum[] = {{"Standard", LB_MODE_STANDARD},
                                            {"Strict", LB_MODE_STRICT},
                                            {"Failover", LB_MODE_FAILOVER},
                                            {"Passthrough", LB_MODE_PASSTHROUGH},
                                            {"UNSPECIFIED_MODE", LB_MODE_STANDARD},
                                            {"STANDARD", LB_MODE_STANDARD},
                                            {"STRICT", LB_MODE_STRICT},
                                            {"FAILOVER", LB_MODE_FAILOVER},
                                            {"PASSTHROUGH", LB_MODE_PASSTHROUGH},
                                            {NULL, 0}};
static const struct enum_val health_enum[] = {{"OnlyHealthy", LB_HEALTH_ONLY_HEALTHY},
                                              {"AllowAll", LB_HEALTH_ALLOW_ALL},
                                              {"ONLY_HEALTHY", LB_HEALTH_ONLY_HEALTHY},
                                              {"ALLOW_ALL", LB_HEALTH_ALLOW_ALL},
                                              {NULL, 0}};

struct svc_ctx {
    struct service svc;
    struct vec vips, prefs;
    yaml_mark_t host_mark;
};

static int vip_item(struct pctx *c, size_t idx, void *ud)
{
    struct net_addr *e = vec_push(ud);
    const char *v;
    size_t n;
    if (!e) return fail_nomem(c);
    TRY(ev_scalar(c, "an address string \"network/ip\"", &v, &n));
    return split_net_addr(c, v, n, e, false);
}

static int pref_item(struct pctx *c, size_t idx, void *ud)
{
    uint8_t *e = vec_push(ud);
    int v = 0;
    if (!e) return fail_nomem(c);
    TRY(get_enum(c, scope_enum, "Region, Zone, Subzone, Node, Cluster or Network", &v));
    *e = (uint8_t)v;
    return 0;
}

static int lb_field(struct pctx *c, int id, void *ud)
{
    struct svc_ctx *x = ud;
    int v = 0;
    switch (id) {
    case 0:
        return parse_seq(c, pref_item, &x->prefs);
    case 1:
        TRY(get_enum(c, mode_enum, "Standard, Strict, Failover or Passthrough", &v));
        x->svc.lb_mode = (uint8_t)v;
        return 0;
    default:
        TRY(get_enum(c, health_enum, "OnlyHealthy or AllowAll", &v));
        x->svc.health_policy = (uint8_t)v;
        return 0;
    }
}
static const struct field lb_fields[] = {
    {"routingPreferences", 0}, {"routingPreference", 0}, {"mode", 1}, {"healthPolicy", 2}, {NULL, 0}};

static int service_field(struct pctx *c, int id, void *ud)
{
    struct svc_ctx *x = ud;
    struct service *svc = &x->svc;
    int v = 0;
    switch (id) {
    case S_NAME:
        return get_str(c, &svc->name);
    case S_NS:
        return get_str(c, &svc->namespace_);
    case S_HOST:
        x->host_mark = ev_mark(c);
        return get_str(c, &svc->hostname);
    case S_VIPS:
        return parse_seq(c, vip_item, &x->vips);
    case S_PORTS:
        return parse_port_map(c, &svc->ports, &svc->n_ports);
    case S_SANS:
        return parse_str_list(c, &svc->subject_alt_names, &svc->n_sans);
    case S_WAYPOINT:
        return parse_gateway(c, &svc->waypoint);
    case S_LB:
        return parse_struct(c, lb_fields, lb_field, x);
    case S_IPFAM:
        TRY(get_enum(c, ipfam_enum, "Dual, IPv4 or IPv6", &v));
        svc->ip_families = (uint8_t)v;
        return 0;
    }
    return -EINVAL;
}

static int service_finish(struct pctx *c, struct svc_ctx *x, uint32_t idx, yaml_mark_t start)
{
    struct snapshot *s = c->s;
    struct service *svc = &x->svc;
    char p[80];
    if (!*svc->hostname) {
        path_push(c, ".hostname");
        return fail(c, start, "hostname is required");
    }
    TRY(vec_finish(c, &x->vips, (const void **)&svc->vips, &svc->n_vips));
    TRY(vec_finish(c, &x->prefs, (const void **)&svc->routing_prefs, &svc->n_routing_prefs));

    size_t nl = strlen(svc->namespace_), hl = strlen(svc->hostname);
    char *key = arena_alloc(&s->arena, nl + hl + 2);
    if (!key) return fail_nomem(c);
    memcpy(key, svc->namespace_, nl);
    key[nl] = '/';
    memcpy(key + nl + 1, svc->hostname, hl);
    uint32_t old;
    int rc = htab_insert(&s->svc_by_host, key, nl + 1 + hl, idx, &old);
    if (rc == -EEXIST) {
        path_push(c, ".hostname");
        return fail(c, x->host_mark, "duplicate service \"%s\" (also services[%u])", printable(key, p), old);
    }
    if (rc) return fail_nomem(c);

    for (size_t i = 0; i < svc->n_vips; i++) {
        char kb[SNAP_KEY_MAX];
        size_t kl = snap_ip_key(kb, svc->vips[i].network, &svc->vips[i].ip);
        char *k = arena_memdup(&s->arena, kb, kl);
        if (!k) return fail_nomem(c);
        /* Several services may share a VIP (ztunnel tie-breaks at lookup); the first one is indexed. */
        rc = htab_insert(&s->svc_by_vip, k, kl, idx, NULL);
        if (rc && rc != -EEXIST) return fail_nomem(c);
    }
    return 0;
}

static int service_item(struct pctx *c, size_t idx, void *ud)
{
    struct snapshot *s = c->s;
    yaml_mark_t start = ev_mark(c);
    struct svc_ctx x = {
        .svc = {.name = "", .namespace_ = "", .hostname = ""},
        .vips = VEC(struct net_addr),
        .prefs = VEC(uint8_t),
    };
    x.svc.waypoint = (struct gateway_addr){.network = "", .ns = "", .host = ""};
    int rc;
    if (s->n_services >= UINT32_MAX) {
        rc = fail(c, start, "too many services");
        goto out;
    }
    if (c->ev.type != YAML_MAPPING_START_EVENT) {
        rc = type_error(c, "a mapping");
        goto out;
    }
    rc = parse_struct(c, service_fields, service_field, &x);
    if (rc) goto out;
    rc = grow_array(c, (void **)&s->services, s->n_services, &c->cap_services, sizeof(struct service));
    if (rc) goto out;
    rc = service_finish(c, &x, (uint32_t)s->n_services, start);
    if (rc) goto out;
    s->services[s->n_services++] = x.svc;
out:
    vec_free(&x.vips);
    vec_free(&x.prefs);
    return rc;
}

/* ---- policies ---- */

enum { P_NAME, P_NS, P_SCOPE, P_ACTION, P_DRYRUN, P_RULES };
static const struct field policy_fields[] = {
    {"name", P_NAME},     {"namespace", P_NS}, {"scope", P_SCOPE}, {"action", P_ACTION},
    {"dryRun", P_DRYRUN}, {"rules", P_RULES},  {NULL, 0},
};
static const struct enum_val pscope_enum[] = {{"Global", POLICY_SCOPE_GLOBAL},
                                              {"Namespace", POLICY_SCOPE_NAMESPACE},
                                              {"WorkloadSelector", POLICY_SCOPE_WORKLOAD_SELECTOR},
                                              {"GLOBAL", POLICY_SCOPE_GLOBAL},
                                              {"NAMESPACE", POLICY_SCOPE_NAMESPACE},
                                              {"WORKLOAD_SELECTOR", POLICY_SCOPE_WORKLOAD_SELECTOR},
                                              {NULL, 0}};
static const struct enum_val action_enum[] = {{"Allow", POLICY_ALLOW},
                                              {"Deny", POLICY_DENY},
                                              {"ALLOW", POLICY_ALLOW},
                                              {"DENY", POLICY_DENY},
                                              {NULL, 0}};

static const struct field sm_fields[] = {
    {"Exact", SM_EXACT},       {"Prefix", SM_PREFIX},     {"Suffix", SM_SUFFIX},
    {"Presence", SM_PRESENCE}, {"EXACT", SM_EXACT},       {"PREFIX", SM_PREFIX},
    {"SUFFIX", SM_SUFFIX},     {"PRESENCE", SM_PRESENCE}, {NULL, 0}};

struct sm_ctx {
    struct string_match *sm;
    int n;
};

static int sm_field(struct pctx *c, int id, void *ud)
{
    struct sm_ctx *x = ud;
    if (x->n++)
        return fail(c, ev_mark(c), "a string match takes exactly one of Exact, Prefix, Suffix, Presence");
    x->sm->kind = (uint8_t)id;
    if (id != SM_PRESENCE) return get_str(c, &x->sm->value);
    x->sm->value = "";
    /* serde writes the unit variant as `Presence: []`; also take null and {}. */
    if (ev_is_null(c)) return 0;
    if (c->ev.type == YAML_SEQUENCE_START_EVENT || c->ev.type == YAML_MAPPING_START_EVENT) {
        yaml_event_type_t end =
            c->ev.type == YAML_SEQUENCE_START_EVENT ? YAML_SEQUENCE_END_EVENT : YAML_MAPPING_END_EVENT;
        TRY(ev_next(c));
        if (c->ev.type == end) return 0;
    }
    return type_error(c, "[] (Presence takes no value)");
}

static int sm_item(struct pctx *c, size_t idx, void *ud)
{
    struct string_match *sm = vec_push(ud);
    if (!sm) return fail_nomem(c);
    yaml_mark_t start = ev_mark(c);
    if (c->ev.type != YAML_MAPPING_START_EVENT)
        return type_error(c, "a string match {Exact|Prefix|Suffix: x} or {Presence: []}");
    struct sm_ctx x = {.sm = sm};
    TRY(parse_struct(c, sm_fields, sm_field, &x));
    if (!x.n) return fail(c, start, "empty string match (expected one of Exact, Prefix, Suffix, Presence)");
    return 0;
}

static int sa_field(struct pctx *c, int id, void *ud)
{
    struct sa_match *sa = ud;
    return get_str(c, id == 0 ? &sa->namespace_ : &sa->service_account);
}
static const struct field sa_fields[] = {{"namespace", 0}, {"serviceAccount", 1}, {NULL, 0}};

static int sa_item(struct pctx *c, size_t idx, void *ud)
{
    struct sa_match *sa = vec_push(ud);
    if (!sa) return fail_nomem(c);
    sa->namespace_ = sa->service_account = "";
    if (c->ev.type != YAML_MAPPING_START_EVENT) return type_error(c, "a mapping {namespace, serviceAccount}");
    return parse_struct(c, sa_fields, sa_field, sa);
}

static int cidr_item(struct pctx *c, size_t idx, void *ud)
{
    struct cidr *e = vec_push(ud);
    const char *v;
    size_t n;
    char buf[CONFIG_MAX_STR + 1], p[80];
    if (!e) return fail_nomem(c);
    TRY(ev_scalar(c, "an address block \"ip/len\" or \"ip\"", &v, &n));
    memcpy(buf, v, n + 1);
    char *slash = strchr(buf, '/');
    if (slash) *slash = '\0';
    if (ip_parse(buf, &e->ip) != 0) return fail(c, ev_mark(c), "invalid IP address \"%s\"", printable(v, p));
    unsigned max = e->ip.family == AF_INET ? 32 : 128;
    uint64_t len = max;
    if (slash && (!parse_u64(slash + 1, strlen(slash + 1), &len) || len > max))
        return fail(c, ev_mark(c), "invalid prefix length in \"%s\" (expected 0-%u)", printable(v, p), max);
    e->len = (uint8_t)len;
    return 0;
}

static int port_item(struct pctx *c, size_t idx, void *ud)
{
    uint16_t *e = vec_push(ud);
    if (!e) return fail_nomem(c);
    return get_port(c, false, e);
}

enum {
    M_NS,
    M_NOT_NS,
    M_PRIN,
    M_NOT_PRIN,
    M_SA,
    M_NOT_SA,
    M_SRC,
    M_NOT_SRC,
    M_DST,
    M_NOT_DST,
    M_PORT,
    M_NOT_PORT,
    M_COUNT
};
static const struct field match_fields[] = {
    {"namespaces", M_NS},
    {"notNamespaces", M_NOT_NS},
    {"principals", M_PRIN},
    {"notPrincipals", M_NOT_PRIN},
    {"serviceAccounts", M_SA},
    {"notServiceAccounts", M_NOT_SA},
    {"sourceIps", M_SRC},
    {"notSourceIps", M_NOT_SRC},
    {"destinationIps", M_DST},
    {"notDestinationIps", M_NOT_DST},
    {"destinationPorts", M_PORT},
    {"notDestinationPorts", M_NOT_PORT},
    {NULL, 0},
};

static int match_field(struct pctx *c, int id, void *ud)
{
    struct auth_match *m = ud;
    static const item_fn fns[M_COUNT] = {sm_item,   sm_item,   sm_item,   sm_item,   sa_item,   sa_item,
                                         cidr_item, cidr_item, cidr_item, cidr_item, port_item, port_item};
    static const size_t esz[M_COUNT] = {sizeof(struct string_match),
                                        sizeof(struct string_match),
                                        sizeof(struct string_match),
                                        sizeof(struct string_match),
                                        sizeof(struct sa_match),
                                        sizeof(struct sa_match),
                                        sizeof(struct cidr),
                                        sizeof(struct cidr),
                                        sizeof(struct cidr),
                                        sizeof(struct cidr),
                                        sizeof(uint16_t),
                                        sizeof(uint16_t)};
    const void **dst[M_COUNT] = {
        (const void **)&m->namespaces,        (const void **)&m->not_namespaces,
        (const void **)&m->principals,        (const void **)&m->not_principals,
        (const void **)&m->service_accounts,  (const void **)&m->not_service_accounts,
        (const void **)&m->source_ips,        (const void **)&m->not_source_ips,
        (const void **)&m->destination_ips,   (const void **)&m->not_destination_ips,
        (const void **)&m->destination_ports, (const void **)&m->not_destination_ports};
    size_t *cnt[M_COUNT] = {&m->n_namespaces,          &m->n_not_namespaces,    &m->n_principals,
                            &m->n_not_principals,      &m->n_service_accounts,  &m->n_not_service_accounts,
                            &m->n_source_ips,          &m->n_not_source_ips,    &m->n_destination_ips,
                            &m->n_not_destination_ips, &m->n_destination_ports, &m->n_not_destination_ports};
    struct vec v = {.esz = esz[id]};
    int rc = parse_seq(c, fns[id], &v);
    if (rc) {
        vec_free(&v);
        return rc;
    }
    return vec_finish(c, &v, dst[id], cnt[id]);
}

static int match_item(struct pctx *c, size_t idx, void *ud)
{
    struct auth_match *m = vec_push(ud);
    if (!m) return fail_nomem(c);
    if (c->ev.type != YAML_MAPPING_START_EVENT) return type_error(c, "a match mapping");
    return parse_struct(c, match_fields, match_field, m);
}

/* Parses a list whose items go into a vector of esz-sized elements, then into the arena. */
static int parse_list(struct pctx *c, item_fn fn, size_t esz, const void **out, size_t *n)
{
    struct vec v = {.esz = esz};
    int rc = parse_seq(c, fn, &v);
    if (rc) {
        vec_free(&v);
        return rc;
    }
    return vec_finish(c, &v, out, n);
}

static int clause_item(struct pctx *c, size_t idx, void *ud)
{
    struct auth_clause *cl = vec_push(ud);
    if (!cl) return fail_nomem(c);
    if (c->ev.type != YAML_SEQUENCE_START_EVENT) return type_error(c, "a list of matches");
    return parse_list(c, match_item, sizeof(struct auth_match), (const void **)&cl->matches, &cl->n_matches);
}

static int rule_item(struct pctx *c, size_t idx, void *ud)
{
    struct auth_rule *r = vec_push(ud);
    if (!r) return fail_nomem(c);
    if (c->ev.type != YAML_SEQUENCE_START_EVENT) return type_error(c, "a list of clauses");
    return parse_list(c, clause_item, sizeof(struct auth_clause), (const void **)&r->clauses, &r->n_clauses);
}

struct pol_ctx {
    struct policy p;
    yaml_mark_t name_mark;
};

static int policy_field(struct pctx *c, int id, void *ud)
{
    struct pol_ctx *x = ud;
    int v = 0;
    switch (id) {
    case P_NAME:
        x->name_mark = ev_mark(c);
        return get_str(c, &x->p.name);
    case P_NS:
        return get_str(c, &x->p.namespace_);
    case P_SCOPE:
        TRY(get_enum(c, pscope_enum, "Global, Namespace or WorkloadSelector", &v));
        x->p.scope = (uint8_t)v;
        return 0;
    case P_ACTION:
        TRY(get_enum(c, action_enum, "Allow or Deny", &v));
        x->p.action = (uint8_t)v;
        return 0;
    case P_DRYRUN:
        return get_bool(c, &x->p.dry_run);
    case P_RULES:
        return parse_list(c, rule_item, sizeof(struct auth_rule), (const void **)&x->p.rules, &x->p.n_rules);
    }
    return -EINVAL;
}

static int policy_item(struct pctx *c, size_t idx, void *ud)
{
    struct snapshot *s = c->s;
    struct pol_ctx x = {.p = {.name = "", .namespace_ = ""}, .name_mark = ev_mark(c)};
    char p[80];
    if (s->n_policies >= UINT32_MAX) return fail(c, x.name_mark, "too many policies");
    if (c->ev.type != YAML_MAPPING_START_EVENT) return type_error(c, "a mapping");
    TRY(parse_struct(c, policy_fields, policy_field, &x));
    TRY(grow_array(c, (void **)&s->policies, s->n_policies, &c->cap_policies, sizeof(struct policy)));
    size_t nl = strlen(x.p.namespace_), ml = strlen(x.p.name);
    char *key = arena_alloc(&s->arena, nl + ml + 2);
    if (!key) return fail_nomem(c);
    memcpy(key, x.p.namespace_, nl);
    key[nl] = '/';
    memcpy(key + nl + 1, x.p.name, ml);
    uint32_t old;
    int rc = htab_insert(&s->pol_by_name, key, nl + 1 + ml, (uint32_t)s->n_policies, &old);
    if (rc == -EEXIST) {
        path_push(c, ".name");
        return fail(c, x.name_mark, "duplicate policy \"%s\" (also policies[%u])", printable(key, p), old);
    }
    if (rc) return fail_nomem(c);
    s->policies[s->n_policies++] = x.p;
    return 0;
}

/* ---- root ---- */

enum { R_WORKLOADS, R_SERVICES, R_POLICIES };
static const struct field root_fields[] = {
    {"workloads", R_WORKLOADS}, {"services", R_SERVICES}, {"policies", R_POLICIES}, {NULL, 0}};

static int root_field(struct pctx *c, int id, void *ud)
{
    switch (id) {
    case R_WORKLOADS:
        return parse_seq(c, workload_item, NULL);
    case R_SERVICES:
        return parse_seq(c, service_item, NULL);
    default:
        return parse_seq(c, policy_item, NULL);
    }
}

static int parse_root(struct pctx *c)
{
    TRY(ev_next(c)); /* STREAM_START */
    TRY(ev_next(c));
    if (c->ev.type == YAML_STREAM_END_EVENT) return 0; /* empty file */
    TRY(ev_next(c));                                   /* root node after DOCUMENT_START */
    if (c->ev.type == YAML_SEQUENCE_START_EVENT) {
        /* Older ztunnel local configs are a bare list of workloads. */
        size_t saved = path_push(c, "workloads");
        TRY(parse_seq(c, workload_item, NULL));
        path_pop(c, saved);
    } else {
        TRY(parse_struct(c, root_fields, root_field, NULL));
    }
    TRY(ev_next(c)); /* DOCUMENT_END */
    TRY(ev_next(c));
    if (c->ev.type != YAML_STREAM_END_EVENT)
        return fail(c, ev_mark(c), "multiple YAML documents are not supported");
    return 0;
}

int config_load_buf(const char *buf, size_t len, const char *name, struct snapshot **out, char *err,
                    size_t errlen)
{
    struct pctx c = {.name = name ? name : "<config>", .err = err, .errlen = errlen};
    int rc;
    if (errlen) err[0] = '\0';
    if (len > CONFIG_MAX_FILE) {
        if (errlen)
            snprintf(err, errlen, "%s: file too large (%zu bytes, limit %zu)", c.name, len, CONFIG_MAX_FILE);
        return -EFBIG;
    }
    c.s = snapshot_new();
    if (!c.s) return fail_nomem(&c);
    if (!yaml_parser_initialize(&c.yp)) {
        snapshot_unref(c.s);
        return fail_nomem(&c);
    }
    yaml_parser_set_input_string(&c.yp, (const unsigned char *)(buf ? buf : ""), buf ? len : 0);
    rc = parse_root(&c);
    if (c.have_ev) yaml_event_delete(&c.ev);
    yaml_parser_delete(&c.yp);
    if (!rc && snapshot_finalize(c.s)) rc = fail_nomem(&c);
    if (rc) {
        snapshot_unref(c.s);
        return rc;
    }
    *out = c.s;
    return 0;
}

int config_load_file(const char *path, struct snapshot **out, char *err, size_t errlen)
{
    int rc = 0;
    char *buf = NULL;
    struct stat st;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        rc = -errno;
        goto io_err;
    }
    if (fstat(fd, &st) < 0) {
        rc = -errno;
        goto io_err;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = -EINVAL;
        if (errlen) snprintf(err, errlen, "%s: not a regular file", path);
        goto out;
    }
    if ((size_t)st.st_size > CONFIG_MAX_FILE) {
        rc = -EFBIG;
        if (errlen)
            snprintf(err, errlen, "%s: file too large (%lld bytes, limit %zu)", path, (long long)st.st_size,
                     CONFIG_MAX_FILE);
        goto out;
    }
    /* Read up to one byte past the limit so a file that grew after fstat is still caught. */
    size_t cap = (size_t)st.st_size + 1, len = 0;
    buf = malloc(cap);
    if (!buf) {
        rc = -ENOMEM;
        if (errlen) snprintf(err, errlen, "%s: out of memory", path);
        goto out;
    }
    for (;;) {
        if (len == cap) {
            if (cap > CONFIG_MAX_FILE) {
                rc = -EFBIG;
                if (errlen) snprintf(err, errlen, "%s: file too large (limit %zu)", path, CONFIG_MAX_FILE);
                goto out;
            }
            size_t ncap = cap * 2 > CONFIG_MAX_FILE + 1 ? CONFIG_MAX_FILE + 1 : cap * 2;
            char *nb = realloc(buf, ncap);
            if (!nb) {
                rc = -ENOMEM;
                goto out;
            }
            buf = nb;
            cap = ncap;
        }
        ssize_t r = read(fd, buf + len, cap - len);
        if (r < 0) {
            if (errno == EINTR) continue;
            rc = -errno;
            goto io_err;
        }
        if (r == 0) break;
        len += (size_t)r;
    }
    rc = config_load_buf(buf, len, path, out, err, errlen);
    goto out;
io_err:
    if (errlen) snprintf(err, errlen, "%s: %s", path, strerror(-rc));
out:
    if (fd >= 0) close(fd);
    free(buf);
    return rc;
}
