/* The manifest store: Kubernetes objects zmeshd reads (Namespace, Pod, Service, ServiceAccount,
 * AuthorizationPolicy, PeerAuthentication, Gateway), kept as typed structs. The source is a directory of YAML
 * files today (manifest_load_dir); a later Kubernetes API watch fills the same store, so conversion (k8s.h)
 * never sees where an object came from beyond its manifest_src, which names it in messages.
 *
 * A document zmeshd cannot use is reported as a finding naming file, document index (1-based) and field
 *     pods.yaml#2: spec.containers[0].ports[1].containerPort: expected a port 1-65535, got "http" (line 14)
 * and is left out; every other document still loads. Memory: everything a store hands out is owned by it
 * and lives until manifest_store_free(). */
#pragma once
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Files larger than this are refused (reported, the others still load). */
#define MANIFEST_MAX_FILE ((size_t)64 << 20)
/* Longest scalar kept; Kubernetes annotations (last-applied-configuration) can be long. */
#define MANIFEST_MAX_SCALAR ((size_t)256 << 10)
/* Deepest nesting accepted in a document; real objects stay far below. */
#define MANIFEST_MAX_DEPTH 64
/* Most YAML nodes in one document; beyond it the document is refused. */
#define MANIFEST_MAX_NODES ((size_t)1 << 20)
/* Most files read from one directory. */
#define MANIFEST_MAX_FILES 10000

enum manifest_level { MANIFEST_INFO = 0, MANIFEST_WARN = 1, MANIFEST_ERROR = 2 };

/* Where an object came from: file name (relative to the directory) and 1-based document index. */
struct manifest_src {
    const char *file;
    unsigned doc;
    unsigned line; /* 1-based line of the document start, or of the field in a finding; 0 = unknown */
};

/* One thing worth saying about a document or object. ERROR: the document (or the object) was left out;
 * WARN: it applies, with what the message says dropped or changed; INFO: skipped by design. */
struct manifest_finding {
    enum manifest_level level;
    struct manifest_src src;
    const char *field;   /* YAML path, e.g. "spec.containers[0].ports"; "" for the document */
    const char *message; /* the reason */
};
/* Receives findings (borrowed for the call only). NULL means: log them (target "manifest"). */
typedef void (*manifest_report_fn)(void *ud, const struct manifest_finding *f);

/* "file#doc: field: message (line N)" into buf (field and line only when set). Returns buf. */
const char *manifest_finding_format(const struct manifest_finding *f, char *buf, size_t n);
/* Hands f to report, or logs it (target "manifest", at the finding's level) when report is NULL. */
void manifest_finding_emit(manifest_report_fn report, void *ud, const struct manifest_finding *f);

struct k8s_kv {
    const char *key, *value;
};
struct k8s_strs {
    const char *const *v;
    size_t n;
};

struct k8s_meta {
    const char *name, *namespace_, *uid, *creation; /* "" when unset; creation is RFC 3339 */
    const struct k8s_kv *labels, *annotations;      /* sorted by key */
    size_t n_labels, n_annotations;
    bool deleting; /* metadata.deletionTimestamp set */
    struct manifest_src src;
    unsigned order; /* load order across the store, the tie-break after creation */
};

struct k8s_namespace {
    struct k8s_meta meta;
};
struct k8s_service_account {
    struct k8s_meta meta;
};

struct k8s_container_port {
    const char *name, *protocol; /* protocol defaults to "TCP" */
    uint16_t port;
};
struct k8s_pod {
    struct k8s_meta meta;
    const char *node_name, *service_account, *phase; /* "" when unset */
    const char *generate_name;                       /* metadata.generateName */
    const char *controller_kind, *controller_name;   /* the ownerReference with controller: true, or "" */
    bool host_network, ready;                        /* ready: condition Ready is "True" */
    struct k8s_strs ips;                             /* status.podIPs[].ip, else status.podIP */
    const struct k8s_container_port *ports;          /* every container's ports, in order */
    size_t n_ports;
};

