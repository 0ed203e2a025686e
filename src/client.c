/*
 * client.c - the client object: creation from options, release, the
 * module's default client, tostring, the request URL, and the synchronous
 * calls (identify and track over the client's libcurl handle).
 */
#include "client.h"
#include "options.h"
#include "results.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define LEGACY_BASE "https://app.sendx.io/api/v1"
#define REST_BASE "https://api.sendx.io/api/v1/rest"

/* ---------------------------------------------------------------------------
 * Lifecycle
 * ------------------------------------------------------------------------ */

/* The client at idx; client.identify{...} (a dot for a colon) passes the
 * contact as the client: the error says how to call a method. */
sx_client *sx_to_client(lua_State *L, int idx, const char *method)
{
    lua_Debug ar;
    sx_client *c = luaL_testudata(L, idx, CLIENT_MT);
    if (c != NULL)
        return c;
    if (method == NULL) /* from the debug info, which a tail call or a pcall lacks */
        method = lua_getstack(L, 0, &ar) && lua_getinfo(L, "n", &ar) && ar.name != NULL
                     ? ar.name : "identify";
    luaL_argerror(L, idx, lua_pushfstring(L, "sendx.client expected, got %s (use client:%s(...))",
                                          luaL_typename(L, idx), method));
    return luaL_checkudata(L, idx, CLIENT_MT); /* not reached: argerror raised */
}

/* Raise (at level) unless c is open and complete. */
static void check_open(lua_State *L, const sx_client *c, int level)
{
    const char *why = c->missing != NULL ? c->missing : !c->open ? "sendx: client is closed" : NULL;
    if (why != NULL) {
        luaL_where(L, level);
        lua_pushstring(L, why);
        lua_concat(L, 2);
        lua_error(L);
    }
}

sx_client *sx_check_client_at(lua_State *L, int idx, int level)
{
    sx_client *c = sx_to_client(L, idx, NULL);
    check_open(L, c, level);
    return c;
}

sx_client *sx_check_method(lua_State *L, const char *method)
{
    sx_client *c = sx_to_client(L, 1, method);
    check_open(L, c, 1);
    return c;
}

sx_client *sx_check_client(lua_State *L, int idx)
{
    return sx_check_client_at(L, idx, 1);
}

void sx_client_release(lua_State *L, sx_client *c)
{
    sx_drop_async(L, c);
    sx_close_spool(L, c); /* after the worker: its claims went back first */
    while (c->limbo != NULL && c->running == 0) { /* else the active run_done frees them */
        sx_job *j = c->limbo;
        c->limbo = j->next;
        luaL_unref(L, LUA_REGISTRYINDEX, j->ref);
        sx_job_free(j);
    }
    luaL_unref(L, LUA_REGISTRYINDEX, c->on_error_ref);
    c->on_error_ref = LUA_NOREF;
    luaL_unref(L, LUA_REGISTRYINDEX, c->log_ref);
    c->log_ref = LUA_NOREF;
    if (c->open && c->conn.pid != getpid())
        c->conn.curl = NULL; /* the parent's connections: left alone, never shut down */
    if (c->open)
        sx_conn_close(&c->conn);
    c->open = 0;
    c->missing = NULL;
    sx_buf_free(&c->base);
    sx_buf_free(&c->team);
    sx_buf_free(&c->url);
    sx_buf_free(&c->body);
    if (c->auth.data != NULL)
        memset(c->auth.data, 0, c->auth.cap); /* no copy of the key left in freed memory */
    sx_buf_free(&c->auth);
    sx_buf_free(&c->ua);
}

static void set_key_tail(sx_client *c, const char *key)
{
    size_t len = strlen(key);
    if (len >= 12)
        snprintf(c->key_tail, sizeof c->key_tail, "...%s", key + len - 4);
    else
        snprintf(c->key_tail, sizeof c->key_tail, "****");
}

static void copy_cstr(lua_State *L, sx_buf *b, const char *s, size_t len)
{
    sx_buf_reset(b);
    if (sx_buf_add(b, s, len) != 0 || sx_buf_cstr(b) != 0)
        MEMERR(L);
}

