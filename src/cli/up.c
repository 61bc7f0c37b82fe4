/* zmesh up and the commands of a local cluster (up.h). Writes (apply, delete, label, down) go to the
 * controller's socket, which reconciles; reads (get, logs, exec) use the state directory directly: api/ is
 * the API server's view and pods/ and logs/ hold the logs, so they work while the controller is busy. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli/cluster.h"
#include "cli/cluster_ctl.h"
#include "cli/cluster_net.h"
#include "cli/ps.h"
#include "cli/up.h"
#include "cli/waypoint.h"
#include "cli/zc.h"
#include "core/env.h"

#define EXIT_USAGE 2
#define UP_DEFAULT_TIMEOUT_S 60
#define CALL_TIMEOUT_MS 120000
#define API_FILE_MAX (16u << 20)
/* down waits this long for the controller to stop every pod before it kills what is left. */
#define DOWN_WAIT_MS 90000

static const char *state_default(void)
{
    const char *s = getenv("ZMESH_STATE_DIR");
    return s && *s ? s : CLUSTER_DEFAULT_STATE;
}

static int usage(const char *text, const char *fmt, const char *arg)
{
    fputs("Error: ", stderr);
    fprintf(stderr, fmt, arg);
    fputs("\n\n", stderr);
    fputs(text, stderr);
    return EXIT_USAGE;
}

static void report_stderr(void *ud, bool warn, const char *msg)
{
    (void)ud;
    fprintf(stderr, "%s: %s\n", warn ? "warning" : "error", msg);
}

/* The state directory without a trailing slash, made absolute (the controller and zmeshd chdir nowhere, but
 * paths in the conflist and the record must not depend on where zmesh ran). */
int up_state_abs(const char *in, char *out, size_t n)
{
    char cwd[CLUSTER_PATH_MAX];
    if (in[0] == '/')
        snprintf(out, n, "%s", in);
    else if (getcwd(cwd, sizeof(cwd)))
        snprintf(out, n, "%.255s/%.255s", cwd, in);
    else
        return -errno;
    size_t l = strlen(out);
    while (l > 1 && out[l - 1] == '/')
        out[--l] = '\0';
    return 0;
}

/* The absolute directory of a manifest path (the path itself when it is a directory). */
static void manifest_dir_of(const char *path, char *out, size_t n)
{
    char abs[CLUSTER_PATH_MAX];
    struct stat sb;
    if (!realpath(path, abs)) snprintf(abs, sizeof(abs), "%s", path);
    if (!stat(abs, &sb) && !S_ISDIR(sb.st_mode)) {
        char *sl = strrchr(abs, '/');
        if (sl && sl != abs) *sl = '\0';
    }
    snprintf(out, n, "%s", abs);
}

/* ---- the controller's pid file: "<pid> <start time>" ---- */

static pid_t controller_pid(const char *state)
{
    char p[CLUSTER_PATH_MAX + 32], *s = NULL, start[32];
    snprintf(p, sizeof(p), "%s/controller.pid", state);
    if (cluster_read_file(p, 256, &s, NULL)) return 0;
    long pid = 0;
    char want[32] = "";
    sscanf(s, "%ld %31s", &pid, want);
    free(s);
    if (pid <= 1) return 0;
    net_proc_start((pid_t)pid, start, sizeof(start));
    if (!*start || strcmp(start, want)) return 0;
    /* A killed controller whose parent is gone may stay a zombie until init reaps it: that is not running. */
    char sp[64], *st = NULL;
    snprintf(sp, sizeof(sp), "/proc/%ld/stat", pid);
    bool zombie = false;
    if (!cluster_read_file(sp, 1 << 16, &st, NULL)) {
        char *q = strrchr(st, ')');
        zombie = q && q[1] == ' ' && (q[2] == 'Z' || q[2] == 'X');
        free(st);
    }
    return zombie ? 0 : (pid_t)pid;
}

/* ---- up ---- */

static const char usage_up[] =
    "Bring up a local cluster (nodes are network namespaces on a bridge, pods are their processes in their "
    "own\n"
    "namespaces wired by the CNI plugins) from a directory of Kubernetes manifests, with zmeshd, and per "
    "node a\n"
    "shared ztunnel and a node agent. Returns once every pod is running and ready.\n"
    "\n"
    "Usage:\n"
    "  zmesh up <manifest-dir|file> [flags]\n"
    "\n"
    "Flags:\n"
    "      --state-dir DIR       where the cluster keeps its state (default $ZMESH_STATE_DIR or /run/zmesh)\n"
    "      --nodes N             nodes node1..nodeN when the manifests declare no Node (default 2)\n"
    "      --no-mesh             start neither ztunnels nor node agents (pods talk plain text)\n"
    "      --timeout DURATION    how long to wait for the cluster to be ready (default 60s)\n"
    "      --prefix NAME         names of the bridge (<prefix>0) and namespaces (<prefix>-...) (default "
    "zmesh)\n"
    "      --node-subnet A.B.C.0 the node network, a /24; the host is .1 (default 172.30.0.0)\n"
    "      --pod-subnet A.B.0.0  pod CIDRs A.B.<node>.0/24 (default 10.244.0.0)\n"
    "      --bin-dir DIR         where zmeshd, ztunnel and zmesh-cni are (default: next to zmesh)\n"
    "  -h, --help                this help\n";

