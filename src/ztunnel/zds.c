/* The ZDS client (see zds.h). Facts: istio/ztunnel src/inpod/{protocol,workloadmanager,statemanager}.rs. */
#include "ztunnel/zds.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <linux/nsfs.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "core/list.h"
#include "core/log.h"
#include "xds/pb.h"
#include "zds.pb-c.h"

#define TGT "inpod"
/* Packets taken per readiness event before the loop's other fds get a turn (requests are tiny). */
#define ZDS_READ_BATCH 16

typedef Istio__Workload__Zds__WorkloadRequest WorkloadRequest;

enum wl_state { WL_STARTING, WL_RUNNING, WL_FAILED };

/* One workload the module knows: being started, served, or waiting for a retry. A node has at most a few
 * hundred, and a request looks one up once, so they are a list searched by uid (the project's hash table is
 * the snapshot's, insert-only and private to src/mesh). */
struct zds_wl {
    struct zds_wl *prev, *next;
    char *uid, *name, *ns, *sa;
    int fd;
    uint64_t ino, dev;
    enum wl_state st;
    bool mentioned;      /* by an Add or Keep of the current connection's snapshot */
    uint64_t retry_pass; /* the last retry pass that asked the owner about it */
};

enum zds_op { OP_ADD, OP_KEEP, OP_DEL, OP_SNAPSHOT_SENT };

/* The one request (or retry) the owner has not answered yet. */
struct zds_call {
    uint64_t ticket; /* 0: none */
    enum zds_op op;
    bool retry;
    uint64_t conn_gen; /* the connection it belongs to */
    struct zds_wl *wl; /* OP_ADD */
    uint64_t asked_ms; /* loop time of the callback */
};

struct zds_client {
    struct loop *l;
    const struct zds_ops *ops;
    void *ud;
    struct sockaddr_un sun;
    uint64_t retry_ms, backoff_max_ms;
    struct io io;
    bool io_registered;
    enum zds_conn_state state;
    uint64_t conn_gen;
    bool snapshot_received;
    struct timer reconnect, retry;
    /* Runs the retry pass from the loop: a 0 ms timer, since unlike a task it can be stopped. */
    struct timer kick;
    bool retry_due, in_pass;
    uint64_t retry_pass;
    struct zds_wl *wls;
    size_t nwl;
    struct zds_call call;
    uint64_t next_ticket;
    uint8_t out[ZDS_MSG_MAX]; /* an answer the socket could not take yet */
    size_t outlen;
    struct zds_stats st;
};

const char *zds_conn_state_to_str(enum zds_conn_state s)
{
    switch (s) {
    case ZDS_IDLE:
        return "idle";
    case ZDS_CONNECTED:
        return "connected";
    case ZDS_BACKOFF:
        return "backoff";
    }
    return "?";
}

static const char *wl_state_to_str(enum wl_state s)
{
    switch (s) {
    case WL_STARTING:
        return "starting";
    case WL_RUNNING:
        return "running";
    case WL_FAILED:
        return "failed";
    }
    return "?";
}

/* ---- workloads ---- */

static struct zds_wl *wl_find(struct zds_client *c, const char *uid)
{
    for (struct zds_wl *w = c->wls; w; w = w->next)
        if (strcmp(w->uid, uid) == 0) return w;
    return NULL;
}

static void wl_forget(struct zds_client *c, struct zds_wl *w)
{
    LIST_DEL(c->wls, w);
    c->nwl--;
    if (w->fd >= 0) close(w->fd);
    free(w->uid);
    free(w->name);
    free(w->ns);
    free(w->sa);
    free(w);
}

static void count_states(const struct zds_client *c, size_t *running, size_t *failed)
{
    *running = *failed = 0;
    for (const struct zds_wl *w = c->wls; w; w = w->next) {
        if (w->st == WL_RUNNING) (*running)++;
        if (w->st == WL_FAILED) (*failed)++;
    }
}

/* ---- the socket ---- */

static void conn_end(struct zds_client *c, bool protocol_error, const char *why);

/* The epoll mask the connection needs now: out for a held answer, in when a request may be taken, else none
 * while the owner works on one or a retry pass runs (Istio's retry_pending completes before the next read;
 * epoll still reports a hang-up then, which ends the connection). */
