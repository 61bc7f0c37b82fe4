/* A small blocking HTTP/1.1 GET client for the zmesh command: one request per plain TCP connection, one
 * deadline for the whole exchange, a bound on the body, the response parsed with llhttp. */
#ifndef ZMESH_CLI_HTTP_GET_H
#define ZMESH_CLI_HTTP_GET_H

#include <stdbool.h>
#include <stddef.h>

struct http_get_resp {
    int status; /* HTTP status code */
    char *body; /* malloc'd, NUL-terminated; the caller frees it */
    size_t len; /* body length, not counting the NUL */
    /* The TCP connection was made; set on failure too, to tell "unreachable" from "not an admin's answer". */
    bool connected;
};

/* GET http://host:port<path>. host is a name or an IP (IPv6 without brackets). The whole exchange must end
 * within timeout_ms and the body may not exceed max_body bytes. Returns 0 with *out filled (the caller frees
 * out->body), or -errno: -ECONNREFUSED, -ETIMEDOUT, -EHOSTUNREACH ..., -EFBIG (body over max_body),
 * -EPROTO (not a valid HTTP/1.1 response), -ECONNRESET (closed before any response), -ENOENT (host does not
 * resolve). err gets a one-line reason. */
int http_get(const char *host, const char *port, const char *path, int timeout_ms, size_t max_body,
             struct http_get_resp *out, char *err, size_t errlen);

#endif
