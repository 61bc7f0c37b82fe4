/* The ZDS server (see zds_server.h). Facts: istio/istio cni/pkg/nodeagent/ztunnelserver.go (the flow, the
 * newest-connection rule, the deadlines), ztunnel src/inpod/protocol.rs (one protobuf per packet, 1024 bytes). */
#include "cni/zds_server.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "core/list.h"
#include "core/log.h"
#include "xds/pb.h"
#include "zds.pb-c.h"

#define TGT "cni::zds"
/* Room for fds a misbehaving peer might attach: received, closed, and the connection ended. */
#define ZDS_SERVER_RX_FDS 4

enum zreq_kind { ZREQ_ADD, ZREQ_DEL, ZREQ_SNAPSHOT_SENT };

static const char *zreq_kind_to_str(enum zreq_kind k)
{
    switch (k) {
    case ZREQ_ADD:
        return "add";
    case ZREQ_DEL:
        return "del";
    case ZREQ_SNAPSHOT_SENT:
        return "snapshot_sent";
    }
    return "?";
}

/* One request queued on one connection. An Add holds its own dup of the netns fd, so that deleting the pod
 * while the Add waits cannot close the fd under it. */
struct zreq {
    struct zreq *qprev, *qnext;
    enum zreq_kind kind;
    char *uid, *name, *ns, *sa;
    int fd;
    zds_server_done_fn done;
    void *ud;
};

enum zconn_state { ZCONN_HELLO, ZCONN_READY };

static const char *zconn_state_to_str(enum zconn_state s)
{
    return s == ZCONN_HELLO ? "awaiting hello" : "ready";
}

struct zconn {
    struct zconn *prev, *next;
    struct zds_server *s;
    struct io io;
    uint64_t id;
    enum zconn_state state;
    struct zreq *qhead, *qtail; /* waiting to be sent */
    size_t qlen;
    struct zreq *inflight; /* sent, awaiting its answer */
    bool sent;             /* inflight went out (false: held until the socket is writable) */
    struct timer deadline; /* hello, or inflight's answer */
    struct task close_task;
    bool closing;
};

/* A pod kept for snapshots. */
struct zpod {
    struct zpod *prev, *next;
    char *uid, *name, *ns, *sa;
    int fd;
};

struct zds_server {
    struct loop *l;
    struct io lio;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    struct zconn *conns; /* newest first */
    size_t nconns;
    struct zpod *pods;
    size_t npods;
    uint64_t next_id;
    struct zds_server_stats st;
};

/* ---- pods and requests ---- */

static struct zpod *pod_find(const struct zds_server *s, const char *uid)
{
    for (struct zpod *p = s->pods; p; p = p->next)
        if (strcmp(p->uid, uid) == 0) return p;
    return NULL;
}

static void pod_free(struct zpod *p)
{
    if (p->fd >= 0) close(p->fd);
    free(p->uid), free(p->name), free(p->ns), free(p->sa);
    free(p);
}

static void req_free(struct zreq *r)
{
    if (r->fd >= 0) close(r->fd);
    free(r->uid), free(r->name), free(r->ns), free(r->sa);
    free(r);
}

/* Calls r's done (once) and frees r. */
static void req_end(struct zreq *r, int status, const char *error)
{
    zds_server_done_fn done = r->done;
    r->done = NULL;
    if (done) done(r->ud, status, error ? error : "");
    req_free(r);
}

static struct zreq *req_new(enum zreq_kind kind, const char *uid, const char *name, const char *ns,
                            const char *sa, int fd)
{
    struct zreq *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->kind = kind;
    r->fd = -1;
    if (uid && !(r->uid = strdup(uid))) goto fail;
    if (kind == ZREQ_ADD) {
        r->name = strdup(name ? name : "");
        r->ns = strdup(ns ? ns : "");
        r->sa = strdup(sa ? sa : "");
        if (!r->name || !r->ns || !r->sa) goto fail;
        r->fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
        if (r->fd < 0) goto fail;
    }
    return r;
fail:
    req_free(r);
    return NULL;
}

/* ---- connections ---- */

static void conn_close(struct zconn *c, bool protocol_error, const char *why);
static void conn_pump(struct zconn *c);

static void conn_free_task(struct task *t)
{
    struct zconn *c = container_of(t, struct zconn, close_task);
    free(c);
}

