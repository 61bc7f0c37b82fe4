/* waypoint: zmesh's L7 proxy (src/waypoint/README.md). The main thread runs signals, the config source (delta
 * xDS from zmeshd, or a LocalConfig file), the certificate subscription and the admin ports; workers start once
 * the first config and the first certificate are in, and serve HBONE on 15008. */
#include <errno.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "core/acceptor.h"
#include "core/log.h"
#include "core/version.h"
#include "mesh/config.h"
#include "mesh/l7authn.h"
#include "tls/ca.h"
#include "tls/identity.h"
#include "waypoint/admin.h"
#include "waypoint/telemetry.h"
#include "waypoint/wp.h"
#include "xds/ca_client.h"
#include "xds/delta_client.h"
#include "xds/pb.h"
#include "xds/l7_store.h"
#include "zmeshd/l7.h"
#include "zmeshd/manifest.h"
#include "xds/store.h"

#define START_POLL_MS 50
#define DRAIN_POLL_MS 50

static struct {
    struct loop *loop;
    struct cert_provider *prov;
    struct identity_mgr *idm;
    struct identity_sub *sub;
    struct xds_delta *xds;
    struct xds_store *store;     /* Address */
    struct l7_store *l7_store;   /* HTTPRoute, L7Authorization */
    struct snapshot *snap;       /* the latest snapshot (reference held) */
    struct l7_config *l7;        /* the latest L7 config (reference held) */
    bool changed;                /* the last apply changed snap or l7: publish once its ACK is sent */
    _Atomic bool synced;           /* every subscribed type had its first response */
    _Atomic bool have_config;
    _Atomic bool serving;          /* workers started */
    bool draining;
    uint64_t drain_deadline;
    struct io sig_io;
    struct timer start_timer, drain_timer;
} app;

/* ---- readiness and admin hooks ---- */

static const char *hook_pending(void)
{
    static _Thread_local char buf[128];
    bool cfg = atomic_load(&app.have_config) && (!wp_cfg.xds_address || atomic_load(&app.synced));
    struct identity *id = wp_identity();
    bool cert = id != NULL;
    identity_unref(id);
    if (cfg && cert && atomic_load(&app.serving)) return NULL;
    snprintf(buf, sizeof(buf), "%s%s%s", cfg ? "" : "config", !cfg && !cert ? ", " : "", cert ? "" : "certificate");
    if (cfg && cert) snprintf(buf, sizeof(buf), "listeners");
    return buf;
}

static int hook_certs(struct identity_status **out)
{
    return identity_mgr_status(app.idm, out);
}

static const struct wp_admin_hooks hooks = {.pending = hook_pending, .certs = hook_certs, .metrics = wp_metrics_render};

/* ---- start, drain ---- */

static void start_check(struct timer *t)
{
    struct identity *id = wp_identity();
    bool cert = id != NULL;
    identity_unref(id);
    if (!cert || !atomic_load(&app.have_config) || (wp_cfg.xds_address && !atomic_load(&app.synced)) ||
        app.draining) {
        timer_start(app.loop, t, START_POLL_MS);
        return;
    }
    if (wp_workers_start() < 0) exit(1);
    atomic_store(&app.serving, true);
    char workers[16], port[16];
    snprintf(workers, sizeof(workers), "%d", wp_n_workers);
    snprintf(port, sizeof(port), "%lld", (long long)wp_cfg.hbone_port);
    log_kv(LOG_INFO, "waypoint", "listeners ready", "identity", wp_self_uri, "hostname", wp_self_host, "hbone",
           port, "workers", workers, NULL);
}

static void drain_tick(struct timer *t)
{
    uint64_t n = wp_active();
    if (n == 0 || loop_now(app.loop) >= app.drain_deadline) {
        if (n) LOG_I("waypoint", "termination deadline reached, closing %llu connections", (unsigned long long)n);
        else LOG_I("waypoint", "drained, exiting");
        identity_mgr_stop(app.idm);
        exit(0);
    }
    timer_start(app.loop, t, DRAIN_POLL_MS);
}

