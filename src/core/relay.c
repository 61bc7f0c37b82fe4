/* splice()-based TCP relay. */
#include "core/relay.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define CONNECT_TIMEOUT_MS 10000

struct dir {
    int pipe[2];
    size_t in_pipe; /* bytes spliced in, not yet out */
    bool eof;       /* source read returned 0 */
    bool shut;      /* destination got SHUT_WR */
    uint64_t bytes;
};

struct end {
    struct io io;
    struct relay *r;
    bool registered;
};

struct relay {
    struct loop *loop;
    struct end a, b;
    struct dir ab, ba;
    bool connecting, done;
    const struct relay_ops *ops;
    void *ud;
    struct timer connect_timer;
    struct task free_task;
};

static void relay_free_cb(struct task *t)
{
    free(container_of(t, struct relay, free_task));
}

static void close_dir(struct dir *d)
{
    for (int i = 0; i < 2; i++)
        if (d->pipe[i] >= 0) close(d->pipe[i]);
    d->pipe[0] = d->pipe[1] = -1;
}

/* epoll reports HUP/ERR even for an empty mask, so a side with nothing to wait for leaves epoll instead of
 * waking the loop forever. */
static void set_mask(struct relay *r, struct end *e, uint32_t ev)
{
    if (!ev) {
        if (e->registered) loop_io_del(r->loop, &e->io);
        e->registered = false;
    } else if (!e->registered) {
        e->registered = loop_io_add(r->loop, &e->io, ev) == 0;
    } else {
        loop_io_mod(r->loop, &e->io, ev);
    }
}

static void relay_end(struct relay *r, const char *err)
{
    if (r->done) return;
    r->done = true;
    timer_stop(r->loop, &r->connect_timer);
    loop_io_close(r->loop, &r->a.io);
    loop_io_close(r->loop, &r->b.io);
    close_dir(&r->ab);
    close_dir(&r->ba);
    if (r->ops->on_done) r->ops->on_done(r, r->ud, r->ab.bytes, r->ba.bytes, err);
    loop_defer(r->loop, &r->free_task);
}

void relay_bytes(const struct relay *r, uint64_t *a_to_b, uint64_t *b_to_a)
{
    *a_to_b = r->ab.bytes;
    *b_to_a = r->ba.bytes;
}

void relay_abort(struct relay *r, const char *err)
{
    relay_end(r, err);
}

static void update(struct relay *r)
{
    if (r->done) return;
    if (r->ab.shut && r->ba.shut) {
        relay_end(r, NULL);
        return;
    }
    uint32_t ea = 0, eb = 0;
    if (r->connecting) {
        eb = EPOLLOUT;
    } else {
        /* Read a side only while its pipe is empty: the pipe is the bounded buffer. */
        if (!r->ab.eof && !r->ab.in_pipe) ea |= EPOLLIN;
        if (!r->ba.eof && !r->ba.in_pipe) eb |= EPOLLIN;
        if (r->ab.in_pipe) eb |= EPOLLOUT;
        if (r->ba.in_pipe) ea |= EPOLLOUT;
    }
    set_mask(r, &r->a, ea);
    set_mask(r, &r->b, eb);
}

/* Moves bytes src -> pipe -> dst. Returns 0 or -errno. */
static int pump(struct dir *d, int src, int dst, bool can_read)
{
    for (;;) {
        if (d->in_pipe) {
            ssize_t n = splice(d->pipe[0], NULL, dst, NULL, d->in_pipe, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            if (n < 0) return errno == EAGAIN ? 0 : -errno;
            d->in_pipe -= (size_t)n;
            d->bytes += (uint64_t)n;
            if (d->in_pipe) return 0;
        }
        if (d->eof) {
            if (!d->shut) {
                shutdown(dst, SHUT_WR);
                d->shut = true;
            }
            return 0;
        }
        if (!can_read) return 0;
        ssize_t n = splice(src, NULL, d->pipe[1], NULL, 1 << 20, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (n < 0) return errno == EAGAIN ? 0 : -errno;
        if (n == 0) d->eof = true;
        d->in_pipe += (size_t)n;
        can_read = false; /* one read per wakeup keeps the loop fair */
    }
}

static void io_cb(struct io *io, uint32_t ev)
{
    struct end *e = container_of(io, struct end, io);
    struct relay *r = e->r;
    bool is_a = e == &r->a;
    int err;
    if (r->connecting) {
        int soerr = 0;
        socklen_t sl = sizeof(soerr);
        if (getsockopt(r->b.io.fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0) soerr = errno;
        if (!soerr && !(ev & EPOLLOUT)) return;
        r->connecting = false;
        timer_stop(r->loop, &r->connect_timer);
        if (r->ops->on_connected) r->ops->on_connected(r, r->ud, soerr);
        if (soerr) {
            relay_end(r, strerror(soerr));
            return;
        }
        update(r);
        return;
    }
    bool rd = ev & (EPOLLIN | EPOLLHUP | EPOLLERR);
    if (is_a) {
        if ((err = pump(&r->ab, r->a.io.fd, r->b.io.fd, rd)) < 0 ||
            (err = pump(&r->ba, r->b.io.fd, r->a.io.fd, false)) < 0)
            goto fail;
    } else {
        if ((err = pump(&r->ba, r->b.io.fd, r->a.io.fd, rd)) < 0 ||
            (err = pump(&r->ab, r->a.io.fd, r->b.io.fd, false)) < 0)
            goto fail;
    }
    update(r);
    return;
fail:
    relay_end(r, strerror(-err));
}

static void connect_timeout_cb(struct timer *t)
{
    struct relay *r = container_of(t, struct relay, connect_timer);
    if (r->ops->on_connected) r->ops->on_connected(r, r->ud, ETIMEDOUT);
    relay_end(r, "connect timeout");
}

struct relay *relay_new(struct loop *l, int a, int b, int b_connecting, const struct relay_ops *ops, void *ud)
{
    struct relay *r = calloc(1, sizeof(*r));
    if (!r) goto fail;
    r->loop = l;
    r->ops = ops;
    r->ud = ud;
    r->a = (struct end){.io = {.fd = a, .cb = io_cb}, .r = r};
    r->b = (struct end){.io = {.fd = b, .cb = io_cb}, .r = r};
    r->ab.pipe[0] = r->ab.pipe[1] = r->ba.pipe[0] = r->ba.pipe[1] = -1;
    r->free_task.cb = relay_free_cb;
    r->connect_timer.cb = connect_timeout_cb;
    r->connecting = b_connecting;
    if (pipe2(r->ab.pipe, O_NONBLOCK | O_CLOEXEC) < 0 || pipe2(r->ba.pipe, O_NONBLOCK | O_CLOEXEC) < 0)
        goto fail_r;
    if (b_connecting) timer_start(l, &r->connect_timer, CONNECT_TIMEOUT_MS);
    update(r);
    return r;
fail_r:
    close_dir(&r->ab);
    close_dir(&r->ba);
    free(r);
fail:
    close(a);
    close(b);
    return NULL;
}
