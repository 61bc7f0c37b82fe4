/* zmeshd: the control plane program (istiod's counterpart). Commands:
 *   zmeshd [serve] --manifests DIR --state-dir DIR [...]   the daemon (daemon.h): CA, manifests, watch
 *   zmeshd check --manifests DIR                            load once, print findings, exit 1 on an error
 *   zmeshd token --sa NS/SA --state-dir DIR [...]           print a service-account token for the CA
 * Settings come from flags, or from the environment variables istiod reads for the same thing; a flag wins.
 * Exit status: 0, 1 when zmeshd fails (or check finds an error), 2 for a usage or setting error.
 *
 * This file lives in its own directory so that the library's wildcard (src/zmeshd/\*.c) leaves it out of
 * libzmesh.a and of the fuzz targets, which must not see a second main(). */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "core/env.h"
#include "core/log.h"
#include "core/version.h"
#include "zmeshd/daemon.h"
#include "zmeshd/debug.h"
#include "zmeshd/jwks.h"
#include "zmeshd/request_authentication.h"
#include "zmeshd/server.h"
#include "zmeshd/xds.h"

#define EXIT_USAGE 2
#define ERR_MAX 1024

/* ---- settings from the environment ---- */

struct env_values {
    const char *cluster_id, *trust_domain, *root_ca_dir, *trusted, *rust_log, *jwks_extra_ca;
    uint64_t cert_ttl_ms, max_cert_ttl_ms, debounce_after_ms, debounce_max_ms, jwks_refresh_ms;
    int log_format;
};

static const char *const log_formats[] = {"plain", "json", NULL};

#define OFF(f) offsetof(struct env_values, f)
static const struct env_setting env_table[] = {
    {.name = "CLUSTER_ID",
     .kind = ENV_STRING,
     .def = K8S_DEFAULT_CLUSTER_ID,
     .offset = OFF(cluster_id),
     .help = "the cluster's name: workload uids and cluster_id (istiod's CLUSTER_ID; flag --cluster-id)"},
    {.name = "TRUST_DOMAIN",
     .kind = ENV_STRING,
     .def = K8S_DEFAULT_TRUST_DOMAIN,
     .offset = OFF(trust_domain),
     .help = "SPIFFE trust domain of workloads and the CA root's organization (istiod reads meshConfig.trustDomain; "
             "this is pilot-agent's name; flag --trust-domain)"},
    {.name = "ROOT_CA_DIR",
     .kind = ENV_STRING,
     .offset = OFF(root_ca_dir),
     .help = "plug-in CA directory (ca-cert.pem, ca-key.pem, cert-chain.pem, root-cert.pem) as istiod's cacerts; "
             "when set the files must be there (istiod falls back to a self-signed root, zmeshd refuses); unset: "
             "a self-signed root in the state directory (flag --plugin-ca)"},
    {.name = "CA_TRUSTED_NODE_ACCOUNTS",
     .kind = ENV_STRING,
     .def = CA_TRUSTED_NODE_ACCOUNTS_DEFAULT,
     .offset = OFF(trusted),
     .help = "ns/sa,... accounts that may have certificates signed for pods on their node (node proxies); "
             "\"\" allows none (istiod's default is \"\"; Istio's chart sets istio-system/ztunnel)"},
    {.name = "DEFAULT_WORKLOAD_CERT_TTL",
     .kind = ENV_DURATION,
     .def = "24h",
     .min = 1000,
     .offset = OFF(cert_ttl_ms),
     .help = "lifetime of a workload certificate whose request asks for none"},
    {.name = "MAX_WORKLOAD_CERT_TTL",
     .kind = ENV_DURATION,
     .def = "90d",
     .min = 1000,
     .offset = OFF(max_cert_ttl_ms),
     .help = "longest workload certificate lifetime signed"},
    {.name = "PILOT_DEBOUNCE_AFTER",
     .kind = ENV_DURATION,
     .def = "100ms",
     .min = 1,
     .offset = OFF(debounce_after_ms),
     .help = "quiet time after the last manifest change before reloading"},
    {.name = "PILOT_DEBOUNCE_MAX",
     .kind = ENV_DURATION,
     .def = "10s",
     .min = 1,
     .offset = OFF(debounce_max_ms),
     .help = "longest a reload waits while changes keep coming"},
    {.name = "PILOT_JWT_PUB_KEY_REFRESH_INTERVAL",
     .kind = ENV_DURATION,
     .def = "20m",
     .min = 1000,
     .offset = OFF(jwks_refresh_ms),
     .help = "how often a RequestAuthentication jwksUri document is fetched again (istiod's; whole seconds)"},
    {.name = "JWKS_RESOLVER_EXTRA_ROOT_CA",
     .kind = ENV_STRING,
     .offset = OFF(jwks_extra_ca),
     .help = "PEM file of root certificates trusted for HTTPS jwksUri fetches besides the system's (zmesh's own; "
             "istiod reads its cacerts' extra.pem, which zmeshd reads too from the plug-in CA directory when "
             "this is unset)"},
    {.name = "RUST_LOG",
     .kind = ENV_STRING,
     .def = "info",
     .offset = OFF(rust_log),
     .help = "log filter, as every zmesh program: \"info\", \"info,zmeshd::watch=debug\" (zmesh's own)"},
    {.name = "LOG_FORMAT",
     .kind = ENV_ENUM,
     .def = "plain",
     .choices = log_formats,
     .offset = OFF(log_format),
     .help = "plain or json log lines (zmesh's own)"},
};
#define N_ENV (sizeof(env_table) / sizeof(env_table[0]))

