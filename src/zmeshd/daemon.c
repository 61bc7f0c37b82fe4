/* The zmeshd daemon: CA, token key, manifest source, snapshot, subscribers (daemon.h). */
#include "zmeshd/daemon.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "core/log.h"
#include "core/net.h"
#include "core/vec.h"
#include "mesh/builder.h"

#define LOG_TARGET "zmeshd"

struct subscriber {
    zmeshd_subscriber_fn fn;    /* a snapshot subscriber, or NULL */
    zmeshd_store_fn store_fn;   /* a store subscriber, or NULL */
    void *ud;
};

struct zmeshd {
    struct loop *loop;
    struct zmeshd_config cfg; /* strings point into owned[] */
    char *owned[12];
    size_t n_owned;
    struct ca_issuer *ca;
    struct token_key *tk;
    struct ca_trusted trusted;
    struct sockaddr_storage listen_addr;
    struct manifest_source *src;
    struct manifest_store *store; /* the one snap was computed from */
    struct snapshot *snap;
    struct zmeshd_load_info last;
    struct vec subs; /* struct subscriber */
    bool publishing;
};

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* Copies *s into d's owned strings; NULL stays NULL, and "" becomes NULL unless keep_empty. */
static int own_str(struct zmeshd *d, const char **s, bool keep_empty)
{
    if (!*s || (!**s && !keep_empty)) {
        *s = NULL;
        return 0;
    }
    if (d->n_owned == sizeof(d->owned) / sizeof(d->owned[0])) return -E2BIG;
    char *c = strdup(*s);
    if (!c) return -ENOMEM;
    d->owned[d->n_owned++] = c;
    *s = c;
    return 0;
}
/* NULL and "" mean "the default" for every string setting but one (see below). */
static int own(struct zmeshd *d, const char **s)
{
    return own_str(d, s, false);
}

/* Istio's addresses are Go's host:port: "ip:port", "[ip6]:port", or ":port" for every address; port 0 asks for
 * any free port (tests). Fills *ss. */
static int parse_listen(const char *s, struct sockaddr_storage *ss, char *err, size_t errlen)
{
    char host[SOCKADDR_STRLEN];
    struct ip_addr ip;
    unsigned port;
    bool v6;
    if (hostport_split(s, strlen(s), host, sizeof(host), &port, &v6) < 0) goto bad;
    if (v6 && !strchr(host, ':')) goto bad; /* brackets are for IPv6 addresses only */
    if (ip_parse(host[0] ? host : "::", &ip) < 0) goto bad;
    sockaddr_from(ss, &ip, (uint16_t)port);
    return 0;
bad:
    snprintf(err, errlen, "listen address \"%s\": expected ip:port, [ipv6]:port or :port with a port 0-65535", s);
    return -EINVAL;
}

static void source_changed(struct manifest_source *src, unsigned events, void *ud)
{
    (void)src;
    (void)zmeshd_reload(ud, events ? events : 1);
}

