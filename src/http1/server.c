/* The side-door HTTP/1.1 server (server.h). Taken from ztunnel's admin server (src/ztunnel/admin.c), made an
 * object so that one program can run several, each with its own ports, limits and handler.
 *
 * Each connection parses at most one request ahead: on_message_complete calls the handler, which builds the
 * whole response into the output buffer, and pauses the parser; nothing more is read or parsed until that
 * response is written. So a client that pipelines requests (or never reads) costs one response of memory.
 *
 * Nobody can lock a port out: each port has its own connection limit; a request must be read completely
 * within request_ms of its first byte (of the accept, for a connection's first request), like hyper's
 * header_read_timeout that Istio's ztunnel sets to 2 s (istio/ztunnel src/hyper_util.rs); and a port that is
 * full makes room for a new connection by closing its oldest idle one (or, when none is idle, the one whose
 * current step started first). */
#include "http1/server.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <llhttp.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "core/acceptor.h"
#include "core/list.h"
#include "core/log.h"
#include "core/loop.h"
#include "core/net.h"

#define H1_IN_BUF 16384
#define H1_HNAME_MAX 32

static const struct http1_limits h1_defaults = {
    .url_max = 8192,
    .headers_max = 8 * 1024,
    .body_max = 64 * 1024,
    .max_conns = 32,
    .request_ms = 2000,
    .write_ms = 10000,
    .idle_ms = 60000,
};

/* What a connection is doing; each state has its own deadline (timer), set when the state is entered. */
enum h1_state {
    H1_NEW,     /* accepted, no request begun: request_ms from the accept */
    H1_READING, /* a request has begun: request_ms from its first byte */
    H1_WRITING, /* a response is being written: write_ms */
    H1_IDLE,    /* keep-alive between requests: idle_ms */
};

static const char *h1_state_to_str(enum h1_state s)
{
    switch (s) {
    case H1_NEW:
        return "new";
    case H1_READING:
        return "reading";
    case H1_WRITING:
        return "writing";
    case H1_IDLE:
        return "idle";
    }
    return "unknown";
}

struct h1_conn;

/* One listening port and its connections, oldest state change first. */
struct h1_port {
    struct acceptor acc;
    struct http1_server *srv;
    struct h1_port *next;
    char name[64];
    uint16_t port;
    struct http1_limits lim;
    http1_handler_fn fn;
    void *ud;
    int nconns;
    struct h1_conn *head, *tail;
};

struct http1_server {
    struct loop *loop;
    char target[64];
    struct h1_port *ports;
    int nconns;
};

struct h1_conn {
    struct io io; /* fd -1 for a fed connection (no socket, no loop) */
    struct timer deadline;
    struct h1_port *port; /* NULL when fed */
    const struct http1_limits *lim;
    http1_handler_fn fn;
    void *ud;
    struct loop *loop; /* NULL when fed */
    const char *target;
    struct h1_conn *prev, *next;
    bool listed;
    enum h1_state st;
    llhttp_t parser;
    llhttp_settings_t *settings;
    /* the request being parsed */
    char *url; /* lim->url_max + 1 */
    size_t url_len;
    char hname[H1_HNAME_MAX];
    size_t hname_len;
    bool hname_long, in_accept;
    char accept[HTTP1_ACCEPT_MAX + 1];
    size_t accept_len;
    size_t head_bytes, body_bytes;
    int reject; /* a status (413/414/431) to answer instead of calling the handler; then close */
    /* unparsed input from the last read */
    char in[H1_IN_BUF];
    size_t in_off, in_len;
    /* the response being written */
    char *out;
    size_t out_off, out_len;
    bool close_after, peer_eof, responded;
    void (*after_write)(void *ud);
    void *after_write_ud;
};

/* The request handed to the handler points back at its connection. */
struct h1_req {
    struct http1_request pub;
    struct h1_conn *c;
};

static void h1_conn_close(struct h1_conn *c);

/* ---- responses ---- */

const char *http1_reason(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 413:
        return "Payload Too Large";
    case 414:
        return "URI Too Long";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 503:
        return "Service Unavailable";
    default:
        return "Unknown";
    }
}

