/* Addresses and socket helpers shared by every layer. */
#pragma once
#include <stdbool.h>
#include <stdint.h>
#include <netinet/in.h>
#include <sys/socket.h>

/* An IPv4 or IPv6 address without a port. IPv4 is stored in a[0..3]. */
struct ip_addr {
    uint8_t family; /* AF_INET or AF_INET6; 0 = unset */
    uint8_t a[16];
};

/* An address and port in 20 bytes, for records kept per connection (a sockaddr_storage is 128). */
struct ip_port {
    struct ip_addr ip;
    uint16_t port;
};

/* Longest text form of "ip" or "[ip]:port", with NUL. */
#define IP_STRLEN 48
#define SOCKADDR_STRLEN 56

/* Parses a dotted IPv4 or an IPv6 literal (no brackets). Returns 0 or -EINVAL. */
int ip_parse(const char *s, struct ip_addr *out);
/* Formats into buf (>= IP_STRLEN). Returns buf. */
const char *ip_format(const struct ip_addr *ip, char *buf, size_t n);
bool ip_equal(const struct ip_addr *a, const struct ip_addr *b);
/* A hash of the address bytes, for hash tables. */
uint64_t ip_hash(const struct ip_addr *ip);

/* Converts between ip_addr+port and a sockaddr_storage. sockaddr_from returns its length. */
socklen_t sockaddr_from(struct sockaddr_storage *ss, const struct ip_addr *ip, uint16_t port);
void sockaddr_to(const struct sockaddr_storage *ss, struct ip_addr *ip, uint16_t *port);
/* "ip:port" or "[ip]:port" into buf (>= SOCKADDR_STRLEN). Returns buf. */
const char *sockaddr_format(const struct sockaddr_storage *ss, char *buf, size_t n);
/* The ip_port of a sockaddr_storage. */
struct ip_port ip_port_of(const struct sockaddr_storage *ss);
/* "ip:port" or "[ip]:port" into buf (>= SOCKADDR_STRLEN). Returns buf. */
const char *ip_port_format(const struct ip_port *ap, char *buf, size_t n);
/* Splits s[0..len) as Go's host:port: "host:port" (host without ':') or "[host]:port" (brackets removed), the
 * port 1-5 digits, at most 65535; the host may be empty. Copies the host with a NUL into host[0..hn), sets
 * *port and *bracketed. Callers add their own rules (an IP, a non-empty host, port 0). Returns 0 or -EINVAL. */
int hostport_split(const char *s, size_t len, char *host, size_t hn, unsigned *port, bool *bracketed);
/* Parses an HTTP authority "ip:port" / "[ip6]:port". Returns 0 or -EINVAL. */
int authority_parse(const char *s, size_t len, struct ip_addr *ip, uint16_t *port);

/* Socket helpers; all return 0 or -errno. */
int net_set_nonblock(int fd);
int net_set_nodelay(int fd);
/* TCP keepalive as Istio's ztunnel: 180 s idle, 180 s interval, 9 probes. */
int net_set_keepalive(int fd);
int net_set_mark(int fd, uint32_t mark);
/* Listens on the wildcard address (v6 dual-stack if available, else v4) with SO_REUSEPORT.
 * Returns the fd or -errno. */
int net_listen(uint16_t port, int backlog, bool transparent);
/* Listens on 127.0.0.1 (and only there). Returns fd or -errno. */
int net_listen_local(uint16_t port, int backlog);
/* A non-blocking listening socket bound to ss (IPv4 or IPv6; an IPv6 wildcard takes IPv4 too). Returns the fd
 * or -errno. */
int net_listen_addr(const struct sockaddr_storage *ss, int backlog);
/* Network namespaces. A thread may enter another namespace only to create sockets there: a socket stays in
 * the namespace it was created in, whatever thread uses it later.
 * net_netns_open_self: an fd (close-on-exec) for the calling thread's namespace, or -errno.
 * net_netns_enter: makes fd the calling thread's namespace. Returns 0 or -errno.
 * net_socket_in: socket(domain, type, protocol) in netns_fd (-1: the caller's own, no switch), entering it
 * and returning to home_fd (the caller's own namespace) around the call; a failure to return is fatal (the
 * thread would serve traffic in a pod's namespace). Returns the fd or -errno. */
int net_netns_open_self(void);
int net_netns_enter(int fd);
int net_socket_in(int netns_fd, int home_fd, int domain, int type, int protocol);
/* Original destination of a REDIRECTed connection (SO_ORIGINAL_DST, then IP6T_SO_ORIGINAL_DST,
 * then the local address). Returns 0 or -errno. */
int net_original_dst(int fd, struct sockaddr_storage *out);
