/* The waypoint's admin (localhost), metrics and readiness ports. */
#pragma once
#include <stdbool.h>
#include <stddef.h>

#include "core/loop.h"
#include "tls/identity.h"

struct wp_admin_hooks {
    /* What readiness waits for ("config, certificate"), or NULL when ready. Static or long-lived string. */
    const char *(*pending)(void);
    /* The identity manager's status (identity_mgr_status); may be NULL. */
    int (*certs)(struct identity_status **out);
    /* The metrics exposition (malloc'd), text or OpenMetrics. */
    char *(*metrics)(bool openmetrics, size_t *len);
};

/* Listens on ADMIN_PORT (127.0.0.1), METRICS_PORT and READINESS_PORT on loop l (the main loop). h is
 * borrowed for the process's life. Returns 0 or -errno with err filled. */
int wp_admin_start(struct loop *l, const struct wp_admin_hooks *h, char *err, size_t errlen);
