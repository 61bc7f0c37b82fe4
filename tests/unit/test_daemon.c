/* Unit tests for the zmeshd daemon (src/zmeshd/daemon.c): snapshots compared by resource key, the daemon's
 * configuration checks, its first load and reloads on a real directory and loop (subscribers, versions, what a
 * bad manifest does), the node check for the CA, and the check and token commands. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "core/loop.h"
#include "mesh/model.h"
#include "zmeshd/daemon.h"

#define NS_AMBIENT "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}\n"
#define POD(name, ip, node, sa)                                                                              \
    "---\napiVersion: v1\nkind: Pod\nmetadata: {name: " name ", namespace: demo, labels: {app: web}}\n"      \
    "spec: {nodeName: " node ", serviceAccountName: " sa ", containers: [{name: c, ports: [{containerPort: " \
    "8080, name: http}]}]}\n"                                                                                \
    "status: {phase: Running, podIP: " ip ", conditions: [{type: Ready, status: \"True\"}]}\n"
#define SVC(name, port)                                                                                      \
    "---\napiVersion: v1\nkind: Service\nmetadata: {name: " name ", namespace: demo}\n"                     \
    "spec: {selector: {app: web}, clusterIP: 10.96.0.10, ports: [{port: " port ", targetPort: http}]}\n"
#define AP(name, action)                                                                                     \
    "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: " name              \
    ", namespace: demo}\nspec: {action: " action ", rules: [{from: [{source: {namespaces: [demo]}}]}]}\n"

static struct snapshot *build(const char *yaml)
{
    struct manifest_store *st;
    struct snapshot *s;
    assert_int_equal(manifest_store_new(&st), 0);
    assert_int_equal(manifest_load_buf(st, "t.yaml", yaml, strlen(yaml), NULL, NULL), 0);
    assert_int_equal(k8s_build_snapshot(st, &(struct k8s_options){0}, &s, NULL, NULL), 0);
    manifest_store_free(st);
    return s;
}

#define KIND_EQ(k, a, c, r)                                                                                  \
    do {                                                                                                     \
        assert_int_equal((k).added, a);                                                                      \
        assert_int_equal((k).changed, c);                                                                    \
        assert_int_equal((k).removed, r);                                                                    \
    } while (0)

/* ---- snapshots compared ---- */

static void test_diff(void **state)
{
    (void)state;
    struct zmeshd_diff df;
    struct snapshot *a = build(NS_AMBIENT POD("p1", "10.0.0.1", "n1", "web") POD("p2", "10.0.0.2", "n1", "web")
                                   SVC("web", "80") AP("allow", "ALLOW"));
    zmeshd_snapshot_diff(NULL, a, &df);
    KIND_EQ(df.workloads, 2, 0, 0);
    KIND_EQ(df.services, 1, 0, 0);
    KIND_EQ(df.policies, 1, 0, 0);
    zmeshd_snapshot_diff(a, a, &df);
    assert_true(zmeshd_diff_empty(&df));
    /* The same text built again: equal resources in a distinct snapshot. */
    struct snapshot *a2 = build(NS_AMBIENT POD("p1", "10.0.0.1", "n1", "web") POD("p2", "10.0.0.2", "n1", "web")
                                    SVC("web", "80") AP("allow", "ALLOW"));
    zmeshd_snapshot_diff(a, a2, &df);
    assert_true(zmeshd_diff_empty(&df));
    /* p1's address changes, p2 goes, p3 comes; the service's port changes; the policy's action changes and a
     * second one comes. */
    struct snapshot *b = build(NS_AMBIENT POD("p1", "10.0.0.9", "n1", "web") POD("p3", "10.0.0.3", "n1", "web")
                                   SVC("web", "81") AP("allow", "DENY") AP("more", "ALLOW"));
    zmeshd_snapshot_diff(a, b, &df);
    KIND_EQ(df.workloads, 1, 1, 1);
    KIND_EQ(df.services, 0, 1, 0);
    KIND_EQ(df.policies, 1, 1, 0);
    assert_false(zmeshd_diff_empty(&df));
    /* Everything removed. */
    struct snapshot *e = build("");
    zmeshd_snapshot_diff(b, e, &df);
    KIND_EQ(df.workloads, 0, 0, 2);
    KIND_EQ(df.services, 0, 0, 1);
    KIND_EQ(df.policies, 0, 0, 2);
    struct zmeshd_counts c = zmeshd_snapshot_counts(b);
    assert_int_equal(c.workloads, 2);
    assert_int_equal(c.services, 1);
    assert_int_equal(c.policies, 2);
    snapshot_unref(a);
    snapshot_unref(a2);
    snapshot_unref(b);
    snapshot_unref(e);
}