static void h1_respond(struct h1_conn *c, int status, const char *ctype, const char *body, size_t blen)
{
    char head[512];
    bool head_only = llhttp_get_method(&c->parser) == HTTP_HEAD;
    int hn = snprintf(head, sizeof(head), "HTTP/1.1 %d %s\r\n%s%s%scontent-length: %zu\r\n%s\r\n", status,
                      http1_reason(status), ctype ? "content-type: " : "", ctype ? ctype : "",
                      ctype ? "\r\n" : "", blen, c->close_after ? "connection: close\r\n" : "");
    size_t total = (size_t)hn + (head_only ? 0 : blen);
    free(c->out);
    c->out_off = c->out_len = 0;
    c->responded = true;
    if (!(c->out = malloc(total))) {
        c->close_after = true;
        return;
    }
    memcpy(c->out, head, (size_t)hn);
    if (!head_only && blen) memcpy(c->out + hn, body, blen);
    c->out_len = total;
}

void http1_respond(struct http1_request *req, int status, const char *ctype, const char *body, size_t blen)
{
    struct h1_req *r = container_of(req, struct h1_req, pub);
    h1_respond(r->c, status, ctype, body, ctype ? blen : 0);
}

void http1_respond_text(struct http1_request *req, int status, const char *text)
{
    http1_respond(req, status, "text/plain", text, strlen(text));
}

/* Calls the handler for the parsed request of c (or answers its reject status). */
static void h1_route(struct h1_conn *c)
{
    if (c->reject) {
        c->close_after = true;
        h1_respond(c, c->reject, NULL, "", 0);
        return;
    }
    char *query = strchr(c->url, '?');
    if (query) *query++ = '\0';
    c->accept[c->accept_len] = '\0';
    struct h1_req r = {.pub = {.method = (int)llhttp_get_method(&c->parser),
                               .path = c->url,
                               .query = query,
                               .accept = c->accept,
                               .port = c->port ? c->port->port : 0},
                       .c = c};
    c->responded = false;
    c->fn(c->ud, &r.pub);
    if (!c->responded) {
        LOG_LIMITED(LOG_WARN, c->target, "no response to %s %s: answering 500",
                    llhttp_method_name(r.pub.method), c->url);
        h1_respond(c, 500, NULL, "", 0);
    }
    c->after_write = r.pub.after_write;
    c->after_write_ud = r.pub.after_write_ud;
}

/* ---- connection states ---- */

static void h1_list_del(struct h1_conn *c)
{
    struct h1_port *pt = c->port;
    if (!pt || !c->listed) return;
    c->listed = false;
    QUEUE_DEL(pt->head, pt->tail, c, prev, next);
}

static void h1_list_append(struct h1_conn *c)
{
    struct h1_port *pt = c->port;
    if (!pt) return;
    c->listed = true;
    QUEUE_APPEND(pt->head, pt->tail, c, prev, next);
}

/* Enters st with that state's deadline, which no later progress extends; the port's list stays ordered by
 * the time of the last state change. keep_deadline: a connection's first request runs under the deadline
 * armed at the accept. */
static void h1_set_state(struct h1_conn *c, enum h1_state st, bool keep_deadline)
{
    uint64_t ms = st == H1_WRITING ? c->lim->write_ms : st == H1_IDLE ? c->lim->idle_ms : c->lim->request_ms;
    c->st = st;
    h1_list_del(c);
    h1_list_append(c);
    if (c->loop && c->io.fd >= 0 && !keep_deadline) timer_start(c->loop, &c->deadline, ms);
}

/* ---- llhttp callbacks ---- */

static int h1_on_message_begin(llhttp_t *p)
{
    struct h1_conn *c = p->data;
    h1_set_state(c, H1_READING, c->st == H1_NEW);
    c->url_len = 0;
    c->url[0] = '\0';
    c->hname_len = 0;
    c->hname_long = c->in_accept = false;
    c->accept_len = 0;
    c->head_bytes = c->body_bytes = 0;
    c->reject = 0;
    return 0;
}

