/* Listener accept loop with a "may accept" hook and a pause on descriptor exhaustion (see acceptor.h). */
#include "core/acceptor.h"

#include <errno.h>
#include <inttypes.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "core/log.h"

const char *acceptor_state_to_str(enum acceptor_state s)
{
    switch (s) {
    case ACC_IDLE:
        return "idle";
    case ACC_LISTENING:
        return "listening";
    case ACC_HELD:
        return "held";
    case ACC_PAUSED:
        return "paused";
    }
    return "unknown";
}

/* Errors that concern only the connection being accepted (it was reset or its route went away before we
 * took it, see accept(2)): take the next one. */
static bool acc_transient(int e)
{
    switch (e) {
    case EINTR:
    case ECONNABORTED:
    case EPROTO:
    case EPERM: /* a firewall rule refused it */
    case ENETDOWN:
    case ENOPROTOOPT:
    case EHOSTDOWN:
    case ENONET:
    case EHOSTUNREACH:
    case EOPNOTSUPP:
    case ENETUNREACH:
        return true;
    default:
        return false;
    }
}

static void acc_leave(struct acceptor *a, enum acceptor_state st)
{
    if (a->st == ACC_LISTENING) loop_io_del(a->loop, &a->io);
    a->st = st;
}

static void acc_pause(struct acceptor *a)
{
    acc_leave(a, ACC_PAUSED);
    a->pauses++;
    timer_start(a->loop, &a->pause_timer, ACCEPTOR_PAUSE_MS);
}

/* Back into epoll, unless the owner is still at its limit. Level-triggered: connections that waited in the
 * backlog are reported at once. */
static void acc_enter(struct acceptor *a)
{
    if (a->ops->may_accept && !a->ops->may_accept(a)) {
        a->st = ACC_HELD;
        return;
    }
    int rc = loop_io_add(a->loop, &a->io, EPOLLIN);
    if (rc < 0) {
        LOG_LIMITED(LOG_WARN, "acceptor", "%s: cannot watch the listener: %s; retrying in %d ms", a->name,
                    strerror(-rc), ACCEPTOR_PAUSE_MS);
        a->st = ACC_IDLE; /* not in epoll; acc_pause must not delete it */
        acc_pause(a);
        return;
    }
    a->st = ACC_LISTENING;
}

static void acc_io(struct io *io, uint32_t ev)
{
    (void)ev;
    struct acceptor *a = container_of(io, struct acceptor, io);
    for (int i = 0; i < ACCEPTOR_BATCH && a->st == ACC_LISTENING; i++) {
        if (a->ops->may_accept && !a->ops->may_accept(a)) {
            acc_leave(a, ACC_HELD);
            return;
        }
        struct sockaddr_storage peer;
        socklen_t len = sizeof(peer);
        a->accept_calls++;
        int fd = accept4(a->io.fd, (struct sockaddr *)&peer, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            int e = errno;
            if (e == EAGAIN || e == EWOULDBLOCK) return;
            if (acc_transient(e)) continue;
            /* EMFILE, ENFILE, ENOBUFS, ENOMEM, or something unexpected: retrying now would fail the same way
             * on every iteration. The connection waits in the backlog. */
            acc_pause(a);
            LOG_LIMITED(LOG_WARN, "acceptor",
                        "accept on %s: %s; not accepting for %d ms (paused %" PRIu64 " times)", a->name,
                        strerror(e), ACCEPTOR_PAUSE_MS, a->pauses);
            return;
        }
        memset((char *)&peer + len, 0, len < sizeof(peer) ? sizeof(peer) - len : 0);
        a->accepted++;
        a->ops->on_accept(a, fd, &peer);
    }
}

static void acc_timer(struct timer *t)
{
    struct acceptor *a = container_of(t, struct acceptor, pause_timer);
    if (a->st == ACC_PAUSED) acc_enter(a);
}

int acceptor_start(struct acceptor *a, struct loop *l, int fd, const char *name,
                   const struct acceptor_ops *ops)
{
    *a = (struct acceptor){.io = {.fd = fd, .cb = acc_io}, .loop = l, .ops = ops, .name = name};
    a->pause_timer.cb = acc_timer;
    int rc = loop_io_add(l, &a->io, EPOLLIN);
    if (rc < 0) {
        close(fd);
        a->io.fd = -1;
        return rc;
    }
    a->st = ACC_LISTENING;
    return 0;
}

void acceptor_resume(struct acceptor *a)
{
    if (a->st == ACC_HELD) acc_enter(a);
}

void acceptor_close(struct acceptor *a)
{
    if (!a->loop || a->io.fd < 0) return; /* never started, or closed */
    timer_stop(a->loop, &a->pause_timer);
    if (a->st == ACC_LISTENING)
        loop_io_close(a->loop, &a->io);
    else {
        close(a->io.fd);
        a->io.fd = -1;
    }
    a->st = ACC_IDLE;
}

int acceptor_raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0) {
        int e = errno;
        LOG_W("ztunnel", "failed to get file descriptor limits: %s", strerror(e));
        return -e;
    }
    rlim_t soft = rl.rlim_cur;
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) < 0) {
        int e = errno;
        LOG_W("ztunnel", "failed to set file descriptor limits: %s", strerror(e));
        return -e;
    }
    LOG_I("ztunnel", "set file descriptor limits from %llu to %llu", (unsigned long long)soft,
          (unsigned long long)rl.rlim_max);
    return 0;
}
