/* zmesh-cni's plugin logic (plugin.h). Facts from the CNI specification 1.0 (containernetworking/cni SPEC.md:
 * "Parameters", "Network configuration", "Result", "Error", "Version") and from Istio's plugin
 * (istio/istio cni/pkg/plugin/plugin.go: CmdAdd, K8sArgs, pluginResponse; cni/pkg/nodeagent/cni-watcher.go:
 * the event the node agent receives). */
#include "cni/plugin.h"

#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "core/env.h"

/* Versions whose result format has prevResult with "ips" (0.3.0 onwards); older ones have no chaining. */
static const char *const supported_versions[] = {"0.3.0", "0.3.1", "0.4.0", "1.0.0"};
#define N_SUPPORTED (sizeof(supported_versions) / sizeof(supported_versions[0]))

/* Linux's IFNAMSIZ - 1: the spec's CNI_IFNAME must fit an interface name. */
#define IFNAME_MAX 15
#define CONTAINER_ID_MAX 1024
/* Pause between connect attempts while the agent's listen backlog is full. */
#define AGENT_CONNECT_RETRY_MS 10

int cni_fail(struct cni_err *err, enum cni_code code, const char *details, const char *fmt, ...)
{
    va_list ap;
    err->code = code;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
    va_end(ap);
    snprintf(err->details, sizeof(err->details), "%s", details ? details : "");
    return -1;
}

bool cni_version_supported(const char *v)
{
    for (size_t i = 0; i < N_SUPPORTED; i++)
        if (strcmp(v, supported_versions[i]) == 0) return true;
    return false;
}

/* Keys of the network configuration the spec defines for every plugin and that zmesh-cni accepts without
 * using (SPEC.md "Plugin configuration objects" and "Deriving execution configuration"): the runtime fills
 * them in for all plugins of a list. */
static const char *const spec_unused_keys[] = {"capabilities", "runtimeConfig", "args", "dns", "ipam"};

static bool is_spec_unused_key(const char *k)
{
    for (size_t i = 0; i < sizeof(spec_unused_keys) / sizeof(spec_unused_keys[0]); i++)
        if (strcmp(k, spec_unused_keys[i]) == 0) return true;
    return false;
}

static int conf_string(json_t *root, const char *key, bool required, const char **out, struct cni_err *err)
{
    json_t *v = json_object_get(root, key);
    if (!v) {
        if (required)
            return cni_fail(err, CNI_ERR_INVALID_CONFIG, NULL, "network configuration: \"%s\" is missing",
                            key);
        return 0;
    }
    if (!json_is_string(v))
        return cni_fail(err, CNI_ERR_INVALID_CONFIG, NULL, "network configuration: \"%s\" must be a string",
                        key);
    const char *s = json_string_value(v);
    if (strlen(s) != json_string_length(v))
        return cni_fail(err, CNI_ERR_INVALID_CONFIG, NULL, "network configuration: \"%s\" holds a NUL", key);
    *out = s;
    return 0;
}

