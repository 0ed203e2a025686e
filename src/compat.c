/* compat.c - the shims declared in compat.h, compiled only where needed. */
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
