/* Local config (LOCAL_XDS_PATH) loader: a streaming recursive-descent walk over libyaml events that hands
 * each resource to the snapshot builder (builder.h). No document tree is built, so memory stays proportional
 * to the result, and the walk only descends where the schema allows, so nesting is bounded by the schema
 * itself. This file owns only what is YAML: events, marks, field names and aliases, types, unknown keys.
 * Defaults, validation, indexes and duplicate checks are the builder's; its findings come back here and are
 * mapped to the mark of the field they name (see the mark log below).
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

#include "core/vec.h"
#include "core/log.h"
#include "mesh/builder.h"
#include "mesh/config.h"
#include "mesh/snapshot_impl.h"

#define PATH_MAX_LEN 256

#define TRY(expr)                                                                                            \
    do {                                                                                                     \
        int rc_ = (expr);                                                                                    \
        if (rc_) return rc_;                                                                                 \
    } while (0)

/* The mark log: for the resource being walked, where each field the builder may name begins, and its YAML
 * path. A builder finding (field + list indexes) is looked up here to report file:line:col and the path. */
struct mark_ent {
    enum builder_field field;
    unsigned n_idx;
    uint32_t idx[BUILDER_MAX_IDX];
    yaml_mark_t m;
    size_t path_off, path_len; /* in pctx.mark_paths */
};

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
    struct snapshot_builder *b;
    /* The current resource's strings and arrays, until the builder has copied them. */
    struct arena scratch;
    struct vec marks, mark_paths;
    /* Position inside a policy's rules, for the marks of Match items. */
    uint32_t pol_at[3];
    enum builder_field pol_field;
};
/* ---- errors and field paths ---- */

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
        char p[MESH_PRINTABLE_MAX];
        snprintf(buf, 96, "\"%s\"", mesh_printable((const char *)c->ev.data.scalar.value, p));
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

/* Moves the contents into the scratch arena (NULL when empty) and frees the vector. */
static int vec_finish(struct pctx *c, struct vec *v, const void **out, size_t *n)
{
    *n = v->n;
    *out = NULL;
    if (v->n) {
        *out = arena_memdup(&c->scratch, v->p, v->n * v->esz);
        if (!*out) return fail_nomem(c);
    }
    vec_free(v);
    return 0;
}

/* ---- scalar values ---- */

/* A string field: null gives "". The result lives in the scratch arena until the builder copies it. */
static int get_str(struct pctx *c, const char **out)
{
    const char *v;
    size_t n;
    if (ev_is_null(c)) {
        *out = "";
        return 0;
    }
    TRY(ev_scalar(c, "a string", &v, &n));
    char *d = arena_strndup(&c->scratch, v, n);
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
    char p[MESH_PRINTABLE_MAX];
    TRY(ev_scalar(c, "an integer", &v, &n));
    if (!parse_u64(v, n, out) || *out > max)
        return fail(c, ev_mark(c), "invalid integer \"%s\" (expected 0-%llu)", mesh_printable(v, p),
                    (unsigned long long)max);
    return 0;
}

