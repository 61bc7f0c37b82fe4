/* The node agent (see agent.h). Facts: istio/istio cni/pkg/nodeagent/net_linux.go (AddPodToMesh: rules first,
 * then ztunnel, and a failure after the rules leaves them for the pod's removal), cni-watcher.go (the
 * plugin's event is answered only once the pod is in the mesh), ztunnelserver.go (the ZDS side). */
#include "cni/agent.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <jansson.h>

#include "cni/plugin.h"
#include "cni/zds_server.h"
#include "core/err.h"
#include "core/list.h"
#include "core/log.h"

#define TGT "cni::agent"
#define ERR_LEN 512

const char *agent_pod_state_to_str(enum agent_pod_state s)
{
    return s == AGENT_POD_ENROLLED ? "enrolled" : "pending";
}

/* One pod sandbox the plugin reported. */
struct sandbox {
    struct sandbox *prev, *next;
    char *container_id, *cni_uid, *name, *ns, *netns, *ifname;
    json_t *ips; /* array of "addr/prefix" strings */
    int netns_fd;
    enum agent_pod_state state;
    char *zds_uid, *sa; /* while enrolled: the uid ztunnel knows it by, and its service account */
    /* Rules being installed or removed in the child of job (at most one at a time per sandbox). */
    struct agent *a;
    struct rules_job *job;
    bool job_install;
    char *want_uid, *want_sa; /* the identity an install is for */
    struct pconn *waiter;     /* a CNI ADD answered when the install (and ztunnel's Add) is done */
    bool dirty;               /* the enrolment changed during the job: reconcile when it ends */
    /* A CNI ADD (waiter) of a pod the enrolment does not list yet, waiting until await_until (loop ms). */
    bool awaiting;
    uint64_t await_until;
    bool gone;             /* deleted during the job: on a.orphans, freed when it ends */
    bool remove_when_gone; /* and its rules removed then (CNI DEL; not for a replaced sandbox) */
};

struct entry {
    char *uid, *name, *ns, *sa;
    bool ambient;
};

/* One plugin connection: its message, then its answer (maybe after ztunnel's ack). */
struct pconn {
    struct pconn *prev, *next;
    struct agent *a;
    struct io io;
    struct timer t;
    bool waiting; /* its answer waits for a rules job or a ZDS Add: the socket is not read meanwhile */
    /* agent_handle_message's: no socket (io.fd -1, not listed); the answer goes to reply. */
    agent_reply_fn reply;
    void *reply_ud;
};

struct agent {
    struct loop *l;
    char *plugin_path, *state_dir, *state_path, *node;
    enum rules_backend backend;
    bool wait_for_unlisted;
    struct io lio;
    struct zds_server *zds;
    struct sandbox *sbs;
    size_t nsb;
    struct sandbox *orphans; /* deleted sandboxes whose rules job still runs */
    struct entry *entries;
    size_t nentries;
    bool synced; /* agent_set_enrolment has been called: entries are the source's truth */
    struct pconn *pconns;
    size_t npconns;
    /* The enrolment file. */
    char *file, *file_dir, *file_base;
    struct io ino;
    struct timer file_timer;
    /* Re-tries enrolments that failed (rules that did not install) every AGENT_RETRY_MS. */
    struct timer retry_timer;
    /* The earliest await_until of the sandboxes waiting for their enrolment. */
    struct timer await_timer;
    struct agent_stats st;
};

/* ---- small helpers ---- */

static char *xstrdup(const char *s)
{
    return strdup(s ? s : "");
}

/* mkdir -p. */
static int mkdir_p(const char *dir)
{
    char d[PATH_MAX];
    if (snprintf(d, sizeof d, "%s", dir) >= (int)sizeof d) return -ENAMETOOLONG;
    for (char *p = d + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(d, 0755) < 0 && errno != EEXIST) return -errno;
        *p = '/';
    }
    if (mkdir(d, 0755) < 0 && errno != EEXIST) return -errno;
    return 0;
}

/* Reads a whole file (at most AGENT_FILE_MAX) into a malloc'd NUL-terminated buffer. */
static int read_file(const char *path, char **out, size_t *len, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        err_setf(err, errlen, "%s: %s", path, strerror(e));
        return -e;
    }
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap + 1);
    for (;;) {
        if (!buf) {
            close(fd);
            err_setf(err, errlen, "%s: out of memory", path);
            return -ENOMEM;
        }
        if (n == cap) {
            if (cap >= AGENT_FILE_MAX) {
                free(buf);
                close(fd);
                err_setf(err, errlen, "%s: larger than %u bytes", path, AGENT_FILE_MAX);
                return -EFBIG;
            }
            cap *= 2;
            char *nb = realloc(buf, cap + 1);
            if (!nb) free(buf);
            buf = nb;
            continue;
        }
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            int e = errno;
            free(buf);
            close(fd);
            err_setf(err, errlen, "%s: %s", path, strerror(e));
            return -e;
        }
        if (r == 0) break;
        n += (size_t)r;
    }
    close(fd);
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return 0;
}

/* A value a Kubernetes name, namespace, uid or service account can hold: non-empty, printable ASCII without
 * blanks, at most 253 bytes (what the plugin forwards, CNI_ARG_VALUE_MAX). */
static bool name_ok(const char *s)
{
    size_t n = strlen(s);
    if (!n || n > CNI_ARG_VALUE_MAX) return false;
    for (const char *p = s; *p; p++)
        if (*p <= ' ' || *p > '~') return false;
    return true;
}

/* ---- sandboxes and the state file ---- */

static void sb_free(struct sandbox *sb)
{
    if (sb->netns_fd >= 0) close(sb->netns_fd);
    free(sb->container_id), free(sb->cni_uid), free(sb->name), free(sb->ns), free(sb->netns),
        free(sb->ifname);
    free(sb->zds_uid), free(sb->sa), free(sb->want_uid), free(sb->want_sa);
    json_decref(sb->ips);
    free(sb);
}

static struct sandbox *sb_by_container(const struct agent *a, const char *cid)
{
    for (struct sandbox *sb = a->sbs; sb; sb = sb->next)
        if (strcmp(sb->container_id, cid) == 0) return sb;
    return NULL;
}

static struct sandbox *sb_by_pod(const struct agent *a, const char *ns, const char *name)
{
    for (struct sandbox *sb = a->sbs; sb; sb = sb->next)
        if (strcmp(sb->ns, ns) == 0 && strcmp(sb->name, name) == 0) return sb;
    return NULL;
}

static const struct entry *entry_find(const struct agent *a, const char *ns, const char *name)
{
    for (size_t i = 0; i < a->nentries; i++)
        if (strcmp(a->entries[i].ns, ns) == 0 && strcmp(a->entries[i].name, name) == 0) return &a->entries[i];
    return NULL;
}

/* Writes the state file: a temporary file in the same directory, fsync'd, renamed over the old one, so a
 * crash leaves the old state or the new one, never half of one. */
