/* ztunnel entry point: environment, config, identity, workers. */
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/log.h"
#include "mesh/config.h"
#include "ztunnel/proxy.h"

#define MAX_WORKERS 64

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

static const char *env_req(const char *name)
{
    const char *v = getenv(name);
    if (!v || !*v) {
        LOG_E("ztunnel", "%s must be set", name);
        exit(2);
    }
    return v;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    loop_run(w->loop);
    return NULL;
}

int main(int argc, char **argv)
{
    (void)argc, (void)argv;
    char err[1024];
    struct snapshot *snap = NULL;

    signal(SIGPIPE, SIG_IGN);
    /* Relay buffers up to 256 KiB come and go per read; keep them on the heap rather than mmap. */
    mallopt(M_MMAP_THRESHOLD, 4 << 20);
    log_init();

    const char *mode = getenv("PROXY_MODE");
    if (!mode || strcmp(mode, "dedicated") != 0) {
        LOG_E("ztunnel", "PROXY_MODE=%s is not supported yet; use PROXY_MODE=dedicated", mode ? mode : "shared");
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
    const char *cfg = env_req("LOCAL_XDS_PATH");
    if (config_load_file(cfg, &snap, err, sizeof(err)) < 0) {
        log_kv(LOG_ERROR, "ztunnel", "failed to load config", "error", err, NULL);
        return 1;
    }
    const char *ca_dir = env_req("LOCAL_CA_DIR");
    struct cert_provider *prov = ca_local_new(ca_dir, err, sizeof(err));
    if (!prov) {
        log_kv(LOG_ERROR, "ztunnel", "failed to start the local CA", "error", err, NULL);
        return 1;
    }
    struct pod_proxy *pp;
    if (pod_proxy_new(&pp, snap, prov, ns, name, sa, err, sizeof(err)) < 0) {
        log_kv(LOG_ERROR, "ztunnel", "failed to start the proxy", "error", err, NULL);
        return 1;
    }
    if (!pp->self)
        LOG_W("ztunnel", "workload %s/%s is not in %s; inbound connections will get 503", ns, name, cfg);

    int n_workers = env_int("ZTUNNEL_WORKER_THREADS", 2, 1, MAX_WORKERS);
    static struct worker workers[MAX_WORKERS];
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    for (int i = 0; i < n_workers; i++) {
        struct worker *w = &workers[i];
        w->index = i;
        w->pp = pp;
        w->loop = loop_new();
        w->pool = w->loop ? pool_new(w) : NULL;
        if (!w->pool || worker_listen(w, err, sizeof(err)) < 0) {
            log_kv(LOG_ERROR, "ztunnel", "failed to start a worker", "error", w->pool ? err : "out of memory",
                   NULL);
            return 1;
        }
    }
    for (int i = 0; i < n_workers; i++) {
        pthread_t th;
        if (pthread_create(&th, NULL, worker_main, &workers[i]) != 0) {
            LOG_E("ztunnel", "cannot start worker thread %d", i);
            return 1;
        }
    }
    char workers_s[8];
    snprintf(workers_s, sizeof(workers_s), "%d", n_workers);
    log_kv(LOG_INFO, "ztunnel", "listeners ready", "identity", pp->id_uri, "workers", workers_s, "outbound", "15001",
           "inbound_plaintext", "15006", "inbound_hbone", "15008", NULL);
    int sig = 0;
    sigwait(&sigs, &sig);
    LOG_I("ztunnel", "received %s, shutting down", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    return 0;
}