static void update_io(struct zds_client *c)
{
    if (c->state != ZDS_CONNECTED) return;
    uint32_t want = c->outlen ? EPOLLOUT : (c->call.ticket || c->in_pass ? 0 : EPOLLIN);
    int r = c->io_registered ? loop_io_mod(c->l, &c->io, want) : loop_io_add(c->l, &c->io, want);
    if (r < 0) {
        char why[96];
        snprintf(why, sizeof why, "cannot watch the socket: %s", strerror(-r));
        conn_end(c, false, why);
        return;
    }
    c->io_registered = true;
}

/* Sends one message. Returns 0 (sent, or held until the socket is writable) or -errno (connection broken). */
static int send_packed(struct zds_client *c, const ProtobufCMessage *m)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    if (n > sizeof c->out) return -EMSGSIZE; /* answers are cut to fit before they get here */
    uint8_t buf[ZDS_MSG_MAX];
    protobuf_c_message_pack(m, buf);
    for (;;) {
        ssize_t w = send(c->io.fd, buf, n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w == (ssize_t)n) return 0;
        if (w >= 0) return -EIO; /* SOCK_SEQPACKET sends whole packets */
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            memcpy(c->out, buf, n);
            c->outlen = n;
            return 0;
        }
        return -errno;
    }
}

static void flush_out(struct zds_client *c)
{
    ssize_t w;
    do
        w = send(c->io.fd, c->out, c->outlen, MSG_NOSIGNAL | MSG_DONTWAIT);
    while (w < 0 && errno == EINTR);
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    if (w < 0) {
        char why[96];
        snprintf(why, sizeof why, "cannot send an answer: %s", strerror(errno));
        conn_end(c, false, why);
        return;
    }
    c->outlen = 0;
    update_io(c);
}

/* Cuts s to at most max bytes at a UTF-8 character boundary (the peer decodes a proto3 string as UTF-8). */
static size_t utf8_cut(const char *s, size_t len, size_t max)
{
    if (len <= max) return len;
    size_t n = max;
    while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
        n--;
    return n;
}

/* Room for an Ack's text in one packet: WorkloadResponse{ack(1): Ack{error(1)}} costs 2 tags and 2 lengths
 * of at most 2 bytes each around it. */
#define ZDS_ACK_TEXT_MAX (ZDS_MSG_MAX - 6)

/* Sends Ack{prefix + reason} (prefix NULL: an empty error, the Ack). Returns 0 or -errno. */
static int send_ack(struct zds_client *c, const char *prefix, const char *reason)
{
    char text[ZDS_ACK_TEXT_MAX + 1] = "";
    if (prefix) {
        size_t pl = strlen(prefix), rl = strlen(reason);
        size_t keep = utf8_cut(reason, rl, ZDS_ACK_TEXT_MAX - pl);
        if (keep < rl)
            LOG_W(TGT, "NACK reason cut from %zu to %zu bytes to fit one %d-byte packet", rl, keep,
                  ZDS_MSG_MAX);
        memcpy(text, prefix, pl);
        memcpy(text + pl, reason, keep);
        text[pl + keep] = '\0';
        c->st.nacks++;
    } else {
        c->st.acks++;
    }
    Istio__Workload__Zds__Ack ack = ISTIO__WORKLOAD__ZDS__ACK__INIT;
    ack.error = text;
    Istio__Workload__Zds__WorkloadResponse r = ISTIO__WORKLOAD__ZDS__WORKLOAD_RESPONSE__INIT;
    r.payload_case = ISTIO__WORKLOAD__ZDS__WORKLOAD_RESPONSE__PAYLOAD_ACK;
    r.ack = &ack;
    return send_packed(c, &r.base);
}

/* Answers the request in hand on the current connection; a broken socket ends the connection. */
static void answer(struct zds_client *c, const char *prefix, const char *reason)
{
    int r = send_ack(c, prefix, reason);
    if (r < 0) {
        char why[96];
        snprintf(why, sizeof why, "cannot send an answer: %s", strerror(-r));
        conn_end(c, false, why);
    }
}

/* ---- connection life ---- */

static void connect_now(struct zds_client *c);

static void reconnect_cb(struct timer *t)
{
    connect_now(container_of(t, struct zds_client, reconnect));
}

