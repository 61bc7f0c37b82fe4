/* ztunnel's environment settings: one table (name, kind, default, meaning, destination) parsed once at
 * start-up with Istio's syntax (istio/ztunnel src/config.rs) into struct zt_settings; --help prints the same
 * table. Istio settings zmesh does not implement yet are in the table too, and get one warning each. */
#pragma once
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "core/env.h"

/* ztunnel's PROXY_MODE values (config.rs ProxyMode; shared is the default). */
enum zt_proxy_mode { ZT_MODE_SHARED = 0, ZT_MODE_DEDICATED = 1 };
/* "shared" or "dedicated". */
const char *zt_proxy_mode_to_str(enum zt_proxy_mode m);

/* LOG_FORMAT values: Istio's "plain" (default) and "json"; "text" is zmesh's older name for plain. */
enum zt_log_format { ZT_LOG_PLAIN = 0, ZT_LOG_JSON = 1, ZT_LOG_TEXT = 2 };

/* Most worker threads zmesh runs (the per-worker arrays in main.c are this big). */
#define ZT_MAX_WORKERS 64
/* Istio's DEFAULT_WORKER_THREADS and DEFAULT_WORKER_THREAD_CPU_FRACTION (config.rs). */
#define ZT_DEFAULT_WORKER_THREADS 2
#define ZT_WORKER_CPU_FRACTION_PCT 25
/* Istio's defaults (config.rs). */
#define ZT_DEFAULT_TERMINATION_DEADLINE_MS 5000
#define ZT_DEFAULT_POOL_UNUSED_RELEASE_MS (5 * 60 * 1000)
#define ZT_DEFAULT_SECRET_TTL_MS (24ULL * 3600 * 1000)
#define ZT_NAME_MAX 128

/* ZTUNNEL_WORKER_THREADS as written: a count (0 = every CPU) or a percentage of the CPUs. */
struct zt_worker_spec {
    int64_t count;
    double percent; /* > 0 when written "N%" */
};

/* PROXY_WORKLOAD_INFO=<namespace>/<name>/<service account>. */
struct zt_workload_info {
    char ns[ZT_NAME_MAX], name[ZT_NAME_MAX], sa[ZT_NAME_MAX];
};

struct zt_settings {
    int proxy_mode;                   /* enum zt_proxy_mode */
    struct zt_workload_info workload; /* PROXY_WORKLOAD_INFO (dedicated mode) */
    const char *inpod_uds;            /* INPOD_UDS (shared mode) */
    const char *local_xds_path;       /* LOCAL_XDS_PATH (borrowed from the environment), or NULL: xds_address */
    const char *xds_address;          /* XDS_ADDRESS */
    const char *xds_root_ca;          /* XDS_ROOT_CA */
    const char *alt_xds_hostname;     /* ALT_XDS_HOSTNAME */
    const char *pod_name, *pod_namespace, *instance_ip, *node_name; /* the xDS node (downward API) */
    const char *local_ca_dir;         /* LOCAL_CA_DIR, or NULL: then ca_address */
    const char *ca_address;           /* CA_ADDRESS */
    const char *ca_root_ca;           /* CA_ROOT_CA */
    const char *alt_ca_hostname;      /* ALT_CA_HOSTNAME */
    const char *auth_token;           /* AUTH_TOKEN (a file or the token) */
    const char *cluster_id;           /* ISTIO_META_CLUSTER_ID, else CLUSTER_ID */
    const char *rust_log;             /* RUST_LOG, validated; NULL when unset */
    int log_format;                   /* enum zt_log_format */
    struct zt_worker_spec worker_spec;
    int64_t cpu_limit;            /* ZTUNNEL_CPU_LIMIT, 0 when unset */
    int64_t resource_cpu_limit;   /* ZTUNNEL_RESOURCE_CPU_LIMIT in whole CPUs (rounded up), 0 when unset */
    int64_t resource_cpu_request; /* ZTUNNEL_RESOURCE_CPU_REQUEST likewise */
    uint64_t termination_deadline_ms; /* CONNECTION_TERMINATION_DEADLINE (or from the grace period) */
    int64_t termination_grace_s;      /* TERMINATION_GRACE_PERIOD_SECONDS, -1 when unset */
    uint64_t pool_unused_release_ms;  /* POOL_UNUSED_RELEASE_TIMEOUT */
    uint64_t secret_ttl_ms;           /* SECRET_TTL: requested certificate lifetime */
    int64_t admin_port, metrics_port,
        readiness_port; /* zmesh's own: ADMIN_PORT, METRICS_PORT, READINESS_PORT */
    /* Derived. */
    int n_workers;
    bool rust_log_bare_target; /* RUST_LOG named a target without a level (read as trace for it) */
};

/* Parses the environment (lookup: getenv, or a fake one in tests; envp: the whole environment for Istio's
 * prefixed variables such as ISTIO_META_*, may be NULL) into *s, defaults applied and derived fields computed
 * (ncpu: CPUs available, for worker counts). Every problem is reported: errors (invalid
 * values, missing required variables, all of them) in *errors, warnings (Istio settings not implemented, a
 * RUST_LOG target without a level) in *warnings. Returns 0 or -EINVAL. */
int zt_settings_parse(struct zt_settings *s, env_lookup_fn lookup, char *const *envp, int ncpu,
                      struct env_diag *errors, struct env_diag *warnings);

/* The settings table, for --help and tests: *n entries. */
const struct env_setting *zt_settings_table(size_t *n);

/* Writes `ztunnel --help`: usage, commands and every setting with its kind, default and meaning. */
void zt_settings_help(FILE *f, const char *version);

/* The process's settings, set once by main before any worker starts (read-only afterwards). */
extern struct zt_settings zt_cfg;