static void sig_cb(struct io *io, uint32_t ev)
{
    (void)ev;
    struct signalfd_siginfo si;
    while (read(io->fd, &si, sizeof(si)) == sizeof(si)) {
        if (app.draining) {
            if (si.ssi_signo == SIGINT) exit(0);
            continue;
        }
        app.draining = true;
        LOG_I("waypoint", "%s: draining %llu connections (deadline %llums)",
              si.ssi_signo == SIGTERM ? "received SIGTERM" : "received SIGINT", (unsigned long long)wp_active(),
              (unsigned long long)wp_cfg.termination_deadline_ms);
        if (atomic_load(&app.serving)) wp_workers_drain();
        app.drain_deadline = loop_now(app.loop) + wp_cfg.termination_deadline_ms;
        app.drain_timer.cb = drain_tick;
        timer_start(app.loop, &app.drain_timer, 0);
    }
}

/* ---- config ---- */

static void publish(struct snapshot *s, struct l7_config *l7, const char *source)
{
    if (wp_view_publish(s, l7) < 0) {
        LOG_E("waypoint", "out of memory publishing the config from %s", source);
        return;
    }
    atomic_store(&app.have_config, true);
    size_t served = 0;
    for (size_t i = 0; i < snapshot_n_services(s); i++)
        served += wp_serves(&snapshot_service_at(s, i)->waypoint);
    char ns[16], nr[16], np[16], na[16];
    snprintf(ns, sizeof(ns), "%zu", served);
    snprintf(na, sizeof(na), "%zu", l7 ? l7_config_n_authn(l7) : 0);
    snprintf(nr, sizeof(nr), "%zu", l7 ? l7_config_n_routes(l7) : 0);
    snprintf(np, sizeof(np), "%zu", l7 ? l7_config_n_policies(l7) : 0);
    log_kv(LOG_INFO, "waypoint", "config applied", "source", source, "services_bound", ns, "routes", nr,
           "l7_policies", np, "request_authentications", na, NULL);
}

static const char *const xds_types[] = {PB_TYPE_URL_ADDRESS, L7_TYPE_URLS};

/* Address goes to the snapshot store, the L7 types to the L7 store; the view is published (both together)
 * once the response is ACKed. */
static int xds_apply(void *ud, const Envoy__Service__Discovery__V3__DeltaDiscoveryResponse *resp, char **nack)
{
    (void)ud;
    if (l7_store_handles(resp->type_url)) {
        struct l7_config *c = NULL;
        int rc = l7_store_apply(app.l7_store, resp, &c, nack);
        if (rc < 0) return rc == -ENOMEM ? rc : 0;
        l7_config_unref(app.l7);
        app.l7 = c;
        app.changed = true;
        return 0;
    }
    struct snapshot *s = NULL;
    int rc = xds_store_apply(app.store, resp, &s, nack);
    if (s) {
        snapshot_unref(app.snap);
        app.snap = s;
        app.changed = true;
    }
    return rc;
}

static int xds_initial(void *ud, const char *type_url, Envoy__Service__Discovery__V3__DeltaDiscoveryRequest *req)
{
    (void)ud;
    if (l7_store_handles(type_url)) return l7_store_initial_versions(app.l7_store, type_url, req);
    return xds_store_initial_versions(app.store, type_url, req);
}

static void xds_initial_clear(void *ud, Envoy__Service__Discovery__V3__DeltaDiscoveryRequest *req)
{
    (void)ud;
    xds_store_initial_versions_clear(req);
}

static void xds_response(void *ud)
{
    (void)ud;
    if (!app.changed || !app.snap) return; /* L7 config before the first Address response waits for it */
    app.changed = false;
    publish(app.snap, app.l7, wp_cfg.xds_address);
}

static void xds_synced(void *ud)
{
    (void)ud;
    atomic_store(&app.synced, true);
}

static const struct xds_delta_ops xds_ops = {.apply = xds_apply,
                                             .initial_versions = xds_initial,
                                             .initial_versions_clear = xds_initial_clear,
                                             .on_response = xds_response,
                                             .on_synced = xds_synced};

static struct xds_endpoint_opts endpoint_opts(const char *address, const char *roots, const char *alt,
                                              const char *header_prefix)
{
    extern char **environ;
    return (struct xds_endpoint_opts){.address = address,
                                      .roots = roots,
                                      .alt_hostname = alt,
                                      .token = wp_cfg.auth_token,
                                      .cluster_id = wp_cfg.cluster_id,
                                      .header_prefix = header_prefix,
                                      .envp = environ};
}

