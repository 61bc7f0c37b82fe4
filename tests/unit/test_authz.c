/* Unit tests for L4 authorization (src/mesh/authz.c), table-driven from Istio ztunnel's semantics
 * (ztunnel src/rbac.rs tests and src/state.rs::assert_rbac). Every case builds
 * a snapshot from YAML with config_load_buf and asks authz_check about one connection to one workload. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "core/log.h"
#include "mesh/authz.h"
#include "mesh/config.h"

/* The destination "server" (namespace app) selects app/selected and app/strict by name, plus a name no
 * policy has (skipped, as ztunnel does). "other" lives in namespace other and selects nothing. */
static const char base_yaml[] = "workloads:\n"
                                "- uid: server\n"
                                "  name: server\n"
                                "  namespace: app\n"
                                "  workloadIps: [\"10.0.0.2\", \"fd00::2\"]\n"
                                "  serviceAccount: server\n"
                                "  authorizationPolicies: [app/selected, app/unknown-policy, app/strict]\n"
                                "- uid: other\n"
                                "  name: other\n"
                                "  namespace: other\n"
                                "  workloadIps: [\"10.0.0.3\"]\n"
                                "policies:\n";

/* Connections. */
enum conn_id {
    TLS_A,    /* 10.1.0.5 cluster.local/ns/client/sa/client-sa -> 10.0.0.2:8080 */
    TLS_B,    /* 10.2.0.9 td.other/ns/kube-system/sa/admin -> 10.0.0.2:9090 */
    PLAIN,    /* 10.1.0.5 no identity -> 10.0.0.2:8080 */
    V6,       /* fd00:1::5 cluster.local/ns/client/sa/client-sa -> [fd00::2]:8080 */
    MAPPED,   /* ::ffff:10.1.0.5 no identity -> ::ffff:10.0.0.2:8080 (dual-stack socket view) */
    BAD_ID,   /* 10.1.0.5 "spiffe://cluster.local/client" (not a valid SPIFFE id) -> 10.0.0.2:8080 */
    TLS_A_SA, /* 10.1.0.5 cluster.local/ns/client/sa/other-sa -> 10.0.0.2:8080 */
};
static const struct {
    const char *src, *dst, *id;
    uint16_t port;
} conns[] = {
    [TLS_A] = {"10.1.0.5", "10.0.0.2", "spiffe://cluster.local/ns/client/sa/client-sa", 8080},
    [TLS_B] = {"10.2.0.9", "10.0.0.2", "spiffe://td.other/ns/kube-system/sa/admin", 9090},
    [PLAIN] = {"10.1.0.5", "10.0.0.2", NULL, 8080},
    [V6] = {"fd00:1::5", "fd00::2", "spiffe://cluster.local/ns/client/sa/client-sa", 8080},
    [MAPPED] = {"::ffff:10.1.0.5", "::ffff:10.0.0.2", NULL, 8080},
    [BAD_ID] = {"10.1.0.5", "10.0.0.2", "spiffe://cluster.local/client", 8080},
    [TLS_A_SA] = {"10.1.0.5", "10.0.0.2", "spiffe://cluster.local/ns/client/sa/other-sa", 8080},
};

#define A AUTHZ_ALLOW
#define D AUTHZ_DENY
/* Shorthands for policy YAML (flow mappings, one per line). */
#define POL(name, ns, scope, action, rules)                                                                  \
    "- {name: " name ", namespace: " ns ", scope: " scope ", action: " action ", rules: " rules "}\n"
#define NS_ALLOW(name, rules) POL(name, "app", "Namespace", "Allow", rules)
#define NS_DENY(name, rules) POL(name, "app", "Namespace", "Deny", rules)
#define CLIENT "{Exact: \"cluster.local/ns/client/sa/client-sa\"}"

struct tcase {
    const char *name;
    const char *policies; /* appended to base_yaml */
    enum conn_id conn;
    enum authz_result want;
    const char *want_policy; /* deciding policy, or NULL */
    const char *dst;         /* workload uid; NULL = "server" */
};

