/* Where zmeshd's Kubernetes objects come from, and how it learns that they changed: a "manifest source" fills
 * a manifest store (manifest.h) on demand and calls back when its contents may have changed. Today's source
 * is a directory of YAML files watched with inotify; a later Kubernetes API watch implements the same
 * interface, so the daemon (daemon.h) never knows which one it has.
 *
 * Changes are debounced as istiod debounces config events before a push (istio/istio
 * pilot/pkg/xds/discovery.go, debounce(); settings PILOT_DEBOUNCE_AFTER, default 100 ms, and
 * PILOT_DEBOUNCE_MAX, default 10 s, in pilot/pkg/features/tuning.go): the callback runs once the source has
 * been quiet for `after` since its last event, or `max` after the first event of a burst if events never
 * stop, so an editor's several writes make one reload and a file rewritten without pause still makes one. */
#pragma once
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/loop.h"
#include "zmeshd/manifest.h"

/* istiod's defaults (pilot/pkg/features/tuning.go). */
#define WATCH_DEBOUNCE_AFTER_MS 100
#define WATCH_DEBOUNCE_MAX_MS 10000

/* ---- debounce: the timing rule alone, free of the loop and of inotify, so it can be tested with a fake clock
 * ---- */

struct debounce {
    uint64_t after_ms, max_ms;
    uint64_t first_ms, last_ms; /* first and latest event of the pending burst */
    unsigned events;            /* events merged into the pending burst; 0 = nothing pending */
};

/* Sets the two delays (after_ms >= 1, max_ms >= after_ms is what makes sense; max_ms < after_ms fires at
 * max_ms) and clears any pending burst. */
void debounce_init(struct debounce *d, uint64_t after_ms, uint64_t max_ms);
/* Records one event at now_ms. */
void debounce_event(struct debounce *d, uint64_t now_ms);
/* True when an event is waiting to be delivered. */
static inline bool debounce_pending(const struct debounce *d)
{
    return d->events != 0;
}
/* When the pending burst is due: min(last + after, first + max). Only meaningful while pending. */
uint64_t debounce_due(const struct debounce *d);
/* If a burst is pending and due at now_ms, ends it and returns the number of events it merged; else 0. */
unsigned debounce_take(struct debounce *d, uint64_t now_ms);

/* ---- the manifest source interface ---- */

struct manifest_source;

/* Called on the loop thread, debounced, when the source's objects may have changed; events = how many raw
 * events were merged into this call. */
typedef void (*manifest_source_changed_fn)(struct manifest_source *src, unsigned events, void *ud);

struct manifest_source_ops {
    const char *kind; /* "directory", for logs */
    /* Begins watching (events before start are not reported). Returns 0 or -errno with err set. */
    int (*start)(struct manifest_source *src, char *err, size_t errlen);
    /* Stops watching; no callback runs after it. start may be called again. */
    void (*stop)(struct manifest_source *src);
    /* Reads the current objects into st (a new, empty store); findings go to report. Returns 0, or -errno
     * when nothing could be read (the caller keeps what it had), with err set. */
    int (*load)(struct manifest_source *src, struct manifest_store *st, manifest_report_fn report, void *ud,
                char *err, size_t errlen);
    /* Stops and frees the source. */
    void (*free)(struct manifest_source *src);
};

/* What every source starts with; sources embed it first. */
struct manifest_source {
    const struct manifest_source_ops *ops;
    const char *where; /* the directory, or the API server: names the source in logs */
    manifest_source_changed_fn changed;
    void *ud;
};

static inline int manifest_source_start(struct manifest_source *s, char *err, size_t errlen)
{
    return s->ops->start(s, err, errlen);
}
static inline void manifest_source_stop(struct manifest_source *s)
{
    s->ops->stop(s);
}
static inline int manifest_source_load(struct manifest_source *s, struct manifest_store *st,
                                       manifest_report_fn report, void *ud, char *err, size_t errlen)
{
    return s->ops->load(s, st, report, ud, err, errlen);
}
/* Frees s (NULL is a no-op). */
static inline void manifest_source_free(struct manifest_source *s)
{
    if (s) s->ops->free(s);
}

/* ---- the directory source ---- */

/* Longest directory path accepted. */
#define WATCH_PATH_MAX 4096

/* A source reading dir with manifest_load_dir and watching it with inotify: files created, written
 * (IN_CLOSE_WRITE, IN_MODIFY), deleted, moved in or out (editors and kubectl-like tools that write a
 * temporary file and rename it over the old one), a ConfigMap volume's "..data" symlink swap, and the
 * directory itself deleted, moved or replaced (its parent is watched for dir's name; the watch follows the
 * new directory). Only names the reader would read (manifest.c: *.yaml, *.yml, *.json, not dot-files) and
 * "..data" count, so an editor's swap files cause no reload. A missing directory is not an error at start:
 * it is picked up when it appears. after_ms/max_ms 0 take the defaults above. The source runs on loop l;
 * changed(src, events, ud) is called there. Returns 0 with *out set (free with manifest_source_free), or
 * -EINVAL/-ENAMETOOLONG/-ENOMEM with err set. */
int manifest_dir_source_new(struct loop *l, const char *dir, uint64_t after_ms, uint64_t max_ms,
                            manifest_source_changed_fn changed, void *ud, struct manifest_source **out, char *err,
                            size_t errlen);

/* True when an inotify event for name inside the manifest directory can change what is loaded (exported for
 * tests). */
bool watch_name_relevant(const char *name);
