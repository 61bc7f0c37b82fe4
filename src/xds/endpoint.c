/* Control-plane endpoints (see endpoint.h). */
#include "xds/endpoint.h"

#include <ctype.h>
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/net.h"
#include "tls/control.h"
#include "tls/pem.h"

struct xds_endpoint {
    char host[256];
    char authority[300];
    char port_str[8];
    char *verify_name;
    SSL_CTX *ctx;
    char *token_path;    /* re-read per call */
    char *token_literal; /* or this */
    char *cluster_id;
    uint32_t mark;
    struct grpc_md hdr[XDS_MAX_HEADERS];
    size_t n_hdr;
    /* The current call's metadata: extra headers, then clusterid and authorization. */
    struct grpc_md md[XDS_MAX_HEADERS + 2];
    char auth[XDS_TOKEN_MAX + 8];
};

/* "https://host:port", "host:port" or "[v6]:port" into host and port. Istio adds https:// when there is no
 * scheme; http:// would be plaintext, which zmesh does not speak to a control plane (tokens would travel in
 * the clear), so it is refused. */
static int parse_address(const char *addr, struct xds_endpoint *e, char *why, size_t wn)
{
    const char *a = addr;
    if (!strncmp(a, "https://", 8)) {
        a += 8;
    } else if (strstr(a, "://")) {
        snprintf(why, wn,
                 "only https:// addresses are supported (tokens must not travel in the clear), got \"%s\"",
                 addr);
        return -EINVAL;
    }
    size_t len = strcspn(a, "/");
    if (a[len] && strcmp(a + len, "/") != 0) {
        snprintf(why, wn, "an address has no path, got \"%s\"", addr);
        return -EINVAL;
    }
    unsigned p;
    bool v6;
    if (hostport_split(a, len, e->host, sizeof(e->host), &p, &v6) < 0 || !e->host[0] || p == 0) goto bad;
    snprintf(e->port_str, sizeof(e->port_str), "%hu", (unsigned short)p);
    snprintf(e->authority, sizeof(e->authority), "%s%s%s:%u", v6 ? "[" : "", e->host, v6 ? "]" : "", p);
    return 0;
bad:
    snprintf(why, wn, "expected https://host:port, got \"%s\"", addr);
    return -EINVAL;
}

int xds_endpoint_new(const struct xds_endpoint_opts *o, const char *err_prefix, struct xds_endpoint **out,
                     char *err, size_t errlen)
{
    char why[512];
    struct stat st;
    struct xds_endpoint *e = calloc(1, sizeof(*e));
    *out = NULL;
    if (!e) goto nomem;
    if (!o->address || !*o->address) {
        snprintf(err, errlen, "%s_ADDRESS: not set", err_prefix);
        goto fail;
    }
    if (parse_address(o->address, e, why, sizeof(why)) < 0) {
        snprintf(err, errlen, "%s_ADDRESS: %s", err_prefix, why);
        goto fail;
    }
    if (!(e->ctx = tls_control_client_ctx_new(o->roots, why, sizeof(why)))) {
        snprintf(err, errlen, "%s_ROOT_CA: %s", err_prefix, why);
        goto fail;
    }
    if (!(e->verify_name = strdup(o->alt_hostname && *o->alt_hostname ? o->alt_hostname : e->host)))
        goto nomem;
    if (o->token && *o->token) {
        if (stat(o->token, &st) == 0) {
            if (!(e->token_path = strdup(o->token))) goto nomem;
        } else if (!(e->token_literal = strdup(o->token))) {
            goto nomem;
        }
    } else if (stat(XDS_DEFAULT_TOKEN_PATH, &st) == 0 && !(e->token_path = strdup(XDS_DEFAULT_TOKEN_PATH))) {
        goto nomem;
    }
    if (o->cluster_id && *o->cluster_id && !(e->cluster_id = strdup(o->cluster_id))) goto nomem;
    e->mark = o->mark;
    /* XDS_HEADER_Foo_Bar=v becomes "foo_bar: v": the rest of the name, lower-cased as the HTTP library does
     * (config.rs parse_headers); a name or value that is not valid metadata is refused there too. */
    size_t pl = o->header_prefix ? strlen(o->header_prefix) : 0;
    for (char *const *v = o->envp; pl && v && *v; v++) {
        if (strncmp(*v, o->header_prefix, pl) != 0) continue;
        const char *eq = strchr(*v + pl, '=');
        if (!eq || eq == *v + pl) continue;
        if (e->n_hdr == XDS_MAX_HEADERS) {
            snprintf(err, errlen, "%s*: more than %d headers", o->header_prefix, XDS_MAX_HEADERS);
            goto fail;
        }
        char *name = strndup(*v + pl, (size_t)(eq - *v - pl));
        char *value = strdup(eq + 1);
        if (!name || !value) {
            free(name);
            free(value);
            goto nomem;
        }
        for (char *c = name; *c; c++)
            *c = (char)tolower((unsigned char)*c);
        e->hdr[e->n_hdr++] = (struct grpc_md){.name = name, .value = (uint8_t *)value, .len = strlen(value)};
        if (!grpc_md_name_valid(name, strlen(name)) || grpc_md_reserved(name, strlen(name))) {
            snprintf(err, errlen, "%s%.*s: not a usable gRPC metadata name", o->header_prefix,
                     (int)(eq - *v - pl), *v + pl);
            goto fail;
        }
        if (!grpc_md_value_valid(value, strlen(value))) {
            snprintf(err, errlen, "%s%s: the value must be printable ASCII", o->header_prefix, name);
            goto fail;
        }
    }
    *out = e;
    return 0;
nomem:
    snprintf(err, errlen, "out of memory");
    xds_endpoint_free(e);
    return -ENOMEM;
fail:
    xds_endpoint_free(e);
    return -EINVAL;
}

