/* Unit tests for the node agent (src/cni/agent.c) with real things: network namespaces made with `ip netns
 * add` (root needed; skipped without), the in-pod rules read back with rules_present and iptables-save, and
 * ztunnel's own ZDS client module (src/ztunnel/zds.c, included as test_zds.c does) as the ztunnel the agent
 * serves. Plugin messages go through agent_handle_message, the same path as the socket's. Covered: a CNI ADD of
 * an ambient pod answered only after ztunnel has it (rules installed, the netns inode ztunnel got is the pod's);
 * enrolment and un-enrolment by agent_set_enrolment; CNI DEL; uid choice; the state file and a restart that
 * replays enrolled pods and drops vanished ones; no ztunnel; a rules failure answered with its reason;
 * malformed messages and enrolment files refused with the field named. */
#include <errno.h>
#include <fcntl.h>
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
#include <poll.h>

#include "../../src/ztunnel/zds.c"
#include "cni/agent.h"
#include "cni/rules.h"

#include "loop_pump.h"

/* ---- ztunnel ---- */

#define ZT_LOG 32
static struct zt {
    struct zds_client *c;
    char log[ZT_LOG][200];
    int n;
    uint64_t inos[ZT_LOG];
} Z;

static void zt_add(void *ud, uint64_t ticket, const struct zds_add *a)
{
    assert_true(Z.n < ZT_LOG);
    Z.inos[Z.n] = a->netns_ino;
    snprintf(Z.log[Z.n++], sizeof Z.log[0], "add %s %s/%s/%s", a->uid, a->namespace_, a->name,
             a->service_account);
    zds_reply(Z.c, ticket, NULL);
}
static void zt_del(void *ud, uint64_t ticket, const char *uid)
{
    assert_true(Z.n < ZT_LOG);
    snprintf(Z.log[Z.n++], sizeof Z.log[0], "del %s", uid);
    zds_reply(Z.c, ticket, NULL);
}
static void zt_snap(void *ud, uint64_t ticket, const char *const *stale, size_t n)
{
    assert_true(Z.n < ZT_LOG);
    snprintf(Z.log[Z.n++], sizeof Z.log[0], "snapshot");
    zds_reply(Z.c, ticket, NULL);
}
static const struct zds_ops ZT_OPS = {.add = zt_add, .del = zt_del, .snapshot_sent = zt_snap};

static char DIR_[64], ZDS_PATH[100], PLUGIN_PATH[100], STATE_DIR[100];

static bool zt_has(void *arg)
{
    return Z.n >= *(int *)arg;
}
static void zt_wait(int n)
{
    if (!pump_until(zt_has, &n, 5000)) fail_msg("ztunnel saw %d callbacks, wanted %d", Z.n, n);
}
static void zt_start(void)
{
    memset(&Z, 0, sizeof Z);
    struct zds_config cfg = {.path = ZDS_PATH, .backoff_max_ms = 20};
    assert_int_equal(zds_client_new(L, &cfg, &ZT_OPS, NULL, &Z.c), 0);
}
static void zt_stop(void)
{
    zds_client_free(Z.c);
    Z.c = NULL;
}

/* ---- namespaces ---- */

#define NNS 3
static char NSNAME[NNS][64];
static int NSFD[NNS];
static uint64_t NSINO[NNS];

