/* The admin (15000), metrics (15020) and readiness (15021) HTTP servers (istio/ztunnel
 * src/admin.rs, src/metrics/server.rs, src/readiness/server.rs). One thread, one event loop, one HTTP/1.1
 * server (http1/server.h: llhttp, keep-alive and pipelining, one response in flight per connection, bounded
 * request sizes) with the three ports; this file has their routes.
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

#include "core/log.h"
#include "core/loop.h"
#include "core/net.h"
#include "http1/server.h"
#include "mesh/model.h"
#include "tls/ca.h"
#include "tls/identity.h"
#include "ztunnel/metrics.h"

#define ADM_URL_MAX 8192 /* longer request targets get 414 */
/* A larger header block gets 431. Istio's ztunnel serves these ports with hyper's max_buf_size of 8 KiB
 * (src/hyper_util.rs), which bounds the request head the same way. */
#define ADM_HEADERS_MAX (8 * 1024)
#define ADM_BODY_MAX (64 * 1024) /* a larger body gets 413 (no endpoint reads bodies) */
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

static const struct http1_limits adm_limits[3] = {
    [ADM_ADMIN] = {ADM_URL_MAX, ADM_HEADERS_MAX, ADM_BODY_MAX, ADM_ADMIN_MAX_CONNS, ADM_REQUEST_MS,
                   ADM_WRITE_MS, ADM_IDLE_MS},
    [ADM_METRICS] = {ADM_URL_MAX, ADM_HEADERS_MAX, ADM_BODY_MAX, ADM_METRICS_MAX_CONNS, ADM_REQUEST_MS,
                     ADM_WRITE_MS, ADM_IDLE_MS},
    [ADM_READY] = {ADM_URL_MAX, ADM_HEADERS_MAX, ADM_BODY_MAX, ADM_READY_MAX_CONNS, ADM_REQUEST_MS,
                   ADM_WRITE_MS, ADM_IDLE_MS},
};

static struct {
    struct loop *loop;
    struct http1_server *srv;
    struct admin_hooks hooks;
    uint16_t ports[3];
} adm;

/* ---- handlers ---- */

/* Istio answers OpenMetrics when any comma-separated Accept entry's media type is
 * application/openmetrics-text (src/metrics/server.rs content_type). */
static bool adm_accept_openmetrics(const char *accept)
{
    static const char mt[] = "application/openmetrics-text";
    for (const char *p = accept; *p;) {
        p += strspn(p, " \t");
        size_t n = strcspn(p, ";,");
        size_t k = n;
        while (k > 0 && (p[k - 1] == ' ' || p[k - 1] == '\t'))
            k--;
        if (k == sizeof(mt) - 1 && !strncasecmp(p, mt, k)) return true;
        p += n;
        p += strcspn(p, ","); /* past the parameters */
        if (*p == ',') p++;
    }
    return false;
}

static void adm_metrics(struct http1_request *r)
{
    size_t len = 0;
    bool om = adm_accept_openmetrics(r->accept);
    char *body = metrics_render(om, &len);
    if (!body) {
        http1_respond_text(r, 500, "out of memory\n");
        return;
    }
    http1_respond(r, 200, metrics_content_type(om), body, len);
    free(body);
}

static void adm_ready(struct http1_request *r)
{
    const char *pending = adm.hooks.pending ? adm.hooks.pending(adm.hooks.ud) : NULL;
    if (r->method != HTTP_GET) {
        http1_respond(r, 405, NULL, "", 0);
    } else if (!pending || !*pending) {
        http1_respond_text(r, 200, "ready\n");
    } else {
        char msg[512];
        snprintf(msg, sizeof(msg), "not ready, pending: %s\n", pending);
        http1_respond_text(r, 500, msg);
    }
}