static void test_equal_fields(void **state)
{
    (void)state;
    /* One field at a time: each must make the resources differ. */
    struct snapshot *a = build(NS_AMBIENT POD("p1", "10.0.0.1", "n1", "web") SVC("web", "80") AP("x", "ALLOW"));
    struct snapshot *sa = build(NS_AMBIENT POD("p1", "10.0.0.1", "n1", "db") SVC("web", "80") AP("x", "ALLOW"));
    struct snapshot *node = build(NS_AMBIENT POD("p1", "10.0.0.1", "n2", "web") SVC("web", "80") AP("x", "ALLOW"));
    struct snapshot *tcp = build(POD("p1", "10.0.0.1", "n1", "web") SVC("web", "80") AP("x", "ALLOW"));
    const struct workload *w = snapshot_workload_at(a, 0);
    assert_true(zmeshd_workload_equal(w, w));
    assert_false(zmeshd_workload_equal(w, snapshot_workload_at(sa, 0)));
    assert_false(zmeshd_workload_equal(w, snapshot_workload_at(node, 0)));
    assert_false(zmeshd_workload_equal(w, snapshot_workload_at(tcp, 0))); /* protocol HBONE vs TCP */
    struct workload copy = *w;
    copy.healthy = !copy.healthy;
    assert_false(zmeshd_workload_equal(w, &copy));
    copy = *w;
    copy.n_services = 0;
    assert_false(zmeshd_workload_equal(w, &copy));
    const struct service *s = snapshot_service_at(a, 0);
    struct service sc = *s;
    assert_true(zmeshd_service_equal(s, &sc));
    sc.lb_mode = LB_MODE_STRICT;
    assert_false(zmeshd_service_equal(s, &sc));
    sc = *s;
    sc.n_vips = 0;
    assert_false(zmeshd_service_equal(s, &sc));
    const struct policy *p = snapshot_policy_at(a, 0);
    struct policy pc = *p;
    assert_true(zmeshd_policy_equal(p, &pc));
    pc.scope = POLICY_SCOPE_GLOBAL;
    assert_false(zmeshd_policy_equal(p, &pc));
    /* A rule's match differs deep down. */
    struct snapshot *other = build(NS_AMBIENT "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
                                              "metadata: {name: x, namespace: demo}\nspec: {rules: [{from: "
                                              "[{source: {namespaces: [prod]}}]}]}\n");
    assert_false(zmeshd_policy_equal(p, snapshot_policy_at(other, 0)));
    snapshot_unref(a);
    snapshot_unref(sa);
    snapshot_unref(node);
    snapshot_unref(tcp);
    snapshot_unref(other);
}

/* ---- the daemon ---- */

struct fx {
    char root[64], dir[128], state[128];
    struct loop *l;
    struct zmeshd *d;
    struct timer guard;
    unsigned calls;
    struct snapshot *last_old, *last_cur;
    bool stop_on_call;
};

static void on_snapshot(void *ud, struct snapshot *old, struct snapshot *cur)
{
    struct fx *f = ud;
    f->calls++;
    f->last_old = old;
    f->last_cur = cur;
    assert_int_equal(zmeshd_subscribe(f->d, on_snapshot, f), -EBUSY); /* not from inside a publish */
    assert_int_equal(zmeshd_unsubscribe(f->d, on_snapshot, f), -EBUSY);
    assert_int_equal(zmeshd_reload(f->d, 1), -EBUSY);
    if (f->stop_on_call) loop_stop(f->l);
}

static void guard_cb(struct timer *t)
{
    struct fx *f = container_of(t, struct fx, guard);
    loop_stop(f->l);
}

static unsigned run(struct fx *f, uint64_t ms)
{
    unsigned before = f->calls;
    f->stop_on_call = true;
    f->guard.cb = guard_cb;
    timer_start(f->l, &f->guard, ms);
    loop_run(f->l);
    timer_stop(f->l, &f->guard);
    return f->calls - before;
}

