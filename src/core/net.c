/* Address parsing and socket helpers. */
#include "core/net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/netfilter_ipv4.h>
#include <linux/netfilter_ipv6/ip6_tables.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int ip_parse(const char *s, struct ip_addr *out)
{
    memset(out, 0, sizeof(*out));
    if (inet_pton(AF_INET, s, out->a) == 1) {
        out->family = AF_INET;
        return 0;
    }
    if (inet_pton(AF_INET6, s, out->a) == 1) {
        out->family = AF_INET6;
        return 0;
    }
    return -EINVAL;
}

const char *ip_format(const struct ip_addr *ip, char *buf, size_t n)
{
    if (!ip->family || !inet_ntop(ip->family, ip->a, buf, n)) snprintf(buf, n, "-");
    return buf;
}

bool ip_equal(const struct ip_addr *a, const struct ip_addr *b)
{
    if (a->family != b->family) return false;
    return memcmp(a->a, b->a, a->family == AF_INET ? 4 : 16) == 0;
}

uint64_t ip_hash(const struct ip_addr *ip)
{
    /* FNV-1a over the significant bytes, then a final mix so low bits are usable as a table index. */
    uint64_t h = 1469598103934665603ULL ^ ip->family;
    size_t n = ip->family == AF_INET ? 4 : 16;
    for (size_t i = 0; i < n; i++)
        h = (h ^ ip->a[i]) * 1099511628211ULL;
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ULL;
    h ^= h >> 32;
    return h;
}

socklen_t sockaddr_from(struct sockaddr_storage *ss, const struct ip_addr *ip, uint16_t port)
{
    memset(ss, 0, sizeof(*ss));
    if (ip->family == AF_INET) {
        struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
        s4->sin_family = AF_INET;
        s4->sin_port = htons(port);
        memcpy(&s4->sin_addr, ip->a, 4);
        return sizeof(*s4);
    }
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
    s6->sin6_family = AF_INET6;
    s6->sin6_port = htons(port);
    memcpy(&s6->sin6_addr, ip->a, 16);
    return sizeof(*s6);
}

void sockaddr_to(const struct sockaddr_storage *ss, struct ip_addr *ip, uint16_t *port)
{
    memset(ip, 0, sizeof(*ip));
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)ss;
        ip->family = AF_INET;
        memcpy(ip->a, &s4->sin_addr, 4);
        if (port) *port = ntohs(s4->sin_port);
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;
        /* A v4-mapped address on a dual-stack socket is reported as plain IPv4. */
        if (IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr)) {
            ip->family = AF_INET;
            memcpy(ip->a, &s6->sin6_addr.s6_addr[12], 4);
        } else {
            ip->family = AF_INET6;
            memcpy(ip->a, &s6->sin6_addr, 16);
        }
        if (port) *port = ntohs(s6->sin6_port);
    } else if (port) {
        *port = 0;
    }
}

struct ip_port ip_port_of(const struct sockaddr_storage *ss)
{
    struct ip_port ap;
    sockaddr_to(ss, &ap.ip, &ap.port);
    return ap;
}

const char *ip_port_format(const struct ip_port *ap, char *buf, size_t n)
{
    char tmp[IP_STRLEN];
    ip_format(&ap->ip, tmp, sizeof(tmp));
    if (ap->ip.family == AF_INET6)
        snprintf(buf, n, "[%s]:%u", tmp, ap->port);
    else
        snprintf(buf, n, "%s:%u", tmp, ap->port);
    return buf;
}

const char *sockaddr_format(const struct sockaddr_storage *ss, char *buf, size_t n)
{
    struct ip_port ap = ip_port_of(ss);
    return ip_port_format(&ap, buf, n);
}

int hostport_split(const char *s, size_t len, char *host, size_t hn, unsigned *port, bool *bracketed)
{
    const char *colon;
    size_t hlen;
    *bracketed = len && s[0] == '[';
    if (*bracketed) {
        const char *rb = memchr(s, ']', len);
        if (!rb || rb + 1 >= s + len || rb[1] != ':') return -EINVAL;
        hlen = (size_t)(rb - s - 1);
        if (hlen >= hn || memchr(s + 1, 0, hlen)) return -EINVAL;
        memcpy(host, s + 1, hlen);
        colon = rb + 1;
    } else {
        colon = memrchr(s, ':', len);
        if (!colon) return -EINVAL;
        hlen = (size_t)(colon - s);
        if (hlen >= hn || memchr(s, ':', hlen) || memchr(s, 0, hlen)) return -EINVAL;
        memcpy(host, s, hlen);
    }
    host[hlen] = 0;
    const char *p = colon + 1, *end = s + len;
    if (p == end || end - p > 5) return -EINVAL;
    unsigned v = 0;
    for (; p < end; p++) {
        if (*p < '0' || *p > '9') return -EINVAL;
        v = v * 10 + (unsigned)(*p - '0');
    }
    if (v > 65535) return -EINVAL;
    *port = v;
    return 0;
}

