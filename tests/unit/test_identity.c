/* Unit tests for the identity lifecycle (src/tls/identity.c): the backoff and renewal arithmetic as pure
 * functions, identity reference counting (an old identity keeps working while referenced, and a connection
 * made from it outlives it), and the manager on its own thread with the local CA and tiny lifetimes (first
 * fetch, renewal at half-life with a new serial), with failing providers (Unavailable, backoff, retention of
 * a valid certificate until it expires) and with an asynchronous provider. */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include <openssl/err.h>
#include <openssl/x509.h>

#include "core/loop.h"
#include "tls/ca.h"
#include "tls/identity.h"
#include "tls/spiffe.h"
#include "tls/tls.h"

#define ID_A "spiffe://cluster.local/ns/default/sa/a"
#define ID_B "spiffe://cluster.local/ns/default/sa/b"
/* Upper bound for waiting on the manager thread; the waits end as soon as the condition holds. */
#define WAIT_MS 10000

static char ca_dir[64];

static struct spiffe_id sid(const char *uri)
{
    struct spiffe_id id;
    assert_int_equal(spiffe_parse(uri, strlen(uri), &id), 0);
    return id;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int group_setup(void **state)
{
    (void)state;
    char err[256];
    strcpy(ca_dir, "/tmp/zmesh-identity-XXXXXX");
    if (!mkdtemp(ca_dir)) return -1;
    if (ca_write_root(ca_dir, "zmesh identity test", err, sizeof(err)) < 0) {
        print_error("ca_write_root: %s\n", err);
        return -1;
    }
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    char p[128];
    snprintf(p, sizeof(p), "%s/root-cert.pem", ca_dir);
    unlink(p);
    snprintf(p, sizeof(p), "%s/root-key.pem", ca_dir);
    unlink(p);
    rmdir(ca_dir);
    return 0;
}

static struct cert_provider *local_ca(uint32_t ttl_s)
{
    char err[256] = "";
    struct cert_provider *p = ca_local_new_ttl(ca_dir, ttl_s, err, sizeof(err));
    if (!p) print_error("ca_local_new_ttl: %s\n", err);
    assert_non_null(p);
    return p;
}

static uint64_t serial_of(const struct identity *id)
{
    uint64_t v = 0;
    ASN1_INTEGER_get_uint64(&v, X509_get0_serialNumber(id->cert->leaf)); /* fails (v = 0) above 64 bits */
    if (!v) {
        /* 128-bit serials: fold the DER bytes, distinct serials give distinct values in practice. */
        const ASN1_INTEGER *a = X509_get0_serialNumber(id->cert->leaf);
        const unsigned char *d = ASN1_STRING_get0_data(a);
        for (int i = 0; i < ASN1_STRING_length(a); i++)
            v = v * 131 + d[i];
    }
    return v;
}

/* ---- pure functions ---- */

static void test_backoff_schedule(void **state)
{
    (void)state;
    /* The middle of the jitter range is the base: 500 ms doubling, capped at 150 s. */
    const uint64_t base[] = {500, 1000, 2000, 4000, 8000, 16000, 32000, 64000, 128000, 150000, 150000};
    const uint64_t mid = UINT64_MAX / 2 + 1;
    for (unsigned i = 0; i < sizeof(base) / sizeof(base[0]); i++) {
        assert_int_equal(identity_backoff_ms(i, mid), base[i]);
        /* rnd = 0 gives the low end (-20 %), rnd = max the high end (+20 %). */
        assert_int_equal(identity_backoff_ms(i, 0), base[i] * 80 / 100);
        assert_int_equal(identity_backoff_ms(i, UINT64_MAX), base[i] * 120 / 100);
    }
    assert_int_equal(identity_backoff_ms(1000, mid), 150000);
    assert_int_equal(identity_backoff_ms(UINT32_MAX, UINT64_MAX), 180000);
    /* Random inputs always land inside the bounds. */
    uint64_t x = 0x853c49e6748fea9bULL;
    for (int n = 0; n < 10000; n++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        unsigned f = (unsigned)(x % 14);
        uint64_t b = f >= 9 ? 150000 : 500ULL << f, d = identity_backoff_ms(f, x);
        assert_true(d >= b * 80 / 100 && d <= b * 120 / 100);
    }
}

static void test_refresh_at(void **state)
{
    (void)state;
    const int64_t t = 1700000000000LL, day = 86400000LL;
    /* Not backdated: Istio's not_before + (not_after - not_before) / 2. */
    assert_int_equal(identity_refresh_at_ms(t, t + day, t), t + day / 2);
    /* Received late: still the certificate's half-life when that is in the future. */
    assert_int_equal(identity_refresh_at_ms(t, t + day, t + 1000), t + 1000 + (day - 1000) / 2);
    /* Backdated by a minute with a 30 s lifetime (the local CA): not_before + 45 s would be 15 s in the past;
     * the half of what is left is 15 s ahead. */
    assert_int_equal(identity_refresh_at_ms(t - 60000, t + 30000, t), t + 15000);
    /* istiod's 2-minute backdating of a 10 s certificate: 5 s ahead, not 65 s behind. */
    assert_int_equal(identity_refresh_at_ms(t - 120000, t + 10000, t), t + 5000);
    /* Nearly or already expired certificates never plan a renewal sooner than the floor. */
    assert_int_equal(identity_refresh_at_ms(t - 60000, t + 500, t), t + IDENTITY_MIN_REFRESH_MS);
    assert_int_equal(identity_refresh_at_ms(t - 60000, t - 1, t), t + IDENTITY_MIN_REFRESH_MS);
    /* A not_before in the future (clock skew): half of the certificate's own life. */
    assert_int_equal(identity_refresh_at_ms(t + 10000, t + 10000 + day, t), t + 10000 + day / 2);
}

static void test_state_names(void **state)
{
    (void)state;
    assert_string_equal(identity_state_to_str(IDENTITY_INITIALIZING), "Initializing");
    assert_string_equal(identity_state_to_str(IDENTITY_AVAILABLE), "Available");
    assert_string_equal(identity_state_to_str(IDENTITY_UNAVAILABLE), "Unavailable");
}

/* ---- identity reference counting ---- */

/* One in-memory handshake between SSLs made from cctx and sctx; returns true when both sides completed and
 * the client can read what the server wrote (so the server accepted the client certificate). The SSLs are
 * returned for further use when out is set. */
static bool handshake(SSL_CTX *cctx, SSL_CTX *sctx, SSL **out_c, SSL **out_s)
{
    SSL *c = SSL_new(cctx), *s = SSL_new(sctx);
    BIO *bc = NULL, *bs = NULL;
    bool c_ok = false, s_ok = false, fail = false;
    assert_non_null(c);
    assert_non_null(s);
    assert_int_equal(BIO_new_bio_pair(&bc, 0, &bs, 0), 1);
    SSL_set_bio(c, bc, bc);
    SSL_set_bio(s, bs, bs);
    SSL_set_connect_state(c);
    SSL_set_accept_state(s);
    for (int i = 0; i < 20 && !fail && !(c_ok && s_ok); i++) {
        SSL *sides[2] = {c, s};
        bool *oks[2] = {&c_ok, &s_ok};
        for (int k = 0; k < 2; k++) {
            if (*oks[k]) continue;
            int r = SSL_do_handshake(sides[k]);
            if (r == 1)
                *oks[k] = true;
            else if (SSL_get_error(sides[k], r) != SSL_ERROR_WANT_READ &&
                     SSL_get_error(sides[k], r) != SSL_ERROR_WANT_WRITE)
                fail = true;
        }
    }
    char buf[4];
    bool ok = c_ok && s_ok && SSL_write(s, "ok", 2) == 2 && SSL_read(c, buf, sizeof(buf)) == 2;
    ERR_clear_error();
    if (out_c && out_s) {
        *out_c = c;
        *out_s = s;
    } else {
        SSL_free(c);
        SSL_free(s);
    }
    return ok;
}

static void test_identity_refcount(void **state)
{
    (void)state;
    struct cert_provider *p = local_ca(3600);
    struct spiffe_id a = sid(ID_A), b = sid(ID_B);
    char err[256];
    struct tls_cert *ca = p->fetch(p, &a, err, sizeof(err)), *cb = p->fetch(p, &b, err, sizeof(err));
    assert_non_null(ca);
    assert_non_null(cb);
    struct identity *ia = NULL, *ib = NULL;
    assert_int_equal(identity_new(ca, &ia, err, sizeof(err)), 0);
    assert_int_equal(identity_new(cb, &ib, err, sizeof(err)), 0);
    /* The identity holds its own certificate reference. */
    assert_int_equal(__atomic_load_n(&ca->refs, __ATOMIC_RELAXED), 2);
    tls_cert_unref(ca);
    tls_cert_unref(cb);
    assert_ptr_equal(ia->cert, ca);
    assert_string_equal(ia->cert->uri, ID_A);

    /* An old identity stays valid while referenced: a holder keeps it after its owner let go. */
    identity_ref(ia);
    identity_unref(ia);
    assert_int_equal(atomic_load(&ia->refs), 1);
    assert_true(handshake(ib->client_ctx, ia->server_ctx, NULL, NULL));

    /* A connection made from an identity outlives the last reference to it: the SSL holds the SSL_CTX. */
    SSL *c = NULL, *s = NULL;
    assert_true(handshake(ib->client_ctx, ia->server_ctx, &c, &s));
    identity_unref(ia);
    identity_unref(ib);
    char buf[8];
    assert_int_equal(SSL_write(c, "after", 5), 5);
    assert_int_equal(SSL_read(s, buf, sizeof(buf)), 5);
    assert_memory_equal(buf, "after", 5);
    SSL_free(c);
    SSL_free(s);

    /* A certificate that cannot make contexts (no key) is refused with a message. */
    struct tls_cert bad = {.refs = 1};
    struct identity *ix = NULL;
    err[0] = 0;
    assert_int_equal(identity_new(&bad, &ix, err, sizeof(err)), -EINVAL);
    assert_null(ix);
    assert_non_null(strstr(err, "TLS context"));
    p->destroy(p);
}

/* ---- the manager ---- */

/* What a subscriber saw, filled by watch_cb on the manager's thread. */
struct watch {
    pthread_mutex_t mu;
    int calls;
    int64_t at[8];         /* monotonic ms of the first calls */
    struct identity *last; /* reference held */
    struct identity *first;
};

static void watch_cb(void *ud, struct identity *cur)
{
    struct watch *w = ud;
    pthread_mutex_lock(&w->mu);
    if (w->calls < 8) w->at[w->calls] = now_ms();
    w->calls++;
    identity_ref(cur);
    identity_unref(w->last);
    w->last = cur;
    if (!w->first) {
        identity_ref(cur);
        w->first = cur;
    }
    pthread_mutex_unlock(&w->mu);
}

static int watch_calls(struct watch *w)
{
    pthread_mutex_lock(&w->mu);
    int n = w->calls;
    pthread_mutex_unlock(&w->mu);
    return n;
}

static void watch_free(struct watch *w)
{
    identity_unref(w->last);
    identity_unref(w->first);
    pthread_mutex_destroy(&w->mu);
}

static bool wait_calls(struct watch *w, int n)
{
    for (int64_t end = now_ms() + WAIT_MS; now_ms() < end; usleep(5000))
        if (watch_calls(w) >= n) return true;
    return false;
}

/* The status of the one managed id (asserts there is exactly one). */
static struct identity_status status1(struct identity_mgr *m)
{
    struct identity_status *st = NULL, copy;
    int n = identity_mgr_status(m, &st);
    assert_int_equal(n, 1);
    copy = st[0];
    copy.cur = NULL;
    identity_status_free(st, 1);
    return copy;
}

static void test_mgr_renews_at_half_life(void **state)
{
    (void)state;
    struct cert_provider *p = local_ca(2); /* renewal due after 1 s (half of the 2 s left, the floor) */
    char err[256];
    struct identity_mgr *m = identity_mgr_new(p, err, sizeof(err));
    assert_non_null(m);
    struct spiffe_id a = sid(ID_A);
    struct watch w = {.mu = PTHREAD_MUTEX_INITIALIZER};
    struct identity_sub *sub = identity_mgr_acquire(m, &a, watch_cb, &w);
    assert_non_null(sub);
    assert_true(wait_calls(&w, 1));
    struct identity_status st = status1(m);
    assert_string_equal(st.uri, ID_A);
    assert_int_equal(st.state, IDENTITY_AVAILABLE);
    assert_int_equal(st.fetches, 1);
    struct identity *first = identity_mgr_current(m, &a);
    assert_non_null(first);
    assert_ptr_equal(first, w.first);

    /* The renewal arrives with a new serial, before the first certificate expires. */
    assert_true(wait_calls(&w, 2));
    pthread_mutex_lock(&w.mu);
    int64_t first_at = w.at[0], second_at = w.at[1];
    struct identity *second = w.last;
    identity_ref(second);
    pthread_mutex_unlock(&w.mu);
    assert_ptr_not_equal(second, first);
    assert_int_not_equal(serial_of(second), serial_of(first));
    assert_true(time(NULL) <= first->cert->not_after);
    assert_true(second->cert->not_after >= first->cert->not_after);
    /* Not a tight loop: the renewal waited for the half-life (>= IDENTITY_MIN_REFRESH_MS after the first,
     * as the callbacks saw it on the monotonic clock; a lower bound, which load cannot break). */
    assert_true(second_at - first_at >= IDENTITY_MIN_REFRESH_MS - 100);
    st = status1(m);
    assert_true(st.fetches >= 2);

    /* The old identity is still whole while referenced, and works with the new one. */
    assert_string_equal(first->cert->uri, ID_A);
    assert_true(handshake(second->client_ctx, first->server_ctx, NULL, NULL));

    /* A second subscriber of the same id gets the current certificate at once, and shares the entry. */
    struct watch w2 = {.mu = PTHREAD_MUTEX_INITIALIZER};
    struct identity_sub *sub2 = identity_mgr_acquire(m, &a, watch_cb, &w2);
    assert_int_equal(watch_calls(&w2), 1);
    struct identity_status *both = NULL;
    assert_int_equal(identity_mgr_status(m, &both), 1);
    identity_status_free(both, 1);
    identity_mgr_release(m, sub2);

    /* After the last release the id is forgotten and the callback is not called again. */
    identity_mgr_release(m, sub);
    int calls = watch_calls(&w);
    struct identity_status *all = NULL;
    int n = 1;
    for (int64_t end = now_ms() + WAIT_MS; now_ms() < end && n != 0; usleep(5000)) {
        n = identity_mgr_status(m, &all);
        identity_status_free(all, n > 0 ? (size_t)n : 0);
    }
    assert_int_equal(n, 0);
    assert_null(identity_mgr_current(m, &a));
    usleep(1500 * 1000); /* past the next renewal the id would have had */
    assert_int_equal(watch_calls(&w), calls);

    identity_unref(first);
    identity_unref(second);
    identity_mgr_free(m);
    watch_free(&w);
    watch_free(&w2);
    p->destroy(p);
}

/* A provider that fails while fail_left > 0 (or always with fail_always), then delegates to the local CA.
 * Records when each fetch happened (monotonic ms). */
struct flaky {
    struct cert_provider base;
    struct cert_provider *inner;
    pthread_mutex_t mu;
    int fail_left;
    bool fail_always_after_first;
    int fetches;
    int64_t at[64];
};

static struct tls_cert *flaky_fetch(struct cert_provider *p, const struct spiffe_id *id, char *err, size_t n)
{
    struct flaky *f = (struct flaky *)p;
    pthread_mutex_lock(&f->mu);
    int k = f->fetches++;
    if (k < 64) f->at[k] = now_ms();
    bool fail = f->fail_left > 0 || (f->fail_always_after_first && k > 0);
    if (f->fail_left > 0) f->fail_left--;
    pthread_mutex_unlock(&f->mu);
    if (fail) {
        snprintf(err, n, "injected failure %d", k);
        return NULL;
    }
    return f->inner->fetch(f->inner, id, err, n);
}

static int flaky_fetches(struct flaky *f)
{
    pthread_mutex_lock(&f->mu);
    int n = f->fetches;
    pthread_mutex_unlock(&f->mu);
    return n;
}

static void test_mgr_unavailable_then_backoff(void **state)
{
    (void)state;
    struct flaky f = {.base = {.fetch = flaky_fetch},
                      .inner = local_ca(3600),
                      .mu = PTHREAD_MUTEX_INITIALIZER,
                      .fail_left = 2};
    char err[256];
    struct identity_mgr *m = identity_mgr_new(&f.base, err, sizeof(err));
    assert_non_null(m);
    struct spiffe_id a = sid(ID_A);
    struct watch w = {.mu = PTHREAD_MUTEX_INITIALIZER};
    struct identity_sub *sub = identity_mgr_acquire(m, &a, watch_cb, &w);
    assert_non_null(sub);
    /* The first fetch fails: Unavailable with its error, no certificate. */
    for (int64_t end = now_ms() + WAIT_MS; now_ms() < end && flaky_fetches(&f) < 1; usleep(2000))
        ;
    struct identity_status st;
    for (int64_t end = now_ms() + WAIT_MS; now_ms() < end; usleep(2000)) {
        st = status1(m);
        if (st.state != IDENTITY_INITIALIZING) break;
    }
    if (watch_calls(&w) == 0) {
        assert_int_equal(st.state, IDENTITY_UNAVAILABLE);
        assert_non_null(strstr(st.error, "injected failure "));
        assert_null(identity_mgr_current(m, &a));
    }
    /* Two failures, then success: the retries waited for the backoff (at least 500 ms - 20 %, then 1 s - 20
     * %; only lower bounds, since a loaded machine may run them later; the values are
     * test_backoff_schedule's). */
    assert_true(wait_calls(&w, 1));
    assert_int_equal(flaky_fetches(&f), 3);
    int64_t d1 = f.at[1] - f.at[0], d2 = f.at[2] - f.at[1];
    assert_true(d1 >= 400 - 20);
    assert_true(d2 >= 800 - 20);
    st = status1(m);
    assert_int_equal(st.state, IDENTITY_AVAILABLE);
    assert_string_equal(st.error, "");
    identity_mgr_release(m, sub);
    identity_mgr_free(m);
    watch_free(&w);
    f.inner->destroy(f.inner);
}

static void test_mgr_keeps_valid_cert_until_expiry(void **state)
{
    (void)state;
    /* One good 3 s certificate, then every renewal fails: it stays Available (and in use) until it expires,
     * the retries do not wait past its expiry, and then it is Unavailable with the last error. */
    struct flaky f = {.base = {.fetch = flaky_fetch},
                      .inner = local_ca(3),
                      .mu = PTHREAD_MUTEX_INITIALIZER,
                      .fail_always_after_first = true};
    char err[256];
    struct identity_mgr *m = identity_mgr_new(&f.base, err, sizeof(err));
    assert_non_null(m);
    struct spiffe_id a = sid(ID_A);
    struct watch w = {.mu = PTHREAD_MUTEX_INITIALIZER};
    struct identity_sub *sub = identity_mgr_acquire(m, &a, watch_cb, &w);
    assert_true(wait_calls(&w, 1));
    time_t expiry = w.first->cert->not_after;
    /* Wait for the first failed renewal: still Available, same certificate. */
    for (int64_t end = now_ms() + WAIT_MS; now_ms() < end && flaky_fetches(&f) < 2; usleep(5000))
        ;
    assert_true(flaky_fetches(&f) >= 2);
    struct identity_status st = status1(m);
    if (time(NULL) + 1 < expiry) {
        assert_int_equal(st.state, IDENTITY_AVAILABLE);
        struct identity *cur = identity_mgr_current(m, &a);
        assert_ptr_equal(cur, w.first);
        identity_unref(cur);
    }
    /* After the expiry the next failure makes it Unavailable. */
    for (int64_t end = now_ms() + WAIT_MS; now_ms() < end; usleep(10000)) {
        st = status1(m);
        if (st.state == IDENTITY_UNAVAILABLE) break;
    }
    assert_int_equal(st.state, IDENTITY_UNAVAILABLE);
    assert_non_null(strstr(st.error, "injected failure"));
    /* time() reads the coarse clock, which may lag the precise one the manager uses by a tick. */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    assert_true(ts.tv_sec >= expiry);
    assert_null(identity_mgr_current(m, &a));
    assert_int_equal(watch_calls(&w), 1);
    identity_mgr_release(m, sub);
    identity_mgr_free(m);
    watch_free(&w);
    f.inner->destroy(f.inner);
}

/* An asynchronous provider: the fetch completes 50 ms later from a timer on the manager's loop. */
struct async_prov {
    struct cert_provider base;
    struct cert_provider *inner;
    struct timer t;
    struct spiffe_id id;
    cert_fetch_done_fn done;
    void *ud;
    _Atomic int started;
};

static void async_timer_cb(struct timer *t)
{
    struct async_prov *ap = container_of(t, struct async_prov, t);
    char err[256] = "";
    struct tls_cert *c = ap->inner->fetch(ap->inner, &ap->id, err, sizeof(err));
    ap->done(ap->ud, c, err);
}

static int async_fetch(struct cert_provider *p, struct loop *l, const struct spiffe_id *id,
                       cert_fetch_done_fn done, void *ud)
{
    struct async_prov *ap = (struct async_prov *)p;
    ap->id = *id;
    ap->done = done;
    ap->ud = ud;
    ap->t.cb = async_timer_cb;
    atomic_fetch_add(&ap->started, 1);
    timer_start(l, &ap->t, 50);
    return 0;
}

static struct tls_cert *no_sync_fetch(struct cert_provider *p, const struct spiffe_id *id, char *err,
                                      size_t n)
{
    (void)p, (void)id;
    fail_msg("the manager must use fetch_async when the provider has it");
    snprintf(err, n, "unused");
    return NULL;
}

static void test_mgr_async_provider(void **state)
{
    (void)state;
    struct async_prov ap = {.base = {.fetch = no_sync_fetch, .fetch_async = async_fetch},
                            .inner = local_ca(3600)};
    char err[256];
    struct identity_mgr *m = identity_mgr_new(&ap.base, err, sizeof(err));
    assert_non_null(m);
    struct spiffe_id a = sid(ID_A);
    struct watch w = {.mu = PTHREAD_MUTEX_INITIALIZER};
    struct identity_sub *sub = identity_mgr_acquire(m, &a, watch_cb, &w);
    assert_true(wait_calls(&w, 1));
    assert_int_equal(atomic_load(&ap.started), 1);
    assert_string_equal(w.first->cert->uri, ID_A);
    struct identity_status st = status1(m);
    assert_int_equal(st.state, IDENTITY_AVAILABLE);
    identity_mgr_release(m, sub);
    identity_mgr_free(m);
    watch_free(&w);
    ap.inner->destroy(ap.inner);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_backoff_schedule),
        cmocka_unit_test(test_refresh_at),
        cmocka_unit_test(test_state_names),
        cmocka_unit_test(test_identity_refcount),
        cmocka_unit_test(test_mgr_renews_at_half_life),
        cmocka_unit_test(test_mgr_unavailable_then_backoff),
        cmocka_unit_test(test_mgr_keeps_valid_cert_until_expiry),
        cmocka_unit_test(test_mgr_async_provider),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
