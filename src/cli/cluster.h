/* zmesh up: a local cluster on one machine, no Kubernetes. This header holds what the command side (up.c),
 * the controller (cluster_ctl.c) and the networking (cluster_net.c) share, and the pure parts that
 * tests/unit/test_up.c checks: the cluster's addresses, pod placement, the resource record and the Pod spec
 * reader (containers, env, readiness probes, restart policy) on top of zmeshd's manifest reader.
 *
 * State directory layout (docs/local-cluster.md):
 *   cluster.json        the cluster's settings (prefix, subnets, nodes, binaries), written once by up
 *   record              every resource up created, appended (and fsync'ed) BEFORE it is created
 *   controller.pid      the controller daemon; controller.sock its command socket (JSON, one per connection)
 *   api/                the "API server": every object as applied, Pods with status (zmeshd watches it)
 *   nodes/<node>/       cni.conflist, ztunnel.sock, pluginevent.sock, agent/, tokens, ipam/
 *   pods/<ns>_<name>/   <container>.log
 *   logs/               controller.log, zmeshd.log, ztunnel-<node>.log, agent-<node>.log
 *   zmeshd/             zmeshd's state (CA, token key)
 *   cni/bin/            CNI_PATH directory holding the zmesh-cni symlink */
#pragma once

/* The source of zmesh up's tcpSocket and httpGet probes (an address on each node's lo): Istio's kubelet probe
 * address, which the in-pod rules leave to the app. */
#define CLUSTER_PROBE_SRC "169.254.7.127"
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "zmeshd/manifest.h"

#define CLUSTER_DEFAULT_STATE "/run/zmesh"
#define CLUSTER_DEFAULT_PREFIX "zmesh"
/* The node network: a /24 whose .1 is the host's side of the bridge and .2.. are the nodes. */
#define CLUSTER_DEFAULT_NODE_SUBNET "172.30.0.0"
/* Pod CIDRs: <a>.<b>.<node index>.0/24 (node indexes are 1-based). */
#define CLUSTER_DEFAULT_POD_SUBNET "10.244.0.0"
/* Bridge <prefix>0 and host veths <prefix>v<i> must fit IFNAMSIZ (15 characters). */
#define CLUSTER_PREFIX_MAX 8
#define CLUSTER_MAX_NODES 200
#define CLUSTER_NAME_MAX 64
#define CLUSTER_PATH_MAX 512
/* zmeshd's ports, as istiod's: xDS and CA on 15012, the debug (monitoring) port on 15014. */
#define CLUSTER_XDS_PORT 15012
#define CLUSTER_DEBUG_PORT 15014
#define CLUSTER_ZTUNNEL_READY_PORT 15021
/* Restart backoff: kubelet's starts at 10 s; a local tool starts at 1 s, doubling to kubelet's 5 min cap,
 * reset after a container ran for 10 min (kubelet's 2 x cap). */
#define CLUSTER_BACKOFF_START_MS 1000
#define CLUSTER_BACKOFF_MAX_MS (300 * 1000)
#define CLUSTER_BACKOFF_RESET_MS (600 * 1000)
/* Pod deletion: Kubernetes waits terminationGracePeriodSeconds (default 30 s) between SIGTERM and SIGKILL;
 * zmesh up defaults to 5 s and caps a larger value at 30 s, so a delete never hangs the controller long. */
#define CLUSTER_GRACE_DEFAULT_S 5
#define CLUSTER_GRACE_MAX_S 30
/* Most containers per pod and argv/env entries per container. */
#define CLUSTER_MAX_CONTAINERS 16
#define CLUSTER_MAX_ARGS 256

/* ---- the cluster's settings ---- */

struct cluster_node {
    char name[CLUSTER_NAME_MAX];
    unsigned index; /* 1-based */
    char ip[16];    /* node IP on the node network */
    char pod_cidr[20];
    char netns[CLUSTER_NAME_MAX + CLUSTER_PREFIX_MAX + 2];
};

