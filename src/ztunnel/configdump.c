/* /config_dump: a pretty-printed JSON document in istio/ztunnel's shape (src/admin.rs ConfigDump, the serde
 * form of its Workload, Service and Authorization types: camelCase keys, enum variant names, addresses as
 * "network/ip", empty optional fields left out), plus a small JSON writer.
 *
 * The writer follows serde_json's pretty printer (two-space indent, "key": value, empty containers as {} and
 * []) so that diffs against a real ztunnel's dump stay readable. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "mesh/lb.h"
#include "mesh/model.h"
#include "tls/ca.h"
#include "tls/identity.h"
#include "ztunnel/admin.h"

/* ---- JSON writer ---- */

#define JW_MAX_DEPTH 32

struct jw {
    char *p;
    size_t len, cap;
    bool err; /* ENOMEM or nesting too deep: the output is discarded */
    int depth;
    bool nonempty[JW_MAX_DEPTH + 1];
    bool after_key;
};

static void jw_init(struct jw *w)
{
    memset(w, 0, sizeof(*w));
}

static void jw_raw(struct jw *w, const char *s, size_t n)
{
    if (w->err) return;
    if (w->len + n + 1 > w->cap) {
        size_t ncap = w->cap ? w->cap * 2 : 4096;
        while (ncap < w->len + n + 1)
            ncap *= 2;
        char *np = realloc(w->p, ncap);
        if (!np) {
            w->err = true;
            return;
        }
        w->p = np;
        w->cap = ncap;
    }
    memcpy(w->p + w->len, s, n);
    w->len += n;
    w->p[w->len] = '\0';
}

static void jw_newline(struct jw *w)
{
    static const char spaces[] = "                                                                ";
    jw_raw(w, "\n", 1);
    for (int i = 0; i < w->depth; i++)
        jw_raw(w, spaces, 2);
}

/* Separator and indentation before a value in an array (or nothing right after a key). */
static void jw_pre_value(struct jw *w)
{
    if (w->after_key) {
        w->after_key = false;
        return;
    }
    if (w->depth == 0) return;
    if (w->nonempty[w->depth]) jw_raw(w, ",", 1);
    w->nonempty[w->depth] = true;
    jw_newline(w);
}

/* A JSON string literal: quotes, backslashes and control characters escaped as serde_json does; bytes that
 * are not valid UTF-8 become U+FFFD so the document stays valid JSON whatever the config held. */
static void jw_quote(struct jw *w, const char *s)
{
    const unsigned char *p = (const unsigned char *)(s ? s : "");
    jw_raw(w, "\"", 1);
    while (*p) {
        const unsigned char *run = p;
        while (*p >= 0x20 && *p < 0x80 && *p != '"' && *p != '\\')
            p++;
        jw_raw(w, (const char *)run, (size_t)(p - run));
        if (!*p) break;
        unsigned char c = *p;
        if (c == '"') {
            jw_raw(w, "\\\"", 2);
            p++;
        } else if (c == '\\') {
            jw_raw(w, "\\\\", 2);
            p++;
        } else if (c < 0x20) {
            char esc[8];
            switch (c) {
            case '\b':
                jw_raw(w, "\\b", 2);
                break;
            case '\f':
                jw_raw(w, "\\f", 2);
                break;
            case '\n':
                jw_raw(w, "\\n", 2);
                break;
            case '\r':
                jw_raw(w, "\\r", 2);
                break;
            case '\t':
                jw_raw(w, "\\t", 2);
                break;
            default:
                snprintf(esc, sizeof(esc), "\\u%04x", c);
                jw_raw(w, esc, 6);
            }
            p++;
        } else {
            /* A multi-byte UTF-8 sequence: copy it if well-formed (no overlongs, no surrogates, <= U+10FFFF).
             */
            size_t n = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 0;
            bool ok = n && c >= 0xc2 && c <= 0xf4;
            for (size_t i = 1; ok && i < n; i++)
                ok = (p[i] & 0xc0) == 0x80;
            if (ok && n == 3) ok = !(c == 0xe0 && p[1] < 0xa0) && !(c == 0xed && p[1] >= 0xa0);
            if (ok && n == 4) ok = !(c == 0xf0 && p[1] < 0x90) && !(c == 0xf4 && p[1] >= 0x90);
            if (ok) {
                jw_raw(w, (const char *)p, n);
                p += n;
            } else {
                jw_raw(w, "\\ufffd", 6);
                p++;
            }
        }
    }
    jw_raw(w, "\"", 1);
}

