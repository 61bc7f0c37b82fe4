/* L4 authorization: Istio ztunnel's RBAC semantics over the snapshot's policies. */
#include "mesh/authz.h"

#include <stdio.h>
#include <string.h>

#include "core/log.h"
#include "tls/spiffe.h"

#define SPIFFE_SCHEME "spiffe://"
#define SPIFFE_SCHEME_LEN (sizeof(SPIFFE_SCHEME) - 1)

/* The connection as the matchers see it, prepared once per decision. ztunnel derives three strings from
 * the peer identity: the full id (principals are compared after stripping "spiffe://"), the namespace
 * ("" when there is no identity) and the (namespace, service account) pair (absent without identity). */
struct peer {
    struct ip_addr src, dst;
    uint16_t port;
    bool has_id;
    const char *principal; /* "td/ns/x/sa/y"; only meaningful when has_id */
    const char *ns;        /* "" without identity, as ztunnel's unwrap_or_default() */
    const char *sa;        /* only meaningful when has_id */
    struct spiffe_id id;   /* storage for ns and sa */
};

/* A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d; policies hold plain IPv4 blocks, so compare
 * in canonical form as ztunnel does (to_canonical). */
static void ip_canonical(struct ip_addr *out, const struct ip_addr *in)
{
    static const uint8_t v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    *out = *in;
    if (in->family == AF_INET6 && memcmp(in->a, v4mapped, sizeof(v4mapped)) == 0) {
        memset(out, 0, sizeof(*out));
        out->family = AF_INET;
        memcpy(out->a, in->a + 12, 4);
    }
}

static void peer_init(struct peer *p, const struct authz_conn *c)
{
    ip_canonical(&p->src, &c->src_ip);
    ip_canonical(&p->dst, &c->dst_ip);
    p->port = c->dst_port;
    p->has_id = false;
    p->principal = "";
    p->ns = "";
    p->sa = "";
    /* ztunnel only ever holds parsed identities; an unparsable one cannot match anything positive and
     * makes every not_ identity list hold, exactly like a plaintext peer (fail closed for STRICT). */
    if (c->src_identity && spiffe_parse(c->src_identity, strlen(c->src_identity), &p->id) == 0) {
        p->has_id = true;
        p->principal = c->src_identity + SPIFFE_SCHEME_LEN;
        p->ns = p->id.ns;
        p->sa = p->id.sa;
    }
}

bool authz_string_match(const struct string_match *m, const char *s)
{
    size_t vl, sl;
    switch (m->kind) {
    case SM_EXACT:
        return strcmp(s, m->value) == 0;
    case SM_PREFIX:
        return strncmp(s, m->value, strlen(m->value)) == 0;
    case SM_SUFFIX:
        vl = strlen(m->value);
        sl = strlen(s);
        return sl >= vl && memcmp(s + sl - vl, m->value, vl) == 0;
    case SM_PRESENCE:
        return s[0] != '\0';
    }
    return false; /* unknown kinds never match: fail closed for ALLOW */
}

/* The predicates of ztunnel's matchers, one element of one list against the connection. */
static bool hit_namespace(const struct string_match *m, const struct peer *p)
{
    return authz_string_match(m, p->ns);
}

static bool hit_principal(const struct string_match *m, const struct peer *p)
{
    /* Without an identity there is nothing to strip "spiffe://" from: never a hit. */
    return p->has_id && authz_string_match(m, p->principal);
}

static bool hit_sa(const struct sa_match *m, const struct peer *p)
{
    return p->has_id && strcmp(m->namespace_, p->ns) == 0 && strcmp(m->service_account, p->sa) == 0;
}

#define ANY_HIT(list, n, fn, arg)                                                                            \
    ({                                                                                                       \
        bool hit_ = false;                                                                                   \
        for (size_t i_ = 0; i_ < (n) && !hit_; i_++)                                                         \
            hit_ = fn(&(list)[i_], arg);                                                                     \
        hit_;                                                                                                \
    })

/* ztunnel's matches_internal: a populated positive list needs a hit, a populated negative list needs none;
 * an absent list constrains nothing. */
#define FIELD_OK(pos, npos, neg, nneg, fn, arg)                                                              \
    (((npos) == 0 || ANY_HIT(pos, npos, fn, arg)) && ((nneg) == 0 || !ANY_HIT(neg, nneg, fn, arg)))

static bool hit_cidr(const struct cidr *c, const struct ip_addr *ip)
{
    return cidr_contains(c, ip);
}

