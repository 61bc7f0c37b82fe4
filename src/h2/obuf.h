/* The byte buffer of the h2 layer (session output, HBONE relay buffers): p[off..len) holds the bytes. Private
 * to src/h2. */
#pragma once
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct obuf {
    uint8_t *p;
    size_t off, len, cap;
};

static inline size_t obuf_used(const struct obuf *b)
{
    return b->len - b->off;
}

static inline void obuf_free(struct obuf *b)
{
    free(b->p);
    memset(b, 0, sizeof(*b));
}

/* Drops n bytes from the front; an emptied buffer is freed (idle connections and streams keep none). */
static inline void obuf_consume(struct obuf *b, size_t n)
{
    b->off += n;
    if (b->off == b->len) obuf_free(b);
}

/* Room for n more bytes at b->p + b->len (the caller writes there, then adds what it wrote to b->len).
 * Returns that pointer, or NULL (out of memory; b unchanged). */
static inline uint8_t *obuf_reserve(struct obuf *b, size_t n)
{
    if (b->len + n > b->cap) {
        /* Compact only when the dead prefix is at least as large as the live bytes, so each byte is moved
         * at most about once (amortized O(1)); otherwise grow. */
        if (b->off && b->off >= b->len - b->off) {
            memmove(b->p, b->p + b->off, b->len - b->off);
            b->len -= b->off;
            b->off = 0;
        }
        if (b->len + n > b->cap) {
            size_t cap = b->cap ? b->cap : 16384;
            while (cap < b->len + n)
                cap *= 2;
            uint8_t *p = realloc(b->p, cap);
            if (!p) return NULL;
            b->p = p;
            b->cap = cap;
        }
    }
    return b->p + b->len;
}

/* Appends d[0..n). Returns 0 or -ENOMEM (b unchanged). */
static inline int obuf_append(struct obuf *b, const void *d, size_t n)
{
    uint8_t *w = obuf_reserve(b, n);
    if (!w) return -ENOMEM;
    memcpy(w, d, n);
    b->len += n;
    return 0;
}
