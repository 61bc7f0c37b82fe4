/* zmesh up's controller (cluster_ctl.h): pods (sandbox, containers, restarts, readiness probes, status),
 * zmeshd, one ztunnel and one node agent per node, all supervised with backoff, and the command socket. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli/cluster_ctl.h"
#include "cli/cluster_net.h"
#include "cli/waypoint.h"
#include "core/loop.h"
#include "zmeshd/daemon.h"
#include "zmeshd/vs.h"
#include "zmeshd/waypoint.h"

#define REQ_MAX (16u << 20)
#define REQ_TIMEOUT_S 5
/* System components: readiness is checked every second until ready, then every 5 s. */
#define CHECK_FAST_MS 1000
#define CHECK_SLOW_MS 5000
#define CHECK_TIMEOUT_S 2
/* Node component tokens: minted at every start and again every hour while it runs, valid a day; ztunnel and
 * the agent re-read the file for each request, as a projected token is re-read. */
#define NODE_TOKEN_TTL_S (24 * 3600L)
#define NODE_TOKEN_REFRESH_MS (3600 * 1000ULL)
#define SYS_GRACE_MS 5000
/* Endpoints per Service port in the node Service proxy; more are left out (logged). */
#define SVC_MAX_ENDPOINTS 64
/* The name zmeshd's serving certificate carries, as istiod's. */
#define ISTIOD_HOST "istiod.istio-system.svc"

static void ctl_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void ctl_log(const char *fmt, ...)
{
    char ts[32];
    cluster_rfc3339(time(NULL), ts, sizeof(ts));
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s ", ts);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    fflush(stderr);
}

struct ctl;

/* A supervised process: a container or a system component. */
enum proc_state { P_IDLE = 0, P_RUNNING, P_BACKOFF, P_DONE };
static const char *proc_state_str(enum proc_state s)
{
    static const char *const n[] = {"idle", "running", "backoff", "done"};
    return n[s];
}
struct proc {
    struct ctl *ctl;
    char what[200]; /* for logs: "container shop/frontend/app", "ztunnel node1" */
    pid_t pid;
    enum proc_state state;
    unsigned restarts;
    uint64_t backoff_ms, started_mono;
    int64_t started_wall;
    int last_exit; /* exit code, 128+signal; -1 before the first exit */
    struct timer t;
    void (*spawn)(struct proc *p);
    void (*exited)(struct proc *p, int status);
};

struct pod;
struct container {
    struct pod *pod;
    struct container_spec *spec;
    struct proc p;
    char log[CLUSTER_PATH_MAX];
    bool ready, ever_started;
    int succ, fail;
    pid_t probe_pid;
    struct timer probe_t;
    char probe_msg[160];
};

struct pod {
    struct ctl *ctl;
    json_t *obj; /* as applied (owned) */
    struct pod_spec spec;
    struct sandbox sb;
    bool sandbox_ok, deleting;
    char sandbox_err[600];
    struct timer sandbox_t;
    uint64_t sandbox_backoff;
    struct container *c;
    size_t n;
    int64_t created_s, start_s;
    bool dirty;
    char workdir[CLUSTER_PATH_MAX]; /* where its manifest was: the containers' default directory */
};

enum sys_kind { SYS_ZMESHD, SYS_ZTUNNEL, SYS_AGENT };
struct sysproc {
    struct proc p;
    enum sys_kind kind;
    size_t node;
    char log[CLUSTER_PATH_MAX];
    bool ready;
    pid_t check_pid;
    struct timer check_t;
    char check_msg[200];
    uint64_t token_mono;     /* when its token was last minted */
    struct record_entry rec; /* its "proc" entry in the record while it runs */
    /* ztunnel rollouts (zmesh rollout): a new generation starts beside the node's ztunnel (its own admin,
     * metrics and readiness ports, the pods' ports shared through SO_REUSEPORT), and once it is ready the old
     * one is sent SIGTERM and drains; a retiring one is not restarted when it exits. */
    unsigned gen;
    struct sysproc *replaces;
    bool retiring;
};

struct ctl {
    const struct cluster_cfg *cfg;
    struct loop *loop;
    struct io sig_io, sock_io;
    struct task flush;
    json_t *store; /* "Kind/ns/name" -> object as applied */
    struct pod **pods;
    size_t n_pods, cap_pods;
    unsigned rr;
    struct cluster_warned warned;
    struct sysproc *zmeshd;
    struct sysproc **nodeprocs; /* per node: agent, ztunnel; plus ztunnels of rollouts */
    size_t n_nodeprocs, cap_nodeprocs;
    bool mesh_started, stopping;
    int exit_code;
    /* The waypoint deployment controller: the token refresh timer, and the Gateway classes already said to
     * have no controller here (logged once each). */
    struct timer wp_token_t;
    json_t *classes_told;
    bool wp_busy; /* inside wp_reconcile: a pod it replaces is not replaced again */
};

/* ---- processes ---- */

/* Forks argv[0] in netns (NULL: ours) with stdout and stderr appended to log; env replaces the environment
 * when clear is set, else is added to ours. The child leads its own process group, so a stop reaches what
 * it forked. Returns the pid or -errno. */
static pid_t spawn_in(const char *netns, char *const argv[], char *const env[], bool clear, const char *log,
                      const char *workdir)
{
    pid_t pid = fork();
    if (pid != 0) return pid < 0 ? -errno : pid;
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_DFL);
    setpgid(0, 0);
    int lfd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    int nfd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (lfd >= 0) {
        dup2(lfd, 1);
        dup2(lfd, 2);
    }
    if (nfd >= 0) dup2(nfd, 0);
    if (netns && net_enter(netns)) {
        fprintf(stderr, "zmesh up: cannot enter network namespace %s: %s\n", netns, strerror(errno));
        _exit(127);
    }
    if (workdir && chdir(workdir)) {
        fprintf(stderr, "zmesh up: workingDir %s: %s\n", workdir, strerror(errno));
        _exit(127);
    }
    if (clear) clearenv();
    for (char *const *e = env; e && *e; e++)
        putenv(*e);
    execvp(argv[0], argv);
    fprintf(stderr, "zmesh up: cannot run %s: %s\n", argv[0], strerror(errno));
    _exit(127);
}

static void proc_restart_cb(struct timer *t)
{
    struct proc *p = container_of(t, struct proc, t);
    if (p->ctl->stopping) return;
    p->spawn(p);
}

/* After an exit: the next start in backoff_ms (1 s doubling to 5 min; reset after a long healthy run). */
static void proc_backoff(struct proc *p, uint64_t now)
{
    if (now - p->started_mono >= CLUSTER_BACKOFF_RESET_MS || !p->backoff_ms)
        p->backoff_ms = CLUSTER_BACKOFF_START_MS;
    p->state = P_BACKOFF;
    ctl_log("%s exited with status %d; restarting in %llus (restart %u)", p->what, p->last_exit,
            (unsigned long long)(p->backoff_ms / 1000), p->restarts + 1);
    timer_start(p->ctl->loop, &p->t, p->backoff_ms);
    p->backoff_ms = p->backoff_ms * 2 > CLUSTER_BACKOFF_MAX_MS ? CLUSTER_BACKOFF_MAX_MS : p->backoff_ms * 2;
}

static void proc_started(struct proc *p, pid_t pid)
{
    p->pid = pid;
    p->state = P_RUNNING;
    p->started_mono = loop_now(p->ctl->loop);
    p->started_wall = time(NULL);
}

/* SIGTERM to the process group, SIGKILL after grace_ms; reaps. Blocks (deletes are rare and short). */
static void stop_pids(pid_t *pids, size_t n, uint64_t grace_ms)
{
    for (size_t i = 0; i < n; i++)
        if (pids[i] > 0) kill(-pids[i], SIGTERM);
    for (uint64_t waited = 0;; waited += 20) {
        size_t alive = 0;
        for (size_t i = 0; i < n; i++) {
            if (pids[i] <= 0) continue;
            int st;
            pid_t r = waitpid(pids[i], &st, WNOHANG);
            if (r == pids[i] || (r < 0 && errno == ECHILD))
                pids[i] = 0;
            else
                alive++;
        }
        if (!alive) return;
        if (waited >= grace_ms) break;
        usleep(20 * 1000);
    }
    for (size_t i = 0; i < n; i++)
        if (pids[i] > 0) {
            kill(-pids[i], SIGKILL);
            waitpid(pids[i], NULL, 0);
            pids[i] = 0;
        }
}

/* ---- probes: a forked child in the pod's (or node's) namespace; exit 0 is success ---- */

/* A connection to ip:port, from src when not NULL. Pods' probes come from CLUSTER_PROBE_SRC (on the node's
 * lo), as kubelet's probes arrive at an ambient pod after Istio's host SNAT: the in-pod rules pass them to
 * the app instead of ztunnel, whose capture would accept any connection. */
static int connect_to(const char *src, const char *ip, uint16_t port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    struct sockaddr_in from = {.sin_family = AF_INET};
    inet_pton(AF_INET, ip, &a.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    if (src &&
        (inet_pton(AF_INET, src, &from.sin_addr) != 1 || bind(fd, (struct sockaddr *)&from, sizeof(from))))
        return -1;
    if (connect(fd, (struct sockaddr *)&a, sizeof(a))) return -1;
    return fd;
}

/* The child's body for an HTTP GET: 200-399 is success, as kubelet's httpGet probe. */
static void http_check_child(const char *src, const char *ip, uint16_t port, const char *path)
{
    int fd = connect_to(src, ip, port);
    if (fd < 0) _exit(2);
    char req[600], resp[64];
    int n =
        snprintf(req, sizeof(req),
                 "GET %s HTTP/1.1\r\nHost: %s:%u\r\nUser-Agent: zmesh-up-probe\r\nConnection: close\r\n\r\n",
                 path, ip, port);
    if (write(fd, req, (size_t)n) != n) _exit(3);
    size_t got = 0;
    while (got < 12) {
        ssize_t k = read(fd, resp + got, sizeof(resp) - 1 - got);
        if (k <= 0) _exit(4);
        got += (size_t)k;
    }
    resp[got] = '\0';
    int code = 0;
    if (sscanf(resp, "HTTP/%*d.%*d %d", &code) != 1) _exit(5);
    _exit(code >= 200 && code < 400 ? 0 : 6);
}

/* Forks a check; the child gets timeout_s (SIGALRM's default action ends it, also across an exec). */
static pid_t probe_fork(const char *netns, int timeout_s)
{
    pid_t pid = fork();
    if (pid != 0) return pid;
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGALRM, SIG_DFL);
    setpgid(0, 0);
    int nfd = open("/dev/null", O_RDWR);
    if (nfd >= 0) {
        dup2(nfd, 0);
        dup2(nfd, 1);
        dup2(nfd, 2);
    }
    alarm((unsigned)timeout_s);
    if (netns && net_enter(netns)) _exit(126);
    return 0;
}

static const char *exit_text(int status, char *buf, size_t n)
{
    if (status >= 128)
        snprintf(buf, n, "killed by signal %d", status - 128);
    else
        snprintf(buf, n, "exit status %d", status);
    return buf;
}

/* ---- pods ---- */

static void pod_mark(struct pod *p)
{
    p->dirty = true;
    loop_defer(p->ctl->loop, &p->ctl->flush);
}

static void container_probe_cb(struct timer *t);

static void container_spawn(struct proc *pr)
{
    struct container *c = container_of(pr, struct container, p);
    struct pod *p = c->pod;
    char host[300], home[] = "HOME=/root",
                    path[] = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    snprintf(host, sizeof(host), "HOSTNAME=%s", p->spec.name);
    size_t ne = 0;
    for (char **e = c->spec->env; e && *e; e++)
        ne++;
    char **env = calloc(ne + 4, sizeof(char *));
    if (!env) return;
    env[0] = path;
    env[1] = home;
    env[2] = host;
    for (size_t i = 0; i < ne; i++)
        env[3 + i] = c->spec->env[i]; /* later entries win in putenv order, as the pod's env over defaults */
    /* No image, so no image WORKDIR: a container runs in its manifest's directory unless workingDir says. */
    pid_t pid = spawn_in(p->sb.netns, c->spec->argv, env, true, c->log,
                         c->spec->working_dir ? c->spec->working_dir
                         : *p->workdir        ? p->workdir
                                              : "/");
    free(env);
    if (pid < 0) {
        ctl_log("%s: fork: %s", pr->what, strerror((int)-pid));
        pr->last_exit = 127;
        proc_backoff(pr, loop_now(p->ctl->loop));
        return;
    }
    proc_started(pr, pid);
    c->ever_started = true;
    c->ready = false;
    c->succ = c->fail = 0;
    ctl_log("%s started (pid %d)", pr->what, (int)pid);
    if (c->spec->readiness.kind != PROBE_NONE)
        timer_start(p->ctl->loop, &c->probe_t, (uint64_t)c->spec->readiness.initial_delay_s * 1000);
    else
        c->ready = true;
    pod_mark(p);
}

