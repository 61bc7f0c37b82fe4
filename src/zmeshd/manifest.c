/* Manifest reader: Kubernetes YAML documents into the typed objects of manifest.h.
 *
 * Unlike the LocalConfig walker (src/mesh/config.c), which follows one schema down libyaml's event stream,
 * a Kubernetes document says what it is in `kind`, and `kind` may come after `spec`. So each document is
 * first read from the same event stream into a small tree (bounded: depth, node count and scalar length;
 * aliases refused as in config.c), then the typed object is read from the tree, where every node keeps its
 * line for messages. The tree lives in a scratch arena that is reset per document; the typed objects copy
 * what they keep into the store's arena. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <yaml.h>

#include "core/vec.h"
#include "core/log.h"
#include "core/net.h"
#include "mesh/snapshot_impl.h"
#include "zmeshd/manifest.h"

#define LOG_TARGET "manifest"
#define PATH_LEN 256
/* Unknown kinds are warned about once each; more distinct unknown kinds than this are not remembered. */
#define MAX_WARNED_KINDS 64

const char *const k8s_src_field_names[K8S_SRC_COUNT] = {
    [K8S_SRC_PRINCIPALS] = "principals",
    [K8S_SRC_NOT_PRINCIPALS] = "notPrincipals",
    [K8S_SRC_REQUEST_PRINCIPALS] = "requestPrincipals",
    [K8S_SRC_NOT_REQUEST_PRINCIPALS] = "notRequestPrincipals",
    [K8S_SRC_NAMESPACES] = "namespaces",
    [K8S_SRC_NOT_NAMESPACES] = "notNamespaces",
    [K8S_SRC_IP_BLOCKS] = "ipBlocks",
    [K8S_SRC_NOT_IP_BLOCKS] = "notIpBlocks",
    [K8S_SRC_REMOTE_IP_BLOCKS] = "remoteIpBlocks",
    [K8S_SRC_NOT_REMOTE_IP_BLOCKS] = "notRemoteIpBlocks",
    [K8S_SRC_SERVICE_ACCOUNTS] = "serviceAccounts",
    [K8S_SRC_NOT_SERVICE_ACCOUNTS] = "notServiceAccounts",
};
const char *const k8s_op_field_names[K8S_OP_COUNT] = {
    [K8S_OP_HOSTS] = "hosts",        [K8S_OP_NOT_HOSTS] = "notHosts", [K8S_OP_PORTS] = "ports",
    [K8S_OP_NOT_PORTS] = "notPorts", [K8S_OP_METHODS] = "methods",    [K8S_OP_NOT_METHODS] = "notMethods",
    [K8S_OP_PATHS] = "paths",        [K8S_OP_NOT_PATHS] = "notPaths",
};

struct manifest_store {
    struct arena arena; /* every string and array of every object */
    struct vec namespaces, pods, services, sas, authz, peer, gateways, l7docs;
    unsigned order;
    const char *warned_kinds[MAX_WARNED_KINDS];
    size_t n_warned_kinds;
};

int manifest_store_new(struct manifest_store **out)
{
    struct manifest_store *st = calloc(1, sizeof(*st));
    if (!st) return -ENOMEM;
    st->namespaces = VEC(struct k8s_namespace);
    st->pods = VEC(struct k8s_pod);
    st->services = VEC(struct k8s_service);
    st->sas = VEC(struct k8s_service_account);
    st->authz = VEC(struct k8s_authz_policy);
    st->peer = VEC(struct k8s_peer_authn);
    st->gateways = VEC(struct k8s_gateway);
    st->l7docs = VEC(struct manifest_l7_doc);
    *out = st;
    return 0;
}

void manifest_store_free(struct manifest_store *st)
{
    if (!st) return;
    vec_free(&st->namespaces);
    vec_free(&st->pods);
    vec_free(&st->services);
    vec_free(&st->sas);
    vec_free(&st->authz);
    vec_free(&st->peer);
    vec_free(&st->gateways);
    for (size_t i = 0; i < st->l7docs.n; i++)
        json_decref(((struct manifest_l7_doc *)st->l7docs.p)[i].doc);
    vec_free(&st->l7docs);
    arena_free(&st->arena);
    free(st);
}

#define ACCESSOR(fn, type, field)                                                                            \
    const type *fn(const struct manifest_store *st, size_t *n)                                               \
    {                                                                                                        \
        *n = st->field.n;                                                                                    \
        return (const type *)st->field.p;                                                                    \
    }
ACCESSOR(manifest_namespaces, struct k8s_namespace, namespaces)
ACCESSOR(manifest_pods, struct k8s_pod, pods)
ACCESSOR(manifest_services, struct k8s_service, services)
ACCESSOR(manifest_service_accounts, struct k8s_service_account, sas)
ACCESSOR(manifest_authz_policies, struct k8s_authz_policy, authz)
ACCESSOR(manifest_peer_authns, struct k8s_peer_authn, peer)
ACCESSOR(manifest_gateways, struct k8s_gateway, gateways)
ACCESSOR(manifest_l7_docs, struct manifest_l7_doc, l7docs)

const char *manifest_finding_format(const struct manifest_finding *f, char *buf, size_t n)
{
    if (!n) return buf;
    char line[32] = "";
    if (f->src.line) snprintf(line, sizeof(line), " (line %u)", f->src.line);
    if (f->field && *f->field)
        snprintf(buf, n, "%s#%u: %s: %s%s", f->src.file, f->src.doc, f->field, f->message, line);
    else
        snprintf(buf, n, "%s#%u: %s%s", f->src.file, f->src.doc, f->message, line);
    return buf;
}

const char *k8s_kv_get(const struct k8s_kv *kv, size_t n, const char *key)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(kv[mid].key, key);
        if (!c) return kv[mid].value;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

bool k8s_selector_matches(const struct k8s_kv *sel, size_t n_sel, const struct k8s_kv *labels,
                          size_t n_labels)
{
    for (size_t i = 0; i < n_sel; i++) {
        const char *v = k8s_kv_get(labels, n_labels, sel[i].key);
        if (!v || strcmp(v, sel[i].value)) return false;
    }
    return true;
}

/* ---- the document tree ---- */

enum mnode_type { MN_NULL = 0, MN_SCALAR, MN_MAP, MN_SEQ };
struct mnode {
    uint8_t type;
    bool plain; /* a plain (unquoted) scalar: the only kind that can be null, a number or a bool */
    unsigned line;
    const char *s; /* scalar text, NUL-terminated */
    size_t len;
    struct mnode *kids; /* MAP: key, value, key, value ...; SEQ: items */
    size_t n;           /* number of kids */
};

struct reader {
    struct manifest_store *st;
    manifest_report_fn report;
    void *ud;
    const char *file;
    unsigned doc;
    yaml_parser_t yp;
    struct arena tree; /* the current document's nodes, reset per document */
    size_t nodes;
    const char *doc_error; /* a structural problem found while reading the tree (first one) */
    unsigned doc_error_line;
    /* Reading a typed object: */
    char path[PATH_LEN];
    size_t plen;
    size_t base_len; /* length of the current object's own path prefix ("items[3]" in a List), else 0 */
    bool failed;
    /* What each document tree is handed to: read_object (the typed store) unless manifest_load_json set
     * a JSON callback (then st is NULL). */
    manifest_json_fn json_fn;
    void *json_ud;
};

void manifest_finding_emit(manifest_report_fn report, void *ud, const struct manifest_finding *f)
{
    if (report) {
        report(ud, f);
        return;
    }
    char buf[1024];
    manifest_finding_format(f, buf, sizeof(buf));
    log_kv(f->level == MANIFEST_ERROR  ? LOG_ERROR
           : f->level == MANIFEST_WARN ? LOG_WARN
                                       : LOG_INFO,
           LOG_TARGET, buf, NULL);
}

