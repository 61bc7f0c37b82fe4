/* Unit tests for the in-pod rules (src/cni/rules.c) in real network namespaces (`ip netns add`, so root is
 * needed; without it every test is skipped and says so). Each backend: install, then what the kernel holds
 * read back with the system's own tools (`iptables-save`, `ip6tables-save`, `nft list ruleset`, `ip rule`,
 * `ip route show table 100`) in the namespace; a second install leaves one copy; remove leaves nothing; remove
 * again is fine. Errors: an fd that is not a network namespace, and a real tool failure (IPv6 on with lo down
 * makes `ip -6 route add local ::/0 dev lo` fail) naming the tool with its stderr, with the partial install
 * taken back. */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "cni/rules.h"
#include "core/log.h"
#include "core/loop.h"

static char NS[64];
static int NSFD = -1;

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

/* The output of cmd run in the test namespace (malloc'd). */
static char *in_ns(const char *cmd)
{
    char full[512];
    snprintf(full, sizeof full, "ip netns exec %s %s 2>&1", NS, cmd);
    FILE *f = popen(full, "r");
    assert_non_null(f);
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    size_t n;
    while ((n = fread(buf + len, 1, cap - 1 - len, f)) > 0)
        len += n;
    buf[len] = '\0';
    pclose(f);
    return buf;
}

static int count(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle))
        n++;
    return n;
}

static int setup(void **state)
{
    if (geteuid() != 0) {
        print_message("test_rules: not root, skipped\n");
        skip();
    }
    snprintf(NS, sizeof NS, "zmrules-%d", (int)getpid());
    sh("ip netns add %s", NS);
    /* A pod's loopback is up (the runtime brings it up); IPv6's local route needs it. */
    sh("ip netns exec %s ip link set lo up", NS);
    char path[128];
    snprintf(path, sizeof path, "/var/run/netns/%s", NS);
    NSFD = open(path, O_RDONLY | O_CLOEXEC);
    assert_true(NSFD >= 0);
    return 0;
}

static int teardown(void **state)
{
    if (NSFD >= 0) close(NSFD);
    NSFD = -1;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "ip netns del %s 2>/dev/null", NS);
    if (system(cmd) != 0) {
        /* already gone */
    }
    return 0;
}

static bool ns_has_v6(void)
{
    char *s = in_ns("cat /proc/sys/net/ipv6/conf/all/disable_ipv6");
    bool on = s[0] == '0';
    free(s);
    return on;
}

static void expect_routes(bool want)
{
    char *r4 = in_ns("ip -4 rule show pref 32764");
    char *t4 = in_ns("ip -4 route show table 100");
    assert_int_equal(count(r4, "fwmark 0x111/0xfff lookup 100"), want ? 1 : 0);
    assert_int_equal(count(t4, "local default dev lo"), want ? 1 : 0);
    free(r4), free(t4);
    if (ns_has_v6()) {
        char *r6 = in_ns("ip -6 rule show pref 32764");
        char *t6 = in_ns("ip -6 route show table 100");
        assert_int_equal(count(r6, "fwmark 0x111/0xfff lookup 100"), want ? 1 : 0);
        assert_int_equal(count(t6, "local default dev lo"), want ? 1 : 0);
        free(r6), free(t6);
    }
}

static void expect_ipt(const char *save, bool want, bool v6)
{
    char *s = in_ns(save);
    int k = want ? 1 : 0;
    /* One jump per built-in chain in each of mangle and nat. */
    assert_int_equal(count(s, "-A PREROUTING -j ISTIO_PRERT\n"), 2 * k);
    assert_int_equal(count(s, "-A OUTPUT -j ISTIO_OUTPUT\n"), 2 * k);
    assert_int_equal(count(s, "-A ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff\n"), k);
    assert_int_equal(count(s, "-A ISTIO_OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark "
                              "--nfmask 0xffffffff --ctmask 0xffffffff\n"),
                     k);
    const char *lo = v6 ? "::1/128" : "127.0.0.1/32";
    char l[256];
    snprintf(l, sizeof l,
             "-A ISTIO_PRERT ! -d %s -p tcp -m tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff -j REDIRECT "
             "--to-ports 15006\n",
             lo);
    assert_int_equal(count(s, l), k);
    snprintf(l, sizeof l, "-A ISTIO_OUTPUT ! -d %s -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001\n",
             lo);
    assert_int_equal(count(s, l), k);
    snprintf(l, sizeof l, "-A ISTIO_OUTPUT ! -d %s -o lo -j ACCEPT\n", lo);
    assert_int_equal(count(s, l), k);
    assert_int_equal(count(s, "-A ISTIO_OUTPUT -p tcp -m mark --mark 0x111/0xfff -j ACCEPT\n"), k);
    const char *probe = v6 ? "fd16:9254:7127:1337:ffff:ffff:ffff:ffff/128" : "169.254.7.127/32";
    snprintf(l, sizeof l, "-A ISTIO_PRERT -s %s -p tcp -j ACCEPT\n", probe);
    assert_int_equal(count(s, l), k);
    assert_int_equal(count(s, ":ISTIO_PRERT"), 2 * k);
    free(s);
}

