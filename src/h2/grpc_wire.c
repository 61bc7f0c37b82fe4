/* gRPC wire rules that need no connection; see grpc_wire.h. */
#include "h2/grpc_wire.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/pct.h"

static const char *const status_names[] = {
    "OK",        "CANCELLED",       "UNKNOWN",           "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED",
    "NOT_FOUND", "ALREADY_EXISTS",  "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED",   "OUT_OF_RANGE",    "UNIMPLEMENTED",     "INTERNAL",           "UNAVAILABLE",
    "DATA_LOSS", "UNAUTHENTICATED",
};

const char *grpc_status_to_str(enum grpc_status s)
{
    if ((unsigned)s > GRPC_STATUS_MAX) return "?";
    return status_names[s];
}

bool grpc_status_parse(const char *v, size_t n, enum grpc_status *out)
{
    *out = GRPC_STATUS_UNKNOWN;
    /* At most two digits are meaningful; a longer value is not a code grpc defines. */
    if (n == 0 || n > 2) return false;
    unsigned x = 0;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9') return false;
        x = x * 10 + (unsigned)(v[i] - '0');
    }
    /* "Without any leading zeros": "05" is not a status. */
    if (n == 2 && v[0] == '0') return false;
    if (x > GRPC_STATUS_MAX) return false;
    *out = (enum grpc_status)x;
    return true;
}

/* ---- framing ---- */

void grpc_frame_header(uint8_t out[GRPC_FRAME_HDR], bool compressed, uint32_t len)
{
    out[0] = compressed ? 1 : 0;
    out[1] = (uint8_t)(len >> 24);
    out[2] = (uint8_t)(len >> 16);
    out[3] = (uint8_t)(len >> 8);
    out[4] = (uint8_t)len;
}

enum grpc_status grpc_check_send_size(size_t len, uint32_t max_send, char *err, size_t errlen)
{
    /* The length prefix is 32 bits whatever the limit. */
    if ((max_send && len > max_send) || len > UINT32_MAX) {
        snprintf(err, errlen, "grpc: trying to send message larger than max (%zu vs. %u)", len,
                 max_send ? max_send : UINT32_MAX);
        return GRPC_STATUS_RESOURCE_EXHAUSTED;
    }
    return GRPC_STATUS_OK;
}

void grpc_deframer_init(struct grpc_deframer *d, uint32_t max_len)
{
    memset(d, 0, sizeof(*d));
    d->max_len = max_len ? max_len : GRPC_DEFAULT_MAX_RECV;
}

void grpc_deframer_free(struct grpc_deframer *d)
{
    free(d->buf);
    d->buf = NULL;
    d->buf_n = d->buf_cap = 0;
}

bool grpc_deframer_partial(const struct grpc_deframer *d)
{
    return d->hdr_n > 0;
}

/* Checks a complete prefix; sets d->len. */
static enum grpc_status check_prefix(struct grpc_deframer *d, char *err, size_t errlen)
{
    uint8_t flag = d->hdr[0];
    d->len = (uint32_t)d->hdr[1] << 24 | (uint32_t)d->hdr[2] << 16 | (uint32_t)d->hdr[3] << 8 | d->hdr[4];
    if (flag > 1) {
        snprintf(err, errlen, "grpc: received unexpected payload format %u", flag);
        return GRPC_STATUS_INTERNAL;
    }
    if (flag == 1 && !d->encoding_set) {
        snprintf(err, errlen, "grpc: compressed flag set with identity or empty encoding");
        return GRPC_STATUS_INTERNAL;
    }
    if (flag == 1) {
        snprintf(err, errlen, "grpc: compressed messages are not supported");
        return GRPC_STATUS_UNIMPLEMENTED;
    }
    if (d->len > d->max_len) {
        snprintf(err, errlen, "grpc: received message larger than max (%u vs. %u)", d->len, d->max_len);
        return GRPC_STATUS_RESOURCE_EXHAUSTED;
    }
    return GRPC_STATUS_OK;
}

/* Makes room for want bytes in total, growing geometrically but never past the message's length. */
static int reserve(struct grpc_deframer *d, size_t want)
{
    if (want <= d->buf_cap) return 0;
    size_t cap = d->buf_cap ? d->buf_cap : 4096;
    while (cap < want)
        cap *= 2;
    if (cap > d->len) cap = d->len;
    uint8_t *nb = realloc(d->buf, cap);
    if (!nb) return -ENOMEM;
    d->buf = nb;
    d->buf_cap = cap;
    return 0;
}

