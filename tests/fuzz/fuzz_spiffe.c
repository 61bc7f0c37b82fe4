/* libFuzzer target for spiffe_parse. Built and run by `make fuzz` (seeds: tests/fuzz/corpus/fuzz_spiffe/; see
 * tests/fuzz/README.md). Besides memory safety it checks the parser's contract: an accepted id formats back
 * to exactly the input. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tls/spiffe.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct spiffe_id id;
    char buf[SPIFFE_MAX];

    /* Parse straight from the fuzzer's buffer: the input is not NUL-terminated, which ASan then checks. */
    if (spiffe_parse((const char *)data, size, &id) != 0) return 0;
    int len = spiffe_format(&id, buf, sizeof(buf));
    if (len < 0 || (size_t)len != size || memcmp(buf, data, size) != 0) abort();
    struct spiffe_id again;
    if (spiffe_parse(buf, (size_t)len, &again) != 0 || memcmp(&id, &again, sizeof(id)) != 0) abort();
    return 0;
}