int cni_conf_parse(const char *buf, size_t len, struct cni_conf *conf, struct cni_err *err, FILE *warn)
{
    json_error_t jerr;
    memset(conf, 0, sizeof(*conf));
    conf->fail_open = true;
    conf->agent_socket = CNI_DEFAULT_AGENT_SOCKET;
    conf->agent_timeout_ms = CNI_DEFAULT_AGENT_TIMEOUT_MS;
    if (len > CNI_STDIN_MAX)
        return cni_fail(err, CNI_ERR_INVALID_CONFIG, NULL, "network configuration over %u bytes",
                        CNI_STDIN_MAX);
    /* Duplicate keys are refused: which one a JSON reader keeps differs between readers. */
    conf->root = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!conf->root)
        return cni_fail(err, CNI_ERR_DECODE, jerr.text,
                        "failed to decode network configuration at line %d column %d", jerr.line,
                        jerr.column);
    if (!json_is_object(conf->root))
        return cni_fail(err, CNI_ERR_INVALID_CONFIG, NULL, "network configuration must be a JSON object");
    if (conf_string(conf->root, "cniVersion", true, &conf->cni_version, err) < 0 ||
        conf_string(conf->root, "name", true, &conf->name, err) < 0 ||
        conf_string(conf->root, "type", true, &conf->type, err) < 0 ||
        conf_string(conf->root, "agent_socket", false, &conf->agent_socket, err) < 0)
        return -1;
    if (!cni_version_supported(conf->cni_version))
        return cni_fail(err, CNI_ERR_INCOMPATIBLE_VERSION, "supported: 0.3.0, 0.3.1, 0.4.0, 1.0.0",
                        "cniVersion \"%.64s\" is not supported", conf->cni_version);
    /* sun_path holds 108 bytes with the NUL; a relative path would depend on the runtime's directory. */
    if (conf->agent_socket[0] != '/' ||
        strlen(conf->agent_socket) >= sizeof(((struct sockaddr_un *)0)->sun_path))
        return cni_fail(err, CNI_ERR_INVALID_CONFIG, NULL,
                        "network configuration: \"agent_socket\" must be an absolute path under 108 bytes");

    json_t *v = json_object_get(conf->root, "prevResult");
    if (v && !json_is_object(v))
        return cni_fail(err, CNI_ERR_INVALID_CONFIG, NULL,
                        "network configuration: \"prevResult\" must be an object");
    conf->prev_result = v;
    /* SPEC.md "Chained plugins": prevResult is in the configuration's cniVersion, which is also the version
     * the output must be in; zmesh-cni passes it through unconverted, so a mismatch is the runtime's and is
     * said. */
    json_t *pv = v ? json_object_get(v, "cniVersion") : NULL;
    if (pv && (!json_is_string(pv) || strcmp(json_string_value(pv), conf->cni_version) != 0) && warn)
        fprintf(warn,
                "zmesh-cni: warning: prevResult's cniVersion differs from the configuration's %s; passed "
                "through unchanged\n",
                conf->cni_version);

    v = json_object_get(conf->root, "fail_open");
    if (v) {
        if (!json_is_boolean(v))
            return cni_fail(err, CNI_ERR_INVALID_CONFIG, NULL,
                            "network configuration: \"fail_open\" must be a bool");
        conf->fail_open = json_is_true(v);
    }
    const char *timeout = NULL;
    if (conf_string(conf->root, "agent_timeout", false, &timeout, err) < 0) return -1;
    if (timeout) {
        /* Istio's duration syntax (core/env.h), as every other zmesh duration. */
        if (duration_parse_ms(timeout, &conf->agent_timeout_ms) < 0 || conf->agent_timeout_ms == 0 ||
            conf->agent_timeout_ms > 60000)
            return cni_fail(
                err, CNI_ERR_INVALID_CONFIG, NULL,
                "network configuration: \"agent_timeout\" \"%.32s\" is not a duration in (0, 60s]", timeout);
    }
    v = json_object_get(conf->root, "exclude_namespaces");
    if (v) {
        size_t i;
        json_t *e;
        if (!json_is_array(v) || json_array_size(v) > CNI_EXCLUDE_MAX)
            return cni_fail(
                err, CNI_ERR_INVALID_CONFIG, NULL,
                "network configuration: \"exclude_namespaces\" must be an array of at most %d strings",
                CNI_EXCLUDE_MAX);
        json_array_foreach(v, i, e)
        {
            if (!json_is_string(e))
                return cni_fail(err, CNI_ERR_INVALID_CONFIG, NULL,
                                "network configuration: \"exclude_namespaces\"[%zu] must be a string", i);
            conf->exclude_namespaces[conf->n_exclude++] = json_string_value(e);
        }
    }

    /* Unknown keys warn instead of failing: a runtime or a newer spec adds keys to every plugin's
     * configuration, and refusing them would stop pods from starting after a runtime upgrade. */
    static const char *const own[] = {"cniVersion", "name",         "type",          "prevResult",
                                      "fail_open",  "agent_socket", "agent_timeout", "exclude_namespaces"};
    const char *key;
    json_object_foreach(conf->root, key, v)
    {
        bool known = is_spec_unused_key(key);
        for (size_t i = 0; i < sizeof(own) / sizeof(own[0]) && !known; i++)
            known = strcmp(key, own[i]) == 0;
        if (!known && warn)
            fprintf(warn, "zmesh-cni: warning: network configuration key \"%.64s\" is unknown and ignored\n",
                    key);
    }
    return 0;
}

void cni_conf_free(struct cni_conf *conf)
{
    json_decref(conf->root);
    conf->root = NULL;
}

