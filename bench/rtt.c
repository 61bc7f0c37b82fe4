/*
 * zm-rtt: 1-byte TCP round-trip latency probe used by bench/run.sh.
 *
 *   zm-rtt server <port>                  echo every byte back, any number of connections
 *   zm-rtt client <ip> <port> <count>     <count> sequential 1-byte ping-pongs on one connection
 *
 * The client first does RTT_WARMUP untimed round trips (these fill connection pools, grow proxy
 * buffers and warm caches), then times <count> round trips with CLOCK_MONOTONIC and prints one line:
 *   rtt count=<n> p50_us=<x> p99_us=<x> mean_us=<x> min_us=<x> max_us=<x>
 * Both sides set TCP_NODELAY so that a 1-byte write is never held back by Nagle's algorithm.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RTT_WARMUP 1000
#define RTT_MAX_COUNT 10000000L
#define RTT_MAX_CONNS 64
#define RTT_IO_TIMEOUT_MS 10000

static void rtt_nodelay(int fd)
{
    int one = 1;

    /* Failure only costs latency, which the figures would show; not worth aborting for. */
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static double rtt_now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

/* Parses a decimal port; returns it or -EINVAL. */
static int rtt_parse_port(const char *s)
{
    char *end = NULL;
    long v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < 1 || v > 65535)
        return -EINVAL;
    return (int)v;
}

/* Runs the echo server forever; returns a negative errno only if the listener cannot be set up. */
static int rtt_server(int port)
{
    struct pollfd pfd[RTT_MAX_CONNS + 1];
    struct sockaddr_in6 addr;
    int nfds = 1, one = 1, zero = 0, ret = 0;
    int lfd;

    lfd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (lfd < 0)
        return -errno;
    /* Dual-stack so the same server answers IPv4 and IPv6 clients. */
    (void)setsockopt(lfd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
    (void)setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    memset(&addr, 0, sizeof(addr));
    addr.sin6_family = AF_INET6;
    addr.sin6_addr = in6addr_any;
    addr.sin6_port = htons((uint16_t)port);
    if (bind(lfd, (struct sockaddr *)&addr, sizeof(addr)) < 0 || listen(lfd, 128) < 0) {
        ret = -errno;
        goto out;
    }
    pfd[0].fd = lfd;
    pfd[0].events = POLLIN;
    fprintf(stderr, "zm-rtt: echo server listening on port %d\n", port);

    for (;;) {
        if (poll(pfd, (nfds_t)nfds, -1) < 0) {
            if (errno == EINTR)
                continue;
            ret = -errno;
            goto out;
        }
        for (int i = nfds - 1; i >= 1; i--) {
            char buf[4096];
            ssize_t n;

            if (!(pfd[i].revents & (POLLIN | POLLERR | POLLHUP)))
                continue;
            n = read(pfd[i].fd, buf, sizeof(buf));
            if (n > 0) {
                /* Replies are tiny; a blocking write of what was read keeps the server simple. */
                ssize_t off = 0;
                while (off < n) {
                    ssize_t w = write(pfd[i].fd, buf + off, (size_t)(n - off));
                    if (w <= 0)
                        break;
                    off += w;
                }
                if (off == n)
                    continue;
            } else if (n < 0 && (errno == EINTR || errno == EAGAIN)) {
                continue;
            }
            close(pfd[i].fd);
            pfd[i] = pfd[--nfds];
        }
        if (pfd[0].revents & POLLIN) {
            int cfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);

            if (cfd < 0)
                continue;
            if (nfds > RTT_MAX_CONNS) {
                close(cfd);
                continue;
            }
            rtt_nodelay(cfd);
            pfd[nfds].fd = cfd;
            pfd[nfds].events = POLLIN;
            pfd[nfds].revents = 0;
            nfds++;
        }
    }
out:
    close(lfd);
    return ret;
}

static int rtt_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return (x > y) - (x < y);
}

/* One ping-pong; returns 0 or a negative errno (-ECONNRESET when the peer closed, -ETIMEDOUT). */
static int rtt_ping(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    char c = 'x';
    ssize_t n;

    if (write(fd, &c, 1) != 1)
        return errno ? -errno : -EIO;
    for (;;) {
        n = read(fd, &c, 1);
        if (n == 1)
            return 0;
        if (n == 0)
            return -ECONNRESET;
        if (errno == EINTR)
            continue;
        if (errno != EAGAIN)
            return -errno;
        /* Only reached if a timeout made the socket non-blocking; kept for robustness. */
        if (poll(&p, 1, RTT_IO_TIMEOUT_MS) <= 0)
            return -ETIMEDOUT;
    }
}

