/* zmesh: the command line. Commands: `zmesh ztunnel-config` (alias zc), istioctl's views of a ztunnel's admin
 * /config_dump (istio/istio istioctl/pkg/ztunnelconfig/ztunnelconfig.go); `zmesh proxy-status` (alias ps),
 * istioctl's sync table from zmeshd's /debug/syncz (istio/istio istioctl/pkg/proxystatus); `zmesh token`, a
 * service-account token from zmeshd's state directory (zmeshd token). Exit status: 0, 1 when the command
 * fails, 2 for a usage error. */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli/cluster.h"
#include "cli/http_get.h"
#include "cli/ps.h"
#include "cli/up.h"
#include "cli/waypoint.h"
#include "cli/why.h"
#include "cli/zc.h"
#include "core/env.h"
#include "zmeshd/daemon.h"

#define EXIT_USAGE 2
/* Istio's ztunnel admin port (istioctl's --proxy-admin-port default) on the pod's loopback. */
#define ZC_DEFAULT_HOST "127.0.0.1"
#define ZC_DEFAULT_PORT 15000
/* A request to the admin port must complete within this; the admin answers a dump at once. */
#define ZC_TIMEOUT_MS 5000
/* The largest dump zmesh reads: a ztunnel with every workload of a large mesh stays well below this. */
#define ZC_MAX_DUMP_BYTES (256u << 20)
#define ZC_HOST_MAX 256
#define ZC_ERR_MAX 512

static const char usage_top[] =
    "zmesh: the command line of the zmesh service mesh (istioctl's counterpart)\n"
    "\n"
    "Usage:\n"
    "  zmesh <command> [flags]\n"
    "\n"
    "Commands:\n"
    "  ztunnel-config (zc)   show a ztunnel's configuration: workloads, services, policies, certificates\n"
    "  proxy-status (ps)     show every proxy connected to zmeshd and whether its config is in sync\n"
    "  token                 print a service-account token for zmeshd's CA and xDS (zmeshd token)\n"
    "  why <src> <dst>       explain one request end to end: ztunnel, identities, waypoint, route, policies\n"
    "\n"
    "Local cluster (docs/local-cluster.md):\n"
    "  up <dir>              bring up nodes, pods, zmeshd, ztunnels and node agents from manifests\n"
    "  down                  remove the local cluster and everything it made\n"
    "  apply -f, delete -f   change the running cluster (kubectl apply/delete)\n"
    "  get                   list pods, nodes, services, namespaces (kubectl get)\n"
    "  exec, logs            run in a pod's network namespace; print a container's or component's log\n"
    "  label                 set or remove namespace and pod labels (kubectl label)\n"
    "  rollout ztunnel <n>   replace node n's ztunnel without losing its connections\n"
    "  waypoint              generate, apply, list, status, delete waypoints (istioctl waypoint)\n"
    "\n"
    "Run 'zmesh <command> --help' for the flags of a command.\n";

static const char usage_zc[] =
    "Retrieve a ztunnel's configuration from its admin /config_dump, as istioctl ztunnel-config does.\n"
    "\n"
    "Usage:\n"
    "  zmesh ztunnel-config <subcommand> [flags]     (alias: zmesh zc)\n"
    "\n"
    "Subcommands:\n"
    "  workload     (workloads, w)                 NAMESPACE POD NAME ADDRESS NODE WAYPOINT PROTOCOL\n"
    "  service      (services, svc, s)             NAMESPACE SERVICE NAME SERVICE VIP WAYPOINT ENDPOINTS\n"
    "  policy       (policies, pol, p)             NAMESPACE POLICY NAME ACTION SCOPE\n"
    "  certificate  (certificates, certs, cert)    CERTIFICATE NAME TYPE STATUS VALID CERT SERIAL NUMBER "
    "...\n"
    "  all                                         all of the above\n"
    "\n"
    "Flags:\n"
    "      --address host:port     ztunnel admin address (default 127.0.0.1:15000; [v6]:port for IPv6)\n"
    "      --node NAME             the ztunnel of node NAME of the local cluster (zmesh up; "
    "ZMESH_STATE_DIR)\n"
    "      --proxy-admin-port N    admin port when --address gives no port (default 15000)\n"
    "  -f, --file FILE             read a saved config dump instead ('-' for standard input)\n"
    "  -o, --output FORMAT         short (tables, the default) or json\n"
    "      --workload-namespace NS filter workloads by namespace (workload)\n"
    "      --workload-node NODE    filter workloads by node (workload)\n"
    "      --service-namespace NS  filter services by namespace (service)\n"
    "      --policy-namespace NS   filter policies by namespace (policy)\n"
    "      --with-headers          print a header before each table (all)\n"
    "  -h, --help                  this help\n"
    "\n"
    "The admin port listens on the pod's loopback: run zmesh inside the pod's network namespace,\n"
    "e.g. ip netns exec <pod> zmesh ztunnel-config workloads\n";

