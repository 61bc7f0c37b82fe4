/* RequestAuthentication manifests to zmesh.v1.RequestAuthentication, and the JWKS resolver (see the header).
 */
#include "zmeshd/request_authentication.h"

#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"
#include "core/loop.h"
#include "mesh/l7.h"
#include "mesh/l7authn.h"
#include "mesh/l7authz.h"
#include "zmesh/request_authentication.pb-c.h"
#include "zmeshd/l7.h"

#define LOG_JWKS "zmeshd::jwks"
#define GATEWAY_GROUP "gateway.networking.k8s.io"

/* ---- the resolver ---- */

enum jwks_state { JWKS_PENDING, JWKS_OK, JWKS_FAILED };

struct jwks_entry {
    struct jwks_entry *next;
    char *issuer, *uri; /* uri "" = OpenID discovery from the issuer */
    int timeout_ms;
    enum jwks_state state;
    char *body;     /* the last document fetched (kept across failed refreshes), or NULL */
    char err[256];  /* the last failure */
    time_t next_at; /* when the thread fetches it again (0 = now) */
    unsigned fails; /* failed fetches in a row */
    bool busy;      /* the thread is fetching it */
};

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t thread;
    bool running, stop;
    struct jwks_entry *head;
    size_t n;
    int efd; /* eventfd: the thread's "something changed" for the loop */
    struct loop *loop;
    struct io io;
    void (*fn)(void *ud);
    void *ud;
    unsigned refresh_s;
} R = {.mu = PTHREAD_MUTEX_INITIALIZER,
       .cv = PTHREAD_COND_INITIALIZER,
       .efd = -1,
       .refresh_s = ZMESHD_JWKS_REFRESH_S};

void zmeshd_jwks_set_refresh_s(unsigned s)
{
    pthread_mutex_lock(&R.mu);
    R.refresh_s = s ? s : 1;
    pthread_mutex_unlock(&R.mu);
}

struct membuf {
    char *p;
    size_t n;
    bool too_big;
};

