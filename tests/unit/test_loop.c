/* Unit tests for the epoll loop (src/core/loop.c): timer ordering and the heap, deferred tasks, fd callbacks,
 * and dropping pending events for an io deleted in the middle of a batch. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>

#include "core/loop.h"

/* Every test runs the loop under a safety timer so a broken loop fails the test instead of hanging it. */
struct guard {
    struct timer t;
    struct loop *l;
    bool fired;
};

static void guard_cb(struct timer *t)
{
    struct guard *g = container_of(t, struct guard, t);
    g->fired = true;
    loop_stop(g->l);
}

static void guard_arm(struct guard *g, struct loop *l, uint64_t ms)
{
    memset(g, 0, sizeof(*g));
    g->l = l;
    g->t.cb = guard_cb;
    timer_start(l, &g->t, ms);
}

/* ---- timers fire in deadline order ---- */

struct rec_timer {
    struct timer t;
    struct loop *l;
    int id;
    int *log;
    int *n_log;
    int stop_after; /* stop the loop once this many timers fired (0 = never) */
    uint64_t fired_at;
};

static void rec_cb(struct timer *t)
{
    struct rec_timer *r = container_of(t, struct rec_timer, t);
    r->fired_at = loop_now(r->l);
    r->log[(*r->n_log)++] = r->id;
    if (r->stop_after && *r->n_log == r->stop_after) loop_stop(r->l);
}

static void test_timer_order(void **state)
{
    (void)state;
    struct loop *l = loop_new();
    assert_non_null(l);
    int log[8], n = 0;
    static const uint64_t delays[] = {40, 10, 30, 0, 20};
    struct rec_timer r[5];
    for (int i = 0; i < 5; i++) {
        r[i] = (struct rec_timer){.t = {.cb = rec_cb}, .l = l, .id = i, .log = log, .n_log = &n, .stop_after = 5};
        timer_start(l, &r[i].t, delays[i]);
        assert_true(timer_armed(&r[i].t));
    }
    uint64_t start = loop_now(l);
    struct guard g;
    guard_arm(&g, l, 5000);
    loop_run(l);
    assert_false(g.fired);
    assert_int_equal(n, 5);
    /* Deadlines 0, 10, 20, 30, 40 belong to timers 3, 1, 4, 2, 0. */
    assert_int_equal(log[0], 3);
    assert_int_equal(log[1], 1);
    assert_int_equal(log[2], 4);
    assert_int_equal(log[3], 2);
    assert_int_equal(log[4], 0);
    for (int i = 0; i < 5; i++) {
        assert_false(timer_armed(&r[i].t)); /* a fired timer is disarmed before its callback */
        assert_true(r[i].fired_at >= start + delays[i]);
    }
    timer_stop(l, &g.t);
    loop_free(l);
}

/* ---- timer_stop and restart ---- */

static void test_timer_stop_restart(void **state)
{
    (void)state;
    struct loop *l = loop_new();
    assert_non_null(l);
    int log[8], n = 0;
    struct rec_timer a = {.t = {.cb = rec_cb}, .l = l, .id = 1, .log = log, .n_log = &n};
    struct rec_timer b = {.t = {.cb = rec_cb}, .l = l, .id = 2, .log = log, .n_log = &n};
    struct rec_timer c = {.t = {.cb = rec_cb}, .l = l, .id = 3, .log = log, .n_log = &n, .stop_after = 2};
    timer_start(l, &a.t, 10);
    timer_start(l, &b.t, 20);
    timer_start(l, &c.t, 60);
    /* Stopped: never fires. Stopping twice is harmless. */
    timer_stop(l, &a.t);
    timer_stop(l, &a.t);
    assert_false(timer_armed(&a.t));
    /* Restarted twice: the last deadline (30 ms) counts and it fires once; restarting moves the heap entry,
     * it does not add a second one. */
    timer_start(l, &b.t, 40);
    timer_start(l, &b.t, 30);
    assert_true(timer_armed(&b.t));
    uint64_t start = loop_now(l);
    struct guard g;
    guard_arm(&g, l, 5000);
    loop_run(l);
    assert_false(g.fired);
    assert_int_equal(n, 2);
    assert_int_equal(log[0], 2);
    assert_int_equal(log[1], 3);
    assert_true(b.fired_at >= start + 30);
    /* A stopped timer can be started again and fires. */
    c.stop_after = 3;
    timer_start(l, &a.t, 0);
    loop_run(l);
    assert_int_equal(n, 3);
    assert_int_equal(log[2], 1);
    timer_stop(l, &g.t);
    loop_free(l);
}

