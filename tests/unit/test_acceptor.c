/* Unit tests for the acceptor (src/core/acceptor.c): at RLIMIT_NOFILE the listener pauses instead of spinning
 * and accepts the waiting connections once descriptors are free; the "may accept" hook holds it and
 * acceptor_resume releases it; the batch bound; raising the soft fd limit. Real sockets on 127.0.0.1. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>

#include "core/acceptor.h"
#include "core/log.h"
#include "core/net.h"

#define N_CLIENTS 4

struct fixture {
    struct loop *l;
    struct acceptor a;
    int clients[N_CLIENTS];
    int accepted[64];
    int n_accepted;
    bool allow;     /* what may_accept answers */
    int may_calls;  /* may_accept calls */
    int stop_after; /* stop the loop after this many accepted (0: never) */
    struct timer stop;
};

static void stop_cb(struct timer *t)
{
    struct fixture *f = container_of(t, struct fixture, stop);
    loop_stop(f->l);
}

/* Runs the loop until loop_stop or for at most ms (a safety bound, not a measurement). */
static void run_for(struct fixture *f, uint64_t ms)
{
    f->stop.cb = stop_cb;
    timer_start(f->l, &f->stop, ms);
    loop_run(f->l);
    timer_stop(f->l, &f->stop);
}

static void on_accept(struct acceptor *a, int fd, const struct sockaddr_storage *peer)
{
    struct fixture *f = container_of(a, struct fixture, a);
    assert_int_equal(peer->ss_family, AF_INET);
    assert_true(f->n_accepted < (int)(sizeof(f->accepted) / sizeof(f->accepted[0])));
    f->accepted[f->n_accepted++] = fd;
    if (f->stop_after && f->n_accepted >= f->stop_after) loop_stop(f->l);
}

static bool may_accept(struct acceptor *a)
{
    struct fixture *f = container_of(a, struct fixture, a);
    f->may_calls++;
    return f->allow;
}

static const struct acceptor_ops ops_plain = {.on_accept = on_accept};
static const struct acceptor_ops ops_hook = {.on_accept = on_accept, .may_accept = may_accept};

/* A listener on 127.0.0.1:<any> with N_CLIENTS connections waiting in its backlog. */
static void setup_listener(struct fixture *f, const struct acceptor_ops *ops)
{
    memset(f, 0, sizeof(*f));
    f->allow = true;
    f->l = loop_new();
    assert_non_null(f->l);
    int fd = net_listen_local(0, 64);
    assert_true(fd >= 0);
    struct sockaddr_in sa;
    socklen_t sl = sizeof(sa);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
    for (int i = 0; i < N_CLIENTS; i++) {
        f->clients[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_true(f->clients[i] >= 0);
        assert_int_equal(connect(f->clients[i], (struct sockaddr *)&sa, sl), 0);
    }
    assert_int_equal(acceptor_start(&f->a, f->l, fd, "test", ops), 0);
    assert_int_equal(f->a.st, ACC_LISTENING);
}

static void teardown_listener(struct fixture *f)
{
    acceptor_close(&f->a);
    assert_int_equal(f->a.st, ACC_IDLE);
    acceptor_close(&f->a); /* idempotent */
    for (int i = 0; i < N_CLIENTS; i++)
        close(f->clients[i]);
    for (int i = 0; i < f->n_accepted; i++)
        close(f->accepted[i]);
    loop_free(f->l);
}

/* The lowest fd not in use: with the soft limit set to it, the next accept4 fails with EMFILE. */
static int lowest_free_fd(void)
{
    int fd = dup(0);
    assert_true(fd >= 0);
    close(fd);
    return fd;
}

/* The fd limit at start, restored after each test even when one fails half-way (a lowered limit would make
 * every later test fail to create sockets). */
static struct rlimit saved_limit;

static int restore_limit(void **state)
{
    (void)state;
    return setrlimit(RLIMIT_NOFILE, &saved_limit);
}

static void test_emfile_pauses_and_resumes(void **state)
{
    (void)state;
    struct fixture f;
    struct rlimit saved, low;
    setup_listener(&f, &ops_plain);
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &saved), 0);
    /* Fill the table: every descriptor below the new soft limit is in use. */
    low = saved;
    low.rlim_cur = (rlim_t)lowest_free_fd();
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &low), 0);

    /* Four connections wait and none can be taken. Without the pause the level-triggered listener would
     * call accept4 on every iteration (hundreds of thousands of calls in this time). */
    run_for(&f, 5 * ACCEPTOR_PAUSE_MS);
    uint64_t calls = f.a.accept_calls;
    assert_int_equal(f.n_accepted, 0);
    assert_true(f.a.pauses >= 1);
    /* One failing call per pause; the timer brings it back about every ACCEPTOR_PAUSE_MS. */
    assert_int_equal(calls, f.a.pauses);
    assert_true(calls <= 20);
    /* Paused, or just back from a pause when the loop stopped (both timers were due in the same pass). */
    assert_true(f.a.st == ACC_PAUSED || f.a.st == ACC_LISTENING);

    /* Descriptors are free again: the waiting connections are accepted at the next resume. */
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &saved), 0);
    f.stop_after = N_CLIENTS;
    run_for(&f, 50 * ACCEPTOR_PAUSE_MS);
    assert_int_equal(f.n_accepted, N_CLIENTS);
    assert_int_equal(f.a.st, ACC_LISTENING);
    /* The accepted sockets are non-blocking. */
    assert_true(fcntl(f.accepted[0], F_GETFL) & O_NONBLOCK);
    teardown_listener(&f);
}

