/* The C half of tests/e2e/test_grpc.py: zmesh's gRPC layer (src/h2/grpc.c) as a server or a client of the test
 * service in tests/grpc/echo.proto, talking to grpcio.
 *
 *   grpc_peer server PORT [--tls CERT KEY] [--max-recv N]
 *     Serves /zmesh.test.Echo/Echo (unary) and /zmesh.test.Echo/Chat (bidirectional) on 127.0.0.1:PORT and
 *     prints "listening" once it accepts, then one line per finished call: "end PATH STATUS MESSAGE", and
 *     for pushes the send queue refused ("blocked QUEUED_BYTES") and on_writable ("writable QUEUED_BYTES").
 *   grpc_peer client HOST:PORT unary|chat [--tls CA NAME] [--timeout-ms N] [--md NAME=VALUE]... [--text T]...
 *                    [--delay-ms N] [--fail CODE MESSAGE] [--push N] [--max-recv N] [--payload N]
 *     Makes one call (chat: one request per --text, then half-close) and prints "reply SEQ TEXT" per message
 *     and "status NAME MESSAGE" at the end; exits 0.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "core/loop.h"
#include "core/net.h"
#include "echo.pb-c.h"
#include "h2/grpc.h"

#define ECHO_PATH "/zmesh.test.Echo/Echo"
#define CHAT_PATH "/zmesh.test.Echo/Chat"

static struct loop *L;

static void die(const char *what)
{
    fprintf(stderr, "grpc_peer: %s\n", what);
    exit(2);
}

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                       unsigned inlen, void *arg)
{
    static const unsigned char h2[] = {2, 'h', '2'};
    if (SSL_select_next_proto((unsigned char **)out, outlen, h2, sizeof(h2), in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    return SSL_TLSEXT_ERR_OK;
}

/* ---- server ---- */

struct srv_call {
    struct grpc_call *c;
    char path[64];
    char **md;
    size_t n_md;
    struct timer t;
    Zmesh__Test__EchoRequest *req; /* unary: answered after delay_ms */
    unsigned push_left, seq;
    bool half_closed;
    uint8_t *push_payload;
    size_t push_payload_n;
};

/* Returns grpc_call_send's result. */
static int send_reply(struct srv_call *sc, const char *text, const uint8_t *payload, size_t pn, bool with_md)
{
    Zmesh__Test__EchoReply r = ZMESH__TEST__ECHO_REPLY__INIT;
    r.text = (char *)text;
    r.payload.data = (uint8_t *)payload;
    r.payload.len = pn;
    r.seq = sc->seq++;
    if (with_md) {
        r.metadata = sc->md;
        r.n_metadata = sc->n_md;
    }
    size_t n = zmesh__test__echo_reply__get_packed_size(&r);
    uint8_t *buf = malloc(n ? n : 1);
    zmesh__test__echo_reply__pack(&r, buf);
    int rc = grpc_call_send(sc->c, buf, n);
    if (rc == -EMSGSIZE)
        grpc_call_finish(sc->c, GRPC_STATUS_RESOURCE_EXHAUSTED, "reply over the limit", NULL, 0);
    free(buf);
    return rc;
}

/* Sends the pushes still due until the send queue is full ("blocked QUEUED" is printed, on_writable resumes)
 * or all are out; then a half-closed call is finished. Each push carries push_payload bytes. */
static void push_some(struct srv_call *sc)
{
    while (sc->push_left) {
        char text[32];
        snprintf(text, sizeof(text), "push %u", sc->seq);
        int rc = send_reply(sc, text, sc->push_payload, sc->push_payload_n, false);
        if (rc == -EAGAIN) {
            sc->seq--;
            printf("blocked %zu\n", grpc_call_queued(sc->c));
            fflush(stdout);
            return;
        }
        if (rc < 0) return;
        sc->push_left--;
    }
    if (sc->half_closed) grpc_call_finish(sc->c, GRPC_STATUS_OK, NULL, NULL, 0);
}

static void on_writable(struct grpc_call *c, void *ud)
{
    struct srv_call *sc = ud;
    printf("writable %zu\n", grpc_call_queued(c));
    fflush(stdout);
    push_some(sc);
}

static void answer_unary(struct srv_call *sc)
{
    Zmesh__Test__EchoRequest *q = sc->req;
    if (q->fail_code) {
        grpc_call_finish(sc->c, (enum grpc_status)q->fail_code, q->fail_message, NULL, 0);
        return;
    }
    send_reply(sc, q->text, q->payload.data, q->payload.len, true);
    static const uint8_t bin[] = {0, 1, 2, 0xff};
    const struct grpc_md tr[] = {{"x-trailer", (const uint8_t *)"done", 4}, {"x-trailer-bin", bin, 4}};
    grpc_call_finish(sc->c, GRPC_STATUS_OK, NULL, tr, 2);
}

