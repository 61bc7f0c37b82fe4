/* The admin (15000), metrics (15020) and readiness (15021) HTTP servers (reference §10; istio/ztunnel
 * src/admin.rs, src/metrics/server.rs, src/readiness/server.rs). One thread, one event loop, HTTP/1.1 parsed
 * by llhttp with keep-alive and pipelining.
 *
 * Each connection parses at most one request ahead: on_message_complete builds the whole response into the
 * output buffer and pauses the parser, and the connection reads or parses nothing more until that response
 * is written. So a client that pipelines requests (or never reads) costs one response of memory, and request
 * sizes are bounded (URL, header block, body). */
#include "ztunnel/admin.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <llhttp.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "core/log.h"
#include "core/loop.h"
#include "core/net.h"
#include "mesh/model.h"
#include "tls/ca.h"
#include "tls/identity.h"
#include "ztunnel/metrics.h"

#define ADM_URL_MAX 8192            /* longer request targets get 414 */
#define ADM_HEADERS_MAX (64 * 1024) /* a larger header block gets 431 */
#define ADM_BODY_MAX (64 * 1024)    /* a larger body gets 413 (no endpoint reads bodies) */
#define ADM_IN_BUF 16384
#define ADM_MAX_CONNS 256
#define ADM_IDLE_MS 60000

enum adm_kind { ADM_ADMIN = 0, ADM_METRICS = 1, ADM_READY = 2 };

struct adm_listener {
    struct io io;
    enum adm_kind kind;
};

struct adm_conn {
    struct io io;
    struct timer idle;
    enum adm_kind kind;
    llhttp_t parser;
    /* the request being parsed */
    char url[ADM_URL_MAX + 1];
    size_t url_len;
    char hname[32];
    size_t hname_len;
    bool hname_long, in_accept, accept_om;
    size_t head_bytes, body_bytes;
    int reject; /* a status (413/414/431) to answer instead of routing; then close */
    /* unparsed input from the last read */
    char in[ADM_IN_BUF];
    size_t in_off, in_len;
    /* the response being written */
    char *out;
    size_t out_off, out_len;
    bool close_after, peer_eof, quit_pending;
};

static struct {
    struct loop *loop;
    struct admin_hooks hooks;
    struct adm_listener ls[3];
    uint16_t ports[3];
    int nconns;
    int default_level; /* for POST /logging?reset */
    llhttp_settings_t settings;
} adm;

static void adm_conn_close(struct adm_conn *c);
static void adm_conn_process(struct adm_conn *c);

/* ---- responses ---- */

static const char *adm_reason(int status)
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

/* Queues a complete response (takes nothing; copies body). Without a content type the body must be empty,
 * like Istio's empty_response. */
static void adm_respond(struct adm_conn *c, int status, const char *ctype, const char *body, size_t blen)
{
    char head[512];
    bool head_only = llhttp_get_method(&c->parser) == HTTP_HEAD;
    int hn = snprintf(head, sizeof(head), "HTTP/1.1 %d %s\r\n%s%s%scontent-length: %zu\r\n%s\r\n", status,
                      adm_reason(status), ctype ? "content-type: " : "", ctype ? ctype : "",
                      ctype ? "\r\n" : "", blen, c->close_after ? "connection: close\r\n" : "");
    size_t total = (size_t)hn + (head_only ? 0 : blen);
    free(c->out);
    c->out_off = c->out_len = 0;
    if (!(c->out = malloc(total))) {
        c->close_after = true;
        return;
    }
    memcpy(c->out, head, (size_t)hn);
    if (!head_only && blen) memcpy(c->out + hn, body, blen);
    c->out_len = total;
}

static void adm_respond_text(struct adm_conn *c, int status, const char *text)
{
    adm_respond(c, status, "text/plain", text, strlen(text));
}

/* ---- handlers ---- */

static void adm_metrics(struct adm_conn *c)
{
    size_t len = 0;
    char *body = metrics_render(c->accept_om, &len);
    if (!body) {
        adm_respond_text(c, 500, "out of memory\n");
        return;
    }
    adm_respond(c, 200, metrics_content_type(c->accept_om), body, len);
    free(body);
}