static const char *env_lookup(const char *name)
{
    return getenv(name);
}

/* Parses the environment into *v and starts logging. Returns 0, or EXIT_USAGE after printing every error. */
static int load_env(struct env_values *v)
{
    static struct env_diag errors, warnings;
    bool set[N_ENV] = {0};
    *v = (struct env_values){0};
    (void)env_parse_table(env_table, N_ENV, v, env_lookup, set, &errors, &warnings);
    char why[256];
    if (v->rust_log && log_filter_check(v->rust_log, NULL, why, sizeof(why)) < 0) {
        env_diag_add(&errors, "invalid env var RUST_LOG=%s (%s)", v->rust_log, why);
        v->rust_log = NULL;
    }
    if (log_init(v->rust_log, v->log_format == 1) < 0) log_init(NULL, false);
    env_diag_log(&warnings, LOG_WARN, "zmeshd");
    if (errors.n) {
        fputs(errors.buf, stderr);
        fprintf(stderr, "zmeshd: %u setting error%s; see zmeshd --help\n", errors.n, errors.n == 1 ? "" : "s");
        return EXIT_USAGE;
    }
    /* Unset variables stay 0 or NULL: the daemon applies the defaults the table shows. */
    return 0;
}

/* ---- help ---- */

static const char usage[] =
    "zmeshd %s: the zmesh control plane (istiod's counterpart): Kubernetes manifests to workloads,\n"
    "services and policies for ztunnel, and the CA that signs workload certificates.\n"
    "\n"
    "Usage:\n"
    "  zmeshd [serve] --manifests DIR --state-dir DIR [flags]   run the daemon\n"
    "  zmeshd check --manifests DIR [flags]                     load once, print findings and counts;\n"
    "                                                           exit 1 when a finding is an error\n"
    "  zmeshd token --sa NS/SA --state-dir DIR [flags]          print a service-account token for the CA\n"
    "  zmeshd version | --version                               print the version\n"
    "  zmeshd help | --help                                     print this help\n"
    "\n"
    "Flags of serve (and check, for the conversion):\n"
    "      --manifests DIR     directory of Kubernetes YAML manifests (*.yaml, *.yml, *.json), watched\n"
    "      --state-dir DIR     zmeshd's own files: the CA (ca-cert.pem, ca-key.pem, root-cert.pem) unless\n"
    "                          --plugin-ca, and the token signing key (" ZMESHD_TOKEN_KEY_FILE ")\n"
    "      --listen ADDR:PORT  address for xDS and the CA (default " ZMESHD_DEFAULT_LISTEN ", istiod's 15012)\n"
    "      --debug-listen ADDR:PORT  debug endpoints (/debug/syncz, /metrics, /ready; default\n"
    "                          " ZMESHD_DEFAULT_DEBUG_LISTEN ", istiod's monitoring port); port 0: any free port\n"
    "      --cluster-id ID     the cluster's name (env CLUSTER_ID, default " K8S_DEFAULT_CLUSTER_ID ")\n"
    "      --trust-domain TD   the mesh's trust domain (env TRUST_DOMAIN, default " K8S_DEFAULT_TRUST_DOMAIN ")\n"
    "      --domain SUFFIX     service domain suffix (default " K8S_DEFAULT_DOMAIN_SUFFIX ")\n"
    "      --plugin-ca DIR     sign with Istio's plug-in CA files in DIR (env ROOT_CA_DIR)\n"
    "\n"
    "Flags of token:\n"
    "      --sa NS/SA          the service account the token is for (required)\n"
    "      --node NAME         the node the bearer runs on (a node proxy needs it to impersonate)\n"
    "      --pod NAME          the pod the token is bound to\n"
    "      --pod-uid UID       that pod's uid\n"
    "      --ttl DURATION      lifetime (default 1h; 30m, 1h30m, a bare number is seconds)\n"
    "      --state-dir DIR     where the token key is (created on first use)\n"
    "\n"
    "Signals: SIGTERM and SIGINT stop the daemon; SIGHUP reloads the manifests now.\n"
    "\n"
    "Environment (Istio's syntax: durations such as 100ms, 10s, 24h, 90d):\n";

