/* ztunnel entry point: environment, config (and its live reload), identity, workers, drain.
 *
 * The main thread runs its own small loop for signals (signalfd), the config file watch (inotify) and the
 * drain deadline; the workers run the data path. */
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <libgen.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "core/acceptor.h"
#include "core/list.h"
#include "core/log.h"
#include "core/version.h"
#include "mesh/config.h"
#include "tls/identity.h"
#include "tls/tls.h"
#include "xds/ads_client.h"
#include "xds/ca_client.h"
#include "ztunnel/admin.h"
#include "ztunnel/metrics.h"
#include "ztunnel/proxy.h"
#include "ztunnel/settings.h"
#include "ztunnel/zds.h"

#define RELOAD_DEBOUNCE_MS 100
#define DRAIN_POLL_MS 50

struct app {
    struct loop *loop;
    const char *cfg_path;
    char cfg_dir[4096], cfg_base[256];
    struct cert_provider *prov;
    struct identity_mgr *idm;
    struct xds_client *xds;  /* config from XDS_ADDRESS, else from cfg_path */
    _Atomic bool xds_synced; /* every xDS type got its first response */
    struct zds_client *zds;  /* shared mode: the node agent */
    _Atomic bool zds_ready;  /* zds_client_ready, for the admin thread */
    struct pod_proxy *pods;  /* the pods served (dedicated mode: one); changed under pods_lock */
    size_t n_pods;
    pthread_mutex_t pods_lock; /* the main thread changes the list, the admin thread reads it */
    struct worker workers[ZT_MAX_WORKERS];
    int n_workers;
    bool workers_started;
    uint64_t version;
    /* The latest snapshot (reference held), which new pods and the admin thread take. */
    pthread_mutex_t snap_lock;
    struct snapshot *snap;
    _Atomic bool have_config;              /* app.snap is set */
    _Atomic(struct pod_proxy *) published; /* dedicated mode: the pod once it serves, for the admin thread */
    bool draining;
    uint64_t drain_deadline;
    struct io sig_io, ino_io;
    struct timer reload_timer, drain_timer;
};

static struct app app = {.snap_lock = PTHREAD_MUTEX_INITIALIZER, .pods_lock = PTHREAD_MUTEX_INITIALIZER};

static bool shared_mode(void)
{
    return zt_cfg.proxy_mode == ZT_MODE_SHARED;
}

/* ---- hooks for the admin thread ---- */

static struct snapshot *hook_snapshot(void *ud)
{
    (void)ud;
    pthread_mutex_lock(&app.snap_lock);
    struct snapshot *s = app.snap;
    if (s) snapshot_ref(s);
    pthread_mutex_unlock(&app.snap_lock);
    return s;
}

static int hook_certs(void *ud, struct identity_status **out)
{
    (void)ud;
    return identity_mgr_status(app.idm, out);
}

static const char *hook_pending(void *ud)
{
    static char buf[2 * ZT_NAME_MAX + 32]; /* the admin thread is the only caller */
    (void)ud;
    /* Every pending task, sorted and comma-separated as Istio's readiness server lists them. "state manager":
     * the first config load (with xDS, the first response of every type). Shared mode: "workload proxy
     * manager" until the node agent's snapshot is in and every pod started (workloadmanager.rs); each pod's
     * listeners wait for its own certificate, which readiness does not wait for. Dedicated mode: "proxy",
     * the listeners wait for the pod's first certificate (Istio's task names, app.rs), and "workload
     * <ns>/<name>" (zmesh's own): PROXY_WORKLOAD_INFO must name a workload of the config, or this pod cannot
     * serve. */
    if (shared_mode()) {
        bool synced = atomic_load(&app.have_config) && (!zt_cfg.xds_address || atomic_load(&app.xds_synced));
        bool zds = atomic_load(&app.zds_ready);
        if (synced && zds) return NULL;
        snprintf(buf, sizeof(buf), "%s%s%s", synced ? "" : "state manager", !synced && !zds ? ", " : "",
                 zds ? "" : "workload proxy manager");
        return buf;
    }
    struct pod_proxy *pp = atomic_load(&app.published);
    if (!pp || (zt_cfg.xds_address && !atomic_load(&app.xds_synced))) return "state manager";
    bool cert = atomic_load(&pp->has_identity);
    struct zt_view *v = pod_proxy_view(pp);
    bool self = v->self != NULL;
    zt_view_unref(v);
    if (cert && self) return NULL;
    if (!self)
        snprintf(buf, sizeof(buf), "%sworkload %s/%s", cert ? "" : "proxy, ", zt_cfg.workload.ns,
                 zt_cfg.workload.name);
    else
        snprintf(buf, sizeof(buf), "proxy");
    return buf;
}

