/*
 * sendx.c - the module's registration: luaopen_sendx, the client metatable,
 * and every Lua-visible function, each module function (on the default
 * client) beside its method, both calling one implementation.
 *
 * Where the rest lives: options.c (the options), client.c (the client, the
 * synchronous calls), client_async.c (asynchronous delivery), results.c
 * (results and errors), encode.c (the JSON bodies), bridge.c (OpenResty),
 * transport.c, async.c and policy.c (libcurl, the worker, the retry policy).
 */
#include "client.h"

#include <string.h>

#define BUFFER_MT "sendx.buffer"

static sx_buf *scratch(lua_State *L)
{
    return lua_touserdata(L, UV_SCRATCH);
}

/* ---------------------------------------------------------------------------
 * The two call mistakes: a colon on the module, a dot on a client
 * ------------------------------------------------------------------------ */


/* sendx:identify{...} passes the module as the first argument: say so, the
 * same way on every Lua (5.4 would say "bad self", 5.1 "bad argument #1").
 * Every module function starts with it. [-0, +0] */
static void not_the_module(lua_State *L, const char *fname)
{
    int method = strcmp(fname, "new") != 0 && strcmp(fname, "configure") != 0;
    int same;
    if (!lua_istable(L, 1))
        return;
    lua_getfield(L, LUA_REGISTRYINDEX, MODULE_KEY);
    same = lua_rawequal(L, 1, -1);
    lua_pop(L, 1);
    if (same)
        luaL_error(L, "sendx.%s: called with ':' on the module (use sendx.%s(...)%s%s%s)", fname,
                   fname, method ? ", or client:" : "", method ? fname : "",
                   method ? "(...) on a client from sendx.new" : "");
}

/* ---------------------------------------------------------------------------
 * Clients
 * ------------------------------------------------------------------------ */

/* sendx.new(options) -> client */
static int l_new(lua_State *L)
{
    not_the_module(L, "new");
    lua_settop(L, 1);
    sx_client_new(L, 1, 1, 0);
    return 1;
}

/* sendx.configure(options) -- the defaults of the module-level calls */
static int l_configure(lua_State *L)
{
    not_the_module(L, "configure");
    lua_settop(L, 1);
    sx_set_default(L, 1, 1);
    return 0;
}

/* client:close([timeout]) -> true | nil, "timeout" (and callback errors);
 * idempotent. Waits up to timeout (5 s) for queued calls, then releases. */
static int l_client_close(lua_State *L)
{
    sx_client *c = sx_to_client(L, 1, "close"); /* closed or not: close is idempotent */
    double timeout = luaL_optnumber(L, 2, 5.0);
    lua_settop(L, 1);
    return sx_close_client(L, c, timeout, 0);
}

/* __gc(client), __close(client): close with the default bound; callback
 * errors that no on_error takes are written to stderr, since nobody can
 * receive them. */
static int l_client_gc(lua_State *L)
{
    sx_client *c = luaL_checkudata(L, 1, CLIENT_MT);
    lua_settop(L, 1);
    /* a spool's calls are safe on disk: no reason to hold the exit */
    sx_close_client(L, c, c->spool_path.len > 0 ? 0.0 : 5.0, 1);
    return 0;
}

/* tostring(client) -> "sendx.client (legacy, team '...', key '...WXYZ')" */
static int l_client_tostring(lua_State *L)
{
    sx_client_describe(L, luaL_checkudata(L, 1, CLIENT_MT));
    return 1;
}

/* ---------------------------------------------------------------------------
 * identify, track
 * ------------------------------------------------------------------------ */

/* sendx.identify(contact) -> res | nil, message, info */
static int l_identify(lua_State *L)
{
    sx_client *c;
    not_the_module(L, "identify");
    lua_settop(L, 1);
    c = sx_default_client(L);
    return sx_do_identify(L, c, 1);
}

/* client:identify(contact) -> res | nil, message, info */
static int l_client_identify(lua_State *L)
{
    return sx_do_identify(L, sx_check_method(L, "identify"), 2);
}

/* sendx.track(email, changes) -> res | nil, message, info */
static int l_track(lua_State *L)
{
    sx_client *c;
    not_the_module(L, "track");
    lua_settop(L, 2);
    c = sx_default_client(L);
    return sx_do_track(L, c, 1);
}

