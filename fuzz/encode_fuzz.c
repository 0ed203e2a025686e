/*
 * encode_fuzz.c - libFuzzer harness for the encoder. The bytes go to
 * fuzz/encode_check.lua, which builds Lua tables from them, calls
 * sendx.encode_identify / encode_track and checks the outcome (see there).
 * Built and run by `make fuzz`.
 */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int luaopen_sendx(lua_State *L);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static lua_State *L;
static int check_ref;

static void init(void)
{
    L = luaL_newstate();
    luaL_openlibs(L);
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushcfunction(L, luaopen_sendx);
    lua_setfield(L, -2, "sendx");
    lua_pop(L, 1);
    if (luaL_dofile(L, CHECKER) != LUA_OK) {
        fprintf(stderr, "encode_fuzz: %s\n", lua_tostring(L, -1));
        abort();
    }
    check_ref = luaL_ref(L, LUA_REGISTRYINDEX);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (L == NULL)
        init();
    lua_rawgeti(L, LUA_REGISTRYINDEX, check_ref);
    lua_pushlstring(L, (const char *)data, size);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
        fprintf(stderr, "encode_fuzz: %s\n", lua_tostring(L, -1));
        abort();
    }
    return 0;
}
