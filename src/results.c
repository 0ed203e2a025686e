/*
 * results.c - the shape of a call's results: a transport's sx_result and the
 * raw body become the decoded response, or nil, message, info (kind, status,
 * body, response, retryable, attempts). Shared by the synchronous calls, the
 * async callbacks and the OpenResty bridge, so that all answer alike.
 */
#include "results.h"
#include "client.h"

#include <stdio.h>
#include <string.h>

/* 1 when the error on top is lua-cjson's verdict on the text ("Expected
 * value but found invalid token at character 1", "Found too many nested data
 * structures ..."), not an error that a finalizer raised meanwhile. */
static int is_cjson_error(lua_State *L)
{
    const char *e = lua_tostring(L, -1);
    return e != NULL && (strncmp(e, "Expected ", 9) == 0 || strncmp(e, "Found ", 6) == 0 ||
                         strstr(e, "UTF-16") != NULL);
}

/* Decodes the body string (or nil) at `body` with lua-cjson and pushes the
 * value; returns 0 when it is not JSON, with cjson's message pushed instead.
 * A finalizer that raises during the decode (Lua 5.1-5.3 raise at the
 * allocation that runs it) must not pass for bad JSON: the decode is tried
 * again. [-0, +1] */
static int decode_body(lua_State *L, int body)
{
    int i;
    for (i = 0;; i++) {
        lua_pushvalue(L, UV_DECODE);
        lua_pushvalue(L, body);
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            lua_pushliteral(L, "");
        }
        if (lua_pcall(L, 1, 1, 0) == 0)
            return 1;
        if (is_cjson_error(L))
            return 0;
        if (i == 8)
            lua_error(L); /* not about the text, again and again: out of memory */
        lua_pop(L, 1);
    }
}

/* 1 when the JSON text at idx is an object (its first non-blank byte is '{').
 * [-0, +0] */
static int is_object(lua_State *L, int idx)
{
    size_t len, i = 0;
    const char *s = lua_tolstring(L, idx, &len);
    while (i < len && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r' || s[i] == '\n'))
        i++;
    return i < len && s[i] == '{';
}

/* The server's own words from the decoded body at idx, or NULL; the string
 * stays referenced by the table. [-0, +0] */
static const char *server_message(lua_State *L, int idx)
{
    static const char *const keys[] = { "message", "error" };
    int i;
    if (!lua_istable(L, idx))
        return NULL;
    for (i = 0; i < 2; i++) {
        lua_getfield(L, idx, keys[i]);
        if (lua_type(L, -1) == LUA_TSTRING) {
            const char *s = lua_tostring(L, -1);
            lua_pop(L, 1); /* still referenced by the table */
            return s;
        }
        lua_pop(L, 1);
    }
    return NULL;
}

/* 1 when the decoded body (a table) at idx has status "200" or 200. [-0, +0] */
static int status_is_200(lua_State *L, int idx)
{
    int ok;
    lua_getfield(L, idx, "status");
    ok = (lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), "200") == 0) ||
         (lua_type(L, -1) == LUA_TNUMBER && lua_tonumber(L, -1) == 200);
    lua_pop(L, 1);
    return ok;
}

/* Pushes nil, message, info. `body` is the raw body's slot, `response` the
 * decoded response's (0: none). [-0, +3] */
static int push_failure(lua_State *L, const sx_result *r, sx_kind kind, const char *detail,
                        int body, int response)
{
    lua_pushnil(L);
    if (kind == SX_HTTP)
        lua_pushfstring(L, "sendx: HTTP %d%s%s", (int)r->status, detail ? ": " : "",
                        detail ? detail : "");
    else
        lua_pushfstring(L, "sendx: %s error: %s", sx_kind_name(kind), detail ? detail : "unknown");
    if (r->attempts > 1) {
        lua_pushfstring(L, " (after %d attempts)", r->attempts);
        lua_concat(L, 2);
    }
    lua_createtable(L, 0, 7);
    lua_pushstring(L, sx_kind_name(kind));
    lua_setfield(L, -2, "kind");
    if (r->status > 0) {
        lua_pushinteger(L, (lua_Integer)r->status);
        lua_setfield(L, -2, "status");
    }
    lua_pushvalue(L, body);
    lua_setfield(L, -2, "body");
    if (response != 0) {
        lua_pushvalue(L, response);
        lua_setfield(L, -2, "response");
    }
    lua_pushboolean(L, r->retryable);
    lua_setfield(L, -2, "retryable");
    lua_pushinteger(L, r->attempts);
    lua_setfield(L, -2, "attempts");
    return 3;
}

/* A response came (kind SX_OK or SX_HTTP, body within the cap): decode it
 * and judge it. Pushes scratch values, then the results. [-0, +(n+k)] */
static int judge_response(lua_State *L, int body, const sx_result *r)
{
    int http = r->kind == SX_HTTP, response;
    if (!decode_body(L, body)) {
        lua_pushfstring(L, "response is not JSON (%s)", lua_tostring(L, -1));
        return push_failure(L, r, http ? SX_HTTP : SX_DECODE, http ? NULL : lua_tostring(L, -1),
                            body, 0);
    }
    response = lua_gettop(L);
    if (!is_object(L, body)) { /* cjson decodes [] and {} alike: look at the text */
        if (http)
            return push_failure(L, r, SX_HTTP, NULL, body, response);
        lua_pushfstring(L, "response is JSON but not an object (%s)", luaL_typename(L, response));
        return push_failure(L, r, SX_DECODE, lua_tostring(L, -1), body, 0);
    }
    if (http)
        return push_failure(L, r, SX_HTTP, server_message(L, response), body, response);
    if (!status_is_200(L, response))
        return push_failure(L, r, SX_API, server_message(L, response), body, response);
    return 1;
}

/* Moves the top n values down to slot top + 1 and drops what lay between.
 * Returns n. */
static int keep_top(lua_State *L, int top, int n)
{
    int i, from = lua_gettop(L) - n;
    for (i = 1; i <= n && from > top; i++) {
        lua_pushvalue(L, from + i);
        lua_replace(L, top + i);
    }
    lua_settop(L, top + n);
    return n;
}

/* The message is copied before any allocation: a finalizer run by one may
 * reuse the client that r->message points into. */
int sx_push_result(lua_State *L, int body, const sx_result *r)
{
    int top = lua_gettop(L), n;
    char message[SX_MESSAGE_MAX];
    const char *detail = NULL;
    if (r->message != NULL) {
        snprintf(message, sizeof message, "%s", r->message);
        detail = message;
    }
    body = lua_absindex(L, body);
    if (r->kind != SX_OK && r->kind != SX_HTTP)
        n = push_failure(L, r, r->kind, detail, body, 0);
    else if (r->too_large) /* "sendx: HTTP 200: response body larger than 1 MiB" */
        n = push_failure(L, r, SX_HTTP, detail, body, 0);
    else
        n = judge_response(L, body, r);
    return keep_top(L, top, n);
}
