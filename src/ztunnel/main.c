/* ztunnel entry point: environment, config (and its live reload), identity, workers, drain.
 *
 * The main thread runs its own small loop for signals (signalfd), the config file watch (inotify) and the
 * drain deadline; the workers run the data path. */
#include <errno.h>
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

#include "core/env.h"
#include "core/log.h"
#include "mesh/config.h"
#include "tls/identity.h"
#include "tls/tls.h"
#include "ztunnel/admin.h"
#include "ztunnel/metrics.h"
#include "ztunnel/proxy.h"

#define MAX_WORKERS 64
#ifndef ZMESH_VERSION
#define ZMESH_VERSION "0.1.0"
#endif
#define RELOAD_DEBOUNCE_MS 100
#define DRAIN_POLL_MS 50

struct app {
    struct loop *loop;
    const char *cfg_path;
    char cfg_dir[4096], cfg_base[256];
    char ns[128], name[128], sa[128];
    struct cert_provider *prov;
    struct identity_mgr *idm;
    struct pod_proxy *pp;
    struct worker workers[MAX_WORKERS];
    int n_workers;
    uint64_t version;
    _Atomic(struct pod_proxy *) published; /* app.pp once it serves, for the admin thread */
    bool draining;
    uint64_t drain_deadline;
    struct io sig_io, ino_io;
    struct timer reload_timer, drain_timer;
};

static struct app app;

static int env_int(const char *name, int def, int lo, int hi)
{
    const char *v = getenv(name);
    if (!v || !*v) return def;
    char *end;
    long n = strtol(v, &end, 10);
    if (*end || n < lo || n > hi) {
        fprintf(stderr, "ztunnel: %s=%s: expected an integer in %d..%d\n", name, v, lo, hi);
        exit(2);
    }
    return (int)n;
}

/* Durations as Istio writes them ("5s", "500ms", "1m"), or plain seconds. Returns milliseconds. */
static uint64_t env_duration_ms(const char *name, uint64_t def)
{
    const char *v = getenv(name);
    if (!v || !*v) return def;
    char *end;
    double n = strtod(v, &end);
    if (end == v || n < 0) goto bad;
    if (!*end || !strcmp(end, "s")) return (uint64_t)(n * 1000);
    if (!strcmp(end, "ms")) return (uint64_t)n;
    if (!strcmp(end, "m")) return (uint64_t)(n * 60000);
bad:
    fprintf(stderr, "ztunnel: %s=%s: expected a duration such as 5s or 500ms\n", name, v);
    exit(2);
}

/* ---- SECRET_TTL: the certificate lifetime asked of the CA ---- */

/* SECRET_TTL in Istio's duration syntax (default 24h). Istio's CaClient sends it to the CA in whole seconds,
 * so anything under 1s would ask for nothing; more than the CA's maximum (90 days, as istiod) is refused by
 * the CA. Exits with status 2 on an invalid value. Returns seconds. */
static uint32_t secret_ttl_from_env(void)
{
    const char *v = getenv("SECRET_TTL");
    uint64_t ms = 0;
    if (!v || !*v) return CA_DEFAULT_TTL_S;
    if (duration_parse_ms(v, &ms) < 0 || ms < 1000 || ms / 1000 > CA_MAX_TTL_S) {
        fprintf(stderr, "ztunnel: SECRET_TTL=%s: expected a duration from 1s to 90d, such as 24h or 30s\n",
                v);
        exit(2);
    }
    return (uint32_t)(ms / 1000);
}

static const char *env_req(const char *name)
{
    const char *v = getenv(name);
    if (!v || !*v) {
        LOG_E("ztunnel", "%s must be set", name);
        exit(2);
    }
    return v;
}

/* ---- hooks for the admin thread ---- */

static struct snapshot *hook_snapshot(void *ud)
{
    (void)ud;
    struct pod_proxy *pp = atomic_load(&app.published);
    if (!pp) return NULL;
    struct zt_view *v = pod_proxy_view(pp);
    struct snapshot *s = v->snap;
    snapshot_ref(s);
    zt_view_unref(v);
    return s;
}

static int hook_certs(void *ud, struct identity_status **out)
{
    (void)ud;
    return identity_mgr_status(app.idm, out);
}

static const char *hook_pending(void *ud)
{
    (void)ud;
    /* "state manager": the first config load; the proxy starts right after it. "proxy": the listeners wait
     * for the pod's first certificate before they accept (Istio's task names, app.rs). */
    struct pod_proxy *pp = atomic_load(&app.published);
    if (!pp) return "state manager";
    return atomic_load(&pp->has_identity) ? NULL : "proxy";
}