/* client:track(email, changes) -> res | nil, message, info */
static int l_client_track(lua_State *L)
{
    return sx_do_track(L, sx_check_method(L, "track"), 2);
}

/* ---------------------------------------------------------------------------
 * encode_identify, encode_track: the body a call would send; no network
 * ------------------------------------------------------------------------ */

/* Pushes the identify body for `api` of the contact at slot idx. [-0, +1] */
static int encode_identify(lua_State *L, sx_api api, int idx)
{
    sx_buf *b = scratch(L);
    sx_encode_identify(L, idx, idx, api, b);
    lua_pushlstring(L, b->data, b->len);
    sx_buf_shrink(b);
    return 1;
}

/* Pushes the track body of the changes at slot idx; email_idx (0: none) is
 * the email, written into the body for `api` rest. [-0, +1] */
static int encode_track(lua_State *L, sx_api api, int email_idx, int idx)
{
    sx_buf *b = scratch(L);
    size_t elen = 0;
    const char *email = email_idx ? sx_check_email(L, email_idx, email_idx, &elen) : NULL;
    sx_encode_track(L, idx, idx, api == SX_API_REST ? email : NULL, elen, b);
    lua_pushlstring(L, b->data, b->len);
    sx_buf_shrink(b);
    return 1;
}

/* The api of the module's default client once configured; legacy before.
 * [-0, +0] */
static sx_api default_api(lua_State *L)
{
    sx_client *c;
    sx_api api;
    lua_getfield(L, LUA_REGISTRYINDEX, DEFAULT_KEY);
    c = luaL_testudata(L, -1, CLIENT_MT);
    api = c != NULL ? c->api : SX_API_LEGACY;
    lua_pop(L, 1);
    return api;
}

/* sendx.encode_identify(contact) -> the body sendx.identify would send */
static int l_encode_identify(lua_State *L)
{
    not_the_module(L, "encode_identify");
    return encode_identify(L, default_api(L), 1);
}

/* client:encode_identify(contact) -> the JSON body this client would send */
static int l_client_encode_identify(lua_State *L)
{
    return encode_identify(L, sx_check_method(L, "encode_identify")->api, 2);
}

/* sendx.encode_track(email, changes) -> the body sendx.track would send;
 * sendx.encode_track(changes), the older form (one table: no email, which
 * only the legacy api can do without) */
static int l_encode_track(lua_State *L)
{
    sx_api api;
    int older = lua_istable(L, 1) || (lua_gettop(L) <= 1 && lua_type(L, 1) != LUA_TSTRING);
    not_the_module(L, "encode_track");
    api = default_api(L);
    if (older) {
        if (api == SX_API_REST)
            return sx_argerror(L, 1, "email: required for api 'rest' "
                                     "(call sendx.encode_track(email, changes))");
        return encode_track(L, api, 0, 1);
    }
    return encode_track(L, api, 1, 2);
}

/* client:encode_track(email, changes) -> the JSON body this client would send */
static int l_client_encode_track(lua_State *L)
{
    return encode_track(L, sx_check_method(L, "encode_track")->api, 2, 3);
}

/* ---------------------------------------------------------------------------
 * Asynchronous delivery (client_async.c)
 * ------------------------------------------------------------------------ */

/* sendx.identify_async(contact [, callback]) -> true | nil, "queue full" */
static int l_identify_async(lua_State *L)
{
    sx_client *c;
    not_the_module(L, "identify_async");
    lua_settop(L, 2);
    c = sx_default_client(L);
    return sx_do_identify_async(L, c, 1);
}

/* client:identify_async(contact [, callback]) -> true | nil, "queue full" */
static int l_client_identify_async(lua_State *L)
{
    return sx_do_identify_async(L, sx_check_method(L, "identify_async"), 2);
}

/* sendx.track_async(email, changes [, callback]) -> true | nil, "queue full" */
static int l_track_async(lua_State *L)
{
    sx_client *c;
    not_the_module(L, "track_async");
    lua_settop(L, 3);
    c = sx_default_client(L);
    return sx_do_track_async(L, c, 1);
}

/* client:track_async(email, changes [, callback]) -> true | nil, "queue full" */
static int l_client_track_async(lua_State *L)
{
    return sx_do_track_async(L, sx_check_method(L, "track_async"), 2);
}