static int remove_cb(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

/* Undoes everything the record lists, newest first, and removes the state files. Used by down, and by up
 * when it fails half-way. Returns the number of problems (each printed). */
static int teardown(const char *state, bool verbose)
{
    char path[CLUSTER_PATH_MAX + 32], err[1024];
    struct cluster_cfg cfg;
    bool have_cfg = cluster_cfg_load(state, &cfg, err, sizeof(err)) == 0;
    char *text = NULL;
    snprintf(path, sizeof(path), "%s/record", state);
    int problems = 0, rc = cluster_read_file(path, 64u << 20, &text, NULL);
    struct record_entry *v = NULL;
    size_t n = 0, bad = 0;
    if (rc == 0 && cluster_record_live(text, &v, &n, &bad)) n = 0;
    free(text);
    if (bad) fprintf(stderr, "warning: %s: %zu unreadable lines skipped (a torn write?)\n", path, bad);
    size_t nn = 0, nr = 0, np = 0;
    for (size_t i = n; i-- > 0;) {
        struct record_entry *e = &v[i];
        switch (e->kind) {
        case REC_PROC: {
            char start[32];
            pid_t pid = (pid_t)atol(e->a);
            net_proc_start(pid, start, sizeof(start));
            /* Only the process we started: the start time guards against a recycled pid. */
            if (pid > 1 && *start && !strcmp(start, e->b)) {
                kill(-pid, SIGKILL);
                kill(pid, SIGKILL);
                np++;
            }
            cluster_record_remove(state, e);
            break;
        }
        case REC_POD: {
            const struct cluster_node *node = have_cfg ? cluster_node_find(&cfg, e->c) : NULL;
            if (!node) break;
            struct sandbox sb = {.node = node};
            snprintf(sb.ns, sizeof(sb.ns), "%.63s", e->a);
            snprintf(sb.name, sizeof(sb.name), "%s", e->b);
            snprintf(sb.container_id, sizeof(sb.container_id), "%.32s", e->d);
            cluster_pod_netns(&cfg, sb.ns, sb.name, sb.netns, sizeof(sb.netns));
            /* The processes go first, then CNI DEL as the runtime would (the leases are released). */
            net_kill_netns(sb.netns);
            if (net_sandbox_del(&cfg, &sb, err, sizeof(err)) && verbose)
                fprintf(stderr, "warning: pod %s/%s: %s\n", sb.ns, sb.name, err);
            break;
        }
        case REC_NETNS:
            if (net_netns_del(e->a, err, sizeof(err))) {
                fprintf(stderr, "error: %s\n", err);
                problems++;
            } else {
                nn++;
                cluster_record_remove(state, e);
            }
            break;
        case REC_ROUTE: {
            char *const av[] = {"ip", "route", "del", e->a, "via", e->b, NULL};
            if (!net_run(av, err, sizeof(err))) nr++; /* a route gone with its interface is fine */
            cluster_record_remove(state, e);
            break;
        }
        case REC_BRIDGE: {
            char p[64];
            snprintf(p, sizeof(p), "/sys/class/net/%.40s", e->a);
            if (!access(p, F_OK)) {
                char *const av[] = {"ip", "link", "del", e->a, NULL};
                if (net_run(av, err, sizeof(err))) {
                    fprintf(stderr, "error: %s\n", err);
                    problems++;
                    break;
                }
                if (verbose) printf("bridge %s removed\n", e->a);
            }
            cluster_record_remove(state, e);
            break;
        }
        default:
            break;
        }
    }
    free(v);
    if (verbose) printf("%zu network namespaces, %zu host routes and %zu processes removed\n", nn, nr, np);
    if (!problems) {
        static const char *const names[] = {"api",
                                            "nodes",
                                            "pods",
                                            "logs",
                                            "zmeshd",
                                            "cni",
                                            "cluster.json",
                                            "controller.pid",
                                            "controller.sock",
                                            "record",
                                            NULL};
        for (const char *const *q = names; *q; q++) {
            snprintf(path, sizeof(path), "%s/%s", state, *q);
            nftw(path, remove_cb, 16, FTW_DEPTH | FTW_PHYS);
        }
        rmdir(state); /* only when it holds nothing else */
    }
    return problems;
}

static int wait_ready(const char *state, int timeout_s, pid_t daemon)
{
    int64_t deadline = cluster_now_ms() + (int64_t)timeout_s * 1000;
    char err[1024];
    json_t *last = NULL;
    for (;;) {
        json_t *req = json_pack("{s:s}", "op", "status"), *resp = NULL;
        int rc = ctl_call(state, req, &resp, 10000, err, sizeof(err));
        json_decref(req);
        if (!rc && json_is_true(json_object_get(resp, "ready"))) {
            size_t i;
            json_t *n;
            json_array_foreach(json_object_get(resp, "notes"), i, n)
                fprintf(stderr, "note: %s\n", json_string_value(n));
            json_decref(resp);
            json_decref(last);
            return 0;
        }
        if (!rc) {
            json_decref(last);
            last = resp;
        }
        int st;
        if (daemon > 0 && waitpid(daemon, &st, WNOHANG) == daemon) {
            fprintf(stderr,
                    "Error: the controller exited during start-up; see %s/logs/controller.log (zmesh down "
                    "--state-dir %s removes what was made)\n",
                    state, state);
            json_decref(last);
            return -1;
        }
        if (cluster_now_ms() >= deadline) break;
        usleep(200 * 1000);
    }
    fprintf(stderr, "Error: the cluster is not ready after %ds:\n", timeout_s);
    size_t i;
    json_t *w;
    if (!last) fprintf(stderr, "  the controller does not answer (%s)\n", err);
    json_array_foreach(json_object_get(last, "waiting"), i, w)
        fprintf(stderr, "  %s\n", json_string_value(w));
    json_array_foreach(json_object_get(last, "notes"), i, w)
        fprintf(stderr, "  note: %s\n", json_string_value(w));
    fprintf(
        stderr,
        "The cluster is left up for inspection (zmesh get pods, zmesh logs ...); zmesh down --state-dir %s "
        "removes it.\n",
        state);
    json_decref(last);
    return -1;
}

/* The controller's checks of waypoint Gateways (wp_gateway_check), made before anything is created or sent,
 * as the Pod fields are. Returns how many are wrong (each printed); warnings are printed too. */
static int check_waypoints(const json_t *objs)
{
    int bad = 0;
    size_t i, j;
    json_t *o, *w;
    json_array_foreach(objs, i, o)
    {
        if (!wp_is_waypoint(o)) continue;
        char err[600];
        json_t *warnings = json_array();
        if (wp_gateway_check(o, err, sizeof(err), warnings)) {
            fprintf(stderr, "error: %s\n", err);
            bad++;
        }
        json_array_foreach(warnings, j, w) fprintf(stderr, "warning: %s\n", json_string_value(w));
        json_decref(warnings);
    }
    return bad;
}

int cmd_up(int argc, char **argv)
{
    static const struct option opts[] = {
        {"state-dir", required_argument, NULL, 's'},
        {"nodes", required_argument, NULL, 'n'},
        {"no-mesh", no_argument, NULL, 'm'},
        {"timeout", required_argument, NULL, 't'},
        {"prefix", required_argument, NULL, 'p'},
        {"node-subnet", required_argument, NULL, 'N'},
        {"pod-subnet", required_argument, NULL, 'P'},
        {"bin-dir", required_argument, NULL, 'b'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    static struct cluster_cfg cfg; /* large: not on the stack */
    memset(&cfg, 0, sizeof(cfg));
    const char *state = state_default(), *bin = NULL;
    long nodes = 2, timeout_s = UP_DEFAULT_TIMEOUT_S;
    bool nodes_given = false;
    cfg.mesh = true;
    snprintf(cfg.prefix, sizeof(cfg.prefix), "%s", CLUSTER_DEFAULT_PREFIX);
    snprintf(cfg.node_subnet, sizeof(cfg.node_subnet), "%s", CLUSTER_DEFAULT_NODE_SUBNET);
    snprintf(cfg.pod_subnet, sizeof(cfg.pod_subnet), "%s", CLUSTER_DEFAULT_POD_SUBNET);
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        switch (c) {
        case 'h':
            fputs(usage_up, stdout);
            return 0;
        case 's':
            state = optarg;
            break;
        case 'n': {
            char *e;
            nodes = strtol(optarg, &e, 10);
            if (*e || nodes < 1 || nodes > CLUSTER_MAX_NODES)
                return usage(usage_up, "--nodes %s: expected 1..200", optarg);
            nodes_given = true;
            break;
        }
        case 'm':
            cfg.mesh = false;
            break;
        case 't': {
            uint64_t ms;
            if (duration_parse_ms(optarg, &ms) < 0 || ms < 1000)
                return usage(usage_up, "--timeout %s: expected a duration of at least 1s (60s, 2m)", optarg);
            timeout_s = (long)(ms / 1000);
            break;
        }
        case 'p':
            if (strlen(optarg) > CLUSTER_PREFIX_MAX)
                return usage(usage_up, "--prefix %s: at most 8 characters", optarg);
            snprintf(cfg.prefix, sizeof(cfg.prefix), "%s", optarg);
            break;
        case 'N':
            snprintf(cfg.node_subnet, sizeof(cfg.node_subnet), "%s", optarg);
            break;
        case 'P':
            snprintf(cfg.pod_subnet, sizeof(cfg.pod_subnet), "%s", optarg);
            break;
        case 'b':
            bin = optarg;
            break;
        case ':':
            return usage(usage_up, "flag needs an argument: %s", argv[optind - 1]);
        default:
            return usage(usage_up, "unknown flag: %s", argv[optind - 1]);
        }
    }
    if (optind >= argc) return usage(usage_up, "%s", "a manifest directory is required: zmesh up <dir>");
    if (optind + 1 < argc) return usage(usage_up, "unexpected argument \"%s\"", argv[optind + 1]);
    const char *dir = argv[optind];
    if (up_state_abs(state, cfg.state, sizeof(cfg.state))) return 1;
    char err[1024], path[CLUSTER_PATH_MAX + 64];
    if (bin)
        up_state_abs(bin, cfg.bin_dir, sizeof(cfg.bin_dir));
    else {
        ssize_t k = readlink("/proc/self/exe", cfg.bin_dir, sizeof(cfg.bin_dir) - 1);
        if (k <= 0) return 1;
        cfg.bin_dir[k] = '\0';
        char *sl = strrchr(cfg.bin_dir, '/');
        if (sl) *sl = '\0';
    }
    static const char *const needed[] = {"zmeshd", "zmesh-cni", "ztunnel", NULL};
    for (const char *const *q = needed; *q; q++) {
        snprintf(path, sizeof(path), "%s/%s", cfg.bin_dir, *q);
        if (access(path, X_OK) && (cfg.mesh || strcmp(*q, "ztunnel"))) {
            fprintf(stderr, "Error: %s is missing (make all; or pass --bin-dir)\n", path);
            return 1;
        }
    }
    for (const char *const *q = (const char *const[]){"bridge", "host-local", "loopback", NULL}; *q; q++) {
        snprintf(path, sizeof(path), "%s/%s", CNI_SYSTEM_DIR, *q);
        if (access(path, X_OK)) {
            fprintf(stderr,
                    "Error: the CNI plugin %s is missing (apt-get install containernetworking-plugins)\n",
                    path);
            return 1;
        }
    }

    /* 1. The manifests, all checked before anything is created. */
    struct cluster_warned w = {0};
    json_t *objs = NULL;
    int rc = cluster_manifests_read(dir, &objs, &w, report_stderr, NULL);
    if (!rc && check_waypoints(objs)) {
        json_decref(objs);
        rc = -EINVAL;
    }
    if (rc == -EINVAL) {
        fprintf(stderr, "Error: %s has invalid manifests (above); nothing was started\n", dir);
        return 1;
    }
    if (rc) {
        fprintf(stderr, "Error: cannot read %s: %s\n", dir, strerror(-rc));
        return 1;
    }
    size_t i;
    json_t *o;
    json_array_foreach(objs, i, o) if (!strcmp(cluster_obj_kind(o), "Node"))
    {
        if (cfg.n_nodes == CLUSTER_MAX_NODES) break;
        snprintf(cfg.nodes[cfg.n_nodes++].name, sizeof(cfg.nodes[0].name), "%s", cluster_obj_name(o));
    }
    if (cfg.n_nodes && nodes_given)
        fprintf(stderr, "warning: --nodes ignored: the manifests declare %zu Node objects\n", cfg.n_nodes);
    if (!cfg.n_nodes) {
        cfg.n_nodes = (size_t)nodes;
        for (size_t k = 0; k < cfg.n_nodes; k++)
            snprintf(cfg.nodes[k].name, sizeof(cfg.nodes[k].name), "node%zu", k + 1);
    }
    if (cluster_cfg_derive(&cfg, err, sizeof(err))) {
        fprintf(stderr, "Error: %s\n", err);
        json_decref(objs);
        return EXIT_USAGE;
    }
    int bad_nodes = 0;
    json_array_foreach(objs, i, o)
    {
        const char *nn = json_string_value(json_object_get(json_object_get(o, "spec"), "nodeName"));
        if (strcmp(cluster_obj_kind(o), "Pod") || !nn || !*nn || cluster_node_find(&cfg, nn)) continue;
        fprintf(stderr, "error: pod %s/%s: spec.nodeName: \"%s\" is not a node of this cluster (nodes:",
                cluster_obj_ns(o), cluster_obj_name(o), nn);
        for (size_t k = 0; k < cfg.n_nodes; k++)
            fprintf(stderr, " %s", cfg.nodes[k].name);
        fprintf(stderr, ")\n");
        bad_nodes++;
    }
    if (bad_nodes) {
        json_decref(objs);
        fprintf(stderr, "Error: %s has invalid manifests (above); nothing was started\n", dir);
        return 1;
    }

    /* 2. One cluster per state directory. */
    if (controller_pid(cfg.state) > 0) {
        fprintf(stderr, "Error: a cluster is already up in %s (zmesh down --state-dir %s first)\n", cfg.state,
                cfg.state);
        json_decref(objs);
        return 1;
    }
    snprintf(path, sizeof(path), "%s/record", cfg.state);
    if (!access(path, F_OK)) {
        fprintf(
            stderr,
            "Error: %s holds what a previous cluster left (its controller is gone); zmesh down --state-dir "
            "%s removes it\n",
            cfg.state, cfg.state);
        json_decref(objs);
        return 1;
    }
    static const char *const dirs[] = {"", "api", "pods", "logs", "zmeshd", "cni/bin", NULL};
    for (const char *const *q = dirs; *q; q++) {
        snprintf(path, sizeof(path), "%s/%s", cfg.state, *q);
        if ((rc = cluster_mkdirs(path, 0755))) {
            fprintf(stderr, "Error: cannot create %s: %s\n", path, strerror(-rc));
            json_decref(objs);
            return 1;
        }
    }
    for (size_t k = 0; k < cfg.n_nodes; k++) {
        snprintf(path, sizeof(path), "%s/nodes/%s/ipam", cfg.state, cfg.nodes[k].name);
        cluster_mkdirs(path, 0755);
    }
    if (cluster_cfg_save(&cfg, err, sizeof(err))) {
        fprintf(stderr, "Error: %s\n", err);
        json_decref(objs);
        return 1;
    }

    /* 3. The node network. Node-to-node frames cross the host bridge; with br_netfilter they also cross the
     * host's FORWARD chain, which some hosts (Docker's) set to DROP: say so rather than let pods time out. */
    {
        char *v = NULL;
        bool brnf =
            !cluster_read_file("/proc/sys/net/bridge/bridge-nf-call-iptables", 64, &v, NULL) && v[0] == '1';
        free(v);
        FILE *pf = brnf ? popen("iptables -w -S FORWARD 2>/dev/null", "r") : NULL;
        char line[256];
        if (pf && fgets(line, sizeof(line), pf) && !strncmp(line, "-P FORWARD DROP", 15))
            fprintf(
                stderr,
                "warning: the host's iptables FORWARD policy is DROP and bridged traffic passes it "
                "(br_netfilter): allow the cluster's bridge with iptables -I FORWARD -i %s -o %s -j ACCEPT\n",
                cfg.bridge, cfg.bridge);
        if (pf) pclose(pf);
    }
    rc = net_bridge_up(&cfg, err, sizeof(err));
    for (size_t k = 0; !rc && k < cfg.n_nodes; k++)
        if (!(rc = net_node_up(&cfg, k, err, sizeof(err)))) rc = net_cni_setup(&cfg, k, err, sizeof(err));
    if (rc) {
        fprintf(stderr, "Error: %s\n", err);
        teardown(cfg.state, false);
        json_decref(objs);
        return 1;
    }

    /* 4. The controller, as a daemon. Containers run in the manifests' directory (no image WORKDIR). */
    char workdir[CLUSTER_PATH_MAX];
    manifest_dir_of(dir, workdir, sizeof(workdir));
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "Error: fork: %s\n", strerror(errno));
        teardown(cfg.state, false);
        return 1;
    }
    if (pid == 0) {
        setsid();
        /* Every path it uses is absolute; a daemon does not pin the directory zmesh up ran in. */
        if (chdir("/")) _exit(1);
        snprintf(path, sizeof(path), "%s/logs/controller.log", cfg.state);
        int lfd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644),
            nfd = open("/dev/null", O_RDONLY);
        if (lfd >= 0) {
            dup2(lfd, 1);
            dup2(lfd, 2);
            close(lfd);
        }
        if (nfd >= 0) {
            dup2(nfd, 0);
            close(nfd);
        }
        char start[32], pidline[64];
        net_proc_start(getpid(), start, sizeof(start));
        snprintf(pidline, sizeof(pidline), "%d %s\n", (int)getpid(), start);
        snprintf(path, sizeof(path), "%s/controller.pid", cfg.state);
        cluster_write_atomic(path, pidline, strlen(pidline));
        int st = ctl_run(&cfg, objs, workdir);
        unlink(path);
        _exit(st);
    }
    json_decref(objs);
    if (wait_ready(cfg.state, (int)timeout_s, pid)) return 1;
    /* Only the Ready ones: a waypoint pod that is not ready yet does not hold up back (it is a note). */
    size_t npods = 0, pi, ci;
    json_t *pods = up_api_list(cfg.state, "Pod", NULL), *po, *cond;
    json_array_foreach(pods, pi, po)
        json_array_foreach(json_object_get(json_object_get(po, "status"), "conditions"), ci, cond)
    {
        const char *t = json_string_value(json_object_get(cond, "type")),
                   *v = json_string_value(json_object_get(cond, "status"));
        if (t && v && !strcmp(t, "Ready") && !strcmp(v, "True")) npods++;
    }
    json_decref(pods);
    printf("cluster up: %zu nodes (%s-*, bridge %s, %s/24), %zu pods ready; zmeshd at https://%s:%d "
           "(debug %s:%d)%s\n",
           cfg.n_nodes, cfg.prefix, cfg.bridge, cfg.node_subnet, npods, cfg.host_ip, CLUSTER_XDS_PORT,
           cfg.host_ip, CLUSTER_DEBUG_PORT, cfg.mesh ? "" : "; no mesh (--no-mesh)");
    printf("state in %s; zmesh get pods -o wide --state-dir %s\n", cfg.state, cfg.state);
    return 0;
}