static void report(struct reader *r, enum manifest_level lvl, unsigned line, const char *field,
                   const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static void report(struct reader *r, enum manifest_level lvl, unsigned line, const char *field,
                   const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    struct manifest_finding f = {
        .level = lvl, .src = {.file = r->file, .doc = r->doc, .line = line}, .field = field, .message = msg};
    manifest_finding_emit(r->report, r->ud, &f);
}

static void set_doc_error(struct reader *r, unsigned line, const char *why)
{
    if (r->doc_error) return;
    r->doc_error = why;
    r->doc_error_line = line;
}

/* Reads the node whose first event is ev (consumed here) into *out. Returns 0, -EINVAL on a YAML syntax error
 * (the rest of the file cannot be read) or -ENOMEM. Structural problems (alias, depth, size) are noted in
 * r->doc_error and the offending subtree is read as null. */
static int read_node(struct reader *r, yaml_event_t *ev, struct mnode *out, unsigned depth)
{
    int rc = 0;
    struct vec kids = VEC(struct mnode);
    yaml_event_type_t end;
    memset(out, 0, sizeof(*out));
    out->line = (unsigned)ev->start_mark.line + 1;
    if (++r->nodes > MANIFEST_MAX_NODES) set_doc_error(r, out->line, "document has too many YAML nodes");
    switch (ev->type) {
    case YAML_ALIAS_EVENT:
        /* A small document could expand into a huge one ("billion laughs"); manifests have no use for them.
         */
        set_doc_error(r, out->line, "YAML aliases are not supported");
        yaml_event_delete(ev);
        return 0;
    case YAML_SCALAR_EVENT: {
        size_t n = ev->data.scalar.length;
        const char *v = (const char *)ev->data.scalar.value;
        out->plain = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
        if (out->plain &&
            (n == 0 || (n == 1 && v[0] == '~') ||
             (n == 4 && (!memcmp(v, "null", 4) || !memcmp(v, "Null", 4) || !memcmp(v, "NULL", 4))))) {
            yaml_event_delete(ev);
            return 0;
        }
        if (n > MANIFEST_MAX_SCALAR)
            set_doc_error(r, out->line, "a scalar is longer than the limit (256 KiB)");
        else if (memchr(v, '\0', n))
            set_doc_error(r, out->line, "a scalar contains a NUL byte");
        else if (!r->doc_error) {
            out->s = arena_strndup(&r->tree, v, n);
            if (!out->s) rc = -ENOMEM;
            out->len = n;
            out->type = MN_SCALAR;
        }
        yaml_event_delete(ev);
        return rc;
    }
    case YAML_MAPPING_START_EVENT:
        out->type = MN_MAP;
        end = YAML_MAPPING_END_EVENT;
        break;
    case YAML_SEQUENCE_START_EVENT:
        out->type = MN_SEQ;
        end = YAML_SEQUENCE_END_EVENT;
        break;
    default:
        yaml_event_delete(ev);
        return -EINVAL;
    }
    yaml_event_delete(ev);
    if (depth >= MANIFEST_MAX_DEPTH) set_doc_error(r, out->line, "document nested too deeply");
    for (;;) {
        yaml_event_t e;
        if (!yaml_parser_parse(&r->yp, &e)) {
            rc = r->yp.error == YAML_MEMORY_ERROR ? -ENOMEM : -EINVAL;
            goto out;
        }
        if (e.type == end) {
            yaml_event_delete(&e);
            break;
        }
        if (r->doc_error && depth >= MANIFEST_MAX_DEPTH) {
            /* Too deep: skip the subtree without recursing further (iteratively, by counting). */
            long open = (e.type == YAML_MAPPING_START_EVENT || e.type == YAML_SEQUENCE_START_EVENT) ? 1 : 0;
            yaml_event_delete(&e);
            while (open > 0) {
                if (!yaml_parser_parse(&r->yp, &e)) {
                    rc = r->yp.error == YAML_MEMORY_ERROR ? -ENOMEM : -EINVAL;
                    goto out;
                }
                if (e.type == YAML_MAPPING_START_EVENT || e.type == YAML_SEQUENCE_START_EVENT) open++;
                if (e.type == YAML_MAPPING_END_EVENT || e.type == YAML_SEQUENCE_END_EVENT) open--;
                yaml_event_delete(&e);
            }
            continue;
        }
        struct mnode *k = vec_push(&kids);
        if (!k) {
            yaml_event_delete(&e);
            rc = -ENOMEM;
            goto out;
        }
        rc = read_node(r, &e, k, depth + 1);
        if (rc) goto out;
        if (r->doc_error) kids.n = 0; /* the document is refused anyway: keep memory bounded */
    }
    if (kids.n) {
        out->kids = arena_memdup(&r->tree, kids.p, kids.n * sizeof(struct mnode));
        if (!out->kids) rc = -ENOMEM;
        out->n = kids.n;
    }
out:
    vec_free(&kids);
    return rc;
}

/* ---- reading typed objects from the tree ---- */

static size_t path_push(struct reader *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static size_t path_push(struct reader *r, const char *fmt, ...)
{
    size_t old = r->plen;
    if (r->plen && fmt[0] != '[' && r->plen < sizeof(r->path) - 1) r->path[r->plen++] = '.';
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(r->path + r->plen, sizeof(r->path) - r->plen, fmt, ap);
    va_end(ap);
    if (n > 0) r->plen += (size_t)n;
    if (r->plen >= sizeof(r->path)) r->plen = sizeof(r->path) - 1;
    return old;
}

static void path_pop(struct reader *r, size_t old)
{
    r->plen = old;
    r->path[old] = '\0';
}

/* The document is left out: reports once, with the current path. Returns -EINVAL. */
static int bad(struct reader *r, const struct mnode *at, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int bad(struct reader *r, const struct mnode *at, const char *fmt, ...)
{
    if (r->failed) return -EINVAL;
    r->failed = true;
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    report(r, MANIFEST_ERROR, at ? at->line : 0, r->path, "%s", msg);
    return -EINVAL;
}

static void warn_field(struct reader *r, const struct mnode *at, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void warn_field(struct reader *r, const struct mnode *at, const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    report(r, MANIFEST_WARN, at ? at->line : 0, r->path, "%s", msg);
}

static const char *node_kind(const struct mnode *n)
{
    switch (n->type) {
    case MN_MAP:
        return "a mapping";
    case MN_SEQ:
        return "a list";
    case MN_SCALAR:
        return "a scalar";
    default:
        return "null";
    }
}

static const struct mnode *map_get(const struct mnode *m, const char *key)
{
    if (!m || m->type != MN_MAP) return NULL;
    for (size_t i = 0; i + 1 < m->n; i += 2)
        if (m->kids[i].type == MN_SCALAR && !strcmp(m->kids[i].s, key)) return &m->kids[i + 1];
    return NULL;
}

/* Warns about every key of m that is not in known (NULL-terminated): a field zmeshd does not read. */
static void warn_unknown_keys(struct reader *r, const struct mnode *m, const char *const *known,
                              const char *why)
{
    if (!m || m->type != MN_MAP) return;
    for (size_t i = 0; i + 1 < m->n; i += 2) {
        const char *k = m->kids[i].type == MN_SCALAR ? m->kids[i].s : "?";
        bool ok = false;
        for (const char *const *q = known; *q && !ok; q++)
            ok = !strcmp(*q, k);
        if (ok) continue;
        char p[MESH_PRINTABLE_MAX];
        size_t old = path_push(r, "%s", mesh_printable(k, p));
        warn_field(r, &m->kids[i], "%s", why);
        path_pop(r, old);
    }
}

static int mnode_key_cmp(const void *a, const void *b)
{
    const struct mnode *x = *(const struct mnode *const *)a, *y = *(const struct mnode *const *)b;
    int r = strcmp(x->s, y->s);
    return r ? r : (x->line > y->line) - (x->line < y->line);
}

static int check_map(struct reader *r, const struct mnode *n)
{
    if (n->type != MN_MAP) return bad(r, n, "expected a mapping, got %s", node_kind(n));
    /* libyaml does not refuse duplicate keys; Kubernetes' decoder does, and a second value would be a silent
     * override here. Sorted, so a hostile mapping with many keys costs n log n, not n squared. */
    size_t nk = 0;
    const struct mnode **keys = n->n >= 4 ? malloc(n->n / 2 * sizeof(*keys)) : NULL;
    if (n->n >= 4 && !keys) return -ENOMEM;
    for (size_t i = 0; i + 1 < n->n; i += 2)
        if (n->kids[i].type == MN_SCALAR && keys) keys[nk++] = &n->kids[i];
    int rc = 0;
    if (nk > 1) qsort(keys, nk, sizeof(*keys), mnode_key_cmp);
    for (size_t i = 1; i < nk && !rc; i++)
        if (!strcmp(keys[i]->s, keys[i - 1]->s)) rc = bad(r, keys[i], "duplicate key \"%s\"", keys[i]->s);
    free(keys);
    return rc;
}

static const char *keep(struct reader *r, const char *s)
{
    return arena_strndup(&r->st->arena, s, strlen(s));
}

/* A scalar field (strings, numbers and bools all read as text); absent or null gives "". */
static int get_str(struct reader *r, const struct mnode *m, const char *key, const char **out)
{
    const struct mnode *v = map_get(m, key);
    *out = "";
    if (!v || v->type == MN_NULL) return 0;
    size_t old = path_push(r, "%s", key);
    int rc = 0;
    if (v->type != MN_SCALAR)
        rc = bad(r, v, "expected a string, got %s", node_kind(v));
    else if (!(*out = keep(r, v->s)))
        rc = -ENOMEM;
    path_pop(r, old);
    return rc;
}

static int get_bool(struct reader *r, const struct mnode *m, const char *key, bool *out)
{
    const struct mnode *v = map_get(m, key);
    *out = false;
    if (!v || v->type == MN_NULL) return 0;
    size_t old = path_push(r, "%s", key);
    int rc = 0;
    if (v->type == MN_SCALAR && v->plain && !strcmp(v->s, "true"))
        *out = true;
    else if (!(v->type == MN_SCALAR && v->plain && !strcmp(v->s, "false")))
        rc = bad(r, v, "expected true or false");
    path_pop(r, old);
    return rc;
}

/* Parses a port 1..65535 from a scalar (an integer, or an all-digit string). Returns 0, -EINVAL (not
 * digits) or -ERANGE. */
static int parse_port(const struct mnode *v, uint16_t *port)
{
    if (v->type != MN_SCALAR || !v->len || v->len > 5) return -EINVAL;
    unsigned long p = 0;
    for (size_t i = 0; i < v->len; i++) {
        if (v->s[i] < '0' || v->s[i] > '9') return -EINVAL;
        p = p * 10 + (unsigned long)(v->s[i] - '0');
    }
    if (p < 1 || p > 65535) return -ERANGE;
    *port = (uint16_t)p;
    return 0;
}

static int get_port(struct reader *r, const struct mnode *m, const char *key, bool required, uint16_t *out)
{
    const struct mnode *v = map_get(m, key);
    *out = 0;
    size_t old = path_push(r, "%s", key);
    int rc = 0;
    if (!v || v->type == MN_NULL) {
        if (required) rc = bad(r, m, "required field is missing");
    } else if (parse_port(v, out)) {
        rc = bad(r, v, "expected a port 1-65535, got %s%s%s", v->type == MN_SCALAR ? "\"" : "",
                 v->type == MN_SCALAR ? v->s : node_kind(v), v->type == MN_SCALAR ? "\"" : "");
    }
    path_pop(r, old);
    return rc;
}

static int get_strs(struct reader *r, const struct mnode *m, const char *key, struct k8s_strs *out)
{
    const struct mnode *v = map_get(m, key);
    memset(out, 0, sizeof(*out));
    if (!v || v->type == MN_NULL) return 0;
    size_t old = path_push(r, "%s", key);
    int rc = 0;
    if (v->type != MN_SEQ) {
        rc = bad(r, v, "expected a list of strings, got %s", node_kind(v));
        goto out;
    }
    if (!v->n) goto out;
    const char **a = arena_alloc(&r->st->arena, v->n * sizeof(*a));
    if (!a) {
        rc = -ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < v->n; i++) {
        if (v->kids[i].type != MN_SCALAR) {
            size_t o2 = path_push(r, "[%zu]", i);
            rc = bad(r, &v->kids[i], "expected a string, got %s", node_kind(&v->kids[i]));
            path_pop(r, o2);
            goto out;
        }
        if (!(a[i] = keep(r, v->kids[i].s))) {
            rc = -ENOMEM;
            goto out;
        }
    }
    out->v = a;
    out->n = v->n;
out:
    path_pop(r, old);
    return rc;
}

static int kv_cmp(const void *a, const void *b)
{
    return strcmp(((const struct k8s_kv *)a)->key, ((const struct k8s_kv *)b)->key);
}

/* A map of string to string (labels, annotations, selectors), sorted by key. */
static int get_kv(struct reader *r, const struct mnode *m, const char *key, const struct k8s_kv **out,
                  size_t *n, bool *present)
{
    const struct mnode *v = map_get(m, key);
    *out = NULL;
    *n = 0;
    if (present) *present = v != NULL;
    if (!v || v->type == MN_NULL) return 0;
    size_t old = path_push(r, "%s", key);
    int rc = check_map(r, v);
    if (rc || !v->n) goto out;
    struct k8s_kv *a = arena_alloc(&r->st->arena, v->n / 2 * sizeof(*a));
    if (!a) {
        rc = -ENOMEM;
        goto out;
    }
    for (size_t i = 0; i + 1 < v->n; i += 2) {
        const struct mnode *k = &v->kids[i], *val = &v->kids[i + 1];
        if (k->type != MN_SCALAR || val->type == MN_MAP || val->type == MN_SEQ) {
            rc = bad(r, k, "expected string keys and values");
            goto out;
        }
        a[i / 2].key = keep(r, k->s);
        a[i / 2].value = val->type == MN_SCALAR ? keep(r, val->s) : "";
        if (!a[i / 2].key || !a[i / 2].value) {
            rc = -ENOMEM;
            goto out;
        }
    }
    *n = v->n / 2;
    qsort(a, *n, sizeof(*a), kv_cmp);
    *out = a;
out:
    path_pop(r, old);
    return rc;
}

/* metadata: name (required), namespace (default "default" for namespaced kinds), uid, labels, annotations,
 * creationTimestamp, deletionTimestamp. */
static int read_meta(struct reader *r, const struct mnode *doc, bool namespaced, struct k8s_meta *m)
{
    const struct mnode *md = map_get(doc, "metadata");
    size_t old = path_push(r, "metadata");
    int rc;
    if (!md) {
        rc = bad(r, doc, "required field is missing");
        goto out;
    }
    if ((rc = check_map(r, md))) goto out;
    const char *del;
    if ((rc = get_str(r, md, "name", &m->name)) || (rc = get_str(r, md, "namespace", &m->namespace_)) ||
        (rc = get_str(r, md, "uid", &m->uid)) || (rc = get_str(r, md, "creationTimestamp", &m->creation)) ||
        (rc = get_str(r, md, "deletionTimestamp", &del)) ||
        (rc = get_kv(r, md, "labels", &m->labels, &m->n_labels, NULL)) ||
        (rc = get_kv(r, md, "annotations", &m->annotations, &m->n_annotations, NULL)))
        goto out;
    m->deleting = *del != '\0';
    if (!*m->name) {
        size_t o2 = path_push(r, "name");
        rc = bad(r, md, "required field is missing");
        path_pop(r, o2);
        goto out;
    }
    if (!namespaced)
        m->namespace_ = "";
    else if (!*m->namespace_)
        m->namespace_ = "default"; /* kubectl apply's default namespace */
    m->src = (struct manifest_src){.file = keep(r, r->file), .doc = r->doc, .line = doc->line};
    if (!m->src.file) rc = -ENOMEM;
    m->order = r->st->order++;
out:
    path_pop(r, old);
    return rc;
}

/* ---- Pod ---- */

/* One container's ports, appended to *ports. */
static int read_container_ports(struct reader *r, const struct mnode *c, struct vec *ports)
{
    int rc = check_map(r, c);
    const struct mnode *cp = map_get(c, "ports");
    if (rc || !cp || cp->type == MN_NULL) return rc;
    size_t old = path_push(r, "ports");
    if (cp->type != MN_SEQ) rc = bad(r, cp, "expected a list, got %s", node_kind(cp));
    for (size_t j = 0; !rc && j < cp->n; j++) {
        size_t o2 = path_push(r, "[%zu]", j);
        struct k8s_container_port *e = vec_push(ports);
        if (!e)
            rc = -ENOMEM;
        else if (!(rc = check_map(r, &cp->kids[j])) && !(rc = get_str(r, &cp->kids[j], "name", &e->name)) &&
                 !(rc = get_str(r, &cp->kids[j], "protocol", &e->protocol)))
            rc = get_port(r, &cp->kids[j], "containerPort", true, &e->port);
        if (!rc && !*e->protocol) e->protocol = "TCP";
        path_pop(r, o2);
    }
    path_pop(r, old);
    return rc;
}

static int read_pod(struct reader *r, const struct mnode *doc, struct k8s_pod *p)
{
    int rc;
    size_t entry = r->plen; /* every path pushed below is popped back to here at out */
    struct vec ports = VEC(struct k8s_container_port);
    if ((rc = read_meta(r, doc, true, &p->meta))) goto out;
    const struct mnode *md = map_get(doc, "metadata"), *owners = map_get(md, "ownerReferences");
    size_t old = path_push(r, "metadata");
    p->controller_kind = p->controller_name = "";
    if ((rc = get_str(r, md, "generateName", &p->generate_name))) goto out;
    if (owners && owners->type != MN_NULL) {
        size_t o2 = path_push(r, "ownerReferences");
        if (owners->type != MN_SEQ) rc = bad(r, owners, "expected a list, got %s", node_kind(owners));
        for (size_t i = 0; !rc && i < owners->n; i++) {
            size_t o3 = path_push(r, "[%zu]", i);
            const struct mnode *o = &owners->kids[i];
            bool ctl = false;
            const char *kind, *name;
            if (!(rc = check_map(r, o)) && !(rc = get_bool(r, o, "controller", &ctl)) &&
                !(rc = get_str(r, o, "kind", &kind)) && !(rc = get_str(r, o, "name", &name)) && ctl &&
                !*p->controller_kind) {
                p->controller_kind = kind;
                p->controller_name = name;
            }
            path_pop(r, o3);
        }
        path_pop(r, o2);
        if (rc) goto out;
    }
    path_pop(r, old);
    const struct mnode *spec = map_get(doc, "spec"), *status = map_get(doc, "status");
    old = path_push(r, "spec");
    if (spec && (rc = check_map(r, spec))) goto out;
    if ((rc = get_str(r, spec, "nodeName", &p->node_name)) ||
        (rc = get_str(r, spec, "serviceAccountName", &p->service_account)) ||
        (rc = get_bool(r, spec, "hostNetwork", &p->host_network)))
        goto out;
    if (!*p->service_account && (rc = get_str(r, spec, "serviceAccount", &p->service_account))) goto out;
    const struct mnode *cs = map_get(spec, "containers");
    if (cs && cs->type != MN_NULL) {
        size_t o2 = path_push(r, "containers");
        if (cs->type != MN_SEQ) rc = bad(r, cs, "expected a list, got %s", node_kind(cs));
        for (size_t i = 0; !rc && i < cs->n; i++) {
            size_t o3 = path_push(r, "[%zu]", i);
            rc = read_container_ports(r, &cs->kids[i], &ports);
            path_pop(r, o3);
        }
        path_pop(r, o2);
        if (rc) goto out;
    }
    path_pop(r, old);
    old = path_push(r, "status");
    if (status && (rc = check_map(r, status))) goto out;
    const char *pod_ip;
    if ((rc = get_str(r, status, "phase", &p->phase)) || (rc = get_str(r, status, "podIP", &pod_ip)))
        goto out;
    const struct mnode *ips = map_get(status, "podIPs");
    if (ips && ips->type != MN_NULL) {
        size_t o2 = path_push(r, "podIPs");
        if (ips->type != MN_SEQ) rc = bad(r, ips, "expected a list, got %s", node_kind(ips));
        const char **a = NULL;
        if (!rc && ips->n && !(a = arena_alloc(&r->st->arena, ips->n * sizeof(*a)))) rc = -ENOMEM;
        for (size_t i = 0; !rc && i < ips->n; i++) {
            size_t o3 = path_push(r, "[%zu]", i);
            if (!(rc = check_map(r, &ips->kids[i])) && !(rc = get_str(r, &ips->kids[i], "ip", &a[i])) &&
                !*a[i]) {
                size_t o4 = path_push(r, "ip");
                rc = bad(r, &ips->kids[i], "required field is missing");
                path_pop(r, o4);
            }
            path_pop(r, o3);
        }
        path_pop(r, o2);
        if (rc) goto out;
        p->ips = (struct k8s_strs){.v = a, .n = ips->n};
    }
    if (!p->ips.n && *pod_ip) {
        const char **a = arena_alloc(&r->st->arena, sizeof(*a));
        if (!a) {
            rc = -ENOMEM;
            goto out;
        }
        a[0] = pod_ip;
        p->ips = (struct k8s_strs){.v = a, .n = 1};
    }
    /* Addresses are checked here so that a bad one names its field; istiod drops the whole pod for one. */
    for (size_t i = 0; i < p->ips.n; i++) {
        struct ip_addr ip;
        if (ip_parse(p->ips.v[i], &ip)) {
            size_t o2 = p->ips.n > 1 || map_get(status, "podIPs") ? path_push(r, "podIPs[%zu].ip", i)
                                                                  : path_push(r, "podIP");
            rc = bad(r, status, "invalid IP address \"%s\"", p->ips.v[i]);
            path_pop(r, o2);
            goto out;
        }
    }
    const struct mnode *conds = map_get(status, "conditions");
    if (conds && conds->type != MN_NULL) {
        size_t o2 = path_push(r, "conditions");
        if (conds->type != MN_SEQ) rc = bad(r, conds, "expected a list, got %s", node_kind(conds));
        for (size_t i = 0; !rc && i < conds->n; i++) {
            size_t o3 = path_push(r, "[%zu]", i);
            const char *type, *st;
            if (!(rc = check_map(r, &conds->kids[i])) && !(rc = get_str(r, &conds->kids[i], "type", &type)) &&
                !(rc = get_str(r, &conds->kids[i], "status", &st)) && !strcmp(type, "Ready"))
                p->ready = !strcmp(st, "True");
            path_pop(r, o3);
        }
        path_pop(r, o2);
        if (rc) goto out;
    }
    if (ports.n) {
        p->ports = arena_memdup(&r->st->arena, ports.p, ports.n * ports.esz);
        if (!p->ports) rc = -ENOMEM;
        p->n_ports = ports.n;
    }
out:
    path_pop(r, entry);
    vec_free(&ports);
    return rc;
}

/* ---- Service ---- */

/* status.loadBalancer.ingress[].ip: load balancer addresses are VIPs too (istiod's getVIPs). The path is
 * reported from the object's root (r->base_len), so it is set here rather than under spec. */
static int read_lb_ingress(struct reader *r, const struct mnode *status, struct k8s_strs *out)
{
    memset(out, 0, sizeof(*out));
    const struct mnode *ing = map_get(map_get(status, "loadBalancer"), "ingress");
    if (!ing || ing->type == MN_NULL) return 0;
    char saved[PATH_LEN];
    size_t saved_len = r->plen;
    memcpy(saved, r->path, sizeof(saved));
    r->plen = r->base_len;
    r->path[r->plen] = '\0';
    size_t old = path_push(r, "status.loadBalancer.ingress");
    int rc = 0;
    const char **a = NULL;
    if (ing->type != MN_SEQ)
        rc = bad(r, ing, "expected a list, got %s", node_kind(ing));
    else if (ing->n && !(a = arena_alloc(&r->st->arena, ing->n * sizeof(*a))))
        rc = -ENOMEM;
    for (size_t i = 0; !rc && i < ing->n; i++) {
        size_t o2 = path_push(r, "[%zu]", i);
        const char *ip;
        struct ip_addr addr;
        if (!(rc = check_map(r, &ing->kids[i])) && !(rc = get_str(r, &ing->kids[i], "ip", &ip)) && *ip) {
            if (ip_parse(ip, &addr)) {
                size_t o3 = path_push(r, "ip");
                rc = bad(r, &ing->kids[i], "invalid IP address \"%s\"", ip);
                path_pop(r, o3);
            } else {
                a[out->n++] = ip;
            }
        }
        path_pop(r, o2);
    }
    out->v = a;
    path_pop(r, old);
    memcpy(r->path, saved, sizeof(saved));
    r->plen = saved_len;
    return rc;
}

static int read_service(struct reader *r, const struct mnode *doc, struct k8s_service *s)
{
    int rc;
    if ((rc = read_meta(r, doc, true, &s->meta))) return rc;
    const struct mnode *spec = map_get(doc, "spec");
    size_t old = path_push(r, "spec");
    if (!spec) {
        rc = bad(r, doc, "required field is missing");
        goto out;
    }
    if ((rc = check_map(r, spec))) goto out;
    const char *cip;
    if ((rc = get_str(r, spec, "type", &s->type)) || (rc = get_str(r, spec, "clusterIP", &cip)) ||
        (rc = get_strs(r, spec, "clusterIPs", &s->cluster_ips)) ||
        (rc = get_kv(r, spec, "selector", &s->selector, &s->n_selector, NULL)))
        goto out;
    s->has_selector = s->n_selector > 0;
    if (!s->cluster_ips.n && *cip) {
        const char **a = arena_alloc(&r->st->arena, sizeof(*a));
        if (!a) {
            rc = -ENOMEM;
            goto out;
        }
        a[0] = cip;
        s->cluster_ips = (struct k8s_strs){.v = a, .n = 1};
    }
    for (size_t i = 0; i < s->cluster_ips.n; i++) {
        struct ip_addr ip;
        if (strcmp(s->cluster_ips.v[i], "None") && ip_parse(s->cluster_ips.v[i], &ip)) {
            size_t o2 =
                map_get(spec, "clusterIPs") ? path_push(r, "clusterIPs[%zu]", i) : path_push(r, "clusterIP");
            rc = bad(r, spec, "invalid IP address \"%s\"", s->cluster_ips.v[i]);
            path_pop(r, o2);
            goto out;
        }
    }
    if ((rc = get_str(r, spec, "internalTrafficPolicy", &s->internal_traffic_policy)) ||
        (rc = get_str(r, spec, "trafficDistribution", &s->traffic_distribution)) ||
        (rc = read_lb_ingress(r, map_get(doc, "status"), &s->lb_ips)))
        goto out;
    const struct mnode *ports = map_get(spec, "ports");
    if (ports && ports->type != MN_NULL) {
        size_t o2 = path_push(r, "ports");
        struct k8s_service_port *a = NULL;
        if (ports->type != MN_SEQ)
            rc = bad(r, ports, "expected a list, got %s", node_kind(ports));
        else if (ports->n && !(a = arena_alloc(&r->st->arena, ports->n * sizeof(*a))))
            rc = -ENOMEM;
        for (size_t i = 0; !rc && i < ports->n; i++) {
            const struct mnode *pn = &ports->kids[i];
            size_t o3 = path_push(r, "[%zu]", i);
            if (!(rc = check_map(r, pn)) && !(rc = get_str(r, pn, "name", &a[i].name)) &&
                !(rc = get_str(r, pn, "protocol", &a[i].protocol)) &&
                !(rc = get_str(r, pn, "appProtocol", &a[i].app_protocol)) &&
                !(rc = get_port(r, pn, "port", true, &a[i].port))) {
                if (!*a[i].protocol) a[i].protocol = "TCP";
                a[i].target_name = "";
                const struct mnode *t = map_get(pn, "targetPort");
                if (!t || t->type == MN_NULL) {
                    a[i].target_port = a[i].port; /* the API server's default */
                } else if (t->type == MN_SCALAR && t->len && strspn(t->s, "0123456789") == t->len) {
                    rc = get_port(r, pn, "targetPort", true, &a[i].target_port);
                } else if (t->type == MN_SCALAR) {
                    if (!(a[i].target_name = keep(r, t->s))) rc = -ENOMEM;
                } else {
                    size_t o4 = path_push(r, "targetPort");
                    rc = bad(r, t, "expected a port number or name, got %s", node_kind(t));
                    path_pop(r, o4);
                }
            }
            path_pop(r, o3);
        }
        path_pop(r, o2);
        s->ports = a;
        s->n_ports = rc ? 0 : ports->n;
    }
out:
    path_pop(r, old);
    return rc;
}

/* ---- AuthorizationPolicy ---- */

static const char *const authz_spec_keys[] = {"selector", "targetRef", "targetRefs", "action",
                                              "provider", "rules",     NULL};
static const char *const authz_rule_keys[] = {"from", "to", "when", NULL};
static const char *const condition_keys[] = {"key", "values", "notValues", NULL};
#define UNREAD_AUTHZ "field not read by zmeshd: ignored (not part of AuthorizationPolicy as istiod reads it)"

static int read_selector(struct reader *r, const struct mnode *spec, bool *present, const struct k8s_kv **kv,
                         size_t *n)
{
    const struct mnode *sel = map_get(spec, "selector");
    *present = sel != NULL && sel->type != MN_NULL;
    *kv = NULL;
    *n = 0;
    if (!*present) return 0;
    size_t old = path_push(r, "selector");
    int rc = check_map(r, sel);
    static const char *const keys[] = {"matchLabels", NULL};
    if (!rc) {
        warn_unknown_keys(r, sel, keys, "selector field not supported: only matchLabels is read");
        rc = get_kv(r, sel, "matchLabels", kv, n, NULL);
    }
    path_pop(r, old);
    return rc;
}

/* from[i].source or to[i].operation: a table of string lists. */
static int read_str_fields(struct reader *r, const struct mnode *list, const char *item_key,
                           const char *const *names, size_t n_names, struct k8s_strs *out_base, size_t stride,
                           size_t *n_out)
{
    int rc = 0;
    *n_out = 0;
    if (!list || list->type == MN_NULL) return 0;
    if (list->type != MN_SEQ) return bad(r, list, "expected a list, got %s", node_kind(list));
    for (size_t i = 0; !rc && i < list->n; i++) {
        size_t o = path_push(r, "[%zu]", i);
        const struct mnode *item = &list->kids[i];
        if (!(rc = check_map(r, item))) {
            const char *const keys[] = {item_key, NULL};
            warn_unknown_keys(r, item, keys, UNREAD_AUTHZ);
            const struct mnode *body = map_get(item, item_key);
            size_t o2 = path_push(r, "%s", item_key);
            if (body && body->type != MN_NULL && !(rc = check_map(r, body))) {
                const char *known[K8S_SRC_COUNT + 1];
                for (size_t k = 0; k < n_names; k++)
                    known[k] = names[k];
                known[n_names] = NULL;
                warn_unknown_keys(r, body, known, UNREAD_AUTHZ);
                struct k8s_strs *f = (struct k8s_strs *)((char *)out_base + i * stride);
                for (size_t k = 0; !rc && k < n_names; k++)
                    rc = get_strs(r, body, names[k], &f[k]);
            }
            path_pop(r, o2);
        }
        path_pop(r, o);
    }
    if (!rc) *n_out = list->n;
    return rc;
}

/* One AuthorizationPolicy rule: from, to, when. */
static int read_rule(struct reader *r, const struct mnode *rn, struct k8s_authz_rule *out)
{
    int rc;
    size_t entry = r->plen;
    if ((rc = check_map(r, rn))) goto out;
    warn_unknown_keys(r, rn, authz_rule_keys, UNREAD_AUTHZ);
    const struct mnode *from = map_get(rn, "from"), *to = map_get(rn, "to"), *when = map_get(rn, "when");
    size_t nf = from && from->type == MN_SEQ ? from->n : 0, nt = to && to->type == MN_SEQ ? to->n : 0;
    struct k8s_source *fs = nf ? arena_alloc(&r->st->arena, nf * sizeof(*fs)) : NULL;
    struct k8s_operation *ts = nt ? arena_alloc(&r->st->arena, nt * sizeof(*ts)) : NULL;
    if ((nf && !fs) || (nt && !ts)) {
        rc = -ENOMEM;
        goto out;
    }
    size_t o4 = path_push(r, "from");
    rc = read_str_fields(r, from, "source", k8s_src_field_names, K8S_SRC_COUNT, fs ? fs->f : NULL,
                         sizeof(*fs), &out->n_from);
    path_pop(r, o4);
    if (rc) goto out;
    o4 = path_push(r, "to");
    rc = read_str_fields(r, to, "operation", k8s_op_field_names, K8S_OP_COUNT, ts ? ts->f : NULL, sizeof(*ts),
                         &out->n_to);
    path_pop(r, o4);
    if (rc) goto out;
    out->from = fs;
    out->to = ts;
    if (when && when->type != MN_NULL) {
        o4 = path_push(r, "when");
        struct k8s_condition *ws = NULL;
        if (when->type != MN_SEQ)
            rc = bad(r, when, "expected a list, got %s", node_kind(when));
        else if (when->n && !(ws = arena_alloc(&r->st->arena, when->n * sizeof(*ws))))
            rc = -ENOMEM;
        for (size_t j = 0; !rc && j < when->n; j++) {
            size_t o5 = path_push(r, "[%zu]", j);
            const struct mnode *c = &when->kids[j];
            if (!(rc = check_map(r, c))) {
                warn_unknown_keys(r, c, condition_keys, UNREAD_AUTHZ);
                if (!(rc = get_str(r, c, "key", &ws[j].key)) &&
                    !(rc = get_strs(r, c, "values", &ws[j].values)))
                    rc = get_strs(r, c, "notValues", &ws[j].not_values);
                if (!rc && !*ws[j].key) {
                    size_t o6 = path_push(r, "key");
                    rc = bad(r, c, "required field is missing");
                    path_pop(r, o6);
                }
            }
            path_pop(r, o5);
        }
        path_pop(r, o4);
        out->when = ws;
        out->n_when = rc ? 0 : when->n;
    }
out:
    path_pop(r, entry);
    return rc;
}

/* Top-level keys of the Istio kinds: a misspelt "spec" must not silently become an empty policy. */
static const char *const istio_top_keys[] = {"apiVersion", "kind", "metadata", "spec", "status", NULL};

static int read_authz(struct reader *r, const struct mnode *doc, struct k8s_authz_policy *p)
{
    int rc;
    p->action = "";
    if ((rc = read_meta(r, doc, true, &p->meta))) return rc;
    warn_unknown_keys(r, doc, istio_top_keys, UNREAD_AUTHZ);
    const struct mnode *spec = map_get(doc, "spec");
    size_t old = path_push(r, "spec");
    if (!spec || spec->type == MN_NULL) goto out; /* an empty spec: ALLOW with no rules, i.e. allow nothing */
    if ((rc = check_map(r, spec))) goto out;
    warn_unknown_keys(r, spec, authz_spec_keys, UNREAD_AUTHZ);
    if ((rc = read_selector(r, spec, &p->has_selector, &p->selector, &p->n_selector)) ||
        (rc = get_str(r, spec, "action", &p->action)))
        goto out;
    const struct mnode *tr = map_get(spec, "targetRef"), *trs = map_get(spec, "targetRefs");
    p->has_target_refs = (tr && tr->type != MN_NULL) || (trs && trs->type == MN_SEQ && trs->n);
    const struct mnode *rules = map_get(spec, "rules");
    if (!rules || rules->type == MN_NULL) goto out;
    size_t o2 = path_push(r, "rules");
    struct k8s_authz_rule *a = NULL;
    if (rules->type != MN_SEQ)
        rc = bad(r, rules, "expected a list, got %s", node_kind(rules));
    else if (rules->n && !(a = arena_alloc(&r->st->arena, rules->n * sizeof(*a))))
        rc = -ENOMEM;
    for (size_t i = 0; !rc && i < rules->n; i++) {
        size_t o3 = path_push(r, "[%zu]", i);
        rc = read_rule(r, &rules->kids[i], &a[i]);
        path_pop(r, o3);
    }
    path_pop(r, o2);
    p->rules = a;
    p->n_rules = rc ? 0 : rules->n;
out:
    path_pop(r, old);
    return rc;
}

/* ---- PeerAuthentication ---- */

static int parse_mtls(struct reader *r, const struct mnode *m, uint8_t *mode)
{
    *mode = K8S_MTLS_UNSET;
    if (!m || m->type == MN_NULL) return 0;
    int rc = check_map(r, m);
    if (rc) return rc;
    static const char *const keys[] = {"mode", NULL};
    warn_unknown_keys(r, m, keys, "field not read by zmeshd: ignored");
    const struct mnode *v = map_get(m, "mode");
    if (!v || v->type == MN_NULL) return 0;
    static const char *const names[] = {"UNSET", "DISABLE", "PERMISSIVE", "STRICT"};
    for (uint8_t i = 0; i < 4; i++)
        if (v->type == MN_SCALAR && !strcmp(v->s, names[i])) {
            *mode = i;
            return 0;
        }
    size_t o = path_push(r, "mode");
    rc = bad(r, v, "expected UNSET, DISABLE, PERMISSIVE or STRICT");
    path_pop(r, o);
    return rc;
}

static int port_mtls_cmp(const void *a, const void *b)
{
    return (int)((const struct k8s_port_mtls *)a)->port - (int)((const struct k8s_port_mtls *)b)->port;
}

static int read_peer(struct reader *r, const struct mnode *doc, struct k8s_peer_authn *p)
{
    int rc;
    if ((rc = read_meta(r, doc, true, &p->meta))) return rc;
    warn_unknown_keys(r, doc, istio_top_keys, "field not read by zmeshd: ignored");
    const struct mnode *spec = map_get(doc, "spec");
    size_t old = path_push(r, "spec");
    if (!spec || spec->type == MN_NULL) goto out;
    if ((rc = check_map(r, spec))) goto out;
    static const char *const keys[] = {"selector", "mtls", "portLevelMtls", NULL};
    warn_unknown_keys(r, spec, keys, "field not read by zmeshd: ignored");
    bool has_sel;
    if ((rc = read_selector(r, spec, &has_sel, &p->selector, &p->n_selector))) goto out;
    size_t o2 = path_push(r, "mtls");
    rc = parse_mtls(r, map_get(spec, "mtls"), &p->mode);
    path_pop(r, o2);
    if (rc) goto out;
    const struct mnode *pl = map_get(spec, "portLevelMtls");
    if (!pl || pl->type == MN_NULL) goto out;
    o2 = path_push(r, "portLevelMtls");
    struct k8s_port_mtls *a = NULL;
    if (!(rc = check_map(r, pl)) && pl->n && !(a = arena_alloc(&r->st->arena, pl->n / 2 * sizeof(*a))))
        rc = -ENOMEM;
    for (size_t i = 0; !rc && i + 1 < pl->n; i += 2) {
        size_t o3 = path_push(r, "%s", pl->kids[i].type == MN_SCALAR ? pl->kids[i].s : "?");
        if (parse_port(&pl->kids[i], &a[i / 2].port))
            rc = bad(r, &pl->kids[i], "expected a port 1-65535 as the key");
        else
            rc = parse_mtls(r, &pl->kids[i + 1], &a[i / 2].mode);
        path_pop(r, o3);
    }
    path_pop(r, o2);
    if (rc) goto out;
    p->n_ports = pl->n / 2;
    qsort(a, p->n_ports, sizeof(*a), port_mtls_cmp);
    p->ports = a;
out:
    path_pop(r, old);
    return rc;
}

/* ---- Gateway ---- */

/* What a waypoint uses of a Gateway; the rest of the Gateway API is for ingress gateways, which zmesh does
 * not run, so those fields are warned about rather than silently dropped. */
static const char *const gateway_spec_keys[] = {"gatewayClassName", "listeners", NULL};
static const char *const gateway_listener_keys[] = {"name", "port", "protocol", "allowedRoutes", NULL};
static const char *const gateway_status_keys[] = {"addresses", "conditions", "listeners", NULL};
#define UNREAD_GATEWAY "field not read by zmeshd: ignored (zmesh reads a Gateway only as a waypoint)"

/* listeners[i].allowedRoutes: namespaces.from (All, Same, Selector) and namespaces.selector.matchLabels. */
static int read_allowed_routes(struct reader *r, const struct mnode *ar, struct k8s_gateway_listener *l)
{
    l->from = "";
    if (!ar || ar->type == MN_NULL) return 0;
    size_t old = path_push(r, "allowedRoutes");
    int rc = check_map(r, ar);
    static const char *const ar_keys[] = {"namespaces", NULL}, *const ns_keys[] = {"from", "selector", NULL};
    if (rc) goto out;
    warn_unknown_keys(r, ar, ar_keys, "field not read by zmeshd: ignored (routes of every kind may attach)");
    const struct mnode *ns = map_get(ar, "namespaces");
    if (!ns || ns->type == MN_NULL) goto out;
    size_t o2 = path_push(r, "namespaces");
    if (!(rc = check_map(r, ns))) {
        warn_unknown_keys(r, ns, ns_keys, UNREAD_GATEWAY);
        rc = get_str(r, ns, "from", &l->from);
    }
    if (!rc && *l->from && strcmp(l->from, "All") && strcmp(l->from, "Same") && strcmp(l->from, "Selector")) {
        size_t o3 = path_push(r, "from");
        char p[MESH_PRINTABLE_MAX];
        rc = bad(r, map_get(ns, "from"), "expected All, Same or Selector, got \"%s\"",
                 mesh_printable(l->from, p));
        path_pop(r, o3);
    }
    if (!rc) rc = read_selector(r, ns, &l->has_ns_selector, &l->ns_selector, &l->n_ns_selector);
    path_pop(r, o2);
out:
    path_pop(r, old);
    return rc;
}

static int read_gateway_listeners(struct reader *r, const struct mnode *spec, struct k8s_gateway *g)
{
    const struct mnode *ls = map_get(spec, "listeners");
    if (!ls || ls->type == MN_NULL) return 0;
    size_t old = path_push(r, "listeners");
    int rc = 0;
    struct k8s_gateway_listener *a = NULL;
    if (ls->type != MN_SEQ)
        rc = bad(r, ls, "expected a list, got %s", node_kind(ls));
    else if (ls->n > K8S_GATEWAY_MAX_LISTENERS)
        rc = bad(r, ls, "%zu listeners: at most %d are allowed", ls->n, K8S_GATEWAY_MAX_LISTENERS);
    else if (ls->n && !(a = arena_alloc(&r->st->arena, ls->n * sizeof(*a))))
        rc = -ENOMEM;
    for (size_t i = 0; !rc && i < ls->n; i++) {
        const struct mnode *ln = &ls->kids[i];
        size_t o2 = path_push(r, "[%zu]", i);
        memset(&a[i], 0, sizeof(a[i]));
        if (!(rc = check_map(r, ln))) {
            warn_unknown_keys(r, ln, gateway_listener_keys, UNREAD_GATEWAY);
            if (!(rc = get_str(r, ln, "name", &a[i].name)) &&
                !(rc = get_str(r, ln, "protocol", &a[i].protocol)) &&
                !(rc = get_port(r, ln, "port", true, &a[i].port)))
                rc = read_allowed_routes(r, map_get(ln, "allowedRoutes"), &a[i]);
            if (!rc && !*a[i].protocol) {
                size_t o3 = path_push(r, "protocol");
                rc = bad(r, ln, "required field is missing");
                path_pop(r, o3);
            }
        }
        path_pop(r, o2);
    }
    path_pop(r, old);
    g->listeners = a;
    g->n_listeners = rc ? 0 : ls->n;
    return rc;
}

static int read_gateway_status(struct reader *r, const struct mnode *status, struct k8s_gateway *g)
{
    if (!status || status->type == MN_NULL) return 0;
    size_t old = path_push(r, "status");
    int rc = check_map(r, status);
    if (rc) goto out;
    warn_unknown_keys(r, status, gateway_status_keys, UNREAD_GATEWAY);
    const struct mnode *as = map_get(status, "addresses");
    if (as && as->type != MN_NULL) {
        size_t o2 = path_push(r, "addresses");
        struct k8s_gateway_address *a = NULL;
        if (as->type != MN_SEQ)
            rc = bad(r, as, "expected a list, got %s", node_kind(as));
        else if (as->n > K8S_GATEWAY_MAX_ADDRESSES)
            rc = bad(r, as, "%zu addresses: at most %d are allowed", as->n, K8S_GATEWAY_MAX_ADDRESSES);
        else if (as->n && !(a = arena_alloc(&r->st->arena, as->n * sizeof(*a))))
            rc = -ENOMEM;
        for (size_t i = 0; !rc && i < as->n; i++) {
            size_t o3 = path_push(r, "[%zu]", i);
            if (!(rc = check_map(r, &as->kids[i])) && !(rc = get_str(r, &as->kids[i], "type", &a[i].type)) &&
                !(rc = get_str(r, &as->kids[i], "value", &a[i].value)) && !*a[i].value) {
                size_t o4 = path_push(r, "value");
                rc = bad(r, &as->kids[i], "required field is missing");
                path_pop(r, o4);
            }
            path_pop(r, o3);
        }
        path_pop(r, o2);
        g->addresses = a;
        g->n_addresses = rc ? 0 : as->n;
    }
    const struct mnode *cs = map_get(status, "conditions");
    if (!rc && cs && cs->type != MN_NULL) {
        size_t o2 = path_push(r, "conditions");
        struct k8s_gateway_condition *a = NULL;
        if (cs->type != MN_SEQ)
            rc = bad(r, cs, "expected a list, got %s", node_kind(cs));
        else if (cs->n && !(a = arena_alloc(&r->st->arena, cs->n * sizeof(*a))))
            rc = -ENOMEM;
        for (size_t i = 0; !rc && i < cs->n; i++) {
            const struct mnode *c = &cs->kids[i];
            size_t o3 = path_push(r, "[%zu]", i);
            if (!(rc = check_map(r, c)) && !(rc = get_str(r, c, "type", &a[i].type)) &&
                !(rc = get_str(r, c, "status", &a[i].status)) &&
                !(rc = get_str(r, c, "reason", &a[i].reason)))
                rc = get_str(r, c, "message", &a[i].message);
            path_pop(r, o3);
        }
        path_pop(r, o2);
        g->conditions = a;
        g->n_conditions = rc ? 0 : cs->n;
    }
out:
    path_pop(r, old);
    return rc;
}

static int read_gateway(struct reader *r, const struct mnode *doc, struct k8s_gateway *g)
{
    int rc;
    g->class_name = "";
    if ((rc = read_meta(r, doc, true, &g->meta))) return rc;
    warn_unknown_keys(r, doc, istio_top_keys, UNREAD_GATEWAY);
    const struct mnode *spec = map_get(doc, "spec");
    size_t old = path_push(r, "spec");
    if (!spec || spec->type == MN_NULL) {
        rc = bad(r, doc, "required field is missing");
        goto out;
    }
    if ((rc = check_map(r, spec))) goto out;
    warn_unknown_keys(r, spec, gateway_spec_keys, UNREAD_GATEWAY);
    if ((rc = get_str(r, spec, "gatewayClassName", &g->class_name))) goto out;
    if (!*g->class_name) {
        size_t o2 = path_push(r, "gatewayClassName");
        rc = bad(r, spec, "required field is missing");
        path_pop(r, o2);
        goto out;
    }
    rc = read_gateway_listeners(r, spec, g);
out:
    path_pop(r, old);
    if (!rc) rc = read_gateway_status(r, map_get(doc, "status"), g);
    return rc;
}

/* ---- documents ---- */

struct kind_def {
    const char *kind;
    const char *const *api_versions;
};
static const char *const core_v1[] = {"v1", NULL};
static const char *const security_versions[] = {"security.istio.io/v1", "security.istio.io/v1beta1", NULL};
static const char *const route_versions[] = {"gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1beta1",
                                             NULL};
static const char *const grpcroute_versions[] = {"gateway.networking.k8s.io/v1", NULL};
static const char *const virtualservice_versions[] = {"networking.istio.io/v1", "networking.istio.io/v1beta1",
                                                      "networking.istio.io/v1alpha3", NULL};
static const char *const destination_rule_versions[] = {"networking.istio.io/v1", "networking.istio.io/v1beta1",
                                                        "networking.istio.io/v1alpha3", NULL};
static const char *const gateway_versions[] = {"gateway.networking.k8s.io/v1",
                                               "gateway.networking.k8s.io/v1beta1", NULL};

static int warn_unknown_kind(struct reader *r, const struct mnode *doc, const char *kind)
{
    struct manifest_store *st = r->st;
    for (size_t i = 0; i < st->n_warned_kinds; i++)
        if (!strcmp(st->warned_kinds[i], kind)) return 0;
    if (st->n_warned_kinds < MAX_WARNED_KINDS) {
        const char *k = keep(r, kind);
        if (!k) return -ENOMEM;
        st->warned_kinds[st->n_warned_kinds++] = k;
    }
    char p[MESH_PRINTABLE_MAX];
    report(r, MANIFEST_WARN, doc->line, "kind",
           "kind %s is not used by zmeshd: skipped (this and every later document of this kind)",
           mesh_printable(kind, p));
    return 0;
}

/* Reads one document's object into the store. Errors are findings; returns 0 or -ENOMEM. */
static int read_item(struct reader *r, const struct mnode *doc, bool in_list);

static int read_object(struct reader *r, const struct mnode *doc)
{
    r->plen = 0;
    r->path[0] = '\0';
    r->failed = false;
    r->base_len = 0;
    return read_item(r, doc, false);
}

/* kind: List (what `kubectl get -o yaml` writes): each item is read as its own object, so one bad item
 * leaves the others in; findings name it "items[i]". Lists do not nest. */
static int read_list(struct reader *r, const struct mnode *doc)
{
    const struct mnode *items = map_get(doc, "items");
    if (!items || items->type == MN_NULL) return 0;
    size_t old = path_push(r, "items");
    int rc = 0;
    if (items->type != MN_SEQ) bad(r, items, "expected a list, got %s", node_kind(items));
    for (size_t i = 0; !rc && items->type == MN_SEQ && i < items->n; i++) {
        size_t o2 = path_push(r, "[%zu]", i);
        r->failed = false;
        r->base_len = r->plen;
        rc = read_item(r, &items->kids[i], true);
        path_pop(r, o2);
    }
    path_pop(r, old);
    r->base_len = 0;
    return rc;
}

static json_t *tree_json(struct reader *r, const struct mnode *n, int *rc);

/* Keeps doc as JSON for the L7 conversion. */
static int keep_l7_doc(struct reader *r, const struct mnode *doc, const char *kind)
{
    int rc = 0;
    json_t *j = tree_json(r, doc, &rc);
    if (!j) return rc == -ENOMEM ? rc : 0;
    struct manifest_l7_doc *e = vec_push(&r->st->l7docs);
    if (!e) {
        json_decref(j);
        return -ENOMEM;
    }
    e->kind = kind;
    e->doc = j;
    e->st = r->st;
    e->src = (struct manifest_src){.file = keep(r, r->file), .doc = r->doc, .line = doc->line};
    if (!e->src.file) return -ENOMEM;
    return 0;
}

static int read_item(struct reader *r, const struct mnode *doc, bool in_list)
{
    struct manifest_store *st = r->st;
    if (doc->type == MN_NULL) return 0; /* an empty document, e.g. after a trailing "---" */
    if (doc->type != MN_MAP) {
        bad(r, doc, "expected a Kubernetes object (a mapping), got %s", node_kind(doc));
        return 0;
    }
    int crc = check_map(r, doc);
    if (crc) return crc == -ENOMEM ? crc : 0;
    const struct mnode *kn = map_get(doc, "kind"), *av = map_get(doc, "apiVersion");
    if (!kn || kn->type != MN_SCALAR) {
        size_t o = path_push(r, "kind");
        bad(r, doc, kn ? "expected a string, got %s" : "required field is missing", kn ? node_kind(kn) : "");
        path_pop(r, o);
        return 0;
    }
    static const struct kind_def kinds[] = {
        {"Namespace", core_v1},
        {"Pod", core_v1},
        {"Service", core_v1},
        {"ServiceAccount", core_v1},
        {"AuthorizationPolicy", security_versions},
        {"PeerAuthentication", security_versions},
        {"Gateway", gateway_versions},
        {"HTTPRoute", route_versions},
        {"GRPCRoute", grpcroute_versions},
        {"RequestAuthentication", security_versions},
        {"DestinationRule", destination_rule_versions},
        {"VirtualService", virtualservice_versions},
    };
    if (!in_list && !strcmp(kn->s, "List") && av && av->type == MN_SCALAR && !strcmp(av->s, "v1"))
        return read_list(r, doc);
    const struct kind_def *kd = NULL;
    for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]) && !kd; i++)
        if (!strcmp(kinds[i].kind, kn->s)) kd = &kinds[i];
    if (!kd) return warn_unknown_kind(r, doc, kn->s);
    bool ok = false;
    for (const char *const *v = kd->api_versions; *v && av && av->type == MN_SCALAR && !ok; v++)
        ok = !strcmp(*v, av->s);
    if (!ok) {
        size_t o = path_push(r, "apiVersion");
        char p[MESH_PRINTABLE_MAX];
        bad(r, av ? av : doc, "%s %s is not supported for kind %s (expected %s%s%s)",
            av ? "apiVersion" : "missing", av && av->type == MN_SCALAR ? mesh_printable(av->s, p) : "",
            kd->kind, kd->api_versions[0], kd->api_versions[1] ? " or " : "",
            kd->api_versions[1] ? kd->api_versions[1] : "");
        path_pop(r, o);
        return 0;
    }
    /* Routes are converted from their whole document (src/zmeshd/l7.c reads them, findings and all). */
    if (kd == &kinds[7] || kd == &kinds[8] || kd == &kinds[9] || kd == &kinds[10])
        return keep_l7_doc(r, doc, kd->kind);
    if (kd == &kinds[11]) return keep_l7_doc(r, doc, kd->kind); /* VirtualService (src/zmeshd/vs.h) */
    /* The object is read into a local and appended only when it is whole, so a bad one leaves no trace. */
    int rc = 0;
    struct vec *list;
    union {
        struct k8s_namespace ns;
        struct k8s_service_account sa;
        struct k8s_pod pod;
        struct k8s_service svc;
        struct k8s_authz_policy ap;
        struct k8s_peer_authn pa;
        struct k8s_gateway gw;
    } o;
    memset(&o, 0, sizeof(o));
    if (kd == &kinds[0]) {
        rc = read_meta(r, doc, false, &o.ns.meta);
        list = &st->namespaces;
    } else if (kd == &kinds[1]) {
        rc = read_pod(r, doc, &o.pod);
        list = &st->pods;
    } else if (kd == &kinds[2]) {
        rc = read_service(r, doc, &o.svc);
        list = &st->services;
    } else if (kd == &kinds[3]) {
        rc = read_meta(r, doc, true, &o.sa.meta);
        list = &st->sas;
    } else if (kd == &kinds[4]) {
        rc = read_authz(r, doc, &o.ap);
        list = &st->authz;
    } else if (kd == &kinds[5]) {
        rc = read_peer(r, doc, &o.pa);
        list = &st->peer;
    } else {
        rc = read_gateway(r, doc, &o.gw);
        list = &st->gateways;
    }
    if (rc == -ENOMEM) return rc;
    if (rc || r->failed) return 0;
    void *e = vec_push(list);
    if (!e) return -ENOMEM;
    memcpy(e, &o, list->esz);
    /* A waypoint's policy (targetRefs) is converted for the waypoint from its whole document too. */
    if (kd == &kinds[4] && o.ap.has_target_refs) return keep_l7_doc(r, doc, "AuthorizationPolicy");
    return 0;
}

/* libyaml cannot resume after a syntax error: the documents before it stay, the rest of the file is reported
 * as skipped. Returns 0, or -ENOMEM when the parser ran out of memory. */
static int syntax_error(struct reader *r)
{
    if (r->yp.error == YAML_MEMORY_ERROR) return -ENOMEM;
    if (!r->doc) r->doc = 1;
    report(r, MANIFEST_ERROR, (unsigned)r->yp.problem_mark.line + 1, "",
           "YAML syntax error: %s: this and the rest of the file skipped",
           r->yp.problem ? r->yp.problem : "invalid YAML");
    return 0;
}

/* ---- documents as JSON (manifest_load_json) ---- */

/* A plain scalar as YAML's core schema types it (true/false, integers, floats); everything else, and every
 * quoted scalar, is a string, so "80" stays a string as Kubernetes' decoder keeps it. */
static json_t *scalar_json(const struct mnode *n)
{
    if (n->plain) {
        if (!strcmp(n->s, "true")) return json_true();
        if (!strcmp(n->s, "false")) return json_false();
        char *e;
        errno = 0;
        long long v = strtoll(n->s, &e, 10);
        if (n->len && !*e && !errno) return json_integer(v);
        double d = strtod(n->s, &e);
        if (n->len && !*e && (n->s[0] == '-' || n->s[0] == '.' || (n->s[0] >= '0' && n->s[0] <= '9')))
            return json_real(d);
    }
    return json_stringn(n->s, n->len);
}

/* The tree below n as jansson values (new reference, NULL on a duplicate key, reported, or -ENOMEM in *rc).
 */
static json_t *tree_json(struct reader *r, const struct mnode *n, int *rc)
{
    json_t *j = NULL;
    switch (n->type) {
    case MN_NULL:
        return json_null();
    case MN_SCALAR:
        if (!(j = scalar_json(n))) *rc = -ENOMEM;
        return j;
    case MN_SEQ:
        if (!(j = json_array())) goto nomem;
        for (size_t i = 0; i < n->n; i++) {
            json_t *k = tree_json(r, &n->kids[i], rc);
            if (!k || json_array_append_new(j, k)) goto fail;
        }
        return j;
    default:
        if (!(j = json_object())) goto nomem;
        for (size_t i = 0; i + 1 < n->n; i += 2) {
            const struct mnode *k = &n->kids[i];
            if (k->type != MN_SCALAR) {
                bad(r, k, "a mapping key is %s; only string keys are supported", node_kind(k));
                goto fail;
            }
            if (json_object_get(j, k->s)) {
                bad(r, k, "duplicate key \"%s\"", k->s);
                goto fail;
            }
            json_t *v = tree_json(r, &n->kids[i + 1], rc);
            if (!v || json_object_set_new(j, k->s, v)) goto fail;
        }
        return j;
    }
nomem:
    *rc = -ENOMEM;
fail:
    json_decref(j);
    if (!*rc && !r->failed) *rc = -ENOMEM; /* a jansson allocation failed without a finding */
    return NULL;
}

static int json_object_doc(struct reader *r, const struct mnode *root)
{
    if (root->type == MN_NULL) return 0;
    r->plen = 0;
    r->path[0] = '\0';
    r->failed = false;
    int rc = 0;
    json_t *j = tree_json(r, root, &rc);
    if (!j) return r->failed ? 0 : rc;
    struct manifest_src src = {.file = r->file, .doc = r->doc, .line = root->line};
    rc = r->json_fn(r->json_ud, j, &src);
    json_decref(j);
    return rc;
}

static int load_docs(struct reader *r, const char *buf, size_t len);

int manifest_load_json(const char *name, const char *buf, size_t len, manifest_report_fn report_fn, void *ud,
                       manifest_json_fn fn, void *fn_ud)
{
    struct reader r = {.report = report_fn, .ud = ud, .file = name, .json_fn = fn, .json_ud = fn_ud};
    return load_docs(&r, buf, len);
}

int manifest_load_buf(struct manifest_store *st, const char *name, const char *buf, size_t len,
                      manifest_report_fn report_fn, void *ud)
{
    struct reader r = {.st = st, .report = report_fn, .ud = ud, .file = name};
    return load_docs(&r, buf, len);
}

static int load_docs(struct reader *r_, const char *buf, size_t len)
{
    struct reader r = *r_;
    int rc = 0;
    if (!yaml_parser_initialize(&r.yp)) return -ENOMEM;
    yaml_parser_set_input_string(&r.yp, (const unsigned char *)buf, len);
    for (;;) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&r.yp, &ev)) {
            rc = syntax_error(&r);
            goto out;
        }
        yaml_event_type_t t = ev.type;
        if (t == YAML_DOCUMENT_START_EVENT) {
            r.doc++;
            r.nodes = 0;
            r.doc_error = NULL;
            arena_reset(&r.tree);
        }
        yaml_event_delete(&ev);
        if (t == YAML_STREAM_END_EVENT) break;
        if (t != YAML_DOCUMENT_START_EVENT) continue;
        if (!yaml_parser_parse(&r.yp, &ev)) {
            rc = syntax_error(&r);
            goto out;
        }
        struct mnode root = {0};
        if (ev.type == YAML_DOCUMENT_END_EVENT) {
            yaml_event_delete(&ev);
            continue;
        }
        rc = read_node(&r, &ev, &root, 0);
        if (rc == -EINVAL || (!rc && !yaml_parser_parse(&r.yp, &ev))) { /* then DOCUMENT_END */
            rc = syntax_error(&r);
            goto out;
        }
        if (rc) goto out;
        yaml_event_delete(&ev);
        if (r.doc_error) {
            report(&r, MANIFEST_ERROR, r.doc_error_line, "", "%s: document skipped", r.doc_error);
            continue;
        }
        if ((rc = r.json_fn ? json_object_doc(&r, &root) : read_object(&r, &root))) goto out;
    }
