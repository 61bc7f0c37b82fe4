/* Unit tests for zmesh's TLS 1.3 record layer (src/tls/record.c): a real handshake between the HBONE
 * contexts over memory BIOs, then one side seals and opens its records itself while the other stays on
 * OpenSSL's SSL_read/SSL_write, so every byte is checked against OpenSSL's own record layer: data both ways
 * for each cipher suite, records split at any byte, KeyUpdate from the peer and from us, tampering, alerts,
 * post-handshake tickets, and the cases that keep OpenSSL's path. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include <openssl/err.h>

#include "tls/ca.h"
#include "tls/record.h"
#include "tls/spiffe.h"
#include "tls/tls.h"

static char dir[64];
static struct cert_provider *ca;
static SSL_CTX *sctx, *cctx;

static struct tls_cert *fetch(const char *uri)
{
    struct spiffe_id id;
    char err[256] = "";
    if (spiffe_parse(uri, strlen(uri), &id) < 0) return NULL;
    return ca->fetch(ca, &id, err, sizeof(err));
}

static int group_setup(void **state)
{
    (void)state;
    char err[256];
    strcpy(dir, "/tmp/zmesh-tlsrec-XXXXXX");
    if (!mkdtemp(dir) || ca_write_root(dir, "zmesh record test", err, sizeof(err)) < 0) return -1;
    if (!(ca = ca_local_new(dir, err, sizeof(err)))) return -1;
    struct tls_cert *sc = fetch("spiffe://cluster.local/ns/a/sa/server"),
                    *cc = fetch("spiffe://cluster.local/ns/a/sa/client");
    if (!sc || !cc) return -1;
    sctx = tls_server_ctx_new(sc);
    cctx = tls_client_ctx_new(cc);
    tls_cert_unref(sc);
    tls_cert_unref(cc);
    return sctx && cctx ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    char p[128];
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
    if (ca) ca->destroy(ca);
    snprintf(p, sizeof(p), "%s/root-cert.pem", dir);
    unlink(p);
    snprintf(p, sizeof(p), "%s/root-key.pem", dir);
    unlink(p);
    rmdir(dir);
    return 0;
}

/* A connection: both SSLs with memory BIOs; in[x] is what side x has received but not read. */
struct pair {
    SSL *c, *s;
    BIO *c_in, *c_out, *s_in, *s_out;
};

static void pump(BIO *from, BIO *to)
{
    char buf[4096];
    int n;
    while ((n = BIO_read(from, buf, sizeof(buf))) > 0)
        assert_int_equal(BIO_write(to, buf, n), n);
}

static void pair_new(struct pair *p, const char *suites)
{
    memset(p, 0, sizeof(*p));
    p->c = SSL_new(cctx);
    p->s = SSL_new(sctx);
    assert_non_null(p->c);
    assert_non_null(p->s);
    if (suites) {
        assert_int_equal(SSL_set_ciphersuites(p->c, suites), 1);
        assert_int_equal(SSL_set_ciphersuites(p->s, suites), 1);
    }
    p->c_in = BIO_new(BIO_s_mem());
    p->c_out = BIO_new(BIO_s_mem());
    p->s_in = BIO_new(BIO_s_mem());
    p->s_out = BIO_new(BIO_s_mem());
    SSL_set_bio(p->c, p->c_in, p->c_out);
    SSL_set_bio(p->s, p->s_in, p->s_out);
    SSL_set_connect_state(p->c);
    SSL_set_accept_state(p->s);
    bool cd = false, sd = false;
    for (int i = 0; i < 20 && !(cd && sd); i++) {
        if (!cd) cd = SSL_do_handshake(p->c) == 1;
        pump(p->c_out, p->s_in);
        if (!sd) sd = SSL_do_handshake(p->s) == 1;
        pump(p->s_out, p->c_in);
    }
    assert_true(cd);
    assert_true(sd);
}

static void pair_free(struct pair *p)
{
    SSL_free(p->c);
    SSL_free(p->s);
}

/* Ciphertext that ssl wrote (its output BIO), as one buffer. */
static size_t take(BIO *out, uint8_t *buf, size_t cap)
{
    size_t n = 0;
    int k;
    while (n < cap && (k = BIO_read(out, buf + n, (int)(cap - n))) > 0)
        n += (size_t)k;
    return n;
}

