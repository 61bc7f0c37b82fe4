/* RequestMirror's shadow host (mirror.h). */
#include <errno.h>
#include <string.h>

#include "waypoint/mirror.h"

#define SHADOW_SUFFIX "-shadow"

ssize_t wp_shadow_host(const char *host, size_t len, char *out, size_t n)
{
    const size_t sl = sizeof(SHADOW_SUFFIX) - 1;
    if (n) *out = '\0';
    if (!len) return -EINVAL;
    if (len + sl + 1 > n) return -ENOSPC;
    /* The port starts at the last ':' unless a ']' (the end of an IPv6 literal) follows it. */
    size_t port = len;
    for (size_t i = len; i-- > 0;) {
        if (host[i] == ']') break;
        if (host[i] == ':') {
            port = i;
            break;
        }
    }
    memcpy(out, host, port);
    memcpy(out + port, SHADOW_SUFFIX, sl);
    memcpy(out + port + sl, host + port, len - port);
    out[len + sl] = '\0';
    return (ssize_t)(len + sl);
}