out:
    yaml_parser_delete(&r.yp);
    arena_free(&r.tree);
    return rc;
}

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool manifest_name(const char *n)
{
    size_t l = strlen(n);
    if (n[0] == '.') return false; /* editors' swap files, ".." and "." */
    return (l > 5 && !strcmp(n + l - 5, ".yaml")) || (l > 4 && !strcmp(n + l - 4, ".yml")) ||
           (l > 5 && !strcmp(n + l - 5, ".json"));
}

static int load_file(struct manifest_store *st, int dfd, const char *name, manifest_report_fn rep, void *ud)
{
    struct reader r = {.st = st, .report = rep, .ud = ud, .file = name, .doc = 0};
    int rc = 0;
    char *buf = NULL;
    /* Symlinks are followed: a ConfigMap mounted as a volume is a directory of symlinks into "..data/". */
    int fd = openat(dfd, name, O_RDONLY | O_CLOEXEC);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb)) {
        report(&r, MANIFEST_ERROR, 0, "", "cannot read: %s", strerror(errno));
        goto out;
    }
    if (!S_ISREG(sb.st_mode)) goto out;
    if ((size_t)sb.st_size > MANIFEST_MAX_FILE) {
        report(&r, MANIFEST_ERROR, 0, "", "file is larger than the limit (%zu bytes): skipped",
               MANIFEST_MAX_FILE);
        goto out;
    }
    size_t n = (size_t)sb.st_size, got = 0;
    if (!(buf = malloc(n ? n : 1))) {
        rc = -ENOMEM;
        goto out;
    }
    while (got < n) {
        ssize_t k = read(fd, buf + got, n - got);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) {
            report(&r, MANIFEST_ERROR, 0, "", "cannot read: %s",
                   k ? strerror(errno) : "file shrank while read");
            goto out;
        }
        got += (size_t)k;
    }
    rc = manifest_load_buf(st, name, buf, n, rep, ud);