static void print_help(FILE *f)
{
    fprintf(f, usage, ZMESH_VERSION);
    env_print_help(f, env_table, N_ENV);
}

/* Istio's BuildInfo layout, as ztunnel prints it. */
static void print_version(void)
{
    printf("version.BuildInfo{Version:\"%s\", GitRevision:\"%s\", BuildStatus:\"%s\"}\n", ZMESH_VERSION,
           ZMESH_GIT_REVISION, ZMESH_BUILD_STATUS);
}

/* ---- flags ---- */

enum opt_id {
    OPT_MANIFESTS = 256,
    OPT_STATE_DIR,
    OPT_LISTEN,
    OPT_DEBUG_LISTEN,
    OPT_CLUSTER_ID,
    OPT_TRUST_DOMAIN,
    OPT_DOMAIN,
    OPT_PLUGIN_CA,
    OPT_SA,
    OPT_NODE,
    OPT_POD,
    OPT_POD_UID,
    OPT_TTL,
    OPT_HELP,
};

struct flags {
    const char *manifests, *state_dir, *listen, *debug_listen, *cluster_id, *trust_domain, *domain, *plugin_ca;
    const char *sa, *node, *pod, *pod_uid, *ttl;
};

static const struct option serve_opts[] = {
    {"manifests", required_argument, NULL, OPT_MANIFESTS}, {"state-dir", required_argument, NULL, OPT_STATE_DIR},
    {"listen", required_argument, NULL, OPT_LISTEN},       {"cluster-id", required_argument, NULL, OPT_CLUSTER_ID},
    {"debug-listen", required_argument, NULL, OPT_DEBUG_LISTEN},
    {"trust-domain", required_argument, NULL, OPT_TRUST_DOMAIN},
    {"domain", required_argument, NULL, OPT_DOMAIN},       {"plugin-ca", required_argument, NULL, OPT_PLUGIN_CA},
    {"help", no_argument, NULL, OPT_HELP},                 {NULL, 0, NULL, 0},
};
static const struct option check_opts[] = {
    {"manifests", required_argument, NULL, OPT_MANIFESTS}, {"cluster-id", required_argument, NULL, OPT_CLUSTER_ID},
    {"trust-domain", required_argument, NULL, OPT_TRUST_DOMAIN},
    {"domain", required_argument, NULL, OPT_DOMAIN},       {"help", no_argument, NULL, OPT_HELP},
    {NULL, 0, NULL, 0},
};
static const struct option token_opts[] = {
    {"sa", required_argument, NULL, OPT_SA},           {"node", required_argument, NULL, OPT_NODE},
    {"pod", required_argument, NULL, OPT_POD},         {"pod-uid", required_argument, NULL, OPT_POD_UID},
    {"ttl", required_argument, NULL, OPT_TTL},         {"state-dir", required_argument, NULL, OPT_STATE_DIR},
    {"help", no_argument, NULL, OPT_HELP},             {NULL, 0, NULL, 0},
};

/* Parses argv[first..] with opts into *f. Returns 0, 1 when --help was printed, or EXIT_USAGE after a message
 * naming the bad argument. */
