/* The zmeshd daemon without its command line: the CA and token key it opens, the manifest source it reads and
 * watches (watch.h), the snapshot it computes from the manifests (k8s.h) and republishes on every change, and
 * the subscribers it hands each new snapshot to (the ADS server and the CA plug in here). One loop thread
 * owns everything; nothing here blocks except the reload itself, which reads files and builds a snapshot.
 *
 *     struct zmeshd *d;
 *     zmeshd_new(loop, &cfg, &d, err, sizeof(err));     opens the CA and token key, makes the source
 *     zmeshd_subscribe(d, on_snapshot, ud);
 *     zmeshd_start(d, err, sizeof(err));                 first load, then watch
 *     loop_run(loop);
 *     zmeshd_free(d);
 *
 * Also here, so the program stays thin and both are testable: `zmeshd check` (zmeshd_check) and
 * `zmeshd token` (zmeshd_token_mint). */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>

#include "core/loop.h"
#include "mesh/model.h"
#include "tls/issuer.h"
#include "tls/token.h"
#include "zmeshd/k8s.h"
#include "zmeshd/manifest.h"
#include "zmeshd/watch.h"

/* The token signing key, beside the CA files of the state directory (zmesh's own name; istiod verifies
 * tokens with the API server's keys, which zmeshd plays). Created on first use, mode 0600. */
#define ZMESHD_TOKEN_KEY_FILE "token-key.pem"
/* istiod's secure gRPC address (pilot-discovery --secureGRPCAddr, istio/istio pilot/cmd/pilot-discovery/app/
 * cmd.go): xDS and the CA on one TLS port. */
#define ZMESHD_DEFAULT_LISTEN "0.0.0.0:15012"
/* A projected service-account token's default lifetime (the kubelet asks for an hour). */
#define ZMESHD_TOKEN_DEFAULT_TTL_S 3600L

struct zmeshd_config {
    const char *manifests;             /* the manifest directory; required unless source is given */
    const char *state_dir;             /* required: the token key, and the CA's files unless plugin_ca */
    const char *plugin_ca;             /* Istio's cacerts layout; NULL or "": self-signed CA in state_dir */
    const char *listen;                /* host:port for the ADS server and the CA; NULL: the default */
    struct k8s_options k8s;            /* cluster id, trust domain, ...: NULL strings take k8s.h's defaults */
    const char *trusted_node_accounts; /* CA_TRUSTED_NODE_ACCOUNTS; NULL: CA_TRUSTED_NODE_ACCOUNTS_DEFAULT */
    long cert_ttl_s, max_cert_ttl_s;   /* DEFAULT_/MAX_WORKLOAD_CERT_TTL; 0: the issuer's defaults */
    uint64_t debounce_after_ms, debounce_max_ms; /* PILOT_DEBOUNCE_AFTER/MAX; 0: watch.h's defaults */
    /* Another manifest source (a Kubernetes API watch, a test's); NULL: a directory source on manifests. The
     * daemon takes it over (sets its callback, frees it), also when zmeshd_new fails. */
    struct manifest_source *source;
};

/* Resources of each kind in a snapshot. */
struct zmeshd_counts {
    size_t workloads, services, policies;
};
/* How a snapshot differs from the one before, per kind, by resource key (workload uid, service
 * "ns/hostname", policy "ns/name"): added, changed (same key, any field different), removed. */
struct zmeshd_kind_diff {
    size_t added, changed, removed;
};
struct zmeshd_diff {
    struct zmeshd_kind_diff workloads, services, policies;
};

/* What the last load produced (for logs, tests and a later status page). */
struct zmeshd_load_info {
    uint64_t version;            /* 1 for the first snapshot, +1 per published one */
    struct zmeshd_counts counts; /* of the published snapshot */
    struct zmeshd_diff diff;     /* against the previous snapshot (all added for the first) */
    unsigned findings[3];        /* by enum manifest_level */
    uint64_t load_us;            /* reading the manifests and building the snapshot */
    unsigned events;             /* change events merged into this reload (0: the first load) */
};

/* Called on the loop thread with the previous snapshot (NULL the first time) and the new one, both borrowed
 * for the call (take a reference to keep one). */
typedef void (*zmeshd_subscriber_fn)(void *ud, struct snapshot *old, struct snapshot *cur);

/* Called on the loop thread after every reload that read the source, whether or not the snapshot changed, with
 * the new store (borrowed for the call; zmeshd_store() returns it until the next reload). For what is computed
 * from objects that make no snapshot resource (the PodEnrolment table: pods without an address). */
typedef void (*zmeshd_store_fn)(void *ud, const struct manifest_store *st);

struct zmeshd;

/* Checks cfg, opens the CA (plugin_ca, else a self-signed root in state_dir, created if missing), the token
 * key (state_dir/ZMESHD_TOKEN_KEY_FILE, created if missing), parses the trusted node accounts and makes the
 * manifest source on l. Loads nothing yet. Strings of cfg are copied. Returns 0 with *out set (free with
 * zmeshd_free), or -errno with err naming what was wrong. */
