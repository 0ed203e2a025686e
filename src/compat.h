/*
 * compat.h - one source for Lua 5.1, 5.2, 5.3, 5.4 and LuaJIT.
 *
 * The module is written against the 5.3/5.4 API; this header fills the gaps
 * of older versions. LuaJIT reports 5.1 and gets the 5.1 shims, even those
 * of the 5.2 auxiliary functions it exports (see below).
 */
#ifndef SENDX_COMPAT_H
#define SENDX_COMPAT_H

#include <lua.h>
#include <lauxlib.h>

/* LUAJIT_VERSION lives in luajit.h, which lua.h does not include; LuaJIT 2.1's
 * lauxlib.h is recognised by the 5.2 macro it adds. */
#if LUA_VERSION_NUM == 501 && defined(luaL_newlibtable) && !defined(LUAJIT_VERSION)
#define LUAJIT_VERSION "LuaJIT"
#endif

#if LUA_VERSION_NUM < 502

/* Prefixed, so that the module never exports a symbol of Lua's own. Used on
 * LuaJIT too, which exports these: the LuaJIT build then needs only what PUC
 * Lua 5.1 exports, and one sendx.so in lib/lua/5.1 loads in both. */
#define luaL_setfuncs sx_luaL_setfuncs
#define luaL_testudata sx_luaL_testudata
#define luaL_setmetatable sx_luaL_setmetatable
void luaL_setfuncs(lua_State *L, const luaL_Reg *l, int nup);
void *luaL_testudata(lua_State *L, int idx, const char *tname);
void luaL_setmetatable(lua_State *L, const char *tname);

#define lua_rawlen(L, i) lua_objlen(L, (i))
#define luaL_len(L, i) ((lua_Integer)lua_objlen(L, (i)))
#define lua_absindex(L, i) \
    (((i) > 0 || (i) <= LUA_REGISTRYINDEX) ? (i) : lua_gettop(L) + (i) + 1)

#endif /* < 5.2 */

#if LUA_VERSION_NUM < 503
/* Numbers are doubles: an integral value within 2^53 counts as an integer. */
#define lua_isinteger sx_lua_isinteger
int lua_isinteger(lua_State *L, int idx);
#endif

#if LUA_VERSION_NUM >= 504
#define SENDX_HAVE_CLOSE 1
#endif

/* lua_pcall(L, nargs, 0, 0) of a user's function (callback, on_error, log)
 * that no finalizer cuts short before its first instruction (Lua 5.2/5.3
 * run a collector step as a function is entered). [-(nargs+1), +(0|1)] */
int sx_call_user(lua_State *L, int nargs);

#endif