static int h1_on_url(llhttp_t *p, const char *at, size_t n)
{
    struct h1_conn *c = p->data;
    if (c->url_len + n > c->lim->url_max) {
        c->reject = 414;
        return 0;
    }
    memcpy(c->url + c->url_len, at, n);
    c->url_len += n;
    c->url[c->url_len] = '\0';
    return 0;
}

static int h1_count_head(struct h1_conn *c, size_t n)
{
    c->head_bytes += n;
    if (c->head_bytes > c->lim->headers_max && !c->reject) c->reject = 431;
    return 0;
}

static int h1_on_header_field(llhttp_t *p, const char *at, size_t n)
{
    struct h1_conn *c = p->data;
    if (c->hname_len + n >= sizeof(c->hname))
        c->hname_long = true;
    else
        memcpy(c->hname + c->hname_len, at, n);
    c->hname_len += n;
    return h1_count_head(c, n);
}

static int h1_on_header_field_complete(llhttp_t *p)
{
    struct h1_conn *c = p->data;
    c->in_accept = !c->hname_long && c->hname_len == 6 && !strncasecmp(c->hname, "accept", 6);
    if (c->in_accept && c->accept_len) {
        /* A second Accept header: joined as one list (RFC 9110 5.3). */
        const char sep[] = ", ";
        for (size_t i = 0; i < 2 && c->accept_len < HTTP1_ACCEPT_MAX; i++)
            c->accept[c->accept_len++] = sep[i];
    }
    c->hname_len = 0;
    c->hname_long = false;
    return 0;
}

static int h1_on_header_value(llhttp_t *p, const char *at, size_t n)
{
    struct h1_conn *c = p->data;
    if (c->in_accept) {
        size_t room = HTTP1_ACCEPT_MAX - c->accept_len, k = n < room ? n : room;
        memcpy(c->accept + c->accept_len, at, k);
        c->accept_len += k;
    }
    return h1_count_head(c, n);
}

static int h1_on_body(llhttp_t *p, const char *at, size_t n)
{
    struct h1_conn *c = p->data;
    c->body_bytes += n;
    if (c->body_bytes > c->lim->body_max && !c->reject) c->reject = 413;
    return 0;
}

static int h1_on_message_complete(llhttp_t *p)
{
    struct h1_conn *c = p->data;
    if (!llhttp_should_keep_alive(p)) c->close_after = true;
    h1_route(c);
    h1_set_state(c, H1_WRITING, false);
    /* One response at a time: the rest of the input waits until this one is written. */
    return HPE_PAUSED;
}

static llhttp_settings_t h1_settings;

static llhttp_settings_t *h1_settings_get(void)
{
    if (!h1_settings.on_message_complete) {
        llhttp_settings_t s;
        llhttp_settings_init(&s);
        s.on_message_begin = h1_on_message_begin;
        s.on_url = h1_on_url;
        s.on_header_field = h1_on_header_field;
        s.on_header_field_complete = h1_on_header_field_complete;
        s.on_header_value = h1_on_header_value;
        s.on_body = h1_on_body;
        s.on_message_complete = h1_on_message_complete;
        h1_settings = s;
    }
    return &h1_settings;
}

/* ---- connections ---- */

static void h1_conn_free(struct h1_conn *c)
{
    free(c->out);
    free(c->url);
    free(c);
}

static void h1_run_after_write(struct h1_conn *c)
{
    void (*fn)(void *) = c->after_write;
    c->after_write = NULL;
    if (fn) fn(c->after_write_ud);
}

static void h1_conn_close(struct h1_conn *c)
{
    struct h1_port *pt = c->port;
    /* A response whose write failed or timed out still counts as answered (ztunnel's /quitquitquit shuts
     * down even when its client went away). */
    h1_run_after_write(c);
    loop_io_close(c->loop, &c->io);
    timer_stop(c->loop, &c->deadline);
    h1_list_del(c);
    pt->nconns--;
    pt->srv->nconns--;
    h1_conn_free(c);
}

/* Runs the parser over buffered input (no I/O): consumes input up to the end of one request, whose response
 * is then in c->out, or all of it. */