static const struct tcase cases[] = {
    /* ---- decision order ---- */
    {"no policies: allow", "", TLS_A, A, NULL, NULL},
    {"matching allow: allow", NS_ALLOW("p", "[[[{principals: [" CLIENT "]}]]]"), TLS_A, A, "app/p", NULL},
    {"allow policies but none match: deny", NS_ALLOW("p", "[[[{principals: [" CLIENT "]}]]]"), TLS_B, D, NULL,
     NULL},
    {"deny wins over a matching allow listed first",
     NS_ALLOW("a", "[[[{principals: [" CLIENT "]}]]]") NS_DENY("d", "[[[{destinationPorts: [8080]}]]]"),
     TLS_A, D, "app/d", NULL},
    {"non-matching deny and no allow: allow", NS_DENY("d", "[[[{destinationPorts: [1]}]]]"), TLS_A, A, NULL,
     NULL},
    {"non-matching deny, matching allow: allow",
     NS_DENY("d", "[[[{destinationPorts: [1]}]]]") NS_ALLOW("a", "[[[{destinationPorts: [8080]}]]]"), TLS_A,
     A, "app/a", NULL},
    {"first matching allow decides",
     NS_ALLOW("a1", "[[[{destinationPorts: [1]}]]]") NS_ALLOW("a2", "[[[{destinationPorts: [8080]}]]]")
         NS_ALLOW("a3", "[[[{destinationPorts: [8080]}]]]"),
     TLS_A, A, "app/a2", NULL},

    /* ---- rules, clauses, matches ---- */
    {"allow without rules is deny-all", "- {name: p, namespace: app, scope: Namespace, action: Allow}\n",
     TLS_A, D, NULL, NULL},
    {"allow with rules: [] is deny-all", NS_ALLOW("p", "[]"), TLS_A, D, NULL, NULL},
    {"deny without rules never matches", NS_DENY("p", "[]"), TLS_A, A, NULL, NULL},
    {"rule without clauses matches", NS_ALLOW("p", "[[]]"), TLS_B, A, "app/p", NULL},
    {"empty clause is true", NS_ALLOW("p", "[[[]]]"), PLAIN, A, "app/p", NULL},
    {"empty clause AND false clause: no match", NS_ALLOW("p", "[[[], [{destinationPorts: [1]}]]]"), TLS_A, D,
     NULL, NULL},
    {"all-empty match is skipped (allow)", NS_ALLOW("p", "[[[{}]]]"), TLS_A, D, NULL, NULL},
    {"all-empty match is skipped (deny)", NS_DENY("p", "[[[{}]]]"), TLS_A, A, NULL, NULL},
    {"all-empty match skipped, sibling match holds", NS_ALLOW("p", "[[[{}, {destinationPorts: [8080]}]]]"),
     TLS_A, A, "app/p", NULL},
    {"match ANDs fields: one field fails",
     NS_ALLOW("p", "[[[{principals: [" CLIENT "], destinationPorts: [9]}]]]"), TLS_A, D, NULL, NULL},
    {"match ANDs fields: all hold",
     NS_ALLOW("p",
              "[[[{principals: [" CLIENT "], destinationPorts: [8080], sourceIps: [\"10.1.0.0/16\"]}]]]"),
     TLS_A, A, "app/p", NULL},
    {"positive and negative list of one field: both must hold",
     NS_ALLOW("p", "[[[{destinationPorts: [8080], notDestinationPorts: [8080]}]]]"), TLS_A, D, NULL, NULL},
    {"clause ORs matches", NS_ALLOW("p", "[[[{destinationPorts: [1]}, {destinationPorts: [8080]}]]]"), TLS_A,
     A, "app/p", NULL},
    {"rule ANDs clauses", NS_ALLOW("p", "[[[{destinationPorts: [8080]}], [{principals: [" CLIENT "]}]]]"),
     TLS_B, D, NULL, NULL},
    {"rule ANDs clauses (both hold)",
     NS_ALLOW("p", "[[[{destinationPorts: [8080]}], [{principals: [" CLIENT "]}]]]"), TLS_A, A, "app/p",
     NULL},
    {"policy ORs rules", NS_ALLOW("p", "[[[{destinationPorts: [1]}]], [[{destinationPorts: [9090]}]]]"),
     TLS_B, A, "app/p", NULL},
    {"ALLOW keyword spelling", POL("p", "app", "NAMESPACE", "ALLOW", "[[[{destinationPorts: [1]}]]]"), TLS_A,
     D, NULL, NULL},

    /* ---- namespaces ---- */
    {"namespaces exact hit", NS_ALLOW("p", "[[[{namespaces: [{Exact: client}]}]]]"), TLS_A, A, "app/p", NULL},
    {"namespaces exact miss", NS_ALLOW("p", "[[[{namespaces: [{Exact: client}]}]]]"), TLS_B, D, NULL, NULL},
    {"namespaces: plaintext has none", NS_ALLOW("p", "[[[{namespaces: [{Exact: client}]}]]]"), PLAIN, D, NULL,
     NULL},
    {"namespaces prefix", NS_ALLOW("p", "[[[{namespaces: [{Prefix: kube-}]}]]]"), TLS_B, A, "app/p", NULL},
    {"namespaces presence vs plaintext", NS_ALLOW("p", "[[[{namespaces: [{Presence: []}]}]]]"), PLAIN, D,
     NULL, NULL},
    {"namespaces come from the SPIFFE id, not the principal text",
     NS_ALLOW("p", "[[[{namespaces: [{Exact: \"cluster.local/ns/client\"}]}]]]"), TLS_A, D, NULL, NULL},
    /* ztunnel compares namespaces against "" for a plaintext peer (unwrap_or_default), so an empty prefix
     * matches it; principals, by contrast, need the "spiffe://" prefix to strip. */
    {"namespaces: empty prefix matches plaintext (ztunnel edge)",
     NS_ALLOW("p", "[[[{namespaces: [{Prefix: \"\"}]}]]]"), PLAIN, A, "app/p", NULL},
    {"notNamespaces hit excludes", NS_ALLOW("p", "[[[{notNamespaces: [{Exact: client}]}]]]"), TLS_A, D, NULL,
     NULL},
    {"notNamespaces other ns", NS_ALLOW("p", "[[[{notNamespaces: [{Exact: client}]}]]]"), TLS_B, A, "app/p",
     NULL},
    {"notNamespaces holds for plaintext", NS_ALLOW("p", "[[[{notNamespaces: [{Exact: client}]}]]]"), PLAIN, A,
     "app/p", NULL},

    /* ---- principals ---- */
    {"principals exact (spiffe:// stripped)", NS_ALLOW("p", "[[[{principals: [" CLIENT "]}]]]"), TLS_A, A,
     "app/p", NULL},
    {"principals written with spiffe:// never match",
     NS_ALLOW("p", "[[[{principals: [{Exact: \"spiffe://cluster.local/ns/client/sa/client-sa\"}]}]]]"), TLS_A,
     D, NULL, NULL},
    {"principals prefix hit", NS_ALLOW("p", "[[[{principals: [{Prefix: \"cluster.local/ns/client/\"}]}]]]"),
     TLS_A, A, "app/p", NULL},
    {"principals prefix miss", NS_ALLOW("p", "[[[{principals: [{Prefix: \"cluster.local/ns/client/\"}]}]]]"),
     TLS_B, D, NULL, NULL},
    {"principals suffix hit", NS_ALLOW("p", "[[[{principals: [{Suffix: /sa/admin}]}]]]"), TLS_B, A, "app/p",
     NULL},
    {"principals suffix miss", NS_ALLOW("p", "[[[{principals: [{Suffix: /sa/admin}]}]]]"), TLS_A, D, NULL,
     NULL},
    {"principals presence with identity", NS_ALLOW("p", "[[[{principals: [{Presence: []}]}]]]"), TLS_B, A,
     "app/p", NULL},
    {"principals presence without identity", NS_ALLOW("p", "[[[{principals: [{Presence: []}]}]]]"), PLAIN, D,
     NULL, NULL},
    {"principals empty prefix never matches plaintext", NS_ALLOW("p", "[[[{principals: [{Prefix: \"\"}]}]]]"),
     PLAIN, D, NULL, NULL},
    {"principals list is OR", NS_ALLOW("p", "[[[{principals: [{Suffix: /sa/x}, {Suffix: /sa/admin}]}]]]"),
     TLS_B, A, "app/p", NULL},
    {"notPrincipals exact excludes", NS_ALLOW("p", "[[[{notPrincipals: [" CLIENT "]}]]]"), TLS_A, D, NULL,
     NULL},
    {"notPrincipals exact, other peer", NS_ALLOW("p", "[[[{notPrincipals: [" CLIENT "]}]]]"), TLS_B, A,
     "app/p", NULL},
    {"notPrincipals holds for plaintext", NS_ALLOW("p", "[[[{notPrincipals: [" CLIENT "]}]]]"), PLAIN, A,
     "app/p", NULL},
    {"must-be-mTLS deny: plaintext denied",
     POL("strict", "app", "WorkloadSelector", "Deny", "[[[{notPrincipals: [{Presence: []}]}]]]"), PLAIN, D,
     "app/strict", NULL},
    {"must-be-mTLS deny: mTLS allowed",
     POL("strict", "app", "WorkloadSelector", "Deny", "[[[{notPrincipals: [{Presence: []}]}]]]"), TLS_A, A,
     NULL, NULL},
    {"invalid SPIFFE id counts as no identity (deny)",
     POL("strict", "app", "WorkloadSelector", "Deny", "[[[{notPrincipals: [{Presence: []}]}]]]"), BAD_ID, D,
     "app/strict", NULL},
    {"invalid SPIFFE id counts as no identity (allow)", NS_ALLOW("p", "[[[{principals: [{Presence: []}]}]]]"),
     BAD_ID, D, NULL, NULL},

    /* ---- service accounts ---- */
    {"serviceAccounts hit",
     NS_ALLOW("p", "[[[{serviceAccounts: [{namespace: client, serviceAccount: client-sa}]}]]]"), TLS_A, A,
     "app/p", NULL},
    {"serviceAccounts: same ns, other sa",
     NS_ALLOW("p", "[[[{serviceAccounts: [{namespace: client, serviceAccount: client-sa}]}]]]"), TLS_A_SA, D,
     NULL, NULL},
    {"serviceAccounts: sa name in another ns",
     NS_ALLOW("p", "[[[{serviceAccounts: [{namespace: kube-system, serviceAccount: client-sa}]}]]]"), TLS_A,
     D, NULL, NULL},
    {"serviceAccounts ignore the trust domain",
     NS_ALLOW("p", "[[[{serviceAccounts: [{namespace: kube-system, serviceAccount: admin}]}]]]"), TLS_B, A,
     "app/p", NULL},
    {"serviceAccounts: plaintext has none",
     NS_ALLOW("p", "[[[{serviceAccounts: [{namespace: client, serviceAccount: client-sa}]}]]]"), PLAIN, D,
     NULL, NULL},
    {"serviceAccounts: an empty pair never matches plaintext",
     NS_ALLOW("p", "[[[{serviceAccounts: [{namespace: \"\", serviceAccount: \"\"}]}]]]"), PLAIN, D, NULL,
     NULL},
    {"notServiceAccounts excludes",
     NS_ALLOW("p", "[[[{notServiceAccounts: [{namespace: client, serviceAccount: client-sa}]}]]]"), TLS_A, D,
     NULL, NULL},
    {"notServiceAccounts other sa",
     NS_ALLOW("p", "[[[{notServiceAccounts: [{namespace: client, serviceAccount: client-sa}]}]]]"), TLS_A_SA,
     A, "app/p", NULL},
    {"notServiceAccounts holds for plaintext",
     NS_ALLOW("p", "[[[{notServiceAccounts: [{namespace: client, serviceAccount: client-sa}]}]]]"), PLAIN, A,
     "app/p", NULL},

    /* ---- source IPs ---- */
    {"sourceIps v4 CIDR hit", NS_ALLOW("p", "[[[{sourceIps: [\"10.1.0.0/16\"]}]]]"), TLS_A, A, "app/p", NULL},
    {"sourceIps v4 CIDR miss", NS_ALLOW("p", "[[[{sourceIps: [\"10.1.0.0/16\"]}]]]"), TLS_B, D, NULL, NULL},
    {"sourceIps bare IP", NS_ALLOW("p", "[[[{sourceIps: [\"10.2.0.9\"]}]]]"), TLS_B, A, "app/p", NULL},
    {"sourceIps host bits ignored", NS_ALLOW("p", "[[[{sourceIps: [\"10.1.255.255/16\"]}]]]"), TLS_A, A,
     "app/p", NULL},
    {"sourceIps apply to plaintext", NS_ALLOW("p", "[[[{sourceIps: [\"10.1.0.0/16\"]}]]]"), PLAIN, A, "app/p",
     NULL},
    {"sourceIps v6 CIDR hit", NS_ALLOW("p", "[[[{sourceIps: [\"fd00:1::/64\"]}]]]"), V6, A, "app/p", NULL},
    {"sourceIps v6 CIDR miss", NS_ALLOW("p", "[[[{sourceIps: [\"fd00:2::/64\"]}]]]"), V6, D, NULL, NULL},
    {"sourceIps v4 block never holds a v6 peer", NS_ALLOW("p", "[[[{sourceIps: [\"0.0.0.0/0\"]}]]]"), V6, D,
     NULL, NULL},
    {"sourceIps v4-mapped peer compared as v4", NS_ALLOW("p", "[[[{sourceIps: [\"10.1.0.0/16\"]}]]]"), MAPPED,
     A, "app/p", NULL},
    {"notSourceIps excludes", NS_ALLOW("p", "[[[{notSourceIps: [\"10.1.0.0/16\"]}]]]"), TLS_A, D, NULL, NULL},
    {"notSourceIps other peer", NS_ALLOW("p", "[[[{notSourceIps: [\"10.1.0.0/16\"]}]]]"), TLS_B, A, "app/p",
     NULL},
    {"notSourceIps v6", NS_ALLOW("p", "[[[{notSourceIps: [\"fd00:1::5/128\"]}]]]"), V6, D, NULL, NULL},

    /* ---- destination IPs and ports ---- */
    {"destinationIps hit", NS_ALLOW("p", "[[[{destinationIps: [\"10.0.0.2/32\"]}]]]"), TLS_A, A, "app/p",
     NULL},
    {"destinationIps miss", NS_ALLOW("p", "[[[{destinationIps: [\"10.0.0.3\"]}]]]"), TLS_A, D, NULL, NULL},
    {"destinationIps v6 hit", NS_ALLOW("p", "[[[{destinationIps: [\"fd00::/120\"]}]]]"), V6, A, "app/p",
     NULL},
    {"destinationIps v6 block vs v4 conn", NS_ALLOW("p", "[[[{destinationIps: [\"::/0\"]}]]]"), TLS_A, D,
     NULL, NULL},
    {"destinationIps v4-mapped dst compared as v4",
     NS_ALLOW("p", "[[[{destinationIps: [\"10.0.0.0/24\"]}]]]"), MAPPED, A, "app/p", NULL},
    {"notDestinationIps excludes", NS_DENY("d", "[[[{notDestinationIps: [\"10.0.0.2\"]}]]]"), TLS_A, A, NULL,
     NULL},
    {"notDestinationIps other", NS_DENY("d", "[[[{notDestinationIps: [\"10.0.0.9\"]}]]]"), TLS_A, D, "app/d",
     NULL},
    {"destinationPorts hit", NS_ALLOW("p", "[[[{destinationPorts: [80, 8080]}]]]"), TLS_A, A, "app/p", NULL},
    {"destinationPorts miss", NS_ALLOW("p", "[[[{destinationPorts: [80, 8080]}]]]"), TLS_B, D, NULL, NULL},
    {"notDestinationPorts excludes", NS_ALLOW("p", "[[[{notDestinationPorts: [8080]}]]]"), TLS_A, D, NULL,
     NULL},
    {"notDestinationPorts other port", NS_ALLOW("p", "[[[{notDestinationPorts: [8080]}]]]"), TLS_B, A,
     "app/p", NULL},
    {"port-level mTLS: plaintext denied except on 9090 (clauses AND)",
     POL("strict", "app", "WorkloadSelector", "Deny",
         "[[[{notPrincipals: [{Presence: []}]}], [{notDestinationPorts: [9090]}]]]"),
     PLAIN, D, "app/strict", NULL},

    /* ---- scopes ---- */
    {"global deny applies to every namespace's workloads",
     POL("deny-all", "istio-system", "Global", "Deny", "[[[]]]"), TLS_A, D, "istio-system/deny-all", NULL},
    {"global deny applies (other workload)", POL("deny-all", "istio-system", "Global", "Deny", "[[[]]]"),
     TLS_A, D, "istio-system/deny-all", "other"},
    {"global scope ignores the policy namespace", POL("g", "other", "Global", "Deny", "[[[]]]"), TLS_A, D,
     "other/g", NULL},
    {"namespace policy of another namespace does not apply", POL("n", "other", "Namespace", "Deny", "[[[]]]"),
     TLS_A, A, NULL, NULL},
    {"namespace policy applies to that namespace's workloads",
     POL("n", "other", "Namespace", "Deny", "[[[]]]"), TLS_A, D, "other/n", "other"},
    {"namespace allow elsewhere does not make allow-lists here",
     POL("n", "other", "Namespace", "Allow", "[]"), TLS_A, A, NULL, NULL},
    {"workload selector applies when listed", POL("selected", "app", "WorkloadSelector", "Deny", "[[[]]]"),
     TLS_A, D, "app/selected", NULL},
    {"workload selector does not apply when not listed",
     POL("unlisted", "app", "WorkloadSelector", "Deny", "[[[]]]"), TLS_A, A, NULL, NULL},
    {"workload selector not listed by another workload",
     POL("selected", "app", "WorkloadSelector", "Deny", "[[[]]]"), TLS_A, A, NULL, "other"},
    {"selected allow makes an allow-list", POL("selected", "app", "WorkloadSelector", "Allow", "[]"), TLS_A,
     D, NULL, NULL},
    {"order: namespace, global, then workload",
     POL("selected", "app", "WorkloadSelector", "Allow", "[[[]]]")
         POL("g", "root", "Global", "Allow", "[[[]]]") NS_ALLOW("n", "[[[]]]"),
     TLS_A, A, "app/n", NULL},

    /* ---- dry run ---- */
    {"dry-run deny is not enforced",
     "- {name: d, namespace: app, scope: Namespace, action: Deny, dryRun: true, rules: [[[]]]}\n", TLS_A, A,
     NULL, NULL},
    {"dry-run allow does not make an allow-list",
     "- {name: a, namespace: app, scope: Namespace, action: Allow, dryRun: true, rules: []}\n", TLS_A, A,
     NULL, NULL},
    {"dry-run allow does not allow",
     "- {name: a, namespace: app, scope: Namespace, action: Allow, dryRun: true, rules: [[[]]]}\n" NS_ALLOW(
         "p", "[[[{destinationPorts: [1]}]]]"),
     TLS_A, D, NULL, NULL},
    {"dry-run deny does not hide the enforced decision",
     "- {name: d, namespace: app, scope: Namespace, action: Deny, dryRun: true, rules: [[[]]]}\n" NS_ALLOW(
         "p", "[[[]]]"),
     TLS_A, A, "app/p", NULL},

    /* ---- plaintext ---- */
    {"plaintext: IP/port-only allow still works", NS_ALLOW("p", "[[[{destinationPorts: [8080]}]]]"), PLAIN, A,
     "app/p", NULL},
    {"plaintext: unknown listed policy names are skipped", "", PLAIN, A, NULL, NULL},
};

