/*
 * client_log.c - the request log: one table per attempt handed to the log
 * option's function ({ op, url, status, kind, attempt, duration_ms,
 * bytes_out, bytes_in }, with request and response under log_bodies), and
 * under SENDX_DEBUG one line per attempt on stderr. The URL never holds the
 * key (it travels in a header); nothing here reads the key.
 */
#include "client.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int sx_log_level(const sx_client *c)
{
    if (c->log_ref == LUA_NOREF && !c->debug)
        return 0;
    return c->log_bodies && c->log_ref != LUA_NOREF ? 2 : 1;
}

/* "identify" or "track", from the URL's path. */
static const char *op_of(const char *url)
{
    return strstr(url, "/contact/track") != NULL ? "track" : "identify";
}

static void set_num(lua_State *L, const char *k, lua_Number v)
{
    lua_pushnumber(L, v);
    lua_setfield(L, -2, k);
}

/* Pushes the entry of rec; url and the request body are at slots u and b.
 * [-0, +1] */
static void push_entry(lua_State *L, sx_client *c, const sx_attempt_rec *rec, int u, int b)
{
    lua_createtable(L, 0, 10);
    lua_pushstring(L, op_of(lua_tostring(L, u)));
    lua_setfield(L, -2, "op");
    lua_pushvalue(L, u);
    lua_setfield(L, -2, "url");
    lua_pushinteger(L, rec->status);
    lua_setfield(L, -2, "status");
    lua_pushstring(L, sx_kind_name(rec->kind));
    lua_setfield(L, -2, "kind");
    lua_pushinteger(L, rec->attempt);
    lua_setfield(L, -2, "attempt");
    set_num(L, "duration_ms", rec->ms);
    lua_pushinteger(L, (lua_Integer)rec->bytes_out);
    lua_setfield(L, -2, "bytes_out");
    lua_pushinteger(L, (lua_Integer)rec->bytes_in);
    lua_setfield(L, -2, "bytes_in");
    if (c->log_bodies) {
        lua_pushvalue(L, b);
        lua_setfield(L, -2, "request");
        if (rec->response != NULL) {
            lua_pushlstring(L, rec->response, rec->response_len);
            lua_setfield(L, -2, "response");
        }
    }
}

static void debug_line(const char *url, const sx_attempt_rec *rec)
{
    fprintf(stderr, "sendx: %s %s attempt %d: %s, status %ld, %.1f ms, %lld B out, %lld B in\n",
            op_of(url), url, rec->attempt, sx_kind_name(rec->kind), rec->status, rec->ms,
            rec->bytes_out, rec->bytes_in);
}

/* One call's records on their way to the log; done counts the records
 * handed out, so that a retry after an error resumes where it stopped. */
typedef struct {
    sx_client *c;
    const char *url, *body;
    size_t len;
    const sx_attempt_rec *recs;
    int n, done, printed;
} log_batch;

#define LOG_STEP_KEY "sendx.log_step"

/* Hands out the batch's records from done on; run under lua_pcall, since
 * every push may raise (a finalizer's error, or out of memory). */
static int log_step(lua_State *L)
{
    log_batch *a = (log_batch *)lua_touserdata(L, 1);
    sx_client *c = a->c;
    int u, b;
    /* copies first: the log function may use this client (and its buffers) */
    lua_pushstring(L, a->url);
    u = lua_gettop(L);
    if (c->log_bodies)
        lua_pushlstring(L, a->body != NULL ? a->body : "", a->len);
    else
        lua_pushnil(L);
    b = lua_gettop(L);
    for (; a->done < a->n; a->done++) {
        if (c->debug && a->printed <= a->done) {
            debug_line(lua_tostring(L, u), &a->recs[a->done]);
            a->printed = a->done + 1;
        }
        if (c->log_ref != LUA_NOREF) {
            lua_rawgeti(L, LUA_REGISTRYINDEX, c->log_ref);
            push_entry(L, c, &a->recs[a->done], u, b);
            if (sx_call_user(L, 1) != 0) {
                fprintf(stderr, "sendx: log function error: %s\n",
                        lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : luaL_typename(L, -1));
                lua_pop(L, 1);
            }
        }
    }
    return 0;
}

void sx_log_init(lua_State *L)
{
    lua_pushcfunction(L, log_step);
    lua_setfield(L, LUA_REGISTRYINDEX, LOG_STEP_KEY);
}

void sx_log_call(lua_State *L, sx_client *c, const char *url, const char *body, size_t len,
                 sx_attempt_rec *recs, int n)
{
    log_batch a;
    int top = lua_gettop(L), tries, i;
    /* copies: url and body may be the client's buffers, which the log
     * function may reuse or free (by a call, or close) before a retry */
    char *u = sx_memdup(url, strlen(url)), *b = c->log_bodies ? sx_memdup(body, len) : NULL;
    a.c = c;
    a.url = u;
    a.body = b;
    a.len = len;
    a.recs = recs;
    a.n = u != NULL && (b != NULL || !c->log_bodies) ? n : 0;
    a.done = a.printed = 0;
    /* never raises: the call's results are pushed already, and an async
     * call's callback is still to run; a finalizer's error is retried */
    for (tries = 0; a.done < a.n && tries < 8; tries++) {
        lua_getfield(L, LUA_REGISTRYINDEX, LOG_STEP_KEY);
        lua_pushlightuserdata(L, &a);
        if (lua_pcall(L, 1, 0, 0) != 0 && a.done < a.n && tries == 7)
            fprintf(stderr, "sendx: %d request log entries lost: %s\n", a.n - a.done,
                    lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : luaL_typename(L, -1));
        lua_settop(L, top);
    }
    if (a.n < n)
        fprintf(stderr, "sendx: %d request log entries lost: out of memory\n", n);
    for (i = 0; i < n; i++)
        free(recs[i].response);
    free(u);
    free(b);
    lua_settop(L, top);
}
