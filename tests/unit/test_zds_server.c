/* Unit tests for the node agent's ZDS server (src/cni/zds_server.c) against two real peers on one loop:
 * ztunnel's own ZDS client module (src/ztunnel/zds.c, included here as test_zds.c does, since libzmesh.a does
 * not contain src/ztunnel) with an owner that records each callback, and raw SOCK_SEQPACKET sockets made by
 * the test for what a well-behaved client never sends (a bad hello, an unsolicited message, a truncated or
 * undecodable answer, an fd). Covered: the snapshot after the hello, with each netns fd's inode intact; Add
 * after the snapshot to the newest connection only, Del to all; NACK reasons; the 5 s answer deadline and the
 * next request going out after it; pods kept across connections; every protocol error closing its connection
 * and no other. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <cmocka.h>
#include <dirent.h>

#include "../../src/ztunnel/zds.c"
#include "cni/zds_server.h"

#include "loop_pump.h"

/* ---- a ztunnel: the real client with a recording owner ---- */

#define ZT_LOG 32
struct zt {
    struct zds_client *c;
    char log[ZT_LOG][160];
    int n;
    const char *add_error; /* NACK adds with this */
    bool hold;             /* never answer (the deadline test) */
    uint64_t inos[ZT_LOG];
    int ninos;
};

static void zt_log(struct zt *z, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void zt_log(struct zt *z, const char *fmt, ...)
{
    assert_true(z->n < ZT_LOG);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(z->log[z->n++], sizeof z->log[0], fmt, ap);
    va_end(ap);
}

static void zt_add(void *ud, uint64_t ticket, const struct zds_add *a)
{
    struct zt *z = ud;
    zt_log(z, "add %s %s/%s/%s", a->uid, a->namespace_, a->name, a->service_account);
    z->inos[z->ninos++] = a->netns_ino;
    if (!z->hold) zds_reply(z->c, ticket, z->add_error);
}

static void zt_del(void *ud, uint64_t ticket, const char *uid)
{
    struct zt *z = ud;
    zt_log(z, "del %s", uid);
    zds_reply(z->c, ticket, NULL);
}

static void zt_snap(void *ud, uint64_t ticket, const char *const *stale, size_t n)
{
    struct zt *z = ud;
    zt_log(z, "snapshot %zu", n);
    zds_reply(z->c, ticket, NULL);
}

static const struct zds_ops ZT_OPS = {.add = zt_add, .del = zt_del, .snapshot_sent = zt_snap};

static char DIR_[64], PATH_[96];
static struct zds_server *SRV;
static int NS_SELF; /* this process's netns */
static uint64_t NS_SELF_INO;

static void zt_start(struct zt *z)
{
    memset(z, 0, sizeof *z);
    struct zds_config cfg = {.path = PATH_, .backoff_max_ms = 20};
    assert_int_equal(zds_client_new(L, &cfg, &ZT_OPS, z, &z->c), 0);
}

struct wait_log {
    struct zt *z;
    int n;
};
static bool log_has(void *arg)
{
    struct wait_log *w = arg;
    return w->z->n >= w->n;
}
static void wait_log(struct zt *z, int n)
{
    struct wait_log w = {z, n};
    if (!pump_until(log_has, &w, 3000)) fail_msg("ztunnel saw %d callbacks, wanted %d", z->n, n);
}

static bool snapshots_at_least(void *arg)
{
    struct zds_server_stats st;
    zds_server_stats(SRV, &st);
    return st.snapshots >= *(uint64_t *)arg;
}
static void wait_snapshots(uint64_t n)
{
    assert_true(pump_until(snapshots_at_least, &n, 3000));
}

/* ---- done callbacks ---- */

struct done {
    int calls, status;
    char error[160];
};
static void on_done(void *ud, int status, const char *error)
{
    struct done *d = ud;
    d->calls++;
    d->status = status;
    snprintf(d->error, sizeof d->error, "%s", error);
}
static bool done_called(void *arg)
{
    return ((struct done *)arg)->calls > 0;
}

/* ---- fixtures ---- */

static int setup(void **state)
{
    snprintf(DIR_, sizeof DIR_, "/tmp/zmesh-zdss-XXXXXX");
    assert_non_null(mkdtemp(DIR_));
    /* A directory below the temporary one: the server creates its socket's parent. */
    snprintf(PATH_, sizeof PATH_, "%s/run/ztunnel.sock", DIR_);
    L = loop_new();
    assert_non_null(L);
    assert_int_equal(zds_server_new(L, PATH_, &SRV), 0);
    NS_SELF = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
    assert_true(NS_SELF >= 0);
    struct stat sb;
    assert_int_equal(fstat(NS_SELF, &sb), 0);
    NS_SELF_INO = sb.st_ino;
    return 0;
}

static int teardown(void **state)
{
    zds_server_free(SRV);
    SRV = NULL;
    loop_run_tasks(L);
    loop_free(L);
    close(NS_SELF);
    char d[96];
    snprintf(d, sizeof d, "%s/run", DIR_);
    rmdir(d);
    rmdir(DIR_);
    return 0;
}

/* ---- raw peers ---- */

static int raw_connect(void)
{
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    snprintf(sun.sun_path, sizeof sun.sun_path, "%s", PATH_);
    assert_int_equal(connect(fd, (struct sockaddr *)&sun, sizeof sun), 0);
    return fd;
}

static void raw_hello(int fd, int version)
{
    Istio__Workload__Zds__ZdsHello h = ISTIO__WORKLOAD__ZDS__ZDS_HELLO__INIT;
    h.version = version;
    uint8_t buf[16];
    size_t n = istio__workload__zds__zds_hello__pack(&h, buf);
    assert_int_equal(send(fd, buf, n, MSG_NOSIGNAL), (ssize_t)n);
}

static bool fd_readable(void *arg)
{
    struct pollfd p = {.fd = *(int *)arg, .events = POLLIN};
    return poll(&p, 1, 0) > 0;
}

/* The next packet from the server within 3 s, decoded (caller frees); NULL at EOF. */
static Istio__Workload__Zds__WorkloadRequest *raw_recv(int fd, int *got_fd)
{
    if (!pump_until(fd_readable, &fd, 3000)) fail_msg("nothing from the server");
    uint8_t buf[2048];
    union {
        char b[CMSG_SPACE(sizeof(int) * 4)];
        struct cmsghdr align;
    } cb;
    struct iovec iov = {.iov_base = buf, .iov_len = sizeof buf};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cb.b, .msg_controllen = sizeof cb.b};
    ssize_t n = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC);
    assert_true(n >= 0);
    *got_fd = -1;
    int nfds = 0;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
        nfds += (int)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        memcpy(got_fd, CMSG_DATA(cm), sizeof(int));
    }
    assert_true(nfds <= 1);
    if (n == 0) return NULL;
    Istio__Workload__Zds__WorkloadRequest *r =
        istio__workload__zds__workload_request__unpack(NULL, (size_t)n, buf);
    assert_non_null(r);
    return r;
}

