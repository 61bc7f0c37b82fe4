/* ztunnel's settings table. Names, defaults and value syntax are Istio ztunnel's (src/config.rs in
 * istio/ztunnel); LOCAL_CA_DIR and the *_PORT variables are zmesh's own. */
#include "ztunnel/settings.h"
#include "ztunnel/zds.h"

#include <errno.h>
#include <math.h> /* isfinite, a macro */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "xds/endpoint.h"
#include "xds/node.h"

struct zt_settings zt_cfg;

static int64_t ceil_pos(double x);

static const char *const proxy_modes[] = {"shared", "dedicated", NULL};
static const char *const log_formats[] = {"plain", "json", "text", NULL};

const char *zt_proxy_mode_to_str(enum zt_proxy_mode m)
{
    return (unsigned)m < 2 ? proxy_modes[m] : "?";
}

/* PROXY_WORKLOAD_INFO: Istio splits on '/' into exactly namespace/name/service-account. zmesh also refuses
 * empty parts and a '/' in the service account (Istio's splitn(3) would keep it), since they cannot make a
 * valid SPIFFE id. */
static int parse_workload_info(const char *v, void *out, char *why, size_t n)
{
    struct zt_workload_info *wi = out;
    const char *a = strchr(v, '/'), *b = a ? strchr(a + 1, '/') : NULL;
    if (!a || !b || strchr(b + 1, '/') || a == v || b == a + 1 || !b[1]) {
        snprintf(why, n, "must match the format 'namespace/name/service-account'");
        return -EINVAL;
    }
    if ((size_t)(a - v) >= sizeof(wi->ns) || (size_t)(b - a - 1) >= sizeof(wi->name) ||
        strlen(b + 1) >= sizeof(wi->sa)) {
        snprintf(why, n, "each part must be shorter than %d bytes", ZT_NAME_MAX);
        return -EINVAL;
    }
    snprintf(wi->ns, sizeof(wi->ns), "%.*s", (int)(a - v), v);
    snprintf(wi->name, sizeof(wi->name), "%.*s", (int)(b - a - 1), a + 1);
    snprintf(wi->sa, sizeof(wi->sa), "%s", b + 1);
    return 0;
}

/* ZTUNNEL_WORKER_THREADS: "N" (0 = every CPU) or "N%" of the CPUs, 0 < N <= 100 (config.rs
 * parse_worker_threads). */
static int parse_workers(const char *v, void *out, char *why, size_t n)
{
    struct zt_worker_spec *ws = out;
    size_t len = strlen(v);
    if (len && v[len - 1] == '%') {
        char num[64], *end;
        if (len - 1 >= sizeof(num) || len == 1) {
            snprintf(why, n, "invalid percentage");
            return -EINVAL;
        }
        memcpy(num, v, len - 1);
        num[len - 1] = 0;
        double pct = strtod(num, &end);
        if (*end || end == num || !isfinite(pct)) {
            snprintf(why, n, "invalid percentage");
            return -EINVAL;
        }
        if (pct <= 0 || pct > 100) {
            snprintf(why, n, "percentage must be between 0 and 100");
            return -ERANGE;
        }
        *ws = (struct zt_worker_spec){.percent = pct};
        return 0;
    }
    int64_t c = 0;
    int rc = env_parse_int(v, 0, ZT_MAX_WORKERS, &c);
    if (rc == -ERANGE)
        snprintf(why, n, "zmesh runs at most %d worker threads", ZT_MAX_WORKERS);
    else if (rc < 0)
        snprintf(why, n, "invalid number");
    else
        *ws = (struct zt_worker_spec){.count = c};
    return rc;
}

/* A Kubernetes CPU quantity ("2", "1.5", "500m") as whole CPUs rounded up (config.rs parse_cpu_quantity). */
static int parse_cpu_quantity(const char *v, void *out, char *why, size_t n)
{
    char *end;
    double cores = strtod(v, &end);
    if (end == v) goto bad;
    if (*end == 'm' && !end[1])
        cores /= 1000;
    else if (*end)
        goto bad;
    if (!isfinite(cores) || cores <= 0) {
        snprintf(why, n, "must be a positive CPU quantity");
        return -ERANGE;
    }
    if (cores > 1e6) {
        snprintf(why, n, "CPU quantity too large");
        return -ERANGE;
    }
    *(int64_t *)out = ceil_pos(cores);
    return 0;
bad:
    snprintf(why, n, "expected a CPU quantity such as 2, 1.5 or 500m");
    return -EINVAL;
}

