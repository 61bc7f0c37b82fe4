/* Intrusive doubly linked lists: the element embeds its links, so adding and removing never allocate.
 *
 * LIST_*: a stack headed by one pointer (new elements first), links named prev/next — the live connections
 * a worker walks. QUEUE_*: a FIFO with head and tail, appended at the tail and unlinked anywhere, with the
 * link fields named by the caller so one element can sit on several queues — oldest-first lists (requests
 * waiting for delivery, handshakes in progress, connections of an admin port). */
#pragma once

#define LIST_PUSH(head, x)                                                                                   \
    do {                                                                                                     \
        (x)->prev = NULL;                                                                                    \
        (x)->next = (head);                                                                                  \
        if (head) (head)->prev = (x);                                                                        \
        (head) = (x);                                                                                        \
    } while (0)
#define LIST_DEL(head, x)                                                                                    \
    do {                                                                                                     \
        if ((x)->prev)                                                                                       \
            (x)->prev->next = (x)->next;                                                                     \
        else                                                                                                 \
            (head) = (x)->next;                                                                              \
        if ((x)->next) (x)->next->prev = (x)->prev;                                                          \
    } while (0)

/* Appends x at the tail of (head, tail), through x's link fields prv and nxt. */
#define QUEUE_APPEND(head, tail, x, prv, nxt)                                                                \
    do {                                                                                                     \
        (x)->prv = (tail);                                                                                   \
        (x)->nxt = NULL;                                                                                     \
        if (tail)                                                                                            \
            (tail)->nxt = (x);                                                                               \
        else                                                                                                 \
            (head) = (x);                                                                                    \
        (tail) = (x);                                                                                        \
    } while (0)
/* Unlinks x, which must be on (head, tail), and clears its links. */
#define QUEUE_DEL(head, tail, x, prv, nxt)                                                                   \
    do {                                                                                                     \
        if ((x)->prv)                                                                                        \
            (x)->prv->nxt = (x)->nxt;                                                                        \
        else                                                                                                 \
            (head) = (x)->nxt;                                                                               \
        if ((x)->nxt)                                                                                        \
            (x)->nxt->prv = (x)->prv;                                                                        \
        else                                                                                                 \
            (tail) = (x)->prv;                                                                               \
        (x)->prv = (x)->nxt = NULL;                                                                          \
    } while (0)