static void adm_ready(struct adm_conn *c)
{
    const char *pending = adm.hooks.pending ? adm.hooks.pending(adm.hooks.ud) : NULL;
    if (llhttp_get_method(&c->parser) != HTTP_GET) {
        adm_respond(c, 405, NULL, "", 0);
    } else if (!pending || !*pending) {
        adm_respond_text(c, 200, "ready\n");
    } else {
        char msg[512];
        snprintf(msg, sizeof(msg), "not ready, pending: %s\n", pending);
        adm_respond_text(c, 500, msg);
    }
}

static void adm_config_dump(struct adm_conn *c)
{
    struct snapshot *s = adm.hooks.snapshot_get ? adm.hooks.snapshot_get(adm.hooks.ud) : NULL;
    struct identity_status *certs = NULL;
    int n_certs = adm.hooks.certs_get ? adm.hooks.certs_get(adm.hooks.ud, &certs) : 0;
    size_t len = 0;
    char *body = config_dump_render(s, certs, n_certs > 0 ? (size_t)n_certs : 0, &len);
    if (body)
        adm_respond(c, 200, "application/json", body, len);
    else
        adm_respond_text(c, 500, "out of memory\n");
    free(body);
    identity_status_free(certs, n_certs > 0 ? (size_t)n_certs : 0);
    snapshot_unref(s);
}

/* Istio's usage text for /logging (admin.rs HELP_STRING). */
static const char adm_logging_help[] =
    "\nusage: POST /logging\t\t\t\t\t\t(To list current level)\n"
    "usage: POST /logging?level=<level>\t\t\t\t(To change global levels)\n"
    "usage: POST /logging?level={mod1}:{level1},{mod2}:{level2}\t(To change specific mods' logging level)\n"
    "\nhint: loglevel:\terror|warn|info|debug|trace|off\n"
    "hint: mod_name:\tthe module name, i.e. ztunnel::proxy\n";

/* Decodes application/x-www-form-urlencoded text in place ('+' is a space, %XX a byte). */
static void adm_urldecode(char *s)
{
    char *o = s;
    for (; *s; s++) {
        if (*s == '+') {
            *o++ = ' ';
        } else if (*s == '%' && s[1] && s[2]) {
            char hex[3] = {s[1], s[2], 0}, *end;
            long v = strtol(hex, &end, 16);
            if (*end || v == 0) {
                *o++ = *s;
                continue;
            }
            *o++ = (char)v;
            s += 2;
        } else {
            *o++ = *s;
        }
    }
    *o = '\0';
}

/* Istio accepts a comma-separated list of bare levels and target=level clauses. */
static bool adm_level_valid(const char *level)
{
    static const char *const names[] = {"off", "error", "warn", "info", "debug", "trace"};
    const char *p = level;
    while (true) {
        size_t n = strcspn(p, ",");
        bool ok = memchr(p, '=', n) != NULL;
        for (size_t i = 0; !ok && i < sizeof(names) / sizeof(names[0]); i++)
            ok = strlen(names[i]) == n && !strncmp(p, names[i], n);
        if (!ok) return false;
        if (!p[n]) return true;
        p += n + 1;
    }
}

static void adm_logging_list(struct adm_conn *c)
{
    char msg[96];
    snprintf(msg, sizeof(msg), "current log level is %s\n", log_level_name(log_level_cur));
    adm_respond_text(c, 200, msg);
}

