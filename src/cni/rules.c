/* In-pod rules (see rules.h). Facts: istio/istio cni/pkg/iptables/iptables.go (the rules and marks),
 * cni/pkg/iptables/testdata/default.golden, cni/pkg/nftables/testdata/default.golden and
 * dns_pod_disabled_and_on_globally_ipv6.golden (the nftables tables, chains, hooks and priorities). */
#include "cni/rules.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/nsfs.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/err.h"
#include "core/log.h"
#include "core/loop.h"

#define TGT "cni::rules"
/* What one tool may print on stdout (iptables-save of a pod's namespace is a few KiB) and on stderr. */
#define TOOL_OUT_MAX (1u << 20)
#define TOOL_ERR_MAX 2048

/* ---- the rules ---- */

/* Per table: the chains, the jumps from the built-in chains, the rules (iptables-restore syntax), as
 * scripts/inpod-redirect.sh and Istio's default.golden without DNS capture. %s is the family's loopback
 * address, %p the probe source address (filled by ipt_rules). */
static const char IPT_MANGLE[] =
    "-A ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff\n"
    "-A ISTIO_OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark --nfmask 0xffffffff "
    "--ctmask 0xffffffff\n";

static void ipt_nat(char *out, size_t n, bool v6)
{
    const char *lo = v6 ? "::1/128" : "127.0.0.1/32";
    const char *probe = v6 ? "fd16:9254:7127:1337:ffff:ffff:ffff:ffff/128" : "169.254.7.127/32";
    snprintf(out, n,
             "-A ISTIO_PRERT -s %s -p tcp -j ACCEPT\n"
             "-A ISTIO_PRERT ! -d %s -p tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff -j REDIRECT "
             "--to-ports 15006\n"
             "-A ISTIO_OUTPUT -d %s -p tcp -j ACCEPT\n"
             "-A ISTIO_OUTPUT -p tcp -m mark --mark 0x111/0xfff -j ACCEPT\n"
             "-A ISTIO_OUTPUT ! -d %s -o lo -j ACCEPT\n"
             "-A ISTIO_OUTPUT ! -d %s -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001\n",
             probe, lo, probe, lo, lo);
}

/* nftables: inet tables (one for both families), Istio's names, hooks and priorities. */
static const char NFT_V4_NAT[] =
    "add rule inet istio-ambient-nat istio-prerouting meta l4proto tcp ip saddr 169.254.7.127 counter "
    "accept\n"
    "add rule inet istio-ambient-nat istio-output meta l4proto tcp ip daddr 169.254.7.127 counter accept\n"
    "add rule inet istio-ambient-nat istio-prerouting ip daddr != 127.0.0.1/32 tcp dport != 15008 "
    "mark and 0xfff != 0x539 counter redirect to :15006\n"
    "add rule inet istio-ambient-nat istio-output meta l4proto tcp mark and 0xfff == 0x111 counter accept\n"
    "add rule inet istio-ambient-nat istio-output oifname lo ip daddr != 127.0.0.1/32 counter accept\n"
    "add rule inet istio-ambient-nat istio-output meta l4proto tcp ip daddr != 127.0.0.1/32 "
    "mark and 0xfff != 0x539 counter redirect to :15001\n";
static const char NFT_V6_NAT[] =
    "add rule inet istio-ambient-nat istio-prerouting meta l4proto tcp ip6 saddr "
    "fd16:9254:7127:1337:ffff:ffff:ffff:ffff counter accept\n"
    "add rule inet istio-ambient-nat istio-output meta l4proto tcp ip6 daddr "
    "fd16:9254:7127:1337:ffff:ffff:ffff:ffff counter accept\n"
    "add rule inet istio-ambient-nat istio-prerouting ip6 daddr != ::1/128 tcp dport != 15008 "
    "mark and 0xfff != 0x539 counter redirect to :15006\n"
    "add rule inet istio-ambient-nat istio-output oifname lo ip6 daddr != ::1/128 counter accept\n"
    "add rule inet istio-ambient-nat istio-output meta l4proto tcp ip6 daddr != ::1/128 "
    "mark and 0xfff != 0x539 counter redirect to :15001\n";
