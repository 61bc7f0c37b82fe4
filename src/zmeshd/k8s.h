/* Kubernetes objects (a manifest store) to mesh model resources, computed as istiod computes them for ztunnel
 * (istio/istio pilot/pkg/serviceregistry/kube/controller/ambient/: workloads.go, services.go,
 * authorization.go; waypoints.go through zmeshd/waypoint.h, which sets `waypoint`), and fed through the snapshot
 * builder (src/mesh/builder.h).
 *
 *     struct snapshot *s;
 *     k8s_build_snapshot(store, &(struct k8s_options){.cluster_id = "c1"}, &s, report, ud);
 *
 * Findings (a pod skipped, an L7 field dropped from a policy, a resource the builder rejects) name the
 * manifest file and document the resource came from; none of them stops the others. */
#pragma once
#include <stdbool.h>

#include "mesh/model.h"
#include "zmeshd/manifest.h"

#define K8S_DEFAULT_CLUSTER_ID "Kubernetes"
#define K8S_DEFAULT_TRUST_DOMAIN "cluster.local"
#define K8S_DEFAULT_DOMAIN_SUFFIX "cluster.local"
#define K8S_DEFAULT_ROOT_NAMESPACE "istio-system"

/* Enrolment label (namespace or pod) and its values. */
#define K8S_LABEL_DATAPLANE_MODE "istio.io/dataplane-mode"
#define K8S_DATAPLANE_AMBIENT "ambient"
#define K8S_DATAPLANE_NONE "none"
/* A pod injected with a sidecar carries it (istio/istio cni/pkg/util/podutil.go podHasSidecar); ambient and a
 * sidecar in one pod are not supported, so such a pod is never enrolled. */
#define K8S_ANNOTATION_SIDECAR_STATUS "sidecar.istio.io/status"
/* ztunnel's own pods: label app=ztunnel in the system (root) namespace (podutil.go IsZtunnelPod). */
#define K8S_ZTUNNEL_APP "ztunnel"
/* Waypoint binding (namespace, service or pod): zmeshd/waypoint.h. */
#define K8S_LABEL_USE_WAYPOINT "istio.io/use-waypoint"
/* istiod honours it only with EnableWdsDryRunAuthzPol, off by default. */
#define K8S_ANNOTATION_DRY_RUN "istio.io/dry-run"
/* The older way to ask for spec.trafficDistribution: PreferClose. */
#define K8S_ANNOTATION_TRAFFIC_DISTRIBUTION "networking.istio.io/traffic-distribution"
/* Names istiod gives to the policies it derives from PeerAuthentication ('_' cannot occur in a k8s name). */
#define K8S_STATIC_STRICT_POLICY "istio_converted_static_strict"
#define K8S_PEER_AUTHN_PREFIX "converted_peer_authentication_"

/* Every string NULL or "" takes the default above. */
struct k8s_options {
    const char *cluster_id;     /* workload uid prefix and cluster_id */
    const char *trust_domain;   /* workload trust_domain */
    const char *domain_suffix;  /* service hostnames <name>.<ns>.svc.<suffix> */
    const char *root_namespace; /* policies here are GLOBAL; home of the static STRICT policy */
};

/* Builds a snapshot (refcount 1, owned by the caller via *out) from every object in st. Findings go to report
 * (NULL logs them). Returns 0, or -ENOMEM / -E2BIG from the builder with *out untouched. */
int k8s_build_snapshot(const struct manifest_store *st, const struct k8s_options *opts, struct snapshot **out,
                       manifest_report_fn report, void *ud);

/* Whether a pod is in ambient mode, and why: the rule of Istio's CNI node agent with its default enablement
 * selectors (istio/istio cni/pkg/util/enablement_selector.go Matches, cni/pkg/util/podutil.go, and
 * manifests/charts/istio-cni/values.yaml ambient.enablementSelectors): never a host-network pod (its netns is
 * the node's), a pod with a sidecar or a ztunnel pod; else the pod's label istio.io/dataplane-mode=ambient
 * alone enrols it (whatever its namespace), the pod's label "none" opts it out, and the namespace's label
 * "ambient" enrols the others. The CNI agent's EXCLUDE_NAMESPACES is the agent's own setting, not applied
 * here. */
enum k8s_enrolment {
    K8S_ENROL_POD_LABEL,       /* ambient: the pod's label */
    K8S_ENROL_NAMESPACE_LABEL, /* ambient: the namespace's label */
    K8S_ENROL_POD_OPT_OUT,     /* not: the pod's label is "none" */
    K8S_ENROL_NOT_LABELLED,    /* not: neither label says ambient */
    K8S_ENROL_HOST_NETWORK,    /* not: spec.hostNetwork */
    K8S_ENROL_SIDECAR,         /* not: sidecar.istio.io/status */
    K8S_ENROL_ZTUNNEL,         /* not: a ztunnel pod */
};
/* ns may be NULL (a namespace with no manifest has no labels); system_ns is the root namespace. */
enum k8s_enrolment k8s_pod_enrolment(const struct k8s_pod *pod, const struct k8s_namespace *ns,
                                     const char *system_ns);
/* True for the two ambient outcomes. */
bool k8s_enrolment_ambient(enum k8s_enrolment e);
/* "pod-label", "namespace-label", "pod-opt-out", "not-labelled", "host-network", "sidecar", "ztunnel". */
const char *k8s_enrolment_to_str(enum k8s_enrolment e);

/* A Service port's protocol for the Address resource's Port.app_protocol (enum port_app_protocol): Istio's
 * protocol selection (istio/istio pkg/kube ConvertProtocol: appProtocol, else the port name's prefix), mapped
 * as istiod's toAppProtocolFromProtocol maps HTTP, HTTP2 and gRPC. zmesh also sends TCP (tcp, mongo, redis,
 * mysql) and TLS (tls, https), which istiod leaves UNKNOWN, so that its waypoint never delays a server-first
 * protocol on a declared port with detection (Envoy's waypoint knows these from its listeners instead). */
uint8_t k8s_port_app_protocol(const struct k8s_service_port *p);

/* Writes istiod's workload uid for a pod, "<cluster>//Pod/<ns>/<name>", into buf. Returns its length or
 * -ENOSPC. */
int k8s_pod_uid(const char *cluster_id, const char *ns, const char *name, char *buf, size_t n);