static int parse_flags(const char *cmd, int argc, char **argv, int first, const struct option *opts,
                       struct flags *f)
{
    optind = first;
    opterr = 0; /* our messages name the command */
    int c, idx;
    while ((c = getopt_long(argc, argv, ":", opts, &idx)) != -1) {
        const char *v = optarg;
        switch (c) {
        case OPT_MANIFESTS: f->manifests = v; break;
        case OPT_STATE_DIR: f->state_dir = v; break;
        case OPT_LISTEN: f->listen = v; break;
        case OPT_DEBUG_LISTEN: f->debug_listen = v; break;
        case OPT_CLUSTER_ID: f->cluster_id = v; break;
        case OPT_TRUST_DOMAIN: f->trust_domain = v; break;
        case OPT_DOMAIN: f->domain = v; break;
        case OPT_PLUGIN_CA: f->plugin_ca = v; break;
        case OPT_SA: f->sa = v; break;
        case OPT_NODE: f->node = v; break;
        case OPT_POD: f->pod = v; break;
        case OPT_POD_UID: f->pod_uid = v; break;
        case OPT_TTL: f->ttl = v; break;
        case OPT_HELP: print_help(stdout); return 1;
        case ':':
            fprintf(stderr, "zmeshd %s: %s needs a value (see zmeshd --help)\n", cmd, argv[optind - 1]);
            return EXIT_USAGE;
        default:
            fprintf(stderr, "zmeshd %s: unknown option %s (see zmeshd --help)\n", cmd, argv[optind - 1]);
            return EXIT_USAGE;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "zmeshd %s: unexpected argument %s (see zmeshd --help)\n", cmd, argv[optind]);
        return EXIT_USAGE;
    }
    return 0;
}

static struct k8s_options k8s_opts(const struct flags *f, const struct env_values *e)
{
    return (struct k8s_options){.cluster_id = f->cluster_id ? f->cluster_id : e->cluster_id,
                                .trust_domain = f->trust_domain ? f->trust_domain : e->trust_domain,
                                .domain_suffix = f->domain};
}

/* ---- serve ---- */

struct serve {
    struct loop *loop;
    struct zmeshd *d;
    struct zmeshd_server *srv;
    struct zmeshd_xds *xds;
    struct zmeshd_debug *debug;
    struct io sig_io;
    int exit_code;
};

static void sig_cb(struct io *io, uint32_t ev)
{
    struct serve *s = container_of(io, struct serve, sig_io);
    struct signalfd_siginfo si;
    (void)ev;
    while (read(io->fd, &si, sizeof(si)) == sizeof(si)) {
        if (si.ssi_signo == SIGHUP) {
            LOG_I("zmeshd", "received SIGHUP: reloading the manifests");
            (void)zmeshd_reload(s->d, 1);
            continue;
        }
        LOG_I("zmeshd", "received %s, exiting", si.ssi_signo == SIGTERM ? "SIGTERM" : "SIGINT");
        loop_stop(s->loop);
    }
}

/* The extra roots for HTTPS jwksUri fetches (src/zmeshd/jwks.h): JWKS_RESOLVER_EXTRA_ROOT_CA, else the plug-in
 * CA directory's extra.pem when there is one (istiod's /cacerts/extra.pem). Returns 0, or -1 after printing
 * why. */
static int jwks_extra_ca(const struct env_values *e, const char *plugin_ca)
{
    char path[1024], err[1200];
    const char *p = e->jwks_extra_ca;
    if ((!p || !*p) && plugin_ca && *plugin_ca) {
        snprintf(path, sizeof(path), "%s/extra.pem", plugin_ca);
        if (access(path, F_OK) == 0) p = path;
    }
    if (!p || !*p) return 0;
    if (zmeshd_jwks_set_extra_ca(p, err, sizeof(err)) < 0) {
        fprintf(stderr, "zmeshd: %s %s\n",
                p == path ? "the plug-in CA's extra.pem:" : "JWKS_RESOLVER_EXTRA_ROOT_CA:", err);
        return -1;
    }
    return 0;
}