static int state_save(struct agent *a)
{
    json_t *arr = json_array();
    for (struct sandbox *sb = a->sbs; sb; sb = sb->next) {
        /* A pod whose install is under way is saved as enrolled: after a crash it is replayed (installed and
         * handed to ztunnel), which is what the install was going to do. */
        bool installing = sb->job && sb->job_install && sb->want_uid;
        enum agent_pod_state st = installing ? AGENT_POD_ENROLLED : sb->state;
        const char *zuid = installing ? sb->want_uid : sb->zds_uid, *sa = installing ? sb->want_sa : sb->sa;
        json_t *o =
            json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:O, s:s, s:s, s:s}", "container_id", sb->container_id,
                      "uid", sb->cni_uid, "name", sb->name, "namespace", sb->ns, "netns", sb->netns, "ifname",
                      sb->ifname, "ips", sb->ips, "state", agent_pod_state_to_str(st), "zds_uid",
                      zuid ? zuid : "", "service_account", sa ? sa : "");
        if (!o || json_array_append_new(arr, o) < 0) {
            json_decref(arr);
            LOG_E(TGT, "cannot write %s: out of memory", a->state_path);
            return -ENOMEM;
        }
    }
    json_t *root = json_pack("{s:i, s:o}", "version", 1, "sandboxes", arr);
    char *text = root ? json_dumps(root, JSON_INDENT(1) | JSON_PRESERVE_ORDER) : NULL;
    json_decref(root);
    if (!text) {
        LOG_E(TGT, "cannot write %s: out of memory", a->state_path);
        return -ENOMEM;
    }
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s.tmp", a->state_path);
    int r = 0;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        r = -errno;
    } else {
        size_t len = strlen(text), off = 0;
        while (off < len) {
            ssize_t w = write(fd, text + off, len - off);
            if (w < 0 && errno == EINTR) continue;
            if (w < 0) {
                r = -errno;
                break;
            }
            off += (size_t)w;
        }
        if (!r && (write(fd, "\n", 1) != 1 || fsync(fd) < 0)) r = -errno;
        close(fd);
        if (!r && rename(tmp, a->state_path) < 0) r = -errno;
        if (r) unlink(tmp);
    }
    free(text);
    if (r)
        log_kv(LOG_ERROR, TGT, "cannot write the state file", "path", a->state_path, "error", strerror(-r),
               NULL);
    return r;
}

