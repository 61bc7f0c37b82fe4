/* zmesh up's networking (cluster_net.h). The host side uses iproute2 commands rather than netlink code of
 * our own: they are the tools an operator reads in the log and could type, and the record lists the same
 * names. Pods are wired only by the real CNI plugins. */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli/cluster_net.h"

#define CMD_OUT_MAX 4096
#define CNI_OUT_MAX (1u << 20)

static void describe(char *const argv[], const char *out, char *err, size_t errlen)
{
    size_t k = 0;
    for (char *const *a = argv; *a && k + 1 < errlen; a++)
        k += (size_t)snprintf(err + k, errlen - k, "%s%s", a == argv ? "" : " ", *a);
    if (k < errlen) snprintf(err + k, errlen - k, ": %s", out && *out ? out : "failed");
    size_t l = strlen(err);
    while (l && (err[l - 1] == '\n' || err[l - 1] == ' '))
        err[--l] = '\0';
}

/* Runs argv with stdin from in (may be NULL), optionally in netns, with env (NULL: ours); captures stdout
 * into *out (malloc'd, may be NULL) and stderr into errbuf. Returns the exit status (>= 0) or -errno. */
static int run_full(char *const argv[], const char *netns, char *const env[], const char *in, char **out,
                    char *errbuf, size_t errlen)
{
    int pin[2] = {-1, -1}, pout[2] = {-1, -1}, perr[2] = {-1, -1};
    if (pipe2(pin, O_CLOEXEC) || pipe2(pout, O_CLOEXEC) || pipe2(perr, O_CLOEXEC)) return -errno;
    pid_t pid = fork();
    if (pid < 0) return -errno;
    if (pid == 0) {
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        dup2(pin[0], 0);
        dup2(pout[1], 1);
        dup2(perr[1], 2);
        if (netns && net_enter(netns)) {
            fprintf(stderr, "cannot enter network namespace %s: %s", netns, strerror(errno));
            _exit(127);
        }
        if (env)
            execvpe(argv[0], argv, env);
        else
            execvp(argv[0], argv);
        fprintf(stderr, "cannot run %s: %s", argv[0], strerror(errno));
        _exit(127);
    }
    close(pin[0]);
    close(pout[1]);
    close(perr[1]);
    if (in) {
        size_t len = strlen(in), off = 0;
        while (off < len) {
            ssize_t k = write(pin[1], in + off, len - off);
            if (k < 0 && errno == EINTR) continue;
            if (k <= 0) break;
            off += (size_t)k;
        }
    }
    close(pin[1]);
    size_t cap = 4096, n = 0, en = 0;
    char *o = malloc(cap);
    /* Reads both pipes to EOF; plugin output is small, so stderr is read after stdout (a plugin that wrote
     * more than a pipe's worth of stderr first would block; none does). */
    for (;;) {
        if (o && n + 1 >= cap && cap < CNI_OUT_MAX) {
            char *no = realloc(o, cap * 2);
            if (no) {
                o = no;
                cap *= 2;
            }
        }
        ssize_t k = o && n + 1 < cap ? read(pout[0], o + n, cap - n - 1) : read(pout[0], (char[256]){0}, 256);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) break;
        if (o && n + 1 < cap) n += (size_t)k;
    }
    close(pout[0]);
    if (o) o[n] = '\0';
    for (;;) {
        char tmp[512];
        ssize_t k = read(perr[0], tmp, sizeof(tmp));
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) break;
        if (errbuf && en + 1 < errlen) {
            size_t c = (size_t)k < errlen - en - 1 ? (size_t)k : errlen - en - 1;
            memcpy(errbuf + en, tmp, c);
            en += c;
        }
    }
    close(perr[0]);
    if (errbuf && errlen) errbuf[en < errlen ? en : errlen - 1] = '\0';
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR) {
            free(o);
            return -errno;
        }
    if (out)
        *out = o;
    else
        free(o);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