/* ---- down ---- */

static const char usage_down[] =
    "Remove the local cluster: every pod (CNI DEL), process, network namespace, route, the bridge and the\n"
    "state files. Works from the state directory's record, also after the controller crashed.\n"
    "\n"
    "Usage:\n"
    "  zmesh down [--state-dir DIR]\n";

static const struct option state_opts[] = {
    {"state-dir", required_argument, NULL, 's'},
    {"namespace", required_argument, NULL, 'n'},
    {"all-namespaces", no_argument, NULL, 'A'},
    {"output", required_argument, NULL, 'o'},
    {"container", required_argument, NULL, 'c'},
    {"filename", required_argument, NULL, 'f'},
    {"follow", no_argument, NULL, 'F'},
    {"overwrite", no_argument, NULL, 'O'},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

struct common {
    char state[CLUSTER_PATH_MAX];
    const char *ns, *output, *container, *file;
    bool all_ns, follow, overwrite;
};

/* Parses the shared flags (only those in allowed); the positional arguments are left at argv[optind..]. */
static int parse_common(int argc, char **argv, const char *allowed, const char *text, struct common *c)
{
    int ch;
    const char *state = state_default();
    memset(c, 0, sizeof(*c));
    optind = 1;
    opterr = 0;
    /* kubectl's -f is --filename (an argument) for apply and delete, --follow (none) for logs. */
    const char *shorts = strchr(allowed, 'F') ? ":hn:Ao:c:f" : ":hn:Ao:c:f:";
    while ((ch = getopt_long(argc, argv, shorts, state_opts, NULL)) != -1) {
        if (ch == 'h') {
            fputs(text, stdout);
            return -1;
        }
        if (ch == ':') return usage(text, "flag needs an argument: %s", argv[optind - 1]);
        if (ch == 'f' && strchr(allowed, 'F')) ch = 'F';
        if (ch == '?' || !strchr(allowed, ch)) return usage(text, "unknown flag: %s", argv[optind - 1]);
        switch (ch) {
        case 's':
            state = optarg;
            break;
        case 'n':
            c->ns = optarg;
            break;
        case 'A':
            c->all_ns = true;
            break;
        case 'o':
            c->output = optarg;
            break;
        case 'c':
            c->container = optarg;
            break;
        case 'f':
            c->file = optarg;
            break;
        case 'F':
            c->follow = true;
            break;
        case 'O':
            c->overwrite = true;
            break;
        }
    }
    up_state_abs(state, c->state, sizeof(c->state));
    return 0;
}

int cmd_down(int argc, char **argv)
{
    struct common c;
    int rc = parse_common(argc, argv, "s", usage_down, &c);
    if (rc) return rc < 0 ? 0 : rc;
    if (optind < argc) return usage(usage_down, "unexpected argument \"%s\"", argv[optind]);
    char path[CLUSTER_PATH_MAX + 32], err[1024];
    snprintf(path, sizeof(path), "%s/record", c.state);
    pid_t pid = controller_pid(c.state);
    if (!pid && access(path, F_OK)) {
        printf("no cluster in %s: nothing to do\n", c.state);
        return 0;
    }
    if (pid) {
        /* The controller stops every pod (SIGTERM, grace, CNI DEL) and its components, then exits. */
        json_t *req = json_pack("{s:s}", "op", "shutdown"), *resp = NULL;
        if (ctl_call(c.state, req, &resp, 10000, err, sizeof(err)))
            fprintf(stderr, "warning: %s; cleaning up from the record\n", err);
        json_decref(req);
        json_decref(resp);
        int64_t deadline = cluster_now_ms() + DOWN_WAIT_MS;
        while (controller_pid(c.state) == pid && kill(pid, 0) == 0 && cluster_now_ms() < deadline)
            usleep(50 * 1000);
        if (kill(pid, 0) == 0 && controller_pid(c.state) == pid) {
            fprintf(stderr, "warning: the controller (pid %d) did not stop; killed\n", (int)pid);
            kill(pid, SIGKILL);
        }
    } else {
        printf("the controller is not running: cleaning up from %s\n", path);
    }
    int problems = teardown(c.state, true);
    if (problems) {
        fprintf(stderr,
                "Error: %d resources could not be removed (above); %s keeps the record for another try\n",
                problems, c.state);
        return 1;
    }
    printf("cluster in %s removed\n", c.state);
    return 0;
}

/* ---- apply / delete ---- */

static const char usage_apply[] =
    "Apply manifests to the running cluster: new pods start, changed objects are rewritten in api/ (zmeshd\n"
    "picks them up), as kubectl apply.\n"
    "\n"
    "Usage:\n"
    "  zmesh apply -f <file|dir> [--state-dir DIR]\n";
static const char usage_delete[] =
    "Delete objects from the running cluster: pods are stopped (SIGTERM, grace period, SIGKILL), their CNI\n"
    "DEL runs and their network namespace is removed.\n"
    "\n"
    "Usage:\n"
    "  zmesh delete -f <file|dir> [--state-dir DIR]\n"
    "  zmesh delete <kind> <name> [-n NS] [--state-dir DIR]\n";

static int print_results(json_t *resp)
{
    size_t i;
    json_t *r;
    json_array_foreach(json_object_get(resp, "results"), i, r) printf("%s\n", json_string_value(r));
    if (!json_is_true(json_object_get(resp, "ok"))) {
        fprintf(stderr, "Error from the controller: %s\n", json_string_value(json_object_get(resp, "error")));
        return 1;
    }
    return 0;
}

static const char *kind_of(const char *word)
{
    static const char *const m[][4] = {
        {"Pod", "pod", "pods", "po"},
        {"Service", "service", "services", "svc"},
        {"Namespace", "namespace", "namespaces", "ns"},
        {"Node", "node", "nodes", "no"},
        {"ServiceAccount", "serviceaccount", "serviceaccounts", "sa"},
        {"AuthorizationPolicy", "authorizationpolicy", "authorizationpolicies", "ap"},
        {"PeerAuthentication", "peerauthentication", "peerauthentications", "pa"},
        {"Gateway", "gateway", "gateways", "gtw"},
    };
    for (size_t i = 0; i < sizeof(m) / sizeof(m[0]); i++)
        for (int j = 0; j < 4; j++)
            if (!strcmp(m[i][j], word)) return m[i][0];
    return NULL;
}

static int apply_or_delete(int argc, char **argv, bool apply)
{
    const char *text = apply ? usage_apply : usage_delete;
    struct common c;
    int rc = parse_common(argc, argv, apply ? "sf" : "sfn", text, &c);
    if (rc) return rc < 0 ? 0 : rc;
    json_t *objs = NULL;
    char err[1024];
    if (c.file) {
        if (optind < argc) return usage(text, "unexpected argument \"%s\"", argv[optind]);
        struct cluster_warned w = {0};
        rc = cluster_manifests_read(c.file, &objs, &w, report_stderr, NULL);
        if (!rc && apply && check_waypoints(objs)) {
            json_decref(objs);
            rc = -EINVAL;
        }
        if (rc == -EINVAL) {
            fprintf(stderr, "Error: %s has invalid manifests (above); nothing was %s\n", c.file,
                    apply ? "applied" : "deleted");
            return 1;
        }
        if (rc) {
            fprintf(stderr, "Error: cannot read %s: %s\n", c.file, strerror(-rc));
            return 1;
        }
    } else if (!apply && optind + 2 == argc) {
        const char *kind = kind_of(argv[optind]);
        if (!kind) return usage(text, "unknown resource type \"%s\"", argv[optind]);
        const char *ns = cluster_kind_cluster_scoped(kind) ? "" : c.ns ? c.ns : "default";
        objs = json_pack("[{s:s,s:{s:s,s:s}}]", "kind", kind, "metadata", "name", argv[optind + 1],
                         "namespace", ns);
    } else {
        return usage(text, "%s",
                     apply ? "-f <file|dir> is required" : "-f <file|dir> or <kind> <name> is required");
    }
    char workdir[CLUSTER_PATH_MAX] = "";
    if (c.file) manifest_dir_of(c.file, workdir, sizeof(workdir));
    json_t *req = json_pack("{s:s,s:o,s:s}", "op", apply ? "apply" : "delete", "objects", objs, "workdir",
                            workdir),
           *resp = NULL;
    rc = ctl_call(c.state, req, &resp, CALL_TIMEOUT_MS, err, sizeof(err));
    json_decref(req);
    if (rc) {
        fprintf(stderr, "Error: %s\n", err);
        return 1;
    }
    rc = print_results(resp);
    json_decref(resp);
    return rc;
}

int cmd_apply(int argc, char **argv)
{
    return apply_or_delete(argc, argv, true);
}

int cmd_delete(int argc, char **argv)
{
    return apply_or_delete(argc, argv, false);
}

/* ---- get ---- */

static const char usage_get[] =
    "List objects of the local cluster, as kubectl get (pods of every namespace unless -n is given).\n"
    "\n"
    "Usage:\n"
    "  zmesh get pods|nodes|services|namespaces|gateways [-n NS] [-o wide|json] [--state-dir DIR]\n";

/* Every api/ object of a kind, sorted by namespace and name (the file names sort that way). */
json_t *up_api_list(const char *state, const char *kind, const char *ns)
{
    char dir[CLUSTER_PATH_MAX + 8], prefix[64];
    snprintf(dir, sizeof(dir), "%s/api", state);
    cluster_api_file(kind, "", "", prefix, sizeof(prefix));
    prefix[strlen(prefix) - 6] = '\0'; /* "pod_" */
    json_t *out = json_array();
    struct dirent **names = NULL;
    int n = scandir(dir, &names, NULL, alphasort);
    for (int i = 0; i < n; i++) {
        const char *f = names[i]->d_name;
        if (!strncmp(f, prefix, strlen(prefix)) && strstr(f, ".json") && f[0] != '.') {
            char p[CLUSTER_PATH_MAX * 2];
            snprintf(p, sizeof(p), "%s/%s", dir, f);
            json_t *o = json_load_file(p, 0, NULL);
            if (o && (!ns || !strcmp(cluster_obj_ns(o), ns)))
                json_array_append_new(out, o);
            else
                json_decref(o);
        }
        free(names[i]);
    }
    free(names);
    return out;
}

json_t *up_api_get(const char *state, const char *kind, const char *ns, const char *name)
{
    char f[CLUSTER_PATH_MAX], p[CLUSTER_PATH_MAX * 3];
    cluster_api_file(kind, ns, name, f, sizeof(f));
    snprintf(p, sizeof(p), "%s/api/%s", state, f);
    return json_load_file(p, 0, NULL);
}

static void age(const json_t *o, char *buf, size_t n)
{
    time_t t;
    const char *ts = json_string_value(json_object_get(json_object_get(o, "metadata"), "creationTimestamp"));
    if (!ts || zc_parse_rfc3339(ts, &t)) {
        snprintf(buf, n, "<unknown>");
        return;
    }
    ps_human_duration((int64_t)(time(NULL) - t) * 1000, buf, n);
}

static const char *label(const json_t *o, const char *k)
{
    return json_string_value(json_object_get(json_object_get(json_object_get(o, "metadata"), "labels"), k));
}

/* ambient when the pod's label says so, or its namespace's does and the pod does not opt out (zmeshd's
 * enrolment rule, src/zmeshd/README.md). */
static const char *pod_mode(const char *state, const json_t *pod)
{
    const char *pl = label(pod, "istio.io/dataplane-mode");
    if (pl && !strcmp(pl, "ambient")) return "ambient";
    if (pl && !strcmp(pl, "none")) return "none";
    json_t *ns = up_api_get(state, "Namespace", "", cluster_obj_ns(pod));
    const char *nl = ns ? label(ns, "istio.io/dataplane-mode") : NULL;
    const char *m = nl && !strcmp(nl, "ambient") ? "ambient" : "none";
    json_decref(ns);
    return m;
}

/* kubectl's STATUS column: a waiting or terminated container's reason wins over the phase. */
static void pod_status_cells(const json_t *pod, char *ready, size_t rn, char *status, size_t sn,
                             char *restarts, size_t tn)
{
    const json_t *st = json_object_get(pod, "status"), *cs = json_object_get(st, "containerStatuses"), *c;
    size_t i, nready = 0,
              total = json_array_size(json_object_get(json_object_get(pod, "spec"), "containers"));
    long r = 0;
    const char *phase = json_string_value(json_object_get(st, "phase"));
    snprintf(status, sn, "%s", phase ? phase : "Unknown");
    json_array_foreach(cs, i, c)
    {
        if (json_is_true(json_object_get(c, "ready"))) nready++;
        r += (long)json_integer_value(json_object_get(c, "restartCount"));
        const char *wr = json_string_value(
            json_object_get(json_object_get(json_object_get(c, "state"), "waiting"), "reason"));
        if (wr && strcmp(wr, "PodInitializing")) snprintf(status, sn, "%s", wr);
    }
    if (phase && !strcmp(phase, "Succeeded")) snprintf(status, sn, "Completed");
    if (phase && !strcmp(phase, "Failed")) snprintf(status, sn, "Error");
    snprintf(ready, rn, "%zu/%zu", nready, total);
    snprintf(restarts, tn, "%ld", r);
}

int cmd_get(int argc, char **argv)
{
    struct common c;
    int rc = parse_common(argc, argv, "snAo", usage_get, &c);
    if (rc) return rc < 0 ? 0 : rc;
    if (optind >= argc)
        return usage(usage_get, "%s", "a resource type is required (pods, nodes, services, namespaces)");
    const char *kind = kind_of(argv[optind]);
    if (!kind) return usage(usage_get, "unknown resource type \"%s\"", argv[optind]);
    const char *name = optind + 1 < argc ? argv[optind + 1] : NULL;
    bool wide = c.output && !strcmp(c.output, "wide"), json = c.output && !strcmp(c.output, "json");
    if (c.output && !wide && !json)
        return usage(usage_get, "output format \"%s\" not supported (wide or json)", c.output);
    char path[CLUSTER_PATH_MAX + 32];
    snprintf(path, sizeof(path), "%s/cluster.json", c.state);
    if (access(path, F_OK)) {
        fprintf(stderr, "Error: no cluster in %s (zmesh up <dir> --state-dir %s)\n", c.state, c.state);
        return 1;
    }
    json_t *list = up_api_list(c.state, kind, cluster_kind_cluster_scoped(kind) ? NULL : c.ns), *o;
    if (name) {
        json_t *one = json_array();
        size_t i;
        json_array_foreach(list, i, o) if (!strcmp(cluster_obj_name(o), name)) json_array_append(one, o);
        json_decref(list);
        list = one;
        if (!json_array_size(list)) {
            fprintf(stderr, "Error: %s \"%s\" not found\n", argv[optind], name);
            json_decref(list);
            return 1;
        }
    }
    if (json) {
        json_t *l = json_pack("{s:s,s:s,s:O}", "apiVersion", "v1", "kind", "List", "items", list);
        char *s = json_dumps(l, JSON_INDENT(4));
        printf("%s\n", s ? s : "");
        free(s);
        json_decref(l);
        json_decref(list);
        return 0;
    }
    if (!json_array_size(list)) {
        if (c.ns)
            fprintf(stderr, "No resources found in %s namespace.\n", c.ns);
        else
            fprintf(stderr, "No resources found\n");
        json_decref(list);
        return 0;
    }
    bool show_ns = !cluster_kind_cluster_scoped(kind) && !c.ns;
    struct zc_table *t = NULL;
    size_t i;
    char a[32];
    if (!strcmp(kind, "Pod")) {
        static const char *const h[] = {"NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS",
                                        "AGE",       "IP",   "NODE",  "MODE"};
        size_t off = show_ns ? 0 : 1, nc = (wide ? 9 : 6) - off;
        t = zc_table_new(nc, 3);
        zc_table_row(t, h + off);
        json_array_foreach(list, i, o)
        {
            char ready[16], status[64], restarts[16];
            pod_status_cells(o, ready, sizeof(ready), status, sizeof(status), restarts, sizeof(restarts));
            age(o, a, sizeof(a));
            const char *ip = json_string_value(json_object_get(json_object_get(o, "status"), "podIP"));
            const char *node = json_string_value(json_object_get(json_object_get(o, "spec"), "nodeName"));
            const char *row[] = {
                cluster_obj_ns(o),      cluster_obj_name(o), ready, status, restarts, a, ip ? ip : "<none>",
                node ? node : "<none>", pod_mode(c.state, o)};
            zc_table_row(t, row + off);
        }
    } else if (!strcmp(kind, "Node")) {
        static const char *const h[] = {"NAME", "STATUS", "ROLES", "AGE", "INTERNAL-IP", "POD-CIDR"};
        t = zc_table_new(wide ? 6 : 4, 3);
        zc_table_row(t, h);
        json_array_foreach(list, i, o)
        {
            const json_t *addr =
                json_array_get(json_object_get(json_object_get(o, "status"), "addresses"), 0);
            const char *ip = json_string_value(json_object_get(addr, "address"));
            const char *cidr = json_string_value(json_object_get(json_object_get(o, "spec"), "podCIDR"));
            age(o, a, sizeof(a));
            const char *row[] = {cluster_obj_name(o),   "Ready", "<none>", a, ip ? ip : "<none>",
                                 cidr ? cidr : "<none>"};
            zc_table_row(t, row);
        }
    } else if (!strcmp(kind, "Service")) {
        static const char *const h[] = {"NAMESPACE", "NAME", "TYPE",    "CLUSTER-IP",
                                        "PORT(S)",   "AGE",  "SELECTOR"};
        size_t off = show_ns ? 0 : 1;
        t = zc_table_new((wide ? 7 : 6) - off, 3);
        zc_table_row(t, h + off);
        json_array_foreach(list, i, o)
        {
            const json_t *spec = json_object_get(o, "spec"), *p;
            const char *type = json_string_value(json_object_get(spec, "type"));
            const char *ip = json_string_value(json_object_get(spec, "clusterIP"));
            char ports[256] = "", sel[256] = "";
            size_t k, l = 0;
            json_array_foreach(json_object_get(spec, "ports"), k, p)
            {
                const char *proto = json_string_value(json_object_get(p, "protocol"));
                l += (size_t)snprintf(ports + l, l < sizeof(ports) ? sizeof(ports) - l : 0, "%s%lld/%s",
                                      k ? "," : "", (long long)json_integer_value(json_object_get(p, "port")),
                                      proto ? proto : "TCP");
                if (l >= sizeof(ports)) break;
            }
            const char *sk;
            json_t *sv;
            l = 0;
            json_object_foreach(json_object_get(spec, "selector"), sk, sv)
            {
                l += (size_t)snprintf(sel + l, l < sizeof(sel) ? sizeof(sel) - l : 0, "%s%s=%s", l ? "," : "",
                                      sk, json_string_value(sv) ? json_string_value(sv) : "");
                if (l >= sizeof(sel)) break;
            }
            age(o, a, sizeof(a));
            const char *row[] = {cluster_obj_ns(o),    cluster_obj_name(o),       type ? type : "ClusterIP",
                                 ip ? ip : "<none>",   *ports ? ports : "<none>", a,
                                 *sel ? sel : "<none>"};
            zc_table_row(t, row + off);
        }
    } else if (!strcmp(kind, "Gateway")) {
        /* The Gateway CRD's printer columns (gateway-api config/crd: CLASS, ADDRESS, PROGRAMMED, AGE). */
        static const char *const h[] = {"NAMESPACE", "NAME", "CLASS", "ADDRESS", "PROGRAMMED", "AGE"};
        size_t off = show_ns ? 0 : 1;
        t = zc_table_new(6 - off, 3);
        zc_table_row(t, h + off);
        json_array_foreach(list, i, o)
        {
            const json_t *st = json_object_get(o, "status"), *cond;
            const char *cls =
                json_string_value(json_object_get(json_object_get(o, "spec"), "gatewayClassName"));
            const char *addr = json_string_value(
                json_object_get(json_array_get(json_object_get(st, "addresses"), 0), "value"));
            const char *prog = "";
            size_t k;
            json_array_foreach(json_object_get(st, "conditions"), k, cond)
            {
                const char *ty = json_string_value(json_object_get(cond, "type"));
                const char *v = json_string_value(json_object_get(cond, "status"));
                if (ty && v && !strcmp(ty, "Programmed")) prog = v;
            }
            age(o, a, sizeof(a));
            const char *row[] = {
                cluster_obj_ns(o), cluster_obj_name(o), cls ? cls : "", addr ? addr : "", prog, a};
            zc_table_row(t, row + off);
        }
    } else if (!strcmp(kind, "Namespace")) {
        static const char *const h[] = {"NAME", "STATUS", "AGE", "DATAPLANE-MODE"};
        t = zc_table_new(wide ? 4 : 3, 3);
        zc_table_row(t, h);
        json_array_foreach(list, i, o)
        {
            const char *m = label(o, "istio.io/dataplane-mode");
            age(o, a, sizeof(a));
            const char *row[] = {cluster_obj_name(o), "Active", a, m ? m : "<none>"};
            zc_table_row(t, row);
        }
    } else {
        static const char *const h[] = {"NAMESPACE", "NAME", "AGE"};
        size_t off = show_ns ? 0 : 1;
        t = zc_table_new(3 - off, 3);
        zc_table_row(t, h + off);
        json_array_foreach(list, i, o)
        {
            age(o, a, sizeof(a));
            const char *row[] = {cluster_obj_ns(o), cluster_obj_name(o), a};
            zc_table_row(t, row + off);
        }
    }
    rc = t && zc_table_flush(t, stdout) ? 1 : 0;
    json_decref(list);
    return rc;
}

/* ---- exec / logs ---- */

static const char usage_exec[] =
    "Run a command in a pod's network namespace (with its first container's env), as kubectl exec; the exit\n"
    "status is the command's.\n"
    "\n"
    "Usage:\n"
    "  zmesh exec <pod> [-n NS] [-c CONTAINER] [--state-dir DIR] -- <command> [args...]\n";

int cmd_exec(int argc, char **argv)
{
    int dd = -1;
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--")) {
            dd = i;
            break;
        }
    if (dd < 0 || dd + 1 >= argc) {
        if (argc > 1 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
            fputs(usage_exec, stdout);
            return 0;
        }
        return usage(usage_exec, "%s", "a command after -- is required");
    }
    struct common c;
    int rc = parse_common(dd, argv, "snc", usage_exec, &c);
    if (rc) return rc < 0 ? 0 : rc;
    if (optind + 1 != dd) return usage(usage_exec, "%s", "exactly one pod name is required");
    const char *pod = argv[optind], *ns = c.ns ? c.ns : "default";
    struct cluster_cfg cfg;
    char err[1024], netns[CLUSTER_PATH_MAX];
    if (cluster_cfg_load(c.state, &cfg, err, sizeof(err))) {
        fprintf(stderr, "Error: %s\n", err);
        return 1;
    }
    json_t *o = up_api_get(c.state, "Pod", ns, pod);
    if (!o) {
        fprintf(stderr, "Error: pod \"%s\" not found in namespace %s\n", pod, ns);
        return 1;
    }
    cluster_pod_netns(&cfg, ns, pod, netns, sizeof(netns));
    if (!net_netns_exists(netns)) {
        fprintf(stderr, "Error: pod %s/%s has no sandbox yet (%s)\n", ns, pod, netns);
        return 1;
    }
    /* The container's env, as kubectl exec gives the container's. */
    json_t *cs = json_object_get(json_object_get(o, "spec"), "containers"), *ct = json_array_get(cs, 0), *e;
    size_t i;
    if (c.container) {
        ct = NULL;
        json_array_foreach(
            cs, i, e) if (!strcmp(json_string_value(json_object_get(e, "name")) ?: "", c.container)) ct = e;
        if (!ct) {
            fprintf(stderr, "Error: container %s is not valid for pod %s\n", c.container, pod);
            return 1;
        }
    }
    json_array_foreach(json_object_get(ct, "env"), i, e)
    {
        const char *k = json_string_value(json_object_get(e, "name")),
                   *v = json_string_value(json_object_get(e, "value"));
        if (k && v) setenv(k, v, 1);
    }
    if (net_enter(netns)) {
        fprintf(stderr, "Error: cannot enter %s: %s\n", netns, strerror(errno));
        return 1;
    }
    json_decref(o);
    fflush(stdout);
    execvp(argv[dd + 1], argv + dd + 1);
    fprintf(stderr, "Error: cannot run %s: %s\n", argv[dd + 1], strerror(errno));
    return errno == ENOENT ? 127 : 126;
}