/* True when every byte of s is printable ASCII other than a blank (true for an empty s). */
static bool printable_ascii(const char *s)
{
    for (; *s; s++)
        if (*s <= 0x20 || *s >= 0x7f) return false;
    return true;
}

int cni_args_parse(const char *s, struct cni_args *out, struct cni_err *err, FILE *warn)
{
    memset(out, 0, sizeof(*out));
    if (!s || !*s) return 0;
    size_t n = strlen(s);
    if (n > CNI_ARGS_MAX)
        return cni_fail(err, CNI_ERR_INVALID_ENV, NULL, "CNI_ARGS is over %d bytes", CNI_ARGS_MAX);
    char copy[CNI_ARGS_MAX + 1];
    memcpy(copy, s, n + 1);
    struct {
        const char *key;
        char *dst;
        bool seen;
    } keys[] = {
        {"K8S_POD_NAME", out->pod_name, false},
        {"K8S_POD_NAMESPACE", out->pod_namespace, false},
        {"K8S_POD_UID", out->pod_uid, false},
        {"K8S_POD_INFRA_CONTAINER_ID", out->infra_container_id, false},
    };
    bool ignore_unknown = false, seen_ignore = false;
    char *unknown[CNI_ARGS_MAX / 2];
    size_t n_unknown = 0;
    /* Pairs are K=V separated by ';' (SPEC.md "Parameters"); as libcni's LoadArgs, an empty pair is refused
     * and an unknown key is an error unless IgnoreUnknown is true. */
    for (char *p = copy, *pair; (pair = strsep(&p, ";")) != NULL;) {
        char *eq = strchr(pair, '=');
        if (!eq || eq == pair)
            return cni_fail(err, CNI_ERR_INVALID_ENV, NULL, "CNI_ARGS: \"%.64s\" is not KEY=VALUE", pair);
        *eq = '\0';
        const char *val = eq + 1;
        if (strlen(val) > CNI_ARG_VALUE_MAX)
            return cni_fail(err, CNI_ERR_INVALID_ENV, NULL, "CNI_ARGS: %.64s is over %d bytes", pair,
                            CNI_ARG_VALUE_MAX);
        /* Kubernetes names, namespaces and UIDs are ASCII; anything else would not survive the JSON message.
         */
        if (!printable_ascii(val) || !printable_ascii(pair))
            return cni_fail(err, CNI_ERR_INVALID_ENV, NULL,
                            "CNI_ARGS: %.64s holds a blank or a byte outside printable ASCII", pair);
        bool matched = false;
        for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
            if (strcmp(pair, keys[i].key) != 0) continue;
            if (keys[i].seen)
                return cni_fail(err, CNI_ERR_INVALID_ENV, NULL, "CNI_ARGS: %s given twice", keys[i].key);
            keys[i].seen = matched = true;
            strcpy(keys[i].dst, val);
        }
        if (matched) continue;
        if (strcmp(pair, "IgnoreUnknown") == 0) {
            if (seen_ignore)
                return cni_fail(err, CNI_ERR_INVALID_ENV, NULL, "CNI_ARGS: IgnoreUnknown given twice");
            seen_ignore = true;
            /* Go's strconv.ParseBool, which libcni uses for this key. */
            if (!strcmp(val, "1") || !strcmp(val, "t") || !strcmp(val, "T") || !strcmp(val, "true") ||
                !strcmp(val, "TRUE") || !strcmp(val, "True"))
                ignore_unknown = true;
            else if (!(!strcmp(val, "0") || !strcmp(val, "f") || !strcmp(val, "F") || !strcmp(val, "false") ||
                       !strcmp(val, "FALSE") || !strcmp(val, "False")))
                return cni_fail(err, CNI_ERR_INVALID_ENV, NULL, "CNI_ARGS: IgnoreUnknown=%.16s is not a bool",
                                val);
            continue;
        }
        unknown[n_unknown++] = pair;
    }
    for (size_t i = 0; i < n_unknown; i++) {
        if (!ignore_unknown)
            return cni_fail(err, CNI_ERR_INVALID_ENV, NULL,
                            "CNI_ARGS: unknown key %.64s (no IgnoreUnknown=1)", unknown[i]);
        if (warn)
            fprintf(warn, "zmesh-cni: warning: CNI_ARGS key %.64s is unknown and ignored (IgnoreUnknown)\n",
                    unknown[i]);
    }
    return 0;
}