static const char *jstr(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

/* Loads the state file (missing: nothing known yet). A sandbox whose netns path no longer opens is dropped:
 * the pod is gone, and so is everything of it the agent managed. A file that does not parse is an error: the
 * agent would otherwise forget pods it has enrolled. */
static int state_load(struct agent *a, char *err, size_t errlen)
{
    char *text;
    size_t len;
    char rerr[ERR_LEN];
    int r = read_file(a->state_path, &text, &len, rerr, sizeof rerr);
    if (r == -ENOENT) return 0;
    if (r < 0) {
        err_setf(err, errlen, "state file %s", rerr);
        return -1;
    }
    json_error_t je;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    free(text);
    json_t *arr = root ? json_object_get(root, "sandboxes") : NULL;
    json_t *ver = root ? json_object_get(root, "version") : NULL;
    if (!root || !json_is_integer(ver) || json_integer_value(ver) != 1 || !json_is_array(arr)) {
        err_setf(err, errlen, "state file %s: %s", a->state_path,
                 !root ? je.text : "not {\"version\": 1, \"sandboxes\": [...]}");
        json_decref(root);
        return -1;
    }
    size_t i;
    json_t *o;
    json_array_foreach(arr, i, o)
    {
        const char *cid = jstr(o, "container_id"), *uid = jstr(o, "uid"), *name = jstr(o, "name"),
                   *ns = jstr(o, "namespace"), *netns = jstr(o, "netns"), *ifname = jstr(o, "ifname"),
                   *st = jstr(o, "state"), *zuid = jstr(o, "zds_uid"), *sa = jstr(o, "service_account");
        json_t *ips = json_object_get(o, "ips");
        if (!cid || !uid || !name || !ns || !netns || !ifname || !st || !zuid || !sa || !json_is_array(ips)) {
            err_setf(err, errlen,
                     "state file %s: sandbox %zu is missing a field or has one of the wrong type",
                     a->state_path, i);
            json_decref(root);
            return -1;
        }
        int fd = open(netns, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            log_kv(LOG_INFO, TGT, "sandbox from the state file is gone; forgetting it", "container_id", cid,
                   "namespace", ns, "name", name, "netns", netns, "error", strerror(errno), NULL);
            continue;
        }
        struct sandbox *sb = calloc(1, sizeof *sb);
        if (!sb) {
            close(fd);
            json_decref(root);
            err_setf(err, errlen, "out of memory");
            return -1;
        }
        sb->netns_fd = fd;
        sb->a = a;
        sb->container_id = xstrdup(cid), sb->cni_uid = xstrdup(uid), sb->name = xstrdup(name);
        sb->ns = xstrdup(ns), sb->netns = xstrdup(netns), sb->ifname = xstrdup(ifname);
        sb->ips = json_incref(ips);
        /* The pods that were enrolled are replayed as such; the enrolment source then says what is true now.
         */
        if (strcmp(st, "enrolled") == 0) {
            sb->state = AGENT_POD_ENROLLED;
            sb->zds_uid = xstrdup(zuid);
            sb->sa = xstrdup(sa);
        }
        LIST_PUSH(a->sbs, sb);
        a->nsb++;
    }
    json_decref(root);
    return 0;
}

/* ---- enrol and un-enrol ---- */

/* The uid ztunnel knows the pod by: Kubernetes' from CNI_ARGS, else the enrolment source's, else the
 * sandbox's container id (a pod outside Kubernetes has no uid; the container id is unique on the node). */
static const char *pod_uid(const struct sandbox *sb, const struct entry *e)
{
    if (*sb->cni_uid) return sb->cni_uid;
    if (e && e->uid && *e->uid) return e->uid;
    return sb->container_id;
}

/* Takes sb out of ztunnel (Del to every connection) and marks it pending; the rules are the caller's. */
static void zds_forget(struct agent *a, struct sandbox *sb)
{
    log_kv(LOG_INFO, TGT, "removing pod from the mesh", "namespace", sb->ns, "name", sb->name, "uid",
           sb->zds_uid, NULL);
    zds_server_del(a->zds, sb->zds_uid);
    free(sb->zds_uid), free(sb->sa);
    sb->zds_uid = sb->sa = NULL;
    sb->state = AGENT_POD_PENDING;
}

static void pconn_answer(struct pconn *c, const char *error);

static void zds_add_done(void *ud, int status, const char *error)
{
    struct pconn *c = ud;
    c->waiting = false;
    char why[ERR_LEN];
    switch (status) {
    case 0:
        pconn_answer(c, NULL);
        return;
    case -EPROTO:
        snprintf(why, sizeof why, "ztunnel refused the pod: %s", error);
        break;
    case -ETIMEDOUT:
        snprintf(why, sizeof why, "ztunnel did not answer within %d ms", ZDS_SERVER_DEADLINE_MS);
        break;
    case -ECONNRESET:
        snprintf(why, sizeof why, "the ztunnel connection ended before it answered");
        break;
    case -ECANCELED:
        snprintf(why, sizeof why, "the node agent is shutting down");
        break;
    default:
        snprintf(why, sizeof why, "ZDS Add failed: %s", strerror(-status));
        break;
    }
    pconn_answer(c, why);
}

/* ZDS Add of an enrolled sandbox to the newest ztunnel. With c, c is answered with ztunnel's answer (later)
 * or now with the reason there is none. The rules stay in every case, and the pod is in the server's table,
 * so the next ztunnel's snapshot has it (Istio's "partial add"; it fails the CNI ADD with "no ztunnel
 * connection"). */
static void hand_to_ztunnel(struct agent *a, struct sandbox *sb, struct pconn *c)
{
    /* done may run inside zds_server_add (a send that fails at once) and free c: mark c first. */
    if (c) c->waiting = true;
    int r = zds_server_add(a->zds, sb->zds_uid, sb->name, sb->ns, sb->sa, sb->netns_fd,
                           c ? zds_add_done : NULL, c);
    if (r == 0) return;
    if (c) c->waiting = false;
    if (r == -ENOTCONN) {
        if (c)
            pconn_answer(
                c,
                "no ztunnel connection: the pod's rules are installed and ztunnel gets it when it connects");
        return;
    }
    log_kv(LOG_ERROR, TGT, "cannot hand the pod to ztunnel", "uid", sb->zds_uid, "error", strerror(-r), NULL);
    if (c) {
        char why[128];
        snprintf(why, sizeof why, "cannot hand the pod to ztunnel: %s", strerror(-r));
        pconn_answer(c, why);
    }
}

static void reconcile(struct agent *a, struct sandbox *sb, struct pconn *c);
static void schedule_retry(struct agent *a);
static void job_done(void *ud, int status, const char *err);

/* Starts the rules job of sb. Returns 0, or -1 with err (nothing started). */
static int start_job(struct agent *a, struct sandbox *sb, bool install, char *err, size_t errlen)
{
    sb->job_install = install;
    return rules_start(a->l, a->backend, sb->netns_fd, install, job_done, sb, &sb->job, err, errlen);
}

static void orphan_free(struct agent *a, struct sandbox *sb)
{
    LIST_DEL(a->orphans, sb);
    sb_free(sb);
}

/* A rules job of sb ended (Istio's CreateInpodRules then ZDS Add in AddPodToMesh; DeleteInpodRules). */
static void job_done(void *ud, int status, const char *err)
{
    struct sandbox *sb = ud;
    struct agent *a = sb->a;
    sb->job = NULL;
    if (status < 0) {
        a->st.rule_failures++;
        log_kv(LOG_ERROR, TGT,
               sb->job_install ? "failed to install the in-pod rules"
                               : "failed to remove the in-pod rules; the pod's traffic is still redirected",
               "namespace", sb->ns, "name", sb->name, "error", err, NULL);
    }
    if (sb->gone) {
        /* Deleted meanwhile: an install that went in is taken out again for a CNI DEL, then sb is freed. */
        char e2[RULES_ERR_MAX];
        if (sb->job_install && status == 0 && sb->remove_when_gone &&
            start_job(a, sb, false, e2, sizeof e2) == 0)
            return;
        orphan_free(a, sb);
        return;
    }
    struct pconn *w = sb->waiter;
    sb->waiter = NULL;
    if (w) w->waiting = false;
    if (sb->job_install) {
        /* want_uid is NULL for a replay: the pod is enrolled and in the ZDS server's table already. */
        bool replay = !sb->want_uid;
        if (status == 0) {
            log_kv(LOG_INFO, TGT, "in-pod rules installed", "namespace", sb->ns, "name", sb->name, NULL);
            if (!replay) {
                sb->zds_uid = sb->want_uid, sb->sa = sb->want_sa;
                sb->want_uid = sb->want_sa = NULL;
                sb->state = AGENT_POD_ENROLLED;
                state_save(a);
            }
            if (!replay || w) hand_to_ztunnel(a, sb, w);
            w = NULL;
        } else {
            if (replay && sb->state == AGENT_POD_ENROLLED) {
                /* Not served without its rules: ztunnel lets it go, and the enrolment source's
                 * reconciliation (and its retries) enrols it again once they install. */
                zds_forget(a, sb);
                state_save(a);
            }
            free(sb->want_uid), free(sb->want_sa);
            sb->want_uid = sb->want_sa = NULL;
            if (w) {
                char why[ERR_LEN];
                snprintf(why, sizeof why, "in-pod rules for %s/%s: %s", sb->ns, sb->name, err);
                pconn_answer(w, why);
                w = NULL;
            }
        }
    }
    if (sb->dirty || w) {
        sb->dirty = false;
        reconcile(a, sb, w);
    }
    schedule_retry(a);
}

/* Starts putting sb in the mesh with identity uid/sa: the rules, then (job_done) the ZDS Add, then c's
 * answer. Returns 0, or -1 with err when the job could not start (nothing changed). */
static int enrol(struct agent *a, struct sandbox *sb, const char *uid, const char *sa, struct pconn *c,
                 char *err, size_t errlen)
{
    log_kv(LOG_INFO, TGT, "adding pod to the mesh", "namespace", sb->ns, "name", sb->name, "uid", uid,
           "serviceAccount", sa, NULL);
    sb->want_uid = xstrdup(uid);
    sb->want_sa = xstrdup(sa);
    char rerr[RULES_ERR_MAX] = "out of memory";
    if (!sb->want_uid || !sb->want_sa || start_job(a, sb, true, rerr, sizeof rerr) < 0) {
        free(sb->want_uid), free(sb->want_sa);
        sb->want_uid = sb->want_sa = NULL;
        a->st.rule_failures++;
        err_setf(err, errlen, "in-pod rules for %s/%s: %s", sb->ns, sb->name, rerr);
        log_kv(LOG_ERROR, TGT, "failed to install the in-pod rules", "namespace", sb->ns, "name", sb->name,
               "error", err, NULL);
        return -1;
    }
    sb->waiter = c;
    /* The socket's mask is 0 after its message (epoll then reports nothing, hang-ups included); waiting also
     * keeps pconn_io_cb from reading or freeing it should an event come. */
    if (c) c->waiting = true;
    return 0;
}

static void await_arm(struct agent *a)
{
    uint64_t first = 0;
    for (struct sandbox *sb = a->sbs; sb; sb = sb->next)
        if (sb->awaiting && (!first || sb->await_until < first)) first = sb->await_until;
    if (!first) {
        timer_stop(a->l, &a->await_timer);
        return;
    }
    uint64_t now = loop_now(a->l);
    timer_start(a->l, &a->await_timer, first > now ? first - now : 0);
}

static void await_enrolment(struct agent *a, struct sandbox *sb, struct pconn *c)
{
    if (sb->waiter && sb->waiter != c)
        pconn_answer(sb->waiter, "superseded by a later ADD of the same sandbox");
    if (!sb->awaiting) {
        sb->awaiting = true;
        sb->await_until = loop_now(a->l) + AGENT_UNKNOWN_POD_WAIT_MS;
        log_kv(LOG_INFO, TGT, "pod not in the enrolment yet; its CNI ADD waits for it", "namespace", sb->ns,
               "name", sb->name, NULL);
    }
    sb->waiter = c;
    c->waiting = true;
    await_arm(a);
}

/* The waiting CNI ADD of sb, if any, taken back for a reconcile. */
static struct pconn *await_take(struct sandbox *sb)
{
    if (!sb->awaiting) return NULL;
    struct pconn *c = sb->waiter;
    sb->awaiting = false;
    sb->waiter = NULL;
    if (c) c->waiting = false;
    return c;
}

static void await_cb(struct timer *t)
{
    struct agent *a = container_of(t, struct agent, await_timer);
    uint64_t now = loop_now(a->l);
    for (struct sandbox *sb = a->sbs; sb; sb = sb->next) {
        if (!sb->awaiting || sb->await_until > now) continue;
        struct pconn *c = await_take(sb);
        log_kv(LOG_WARN, TGT,
               "pod still not in the enrolment: it starts outside the mesh, and is enrolled once the source "
               "lists it",
               "namespace", sb->ns, "name", sb->name, NULL);
        if (c) pconn_answer(c, NULL);
    }
    await_arm(a);
}

/* Brings sb to what the enrolment says. With c (a CNI ADD), answers it now or when the work is done. */
static void reconcile(struct agent *a, struct sandbox *sb, struct pconn *c)
{
    if (sb->job) {
        /* One job at a time: this runs again when it ends. */
        if (c) {
            if (sb->waiter) pconn_answer(sb->waiter, "superseded by a later ADD of the same sandbox");
            sb->waiter = c;
            c->waiting = true;
        }
        sb->dirty = true;
        return;
    }
    if (!a->synced) {
        /* No enrolment yet (a restart, before the source has spoken): what the state file says stands; an
         * empty set would otherwise take every replayed pod out of the mesh. */
        if (c && sb->state == AGENT_POD_ENROLLED)
            hand_to_ztunnel(a, sb, c);
        else if (c)
            pconn_answer(c, NULL);
        return;
    }
    const struct entry *e = entry_find(a, sb->ns, sb->name);
    if (!e && c && a->wait_for_unlisted && sb->state != AGENT_POD_ENROLLED) {
        /* Not listed yet: the ADD waits for the source to name the pod (AGENT_UNKNOWN_POD_WAIT_MS), so that a
         * pod created into an enrolled namespace is captured from its first packet. */
        await_enrolment(a, sb, c);
        return;
    }
    bool want = e && e->ambient;
    char err[ERR_LEN];
    if (sb->state == AGENT_POD_ENROLLED && want &&
        (strcmp(sb->zds_uid, pod_uid(sb, e)) != 0 || strcmp(sb->sa, e->sa) != 0)) {
        /* Its identity changed: ztunnel must drop the old proxy and start one with the new identity. */
        log_kv(LOG_INFO, TGT, "pod's uid or service account changed; re-adding it", "namespace", sb->ns,
               "name", sb->name, NULL);
        zds_forget(a, sb);
    }
    if (want && sb->state != AGENT_POD_ENROLLED) {
        if (enrol(a, sb, pod_uid(sb, e), e->sa, c, err, sizeof err) < 0 && c) pconn_answer(c, err);
        return;
    }
    if (!want && sb->state == AGENT_POD_ENROLLED) {
        /* Istio's RemovePodFromMesh: out of ztunnel, then the rules out of the namespace. */
        zds_forget(a, sb);
        state_save(a);
        if (start_job(a, sb, false, err, sizeof err) < 0) {
            a->st.rule_failures++;
            log_kv(LOG_ERROR, TGT, "failed to remove the in-pod rules; the pod's traffic is still redirected",
                   "namespace", sb->ns, "name", sb->name, "error", err, NULL);
        }
    }
    if (c && sb->state == AGENT_POD_ENROLLED) {
        /* A repeated CNI ADD of a sandbox in the mesh (the runtime retrying after an error): ztunnel is asked
         * again, which is idempotent for the same netns, so the answer says whether it has the pod now. */
        hand_to_ztunnel(a, sb, c);
        return;
    }
    if (c) pconn_answer(c, NULL);
}

/* Forgets sb (CNI DEL, or a sandbox replaced by a newer one of the same pod): out of ztunnel and of the
 * state; its rules are removed when remove_rules (the agent still holds the namespace open). A sandbox with a
 * job running waits on a.orphans for it. */
static void forget(struct agent *a, struct sandbox *sb, bool remove_rules)
{
    bool was = sb->state == AGENT_POD_ENROLLED || (sb->job && sb->job_install);
    if (sb->state == AGENT_POD_ENROLLED) zds_forget(a, sb);
    if (sb->waiter) {
        pconn_answer(sb->waiter, "the sandbox was deleted");
        sb->waiter = NULL;
    }
    sb->awaiting = false;
    LIST_DEL(a->sbs, sb);
    a->nsb--;
    sb->gone = true;
    sb->remove_when_gone = remove_rules;
    LIST_PUSH(a->orphans, sb);
    if (sb->job) return;
    char err[RULES_ERR_MAX];
    if (was && remove_rules && start_job(a, sb, false, err, sizeof err) == 0) return;
    orphan_free(a, sb);
}

/* Arms the retry timer when a sandbox the enrolment wants in the mesh is not in it (its rules failed). */
static void schedule_retry(struct agent *a)
{
    if (timer_armed(&a->retry_timer)) return;
    for (struct sandbox *sb = a->sbs; sb; sb = sb->next) {
        const struct entry *e = entry_find(a, sb->ns, sb->name);
        if (e && e->ambient && sb->state != AGENT_POD_ENROLLED && !sb->job) {
            LOG_I(TGT, "retrying failed enrolments in %d ms", AGENT_RETRY_MS);
            timer_start(a->l, &a->retry_timer, AGENT_RETRY_MS);
            return;
        }
    }
}

static void retry_cb(struct timer *t)
{
    struct agent *a = container_of(t, struct agent, retry_timer);
    for (struct sandbox *sb = a->sbs, *nx; sb; sb = nx) {
        nx = sb->next;
        reconcile(a, sb, NULL);
    }
    schedule_retry(a);
}

/* ---- the plugin's messages ---- */

struct msg {
    const char *event, *container_id, *netns, *ifname, *name, *ns, *uid, *infra;
    json_t *ips;
};

static int msg_parse(json_t *root, struct msg *m, char *err, size_t errlen)
{
    memset(m, 0, sizeof *m);
    if (!json_is_object(root)) {
        err_setf(err, errlen, "the message is not a JSON object");
        return -1;
    }
    static const char *const known[] = {
        "version", "event", "container_id", "netns", "ifname", "pod", "infra_container_id", "ips", NULL};
    const char *k;
    json_t *v;
    json_object_foreach(root, k, v)
    {
        bool ok = false;
        for (size_t i = 0; known[i]; i++)
            if (strcmp(k, known[i]) == 0) ok = true;
        if (!ok) {
            err_setf(err, errlen, "field \"%s\": unknown", k);
            return -1;
        }
    }
    json_t *ver = json_object_get(root, "version");
    if (!json_is_integer(ver) || json_integer_value(ver) != 1) {
        err_setf(err, errlen, "field \"version\": must be 1");
        return -1;
    }
    struct {
        const char *key;
        const char **out;
        bool nonempty;
    } fs[] = {{"event", &m->event, true},
              {"container_id", &m->container_id, true},
              {"netns", &m->netns, false},
              {"ifname", &m->ifname, false},
              {"infra_container_id", &m->infra, false}};
    for (size_t i = 0; i < sizeof fs / sizeof fs[0]; i++) {
        json_t *s = json_object_get(root, fs[i].key);
        if (!json_is_string(s)) {
            err_setf(err, errlen, "field \"%s\": must be a string", fs[i].key);
            return -1;
        }
        *fs[i].out = json_string_value(s);
        if (fs[i].nonempty && !**fs[i].out) {
            err_setf(err, errlen, "field \"%s\": must not be empty", fs[i].key);
            return -1;
        }
    }
    if (strcmp(m->event, "add") != 0 && strcmp(m->event, "del") != 0) {
        err_setf(err, errlen, "field \"event\": \"%s\" is neither \"add\" nor \"del\"", m->event);
        return -1;
    }
    if (strcmp(m->event, "add") == 0 && !*m->netns) {
        err_setf(err, errlen, "field \"netns\": must not be empty for add");
        return -1;
    }
    if (*m->netns && m->netns[0] != '/') {
        err_setf(err, errlen, "field \"netns\": \"%s\" is not an absolute path", m->netns);
        return -1;
    }
    json_t *pod = json_object_get(root, "pod");
    if (!json_is_object(pod)) {
        err_setf(err, errlen, "field \"pod\": must be an object");
        return -1;
    }
    json_object_foreach(pod, k, v)
    {
        if (strcmp(k, "name") && strcmp(k, "namespace") && strcmp(k, "uid")) {
            err_setf(err, errlen, "field \"pod.%s\": unknown", k);
            return -1;
        }
    }
    const char **pf[] = {&m->name, &m->ns, &m->uid};
    const char *pk[] = {"name", "namespace", "uid"};
    for (size_t i = 0; i < 3; i++) {
        json_t *s = json_object_get(pod, pk[i]);
        if (!json_is_string(s)) {
            err_setf(err, errlen, "field \"pod.%s\": must be a string", pk[i]);
            return -1;
        }
        *pf[i] = json_string_value(s);
        if ((i < 2 || *json_string_value(s)) && !name_ok(json_string_value(s))) {
            err_setf(err, errlen, "field \"pod.%s\": must be 1 to %d printable characters without blanks",
                     pk[i], CNI_ARG_VALUE_MAX);
            return -1;
        }
    }
    m->ips = json_object_get(root, "ips");
    if (!json_is_array(m->ips)) {
        err_setf(err, errlen, "field \"ips\": must be an array");
        return -1;
    }
    size_t i;
    json_array_foreach(m->ips, i, v)
    {
        if (!json_is_string(v)) {
            err_setf(err, errlen, "field \"ips[%zu]\": must be a string", i);
            return -1;
        }
    }
    return 0;
}

int agent_message_check(const char *msg, size_t len, char *err, size_t errlen)
{
    json_error_t je;
    json_t *root = json_loadb(msg, len, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        err_setf(err, errlen, "the message is not JSON: %s", je.text);
        return -1;
    }
    struct msg m;
    int r = msg_parse(root, &m, err, errlen);
    json_decref(root);
    return r;
}

static void handle_add(struct agent *a, const struct msg *m, struct pconn *c)
{
    a->st.adds++;
    log_kv(LOG_INFO, TGT, "CNI add", "container_id", m->container_id, "namespace", m->ns, "name", m->name,
           "uid", m->uid, "netns", m->netns, NULL);
    struct sandbox *sb = sb_by_container(a, m->container_id);
    struct sandbox *old = sb ? NULL : sb_by_pod(a, m->ns, m->name);
    if (old) {
        /* The runtime re-created the pod's sandbox: the old one is gone (its DEL may never come). */
        log_kv(LOG_INFO, TGT, "pod has a new sandbox; forgetting the old one", "namespace", m->ns, "name",
               m->name, "old_container_id", old->container_id, NULL);
        forget(a, old, false);
    }
    if (sb && strcmp(sb->netns, m->netns) != 0) {
        /* The same container id with another namespace: only a runtime bug does this; start afresh. */
        forget(a, sb, false);
        sb = NULL;
    }
    if (!sb) {
        if (a->nsb >= AGENT_SANDBOXES_MAX) {
            pconn_answer(c, "the node agent knows too many sandboxes");
            return;
        }
        int fd = open(m->netns, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            char why[ERR_LEN];
            snprintf(why, sizeof why, "cannot open netns %s: %s", m->netns, strerror(errno));
            log_kv(LOG_ERROR, TGT, "CNI add refused", "container_id", m->container_id, "error", why, NULL);
            pconn_answer(c, why);
            return;
        }
        sb = calloc(1, sizeof *sb);
        if (!sb) {
            close(fd);
            pconn_answer(c, "out of memory");
            return;
        }
        sb->netns_fd = fd;
        sb->a = a;
        sb->container_id = xstrdup(m->container_id), sb->cni_uid = xstrdup(m->uid),
        sb->name = xstrdup(m->name);
        sb->ns = xstrdup(m->ns), sb->netns = xstrdup(m->netns), sb->ifname = xstrdup(m->ifname);
        sb->ips = json_deep_copy(m->ips);
        if (!sb->container_id || !sb->cni_uid || !sb->name || !sb->ns || !sb->netns || !sb->ifname ||
            !sb->ips) {
            sb_free(sb);
            pconn_answer(c, "out of memory");
            return;
        }
        LIST_PUSH(a->sbs, sb);
        a->nsb++;
        state_save(a);
    }
    reconcile(a, sb, c);
    schedule_retry(a);
}

static void handle_del(struct agent *a, const struct msg *m, struct pconn *c)
{
    a->st.dels++;
    struct sandbox *sb = sb_by_container(a, m->container_id);
    if (!sb) {
        /* DEL is idempotent (CNI spec): a sandbox never added, or deleted already. */
        log_kv(LOG_DEBUG, TGT, "CNI del of an unknown sandbox", "container_id", m->container_id, NULL);
        pconn_answer(c, NULL);
        return;
    }
    log_kv(LOG_INFO, TGT, "CNI del", "container_id", m->container_id, "namespace", sb->ns, "name", sb->name,
           NULL);
    forget(a, sb, true);
    state_save(a);
    pconn_answer(c, NULL);
}

static void handle_msg(struct agent *a, const char *buf, size_t len, struct pconn *c)
{
    char err[ERR_LEN];
    json_error_t je;
    json_t *root = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        snprintf(err, sizeof err, "the message is not JSON: %s", je.text);
        goto bad;
    }
    struct msg m;
    if (msg_parse(root, &m, err, sizeof err) < 0) goto bad;
    if (strcmp(m.event, "add") == 0)
        handle_add(a, &m, c);
    else
        handle_del(a, &m, c);
    json_decref(root);
    return;
bad:
    json_decref(root);
    a->st.bad_messages++;
    log_kv(LOG_WARN, TGT, "bad message from the CNI plugin", "error", err, NULL);
    pconn_answer(c, err);
}

