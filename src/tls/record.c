/* TLS 1.3 record protection for application traffic (RFC 8446 §5.2–5.4, §7.1–7.3 for the keys, §4.6.3 for
 * KeyUpdate); see record.h. */
#include "tls/record.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/pct.h"

#define REC_APP 23
#define REC_ALERT 21
#define REC_HANDSHAKE 22
#define HS_NEW_SESSION_TICKET 4
#define HS_KEY_UPDATE 24
#define HS_MAX (64u * 1024) /* a post-handshake message larger than this is refused */
#define TAG_LEN 16
#define IV_LEN 12
#define SECRET_MAX EVP_MAX_MD_SIZE
#define SMALL_REC 512 /* records of less plaintext are sealed from one gathered copy */

/* The application traffic secrets as the key-log callback saw them, kept with the SSL until tls_rec_new. */
struct secrets {
    uint8_t client[SECRET_MAX], server[SECRET_MAX];
    size_t client_len, server_len;
};

struct dir {
    EVP_CIPHER_CTX *ctx;
    uint8_t secret[SECRET_MAX], iv[IV_LEN];
    uint64_t seq;
    bool enc;
};

struct tls_rec {
    struct dir rd, wr;
    EVP_CIPHER *cipher;
    EVP_MD *md;
    size_t secret_len, key_len;
    bool gcm; /* AES-GCM (else ChaCha20-Poly1305) */
    uint64_t keyupdate_after;
    bool keyupdate_due; /* the peer asked for our KeyUpdate */
    uint64_t ku_recv, ku_sent;
    uint8_t *part; /* a received record not yet complete (TLS_REC_MAX_CIPHER bytes when allocated) */
    size_t part_len;
    uint8_t *hs; /* a post-handshake message being assembled */
    size_t hs_len;
};

static int ex_idx = -1;
static pthread_once_t ex_once = PTHREAD_ONCE_INIT;

static void secrets_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
    (void)parent, (void)ad, (void)idx, (void)argl, (void)argp;
    if (ptr) OPENSSL_clear_free(ptr, sizeof(struct secrets));
}

static void ex_init(void)
{
    ex_idx = SSL_get_ex_new_index(0, NULL, NULL, NULL, secrets_free);
}

