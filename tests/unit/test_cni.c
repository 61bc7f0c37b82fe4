/* Unit tests for zmesh-cni's plugin logic (src/cni/plugin.c): network configuration parsing, CNI_ARGS, the
 * environment check, result passthrough, the spec's error objects, and whole commands through cni_run with a
 * node agent on a socketpair-free SOCK_SEQPACKET listener in a thread (and with none: fail-open/closed). */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <cmocka.h>

#include "cni/plugin.h"

#define PREV                                                                                                 \
    "{\"cniVersion\":\"1.0.0\",\"interfaces\":[{\"name\":\"eth0\"}],\"ips\":[{\"address\":\"10.22.0.5/16\"," \
    "\"gateway\":\"10.22.0.1\",\"interface\":0},{\"address\":\"fd00::5/64\"}],\"dns\":{}}"

static int parse(const char *text, struct cni_conf *conf, struct cni_err *err)
{
    return cni_conf_parse(text, strlen(text), conf, err, NULL);
}

/* ---- network configuration ---- */

static void test_conf_defaults(void **state)
{
    struct cni_conf c;
    struct cni_err e = {0};
    assert_int_equal(parse("{\"cniVersion\":\"1.0.0\",\"name\":\"k8s\",\"type\":\"zmesh-cni\"}", &c, &e), 0);
    assert_string_equal(c.cni_version, "1.0.0");
    assert_string_equal(c.name, "k8s");
    assert_string_equal(c.agent_socket, CNI_DEFAULT_AGENT_SOCKET);
    assert_true(c.fail_open);
    assert_int_equal(c.agent_timeout_ms, CNI_DEFAULT_AGENT_TIMEOUT_MS);
    assert_null(c.prev_result);
    assert_int_equal(c.n_exclude, 0);
    cni_conf_free(&c);
}

static void test_conf_own_keys(void **state)
{
    struct cni_conf c;
    struct cni_err e = {0};
    assert_int_equal(
        parse("{\"cniVersion\":\"0.4.0\",\"name\":\"n\",\"type\":\"zmesh-cni\",\"fail_open\":false,"
              "\"agent_socket\":\"/run/a.sock\",\"agent_timeout\":\"1m\",\"exclude_namespaces\":"
              "[\"kube-system\",\"x\"],\"prevResult\":" PREV ",\"runtimeConfig\":{},\"capabilities\":{}}",
              &c, &e),
        0);
    assert_false(c.fail_open);
    assert_string_equal(c.agent_socket, "/run/a.sock");
    assert_int_equal(c.agent_timeout_ms, 60000);
    assert_int_equal(c.n_exclude, 2);
    assert_string_equal(c.exclude_namespaces[1], "x");
    assert_non_null(c.prev_result);
    cni_conf_free(&c);
}

struct bad {
    const char *text;
    int code;
    const char *needle;
};