static void srv_timer(struct timer *t)
{
    struct srv_call *sc = container_of(t, struct srv_call, t);
    if (sc->req) {
        answer_unary(sc);
        return;
    }
    push_some(sc);
}

static void srv_end(struct grpc_call *c, void *ud, const struct grpc_result *r)
{
    struct srv_call *sc = ud;
    printf("end %s %s %s\n", sc->path, grpc_status_to_str(r->status), r->message);
    fflush(stdout);
    timer_stop(L, &sc->t);
    for (size_t i = 0; i < sc->n_md; i++)
        free(sc->md[i]);
    free(sc->md);
    if (sc->req) zmesh__test__echo_request__free_unpacked(sc->req, NULL);
    free(sc->push_payload);
    free(sc);
}

static void chat_msg(struct grpc_call *c, void *ud, const uint8_t *p, size_t n)
{
    struct srv_call *sc = ud;
    Zmesh__Test__EchoRequest *q = zmesh__test__echo_request__unpack(NULL, n, p);
    if (!q) {
        grpc_call_finish(c, GRPC_STATUS_INTERNAL, "cannot parse the request", NULL, 0);
        return;
    }
    if (q->fail_code) {
        grpc_call_finish(c, (enum grpc_status)q->fail_code, q->fail_message, NULL, 0);
    } else if (q->push) {
        sc->push_left = q->push;
        free(sc->push_payload);
        sc->push_payload_n = q->payload.len;
        sc->push_payload = malloc(q->payload.len ? q->payload.len : 1);
        if (q->payload.len) memcpy(sc->push_payload, q->payload.data, q->payload.len);
        /* From a timer: pushes go out later, not in reply to a message. */
        timer_start(L, &sc->t, 1);
    } else {
        send_reply(sc, q->text, q->payload.data, q->payload.len, sc->seq == 0);
    }
    zmesh__test__echo_request__free_unpacked(q, NULL);
}

static void chat_half_close(struct grpc_call *c, void *ud)
{
    struct srv_call *sc = ud;
    /* Pushes still due go out first; push_some finishes the call after the last. */
    sc->half_closed = true;
    if (!sc->push_left) grpc_call_finish(c, GRPC_STATUS_OK, NULL, NULL, 0);
}

static const struct grpc_call_ops unary_ops = {.on_end = srv_end};
static const struct grpc_call_ops chat_ops = {
    .on_message = chat_msg, .on_half_close = chat_half_close, .on_writable = on_writable, .on_end = srv_end};

static struct srv_call *srv_call_new(struct grpc_call *c, const struct grpc_call_info *info)
{
    struct srv_call *sc = calloc(1, sizeof(*sc));
    sc->c = c;
    snprintf(sc->path, sizeof(sc->path), "%s", info->path);
    sc->t.cb = srv_timer;
    sc->md = calloc(info->n_md + 2, sizeof(char *));
    for (size_t i = 0; i < info->n_md; i++) {
        const struct grpc_md *m = &info->md[i];
        size_t nl = strlen(m->name);
        char *s = malloc(nl + 2 + 2 * m->len + 1);
        if (grpc_md_is_bin(m->name, nl)) {
            int o = sprintf(s, "%s=", m->name);
            for (size_t k = 0; k < m->len; k++)
                o += sprintf(s + o, "%02x", m->value[k]);
        } else {
            sprintf(s, "%s=%.*s", m->name, (int)m->len, (const char *)m->value);
        }
        sc->md[sc->n_md++] = s;
    }
    if (info->authority[0]) {
        char *s = malloc(strlen(info->authority) + 16);
        sprintf(s, ":authority=%s", info->authority);
        sc->md[sc->n_md++] = s;
    }
    if (info->timeout_ns != UINT64_MAX) {
        char *s = malloc(48);
        sprintf(s, "timeout_ms=%llu", (unsigned long long)grpc_timeout_ms(info->timeout_ns));
        sc->md[sc->n_md++] = s;
    }
    return sc;
}

static void on_echo(struct grpc_call *c, void *ud, const struct grpc_call_info *info)
{
    struct srv_call *sc = srv_call_new(c, info);
    grpc_call_set_ops(c, &unary_ops, sc);
    sc->req = zmesh__test__echo_request__unpack(NULL, info->request_len, info->request);
    if (!sc->req) {
        grpc_call_finish(c, GRPC_STATUS_INTERNAL, "cannot parse the request", NULL, 0);
        return;
    }
    if (sc->req->delay_ms)
        timer_start(L, &sc->t, sc->req->delay_ms);
    else
        answer_unary(sc);
}

static void on_chat(struct grpc_call *c, void *ud, const struct grpc_call_info *info)
{
    struct srv_call *sc = srv_call_new(c, info);
    grpc_call_set_ops(c, &chat_ops, sc);
}