static void adm_logging(struct adm_conn *c, char *query)
{
    char *level = NULL, msg[ADM_URL_MAX + sizeof(adm_logging_help) + 64];
    bool reset = false;

    if (llhttp_get_method(&c->parser) != HTTP_POST) {
        snprintf(msg, sizeof(msg), "Invalid HTTP method\n %s", adm_logging_help);
        adm_respond_text(c, 405, msg);
        return;
    }
    for (char *save = NULL, *kv = query ? strtok_r(query, "&", &save) : NULL; kv;
         kv = strtok_r(NULL, "&", &save)) {
        char *eq = strchr(kv, '=');
        if (eq) *eq = '\0';
        adm_urldecode(kv);
        if (!strcmp(kv, "level")) {
            static char empty[1];
            level = eq ? eq + 1 : empty;
            if (eq) adm_urldecode(level);
        } else if (!strcmp(kv, "reset")) {
            reset = true;
        }
    }
    if (!reset && (!level || !*level)) {
        adm_logging_list(c);
        return;
    }
    if (level && *level && !adm_level_valid(level)) {
        snprintf(msg, sizeof(msg), "Invalid level provided: %s\n%s", level, adm_logging_help);
        adm_respond_text(c, 400, msg);
        return;
    }
    if (reset) log_level_cur = adm.default_level;
    if (level && *level && log_set_level(level) < 0) {
        snprintf(msg, sizeof(msg), "Failed to set new level: unsupported level %s\n%s", level,
                 adm_logging_help);
        adm_respond_text(c, 400, msg);
        return;
    }
    LOG_I("admin", "log level set to %s", log_level_name(log_level_cur));
    adm_logging_list(c);
}

static void adm_quit(struct adm_conn *c)
{
    if (llhttp_get_method(&c->parser) != HTTP_POST) {
        adm_respond(c, 405, NULL, "", 0);
        return;
    }
    adm_respond_text(c, 200, "shutdown now\n");
    c->quit_pending = true;
}

static void adm_dashboard(struct adm_conn *c)
{
    static const char html[] =
        "<!DOCTYPE html>\n<html><head><title>ztunnel admin</title></head><body>\n<table>\n"
        "<tr><td><a href=\"quitquitquit\">quitquitquit</a></td><td>shut down the server</td></tr>\n"
        "<tr><td><a href=\"config_dump\">config_dump</a></td><td>dump the current Ztunnel "
        "configuration</td></tr>\n"
        "<tr><td><a href=\"logging\">logging</a></td><td>query/changing logging levels</td></tr>\n"
        "</table>\n</body></html>\n";
    adm_respond(c, 200, "text/html; charset=utf-8", html, sizeof(html) - 1);
}

/* Routes the parsed request of c. */
static void adm_route(struct adm_conn *c)
{
    char *query = strchr(c->url, '?');
    if (query) *query++ = '\0';
    const char *path = c->url;

    if (c->reject) {
        c->close_after = true;
        adm_respond(c, c->reject, NULL, "", 0);
        return;
    }
    switch (c->kind) {
    case ADM_METRICS:
        if (!strcmp(path, "/metrics") || !strcmp(path, "/stats/prometheus"))
            adm_metrics(c);
        else
            adm_respond(c, 404, NULL, "", 0);
        break;
    case ADM_READY:
        if (!strcmp(path, "/healthz/ready"))
            adm_ready(c);
        else
            adm_respond(c, 404, NULL, "", 0);
        break;
    case ADM_ADMIN:
        if (!strcmp(path, "/config_dump"))
            adm_config_dump(c);
        else if (!strcmp(path, "/logging"))
            adm_logging(c, query);
        else if (!strcmp(path, "/quitquitquit"))
            adm_quit(c);
        else if (!strcmp(path, "/"))
            adm_dashboard(c);
        else
            adm_respond(c, 404, NULL, "", 0);
        break;
    }
}

/* ---- llhttp callbacks ---- */

static int adm_on_message_begin(llhttp_t *p)
{
    struct adm_conn *c = p->data;
    c->url_len = 0;
    c->url[0] = '\0';
    c->hname_len = 0;
    c->hname_long = c->in_accept = c->accept_om = false;
    c->head_bytes = c->body_bytes = 0;
    c->reject = 0;
    return 0;
}

static int adm_on_url(llhttp_t *p, const char *at, size_t n)
{
    struct adm_conn *c = p->data;
    if (c->url_len + n > ADM_URL_MAX) {
        c->reject = 414;
        return 0;
    }
    memcpy(c->url + c->url_len, at, n);
    c->url_len += n;
    c->url[c->url_len] = '\0';
    return 0;
}

static int adm_count_head(struct adm_conn *c, size_t n)
{
    c->head_bytes += n;
    if (c->head_bytes > ADM_HEADERS_MAX && !c->reject) c->reject = 431;
    return 0;
}