/* RUST_LOG: tracing-subscriber's Targets syntax, checked here so a typo is refused at start-up. */
static int parse_rust_log(const char *v, void *out, char *why, size_t n)
{
    bool bare = false;
    if (!*v) {
        *(const char **)out = NULL; /* empty: the default */
        return 0;
    }
    if (log_filter_check(v, &bare, why, n) < 0) return -EINVAL;
    *(const char **)out = v;
    return 0;
}

#define OFF(f) offsetof(struct zt_settings, f)
#define UNSUPPORTED(n, h)                                                                                    \
    {                                                                                                        \
        .name = n, .kind = ENV_UNSUPPORTED, .help = h                                                        \
    }

static const struct env_setting table[] = {
    {.name = "PROXY_MODE",
     .kind = ENV_ENUM,
     .def = "shared",
     .choices = proxy_modes,
     .offset = OFF(proxy_mode),
     .help = "shared: one ztunnel per node, serving the pods the node agent hands over INPOD_UDS; "
             "dedicated: one ztunnel per pod, PROXY_WORKLOAD_INFO"},
    {.name = "PROXY_WORKLOAD_INFO",
     .kind = ENV_CUSTOM,
     .parse = parse_workload_info,
     .type = "ns/name/sa",
     .offset = OFF(workload),
     .help = "dedicated mode (required there): the pod this ztunnel serves, "
             "<namespace>/<name>/<service-account>"},
    {.name = "INPOD_UDS",
     .kind = ENV_STRING,
     .def = ZDS_DEFAULT_PATH,
     .offset = OFF(inpod_uds),
     .help = "shared mode: the node agent's ZDS socket (SOCK_SEQPACKET), over which it hands over each pod's "
             "network namespace"},
    {.name = "LOCAL_XDS_PATH",
     .kind = ENV_STRING,
     .offset = OFF(local_xds_path),
     .help = "LocalConfig YAML file with workloads, services and policies (watched for changes); the other "
             "choice is XDS_ADDRESS"},
    {.name = "XDS_ADDRESS",
     .kind = ENV_STRING,
     .offset = OFF(xds_address),
     .help = "the xDS server to take workloads, services and policies from (delta ADS: zmeshd or istiod), "
             "https://host:port; Istio defaults to istiod, zmesh asks for this or LOCAL_XDS_PATH"},
    {.name = "XDS_ROOT_CA",
     .kind = ENV_STRING,
     .def = XDS_DEFAULT_ROOT_CA,
     .offset = OFF(xds_root_ca),
     .help = "roots that verify the xDS server's certificate: a PEM file, the PEM text itself, or SYSTEM"},
    {.name = "ALT_XDS_HOSTNAME",
     .kind = ENV_STRING,
     .offset = OFF(alt_xds_hostname),
     .help = "the DNS name the xDS server's certificate must carry (default: XDS_ADDRESS's host)"},
    {.name = "POD_NAME",
     .kind = ENV_STRING,
     .offset = OFF(pod_name),
     .help = "ztunnel's own pod (downward API): the xDS node id and NAME metadata"},
    {.name = "POD_NAMESPACE",
     .kind = ENV_STRING,
     .offset = OFF(pod_namespace),
     .help = "ztunnel's own namespace (downward API): the xDS node id and NAMESPACE metadata"},
    {.name = "INSTANCE_IP",
     .kind = ENV_STRING,
     .def = XDS_NODE_DEFAULT_IP,
     .offset = OFF(instance_ip),
     .help = "ztunnel's own IP (downward API): the xDS node id and INSTANCE_IPS metadata"},
    {.name = "NODE_NAME",
     .kind = ENV_STRING,
     .offset = OFF(node_name),
     .help = "the node ztunnel runs on (downward API): NODE_NAME metadata"},
    {.name = "LOCAL_CA_DIR",
     .kind = ENV_STRING,
     .offset = OFF(local_ca_dir),
     .help = "zmesh: directory with a local CA (root-cert.pem, root-key.pem) that signs this pod's "
             "certificate; the other choice is CA_ADDRESS"},
    {.name = "CA_ADDRESS",
     .kind = ENV_STRING,
     .offset = OFF(ca_address),
     .help = "the CA to ask for certificates (Istio's IstioCertificateService: zmeshd or istiod), "
             "https://host:port; Istio defaults to istiod, zmesh asks for this or LOCAL_CA_DIR"},
    {.name = "CA_ROOT_CA",
     .kind = ENV_STRING,
     .def = XDS_DEFAULT_ROOT_CA,
     .offset = OFF(ca_root_ca),
     .help = "roots that verify the CA's certificate: a PEM file, the PEM text itself, or SYSTEM"},
    {.name = "ALT_CA_HOSTNAME",
     .kind = ENV_STRING,
     .offset = OFF(alt_ca_hostname),
     .help = "the DNS name the CA's certificate must carry (default: CA_ADDRESS's host)"},
    {.name = "AUTH_TOKEN",
     .kind = ENV_STRING,
     .def = XDS_DEFAULT_TOKEN_PATH " if it exists",
     .offset = OFF(auth_token),
     .help = "bearer token for the CA: a file (re-read for every request) or the token itself; the default "
             "file is used only when it exists"},
    {.name = "CLUSTER_ID",
     .kind = ENV_STRING,
     .def = "Kubernetes",
     .offset = OFF(cluster_id),
     .help = "this cluster's id, sent as clusterid metadata (ISTIO_META_CLUSTER_ID wins when set)"},
    {.name = "ZTUNNEL_WORKER_THREADS",
     .kind = ENV_CUSTOM,
     .def = "max(2, 25% of the CPUs)",
     .parse = parse_workers,
     .type = "int or percentage",
     .offset = OFF(worker_spec),
     .help = "worker threads: a count (0 = one per CPU) or a percentage of the CPUs (\"50%\")"},
    {.name = "ZTUNNEL_CPU_LIMIT",
     .kind = ENV_INT,
     .min = 1,
     .max = 1 << 20,
     .offset = OFF(cpu_limit),
     .help = "CPUs to assume for worker percentages (default: the CPUs this process may run on)"},
    {.name = "ZTUNNEL_RESOURCE_CPU_LIMIT",
     .kind = ENV_CUSTOM,
     .parse = parse_cpu_quantity,
     .type = "CPU quantity",
     .offset = OFF(resource_cpu_limit),
     .help = "the pod's CPU limit (Kubernetes quantity): the default worker count and the CPU count"},
    {.name = "ZTUNNEL_RESOURCE_CPU_REQUEST",
     .kind = ENV_CUSTOM,
     .parse = parse_cpu_quantity,
     .type = "CPU quantity",
     .offset = OFF(resource_cpu_request),
     .help = "the pod's CPU request: raises the default worker count"},
    {.name = "CONNECTION_TERMINATION_DEADLINE",
     .kind = ENV_DURATION,
     .def = "5s",
     .offset = OFF(termination_deadline_ms),
     .help = "on SIGTERM, how long open connections may finish before they are closed"},
    {.name = "TERMINATION_GRACE_PERIOD_SECONDS",
     .kind = ENV_INT,
     .min = 0,
     .max = INT64_MAX,
     .offset = OFF(termination_grace_s),
     .help = "the pod's grace period; without CONNECTION_TERMINATION_DEADLINE the deadline is it minus 5 s "
             "(minus 1 s when 10 s or less, at least 1 s)"},
    {.name = "POOL_UNUSED_RELEASE_TIMEOUT",
     .kind = ENV_DURATION,
     .def = "5m",
     .min = 1,
     .offset = OFF(pool_unused_release_ms),
     .help = "how long an idle pooled HBONE connection is kept"},
    {.name = "SECRET_TTL",
     .kind = ENV_DURATION,
     .def = "24h",
     /* Istio's CA client sends whole seconds, and istiod refuses more than 90 days (its default maximum). */
     .min = 1000,
     .max = 90LL * 24 * 3600 * 1000,
     .offset = OFF(secret_ttl_ms),
     .help = "requested lifetime of the workload certificate (1s to 90d); renewed at half its life"},
    {.name = "RUST_LOG",
     .kind = ENV_CUSTOM,
     .def = "info",
     .parse = parse_rust_log,
     .type = "log filter",
     .offset = OFF(rust_log),
     .help = "log filter: a level and target=level directives, e.g. info,access=off,ztunnel::proxy=debug"},
    {.name = "LOG_FORMAT",
     .kind = ENV_ENUM,
     .def = "plain",
     .choices = log_formats,
     .offset = OFF(log_format),
     .help = "plain (tab-separated, as Istio's ztunnel) or json; text is an older name for plain"},
    {.name = "ADMIN_PORT",
     .kind = ENV_INT,
     .def = "15000",
     .min = 0,
     .max = 65535,
     .offset = OFF(admin_port),
     .help = "zmesh: admin port on 127.0.0.1 (0 = any free port)"},
    {.name = "METRICS_PORT",
     .kind = ENV_INT,
     .def = "15020",
     .min = 0,
     .max = 65535,
     .offset = OFF(metrics_port),
     .help = "zmesh: Prometheus metrics port (0 = any free port)"},
    {.name = "READINESS_PORT",
     .kind = ENV_INT,
     .def = "15021",
     .min = 0,
     .max = 65535,
     .offset = OFF(readiness_port),
     .help = "zmesh: readiness port (0 = any free port)"},
    /* Istio's ztunnel settings (config.rs, lib.rs, xds/client.rs) zmesh does not implement yet. */
    UNSUPPORTED("FAKE_CA", "self-signed certificates"),
    UNSUPPORTED("LOCAL_XDS", "inline LocalConfig (use LOCAL_XDS_PATH)"),
    UNSUPPORTED("XDS_ON_DEMAND", "on-demand xDS"),
    UNSUPPORTED("PROXY_CONFIG", "ProxyConfig YAML"),
    UNSUPPORTED("ENABLE_PROXY", "disable the HBONE proxy"),
    UNSUPPORTED("NETWORK", "this node's network"),
    UNSUPPORTED("CLUSTER_DOMAIN", "cluster DNS domain"),
    UNSUPPORTED("PREFERED_SERVICE_NAMESPACE", "service namespace preferred in lookups"),
    UNSUPPORTED("PACKET_MARK", "mark on every packet"),
    UNSUPPORTED("KEEPALIVE_TIME", "TCP keepalive time (zmesh: Istio's default, 180 s)"),
    UNSUPPORTED("KEEPALIVE_INTERVAL", "TCP keepalive interval (zmesh: 180 s)"),
    UNSUPPORTED("KEEPALIVE_RETRIES", "TCP keepalive probes (zmesh: 9)"),
    UNSUPPORTED("KEEPALIVE_ENABLED", "TCP keepalive on/off (zmesh: on)"),
    UNSUPPORTED("USER_TIMEOUT_ENABLED", "TCP_USER_TIMEOUT"),
    UNSUPPORTED("INPOD_PORT_REUSE", "SO_REUSEPORT in pods (shared mode)"),
    UNSUPPORTED("POOL_MAX_STREAMS_PER_CONNECTION", "streams per pooled connection"),
    UNSUPPORTED("ENABLE_ORIG_SRC", "original source IP on outbound connections"),
    UNSUPPORTED("IPV6_ENABLED", "IPv6 listeners on/off"),
    UNSUPPORTED("HTTP2_STREAM_WINDOW_SIZE", "HTTP/2 stream window"),
    UNSUPPORTED("HTTP2_CONNECTION_WINDOW_SIZE", "HTTP/2 connection window"),
    UNSUPPORTED("HTTP2_FRAME_SIZE", "HTTP/2 frame size"),
    UNSUPPORTED("UNSTABLE_ENABLE_SOCKS5", "SOCKS5 listener"),
    UNSUPPORTED("CRL_PATH", "certificate revocation list"),
    UNSUPPORTED("LOCALHOST_APP_TUNNEL", "tunnel to localhost apps"),
    UNSUPPORTED("ENABLE_RESPONSE_BAGGAGE", "response baggage on/off (zmesh: always on)"),
    UNSUPPORTED("AUTHZ_POLICY_INFO_LOGGING", "authorization logs at info"),
    UNSUPPORTED("COMPLIANCE_POLICY", "TLS compliance policy (pqc)"),
    UNSUPPORTED("TLS12_ENABLED", "TLS 1.2 for HBONE"),
    UNSUPPORTED("SERVICE_ACCOUNT", "ztunnel's own service account (downward API)"),
    UNSUPPORTED("TRUST_DOMAIN", "ztunnel's own trust domain"),
};

