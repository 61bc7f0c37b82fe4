/* libFuzzer target for the client-side delta xDS resource store (src/xds/store.c): the input is a serialized
 * DeltaDiscoveryResponse applied with xds_store_apply_bytes, which decodes each resource through
 * src/xds/resource.c and validates it with the snapshot builder. Seeds: tests/fuzz/corpus/fuzz_xds_store/
 * (see tests/fuzz/README.md). Besides memory safety it checks the store's contract:
 *   - the result is 0, or -EBADMSG / -ELOOP with a "decode: " NACK, or -ENOMEM;
 *   - a NACK is never empty;
 *   - every retained resource is in the snapshot (workloads + services = Address resources, policies =
 *     Authorization resources), its name is its key, and the snapshot's lookups find it by that key;
 *   - applying the same response again changes nothing and gives the same NACK text (acceptance depends on
 *     the resource alone);
 *   - removing every retained name empties the store. */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mesh/model.h"
#include "xds/pb.h"
#include "xds/store.h"

static void silent(void *ud, const char *type_url, const char *name, const char *msg)
{
    (void)ud;
    (void)type_url;
    (void)name;
    (void)msg;
}

struct names {
    char **v;
    size_t n;
};

static int collect(void *ud, const char *name, const char *version)
{
    (void)version;
    struct names *ns = ud;
    ns->v[ns->n++] = (char *)name;
    return 0;
}

/* Every retained resource is in snap under its key. */
static void check_snapshot(const struct xds_store *st, const struct snapshot *snap)
{
    size_t n_addr = xds_store_count(st, PB_TYPE_URL_ADDRESS),
           n_pol = xds_store_count(st, PB_TYPE_URL_AUTHORIZATION);
    if (snapshot_n_workloads(snap) + snapshot_n_services(snap) != n_addr) abort();
    if (snapshot_n_policies(snap) != n_pol) abort();
    for (size_t i = 0; i < snapshot_n_workloads(snap); i++) {
        const struct workload *w = snapshot_workload_at(snap, i);
        const struct xds_resource *r = xds_store_get(st, PB_TYPE_URL_ADDRESS, w->uid);
        if (!r || r->kind != BUILDER_WORKLOAD || strcmp(r->key, w->uid)) abort();
        if (snapshot_workload_by_uid(snap, w->uid) != w) abort();
    }
    char key[2 * 1024 + 2];
    for (size_t i = 0; i < snapshot_n_services(snap); i++) {
        const struct service *s = snapshot_service_at(snap, i);
        if (xds_service_name(s, key, sizeof(key)) < 0) abort();
        const struct xds_resource *r = xds_store_get(st, PB_TYPE_URL_ADDRESS, key);
        if (!r || r->kind != BUILDER_SERVICE || strcmp(r->key, key)) abort();
        if (snapshot_service_by_host(snap, key) != s) abort();
    }
    for (size_t i = 0; i < snapshot_n_policies(snap); i++) {
        const struct policy *p = snapshot_policy_at(snap, i);
        if (xds_policy_name(p, key, sizeof(key)) < 0) abort();
        const struct xds_resource *r = xds_store_get(st, PB_TYPE_URL_AUTHORIZATION, key);
        if (!r || r->kind != BUILDER_POLICY || strcmp(r->key, key)) abort();
        if (snapshot_policy_by_name(snap, key) != p) abort();
    }
}

/* Removes every retained name of type_url with one response; the type must end empty. */
static void remove_all(struct xds_store *st, const char *type_url)
{
    size_t n = xds_store_count(st, type_url);
    if (!n) return;
    struct names ns = {calloc(n, sizeof(char *)), 0};
    if (!ns.v) abort();
    xds_store_foreach(st, type_url, collect, &ns);
    if (ns.n != n) abort();
    /* The names are the store's own strings: copy them, since removing frees them. */
    for (size_t i = 0; i < n; i++)
        if (!(ns.v[i] = strdup(ns.v[i]))) abort();
    Envoy__Service__Discovery__V3__DeltaDiscoveryResponse r =
        ENVOY__SERVICE__DISCOVERY__V3__DELTA_DISCOVERY_RESPONSE__INIT;
    r.type_url = (char *)type_url;
    r.removed_resources = ns.v;
    r.n_removed_resources = n;
    char *nack = NULL;
    struct snapshot *snap = NULL;
    if (xds_store_apply(st, &r, &snap, &nack) == 0) {
        if (nack) abort(); /* removals never fail */
        if (xds_store_count(st, type_url)) abort();
        check_snapshot(st, snap);
        snapshot_unref(snap);
    }
    for (size_t i = 0; i < n; i++)
        free(ns.v[i]);
    free(ns.v);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct xds_store *st = NULL;
    if (xds_store_new(&st, &(struct xds_store_opts){.warn = silent}) != 0) return 0;
    struct snapshot *snap = NULL;
    char *nack1 = NULL, *nack2 = NULL;
    int rc = xds_store_apply_bytes(st, data, size, &snap, &nack1);
    if (rc == -EBADMSG || rc == -ELOOP) {
        if (!nack1 || strncmp(nack1, "decode: ", 8)) abort();
        if (snap || xds_store_count(st, PB_TYPE_URL_ADDRESS) ||
            xds_store_count(st, PB_TYPE_URL_AUTHORIZATION))
            abort();
        goto out;
    }
    if (rc == -ENOMEM) goto out;
    if (rc != 0 || !snap) abort();
    if (nack1 && !*nack1) abort();
    check_snapshot(st, snap);
    size_t n_addr = xds_store_count(st, PB_TYPE_URL_ADDRESS),
           n_pol = xds_store_count(st, PB_TYPE_URL_AUTHORIZATION);
    snapshot_unref(snap);
    snap = NULL;

    rc = xds_store_apply_bytes(st, data, size, &snap, &nack2);
    if (rc == -ENOMEM) goto out;
    if (rc != 0) abort();
    if (!nack1 != !nack2 || (nack1 && strcmp(nack1, nack2))) abort();
    if (xds_store_count(st, PB_TYPE_URL_ADDRESS) != n_addr ||
        xds_store_count(st, PB_TYPE_URL_AUTHORIZATION) != n_pol)
        abort();
    check_snapshot(st, snap);
    snapshot_unref(snap);
    snap = NULL;

    remove_all(st, PB_TYPE_URL_ADDRESS);
    remove_all(st, PB_TYPE_URL_AUTHORIZATION);
out:
    snapshot_unref(snap);
    free(nack1);
    free(nack2);
    xds_store_free(st);
    return 0;
}