struct listener {
    struct io io;
    struct grpc_server *srv;
    SSL_CTX *ctx;
};

static void on_accept(struct io *io, uint32_t ev)
{
    struct listener *ls = container_of(io, struct listener, io);
    for (;;) {
        int fd = accept4(io->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) return;
        net_set_nodelay(fd);
        grpc_server_serve(ls->srv, fd, ls->ctx);
    }
}

static int run_server(int argc, char **argv)
{
    if (argc < 3) die("usage: server PORT [--tls CERT KEY] [--max-recv N]");
    struct grpc_opts o = {0};
    SSL_CTX *ctx = NULL;
    for (int i = 3; i < argc; i++) {
        if (!strcmp(argv[i], "--tls") && i + 2 < argc) {
            ctx = SSL_CTX_new(TLS_server_method());
            SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
            if (SSL_CTX_use_certificate_chain_file(ctx, argv[i + 1]) != 1 ||
                SSL_CTX_use_PrivateKey_file(ctx, argv[i + 2], SSL_FILETYPE_PEM) != 1)
                die("cannot load the server certificate");
            SSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);
            i += 2;
        } else if (!strcmp(argv[i], "--max-recv") && i + 1 < argc) {
            o.max_recv = (uint32_t)strtoul(argv[++i], NULL, 10);
        } else {
            die("unknown server option");
        }
    }
    struct listener ls = {.ctx = ctx};
    ls.srv = grpc_server_new(L, &o);
    if (grpc_server_add(ls.srv, ECHO_PATH, GRPC_UNARY, on_echo, NULL) < 0 ||
        grpc_server_add(ls.srv, CHAT_PATH, GRPC_STREAMING, on_chat, NULL) < 0)
        die("cannot register the methods");
    int fd = net_listen_local((uint16_t)atoi(argv[2]), 64);
    if (fd < 0) die("cannot listen");
    ls.io.fd = fd;
    ls.io.cb = on_accept;
    loop_io_add(L, &ls.io, EPOLLIN);
    printf("listening\n");
    fflush(stdout);
    return loop_run(L);
}

/* ---- client ---- */

static void cli_msg(struct grpc_call *c, void *ud, const uint8_t *p, size_t n)
{
    Zmesh__Test__EchoReply *r = zmesh__test__echo_reply__unpack(NULL, n, p);
    if (!r) {
        printf("reply unparsable\n");
        return;
    }
    printf("reply %u %s", r->seq, r->text);
    for (size_t i = 0; i < r->n_metadata; i++)
        printf(" [%s]", r->metadata[i]);
    if (r->payload.len) printf(" payload=%zu", r->payload.len);
    printf("\n");
    zmesh__test__echo_reply__free_unpacked(r, NULL);
}

static void cli_end(struct grpc_call *c, void *ud, const struct grpc_result *r)
{
    for (size_t i = 0; i < r->n_trailers; i++) {
        const struct grpc_md *m = &r->trailers[i];
        printf("trailer %s=", m->name);
        if (grpc_md_is_bin(m->name, strlen(m->name)))
            for (size_t k = 0; k < m->len; k++)
                printf("%02x", m->value[k]);
        else
            printf("%.*s", (int)m->len, (const char *)m->value);
        printf("\n");
    }
    printf("status %s %s\n", grpc_status_to_str(r->status), r->message);
    fflush(stdout);
    loop_stop(L);
}

static void stop_loop(struct timer *t)
{
    loop_stop(L);
}

static const struct grpc_call_ops cli_ops = {.on_message = cli_msg, .on_end = cli_end};

