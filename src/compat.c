/* compat.c - the shims declared in compat.h (most compiled only where needed), and
 * sx_call_user, which differs by version. */
#include "compat.h"

#include <math.h>

#if LUA_VERSION_NUM < 502
void luaL_setfuncs(lua_State *L, const luaL_Reg *l, int nup)
{
    int i;
    luaL_checkstack(L, nup + 1, "too many upvalues");
    for (; l->name != NULL; l++) {
        for (i = 0; i < nup; i++)
            lua_pushvalue(L, -nup);
        lua_pushcclosure(L, l->func, nup);
        lua_setfield(L, -(nup + 2), l->name);
    }
    lua_pop(L, nup);
}

void *luaL_testudata(lua_State *L, int idx, const char *tname)
{
    void *p = lua_touserdata(L, idx);
    int same;
    if (p == NULL || !lua_getmetatable(L, idx))
        return NULL;
    luaL_getmetatable(L, tname);
    same = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    return same ? p : NULL;
}

void luaL_setmetatable(lua_State *L, const char *tname)
{
    luaL_getmetatable(L, tname);
    lua_setmetatable(L, -2);
}
#endif

#if LUA_VERSION_NUM < 503
/* A number counts as an integer when it has no fractional part and fits. */
int lua_isinteger(lua_State *L, int idx)
{
    lua_Number n;
    if (lua_type(L, idx) != LUA_TNUMBER)
        return 0;
    n = lua_tonumber(L, idx);
    return n == floor(n) && n >= -9007199254740992.0 && n <= 9007199254740992.0;
}
#endif

#if LUA_VERSION_NUM == 502 || LUA_VERSION_NUM == 503
/* Called once before the callback, to make the CallInfo it will use. */
static int nothing(lua_State *L)
{
    (void)L;
    return 0;
}

/* enter_callback(restarted, callback, ...): calls the callback; the
 * collector, stopped by sx_call_user, starts again only once nothing is left
 * to allocate before the callback's first instruction. restarted: NULL when
 * the collector was stopped already, else an int set once it runs again. */
static int enter_callback(lua_State *L)
{
    int *restarted = lua_touserdata(L, 1);
    lua_remove(L, 1);
    /* the room the callback's frame takes (at most 255 registers), and its
     * CallInfo, made now: entering it then allocates nothing */
    luaL_checkstack(L, 260, "callback arguments");
    lua_pushcfunction(L, nothing);
    lua_call(L, 0, 0);
    if (restarted != NULL) {
        lua_gc(L, LUA_GCRESTART, 0); /* no debt: no step before the callback runs */
        *restarted = 1;
    }
    lua_call(L, lua_gettop(L) - 1, 0);
    return 0;
}
#endif

/* Calls the user's function (a callback, on_error, the log function) under
 * its nargs arguments on top, like lua_pcall(L, nargs, 0, 0). On Lua 5.2 and
 * 5.3 entering a function may run a collector step, and a finalizer that
 * raises there would be taken for the function's own error although it never
 * ran: the collector is stopped until the function is entered.
 * [-(nargs+1), +(0|1)] */
int sx_call_user(lua_State *L, int nargs)
{
#if LUA_VERSION_NUM == 502 || LUA_VERSION_NUM == 503
    int running = lua_gc(L, LUA_GCISRUNNING, 0), restarted = 0, rc;
    int func = lua_gettop(L) - nargs;
    if (running)
        lua_gc(L, LUA_GCSTOP, 0);
    if (!lua_checkstack(L, 2)) { /* out of memory: no step can run in between */
        if (running)
            lua_gc(L, LUA_GCRESTART, 0);
        return lua_pcall(L, nargs, 0, 0);
    }
    lua_pushcfunction(L, enter_callback);
    lua_insert(L, func);
    if (running)
        lua_pushlightuserdata(L, &restarted);
    else
        lua_pushnil(L);
    lua_insert(L, func + 1);
    rc = lua_pcall(L, nargs + 2, 0, 0);
    if (running && !restarted) /* cut before the callback (a C stack overflow) */
        lua_gc(L, LUA_GCRESTART, 0);
    /* else as the function left it: it may have stopped the collector */
    return rc;
#else
    return lua_pcall(L, nargs, 0, 0);
#endif
}