static int cmd_serve(const struct flags *f, const struct env_values *e)
{
    char err[ERR_MAX];
    struct serve s = {.sig_io.fd = -1, .exit_code = 1};
    if (!f->manifests || !f->state_dir) {
        fprintf(stderr, "zmeshd: %s is required (see zmeshd --help)\n", !f->manifests ? "--manifests" : "--state-dir");
        return EXIT_USAGE;
    }
    struct zmeshd_config cfg = {
        .manifests = f->manifests,
        .state_dir = f->state_dir,
        .plugin_ca = f->plugin_ca ? f->plugin_ca : e->root_ca_dir,
        .listen = f->listen,
        .k8s = k8s_opts(f, e),
        .trusted_node_accounts = e->trusted,
        .cert_ttl_s = (long)(e->cert_ttl_ms / 1000),
        .max_cert_ttl_s = (long)(e->max_cert_ttl_ms / 1000),
        .debounce_after_ms = e->debounce_after_ms,
        .debounce_max_ms = e->debounce_max_ms,
    };
    if (e->jwks_refresh_ms) zmeshd_jwks_set_refresh_s((unsigned)(e->jwks_refresh_ms / 1000));
    if (jwks_extra_ca(e, cfg.plugin_ca) < 0) return EXIT_USAGE;
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGHUP);
    sigprocmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
    LOG_I("zmeshd", "version: zmesh zmeshd %s", ZMESH_VERSION);
    if (!(s.loop = loop_new()) || (s.sig_io = (struct io){.fd = signalfd(-1, &sigs, SFD_NONBLOCK | SFD_CLOEXEC),
                                                         .cb = sig_cb})
                                          .fd < 0 ||
        loop_io_add(s.loop, &s.sig_io, EPOLLIN) < 0) {
        LOG_E("zmeshd", "cannot set up the event loop: %s", strerror(errno));
        goto out;
    }
    if (zmeshd_new(s.loop, &cfg, &s.d, err, sizeof(err)) < 0) {
        log_kv(LOG_ERROR, "zmeshd", "cannot start", "error", err, NULL);
        goto out;
    }
    if (cfg.plugin_ca)
        log_kv(LOG_INFO, "zmeshd", "CA: signing with the plug-in CA", "dir", cfg.plugin_ca, NULL);
    else
        log_kv(LOG_INFO, "zmeshd", "CA: signing with the self-signed root of the state directory", "dir",
               cfg.state_dir, NULL);
    char key[WATCH_PATH_MAX];
    (void)zmeshd_token_key_path(cfg.state_dir, key, sizeof(key));
    log_kv(LOG_INFO, "zmeshd", "token signing key ready", "path", key, NULL);
    if (zmeshd_start(s.d, err, sizeof(err)) < 0) {
        log_kv(LOG_ERROR, "zmeshd", "cannot start", "error", err, NULL);
        goto out;
    }
    if (zmeshd_server_new(s.loop, s.d, &s.srv, err, sizeof(err)) < 0) {
        log_kv(LOG_ERROR, "zmeshd", "cannot start", "error", err, NULL);
        goto out;
    }
    if (zmeshd_xds_new(s.d, s.srv, &s.xds, err, sizeof(err)) < 0) {
        log_kv(LOG_ERROR, "zmeshd", "cannot start", "error", err, NULL);
        goto out;
    }
    char port[8];
    snprintf(port, sizeof(port), "%u", zmeshd_server_port(s.srv));
    log_kv(LOG_INFO, "zmeshd", "serving the CA (IstioCertificateService) and delta ADS over TLS", "listen",
           zmeshd_listen(s.d), "port", port, NULL);
    /* The debug port as istiod's monitoring port: a flag that cannot be served is fatal; the default port
     * taken (another zmeshd on this host) costs only the debug endpoints, said loudly. */
    const char *dbg_addr = f->debug_listen ? f->debug_listen : ZMESHD_DEFAULT_DEBUG_LISTEN;
    const char *cluster = cfg.k8s.cluster_id ? cfg.k8s.cluster_id : K8S_DEFAULT_CLUSTER_ID;
    if (zmeshd_debug_new(s.loop, s.xds, dbg_addr, getenv("POD_NAME"), cluster, &s.debug, err, sizeof(err)) < 0) {
        if (f->debug_listen) {
            log_kv(LOG_ERROR, "zmeshd", "cannot start", "error", err, NULL);
            goto out;
        }
        log_kv(LOG_WARN, "zmeshd", "serving without the debug endpoints (pass --debug-listen ADDR:PORT)",
               "error", err, NULL);
    } else {
        zmeshd_debug_set_daemon(s.debug, s.d);
        snprintf(port, sizeof(port), "%u", zmeshd_debug_port(s.debug));
        log_kv(LOG_INFO, "zmeshd", "serving the debug endpoints over HTTP", "listen", dbg_addr, "port", port,
               NULL);
    }
    loop_run(s.loop);
    s.exit_code = 0;
