/* RequestAuthentication compiled for the waypoint (l7authn.h). */
#include "mesh/l7authn.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mesh/l7authz.h"
#include "zmesh/request_authentication.pb-c.h"

struct l7_authn {
    char *name;
    const struct l7_target *targets;
    size_t n_targets;
    struct l7_jwt_rule *rules;
    size_t n_rules;
    struct l7_arena arena;
};

struct aerr {
    char *buf;
    size_t n;
    const char *name;
};

static int fail(struct aerr *e, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(struct aerr *e, const char *field, const char *fmt, ...)
{
    char msg[384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (e->buf && e->n)
        snprintf(e->buf, e->n, "RequestAuthentication %s: %s%s%s", e->name, field, *field ? ": " : "", msg);
    return -EINVAL;
}

/* An HTTP field name (RFC 9110 token), lower-case as the model keeps names. */
static bool header_name_ok(const char *s)
{
    if (!*s || strlen(s) > 256) return false;
    for (; *s; s++)
        if (!(islower((unsigned char)*s) || isdigit((unsigned char)*s) || strchr("!#$%&'*+-.^_`|~", *s)))
            return false;
    return true;
}

/* A query parameter or cookie name: printable, no separators that would end it. */
static bool param_name_ok(const char *s)
{
    if (!*s || strlen(s) > 256) return false;
    for (; *s; s++)
        if ((unsigned char)*s <= 0x20 || (unsigned char)*s >= 0x7f || strchr("&=;#?,\"", *s)) return false;
    return true;
}

static char *adup(struct l7_authn *a, const char *s)
{
    return l7_arena_strndup(&a->arena, s, strlen(s));
}

static int rule_compile(struct l7_authn *a, struct aerr *e, size_t ri, const Zmesh__V1__JWTRule *pb,
                        struct l7_jwt_rule *r)
{
    char f[160];
    snprintf(f, sizeof(f), "jwt_rules[%zu].issuer", ri);
    if (!*pb->issuer || !l7_text_ok(pb->issuer))
        return fail(e, f, "required, printable, at most %d bytes", L7_MAX_STRING);
    if (!(r->rule.issuer = adup(a, pb->issuer))) return -ENOMEM;
    if (pb->n_audiences > L7_MAX_JWT_AUDIENCES) {
        snprintf(f, sizeof(f), "jwt_rules[%zu].audiences", ri);
        return fail(e, f, "more than %d audiences", L7_MAX_JWT_AUDIENCES);
    }
    char **aud = l7_arena_alloc(&a->arena, (pb->n_audiences ? pb->n_audiences : 1) * sizeof(char *));
    if (!aud) return -ENOMEM;
    for (size_t i = 0; i < pb->n_audiences; i++) {
        snprintf(f, sizeof(f), "jwt_rules[%zu].audiences[%zu]", ri, i);
        if (!*pb->audiences[i] || !l7_text_ok(pb->audiences[i])) return fail(e, f, "empty or not printable");
        if (!(aud[i] = adup(a, pb->audiences[i]))) return -ENOMEM;
    }
    r->rule.audiences = (const char *const *)aud;
    r->rule.n_audiences = pb->n_audiences;
    snprintf(f, sizeof(f), "jwt_rules[%zu].jwks", ri);
    size_t jl = strlen(pb->jwks);
    if (!jl) return fail(e, f, "required (zmeshd inlines jwksUri)");
    if (jl > L7_MAX_JWKS_BYTES) return fail(e, f, "larger than %u bytes", L7_MAX_JWKS_BYTES);
    char jerr[256] = "";
    enum jwt_status st = jwt_jwks_parse(pb->jwks, jl, &r->jwks, jerr, sizeof(jerr));
    if (st != JWT_OK) return fail(e, f, "%s%s%s", jwt_status_str(st), *jerr ? ": " : "", jerr);
    if (!(r->cache = jwt_cache_new(JWT_CACHE_DEFAULT_SIZE))) return -ENOMEM;
    if (!l7_text_ok(pb->jwks_uri) || !(r->jwks_uri = adup(a, pb->jwks_uri)))
        return l7_text_ok(pb->jwks_uri) ? -ENOMEM : fail(e, "jwks_uri", "not printable");
    /* Where the token is. */
    if (pb->n_from_headers > L7_MAX_JWT_LOCATIONS || pb->n_from_params > L7_MAX_JWT_LOCATIONS ||
        pb->n_from_cookies > L7_MAX_JWT_LOCATIONS) {
        snprintf(f, sizeof(f), "jwt_rules[%zu]", ri);
        return fail(e, f, "more than %d fromHeaders, fromParams or fromCookies", L7_MAX_JWT_LOCATIONS);
    }
    struct jwt_from_header *hs = l7_arena_alloc(&a->arena, (pb->n_from_headers + 1) * sizeof(*hs));
    char **ps = l7_arena_alloc(&a->arena, (pb->n_from_params + 1) * sizeof(char *));
    char **cs = l7_arena_alloc(&a->arena, (pb->n_from_cookies + 1) * sizeof(char *));
    if (!hs || !ps || !cs) return -ENOMEM;
    for (size_t i = 0; i < pb->n_from_headers; i++) {
        const Zmesh__V1__JWTHeader *h = pb->from_headers[i];
        snprintf(f, sizeof(f), "jwt_rules[%zu].from_headers[%zu].name", ri, i);
        if (!header_name_ok(h->name)) return fail(e, f, "not a lower-case header name: \"%.64s\"", h->name);
        snprintf(f, sizeof(f), "jwt_rules[%zu].from_headers[%zu].prefix", ri, i);
        if (!l7_text_ok(h->prefix)) return fail(e, f, "not printable");
        if (!(hs[i].name = adup(a, h->name)) || !(hs[i].prefix = adup(a, h->prefix))) return -ENOMEM;
    }
    for (size_t i = 0; i < pb->n_from_params; i++) {
        snprintf(f, sizeof(f), "jwt_rules[%zu].from_params[%zu]", ri, i);
        if (!param_name_ok(pb->from_params[i]))
            return fail(e, f, "not a query parameter name: \"%.64s\"", pb->from_params[i]);
        if (!(ps[i] = adup(a, pb->from_params[i]))) return -ENOMEM;
    }
    for (size_t i = 0; i < pb->n_from_cookies; i++) {
        snprintf(f, sizeof(f), "jwt_rules[%zu].from_cookies[%zu]", ri, i);
        if (!param_name_ok(pb->from_cookies[i]))
            return fail(e, f, "not a cookie name: \"%.64s\"", pb->from_cookies[i]);
        if (!(cs[i] = adup(a, pb->from_cookies[i]))) return -ENOMEM;
    }
    r->loc = (struct jwt_locations){.headers = hs,
                                    .n_headers = pb->n_from_headers,
                                    .params = (const char *const *)ps,
                                    .n_params = pb->n_from_params,
                                    .cookies = (const char *const *)cs,
                                    .n_cookies = pb->n_from_cookies};
    r->forward = pb->forward_original_token;
    if (*pb->output_payload_to_header) {
        snprintf(f, sizeof(f), "jwt_rules[%zu].output_payload_to_header", ri);
        if (!header_name_ok(pb->output_payload_to_header))
            return fail(e, f, "not a lower-case header name: \"%.64s\"", pb->output_payload_to_header);
        if (!(r->payload_header = adup(a, pb->output_payload_to_header))) return -ENOMEM;
    }
    if (pb->n_output_claim_to_headers > L7_MAX_CLAIM_HEADERS) {
        snprintf(f, sizeof(f), "jwt_rules[%zu].output_claim_to_headers", ri);
        return fail(e, f, "more than %d entries", L7_MAX_CLAIM_HEADERS);
    }
    struct l7_claim_header *ch = l7_arena_alloc(&a->arena, (pb->n_output_claim_to_headers + 1) * sizeof(*ch));
    if (!ch) return -ENOMEM;
    for (size_t i = 0; i < pb->n_output_claim_to_headers; i++) {
        const Zmesh__V1__ClaimToHeader *c = pb->output_claim_to_headers[i];
        snprintf(f, sizeof(f), "jwt_rules[%zu].output_claim_to_headers[%zu].header", ri, i);
        if (!header_name_ok(c->header))
            return fail(e, f, "not a lower-case header name: \"%.64s\"", c->header);
        snprintf(f, sizeof(f), "jwt_rules[%zu].output_claim_to_headers[%zu].claim", ri, i);
        if (!*c->claim || !l7_text_ok(c->claim)) return fail(e, f, "required, printable");
        /* Nested claims are written "a.b" (Envoy's claim_to_headers claim_name). */
        char *copy = adup(a, c->claim);
        char **path = l7_arena_alloc(&a->arena, L7_MAX_CLAIM_DEPTH * sizeof(char *));
        if (!copy || !path) return -ENOMEM;
        size_t np = 0;
        for (char *s = copy, *save = NULL, *t; (t = strtok_r(s, ".", &save)); s = NULL) {
            if (np == L7_MAX_CLAIM_DEPTH) return fail(e, f, "nested deeper than %d", L7_MAX_CLAIM_DEPTH);
            path[np++] = t;
        }
        if (!np || c->claim[0] == '.' || c->claim[strlen(c->claim) - 1] == '.' || strstr(c->claim, ".."))
            return fail(e, f, "an empty claim name in \"%.64s\"", c->claim);
        if (!(ch[i].header = adup(a, c->header))) return -ENOMEM;
        ch[i].path = (const char *const *)path;
        ch[i].n_path = np;
    }
    r->claim_headers = ch;
    r->n_claim_headers = pb->n_output_claim_to_headers;
    return 0;
}

void l7_authn_free(struct l7_authn *a)
{
    if (!a) return;
    for (size_t i = 0; i < a->n_rules; i++) {
        jwt_jwks_free(&a->rules[i].jwks);
        jwt_cache_free(a->rules[i].cache);
    }
    free(a->rules);
    l7_arena_free(&a->arena);
    free(a->name);
    free(a);
}

int l7_authn_compile(const char *name, const uint8_t *pb, size_t len, struct l7_authn **out, char *err,
                     size_t errlen)
{
    struct aerr e = {err, errlen, name};
    struct l7_authn *a = calloc(1, sizeof(*a));
    Zmesh__V1__RequestAuthentication *m = NULL;
    int rc = -ENOMEM;
    if (!a || !(a->name = strdup(name))) goto out;
    if (len > L7_MAX_RESOURCE_BYTES) {
        rc = fail(&e, "", "larger than %u bytes", L7_MAX_RESOURCE_BYTES);
        goto out;
    }
    m = zmesh__v1__request_authentication__unpack(NULL, len, pb);
    if (!m) {
        rc = fail(&e, "", "not a valid zmesh.v1.RequestAuthentication encoding");
        goto out;
    }
    if (!l7_resource_name_is(m->namespace_, m->name, name)) {
        rc = fail(&e, "name", "the resource name is not namespace/name");
        goto out;
    }
    char tf[64], why[128];
    if ((rc = l7_targets_compile(&a->arena, m->targets, m->n_targets, &a->targets, tf, sizeof(tf), why,
                                 sizeof(why))) < 0) {
        if (rc == -EINVAL) rc = fail(&e, tf, "%s", why);
        goto out;
    }
    a->n_targets = m->n_targets;
    if (m->n_jwt_rules > L7_MAX_JWT_RULES) {
        rc = fail(&e, "jwt_rules", "more than %d rules", L7_MAX_JWT_RULES);
        goto out;
    }
    a->rules = calloc(m->n_jwt_rules ? m->n_jwt_rules : 1, sizeof(*a->rules));
    if (!a->rules) goto out;
    for (size_t i = 0; i < m->n_jwt_rules; i++) {
        rc = rule_compile(a, &e, i, m->jwt_rules[i], &a->rules[i]);
        a->n_rules = i + 1; /* its JWKS (maybe partly parsed) is freed with a */
        if (rc < 0) goto out;
    }
    zmesh__v1__request_authentication__free_unpacked(m, NULL);
    *out = a;
    return 0;
out:
    if (rc == -ENOMEM) fail(&e, "", "out of memory");
    if (m) zmesh__v1__request_authentication__free_unpacked(m, NULL);
    l7_authn_free(a);
    return rc;
}

const char *l7_authn_name(const struct l7_authn *a)
{
    return a->name;
}

size_t l7_authn_n_rules(const struct l7_authn *a)
{
    return a->n_rules;
}

const struct l7_jwt_rule *l7_authn_rule(const struct l7_authn *a, size_t i)
{
    return i < a->n_rules ? &a->rules[i] : NULL;
}

size_t l7_authn_n_targets(const struct l7_authn *a)
{
    return a->n_targets;
}

int l7_authn_target_key(const struct l7_authn *a, size_t i, char *buf, size_t n)
{
    return l7_target_key(&a->targets[i], buf, n);
}

/* ---- the target index: (key, policy) pairs sorted by key then name; a lookup is a bsearch for the run ----
 */

struct abind {
    char *key;
    const struct l7_authn *a;
};

struct l7_authn_index {
    struct abind *b;
    size_t n;
    const struct l7_authn **list; /* b[i].a in order, so a run is a contiguous array */
};

static int abind_cmp(const void *pa, const void *pb)
{
    const struct abind *x = pa, *y = pb;
    int c = strcmp(x->key, y->key);
    return c ? c : strcmp(x->a->name, y->a->name);
}

void l7_authn_index_free(struct l7_authn_index *idx)
{
    if (!idx) return;
    for (size_t i = 0; i < idx->n; i++)
        free(idx->b[i].key);
    free(idx->b);
    free(idx->list);
    free(idx);
}

int l7_authn_index_build(struct l7_authn *const *a, size_t n, struct l7_authn_index **out)
{
    struct l7_authn_index *idx = calloc(1, sizeof(*idx));
    size_t total = 0;
    if (!idx) return -ENOMEM;
    for (size_t i = 0; i < n; i++)
        total += a[i]->n_targets;
    idx->b = calloc(total ? total : 1, sizeof(*idx->b));
    idx->list = calloc(total ? total : 1, sizeof(*idx->list));
    if (!idx->b || !idx->list) goto nomem;
    for (size_t i = 0; i < n; i++)
        for (size_t t = 0; t < a[i]->n_targets; t++) {
            char key[600];
            if (l7_authn_target_key(a[i], t, key, sizeof(key)) < 0) continue;
            bool dup = false; /* a policy naming one target twice counts once */
            for (size_t k = 0; k < idx->n && !dup; k++)
                dup = idx->b[k].a == a[i] && !strcmp(idx->b[k].key, key);
            if (dup) continue;
            if (!(idx->b[idx->n].key = strdup(key))) goto nomem;
            idx->b[idx->n++].a = a[i];
        }
    qsort(idx->b, idx->n, sizeof(*idx->b), abind_cmp);
    for (size_t i = 0; i < idx->n; i++)
        idx->list[i] = idx->b[i].a;
    *out = idx;
    return 0;
nomem:
    l7_authn_index_free(idx);
    return -ENOMEM;
}

static int akey_cmp(const void *key, const void *elem)
{
    return strcmp(key, ((const struct abind *)elem)->key);
}

const struct l7_authn *const *l7_authn_index_get(const struct l7_authn_index *idx, const char *key, size_t *n)
{
    *n = 0;
    if (!idx || !idx->n) return NULL;
    const struct abind *hit = bsearch(key, idx->b, idx->n, sizeof(*idx->b), akey_cmp);
    if (!hit) return NULL;
    size_t lo = (size_t)(hit - idx->b), hi = lo + 1;
    while (lo > 0 && !strcmp(idx->b[lo - 1].key, key))
        lo--;
    while (hi < idx->n && !strcmp(idx->b[hi].key, key))
        hi++;
    *n = hi - lo;
    return idx->list + lo;
}