static uint64_t backoff_grow(struct zds_client *c)
{
    c->st.backoff_ms *= 2;
    if (c->st.backoff_ms > c->backoff_max_ms) c->st.backoff_ms = c->backoff_max_ms;
    return c->st.backoff_ms;
}

/* The connection is over: close it, forget what belongs to it (failed starts, the snapshot's marks: Istio's
 * reset_snapshot, run for each new connection) and schedule the next. Workloads served survive: the next
 * connection's snapshot confirms or drains them. A connection that delivered its snapshot and ended without
 * a protocol error is followed at once with the backoff reset (Istio reconnects at once after a stream ends);
 * a protocol error or an end before the snapshot waits and doubles it, so a node agent that keeps refusing
 * ztunnel is not hammered. */
static void notify_state(struct zds_client *c)
{
    if (c->ops->state_changed) c->ops->state_changed(c->ud);
}

static void conn_end(struct zds_client *c, bool protocol_error, const char *why)
{
    if (c->state != ZDS_CONNECTED) return;
    if (c->io_registered) loop_io_del(c->l, &c->io);
    c->io_registered = false;
    close(c->io.fd);
    c->io.fd = -1;
    c->outlen = 0;
    c->state = ZDS_BACKOFF;
    snprintf(c->st.last_error, sizeof c->st.last_error, "%s", why);
    for (struct zds_wl *w = c->wls, *nx; w; w = nx) {
        nx = w->next;
        if (w->st == WL_FAILED) wl_forget(c, w);
    }
    timer_stop(c->l, &c->retry);
    c->retry_due = c->in_pass = false;
    uint64_t delay;
    if (protocol_error || !c->snapshot_received) {
        delay = backoff_grow(c);
    } else {
        c->st.backoff_ms = ZDS_BACKOFF_INITIAL_MS;
        delay = 0;
    }
    c->snapshot_received = false;
    if (protocol_error) {
        c->st.protocol_errors++;
        LOG_W(TGT, "protocol error from the node agent: %s; closing the connection, reconnecting in %llums",
              why, (unsigned long long)delay);
    } else {
        LOG_I(TGT, "connection to the node agent ended: %s; reconnecting in %llums", why,
              (unsigned long long)delay);
    }
    timer_start(c->l, &c->reconnect, delay);
    notify_state(c);
}

static int send_hello(struct zds_client *c)
{
    Istio__Workload__Zds__ZdsHello h = ISTIO__WORKLOAD__ZDS__ZDS_HELLO__INIT;
    h.version = ISTIO__WORKLOAD__ZDS__VERSION__V1;
    return send_packed(c, &h.base);
}

static void connected(struct zds_client *c, int fd)
{
    c->io.fd = fd;
    c->state = ZDS_CONNECTED;
    c->conn_gen++;
    c->st.connects++;
    c->snapshot_received = false;
    for (struct zds_wl *w = c->wls; w; w = w->next)
        w->mentioned = false;
    LOG_I(TGT, "connected to the node agent at %s", c->sun.sun_path);
    int r = send_hello(c);
    if (r < 0) {
        char why[96];
        snprintf(why, sizeof why, "cannot send the hello: %s", strerror(-r));
        conn_end(c, false, why);
        return;
    }
    update_io(c);
    notify_state(c);
}

static void connect_now(struct zds_client *c)
{
    if (c->state == ZDS_CONNECTED) return;
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int err = fd < 0 ? errno : 0;
    if (fd >= 0 && connect(fd, (struct sockaddr *)&c->sun, sizeof c->sun) < 0) {
        err = errno;
        close(fd);
    }
    if (!err) {
        connected(c, fd);
        return;
    }
    /* Istio's connect loop: the wait doubles before each sleep, so 20 ms, 40 ms ... 15 s. */
    uint64_t wait = backoff_grow(c);
    c->state = ZDS_BACKOFF;
    snprintf(c->st.last_error, sizeof c->st.last_error, "connect: %s", strerror(err));
    LOG_W(TGT,
          "failed to connect to the Istio CNI node agent over %s, is the node agent healthy? details: %s. "
          "retrying in %llums",
          c->sun.sun_path, strerror(err), (unsigned long long)wait);
    timer_start(c->l, &c->reconnect, wait);
}

/* ---- the owner's calls ---- */

