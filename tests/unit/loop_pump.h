/* The loop a unit test drives from its own code: L, and pump_until / pump, which run it until a condition holds
 * or a timeout passes (the condition is checked every ms). Shared by the ZDS client, ZDS server and node agent
 * tests. The including test creates L (loop_new) and frees it. */
#pragma once
#include <stdbool.h>
#include <stdint.h>

#include "core/loop.h"

static struct loop *L;
static struct {
    struct timer tick;
    bool (*cond)(void *);
    void *arg;
    uint64_t deadline;
    bool met;
} P;

static void pump_tick_cb(struct timer *t)
{
    if (P.cond && P.cond(P.arg)) {
        P.met = true;
        loop_stop(L);
    } else if (loop_now(L) >= P.deadline) {
        loop_stop(L);
    } else {
        timer_start(L, t, 1);
    }
}

/* Runs the loop until cond(arg) holds or timeout_ms pass. Returns whether it held. */
static inline bool pump_until(bool (*cond)(void *), void *arg, int timeout_ms)
{
    P.cond = cond;
    P.arg = arg;
    P.met = false;
    P.tick.cb = pump_tick_cb;
    P.deadline = loop_now(L) + (uint64_t)timeout_ms;
    timer_start(L, &P.tick, 0);
    loop_run(L);
    timer_stop(L, &P.tick);
    return P.met;
}

/* Runs the loop for ms. */
static inline void pump(int ms)
{
    pump_until(NULL, NULL, ms);
}
