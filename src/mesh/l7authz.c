/* L7 authorization: zmesh.v1.L7Authorization compiled into matchers, evaluated with Istio's semantics
 * (istio/istio pilot/pkg/security/authz/model/: model.go, generator.go, matcher/). */
#include "mesh/l7authz.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mesh/model.h"
#include "tls/spiffe.h"
#include "zmesh/l7.pb-c.h"

/* What a value is compared with. The REQ_* attributes come from the request's verified JWT (in->auth);
 * without one they are missing, like ABSENT: an attribute the waypoint never has (Envoy filter metadata).
 * Envoy's matchers on missing metadata fail, so a value never matches and a not_ value always holds (DENY
 * with notRequestPrincipals ["*"] denies every request without a JWT). */
enum attr {
    A_PRINCIPAL,
    A_NAMESPACE,
    A_SERVICE_ACCOUNT,
    A_SOURCE_IP,
    A_REMOTE_IP,
    A_DEST_IP,
    A_HOST,
    A_PORT,
    A_METHOD,
    A_PATH,
    A_HEADER,
    A_SNI,
    A_REQ_PRINCIPAL, /* requestPrincipals, request.auth.principal: "<iss>/<sub>" */
    A_REQ_AUDIENCE,  /* request.auth.audiences: any aud */
    A_REQ_PRESENTER, /* request.auth.presenter: azp */
    A_REQ_CLAIM,     /* request.auth.claims[a][b]: a string, or any string of a list */
    A_ABSENT,
};

/* Deepest request.auth.claims[a][b]... a condition may name. */
#define L7_MAX_CLAIM_PATH 8

enum str_kind { S_EXACT, S_PREFIX, S_SUFFIX, S_PRESENT };

struct tpl_seg {
    uint8_t kind; /* 0 literal, 1 {*}, 2 {**} */
    const char *lit;
    size_t n;
};

struct val {
    uint8_t kind; /* enum str_kind for strings */
    const char *s;
    size_t n;
    struct cidr cidr;
    uint16_t port;
    const char *sa_ns, *sa_name;
    const struct tpl_seg *tpl; /* paths with {*} / {**} */
    size_t n_tpl;
};

struct field {
    uint8_t attr;
    const char *header; /* A_HEADER: the lower-case name */
    size_t header_len;
    const char *const *claim; /* A_REQ_CLAIM: the names, outermost first */
    size_t n_claim;
    const struct val *vals, *nots;
    size_t n_vals, n_nots;
};

struct flist {
    const struct field *f;
    size_t n;
};

struct prule {
    const struct flist *from, *to;
    size_t n_from, n_to;
    struct flist when;
};

struct l7_policy {
    char *name;
    const char *ns;
    uint8_t action;
    bool dry_run;
    const struct l7_target *targets;
    size_t n_targets;
    const struct prule *rules;
    size_t n_rules;
    struct l7_arena arena;
    Zmesh__V1__L7Authorization *msg; /* the compiled values point into its strings */
};

const char *l7_verdict_to_str(enum l7_verdict v)
{
    return v == L7_ALLOW ? "allow" : "deny";
}

/* ---- compiling ---- */

/* A field path for an error message; a path longer than buf is cut (messages only). */
static void fld(char *buf, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void fld(char *buf, size_t n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, n, fmt, ap);
    va_end(ap);
}

struct cerr {
    char *buf;
    size_t n;
    const char *name;
};

