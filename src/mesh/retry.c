/* Retry decisions (retry.h). */
#include "mesh/retry.h"

#include <stddef.h>

/* gRPC status codes (grpc/grpc doc/statuscodes.md). */
enum {
    GRPC_CANCELLED = 1,
    GRPC_DEADLINE_EXCEEDED = 4,
    GRPC_RESOURCE_EXHAUSTED = 8,
    GRPC_INTERNAL = 13,
    GRPC_UNAVAILABLE = 14
};

static bool from_response(const struct l7_retry *p, int status, int grpc)
{
    if ((p->on & L7_RETRY_5XX) && status >= 500 && status <= 599) return true;
    if ((p->on & L7_RETRY_GATEWAY_ERROR) && status >= 502 && status <= 504) return true;
    if ((p->on & L7_RETRY_RETRIABLE_4XX) && status == 409) return true;
    if (p->on & L7_RETRY_RETRIABLE_STATUS_CODES)
        for (size_t i = 0; i < p->n_codes; i++)
            if (p->codes[i] == status) return true;
    switch (grpc) {
    case GRPC_CANCELLED:
        return p->on & L7_RETRY_GRPC_CANCELLED;
    case GRPC_DEADLINE_EXCEEDED:
        return p->on & L7_RETRY_GRPC_DEADLINE_EXCEEDED;
    case GRPC_RESOURCE_EXHAUSTED:
        return p->on & L7_RETRY_GRPC_RESOURCE_EXHAUSTED;
    case GRPC_INTERNAL:
        return p->on & L7_RETRY_GRPC_INTERNAL;
    case GRPC_UNAVAILABLE:
        return p->on & L7_RETRY_GRPC_UNAVAILABLE;
    default:
        return false;
    }
}

bool l7_retry_wanted(const struct l7_retry *p, const struct l7_try *t)
{
    if (!p) p = &l7_default_retry;
    if (!p->attempts) return false;
    switch (t->end) {
    case L7_TRY_RESPONSE:
        return from_response(p, t->status, t->grpc_status);
    case L7_TRY_PER_TRY_TIMEOUT:
        /* Envoy's router judges a per-try timeout as the 504 it would answer. */
        return from_response(p, 504, -1);
    case L7_TRY_OVERFLOW:
        return false;
    case L7_TRY_CONNECT_FAILURE:
        /* a connect failure is also a reset for reset and 5xx/gateway-error */
        return p->on & (L7_RETRY_CONNECT_FAILURE | L7_RETRY_RESET | L7_RETRY_5XX | L7_RETRY_GATEWAY_ERROR);
    case L7_TRY_RESET:
        return p->on & (L7_RETRY_RESET | L7_RETRY_5XX | L7_RETRY_GATEWAY_ERROR);
    case L7_TRY_REFUSED_STREAM:
        return p->on & (L7_RETRY_RESET | L7_RETRY_5XX | L7_RETRY_GATEWAY_ERROR | L7_RETRY_REFUSED_STREAM);
    }
    return false;
}

int l7_grpc_to_http_status(int grpc_status)
{
    /* OK, CANCELLED, UNKNOWN, INVALID_ARGUMENT, DEADLINE_EXCEEDED, NOT_FOUND, ALREADY_EXISTS,
     * PERMISSION_DENIED, RESOURCE_EXHAUSTED, FAILED_PRECONDITION, ABORTED, OUT_OF_RANGE, UNIMPLEMENTED,
     * INTERNAL, UNAVAILABLE, DATA_LOSS, UNAUTHENTICATED */
    static const int map[] = {200, 499, 500, 400, 504, 404, 409, 403, 429,
                              400, 409, 400, 501, 500, 503, 500, 401};
    if (grpc_status < 0 || (size_t)grpc_status >= sizeof(map) / sizeof(map[0])) return 500;
    return map[grpc_status];
}

uint64_t l7_retry_backoff_ms(unsigned n, uint64_t rnd)
{
    return l7_retry_policy_backoff_ms(NULL, n, rnd);
}

uint64_t l7_retry_policy_backoff_ms(const struct l7_retry *p, unsigned n, uint64_t rnd)
{
    uint64_t base = p && p->backoff_base_ms ? p->backoff_base_ms : L7_RETRY_BASE_MS, max = 10 * base;
    uint64_t interval = base;
    for (unsigned i = 1; i < n && interval < max; i++)
        interval *= 2;
    if (interval > max) interval = max;
    return rnd % interval;
}