static int hook_pods(void *ud, struct admin_pod **out)
{
    (void)ud;
    if (!shared_mode()) return -1;
    pthread_mutex_lock(&app.pods_lock);
    size_t n = app.n_pods;
    struct admin_pod *v = calloc(n ? n : 1, sizeof(*v));
    size_t i = 0;
    for (struct pod_proxy *pp = app.pods; v && pp; pp = pp->next, i++) {
        snprintf(v[i].uid, sizeof(v[i].uid), "%s", pp->uid);
        snprintf(v[i].name, sizeof(v[i].name), "%s", pp->name);
        snprintf(v[i].ns, sizeof(v[i].ns), "%s", pp->ns);
        snprintf(v[i].sa, sizeof(v[i].sa), "%s", pp->sa);
        v[i].state = "Up";
    }
    pthread_mutex_unlock(&app.pods_lock);
    if (!v) return 0;
    *out = v;
    return (int)n;
}

static void hook_quit(void *ud)
{
    (void)ud;
    kill(getpid(), SIGTERM); /* the main loop's signalfd turns it into a graceful drain */
}

static uint64_t active_total(void)
{
    uint64_t n = 0;
    for (int i = 0; i < app.n_workers; i++)
        n += app.workers[i].active;
    return n;
}

static void drain_tick(struct timer *t)
{
    uint64_t n = active_total();
    if (n == 0) {
        LOG_I("ztunnel", "drained, exiting");
        identity_mgr_stop(app.idm); /* no certificate minting while exit() tears OpenSSL down */
        exit(0);
    }
    if (loop_now(app.loop) >= app.drain_deadline) {
        LOG_I("ztunnel", "termination deadline reached, closing %llu remaining connections",
              (unsigned long long)n);
        identity_mgr_stop(app.idm);
        exit(0);
    }
    timer_start(app.loop, t, DRAIN_POLL_MS);
}

/* SIGTERM: stop accepting, let connections finish until CONNECTION_TERMINATION_DEADLINE, close the rest. */
static void start_drain(const char *why)
{
    if (app.draining) return;
    app.draining = true;
    uint64_t deadline = zt_cfg.termination_deadline_ms;
    LOG_I("ztunnel", "%s: draining %llu connections (deadline %llums)", why,
          (unsigned long long)active_total(), (unsigned long long)deadline);
    if (app.workers_started)
        for (int i = 0; i < app.n_workers; i++)
            worker_post_drain(&app.workers[i]);
    /* The node agent sends Adds to the newest ztunnel: this one takes no new pod from here on. */
    zds_client_free(app.zds);
    app.zds = NULL;
    atomic_store(&app.zds_ready, false);
    app.drain_deadline = loop_now(app.loop) + deadline;
    app.drain_timer.cb = drain_tick;
    timer_start(app.loop, &app.drain_timer, 0);
}

static void sig_cb(struct io *io, uint32_t ev)
{
    (void)ev;
    struct signalfd_siginfo si;
    while (read(io->fd, &si, sizeof(si)) == sizeof(si)) {
        if (app.draining && si.ssi_signo == SIGINT) exit(0); /* a second Ctrl-C means now */
        start_drain(si.ssi_signo == SIGTERM ? "received SIGTERM" : "received SIGINT");
    }
}

