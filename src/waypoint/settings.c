/* The waypoint's settings table (settings.h). */
#include "waypoint/settings.h"

#include <errno.h>
#include <stddef.h>
#include <string.h>

#include "core/log.h"
#include "xds/endpoint.h"

struct wp_settings wp_cfg;

static const char *const log_formats[] = {"plain", "json", NULL};

static int parse_log_level(const char *v, void *out, char *why, size_t n)
{
    bool bare = false;
    if (!*v) {
        *(const char **)out = NULL;
        return 0;
    }
    if (log_filter_check(v, &bare, why, n) < 0) return -EINVAL;
    *(const char **)out = v;
    return 0;
}

#define OFF(f) offsetof(struct wp_settings, f)
#define PORT(n, d, f, h)                                                                                     \
    {                                                                                                        \
        .name = n, .kind = ENV_INT, .def = d, .offset = OFF(f), .min = 0, .max = 65535, .help = h            \
    }

static const struct env_setting table[] = {
    {.name = "XDS_ADDRESS",
     .kind = ENV_STRING,
     .offset = OFF(xds_address),
     .help = "the xDS server (zmeshd's delta ADS) to take services, workloads and L7 config from, host:port"},
    {.name = "XDS_ROOT_CA",
     .kind = ENV_STRING,
     .def = XDS_DEFAULT_ROOT_CA,
     .offset = OFF(xds_root_ca),
     .help = "PEM roots that sign the xDS server's certificate"},
    {.name = "ALT_XDS_HOSTNAME",
     .kind = ENV_STRING,
     .offset = OFF(alt_xds_hostname),
     .help = "the name the xDS server's certificate must carry when it differs from XDS_ADDRESS's host"},
    {.name = "LOCAL_XDS_PATH",
     .kind = ENV_STRING,
     .offset = OFF(local_xds_path),
     .help = "a LocalConfig file (ztunnel's format: workloads, services) instead of XDS_ADDRESS, read at "
             "start-up"},
    {.name = "LOCAL_L7_PATH",
     .kind = ENV_STRING,
     .offset = OFF(local_l7_path),
     .help = "with LOCAL_XDS_PATH: a directory of Kubernetes manifests whose HTTPRoutes, GRPCRoutes and "
             "AuthorizationPolicies with targetRefs are converted as zmeshd converts them, read at start-up"},
    {.name = "CA_ADDRESS",
     .kind = ENV_STRING,
     .offset = OFF(ca_address),
     .help = "the CA (istio.v1.auth.IstioCertificateService) that signs the waypoint's certificate"},
    {.name = "CA_ROOT_CA",
     .kind = ENV_STRING,
     .def = XDS_DEFAULT_ROOT_CA,
     .offset = OFF(ca_root_ca),
     .help = "PEM roots that sign the CA's certificate"},
    {.name = "ALT_CA_HOSTNAME",
     .kind = ENV_STRING,
     .offset = OFF(alt_ca_hostname),
     .help = "the name the CA's certificate must carry when it differs from CA_ADDRESS's host"},
    {.name = "LOCAL_CA_DIR",
     .kind = ENV_STRING,
     .offset = OFF(local_ca_dir),
     .help = "a local CA directory (root-cert.pem, ca-key.pem) instead of CA_ADDRESS"},
    {.name = "AUTH_TOKEN",
     .kind = ENV_STRING,
     .def = XDS_DEFAULT_TOKEN_PATH " if it exists",
     .offset = OFF(auth_token),
     .help = "the service-account token for the CA and xDS: a file (re-read for every request)"},
    {.name = "CLUSTER_ID",
     .kind = ENV_STRING,
     .def = "Kubernetes",
     .offset = OFF(cluster_id),
     .help = "the cluster's name in xDS metadata"},
    {.name = "TRUST_DOMAIN",
     .kind = ENV_STRING,
     .def = "cluster.local",
     .offset = OFF(trust_domain),
     .help = "the trust domain of the waypoint's identity and of its peers"},
    {.name = "CLUSTER_DOMAIN",
     .kind = ENV_STRING,
     .def = "cluster.local",
     .offset = OFF(cluster_domain),
     .help = "the DNS suffix of service hostnames (<name>.<ns>.svc.<suffix>)"},
    {.name = "POD_NAME", .kind = ENV_STRING, .offset = OFF(pod_name), .required = true, .help = "this pod's name"},
    {.name = "POD_NAMESPACE",
     .kind = ENV_STRING,
     .offset = OFF(pod_namespace),
     .required = true,
     .help = "this pod's namespace: the Gateway's"},
    {.name = "SERVICE_ACCOUNT",
     .kind = ENV_STRING,
     .offset = OFF(service_account),
     .required = true,
     .help = "this pod's service account: the identity spiffe://<td>/ns/<ns>/sa/<sa>"},
    {.name = "GATEWAY_NAME",
     .kind = ENV_STRING,
     .def = "SERVICE_ACCOUNT",
     .offset = OFF(gateway_name),
     .help = "the waypoint Gateway this pod serves: services bound to <name>.<ns>.svc.<suffix>"},
    {.name = "NODE_NAME", .kind = ENV_STRING, .offset = OFF(node_name), .help = "the node, for xDS metadata"},
    {.name = "INSTANCE_IP", .kind = ENV_STRING, .offset = OFF(instance_ip), .help = "this pod's IP, for xDS metadata"},
    {.name = "SECRET_TTL",
     .kind = ENV_DURATION,
     .def = "24h",
     .offset = OFF(secret_ttl_ms),
     .min = 1000,
     .help = "the certificate lifetime asked of the CA; renewed at half of it"},
    {.name = "CONNECTION_TERMINATION_DEADLINE",
     .kind = ENV_DURATION,
     .def = "5s",
     .offset = OFF(termination_deadline_ms),
     .help = "on SIGTERM, how long open connections may finish before they are closed"},
    {.name = "POOL_UNUSED_RELEASE_TIMEOUT",
     .kind = ENV_DURATION,
     .def = "1h",
     .offset = OFF(pool_idle_ms),
     .min = 1,
     .help = "upstream HBONE connections without streams close after this (meshConfig.hboneIdleTimeout)"},
    PORT("HBONE_PORT", "15008", hbone_port, "the HBONE listener (Istio's waypoint: 15008)"),
    PORT("ADMIN_PORT", "15000", admin_port, "admin (localhost): /config_dump, /quitquitquit"),
    PORT("METRICS_PORT", "15020", metrics_port, "Prometheus metrics: /metrics, /stats/prometheus"),
    PORT("READINESS_PORT", "15021", readiness_port, "readiness: /healthz/ready"),
    {.name = "WAYPOINT_WORKER_THREADS",
     .kind = ENV_INT,
     .def = "2",
     .offset = OFF(n_workers),
     .min = 1,
     .max = WP_MAX_WORKERS,
     .help = "worker threads (Istio's waypoint runs Envoy with 2)"},
    {.name = "LOG_FORMAT",
     .kind = ENV_ENUM,
     .def = "plain",
     .choices = log_formats,
     .offset = OFF(log_format),
     .help = "plain or json, for the process log"},
    {.name = "LOG_LEVEL",
     .kind = ENV_CUSTOM,
     .def = "info",
     .type = "filter",
     .offset = OFF(log_level),
     .parse = parse_log_level,
     .help = "log filter in RUST_LOG's syntax (info, access=debug, ...)"},
    {.name = "ACCESS_LOG_JSON",
     .kind = ENV_BOOL,
     .def = "false",
     .offset = OFF(access_log_json),
     .help = "access log lines as JSON (Istio's JSON keys) instead of Istio's default text format"},
};