static void container_exited(struct proc *pr, int status)
{
    struct container *c = container_of(pr, struct container, p);
    struct pod *p = c->pod;
    char eb[40];
    pr->pid = 0;
    pr->last_exit = status;
    c->ready = false;
    timer_stop(p->ctl->loop, &c->probe_t);
    if (c->probe_pid > 0) kill(-c->probe_pid, SIGKILL); /* reaped by the SIGCHLD handler */
    bool again = p->spec.restart == RESTART_ALWAYS || (p->spec.restart == RESTART_ON_FAILURE && status != 0);
    if (again && !p->deleting && !p->ctl->stopping) {
        proc_backoff(pr, loop_now(p->ctl->loop));
        pr->restarts++;
    } else {
        pr->state = P_DONE;
        ctl_log("%s ended: %s (restartPolicy %s)", pr->what, exit_text(status, eb, sizeof(eb)),
                restart_policy_str(p->spec.restart));
    }
    pod_mark(p);
}

static void container_probe_cb(struct timer *t)
{
    struct container *c = container_of(t, struct container, probe_t);
    struct pod *p = c->pod;
    const struct probe_spec *ps = &c->spec->readiness;
    timer_start(p->ctl->loop, &c->probe_t, (uint64_t)ps->period_s * 1000);
    if (c->probe_pid > 0 || c->p.state != P_RUNNING) return; /* the last one has not finished */
    /* As kubelet: tcpSocket and httpGet connect from the node to the pod IP (so in-pod redirection sees a
     * probe where Istio's does); exec runs inside the pod. */
    pid_t pid = probe_fork(ps->kind == PROBE_EXEC ? p->sb.netns : p->sb.node->netns, ps->timeout_s);
    if (pid < 0) return;
    if (pid == 0) {
        if (ps->kind == PROBE_TCP) {
            int fd = connect_to(CLUSTER_PROBE_SRC, p->sb.ip, ps->port);
            _exit(fd < 0 ? 1 : 0);
        }
        if (ps->kind == PROBE_HTTP) http_check_child(CLUSTER_PROBE_SRC, p->sb.ip, ps->port, ps->path);
        for (char **e = c->spec->env; e && *e; e++)
            putenv(*e);
        execvp(ps->command[0], ps->command);
        _exit(127);
    }
    c->probe_pid = pid;
}

static void container_probe_done(struct container *c, int status)
{
    const struct probe_spec *ps = &c->spec->readiness;
    char eb[40];
    c->probe_pid = 0;
    if (c->p.state != P_RUNNING) return;
    bool was = c->ready;
    if (status == 0) {
        c->fail = 0;
        if (++c->succ >= ps->success_threshold) c->ready = true;
        c->probe_msg[0] = '\0';
    } else {
        c->succ = 0;
        if (++c->fail >= ps->failure_threshold) c->ready = false;
        snprintf(c->probe_msg, sizeof(c->probe_msg), "readiness probe failed (%s, %d in a row)",
                 status == 128 + SIGALRM ? "timed out" : exit_text(status, eb, sizeof(eb)), c->fail);
    }
    if (was != c->ready) {
        ctl_log("container %s/%s/%s: ready %s", c->pod->spec.ns, c->pod->spec.name, c->spec->name,
                c->ready ? "true" : "false");
        pod_mark(c->pod);
    }
}

static const char *pod_phase(const struct pod *p)
{
    if (!p->sandbox_ok) return "Pending";
    size_t done = 0, ok = 0, started = 0;
    for (size_t i = 0; i < p->n; i++) {
        if (p->c[i].ever_started) started++;
        if (p->c[i].p.state == P_DONE) {
            done++;
            if (p->c[i].p.last_exit == 0) ok++;
        }
    }
    if (started < p->n) return "Pending";
    if (done == p->n) return ok == p->n ? "Succeeded" : "Failed";
    return "Running";
}

static bool pod_ready(const struct pod *p)
{
    if (!p->sandbox_ok || p->deleting) return false;
    for (size_t i = 0; i < p->n; i++)
        if (!p->c[i].ready || p->c[i].p.state != P_RUNNING) return false;
    return true;
}

/* The object as the API server would show it: spec.nodeName bound, uid and creationTimestamp set, status. */
static json_t *pod_view(const struct pod *p)
{
    char ts[32], st[32];
    json_t *o = json_deep_copy(p->obj);
    json_t *md = json_object_get(o, "metadata"), *spec = json_object_get(o, "spec");
    cluster_rfc3339(p->created_s, ts, sizeof(ts));
    json_object_set_new(md, "uid", json_string(p->sb.uid));
    json_object_set_new(md, "creationTimestamp", json_string(ts));
    json_object_set_new(spec, "nodeName", json_string(p->sb.node->name));
    bool ready = pod_ready(p);
    const char *phase = pod_phase(p);
    json_t *status = json_object();
    json_object_set_new(status, "phase", json_string(phase));
    json_object_set_new(status, "hostIP", json_string(p->sb.node->ip));
    json_object_set_new(status, "hostIPs", json_pack("[{s:s}]", "ip", p->sb.node->ip));
    if (p->sandbox_ok) {
        json_object_set_new(status, "podIP", json_string(p->sb.ip));
        json_object_set_new(status, "podIPs", json_pack("[{s:s}]", "ip", p->sb.ip));
        cluster_rfc3339(p->start_s, st, sizeof(st));
        json_object_set_new(status, "startTime", json_string(st));
    }
    bool cready = true;
    json_t *cs = json_array();
    for (size_t i = 0; i < p->n; i++) {
        const struct container *c = &p->c[i];
        json_t *s = json_pack("{s:s,s:b,s:i,s:b}", "name", c->spec->name, "ready",
                              c->ready && c->p.state == P_RUNNING, "restartCount", (int)c->p.restarts,
                              "started", c->p.state == P_RUNNING);
        char cts[32];
        cluster_rfc3339(c->p.started_wall, cts, sizeof(cts));
        if (c->p.state == P_RUNNING)
            json_object_set_new(s, "state", json_pack("{s:{s:s}}", "running", "startedAt", cts));
        else if (c->p.state == P_DONE)
            json_object_set_new(s, "state",
                                json_pack("{s:{s:i,s:s}}", "terminated", "exitCode", c->p.last_exit, "reason",
                                          c->p.last_exit ? "Error" : "Completed"));
        else if (c->p.state == P_BACKOFF)
            json_object_set_new(s, "state", json_pack("{s:{s:s}}", "waiting", "reason", "CrashLoopBackOff"));
        else
            json_object_set_new(s, "state",
                                json_pack("{s:{s:s}}", "waiting", "reason",
                                          p->sandbox_ok ? "PodInitializing" : "ContainerCreating"));
        if (c->p.last_exit >= 0 && c->p.state != P_DONE)
            json_object_set_new(s, "lastState",
                                json_pack("{s:{s:i}}", "terminated", "exitCode", c->p.last_exit));
        json_object_set_new(s, "log", json_string(c->log)); /* zmesh's: where kubectl logs would read */
        if (!(c->ready && c->p.state == P_RUNNING)) cready = false;
        json_array_append_new(cs, s);
    }
    json_object_set_new(status, "containerStatuses", cs);
    json_t *conds = json_array();
    json_array_append_new(conds, json_pack("{s:s,s:s}", "type", "PodScheduled", "status", "True"));
    json_array_append_new(conds, json_pack("{s:s,s:s}", "type", "Initialized", "status", "True"));
    json_array_append_new(
        conds, json_pack("{s:s,s:s}", "type", "ContainersReady", "status", cready ? "True" : "False"));
    json_t *rc = json_pack("{s:s,s:s}", "type", "Ready", "status", ready ? "True" : "False");
    if (!p->sandbox_ok && *p->sandbox_err) json_object_set_new(rc, "message", json_string(p->sandbox_err));
    json_array_append_new(conds, rc);
    json_object_set_new(status, "conditions", conds);
    json_object_set_new(o, "status", status);
    return o;
}

static void api_put(struct ctl *ctl, const json_t *o)
{
    char file[CLUSTER_PATH_MAX], path[CLUSTER_PATH_MAX * 3];
    cluster_api_file(cluster_obj_kind(o), cluster_obj_ns(o), cluster_obj_name(o), file, sizeof(file));
    snprintf(path, sizeof(path), "%s/api/%s", ctl->cfg->state, file);
    char *s = json_dumps(o, JSON_INDENT(2));
    int rc = s ? cluster_write_atomic(path, s, strlen(s)) : -ENOMEM;
    if (rc) ctl_log("cannot write %s: %s", path, strerror(-rc));
    free(s);
}

static void api_remove(struct ctl *ctl, const char *kind, const char *ns, const char *name)
{
    char file[CLUSTER_PATH_MAX], path[CLUSTER_PATH_MAX * 3];
    cluster_api_file(kind, ns, name, file, sizeof(file));
    snprintf(path, sizeof(path), "%s/api/%s", ctl->cfg->state, file);
    if (unlink(path) && errno != ENOENT) ctl_log("cannot remove %s: %s", path, strerror(errno));
}

static void svc_sync(struct ctl *ctl);
static void wp_status_sync(struct ctl *ctl);
static void svc_bound_sync(struct ctl *ctl);
static void vs_status_sync(struct ctl *ctl);

static void flush_cb(struct task *t)
{
    struct ctl *ctl = container_of(t, struct ctl, flush);
    if (!ctl->stopping) svc_sync(ctl);
    for (size_t i = 0; i < ctl->n_pods; i++) {
        struct pod *p = ctl->pods[i];
        if (!p->dirty || p->deleting) continue;
        p->dirty = false;
        json_t *v = pod_view(p);
        if (v) api_put(ctl, v);
        json_decref(v);
    }
    if (!ctl->stopping) wp_status_sync(ctl);
    /* After the Gateways' status: a waypoint's readiness is its status.addresses. */
    if (!ctl->stopping) svc_bound_sync(ctl);
    if (!ctl->stopping) vs_status_sync(ctl);
}

static void pod_start_containers(struct pod *p)
{
    for (size_t i = 0; i < p->n; i++)
        if (p->c[i].p.state == P_IDLE) p->c[i].p.spawn(&p->c[i].p);
}

static void sandbox_cb(struct timer *t);

/* With the mesh, a pod's sandbox waits for its node's agent, as kubelet keeps a node NotReady until its CNI
 * is: the plugin reports the sandbox to the agent, which is how the agent learns its network namespace (it
 * has no API server to list pods from). An agent that keeps failing (its log says why) stops holding the
 * node's pods after MESH_WAIT_MS or three restarts: they then start outside the mesh (zmesh-cni fails
 * open). */
#define MESH_WAIT_MS 30000
static bool wait_for_agent(struct pod *p)
{
    struct ctl *ctl = p->ctl;
    if (!ctl->cfg->mesh) return false;
    struct sysproc *agent = NULL;
    for (size_t i = 0; i < ctl->n_nodeprocs; i++)
        if (ctl->nodeprocs[i]->kind == SYS_AGENT && &ctl->cfg->nodes[ctl->nodeprocs[i]->node] == p->sb.node)
            agent = ctl->nodeprocs[i];
    if (agent && agent->ready) return false;
    if ((agent && agent->p.restarts >= 3) || time(NULL) - p->created_s >= MESH_WAIT_MS / 1000) {
        if (!p->sandbox_err[0] || strncmp(p->sandbox_err, "waiting", 7) == 0)
            ctl_log("pod %s/%s: the node agent of %s is not ready; starting the pod outside the mesh",
                    p->spec.ns, p->spec.name, p->sb.node->name);
        return false;
    }
    snprintf(p->sandbox_err, sizeof(p->sandbox_err), "waiting for the node agent of %s (zmeshd first)",
             p->sb.node->name);
    timer_start(ctl->loop, &p->sandbox_t, 100);
    return true;
}

static void pod_sandbox(struct pod *p)
{
    struct ctl *ctl = p->ctl;
    char err[600];
    if (wait_for_agent(p)) return;
    int rc = net_sandbox_add(ctl->cfg, &p->sb, err, sizeof(err));
    if (rc) {
        snprintf(p->sandbox_err, sizeof(p->sandbox_err), "%s", err);
        if (!p->sandbox_backoff) p->sandbox_backoff = CLUSTER_BACKOFF_START_MS;
        ctl_log("pod %s/%s: sandbox failed: %s; retrying in %llus", p->spec.ns, p->spec.name, err,
                (unsigned long long)(p->sandbox_backoff / 1000));
        timer_start(ctl->loop, &p->sandbox_t, p->sandbox_backoff);
        p->sandbox_backoff =
            p->sandbox_backoff * 2 > CLUSTER_BACKOFF_MAX_MS ? CLUSTER_BACKOFF_MAX_MS : p->sandbox_backoff * 2;
        pod_mark(p);
        return;
    }
    p->sandbox_ok = true;
    p->sandbox_err[0] = '\0';
    p->start_s = time(NULL);
    ctl_log("pod %s/%s: sandbox %s on node %s, IP %s", p->spec.ns, p->spec.name, p->sb.netns,
            p->sb.node->name, p->sb.ip);
    pod_start_containers(p);
    pod_mark(p);
}

static void sandbox_cb(struct timer *t)
{
    struct pod *p = container_of(t, struct pod, sandbox_t);
    if (!p->ctl->stopping && !p->deleting) pod_sandbox(p);
}

static void report_log(void *ud, bool warn, const char *msg)
{
    (void)ud;
    ctl_log("%s: %s", warn ? "warning" : "error", msg);
}

static struct pod *pod_find(struct ctl *ctl, const char *ns, const char *name)
{
    for (size_t i = 0; i < ctl->n_pods; i++)
        if (!strcmp(ctl->pods[i]->spec.ns, ns) && !strcmp(ctl->pods[i]->spec.name, name)) return ctl->pods[i];
    return NULL;
}

