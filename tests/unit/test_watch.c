/* Unit tests for the manifest directory watch (src/zmeshd/watch.c): the debounce rule on a fake clock, the
 * names that count, and the directory source with a real inotify on a temporary directory and the real loop:
 * writes, renames over a file (how editors and kubectl-like tools save), deletes, swap files that must not
 * count, the directory replaced, and a stream of writes that never pauses still producing a reload. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "core/loop.h"
#include "zmeshd/watch.h"

/* ---- the debounce rule ---- */

static void test_debounce_quiet(void **state)
{
    (void)state;
    struct debounce d;
    debounce_init(&d, 100, 10000);
    assert_false(debounce_pending(&d));
    assert_int_equal(debounce_take(&d, 5000), 0);
    debounce_event(&d, 1000);
    assert_true(debounce_pending(&d));
    assert_int_equal(debounce_due(&d), 1100);
    assert_int_equal(debounce_take(&d, 1099), 0); /* not quiet long enough */
    debounce_event(&d, 1050);                     /* a second write restarts the quiet clock */
    debounce_event(&d, 1080);
    assert_int_equal(debounce_due(&d), 1180);
    assert_int_equal(debounce_take(&d, 1150), 0);
    assert_int_equal(debounce_take(&d, 1180), 3); /* the three events are one delivery */
    assert_false(debounce_pending(&d));
    assert_int_equal(debounce_take(&d, 99999), 0);
    /* A new burst starts its own clocks. */
    debounce_event(&d, 20000);
    assert_int_equal(debounce_due(&d), 20100);
    assert_int_equal(debounce_take(&d, 20100), 1);
}

static void test_debounce_max(void **state)
{
    (void)state;
    struct debounce d;
    debounce_init(&d, 100, 1000);
    /* An event every 50 ms never leaves 100 ms of quiet: the burst is delivered 1000 ms after its first event. */
    uint64_t t = 0, delivered_at = 0;
    unsigned total = 0;
    for (; t <= 3000; t += 10) {
        if (t % 50 == 0) debounce_event(&d, t);
        unsigned n = debounce_take(&d, t);
        if (n && !delivered_at) delivered_at = t;
        total += n;
    }
    assert_int_equal(delivered_at, 1000);
    assert_int_equal(total, 61 - (debounce_pending(&d) ? d.events : 0));
    /* Each later burst is capped the same way: deliveries every 1000 ms (at 1000, 2050, 3100 ...). */
    assert_true(debounce_pending(&d));
    /* max below after: the max wins. */
    debounce_init(&d, 500, 200);
    debounce_event(&d, 0);
    assert_int_equal(debounce_due(&d), 200);
}

static void test_name_relevant(void **state)
{
    (void)state;
    assert_true(watch_name_relevant("pods.yaml"));
    assert_true(watch_name_relevant("a.yml"));
    assert_true(watch_name_relevant("list.json"));
    assert_true(watch_name_relevant("..data")); /* a ConfigMap volume's atomic swap */
    assert_false(watch_name_relevant(".pods.yaml.swp"));
    assert_false(watch_name_relevant(".pods.yaml"));
    assert_false(watch_name_relevant("pods.yaml~"));
    assert_false(watch_name_relevant("4913")); /* vim's write test file */
    assert_false(watch_name_relevant(".yaml"));
    assert_false(watch_name_relevant("README.md"));
}

/* ---- the directory source on a real loop ---- */

struct fixture {
    char dir[192];  /* the watched directory */
    char root[128]; /* its parent (a temp dir) */
    struct loop *l;
    struct manifest_source *src;
    unsigned calls, events;
    bool stop_on_call;
    struct timer guard, action;
    void (*act)(struct fixture *f);
    unsigned act_left;
};

static void on_changed(struct manifest_source *src, unsigned events, void *ud)
{
    struct fixture *f = ud;
    assert_ptr_equal(src, f->src);
    f->calls++;
    f->events += events;
    if (f->stop_on_call) loop_stop(f->l);
}

static void guard_cb(struct timer *t)
{
    struct fixture *f = container_of(t, struct fixture, guard);
    loop_stop(f->l);
}

