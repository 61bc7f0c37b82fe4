/* Manifest sources and the debounce rule (watch.h). */
#include "zmeshd/watch.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>

#include "core/log.h"

#define LOG_TARGET "zmeshd::watch"

/* Events read per read(2); the kernel queues the rest (up to max_queued_events, then IN_Q_OVERFLOW). */
#define WATCH_READ_BUF 16384
/* Longest file name in a directory (NAME_MAX) plus the NUL. */
#define WATCH_NAME_MAX 256

/* ---- debounce ---- */

void debounce_init(struct debounce *d, uint64_t after_ms, uint64_t max_ms)
{
    *d = (struct debounce){.after_ms = after_ms, .max_ms = max_ms};
}

void debounce_event(struct debounce *d, uint64_t now_ms)
{
    /* As istiod: the first event of a burst starts the max clock; every event restarts the quiet clock. */
    if (d->events == 0) d->first_ms = now_ms;
    d->last_ms = now_ms;
    d->events++;
}

uint64_t debounce_due(const struct debounce *d)
{
    uint64_t quiet = d->last_ms + d->after_ms, cap = d->first_ms + d->max_ms;
    return quiet < cap ? quiet : cap;
}

unsigned debounce_take(struct debounce *d, uint64_t now_ms)
{
    if (!d->events || now_ms < debounce_due(d)) return 0;
    unsigned n = d->events;
    d->events = 0;
    d->first_ms = d->last_ms = 0;
    return n;
}

/* ---- the directory source ---- */

/* What the directory watch listens for: every way a file's contents or presence change, and the directory
 * itself going away (its watch then follows the inode, not the path). */
#define DIR_MASK                                                                                             \
    (IN_CREATE | IN_CLOSE_WRITE | IN_MODIFY | IN_ATTRIB | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO |         \
     IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR)
/* The parent is watched only for the directory's own name appearing or disappearing. */
#define PARENT_MASK (IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_ONLYDIR)

/* The name Kubernetes' atomic writer (kubelet's ConfigMap and Secret volumes) swaps to publish a new version:
 * the visible files are symlinks into "..data/", which is renamed over in one step. */
#define CONFIGMAP_DATA "..data"

struct dir_source {
    struct manifest_source base; /* first: the interface pointer is the source */
    struct loop *loop;
    char dir[WATCH_PATH_MAX];
    char parent[WATCH_PATH_MAX]; /* "" when dir is "/" (no parent to watch) */
    char name[WATCH_NAME_MAX];   /* dir's last component, as the parent lists it */
    struct io io;                /* the inotify fd; -1 when stopped */
    int wd_dir, wd_parent;       /* -1 when not watched */
    struct debounce deb;
    struct timer timer;
};

bool watch_name_relevant(const char *name)
{
    /* The same rule as manifest.c's reader (manifest_name): a change to a file it would skip changes nothing. */
    if (!strcmp(name, CONFIGMAP_DATA)) return true;
    if (name[0] == '.') return false;
    size_t l = strlen(name);
    return (l > 5 && !strcmp(name + l - 5, ".yaml")) || (l > 4 && !strcmp(name + l - 4, ".yml")) ||
           (l > 5 && !strcmp(name + l - 5, ".json"));
}

static void arm(struct dir_source *s)
{
    uint64_t now = loop_now(s->loop), due = debounce_due(&s->deb);
    timer_start(s->loop, &s->timer, due > now ? due - now : 0);
}

static void note_event(struct dir_source *s)
{
    debounce_event(&s->deb, loop_now(s->loop));
    arm(s);
}

static void timer_cb(struct timer *t)
{
    struct dir_source *s = container_of(t, struct dir_source, timer);
    unsigned n = debounce_take(&s->deb, loop_now(s->loop));
    if (n) {
        LOG_D(LOG_TARGET, "%s: %u change event%s settled", s->dir, n, n == 1 ? "" : "s");
        s->base.changed(&s->base, n, s->base.ud);
    } else if (debounce_pending(&s->deb)) {
        arm(s); /* the cached loop clock was a little behind the timer heap's: wait the rest */
    }
}

/* (Re)points the directory watch at whatever dir names now: the same inode (inotify returns the same wd), a
 * new directory (the old watch is dropped), or nothing (the directory is gone; the parent's watch says when
 * it is back). */