static void adm_config_dump(struct http1_request *r)
{
    struct snapshot *s = adm.hooks.snapshot_get ? adm.hooks.snapshot_get(adm.hooks.ud) : NULL;
    struct identity_status *certs = NULL;
    int n_certs = adm.hooks.certs_get ? adm.hooks.certs_get(adm.hooks.ud, &certs) : 0;
    struct admin_pod *pods = NULL;
    int n_pods = adm.hooks.pods_get ? adm.hooks.pods_get(adm.hooks.ud, &pods) : -1;
    size_t len = 0;
    char *body = config_dump_render(s, certs, n_certs > 0 ? (size_t)n_certs : 0, pods, n_pods, &len);
    free(pods);
    if (body)
        http1_respond(r, 200, "application/json", body, len);
    else
        http1_respond_text(r, 500, "out of memory\n");
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

static void adm_logging_list(struct http1_request *r)
{
    char cur[LOG_FILTER_STR_MAX], msg[LOG_FILTER_STR_MAX + 32];
    log_filter_str(cur, sizeof(cur));
    snprintf(msg, sizeof(msg), "current log level is %s\n", cur);
    http1_respond_text(r, 200, msg);
}

/* POST /logging: ?level=<spec> (Istio), ?reset, and Envoy's ?<target>=<level> (e.g. ?access=debug), which
 * Istio's help text points to ("mirror envoy's behavior"). */
static void adm_logging(struct http1_request *r, char *query)
{
    char spec[ADM_LEVEL_MAX], bad[ADM_LEVEL_MAX] = "", msg[2 * ADM_LEVEL_MAX + sizeof(adm_logging_help) + 64];
    size_t w = 0;
    bool reset = false, any = false;

    spec[0] = 0;
    if (r->method != HTTP_POST) {
        snprintf(msg, sizeof(msg), "Invalid HTTP method\n %s", adm_logging_help);
        http1_respond_text(r, 405, msg);
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
        adm_logging_list(r);
        return;
    }
    if (*bad) {
        snprintf(msg, sizeof(msg), "Invalid level provided: %s\n%s", bad, adm_logging_help);
        http1_respond_text(r, 400, msg);
        return;
    }
    if (log_filter_update(reset, spec) < 0) {
        /* Every clause was checked above: only the filter's size can refuse it (?reset starts over). */
        snprintf(msg, sizeof(msg), "Failed to set new level: more than %d directives with %s\n%s",
                 LOG_MAX_DIRECTIVES, spec, adm_logging_help);
        http1_respond_text(r, 400, msg);
        return;
    }
    char cur[LOG_FILTER_STR_MAX];
    log_filter_str(cur, sizeof(cur));
    LOG_I("ztunnel::telemetry", "new log filter is %s", cur);
    adm_logging_list(r);
}

static void adm_quit(struct http1_request *r)
{
    if (r->method != HTTP_POST) {
        http1_respond(r, 405, NULL, "", 0);
        return;
    }
    http1_respond_text(r, 200, "shutdown now\n");
    /* Once the response is with the kernel; never from a fed connection (port 0). */
    if (r->port && adm.hooks.quit) {
        r->after_write = adm.hooks.quit;
        r->after_write_ud = adm.hooks.ud;
    }
}

static void adm_dashboard(struct http1_request *r)
{
    static const char html[] =
        "<!DOCTYPE html>\n<html><head><title>ztunnel admin</title></head><body>\n<table>\n"
        "<tr><td><a href=\"quitquitquit\">quitquitquit</a></td><td>shut down the server</td></tr>\n"
        "<tr><td><a href=\"config_dump\">config_dump</a></td><td>dump the current Ztunnel "
        "configuration</td></tr>\n"
        "<tr><td><a href=\"logging\">logging</a></td><td>query/changing logging levels</td></tr>\n"
        "</table>\n</body></html>\n";
    http1_respond(r, 200, "text/html; charset=utf-8", html, sizeof(html) - 1);
}

/* Routes one request of a port; ud is its enum adm_kind. */
static void adm_route(void *ud, struct http1_request *r)
{
    const char *path = r->path;
    switch (*(const enum adm_kind *)ud) {
    case ADM_METRICS:
        if (!strcmp(path, "/metrics") || !strcmp(path, "/stats/prometheus"))
            adm_metrics(r);
        else
            http1_respond(r, 404, NULL, "", 0);
        break;
    case ADM_READY:
        if (!strcmp(path, "/healthz/ready"))
            adm_ready(r);
        else
            http1_respond(r, 404, NULL, "", 0);
        break;
    case ADM_ADMIN:
        if (!strcmp(path, "/config_dump"))
            adm_config_dump(r);
        else if (!strcmp(path, "/logging"))
            adm_logging(r, r->query);
        else if (!strcmp(path, "/quitquitquit"))
            adm_quit(r);
        else if (!strcmp(path, "/"))
            adm_dashboard(r);
        else
            http1_respond(r, 404, NULL, "", 0);
        break;
    }
}

static const enum adm_kind adm_kinds[3] = {ADM_ADMIN, ADM_METRICS, ADM_READY};

size_t admin_feed(enum admin_server which, const uint8_t *data, size_t len, size_t chunk,
                  void (*on_response)(void *ud, const char *resp, size_t n), void *ud)
{
    if ((unsigned)which > ADMIN_SERVER_READINESS) return 0;
    return http1_feed(&adm_limits[which], adm_route, (void *)&adm_kinds[which], data, len, chunk, on_response,
                      ud);
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
    if (!(adm.loop = loop_new()) || !(adm.srv = http1_server_new(adm.loop, "ztunnel::admin"))) {
        rc = -ENOMEM;
        snprintf(err, errlen, "admin event loop: out of memory");
        goto out;
    }
    adm.hooks = *h;
    for (int i = 0; i < 3; i++) {
        static const char *const names[3] = {"admin", "metrics", "readiness"};
        char name[32];
        snprintf(name, sizeof(name), "%s :%u", names[i], adm.ports[i]);
        rc = http1_server_listen(adm.srv, fds[i], name, &adm_limits[i], adm_route, (void *)&adm_kinds[i]);
        fds[i] = -1; /* the server owns it, also on failure */
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
    for (int i = 0; i < 3; i++)
        if (fds[i] >= 0) close(fds[i]);
    http1_server_free(adm.srv);
    adm.srv = NULL;
    if (adm.loop) {
        loop_free(adm.loop);
        adm.loop = NULL;
    }
    memset(adm.ports, 0, sizeof(adm.ports));
    return rc;
}
