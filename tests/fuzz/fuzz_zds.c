/* libFuzzer target for the ZDS client (src/ztunnel/zds.c): request decoding and the state machine. Packets go
 * in through zds_client_feed (the path of every packet recvmsg returns, with its flags and fds), over a
 * connection that is one end of a socketpair (zds_client_adopt); the fuzzer's end reads what the client
 * sends. The owner answers at once (Ack or NACK) or holds the ticket until the input says; connections are
 * replaced and hung up, and the loop runs briefly so retry timers fire (retry_ms 1).
 *
 * Checked besides memory safety: the first packet of a connection is ZdsHello V1, every later one a
 * WorkloadResponse with an Ack whose error is empty or starts with one of the three NACK prefixes, at most
 * ZDS_MSG_MAX bytes; a connection gets at most one answer per packet it took, and exactly one once the owner
 * has answered everything; the owner never holds two tickets, every netns fd it is lent is open and has the
 * inode it is told; no fd leaks (the lowest free fd is the same after each input).
 *
 * Input: records, each an opcode byte o and its operands; o & 7 picks:
 *   0  raw packet: 2 bytes of length (little-endian), then that many bytes
 *   1  a well-formed request: 1 byte (type = b & 3: Add, Keep, Del, SnapshotSent; uid = "uid-" + (b >> 2) &
 * 3; bit 4 drops Add's workload_info, bit 5 empties the uid) 2  answer the held ticket: 1 byte, 0 = Ack, else
 * a NACK 3  owner mode: 1 byte mod 3 = answer Ack at once, NACK at once, hold 4  a new connection      5  run
 * the loop ~2 ms      6  the node agent hangs up, then run the loop (the loop runs at most RUNS_MAX times per
 * input) For 0 and 1, (o >> 3) & 3 fds go along (a netns, or /dev/null when bit 5 is set), bit 6 sets
 * MSG_TRUNC and bit 7 MSG_CTRUNC. Seeds: corpus/fuzz_zds/ (a snapshot, a NACK and retry, protocol errors,
 * held answers across a reconnect). */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/log.h"
#include "core/loop.h"
#include "ztunnel/zds.h"
#include "zds.pb-c.h"

static struct {
    struct loop *l;
    struct zds_client *c;
    int mode;      /* 0 ack, 1 nack, 2 hold */
    uint64_t held; /* ticket held, 0 if none */
    int peer;      /* the node agent's end of the current connection, -1 if none */
    bool hello_seen;
    size_t taken;   /* packets the client took on this connection */
    size_t answers; /* answers read on it */
    struct timer stop;
} F;

static void give(uint64_t ticket)
{
    if (F.held) abort(); /* one request at a time */
    if (F.mode == 2) {
        F.held = ticket;
        return;
    }
    if (zds_reply(F.c, ticket, F.mode == 1 ? "fuzzed failure" : NULL) != 0) abort();
}

static void o_add(void *ud, uint64_t t, const struct zds_add *a)
{
    struct stat sb;
    if (fstat(a->netns_fd, &sb) < 0 || (uint64_t)sb.st_ino != a->netns_ino) abort();
    if (!a->uid || !*a->uid || !a->name || !a->namespace_ || !a->service_account) abort();
    give(t);
}
static void o_keep(void *ud, uint64_t t, const char *uid)
{
    give(t);
}
static void o_del(void *ud, uint64_t t, const char *uid)
{
    give(t);
}
static void o_snap(void *ud, uint64_t t, const char *const *stale, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!stale[i]) abort();
    give(t);
}
static const struct zds_ops OPS = {.add = o_add, .keep = o_keep, .del = o_del, .snapshot_sent = o_snap};

