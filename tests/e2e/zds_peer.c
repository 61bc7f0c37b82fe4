/* The C half of tests/e2e/test_zds.py: runs the ZDS client (src/ztunnel/zds.c) against a node agent played by
 * Python, with an owner that prints every callback on stdout, one line each, flushed:
 *   add <uid> ns=<namespace> name=<name> sa=<service account> ino=<netns inode> replace=<0|1> retry=<0|1>
 *   keep <uid> | del <uid> | snapshot [<stale uid> ...] | ready <0|1> (when readiness changes)
 *
 * usage: zds_peer <socket path> [--retry-ms N] [--backoff-max-ms N] [--delay-ms N] [--fail
 * <uid>:<n>:<reason>]
 *   --delay-ms  answer every callback N ms later, from a timer (asynchronous answers)
 *   --fail      NACK the first n adds of uid (retries included) with reason
 * Runs until killed. Not a cmocka binary: run-tests.sh runs only tests/test_*. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "core/loop.h"
#include "ztunnel/zds.h"

static struct loop *L;
static struct zds_client *C;
static uint64_t delay_ms;
static char fail_uid[256], fail_reason[256];
static long fail_left;

/* Answers held for --delay-ms, in order. */
#define HELD_MAX 64
static struct held {
    struct timer t;
    uint64_t ticket;
    char error[256];
    bool used;
} held[HELD_MAX];

static void held_cb(struct timer *t)
{
    struct held *h = container_of(t, struct held, t);
    h->used = false;
    int r = zds_reply(C, h->ticket, h->error[0] ? h->error : NULL);
    if (r < 0) printf("reply %llu: %s\n", (unsigned long long)h->ticket, strerror(-r));
    fflush(stdout);
}

static void reply(uint64_t ticket, const char *error)
{
    if (!delay_ms) {
        zds_reply(C, ticket, error);
        return;
    }
    for (int i = 0; i < HELD_MAX; i++) {
        if (held[i].used) continue;
        held[i].used = true;
        held[i].ticket = ticket;
        snprintf(held[i].error, sizeof held[i].error, "%s", error ? error : "");
        held[i].t.cb = held_cb;
        timer_start(L, &held[i].t, delay_ms);
        return;
    }
    fprintf(stderr, "zds_peer: more than %d answers held\n", HELD_MAX);
    exit(1);
}

static void on_add(void *ud, uint64_t ticket, const struct zds_add *a)
{
    printf("add %s ns=%s name=%s sa=%s ino=%llu replace=%d retry=%d\n", a->uid, a->namespace_, a->name,
           a->service_account, (unsigned long long)a->netns_ino, a->replace, a->retry);
    fflush(stdout);
    if (fail_left > 0 && strcmp(a->uid, fail_uid) == 0) {
        fail_left--;
        reply(ticket, fail_reason);
    } else {
        reply(ticket, NULL);
    }
}

static void on_keep(void *ud, uint64_t ticket, const char *uid)
{
    printf("keep %s\n", uid);
    fflush(stdout);
    reply(ticket, NULL);
}

static void on_del(void *ud, uint64_t ticket, const char *uid)
{
    printf("del %s\n", uid);
    fflush(stdout);
    reply(ticket, NULL);
}

static void on_snapshot(void *ud, uint64_t ticket, const char *const *stale, size_t n)
{
    printf("snapshot");
    for (size_t i = 0; i < n; i++)
        printf(" %s", stale[i]);
    printf("\n");
    fflush(stdout);
    reply(ticket, NULL);
}

static struct timer ready_timer;
static int last_ready = -1;

static void ready_cb(struct timer *t)
{
    int r = zds_client_ready(C);
    if (r != last_ready) {
        printf("ready %d\n", r);
        fflush(stdout);
        last_ready = r;
    }
    timer_start(L, t, 5);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: zds_peer <socket> [--retry-ms N] [--backoff-max-ms N] [--delay-ms N] "
                        "[--fail uid:n:reason]\n");
        return 2;
    }
    struct zds_config cfg = {.path = argv[1]};
    for (int i = 2; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--retry-ms") == 0) {
            cfg.retry_ms = strtoull(argv[i + 1], NULL, 10);
        } else if (strcmp(argv[i], "--backoff-max-ms") == 0) {
            cfg.backoff_max_ms = strtoull(argv[i + 1], NULL, 10);
        } else if (strcmp(argv[i], "--delay-ms") == 0) {
            delay_ms = strtoull(argv[i + 1], NULL, 10);
        } else if (strcmp(argv[i], "--fail") == 0) {
            if (sscanf(argv[i + 1], "%255[^:]:%ld:%255[^\n]", fail_uid, &fail_left, fail_reason) != 3) {
                fprintf(stderr, "zds_peer: --fail wants uid:n:reason\n");
                return 2;
            }
        } else {
            fprintf(stderr, "zds_peer: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    log_init(getenv("RUST_LOG") ? getenv("RUST_LOG") : "info", false);
    L = loop_new();
    static const struct zds_ops ops = {
        .add = on_add, .keep = on_keep, .del = on_del, .snapshot_sent = on_snapshot};
    int r = zds_client_new(L, &cfg, &ops, NULL, &C);
    if (r < 0) {
        fprintf(stderr, "zds_peer: %s\n", strerror(-r));
        return 1;
    }
    ready_timer.cb = ready_cb;
    timer_start(L, &ready_timer, 0);
    loop_run(L);
    return 0;
}