/* The container ID's syntax (SPEC.md "Parameters": alphanumerics, then also '_', '.', '-'). */
static bool container_id_valid(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > CONTAINER_ID_MAX) return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        bool alnum = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
        if (!alnum && (i == 0 || (c != '_' && c != '.' && c != '-'))) return false;
    }
    return true;
}

/* An interface name Linux accepts (SPEC.md "Parameters": CNI_IFNAME). */
static bool ifname_valid(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > IFNAME_MAX || !strcmp(s, ".") || !strcmp(s, "..")) return false;
    for (size_t i = 0; i < n; i++)
        if (s[i] == '/' || s[i] == ':' || s[i] == ' ' || s[i] == '\t' || s[i] == '\n') return false;
    return true;
}

int cni_env_check(const struct cni_env *env, struct cni_err *err)
{
    bool add = !strcmp(env->command, "ADD"), check = !strcmp(env->command, "CHECK");
    if (!env->container_id || !*env->container_id)
        return cni_fail(err, CNI_ERR_INVALID_ENV, NULL, "CNI_CONTAINERID is required for %s", env->command);
    if (!container_id_valid(env->container_id))
        return cni_fail(err, CNI_ERR_INVALID_ENV, NULL,
                        "CNI_CONTAINERID \"%.64s\" is not a valid container id", env->container_id);
    if ((add || check) && (!env->netns || !*env->netns))
        return cni_fail(err, CNI_ERR_INVALID_ENV, NULL, "CNI_NETNS is required for %s", env->command);
    /* The path goes into the agent's JSON message: runtimes use ASCII paths (/var/run/netns/cni-<uuid>). */
    if (env->netns && !printable_ascii(env->netns))
        return cni_fail(err, CNI_ERR_INVALID_ENV, NULL,
                        "CNI_NETNS holds a blank or a byte outside printable ASCII");
    if (!env->ifname || !*env->ifname)
        return cni_fail(err, CNI_ERR_INVALID_ENV, NULL, "CNI_IFNAME is required for %s", env->command);
    if (!ifname_valid(env->ifname) || !printable_ascii(env->ifname))
        return cni_fail(err, CNI_ERR_INVALID_ENV, NULL, "CNI_IFNAME \"%.32s\" is not an interface name",
                        env->ifname);
    /* CNI_PATH and CNI_ARGS are optional for every command (SPEC.md "Parameters"); zmesh-cni delegates to no
     * other plugin, so it has no use for CNI_PATH. */
    return 0;
}

/* Copies s into dst with every byte outside printable ASCII as '?': a message quotes input (a CNI_ARGS key, a
 * configuration key or version) that may be invalid UTF-8, or be cut inside a UTF-8 sequence by its bound,
 * and jansson refuses to encode such a string, which left the runtime without an error object
 * (fuzz_cni_config). */
static void printable_copy(char *dst, size_t cap, const char *s)
{
    size_t i = 0;
    for (; s[i] && i + 1 < cap; i++)
        dst[i] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
    dst[i] = '\0';
}

char *cni_error_json(const struct cni_err *err, const char *cni_version)
{
    char msg[sizeof(err->msg)], details[sizeof(err->details)];
    printable_copy(msg, sizeof(msg), err->msg);
    printable_copy(details, sizeof(details), err->details);
    json_t *o = json_pack("{s:s, s:i, s:s}", "cniVersion", cni_version ? cni_version : CNI_SPEC_VERSION,
                          "code", (int)err->code, "msg", msg);
    if (!o) return NULL;
    if (details[0]) json_object_set_new(o, "details", json_string(details));
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return s;
}

char *cni_version_json(const char *requested)
{
    json_t *arr = json_array();
    for (size_t i = 0; i < N_SUPPORTED; i++)
        json_array_append_new(arr, json_string(supported_versions[i]));
    json_t *o = json_pack("{s:s, s:o}", "cniVersion",
                          requested && cni_version_supported(requested) ? requested : CNI_SPEC_VERSION,
                          "supportedVersions", arr);
    if (!o) return NULL;
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return s;
}

char *cni_result_json(const struct cni_conf *conf)
{
    if (conf->prev_result) return json_dumps(conf->prev_result, JSON_COMPACT);
    json_t *o = json_pack("{s:s}", "cniVersion", conf->cni_version);
    if (!o) return NULL;
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return s;
}