/* Asks the owner; the answer (zds_reply) may come before this returns. */
static void call_owner(struct zds_client *c, enum zds_op op, struct zds_wl *w, bool retry, bool replace,
                       const char *uid, const char *const *stale, size_t nstale)
{
    uint64_t ticket = ++c->next_ticket;
    c->call = (struct zds_call){.ticket = ticket,
                                .op = op,
                                .retry = retry,
                                .conn_gen = c->conn_gen,
                                .wl = w,
                                .asked_ms = loop_now(c->l)};
    update_io(c);
    switch (op) {
    case OP_ADD: {
        struct zds_add a = {.uid = w->uid,
                            .name = w->name,
                            .namespace_ = w->ns,
                            .service_account = w->sa,
                            .netns_fd = w->fd,
                            .netns_ino = w->ino,
                            .netns_dev = w->dev,
                            .replace = replace,
                            .retry = retry};
        c->ops->add(c->ud, ticket, &a);
        break;
    }
    case OP_KEEP:
        if (c->ops->keep)
            c->ops->keep(c->ud, ticket, uid);
        else
            zds_reply(c, ticket, NULL);
        break;
    case OP_DEL:
        if (c->ops->del)
            c->ops->del(c->ud, ticket, uid);
        else
            zds_reply(c, ticket, NULL);
        break;
    case OP_SNAPSHOT_SENT:
        if (c->ops->snapshot_sent)
            c->ops->snapshot_sent(c->ud, ticket, stale, nstale);
        else
            zds_reply(c, ticket, NULL);
        break;
    }
}

static void schedule_retry(struct zds_client *c)
{
    if (!timer_armed(&c->retry) && !c->in_pass) {
        LOG_I(TGT, "scheduling retry of failed proxy starts in %llums", (unsigned long long)c->retry_ms);
        timer_start(c->l, &c->retry, c->retry_ms);
    }
}

int zds_reply(struct zds_client *c, uint64_t ticket, const char *error)
{
    if (!c || !ticket || ticket != c->call.ticket) return -ESTALE;
    struct zds_call k = c->call;
    c->call.ticket = 0;
    bool failed = error && *error;
    bool current = c->state == ZDS_CONNECTED && k.conn_gen == c->conn_gen;
    uint64_t took = loop_now(c->l) - k.asked_ms;
    if (!k.retry && current && took > ZDS_AGENT_DEADLINE_MS)
        LOG_W(TGT,
              "answered after %llums, beyond the node agent's %dms deadline: it may take this answer for its "
              "next request's",
              (unsigned long long)took, ZDS_AGENT_DEADLINE_MS);
    if (k.op == OP_ADD) {
        struct zds_wl *w = k.wl;
        if (!failed) {
            LOG_I(TGT, "proxy for workload %s started%s", w->uid, k.retry ? " on retry" : "");
            w->st = WL_RUNNING;
        } else if (current) {
            if (k.retry)
                LOG_I(TGT, "retrying workload %s failed: %s", w->uid, error);
            else
                LOG_E(TGT, "failed to start proxy for workload %s: %s", w->uid, error);
            w->st = WL_FAILED;
            if (!k.retry) w->retry_pass = c->retry_pass; /* not again in a pass under way */
            schedule_retry(c);
        } else {
            /* The connection that asked is gone, and with it this attempt (Istio drops failed starts on a new
             * connection; the next snapshot sends the pod again). */
            LOG_I(TGT, "failed to start proxy for workload %s: %s (connection gone, not retried)", w->uid,
                  error);
            wl_forget(c, w);
        }
    }
    if (!k.retry && current) {
        if (k.op == OP_ADD)
            answer(c, failed ? ZDS_NACK_START : NULL, error);
        else
            answer(c, failed ? ZDS_NACK_PROCESS : NULL, error);
    }
    if (k.retry || c->retry_due || c->in_pass) timer_start(c->l, &c->kick, 0);
    update_io(c);
    return 0;
}

static void retry_timer_cb(struct timer *t)
{
    struct zds_client *c = container_of(t, struct zds_client, retry);
    c->retry_due = true;
    timer_start(c->l, &c->kick, 0);
}

/* One retry pass (Istio's retry_pending): every failed workload is asked once more, one at a time; at the end
 * the timer is armed again if some still fail. */