/* "LABEL <client_random hex> <secret hex>" (NSS key log format). */
static void keylog_cb(const SSL *ssl, const char *line)
{
    static const char cl[] = "CLIENT_TRAFFIC_SECRET_0 ", sl[] = "SERVER_TRAFFIC_SECRET_0 ";
    bool client = strncmp(line, cl, sizeof(cl) - 1) == 0;
    if (!client && strncmp(line, sl, sizeof(sl) - 1) != 0) return;
    const char *p = strchr(line + sizeof(cl) - 1, ' ');
    if (!p) return;
    p++;
    size_t hl = strlen(p);
    if (hl % 2 || hl / 2 > SECRET_MAX) return;
    struct secrets *s = SSL_get_ex_data(ssl, ex_idx);
    if (!s) {
        if (!(s = OPENSSL_zalloc(sizeof(*s)))) return;
        if (!SSL_set_ex_data((SSL *)ssl, ex_idx, s)) {
            OPENSSL_free(s);
            return;
        }
    }
    uint8_t *out = client ? s->client : s->server;
    for (size_t i = 0; i < hl / 2; i++) {
        int hi = hex_digit(p[2 * i]), lo = hex_digit(p[2 * i + 1]);
        if (hi < 0 || lo < 0) return;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    if (client)
        s->client_len = hl / 2;
    else
        s->server_len = hl / 2;
}

int tls_rec_enable(SSL_CTX *ctx)
{
    pthread_once(&ex_once, ex_init);
    if (ex_idx < 0) return -1;
    SSL_CTX_keylog_cb_func cur = SSL_CTX_get_keylog_callback(ctx);
    if (cur && cur != keylog_cb) return -1;
    SSL_CTX_set_keylog_callback(ctx, keylog_cb);
    return 0;
}

/* HKDF-Expand-Label(secret, label, "", len) (RFC 8446 §7.1). */
static int expand_label(const struct tls_rec *r, const uint8_t *secret, const char *label, uint8_t *out,
                        size_t len)
{
    uint8_t info[2 + 1 + 6 + 32 + 1];
    size_t ll = strlen(label);
    if (6 + ll > 32) return -1;
    info[0] = (uint8_t)(len >> 8);
    info[1] = (uint8_t)len;
    info[2] = (uint8_t)(6 + ll);
    memcpy(info + 3, "tls13 ", 6);
    memcpy(info + 9, label, ll);
    info[9 + ll] = 0; /* empty context */
    EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
    EVP_KDF_CTX *k = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
    EVP_KDF_free(kdf);
    if (!k) return -1;
    int mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY;
    OSSL_PARAM params[] = {
        OSSL_PARAM_int(OSSL_KDF_PARAM_MODE, &mode),
        OSSL_PARAM_utf8_string(OSSL_KDF_PARAM_DIGEST, (char *)EVP_MD_get0_name(r->md), 0),
        OSSL_PARAM_octet_string(OSSL_KDF_PARAM_KEY, (void *)secret, r->secret_len),
        OSSL_PARAM_octet_string(OSSL_KDF_PARAM_INFO, info, 10 + ll),
        OSSL_PARAM_END,
    };
    int ok = EVP_KDF_derive(k, out, len, params) > 0;
    EVP_KDF_CTX_free(k);
    return ok ? 0 : -1;
}

/* Keys d from d->secret (write or read key and IV), and restarts its sequence. */
static int dir_key(struct tls_rec *r, struct dir *d)
{
    uint8_t key[EVP_MAX_KEY_LENGTH];
    int ok = expand_label(r, d->secret, "key", key, r->key_len) == 0 &&
             expand_label(r, d->secret, "iv", d->iv, IV_LEN) == 0 &&
             EVP_CipherInit_ex(d->ctx, r->cipher, NULL, key, NULL, d->enc) == 1;
    OPENSSL_cleanse(key, sizeof(key));
    d->seq = 0;
    return ok ? 0 : -1;
}

/* application_traffic_secret_N+1 = HKDF-Expand-Label(secret_N, "traffic upd", "", Hash.length). */
static int dir_update(struct tls_rec *r, struct dir *d)
{
    uint8_t next[SECRET_MAX];
    if (expand_label(r, d->secret, "traffic upd", next, r->secret_len) < 0) return -1;
    memcpy(d->secret, next, r->secret_len);
    OPENSSL_cleanse(next, sizeof(next));
    return dir_key(r, d);
}

static void set_why(char *why, size_t n, const char *s)
{
    if (why && n) snprintf(why, n, "%s", s);
}

struct tls_rec *tls_rec_new(SSL *ssl, char *why, size_t whyn)
{
    pthread_once(&ex_once, ex_init);
    struct secrets *s = ex_idx >= 0 ? SSL_get_ex_data(ssl, ex_idx) : NULL;
    struct tls_rec *r = NULL;
    const char *cname = NULL, *mdname = NULL;
    if (!SSL_is_init_finished(ssl)) {
        set_why(why, whyn, "handshake not finished");
        goto out;
    }
    if (SSL_version(ssl) != TLS1_3_VERSION) {
        set_why(why, whyn, "not TLS 1.3");
        goto out;
    }
    if (!s || !s->client_len || s->client_len != s->server_len) {
        set_why(why, whyn, "no traffic secrets captured");
        goto out;
    }
    if (SSL_is_server(ssl) && SSL_get_num_tickets(ssl) != 0) {
        /* OpenSSL sent its tickets with the application key during the handshake: the write sequence
         * number is no longer 0, and OpenSSL has no call that tells it. */
        set_why(why, whyn, "session tickets sent");
        goto out;
    }
    if (SSL_has_pending(ssl)) {
        set_why(why, whyn, "OpenSSL holds unread input");
        goto out;
    }
    const SSL_CIPHER *c = SSL_get_current_cipher(ssl);
    switch (c ? SSL_CIPHER_get_id(c) & 0xffff : 0) {
    case 0x1301:
        cname = "AES-128-GCM", mdname = "SHA256";
        break;
    case 0x1302:
        cname = "AES-256-GCM", mdname = "SHA384";
        break;
    case 0x1303:
        cname = "ChaCha20-Poly1305", mdname = "SHA256";
        break;
    default:
        set_why(why, whyn, "cipher suite not handled");
        goto out;
    }
    if (!(r = calloc(1, sizeof(*r)))) {
        set_why(why, whyn, "out of memory");
        goto out;
    }
    r->cipher = EVP_CIPHER_fetch(NULL, cname, NULL);
    r->md = EVP_MD_fetch(NULL, mdname, NULL);
    r->rd.ctx = EVP_CIPHER_CTX_new();
    r->wr.ctx = EVP_CIPHER_CTX_new();
    if (!r->cipher || !r->md || !r->rd.ctx || !r->wr.ctx || (size_t)EVP_MD_get_size(r->md) != s->client_len) {
        set_why(why, whyn, "cipher or digest unavailable");
        goto fail;
    }
    r->secret_len = s->client_len;
    r->key_len = (size_t)EVP_CIPHER_get_key_length(r->cipher);
    r->gcm = strncmp(cname, "AES", 3) == 0;
    r->keyupdate_after = TLS_REC_KEYUPDATE_RECORDS;
    bool server = SSL_is_server(ssl);
    memcpy(r->wr.secret, server ? s->server : s->client, r->secret_len);
    memcpy(r->rd.secret, server ? s->client : s->server, r->secret_len);
    r->wr.enc = true;
    if (dir_key(r, &r->wr) < 0 || dir_key(r, &r->rd) < 0) {
        set_why(why, whyn, "key derivation failed");
        goto fail;
    }
    goto out;
fail:
    tls_rec_free(r);
    r = NULL;
out:
    /* The secrets are needed once: wipe them whatever the outcome. */
    if (s) {
        SSL_set_ex_data(ssl, ex_idx, NULL);
        OPENSSL_clear_free(s, sizeof(*s));
    }
    return r;
}

void tls_rec_free(struct tls_rec *r)
{
    if (!r) return;
    EVP_CIPHER_CTX_free(r->rd.ctx);
    EVP_CIPHER_CTX_free(r->wr.ctx);
    EVP_CIPHER_free(r->cipher);
    EVP_MD_free(r->md);
    free(r->part);
    free(r->hs);
    OPENSSL_cleanse(r, sizeof(*r));
    free(r);
}

static void nonce(const struct dir *d, uint8_t *n)
{
    memcpy(n, d->iv, IV_LEN);
    for (int i = 0; i < 8; i++)
        n[IV_LEN - 1 - i] ^= (uint8_t)(d->seq >> (8 * i));
}

/* The record's nonce into d's context. EVP_CipherInit_ex(ctx, NULL, NULL, NULL, iv) would do it too, but in
 * OpenSSL 3.0 it also asks the provider for the IV length through a parameter query on every call; the AEAD
 * "TLS1 IV fixed" parameter with the size (size_t)-1 sets the whole IV directly (AES-GCM). About 600 fewer
 * instructions per record (the bench's callgrind counts). ChaCha20-Poly1305 has no such parameter. */
static int set_nonce(const struct tls_rec *r, struct dir *d)
{
    uint8_t iv[IV_LEN];
    nonce(d, iv);
    if (r->gcm) {
        OSSL_PARAM p[] = {OSSL_PARAM_octet_string(OSSL_CIPHER_PARAM_AEAD_TLS1_IV_FIXED, iv, (size_t)-1),
                          OSSL_PARAM_END};
        return EVP_CIPHER_CTX_set_params(d->ctx, p) == 1 ? 0 : -1;
    }
    return EVP_CipherInit_ex(d->ctx, NULL, NULL, NULL, iv, d->enc) == 1 ? 0 : -1;
}

/* One record of content type type from pieces (total bytes of plaintext) into out. */
static ssize_t seal_one(struct tls_rec *r, uint8_t type, const struct tls_piece *pieces, size_t n,
                        size_t total, uint8_t *out)
{
    struct dir *d = &r->wr;
    int l;
    size_t clen = total + 1 + TAG_LEN, off = 5;
    out[0] = REC_APP;
    out[1] = 3;
    out[2] = 3;
    out[3] = (uint8_t)(clen >> 8);
    out[4] = (uint8_t)clen;
    if (set_nonce(r, d) < 0) return -1;
    if (EVP_EncryptUpdate(d->ctx, NULL, &l, out, 5) != 1) return -1;
    if (total < SMALL_REC) {
        /* A small record (interactive traffic): pieces and type gathered, one cipher call instead of one per
         * piece plus one for the type byte (each costs ~300 instructions of EVP dispatch in OpenSSL 3.0). */
        uint8_t buf[SMALL_REC];
        size_t k = 0;
        for (size_t i = 0; i < n; i++) {
            if (pieces[i].len) memcpy(buf + k, pieces[i].p, pieces[i].len);
            k += pieces[i].len;
        }
        buf[k++] = type;
        if (EVP_EncryptUpdate(d->ctx, out + off, &l, buf, (int)k) != 1) return -1;
        off += (size_t)l;
    } else {
        for (size_t i = 0; i < n; i++) {
            if (!pieces[i].len) continue;
            if (EVP_EncryptUpdate(d->ctx, out + off, &l, pieces[i].p, (int)pieces[i].len) != 1) return -1;
            off += (size_t)l;
        }
        if (EVP_EncryptUpdate(d->ctx, out + off, &l, &type, 1) != 1) return -1;
        off += (size_t)l;
    }
    if (EVP_EncryptFinal_ex(d->ctx, out + off, &l) != 1) return -1;
    off += (size_t)l;
    OSSL_PARAM tp[] = {OSSL_PARAM_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG, out + off, TAG_LEN),
                       OSSL_PARAM_END};
    if (EVP_CIPHER_CTX_get_params(d->ctx, tp) != 1) return -1;
    off += TAG_LEN;
    d->seq++;
    return off == 5 + clen ? (ssize_t)off : -1;
}

