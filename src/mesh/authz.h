/* L4 authorization as Istio's ztunnel enforces it (ztunnel src/rbac.rs and
 * src/state.rs::assert_rbac): which policies apply to a destination workload, how DENY and ALLOW combine,
 * and how one policy's rules, clauses and matches are evaluated against a connection.
 *
 * Evaluation allocates nothing, takes no lock and touches only the applicable policies (found through the
 * snapshot's namespace, global and by-name indexes), so it is safe on any thread that holds a reference to
 * the snapshot. */
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "core/net.h"
#include "mesh/model.h"

/* The connection being authorized. */
struct authz_conn {
    struct ip_addr src_ip, dst_ip; /* dst = the destination pod IP; IPv4-mapped IPv6 is treated as IPv4 */
    uint16_t dst_port;             /* the final app port (not 15008) */
    const char *src_identity;      /* full "spiffe://td/ns/x/sa/y" or NULL for plaintext (no identity) */
};

enum authz_result { AUTHZ_ALLOW = 0, AUTHZ_DENY = 1 };

/* Longest "ns/name" that *matched_policy can hold (longer keys are truncated). */
#define AUTHZ_POLICY_KEY_MAX 2200

/* Evaluates the policies that apply to destination workload dst (NAMESPACE policies of dst's namespace,
 * GLOBAL policies, and dst->authorization_policies by "ns/name", unknown names skipped with a warning) in
 * snapshot s: dry-run policies are only logged (info, target "authz", with the decision they would have
 * made); any matching DENY -> deny; no ALLOW policies -> allow; any matching ALLOW -> allow; else deny.
 * An identity that is not a valid SPIFFE id counts as no identity; a NULL s, dst or c denies (fail closed).
 * If matched_policy is non-NULL it receives the "ns/name" of the deciding policy (a matching DENY, or the
 * first matching ALLOW), or NULL when no policy decided (no ALLOW policies, or none matched). The string
 * lives in a thread-local buffer: valid until the next authz_check on the same thread; copy it to keep it. */
enum authz_result authz_check(const struct snapshot *s, const struct workload *dst,
                              const struct authz_conn *c, const char **matched_policy);

/* True when policy p's rules match connection c (the action and dry-run flag are ignored): any rule whose
 * clauses all hold, a clause holding when it is empty or any of its non-empty matches holds. Exposed for
 * tests, the admin dump and benchmarks. */
bool authz_policy_matches(const struct policy *p, const struct authz_conn *c);

/* True when string match m accepts s (exact, prefix, suffix, or presence = non-empty). */
bool authz_string_match(const struct string_match *m, const char *s);