static void h1_conn_parse(struct h1_conn *c)
{
    const char *data = c->in + c->in_off;
    llhttp_errno_t e = llhttp_execute(&c->parser, data, c->in_len - c->in_off);
    if (e == HPE_OK) {
        c->in_off = c->in_len;
    } else if (e == HPE_PAUSED) {
        c->in_off += (size_t)(llhttp_get_error_pos(&c->parser) - data);
        llhttp_resume(&c->parser);
    } else if (e == HPE_PAUSED_UPGRADE) {
        /* An Upgrade or CONNECT request was answered; nothing here speaks another protocol. */
        c->close_after = true;
        c->in_off = c->in_len;
    } else {
        LOG_LIMITED(LOG_DEBUG, c->target, "bad request on port %u: %s", c->port ? c->port->port : 0,
                    llhttp_errno_name(e));
        c->close_after = true;
        c->in_off = c->in_len;
        h1_respond(c, 400, NULL, "", 0);
        h1_set_state(c, H1_WRITING, false);
    }
}

/* Writes pending output. Returns 0 when all is written, 1 when the socket is full, -1 on error. */
static int h1_flush(struct h1_conn *c)
{
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->io.fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 1;
            return -1;
        }
        c->out_off += (size_t)n;
    }
    return 0;
}

/* The response in c->out was written: back to waiting for a request. */
static void h1_response_done(struct h1_conn *c)
{
    bool had = c->out != NULL;
    free(c->out);
    c->out = NULL;
    c->out_off = c->out_len = 0;
    if (had && c->st == H1_WRITING) h1_set_state(c, H1_IDLE, false);
}

/* Parses buffered input, writes responses, reads more; leaves c registered for what it waits on, or frees
 * it. */
static void h1_conn_process(struct h1_conn *c)
{
    while (true) {
        int fr = h1_flush(c);
        if (fr == 0) h1_run_after_write(c);
        if (fr < 0) goto close;
        if (fr > 0) {
            loop_io_mod(c->loop, &c->io, EPOLLOUT);
            return;
        }
        if (c->close_after) goto close;
        h1_response_done(c);

        if (c->in_off < c->in_len) {
            h1_conn_parse(c);
            continue;
        }
        if (c->peer_eof) goto close;

        ssize_t n = recv(c->io.fd, c->in, sizeof(c->in), 0);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                /* No timer restart here: the deadline of the current state stands (slowloris). */
                loop_io_mod(c->loop, &c->io, EPOLLIN | EPOLLRDHUP);
                return;
            }
            goto close;
        }
        if (n == 0) {
            /* A request cut short by EOF gets no answer; a complete one was already answered. */
            c->peer_eof = true;
            continue;
        }
        c->in_off = 0;
        c->in_len = (size_t)n;
    }
close:
    h1_conn_close(c);
}

static void h1_conn_io(struct io *io, uint32_t ev)
{
    struct h1_conn *c = container_of(io, struct h1_conn, io);
    if ((ev & (EPOLLERR | EPOLLHUP)) && !(ev & EPOLLIN)) {
        h1_conn_close(c);
        return;
    }
    h1_conn_process(c);
}

static void h1_conn_deadline(struct timer *t)
{
    struct h1_conn *c = container_of(t, struct h1_conn, deadline);
    if (c->st != H1_IDLE)
        LOG_LIMITED(LOG_DEBUG, c->target, "closing a connection on port %u: %s for too long", c->port->port,
                    h1_state_to_str(c->st));
    h1_conn_close(c);
}

static struct h1_conn *h1_conn_alloc(int fd, const struct http1_limits *lim, http1_handler_fn fn, void *ud)
{
    struct h1_conn *c = calloc(1, sizeof(*c));
    if (!c || !(c->url = malloc(lim->url_max + 1))) {
        free(c);
        return NULL;
    }
    c->url[0] = '\0';
    c->lim = lim;
    c->fn = fn;
    c->ud = ud;
    c->target = "http1";
    c->io.fd = fd;
    c->io.cb = h1_conn_io;
    c->deadline.cb = h1_conn_deadline;
    llhttp_init(&c->parser, HTTP_REQUEST, h1_settings_get());
    c->parser.data = c;
    return c;
}

