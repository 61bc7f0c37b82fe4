/* Hex digits and percent-decoding (RFC 3986 §2.1): one decoder for HTTP query parameters, JWT query tokens,
 * grpc-message and the TLS key log's hex. */
#pragma once
#include <stddef.h>
#include <sys/types.h>

/* The value of hex digit c, or -1. */
static inline int hex_digit(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* The byte of the escape "%XX" at s[i] (s has n bytes), or -1 when s[i] does not start one. */
static inline int pct_escape(const char *s, size_t n, size_t i)
{
    if (s[i] != '%' || i + 2 >= n) return -1;
    int hi = hex_digit(s[i + 1]), lo = hex_digit(s[i + 2]);
    return hi < 0 || lo < 0 ? -1 : hi << 4 | lo;
}

/* Percent-decodes in[0..n) into out[0..cap) as Envoy's PercentEncoding::decode: each %XX with two hex digits
 * becomes its byte, anything else ('+', a '%' without two hex digits) is copied. Returns the length, or -1
 * when it does not fit (never when cap >= n). No NUL is added. */
static inline ssize_t pct_decode(const char *in, size_t n, char *out, size_t cap)
{
    size_t w = 0;
    for (size_t i = 0; i < n; i++) {
        char c = in[i];
        int b = pct_escape(in, n, i);
        if (b >= 0) {
            c = (char)b;
            i += 2;
        }
        if (w >= cap) return -1;
        out[w++] = c;
    }
    return (ssize_t)w;
}