static int adm_on_header_field(llhttp_t *p, const char *at, size_t n)
{
    struct adm_conn *c = p->data;
    if (c->hname_len + n >= sizeof(c->hname))
        c->hname_long = true;
    else
        memcpy(c->hname + c->hname_len, at, n);
    c->hname_len += n;
    return adm_count_head(c, n);
}

static int adm_on_header_field_complete(llhttp_t *p)
{
    struct adm_conn *c = p->data;
    c->in_accept = !c->hname_long && c->hname_len == 6 && !strncasecmp(c->hname, "accept", 6);
    c->hname_len = 0;
    c->hname_long = false;
    return 0;
}

/* Istio answers OpenMetrics when any comma-separated Accept entry's media type is
 * application/openmetrics-text (src/metrics/server.rs content_type). Values may arrive in pieces, so the
 * check runs per piece on a lower-cased sliding copy; a media type split across reads is missed, which
 * only falls back to the text format. */
static int adm_on_header_value(llhttp_t *p, const char *at, size_t n)
{
    struct adm_conn *c = p->data;
    static const char needle[] = "application/openmetrics-text";
    if (c->in_accept && !c->accept_om && n >= sizeof(needle) - 1) {
        for (size_t i = 0; i + sizeof(needle) - 1 <= n; i++) {
            if (strncasecmp(at + i, needle, sizeof(needle) - 1)) continue;
            /* It must start an entry (after a comma and optional spaces) and end the media type. */
            size_t j = i;
            while (j > 0 && (at[j - 1] == ' ' || at[j - 1] == '\t'))
                j--;
            char end = i + sizeof(needle) - 1 < n ? at[i + sizeof(needle) - 1] : '\0';
            if ((j == 0 || at[j - 1] == ',') && (end == '\0' || end == ';' || end == ',' || end == ' ')) {
                c->accept_om = true;
                break;
            }
        }
    }
    return adm_count_head(c, n);
}

static int adm_on_body(llhttp_t *p, const char *at, size_t n)
{
    struct adm_conn *c = p->data;
    c->body_bytes += n;
    if (c->body_bytes > ADM_BODY_MAX && !c->reject) c->reject = 413;
    return 0;
}

static int adm_on_message_complete(llhttp_t *p)
{
    struct adm_conn *c = p->data;
    if (!llhttp_should_keep_alive(p)) c->close_after = true;
    adm_route(c);
    /* One response at a time: the rest of the input waits until this one is written. */
    return HPE_PAUSED;
}

static void adm_settings_init(void)
{
    llhttp_settings_init(&adm.settings);
    adm.settings.on_message_begin = adm_on_message_begin;
    adm.settings.on_url = adm_on_url;
    adm.settings.on_header_field = adm_on_header_field;
    adm.settings.on_header_field_complete = adm_on_header_field_complete;
    adm.settings.on_header_value = adm_on_header_value;
    adm.settings.on_body = adm_on_body;
    adm.settings.on_message_complete = adm_on_message_complete;
}

/* ---- connections ---- */

static void adm_conn_close(struct adm_conn *c)
{
    loop_io_del(adm.loop, &c->io);
    timer_stop(adm.loop, &c->idle);
    close(c->io.fd);
    free(c->out);
    free(c);
    adm.nconns--;
}

/* Writes pending output. Returns 0 when all is written, 1 when the socket is full, -1 on error. */
static int adm_flush(struct adm_conn *c)
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
    free(c->out);
    c->out = NULL;
    c->out_off = c->out_len = 0;
    return 0;
}

/* Parses buffered input, writes responses, reads more; leaves c registered for what it waits on, or frees
 * it. */
