/* A growable array of fixed-size elements, for temporary lists built while parsing (the LocalConfig walker,
 * the manifest store). Elements are zeroed when pushed; pointers into the array are invalidated by the next
 * push. */
#pragma once
#include <stdlib.h>
#include <string.h>

struct vec {
    char *p;
    size_t n, cap, esz;
};
#define VEC(type) ((struct vec){.esz = sizeof(type)})

/* Appends one zeroed element and returns it (owned by v), or NULL on allocation failure (v unchanged). */
static inline void *vec_push(struct vec *v)
{
    if (v->n == v->cap) {
        size_t ncap = v->cap ? v->cap * 2 : 8;
        char *np = realloc(v->p, ncap * v->esz);
        if (!np) return NULL;
        v->p = np;
        v->cap = ncap;
    }
    void *e = v->p + v->n * v->esz;
    memset(e, 0, v->esz);
    v->n++;
    return e;
}

/* Frees the elements; v is empty and reusable afterwards. */
static inline void vec_free(struct vec *v)
{
    free(v->p);
    v->p = NULL;
    v->n = v->cap = 0;
}
