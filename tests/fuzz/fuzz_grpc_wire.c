/* Fuzzes src/h2/grpc_wire.c, the gRPC parsers that see a peer's bytes: the message deframer (DATA payloads),
 * grpc-timeout, grpc-message, -bin metadata (base64), grpc-status and content-type.
 *
 * Input: byte 0 picks a chunk size (1..256) for the deframer and byte 1 its limit (0..255 scaled); the rest
 * is the DATA stream, and also the text given to every header parser.
 *
 * Contracts checked (abort on violation):
 * - the deframer delivers the same messages and ends with the same status whether the stream comes whole or
 *   in chunks; no message is longer than the limit; delivered bytes plus 5 per message never exceed the
 * input;
 * - an accepted grpc-timeout formats to a value that parses back to at least as long (unless saturated);
 * - grpc-message decoding never grows the text, and encode(decode(x)) decodes back to decode(x);
 * - an accepted base64 value re-encodes to text that decodes to the same bytes;
 * - grpc_status_parse accepts only 0..16 and says UNKNOWN otherwise. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "h2/grpc_wire.h"

struct rec {
    uint8_t *data;
    size_t n, cap;
    size_t msgs;
    uint32_t max;
};

static int rec_msg(void *ud, const uint8_t *p, size_t n)
{
    struct rec *r = ud;
    if (n > r->max) abort();
    /* A digest of each message is enough to compare the two runs: length then the bytes. */
    size_t need = r->n + 8 + n;
    if (need > r->cap) {
        r->cap = need * 2;
        r->data = realloc(r->data, r->cap);
        if (!r->data) abort();
    }
    memcpy(r->data + r->n, &n, 8);
    if (n) memcpy(r->data + r->n + 8, p, n);
    r->n = need;
    r->msgs++;
    return 0;
}

static enum grpc_status deframe(const uint8_t *p, size_t n, size_t chunk, uint32_t max, struct rec *r)
{
    struct grpc_deframer d;
    char err[160];
    grpc_deframer_init(&d, max);
    r->max = d.max_len;
    enum grpc_status st = GRPC_STATUS_OK;
    for (size_t o = 0; o < n && st == GRPC_STATUS_OK; o += chunk) {
        size_t k = n - o < chunk ? n - o : chunk;
        st = grpc_deframer_feed(&d, p + o, k, rec_msg, r, err, sizeof(err));
    }
    if (st == GRPC_STATUS_OK) st = grpc_deframer_finish(&d, err, sizeof(err));
    grpc_deframer_free(&d);
    return st;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2) return 0;
    size_t chunk = (size_t)data[0] + 1;
    uint32_t max = (uint32_t)data[1] * 64 + 1;
    const uint8_t *p = data + 2;
    size_t n = size - 2;

    struct rec whole = {0}, parts = {0};
    enum grpc_status a = deframe(p, n, n ? n : 1, max, &whole);
    enum grpc_status b = deframe(p, n, chunk, max, &parts);
    if (a != b || whole.n != parts.n || whole.msgs != parts.msgs) abort();
    if (whole.n && memcmp(whole.data, parts.data, whole.n) != 0) abort();
    if (whole.n - 3 * whole.msgs > n) abort(); /* 8-byte length records vs the 5-byte prefixes */
    free(whole.data);
    free(parts.data);

    const char *s = (const char *)p;
    uint64_t ns;
    if (grpc_timeout_parse(s, n, &ns) == 0) {
        char buf[GRPC_TIMEOUT_BUFSZ];
        size_t tl = grpc_timeout_format(ns, buf);
        uint64_t back;
        if (tl == 0 || tl >= GRPC_TIMEOUT_BUFSZ || grpc_timeout_parse(buf, tl, &back) != 0) abort();
        if (back < ns && ns != UINT64_MAX) abort();
    }

    char *dec = malloc(n + 1), *enc = malloc(3 * n + 1), *dec2 = malloc(3 * n + 1);
    uint8_t *bin = malloc(3 * (n / 4) + 3), *bin2 = malloc(3 * (n / 4) + 3);
    char *b64 = malloc(4 * (n / 3 + 1) + 1);
    if (!dec || !enc || !dec2 || !bin || !bin2 || !b64) abort();
    size_t dl = grpc_message_decode(s, n, dec);
    if (dl > n || dec[dl] != 0) abort();
    size_t el = grpc_message_encode(dec, dl, enc, 3 * n + 1);
    if (el > 3 * dl || grpc_message_decode(enc, el, dec2) != dl || memcmp(dec, dec2, dl) != 0) abort();

    int bl = grpc_b64_decode(s, n, bin);
    if (bl >= 0) {
        if ((size_t)bl > 3 * (n / 4) + 2) abort();
        size_t l = grpc_b64_encode(bin, (size_t)bl, b64);
        if (grpc_b64_decode(b64, l, bin2) != bl || memcmp(bin, bin2, (size_t)bl) != 0) abort();
    }

    enum grpc_status st;
    if (grpc_status_parse(s, n, &st)) {
        if ((unsigned)st > GRPC_STATUS_MAX) abort();
    } else if (st != GRPC_STATUS_UNKNOWN) {
        abort();
    }
    const char *sub;
    size_t sub_n;
    if (grpc_content_type_ok(s, n, &sub, &sub_n) && (sub < s || sub + sub_n > s + n)) abort();
    grpc_md_name_valid(s, n);
    grpc_md_reserved(s, n);

    free(dec);
    free(enc);
    free(dec2);
    free(bin);
    free(bin2);
    free(b64);
    return 0;
}