static void uuid_from_hex(char *out, size_t n)
{
    char h[33];
    net_random_hex(h, 32);
    snprintf(out, n, "%.8s-%.4s-%.4s-%.4s-%.12s", h, h + 8, h + 12, h + 16, h + 20);
}

static int pod_create(struct ctl *ctl, json_t *obj, const char *workdir, char *err, size_t errlen)
{
    struct pod *p = calloc(1, sizeof(*p));
    if (!p) return -ENOMEM;
    p->ctl = ctl;
    snprintf(p->workdir, sizeof(p->workdir), "%s", workdir ? workdir : "");
    struct manifest_src src = {.file = "apply", .doc = 1};
    char perr[600] = "";
    int rc = cluster_pod_spec_parse(obj, &src, &p->spec, &ctl->warned, report_log, NULL);
    if (rc) {
        snprintf(err, errlen, "pod %s/%s: invalid (see the controller log)%s", cluster_obj_ns(obj),
                 cluster_obj_name(obj), perr);
        cluster_pod_spec_free(&p->spec);
        free(p);
        return rc;
    }
    const struct cluster_node *node = NULL;
    if (*p->spec.node) {
        if (!(node = cluster_node_find(ctl->cfg, p->spec.node))) {
            snprintf(err, errlen, "pod %s/%s: spec.nodeName \"%s\" is not a node of this cluster", p->spec.ns,
                     p->spec.name, p->spec.node);
            cluster_pod_spec_free(&p->spec);
            free(p);
            return -EINVAL;
        }
    } else {
        node = &ctl->cfg->nodes[cluster_place_next(&ctl->rr, ctl->cfg->n_nodes)];
    }
    p->obj = json_incref(obj);
    p->created_s = time(NULL);
    p->sb.node = node;
    snprintf(p->sb.ns, sizeof(p->sb.ns), "%s", p->spec.ns);
    snprintf(p->sb.name, sizeof(p->sb.name), "%s", p->spec.name);
    const char *uid = json_string_value(json_object_get(json_object_get(obj, "metadata"), "uid"));
    if (uid && *uid && strlen(uid) < sizeof(p->sb.uid))
        snprintf(p->sb.uid, sizeof(p->sb.uid), "%s", uid);
    else
        uuid_from_hex(p->sb.uid, sizeof(p->sb.uid));
    cluster_pod_netns(ctl->cfg, p->spec.ns, p->spec.name, p->sb.netns, sizeof(p->sb.netns));
    p->n = p->spec.n;
    p->c = calloc(p->n, sizeof(*p->c));
    char dir[CLUSTER_PATH_MAX];
    cluster_path(ctl->cfg, dir, sizeof(dir), "pods/%s_%s", p->spec.ns, p->spec.name);
    cluster_mkdirs(dir, 0755);
    for (size_t i = 0; i < p->n; i++) {
        struct container *c = &p->c[i];
        c->pod = p;
        c->spec = &p->spec.c[i];
        c->p.ctl = ctl;
        c->p.last_exit = -1;
        c->p.t.cb = proc_restart_cb;
        c->p.spawn = container_spawn;
        c->p.exited = container_exited;
        c->probe_t.cb = container_probe_cb;
        snprintf(c->p.what, sizeof(c->p.what), "container %s/%s/%s", p->spec.ns, p->spec.name, c->spec->name);
        snprintf(c->log, sizeof(c->log), "%.400s/%s.log", dir, c->spec->name);
    }
    p->sandbox_t.cb = sandbox_cb;
    if (ctl->n_pods == ctl->cap_pods) {
        size_t nc = ctl->cap_pods ? ctl->cap_pods * 2 : 16;
        struct pod **np = realloc(ctl->pods, nc * sizeof(*np));
        if (!np) return -ENOMEM;
        ctl->pods = np;
        ctl->cap_pods = nc;
    }
    ctl->pods[ctl->n_pods++] = p;
    ctl_log("pod %s/%s: scheduled on node %s", p->spec.ns, p->spec.name, node->name);
    pod_mark(p);
    flush_cb(&ctl->flush); /* Pending, with its node, before the sandbox work */
    pod_sandbox(p);
    return 0;
}

/* Stops a pod's containers (SIGTERM, the grace period, SIGKILL), its probes, runs CNI DEL, removes its
 * namespace and its api/ file, and frees it. */
static void pod_destroy(struct ctl *ctl, struct pod *p)
{
    char err[600];
    p->deleting = true;
    timer_stop(ctl->loop, &p->sandbox_t);
    pid_t *pids = calloc(p->n * 2, sizeof(pid_t));
    size_t n = 0;
    for (size_t i = 0; i < p->n; i++) {
        struct container *c = &p->c[i];
        timer_stop(ctl->loop, &c->p.t);
        timer_stop(ctl->loop, &c->probe_t);
        if (pids && c->p.pid > 0) pids[n++] = c->p.pid;
        if (pids && c->probe_pid > 0) pids[n++] = c->probe_pid;
        c->p.pid = c->probe_pid = 0;
    }
    if (pids) stop_pids(pids, n, (uint64_t)p->spec.grace_s * 1000);
    free(pids);
    if (p->sandbox_ok || net_netns_exists(p->sb.netns)) {
        if (net_sandbox_del(ctl->cfg, &p->sb, err, sizeof(err)))
            ctl_log("pod %s/%s: teardown: %s", p->spec.ns, p->spec.name, err);
        else
            ctl_log("pod %s/%s: CNI DEL done, namespace %s removed", p->spec.ns, p->spec.name, p->sb.netns);
    }
    api_remove(ctl, "Pod", p->spec.ns, p->spec.name);
    for (size_t i = 0; i < ctl->n_pods; i++)
        if (ctl->pods[i] == p) {
            memmove(&ctl->pods[i], &ctl->pods[i + 1], (ctl->n_pods - i - 1) * sizeof(*ctl->pods));
            ctl->n_pods--;
            break;
        }
    json_decref(p->obj);
    json_decref(p->sb.result);
    cluster_pod_spec_free(&p->spec);
    free(p->c);
    free(p);
}

/* ---- system components: zmeshd, and per node a ztunnel and a node agent ---- */

static const char *sys_name(const struct sysproc *s)
{
    return s->kind == SYS_ZMESHD ? "zmeshd" : s->kind == SYS_ZTUNNEL ? "ztunnel" : "agent";
}

/* A service-account token for ns/sa bound to a pod on node n, as `zmesh token` mints it (zmeshd's key in its
 * state), written to path. */
static int sa_token(struct ctl *ctl, const char *ns, const char *sa, const char *node, const char *pod,
                    const char *pod_uid, const char *path)
{
    char zstate[CLUSTER_PATH_MAX], err[300];
    cluster_path(ctl->cfg, zstate, sizeof(zstate), "zmeshd");
    struct token_subject s = {.ns = ns, .sa = sa, .node = node, .pod = pod, .pod_uid = pod_uid};
    char *tok = NULL;
    int rc = zmeshd_token_mint(zstate, &s, NODE_TOKEN_TTL_S, &tok, err, sizeof(err));
    if (rc) {
        ctl_log("token for %s/%s on %s: %s", ns, sa, node, err);
        return rc;
    }
    rc = cluster_write_atomic(path, tok, strlen(tok));
    free(tok);
    if (rc) ctl_log("cannot write %s: %s", path, strerror(-rc));
    return rc;
}

/* A service-account token for a node component. */
static int node_token(struct ctl *ctl, const char *sa, const struct cluster_node *n, const char *pod,
                      char *path, size_t pn)
{
    cluster_path(ctl->cfg, path, pn, "nodes/%s/%s-token", n->name, sa);
    return sa_token(ctl, "istio-system", sa, n->name, pod, NULL, path);
}

static void xds_address(const struct cluster_cfg *cfg, char *buf, size_t n)
{
    snprintf(buf, n, "https://%s:%d", cfg->host_ip, CLUSTER_XDS_PORT);
}

/* zmeshd in the host namespace on the bridge address, so every node reaches it; api/ is its manifest
 * directory. */
static pid_t start_zmeshd(struct ctl *ctl, struct sysproc *s)
{
    const struct cluster_cfg *cfg = ctl->cfg;
    char bin[CLUSTER_PATH_MAX + 16], api[CLUSTER_PATH_MAX], st[CLUSTER_PATH_MAX], listen[40], debug[40];
    snprintf(bin, sizeof(bin), "%s/zmeshd", cfg->bin_dir);
    cluster_path(cfg, api, sizeof(api), "api");
    cluster_path(cfg, st, sizeof(st), "zmeshd");
    snprintf(listen, sizeof(listen), "%s:%d", cfg->host_ip, CLUSTER_XDS_PORT);
    snprintf(debug, sizeof(debug), "%s:%d", cfg->host_ip, CLUSTER_DEBUG_PORT);
    char *const argv[] = {bin,    "--manifests",    api,   "--state-dir", st, "--listen",
                          listen, "--debug-listen", debug, NULL};
    return spawn_in(NULL, argv, NULL, false, s->log, NULL);
}

/* Rollout generations alternate between two sets of the ztunnel's own ports (admin, metrics, readiness):
 * both run in the node's namespace while the old one drains, where Kubernetes gives each ztunnel pod its own
 * IP. */
static unsigned zt_port_offset(const struct sysproc *s)
{
    return (s->gen % 2) * 100;
}

/* The node's shared ztunnel: configured and certified by zmeshd (delta xDS and the CA on one address), with
 * the node's token for impersonation, in shared mode with the node agent's ZDS socket. */
static pid_t start_ztunnel(struct ctl *ctl, struct sysproc *s)
{
    const struct cluster_cfg *cfg = ctl->cfg;
    const struct cluster_node *n = &cfg->nodes[s->node];
    char bin[CLUSTER_PATH_MAX + 16], tok[CLUSTER_PATH_MAX], root[CLUSTER_PATH_MAX], sock[CLUSTER_PATH_MAX],
        xds[64];
    char pod[CLUSTER_NAME_MAX + 16];
    snprintf(pod, sizeof(pod), "ztunnel-%s", n->name);
    if (node_token(ctl, "ztunnel", n, pod, tok, sizeof(tok))) return -EIO;
    snprintf(bin, sizeof(bin), "%s/ztunnel", cfg->bin_dir);
    cluster_path(cfg, root, sizeof(root), "zmeshd/root-cert.pem");
    cluster_path(cfg, sock, sizeof(sock), "nodes/%s/ztunnel.sock", n->name);
    xds_address(cfg, xds, sizeof(xds));
    char e[20][CLUSTER_PATH_MAX + 32];
    int k = 0;
    unsigned off = zt_port_offset(s);
    snprintf(e[k++], sizeof(e[0]), "PROXY_MODE=shared");
    snprintf(e[k++], sizeof(e[0]), "ADMIN_PORT=%u", 15000 + off);
    snprintf(e[k++], sizeof(e[0]), "METRICS_PORT=%u", 15020 + off);
    snprintf(e[k++], sizeof(e[0]), "READINESS_PORT=%u", CLUSTER_ZTUNNEL_READY_PORT + off);
    /* Istio's ztunnel pods have terminationGracePeriodSeconds 30: connections get 25 s to end on a drain. */
    snprintf(e[k++], sizeof(e[0]), "TERMINATION_GRACE_PERIOD_SECONDS=30");
    snprintf(e[k++], sizeof(e[0]), "INPOD_UDS=%s", sock);
    snprintf(e[k++], sizeof(e[0]), "NODE_NAME=%s", n->name);
    snprintf(e[k++], sizeof(e[0]), "XDS_ADDRESS=%s", xds);
    snprintf(e[k++], sizeof(e[0]), "CA_ADDRESS=%s", xds);
    snprintf(e[k++], sizeof(e[0]), "XDS_ROOT_CA=%s", root);
    snprintf(e[k++], sizeof(e[0]), "CA_ROOT_CA=%s", root);
    snprintf(e[k++], sizeof(e[0]), "ALT_XDS_HOSTNAME=%s", ISTIOD_HOST);
    snprintf(e[k++], sizeof(e[0]), "ALT_CA_HOSTNAME=%s", ISTIOD_HOST);
    snprintf(e[k++], sizeof(e[0]), "AUTH_TOKEN=%s", tok);
    snprintf(e[k++], sizeof(e[0]), "POD_NAME=%s", pod);
    snprintf(e[k++], sizeof(e[0]), "POD_NAMESPACE=istio-system");
    snprintf(e[k++], sizeof(e[0]), "INSTANCE_IP=%s", n->ip);
    snprintf(e[k++], sizeof(e[0]), "LOCAL_XDS_PATH=");
    snprintf(e[k++], sizeof(e[0]), "LOCAL_CA_DIR=");
    char *env[21];
    for (int i = 0; i < k; i++)
        env[i] = e[i];
    env[k] = NULL;
    char *const argv[] = {bin, NULL};
    return spawn_in(n->netns, argv, env, false, s->log, NULL);
}