enum opt_id {
    OPT_ADDRESS = 256,
    OPT_ADMIN_PORT,
    OPT_NODE,
    OPT_WL_NS,
    OPT_WL_NODE,
    OPT_SVC_NS,
    OPT_POL_NS,
    OPT_WITH_HEADERS,
};

struct subcmd {
    const char *name;
    const char *aliases[4];
    enum zc_kind kind;
    int flags[2]; /* the subcommand's own flags (enum opt_id), 0-terminated */
};

/* istioctl's subcommand names and aliases (ztunnelconfig.go). */
static const struct subcmd subcmds[] = {
    {"workload", {"workloads", "w"}, ZC_WORKLOADS, {OPT_WL_NS, OPT_WL_NODE}},
    {"service", {"services", "s", "svc"}, ZC_SERVICES, {OPT_SVC_NS}},
    {"policy", {"policies", "p", "pol"}, ZC_POLICIES, {OPT_POL_NS}},
    {"certificate", {"certificates", "certs", "cert"}, ZC_CERTIFICATES, {0}},
    {"all", {0}, ZC_ALL, {OPT_WITH_HEADERS}},
};

static const struct subcmd *find_subcmd(const char *name)
{
    for (size_t i = 0; i < sizeof(subcmds) / sizeof(subcmds[0]); i++) {
        if (!strcmp(subcmds[i].name, name)) return &subcmds[i];
        for (size_t j = 0; j < 4 && subcmds[i].aliases[j]; j++)
            if (!strcmp(subcmds[i].aliases[j], name)) return &subcmds[i];
    }
    return NULL;
}