static void put(const char *dir, const char *name, const char *text)
{
    char p[256], tmp[300];
    snprintf(p, sizeof(p), "%s/%s", dir, name);
    snprintf(tmp, sizeof(tmp), "%s/.%s.tmp", dir, name);
    FILE *fp = fopen(tmp, "w");
    assert_non_null(fp);
    fputs(text, fp);
    assert_int_equal(fclose(fp), 0);
    assert_int_equal(rename(tmp, p), 0);
}

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    snprintf(f->root, sizeof(f->root), "/tmp/zmesh-daemon-XXXXXX");
    assert_non_null(mkdtemp(f->root));
    snprintf(f->dir, sizeof(f->dir), "%s/manifests", f->root);
    snprintf(f->state, sizeof(f->state), "%s/state", f->root);
    assert_int_equal(mkdir(f->dir, 0755), 0);
    assert_non_null(f->l = loop_new());
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    zmeshd_free(f->d);
    loop_free(f->l);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->root);
    assert_int_equal(system(cmd), 0);
    free(f);
    return 0;
}

static int new_daemon(struct fx *f, const struct zmeshd_config *extra, char *err, size_t n)
{
    struct zmeshd_config c = extra ? *extra : (struct zmeshd_config){0};
    c.manifests = f->dir;
    if (!c.state_dir) c.state_dir = f->state;
    c.debounce_after_ms = 30;
    c.debounce_max_ms = 300;
    return zmeshd_new(f->l, &c, &f->d, err, n);
}

static void test_config_errors(void **state)
{
    struct fx *f = *state;
    char err[512];
    struct zmeshd *d = NULL;
    assert_int_equal(zmeshd_new(f->l, &(struct zmeshd_config){.manifests = f->dir}, &d, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "--state-dir"));
    assert_int_equal(zmeshd_new(f->l, &(struct zmeshd_config){.state_dir = f->state}, &d, err, sizeof(err)),
                     -EINVAL);
    assert_non_null(strstr(err, "--manifests"));
    assert_int_equal(new_daemon(f, &(struct zmeshd_config){.listen = "localhost"}, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "listen address \"localhost\""));
    assert_int_equal(new_daemon(f, &(struct zmeshd_config){.listen = "1.2.3.4:65536"}, err, sizeof(err)), -EINVAL);
    assert_int_equal(new_daemon(f, &(struct zmeshd_config){.listen = "::1:15012"}, err, sizeof(err)), -EINVAL);
    assert_int_equal(new_daemon(f, &(struct zmeshd_config){.trusted_node_accounts = "istio-system"}, err,
                                sizeof(err)),
                     -EINVAL);
    assert_non_null(strstr(err, "CA_TRUSTED_NODE_ACCOUNTS"));
    char missing[200];
    snprintf(missing, sizeof(missing), "%s/no-cacerts", f->root);
    assert_true(new_daemon(f, &(struct zmeshd_config){.plugin_ca = missing}, err, sizeof(err)) < 0);
    assert_non_null(strstr(err, missing));
    assert_int_equal(new_daemon(f, &(struct zmeshd_config){.cert_ttl_s = -5}, err, sizeof(err)), -EINVAL);
    assert_int_equal(new_daemon(f, &(struct zmeshd_config){.k8s.trust_domain = "a/b"}, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "trust domain \"a/b\""));
    assert_null(f->d);
    /* Accepted forms. */
    assert_int_equal(new_daemon(f, &(struct zmeshd_config){.listen = ":15012", .trusted_node_accounts = ""}, err,
                                sizeof(err)),
                     0);
    assert_string_equal(zmeshd_listen(f->d), ":15012");
    assert_int_equal(zmeshd_trusted(f->d)->n, 0);
    zmeshd_free(f->d);
    f->d = NULL;
    assert_int_equal(new_daemon(f, NULL, err, sizeof(err)), 0);
    assert_string_equal(zmeshd_listen(f->d), ZMESHD_DEFAULT_LISTEN);
    assert_int_equal(zmeshd_trusted(f->d)->n, 1); /* istio-system/ztunnel */
    assert_non_null(zmeshd_ca(f->d));
    assert_non_null(zmeshd_token_key(f->d));
    /* The state directory holds the CA and the token key, the key private to its owner. */
    char p[256];
    struct stat sb;
    snprintf(p, sizeof(p), "%s/" ZMESHD_TOKEN_KEY_FILE, f->state);
    assert_int_equal(stat(p, &sb), 0);
    assert_int_equal(sb.st_mode & 0777, 0600);
    snprintf(p, sizeof(p), "%s/" CA_ISSUER_KEY_FILE, f->state);
    assert_int_equal(stat(p, &sb), 0);
    /* Starting on a missing directory fails, naming it. */
    snprintf(p, sizeof(p), "rm -rf '%s'", f->dir);
    assert_int_equal(system(p), 0);
    assert_true(zmeshd_start(f->d, err, sizeof(err)) < 0);
    assert_non_null(strstr(err, f->dir));
}