static void raw_ack(int fd, const char *error)
{
    Istio__Workload__Zds__WorkloadResponse resp = ISTIO__WORKLOAD__ZDS__WORKLOAD_RESPONSE__INIT;
    Istio__Workload__Zds__Ack ack = ISTIO__WORKLOAD__ZDS__ACK__INIT;
    ack.error = (char *)error;
    resp.payload_case = ISTIO__WORKLOAD__ZDS__WORKLOAD_RESPONSE__PAYLOAD_ACK;
    resp.ack = &ack;
    uint8_t buf[256];
    size_t n = istio__workload__zds__workload_response__pack(&resp, buf);
    assert_int_equal(send(fd, buf, n, MSG_NOSIGNAL), (ssize_t)n);
}

/* The server closed fd within 3 s (EOF, with whatever it had sent before drained). */
static void raw_expect_closed(int fd)
{
    for (int i = 0; i < 16; i++) {
        if (!pump_until(fd_readable, &fd, 3000)) fail_msg("the server kept the connection open");
        uint8_t buf[2048];
        ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno == ECONNRESET)) return;
    }
    fail_msg("no EOF");
}

static uint64_t stat_protocol_errors(void)
{
    struct zds_server_stats st;
    zds_server_stats(SRV, &st);
    return st.protocol_errors;
}

/* ---- tests ---- */

