/* buffer.h - a growable byte buffer (request bodies, URLs, responses). */
#ifndef SENDX_BUFFER_H
#define SENDX_BUFFER_H

#include <stddef.h>
#include <string.h>

typedef struct sx_buf {
    char *data;
    size_t len;
    size_t cap;
} sx_buf;

/* All return 0 on success and -1 when memory could not be had. */
int sx_buf_reserve(sx_buf *b, size_t extra);
/* NUL-terminates without counting the terminator in len. */
int sx_buf_cstr(sx_buf *b);
void sx_buf_free(sx_buf *b);

/* A malloc'ed copy of the n bytes at p, NUL-terminated (p may be NULL when
 * n is 0); NULL when memory could not be had. */
char *sx_memdup(const char *p, size_t n);

static inline void sx_buf_reset(sx_buf *b) { b->len = 0; }

/* Lets go of a buffer that grew past what everyday calls need, so that one
 * large call does not pin its memory for the client's life. */
#define SX_BUF_KEEP ((size_t)64 * 1024)
static inline void sx_buf_shrink(sx_buf *b)
{
    if (b->cap > SX_BUF_KEEP)
        sx_buf_free(b);
}

static inline int sx_buf_addc(sx_buf *b, char c)
{
    if (b->len == b->cap && sx_buf_reserve(b, 1) != 0)
        return -1;
    b->data[b->len++] = c;
    return 0;
}

/* Inline: the encoder appends many short pieces. */
static inline int sx_buf_add(sx_buf *b, const char *s, size_t n)
{
    if (b->cap - b->len < n && sx_buf_reserve(b, n) != 0)
        return -1;
    if (n > 0)
        memcpy(b->data + b->len, s, n);
    b->len += n;
    return 0;
}

static inline int sx_buf_adds(sx_buf *b, const char *s)
{
    return sx_buf_add(b, s, strlen(s));
}

#endif