/* OpenSSL's and libc's start-up code (config, providers, error strings) touches most of their text and
 * read-only data once; with the kernel's fault-around that keeps several MB of library pages resident that
 * the data path never uses again. For read-only file mappings that hold no private (copied-on-write) page,
 * every page is a clean copy of the file, so dropping them is safe: marking them MADV_RANDOM (no
 * fault-around) and MADV_DONTNEED lets the kernel page back in only what is used. The pages stay in the page
 * cache, so this costs a few minor faults, not I/O. Writable mappings and relocated (RELRO) ones are left. */
static void trim_resident_text(void)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    char line[512];
    unsigned long lo = 0, hi = 0;
    bool candidate = false;
    if (!f) return;
    while (fgets(line, sizeof(line), f)) {
        unsigned long a, b, kb;
        char perms[8];
        if (sscanf(line, "%lx-%lx %7s", &a, &b, perms) == 3) {
            lo = a;
            hi = b;
            candidate = perms[0] == 'r' && perms[1] == '-' && perms[3] == 'p' && strchr(line, '/');
        } else if (candidate && sscanf(line, "Anonymous: %lu kB", &kb) == 1) {
            if (kb == 0) {
                madvise((void *)lo, hi - lo, MADV_RANDOM);
                madvise((void *)lo, hi - lo, MADV_DONTNEED);
            }
            candidate = false;
        }
    }
    fclose(f);
}

/* The certificate is minted for PROXY_WORKLOAD_INFO's service account, while peers expect the one the config
 * gives the workload: a mismatch makes every caller fail its identity check, so say so at once. */
static void warn_identity_mismatch(const struct pod_proxy *pp, const struct zt_view *v)
{
    if (!v->self || !strcmp(v->self->service_account, pp->sa)) return;
    log_kv(LOG_WARN, "ztunnel",
           "the pod's service account differs from the workload's in the config; callers expecting the "
           "config's identity will refuse this pod's certificate",
           "pod_sa", pp->sa, "config_sa", v->self->service_account, "workload", v->self->name, NULL);
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    loop_run(w->loop);
    return NULL;
}

static int start_workers(void)
{
    char err[1024];
    if ((zt_home_netns = net_netns_open_self()) < 0) {
        LOG_E("ztunnel", "cannot open ztunnel's network namespace: %s", strerror(-zt_home_netns));
        return -1;
    }
    for (int i = 0; i < app.n_workers; i++) {
        if (worker_init(&app.workers[i], i, err, sizeof(err)) < 0) {
            log_kv(LOG_ERROR, "ztunnel", "failed to start a worker", "error", err, NULL);
            return -1;
        }
    }
    for (int i = 0; i < app.n_workers; i++) {
        if (pthread_create(&app.workers[i].thread, NULL, worker_main, &app.workers[i]) != 0) {
            LOG_E("ztunnel", "cannot start worker thread %d", i);
            return -1;
        }
    }
    app.workers_started = true;
    return 0;
}

/* Starts serving a pod with the current snapshot: listeners in netns_fd (owned on success; -1: ztunnel's
 * own), a view, the identity. Returns the pod, or NULL with err filled. */