static bool hit_port(const uint16_t *port, const uint16_t *want)
{
    return *port == *want;
}

static bool match_empty(const struct auth_match *m)
{
    return !(m->n_namespaces | m->n_not_namespaces | m->n_principals | m->n_not_principals |
             m->n_service_accounts | m->n_not_service_accounts | m->n_source_ips | m->n_not_source_ips |
             m->n_destination_ips | m->n_not_destination_ips | m->n_destination_ports |
             m->n_not_destination_ports);
}

/* A Match: AND across field types. Cheap connection-tuple fields first, identity strings last. */
static bool match_holds(const struct auth_match *m, const struct peer *p)
{
    return FIELD_OK(m->destination_ports, m->n_destination_ports, m->not_destination_ports,
                    m->n_not_destination_ports, hit_port, &p->port) &&
           FIELD_OK(m->destination_ips, m->n_destination_ips, m->not_destination_ips,
                    m->n_not_destination_ips, hit_cidr, &p->dst) &&
           FIELD_OK(m->source_ips, m->n_source_ips, m->not_source_ips, m->n_not_source_ips, hit_cidr,
                    &p->src) &&
           FIELD_OK(m->service_accounts, m->n_service_accounts, m->not_service_accounts,
                    m->n_not_service_accounts, hit_sa, p) &&
           FIELD_OK(m->principals, m->n_principals, m->not_principals, m->n_not_principals, hit_principal,
                    p) &&
           FIELD_OK(m->namespaces, m->n_namespaces, m->not_namespaces, m->n_not_namespaces, hit_namespace, p);
}

/* A clause: true when empty, else when any non-empty match holds (an all-empty match is skipped, so a
 * clause made only of empty matches is false). */
static bool clause_holds(const struct auth_clause *cl, const struct peer *p)
{
    if (cl->n_matches == 0) return true;
    for (size_t i = 0; i < cl->n_matches; i++)
        if (!match_empty(&cl->matches[i]) && match_holds(&cl->matches[i], p)) return true;
    return false;
}

/* A policy: any rule whose clauses all hold (a rule without clauses holds); no rules never matches. */
static bool policy_matches(const struct policy *pol, const struct peer *p)
{
    for (size_t r = 0; r < pol->n_rules; r++) {
        const struct auth_rule *rule = &pol->rules[r];
        bool ok = true;
        for (size_t c = 0; c < rule->n_clauses && ok; c++)
            ok = clause_holds(&rule->clauses[c], p);
        if (ok) return true;
    }
    return false;
}

bool authz_policy_matches(const struct policy *p, const struct authz_conn *c)
{
    struct peer peer;
    peer_init(&peer, c);
    return policy_matches(p, &peer);
}

/* Walks the applicable policies in ztunnel's order: the destination namespace's, the global ones, then
 * the workload's own list by name. Allocation-free; a name lookup is one hash probe. */
struct pol_iter {
    const struct snapshot *s;
    const struct workload *w;
    const struct policy *const *ns, *const *global;
    size_t n_ns, n_global, i;
    bool warn_unknown;
};

static void pol_iter_init(struct pol_iter *it, const struct snapshot *s, const struct workload *w, bool warn)
{
    it->s = s;
    it->w = w;
    it->ns = snapshot_namespace_policies(s, w->namespace_, &it->n_ns);
    it->global = snapshot_global_policies(s, &it->n_global);
    it->i = 0;
    it->warn_unknown = warn;
}

static size_t pol_iter_total(const struct pol_iter *it)
{
    return it->n_ns + it->n_global + it->w->n_authorization_policies;
}

static const struct policy *pol_iter_next(struct pol_iter *it)
{
    while (it->i < pol_iter_total(it)) {
        size_t i = it->i++;
        if (i < it->n_ns) return it->ns[i];
        i -= it->n_ns;
        if (i < it->n_global) return it->global[i];
        i -= it->n_global;
        const char *key = it->w->authorization_policies[i];
        const struct policy *p = snapshot_policy_by_name(it->s, key);
        if (p) return p;
        /* Usually a transient state: the workload arrived before the policy, or the policy was removed. */
        /* Evaluated per connection: rate-limited, so a config slip cannot flood the log. */
        if (it->warn_unknown) LOG_LIMITED(LOG_WARN, "authz", "skipping unknown policy %s", key);
    }
    return NULL;
}

static __thread char key_buf[AUTHZ_POLICY_KEY_MAX];

