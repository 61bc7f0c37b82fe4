/* libFuzzer target for zmeshd's manifest reader (manifest_load_buf) and the conversion behind it
 * (k8s_build_snapshot). tests/fuzz/corpus/fuzz_manifest/ seeds it with small manifests using every kind.
 * Besides memory safety it checks the reader's contract: loading never fails on bad input (only -ENOMEM),
 * every finding names the file and a document index within the input, and the conversion always yields a
 * snapshot whose indexes find every workload it lists. */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "zmeshd/k8s.h"
#include "zmeshd/manifest.h"

static void check_finding(void *ud, const struct manifest_finding *f)
{
    (void)ud;
    if (strcmp(f->src.file, "fuzz.yaml") && f->src.doc != 0) abort();
    if (!f->message || !f->field) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct manifest_store *st = NULL;
    struct snapshot *s = NULL;
    if (manifest_store_new(&st)) return 0;
    /* Straight from the fuzzer's buffer: it is not NUL-terminated, which ASan then checks. */
    int rc = manifest_load_buf(st, "fuzz.yaml", (const char *)data, size, check_finding, NULL);
    if (rc && rc != -ENOMEM) abort();
    if (!rc) {
        rc = k8s_build_snapshot(st, NULL, &s, check_finding, NULL);
        if (rc && rc != -ENOMEM) abort();
    }
    if (s) {
        for (size_t i = 0; i < snapshot_n_workloads(s); i++) {
            const struct workload *w = snapshot_workload_at(s, i);
            if (snapshot_workload_by_uid(s, w->uid) != w) abort();
        }
        snapshot_unref(s);
    }
    manifest_store_free(st);
    return 0;
}