static struct pod_proxy *serve_pod(const char *uid, const char *ns, const char *name, const char *sa,
                                   int netns_fd, char *err, size_t errlen)
{
    struct pod_proxy *pp;
    struct zt_view *v = zt_view_new(app.snap, ns, name, app.version);
    if (!v) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    /* The trust domain is the workload's in the config; a pod the config does not list yet (its IP is
     * still on its way) gets the default one. */
    const char *td = v->self && *v->self->trust_domain ? v->self->trust_domain : NULL;
    if (pod_proxy_new(&pp, uid, ns, name, sa, td, netns_fd, app.workers, app.n_workers, err, errlen) < 0) {
        zt_view_unref(v);
        return NULL;
    }
    warn_identity_mismatch(pp, v);
    int rc = pod_proxy_start(pp, v, app.idm);
    zt_view_unref(v);
    if (rc < 0) {
        snprintf(err, errlen, "cannot subscribe to the certificate of %s: out of memory", pp->id_uri);
        pp->netns_fd = -1; /* still the caller's */
        pod_proxy_retire(pp);
        return NULL;
    }
    pthread_mutex_lock(&app.pods_lock);
    LIST_PUSH(app.pods, pp);
    app.n_pods++;
    pthread_mutex_unlock(&app.pods_lock);
    metrics_inpod_started();
    return pp;
}

static void unserve_pod(struct pod_proxy *pp, const char *why)
{
    log_kv(LOG_INFO, "ztunnel", "pod removed, closing its connections", "uid", pp->uid, "namespace", pp->ns,
           "name", pp->name, "reason", why, NULL);
    pthread_mutex_lock(&app.pods_lock);
    LIST_DEL(app.pods, pp);
    app.n_pods--;
    pthread_mutex_unlock(&app.pods_lock);
    metrics_inpod_stopped();
    pod_proxy_retire(pp);
}

static struct pod_proxy *pod_by_uid(const char *uid)
{
    for (struct pod_proxy *pp = app.pods; pp; pp = pp->next)
        if (!strcmp(pp->uid, uid)) return pp;
    return NULL;
}

static int start_dedicated(void)
{
    char err[1024];
    const char *ns = zt_cfg.workload.ns, *name = zt_cfg.workload.name, *sa = zt_cfg.workload.sa;
    struct pod_proxy *pp = serve_pod("", ns, name, sa, -1, err, sizeof(err));
    if (!pp) {
        log_kv(LOG_ERROR, "ztunnel", "failed to start the proxy", "error", err, NULL);
        return -1;
    }
    struct zt_view *v = pod_proxy_view(pp);
    if (!v->self)
        LOG_W("ztunnel",
              "PROXY_WORKLOAD_INFO names workload %s/%s, which is not in %s; not ready until it is, and "
              "inbound connections get 503",
              ns, name, zt_cfg.xds_address ? zt_cfg.xds_address : app.cfg_path);
    zt_view_unref(v);
    atomic_store(&app.published, pp);
    char workers_s[8];
    snprintf(workers_s, sizeof(workers_s), "%d", app.n_workers);
    log_kv(LOG_INFO, "ztunnel", "listeners ready", "identity", pp->id_uri, "workers", workers_s, "outbound",
           "15001", "inbound_plaintext", "15006", "inbound_hbone", "15008", NULL);
    return 0;
}

static int start_zds(void);

/* Serves snap (borrowed): the first one starts the proxy (dedicated mode) or the node agent's client (shared
 * mode); every one is published to the pods. source names where it came from in the log. Returns 0 or
 * -ENOMEM. */
static int apply_snapshot(struct snapshot *snap, const char *source)
{
    bool first = !app.snap;
    snapshot_ref(snap);
    pthread_mutex_lock(&app.snap_lock);
    struct snapshot *old_snap = app.snap;
    app.snap = snap;
    pthread_mutex_unlock(&app.snap_lock);
    if (old_snap) snapshot_unref(old_snap);
    atomic_store(&app.have_config, true);
    app.version++;
    if (first) {
        if (shared_mode() ? start_zds() < 0 : start_dedicated() < 0) exit(1);
        trim_resident_text();
        return 0;
    }
    for (struct pod_proxy *pp = app.pods; pp; pp = pp->next) {
        struct zt_view *v = zt_view_new(snap, pp->ns, pp->name, app.version);
        if (!v) return -ENOMEM;
        struct zt_view *old = pod_proxy_view(pp);
        if (!old->self != !v->self)
            log_kv(v->self ? LOG_INFO : LOG_WARN, "ztunnel",
                   v->self ? "workload found in the config" : "workload no longer in the config; not ready",
                   "namespace", pp->ns, "name", pp->name, NULL);
        if (!old->self && v->self) warn_identity_mismatch(pp, v);
        zt_view_unref(old);
        pod_proxy_publish_view(pp, v);
        zt_view_unref(v);
    }
    char ver[24];
    snprintf(ver, sizeof(ver), "%llu", (unsigned long long)app.version);
    log_kv(LOG_INFO, "ztunnel", "config reloaded", "source", source, "version", ver, NULL);
    return 0;
}