/* Ends c: every request it held ends with -ECONNRESET (the pods stay in the server's table, so the next
 * ztunnel's snapshot has them). The struct is freed from a task: c may be on the caller's stack of calls. */
static void conn_close(struct zconn *c, bool protocol_error, const char *why)
{
    if (c->closing) return;
    struct zds_server *s = c->s;
    c->closing = true;
    if (protocol_error) s->st.protocol_errors++;
    LOGF(protocol_error ? LOG_WARN : LOG_INFO, TGT, "ztunnel connection %llu closed (%s); %zu connected", (unsigned long long)c->id, why,
          s->nconns - 1);
    timer_stop(s->l, &c->deadline);
    loop_io_close(s->l, &c->io);
    LIST_DEL(s->conns, c);
    s->nconns--;
    if (c->inflight) req_end(c->inflight, -ECONNRESET, NULL);
    c->inflight = NULL;
    while (c->qhead) {
        struct zreq *r = c->qhead;
        QUEUE_DEL(c->qhead, c->qtail, r, qprev, qnext);
        req_end(r, -ECONNRESET, NULL);
    }
    c->close_task.cb = conn_free_task;
    loop_defer(s->l, &c->close_task);
}

static void conn_enqueue(struct zconn *c, struct zreq *r)
{
    QUEUE_APPEND(c->qhead, c->qtail, r, qprev, qnext);
    c->qlen++;
}

/* Packs r as a WorkloadRequest into buf (at least ZDS_SERVER_MSG_MAX). Returns the length, or 0 when it does
 * not fit one packet (strings from the CNI are bounded well below that; checked all the same). */
static size_t req_pack(const struct zreq *r, uint8_t *buf)
{
    Istio__Workload__Zds__WorkloadRequest req = ISTIO__WORKLOAD__ZDS__WORKLOAD_REQUEST__INIT;
    Istio__Workload__Zds__AddWorkload add = ISTIO__WORKLOAD__ZDS__ADD_WORKLOAD__INIT;
    Istio__Workload__Zds__WorkloadInfo wi = ISTIO__WORKLOAD__ZDS__WORKLOAD_INFO__INIT;
    Istio__Workload__Zds__DelWorkload del = ISTIO__WORKLOAD__ZDS__DEL_WORKLOAD__INIT;
    Istio__Workload__Zds__SnapshotSent snap = ISTIO__WORKLOAD__ZDS__SNAPSHOT_SENT__INIT;
    switch (r->kind) {
    case ZREQ_ADD:
        wi.name = r->name;
        wi.namespace_ = r->ns;
        wi.service_account = r->sa;
        add.uid = r->uid;
        add.workload_info = &wi;
        req.payload_case = ISTIO__WORKLOAD__ZDS__WORKLOAD_REQUEST__PAYLOAD_ADD;
        req.add = &add;
        break;
    case ZREQ_DEL:
        del.uid = r->uid;
        req.payload_case = ISTIO__WORKLOAD__ZDS__WORKLOAD_REQUEST__PAYLOAD_DEL;
        req.del = &del;
        break;
    case ZREQ_SNAPSHOT_SENT:
        req.payload_case = ISTIO__WORKLOAD__ZDS__WORKLOAD_REQUEST__PAYLOAD_SNAPSHOT_SENT;
        req.snapshot_sent = &snap;
        break;
    }
    size_t n = protobuf_c_message_get_packed_size(&req.base);
    if (n > ZDS_SERVER_MSG_MAX) return 0;
    return protobuf_c_message_pack(&req.base, buf);
}