/* The node agent (zmesh-cni agent): the CNI plugin's events in, ZDS to the node's ztunnel out. */
static pid_t start_agent(struct ctl *ctl, struct sysproc *s)
{
    const struct cluster_cfg *cfg = ctl->cfg;
    const struct cluster_node *n = &cfg->nodes[s->node];
    char bin[CLUSTER_PATH_MAX + 16], tok[CLUSTER_PATH_MAX], root[CLUSTER_PATH_MAX], zds[CLUSTER_PATH_MAX],
        plug[CLUSTER_PATH_MAX], st[CLUSTER_PATH_MAX], xds[64], pod[CLUSTER_NAME_MAX + 16];
    snprintf(pod, sizeof(pod), "istio-cni-node-%s", n->name);
    if (node_token(ctl, "istio-cni", n, pod, tok, sizeof(tok))) return -EIO;
    snprintf(bin, sizeof(bin), "%s/zmesh-cni", cfg->bin_dir);
    cluster_path(cfg, root, sizeof(root), "zmeshd/root-cert.pem");
    cluster_path(cfg, zds, sizeof(zds), "nodes/%s/ztunnel.sock", n->name);
    cluster_path(cfg, plug, sizeof(plug), "nodes/%s/pluginevent.sock", n->name);
    cluster_path(cfg, st, sizeof(st), "nodes/%s/agent", n->name);
    cluster_mkdirs(st, 0755);
    xds_address(cfg, xds, sizeof(xds));
    char *const argv[] = {bin,
                          "agent",
                          "--node-name",
                          (char *)n->name,
                          "--zds-socket",
                          zds,
                          "--plugin-socket",
                          plug,
                          "--state-dir",
                          st,
                          "--xds-address",
                          xds,
                          "--xds-root-ca",
                          root,
                          "--token-file",
                          tok,
                          NULL};
    return spawn_in(n->netns, argv, NULL, false, s->log, NULL);
}

static void sys_check_cb(struct timer *t);

static void sys_spawn(struct proc *pr)
{
    struct sysproc *s = container_of(pr, struct sysproc, p);
    struct ctl *ctl = pr->ctl;
    pid_t pid = s->kind == SYS_ZMESHD    ? start_zmeshd(ctl, s)
                : s->kind == SYS_ZTUNNEL ? start_ztunnel(ctl, s)
                                         : start_agent(ctl, s);
    if (pid < 0) {
        pr->last_exit = 127;
        proc_backoff(pr, loop_now(ctl->loop));
        pr->restarts++;
        return;
    }
    proc_started(pr, pid);
    s->ready = false;
    s->token_mono = loop_now(ctl->loop);
    snprintf(s->check_msg, sizeof(s->check_msg), "starting");
    struct record_entry *e = &s->rec;
    memset(e, 0, sizeof(*e));
    e->kind = REC_PROC;
    snprintf(e->a, sizeof(e->a), "%d", (int)pid);
    net_proc_start(pid, e->b, sizeof(e->b));
    if (!*e->b) snprintf(e->b, sizeof(e->b), "0");
    snprintf(e->c, sizeof(e->c), "%.60s", pr->what);
    for (char *q = e->c; *q; q++)
        if (*q == ' ') *q = '/';
    /* Recorded just after the fork (the pid is only known then); down also finds node components through
     * their namespace, and zmeshd is the one host process: its start time in the entry guards against a
     * recycled pid. */
    cluster_record_add(ctl->cfg->state, e);
    ctl_log("%s started (pid %d, log %s)", pr->what, (int)pid, s->log);
    timer_start(ctl->loop, &s->check_t, CHECK_FAST_MS);
}

static void sys_exited(struct proc *pr, int status)
{
    struct sysproc *s = container_of(pr, struct sysproc, p);
    struct ctl *ctl = pr->ctl;
    char eb[40];
    if (s->rec.kind == REC_PROC && *s->rec.a) cluster_record_remove(ctl->cfg->state, &s->rec);
    s->rec.a[0] = '\0';
    pr->pid = 0;
    pr->last_exit = status;
    s->ready = false;
    snprintf(s->check_msg, sizeof(s->check_msg), "exited (%s)", exit_text(status, eb, sizeof(eb)));
    FILE *f = fopen(s->log, "a");
    if (f) {
        fprintf(f, "--- zmesh up: %s %s; restarting with backoff ---\n", pr->what,
                exit_text(status, eb, sizeof(eb)));
        fclose(f);
    }
    if (ctl->stopping || s->retiring) {
        if (s->retiring) ctl_log("%s (generation %u) drained and exited", pr->what, s->gen);
        pr->state = P_DONE;
        return;
    }
    proc_backoff(pr, loop_now(ctl->loop));
    pr->restarts++;
}

static void sys_check_cb(struct timer *t)
{
    struct sysproc *s = container_of(t, struct sysproc, check_t);
    struct ctl *ctl = s->p.ctl;
    if (s->p.state != P_RUNNING || ctl->stopping) return;
    timer_start(ctl->loop, &s->check_t, s->ready ? CHECK_SLOW_MS : CHECK_FAST_MS);
    if (s->kind != SYS_ZMESHD && loop_now(ctl->loop) - s->token_mono >= NODE_TOKEN_REFRESH_MS) {
        const struct cluster_node *n = &ctl->cfg->nodes[s->node];
        char tok[CLUSTER_PATH_MAX], pod[CLUSTER_NAME_MAX + 16];
        snprintf(pod, sizeof(pod), s->kind == SYS_ZTUNNEL ? "ztunnel-%s" : "istio-cni-node-%s", n->name);
        if (!node_token(ctl, s->kind == SYS_ZTUNNEL ? "ztunnel" : "istio-cni", n, pod, tok, sizeof(tok)))
            s->token_mono = loop_now(ctl->loop);
    }
    if (s->check_pid > 0) return;
    if (s->kind == SYS_AGENT) {
        /* The agent has no readiness port: running for a second is as good as it gets. */
        if (loop_now(ctl->loop) - s->p.started_mono >= 1000) s->ready = true;
        return;
    }
    const char *netns = s->kind == SYS_ZTUNNEL ? ctl->cfg->nodes[s->node].netns : NULL;
    pid_t pid = probe_fork(netns, CHECK_TIMEOUT_S);
    if (pid < 0) return;
    if (pid == 0) {
        if (s->kind == SYS_ZMESHD) http_check_child(NULL, ctl->cfg->host_ip, CLUSTER_DEBUG_PORT, "/ready");
        http_check_child(NULL, "127.0.0.1", (uint16_t)(CLUSTER_ZTUNNEL_READY_PORT + zt_port_offset(s)),
                         "/healthz/ready");
    }
    s->check_pid = pid;
}

static void start_mesh(struct ctl *ctl);

static void sys_check_done(struct sysproc *s, int status)
{
    struct ctl *ctl = s->p.ctl;
    s->check_pid = 0;
    bool was = s->ready;
    s->ready = status == 0 && s->p.state == P_RUNNING;
    if (s->ready)
        s->check_msg[0] = '\0';
    else if (s->p.state == P_RUNNING)
        snprintf(s->check_msg, sizeof(s->check_msg), "%s not ready yet",
                 s->kind == SYS_ZMESHD ? "GET /ready" : "GET :15021/healthz/ready");
    if (s->ready != was) ctl_log("%s: ready %s", s->p.what, s->ready ? "true" : "false");
    if (s->ready && s->kind == SYS_ZMESHD) start_mesh(ctl);
    if (s->ready && s->replaces) {
        /* The new generation has the agent's snapshot and serves every pod: the old one drains. */
        struct sysproc *old = s->replaces;
        s->replaces = NULL;
        old->retiring = true;
        timer_stop(ctl->loop, &old->p.t);
        if (old->p.pid > 0) {
            kill(old->p.pid, SIGTERM);
            ctl_log("%s (generation %u) is ready: generation %u (pid %d) sent SIGTERM, draining", s->p.what,
                    s->gen, old->gen, (int)old->p.pid);
        } else {
            old->p.state = P_DONE;
        }
    }
}

static struct sysproc *sys_new(struct ctl *ctl, enum sys_kind k, size_t node)
{
    struct sysproc *s = calloc(1, sizeof(*s));
    if (!s) return NULL;
    s->kind = k;
    s->node = node;
    s->p.ctl = ctl;
    s->p.last_exit = -1;
    s->p.t.cb = proc_restart_cb;
    s->p.spawn = sys_spawn;
    s->p.exited = sys_exited;
    s->check_t.cb = sys_check_cb;
    if (k == SYS_ZMESHD) {
        snprintf(s->p.what, sizeof(s->p.what), "zmeshd");
        cluster_path(ctl->cfg, s->log, sizeof(s->log), "logs/zmeshd.log");
    } else {
        const char *nn = ctl->cfg->nodes[node].name;
        snprintf(s->p.what, sizeof(s->p.what), "%s %s", sys_name(s), nn);
        cluster_path(ctl->cfg, s->log, sizeof(s->log), "logs/%s-%s.log", sys_name(s), nn);
    }
    return s;
}

/* The node components start once zmeshd serves (its root certificate exists then), in mesh mode only. */
static void start_mesh(struct ctl *ctl)
{
    if (ctl->mesh_started || !ctl->cfg->mesh || ctl->stopping) return;
    ctl->mesh_started = true;
    ctl->cap_nodeprocs = ctl->cfg->n_nodes * 4;
    ctl->nodeprocs = calloc(ctl->cap_nodeprocs, sizeof(*ctl->nodeprocs));
    if (!ctl->nodeprocs) return;
    for (size_t i = 0; i < ctl->cfg->n_nodes; i++) {
        /* The agent first: it owns the ZDS socket ztunnel connects to. */
        struct sysproc *a = sys_new(ctl, SYS_AGENT, i), *z = sys_new(ctl, SYS_ZTUNNEL, i);
        if (!a || !z) return;
        ctl->nodeprocs[ctl->n_nodeprocs++] = a;
        ctl->nodeprocs[ctl->n_nodeprocs++] = z;
        a->p.spawn(&a->p);
        z->p.spawn(&z->p);
    }
}

/* ---- children ---- */

static void reap(struct ctl *ctl)
{
    for (;;) {
        int st;
        pid_t pid = waitpid(-1, &st, WNOHANG);
        if (pid <= 0) return;
        int status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        bool found = false;
        for (size_t i = 0; i < ctl->n_pods && !found; i++) {
            struct pod *p = ctl->pods[i];
            for (size_t j = 0; j < p->n && !found; j++) {
                struct container *c = &p->c[j];
                if (c->p.pid == pid) {
                    found = true;
                    c->p.exited(&c->p, status);
                } else if (c->probe_pid == pid) {
                    found = true;
                    container_probe_done(c, status);
                }
            }
        }
        struct sysproc *all[1 + 2 * CLUSTER_MAX_NODES];
        size_t na = 0;
        if (ctl->zmeshd) all[na++] = ctl->zmeshd;
        for (size_t i = 0; i < ctl->n_nodeprocs; i++)
            all[na++] = ctl->nodeprocs[i];
        for (size_t i = 0; i < na && !found; i++) {
            if (all[i]->p.pid == pid) {
                found = true;
                all[i]->p.exited(&all[i]->p, status);
            } else if (all[i]->check_pid == pid) {
                found = true;
                sys_check_done(all[i], status);
            }
        }
    }
}

/* ---- objects ---- */

static void obj_key(const char *kind, const char *ns, const char *name, char *buf, size_t n)
{
    snprintf(buf, n, "%s/%s/%s", kind, ns, name);
}

static void ensure_namespace(struct ctl *ctl, const char *ns)
{
    char key[CLUSTER_NAME_MAX * 3];
    if (!*ns) return;
    obj_key("Namespace", "", ns, key, sizeof(key));
    if (json_object_get(ctl->store, key)) return;
    /* The API server refuses objects of a namespace that does not exist; a local tool creates it. */
    char ts[32];
    cluster_rfc3339(time(NULL), ts, sizeof(ts));
    json_t *o = json_pack("{s:s,s:s,s:{s:s,s:s}}", "apiVersion", "v1", "kind", "Namespace", "metadata",
                          "name", ns, "creationTimestamp", ts);
    json_object_set_new(ctl->store, key, o);
    api_put(ctl, o);
    ctl_log("namespace/%s created (implicitly)", ns);
}

/* The API server's ClusterIP allocation, from Kubernetes' default service range 10.96.0.0/16 (.0.10 up, below
 * what manifests usually pin), for a Service without spec.clusterIP. */
static void alloc_cluster_ip(struct ctl *ctl, json_t *svc)
{
    json_t *spec = json_object_get(svc, "spec");
    if (!json_is_object(spec) || json_object_get(spec, "clusterIP")) return;
    const char *t = json_string_value(json_object_get(spec, "type"));
    if (t && !strcmp(t, "ExternalName")) return;
    for (unsigned i = 10; i < 65534; i++) {
        char ip[20];
        snprintf(ip, sizeof(ip), "10.96.%u.%u", i / 256, i % 256);
        bool used = false;
        const char *k;
        json_t *v;
        json_object_foreach(ctl->store, k, v)
        {
            const char *c = json_string_value(json_object_get(json_object_get(v, "spec"), "clusterIP"));
            if (!strcmp(cluster_obj_kind(v), "Service") && c && !strcmp(c, ip)) used = true;
        }
        if (used) continue;
        json_object_set_new(spec, "clusterIP", json_string(ip));
        json_object_set_new(spec, "clusterIPs", json_pack("[s]", ip));
        ctl_log("service/%s in %s: clusterIP %s allocated", cluster_obj_name(svc), cluster_obj_ns(svc), ip);
        return;
    }
}

/* The node Service proxy, kube-proxy's iptables mode in miniature: for each Service VIP and port, DNAT to its
 * ready endpoints (each picked with equal probability) in every node's ZMESH-SERVICES chain. Without the
 * mesh this is what makes a VIP answer; with it, a meshed pod's ztunnel has taken the connection before it
 * leaves the pod. Rebuilt whole and applied only when it changed. */
