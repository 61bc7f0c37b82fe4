/* The remote CA client (src/xds/ca_client.c) against zmeshd's own CA server (src/zmeshd/server.c), in one
 * process: zmeshd's daemon and gRPC port on a loop in a thread, the client's blocking fetch (a private loop) and
 * its asynchronous fetch (the caller's loop, as the identity manager uses it) in the test's thread, over real
 * TLS on loopback. Checked: the certificate is for the identity asked, chained to zmeshd's root, with the TTL
 * asked; a wrong token, a token of another identity and an unreachable CA fail with the CA's status in the
 * error, never with a certificate. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "xds/ca_client.h"
#include "zmeshd/daemon.h"
#include "zmeshd/server.h"

static char tmp[64], manifests[128], state_dir[128], root[160], token_file[160];

struct srv {
    struct loop *l;
    struct zmeshd *d;
    struct zmeshd_server *s;
    pthread_t t;
    struct io stop_io;
    int stop_fd;
    uint16_t port;
};
static struct srv S;

static void stop_cb(struct io *io, uint32_t ev)
{
    (void)ev;
    uint64_t v;
    (void)read(io->fd, &v, sizeof(v));
    loop_stop(S.l);
}

static void *srv_main(void *arg)
{
    (void)arg;
    loop_run(S.l);
    return NULL;
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static int group_setup(void **state)
{
    (void)state;
    char err[512];
    signal(SIGPIPE, SIG_IGN);
    snprintf(tmp, sizeof(tmp), "/tmp/zmesh-caclient-XXXXXX");
    if (!mkdtemp(tmp)) return -1;
    snprintf(manifests, sizeof(manifests), "%s/manifests", tmp);
    snprintf(state_dir, sizeof(state_dir), "%s/state", tmp);
    snprintf(root, sizeof(root), "%s/root-cert.pem", state_dir);
    snprintf(token_file, sizeof(token_file), "%s/token", tmp);
    if (mkdir(manifests, 0700) < 0) return -1;
    char path[200];
    snprintf(path, sizeof(path), "%s/pods.yaml", manifests);
    write_file(path, "apiVersion: v1\nkind: Pod\nmetadata: {name: web-1, namespace: demo}\n"
                     "spec: {nodeName: node1, serviceAccountName: web}\nstatus: {phase: Running, podIP: 10.0.0.5}\n");
    S.l = loop_new();
    struct zmeshd_config cfg = {.manifests = manifests, .state_dir = state_dir, .listen = "127.0.0.1:0"};
    if (zmeshd_new(S.l, &cfg, &S.d, err, sizeof(err)) < 0 || zmeshd_start(S.d, err, sizeof(err)) < 0 ||
        zmeshd_server_new(S.l, S.d, &S.s, err, sizeof(err)) < 0) {
        fprintf(stderr, "zmeshd: %s\n", err);
        return -1;
    }
    S.port = zmeshd_server_port(S.s);
    S.stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    S.stop_io = (struct io){.fd = S.stop_fd, .cb = stop_cb};
    loop_io_add(S.l, &S.stop_io, EPOLLIN);
    return pthread_create(&S.t, NULL, srv_main, NULL) == 0 ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    uint64_t one = 1;
    (void)write(S.stop_fd, &one, sizeof(one));
    pthread_join(S.t, NULL);
    zmeshd_server_free(S.s);
    loop_run_tasks(S.l);
    zmeshd_free(S.d);
    loop_run_tasks(S.l);
    loop_io_del(S.l, &S.stop_io);
    close(S.stop_fd);
    loop_free(S.l);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmp);
    return system(cmd) == 0 ? 0 : -1;
}

/* A token for ns/sa signed with the state directory's key (as `zmeshd token`), written to token_file. */
static void mint_token(const char *ns, const char *sa)
{
    char *tok = NULL, err[256];
    struct token_subject sub = {.ns = ns, .sa = sa};
    assert_int_equal(zmeshd_token_mint(state_dir, &sub, 3600, &tok, err, sizeof(err)), 0);
    write_file(token_file, tok);
    free(tok);
}

static struct cert_provider *client(uint16_t port, const char *token)
{
    char addr[64], err[512];
    snprintf(addr, sizeof(addr), "https://127.0.0.1:%u", port);
    struct ca_client_opts o = {
        .endpoint = {.address = addr, .roots = root, .alt_hostname = "istiod.istio-system.svc", .token = token,
                     .cluster_id = "Kubernetes"},
        .ttl_s = 7200,
        .timeout_ms = 3000,
    };
    struct cert_provider *p = ca_client_new(&o, err, sizeof(err));
    if (!p) fail_msg("ca_client_new: %s", err);
    return p;
}