static void kick_cb(struct timer *t)
{
    struct zds_client *c = container_of(t, struct zds_client, kick);
    if (c->call.ticket || c->state != ZDS_CONNECTED) return; /* re-queued when the call is answered */
    if (c->retry_due && !c->in_pass) {
        c->retry_due = false;
        c->in_pass = true;
        c->retry_pass++;
    }
    if (!c->in_pass) return;
    for (struct zds_wl *w = c->wls; w; w = w->next) {
        if (w->st != WL_FAILED || w->retry_pass == c->retry_pass) continue;
        w->retry_pass = c->retry_pass;
        w->st = WL_STARTING;
        LOG_I(TGT, "retrying workload %s", w->uid);
        call_owner(c, OP_ADD, w, true, false, NULL, NULL, 0);
        return;
    }
    c->in_pass = false;
    size_t running, failed;
    count_states(c, &running, &failed);
    if (failed) schedule_retry(c);
    update_io(c);
}

/* ---- requests ---- */

/* Whether fd is a network namespace: NS_GET_NSTYPE where the kernel has it, else a file of nsfs or proc (the
 * check of protocol.rs's validate_ns, which Istio only logs; zmesh refuses the Add). */
static bool is_netns(int fd)
{
    int t = ioctl(fd, NS_GET_NSTYPE);
    if (t >= 0) return t == CLONE_NEWNET;
    struct statfs sf;
    if (fstatfs(fd, &sf) < 0) return false;
    return sf.f_type == NSFS_MAGIC || sf.f_type == PROC_SUPER_MAGIC;
}

static char *dup_str(const char *s)
{
    return strdup(s ? s : "");
}

/* An Add with its netns fd (owned here). */
static void handle_add(struct zds_client *c, const Istio__Workload__Zds__AddWorkload *a, int fd)
{
    const Istio__Workload__Zds__WorkloadInfo *wi = a->workload_info;
    log_kv(LOG_INFO, TGT, "pod received, starting proxy", "uid", a->uid, "name", wi->name, "namespace",
           wi->namespace_, NULL);
    struct zds_wl *w = wl_find(c, a->uid);
    if (w) LOG_D(TGT, "workload %s is known (%s)", w->uid, wl_state_to_str(w->st));
    if (w && !c->snapshot_received) w->mentioned = true;
    struct stat sb;
    if (fstat(fd, &sb) < 0 || !is_netns(fd)) {
        close(fd);
        LOG_E(TGT, "workload %s: the fd sent with Add is not a network namespace", a->uid);
        answer(c, ZDS_NACK_START, "the fd sent with Add is not a network namespace");
        return;
    }
    if (w && w->st == WL_RUNNING && w->ino == (uint64_t)sb.st_ino && w->dev == (uint64_t)sb.st_dev) {
        /* Idempotent: the same pod in the same namespace is already served. */
        close(fd);
        LOG_D(TGT, "workload %s already has a proxy in this netns", a->uid);
        answer(c, NULL, NULL);
        return;
    }
    char *uid = NULL, *name = dup_str(wi->name), *ns = dup_str(wi->namespace_),
         *sa = dup_str(wi->service_account);
    if (!w) {
        if (c->nwl >= ZDS_WORKLOADS_MAX) {
            close(fd);
            free(name), free(ns), free(sa);
            LOG_E(TGT, "workload %s refused: %d workloads already (the bound)", a->uid, ZDS_WORKLOADS_MAX);
            answer(c, ZDS_NACK_START, "too many workloads on this node");
            return;
        }
        w = calloc(1, sizeof *w);
        uid = dup_str(a->uid);
    }
    if (!w || !name || !ns || !sa || (!uid && !w->uid)) {
        if (w && !w->uid) free(w);
        free(uid), free(name), free(ns), free(sa);
        close(fd);
        answer(c, ZDS_NACK_START, "out of memory");
        return;
    }
    bool replace = false;
    int old_fd = -1;
    if (uid) {
        w->uid = uid;
        w->fd = -1;
        w->mentioned = !c->snapshot_received;
        LIST_PUSH(c->wls, w);
        c->nwl++;
    } else {
        /* Known: a new netns replaces the one served (a pod sandbox re-created after a CNI failure), or a
         * failed start is tried again with what this Add brings. */
        replace = w->st == WL_RUNNING;
        if (replace) LOG_I(TGT, "workload %s moved to a new netns; replacing its proxy", w->uid);
        old_fd = w->fd;
        free(w->name), free(w->ns), free(w->sa);
    }
    w->name = name, w->ns = ns, w->sa = sa;
    w->fd = fd;
    w->ino = (uint64_t)sb.st_ino;
    w->dev = (uint64_t)sb.st_dev;
    w->st = WL_STARTING;
    call_owner(c, OP_ADD, w, false, replace, NULL, NULL, 0);
    if (old_fd >= 0) close(old_fd);
}

