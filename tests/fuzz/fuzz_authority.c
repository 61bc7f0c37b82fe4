/* libFuzzer target for authority_parse (the HBONE CONNECT ":authority", "ip:port" or "[ip6]:port").
 * Built and run by `make fuzz` (seeds: tests/fuzz/corpus/fuzz_authority/; see tests/fuzz/README.md).
 * Besides memory safety (the input is not NUL-terminated; ASan checks every read stays inside it) it checks
 * the parser's contract: an accepted authority is plain text (no NUL, space or control bytes), has the family
 * its brackets say, a port in 1..65535, and its canonical form parses back to the same address and port. It
 * found, within a second, that a NUL inside the host ("[::\0]:6", "1.2.3.4\0:80") was accepted because the
 * host was parsed as a C string; net.c now refuses it (tests/unit/test_net.c keeps those cases). */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/net.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct ip_addr ip, again;
    uint16_t port = 0, port2 = 0;
    const char *s = (const char *)data;

    if (authority_parse(s, size, &ip, &port) != 0) return 0;
    for (size_t i = 0; i < size; i++)
        if (data[i] <= 0x20 || data[i] >= 0x7f) abort(); /* accepted bytes outside printable ASCII */
    if (port == 0) abort();
    if (ip.family != (s[0] == '[' ? AF_INET6 : AF_INET)) abort();

    char host[IP_STRLEN], text[SOCKADDR_STRLEN + 8];
    ip_format(&ip, host, sizeof(host));
    int n = snprintf(text, sizeof(text), ip.family == AF_INET6 ? "[%s]:%u" : "%s:%u", host, port);
    if (n <= 0 || (size_t)n >= sizeof(text)) abort();
    if (authority_parse(text, (size_t)n, &again, &port2) != 0) abort();
    if (!ip_equal(&ip, &again) || port != port2) abort();
    return 0;
}