/* ---- shared mode: pods from the node agent (ZDS) ---- */

static void zds_update_ready(void)
{
    atomic_store(&app.zds_ready, app.zds && zds_client_ready(app.zds));
    if (app.zds) {
        struct zds_stats st;
        zds_client_stats(app.zds, &st);
        metrics_inpod_set(app.n_pods, st.failed);
    }
}

static void zds_add(void *ud, uint64_t ticket, const struct zds_add *a)
{
    (void)ud;
    char err[1024];
    if (a->replace) {
        struct pod_proxy *old = pod_by_uid(a->uid);
        if (old) unserve_pod(old, "a new network namespace for the same pod");
    }
    int fd = fcntl(a->netns_fd, F_DUPFD_CLOEXEC, 0);
    struct pod_proxy *pp = NULL;
    if (fd < 0)
        snprintf(err, sizeof(err), "dup of the netns fd: %s", strerror(errno));
    else if (!(pp = serve_pod(a->uid, a->namespace_, a->name, a->service_account, fd, err, sizeof(err))))
        close(fd);
    if (!pp) {
        log_kv(LOG_WARN, "ztunnel", "failed to start the proxy of a pod", "uid", a->uid, "namespace",
               a->namespace_, "name", a->name, "error", err, NULL);
        zds_reply(app.zds, ticket, err);
    } else {
        char n[24];
        snprintf(n, sizeof(n), "%zu", app.n_pods);
        log_kv(LOG_INFO, "ztunnel", a->retry ? "pod proxy started on retry" : "pod proxy started", "uid",
               a->uid, "namespace", a->namespace_, "name", a->name, "identity", pp->id_uri, "pods", n, NULL);
        zds_reply(app.zds, ticket, NULL);
    }
    zds_update_ready();
}

static void zds_del(void *ud, uint64_t ticket, const char *uid)
{
    (void)ud;
    struct pod_proxy *pp = pod_by_uid(uid);
    if (pp) unserve_pod(pp, "deleted by the node agent");
    zds_reply(app.zds, ticket, NULL);
    zds_update_ready();
}

static void zds_snapshot_sent(void *ud, uint64_t ticket, const char *const *stale, size_t n)
{
    (void)ud;
    for (size_t i = 0; i < n; i++) {
        struct pod_proxy *pp = pod_by_uid(stale[i]);
        if (pp) unserve_pod(pp, "not in the node agent's snapshot");
    }
    zds_reply(app.zds, ticket, NULL);
    char np[24];
    snprintf(np, sizeof(np), "%zu", app.n_pods);
    log_kv(LOG_INFO, "ztunnel", "node agent snapshot received", "pods", np, NULL);
    zds_update_ready();
}

static void zds_state(void *ud)
{
    (void)ud;
    zds_update_ready();
}

static const struct zds_ops zds_ops = {
    .add = zds_add, .del = zds_del, .snapshot_sent = zds_snapshot_sent, .state_changed = zds_state};

static int start_zds(void)
{
    struct zds_config zc = {.path = zt_cfg.inpod_uds};
    int rc = zds_client_new(app.loop, &zc, &zds_ops, NULL, &app.zds);
    if (rc < 0) {
        LOG_E("ztunnel", "cannot start the ZDS client on %s: %s", zt_cfg.inpod_uds, strerror(-rc));
        return -1;
    }
    char workers_s[8];
    snprintf(workers_s, sizeof(workers_s), "%d", app.n_workers);
    log_kv(LOG_INFO, "ztunnel", "shared mode: serving the pods the node agent hands over", "inpod_uds",
           zt_cfg.inpod_uds, "workers", workers_s, NULL);
    return 0;
}

