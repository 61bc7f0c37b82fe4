/* RequestAuthentication manifests to zmesh.v1.RequestAuthentication, and the JWKS resolver (see the header).
 */
#include "zmeshd/request_authentication.h"

#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"
#include "core/loop.h"
#include "mesh/l7.h"
#include "mesh/l7authn.h"
#include "mesh/l7authz.h"
#include "zmesh/request_authentication.pb-c.h"
#include "zmeshd/l7.h"
#include "zmeshd/l7_conv.h"

#define GATEWAY_GROUP "gateway.networking.k8s.io"

/* ---- the resolver's entry point (src/zmeshd/jwks.h installs it; without it, as in the waypoint's and the
 * CLI's own conversions, a jwksUri gets the fake JWKS and a finding) ---- */

static zmeshd_jwks_lookup_fn jwks_lookup_hook;

void zmeshd_request_authn_set_resolver(zmeshd_jwks_lookup_fn fn)
{
    jwks_lookup_hook = fn;
}

static int jwks_lookup(const char *issuer, const char *uri, int timeout_ms, char **body, char *err,
                       size_t errlen)
{
    if (jwks_lookup_hook) return jwks_lookup_hook(issuer, uri, timeout_ms, body, err, errlen);
    *body = NULL;
    snprintf(err, errlen, "only zmeshd fetches a jwksUri (this conversion runs without its resolver)");
    return ZMESHD_JWKS_FAILED;
}

char *zmeshd_jwks_fake(const char *uri)
{
    /* istiod: n = base64url("Error-IstiodFailedToFetchJwksUri-" + uri), e AQAB, kid "abc". */
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    static const char pre[] = "Error-IstiodFailedToFetchJwksUri-";
    size_t n = strlen(pre) + strlen(uri);
    unsigned char *raw = malloc(n + 1);
    char *enc = malloc((n + 2) / 3 * 4 + 1), *out = NULL;
    if (!raw || !enc) goto done;
    snprintf((char *)raw, n + 1, "%s%s", pre, uri);
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)raw[i] << 16 | (i + 1 < n ? (uint32_t)raw[i + 1] << 8 : 0) |
                     (i + 2 < n ? raw[i + 2] : 0);
        enc[o++] = tbl[v >> 18 & 63];
        enc[o++] = tbl[v >> 12 & 63];
        if (i + 1 < n) enc[o++] = tbl[v >> 6 & 63];
        if (i + 2 < n) enc[o++] = tbl[v & 63];
    }
    enc[o] = 0;
    size_t ol = o + 80;
    if ((out = malloc(ol)))
        snprintf(out, ol, "{\"keys\":[ {\"e\":\"AQAB\",\"kid\":\"abc\",\"kty\":\"RSA\",\"n\":\"%s\"}]}", enc);
done:
    free(raw);
    free(enc);
    return out;
}

/* ---- conversion ---- */

static char *lower_dup(struct conv *c, const char *s)
{
    char *d = l7c_dup(c, s);
    for (char *p = d; p && *p; p++)
        *p = (char)tolower((unsigned char)*p);
    return d;
}

/* A protobuf Duration's JSON form ("5s", "1.5s", "300ms" is not one: Istio's CRD takes Go durations, so
 * "300ms" and "1m" are accepted too). Returns milliseconds or -1. */
static long duration_ms(const char *s)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || v < 0) return -1;
    double mul = !strcmp(end, "s") ? 1000 : !strcmp(end, "ms") ? 1 : !strcmp(end, "m") ? 60000 : -1;
    if (mul < 0 || v * mul > 3600000) return -1;
    return (long)(v * mul);
}