static void test_may_accept_holds_until_resume(void **state)
{
    (void)state;
    struct fixture f;
    setup_listener(&f, &ops_hook);
    f.allow = false;
    run_for(&f, 3 * ACCEPTOR_PAUSE_MS);
    /* Held: out of epoll, asked once, no accept4 at all. */
    assert_int_equal(f.a.st, ACC_HELD);
    assert_int_equal(f.n_accepted, 0);
    assert_int_equal(f.a.accept_calls, 0);
    assert_int_equal(f.may_calls, 1);

    /* A resume while the owner still refuses keeps it held. */
    acceptor_resume(&f.a);
    assert_int_equal(f.a.st, ACC_HELD);
    assert_int_equal(f.may_calls, 2);

    f.allow = true;
    acceptor_resume(&f.a);
    assert_int_equal(f.a.st, ACC_LISTENING);
    f.stop_after = N_CLIENTS;
    run_for(&f, 50 * ACCEPTOR_PAUSE_MS);
    assert_int_equal(f.n_accepted, N_CLIENTS);
    teardown_listener(&f);
}

/* The hook is asked before every accept: an owner that allows two gets exactly two. */
static void on_accept_two(struct acceptor *a, int fd, const struct sockaddr_storage *peer)
{
    struct fixture *f = container_of(a, struct fixture, a);
    on_accept(a, fd, peer);
    if (f->n_accepted == 2) f->allow = false;
}

static void test_hook_asked_before_every_accept(void **state)
{
    (void)state;
    static const struct acceptor_ops ops = {.on_accept = on_accept_two, .may_accept = may_accept};
    struct fixture f;
    setup_listener(&f, &ops);
    run_for(&f, 3 * ACCEPTOR_PAUSE_MS);
    assert_int_equal(f.n_accepted, 2);
    assert_int_equal(f.a.st, ACC_HELD);
    assert_int_equal(f.a.accept_calls, 2);
    teardown_listener(&f);
}

static void test_close_while_paused_and_held(void **state)
{
    (void)state;
    struct fixture f;
    setup_listener(&f, &ops_hook);
    f.allow = false;
    run_for(&f, ACCEPTOR_PAUSE_MS);
    assert_int_equal(f.a.st, ACC_HELD);
    acceptor_close(&f.a);
    acceptor_resume(&f.a); /* no effect after close */
    assert_int_equal(f.a.st, ACC_IDLE);
    assert_int_equal(f.a.io.fd, -1);
    teardown_listener(&f);
}

static void test_state_names(void **state)
{
    (void)state;
    assert_string_equal(acceptor_state_to_str(ACC_LISTENING), "listening");
    assert_string_equal(acceptor_state_to_str(ACC_HELD), "held");
    assert_string_equal(acceptor_state_to_str(ACC_PAUSED), "paused");
    assert_string_equal(acceptor_state_to_str(ACC_IDLE), "idle");
}

static void test_raise_fd_limit(void **state)
{
    (void)state;
    struct rlimit saved, low, now;
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &saved), 0);
    low = saved;
    low.rlim_cur = saved.rlim_max > 512 ? 512 : saved.rlim_max;
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &low), 0);
    assert_int_equal(acceptor_raise_fd_limit(), 0);
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &now), 0);
    assert_true(now.rlim_cur == saved.rlim_max);
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &saved), 0);
}

int main(void)
{
    log_set_level("error");
    if (getrlimit(RLIMIT_NOFILE, &saved_limit) < 0) return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_emfile_pauses_and_resumes, restore_limit),
        cmocka_unit_test(test_may_accept_holds_until_resume),
        cmocka_unit_test(test_hook_asked_before_every_accept),
        cmocka_unit_test(test_close_while_paused_and_held),
        cmocka_unit_test(test_state_names),
        cmocka_unit_test_teardown(test_raise_fd_limit, restore_limit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
