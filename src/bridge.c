/*
 * bridge.c - the OpenResty bridge: what src/sendx/resty.lua needs to send
 * requests over nginx cosockets with this module's validation, encoder,
 * delivery policy (policy.c: every retry decision, wait, kind and message)
 * and results. Handed to that file only (by sx_install_resty,
 * when the module is loaded inside nginx), never put in the module table.
 */
#include "client.h"
#include "results.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* bridge.default() -> the module's default client */
static int l_bridge_default(lua_State *L)
{
    lua_settop(L, 0);
    sx_push_default(L);
    sx_check_client_at(L, -1, 2);
    return 1;
}

/* Sets scheme, host and port of the URL base in the table on top; 0 when
 * libcurl cannot tell (out of memory: the URL was checked). [-0, +0] */
static int set_endpoint(lua_State *L, const char *base)
{
    CURLU *u = curl_url();
    char *host = NULL, *port = NULL, *scheme = NULL;
    int ok = u != NULL && curl_url_set(u, CURLUPART_URL, base, 0) == CURLUE_OK &&
             curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
             curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
             curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) == CURLUE_OK;
    if (ok) {
        lua_pushstring(L, scheme);
        lua_setfield(L, -2, "scheme");
        lua_pushstring(L, host);
        lua_setfield(L, -2, "host");
        lua_pushinteger(L, (lua_Integer)strtol(port, NULL, 10));
        lua_setfield(L, -2, "port");
    }
    curl_free(scheme);
    curl_free(host);
    curl_free(port);
    curl_url_cleanup(u);
    return ok;
}

/* bridge.target(client) -> table: where and how this client connects */
static int l_bridge_target(lua_State *L)
{
    sx_client *c = sx_check_client(L, 1);
    lua_createtable(L, 0, 14);
    if (!set_endpoint(L, c->base.data))
        return MEMERR(L);
    lua_pushlstring(L, c->base.data + c->path_off, c->base.len - c->path_off);
    lua_setfield(L, -2, "base_path");
    lua_pushlstring(L, c->auth.data, c->auth.len);
    lua_setfield(L, -2, "auth");
    if (c->custom_ua) { /* else sendx.resty names nginx, not libcurl */
        lua_pushlstring(L, c->ua.data, c->ua.len);
        lua_setfield(L, -2, "user_agent");
    }
    lua_pushinteger(L, c->timeout_ms);
    lua_setfield(L, -2, "timeout_ms");
    lua_pushinteger(L, c->connect_timeout_ms);
    lua_setfield(L, -2, "connect_timeout_ms");
    lua_pushinteger(L, (lua_Integer)SX_MAX_RESPONSE);
    lua_setfield(L, -2, "max_body");
    lua_pushboolean(L, c->has_ca_file);
    lua_setfield(L, -2, "ca_file");
    lua_pushboolean(L, c->has_proxy);
    lua_setfield(L, -2, "proxy");
    lua_pushinteger(L, c->aopts.max_queue);
    lua_setfield(L, -2, "max_queue");
    lua_pushinteger(L, c->aopts.max_in_flight);
    lua_setfield(L, -2, "max_in_flight");
    lua_pushinteger(L, (lua_Integer)c->aopts.max_bytes);
    lua_setfield(L, -2, "max_queue_bytes");
    lua_pushinteger(L, c->pool_size);
    lua_setfield(L, -2, "pool_size");
    lua_rawgeti(L, LUA_REGISTRYINDEX, c->log_ref); /* nil for LUA_NOREF */
    lua_setfield(L, -2, "log");
    lua_pushboolean(L, c->log_bodies);
    lua_setfield(L, -2, "log_bodies");
    lua_pushboolean(L, c->debug);
    lua_setfield(L, -2, "debug");
    return 1;
}

/* The path (and query) of the request URL built in c->url. */
static void push_path(lua_State *L, sx_client *c)
{
    lua_pushlstring(L, c->url.data + c->path_off, c->url.len - c->path_off);
}

/* bridge.identify(client, contact [, async]) -> path, body, idempotent */
static int l_bridge_identify(lua_State *L)
{
    sx_client *c = sx_check_client_at(L, 1, 2);
    int arg = lua_toboolean(L, 3) ? SX_ARG_IDENTIFY_ASYNC(1) : SX_ARG_IDENTIFY(1);
    int incr = sx_encode_identify(L, 2, arg, c->api, &c->body);
    sx_build_url(L, c, "identify", NULL, 0);
    push_path(L, c);
    lua_pushlstring(L, c->body.data, c->body.len);
    lua_pushboolean(L, !incr);
    sx_buf_shrink(&c->body);
    return 3;
}