/* ---- plugin connections ---- */

static void pconn_free(struct pconn *c)
{
    struct agent *a = c->a;
    timer_stop(a->l, &c->t);
    if (c->io.fd >= 0) loop_io_close(a->l, &c->io);
    if (c->prev || c->next || a->pconns == c) {
        LIST_DEL(a->pconns, c);
        a->npconns--;
    }
    free(c);
}

/* Sends {"ok":true} or {"ok":false,"error":...} and ends c. */
static void pconn_answer(struct pconn *c, const char *error)
{
    json_t *o = error ? json_pack("{s:b, s:s}", "ok", 0, "error", error) : json_pack("{s:b}", "ok", 1);
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    const char *out = text ? text : "{\"ok\":false,\"error\":\"out of memory\"}";
    if (c->reply) {
        c->reply(c->reply_ud, out);
        free(text);
        free(c);
        return;
    }
    if (send(c->io.fd, out, strlen(out), MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
        log_kv(LOG_WARN, TGT, "cannot answer the CNI plugin", "error", strerror(errno), NULL);
    free(text);
    pconn_free(c);
}

static void pconn_io_cb(struct io *io, uint32_t ev)
{
    struct pconn *c = container_of(io, struct pconn, io);
    struct agent *a = c->a;
    if (c->waiting) {
        /* The answer comes from ztunnel's ack; a hang-up meanwhile only means the plugin gave up. */
        if (ev & (EPOLLHUP | EPOLLERR)) loop_io_mod(a->l, &c->io, 0);
        return;
    }
    static char buf[CNI_AGENT_MSG_MAX + 1];
    struct iovec iov = {.iov_base = buf, .iov_len = sizeof buf};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    ssize_t n;
    do
        n = recvmsg(c->io.fd, &mh, MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    if (n <= 0) {
        pconn_free(c);
        return;
    }
    timer_stop(a->l, &c->t);
    loop_io_mod(a->l, &c->io, 0);
    if ((mh.msg_flags & MSG_TRUNC) || (size_t)n > CNI_AGENT_MSG_MAX) {
        a->st.bad_messages++;
        char why[96];
        snprintf(why, sizeof why, "the message is larger than %d bytes", CNI_AGENT_MSG_MAX);
        log_kv(LOG_WARN, TGT, "bad message from the CNI plugin", "error", why, NULL);
        pconn_answer(c, why);
        return;
    }
    handle_msg(a, buf, (size_t)n, c);
}

static void pconn_timer_cb(struct timer *t)
{
    struct pconn *c = container_of(t, struct pconn, t);
    log_kv(LOG_WARN, TGT, "CNI plugin connection sent nothing in time; closed", NULL);
    pconn_free(c);
}

static void plugin_accept_cb(struct io *io, uint32_t ev)
{
    struct agent *a = container_of(io, struct agent, lio);
    for (;;) {
        int fd = accept4(a->lio.fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                LOG_LIMITED(LOG_WARN, TGT, "accept on %s: %s", a->plugin_path, strerror(errno));
            return;
        }
        if (a->npconns >= AGENT_PLUGIN_CONNS_MAX) {
            /* The plugin retries a refused connect within its deadline; an accepted one it would wait on. */
            LOG_LIMITED(LOG_WARN, TGT, "CNI plugin connection refused: %d open already",
                        AGENT_PLUGIN_CONNS_MAX);
            close(fd);
            continue;
        }
        struct pconn *c = calloc(1, sizeof *c);
        if (!c) {
            close(fd);
            continue;
        }
        c->a = a;
        c->io.fd = fd;
        c->io.cb = pconn_io_cb;
        c->t.cb = pconn_timer_cb;
        if (loop_io_add(a->l, &c->io, EPOLLIN) < 0) {
            close(fd);
            free(c);
            continue;
        }
        LIST_PUSH(a->pconns, c);
        a->npconns++;
        timer_start(a->l, &c->t, AGENT_PLUGIN_READ_MS);
    }
}

void agent_handle_message(struct agent *a, const char *msg, size_t len, agent_reply_fn reply, void *ud)
{
    struct pconn *c = calloc(1, sizeof *c);
    if (!c) {
        reply(ud, "{\"ok\":false,\"error\":\"out of memory\"}");
        return;
    }
    c->a = a;
    c->io.fd = -1;
    c->reply = reply;
    c->reply_ud = ud;
    handle_msg(a, msg, len, c);
}

/* ---- enrolment ---- */

static void entries_free(struct entry *e, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(e[i].uid), free(e[i].name), free(e[i].ns), free(e[i].sa);
    free(e);
}

int agent_set_enrolment(struct agent *a, const struct agent_enrolment *pods, size_t n)
{
    if (n > AGENT_ENROLMENT_MAX) return -E2BIG;
    struct entry *e = n ? calloc(n, sizeof *e) : NULL;
    if (n && !e) return -ENOMEM;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const struct agent_enrolment *p = &pods[i];
        if (!p->name || !*p->name || !p->namespace_ || !*p->namespace_) {
            entries_free(e, k);
            return -EINVAL;
        }
        /* zmeshd's client gives the whole cluster's pods with their node; only this node's are ours. */
        if (a->node && *a->node && p->node && *p->node && strcmp(p->node, a->node) != 0) continue;
        for (size_t j = 0; j < k; j++) {
            if (strcmp(e[j].ns, p->namespace_) == 0 && strcmp(e[j].name, p->name) == 0) {
                entries_free(e, k);
                return -EINVAL;
            }
        }
        e[k].uid = p->uid ? strdup(p->uid) : NULL;
        e[k].name = xstrdup(p->name);
        e[k].ns = xstrdup(p->namespace_);
        e[k].sa = xstrdup(p->service_account && *p->service_account ? p->service_account : "default");
        e[k].ambient = p->ambient;
        k++;
        if (!e[k - 1].name || !e[k - 1].ns || !e[k - 1].sa || (p->uid && !e[k - 1].uid)) {
            entries_free(e, k);
            return -ENOMEM;
        }
    }
    entries_free(a->entries, a->nentries);
    a->entries = e;
    a->nentries = k;
    a->synced = true;
    size_t amb = 0;
    for (size_t i = 0; i < k; i++)
        amb += e[i].ambient;
    LOG_I(TGT, "enrolment: %zu pods of this node, %zu ambient", k, amb);
    for (struct sandbox *sb = a->sbs, *nx; sb; sb = nx) {
        nx = sb->next;
        /* A waiting ADD goes on with the new set: enrolled now, or waiting on if still not listed. */
        bool was = sb->awaiting;
        uint64_t until = sb->await_until;
        struct pconn *c = await_take(sb);
        reconcile(a, sb, c);
        if (was && sb->awaiting) sb->await_until = until;
    }
    await_arm(a);
    schedule_retry(a);
    return 0;
}

void agent_enrolment_free(struct agent_enrolment *pods, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free((char *)pods[i].uid), free((char *)pods[i].name), free((char *)pods[i].namespace_);
        free((char *)pods[i].service_account), free((char *)pods[i].node);
    }
    free(pods);
}

int agent_enrolment_parse(const char *file, const char *text, size_t len, struct agent_enrolment **out,
                          size_t *n, char *err, size_t errlen)
{
    json_error_t je;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        err_setf(err, errlen, "%s: line %d: %s", file, je.line, je.text);
        return -1;
    }
    if (!json_is_array(root)) {
        err_setf(err, errlen, "%s: must be a JSON array of {name, namespace, service_account, ambient}",
                 file);
        json_decref(root);
        return -1;
    }
    size_t cnt = json_array_size(root);
    if (cnt > AGENT_ENROLMENT_MAX) {
        err_setf(err, errlen, "%s: %zu entries, more than %d", file, cnt, AGENT_ENROLMENT_MAX);
        json_decref(root);
        return -1;
    }
    struct agent_enrolment *pods = cnt ? calloc(cnt, sizeof *pods) : NULL;
    if (cnt && !pods) {
        err_setf(err, errlen, "%s: out of memory", file);
        json_decref(root);
        return -1;
    }
    size_t i;
    json_t *o;
    json_array_foreach(root, i, o)
    {
        if (!json_is_object(o)) {
            err_setf(err, errlen, "%s: entry %zu: must be an object", file, i);
            goto fail;
        }
        const char *k;
        json_t *v;
        json_object_foreach(o, k, v)
        {
            if (strcmp(k, "name") && strcmp(k, "namespace") && strcmp(k, "service_account") &&
                strcmp(k, "ambient") && strcmp(k, "uid") && strcmp(k, "node")) {
                err_setf(err, errlen, "%s: entry %zu: field \"%s\": unknown", file, i, k);
                goto fail;
            }
        }
        static const char *const req[] = {"name", "namespace", "service_account"};
        const char *vals[3];
        for (size_t f = 0; f < 3; f++) {
            json_t *s = json_object_get(o, req[f]);
            if (!json_is_string(s) || !name_ok(json_string_value(s))) {
                err_setf(err, errlen, "%s: entry %zu: field \"%s\": %s", file, i, req[f],
                         !s ? "missing" : "must be a string of 1 to 253 printable characters without blanks");
                goto fail;
            }
            vals[f] = json_string_value(s);
        }
        json_t *amb = json_object_get(o, "ambient");
        if (!json_is_boolean(amb)) {
            err_setf(err, errlen, "%s: entry %zu: field \"ambient\": %s", file, i,
                     !amb ? "missing" : "must be true or false");
            goto fail;
        }
        const char *opt[2] = {NULL, NULL};
        static const char *const optk[] = {"uid", "node"};
        for (size_t f = 0; f < 2; f++) {
            json_t *s = json_object_get(o, optk[f]);
            if (!s) continue;
            if (!json_is_string(s) || !name_ok(json_string_value(s))) {
                err_setf(err, errlen,
                         "%s: entry %zu: field \"%s\": must be a string of 1 to 253 printable characters "
                         "without blanks",
                         file, i, optk[f]);
                goto fail;
            }
            opt[f] = json_string_value(s);
        }
        for (size_t j = 0; j < i; j++) {
            if (strcmp(pods[j].name, vals[0]) == 0 && strcmp(pods[j].namespace_, vals[1]) == 0) {
                err_setf(err, errlen, "%s: entry %zu: pod %s/%s is also entry %zu", file, i, vals[1], vals[0],
                         j);
                goto fail;
            }
        }
        pods[i].name = strdup(vals[0]);
        pods[i].namespace_ = strdup(vals[1]);
        pods[i].service_account = strdup(vals[2]);
        pods[i].uid = opt[0] ? strdup(opt[0]) : NULL;
        pods[i].node = opt[1] ? strdup(opt[1]) : NULL;
        pods[i].ambient = json_is_true(amb);
        if (!pods[i].name || !pods[i].namespace_ || !pods[i].service_account || (opt[0] && !pods[i].uid) ||
            (opt[1] && !pods[i].node)) {
            err_setf(err, errlen, "%s: out of memory", file);
            i++;
            goto fail_n;
        }
    }
    json_decref(root);
    *out = pods;
    *n = cnt;
    return 0;
fail:
fail_n:
    agent_enrolment_free(pods, cnt);
    json_decref(root);
    return -1;
}