/* Sends c->inflight. Returns 0 (sent), -EAGAIN (socket full: retried on EPOLLOUT) or -errno. */
static int conn_send_inflight(struct zconn *c)
{
    struct zreq *r = c->inflight;
    uint8_t buf[ZDS_SERVER_MSG_MAX];
    size_t n = req_pack(r, buf);
    if (!n) return -EMSGSIZE;
    struct iovec iov = {.iov_base = buf, .iov_len = n};
    union {
        char b[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } cbuf;
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    if (r->kind == ZREQ_ADD) {
        /* Exactly one fd, and only on Add (ztunnel refuses an fd on any other request). */
        memset(&cbuf, 0, sizeof cbuf);
        mh.msg_control = cbuf.b;
        mh.msg_controllen = sizeof cbuf.b;
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(cm), &r->fd, sizeof(int));
    }
    ssize_t w;
    do
        w = sendmsg(c->io.fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
    while (w < 0 && errno == EINTR);
    if (w < 0) return errno == EAGAIN || errno == EWOULDBLOCK ? -EAGAIN : -errno;
    if ((size_t)w != n) return -EIO; /* SOCK_SEQPACKET sends whole packets */
    return 0;
}

static void conn_watch(struct zconn *c, uint32_t ev)
{
    int r = loop_io_mod(c->s->l, &c->io, ev);
    if (r < 0) {
        char why[96];
        snprintf(why, sizeof why, "cannot watch the socket: %s", strerror(-r));
        conn_close(c, false, why);
    }
}

/* Sends the next queued request when none is outstanding. */
static void conn_pump(struct zconn *c)
{
    while (!c->closing && c->state == ZCONN_READY && (c->inflight || c->qhead)) {
        if (c->inflight && c->sent) return; /* waiting for the answer */
        if (!c->inflight) {
            c->inflight = c->qhead;
            QUEUE_DEL(c->qhead, c->qtail, c->inflight, qprev, qnext);
            c->qlen--;
            c->sent = false;
        }
        struct zreq *r = c->inflight;
        int e = conn_send_inflight(c);
        if (e == -EAGAIN) {
            conn_watch(c, EPOLLIN | EPOLLOUT);
            return;
        }
        if (e == -EMSGSIZE) {
            LOG_E(TGT, "%s for %s does not fit one %d-byte packet; not sent", zreq_kind_to_str(r->kind),
                  r->uid ? r->uid : "-", ZDS_SERVER_MSG_MAX);
            c->inflight = NULL;
            req_end(r, -EMSGSIZE, NULL);
            continue;
        }
        if (e < 0) {
            char why[96];
            snprintf(why, sizeof why, "cannot send %s: %s", zreq_kind_to_str(r->kind), strerror(-e));
            conn_close(c, false, why);
            return;
        }
        c->sent = true;
        LOG_D(TGT, "sent %s %s to ztunnel connection %llu", zreq_kind_to_str(r->kind), r->uid ? r->uid : "",
              (unsigned long long)c->id);
        timer_start(c->s->l, &c->deadline, ZDS_SERVER_DEADLINE_MS);
        conn_watch(c, EPOLLIN);
        return;
    }
}

/* Queues the snapshot: every kept pod, then SnapshotSent. */
static int conn_queue_snapshot(struct zconn *c)
{
    struct zds_server *s = c->s;
    for (struct zpod *p = s->pods; p; p = p->next) {
        struct zreq *r = req_new(ZREQ_ADD, p->uid, p->name, p->ns, p->sa, p->fd);
        if (!r) return -ENOMEM;
        log_kv(LOG_INFO, TGT, "sending pod to ztunnel as part of snapshot", "uid", p->uid, "name", p->name,
               "namespace", p->ns, "serviceAccount", p->sa, NULL);
        conn_enqueue(c, r);
    }
    struct zreq *r = req_new(ZREQ_SNAPSHOT_SENT, NULL, NULL, NULL, NULL, -1);
    if (!r) return -ENOMEM;
    conn_enqueue(c, r);
    return 0;
}

/* The answer to c->inflight. */
static void conn_answer(struct zconn *c, const Istio__Workload__Zds__WorkloadResponse *resp)
{
    struct zds_server *s = c->s;
    struct zreq *r = c->inflight;
    c->inflight = NULL;
    timer_stop(s->l, &c->deadline);
    const char *err = resp->payload_case == ISTIO__WORKLOAD__ZDS__WORKLOAD_RESPONSE__PAYLOAD_ACK && resp->ack &&
                              resp->ack->error
                          ? resp->ack->error
                          : "";
    if (*err) {
        s->st.nacks++;
        log_kv(LOG_ERROR, TGT, "ztunnel responded with an ack error", "request", zreq_kind_to_str(r->kind),
               "uid", r->uid ? r->uid : "", "ackErr", err, NULL);
        req_end(r, -EPROTO, err);
    } else {
        s->st.acks++;
        if (r->kind == ZREQ_SNAPSHOT_SENT) {
            s->st.snapshots++;
            LOG_I(TGT, "snapshot acked by ztunnel connection %llu", (unsigned long long)c->id);
        } else {
            LOG_D(TGT, "ztunnel acked %s %s", zreq_kind_to_str(r->kind), r->uid);
        }
        req_end(r, 0, NULL);
    }
}

static void conn_hello(struct zconn *c, const uint8_t *buf, size_t n)
{
    ProtobufCMessage *m = NULL;
    int r = pb_message_unpack(&istio__workload__zds__zds_hello__descriptor, buf, n, &m);
    if (r < 0) {
        conn_close(c, true, "undecodable ZdsHello");
        return;
    }
    Istio__Workload__Zds__ZdsHello *h = (Istio__Workload__Zds__ZdsHello *)m;
    int version = (int)h->version;
    protobuf_c_message_free_unpacked(m, NULL);
    if (version != ISTIO__WORKLOAD__ZDS__VERSION__V1) {
        char why[64];
        snprintf(why, sizeof why, "ZdsHello version %d, not V1", version);
        conn_close(c, true, why);
        return;
    }
    timer_stop(c->s->l, &c->deadline);
    c->state = ZCONN_READY;
    log_kv(LOG_INFO, TGT, "received hello from ztunnel", "version", "V1", NULL);
    if (conn_queue_snapshot(c) < 0) {
        conn_close(c, false, "out of memory building the snapshot");
        return;
    }
    conn_pump(c);
}

static void conn_read(struct zconn *c)
{
    uint8_t buf[ZDS_SERVER_MSG_MAX];
    union {
        char b[CMSG_SPACE(sizeof(int) * ZDS_SERVER_RX_FDS)];
        struct cmsghdr align;
    } cbuf;
    struct iovec iov = {.iov_base = buf, .iov_len = sizeof buf};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf.b, .msg_controllen = sizeof cbuf.b};
    ssize_t n;
    do
        n = recvmsg(c->io.fd, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) return;
        char why[96];
        snprintf(why, sizeof why, "recvmsg: %s", strerror(errno));
        conn_close(c, false, why);
        return;
    }
    /* ztunnel never sends fds: any it did are closed, and so is the connection. */
    size_t nfds = 0;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
        size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < k; i++) {
            int fd;
            memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof fd);
            close(fd);
            nfds++;
        }
    }
    if (n == 0) {
        conn_close(c, false, "ztunnel closed the connection");
        return;
    }
    if (mh.msg_flags & MSG_TRUNC) {
        conn_close(c, true, "truncated message");
        return;
    }
    if (mh.msg_flags & MSG_CTRUNC) {
        conn_close(c, true, "truncated control message");
        return;
    }
    if (nfds || mh.msg_controllen) {
        conn_close(c, true, "unexpected control message from ztunnel");
        return;
    }
    if (c->state == ZCONN_HELLO) {
        conn_hello(c, buf, (size_t)n);
        return;
    }
    if (!c->inflight || !c->sent) {
        /* Istio's keepalive read: ztunnel must not speak unless asked. */
        conn_close(c, true, "ztunnel protocol error, unexpected message");
        return;
    }
    ProtobufCMessage *m = NULL;
    int r = pb_message_unpack(&istio__workload__zds__workload_response__descriptor, buf, (size_t)n, &m);
    if (r < 0) {
        conn_close(c, true, "undecodable WorkloadResponse");
        return;
    }
    Istio__Workload__Zds__WorkloadResponse *resp = (Istio__Workload__Zds__WorkloadResponse *)m;
    if (resp->payload_case != ISTIO__WORKLOAD__ZDS__WORKLOAD_RESPONSE__PAYLOAD_ACK) {
        protobuf_c_message_free_unpacked(m, NULL);
        conn_close(c, true, "WorkloadResponse without an ack");
        return;
    }
    conn_answer(c, resp);
    protobuf_c_message_free_unpacked(m, NULL);
    conn_pump(c);
}

