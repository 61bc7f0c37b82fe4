/*
 * conn_rate: connection-rate and idle-connection probe used by bench/conns.py.
 *
 *   conn_rate server <port>
 *       epoll echo server: echoes every byte back, closes on EOF or error, any number of connections
 *       (RLIMIT_NOFILE is raised to its hard limit at start).
 *   conn_rate client <ip> <port> <threads> <seconds>
 *       <threads> loops, each doing: connect, send 1 byte, receive it back, close with SO_LINGER 0; for
 *       <seconds>. Prints one line:
 *         conns ok=<n> errors=<n> seconds=<s> conns_per_s=<x> mean_us=<x> p50_us=<x> p99_us=<x>
 *   conn_rate hold <ip> <port> <count> [<parallel>]
 *       opens <count> connections, at most <parallel> (default 200) being set up at once, sends 1 byte
 *       through each and reads it back, then prints "held n=<count> errors=<n> seconds=<s>" and keeps every
 *       connection open until stdin reaches EOF (or SIGTERM); then closes them all with SO_LINGER 0.
 *
 * SO_LINGER 0 on the client's close sends RST instead of FIN, so no TIME_WAIT socket is left in the
 * client's namespace: a rate test otherwise runs out of ephemeral ports within a minute.
 * Standalone on purpose: it must measure the kernel and the proxies, not our own library.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CR_MAX_THREADS 64
#define CR_IO_TIMEOUT_S 5
#define CR_HIST_US 100000 /* latency histogram: 1 µs bins up to 100 ms, the rest in the last bin */
#define CR_MAX_HOLD 1000000

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Parses a decimal in [lo, hi]; returns it or -1. */
static long parse_num(const char *s, long lo, long hi)
{
    char *end = NULL;
    long v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi)
        return -1;
    return v;
}

/* Raises the soft RLIMIT_NOFILE to the hard limit; 10 000 held connections need more than 1024 fds. */
static void raise_nofile(void)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        (void)setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static void set_nodelay(int fd)
{
    int one = 1;

    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/* Closes with RST: the benchmark's client never leaves TIME_WAIT behind. */
static void close_rst(int fd)
{
    struct linger lg = {.l_onoff = 1, .l_linger = 0};

    (void)setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    close(fd);
}

/* ---------------------------------------------------------------------------------------------------- */
/* Server. */

static int run_server(int port)
{
    struct sockaddr_in6 addr;
    struct epoll_event ev, evs[256];
    int one = 1, zero = 0, ret = 0, lfd, ep = -1;

    raise_nofile();
    lfd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (lfd < 0)
        return -errno;
    (void)setsockopt(lfd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
    (void)setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    memset(&addr, 0, sizeof(addr));
    addr.sin6_family = AF_INET6;
    addr.sin6_addr = in6addr_any;
    addr.sin6_port = htons((uint16_t)port);
    /* A deep backlog: the rate test and the hold test both open connections in bursts. */
    if (bind(lfd, (struct sockaddr *)&addr, sizeof(addr)) < 0 || listen(lfd, 4096) < 0) {
        ret = -errno;
        goto out;
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) {
        ret = -errno;
        goto out;
    }
    ev.events = EPOLLIN;
    ev.data.fd = lfd;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) < 0) {
        ret = -errno;
        goto out;
    }
    fprintf(stderr, "conn_rate: echo server listening on port %d\n", port);
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);

        if (n < 0) {
            if (errno == EINTR)
                continue;
            ret = -errno;
            goto out;
        }
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;

            if (fd == lfd) {
                for (;;) {
                    int cfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);

                    if (cfd < 0)
                        break; /* EAGAIN, or out of fds: the next wake-up retries */
                    set_nodelay(cfd);
                    ev.events = EPOLLIN | EPOLLRDHUP;
                    ev.data.fd = cfd;
                    if (epoll_ctl(ep, EPOLL_CTL_ADD, cfd, &ev) < 0)
                        close(cfd);
                }
                continue;
            }
            char buf[4096];
            ssize_t r = read(fd, buf, sizeof(buf));

            if (r > 0) {
                /* Replies are tiny and the socket buffer is empty: one write does it, or we give up. */
                if (write(fd, buf, (size_t)r) == r)
                    continue;
            } else if (r < 0 && (errno == EAGAIN || errno == EINTR)) {
                continue;
            }
            close(fd); /* closing also removes it from the epoll set */
        }
    }
out:
    if (ep >= 0)
        close(ep);
    close(lfd);
    return ret;
}

/* ---------------------------------------------------------------------------------------------------- */
/* Rate client. */

struct rate_thread {
    pthread_t tid;
    struct sockaddr_in dst;
    double deadline;
    uint64_t ok, errors;
    double sum_us;
    uint32_t *hist; /* CR_HIST_US + 1 bins */
    int last_errno;
};