int agent_reload_file(struct agent *a, char *err, size_t errlen)
{
    if (!a->file) {
        err_setf(err, errlen, "no enrolment file");
        return -1;
    }
    char *text;
    size_t len;
    if (read_file(a->file, &text, &len, err, errlen) < 0) {
        err_setf(err + strlen(err), errlen - strlen(err), " (enrolment file)");
        return -1;
    }
    struct agent_enrolment *pods;
    size_t n;
    int r = agent_enrolment_parse(a->file, text, len, &pods, &n, err, errlen);
    free(text);
    if (r < 0) return -1;
    r = agent_set_enrolment(a, pods, n);
    agent_enrolment_free(pods, n);
    if (r < 0) {
        err_setf(err, errlen, "%s: %s", a->file, strerror(-r));
        return -1;
    }
    log_kv(LOG_INFO, TGT, "enrolment file loaded", "path", a->file, NULL);
    return 0;
}

static void file_timer_cb(struct timer *t)
{
    struct agent *a = container_of(t, struct agent, file_timer);
    char err[ERR_LEN];
    if (agent_reload_file(a, err, sizeof err) < 0)
        log_kv(LOG_ERROR, TGT, "enrolment file not applied; the previous enrolment stays", "error", err,
               NULL);
}

static void ino_cb(struct io *io, uint32_t ev)
{
    struct agent *a = container_of(io, struct agent, ino);
    char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
    bool hit = false;
    for (;;) {
        ssize_t n = read(a->ino.fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        for (char *p = buf; p < buf + n;) {
            struct inotify_event *e = (struct inotify_event *)p;
            if ((e->mask & IN_Q_OVERFLOW) || (e->len && strcmp(e->name, a->file_base) == 0)) hit = true;
            p += sizeof *e + e->len;
        }
    }
    if (hit) timer_start(a->l, &a->file_timer, AGENT_FILE_DEBOUNCE_MS);
}

int agent_watch_file(struct agent *a, const char *path, char *err, size_t errlen)
{
    free(a->file), free(a->file_dir), free(a->file_base);
    a->file = strdup(path);
    const char *slash = strrchr(path, '/');
    a->file_dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
    a->file_base = strdup(slash ? slash + 1 : path);
    if (!a->file || !a->file_dir || !a->file_base) {
        err_setf(err, errlen, "out of memory");
        return -1;
    }
    if (agent_reload_file(a, err, errlen) < 0) return -1;
    if (a->ino.fd < 0) {
        int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
        if (fd < 0) {
            err_setf(err, errlen, "inotify_init1: %s", strerror(errno));
            return -1;
        }
        a->ino.fd = fd;
        a->ino.cb = ino_cb;
        if (loop_io_add(a->l, &a->ino, EPOLLIN) < 0) {
            close(fd);
            a->ino.fd = -1;
            err_setf(err, errlen, "cannot watch the inotify fd");
            return -1;
        }
    }
    /* The directory, not the file: editors and `mv` replace the file, which ends a watch on the file. */
    if (inotify_add_watch(a->ino.fd, a->file_dir, IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE) < 0) {
        err_setf(err, errlen, "inotify_add_watch %s: %s", a->file_dir, strerror(errno));
        return -1;
    }
    return 0;
}

/* ---- the agent ---- */

static int plugin_listen(struct agent *a, char *err, size_t errlen)
{
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    if (strlen(a->plugin_path) >= sizeof sun.sun_path) {
        err_setf(err, errlen, "plugin socket %s: longer than %zu bytes", a->plugin_path,
                 sizeof sun.sun_path - 1);
        return -1;
    }
    memcpy(sun.sun_path, a->plugin_path, strlen(a->plugin_path) + 1);
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", a->plugin_path);
    char *slash = strrchr(dir, '/');
    if (slash && slash != dir) {
        *slash = '\0';
        int r = mkdir_p(dir);
        if (r < 0) {
            err_setf(err, errlen, "plugin socket directory %s: %s", dir, strerror(-r));
            return -1;
        }
    }
    if (unlink(a->plugin_path) < 0 && errno != ENOENT) {
        err_setf(err, errlen, "plugin socket %s: %s", a->plugin_path, strerror(errno));
        return -1;
    }
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sun, sizeof sun) < 0 ||
        listen(fd, AGENT_PLUGIN_CONNS_MAX) < 0) {
        err_setf(err, errlen, "plugin socket %s: %s", a->plugin_path, strerror(errno));
        if (fd >= 0) close(fd);
        return -1;
    }
    a->lio.fd = fd;
    a->lio.cb = plugin_accept_cb;
    if (loop_io_add(a->l, &a->lio, EPOLLIN) < 0) {
        close(fd);
        a->lio.fd = -1;
        err_setf(err, errlen, "cannot watch the plugin socket");
        return -1;
    }
    return 0;
}

