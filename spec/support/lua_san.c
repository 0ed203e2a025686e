/*
 * lua_san.c - a Lua 5.4 interpreter built with the sanitizers, for
 * `make test-asan`: the sanitizer runtime lives in the executable, so the
 * suite needs no LD_PRELOAD (which every child process would inherit).
 *
 *   lua_san SCRIPT [ARGS...]     (runs SCRIPT with `arg` set as lua does)
 *   lua_san -e CODE
 *
 * Like lua.c, a SIGINT while the chunk runs raises "interrupted!" in it
 * (bin/sendx's Ctrl-C handling relies on that).
 */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

static lua_State *running; /* the state a SIGINT interrupts */

static void stop(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    lua_sethook(L, NULL, 0, 0);
    luaL_error(L, "interrupted!");
}

/* As lua.c's laction: the next instruction runs stop(). */
static void on_sigint(int sig)
{
    signal(sig, SIG_DFL); /* a second one ends the process */
    lua_sethook(running, stop, LUA_MASKCALL | LUA_MASKRET | LUA_MASKLINE | LUA_MASKCOUNT, 1);
}

static int traceback(lua_State *L)
{
    luaL_traceback(L, L, lua_tostring(L, 1), 1);
    return 1;
}

int main(int argc, char **argv)
{
    lua_State *L;
    int i, status;
    if (argc < 2) {
        fprintf(stderr, "usage: %s SCRIPT [ARGS...]\n", argv[0]);
        return 2;
    }
    L = luaL_newstate();
    luaL_openlibs(L);
    lua_createtable(L, argc, 1);
    for (i = 0; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i - 1); /* arg[0] is the script, arg[-1] this program */
    }
    lua_setglobal(L, "arg");
    lua_pushcfunction(L, traceback);
    running = L;
    signal(SIGINT, on_sigint);
    if (strcmp(argv[1], "-e") == 0) { /* lua -e CODE, as some specs run it */
        status = argc > 2 ? luaL_loadstring(L, argv[2]) : LUA_ERRSYNTAX;
        if (status == LUA_OK)
            status = lua_pcall(L, 0, 0, 1);
    } else {
        status = luaL_loadfile(L, argv[1]);
        if (status == LUA_OK) {
            for (i = 2; i < argc; i++)
                lua_pushstring(L, argv[i]);
            status = lua_pcall(L, argc - 2, 0, 1);
        }
    }
    signal(SIGINT, SIG_DFL);
    if (status != LUA_OK)
        fprintf(stderr, "%s: %s\n", argv[0], lua_tostring(L, -1));
    lua_close(L);
    return status == LUA_OK ? 0 : 1;
}