static void conn_io_cb(struct io *io, uint32_t ev)
{
    struct zconn *c = container_of(io, struct zconn, io);
    if (ev & EPOLLOUT) {
        conn_watch(c, EPOLLIN);
        if (!c->closing) conn_pump(c);
    }
    if (!c->closing && (ev & (EPOLLIN | EPOLLERR | EPOLLHUP))) conn_read(c);
}

static void conn_deadline_cb(struct timer *t)
{
    struct zconn *c = container_of(t, struct zconn, deadline);
    if (c->state == ZCONN_HELLO) {
        conn_close(c, true, "no ZdsHello within the deadline");
        return;
    }
    struct zreq *r = c->inflight;
    if (!r) return;
    c->inflight = NULL;
    c->s->st.timeouts++;
    /* Istio logs and goes on with the next request (the connection may still be good). */
    log_kv(LOG_WARN, TGT, "timed out waiting for valid ztunnel response", "request", zreq_kind_to_str(r->kind),
           "uid", r->uid ? r->uid : "", NULL);
    req_end(r, -ETIMEDOUT, NULL);
    conn_pump(c);
}

static void accept_cb(struct io *io, uint32_t ev)
{
    struct zds_server *s = container_of(io, struct zds_server, lio);
    for (;;) {
        int fd = accept4(s->lio.fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                LOG_LIMITED(LOG_WARN, TGT, "accept on %s: %s", s->path, strerror(errno));
            return;
        }
        if (s->nconns >= ZDS_SERVER_CONNS_MAX) {
            LOG_LIMITED(LOG_WARN, TGT, "ztunnel connection refused: %d connected already (the bound)",
                        ZDS_SERVER_CONNS_MAX);
            close(fd);
            continue;
        }
        struct zconn *c = calloc(1, sizeof *c);
        if (!c) {
            close(fd);
            continue;
        }
        c->s = s;
        c->id = ++s->next_id;
        c->io.fd = fd;
        c->io.cb = conn_io_cb;
        c->deadline.cb = conn_deadline_cb;
        c->state = ZCONN_HELLO;
        if (loop_io_add(s->l, &c->io, EPOLLIN) < 0) {
            close(fd);
            free(c);
            continue;
        }
        LIST_PUSH(s->conns, c);
        s->nconns++;
        s->st.accepted++;
        timer_start(s->l, &c->deadline, ZDS_SERVER_DEADLINE_MS);
        LOG_I(TGT, "new ztunnel connected (connection %llu, %s), total connected %zu", (unsigned long long)c->id,
              zconn_state_to_str(c->state), s->nconns);
    }
}