static size_t on_body(char *data, size_t sz, size_t nm, void *ud)
{
    struct membuf *b = ud;
    size_t n = sz * nm;
    if (b->n + n > ZMESHD_JWKS_MAX_BYTES) {
        b->too_big = true;
        return 0;
    }
    char *p = realloc(b->p, b->n + n + 1);
    if (!p) return 0;
    memcpy(p + b->n, data, n);
    b->n += n;
    p[b->n] = 0;
    b->p = p;
    return n;
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

int zmeshd_jwks_fetch(const char *url, int timeout_ms, char **body, char *err, size_t errlen)
{
    pthread_once(&curl_once, curl_init);
    *body = NULL;
    CURL *c = curl_easy_init();
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    struct membuf b = {0};
    char cerr[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(c, CURLOPT_URL, url);
    /* http and https only, also across redirects (Go's client, which istiod uses, follows up to 10). */
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(c, CURLOPT_MAXREDIRS, 10L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, cerr);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "zmeshd");
    CURLcode rc = curl_easy_perform(c);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(c);
    int ret = 0;
    if (b.too_big) {
        snprintf(err, errlen, "document larger than %u bytes", ZMESHD_JWKS_MAX_BYTES);
        ret = -EFBIG;
    } else if (rc != CURLE_OK) {
        snprintf(err, errlen, "%s", *cerr ? cerr : curl_easy_strerror(rc));
        ret = rc == CURLE_OPERATION_TIMEDOUT ? -ETIMEDOUT : -EIO;
    } else if (status < 200 || status >= 300) {
        /* istiod: "status %d, message %q" (the body cut to 100 bytes). */
        snprintf(err, errlen, "status %ld, message \"%.100s\"", status, b.p ? b.p : "");
        for (char *q = err; *q; q++)
            if ((unsigned char)*q < 0x20) *q = ' ';
        ret = -EPROTO;
    }
    if (ret < 0) {
        free(b.p);
        return ret;
    }
    *body = b.p ? b.p : strdup("");
    return *body ? 0 : -ENOMEM;
}

/* One fetch for entry e (copies of its keys), with OpenID discovery when it has no uri. */
static int fetch_entry(const char *issuer, const char *uri, int timeout_ms, char **body, char *err,
                       size_t errlen)
{
    if (*uri) return zmeshd_jwks_fetch(uri, timeout_ms, body, err, errlen);
    char url[2048];
    size_t il = strlen(issuer);
    snprintf(url, sizeof(url), "%.*s/.well-known/openid-configuration",
             (int)(il && issuer[il - 1] == '/' ? il - 1 : il), issuer);
    char *doc;
    int rc = zmeshd_jwks_fetch(url, timeout_ms, &doc, err, errlen);
    if (rc < 0) return rc;
    json_error_t je;
    json_t *j = json_loads(doc, 0, &je);
    free(doc);
    const char *ju = json_string_value(json_object_get(j, "jwks_uri"));
    if (!ju) {
        snprintf(err, errlen, "%.200s: no jwks_uri string in the OpenID discovery document", url);
        json_decref(j);
        return -EPROTO;
    }
    rc = zmeshd_jwks_fetch(ju, timeout_ms, body, err, errlen);
    json_decref(j);
    return rc;
}

static void notify(void)
{
    uint64_t one = 1;
    if (R.efd >= 0 && write(R.efd, &one, sizeof(one)) < 0) { /* the counter saturating is fine */
    }
}

static void *resolver(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&R.mu);
    while (!R.stop) {
        time_t now = time(NULL), wake = 0;
        struct jwks_entry *due = NULL;
        for (struct jwks_entry *e = R.head; e; e = e->next) {
            if (e->busy) continue;
            if (e->next_at <= now) {
                due = e;
                break;
            }
            if (!wake || e->next_at < wake) wake = e->next_at;
        }
        if (!due) {
            if (!wake) {
                pthread_cond_wait(&R.cv, &R.mu);
            } else {
                struct timespec ts = {.tv_sec = wake};
                pthread_cond_timedwait(&R.cv, &R.mu, &ts);
            }
            continue;
        }
        due->busy = true;
        char *issuer = strdup(due->issuer), *uri = strdup(due->uri);
        int tmo = due->timeout_ms;
        pthread_mutex_unlock(&R.mu);
        char *body = NULL, err[256] = "out of memory";
        int rc = issuer && uri ? fetch_entry(issuer, uri, tmo, &body, err, sizeof(err)) : -ENOMEM;
        pthread_mutex_lock(&R.mu);
        due->busy = false;
        bool changed = false;
        now = time(NULL);
        if (rc == 0) {
            changed = due->state != JWKS_OK || !due->body || strcmp(due->body, body) != 0;
            if (changed) {
                free(due->body);
                due->body = body;
                body = NULL;
                LOG_I(LOG_JWKS, "fetched the JWKS of issuer %s from %s", issuer,
                      *uri ? uri : "OpenID discovery");
            }
            due->state = JWKS_OK;
            due->fails = 0;
            due->err[0] = 0;
            due->next_at = now + (time_t)R.refresh_s;
        } else {
            changed = due->state != JWKS_FAILED && !due->body; /* a cached document stays in use */
            if (!due->body) due->state = JWKS_FAILED;
            snprintf(due->err, sizeof(due->err), "%s", err);
            unsigned long back = ZMESHD_JWKS_RETRY_S;
            for (unsigned i = 1; i < due->fails + 1 && back < ZMESHD_JWKS_RETRY_MAX_S; i++)
                back *= 2;
            if (back > ZMESHD_JWKS_RETRY_MAX_S) back = ZMESHD_JWKS_RETRY_MAX_S;
            due->fails++;
            due->next_at = now + (time_t)back;
            LOG_W(LOG_JWKS, "cannot fetch the JWKS of issuer %s from %s: %s (retry in %lus)", issuer,
                  *uri ? uri : "OpenID discovery", err, back);
        }
        free(body);
        free(issuer);
        free(uri);
        if (changed) notify();
    }
    pthread_mutex_unlock(&R.mu);
    return NULL;
}

/* The cached document for (issuer, uri), copied into *body (NULL when none yet), and the state; a first use
 * creates the entry and wakes the resolver. Returns the state, or -ENOMEM. */