static char *last_rules;

static void svc_sync(struct ctl *ctl)
{
    size_t cap = 4096, len = 0;
    char *r = malloc(cap);
    if (!r) return;
#define EMIT(...)                                                                                            \
    do {                                                                                                     \
        int k_ = snprintf(r + len, cap - len, __VA_ARGS__);                                                  \
        if (k_ < 0) break;                                                                                   \
        if ((size_t)k_ >= cap - len) {                                                                       \
            char *nr_ = realloc(r, cap = (cap + (size_t)k_) * 2);                                            \
            if (!nr_) {                                                                                      \
                free(r);                                                                                     \
                return;                                                                                      \
            }                                                                                                \
            r = nr_;                                                                                         \
            snprintf(r + len, cap - len, __VA_ARGS__);                                                       \
        }                                                                                                    \
        len += (size_t)k_;                                                                                   \
    } while (0)
    EMIT("*nat\n:ZMESH-SERVICES - [0:0]\n");
    const char *key;
    json_t *svc;
    json_object_foreach(ctl->store, key, svc)
    {
        if (strcmp(cluster_obj_kind(svc), "Service")) continue;
        json_t *spec = json_object_get(svc, "spec"), *sel = json_object_get(spec, "selector"), *port;
        const char *vip = json_string_value(json_object_get(spec, "clusterIP"));
        if (!vip || !strcmp(vip, "None") || !json_is_object(sel) || !json_object_size(sel)) continue;
        size_t pi;
        json_array_foreach(json_object_get(spec, "ports"), pi, port)
        {
            json_t *pn = json_object_get(port, "port"), *tp = json_object_get(port, "targetPort");
            const char *proto = json_string_value(json_object_get(port, "protocol"));
            if (!json_is_integer(pn) || (proto && strcmp(proto, "TCP"))) continue;
            char eps[SVC_MAX_ENDPOINTS][64];
            size_t ne = 0;
            for (size_t i = 0; i < ctl->n_pods; i++) {
                struct pod *p = ctl->pods[i];
                if (!pod_ready(p) || strcmp(p->spec.ns, cluster_obj_ns(svc))) continue;
                json_t *labels = json_object_get(json_object_get(p->obj, "metadata"), "labels");
                const char *sk;
                json_t *sv;
                bool match = true;
                json_object_foreach(sel, sk, sv)
                {
                    const char *lv = json_string_value(json_object_get(labels, sk));
                    if (!lv || !json_is_string(sv) || strcmp(lv, json_string_value(sv))) match = false;
                }
                if (!match) continue;
                long target = json_is_integer(tp) ? (long)json_integer_value(tp)
                              : !tp               ? (long)json_integer_value(pn)
                                                  : 0;
                if (json_is_string(tp)) {
                    /* A named targetPort: the container port of that name (FindPortName). */
                    size_t ci, qi;
                    json_t *c, *q;
                    json_array_foreach(json_object_get(json_object_get(p->obj, "spec"), "containers"), ci, c)
                        json_array_foreach(json_object_get(c, "ports"), qi, q)
                    {
                        const char *nm = json_string_value(json_object_get(q, "name"));
                        if (nm && !strcmp(nm, json_string_value(tp)) &&
                            json_is_integer(json_object_get(q, "containerPort")))
                            target = (long)json_integer_value(json_object_get(q, "containerPort"));
                    }
                }
                if (target <= 0 || target >= 65536) continue;
                if (ne == SVC_MAX_ENDPOINTS) {
                    ctl_log("service %s/%s: more than %d ready endpoints; the node proxy uses the first %d",
                            cluster_obj_ns(svc), cluster_obj_name(svc), SVC_MAX_ENDPOINTS, SVC_MAX_ENDPOINTS);
                    break;
                }
                snprintf(eps[ne++], sizeof(eps[0]), "%s:%ld", p->sb.ip, target);
            }
            for (size_t i = 0; i < ne; i++) {
                EMIT("-A ZMESH-SERVICES -d %s/32 -p tcp --dport %lld", vip,
                     (long long)json_integer_value(pn));
                if (i + 1 < ne)
                    EMIT(" -m statistic --mode random --probability %.6f", 1.0 / (double)(ne - i));
                EMIT(" -j DNAT --to-destination %s\n", eps[i]);
            }
        }
    }
    EMIT("COMMIT\n");
#undef EMIT
    if (last_rules && !strcmp(last_rules, r)) {
        free(r);
        return;
    }
    for (size_t i = 0; i < ctl->cfg->n_nodes; i++) {
        char e[600];
        int pfd[2];
        if (pipe2(pfd, O_CLOEXEC)) break;
        ssize_t wr = write(pfd[1], r, len); /* rules stay far below a pipe's 64 KiB for a local cluster */
        (void)wr;
        close(pfd[1]);
        pid_t pid = fork();
        if (pid == 0) {
            dup2(pfd[0], 0);
            if (net_enter(ctl->cfg->nodes[i].netns)) _exit(126);
            execlp("iptables-restore", "iptables-restore", "-w", "--noflush", (char *)NULL);
            _exit(127);
        }
        close(pfd[0]);
        int st = 0;
        if (pid > 0) waitpid(pid, &st, 0);
        if (pid < 0 || !WIFEXITED(st) || WEXITSTATUS(st)) {
            snprintf(e, sizeof(e), "node %s: iptables-restore of the Service rules failed",
                     ctl->cfg->nodes[i].name);
            ctl_log("%s", e);
        }
    }
    free(last_rules);
    last_rules = r;
}

/* ---- the waypoint deployment controller (istiod's, for Gateways of class istio-waypoint) ---- */

static bool wp_pod_managed(const struct pod *p)
{
    const char *v = json_string_value(
        json_object_get(json_object_get(json_object_get(p->obj, "metadata"), "labels"), WP_LABEL_MANAGED));
    return v && !strcmp(v, WP_MANAGED_VALUE);
}

static void wp_token_path(struct ctl *ctl, const char *ns, const char *pod, char *buf, size_t n)
{
    cluster_path(ctl->cfg, buf, n, "pods/%s_%s/istio-token", ns, pod);
}

/* A waypoint is ready when one of the pods made for it is (a Deployment's available replica). */
static bool wp_ready(struct ctl *ctl, const char *ns, const char *gw)
{
    for (size_t i = 0; i < ctl->n_pods; i++)
        if (wp_managed_by(ctl->pods[i]->obj, ns, gw) && pod_ready(ctl->pods[i])) return true;
    return false;
}

/* The pod the controller wants for gw, with the identity (name, uid, node) of an existing or a new pod. */
static json_t *wp_pod_for(struct ctl *ctl, const json_t *gw, const char *pod, const char *uid,
                          const char *node)
{
    char xds[64], root[CLUSTER_PATH_MAX], tok[CLUSTER_PATH_MAX];
    xds_address(ctl->cfg, xds, sizeof(xds));
    cluster_path(ctl->cfg, root, sizeof(root), "zmeshd/root-cert.pem");
    wp_token_path(ctl, cluster_obj_ns(gw), pod, tok, sizeof(tok));
    struct wp_pod_params pp = {.pod_name = pod,
                               .pod_uid = uid,
                               .node = node,
                               .bin_dir = ctl->cfg->bin_dir,
                               .xds = xds,
                               .root_ca = root,
                               .token = tok,
                               .workdir = ctl->cfg->state};
    return wp_pod(gw, &pp);
}

/* Deletes the store's objects managed for ns/gw that keep(o) rejects: pods first (collected, then deleted,
 * as deleting changes the store). */
static void wp_delete_managed(struct ctl *ctl, const char *ns, const char *gw, const char *keep_sa,
                              const char *keep_svc, const char *keep_pod)
{
    json_t *doomed = json_array();
    const char *k;
    json_t *v;
    for (int pass = 0; pass < 2; pass++)
        json_object_foreach(ctl->store, k, v)
        {
            const char *kind = cluster_obj_kind(v), *name = cluster_obj_name(v);
            if (!wp_managed_by(v, ns, gw) || (pass == 0) != !strcmp(kind, "Pod")) continue;
            if ((keep_pod && !strcmp(kind, "Pod") && !strcmp(name, keep_pod)) ||
                (keep_sa && !strcmp(kind, "ServiceAccount") && !strcmp(name, keep_sa)) ||
                (keep_svc && !strcmp(kind, "Service") && !strcmp(name, keep_svc)))
                continue;
            json_array_append_new(doomed, json_pack("[s,s]", kind, name));
        }
    size_t i;
    json_t *d;
    json_array_foreach(doomed, i, d)
    {
        char e[300], tok[CLUSTER_PATH_MAX];
        const char *kind = json_string_value(json_array_get(d, 0)),
                   *name = json_string_value(json_array_get(d, 1));
        json_t *res = json_array();
        if (ctl_delete_object(ctl, kind, ns, name, res, e, sizeof(e)))
            ctl_log("waypoint %s/%s: %s", ns, gw, e);
        json_decref(res);
        if (!strcmp(kind, "Pod")) {
            wp_token_path(ctl, ns, name, tok, sizeof(tok));
            unlink(tok); /* a day's valid token does not outlive its pod */
        }
    }
    json_decref(doomed);
}

/* What istiod's deployment controller applies for a waypoint Gateway (borrowed, already in the store): its
 * ServiceAccount, its Service and, in place of the Deployment, its one pod (kept while its spec is what the
 * Gateway asks for; replaced otherwise). */
static void wp_reconcile(struct ctl *ctl, json_t *gw)
{
    const char *ns = cluster_obj_ns(gw), *name = cluster_obj_name(gw);
    char deploy[WP_NAME_MAX + 1], sa[WP_NAME_MAX + 1], e[1000];
    wp_names(gw, deploy, sizeof(deploy), sa, sizeof(sa));
    ctl->wp_busy = true;
    json_t *res = json_array(), *sao = wp_service_account(gw), *svc = wp_service(gw);
    if (ctl_apply_object(ctl, sao, ctl->cfg->state, res, e, sizeof(e)))
        ctl_log("waypoint %s/%s: %s", ns, name, e);
    if (ctl_apply_object(ctl, svc, ctl->cfg->state, res, e, sizeof(e)))
        ctl_log("waypoint %s/%s: %s", ns, name, e);
    json_decref(sao);
    json_decref(svc);
    const char *keep = NULL;
    for (size_t i = 0; i < ctl->n_pods && !keep; i++) {
        struct pod *p = ctl->pods[i];
        if (!wp_managed_by(p->obj, ns, name) || p->deleting) continue;
        json_t *want = wp_pod_for(ctl, gw, p->spec.name, p->sb.uid, p->sb.node->name);
        json_t *wm = json_object_get(want, "metadata"), *pm = json_object_get(p->obj, "metadata");
        if (json_equal(json_object_get(want, "spec"), json_object_get(p->obj, "spec")) &&
            json_equal(json_object_get(wm, "labels"), json_object_get(pm, "labels")))
            keep = p->spec.name;
        json_decref(want);
    }
    char keep_name[CLUSTER_NAME_MAX * 4] = "";
    if (keep) snprintf(keep_name, sizeof(keep_name), "%s", keep);
    /* A renamed Service or ServiceAccount (the annotations changed) and a pod of another spec go. */
    wp_delete_managed(ctl, ns, name, sa, deploy, keep ? keep_name : NULL);
    if (!keep) {
        char hex[33], pod[CLUSTER_NAME_MAX], uid[40], tok[CLUSTER_PATH_MAX], dir[CLUSTER_PATH_MAX];
        net_random_hex(hex, 32);
        wp_pod_name(deploy, (const unsigned char *)hex, pod, sizeof(pod));
        uuid_from_hex(uid, sizeof(uid));
        const struct cluster_node *node = &ctl->cfg->nodes[cluster_place_next(&ctl->rr, ctl->cfg->n_nodes)];
        cluster_path(ctl->cfg, dir, sizeof(dir), "pods/%s_%s", ns, pod);
        cluster_mkdirs(dir, 0755);
        wp_token_path(ctl, ns, pod, tok, sizeof(tok));
        /* The pod's projected token: its service account, bound to the pod and its node. */
        sa_token(ctl, ns, sa, node->name, pod, uid, tok);
        json_t *po = wp_pod_for(ctl, gw, pod, uid, node->name);
        if (ctl_apply_object(ctl, po, ctl->cfg->state, res, e, sizeof(e)))
            ctl_log("waypoint %s/%s: %s", ns, name, e);
        json_decref(po);
    }
    json_decref(res);
    ctl->wp_busy = false;
}

/* istiod's status writer: each waypoint Gateway's addresses and conditions from its pods' readiness, written
 * only when they change (zmeshd reloads on every api/ write). */
static void wp_status_sync(struct ctl *ctl)
{
    char now[32];
    cluster_rfc3339(time(NULL), now, sizeof(now));
    const char *k;
    json_t *gw;
    json_object_foreach(ctl->store, k, gw)
    {
        if (!wp_is_waypoint(gw)) continue;
        bool ready = wp_ready(ctl, cluster_obj_ns(gw), cluster_obj_name(gw));
        json_t *st = wp_gateway_status(gw, ready, now);
        if (json_equal(st, json_object_get(gw, "status"))) {
            json_decref(st);
            continue;
        }
        json_object_set_new(gw, "status", st);
        api_put(ctl, gw);
        ctl_log("gateway/%s in namespace %s: Programmed %s", cluster_obj_name(gw), cluster_obj_ns(gw),
                ready ? "True" : "False");
    }
}