/* Pods added before any ztunnel are kept (-ENOTCONN) and make up the snapshot, with their netns fds. */
static void test_snapshot_after_hello(void **state)
{
    assert_int_equal(zds_server_add(SRV, "uid-1", "web-0", "shop", "web", NS_SELF, NULL, NULL), -ENOTCONN);
    assert_int_equal(zds_server_add(SRV, "uid-2", "db-0", "shop", "db", NS_SELF, NULL, NULL), -ENOTCONN);
    assert_true(zds_server_has_pod(SRV, "uid-1"));
    struct zt z;
    zt_start(&z);
    wait_log(&z, 3);
    /* Newest first in the table; the order is not part of the protocol, the set and SnapshotSent last are. */
    bool a1 = false, a2 = false;
    for (int i = 0; i < 2; i++) {
        if (strcmp(z.log[i], "add uid-1 shop/web-0/web") == 0) a1 = true;
        if (strcmp(z.log[i], "add uid-2 shop/db-0/db") == 0) a2 = true;
    }
    assert_true(a1 && a2);
    assert_string_equal(z.log[2], "snapshot 0");
    assert_int_equal(z.inos[0], NS_SELF_INO);
    assert_int_equal(z.inos[1], NS_SELF_INO);
    wait_snapshots(1);
    struct zds_server_stats st;
    zds_server_stats(SRV, &st);
    assert_int_equal(st.connections, 1);
    assert_int_equal(st.pods, 2);
    assert_int_equal(st.acks, 3);
    assert_int_equal(st.nacks, 0);
    assert_true(zds_client_ready(z.c));
    zds_client_free(z.c);
}

/* After the snapshot: an Add reaches ztunnel and its done reports the Ack; a Del reaches it too. */
static void test_add_and_del_after_snapshot(void **state)
{
    struct zt z;
    zt_start(&z);
    wait_log(&z, 1);
    assert_string_equal(z.log[0], "snapshot 0");
    wait_snapshots(1);
    struct done d = {0};
    assert_int_equal(zds_server_add(SRV, "uid-a", "a", "ns", "sa", NS_SELF, on_done, &d), 0);
    assert_true(pump_until(done_called, &d, 3000));
    assert_int_equal(d.status, 0);
    assert_string_equal(z.log[1], "add uid-a ns/a/sa");
    assert_int_equal(zds_server_del(SRV, "uid-a"), 0);
    wait_log(&z, 3);
    assert_string_equal(z.log[2], "del uid-a");
    assert_false(zds_server_has_pod(SRV, "uid-a"));
    /* A Del of an unknown pod still goes out (ztunnel acks it) and says so. */
    assert_int_equal(zds_server_del(SRV, "uid-unknown"), -ENOENT);
    zds_client_free(z.c);
}

/* ztunnel's NACK reaches done with its reason, and counts. */
static void test_nack_reason(void **state)
{
    struct zt z;
    zt_start(&z);
    z.add_error = "no room";
    wait_log(&z, 1);
    wait_snapshots(1);
    struct done d = {0};
    assert_int_equal(zds_server_add(SRV, "uid-n", "n", "ns", "sa", NS_SELF, on_done, &d), 0);
    assert_true(pump_until(done_called, &d, 3000));
    assert_int_equal(d.status, -EPROTO);
    assert_string_equal(d.error, "failure to start proxy : no room");
    struct zds_server_stats st;
    zds_server_stats(SRV, &st);
    assert_int_equal(st.nacks, 1);
    /* The pod stays for the next snapshot: the NACK is ztunnel's state, not the node's. */
    assert_true(zds_server_has_pod(SRV, "uid-n"));
    zds_client_free(z.c);
}