/* Reads everything the client sent on the current connection and checks it. */
static void drain_peer(void)
{
    if (F.peer < 0) return;
    for (;;) {
        uint8_t buf[4096];
        ssize_t n = recv(F.peer, buf, sizeof buf, MSG_DONTWAIT);
        if (n <= 0) return;
        if (n > ZDS_MSG_MAX) abort();
        if (!F.hello_seen) {
            Istio__Workload__Zds__ZdsHello *h = istio__workload__zds__zds_hello__unpack(NULL, (size_t)n, buf);
            if (!h || h->version != ISTIO__WORKLOAD__ZDS__VERSION__V1) abort();
            istio__workload__zds__zds_hello__free_unpacked(h, NULL);
            F.hello_seen = true;
            continue;
        }
        Istio__Workload__Zds__WorkloadResponse *r =
            istio__workload__zds__workload_response__unpack(NULL, (size_t)n, buf);
        if (!r || r->payload_case != ISTIO__WORKLOAD__ZDS__WORKLOAD_RESPONSE__PAYLOAD_ACK) abort();
        const char *e = r->ack->error;
        if (*e && strncmp(e, ZDS_NACK_START, strlen(ZDS_NACK_START)) != 0 &&
            strncmp(e, ZDS_NACK_READ, strlen(ZDS_NACK_READ)) != 0 &&
            strncmp(e, ZDS_NACK_PROCESS, strlen(ZDS_NACK_PROCESS)) != 0)
            abort();
        istio__workload__zds__workload_response__free_unpacked(r, NULL);
        if (++F.answers > F.taken) abort(); /* unsolicited */
    }
}

static void new_connection(void)
{
    drain_peer();
    if (F.peer >= 0) close(F.peer);
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) abort();
    F.peer = sv[0];
    F.hello_seen = false;
    F.taken = F.answers = 0;
    if (zds_client_adopt(F.c, sv[1]) < 0) abort();
    drain_peer();
    if (!F.hello_seen) abort();
}

static void stop_cb(struct timer *t)
{
    loop_stop(F.l);
}

/* Loop runs cost real time (the retry timers are 1 ms); a few per input are enough. */
#define RUNS_MAX 4
static int runs;

static void run_loop(void)
{
    if (++runs > RUNS_MAX) return;
    timer_start(F.l, &F.stop, 2);
    loop_run(F.l);
    timer_stop(F.l, &F.stop);
}

static size_t build_request(uint8_t b, uint8_t *out)
{
    static const char *const uids[] = {"uid-0", "uid-1", "uid-2", "uid-3"};
    char *uid = (b & 0x20) ? "" : (char *)uids[(b >> 2) & 3];
    Istio__Workload__Zds__WorkloadRequest r = ISTIO__WORKLOAD__ZDS__WORKLOAD_REQUEST__INIT;
    Istio__Workload__Zds__AddWorkload add = ISTIO__WORKLOAD__ZDS__ADD_WORKLOAD__INIT;
    Istio__Workload__Zds__WorkloadInfo wi = ISTIO__WORKLOAD__ZDS__WORKLOAD_INFO__INIT;
    Istio__Workload__Zds__KeepWorkload keep = ISTIO__WORKLOAD__ZDS__KEEP_WORKLOAD__INIT;
    Istio__Workload__Zds__DelWorkload del = ISTIO__WORKLOAD__ZDS__DEL_WORKLOAD__INIT;
    Istio__Workload__Zds__SnapshotSent snap = ISTIO__WORKLOAD__ZDS__SNAPSHOT_SENT__INIT;
    switch (b & 3) {
    case 0:
        add.uid = uid;
        wi.name = "pod";
        wi.namespace_ = "ns";
        wi.service_account = "sa";
        if (!(b & 0x10)) add.workload_info = &wi;
        r.payload_case = ISTIO__WORKLOAD__ZDS__WORKLOAD_REQUEST__PAYLOAD_ADD;
        r.add = &add;
        break;
    case 1:
        keep.uid = uid;
        r.payload_case = ISTIO__WORKLOAD__ZDS__WORKLOAD_REQUEST__PAYLOAD_KEEP;
        r.keep = &keep;
        break;
    case 2:
        del.uid = uid;
        r.payload_case = ISTIO__WORKLOAD__ZDS__WORKLOAD_REQUEST__PAYLOAD_DEL;
        r.del = &del;
        break;
    default:
        r.payload_case = ISTIO__WORKLOAD__ZDS__WORKLOAD_REQUEST__PAYLOAD_SNAPSHOT_SENT;
        r.snapshot_sent = &snap;
        break;
    }
    return protobuf_c_message_pack(&r.base, out);
}