struct cluster_cfg {
    char state[CLUSTER_PATH_MAX];
    char prefix[CLUSTER_PREFIX_MAX + 1];
    char node_subnet[16], pod_subnet[16];
    char host_ip[16];
    char bridge[16];
    char bin_dir[CLUSTER_PATH_MAX]; /* zmeshd, ztunnel, zmesh-cni */
    bool mesh;
    size_t n_nodes;
    struct cluster_node nodes[CLUSTER_MAX_NODES];
};

/* Fills the derived fields (host IP, bridge, nodes' IPs, CIDRs, netns names) from state, prefix, subnets and
 * the node names already in cfg->nodes[].name. Returns 0 or -EINVAL with err set (a bad subnet or prefix, a
 * node name that is not a DNS label, too many nodes). */
int cluster_cfg_derive(struct cluster_cfg *cfg, char *err, size_t errlen);
/* cluster.json: writes (atomically) / reads cfg. Returns 0 or -errno with err set. */
int cluster_cfg_save(const struct cluster_cfg *cfg, char *err, size_t errlen);
int cluster_cfg_load(const char *state, struct cluster_cfg *cfg, char *err, size_t errlen);
/* The node named name, or NULL. */
const struct cluster_node *cluster_node_find(const struct cluster_cfg *cfg, const char *name);
/* A path under the state directory: "<state>/<fmt...>" into buf. Returns buf. */
char *cluster_path(const struct cluster_cfg *cfg, char *buf, size_t n, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* The network namespace name of pod ns/name: "<prefix>-<ns>_<name>" (a node name has no '_'). */
void cluster_pod_netns(const struct cluster_cfg *cfg, const char *ns, const char *name, char *buf, size_t n);

/* Round-robin placement: the index of the next node for a pod without spec.nodeName (*rr advances). */
size_t cluster_place_next(unsigned *rr, size_t n_nodes);

/* True for a DNS-1123 label (Kubernetes names of nodes and namespaces): [a-z0-9-], at most 63, alnum ends. */
bool cluster_dns_label(const char *s);
/* True for a DNS-1123 subdomain (Pod and most object names): labels joined by '.', at most 253. */
bool cluster_dns_subdomain(const char *s);

/* ---- the resource record ---- */

/* What up creates, in the order created. down undoes the live entries in reverse. */
enum record_kind { REC_NETNS, REC_BRIDGE, REC_ROUTE, REC_POD, REC_PROC, REC_KIND_COUNT };
struct record_entry {
    enum record_kind kind;
    char a[CLUSTER_PATH_MAX], b[CLUSTER_NAME_MAX * 4], c[CLUSTER_NAME_MAX], d[CLUSTER_NAME_MAX];
};
/* "+ <kind> a [b [c [d]]]" is appended (and fsync'ed) before the resource is made; "- <kind> a ..." after it
 * is gone. Fields hold no blanks. Returns 0 or -errno. */
int cluster_record_add(const char *state, const struct record_entry *e);
int cluster_record_remove(const char *state, const struct record_entry *e);
/* Parses one record line into *e and *added (true for '+'). Returns 0 or -EINVAL. */
int cluster_record_parse_line(const char *line, struct record_entry *e, bool *added);
/* The live entries of the record text (added and not removed since), in order; *out is malloc'd (caller
 * frees). Malformed lines are counted in *bad (a torn last line after a crash). Returns 0 or -ENOMEM. */
int cluster_record_live(const char *text, struct record_entry **out, size_t *n, size_t *bad);
const char *record_kind_str(enum record_kind k);

/* ---- Pod specs ---- */

enum restart_policy { RESTART_ALWAYS = 0, RESTART_ON_FAILURE, RESTART_NEVER };
enum probe_kind { PROBE_NONE = 0, PROBE_TCP, PROBE_EXEC, PROBE_HTTP };
struct probe_spec {
    enum probe_kind kind;
    uint16_t port;  /* TCP, HTTP */
    char *path;     /* HTTP, default "/" */
    char **command; /* EXEC, NULL-terminated */
    int initial_delay_s, period_s, timeout_s, success_threshold, failure_threshold;
};
struct container_spec {
    char *name;
    char **argv; /* command + args, NULL-terminated */
    char **env;  /* "NAME=value", NULL-terminated */
    char *working_dir;
    struct probe_spec readiness;
};
struct pod_spec {
    char *ns, *name, *node, *service_account;
    enum restart_policy restart;
    int grace_s;
    size_t n;
    struct container_spec *c;
};

/* Findings of the Pod reader, formatted as zmeshd's: "file#doc: field: message". warn is false for errors.
 */
typedef void (*cluster_report_fn)(void *ud, bool warn, const char *msg);
/* Which once-only warnings were given (e.g. "image ignored"), kept by the caller across pods. */
struct cluster_warned {
    uint32_t bits;
};
/* Reads a Pod object (as manifest_load_json gives it) into *out. Errors name src and the field; warnings
 * (fields that change behaviour but that zmesh up does not honour) are given once per cluster_warned.
 * Returns 0, -EINVAL (reported) or -ENOMEM. */
int cluster_pod_spec_parse(const json_t *pod, const struct manifest_src *src, struct pod_spec *out,
                           struct cluster_warned *w, cluster_report_fn report, void *ud);
void cluster_pod_spec_free(struct pod_spec *p);
const char *restart_policy_str(enum restart_policy r);

/* ---- manifests ---- */

/* The objects of a file or a directory (*.yaml, *.yml, *.json, sorted by name; not recursive) as a JSON
 * array of objects (kind List flattened; metadata.namespace defaulted to "default" for namespaced kinds and
 * dropped for cluster-scoped ones). Every document is also read by zmeshd's reader (its errors are errors
 * here, its warnings are reported) and every Pod by cluster_pod_spec_parse. Returns 0 with *out (new
 * reference) when there was no error; -EINVAL when some finding was an error (all were reported); -errno
 * when the path cannot be read. */
int cluster_manifests_read(const char *path, json_t **out, struct cluster_warned *w, cluster_report_fn report,
                           void *ud);

/* "ns/name" key helpers for objects: the kind, namespace ("" for cluster-scoped kinds) and name. */
const char *cluster_obj_kind(const json_t *o);
const char *cluster_obj_ns(const json_t *o);
const char *cluster_obj_name(const json_t *o);
/* True for the kinds that are cluster-scoped (Namespace, Node, ...). */
bool cluster_kind_cluster_scoped(const char *kind);
/* The file name of o under api/: "<kind>_<ns>_<name>.json" (lowercase kind; ns "" for cluster scope). */
void cluster_api_file(const char *kind, const char *ns, const char *name, char *buf, size_t n);

/* Writes data to path atomically (a dot-file next to it, fsync, rename), mode 0644. Returns 0 or -errno. */
int cluster_write_atomic(const char *path, const char *data, size_t len);
/* Reads a whole small file (at most max bytes) into a malloc'd NUL-terminated buffer. Returns 0 or -errno. */
int cluster_read_file(const char *path, size_t max, char **out, size_t *len);
/* mkdir -p with mode. Returns 0 or -errno. */
int cluster_mkdirs(const char *path, unsigned mode);
/* Milliseconds on the wall clock / RFC 3339 UTC of a wall-clock second. */
int64_t cluster_now_ms(void);
void cluster_rfc3339(int64_t unix_s, char *buf, size_t n);
/* Parses RFC 3339 "YYYY-MM-DDTHH:MM:SSZ" into unix seconds. Returns 0 or -EINVAL. */
int cluster_parse_rfc3339(const char *s, int64_t *out);
