/* PodEnrolment resources from the manifest store (see enrolment.h). */
#include "zmeshd/enrolment.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "zmesh/enrolment.pb-c.h"

static int ns_cmp(const void *a, const void *b)
{
    return strcmp((*(const struct k8s_namespace *const *)a)->meta.name,
                  (*(const struct k8s_namespace *const *)b)->meta.name);
}

static int ns_key_cmp(const void *key, const void *elem)
{
    return strcmp(key, (*(const struct k8s_namespace *const *)elem)->meta.name);
}

void zmeshd_enrolments_free(struct zmeshd_enrolment *v, size_t n)
{
    for (size_t i = 0; v && i < n; i++) {
        free(v[i].name);
        free(v[i].bytes);
    }
    free(v);
}

int zmeshd_enrolments(const struct manifest_store *st, const struct k8s_options *opts,
                      struct zmeshd_enrolment **out, size_t *n)
{
    size_t n_pods, n_ns, k = 0;
    const struct k8s_pod *pods = manifest_pods(st, &n_pods);
    const struct k8s_namespace *nss = manifest_namespaces(st, &n_ns);
    const char *root = opts && opts->root_namespace && *opts->root_namespace ? opts->root_namespace
                                                                             : K8S_DEFAULT_ROOT_NAMESPACE;
    /* Namespaces by name (the store keeps one per name), so n pods cost O(n log m), not O(n m). */
    const struct k8s_namespace **ix = malloc((n_ns ? n_ns : 1) * sizeof(*ix));
    struct zmeshd_enrolment *v = calloc(n_pods ? n_pods : 1, sizeof(*v));
    *out = NULL;
    *n = 0;
    if (!ix || !v) goto nomem;
    for (size_t i = 0; i < n_ns; i++)
        ix[i] = &nss[i];
    qsort(ix, n_ns, sizeof(*ix), ns_cmp);
    for (size_t i = 0; i < n_pods; i++) {
        const struct k8s_pod *p = &pods[i];
        if (!strcmp(p->phase, "Succeeded") || !strcmp(p->phase, "Failed")) continue;
        const struct k8s_namespace **found = bsearch(p->meta.namespace_, ix, n_ns, sizeof(*ix), ns_key_cmp);
        enum k8s_enrolment e = k8s_pod_enrolment(p, found ? *found : NULL, root);
        Zmesh__V1__PodEnrolment m = ZMESH__V1__POD_ENROLMENT__INIT;
        m.uid = (char *)p->meta.uid;
        m.name = (char *)p->meta.name;
        m.namespace_ = (char *)p->meta.namespace_;
        m.service_account =
            (char *)(*p->service_account ? p->service_account : ZMESHD_DEFAULT_SERVICE_ACCOUNT);
        m.node_name = (char *)p->node_name;
        m.ambient = k8s_enrolment_ambient(e);
        m.reason = (char *)k8s_enrolment_to_str(e);
        v[k].len = zmesh__v1__pod_enrolment__get_packed_size(&m);
        if (!(v[k].bytes = malloc(v[k].len ? v[k].len : 1))) goto nomem;
        zmesh__v1__pod_enrolment__pack(&m, v[k].bytes);
        if (asprintf(&v[k].name, "%s/%s", p->meta.namespace_, p->meta.name) < 0) {
            v[k].name = NULL;
            free(v[k].bytes);
            v[k].bytes = NULL;
            goto nomem;
        }
        k++;
    }
    free(ix);
    *out = v;
    *n = k;
    return 0;
nomem:
    free(ix);
    zmeshd_enrolments_free(v, k);
    return -ENOMEM;
}