static void rewatch_dir(struct dir_source *s)
{
    int wd = inotify_add_watch(s->io.fd, s->dir, DIR_MASK);
    if (wd < 0) {
        int e = errno;
        if (s->wd_dir < 0) return; /* already said */
        inotify_rm_watch(s->io.fd, s->wd_dir);
        s->wd_dir = -1;
        log_kv(LOG_WARN, LOG_TARGET, "cannot watch the manifest directory; watching its parent for it to return",
               "dir", s->dir, "error", strerror(e), NULL);
        return;
    }
    if (s->wd_dir < 0) {
        LOG_I(LOG_TARGET, "%s is there: watching it", s->dir);
    } else if (s->wd_dir != wd) {
        inotify_rm_watch(s->io.fd, s->wd_dir);
        LOG_I(LOG_TARGET, "%s was replaced: watching the new directory", s->dir);
    }
    s->wd_dir = wd;
}

static void handle(struct dir_source *s, const struct inotify_event *e)
{
    if (e->mask & IN_Q_OVERFLOW) {
        /* Events were lost: the directory may even have been replaced. Look again and reload. */
        log_kv(LOG_WARN, LOG_TARGET, "inotify queue overflowed; reloading everything", "dir", s->dir, NULL);
        rewatch_dir(s);
        note_event(s);
        return;
    }
    if (e->wd == s->wd_parent && s->wd_parent >= 0) {
        if (e->len && !strcmp(e->name, s->name)) {
            rewatch_dir(s);
            note_event(s);
        }
        if (e->mask & IN_IGNORED) {
            s->wd_parent = -1;
            log_kv(LOG_WARN, LOG_TARGET,
                   "the manifest directory's parent is gone; a replaced directory will not be noticed", "dir",
                   s->dir, NULL);
        }
        return;
    }
    if (e->wd != s->wd_dir || s->wd_dir < 0) return; /* a watch already dropped */
    if (e->mask & IN_IGNORED) {
        s->wd_dir = -1;
        return;
    }
    if (e->mask & (IN_DELETE_SELF | IN_MOVE_SELF)) {
        rewatch_dir(s);
        note_event(s);
        return;
    }
    if (e->len && watch_name_relevant(e->name)) {
        LOG_D(LOG_TARGET, "%s: event 0x%x on %s", s->dir, e->mask, e->name);
        note_event(s);
    }
}

static void inotify_cb(struct io *io, uint32_t revents)
{
    struct dir_source *s = container_of(io, struct dir_source, io);
    char buf[WATCH_READ_BUF] __attribute__((aligned(__alignof__(struct inotify_event))));
    ssize_t n;
    (void)revents;
    while (s->io.fd >= 0 && (n = read(s->io.fd, buf, sizeof(buf))) > 0) {
        for (char *p = buf; p < buf + n;) {
            const struct inotify_event *e = (const struct inotify_event *)p;
            handle(s, e);
            p += sizeof(*e) + e->len;
        }
    }
}

static int dir_start(struct manifest_source *src, char *err, size_t errlen)
{
    struct dir_source *s = (struct dir_source *)src;
    if (s->io.fd >= 0) return 0;
    int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (fd < 0) {
        int e = -errno;
        snprintf(err, errlen, "inotify_init1: %s", strerror(-e));
        return e;
    }
    int rc = 0;
    s->io = (struct io){.fd = fd, .cb = inotify_cb};
    s->wd_dir = s->wd_parent = -1;
    if (s->parent[0]) {
        s->wd_parent = inotify_add_watch(fd, s->parent, PARENT_MASK);
        if (s->wd_parent < 0) {
            rc = -errno;
            snprintf(err, errlen, "%s: cannot watch (the manifest directory's parent): %s", s->parent,
                     strerror(-rc));
            goto out;
        }
    }
    s->wd_dir = inotify_add_watch(fd, s->dir, DIR_MASK);
    if (s->wd_dir < 0) {
        rc = -errno;
        /* A missing directory is watched for through its parent; anything else (not a directory, no access,
         * out of watches) would leave zmeshd deaf to changes, so it is an error. */
        if (rc != -ENOENT || s->wd_parent < 0) {
            snprintf(err, errlen, "%s: cannot watch: %s%s", s->dir, strerror(-rc),
                     rc == -ENOSPC ? " (raise fs.inotify.max_user_watches)" : "");
            goto out;
        }
        rc = 0;
        log_kv(LOG_WARN, LOG_TARGET, "the manifest directory does not exist; waiting for it", "dir", s->dir,
               NULL);
    }
    if ((rc = loop_io_add(s->loop, &s->io, EPOLLIN)) < 0) snprintf(err, errlen, "epoll: %s", strerror(-rc));
out:
    if (rc < 0) {
        close(fd);
        s->io.fd = -1;
        s->wd_dir = s->wd_parent = -1;
    }
    return rc;
}