static int jwks_lookup(const char *issuer, const char *uri, int timeout_ms, char **body, char *err,
                       size_t errlen)
{
    *body = NULL;
    pthread_mutex_lock(&R.mu);
    struct jwks_entry *e = R.head;
    while (e && (strcmp(e->issuer, issuer) || strcmp(e->uri, uri)))
        e = e->next;
    int rc;
    if (!e) {
        if (R.n >= ZMESHD_JWKS_MAX_ENTRIES) {
            snprintf(err, errlen, "more than %d JWKS sources in use", ZMESHD_JWKS_MAX_ENTRIES);
            rc = JWKS_FAILED;
            goto out;
        }
        if (!R.running) {
            R.stop = false;
            if (pthread_create(&R.thread, NULL, resolver, NULL) != 0) {
                snprintf(err, errlen, "cannot start the JWKS resolver thread");
                rc = JWKS_FAILED;
                goto out;
            }
            R.running = true;
        }
        e = calloc(1, sizeof(*e));
        if (!e || !(e->issuer = strdup(issuer)) || !(e->uri = strdup(uri))) {
            if (e) free(e->issuer);
            free(e);
            rc = -ENOMEM;
            goto out;
        }
        e->timeout_ms = timeout_ms;
        e->state = JWKS_PENDING;
        e->next = R.head;
        R.head = e;
        R.n++;
        pthread_cond_signal(&R.cv);
    }
    if (timeout_ms != e->timeout_ms) e->timeout_ms = timeout_ms;
    if (e->body && !(*body = strdup(e->body))) {
        rc = -ENOMEM;
        goto out;
    }
    snprintf(err, errlen, "%s", e->state == JWKS_PENDING ? "not fetched yet" : e->err);
    rc = e->body ? JWKS_OK : (int)e->state;
out:
    pthread_mutex_unlock(&R.mu);
    return rc;
}

static void on_event(struct io *io, uint32_t ev)
{
    uint64_t v;
    (void)ev;
    if (read(io->fd, &v, sizeof(v)) < 0) return;
    if (R.fn) R.fn(R.ud);
}

int zmeshd_jwks_watch(struct loop *l, void (*fn)(void *ud), void *ud)
{
    pthread_mutex_lock(&R.mu);
    if (R.efd < 0 && (R.efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0) {
        int e = errno;
        pthread_mutex_unlock(&R.mu);
        return -e;
    }
    pthread_mutex_unlock(&R.mu);
    if (R.loop) loop_io_del(R.loop, &R.io);
    R.loop = l;
    R.fn = fn;
    R.ud = ud;
    R.io = (struct io){.fd = R.efd, .cb = on_event};
    return loop_io_add(l, &R.io, EPOLLIN);
}

void zmeshd_jwks_shutdown(void)
{
    if (R.loop) loop_io_del(R.loop, &R.io);
    R.loop = NULL;
    R.fn = NULL;
    pthread_mutex_lock(&R.mu);
    bool running = R.running;
    R.stop = true;
    pthread_cond_broadcast(&R.cv);
    pthread_mutex_unlock(&R.mu);
    /* A fetch in progress ends within its timeout. */
    if (running) pthread_join(R.thread, NULL);
    pthread_mutex_lock(&R.mu);
    R.running = false;
    for (struct jwks_entry *e = R.head, *n; e; e = n) {
        n = e->next;
        free(e->issuer);
        free(e->uri);
        free(e->body);
        free(e);
    }
    R.head = NULL;
    R.n = 0;
    if (R.efd >= 0) close(R.efd);
    R.efd = -1;
    pthread_mutex_unlock(&R.mu);
}

char *zmeshd_jwks_fake(const char *uri)
{
    /* istiod: n = base64url("Error-IstiodFailedToFetchJwksUri-" + uri), e AQAB, kid "abc". */
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    static const char pre[] = "Error-IstiodFailedToFetchJwksUri-";
    size_t n = strlen(pre) + strlen(uri);
    unsigned char *raw = malloc(n + 1);
    char *enc = malloc((n + 2) / 3 * 4 + 1), *out = NULL;
    if (!raw || !enc) goto done;
    snprintf((char *)raw, n + 1, "%s%s", pre, uri);
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)raw[i] << 16 | (i + 1 < n ? (uint32_t)raw[i + 1] << 8 : 0) |
                     (i + 2 < n ? raw[i + 2] : 0);
        enc[o++] = tbl[v >> 18 & 63];
        enc[o++] = tbl[v >> 12 & 63];
        if (i + 1 < n) enc[o++] = tbl[v >> 6 & 63];
        if (i + 2 < n) enc[o++] = tbl[v & 63];
    }
    enc[o] = 0;
    size_t ol = o + 80;
    if ((out = malloc(ol)))
        snprintf(out, ol, "{\"keys\":[ {\"e\":\"AQAB\",\"kid\":\"abc\",\"kty\":\"RSA\",\"n\":\"%s\"}]}", enc);