static struct snapshot *load(const char *policies)
{
    size_t n = strlen(base_yaml) + strlen(policies) + 1;
    char *yaml = malloc(n);
    struct snapshot *s = NULL;
    char err[512];
    assert_non_null(yaml);
    snprintf(yaml, n, "%s%s", base_yaml, policies);
    int rc = config_load_buf(yaml, strlen(yaml), "t.yaml", &s, err, sizeof(err));
    if (rc) fail_msg("load failed (%d): %s\n%s", rc, err, yaml);
    free(yaml);
    return s;
}

static struct authz_conn mkconn(enum conn_id id)
{
    struct authz_conn c = {.dst_port = conns[id].port, .src_identity = conns[id].id};
    assert_int_equal(ip_parse(conns[id].src, &c.src_ip), 0);
    assert_int_equal(ip_parse(conns[id].dst, &c.dst_ip), 0);
    return c;
}

static void test_table(void **state)
{
    (void)state;
    int failures = 0;
    log_set_level("error"); /* the table's dry-run and unknown-policy lines are tested separately */
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const struct tcase *t = &cases[i];
        struct snapshot *s = load(t->policies);
        const struct workload *w = snapshot_workload_by_uid(s, t->dst ? t->dst : "server");
        assert_non_null(w);
        struct authz_conn c = mkconn(t->conn);
        const char *pol = "unset";
        enum authz_result r = authz_check(s, w, &c, &pol);
        bool pol_ok = t->want_policy ? pol && strcmp(pol, t->want_policy) == 0 : pol == NULL;
        if (r != t->want || !pol_ok) {
            print_error("case %zu \"%s\": got %s (policy %s), want %s (policy %s)\n", i, t->name,
                        r == AUTHZ_ALLOW ? "allow" : "deny", pol ? pol : "NULL",
                        t->want == AUTHZ_ALLOW ? "allow" : "deny", t->want_policy ? t->want_policy : "NULL");
            failures++;
        }
        /* Without the out parameter the decision is the same. */
        assert_int_equal(authz_check(s, w, &c, NULL), r);
        snapshot_unref(s);
    }
    log_set_level("info");
    if (failures) fail_msg("%d of %zu cases failed", failures, sizeof(cases) / sizeof(cases[0]));
}