static const char usage_logs[] = "Print a container's log, or a cluster component's.\n"
                                 "\n"
                                 "Usage:\n"
                                 "  zmesh logs <pod> [-n NS] [-c CONTAINER] [-f] [--state-dir DIR]\n"
                                 "  zmesh logs ztunnel/<node> | agent/<node> | zmeshd | controller [-f]\n";

int cmd_logs(int argc, char **argv)
{
    struct common c;
    int rc = parse_common(argc, argv, "sncF", usage_logs, &c);
    if (rc) return rc < 0 ? 0 : rc;
    if (optind + 1 != argc) return usage(usage_logs, "%s", "exactly one pod or component is required");
    const char *what = argv[optind], *ns = c.ns ? c.ns : "default";
    char path[CLUSTER_PATH_MAX * 2];
    const char *slash = strchr(what, '/');
    if (!strcmp(what, "zmeshd") || !strcmp(what, "controller"))
        snprintf(path, sizeof(path), "%s/logs/%s.log", c.state, what);
    else if (slash && (!strncmp(what, "ztunnel/", 8) || !strncmp(what, "agent/", 6)))
        snprintf(path, sizeof(path), "%s/logs/%.*s-%s.log", c.state, (int)(slash - what), what, slash + 1);
    else {
        if (slash && !strncmp(what, "pod/", 4)) what += 4;
        json_t *o = up_api_get(c.state, "Pod", ns, what);
        if (!o) {
            fprintf(stderr, "Error: pod \"%s\" not found in namespace %s\n", what, ns);
            return 1;
        }
        json_t *cs = json_object_get(json_object_get(o, "spec"), "containers"), *e;
        const char *cn = c.container;
        size_t i;
        if (!cn && json_array_size(cs) == 1)
            cn = json_string_value(json_object_get(json_array_get(cs, 0), "name"));
        bool found = false;
        json_array_foreach(cs, i, e) if (cn && !strcmp(json_string_value(json_object_get(e, "name")) ?: "",
                                                       cn)) found = true;
        if (!found) {
            fprintf(stderr, "Error: %s for pod %s, choose one of: [",
                    cn ? "invalid container name" : "a container name must be specified", what);
            json_array_foreach(cs, i, e)
                fprintf(stderr, "%s%s", i ? " " : "", json_string_value(json_object_get(e, "name")));
            fprintf(stderr, "]\n");
            json_decref(o);
            return 1;
        }
        snprintf(path, sizeof(path), "%s/pods/%s_%s/%s.log", c.state, ns, what, cn);
        json_decref(o);
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "Error: %s: %s\n", path, strerror(errno));
        return 1;
    }
    char buf[65536];
    for (;;) {
        ssize_t k = read(fd, buf, sizeof(buf));
        if (k > 0) {
            fwrite(buf, 1, (size_t)k, stdout);
            continue;
        }
        if (k < 0 && errno == EINTR) continue;
        if (!c.follow) break;
        fflush(stdout);
        usleep(200 * 1000);
    }
    close(fd);
    return 0;
}

