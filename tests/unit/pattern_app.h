/* A test "app" shared by the relay and HBONE unit tests: one end of a socket pair that sends a byte pattern,
 * checks the pattern it receives, and can half-close. The including file defines `static struct loop *L`
 * (the loop the app registers with) before including this header. */
#pragma once
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/loop.h"

/* Byte i of pattern dir: different per direction, so crossed streams are caught. */
static inline uint8_t pat(int dir, uint64_t i)
{
    return (uint8_t)(i * 7 + (i >> 11) * 13 + (uint64_t)dir * 101);
}

struct app {
    struct io io;
    bool used, registered;
    int dir_out, dir_in; /* pattern ids for what we send and what we expect */
    uint64_t to_send, sent, recvd;
    uint64_t extra_after_eof; /* appended to to_send when EOF is read (a reply after the half-close) */
    bool shut_after_eof;      /* send FIN only once EOF was read (and everything sent) */
    bool eof, shut, bad;
    bool paused;              /* does not read (back-pressure tests) */
    int err;                  /* errno from recv/send, if any */
    int peer_done_at_eof;     /* *peer_done when this app read EOF */
    const int *peer_done;
};

static inline void app_update(struct app *a)
{
    uint32_t ev = 0;
    if (!a->eof && !a->err && !a->paused) ev |= EPOLLIN;
    if (a->sent < a->to_send && !a->err) ev |= EPOLLOUT;
    if (!ev) {
        if (a->registered) loop_io_del(L, &a->io);
        a->registered = false;
        return;
    }
    if (!a->registered) {
        if (loop_io_add(L, &a->io, ev) == 0) a->registered = true;
        return;
    }
    loop_io_mod(L, &a->io, ev);
}

static inline void app_maybe_shut(struct app *a)
{
    if (a->shut || a->sent < a->to_send) return;
    if (a->shut_after_eof && !a->eof) return;
    shutdown(a->io.fd, SHUT_WR);
    a->shut = true;
}

static inline void app_cb(struct io *io, uint32_t ev)
{
    struct app *a = container_of(io, struct app, io);
    static uint8_t buf[65536];
    if ((ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) && !a->paused) {
        for (;;) {
            ssize_t n = recv(io->fd, buf, sizeof(buf), 0);
            if (n > 0) {
                for (ssize_t i = 0; i < n; i++)
                    if (buf[i] != pat(a->dir_in, a->recvd + (uint64_t)i)) a->bad = true;
                a->recvd += (uint64_t)n;
                continue;
            }
            if (n == 0) {
                a->eof = true;
                a->to_send += a->extra_after_eof;
                if (a->peer_done) a->peer_done_at_eof = *a->peer_done;
            } else if (errno != EAGAIN) {
                a->err = errno;
            }
            break;
        }
    }
    while (a->sent < a->to_send && !a->err) {
        size_t n = a->to_send - a->sent < sizeof(buf) ? (size_t)(a->to_send - a->sent) : sizeof(buf);
        for (size_t i = 0; i < n; i++) buf[i] = pat(a->dir_out, a->sent + i);
        ssize_t w = send(io->fd, buf, n, MSG_NOSIGNAL);
        if (w > 0) {
            a->sent += (uint64_t)w;
            continue;
        }
        if (w < 0 && errno != EAGAIN) a->err = errno;
        break;
    }
    app_maybe_shut(a);
    app_update(a);
}

/* Sets an app up on fd; adjust its options, then app_go. */
static inline void app_init(struct app *a, int fd, int dir_out, int dir_in, uint64_t to_send)
{
    memset(a, 0, sizeof(*a));
    a->used = true;
    a->io.fd = fd;
    a->io.cb = app_cb;
    a->dir_out = dir_out;
    a->dir_in = dir_in;
    a->to_send = to_send;
}

/* Starts (or re-kicks after changing to_send, shut_after_eof or paused) an app. */
static inline void app_go(struct app *a)
{
    app_cb(&a->io, 0);
}

static inline void app_start(struct app *a, int fd, int dir_out, int dir_in, uint64_t to_send)
{
    app_init(a, fd, dir_out, dir_in, to_send);
    app_go(a);
}

static inline void app_close(struct app *a)
{
    if (!a->used) return;
    if (a->registered) loop_io_del(L, &a->io);
    a->registered = false;
    close(a->io.fd);
    a->used = false;
}
