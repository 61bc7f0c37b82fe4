/* RequestAuthentication in the waypoint (authn.h). */
#include "waypoint/authn.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "core/log.h"
#include "core/pct.h"
#include "mesh/l7authn.h"

#define LOG_AUTHN "waypoint::jwt"

/* The header values the token search asked for, copied NUL-terminated into one scratch area; a name asked
 * twice gets the same copy, so two rules that read one header see one token (same pointer). */
struct hdr_ctx {
    const struct l7_request *req;
    char *scratch;
    size_t used, cap;
    struct {
        const char *name; /* borrowed from the rule (lower-case) */
        const char *copy; /* NULL: absent */
    } seen[2 * L7_MAX_JWT_LOCATIONS + 2];
    size_t n_seen;
    bool truncated;
};

static const char *get_header(void *ud, const char *name)
{
    struct hdr_ctx *c = ud;
    for (size_t i = 0; i < c->n_seen; i++)
        if (!strcmp(c->seen[i].name, name)) return c->seen[i].copy;
    const struct l7_header *h = NULL;
    size_t nl = strlen(name);
    for (size_t i = 0; i < c->req->n_headers && !h; i++)
        if (c->req->headers[i].name_len == nl && !strncasecmp(c->req->headers[i].name, name, nl))
            h = &c->req->headers[i];
    const char *copy = NULL;
    if (h) {
        if (c->used + h->value_len + 1 > c->cap) {
            c->truncated = true;
        } else {
            char *p = c->scratch + c->used;
            memcpy(p, h->value, h->value_len);
            p[h->value_len] = 0;
            c->used += h->value_len + 1;
            copy = p;
        }
    }
    if (c->n_seen < sizeof(c->seen) / sizeof(c->seen[0]))
        c->seen[c->n_seen++] = (typeof(c->seen[0])){name, copy};
    return copy;
}

/* The header whose copy holds tok, or NULL (the token came from the query or a cookie). */
static const char *token_header(const struct hdr_ctx *c, const char *tok)
{
    for (size_t i = 0; i < c->n_seen; i++)
        if (c->seen[i].copy && tok >= c->seen[i].copy && tok < c->seen[i].copy + strlen(c->seen[i].copy))
            return strcmp(c->seen[i].name, "cookie") ? c->seen[i].name : NULL;
    return NULL;
}

static bool has_header(const struct l7_request *req, const char *name)
{
    size_t nl = strlen(name);
    for (size_t i = 0; i < req->n_headers; i++)
        if (req->headers[i].name_len == nl && !strncasecmp(req->headers[i].name, name, nl) &&
            req->headers[i].value_len)
            return true;
    return false;
}

/* Decision-owned strings for the header modifier. */
static const char *keep(struct wp_decision *d, size_t *used, const char *s, size_t n)
{
    if (*used + n + 1 > sizeof(d->authn_buf)) return NULL;
    char *p = d->authn_buf + *used;
    memcpy(p, s, n);
    p[n] = 0;
    *used += n + 1;
    return p;
}

static void set_header(struct wp_decision *d, size_t *used, const char *name, const char *val, size_t n)
{
    struct l7_header_mod *m = &d->authn_mod;
    const char *v = keep(d, used, val, n);
    if (!v || m->n_set == WP_AUTHN_MAX_SET) {
        LOG_LIMITED(LOG_WARN, LOG_AUTHN, "header %s from the JWT not added: more than %d headers or %d bytes",
                    name, WP_AUTHN_MAX_SET, WP_AUTHN_BUF);
        return;
    }
    d->authn_set[m->n_set++] = (struct l7_kv){name, v};
}

/* A claim's value as a header value (Envoy's claim_to_headers: strings, numbers and booleans); false for
 * other types, and for strings a header cannot carry (control characters). */