static const struct bad bad_confs[] = {
    {"", CNI_ERR_DECODE, "decode"},
    {"{\"cniVersion\":", CNI_ERR_DECODE, "decode"},
    {"[]", CNI_ERR_INVALID_CONFIG, "object"},
    {"{\"name\":\"n\",\"type\":\"t\"}", CNI_ERR_INVALID_CONFIG, "cniVersion"},
    {"{\"cniVersion\":\"1.0.0\",\"type\":\"t\"}", CNI_ERR_INVALID_CONFIG, "\"name\""},
    {"{\"cniVersion\":\"1.0.0\",\"name\":\"n\"}", CNI_ERR_INVALID_CONFIG, "\"type\""},
    {"{\"cniVersion\":1,\"name\":\"n\",\"type\":\"t\"}", CNI_ERR_INVALID_CONFIG, "string"},
    {"{\"cniVersion\":\"0.2.0\",\"name\":\"n\",\"type\":\"t\"}", CNI_ERR_INCOMPATIBLE_VERSION, "0.2.0"},
    {"{\"cniVersion\":\"1.1.0\",\"name\":\"n\",\"type\":\"t\"}", CNI_ERR_INCOMPATIBLE_VERSION, "1.1.0"},
    {"{\"cniVersion\":\"1.0.0\",\"name\":\"n\",\"type\":\"t\",\"name\":\"m\"}", CNI_ERR_DECODE, "decode"},
    {"{\"cniVersion\":\"1.0.0\",\"name\":\"n\",\"type\":\"t\",\"fail_open\":\"no\"}", CNI_ERR_INVALID_CONFIG,
     "fail_open"},
    {"{\"cniVersion\":\"1.0.0\",\"name\":\"n\",\"type\":\"t\",\"agent_socket\":\"rel.sock\"}",
     CNI_ERR_INVALID_CONFIG, "agent_socket"},
    {"{\"cniVersion\":\"1.0.0\",\"name\":\"n\",\"type\":\"t\",\"agent_timeout\":\"5 parsecs\"}",
     CNI_ERR_INVALID_CONFIG, "agent_timeout"},
    {"{\"cniVersion\":\"1.0.0\",\"name\":\"n\",\"type\":\"t\",\"agent_timeout\":\"2m\"}",
     CNI_ERR_INVALID_CONFIG, "agent_timeout"},
    {"{\"cniVersion\":\"1.0.0\",\"name\":\"n\",\"type\":\"t\",\"agent_timeout\":\"0s\"}",
     CNI_ERR_INVALID_CONFIG, "agent_timeout"},
    {"{\"cniVersion\":\"1.0.0\",\"name\":\"n\",\"type\":\"t\",\"exclude_namespaces\":[1]}",
     CNI_ERR_INVALID_CONFIG, "exclude_namespaces"},
    {"{\"cniVersion\":\"1.0.0\",\"name\":\"n\",\"type\":\"t\",\"prevResult\":[]}", CNI_ERR_INVALID_CONFIG,
     "prevResult"},
    /* jansson refuses \u0000 unless asked (JSON_ALLOW_NUL), so a NUL never reaches a C string. */
    {"{\"cniVersion\":\"1.0.0\",\"name\":\"n\\u0000x\",\"type\":\"t\"}", CNI_ERR_DECODE, "decode"},
};

static void test_conf_errors(void **state)
{
    for (size_t i = 0; i < sizeof(bad_confs) / sizeof(bad_confs[0]); i++) {
        struct cni_conf c;
        struct cni_err e = {0};
        int rc = parse(bad_confs[i].text, &c, &e);
        cni_conf_free(&c);
        if (rc != -1 || (int)e.code != bad_confs[i].code || !strstr(e.msg, bad_confs[i].needle))
            fail_msg("conf %zu (%s): rc %d code %d msg \"%s\"", i, bad_confs[i].text, rc, e.code, e.msg);
    }
}

static void test_conf_unknown_key_warns(void **state)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *w = open_memstream(&buf, &len);
    struct cni_conf c;
    struct cni_err e = {0};
    const char *t =
        "{\"cniVersion\":\"1.0.0\",\"name\":\"n\",\"type\":\"t\",\"agent_sock\":\"/x\",\"ipam\":{}}";
    assert_int_equal(cni_conf_parse(t, strlen(t), &c, &e, w), 0);
    fclose(w);
    assert_non_null(strstr(buf, "\"agent_sock\" is unknown"));
    assert_null(strstr(buf, "ipam")); /* a spec key other plugins use is no surprise */
    free(buf);
    cni_conf_free(&c);
    w = open_memstream(&buf, &len);
    t = "{\"cniVersion\":\"1.0.0\",\"name\":\"n\",\"type\":\"t\",\"prevResult\":{\"cniVersion\":\"0.4.0\"}}";
    assert_int_equal(cni_conf_parse(t, strlen(t), &c, &e, w), 0);
    fclose(w);
    assert_non_null(strstr(buf, "prevResult's cniVersion differs"));
    free(buf);
    cni_conf_free(&c);
}