/* sendx.poll() -> count [, errors]; never blocks */
static int l_poll(lua_State *L)
{
    not_the_module(L, "poll");
    lua_settop(L, 0);
    return sx_poll_client(L, sx_default_client(L));
}

/* client:poll() -> count [, errors]; never blocks */
static int l_client_poll(lua_State *L)
{
    return sx_poll_client(L, sx_check_method(L, "poll"));
}

/* sendx.flush([timeout]) -> true | nil, "timeout" [, errors] */
static int l_flush(lua_State *L)
{
    double timeout;
    not_the_module(L, "flush");
    timeout = luaL_optnumber(L, 1, -1);
    lua_settop(L, 1);
    return sx_flush_call(L, sx_default_client(L), timeout);
}

/* client:flush([timeout]) -> true | nil, "timeout" [, errors] */
static int l_client_flush(lua_State *L)
{
    return sx_flush_call(L, sx_check_method(L, "flush"), luaL_optnumber(L, 2, -1));
}

/* sendx.stats() -> the default client's stats */
static int l_stats(lua_State *L)
{
    not_the_module(L, "stats");
    sx_push_stats(L, sx_default_client(L));
    return 1;
}

/* client:stats() -> { queued, in_flight, sent, failed, retried, dropped,
 * spooled, sync = {...}, kinds = {...}, latency = {...} } */
static int l_client_stats(lua_State *L)
{
    sx_push_stats(L, sx_check_method(L, "stats"));
    return 1;
}

/* client:fd() -> a descriptor that is readable while callbacks are ready */
static int l_client_fd(lua_State *L)
{
    lua_pushinteger(L, sx_client_fd(L, sx_check_method(L, "fd")));
    return 1;
}

/* ---------------------------------------------------------------------------
 * The durable spool: spool_stats, dead_letters, retry_dead, purge_dead
 * (module functions act on the default client; their arguments start at 2
 * either way, the default client taking slot 1)
 * ------------------------------------------------------------------------ */

/* The default client in slot 1, the arguments after it. */
static sx_client *default_in_slot1(lua_State *L, const char *fname)
{
    not_the_module(L, fname);
    sx_default_client(L);
    lua_insert(L, 1);
    return lua_touserdata(L, 1);
}

/* sendx.spool_stats() -> { pending, dead, bytes, oldest_age } */
static int l_spool_stats(lua_State *L)
{
    return sx_do_spool_stats(L, default_in_slot1(L, "spool_stats"));
}

/* client:spool_stats() -> { pending, dead, bytes, oldest_age } */
static int l_client_spool_stats(lua_State *L)
{
    return sx_do_spool_stats(L, sx_check_method(L, "spool_stats"));
}

/* sendx.dead_letters([limit]) -> { dead letter, ... } */
static int l_dead_letters(lua_State *L)
{
    return sx_do_dead_letters(L, default_in_slot1(L, "dead_letters"));
}

/* client:dead_letters([limit]) -> { dead letter, ... } */
static int l_client_dead_letters(lua_State *L)
{
    return sx_do_dead_letters(L, sx_check_method(L, "dead_letters"));
}

/* sendx.retry_dead([ids]) -> n */
static int l_retry_dead(lua_State *L)
{
    return sx_do_retry_dead(L, default_in_slot1(L, "retry_dead"));
}

/* client:retry_dead([ids]) -> n */
static int l_client_retry_dead(lua_State *L)
{
    return sx_do_retry_dead(L, sx_check_method(L, "retry_dead"));
}

/* sendx.purge_dead([ids]) -> n */
static int l_purge_dead(lua_State *L)
{
    return sx_do_purge_dead(L, default_in_slot1(L, "purge_dead"));
}

/* client:purge_dead([ids]) -> n */
static int l_client_purge_dead(lua_State *L)
{
    return sx_do_purge_dead(L, sx_check_method(L, "purge_dead"));
}

/* ---------------------------------------------------------------------------
 * Loading
 * ------------------------------------------------------------------------ */