/* Runs the loop until a change is delivered (stop_on_call) or ms pass. Returns the calls seen in this run. */
static unsigned run(struct fixture *f, uint64_t ms, bool stop_on_call)
{
    unsigned before = f->calls;
    f->stop_on_call = stop_on_call;
    f->guard.cb = guard_cb;
    timer_start(f->l, &f->guard, ms);
    loop_run(f->l);
    timer_stop(f->l, &f->guard);
    return f->calls - before;
}

static void write_file(const char *dir, const char *name, const char *text)
{
    char p[256];
    snprintf(p, sizeof(p), "%s/%s", dir, name);
    FILE *fp = fopen(p, "w");
    assert_non_null(fp);
    fputs(text, fp);
    assert_int_equal(fclose(fp), 0);
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    snprintf(f->root, sizeof(f->root), "/tmp/zmesh-watch-XXXXXX");
    assert_non_null(mkdtemp(f->root));
    snprintf(f->dir, sizeof(f->dir), "%s/manifests", f->root);
    assert_int_equal(mkdir(f->dir, 0755), 0);
    f->l = loop_new();
    assert_non_null(f->l);
    char err[256];
    assert_int_equal(manifest_dir_source_new(f->l, f->dir, 40, 400, on_changed, f, &f->src, err, sizeof(err)), 0);
    assert_int_equal(manifest_source_start(f->src, err, sizeof(err)), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    manifest_source_free(f->src);
    loop_free(f->l);
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->root);
    assert_int_equal(system(cmd), 0);
    free(f);
    return 0;
}

static void test_write_create_delete(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(run(f, 150, false), 0); /* nothing happened: no call */
    write_file(f->dir, "a.yaml", "kind: Namespace\n");
    assert_int_equal(run(f, 2000, true), 1);
    assert_int_equal(run(f, 150, false), 0); /* one write, one delivery */
    /* Writing in place (truncate and write) counts. */
    write_file(f->dir, "a.yaml", "kind: Namespace\napiVersion: v1\n");
    assert_int_equal(run(f, 2000, true), 1);
    char p[256];
    snprintf(p, sizeof(p), "%s/a.yaml", f->dir);
    assert_int_equal(unlink(p), 0);
    assert_int_equal(run(f, 2000, true), 1);
}

static void test_rename_over(void **state)
{
    struct fixture *f = *state;
    write_file(f->dir, "a.yaml", "v: 1\n");
    assert_int_equal(run(f, 2000, true), 1);
    /* A tool writes a hidden temporary file (which alone must not count) ... */
    write_file(f->dir, ".a.yaml.tmp", "v: 2\n");
    assert_int_equal(run(f, 150, false), 0);
    /* ... and renames it over the file. */
    char from[256], to[256];
    snprintf(from, sizeof(from), "%s/.a.yaml.tmp", f->dir);
    snprintf(to, sizeof(to), "%s/a.yaml", f->dir);
    assert_int_equal(rename(from, to), 0);
    assert_int_equal(run(f, 2000, true), 1);
    /* Moved out of the directory counts too. */
    snprintf(from, sizeof(from), "%s/gone.yaml", f->root);
    assert_int_equal(rename(to, from), 0);
    assert_int_equal(run(f, 2000, true), 1);
}

static void test_swap_files_ignored(void **state)
{
    struct fixture *f = *state;
    write_file(f->dir, ".a.yaml.swp", "x");
    write_file(f->dir, "4913", "");
    write_file(f->dir, "notes.txt", "x");
    assert_int_equal(run(f, 200, false), 0);
}

