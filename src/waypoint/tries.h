/* A request's tries, for both codecs (http1.c, h2c.c): which endpoint the next try goes to (another host than
 * the ones tried when the policy asks for it: Envoy's previous_hosts predicate, Istio's
 * host_selection_retry_max_attempts), whether a try that failed is tried again under the request's retry
 * policy (mesh/retry.h), the back-off before it, and Envoy's URX flag when the attempts ran out. What a codec
 * keeps to replay the request is its own. */
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "mesh/retry.h"
#include "waypoint/route.h"
#include "waypoint/wp.h"

/* Hosts remembered as tried; picks per try that look for one not tried (Istio's default is 5). */
#define WP_TRIED_MAX 8
#define WP_HOST_PICKS 5
/* Room for a flags string with ",URX" appended. */
#define WP_FLAGS_MAX 32

struct wp_tries {
    unsigned n; /* tries started */
    const struct workload *host[WP_TRIED_MAX];
    bool exhausted; /* a retriable failure with no attempt left (Envoy's URX) */
};

/* The endpoint for the next try of the request d decided (under its DestinationRule: wp_pick_endpoint_dec),
 * recorded in tr (n counts it). 0, or -ENOENT (no healthy upstream: Envoy's UH). */
int wp_try_pick(struct wp_tunnel *t, struct wp_decision *d, struct wp_tries *tr, struct lb_choice *out);
/* After a try ended as e: true when d's policy retries it and attempts are left (counted in the retry
 * metric); false otherwise, with tr->exhausted set (and counted) when only the attempts were missing. */
bool wp_try_again(const struct wp_decision *d, struct wp_tries *tr, const struct l7_try *e);
/* The back-off before the next try of d's request (Envoy's jittered exponential back-off, d's retries.backoff). */
uint64_t wp_try_backoff_ms(struct wp_worker *w, const struct wp_decision *d, const struct wp_tries *tr);
/* flags (NULL: "-") with URX beside them when the attempts ran out: "URX", "UF,URX". buf holds the result
 * when one is made. */
const char *wp_try_flags(const struct wp_tries *tr, const char *flags, char buf[WP_FLAGS_MAX]);