static const char NFT_HEAD_NAT[] =
    "add table inet istio-ambient-nat\n"
    "flush table inet istio-ambient-nat\n"
    "add chain inet istio-ambient-nat prerouting { type nat hook prerouting priority -100 ; }\n"
    "add chain inet istio-ambient-nat output { type nat hook output priority -100 ; }\n"
    "add chain inet istio-ambient-nat istio-prerouting\n"
    "add chain inet istio-ambient-nat istio-output\n"
    "add rule inet istio-ambient-nat output jump istio-output\n"
    "add rule inet istio-ambient-nat prerouting jump istio-prerouting\n";
static const char NFT_MANGLE[] =
    "add table inet istio-ambient-mangle\n"
    "flush table inet istio-ambient-mangle\n"
    "add chain inet istio-ambient-mangle prerouting { type filter hook prerouting priority -150 ; }\n"
    "add chain inet istio-ambient-mangle output { type route hook output priority -150 ; }\n"
    "add chain inet istio-ambient-mangle istio-prerouting\n"
    "add chain inet istio-ambient-mangle istio-output\n"
    "add rule inet istio-ambient-mangle prerouting jump istio-prerouting\n"
    "add rule inet istio-ambient-mangle output jump istio-output\n"
    "add rule inet istio-ambient-mangle istio-prerouting meta mark & 0xfff == 0x539 counter "
    "ct mark set ct mark & 0xfffff000 | 0x111\n"
    "add rule inet istio-ambient-mangle istio-output ct mark and 0xfff == 0x111 counter meta mark set ct "
    "mark\n";
/* Adding a table before deleting it makes the delete succeed whether or not it existed, in one transaction.
 */
static const char NFT_REMOVE[] = "add table inet istio-ambient-nat\n"
                                 "delete table inet istio-ambient-nat\n"
                                 "add table inet istio-ambient-mangle\n"
                                 "delete table inet istio-ambient-mangle\n";

const char *rules_backend_to_str(enum rules_backend b)
{
    return b == RULES_NFTABLES ? "nftables" : "iptables";
}

/* ---- running tools ---- */

struct sbuf {
    char *p;
    size_t len, cap;
    bool oom; /* an append failed: the text is incomplete and must not be used */
};

static int sb_add(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int sb_add(struct sbuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) return -EINVAL;
    if (b->len + (size_t)n + 1 > b->cap) {
        size_t cap = (b->len + (size_t)n + 1) * 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return -ENOMEM;
        }
        b->p = p, b->cap = cap;
    }
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