static const luaL_Reg client_methods[] = {
    { "identify", l_client_identify },
    { "track", l_client_track },
    { "encode_identify", l_client_encode_identify },
    { "encode_track", l_client_encode_track },
    { "close", l_client_close },
    { "identify_async", l_client_identify_async },
    { "track_async", l_client_track_async },
    { "poll", l_client_poll },
    { "flush", l_client_flush },
    { "stats", l_client_stats },
    { "fd", l_client_fd },
    { "spool_stats", l_client_spool_stats },
    { "dead_letters", l_client_dead_letters },
    { "retry_dead", l_client_retry_dead },
    { "purge_dead", l_client_purge_dead },
    { NULL, NULL },
};

static const luaL_Reg module_functions[] = {
    { "new", l_new },
    { "configure", l_configure },
    { "identify", l_identify },
    { "track", l_track },
    { "encode_identify", l_encode_identify },
    { "encode_track", l_encode_track },
    { "identify_async", l_identify_async },
    { "track_async", l_track_async },
    { "poll", l_poll },
    { "flush", l_flush },
    { "spool_stats", l_spool_stats },
    { "dead_letters", l_dead_letters },
    { "retry_dead", l_retry_dead },
    { "purge_dead", l_purge_dead },
    { "recorder", sx_recorder },
    { "stats", l_stats },
    { NULL, NULL },
};

/* __gc(buffer): the scratch buffer's memory */
static int l_buffer_gc(lua_State *L)
{
    sx_buf_free(luaL_checkudata(L, 1, BUFFER_MT));
    return 0;
}

/* Pushes the two shared upvalues: the scratch buffer and cjson's decode.
 * [-0, +2] */
static void push_upvalues(lua_State *L)
{
    sx_buf *b = lua_newuserdata(L, sizeof *b);
    memset(b, 0, sizeof *b);
    if (luaL_newmetatable(L, BUFFER_MT)) {
        lua_pushcfunction(L, l_buffer_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    lua_getglobal(L, "require");
    lua_pushstring(L, "cjson");
    if (lua_pcall(L, 1, 1, 0) != 0)
        luaL_error(L, "sendx needs lua-cjson to decode responses: %s", lua_tostring(L, -1));
    lua_getfield(L, -1, "new"); /* a private instance: the user's cjson settings stay theirs */
    lua_call(L, 0, 1);
    lua_getfield(L, -1, "decode");
    lua_replace(L, -3);
    lua_pop(L, 1);
}

/* Registers "sendx.client"; expects the two upvalues on top. [-0, +0] */
static void create_metatable(lua_State *L)
{
    luaL_newmetatable(L, CLIENT_MT);
    lua_newtable(L);
    lua_pushvalue(L, -4); /* the shared upvalues, below the metatable */
    lua_pushvalue(L, -4);
    luaL_setfuncs(L, client_methods, 2);
    lua_setfield(L, -2, "__index");
    lua_pushvalue(L, -3); /* __gc runs callbacks: it needs the upvalues too */
    lua_pushvalue(L, -3);
    lua_pushcclosure(L, l_client_gc, 2);
#ifdef SENDX_HAVE_CLOSE
    lua_pushvalue(L, -1);
    lua_setfield(L, -3, "__close");
#endif
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, l_client_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushliteral(L, CLIENT_MT);
    lua_setfield(L, -2, "__name");
    lua_pop(L, 1);
}

/* The one symbol the module exports (the Makefile hides the others). */
#if defined(__GNUC__)
#define SENDX_EXPORT __attribute__((visibility("default")))
#else
#define SENDX_EXPORT
#endif

/* require "sendx" -> the module table */
SENDX_EXPORT int luaopen_sendx(lua_State *L);
SENDX_EXPORT int luaopen_sendx(lua_State *L)
{
    if (sx_transport_global_init() != 0)
        return luaL_error(L, "sendx: curl_global_init failed");
    sx_log_init(L);
    sx_spool_lua_init(L);
    push_upvalues(L);
    create_metatable(L);
    lua_newtable(L);
    lua_pushvalue(L, -3);
    lua_pushvalue(L, -3);
    luaL_setfuncs(L, module_functions, 2);
    lua_pushliteral(L, SENDX_VERSION);
    lua_setfield(L, -2, "version");
    lua_pushvalue(L, -1);
    lua_setfield(L, LUA_REGISTRYINDEX, MODULE_KEY);
    sx_install_resty(L);
    return 1;
}