/* ztunnel's StringMatch table (src/rbac.rs string_match tests). */
static void test_string_match(void **state)
{
    (void)state;
    static const struct {
        uint8_t kind;
        const char *value, *check;
        bool want;
    } t[] = {
        {SM_EXACT, "foo", "foo", true},
        {SM_EXACT, "foo", "not", false},
        {SM_EXACT, "foo", "", false},
        {SM_PREFIX, "foo", "foobar", true},
        {SM_PREFIX, "foo", "notfoo", false},
        {SM_PREFIX, "foo", "", false},
        {SM_SUFFIX, "foo", "barfoo", true},
        {SM_SUFFIX, "foo", "foonot", false},
        {SM_SUFFIX, "foo", "", false},
        {SM_SUFFIX, "foo", "oo", false},
        {SM_PRESENCE, "", "foo", true},
        {SM_PRESENCE, "", "", false},
        {SM_PREFIX, "", "", true},
        {SM_SUFFIX, "", "x", true},
        {SM_EXACT, "", "", true},
        {99, "foo", "foo", false},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        struct string_match m = {.kind = t[i].kind, .value = t[i].value};
        if (authz_string_match(&m, t[i].check) != t[i].want)
            fail_msg("case %zu: kind %u value \"%s\" check \"%s\" want %d", i, t[i].kind, t[i].value,
                     t[i].check, t[i].want);
    }
}

