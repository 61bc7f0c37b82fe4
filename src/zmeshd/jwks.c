/* The JWKS resolver of zmeshd (request_authentication.h describes what it does): a thread that fetches
 * jwksUri documents with libcurl, a cache, the refresh, and the watcher that reconverts on changes. Only
 * zmeshd links it (xds.c calls zmeshd_jwks_watch, which installs it as the conversion's resolver), so the
 * waypoint and the CLI, which convert RequestAuthentication too, do not load libcurl. */
#include "zmeshd/jwks.h"

#include <curl/curl.h>
#include <errno.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "core/log.h"
#include "core/loop.h"
#include "zmeshd/request_authentication.h"

#define LOG_JWKS "zmeshd::jwks"

/* ---- the resolver ---- */

struct jwks_entry {
    struct jwks_entry *next;
    char *issuer, *uri; /* uri "" = OpenID discovery from the issuer */
    int timeout_ms;
    int state;      /* ZMESHD_JWKS_* */
    char *body;     /* the last document fetched (kept across failed refreshes), or NULL */
    char err[256];  /* the last failure */
    time_t next_at; /* when the thread fetches it again (0 = now) */
    unsigned fails; /* failed fetches in a row */
    bool busy;      /* the thread is fetching it */
    bool dead;      /* evicted while busy: the thread frees it when its fetch ends */
    unsigned pass;  /* the last conversion pass that looked it up */
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
    unsigned pass; /* the conversion pass under way (zmeshd_jwks_pass_begin) */
    X509 **extra;  /* zmeshd_jwks_set_extra_ca's certificates */
    size_t n_extra;
    char extra_path[1024];
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

int zmeshd_jwks_set_extra_ca(const char *path, char *err, size_t errlen)
{
    X509 **certs = NULL;
    size_t n = 0;
    if (path && *path) {
        BIO *b = BIO_new_file(path, "r");
        if (!b) {
            snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno ? errno : EIO));
            return -(errno ? errno : EIO);
        }
        STACK_OF(X509_INFO) *infos = PEM_X509_INFO_read_bio(b, NULL, NULL, NULL);
        BIO_free(b);
        int k = infos ? sk_X509_INFO_num(infos) : 0;
        certs = calloc(k ? (size_t)k : 1, sizeof(*certs));
        for (int i = 0; certs && i < k; i++) {
            X509_INFO *xi = sk_X509_INFO_value(infos, i);
            if (xi->x509 && X509_up_ref(xi->x509)) certs[n++] = xi->x509;
        }
        sk_X509_INFO_pop_free(infos, X509_INFO_free);
        if (!certs || !n) {
            free(certs);
            snprintf(err, errlen, "%s: %s", path, !infos ? "not PEM" : "no certificate in it");
            return -EINVAL;
        }
    }
    pthread_mutex_lock(&R.mu);
    for (size_t i = 0; i < R.n_extra; i++)
        X509_free(R.extra[i]);
    free(R.extra);
    R.extra = certs;
    R.n_extra = n;
    snprintf(R.extra_path, sizeof(R.extra_path), "%s", n ? path : "");
    pthread_mutex_unlock(&R.mu);
    if (n) LOG_I(LOG_JWKS, "HTTPS jwksUri: the system's CAs and %zu more from %s", n, path);
    return 0;
}

/* libcurl's OpenSSL context for an HTTPS fetch, its default CA bundle already loaded: the extra CAs added to
 * its store (istiod appends its extra.pem to x509.SystemCertPool the same way). */
