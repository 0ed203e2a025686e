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

/* Raises "bad argument #arg to 'f' (<formatted message>)", or with arg 0
 * "sendx: <formatted message>". An `arg` made by SX_ARG_IDENTIFY, SX_ARG_TRACK (or their _ASYNC)
 * names the argument of that call whatever the Lua call frame says: the
 * OpenResty transport's Lua wrappers call the encoder through a bridge. */
#define SX_ARG_NAMED 0x100
#define SX_ARG_IDENTIFY(n) (0x100 | (n))
#define SX_ARG_TRACK(n) (0x200 | (n))
#define SX_ARG_IDENTIFY_ASYNC(n) (0x300 | (n))
#define SX_ARG_TRACK_ASYNC(n) (0x400 | (n))
int sx_argerror(lua_State *L, int arg, const char *fmt, ...);

/* Raises the "unknown field" error for `key`, suggesting the nearest of the
 * NULL-terminated `names`. */
int sx_unknown_field(lua_State *L, int arg, const char *prefix, const char *key,
                     const char *const *names);

#endif