/* Ports must be 1..65535; target ports may also be 0 ("unset") when allow_zero. */
static int port_from(struct pctx *c, const char *v, size_t n, bool allow_zero, uint16_t *out)
{
    uint64_t x;
    char p[MESH_PRINTABLE_MAX];
    if (!parse_u64(v, n, &x) || x > 65535 || (x == 0 && !allow_zero))
        return fail(c, ev_mark(c), "invalid port \"%s\" (expected %d-65535)", mesh_printable(v, p),
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
    char p[MESH_PRINTABLE_MAX];
    TRY(ev_scalar(c, "a boolean", &v, &n));
    if (!strcmp(v, "true") || !strcmp(v, "True") || !strcmp(v, "TRUE"))
        *out = true;
    else if (!strcmp(v, "false") || !strcmp(v, "False") || !strcmp(v, "FALSE"))
        *out = false;
    else
        return fail(c, ev_mark(c), "invalid boolean \"%s\" (expected true or false)", mesh_printable(v, p));
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
    char p[MESH_PRINTABLE_MAX];
    TRY(ev_scalar(c, expected, &v, &n));
    for (; tab->name; tab++) {
        if (!strcmp(tab->name, v)) {
            *out = tab->val;
            return 0;
        }
    }
    return fail(c, ev_mark(c), "invalid value \"%s\" (expected %s)", mesh_printable(v, p), expected);
}

static int ip_from(struct pctx *c, const char *v, struct ip_addr *ip)
{
    char p[MESH_PRINTABLE_MAX];
    if (ip_parse(v, ip) != 0) return fail(c, ev_mark(c), "invalid IP address \"%s\"", mesh_printable(v, p));
    return 0;
}

/* "network/ip"; the network is everything before the last '/' ("" = default network). */
static int split_net_addr(struct pctx *c, const char *v, size_t n, struct net_addr *out, bool quiet)
{
    char p[MESH_PRINTABLE_MAX];
    const char *slash = memrchr(v, '/', n);
    if (!slash) {
        if (quiet) return -EINVAL;
        return fail(c, ev_mark(c), "invalid address \"%s\" (expected \"network/ip\", e.g. \"/10.0.0.1\")",
                    mesh_printable(v, p));
    }
    if (ip_parse(slash + 1, &out->ip) != 0) {
        if (quiet) return -EINVAL;
        return fail(c, ev_mark(c), "invalid IP address in \"%s\"", mesh_printable(v, p));
    }
    char *net = arena_strndup(&c->scratch, v, (size_t)(slash - v));
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
        char key[CONFIG_MAX_STR + 1], p[MESH_PRINTABLE_MAX];
        TRY(ev_scalar(c, "a field name", &k, &kl));
        memcpy(key, k, kl + 1);
        yaml_mark_t km = ev_mark(c);
        size_t saved = path_push(c, c->plen ? ".%s" : "%s", mesh_printable(key, p));
        const struct field *f = fields;
        while (f->name && strcmp(f->name, key))
            f++;
        if (!f->name) return fail(c, km, "unknown field \"%s\"", mesh_printable(key, p));
        if (seen & (1ULL << f->id)) return fail(c, km, "duplicate field \"%s\"", mesh_printable(key, p));
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
        char key[CONFIG_MAX_STR + 1], p[MESH_PRINTABLE_MAX];
        TRY(ev_scalar(c, "a scalar key", &k, &kl));
        memcpy(key, k, kl + 1);
        yaml_mark_t km = ev_mark(c);
        size_t saved = path_push(c, quote_keys ? "[\"%s\"]" : "[%s]", mesh_printable(key, p));
        TRY(ev_next(c));
        TRY(fn(c, key, kl, km, ud));
        path_pop(c, saved);
    }
}

/* ---- the mark log ---- */

static void marks_reset(struct pctx *c)
{
    c->marks.n = 0;
    c->mark_paths.n = 0;
    arena_reset(&c->scratch);
}

/* Notes that the builder's (field, idx) starts at mark m, at the current YAML path. */
static int mark_rec(struct pctx *c, enum builder_field f, unsigned n_idx, const uint32_t *idx, yaml_mark_t m)
{
    struct mark_ent *e = vec_push(&c->marks);
    if (!e) return fail_nomem(c);
    e->field = f;
    e->n_idx = n_idx;
    for (unsigned i = 0; i < n_idx && i < BUILDER_MAX_IDX; i++)
        e->idx[i] = idx[i];
    e->m = m;
    e->path_off = c->mark_paths.n;
    e->path_len = c->plen;
    struct vec *v = &c->mark_paths;
    if (v->cap - v->n < c->plen) {
        size_t ncap = v->cap * 2 > v->n + c->plen ? v->cap * 2 : v->n + c->plen + PATH_MAX_LEN;
        char *np = realloc(v->p, ncap);
        if (!np) return fail_nomem(c);
        v->p = np;
        v->cap = ncap;
    }
    memcpy(v->p + v->n, c->path, c->plen);
    v->n += c->plen;
    return 0;
}

/* YAML keys of the fields a finding may name without the walker having seen them (a missing or defaulted
 * value): the error then points at the resource and names the key. */
static const char *yaml_key(enum builder_field f)
{
    switch (f) {
    case BF_WL_UID:
        return "uid";
    case BF_SVC_HOSTNAME:
        return "hostname";
    case BF_POL_NAME:
        return "name";
    default:
        return NULL;
    }
}