static const struct option zc_opts[] = {
    {"address", required_argument, NULL, OPT_ADDRESS},
    {"proxy-admin-port", required_argument, NULL, OPT_ADMIN_PORT},
    {"file", required_argument, NULL, 'f'},
    {"output", required_argument, NULL, 'o'},
    {"node", required_argument, NULL, OPT_NODE},
    {"workload-namespace", required_argument, NULL, OPT_WL_NS},
    {"workload-node", required_argument, NULL, OPT_WL_NODE},
    {"service-namespace", required_argument, NULL, OPT_SVC_NS},
    {"policy-namespace", required_argument, NULL, OPT_POL_NS},
    {"with-headers", no_argument, NULL, OPT_WITH_HEADERS},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

static const char *opt_name(int id)
{
    for (const struct option *o = zc_opts; o->name; o++)
        if (o->val == id) return o->name;
    return "?";
}

static int usage_error(const char *fmt, const char *arg)
{
    fputs("Error: ", stderr);
    fprintf(stderr, fmt, arg);
    fputs("\n\n", stderr);
    fputs(usage_zc, stderr);
    return EXIT_USAGE;
}

/* Splits "host:port", "[v6]:port", "host" or "v6" into host and port (default_port when none is given).
 * Returns 0 or -EINVAL. */
static int split_address(const char *addr, int default_port, char *host, size_t hn, char *port, size_t pn)
{
    const char *colon = NULL, *h = addr;
    size_t hl;
    if (addr[0] == '[') {
        const char *end = strchr(addr, ']');
        if (!end || (end[1] && end[1] != ':')) return -EINVAL;
        h = addr + 1;
        hl = (size_t)(end - h);
        colon = end[1] == ':' ? end + 1 : NULL;
    } else {
        colon = strchr(addr, ':');
        if (colon && strchr(colon + 1, ':')) colon = NULL; /* a bare IPv6 address */
        hl = colon ? (size_t)(colon - addr) : strlen(addr);
    }
    if (hl == 0 || hl >= hn) return -EINVAL;
    memcpy(host, h, hl);
    host[hl] = '\0';
    long p = default_port;
    if (colon) {
        char *e;
        errno = 0;
        p = strtol(colon + 1, &e, 10);
        if (errno || *e || e == colon + 1) return -EINVAL;
    }
    if (p < 1 || p > 65535) return -EINVAL;
    snprintf(port, pn, "%ld", p);
    return 0;
}

/* Reads a whole file (or stdin for "-") up to ZC_MAX_DUMP_BYTES into a malloc'd buffer. Returns 0 or -errno.
 */
static int read_dump_file(const char *path, char **body, size_t *len)
{
    FILE *fp = strcmp(path, "-") ? fopen(path, "rb") : stdin;
    size_t cap = 0, n = 0;
    char *b = NULL;
    int rc = 0;
    if (!fp) return -errno;
    for (;;) {
        if (n + 1 >= cap) {
            size_t ncap = cap ? cap * 2 : 65536;
            char *nb = ncap > ZC_MAX_DUMP_BYTES + 1 ? NULL : realloc(b, ncap);
            if (!nb) {
                rc = ncap > ZC_MAX_DUMP_BYTES + 1 ? -EFBIG : -ENOMEM;
                goto out;
            }
            b = nb;
            cap = ncap;
        }
        size_t r = fread(b + n, 1, cap - n - 1, fp);
        n += r;
        if (r == 0) break;
    }
    if (ferror(fp)) rc = -EIO;
out:
    if (fp != stdin) fclose(fp);
    if (rc) {
        free(b);
        return rc;
    }
    b[n] = '\0';
    *body = b;
    *len = n;
    return 0;
}

static int cmd_ztunnel_config(int argc, char **argv)
{
    const char *address = NULL, *file = NULL, *output = "short";
    long admin_port = ZC_DEFAULT_PORT;
    struct zc_filter f = {0};
    int used[OPT_WITH_HEADERS + 1] = {0};
    char host[ZC_HOST_MAX], port[8], err[ZC_ERR_MAX];
    char shown[ZC_HOST_MAX + 16]; /* where the dump came from, for messages */
    const char *node = NULL;
    char node_addr[64];
    char *body = NULL;
    size_t len = 0;
    json_t *dump = NULL;
    int rc, c;

    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":ho:f:", zc_opts, NULL)) != -1) {
        if (c > 0 && c <= OPT_WITH_HEADERS) used[c] = 1;
        switch (c) {
        case 'h':
            fputs(usage_zc, stdout);
            return 0;
        case 'o':
            output = optarg;
            break;
        case 'f':
            file = optarg;
            break;
        case OPT_ADDRESS:
            address = optarg;
            break;
        case OPT_ADMIN_PORT: {
            char *e;
            admin_port = strtol(optarg, &e, 10);
            if (*e || e == optarg || admin_port < 1 || admin_port > 65535)
                return usage_error("invalid --proxy-admin-port %s: a port is 1..65535", optarg);
            break;
        }
        case OPT_NODE:
            node = optarg;
            break;
        case OPT_WL_NS:
            f.workload_namespace = optarg;
            break;
        case OPT_WL_NODE:
            f.workload_node = optarg;
            break;
        case OPT_SVC_NS:
            f.service_namespace = optarg;
            break;
        case OPT_POL_NS:
            f.policy_namespace = optarg;
            break;
        case OPT_WITH_HEADERS:
            f.with_headers = true;
            break;
        case ':':
            return usage_error("flag needs an argument: %s", argv[optind - 1]);
        default:
            return usage_error("unknown flag: %s", argv[optind - 1]);
        }
    }
    if (optind >= argc) return usage_error("%s", "a subcommand is required");
    const struct subcmd *sc = find_subcmd(argv[optind]);
    if (!sc) {
        if (!strcmp(argv[optind], "log") || !strcmp(argv[optind], "connections"))
            return usage_error("istioctl's \"%s\" subcommand is not in zmesh yet", argv[optind]);
        return usage_error("unknown subcommand \"%s\"", argv[optind]);
    }
    if (optind + 1 < argc)
        return usage_error("unexpected argument \"%s\" (zmesh reads one ztunnel: pass --address)",
                           argv[optind + 1]);
    /* A filter of another subcommand is an error, as cobra reports a flag the command does not define. */
    for (int id = OPT_WL_NS; id <= OPT_WITH_HEADERS; id++)
        if (used[id] && sc->flags[0] != id && sc->flags[1] != id) {
            char flag[64];
            snprintf(flag, sizeof(flag), "--%s", opt_name(id));
            return usage_error("unknown flag: %s", flag);
        }
    enum zc_format fmt;
    if (!strcmp(output, "short"))
        fmt = ZC_SHORT;
    else if (!strcmp(output, "json"))
        fmt = ZC_JSON;
    else if (!strcmp(output, "yaml"))
        return usage_error("output format \"%s\" is not supported by zmesh yet; use -o json", output);
    else
        return usage_error("output format \"%s\" not supported (short or json)", output);
    if ((file != NULL) + (address != NULL) + (node != NULL) > 1)
        return usage_error("%s", "at most one of --file, --address and --node may be passed");
    if (node) {
        /* A node of the local cluster (zmesh up): its ztunnel's admin port is on 127.0.0.1 in the node's
         * network namespace, where this process goes for the request. */
        char netns[CLUSTER_NAME_MAX + 16], nspath[CLUSTER_NAME_MAX + 32], where[64];
        int aport;
        if (up_ztunnel_admin(node, netns, sizeof(netns), &aport, err, sizeof(err))) {
            fprintf(stderr, "Error: --node %s: %s\n", node, err);
            return 1;
        }
        snprintf(nspath, sizeof(nspath), "/run/netns/%s", netns);
        int fd = open(nspath, O_RDONLY | O_CLOEXEC);
        if (fd < 0 || setns(fd, CLONE_NEWNET) < 0) {
            fprintf(stderr, "Error: --node %s: cannot enter network namespace %s: %s\n", node, netns,
                    strerror(errno));
            if (fd >= 0) close(fd);
            return 1;
        }
        close(fd);
        snprintf(where, sizeof(where), "127.0.0.1:%d", aport);
        snprintf(node_addr, sizeof(node_addr), "%s", where);
        address = node_addr;
    }

    if (file) {
        rc = read_dump_file(file, &body, &len);
        if (rc) {
            fprintf(stderr, "Error: cannot read config dump %s: %s\n", file, strerror(-rc));
            rc = 1;
            goto out;
        }
        snprintf(shown, sizeof(shown), "%s", file);
    } else {
        if (split_address(address ? address : ZC_DEFAULT_HOST, (int)admin_port, host, sizeof(host), port,
                          sizeof(port)))
            return usage_error("invalid --address %s: use host:port or [v6]:port", address);
        snprintf(shown, sizeof(shown), strchr(host, ':') ? "[%s]:%s" : "%s:%s", host, port);
        struct http_get_resp resp;
        rc = http_get(host, port, "/config_dump", ZC_TIMEOUT_MS, ZC_MAX_DUMP_BYTES, &resp, err, sizeof(err));
        if (rc && !resp.connected) {
            fprintf(stderr,
                    "Error: cannot reach ztunnel admin at %s: %s; run inside the pod's network namespace "
                    "(ip netns exec <pod> zmesh ...) or pass --address\n",
                    shown, err);
            rc = 1;
            goto out;
        }
        if (rc) {
            /* Something answered but not as a ztunnel admin does: the address is likely another service. */
            fprintf(stderr,
                    "Error: GET /config_dump from %s: %s; no ztunnel admin answered there (it listens on "
                    "127.0.0.1:15000 inside the pod's network namespace)\n",
                    shown, err);
            rc = 1;
            goto out;
        }
        body = resp.body;
        len = resp.len;
        if (resp.status != 200) {
            fprintf(stderr, "Error: ztunnel admin at %s answered %d to GET /config_dump: %.200s\n", shown,
                    resp.status, body);
            rc = 1;
            goto out;
        }
    }
    if (zc_parse(body, len, &dump, err, sizeof(err))) {
        fprintf(stderr, "Error: the config dump from %s is not valid JSON: %s\n", shown, err);
        rc = 1;
        goto out;
    }
    rc = zc_render(stdout, dump, body, len, sc->kind, fmt, &f, time(NULL));
    if (!rc && fflush(stdout)) rc = -EIO;
    if (rc) {
        fprintf(stderr, "Error: printing the %s view: %s\n", sc->name, strerror(-rc));
        rc = 1;
    }