/* ---- the heap under load: 1000 random timers, some stopped, some restarted ---- */

#define N_RAND 1000

struct heap_timer {
    struct timer t;
    struct loop *l;
    int fired;
    uint64_t deadline;
};

static uint64_t last_deadline;
static int heap_fired, heap_expected, heap_order_errors;

static void heap_cb(struct timer *t)
{
    struct heap_timer *h = container_of(t, struct heap_timer, t);
    h->fired++;
    /* Deadline order: each timer's deadline is >= the previous one's. */
    if (h->deadline < last_deadline) heap_order_errors++;
    last_deadline = h->deadline;
    if (loop_now(h->l) < h->deadline) heap_order_errors++; /* fired early */
    if (++heap_fired == heap_expected) loop_stop(h->l);
}

static void test_timer_heap_random(void **state)
{
    (void)state;
    struct loop *l = loop_new();
    assert_non_null(l);
    struct heap_timer *ts = calloc(N_RAND, sizeof(*ts));
    assert_non_null(ts);
    srand(12345);
    uint64_t now = loop_now(l);
    for (int i = 0; i < N_RAND; i++) {
        ts[i].l = l;
        ts[i].t.cb = heap_cb;
        uint64_t d = (uint64_t)(rand() % 80);
        timer_start(l, &ts[i].t, d);
        ts[i].deadline = now + d;
    }
    /* Stop every third timer, restart every seventh (that is not stopped) with a new random delay. */
    int stopped = 0;
    for (int i = 0; i < N_RAND; i++) {
        if (i % 3 == 0) {
            timer_stop(l, &ts[i].t);
            stopped++;
        } else if (i % 7 == 0) {
            uint64_t d = (uint64_t)(rand() % 80);
            timer_start(l, &ts[i].t, d);
            ts[i].deadline = now + d;
        }
    }
    heap_expected = N_RAND - stopped;
    heap_fired = heap_order_errors = 0;
    last_deadline = 0;
    struct guard g;
    guard_arm(&g, l, 10000);
    loop_run(l);
    assert_false(g.fired);
    assert_int_equal(heap_fired, heap_expected);
    assert_int_equal(heap_order_errors, 0);
    for (int i = 0; i < N_RAND; i++) {
        assert_int_equal(ts[i].fired, i % 3 == 0 ? 0 : 1);
        assert_false(timer_armed(&ts[i].t));
    }
    timer_stop(l, &g.t);
    free(ts);
    loop_free(l);
}

/* ---- deferred tasks ---- */

struct dtask {
    struct task t;
    struct loop *l;
    int runs;
    int io_count_at_run; /* value of the io counter when the task ran */
    struct dtask *chain; /* queued from this task's callback */
};

static int io_count;

static void dtask_cb(struct task *t)
{
    struct dtask *d = container_of(t, struct dtask, t);
    d->runs++;
    d->io_count_at_run = io_count;
    if (d->chain) loop_defer(d->l, &d->chain->t);
}

struct tick_io {
    struct io io;
    struct loop *l;
    struct dtask *first;
};

/* Level-triggered and never drained: fires on every loop iteration, so io_count counts iterations. */
static void tick_cb(struct io *io, uint32_t ev)
{
    (void)ev;
    struct tick_io *ti = container_of(io, struct tick_io, io);
    io_count++;
    if (io_count == 1) {
        /* Queued twice in one batch: runs once. */
        loop_defer(ti->l, &ti->first->t);
        loop_defer(ti->l, &ti->first->t);
    }
    if (io_count == 3) loop_stop(ti->l);
}

