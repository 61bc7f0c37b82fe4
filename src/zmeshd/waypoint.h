/* Waypoint binding: which Gateways of a manifest store are waypoints, their GatewayAddress, and which
 * Services and Pods are bound to one, computed as istiod computes them (istio/istio
 * pilot/pkg/serviceregistry/kube/controller/ambient/waypoints.go: WaypointsCollection,
 * fetchWaypointForTarget, fetchWaypointForService, fetchWaypointForWorkload, getGatewayAddress;
 * statusqueue.go for the reasons), with one deliberate difference: a waypoint that exists but has no ready
 * pod still binds (istiod leaves it out until Gateway.status.addresses is set, so traffic silently skips its
 * L7 policy; zmesh sets `waypoint` and ztunnel refuses the connection instead).
 *
 *     struct k8s_waypoints *wp;
 *     k8s_waypoints_compute(store, &opts, &wp, report, ud);   findings: invalid waypoints, binding errors
 *     const struct gateway_addr *a = k8s_waypoints_service(wp, i);   the i-th Service of the store
 *     const struct k8s_binding *b = k8s_waypoints_service_binding(wp, i);   its istio.io/WaypointBound
 *     k8s_waypoint_bound_apply(service_json, b ? &b->cond : NULL, now);     written on a Service object
 *     json_t *j = k8s_waypoints_json(wp);                     /debug/waypointz
 *     k8s_waypoints_free(wp);
 *
 * Memory: everything k8s_waypoints_* hands out is owned by the result (strings may point into the store,
 * which must outlive it). */
#pragma once
#include <stdbool.h>
#include <stddef.h>

#include <jansson.h>

#include "mesh/model.h"
#include "zmeshd/k8s.h"
#include "zmeshd/manifest.h"

/* The GatewayClass of Istio's waypoints and the listener that makes a Gateway one (istio/istio
 * pkg/config/constants/constants.go; istioctl/pkg/waypoint/waypoint.go). */
#define K8S_WAYPOINT_CLASS "istio-waypoint"
#define K8S_WAYPOINT_PROTOCOL "HBONE"
#define K8S_WAYPOINT_PORT 15008
/* Labels and annotations (istio/api label/labels.yaml, annotation/annotations.yaml). */
#define K8S_LABEL_WAYPOINT_FOR "istio.io/waypoint-for"
#define K8S_LABEL_USE_WAYPOINT_NAMESPACE "istio.io/use-waypoint-namespace"
#define K8S_LABEL_GATEWAY_MANAGED "gateway.istio.io/managed"
#define K8S_GATEWAY_MANAGED_MESH "istio.io-mesh-controller"
#define K8S_LABEL_GATEWAY_NAME "gateway.networking.k8s.io/gateway-name"
#define K8S_ANNOTATION_NAME_OVERRIDE "gateway.istio.io/name-override"
/* The use-waypoint value that opts out. */
#define K8S_USE_WAYPOINT_NONE "none"
/* Read only for the WaypointBound message: zmesh has no ingress gateway for it to steer (istio/api
 * label/labels.yaml). */
#define K8S_LABEL_INGRESS_USE_WAYPOINT "istio.io/ingress-use-waypoint"

/* The condition istiod writes on each Service's status.conditions about its waypoint (istio/istio
 * pilot/pkg/model/service.go: the ConditionType WaypointBound, ServiceInfo.GetConditions; the False reasons
 * and messages are pilot/pkg/serviceregistry/ambient/status.go's ReportWaypoint*). */
#define K8S_COND_WAYPOINT_BOUND "istio.io/WaypointBound"
#define K8S_REASON_WAYPOINT_ACCEPTED "WaypointAccepted"

/* istio.io/waypoint-for (istio/istio pkg/config/constants: ServiceTraffic, WorkloadTraffic, AllTraffic,
 * NoTraffic). */
enum k8s_waypoint_for { K8S_WP_FOR_SERVICE, K8S_WP_FOR_WORKLOAD, K8S_WP_FOR_ALL, K8S_WP_FOR_NONE };
/* "service", "workload", "all", "none". */
const char *k8s_waypoint_for_to_str(enum k8s_waypoint_for f);

/* Binding outcomes; the strings are istiod's status reasons (statusqueue.go) plus zmesh's Bound. */
enum k8s_bind_reason {
    K8S_BIND_BOUND,             /* "Bound": the waypoint is set and ready */
    K8S_BIND_NOT_READY,         /* "WaypointIsNotReady": set, but no ready pod (zmesh: set, traffic refused);
                                   or, with bound false, no such waypoint (istiod's reason for both) */
    K8S_BIND_ATTACHMENT_DENIED, /* "AttachmentDenied": allowedRoutes does not admit the namespace */
    K8S_BIND_UNSUPPORTED_TRAFFIC, /* "UnsupportedTrafficType": waypoint-for excludes the object's kind */
};
const char *k8s_bind_reason_to_str(enum k8s_bind_reason r);