done:
    free(raw);
    free(enc);
    return out;
}

/* ---- conversion ---- */

struct conv {
    const struct manifest_src *src;
    manifest_report_fn report;
    void *ud;
    struct l7_arena a;
    bool failed, oom;
};

static void finding(struct conv *c, enum manifest_level lvl, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void finding(struct conv *c, enum manifest_level lvl, const char *field, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    struct manifest_finding f = {.level = lvl, .src = *c->src, .field = field, .message = msg};
    if (lvl == MANIFEST_ERROR) c->failed = true;
    manifest_finding_emit(c->report, c->ud, &f);
}

static char *cdup(struct conv *c, const char *s)
{
    char *d = l7_arena_strndup(&c->a, s, strlen(s));
    if (!d) c->oom = true;
    return d;
}

static void *alloc(struct conv *c, size_t n)
{
    void *p = l7_arena_alloc(&c->a, n ? n : 1);
    if (!p) c->oom = true;
    return p;
}

static void unknown_keys(struct conv *c, const json_t *obj, const char *path, const char *const *allowed)
{
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)obj, k, v)
    {
        bool ok = false;
        for (size_t i = 0; allowed[i]; i++)
            ok |= !strcmp(k, allowed[i]);
        if (!ok) {
            char f[256];
            snprintf(f, sizeof(f), "%s%s%s", path, *path ? "." : "", k);
            finding(c, MANIFEST_WARN, f, "unknown field, ignored");
        }
    }
}

/* obj[key] as a string: 1 and *out, 0 absent or null, -1 reported. */
static int get_str(struct conv *c, const json_t *obj, const char *key, const char *path, const char **out)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_string(v)) {
        char f[256];
        snprintf(f, sizeof(f), "%s%s%s", path, *path ? "." : "", key);
        finding(c, MANIFEST_ERROR, f, "expected a string");
        return -1;
    }
    *out = json_string_value(v);
    return 1;
}

static int get_list(struct conv *c, const json_t *obj, const char *key, const char *path, json_t **out)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_array(v)) {
        char f[256];
        snprintf(f, sizeof(f), "%s%s%s", path, *path ? "." : "", key);
        finding(c, MANIFEST_ERROR, f, "expected a list");
        return -1;
    }
    *out = v;
    return 1;
}

static int get_strs(struct conv *c, const json_t *obj, const char *key, const char *path, char ***out,
                    size_t *n)
{
    json_t *l;
    *out = NULL;
    *n = 0;
    int rc = get_list(c, obj, key, path, &l);
    if (rc <= 0) return rc;
    char **v = alloc(c, json_array_size(l) * sizeof(char *));
    if (!v) return -1;
    for (size_t i = 0; i < json_array_size(l); i++) {
        json_t *s = json_array_get(l, i);
        if (!json_is_string(s)) {
            char f[256];
            snprintf(f, sizeof(f), "%s.%s[%zu]", path, key, i);
            finding(c, MANIFEST_ERROR, f, "expected a string");
            return -1;
        }
        if (!(v[i] = cdup(c, json_string_value(s)))) return -1;
    }
    *out = v;
    *n = json_array_size(l);
    return 1;
}

static char *lower_dup(struct conv *c, const char *s)
{
    char *d = cdup(c, s);
    for (char *p = d; p && *p; p++)
        *p = (char)tolower((unsigned char)*p);
    return d;
}

/* A protobuf Duration's JSON form ("5s", "1.5s", "300ms" is not one: Istio's CRD takes Go durations, so
 * "300ms" and "1m" are accepted too). Returns milliseconds or -1. */