/* A full port makes room: its oldest idle connection goes, or, when every one is busy, the one whose current
 * step (request or response) started first, which is the nearest to its deadline anyway. */
static void h1_port_evict(struct h1_port *pt)
{
    struct h1_conn *victim = pt->head;
    for (struct h1_conn *c = pt->head; c; c = c->next) {
        if (c->st == H1_NEW || c->st == H1_IDLE) {
            victim = c;
            break;
        }
    }
    if (!victim) return;
    LOG_LIMITED(LOG_WARN, pt->srv->target,
                "port %u has %d connections (the limit): closing the oldest %s one", pt->port, pt->nconns,
                h1_state_to_str(victim->st));
    h1_conn_close(victim);
}

static void h1_accept(struct acceptor *a, int fd, const struct sockaddr_storage *peer)
{
    (void)peer;
    struct h1_port *pt = container_of(a, struct h1_port, acc);
    if (pt->nconns >= pt->lim.max_conns) h1_port_evict(pt);
    struct h1_conn *c = h1_conn_alloc(fd, &pt->lim, pt->fn, pt->ud);
    if (!c) {
        LOG_LIMITED(LOG_WARN, pt->srv->target, "port %u: out of memory for a connection", pt->port);
        close(fd);
        return;
    }
    c->port = pt;
    c->loop = pt->srv->loop;
    c->target = pt->srv->target;
    if (loop_io_add(c->loop, &c->io, EPOLLIN | EPOLLRDHUP) < 0) {
        close(fd);
        h1_conn_free(c);
        return;
    }
    pt->nconns++;
    pt->srv->nconns++;
    h1_set_state(c, H1_NEW, false);
}

static const struct acceptor_ops h1_acceptor_ops = {.on_accept = h1_accept};

/* ---- servers ---- */

static void h1_limits_fill(struct http1_limits *dst, const struct http1_limits *src)
{
    *dst = src ? *src : h1_defaults;
    if (!dst->url_max) dst->url_max = h1_defaults.url_max;
    if (!dst->headers_max) dst->headers_max = h1_defaults.headers_max;
    if (!dst->body_max) dst->body_max = h1_defaults.body_max;
    if (dst->max_conns <= 0) dst->max_conns = h1_defaults.max_conns;
    if (!dst->request_ms) dst->request_ms = h1_defaults.request_ms;
    if (!dst->write_ms) dst->write_ms = h1_defaults.write_ms;
    if (!dst->idle_ms) dst->idle_ms = h1_defaults.idle_ms;
}

struct http1_server *http1_server_new(struct loop *l, const char *log_target)
{
    struct http1_server *s = calloc(1, sizeof(*s));
    if (!s) return NULL;
    s->loop = l;
    snprintf(s->target, sizeof(s->target), "%s", log_target ? log_target : "http1");
    return s;
}

int http1_server_listen(struct http1_server *s, int fd, const char *name, const struct http1_limits *lim,
                        http1_handler_fn fn, void *ud)
{
    struct h1_port *pt = calloc(1, sizeof(*pt));
    if (!pt) {
        close(fd);
        return -ENOMEM;
    }
    pt->srv = s;
    pt->fn = fn;
    pt->ud = ud;
    h1_limits_fill(&pt->lim, lim);
    snprintf(pt->name, sizeof(pt->name), "%s", name ? name : "http1");
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    struct ip_addr ip;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) sockaddr_to(&ss, &ip, &pt->port);
    int rc = acceptor_start(&pt->acc, s->loop, fd, pt->name, &h1_acceptor_ops);
    if (rc < 0) {
        free(pt);
        return rc;
    }
    pt->next = s->ports;
    s->ports = pt;
    return 0;
}

int http1_server_connections(const struct http1_server *s)
{
    return s ? s->nconns : 0;
}

void http1_server_free(struct http1_server *s)
{
    if (!s) return;
    for (struct h1_port *pt = s->ports, *next; pt; pt = next) {
        next = pt->next;
        acceptor_close(&pt->acc);
        while (pt->head)
            h1_conn_close(pt->head);
        free(pt);
    }
    free(s);
}

/* ---- fed connections ---- */