int cni_prev_ips(const struct cni_conf *conf, json_t **out, struct cni_err *err)
{
    json_t *arr = json_array();
    *out = NULL;
    if (!arr) return cni_fail(err, CNI_ERR_IO, NULL, "out of memory");
    json_t *ips = conf->prev_result ? json_object_get(conf->prev_result, "ips") : NULL;
    if (ips) {
        size_t i;
        json_t *e;
        if (!json_is_array(ips)) {
            json_decref(arr);
            return cni_fail(err, CNI_ERR_INVALID_CONFIG, NULL, "prevResult: \"ips\" must be an array");
        }
        json_array_foreach(ips, i, e)
        {
            json_t *a = json_is_object(e) ? json_object_get(e, "address") : NULL;
            if (!json_is_string(a)) {
                json_decref(arr);
                return cni_fail(err, CNI_ERR_INVALID_CONFIG, NULL,
                                "prevResult: ips[%zu].address must be a string", i);
            }
            json_array_append(arr, a);
        }
    }
    *out = arr;
    return 0;
}

char *cni_agent_msg(const char *event, const struct cni_env *env, const struct cni_args *args,
                    const struct cni_conf *conf, struct cni_err *err)
{
    json_t *ips;
    if (cni_prev_ips(conf, &ips, err) < 0) return NULL;
    json_t *o =
        json_pack("{s:i, s:s, s:s, s:s, s:s, s:{s:s, s:s, s:s}, s:s, s:o}", "version", 1, "event", event,
                  "container_id", env->container_id, "netns", env->netns ? env->netns : "", "ifname",
                  env->ifname, "pod", "name", args->pod_name, "namespace", args->pod_namespace, "uid",
                  args->pod_uid, "infra_container_id", args->infra_container_id, "ips", ips);
    if (!o) {
        cni_fail(err, CNI_ERR_IO, NULL, "failed to build the node agent message");
        return NULL;
    }
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (s && strlen(s) > CNI_AGENT_MSG_MAX) {
        free(s);
        cni_fail(err, CNI_ERR_INVALID_CONFIG, NULL, "node agent message over %d bytes", CNI_AGENT_MSG_MAX);
        return NULL;
    }
    return s;
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Waits for events on fd until the deadline; 0 when ready, -ETIMEDOUT or -errno. */
static int wait_fd(int fd, short events, uint64_t deadline)
{
    for (;;) {
        uint64_t now = now_ms();
        if (now >= deadline) return -ETIMEDOUT;
        struct pollfd p = {.fd = fd, .events = events};
        int r = poll(&p, 1, (int)(deadline - now));
        if (r > 0) return 0;
        if (r == 0) return -ETIMEDOUT;
        if (errno != EINTR) return -errno;
    }
}

int cni_agent_call(const char *path, const char *msg, uint64_t timeout_ms, struct cni_err *err)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    uint64_t deadline = now_ms() + timeout_ms;
    char ans[CNI_AGENT_MSG_MAX + 1];
    int rc = -1, fd = -1;
    ssize_t n;
    json_t *o = NULL;

    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
    fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        cni_fail(err, CNI_ERR_TRY_AGAIN, strerror(errno), "node agent socket: socket failed");
        goto out;
    }
    /* A non-blocking AF_UNIX connect never is in progress: EAGAIN means the agent's backlog is full (many
     * pods starting at once) and nothing is queued, so it is tried again every AGENT_CONNECT_RETRY_MS until
     * the deadline rather than failing (or failing open) a pod the agent would take a moment later. */
    for (;;) {
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0) break;
        int e = errno;
        if (e == EINTR) continue;
        uint64_t now = now_ms();
        if (e != EAGAIN || now >= deadline) {
            cni_fail(err, CNI_ERR_TRY_AGAIN, e == EAGAIN ? "backlog full until the deadline" : strerror(e),
                     "node agent unreachable at %s", path);
            goto out;
        }
        poll(NULL, 0,
             (int)(deadline - now < AGENT_CONNECT_RETRY_MS ? deadline - now : AGENT_CONNECT_RETRY_MS));
    }
    for (;;) {
        n = send(fd, msg, strlen(msg), MSG_NOSIGNAL);
        if (n >= 0) break;
        if ((errno != EAGAIN && errno != EINTR) || wait_fd(fd, POLLOUT, deadline) < 0) {
            cni_fail(err, CNI_ERR_TRY_AGAIN, errno == EAGAIN ? "send timed out" : strerror(errno),
                     "node agent at %s did not take the message", path);
            goto out;
        }
    }
    for (;;) {
        n = recv(fd, ans, sizeof(ans) - 1, MSG_TRUNC);
        if (n >= 0) break;
        int e = errno;
        if ((e != EAGAIN && e != EINTR) || wait_fd(fd, POLLIN, deadline) < 0) {
            cni_fail(err, CNI_ERR_TRY_AGAIN, e == EAGAIN ? "no answer in time" : strerror(e),
                     "node agent at %s did not answer", path);
            goto out;
        }
    }
    if (n == 0 || (size_t)n > sizeof(ans) - 1) {
        cni_fail(err, CNI_ERR_TRY_AGAIN, n == 0 ? "connection closed" : "answer too long",
                 "node agent at %s gave no valid answer", path);
        goto out;
    }
    ans[n] = '\0';
    o = json_loadb(ans, (size_t)n, 0, NULL);
    json_t *ok = json_is_object(o) ? json_object_get(o, "ok") : NULL;
    if (!json_is_boolean(ok)) {
        cni_fail(err, CNI_ERR_TRY_AGAIN, "answer is not {\"ok\": bool}",
                 "node agent at %s gave no valid answer", path);
        goto out;
    }
    if (json_is_false(ok)) {
        json_t *e = json_object_get(o, "error");
        cni_fail(err, CNI_ERR_AGENT_REFUSED, json_is_string(e) ? json_string_value(e) : "no reason given",
                 "node agent refused the pod");
        goto out;
    }
    rc = 0;