static void test_load_and_reload(void **state)
{
    struct fx *f = *state;
    char err[512];
    put(f->dir, "a.yaml", NS_AMBIENT POD("p1", "10.0.0.1", "n1", "web") SVC("web", "80"));
    assert_int_equal(new_daemon(f, NULL, err, sizeof(err)), 0);
    assert_int_equal(zmeshd_subscribe(f->d, on_snapshot, f), 0);
    assert_null(zmeshd_snapshot(f->d));
    assert_int_equal(zmeshd_start(f->d, err, sizeof(err)), 0);
    assert_int_equal(f->calls, 1);
    assert_null(f->last_old);
    assert_ptr_equal(f->last_cur, zmeshd_snapshot(f->d));
    const struct zmeshd_load_info *li = zmeshd_last_load(f->d);
    assert_int_equal(li->version, 1);
    assert_int_equal(li->counts.workloads, 1);
    assert_int_equal(li->counts.services, 1);
    KIND_EQ(li->diff.workloads, 1, 0, 0);

    /* A new file through the watch: one more workload and a policy. */
    struct snapshot *v1 = zmeshd_snapshot(f->d);
    snapshot_ref(v1);
    put(f->dir, "b.yaml", POD("p2", "10.0.0.2", "n2", "web") AP("allow", "ALLOW"));
    assert_int_equal(run(f, 3000), 1);
    assert_ptr_equal(f->last_old, v1);
    assert_int_equal(snapshot_refcount(v1), 1); /* the daemon let go of it after the publish */
    snapshot_unref(v1);
    li = zmeshd_last_load(f->d);
    assert_int_equal(li->version, 2);
    assert_true(li->events >= 1);
    KIND_EQ(li->diff.workloads, 1, 0, 0);
    KIND_EQ(li->diff.policies, 1, 0, 0);

    /* A broken document: reported, left out, the rest stays; p2 is gone with it. */
    put(f->dir, "b.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: p2, namespace: demo}\nspec: {containers: 5}\n"
                          AP("allow", "ALLOW"));
    assert_int_equal(run(f, 3000), 1);
    li = zmeshd_last_load(f->d);
    assert_int_equal(li->version, 3);
    assert_int_equal(li->findings[MANIFEST_ERROR], 1);
    KIND_EQ(li->diff.workloads, 0, 0, 1);
    assert_int_equal(li->counts.workloads, 1);
    assert_int_equal(li->counts.policies, 1);

    /* Reloading the same manifests publishes nothing and keeps the version. */
    unsigned calls = f->calls;
    struct snapshot *cur = zmeshd_snapshot(f->d);
    assert_int_equal(zmeshd_reload(f->d, 1), 0);
    assert_int_equal(f->calls, calls);
    assert_ptr_equal(zmeshd_snapshot(f->d), cur);
    assert_int_equal(zmeshd_last_load(f->d)->version, 3);
    assert_true(zmeshd_diff_empty(&zmeshd_last_load(f->d)->diff));

    /* The directory gone: the reload fails and the snapshot stays. */
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "mv '%s' '%s/away'", f->dir, f->root);
    assert_int_equal(system(cmd), 0);
    assert_int_equal(zmeshd_reload(f->d, 1), -ENOENT);
    assert_ptr_equal(zmeshd_snapshot(f->d), cur);
    assert_int_equal(zmeshd_last_load(f->d)->version, 3);
    /* Back, with one file edited: seen through the parent's watch. */
    snprintf(cmd, sizeof(cmd), "%s/away", f->root);
    put(cmd, "a.yaml", NS_AMBIENT POD("p1", "10.0.0.7", "n1", "web") SVC("web", "80"));
    snprintf(cmd, sizeof(cmd), "mv '%s/away' '%s'", f->root, f->dir);
    assert_int_equal(system(cmd), 0);
    assert_true(run(f, 3000) >= 1);
    li = zmeshd_last_load(f->d);
    KIND_EQ(li->diff.workloads, 0, 1, 0);

    /* Unsubscribed: no more calls. */
    assert_int_equal(zmeshd_unsubscribe(f->d, on_snapshot, f), 0);
    assert_int_equal(zmeshd_unsubscribe(f->d, on_snapshot, f), -ENOENT);
    calls = f->calls;
    put(f->dir, "c.yaml", POD("p9", "10.0.0.9", "n1", "web"));
    f->stop_on_call = false;
    f->guard.cb = guard_cb;
    timer_start(f->l, &f->guard, 500);
    loop_run(f->l);
    assert_int_equal(f->calls, calls);
    assert_int_equal(zmeshd_last_load(f->d)->counts.workloads, 2);
}