static void jw_key(struct jw *w, const char *k)
{
    if (w->nonempty[w->depth]) jw_raw(w, ",", 1);
    w->nonempty[w->depth] = true;
    jw_newline(w);
    jw_quote(w, k);
    jw_raw(w, ": ", 2);
    w->after_key = true;
}

static void jw_open(struct jw *w, const char *bracket)
{
    jw_pre_value(w);
    jw_raw(w, bracket, 1);
    if (w->depth >= JW_MAX_DEPTH) {
        w->err = true;
        return;
    }
    w->depth++;
    w->nonempty[w->depth] = false;
}

static void jw_close(struct jw *w, const char *bracket)
{
    if (w->depth <= 0) {
        w->err = true;
        return;
    }
    bool had = w->nonempty[w->depth];
    w->depth--;
    if (had) jw_newline(w);
    jw_raw(w, bracket, 1);
}

static void jw_obj_begin(struct jw *w)
{
    jw_open(w, "{");
}
static void jw_obj_end(struct jw *w)
{
    jw_close(w, "}");
}
static void jw_arr_begin(struct jw *w)
{
    jw_open(w, "[");
}
static void jw_arr_end(struct jw *w)
{
    jw_close(w, "]");
}

static void jw_str(struct jw *w, const char *s)
{
    jw_pre_value(w);
    jw_quote(w, s);
}

static void jw_uint(struct jw *w, unsigned long long v)
{
    char b[24];
    int n = snprintf(b, sizeof(b), "%llu", v);
    jw_pre_value(w);
    jw_raw(w, b, (size_t)n);
}

static void jw_bool(struct jw *w, bool v)
{
    jw_pre_value(w);
    jw_raw(w, v ? "true" : "false", v ? 4 : 5);
}

/* "key": "value", or nothing when value is empty (serde's skip_serializing_if = "is_default"). */
static void jw_kv_opt(struct jw *w, const char *k, const char *v)
{
    if (!v || !*v) return;
    jw_key(w, k);
    jw_str(w, v);
}

static void jw_kv_str(struct jw *w, const char *k, const char *v)
{
    jw_key(w, k);
    jw_str(w, v);
}

static void jw_kv_uint(struct jw *w, const char *k, unsigned long long v)
{
    jw_key(w, k);
    jw_uint(w, v);
}

/* Ends the document and hands over the buffer (NULL on error). */
static char *jw_finish(struct jw *w, size_t *len)
{
    if (w->depth != 0) w->err = true;
    if (!w->err) jw_raw(w, "\n", 1);
    if (w->err) {
        free(w->p);
        return NULL;
    }
    if (len) *len = w->len;
    return w->p;
}

/* ---- the model ---- */

static void cd_net_addr(struct jw *w, const char *network, const struct ip_addr *ip)
{
    char ipb[IP_STRLEN], buf[1200];
    snprintf(buf, sizeof(buf), "%s/%s", network ? network : "", ip_format(ip, ipb, sizeof(ipb)));
    jw_str(w, buf);
}

static void cd_gateway(struct jw *w, const char *key, const struct gateway_addr *g)
{
    if (!g->set) return;
    jw_key(w, key);
    jw_obj_begin(w);
    jw_key(w, "destination");
    if (g->is_host) {
        char buf[1200];
        snprintf(buf, sizeof(buf), "%s/%s", g->ns, g->host);
        jw_str(w, buf);
    } else {
        cd_net_addr(w, g->network, &g->ip);
    }
    jw_kv_uint(w, "hboneMtlsPort", g->hbone_port);
    jw_obj_end(w);
}

