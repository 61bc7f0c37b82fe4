/* epoll loop. Level-triggered: handlers read until EAGAIN or until they choose to stop, and interest masks
 * are changed only when they differ, so a steady stream costs no epoll_ctl calls. */
#include "core/loop.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_EVENTS 256

struct loop {
    int epfd;
    bool stop;
    uint64_t now;
    struct timer **heap;
    size_t n_heap, cap_heap;
    struct task *tasks, **tasks_tail;
    struct epoll_event events[MAX_EVENTS];
    int n_events, cur_event;
};

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

struct loop *loop_new(void)
{
    struct loop *l = calloc(1, sizeof(*l));
    if (!l) return NULL;
    l->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (l->epfd < 0) {
        free(l);
        return NULL;
    }
    l->tasks_tail = &l->tasks;
    l->now = mono_ms();
    return l;
}

void loop_free(struct loop *l)
{
    if (!l) return;
    close(l->epfd);
    free(l->heap);
    free(l);
}

void loop_stop(struct loop *l)
{
    l->stop = true;
}

uint64_t loop_now(struct loop *l)
{
    return l->now;
}

int loop_io_add(struct loop *l, struct io *io, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.ptr = io};
    if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, io->fd, &ev) < 0) return -errno;
    io->events = events;
    return 0;
}

int loop_io_mod(struct loop *l, struct io *io, uint32_t events)
{
    if (io->events == events) return 0;
    struct epoll_event ev = {.events = events, .data.ptr = io};
    if (epoll_ctl(l->epfd, EPOLL_CTL_MOD, io->fd, &ev) < 0) return -errno;
    io->events = events;
    return 0;
}

/* Drops events for io still waiting in the current batch: its owner may be freed after this. */
static void forget_pending(struct loop *l, struct io *io)
{
    for (int i = l->cur_event; i < l->n_events; i++)
        if (l->events[i].data.ptr == io) l->events[i].data.ptr = NULL;
    io->events = 0;
}

void loop_io_del(struct loop *l, struct io *io)
{
    if (io->fd < 0) return;
    epoll_ctl(l->epfd, EPOLL_CTL_DEL, io->fd, NULL);
    forget_pending(l, io);
}

void loop_io_close(struct loop *l, struct io *io)
{
    if (io->fd < 0) return;
    /* close() alone ends the registration only with the file's last descriptor; a forked child that has not
     * exec'd holds copies of them all, and events would keep coming for an io its owner frees next. (An io
     * registered with an empty mask still gets EPOLLHUP, so the mask does not tell; an fd never added just
     * gets ENOENT.) */
    epoll_ctl(l->epfd, EPOLL_CTL_DEL, io->fd, NULL);
    forget_pending(l, io);
    close(io->fd);
    io->fd = -1;
}

/* Min-heap of timers ordered by deadline; idx is 1-based so 0 means "not armed". */
static void heap_swap(struct loop *l, size_t a, size_t b)
{
    struct timer *t = l->heap[a];
    l->heap[a] = l->heap[b];
    l->heap[b] = t;
    l->heap[a]->idx = a + 1;
    l->heap[b]->idx = b + 1;
}

static void heap_up(struct loop *l, size_t i)
{
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (l->heap[p]->when <= l->heap[i]->when) break;
        heap_swap(l, p, i);
        i = p;
    }
}

static void heap_down(struct loop *l, size_t i)
{
    for (;;) {
        size_t c = 2 * i + 1, m = i;
        if (c < l->n_heap && l->heap[c]->when < l->heap[m]->when) m = c;
        if (c + 1 < l->n_heap && l->heap[c + 1]->when < l->heap[m]->when) m = c + 1;
        if (m == i) break;
        heap_swap(l, i, m);
        i = m;
    }
}

void timer_stop(struct loop *l, struct timer *t)
{
    if (!t->idx) return;
    size_t i = t->idx - 1;
    t->idx = 0;
    l->n_heap--;
    if (i == l->n_heap) return;
    l->heap[i] = l->heap[l->n_heap];
    l->heap[i]->idx = i + 1;
    heap_up(l, i);
    heap_down(l, i);
}

void timer_start(struct loop *l, struct timer *t, uint64_t delay_ms)
{
    timer_stop(l, t);
    if (l->n_heap == l->cap_heap) {
        size_t cap = l->cap_heap ? l->cap_heap * 2 : 64;
        struct timer **h = realloc(l->heap, cap * sizeof(*h));
        if (!h) abort(); /* a timer that silently never fires would leak connections forever */
        l->heap = h;
        l->cap_heap = cap;
    }
    t->when = l->now + delay_ms;
    l->heap[l->n_heap] = t;
    t->idx = ++l->n_heap;
    heap_up(l, l->n_heap - 1);
}

void loop_defer(struct loop *l, struct task *t)
{
    if (t->queued) return;
    t->queued = true;
    t->next = NULL;
    *l->tasks_tail = t;
    l->tasks_tail = &t->next;
}

static void run_tasks(struct loop *l)
{
    /* Tasks queued while running are run in the same pass, so a flush that defers a free completes. */
    while (l->tasks) {
        struct task *t = l->tasks;
        l->tasks = t->next;
        if (!l->tasks) l->tasks_tail = &l->tasks;
        t->queued = false;
        t->cb(t);
    }
}

static void run_timers(struct loop *l)
{
    while (l->n_heap && l->heap[0]->when <= l->now) {
        struct timer *t = l->heap[0];
        timer_stop(l, t);
        t->cb(t);
    }
}

void loop_run_tasks(struct loop *l)
{
    run_tasks(l);
}

int loop_run(struct loop *l)
{
    l->stop = false;
    while (!l->stop) {
        run_tasks(l);
        int timeout = -1;
        if (l->n_heap) {
            uint64_t w = l->heap[0]->when;
            timeout = w <= l->now ? 0 : (int)(w - l->now);
        }
        int n = epoll_wait(l->epfd, l->events, MAX_EVENTS, timeout);
        l->now = mono_ms();
        if (n < 0) {
            if (errno == EINTR) continue;
            return -errno;
        }
        l->n_events = n;
        for (l->cur_event = 0; l->cur_event < n; l->cur_event++) {
            struct io *io = l->events[l->cur_event].data.ptr;
            if (io) io->cb(io, l->events[l->cur_event].events);
        }
        l->n_events = l->cur_event = 0;
        run_tasks(l);
        run_timers(l);
    }
    return 0;
}