out:
    json_decref(dump);
    free(body);
    return rc;
}

/* ---- proxy-status ---- */

/* zmeshd's debug port (istiod's monitoring port), where istioctl's proxy-status gets its syncz. */
#define PS_DEFAULT_ADDRESS "127.0.0.1:15014"
#define PS_DEFAULT_PORT 15014
#define PS_TIMEOUT_MS 5000
#define PS_MAX_BYTES (64u << 20)

static const char usage_ps[] =
    "Show the xDS sync state of every proxy connected to zmeshd, as istioctl proxy-status does: one row per\n"
    "proxy, one column per xDS type it watches (ztunnel: WADS for authorizations, WDS for addresses) with\n"
    "SYNCED, STALE (sent, not yet ACKed), ERROR (NACKed; the message is printed below the table), NOT SENT\n"
    "or IGNORED (not watched).\n"
    "\n"
    "Usage:\n"
    "  zmesh proxy-status [flags]     (alias: zmesh ps)\n"
    "\n"
    "Flags:\n"
    "      --zmeshd-address host:port  zmeshd's debug port (default " PS_DEFAULT_ADDRESS
    ", zmeshd --debug-listen)\n"
    "  -n, --namespace NS              only the proxies of namespace NS (their node metadata's NAMESPACE)\n"
    "  -o, --output FORMAT             short (the default), wide (with each state's age) or json\n"
    "  -h, --help                      this help\n";