/* Finds tool in $PATH, then in the system directories (the agent may run with a short PATH). */
static bool find_tool(const char *tool, char *out, size_t n)
{
    const char *env = getenv("PATH");
    char path[4096];
    snprintf(path, sizeof path, "%s%s/usr/sbin:/sbin:/usr/bin:/bin", env ? env : "", env && *env ? ":" : "");
    for (char *save = NULL, *d = strtok_r(path, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
        if (!*d) continue;
        snprintf(out, n, "%s/%s", d, tool);
        if (access(out, X_OK) == 0) return true;
    }
    return false;
}

/* Trims trailing blanks and turns newlines into "; " so a tool's stderr fits one log line. */
static void one_line(char *s)
{
    size_t n = strlen(s);
    while (n && (s[n - 1] == '\n' || s[n - 1] == ' '))
        s[--n] = '\0';
    for (char *p = s; *p; p++)
        if (*p == '\n' || *p == '\r') *p = ';';
}

/* Runs argv[0] (a tool name, looked up) with in[0..inlen) on stdin, collecting stdout into out (may be NULL)
 * and stderr. Returns the exit status (0..255), or -1 when it could not run or was killed; err then says why,
 * or for a non-zero status names the tool and carries its stderr. Called in the namespace child only. */
static int run_tool(char *const argv[], const char *in, size_t inlen, struct sbuf *out, char *err,
                    size_t errlen)
{
    char path[512];
    if (!find_tool(argv[0], path, sizeof path)) {
        err_setf(err, errlen, "%s not found (PATH and /usr/sbin:/sbin:/usr/bin:/bin)", argv[0]);
        return -1;
    }
    int pin[2], pout[2], perr[2];
    if (pipe2(pin, O_CLOEXEC) < 0) goto pipefail;
    if (pipe2(pout, O_CLOEXEC) < 0) goto pipefail;
    if (pipe2(perr, O_CLOEXEC) < 0) goto pipefail;
    pid_t pid = fork();
    if (pid < 0) {
        err_setf(err, errlen, "fork: %s", strerror(errno));
        return -1;
    }
    if (pid == 0) {
        dup2(pin[0], 0);
        dup2(pout[1], 1);
        dup2(perr[1], 2);
        execv(path, argv);
        dprintf(2, "exec %s: %s", path, strerror(errno));
        _exit(127);
    }
    close(pin[0]), close(pout[1]), close(perr[1]);
    /* Inputs are a few KiB, under a pipe's buffer; a tool that does not read is killed by the deadline. */
    size_t off = 0;
    while (off < inlen) {
        ssize_t w = write(pin[1], in + off, inlen - off);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) break;
        off += (size_t)w;
    }
    close(pin[1]);
    char ebuf[TOOL_ERR_MAX];
    size_t elen = 0;
    struct pollfd pf[2] = {{.fd = pout[0], .events = POLLIN}, {.fd = perr[0], .events = POLLIN}};
    int open_fds = 2;
    while (open_fds) {
        int r = poll(pf, 2, -1);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) break;
        for (int i = 0; i < 2; i++) {
            if (pf[i].fd < 0 || !(pf[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            char tmp[4096];
            ssize_t n = read(pf[i].fd, tmp, sizeof tmp);
            if (n <= 0) {
                close(pf[i].fd);
                pf[i].fd = -1;
                open_fds--;
                continue;
            }
            if (i == 0 && out && out->len + (size_t)n <= TOOL_OUT_MAX) {
                if (sb_add(out, "%.*s", (int)n, tmp) < 0) {
                    /* Out of memory: the output is dropped, which makes "present" read false. */
                }
            } else if (i == 1) {
                size_t k = (size_t)n < sizeof ebuf - 1 - elen ? (size_t)n : sizeof ebuf - 1 - elen;
                memcpy(ebuf + elen, tmp, k);
                elen += k;
            }
        }
    }
    ebuf[elen] = '\0';
    one_line(ebuf);
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    if (!WIFEXITED(st)) {
        err_setf(err, errlen, "%s killed by signal %d", argv[0], WIFSIGNALED(st) ? WTERMSIG(st) : 0);
        return -1;
    }
    if (WEXITSTATUS(st)) err_setf(err, errlen, "%s exited with %d: %s", argv[0], WEXITSTATUS(st), ebuf);
    return WEXITSTATUS(st);
pipefail:
    err_setf(err, errlen, "pipe: %s", strerror(errno));
    return -1;
}

/* Whether IPv6 is on in the current namespace (the child's, after setns: /proc/sys/net follows the opener).
 */
static bool has_v6(void)
{
    int fd = open("/proc/sys/net/ipv6/conf/all/disable_ipv6", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    char c = '1';
    ssize_t n = read(fd, &c, 1);
    close(fd);
    return n == 1 && c == '0';
}

static int count_lines_equal(const char *text, const char *table, const char *line)
{
    int n = 0;
    const char *cur_table = "";
    char tbl[32] = "";
    for (const char *p = text; p && *p;) {
        const char *e = strchr(p, '\n');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len && p[0] == '*') {
            snprintf(tbl, sizeof tbl, "%.*s", (int)(len - 1), p + 1);
            cur_table = tbl;
        } else if (strcmp(cur_table, table) == 0 && strlen(line) == len && strncmp(p, line, len) == 0) {
            n++;
        }
        p = e ? e + 1 : NULL;
    }
    return n;
}

static bool has_chain(const char *text, const char *table, const char *chain)
{
    /* iptables-save prints counters after the name; match the name only. */
    const char *cur_table = "";
    char tbl[32] = "";
    size_t cl = strlen(chain);
    for (const char *p = text; p && *p;) {
        const char *e = strchr(p, '\n');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len && p[0] == '*') {
            snprintf(tbl, sizeof tbl, "%.*s", (int)(len - 1), p + 1);
            cur_table = tbl;
        } else if (strcmp(cur_table, table) == 0 && len > cl + 1 && p[0] == ':' &&
                   strncmp(p + 1, chain, cl) == 0 && p[cl + 1] == ' ') {
            return true;
        }
        p = e ? e + 1 : NULL;
    }
    return false;
}

static const char *const TABLES[] = {"mangle", "nat"};
static const char JUMP_PRE[] = "-A PREROUTING -j ISTIO_PRERT";
static const char JUMP_OUT[] = "-A OUTPUT -j ISTIO_OUTPUT";

/* One family's iptables change: removal of what is there (from iptables-save) and, with install, the rules,
 * in one iptables-restore. */
static int ipt_family(bool v6, bool install, char *err, size_t errlen)
{
    const char *save = v6 ? "ip6tables-save" : "iptables-save";
    const char *restore = v6 ? "ip6tables-restore" : "iptables-restore";
    struct sbuf cur = {0}, in = {0};
    char *const sargv[] = {(char *)save, NULL};
    int r = run_tool(sargv, NULL, 0, &cur, err, errlen);
    if (r != 0) goto out;
    for (size_t t = 0; t < 2; t++) {
        const char *tb = TABLES[t];
        int npre = count_lines_equal(cur.p, tb, JUMP_PRE), nout = count_lines_equal(cur.p, tb, JUMP_OUT);
        bool cpre = has_chain(cur.p, tb, "ISTIO_PRERT"), cout = has_chain(cur.p, tb, "ISTIO_OUTPUT");
        if (!install && !npre && !nout && !cpre && !cout) continue;
        sb_add(&in, "*%s\n", tb);
        /* A declared user chain is created, or flushed when it exists, even with --noflush. */
        if (install || cpre) sb_add(&in, ":ISTIO_PRERT - [0:0]\n");
        if (install || cout) sb_add(&in, ":ISTIO_OUTPUT - [0:0]\n");
        for (int i = 0; i < npre; i++)
            sb_add(&in, "-D PREROUTING -j ISTIO_PRERT\n");
        for (int i = 0; i < nout; i++)
            sb_add(&in, "-D OUTPUT -j ISTIO_OUTPUT\n");
        if (install) {
            sb_add(&in, "%s\n%s\n", JUMP_PRE, JUMP_OUT);
            if (t == 0) {
                sb_add(&in, "%s", IPT_MANGLE);
            } else {
                char nat[1024];
                ipt_nat(nat, sizeof nat, v6);
                sb_add(&in, "%s", nat);
            }
        } else {
            if (cpre) sb_add(&in, "-X ISTIO_PRERT\n");
            if (cout) sb_add(&in, "-X ISTIO_OUTPUT\n");
        }
        sb_add(&in, "COMMIT\n");
    }
    if (!in.p && !in.oom) goto out; /* nothing to remove */
    if (in.oom || cur.oom) {
        err_setf(err, errlen, "out of memory building the %s input", restore);
        r = -1;
        goto out;
    }
    char *const rargv[] = {(char *)restore, "--noflush", "-w", NULL};
    r = run_tool(rargv, in.p, in.len, NULL, err, errlen);
out:
    free(cur.p);
    free(in.p);
    return r == 0 ? 0 : -1;
}

/* One family's policy routing: removes the ip rules at pref 32764 and table 100's routes, then with install
 * adds them, in one `ip -batch -` (it stops at the first failing command and exits non-zero). */
static int routes_family(bool v6, bool install, char *err, size_t errlen)
{
    const char *fam = v6 ? "-6" : "-4";
    struct sbuf rules = {0}, routes = {0}, in = {0};
    char *const a1[] = {"ip", (char *)fam, "rule", "show", "pref", "32764", NULL};
    /* `route show table 100` fails while the table does not exist; the list of all tables does not. */
    char *const a2[] = {"ip", (char *)fam, "route", "show", "table", "all", NULL};
    int r = run_tool(a1, NULL, 0, &rules, err, errlen);
    if (r == 0) r = run_tool(a2, NULL, 0, &routes, err, errlen);
    if (r != 0) goto out;
    for (const char *p = rules.p; p && (p = strchr(p, '\n')); p++)
        sb_add(&in, "rule del pref 32764\n");
    if (routes.p && strstr(routes.p, " table 100 ")) sb_add(&in, "route flush table 100\n");
    if (install) {
        sb_add(&in, "rule add fwmark 0x111/0xfff pref 32764 lookup 100\n");
        sb_add(&in, "route add local %s dev lo table 100\n", v6 ? "::/0" : "0.0.0.0/0");
    }
    if (in.oom || rules.oom || routes.oom) {
        err_setf(err, errlen, "out of memory building the ip batch");
        r = -1;
    } else if (in.p) {
        char *const a3[] = {"ip", (char *)fam, "-batch", "-", NULL};
        r = run_tool(a3, in.p, in.len, NULL, err, errlen);
    }
out:
    free(rules.p), free(routes.p), free(in.p);
    return r == 0 ? 0 : -1;
}

static int nft_apply(bool install, bool v6, char *err, size_t errlen)
{
    struct sbuf in = {0};
    if (install) {
        sb_add(&in, "%s%s%s%s", NFT_HEAD_NAT, NFT_V4_NAT, v6 ? NFT_V6_NAT : "", NFT_MANGLE);
    } else {
        sb_add(&in, "%s", NFT_REMOVE);
    }
    if (!in.p || in.oom) {
        free(in.p);
        err_setf(err, errlen, "out of memory");
        return -1;
    }
    char *const argv[] = {"nft", "-f", "-", NULL};
    int r = run_tool(argv, in.p, in.len, NULL, err, errlen);
    free(in.p);
    return r == 0 ? 0 : -1;
}

enum op { OP_INSTALL, OP_REMOVE, OP_PRESENT };

/* In the namespace child: does op. Returns 0 (for OP_PRESENT: present), 2 (not present) or 1 with err. */
static int child_op(enum rules_backend b, enum op op, char *err, size_t errlen)
{
    bool v6 = has_v6();
    if (op == OP_PRESENT) {
        struct sbuf out = {0}, rl = {0};
        int r;
        if (b == RULES_IPTABLES) {
            char *const a[] = {"iptables-save", NULL};
            r = run_tool(a, NULL, 0, &out, err, errlen);
        } else {
            char *const a[] = {"nft", "list", "ruleset", NULL};
            r = run_tool(a, NULL, 0, &out, err, errlen);
        }
        char *const a2[] = {"ip", "-4", "rule", "show", "pref", "32764", NULL};
        if (r == 0) r = run_tool(a2, NULL, 0, &rl, err, errlen);
        if (r != 0) {
            free(out.p), free(rl.p);
            return 1;
        }
        bool p;
        if (b == RULES_IPTABLES)
            p = count_lines_equal(out.p, "nat", JUMP_PRE) > 0 &&
                count_lines_equal(out.p, "nat", JUMP_OUT) > 0 &&
                count_lines_equal(out.p, "mangle", JUMP_PRE) > 0 &&
                count_lines_equal(out.p, "mangle", JUMP_OUT) > 0;
        else
            p = out.p && strstr(out.p, "table inet istio-ambient-nat {") &&
                strstr(out.p, "table inet istio-ambient-mangle {");
        p = p && rl.p && strstr(rl.p, "lookup 100");
        free(out.p), free(rl.p);
        return p ? 0 : 2;
    }
    bool install = op == OP_INSTALL;
    int r;
    if (b == RULES_IPTABLES) {
        r = ipt_family(false, install, err, errlen);
        /* Removal also clears ip6tables when IPv6 is off now, so that nothing stale is left. */
        char tmp[512];
        if (r == 0 && (install ? v6 : find_tool("ip6tables-save", tmp, sizeof tmp)))
            r = ipt_family(true, install, err, errlen);
    } else {
        r = nft_apply(install, v6, err, errlen);
    }
    if (r == 0) r = routes_family(false, install, err, errlen);
    if (r == 0 && v6) r = routes_family(true, install, err, errlen);
    if (r != 0 && install) {
        /* Each tool's change is atomic, the install as a whole is not: take back what did go in, so a failed
         * install leaves the namespace as it was without the rules (the error is the install's). */
        char rerr[RULES_ERR_MAX];
        if (child_op(b, OP_REMOVE, rerr, sizeof rerr) != 0) {
            size_t n = strlen(err);
            snprintf(err + n, errlen - n, "; undoing the partial install failed too: %s", rerr);
        }
    }
    return r == 0 ? 0 : 1;
}

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static const char *const OP_NAMES[] = {"install", "remove", "check"};

/* Forks the namespace child for op. Returns 0 with its pid and the read end of the pipe its error comes on,
 * or -1 with err. */
static int spawn(enum rules_backend b, int netns_fd, enum op op, pid_t *pid_out, int *rfd, char *err,
                 size_t errlen)
{
    int t = ioctl(netns_fd, NS_GET_NSTYPE);
    if (t < 0) {
        err_setf(err, errlen, "cannot %s rules: fd %d is not a namespace: %s", OP_NAMES[op], netns_fd,
                 strerror(errno));
        return -1;
    }
    if (t != CLONE_NEWNET) {
        err_setf(err, errlen, "cannot %s rules: fd %d is not a network namespace", OP_NAMES[op], netns_fd);
        return -1;
    }
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0) {
        err_setf(err, errlen, "pipe: %s", strerror(errno));
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        close(p[0]), close(p[1]);
        err_setf(err, errlen, "fork: %s", strerror(errno));
        return -1;
    }
    if (pid == 0) {
        close(p[0]);
        /* The agent blocks its signals for a signalfd and ignores SIGPIPE; the tools get the defaults. */
        signal(SIGPIPE, SIG_DFL);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        char cerr[RULES_ERR_MAX] = "";
        int code;
        if (setns(netns_fd, CLONE_NEWNET) < 0) {
            err_setf(cerr, sizeof cerr, "setns into the pod's network namespace: %s", strerror(errno));
            code = 1;
        } else {
            code = child_op(b, op, cerr, sizeof cerr);
        }
        if (code == 1) {
            ssize_t w = write(p[1], cerr, strlen(cerr));
            (void)w;
        }
        _exit(code);
    }
    close(p[1]);
    *pid_out = pid;
    *rfd = p[0];
    return 0;
}

