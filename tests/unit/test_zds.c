/* Unit tests for the ZDS client (src/ztunnel/zds.c) against a real SOCK_SEQPACKET server in this process: a
 * listening socket in a temporary directory, requests sent with sendmsg and real netns fds in SCM_RIGHTS
 * (this process's /proc/self/ns/net, and a second network namespace made by a child with unshare), answers
 * read with a timeout while the client's loop runs. Covered: hello first; a pipelined snapshot acked in
 * order; asynchronous answers holding later requests; Add idempotent by inode, replaced by a new inode; Del;
 * NACK text, the retry timer and readiness; stale uids at SnapshotSent and state kept across a reconnect;
 * every protocol error (NACK text, connection reset, fds closed, reconnect with backoff); Istio's connect
 * backoff and when it resets; nothing sent unsolicited. libzmesh.a does not contain src/ztunnel, so the
 * source is included here (as test_admin.c does). */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "../../src/ztunnel/zds.c"

/* ---- the loop, driven from the test: tests/unit/loop_pump.h ---- */

#include "loop_pump.h"

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static bool readable(void *arg)
{
    struct pollfd p = {.fd = *(int *)arg, .events = POLLIN};
    return poll(&p, 1, 0) > 0;
}

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n - 1; /* the DIR's own fd */
}

/* ---- the owner ---- */

#define OWNER_LOG 64
static struct owner {
    struct zds_client *c;
    char log[OWNER_LOG][256];
    int n;
    int add_fails;         /* NACK this many adds (sync), then ack */
    const char *add_error; /* their reason */
    bool defer;            /* keep tickets for the test to answer */
    uint64_t tickets[16];
    int ntickets;
    uint64_t last_ino;
    uint64_t add_times[16]; /* ms of each add call */
    int nadd;
} O;