int zmeshd_new(struct loop *l, const struct zmeshd_config *cfg, struct zmeshd **out, char *err, size_t errlen)
{
    int rc;
    struct manifest_source *given = cfg->source;
    struct zmeshd *d = calloc(1, sizeof(*d));
    if (!d) {
        snprintf(err, errlen, "out of memory");
        manifest_source_free(given);
        return -ENOMEM;
    }
    d->loop = l;
    d->cfg = *cfg;
    d->cfg.source = NULL;
    d->subs = VEC(struct subscriber);
    d->src = given;
    struct zmeshd_config *c = &d->cfg;
    if ((rc = own(d, &c->manifests)) || (rc = own(d, &c->state_dir)) || (rc = own(d, &c->plugin_ca)) ||
        (rc = own(d, &c->listen)) || (rc = own(d, &c->k8s.cluster_id)) || (rc = own(d, &c->k8s.trust_domain)) ||
        (rc = own(d, &c->k8s.domain_suffix)) || (rc = own(d, &c->k8s.root_namespace)) ||
        /* CA_TRUSTED_NODE_ACCOUNTS="" (nobody may impersonate) is not the same as unset (the default). */
        (rc = own_str(d, &c->trusted_node_accounts, true))) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    if (!c->listen) c->listen = ZMESHD_DEFAULT_LISTEN;
    if (!c->state_dir) {
        rc = -EINVAL;
        snprintf(err, errlen, "no state directory given (--state-dir): it keeps the token key and the CA");
        goto fail;
    }
    if (!d->src && !c->manifests) {
        rc = -EINVAL;
        snprintf(err, errlen, "no manifest directory given (--manifests)");
        goto fail;
    }
    if ((rc = parse_listen(c->listen, &d->listen_addr, err, errlen))) goto fail;
    struct spiffe_id probe;
    if (c->k8s.trust_domain && spiffe_set(&probe, c->k8s.trust_domain, "ns", "sa") < 0) {
        rc = -EINVAL;
        snprintf(err, errlen, "trust domain \"%s\": not usable in a SPIFFE id (too long, or has '/', '?', '#' or "
                 "a control character)", c->k8s.trust_domain);
        goto fail;
    }
    char why[512];
    if ((rc = ca_trusted_parse(c->trusted_node_accounts, &d->trusted, why, sizeof(why)))) {
        snprintf(err, errlen, "CA_TRUSTED_NODE_ACCOUNTS: %s", rc == -ENOMEM ? "out of memory" : why);
        goto fail;
    }
    /* The state directory exists before the token key is opened in it; the self-signed CA makes it too, but
     * plug-in mode does not. */
    if (mkdir(c->state_dir, 0700) < 0 && errno != EEXIST) {
        rc = -errno;
        snprintf(err, errlen, "%s: cannot create the state directory: %s", c->state_dir, strerror(errno));
        goto fail;
    }
    if (c->plugin_ca)
        rc = ca_issuer_load_plugin(c->plugin_ca, &d->ca, err, errlen);
    else
        rc = ca_issuer_open_state(c->state_dir, c->k8s.trust_domain ? c->k8s.trust_domain : K8S_DEFAULT_TRUST_DOMAIN,
                                  &d->ca, err, errlen);
    if (rc) goto fail;
    if (c->cert_ttl_s || c->max_cert_ttl_s) {
        long def = c->cert_ttl_s ? c->cert_ttl_s : CA_ISSUER_DEFAULT_TTL_S;
        long max = c->max_cert_ttl_s ? c->max_cert_ttl_s : CA_ISSUER_MAX_TTL_S;
        if ((rc = ca_issuer_set_ttl(d->ca, def, max))) {
            snprintf(err, errlen, "certificate lifetimes: default %lds and maximum %lds must both be at least 1s",
                     def, max);
            goto fail;
        }
        if (def > max)
            log_kv(LOG_WARN, LOG_TARGET,
                   "DEFAULT_WORKLOAD_CERT_TTL is above MAX_WORKLOAD_CERT_TTL: requests without a lifetime will be "
                   "refused, as istiod refuses them",
                   NULL);
    }
    char path[WATCH_PATH_MAX];
    if ((rc = zmeshd_token_key_path(c->state_dir, path, sizeof(path)))) {
        snprintf(err, errlen, "%s: the state directory's path is too long", c->state_dir);
        goto fail;
    }
    if ((rc = token_key_open(path, &d->tk, err, errlen))) goto fail;
    if (!d->src &&
        (rc = manifest_dir_source_new(l, c->manifests, c->debounce_after_ms, c->debounce_max_ms, source_changed,
                                      d, &d->src, err, errlen)))
        goto fail;
    d->src->changed = source_changed;
    d->src->ud = d;
    *out = d;
    return 0;
fail:
    zmeshd_free(d);
    return rc;
}

static void count_finding(void *ud, const struct manifest_finding *f)
{
    unsigned *n = ud;
    if (f->level >= MANIFEST_INFO && f->level <= MANIFEST_ERROR) n[f->level]++;
    manifest_finding_emit(NULL, NULL, f); /* logged at its level, target "manifest" */
}

int zmeshd_start(struct zmeshd *d, char *err, size_t errlen)
{
    int rc = manifest_source_start(d->src, err, errlen);
    if (rc) return rc;
    /* The first load must work: a daemon that serves nothing because of a typo in --manifests helps nobody. */
    if ((rc = zmeshd_reload(d, 0)) < 0) {
        snprintf(err, errlen, "%s: cannot load the manifests: %s", d->src->where, strerror(-rc));
        manifest_source_stop(d->src);
    }
    return rc;
}