static long duration_ms(const char *s)
{
    char *end;
    double v = strtod(s, &end);
    if (end == s || v < 0) return -1;
    double mul = !strcmp(end, "s") ? 1000 : !strcmp(end, "ms") ? 1 : !strcmp(end, "m") ? 60000 : -1;
    if (mul < 0 || v * mul > 3600000) return -1;
    return (long)(v * mul);
}

static Zmesh__V1__JWTRule *rule_conv(struct conv *c, const json_t *o, const char *path, const char *name)
{
    static const char *const keys[] = {"issuer",
                                       "audiences",
                                       "jwks",
                                       "jwksUri",
                                       "jwks_uri",
                                       "fromHeaders",
                                       "fromParams",
                                       "fromCookies",
                                       "forwardOriginalToken",
                                       "outputPayloadToHeader",
                                       "outputClaimToHeaders",
                                       "timeout",
                                       NULL};
    char f[256];
    if (!json_is_object(o)) {
        finding(c, MANIFEST_ERROR, path, "expected a mapping");
        return NULL;
    }
    unknown_keys(c, o, path, keys);
    Zmesh__V1__JWTRule *r = alloc(c, sizeof(*r));
    if (!r) return NULL;
    zmesh__v1__jwtrule__init(r);
    const char *issuer = NULL, *jwks = NULL, *uri = NULL, *tmo = NULL, *payload = NULL;
    if (get_str(c, o, "issuer", path, &issuer) < 0 || get_str(c, o, "jwks", path, &jwks) < 0 ||
        get_str(c, o, "jwksUri", path, &uri) < 0 || get_str(c, o, "timeout", path, &tmo) < 0 ||
        get_str(c, o, "outputPayloadToHeader", path, &payload) < 0)
        return NULL;
    if (!uri && get_str(c, o, "jwks_uri", path, &uri) < 0) return NULL;
    if (!issuer || !*issuer) {
        snprintf(f, sizeof(f), "%s.issuer", path);
        finding(c, MANIFEST_ERROR, f, "required");
        return NULL;
    }
    r->issuer = cdup(c, issuer);
    if (get_strs(c, o, "audiences", path, &r->audiences, &r->n_audiences) < 0) return NULL;
    int timeout_ms = ZMESHD_JWKS_TIMEOUT_MS;
    if (tmo) {
        long ms = duration_ms(tmo);
        snprintf(f, sizeof(f), "%s.timeout", path);
        if (ms <= 0) {
            finding(c, MANIFEST_ERROR, f, "expected a duration such as \"5s\" (at most 1h), got \"%.40s\"",
                    tmo);
            return NULL;
        }
        timeout_ms = (int)ms;
    }
    if (jwks && *jwks) {
        if (uri && *uri) {
            snprintf(f, sizeof(f), "%s.jwksUri", path);
            finding(c, MANIFEST_WARN, f, "jwks is set too: the inline jwks is used, jwksUri is not fetched");
        }
        r->jwks = cdup(c, jwks);
    } else {
        if (uri && *uri && strncmp(uri, "http://", 7) && strncmp(uri, "https://", 8)) {
            snprintf(f, sizeof(f), "%s.jwksUri", path);
            finding(c, MANIFEST_ERROR, f, "expected an http:// or https:// URL, got \"%.80s\"", uri);
            return NULL;
        }
        /* The resolver's document, or istiod's fake JWKS until it has one. */
        char *body = NULL, err[256] = "";
        int st = jwks_lookup(issuer, uri ? uri : "", timeout_ms, &body, err, sizeof(err));
        if (st == -ENOMEM) {
            c->oom = true;
            return NULL;
        }
        snprintf(f, sizeof(f), "%s.%s", path, uri && *uri ? "jwksUri" : "issuer");
        if (st != JWKS_OK)
            finding(c, st == JWKS_PENDING ? MANIFEST_INFO : MANIFEST_WARN, f,
                    "JWKS %s: %s; tokens of issuer %s are rejected until it is fetched",
                    st == JWKS_PENDING ? "not fetched yet" : "fetch failed", err, issuer);
        char *doc = body ? body : zmeshd_jwks_fake(uri && *uri ? uri : issuer);
        if (!doc) {
            c->oom = true;
            return NULL;
        }
        /* A fetched document the waypoint would refuse is a failed fetch too: the fake one stands in. */
        struct jwt_jwks parsed;
        char perr[200] = "";
        enum jwt_status ps = jwt_jwks_parse(doc, strlen(doc), &parsed, perr, sizeof(perr));
        if (ps == JWT_OK) {
            jwt_jwks_free(&parsed);
        } else if (body) {
            finding(c, MANIFEST_WARN, f,
                    "the fetched JWKS is not usable (%s%s%s); tokens of issuer %s are rejected",
                    jwt_status_str(ps), *perr ? ": " : "", perr, issuer);
            free(doc);
            doc = zmeshd_jwks_fake(uri && *uri ? uri : issuer);
            if (!doc) {
                c->oom = true;
                return NULL;
            }
        }
        r->jwks = cdup(c, doc);
        free(doc);
        r->jwks_uri = cdup(c, uri ? uri : "");
    }
    json_t *l;
    int rc = get_list(c, o, "fromHeaders", path, &l);
    if (rc < 0) return NULL;
    if (rc > 0) {
        r->from_headers = alloc(c, json_array_size(l) * sizeof(*r->from_headers));
        if (!r->from_headers) return NULL;
        for (size_t i = 0; i < json_array_size(l); i++) {
            json_t *h = json_array_get(l, i);
            static const char *const hk[] = {"name", "prefix", NULL};
            snprintf(f, sizeof(f), "%s.fromHeaders[%zu]", path, i);
            const char *hn = NULL, *pre = "";
            if (!json_is_object(h) || get_str(c, h, "name", f, &hn) <= 0 || !*hn) {
                if (!c->failed) finding(c, MANIFEST_ERROR, f, "expected {name, prefix}");
                return NULL;
            }
            unknown_keys(c, h, f, hk);
            if (get_str(c, h, "prefix", f, &pre) < 0) return NULL;
            Zmesh__V1__JWTHeader *jh = alloc(c, sizeof(*jh));
            if (!jh) return NULL;
            zmesh__v1__jwtheader__init(jh);
            jh->name = lower_dup(c, hn);
            jh->prefix = cdup(c, pre);
            r->from_headers[r->n_from_headers++] = jh;
        }
    }
    if (get_strs(c, o, "fromParams", path, &r->from_params, &r->n_from_params) < 0 ||
        get_strs(c, o, "fromCookies", path, &r->from_cookies, &r->n_from_cookies) < 0)
        return NULL;
    json_t *fw = json_object_get(o, "forwardOriginalToken");
    if (fw && !json_is_boolean(fw)) {
        snprintf(f, sizeof(f), "%s.forwardOriginalToken", path);
        finding(c, MANIFEST_ERROR, f, "expected true or false");
        return NULL;
    }
    r->forward_original_token = json_is_true(fw);
    if (payload) r->output_payload_to_header = lower_dup(c, payload);
    rc = get_list(c, o, "outputClaimToHeaders", path, &l);
    if (rc < 0) return NULL;
    if (rc > 0) {
        r->output_claim_to_headers = alloc(c, json_array_size(l) * sizeof(*r->output_claim_to_headers));
        if (!r->output_claim_to_headers) return NULL;
        for (size_t i = 0; i < json_array_size(l); i++) {
            json_t *h = json_array_get(l, i);
            static const char *const ck[] = {"header", "claim", NULL};
            snprintf(f, sizeof(f), "%s.outputClaimToHeaders[%zu]", path, i);
            const char *hdr = NULL, *claim = NULL;
            if (!json_is_object(h) || get_str(c, h, "header", f, &hdr) <= 0 ||
                get_str(c, h, "claim", f, &claim) <= 0 || !*hdr || !*claim) {
                if (!c->failed) finding(c, MANIFEST_ERROR, f, "expected {header, claim}");
                return NULL;
            }
            unknown_keys(c, h, f, ck);
            Zmesh__V1__ClaimToHeader *ch = alloc(c, sizeof(*ch));
            if (!ch) return NULL;
            zmesh__v1__claim_to_header__init(ch);
            ch->header = lower_dup(c, hdr);
            ch->claim = cdup(c, claim);
            r->output_claim_to_headers[r->n_output_claim_to_headers++] = ch;
        }
    }
    (void)name;
    return c->failed || c->oom ? NULL : r;
}