static void quiet_finding(void *ud, const struct manifest_finding *f)
{
    (void)ud;
    (void)f;
}

/* istiod's ambient status writer for Services (istio/istio pilot/pkg/serviceregistry/ambient/ambientindex.go,
 * the "istio-ambient-service" reporter): each Service's istio.io/WaypointBound condition, from zmeshd's own
 * binding code (src/zmeshd/waypoint.h) run on what zmeshd reads, api/, so the condition says what zmeshd
 * does; set, changed or removed only when the outcome changes (zmeshd reloads on every api/ write). The
 * findings of that read are zmeshd's to log, not repeated here. */
static void svc_bound_sync(struct ctl *ctl)
{
    char api[CLUSTER_PATH_MAX], now[32], key[CLUSTER_NAME_MAX * 4];
    struct manifest_store *st = NULL;
    struct k8s_waypoints *w = NULL;
    json_t *index = json_object(); /* "ns/name" -> the first Service of that name in the store */
    int rc = index ? manifest_store_new(&st) : -ENOMEM;
    if (!rc) rc = manifest_load_dir(st, cluster_path(ctl->cfg, api, sizeof(api), "api"), quiet_finding, NULL);
    if (!rc) rc = k8s_waypoints_compute(st, NULL, &w, quiet_finding, NULL);
    if (rc) {
        ctl_log("services' %s conditions not updated: %s", K8S_COND_WAYPOINT_BOUND, strerror(-rc));
        goto out;
    }
    size_t n;
    const struct k8s_service *svcs = manifest_services(st, &n);
    for (size_t i = 0; i < n; i++) {
        snprintf(key, sizeof(key), "%s/%s", svcs[i].meta.namespace_, svcs[i].meta.name);
        if (!json_object_get(index, key)) json_object_set_new(index, key, json_integer((json_int_t)i));
    }
    cluster_rfc3339(time(NULL), now, sizeof(now));
    const char *k;
    json_t *o;
    json_object_foreach(ctl->store, k, o)
    {
        if (strcmp(cluster_obj_kind(o), "Service")) continue;
        const char *ns = cluster_obj_ns(o), *name = cluster_obj_name(o);
        snprintf(key, sizeof(key), "%s/%s", ns, name);
        json_t *ix = json_object_get(index, key);
        const struct k8s_binding *b =
            ix ? k8s_waypoints_service_binding(w, (size_t)json_integer_value(ix)) : NULL;
        const struct k8s_status_condition *c = b && b->cond.type ? &b->cond : NULL;
        int r = k8s_waypoint_bound_apply(o, c, now);
        if (r < 0) {
            ctl_log("service/%s in namespace %s: %s not written: %s", name, ns, K8S_COND_WAYPOINT_BOUND,
                    r == -EINVAL ? "status or status.conditions is not of its type" : strerror(-r));
            continue;
        }
        if (!r) continue;
        api_put(ctl, o);
        if (c)
            ctl_log("service/%s in namespace %s: %s %s (%s: %s)", name, ns, c->type,
                    c->status ? "True" : "False", c->reason, c->message);
        else
            ctl_log("service/%s in namespace %s: %s removed (it asks for no waypoint)", name, ns,
                    K8S_COND_WAYPOINT_BOUND);
    }
out:
    k8s_waypoints_free(w);
    manifest_store_free(st);
    json_decref(index);
}

/* The VirtualServices' zmesh.io/RouteConflict condition (src/zmeshd/vs.h): set on one that shares a Service
 * with an HTTPRoute or GRPCRoute, naming the route zmesh's waypoint applies there (Istio leaves the mix
 * undefined), removed once it shares none; written only when it changes. Read from api/ as zmeshd reads it. */
static void vs_status_sync(struct ctl *ctl)
{
    const char *k;
    json_t *o;
    bool any = false;
    json_object_foreach(ctl->store, k, o) any = any || !strcmp(cluster_obj_kind(o), "VirtualService");
    if (!any) return;
    char api[CLUSTER_PATH_MAX], now[32], msg[4096];
    struct manifest_store *st = NULL;
    int rc = manifest_store_new(&st);
    if (!rc) rc = manifest_load_dir(st, cluster_path(ctl->cfg, api, sizeof(api), "api"), quiet_finding, NULL);
    if (rc) {
        ctl_log("virtualservices' %s conditions not updated: %s", VS_COND_ROUTE_CONFLICT, strerror(-rc));
        manifest_store_free(st);
        return;
    }
    size_t n = 0;
    const struct manifest_l7_doc *docs = manifest_l7_docs(st, &n);
    cluster_rfc3339(time(NULL), now, sizeof(now));
    json_object_foreach(ctl->store, k, o)
    {
        if (strcmp(cluster_obj_kind(o), "VirtualService")) continue;
        const char *ns = cluster_obj_ns(o), *name = cluster_obj_name(o);
        vs_conflict_message(docs, n, ns, name, msg, sizeof(msg));
        int r = vs_conflict_status_apply(o, msg, now);
        if (r < 0) {
            ctl_log("virtualservice/%s in namespace %s: %s not written: %s", name, ns, VS_COND_ROUTE_CONFLICT,
                    r == -EINVAL ? "status or status.conditions is not of its type" : strerror(-r));
            continue;
        }
        if (!r) continue;
        api_put(ctl, o);
        ctl_log("virtualservice/%s in namespace %s: %s %s", name, ns, VS_COND_ROUTE_CONFLICT,
                *msg ? msg : "removed (it shares no Service with a Gateway API route)");
    }
    manifest_store_free(st);
}

/* As the API server: status.conditions are the controllers' (the status subresource), so an apply keeps the
 * ones written before and drops any it carries; the rest of status (loadBalancer, which zmeshd reads) is the
 * applied object's. */
static void svc_keep_conditions(json_t *o, const json_t *old)
{
    json_t *st = json_object_get(o, "status"),
           *oc = json_object_get(json_object_get(old, "status"), "conditions");
    if (json_is_object(st)) json_object_del(st, "conditions");
    if (!json_is_array(oc) || !json_array_size(oc)) return;
    if (!json_is_object(st)) {
        st = json_object();
        json_object_set_new(o, "status", st);
    }
    json_object_set(st, "conditions", oc);
}

/* Every hour, as the node components': the waypoint pods' tokens are re-minted (the waypoint re-reads the
 * file, as a projected token is re-read). */
static void wp_token_cb(struct timer *t)
{
    struct ctl *ctl = container_of(t, struct ctl, wp_token_t);
    for (size_t i = 0; i < ctl->n_pods; i++) {
        struct pod *p = ctl->pods[i];
        char tok[CLUSTER_PATH_MAX];
        if (!wp_pod_managed(p) || p->deleting) continue;
        wp_token_path(ctl, p->spec.ns, p->spec.name, tok, sizeof(tok));
        sa_token(ctl, p->spec.ns, p->spec.service_account ? p->spec.service_account : "default",
                 p->sb.node->name, p->spec.name, p->sb.uid, tok);
    }
    timer_start(ctl->loop, t, NODE_TOKEN_REFRESH_MS);
}

/* A Gateway coming in: its status is the controller's (a subresource: an apply does not carry it), a
 * waypoint's fields are checked, another class is stored with nothing made (said once per class). */
static int wp_admit(struct ctl *ctl, json_t *o, const json_t *old, char *err, size_t errlen)
{
    if (old && json_object_get(old, "status"))
        json_object_set(o, "status", json_object_get(old, "status"));
    else
        json_object_del(o, "status");
    if (!wp_is_waypoint(o)) {
        const char *cls = json_string_value(json_object_get(json_object_get(o, "spec"), "gatewayClassName"));
        if (!cls) cls = "";
        if (!ctl->classes_told) ctl->classes_told = json_object();
        if (!json_object_get(ctl->classes_told, cls)) {
            json_object_set_new(ctl->classes_told, cls, json_true());
            ctl_log("gateway/%s in namespace %s: class \"%s\" has no controller in zmesh up (only %s); the "
                    "Gateway is stored, nothing is made for it",
                    cluster_obj_name(o), cluster_obj_ns(o), cls, WP_CLASS);
        }
        return 0;
    }
    json_t *warnings = json_array(), *w;
    int rc = wp_gateway_check(o, err, errlen, warnings);
    size_t i;
    json_array_foreach(warnings, i, w) ctl_log("warning: %s", json_string_value(w));
    json_decref(warnings);
    return rc;
}

/* Applies one object (borrowed). Appends "kind/name created|configured|unchanged" to results. */
static int ctl_apply_checked(struct ctl *ctl, json_t *o, json_t *old, const char *key, const char *kind,
                             const char *ns, const char *name, const char *workdir, json_t *results,
                             char *err, size_t errlen, const char *verb);

int ctl_apply_object(struct ctl *ctl, json_t *o, const char *workdir, json_t *results, char *err,
                     size_t errlen)
{
    const char *kind = cluster_obj_kind(o), *ns = cluster_obj_ns(o), *name = cluster_obj_name(o);
    char key[CLUSTER_NAME_MAX * 6];
    obj_key(kind, ns, name, key, sizeof(key));
    json_t *old = json_object_get(ctl->store, key);
    const char *verb = "created";
    /* As the API server: uid and creationTimestamp are set once, kept across applies. The comparisons below
     * see the object with them, so an identical re-apply is "unchanged". */
    o = json_deep_copy(o);
    if (!o) return -ENOMEM;
    json_t *md = json_object_get(o, "metadata");
    json_t *omd = old ? json_object_get(old, "metadata") : NULL;
    if (!json_object_get(md, "creationTimestamp")) {
        char ts[32];
        cluster_rfc3339(time(NULL), ts, sizeof(ts));
        json_t *ot = json_object_get(omd, "creationTimestamp");
        json_object_set_new(md, "creationTimestamp", ot ? json_incref(ot) : json_string(ts));
    }
    if (!json_object_get(md, "uid")) {
        char uid[40];
        json_t *ou = json_object_get(omd, "uid");
        if (!ou) uuid_from_hex(uid, sizeof(uid));
        json_object_set_new(md, "uid", ou ? json_incref(ou) : json_string(uid));
    }
    /* Held: storing o drops the store's reference to old, which is compared after that. */
    json_incref(old);
    int rc_ = ctl_apply_checked(ctl, o, old, key, kind, ns, name, workdir, results, err, errlen, verb);
    json_decref(old);
    json_decref(o);
    return rc_;
}

static int ctl_apply_checked(struct ctl *ctl, json_t *o, json_t *old, const char *key, const char *kind,
                             const char *ns, const char *name, const char *workdir, json_t *results,
                             char *err, size_t errlen, const char *verb)
{
    char line[CLUSTER_NAME_MAX * 4], lk[64];
    snprintf(lk, sizeof(lk), "%s", kind);
    for (char *q = lk; *q; q++)
        *q = (char)(*q >= 'A' && *q <= 'Z' ? *q + 32 : *q);
    if (!strcmp(kind, "Node")) {
        if (!cluster_node_find(ctl->cfg, name)) {
            snprintf(err, errlen, "node/%s: nodes are set when the cluster comes up (zmesh down, then up)",
                     name);
            return -EINVAL;
        }
        verb = old && json_equal(old, o) ? "unchanged" : "configured";
        json_object_set(ctl->store, key, o);
        api_put(ctl, o);
    } else if (!strcmp(kind, "Pod")) {
        struct pod *p = pod_find(ctl, ns, name);
        if (p) {
            if (!json_equal(json_object_get(p->obj, "spec"), json_object_get(o, "spec"))) {
                /* As the API server: a pod's spec is immutable (bar a few fields zmesh does not run). */
                snprintf(err, errlen,
                         "pod/%s (namespace %s): spec is immutable; delete the pod and apply it again", name,
                         ns);
                return -EINVAL;
            }
            verb = json_equal(p->obj, o) ? "unchanged" : "configured";
            json_decref(p->obj);
            p->obj = json_incref(o);
            pod_mark(p);
        } else {
            ensure_namespace(ctl, ns);
            int rc = pod_create(ctl, o, workdir, err, errlen);
            if (rc) return rc;
        }
        json_object_set(ctl->store, key, o);
    } else {
        if (*ns) ensure_namespace(ctl, ns);
        if (!strcmp(kind, "Service")) {
            const char *was =
                old ? json_string_value(json_object_get(json_object_get(old, "spec"), "clusterIP")) : NULL;
            json_t *spec = json_object_get(o, "spec");
            /* As the API server: an allocated clusterIP stays across applies that do not set one. */
            if (was && json_is_object(spec) && !json_object_get(spec, "clusterIP")) {
                json_object_set_new(spec, "clusterIP", json_string(was));
                json_object_set_new(spec, "clusterIPs", json_pack("[s]", was));
            }
            alloc_cluster_ip(ctl, o);
            svc_keep_conditions(o, old);
        }
        if (wp_is_gateway(o)) {
            int rc = wp_admit(ctl, o, old, err, errlen);
            if (rc) return rc;
        }
        verb = !old ? "created" : json_equal(old, o) ? "unchanged" : "configured";
        json_object_set(ctl->store, key, o);
        if (wp_is_waypoint(o)) {
            wp_reconcile(ctl, o);
            char now[32];
            cluster_rfc3339(time(NULL), now, sizeof(now));
            json_object_set_new(o, "status", wp_gateway_status(o, wp_ready(ctl, ns, name), now));
        }
        /* An unchanged Gateway is not rewritten: zmeshd reloads on every api/ write. */
        if (!(wp_is_gateway(o) && old && json_equal(old, o))) api_put(ctl, o);
    }
    snprintf(line, sizeof(line), "%s/%s %s", lk, name, verb);
    ctl_log("%s%s%s", line, *ns ? " in namespace " : "", ns);
    json_array_append_new(results, json_string(line));
    return 0;
}