static void dir_stop(struct manifest_source *src)
{
    struct dir_source *s = (struct dir_source *)src;
    if (s->io.fd >= 0) loop_io_close(s->loop, &s->io); /* closing the fd drops its watches */
    s->io.fd = -1;
    s->wd_dir = s->wd_parent = -1;
    timer_stop(s->loop, &s->timer);
    debounce_init(&s->deb, s->deb.after_ms, s->deb.max_ms);
}

static int dir_load(struct manifest_source *src, struct manifest_store *st, manifest_report_fn report, void *ud,
                    char *err, size_t errlen)
{
    struct dir_source *s = (struct dir_source *)src;
    int rc = manifest_load_dir(st, s->dir, report, ud);
    if (rc < 0) snprintf(err, errlen, "%s: %s", s->dir, strerror(-rc));
    return rc;
}

static void dir_free(struct manifest_source *src)
{
    dir_stop(src);
    free(src);
}

/* The parent and the last component of path as it is written (not resolved), so a symlink to the directory
 * being swapped is seen in the parent too; trailing slashes name no other component. A path ending in "." or
 * ".." is resolved first: its parent as written would be the directory itself (or a child), and two watches
 * on one inode are one watch in inotify. parent[] and name[] are WATCH_PATH_MAX and WATCH_NAME_MAX long;
 * parent is "" for "/". Returns 0, -ENAMETOOLONG or -errno from realpath. */
static int split_path(const char *path, char *parent, char *name)
{
    char tmp[WATCH_PATH_MAX];
    size_t len = strlen(path);
    memcpy(tmp, path, len + 1);
    while (len > 1 && tmp[len - 1] == '/')
        tmp[--len] = 0;
    char *slash = strrchr(tmp, '/');
    const char *last = slash ? slash + 1 : tmp;
    if (!strcmp(last, ".") || !strcmp(last, "..")) {
        char resolved[PATH_MAX];
        if (!realpath(path, resolved)) return -errno;
        if (strlen(resolved) >= sizeof(tmp)) return -ENAMETOOLONG;
        return split_path(resolved, parent, name); /* a resolved path never ends in "." or ".." */
    }
    if (!*last) {
        parent[0] = name[0] = 0; /* "/" */
        return 0;
    }
    if (strlen(last) >= WATCH_NAME_MAX) return -ENAMETOOLONG;
    memcpy(name, last, strlen(last) + 1);
    if (!slash)
        memcpy(parent, ".", 2);
    else if (slash == tmp)
        memcpy(parent, "/", 2);
    else {
        *slash = 0;
        memcpy(parent, tmp, strlen(tmp) + 1); /* shorter than path */
    }
    return 0;
}

static const struct manifest_source_ops dir_ops = {
    .kind = "directory", .start = dir_start, .stop = dir_stop, .load = dir_load, .free = dir_free};

int manifest_dir_source_new(struct loop *l, const char *dir, uint64_t after_ms, uint64_t max_ms,
                            manifest_source_changed_fn changed, void *ud, struct manifest_source **out, char *err,
                            size_t errlen)
{
    if (!dir || !*dir) {
        snprintf(err, errlen, "the manifest directory is empty");
        return -EINVAL;
    }
    size_t len = strlen(dir);
    if (len >= WATCH_PATH_MAX) {
        snprintf(err, errlen, "the manifest directory's path is longer than %d bytes", WATCH_PATH_MAX - 1);
        return -ENAMETOOLONG;
    }
    if (!l || !changed) {
        snprintf(err, errlen, "manifest_dir_source_new: no loop or callback");
        return -EINVAL;
    }
    struct dir_source *s = calloc(1, sizeof(*s));
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    memcpy(s->dir, dir, len + 1);
    int rc = split_path(dir, s->parent, s->name);
    if (rc == -ENAMETOOLONG) {
        snprintf(err, errlen, "%s: the directory's name is longer than %d bytes", dir, WATCH_NAME_MAX - 1);
    } else if (rc < 0) {
        snprintf(err, errlen, "%s: cannot resolve the path (it ends in \".\" or \"..\"): %s", dir, strerror(-rc));
    }
    if (rc < 0) {
        free(s);
        return rc;
    }
    s->base = (struct manifest_source){.ops = &dir_ops, .where = s->dir, .changed = changed, .ud = ud};
    s->loop = l;
    s->io.fd = -1;
    s->wd_dir = s->wd_parent = -1;
    s->timer.cb = timer_cb;
    debounce_init(&s->deb, after_ms ? after_ms : WATCH_DEBOUNCE_AFTER_MS, max_ms ? max_ms : WATCH_DEBOUNCE_MAX_MS);
    *out = &s->base;
    return 0;
}