/* authz_policy_matches mirrors ztunnel's rbac_empty_policy and per-field tests on a bare policy. */
static void test_policy_matches_direct(void **state)
{
    (void)state;
    struct snapshot *s =
        load(NS_ALLOW("nested", "[[[{namespaces: [{Exact: a}]}, {namespaces: [{Exact: b}]}], "
                                "[{destinationPorts: [80]}]]]"));
    const struct policy *p = snapshot_policy_by_name(s, "app/nested");
    assert_non_null(p);
    struct authz_conn c = {.dst_port = 80, .src_identity = "spiffe://td/ns/a/sa/account"};
    ip_parse("127.0.0.1", &c.src_ip);
    ip_parse("127.0.0.2", &c.dst_ip);
    assert_true(authz_policy_matches(p, &c));
    c.src_identity = "spiffe://td/ns/b/sa/account";
    assert_true(authz_policy_matches(p, &c));
    c.src_identity = "spiffe://td/ns/bad/sa/account";
    assert_false(authz_policy_matches(p, &c));
    c.src_identity = "spiffe://td/ns/b/sa/account";
    c.dst_port = 12345;
    assert_false(authz_policy_matches(p, &c));
    snapshot_unref(s);
}

/* Redirects stderr into a temporary file while fn runs and returns what was written (caller frees). */
static char *capture_stderr(void (*fn)(void *), void *arg)
{
    FILE *tmp = tmpfile();
    assert_non_null(tmp);
    int saved = dup(STDERR_FILENO);
    assert_true(saved >= 0);
    assert_true(dup2(fileno(tmp), STDERR_FILENO) >= 0);
    fn(arg);
    assert_true(dup2(saved, STDERR_FILENO) >= 0);
    close(saved);
    off_t n = lseek(fileno(tmp), 0, SEEK_END);
    assert_true(n >= 0);
    char *out = calloc(1, (size_t)n + 1);
    assert_non_null(out);
    assert_true(pread(fileno(tmp), out, (size_t)n, 0) == n);
    fclose(tmp);
    return out;
}

