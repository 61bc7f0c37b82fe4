/* libFuzzer target for the node agent's ZDS server (src/cni/zds_server.c): what ztunnel sends it (the hello,
 * answers, anything unsolicited) and the state machine of queued Adds and Dels over several connections. The
 * fuzzer plays ztunnel over real SOCK_SEQPACKET connections to the server's socket and drives the server's API;
 * the loop runs between steps.
 *
 * Checked besides memory safety, leaks and UB: every Add's done callback runs at most once, and exactly once by
 * the end of the input (ztunnel's connections are closed then); every packet the server sends is a
 * WorkloadRequest of at most 1024 bytes, an Add carries exactly one fd (a network namespace) and nothing else
 * does; the server's connection count drops to zero once the fuzzer's ends are closed; no fd leaks (the lowest
 * free fd is the same after each input).
 *
 * Input: records, an opcode byte o and its operands; o % 7 picks:
 *   0  raw packet on the newest connection: 1 byte of length, then that many bytes
 *   1  an Ack on the newest connection: 1 byte, 0 = empty error, else a NACK
 *   2  a hello on the newest connection: 1 byte, version = b % 3
 *   3  a new connection (at most 4)
 *   4  the server's add (b & 4 clear) or del of uid "uid-" + (b & 3): 1 byte
 *   5  run the loop (drain what the server sent)
 *   6  close the oldest connection
 * Seeds: corpus/fuzz_zds_server/ (a hello and a snapshot acked, two connections with an Add and a Del). */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "cni/zds_server.h"
#include "core/log.h"
#include "core/loop.h"
#include "zds.pb-c.h"

#define PEERS_MAX 4
#define DONES_MAX 64

static struct {
    struct loop *l;
    struct zds_server *s;
    char path[108];
    int netns;
    int peers[PEERS_MAX];
    int npeers;
    int dones[DONES_MAX]; /* calls per issued Add */
    int ndones;
    struct timer stop;
} F;

static void on_done(void *ud, int status, const char *error)
{
    int i = (int)(intptr_t)ud;
    if (i < 0 || i >= F.ndones) abort();
    if (++F.dones[i] > 1) abort();
    if (status != 0 && status != -EPROTO && status != -ETIMEDOUT && status != -ECONNRESET &&
        status != -ECANCELED && status != -EMSGSIZE)
        abort();
    if ((status == -EPROTO) != (error && error[0])) abort();
}

static void stop_cb(struct timer *t)
{
    loop_stop(F.l);
}

static void run_loop(void)
{
    for (int i = 0; i < 3; i++) {
        timer_start(F.l, &F.stop, 0);
        loop_run(F.l);
    }
}

/* Reads and checks everything the server sent on fd. */
static void drain(int fd)
{
    for (;;) {
        uint8_t buf[2048];
        union {
            char b[CMSG_SPACE(sizeof(int) * 8)];
            struct cmsghdr align;
        } cb;
        struct iovec iov = {.iov_base = buf, .iov_len = sizeof buf};
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cb.b, .msg_controllen = sizeof cb.b};
        ssize_t n = recvmsg(fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (n <= 0) return;
        int nfds = 0;
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
            int k = (int)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            for (int i = 0; i < k; i++) {
                int x;
                memcpy(&x, CMSG_DATA(cm) + i * sizeof(int), sizeof x);
                struct stat sb;
                if (fstat(x, &sb) < 0) abort();
                close(x);
            }
            nfds += k;
        }
        if (n > 1024 || (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC))) abort();
        Istio__Workload__Zds__WorkloadRequest *r =
            istio__workload__zds__workload_request__unpack(NULL, (size_t)n, buf);
        if (!r) abort();
        bool add = r->payload_case == ISTIO__WORKLOAD__ZDS__WORKLOAD_REQUEST__PAYLOAD_ADD;
        if (add != (nfds == 1) || nfds > 1) abort();
        if (r->payload_case == ISTIO__WORKLOAD__ZDS__WORKLOAD_REQUEST__PAYLOAD_KEEP) abort(); /* never sent */
        istio__workload__zds__workload_request__free_unpacked(r, NULL);
    }
}

static void send_bytes(const void *p, size_t n)
{
    if (!F.npeers) return;
    ssize_t w = send(F.peers[F.npeers - 1], p, n, MSG_DONTWAIT | MSG_NOSIGNAL);
    (void)w; /* a closed or full connection is part of what is fuzzed */
}

