/* libFuzzer target for the node agent's PodEnrolment store (src/xds/enrol_store.c): the input is a serialized
 * DeltaDiscoveryResponse applied with enrol_store_apply_bytes, which decodes each resource's
 * zmesh.v1.PodEnrolment through pb_any_unpack. Seeds: tests/fuzz/corpus/fuzz_enrol_store/
 * (tests/fuzz/README.md). Besides memory safety it checks the store's contract:
 *   - the result is 0, or -EBADMSG / -ELOOP with a "decode: " NACK and nothing retained, or -ENOMEM;
 *   - a NACK is never empty;
 *   - every retained pod is named "<namespace>/<name>" and has a version; enrol_store_pods(NULL) lists them
 *     all, sorted by namespace then name, and a node filter lists exactly those of that node;
 *   - applying the same response again changes nothing and gives the same NACK text;
 *   - removing every retained name empties the store, without a NACK. */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xds/enrol_store.h"
#include "xds/pb.h"

static void check(struct enrol_store *st)
{
    const struct enrol_pod *p;
    size_t n, on_node = 0;
    if (enrol_store_pods(st, NULL, &p, &n) != 0) return; /* ENOMEM */
    if (n != enrol_store_count(st)) abort();
    const char *node = n ? p[0].node : NULL;
    char name[8192];
    for (size_t i = 0; i < n; i++) {
        snprintf(name, sizeof(name), "%s/%s", p[i].namespace_, p[i].name);
        if (!*p[i].namespace_ || !*p[i].name || !enrol_store_version(st, name)) abort();
        if (i && (strcmp(p[i - 1].namespace_, p[i].namespace_) > 0 ||
                  (!strcmp(p[i - 1].namespace_, p[i].namespace_) && strcmp(p[i - 1].name, p[i].name) >= 0)))
            abort();
        on_node += node && !strcmp(p[i].node, node);
    }
    if (node && *node) {
        char *copy = strdup(node);
        if (!copy) return;
        if (enrol_store_pods(st, copy, &p, &n) == 0) {
            if (n != on_node) abort();
            for (size_t i = 0; i < n; i++)
                if (strcmp(p[i].node, copy)) abort();
        }
        free(copy);
    }
}

static void remove_all(struct enrol_store *st)
{
    const struct enrol_pod *p;
    size_t n;
    if (!enrol_store_count(st) || enrol_store_pods(st, NULL, &p, &n) != 0) return;
    char **names = calloc(n, sizeof(*names));
    if (!names) return;
    for (size_t i = 0; i < n; i++)
        if (asprintf(&names[i], "%s/%s", p[i].namespace_, p[i].name) < 0) abort();
    Envoy__Service__Discovery__V3__DeltaDiscoveryResponse r =
        ENVOY__SERVICE__DISCOVERY__V3__DELTA_DISCOVERY_RESPONSE__INIT;
    r.type_url = PB_TYPE_URL_POD_ENROLMENT;
    r.removed_resources = names;
    r.n_removed_resources = n;
    char *nack = NULL;
    if (enrol_store_apply(st, &r, &nack) == 0) {
        if (nack) abort(); /* removals never fail */
        if (enrol_store_count(st)) abort();
    }
    free(nack);
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct enrol_store *st = NULL;
    char *nack1 = NULL, *nack2 = NULL;
    if (enrol_store_new(&st) != 0) return 0;
    int rc = enrol_store_apply_bytes(st, data, size, &nack1);
    if (rc == -EBADMSG || rc == -ELOOP) {
        if (!nack1 || strncmp(nack1, "decode: ", 8) || enrol_store_count(st)) abort();
        goto out;
    }
    if (rc == -ENOMEM) goto out;
    if (rc != 0) abort();
    if (nack1 && !*nack1) abort();
    check(st);
    size_t n = enrol_store_count(st);
    rc = enrol_store_apply_bytes(st, data, size, &nack2);
    if (rc == -ENOMEM) goto out;
    if (rc != 0) abort();
    if (!nack1 != !nack2 || (nack1 && strcmp(nack1, nack2))) abort();
    if (enrol_store_count(st) != n) abort();
    check(st);
    remove_all(st);
out:
    free(nack1);
    free(nack2);
    enrol_store_free(st);
    return 0;
}