static void test_pod_on_node(void **state)
{
    struct fx *f = *state;
    char err[512];
    put(f->dir, "a.yaml", NS_AMBIENT POD("p1", "10.0.0.1", "n1", "web")
                              "---\napiVersion: v1\nkind: Pod\nmetadata: {name: dead, namespace: demo}\n"
                              "spec: {nodeName: n2, serviceAccountName: db, containers: []}\nstatus: {phase: "
                              "Failed}\n");
    assert_int_equal(new_daemon(f, NULL, err, sizeof(err)), 0);
    assert_int_equal(zmeshd_pod_on_node(f->d, "demo", "web", "n1"), 0); /* nothing loaded yet */
    assert_int_equal(zmeshd_start(f->d, err, sizeof(err)), 0);
    assert_int_equal(zmeshd_pod_on_node(f->d, "demo", "web", "n1"), 1);
    assert_int_equal(zmeshd_pod_on_node(f->d, "demo", "web", "n2"), 0);
    assert_int_equal(zmeshd_pod_on_node(f->d, "other", "web", "n1"), 0);
    assert_int_equal(zmeshd_pod_on_node(f->d, "demo", "db", "n2"), 0); /* a Failed pod does not count */
    assert_int_equal(zmeshd_pod_on_node(f->d, "demo", "web", ""), 0);
}

/* ---- another manifest source (what a Kubernetes API watch will be) ---- */

struct fake_src {
    struct manifest_source base;
    const char *yaml;
    int load_rc;
    bool started;
};
static unsigned fake_frees;

static int fake_start(struct manifest_source *s, char *err, size_t n)
{
    ((struct fake_src *)s)->started = true;
    return 0;
}
static void fake_stop(struct manifest_source *s)
{
    ((struct fake_src *)s)->started = false;
}
static int fake_load(struct manifest_source *s, struct manifest_store *st, manifest_report_fn report, void *ud,
                     char *err, size_t n)
{
    struct fake_src *f = (struct fake_src *)s;
    if (f->load_rc) {
        snprintf(err, n, "api server unreachable");
        return f->load_rc;
    }
    return manifest_load_buf(st, "api", f->yaml, strlen(f->yaml), report, ud);
}
static void fake_free(struct manifest_source *s)
{
    fake_frees++;
    free(s);
}
static const struct manifest_source_ops fake_ops = {
    .kind = "fake", .start = fake_start, .stop = fake_stop, .load = fake_load, .free = fake_free};

static struct fake_src *fake_new(const char *yaml)
{
    struct fake_src *f = calloc(1, sizeof(*f));
    f->base = (struct manifest_source){.ops = &fake_ops, .where = "api"};
    f->yaml = yaml;
    return f;
}