/* Reaps the child and turns its end into the result: its code (0, 2) or -1 with err. */
static int conclude(enum rules_backend b, enum op op, pid_t pid, const char *cerr, bool killed, char *err,
                    size_t errlen)
{
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    if (killed) {
        err_setf(err, errlen, "cannot %s rules: the %s tools took more than %d ms", OP_NAMES[op],
                 rules_backend_to_str(b), RULES_TIMEOUT_MS);
        return -1;
    }
    if (!WIFEXITED(st) || WEXITSTATUS(st) == 1 || WEXITSTATUS(st) > 2) {
        err_setf(err, errlen, "cannot %s %s rules: %s", OP_NAMES[op], rules_backend_to_str(b),
                 *cerr ? cerr : "the namespace child failed");
        return -1;
    }
    return WEXITSTATUS(st);
}

/* Forks the namespace child for op and waits for it. Returns the child's code (0, 2) or -1 with err. */
static int in_netns(enum rules_backend b, int netns_fd, enum op op, char *err, size_t errlen)
{
    pid_t pid;
    int rfd;
    if (spawn(b, netns_fd, op, &pid, &rfd, err, errlen) < 0) return -1;
    char cerr[RULES_ERR_MAX];
    size_t len = 0;
    uint64_t deadline = mono_ms() + RULES_TIMEOUT_MS;
    bool killed = false;
    for (;;) {
        uint64_t now = mono_ms();
        if (now >= deadline) {
            kill(pid, SIGKILL);
            killed = true;
            break;
        }
        struct pollfd pf = {.fd = rfd, .events = POLLIN};
        int r = poll(&pf, 1, (int)(deadline - now));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) continue;
        ssize_t n = read(rfd, cerr + len, sizeof cerr - 1 - len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        len += (size_t)n;
        if (len == sizeof cerr - 1) break;
    }
    close(rfd);
    cerr[len] = '\0';
    return conclude(b, op, pid, cerr, killed, err, errlen);
}