struct dry_ctx {
    struct snapshot *s;
    enum conn_id conn;
    enum authz_result got;
};

static void run_check(void *arg)
{
    struct dry_ctx *x = arg;
    struct authz_conn c = mkconn(x->conn);
    x->got = authz_check(x->s, snapshot_workload_by_uid(x->s, "server"), &c, NULL);
}

static void test_dry_run_logged(void **state)
{
    (void)state;
    log_set_level("info");
    struct dry_ctx x = {
        .s = load("- {name: dd, namespace: app, scope: Namespace, action: Deny, dryRun: true, "
                  "rules: [[[{destinationPorts: [8080]}]]]}\n"
                  "- {name: da, namespace: app, scope: Namespace, action: Allow, dryRun: true, "
                  "rules: [[[{destinationPorts: [1]}]]]}\n"),
        .conn = TLS_A,
    };
    char *out = capture_stderr(run_check, &x);
    assert_int_equal(x.got, AUTHZ_ALLOW);
    /* The dry-run DENY matches: it would have denied. */
    const char *l = strstr(out, "policy=\"app/dd\"");
    if (!l) fail_msg("no dry-run line for app/dd in:\n%s", out);
    assert_non_null(strstr(out, "\tinfo\tauthz\tdry-run policy\t"));
    const char *eol = strchr(l, '\n');
    assert_non_null(eol);
    char line[1024];
    snprintf(line, sizeof(line), "%.*s", (int)(eol - l), l);
    assert_non_null(strstr(line, "action=\"deny\""));
    assert_non_null(strstr(line, "matched=true"));
    assert_non_null(strstr(line, "decision=\"deny\""));
    assert_non_null(strstr(line, "enforced=\"allow\""));
    /* The dry-run ALLOW misses and would have been the only ALLOW policy: it would have denied. */
    l = strstr(out, "policy=\"app/da\"");
    if (!l) fail_msg("no dry-run line for app/da in:\n%s", out);
    assert_non_null(strstr(l, "matched=false decision=\"deny\""));
    free(out);

    /* Below info the dry-run policies are not even evaluated, and nothing is written. */
    log_set_level("warn");
    out = capture_stderr(run_check, &x);
    assert_int_equal(x.got, AUTHZ_ALLOW);
    assert_null(strstr(out, "dry-run"));
    free(out);
    log_set_level("info");
    snapshot_unref(x.s);
}

