/* libFuzzer target for the local config loader (config_load_buf). Built and run by `make fuzz` (see
 * tests/fuzz/README.md); tests/fuzz/corpus/fuzz_config/ seeds it with valid configs (examples/localhost.yaml
 * and one that uses most field kinds). Besides memory safety it checks the loader's contract:
 * success yields a snapshot whose indexes find every workload and service it lists; failure yields a
 * "<name>:<line>:<col>: " message and leaves *out untouched. */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mesh/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct snapshot *s = NULL;
    char err[512];

    /* Load straight from the fuzzer's buffer: it is not NUL-terminated, which ASan then checks. */
    int rc = config_load_buf((const char *)data, size, "fuzz.yaml", &s, err, sizeof(err));
    if (rc) {
        if (s != NULL) abort();
        if (rc == -EINVAL && strncmp(err, "fuzz.yaml:", 10) != 0) abort();
        return 0;
    }
    for (size_t i = 0; i < snapshot_n_workloads(s); i++) {
        const struct workload *w = snapshot_workload_at(s, i);
        if (snapshot_workload_by_uid(s, w->uid) != w) abort();
        if (!snapshot_workload_by_name(s, w->namespace_, w->name)) abort();
        for (size_t j = 0; j < w->n_ips && w->network_mode == WL_NET_STANDARD; j++)
            if (snapshot_workload_by_ip(s, w->network, &w->ips[j]) != w) abort();
        char id[4096];
        if (workload_spiffe_id(w, id, sizeof(id)) < 0) abort();
    }
    for (size_t i = 0; i < snapshot_n_services(s); i++) {
        const struct service *svc = snapshot_service_at(s, i);
        char key[2 * CONFIG_MAX_STR + 2];
        snprintf(key, sizeof(key), "%s/%s", svc->namespace_, svc->hostname);
        if (snapshot_service_by_host(s, key) != svc) abort();
        for (size_t j = 0; j < svc->n_vips; j++)
            if (!snapshot_service_by_vip(s, svc->vips[j].network, &svc->vips[j].ip)) abort();
        for (size_t j = 0; j < svc->n_ports; j++)
            (void)service_target_port(svc, NULL, svc->ports[j].port);
    }
    for (size_t i = 0; i < snapshot_n_policies(s); i++) {
        const struct policy *p = snapshot_policy_at(s, i);
        if (!p->name || !p->namespace_) abort();
    }
    snapshot_ref(s);
    snapshot_unref(s);
    snapshot_unref(s);
    return 0;
}