static void test_dir_replaced(void **state)
{
    struct fixture *f = *state;
    char old[200], next[200];
    snprintf(old, sizeof(old), "%s/old", f->root);
    snprintf(next, sizeof(next), "%s/next", f->root);
    /* The directory is swapped for another one, as a deploy tool would: rename away, rename a new one in. */
    assert_int_equal(mkdir(next, 0755), 0);
    write_file(next, "b.yaml", "v: 1\n");
    assert_int_equal(rename(f->dir, old), 0);
    assert_int_equal(rename(next, f->dir), 0);
    assert_true(run(f, 2000, true) >= 1);
    (void)run(f, 150, false);
    /* The watch follows the new directory: writes in it count, writes in the old one do not. */
    write_file(old, "c.yaml", "v: 1\n");
    assert_int_equal(run(f, 200, false), 0);
    write_file(f->dir, "c.yaml", "v: 1\n");
    assert_int_equal(run(f, 2000, true), 1);
    /* Deleted and made again: seen through the parent. */
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
    assert_int_equal(system(cmd), 0);
    assert_true(run(f, 2000, true) >= 1);
    assert_int_equal(mkdir(f->dir, 0755), 0);
    assert_true(run(f, 2000, true) >= 1);
    write_file(f->dir, "d.yaml", "v: 1\n");
    assert_int_equal(run(f, 2000, true), 1);
}

static void test_configmap_swap(void **state)
{
    struct fixture *f = *state;
    /* A ConfigMap volume as the kubelet's atomic writer lays it out: the visible file is a symlink into
     * "..data", itself a symlink to a timestamped directory. */
    char p[256], q[256];
    snprintf(p, sizeof(p), "%s/..2026_01", f->dir);
    assert_int_equal(mkdir(p, 0755), 0);
    write_file(p, "a.yaml", "v: 1\n");
    snprintf(p, sizeof(p), "%s/..data", f->dir);
    assert_int_equal(symlink("..2026_01", p), 0);
    snprintf(p, sizeof(p), "%s/a.yaml", f->dir);
    assert_int_equal(symlink("..data/a.yaml", p), 0);
    assert_true(run(f, 2000, true) >= 1);
    (void)run(f, 150, false);
    /* A new version: a new directory and a temporary link (neither counts), then one rename over "..data". */
    snprintf(p, sizeof(p), "%s/..2026_02", f->dir);
    assert_int_equal(mkdir(p, 0755), 0);
    write_file(p, "a.yaml", "v: 2\n");
    snprintf(p, sizeof(p), "%s/..data_tmp", f->dir);
    assert_int_equal(symlink("..2026_02", p), 0);
    assert_int_equal(run(f, 200, false), 0);
    snprintf(q, sizeof(q), "%s/..data", f->dir);
    assert_int_equal(rename(p, q), 0);
    assert_int_equal(run(f, 2000, true), 1);
}

static void test_dot_path(void **state)
{
    struct fixture *f = *state;
    /* "--manifests ." from inside the directory: its parent is found through the resolved path, and the
     * directory's own events still count. */
    char cwd[256], err[256];
    assert_non_null(getcwd(cwd, sizeof(cwd)));
    assert_int_equal(chdir(f->dir), 0);
    struct manifest_source *dot = NULL;
    assert_int_equal(manifest_dir_source_new(f->l, ".", 40, 400, on_changed, f, &dot, err, sizeof(err)), 0);
    assert_int_equal(chdir(cwd), 0);
    manifest_source_free(f->src);
    f->src = dot;
    assert_int_equal(chdir(f->dir), 0);
    assert_int_equal(manifest_source_start(dot, err, sizeof(err)), 0);
    assert_int_equal(chdir(cwd), 0);
    write_file(f->dir, "a.yaml", "v: 1\n");
    assert_int_equal(run(f, 2000, true), 1);
}

static void action_cb(struct timer *t)
{
    struct fixture *f = container_of(t, struct fixture, action);
    f->act(f);
    if (--f->act_left) timer_start(f->l, t, 20);
}

static void write_a(struct fixture *f)
{
    write_file(f->dir, "a.yaml", "v: 1\n");
}

static void test_constant_stream(void **state)
{
    struct fixture *f = *state;
    /* A write every 20 ms for 1.2 s never leaves the 40 ms of quiet: the 400 ms maximum still delivers. */
    f->act = write_a;
    f->act_left = 60;
    f->action.cb = action_cb;
    timer_start(f->l, &f->action, 0);
    unsigned calls = run(f, 1100, false);
    assert_true(f->act_left > 0); /* the stream was still going */
    assert_true(calls >= 1);
    assert_true(calls <= 10); /* without the debounce there would be about 180 */
    /* After it stops, the last burst is delivered once. */
    (void)run(f, 1500, false);
    assert_int_equal(f->act_left, 0);
    assert_true(f->events >= 60);
    assert_int_equal(run(f, 200, false), 0);
}