static void cd_workload(struct jw *w, const struct workload *wl)
{
    jw_obj_begin(w);
    jw_key(w, "workloadIps");
    jw_arr_begin(w);
    for (size_t i = 0; i < wl->n_ips; i++) {
        char ipb[IP_STRLEN];
        jw_str(w, ip_format(&wl->ips[i], ipb, sizeof(ipb)));
    }
    jw_arr_end(w);
    cd_gateway(w, "waypoint", &wl->waypoint);
    cd_gateway(w, "networkGateway", &wl->network_gateway);
    jw_kv_str(w, "protocol", wl->protocol == WL_PROTO_HBONE ? "HBONE" : "TCP");
    jw_kv_str(w, "networkMode", wl->network_mode == WL_NET_HOST ? "HostNetwork" : "Standard");
    jw_kv_opt(w, "uid", wl->uid);
    jw_kv_str(w, "name", wl->name);
    jw_kv_str(w, "namespace", wl->namespace_);
    jw_kv_opt(w, "trustDomain", wl->trust_domain);
    jw_kv_opt(w, "serviceAccount", wl->service_account);
    jw_kv_opt(w, "network", wl->network);
    jw_kv_opt(w, "workloadName", wl->workload_name);
    jw_kv_opt(w, "workloadType", wl->workload_type);
    jw_kv_opt(w, "canonicalName", wl->canonical_name);
    jw_kv_opt(w, "canonicalRevision", wl->canonical_revision);
    jw_kv_opt(w, "hostname", wl->hostname);
    jw_kv_opt(w, "node", wl->node);
    if (wl->app_tunnel_protocol || wl->app_tunnel_port) {
        jw_key(w, "applicationTunnel");
        jw_obj_begin(w);
        jw_kv_str(w, "protocol", wl->app_tunnel_protocol == WL_APP_TUNNEL_PROXY ? "PROXY" : "NONE");
        if (wl->app_tunnel_port) jw_kv_uint(w, "port", wl->app_tunnel_port);
        jw_obj_end(w);
    }
    if (wl->n_authorization_policies) {
        jw_key(w, "authorizationPolicies");
        jw_arr_begin(w);
        for (size_t i = 0; i < wl->n_authorization_policies; i++)
            jw_str(w, wl->authorization_policies[i]);
        jw_arr_end(w);
    }
    jw_kv_str(w, "status", wl->healthy ? "Healthy" : "Unhealthy");
    jw_kv_str(w, "clusterId", wl->cluster_id);
    if (*wl->locality.region || *wl->locality.zone || *wl->locality.subzone) {
        jw_key(w, "locality");
        jw_obj_begin(w);
        jw_kv_str(w, "region", wl->locality.region);
        jw_kv_str(w, "zone", wl->locality.zone);
        jw_kv_str(w, "subzone", wl->locality.subzone);
        jw_obj_end(w);
    }
    if (wl->n_services) {
        jw_key(w, "services");
        jw_arr_begin(w);
        for (size_t i = 0; i < wl->n_services; i++)
            jw_str(w, wl->services[i].key);
        jw_arr_end(w);
    }
    jw_kv_uint(w, "capacity", wl->capacity);
    jw_obj_end(w);
}

static void cd_ports(struct jw *w, const char *key, const struct port_map *pm, size_t n)
{
    jw_key(w, key);
    jw_obj_begin(w);
    for (size_t i = 0; i < n; i++) {
        char k[8];
        snprintf(k, sizeof(k), "%u", pm[i].port);
        jw_kv_uint(w, k, pm[i].target);
    }
    jw_obj_end(w);
}

/* "endpoints": {uid: {workloadUid, port, status}}, istio/ztunnel src/state/service.rs Endpoint (an
 * EndpointSet keyed by workload uid): the workloads whose `services` map names this service, with that map's
 * ports. `zmesh ztunnel-config services` counts them for its ENDPOINTS column. */
