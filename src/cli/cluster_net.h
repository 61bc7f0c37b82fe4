/* zmesh up's networking: the bridge, node namespaces and routes (iproute2, as an operator would type them),
 * pod sandboxes wired by the CNI plugins (Debian's bridge + host-local + loopback, then zmesh-cni), run as a
 * container runtime runs a conflist (CNI spec 1.0), and namespace teardown. Every resource is written to the
 * record (cluster.h) before it is created. Errors are -errno with err set to a sentence. */
#pragma once
#include <stddef.h>
#include <sys/types.h>

#include <jansson.h>

#include "cli/cluster.h"

#define CNI_SYSTEM_DIR "/usr/lib/cni"
#define CNI_VERSION "1.0.0"
#define CNI_IFNAME "eth0"

/* Runs argv (argv[0] looked up in PATH), stdout and stderr captured into err on failure. Returns 0, or
 * -EIO (non-zero exit) / -errno with err set to "<argv...>: <output>". */
int net_run(char *const argv[], char *err, size_t errlen);
/* Enters the network namespace /run/netns/<name> (the calling thread). Returns 0 or -errno. */
int net_enter(const char *netns);
/* True when /run/netns/<name> exists. */
bool net_netns_exists(const char *netns);

/* The bridge <prefix>0 in the host namespace with the host's address; refuses (-EEXIST) when it exists. */
int net_bridge_up(const struct cluster_cfg *cfg, char *err, size_t errlen);
/* Node i: namespace, veth to the bridge, node IP, default route via the host, routes to the other nodes'
 * pod CIDRs, forwarding on; and the host's route to its pod CIDR. */
int net_node_up(const struct cluster_cfg *cfg, size_t i, char *err, size_t errlen);
/* Writes <state>/nodes/<node>/cni.conflist (bridge + host-local, then zmesh-cni) and the CNI_PATH dir with
 * the zmesh-cni symlink. */
int net_cni_setup(const struct cluster_cfg *cfg, size_t i, char *err, size_t errlen);

/* A pod sandbox. */
struct sandbox {
    char ns[CLUSTER_NAME_MAX], name[CLUSTER_NAME_MAX * 4], uid[40], container_id[33];
    char netns[CLUSTER_PATH_MAX];
    const struct cluster_node *node;
    json_t *result; /* the conflist's final result (owned), kept for DEL's prevResult */
    char ip[46];
};
/* Creates the sandbox's namespace (recorded) and runs loopback, then the node's conflist ADD. Fills ip and
 * result. On failure everything done is undone (DEL, namespace removed). */
int net_sandbox_add(const struct cluster_cfg *cfg, struct sandbox *sb, char *err, size_t errlen);
/* CNI DEL in reverse order (with the ADD result as prevResult when known), then kills what still runs in the
 * namespace and removes it; the record entries are marked removed. Best effort: returns the first error. */
int net_sandbox_del(const struct cluster_cfg *cfg, struct sandbox *sb, char *err, size_t errlen);
/* SIGKILLs every process whose network namespace is /run/netns/<netns>. Returns how many were signalled. */
int net_kill_netns(const char *netns);
/* Kills what runs in it, then `ip netns del`. Returns 0 or -errno. */
int net_netns_del(const char *netns, char *err, size_t errlen);
/* A new random id of 32 lowercase hex digits (CNI_CONTAINERID; also pod uids, formatted as a UUID). */
void net_random_hex(char *buf, size_t nhex);
/* Process start time (field 22 of /proc/<pid>/stat) as text, "" when the process does not exist. */
void net_proc_start(pid_t pid, char *buf, size_t n);