static void hook_quit(void *ud)
{
    (void)ud;
    kill(getpid(), SIGTERM); /* the main loop's signalfd turns it into a graceful drain */
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    loop_run(w->loop);
    return NULL;
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
    uint64_t deadline = env_duration_ms("CONNECTION_TERMINATION_DEADLINE", 5000);
    LOG_I("ztunnel", "%s: draining %llu connections (deadline %llums)", why,
          (unsigned long long)active_total(), (unsigned long long)deadline);
    for (int i = 0; i < app.n_workers; i++)
        worker_post_drain(&app.workers[i]);
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

static int start_proxy(struct zt_view *view)
{
    char err[1024];
    if (pod_proxy_new(&app.pp, view, app.ns, app.name, app.sa, err, sizeof(err)) < 0) {
        log_kv(LOG_ERROR, "ztunnel", "failed to start the proxy", "error", err, NULL);
        return -1;
    }
    if (!view->self)
        LOG_W("ztunnel", "workload %s/%s is not in %s; inbound connections will get 503", app.ns, app.name,
              app.cfg_path);
    for (int i = 0; i < app.n_workers; i++) {
        if (worker_init(&app.workers[i], i, app.pp, view, err, sizeof(err)) < 0) {
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
    /* The first certificate is fetched on the identity manager's thread; the workers accept once it is here.
     */
    if (pod_proxy_start_identity(app.pp, app.idm, app.workers, app.n_workers) < 0) {
        LOG_E("ztunnel", "cannot subscribe to the certificate of %s: out of memory", app.pp->id_uri);
        return -1;
    }
    atomic_store(&app.published, app.pp);
    trim_resident_text();
    char workers_s[8];
    snprintf(workers_s, sizeof(workers_s), "%d", app.n_workers);
    log_kv(LOG_INFO, "ztunnel", "listeners ready", "identity", app.pp->id_uri, "workers", workers_s,
           "outbound", "15001", "inbound_plaintext", "15006", "inbound_hbone", "15008", NULL);
    return 0;
}

/* Loads the config file. The first successful load starts the proxy; later ones are published to the
 * workers. A broken file keeps the previous config. Returns 0, or -errno from loading. */
static int reload(void)
{
    struct snapshot *snap;
    char err[1024];
    int rc = config_load_file(app.cfg_path, &snap, err, sizeof(err));
    if (rc < 0) {
        if (app.pp)
            log_kv(LOG_ERROR, "ztunnel", "config reload failed, keeping the previous config", "error", err,
                   NULL);
        else if (rc != -ENOENT)
            log_kv(LOG_ERROR, "ztunnel", "failed to load config", "error", err, NULL);
        return rc;
    }
    struct zt_view *v = zt_view_new(snap, app.ns, app.name, ++app.version);
    snapshot_unref(snap);
    if (!v) return -ENOMEM;
    if (!app.pp) {
        if (start_proxy(v) < 0) exit(1);
    } else {
        workers_publish_view(app.pp, app.workers, app.n_workers, v);
        char ver[24];
        snprintf(ver, sizeof(ver), "%llu", (unsigned long long)v->version);
        log_kv(LOG_INFO, "ztunnel", "config reloaded", "path", app.cfg_path, "version", ver, NULL);
    }
    zt_view_unref(v);
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

int main(int argc, char **argv)
{
    (void)argc, (void)argv;
    char err[1024];

    signal(SIGPIPE, SIG_IGN);
    /* Relay buffers up to 256 KiB come and go per read; keep them on the heap rather than mmap, and don't
     * hand memory back to the kernel after every burst. */
    mallopt(M_MMAP_THRESHOLD, 4 << 20);
    mallopt(M_TRIM_THRESHOLD, 64 << 20);
    log_init();

    const char *mode = getenv("PROXY_MODE");
    if (!mode || strcmp(mode, "dedicated") != 0) {
        LOG_E("ztunnel", "PROXY_MODE=%s is not supported yet; use PROXY_MODE=dedicated",
              mode ? mode : "shared");
        return 2;
    }
    /* PROXY_WORKLOAD_INFO=<namespace>/<name>/<service account>, as Istio's ztunnel. */
    char info[512], *ns, *name, *sa, *save;
    snprintf(info, sizeof(info), "%s", env_req("PROXY_WORKLOAD_INFO"));
    ns = strtok_r(info, "/", &save);
    name = strtok_r(NULL, "/", &save);
    sa = strtok_r(NULL, "/", &save);
    if (!ns || !name || !sa || strtok_r(NULL, "/", &save)) {
        LOG_E("ztunnel", "PROXY_WORKLOAD_INFO must be <namespace>/<name>/<service-account>");
        return 2;
    }
    snprintf(app.ns, sizeof(app.ns), "%s", ns);
    snprintf(app.name, sizeof(app.name), "%s", name);
    snprintf(app.sa, sizeof(app.sa), "%s", sa);
    app.cfg_path = env_req("LOCAL_XDS_PATH");
    const char *ca_dir = env_req("LOCAL_CA_DIR");
    app.prov = ca_local_new_ttl(ca_dir, secret_ttl_from_env(), err, sizeof(err));
    if (!app.prov) {
        log_kv(LOG_ERROR, "ztunnel", "failed to start the local CA", "error", err, NULL);
        return 1;
    }
    app.n_workers = env_int("ZTUNNEL_WORKER_THREADS", 2, 1, MAX_WORKERS);

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
        .snapshot_get = hook_snapshot, .certs_get = hook_certs, .pending = hook_pending, .quit = hook_quit};
    metrics_set_build_tag(ZMESH_VERSION);
    if (admin_start(&hooks, err, sizeof(err)) < 0) {
        log_kv(LOG_ERROR, "ztunnel", "failed to start the admin server", "error", err, NULL);
        return 1;
    }
    int rc = watch_config();
    if (rc < 0) LOG_W("ztunnel", "cannot watch %s for changes: %s", app.cfg_path, strerror(-rc));

    /* A malformed config at startup is fatal; a missing one is waited for (not ready until it appears). */
    rc = reload();
    if (rc == -ENOENT)
        LOG_I("ztunnel", "waiting for %s to appear", app.cfg_path);
    else if (rc < 0)
        return 1;
    loop_run(app.loop);
    return 0;
}
