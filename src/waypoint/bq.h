/* The byte queue of the waypoint's h2c streams (h2c.c, h2c_mirror.c): bytes received on one side and not yet
 * taken by the other side's session, as a list of chunks, so a pull offers contiguous bytes without moving
 * what is queued. Private to src/waypoint. */
#pragma once
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

struct bq_chunk {
    struct bq_chunk *next;
    size_t len, off;
    uint8_t data[];
};

struct bq {
    struct bq_chunk *head, *tail;
    size_t bytes;
    bool eof; /* the sender ended its side after these bytes */
};

/* Appends a copy of p[0..n). Returns 0 or -ENOMEM (q unchanged). */
static inline int bq_push(struct bq *q, const uint8_t *p, size_t n)
{
    struct bq_chunk *k = malloc(sizeof(*k) + n);
    if (!k) return -ENOMEM;
    k->next = NULL;
    k->len = n;
    k->off = 0;
    memcpy(k->data, p, n);
    if (q->tail)
        q->tail->next = k;
    else
        q->head = k;
    q->tail = k;
    q->bytes += n;
    return 0;
}

/* The first contiguous bytes at *p; returns their length (0: empty). */
static inline size_t bq_peek(const struct bq *q, const uint8_t **p)
{
    if (!q->head) return 0;
    *p = q->head->data + q->head->off;
    return q->head->len - q->head->off;
}

/* Drops n bytes from the front. */
static inline void bq_drop(struct bq *q, size_t n)
{
    q->bytes -= n;
    while (n && q->head) {
        struct bq_chunk *k = q->head;
        size_t take = k->len - k->off < n ? k->len - k->off : n;
        k->off += take;
        n -= take;
        if (k->off == k->len) {
            q->head = k->next;
            if (!q->head) q->tail = NULL;
            free(k);
        }
    }
}

/* Frees every byte (eof is kept). */
static inline void bq_free(struct bq *q)
{
    while (q->head) {
        struct bq_chunk *k = q->head;
        q->head = k->next;
        free(k);
    }
    q->tail = NULL;
    q->bytes = 0;
}