bool zmeshd_diff_empty(const struct zmeshd_diff *df)
{
    const struct zmeshd_kind_diff *k[] = {&df->workloads, &df->services, &df->policies};
    for (size_t i = 0; i < 3; i++)
        if (k[i]->added || k[i]->changed || k[i]->removed) return false;
    return true;
}

static void diff_line(char *buf, size_t n, const struct zmeshd_diff *df)
{
    snprintf(buf, n, "workloads +%zu ~%zu -%zu, services +%zu ~%zu -%zu, policies +%zu ~%zu -%zu",
             df->workloads.added, df->workloads.changed, df->workloads.removed, df->services.added,
             df->services.changed, df->services.removed, df->policies.added, df->policies.changed,
             df->policies.removed);
}

int zmeshd_reload(struct zmeshd *d, unsigned events)
{
    if (d->publishing) return -EBUSY; /* a subscriber asking for a reload would replace what it is handed */
    uint64_t t0 = now_us();
    unsigned found[3] = {0};
    char err[512];
    struct manifest_store *st = NULL;
    struct snapshot *snap = NULL;
    int rc = manifest_store_new(&st);
    if (!rc) rc = manifest_source_load(d->src, st, count_finding, found, err, sizeof(err));
    else snprintf(err, sizeof(err), "out of memory");
    if (!rc) {
        rc = k8s_build_snapshot(st, &d->cfg.k8s, &snap, count_finding, found);
        if (rc) snprintf(err, sizeof(err), "building the snapshot: %s", strerror(-rc));
    }
    if (rc) {
        manifest_store_free(st);
        if (d->snap)
            log_kv(LOG_ERROR, LOG_TARGET, "cannot reload the manifests; keeping the previous snapshot", "error",
                   err, NULL);
        else
            log_kv(LOG_ERROR, LOG_TARGET, "cannot load the manifests", "error", err, NULL);
        return rc;
    }
    uint64_t took = now_us() - t0;
    struct zmeshd_load_info info = {.version = d->last.version + 1, .counts = zmeshd_snapshot_counts(snap),
                                    .load_us = took, .events = events};
    memcpy(info.findings, found, sizeof(found));
    zmeshd_snapshot_diff(d->snap, snap, &info.diff);

    /* An unchanged result (an editor's touch, a comment edited, a broken file still broken) keeps the
     * published snapshot and its version, so subscribers push nothing; the store is replaced all the same,
     * since objects that make no resource (a pod without an address) may differ. */
    bool same = d->snap && zmeshd_diff_empty(&info.diff);
    struct snapshot *old = d->snap;
    manifest_store_free(d->store);
    d->store = st;
    if (same) {
        snapshot_unref(snap);
        snap = old;
        info.version = d->last.version;
    } else {
        d->snap = snap;
    }
    d->last = info;

    char ver[24], nev[16], nw[24], ns[24], np[24], ne[16], nwarn[16], ni[16], took_s[32], diff[256];
    snprintf(ver, sizeof(ver), "%llu", (unsigned long long)info.version);
    snprintf(nev, sizeof(nev), "%u", events);
    snprintf(nw, sizeof(nw), "%zu", info.counts.workloads);
    snprintf(ns, sizeof(ns), "%zu", info.counts.services);
    snprintf(np, sizeof(np), "%zu", info.counts.policies);
    snprintf(ne, sizeof(ne), "%u", found[MANIFEST_ERROR]);
    snprintf(nwarn, sizeof(nwarn), "%u", found[MANIFEST_WARN]);
    snprintf(ni, sizeof(ni), "%u", found[MANIFEST_INFO]);
    snprintf(took_s, sizeof(took_s), "%llu.%03llums", (unsigned long long)(took / 1000),
             (unsigned long long)(took % 1000));
    char msg[300];
    if (!old)
        snprintf(msg, sizeof(msg), "manifests loaded");
    else if (same)
        snprintf(msg, sizeof(msg), "manifests reloaded: no changes");
    else {
        diff_line(diff, sizeof(diff), &info.diff);
        snprintf(msg, sizeof(msg), "manifests reloaded: %s", diff);
    }
    log_kv(LOG_INFO, LOG_TARGET, msg, "source", d->src->where, "version", ver, "events", nev, "workloads", nw,
           "services", ns, "policies", np, "errors", ne, "warnings", nwarn, "infos", ni, "%took", took_s, NULL);
    /* Snapshot subscribers only for a new version; store subscribers after every reload, since what they read
     * (pods without an address, for instance) may have changed when the snapshot did not. */
    d->publishing = true;
    for (size_t i = 0; i < d->subs.n; i++) {
        struct subscriber *s = (struct subscriber *)d->subs.p + i;
        if (s->fn && !same) s->fn(s->ud, old, snap);
        if (s->store_fn) s->store_fn(s->ud, d->store);
    }
    d->publishing = false;
    if (!same) snapshot_unref(old);
    return 0;
}