static int run_client(int argc, char **argv)
{
    if (argc < 4) die("usage: client HOST:PORT unary|chat [options]");
    struct grpc_opts o = {0};
    struct grpc_call_opts co = {0};
    struct grpc_md md[16];
    size_t n_md = 0;
    const char *texts[64];
    size_t n_text = 0;
    SSL_CTX *ctx = NULL;
    const char *names[1];
    struct h2_peer peer = {0};
    Zmesh__Test__EchoRequest q = ZMESH__TEST__ECHO_REQUEST__INIT;
    size_t payload = 0;
    for (int i = 4; i < argc; i++) {
        if (!strcmp(argv[i], "--tls") && i + 2 < argc) {
            ctx = SSL_CTX_new(TLS_client_method());
            SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
            if (SSL_CTX_load_verify_locations(ctx, argv[i + 1], NULL) != 1) die("cannot load the CA");
            SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
            static const unsigned char h2[] = {2, 'h', '2'};
            SSL_CTX_set_alpn_protos(ctx, h2, sizeof(h2));
            names[0] = argv[i + 2];
            peer.expected = names;
            peer.n_expected = 1;
            i += 2;
        } else if (!strcmp(argv[i], "--timeout-ms") && i + 1 < argc) {
            co.timeout_ms = strtoull(argv[++i], NULL, 10);
        } else if (!strcmp(argv[i], "--md") && i + 1 < argc && n_md < 16) {
            char *eq = strchr(argv[++i], '=');
            if (!eq) die("--md NAME=VALUE");
            *eq = 0;
            md[n_md++] = (struct grpc_md){argv[i], (const uint8_t *)eq + 1, strlen(eq + 1)};
        } else if (!strcmp(argv[i], "--text") && i + 1 < argc && n_text < 64) {
            texts[n_text++] = argv[++i];
        } else if (!strcmp(argv[i], "--delay-ms") && i + 1 < argc) {
            q.delay_ms = (uint32_t)strtoul(argv[++i], NULL, 10);
        } else if (!strcmp(argv[i], "--fail") && i + 2 < argc) {
            q.fail_code = atoi(argv[i + 1]);
            q.fail_message = argv[i + 2];
            i += 2;
        } else if (!strcmp(argv[i], "--push") && i + 1 < argc) {
            q.push = (uint32_t)strtoul(argv[++i], NULL, 10);
        } else if (!strcmp(argv[i], "--max-recv") && i + 1 < argc) {
            o.max_recv = (uint32_t)strtoul(argv[++i], NULL, 10);
        } else if (!strcmp(argv[i], "--payload") && i + 1 < argc) {
            payload = strtoull(argv[++i], NULL, 10);
        } else {
            die("unknown client option");
        }
    }
    co.md = md;
    co.n_md = n_md;
    char host[64];
    snprintf(host, sizeof(host), "%s", argv[2]);
    char *colon = strrchr(host, ':');
    if (!colon) die("HOST:PORT");
    *colon = 0;
    struct ip_addr ip;
    if (ip_parse(host, &ip) < 0) die("HOST must be an IP literal");
    struct sockaddr_storage ss;
    sockaddr_from(&ss, &ip, (uint16_t)atoi(colon + 1));
    struct grpc_channel *ch = grpc_channel_dial(L, &ss, ctx, &peer, argv[2], &o);
    if (!ch) die("cannot make a socket");
    uint8_t *pl = payload ? calloc(1, payload) : NULL;
    q.payload.data = pl;
    q.payload.len = payload;
    int err = 0;
    struct grpc_call *c;
    if (!strcmp(argv[3], "unary")) {
        q.text = n_text ? (char *)texts[0] : (char *)"";
        size_t n = zmesh__test__echo_request__get_packed_size(&q);
        uint8_t *buf = malloc(n ? n : 1);
        zmesh__test__echo_request__pack(&q, buf);
        c = grpc_call_unary(ch, ECHO_PATH, &co, buf, n, &cli_ops, NULL, &err);
        free(buf);
    } else {
        c = grpc_call_start(ch, CHAT_PATH, &co, &cli_ops, NULL, &err);
        for (size_t t = 0; c && t < n_text; t++) {
            Zmesh__Test__EchoRequest m = ZMESH__TEST__ECHO_REQUEST__INIT;
            m.text = (char *)texts[t];
            size_t n = zmesh__test__echo_request__get_packed_size(&m);
            uint8_t buf[512];
            if (n > sizeof(buf)) die("text too long");
            zmesh__test__echo_request__pack(&m, buf);
            if (grpc_call_send(c, buf, n) < 0) die("send refused");
        }
        if (c && (q.fail_code || q.push || q.delay_ms)) {
            size_t n = zmesh__test__echo_request__get_packed_size(&q);
            uint8_t *buf = malloc(n ? n : 1);
            zmesh__test__echo_request__pack(&q, buf);
            grpc_call_send(c, buf, n);
            free(buf);
        }
        /* With a deadline the client keeps its side open, so that only the deadline ends the call. */
        if (c && !co.timeout_ms) grpc_call_close_send(c);
    }
    if (!c) {
        printf("status %s call refused (%s)\n", err == -EPIPE ? "UNAVAILABLE" : "INTERNAL", strerror(-err));
        return 0;
    }
    loop_run(L);
    /* What the end queued (a RST_STREAM CANCEL at the deadline) is flushed from the loop's tasks; so is the
     * connection's free, before the context goes. */
    struct timer t = {.cb = stop_loop};
    timer_start(L, &t, 10);
    loop_run(L);
    grpc_channel_free(ch);
    timer_start(L, &t, 10);
    loop_run(L);
    if (ctx) SSL_CTX_free(ctx);
    free(pl);
    loop_free(L);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) die("usage: grpc_peer server|client ...");
    L = loop_new();
    if (!L) die("no loop");
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (!strcmp(argv[1], "server")) return run_server(argc, argv);
    if (!strcmp(argv[1], "client")) return run_client(argc, argv);
    die("usage: grpc_peer server|client ...");
    return 2;
}