/* Two ztunnels (an upgrade): an Add goes to the newest only, a Del to both. */
static void test_two_connections_newest_gets_add(void **state)
{
    struct zt old, nw;
    zt_start(&old);
    wait_log(&old, 1);
    wait_snapshots(1);
    zt_start(&nw);
    wait_log(&nw, 1);
    wait_snapshots(2);
    struct done d = {0};
    assert_int_equal(zds_server_add(SRV, "uid-x", "x", "ns", "sa", NS_SELF, on_done, &d), 0);
    assert_true(pump_until(done_called, &d, 3000));
    assert_int_equal(d.status, 0);
    assert_int_equal(nw.n, 2);
    assert_string_equal(nw.log[1], "add uid-x ns/x/sa");
    pump(50);
    assert_int_equal(old.n, 1); /* only its snapshot */
    struct zds_server_stats st;
    zds_server_stats(SRV, &st);
    assert_int_equal(st.acks, 3); /* two snapshots, one Add */
    assert_int_equal(zds_server_del(SRV, "uid-x"), 0);
    wait_log(&nw, 3);
    assert_string_equal(nw.log[2], "del uid-x");
    /* The older ztunnel got the Del too: it does not serve uid-x, so its module acks it without asking the
     * owner; the server counts both answers, and the older client counted one more request. */
    struct zds_stats ost;
    for (int i = 0; i < 300; i++) {
        pump(10);
        zds_client_stats(old.c, &ost);
        if (ost.requests >= 2) break;
    }
    assert_int_equal(ost.requests, 2);
    for (int i = 0; i < 300 && st.acks < 5; i++) {
        pump(10);
        zds_server_stats(SRV, &st);
    }
    assert_int_equal(st.acks, 5);
    assert_int_equal(old.n, 1);
    /* The newest going away makes the older one the newest again. */
    zds_client_free(nw.c);
    for (int i = 0; i < 100; i++) {
        pump(10);
        zds_server_stats(SRV, &st);
        if (st.connections == 1) break;
    }
    assert_int_equal(st.connections, 1);
    memset(&d, 0, sizeof d);
    assert_int_equal(zds_server_add(SRV, "uid-y", "y", "ns", "sa", NS_SELF, on_done, &d), 0);
    assert_true(pump_until(done_called, &d, 3000));
    assert_int_equal(d.status, 0);
    assert_string_equal(old.log[1], "add uid-y ns/y/sa");
    zds_client_free(old.c);
}

/* No answer within 5 s: done gets -ETIMEDOUT and the next request goes out (Istio logs and goes on). */
static void test_answer_deadline(void **state)
{
    int fd = raw_connect();
    raw_hello(fd, ISTIO__WORKLOAD__ZDS__VERSION__V1);
    int got;
    Istio__Workload__Zds__WorkloadRequest *r = raw_recv(fd, &got);
    assert_int_equal(r->payload_case, ISTIO__WORKLOAD__ZDS__WORKLOAD_REQUEST__PAYLOAD_SNAPSHOT_SENT);
    assert_int_equal(got, -1); /* no fd on SnapshotSent */
    istio__workload__zds__workload_request__free_unpacked(r, NULL);
    raw_ack(fd, "");
    wait_snapshots(1);
    struct done d1 = {0}, d2 = {0};
    assert_int_equal(zds_server_add(SRV, "uid-t1", "t1", "ns", "sa", NS_SELF, on_done, &d1), 0);
    assert_int_equal(zds_server_add(SRV, "uid-t2", "t2", "ns", "sa", NS_SELF, on_done, &d2), 0);
    r = raw_recv(fd, &got);
    assert_int_equal(r->payload_case, ISTIO__WORKLOAD__ZDS__WORKLOAD_REQUEST__PAYLOAD_ADD);
    assert_string_equal(r->add->uid, "uid-t1");
    assert_string_equal(r->add->workload_info->name, "t1");
    assert_true(got >= 0);
    struct stat sb;
    assert_int_equal(fstat(got, &sb), 0);
    assert_int_equal((uint64_t)sb.st_ino, NS_SELF_INO);
    close(got);
    istio__workload__zds__workload_request__free_unpacked(r, NULL);
    /* The second Add waits for the first's answer. */
    assert_false(pump_until(fd_readable, &fd, 200));
    assert_true(pump_until(done_called, &d1, ZDS_SERVER_DEADLINE_MS + 2000));
    assert_int_equal(d1.status, -ETIMEDOUT);
    r = raw_recv(fd, &got);
    assert_string_equal(r->add->uid, "uid-t2");
    close(got);
    istio__workload__zds__workload_request__free_unpacked(r, NULL);
    raw_ack(fd, "");
    assert_true(pump_until(done_called, &d2, 3000));
    assert_int_equal(d2.status, 0);
    struct zds_server_stats st;
    zds_server_stats(SRV, &st);
    assert_int_equal(st.timeouts, 1);
    assert_int_equal(st.protocol_errors, 0);
    close(fd);
}

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n - 1;
}

