/* libFuzzer target for the admin, metrics and readiness HTTP request path (src/ztunnel/admin.c), through
 * admin_feed: the bytes of one client connection go through llhttp, the size limits (414/431/413), the router
 * and every handler (/config_dump with an empty config, /logging, /quitquitquit without a quit hook,
 * /metrics, /healthz/ready), in reads of a fuzzer-chosen size, exactly as adm_conn_process runs them over a
 * socket. Checked: every response starts with "HTTP/1.1 " and has a complete head; no crash, leak or UB
 * (ASan/UBSan). Not covered: the socket I/O, deadlines and per-port limits (tests/unit/test_admin.c).
 *
 * Input: byte 0 picks the server (mod 3: admin, metrics, readiness), byte 1 the read size (1..256, 0 = the
 * full 16 KiB buffer); the rest is what the client sends.
 *
 * Build from the repository root (`make fuzz` builds every tests/fuzz/fuzz_*.c the same way, with libzmesh
 * and the ztunnel objects except main.o), e.g.:
 *   clang -g -O1 -std=gnu11 -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined -Isrc \
 *         -I/usr/share/include/llhttp tests/fuzz/fuzz_admin.c src/ztunnel/admin.c src/ztunnel/configdump.c \
 *         src/ztunnel/metrics.c src/ztunnel/proxy.c src/ztunnel/inbound.c src/ztunnel/outbound.c \
 *         src/ztunnel/pool.c src/core/[a-z]*.c src/tls/[a-z]*.c src/h2/[a-z]*.c src/mesh/[a-z]*.c
 * /usr/share/llhttp/[a-z]*.c \ -lssl -lcrypto -lnghttp2 -lyaml -lpthread -o build/fuzz_admin
 *   ./build/fuzz_admin -max_len=20000 -max_total_time=30 [corpus dir]
 * Seeds: plain requests such as "\x02\x00GET /healthz/ready HTTP/1.1\r\n\r\n". */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "ztunnel/admin.h"

static void check_response(void *ud, const char *resp, size_t n)
{
    (void)ud;
    if (n < 9 || memcmp(resp, "HTTP/1.1 ", 9) != 0) abort();
    if (!memmem(resp, n, "\r\n\r\n", 4)) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int init;
    if (!init) {
        log_set_level("error"); /* keep handler log lines out of the fuzzer's output */
        init = 1;
    }
    if (size < 2) return 0;
    enum admin_server which = (enum admin_server)(data[0] % 3);
    size_t chunk = data[1];
    admin_feed(which, data + 2, size - 2, chunk, check_response, NULL);
    /* POST /logging may have changed the level; the next input starts from the same one. */
    log_set_level("error");
    return 0;
}