static void feed(uint8_t o, const uint8_t *data, size_t len)
{
    int fds[3];
    size_t nfds = (o >> 3) & 3;
    for (size_t i = 0; i < nfds; i++) {
        fds[i] = open((o & 0x20) ? "/dev/null" : "/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
        if (fds[i] < 0) abort();
    }
    int flags = ((o & 0x40) ? MSG_TRUNC : 0) | ((o & 0x80) ? MSG_CTRUNC : 0);
    int r = zds_client_feed(F.c, data, len, flags, fds, nfds);
    if (r == 0 || r == -EPROTO)
        F.taken++;
    else if (r != -EBUSY)
        abort();
    drain_peer();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int init;
    if (!init) {
        log_set_level("off");
        F.l = loop_new();
        F.stop.cb = stop_cb;
        init = 1;
    }
    /* The lowest free descriptor before this input, compared after it: per input, because libFuzzer itself
     * holds a directory open while it loads the seed corpus (a baseline taken then is one too high later). */
    int baseline = open("/dev/null", O_RDONLY);
    close(baseline);
    struct zds_config cfg = {.path = "/nonexistent/zds-fuzz.sock", .retry_ms = 1, .backoff_max_ms = 1};
    if (zds_client_new(F.l, &cfg, &OPS, NULL, &F.c) != 0) abort();
    F.mode = 0;
    F.held = 0;
    runs = 0;
    F.peer = -1;
    new_connection();
    size_t i = 0;
    while (i < size) {
        uint8_t o = data[i++];
        switch (o & 7) {
        case 0: {
            if (size - i < 2) goto done;
            size_t len = (size_t)data[i] | (size_t)data[i + 1] << 8;
            i += 2;
            if (len > size - i) len = size - i;
            feed(o, data + i, len);
            i += len;
            break;
        }
        case 1: {
            if (i >= size) goto done;
            uint8_t buf[256];
            size_t n = build_request(data[i++], buf);
            feed(o, buf, n);
            break;
        }
        case 2:
            if (i >= size) goto done;
            if (F.held) {
                uint64_t t = F.held;
                F.held = 0;
                if (zds_reply(F.c, t, data[i] ? "held failure" : NULL) != 0) abort();
                drain_peer();
            }
            i++;
            break;
        case 3:
            if (i >= size) goto done;
            F.mode = data[i++] % 3;
            break;
        case 4:
            new_connection();
            break;
        case 5:
            run_loop();
            drain_peer();
            break;
        case 6:
            if (F.peer >= 0) {
                drain_peer();
                close(F.peer);
                F.peer = -1;
            }
            run_loop();
            break;
        default:
            break;
        }
        if (F.held && zds_reply(F.c, F.held + 1, NULL) != -ESTALE) abort();
    }
done:
    /* Answer what is held: the live connection then owes nothing. */
    if (F.held) {
        uint64_t t = F.held;
        F.held = 0;
        if (zds_reply(F.c, t, NULL) != 0) abort();
    }
    struct zds_stats st;
    zds_client_stats(F.c, &st);
    if (st.running + st.failed > ZDS_WORKLOADS_MAX) abort();
    drain_peer();
    if (st.state == ZDS_CONNECTED && F.peer >= 0 && F.answers != F.taken) abort();
    zds_client_free(F.c);
    F.c = NULL;
    if (F.peer >= 0) close(F.peer);
    F.peer = -1;
    int p = open("/dev/null", O_RDONLY);
    close(p);
    if (p != baseline) abort(); /* an fd leaked */
    return 0;
}