/* ---- the same on the loop ---- */

struct rules_job {
    struct loop *l;
    enum rules_backend b;
    enum op op;
    pid_t pid;
    struct io io;
    struct timer deadline;
    char cerr[RULES_ERR_MAX];
    size_t len;
    rules_done_fn done;
    void *ud;
};

static void job_end(struct rules_job *j, bool killed)
{
    loop_io_close(j->l, &j->io);
    timer_stop(j->l, &j->deadline);
    j->cerr[j->len] = '\0';
    char err[RULES_ERR_MAX];
    err[0] = '\0';
    int r = conclude(j->b, j->op, j->pid, j->cerr, killed, err, sizeof err);
    rules_done_fn done = j->done;
    void *ud = j->ud;
    free(j);
    done(ud, r == 0 ? 0 : -1, r == 0 ? "" : err);
}

static void job_io_cb(struct io *io, uint32_t ev)
{
    struct rules_job *j = container_of(io, struct rules_job, io);
    for (;;) {
        ssize_t n = read(j->io.fd, j->cerr + j->len, sizeof j->cerr - 1 - j->len);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        if (n > 0) {
            j->len += (size_t)n;
            if (j->len < sizeof j->cerr - 1) continue;
        }
        /* End of the pipe: the child exited (its tools do not inherit the pipe). Reaping it is immediate. */
        job_end(j, false);
        return;
    }
}