static void adm_conn_process(struct adm_conn *c)
{
    while (true) {
        int fr = adm_flush(c);
        if (c->quit_pending) {
            /* The response is with the kernel (or queued); now start the shutdown. */
            c->quit_pending = false;
            if (adm.hooks.quit) adm.hooks.quit(adm.hooks.ud);
        }
        if (fr < 0) goto close;
        if (fr > 0) {
            loop_io_mod(adm.loop, &c->io, EPOLLOUT);
            return;
        }
        if (c->close_after) goto close;

        if (c->in_off < c->in_len) {
            const char *data = c->in + c->in_off;
            llhttp_errno_t e = llhttp_execute(&c->parser, data, c->in_len - c->in_off);
            if (e == HPE_OK) {
                c->in_off = c->in_len;
            } else if (e == HPE_PAUSED) {
                c->in_off += (size_t)(llhttp_get_error_pos(&c->parser) - data);
                llhttp_resume(&c->parser);
            } else if (e == HPE_PAUSED_UPGRADE) {
                /* An Upgrade or CONNECT request was answered; nothing of ours speaks another protocol. */
                c->close_after = true;
                c->in_off = c->in_len;
            } else {
                LOG_D("admin", "bad request: %s", llhttp_errno_name(e));
                c->close_after = true;
                c->in_off = c->in_len;
                adm_respond(c, 400, NULL, "", 0);
            }
            continue;
        }
        if (c->peer_eof) goto close;

        ssize_t n = recv(c->io.fd, c->in, sizeof(c->in), 0);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                loop_io_mod(adm.loop, &c->io, EPOLLIN | EPOLLRDHUP);
                timer_start(adm.loop, &c->idle, ADM_IDLE_MS);
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
    adm_conn_close(c);
}

static void adm_conn_io(struct io *io, uint32_t ev)
{
    struct adm_conn *c = container_of(io, struct adm_conn, io);
    if ((ev & (EPOLLERR | EPOLLHUP)) && !(ev & EPOLLIN)) {
        adm_conn_close(c);
        return;
    }
    adm_conn_process(c);
}

static void adm_conn_idle(struct timer *t)
{
    adm_conn_close(container_of(t, struct adm_conn, idle));
}

/* Adopts an accepted, non-blocking socket fd for kind. Returns the connection or NULL (fd closed). */
static struct adm_conn *adm_conn_new(int fd, enum adm_kind kind)
{
    struct adm_conn *c = calloc(1, sizeof(*c));
    if (!c || adm.nconns >= ADM_MAX_CONNS) {
        free(c);
        close(fd);
        return NULL;
    }
    c->kind = kind;
    c->io.fd = fd;
    c->io.cb = adm_conn_io;
    c->idle.cb = adm_conn_idle;
    llhttp_init(&c->parser, HTTP_REQUEST, &adm.settings);
    c->parser.data = c;
    if (loop_io_add(adm.loop, &c->io, EPOLLIN | EPOLLRDHUP) < 0) {
        close(fd);
        free(c);
        return NULL;
    }
    adm.nconns++;
    timer_start(adm.loop, &c->idle, ADM_IDLE_MS);
    return c;
}

static void adm_accept(struct io *io, uint32_t ev)
{
    struct adm_listener *l = container_of(io, struct adm_listener, io);
    for (int i = 0; i < 64; i++) {
        int fd = accept4(io->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED)
                LOG_W("admin", "accept on port %u: %s", adm.ports[l->kind], strerror(errno));
            return;
        }
        adm_conn_new(fd, l->kind);
    }
}

/* ---- start ---- */

static int adm_env_port(const char *name, uint16_t def, uint16_t *out)
{
    const char *v = getenv(name);
    if (!v || !*v) {
        *out = def;
        return 0;
    }
    char *end;
    long p = strtol(v, &end, 10);
    if (*end || p < 0 || p > 65535) return -EINVAL;
    *out = (uint16_t)p;
    return 0;
}

/* A listening socket without SO_REUSEPORT (unlike the data-path listeners): a second ztunnel in the same
 * network namespace must fail to bind rather than silently share, and answer for, our metrics and config.
 * Returns the fd or -errno. */
static int adm_listen_one(int family, const struct sockaddr *sa, socklen_t sl)
{
    int one = 1, zero = 0, rc;
    int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
    if (bind(fd, sa, sl) < 0 || listen(fd, 128) < 0) {
        rc = -errno;
        close(fd);
        return rc;
    }
    return fd;
}