/* A dry-run policy listed after an enforced DENY that matched is still logged. */
static void test_dry_run_after_deny_logged(void **state)
{
    (void)state;
    log_set_level("info");
    struct dry_ctx x = {
        .s = load(NS_DENY("d", "[[[]]]") "- {name: da, namespace: app, scope: Namespace, action: Allow, "
                                         "dryRun: true, rules: [[[]]]}\n"),
        .conn = TLS_A,
    };
    char *out = capture_stderr(run_check, &x);
    assert_int_equal(x.got, AUTHZ_DENY);
    const char *l = strstr(out, "policy=\"app/da\"");
    if (!l) fail_msg("no dry-run line for app/da in:\n%s", out);
    assert_non_null(strstr(l, "matched=true decision=\"deny\" enforced=\"deny\""));
    free(out);
    snapshot_unref(x.s);
}

static void test_unknown_policy_warns(void **state)
{
    (void)state;
    log_set_level("info");
    struct dry_ctx x = {.s = load(""), .conn = TLS_A};
    char *out = capture_stderr(run_check, &x);
    assert_int_equal(x.got, AUTHZ_ALLOW);
    assert_non_null(strstr(out, "app/unknown-policy"));
    free(out);
    snapshot_unref(x.s);
}

/* Many policies in the mesh, few applicable: the decision depends only on the applicable ones, and the
 * matched policy string stays usable until the next call. */
