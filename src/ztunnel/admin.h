/* ztunnel's HTTP side doors (istio/ztunnel src/admin.rs and src/readiness/server.rs): the admin server on
 * 127.0.0.1:15000 (/config_dump, /logging, /quitquitquit, /), the metrics server on :15020 (/metrics,
 * /stats/prometheus) and the readiness server on :15021 (/healthz/ready). One thread with its own event loop
 * serves all three; HTTP/1.1 with keep-alive, parsed by llhttp, bounded request sizes, per-port connection
 * limits and deadlines (see admin.c). */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct snapshot;
struct identity_status;

/* Called on the admin thread; every hook may be NULL. */
/* One pod a shared-mode ztunnel serves, as /config_dump's workloadState lists it (istio/ztunnel
 * src/inpod/admin.rs: keyed by uid, {state, info: {name, namespace, serviceAccount}}). */
struct admin_pod {
    char uid[128], name[128], ns[128], sa[128];
    const char *state; /* "Up" or "Pending" */
};

struct admin_hooks {
    /* A new reference to the current config (the admin drops it with snapshot_unref), or NULL. */
    struct snapshot *(*snapshot_get)(void *ud);
    /* The managed certificates and their states: *out is freed by the admin with identity_status_free.
     * Returns the count (>= 0) or -errno. */
    int (*certs_get)(void *ud, struct identity_status **out);
    /* NULL when ready, else the pending tasks, e.g. "state manager" (borrowed until the next call). */
    const char *(*pending)(void *ud);
    /* POST /quitquitquit: starts a graceful shutdown. Runs after the response was handed to the kernel; it
     * must not block for long (set a flag, write to an eventfd, raise SIGTERM). */
    void (*quit)(void *ud);
    /* Shared mode: the pods served, *out freed by the admin with free(). Returns the count (>= 0), or -1 when
     * ztunnel serves no pods over ZDS (dedicated mode: no workloadState key). NULL: the same as -1. */
    int (*pods_get)(void *ud, struct admin_pod **out);
    void *ud;
};

/* Default ports; admin_set_ports overrides them (0 picks a free port, see admin_ports). */
#define ADMIN_PORT_DEFAULT 15000
#define METRICS_PORT_DEFAULT 15020
#define READINESS_PORT_DEFAULT 15021

/* Sets the ports admin_start binds (ztunnel: ADMIN_PORT, METRICS_PORT, READINESS_PORT). Call before it. */
void admin_set_ports(uint16_t admin, uint16_t metrics, uint16_t readiness);

/* Binds 127.0.0.1:<admin>, [::]:<metrics> and [::]:<readiness> (IPv4 wildcard when IPv6 is off) and serves
 * them on a new detached thread. *h is copied. Call once. Returns 0, or -errno with err filled. */
int admin_start(const struct admin_hooks *h, char *err, size_t errlen);

/* The three servers, for admin_feed. */
enum admin_server { ADMIN_SERVER_ADMIN = 0, ADMIN_SERVER_METRICS = 1, ADMIN_SERVER_READINESS = 2 };

/* Feeds data[0..len), the bytes a client sent on one connection to server `which`, through the request
 * parser and router exactly as a socket connection would (in reads of at most `chunk` bytes, 0 = the read
 * buffer size), without sockets or a loop; for the fuzzer and tests. Each complete response (status line to
 * body; borrowed during the call) goes to on_response (may be NULL). Uses the hooks of admin_start if it ran,
 * else none (ready, empty config); POST /quitquitquit never calls quit here. Call from one thread at a time,
 * not while admin_start's thread serves. Returns the number of responses. */
size_t admin_feed(enum admin_server which, const uint8_t *data, size_t len, size_t chunk,
                  void (*on_response)(void *ud, const char *resp, size_t n), void *ud);

/* The ports bound by admin_start (0 before it succeeded). Any pointer may be NULL. */
void admin_ports(uint16_t *admin, uint16_t *metrics, uint16_t *readiness);

/* The /config_dump document (Istio's shape: workloads, services, policies, certificates, version and, with
 * n_pods >= 0, workloadState) as pretty-printed JSON. s (may be NULL), certs[0..n_certs) and pods[0..n_pods)
 * are borrowed. Returns a malloc'd NUL-terminated
 * buffer (caller frees) with its length in *len, or NULL on ENOMEM. */
char *config_dump_render(const struct snapshot *s, const struct identity_status *certs, size_t n_certs,
                         const struct admin_pod *pods, int n_pods,
                         size_t *len);