/* One connection: connect, 1 byte out, 1 byte back, close. Returns 0 or a negative errno. */
static int one_conn(const struct sockaddr_in *dst)
{
    struct timeval tv = {.tv_sec = CR_IO_TIMEOUT_S};
    char c = 'x';
    int err = 0;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    if (fd < 0)
        return -errno;
    /* SO_SNDTIMEO also bounds connect(); a stuck proxy shows as errors, not as a hang. */
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    set_nodelay(fd);
    if (connect(fd, (const struct sockaddr *)dst, sizeof(*dst)) < 0) {
        err = -errno;
        goto out;
    }
    if (write(fd, &c, 1) != 1) {
        err = errno ? -errno : -EIO;
        goto out;
    }
    ssize_t r = read(fd, &c, 1);
    if (r != 1)
        err = r == 0 ? -ECONNRESET : -errno;
out:
    close_rst(fd);
    return err;
}

static void *rate_main(void *arg)
{
    struct rate_thread *t = arg;

    while (now_s() < t->deadline) {
        double t0 = now_s();
        int rc = one_conn(&t->dst);
        double us = (now_s() - t0) * 1e6;

        if (rc < 0) {
            t->errors++;
            t->last_errno = -rc;
            /* Out of ports or refused: back off a little instead of spinning on the error. */
            usleep(1000);
            continue;
        }
        t->ok++;
        t->sum_us += us;
        t->hist[us >= CR_HIST_US ? CR_HIST_US : (uint32_t)us]++;
    }
    return NULL;
}

static double hist_pct(const uint64_t *hist, uint64_t total, double pct)
{
    uint64_t rank = (uint64_t)(pct / 100.0 * (double)total + 0.5), acc = 0;

    if (rank < 1)
        rank = 1;
    for (uint32_t i = 0; i <= CR_HIST_US; i++) {
        acc += hist[i];
        if (acc >= rank)
            return (double)i + 0.5;
    }
    return CR_HIST_US;
}

static int run_client(const char *ip, int port, int nthreads, int seconds)
{
    struct rate_thread th[CR_MAX_THREADS];
    struct sockaddr_in dst;
    uint64_t ok = 0, errors = 0, *hist;
    double sum_us = 0, t0, el;
    int last_errno = 0, ret = 0;

    memset(&dst, 0, sizeof(dst));
    dst.sin_family = AF_INET;
    dst.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, ip, &dst.sin_addr) != 1) {
        fprintf(stderr, "conn_rate: bad IPv4 address %s\n", ip);
        return -EINVAL;
    }
    hist = calloc(CR_HIST_US + 1, sizeof(*hist));
    if (!hist)
        return -ENOMEM;
    memset(th, 0, sizeof(th));
    t0 = now_s();
    for (int i = 0; i < nthreads; i++) {
        th[i].dst = dst;
        th[i].deadline = t0 + seconds;
        th[i].hist = calloc(CR_HIST_US + 1, sizeof(uint32_t));
        if (!th[i].hist || pthread_create(&th[i].tid, NULL, rate_main, &th[i]) != 0) {
            fprintf(stderr, "conn_rate: cannot start thread %d\n", i);
            exit(1);
        }
    }
    for (int i = 0; i < nthreads; i++) {
        pthread_join(th[i].tid, NULL);
        ok += th[i].ok;
        errors += th[i].errors;
        sum_us += th[i].sum_us;
        if (th[i].last_errno)
            last_errno = th[i].last_errno;
        for (uint32_t b = 0; b <= CR_HIST_US; b++)
            hist[b] += th[i].hist[b];
        free(th[i].hist);
    }
    el = now_s() - t0;
    printf("conns ok=%llu errors=%llu seconds=%.3f conns_per_s=%.1f mean_us=%.1f p50_us=%.1f p99_us=%.1f"
           " last_error=%s\n",
           (unsigned long long)ok, (unsigned long long)errors, el, (double)ok / el, ok ? sum_us / (double)ok : 0,
           ok ? hist_pct(hist, ok, 50) : 0, ok ? hist_pct(hist, ok, 99) : 0,
           last_errno ? strerror(last_errno) : "none");
    fflush(stdout);
    if (ok == 0)
        ret = -EIO;
    free(hist);
    return ret;
}

/* ---------------------------------------------------------------------------------------------------- */
/* Hold client: many idle connections, each proven end to end by one echoed byte. */

enum hold_state { H_CONNECTING, H_WAIT_ECHO, H_DONE, H_FAILED };

static volatile sig_atomic_t hold_stop;

static void on_term(int sig)
{
    (void)sig;
    hold_stop = 1;
}

