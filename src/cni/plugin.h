/* zmesh-cni, the CNI plugin: a chained plugin after the pod's main plugin (CNI specification 1.0,
 * containernetworking/cni SPEC.md), which passes prevResult through and reports the pod sandbox to the node
 * agent over a Unix socket (src/cni/README.md describes the configuration keys and the message).
 *
 * Everything but reading the process's environment and stdin is here, so the unit tests and the fuzz target
 * drive the same code as build/bin/zmesh-cni. Warnings go to a FILE the caller gives (stderr in the program,
 * NULL to drop them); stdout carries only the result or the error object, as the spec requires. */
#ifndef ZMESH_CNI_PLUGIN_H
#define ZMESH_CNI_PLUGIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

/* The spec's error codes (SPEC.md "Error"); 100 and above are this plugin's own. */
enum cni_code {
    CNI_OK = 0,
    CNI_ERR_INCOMPATIBLE_VERSION = 1,
    CNI_ERR_UNSUPPORTED_FIELD = 2,
    CNI_ERR_UNKNOWN_CONTAINER = 3,
    CNI_ERR_INVALID_ENV = 4,
    CNI_ERR_IO = 5,
    CNI_ERR_DECODE = 6,
    CNI_ERR_INVALID_CONFIG = 7,
    CNI_ERR_TRY_AGAIN = 11,
    /* The node agent answered and refused the pod (fail-closed only). */
    CNI_ERR_AGENT_REFUSED = 100,
};

/* The newest version this plugin implements; STATUS and GC (spec 1.1) are not implemented. */
#define CNI_SPEC_VERSION "1.0.0"
/* Limits: stdin (network configuration with prevResult), CNI_ARGS, one CNI_ARGS value, the agent message. */
#define CNI_STDIN_MAX (1u << 20)
#define CNI_ARGS_MAX 4096
#define CNI_ARG_VALUE_MAX 253
#define CNI_AGENT_MSG_MAX 16384
#define CNI_EXCLUDE_MAX 64
#define CNI_DEFAULT_AGENT_SOCKET "/var/run/zmesh-cni/pluginevent.sock"
#define CNI_DEFAULT_AGENT_TIMEOUT_MS 5000

struct cni_err {
    enum cni_code code;
    char msg[256];
    char details[512];
};

/* The network configuration from stdin. `root` owns every json_t here; prev_result may be NULL. */
struct cni_conf {
    json_t *root;
    const char *cni_version;
    const char *name;
    const char *type;
    json_t *prev_result;
    const char *agent_socket;
    bool fail_open;
    uint64_t agent_timeout_ms;
    const char *exclude_namespaces[CNI_EXCLUDE_MAX];
    size_t n_exclude;
};

/* CNI_ARGS' Kubernetes keys (empty string when absent). */
struct cni_args {
    char pod_name[CNI_ARG_VALUE_MAX + 1];
    char pod_namespace[CNI_ARG_VALUE_MAX + 1];
    char pod_uid[CNI_ARG_VALUE_MAX + 1];
    char infra_container_id[CNI_ARG_VALUE_MAX + 1];
};

/* The spec's environment; NULL for a variable that is not set. */
struct cni_env {
    const char *command;
    const char *container_id;
    const char *netns;
    const char *ifname;
    const char *args;
    const char *path;
};

/* Fills err (code, msg, details) with printf-style msg; returns -1 so callers can `return cni_fail(...)`. */
int cni_fail(struct cni_err *err, enum cni_code code, const char *details, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* True when v is one of the versions VERSION reports. */
bool cni_version_supported(const char *v);

/* Parses len bytes of network configuration into conf (conf->root owned by conf: free with cni_conf_free).
 * Returns 0, or -1 with err filled. Unknown keys are warned about on warn (may be NULL). */
int cni_conf_parse(const char *buf, size_t len, struct cni_conf *conf, struct cni_err *err, FILE *warn);
void cni_conf_free(struct cni_conf *conf);

/* Parses CNI_ARGS ("K=V;K=V", NULL or empty for none) into out. Returns 0 or -1 with err filled. */
int cni_args_parse(const char *s, struct cni_args *out, struct cni_err *err, FILE *warn);

/* Checks the environment ADD, DEL or CHECK needs (SPEC.md "Parameters"). Returns 0 or -1 with err filled. */
int cni_env_check(const struct cni_env *env, struct cni_err *err);

/* The JSON texts printed on stdout, malloc'd (caller frees), NULL on allocation failure. */
char *cni_error_json(const struct cni_err *err, const char *cni_version);
/* VERSION's answer; its cniVersion is `requested` when supported, else CNI_SPEC_VERSION (requested may be
 * NULL). */
char *cni_version_json(const char *requested);
/* ADD's result: prevResult unchanged, or {"cniVersion"} when there is none (as Istio's plugin does). */
char *cni_result_json(const struct cni_conf *conf);

/* The pod IPs ("addr/prefix" strings) of prevResult's "ips" as a new JSON array (caller owns it).
 * Returns 0 or -1 with err filled when prevResult's ips are malformed. */
int cni_prev_ips(const struct cni_conf *conf, json_t **out, struct cni_err *err);

/* The message to the node agent for "add" or "del" (malloc'd text, caller frees), NULL with err filled. */
char *cni_agent_msg(const char *event, const struct cni_env *env, const struct cni_args *args,
                    const struct cni_conf *conf, struct cni_err *err);

/* Sends msg to the agent at path (SOCK_SEQPACKET, one message, one answer) within timeout_ms. Returns 0 when
 * the agent answered {"ok": true}; -1 with err filled (CNI_ERR_TRY_AGAIN: unreachable, timeout or garbled
 * answer; CNI_ERR_AGENT_REFUSED: the agent's "error"). */
int cni_agent_call(const char *path, const char *msg, uint64_t timeout_ms, struct cni_err *err);

/* Runs one command: env and the stdin bytes in, the result or error JSON on out, warnings on warn.
 * Returns the process's exit status (0, or 1 after printing an error object). */
int cni_run(const struct cni_env *env, const char *in, size_t len, FILE *out, FILE *warn);

#endif