static bool claim_text(const json_t *j, char *buf, size_t cap, const char **out, size_t *n)
{
    if (json_is_string(j)) {
        const char *s = json_string_value(j);
        size_t l = json_string_length(j);
        for (size_t i = 0; i < l; i++)
            if (((unsigned char)s[i] < 0x20 && s[i] != '\t') || s[i] == 0x7f) return false;
        *out = s;
        *n = l;
        return true;
    }
    int w;
    if (json_is_integer(j))
        w = snprintf(buf, cap, "%lld", (long long)json_integer_value(j));
    else if (json_is_boolean(j))
        w = snprintf(buf, cap, "%s", json_is_true(j) ? "true" : "false");
    else if (json_is_real(j))
        w = snprintf(buf, cap, "%.17g", json_real_value(j));
    else
        return false;
    if (w <= 0 || (size_t)w >= cap) return false;
    *out = buf;
    *n = (size_t)w;
    return true;
}

static void remove_header(struct wp_decision *d, const char *name)
{
    struct l7_header_mod *m = &d->authn_mod;
    for (size_t i = 0; i < m->n_remove; i++)
        if (!strcmp(d->authn_remove[i], name)) return;
    if (m->n_remove == WP_AUTHN_MAX_REMOVE) {
        LOG_LIMITED(LOG_WARN, LOG_AUTHN, "more than %d headers to remove for JWT rules; %s is not removed",
                    WP_AUTHN_MAX_REMOVE, name);
        return;
    }
    d->authn_remove[m->n_remove++] = name;
}

/* The request's path without every parameter whose percent-decoded name is name (Envoy's JwtParamLocation
 * removeJwt: the decoded parameters without that key), into d->path; the others kept as they were written, in
 * their order, '?' dropped when none is left. */
static void strip_param(struct wp_decision *d, const struct l7_request *req, const char *name, size_t nl)
{
    const char *q = memchr(req->path, '?', req->path_len);
    if (!q) return;
    size_t o = (size_t)(q - req->path), cap = sizeof(d->path);
    if (o + 1 >= cap) return;
    memcpy(d->path, req->path, o);
    const char *p = q + 1, *end = req->path + req->path_len;
    bool first = true;
    while (p <= end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *seg_end = amp ? amp : end;
        size_t sl = (size_t)(seg_end - p);
        const char *eq = memchr(p, '=', sl);
        bool drop = jwt_param_name_eq(p, eq ? (size_t)(eq - p) : sl, name, nl);
        if (!drop && sl) {
            if (o + sl + 2 >= cap) return; /* does not fit: the path stays as it was */
            d->path[o++] = first ? '?' : '&';
            memcpy(d->path + o, p, sl);
            o += sl;
            first = false;
        }
        if (!amp) break;
        p = amp + 1;
    }
    d->path[o] = 0;
    d->rewrite_path = true;
}

/* Whether tok points into the request's path copy (a query parameter's token). */
static bool in_path(const char *tok, const char *path_copy, size_t path_len)
{
    uintptr_t t = (uintptr_t)tok, pc = (uintptr_t)path_copy;
    return *path_copy && t >= pc && t < pc + path_len;
}

/* What a rule does to the request once its token verified: the token removed (forwardOriginalToken false):
 * its header, or its query parameter from the path (Envoy removes both; a cookie token stays, as Envoy's
 * cookie location leaves it), the payload and claims copied to headers. raw is where the token was found (in
 * the path copy for a parameter), tok the verified text (a parameter's value percent-decoded). */
static void outputs(struct wp_decision *d, size_t *used, const struct l7_jwt_rule *r, const char *hdr,
                    const char *raw, const char *tok, size_t tok_len, const struct jwt_result *res,
                    const struct l7_request *req, const char *path_copy)
{
    if (!r->forward && hdr) remove_header(d, hdr);
    if (!r->forward && !hdr && in_path(raw, path_copy, req->path_len)) {
        /* The parameter's name: back from the token to the '?' or '&' that starts its pair, decoded. */
        const char *eq = raw - 1, *start = eq;
        while (start > path_copy && start[-1] != '?' && start[-1] != '&')
            start--;
        char name[256];
        if (*eq == '=' && start < eq && (size_t)(eq - start) <= sizeof(name))
            strip_param(d, req, name, (size_t)pct_decode(start, (size_t)(eq - start), name, sizeof(name)));
    }
    if (r->payload_header) {
        const char *d1 = memchr(tok, '.', tok_len);
        const char *d2 = d1 ? memchr(d1 + 1, '.', tok_len - (size_t)(d1 + 1 - tok)) : NULL;
        if (d2) set_header(d, used, r->payload_header, d1 + 1, (size_t)(d2 - d1 - 1));
    }
    for (size_t i = 0; i < r->n_claim_headers; i++) {
        const struct l7_claim_header *ch = &r->claim_headers[i];
        const json_t *j = jwt_claim(res, ch->path, ch->n_path);
        char buf[64];
        const char *v;
        size_t n;
        if (j && claim_text(j, buf, sizeof(buf), &v, &n)) set_header(d, used, ch->header, v, n);
    }
}