int net_run(char *const argv[], char *err, size_t errlen)
{
    char eb[CMD_OUT_MAX];
    char *out = NULL;
    int rc = run_full(argv, NULL, NULL, NULL, &out, eb, sizeof(eb));
    if (rc == 0) {
        free(out);
        return 0;
    }
    describe(argv, *eb ? eb : out, err, errlen);
    free(out);
    return rc < 0 ? rc : -EIO;
}

int net_enter(const char *netns)
{
    char p[CLUSTER_PATH_MAX + 16];
    snprintf(p, sizeof(p), "/run/netns/%s", netns);
    int fd = open(p, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    int rc = setns(fd, CLONE_NEWNET);
    int e = errno;
    close(fd);
    errno = e;
    return rc;
}

bool net_netns_exists(const char *netns)
{
    char p[CLUSTER_PATH_MAX + 16];
    snprintf(p, sizeof(p), "/run/netns/%s", netns);
    return access(p, F_OK) == 0;
}

#define RUN(...)                                                                                             \
    do {                                                                                                     \
        char *const av_[] = {__VA_ARGS__, NULL};                                                             \
        int rc_ = net_run(av_, err, errlen);                                                                 \
        if (rc_) return rc_;                                                                                 \
    } while (0)

static int record(const struct cluster_cfg *cfg, enum record_kind k, const char *a, const char *b,
                  const char *c, const char *d, char *err, size_t errlen)
{
    struct record_entry e = {.kind = k};
    snprintf(e.a, sizeof(e.a), "%s", a);
    snprintf(e.b, sizeof(e.b), "%s", b ? b : "");
    snprintf(e.c, sizeof(e.c), "%s", c ? c : "");
    snprintf(e.d, sizeof(e.d), "%s", d ? d : "");
    int rc = cluster_record_add(cfg->state, &e);
    if (rc) snprintf(err, errlen, "cannot append to %s/record: %s", cfg->state, strerror(-rc));
    return rc;
}

/* True when a route of the host's main table overlaps net/24 (host byte order); *dev names its interface. */
static bool route_overlaps(uint32_t net, char *dev, size_t dn)
{
    FILE *f = fopen("/proc/net/route", "r");
    char line[256];
    bool hit = false;
    if (!f) return false;
    if (!fgets(line, sizeof(line), f)) { /* the header */
        fclose(f);
        return false;
    }
    while (!hit && fgets(line, sizeof(line), f)) {
        char ifn[32];
        unsigned dst, gw, flags, refcnt, use, metric, mask;
        if (sscanf(line, "%31s %x %x %x %u %u %u %x", ifn, &dst, &gw, &flags, &refcnt, &use, &metric,
                   &mask) != 8)
            continue;
        uint32_t d = ntohl(dst), m = ntohl(mask);
        if (!m) continue; /* the default route overlaps everything */
        uint32_t common = m < 0xffffff00u ? m : 0xffffff00u;
        if ((d & common) == (net & common)) {
            hit = true;
            snprintf(dev, dn, "%s", ifn);
        }
    }
    fclose(f);
    return hit;
}

int net_bridge_up(const struct cluster_cfg *cfg, char *err, size_t errlen)
{
    /* Another cluster (or anything else) on the same addresses would make routes ambiguous: refuse. */
    for (size_t i = 0; i <= cfg->n_nodes; i++) {
        struct in_addr a;
        char dev[32];
        const char *cidr = i == 0 ? cfg->host_ip : cfg->nodes[i - 1].pod_cidr;
        char ip[24];
        snprintf(ip, sizeof(ip), "%.*s", (int)strcspn(cidr, "/"), cidr);
        if (inet_pton(AF_INET, ip, &a) != 1) continue;
        if (route_overlaps(ntohl(a.s_addr) & 0xffffff00u, dev, sizeof(dev))) {
            snprintf(err, errlen,
                     "%s/24 is already routed on this host (dev %s): another cluster or network uses "
                     "it; choose --%s",
                     ip, dev, i == 0 ? "node-subnet" : "pod-subnet");
            return -EADDRINUSE;
        }
    }

    char p[64], cidr[24];
    snprintf(p, sizeof(p), "/sys/class/net/%s", cfg->bridge);
    if (!access(p, F_OK)) {
        snprintf(
            err, errlen,
            "bridge %s already exists: another cluster with prefix %s is up (zmesh down --state-dir ..., or "
            "choose another --prefix and --node-subnet)",
            cfg->bridge, cfg->prefix);
        return -EEXIST;
    }
    int rc = record(cfg, REC_BRIDGE, cfg->bridge, NULL, NULL, NULL, err, errlen);
    if (rc) return rc;
    snprintf(cidr, sizeof(cidr), "%s/24", cfg->host_ip);
    RUN("ip", "link", "add", (char *)cfg->bridge, "type", "bridge");
    RUN("ip", "addr", "add", cidr, "dev", (char *)cfg->bridge);
    RUN("ip", "link", "set", (char *)cfg->bridge, "up");
    return 0;
}

int net_node_up(const struct cluster_cfg *cfg, size_t i, char *err, size_t errlen)
{
    const struct cluster_node *n = &cfg->nodes[i];
    char veth[16], cidr[24], ns[sizeof(n->netns)];
    snprintf(ns, sizeof(ns), "%s", n->netns);
    if (net_netns_exists(ns)) {
        snprintf(err, errlen, "network namespace %s already exists: another cluster with prefix %s is up", ns,
                 cfg->prefix);
        return -EEXIST;
    }
    int rc = record(cfg, REC_NETNS, ns, NULL, NULL, NULL, err, errlen);
    if (rc) return rc;
    RUN("ip", "netns", "add", ns);
    /* The veth's node end is created inside the node namespace; deleting the namespace deletes the pair. */
    snprintf(veth, sizeof(veth), "%sv%u", cfg->prefix, n->index);
    RUN("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns);
    RUN("ip", "link", "set", veth, "master", (char *)cfg->bridge, "up");
    snprintf(cidr, sizeof(cidr), "%s/24", n->ip);
    RUN("ip", "-n", ns, "addr", "add", cidr, "dev", "eth0");
    RUN("ip", "-n", ns, "link", "set", "eth0", "up");
    RUN("ip", "-n", ns, "link", "set", "lo", "up");
    /* Kubelet's probes reach ambient pods from 169.254.7.127, which the in-pod rules let through to the app
     * (Istio's node agent SNATs kubelet's probes to it, istio/istio cni/pkg/iptables CreateHostRulesForHealthChecks);
     * zmesh up's prober binds to it, so a probe tests the app, not ztunnel's capture. */
    RUN("ip", "-n", ns, "addr", "add", CLUSTER_PROBE_SRC "/32", "dev", "lo");
    RUN("ip", "-n", ns, "route", "add", "default", "via", (char *)cfg->host_ip);
    RUN("ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1");
    /* The node's Service proxy (cluster_ctl.c, kube-proxy's iptables mode in miniature) DNATs in this chain;
     * bridged replies between pods of one node must pass it too, hence bridge-nf-call-iptables (a warning
     * only: without br_netfilter, same-node Service calls without the mesh do not work). */
    RUN("ip", "netns", "exec", ns, "iptables", "-w", "-t", "nat", "-N", "ZMESH-SERVICES");
    RUN("ip", "netns", "exec", ns, "iptables", "-w", "-t", "nat", "-A", "PREROUTING", "-j", "ZMESH-SERVICES");
    {
        char *const av[] = {
            "ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=1", NULL};
        char e2[300];
        if (net_run(av, e2, sizeof(e2))) fprintf(stderr, "warning: %s\n", e2);
    }
    for (size_t j = 0; j < cfg->n_nodes; j++)
        if (j != i)
            RUN("ip", "-n", ns, "route", "add", (char *)cfg->nodes[j].pod_cidr, "via",
                (char *)cfg->nodes[j].ip);
    /* The host reaches pods (its zmeshd answers them) through their node. */
    if ((rc = record(cfg, REC_ROUTE, n->pod_cidr, n->ip, NULL, NULL, err, errlen))) return rc;
    RUN("ip", "route", "add", (char *)n->pod_cidr, "via", (char *)n->ip);
    return 0;
}

int net_cni_setup(const struct cluster_cfg *cfg, size_t i, char *err, size_t errlen)
{
    const struct cluster_node *n = &cfg->nodes[i];
    char bin[CLUSTER_PATH_MAX], link[CLUSTER_PATH_MAX], ipam[CLUSTER_PATH_MAX], sock[CLUSTER_PATH_MAX],
        path[CLUSTER_PATH_MAX], gw[24];
    char target_buf[CLUSTER_PATH_MAX + 16];
    int rc;
    cluster_path(cfg, bin, sizeof(bin), "cni/bin");
    if ((rc = cluster_mkdirs(bin, 0755))) goto fail;
    cluster_path(cfg, link, sizeof(link), "cni/bin/zmesh-cni");
    snprintf(target_buf, sizeof(target_buf), "%s/zmesh-cni", cfg->bin_dir);
    if (symlink(target_buf, link) && errno != EEXIST) {
        rc = -errno;
        goto fail;
    }
    cluster_path(cfg, ipam, sizeof(ipam), "nodes/%s/ipam", n->name);
    cluster_path(cfg, sock, sizeof(sock), "nodes/%s/pluginevent.sock", n->name);
    snprintf(gw, sizeof(gw), "%.*s1", (int)(strlen(n->pod_cidr) - 4), n->pod_cidr);
    char name[64];
    snprintf(name, sizeof(name), "%s-%s", cfg->prefix, n->name);
    /* The bridge plugin's bridge (cni0) lives in the node namespace, where the plugins run; host-local keeps
     * its leases in the state directory so down removes them with everything else. */
    json_t *c = json_pack("{s:s,s:s,s:[{s:s,s:s,s:b,s:b,s:{s:s,s:[[{s:s,s:s}]],s:[{s:s}],s:s}},{s:s,s:s}]}",
                          "cniVersion", CNI_VERSION, "name", name, "plugins", "type", "bridge", "bridge",
                          "cni0", "isGateway", 1, "ipMasq", 0, "ipam", "type", "host-local", "ranges",
                          "subnet", n->pod_cidr, "gateway", gw, "routes", "dst", "0.0.0.0/0", "dataDir", ipam,
                          "type", "zmesh-cni", "agent_socket", sock);
    char *s = c ? json_dumps(c, JSON_INDENT(2)) : NULL;
    json_decref(c);
    if (!s) {
        rc = -ENOMEM;
        goto fail;
    }
    cluster_path(cfg, path, sizeof(path), "nodes/%s/cni.conflist", n->name);
    rc = cluster_write_atomic(path, s, strlen(s));
    free(s);
    if (!rc) return 0;
fail:
    snprintf(err, errlen, "CNI setup for node %s: %s", n->name, strerror(-rc));
    return rc;
}

void net_random_hex(char *buf, size_t nhex)
{
    unsigned char r[32];
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    ssize_t k = fd >= 0 ? read(fd, r, sizeof(r)) : -1;
    if (fd >= 0) close(fd);
    if (k != (ssize_t)sizeof(r))
        for (size_t i = 0; i < sizeof(r); i++)
            r[i] = (unsigned char)(rand() ^ getpid());
    for (size_t i = 0; i < nhex && i < 64; i++)
        buf[i] = "0123456789abcdef"[(r[i / 2] >> ((i & 1) ? 0 : 4)) & 15];
    buf[nhex < 64 ? nhex : 64] = '\0';
}

void net_proc_start(pid_t pid, char *buf, size_t n)
{
    char p[64], *s = NULL;
    buf[0] = '\0';
    snprintf(p, sizeof(p), "/proc/%d/stat", (int)pid);
    if (cluster_read_file(p, 1 << 16, &s, NULL)) return;
    /* The command name (field 2) may hold blanks and parentheses: count fields after its last ')'. */
    char *q = strrchr(s, ')');
    int field = 2;
    for (char *t = q ? q + 1 : s; t && *t; t++) {
        if (*t != ' ') continue;
        if (++field == 22) {
            snprintf(buf, n, "%.*s", (int)strcspn(t + 1, " "), t + 1);
            break;
        }
    }
    free(s);
}

/* ---- CNI ---- */

/* The CNI environment of one invocation (SPEC.md "Parameters"). */
static void cni_env(const struct cluster_cfg *cfg, const struct sandbox *sb, const char *cmd,
                    const char *ifname, char env[8][CLUSTER_PATH_MAX * 2], char *envp[9])
{
    char bin[CLUSTER_PATH_MAX];
    cluster_path(cfg, bin, sizeof(bin), "cni/bin");
    snprintf(env[0], sizeof(env[0]), "CNI_COMMAND=%s", cmd);
    snprintf(env[1], sizeof(env[1]), "CNI_CONTAINERID=%s", sb->container_id);
    snprintf(env[2], sizeof(env[2]), "CNI_NETNS=/run/netns/%s", sb->netns);
    snprintf(env[3], sizeof(env[3]), "CNI_IFNAME=%s", ifname);
    snprintf(env[4], sizeof(env[4]),
             "CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAME=%s;K8S_POD_NAMESPACE=%s;K8S_POD_UID=%s;"
             "K8S_POD_INFRA_CONTAINER_ID=%s",
             sb->name, sb->ns, sb->uid, sb->container_id);
    snprintf(env[5], sizeof(env[5]), "CNI_PATH=%s:%s", bin, CNI_SYSTEM_DIR);
    snprintf(env[6], sizeof(env[6]), "PATH=/usr/sbin:/usr/bin:/sbin:/bin");
    for (int i = 0; i < 7; i++)
        envp[i] = env[i];
    envp[7] = NULL;
}

/* Finds a plugin binary in CNI_PATH order (our dir, then the system's). */
static int plugin_path(const struct cluster_cfg *cfg, const char *type, char *buf, size_t n)
{
    cluster_path(cfg, buf, n, "cni/bin/%s", type);
    if (!access(buf, X_OK)) return 0;
    snprintf(buf, n, "%s/%s", CNI_SYSTEM_DIR, type);
    return access(buf, X_OK) ? -ENOENT : 0;
}

/* One plugin: conf (a plugin entry of the conflist) gets name and cniVersion, and prevResult when given.
 * Runs in the node's namespace. On ADD, *result gets its output (new reference). */
static int cni_exec(const struct cluster_cfg *cfg, const struct sandbox *sb, const char *cmd,
                    const char *ifname, const char *netname, json_t *conf, json_t *prev, json_t **result,
                    char *err, size_t errlen)
{
    char path[CLUSTER_PATH_MAX], env[8][CLUSTER_PATH_MAX * 2], *envp[9], eb[CMD_OUT_MAX];
    const char *type = json_string_value(json_object_get(conf, "type"));
    if (!type || plugin_path(cfg, type, path, sizeof(path))) {
        snprintf(err, errlen,
                 "CNI plugin %s not found in %s/cni/bin or %s (install containernetworking-plugins)",
                 type ? type : "(no type)", cfg->state, CNI_SYSTEM_DIR);
        return -ENOENT;
    }
    json_t *c = json_deep_copy(conf);
    json_object_set_new(c, "cniVersion", json_string(CNI_VERSION));
    json_object_set_new(c, "name", json_string(netname));
    if (prev) json_object_set(c, "prevResult", prev);
    char *in = json_dumps(c, JSON_COMPACT);
    json_decref(c);
    if (!in) return -ENOMEM;
    cni_env(cfg, sb, cmd, ifname, env, envp);
    char *out = NULL;
    char *argv[] = {path, NULL};
    int rc = run_full(argv, sb->node->netns, envp, in, &out, eb, sizeof(eb));
    free(in);
    if (rc != 0) {
        /* A spec error object on stdout says why (code, msg, details). */
        json_t *e = out ? json_loads(out, 0, NULL) : NULL;
        const char *msg = json_string_value(json_object_get(e, "msg"));
        const char *det = json_string_value(json_object_get(e, "details"));
        snprintf(err, errlen, "CNI %s %s (node %s, pod %s/%s): %s%s%s%s%s", type, cmd, sb->node->name, sb->ns,
                 sb->name, msg ? msg : (*eb ? eb : "failed"), det ? ": " : "", det ? det : "",
                 rc < 0 ? " " : "", rc < 0 ? strerror(-rc) : "");
        json_decref(e);
        free(out);
        return rc < 0 ? rc : -EIO;
    }
    if (result) {
        json_error_t je;
        *result = out && *out ? json_loads(out, 0, &je) : NULL;
        if (!*result) {
            snprintf(err, errlen, "CNI %s %s printed no JSON result", type, cmd);
            free(out);
            return -EPROTO;
        }
    }
    free(out);
    return 0;
}

static json_t *load_conflist(const struct cluster_cfg *cfg, const struct cluster_node *n, char *err,
                             size_t errlen)
{
    char path[CLUSTER_PATH_MAX];
    json_error_t je;
    cluster_path(cfg, path, sizeof(path), "nodes/%s/cni.conflist", n->name);
    json_t *c = json_load_file(path, 0, &je);
    if (!c || !json_is_array(json_object_get(c, "plugins")))
        snprintf(err, errlen, "%s: %s", path, c ? "no plugins list" : je.text);
    return c;
}

static json_t *loopback_conf(void)
{
    return json_pack("{s:s}", "type", "loopback");
}

int net_sandbox_add(const struct cluster_cfg *cfg, struct sandbox *sb, char *err, size_t errlen)
{
    int rc;
    net_random_hex(sb->container_id, 32);
    if (net_netns_exists(sb->netns)) {
        /* A leftover of a crashed controller that down did not clean: start from scratch. */
        net_netns_del(sb->netns, err, errlen);
    }
    if ((rc = record(cfg, REC_POD, sb->ns, sb->name, sb->node->name, sb->container_id, err, errlen)))
        return rc;
    if ((rc = record(cfg, REC_NETNS, sb->netns, NULL, NULL, NULL, err, errlen))) return rc;
    {
        char *const av[] = {"ip", "netns", "add", sb->netns, NULL};
        if ((rc = net_run(av, err, errlen))) return rc;
    }
    json_t *list = load_conflist(cfg, sb->node, err, errlen), *prev = NULL, *lo = loopback_conf();
    if (!list) {
        rc = -EINVAL;
        goto fail;
    }
    /* The runtime brings up the sandbox's loopback with its own network (containerd's "cni-loopback"). */
    json_t *lo_res = NULL;
    if ((rc = cni_exec(cfg, sb, "ADD", "lo", "cni-loopback", lo, NULL, &lo_res, err, errlen))) goto fail;
    json_decref(lo_res);
    const char *netname = json_string_value(json_object_get(list, "name"));
    json_t *plugins = json_object_get(list, "plugins");
    size_t i;
    json_t *p;
    json_array_foreach(plugins, i, p)
    {
        json_t *res = NULL;
        if ((rc = cni_exec(cfg, sb, "ADD", CNI_IFNAME, netname, p, prev, &res, err, errlen))) goto fail;
        json_decref(prev);
        prev = res;
    }
    /* The pod IP: the first address on the sandbox's interface (SPEC.md: ips[].interface indexes
     * interfaces[]), else the first address. */
    json_t *ips = json_object_get(prev, "ips"), *ifs = json_object_get(prev, "interfaces"), *ip;
    const char *addr = NULL;
    json_array_foreach(ips, i, ip)
    {
        json_t *ifx = json_object_get(ip, "interface");
        const char *a = json_string_value(json_object_get(ip, "address"));
        const char *ifname = json_is_integer(ifx)
                                 ? json_string_value(json_object_get(
                                       json_array_get(ifs, (size_t)json_integer_value(ifx)), "name"))
                                 : NULL;
        if (a && !addr) addr = a;
        if (a && ifname && !strcmp(ifname, CNI_IFNAME)) {
            addr = a;
            break;
        }
    }
    if (!addr) {
        snprintf(err, errlen, "CNI result for pod %s/%s has no IP address", sb->ns, sb->name);
        rc = -EPROTO;
        goto fail;
    }
    snprintf(sb->ip, sizeof(sb->ip), "%.*s", (int)strcspn(addr, "/"), addr);
    sb->result = prev;
    json_decref(list);
    json_decref(lo);
    return 0;
fail:
    json_decref(list);
    json_decref(lo);
    sb->result = prev;
    {
        char e2[512];
        net_sandbox_del(cfg, sb, e2, sizeof(e2));
    }
    return rc;
}

int net_sandbox_del(const struct cluster_cfg *cfg, struct sandbox *sb, char *err, size_t errlen)
{
    int first = 0;
    char e[1024];
    if (net_netns_exists(sb->netns) || sb->result) {
        json_t *list = load_conflist(cfg, sb->node, e, sizeof(e));
        json_t *plugins = json_object_get(list, "plugins");
        const char *netname = json_string_value(json_object_get(list, "name"));
        /* DEL runs the plugins in reverse order, each with the ADD result as prevResult (SPEC.md 1.0). */
        for (size_t i = json_array_size(plugins); i-- > 0;) {
            int rc = cni_exec(cfg, sb, "DEL", CNI_IFNAME, netname, json_array_get(plugins, i), sb->result,
                              NULL, e, sizeof(e));
            if (rc && !first) {
                first = rc;
                snprintf(err, errlen, "%s", e);
            }
        }
        json_t *lo = loopback_conf();
        cni_exec(cfg, sb, "DEL", "lo", "cni-loopback", lo, NULL, NULL, e, sizeof(e));
        json_decref(lo);
        json_decref(list);
    }
    int rc = net_netns_del(sb->netns, e, sizeof(e));
    if (rc && !first) {
        first = rc;
        snprintf(err, errlen, "%s", e);
    }
    struct record_entry r1 = {.kind = REC_NETNS}, r2 = {.kind = REC_POD};
    snprintf(r1.a, sizeof(r1.a), "%s", sb->netns);
    snprintf(r2.a, sizeof(r2.a), "%s", sb->ns);
    snprintf(r2.b, sizeof(r2.b), "%s", sb->name);
    snprintf(r2.c, sizeof(r2.c), "%s", sb->node->name);
    snprintf(r2.d, sizeof(r2.d), "%s", sb->container_id);
    if (!rc) cluster_record_remove(cfg->state, &r1);
    cluster_record_remove(cfg->state, &r2);
    json_decref(sb->result);
    sb->result = NULL;
    return first;
}

int net_kill_netns(const char *netns)
{
    char p[CLUSTER_PATH_MAX + 16];
    struct stat want, got;
    snprintf(p, sizeof(p), "/run/netns/%s", netns);
    if (stat(p, &want)) return 0;
    DIR *d = opendir("/proc");
    if (!d) return 0;
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) {
        char *end;
        long pid = strtol(e->d_name, &end, 10);
        if (*end || pid <= 1 || pid == getpid()) continue;
        snprintf(p, sizeof(p), "/proc/%ld/ns/net", pid);
        if (stat(p, &got) || got.st_ino != want.st_ino || got.st_dev != want.st_dev) continue;
        if (!kill((pid_t)pid, SIGKILL)) n++;
    }
    closedir(d);
    return n;
}

int net_netns_del(const char *netns, char *err, size_t errlen)
{
    if (!net_netns_exists(netns)) return 0;
    /* A namespace with processes in it outlives `ip netns del` (only the name goes): kill them first, and
     * give the kernel a moment to reap them. */
    for (int i = 0; i < 50 && net_kill_netns(netns) > 0; i++)
        usleep(20 * 1000);
    /* The kernel tears a deleted namespace down later, from a work queue, and its veth pairs with it: their
     * other ends (a node's on the bridge, a pod's in its node) would linger for a moment and make an `up`
     * right after a `down` find "File exists". Deleting eth0 here removes both ends at once. */
    char e2[200];
    char *const dl[] = {"ip", "-n", (char *)netns, "link", "del", "eth0", NULL};
    (void)net_run(dl, e2, sizeof(e2)); /* no eth0 (a sandbox whose ADD failed): nothing to wait for */
    char *const av[] = {"ip", "netns", "del", (char *)netns, NULL};
    return net_run(av, err, errlen);
}