out:
    json_decref(o);
    if (fd >= 0) close(fd);
    return rc;
}

static int print_json(FILE *out, char *s)
{
    if (!s) return -1;
    fprintf(out, "%s\n", s);
    free(s);
    return fflush(out) == 0 ? 0 : -1;
}

static int fail_out(FILE *out, const struct cni_err *err, const char *version)
{
    print_json(out, cni_error_json(err, version));
    return 1;
}

static bool excluded(const struct cni_conf *conf, const char *ns)
{
    for (size_t i = 0; i < conf->n_exclude; i++)
        if (strcmp(conf->exclude_namespaces[i], ns) == 0) return true;
    return false;
}

/* Reports ADD or DEL to the agent. Returns 0 when the caller goes on (reported, skipped, or failed open),
 * -1 with err filled when the command must fail. */
static int report(const char *event, const struct cni_env *env, const struct cni_args *args,
                  const struct cni_conf *conf, struct cni_err *err, FILE *warn)
{
    if (!args->pod_name[0] || !args->pod_namespace[0]) {
        /* As Istio's plugin: without K8S_POD_NAME/NAMESPACE this is not a pod the mesh can know. */
        if (warn)
            fprintf(
                warn,
                "zmesh-cni: %s %s: no K8S_POD_NAME/K8S_POD_NAMESPACE in CNI_ARGS, not a pod: not reported\n",
                event, env->container_id);
        return 0;
    }
    if (excluded(conf, args->pod_namespace)) {
        if (warn)
            fprintf(warn, "zmesh-cni: %s %s/%s: namespace excluded, not reported\n", event,
                    args->pod_namespace, args->pod_name);
        return 0;
    }
    char *msg = cni_agent_msg(event, env, args, conf, err);
    if (!msg) return -1;
    int rc = cni_agent_call(conf->agent_socket, msg, conf->agent_timeout_ms, err);
    free(msg);
    if (rc == 0) return 0;
    /* DEL never fails because of the agent: a pod must always be deletable (SPEC.md: DEL should succeed when
     * there is nothing left to do). ADD fails only when fail_open is false. */
    if (!strcmp(event, "del") || conf->fail_open) {
        if (warn)
            fprintf(warn, "zmesh-cni: warning: %s %s/%s: %s (%s); %s\n", event, args->pod_namespace,
                    args->pod_name, err->msg, err->details,
                    !strcmp(event, "del") ? "DEL goes on" : "fail_open: the pod starts");
        return 0;
    }
    char why[sizeof(err->msg)];
    snprintf(why, sizeof(why), "%s", err->msg);
    snprintf(err->msg, sizeof(err->msg),
             "zmesh-cni ADD failed to report the pod to the node agent (fail_open is "
             "false): %.150s",
             why);
    return -1;
}

