/* zmesh-cni: the CNI plugin program and, as `zmesh-cni agent`, the node agent (src/cni/README.md).
 *
 * The plugin: the container runtime runs it with the spec's CNI_* environment and the network configuration
 * on stdin; the result or error goes to stdout, warnings to stderr. Exit status 0 on success, 1 after printing
 * an error object. The runtime passes no arguments, so argv[1] == "agent" cannot be a runtime's call.
 *
 * The agent: flags (usage below), runs until SIGTERM or SIGINT; SIGHUP re-reads the enrolment file. Exit
 * status 0 after a signal, 1 when it cannot start, 2 for a usage error.
 *
 * This file lives in its own directory so that the library's wildcard (src/cni/\*.c) leaves it out of
 * libzmesh.a and of the fuzz targets, which must not see a second main(). */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "cni/agent.h"
#include "cni/plugin.h"
#include "cni/zds_server.h"
#include "core/log.h"
#include "xds/enrol_client.h"

#define EXIT_USAGE 2

static int plugin_main(void)
{
    struct cni_env env = {
        .command = getenv("CNI_COMMAND"),
        .container_id = getenv("CNI_CONTAINERID"),
        .netns = getenv("CNI_NETNS"),
        .ifname = getenv("CNI_IFNAME"),
        .args = getenv("CNI_ARGS"),
        .path = getenv("CNI_PATH"),
    };
    /* One byte over the bound tells "too long" from "exactly the bound"; cni_conf_parse refuses it. */
    size_t cap = CNI_STDIN_MAX + 1, len = 0;
    char *buf = malloc(cap);
    if (!buf) return 1;
    while (len < cap) {
        ssize_t n = read(STDIN_FILENO, buf + len, cap - len);
        if (n == 0) break;
        if (n < 0) {
            if (errno == EINTR) continue;
            struct cni_err err = {0};
            cni_fail(&err, CNI_ERR_IO, strerror(errno),
                     "failed to read the network configuration from stdin");
            char *s = cni_error_json(&err, NULL);
            if (s) printf("%s\n", s);
            free(s);
            free(buf);
            return 1;
        }
        len += (size_t)n;
    }
    int status = cni_run(&env, buf, len, stdout, stderr);
    free(buf);
    return status;
}

/* ---- the node agent ---- */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: zmesh-cni agent [flags]\n"
            "  --plugin-socket PATH    the CNI plugin's socket (default " AGENT_DEFAULT_PLUGIN_SOCKET ")\n"
            "  --zds-socket PATH       ztunnel's ZDS socket (default " ZDS_SERVER_DEFAULT_PATH ")\n"
            "  --state-dir DIR         where the sandbox state is kept (default " AGENT_DEFAULT_STATE_DIR ")\n"
            "  --nftables              in-pod rules with nft (default: iptables, or nft when iptables-restore\n"
            "                          is missing)\n"
            "  --enrolment-file FILE   the static enrolment source: a JSON array of {name, namespace,\n"
            "                          service_account, ambient}; re-read when it changes and on SIGHUP\n"
            "  --node-name NAME        this node (default $NODE_NAME); entries of other nodes are ignored\n"
            "  --xds-address ADDR      zmeshd (https://host:15012): enrolment from its PodEnrolment resources,\n"
            "                          live (the other source, instead of --enrolment-file)\n"
            "  --xds-root-ca FILE      roots that sign zmeshd's serving certificate\n"
            "  --xds-hostname NAME     the name on zmeshd's certificate (default istiod.istio-system.svc)\n"
            "  --token-file FILE       the agent's service-account token (istio-system/istio-cni), re-read\n"
            "                          for every stream\n"
            "Environment: RUST_LOG (log filter, default info), LOG_FORMAT=json.\n");
}

struct agent_app {
    struct loop *l;
    struct agent *agent;
    struct io sig;
    bool have_file;
    struct enrol_client *enrol; /* --xds-address */
};