/* bridge.track(client, email, changes [, async]) -> path, body */
static int l_bridge_track(lua_State *L)
{
    sx_client *c = sx_check_client_at(L, 1, 2);
    int async = lua_toboolean(L, 4);
    size_t elen;
    const char *email = sx_check_email(L, 2, async ? SX_ARG_TRACK_ASYNC(1) : SX_ARG_TRACK(1), &elen);
    sx_encode_track(L, 3, async ? SX_ARG_TRACK_ASYNC(2) : SX_ARG_TRACK(2),
                    c->api == SX_API_REST ? email : NULL, elen, &c->body);
    sx_build_url(L, c, "track", email, elen);
    push_path(L, c);
    lua_pushlstring(L, c->body.data, c->body.len);
    sx_buf_shrink(&c->body);
    return 2;
}

/* The kinds a transport's attempt can end with (sendx.http's words). */
static const char *const attempt_kinds[] = { "ok", "network", "timeout", "tls", "too_large", NULL };

/* Reads an attempt: kind at arg k, status at k + 1; not_sent at arg ns. */
static void check_attempt(lua_State *L, int k, int ns, sx_attempt *a)
{
    static const sx_kind kinds[] = { SX_OK, SX_NETWORK, SX_TIMEOUT, SX_TLS, SX_OK };
    int i = luaL_checkoption(L, k, NULL, attempt_kinds);
    memset(a, 0, sizeof *a);
    a->kind = kinds[i];
    a->too_large = i == 4;
    a->status = (long)luaL_optinteger(L, k + 1, 0);
    a->not_sent = lua_toboolean(L, ns);
    a->retry_after_ms = -1;
}

/* bridge.step(client, attempt, idempotent, kind, status, body, message,
 * not_sent, retry_after) -> seconds to wait before the next attempt; or
 * false, then the call's results when the policy says it is over. One C call
 * per attempt: the hot path of every request made inside nginx. */
static int l_bridge_step(lua_State *L)
{
    /* not check_client: a call in flight may outlive a close or configure */
    sx_client *c = luaL_checkudata(L, 1, CLIENT_MT);
    size_t len = 0;
    const char *ra = luaL_optlstring(L, 9, NULL, &len);
    sx_attempt a;
    sx_result r;
    long wait;
    check_attempt(L, 4, 8, &a);
    a.message = luaL_optstring(L, 7, NULL);
    if (ra != NULL)
        a.retry_after_ms = sx_retry_after_ms(ra, len);
    wait = sx_policy_next(&c->conn.policy, &a, (int)luaL_checkinteger(L, 2), lua_toboolean(L, 3),
                          &c->conn.rng, &r);
    if (wait >= 0) {
        lua_pushnumber(L, (lua_Number)wait / 1000.0);
        return 1;
    }
    lua_settop(L, 8); /* the message stays at 7: r.message may point into it */
    if (a.too_large) {
        lua_pushnil(L); /* a truncated body is of no use */
        lua_replace(L, 6);
    }
    lua_pushboolean(L, 0);
    return 1 + sx_push_result(L, 6, &r);
}

/* bridge.outcome(client, attempt, idempotent, kind, status, body, message,
 * not_sent) -> the call's results, as the policy judges its last attempt */
static int l_bridge_outcome(lua_State *L)
{
    sx_client *c = luaL_checkudata(L, 1, CLIENT_MT);
    sx_attempt a;
    sx_result r;
    unsigned rng = 1; /* the wait is not used */
    check_attempt(L, 4, 8, &a);
    a.message = luaL_optstring(L, 7, NULL);
    sx_policy_next(&c->conn.policy, &a, (int)luaL_checkinteger(L, 2), lua_toboolean(L, 3), &rng, &r);
    lua_settop(L, 8); /* the message stays at 7: r.message may point into it */
    if (a.too_large) {
        lua_pushnil(L); /* a truncated body is of no use */
        lua_replace(L, 6);
    }
    return sx_push_result(L, 6, &r);
}

/* bridge.shutdown(attempts) -> nil, message, info: a queued call cut short
 * by close or by nginx's exit */
static int l_bridge_shutdown(lua_State *L)
{
    sx_result r;
    memset(&r, 0, sizeof r);
    r.kind = SX_SHUTDOWN;
    r.attempts = (int)luaL_optinteger(L, 1, 0);
    r.message = SX_MSG_SHUTDOWN;
    lua_pushnil(L);
    return sx_push_result(L, lua_gettop(L), &r);
}

/* bridge.on_error(client) -> the client's on_error function, or nil */
static int l_bridge_on_error(lua_State *L)
{
    sx_client *c = luaL_checkudata(L, 1, CLIENT_MT);
    lua_rawgeti(L, LUA_REGISTRYINDEX, c->on_error_ref); /* nil for LUA_NOREF */
    return 1;
}

/* bridge.words: the limits and messages the Lua side must not spell itself.
 * [-0, +1] */
static void push_words(lua_State *L)
{
    lua_createtable(L, 0, 4);
    lua_pushliteral(L, SX_MSG_QUEUE_FULL);
    lua_setfield(L, -2, "queue_full");
    lua_pushliteral(L, SX_MSG_TOO_LARGE_FOR_QUEUE);
    lua_setfield(L, -2, "too_large_for_queue");
    lua_pushinteger(L, (lua_Integer)SX_MAX_RESPONSE);
    lua_setfield(L, -2, "max_body");
}