/* Loads the config file. A broken file keeps the previous config. Returns 0, or -errno from loading. */
static int reload(void)
{
    struct snapshot *snap;
    char err[1024];
    int rc = config_load_file(app.cfg_path, &snap, err, sizeof(err));
    if (rc < 0) {
        if (app.snap)
            log_kv(LOG_ERROR, "ztunnel", "config reload failed, keeping the previous config", "error", err,
                   NULL);
        else if (rc != -ENOENT)
            log_kv(LOG_ERROR, "ztunnel", "failed to load config", "error", err, NULL);
        return rc;
    }
    rc = apply_snapshot(snap, app.cfg_path);
    snapshot_unref(snap);
    return rc;
}

/* ---- config from an xDS server ---- */

/* Until both types had their first response nothing is served: a proxy started on workloads alone would admit
 * connections that a DENY policy, still on its way, refuses (fail closed). The latest snapshot waits here. */
static struct snapshot *xds_pending;

static void xds_on_snapshot(void *ud, struct snapshot *s)
{
    (void)ud;
    if (!atomic_load(&app.xds_synced)) {
        snapshot_ref(s);
        if (xds_pending) snapshot_unref(xds_pending);
        xds_pending = s;
        return;
    }
    if (!app.draining) (void)apply_snapshot(s, zt_cfg.xds_address);
}

static void xds_on_synced(void *ud)
{
    (void)ud;
    atomic_store(&app.xds_synced, true);
    if (xds_pending) {
        if (!app.draining) (void)apply_snapshot(xds_pending, zt_cfg.xds_address);
        snapshot_unref(xds_pending);
        xds_pending = NULL;
    }
}

static const struct xds_client_ops xds_ops = {.on_snapshot = xds_on_snapshot, .on_synced = xds_on_synced};

/* A control-plane endpoint (the xDS server or the CA) as Istio's ztunnel configures either: its own address,
 * roots, name and header prefix; the token and cluster id shared; sockets marked to bypass the pod's rules.
 */
static struct xds_endpoint_opts endpoint_opts(const char *address, const char *roots, const char *alt,
                                              const char *header_prefix)
{
    extern char **environ;
    return (struct xds_endpoint_opts){.address = address,
                                      .roots = roots,
                                      .alt_hostname = alt,
                                      .token = zt_cfg.auth_token,
                                      .cluster_id = zt_cfg.cluster_id,
                                      .header_prefix = header_prefix,
                                      .envp = environ,
                                      .mark = ZT_MARK};
}

static int start_xds(void)
{
    char err[1024];
    struct xds_client_opts o = {
        .endpoint =
            endpoint_opts(zt_cfg.xds_address, zt_cfg.xds_root_ca, zt_cfg.alt_xds_hostname, "XDS_HEADER_"),
        .node = {.instance_ip = zt_cfg.instance_ip,
                 .pod_name = zt_cfg.pod_name,
                 .pod_ns = zt_cfg.pod_namespace,
                 .node_name = zt_cfg.node_name},
    };
    if (xds_client_new(app.loop, &o, &xds_ops, NULL, &app.xds, err, sizeof(err)) < 0) {
        log_kv(LOG_ERROR, "ztunnel", "failed to set up the xDS client", "error", err, NULL);
        return -1;
    }
    log_kv(LOG_INFO, "ztunnel", "config from an xDS server", "address", zt_cfg.xds_address, NULL);
    return 0;
}

static void reload_timer_cb(struct timer *t)
{
    (void)t;
    if (!app.draining) (void)reload();
}

