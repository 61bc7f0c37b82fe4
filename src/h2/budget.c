/* Token buckets and the process-wide memory budget (see budget.h). */
#include "h2/budget.h"

#include <stdatomic.h>

void h2_bucket_init(struct h2_bucket *b, uint32_t burst, uint32_t rate_per_s, uint64_t now_ms)
{
    b->burst = burst;
    b->rate = rate_per_s;
    b->milli = (uint64_t)burst * 1000;
    b->last_ms = now_ms;
}

bool h2_bucket_take(struct h2_bucket *b, uint64_t now_ms)
{
    uint64_t cap = (uint64_t)b->burst * 1000;
    if (now_ms > b->last_ms) {
        /* rate tokens per second = rate thousandths per millisecond. */
        uint64_t add = (now_ms - b->last_ms) * b->rate;
        b->milli = cap - b->milli < add ? cap : b->milli + add;
        b->last_ms = now_ms;
    }
    if (b->milli < 1000) return false;
    b->milli -= 1000;
    return true;
}

static _Atomic uint64_t mem_limit = H2_MEM_BUDGET_DEFAULT, mem_used;

void h2_mem_set_limit(uint64_t bytes)
{
    atomic_store_explicit(&mem_limit, bytes ? bytes : H2_MEM_BUDGET_DEFAULT, memory_order_relaxed);
}

uint64_t h2_mem_limit(void)
{
    return atomic_load_explicit(&mem_limit, memory_order_relaxed);
}

bool h2_mem_reserve(uint64_t n)
{
    uint64_t limit = h2_mem_limit();
    uint64_t cur = atomic_load_explicit(&mem_used, memory_order_relaxed);
    do {
        if (cur > limit || limit - cur < n) return false;
    } while (!atomic_compare_exchange_weak_explicit(&mem_used, &cur, cur + n, memory_order_relaxed,
                                                    memory_order_relaxed));
    return true;
}

void h2_mem_release(uint64_t n)
{
    atomic_fetch_sub_explicit(&mem_used, n, memory_order_relaxed);
}

uint64_t h2_mem_reserved(void)
{
    return atomic_load_explicit(&mem_used, memory_order_relaxed);
}
