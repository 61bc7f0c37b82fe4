/* The in-pod redirection rules the node agent installs in an enrolled pod's network namespace (Istio's, from
 * istio/istio cni/pkg/iptables/iptables.go and cni/pkg/nftables/nftables.go, without DNS capture; the same as
 * scripts/inpod-redirect.sh): inbound TCP to 15006 and outbound TCP to 15001 unless ztunnel's mark 0x539/0xfff
 * is set, kubelet probes from 169.254.7.127 left alone, connmark 0x111 on ztunnel's spoofed connections with
 * the mark restored on replies, and `ip rule fwmark 0x111/0xfff pref 32764 lookup 100` with
 * `local 0.0.0.0/0 dev lo table 100` so that those replies reach ztunnel. IPv6 too when the namespace has it.
 *
 * Each call forks one child that enters the namespace (setns(CLONE_NEWNET)) and runs the tools there by
 * fork+exec, with no shell: per family one `iptables-restore --noflush -w` (or one `nft -f -` for both) and one
 * `ip -batch -`, so each change is atomic per tool. Installing removes any previous copy in the same
 * transaction, so it is idempotent. rules_install/remove/present wait for the child (tens of milliseconds; at
 * most RULES_TIMEOUT_MS); rules_start runs the same on a loop and reports the end through a callback. */
#pragma once
#include <stdbool.h>
#include <stddef.h>

#include "core/loop.h"

enum rules_backend { RULES_IPTABLES, RULES_NFTABLES };

/* The most a rules call may take before its child is killed (iptables -w waits for the xtables lock). */
#define RULES_TIMEOUT_MS 30000
/* Room for an error message: the failing tool's stderr is appended to it. */
#define RULES_ERR_MAX 512

const char *rules_backend_to_str(enum rules_backend b);
/* RULES_IPTABLES when iptables-restore is found (PATH, then /usr/sbin:/sbin:/usr/bin:/bin), else RULES_NFTABLES. */
enum rules_backend rules_backend_auto(void);
/* Whether the backend's tools (and `ip`) are found; when not, err says which is missing. */
bool rules_backend_available(enum rules_backend b, char *err, size_t errlen);

/* Installs the rules in the namespace of netns_fd (replacing a previous copy). Returns 0, or -1 with a
 * message in err naming the step and carrying the tool's stderr. */
int rules_install(enum rules_backend b, int netns_fd, char *err, size_t errlen);
/* Removes every rule, chain, table and route rules_install adds; nothing there is not an error. */
int rules_remove(enum rules_backend b, int netns_fd, char *err, size_t errlen);
/* Sets *present when the rules are installed (the jumps or tables and the ip rule). Returns 0 or -1 with err. */
int rules_present(enum rules_backend b, int netns_fd, bool *present, char *err, size_t errlen);

/* ---- on an event loop ---- */

struct rules_job;
/* The end of a job: status 0, or -1 with err (the same messages as rules_install's). */
typedef void (*rules_done_fn)(void *ud, int status, const char *err);
/* Starts installing (install true) or removing the rules in netns_fd's namespace without blocking l: the
 * child is watched on l and killed after RULES_TIMEOUT_MS. done runs once from the loop (never inside this
 * call), and the job is freed then. Returns 0 with *out, or -1 with err (done is not called). */
int rules_start(struct loop *l, enum rules_backend b, int netns_fd, bool install, rules_done_fn done, void *ud,
                struct rules_job **out, char *err, size_t errlen);
/* Waits for a started job to end (blocking; for shutdown), without calling done, and frees it. NULL: no-op. */
void rules_finish(struct rules_job *j);
