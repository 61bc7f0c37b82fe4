/* Blocking HTTP/1.1 GET over a plain socket (see http_get.h). The command line needs one request at a time,
 * so this is a poll() loop against a deadline rather than the event loop the proxies use. */
#include "cli/http_get.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <llhttp.h>

/* Bytes read per recv(); the body buffer grows separately up to the caller's bound. */
#define HTTP_GET_READ_CHUNK 16384
/* The request line and headers zmesh sends: the path plus a few fixed headers. */
#define HTTP_GET_REQ_MAX 2048

struct get_state {
    struct http_get_resp *out;
    size_t cap, max_body;
    bool done, too_big;
};

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int ms_left(long long deadline)
{
    long long left = deadline - now_ms();
    return left > 0 ? (int)left : 0;
}

static int on_body(llhttp_t *p, const char *at, size_t n)
{
    struct get_state *st = p->data;
    struct http_get_resp *r = st->out;
    if (r->len + n > st->max_body) {
        st->too_big = true;
        return HPE_USER;
    }
    if (r->len + n + 1 > st->cap) {
        size_t ncap = st->cap ? st->cap : HTTP_GET_READ_CHUNK;
        while (ncap < r->len + n + 1)
            ncap *= 2;
        char *nb = realloc(r->body, ncap);
        if (!nb) return HPE_USER;
        r->body = nb;
        st->cap = ncap;
    }
    memcpy(r->body + r->len, at, n);
    r->len += n;
    r->body[r->len] = '\0';
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    struct get_state *st = p->data;
    st->out->status = llhttp_get_status_code(p);
    st->done = true;
    /* One response is all this client reads; stop so that trailing bytes are not parsed as another. */
    return HPE_PAUSED;
}

/* Connects fd to ai within the deadline. Returns 0 or -errno. */
static int connect_by(int fd, const struct addrinfo *ai, long long deadline)
{
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) return 0;
    if (errno != EINPROGRESS) return -errno;
    struct pollfd pfd = {.fd = fd, .events = POLLOUT};
    int n;
    do
        n = poll(&pfd, 1, ms_left(deadline));
    while (n < 0 && errno == EINTR);
    if (n < 0) return -errno;
    if (n == 0) return -ETIMEDOUT;
    int soerr = 0;
    socklen_t sl = sizeof(soerr);
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0) return -errno;
    return soerr ? -soerr : 0;
}

static int send_all(int fd, const char *p, size_t n, long long deadline)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && errno != EAGAIN) return -errno;
        struct pollfd pfd = {.fd = fd, .events = POLLOUT};
        int r = poll(&pfd, 1, ms_left(deadline));
        if (r == 0) return -ETIMEDOUT;
        if (r < 0 && errno != EINTR) return -errno;
    }
    return 0;
}

int http_get(const char *host, const char *port, const char *path, int timeout_ms, size_t max_body,
             struct http_get_resp *out, char *err, size_t errlen)
{
    long long deadline = now_ms() + timeout_ms;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    llhttp_settings_t settings;
    llhttp_t parser;
    struct get_state st = {.out = out, .max_body = max_body};
    size_t received = 0; /* response bytes, to tell an empty answer from a truncated one */
    char req[HTTP_GET_REQ_MAX], buf[HTTP_GET_READ_CHUNK];
    int fd = -1, rc;

    memset(out, 0, sizeof(*out));
    int gai = getaddrinfo(host, port, &hints, &res);
    if (gai != 0) {
        snprintf(err, errlen, "cannot resolve %s: %s", host, gai_strerror(gai));
        rc = -ENOENT;
        goto out;
    }
    /* Try each address in turn, as a browser would; the last failure is the one reported. */
    rc = -EADDRNOTAVAIL;
    for (const struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            rc = -errno;
            continue;
        }
        rc = connect_by(fd, ai, deadline);
        if (rc == 0) break;
        close(fd);
        fd = -1;
    }
    if (rc < 0) {
        /* Lower-cased as the rest of the message: "connection refused". */
        snprintf(err, errlen, "%s", rc == -ETIMEDOUT ? "connection timed out" : strerror(-rc));
        if (err[0] >= 'A' && err[0] <= 'Z') err[0] = (char)(err[0] - 'A' + 'a');
        goto out;
    }

    out->connected = true;
    int n = snprintf(req, sizeof(req),
                     "GET %s HTTP/1.1\r\nHost: %s:%s\r\nAccept: application/json\r\nUser-Agent: zmesh\r\n"
                     "Connection: close\r\n\r\n",
                     path, host, port);
    if (n < 0 || (size_t)n >= sizeof(req)) {
        snprintf(err, errlen, "request for %s is too long", path);
        rc = -ENAMETOOLONG;
        goto out;
    }
    rc = send_all(fd, req, (size_t)n, deadline);
    if (rc < 0) {
        snprintf(err, errlen, "sending the request: %s", strerror(-rc));
        goto out;
    }

    llhttp_settings_init(&settings);
    settings.on_body = on_body;
    settings.on_message_complete = on_message_complete;
    llhttp_init(&parser, HTTP_RESPONSE, &settings);
    parser.data = &st;
    while (!st.done) {
        ssize_t r = recv(fd, buf, sizeof(buf), 0);
        llhttp_errno_t e = HPE_OK;
        if (r > 0) {
            received += (size_t)r;
            e = llhttp_execute(&parser, buf, (size_t)r);
        } else if (r == 0) {
            /* EOF ends a body delimited by the connection's close; anywhere else it is a truncation. */
            e = llhttp_finish(&parser);
            if (e == HPE_OK && !st.done) e = HPE_INVALID_EOF_STATE;
        } else if (errno == EINTR) {
            continue;
        } else if (errno == EAGAIN) {
            struct pollfd pfd = {.fd = fd, .events = POLLIN};
            int pr = poll(&pfd, 1, ms_left(deadline));
            if (pr == 0) {
                snprintf(err, errlen, "no complete response within %d ms", timeout_ms);
                rc = -ETIMEDOUT;
                goto out;
            }
            continue;
        } else {
            rc = -errno;
            /* A peer that resets the connection unanswered (a proxy with nothing behind it) and one that
             * closes it read the same to the user. */
            if (rc == -ECONNRESET && received == 0)
                snprintf(err, errlen, "the connection was closed before any response");
            else
                snprintf(err, errlen, "reading the response: %s", strerror(errno));
            goto out;
        }
        if (st.done) break;
        if (e != HPE_OK) {
            if (st.too_big) {
                snprintf(err, errlen, "response body larger than %zu bytes", max_body);
                rc = -EFBIG;
            } else if (r == 0 && received == 0) {
                snprintf(err, errlen, "the connection was closed before any response");
                rc = -ECONNRESET;
            } else if (r == 0) {
                snprintf(err, errlen, "the connection was closed after %zu bytes, within the response",
                         received);
                rc = -EPROTO;
            } else {
                snprintf(err, errlen, "invalid HTTP response: %s", llhttp_errno_name(e));
                rc = e == HPE_USER ? -ENOMEM : -EPROTO;
            }
            goto out;
        }
    }
    if (!out->body && !(out->body = calloc(1, 1))) {
        rc = -ENOMEM;
        goto out;
    }
    rc = 0;
out:
    if (rc < 0) {
        free(out->body);
        out->body = NULL;
        out->len = 0;
    }
    if (fd >= 0) close(fd);
    if (res) freeaddrinfo(res);
    return rc;
}