/* zmeshd's PodEnrolment set, whole after every response: the agent reconciles against it. */
static void enrol_update(void *ud, const struct enrol_pod *pods, size_t n)
{
    struct agent_app *app = ud;
    struct agent_enrolment *v = n ? calloc(n, sizeof(*v)) : NULL;
    if (n && !v) {
        log_kv(LOG_ERROR, "cni::agent", "out of memory taking zmeshd's enrolment; the previous one stays", NULL);
        return;
    }
    for (size_t i = 0; i < n; i++)
        v[i] = (struct agent_enrolment){.uid = pods[i].uid,
                                        .name = pods[i].name,
                                        .namespace_ = pods[i].namespace_,
                                        .service_account = pods[i].service_account,
                                        .node = pods[i].node,
                                        .ambient = pods[i].ambient};
    if (agent_set_enrolment(app->agent, v, n) < 0)
        log_kv(LOG_ERROR, "cni::agent", "zmeshd's enrolment not applied (out of memory); the previous one stays",
               NULL);
    free(v);
}

static void enrol_synced(void *ud)
{
    (void)ud;
    log_kv(LOG_INFO, "cni::agent", "enrolment from zmeshd synced", NULL);
}

static const struct enrol_client_ops enrol_ops = {.on_update = enrol_update, .on_synced = enrol_synced};

static void sig_cb(struct io *io, uint32_t ev)
{
    struct agent_app *app = container_of(io, struct agent_app, sig);
    struct signalfd_siginfo si;
    while (read(io->fd, &si, sizeof si) == (ssize_t)sizeof si) {
        if (si.ssi_signo == SIGHUP) {
            if (!app->have_file) {
                log_kv(LOG_WARN, "cni::agent", "SIGHUP without --enrolment-file: nothing to re-read", NULL);
                continue;
            }
            char err[512];
            if (agent_reload_file(app->agent, err, sizeof err) < 0)
                log_kv(LOG_ERROR, "cni::agent", "enrolment file not applied; the previous enrolment stays", "error",
                       err, NULL);
            continue;
        }
        log_kv(LOG_INFO, "cni::agent", "signal received, stopping (in-pod rules stay)", "signal",
               si.ssi_signo == SIGTERM ? "SIGTERM" : "SIGINT", NULL);
        loop_stop(app->l);
    }
}