static CURLcode add_extra_ca(CURL *c, void *sslctx, void *ud)
{
    (void)c;
    (void)ud;
    X509_STORE *st = SSL_CTX_get_cert_store(sslctx);
    pthread_mutex_lock(&R.mu);
    for (size_t i = 0; st && i < R.n_extra; i++)
        (void)X509_STORE_add_cert(st, R.extra[i]); /* a certificate already there is not an error */
    pthread_mutex_unlock(&R.mu);
    return CURLE_OK;
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
    pthread_mutex_lock(&R.mu);
    bool extra = R.n_extra > 0;
    pthread_mutex_unlock(&R.mu);
    if (extra) {
        curl_easy_setopt(c, CURLOPT_SSL_CTX_FUNCTION, add_extra_ca);
        /* libcurl shares a cached CA store between transfers; this one gets its own */
        curl_easy_setopt(c, CURLOPT_CA_CACHE_TIMEOUT, 0L);
    }
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

static void entry_free(struct jwks_entry *e)
{
    free(e->issuer);
    free(e->uri);
    free(e->body);
    free(e);
}

static void *resolver(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&R.mu);
    while (!R.stop) {
        time_t now = time(NULL), wake = 0;
        struct jwks_entry *due = NULL;
        for (struct jwks_entry *e = R.head; e; e = e->next) {
            if (e->busy || e->dead) continue;
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
        if (due->dead) { /* evicted meanwhile: nobody uses what it fetched */
            struct jwks_entry **pp = &R.head;
            while (*pp != due)
                pp = &(*pp)->next;
            *pp = due->next;
            R.n--;
            entry_free(due);
            free(body);
            free(issuer);
            free(uri);
            continue;
        }
        bool changed = false;
        now = time(NULL);
        if (rc == 0) {
            changed = due->state != ZMESHD_JWKS_OK || !due->body || strcmp(due->body, body) != 0;
            if (changed) {
                free(due->body);
                due->body = body;
                body = NULL;
                LOG_I(LOG_JWKS, "fetched the JWKS of issuer %s from %s", issuer,
                      *uri ? uri : "OpenID discovery");
            }
            due->state = ZMESHD_JWKS_OK;
            due->fails = 0;
            due->err[0] = 0;
            due->next_at = now + (time_t)R.refresh_s;
        } else {
            changed = due->state != ZMESHD_JWKS_FAILED && !due->body; /* a cached document stays in use */
            if (!due->body) due->state = ZMESHD_JWKS_FAILED;
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
int zmeshd_jwks_lookup(const char *issuer, const char *uri, int timeout_ms, char **body, char *err,
                       size_t errlen)
{
    *body = NULL;
    pthread_mutex_lock(&R.mu);
    struct jwks_entry *e = R.head;
    while (e && (e->dead || strcmp(e->issuer, issuer) || strcmp(e->uri, uri)))
        e = e->next;
    int rc;
    if (!e) {
        if (R.n >= ZMESHD_JWKS_MAX_ENTRIES) {
            snprintf(err, errlen, "more than %d JWKS sources in use", ZMESHD_JWKS_MAX_ENTRIES);
            rc = ZMESHD_JWKS_FAILED;
            goto out;
        }
        if (!R.running) {
            R.stop = false;
            if (pthread_create(&R.thread, NULL, resolver, NULL) != 0) {
                snprintf(err, errlen, "cannot start the JWKS resolver thread");
                rc = ZMESHD_JWKS_FAILED;
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
        e->state = ZMESHD_JWKS_PENDING;
        e->next = R.head;
        R.head = e;
        R.n++;
        pthread_cond_signal(&R.cv);
    }
    if (timeout_ms != e->timeout_ms) e->timeout_ms = timeout_ms;
    e->pass = R.pass;
    if (e->body && !(*body = strdup(e->body))) {
        rc = -ENOMEM;
        goto out;
    }
    snprintf(err, errlen, "%s", e->state == ZMESHD_JWKS_PENDING ? "not fetched yet" : e->err);
    rc = e->body ? ZMESHD_JWKS_OK : (int)e->state;
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
    zmeshd_request_authn_set_resolver(zmeshd_jwks_lookup);
    return loop_io_add(l, &R.io, EPOLLIN);
}

void zmeshd_jwks_shutdown(void)
{
    zmeshd_request_authn_set_resolver(NULL);
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
        entry_free(e);
    }
    R.head = NULL;
    R.n = 0;
    if (R.efd >= 0) close(R.efd);
    R.efd = -1;
    pthread_mutex_unlock(&R.mu);
}

void zmeshd_jwks_pass_begin(void)
{
    pthread_mutex_lock(&R.mu);
    R.pass++;
    pthread_mutex_unlock(&R.mu);
}

size_t zmeshd_jwks_pass_end(void)
{
    size_t gone = 0;
    pthread_mutex_lock(&R.mu);
    for (struct jwks_entry **pp = &R.head; *pp;) {
        struct jwks_entry *e = *pp;
        if (e->dead || e->pass == R.pass) {
            pp = &e->next;
            continue;
        }
        LOG_I(LOG_JWKS, "no RequestAuthentication uses the JWKS of issuer %s from %s any more: dropped",
              e->issuer, *e->uri ? e->uri : "OpenID discovery");
        gone++;
        if (e->busy) { /* the thread frees it after its fetch */
            e->dead = true;
            pp = &e->next;
            continue;
        }
        *pp = e->next;
        R.n--;
        entry_free(e);
    }
    pthread_mutex_unlock(&R.mu);
    return gone;
}

size_t zmeshd_jwks_n_entries(void)
{
    size_t n = 0;
    pthread_mutex_lock(&R.mu);
    for (struct jwks_entry *e = R.head; e; e = e->next)
        n += !e->dead;
    pthread_mutex_unlock(&R.mu);
    return n;
}
