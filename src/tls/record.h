/* TLS 1.3 application traffic after OpenSSL's handshake: records sealed and opened here (RFC 8446 §5.2),
 * with one AEAD context per direction keyed once from the traffic secrets, instead of through SSL_read and
 * SSL_write. OpenSSL 3.0 spends several thousand instructions per record outside the AES-GCM work (a cipher
 * re-init through the provider layer, parameter lookups, buffer allocations, BIO calls) and copies every byte
 * twice (into its record buffer and out of it); this seals straight from the caller's pieces into the output
 * and opens straight from the received bytes into the plaintext buffer.
 *
 * The secrets come from OpenSSL's key-log callback (tls_rec_enable on the SSL_CTX), are kept with the SSL
 * object only until tls_rec_new takes them, and are wiped. Post-handshake: NewSessionTicket is ignored (no
 * resumption), KeyUpdate updates the read keys and, when requested, queues ours (RFC 8446 §4.6.3); we send a
 * KeyUpdate ourselves before a write key reaches TLS_REC_KEYUPDATE_RECORDS records (RFC 8446 §5.5's limit
 * for AES-GCM is 2^24.5). Alerts: close_notify ends the input, any other alert is an error. */
#pragma once
#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define TLS_REC_MAX_PLAIN 16384u                           /* 2^14: the largest record payload */
#define TLS_REC_OVERHEAD 22u                               /* header 5 + content type 1 + tag 16 */
#define TLS_REC_MAX_CIPHER (TLS_REC_MAX_PLAIN + 256u + 5u) /* the largest record a peer may send */
#define TLS_REC_KEYUPDATE_LEN (5u + 4u + 1u + 1u + 16u)    /* one sealed KeyUpdate record */
#define TLS_REC_KEYUPDATE_RECORDS (1ull << 23)

struct tls_rec;

/* A piece of plaintext for tls_rec_seal. */
struct tls_piece {
    const void *p;
    size_t len;
};

/* Arms the key-log callback on ctx that captures the application traffic secrets for tls_rec_new. Returns 0
 * or -1 (ctx has another key-log callback). */
int tls_rec_enable(SSL_CTX *ctx);

/* After ssl's handshake completed: the record layer for its application traffic, or NULL with the reason in
 * why (handshake not finished, not TLS 1.3, no secrets captured, a server that sent session tickets in its
 * handshake, OpenSSL still holds unread input, a cipher suite other than AES-GCM / ChaCha20-Poly1305, out of
 * memory); the caller then keeps using SSL_read/SSL_write. Either way the captured secrets are wiped. */
struct tls_rec *tls_rec_new(SSL *ssl, char *why, size_t whyn);
void tls_rec_free(struct tls_rec *r);

/* Room out needs for a seal of len plaintext bytes (one record, plus a KeyUpdate that may precede it). */
static inline size_t tls_rec_seal_room(size_t len)
{
    return len + TLS_REC_OVERHEAD + TLS_REC_KEYUPDATE_LEN;
}

/* Seals the concatenation of pieces (at most TLS_REC_MAX_PLAIN bytes in all) as one application-data record
 * into out, preceded by our KeyUpdate when one is due (the peer asked for it, or the write key is old).
 * Returns the bytes written (at most tls_rec_seal_room(total)), or -1 (OpenSSL failed). */
ssize_t tls_rec_seal(struct tls_rec *r, const struct tls_piece *pieces, size_t n, uint8_t *out);

/* Bytes our pending KeyUpdate needs (0: none pending); tls_rec_seal sends it with the next record, or
 * tls_rec_seal_pending alone. */
size_t tls_rec_pending(const struct tls_rec *r);
ssize_t tls_rec_seal_pending(struct tls_rec *r, uint8_t *out);

/* Seals an alert record (level fatal unless desc is close_notify); out needs 5 + 2 + 1 + 16 bytes. */
ssize_t tls_rec_seal_alert(struct tls_rec *r, uint8_t desc, uint8_t *out);

enum tls_rec_status {
    TLS_REC_OK,     /* all of the input consumed, or out is full (call again with the rest) */
    TLS_REC_CLOSED, /* close_notify received: nothing after it counts */
    TLS_REC_ERROR,  /* bad record or alert received: *alert (if not 0) is the alert to send, err says why */
};

/* Opens the records in in[0..n): application data is written to out (at most cap bytes; cap must be at
 * least TLS_REC_MAX_PLAIN + 1), *olen its length, *used the input bytes consumed. A partial record at the end
 * of the input is kept inside r and completed by the next call. Stops early when out cannot take another
 * record. */
enum tls_rec_status tls_rec_open(struct tls_rec *r, const uint8_t *in, size_t n, uint8_t *out, size_t cap,
                                 size_t *olen, size_t *used, uint8_t *alert, char *err, size_t errn);

/* Test hooks: records sealed with the current write key, and the count at which a KeyUpdate is due. */
uint64_t tls_rec_write_seq(const struct tls_rec *r);
void tls_rec_set_keyupdate_after(struct tls_rec *r, uint64_t records);
/* KeyUpdates received from the peer, sent by us. */
uint64_t tls_rec_keyupdates_recv(const struct tls_rec *r);
uint64_t tls_rec_keyupdates_sent(const struct tls_rec *r);
