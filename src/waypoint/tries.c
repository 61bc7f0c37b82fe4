/* A request's tries (tries.h). */
#include "waypoint/tries.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "waypoint/telemetry.h"

static bool was_tried(const struct wp_tries *tr, const struct workload *w)
{
    for (unsigned i = 0; i < tr->n && i < WP_TRIED_MAX; i++)
        if (tr->host[i] == w) return true;
    return false;
}

int wp_try_pick(struct wp_tunnel *t, struct wp_decision *d, struct wp_tries *tr, struct lb_choice *out)
{
    bool found = false;
    int picks = tr->n && d->retry && d->retry->retry_other_hosts ? WP_HOST_PICKS : 1;
    for (int i = 0; i < picks; i++) {
        struct lb_choice c;
        if (wp_pick_endpoint_dec(t, d, &c) < 0) break; /* the DestinationRule's choice */
        if (!found || !was_tried(tr, c.wl)) *out = c;
        found = true;
        if (!was_tried(tr, c.wl)) break;
    }
    if (!found) return -ENOENT;
    if (tr->n < WP_TRIED_MAX) tr->host[tr->n] = out->wl;
    tr->n++;
    return 0;
}

bool wp_try_again(const struct wp_decision *d, struct wp_tries *tr, const struct l7_try *e)
{
    if (!d->retry || !l7_retry_wanted(d->retry, e)) return false;
    if (tr->n > d->retry->attempts) {
        if (!tr->exhausted) wp_telemetry_retry_exhausted();
        tr->exhausted = true;
        return false;
    }
    wp_telemetry_retry();
    return true;
}

uint64_t wp_try_backoff_ms(struct wp_worker *w, const struct wp_decision *d, const struct wp_tries *tr)
{
    return l7_retry_policy_backoff_ms(d->retry, tr->n, wp_rand(w));
}

const char *wp_try_flags(const struct wp_tries *tr, const char *flags, char buf[WP_FLAGS_MAX])
{
    if (!flags) flags = "-";
    if (!tr->exhausted) return flags;
    bool none = !strcmp(flags, "-");
    snprintf(buf, WP_FLAGS_MAX, "%s%sURX", none ? "" : flags, none ? "" : ",");
    return buf;
}