int zmeshd_convert_request_authn(const json_t *obj, const struct manifest_src *src, uint8_t **pb, size_t *len,
                                 char *name, size_t name_n, manifest_report_fn report, void *ud)
{
    struct conv c = {.src = src, .report = report, .ud = ud};
    int rc = -EINVAL;
    *pb = NULL;
    *len = 0;
    if (!json_is_object(obj)) {
        finding(&c, MANIFEST_ERROR, "", "expected a mapping");
        return -EINVAL;
    }
    static const char *const top[] = {"apiVersion", "kind", "metadata", "spec", "status", NULL};
    unknown_keys(&c, obj, "", top);
    const char *api = "", *kind = "", *ns = "default", *nm = NULL;
    if (get_str(&c, obj, "apiVersion", "", &api) < 0 || get_str(&c, obj, "kind", "", &kind) < 0) goto out;
    if (strcmp(kind, "RequestAuthentication") != 0) {
        finding(&c, MANIFEST_ERROR, "kind", "expected RequestAuthentication, got \"%.40s\"", kind);
        goto out;
    }
    if (strcmp(api, "security.istio.io/v1") != 0 && strcmp(api, "security.istio.io/v1beta1") != 0) {
        finding(&c, MANIFEST_ERROR, "apiVersion", "expected security.istio.io/v1 or v1beta1, got \"%.60s\"",
                api);
        goto out;
    }
    json_t *md = json_object_get(obj, "metadata");
    if (!json_is_object(md) || get_str(&c, md, "name", "metadata", &nm) <= 0 || !*nm) {
        if (!c.failed) finding(&c, MANIFEST_ERROR, "metadata.name", "missing");
        goto out;
    }
    if (get_str(&c, md, "namespace", "metadata", &ns) < 0) goto out;
    if (!*ns) ns = "default";
    if (snprintf(name, name_n, "%s/%s", ns, nm) >= (int)name_n) {
        finding(&c, MANIFEST_ERROR, "metadata.name", "namespace/name longer than %zu bytes", name_n - 1);
        goto out;
    }
    json_t *spec = json_object_get(obj, "spec");
    if (spec && !json_is_object(spec)) {
        finding(&c, MANIFEST_ERROR, "spec", "expected a mapping");
        goto out;
    }
    static const char *const sk[] = {"selector", "targetRef", "targetRefs", "jwtRules", NULL};
    if (spec) unknown_keys(&c, spec, "spec", sk);
    json_t *tl = json_object_get(spec, "targetRefs"), *single = NULL;
    if (json_object_get(spec, "selector")) {
        if (tl || json_object_get(spec, "targetRef")) {
            finding(&c, MANIFEST_ERROR, "spec.selector", "only one of selector and targetRefs may be set");
            goto out;
        }
        /* Istio: a waypoint enforces only the policies that name it (or its Services) in targetRefs. */
        finding(
            &c, MANIFEST_WARN, "spec.selector",
            "a policy with a selector applies to the selected workloads' sidecars, not to a waypoint: not "
            "served to waypoints (use targetRefs)");
        rc = -ENOENT;
        goto out;
    }
    if (!tl && !json_object_get(spec, "targetRef")) {
        finding(&c, MANIFEST_INFO, "spec.targetRefs",
                "no targetRefs: a namespace-wide policy applies to sidecars, not to a waypoint; not served "
                "to waypoints");
        rc = -ENOENT;
        goto out;
    }
    if (tl && json_object_get(spec, "targetRef")) {
        finding(&c, MANIFEST_ERROR, "spec.targetRef", "only one of targetRef and targetRefs may be set");
        goto out;
    }
    const char *tpath = "spec.targetRefs";
    if (!tl) {
        if (!(single = json_array())) goto nomem;
        json_array_append(single, json_object_get(spec, "targetRef"));
        tl = single;
        tpath = "spec.targetRef";
    }
    Zmesh__V1__RequestAuthentication m = ZMESH__V1__REQUEST_AUTHENTICATION__INIT;
    m.namespace_ = (char *)ns;
    m.name = (char *)nm;
    if (!json_is_array(tl) || json_array_size(tl) == 0 || json_array_size(tl) > L7_MAX_TARGETS) {
        finding(&c, MANIFEST_ERROR, tpath, "expected 1-%d targets", L7_MAX_TARGETS);
        json_decref(single);
        goto out;
    }
    m.targets = alloc(&c, json_array_size(tl) * sizeof(*m.targets));
    for (size_t i = 0; m.targets && i < json_array_size(tl); i++) {
        json_t *t = json_array_get(tl, i);
        char f[80];
        if (single)
            snprintf(f, sizeof(f), "%s", tpath);
        else
            snprintf(f, sizeof(f), "%s[%zu]", tpath, i);
        static const char *const tk[] = {"group", "kind", "name", "namespace", NULL};
        const char *group = "", *tkind = "", *tname = NULL, *tns = ns;
        if (!json_is_object(t)) {
            finding(&c, MANIFEST_ERROR, f, "expected a mapping");
            break;
        }
        unknown_keys(&c, t, f, tk);
        if (get_str(&c, t, "group", f, &group) < 0 || get_str(&c, t, "kind", f, &tkind) < 0 ||
            get_str(&c, t, "namespace", f, &tns) < 0)
            break;
        char nf[100];
        snprintf(nf, sizeof(nf), "%s.name", f);
        if (get_str(&c, t, "name", f, &tname) <= 0 || !*tname) {
            if (!c.failed) finding(&c, MANIFEST_ERROR, nf, "missing");
            break;
        }
        if (strcmp(tns, ns) != 0) {
            snprintf(nf, sizeof(nf), "%s.namespace", f);
            finding(&c, MANIFEST_ERROR, nf, "a target must be in the policy's namespace %s", ns);
            break;
        }
        Zmesh__V1__PolicyTarget *pt = alloc(&c, sizeof(*pt));
        if (!pt) break;
        zmesh__v1__policy_target__init(pt);
        if (!strcmp(group, GATEWAY_GROUP) && !strcmp(tkind, "Gateway"))
            pt->kind = ZMESH__V1__POLICY_TARGET__KIND__GATEWAY;
        else if (!*group && !strcmp(tkind, "Service"))
            pt->kind = ZMESH__V1__POLICY_TARGET__KIND__SERVICE;
        else {
            snprintf(nf, sizeof(nf), "%s.kind", f);
            finding(&c, MANIFEST_ERROR, nf, "unsupported target %s%s%s (Gateway and Service are supported)",
                    group, *group ? "/" : "", tkind);
            break;
        }
        pt->namespace_ = cdup(&c, ns);
        pt->name = cdup(&c, tname);
        m.targets[m.n_targets++] = pt;
    }
    json_decref(single);
    if (c.failed || c.oom) goto out;
    json_t *rl;
    int r = get_list(&c, spec, "jwtRules", "spec", &rl);
    if (r < 0) goto out;
    if (r > 0) {
        m.jwt_rules = alloc(&c, json_array_size(rl) * sizeof(*m.jwt_rules));
        if (!m.jwt_rules) goto nomem;
        for (size_t i = 0; i < json_array_size(rl); i++) {
            char f[64];
            snprintf(f, sizeof(f), "spec.jwtRules[%zu]", i);
            Zmesh__V1__JWTRule *jr = rule_conv(&c, json_array_get(rl, i), f, name);
            if (!jr) goto out;
            m.jwt_rules[m.n_jwt_rules++] = jr;
        }
    }
    if (c.failed || c.oom) goto out;
    /* Packed, then compiled by the waypoint's model: what zmeshd serves is what the waypoint takes. */
    size_t n = protobuf_c_message_get_packed_size(&m.base);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf) goto nomem;
    protobuf_c_message_pack(&m.base, buf);
    struct l7_authn *a = NULL;
    char err[512];
    int crc = l7_authn_compile(name, buf, n, &a, err, sizeof(err));
    if (crc < 0) {
        free(buf);
        if (crc == -ENOMEM) goto nomem;
        finding(&c, MANIFEST_ERROR, "spec", "%s", err);
        goto out;
    }
    l7_authn_free(a);
    *pb = buf;
    *len = n;
    rc = 0;
    goto out;
nomem:
    rc = -ENOMEM;
out:
    if (c.oom) rc = -ENOMEM;
    l7_arena_free(&c.a);
    return rc;
}
