/*
 * host.c - a C program that embeds Lua 5.4 and links sendx in.
 *
 * Runs THREADS threads at once, each with a lua_State of its own, each
 * calling identify, track and identify_async CALLS times. The module is linked into the
 * program (no sendx.so) and made visible to `require` through
 * package.preload. Credentials and the base URL come from SENDX_API_KEY,
 * SENDX_TEAM_ID and SENDX_BASE_URL, as for any script:
 *
 *   make run EXAMPLE=examples/embed/host.c                  (against a local mock SendX)
 *   make run EXAMPLE=examples/embed/host.c ARGS="8 100"     (THREADS and CALLS: 4 25)
 *   SENDX_API_KEY=... SENDX_TEAM_ID=... make run EXAMPLE=examples/embed/host.c MOCK=no
 *                                                           (against SendX itself)
 *
 * (`make run` builds it as build/lua5.4/embed-host; `make embed`, as build/embed/host.)
 *
 * Prints one line per thread and exits with 0 when every call succeeded.
 */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The module's entry point, linked in from src/. */
int luaopen_sendx(lua_State *L);

/* What every thread runs: a client of its own, and the module's default one. */
static const char script[] =
    "local sendx = require 'sendx'\n"
    "local thread, calls = ...\n"
    "local client = sendx.new { api_key = os.getenv('SENDX_API_KEY'),\n"
    "  team_id = os.getenv('SENDX_TEAM_ID'), base_url = os.getenv('SENDX_BASE_URL') }\n"
    "for i = 1, calls do\n"
    "  local email = string.format('embed-%d-%d@example.com', thread, i)\n"
    "  local res, err = client:identify { email = email, customFields = { Thread = thread } }\n"
    "  if not res then error(err, 0) end\n"
    "  res, err = sendx.track(email, { addTags = { 'Embedded' } })\n"
    "  if not res then error(err, 0) end\n"
    "end\n"
    "-- and as many queued calls, sent by the client's background thread\n"
    "local delivered = 0\n"
    "for i = 1, calls do\n"
    "  assert(client:identify_async({ email = string.format('async-%d-%d@example.com', thread, i) },\n"
    "    function(res, err) if res then delivered = delivered + 1 else error(err, 0) end end))\n"
    "end\n"
    "local ok, why, errors = client:flush(30)\n"
    "if not ok or errors or delivered ~= calls then\n"
    "  error(string.format('async: %d of %d delivered (%s)', delivered, calls,\n"
    "    tostring(why or (errors and errors[1]))), 0)\n"
    "end\n"
    "client:close()\n"
    "return calls\n";

typedef struct job {
    pthread_t tid;
    int thread, calls;
    int ok;
    char message[512];
} job;

/* Makes `require "sendx"` find the linked-in module in this state. */
static void preload_sendx(lua_State *L)
{
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushcfunction(L, luaopen_sendx);
    lua_setfield(L, -2, "sendx");
    lua_pop(L, 1);
}

/* The error on top as text (an error value need not be a string). */
static const char *message(lua_State *L)
{
    const char *s = lua_tostring(L, -1);
    return s != NULL ? s : luaL_typename(L, -1);
}

static void *run(void *arg)
{
    job *j = arg;
    lua_State *L = luaL_newstate();
    if (L == NULL) {
        snprintf(j->message, sizeof j->message, "no memory for a Lua state");
        return NULL;
    }
    luaL_openlibs(L);
    preload_sendx(L);
    if (luaL_loadbuffer(L, script, sizeof script - 1, "=embed") != LUA_OK) {
        snprintf(j->message, sizeof j->message, "%s", message(L));
    } else {
        lua_pushinteger(L, j->thread);
        lua_pushinteger(L, j->calls);
        if (lua_pcall(L, 2, 1, 0) == LUA_OK) {
            j->ok = 1;
            int n = (int)lua_tointeger(L, -1);
            snprintf(j->message, sizeof j->message, "%d identify, %d track and %d async identify calls",
                     n, n, n);
        } else {
            snprintf(j->message, sizeof j->message, "%s", message(L));
        }
    }
    lua_close(L); /* closes the clients: their __gc runs on this thread */
    return NULL;
}

int main(int argc, char **argv)
{
    int threads = argc > 1 ? atoi(argv[1]) : 4, calls = argc > 2 ? atoi(argv[2]) : 25;
    int i, failed = 0;
    job *jobs;
    if (threads < 1 || threads > 64 || calls < 1) {
        fprintf(stderr, "usage: %s [THREADS (1-64) [CALLS]]\n", argv[0]);
        return 2;
    }
    if ((jobs = calloc((size_t)threads, sizeof *jobs)) == NULL)
        return 1;
    /* No set-up before the threads start: the module initialises libcurl
     * itself, once, whichever thread loads it first. */
    for (i = 0; i < threads; i++) {
        jobs[i].thread = i + 1;
        jobs[i].calls = calls;
        if (pthread_create(&jobs[i].tid, NULL, run, &jobs[i]) != 0) {
            fprintf(stderr, "pthread_create failed: running %d threads\n", i);
            threads = i;
            failed = 1;
            break;
        }
    }
    for (i = 0; i < threads; i++) {
        pthread_join(jobs[i].tid, NULL);
        printf("thread %d: %s: %s\n", jobs[i].thread, jobs[i].ok ? "ok" : "failed", jobs[i].message);
        failed += !jobs[i].ok;
    }
    free(jobs);
    return failed == 0 ? 0 : 1;
}
