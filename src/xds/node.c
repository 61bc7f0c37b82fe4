/* The xDS Node of a ztunnel or a node agent (see node.h). */
#include "xds/node.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xds/pbstruct.h"

/* "PREFIX<KEY>=value" -> key (malloc'd) and a pointer to the value; NULL when e does not have the prefix or
 * has an empty key. */
static char *prefixed_key(const char *e, const char *prefix, const char **value)
{
    size_t pl = strlen(prefix);
    if (strncmp(e, prefix, pl) != 0) return NULL;
    const char *eq = strchr(e + pl, '=');
    if (!eq || eq == e + pl) return NULL;
    *value = eq + 1;
    return strndup(e + pl, (size_t)(eq - e - pl));
}

int xds_node_new(const struct xds_node_info *info, char *const *envp, Envoy__Config__Core__V3__Node **out,
                 char *err, size_t errlen)
{
    return xds_node_new_kind(XDS_NODE_KIND_ZTUNNEL, info, envp, out, err, errlen);
}

int xds_node_new_kind(const char *kind, const struct xds_node_info *info, char *const *envp,
                      Envoy__Config__Core__V3__Node **out, char *err, size_t errlen)
{
    const char *ip = info->instance_ip && *info->instance_ip ? info->instance_ip : XDS_NODE_DEFAULT_IP;
    const char *pod = info->pod_name ? info->pod_name : "", *ns = info->pod_ns ? info->pod_ns : "";
    const char *node_name = info->node_name ? info->node_name : "";
    int rc = -ENOMEM;

    *out = NULL;
    Envoy__Config__Core__V3__Node *n = malloc(sizeof(*n));
    if (!n) goto nomem;
    envoy__config__core__v3__node__init(n);
    if (asprintf(&n->id, "%s~%s~%s.%s~%s.svc.cluster.local", kind, ip, pod, ns, ns) < 0) {
        n->id = NULL; /* asprintf leaves it undefined; free_unpacked must not see it */
        goto nomem;
    }
    if (!(n->metadata = pb_struct_new())) goto nomem;
    if (pb_struct_set_string(n->metadata, "NAME", pod) < 0 ||
        pb_struct_set_string(n->metadata, "NAMESPACE", ns) < 0 ||
        pb_struct_set_string(n->metadata, "INSTANCE_IPS", ip) < 0 ||
        pb_struct_set_string(n->metadata, "NODE_NAME", node_name) < 0)
        goto nomem;
    /* Two passes, as Istio: the ISTIO_META_ map is merged before the JSON values, which win. */
    for (int pass = 0; pass < 2; pass++) {
        const char *prefix = pass == 0 ? XDS_META_PREFIX : XDS_METAJSON_PREFIX;
        for (char *const *e = envp; e && *e; e++) {
            const char *value;
            char *key = prefixed_key(*e, prefix, &value);
            if (!key) continue;
            if (pass == 0) {
                rc = pb_struct_set_string(n->metadata, key, value);
            } else {
                json_error_t je;
                json_t *j = json_loads(value, JSON_DECODE_ANY, &je);
                if (!j) {
                    snprintf(err, errlen, "%s%s: not JSON: %s", prefix, key, je.text);
                    free(key);
                    rc = -EINVAL;
                    goto fail;
                }
                rc = pb_struct_set_json(n->metadata, key, j);
                json_decref(j);
                if (rc == -ELOOP) {
                    snprintf(err, errlen, "%s%s: nested deeper than %d", prefix, key, PB_STRUCT_MAX_DEPTH);
                    free(key);
                    rc = -EINVAL;
                    goto fail;
                }
            }
            free(key);
            if (rc < 0) goto nomem;
        }
    }
    *out = n;
    return 0;

nomem:
    snprintf(err, errlen, "out of memory");
    rc = -ENOMEM;
fail:
    if (n) protobuf_c_message_free_unpacked(&n->base, NULL);
    return rc;
}
