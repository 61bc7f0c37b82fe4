/* libFuzzer target for the gRPC server (src/h2/grpc.c) on the h2c session, driven through its public API.
 *
 * Each input is a fresh h2c connection served by grpc_server_serve on one end of a socketpair; the fuzzer
 * side writes the client preface and then the input bytes (a client's HTTP/2 frames), so hostile requests
 * (methods, content-types, te, grpc-timeout, -bin metadata), DATA with broken length prefixes, compressed
 * flags, oversized messages (the limit is 4 KiB here), END_STREAM in odd places and resets reach every path
 * of the layer. Handlers by path: /t.S/Echo (unary: one reply, then OK with trailing metadata), /t.S/Chat
 * (streaming: echoes each message, pushes until the send queue refuses, finishes at half-close), /t.S/Hold
 * (streaming: never answers; only a deadline, a reset or the connection's end finish it). The client then
 * closes; the server must close the connection and end every call.
 *
 * Invariants (abort on violation): on_end exactly once per call a handler saw, never a message after it;
 * unary handlers get exactly one request; the connection count returns to 0. LSan checks that every call,
 * chunk and buffer is freed.
 *
 * Seeds: tests/fuzz/corpus/fuzz_grpc_server/, made by tests/fuzz/grpc_seeds.py (python3-h2). */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/log.h"
#include "core/loop.h"
#include "h2/grpc.h"

static struct loop *L;
static struct timer step_timer;
static struct grpc_server *srv;
static int calls, ends;

struct fz_call {
    struct grpc_call *c;
    bool ended, pushing;
};

static void step_cb(struct timer *t)
{
    (void)t;
    loop_stop(L);
}

static void step(void)
{
    timer_start(L, &step_timer, 0);
    loop_run(L);
}

static void fz_end(struct grpc_call *c, void *ud, const struct grpc_result *r)
{
    struct fz_call *fc = ud;
    if (fc->ended || !r->message || (unsigned)r->status > GRPC_STATUS_MAX) abort();
    fc->ended = true;
    ends++;
    free(fc);
}

static void fz_msg(struct grpc_call *c, void *ud, const uint8_t *p, size_t n)
{
    struct fz_call *fc = ud;
    if (fc->ended) abort();
    grpc_call_send(c, p, n);
    if (n && p[0] == 'P') {
        /* Push until refused: the queue's bound, then on_writable. */
        static const uint8_t blob[1000];
        fc->pushing = true;
        while (grpc_call_send(c, blob, sizeof(blob)) == 0) {
        }
    }
}

static void fz_writable(struct grpc_call *c, void *ud)
{
    struct fz_call *fc = ud;
    if (fc->ended) abort();
    static const uint8_t blob[1000];
    for (int i = 0; i < 4; i++)
        grpc_call_send(c, blob, sizeof(blob));
}

static void fz_half(struct grpc_call *c, void *ud)
{
    (void)ud;
    grpc_call_finish(c, GRPC_STATUS_OK, "bye", NULL, 0);
}

static const struct grpc_call_ops unary_ops = {.on_end = fz_end};
static const struct grpc_call_ops chat_ops = {
    .on_message = fz_msg, .on_half_close = fz_half, .on_writable = fz_writable, .on_end = fz_end};
static const struct grpc_call_ops hold_ops = {.on_end = fz_end};

static struct fz_call *start(struct grpc_call *c, const struct grpc_call_ops *ops)
{
    struct fz_call *fc = calloc(1, sizeof(*fc));
    if (!fc) abort();
    fc->c = c;
    calls++;
    grpc_call_set_ops(c, ops, fc);
    return fc;
}

static void h_echo(struct grpc_call *c, void *ud, const struct grpc_call_info *info)
{
    (void)ud;
    start(c, &unary_ops);
    if (!info->request && info->request_len) abort();
    grpc_call_send(c, info->request, info->request_len);
    const struct grpc_md md = {"x-bin", (const uint8_t *)"\x00\x01", 2};
    grpc_call_finish(c, GRPC_STATUS_OK, NULL, &md, 1);
}

static void h_chat(struct grpc_call *c, void *ud, const struct grpc_call_info *info)
{
    (void)ud, (void)info;
    start(c, &chat_ops);
}

static void h_hold(struct grpc_call *c, void *ud, const struct grpc_call_info *info)
{
    (void)ud, (void)info;
    start(c, &hold_ops);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    log_set_level("error");
    signal(SIGPIPE, SIG_IGN);
    L = loop_new();
    if (!L) abort();
    step_timer.cb = step_cb;
    srv = grpc_server_new(L, &(struct grpc_opts){.max_recv = 4096, .send_queue_max = 8192});
    if (!srv || grpc_server_add(srv, "/t.S/Echo", GRPC_UNARY, h_echo, NULL) ||
        grpc_server_add(srv, "/t.S/Chat", GRPC_STREAMING, h_chat, NULL) ||
        grpc_server_add(srv, "/t.S/Hold", GRPC_STREAMING, h_hold, NULL))
        abort();
    return 0;
}

static void drain_client(int fd)
{
    uint8_t buf[16384];
    while (recv(fd, buf, sizeof(buf), MSG_DONTWAIT) > 0) {
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    int sv[2];
    calls = ends = 0;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0) abort();
    if (grpc_server_serve(srv, sv[0], NULL) < 0) abort();
    size_t total = sizeof(preface) - 1 + size, off = 0;
    uint8_t *msg = malloc(total);
    if (!msg) abort();
    memcpy(msg, preface, sizeof(preface) - 1);
    if (size) memcpy(msg + sizeof(preface) - 1, data, size);
    for (int i = 0; i < 1000 && off < total && grpc_server_conns(srv); i++) {
        ssize_t w = send(sv[1], msg + off, total - off, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w > 0)
            off += (size_t)w;
        else if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            break;
        step();
        drain_client(sv[1]);
    }
    free(msg);
    for (int i = 0; i < 20 && grpc_server_conns(srv); i++) {
        step();
        drain_client(sv[1]);
    }
    close(sv[1]);
    for (int i = 0; i < 50 && grpc_server_conns(srv); i++)
        step();
    if (grpc_server_conns(srv)) abort();
    step(); /* deferred frees */
    step();
    if (ends != calls) abort();
    return 0;
}