/* Istio's prefixed variables: proxy metadata and extra headers for xDS and the CA. */
/* Istio's prefixed variables, used by the xDS client only. */
static const char *const xds_prefixes[] = {"ISTIO_META_", "ISTIO_METAJSON_", "XDS_HEADER_"};

const struct env_setting *zt_settings_table(size_t *n)
{
    *n = sizeof(table) / sizeof(table[0]);
    return table;
}

static int idx_of(const char *name)
{
    for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++)
        if (!strcmp(table[i].name, name)) return (int)i;
    return -1;
}

/* ceil() for positive values, without libm. */
static int64_t ceil_pos(double x)
{
    int64_t i = (int64_t)x;
    return (double)i < x ? i + 1 : i;
}

/* config.rs default_worker_threads and parse_worker_threads, with get_cpu_count's CPU count. */
static int worker_count(const struct zt_settings *s, int ncpu)
{
    int64_t cpus = s->resource_cpu_limit ? s->resource_cpu_limit : s->cpu_limit ? s->cpu_limit : ncpu;
    int64_t n;
    if (s->worker_spec.percent > 0) {
        n = ceil_pos((double)cpus * s->worker_spec.percent / 100.0);
    } else if (s->worker_spec.percent == 0) {
        n = s->worker_spec.count ? s->worker_spec.count : cpus; /* ZTUNNEL_WORKER_THREADS=0: every CPU */
    } else if (s->resource_cpu_limit) {
        n = s->resource_cpu_limit > s->resource_cpu_request ? s->resource_cpu_limit : s->resource_cpu_request;
    } else {
        n = (cpus * ZT_WORKER_CPU_FRACTION_PCT + 99) / 100;
        if (n < s->resource_cpu_request) n = s->resource_cpu_request;
        if (n < ZT_DEFAULT_WORKER_THREADS) n = ZT_DEFAULT_WORKER_THREADS;
    }
    if (n < 1) n = 1;
    return (int)n;
}