/* Opens in[0..n) with r, chunk bytes at a time; returns the plaintext length in out. */
static size_t open_all(struct tls_rec *r, const uint8_t *in, size_t n, size_t chunk, uint8_t *out, size_t cap,
                       enum tls_rec_status *st)
{
    size_t o = 0, off = 0;
    char err[200];
    uint8_t alert;
    *st = TLS_REC_OK;
    static uint8_t plain[64 * 1024];
    while (off < n) {
        size_t k = n - off < chunk ? n - off : chunk, olen, used;
        *st = tls_rec_open(r, in + off, k, plain, sizeof(plain), &olen, &used, &alert, err, sizeof(err));
        assert_true(o + olen <= cap);
        memcpy(out + o, plain, olen);
        o += olen;
        off += used;
        if (*st != TLS_REC_OK) break;
        assert_true(used > 0);
    }
    return o;
}

/* Seals data in records of up to 16 KiB, each from two pieces, and hands them to the OpenSSL side. */
static void seal_to(struct tls_rec *r, BIO *peer_in, const uint8_t *d, size_t n)
{
    static uint8_t out[TLS_REC_MAX_PLAIN + 256];
    while (n) {
        size_t k = n < TLS_REC_MAX_PLAIN ? n : TLS_REC_MAX_PLAIN, h = k / 3;
        struct tls_piece pc[3] = {{d, h}, {NULL, 0}, {d + h, k - h}};
        ssize_t w = tls_rec_seal(r, pc, 3, out);
        assert_true(w >= (ssize_t)(k + TLS_REC_OVERHEAD));
        assert_true((size_t)w <= tls_rec_seal_room(k));
        assert_int_equal(BIO_write(peer_in, out, (int)w), (int)w);
        d += k;
        n -= k;
    }
}

static void fill(uint8_t *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(i * 31 + seed + (i >> 8));
}

/* One side on our records, the other on OpenSSL, both directions, for suites. */
static void both_ways(const char *suites, bool ours_is_client)
{
    static uint8_t a[50000], b[50000], got[60000], wire[80000];
    struct pair p;
    char why[128] = "";
    pair_new(&p, suites);
    SSL *ossl = ours_is_client ? p.s : p.c;
    BIO *o_in = ours_is_client ? p.s_in : p.c_in, *o_out = ours_is_client ? p.s_out : p.c_out;
    struct tls_rec *r = tls_rec_new(ours_is_client ? p.c : p.s, why, sizeof(why));
    if (!r) print_error("tls_rec_new: %s\n", why);
    assert_non_null(r);

    /* Ours -> OpenSSL: 50000 bytes in 4 records. */
    fill(a, sizeof(a), 1);
    seal_to(r, o_in, a, sizeof(a));
    size_t n = 0;
    int k;
    while (n < sizeof(a) && (k = SSL_read(ossl, got + n, (int)(sizeof(got) - n))) > 0)
        n += (size_t)k;
    assert_int_equal(n, sizeof(a));
    assert_memory_equal(got, a, sizeof(a));

    /* OpenSSL -> ours, opened in chunks of 1, 7 and 5000 bytes (records split anywhere, header included). */
    size_t chunks[] = {1, 7, 5000, sizeof(wire)};
    for (size_t i = 0; i < 4; i++) {
        fill(b, sizeof(b), (unsigned)i + 2);
        for (size_t w = 0; w < sizeof(b);) { /* partial writes: a record per call */
            int k2 = SSL_write(ossl, b + w, (int)(sizeof(b) - w));
            assert_true(k2 > 0);
            w += (size_t)k2;
        }
        size_t wl = take(o_out, wire, sizeof(wire));
        assert_true(wl > sizeof(b));
        enum tls_rec_status st;
        size_t gl = open_all(r, wire, wl, chunks[i], got, sizeof(got), &st);
        assert_int_equal(st, TLS_REC_OK);
        assert_int_equal(gl, sizeof(b));
        assert_memory_equal(got, b, sizeof(b));
    }
    assert_int_equal(tls_rec_pending(r), 0);
    tls_rec_free(r);
    pair_free(&p);
}