static void cd_endpoints(struct jw *w, const struct snapshot *snap, const struct service *s)
{
    size_t n = 0;
    const struct workload *const *eps = snap ? snapshot_service_endpoints(snap, s, &n) : NULL;
    jw_key(w, "endpoints");
    jw_obj_begin(w);
    for (size_t i = 0; i < n; i++) {
        const struct wl_service_ports *sp = workload_service_ports(eps[i], s->namespace_, s->hostname);
        jw_key(w, eps[i]->uid);
        jw_obj_begin(w);
        jw_kv_str(w, "workloadUid", eps[i]->uid);
        cd_ports(w, "port", sp ? sp->ports : NULL, sp ? sp->n_ports : 0);
        jw_kv_str(w, "status", eps[i]->healthy ? "Healthy" : "Unhealthy");
        jw_obj_end(w);
    }
    jw_obj_end(w);
}

static void cd_service(struct jw *w, const struct snapshot *snap, const struct service *s)
{
    static const char *const families[] = {"Automatic", "IPv4", "IPv6", "Dual"};
    static const char *const health[] = {"OnlyHealthy", "AllowAll"};

    jw_obj_begin(w);
    jw_kv_str(w, "name", s->name);
    jw_kv_str(w, "namespace", s->namespace_);
    jw_kv_str(w, "hostname", s->hostname);
    jw_key(w, "vips");
    jw_arr_begin(w);
    for (size_t i = 0; i < s->n_vips; i++)
        cd_net_addr(w, s->vips[i].network, &s->vips[i].ip);
    jw_arr_end(w);
    cd_ports(w, "ports", s->ports, s->n_ports);
    cd_endpoints(w, snap, s);
    jw_key(w, "subjectAltNames");
    jw_arr_begin(w);
    for (size_t i = 0; i < s->n_sans; i++)
        jw_str(w, s->subject_alt_names[i]);
    jw_arr_end(w);
    cd_gateway(w, "waypoint", &s->waypoint);
    if (s->n_routing_prefs || s->lb_mode || s->health_policy) {
        jw_key(w, "loadBalancer");
        jw_obj_begin(w);
        jw_key(w, "routingPreferences");
        jw_arr_begin(w);
        for (size_t i = 0; i < s->n_routing_prefs; i++)
            jw_str(w, lb_scope_name(s->routing_prefs[i]));
        jw_arr_end(w);
        jw_kv_str(w, "mode", lb_mode_name(s->lb_mode));
        jw_kv_str(w, "healthPolicy", s->health_policy < 2 ? health[s->health_policy] : "?");
        jw_obj_end(w);
    }
    if (s->ip_families) jw_kv_str(w, "ipFamilies", s->ip_families < 4 ? families[s->ip_families] : "?");
    jw_obj_end(w);
}

static void cd_string_matches(struct jw *w, const char *key, const struct string_match *m, size_t n)
{
    static const char *const kinds[] = {"Exact", "Prefix", "Suffix", "Presence"};
    if (!n) return;
    jw_key(w, key);
    jw_arr_begin(w);
    for (size_t i = 0; i < n; i++) {
        jw_obj_begin(w);
        jw_key(w, m[i].kind < 4 ? kinds[m[i].kind] : "?");
        if (m[i].kind == SM_PRESENCE) {
            jw_arr_begin(w);
            jw_arr_end(w);
        } else {
            jw_str(w, m[i].value);
        }
        jw_obj_end(w);
    }
    jw_arr_end(w);
}

static void cd_cidrs(struct jw *w, const char *key, const struct cidr *c, size_t n)
{
    if (!n) return;
    jw_key(w, key);
    jw_arr_begin(w);
    for (size_t i = 0; i < n; i++) {
        char ipb[IP_STRLEN], buf[IP_STRLEN + 8];
        snprintf(buf, sizeof(buf), "%s/%u", ip_format(&c[i].ip, ipb, sizeof(ipb)), c[i].len);
        jw_str(w, buf);
    }
    jw_arr_end(w);
}

static void cd_port_list(struct jw *w, const char *key, const uint16_t *p, size_t n)
{
    if (!n) return;
    jw_key(w, key);
    jw_arr_begin(w);
    for (size_t i = 0; i < n; i++)
        jw_uint(w, p[i]);
    jw_arr_end(w);
}