static void olog(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void olog(const char *fmt, ...)
{
    assert_true(O.n < OWNER_LOG);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(O.log[O.n++], sizeof O.log[0], fmt, ap);
    va_end(ap);
}

static void answer_or_hold(uint64_t ticket, const char *error)
{
    if (O.defer) {
        O.tickets[O.ntickets++] = ticket;
        return;
    }
    assert_int_equal(zds_reply(O.c, ticket, error), 0);
}

static void o_add(void *ud, uint64_t ticket, const struct zds_add *a)
{
    struct stat sb;
    assert_int_equal(fstat(a->netns_fd, &sb), 0); /* lent and open during the call */
    assert_int_equal((uint64_t)sb.st_ino, a->netns_ino);
    O.last_ino = a->netns_ino;
    if (O.nadd < 16) O.add_times[O.nadd++] = now_ms();
    olog("add %s %s/%s/%s replace=%d retry=%d", a->uid, a->namespace_, a->name, a->service_account,
         a->replace, a->retry);
    if (O.add_fails > 0) {
        O.add_fails--;
        answer_or_hold(ticket, O.add_error);
    } else {
        answer_or_hold(ticket, NULL);
    }
}

static void o_keep(void *ud, uint64_t ticket, const char *uid)
{
    olog("keep %s", uid);
    answer_or_hold(ticket, NULL);
}

static void o_del(void *ud, uint64_t ticket, const char *uid)
{
    olog("del %s", uid);
    answer_or_hold(ticket, NULL);
}

static void o_snapshot(void *ud, uint64_t ticket, const char *const *stale, size_t n)
{
    char buf[200] = "snapshot";
    for (size_t i = 0; i < n; i++) {
        strncat(buf, " ", sizeof buf - strlen(buf) - 1);
        strncat(buf, stale[i], sizeof buf - strlen(buf) - 1);
    }
    olog("%s", buf);
    answer_or_hold(ticket, NULL);
}

static const struct zds_ops OPS = {.add = o_add, .keep = o_keep, .del = o_del, .snapshot_sent = o_snapshot};

/* ---- the server (the node agent's side) ---- */

static struct {
    char dir[48], path[96];
    int lfd;  /* listening */
    int cfd;  /* the accepted connection */
    int ns_a; /* this process's netns */
    int ns_b; /* another netns, or -1 */
    int fds0; /* open fds at setup */
} S;

static void srv_listen(void)
{
    S.lfd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    assert_true(S.lfd >= 0);
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    snprintf(sun.sun_path, sizeof sun.sun_path, "%s", S.path);
    unlink(S.path);
    assert_int_equal(bind(S.lfd, (struct sockaddr *)&sun, sizeof sun), 0);
    assert_int_equal(listen(S.lfd, 8), 0);
}

static void srv_unlisten(void)
{
    close(S.lfd);
    S.lfd = -1;
    unlink(S.path);
}

/* Waits for the client's connection (closing the previous one). Returns false on timeout. */
static bool srv_accept(int timeout_ms)
{
    if (S.cfd >= 0) close(S.cfd);
    S.cfd = -1;
    if (!pump_until(readable, &S.lfd, timeout_ms)) return false;
    S.cfd = accept4(S.lfd, NULL, NULL, SOCK_CLOEXEC);
    return S.cfd >= 0;
}

/* Reads one packet from the client within timeout_ms: its length, 0 at EOF, -1 on timeout. */
static ssize_t srv_read(uint8_t *buf, size_t n, int timeout_ms)
{
    if (!pump_until(readable, &S.cfd, timeout_ms)) return -1;
    return recv(S.cfd, buf, n, MSG_DONTWAIT);
}

static void expect_hello(void)
{
    uint8_t buf[2048];
    ssize_t n = srv_read(buf, sizeof buf, 1000);
    assert_true(n > 0);
    Istio__Workload__Zds__ZdsHello *h = istio__workload__zds__zds_hello__unpack(NULL, (size_t)n, buf);
    assert_non_null(h);
    assert_int_equal(h->version, ISTIO__WORKLOAD__ZDS__VERSION__V1);
    istio__workload__zds__zds_hello__free_unpacked(h, NULL);
}

/* The next packet is an Ack whose error is exactly want ("" for an ACK). */
static void expect_ack(const char *want)
{
    uint8_t buf[2048];
    ssize_t n = srv_read(buf, sizeof buf, 1000);
    if (n <= 0) fail_msg("expected an Ack \"%s\", got %s", want, n == 0 ? "EOF" : "nothing");
    assert_true(n <= ZDS_MSG_MAX);
    Istio__Workload__Zds__WorkloadResponse *r =
        istio__workload__zds__workload_response__unpack(NULL, (size_t)n, buf);
    assert_non_null(r);
    assert_int_equal(r->payload_case, ISTIO__WORKLOAD__ZDS__WORKLOAD_RESPONSE__PAYLOAD_ACK);
    assert_string_equal(r->ack->error, want);
    istio__workload__zds__workload_response__free_unpacked(r, NULL);
}

static void expect_eof(void)
{
    uint8_t buf[64];
    assert_int_equal(srv_read(buf, sizeof buf, 1000), 0);
}

/* Nothing arrives for ms (the node agent's liveness read must never see an unsolicited message). */
static void expect_nothing(int ms)
{
    uint8_t buf[2048];
    assert_int_equal(srv_read(buf, sizeof buf, ms), -1);
}

enum req { R_ADD, R_ADD_NOINFO, R_KEEP, R_DEL, R_SNAP };

static size_t pack_req(uint8_t *buf, enum req k, const char *uid)
{
    Istio__Workload__Zds__WorkloadRequest r = ISTIO__WORKLOAD__ZDS__WORKLOAD_REQUEST__INIT;
    Istio__Workload__Zds__AddWorkload add = ISTIO__WORKLOAD__ZDS__ADD_WORKLOAD__INIT;
    Istio__Workload__Zds__WorkloadInfo wi = ISTIO__WORKLOAD__ZDS__WORKLOAD_INFO__INIT;
    Istio__Workload__Zds__KeepWorkload keep = ISTIO__WORKLOAD__ZDS__KEEP_WORKLOAD__INIT;
    Istio__Workload__Zds__DelWorkload del = ISTIO__WORKLOAD__ZDS__DEL_WORKLOAD__INIT;
    Istio__Workload__Zds__SnapshotSent snap = ISTIO__WORKLOAD__ZDS__SNAPSHOT_SENT__INIT;
    switch (k) {
    case R_ADD:
    case R_ADD_NOINFO:
        add.uid = (char *)uid;
        wi.name = "pod";
        wi.namespace_ = "default";
        wi.service_account = "sa";
        if (k == R_ADD) add.workload_info = &wi;
        r.payload_case = ISTIO__WORKLOAD__ZDS__WORKLOAD_REQUEST__PAYLOAD_ADD;
        r.add = &add;
        break;
    case R_KEEP:
        keep.uid = (char *)uid;
        r.payload_case = ISTIO__WORKLOAD__ZDS__WORKLOAD_REQUEST__PAYLOAD_KEEP;
        r.keep = &keep;
        break;
    case R_DEL:
        del.uid = (char *)uid;
        r.payload_case = ISTIO__WORKLOAD__ZDS__WORKLOAD_REQUEST__PAYLOAD_DEL;
        r.del = &del;
        break;
    case R_SNAP:
        r.payload_case = ISTIO__WORKLOAD__ZDS__WORKLOAD_REQUEST__PAYLOAD_SNAPSHOT_SENT;
        r.snapshot_sent = &snap;
        break;
    }
    assert_true(protobuf_c_message_get_packed_size(&r.base) <= 2048);
    return protobuf_c_message_pack(&r.base, buf);
}

/* Sends data with copies of fds[0..nfds) as SCM_RIGHTS. */
static void srv_send_raw(const void *data, size_t len, const int *fds, size_t nfds)
{
    struct iovec iov = {.iov_base = (void *)data, .iov_len = len};
    union {
        char b[CMSG_SPACE(sizeof(int) * 16)];
        struct cmsghdr align;
    } cb;
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    if (nfds) {
        mh.msg_control = cb.b;
        mh.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
        memcpy(CMSG_DATA(cm), fds, sizeof(int) * nfds);
    }
    assert_int_equal(sendmsg(S.cfd, &mh, MSG_NOSIGNAL), (ssize_t)len);
}

static void srv_send(enum req k, const char *uid, int fd)
{
    uint8_t buf[2048];
    size_t n = pack_req(buf, k, uid);
    srv_send_raw(buf, n, &fd, fd >= 0 ? 1 : 0);
}

/* ---- fixtures ---- */

/* A network namespace other than ours: a child unshares one and we open it through /proc. */
static int other_netns(void)
{
    int p[2];
    if (pipe(p) < 0) return -1;
    pid_t pid = fork();
    if (pid == 0) {
        char ok = unshare(CLONE_NEWNET) == 0 ? 'y' : 'n';
        if (write(p[1], &ok, 1) != 1) _exit(1);
        pause();
        _exit(0);
    }
    close(p[1]);
    char ok = 'n';
    int fd = -1;
    if (read(p[0], &ok, 1) == 1 && ok == 'y') {
        char path[64];
        snprintf(path, sizeof path, "/proc/%d/ns/net", (int)pid);
        fd = open(path, O_RDONLY | O_CLOEXEC);
    }
    close(p[0]);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return fd;
}

static struct zds_config CFG;

static int setup(void **state)
{
    memset(&O, 0, sizeof O);
    memset(&S, 0, sizeof S);
    S.cfd = -1;
    S.fds0 = count_fds();
    snprintf(S.dir, sizeof S.dir, "/tmp/zds-test-XXXXXX");
    assert_non_null(mkdtemp(S.dir));
    snprintf(S.path, sizeof S.path, "%s/ztunnel.sock", S.dir);
    S.ns_a = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
    assert_true(S.ns_a >= 0);
    S.ns_b = other_netns();
    L = loop_new();
    assert_non_null(L);
    srv_listen();
    CFG = (struct zds_config){.path = S.path, .retry_ms = 100, .backoff_max_ms = 15000};
    return 0;
}

static void start_client_ops(const struct zds_ops *ops)
{
    assert_int_equal(zds_client_new(L, &CFG, ops, NULL, &O.c), 0);
    assert_true(srv_accept(1000));
    expect_hello();
}

static void start_client(void)
{
    assert_int_equal(zds_client_new(L, &CFG, &OPS, NULL, &O.c), 0);
    assert_true(srv_accept(1000));
    expect_hello();
}

static int teardown(void **state)
{
    zds_client_free(O.c);
    O.c = NULL;
    if (S.cfd >= 0) close(S.cfd);
    if (S.lfd >= 0) srv_unlisten();
    close(S.ns_a);
    if (S.ns_b >= 0) close(S.ns_b);
    rmdir(S.dir);
    loop_free(L);
    /* Every fd the client received was closed or handed back. */
    assert_int_equal(count_fds(), S.fds0);
    return 0;
}

static void expect_log(int i, const char *want)
{
    if (i >= O.n) fail_msg("owner call %d missing, expected \"%s\"", i, want);
    assert_string_equal(O.log[i], want);
}

/* ---- tests ---- */

static void test_hello_snapshot_in_order(void **state)
{
    start_client();
    assert_false(zds_client_ready(O.c));
    /* Pipelined, as a node agent that did not wait would send them: answered one by one, in order. */
    srv_send(R_ADD, "uid-a", S.ns_a);
    srv_send(R_KEEP, "uid-b", -1);
    srv_send(R_SNAP, NULL, -1);
    expect_ack("");
    expect_ack("");
    expect_ack("");
    expect_log(0, "add uid-a default/pod/sa replace=0 retry=0");
    expect_log(1, "keep uid-b");
    expect_log(2, "snapshot");
    assert_int_equal(O.n, 3);
    assert_true(zds_client_ready(O.c));
    struct zds_stats st;
    zds_client_stats(O.c, &st);
    assert_int_equal(st.running, 1);
    assert_int_equal(st.requests, 3);
    assert_int_equal(st.acks, 3);
    assert_string_equal(zds_conn_state_to_str(st.state), "connected");
    expect_nothing(100);
}

static void test_async_answers_hold_later_requests(void **state)
{
    start_client();
    O.defer = true;
    srv_send(R_ADD, "uid-a", S.ns_a);
    srv_send(R_DEL, "uid-a", -1);
    expect_nothing(50);
    assert_int_equal(O.n, 1); /* the Del is not read while the Add is unanswered */
    uint64_t t = O.tickets[0];
    O.defer = false;
    assert_int_equal(zds_reply(O.c, t + 1, NULL), -ESTALE);
    assert_int_equal(zds_reply(O.c, t, NULL), 0);
    assert_int_equal(zds_reply(O.c, t, NULL), -ESTALE); /* once */
    expect_ack("");
    expect_ack("");
    expect_log(1, "del uid-a");
    expect_nothing(50);
}

static void test_add_idempotent_by_inode_and_replaced(void **state)
{
    if (S.ns_b < 0) skip();
    start_client();
    srv_send(R_ADD, "uid-a", S.ns_a);
    expect_ack("");
    struct stat sa, sb;
    fstat(S.ns_a, &sa);
    fstat(S.ns_b, &sb);
    assert_int_equal(O.last_ino, (uint64_t)sa.st_ino);
    /* The same netns through another fd: same inode, so acked without asking the owner. */
    int again = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
    srv_send(R_ADD, "uid-a", again);
    close(again);
    expect_ack("");
    assert_int_equal(O.n, 1);
    /* A new inode replaces the proxy. */
    srv_send(R_ADD, "uid-a", S.ns_b);
    expect_ack("");
    expect_log(1, "add uid-a default/pod/sa replace=1 retry=0");
    assert_int_equal(O.last_ino, (uint64_t)sb.st_ino);
    struct zds_stats st;
    zds_client_stats(O.c, &st);
    assert_int_equal(st.running, 1);
    /* Del stops it; a second Del of the now unknown uid is acked without the owner. */
    srv_send(R_DEL, "uid-a", -1);
    expect_ack("");
    srv_send(R_DEL, "uid-a", -1);
    expect_ack("");
    expect_log(2, "del uid-a");
    assert_int_equal(O.n, 3);
    zds_client_stats(O.c, &st);
    assert_int_equal(st.running, 0);
}

static void test_nack_and_retry(void **state)
{
    start_client();
    srv_send(R_SNAP, NULL, -1);
    expect_ack("");
    assert_true(zds_client_ready(O.c));
    O.add_fails = 2;
    O.add_error = "address in use";
    srv_send(R_ADD, "uid-a", S.ns_a);
    expect_ack("failure to start proxy : address in use");
    assert_false(zds_client_ready(O.c)); /* a proxy waits for its retry */
    /* Retries every retry_ms (100 here), asked of the owner only: nothing goes to the node agent. */
    expect_nothing(400);
    assert_int_equal(O.nadd, 3);
    expect_log(1, "add uid-a default/pod/sa replace=0 retry=0");
    expect_log(2, "add uid-a default/pod/sa replace=0 retry=1");
    expect_log(3, "add uid-a default/pod/sa replace=0 retry=1");
    assert_int_equal(O.n, 4); /* the third attempt succeeded: no more */
    assert_true(O.add_times[1] - O.add_times[0] >= 95);
    assert_true(O.add_times[2] - O.add_times[1] >= 95);
    assert_true(zds_client_ready(O.c));
    /* The Add that now succeeded is idempotent. */
    srv_send(R_ADD, "uid-a", S.ns_a);
    expect_ack("");
    assert_int_equal(O.n, 4);
}

static bool tickets_at_least(void *arg)
{
    return O.ntickets >= *(int *)arg;
}

/* A pass retries every failed start, one at a time: the next is asked only once the owner answered. */
static void test_retry_pass_one_at_a_time(void **state)
{
    start_client();
    O.add_fails = 2;
    O.add_error = "busy";
    srv_send(R_ADD, "uid-a", S.ns_a);
    expect_ack("failure to start proxy : busy");
    srv_send(R_ADD, "uid-b", S.ns_a);
    expect_ack("failure to start proxy : busy");
    O.defer = true;
    int one = 1, two = 2;
    assert_true(pump_until(tickets_at_least, &one, 1000));
    pump(40);
    assert_int_equal(O.ntickets, 1);
    /* A request sent meanwhile waits for the retry's answer too. */
    srv_send(R_KEEP, "uid-c", -1);
    expect_nothing(20);
    assert_int_equal(zds_reply(O.c, O.tickets[0], NULL), 0);
    assert_true(pump_until(tickets_at_least, &two, 1000));
    assert_int_equal(zds_reply(O.c, O.tickets[1], NULL), 0);
    O.defer = false;
    expect_ack("");
    expect_log(2, "add uid-b default/pod/sa replace=0 retry=1"); /* newest first: the list is a stack */
    expect_log(3, "add uid-a default/pod/sa replace=0 retry=1");
    expect_log(4, "keep uid-c");
    struct zds_stats st;
    zds_client_stats(O.c, &st);
    assert_int_equal(st.running, 2);
    assert_int_equal(st.failed, 0);
    expect_nothing(150); /* nothing left to retry */
    assert_int_equal(O.n, 5);
}

/* Failed starts belong to their connection (Istio's reset_snapshot): the next one's snapshot sends them
 * again. */
static void test_failed_start_forgotten_on_reconnect(void **state)
{
    start_client();
    O.add_fails = 1;
    O.add_error = "busy";
    srv_send(R_ADD, "uid-a", S.ns_a);
    expect_ack("failure to start proxy : busy");
    close(S.cfd);
    S.cfd = -1;
    assert_true(srv_accept(1000));
    expect_hello();
    expect_nothing(250);
    assert_int_equal(O.n, 1); /* not retried */
    struct zds_stats st;
    zds_client_stats(O.c, &st);
    assert_int_equal(st.failed, 0);
    srv_send(R_SNAP, NULL, -1);
    expect_ack("");
    expect_log(1, "snapshot"); /* not served, so not stale either */
}

static void test_failed_then_deleted_is_not_retried(void **state)
{
    start_client();
    O.add_fails = 1;
    O.add_error = "boom";
    srv_send(R_ADD, "uid-a", S.ns_a);
    expect_ack("failure to start proxy : boom");
    srv_send(R_DEL, "uid-a", -1);
    expect_ack("");
    expect_nothing(250);
    assert_int_equal(O.n, 1); /* neither retried nor handed to del: the owner never served it */
}

static void test_not_a_netns_is_nacked(void **state)
{
    start_client();
    int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
    srv_send(R_ADD, "uid-a", devnull);
    close(devnull);
    expect_ack("failure to start proxy : the fd sent with Add is not a network namespace");
    assert_int_equal(O.n, 0);
    /* Not a protocol error: the connection goes on. */
    srv_send(R_ADD, "uid-a", S.ns_a);
    expect_ack("");
}

static void test_long_nack_is_cut_to_one_packet(void **state)
{
    start_client();
    static char reason[3001];
    for (int i = 0; i < 1500; i++)
        memcpy(reason + 2 * i, "\xc3\xa9", 2); /* é: a cut must not split it */
    O.add_fails = 1;
    O.add_error = reason;
    srv_send(R_ADD, "uid-a", S.ns_a);
    uint8_t buf[2048];
    ssize_t n = srv_read(buf, sizeof buf, 1000);
    assert_true(n > 0 && n <= ZDS_MSG_MAX);
    Istio__Workload__Zds__WorkloadResponse *r =
        istio__workload__zds__workload_response__unpack(NULL, (size_t)n, buf);
    assert_non_null(r);
    const char *e = r->ack->error;
    assert_int_equal(strncmp(e, ZDS_NACK_START, strlen(ZDS_NACK_START)), 0);
    size_t body = strlen(e) - strlen(ZDS_NACK_START);
    assert_true(body > 900 && body % 2 == 0);
    istio__workload__zds__workload_response__free_unpacked(r, NULL);
}

static void test_snapshot_drains_unmentioned_and_state_survives_reconnect(void **state)
{
    start_client();
    srv_send(R_ADD, "uid-a", S.ns_a);
    expect_ack("");
    srv_send(R_ADD, "uid-b", S.ns_a);
    expect_ack("");
    srv_send(R_ADD, "uid-c", S.ns_a);
    expect_ack("");
    srv_send(R_SNAP, NULL, -1);
    expect_ack("");
    assert_int_equal(O.n, 4);
    /* The node agent restarts: a connection that had its snapshot is followed at once. */
    close(S.cfd);
    S.cfd = -1;
    uint64_t t0 = now_ms();
    assert_true(srv_accept(1000));
    assert_true(now_ms() - t0 < 15);
    expect_hello();
    assert_false(zds_client_ready(O.c));
    /* The new snapshot: a is kept, c re-added (same netns: nothing to do), b is gone. */
    srv_send(R_KEEP, "uid-a", -1);
    expect_ack("");
    srv_send(R_ADD, "uid-c", S.ns_a);
    expect_ack("");
    srv_send(R_SNAP, NULL, -1);
    expect_ack("");
    expect_log(4, "keep uid-a");
    expect_log(5, "snapshot uid-b");
    assert_int_equal(O.n, 6);
    struct zds_stats st;
    zds_client_stats(O.c, &st);
    assert_int_equal(st.running, 2);
    assert_int_equal(st.connects, 2);
    assert_true(zds_client_ready(O.c));
    /* After the snapshot, Keep is a protocol error. */
    srv_send(R_KEEP, "uid-a", -1);
    expect_ack("failure to process message : pod keep received after snapshot");
    expect_eof();
}

static void test_del_before_snapshot(void **state)
{
    start_client();
    srv_send(R_ADD, "uid-a", S.ns_a);
    expect_ack("");
    close(S.cfd);
    S.cfd = -1;
    assert_true(srv_accept(1000));
    expect_hello();
    /* Before the new snapshot a Del stops the pod at once; SnapshotSent then has nothing left to drain. */
    srv_send(R_DEL, "uid-a", -1);
    expect_ack("");
    srv_send(R_SNAP, NULL, -1);
    expect_ack("");
    expect_log(1, "del uid-a");
    expect_log(2, "snapshot");
}

static void test_answer_after_reset_is_not_sent(void **state)
{
    start_client();
    O.defer = true;
    srv_send(R_ADD, "uid-a", S.ns_a);
    expect_nothing(30);
    close(S.cfd); /* before its snapshot: the next connection waits the backoff */
    S.cfd = -1;
    assert_true(srv_accept(1000));
    expect_hello();
    /* The late answer updates the state (the owner started the proxy) but belongs to no request here. */
    assert_int_equal(zds_reply(O.c, O.tickets[0], NULL), 0);
    expect_nothing(50);
    struct zds_stats st;
    zds_client_stats(O.c, &st);
    assert_int_equal(st.running, 1);
    O.defer = false;
    srv_send(R_SNAP, NULL, -1);
    expect_ack("");
    expect_log(1, "snapshot uid-a");
}

/* ---- protocol errors ---- */

struct perr_case {
    const char *name;
    bool after_snapshot;
    void (*send)(void);
    const char *nack;
};

static void s_trunc_1025(void)
{
    uint8_t buf[1025];
    memset(buf, 0, sizeof buf);
    srv_send_raw(buf, sizeof buf, NULL, 0);
}
static void s_trunc_4000_with_fd(void)
{
    static uint8_t buf[4000];
    srv_send_raw(buf, sizeof buf, &S.ns_a, 1);
}
static void s_add_no_fd(void)
{
    srv_send(R_ADD, "uid-a", -1);
}
static void s_add_two_fds(void)
{
    uint8_t buf[256];
    size_t n = pack_req(buf, R_ADD, "uid-a");
    int fds[2] = {S.ns_a, S.ns_a};
    srv_send_raw(buf, n, fds, 2);
}
static void s_add_many_fds(void)
{
    uint8_t buf[256];
    size_t n = pack_req(buf, R_ADD, "uid-a");
    int fds[ZDS_FDS_MAX + 3];
    for (int i = 0; i < ZDS_FDS_MAX + 3; i++)
        fds[i] = S.ns_a;
    srv_send_raw(buf, n, fds, ZDS_FDS_MAX + 3);
}
static void s_del_with_fd(void)
{
    srv_send(R_DEL, "uid-a", S.ns_a);
}
static void s_keep_with_fd(void)
{
    srv_send(R_KEEP, "uid-a", S.ns_a);
}
static void s_snap_with_fd(void)
{
    srv_send(R_SNAP, NULL, S.ns_a);
}
static void s_keep(void)
{
    srv_send(R_KEEP, "uid-a", -1);
}
static void s_snap(void)
{
    srv_send(R_SNAP, NULL, -1);
}
static void s_garbage(void)
{
    srv_send_raw("\xff\xff\xff\xff", 4, NULL, 0);
}
static void s_no_payload(void)
{
    srv_send_raw("\x48\x01", 2, NULL, 0); /* field 9, varint 1: valid protobuf, no oneof member */
}
static void s_add_no_info(void)
{
    srv_send(R_ADD_NOINFO, "uid-a", S.ns_a);
}
static void s_add_empty_uid(void)
{
    srv_send(R_ADD, "", S.ns_a);
}

static const struct perr_case PERR[] = {
    {"over 1024 bytes", false, s_trunc_1025, ZDS_NACK_READ "received truncated message"},
    {"MSG_TRUNC with an fd", false, s_trunc_4000_with_fd, ZDS_NACK_READ "received truncated message"},
    {"Add without fd", false, s_add_no_fd, ZDS_NACK_READ "Add without a netns fd (no control message)"},
    {"Add with 2 fds", false, s_add_two_fds, ZDS_NACK_READ "expected 1 fd, got 2"},
    {"MSG_CTRUNC", false, s_add_many_fds, ZDS_NACK_READ "received truncated control message"},
    {"fd on Del", false, s_del_with_fd, ZDS_NACK_READ "unexpected control message on Del"},
    {"fd on Keep", false, s_keep_with_fd, ZDS_NACK_READ "unexpected control message on Keep"},
    {"fd on SnapshotSent", false, s_snap_with_fd, ZDS_NACK_READ "unexpected control message on SnapshotSent"},
    {"Keep after snapshot", true, s_keep, ZDS_NACK_PROCESS "pod keep received after snapshot"},
    {"second SnapshotSent", true, s_snap, ZDS_NACK_PROCESS "pod snapshot received already"},
    {"garbage", false, s_garbage, ZDS_NACK_READ "cannot decode WorkloadRequest (Bad message)"},
    {"no payload", false, s_no_payload, ZDS_NACK_READ "no payload"},
    {"Add without workload_info", false, s_add_no_info,
     ZDS_NACK_PROCESS "workload_info is required but not present"},
    {"empty uid", false, s_add_empty_uid, ZDS_NACK_PROCESS "empty uid"},
};

static void test_protocol_errors(void **state)
{
    CFG.backoff_max_ms = 40; /* keep the reconnects quick */
    start_client();
    uint64_t errors = 0;
    for (size_t i = 0; i < sizeof PERR / sizeof PERR[0]; i++) {
        const struct perr_case *pc = &PERR[i];
        print_message("protocol error: %s\n", pc->name);
        srv_send(R_ADD, "uid-ok", S.ns_a); /* a served pod survives every reset */
        expect_ack("");
        if (pc->after_snapshot) {
            srv_send(R_SNAP, NULL, -1);
            expect_ack("");
        }
        int before = count_fds();
        uint64_t t0 = now_ms(); /* the reset comes after this */
        pc->send();
        expect_ack(pc->nack);
        expect_eof();
        pump(5);
        /* Every fd received with the bad packet is closed, and so is the client's socket. */
        assert_int_equal(count_fds(), before - 1);
        struct zds_stats st;
        zds_client_stats(O.c, &st);
        assert_int_equal(st.protocol_errors, ++errors);
        assert_string_equal(zds_conn_state_to_str(st.state), "backoff");
        assert_int_equal(st.running, 1);
        assert_true(srv_accept(1000));
        assert_true(now_ms() - t0 >= 19); /* with backoff (20 ms, then 40), not at once */
        expect_hello();
    }
    expect_nothing(50);
}

static void test_exactly_1024_bytes_is_accepted(void **state)
{
    start_client();
    /* An Add whose encoding is exactly ZDS_MSG_MAX bytes: a uid padded to fit. */
    char uid[1100];
    uint8_t buf[2048];
    size_t len = 1;
    for (;;) {
        memset(uid, 'u', len);
        uid[len] = '\0';
        size_t n = pack_req(buf, R_ADD, uid);
        if (n == ZDS_MSG_MAX) break;
        assert_true(n < ZDS_MSG_MAX);
        len++;
    }
    srv_send(R_ADD, uid, S.ns_a);
    expect_ack("");
    assert_int_equal(O.n, 1);
}

/* ---- backoff ---- */

static void test_backoff_before_snapshot_doubles(void **state)
{
    start_client();
    /* A node agent that hangs up before the snapshot: waits of 20, 40, 80 ms (Istio doubles before waiting).
     */
    uint64_t prev = now_ms();
    uint64_t gaps[3];
    for (int i = 0; i < 3; i++) {
        close(S.cfd);
        S.cfd = -1;
        assert_true(srv_accept(2000));
        uint64_t t = now_ms();
        gaps[i] = t - prev;
        prev = t;
        expect_hello();
    }
    assert_true(gaps[0] >= 19 && gaps[0] < 39);
    assert_true(gaps[1] >= 39 && gaps[1] < 79);
    assert_true(gaps[2] >= 79 && gaps[2] < 159);
}

static void test_connect_failures_back_off_and_reset(void **state)
{
    CFG.backoff_max_ms = 80;
    start_client();
    srv_send(R_SNAP, NULL, -1);
    expect_ack("");
    /* The node agent goes away: the immediate reconnect fails, then 20, 40, 80, 80 ... (the cap here). */
    srv_unlisten();
    close(S.cfd);
    S.cfd = -1;
    pump(300);
    struct zds_stats st;
    zds_client_stats(O.c, &st);
    assert_int_equal(st.connects, 1);
    assert_int_equal(st.backoff_ms, 80);
    assert_string_equal(zds_conn_state_to_str(st.state), "backoff");
    assert_non_null(strstr(st.last_error, "connect: "));
    srv_listen();
    assert_true(srv_accept(200));
    expect_hello();
    srv_send(R_SNAP, NULL, -1);
    expect_ack("");
    /* A clean end after the snapshot resets the backoff: the next attempt is at once. */
    close(S.cfd);
    S.cfd = -1;
    uint64_t t0 = now_ms();
    assert_true(srv_accept(200));
    assert_true(now_ms() - t0 < 15);
    expect_hello();
    zds_client_stats(O.c, &st);
    assert_int_equal(st.backoff_ms, ZDS_BACKOFF_INITIAL_MS);
}

/* A node agent that sends without reading: answers the socket cannot take are held, reading stops until they
 * go out, and every request still gets exactly one answer. */
static void test_backpressure_when_the_agent_does_not_read(void **state)
{
    static const struct zds_ops keep_by_module = {.add = o_add};
    start_client_ops(&keep_by_module);
    assert_int_equal(fcntl(S.cfd, F_SETFL, fcntl(S.cfd, F_GETFL) | O_NONBLOCK), 0);
    uint8_t req[64], buf[2048];
    size_t n = pack_req(req, R_KEEP, "uid-k");
    enum { TOTAL = 300 };
    int sent = 0, got = 0;
    bool held = false;
    uint64_t deadline = now_ms() + 5000;
    while (got < TOTAL && now_ms() < deadline) {
        while (sent < TOTAL && send(S.cfd, req, n, MSG_DONTWAIT | MSG_NOSIGNAL) == (ssize_t)n)
            sent++;
        pump(2);
        if (O.c->outlen) held = true;
        if (!held && sent < TOTAL) continue; /* read nothing until the client had to hold an answer */
        ssize_t k;
        while ((k = recv(S.cfd, buf, sizeof buf, MSG_DONTWAIT)) > 0) {
            Istio__Workload__Zds__WorkloadResponse *r =
                istio__workload__zds__workload_response__unpack(NULL, (size_t)k, buf);
            assert_non_null(r);
            assert_string_equal(r->ack->error, "");
            istio__workload__zds__workload_response__free_unpacked(r, NULL);
            got++;
        }
    }
    assert_true(held);
    assert_int_equal(got, TOTAL);
    expect_nothing(50);
    struct zds_stats st;
    zds_client_stats(O.c, &st);
    assert_int_equal(st.acks, TOTAL);
}

static void test_defaults_and_backoff_sequence(void **state)
{
    struct zds_config cfg = {0};
    struct zds_client *c = NULL;
    assert_int_equal(zds_client_new(L, &cfg, &OPS, NULL, &c), 0);
    assert_string_equal(c->sun.sun_path, "/var/run/ztunnel/ztunnel.sock");
    assert_int_equal(c->retry_ms, 5000);
    /* Istio's connect loop: doubled before each wait, capped at 15 s. */
    static const uint64_t want[] = {20, 40, 80, 160, 320, 640, 1280, 2560, 5120, 10240, 15000, 15000};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        assert_int_equal(backoff_grow(c), want[i]);
    zds_client_free(c);
}

static void test_new_checks_arguments(void **state)
{
    struct zds_client *c = NULL;
    struct zds_ops none = {0};
    assert_int_equal(zds_client_new(L, &CFG, &none, NULL, &c), -EINVAL);
    char longp[200];
    memset(longp, 'x', sizeof longp - 1);
    longp[sizeof longp - 1] = '\0';
    struct zds_config cfg = {.path = longp};
    assert_int_equal(zds_client_new(L, &cfg, &OPS, NULL, &c), -ENAMETOOLONG);
    assert_null(c);
}

int main(void)
{
    log_set_level(getenv("ZDS_TEST_LOG") ? getenv("ZDS_TEST_LOG") : "off");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_hello_snapshot_in_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_async_answers_hold_later_requests, setup, teardown),
        cmocka_unit_test_setup_teardown(test_add_idempotent_by_inode_and_replaced, setup, teardown),
        cmocka_unit_test_setup_teardown(test_nack_and_retry, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retry_pass_one_at_a_time, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failed_start_forgotten_on_reconnect, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failed_then_deleted_is_not_retried, setup, teardown),
        cmocka_unit_test_setup_teardown(test_not_a_netns_is_nacked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_long_nack_is_cut_to_one_packet, setup, teardown),
        cmocka_unit_test_setup_teardown(test_snapshot_drains_unmentioned_and_state_survives_reconnect, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_del_before_snapshot, setup, teardown),
        cmocka_unit_test_setup_teardown(test_answer_after_reset_is_not_sent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_protocol_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_exactly_1024_bytes_is_accepted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_backoff_before_snapshot_doubles, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connect_failures_back_off_and_reset, setup, teardown),
        cmocka_unit_test_setup_teardown(test_backpressure_when_the_agent_does_not_read, setup, teardown),
        cmocka_unit_test_setup_teardown(test_defaults_and_backoff_sequence, setup, teardown),
        cmocka_unit_test_setup_teardown(test_new_checks_arguments, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