size_t tls_rec_pending(const struct tls_rec *r)
{
    return r->keyupdate_due || r->wr.seq >= r->keyupdate_after ? TLS_REC_KEYUPDATE_LEN : 0;
}

ssize_t tls_rec_seal_pending(struct tls_rec *r, uint8_t *out)
{
    if (!tls_rec_pending(r)) return 0;
    /* KeyUpdate(update_not_requested), sealed with the old key; then the write key moves on. */
    static const uint8_t ku[5] = {HS_KEY_UPDATE, 0, 0, 1, 0};
    struct tls_piece p = {ku, sizeof(ku)};
    ssize_t w = seal_one(r, REC_HANDSHAKE, &p, 1, sizeof(ku), out);
    if (w < 0 || dir_update(r, &r->wr) < 0) return -1;
    r->keyupdate_due = false;
    r->ku_sent++;
    return w;
}

ssize_t tls_rec_seal(struct tls_rec *r, const struct tls_piece *pieces, size_t n, uint8_t *out)
{
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += pieces[i].len;
    if (total > TLS_REC_MAX_PLAIN) return -1;
    ssize_t k = tls_rec_seal_pending(r, out);
    if (k < 0) return -1;
    ssize_t w = seal_one(r, REC_APP, pieces, n, total, out + k);
    return w < 0 ? -1 : k + w;
}