/* ---- label ---- */

static const char usage_label[] =
    "Set or remove labels of a namespace (or a pod), as kubectl label: KEY=VALUE sets, KEY- removes.\n"
    "\n"
    "Usage:\n"
    "  zmesh label ns <namespace> KEY=VALUE|KEY- ... [--overwrite] [--state-dir DIR]\n"
    "  zmesh label pod <pod> [-n NS] KEY=VALUE|KEY- ...\n";

int cmd_label(int argc, char **argv)
{
    struct common c;
    int rc = parse_common(argc, argv, "snO", usage_label, &c);
    if (rc) return rc < 0 ? 0 : rc;
    if (optind + 3 > argc)
        return usage(usage_label, "%s", "a kind, a name and at least one label are required");
    const char *kind = kind_of(argv[optind]);
    if (!kind || (strcmp(kind, "Namespace") && strcmp(kind, "Pod")))
        return usage(usage_label, "zmesh labels namespaces and pods, not \"%s\"", argv[optind]);
    const char *name = argv[optind + 1], *ns = !strcmp(kind, "Pod") ? (c.ns ? c.ns : "default") : "";
    json_t *cur = up_api_get(c.state, kind, ns, name);
    if (!cur) {
        fprintf(stderr, "Error: %s \"%s\" not found\n", !strcmp(kind, "Pod") ? "pods" : "namespaces", name);
        return 1;
    }
    json_t *set = json_object(), *rem = json_array();
    for (int i = optind + 2; i < argc; i++) {
        const char *a = argv[i], *eq = strchr(a, '=');
        size_t l = strlen(a);
        if (!eq && l > 1 && a[l - 1] == '-') {
            char k[256];
            snprintf(k, sizeof(k), "%.*s", (int)(l - 1), a);
            json_array_append_new(rem, json_string(k));
        } else if (eq && eq != a) {
            char k[256];
            snprintf(k, sizeof(k), "%.*s", (int)(eq - a), a);
            const char *old = label(cur, k);
            if (old && strcmp(old, eq + 1) && !c.overwrite) {
                fprintf(stderr, "Error: '%s' already has a value (%s), and --overwrite is false\n", k, old);
                json_decref(cur);
                return 1;
            }
            json_object_set_new(set, k, json_string(eq + 1));
        } else {
            json_decref(cur);
            return usage(usage_label, "invalid label \"%s\": expected KEY=VALUE or KEY-", a);
        }
    }
    json_decref(cur);
    json_t *req = json_pack("{s:s,s:s,s:s,s:s,s:o,s:o}", "op", "label", "kind", kind, "namespace", ns, "name",
                            name, "set", set, "remove", rem),
           *resp = NULL;
    char err[1024];
    rc = ctl_call(c.state, req, &resp, CALL_TIMEOUT_MS, err, sizeof(err));
    json_decref(req);
    if (rc) {
        fprintf(stderr, "Error: %s\n", err);
        return 1;
    }
    rc = print_results(resp);
    json_decref(resp);
    return rc;
}