/* Each protocol error closes its connection (and only it), counted; every fd a peer sent is closed. */
static void test_protocol_errors_close(void **state)
{
    int fds0 = count_fds();
    /* A hello of another version. */
    int fd = raw_connect();
    raw_hello(fd, 2);
    raw_expect_closed(fd);
    close(fd);
    assert_int_equal(stat_protocol_errors(), 1);

    /* An undecodable hello. */
    fd = raw_connect();
    assert_int_equal(send(fd, "\xff\xff\xff", 3, MSG_NOSIGNAL), 3);
    raw_expect_closed(fd);
    close(fd);
    assert_int_equal(stat_protocol_errors(), 2);

    /* A well-behaved ztunnel stays connected through all of what follows. */
    struct zt z;
    zt_start(&z);
    wait_log(&z, 1);
    wait_snapshots(1);

    /* An unsolicited message after the snapshot. */
    fd = raw_connect();
    raw_hello(fd, ISTIO__WORKLOAD__ZDS__VERSION__V1);
    int got;
    Istio__Workload__Zds__WorkloadRequest *r = raw_recv(fd, &got);
    istio__workload__zds__workload_request__free_unpacked(r, NULL);
    raw_ack(fd, "");
    wait_snapshots(2);
    raw_ack(fd, ""); /* nothing was asked */
    raw_expect_closed(fd);
    close(fd);
    assert_int_equal(stat_protocol_errors(), 3);

    /* A truncated answer: more than 1024 bytes. */
    fd = raw_connect();
    raw_hello(fd, ISTIO__WORKLOAD__ZDS__VERSION__V1);
    r = raw_recv(fd, &got);
    istio__workload__zds__workload_request__free_unpacked(r, NULL);
    static uint8_t big[1500];
    memset(big, 'a', sizeof big);
    assert_int_equal(send(fd, big, sizeof big, MSG_NOSIGNAL), (ssize_t)sizeof big);
    raw_expect_closed(fd);
    close(fd);
    assert_int_equal(stat_protocol_errors(), 4);

    /* An undecodable answer. */
    fd = raw_connect();
    raw_hello(fd, ISTIO__WORKLOAD__ZDS__VERSION__V1);
    r = raw_recv(fd, &got);
    istio__workload__zds__workload_request__free_unpacked(r, NULL);
    assert_int_equal(send(fd, "\x0a\x05\x01", 3, MSG_NOSIGNAL), 3);
    raw_expect_closed(fd);
    close(fd);
    assert_int_equal(stat_protocol_errors(), 5);

    /* An answer carrying an fd. */
    fd = raw_connect();
    raw_hello(fd, ISTIO__WORKLOAD__ZDS__VERSION__V1);
    r = raw_recv(fd, &got);
    istio__workload__zds__workload_request__free_unpacked(r, NULL);
    {
        uint8_t ackbuf[] = {0x0a, 0x00}; /* WorkloadResponse{ack: {}} */
        struct iovec iov = {.iov_base = ackbuf, .iov_len = sizeof ackbuf};
        union {
            char b[CMSG_SPACE(sizeof(int))];
            struct cmsghdr align;
        } cb;
        memset(&cb, 0, sizeof cb);
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cb.b, .msg_controllen = sizeof cb.b};
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(cm), &NS_SELF, sizeof(int));
        assert_int_equal(sendmsg(fd, &mh, MSG_NOSIGNAL), (ssize_t)sizeof ackbuf);
    }
    raw_expect_closed(fd);
    close(fd);
    assert_int_equal(stat_protocol_errors(), 6);

    /* More fds than the server has room for: MSG_CTRUNC (they are closed by the kernel and by the server). */
    fd = raw_connect();
    raw_hello(fd, ISTIO__WORKLOAD__ZDS__VERSION__V1);
    r = raw_recv(fd, &got);
    istio__workload__zds__workload_request__free_unpacked(r, NULL);
    {
        uint8_t ackbuf[] = {0x0a, 0x00};
        int many[12];
        for (int i = 0; i < 12; i++)
            many[i] = NS_SELF;
        struct iovec iov = {.iov_base = ackbuf, .iov_len = sizeof ackbuf};
        union {
            char b[CMSG_SPACE(sizeof many)];
            struct cmsghdr align;
        } cb;
        memset(&cb, 0, sizeof cb);
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cb.b, .msg_controllen = sizeof cb.b};
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof many);
        memcpy(CMSG_DATA(cm), many, sizeof many);
        assert_int_equal(sendmsg(fd, &mh, MSG_NOSIGNAL), (ssize_t)sizeof ackbuf);
    }
    raw_expect_closed(fd);
    close(fd);
    assert_int_equal(stat_protocol_errors(), 7);

    /* Silence after connecting: no hello within the deadline. */
    fd = raw_connect();
    if (!pump_until(fd_readable, &fd, ZDS_SERVER_DEADLINE_MS + 2000)) fail_msg("not closed without a hello");
    raw_expect_closed(fd);
    close(fd);
    assert_int_equal(stat_protocol_errors(), 8);

    /* The good ztunnel is still served. */
    struct done d = {0};
    assert_int_equal(zds_server_add(SRV, "uid-g", "g", "ns", "sa", NS_SELF, on_done, &d), 0);
    assert_true(pump_until(done_called, &d, 3000));
    assert_int_equal(d.status, 0);
    assert_string_equal(z.log[1], "add uid-g ns/g/sa");
    zds_client_free(z.c);
    pump(50);
    /* The server keeps one dup of NS_SELF for uid-g; nothing else is left open. */
    assert_int_equal(count_fds(), fds0 + 1);
}

