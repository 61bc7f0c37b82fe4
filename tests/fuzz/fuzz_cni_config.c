/* libFuzzer target for zmesh-cni's input parsers (src/cni/plugin.c): the network configuration the runtime
 * writes on stdin (cni_conf_parse, with prevResult's ips through cni_prev_ips) and CNI_ARGS (cni_args_parse).
 * Input: the first line is CNI_ARGS, the rest is the configuration; each is copied into a heap buffer of
 * exactly its length (plus the NUL CNI_ARGS has as an environment string), so ASan checks every read. Checked
 * besides memory safety, leaks and UB:
 *   - both parsers return 0 or -1; a failure carries a non-empty message and a code the spec defines for it
 *     (CNI_ARGS: 4; configuration: 1, 6 or 7), and its error object parses back with that code;
 *   - accepted CNI_ARGS: every value fits its bound and occurs in the input as KEY=value;
 *   - an accepted configuration: a supported cniVersion, an absolute agent_socket that fits sun_path, a
 * timeout in (0, 60 s]; ADD's result parses back equal to prevResult; the agent message, when it builds, is
 * JSON with the pod's identity and at most CNI_AGENT_MSG_MAX bytes. Build: `make fuzz-build`. Seeds:
 * tests/fuzz/corpus/fuzz_cni_config/ (written by hand: a Kubernetes ADD with the bridge plugin's result, the
 * own keys, an unknown key, a bad CNI_ARGS, a 0.4.0 result with IPv6). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cni/plugin.h"

static void check_err_json(const struct cni_err *e)
{
    if (!e->msg[0]) abort();
    char *s = cni_error_json(e, NULL);
    if (!s) abort();
    json_t *o = json_loads(s, 0, NULL);
    if (!o || json_integer_value(json_object_get(o, "code")) != (json_int_t)e->code) abort();
    json_decref(o);
    free(s);
}

static void check_value(const char *in, const char *key, const char *val)
{
    if (strlen(val) > CNI_ARG_VALUE_MAX) abort();
    if (!val[0]) return;
    char want[CNI_ARG_VALUE_MAX + 64];
    snprintf(want, sizeof(want), "%s=%s", key, val);
    if (!strstr(in, want)) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nl = memchr(data, '\n', size);
    size_t alen = nl ? (size_t)(nl - data) : size;
    size_t clen = nl ? size - alen - 1 : 0;
    char *args = malloc(alen + 1);
    char *conf_text = malloc(clen ? clen : 1);
    if (!args || !conf_text) abort();
    memcpy(args, data, alen);
    args[alen] = '\0';
    if (clen) memcpy(conf_text, nl + 1, clen);

    struct cni_args a;
    struct cni_err e = {0};
    int rc = cni_args_parse(args, &a, &e, NULL);
    if (rc == -1) {
        if (e.code != CNI_ERR_INVALID_ENV) abort();
        check_err_json(&e);
    } else if (rc == 0) {
        /* A value with a NUL inside cannot occur: the environment string ends at the first NUL. */
        check_value(args, "K8S_POD_NAME", a.pod_name);
        check_value(args, "K8S_POD_NAMESPACE", a.pod_namespace);
        check_value(args, "K8S_POD_UID", a.pod_uid);
        check_value(args, "K8S_POD_INFRA_CONTAINER_ID", a.infra_container_id);
    } else {
        abort();
    }
    if (rc != 0) memset(&a, 0, sizeof(a));

    struct cni_conf c;
    memset(&e, 0, sizeof(e));
    rc = cni_conf_parse(conf_text, clen, &c, &e, NULL);
    if (rc == -1) {
        if (e.code != CNI_ERR_INCOMPATIBLE_VERSION && e.code != CNI_ERR_DECODE &&
            e.code != CNI_ERR_INVALID_CONFIG)
            abort();
        check_err_json(&e);
    } else if (rc == 0) {
        if (!cni_version_supported(c.cni_version) || c.agent_socket[0] != '/' ||
            strlen(c.agent_socket) >= 108 || c.agent_timeout_ms == 0 || c.agent_timeout_ms > 60000 ||
            c.n_exclude > CNI_EXCLUDE_MAX)
            abort();
        char *res = cni_result_json(&c);
        json_t *r = res ? json_loads(res, 0, NULL) : NULL;
        if (!r || (c.prev_result && !json_equal(r, c.prev_result))) abort();
        json_decref(r);
        free(res);
        struct cni_env env = {"ADD", "c0ffee", "/var/run/netns/x", "eth0", args, "/usr/lib/cni"};
        memset(&e, 0, sizeof(e));
        char *msg = cni_agent_msg("add", &env, &a, &c, &e);
        if (msg) {
            json_t *m = json_loads(msg, 0, NULL);
            if (strlen(msg) > CNI_AGENT_MSG_MAX || !m ||
                strcmp(json_string_value(json_object_get(json_object_get(m, "pod"), "name")), a.pod_name) !=
                    0)
                abort();
            json_decref(m);
            free(msg);
        } else if (e.code != CNI_ERR_INVALID_CONFIG) {
            abort();
        } else {
            check_err_json(&e);
        }
    } else {
        abort();
    }
    cni_conf_free(&c);
    free(args);
    free(conf_text);
    return 0;
}