/* Connects and measures; prints the summary line. Returns 0 or a negative errno. */
static int rtt_client(const char *ip, int port, long count)
{
    struct timeval tv = {.tv_sec = RTT_IO_TIMEOUT_MS / 1000};
    struct sockaddr_storage ss;
    socklen_t sslen;
    double *samples = NULL, sum = 0;
    int fd = -1, ret = 0;

    memset(&ss, 0, sizeof(ss));
    if (inet_pton(AF_INET, ip, &((struct sockaddr_in *)&ss)->sin_addr) == 1) {
        ((struct sockaddr_in *)&ss)->sin_family = AF_INET;
        ((struct sockaddr_in *)&ss)->sin_port = htons((uint16_t)port);
        sslen = sizeof(struct sockaddr_in);
    } else if (inet_pton(AF_INET6, ip, &((struct sockaddr_in6 *)&ss)->sin6_addr) == 1) {
        ((struct sockaddr_in6 *)&ss)->sin6_family = AF_INET6;
        ((struct sockaddr_in6 *)&ss)->sin6_port = htons((uint16_t)port);
        sslen = sizeof(struct sockaddr_in6);
    } else {
        fprintf(stderr, "zm-rtt: bad address '%s'\n", ip);
        return -EINVAL;
    }

    samples = calloc((size_t)count, sizeof(*samples));
    if (!samples)
        return -ENOMEM;
    fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        ret = -errno;
        goto out;
    }
    rtt_nodelay(fd);
    /* A stuck proxy must not hang the benchmark forever. */
    (void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    (void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (connect(fd, (struct sockaddr *)&ss, sslen) < 0) {
        ret = -errno;
        fprintf(stderr, "zm-rtt: connect %s:%d: %s\n", ip, port, strerror(errno));
        goto out;
    }
    for (int i = 0; i < RTT_WARMUP; i++) {
        ret = rtt_ping(fd);
        if (ret < 0) {
            fprintf(stderr, "zm-rtt: warm-up round trip %d: %s\n", i, strerror(-ret));
            goto out;
        }
    }
    for (long i = 0; i < count; i++) {
        double t0 = rtt_now_us();

        ret = rtt_ping(fd);
        if (ret < 0) {
            fprintf(stderr, "zm-rtt: round trip %ld: %s\n", i, strerror(-ret));
            goto out;
        }
        samples[i] = rtt_now_us() - t0;
        sum += samples[i];
    }
    qsort(samples, (size_t)count, sizeof(*samples), rtt_cmp_double);
    /* Nearest-rank percentiles: the smallest sample with at least p% of samples at or below it. */
    {
        long i50 = (count * 50 + 99) / 100 - 1, i99 = (count * 99 + 99) / 100 - 1;

        printf("rtt count=%ld p50_us=%.2f p99_us=%.2f mean_us=%.2f min_us=%.2f max_us=%.2f\n", count,
               samples[i50 < 0 ? 0 : i50], samples[i99 < 0 ? 0 : i99], sum / (double)count, samples[0],
               samples[count - 1]);
    }
    fflush(stdout);
out:
    if (fd >= 0)
        close(fd);
    free(samples);
    return ret;
}

static void rtt_usage(void)
{
    fprintf(stderr, "usage: zm-rtt server <port>\n"
                    "       zm-rtt client <ip> <port> <count>\n");
}

int main(int argc, char **argv)
{
    int port;

    /* A client that vanishes mid-write must not kill the echo server. */
    signal(SIGPIPE, SIG_IGN);
    if (argc == 3 && !strcmp(argv[1], "server")) {
        port = rtt_parse_port(argv[2]);
        if (port < 0) {
            rtt_usage();
            return 2;
        }
        int ret = rtt_server(port);
        fprintf(stderr, "zm-rtt: server: %s\n", strerror(-ret));
        return 1;
    }
    if (argc == 5 && !strcmp(argv[1], "client")) {
        char *end = NULL;
        long count = strtol(argv[4], &end, 10);

        port = rtt_parse_port(argv[3]);
        if (port < 0 || end == argv[4] || *end || count < 1 || count > RTT_MAX_COUNT) {
            rtt_usage();
            return 2;
        }
        return rtt_client(argv[2], port, count) < 0 ? 1 : 0;
    }
    rtt_usage();
    return 2;
}