int zt_settings_parse(struct zt_settings *s, env_lookup_fn lookup, char *const *envp, int ncpu,
                      struct env_diag *errors, struct env_diag *warnings)
{
    size_t n = sizeof(table) / sizeof(table[0]);
    bool set[sizeof(table) / sizeof(table[0])];
    *s = (struct zt_settings){
        .proxy_mode = ZT_MODE_SHARED,
        .log_format = ZT_LOG_PLAIN,
        .termination_deadline_ms = ZT_DEFAULT_TERMINATION_DEADLINE_MS,
        .termination_grace_s = -1,
        .pool_unused_release_ms = ZT_DEFAULT_POOL_UNUSED_RELEASE_MS,
        .secret_ttl_ms = ZT_DEFAULT_SECRET_TTL_MS,
        .admin_port = 15000,
        .metrics_port = 15020,
        .readiness_port = 15021,
        .ca_root_ca = XDS_DEFAULT_ROOT_CA,
        .xds_root_ca = XDS_DEFAULT_ROOT_CA,
        .cluster_id = "Kubernetes",
        .inpod_uds = ZDS_DEFAULT_PATH,
        .worker_spec = {.count = 0, .percent = -1}, /* unset: the default count */
    };
    int rc = env_parse_table(table, n, s, lookup, set, errors, warnings);
    /* Said out loud when they cannot take effect. */
    bool xds = s->xds_address && *s->xds_address;
    for (size_t p = 0; !xds && envp && p < sizeof(xds_prefixes) / sizeof(xds_prefixes[0]); p++)
        for (char *const *e = envp; *e; e++)
            if (!strncmp(*e, xds_prefixes[p], strlen(xds_prefixes[p])) &&
                strncmp(*e, "ISTIO_META_CLUSTER_ID=", 22) != 0)
                env_diag_add(warnings, "%.*s: used by the xDS client only, and XDS_ADDRESS is not set; ignored",
                             (int)strcspn(*e, "="), *e);
    /* config.rs: ISTIO_META_CLUSTER_ID, else CLUSTER_ID, else Kubernetes. */
    const char *meta_cluster = lookup("ISTIO_META_CLUSTER_ID");
    if (meta_cluster && *meta_cluster) s->cluster_id = meta_cluster;
    /* One CA: a local one (zmesh's dedicated-mode default) or a remote one; Istio has no local CA and defaults
     * CA_ADDRESS to istiod, which outside Kubernetes is https://localhost:15012 -- zmesh asks instead. */
    bool file = s->local_xds_path && *s->local_xds_path;
    if (file == xds) {
        env_diag_add(errors, file ? "LOCAL_XDS_PATH and XDS_ADDRESS are both set: choose one source of config"
                                  : "no config: set XDS_ADDRESS (an xDS server such as zmeshd or istiod) or "
                                    "LOCAL_XDS_PATH (a LocalConfig file)");
        rc = -EINVAL;
    }
    bool local = s->local_ca_dir && *s->local_ca_dir, remote = s->ca_address && *s->ca_address;
    if (local == remote) {
        env_diag_add(errors, local ? "LOCAL_CA_DIR and CA_ADDRESS are both set: choose one CA"
                                   : "no CA: set CA_ADDRESS (a remote CA such as zmeshd or istiod) or LOCAL_CA_DIR "
                                     "(a local CA directory)");
        rc = -EINVAL;
    }
    /* Dedicated mode serves the one pod PROXY_WORKLOAD_INFO names; shared mode learns its pods over ZDS
     * (Istio's config.rs reads PROXY_WORKLOAD_INFO only in dedicated mode). */
    bool wi = set[idx_of("PROXY_WORKLOAD_INFO")];
    if (s->proxy_mode == ZT_MODE_DEDICATED && !wi) {
        env_diag_add(errors, "PROXY_WORKLOAD_INFO must be set with PROXY_MODE=dedicated: the pod this ztunnel serves");
        rc = -EINVAL;
    } else if (s->proxy_mode == ZT_MODE_SHARED && wi) {
        env_diag_add(warnings, "PROXY_WORKLOAD_INFO is used in dedicated mode only; PROXY_MODE=shared serves "
                               "the pods the node agent hands over INPOD_UDS, so it is ignored");
    }
    if (s->proxy_mode == ZT_MODE_SHARED && !*s->inpod_uds) {
        env_diag_add(errors, "INPOD_UDS is empty: shared mode needs the node agent's socket");
        rc = -EINVAL;
    }
    /* CONNECTION_TERMINATION_DEADLINE wins; else the grace period minus a margin for the forceful close
     * before Kubernetes' SIGKILL (config.rs self_termination_deadline). Saturating: 0 gives 1 s. */
    if (!set[idx_of("CONNECTION_TERMINATION_DEADLINE")] && s->termination_grace_s >= 0) {
        int64_t g = s->termination_grace_s, margin = g > 10 ? 5 : 1;
        int64_t secs = g > margin ? g - margin : 0;
        if (secs < 1) secs = 1;
        s->termination_deadline_ms = (uint64_t)secs * 1000;
    }
    s->rust_log_bare_target = false;
    if (s->rust_log) {
        bool bare = false;
        (void)log_filter_check(s->rust_log, &bare, NULL, 0);
        s->rust_log_bare_target = bare;
        if (bare)
            env_diag_add(
                warnings,
                "RUST_LOG=%s names a target without a level, which enables that target at trace (and "
                "nothing else unless a default level is given), as in Istio's ztunnel",
                s->rust_log);
    }
    s->n_workers = worker_count(s, ncpu > 0 ? ncpu : 1);
    if (s->n_workers > ZT_MAX_WORKERS) {
        /* Only a computed count can get here (an explicit one is range-checked): run the most we can. */
        env_diag_add(warnings, "%d worker threads computed from the CPU count; zmesh runs at most %d",
                     s->n_workers, ZT_MAX_WORKERS);
        s->n_workers = ZT_MAX_WORKERS;
    }
    return rc;
}

void zt_settings_help(FILE *f, const char *version)
{
    size_t n = sizeof(table) / sizeof(table[0]);
    fprintf(f,
            "zmesh ztunnel %s: the L4 ambient-mesh proxy (Istio ztunnel's protocols and settings)\n\n"
            "Usage: ztunnel [proxy|version|help|--version|--help]\n\n"
            "Commands:\n"
            "  proxy (default)      start the proxy\n"
            "  version, --version   print the version\n"
            "  help, --help         print this help\n\n"
            "Environment (Istio's syntax: durations such as 500ms, 5s, 1m30s, 1h, a bare number is seconds; "
            "bools are true or false):\n",
            version);
    env_print_help(f, table, n);
    fprintf(f, "  CA_HEADER_<NAME>=value\n      extra metadata on every CA request (name lower-cased)\n");
    fprintf(f, "  XDS_HEADER_<NAME>=value\n      extra metadata on the xDS stream (name lower-cased)\n");
    fprintf(f, "  ISTIO_META_<KEY>=value, ISTIO_METAJSON_<KEY>=json\n      the xDS node's metadata (KEY as "
               "written; JSON values must parse)\n");
}