int authority_parse(const char *s, size_t len, struct ip_addr *ip, uint16_t *port)
{
    char host[IP_STRLEN];
    unsigned v;
    bool br;
    if (len == 0 || len >= 64) return -EINVAL;
    if (hostport_split(s, len, host, sizeof(host), &v, &br) < 0 || !host[0] || v == 0) return -EINVAL;
    if (ip_parse(host, ip) < 0) return -EINVAL;
    if (br && ip->family != AF_INET6) return -EINVAL;
    if (!br && ip->family != AF_INET) return -EINVAL;
    *port = (uint16_t)v;
    return 0;
}

int net_set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) return -errno;
    return 0;
}

int net_set_nodelay(int fd)
{
    int one = 1;
    return setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0 ? -errno : 0;
}

int net_set_keepalive(int fd)
{
    int one = 1, idle = 180, intvl = 180, cnt = 9;
    if (setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one)) < 0 ||
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle)) < 0 ||
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl)) < 0 ||
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt)) < 0)
        return -errno;
    return 0;
}

int net_set_mark(int fd, uint32_t mark)
{
    return setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) < 0 ? -errno : 0;
}

static int listen_on(int family, const struct sockaddr *sa, socklen_t len, int backlog, bool transparent)
{
    int one = 1, zero = 0, err;
    int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0)
        goto fail;
    if (family == AF_INET6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero)) < 0) goto fail;
    if (transparent) {
        /* Best effort, as in Istio: lets the listener accept connections addressed to non-local IPs. */
        if (family == AF_INET6)
            (void)setsockopt(fd, SOL_IPV6, IPV6_TRANSPARENT, &one, sizeof(one));
        else
            (void)setsockopt(fd, SOL_IP, IP_TRANSPARENT, &one, sizeof(one));
    }
    if (bind(fd, sa, len) < 0 || listen(fd, backlog) < 0) goto fail;
    return fd;
fail:
    err = -errno;
    close(fd);
    return err;
}

int net_listen(uint16_t port, int backlog, bool transparent)
{
    struct sockaddr_in6 s6 = {
        .sin6_family = AF_INET6, .sin6_port = htons(port), .sin6_addr = IN6ADDR_ANY_INIT};
    int fd = listen_on(AF_INET6, (struct sockaddr *)&s6, sizeof(s6), backlog, transparent);
    if (fd >= 0 || fd == -EADDRINUSE) return fd;
    /* No IPv6 in this namespace: fall back to IPv4 only. */
    struct sockaddr_in s4 = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr = {htonl(INADDR_ANY)}};
    return listen_on(AF_INET, (struct sockaddr *)&s4, sizeof(s4), backlog, transparent);
}

int net_listen_addr(const struct sockaddr_storage *ss, int backlog)
{
    socklen_t len = ss->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    return listen_on(ss->ss_family, (const struct sockaddr *)ss, len, backlog, false);
}

int net_listen_local(uint16_t port, int backlog)
{
    struct sockaddr_in s4 = {
        .sin_family = AF_INET, .sin_port = htons(port), .sin_addr = {htonl(INADDR_LOOPBACK)}};
    return listen_on(AF_INET, (struct sockaddr *)&s4, sizeof(s4), backlog, false);
}

int net_original_dst(int fd, struct sockaddr_storage *out)
{
    socklen_t len = sizeof(struct sockaddr_in);
    memset(out, 0, sizeof(*out));
    if (getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, out, &len) == 0) return 0;
    len = sizeof(struct sockaddr_in6);
    if (getsockopt(fd, SOL_IPV6, IP6T_SO_ORIGINAL_DST, out, &len) == 0) return 0;
    len = sizeof(*out);
    if (getsockname(fd, (struct sockaddr *)out, &len) == 0) return 0;
    return -errno;
}

int net_netns_open_self(void)
{
    int fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

int net_netns_enter(int fd)
{
    return setns(fd, CLONE_NEWNET) < 0 ? -errno : 0;
}

int net_socket_in(int netns_fd, int home_fd, int domain, int type, int protocol)
{
    if (netns_fd < 0) {
        int fd = socket(domain, type, protocol);
        return fd < 0 ? -errno : fd;
    }
    /* setns(CLONE_NEWNET) of one thread swaps a reference in the kernel: the pair costs 0.8-1.0 us on the
     * project's 2-core VM (socket()+close() alone: 1.7 us), less than handing a socket over from a helper
     * thread living in the namespace (a wake-up and an SCM_RIGHTS message each way). */
    int rc = net_netns_enter(netns_fd);
    if (rc < 0) return rc;
    int fd = socket(domain, type, protocol);
    int e = fd < 0 ? -errno : 0;
    if (net_netns_enter(home_fd) < 0) {
        /* Every later socket of this thread would land in the pod's namespace: stop rather than misroute. */
        fprintf(stderr, "fatal: cannot return to the home network namespace: %s\n", strerror(errno));
        abort();
    }
    return fd < 0 ? e : fd;
}