/* ---- public ---- */

/* mkdir -p of path's parent directory. */
static int mkdir_parent(const char *path)
{
    char d[sizeof(((struct sockaddr_un *)0)->sun_path)];
    snprintf(d, sizeof d, "%s", path);
    char *slash = strrchr(d, '/');
    if (!slash || slash == d) return 0;
    *slash = '\0';
    for (char *p = d + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(d, 0755) < 0 && errno != EEXIST) return -errno;
        *p = '/';
    }
    if (mkdir(d, 0755) < 0 && errno != EEXIST) return -errno;
    return 0;
}

int zds_server_new(struct loop *l, const char *path, struct zds_server **out)
{
    if (!path) path = ZDS_SERVER_DEFAULT_PATH;
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    if (!*path || strlen(path) >= sizeof sun.sun_path) return -ENAMETOOLONG;
    memcpy(sun.sun_path, path, strlen(path) + 1);
    int r = mkdir_parent(path);
    if (r < 0) {
        LOG_E(TGT, "cannot create the directory of %s: %s", path, strerror(-r));
        return r;
    }
    /* A socket file left by a previous agent is replaced (Istio removes it before listening). */
    if (unlink(path) < 0 && errno != ENOENT) return -errno;
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    if (bind(fd, (struct sockaddr *)&sun, sizeof sun) < 0 || listen(fd, ZDS_SERVER_CONNS_MAX) < 0) {
        r = -errno;
        close(fd);
        return r;
    }
    struct zds_server *s = calloc(1, sizeof *s);
    if (!s) {
        close(fd);
        return -ENOMEM;
    }
    s->l = l;
    memcpy(s->path, path, strlen(path) + 1);
    s->lio.fd = fd;
    s->lio.cb = accept_cb;
    r = loop_io_add(l, &s->lio, EPOLLIN);
    if (r < 0) {
        close(fd);
        free(s);
        return r;
    }
    LOG_I(TGT, "ZDS server listening on %s", path);
    *out = s;
    return 0;
}