static int start_xds(void)
{
    char err[1024];
    if (xds_store_new(&app.store, NULL) < 0 || l7_store_new(&app.l7_store) < 0) return -1;
    struct xds_delta_opts o = {
        .endpoint = endpoint_opts(wp_cfg.xds_address, wp_cfg.xds_root_ca, wp_cfg.alt_xds_hostname, "XDS_HEADER_"),
        .err_prefix = "XDS",
        .node_kind = "router", /* Envoy-based waypoints identify as router~<ip>~<pod>.<ns>~<ns>.svc... */
        .node = {.instance_ip = wp_cfg.instance_ip,
                 .pod_name = wp_cfg.pod_name,
                 .pod_ns = wp_cfg.pod_namespace,
                 .node_name = wp_cfg.node_name},
        .type_urls = xds_types,
        .n_types = sizeof(xds_types) / sizeof(xds_types[0]),
        .name = "XDS client",
    };
    if (xds_delta_new(app.loop, &o, &xds_ops, NULL, &app.xds, err, sizeof(err)) < 0) {
        log_kv(LOG_ERROR, "waypoint", "failed to set up the xDS client", "error", err, NULL);
        return -1;
    }
    log_kv(LOG_INFO, "waypoint", "config from an xDS server", "address", wp_cfg.xds_address, NULL);
    return 0;
}

/* LOCAL_L7_PATH: the directory's HTTPRoutes, GRPCRoutes and targeted AuthorizationPolicies, converted by
 * zmeshd's own conversion (the manifest reader and src/zmeshd/l7.h: one conversion, whoever serves it);
 * findings are logged as zmeshd logs them, and what a finding refuses is left out. Returns the config, or NULL
 * on a directory that cannot be read or out of memory. */
static struct l7_config *load_local_l7(const char *dir)
{
    struct manifest_store *st = NULL;
    struct l7_builder *b = NULL;
    struct l7_config *cfg = NULL;
    if (manifest_store_new(&st) < 0 || !(b = l7_builder_new())) goto out;
    if (manifest_load_dir(st, dir, NULL, NULL) < 0) {
        LOG_E("waypoint", "cannot read LOCAL_L7_PATH %s", dir);
        goto out;
    }
    size_t n = 0;
    const struct manifest_l7_doc *docs = manifest_l7_docs(st, &n);
    for (size_t i = 0; i < n; i++) {
        uint8_t *pb = NULL;
        size_t len = 0;
        char name[L7_NAME_MAX], err[512];
        int type = 0;
        int rc = l7_convert_doc(&docs[i], &type, &pb, &len, name, sizeof(name), NULL, NULL);
        if (rc == 0 && l7_builder_add(b, l7_type_urls[type], name, pb, len, err, sizeof(err)) < 0)
            log_kv(LOG_ERROR, "waypoint", "L7 resource left out", "name", name, "error", err, NULL);
        free(pb);
    }
    cfg = l7_builder_finish(b);
    b = NULL;
out:
    l7_builder_free(b);
    manifest_store_free(st);
    return cfg;
}

static int load_file(void)
{
    struct snapshot *s;
    struct l7_config *l7 = NULL;
    char err[1024];
    if (config_load_file(wp_cfg.local_xds_path, &s, err, sizeof(err)) < 0) {
        log_kv(LOG_ERROR, "waypoint", "failed to load config", "error", err, NULL);
        return -1;
    }
    if (wp_cfg.local_l7_path && *wp_cfg.local_l7_path && !(l7 = load_local_l7(wp_cfg.local_l7_path))) {
        snapshot_unref(s);
        return -1;
    }
    publish(s, l7, wp_cfg.local_xds_path);
    snapshot_unref(s);
    l7_config_unref(l7);
    return 0;
}

/* ---- start-up ---- */

static const char *env_lookup(const char *name)
{
    return getenv(name);
}

static int load_settings(void)
{
    static struct env_diag errors, warnings;
    (void)wp_settings_parse(&wp_cfg, env_lookup, &errors, &warnings);
    if (log_init(wp_cfg.log_level, wp_cfg.log_format == WP_LOG_JSON) < 0) log_init(NULL, false);
    env_diag_log(&warnings, LOG_WARN, "waypoint");
    if (!errors.n) return 0;
    env_diag_log(&errors, LOG_ERROR, "waypoint");
    LOG_E("waypoint", "%u setting error%s; see waypoint --help", errors.n, errors.n == 1 ? "" : "s");
    return 2;
}

static void on_cert(void *ud, struct identity *cur)
{
    (void)ud;
    (void)cur; /* taken by wp_identity() at each accept and dial; the log line is the manager's */
}