ssize_t tls_rec_seal_alert(struct tls_rec *r, uint8_t desc, uint8_t *out)
{
    uint8_t a[2] = {desc == SSL_AD_CLOSE_NOTIFY ? 1 : 2, desc};
    struct tls_piece p = {a, 2};
    return seal_one(r, REC_ALERT, &p, 1, 2, out);
}

static enum tls_rec_status fail(uint8_t *alert, uint8_t code, char *err, size_t errn, const char *msg)
{
    if (alert) *alert = code;
    set_why(err, errn, msg);
    return TLS_REC_ERROR;
}

/* The post-handshake messages in the assembled bytes: every complete one is handled and removed. */
static enum tls_rec_status hs_messages(struct tls_rec *r, uint8_t *alert, char *err, size_t errn)
{
    size_t off = 0;
    while (r->hs_len - off >= 4) {
        const uint8_t *m = r->hs + off;
        size_t ml = (size_t)m[1] << 16 | (size_t)m[2] << 8 | m[3];
        if (ml > HS_MAX - 4)
            return fail(alert, SSL_AD_UNEXPECTED_MESSAGE, err, errn, "post-handshake message too large");
        if (r->hs_len - off < 4 + ml) break;
        switch (m[0]) {
        case HS_NEW_SESSION_TICKET: /* no resumption: nothing to keep */
            break;
        case HS_KEY_UPDATE:
            if (ml != 1 || m[4] > 1)
                return fail(alert, SSL_AD_DECODE_ERROR, err, errn, "malformed KeyUpdate");
            /* RFC 8446 §4.6.3: a KeyUpdate must end its record (checked by the caller: nothing may follow in
             * this record). */
            if (m[4] == 1) r->keyupdate_due = true;
            if (dir_update(r, &r->rd) < 0)
                return fail(alert, SSL_AD_INTERNAL_ERROR, err, errn, "key update failed");
            r->ku_recv++;
            break;
        default:
            return fail(alert, SSL_AD_UNEXPECTED_MESSAGE, err, errn, "unexpected post-handshake message");
        }
        off += 4 + ml;
    }
    if (off) {
        memmove(r->hs, r->hs + off, r->hs_len - off);
        r->hs_len -= off;
    }
    return TLS_REC_OK;
}