/* The rules of the policies bound to key, appended to rules[*n] (a policy bound twice counts once). */
static void add_rules(const struct l7_config *c, const char *key, const struct l7_authn **seen,
                      size_t *n_seen, const struct l7_jwt_rule **rules, size_t *n)
{
    size_t np;
    const struct l7_authn *const *ps = l7_config_authn_for(c, key, &np);
    for (size_t i = 0; i < np; i++) {
        bool dup = false;
        for (size_t k = 0; k < *n_seen; k++)
            dup |= seen[k] == ps[i];
        if (dup || *n_seen >= 2 * L7_MAX_TARGETS) continue;
        seen[(*n_seen)++] = ps[i];
        for (size_t r = 0; r < l7_authn_n_rules(ps[i]); r++) {
            if (*n == WP_AUTHN_MAX_RULES) {
                LOG_LIMITED(LOG_WARN, LOG_AUTHN,
                            "more than %d JWT rules apply; %s's rule %zu and later left out",
                            WP_AUTHN_MAX_RULES, l7_authn_name(ps[i]), r);
                return;
            }
            rules[(*n)++] = l7_authn_rule(ps[i], r);
        }
    }
}

static void deny(struct wp_tunnel *t, const struct l7_request *req, struct wp_decision *d, enum jwt_status st)
{
    d->kind = WP_DECIDE_LOCAL;
    d->status = jwt_status_http_code(st);
    d->body = jwt_status_str(st);
    d->flags = "-";
    /* Envoy's response code details: jwt_authn_access_denied{<text with '_' for spaces>}. */
    int w = snprintf(d->details, sizeof(d->details), "jwt_authn_access_denied{%s}", jwt_status_str(st));
    for (int i = 0; i < w && (size_t)i < sizeof(d->details); i++)
        if (d->details[i] == ' ') d->details[i] = '_';
    /* Envoy's realm is the original URI with the path cut to 256 bytes and without its query. */
    char path[257];
    size_t pl = strcspn(req->path ? req->path : "", "?");
    if (pl > req->path_len) pl = req->path_len;
    if (pl > 256) pl = 256;
    memcpy(path, req->path ? req->path : "", pl);
    path[pl] = 0;
    const char *host = req->authority && *req->authority ? req->authority : t->authority;
    jwt_www_authenticate(d->www_authenticate, sizeof(d->www_authenticate), host, path, st);
}