/* A connection that ends with requests pending ends them with -ECONNRESET; the pods stay for the next. */
static void test_connection_end_fails_pending(void **state)
{
    int fd = raw_connect();
    raw_hello(fd, ISTIO__WORKLOAD__ZDS__VERSION__V1);
    int got;
    Istio__Workload__Zds__WorkloadRequest *r = raw_recv(fd, &got);
    istio__workload__zds__workload_request__free_unpacked(r, NULL);
    raw_ack(fd, "");
    wait_snapshots(1);
    struct done d = {0};
    assert_int_equal(zds_server_add(SRV, "uid-p", "p", "ns", "sa", NS_SELF, on_done, &d), 0);
    r = raw_recv(fd, &got);
    close(got);
    istio__workload__zds__workload_request__free_unpacked(r, NULL);
    close(fd);
    assert_true(pump_until(done_called, &d, 3000));
    assert_int_equal(d.status, -ECONNRESET);
    assert_true(zds_server_has_pod(SRV, "uid-p"));
    /* The next ztunnel gets it in its snapshot. */
    struct zt z;
    zt_start(&z);
    wait_log(&z, 2);
    assert_string_equal(z.log[0], "add uid-p ns/p/sa");
    assert_string_equal(z.log[1], "snapshot 0");
    zds_client_free(z.c);
}

static void test_arguments(void **state)
{
    assert_int_equal(zds_server_add(SRV, "", "n", "ns", "sa", NS_SELF, NULL, NULL), -EINVAL);
    assert_int_equal(zds_server_add(SRV, "u", "n", "ns", "sa", -1, NULL, NULL), -EINVAL);
    assert_int_equal(zds_server_add(SRV, "u", "n", "ns", "sa", 1000000, NULL, NULL), -EINVAL);
    char longpath[200];
    memset(longpath, 'a', sizeof longpath - 1);
    longpath[0] = '/';
    longpath[sizeof longpath - 1] = '\0';
    struct zds_server *s2;
    assert_int_equal(zds_server_new(L, longpath, &s2), -ENAMETOOLONG);
    /* The kept fd is the server's own copy: closing the caller's leaves it usable. */
    int mine = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
    assert_int_equal(zds_server_add(SRV, "uid-c", "c", "ns", "sa", mine, NULL, NULL), -ENOTCONN);
    close(mine);
    struct zt z;
    zt_start(&z);
    wait_log(&z, 2);
    assert_string_equal(z.log[0], "add uid-c ns/c/sa");
    assert_int_equal(z.inos[0], NS_SELF_INO);
    zds_client_free(z.c);
}

int main(void)
{
    log_init("off", false);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_snapshot_after_hello, setup, teardown),
        cmocka_unit_test_setup_teardown(test_add_and_del_after_snapshot, setup, teardown),
        cmocka_unit_test_setup_teardown(test_nack_reason, setup, teardown),
        cmocka_unit_test_setup_teardown(test_two_connections_newest_gets_add, setup, teardown),
        cmocka_unit_test_setup_teardown(test_answer_deadline, setup, teardown),
        cmocka_unit_test_setup_teardown(test_protocol_errors_close, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connection_end_fails_pending, setup, teardown),
        cmocka_unit_test_setup_teardown(test_arguments, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