static void test_aes256_client(void **state)
{
    (void)state;
    both_ways(NULL, true); /* the profile's first choice, TLS_AES_256_GCM_SHA384 */
}

static void test_aes256_server(void **state)
{
    (void)state;
    both_ways(NULL, false);
}

static void test_aes128(void **state)
{
    (void)state;
    both_ways("TLS_AES_128_GCM_SHA256", true);
    both_ways("TLS_AES_128_GCM_SHA256", false);
}

static void test_chacha(void **state)
{
    (void)state;
    both_ways("TLS_CHACHA20_POLY1305_SHA256", true);
}

/* The peer updates its key and asks for ours: we follow its new key, and our next record is preceded by our
 * KeyUpdate (OpenSSL only accepts it with our new key after that). */
static void test_keyupdate_from_peer(void **state)
{
    (void)state;
    struct pair p;
    uint8_t wire[4096], got[256];
    char err[200];
    pair_new(&p, NULL);
    struct tls_rec *r = tls_rec_new(p.c, err, sizeof(err));
    assert_non_null(r);
    assert_int_equal(SSL_key_update(p.s, SSL_KEY_UPDATE_REQUESTED), 1);
    assert_int_equal(SSL_write(p.s, "after", 5), 5);
    size_t wl = take(p.s_out, wire, sizeof(wire));
    enum tls_rec_status st;
    size_t gl = open_all(r, wire, wl, 3, got, sizeof(got), &st);
    assert_int_equal(st, TLS_REC_OK);
    assert_int_equal(gl, 5);
    assert_memory_equal(got, "after", 5);
    assert_int_equal(tls_rec_keyupdates_recv(r), 1);
    assert_int_equal(tls_rec_pending(r), TLS_REC_KEYUPDATE_LEN);

    seal_to(r, p.s_in, (const uint8_t *)"reply", 5);
    assert_int_equal(tls_rec_keyupdates_sent(r), 1);
    assert_int_equal(tls_rec_pending(r), 0);
    char buf[16];
    assert_int_equal(SSL_read(p.s, buf, sizeof(buf)), 5);
    assert_memory_equal(buf, "reply", 5);
    /* And on, both ways. */
    assert_int_equal(SSL_write(p.s, "more", 4), 4);
    wl = take(p.s_out, wire, sizeof(wire));
    gl = open_all(r, wire, wl, wl, got, sizeof(got), &st);
    assert_int_equal(gl, 4);
    assert_memory_equal(got, "more", 4);
    seal_to(r, p.s_in, (const uint8_t *)"again", 5);
    assert_int_equal(SSL_read(p.s, buf, sizeof(buf)), 5);
    assert_memory_equal(buf, "again", 5);
    /* A KeyUpdate that does not ask for ours. */
    assert_int_equal(SSL_key_update(p.s, SSL_KEY_UPDATE_NOT_REQUESTED), 1);
    assert_int_equal(SSL_write(p.s, "x", 1), 1);
    wl = take(p.s_out, wire, sizeof(wire));
    gl = open_all(r, wire, wl, wl, got, sizeof(got), &st);
    assert_int_equal(gl, 1);
    assert_int_equal(tls_rec_keyupdates_recv(r), 2);
    assert_int_equal(tls_rec_pending(r), 0);
    tls_rec_free(r);
    pair_free(&p);
}

/* Our write key is replaced before it has sealed the configured number of records. */
static void test_keyupdate_ours(void **state)
{
    (void)state;
    struct pair p;
    char err[200];
    pair_new(&p, NULL);
    struct tls_rec *r = tls_rec_new(p.s, err, sizeof(err));
    assert_non_null(r);
    tls_rec_set_keyupdate_after(r, 3);
    char buf[16];
    for (int i = 0; i < 8; i++) {
        char m[2] = {(char)('a' + i), 0};
        seal_to(r, p.c_in, (const uint8_t *)m, 1);
        assert_int_equal(SSL_read(p.c, buf, sizeof(buf)), 1);
        assert_int_equal(buf[0], m[0]);
    }
    assert_int_equal(tls_rec_keyupdates_sent(r), 2); /* after records 3 and 6 */
    assert_int_equal(tls_rec_write_seq(r), 2);
    tls_rec_free(r);
    pair_free(&p);
}