/* ---- rollout ---- */

static const char usage_rollout[] =
    "Replace a node's ztunnel without losing connections: a new ztunnel (build/bin/ztunnel as it is now)\n"
    "starts beside the old one and takes the node agent's snapshot; once it is ready the old one gets\n"
    "SIGTERM, stops accepting and drains: its open connections go on until they end or until its\n"
    "termination deadline (25 s) passes. Waits (up to 60 s) until the new one is ready.\n"
    "\n"
    "Usage:\n"
    "  zmesh rollout ztunnel <node> [--state-dir DIR]\n";

/* The ztunnel of node with generation gen in a status answer (any generation when gen < 0: the one not
 * draining), or NULL. */
static json_t *node_ztunnel(json_t *status, const char *node, long long gen)
{
    size_t i;
    json_t *z;
    json_array_foreach(json_object_get(status, "ztunnels"), i, z)
    {
        const char *n = json_string_value(json_object_get(z, "node"));
        if (!n || strcmp(n, node)) continue;
        if (gen < 0 ? !json_is_true(json_object_get(z, "draining"))
                    : json_integer_value(json_object_get(z, "generation")) == gen)
            return z;
    }
    return NULL;
}

static json_t *ctl_status_call(const char *state, char *err, size_t errlen)
{
    json_t *st = NULL, *q = json_pack("{s:s}", "op", "status");
    int rc = ctl_call(state, q, &st, CALL_TIMEOUT_MS, err, errlen);
    json_decref(q);
    return rc ? NULL : st;
}