static void handle_keep(struct zds_client *c, const char *uid)
{
    log_kv(LOG_INFO, TGT, "pod keep received. will not delete it when snapshot is sent", "uid", uid, NULL);
    struct zds_wl *w = wl_find(c, uid);
    if (w) w->mentioned = true;
    call_owner(c, OP_KEEP, NULL, false, false, uid, NULL, 0);
}

/* Del: a served workload is stopped at once (Istio, before the snapshot, only forgets the mention and lets
 * SnapshotSent drain it: the end state is the same); a failed or unknown one is forgotten with an Ack. */
static void handle_del(struct zds_client *c, const char *uid)
{
    log_kv(LOG_INFO, TGT, "pod delete request, shutting down proxy", "uid", uid, NULL);
    struct zds_wl *w = wl_find(c, uid);
    if (!w || w->st != WL_RUNNING) {
        if (w) wl_forget(c, w);
        size_t running, failed;
        count_states(c, &running, &failed);
        if (!failed) timer_stop(c->l, &c->retry); /* nothing left to retry */
        answer(c, NULL, NULL);
        return;
    }
    call_owner(c, OP_DEL, w, false, false, w->uid, NULL, 0);
    wl_forget(c, w);
}

/* SnapshotSent: Istio's reconcile. Workloads served but not mentioned are handed to the owner to drain. */
static void handle_snapshot_sent(struct zds_client *c)
{
    LOG_I(TGT, "received snapshot sent");
    c->snapshot_received = true;
    size_t n = 0;
    for (struct zds_wl *w = c->wls; w; w = w->next)
        if (!w->mentioned && w->st == WL_RUNNING) n++;
    const char **stale = n ? calloc(n, sizeof *stale) : NULL;
    if (n && !stale) {
        c->snapshot_received = false;
        answer(c, ZDS_NACK_PROCESS, "out of memory");
        return;
    }
    size_t i = 0;
    for (struct zds_wl *w = c->wls; w; w = w->next)
        if (!w->mentioned && w->st == WL_RUNNING) stale[i++] = w->uid;
    if (n) LOG_I(TGT, "draining %zu workloads the snapshot did not mention", n);
    call_owner(c, OP_SNAPSHOT_SENT, NULL, false, false, NULL, stale, n);
    free(stale);
    for (struct zds_wl *w = c->wls, *nx; w; w = nx) {
        nx = w->next;
        if (!w->mentioned) wl_forget(c, w);
    }
}

/* A protocol error: Istio answers the request with a NACK and ends the connection; so does zmesh, and it then
 * reconnects with backoff (Istio's workload manager stops for good on the errors of process_msg). */
static int protocol_error(struct zds_client *c, const char *prefix, const char *why)
{
    send_ack(c, prefix, why); /* best effort: the connection closes next */
    conn_end(c, true, why);
    return -EPROTO;
}

static void close_fds(const int *fds, size_t nfds)
{
    for (size_t i = 0; i < nfds; i++)
        close(fds[i]);
}

