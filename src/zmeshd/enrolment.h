/* The PodEnrolment resources zmeshd serves to node agents (proto/zmesh/enrolment.proto): one per pod of the
 * manifest store that has not terminated (status.phase Succeeded or Failed; Istio's agent removes those from
 * the mesh, istio/istio cni/pkg/nodeagent/informers.go), including pods without an IP address yet, since the
 * agent enrols a pod at its sandbox's CNI ADD, before the IP is published. Whether it is ambient is
 * k8s_pod_enrolment (k8s.h). Named "<namespace>/<name>", in the store's load order.
 *
 *     struct zmeshd_enrolment *v;  size_t n;
 *     zmeshd_enrolments(store, &opts, &v, &n);       serialized PodEnrolment messages
 *     ... ads_table_replace(...) ...
 *     zmeshd_enrolments_free(v, n);
 */
#pragma once
#include <stddef.h>
#include <stdint.h>

#include "zmeshd/k8s.h"
#include "zmeshd/manifest.h"

/* The service account a pod without one runs as (the API server's default). */
#define ZMESHD_DEFAULT_SERVICE_ACCOUNT "default"

struct zmeshd_enrolment {
    char *name;     /* "<namespace>/<name>" */
    uint8_t *bytes; /* a serialized zmesh.v1.PodEnrolment */
    size_t len;
};

/* Computes and serializes the enrolment of every pod of st (opts: the root namespace, where ztunnel pods are
 * recognized; NULL fields take k8s.h's defaults). On success *out is a malloc'd array of *n entries, freed
 * with zmeshd_enrolments_free. Returns 0 or -ENOMEM (*out NULL). */
int zmeshd_enrolments(const struct manifest_store *st, const struct k8s_options *opts,
                      struct zmeshd_enrolment **out, size_t *n);
void zmeshd_enrolments_free(struct zmeshd_enrolment *v, size_t n);