static void test_large_mesh(void **state)
{
    (void)state;
    size_t cap = 1 << 20, len = 0;
    char *pols = malloc(cap);
    assert_non_null(pols);
    pols[0] = '\0';
    for (int i = 0; i < 2000; i++)
        len += (size_t)snprintf(
            pols + len, cap - len,
            "- {name: p%d, namespace: ns%d, scope: Namespace, action: Deny, rules: [[[]]]}\n", i, i % 200);
    snprintf(pols + len, cap - len, "%s", NS_ALLOW("mine", "[[[{principals: [" CLIENT "]}]]]"));
    log_set_level("error"); /* the base workload lists names no policy has */
    struct snapshot *s = load(pols);
    free(pols);
    const struct workload *w = snapshot_workload_by_uid(s, "server");
    struct authz_conn c = mkconn(TLS_A);
    const char *pol = NULL;
    assert_int_equal(authz_check(s, w, &c, &pol), AUTHZ_ALLOW);
    assert_string_equal(pol, "app/mine");
    c = mkconn(TLS_B);
    assert_int_equal(authz_check(s, w, &c, &pol), AUTHZ_DENY);
    assert_null(pol);
    log_set_level("info");
    snapshot_unref(s);
}

static void test_null_denies(void **state)
{
    (void)state;
    struct snapshot *s = load("");
    struct authz_conn c = mkconn(TLS_A);
    const char *pol = "unset";
    assert_int_equal(authz_check(s, NULL, &c, &pol), AUTHZ_DENY);
    assert_null(pol);
    assert_int_equal(authz_check(NULL, snapshot_workload_by_uid(s, "server"), &c, NULL), AUTHZ_DENY);
    snapshot_unref(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        /* First: the warning is rate-limited per process, and later tests check the same workload. */
        cmocka_unit_test(test_unknown_policy_warns), cmocka_unit_test(test_table),
        cmocka_unit_test(test_string_match),         cmocka_unit_test(test_policy_matches_direct),
        cmocka_unit_test(test_dry_run_logged),       cmocka_unit_test(test_dry_run_after_deny_logged),
        cmocka_unit_test(test_large_mesh),           cmocka_unit_test(test_null_denies),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