enum grpc_status grpc_deframer_feed(struct grpc_deframer *d, const uint8_t *p, size_t n, grpc_msg_fn on_msg,
                                    void *ud, char *err, size_t errlen)
{
    while (n > 0) {
        if (d->hdr_n < GRPC_FRAME_HDR) {
            size_t take = GRPC_FRAME_HDR - d->hdr_n;
            if (take > n) take = n;
            memcpy(d->hdr + d->hdr_n, p, take);
            d->hdr_n += take;
            p += take;
            n -= take;
            if (d->hdr_n < GRPC_FRAME_HDR) break;
            enum grpc_status st = check_prefix(d, err, errlen);
            if (st != GRPC_STATUS_OK) return st;
            d->buf_n = 0;
        }
        const uint8_t *msg;
        if (d->buf_n == 0 && n >= d->len) {
            /* The whole message is in this chunk: hand it over in place. */
            msg = p;
            p += d->len;
            n -= d->len;
        } else {
            if (n == 0) break; /* the prefix ended the chunk */
            size_t take = d->len - d->buf_n;
            if (take > n) take = n;
            if (reserve(d, d->buf_n + take) < 0) {
                snprintf(err, errlen, "grpc: out of memory for a %u-byte message", d->len);
                return GRPC_STATUS_RESOURCE_EXHAUSTED;
            }
            memcpy(d->buf + d->buf_n, p, take);
            d->buf_n += take;
            p += take;
            n -= take;
            if (d->buf_n < d->len) break;
            msg = d->buf;
        }
        uint32_t len = d->len;
        d->hdr_n = 0;
        d->buf_n = 0;
        d->messages++;
        if (on_msg(ud, msg, len)) return GRPC_STATUS_OK;
        /* A large buffer is not kept between messages: a stream that once received 200 MiB holds nothing
         * while idle. */
        if (d->buf_cap > 64 * 1024) grpc_deframer_free(d);
    }
    return GRPC_STATUS_OK;
}

enum grpc_status grpc_deframer_finish(const struct grpc_deframer *d, char *err, size_t errlen)
{
    if (!grpc_deframer_partial(d)) return GRPC_STATUS_OK;
    snprintf(err, errlen, "grpc: unexpected EOF inside a message (%zu of %u bytes)",
             d->hdr_n < GRPC_FRAME_HDR ? d->hdr_n : GRPC_FRAME_HDR + d->buf_n,
             d->hdr_n < GRPC_FRAME_HDR ? GRPC_FRAME_HDR : GRPC_FRAME_HDR + d->len);
    return GRPC_STATUS_INTERNAL;
}

/* ---- grpc-timeout ---- */

static const struct {
    char unit;
    uint64_t ns;
} timeout_units[] = {
    {'n', 1ull},
    {'u', 1000ull},
    {'m', 1000000ull},
    {'S', 1000000000ull},
    {'M', 60ull * 1000000000ull},
    {'H', 3600ull * 1000000000ull},
};
#define TIMEOUT_MAX_DIGITS 8
#define TIMEOUT_MAX_VALUE 99999999ull

int grpc_timeout_parse(const char *v, size_t n, uint64_t *ns)
{
    if (n < 2 || n > TIMEOUT_MAX_DIGITS + 1) return -EINVAL;
    uint64_t x = 0;
    for (size_t i = 0; i + 1 < n; i++) {
        if (v[i] < '0' || v[i] > '9') return -EINVAL;
        x = x * 10 + (uint64_t)(v[i] - '0');
    }
    for (size_t u = 0; u < sizeof(timeout_units) / sizeof(timeout_units[0]); u++) {
        if (timeout_units[u].unit == v[n - 1]) {
            /* 99999999H is 3.6e20 ns, past 64 bits (5124095 hours): saturate, it is "forever" anyway. */
            *ns = x > UINT64_MAX / timeout_units[u].ns ? UINT64_MAX : x * timeout_units[u].ns;
            return 0;
        }
    }
    return -EINVAL;
}

size_t grpc_timeout_format(uint64_t ns, char buf[GRPC_TIMEOUT_BUFSZ])
{
    if (ns == 0) ns = 1;
    size_t nu = sizeof(timeout_units) / sizeof(timeout_units[0]);
    for (size_t u = 0; u < nu; u++) {
        uint64_t q = ns / timeout_units[u].ns + (ns % timeout_units[u].ns != 0);
        if (q <= TIMEOUT_MAX_VALUE)
            return (size_t)snprintf(buf, GRPC_TIMEOUT_BUFSZ, "%llu%c", (unsigned long long)q,
                                    timeout_units[u].unit);
    }
    /* Unreachable: 2^64 ns is 5124096 hours, 7 digits. */
    return (size_t)snprintf(buf, GRPC_TIMEOUT_BUFSZ, "%lluH", TIMEOUT_MAX_VALUE);
}

uint64_t grpc_timeout_ms(uint64_t ns)
{
    return ns / 1000000 + (ns % 1000000 != 0);
}

/* ---- grpc-message ---- */

static bool msg_unreserved(unsigned char c)
{
    return c >= 0x20 && c <= 0x7e && c != '%';
}

size_t grpc_message_encode(const char *in, size_t n, char *out, size_t cap)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t len = 0;
    bool full = cap == 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)in[i];
        size_t w = msg_unreserved(c) ? 1 : 3;
        if (!full && len + w < cap) {
            if (w == 1) {
                out[len] = (char)c;
            } else {
                out[len] = '%';
                out[len + 1] = hex[c >> 4];
                out[len + 2] = hex[c & 15];
            }
        } else if (!full) {
            /* Truncate at an escape boundary, never inside one. */
            out[len] = '\0';
            full = true;
        }
        len += w;
    }
    if (!full) out[len] = '\0';
    return len;
}