static void test_conf_size_bound(void **state)
{
    size_t n = CNI_STDIN_MAX + 1;
    char *big = malloc(n);
    memset(big, ' ', n);
    struct cni_conf c;
    struct cni_err e = {0};
    assert_int_equal(cni_conf_parse(big, n, &c, &e, NULL), -1);
    assert_int_equal(e.code, CNI_ERR_INVALID_CONFIG);
    assert_non_null(strstr(e.msg, "over"));
    cni_conf_free(&c);
    free(big);
}

/* ---- CNI_ARGS ---- */

static void test_args_k8s(void **state)
{
    struct cni_args a;
    struct cni_err e = {0};
    assert_int_equal(cni_args_parse("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;"
                                    "K8S_POD_INFRA_CONTAINER_ID=abc123;K8S_POD_UID=1234-5678",
                                    &a, &e, NULL),
                     0);
    assert_string_equal(a.pod_name, "web-0");
    assert_string_equal(a.pod_namespace, "default");
    assert_string_equal(a.pod_uid, "1234-5678");
    assert_string_equal(a.infra_container_id, "abc123");
    assert_int_equal(cni_args_parse(NULL, &a, &e, NULL), 0);
    assert_string_equal(a.pod_name, "");
    assert_int_equal(cni_args_parse("K8S_POD_NAME=a=b", &a, &e, NULL), 0);
    assert_string_equal(a.pod_name, "a=b"); /* the value is everything after the first '=' */
}

static void test_args_unknown(void **state)
{
    struct cni_args a;
    struct cni_err e = {0};
    assert_int_equal(cni_args_parse("K8S_POD_NAME=p;FOO=bar", &a, &e, NULL), -1);
    assert_int_equal(e.code, CNI_ERR_INVALID_ENV);
    assert_non_null(strstr(e.msg, "FOO"));
    char *buf = NULL;
    size_t len = 0;
    FILE *w = open_memstream(&buf, &len);
    assert_int_equal(cni_args_parse("FOO=bar;IgnoreUnknown=true;K8S_POD_NAME=p", &a, &e, w), 0);
    fclose(w);
    assert_string_equal(a.pod_name, "p");
    assert_non_null(strstr(buf, "FOO"));
    free(buf);
    assert_int_equal(cni_args_parse("FOO=bar;IgnoreUnknown=0", &a, &e, NULL), -1);
}

static void test_args_errors(void **state)
{
    static const char *const bad[] = {
        "K8S_POD_NAME",
        "=x",
        "K8S_POD_NAME=a;;K8S_POD_NAMESPACE=b",
        "K8S_POD_NAME=a;",
        "K8S_POD_NAME=a;K8S_POD_NAME=b",
        "IgnoreUnknown=yes",
        "IgnoreUnknown=1;IgnoreUnknown=1",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct cni_args a;
        struct cni_err e = {0};
        if (cni_args_parse(bad[i], &a, &e, NULL) != -1 || e.code != CNI_ERR_INVALID_ENV)
            fail_msg("CNI_ARGS \"%s\" was accepted", bad[i]);
    }
    char longv[CNI_ARG_VALUE_MAX + 32] = "K8S_POD_NAME=";
    memset(longv + 13, 'a', CNI_ARG_VALUE_MAX + 1);
    longv[13 + CNI_ARG_VALUE_MAX + 1] = '\0';
    struct cni_args a;
    struct cni_err e = {0};
    assert_int_equal(cni_args_parse(longv, &a, &e, NULL), -1);
    longv[13 + CNI_ARG_VALUE_MAX] = '\0';
    assert_int_equal(cni_args_parse(longv, &a, &e, NULL), 0);
    assert_int_equal(strlen(a.pod_name), CNI_ARG_VALUE_MAX);
}

/* ---- environment ---- */