static void cd_sa_matches(struct jw *w, const char *key, const struct sa_match *m, size_t n)
{
    if (!n) return;
    jw_key(w, key);
    jw_arr_begin(w);
    for (size_t i = 0; i < n; i++) {
        jw_obj_begin(w);
        jw_kv_str(w, "namespace", m[i].namespace_);
        jw_kv_str(w, "serviceAccount", m[i].service_account);
        jw_obj_end(w);
    }
    jw_arr_end(w);
}

static void cd_match(struct jw *w, const struct auth_match *m)
{
    jw_obj_begin(w);
    cd_string_matches(w, "namespaces", m->namespaces, m->n_namespaces);
    cd_string_matches(w, "notNamespaces", m->not_namespaces, m->n_not_namespaces);
    cd_sa_matches(w, "serviceAccounts", m->service_accounts, m->n_service_accounts);
    cd_sa_matches(w, "notServiceAccounts", m->not_service_accounts, m->n_not_service_accounts);
    cd_string_matches(w, "principals", m->principals, m->n_principals);
    cd_string_matches(w, "notPrincipals", m->not_principals, m->n_not_principals);
    cd_cidrs(w, "sourceIps", m->source_ips, m->n_source_ips);
    cd_cidrs(w, "notSourceIps", m->not_source_ips, m->n_not_source_ips);
    cd_cidrs(w, "destinationIps", m->destination_ips, m->n_destination_ips);
    cd_cidrs(w, "notDestinationIps", m->not_destination_ips, m->n_not_destination_ips);
    cd_port_list(w, "destinationPorts", m->destination_ports, m->n_destination_ports);
    cd_port_list(w, "notDestinationPorts", m->not_destination_ports, m->n_not_destination_ports);
    jw_obj_end(w);
}

static void cd_policy(struct jw *w, const struct policy *p)
{
    static const char *const scopes[] = {"Global", "Namespace", "WorkloadSelector"};
    jw_obj_begin(w);
    jw_kv_str(w, "name", p->name);
    jw_kv_str(w, "namespace", p->namespace_);
    jw_kv_str(w, "scope", p->scope < 3 ? scopes[p->scope] : "?");
    jw_kv_str(w, "action", p->action == POLICY_DENY ? "Deny" : "Allow");
    /* rules: [rule = [clause = [match]]], the nesting of the local config. */
    jw_key(w, "rules");
    jw_arr_begin(w);
    for (size_t r = 0; r < p->n_rules; r++) {
        jw_arr_begin(w);
        for (size_t c = 0; c < p->rules[r].n_clauses; c++) {
            const struct auth_clause *cl = &p->rules[r].clauses[c];
            jw_arr_begin(w);
            for (size_t m = 0; m < cl->n_matches; m++)
                cd_match(w, &cl->matches[m]);
            jw_arr_end(w);
        }
        jw_arr_end(w);
    }
    jw_arr_end(w);
    jw_key(w, "dryRun");
    jw_bool(w, p->dry_run);
    jw_obj_end(w);
}

/* ---- certificates ---- */

static void cd_time(const ASN1_TIME *t, char *buf, size_t n)
{
    struct tm tm;
    if (!t || !ASN1_TIME_to_tm(t, &tm) || !strftime(buf, n, "%Y-%m-%dT%H:%M:%SZ", &tm)) snprintf(buf, n, "?");
}

/* {pem (base64 of the PEM text), serialNumber (decimal, as Istio prints a BigNum), validFrom,
 * expirationTime}. */
static void cd_x509(struct jw *w, X509 *x)
{
    BIO *bio = BIO_new(BIO_s_mem());
    char *pem = NULL, *b64 = NULL, *dec = NULL;
    BIGNUM *bn = NULL;
    char from[40], to[40];

    jw_obj_begin(w);
    if (bio && PEM_write_bio_X509(bio, x)) {
        long n = BIO_get_mem_data(bio, &pem);
        if (n > 0 && (b64 = malloc(((size_t)n + 2) / 3 * 4 + 1))) {
            EVP_EncodeBlock((unsigned char *)b64, (const unsigned char *)pem, (int)n);
            jw_kv_str(w, "pem", b64);
        }
    }
    bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
    if (bn && (dec = BN_bn2dec(bn))) jw_kv_str(w, "serialNumber", dec);
    cd_time(X509_get0_notBefore(x), from, sizeof(from));
    cd_time(X509_get0_notAfter(x), to, sizeof(to));
    jw_kv_str(w, "validFrom", from);
    jw_kv_str(w, "expirationTime", to);
    jw_obj_end(w);
    OPENSSL_free(dec);
    BN_free(bn);
    free(b64);
    BIO_free(bio);
    ERR_clear_error();
}