/* The strings c keeps: base URL (and where its path starts), team, auth
 * header line, User-Agent. */
static void client_strings(lua_State *L, sx_client *c, const sx_config *o)
{
    char ua[160];
    size_t blen;
    const char *authority;
    const char *base = o->base_url ? o->base_url : (o->api == SX_API_REST ? REST_BASE : LEGACY_BASE);
    for (blen = strlen(base); blen > 0 && base[blen - 1] == '/'; blen--)
        ;
    copy_cstr(L, &c->base, base, blen);
    authority = strstr(c->base.data, "://") + 3; /* sx_read_config made sure */
    c->path_off = (size_t)(authority - c->base.data) + strcspn(authority, "/");
    copy_cstr(L, &c->team, o->team_id ? o->team_id : "", o->team_id ? strlen(o->team_id) : 0);
    snprintf(ua, sizeof ua, "sendx/%s (%s; libcurl/%s)", SENDX_VERSION, LUA_VERSION,
             curl_version_info(CURLVERSION_NOW)->version);
    if (sx_buf_adds(&c->auth, o->api == SX_API_REST ? "X-Team-ApiKey: " : "api_key: ") != 0 ||
        sx_buf_adds(&c->auth, o->api_key) != 0 || sx_buf_cstr(&c->auth) != 0)
        MEMERR(L);
    copy_cstr(L, &c->ua, o->user_agent ? o->user_agent : ua,
              strlen(o->user_agent ? o->user_agent : ua));
    c->custom_ua = o->user_agent != NULL;
}

/* Inside nginx's init phase (the master, before it forks the workers). */
static int in_nginx_master(lua_State *L)
{
    int init = 0;
    lua_getglobal(L, "ngx");
    if (lua_istable(L, -1)) {
        lua_getfield(L, -1, "get_phase");
        if (lua_isfunction(L, -1) && lua_pcall(L, 0, 1, 0) == 0)
            init = lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), "init") == 0;
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return init;
}

/* Opens the libcurl side of c from checked options. */
static void client_open(lua_State *L, sx_client *c, const sx_config *o)
{
    sx_conn_opts co;
    const char *debug;
    client_strings(L, c, o);
    co.auth_header = c->auth.data;
    co.user_agent = c->ua.data;
    co.ca_file = o->ca_file;
    co.proxy = o->proxy;
    co.no_env_proxy = o->plain_http; /* see check_config in options.c */
    co.timeout_ms = o->timeout_ms;
    co.connect_timeout_ms = o->connect_timeout_ms;
    co.max_retry_wait_ms = o->max_retry_wait_ms;
    co.retries = (int)o->retries;
    if (sx_conn_open(&c->conn, &co) != 0)
        luaL_error(L, "sendx: libcurl could not be initialised");
    c->open = 1;
    c->api = o->api;
    c->timeout_ms = o->timeout_ms;
    c->connect_timeout_ms = o->connect_timeout_ms;
    c->pool_size = o->pool_size;
    c->has_ca_file = o->ca_file != NULL;
    c->has_proxy = o->proxy != NULL;
    c->aopts.max_in_flight = (int)o->max_in_flight;
    c->aopts.max_queue = o->max_queue;
    c->aopts.max_bytes = (size_t)o->max_queue_bytes;
    c->aopts.retries = (int)o->retries;
    c->aopts.max_retry_wait_ms = o->max_retry_wait_ms;
    c->log_bodies = o->log_bodies;
    debug = getenv("SENDX_DEBUG");
    c->debug = debug != NULL && debug[0] != '\0' && strcmp(debug, "0") != 0;
    c->conn.logging = sx_log_level(c);
    c->aopts.logging = c->conn.logging;
    set_key_tail(c, o->api_key);
    if (o->spool != NULL) { /* what earlier processes left starts now */
        sx_open_spool(L, c, o->spool, o);
        if (o->spool_deliver && !in_nginx_master(L)) /* nginx's workers start theirs (fork) */
            sx_ensure_async(L, c);
    }
}

/* Which credential is missing ("api_key", "team_id"), or NULL. */
static const char *missing_credential(const sx_config *o)
{
    if (o->api_key == NULL)
        return "api_key";
    if (o->team_id == NULL && o->api == SX_API_LEGACY)
        return "team_id";
    return NULL;
}