struct k8s_service_port {
    const char *name, *protocol;
    const char *app_protocol; /* spec.ports[].appProtocol, "" when absent */
    uint16_t port;
    uint16_t target_port; /* number; the port itself when targetPort is absent (the API server's default) */
    const char *target_name; /* named targetPort, else "" (then target_port is 0) */
};
struct k8s_service {
    struct k8s_meta meta;
    const char *type;              /* spec.type, "" = ClusterIP */
    bool has_selector;             /* spec.selector present and non-empty */
    const struct k8s_kv *selector; /* sorted by key */
    size_t n_selector;
    struct k8s_strs cluster_ips; /* spec.clusterIPs, else spec.clusterIP ("None" kept: headless) */
    struct k8s_strs lb_ips;      /* status.loadBalancer.ingress[].ip (entries with only a hostname skipped) */
    const char *internal_traffic_policy, *traffic_distribution; /* spec fields, "" when unset */
    const struct k8s_service_port *ports;
    size_t n_ports;
};

/* AuthorizationPolicy (security.istio.io/v1, v1beta1). Source and Operation fields are kept by kind so the
 * conversion can walk them in a table. */
enum k8s_src_field {
    K8S_SRC_PRINCIPALS,
    K8S_SRC_NOT_PRINCIPALS,
    K8S_SRC_REQUEST_PRINCIPALS,
    K8S_SRC_NOT_REQUEST_PRINCIPALS,
    K8S_SRC_NAMESPACES,
    K8S_SRC_NOT_NAMESPACES,
    K8S_SRC_IP_BLOCKS,
    K8S_SRC_NOT_IP_BLOCKS,
    K8S_SRC_REMOTE_IP_BLOCKS,
    K8S_SRC_NOT_REMOTE_IP_BLOCKS,
    K8S_SRC_SERVICE_ACCOUNTS,
    K8S_SRC_NOT_SERVICE_ACCOUNTS,
    K8S_SRC_COUNT
};
enum k8s_op_field {
    K8S_OP_HOSTS,
    K8S_OP_NOT_HOSTS,
    K8S_OP_PORTS,
    K8S_OP_NOT_PORTS,
    K8S_OP_METHODS,
    K8S_OP_NOT_METHODS,
    K8S_OP_PATHS,
    K8S_OP_NOT_PATHS,
    K8S_OP_COUNT
};
/* The Istio field names, indexed by the enums above. */
extern const char *const k8s_src_field_names[K8S_SRC_COUNT];
extern const char *const k8s_op_field_names[K8S_OP_COUNT];

struct k8s_source {
    struct k8s_strs f[K8S_SRC_COUNT];
};
struct k8s_operation {
    struct k8s_strs f[K8S_OP_COUNT];
};
struct k8s_condition {
    const char *key;
    struct k8s_strs values, not_values;
};
struct k8s_authz_rule {
    const struct k8s_source *from;
    size_t n_from;
    const struct k8s_operation *to;
    size_t n_to;
    const struct k8s_condition *when;
    size_t n_when;
};
struct k8s_authz_policy {
    struct k8s_meta meta;
    bool has_selector; /* spec.selector present (even with no labels: istiod tests GetSelector() != nil) */
    const struct k8s_kv *selector;
    size_t n_selector;
    bool has_target_refs; /* spec.targetRef or spec.targetRefs: a waypoint's policy */
    const char *action;   /* "" = ALLOW */
    const struct k8s_authz_rule *rules;
    size_t n_rules;
};

enum k8s_mtls_mode { K8S_MTLS_UNSET = 0, K8S_MTLS_DISABLE, K8S_MTLS_PERMISSIVE, K8S_MTLS_STRICT };
struct k8s_port_mtls {
    uint16_t port;
    uint8_t mode; /* enum k8s_mtls_mode */
};
struct k8s_peer_authn {
    struct k8s_meta meta;
    const struct k8s_kv *selector; /* spec.selector.matchLabels; empty = namespace or mesh policy */
    size_t n_selector;
    uint8_t mode;                      /* spec.mtls.mode */
    const struct k8s_port_mtls *ports; /* spec.portLevelMtls, sorted by port */
    size_t n_ports;
};

/* Gateway (gateway.networking.k8s.io/v1, v1beta1): what waypoint binding reads (zmeshd/waypoint.h). The
 * Gateway API's own bounds (apis/v1/gateway_types.go: listeners MaxItems=64, addresses MaxItems=16); a
 * Gateway beyond them is refused, as the API server refuses it. */