int cmd_rollout(int argc, char **argv)
{
    struct common c;
    int rc = parse_common(argc, argv, "s", usage_rollout, &c);
    if (rc) return rc < 0 ? 0 : rc;
    if (optind + 2 != argc || strcmp(argv[optind], "ztunnel"))
        return usage(usage_rollout, "%s", "expected: rollout ztunnel <node>");
    const char *node = argv[optind + 1];
    char err[1024];
    json_t *st = ctl_status_call(c.state, err, sizeof(err));
    if (!st) {
        fprintf(stderr, "Error: %s\n", err);
        return 1;
    }
    json_t *cur = node_ztunnel(st, node, -1);
    long long gen = cur ? json_integer_value(json_object_get(cur, "generation")) + 1 : -1;
    json_decref(st);
    json_t *req = json_pack("{s:s,s:s}", "op", "rollout", "node", node), *resp = NULL;
    rc = ctl_call(c.state, req, &resp, CALL_TIMEOUT_MS, err, sizeof(err));
    json_decref(req);
    if (rc) {
        fprintf(stderr, "Error: %s\n", err);
        return 1;
    }
    rc = print_results(resp);
    json_decref(resp);
    if (rc) return rc;
    int64_t deadline = cluster_now_ms() + 60000;
    for (;;) {
        if (!(st = ctl_status_call(c.state, err, sizeof(err)))) {
            fprintf(stderr, "Error: %s\n", err);
            return 1;
        }
        json_t *z = node_ztunnel(st, node, gen), *old = node_ztunnel(st, node, gen - 1);
        if (z && json_is_true(json_object_get(z, "ready")) &&
            (!old || json_is_true(json_object_get(old, "draining")))) {
            printf("ztunnel %s: generation %lld ready (pid %lld, admin port %lld); ", node, gen,
                   json_integer_value(json_object_get(z, "pid")),
                   json_integer_value(json_object_get(z, "admin_port")));
            if (old)
                printf("generation %lld (pid %lld) is draining\n", gen - 1,
                       json_integer_value(json_object_get(old, "pid")));
            else
                printf("generation %lld has exited\n", gen - 1);
            json_decref(st);
            return 0;
        }
        json_decref(st);
        if (cluster_now_ms() > deadline) {
            fprintf(stderr,
                    "Error: the new ztunnel on %s is not ready after 60s; see zmesh logs ztunnel/%s\n", node,
                    node);
            return 1;
        }
        usleep(100 * 1000);
    }
}

int up_ztunnel_admin(const char *node, char *netns, size_t nn, int *port, char *err, size_t errlen)
{
    struct cluster_cfg cfg;
    char state[CLUSTER_PATH_MAX];
    snprintf(state, sizeof(state), "%s", state_default());
    if (cluster_cfg_load(state, &cfg, err, errlen)) return -ENOENT;
    const struct cluster_node *n = cluster_node_find(&cfg, node);
    if (!n) {
        snprintf(err, errlen, "node \"%s\" is not in the local cluster in %s", node, state);
        return -ENOENT;
    }
    snprintf(netns, nn, "%s", n->netns);
    *port = 15000;
    /* The serving generation's admin port (a rollout alternates them); without a controller, the default. */
    char e2[256];
    json_t *st = ctl_status_call(state, e2, sizeof(e2)), *z = st ? node_ztunnel(st, node, -1) : NULL;
    if (z) *port = (int)json_integer_value(json_object_get(z, "admin_port"));
    json_decref(st);
    return 0;
}