sx_client *sx_client_new(lua_State *L, int idx, int arg, int lazy)
{
    sx_config o;
    const char *missing;
    sx_client *c;
    sx_read_config(L, idx, arg, lazy, &o);
    missing = missing_credential(&o);
    if (missing != NULL && !lazy) {
        const char *var = missing[0] == 'a' ? "SENDX_API_KEY" : "SENDX_TEAM_ID", *v = getenv(var);
        if (v != NULL && *v != '\0') /* configure reads it; new does not, on purpose */
            sx_argerror(L, arg, "%s: required (sendx.new does not read %s: pass %s, or use "
                        "sendx.configure, which does)", missing, var, missing);
        sx_argerror(L, arg, "%s: required%s", missing,
                    o.api == SX_API_LEGACY ? "" : " for api 'rest'");
    }
    c = lua_newuserdata(L, sizeof *c);
    memset(c, 0, sizeof *c);
    c->api = o.api; /* known even without credentials: encode_* follow it */
    c->on_error_ref = LUA_NOREF;
    c->log_ref = LUA_NOREF;
    luaL_setmetatable(L, CLIENT_MT);
    if (sx_get_option(L, idx, "on_error"))
        c->on_error_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    else
        lua_pop(L, 1);
    if (sx_get_option(L, idx, "log"))
        c->log_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    else
        lua_pop(L, 1);
    if (missing == NULL)
        client_open(L, c, &o);
    else
        c->missing = missing[0] == 'a'
            ? "sendx: no API key: call sendx.configure{ api_key = ..., team_id = ... } "
              "or set SENDX_API_KEY and SENDX_TEAM_ID"
            : "sendx: no team id: call sendx.configure{ team_id = ... } or set SENDX_TEAM_ID";
    return c;
}

void sx_client_describe(lua_State *L, sx_client *c)
{
    if (!c->open)
        lua_pushstring(L, c->missing ? "sendx.client (no credentials)" : "sendx.client (closed)");
    else
        lua_pushfstring(L, "sendx.client (%s, team '%s', key '%s')",
                        c->api == SX_API_REST ? "rest" : "legacy",
                        c->team.len ? c->team.data : "-", c->key_tail);
}

/* ---------------------------------------------------------------------------
 * The default client of the module-level calls (registry DEFAULT_KEY)
 * ------------------------------------------------------------------------ */

void sx_set_default(lua_State *L, int idx, int arg)
{
    sx_client *old;
    sx_client_new(L, idx, arg, 1);
    lua_getfield(L, LUA_REGISTRYINDEX, DEFAULT_KEY);
    lua_pushvalue(L, -2);
    /* stored before the old one closes: a configure run by one of its
     * callbacks comes later, and wins */
    lua_setfield(L, LUA_REGISTRYINDEX, DEFAULT_KEY);
    if ((old = luaL_testudata(L, -1, CLIENT_MT)) != NULL)
        sx_close_client(L, old, 5.0, 1);
    lua_pop(L, 2);
}

void sx_push_default(lua_State *L)
{
    lua_getfield(L, LUA_REGISTRYINDEX, DEFAULT_KEY);
    if (lua_isnil(L, -1)) {
        sx_set_default(L, lua_gettop(L), 0);
        lua_pop(L, 1);
        lua_getfield(L, LUA_REGISTRYINDEX, DEFAULT_KEY);
    }
}

sx_client *sx_default_client(lua_State *L)
{
    sx_push_default(L);
    return sx_check_client(L, -1);
}

/* ---------------------------------------------------------------------------
 * Requests
 * ------------------------------------------------------------------------ */

static void add_escaped(lua_State *L, sx_buf *b, const char *s, size_t len)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t i;
    if (sx_buf_reserve(b, len * 3) != 0)
        MEMERR(L);
    for (i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if ((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
            ch == '-' || ch == '.' || ch == '_' || ch == '~') {
            b->data[b->len++] = (char)ch;
        } else {
            b->data[b->len++] = '%';
            b->data[b->len++] = hex[ch >> 4];
            b->data[b->len++] = hex[ch & 15];
        }
    }
}