static void test_env_check(void **state)
{
    struct cni_err e = {0};
    struct cni_env ok = {"ADD", "c0ffee", "/proc/self/ns/net", "eth0", NULL, "/usr/lib/cni"};
    assert_int_equal(cni_env_check(&ok, &e), 0);
    struct cni_env del = ok;
    del.command = "DEL";
    del.netns = NULL; /* optional for DEL (SPEC.md) */
    del.path = NULL;  /* optional for every command */
    assert_int_equal(cni_env_check(&del, &e), 0);
    struct cni_env v[] = {ok, ok, ok, ok, ok, ok, ok};
    v[0].container_id = NULL;
    v[1].container_id = "-abc";
    v[2].netns = "";
    v[3].ifname = "averyveryverylongif";
    v[4].ifname = "eth/0";
    v[5].netns = "/var/run/netns/a b";
    v[6].container_id = "abc def";
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        memset(&e, 0, sizeof(e));
        if (cni_env_check(&v[i], &e) != -1 || e.code != CNI_ERR_INVALID_ENV)
            fail_msg("environment %zu was accepted", i);
    }
}

/* ---- output ---- */

static void test_version_and_error_json(void **state)
{
    char *s = cni_version_json(NULL);
    json_t *o = json_loads(s, 0, NULL);
    free(s);
    assert_string_equal(json_string_value(json_object_get(o, "cniVersion")), "1.0.0");
    json_t *sv = json_object_get(o, "supportedVersions");
    assert_int_equal(json_array_size(sv), 4);
    assert_string_equal(json_string_value(json_array_get(sv, 3)), "1.0.0");
    json_decref(o);
    s = cni_version_json("0.4.0"); /* the requested version is echoed (SPEC.md "Version") */
    assert_non_null(strstr(s, "{\"cniVersion\":\"0.4.0\""));
    free(s);
    s = cni_version_json("9.9.9"); /* unsupported: the newest implemented */
    assert_non_null(strstr(s, "{\"cniVersion\":\"1.0.0\""));
    free(s);

    struct cni_err e = {0};
    cni_fail(&e, CNI_ERR_TRY_AGAIN, "connection refused", "agent at %s", "/x");
    s = cni_error_json(&e, "0.4.0");
    o = json_loads(s, 0, NULL);
    free(s);
    assert_int_equal(json_integer_value(json_object_get(o, "code")), 11);
    assert_string_equal(json_string_value(json_object_get(o, "msg")), "agent at /x");
    assert_string_equal(json_string_value(json_object_get(o, "details")), "connection refused");
    assert_string_equal(json_string_value(json_object_get(o, "cniVersion")), "0.4.0");
    json_decref(o);
    cni_fail(&e, CNI_ERR_DECODE, NULL, "bad");
    s = cni_error_json(&e, NULL);
    o = json_loads(s, 0, NULL);
    free(s);
    assert_null(json_object_get(o, "details")); /* details is optional and left out when empty */
    json_decref(o);
}

/* fuzz_cni_config found that a message quoting invalid UTF-8 (an unknown CNI_ARGS key) made jansson refuse
 * the error object, so the runtime got an empty stdout: such bytes now print as '?', and CNI_ARGS values and
 * CNI_NETNS must be printable ASCII. */
static void test_error_json_invalid_utf8(void **state)
{
    struct cni_err e = {0};
    cni_fail(&e, CNI_ERR_INVALID_ENV, "d\xff",
             "CNI_ARGS: unknown key \xf5"
             "K8S");
    char *s = cni_error_json(&e, NULL);
    assert_non_null(s);
    json_t *o = json_loads(s, 0, NULL);
    free(s);
    assert_string_equal(json_string_value(json_object_get(o, "msg")), "CNI_ARGS: unknown key ?K8S");
    assert_string_equal(json_string_value(json_object_get(o, "details")), "d?");
    json_decref(o);
    struct cni_args a;
    assert_int_equal(cni_args_parse("K8S_POD_NAME=w\xc3\xa9"
                                    "b",
                                    &a, &e, NULL),
                     -1);
    assert_int_equal(e.code, CNI_ERR_INVALID_ENV);
    assert_int_equal(cni_args_parse("K8S_POD_NAME=a b", &a, &e, NULL), -1);
    struct cni_env env = {"ADD", "c0ffee", "/var/run/netns/\x01", "eth0", NULL, "/usr/lib/cni"};
    assert_int_equal(cni_env_check(&env, &e), -1);
}