int ctl_delete_object(struct ctl *ctl, const char *kind, const char *ns, const char *name, json_t *results,
                      char *err, size_t errlen)
{
    char key[CLUSTER_NAME_MAX * 6], line[CLUSTER_NAME_MAX * 4], lk[64];
    snprintf(lk, sizeof(lk), "%s", kind);
    for (char *q = lk; *q; q++)
        *q = (char)(*q >= 'A' && *q <= 'Z' ? *q + 32 : *q);
    obj_key(kind, ns, name, key, sizeof(key));
    if (!json_object_get(ctl->store, key)) {
        snprintf(err, errlen, "%s \"%s\" not found%s%s", lk, name, *ns ? " in namespace " : "", ns);
        return -ENOENT;
    }
    if (!strcmp(kind, "Node")) {
        snprintf(err, errlen, "node/%s: nodes stay until zmesh down", name);
        return -EINVAL;
    }
    char owner[CLUSTER_NAME_MAX * 4] = "";
    if (!strcmp(kind, "Pod")) {
        struct pod *p = pod_find(ctl, ns, name);
        if (p && wp_pod_managed(p))
            snprintf(
                owner, sizeof(owner), "%s",
                json_string_value(json_object_get(
                    json_object_get(json_object_get(p->obj, "metadata"), "labels"), WP_LABEL_GATEWAY_NAME)));
        if (p) pod_destroy(ctl, p);
    } else if (!strcmp(kind, "Namespace")) {
        /* As the API server: deleting a namespace deletes what is in it. */
        const char *k;
        json_t *v;
        void *tmp;
        json_t *inner = json_array();
        json_t *keys = json_array();
        /* Collected first: deleting a Gateway deletes the objects made for it, which may be the next ones. */
        for (int pass = 0; pass < 2; pass++) /* Gateways first: their pods are not replaced then */
            json_object_foreach_safe(ctl->store, tmp, k, v) if (!strcmp(cluster_obj_ns(v), name) &&
                                                                (pass == 0) == wp_is_gateway(v))
                json_array_append_new(keys, json_pack("[s,s]", cluster_obj_kind(v), cluster_obj_name(v)));
        size_t i;
        json_t *kv;
        json_array_foreach(keys, i, kv)
        {
            char e2[300], k2[CLUSTER_NAME_MAX * 6];
            const char *kk = json_string_value(json_array_get(kv, 0)),
                       *kn = json_string_value(json_array_get(kv, 1));
            obj_key(kk, name, kn, k2, sizeof(k2));
            if (json_object_get(ctl->store, k2)) ctl_delete_object(ctl, kk, name, kn, inner, e2, sizeof(e2));
        }
        json_decref(keys);
        json_decref(inner);
        api_remove(ctl, kind, ns, name);
    } else {
        bool gw = wp_is_gateway(json_object_get(ctl->store, key));
        api_remove(ctl, kind, ns, name);
        /* As the API server's garbage collector: what the Gateway owns goes with it. */
        if (gw) {
            json_object_del(ctl->store, key);
            wp_delete_managed(ctl, ns, name, NULL, NULL, NULL);
        }
    }
    json_object_del(ctl->store, key);
    loop_defer(ctl->loop, &ctl->flush); /* Services' endpoints and waypoint status follow */
    if (*owner && !ctl->wp_busy && !ctl->stopping) {
        /* As a Deployment: a waypoint pod deleted on its own is replaced while its Gateway exists. */
        char gk[CLUSTER_NAME_MAX * 6];
        obj_key("Gateway", ns, owner, gk, sizeof(gk));
        json_t *gw = json_object_get(ctl->store, gk);
        if (wp_is_waypoint(gw)) wp_reconcile(ctl, gw);
    }
    snprintf(line, sizeof(line), "%s \"%s\" deleted", lk, name);
    ctl_log("%s%s%s", line, *ns ? " from namespace " : "", ns);
    json_array_append_new(results, json_string(line));
    return 0;
}

static int ctl_label(struct ctl *ctl, json_t *req, json_t *results, char *err, size_t errlen)
{
    const char *kind = json_string_value(json_object_get(req, "kind")),
               *ns = json_string_value(json_object_get(req, "namespace")),
               *name = json_string_value(json_object_get(req, "name"));
    char key[CLUSTER_NAME_MAX * 6], line[CLUSTER_NAME_MAX * 3];
    if (!kind || !name) {
        snprintf(err, errlen, "label: kind and name are required");
        return -EINVAL;
    }
    if (!ns || cluster_kind_cluster_scoped(kind)) ns = "";
    obj_key(kind, ns, name, key, sizeof(key));
    json_t *o = json_object_get(ctl->store, key);
    if (!o) {
        snprintf(err, errlen, "%s \"%s\" not found", !strcmp(kind, "Namespace") ? "namespaces" : kind, name);
        return -ENOENT;
    }
    json_t *n = json_deep_copy(o), *md = json_object_get(n, "metadata"),
           *labels = json_object_get(md, "labels");
    if (!json_is_object(labels)) {
        labels = json_object();
        json_object_set_new(md, "labels", labels);
    }
    const char *k;
    json_t *v;
    json_object_foreach(json_object_get(req, "set"), k, v) json_object_set(labels, k, v);
    size_t i;
    json_array_foreach(json_object_get(req, "remove"), i, v) json_object_del(labels, json_string_value(v));
    bool same = json_equal(n, o);
    if (!strcmp(kind, "Pod")) {
        struct pod *p = pod_find(ctl, ns, name);
        if (p) {
            json_decref(p->obj);
            p->obj = json_incref(n);
            pod_mark(p);
        }
    } else {
        api_put(ctl, n);
    }
    json_object_set_new(ctl->store, key, n);
    snprintf(line, sizeof(line), "%s/%s %s", !strcmp(kind, "Namespace") ? "namespace" : kind, name,
             same ? "not labeled" : "labeled");
    ctl_log("%s", line);
    json_array_append_new(results, json_string(line));
    return 0;
}

/* What `zmesh up` waits for, and what it mentions without waiting for it. */
static json_t *ctl_status(struct ctl *ctl)
{
    json_t *waiting = json_array(), *notes = json_array();
    char b[2000], eb[40];
    for (size_t i = 0; i < ctl->n_pods; i++) {
        struct pod *p = ctl->pods[i];
        const char *phase = pod_phase(p);
        if (pod_ready(p) || !strcmp(phase, "Succeeded")) continue;
        const char *why = "";
        char wb[1000] = "";
        if (!p->sandbox_ok) why = *p->sandbox_err ? p->sandbox_err : "creating its sandbox";
        for (size_t j = 0; j < p->n && !*why; j++) {
            struct container *c = &p->c[j];
            if (c->p.state == P_BACKOFF || (c->p.state == P_DONE && c->p.last_exit != 0))
                snprintf(wb, sizeof(wb), "container %s %s (%s, %u restarts; log %s)", c->spec->name,
                         c->p.state == P_BACKOFF ? "is in CrashLoopBackOff" : "failed",
                         exit_text(c->p.last_exit, eb, sizeof(eb)), c->p.restarts, c->log);
            else if (!c->ready)
                snprintf(wb, sizeof(wb), "container %s not ready%s%s", c->spec->name,
                         *c->probe_msg ? ": " : "", c->probe_msg);
            if (*wb) why = wb;
        }
        snprintf(b, sizeof(b), "%spod %s/%s (node %s): %s, %s", wp_pod_managed(p) ? "waypoint " : "",
                 p->spec.ns, p->spec.name, p->sb.node->name, phase, why);
        /* A waypoint does not hold up back (kubectl apply of a Gateway does not wait either): said instead.
         */
        json_array_append_new(wp_pod_managed(p) ? notes : waiting, json_string(b));
    }
    if (ctl->zmeshd && !ctl->zmeshd->ready) {
        snprintf(b, sizeof(b), "zmeshd: %s (log %s)",
                 *ctl->zmeshd->check_msg ? ctl->zmeshd->check_msg : "not ready", ctl->zmeshd->log);
        json_array_append_new(waiting, json_string(b));
    }
    if (ctl->cfg->mesh && !ctl->mesh_started)
        json_array_append_new(waiting,
                              json_string("mesh: node ztunnels and agents start once zmeshd is ready"));
    for (size_t i = 0; i < ctl->n_nodeprocs; i++) {
        struct sysproc *s = ctl->nodeprocs[i];
        if (s->ready || s->retiring) continue;
        /* Tolerant: a node component that keeps exiting does not hold the cluster back; pods then run
         * without the mesh (plain text), which is said. One that runs is waited for. */
        if (s->p.restarts > 0 || s->p.state != P_RUNNING) {
            snprintf(b, sizeof(b),
                     "%s is not running (%s, %u restarts; log %s): pods on this node run without the mesh",
                     s->p.what,
                     s->p.last_exit >= 0 ? exit_text(s->p.last_exit, eb, sizeof(eb))
                                         : proc_state_str(s->p.state),
                     s->p.restarts, s->log);
            json_array_append_new(notes, json_string(b));
        } else {
            snprintf(b, sizeof(b), "%s: %s (log %s)", s->p.what, *s->check_msg ? s->check_msg : "not ready",
                     s->log);
            json_array_append_new(waiting, json_string(b));
        }
    }
    json_t *zts = json_array();
    for (size_t i = 0; i < ctl->n_nodeprocs; i++) {
        struct sysproc *s = ctl->nodeprocs[i];
        if (s->kind != SYS_ZTUNNEL || s->p.state == P_DONE) continue;
        json_array_append_new(zts, json_pack("{s:s,s:i,s:i,s:b,s:b,s:i}", "node",
                                             ctl->cfg->nodes[s->node].name, "generation", (int)s->gen, "pid",
                                             (int)s->p.pid, "ready", s->ready, "draining", s->retiring,
                                             "admin_port", 15000 + (int)zt_port_offset(s)));
    }
    json_t *r = json_pack("{s:b,s:b,s:o,s:o,s:o}", "ok", 1, "ready", json_array_size(waiting) == 0, "waiting",
                          waiting, "notes", notes, "ztunnels", zts);
    return r;
}

/* zmesh rollout ztunnel <node>: a new ztunnel generation beside the node's current one. */
static int ctl_rollout(struct ctl *ctl, json_t *req, json_t *results, char *err, size_t errlen)
{
    const char *node = json_string_value(json_object_get(req, "node"));
    size_t ni = ctl->cfg->n_nodes;
    for (size_t i = 0; node && i < ctl->cfg->n_nodes; i++)
        if (!strcmp(ctl->cfg->nodes[i].name, node)) ni = i;
    if (ni == ctl->cfg->n_nodes) {
        snprintf(err, errlen, "node \"%s\" not found", node ? node : "");
        return -ENOENT;
    }
    if (!ctl->mesh_started) {
        snprintf(err, errlen, "the mesh is not running (zmesh up --no-mesh, or zmeshd is not ready yet)");
        return -EAGAIN;
    }
    struct sysproc *cur = NULL;
    for (size_t i = 0; i < ctl->n_nodeprocs; i++) {
        struct sysproc *s = ctl->nodeprocs[i];
        if (s->kind != SYS_ZTUNNEL || s->node != ni || s->retiring || s->p.state == P_DONE) continue;
        if (s->replaces) {
            snprintf(err, errlen, "a rollout of ztunnel %s is under way (generation %u is not ready yet)",
                     node, s->gen);
            return -EBUSY;
        }
        cur = s;
    }
    if (!cur) {
        snprintf(err, errlen, "node %s has no ztunnel", node);
        return -ENOENT;
    }
    if (ctl->n_nodeprocs == ctl->cap_nodeprocs) {
        size_t ncap = ctl->cap_nodeprocs * 2;
        struct sysproc **np = realloc(ctl->nodeprocs, ncap * sizeof(*np));
        if (!np) return -ENOMEM;
        ctl->nodeprocs = np;
        ctl->cap_nodeprocs = ncap;
    }
    struct sysproc *z = sys_new(ctl, SYS_ZTUNNEL, ni);
    if (!z) return -ENOMEM;
    z->gen = cur->gen + 1;
    z->replaces = cur;
    ctl->nodeprocs[ctl->n_nodeprocs++] = z;
    z->p.spawn(&z->p);
    char b[300];
    snprintf(b, sizeof(b),
             "ztunnel %s: generation %u started (pid %d); generation %u (pid %d) drains once it is ready",
             node, z->gen, (int)z->p.pid, cur->gen, (int)cur->p.pid);
    json_array_append_new(results, json_string(b));
    return 0;
}

/* ---- shutdown ---- */