void zmeshd_stop(struct zmeshd *d)
{
    if (d && d->src) manifest_source_stop(d->src);
}

void zmeshd_free(struct zmeshd *d)
{
    if (!d) return;
    manifest_source_free(d->src);
    snapshot_unref(d->snap);
    manifest_store_free(d->store);
    token_key_free(d->tk);
    ca_issuer_free(d->ca);
    ca_trusted_free(&d->trusted);
    vec_free(&d->subs);
    for (size_t i = 0; i < d->n_owned; i++)
        free(d->owned[i]);
    free(d);
}

int zmeshd_subscribe(struct zmeshd *d, zmeshd_subscriber_fn fn, void *ud)
{
    if (d->publishing) return -EBUSY;
    struct subscriber *s = vec_push(&d->subs);
    if (!s) return -ENOMEM;
    *s = (struct subscriber){.fn = fn, .ud = ud};
    return 0;
}

int zmeshd_subscribe_store(struct zmeshd *d, zmeshd_store_fn fn, void *ud)
{
    if (d->publishing) return -EBUSY;
    struct subscriber *s = vec_push(&d->subs);
    if (!s) return -ENOMEM;
    *s = (struct subscriber){.store_fn = fn, .ud = ud};
    return 0;
}

static int unsubscribe(struct zmeshd *d, zmeshd_subscriber_fn fn, zmeshd_store_fn store_fn, void *ud)
{
    if (d->publishing) return -EBUSY;
    struct subscriber *v = (struct subscriber *)d->subs.p;
    for (size_t i = 0; i < d->subs.n; i++) {
        if (v[i].fn == fn && v[i].store_fn == store_fn && v[i].ud == ud) {
            memmove(&v[i], &v[i + 1], (d->subs.n - i - 1) * sizeof(*v));
            d->subs.n--;
            return 0;
        }
    }
    return -ENOENT;
}

int zmeshd_unsubscribe(struct zmeshd *d, zmeshd_subscriber_fn fn, void *ud)
{
    return unsubscribe(d, fn, NULL, ud);
}

int zmeshd_unsubscribe_store(struct zmeshd *d, zmeshd_store_fn fn, void *ud)
{
    return unsubscribe(d, NULL, fn, ud);
}

struct snapshot *zmeshd_snapshot(const struct zmeshd *d)
{
    return d->snap;
}
const struct manifest_store *zmeshd_store(const struct zmeshd *d)
{
    return d->store;
}
const struct zmeshd_load_info *zmeshd_last_load(const struct zmeshd *d)
{
    return &d->last;
}
const struct ca_issuer *zmeshd_ca(const struct zmeshd *d)
{
    return d->ca;
}
const struct token_key *zmeshd_token_key(const struct zmeshd *d)
{
    return d->tk;
}
const struct ca_trusted *zmeshd_trusted(const struct zmeshd *d)
{
    return &d->trusted;
}
const struct sockaddr_storage *zmeshd_listen_addr(const struct zmeshd *d)
{
    return &d->listen_addr;
}

const char *zmeshd_listen(const struct zmeshd *d)
{
    return d->cfg.listen;
}
const struct zmeshd_config *zmeshd_config(const struct zmeshd *d)
{
    return &d->cfg;
}

int zmeshd_pod_on_node(void *ud, const char *ns, const char *sa, const char *node)
{
    const struct zmeshd *d = ud;
    size_t n;
    if (!d->store || !node || !*node) return 0;
    const struct k8s_pod *p = manifest_pods(d->store, &n);
    for (size_t i = 0; i < n; i++) {
        /* istiod lists pods with status.phase!=Failed and skips those without a node or service account. */
        if (!strcmp(p[i].phase, "Failed") || !*p[i].node_name || !*p[i].service_account) continue;
        if (!strcmp(p[i].meta.namespace_, ns) && !strcmp(p[i].service_account, sa) &&
            !strcmp(p[i].node_name, node))
            return 1;
    }
    return 0;
}