void xds_endpoint_free(struct xds_endpoint *e)
{
    if (!e) return;
    SSL_CTX_free(e->ctx);
    free(e->verify_name);
    free(e->token_path);
    free(e->token_literal);
    free(e->cluster_id);
    for (size_t i = 0; i < e->n_hdr; i++) {
        free((char *)e->hdr[i].name);
        free((uint8_t *)e->hdr[i].value);
    }
    free(e);
}

const char *xds_endpoint_authority(const struct xds_endpoint *e)
{
    return e->authority;
}

struct grpc_channel *xds_endpoint_dial(const struct xds_endpoint *e, struct loop *l,
                                       const struct grpc_opts *o, char *err, size_t errlen)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_ADDRCONFIG}, *res = NULL;
    int rc = getaddrinfo(e->host, e->port_str, &hints, &res);
    if (rc != 0 || !res) {
        snprintf(err, errlen, "resolve %s: %s", e->host, rc ? gai_strerror(rc) : "no address");
        return NULL;
    }
    struct sockaddr_storage ss = {0};
    memcpy(&ss, res->ai_addr, res->ai_addrlen < sizeof(ss) ? res->ai_addrlen : sizeof(ss));
    freeaddrinfo(res);
    const char *names[] = {e->verify_name};
    struct h2_peer peer = {.expected = names, .n_expected = 1};
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 || (e->mark && net_set_mark(fd, e->mark) < 0)) {
        snprintf(err, errlen, "connect %s: %s", e->authority, strerror(errno));
        if (fd >= 0) close(fd);
        return NULL;
    }
    net_set_nodelay(fd);
    socklen_t len = ss.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    /* A refused connect is the session's to report, so the call ends UNAVAILABLE like any other failure. */
    (void)connect(fd, (const struct sockaddr *)&ss, len);
    struct grpc_channel *ch = grpc_channel_new(l, fd, e->ctx, &peer, e->authority, o);
    if (!ch) snprintf(err, errlen, "connect %s: out of memory", e->authority);
    return ch;
}

/* Reads the token file whole into buf[0..n) (without trailing newlines or spaces). */
static int read_token(const char *path, char *buf, size_t n, char *err, size_t errlen)
{
    char *text = NULL, why[512];
    if (tls_read_text(path, XDS_TOKEN_MAX, &text, why, sizeof(why)) < 0) {
        snprintf(err, errlen, "token %s", why);
        return -EIO;
    }
    size_t len = strlen(text);
    while (len && (text[len - 1] == '\n' || text[len - 1] == '\r' || text[len - 1] == ' '))
        len--;
    if (!len || len >= n) {
        snprintf(err, errlen, "token %s: %s", path, len ? "too long" : "empty");
        free(text);
        return -EIO;
    }
    memcpy(buf, text, len);
    buf[len] = 0;
    free(text);
    return 0;
}

int xds_endpoint_metadata(struct xds_endpoint *e, const struct grpc_md **md, char *err, size_t errlen)
{
    size_t n = 0;
    for (size_t i = 0; i < e->n_hdr; i++)
        e->md[n++] = e->hdr[i];
    if (e->cluster_id)
        e->md[n++] = (struct grpc_md){
            .name = "clusterid", .value = (uint8_t *)e->cluster_id, .len = strlen(e->cluster_id)};
    if (e->token_path || e->token_literal) {
        memcpy(e->auth, "Bearer ", 7);
        if (e->token_path) {
            if (read_token(e->token_path, e->auth + 7, sizeof(e->auth) - 7, err, errlen) < 0) return -EIO;
        } else {
            snprintf(e->auth + 7, sizeof(e->auth) - 7, "%s", e->token_literal);
        }
        e->md[n++] =
            (struct grpc_md){.name = "authorization", .value = (uint8_t *)e->auth, .len = strlen(e->auth)};
    }
    *md = e->md;
    return (int)n;
}