static void test_result_passthrough(void **state)
{
    struct cni_conf c;
    struct cni_err e = {0};
    assert_int_equal(
        parse("{\"cniVersion\":\"1.0.0\",\"name\":\"n\",\"type\":\"t\",\"prevResult\":" PREV "}", &c, &e), 0);
    char *s = cni_result_json(&c);
    json_t *got = json_loads(s, 0, NULL), *want = json_loads(PREV, 0, NULL);
    free(s);
    assert_true(json_equal(got, want));
    json_decref(got);
    json_decref(want);
    json_t *ips;
    assert_int_equal(cni_prev_ips(&c, &ips, &e), 0);
    assert_int_equal(json_array_size(ips), 2);
    assert_string_equal(json_string_value(json_array_get(ips, 0)), "10.22.0.5/16");
    assert_string_equal(json_string_value(json_array_get(ips, 1)), "fd00::5/64");
    json_decref(ips);
    cni_conf_free(&c);

    assert_int_equal(parse("{\"cniVersion\":\"0.4.0\",\"name\":\"n\",\"type\":\"t\"}", &c, &e), 0);
    s = cni_result_json(&c);
    assert_string_equal(s, "{\"cniVersion\":\"0.4.0\"}");
    free(s);
    cni_conf_free(&c);

    assert_int_equal(
        parse("{\"cniVersion\":\"1.0.0\",\"name\":\"n\",\"type\":\"t\",\"prevResult\":{\"ips\":[{}]}}", &c,
              &e),
        0);
    assert_int_equal(cni_prev_ips(&c, &ips, &e), -1);
    assert_int_equal(e.code, CNI_ERR_INVALID_CONFIG);
    cni_conf_free(&c);
}

/* ---- whole commands, with a node agent in a thread ---- */

struct agent {
    char path[108];
    int lfd;
    char got[5][CNI_AGENT_MSG_MAX + 1];
    int n_got;
    const char *answer;
};

static void *agent_main(void *arg)
{
    struct agent *a = arg;
    for (int i = 0; i < a->n_got; i++) {
        int fd = accept(a->lfd, NULL, NULL);
        if (fd < 0) return NULL;
        ssize_t n = recv(fd, a->got[i], CNI_AGENT_MSG_MAX, 0);
        a->got[i][n > 0 ? n : 0] = '\0';
        send(fd, a->answer, strlen(a->answer), MSG_NOSIGNAL);
        close(fd);
    }
    return NULL;
}