int wp_settings_parse(struct wp_settings *s, env_lookup_fn lookup, struct env_diag *errors,
                      struct env_diag *warnings)
{
    size_t n = sizeof(table) / sizeof(table[0]);
    bool set[sizeof(table) / sizeof(table[0])];
    *s = (struct wp_settings){
        .xds_root_ca = XDS_DEFAULT_ROOT_CA,
        .ca_root_ca = XDS_DEFAULT_ROOT_CA,
        .cluster_id = "Kubernetes",
        .trust_domain = "cluster.local",
        .cluster_domain = "cluster.local",
        .secret_ttl_ms = WP_DEFAULT_SECRET_TTL_MS,
        .termination_deadline_ms = WP_DEFAULT_TERMINATION_DEADLINE_MS,
        .pool_idle_ms = WP_DEFAULT_POOL_IDLE_MS,
        .hbone_port = 15008,
        .admin_port = 15000,
        .metrics_port = 15020,
        .readiness_port = 15021,
        .n_workers = WP_DEFAULT_WORKERS,
    };
    int rc = env_parse_table(table, n, s, lookup, set, errors, warnings);
    bool file = s->local_xds_path && *s->local_xds_path, xds = s->xds_address && *s->xds_address;
    if (file == xds) {
        env_diag_add(errors, file ? "LOCAL_XDS_PATH and XDS_ADDRESS are both set: choose one source of config"
                                  : "no config: set XDS_ADDRESS (zmeshd) or LOCAL_XDS_PATH (a LocalConfig file)");
        rc = -EINVAL;
    }
    if (s->local_l7_path && *s->local_l7_path && !file) {
        env_diag_add(errors, "LOCAL_L7_PATH needs LOCAL_XDS_PATH: with XDS_ADDRESS the L7 config comes from it");
        rc = -EINVAL;
    }
    bool local = s->local_ca_dir && *s->local_ca_dir, remote = s->ca_address && *s->ca_address;
    if (local == remote) {
        env_diag_add(errors, local ? "LOCAL_CA_DIR and CA_ADDRESS are both set: choose one CA"
                                   : "no CA: set CA_ADDRESS (zmeshd) or LOCAL_CA_DIR (a local CA directory)");
        rc = -EINVAL;
    }
    if (!s->gateway_name || !*s->gateway_name) s->gateway_name = s->service_account;
    const char *meta_cluster = lookup("ISTIO_META_CLUSTER_ID");
    if (meta_cluster && *meta_cluster) s->cluster_id = meta_cluster;
    return rc;
}

void wp_settings_help(FILE *f, const char *version)
{
    fprintf(f,
            "zmesh waypoint %s: the ambient mesh's L7 proxy (HBONE in, HTTP routing, L7 policy, HBONE out)\n\n"
            "Usage: waypoint [proxy|version|help|--version|--help]\n\n"
            "Environment (Istio's syntax: durations such as 500ms, 5s, 1m30s, 1h; bools true or false):\n",
            version);
    env_print_help(f, table, sizeof(table) / sizeof(table[0]));
}