static void test_defer(void **state)
{
    (void)state;
    struct loop *l = loop_new();
    assert_non_null(l);
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    assert_int_equal(write(sv[1], "x", 1), 1);
    struct dtask c = {.t = {.cb = dtask_cb}, .l = l};
    struct dtask b = {.t = {.cb = dtask_cb}, .l = l, .chain = &c};
    struct dtask a = {.t = {.cb = dtask_cb}, .l = l, .chain = &b};
    struct tick_io ti = {.io = {.fd = sv[0], .cb = tick_cb}, .l = l, .first = &a};
    io_count = 0;
    assert_int_equal(loop_io_add(l, &ti.io, EPOLLIN), 0);
    struct guard g;
    guard_arm(&g, l, 5000);
    loop_run(l);
    assert_false(g.fired);
    assert_int_equal(io_count, 3);
    /* Each ran exactly once, and b and c (queued from a task) ran in the same pass as a: before the next
     * batch of io events. */
    assert_int_equal(a.runs, 1);
    assert_int_equal(b.runs, 1);
    assert_int_equal(c.runs, 1);
    assert_int_equal(a.io_count_at_run, 1);
    assert_int_equal(b.io_count_at_run, 1);
    assert_int_equal(c.io_count_at_run, 1);
    assert_false(a.t.queued);

    /* Deferred before loop_run: runs before the first epoll_wait, even with no io registered. */
    loop_io_del(l, &ti.io);
    struct dtask d = {.t = {.cb = dtask_cb}, .l = l};
    loop_defer(l, &d.t);
    assert_true(d.t.queued);
    timer_stop(l, &g.t);
    guard_arm(&g, l, 0); /* stops after one iteration */
    loop_run(l);
    assert_int_equal(d.runs, 1);
    assert_false(d.t.queued);
    close(sv[0]);
    close(sv[1]);
    loop_free(l);
}

/* ---- io callbacks on a socketpair ---- */

struct echo_io {
    struct io io;
    struct loop *l;
    char got[64];
    size_t n_got;
    int in_calls, out_calls;
};

static void echo_cb(struct io *io, uint32_t ev)
{
    struct echo_io *e = container_of(io, struct echo_io, io);
    if (ev & EPOLLIN) {
        e->in_calls++;
        ssize_t n = read(io->fd, e->got + e->n_got, sizeof(e->got) - e->n_got);
        if (n > 0) e->n_got += (size_t)n;
        if (e->n_got >= 5) {
            /* Switch to writability; no longer interested in input. */
            loop_io_mod(e->l, io, EPOLLOUT);
        }
    } else if (ev & EPOLLOUT) {
        e->out_calls++;
        assert_int_equal(write(io->fd, "world", 5), 5);
        loop_io_mod(e->l, io, 0);
        loop_stop(e->l);
    }
}

static void test_io_socketpair(void **state)
{
    (void)state;
    struct loop *l = loop_new();
    assert_non_null(l);
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    struct echo_io e = {.io = {.fd = sv[0], .cb = echo_cb}, .l = l};
    assert_int_equal(loop_io_add(l, &e.io, EPOLLIN), 0);
    assert_int_equal(e.io.events, EPOLLIN);
    /* Same mask: no syscall, still 0. */
    assert_int_equal(loop_io_mod(l, &e.io, EPOLLIN), 0);
    /* Adding the same fd twice is an error the caller sees. */
    struct io dup = {.fd = sv[0], .cb = echo_cb};
    assert_int_equal(loop_io_add(l, &dup, EPOLLIN), -EEXIST);
    assert_int_equal(write(sv[1], "hello", 5), 5);
    struct guard g;
    guard_arm(&g, l, 5000);
    loop_run(l);
    assert_false(g.fired);
    assert_int_equal(e.n_got, 5);
    assert_memory_equal(e.got, "hello", 5);
    assert_int_equal(e.out_calls, 1);
    assert_int_equal(e.io.events, 0);
    char buf[8];
    assert_int_equal(read(sv[1], buf, sizeof(buf)), 5);
    assert_memory_equal(buf, "world", 5);
    loop_io_del(l, &e.io);
    assert_int_equal(e.io.events, 0);
    /* After loop_io_del the fd can be registered again. */
    assert_int_equal(loop_io_add(l, &e.io, EPOLLIN), 0);
    loop_io_del(l, &e.io);
    timer_stop(l, &g.t);
    close(sv[0]);
    close(sv[1]);
    loop_free(l);
}

/* ---- loop_io_del inside a callback drops the other io's pending event in the same batch ---- */

struct del_io {
    struct io io;
    struct loop *l;
    struct del_io *other;
    int calls;
};

static int del_first_calls;