/* ---- snapshots compared ---- */

struct zmeshd_counts zmeshd_snapshot_counts(const struct snapshot *s)
{
    if (!s) return (struct zmeshd_counts){0};
    return (struct zmeshd_counts){.workloads = snapshot_n_workloads(s),
                                  .services = snapshot_n_services(s),
                                  .policies = snapshot_n_policies(s)};
}

/* Two arrays of n_<f> elements <f> equal by eq(&a[i], &b[i]). */
#define ARR_EQ(a, b, f, n, eq)                                                                               \
    ({                                                                                                       \
        bool ok_ = (a)->n == (b)->n;                                                                         \
        for (size_t i_ = 0; ok_ && i_ < (a)->n; i_++)                                                        \
            ok_ = eq(&(a)->f[i_], &(b)->f[i_]);                                                              \
        ok_;                                                                                                 \
    })

static bool str_eq(const char *a, const char *b)
{
    return !strcmp(a ? a : "", b ? b : "");
}
static bool strp_eq(const char *const *a, const char *const *b)
{
    return str_eq(*a, *b);
}
static bool u16_eq(const uint16_t *a, const uint16_t *b)
{
    return *a == *b;
}
static bool u8_eq(const uint8_t *a, const uint8_t *b)
{
    return *a == *b;
}
static bool ip_eq(const struct ip_addr *a, const struct ip_addr *b)
{
    return ip_equal(a, b);
}
static bool port_map_eq(const struct port_map *a, const struct port_map *b)
{
    return a->port == b->port && a->target == b->target && a->app_protocol == b->app_protocol;
}
static bool wl_svc_eq(const struct wl_service_ports *a, const struct wl_service_ports *b)
{
    return str_eq(a->key, b->key) && ARR_EQ(a, b, ports, n_ports, port_map_eq);
}
static bool net_addr_eq(const struct net_addr *a, const struct net_addr *b)
{
    return str_eq(a->network, b->network) && ip_equal(&a->ip, &b->ip);
}

static bool gateway_eq(const struct gateway_addr *a, const struct gateway_addr *b)
{
    if (a->set != b->set) return false;
    if (!a->set) return true;
    if (a->is_host != b->is_host || a->hbone_port != b->hbone_port) return false;
    if (a->is_host) return str_eq(a->ns, b->ns) && str_eq(a->host, b->host);
    return str_eq(a->network, b->network) && ip_equal(&a->ip, &b->ip);
}

bool zmeshd_workload_equal(const struct workload *a, const struct workload *b)
{
    const char *const sa[] = {a->uid,          a->name,           a->namespace_,   a->hostname,
                              a->network,      a->trust_domain,   a->service_account, a->node,
                              a->cluster_id,   a->canonical_name, a->canonical_revision,
                              a->workload_type, a->workload_name, a->locality.region, a->locality.zone,
                              a->locality.subzone, a->spiffe_id};
    const char *const sb[] = {b->uid,          b->name,           b->namespace_,   b->hostname,
                              b->network,      b->trust_domain,   b->service_account, b->node,
                              b->cluster_id,   b->canonical_name, b->canonical_revision,
                              b->workload_type, b->workload_name, b->locality.region, b->locality.zone,
                              b->locality.subzone, b->spiffe_id};
    for (size_t i = 0; i < sizeof(sa) / sizeof(sa[0]); i++)
        if (!str_eq(sa[i], sb[i])) return false;
    return a->protocol == b->protocol && a->healthy == b->healthy && a->capacity == b->capacity &&
           a->app_tunnel_protocol == b->app_tunnel_protocol && a->app_tunnel_port == b->app_tunnel_port &&
           a->network_mode == b->network_mode && gateway_eq(&a->waypoint, &b->waypoint) &&
           gateway_eq(&a->network_gateway, &b->network_gateway) && ARR_EQ(a, b, ips, n_ips, ip_eq) &&
           ARR_EQ(a, b, services, n_services, wl_svc_eq) &&
           ARR_EQ(a, b, authorization_policies, n_authorization_policies, strp_eq);
}