static void agent_start(struct agent *a, pthread_t *t, int n, const char *answer)
{
    memset(a, 0, sizeof(*a));
    snprintf(a->path, sizeof(a->path), "/tmp/zmesh-test-cni-%d.sock", (int)getpid());
    unlink(a->path);
    a->lfd = socket(AF_UNIX, SOCK_SEQPACKET, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    strcpy(sa.sun_path, a->path);
    assert_int_equal(bind(a->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(a->lfd, 4), 0);
    a->n_got = n;
    a->answer = answer;
    assert_int_equal(pthread_create(t, NULL, agent_main, a), 0);
}

static void agent_stop(struct agent *a, pthread_t t)
{
    pthread_join(t, NULL);
    close(a->lfd);
    unlink(a->path);
}

/* Runs one command with a config naming `sock`; returns the status and stores stdout in *out (caller frees).
 */
static int run(const char *cmd, const char *sock, const char *extra, char **out)
{
    char conf[4096];
    snprintf(conf, sizeof(conf),
             "{\"cniVersion\":\"1.0.0\",\"name\":\"n\",\"type\":\"zmesh-cni\",\"agent_socket\":\"%s\","
             "\"agent_timeout\":\"2s\"%s,\"prevResult\":" PREV "}",
             sock, extra);
    struct cni_env env = {cmd,
                          "c0ffee",
                          "/proc/self/ns/net",
                          "eth0",
                          "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=web-0;K8S_POD_UID=u-1",
                          "/usr/lib/cni"};
    size_t len = 0;
    FILE *f = open_memstream(out, &len);
    int rc = cni_run(&env, conf, strlen(conf), f, NULL);
    fclose(f);
    return rc;
}

static void test_run_add_del_reported(void **state)
{
    struct agent a;
    pthread_t t;
    agent_start(&a, &t, 2, "{\"ok\":true}");
    char *out;
    assert_int_equal(run("ADD", a.path, "", &out), 0);
    json_t *got = json_loads(out, 0, NULL), *want = json_loads(PREV, 0, NULL);
    assert_true(json_equal(got, want));
    json_decref(got);
    json_decref(want);
    free(out);
    assert_int_equal(run("DEL", a.path, "", &out), 0);
    assert_string_equal(out, ""); /* DEL prints nothing on success */
    free(out);
    agent_stop(&a, t);

    json_t *m = json_loads(a.got[0], 0, NULL);
    assert_non_null(m);
    assert_string_equal(json_string_value(json_object_get(m, "event")), "add");
    assert_string_equal(json_string_value(json_object_get(m, "netns")), "/proc/self/ns/net");
    assert_string_equal(json_string_value(json_object_get(m, "container_id")), "c0ffee");
    json_t *pod = json_object_get(m, "pod");
    assert_string_equal(json_string_value(json_object_get(pod, "name")), "web-0");
    assert_string_equal(json_string_value(json_object_get(pod, "namespace")), "ns1");
    assert_string_equal(json_string_value(json_object_get(pod, "uid")), "u-1");
    assert_string_equal(json_string_value(json_array_get(json_object_get(m, "ips"), 1)), "fd00::5/64");
    json_decref(m);
    m = json_loads(a.got[1], 0, NULL);
    assert_string_equal(json_string_value(json_object_get(m, "event")), "del");
    json_decref(m);
}

static void test_run_agent_down(void **state)
{
    char *out;
    const char *nowhere = "/tmp/zmesh-test-cni-nowhere.sock";
    unlink(nowhere);
    assert_int_equal(run("ADD", nowhere, "", &out), 0); /* fail-open: the pod starts */
    assert_non_null(strstr(out, "10.22.0.5/16"));
    free(out);
    assert_int_equal(run("ADD", nowhere, ",\"fail_open\":false", &out), 1);
    json_t *o = json_loads(out, 0, NULL);
    free(out);
    assert_int_equal(json_integer_value(json_object_get(o, "code")), CNI_ERR_TRY_AGAIN);
    assert_non_null(strstr(json_string_value(json_object_get(o, "msg")), "fail_open is false"));
    json_decref(o);
    /* DEL never fails because of the agent, whatever fail_open says. */
    assert_int_equal(run("DEL", nowhere, ",\"fail_open\":false", &out), 0);
    free(out);
}

static void test_run_agent_refuses(void **state)
{
    struct agent a;
    pthread_t t;
    agent_start(&a, &t, 2, "{\"ok\":false,\"error\":\"no netns\"}");
    char *out;
    assert_int_equal(run("ADD", a.path, ",\"fail_open\":false", &out), 1);
    json_t *o = json_loads(out, 0, NULL);
    free(out);
    assert_int_equal(json_integer_value(json_object_get(o, "code")), CNI_ERR_AGENT_REFUSED);
    assert_string_equal(json_string_value(json_object_get(o, "details")), "no netns");
    json_decref(o);
    assert_int_equal(run("ADD", a.path, "", &out), 0);
    free(out);
    agent_stop(&a, t);
}

struct call {
    const char *path;
    uint64_t timeout_ms;
    int rc;
    struct cni_err err;
};

static void *call_main(void *arg)
{
    struct call *c = arg;
    c->rc = cni_agent_call(c->path, "{\"event\":\"add\"}", c->timeout_ms, &c->err);
    return NULL;
}

/* An agent whose listen backlog is full: the plugin retries connect until the agent accepts, within the
 * timeout, instead of reporting it unreachable. The backlog is filled by a connection the test makes itself
 * and that the agent thread takes first. */
static void test_agent_backlog_full(void **state)
{
    struct agent a;
    pthread_t t;
    memset(&a, 0, sizeof(a));
    snprintf(a.path, sizeof(a.path), "/tmp/zmesh-test-cni-bl-%d.sock", (int)getpid());
    unlink(a.path);
    a.lfd = socket(AF_UNIX, SOCK_SEQPACKET, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    strcpy(sa.sun_path, a.path);
    assert_int_equal(bind(a.lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(a.lfd, 0), 0);
    /* Fill the backlog: non-blocking connects until one says EAGAIN. */
    int fill[4], n_fill = 0;
    for (; n_fill < 4; n_fill++) {
        fill[n_fill] = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK, 0);
        if (connect(fill[n_fill], (struct sockaddr *)&sa, sizeof(sa)) < 0) {
            assert_int_equal(errno, EAGAIN);
            close(fill[n_fill]);
            break;
        }
        send(fill[n_fill], "{}", 2, 0);
    }
    assert_true(n_fill >= 1 && n_fill < 4);
    /* The plugin's call starts while the backlog is full; the agent starts accepting only 100 ms later (so
     * the retry path runs on any machine; a slower one only waits longer) and answers the fillers first. */
    struct call c = {.path = a.path, .timeout_ms = 5000};
    pthread_t ct;
    assert_int_equal(pthread_create(&ct, NULL, call_main, &c), 0);
    poll(NULL, 0, 100);
    a.n_got = n_fill + 1;
    a.answer = "{\"ok\":true}";
    assert_int_equal(pthread_create(&t, NULL, agent_main, &a), 0);
    pthread_join(ct, NULL);
    assert_int_equal(c.rc, 0);
    agent_stop(&a, t);
    assert_string_equal(a.got[n_fill], "{\"event\":\"add\"}");
    for (int i = 0; i < n_fill; i++)
        close(fill[i]);
}

static void test_run_check_and_errors(void **state)
{
    char *out;
    assert_int_equal(run("CHECK", "/tmp/unused.sock", "", &out), 0);
    assert_string_equal(out, "");
    free(out);
    struct cni_env env = {"CHECK", "c0ffee", "/proc/self/ns/net", "eth0", NULL, "/usr/lib/cni"};
    const char *noprev = "{\"cniVersion\":\"1.0.0\",\"name\":\"n\",\"type\":\"zmesh-cni\"}";
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);
    assert_int_equal(cni_run(&env, noprev, strlen(noprev), f, NULL), 1);
    fclose(f);
    assert_non_null(strstr(out, "\"code\":7"));
    assert_non_null(strstr(out, "prevResult"));
    free(out);
    env.command = "GC";
    f = open_memstream(&out, &len);
    assert_int_equal(cni_run(&env, noprev, strlen(noprev), f, NULL), 1);
    fclose(f);
    assert_non_null(strstr(out, "\"code\":4"));
    free(out);
    env.command = "ADD";
    env.netns = "/nonexistent/netns";
    f = open_memstream(&out, &len);
    assert_int_equal(cni_run(&env, noprev, strlen(noprev), f, NULL), 1);
    fclose(f);
    assert_non_null(strstr(out, "\"code\":3"));
    free(out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_conf_defaults),
        cmocka_unit_test(test_conf_own_keys),
        cmocka_unit_test(test_conf_errors),
        cmocka_unit_test(test_conf_unknown_key_warns),
        cmocka_unit_test(test_conf_size_bound),
        cmocka_unit_test(test_args_k8s),
        cmocka_unit_test(test_args_unknown),
        cmocka_unit_test(test_args_errors),
        cmocka_unit_test(test_env_check),
        cmocka_unit_test(test_version_and_error_json),
        cmocka_unit_test(test_error_json_invalid_utf8),
        cmocka_unit_test(test_result_passthrough),
        cmocka_unit_test(test_run_add_del_reported),
        cmocka_unit_test(test_run_agent_down),
        cmocka_unit_test(test_run_agent_refuses),
        cmocka_unit_test(test_agent_backlog_full),
        cmocka_unit_test(test_run_check_and_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