static int agent_main(int argc, char **argv)
{
    enum { O_ZDS = 1, O_PLUGIN, O_STATE, O_NFT, O_FILE, O_NODE, O_XDS, O_ROOT, O_HOST, O_TOKEN, O_HELP };
    static const struct option opts[] = {
        {"zds-socket", required_argument, NULL, O_ZDS},
        {"plugin-socket", required_argument, NULL, O_PLUGIN},
        {"state-dir", required_argument, NULL, O_STATE},
        {"nftables", no_argument, NULL, O_NFT},
        {"enrolment-file", required_argument, NULL, O_FILE},
        {"node-name", required_argument, NULL, O_NODE},
        {"xds-address", required_argument, NULL, O_XDS},
        {"xds-root-ca", required_argument, NULL, O_ROOT},
        {"xds-hostname", required_argument, NULL, O_HOST},
        {"token-file", required_argument, NULL, O_TOKEN},
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0},
    };
    struct agent_config cfg = {.node_name = getenv("NODE_NAME")};
    const char *file = NULL, *xds = NULL, *root = NULL, *host = "istiod.istio-system.svc", *token = NULL;
    bool nft = false;
    opterr = 0;
    int o;
    while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (o) {
        case O_ZDS:
            cfg.zds_socket = optarg;
            break;
        case O_PLUGIN:
            cfg.plugin_socket = optarg;
            break;
        case O_STATE:
            cfg.state_dir = optarg;
            break;
        case O_NFT:
            nft = true;
            break;
        case O_FILE:
            file = optarg;
            break;
        case O_NODE:
            cfg.node_name = optarg;
            break;
        case O_XDS:
            xds = optarg;
            break;
        case O_ROOT:
            root = optarg;
            break;
        case O_HOST:
            host = optarg;
            break;
        case O_TOKEN:
            token = optarg;
            break;
        case O_HELP:
            usage(stdout);
            return 0;
        default:
            if (optopt)
                fprintf(stderr, "zmesh-cni agent: flag %s needs a value\n", argv[optind - 1]);
            else
                fprintf(stderr, "zmesh-cni agent: unknown flag %s\n", argv[optind - 1]);
            usage(stderr);
            return EXIT_USAGE;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "zmesh-cni agent: unexpected argument %s\n", argv[optind]);
        usage(stderr);
        return EXIT_USAGE;
    }
    if (!file == !xds) {
        fprintf(stderr, "zmesh-cni agent: %s\n",
                file ? "--enrolment-file and --xds-address are both set: choose one enrolment source"
                     : "no enrolment source: set --xds-address (zmeshd) or --enrolment-file");
        usage(stderr);
        return EXIT_USAGE;
    }
    if (!xds && (root || token)) {
        fprintf(stderr, "zmesh-cni agent: --xds-root-ca and --token-file go with --xds-address\n");
        return EXIT_USAGE;
    }
    const char *fmt = getenv("LOG_FORMAT");
    if (fmt && *fmt && strcmp(fmt, "json") && strcmp(fmt, "plain")) {
        fprintf(stderr, "zmesh-cni agent: LOG_FORMAT=%s: must be plain or json\n", fmt);
        return EXIT_USAGE;
    }
    if (log_init(getenv("RUST_LOG"), fmt && strcmp(fmt, "json") == 0) < 0) {
        fprintf(stderr, "zmesh-cni agent: RUST_LOG=%s is not a valid filter\n", getenv("RUST_LOG"));
        return EXIT_USAGE;
    }
    cfg.backend = nft ? RULES_NFTABLES : rules_backend_auto();
    cfg.wait_for_unlisted = xds != NULL; /* zmeshd learns a new pod about when its sandbox is made */
    char err[1024];
    if (!rules_backend_available(cfg.backend, err, sizeof err)) {
        fprintf(stderr, "zmesh-cni agent: %s\n", err);
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGHUP);
    sigprocmask(SIG_BLOCK, &sigs, NULL);
    struct agent_app app = {.l = loop_new()};
    if (!app.l) return 1;
    if (agent_new(app.l, &cfg, &app.agent, err, sizeof err) < 0) {
        fprintf(stderr, "zmesh-cni agent: %s\n", err);
        loop_free(app.l);
        return 1;
    }
    if (file) {
        app.have_file = true;
        if (agent_watch_file(app.agent, file, err, sizeof err) < 0) {
            fprintf(stderr, "zmesh-cni agent: %s\n", err);
            agent_free(app.agent);
            loop_free(app.l);
            return 1;
        }
    }
    if (xds) {
        extern char **environ;
        struct enrol_client_opts eo = {
            .endpoint = {.address = xds,
                         .roots = root,
                         .alt_hostname = host,
                         .token = token,
                         .cluster_id = getenv("CLUSTER_ID"),
                         .header_prefix = "XDS_HEADER_",
                         .envp = environ},
            .node_name = cfg.node_name,
            .node = {.pod_name = getenv("POD_NAME"),
                     .pod_ns = getenv("POD_NAMESPACE"),
                     .instance_ip = getenv("INSTANCE_IP"),
                     .node_name = cfg.node_name},
        };
        if (enrol_client_new(app.l, &eo, &enrol_ops, &app, &app.enrol, err, sizeof err) < 0) {
            fprintf(stderr, "zmesh-cni agent: %s\n", err);
            agent_free(app.agent);
            loop_free(app.l);
            return 1;
        }
        log_kv(LOG_INFO, "cni::agent", "enrolment from zmeshd", "address", xds, NULL);
    }
    app.sig = (struct io){.fd = signalfd(-1, &sigs, SFD_NONBLOCK | SFD_CLOEXEC), .cb = sig_cb};
    if (app.sig.fd < 0 || loop_io_add(app.l, &app.sig, EPOLLIN) < 0) {
        fprintf(stderr, "zmesh-cni agent: signalfd: %s\n", strerror(errno));
        agent_free(app.agent);
        loop_free(app.l);
        return 1;
    }
    loop_run(app.l);
    enrol_client_free(app.enrol);
    agent_free(app.agent);
    loop_io_close(app.l, &app.sig);
    loop_run_tasks(app.l);
    loop_free(app.l);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "agent") == 0) return agent_main(argc - 1, argv + 1);
    return plugin_main();
}