void zds_server_free(struct zds_server *s)
{
    if (!s) return;
    while (s->conns) {
        struct zconn *c = s->conns;
        /* Pending requests end with -ECANCELED rather than -ECONNRESET: it is the server going away. */
        if (c->inflight) req_end(c->inflight, -ECANCELED, NULL);
        c->inflight = NULL;
        while (c->qhead) {
            struct zreq *r = c->qhead;
            QUEUE_DEL(c->qhead, c->qtail, r, qprev, qnext);
            req_end(r, -ECANCELED, NULL);
        }
        timer_stop(s->l, &c->deadline);
        loop_io_close(s->l, &c->io);
        LIST_DEL(s->conns, c);
        if (!c->closing) free(c);
    }
    /* Connections closed earlier are freed by their queued task, which does not touch s. */
    loop_io_close(s->l, &s->lio);
    unlink(s->path);
    while (s->pods) {
        struct zpod *p = s->pods;
        LIST_DEL(s->pods, p);
        pod_free(p);
    }
    free(s);
}

int zds_server_add(struct zds_server *s, const char *uid, const char *name, const char *namespace_,
                   const char *service_account, int netns_fd, zds_server_done_fn done, void *ud)
{
    if (!uid || !*uid || netns_fd < 0) return -EINVAL;
    struct zpod *p = pod_find(s, uid);
    if (!p && s->npods >= ZDS_SERVER_PODS_MAX) return -ENOSPC;
    int fd = fcntl(netns_fd, F_DUPFD_CLOEXEC, 0);
    if (fd < 0) return errno == EBADF ? -EINVAL : -errno;
    char *n = strdup(name ? name : ""), *ns = strdup(namespace_ ? namespace_ : ""),
         *sa = strdup(service_account ? service_account : ""), *u = p ? NULL : strdup(uid);
    if (!n || !ns || !sa || (!p && !u) || (!p && !(p = calloc(1, sizeof *p)))) {
        free(n), free(ns), free(sa), free(u);
        close(fd);
        return -ENOMEM;
    }
    if (u) {
        p->uid = u;
        p->fd = -1;
        LIST_PUSH(s->pods, p);
        s->npods++;
    }
    if (p->fd >= 0) close(p->fd);
    free(p->name), free(p->ns), free(p->sa);
    p->name = n, p->ns = ns, p->sa = sa, p->fd = fd;

    /* The newest connection: Istio's LatestConn. */
    struct zconn *c = s->conns;
    while (c && c->closing)
        c = c->next;
    if (!c) {
        log_kv(LOG_WARN, TGT, "no ztunnel connected; pod kept for the next snapshot", "uid", uid, NULL);
        return -ENOTCONN;
    }
    if (c->qlen >= ZDS_SERVER_QUEUE_MAX) {
        conn_close(c, false, "too many requests waiting: ztunnel does not answer");
        return -ENOTCONN;
    }
    struct zreq *r = req_new(ZREQ_ADD, uid, p->name, p->ns, p->sa, p->fd);
    if (!r) return -ENOMEM;
    r->done = done;
    r->ud = ud;
    log_kv(LOG_INFO, TGT, "sending pod add to ztunnel", "uid", uid, "name", p->name, "namespace", p->ns,
           "serviceAccount", p->sa, NULL);
    conn_enqueue(c, r);
    conn_pump(c);
    return 0;
}

int zds_server_del(struct zds_server *s, const char *uid)
{
    if (!uid || !*uid) return -EINVAL;
    struct zpod *p = pod_find(s, uid);
    if (p) {
        LIST_DEL(s->pods, p);
        s->npods--;
        pod_free(p);
    }
    log_kv(LOG_INFO, TGT, "sending delete pod to all ztunnels", "uid", uid, NULL);
    for (struct zconn *c = s->conns, *nx; c; c = nx) {
        nx = c->next;
        if (c->closing) continue;
        if (c->qlen >= ZDS_SERVER_QUEUE_MAX) {
            conn_close(c, false, "too many requests waiting: ztunnel does not answer");
            continue;
        }
        struct zreq *r = req_new(ZREQ_DEL, uid, NULL, NULL, NULL, -1);
        if (!r) {
            conn_close(c, false, "out of memory queuing a Del");
            continue;
        }
        conn_enqueue(c, r);
        conn_pump(c);
    }
    return p ? 0 : -ENOENT;
}

bool zds_server_has_pod(const struct zds_server *s, const char *uid)
{
    return pod_find(s, uid) != NULL;
}

void zds_server_stats(const struct zds_server *s, struct zds_server_stats *out)
{
    *out = s->st;
    out->connections = s->nconns;
    out->pods = s->npods;
}
