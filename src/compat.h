/*
 * compat.h - one source for Lua 5.1, 5.2, 5.3, 5.4 and LuaJIT.
 *
 * The module is written against the 5.3/5.4 API; this header fills the gaps
 * of older versions. LuaJIT reports 5.1 but already exports several 5.2
 * auxiliary functions, so those shims are guarded with !LUAJIT_VERSION.
 */
#ifndef SENDX_COMPAT_H
#define SENDX_COMPAT_H

#include <lua.h>
#include <lauxlib.h>

#if LUA_VERSION_NUM < 502

#ifndef LUAJIT_VERSION
#define luaL_newlib(L, l) (lua_newtable(L), luaL_register(L, NULL, l))
void luaL_setfuncs(lua_State *L, const luaL_Reg *l, int nup);
void *luaL_testudata(lua_State *L, int idx, const char *tname);
void luaL_setmetatable(lua_State *L, const char *tname);
#endif

#define lua_rawlen(L, i) lua_objlen(L, (i))
#define luaL_len(L, i) ((lua_Integer)lua_objlen(L, (i)))

#endif /* < 5.2 */

#if LUA_VERSION_NUM < 503
#define SENDX_NO_INTEGERS 1
int lua_isinteger(lua_State *L, int idx);
#endif

#if LUA_VERSION_NUM >= 504
#define SENDX_HAVE_CLOSE 1
#endif

#endif
