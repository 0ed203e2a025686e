/*
 * argcheck.h - argument errors: "bad argument #n to 'f' (field: problem)",
 * the "did you mean" suggestion for unknown names, the one out-of-memory
 * error, and a C99 static assertion.
 */
#ifndef SENDX_ARGCHECK_H
#define SENDX_ARGCHECK_H

#include <lua.h>
#include <lauxlib.h>

/* The one out-of-memory error of the module; raises. */
#define MEMERR(L) luaL_error((L), "sendx: not enough memory")

/* A compile-time check for C99 (no _Static_assert): a negative array size
 * when cond is false. `name` says what must hold. */
#define SX_STATIC_ASSERT(cond, name) typedef char sx_static_assert_##name[(cond) ? 1 : -1]

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