static int process_packet(struct zds_client *c, const uint8_t *data, size_t len, int flags, const int *fds,
                          size_t nfds, bool foreign_cmsg)
{
    char why[96];
    if (flags & MSG_TRUNC) {
        close_fds(fds, nfds);
        return protocol_error(c, ZDS_NACK_READ, "received truncated message");
    }
    if (flags & MSG_CTRUNC) {
        close_fds(fds, nfds);
        return protocol_error(c, ZDS_NACK_READ, "received truncated control message");
    }
    if (foreign_cmsg) {
        close_fds(fds, nfds);
        return protocol_error(c, ZDS_NACK_READ, "unexpected control message type");
    }
    if (nfds > 1) {
        close_fds(fds, nfds);
        snprintf(why, sizeof why, "expected 1 fd, got %zu", nfds);
        return protocol_error(c, ZDS_NACK_READ, why);
    }
    ProtobufCMessage *m = NULL;
    int r = pb_message_unpack(&istio__workload__zds__workload_request__descriptor, data, len, &m);
    if (r < 0) {
        close_fds(fds, nfds);
        snprintf(why, sizeof why, "cannot decode WorkloadRequest (%s)", strerror(-r));
        return protocol_error(c, ZDS_NACK_READ, why);
    }
    WorkloadRequest *req = (WorkloadRequest *)m;
    const char *perr = NULL, *prefix = ZDS_NACK_READ;
    const char *uid = NULL;
    switch (req->payload_case) {
    case ISTIO__WORKLOAD__ZDS__WORKLOAD_REQUEST__PAYLOAD_ADD:
        uid = req->add->uid;
        if (nfds == 0)
            perr = "Add without a netns fd (no control message)";
        else if (!req->add->workload_info)
            perr = "workload_info is required but not present", prefix = ZDS_NACK_PROCESS;
        break;
    case ISTIO__WORKLOAD__ZDS__WORKLOAD_REQUEST__PAYLOAD_KEEP:
        uid = req->keep->uid;
        if (nfds)
            perr = "unexpected control message on Keep";
        else if (c->snapshot_received)
            perr = "pod keep received after snapshot", prefix = ZDS_NACK_PROCESS;
        break;
    case ISTIO__WORKLOAD__ZDS__WORKLOAD_REQUEST__PAYLOAD_DEL:
        uid = req->del->uid;
        if (nfds) perr = "unexpected control message on Del";
        break;
    case ISTIO__WORKLOAD__ZDS__WORKLOAD_REQUEST__PAYLOAD_SNAPSHOT_SENT:
        if (nfds)
            perr = "unexpected control message on SnapshotSent";
        else if (c->snapshot_received)
            perr = "pod snapshot received already", prefix = ZDS_NACK_PROCESS;
        break;
    default:
        perr = "no payload";
        break;
    }
    /* Every pod has a uid; an empty one would make all such requests one workload. */
    if (!perr && uid && !*uid) perr = "empty uid", prefix = ZDS_NACK_PROCESS;
    if (perr) {
        close_fds(fds, nfds);
        protobuf_c_message_free_unpacked(m, NULL);
        return protocol_error(c, prefix, perr);
    }
    c->st.requests++;
    switch (req->payload_case) {
    case ISTIO__WORKLOAD__ZDS__WORKLOAD_REQUEST__PAYLOAD_ADD:
        handle_add(c, req->add, fds[0]);
        break;
    case ISTIO__WORKLOAD__ZDS__WORKLOAD_REQUEST__PAYLOAD_KEEP:
        handle_keep(c, uid);
        break;
    case ISTIO__WORKLOAD__ZDS__WORKLOAD_REQUEST__PAYLOAD_DEL:
        handle_del(c, uid);
        break;
    default:
        handle_snapshot_sent(c);
        break;
    }
    protobuf_c_message_free_unpacked(m, NULL);
    return 0;
}

/* Reads one packet. Returns 0 (taken), -EAGAIN (none waiting) or another negative code (connection ended). */
static int recv_one(struct zds_client *c)
{
    uint8_t buf[ZDS_MSG_MAX];
    union {
        char b[CMSG_SPACE(sizeof(int) * ZDS_FDS_MAX)];
        struct cmsghdr align;
    } cbuf;
    struct iovec iov = {.iov_base = buf, .iov_len = sizeof buf};
    struct msghdr mh = {
        .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf.b, .msg_controllen = sizeof cbuf.b};
    ssize_t n;
    do
        n = recvmsg(c->io.fd, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) return -EAGAIN;
        int e = errno;
        char why[96];
        snprintf(why, sizeof why, "recvmsg: %s", strerror(e));
        conn_end(c, false, why);
        return -e;
    }
    /* Collect every fd first, so that whatever happens next none leaks. */
    int fds[ZDS_FDS_MAX];
    size_t nfds = 0;
    bool foreign = false;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
        if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
            size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (size_t i = 0; i < k; i++) {
                int fd;
                memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof fd);
                if (nfds < ZDS_FDS_MAX)
                    fds[nfds++] = fd;
                else
                    close(fd); /* cannot happen: the buffer holds ZDS_FDS_MAX */
            }
        } else {
            foreign = true;
        }
    }
    if (n == 0) {
        /* End of stream (a SOCK_SEQPACKET peer's close; an empty packet reads the same, as in Istio). */
        close_fds(fds, nfds);
        conn_end(c, false, "the node agent closed the connection");
        return -ECONNRESET;
    }
    int r = process_packet(c, buf, (size_t)n, mh.msg_flags, fds, nfds, foreign);
    return r == -EPROTO ? -EPROTO : 0;
}

