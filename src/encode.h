/*
 * encode.h - the schema encoder: Lua tables -> request JSON.
 *
 * Every function validates while it encodes and raises a Lua error naming
 * the offending field (as argument `arg` of the running C function). The
 * buffer must be owned by something the garbage collector frees, because an
 * error can be raised half way through.
 */
#ifndef SENDX_ENCODE_H
#define SENDX_ENCODE_H

#include <lua.h>
#include "argcheck.h" /* the SX_ARG_* values of `arg` */
#include "buffer.h"

typedef enum sx_api { SX_API_LEGACY = 0, SX_API_REST = 1 } sx_api;

/* Encodes the contact table at `idx` into `b` (reset first).
 * Returns 1 when customFields hold "++N"/"--N" increments (not idempotent). */
int sx_encode_identify(lua_State *L, int idx, int arg, sx_api api, sx_buf *b);

/* Encodes the changes table at `idx` into `b` (reset first). A non-NULL
 * `email` is written into the body, as REST v1 wants it. */
void sx_encode_track(lua_State *L, int idx, int arg, const char *email,
                     size_t email_len, sx_buf *b);

/* Checks the value at `idx` (argument `arg`) as a contact e-mail that will
 * travel in a URL or header: a non-empty string, valid UTF-8, no CR, LF or NUL. */
const char *sx_check_email(lua_State *L, int idx, int arg, size_t *len);

/* 1 when s[0..len) is valid UTF-8. */
int sx_utf8_valid(const char *s, size_t len);

#endif
