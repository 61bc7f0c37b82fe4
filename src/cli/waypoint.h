/* Waypoints in zmesh: `zmesh waypoint generate|apply|list|status|delete` (istioctl's `waypoint` command,
 * istio/istio istioctl/pkg/waypoint/waypoint.go) and the pure half of zmesh up's waypoint deployment
 * controller (istiod's, istio/istio pilot/pkg/config/kube/gatewaycommon/deploymentcontroller.go with the
 * template manifests/charts/istio-control/istio-discovery/files/waypoint.yaml): the objects made for a
 * Gateway of class istio-waypoint, and the Gateway's status (pilot/pkg/config/kube/gateway/). The controller
 * side that runs them is in cluster_ctl.c; everything here is pure so tests/unit/test_cli.c checks it without
 * namespaces. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include <jansson.h>

#define WP_CLASS "istio-waypoint"
#define WP_GATEWAY_GROUP "gateway.networking.k8s.io"
#define WP_GATEWAY_API WP_GATEWAY_GROUP "/v1"
#define WP_DEFAULT_NAME "waypoint"
#define WP_LABEL_MANAGED "gateway.istio.io/managed"
#define WP_MANAGED_VALUE "istio.io-mesh-controller"
#define WP_LABEL_GATEWAY_NAME "gateway.networking.k8s.io/gateway-name"
#define WP_LABEL_CLASS_NAME "gateway.networking.k8s.io/gateway-class-name"
#define WP_LABEL_FOR "istio.io/waypoint-for"
#define WP_LABEL_USE "istio.io/use-waypoint"
#define WP_LABEL_REV "istio.io/rev"
#define WP_ANN_NAME_OVERRIDE "gateway.istio.io/name-override"
#define WP_ANN_SERVICE_ACCOUNT "gateway.istio.io/service-account"
/* The waypoint's ports, as Istio's: HBONE (the listener) and readiness. */
#define WP_MESH_PORT 15008
#define WP_STATUS_PORT 15021
#define WP_METRICS_PORT 15020
/* istioctl's default for --waypoint-timeout. */
#define WP_DEFAULT_TIMEOUT_MS 90000
/* Kubernetes' DNS label limit: a Service, and so a waypoint's deployment name, is at most this long. */
#define WP_NAME_MAX 63
/* Listeners per Gateway: the Gateway API's maximum (spec.listeners maxItems); more is refused. */
#define WP_LISTENERS_MAX 64
/* The longest pod name prefix before a generated 5-character suffix (Kubernetes' maxGeneratedNameLength). */
#define WP_POD_PREFIX_MAX 58

/* `zmesh waypoint ...`: argc/argv from "waypoint" on. Returns the exit status (0, 1 failure, 2 usage). */
int cmd_waypoint(int argc, char **argv);

/* The Gateway istioctl generates (new reference): gateway.networking.k8s.io/v1, class istio-waypoint, one
 * listener mesh/15008/HBONE; metadata.namespace only when ns is non-NULL; label istio.io/waypoint-for only
 * when for_type is non-NULL (istioctl leaves the default to istiod). */
json_t *wp_gateway_make(const char *ns, const char *name, const char *for_type);
/* o as istioctl prints it (sigs.k8s.io/yaml: keys sorted, block style, two-space indent), on libyaml's
 * emitter. Returns a malloc'ed string (caller frees) or NULL. */
char *wp_yaml(const json_t *o);

/* A Gateway (kind Gateway of gateway.networking.k8s.io/v1 or v1beta1)? */
bool wp_is_gateway(const json_t *o);
/* A Gateway of class istio-waypoint? */
bool wp_is_waypoint(const json_t *o);
/* Checks what the controller reads from a waypoint Gateway: spec.gatewayClassName, spec.listeners[] (name,
 * port 1-65535, protocol), the two annotations (DNS labels). Returns 0, or -EINVAL with err naming the field.
 * Fields the controller does not act on (spec.addresses, spec.infrastructure.parametersRef) add one line
 * each to warnings (a JSON array, borrowed; may be NULL). */
int wp_gateway_check(const json_t *gw, char *err, size_t errlen, json_t *warnings);
/* The names istiod uses: the deployment (and Service) name, <gw> or the name-override annotation, and the
 * service account, the service-account annotation or the deployment name. */
void wp_names(const json_t *gw, char *deploy, size_t dn, char *sa, size_t sn);

/* What the controller passes for the pod: where the mesh is and what it minted. All borrowed. */
struct wp_pod_params {
    const char *pod_name, *pod_uid, *node;
    const char *bin_dir; /* <bin_dir>/waypoint is the container's command */
    const char *xds;     /* https://<zmeshd>:15012, for XDS_ADDRESS and CA_ADDRESS */
    const char *root_ca; /* zmeshd's root-cert.pem */
    const char *token;   /* the service-account token file */
    const char *workdir; /* the container's workingDir */
};
/* The managed objects for a checked waypoint Gateway (new references), labelled gateway.istio.io/managed and
 * gateway.networking.k8s.io/gateway-name, owned by the Gateway (ownerReferences). */
json_t *wp_service_account(const json_t *gw);
json_t *wp_service(const json_t *gw);
json_t *wp_pod(const json_t *gw, const struct wp_pod_params *p);
/* Is o one of the objects the controller made for the Gateway ns/gw? */
bool wp_managed_by(const json_t *o, const char *ns, const char *gw);
/* The pod name a Deployment's pod would have: <deploy>-<10>-<5> from the alphabet Kubernetes uses for
 * generated names, from rnd (at least 15 random bytes). */
void wp_pod_name(const char *deploy, const unsigned char *rnd, char *buf, size_t n);

/* The Gateway's status as istiod writes it for a waypoint whose pods are ready or not (new reference):
 * addresses [{Hostname <svc>.<ns>.svc.cluster.local}] only when ready; conditions Accepted and Programmed
 * with Istio's reasons and messages. A condition whose status is unchanged from gw's current status keeps
 * its lastTransitionTime, so the same input gives an equal object (no rewrite). now is RFC 3339. */
json_t *wp_gateway_status(const json_t *gw, bool ready, const char *now);

/* istioctl's tables from Gateways (any order; sorted here by namespace, then name; other classes left out).
 * list: NAME REVISION TRAFFIC TYPE PROGRAMMED (NAMESPACE first with all_ns), "No waypoints found." when gws
 * is empty. status: one row per condition, NAME STATUS TYPE REASON MESSAGE (NAMESPACE first with with_ns).
 * Return 0, -ENOMEM or -EIO. */
int wp_list_render(FILE *out, const json_t *gws, bool all_ns);
int wp_status_render(FILE *out, const json_t *gws, bool with_ns);
/* Programmed=True in its status? */
bool wp_programmed(const json_t *gw);
