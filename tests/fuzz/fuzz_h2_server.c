/* libFuzzer target for the generic HTTP/2 session's server role (src/h2/session.c) over h2c, driven through
 * its public API only.
 *
 * What it covers: each input is a fresh h2c server connection (h2_server_new with no TLS context on one end
 * of a socketpair); the fuzzer side writes the client preface followed by the input bytes, so the input
 * reaches nghttp2 and every session callback (requests and their header limits, DATA to a user that consumes
 * or holds it, trailers, RST_STREAM, GOAWAY, PING, SETTINGS, window updates, errors) at the speed of h2c (no
 * handshake per run). The stream user answers by :path: "/hold" gets a response whose body is pulled in small
 * pieces while it never consumes the request's DATA (the window and the held bytes must be returned when the
 * stream ends), "/reset" is reset, "/none" gets a 404 without a body, anything else a 200 with a body and
 * trailers. The client then closes; the server must close the conn, end every stream it created, and free
 * everything (ASan/LSan). Checked invariants (abort on violation): on_closed exactly once, one on_end per
 * on_stream, on_request at most once per stream and never after its end, no more open streams than the
 * advertised limit. What it does not cover: TLS (fuzz_hbone_server does) and the client role.
 *
 * Built and run by `make fuzz` (see tests/fuzz/README.md). The input is what follows the 24-byte preface, so
 * a seed is a client's frames; the seeds in tests/fuzz/corpus/fuzz_h2_server/ are those of fuzz_hbone_server
 * (python3-h2, see hbone_seeds.py). */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <nghttp2/nghttp2.h>

#include "core/log.h"
#include "core/loop.h"
#include "h2/session.h"

#define MAX_STREAMS 50
#define BODY_LEN 3000

static struct loop *L;
static struct timer step_timer;
static int closed_calls, streams, requests, ends;
static uint8_t body[BODY_LEN];

struct fz_stream {
    bool hold, requested, ended;
    size_t off;
};

static void step_cb(struct timer *t)
{
    (void)t;
    loop_stop(L);
}

/* One loop iteration: tasks, a non-blocking epoll_wait, callbacks, tasks, due timers. */
static void step(void)
{
    timer_start(L, &step_timer, 0);
    loop_run(L);
}

static size_t fz_pull(struct h2_stream *s, void *ud, const uint8_t **data, bool *eof)
{
    (void)s;
    struct fz_stream *fs = ud;
    size_t n = BODY_LEN - fs->off;
    if (fs->hold && n > 100) n = 100; /* small pieces: many pulls per body */
    *data = body + fs->off;
    *eof = fs->off + n == BODY_LEN;
    return n;
}

static void fz_sent(struct h2_stream *s, void *ud, size_t n)
{
    (void)s;
    struct fz_stream *fs = ud;
    fs->off += n;
    if (fs->off > BODY_LEN) abort();
}

static void fz_data(struct h2_stream *s, void *ud, const uint8_t *data, size_t len)
{
    (void)data;
    if (!((struct fz_stream *)ud)->hold) h2_stream_consume(s, len);
}

static void fz_end(struct h2_stream *s, void *ud, const struct h2_end *e)
{
    (void)s;
    struct fz_stream *fs = ud;
    if (fs->ended || (e->reason != H2_END_OK && !e->detail)) abort();
    fs->ended = true;
    ends++;
}

static const struct h2_stream_ops stream_ops = {
    .on_data = fz_data, .pull = fz_pull, .sent = fz_sent, .on_end = fz_end};

static void on_stream(struct h2_conn *c, void *ud, struct h2_stream *s)
{
    (void)c, (void)ud;
    streams++;
    h2_stream_set_ops(s, &stream_ops, h2_stream_user(s));
}

static void on_request(struct h2_stream *s, void *ud, const struct h2_request *req)
{
    (void)ud;
    struct fz_stream *fs = h2_stream_user(s);
    if (fs->requested || fs->ended) abort();
    fs->requested = true;
    requests++;
    if (strcmp(req->path, "/reset") == 0) {
        h2_stream_end(s, H2_END_LOCAL, NGHTTP2_CANCEL, "fuzz reset");
        return;
    }
    if (strcmp(req->path, "/none") == 0) {
        h2_stream_respond(s, 404, NULL, 0, 0);
        return;
    }
    fs->hold = strcmp(req->path, "/hold") == 0;
    struct h2_header h[] = {{"content-type", "application/octet-stream"}};
    struct h2_header t[] = {{"grpc-status", "0"}};
    if (h2_stream_respond(s, 200, h, 1, H2_BODY) == 0) h2_stream_trailers(s, t, 1);
}

static void on_closed(struct h2_conn *c, void *ud, const struct h2_end *e)
{
    (void)c, (void)ud;
    if (e->reason != H2_END_OK && !e->detail) abort();
    closed_calls++;
}

static const struct h2_conn_ops conn_ops = {
    .on_closed = on_closed, .on_stream = on_stream, .on_request = on_request};

static const struct h2_settings settings = {
    .log_name = "fuzz",
    .max_concurrent_streams = MAX_STREAMS,
    .max_open_streams = 100,
    .stream_window = 65535,
    .stream_window_max = 1u << 20,
    .conn_window = 1u << 18,
    .conn_window_max = 1u << 22,
    .max_frame = 1u << 16,
    .max_header_list = 64 * 1024,
    .max_headers = 64,
    .max_header_bytes = 64 * 1024,
    .ping_interval_ms = 10000,
    .ping_timeout_ms = 20000,
    .handshake_timeout_ms = 10000,
    .max_unanswered = 8,
    .early_reset_burst = 20,
    .early_reset_rate = 1,
    .linger_ms = 10,
    .stream_user_size = sizeof(struct fz_stream),
};

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    log_set_level("error");
    signal(SIGPIPE, SIG_IGN);
    for (size_t i = 0; i < BODY_LEN; i++)
        body[i] = (uint8_t)i;
    L = loop_new();
    if (!L) abort();
    step_timer.cb = step_cb;
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
    closed_calls = streams = requests = ends = 0;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0) abort();
    struct h2_conn *c = h2_server_new(L, sv[0], NULL, &settings, &conn_ops, NULL);
    if (!c) abort();
    size_t total = sizeof(preface) - 1 + size, off = 0;
    uint8_t *msg = malloc(total);
    if (!msg) abort();
    memcpy(msg, preface, sizeof(preface) - 1);
    if (size) memcpy(msg + sizeof(preface) - 1, data, size);
    for (int i = 0; i < 1000 && off < total && closed_calls == 0; i++) {
        ssize_t w = send(sv[1], msg + off, total - off, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w > 0)
            off += (size_t)w;
        else if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            break; /* the server went away */
        step();
        drain_client(sv[1]);
    }
    free(msg);
    for (int i = 0; i < 20 && closed_calls == 0; i++) {
        step();
        drain_client(sv[1]);
        if (h2_conn_streams(c) > MAX_STREAMS) abort();
    }
    /* The client leaves: the server sees EOF and must wind everything down by itself. */
    close(sv[1]);
    for (int i = 0; i < 50 && closed_calls == 0; i++)
        step();
    if (closed_calls == 0) abort(); /* a conn that ignores its peer's EOF would leak in production */
    step();                         /* deferred frees */
    step();
    if (closed_calls != 1 || ends != streams || requests > streams) abort();
    return 0;
}