static void del_cb(struct io *io, uint32_t ev)
{
    (void)ev;
    struct del_io *d = container_of(io, struct del_io, io);
    d->calls++;
    if (del_first_calls++ == 0) {
        /* Whichever runs first removes the other, as an owner freeing a peer object would. If the loop still
         * delivered the other's pending event, its callback would run on a "freed" object. */
        loop_io_del(d->l, &d->other->io);
        loop_stop(d->l);
    }
}

static void test_io_del_in_batch(void **state)
{
    (void)state;
    struct loop *l = loop_new();
    assert_non_null(l);
    int p1[2], p2[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, p1), 0);
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, p2), 0);
    struct del_io a = {.io = {.fd = p1[0], .cb = del_cb}, .l = l};
    struct del_io b = {.io = {.fd = p2[0], .cb = del_cb}, .l = l};
    a.other = &b;
    b.other = &a;
    assert_int_equal(loop_io_add(l, &a.io, EPOLLIN), 0);
    assert_int_equal(loop_io_add(l, &b.io, EPOLLIN), 0);
    /* Both readable before the loop waits: one epoll_wait returns both in a single batch. */
    assert_int_equal(write(p1[1], "a", 1), 1);
    assert_int_equal(write(p2[1], "b", 1), 1);
    del_first_calls = 0;
    struct guard g;
    guard_arm(&g, l, 5000);
    loop_run(l);
    assert_false(g.fired);
    assert_int_equal(del_first_calls, 1);
    assert_int_equal(a.calls + b.calls, 1);
    /* The deleted io is out of epoll for good: more iterations do not call it either. */
    struct del_io *survivor = a.calls ? &a : &b;
    loop_io_del(l, &survivor->io);
    timer_stop(l, &g.t);
    guard_arm(&g, l, 20);
    loop_run(l);
    assert_int_equal(a.calls + b.calls, 1);
    close(p1[0]);
    close(p1[1]);
    close(p2[0]);
    close(p2[1]);
    loop_free(l);
}

/* ---- loop_io_close takes the fd out of epoll even when its file lives on elsewhere ---- */

static int closed_calls;
static void closed_cb(struct io *io, uint32_t ev)
{
    (void)io;
    (void)ev;
    closed_calls++;
}

/* epoll registers the open file, not the descriptor: close() ends the registration only with the last
 * descriptor of the file. A forked child that has not exec'd yet (the node agent's rules child, zmesh up's
 * probes) holds a copy of every descriptor, so without EPOLL_CTL_DEL the closed io kept getting events, and
 * its callback ran on an object its owner had freed (found by the node agent crashing under enrolment
 * flips). dup() holds the copy here as the child would. */
static void test_io_close_with_copy_elsewhere(void **state)
{
    (void)state;
    struct loop *l = loop_new();
    assert_non_null(l);
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
    struct io io = {.fd = sv[0], .cb = closed_cb};
    assert_int_equal(loop_io_add(l, &io, EPOLLIN), 0);
    int copy = dup(sv[0]);
    assert_true(copy >= 0);
    loop_io_close(l, &io);
    assert_int_equal(io.fd, -1);
    assert_int_equal(write(sv[1], "x", 1), 1);
    closed_calls = 0;
    struct guard g;
    guard_arm(&g, l, 50);
    loop_run(l);
    assert_int_equal(closed_calls, 0);
    close(copy);
    close(sv[1]);
    loop_free(l);
}

/* ---- loop_now is cached per iteration and monotonic ---- */

static void test_now_monotonic(void **state)
{
    (void)state;
    struct loop *l = loop_new();
    assert_non_null(l);
    uint64_t t0 = loop_now(l);
    assert_int_equal(loop_now(l), t0); /* cached: no clock read between iterations */
    struct guard g;
    guard_arm(&g, l, 15);
    loop_run(l);
    assert_true(g.fired);
    assert_true(loop_now(l) >= t0 + 15);
    loop_free(l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_timer_order),      cmocka_unit_test(test_timer_stop_restart),
        cmocka_unit_test(test_timer_heap_random), cmocka_unit_test(test_defer),
        cmocka_unit_test(test_io_socketpair),     cmocka_unit_test(test_io_del_in_batch),
        cmocka_unit_test(test_io_close_with_copy_elsewhere),
        cmocka_unit_test(test_now_monotonic),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
