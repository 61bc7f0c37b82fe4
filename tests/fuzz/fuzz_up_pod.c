/* libFuzzer target for zmesh up's Pod spec reader (src/cli/cluster.c, cluster_pod_spec_parse) behind zmeshd's
 * document reader as JSON (manifest_load_json). tests/fuzz/corpus/fuzz_up_pod/ seeds it with Pods using every
 * field it reads. Besides memory safety it checks the contract: a document is read or refused with at least
 * one error finding, never silently; every finding names the file; a Pod read has 1..16 containers, each with
 * a non-empty NULL-terminated argv, and a probe with its port or command. */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cluster.h"

struct counts {
    int errors;
};

static void on_report(void *ud, bool warn, const char *msg)
{
    struct counts *c = ud;
    if (strncmp(msg, "fuzz.yaml#", 10)) abort();
    if (!warn) c->errors++;
}

static void on_finding(void *ud, const struct manifest_finding *f)
{
    (void)ud;
    if (strcmp(f->src.file, "fuzz.yaml")) abort();
}

static int on_doc(void *ud, json_t *doc, const struct manifest_src *src)
{
    struct cluster_warned *w = ud;
    if (strcmp(cluster_obj_kind(doc), "Pod")) return 0;
    struct counts c = {0};
    struct pod_spec ps;
    int rc = cluster_pod_spec_parse(doc, src, &ps, w, on_report, &c);
    if (rc == -EINVAL && c.errors == 0) abort(); /* refused without saying why */
    if (rc == 0) {
        if (c.errors || ps.n < 1 || ps.n > CLUSTER_MAX_CONTAINERS) abort();
        for (size_t i = 0; i < ps.n; i++) {
            const struct container_spec *cs = &ps.c[i];
            if (!cs->name || !cs->argv || !cs->argv[0]) abort();
            const struct probe_spec *p = &cs->readiness;
            if ((p->kind == PROBE_TCP || p->kind == PROBE_HTTP) && !p->port) abort();
            if (p->kind == PROBE_EXEC && (!p->command || !p->command[0])) abort();
            if (p->kind != PROBE_NONE && (p->period_s < 1 || p->timeout_s < 1)) abort();
        }
    }
    cluster_pod_spec_free(&ps);
    return rc == -ENOMEM ? rc : 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct cluster_warned w = {0};
    int rc = manifest_load_json("fuzz.yaml", (const char *)data, size, on_finding, NULL, on_doc, &w);
    if (rc && rc != -ENOMEM) abort();
    return 0;
}