int main(int argc, char **argv)
{
    char err[1024];
    if (argc > 1 && strcmp(argv[1], "proxy") != 0) {
        if (!strcmp(argv[1], "version") || !strcmp(argv[1], "--version")) {
            printf("zmesh waypoint %s (%s)\n", ZMESH_VERSION, ZMESH_GIT_REVISION);
            return 0;
        }
        if (!strcmp(argv[1], "help") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
            wp_settings_help(stdout, ZMESH_VERSION);
            return 0;
        }
        fprintf(stderr, "unknown command: %s\n", argv[1]);
        wp_settings_help(stderr, ZMESH_VERSION);
        return 1;
    }
    /* Istio's waypoint pods run "proxy waypoint": accept that form too. */
    if (argc > 3 || (argc == 3 && strcmp(argv[2], "waypoint") != 0)) {
        fprintf(stderr, "unexpected argument: %s\n", argv[argc - 1]);
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    mallopt(M_MMAP_THRESHOLD, 4 << 20);
    int rc = load_settings();
    if (rc) return rc;
    acceptor_raise_fd_limit();
    snprintf(wp_self.td, sizeof(wp_self.td), "%s", wp_cfg.trust_domain);
    snprintf(wp_self.ns, sizeof(wp_self.ns), "%s", wp_cfg.pod_namespace);
    snprintf(wp_self.sa, sizeof(wp_self.sa), "%s", wp_cfg.service_account);
    if (spiffe_format(&wp_self, wp_self_uri, sizeof(wp_self_uri)) < 0) {
        LOG_E("waypoint", "POD_NAMESPACE, SERVICE_ACCOUNT and TRUST_DOMAIN do not make a SPIFFE id");
        return 2;
    }
    snprintf(wp_self_host, sizeof(wp_self_host), "%s.%s.svc.%s", wp_cfg.gateway_name, wp_cfg.pod_namespace,
             wp_cfg.cluster_domain);
    LOG_I("waypoint", "version: zmesh waypoint %s, identity %s, serving %s", ZMESH_VERSION, wp_self_uri,
          wp_self_host);

    if (wp_cfg.ca_address) {
        struct ca_client_opts co = {
            .endpoint = endpoint_opts(wp_cfg.ca_address, wp_cfg.ca_root_ca, wp_cfg.alt_ca_hostname, "CA_HEADER_"),
            .ttl_s = (int64_t)(wp_cfg.secret_ttl_ms / 1000),
        };
        if (!(app.prov = ca_client_new(&co, err, sizeof(err)))) {
            log_kv(LOG_ERROR, "waypoint", "failed to set up the CA client", "error", err, NULL);
            return 2;
        }
    } else if (!(app.prov = ca_local_new_ttl(wp_cfg.local_ca_dir, (uint32_t)(wp_cfg.secret_ttl_ms / 1000), err,
                                             sizeof(err)))) {
        log_kv(LOG_ERROR, "waypoint", "failed to start the local CA", "error", err, NULL);
        return 1;
    }
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL); /* inherited by the workers */
    app.loop = loop_new();
    app.sig_io = (struct io){.fd = signalfd(-1, &sigs, SFD_NONBLOCK | SFD_CLOEXEC), .cb = sig_cb};
    if (!app.loop || app.sig_io.fd < 0 || loop_io_add(app.loop, &app.sig_io, EPOLLIN) < 0) {
        LOG_E("waypoint", "cannot set up the main loop: %s", strerror(errno));
        return 1;
    }
    if (!(app.idm = identity_mgr_new(app.prov, err, sizeof(err)))) {
        log_kv(LOG_ERROR, "waypoint", "failed to start the identity manager", "error", err, NULL);
        return 1;
    }
    wp_identity_source(app.idm);
    if (!(app.sub = identity_mgr_acquire(app.idm, &wp_self, on_cert, NULL))) {
        LOG_E("waypoint", "cannot subscribe to the certificate of %s", wp_self_uri);
        return 1;
    }
    wp_metrics_set_build_tag(ZMESH_VERSION);
    if (wp_admin_start(app.loop, &hooks, err, sizeof(err)) < 0) {
        log_kv(LOG_ERROR, "waypoint", "failed to start the admin server", "error", err, NULL);
        return 1;
    }
    if (wp_cfg.xds_address ? start_xds() < 0 : load_file() < 0) return wp_cfg.xds_address ? 2 : 1;
    app.start_timer.cb = start_check;
    timer_start(app.loop, &app.start_timer, 0);
    loop_run(app.loop);
    return 0;
}
