/* buffer.c - the growable buffer behind request bodies and responses. */
#include "buffer.h"

#include <stdlib.h>

int sx_buf_reserve(sx_buf *b, size_t extra)
{
    size_t need = b->len + extra, cap;
    char *p;
    if (need < b->len)
        return -1;
    if (need <= b->cap)
        return 0;
    cap = b->cap ? b->cap : 256;
    while (cap < need) {
        if (cap > ((size_t)-1) / 2)
            return -1;
        cap *= 2;
    }
    p = realloc(b->data, cap);
    if (p == NULL)
        return -1;
    b->data = p;
    b->cap = cap;
    return 0;
}

int sx_buf_cstr(sx_buf *b)
{
    if (sx_buf_reserve(b, 1) != 0)
        return -1;
    b->data[b->len] = '\0';
    return 0;
}

char *sx_memdup(const char *p, size_t n)
{
    char *q = malloc(n + 1);
    if (q != NULL) {
        if (n > 0)
            memcpy(q, p, n);
        q[n] = '\0';
    }
    return q;
}

void sx_buf_free(sx_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}
