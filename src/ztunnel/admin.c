/* The admin (15000), metrics (15020) and readiness (15021) HTTP servers (istio/ztunnel
 * src/admin.rs, src/metrics/server.rs, src/readiness/server.rs). One thread, one event loop, HTTP/1.1 parsed
 * by llhttp with keep-alive and pipelining.
 *
 * Each connection parses at most one request ahead: on_message_complete builds the whole response into the
 * output buffer and pauses the parser, and the connection reads or parses nothing more until that response
 * is written. So a client that pipelines requests (or never reads) costs one response of memory, and request
 * sizes are bounded (URL, header block, body).
 *
 * Nobody outside the pod can lock the ports out (the metrics and readiness ports listen on every address):
 * each port has its own connection limit, so readiness keeps its slots whatever happens on the others; a
 * request must be read completely within ADM_REQUEST_MS of its first byte (of the accept, for a connection's
 * first request), like hyper's header_read_timeout that Istio's ztunnel sets to 2 s (src/hyper_util.rs), so
 * bytes trickled slowly do not keep a slot; and a port that is full makes room for a new connection by
 * closing its oldest idle one (or, when none is idle, the one whose current step started first). */
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

#include "core/acceptor.h"
#include "core/list.h"
#include "core/log.h"
#include "core/loop.h"
#include "core/net.h"
#include "mesh/model.h"
#include "tls/ca.h"
#include "tls/identity.h"
#include "ztunnel/metrics.h"

#define ADM_URL_MAX 8192 /* longer request targets get 414 */
/* A larger header block gets 431. Istio's ztunnel serves these ports with hyper's max_buf_size of 8 KiB
 * (src/hyper_util.rs), which bounds the request head the same way. */
#define ADM_HEADERS_MAX (8 * 1024)
#define ADM_BODY_MAX (64 * 1024) /* a larger body gets 413 (no endpoint reads bodies) */
#define ADM_IN_BUF 16384
/* Connections per port. Each costs one descriptor and about 25 KiB; a scraper or a kubelet needs one or
 * two, and the limit only decides how many an abusive client can hold before the oldest are closed. */
#define ADM_ADMIN_MAX_CONNS 32
#define ADM_METRICS_MAX_CONNS 64
#define ADM_READY_MAX_CONNS 64
/* From the first byte of a request (from the accept, for the first one) to its end: hyper's
 * header_read_timeout as Istio's ztunnel sets it (2 s, src/hyper_util.rs). Not extended by progress. */
#define ADM_REQUEST_MS 2000
/* To write one response, from its first byte to its last; not extended by progress either. */
#define ADM_WRITE_MS 10000
/* Keep-alive between requests: a connection with no request in progress is closed after this. */
#define ADM_IDLE_MS 60000

enum adm_kind {
    ADM_ADMIN = ADMIN_SERVER_ADMIN,
    ADM_METRICS = ADMIN_SERVER_METRICS,
    ADM_READY = ADMIN_SERVER_READINESS
};

/* What a connection is doing; each state has its own deadline (timer), set when the state is entered. */
enum adm_state {
    ADM_ST_NEW,     /* accepted, no request begun: ADM_REQUEST_MS from the accept */
    ADM_ST_READING, /* a request has begun: ADM_REQUEST_MS from its first byte */
    ADM_ST_WRITING, /* a response is being written: ADM_WRITE_MS */
    ADM_ST_IDLE,    /* keep-alive between requests: ADM_IDLE_MS */
};

static const char *adm_state_to_str(enum adm_state s)
{
    switch (s) {
    case ADM_ST_NEW:
        return "new";
    case ADM_ST_READING:
        return "reading";
    case ADM_ST_WRITING:
        return "writing";
    case ADM_ST_IDLE:
        return "idle";
    }
    return "unknown";
}

struct adm_conn;

/* One listening port and its connections, oldest state change first. */
struct adm_port {
    struct acceptor acc;
    enum adm_kind kind;
    char name[32]; /* for logs: "admin :15000" */
    int nconns, max_conns;
    struct adm_conn *head, *tail;
};