static void sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void sh(const char *fmt, ...)
{
    char cmd[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int r = system(cmd);
    if (r != 0) fail_msg("%s: status %d", cmd, r);
}

static void settle(void);
/* Whether the rules are in namespace i, once the agent's rule changes under way have ended. */
static bool rules_in(int i)
{
    settle();
    bool p = false;
    char err[RULES_ERR_MAX];
    assert_int_equal(rules_present(RULES_IPTABLES, NSFD[i], &p, err, sizeof err), 0);
    return p;
}

/* ---- the agent ---- */

static struct agent *A;

static bool no_jobs(void *arg)
{
    if (!A) return true; /* stopped: agent_free waited for its jobs */
    struct agent_stats st;
    agent_stats(A, &st);
    return st.jobs == 0;
}
/* Runs the loop until no rule change is under way. */
static void settle(void)
{
    if (!pump_until(no_jobs, NULL, 10000)) fail_msg("rule jobs still running");
}

static bool WAIT_UNLISTED; /* the next agent_start's wait_for_unlisted (zmeshd's behaviour) */

static void agent_start(void)
{
    struct agent_config cfg = {.plugin_socket = PLUGIN_PATH,
                               .zds_socket = ZDS_PATH,
                               .state_dir = STATE_DIR,
                               .backend = RULES_IPTABLES,
                               .wait_for_unlisted = WAIT_UNLISTED};
    char err[512];
    if (agent_new(L, &cfg, &A, err, sizeof err) < 0) fail_msg("agent_new: %s", err);
}

static void agent_stop(void)
{
    agent_free(A);
    A = NULL;
    loop_run_tasks(L);
}

struct answer {
    bool got;
    char text[600];
};
static void on_reply(void *ud, const char *s)
{
    struct answer *an = ud;
    an->got = true;
    snprintf(an->text, sizeof an->text, "%s", s);
}
static bool answered(void *arg)
{
    return ((struct answer *)arg)->got;
}

/* Sends a plugin message and waits for its answer. */
static void send_msg(const char *msg, struct answer *an)
{
    memset(an, 0, sizeof *an);
    agent_handle_message(A, msg, strlen(msg), on_reply, an);
    if (!pump_until(answered, an, 8000)) fail_msg("no answer to %s", msg);
}

static void cni(const char *event, const char *cid, int ns, const char *name, const char *uid, struct answer *an)
{
    char msg[1024];
    snprintf(msg, sizeof msg,
             "{\"version\": 1, \"event\": \"%s\", \"container_id\": \"%s\", \"netns\": \"/var/run/netns/%s\", "
             "\"ifname\": \"eth0\", \"pod\": {\"name\": \"%s\", \"namespace\": \"shop\", \"uid\": \"%s\"}, "
             "\"infra_container_id\": \"%s\", \"ips\": [\"10.9.0.%d/24\"]}",
             event, cid, NSNAME[ns], name, uid, cid, ns + 2);
    send_msg(msg, an);
}

static void enrol(const char *name, const char *sa, bool ambient)
{
    struct agent_enrolment e = {.name = name, .namespace_ = "shop", .service_account = sa, .ambient = ambient};
    assert_int_equal(agent_set_enrolment(A, &e, 1), 0);
}

static char *state_text(void)
{
    char p[256];
    snprintf(p, sizeof p, "%s/%s", STATE_DIR, AGENT_STATE_FILE);
    FILE *f = fopen(p, "r");
    assert_non_null(f);
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

static int setup(void **state)
{
    if (geteuid() != 0) {
        print_message("test_agent: not root, skipped\n");
        skip();
    }
    snprintf(DIR_, sizeof DIR_, "/tmp/zmesh-agent-XXXXXX");
    assert_non_null(mkdtemp(DIR_));
    snprintf(ZDS_PATH, sizeof ZDS_PATH, "%s/zt/ztunnel.sock", DIR_);
    snprintf(PLUGIN_PATH, sizeof PLUGIN_PATH, "%s/cni/pluginevent.sock", DIR_);
    snprintf(STATE_DIR, sizeof STATE_DIR, "%s/state", DIR_);
    for (int i = 0; i < NNS; i++) {
        snprintf(NSNAME[i], sizeof NSNAME[i], "zmagent-%d-%d", (int)getpid(), i);
        sh("ip netns add %s && ip netns exec %s ip link set lo up", NSNAME[i], NSNAME[i]);
        char p[128];
        snprintf(p, sizeof p, "/var/run/netns/%s", NSNAME[i]);
        NSFD[i] = open(p, O_RDONLY | O_CLOEXEC);
        assert_true(NSFD[i] >= 0);
        struct stat sb;
        assert_int_equal(fstat(NSFD[i], &sb), 0);
        NSINO[i] = sb.st_ino;
    }
    L = loop_new();
    agent_start();
    return 0;
}

static int teardown(void **state)
{
    if (Z.c) zt_stop();
    if (A) agent_stop();
    if (L) loop_free(L);
    L = NULL;
    for (int i = 0; i < NNS; i++) {
        if (NSFD[i] >= 0) close(NSFD[i]);
        NSFD[i] = -1;
        char cmd[256];
        snprintf(cmd, sizeof cmd, "ip netns del %s 2>/dev/null", NSNAME[i]);
        if (system(cmd) != 0) {
            /* deleted by the test */
        }
    }
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf %s", DIR_);
    if (system(cmd) != 0) fail_msg("cannot remove %s", DIR_);
    return 0;
}

/* ---- tests ---- */

/* The pod is ambient before its sandbox exists: the ADD is answered once ztunnel has acked the Add, and the
 * rules are in place by then (Istio answers the plugin after AddPodToMesh). */
static void test_add_of_ambient_pod(void **state)
{
    zt_start();
    zt_wait(1);
    assert_string_equal(Z.log[0], "snapshot");
    enrol("web-0", "web", true);
    struct answer an;
    cni("add", "c1", 0, "web-0", "uid-web", &an);
    assert_string_equal(an.text, "{\"ok\":true}");
    assert_int_equal(Z.n, 2); /* acked before the answer */
    assert_string_equal(Z.log[1], "add uid-web shop/web-0/web");
    assert_int_equal(Z.inos[1], NSINO[0]);
    assert_true(rules_in(0));
    bool enrolled = false;
    assert_true(agent_has_pod(A, "shop", "web-0", &enrolled));
    assert_true(enrolled);
    const char *st = state_text();
    assert_non_null(strstr(st, "\"container_id\": \"c1\""));
    assert_non_null(strstr(st, "\"state\": \"enrolled\""));
    assert_non_null(strstr(st, "\"zds_uid\": \"uid-web\""));
    assert_non_null(strstr(st, "\"10.9.0.2/24\""));
}

/* A pod created into an enrolled namespace reaches the agent (its CNI ADD) before the source names it: the ADD
 * waits for the source, so the pod's rules and ztunnel's Add come before its containers start. One the source
 * never names is answered after AGENT_UNKNOWN_POD_WAIT_MS, outside the mesh, and enrolled when it appears. */
static void test_add_waits_for_enrolment(void **state)
{
    agent_stop();
    WAIT_UNLISTED = true;
    agent_start();
    WAIT_UNLISTED = false;
    zt_start();
    zt_wait(1);
    enrol("other", "sa", true); /* synced, without the new pod */
    struct answer an = {0};
    char msg[1024];
    snprintf(msg, sizeof msg,
             "{\"version\": 1, \"event\": \"add\", \"container_id\": \"c9\", \"netns\": \"/var/run/netns/%s\", "
             "\"ifname\": \"eth0\", \"pod\": {\"name\": \"new-0\", \"namespace\": \"shop\", \"uid\": \"uid-new\"}, "
             "\"infra_container_id\": \"c9\", \"ips\": [\"10.9.0.2/24\"]}",
             NSNAME[0]);
    agent_handle_message(A, msg, strlen(msg), on_reply, &an);
    assert_false(pump_until(answered, &an, 300)); /* held: the source has not named it */
    assert_false(rules_in(0));
    struct agent_enrolment both[2] = {
        {.name = "other", .namespace_ = "shop", .service_account = "sa", .ambient = true},
        {.name = "new-0", .namespace_ = "shop", .service_account = "new", .ambient = true}};
    assert_int_equal(agent_set_enrolment(A, both, 2), 0);
    assert_true(pump_until(answered, &an, 8000));
    assert_string_equal(an.text, "{\"ok\":true}");
    assert_true(rules_in(0)); /* before the answer: the pod's first packet is captured */
    assert_string_equal(Z.log[1], "add uid-new shop/new-0/new");
    /* Never named: answered outside the mesh after the wait. */
    struct answer an2 = {0};
    snprintf(msg, sizeof msg,
             "{\"version\": 1, \"event\": \"add\", \"container_id\": \"c10\", \"netns\": \"/var/run/netns/%s\", "
             "\"ifname\": \"eth0\", \"pod\": {\"name\": \"late-0\", \"namespace\": \"shop\", \"uid\": \"\"}, "
             "\"infra_container_id\": \"c10\", \"ips\": [\"10.9.0.3/24\"]}",
             NSNAME[1]);
    agent_handle_message(A, msg, strlen(msg), on_reply, &an2);
    assert_false(pump_until(answered, &an2, AGENT_UNKNOWN_POD_WAIT_MS / 2));
    assert_true(pump_until(answered, &an2, AGENT_UNKNOWN_POD_WAIT_MS * 2));
    assert_string_equal(an2.text, "{\"ok\":true}");
    assert_false(rules_in(1));
}

/* A static source (the enrolment file) is complete: an unlisted pod is not enrolled, and its ADD is answered
 * at once. */
static void test_static_source_answers_unlisted_at_once(void **state)
{
    zt_start();
    zt_wait(1);
    enrol("other", "sa", true);
    struct answer an = {0};
    char msg[1024];
    snprintf(msg, sizeof msg,
             "{\"version\": 1, \"event\": \"add\", \"container_id\": \"c11\", \"netns\": \"/var/run/netns/%s\", "
             "\"ifname\": \"eth0\", \"pod\": {\"name\": \"unlisted-0\", \"namespace\": \"shop\", \"uid\": \"\"}, "
             "\"infra_container_id\": \"c11\", \"ips\": [\"10.9.0.2/24\"]}",
             NSNAME[0]);
    agent_handle_message(A, msg, strlen(msg), on_reply, &an);
    assert_true(an.got); /* answered inside the call: nothing to wait for */
    assert_string_equal(an.text, "{\"ok\":true}");
    assert_false(rules_in(0));
}

/* A pod added outside the mesh is enrolled when the source says so, and un-enrolled when it stops. */
static void test_enrol_and_unenrol(void **state)
{
    zt_start();
    zt_wait(1);
    struct answer an;
    cni("add", "c2", 1, "db-0", "", &an);
    assert_string_equal(an.text, "{\"ok\":true}");
    assert_false(rules_in(1));
    assert_int_equal(Z.n, 1);
    /* No uid from CNI_ARGS nor from the source: the container id stands in. */
    enrol("db-0", "db", true);
    zt_wait(2);
    assert_string_equal(Z.log[1], "add c2 shop/db-0/db");
    assert_int_equal(Z.inos[1], NSINO[1]);
    assert_true(rules_in(1));
    /* The same set again changes nothing. */
    enrol("db-0", "db", true);
    assert_false(pump_until(zt_has, &(int){3}, 100));
    /* Not ambient any more: Del, rules out. */
    enrol("db-0", "db", false);
    zt_wait(3);
    assert_string_equal(Z.log[2], "del c2");
    assert_false(rules_in(1));
    bool enrolled = true;
    assert_true(agent_has_pod(A, "shop", "db-0", &enrolled));
    assert_false(enrolled);
    assert_non_null(strstr(state_text(), "\"state\": \"pending\""));
    /* Ambient again with a service account change of mind is a plain Add; the source's uid is used. */
    struct agent_enrolment e = {
        .uid = "src-uid", .name = "db-0", .namespace_ = "shop", .service_account = "db2", .ambient = true};
    assert_int_equal(agent_set_enrolment(A, &e, 1), 0);
    zt_wait(4);
    assert_string_equal(Z.log[3], "add src-uid shop/db-0/db2");
    /* A new service account re-adds the pod: Del of the old identity, Add of the new. */
    e.service_account = "db3";
    assert_int_equal(agent_set_enrolment(A, &e, 1), 0);
    zt_wait(6);
    assert_string_equal(Z.log[4], "del src-uid");
    assert_string_equal(Z.log[5], "add src-uid shop/db-0/db3");
    assert_true(rules_in(1));
    /* Leaving the set entirely un-enrols too. */
    assert_int_equal(agent_set_enrolment(A, NULL, 0), 0);
    zt_wait(7);
    assert_string_equal(Z.log[6], "del src-uid");
    assert_false(rules_in(1));
}

/* CNI DEL: Del to ztunnel, rules removed, the sandbox forgotten (also in the state file); a second DEL is fine. */
static void test_cni_del_forgets(void **state)
{
    zt_start();
    zt_wait(1);
    enrol("web-0", "web", true);
    struct answer an;
    cni("add", "c3", 0, "web-0", "uid-3", &an);
    assert_string_equal(an.text, "{\"ok\":true}");
    assert_true(rules_in(0));
    cni("del", "c3", 0, "web-0", "uid-3", &an);
    assert_string_equal(an.text, "{\"ok\":true}");
    zt_wait(3);
    assert_string_equal(Z.log[2], "del uid-3");
    assert_false(rules_in(0));
    assert_false(agent_has_pod(A, "shop", "web-0", NULL));
    assert_null(strstr(state_text(), "c3"));
    cni("del", "c3", 0, "web-0", "uid-3", &an);
    assert_string_equal(an.text, "{\"ok\":true}");
    struct agent_stats st;
    agent_stats(A, &st);
    assert_int_equal(st.sandboxes, 0);
    assert_int_equal(st.dels, 2);
}

/* A restart re-serves the enrolled pods from the state file, without the enrolment source having spoken yet;
 * a sandbox whose namespace is gone is dropped. Rules stay across the stop. */
static void test_restart_replays_state(void **state)
{
    enrol("web-0", "web", true);
    struct answer an;
    cni("add", "c4", 0, "web-0", "uid-4", &an);
    /* No ztunnel yet: Istio's answer, with the rules in place for when ztunnel comes. */
    assert_non_null(strstr(an.text, "\"ok\":false"));
    assert_non_null(strstr(an.text, "no ztunnel connection"));
    assert_true(rules_in(0));
    struct agent_enrolment es[2] = {
        {.name = "web-0", .namespace_ = "shop", .service_account = "web", .ambient = true},
        {.name = "gone-0", .namespace_ = "shop", .service_account = "gone", .ambient = true},
    };
    assert_int_equal(agent_set_enrolment(A, es, 2), 0);
    cni("add", "c5", 2, "gone-0", "uid-5", &an);
    assert_true(rules_in(2));
    agent_stop();
    assert_true(rules_in(0)); /* the agent leaves them on shutdown */
    close(NSFD[2]);
    NSFD[2] = -1;
    sh("ip netns del %s", NSNAME[2]);
    agent_start();
    /* A ztunnel connecting at once gets the replayed pod in its snapshot, while the rules are reinstalled. */
    zt_start();
    zt_wait(2);
    settle(); /* the replay's install */
    struct agent_stats st;
    agent_stats(A, &st);
    assert_int_equal(st.sandboxes, 1);
    assert_int_equal(st.enrolled, 1);
    assert_false(agent_has_pod(A, "shop", "gone-0", NULL));
    assert_null(strstr(state_text(), "gone-0"));
    assert_string_equal(Z.log[0], "add uid-4 shop/web-0/web");
    assert_int_equal(Z.inos[0], NSINO[0]);
    assert_string_equal(Z.log[1], "snapshot");
    /* The runtime retrying the failed ADD now gets {"ok":true}: ztunnel was asked again and acked. */
    cni("add", "c4", 0, "web-0", "uid-4", &an);
    assert_string_equal(an.text, "{\"ok\":true}");
    /* Same netns: ztunnel's module acks it as idempotent without asking its owner again. */
    struct zds_stats zs;
    zds_client_stats(Z.c, &zs);
    assert_int_equal(zs.requests, 3);
    assert_int_equal(Z.n, 2);
    /* The source's first sync decides from then on: not in the set, out of the mesh. */
    assert_int_equal(agent_set_enrolment(A, NULL, 0), 0);
    zt_wait(3);
    assert_string_equal(Z.log[2], "del uid-4");
    assert_false(rules_in(0));
}

/* A rules failure is the ADD's answer (the plugin's fail_open decides), and the pod stays out of the mesh. */
static void test_rules_failure_answered(void **state)
{
    char v6[8] = "";
    FILE *f = popen("ip netns exec $(ls /var/run/netns | head -1) cat /proc/sys/net/ipv6/conf/all/disable_ipv6", "r");
    if (f) {
        if (!fgets(v6, sizeof v6, f)) v6[0] = '\0';
        pclose(f);
    }
    if (v6[0] != '0') {
        print_message("test_agent: IPv6 off in namespaces; rules-failure test skipped\n");
        skip();
    }
    /* IPv6 on with lo down: `ip -6 route add local ::/0 dev lo` fails. */
    sh("ip netns exec %s ip link set lo down", NSNAME[0]);
    zt_start();
    zt_wait(1);
    enrol("web-0", "web", true);
    struct answer an;
    cni("add", "c6", 0, "web-0", "uid-6", &an);
    assert_non_null(strstr(an.text, "\"ok\":false"));
    assert_non_null(strstr(an.text, "in-pod rules for shop/web-0: cannot install iptables rules: ip exited with"));
    assert_false(rules_in(0));
    bool enrolled = true;
    assert_true(agent_has_pod(A, "shop", "web-0", &enrolled));
    assert_false(enrolled);
    assert_int_equal(Z.n, 1);
    /* Once the rules can go in, the retry timer enrols the pod. */
    sh("ip netns exec %s ip link set lo up", NSNAME[0]);
    if (!pump_until(zt_has, &(int){2}, AGENT_RETRY_MS + 3000)) fail_msg("the failed enrolment was not retried");
    assert_string_equal(Z.log[1], "add uid-6 shop/web-0/web");
    assert_true(rules_in(0));
    assert_true(agent_has_pod(A, "shop", "web-0", &enrolled));
    assert_true(enrolled);
}

static void expect_bad(const char *msg, const char *want)
{
    struct answer an;
    send_msg(msg, &an);
    char full[600];
    snprintf(full, sizeof full, "{\"ok\":false,\"error\":\"%s\"}", want);
    assert_string_equal(an.text, full);
}

static void test_bad_messages(void **state)
{
    expect_bad("not json", "the message is not JSON: '[' or '{' expected near 'not'");
    expect_bad("[]", "the message is not a JSON object");
    expect_bad("{\"version\": 2}", "field \\\"version\\\": must be 1");
    const char *base = "\"container_id\": \"c\", \"netns\": \"/var/run/netns/x\", \"ifname\": \"eth0\", "
                       "\"infra_container_id\": \"c\", \"ips\": []";
    char m[1024];
    snprintf(m, sizeof m, "{\"version\": 1, \"event\": \"up\", %s, \"pod\": {\"name\": \"a\", \"namespace\": \"b\", \"uid\": \"\"}}", base);
    expect_bad(m, "field \\\"event\\\": \\\"up\\\" is neither \\\"add\\\" nor \\\"del\\\"");
    snprintf(m, sizeof m, "{\"version\": 1, \"event\": \"add\", %s, \"pod\": {\"name\": 5, \"namespace\": \"b\", \"uid\": \"\"}}", base);
    expect_bad(m, "field \\\"pod.name\\\": must be a string");
    snprintf(m, sizeof m, "{\"version\": 1, \"event\": \"add\", %s, \"pod\": {\"name\": \"\", \"namespace\": \"b\", \"uid\": \"\"}}", base);
    expect_bad(m, "field \\\"pod.name\\\": must be 1 to 253 printable characters without blanks");
    snprintf(m, sizeof m, "{\"version\": 1, \"event\": \"add\", %s, \"pod\": {\"name\": \"a\", \"namespace\": \"b\", \"uid\": \"\", \"x\": 1}}", base);
    expect_bad(m, "field \\\"pod.x\\\": unknown");
    snprintf(m, sizeof m, "{\"version\": 1, \"event\": \"add\", %s, \"pod\": {\"name\": \"a\", \"namespace\": \"b\", \"uid\": \"\"}, \"extra\": 1}", base);
    expect_bad(m, "field \\\"extra\\\": unknown");
    expect_bad("{\"version\": 1, \"event\": \"add\", \"container_id\": \"c\", \"netns\": \"rel\", \"ifname\": \"eth0\", "
               "\"infra_container_id\": \"c\", \"ips\": [], \"pod\": {\"name\": \"a\", \"namespace\": \"b\", \"uid\": \"\"}}",
               "field \\\"netns\\\": \\\"rel\\\" is not an absolute path");
    expect_bad("{\"version\": 1, \"event\": \"add\", \"container_id\": \"c\", \"netns\": \"/x\", \"ifname\": \"eth0\", "
               "\"infra_container_id\": \"c\", \"ips\": [1], \"pod\": {\"name\": \"a\", \"namespace\": \"b\", \"uid\": \"\"}}",
               "field \\\"ips[0]\\\": must be a string");
    /* A netns that does not exist. */
    expect_bad("{\"version\": 1, \"event\": \"add\", \"container_id\": \"c\", \"netns\": \"/nonexistent/ns\", \"ifname\": \"eth0\", "
               "\"infra_container_id\": \"c\", \"ips\": [], \"pod\": {\"name\": \"a\", \"namespace\": \"b\", \"uid\": \"\"}}",
               "cannot open netns /nonexistent/ns: No such file or directory");
    struct agent_stats st;
    agent_stats(A, &st);
    assert_int_equal(st.bad_messages, 10);
    assert_int_equal(st.sandboxes, 0);
}

static void expect_file_err(const char *text, const char *want)
{
    struct agent_enrolment *p = NULL;
    size_t n = 0;
    char err[512] = "";
    assert_int_equal(agent_enrolment_parse("pods.json", text, strlen(text), &p, &n, err, sizeof err), -1);
    assert_string_equal(err, want);
}

static void test_enrolment_file(void **state)
{
    const char *good = "[{\"name\": \"a\", \"namespace\": \"n\", \"service_account\": \"s\", \"ambient\": true},"
                       " {\"name\": \"b\", \"namespace\": \"n\", \"service_account\": \"s\", \"ambient\": false,"
                       " \"uid\": \"u-b\", \"node\": \"node-1\"}]";
    struct agent_enrolment *p = NULL;
    size_t n = 0;
    char err[512] = "";
    assert_int_equal(agent_enrolment_parse("pods.json", good, strlen(good), &p, &n, err, sizeof err), 0);
    assert_int_equal(n, 2);
    assert_string_equal(p[0].name, "a");
    assert_true(p[0].ambient);
    assert_null(p[0].uid);
    assert_string_equal(p[1].uid, "u-b");
    assert_string_equal(p[1].node, "node-1");
    assert_false(p[1].ambient);
    agent_enrolment_free(p, n);
    expect_file_err("{}", "pods.json: must be a JSON array of {name, namespace, service_account, ambient}");
    expect_file_err("[1]", "pods.json: entry 0: must be an object");
    expect_file_err("[{\"name\": \"a\", \"namespace\": \"n\", \"service_account\": \"s\"}]",
                    "pods.json: entry 0: field \"ambient\": missing");
    expect_file_err("[{\"name\": \"a\", \"namespace\": \"n\", \"service_account\": \"s\", \"ambient\": \"yes\"}]",
                    "pods.json: entry 0: field \"ambient\": must be true or false");
    expect_file_err("[{\"name\": \"a\", \"service_account\": \"s\", \"ambient\": true}]",
                    "pods.json: entry 0: field \"namespace\": missing");
    expect_file_err("[{\"name\": \"a b\", \"namespace\": \"n\", \"service_account\": \"s\", \"ambient\": true}]",
                    "pods.json: entry 0: field \"name\": must be a string of 1 to 253 printable characters without blanks");
    expect_file_err("[{\"name\": \"a\", \"namespace\": \"n\", \"service_account\": \"s\", \"ambient\": true, \"labels\": {}}]",
                    "pods.json: entry 0: field \"labels\": unknown");
    expect_file_err("[{\"name\": \"a\", \"namespace\": \"n\", \"service_account\": \"s\", \"ambient\": true},"
                    " {\"name\": \"a\", \"namespace\": \"n\", \"service_account\": \"t\", \"ambient\": false}]",
                    "pods.json: entry 1: pod n/a is also entry 0");
    expect_file_err("[", "pods.json: line 1: ']' expected near end of file");
    /* agent_set_enrolment refuses a pair given twice, and keeps what it had. */
    struct agent_enrolment twice[2] = {{.name = "a", .namespace_ = "n", .ambient = true},
                                       {.name = "a", .namespace_ = "n", .ambient = false}};
    assert_int_equal(agent_set_enrolment(A, twice, 2), -EINVAL);
}

/* Entries of another node are not this agent's. */
static void test_node_filter(void **state)
{
    agent_stop();
    struct agent_config cfg = {.plugin_socket = PLUGIN_PATH,
                               .zds_socket = ZDS_PATH,
                               .state_dir = STATE_DIR,
                               .backend = RULES_IPTABLES,
                               .node_name = "node-1"};
    char err[512];
    assert_int_equal(agent_new(L, &cfg, &A, err, sizeof err), 0);
    struct answer an;
    cni("add", "c7", 1, "db-0", "uid-7", &an);
    struct agent_enrolment e = {
        .name = "db-0", .namespace_ = "shop", .service_account = "db", .node = "node-2", .ambient = true};
    assert_int_equal(agent_set_enrolment(A, &e, 1), 0);
    assert_false(rules_in(1));
    e.node = "node-1";
    assert_int_equal(agent_set_enrolment(A, &e, 1), 0);
    assert_true(rules_in(1));
}

/* Rule changes run in children while the loop goes on: a CNI DEL during an ambient pod's install is answered at
 * once, the waiting ADD is told the sandbox went away, and the install is taken back when it ends. */
static void test_del_during_install(void **state)
{
    zt_start();
    zt_wait(1);
    enrol("web-0", "web", true);
    struct answer add, del;
    char msg[1024];
    snprintf(msg, sizeof msg,
             "{\"version\": 1, \"event\": \"add\", \"container_id\": \"c8\", \"netns\": \"/var/run/netns/%s\", "
             "\"ifname\": \"eth0\", \"pod\": {\"name\": \"web-0\", \"namespace\": \"shop\", \"uid\": \"uid-8\"}, "
             "\"infra_container_id\": \"c8\", \"ips\": []}",
             NSNAME[0]);
    memset(&add, 0, sizeof add);
    agent_handle_message(A, msg, strlen(msg), on_reply, &add);
    assert_false(add.got); /* the install is under way */
    struct agent_stats st;
    agent_stats(A, &st);
    assert_int_equal(st.jobs, 1);
    cni("del", "c8", 0, "web-0", "uid-8", &del);
    assert_string_equal(del.text, "{\"ok\":true}");
    assert_true(add.got);
    assert_string_equal(add.text, "{\"ok\":false,\"error\":\"the sandbox was deleted\"}");
    assert_false(agent_has_pod(A, "shop", "web-0", NULL));
    assert_false(rules_in(0)); /* installed, then removed again */
    assert_int_equal(Z.n, 1);  /* ztunnel never heard of it */
}

/* The enrolment flips while the install runs: the end state is the last word (out, rules removed). */
static void test_enrolment_flip_during_install(void **state)
{
    zt_start();
    zt_wait(1);
    struct answer an;
    cni("add", "c9", 1, "db-0", "uid-9", &an);
    enrol("db-0", "db", true);
    struct agent_stats st;
    agent_stats(A, &st);
    assert_int_equal(st.jobs, 1);
    enrol("db-0", "db", false);
    assert_false(rules_in(1));
    bool enrolled = true;
    assert_true(agent_has_pod(A, "shop", "db-0", &enrolled));
    assert_false(enrolled);
    /* ztunnel saw it come and go (the install finished before the change was applied). */
    zt_wait(3);
    assert_string_equal(Z.log[1], "add uid-9 shop/db-0/db");
    assert_string_equal(Z.log[2], "del uid-9");
}

/* Over the real plugin socket: the answer comes on the connection; a plugin that hangs up while its ADD waits
 * for the install leaves the agent unharmed, and the pod is enrolled all the same. */
static void test_plugin_socket_and_hang_up(void **state)
{
    zt_start();
    zt_wait(1);
    enrol("web-0", "web", true);
    char msg[1024];
    snprintf(msg, sizeof msg,
             "{\"version\": 1, \"event\": \"add\", \"container_id\": \"c10\", \"netns\": \"/var/run/netns/%s\", "
             "\"ifname\": \"eth0\", \"pod\": {\"name\": \"web-0\", \"namespace\": \"shop\", \"uid\": \"uid-10\"}, "
             "\"infra_container_id\": \"c10\", \"ips\": []}",
             NSNAME[0]);
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    snprintf(sun.sun_path, sizeof sun.sun_path, "%s", PLUGIN_PATH);
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    assert_int_equal(connect(fd, (struct sockaddr *)&sun, sizeof sun), 0);
    assert_int_equal(send(fd, msg, strlen(msg), 0), (ssize_t)strlen(msg));
    /* Run until the agent has read the message and started the install, then hang up. */
    struct agent_stats st;
    for (int i = 0; i < 2000; i++) {
        pump_until(NULL, NULL, 1);
        agent_stats(A, &st);
        if (st.jobs) break;
    }
    assert_int_equal(st.jobs, 1);
    close(fd);
    zt_wait(2);
    assert_string_equal(Z.log[1], "add uid-10 shop/web-0/web");
    assert_true(rules_in(0));
    /* A DEL over the socket gets its answer there. */
    snprintf(msg, sizeof msg,
             "{\"version\": 1, \"event\": \"del\", \"container_id\": \"c10\", \"netns\": \"\", \"ifname\": \"eth0\", "
             "\"pod\": {\"name\": \"web-0\", \"namespace\": \"shop\", \"uid\": \"uid-10\"}, \"infra_container_id\": \"\", "
             "\"ips\": []}");
    fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    assert_int_equal(connect(fd, (struct sockaddr *)&sun, sizeof sun), 0);
    assert_int_equal(send(fd, msg, strlen(msg), 0), (ssize_t)strlen(msg));
    struct pollfd pf = {.fd = fd, .events = POLLIN};
    for (int i = 0; i < 5000 && poll(&pf, 1, 0) == 0; i++)
        pump_until(NULL, NULL, 1);
    char ans[256];
    ssize_t n = recv(fd, ans, sizeof ans - 1, MSG_DONTWAIT);
    assert_true(n > 0);
    ans[n] = '\0';
    assert_string_equal(ans, "{\"ok\":true}");
    close(fd);
    zt_wait(3);
    assert_string_equal(Z.log[2], "del uid-10");
    assert_false(rules_in(0));
}

int main(void)
{
    log_init("off", false);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_add_of_ambient_pod, setup, teardown),
        cmocka_unit_test_setup_teardown(test_add_waits_for_enrolment, setup, teardown),
        cmocka_unit_test_setup_teardown(test_static_source_answers_unlisted_at_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_enrol_and_unenrol, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cni_del_forgets, setup, teardown),
        cmocka_unit_test_setup_teardown(test_restart_replays_state, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rules_failure_answered, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_messages, setup, teardown),
        cmocka_unit_test_setup_teardown(test_enrolment_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_node_filter, setup, teardown),
        cmocka_unit_test_setup_teardown(test_del_during_install, setup, teardown),
        cmocka_unit_test_setup_teardown(test_enrolment_flip_during_install, setup, teardown),
        cmocka_unit_test_setup_teardown(test_plugin_socket_and_hang_up, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