out:
    free(buf);
    if (fd >= 0) close(fd);
    return rc;
}

int manifest_load_dir(struct manifest_store *st, const char *dir, manifest_report_fn rep, void *ud)
{
    int rc = 0;
    char **names = NULL;
    size_t n = 0, cap = 0;
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = dfd >= 0 ? fdopendir(dup(dfd)) : NULL;
    if (!d) {
        rc = -errno;
        goto out;
    }
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!manifest_name(de->d_name)) continue;
        if (n == MANIFEST_MAX_FILES) {
            log_kv(LOG_WARN, LOG_TARGET, "too many manifest files: the rest are not read", "dir", dir,
                   "limit", "10000", NULL);
            break;
        }
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            char **nn = realloc(names, ncap * sizeof(*nn));
            if (!nn) {
                rc = -ENOMEM;
                goto out;
            }
            names = nn;
            cap = ncap;
        }
        if (!(names[n] = strdup(de->d_name))) {
            rc = -ENOMEM;
            goto out;
        }
        n++;
    }
    /* Sorted, so objects load in the same order whatever readdir returns: which of two colliding resources
     * wins must not change from one run to the next. */
    if (n) qsort(names, n, sizeof(*names), name_cmp);
    for (size_t i = 0; i < n && !rc; i++)
        rc = load_file(st, dfd, names[i], rep, ud);
out:
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    if (d) closedir(d);
    if (dfd >= 0) close(dfd);
    return rc;
}