/* Opens one complete record rec[0..rl): plaintext of application data into out (*olen). */
static enum tls_rec_status open_one(struct tls_rec *r, const uint8_t *rec, size_t rl, uint8_t *out,
                                    size_t *olen, uint8_t *alert, char *err, size_t errn)
{
    struct dir *d = &r->rd;
    uint8_t tag[TAG_LEN];
    int l;
    size_t clen = rl - 5;
    if (rec[0] != REC_APP) return fail(alert, SSL_AD_UNEXPECTED_MESSAGE, err, errn, "unprotected record");
    if (clen < 1 + TAG_LEN) return fail(alert, SSL_AD_DECODE_ERROR, err, errn, "record too short");
    clen -= TAG_LEN;
    memcpy(tag, rec + 5 + clen, TAG_LEN);
    OSSL_PARAM tp[] = {OSSL_PARAM_octet_string(OSSL_CIPHER_PARAM_AEAD_TAG, tag, TAG_LEN), OSSL_PARAM_END};
    if (set_nonce(r, d) < 0 || EVP_DecryptUpdate(d->ctx, NULL, &l, rec, 5) != 1 ||
        EVP_DecryptUpdate(d->ctx, out, &l, rec + 5, (int)clen) != 1 ||
        EVP_CIPHER_CTX_set_params(d->ctx, tp) != 1 || EVP_DecryptFinal_ex(d->ctx, out + l, &l) != 1)
        return fail(alert, SSL_AD_BAD_RECORD_MAC, err, errn, "bad record MAC");
    d->seq++;
    /* TLSInnerPlaintext: content, then the type, then zero padding. */
    size_t pl = clen;
    while (pl && out[pl - 1] == 0)
        pl--;
    if (!pl) return fail(alert, SSL_AD_UNEXPECTED_MESSAGE, err, errn, "record without content type");
    uint8_t type = out[--pl];
    if (pl > TLS_REC_MAX_PLAIN) return fail(alert, SSL_AD_RECORD_OVERFLOW, err, errn, "record too large");
    if (type == REC_APP) {
        if (r->hs_len)
            return fail(alert, SSL_AD_UNEXPECTED_MESSAGE, err, errn, "data inside a post-handshake message");
        *olen = pl;
        return TLS_REC_OK;
    }
    *olen = 0;
    if (type == REC_ALERT) {
        if (pl != 2) return fail(alert, SSL_AD_DECODE_ERROR, err, errn, "malformed alert");
        if (out[1] == SSL_AD_CLOSE_NOTIFY) return TLS_REC_CLOSED;
        if (alert) *alert = 0;
        snprintf(err, errn, "TLS alert received: %s", SSL_alert_desc_string_long(out[1]));
        return TLS_REC_ERROR;
    }
    if (type != REC_HANDSHAKE || !pl)
        return fail(alert, SSL_AD_UNEXPECTED_MESSAGE, err, errn, "unexpected record type");
    if (r->hs_len + pl > HS_MAX)
        return fail(alert, SSL_AD_UNEXPECTED_MESSAGE, err, errn, "post-handshake message too large");
    if (!r->hs && !(r->hs = malloc(HS_MAX)))
        return fail(alert, SSL_AD_INTERNAL_ERROR, err, errn, "out of memory");
    memcpy(r->hs + r->hs_len, out, pl);
    r->hs_len += pl;
    uint64_t ku = r->ku_recv;
    enum tls_rec_status st = hs_messages(r, alert, err, errn);
    if (st != TLS_REC_OK) return st;
    if (r->ku_recv != ku && r->hs_len)
        return fail(alert, SSL_AD_UNEXPECTED_MESSAGE, err, errn, "KeyUpdate not at the end of its record");
    if (!r->hs_len) {
        free(r->hs);
        r->hs = NULL;
    }
    return TLS_REC_OK;
}