int zmeshd_new(struct loop *l, const struct zmeshd_config *cfg, struct zmeshd **out, char *err, size_t errlen);
/* Starts watching, then loads the manifests and publishes the first snapshot (watching first, so a change
 * made during the load is not missed). Returns 0, or -errno with err set when the source cannot be watched
 * or read at all (findings in documents are not failures). */
int zmeshd_start(struct zmeshd *d, char *err, size_t errlen);
/* Reads the source into a new store, builds a snapshot and, when it differs from the published one (by
 * zmeshd_snapshot_diff), publishes it as the next version and calls the subscribers; either way one log line
 * says what changed and how long it took. When the source cannot be read at all, the previous snapshot stays
 * and -errno is returned. events is logged (how many change events led here). Returns 0, -errno, or -EBUSY
 * from inside a subscriber. */
int zmeshd_reload(struct zmeshd *d, unsigned events);
/* Stops watching; the current snapshot stays. */
void zmeshd_stop(struct zmeshd *d);
/* Frees everything (stops first). Subscribers are not called. NULL is a no-op. */
void zmeshd_free(struct zmeshd *d);

/* Adds a subscriber (not from inside a subscriber call). Returns 0, -ENOMEM, or -EBUSY during a publish. */
int zmeshd_subscribe(struct zmeshd *d, zmeshd_subscriber_fn fn, void *ud);
/* Removes the subscriber registered with fn and ud. Returns 0, -ENOENT, or -EBUSY during a publish. */
int zmeshd_unsubscribe(struct zmeshd *d, zmeshd_subscriber_fn fn, void *ud);

/* Adds or removes a store subscriber (zmeshd_store_fn); same rules and returns as zmeshd_subscribe. */
int zmeshd_subscribe_store(struct zmeshd *d, zmeshd_store_fn fn, void *ud);
int zmeshd_unsubscribe_store(struct zmeshd *d, zmeshd_store_fn fn, void *ud);

/* The published snapshot (borrowed; NULL before the first load). */
struct snapshot *zmeshd_snapshot(const struct zmeshd *d);
/* The store it was computed from (borrowed; replaced by the next reload). */
const struct manifest_store *zmeshd_store(const struct zmeshd *d);
/* The last load's figures (borrowed). */
const struct zmeshd_load_info *zmeshd_last_load(const struct zmeshd *d);
/* The CA, the token key, the trusted node accounts, the listen address (borrowed, live as long as d). */
const struct ca_issuer *zmeshd_ca(const struct zmeshd *d);
const struct token_key *zmeshd_token_key(const struct zmeshd *d);
const struct ca_trusted *zmeshd_trusted(const struct zmeshd *d);
const char *zmeshd_listen(const struct zmeshd *d);
/* The listen address parsed (port 0: any free port). */
const struct sockaddr_storage *zmeshd_listen_addr(const struct zmeshd *d);
const struct zmeshd_config *zmeshd_config(const struct zmeshd *d);
/* The loop zmeshd runs on (for work handed back from other threads). */
struct loop *zmeshd_loop(const struct zmeshd *d);
/* A ca_pod_on_node_fn over the current store (ud: the struct zmeshd): 1 when a pod that is not Failed has
 * service account ns/sa and spec.nodeName node, as istiod's node authorizer asks the API server
 * (istio/istio security/pkg/server/ca/node_auth.go). */
int zmeshd_pod_on_node(void *ud, const char *ns, const char *sa, const char *node);

/* ---- snapshots compared ---- */

/* Resource counts of s (NULL: all zero). */
struct zmeshd_counts zmeshd_snapshot_counts(const struct snapshot *s);
/* Compares cur with old (NULL: everything is added) by resource key; changed means any field of the model
 * differs. O(n) hash lookups. */
void zmeshd_snapshot_diff(const struct snapshot *old, const struct snapshot *cur, struct zmeshd_diff *out);
/* True when nothing was added, changed or removed. */
bool zmeshd_diff_empty(const struct zmeshd_diff *df);
/* Equality of two resources, field by field (order of lists matters, as it does on the wire). */
bool zmeshd_workload_equal(const struct workload *a, const struct workload *b);
bool zmeshd_service_equal(const struct service *a, const struct service *b);
bool zmeshd_policy_equal(const struct policy *a, const struct policy *b);

/* ---- the one-shot commands ---- */

/* `zmeshd check`: loads dir once, writes every finding (manifest_finding_format, prefixed by its level) and
 * then a summary line to out. Returns 0 when no finding is an ERROR, 1 when one is, 2 when dir cannot be read
 * at all (err set), like istioctl analyze's non-zero exit on errors. */
int zmeshd_check(const char *dir, const struct k8s_options *opts, FILE *out, char *err, size_t errlen);

/* `zmeshd token`: opens (or creates) state_dir/ZMESHD_TOKEN_KEY_FILE (state_dir is created 0700 when
 * missing) and mints a token for s valid ttl_s seconds from now (token_mint). Returns 0 with *out (caller
 * frees), or -errno with err set. */
int zmeshd_token_mint(const char *state_dir, const struct token_subject *s, long ttl_s, char **out, char *err,
                      size_t errlen);
/* Writes state_dir/ZMESHD_TOKEN_KEY_FILE into buf. Returns 0 or -ENAMETOOLONG. */
int zmeshd_token_key_path(const char *state_dir, char *buf, size_t n);