static int run_hold(const char *ip, int port, long count, int parallel)
{
    struct sockaddr_in dst;
    struct epoll_event ev, evs[256];
    int *fds = NULL, ep = -1, ret = 0;
    unsigned char *state = NULL;
    long next = 0, active = 0, done = 0, failed = 0;
    double t0 = now_s(), deadline;

    memset(&dst, 0, sizeof(dst));
    dst.sin_family = AF_INET;
    dst.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, ip, &dst.sin_addr) != 1)
        return -EINVAL;
    raise_nofile();
    fds = calloc((size_t)count, sizeof(*fds));
    state = calloc((size_t)count, 1);
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (!fds || !state || ep < 0) {
        ret = -ENOMEM;
        goto out;
    }
    for (long i = 0; i < count; i++)
        fds[i] = -1;
    /* Generous: 10 000 connections through two proxies on a loaded 2-core VM. */
    deadline = t0 + 120;
    while (done + failed < count && now_s() < deadline) {
        while (next < count && active < parallel) {
            int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);

            if (fd < 0) {
                fprintf(stderr, "conn_rate: socket: %s\n", strerror(errno));
                state[next++] = H_FAILED;
                failed++;
                continue;
            }
            set_nodelay(fd);
            fds[next] = fd;
            if (connect(fd, (struct sockaddr *)&dst, sizeof(dst)) < 0 && errno != EINPROGRESS) {
                close(fd);
                fds[next] = -1;
                state[next++] = H_FAILED;
                failed++;
                continue;
            }
            state[next] = H_CONNECTING;
            ev.events = EPOLLOUT;
            ev.data.u64 = (uint64_t)next;
            (void)epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
            next++;
            active++;
        }
        int n = epoll_wait(ep, evs, 256, 200);
        for (int i = 0; i < n; i++) {
            long k = (long)evs[i].data.u64;
            int fd = fds[k], soerr = 0;
            socklen_t sl = sizeof(soerr);
            char c = 'h';

            if (state[k] == H_CONNECTING) {
                if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0 || soerr || write(fd, &c, 1) != 1)
                    goto fail;
                state[k] = H_WAIT_ECHO;
                ev.events = EPOLLIN;
                ev.data.u64 = (uint64_t)k;
                (void)epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
                continue;
            }
            if (read(fd, &c, 1) != 1 || c != 'h')
                goto fail;
            /* Proven end to end: out of the epoll set, and it just sits there. */
            (void)epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
            state[k] = H_DONE;
            done++;
            active--;
            continue;
        fail:
            (void)epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
            close_rst(fd);
            fds[k] = -1;
            state[k] = H_FAILED;
            failed++;
            active--;
        }
    }
    printf("held n=%ld errors=%ld seconds=%.3f\n", done, count - done, now_s() - t0);
    fflush(stdout);
    /* Hold until the driver closes our stdin (or signals us). */
    signal(SIGTERM, on_term);
    signal(SIGINT, on_term);
    while (!hold_stop) {
        struct pollfd p = {.fd = 0, .events = POLLIN};
        char b[64];

        if (poll(&p, 1, 500) > 0 && read(0, b, sizeof(b)) <= 0)
            break;
    }
    if (done < count)
        ret = -EIO;
out:
    if (fds) {
        for (long i = 0; i < count; i++)
            if (fds[i] >= 0)
                close_rst(fds[i]);
    }
    free(fds);
    free(state);
    if (ep >= 0)
        close(ep);
    return ret;
}

static void usage(void)
{
    fprintf(stderr, "usage: conn_rate server <port>\n"
                    "       conn_rate client <ip> <port> <threads> <seconds>\n"
                    "       conn_rate hold <ip> <port> <count> [<parallel>]\n");
}

int main(int argc, char **argv)
{
    long port, a, b;
    int rc;

    signal(SIGPIPE, SIG_IGN);
    if (argc == 3 && !strcmp(argv[1], "server")) {
        if ((port = parse_num(argv[2], 1, 65535)) < 0)
            goto bad;
        rc = run_server((int)port);
    } else if (argc == 6 && !strcmp(argv[1], "client")) {
        if ((port = parse_num(argv[3], 1, 65535)) < 0 || (a = parse_num(argv[4], 1, CR_MAX_THREADS)) < 0 ||
            (b = parse_num(argv[5], 1, 3600)) < 0)
            goto bad;
        rc = run_client(argv[2], (int)port, (int)a, (int)b);
    } else if ((argc == 5 || argc == 6) && !strcmp(argv[1], "hold")) {
        if ((port = parse_num(argv[3], 1, 65535)) < 0 || (a = parse_num(argv[4], 1, CR_MAX_HOLD)) < 0)
            goto bad;
        b = argc == 6 ? parse_num(argv[5], 1, 10000) : 200;
        if (b < 0)
            goto bad;
        rc = run_hold(argv[2], (int)port, a, (int)b);
    } else {
        goto bad;
    }
    if (rc < 0) {
        fprintf(stderr, "conn_rate %s: %s\n", argv[1], strerror(-rc));
        return 1;
    }
    return 0;
bad:
    usage();
    return 2;
}
