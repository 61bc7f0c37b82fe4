/* libFuzzer target for zmesh's TLS 1.3 record layer (src/tls/record.c), differential against OpenSSL's.
 *
 * Each input is a fresh connection: a real handshake between the HBONE client and server contexts over memory
 * BIOs, then the client side's records go through tls_rec (tls_rec_open / tls_rec_seal) while the server
 * stays on OpenSSL. The input is a list of operations, each [op][len][len bytes]: op % 5 == 0: the server
 * SSL_writes the bytes (application data, in one or more records); op % 5 == 1: the server SSL_key_updates
 * (requested when the first byte is odd, or when there is none); op % 5 == 2: the bytes are appended raw to
 * what the client receives (hostile framing); op % 5 == 3: one bit of what the client has not yet opened is
 * flipped (position from the bytes); op % 5 == 4: the client opens what it has received, len + 1 bytes per
 * tls_rec_open call, and answers with a record of the bytes, which the server must read back (our KeyUpdate
 * goes first when due). Whatever is left is opened at the end. Invariants (abort on violation): without ops 2
 * and 3 nothing fails and the client reads exactly what the server wrote, and the server reads exactly what
 * the client sealed; with them, an error stops the connection and nothing crashes or leaks (ASan/LSan). Each
 * run pays for a handshake (~4 ms of CPU). Built and run by `make fuzz` (tests/fuzz/README.md). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "core/log.h"
#include "tls/ca.h"
#include "tls/record.h"
#include "tls/spiffe.h"
#include "tls/tls.h"

static SSL_CTX *sctx, *cctx;

static struct tls_cert *fetch(struct cert_provider *ca, const char *uri)
{
    struct spiffe_id id;
    char err[256];
    if (spiffe_parse(uri, strlen(uri), &id) < 0) return NULL;
    return ca->fetch(ca, &id, err, sizeof(err));
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    char dir[] = "/tmp/zmesh-fuzz-rec-XXXXXX", err[256], p[128];
    log_set_level("error");
    if (!mkdtemp(dir) || ca_write_root(dir, "fuzz", err, sizeof(err)) < 0) abort();
    struct cert_provider *ca = ca_local_new(dir, err, sizeof(err));
    if (!ca) abort();
    struct tls_cert *sc = fetch(ca, "spiffe://cluster.local/ns/a/sa/s"),
                    *cc = fetch(ca, "spiffe://cluster.local/ns/a/sa/c");
    if (!sc || !cc || !(sctx = tls_server_ctx_new(sc)) || !(cctx = tls_client_ctx_new(cc))) abort();
    tls_cert_unref(sc);
    tls_cert_unref(cc);
    ca->destroy(ca);
    snprintf(p, sizeof(p), "%s/root-cert.pem", dir);
    unlink(p);
    snprintf(p, sizeof(p), "%s/root-key.pem", dir);
    unlink(p);
    rmdir(dir);
    return 0;
}

static void pump(BIO *from, BIO *to)
{
    char buf[4096];
    int n;
    while ((n = BIO_read(from, buf, sizeof(buf))) > 0)
        if (BIO_write(to, buf, n) != n) abort();
}

/* What the client has received and not opened yet. */
static uint8_t wire[1 << 20];
static size_t wire_len;
static uint8_t expect_c[1 << 20], got_c[1 << 20];
static size_t expect_c_len, got_c_len;

static void take(BIO *out)
{
    int k;
    while (wire_len < sizeof(wire) &&
           (k = BIO_read(out, wire + wire_len, (int)(sizeof(wire) - wire_len))) > 0)
        wire_len += (size_t)k;
}