bool wp_authn_check(struct wp_tunnel *t, const struct l7_request *req, struct wp_decision *d,
                    struct jwt_result *auth)
{
    memset(auth, 0, sizeof(*auth));
    const struct l7_config *c = t->view->l7;
    if (!l7_config_n_authn(c)) return true;
    const struct l7_jwt_rule *rules[WP_AUTHN_MAX_RULES];
    const struct l7_authn *seen[2 * L7_MAX_TARGETS];
    size_t n = 0, n_seen = 0;
    char key[600];
    if (snprintf(key, sizeof(key), "G:%s/%s", wp_cfg.pod_namespace, wp_cfg.gateway_name) < (int)sizeof(key))
        add_rules(c, key, seen, &n_seen, rules, &n);
    if (t->svc && snprintf(key, sizeof(key), "S:%s/%s", t->svc->namespace_, t->svc->name) < (int)sizeof(key))
        add_rules(c, key, seen, &n_seen, rules, &n);
    if (!n) return true;
    /* A CORS preflight carries no credentials (Istio sets jwt_authn's bypass_cors_preflight). */
    if (req->method && !strcmp(req->method, "OPTIONS") && has_header(req, "origin") &&
        has_header(req, "access-control-request-method"))
        return true;
    char scratch[WP_AUTHN_SCRATCH];
    struct hdr_ctx hc = {.req = req, .scratch = scratch, .cap = sizeof(scratch)};
    /* jwt_extract reads a NUL-terminated path; the query is what it needs. */
    const char *path = "";
    if (req->path && req->path_len < sizeof(scratch) / 2) {
        memcpy(scratch, req->path, req->path_len);
        scratch[req->path_len] = 0;
        path = scratch;
        hc.used = req->path_len + 1;
    } else if (req->path) {
        hc.truncated = true;
    }
    /* The distinct tokens found, each with the rules that found it (in order). */
    struct {
        const char *tok; /* where it was found (the dedup key) */
        size_t len;
        const char *hdr;
        const char *vtok; /* what is verified: tok, or a parameter's value percent-decoded */
        size_t vlen;
        uint64_t rules; /* bit i: rules[i] found it */
    } toks[WP_AUTHN_MAX_RULES];
    size_t nt = 0;
    for (size_t i = 0; i < n; i++) {
        const char *tok;
        size_t tl;
        if (!jwt_extract(&rules[i]->loc, get_header, &hc, path, &tok, &tl)) continue;
        size_t k = 0;
        while (k < nt && !(toks[k].tok == tok && toks[k].len == tl))
            k++;
        if (k == nt) {
            const char *vt = tok;
            size_t vl = tl;
            if (in_path(tok, path, req->path_len)) { /* Envoy verifies the decoded parameter value */
                if (hc.used + tl + 1 > hc.cap) {
                    hc.truncated = true;
                    continue;
                }
                char *p = hc.scratch + hc.used;
                vl = (size_t)pct_decode(tok, tl, p, tl);
                p[vl] = 0;
                hc.used += vl + 1;
                vt = p;
            }
            toks[nt++] = (typeof(toks[0])){tok, tl, token_header(&hc, tok), vt, vl, 0};
        }
        toks[k].rules |= 1ull << i;
    }
    /* The headers a rule writes are never taken from the client (Envoy's extractor sanitizeHeaders): removed
     * here, set again below from a verified token (the modifier removes before it sets). */
    for (size_t i = 0; i < n; i++) {
        if (rules[i]->payload_header) remove_header(d, rules[i]->payload_header);
        for (size_t c = 0; c < rules[i]->n_claim_headers; c++)
            remove_header(d, rules[i]->claim_headers[c].header);
    }
    if (hc.truncated)
        LOG_LIMITED(LOG_WARN, LOG_AUTHN,
                    "request headers or path longer than %d bytes: a token there was not read",
                    WP_AUTHN_SCRATCH / 2);
    int64_t now = (int64_t)time(NULL);
    size_t used = 0;
    for (size_t k = 0; k < nt; k++) {
        /* The rule of the token's issuer verifies it; when no rule has that issuer, "not configured". */
        enum jwt_status st = JWT_UNKNOWN_ISSUER;
        for (size_t i = 0; i < n && st == JWT_UNKNOWN_ISSUER; i++) {
            if (!(toks[k].rules & (1ull << i))) continue;
            struct jwt_result res;
            st = jwt_verify_cached(rules[i]->cache, toks[k].vtok, toks[k].vlen, &rules[i]->rule,
                                   &rules[i]->jwks, now, &res);
            if (st != JWT_OK) continue;
            outputs(d, &used, rules[i], toks[k].hdr, toks[k].tok, toks[k].vtok, toks[k].vlen, &res, req,
                    path);
            if (!auth->principal)
                *auth = res; /* the request principal is the first token's */
            else
                jwt_result_free(&res);
        }
        if (st != JWT_OK) {
            jwt_result_free(auth);
            LOG_LIMITED(LOG_DEBUG, LOG_AUTHN, "%s %s: %s", req->method, t->authority, jwt_status_str(st));
            deny(t, req, d, st);
            return false;
        }
    }
    struct l7_header_mod *m = &d->authn_mod;
    m->set = d->authn_set;
    m->remove = d->authn_remove;
    if ((m->n_set || m->n_remove) && d->n_req_mods < WP_MAX_MODS) d->req_mods[d->n_req_mods++] = m;
    return true;
}