/* Reports a builder finding at the mark of the field it names: the exact (field, idx) when the walk passed
 * it, else the closest enclosing one, else the resource itself. list names the resources ("workloads") for
 * "(also list[i])" when the finding is a duplicate. */
static int fail_builder(struct pctx *c, const struct builder_err *e, const char *list)
{
    const struct mark_ent *ents = (const struct mark_ent *)c->marks.p, *best = NULL;
    char also[64] = "";
    for (size_t i = 0; i < c->marks.n; i++) {
        const struct mark_ent *m = &ents[i];
        if (m->field != e->field || m->n_idx > e->n_idx) continue;
        if (memcmp(m->idx, e->idx, m->n_idx * sizeof(m->idx[0]))) continue;
        if (!best || m->n_idx > best->n_idx) best = m;
        if (m->n_idx == e->n_idx) break;
    }
    const char *suffix = NULL;
    if (!best && c->marks.n) {
        best = &ents[0]; /* the resource's own start, recorded first */
        suffix = yaml_key(e->field);
    }
    if (e->other != UINT32_MAX) snprintf(also, sizeof(also), " (also %s[%u])", list, e->other);
    if (best) {
        memcpy(c->path, c->mark_paths.p + best->path_off, best->path_len);
        c->plen = best->path_len;
        c->path[c->plen] = '\0';
        if (suffix) path_push(c, ".%s", suffix);
        return fail(c, best->m, "%s%s", e->reason, also);
    }
    return fail(c, ev_mark(c), "%s%s", e->reason, also);
}

/* Maps a builder result: findings become file:line:col errors; fatal errors pass through. */
static int builder_rc(struct pctx *c, int rc, const struct builder_err *e, const char *list)
{
    if (rc == -EINVAL) return fail_builder(c, e, list);
    if (rc == -ENOMEM) return fail_nomem(c);
    if (rc) return fail(c, ev_mark(c), "too many %s", list);
    return 0;
}

/* ---- port maps {svcPort: targetPort} ---- */

struct port_ctx {
    struct vec v; /* struct port_map, in input order: the builder sorts and finds duplicates */
    enum builder_field field;
    unsigned n_idx;
    uint32_t idx[BUILDER_MAX_IDX];
};

static int port_entry(struct pctx *c, const char *key, size_t kl, yaml_mark_t km, void *ud)
{
    struct port_ctx *x = ud;
    struct port_map *e = vec_push(&x->v);
    if (!e) return fail_nomem(c);
    x->idx[x->n_idx] = (uint32_t)(x->v.n - 1);
    TRY(mark_rec(c, x->field, x->n_idx + 1, x->idx, km));
    /* Report a bad key at the key itself. */
    uint64_t v;
    char p[MESH_PRINTABLE_MAX];
    if (!parse_u64(key, kl, &v) || v == 0 || v > 65535)
        return fail(c, km, "invalid port \"%s\" (expected 1-65535)", mesh_printable(key, p));
    e->port = (uint16_t)v;
    return get_port(c, true, &e->target);
}

/* Parses a port map into the scratch arena; field and idx name it for the builder's findings. */
static int parse_port_map(struct pctx *c, enum builder_field field, unsigned n_idx, const uint32_t *idx,
                          const struct port_map **out, size_t *n)
{
    struct port_ctx x = {.v = VEC(struct port_map), .field = field, .n_idx = n_idx};
    for (unsigned i = 0; i < n_idx; i++)
        x.idx[i] = idx[i];
    int rc = parse_dynmap(c, false, port_entry, &x);
    if (rc) {
        vec_free(&x.v);
        return rc;
    }
    return vec_finish(c, &x.v, (const void **)out, n);
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
    char p[MESH_PRINTABLE_MAX];
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
                    mesh_printable(v, p));
    g->ns = arena_strndup(&c->scratch, v, (size_t)(slash - v));
    g->host = arena_strndup(&c->scratch, slash + 1, (size_t)(v + n - slash - 1));
    if (!g->ns || !g->host) return fail_nomem(c);
    g->set = true;
    g->is_host = true;
    return 0;
}

