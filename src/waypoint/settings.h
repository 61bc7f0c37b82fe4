/* The waypoint's environment settings: one table (name, kind, default, meaning), parsed once at start-up by
 * core/env.h's walker into wp_cfg; `waypoint --help` prints the same table. Names follow Istio's ztunnel where
 * the waypoint needs the same thing (XDS_ADDRESS, CA_ADDRESS, AUTH_TOKEN, ... as in istio/ztunnel
 * src/config.rs), and the pod facts Istio's waypoint template gives its proxy through the downward API
 * (POD_NAME, POD_NAMESPACE, SERVICE_ACCOUNT; istio/istio manifests/charts/istio-control/istio-discovery/files/
 * waypoint.yaml). */
#pragma once
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "core/env.h"

#define WP_MAX_WORKERS 64
#define WP_DEFAULT_WORKERS 2 /* Istio's waypoint template runs Envoy with --concurrency 2 */
#define WP_DEFAULT_SECRET_TTL_MS (24ull * 3600 * 1000)
#define WP_DEFAULT_TERMINATION_DEADLINE_MS 5000
#define WP_DEFAULT_POOL_IDLE_MS (3600ull * 1000) /* meshConfig.hboneIdleTimeout's default, 1h */

enum wp_log_format { WP_LOG_PLAIN, WP_LOG_JSON };

struct wp_settings {
    const char *xds_address, *xds_root_ca, *alt_xds_hostname;
    const char *local_xds_path; /* LocalConfig file (workloads and services), instead of XDS_ADDRESS */
    const char *local_l7_path;  /* with LOCAL_XDS_PATH: a directory of Kubernetes L7 manifests */
    const char *ca_address, *ca_root_ca, *alt_ca_hostname;
    const char *local_ca_dir; /* a local CA, instead of CA_ADDRESS (tests, a waypoint alone) */
    const char *auth_token;
    const char *cluster_id, *trust_domain, *cluster_domain;
    const char *pod_name, *pod_namespace, *service_account, *node_name, *instance_ip;
    const char *gateway_name; /* the Gateway this pod serves; default: SERVICE_ACCOUNT (Istio names both alike) */
    uint64_t secret_ttl_ms, termination_deadline_ms, pool_idle_ms;
    int64_t admin_port, metrics_port, readiness_port, hbone_port;
    int64_t n_workers;
    int log_format; /* enum wp_log_format */
    const char *log_level; /* RUST_LOG's syntax (core/log.h filters) */
    bool access_log_json;
};

extern struct wp_settings wp_cfg;

/* Parses the environment (lookup) into s; every problem goes to errors/warnings at once. Returns 0 or
 * -EINVAL. */
int wp_settings_parse(struct wp_settings *s, env_lookup_fn lookup, struct env_diag *errors,
                      struct env_diag *warnings);
/* `waypoint --help`. */
void wp_settings_help(FILE *f, const char *version);