static void test_tampered(void **state)
{
    (void)state;
    struct pair p;
    uint8_t wire[4096], alert = 0;
    char err[200] = "";
    pair_new(&p, NULL);
    struct tls_rec *r = tls_rec_new(p.c, err, sizeof(err));
    assert_non_null(r);
    assert_int_equal(SSL_write(p.s, "secret", 6), 6);
    size_t wl = take(p.s_out, wire, sizeof(wire)), olen, used;
    wire[wl - 20] ^= 1;
    uint8_t plain[TLS_REC_MAX_PLAIN + 256];
    assert_int_equal(tls_rec_open(r, wire, wl, plain, sizeof(plain), &olen, &used, &alert, err, sizeof(err)),
                     TLS_REC_ERROR);
    assert_int_equal(alert, SSL_AD_BAD_RECORD_MAC);
    assert_string_equal(err, "bad record MAC");
    assert_int_equal(olen, 0);
    tls_rec_free(r);

    /* An oversized length in the header. */
    r = tls_rec_new(p.s, err, sizeof(err));
    assert_non_null(r);
    uint8_t big[5] = {23, 3, 3, 0x50, 0x00};
    assert_int_equal(tls_rec_open(r, big, 5, plain, sizeof(plain), &olen, &used, &alert, err, sizeof(err)),
                     TLS_REC_ERROR);
    assert_int_equal(alert, SSL_AD_RECORD_OVERFLOW);
    tls_rec_free(r);
    pair_free(&p);
}

static void test_alerts(void **state)
{
    (void)state;
    struct pair p;
    uint8_t wire[4096], got[256], alert;
    char err[200] = "";
    pair_new(&p, NULL);
    struct tls_rec *r = tls_rec_new(p.c, err, sizeof(err));
    assert_non_null(r);
    /* The peer's close_notify, after data in the same input. */
    assert_int_equal(SSL_write(p.s, "bye", 3), 3);
    assert_true(SSL_shutdown(p.s) >= 0);
    size_t wl = take(p.s_out, wire, sizeof(wire));
    enum tls_rec_status st;
    size_t gl = open_all(r, wire, wl, wl, got, sizeof(got), &st);
    assert_int_equal(st, TLS_REC_CLOSED);
    assert_int_equal(gl, 3);
    /* Ours reaches OpenSSL as close_notify. */
    uint8_t a[TLS_REC_OVERHEAD + 2];
    ssize_t k = tls_rec_seal_alert(r, SSL_AD_CLOSE_NOTIFY, a);
    assert_int_equal(k, sizeof(a));
    BIO_write(p.s_in, a, (int)k);
    char buf[8];
    int rr = SSL_read(p.s, buf, sizeof(buf));
    assert_true(rr <= 0);
    assert_int_equal(SSL_get_error(p.s, rr), SSL_ERROR_ZERO_RETURN);
    tls_rec_free(r);
    pair_free(&p);

    /* A fatal alert from us is an error on the OpenSSL side; one from OpenSSL is an error here, named. */
    pair_new(&p, NULL);
    r = tls_rec_new(p.c, err, sizeof(err));
    assert_non_null(r);
    k = tls_rec_seal_alert(r, SSL_AD_INTERNAL_ERROR, a);
    BIO_write(p.s_in, a, (int)k);
    rr = SSL_read(p.s, buf, sizeof(buf));
    assert_int_equal(SSL_get_error(p.s, rr), SSL_ERROR_SSL);
    ERR_clear_error();
    tls_rec_free(r);
    r = tls_rec_new(p.c, err, sizeof(err));
    /* p.c's secrets were taken (and wiped) once: a second tls_rec_new on it finds none. */
    assert_null(r);
    assert_string_equal(err, "no traffic secrets captured");
    pair_free(&p);

    pair_new(&p, NULL);
    r = tls_rec_new(p.s, err, sizeof(err));
    assert_non_null(r);
    uint8_t fatal[TLS_REC_OVERHEAD + 2];
    struct tls_rec *rc = tls_rec_new(p.c, err, sizeof(err));
    assert_non_null(rc);
    k = tls_rec_seal_alert(rc, SSL_AD_ACCESS_DENIED, fatal);
    size_t olen, used;
    uint8_t plainbuf[TLS_REC_MAX_PLAIN + 256];
    assert_int_equal(
        tls_rec_open(r, fatal, (size_t)k, plainbuf, sizeof(plainbuf), &olen, &used, &alert, err, sizeof(err)),
        TLS_REC_ERROR);
    assert_int_equal(alert, 0); /* no alert answers an alert */
    assert_string_equal(err, "TLS alert received: access denied");
    tls_rec_free(rc);
    tls_rec_free(r);
    pair_free(&p);
}