static void ctl_stop_all(struct ctl *ctl)
{
    ctl->stopping = true;
    ctl_log("stopping: %zu pods", ctl->n_pods);
    /* Every pod's containers get SIGTERM at once, then each pod is torn down (CNI DEL while the agents still
     * run, so they hear of it). */
    size_t total = 0;
    for (size_t i = 0; i < ctl->n_pods; i++)
        total += ctl->pods[i]->n * 2;
    pid_t *pids = calloc(total + 1, sizeof(pid_t));
    size_t n = 0;
    int grace = 0;
    for (size_t i = 0; i < ctl->n_pods; i++) {
        struct pod *p = ctl->pods[i];
        if (p->spec.grace_s > grace) grace = p->spec.grace_s;
        for (size_t j = 0; j < p->n; j++) {
            if (pids && p->c[j].p.pid > 0) pids[n++] = p->c[j].p.pid;
            if (pids && p->c[j].probe_pid > 0) pids[n++] = p->c[j].probe_pid;
            p->c[j].p.pid = p->c[j].probe_pid = 0;
        }
    }
    if (pids) stop_pids(pids, n, (uint64_t)grace * 1000);
    free(pids);
    while (ctl->n_pods)
        pod_destroy(ctl, ctl->pods[ctl->n_pods - 1]);
    /* Rollouts add ztunnels: as many slots as there are node components, plus zmeshd. */
    pid_t *sp = calloc(ctl->n_nodeprocs + 1, sizeof(pid_t));
    size_t ns = 0;
    for (size_t i = 0; i < ctl->n_nodeprocs; i++) {
        timer_stop(ctl->loop, &ctl->nodeprocs[i]->p.t);
        if (sp && ctl->nodeprocs[i]->p.pid > 0) sp[ns++] = ctl->nodeprocs[i]->p.pid;
        if (ctl->nodeprocs[i]->check_pid > 0) kill(-ctl->nodeprocs[i]->check_pid, SIGKILL);
    }
    if (ctl->zmeshd) {
        timer_stop(ctl->loop, &ctl->zmeshd->p.t);
        if (sp && ctl->zmeshd->p.pid > 0) sp[ns++] = ctl->zmeshd->p.pid;
        if (ctl->zmeshd->check_pid > 0) kill(-ctl->zmeshd->check_pid, SIGKILL);
    }
    if (sp) stop_pids(sp, ns, SYS_GRACE_MS);
    free(sp);
    for (size_t i = 0; i < ctl->n_nodeprocs + 1; i++) {
        struct sysproc *s = i < ctl->n_nodeprocs ? ctl->nodeprocs[i] : ctl->zmeshd;
        if (s && *s->rec.a) cluster_record_remove(ctl->cfg->state, &s->rec);
    }
    ctl_log("stopped");
    loop_stop(ctl->loop);
}

/* ---- the command socket ---- */

static json_t *handle(struct ctl *ctl, json_t *req, bool *shutdown)
{
    const char *op = json_string_value(json_object_get(req, "op"));
    char err[1200] = "";
    json_t *results = json_array();
    int rc = 0;
    if (!op) {
        snprintf(err, sizeof(err), "request without \"op\"");
        rc = -EINVAL;
    } else if (!strcmp(op, "status")) {
        json_decref(results);
        return ctl_status(ctl);
    } else if (!strcmp(op, "apply") || !strcmp(op, "delete")) {
        size_t i;
        json_t *o;
        /* A delete takes Namespaces last: what is in them goes first, by name, so a file that lists both
         * (namespace first, as apply wants it) does not report its other objects as not found. */
        json_t *objs = json_object_get(req, "objects"), *order = json_array();
        for (int pass = 0; pass < 2; pass++)
            json_array_foreach(
                objs, i, o) if ((op[0] == 'a' && pass == 0) ||
                                (op[0] == 'd' && (pass == 1) == !strcmp(cluster_obj_kind(o), "Namespace")))
                json_array_append(order, o);
        json_array_foreach(order, i, o)
        {
            char e1[1000] = "";
            int r = op[0] == 'a'
                        ? ctl_apply_object(ctl, o, json_string_value(json_object_get(req, "workdir")),
                                           results, e1, sizeof(e1))
                        : ctl_delete_object(ctl, cluster_obj_kind(o), cluster_obj_ns(o), cluster_obj_name(o),
                                            results, e1, sizeof(e1));
            if (r) {
                /* kubectl goes on with the other objects and reports each failure. */
                rc = r;
                size_t l = strlen(err);
                snprintf(err + l, sizeof(err) - l, "%s%s", l ? "; " : "", e1);
            }
        }
        json_decref(order);
    } else if (!strcmp(op, "label")) {
        rc = ctl_label(ctl, req, results, err, sizeof(err));
    } else if (!strcmp(op, "rollout")) {
        rc = ctl_rollout(ctl, req, results, err, sizeof(err));
    } else if (!strcmp(op, "shutdown")) {
        *shutdown = true;
    } else {
        snprintf(err, sizeof(err), "unknown op \"%s\"", op);
        rc = -EINVAL;
    }
    /* What an apply, delete or label changes reaches the status writers (Services' WaypointBound). */
    if (op && (!strcmp(op, "apply") || !strcmp(op, "delete") || !strcmp(op, "label")))
        loop_defer(ctl->loop, &ctl->flush);
    json_t *r = json_pack("{s:b,s:o}", "ok", rc == 0, "results", results);
    if (rc) json_object_set_new(r, "error", json_string(err));
    return r;
}

static void sock_cb(struct io *io, uint32_t ev)
{
    struct ctl *ctl = container_of(io, struct ctl, sock_io);
    int fd = accept4(io->fd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0) return;
    struct timeval tv = {.tv_sec = REQ_TIMEOUT_S};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    size_t cap = 65536, n = 0;
    char *buf = malloc(cap);
    bool shutdown_req = false;
    json_t *resp = NULL;
    for (; buf;) {
        if (n + 1 >= cap) {
            if (cap >= REQ_MAX) break;
            char *nb = realloc(buf, cap * 2);
            if (!nb) break;
            buf = nb;
            cap *= 2;
        }
        ssize_t k = read(fd, buf + n, cap - n - 1);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) break;
        n += (size_t)k;
    }
    json_error_t je;
    json_t *req = buf ? json_loadb(buf, n, 0, &je) : NULL;
    free(buf);
    if (!req)
        resp = json_pack("{s:b,s:s}", "ok", 0, "error", "request is not JSON");
    else
        resp = handle(ctl, req, &shutdown_req);
    json_decref(req);
    char *s = resp ? json_dumps(resp, JSON_COMPACT) : NULL;
    json_decref(resp);
    if (s) {
        size_t len = strlen(s), off = 0;
        while (off < len) {
            ssize_t k = write(fd, s + off, len - off);
            if (k <= 0) break;
            off += (size_t)k;
        }
    }
    free(s);
    close(fd);
    if (shutdown_req) ctl_stop_all(ctl);
}

static void sig_cb(struct io *io, uint32_t ev)
{
    struct ctl *ctl = container_of(io, struct ctl, sig_io);
    struct signalfd_siginfo si;
    bool chld = false;
    while (read(io->fd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
        if (si.ssi_signo == SIGCHLD)
            chld = true;
        else if ((si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT) && !ctl->stopping) {
            ctl_log("signal %d: stopping every pod", (int)si.ssi_signo);
            ctl_stop_all(ctl);
            return;
        }
    }
    if (chld) reap(ctl);
}

static int listen_socket(const struct cluster_cfg *cfg)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    char path[CLUSTER_PATH_MAX];
    cluster_path(cfg, path, sizeof(path), "controller.sock");
    if (strlen(path) >= sizeof(a.sun_path)) {
        ctl_log("%s: path too long for a Unix socket", path);
        return -ENAMETOOLONG;
    }
    strcpy(a.sun_path, path);
    unlink(path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return -errno;
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) || listen(fd, 16)) {
        int e = errno;
        close(fd);
        ctl_log("%s: %s", path, strerror(e));
        return -e;
    }
    chmod(path, 0600);
    return fd;
}

int ctl_run(const struct cluster_cfg *cfg, json_t *objects, const char *workdir)
{
    struct ctl ctl = {.cfg = cfg, .store = json_object()};
    ctl.flush.cb = flush_cb;
    if (!(ctl.loop = loop_new())) return 1;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigprocmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    ctl.sig_io.fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    ctl.sig_io.cb = sig_cb;
    ctl.sock_io.fd = listen_socket(cfg);
    ctl.sock_io.cb = sock_cb;
    if (ctl.sig_io.fd < 0 || ctl.sock_io.fd < 0 || loop_io_add(ctl.loop, &ctl.sig_io, EPOLLIN) ||
        loop_io_add(ctl.loop, &ctl.sock_io, EPOLLIN)) {
        ctl_log("cannot set up the controller's signal and command sockets");
        return 1;
    }
    ctl_log("controller up: state %s, %zu nodes, mesh %s", cfg->state, cfg->n_nodes,
            cfg->mesh ? "on" : "off");
    /* The default namespace exists in every cluster; the nodes are API objects too. */
    ensure_namespace(&ctl, "default");
    json_t *results = json_array();
    for (size_t i = 0; i < cfg->n_nodes; i++) {
        const struct cluster_node *n = &cfg->nodes[i];
        char key[CLUSTER_NAME_MAX * 3];
        obj_key("Node", "", n->name, key, sizeof(key));
        json_t *given = NULL;
        size_t k;
        json_t *o;
        json_array_foreach(objects, k, o) if (!strcmp(cluster_obj_kind(o), "Node") &&
                                              !strcmp(cluster_obj_name(o), n->name)) given = o;
        json_t *node = given ? json_deep_copy(given)
                             : json_pack("{s:s,s:s,s:{s:s}}", "apiVersion", "v1", "kind", "Node", "metadata",
                                         "name", n->name);
        if (!json_is_object(json_object_get(node, "spec"))) json_object_set_new(node, "spec", json_object());
        char ts[32];
        cluster_rfc3339(time(NULL), ts, sizeof(ts));
        json_object_set_new(json_object_get(node, "metadata"), "creationTimestamp", json_string(ts));
        json_object_set_new(json_object_get(node, "spec"), "podCIDR", json_string(n->pod_cidr));
        json_object_set_new(node, "status",
                            json_pack("{s:[{s:s,s:s},{s:s,s:s}]}", "addresses", "type", "InternalIP",
                                      "address", n->ip, "type", "Hostname", "address", n->name));
        json_object_set_new(ctl.store, key, node);
        api_put(&ctl, node);
    }
    size_t i;
    json_t *o;
    json_array_foreach(objects, i, o)
    {
        if (!strcmp(cluster_obj_kind(o), "Node")) continue;
        char err[1000];
        if (ctl_apply_object(&ctl, o, workdir, results, err, sizeof(err))) ctl_log("apply: %s", err);
    }
    json_decref(results);
    flush_cb(&ctl.flush);
    /* zmeshd starts after the first api/ contents are written: its first load sees the whole cluster. */
    if ((ctl.zmeshd = sys_new(&ctl, SYS_ZMESHD, 0))) ctl.zmeshd->p.spawn(&ctl.zmeshd->p);
    ctl.wp_token_t.cb = wp_token_cb;
    timer_start(ctl.loop, &ctl.wp_token_t, NODE_TOKEN_REFRESH_MS);
    loop_run(ctl.loop);
    json_decref(ctl.classes_told);
    char sp[CLUSTER_PATH_MAX];
    unlink(cluster_path(cfg, sp, sizeof(sp), "controller.sock"));
    json_decref(ctl.store);
    ctl_log("controller exits");
    return ctl.exit_code;
}

/* ---- client ---- */

int ctl_call(const char *state, json_t *req, json_t **resp, int timeout_ms, char *err, size_t errlen)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (snprintf(a.sun_path, sizeof(a.sun_path), "%s/controller.sock", state) >= (int)sizeof(a.sun_path)) {
        snprintf(err, errlen, "%s/controller.sock: path too long for a Unix socket", state);
        return -ENAMETOOLONG;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    if (connect(fd, (struct sockaddr *)&a, sizeof(a))) {
        int e = errno;
        snprintf(err, errlen, "no controller at %s: %s (is the cluster up? zmesh up <dir> --state-dir %s)",
                 a.sun_path, strerror(e), state);
        close(fd);
        return -e;
    }
    char *s = json_dumps(req, JSON_COMPACT);
    size_t len = s ? strlen(s) : 0, off = 0;
    while (s && off < len) {
        ssize_t k = write(fd, s + off, len - off);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) break;
        off += (size_t)k;
    }
    free(s);
    shutdown(fd, SHUT_WR);
    size_t cap = 65536, n = 0;
    char *b = malloc(cap);
    int64_t deadline = cluster_now_ms() + timeout_ms;
    int rc = 0;
    while (b) {
        int64_t left = deadline - cluster_now_ms();
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (left <= 0 || poll(&pfd, 1, (int)left) <= 0) {
            snprintf(err, errlen,
                     "the controller did not answer within %d ms (its log: %s/logs/controller.log)",
                     timeout_ms, state);
            rc = -ETIMEDOUT;
            break;
        }
        if (n + 1 >= cap) {
            char *nb = realloc(b, cap * 2);
            if (!nb) break;
            b = nb;
            cap *= 2;
        }
        ssize_t k = read(fd, b + n, cap - n - 1);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) break;
        n += (size_t)k;
    }
    close(fd);
    if (!rc) {
        json_error_t je;
        *resp = b ? json_loadb(b, n, 0, &je) : NULL;
        if (!*resp) {
            snprintf(err, errlen,
                     "the controller's answer is not JSON (%zu bytes; see %s/logs/controller.log)", n, state);
            rc = -EPROTO;
        }
    }
    free(b);
    return rc;
}