static const char *policy_key(const struct policy *p, char *buf, size_t n)
{
    snprintf(buf, n, "%s/%s", p->namespace_, p->name);
    return buf;
}

/* Logs each dry-run policy with the decision the check would have made had that policy been enforced
 * along with the enforced ones: a matching DENY denies; a matching ALLOW allows unless an enforced DENY
 * matched; a non-matching ALLOW denies when it would have been the only ALLOW policy. */
static void log_dry_runs(const struct snapshot *s, const struct workload *dst, const struct authz_conn *c,
                         const struct peer *peer, enum authz_result actual, bool denied_by_deny,
                         size_t n_allow)
{
    struct pol_iter it;
    const struct policy *p;
    char key[AUTHZ_POLICY_KEY_MAX], src[IP_STRLEN], dip[IP_STRLEN], port[8];
    pol_iter_init(&it, s, dst, false);
    ip_format(&peer->src, src, sizeof(src));
    ip_format(&peer->dst, dip, sizeof(dip));
    snprintf(port, sizeof(port), "%u", (unsigned)peer->port);
    while ((p = pol_iter_next(&it))) {
        if (!p->dry_run) continue;
        bool m = policy_matches(p, peer);
        enum authz_result would;
        if (p->action == POLICY_DENY)
            would = m ? AUTHZ_DENY : actual;
        else if (m)
            would = denied_by_deny ? AUTHZ_DENY : AUTHZ_ALLOW;
        else
            would = n_allow == 0 && !denied_by_deny ? AUTHZ_DENY : actual;
        const char *kv[] = {
            "policy",       policy_key(p, key, sizeof(key)),
            "action",       p->action == POLICY_DENY ? "deny" : "allow",
            "matched",      m ? "true" : "false",
            "decision",     would == AUTHZ_DENY ? "deny" : "allow",
            "enforced",     actual == AUTHZ_DENY ? "deny" : "allow",
            "src.addr",     src,
            "src.identity", c->src_identity,
            "dst.addr",     dip,
            "dst.port",     port,
        };
        log_kvv(LOG_INFO, "authz", "dry-run policy", kv, sizeof(kv) / sizeof(kv[0]) / 2);
    }
}

enum authz_result authz_check(const struct snapshot *s, const struct workload *dst,
                              const struct authz_conn *c, const char **matched_policy)
{
    struct pol_iter it;
    struct peer peer;
    const struct policy *p, *deny_hit = NULL, *allow_hit = NULL;
    size_t n_allow = 0;
    bool dry_seen = false;
    enum authz_result res;

    if (matched_policy) *matched_policy = NULL;
    /* ztunnel denies when the destination workload is unknown; so does a caller bug, fail closed. */
    if (!s || !dst || !c) return AUTHZ_DENY;
    pol_iter_init(&it, s, dst, true);
    if (pol_iter_total(&it) == 0) return AUTHZ_ALLOW; /* nothing applies: skip even the identity parse */
    peer_init(&peer, c);

    /* One pass: DENY policies are all checked until one matches; ALLOW policies are counted and checked
     * only until the first match, so the work equals ztunnel's deny-then-allow passes. */
    while ((p = pol_iter_next(&it))) {
        if (p->dry_run) {
            dry_seen = true;
            continue;
        }
        if (p->action == POLICY_DENY) {
            if (policy_matches(p, &peer)) {
                deny_hit = p;
                break;
            }
        } else {
            n_allow++;
            if (!allow_hit && policy_matches(p, &peer)) allow_hit = p;
        }
    }
    if (deny_hit) {
        res = AUTHZ_DENY;
        p = deny_hit;
    } else if (n_allow == 0) {
        res = AUTHZ_ALLOW;
        p = NULL;
    } else {
        res = allow_hit ? AUTHZ_ALLOW : AUTHZ_DENY;
        p = allow_hit;
    }
    if (matched_policy && p) *matched_policy = policy_key(p, key_buf, sizeof(key_buf));

    /* A DENY cut the walk short, so dry-run policies after it were not seen yet. */
    if (log_enabled(LOG_INFO) && (dry_seen || deny_hit)) {
        if (!dry_seen) {
            while ((p = pol_iter_next(&it)) && !p->dry_run) {
            }
            dry_seen = p != NULL;
        }
        if (dry_seen) log_dry_runs(s, dst, c, &peer, res, deny_hit != NULL, n_allow);
    }
    return res;
}