/* A NewSessionTicket after the handshake is skipped; data around it flows. */
static void test_ticket_ignored(void **state)
{
    (void)state;
    struct pair p;
    uint8_t wire[8192], got[256];
    char err[200];
    pair_new(&p, NULL);
    struct tls_rec *r = tls_rec_new(p.c, err, sizeof(err));
    assert_non_null(r);
    assert_int_equal(SSL_new_session_ticket(p.s), 1);
    assert_int_equal(SSL_write(p.s, "t", 1), 1);
    size_t wl = take(p.s_out, wire, sizeof(wire));
    assert_true(wl > 1 + TLS_REC_OVERHEAD + 40); /* a ticket record went before the data */
    enum tls_rec_status st;
    size_t gl = open_all(r, wire, wl, 2, got, sizeof(got), &st);
    assert_int_equal(st, TLS_REC_OK);
    assert_int_equal(gl, 1);
    assert_int_equal(got[0], 't');
    tls_rec_free(r);
    pair_free(&p);
}

/* What keeps OpenSSL's record path: a server that sent tickets in its handshake, a context without the
 * key-log hook. */
static void test_fallbacks(void **state)
{
    (void)state;
    struct pair p;
    char why[128] = "";
    SSL_CTX_set_num_tickets(sctx, 2);
    pair_new(&p, NULL);
    assert_null(tls_rec_new(p.s, why, sizeof(why)));
    assert_string_equal(why, "session tickets sent");
    /* The client side still can (it ignores the tickets it was sent). */
    struct tls_rec *r = tls_rec_new(p.c, why, sizeof(why));
    assert_non_null(r);
    uint8_t wire[8192], got[64];
    assert_int_equal(SSL_write(p.s, "ok", 2), 2);
    size_t wl = take(p.s_out, wire, sizeof(wire));
    /* The tickets were sent during the server's handshake: they are still in the client's input BIO. */
    uint8_t pre[8192];
    size_t pl = take(p.c_in, pre, sizeof(pre));
    assert_true(pl > 0);
    memcpy(pre + pl, wire, wl);
    enum tls_rec_status st;
    size_t gl = open_all(r, pre, pl + wl, 1000, got, sizeof(got), &st);
    assert_int_equal(st, TLS_REC_OK);
    assert_int_equal(gl, 2);
    assert_memory_equal(got, "ok", 2);
    tls_rec_free(r);
    pair_free(&p);
    SSL_CTX_set_num_tickets(sctx, 0);

    SSL_CTX *bare = SSL_CTX_new(TLS_server_method());
    SSL *s = SSL_new(bare);
    assert_null(tls_rec_new(s, why, sizeof(why)));
    assert_string_equal(why, "handshake not finished");
    SSL_free(s);
    SSL_CTX_free(bare);
    assert_int_equal(tls_rec_enable(sctx), 0); /* idempotent */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_aes256_client),
        cmocka_unit_test(test_aes256_server),
        cmocka_unit_test(test_aes128),
        cmocka_unit_test(test_chacha),
        cmocka_unit_test(test_keyupdate_from_peer),
        cmocka_unit_test(test_keyupdate_ours),
        cmocka_unit_test(test_tampered),
        cmocka_unit_test(test_alerts),
        cmocka_unit_test(test_ticket_ignored),
        cmocka_unit_test(test_fallbacks),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