static struct spiffe_id web_id(void)
{
    struct spiffe_id id;
    assert_int_equal(spiffe_set(&id, "cluster.local", "demo", "web"), 0);
    return id;
}

static void test_blocking_fetch(void **state)
{
    (void)state;
    char err[512];
    mint_token("demo", "web");
    struct cert_provider *p = client(S.port, token_file);
    struct spiffe_id id = web_id();
    struct tls_cert *c = p->fetch(p, &id, err, sizeof(err));
    if (!c) fail_msg("fetch: %s", err);
    assert_string_equal(c->uri, "spiffe://cluster.local/ns/demo/sa/web");
    /* The asked TTL (istiod backdates by 2 minutes). */
    assert_true(c->not_after - c->not_before >= 7200 && c->not_after - c->not_before <= 7200 + 180);
    tls_cert_unref(c);
    /* The token file is read for every request: another account's token now asks for web in vain. */
    mint_token("demo", "db");
    assert_null(p->fetch(p, &id, err, sizeof(err)));
    assert_non_null(strstr(err, "the leaf is for spiffe://cluster.local/ns/demo/sa/db"));
    p->destroy(p);
}

static void test_refusals(void **state)
{
    (void)state;
    char err[512];
    struct spiffe_id id = web_id();
    struct cert_provider *p = client(S.port, "not-a-jwt");
    assert_null(p->fetch(p, &id, err, sizeof(err)));
    assert_non_null(strstr(err, "UNAUTHENTICATED"));
    p->destroy(p);
    /* Nothing listens there: UNAVAILABLE (a connect failure), not a hang. */
    p = client(1, "not-a-jwt");
    assert_null(p->fetch(p, &id, err, sizeof(err)));
    assert_non_null(strstr(err, "UNAVAILABLE"));
    p->destroy(p);
}

struct async_wait {
    struct loop *l;
    struct tls_cert *c;
    char err[512];
    int calls;
};

static void async_done(void *ud, struct tls_cert *c, const char *err)
{
    struct async_wait *w = ud;
    w->calls++;
    w->c = c;
    if (!c) snprintf(w->err, sizeof(w->err), "%s", err);
    loop_stop(w->l);
}

static void test_async_fetch_twice_on_one_channel(void **state)
{
    (void)state;
    mint_token("demo", "web");
    struct cert_provider *p = client(S.port, token_file);
    struct spiffe_id id = web_id();
    struct async_wait w = {.l = loop_new()};
    for (int i = 0; i < 2; i++) {
        w.calls = 0;
        assert_int_equal(p->fetch_async(p, w.l, &id, async_done, &w), 0);
        assert_int_equal(w.calls, 0); /* never from inside fetch_async */
        loop_run(w.l);
        assert_int_equal(w.calls, 1);
        if (!w.c) fail_msg("fetch_async: %s", w.err);
        assert_string_equal(w.c->uri, "spiffe://cluster.local/ns/demo/sa/web");
        tls_cert_unref(w.c);
    }
    p->destroy(p);
    loop_run_tasks(w.l);
    loop_free(w.l);
}

/* CA_ADDRESS as Istio takes it (https:// or no scheme), and what zmesh refuses, naming the setting. */
static void test_addresses(void **state)
{
    (void)state;
    static const struct {
        const char *addr, *err;
    } cases[] = {
        {"https://127.0.0.1:15012", NULL},
        {"127.0.0.1:15012", NULL},
        {"https://[::1]:15012", NULL},
        {"https://istiod.istio-system.svc:15012/", NULL},
        {"http://127.0.0.1:15012", "CA_ADDRESS: only https:// addresses are supported"},
        {"https://istiod", "CA_ADDRESS: expected https://host:port"},
        {"https://::1:15012", "CA_ADDRESS: expected https://host:port"},
        {"https://:15012", "CA_ADDRESS: expected https://host:port"},
        {"https://h:0", "CA_ADDRESS: expected https://host:port"},
        {"https://h:65536", "CA_ADDRESS: expected https://host:port"},
        {"https://h:15012/path", "CA_ADDRESS: an address has no path"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char err[512] = "";
        struct ca_client_opts o = {.endpoint = {.address = cases[i].addr, .roots = root, .token = "t"}};
        struct cert_provider *p = ca_client_new(&o, err, sizeof(err));
        if (!cases[i].err) {
            if (!p) fail_msg("%s: %s", cases[i].addr, err);
            p->destroy(p);
        } else {
            assert_null(p);
            if (!strstr(err, cases[i].err)) fail_msg("%s: got \"%s\"", cases[i].addr, err);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_addresses),
        cmocka_unit_test(test_blocking_fetch),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_async_fetch_twice_on_one_channel),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
