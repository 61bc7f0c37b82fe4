/* The xDS Node a ztunnel presents to its control plane, as Istio's ztunnel builds it (istio/ztunnel
 * src/xds/client.rs `node()`, src/config.rs `construct_proxy_config`): istiod keys on the id's "ztunnel"
 * prefix and reads the metadata to find the proxy's pod and cluster. */
#pragma once
#include <stddef.h>

#include "envoy/config/core/v3/base.pb-c.h"

/* Istio's fallback for an unset INSTANCE_IP (client.rs DEFAULT_IP). */
#define XDS_NODE_DEFAULT_IP "1.1.1.1"
/* The id's first part: istiod's proxy type (istio/istio pilot/pkg/model/context.go NodeType). "ztunnel" is
 * Istio's; Istio's CNI agent speaks no xDS, so zmesh's node agent takes its DaemonSet's name. */
#define XDS_NODE_KIND_ZTUNNEL "ztunnel"
#define XDS_NODE_KIND_CNI "istio-cni"
#define XDS_META_PREFIX "ISTIO_META_"
#define XDS_METAJSON_PREFIX "ISTIO_METAJSON_"

/* The downward-API values (NULL = unset: the IP falls back to XDS_NODE_DEFAULT_IP, the others to ""). */
struct xds_node_info {
    const char *instance_ip; /* INSTANCE_IP */
    const char *pod_name;    /* POD_NAME */
    const char *pod_ns;      /* POD_NAMESPACE */
    const char *node_name;   /* NODE_NAME */
};

/* Builds the Node: id "ztunnel~<ip>~<pod>.<ns>~<ns>.svc.cluster.local"; metadata NAME, NAMESPACE,
 * INSTANCE_IPS, NODE_NAME, then every ISTIO_META_<K>=v of envp as K (a later entry replaces an earlier one of
 * the same key, as Istio's map does), then every ISTIO_METAJSON_<K>=json parsed as JSON. Istio logs and skips
 * an ISTIO_METAJSON_ value that is not JSON; zmesh refuses it (-EINVAL, err names the variable and jansson's
 * reason), since the control plane would otherwise see other metadata than the operator wrote. envp may be
 * NULL. On success *out is a new message freed with protobuf_c_message_free_unpacked(&(*out)->base, NULL).
 * Returns 0, -EINVAL or -ENOMEM. */
int xds_node_new(const struct xds_node_info *info, char *const *envp, Envoy__Config__Core__V3__Node **out,
                 char *err, size_t errlen);
/* The same with another proxy type as the id's first part: "<kind>~<ip>~<pod>.<ns>~<ns>.svc.cluster.local".
 */
int xds_node_new_kind(const char *kind, const struct xds_node_info *info, char *const *envp,
                      Envoy__Config__Core__V3__Node **out, char *err, size_t errlen);