/* One certificate as ztunnel's admin.rs dump_certs writes it: identity, state ("Initializing", "Available" or
 * "Unavailable: <error>"), certChain (leaf then intermediates) and rootCerts (the trust anchors), both empty
 * unless Available. */
static void cd_cert(struct jw *w, const struct identity_status *st)
{
    char state[IDENTITY_ERR_MAX + 32];
    const struct tls_cert *c = st->state == IDENTITY_AVAILABLE && st->cur ? st->cur->cert : NULL;
    if (st->state == IDENTITY_UNAVAILABLE)
        snprintf(state, sizeof(state), "%s: %s", identity_state_to_str(st->state), st->error);
    else
        snprintf(state, sizeof(state), "%s", identity_state_to_str(st->state));
    jw_obj_begin(w);
    jw_kv_str(w, "identity", st->uri);
    jw_kv_str(w, "state", state);
    jw_key(w, "certChain");
    jw_arr_begin(w);
    if (c && c->leaf) cd_x509(w, c->leaf);
    for (int i = 0; c && c->leaf && c->chain && i < sk_X509_num(c->chain); i++)
        cd_x509(w, sk_X509_value(c->chain, i));
    jw_arr_end(w);
    jw_key(w, "rootCerts");
    jw_arr_begin(w);
    if (c && c->leaf && c->root) cd_x509(w, c->root);
    jw_arr_end(w);
    jw_obj_end(w);
}

char *config_dump_render(const struct snapshot *s, const struct identity_status *certs, size_t n_certs,
                         const struct admin_pod *pods, int n_pods, size_t *len)
{
    struct jw w;
    jw_init(&w);
    jw_obj_begin(&w);

    jw_key(&w, "workloads");
    jw_arr_begin(&w);
    for (size_t i = 0; s && i < snapshot_n_workloads(s); i++)
        cd_workload(&w, snapshot_workload_at(s, i));
    jw_arr_end(&w);

    jw_key(&w, "services");
    jw_arr_begin(&w);
    for (size_t i = 0; s && i < snapshot_n_services(s); i++)
        cd_service(&w, s, snapshot_service_at(s, i));
    jw_arr_end(&w);

    jw_key(&w, "policies");
    jw_arr_begin(&w);
    for (size_t i = 0; s && i < snapshot_n_policies(s); i++)
        cd_policy(&w, snapshot_policy_at(s, i));
    jw_arr_end(&w);

    /* zmesh has no services waiting for their endpoints; the key is kept for tools that expect it. */
    jw_key(&w, "stagedServices");
    jw_obj_begin(&w);
    jw_obj_end(&w);

    jw_key(&w, "certificates");
    jw_arr_begin(&w);
    for (size_t i = 0; i < n_certs; i++)
        cd_cert(&w, &certs[i]);
    jw_arr_end(&w);

    if (n_pods >= 0) {
        jw_key(&w, "workloadState");
        jw_obj_begin(&w);
        for (int i = 0; i < n_pods; i++) {
            jw_key(&w, pods[i].uid);
            jw_obj_begin(&w);
            jw_key(&w, "state");
            jw_str(&w, pods[i].state);
            jw_key(&w, "info");
            jw_obj_begin(&w);
            jw_key(&w, "name");
            jw_str(&w, pods[i].name);
            jw_key(&w, "namespace");
            jw_str(&w, pods[i].ns);
            jw_key(&w, "serviceAccount");
            jw_str(&w, pods[i].sa);
            jw_obj_end(&w);
            jw_obj_end(&w);
        }
        jw_obj_end(&w);
    }

    jw_obj_end(&w);
    return jw_finish(&w, len);
}