/* Opens up to the whole wire in chunks; returns false once the record layer failed or closed. */
static bool open_wire(struct tls_rec *r, size_t chunk, bool hostile)
{
    static uint8_t plain[64 * 1024];
    size_t off = 0;
    char err[200];
    uint8_t alert;
    bool ok = true;
    while (off < wire_len) {
        size_t k = wire_len - off < chunk ? wire_len - off : chunk, olen, used;
        enum tls_rec_status st =
            tls_rec_open(r, wire + off, k, plain, sizeof(plain), &olen, &used, &alert, err, sizeof(err));
        if (got_c_len + olen > sizeof(got_c)) abort();
        memcpy(got_c + got_c_len, plain, olen);
        got_c_len += olen;
        off += used;
        if (st != TLS_REC_OK) {
            if (!hostile) abort(); /* OpenSSL's records must open */
            ok = false;
            break;
        }
        if (!used && !olen) abort(); /* no progress */
    }
    memmove(wire, wire + off, wire_len - off);
    wire_len -= off;
    return ok;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    SSL *c = SSL_new(cctx), *s = SSL_new(sctx);
    BIO *c_in = BIO_new(BIO_s_mem()), *c_out = BIO_new(BIO_s_mem()), *s_in = BIO_new(BIO_s_mem()),
        *s_out = BIO_new(BIO_s_mem());
    if (!c || !s || !c_in || !c_out || !s_in || !s_out) abort();
    SSL_set_bio(c, c_in, c_out);
    SSL_set_bio(s, s_in, s_out);
    SSL_set_connect_state(c);
    SSL_set_accept_state(s);
    bool cd = false, sd = false;
    for (int i = 0; i < 20 && !(cd && sd); i++) {
        if (!cd) cd = SSL_do_handshake(c) == 1;
        pump(c_out, s_in);
        if (!sd) sd = SSL_do_handshake(s) == 1;
        pump(s_out, c_in);
    }
    if (!cd || !sd) abort();
    char why[128];
    struct tls_rec *r = tls_rec_new(c, why, sizeof(why));
    if (!r) abort();
    wire_len = expect_c_len = got_c_len = 0;
    bool hostile = false, alive = true;
    static uint8_t rec[TLS_REC_MAX_PLAIN + 256], back[TLS_REC_MAX_PLAIN];
    size_t i = 0;
    while (alive && i + 2 <= size) {
        uint8_t op = data[i] % 5, len = data[i + 1];
        const uint8_t *d = data + i + 2;
        size_t n = size - i - 2 < len ? size - i - 2 : len;
        i += 2 + n;
        switch (op) {
        case 0:
            if (!n || expect_c_len + n > sizeof(expect_c)) break;
            if (SSL_write(s, d, (int)n) != (int)n) abort();
            memcpy(expect_c + expect_c_len, d, n);
            expect_c_len += n;
            take(s_out);
            break;
        case 1:
            if (SSL_key_update(s, !n || (d[0] & 1) ? SSL_KEY_UPDATE_REQUESTED
                                                   : SSL_KEY_UPDATE_NOT_REQUESTED) != 1)
                abort();
            /* OpenSSL sends it with its next write: an empty SSL_write does not, so write one byte. */
            if (SSL_write(s, "k", 1) != 1) abort();
            expect_c[expect_c_len++] = 'k';
            take(s_out);
            break;
        case 2:
            if (wire_len + n <= sizeof(wire)) {
                memcpy(wire + wire_len, d, n);
                wire_len += n;
                hostile = true;
            }
            break;
        case 3:
            if (wire_len && n) {
                wire[(d[0] | (n > 1 ? d[1] << 8 : 0)) % wire_len] ^= (uint8_t)(1u << (n > 2 ? d[2] % 8 : 0));
                hostile = true;
            }
            break;
        case 4: {
            alive = open_wire(r, (size_t)len + 1, hostile);
            if (!alive || hostile) break;
            struct tls_piece pc = {d, n};
            ssize_t w = tls_rec_seal(r, &pc, 1, rec);
            if (w < (ssize_t)(n + TLS_REC_OVERHEAD)) abort();
            if (BIO_write(s_in, rec, (int)w) != (int)w) abort();
            if (n) {
                size_t got = 0;
                int k;
                while (got < n && (k = SSL_read(s, back + got, (int)(sizeof(back) - got))) > 0)
                    got += (size_t)k;
                if (got != n || memcmp(back, d, n) != 0) abort(); /* OpenSSL reads what we sealed */
            }
            break;
        }
        }
    }
    if (alive) open_wire(r, 4096, hostile);
    if (!hostile && (got_c_len != expect_c_len || memcmp(got_c, expect_c, got_c_len) != 0)) abort();
    tls_rec_free(r);
    SSL_free(c);
    SSL_free(s);
    ERR_clear_error();
    return 0;
}