static void expect_present(enum rules_backend b, bool want)
{
    bool p = !want;
    char err[RULES_ERR_MAX];
    assert_int_equal(rules_present(b, NSFD, &p, err, sizeof err), 0);
    assert_int_equal(p, want);
}

static void test_iptables_install_idempotent_remove(void **state)
{
    char err[RULES_ERR_MAX] = "";
    bool v6 = ns_has_v6();
    expect_present(RULES_IPTABLES, false);
    if (rules_install(RULES_IPTABLES, NSFD, err, sizeof err) != 0) fail_msg("install: %s", err);
    expect_ipt("iptables-save", true, false);
    if (v6) expect_ipt("ip6tables-save", true, true);
    expect_routes(true);
    expect_present(RULES_IPTABLES, true);
    /* Twice: one copy. */
    if (rules_install(RULES_IPTABLES, NSFD, err, sizeof err) != 0) fail_msg("install again: %s", err);
    expect_ipt("iptables-save", true, false);
    if (v6) expect_ipt("ip6tables-save", true, true);
    expect_routes(true);
    if (rules_remove(RULES_IPTABLES, NSFD, err, sizeof err) != 0) fail_msg("remove: %s", err);
    expect_ipt("iptables-save", false, false);
    if (v6) expect_ipt("ip6tables-save", false, true);
    expect_routes(false);
    expect_present(RULES_IPTABLES, false);
    /* Removing what is not there is not an error. */
    if (rules_remove(RULES_IPTABLES, NSFD, err, sizeof err) != 0) fail_msg("remove again: %s", err);
}

/* Rules someone else put in the namespace stay: removal takes only the agent's. */
static void test_iptables_leaves_foreign_rules(void **state)
{
    char err[RULES_ERR_MAX] = "";
    sh("ip netns exec %s iptables -t nat -A OUTPUT -p udp --dport 9 -j ACCEPT", NS);
    if (rules_install(RULES_IPTABLES, NSFD, err, sizeof err) != 0) fail_msg("install: %s", err);
    if (rules_remove(RULES_IPTABLES, NSFD, err, sizeof err) != 0) fail_msg("remove: %s", err);
    char *s = in_ns("iptables-save -t nat");
    assert_int_equal(count(s, "-A OUTPUT -p udp -m udp --dport 9 -j ACCEPT"), 1);
    assert_int_equal(count(s, "ISTIO"), 0);
    free(s);
}

static void expect_nft(bool want, bool v6)
{
    char *s = in_ns("nft list ruleset");
    int k = want ? 1 : 0;
    assert_int_equal(count(s, "table inet istio-ambient-nat {"), k);
    assert_int_equal(count(s, "table inet istio-ambient-mangle {"), k);
    assert_int_equal(count(s, "chain istio-prerouting {"), 2 * k);
    assert_int_equal(count(s, "chain istio-output {"), 2 * k);
    assert_int_equal(count(s, "jump istio-prerouting"), 2 * k);
    assert_int_equal(count(s, "jump istio-output"), 2 * k);
    assert_int_equal(count(s, "ip daddr != 127.0.0.1 tcp dport != 15008 meta mark & 0x00000fff != 0x00000539 counter "
                              "packets 0 bytes 0 redirect to :15006"),
                     k);
    assert_int_equal(count(s, "meta l4proto tcp ip daddr != 127.0.0.1 meta mark & 0x00000fff != 0x00000539 counter "
                              "packets 0 bytes 0 redirect to :15001"),
                     k);
    assert_int_equal(count(s, "meta l4proto tcp ip saddr 169.254.7.127 counter"), k);
    assert_int_equal(count(s, "ct mark & 0x00000fff == 0x00000111 counter packets 0 bytes 0 meta mark set ct mark"), k);
    if (v6)
        assert_int_equal(count(s, "ip6 daddr != ::1 tcp dport != 15008 meta mark & 0x00000fff != 0x00000539 counter "
                                  "packets 0 bytes 0 redirect to :15006"),
                         k);
    free(s);
}

static void test_nftables_install_idempotent_remove(void **state)
{
    char err[RULES_ERR_MAX] = "";
    if (!rules_backend_available(RULES_NFTABLES, err, sizeof err)) {
        print_message("test_rules: %s; nftables test skipped\n", err);
        skip();
    }
    bool v6 = ns_has_v6();
    expect_present(RULES_NFTABLES, false);
    if (rules_install(RULES_NFTABLES, NSFD, err, sizeof err) != 0) fail_msg("install: %s", err);
    expect_nft(true, v6);
    expect_routes(true);
    expect_present(RULES_NFTABLES, true);
    if (rules_install(RULES_NFTABLES, NSFD, err, sizeof err) != 0) fail_msg("install again: %s", err);
    expect_nft(true, v6);
    expect_routes(true);
    if (rules_remove(RULES_NFTABLES, NSFD, err, sizeof err) != 0) fail_msg("remove: %s", err);
    expect_nft(false, v6);
    expect_routes(false);
    expect_present(RULES_NFTABLES, false);
    if (rules_remove(RULES_NFTABLES, NSFD, err, sizeof err) != 0) fail_msg("remove again: %s", err);
}