static int ps_usage_error(const char *fmt, const char *arg)
{
    fputs("Error: ", stderr);
    fprintf(stderr, fmt, arg);
    fputs("\n\n", stderr);
    fputs(usage_ps, stderr);
    return EXIT_USAGE;
}

static int cmd_proxy_status(int argc, char **argv)
{
    static const struct option opts[] = {
        {"zmeshd-address", required_argument, NULL, 'a'},
        {"namespace", required_argument, NULL, 'n'},
        {"output", required_argument, NULL, 'o'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *address = PS_DEFAULT_ADDRESS, *output = "short", *ns = NULL;
    char host[ZC_HOST_MAX], port[8], err[ZC_ERR_MAX], shown[ZC_HOST_MAX + 16];
    json_t *syncz = NULL;
    int c, rc;

    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":ho:n:", opts, NULL)) != -1) {
        switch (c) {
        case 'h':
            fputs(usage_ps, stdout);
            return 0;
        case 'o':
            output = optarg;
            break;
        case 'n':
            if (!*optarg) return ps_usage_error("%s", "--namespace needs a namespace");
            ns = optarg;
            break;
        case 'a':
            address = optarg;
            break;
        case ':':
            return ps_usage_error("flag needs an argument: %s", argv[optind - 1]);
        default:
            return ps_usage_error("unknown flag: %s", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return ps_usage_error("unexpected argument \"%s\" (zmesh proxy-status lists every proxy; a config "
                              "diff of one proxy is not in zmesh yet)",
                              argv[optind]);
    enum ps_format fmt;
    if (!strcmp(output, "short"))
        fmt = PS_SHORT;
    else if (!strcmp(output, "wide"))
        fmt = PS_WIDE;
    else if (!strcmp(output, "json"))
        fmt = PS_JSON;
    else
        return ps_usage_error("output format \"%s\" not supported (short, wide or json)", output);
    if (split_address(address, PS_DEFAULT_PORT, host, sizeof(host), port, sizeof(port)))
        return ps_usage_error("invalid --zmeshd-address %s: use host:port or [v6]:port", address);
    snprintf(shown, sizeof(shown), strchr(host, ':') ? "[%s]:%s" : "%s:%s", host, port);

    struct http_get_resp resp = {0};
    rc = http_get(host, port, "/debug/syncz", PS_TIMEOUT_MS, PS_MAX_BYTES, &resp, err, sizeof(err));
    if (rc && !resp.connected) {
        fprintf(
            stderr,
            "Error: cannot reach zmeshd's debug port at %s: %s; is zmeshd running? It serves /debug/syncz "
            "on --debug-listen (default " PS_DEFAULT_ADDRESS "); pass --zmeshd-address host:port\n",
            shown, err);
        return 1;
    }
    if (rc) {
        fprintf(stderr, "Error: GET /debug/syncz from %s: %s; no zmeshd debug port answered there\n", shown,
                err);
        return 1;
    }
    if (resp.status != 200) {
        fprintf(stderr, "Error: %s answered %d to GET /debug/syncz (not zmeshd's debug port?): %.200s\n",
                shown, resp.status, resp.body);
        rc = 1;
        goto out;
    }
    if (ps_parse(resp.body, resp.len, &syncz, err, sizeof(err))) {
        fprintf(stderr, "Error: the syncz document from %s is not valid: %s\n", shown, err);
        rc = 1;
        goto out;
    }
    if (ns) {
        json_t *only = ps_filter_namespace(syncz, ns);
        json_decref(syncz);
        if (!(syncz = only)) {
            fprintf(stderr, "Error: out of memory\n");
            rc = 1;
            goto out;
        }
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    rc = ps_render(stdout, syncz, fmt, (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000);
    if (!rc && fflush(stdout)) rc = -EIO;
    if (rc == -ENOENT && ns) {
        fprintf(stderr,
                "Error: no proxies found in namespace %s (zmeshd at %s; the namespace is the proxy's, "
                "e.g. istio-system for ztunnels)\n",
                ns, shown);
        rc = 1;
    } else if (rc == -ENOENT) {
        fprintf(stderr, "Error: no proxies found (zmeshd at %s has no xDS client connected)\n", shown);
        rc = 1;
    } else if (rc) {
        fprintf(stderr, "Error: printing the proxy status: %s\n", strerror(-rc));
        rc = 1;
    }
out:
    json_decref(syncz);
    free(resp.body);
    return rc;
}

/* ---- token ---- */

static const char usage_token[] =
    "Print a service-account token that zmeshd's CA and xDS server accept, signed with the key in zmeshd's\n"
    "state directory (the same as zmeshd token; created on first use).\n"
    "\n"
    "Usage:\n"
    "  zmesh token --sa NS/SA --state-dir DIR [flags]\n"
    "\n"
    "Flags:\n"
    "      --sa NS/SA          the service account the token is for (required)\n"
    "      --state-dir DIR     zmeshd's state directory (required)\n"
    "      --node NAME         the node the bearer runs on (a node proxy needs it to impersonate)\n"
    "      --pod NAME          the pod the token is bound to\n"
    "      --pod-uid UID       that pod's uid\n"
    "      --ttl DURATION      lifetime (default 1h; 30m, 1h30m, a bare number is seconds; 1s to 366d)\n"
    "  -h, --help              this help\n";

static int token_usage_error(const char *fmt, const char *arg)
{
    fputs("Error: ", stderr);
    fprintf(stderr, fmt, arg);
    fputs("\n\n", stderr);
    fputs(usage_token, stderr);
    return EXIT_USAGE;
}

static int cmd_token(int argc, char **argv)
{
    static const struct option opts[] = {
        {"sa", required_argument, NULL, 's'},      {"state-dir", required_argument, NULL, 'd'},
        {"node", required_argument, NULL, 'n'},    {"pod", required_argument, NULL, 'p'},
        {"pod-uid", required_argument, NULL, 'u'}, {"ttl", required_argument, NULL, 't'},
        {"help", no_argument, NULL, 'h'},          {NULL, 0, NULL, 0},
    };
    const char *sa_arg = NULL, *state_dir = NULL, *ttl = NULL;
    struct token_subject subj = {0};
    char ns[TOKEN_NAME_MAX], sa[TOKEN_NAME_MAX], err[ZC_ERR_MAX];
    long ttl_s = ZMESHD_TOKEN_DEFAULT_TTL_S;
    int c;

    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case 'h':
            fputs(usage_token, stdout);
            return 0;
        case 's':
            sa_arg = optarg;
            break;
        case 'd':
            state_dir = optarg;
            break;
        case 'n':
            subj.node = optarg;
            break;
        case 'p':
            subj.pod = optarg;
            break;
        case 'u':
            subj.pod_uid = optarg;
            break;
        case 't':
            ttl = optarg;
            break;
        case ':':
            return token_usage_error("flag needs an argument: %s", argv[optind - 1]);
        default:
            return token_usage_error("unknown flag: %s", argv[optind - 1]);
        }
    }
    if (optind < argc) return token_usage_error("unexpected argument \"%s\"", argv[optind]);
    if (!sa_arg) return token_usage_error("%s is required", "--sa");
    if (!state_dir) return token_usage_error("%s is required (zmeshd's --state-dir)", "--state-dir");
    const char *slash = strchr(sa_arg, '/');
    if (!slash || slash == sa_arg || !slash[1] || strchr(slash + 1, '/') ||
        (size_t)(slash - sa_arg) >= sizeof(ns) || strlen(slash + 1) >= sizeof(sa))
        return token_usage_error("--sa \"%s\": expected <namespace>/<service account>", sa_arg);
    snprintf(ns, sizeof(ns), "%.*s", (int)(slash - sa_arg), sa_arg);
    snprintf(sa, sizeof(sa), "%s", slash + 1);
    if (ttl) {
        uint64_t ms;
        int rc = duration_parse_ms(ttl, &ms);
        if (rc < 0) return token_usage_error("--ttl \"%s\": not a duration (e.g. 30m, 1h, 3600)", ttl);
        if (ms < 1000 || ms / 1000 > (uint64_t)TOKEN_MAX_TTL_S)
            return token_usage_error("--ttl \"%s\": must be between 1s and 366d", ttl);
        ttl_s = (long)(ms / 1000);
    }
    subj.ns = ns;
    subj.sa = sa;
    char *tok = NULL;
    if (zmeshd_token_mint(state_dir, &subj, ttl_s, &tok, err, sizeof(err)) < 0) {
        fprintf(stderr, "Error: %s\n", err);
        return 1;
    }
    int rc = printf("%s\n", tok) < 0 || fflush(stdout) ? 1 : 0;
    if (rc) fprintf(stderr, "Error: cannot write the token: %s\n", strerror(errno));
    free(tok);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fputs(usage_top, stderr);
        return EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help") || !strcmp(cmd, "help")) {
        fputs(usage_top, stdout);
        return 0;
    }
    if (!strcmp(cmd, "ztunnel-config") || !strcmp(cmd, "zc")) return cmd_ztunnel_config(argc - 1, argv + 1);
    if (!strcmp(cmd, "proxy-status") || !strcmp(cmd, "ps")) return cmd_proxy_status(argc - 1, argv + 1);
    if (!strcmp(cmd, "token")) return cmd_token(argc - 1, argv + 1);
    if (!strcmp(cmd, "waypoint")) return cmd_waypoint(argc - 1, argv + 1);
    if (!strcmp(cmd, "why")) return cmd_why(argc - 1, argv + 1);
    static const struct {
        const char *name;
        int (*fn)(int, char **);
    } cluster_cmds[] = {{"up", cmd_up},         {"down", cmd_down},   {"apply", cmd_apply},
                        {"delete", cmd_delete}, {"get", cmd_get},     {"exec", cmd_exec},
                        {"logs", cmd_logs},     {"label", cmd_label}, {"rollout", cmd_rollout}};
    for (size_t i = 0; i < sizeof(cluster_cmds) / sizeof(cluster_cmds[0]); i++)
        if (!strcmp(cmd, cluster_cmds[i].name)) return cluster_cmds[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "Error: unknown command \"%s\"\n\n", cmd);
    fputs(usage_top, stderr);
    return EXIT_USAGE;
}
