/* libFuzzer target for `zmesh proxy-status`'s reading of zmeshd's /debug/syncz (src/cli/ps.c): the bytes as a
 * syncz body go through ps_parse (jansson) and, when accepted, through every format (table, wide with ages,
 * JSON), as a hostile or broken debug port could make zmesh read them. Checked: no crash, leak or UB
 * (ASan/UBSan); an accepted document renders without error, or -ENOENT when it lists no proxy. Not covered:
 * the HTTP client (tests/unit/test_cli.c runs it against canned servers).
 *
 * Build: `make fuzz-build`. Seeds: tests/fuzz/corpus/fuzz_ps/ (tests/unit/ps_syncz.json). */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "cli/ps.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static FILE *sink;
    json_t *syncz = NULL;
    char err[256];
    if (!sink && !(sink = fopen("/dev/null", "w"))) abort();
    if (ps_parse((const char *)data, size, &syncz, err, sizeof(err))) return 0;
    for (int f = PS_SHORT; f <= PS_JSON; f++) {
        int rc = ps_render(sink, syncz, (enum ps_format)f, 1800000000000LL);
        if (rc != 0 && !(rc == -ENOENT && json_array_size(syncz) == 0)) abort();
    }
    json_decref(syncz);
    return 0;
}