out:
    zmeshd_debug_free(s.debug);
    zmeshd_server_free(s.srv);
    if (s.loop) loop_run_tasks(s.loop); /* the connections closed above are freed from tasks */
    zmeshd_xds_free(s.xds);
    zmeshd_free(s.d);
    if (s.loop) loop_run_tasks(s.loop);
    if (s.sig_io.fd >= 0) close(s.sig_io.fd);
    loop_free(s.loop);
    return s.exit_code;
}

/* ---- check ---- */

static int cmd_check(const struct flags *f, const struct env_values *e)
{
    char err[ERR_MAX];
    if (!f->manifests) {
        fprintf(stderr, "zmeshd check: --manifests is required (see zmeshd --help)\n");
        return EXIT_USAGE;
    }
    struct k8s_options o = k8s_opts(f, e);
    int rc = zmeshd_check(f->manifests, &o, stdout, err, sizeof(err));
    if (rc == 2) {
        fprintf(stderr, "zmeshd check: %s\n", err);
        return 1;
    }
    return rc;
}

/* ---- token ---- */

static int cmd_token(const struct flags *f)
{
    char err[ERR_MAX], ns[TOKEN_NAME_MAX], sa[TOKEN_NAME_MAX];
    long ttl_s = ZMESHD_TOKEN_DEFAULT_TTL_S;
    if (!f->sa || !f->state_dir) {
        fprintf(stderr, "zmeshd token: %s is required (see zmeshd --help)\n", !f->sa ? "--sa" : "--state-dir");
        return EXIT_USAGE;
    }
    const char *slash = strchr(f->sa, '/');
    if (!slash || slash == f->sa || !slash[1] || strchr(slash + 1, '/') ||
        (size_t)(slash - f->sa) >= sizeof(ns) || strlen(slash + 1) >= sizeof(sa)) {
        fprintf(stderr, "zmeshd token: --sa \"%s\": expected <namespace>/<service account>\n", f->sa);
        return EXIT_USAGE;
    }
    snprintf(ns, sizeof(ns), "%.*s", (int)(slash - f->sa), f->sa);
    snprintf(sa, sizeof(sa), "%s", slash + 1);
    if (f->ttl) {
        uint64_t ms;
        int rc = duration_parse_ms(f->ttl, &ms);
        if (rc < 0 || ms < 1000 || ms / 1000 > (uint64_t)TOKEN_MAX_TTL_S) {
            fprintf(stderr, "zmeshd token: --ttl \"%s\": %s\n", f->ttl,
                    rc < 0 ? "not a duration (e.g. 30m, 1h, 3600)"
                           : "must be between 1s and 366d");
            return EXIT_USAGE;
        }
        ttl_s = (long)(ms / 1000);
    }
    struct token_subject subj = {.ns = ns, .sa = sa, .node = f->node, .pod = f->pod, .pod_uid = f->pod_uid};
    char *tok = NULL;
    if (zmeshd_token_mint(f->state_dir, &subj, ttl_s, &tok, err, sizeof(err)) < 0) {
        fprintf(stderr, "zmeshd token: %s\n", err);
        return 1;
    }
    printf("%s\n", tok);
    free(tok);
    return 0;
}

int main(int argc, char **argv)
{
    const char *cmd = "serve";
    int first = 1;
    if (argc > 1 && argv[1][0] != '-') {
        cmd = argv[1];
        first = 2;
    }
    if (!strcmp(cmd, "version") || (argc > 1 && !strcmp(argv[1], "--version"))) {
        print_version();
        return 0;
    }
    if (!strcmp(cmd, "help") || (argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")))) {
        print_help(stdout);
        return 0;
    }
    const struct option *opts = !strcmp(cmd, "serve")   ? serve_opts
                                : !strcmp(cmd, "check") ? check_opts
                                : !strcmp(cmd, "token") ? token_opts
                                                        : NULL;
    if (!opts) {
        fprintf(stderr, "zmeshd: unknown command %s (commands: serve, check, token, version, help)\n", cmd);
        return EXIT_USAGE;
    }
    struct flags f = {0};
    int rc = parse_flags(cmd, argc, argv, first, opts, &f);
    if (rc) return rc == 1 ? 0 : rc;
    struct env_values e;
    if ((rc = load_env(&e))) return rc;
    if (!strcmp(cmd, "check")) return cmd_check(&f, &e);
    if (!strcmp(cmd, "token")) return cmd_token(&f);
    return cmd_serve(&f, &e);
}