/* Parses a GatewayAddress; its default port and the "destination is required" rule are the builder's. */
static int parse_gateway(struct pctx *c, enum builder_field field, struct gateway_addr *g)
{
    *g = (struct gateway_addr){.network = "", .ns = "", .host = ""};
    TRY(mark_rec(c, field, 0, NULL, ev_mark(c)));
    if (ev_is_null(c)) return 0;
    return parse_struct(c, gateway_fields, gateway_field, g);
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

struct wl_ctx {
    struct workload w;
    struct vec ips, svcs, pols;
};

static int ip_item(struct pctx *c, size_t idx, void *ud)
{
    struct wl_ctx *x = ud;
    struct ip_addr *e = vec_push(&x->ips);
    const char *v;
    size_t n;
    if (!e) return fail_nomem(c);
    TRY(mark_rec(c, BF_WL_ADDRESSES, 1, (uint32_t[]){(uint32_t)(x->ips.n - 1)}, ev_mark(c)));
    TRY(ev_scalar(c, "an IP address string", &v, &n));
    return ip_from(c, v, e);
}

static int wl_service_entry(struct pctx *c, const char *key, size_t kl, yaml_mark_t km, void *ud)
{
    struct vec *svcs = ud;
    struct wl_service_ports *e = vec_push(svcs);
    if (!e) return fail_nomem(c);
    uint32_t i = (uint32_t)(svcs->n - 1);
    TRY(mark_rec(c, BF_WL_SERVICES, 1, &i, km));
    e->key = arena_strndup(&c->scratch, key, kl);
    if (!e->key) return fail_nomem(c);
    return parse_port_map(c, BF_WL_SERVICE_PORTS, 1, &i, &e->ports, &e->n_ports);
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
        TRY(mark_rec(c, BF_WL_UID, 0, NULL, ev_mark(c)));
        return get_str(c, &w->uid);
    case W_NAME:
        return get_str(c, &w->name);
    case W_NS:
        return get_str(c, &w->namespace_);
    case W_HOSTNAME:
        return get_str(c, &w->hostname);
    case W_IPS: /* a list only: a scalar here is a mistake, not one address */
        return parse_seq(c, ip_item, x);
    case W_IP:
        return ip_item(c, 0, x);
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
        return parse_gateway(c, BF_WL_WAYPOINT, &w->waypoint);
    case W_NETGW:
        return parse_gateway(c, BF_WL_NETWORK_GATEWAY, &w->network_gateway);
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
        TRY(mark_rec(c, BF_WL_APP_TUNNEL, 0, NULL, ev_mark(c)));
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

/* The builder's warning about a workload, logged with the position of the resource in the file. */
static void yaml_warn(void *ud, const struct builder_err *w)
{
    struct pctx *c = ud;
    const struct mark_ent *start = c->marks.n ? (const struct mark_ent *)c->marks.p : NULL;
    char where[PATH_MAX_LEN + 64];
    if (start)
        snprintf(where, sizeof(where), "%s:%zu:%zu: %.*s", c->name, start->m.line + 1, start->m.column + 1,
                 (int)start->path_len, c->mark_paths.p + start->path_off);
    else
        snprintf(where, sizeof(where), "%s", c->name);
    log_kv(LOG_WARN, "config", w->reason, "at", where, builder_kind_name(w->kind), w->resource, "workloadIps",
           w->detail, NULL);
}

static int workload_item(struct pctx *c, size_t idx, void *ud)
{
    /* Unset fields as ztunnel's serde defaults leave them; the builder fills in the rest. capacity is an
     * optional UInt32Value in the proto, so absent means 1 (an explicit 0 stays 0). */
    struct wl_ctx x = {
        .w = {.healthy = true, .capacity = 1},
        .ips = VEC(struct ip_addr),
        .svcs = VEC(struct wl_service_ports),
        .pols = VEC(const char *),
    };
    struct builder_err e;
    int rc;
    marks_reset(c);
    rc = mark_rec(c, BF_NONE, 0, NULL, ev_mark(c));
    if (rc) goto out;
    if (c->ev.type != YAML_MAPPING_START_EVENT) {
        rc = type_error(c, "a mapping");
        goto out;
    }
    rc = parse_struct(c, workload_fields, workload_field, &x);
    if (rc) goto out;
    x.w.ips = (const struct ip_addr *)x.ips.p;
    x.w.n_ips = x.ips.n;
    x.w.services = (const struct wl_service_ports *)x.svcs.p;
    x.w.n_services = x.svcs.n;
    x.w.authorization_policies = (const char *const *)x.pols.p;
    x.w.n_authorization_policies = x.pols.n;
    rc = builder_rc(c, builder_add_workload(c->b, &x.w, &e), &e, "workloads");
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
};

static int vip_item(struct pctx *c, size_t idx, void *ud)
{
    struct net_addr *e = vec_push(ud);
    const char *v;
    size_t n;
    if (!e) return fail_nomem(c);
    TRY(mark_rec(c, BF_SVC_VIPS, 1, (uint32_t[]){(uint32_t)idx}, ev_mark(c)));
    TRY(ev_scalar(c, "an address string \"network/ip\"", &v, &n));
    return split_net_addr(c, v, n, e, false);
}

static int pref_item(struct pctx *c, size_t idx, void *ud)
{
    uint8_t *e = vec_push(ud);
    int v = 0;
    if (!e) return fail_nomem(c);
    TRY(mark_rec(c, BF_SVC_ROUTING_PREFS, 1, (uint32_t[]){(uint32_t)idx}, ev_mark(c)));
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
        TRY(mark_rec(c, BF_SVC_HOSTNAME, 0, NULL, ev_mark(c)));
        return get_str(c, &svc->hostname);
    case S_VIPS:
        return parse_seq(c, vip_item, &x->vips);
    case S_PORTS:
        return parse_port_map(c, BF_SVC_PORTS, 0, NULL, &svc->ports, &svc->n_ports);
    case S_SANS:
        return parse_str_list(c, &svc->subject_alt_names, &svc->n_sans);
    case S_WAYPOINT:
        return parse_gateway(c, BF_SVC_WAYPOINT, &svc->waypoint);
    case S_LB:
        return parse_struct(c, lb_fields, lb_field, x);
    case S_IPFAM:
        TRY(get_enum(c, ipfam_enum, "Dual, IPv4 or IPv6", &v));
        svc->ip_families = (uint8_t)v;
        return 0;
    }
    return -EINVAL;
}

static int service_item(struct pctx *c, size_t idx, void *ud)
{
    struct svc_ctx x = {.vips = VEC(struct net_addr), .prefs = VEC(uint8_t)};
    struct builder_err e;
    int rc;
    marks_reset(c);
    rc = mark_rec(c, BF_NONE, 0, NULL, ev_mark(c));
    if (rc) goto out;
    if (c->ev.type != YAML_MAPPING_START_EVENT) {
        rc = type_error(c, "a mapping");
        goto out;
    }
    rc = parse_struct(c, service_fields, service_field, &x);
    if (rc) goto out;
    x.svc.vips = (const struct net_addr *)x.vips.p;
    x.svc.n_vips = x.vips.n;
    x.svc.routing_prefs = (const uint8_t *)x.prefs.p;
    x.svc.n_routing_prefs = x.prefs.n;
    rc = builder_rc(c, builder_add_service(c->b, &x.svc, &e), &e, "services");
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
    char buf[CONFIG_MAX_STR + 1], p[MESH_PRINTABLE_MAX];
    if (!e) return fail_nomem(c);
    TRY(ev_scalar(c, "an address block \"ip/len\" or \"ip\"", &v, &n));
    memcpy(buf, v, n + 1);
    char *slash = strchr(buf, '/');
    if (slash) *slash = '\0';
    if (ip_parse(buf, &e->ip) != 0)
        return fail(c, ev_mark(c), "invalid IP address \"%s\"", mesh_printable(v, p));
    unsigned max = e->ip.family == AF_INET ? 32 : 128;
    uint64_t len = max;
    if (slash && (!parse_u64(slash + 1, strlen(slash + 1), &len) || len > max))
        return fail(c, ev_mark(c), "invalid prefix length in \"%s\" (expected 0-%u)", mesh_printable(v, p),
                    max);
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

static const item_fn match_item_fns[M_COUNT] = {sm_item,   sm_item,   sm_item,   sm_item,
                                                sa_item,   sa_item,   cidr_item, cidr_item,
                                                cidr_item, cidr_item, port_item, port_item};

/* One item of a Match list: noted in the mark log under its (rule, clause, match, item), then parsed. */
static int match_list_item(struct pctx *c, size_t idx, void *ud)
{
    uint32_t at[BUILDER_MAX_IDX] = {c->pol_at[0], c->pol_at[1], c->pol_at[2], (uint32_t)idx};
    TRY(mark_rec(c, c->pol_field, BUILDER_MAX_IDX, at, ev_mark(c)));
    return match_item_fns[c->pol_field - BF_POL_NAMESPACES](c, idx, ud);
}

static int match_field(struct pctx *c, int id, void *ud)
{
    struct auth_match *m = ud;
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
    /* The M_ ids follow auth_match's (and the builder's BF_POL_*) order. */
    c->pol_field = (enum builder_field)(BF_POL_NAMESPACES + id);
    int rc = parse_seq(c, match_list_item, &v);
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
    c->pol_at[2] = (uint32_t)idx;
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
    c->pol_at[1] = (uint32_t)idx;
    if (c->ev.type != YAML_SEQUENCE_START_EVENT) return type_error(c, "a list of matches");
    return parse_list(c, match_item, sizeof(struct auth_match), (const void **)&cl->matches, &cl->n_matches);
}

static int rule_item(struct pctx *c, size_t idx, void *ud)
{
    struct auth_rule *r = vec_push(ud);
    if (!r) return fail_nomem(c);
    c->pol_at[0] = (uint32_t)idx;
    if (c->ev.type != YAML_SEQUENCE_START_EVENT) return type_error(c, "a list of clauses");
    return parse_list(c, clause_item, sizeof(struct auth_clause), (const void **)&r->clauses, &r->n_clauses);
}

static int policy_field(struct pctx *c, int id, void *ud)
{
    struct policy *p = ud;
    int v = 0;
    switch (id) {
    case P_NAME:
        TRY(mark_rec(c, BF_POL_NAME, 0, NULL, ev_mark(c)));
        return get_str(c, &p->name);
    case P_NS:
        return get_str(c, &p->namespace_);
    case P_SCOPE:
        TRY(get_enum(c, pscope_enum, "Global, Namespace or WorkloadSelector", &v));
        p->scope = (uint8_t)v;
        return 0;
    case P_ACTION:
        TRY(get_enum(c, action_enum, "Allow or Deny", &v));
        p->action = (uint8_t)v;
        return 0;
    case P_DRYRUN:
        return get_bool(c, &p->dry_run);
    case P_RULES:
        return parse_list(c, rule_item, sizeof(struct auth_rule), (const void **)&p->rules, &p->n_rules);
    }
    return -EINVAL;
}

static int policy_item(struct pctx *c, size_t idx, void *ud)
{
    struct policy p = {0};
    struct builder_err e;
    marks_reset(c);
    TRY(mark_rec(c, BF_NONE, 0, NULL, ev_mark(c)));
    if (c->ev.type != YAML_MAPPING_START_EVENT) return type_error(c, "a mapping");
    TRY(parse_struct(c, policy_fields, policy_field, &p));
    return builder_rc(c, builder_add_policy(c->b, &p, &e), &e, "policies");
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
    /* A LocalConfig file is one unit, as in ztunnel (one serde parse): any finding fails the whole load. */
    struct builder_opts opts = {.strict = true, .warn = yaml_warn, .warn_ud = &c};
    struct snapshot *s = NULL;
    c.marks = VEC(struct mark_ent);
    c.mark_paths = VEC(char);
    if (snapshot_builder_new(&c.b, &opts)) return fail_nomem(&c);
    if (!yaml_parser_initialize(&c.yp)) {
        builder_free(c.b);
        return fail_nomem(&c);
    }
    yaml_parser_set_input_string(&c.yp, (const unsigned char *)(buf ? buf : ""), buf ? len : 0);
    rc = parse_root(&c);
    if (c.have_ev) yaml_event_delete(&c.ev);
    yaml_parser_delete(&c.yp);
    vec_free(&c.marks);
    vec_free(&c.mark_paths);
    arena_free(&c.scratch);
    if (rc) {
        builder_free(c.b);
        return rc;
    }
    rc = builder_finish(c.b, &s);
    if (rc) return rc == -ENOMEM ? fail_nomem(&c) : rc;
    *out = s;
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