int agent_new(struct loop *l, const struct agent_config *cfg, struct agent **out, char *err, size_t errlen)
{
    struct agent *a = calloc(1, sizeof *a);
    if (!a) {
        err_setf(err, errlen, "out of memory");
        return -1;
    }
    a->l = l;
    a->lio.fd = -1;
    a->ino.fd = -1;
    a->file_timer.cb = file_timer_cb;
    a->retry_timer.cb = retry_cb;
    a->await_timer.cb = await_cb;
    a->backend = cfg->backend;
    a->wait_for_unlisted = cfg->wait_for_unlisted;
    a->plugin_path = xstrdup(cfg->plugin_socket ? cfg->plugin_socket : AGENT_DEFAULT_PLUGIN_SOCKET);
    a->state_dir = xstrdup(cfg->state_dir ? cfg->state_dir : AGENT_DEFAULT_STATE_DIR);
    a->node = cfg->node_name && *cfg->node_name ? strdup(cfg->node_name) : NULL;
    char sp[PATH_MAX];
    snprintf(sp, sizeof sp, "%s/%s", a->state_dir, AGENT_STATE_FILE);
    a->state_path = strdup(sp);
    if (!a->plugin_path || !a->state_dir || !a->state_path) {
        err_setf(err, errlen, "out of memory");
        goto fail;
    }
    int r = mkdir_p(a->state_dir);
    if (r < 0) {
        err_setf(err, errlen, "state directory %s: %s", a->state_dir, strerror(-r));
        goto fail;
    }
    if (state_load(a, err, errlen) < 0) goto fail;
    r = zds_server_new(l, cfg->zds_socket, &a->zds);
    if (r < 0) {
        err_setf(err, errlen, "ZDS socket %s: %s",
                 cfg->zds_socket ? cfg->zds_socket : ZDS_SERVER_DEFAULT_PATH, strerror(-r));
        goto fail;
    }
    if (plugin_listen(a, err, errlen) < 0) goto fail;
    /* Replay: the enrolled pods are in the snapshot of the first ztunnel at once (it still serves them, and a
     * snapshot without them would make it drain them), and get their rules installed again in the background
     * (idempotent; the agent does not remove them at shutdown, so this repairs only what changed since). A
     * pod whose rules fail is then taken out (job_done) until the enrolment source enrols it again. */
    size_t replayed = 0;
    for (struct sandbox *sb = a->sbs; sb; sb = sb->next) {
        if (sb->state != AGENT_POD_ENROLLED) continue;
        int zr = zds_server_add(a->zds, sb->zds_uid, sb->name, sb->ns, sb->sa, sb->netns_fd, NULL, NULL);
        if (zr < 0 && zr != -ENOTCONN)
            log_kv(LOG_ERROR, TGT, "replay: cannot keep the pod for ztunnel", "uid", sb->zds_uid, "error",
                   strerror(-zr), NULL);
        char rerr[RULES_ERR_MAX];
        if (start_job(a, sb, true, rerr, sizeof rerr) < 0) {
            a->st.rule_failures++;
            log_kv(LOG_ERROR, TGT,
                   "replay: failed to install the in-pod rules; the pod is out of the mesh until "
                   "they install",
                   "namespace", sb->ns, "name", sb->name, "error", rerr, NULL);
            zds_forget(a, sb);
            continue;
        }
        replayed++;
    }
    state_save(a);
    log_kv(LOG_INFO, TGT, "node agent started", "plugin_socket", a->plugin_path, "state", a->state_path,
           "backend", rules_backend_to_str(a->backend), NULL);
    LOG_I(TGT, "%zu sandboxes from the state file, %zu enrolled replayed", a->nsb, replayed);
    *out = a;
    return 0;
fail:
    agent_free(a);
    return -1;
}