static void test_load_and_stop(void **state)
{
    struct fixture *f = *state;
    char err[256];
    write_file(f->dir, "ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: demo\n");
    (void)run(f, 1000, true);
    struct manifest_store *st;
    assert_int_equal(manifest_store_new(&st), 0);
    assert_int_equal(manifest_source_load(f->src, st, NULL, NULL, err, sizeof(err)), 0);
    size_t n;
    const struct k8s_namespace *ns = manifest_namespaces(st, &n);
    assert_int_equal(n, 1);
    assert_string_equal(ns[0].meta.name, "demo");
    manifest_store_free(st);
    /* Stopped: no more calls. Started again: calls again. */
    manifest_source_stop(f->src);
    write_file(f->dir, "ns.yaml", "kind: Namespace\n");
    assert_int_equal(run(f, 200, false), 0);
    assert_int_equal(manifest_source_start(f->src, err, sizeof(err)), 0);
    write_file(f->dir, "ns.yaml", "kind: Namespace\n");
    assert_int_equal(run(f, 2000, true), 1);
    /* A directory that cannot be read is an error naming it. */
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
    assert_int_equal(system(cmd), 0);
    assert_int_equal(manifest_store_new(&st), 0);
    assert_int_equal(manifest_source_load(f->src, st, NULL, NULL, err, sizeof(err)), -ENOENT);
    assert_non_null(strstr(err, f->dir));
    manifest_store_free(st);
}

static void test_bad_arguments(void **state)
{
    (void)state;
    struct loop *l = loop_new();
    struct manifest_source *s = NULL;
    char err[256], longp[WATCH_PATH_MAX + 10];
    assert_int_equal(manifest_dir_source_new(l, "", 0, 0, on_changed, NULL, &s, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "empty"));
    memset(longp, 'a', sizeof(longp) - 1);
    longp[sizeof(longp) - 1] = 0;
    assert_int_equal(manifest_dir_source_new(l, longp, 0, 0, on_changed, NULL, &s, err, sizeof(err)),
                     -ENAMETOOLONG);
    /* A file is not a directory: start says so. */
    assert_int_equal(manifest_dir_source_new(l, "/etc/hostname", 0, 0, on_changed, NULL, &s, err, sizeof(err)), 0);
    assert_int_equal(manifest_source_start(s, err, sizeof(err)), -ENOTDIR);
    assert_non_null(strstr(err, "/etc/hostname"));
    manifest_source_free(s);
    /* A missing directory under an existing parent is waited for. */
    assert_int_equal(manifest_dir_source_new(l, "/tmp/zmesh-watch-does-not-exist/", 0, 0, on_changed, NULL, &s,
                                             err, sizeof(err)),
                     0);
    assert_int_equal(manifest_source_start(s, err, sizeof(err)), 0);
    manifest_source_free(s);
    /* ... but not under a missing parent. */
    assert_int_equal(manifest_dir_source_new(l, "/tmp/zmesh-no-such-parent/x", 0, 0, on_changed, NULL, &s, err,
                                             sizeof(err)),
                     0);
    assert_int_equal(manifest_source_start(s, err, sizeof(err)), -ENOENT);
    assert_non_null(strstr(err, "parent"));
    manifest_source_free(s);
    loop_free(l);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_debounce_quiet),
        cmocka_unit_test(test_debounce_max),
        cmocka_unit_test(test_name_relevant),
        cmocka_unit_test_setup_teardown(test_write_create_delete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rename_over, setup, teardown),
        cmocka_unit_test_setup_teardown(test_swap_files_ignored, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dir_replaced, setup, teardown),
        cmocka_unit_test_setup_teardown(test_configmap_swap, setup, teardown),
        cmocka_unit_test_setup_teardown(test_dot_path, setup, teardown),
        cmocka_unit_test_setup_teardown(test_constant_stream, setup, teardown),
        cmocka_unit_test_setup_teardown(test_load_and_stop, setup, teardown),
        cmocka_unit_test(test_bad_arguments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