static Zmesh__V1__JWTRule *rule_conv(struct conv *c, const json_t *o, const char *path, const char *name)
{
    static const char *const keys[] = {"issuer",
                                       "audiences",
                                       "jwks",
                                       "jwksUri",
                                       "jwks_uri",
                                       "fromHeaders",
                                       "fromParams",
                                       "fromCookies",
                                       "forwardOriginalToken",
                                       "outputPayloadToHeader",
                                       "outputClaimToHeaders",
                                       "timeout",
                                       NULL};
    char f[256];
    if (!json_is_object(o)) {
        l7c_finding(c, MANIFEST_ERROR, path, "expected a mapping");
        return NULL;
    }
    l7c_unknown_keys(c, o, path, keys);
    Zmesh__V1__JWTRule *r = l7c_alloc(c, sizeof(*r));
    if (!r) return NULL;
    zmesh__v1__jwtrule__init(r);
    const char *issuer = NULL, *jwks = NULL, *uri = NULL, *tmo = NULL, *payload = NULL;
    if (l7c_get_str(c, o, "issuer", path, &issuer) < 0 || l7c_get_str(c, o, "jwks", path, &jwks) < 0 ||
        l7c_get_str(c, o, "jwksUri", path, &uri) < 0 || l7c_get_str(c, o, "timeout", path, &tmo) < 0 ||
        l7c_get_str(c, o, "outputPayloadToHeader", path, &payload) < 0)
        return NULL;
    if (!uri && l7c_get_str(c, o, "jwks_uri", path, &uri) < 0) return NULL;
    if (!issuer || !*issuer) {
        snprintf(f, sizeof(f), "%s.issuer", path);
        l7c_finding(c, MANIFEST_ERROR, f, "required");
        return NULL;
    }
    r->issuer = l7c_dup(c, issuer);
    if (l7c_get_strs(c, o, "audiences", path, &r->audiences, &r->n_audiences) < 0) return NULL;
    int timeout_ms = ZMESHD_JWKS_TIMEOUT_MS;
    if (tmo) {
        long ms = duration_ms(tmo);
        snprintf(f, sizeof(f), "%s.timeout", path);
        if (ms <= 0) {
            l7c_finding(c, MANIFEST_ERROR, f, "expected a duration such as \"5s\" (at most 1h), got \"%.40s\"",
                    tmo);
            return NULL;
        }
        timeout_ms = (int)ms;
    }
    if (jwks && *jwks) {
        if (uri && *uri) {
            snprintf(f, sizeof(f), "%s.jwksUri", path);
            l7c_finding(c, MANIFEST_WARN, f, "jwks is set too: the inline jwks is used, jwksUri is not fetched");
        }
        r->jwks = l7c_dup(c, jwks);
    } else {
        if (uri && *uri && strncmp(uri, "http://", 7) && strncmp(uri, "https://", 8)) {
            snprintf(f, sizeof(f), "%s.jwksUri", path);
            l7c_finding(c, MANIFEST_ERROR, f, "expected an http:// or https:// URL, got \"%.80s\"", uri);
            return NULL;
        }
        /* The resolver's document, or istiod's fake JWKS until it has one. */
        char *body = NULL, err[256] = "";
        int st = jwks_lookup(issuer, uri ? uri : "", timeout_ms, &body, err, sizeof(err));
        if (st == -ENOMEM) {
            c->oom = true;
            return NULL;
        }
        snprintf(f, sizeof(f), "%s.%s", path, uri && *uri ? "jwksUri" : "issuer");
        if (st != ZMESHD_JWKS_OK)
            l7c_finding(c, st == ZMESHD_JWKS_PENDING ? MANIFEST_INFO : MANIFEST_WARN, f,
                    "JWKS %s: %s; tokens of issuer %s are rejected until it is fetched",
                    st == ZMESHD_JWKS_PENDING ? "not fetched yet" : "fetch failed", err, issuer);
        char *doc = body ? body : zmeshd_jwks_fake(uri && *uri ? uri : issuer);
        if (!doc) {
            c->oom = true;
            return NULL;
        }
        /* A fetched document the waypoint would refuse is a failed fetch too: the fake one stands in. */
        struct jwt_jwks parsed;
        char perr[200] = "";
        enum jwt_status ps = jwt_jwks_parse(doc, strlen(doc), &parsed, perr, sizeof(perr));
        if (ps == JWT_OK) {
            jwt_jwks_free(&parsed);
        } else if (body) {
            l7c_finding(c, MANIFEST_WARN, f,
                    "the fetched JWKS is not usable (%s%s%s); tokens of issuer %s are rejected",
                    jwt_status_str(ps), *perr ? ": " : "", perr, issuer);
            free(doc);
            doc = zmeshd_jwks_fake(uri && *uri ? uri : issuer);
            if (!doc) {
                c->oom = true;
                return NULL;
            }
        }
        r->jwks = l7c_dup(c, doc);
        free(doc);
        r->jwks_uri = l7c_dup(c, uri ? uri : "");
    }
    json_t *l;
    int rc = l7c_get_list(c, o, "fromHeaders", path, &l);
    if (rc < 0) return NULL;
    if (rc > 0) {
        r->from_headers = l7c_alloc(c, json_array_size(l) * sizeof(*r->from_headers));
        if (!r->from_headers) return NULL;
        for (size_t i = 0; i < json_array_size(l); i++) {
            json_t *h = json_array_get(l, i);
            static const char *const hk[] = {"name", "prefix", NULL};
            snprintf(f, sizeof(f), "%s.fromHeaders[%zu]", path, i);
            const char *hn = NULL, *pre = "";
            if (!json_is_object(h) || l7c_get_str(c, h, "name", f, &hn) <= 0 || !*hn) {
                if (!c->failed) l7c_finding(c, MANIFEST_ERROR, f, "expected {name, prefix}");
                return NULL;
            }
            l7c_unknown_keys(c, h, f, hk);
            if (l7c_get_str(c, h, "prefix", f, &pre) < 0) return NULL;
            Zmesh__V1__JWTHeader *jh = l7c_alloc(c, sizeof(*jh));
            if (!jh) return NULL;
            zmesh__v1__jwtheader__init(jh);
            jh->name = lower_dup(c, hn);
            jh->prefix = l7c_dup(c, pre);
            r->from_headers[r->n_from_headers++] = jh;
        }
    }
    if (l7c_get_strs(c, o, "fromParams", path, &r->from_params, &r->n_from_params) < 0 ||
        l7c_get_strs(c, o, "fromCookies", path, &r->from_cookies, &r->n_from_cookies) < 0)
        return NULL;
    json_t *fw = json_object_get(o, "forwardOriginalToken");
    if (fw && !json_is_boolean(fw)) {
        snprintf(f, sizeof(f), "%s.forwardOriginalToken", path);
        l7c_finding(c, MANIFEST_ERROR, f, "expected true or false");
        return NULL;
    }
    r->forward_original_token = json_is_true(fw);
    if (payload) r->output_payload_to_header = lower_dup(c, payload);
    rc = l7c_get_list(c, o, "outputClaimToHeaders", path, &l);
    if (rc < 0) return NULL;
    if (rc > 0) {
        r->output_claim_to_headers = l7c_alloc(c, json_array_size(l) * sizeof(*r->output_claim_to_headers));
        if (!r->output_claim_to_headers) return NULL;
        for (size_t i = 0; i < json_array_size(l); i++) {
            json_t *h = json_array_get(l, i);
            static const char *const ck[] = {"header", "claim", NULL};
            snprintf(f, sizeof(f), "%s.outputClaimToHeaders[%zu]", path, i);
            const char *hdr = NULL, *claim = NULL;
            if (!json_is_object(h) || l7c_get_str(c, h, "header", f, &hdr) <= 0 ||
                l7c_get_str(c, h, "claim", f, &claim) <= 0 || !*hdr || !*claim) {
                if (!c->failed) l7c_finding(c, MANIFEST_ERROR, f, "expected {header, claim}");
                return NULL;
            }
            l7c_unknown_keys(c, h, f, ck);
            Zmesh__V1__ClaimToHeader *ch = l7c_alloc(c, sizeof(*ch));
            if (!ch) return NULL;
            zmesh__v1__claim_to_header__init(ch);
            ch->header = lower_dup(c, hdr);
            ch->claim = l7c_dup(c, claim);
            r->output_claim_to_headers[r->n_output_claim_to_headers++] = ch;
        }
    }
    (void)name;
    return c->failed || c->oom ? NULL : r;
}