static void job_deadline_cb(struct timer *t)
{
    struct rules_job *j = container_of(t, struct rules_job, deadline);
    kill(j->pid, SIGKILL);
    job_end(j, true);
}

int rules_start(struct loop *l, enum rules_backend b, int netns_fd, bool install, rules_done_fn done,
                void *ud, struct rules_job **out, char *err, size_t errlen)
{
    struct rules_job *j = calloc(1, sizeof *j);
    if (!j) {
        err_setf(err, errlen, "out of memory");
        return -1;
    }
    enum op op = install ? OP_INSTALL : OP_REMOVE;
    int rfd;
    if (spawn(b, netns_fd, op, &j->pid, &rfd, err, errlen) < 0) {
        free(j);
        return -1;
    }
    j->l = l, j->b = b, j->op = op, j->done = done, j->ud = ud;
    int fl = fcntl(rfd, F_GETFL);
    if (fl >= 0) fcntl(rfd, F_SETFL, fl | O_NONBLOCK);
    j->io.fd = rfd;
    j->io.cb = job_io_cb;
    j->deadline.cb = job_deadline_cb;
    if (loop_io_add(l, &j->io, EPOLLIN) < 0) {
        /* Cannot watch it: wait for it here instead (the caller gets done later all the same). */
        close(rfd);
        int st;
        kill(j->pid, SIGKILL);
        while (waitpid(j->pid, &st, 0) < 0 && errno == EINTR) {
        }
        free(j);
        err_setf(err, errlen, "cannot watch the rules child");
        return -1;
    }
    timer_start(l, &j->deadline, RULES_TIMEOUT_MS);
    *out = j;
    return 0;
}