struct k8s_waypoint {
    const struct k8s_gateway *gw;
    enum k8s_waypoint_for traffic;
    const char *service_name;      /* the Service named after the Gateway (name-override aside) */
    const struct k8s_service *svc; /* that Service in the store, or NULL */
    struct gateway_addr addr;     /* as istiod writes it: status.addresses' Hostname, else its IPAddress, else
                                     <service>.<ns>.svc.<suffix>; hbone_port 15008 */
    bool ready;                   /* status.addresses set and a Ready pod behind the Service */
    const char *reason, *message; /* "" when ready */
    const char *from;             /* the HBONE listener's allowedRoutes.namespaces.from ("Same" by default) */
    const struct k8s_gateway_listener *listener;
};

/* A status condition as istiod writes it (an IstioCondition without observedGeneration, which istiod leaves
 * 0 for these). type NULL: no condition (istiod writes none, and prunes one it wrote before). */
struct k8s_status_condition {
    const char *type;
    bool status;
    const char *reason, *message;
};

struct k8s_binding {
    const char *kind; /* "Service" or "Pod" */
    const struct k8s_meta *meta;
    const char *uid;               /* Pods: the workload uid; Services: "ns/hostname" */
    const char *waypoint;          /* "ns/name" the object asks for */
    const struct k8s_waypoint *wp; /* the waypoint set on the resource, or NULL */
    enum k8s_bind_reason reason;
    const char *message; /* zmesh's account, for logs and /debug/waypointz */
    /* istio.io/WaypointBound with istiod's reason and message: True, WaypointAccepted, "Successfully attached
     * to waypoint <ns>/<name>" when reason is Bound; otherwise False with the reason's string and istiod's
     * message. A waypoint that exists but is not ready is False WaypointIsNotReady here, as istiod says it,
     * although zmesh sets it (so its traffic is refused, not sent around it). A Pod whose waypoint comes from
     * its namespace's label and does not take workload traffic has none (type NULL), as istiod; istiod
     * writes it on Services (and WorkloadEntries), not on Pods, and so does zmesh up. */
    struct k8s_status_condition cond;
};

struct k8s_waypoints;

/* Computes waypoints and bindings of every object of st (duplicates included: k8s.c leaves those out itself).
 * opts' NULL strings take k8s.h's defaults. Findings (an istio-waypoint Gateway that is not a valid waypoint,
 * every binding that does not bind or binds a waypoint that is not ready) go to report (NULL logs them).
 * Returns 0 with *out (free with k8s_waypoints_free), or -ENOMEM. */
int k8s_waypoints_compute(const struct manifest_store *st, const struct k8s_options *opts,
                          struct k8s_waypoints **out, manifest_report_fn report, void *ud);
void k8s_waypoints_free(struct k8s_waypoints *w);

/* The waypoint to set on the i-th Service / Pod of the store (manifest_services / manifest_pods order), or
 * NULL for none. Borrowed from w. */
const struct gateway_addr *k8s_waypoints_service(const struct k8s_waypoints *w, size_t i);
const struct gateway_addr *k8s_waypoints_pod(const struct k8s_waypoints *w, size_t i);

/* The waypoints (in load order) and the bindings (Services then Pods, in load order; only objects that ask
 * for a waypoint, i.e. carry istio.io/use-waypoint other than "none" themselves or through their namespace).
 * Borrowed from w. */
const struct k8s_waypoint *k8s_waypoints_list(const struct k8s_waypoints *w, size_t *n);
const struct k8s_binding *k8s_waypoints_bindings(const struct k8s_waypoints *w, size_t *n);

/* The binding of the i-th Service of the store, or NULL when it asks for no waypoint (no use-waypoint label
 * on it or its namespace, or "none"), is a waypoint's own Service or a duplicate: istiod then writes no
 * WaypointBound condition and prunes one it wrote before. Borrowed from w. */
const struct k8s_binding *k8s_waypoints_service_binding(const struct k8s_waypoints *w, size_t i);

/* Sets c as the c->type condition of obj's status.conditions (a Kubernetes object as jansson, changed in
 * place; status and conditions made when missing), or removes every K8S_COND_WAYPOINT_BOUND condition when
 * c is NULL or its type NULL; other conditions are kept in their order. A condition whose status is
 * unchanged keeps its lastTransitionTime, so the same outcome leaves obj equal; now (RFC 3339) is the time of
 * a new or flipped one. Returns 1 when obj changed, 0 when not, -EINVAL when obj's status or conditions are
 * not an object / an array, -ENOMEM. */
int k8s_waypoint_bound_apply(json_t *obj, const struct k8s_status_condition *c, const char *now);
/* The same for any condition type: c (its type ignored) as obj's type condition, or every type condition
 * removed when c is NULL. */
int k8s_condition_apply(json_t *obj, const char *type, const struct k8s_status_condition *c, const char *now);

/* /debug/waypointz (docs/zmeshd.md): {"waypoints": [...], "bindings": [...]}, a new reference or NULL on
 * ENOMEM. */
json_t *k8s_waypoints_json(const struct k8s_waypoints *w);