static size_t rec_len(const uint8_t *h)
{
    return 5 + ((size_t)h[3] << 8 | h[4]);
}

enum tls_rec_status tls_rec_open(struct tls_rec *r, const uint8_t *in, size_t n, uint8_t *out, size_t cap,
                                 size_t *olen, size_t *used, uint8_t *alert, char *err, size_t errn)
{
    size_t o = 0, u = 0, got;
    enum tls_rec_status st = TLS_REC_OK;
    if (alert) *alert = 0;
    *olen = *used = 0;
    /* First complete the record kept from the last call. */
    if (r->part_len) {
        size_t need = r->part_len < 5 ? 5 - r->part_len : 0;
        size_t k = need < n ? need : n;
        memcpy(r->part + r->part_len, in, k);
        r->part_len += k;
        u += k;
        if (r->part_len < 5) goto done;
        size_t rl = rec_len(r->part);
        if (rl > TLS_REC_MAX_CIPHER)
            return fail(alert, SSL_AD_RECORD_OVERFLOW, err, errn, "record too large");
        k = rl - r->part_len < n - u ? rl - r->part_len : n - u;
        memcpy(r->part + r->part_len, in + u, k);
        r->part_len += k;
        u += k;
        if (r->part_len < rl) goto done;
        st = open_one(r, r->part, rl, out, &got, alert, err, errn);
        r->part_len = 0;
        free(r->part);
        r->part = NULL;
        if (st != TLS_REC_OK) goto done;
        o += got;
    }
    while (n - u >= 5) {
        size_t rl = rec_len(in + u);
        if (rl > TLS_REC_MAX_CIPHER)
            return fail(alert, SSL_AD_RECORD_OVERFLOW, err, errn, "record too large");
        if (n - u < rl) break;
        if (cap - o < rl - 5) goto done; /* out is full: the caller feeds it and calls again */
        st = open_one(r, in + u, rl, out + o, &got, alert, err, errn);
        if (st != TLS_REC_OK) goto done;
        u += rl;
        o += got;
    }
    if (n - u) {
        if (!(r->part = malloc(TLS_REC_MAX_CIPHER)))
            return fail(alert, SSL_AD_INTERNAL_ERROR, err, errn, "out of memory");
        memcpy(r->part, in + u, n - u);
        r->part_len = n - u;
        u = n;
    }
done:
    *olen = o;
    *used = u;
    return st;
}

uint64_t tls_rec_write_seq(const struct tls_rec *r)
{
    return r->wr.seq;
}

void tls_rec_set_keyupdate_after(struct tls_rec *r, uint64_t records)
{
    r->keyupdate_after = records;
}

uint64_t tls_rec_keyupdates_recv(const struct tls_rec *r)
{
    return r->ku_recv;
}

uint64_t tls_rec_keyupdates_sent(const struct tls_rec *r)
{
    return r->ku_sent;
}