const char *sx_build_url(lua_State *L, sx_client *c, const char *what, const char *email,
                         size_t email_len)
{
    sx_buf *u = &c->url;
    sx_buf_reset(u);
    if (sx_buf_add(u, c->base.data, c->base.len) != 0 || sx_buf_adds(u, "/contact/") != 0 ||
        sx_buf_adds(u, what) != 0)
        MEMERR(L);
    if (c->api == SX_API_LEGACY) {
        if (sx_buf_adds(u, "?team_id=") != 0)
            MEMERR(L);
        add_escaped(L, u, c->team.data, c->team.len);
        if (email != NULL) {
            if (sx_buf_adds(u, "&email=") != 0)
                MEMERR(L);
            add_escaped(L, u, email, email_len);
        }
    }
    if (sx_buf_cstr(u) != 0)
        MEMERR(L);
    return u->data;
}

/* The body and libcurl's message are copied into Lua strings before anything
 * else: a finalizer run by a later allocation may use (or close) this client.
 * [-0, +1|3] */
static int push_outcome(lua_State *L, sx_client *c, const sx_result *r)
{
    const sx_buf *raw = &c->conn.response;
    int top = lua_gettop(L), n;
    if (raw->len > 0 && !c->conn.too_large) /* a truncated body is of no use */
        lua_pushlstring(L, raw->data, raw->len);
    else
        lua_pushnil(L);
    n = sx_push_result(L, top + 1, r);
    lua_remove(L, top + 1); /* the raw body, below the results */
    return n;
}

/* Pushes the results, then logs the call's attempts. The records stay the
 * connection's until the results are pushed (if that raises, its next call
 * or close frees them; a finalizer that makes a call with this client
 * meanwhile replaces them, and this call's entries are lost, never freed
 * twice); they are taken before the log function runs, which may use this
 * client. [-0, +1|3] */
static int log_and_push(lua_State *L, sx_client *c, const char *url, const sx_result *r)
{
    sx_attempt_rec recs[SX_MAX_RECS];
    int n = push_outcome(L, c, r), nrecs = c->conn.nrecs;
    memcpy(recs, c->conn.recs, sizeof recs);
    c->conn.nrecs = 0; /* their answers are recs' now */
    sx_log_call(L, c, url, c->body.data, c->body.len, recs, nrecs);
    sx_buf_shrink(&c->body);
    sx_buf_shrink(&c->url);
    return n;
}

/* POSTs c->body to url and pushes the results. [-0, +1|3] */
static int send_request(lua_State *L, sx_client *c, const char *url, int idempotent)
{
    sx_result r;
    struct timespec t0, t1;
    sx_kind final;
    if (sx_conn_after_fork(&c->conn) != 0)
        return MEMERR(L);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    sx_conn_post(&c->conn, url, c->body.data, c->body.len, idempotent, &r);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    final = r.kind != SX_OK ? r.kind
                            : sx_policy_judge_body(c->conn.response.data ? c->conn.response.data : "",
                                                   c->conn.response.len);
    sx_count_call(c, 0, final, r.attempts,
                  (double)(t1.tv_sec - t0.tv_sec) * 1000.0 + (t1.tv_nsec - t0.tv_nsec) / 1e6);
    if (c->conn.nrecs > 0)
        return log_and_push(L, c, url, &r);
    sx_buf_shrink(&c->body);
    sx_buf_shrink(&c->url);
    return push_outcome(L, c, &r);
}

int sx_do_identify(lua_State *L, sx_client *c, int arg)
{
    int incr = sx_encode_identify(L, arg, arg, c->api, &c->body);
    return send_request(L, c, sx_build_url(L, c, "identify", NULL, 0), !incr);
}

int sx_do_track(lua_State *L, sx_client *c, int arg)
{
    size_t elen;
    const char *email = sx_check_email(L, arg, arg, &elen);
    sx_encode_track(L, arg + 1, arg + 1, c->api == SX_API_REST ? email : NULL, elen, &c->body);
    return send_request(L, c, sx_build_url(L, c, "track", email, elen), 1);
}