/* 127.0.0.1:port when local, else [::]:port dual-stack, or 0.0.0.0:port where IPv6 is unavailable. */
static int adm_listen(bool local, uint16_t port)
{
    struct sockaddr_in s4 = {.sin_family = AF_INET,
                             .sin_port = htons(port),
                             .sin_addr = {htonl(local ? INADDR_LOOPBACK : INADDR_ANY)}};
    if (!local) {
        struct sockaddr_in6 s6 = {
            .sin6_family = AF_INET6, .sin6_port = htons(port), .sin6_addr = IN6ADDR_ANY_INIT};
        int fd = adm_listen_one(AF_INET6, (struct sockaddr *)&s6, sizeof(s6));
        if (fd >= 0 || fd == -EADDRINUSE || fd == -EACCES) return fd;
    }
    return adm_listen_one(AF_INET, (struct sockaddr *)&s4, sizeof(s4));
}

static void *adm_thread(void *arg)
{
    loop_run(adm.loop);
    return NULL;
}

void admin_ports(uint16_t *admin, uint16_t *metrics, uint16_t *readiness)
{
    if (admin) *admin = adm.ports[ADM_ADMIN];
    if (metrics) *metrics = adm.ports[ADM_METRICS];
    if (readiness) *readiness = adm.ports[ADM_READY];
}

int admin_start(const struct admin_hooks *h, char *err, size_t errlen)
{
    static const char *const env[] = {"ADMIN_PORT", "METRICS_PORT", "READINESS_PORT"};
    static const uint16_t defs[] = {ADMIN_PORT_DEFAULT, METRICS_PORT_DEFAULT, READINESS_PORT_DEFAULT};
    uint16_t want[3];
    int rc = 0, fds[3] = {-1, -1, -1};
    pthread_t th;

    if (adm.loop) {
        snprintf(err, errlen, "admin already started");
        return -EALREADY;
    }
    for (int i = 0; i < 3; i++) {
        if ((rc = adm_env_port(env[i], defs[i], &want[i])) < 0) {
            snprintf(err, errlen, "%s: not a port number", env[i]);
            goto out;
        }
    }
    for (int i = 0; i < 3; i++) {
        fds[i] = adm_listen(i == ADM_ADMIN, want[i]);
        if (fds[i] < 0) {
            rc = fds[i];
            snprintf(err, errlen, "listen on %s port %u: %s", i == ADM_ADMIN ? "127.0.0.1" : "wildcard",
                     want[i], strerror(-rc));
            goto out;
        }
        struct sockaddr_storage ss;
        socklen_t sl = sizeof(ss);
        struct ip_addr ip;
        if (getsockname(fds[i], (struct sockaddr *)&ss, &sl) == 0)
            sockaddr_to(&ss, &ip, &adm.ports[i]);
        else
            adm.ports[i] = want[i];
    }
    if (!(adm.loop = loop_new())) {
        rc = -ENOMEM;
        snprintf(err, errlen, "admin event loop: out of memory");
        goto out;
    }
    adm.hooks = *h;
    adm.default_level = log_level_cur;
    adm_settings_init();
    for (int i = 0; i < 3; i++) {
        adm.ls[i].kind = (enum adm_kind)i;
        adm.ls[i].io.fd = fds[i];
        adm.ls[i].io.cb = adm_accept;
        if ((rc = loop_io_add(adm.loop, &adm.ls[i].io, EPOLLIN)) < 0) {
            snprintf(err, errlen, "admin event loop: %s", strerror(-rc));
            goto out;
        }
    }
    if ((rc = -pthread_create(&th, NULL, adm_thread, NULL)) < 0) {
        snprintf(err, errlen, "admin thread: %s", strerror(-rc));
        goto out;
    }
    pthread_detach(th);
    LOG_I("admin", "admin on 127.0.0.1:%u, metrics on :%u, readiness on :%u", adm.ports[0], adm.ports[1],
          adm.ports[2]);
    return 0;
out:
    for (int i = 0; i < 3; i++)
        if (fds[i] >= 0) close(fds[i]);
    if (adm.loop) {
        loop_free(adm.loop);
        adm.loop = NULL;
    }
    memset(adm.ports, 0, sizeof(adm.ports));
    return rc;
}