/* bridge.spooled(client) -> whether the client has a spool: then its async
 * calls go to the spool and the C worker (see resty.lua) */
static int l_bridge_spooled(lua_State *L)
{
    sx_client *c = sx_check_client_at(L, 1, 2);
    lua_pushboolean(L, c->spool_path.len > 0);
    return 1;
}

/* bridge.outstanding(client) -> calls of the client's not settled, and
 * completed calls whose callbacks have not run */
static int l_bridge_outstanding(lua_State *L)
{
    sx_client *c = sx_check_client_at(L, 1, 2);
    lua_pushinteger(L, c->async != NULL && sx_async_pid(c->async) == getpid()
                           ? (lua_Integer)sx_async_outstanding(c->async) : 0);
    return 1;
}

/* bridge.count(client, async, kind, attempts, ms): a finished call made
 * inside nginx, for the stats' sync counts, kinds and latency */
static int l_bridge_count(lua_State *L)
{
    static const char *const names[] = { "ok", "network", "timeout", "tls", "http", "api",
                                         "decode", "shutdown", "unknown_outcome", NULL };
    sx_client *c = luaL_checkudata(L, 1, CLIENT_MT);
    sx_kind kind = (sx_kind)luaL_checkoption(L, 3, NULL, names);
    sx_count_call(c, lua_toboolean(L, 2), kind, (int)luaL_optinteger(L, 4, 1),
                  (double)luaL_optnumber(L, 5, 0));
    return 0;
}

/* bridge.stats(client) -> the C side of client:stats() (sync counts, kinds,
 * latency); sendx.resty puts its queues' counts in */
static int l_bridge_stats(lua_State *L)
{
    sx_push_stats(L, luaL_checkudata(L, 1, CLIENT_MT));
    return 1;
}

static const luaL_Reg bridge_functions[] = {
    { "count", l_bridge_count },
    { "stats", l_bridge_stats },
    { "spooled", l_bridge_spooled },
    { "outstanding", l_bridge_outstanding },
    { "default", l_bridge_default },
    { "target", l_bridge_target },
    { "identify", l_bridge_identify },
    { "track", l_bridge_track },
    { "step", l_bridge_step },
    { "outcome", l_bridge_outcome },
    { "shutdown", l_bridge_shutdown },
    { "on_error", l_bridge_on_error },
    { NULL, NULL },
};

/* Pushes the bridge table, made once per Lua state (registry BRIDGE_KEY)
 * with the shared upvalues at uv1 and uv2. [-0, +1] */
static void push_bridge(lua_State *L, int uv1, int uv2)
{
    lua_getfield(L, LUA_REGISTRYINDEX, BRIDGE_KEY);
    if (!lua_isnil(L, -1))
        return;
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, uv1);
    lua_pushvalue(L, uv2);
    luaL_setfuncs(L, bridge_functions, 2);
    push_words(L);
    lua_setfield(L, -2, "words");
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, BRIDGE_KEY);
}

int sx_recorder(lua_State *L)
{
    int opts;
    lua_settop(L, 1);
    opts = 1;
    lua_getglobal(L, "require");
    lua_pushliteral(L, "sendx.recorder");
    if (lua_pcall(L, 1, 1, 0) != 0)
        return luaL_error(L, "sendx.recorder needs the module's Lua part, sendx/recorder.lua, "
                             "on package.path: %s", lua_tostring(L, -1));
    lua_getfield(L, LUA_REGISTRYINDEX, MODULE_KEY);
    push_bridge(L, lua_upvalueindex(1), lua_upvalueindex(2));
    lua_pushvalue(L, opts);
    lua_call(L, 3, 1);
    return 1;
}

/* Inside nginx (an `ngx` table with cosockets), hands the module table, the
 * client methods and the bridge to sendx.resty, which installs the
 * non-blocking calls. Expects the module table on top, upvalues below it. */
void sx_install_resty(lua_State *L)
{
    int module = lua_gettop(L), usable;
    lua_getglobal(L, "ngx");
    usable = lua_istable(L, -1);
    if (usable) {
        lua_getfield(L, -1, "socket");
        usable = lua_istable(L, -1);
        if (usable) {
            lua_getfield(L, -1, "tcp");
            usable = lua_isfunction(L, -1);
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    if (!usable)
        return;
    lua_getglobal(L, "require");
    lua_pushliteral(L, "sendx.resty");
    if (lua_pcall(L, 1, 1, 0) != 0)
        luaL_error(L, "sendx: inside nginx the module needs its Lua part, sendx/resty.lua, "
                      "on lua_package_path: %s", lua_tostring(L, -1));
    lua_pushvalue(L, module);
    luaL_getmetatable(L, CLIENT_MT);
    lua_getfield(L, -1, "__index");
    lua_replace(L, -2);
    push_bridge(L, module - 2, module - 1); /* the shared upvalues, below the module */
    lua_call(L, 3, 0);
}