static void inotify_cb(struct io *io, uint32_t ev)
{
    (void)ev;
    char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
    ssize_t n;
    bool hit = false;
    while ((n = read(io->fd, buf, sizeof(buf))) > 0) {
        for (char *p = buf; p < buf + n;) {
            struct inotify_event *e = (struct inotify_event *)p;
            if (e->len && strcmp(e->name, app.cfg_base) == 0) hit = true;
            p += sizeof(*e) + e->len;
        }
    }
    /* Editors and `kubectl cp` write in several steps: wait for the file to settle. */
    if (hit) timer_start(app.loop, &app.reload_timer, RELOAD_DEBOUNCE_MS);
}

static int watch_config(void)
{
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s", app.cfg_path);
    snprintf(app.cfg_dir, sizeof(app.cfg_dir), "%s", dirname(tmp));
    snprintf(tmp, sizeof(tmp), "%s", app.cfg_path);
    snprintf(app.cfg_base, sizeof(app.cfg_base), "%s", basename(tmp));
    int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (fd < 0) return -errno;
    /* Watch the directory, not the file: a rename over the file replaces its inode. */
    if (inotify_add_watch(fd, app.cfg_dir, IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE) < 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    app.ino_io = (struct io){.fd = fd, .cb = inotify_cb};
    app.reload_timer.cb = reload_timer_cb;
    return loop_io_add(app.loop, &app.ino_io, EPOLLIN);
}

/* `ztunnel version`: Istio's BuildInfo layout (src/version.rs in istio/ztunnel). */
static void print_version(void)
{
    printf("version.BuildInfo{Version:\"%s\", GitRevision:\"%s\", BuildStatus:\"%s\", "
           "CryptoProvider:\"openssl\"}\n",
           ZMESH_VERSION, ZMESH_GIT_REVISION, ZMESH_BUILD_STATUS);
}

static int ncpu_available(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) return CPU_COUNT(&set);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

static const char *env_lookup(const char *name)
{
    return getenv(name);
}

/* Parses the environment into zt_cfg and sets up logging. Every problem is logged, errors all at once.
 * Returns 0, or 2 (the exit code) when ztunnel cannot start. */
static int load_settings(void)
{
    extern char **environ;
    static struct env_diag errors, warnings;
    /* A failure is in errors (reported below with the PROXY_MODE check). */
    (void)zt_settings_parse(&zt_cfg, env_lookup, environ, ncpu_available(), &errors, &warnings);
    /* Log in the format asked for, at the level asked for when RUST_LOG is valid (else the default). */
    if (log_init(zt_cfg.rust_log, zt_cfg.log_format == ZT_LOG_JSON) < 0) log_init(NULL, false);
    env_diag_log(&warnings, LOG_WARN, "ztunnel");
    if (errors.n) {
        env_diag_log(&errors, LOG_ERROR, "ztunnel");
        LOG_E("ztunnel", "%u setting error%s; see ztunnel --help", errors.n, errors.n == 1 ? "" : "s");
        return 2;
    }
    return 0;
}

int main(int argc, char **argv)
{
    char err[1024];

    /* Istio's ztunnel reads argv[1] only: proxy (default), version, help. */
    if (argc > 1 && strcmp(argv[1], "proxy") != 0) {
        if (!strcmp(argv[1], "version") || !strcmp(argv[1], "--version")) {
            print_version();
            return 0;
        }
        if (!strcmp(argv[1], "help") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
            zt_settings_help(stdout, ZMESH_VERSION);
            return 0;
        }
        fprintf(stderr, "unknown command: %s\n", argv[1]);
        zt_settings_help(stderr, ZMESH_VERSION);
        return 1;
    }
    if (argc > 2) {
        fprintf(stderr, "unexpected argument: %s\n", argv[2]);
        return 1;
    }

    signal(SIGPIPE, SIG_IGN);
    /* Relay buffers up to 256 KiB come and go per read; keep them on the heap rather than mmap, and don't
     * hand memory back to the kernel after every burst. */
    mallopt(M_MMAP_THRESHOLD, 4 << 20);
    mallopt(M_TRIM_THRESHOLD, 64 << 20);
    int rc = load_settings();
    if (rc) return rc;
    LOG_I("ztunnel", "version: zmesh ztunnel %s, %d workers, mode %s", ZMESH_VERSION, zt_cfg.n_workers,
          zt_proxy_mode_to_str(zt_cfg.proxy_mode));
    /* Many connections need many descriptors; listeners pause rather than spin when they run out. */
    acceptor_raise_fd_limit();

    app.cfg_path = zt_cfg.local_xds_path;
    if (zt_cfg.ca_address) {
        struct ca_client_opts co = {
            .endpoint =
                endpoint_opts(zt_cfg.ca_address, zt_cfg.ca_root_ca, zt_cfg.alt_ca_hostname, "CA_HEADER_"),
            .ttl_s = (int64_t)(zt_cfg.secret_ttl_ms / 1000),
            /* Dedicated mode asks for its own pod's identity with that pod's token; shared mode for each pod's
             * with the node's (ImpersonatedIdentity). */
            .impersonate = shared_mode(),
        };
        if (!(app.prov = ca_client_new(&co, err, sizeof(err)))) {
            log_kv(LOG_ERROR, "ztunnel", "failed to set up the CA client", "error", err, NULL);
            return 2;
        }
        log_kv(LOG_INFO, "ztunnel", "certificates from a remote CA", "address", zt_cfg.ca_address, NULL);
    } else if (!(app.prov = ca_local_new_ttl(zt_cfg.local_ca_dir, (uint32_t)(zt_cfg.secret_ttl_ms / 1000),
                                             err, sizeof(err)))) {
        log_kv(LOG_ERROR, "ztunnel", "failed to start the local CA", "error", err, NULL);
        return 1;
    }
    app.n_workers = zt_cfg.n_workers;
    admin_set_ports((uint16_t)zt_cfg.admin_port, (uint16_t)zt_cfg.metrics_port,
                    (uint16_t)zt_cfg.readiness_port);

    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL); /* inherited by the workers: only the main loop sees them */
    app.loop = loop_new();
    app.sig_io = (struct io){.fd = signalfd(-1, &sigs, SFD_NONBLOCK | SFD_CLOEXEC), .cb = sig_cb};
    if (!app.loop || app.sig_io.fd < 0 || loop_io_add(app.loop, &app.sig_io, EPOLLIN) < 0) {
        LOG_E("ztunnel", "cannot set up the main loop: %s", strerror(errno));
        return 1;
    }
    /* Certificates are fetched and renewed on the identity manager's own thread (it blocks all signals). */
    if (!(app.idm = identity_mgr_new(app.prov, err, sizeof(err)))) {
        log_kv(LOG_ERROR, "ztunnel", "failed to start the identity manager", "error", err, NULL);
        return 1;
    }
    static const struct admin_hooks hooks = {
        .snapshot_get = hook_snapshot,
        .certs_get = hook_certs,
        .pending = hook_pending,
        .quit = hook_quit,
        .pods_get = hook_pods};
    metrics_set_build_tag(ZMESH_VERSION);
    if (admin_start(&hooks, err, sizeof(err)) < 0) {
        log_kv(LOG_ERROR, "ztunnel", "failed to start the admin server", "error", err, NULL);
        return 1;
    }
    if (start_workers() < 0) return 1;
    if (zt_cfg.xds_address) {
        if (start_xds() < 0) return 2;
    } else {
        rc = watch_config();
        if (rc < 0) LOG_W("ztunnel", "cannot watch %s for changes: %s", app.cfg_path, strerror(-rc));
        /* A malformed config at startup is fatal; a missing one is waited for (not ready until it appears).
         */
        rc = reload();
        if (rc == -ENOENT)
            LOG_I("ztunnel", "waiting for %s to appear", app.cfg_path);
        else if (rc < 0)
            return 1;
    }
    loop_run(app.loop);
    return 0;
}