bool zmeshd_service_equal(const struct service *a, const struct service *b)
{
    return str_eq(a->name, b->name) && str_eq(a->namespace_, b->namespace_) && str_eq(a->hostname, b->hostname) &&
           a->lb_mode == b->lb_mode && a->health_policy == b->health_policy && a->ip_families == b->ip_families &&
           gateway_eq(&a->waypoint, &b->waypoint) && ARR_EQ(a, b, vips, n_vips, net_addr_eq) &&
           ARR_EQ(a, b, ports, n_ports, port_map_eq) && ARR_EQ(a, b, subject_alt_names, n_sans, strp_eq) &&
           ARR_EQ(a, b, routing_prefs, n_routing_prefs, u8_eq);
}

static bool sm_eq(const struct string_match *a, const struct string_match *b)
{
    return a->kind == b->kind && str_eq(a->value, b->value);
}
static bool sa_eq(const struct sa_match *a, const struct sa_match *b)
{
    return str_eq(a->namespace_, b->namespace_) && str_eq(a->service_account, b->service_account);
}
static bool cidr_eq(const struct cidr *a, const struct cidr *b)
{
    return a->len == b->len && ip_equal(&a->ip, &b->ip);
}
static bool match_eq(const struct auth_match *a, const struct auth_match *b)
{
    return ARR_EQ(a, b, namespaces, n_namespaces, sm_eq) && ARR_EQ(a, b, not_namespaces, n_not_namespaces, sm_eq) &&
           ARR_EQ(a, b, principals, n_principals, sm_eq) && ARR_EQ(a, b, not_principals, n_not_principals, sm_eq) &&
           ARR_EQ(a, b, service_accounts, n_service_accounts, sa_eq) &&
           ARR_EQ(a, b, not_service_accounts, n_not_service_accounts, sa_eq) &&
           ARR_EQ(a, b, source_ips, n_source_ips, cidr_eq) &&
           ARR_EQ(a, b, not_source_ips, n_not_source_ips, cidr_eq) &&
           ARR_EQ(a, b, destination_ips, n_destination_ips, cidr_eq) &&
           ARR_EQ(a, b, not_destination_ips, n_not_destination_ips, cidr_eq) &&
           ARR_EQ(a, b, destination_ports, n_destination_ports, u16_eq) &&
           ARR_EQ(a, b, not_destination_ports, n_not_destination_ports, u16_eq);
}
static bool clause_eq(const struct auth_clause *a, const struct auth_clause *b)
{
    return ARR_EQ(a, b, matches, n_matches, match_eq);
}
static bool rule_eq(const struct auth_rule *a, const struct auth_rule *b)
{
    return ARR_EQ(a, b, clauses, n_clauses, clause_eq);
}

bool zmeshd_policy_equal(const struct policy *a, const struct policy *b)
{
    return str_eq(a->name, b->name) && str_eq(a->namespace_, b->namespace_) && a->scope == b->scope &&
           a->action == b->action && a->dry_run == b->dry_run && ARR_EQ(a, b, rules, n_rules, rule_eq);
}

/* Key of a service or policy: "ns/name" as the snapshot indexes them. */
static const char *ns_key(char *buf, size_t n, const char *ns, const char *name)
{
    snprintf(buf, n, "%s/%s", ns, name);
    return buf;
}