static void on_io(struct io *io, uint32_t ev)
{
    struct zds_client *c = container_of(io, struct zds_client, io);
    if (c->outlen) {
        if (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)) flush_out(c);
        return;
    }
    if (c->call.ticket || c->in_pass) {
        /* Only a hang-up is reported while the owner works; what the peer sent before it is dropped with the
         * connection (the next snapshot says the truth). */
        if (ev & (EPOLLERR | EPOLLHUP)) conn_end(c, false, "the node agent closed the connection");
        return;
    }
    for (int i = 0; i < ZDS_READ_BATCH; i++) {
        if (c->state != ZDS_CONNECTED || c->call.ticket || c->in_pass || c->outlen) break;
        if (recv_one(c) < 0) break;
    }
    update_io(c);
}

/* ---- public ---- */

int zds_client_new(struct loop *l, const struct zds_config *cfg, const struct zds_ops *ops, void *ud,
                   struct zds_client **out)
{
    if (!ops || !ops->add) return -EINVAL;
    const char *path = cfg && cfg->path ? cfg->path : ZDS_DEFAULT_PATH;
    struct zds_client *c = calloc(1, sizeof *c);
    if (!c) return -ENOMEM;
    if (strlen(path) >= sizeof c->sun.sun_path) {
        free(c);
        return -ENAMETOOLONG;
    }
    c->sun.sun_family = AF_UNIX;
    memcpy(c->sun.sun_path, path, strlen(path) + 1);
    c->l = l;
    c->ops = ops;
    c->ud = ud;
    c->retry_ms = cfg && cfg->retry_ms ? cfg->retry_ms : ZDS_RETRY_MS;
    c->backoff_max_ms = cfg && cfg->backoff_max_ms ? cfg->backoff_max_ms : ZDS_BACKOFF_MAX_MS;
    c->st.backoff_ms = ZDS_BACKOFF_INITIAL_MS;
    c->io.fd = -1;
    c->io.cb = on_io;
    c->reconnect.cb = reconnect_cb;
    c->retry.cb = retry_timer_cb;
    c->kick.cb = kick_cb;
    c->state = ZDS_BACKOFF;
    timer_start(l, &c->reconnect, 0);
    *out = c;
    return 0;
}

void zds_client_free(struct zds_client *c)
{
    if (!c) return;
    if (c->state == ZDS_CONNECTED) {
        if (c->io_registered) loop_io_del(c->l, &c->io);
        close(c->io.fd);
    }
    timer_stop(c->l, &c->reconnect);
    timer_stop(c->l, &c->retry);
    timer_stop(c->l, &c->kick);
    while (c->wls)
        wl_forget(c, c->wls);
    free(c);
}

bool zds_client_ready(const struct zds_client *c)
{
    size_t running, failed;
    count_states(c, &running, &failed);
    return c->state == ZDS_CONNECTED && c->snapshot_received && failed == 0;
}

void zds_client_stats(const struct zds_client *c, struct zds_stats *out)
{
    *out = c->st;
    out->state = c->state;
    out->snapshot_received = c->snapshot_received;
    count_states(c, &out->running, &out->failed);
}

int zds_client_feed(struct zds_client *c, const uint8_t *data, size_t len, int msg_flags, const int *fds,
                    size_t nfds)
{
    if (c->state != ZDS_CONNECTED || c->call.ticket || c->in_pass || c->outlen || nfds > ZDS_FDS_MAX) {
        close_fds(fds, nfds);
        return -EBUSY;
    }
    int r = process_packet(c, data, len, msg_flags, fds, nfds, false);
    update_io(c);
    return r;
}

int zds_client_adopt(struct zds_client *c, int fd)
{
    if (c->state == ZDS_CONNECTED) conn_end(c, false, "replaced by another connection");
    timer_stop(c->l, &c->reconnect);
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    connected(c, fd);
    return c->state == ZDS_CONNECTED ? 0 : -EPIPE;
}