static int lowest_free_fd(void)
{
    int fd = dup(0);
    if (fd >= 0) close(fd);
    return fd;
}

/* libFuzzer ends with exit(): the socket and its directory go with it. */
static void cleanup(void)
{
    zds_server_free(F.s);
    char dir[sizeof F.path];
    snprintf(dir, sizeof dir, "%s", F.path);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = '\0';
    rmdir(dir);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!F.l) {
        log_init("off", false);
        F.l = loop_new();
        F.stop.cb = stop_cb;
        snprintf(F.path, sizeof F.path, "/tmp/zmesh-fuzz-zdss-%d/zds.sock", (int)getpid());
        if (zds_server_new(F.l, F.path, &F.s) < 0) abort();
        F.netns = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
        if (F.netns < 0) abort();
        atexit(cleanup);
    }
    int fd0 = lowest_free_fd();
    F.ndones = 0;
    memset(F.dones, 0, sizeof F.dones);
    size_t i = 0;
    while (i < size) {
        uint8_t o = data[i++];
        uint8_t b = i < size ? data[i] : 0;
        switch (o % 7) {
        case 0: {
            if (i >= size) break;
            size_t n = data[i++];
            if (n > size - i) n = size - i;
            send_bytes(data + i, n);
            i += n;
            break;
        }
        case 1: {
            i++;
            Istio__Workload__Zds__WorkloadResponse resp = ISTIO__WORKLOAD__ZDS__WORKLOAD_RESPONSE__INIT;
            Istio__Workload__Zds__Ack ack = ISTIO__WORKLOAD__ZDS__ACK__INIT;
            ack.error = b ? "failure to start proxy : fuzzed" : "";
            resp.payload_case = ISTIO__WORKLOAD__ZDS__WORKLOAD_RESPONSE__PAYLOAD_ACK;
            resp.ack = &ack;
            uint8_t buf[128];
            send_bytes(buf, istio__workload__zds__workload_response__pack(&resp, buf));
            break;
        }
        case 2: {
            i++;
            Istio__Workload__Zds__ZdsHello h = ISTIO__WORKLOAD__ZDS__ZDS_HELLO__INIT;
            h.version = b % 3;
            uint8_t buf[16];
            send_bytes(buf, istio__workload__zds__zds_hello__pack(&h, buf));
            break;
        }
        case 3: {
            if (F.npeers == PEERS_MAX) break;
            int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
            struct sockaddr_un sun = {.sun_family = AF_UNIX};
            memcpy(sun.sun_path, F.path, strlen(F.path) + 1);
            if (fd < 0 || connect(fd, (struct sockaddr *)&sun, sizeof sun) < 0) abort();
            F.peers[F.npeers++] = fd;
            run_loop();
            break;
        }
        case 4: {
            i++;
            char uid[8];
            snprintf(uid, sizeof uid, "uid-%d", b & 3);
            if (b & 4) {
                zds_server_del(F.s, uid);
            } else if (F.ndones < DONES_MAX) {
                int k = F.ndones++;
                int r = zds_server_add(F.s, uid, "name", "ns", "sa", F.netns, on_done, (void *)(intptr_t)k);
                if (r == -ENOTCONN) F.dones[k] = 1; /* not queued: done is not called */
                else if (r != 0) abort();
            }
            break;
        }
        case 5:
            run_loop();
            for (int p = 0; p < F.npeers; p++)
                drain(F.peers[p]);
            break;
        case 6:
            if (!F.npeers) break;
            close(F.peers[0]);
            memmove(F.peers, F.peers + 1, sizeof F.peers[0] * (size_t)--F.npeers);
            run_loop();
            break;
        }
    }
    for (int p = 0; p < F.npeers; p++) {
        drain(F.peers[p]);
        close(F.peers[p]);
    }
    F.npeers = 0;
    run_loop();
    struct zds_server_stats st;
    zds_server_stats(F.s, &st);
    if (st.connections != 0) abort();
    for (int k = 0; k < F.ndones; k++)
        if (F.dones[k] != 1) abort();
    for (int u = 0; u < 4; u++) {
        char uid[8];
        snprintf(uid, sizeof uid, "uid-%d", u);
        zds_server_del(F.s, uid);
    }
    loop_run_tasks(F.l);
    if (lowest_free_fd() != fd0) abort();
    return 0;
}