int zmeshd_convert_request_authn(const json_t *obj, const struct manifest_src *src, uint8_t **pb, size_t *len,
                                 char *name, size_t name_n, manifest_report_fn report, void *ud)
{
    struct conv c = {.src = src, .report = report, .ud = ud};
    int rc = -EINVAL;
    *pb = NULL;
    *len = 0;
    if (!json_is_object(obj)) {
        l7c_finding(&c, MANIFEST_ERROR, "", "expected a mapping");
        return -EINVAL;
    }
    static const char *const top[] = {"apiVersion", "kind", "metadata", "spec", "status", NULL};
    l7c_unknown_keys(&c, obj, "", top);
    const char *api = "", *kind = "", *ns = "default", *nm = NULL;
    if (l7c_get_str(&c, obj, "apiVersion", "", &api) < 0 || l7c_get_str(&c, obj, "kind", "", &kind) < 0) goto out;
    if (strcmp(kind, "RequestAuthentication") != 0) {
        l7c_finding(&c, MANIFEST_ERROR, "kind", "expected RequestAuthentication, got \"%.40s\"", kind);
        goto out;
    }
    if (strcmp(api, "security.istio.io/v1") != 0 && strcmp(api, "security.istio.io/v1beta1") != 0) {
        l7c_finding(&c, MANIFEST_ERROR, "apiVersion", "expected security.istio.io/v1 or v1beta1, got \"%.60s\"",
                api);
        goto out;
    }
    json_t *md = json_object_get(obj, "metadata");
    if (!json_is_object(md) || l7c_get_str(&c, md, "name", "metadata", &nm) <= 0 || !*nm) {
        if (!c.failed) l7c_finding(&c, MANIFEST_ERROR, "metadata.name", "missing");
        goto out;
    }
    if (l7c_get_str(&c, md, "namespace", "metadata", &ns) < 0) goto out;
    if (!*ns) ns = "default";
    if (snprintf(name, name_n, "%s/%s", ns, nm) >= (int)name_n) {
        l7c_finding(&c, MANIFEST_ERROR, "metadata.name", "namespace/name longer than %zu bytes", name_n - 1);
        goto out;
    }
    json_t *spec = json_object_get(obj, "spec");
    if (spec && !json_is_object(spec)) {
        l7c_finding(&c, MANIFEST_ERROR, "spec", "expected a mapping");
        goto out;
    }
    static const char *const sk[] = {"selector", "targetRef", "targetRefs", "jwtRules", NULL};
    if (spec) l7c_unknown_keys(&c, spec, "spec", sk);
    json_t *tl = json_object_get(spec, "targetRefs"), *single = NULL;
    if (json_object_get(spec, "selector")) {
        if (tl || json_object_get(spec, "targetRef")) {
            l7c_finding(&c, MANIFEST_ERROR, "spec.selector", "only one of selector and targetRefs may be set");
            goto out;
        }
        /* Istio: a waypoint enforces only the policies that name it (or its Services) in targetRefs. */
        l7c_finding(
            &c, MANIFEST_WARN, "spec.selector",
            "a policy with a selector applies to the selected workloads' sidecars, not to a waypoint: not "
            "served to waypoints (use targetRefs)");
        rc = -ENOENT;
        goto out;
    }
    if (!tl && !json_object_get(spec, "targetRef")) {
        l7c_finding(&c, MANIFEST_INFO, "spec.targetRefs",
                "no targetRefs: a namespace-wide policy applies to sidecars, not to a waypoint; not served "
                "to waypoints");
        rc = -ENOENT;
        goto out;
    }
    if (tl && json_object_get(spec, "targetRef")) {
        l7c_finding(&c, MANIFEST_ERROR, "spec.targetRef", "only one of targetRef and targetRefs may be set");
        goto out;
    }
    const char *tpath = "spec.targetRefs";
    if (!tl) {
        if (!(single = json_array())) goto nomem;
        json_array_append(single, json_object_get(spec, "targetRef"));
        tl = single;
        tpath = "spec.targetRef";
    }
    Zmesh__V1__RequestAuthentication m = ZMESH__V1__REQUEST_AUTHENTICATION__INIT;
    m.namespace_ = (char *)ns;
    m.name = (char *)nm;
    if (!json_is_array(tl) || json_array_size(tl) == 0 || json_array_size(tl) > L7_MAX_TARGETS) {
        l7c_finding(&c, MANIFEST_ERROR, tpath, "expected 1-%d targets", L7_MAX_TARGETS);
        json_decref(single);
        goto out;
    }
    m.targets = l7c_alloc(&c, json_array_size(tl) * sizeof(*m.targets));
    for (size_t i = 0; m.targets && i < json_array_size(tl); i++) {
        json_t *t = json_array_get(tl, i);
        char f[80];
        if (single)
            snprintf(f, sizeof(f), "%s", tpath);
        else
            snprintf(f, sizeof(f), "%s[%zu]", tpath, i);
        static const char *const tk[] = {"group", "kind", "name", "namespace", NULL};
        const char *group = "", *tkind = "", *tname = NULL, *tns = ns;
        if (!json_is_object(t)) {
            l7c_finding(&c, MANIFEST_ERROR, f, "expected a mapping");
            break;
        }
        l7c_unknown_keys(&c, t, f, tk);
        if (l7c_get_str(&c, t, "group", f, &group) < 0 || l7c_get_str(&c, t, "kind", f, &tkind) < 0 ||
            l7c_get_str(&c, t, "namespace", f, &tns) < 0)
            break;
        char nf[100];
        snprintf(nf, sizeof(nf), "%s.name", f);
        if (l7c_get_str(&c, t, "name", f, &tname) <= 0 || !*tname) {
            if (!c.failed) l7c_finding(&c, MANIFEST_ERROR, nf, "missing");
            break;
        }
        if (strcmp(tns, ns) != 0) {
            snprintf(nf, sizeof(nf), "%s.namespace", f);
            l7c_finding(&c, MANIFEST_ERROR, nf, "a target must be in the policy's namespace %s", ns);
            break;
        }
        Zmesh__V1__PolicyTarget *pt = l7c_alloc(&c, sizeof(*pt));
        if (!pt) break;
        zmesh__v1__policy_target__init(pt);
        if (!strcmp(group, GATEWAY_GROUP) && !strcmp(tkind, "Gateway"))
            pt->kind = ZMESH__V1__POLICY_TARGET__KIND__GATEWAY;
        else if (!*group && !strcmp(tkind, "Service"))
            pt->kind = ZMESH__V1__POLICY_TARGET__KIND__SERVICE;
        else {
            snprintf(nf, sizeof(nf), "%s.kind", f);
            l7c_finding(&c, MANIFEST_ERROR, nf, "unsupported target %s%s%s (Gateway and Service are supported)",
                    group, *group ? "/" : "", tkind);
            break;
        }
        pt->namespace_ = l7c_dup(&c, ns);
        pt->name = l7c_dup(&c, tname);
        m.targets[m.n_targets++] = pt;
    }
    json_decref(single);
    if (c.failed || c.oom) goto out;
    json_t *rl;
    int r = l7c_get_list(&c, spec, "jwtRules", "spec", &rl);
    if (r < 0) goto out;
    if (r > 0) {
        m.jwt_rules = l7c_alloc(&c, json_array_size(rl) * sizeof(*m.jwt_rules));
        if (!m.jwt_rules) goto nomem;
        for (size_t i = 0; i < json_array_size(rl); i++) {
            char f[64];
            snprintf(f, sizeof(f), "spec.jwtRules[%zu]", i);
            Zmesh__V1__JWTRule *jr = rule_conv(&c, json_array_get(rl, i), f, name);
            if (!jr) goto out;
            m.jwt_rules[m.n_jwt_rules++] = jr;
        }
    }
    if (c.failed || c.oom) goto out;
    /* Packed, then compiled by the waypoint's model: what zmeshd serves is what the waypoint takes. */
    size_t n = protobuf_c_message_get_packed_size(&m.base);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf) goto nomem;
    protobuf_c_message_pack(&m.base, buf);
    struct l7_authn *a = NULL;
    char err[512];
    int crc = l7_authn_compile(name, buf, n, &a, err, sizeof(err));
    if (crc < 0) {
        free(buf);
        if (crc == -ENOMEM) goto nomem;
        l7c_finding(&c, MANIFEST_ERROR, "spec", "%s", err);
        goto out;
    }
    l7_authn_free(a);
    *pb = buf;
    *len = n;
    rc = 0;
    goto out;
nomem:
    rc = -ENOMEM;
out:
    if (c.oom) rc = -ENOMEM;
    l7_arena_free(&c.a);
    return rc;
}