static int fail(struct cerr *e, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(struct cerr *e, const char *field, const char *fmt, ...)
{
    char msg[384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (e->buf && e->n)
        snprintf(e->buf, e->n, "L7Authorization %s: %s%s%s", e->name, field, *field ? ": " : "", msg);
    return -EINVAL;
}

bool l7_text_ok(const char *s)
{
    size_t n = 0;
    for (; *s; s++, n++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f) return false;
    return n <= L7_MAX_STRING;
}

bool l7_resource_name_is(const char *ns, const char *name, const char *resource)
{
    char want[520];
    return ns[0] && name[0] && l7_text_ok(ns) && l7_text_ok(name) &&
           snprintf(want, sizeof(want), "%s/%s", ns, name) < (int)sizeof(want) && strcmp(want, resource) == 0;
}

static int cidr_parse(const char *s, struct cidr *out)
{
    char ip[64];
    const char *slash = strchr(s, '/');
    size_t n = slash ? (size_t)(slash - s) : strlen(s);
    if (n == 0 || n >= sizeof(ip)) return -EINVAL;
    memcpy(ip, s, n);
    ip[n] = 0;
    if (ip_parse(ip, &out->ip) < 0) return -EINVAL;
    unsigned max = out->ip.family == AF_INET ? 32 : 128;
    if (!slash) {
        out->len = (uint8_t)max;
        return 0;
    }
    const char *d = slash + 1;
    if (!*d || strlen(d) > 3) return -EINVAL;
    unsigned len = 0;
    for (; *d; d++) {
        if (!isdigit((unsigned char)*d)) return -EINVAL;
        len = len * 10 + (unsigned)(*d - '0');
    }
    if (len > max) return -EINVAL;
    out->len = (uint8_t)len;
    return 0;
}

/* Istio's path templates (security.ContainsPathTemplate): "{*}" is one whole, non-empty segment, "{**}" the
 * rest of the path (zero or more segments) and only last; anything else with '{' or '}' is refused. */
static int tpl_compile(struct l7_policy *p, struct cerr *e, const char *field, const char *s, struct val *v)
{
    size_t n = strlen(s), cnt = 0;
    for (size_t i = 0; i < n; i++)
        if (s[i] == '/') cnt++;
    struct tpl_seg *segs = l7_arena_alloc(&p->arena, (cnt + 2) * sizeof(*segs));
    if (!segs) return -ENOMEM;
    if (s[0] != '/') return fail(e, field, "a path template must start with '/': \"%.64s\"", s);
    size_t k = 0, i = 1;
    for (;;) {
        size_t j = i;
        while (j < n && s[j] != '/')
            j++;
        const char *seg = s + i;
        size_t sn = j - i;
        if (sn == 3 && memcmp(seg, "{*}", 3) == 0) {
            segs[k++] = (struct tpl_seg){1, NULL, 0};
        } else if (sn == 4 && memcmp(seg, "{**}", 4) == 0) {
            if (j != n) return fail(e, field, "{**} must be the last segment: \"%.64s\"", s);
            segs[k++] = (struct tpl_seg){2, NULL, 0};
        } else {
            if (memchr(seg, '{', sn) || memchr(seg, '}', sn) || memchr(seg, '*', sn))
                return fail(e, field, "{*} and {**} must be whole segments, with no other '*': \"%.64s\"", s);
            segs[k++] = (struct tpl_seg){0, seg, sn};
        }
        if (j >= n) break;
        i = j + 1;
    }
    v->tpl = segs;
    v->n_tpl = k;
    return 0;
}

/* One value of attribute attr in Istio's string form. */
static int val_compile(struct l7_policy *p, struct cerr *e, const char *field, uint8_t attr, const char *s,
                       struct val *v)
{
    memset(v, 0, sizeof(*v));
    if (!l7_text_ok(s)) return fail(e, field, "control characters or longer than %d bytes", L7_MAX_STRING);
    switch (attr) {
    case A_SOURCE_IP:
    case A_REMOTE_IP:
    case A_DEST_IP:
        if (cidr_parse(s, &v->cidr) < 0)
            return fail(e, field, "not an IP address or CIDR block: \"%.64s\"", s);
        return 0;
    case A_PORT: {
        char *end;
        unsigned long port = strtoul(s, &end, 10);
        if (!*s || *end || !isdigit((unsigned char)*s) || port > 65535)
            return fail(e, field, "not a port 0-65535: \"%.16s\"", s);
        v->port = (uint16_t)port;
        return 0;
    }
    case A_SERVICE_ACCOUNT: {
        /* "<namespace>/<name>", or a bare name in the policy's namespace (generator.go serviceAccountRegex).
         */
        const char *slash = strchr(s, '/');
        if (!*s || (slash && (slash == s || !slash[1] || strchr(slash + 1, '/'))) || strchr(s, '*'))
            return fail(e, field, "expected <namespace>/<serviceaccount> or <serviceaccount>: \"%.64s\"", s);
        v->sa_ns = slash ? l7_arena_strndup(&p->arena, s, (size_t)(slash - s)) : p->ns;
        v->sa_name = slash ? slash + 1 : s;
        return v->sa_ns ? 0 : -ENOMEM;
    }
    case A_PATH:
        if (strstr(s, "{*}") || strstr(s, "{**}")) {
            v->s = s;
            return tpl_compile(p, e, field, s, v);
        }
        break;
    default:
        break;
    }
    size_t n = strlen(s);
    if (strcmp(s, "*") == 0) {
        v->kind = S_PRESENT;
    } else if (n > 1 && s[0] == '*') {
        v->kind = S_SUFFIX;
        s++;
        n--;
    } else if (n > 1 && s[n - 1] == '*') {
        v->kind = S_PREFIX;
        n--;
    } else {
        v->kind = S_EXACT;
    }
    v->s = s;
    v->n = n;
    return 0;
}

static int field_add(struct l7_policy *p, struct cerr *e, const char *where, const char *fname, uint8_t attr,
                     char **vals, size_t n_vals, char **nots, size_t n_nots, struct field *out, size_t *count)
{
    if (n_vals == 0 && n_nots == 0) return 0;
    char f[200];
    if (n_vals > L7_MAX_POLICY_VALUES || n_nots > L7_MAX_POLICY_VALUES) {
        fld(f, sizeof(f), "%s.%s", where, fname);
        return fail(e, f, "more than %d values", L7_MAX_POLICY_VALUES);
    }
    struct field *fl = &out[(*count)++];
    memset(fl, 0, sizeof(*fl));
    fl->attr = attr;
    struct val *v = l7_arena_alloc(&p->arena, (n_vals ? n_vals : 1) * sizeof(*v));
    struct val *nv = l7_arena_alloc(&p->arena, (n_nots ? n_nots : 1) * sizeof(*nv));
    if (!v || !nv) return -ENOMEM;
    int rc;
    for (size_t i = 0; i < n_vals; i++) {
        fld(f, sizeof(f), "%s.%s[%zu]", where, fname, i);
        if ((rc = val_compile(p, e, f, attr, vals[i], &v[i])) < 0) return rc;
    }
    for (size_t i = 0; i < n_nots; i++) {
        fld(f, sizeof(f), "%s.not_%s[%zu]", where, fname, i);
        if ((rc = val_compile(p, e, f, attr, nots[i], &nv[i])) < 0) return rc;
    }
    fl->vals = v;
    fl->n_vals = n_vals;
    fl->nots = nv;
    fl->n_nots = n_nots;
    return 0;
}

/* request.auth.claims[a][b]...: the names between brackets, each non-empty and without brackets (Istio's
 * model.go extractNameInNestedBrackets). Returns the count, or -EINVAL. */
static int claim_path(struct l7_policy *p, const char *s, const char ***out)
{
    const char **names = l7_arena_alloc(&p->arena, L7_MAX_CLAIM_PATH * sizeof(char *));
    int n = 0;
    if (!names) return -ENOMEM;
    while (*s) {
        if (*s != '[' || n == L7_MAX_CLAIM_PATH) return -EINVAL;
        const char *e = strchr(s + 1, ']');
        if (!e || e == s + 1 || memchr(s + 1, '[', (size_t)(e - s - 1))) return -EINVAL;
        if (!(names[n++] = l7_arena_strndup(&p->arena, s + 1, (size_t)(e - s - 1)))) return -ENOMEM;
        s = e + 1;
    }
    *out = names;
    return n ? n : -EINVAL;
}

/* The when keys Istio knows (model.go New); experimental.envoy.filters.* are ABSENT. */
static int cond_attr(const char *key, uint8_t *attr, const char **header, size_t *hlen)
{
    static const struct {
        const char *key;
        uint8_t attr;
    } keys[] = {
        {"source.ip", A_SOURCE_IP},
        {"remote.ip", A_REMOTE_IP},
        {"source.namespace", A_NAMESPACE},
        {"source.principal", A_PRINCIPAL},
        {"source.serviceAccount", A_SERVICE_ACCOUNT},
        {"destination.ip", A_DEST_IP},
        {"destination.port", A_PORT},
        {"connection.sni", A_SNI},
        {"request.auth.principal", A_REQ_PRINCIPAL},
        {"request.auth.audiences", A_REQ_AUDIENCE},
        {"request.auth.presenter", A_REQ_PRESENTER},
    };
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        if (strcmp(key, keys[i].key) == 0) {
            *attr = keys[i].attr;
            return 0;
        }
    size_t n = strlen(key);
    if (strncmp(key, "request.headers[", 16) == 0 && n > 17 && key[n - 1] == ']') {
        *attr = A_HEADER;
        *header = key + 16;
        *hlen = n - 17;
        for (size_t i = 0; i < *hlen; i++)
            if (!isalnum((unsigned char)(*header)[i]) && !strchr("!#$%&'*+-.^_`|~:", (*header)[i]))
                return -EINVAL;
        return 0;
    }
    if (strncmp(key, "request.auth.claims[", 20) == 0 && key[n - 1] == ']') {
        *attr = A_REQ_CLAIM;
        *header = key + 19; /* "[a][b]": split by the caller */
        *hlen = n - 19;
        return 0;
    }
    if (strncmp(key, "experimental.envoy.filters.", 27) == 0) {
        *attr = A_ABSENT;
        return 0;
    }
    return -EINVAL;
}

static int rule_compile(struct l7_policy *p, struct cerr *e, size_t ri, const Zmesh__V1__L7Rule *pb,
                        struct prule *out)
{
    char w[120];
    int rc;
    struct flist *from = l7_arena_alloc(&p->arena, (pb->n_from ? pb->n_from : 1) * sizeof(*from));
    struct flist *to = l7_arena_alloc(&p->arena, (pb->n_to ? pb->n_to : 1) * sizeof(*to));
    struct field *when = l7_arena_alloc(&p->arena, (pb->n_when ? pb->n_when : 1) * sizeof(*when));
    if (!from || !to || !when) return -ENOMEM;
    for (size_t i = 0; i < pb->n_from; i++) {
        const Zmesh__V1__Source *s = pb->from[i];
        struct field *f = l7_arena_alloc(&p->arena, 6 * sizeof(*f));
        size_t n = 0;
        if (!f) return -ENOMEM;
        fld(w, sizeof(w), "rules[%zu].from[%zu]", ri, i);
        if ((rc = field_add(p, e, w, "principals", A_PRINCIPAL, s->principals, s->n_principals,
                            s->not_principals, s->n_not_principals, f, &n)) < 0 ||
            (rc = field_add(p, e, w, "request_principals", A_REQ_PRINCIPAL, s->request_principals,
                            s->n_request_principals, s->not_request_principals, s->n_not_request_principals,
                            f, &n)) < 0 ||
            (rc = field_add(p, e, w, "namespaces", A_NAMESPACE, s->namespaces, s->n_namespaces,
                            s->not_namespaces, s->n_not_namespaces, f, &n)) < 0 ||
            (rc = field_add(p, e, w, "ip_blocks", A_SOURCE_IP, s->ip_blocks, s->n_ip_blocks, s->not_ip_blocks,
                            s->n_not_ip_blocks, f, &n)) < 0 ||
            (rc = field_add(p, e, w, "remote_ip_blocks", A_REMOTE_IP, s->remote_ip_blocks,
                            s->n_remote_ip_blocks, s->not_remote_ip_blocks, s->n_not_remote_ip_blocks, f,
                            &n)) < 0 ||
            (rc = field_add(p, e, w, "service_accounts", A_SERVICE_ACCOUNT, s->service_accounts,
                            s->n_service_accounts, s->not_service_accounts, s->n_not_service_accounts, f,
                            &n)) < 0)
            return rc;
        from[i] = (struct flist){f, n};
    }
    for (size_t i = 0; i < pb->n_to; i++) {
        const Zmesh__V1__Operation *o = pb->to[i];
        struct field *f = l7_arena_alloc(&p->arena, 4 * sizeof(*f));
        size_t n = 0;
        if (!f) return -ENOMEM;
        fld(w, sizeof(w), "rules[%zu].to[%zu]", ri, i);
        if ((rc = field_add(p, e, w, "hosts", A_HOST, o->hosts, o->n_hosts, o->not_hosts, o->n_not_hosts, f,
                            &n)) < 0 ||
            (rc = field_add(p, e, w, "ports", A_PORT, o->ports, o->n_ports, o->not_ports, o->n_not_ports, f,
                            &n)) < 0 ||
            (rc = field_add(p, e, w, "methods", A_METHOD, o->methods, o->n_methods, o->not_methods,
                            o->n_not_methods, f, &n)) < 0 ||
            (rc = field_add(p, e, w, "paths", A_PATH, o->paths, o->n_paths, o->not_paths, o->n_not_paths, f,
                            &n)) < 0)
            return rc;
        to[i] = (struct flist){f, n};
    }
    size_t nw = 0;
    for (size_t i = 0; i < pb->n_when; i++) {
        const Zmesh__V1__Condition *c = pb->when[i];
        uint8_t attr = 0;
        const char *hdr = NULL;
        size_t hl = 0;
        fld(w, sizeof(w), "rules[%zu].when[%zu]", ri, i);
        if (cond_attr(c->key, &attr, &hdr, &hl) < 0) {
            char f[140];
            fld(f, sizeof(f), "%s.key", w);
            return fail(e, f, "unknown attribute \"%.64s\"", c->key);
        }
        const char **claim = NULL;
        int nclaim = 0;
        if (attr == A_REQ_CLAIM && (nclaim = claim_path(p, hdr, &claim)) < 0) {
            char f[140];
            fld(f, sizeof(f), "%s.key", w);
            if (nclaim == -ENOMEM) return -ENOMEM;
            return fail(e, f, "expected request.auth.claims[name][name]... (1-%d non-empty names): \"%.64s\"",
                        L7_MAX_CLAIM_PATH, c->key);
        }
        if (c->n_values == 0 && c->n_not_values == 0) {
            char f[140];
            fld(f, sizeof(f), "%s.values", w);
            return fail(e, f, "a condition needs values or not_values");
        }
        if ((rc = field_add(p, e, w, "values", attr, c->values, c->n_values, c->not_values, c->n_not_values,
                            when, &nw)) < 0)
            return rc;
        if (attr == A_REQ_CLAIM) {
            when[nw - 1].claim = claim;
            when[nw - 1].n_claim = (size_t)nclaim;
        }
        if (attr == A_HEADER) {
            char *h = l7_arena_strndup(&p->arena, hdr, hl);
            if (!h) return -ENOMEM;
            for (char *x = h; *x; x++)
                *x = (char)tolower((unsigned char)*x);
            when[nw - 1].header = h;
            when[nw - 1].header_len = hl;
        }
    }
    *out = (struct prule){.from = from, .n_from = pb->n_from, .to = to, .n_to = pb->n_to, .when = {when, nw}};
    return 0;
}

void l7_policy_free(struct l7_policy *p)
{
    if (!p) return;
    l7_arena_free(&p->arena);
    if (p->msg) zmesh__v1__l7_authorization__free_unpacked(p->msg, NULL);
    free(p->name);
    free(p);
}

int l7_policy_compile(const char *name, const uint8_t *pb, size_t len, struct l7_policy **out, char *err,
                      size_t errlen)
{
    struct cerr e = {err, errlen, name};
    struct l7_policy *p = calloc(1, sizeof(*p));
    Zmesh__V1__L7Authorization *m = NULL;
    int rc = -ENOMEM;
    if (!p || !(p->name = strdup(name))) goto out;
    if (len > L7_MAX_RESOURCE_BYTES) {
        rc = fail(&e, "", "larger than %u bytes", L7_MAX_RESOURCE_BYTES);
        goto out;
    }
    /* No recursion in the schema: protobuf-c's decoder is bounded by its depth. */
    m = zmesh__v1__l7_authorization__unpack(NULL, len, pb);
    if (!m) {
        rc = fail(&e, "", "not a valid zmesh.v1.L7Authorization encoding");
        goto out;
    }
    if (!l7_resource_name_is(m->namespace_, m->name, name)) {
        rc = fail(&e, "name", "the resource name is not namespace/name");
        goto out;
    }
    char *ns = l7_arena_strndup(&p->arena, m->namespace_, strlen(m->namespace_));
    if (!ns) goto out;
    p->ns = ns;
    if (m->action != ZMESH__V1__L7_AUTHORIZATION__ACTION__ALLOW &&
        m->action != ZMESH__V1__L7_AUTHORIZATION__ACTION__DENY &&
        m->action != ZMESH__V1__L7_AUTHORIZATION__ACTION__AUDIT) {
        rc = fail(&e, "action", "unknown action %d", (int)m->action);
        goto out;
    }
    p->action = (uint8_t)m->action;
    p->dry_run = m->dry_run;
    char tf[64], why[128];
    if ((rc = l7_targets_compile(&p->arena, m->targets, m->n_targets, &p->targets, tf, sizeof(tf), why,
                                 sizeof(why))) < 0) {
        if (rc == -EINVAL) rc = fail(&e, tf, "%s", why);
        goto out;
    }
    p->n_targets = m->n_targets;
    if (m->n_rules > L7_MAX_POLICY_RULES) {
        rc = fail(&e, "rules", "more than %d rules", L7_MAX_POLICY_RULES);
        goto out;
    }
    struct prule *rules = l7_arena_alloc(&p->arena, (m->n_rules ? m->n_rules : 1) * sizeof(*rules));
    if (!rules) goto out;
    for (size_t i = 0; i < m->n_rules; i++)
        if ((rc = rule_compile(p, &e, i, m->rules[i], &rules[i])) < 0) goto out;
    p->rules = rules;
    p->n_rules = m->n_rules;
    p->msg = m;
    *out = p;
    return 0;
out:
    if (rc == -ENOMEM) fail(&e, "", "out of memory");
    if (m) zmesh__v1__l7_authorization__free_unpacked(m, NULL);
    l7_policy_free(p);
    return rc;
}

const char *l7_policy_name(const struct l7_policy *p)
{
    return p->name;
}

size_t l7_policy_n_targets(const struct l7_policy *p)
{
    return p->n_targets;
}

int l7_target_key(const struct l7_target *t, char *buf, size_t n)
{
    int w = snprintf(buf, n, "%c:%s/%s", t->kind == ZMESH__V1__POLICY_TARGET__KIND__GATEWAY ? 'G' : 'S',
                     t->ns, t->name);
    return w < 0 || (size_t)w >= n ? -ENOSPC : 0;
}

int l7_policy_target_key(const struct l7_policy *p, size_t i, char *buf, size_t n)
{
    return l7_target_key(&p->targets[i], buf, n);
}

int l7_targets_compile(struct l7_arena *a, struct Zmesh__V1__PolicyTarget *const *pts, size_t n,
                       const struct l7_target **out, char *field, size_t field_n, char *why, size_t why_n)
{
    if (n == 0 || n > L7_MAX_TARGETS) {
        snprintf(field, field_n, "targets");
        snprintf(why, why_n, "expected 1-%d targets, got %zu", L7_MAX_TARGETS, n);
        return -EINVAL;
    }
    struct l7_target *t = l7_arena_alloc(a, n * sizeof(*t));
    if (!t) return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        const Zmesh__V1__PolicyTarget *pt = pts[i];
        snprintf(field, field_n, "targets[%zu]", i);
        if (pt->kind != ZMESH__V1__POLICY_TARGET__KIND__GATEWAY &&
            pt->kind != ZMESH__V1__POLICY_TARGET__KIND__SERVICE) {
            snprintf(why, why_n, "unknown kind %d", (int)pt->kind);
            return -EINVAL;
        }
        if (!pt->namespace_[0] || !pt->name[0] || !l7_text_ok(pt->namespace_) || !l7_text_ok(pt->name) ||
            strlen(pt->namespace_) + strlen(pt->name) > 500) {
            snprintf(why, why_n, "a target needs a namespace and a name");
            return -EINVAL;
        }
        t[i].kind = (uint8_t)pt->kind;
        t[i].ns = l7_arena_strndup(a, pt->namespace_, strlen(pt->namespace_));
        t[i].name = l7_arena_strndup(a, pt->name, strlen(pt->name));
        if (!t[i].ns || !t[i].name) return -ENOMEM;
    }
    *out = t;
    return 0;
}

/* ---- evaluating ---- */

/* The request as the matchers see it, derived once per decision. */
struct ctx {
    const struct l7_authz_input *in;
    const char *principal; /* NULL without identity */
    const char *ns;        /* NULL without identity */
    const char *sa;        /* NULL without identity */
    struct spiffe_id id;
    struct ip_addr src, remote, dst;
    bool has_src, has_remote, has_dst;
    const char *path; /* without the query */
    size_t path_len;
};

static void ip_canon(struct ip_addr *out, const struct ip_addr *in)
{
    static const uint8_t v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    *out = *in;
    if (in->family == AF_INET6 && memcmp(in->a, v4mapped, sizeof(v4mapped)) == 0) {
        memset(out, 0, sizeof(*out));
        out->family = AF_INET;
        memcpy(out->a, in->a + 12, 4);
    }
}

static void ctx_init(struct ctx *c, const struct l7_authz_input *in)
{
    memset(c, 0, sizeof(*c));
    c->in = in;
    if (in->source_principal && *in->source_principal) {
        char full[600];
        int n = snprintf(full, sizeof(full), "spiffe://%s", in->source_principal);
        c->principal = in->source_principal;
        if (n > 0 && (size_t)n < sizeof(full) && spiffe_parse(full, (size_t)n, &c->id) == 0) {
            c->ns = c->id.ns;
            c->sa = c->id.sa;
        }
    }
    if (in->source_namespace) c->ns = in->source_namespace;
    if (in->source_ip) {
        ip_canon(&c->src, in->source_ip);
        c->has_src = true;
    }
    const struct ip_addr *rem = in->remote_ip ? in->remote_ip : in->source_ip;
    if (rem) {
        ip_canon(&c->remote, rem);
        c->has_remote = true;
    }
    if (in->dest_ip) {
        ip_canon(&c->dst, in->dest_ip);
        c->has_dst = true;
    }
    if (in->req && in->req->path) {
        const char *q = memchr(in->req->path, '?', in->req->path_len);
        c->path = in->req->path;
        c->path_len = q ? (size_t)(q - in->req->path) : in->req->path_len;
    }
}

static bool str_match(const struct val *v, const char *s, size_t n, bool ci)
{
    int (*cmp)(const char *, const char *, size_t) = ci ? strncasecmp : strncmp;
    switch (v->kind) {
    case S_PRESENT:
        return true;
    case S_PREFIX:
        return n >= v->n && cmp(s, v->s, v->n) == 0;
    case S_SUFFIX:
        return n >= v->n && cmp(s + n - v->n, v->s, v->n) == 0;
    default:
        return n == v->n && cmp(s, v->s, n) == 0;
    }
}

static bool tpl_match(const struct val *v, const char *p, size_t n)
{
    if (n == 0 || p[0] != '/') return false;
    size_t i = 1;
    for (size_t k = 0; k < v->n_tpl; k++) {
        const struct tpl_seg *s = &v->tpl[k];
        if (k > 0 && i > n) return false; /* the path ended before this segment's '/' */
        if (s->kind == 2) return true;    /* the rest, whatever it is (zero or more segments) */
        size_t j = i;
        while (j < n && p[j] != '/')
            j++;
        if (s->kind == 1 ? j == i : (j - i != s->n || memcmp(p + i, s->lit, s->n) != 0)) return false;
        i = j + 1;
    }
    return i == n + 1; /* the whole path consumed, no trailing segment */
}

/* Istio's request.headers[] matcher (matcher.HeaderMatcherWithRegex): the value matches the joined header or
 * one of its comma-separated elements. */
static bool header_match(const struct val *v, const char *s, size_t n)
{
    if (v->kind == S_PRESENT || str_match(v, s, n, false)) return true;
    size_t i = 0;
    while (i <= n) {
        size_t j = i;
        while (j < n && s[j] != ',')
            j++;
        if (j < n || i > 0)
            if (str_match(v, s + i, j - i, false)) return true;
        i = j + 1;
    }
    return false;
}

/* A claim as Istio's metadata matchers see it: a string, or a list whose string elements are tried each;
 * a number or a boolean by its JSON text. Objects and missing claims never match. */
static bool claim_match(const struct val *v, const json_t *j)
{
    if (!j) return false;
    if (json_is_string(j)) return str_match(v, json_string_value(j), json_string_length(j), false);
    if (json_is_array(j)) {
        size_t i;
        const json_t *e;
        json_array_foreach(j, i,
                           e) if (json_is_string(e) && str_match(v, json_string_value(e),
                                                                 json_string_length(e), false)) return true;
        return false;
    }
    char buf[64];
    int n;
    if (json_is_integer(j))
        n = snprintf(buf, sizeof(buf), "%lld", (long long)json_integer_value(j));
    else if (json_is_boolean(j))
        n = snprintf(buf, sizeof(buf), "%s", json_is_true(j) ? "true" : "false");
    else if (json_is_real(j))
        n = snprintf(buf, sizeof(buf), "%.17g", json_real_value(j));
    else
        return false;
    return n > 0 && (size_t)n < sizeof(buf) && str_match(v, buf, (size_t)n, false);
}

static bool val_match(const struct field *f, const struct val *v, const struct ctx *c)
{
    const struct l7_request *req = c->in->req;
    switch (f->attr) {
    case A_PRINCIPAL:
        return c->principal && str_match(v, c->principal, strlen(c->principal), false);
    case A_NAMESPACE:
        return c->ns && str_match(v, c->ns, strlen(c->ns), false);
    case A_SERVICE_ACCOUNT:
        return c->ns && c->sa && strcmp(v->sa_ns, c->ns) == 0 && strcmp(v->sa_name, c->sa) == 0;
    case A_SOURCE_IP:
        return c->has_src && cidr_contains(&v->cidr, &c->src);
    case A_REMOTE_IP:
        return c->has_remote && cidr_contains(&v->cidr, &c->remote);
    case A_DEST_IP:
        return c->has_dst && cidr_contains(&v->cidr, &c->dst);
    case A_PORT:
        return c->in->dest_port && v->port == c->in->dest_port;
    case A_HOST:
        return req && req->authority && *req->authority &&
               str_match(v, req->authority, strlen(req->authority), true);
    case A_METHOD:
        return req && req->method && *req->method && str_match(v, req->method, strlen(req->method), false);
    case A_PATH:
        if (!c->path || !c->path_len) return false;
        return v->tpl ? tpl_match(v, c->path, c->path_len) : str_match(v, c->path, c->path_len, false);
    case A_SNI:
        return c->in->sni && *c->in->sni && str_match(v, c->in->sni, strlen(c->in->sni), false);
    case A_HEADER: {
        if (!req) return false;
        /* Joined with ',' as Envoy presents repeated headers. */
        char buf[L7_MAX_JOINED_HEADER];
        size_t w = 0;
        bool found = false;
        for (size_t i = 0; i < req->n_headers; i++) {
            const struct l7_header *h = &req->headers[i];
            if (h->name_len != f->header_len || strncasecmp(h->name, f->header, h->name_len) != 0) continue;
            if (found) {
                if (w + 1 > sizeof(buf)) return false;
                buf[w++] = ',';
            }
            if (w + h->value_len > sizeof(buf)) return false;
            memcpy(buf + w, h->value, h->value_len);
            w += h->value_len;
            found = true;
        }
        return found && header_match(v, buf, w);
    }
    case A_REQ_PRINCIPAL:
        return c->in->auth && c->in->auth->principal &&
               str_match(v, c->in->auth->principal, strlen(c->in->auth->principal), false);
    case A_REQ_PRESENTER:
        return c->in->auth && c->in->auth->presenter &&
               str_match(v, c->in->auth->presenter, strlen(c->in->auth->presenter), false);
    case A_REQ_AUDIENCE:
        for (size_t i = 0; c->in->auth && i < c->in->auth->n_audiences; i++)
            if (c->in->auth->audiences[i] &&
                str_match(v, c->in->auth->audiences[i], strlen(c->in->auth->audiences[i]), false))
                return true;
        return false;
    case A_REQ_CLAIM:
        return c->in->auth && claim_match(v, jwt_claim(c->in->auth, f->claim, f->n_claim));
    default: /* A_ABSENT */
        return false;
    }
}

/* A field holds when one of its values matches (or it has none) and none of its not_ values does. */
/* The attributes a TCP stream does not have (Istio's generators that fail "is HTTP only" for a TCP chain). */
static bool attr_http_only(uint8_t a)
{
    switch (a) {
    case A_HOST:
    case A_METHOD:
    case A_PATH:
    case A_HEADER:
    case A_REQ_PRINCIPAL:
    case A_REQ_AUDIENCE:
    case A_REQ_PRESENTER:
    case A_REQ_CLAIM:
        return true;
    default:
        return false;
    }
}

static bool flist_http(const struct flist *l)
{
    for (size_t i = 0; i < l->n; i++)
        if (attr_http_only(l->f[i].attr)) return true;
    return false;
}

static bool rule_http(const struct prule *r)
{
    for (size_t i = 0; i < r->n_from; i++)
        if (flist_http(&r->from[i])) return true;
    for (size_t i = 0; i < r->n_to; i++)
        if (flist_http(&r->to[i])) return true;
    return flist_http(&r->when);
}

static bool field_holds(const struct field *f, const struct ctx *c)
{
    if (c->in->tcp && attr_http_only(f->attr)) return true; /* a DENY's or AUDIT's: ignored on TCP */
    bool pos = f->n_vals == 0;
    for (size_t i = 0; i < f->n_vals && !pos; i++)
        pos = val_match(f, &f->vals[i], c);
    if (!pos) return false;
    for (size_t i = 0; i < f->n_nots; i++)
        if (val_match(f, &f->nots[i], c)) return false;
    return true;
}

static bool flist_holds(const struct flist *l, const struct ctx *c)
{
    for (size_t i = 0; i < l->n; i++)
        if (!field_holds(&l->f[i], c)) return false;
    return true;
}

static bool any_holds(const struct flist *l, size_t n, const struct ctx *c)
{
    if (n == 0) return true;
    for (size_t i = 0; i < n; i++)
        if (flist_holds(&l[i], c)) return true;
    return false;
}

static bool policy_matches(const struct l7_policy *p, const struct ctx *c)
{
    for (size_t i = 0; i < p->n_rules; i++) {
        const struct prule *r = &p->rules[i];
        /* On TCP, an ALLOW rule with an HTTP-only attribute is left out (it never allows). */
        if (c->in->tcp && p->action == ZMESH__V1__L7_AUTHORIZATION__ACTION__ALLOW && rule_http(r)) continue;
        if (any_holds(r->from, r->n_from, c) && any_holds(r->to, r->n_to, c) && flist_holds(&r->when, c))
            return true;
    }
    return false;
}

/* Walks the policies bound to the gateway, then to the service (a policy naming both counts once). */
struct walk {
    const struct l7_policy *const *lists[2];
    size_t n[2];
};

static void walk_init(struct walk *w, const struct l7_config *c, const char *gw_ns, const char *gw_name,
                      const char *svc_ns, const char *svc_name)
{
    char key[600];
    memset(w, 0, sizeof(*w));
    if (gw_ns && gw_name && snprintf(key, sizeof(key), "G:%s/%s", gw_ns, gw_name) < (int)sizeof(key))
        w->lists[0] = l7_config_policies_for(c, key, &w->n[0]);
    if (svc_ns && svc_name && snprintf(key, sizeof(key), "S:%s/%s", svc_ns, svc_name) < (int)sizeof(key))
        w->lists[1] = l7_config_policies_for(c, key, &w->n[1]);
}

static bool walk_dup(const struct walk *w, size_t list, const struct l7_policy *p)
{
    if (list == 0) return false;
    for (size_t i = 0; i < w->n[0]; i++)
        if (w->lists[0][i] == p) return true;
    return false;
}

enum l7_verdict l7_authorize(const struct l7_config *c, const char *gw_ns, const char *gw_name,
                             const char *svc_ns, const char *svc_name, const struct l7_authz_input *in,
                             const char **matched, bool *dry_run_would_deny)
{
    if (matched) *matched = NULL;
    if (dry_run_would_deny) *dry_run_would_deny = false;
    if (!c || !in) return L7_ALLOW;
    struct ctx cx;
    ctx_init(&cx, in);
    struct walk w;
    walk_init(&w, c, gw_ns, gw_name, svc_ns, svc_name);
    /* Istio's order (CUSTOM is refused at conversion): every DENY first, then the ALLOW set. Dry-run policies
     * form their own, shadow, set with the same rule. */
    const char *deny = NULL, *allow = NULL;
    bool any_allow = false, dry_deny = false, dry_any_allow = false, dry_allowed = false;
    for (size_t l = 0; l < 2; l++)
        for (size_t i = 0; i < w.n[l]; i++) {
            const struct l7_policy *p = w.lists[l][i];
            if (walk_dup(&w, l, p) || p->action == ZMESH__V1__L7_AUTHORIZATION__ACTION__AUDIT) continue;
            bool deny_pol = p->action == ZMESH__V1__L7_AUTHORIZATION__ACTION__DENY;
            if (p->dry_run) {
                if (deny_pol) {
                    if (!dry_deny) dry_deny = policy_matches(p, &cx);
                } else {
                    dry_any_allow = true;
                    if (!dry_allowed) dry_allowed = policy_matches(p, &cx);
                }
                continue;
            }
            if (deny_pol) {
                if (!deny && policy_matches(p, &cx)) deny = p->name;
            } else {
                any_allow = true;
                if (!allow && policy_matches(p, &cx)) allow = p->name;
            }
        }
    if (dry_run_would_deny) *dry_run_would_deny = dry_deny || (dry_any_allow && !dry_allowed);
    if (deny) {
        if (matched) *matched = deny;
        return L7_DENY;
    }
    if (any_allow && !allow) return L7_DENY;
    if (matched) *matched = allow;
    return L7_ALLOW;
}

size_t l7_audit_matches(const struct l7_config *c, const char *gw_ns, const char *gw_name, const char *svc_ns,
                        const char *svc_name, const struct l7_authz_input *in, const char **first)
{
    if (first) *first = NULL;
    if (!c || !in) return 0;
    struct ctx cx;
    ctx_init(&cx, in);
    struct walk w;
    walk_init(&w, c, gw_ns, gw_name, svc_ns, svc_name);
    size_t n = 0;
    for (size_t l = 0; l < 2; l++)
        for (size_t i = 0; i < w.n[l]; i++) {
            const struct l7_policy *p = w.lists[l][i];
            if (walk_dup(&w, l, p) || p->action != ZMESH__V1__L7_AUTHORIZATION__ACTION__AUDIT || p->dry_run)
                continue;
            if (policy_matches(p, &cx)) {
                if (first && !*first) *first = p->name;
                n++;
            }
        }
    return n;
}