static void test_other_source(void **state)
{
    struct fx *f = *state;
    char err[512];
    /* A failed zmeshd_new frees the source it was given. */
    fake_frees = 0;
    assert_int_equal(zmeshd_new(f->l, &(struct zmeshd_config){.source = &fake_new("")->base}, &f->d, err,
                                sizeof(err)),
                     -EINVAL);
    assert_int_equal(fake_frees, 1);
    struct fake_src *src = fake_new(NS_AMBIENT POD("p1", "10.0.0.1", "n1", "web"));
    assert_int_equal(zmeshd_new(f->l, &(struct zmeshd_config){.source = &src->base, .state_dir = f->state}, &f->d,
                                err, sizeof(err)),
                     0);
    assert_int_equal(zmeshd_subscribe(f->d, on_snapshot, f), 0);
    assert_int_equal(zmeshd_start(f->d, err, sizeof(err)), 0);
    assert_true(src->started);
    assert_int_equal(f->calls, 1);
    assert_int_equal(zmeshd_last_load(f->d)->counts.workloads, 1);
    /* The source says something changed: the daemon reloads from it at once. */
    src->yaml = NS_AMBIENT POD("p1", "10.0.0.1", "n1", "web") POD("p2", "10.0.0.2", "n1", "web");
    src->base.changed(&src->base, 5, src->base.ud);
    assert_int_equal(f->calls, 2);
    const struct zmeshd_load_info *li = zmeshd_last_load(f->d);
    assert_int_equal(li->events, 5);
    KIND_EQ(li->diff.workloads, 1, 0, 0);
    /* The source failing keeps the snapshot. */
    struct snapshot *cur = zmeshd_snapshot(f->d);
    src->load_rc = -EIO;
    assert_int_equal(zmeshd_reload(f->d, 1), -EIO);
    assert_ptr_equal(zmeshd_snapshot(f->d), cur);
    assert_int_equal(f->calls, 2);
    zmeshd_stop(f->d);
    assert_false(src->started);
    fake_frees = 0;
    zmeshd_free(f->d);
    f->d = NULL;
    assert_int_equal(fake_frees, 1);
}

/* ---- the commands ---- */

static int check(const char *dir, char **out)
{
    size_t len;
    char err[512];
    FILE *fp = open_memstream(out, &len);
    int rc = zmeshd_check(dir, &(struct k8s_options){0}, fp, err, sizeof(err));
    fclose(fp);
    if (rc == 2) {
        free(*out);
        *out = strdup(err);
    }
    return rc;
}

static void test_check(void **state)
{
    struct fx *f = *state;
    char *out = NULL;
    put(f->dir, "a.yaml", NS_AMBIENT POD("p1", "10.0.0.1", "n1", "web") SVC("web", "80"));
    assert_int_equal(check(f->dir, &out), 0);
    assert_string_equal(out, "1 workloads, 1 services, 0 policies; 0 errors, 0 warnings, 0 infos\n");
    free(out);
    put(f->dir, "b.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: p2, namespace: demo}\n"
                          "spec: {containers: 5}\n");
    assert_int_equal(check(f->dir, &out), 1);
    assert_non_null(strstr(out, "Error: b.yaml#1: spec.containers: "));
    assert_non_null(strstr(out, "1 workloads, 1 services, 0 policies; 1 errors, 0 warnings, 0 infos\n"));
    free(out);
    char missing[200];
    snprintf(missing, sizeof(missing), "%s/nope", f->root);
    assert_int_equal(check(missing, &out), 2);
    assert_non_null(strstr(out, missing));
    free(out);
}

static void test_token(void **state)
{
    struct fx *f = *state;
    char err[512];
    char *tok = NULL;
    struct token_subject s = {.ns = "istio-system", .sa = "ztunnel", .node = "n1"};
    /* The command creates the state directory and the key, and the daemon verifies with the same key. */
    assert_int_equal(zmeshd_token_mint(f->state, &s, 600, &tok, err, sizeof(err)), 0);
    assert_int_equal(new_daemon(f, NULL, err, sizeof(err)), 0);
    struct token_caller who;
    assert_int_equal(token_verify(zmeshd_token_key(f->d), NULL, NULL, tok, strlen(tok), time(NULL), &who, err,
                                  sizeof(err)),
                     0);
    assert_string_equal(who.ns, "istio-system");
    assert_string_equal(who.sa, "ztunnel");
    assert_string_equal(who.node, "n1");
    free(tok);
    assert_int_equal(zmeshd_token_mint(f->state, &s, 0, &tok, err, sizeof(err)), -EINVAL);
    assert_int_equal(zmeshd_token_mint("", &s, 60, &tok, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "--state-dir"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_diff),
        cmocka_unit_test(test_equal_fields),
        cmocka_unit_test_setup_teardown(test_config_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_load_and_reload, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pod_on_node, setup, teardown),
        cmocka_unit_test_setup_teardown(test_other_source, setup, teardown),
        cmocka_unit_test_setup_teardown(test_check, setup, teardown),
        cmocka_unit_test_setup_teardown(test_token, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
