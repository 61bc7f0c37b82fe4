/* libFuzzer target for `zmesh ztunnel-config`'s reading of a config dump (src/cli/zc.c): the bytes as a
 * /config_dump body go through zc_parse (jansson) and, when they are a JSON object, through every view in
 * both formats (tables and -o json), with filters set, as a hostile or broken ztunnel could make zmesh read
 * them. Checked: no crash, leak or UB (ASan/UBSan); a dump zc_parse accepts renders without error. Not
 * covered: the HTTP client (tests/unit/test_cli.c runs it against canned servers).
 *
 * Build: `make fuzz-build` (libzmesh, the ztunnel objects except main.o and the cli objects except main.o).
 * Seeds: tests/fuzz/corpus/fuzz_zc/ (tests/unit/zc_dump.json and sections in map form). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "cli/zc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static FILE *sink;
    static const struct zc_filter filters[] = {
        {0},
        {.workload_namespace = "a",
         .workload_node = "node1",
         .service_namespace = "a",
         .policy_namespace = "b",
         .with_headers = true},
    };
    json_t *dump = NULL;
    char err[256];
    if (!sink && !(sink = fopen("/dev/null", "w"))) abort();
    if (zc_parse((const char *)data, size, &dump, err, sizeof(err))) return 0;
    for (int k = ZC_WORKLOADS; k <= ZC_ALL; k++)
        for (int f = ZC_SHORT; f <= ZC_JSON; f++)
            for (size_t i = 0; i < sizeof(filters) / sizeof(filters[0]); i++)
                if (zc_render(sink, dump, (const char *)data, size, (enum zc_kind)k, (enum zc_format)f,
                              &filters[i], 1800000000) != 0)
                    abort();
    json_decref(dump);
    return 0;
}