static void test_not_a_netns(void **state)
{
    char err[RULES_ERR_MAX] = "";
    assert_int_equal(rules_install(RULES_IPTABLES, -1, err, sizeof err), -1);
    assert_non_null(strstr(err, "fd -1 is not a namespace"));
    int f = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
    assert_int_equal(rules_install(RULES_IPTABLES, f, err, sizeof err), -1);
    assert_non_null(strstr(err, "is not a namespace"));
    close(f);
    int u = open("/proc/self/ns/uts", O_RDONLY | O_CLOEXEC);
    assert_int_equal(rules_install(RULES_IPTABLES, u, err, sizeof err), -1);
    assert_non_null(strstr(err, "is not a network namespace"));
    close(u);
}

/* A real failure: with IPv6 on and lo down, `ip -6 route add local ::/0 dev lo` fails; the error names the
 * step and has ip's stderr, and what was installed before it is taken back. */
static void test_tool_failure_reported_and_undone(void **state)
{
    if (!ns_has_v6()) {
        print_message("test_rules: IPv6 off in namespaces here; tool-failure test skipped\n");
        skip();
    }
    sh("ip netns exec %s ip link set lo down", NS);
    char err[RULES_ERR_MAX] = "";
    assert_int_equal(rules_install(RULES_IPTABLES, NSFD, err, sizeof err), -1);
    assert_non_null(strstr(err, "cannot install iptables rules: ip exited with"));
    assert_non_null(strstr(err, "Nexthop device is not up"));
    expect_ipt("iptables-save", false, false);
    expect_ipt("ip6tables-save", false, true);
    char *r4 = in_ns("ip -4 rule show pref 32764");
    assert_int_equal(count(r4, "lookup 100"), 0);
    free(r4);
}

struct job_end {
    bool done;
    int status;
    char err[RULES_ERR_MAX];
};
static void on_job(void *ud, int status, const char *err)
{
    struct job_end *j = ud;
    j->done = true;
    j->status = status;
    snprintf(j->err, sizeof j->err, "%s", err);
}
static struct loop *JL;
static void stop_cb(struct timer *t)
{
    loop_stop(JL);
}

/* rules_start: the same change on a loop, ended by a callback from the loop (never inside the call). */
static void test_async_install_and_remove(void **state)
{
    struct loop *l = JL = loop_new();
    struct {
        struct timer t;
    } tick = {.t = {.cb = stop_cb}};
    struct job_end j = {0};
    struct rules_job *job;
    char err[RULES_ERR_MAX];
    assert_int_equal(rules_start(l, RULES_IPTABLES, NSFD, true, on_job, &j, &job, err, sizeof err), 0);
    assert_false(j.done);
    for (int i = 0; i < 10000 && !j.done; i++) {
        timer_start(l, &tick.t, 1);
        loop_run(l);
    }
    assert_true(j.done);
    assert_int_equal(j.status, 0);
    expect_ipt("iptables-save", true, false);
    expect_routes(true);
    memset(&j, 0, sizeof j);
    assert_int_equal(rules_start(l, RULES_IPTABLES, NSFD, false, on_job, &j, &job, err, sizeof err), 0);
    for (int i = 0; i < 10000 && !j.done; i++) {
        timer_start(l, &tick.t, 1);
        loop_run(l);
    }
    assert_int_equal(j.status, 0);
    expect_ipt("iptables-save", false, false);
    expect_routes(false);
    /* rules_finish waits for a job without its callback. */
    memset(&j, 0, sizeof j);
    assert_int_equal(rules_start(l, RULES_IPTABLES, NSFD, true, on_job, &j, &job, err, sizeof err), 0);
    rules_finish(job);
    assert_false(j.done);
    expect_ipt("iptables-save", true, false);
    /* A bad fd fails at once, with no callback. */
    assert_int_equal(rules_start(l, RULES_IPTABLES, -1, true, on_job, &j, &job, err, sizeof err), -1);
    assert_non_null(strstr(err, "is not a namespace"));
    timer_stop(l, &tick.t);
    loop_free(l);
}

int main(void)
{
    log_init("off", false);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_iptables_install_idempotent_remove, setup, teardown),
        cmocka_unit_test_setup_teardown(test_iptables_leaves_foreign_rules, setup, teardown),
        cmocka_unit_test_setup_teardown(test_nftables_install_idempotent_remove, setup, teardown),
        cmocka_unit_test_setup_teardown(test_not_a_netns, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tool_failure_reported_and_undone, setup, teardown),
        cmocka_unit_test_setup_teardown(test_async_install_and_remove, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