void rules_finish(struct rules_job *j)
{
    if (!j) return;
    loop_io_del(j->l, &j->io);
    timer_stop(j->l, &j->deadline);
    int fl = fcntl(j->io.fd, F_GETFL);
    if (fl >= 0) fcntl(j->io.fd, F_SETFL, fl & ~O_NONBLOCK);
    char tmp[256];
    while (read(j->io.fd, tmp, sizeof tmp) > 0) {
    }
    close(j->io.fd);
    int st;
    while (waitpid(j->pid, &st, 0) < 0 && errno == EINTR) {
    }
    free(j);
}

enum rules_backend rules_backend_auto(void)
{
    char p[512];
    return find_tool("iptables-restore", p, sizeof p) ? RULES_IPTABLES : RULES_NFTABLES;
}

bool rules_backend_available(enum rules_backend b, char *err, size_t errlen)
{
    char p[512];
    const char *need[] = {b == RULES_IPTABLES ? "iptables-restore" : "nft",
                          b == RULES_IPTABLES ? "iptables-save" : "nft", "ip"};
    for (size_t i = 0; i < 3; i++) {
        if (!find_tool(need[i], p, sizeof p)) {
            err_setf(err, errlen,
                     "%s not found (PATH and /usr/sbin:/sbin:/usr/bin:/bin), needed by the %s backend",
                     need[i], rules_backend_to_str(b));
            return false;
        }
    }
    return true;
}

int rules_install(enum rules_backend b, int netns_fd, char *err, size_t errlen)
{
    return in_netns(b, netns_fd, OP_INSTALL, err, errlen) == 0 ? 0 : -1;
}

int rules_remove(enum rules_backend b, int netns_fd, char *err, size_t errlen)
{
    return in_netns(b, netns_fd, OP_REMOVE, err, errlen) == 0 ? 0 : -1;
}

int rules_present(enum rules_backend b, int netns_fd, bool *present, char *err, size_t errlen)
{
    int r = in_netns(b, netns_fd, OP_PRESENT, err, errlen);
    if (r < 0) return -1;
    *present = r == 0;
    return 0;
}