size_t grpc_message_decode(const char *in, size_t n, char *out)
{
    size_t len = (size_t)pct_decode(in, n, out, n);
    out[len] = '\0';
    return len;
}

/* ---- metadata ---- */

bool grpc_md_name_valid(const char *name, size_t n)
{
    if (n == 0) return false;
    for (size_t i = 0; i < n; i++) {
        char c = name[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || c == '_' || c == '-' || c == '.'))
            return false;
    }
    return true;
}

bool grpc_md_value_valid(const char *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)v[i] < 0x20 || (unsigned char)v[i] > 0x7e) return false;
    return true;
}

bool grpc_md_is_bin(const char *name, size_t n)
{
    return n > 4 && memcmp(name + n - 4, "-bin", 4) == 0;
}

bool grpc_md_reserved(const char *name, size_t n)
{
    static const char *const fixed[] = {"content-type",      "te",         "user-agent",
                                        "connection",        "keep-alive", "proxy-connection",
                                        "transfer-encoding", "upgrade",    "host"};
    if (n == 0 || name[0] == ':') return true;
    if (n >= 5 && strncasecmp(name, "grpc-", 5) == 0) return true;
    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++)
        if (strlen(fixed[i]) == n && strncasecmp(name, fixed[i], n) == 0) return true;
    return false;
}

static const char b64_alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t grpc_b64_encode(const uint8_t *in, size_t n, char *out)
{
    size_t o = 0, i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = b64_alphabet[v >> 18];
        out[o++] = b64_alphabet[(v >> 12) & 63];
        out[o++] = b64_alphabet[(v >> 6) & 63];
        out[o++] = b64_alphabet[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = b64_alphabet[v >> 18];
        out[o++] = b64_alphabet[(v >> 12) & 63];
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = b64_alphabet[v >> 18];
        out[o++] = b64_alphabet[(v >> 12) & 63];
        out[o++] = b64_alphabet[(v >> 6) & 63];
    }
    out[o] = '\0';
    return o;
}

static int b64val(char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

int grpc_b64_decode(const char *in, size_t n, uint8_t *out)
{
    /* Padding, if any, is only at the end and only as much as completes the last quantum. */
    size_t pad = 0;
    while (n > 0 && in[n - 1] == '=' && pad < 2) {
        n--;
        pad++;
    }
    if (pad && (n + pad) % 4 != 0) return -EINVAL;
    if (n % 4 == 1) return -EINVAL;
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        int v = b64val(in[i]);
        if (v < 0) return -EINVAL;
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    return (int)o;
}

/* ---- content-type and mappings ---- */

bool grpc_content_type_ok(const char *v, size_t n, const char **sub, size_t *sub_n)
{
    static const char base[] = "application/grpc";
    const size_t bn = sizeof(base) - 1;
    if (n < bn || strncasecmp(v, base, bn) != 0) return false;
    const char *s = v + n;
    size_t sn = 0;
    if (n > bn) {
        if (v[bn] != '+' && v[bn] != ';') return false;
        if (v[bn] == '+') {
            s = v + bn + 1;
            /* A subtype ends at parameters, if any ("application/grpc+proto; charset=..."). */
            const char *semi = memchr(s, ';', n - bn - 1);
            sn = semi ? (size_t)(semi - s) : n - bn - 1;
        }
    }
    if (sub) *sub = s;
    if (sub_n) *sub_n = sn;
    return true;
}

enum grpc_status grpc_status_from_http(int http_status)
{
    switch (http_status) {
    case 400:
        return GRPC_STATUS_INTERNAL;
    case 401:
        return GRPC_STATUS_UNAUTHENTICATED;
    case 403:
        return GRPC_STATUS_PERMISSION_DENIED;
    case 404:
        return GRPC_STATUS_UNIMPLEMENTED;
    case 429:
    case 502:
    case 503:
    case 504:
        return GRPC_STATUS_UNAVAILABLE;
    case 431:
        return GRPC_STATUS_INTERNAL;
    default:
        return GRPC_STATUS_UNKNOWN;
    }
}

enum grpc_status grpc_status_from_h2_error(uint32_t h2)
{
    switch (h2) {
    case 0x7:
        return GRPC_STATUS_UNAVAILABLE; /* REFUSED_STREAM: nothing was processed */
    case 0x8:
        return GRPC_STATUS_CANCELLED; /* CANCEL */
    case 0xb:
        return GRPC_STATUS_RESOURCE_EXHAUSTED; /* ENHANCE_YOUR_CALM */
    case 0xc:
        return GRPC_STATUS_PERMISSION_DENIED; /* INADEQUATE_SECURITY */
    default:
        return GRPC_STATUS_INTERNAL;
    }
}