size_t http1_feed(const struct http1_limits *lim, http1_handler_fn fn, void *ud, const uint8_t *data,
                  size_t len, size_t chunk, void (*on_response)(void *rud, const char *resp, size_t n),
                  void *rud)
{
    struct http1_limits l;
    size_t responses = 0;
    h1_limits_fill(&l, lim);
    if (chunk == 0 || chunk > H1_IN_BUF) chunk = H1_IN_BUF;
    struct h1_conn *c = h1_conn_alloc(-1, &l, fn, ud);
    if (!c) return 0;
    /* The socket loop of h1_conn_process, with "read" taking the next chunk and "write" the callback. */
    while (true) {
        if (c->out) {
            if (on_response) on_response(rud, c->out, c->out_len);
            responses++;
            h1_run_after_write(c);
            if (c->close_after) break;
            h1_response_done(c);
        }
        if (c->close_after) break;
        if (c->in_off < c->in_len) {
            h1_conn_parse(c);
            continue;
        }
        if (len == 0) break;
        size_t n = len < chunk ? len : chunk;
        memcpy(c->in, data, n);
        data += n;
        len -= n;
        c->in_off = 0;
        c->in_len = n;
    }
    h1_conn_free(c);
    return responses;
}

/* ---- listening ---- */

/* Go's host:port: "ip:port", "[ip6]:port" or ":port" (every address), port 0..65535. Returns 0 or -EINVAL. */
static int h1_parse_addr(const char *s, struct ip_addr *ip, uint16_t *port)
{
    char host[64];
    const char *colon = s ? strrchr(s, ':') : NULL;
    size_t hl = colon ? (size_t)(colon - s) : 0;
    if (!colon || hl >= sizeof(host) || !colon[1] || strlen(colon + 1) > 5) return -EINVAL;
    long v = 0;
    for (const char *p = colon + 1; *p; p++) {
        if (*p < '0' || *p > '9') return -EINVAL;
        v = v * 10 + (*p - '0');
    }
    if (v > 65535) return -EINVAL;
    if (hl >= 2 && s[0] == '[' && s[hl - 1] == ']') {
        memcpy(host, s + 1, hl - 2);
        host[hl - 2] = 0;
        if (!strchr(host, ':')) return -EINVAL;
    } else {
        memcpy(host, s, hl);
        host[hl] = 0;
        if (strchr(host, ':')) return -EINVAL; /* an IPv6 address needs its brackets */
    }
    if (ip_parse(hl ? host : "::", ip) < 0) return -EINVAL;
    *port = (uint16_t)v;
    return 0;
}

/* A listening socket without SO_REUSEPORT. Returns the fd or -errno. */
static int h1_listen_on(const struct ip_addr *ip, uint16_t port)
{
    struct sockaddr_storage ss;
    socklen_t sl = sockaddr_from(&ss, ip, port);
    int one = 1, zero = 0, rc;
    int fd = socket(ip->family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    (void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (ip->family == AF_INET6) (void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
    if (bind(fd, (struct sockaddr *)&ss, sl) < 0 || listen(fd, 128) < 0) {
        rc = -errno;
        close(fd);
        return rc;
    }
    return fd;
}

int http1_listen(const char *addr, uint16_t *port, char *err, size_t errlen)
{
    struct ip_addr ip;
    uint16_t p = 0;
    if (h1_parse_addr(addr, &ip, &p) < 0) {
        snprintf(err, errlen, "address \"%s\": expected ip:port, [ipv6]:port or :port with a port 0-65535",
                 addr ? addr : "");
        return -EINVAL;
    }
    int fd = h1_listen_on(&ip, p);
    if (fd < 0 && addr[0] == ':' && fd != -EADDRINUSE && fd != -EACCES) {
        /* ":port" where IPv6 is off: the IPv4 wildcard. */
        ip_parse("0.0.0.0", &ip);
        fd = h1_listen_on(&ip, p);
    }
    if (fd < 0) {
        snprintf(err, errlen, "listen on %s: %s", addr, strerror(-fd));
        return fd;
    }
    if (port) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        *port = p;
        if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) sockaddr_to(&ss, &ip, port);
    }
    return fd;
}