/* VERSION: the answer's cniVersion is the one on stdin (SPEC.md "Version") when zmesh-cni supports it, else
 * the newest it implements. Stdin may also be empty (the spec's VERSION section says nothing should be
 * passed). */
static int run_version(const char *in, size_t len, FILE *out, FILE *warn)
{
    const char *requested = NULL;
    json_t *o = NULL;
    size_t i = 0;
    while (i < len && (in[i] == ' ' || in[i] == '\t' || in[i] == '\n' || in[i] == '\r'))
        i++;
    if (i < len) {
        o = len <= CNI_STDIN_MAX ? json_loadb(in, len, 0, NULL) : NULL;
        json_t *v = json_is_object(o) ? json_object_get(o, "cniVersion") : NULL;
        if (json_is_string(v))
            requested = json_string_value(v);
        else if (warn)
            fprintf(warn,
                    "zmesh-cni: warning: VERSION: stdin is not {\"cniVersion\": string}; answering for %s\n",
                    CNI_SPEC_VERSION);
        if (requested && !cni_version_supported(requested) && warn)
            fprintf(warn, "zmesh-cni: warning: VERSION: cniVersion \"%.32s\" is not supported\n", requested);
    }
    int rc = print_json(out, cni_version_json(requested)) == 0 ? 0 : 1;
    json_decref(o);
    return rc;
}

int cni_run(const struct cni_env *env, const char *in, size_t len, FILE *out, FILE *warn)
{
    struct cni_err err = {0};
    struct cni_conf conf = {0};
    struct cni_args args;
    int status = 1;

    if (!env->command || !*env->command) {
        cni_fail(&err, CNI_ERR_INVALID_ENV, NULL, "CNI_COMMAND is not set");
        return fail_out(out, &err, NULL);
    }
    if (!strcmp(env->command, "VERSION")) return run_version(in, len, out, warn);
    bool add = !strcmp(env->command, "ADD"), del = !strcmp(env->command, "DEL"),
         check = !strcmp(env->command, "CHECK");
    if (!add && !del && !check) {
        cni_fail(&err, CNI_ERR_INVALID_ENV, "supported: ADD, DEL, CHECK, VERSION (spec 1.0; no STATUS or GC)",
                 "CNI_COMMAND \"%.32s\" is not supported", env->command);
        return fail_out(out, &err, NULL);
    }
    if (cni_conf_parse(in, len, &conf, &err, warn) < 0) {
        status = fail_out(
            out, &err, conf.cni_version && cni_version_supported(conf.cni_version) ? conf.cni_version : NULL);
        goto out;
    }
    if (cni_env_check(env, &err) < 0 || cni_args_parse(env->args, &args, &err, warn) < 0) {
        status = fail_out(out, &err, conf.cni_version);
        goto out;
    }
    if (add) {
        struct stat st;
        if (stat(env->netns, &st) < 0) {
            cni_fail(&err, CNI_ERR_UNKNOWN_CONTAINER, strerror(errno), "CNI_NETNS %.128s does not exist",
                     env->netns);
            status = fail_out(out, &err, conf.cni_version);
            goto out;
        }
        if (!conf.prev_result && warn)
            fprintf(warn, "zmesh-cni: warning: ADD without prevResult: zmesh-cni is meant to be chained; "
                          "the pod is reported without IPs\n");
        if (report("add", env, &args, &conf, &err, warn) < 0) {
            status = fail_out(out, &err, conf.cni_version);
            goto out;
        }
        status = print_json(out, cni_result_json(&conf)) == 0 ? 0 : 1;
    } else if (del) {
        if (report("del", env, &args, &conf, &err, warn) < 0) {
            status = fail_out(out, &err, conf.cni_version);
            goto out;
        }
        status = 0;
    } else {
        json_t *ips = NULL;
        /* SPEC.md "CHECK": the runtime passes the ADD's result as prevResult; a chained plugin needs it. */
        if (!conf.prev_result) {
            cni_fail(&err, CNI_ERR_INVALID_CONFIG, NULL, "CHECK needs prevResult");
            status = fail_out(out, &err, conf.cni_version);
            goto out;
        }
        if (cni_prev_ips(&conf, &ips, &err) < 0) {
            status = fail_out(out, &err, conf.cni_version);
            goto out;
        }
        json_decref(ips);
        status = 0;
    }
out:
    cni_conf_free(&conf);
    return status;
}
