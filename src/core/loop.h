/* A small epoll event loop per worker thread: fd handlers, timers in a min-heap, and deferred tasks
 * that run after each batch of events (used to flush coalesced writes and to free closed objects safely). */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/epoll.h>

/* The struct that embeds member m, from a pointer to that member. */
#define container_of(ptr, type, m) ((type *)((char *)(ptr)-offsetof(type, m)))

struct loop;

/* An fd registration; embedded in its owner. cb gets the epoll event mask. */
struct io {
    int fd;
    uint32_t events; /* currently registered mask */
    void (*cb)(struct io *io, uint32_t revents);
};

struct timer {
    uint64_t when; /* ms, monotonic */
    size_t idx;    /* heap slot + 1; 0 when not armed */
    void (*cb)(struct timer *t);
};

/* A deferred callback; embedded in its owner. Queued at most once until it runs. */
struct task {
    struct task *next;
    bool queued;
    void (*cb)(struct task *t);
};

/* Creates a loop. Returns NULL on failure. */
struct loop *loop_new(void);
/* Frees the loop; registered ios and timers are forgotten, not closed. */
void loop_free(struct loop *l);
/* Runs until loop_stop. Returns 0. */
int loop_run(struct loop *l);
/* Makes loop_run return after the current iteration; safe from the loop's own thread only. */
void loop_stop(struct loop *l);
/* Milliseconds on the monotonic clock, cached once per iteration. */
uint64_t loop_now(struct loop *l);

/* Registers io->fd with events (EPOLLIN/EPOLLOUT...). Returns 0 or -errno. */
int loop_io_add(struct loop *l, struct io *io, uint32_t events);
/* Changes the mask; no syscall when unchanged. Returns 0 or -errno. */
int loop_io_mod(struct loop *l, struct io *io, uint32_t events);
/* Unregisters (does not close) the fd; pending events for it in this batch are dropped. */
void loop_io_del(struct loop *l, struct io *io);
/* Unregisters and closes io->fd (sets it to -1); pending events for it in this batch are dropped. The
 * EPOLL_CTL_DEL is not redundant: epoll drops a file only when its last descriptor closes, and a forked child
 * (or a dup) holds others. */
void loop_io_close(struct loop *l, struct io *io);

/* (Re)arms t to fire after delay_ms. */
void timer_start(struct loop *l, struct timer *t, uint64_t delay_ms);
void timer_stop(struct loop *l, struct timer *t);
static inline bool timer_armed(const struct timer *t)
{
    return t->idx != 0;
}

/* Runs t->cb after the current batch of events (before the next epoll_wait). */
void loop_defer(struct loop *l, struct task *t);
/* Runs the deferred tasks now, including those they queue. For shutdown after loop_run returned: objects freed
 * from tasks (connections, sessions) are freed before the loop is. Loop's thread only. */
void loop_run_tasks(struct loop *l);
