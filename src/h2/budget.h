/* Budgets that bound what a hostile HTTP/2 peer can make zmesh spend.
 *
 * Two mechanisms, both small and independent of nghttp2 so that the generic HTTP/2 session of the next issue
 * can take them as they are:
 * - a token bucket (h2_bucket) per connection, charged once per event a peer can repeat cheaply (a stream
 *   reset before its response); when it is empty the caller ends the connection;
 * - one process-wide memory budget (h2_mem_*) for bytes a peer can make us hold: flow-control credit granted
 *   beyond the protocol's minimum, and large relay buffers. Shared by every worker thread (atomics). */
#pragma once
#include <stdbool.h>
#include <stdint.h>

/* A token bucket: up to burst events at once, refilled at rate events per second. Not thread-safe (one
 * owner, the connection's worker). Tokens are kept in thousandths so a refill of less than one whole event
 * per millisecond is not lost. */
struct h2_bucket {
    uint64_t milli;   /* tokens × 1000 */
    uint64_t last_ms; /* time of the last refill */
    uint32_t burst, rate;
};

/* Fills b with burst tokens at now_ms. */
void h2_bucket_init(struct h2_bucket *b, uint32_t burst, uint32_t rate_per_s, uint64_t now_ms);
/* Takes one token at now_ms. Returns false (and takes nothing) when the bucket is empty. */
bool h2_bucket_take(struct h2_bucket *b, uint64_t now_ms);

/* The process-wide budget, in bytes. Default H2_MEM_BUDGET_DEFAULT. */
#define H2_MEM_BUDGET_DEFAULT (128ull << 20)
/* Sets the budget (0 restores the default). Reservations already made stay; thread-safe. */
void h2_mem_set_limit(uint64_t bytes);
uint64_t h2_mem_limit(void);
/* Reserves n bytes if the budget has room for all of them. Returns true when reserved (the caller must
 * h2_mem_release them later), false when the budget is spent (nothing reserved). Thread-safe. */
bool h2_mem_reserve(uint64_t n);
/* Returns n bytes reserved earlier. Thread-safe. */
void h2_mem_release(uint64_t n);
/* Bytes reserved now, across all threads. */
uint64_t h2_mem_reserved(void);