void zmeshd_snapshot_diff(const struct snapshot *old, const struct snapshot *cur, struct zmeshd_diff *out)
{
    *out = (struct zmeshd_diff){0};
    struct zmeshd_counts c = zmeshd_snapshot_counts(cur), o = zmeshd_snapshot_counts(old);
    /* Keys are unique within a snapshot (the builder rejects a second resource with the same key), so
     * counting matches from the new side gives added and changed, and old - matched gives removed. */
    size_t kept = 0;
    for (size_t i = 0; i < c.workloads; i++) {
        const struct workload *w = snapshot_workload_at(cur, i);
        const struct workload *p = old ? snapshot_workload_by_uid(old, w->uid) : NULL;
        if (!p) out->workloads.added++;
        else {
            kept++;
            if (!zmeshd_workload_equal(p, w)) out->workloads.changed++;
        }
    }
    out->workloads.removed = o.workloads - kept;
    char key[2 * BUILDER_MAX_STR + 2];
    kept = 0;
    for (size_t i = 0; i < c.services; i++) {
        const struct service *s = snapshot_service_at(cur, i);
        const struct service *p =
            old ? snapshot_service_by_host(old, ns_key(key, sizeof(key), s->namespace_, s->hostname)) : NULL;
        if (!p) out->services.added++;
        else {
            kept++;
            if (!zmeshd_service_equal(p, s)) out->services.changed++;
        }
    }
    out->services.removed = o.services - kept;
    kept = 0;
    for (size_t i = 0; i < c.policies; i++) {
        const struct policy *s = snapshot_policy_at(cur, i);
        const struct policy *p =
            old ? snapshot_policy_by_name(old, ns_key(key, sizeof(key), s->namespace_, s->name)) : NULL;
        if (!p) out->policies.added++;
        else {
            kept++;
            if (!zmeshd_policy_equal(p, s)) out->policies.changed++;
        }
    }
    out->policies.removed = o.policies - kept;
}

/* ---- the one-shot commands ---- */

struct check_ctx {
    FILE *out;
    unsigned n[3];
};

static void check_report(void *ud, const struct manifest_finding *f)
{
    static const char *const names[] = {"Info", "Warning", "Error"};
    struct check_ctx *c = ud;
    char buf[2048];
    unsigned lvl = f->level <= MANIFEST_ERROR ? f->level : MANIFEST_ERROR;
    c->n[lvl]++;
    fprintf(c->out, "%s: %s\n", names[lvl], manifest_finding_format(f, buf, sizeof(buf)));
}

int zmeshd_check(const char *dir, const struct k8s_options *opts, FILE *out, char *err, size_t errlen)
{
    struct check_ctx c = {.out = out};
    struct manifest_store *st = NULL;
    struct snapshot *snap = NULL;
    int rc = manifest_store_new(&st);
    if (!rc) rc = manifest_load_dir(st, dir, check_report, &c);
    if (rc) {
        snprintf(err, errlen, "%s: %s", dir, strerror(-rc));
        manifest_store_free(st);
        return 2;
    }
    if ((rc = k8s_build_snapshot(st, opts, &snap, check_report, &c))) {
        snprintf(err, errlen, "%s: building the snapshot: %s", dir, strerror(-rc));
        manifest_store_free(st);
        return 2;
    }
    struct zmeshd_counts k = zmeshd_snapshot_counts(snap);
    fprintf(out, "%zu workloads, %zu services, %zu policies; %u errors, %u warnings, %u infos\n", k.workloads,
            k.services, k.policies, c.n[MANIFEST_ERROR], c.n[MANIFEST_WARN], c.n[MANIFEST_INFO]);
    snapshot_unref(snap);
    manifest_store_free(st);
    return c.n[MANIFEST_ERROR] ? 1 : 0;
}

int zmeshd_token_key_path(const char *state_dir, char *buf, size_t n)
{
    int k = snprintf(buf, n, "%s/%s", state_dir, ZMESHD_TOKEN_KEY_FILE);
    return k < 0 || (size_t)k >= n ? -ENAMETOOLONG : 0;
}

int zmeshd_token_mint(const char *state_dir, const struct token_subject *s, long ttl_s, char **out, char *err,
                      size_t errlen)
{
    char path[WATCH_PATH_MAX];
    struct token_key *k = NULL;
    if (!state_dir || !*state_dir) {
        snprintf(err, errlen, "no state directory given (--state-dir): it keeps the token key");
        return -EINVAL;
    }
    if (zmeshd_token_key_path(state_dir, path, sizeof(path))) {
        snprintf(err, errlen, "%s: the state directory's path is too long", state_dir);
        return -ENAMETOOLONG;
    }
    if (mkdir(state_dir, 0700) < 0 && errno != EEXIST) {
        int e = -errno;
        snprintf(err, errlen, "%s: cannot create the state directory: %s", state_dir, strerror(-e));
        return e;
    }
    int rc = token_key_open(path, &k, err, errlen);
    if (!rc) rc = token_mint(k, NULL, s, ttl_s, time(NULL), out, err, errlen);
    token_key_free(k);
    return rc;
}

struct loop *zmeshd_loop(const struct zmeshd *d)
{
    return d->loop;
}