#define K8S_GATEWAY_MAX_LISTENERS 64
#define K8S_GATEWAY_MAX_ADDRESSES 16
struct k8s_gateway_listener {
    const char *name, *protocol; /* protocol as written ("HBONE", "HTTP", ...) */
    uint16_t port;
    const char *from;     /* allowedRoutes.namespaces.from: "All", "Same" or "Selector"; "" = unset (Same) */
    bool has_ns_selector; /* allowedRoutes.namespaces.selector present */
    const struct k8s_kv *ns_selector; /* its matchLabels, sorted by key */
    size_t n_ns_selector;
};
struct k8s_gateway_address {
    const char *type, *value; /* type "" = IPAddress (the Gateway API default) */
};
struct k8s_gateway_condition {
    const char *type, *status, *reason, *message; /* "" when unset */
};
struct k8s_gateway {
    struct k8s_meta meta;
    const char *class_name; /* spec.gatewayClassName */
    const struct k8s_gateway_listener *listeners;
    size_t n_listeners;
    const struct k8s_gateway_address *addresses; /* status.addresses */
    size_t n_addresses;
    const struct k8s_gateway_condition *conditions; /* status.conditions */
    size_t n_conditions;
};

struct manifest_store;

/* A new empty store in *out (owned by the caller). Returns 0 or -ENOMEM. */
int manifest_store_new(struct manifest_store **out);
/* Frees the store and every object it handed out. NULL is a no-op. */
void manifest_store_free(struct manifest_store *st);

/* Reads every regular file ending in .yaml, .yml or .json in dir (not recursive), sorted by name, into st.
 * Findings go to report. Returns 0 (documents with errors were reported and left out), or -errno when the
 * directory itself cannot be read, -ENOMEM. */
int manifest_load_dir(struct manifest_store *st, const char *dir, manifest_report_fn report, void *ud);
/* Loads one file's contents (buf need not be NUL-terminated; it is not kept); name appears in findings.
 * Returns 0 or -ENOMEM (errors in documents are findings, not failures). */
int manifest_load_buf(struct manifest_store *st, const char *name, const char *buf, size_t len,
                      manifest_report_fn report, void *ud);

/* Every document of one file as a jansson value, for readers of fields the store does not keep (zmesh up
 * runs the Pods' containers). The same reader as manifest_load_buf: its bounds, its refusal of aliases and of
 * duplicate keys, its findings (a document it cannot read is reported and not handed over). Plain scalars
 * are typed as YAML's core schema (true/false, integers, floats), quoted ones are strings. fn gets each
 * non-empty document (borrowed for the call) and where it came from; a non-zero return stops the load and
 * is returned. Returns 0, fn's code or -ENOMEM. */
struct json_t;
typedef int (*manifest_json_fn)(void *ud, struct json_t *doc, const struct manifest_src *src);
int manifest_load_json(const char *name, const char *buf, size_t len, manifest_report_fn report, void *ud,
                       manifest_json_fn fn, void *fn_ud);

/* The objects loaded so far, in load order (borrowed from st). */
const struct k8s_namespace *manifest_namespaces(const struct manifest_store *st, size_t *n);
const struct k8s_pod *manifest_pods(const struct manifest_store *st, size_t *n);
const struct k8s_service *manifest_services(const struct manifest_store *st, size_t *n);
const struct k8s_service_account *manifest_service_accounts(const struct manifest_store *st, size_t *n);
const struct k8s_authz_policy *manifest_authz_policies(const struct manifest_store *st, size_t *n);
const struct k8s_peer_authn *manifest_peer_authns(const struct manifest_store *st, size_t *n);
const struct k8s_gateway *manifest_gateways(const struct manifest_store *st, size_t *n);

/* A document the waypoint's L7 conversion reads as a whole (src/zmeshd/l7.h): HTTPRoute and GRPCRoute
 * (gateway.networking.k8s.io/v1, v1beta1 for HTTPRoute), and AuthorizationPolicy with targetRef(s), which is also
 * in manifest_authz_policies. The tree is the document as read (jansson), owned by the store. */
struct manifest_l7_doc {
    const char *kind; /* "HTTPRoute", "GRPCRoute", "AuthorizationPolicy", "RequestAuthentication",
                       * "DestinationRule" (static) */
    json_t *doc;
    struct manifest_src src;
    const struct manifest_store *st; /* the store that holds it (a DestinationRule's subsets select its pods) */
};
const struct manifest_l7_doc *manifest_l7_docs(const struct manifest_store *st, size_t *n);

/* A label's value, or NULL (binary search over sorted kv). */
const char *k8s_kv_get(const struct k8s_kv *kv, size_t n, const char *key);
/* True when every selector entry is in labels (an empty selector selects everything). */
bool k8s_selector_matches(const struct k8s_kv *sel, size_t n_sel, const struct k8s_kv *labels,
                          size_t n_labels);