void agent_free(struct agent *a)
{
    if (!a) return;
    if (a->lio.fd >= 0) {
        loop_io_close(a->l, &a->lio);
        unlink(a->plugin_path);
    }
    /* Rule jobs under way are waited for (a shutdown must not leave half a change), without their callbacks;
     * a CNI ADD waiting for one is answered. */
    for (int pass = 0; pass < 2; pass++) {
        struct sandbox **head = pass ? &a->orphans : &a->sbs;
        while (*head) {
            struct sandbox *sb = *head;
            LIST_DEL(*head, sb);
            rules_finish(sb->job);
            if (sb->waiter) pconn_answer(sb->waiter, "the node agent is shutting down");
            sb_free(sb);
        }
    }
    /* Pending plugin answers are given (-ECANCELED) by the ZDS server's end. */
    zds_server_free(a->zds);
    while (a->pconns)
        pconn_free(a->pconns);
    if (a->ino.fd >= 0) loop_io_close(a->l, &a->ino);
    timer_stop(a->l, &a->file_timer);
    timer_stop(a->l, &a->retry_timer);
    timer_stop(a->l, &a->await_timer);
    entries_free(a->entries, a->nentries);
    free(a->plugin_path), free(a->state_dir), free(a->state_path), free(a->node);
    free(a->file), free(a->file_dir), free(a->file_base);
    free(a);
}

void agent_stats(const struct agent *a, struct agent_stats *out)
{
    *out = a->st;
    out->sandboxes = a->nsb;
    out->enrolled = out->jobs = 0;
    for (const struct sandbox *sb = a->sbs; sb; sb = sb->next) {
        out->enrolled += sb->state == AGENT_POD_ENROLLED;
        out->jobs += sb->job != NULL;
    }
    for (const struct sandbox *sb = a->orphans; sb; sb = sb->next)
        out->jobs += sb->job != NULL;
}

bool agent_has_pod(const struct agent *a, const char *namespace_, const char *name, bool *enrolled)
{
    const struct sandbox *sb = sb_by_pod(a, namespace_, name);
    if (enrolled) *enrolled = sb && sb->state == AGENT_POD_ENROLLED;
    return sb != NULL;
}