struct adm_conn {
    struct io io; /* fd -1 for a connection fed by admin_feed (no socket, no loop) */
    struct timer deadline;
    struct adm_port *port;
    struct adm_conn *prev, *next; /* in port's list, when listed */
    bool listed;
    enum adm_kind kind;
    enum adm_state st;
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
    struct adm_port ports_[3];
    uint16_t ports[3];
    int nconns; /* on all ports */
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

/* Room for one normalized /logging spec: every query parameter's directives. */
#define ADM_LEVEL_MAX (ADM_URL_MAX + 16)

/* Appends one /logging clause to out as a RUST_LOG directive. Istio's validate_log_level accepts a bare level
 * or "target=level"; its help text advertises "target:level", which is accepted too (the last ':' splits, so
 * "ztunnel::proxy:debug" is ztunnel::proxy=debug). A bare target (trace in RUST_LOG) is refused, as in Istio.
 * Returns 0 or -EINVAL. */
static int adm_level_clause(const char *p, size_t n, char *out, size_t outlen, size_t *w)
{
    static const char *const names[] = {"off", "error", "warn", "info", "debug", "trace"};
    char clause[ADM_LEVEL_MAX];
    bool check_level = false;
    if (n == 0 || n >= sizeof(clause)) return -EINVAL;
    memcpy(clause, p, n);
    clause[n] = 0;
    if (!memchr(clause, '=', n)) {
        char *colon = strrchr(clause, ':');
        if (colon && colon > clause && colon[-1] != ':' && colon[1]) {
            *colon = '=';
            check_level = true;
        } else {
            for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
                if (!strcmp(clause, names[i])) check_level = true;
            if (!check_level) return -EINVAL;
        }
    }
    if (log_filter_check(clause, NULL, NULL, 0) < 0) return -EINVAL;
    int k = snprintf(out + *w, outlen - *w, "%s%s", *w ? "," : "", clause);
    if (k < 0 || (size_t)k >= outlen - *w) return -EINVAL;
    *w += (size_t)k;
    return 0;
}

/* Appends every comma-separated clause of spec. Returns 0 or -EINVAL. */
static int adm_level_spec(const char *spec, char *out, size_t outlen, size_t *w)
{
    for (const char *p = spec;;) {
        size_t n = strcspn(p, ",");
        if (adm_level_clause(p, n, out, outlen, w) < 0) return -EINVAL;
        if (!p[n]) return 0;
        p += n + 1;
    }
}

static void adm_logging_list(struct adm_conn *c)
{
    char cur[LOG_FILTER_STR_MAX], msg[LOG_FILTER_STR_MAX + 32];
    log_filter_str(cur, sizeof(cur));
    snprintf(msg, sizeof(msg), "current log level is %s\n", cur);
    adm_respond_text(c, 200, msg);
}

/* POST /logging: ?level=<spec> (Istio), ?reset, and Envoy's ?<target>=<level> (e.g. ?access=debug), which
 * Istio's help text points to ("mirror envoy's behavior"). */
static void adm_logging(struct adm_conn *c, char *query)
{
    char spec[ADM_LEVEL_MAX], bad[ADM_LEVEL_MAX] = "", msg[2 * ADM_LEVEL_MAX + sizeof(adm_logging_help) + 64];
    size_t w = 0;
    bool reset = false, any = false;

    spec[0] = 0;
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
        char *val = eq ? eq + 1 : kv + strlen(kv);
        adm_urldecode(val);
        if (!strcmp(kv, "reset")) {
            reset = true;
            continue;
        }
        if (!strcmp(kv, "level")) {
            if (!*val) continue;
            any = true;
            if (!*bad && adm_level_spec(val, spec, sizeof(spec), &w) < 0)
                snprintf(bad, sizeof(bad), "%s", val);
            continue;
        }
        /* ?<target>=<level> */
        char clause[ADM_LEVEL_MAX];
        any = true;
        snprintf(clause, sizeof(clause), "%s=%s", kv, val);
        if (!*bad && (!*kv || !*val || adm_level_clause(clause, strlen(clause), spec, sizeof(spec), &w) < 0))
            snprintf(bad, sizeof(bad), "%s", clause);
    }
    if (!reset && !any) {
        adm_logging_list(c);
        return;
    }
    if (*bad) {
        snprintf(msg, sizeof(msg), "Invalid level provided: %s\n%s", bad, adm_logging_help);
        adm_respond_text(c, 400, msg);
        return;
    }
    if (log_filter_update(reset, spec) < 0) {
        /* Every clause was checked above: only the filter's size can refuse it (?reset starts over). */
        snprintf(msg, sizeof(msg), "Failed to set new level: more than %d directives with %s\n%s",
                 LOG_MAX_DIRECTIVES, spec, adm_logging_help);
        adm_respond_text(c, 400, msg);
        return;
    }
    char cur[LOG_FILTER_STR_MAX];
    log_filter_str(cur, sizeof(cur));
    LOG_I("ztunnel::telemetry", "new log filter is %s", cur);
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

/* ---- connection states ---- */

static void adm_list_del(struct adm_conn *c)
{
    struct adm_port *pt = c->port;
    if (!pt || !c->listed) return;
    c->listed = false;
    QUEUE_DEL(pt->head, pt->tail, c, prev, next);
}

static void adm_list_append(struct adm_conn *c)
{
    struct adm_port *pt = c->port;
    if (!pt) return;
    c->listed = true;
    QUEUE_APPEND(pt->head, pt->tail, c, prev, next);
}

/* Enters st with that state's deadline, which no later progress extends; the port's list stays ordered by
 * the time of the last state change. keep_deadline: a connection's first request runs under the deadline
 * armed at the accept. */
static void adm_set_state(struct adm_conn *c, enum adm_state st, bool keep_deadline)
{
    static const uint64_t ms[] = {
        [ADM_ST_NEW] = ADM_REQUEST_MS,
        [ADM_ST_READING] = ADM_REQUEST_MS,
        [ADM_ST_WRITING] = ADM_WRITE_MS,
        [ADM_ST_IDLE] = ADM_IDLE_MS,
    };
    c->st = st;
    adm_list_del(c);
    adm_list_append(c);
    if (adm.loop && c->io.fd >= 0 && !keep_deadline) timer_start(adm.loop, &c->deadline, ms[st]);
}

/* ---- llhttp callbacks ---- */

static int adm_on_message_begin(llhttp_t *p)
{
    struct adm_conn *c = p->data;
    adm_set_state(c, ADM_ST_READING, c->st == ADM_ST_NEW);
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
    adm_set_state(c, ADM_ST_WRITING, false);
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

static void adm_conn_free(struct adm_conn *c)
{
    free(c->out);
    free(c);
}

static void adm_conn_close(struct adm_conn *c)
{
    struct adm_port *pt = c->port;
    loop_io_close(adm.loop, &c->io);
    timer_stop(adm.loop, &c->deadline);
    adm_list_del(c);
    pt->nconns--;
    adm.nconns--;
    adm_conn_free(c);
}

/* Runs the parser over buffered input (no I/O): consumes input up to the end of one request, whose response
 * is then in c->out, or all of it. */
static void adm_conn_parse(struct adm_conn *c)
{
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
        LOG_LIMITED(LOG_DEBUG, "ztunnel::admin", "bad request on port %u: %s", adm.ports[c->kind],
                    llhttp_errno_name(e));
        c->close_after = true;
        c->in_off = c->in_len;
        adm_respond(c, 400, NULL, "", 0);
        adm_set_state(c, ADM_ST_WRITING, false);
    }
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
    return 0;
}

/* The response in c->out was written: back to waiting for a request. */
static void adm_response_done(struct adm_conn *c)
{
    bool had = c->out != NULL;
    free(c->out);
    c->out = NULL;
    c->out_off = c->out_len = 0;
    if (had && c->st == ADM_ST_WRITING) adm_set_state(c, ADM_ST_IDLE, false);
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
        adm_response_done(c);

        if (c->in_off < c->in_len) {
            adm_conn_parse(c);
            continue;
        }
        if (c->peer_eof) goto close;

        ssize_t n = recv(c->io.fd, c->in, sizeof(c->in), 0);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                /* No timer restart here: the deadline of the current state stands (slowloris). */
                loop_io_mod(adm.loop, &c->io, EPOLLIN | EPOLLRDHUP);
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

static void adm_conn_deadline(struct timer *t)
{
    struct adm_conn *c = container_of(t, struct adm_conn, deadline);
    if (c->st != ADM_ST_IDLE)
        LOG_LIMITED(LOG_DEBUG, "ztunnel::admin", "closing a connection on port %u: %s for too long",
                    adm.ports[c->kind], adm_state_to_str(c->st));
    adm_conn_close(c);
}

/* A connection of kind in its first state; fd < 0 for one fed by admin_feed. NULL on ENOMEM. */
static struct adm_conn *adm_conn_alloc(int fd, enum adm_kind kind, struct adm_port *pt)
{
    struct adm_conn *c = calloc(1, sizeof(*c));
    if (!c) return NULL;
    c->kind = kind;
    c->port = pt;
    c->io.fd = fd;
    c->io.cb = adm_conn_io;
    c->deadline.cb = adm_conn_deadline;
    llhttp_init(&c->parser, HTTP_REQUEST, &adm.settings);
    c->parser.data = c;
    return c;
}

/* A full port makes room: its oldest idle connection goes, or, when every one is busy, the one whose current
 * step (request or response) started first, which is the nearest to its deadline anyway. */
static void adm_port_evict(struct adm_port *pt)
{
    struct adm_conn *victim = pt->head;
    for (struct adm_conn *c = pt->head; c; c = c->next) {
        if (c->st == ADM_ST_NEW || c->st == ADM_ST_IDLE) {
            victim = c;
            break;
        }
    }
    if (!victim) return;
    LOG_LIMITED(LOG_WARN, "ztunnel::admin",
                "port %u has %d connections (the limit): closing the oldest %s one", adm.ports[pt->kind],
                pt->nconns, adm_state_to_str(victim->st));
    adm_conn_close(victim);
}

/* Adopts an accepted, non-blocking socket fd for kind, making room in its port first. Returns the connection
 * or NULL (fd closed). */
static struct adm_conn *adm_conn_new(int fd, enum adm_kind kind)
{
    static const int max_conns[3] = {ADM_ADMIN_MAX_CONNS, ADM_METRICS_MAX_CONNS, ADM_READY_MAX_CONNS};
    struct adm_port *pt = &adm.ports_[kind];
    pt->max_conns = max_conns[kind];
    if (pt->nconns >= pt->max_conns) adm_port_evict(pt);
    struct adm_conn *c = adm_conn_alloc(fd, kind, pt);
    if (!c) {
        LOG_LIMITED(LOG_WARN, "ztunnel::admin", "port %u: out of memory for a connection", adm.ports[kind]);
        close(fd);
        return NULL;
    }
    if (loop_io_add(adm.loop, &c->io, EPOLLIN | EPOLLRDHUP) < 0) {
        close(fd);
        adm_conn_free(c);
        return NULL;
    }
    pt->nconns++;
    adm.nconns++;
    adm_set_state(c, ADM_ST_NEW, false);
    return c;
}

static void adm_accept(struct acceptor *a, int fd, const struct sockaddr_storage *peer)
{
    (void)peer;
    adm_conn_new(fd, container_of(a, struct adm_port, acc)->kind);
}

static const struct acceptor_ops adm_acceptor_ops = {.on_accept = adm_accept};

size_t admin_feed(enum admin_server which, const uint8_t *data, size_t len, size_t chunk,
                  void (*on_response)(void *ud, const char *resp, size_t n), void *ud)
{
    size_t responses = 0;
    if ((unsigned)which > ADMIN_SERVER_READINESS) return 0;
    if (!adm.settings.on_message_complete) adm_settings_init();
    if (chunk == 0 || chunk > ADM_IN_BUF) chunk = ADM_IN_BUF;
    struct adm_conn *c = adm_conn_alloc(-1, (enum adm_kind)which, NULL);
    if (!c) return 0;
    /* The socket loop of adm_conn_process, with "read" taking the next chunk and "write" the callback. */
    while (true) {
        if (c->out) {
            if (on_response) on_response(ud, c->out, c->out_len);
            responses++;
            c->quit_pending = false; /* no shutdown from a fed connection */
            if (c->close_after) break;
            adm_response_done(c);
        }
        if (c->close_after) break;
        if (c->in_off < c->in_len) {
            adm_conn_parse(c);
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
    adm_conn_free(c);
    return responses;
}

/* ---- start ---- */

/* The ports admin_start binds, as handed in by admin_set_ports (the program parses ADMIN_PORT etc.). */
static uint16_t adm_want[3] = {ADMIN_PORT_DEFAULT, METRICS_PORT_DEFAULT, READINESS_PORT_DEFAULT};

void admin_set_ports(uint16_t admin, uint16_t metrics, uint16_t readiness)
{
    adm_want[ADM_ADMIN] = admin;
    adm_want[ADM_METRICS] = metrics;
    adm_want[ADM_READY] = readiness;
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
    uint16_t want[3];
    int rc = 0, fds[3] = {-1, -1, -1};
    pthread_t th;

    if (adm.loop) {
        snprintf(err, errlen, "admin already started");
        return -EALREADY;
    }
    for (int i = 0; i < 3; i++)
        want[i] = adm_want[i];
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
    adm_settings_init();
    for (int i = 0; i < 3; i++) {
        static const char *const names[3] = {"admin", "metrics", "readiness"};
        struct adm_port *pt = &adm.ports_[i];
        pt->kind = (enum adm_kind)i;
        snprintf(pt->name, sizeof(pt->name), "%s :%u", names[i], adm.ports[i]);
        rc = acceptor_start(&pt->acc, adm.loop, fds[i], pt->name, &adm_acceptor_ops);
        fds[i] = -1; /* the acceptor owns it, also on failure */
        if (rc < 0) {
            snprintf(err, errlen, "admin event loop: %s", strerror(-rc));
            goto out;
        }
    }
    if ((rc = -pthread_create(&th, NULL, adm_thread, NULL)) < 0) {
        snprintf(err, errlen, "admin thread: %s", strerror(-rc));
        goto out;
    }
    pthread_detach(th);
    LOG_I("ztunnel::admin", "admin on 127.0.0.1:%u, metrics on :%u, readiness on :%u", adm.ports[0],
          adm.ports[1], adm.ports[2]);
    return 0;
out:
    for (int i = 0; i < 3; i++) {
        if (fds[i] >= 0) close(fds[i]);
        acceptor_close(&adm.ports_[i].acc);
    }
    if (adm.loop) {
        loop_free(adm.loop);
        adm.loop = NULL;
    }
    memset(adm.ports, 0, sizeof(adm.ports));
    return rc;
}
