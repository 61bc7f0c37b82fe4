/* Plain TCP relay between two sockets with splice(): bytes move through a pipe per direction without
 * entering user space. Half-close is propagated (EOF on one side becomes shutdown(SHUT_WR) on the other). */
#pragma once
#include <stdint.h>

#include "core/loop.h"

struct relay;

struct relay_ops {
    /* b's non-blocking connect finished (err = 0) or failed (err = errno). On failure the relay ends
     * right after this with on_done. Optional. */
    void (*on_connected)(struct relay *r, void *ud, int err);
    /* The relay ended: both directions finished, or an error (err non-NULL). Both fds are closed. */
    void (*on_done)(struct relay *r, void *ud, uint64_t a_to_b, uint64_t b_to_a, const char *err);
};

/* Starts relaying between connected socket a and socket b, which may still be connecting (b_connecting).
 * Takes ownership of both fds. Returns NULL on failure (both fds closed). */
struct relay *relay_new(struct loop *l, int a, int b, int b_connecting, const struct relay_ops *ops,
                        void *ud);
/* Bytes moved so far in each direction. */
void relay_bytes(const struct relay *r, uint64_t *a_to_b, uint64_t *b_to_a);
/* Aborts the relay: fds closed, on_done runs with err. */
void relay_abort(struct relay *r, const char *err);
