/*
 * sendx.c - the module glue: luaopen_sendx, options, the client metatable,
 * and the conversion of transport results into Lua values.
 */
#include "compat.h"
#include "async.h"
#include "encode.h"
#include "transport.h"

#include <lauxlib.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define SENDX_VERSION "1.0.0"
#define CLIENT_MT "sendx.client"
#define BUFFER_MT "sendx.buffer"
#define DEFAULT_KEY "sendx.default"
#define LEGACY_BASE "https://app.sendx.io/api/v1"
#define REST_BASE "https://api.sendx.io/api/v1/rest"

/* Upvalues shared by every module function and method. */
#define UV_SCRATCH lua_upvalueindex(1) /* sx_buf for encode_* */
#define UV_DECODE lua_upvalueindex(2)  /* a private lua-cjson decode */

typedef struct sx_client {
    sx_conn conn;
    int open;            /* conn holds libcurl resources */
    sx_api api;
    sx_buf base;         /* base URL, no trailing slash, NUL-terminated */
    sx_buf team;         /* team id, NUL-terminated; empty for rest */
    sx_buf url;          /* scratch: the request URL */
    sx_buf body;         /* scratch: the request body */
    sx_buf auth;         /* the auth header line, for the OpenResty transport */
    sx_buf ua;           /* the User-Agent, likewise */
    size_t path_off;     /* where the path starts in base ("https://host" before) */
    long timeout_ms, connect_timeout_ms;
    int has_ca_file, has_proxy;
    sx_async_opts aopts; /* for the background worker, started on first use */
    sx_async *async;
    sx_job *limbo;       /* completed jobs being turned into Lua values */
    int running;         /* run_done calls active (a callback may nest one) */
    int on_error_ref;    /* on_error option (registry ref), or LUA_NOREF */
    char key_tail[8];    /* what tostring may show of the key */
    const char *missing; /* default client without credentials: why */
} sx_client;

#define MEMERR(L) luaL_error((L), "sendx: not enough memory")

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ---------------------------------------------------------------------------
 * Options
 * ------------------------------------------------------------------------ */

typedef struct options {
    const char *api_key, *team_id, *base_url, *user_agent, *ca_file, *proxy;
    const char *base_url_name; /* "base_url" or "SENDX_BASE_URL", for messages */
    sx_api api;
    long timeout_ms, connect_timeout_ms, max_retry_wait_ms;
    int retries;
    int plain_http;            /* base_url is http:// (loopback) */
    long max_queue, max_in_flight, max_queue_bytes;
} options;

static const char *const option_names[] = {
    "api_key", "team_id", "base_url", "api", "timeout", "connect_timeout", "retries",
    "user_agent", "ca_file", "proxy", "max_retry_wait", "max_queue", "max_in_flight",
    "max_queue_bytes", "on_error", NULL,
};

/* The option `name` of the table at idx pushed, or nil. */
static int get_option(lua_State *L, int idx, const char *name)
{
    lua_pushstring(L, name);
    lua_rawget(L, idx);
    return !lua_isnil(L, -1);
}

/* A string that will travel in a header or URL: non-empty, no CR, LF or NUL.
 * The message names the option (or environment variable), never the value. */
static const char *check_text(lua_State *L, int arg, const char *name, const char *s,
                              size_t len)
{
    if (len == 0)
        sx_argerror(L, arg, "%s: must not be empty", name);
    if (strlen(s) != len || strpbrk(s, "\r\n") != NULL)
        sx_argerror(L, arg, "%s: must not contain CR, LF or NUL", name);
    return s;
}

static const char *opt_string(lua_State *L, int idx, int arg, const char *name)
{
    size_t len;
    const char *s;
    if (!get_option(L, idx, name)) {
        lua_pop(L, 1);
        return NULL;
    }
    if (lua_type(L, -1) != LUA_TSTRING)
        sx_argerror(L, arg, "%s: expected string, got %s", name, luaL_typename(L, -1));
    s = lua_tolstring(L, -1, &len);
    check_text(L, arg, name, s, len);
    lua_pop(L, 1); /* still referenced by the options table */
    return s;
}

/* The option, or else (for the module's defaults) the environment variable
 * `env`, checked the same way; *source names where it came from. */
static const char *opt_or_env(lua_State *L, int idx, int arg, const char *name,
                              const char *env, int use_env, const char **source)
{
    const char *v = opt_string(L, idx, arg, name), *e;
    if (source != NULL)
        *source = name;
    if (v != NULL || !use_env || (e = getenv(env)) == NULL || *e == '\0')
        return v;
    if (source != NULL)
        *source = env;
    return check_text(L, arg, env, e, strlen(e));
}

/* Seconds as milliseconds, within [min, max]; `def` when absent. */
static long opt_seconds(lua_State *L, int idx, int arg, const char *name, double min,
                        double max, long def)
{
    double v;
    if (!get_option(L, idx, name)) {
        lua_pop(L, 1);
        return def;
    }
    v = lua_type(L, -1) == LUA_TNUMBER ? (double)lua_tonumber(L, -1) : -1.0;
    if (!(v >= min && v <= max))
        sx_argerror(L, arg, "%s: expected a number of seconds %s %d", name,
                    min > 0 ? "above 0, at most" : "from 0 to", (int)max);
    lua_pop(L, 1);
    return v > 0 && v < 0.001 ? 1 : (long)(v * 1000.0);
}

static int opt_retries(lua_State *L, int idx, int arg)
{
    double v = 2;
    if (get_option(L, idx, "retries")) {
        v = lua_type(L, -1) == LUA_TNUMBER ? (double)lua_tonumber(L, -1) : -1.0;
        if (!(v >= 0 && v <= 10) || v != (double)(int)v)
            sx_argerror(L, arg, "retries: expected an integer from 0 to 10");
    }
    lua_pop(L, 1);
    return (int)v;
}

/* An integer option within [min, max]; `def` when absent. */
static long opt_int(lua_State *L, int idx, int arg, const char *name, long min, long max, long def)
{
    double v = (double)def;
    if (get_option(L, idx, name)) {
        v = lua_type(L, -1) == LUA_TNUMBER ? (double)lua_tonumber(L, -1) : -1.0;
        if (!(v >= (double)min && v <= (double)max) || v != (double)(long)v)
            sx_argerror(L, arg, "%s: expected an integer from %d to %d", name, (int)min, (int)max);
    }
    lua_pop(L, 1);
    return (long)v;
}

static sx_api opt_api(lua_State *L, int idx, int arg)
{
    const char *s = opt_string(L, idx, arg, "api");
    if (s == NULL || strcmp(s, "legacy") == 0)
        return SX_API_LEGACY;
    if (strcmp(s, "rest") == 0)
        return SX_API_REST;
    return (sx_api)sx_argerror(L, arg, "api: expected 'legacy' or 'rest', got '%s'", s);
}

static void check_option_names(lua_State *L, int idx, int arg)
{
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        const char *const *n;
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING)
            sx_argerror(L, arg, "options: unexpected %s key", luaL_typename(L, -1));
        for (n = option_names; *n != NULL && strcmp(*n, lua_tostring(L, -1)) != 0; n++)
            ;
        if (*n == NULL)
            sx_unknown_field(L, arg, "", lua_tostring(L, -1), option_names);
    }
}

/* Reads and checks the options table at idx (which may be nil when use_env). */
static void read_options(lua_State *L, int idx, int arg, int use_env, options *o)
{
    if (lua_isnoneornil(L, idx) && use_env) {
        lua_newtable(L);
        lua_replace(L, idx);
    }
    if (!lua_istable(L, idx))
        sx_argerror(L, arg, "options: expected table, got %s", luaL_typename(L, idx));
    check_option_names(L, idx, arg);
    o->api = opt_api(L, idx, arg);
    o->api_key = opt_or_env(L, idx, arg, "api_key", "SENDX_API_KEY", use_env, NULL);
    o->team_id = opt_or_env(L, idx, arg, "team_id", "SENDX_TEAM_ID", use_env, NULL);
    o->base_url = opt_or_env(L, idx, arg, "base_url", "SENDX_BASE_URL", use_env, &o->base_url_name);
    o->user_agent = opt_string(L, idx, arg, "user_agent");
    o->ca_file = opt_string(L, idx, arg, "ca_file");
    o->proxy = opt_string(L, idx, arg, "proxy");
    o->timeout_ms = opt_seconds(L, idx, arg, "timeout", 0.001, 3600, 10000);
    o->connect_timeout_ms = opt_seconds(L, idx, arg, "connect_timeout", 0.001, 3600, 3000);
    o->max_retry_wait_ms = opt_seconds(L, idx, arg, "max_retry_wait", 0, 30, SX_MAX_RETRY_WAIT_MS);
    o->retries = opt_retries(L, idx, arg);
    o->plain_http = 0;
    o->max_queue = opt_int(L, idx, arg, "max_queue", 1, 1000000, 10000);
    o->max_in_flight = opt_int(L, idx, arg, "max_in_flight", 1, 64, 16);
    o->max_queue_bytes = opt_int(L, idx, arg, "max_queue_bytes", 1024, 1024L * 1024 * 1024,
                                 16L * 1024 * 1024);
    if (get_option(L, idx, "on_error") && !lua_isfunction(L, -1))
        sx_argerror(L, arg, "on_error: expected function, got %s", luaL_typename(L, -1));
    lua_pop(L, 1);
}

/* ---------------------------------------------------------------------------
 * base_url: parsed by libcurl itself, so what is checked is what is used
 * ------------------------------------------------------------------------ */

static int is_loopback(const char *host)
{
    struct in_addr a4;
    if (strcasecmp(host, "localhost") == 0 || strcmp(host, "[::1]") == 0)
        return 1;
    return inet_pton(AF_INET, host, &a4) == 1 && (ntohl(a4.s_addr) >> 24) == 127;
}

/* NULL when url is acceptable, else what is wrong with it. Sets *plain for
 * an http:// URL. */
static const char *base_url_problem(const char *url, int *plain)
{
    CURLU *u;
    char *scheme = NULL, *host = NULL;
    const char *why = NULL;
    *plain = 0;
    if (strpbrk(url, "?#") != NULL) /* even empty: the path is appended to it */
        return "must not have a query or fragment";
    if (strncasecmp(url, "https://", 8) != 0 && strncasecmp(url, "http://", 7) != 0)
        return "must start with https:// (or http:// for loopback)";
    if ((u = curl_url()) == NULL)
        return "not enough memory";
    if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK)
        why = "not a valid http(s) URL";
    else if (strcmp(scheme, "https") != 0 && strcmp(scheme, "http") != 0)
        why = "only http and https URLs are accepted";
    else if ((*plain = strcmp(scheme, "http") == 0) && !is_loopback(host))
        why = "plain http is refused for a host that is not loopback (use https)";
    curl_free(scheme);
    curl_free(host);
    curl_url_cleanup(u);
    return why;
}

/* 1 when the proxy URL names a loopback host, 0 when not, -1 when invalid. */
static int proxy_on_loopback(const char *proxy)
{
    CURLU *u = curl_url();
    char *host = NULL;
    int r = -1;
    if (u == NULL)
        return -1;
    if (curl_url_set(u, CURLUPART_URL, proxy,
                     CURLU_DEFAULT_SCHEME | CURLU_NON_SUPPORT_SCHEME) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK)
        r = is_loopback(host);
    curl_free(host);
    curl_url_cleanup(u);
    return r;
}

/* The checks that need more than a type: URLs, the proxy, the CA file. */
static void check_options(lua_State *L, int arg, options *o)
{
    const char *why;
    FILE *f;
    if (o->base_url != NULL && (why = base_url_problem(o->base_url, &o->plain_http)) != NULL)
        sx_argerror(L, arg, "%s: %s", o->base_url_name, why);
    /* plain http is allowed so that the key never leaves the machine in clear:
     * a proxy elsewhere would defeat that */
    if (o->plain_http && o->proxy != NULL && proxy_on_loopback(o->proxy) != 1)
        sx_argerror(L, arg, "proxy: must be on loopback when base_url is plain http");
    if (o->ca_file != NULL) {
        if ((f = fopen(o->ca_file, "rb")) != NULL)
            fclose(f);
        else
            sx_argerror(L, arg, "ca_file: cannot open '%s'", o->ca_file);
    }
}

/* ---------------------------------------------------------------------------
 * The client
 * ------------------------------------------------------------------------ */

/* The open client at idx, or an error blamed on the code `level` frames up
 * (1: the caller of this C function; 2: for the OpenResty bridge, whose
 * caller is a Lua wrapper). */
static sx_client *check_client_at(lua_State *L, int idx, int level)
{
    sx_client *c = luaL_checkudata(L, idx, CLIENT_MT);
    const char *why = c->missing != NULL ? c->missing : !c->open ? "sendx: client is closed" : NULL;
    if (why != NULL) {
        luaL_where(L, level);
        lua_pushstring(L, why);
        lua_concat(L, 2);
        lua_error(L);
    }
    return c;
}

static sx_client *check_client(lua_State *L, int idx)
{
    return check_client_at(L, idx, 1);
}

/* Lets go of the background worker: stopped and freed, or, in a forked
 * child, abandoned (its thread and connections are the parent's). Jobs not
 * handed back are freed with their callbacks. */
static void drop_async(lua_State *L, sx_client *c)
{
    sx_async *a = c->async;
    sx_job *j;
    if (a == NULL)
        return;
    c->async = NULL;
    if (sx_async_pid(a) != getpid()) {
        sx_async_abandon(a);
        return;
    }
    sx_async_stop(a);
    while ((j = sx_async_take(a)) != NULL) {
        luaL_unref(L, LUA_REGISTRYINDEX, j->ref);
        sx_job_free(j);
    }
    sx_async_free(a);
}

static void client_release(lua_State *L, sx_client *c)
{
    drop_async(L, c);
    while (c->limbo != NULL && c->running == 0) { /* else the active run_done frees them */
        sx_job *j = c->limbo;
        c->limbo = j->next;
        luaL_unref(L, LUA_REGISTRYINDEX, j->ref);
        sx_job_free(j);
    }
    luaL_unref(L, LUA_REGISTRYINDEX, c->on_error_ref);
    c->on_error_ref = LUA_NOREF;
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

/* Opens the libcurl side of c from checked options. */
static void client_open(lua_State *L, sx_client *c, const options *o)
{
    sx_conn_opts co;
    char ua[160];
    size_t blen;
    int opened;
    const char *authority;
    const char *base = o->base_url ? o->base_url : (o->api == SX_API_REST ? REST_BASE : LEGACY_BASE);
    for (blen = strlen(base); blen > 0 && base[blen - 1] == '/'; blen--)
        ;
    copy_cstr(L, &c->base, base, blen);
    authority = strstr(c->base.data, "://") + 3; /* base_url_problem made sure */
    c->path_off = (size_t)(authority - c->base.data) + strcspn(authority, "/");
    copy_cstr(L, &c->team, o->team_id ? o->team_id : "", o->team_id ? strlen(o->team_id) : 0);
    snprintf(ua, sizeof ua, "sendx/%s (%s; libcurl/%s)", SENDX_VERSION, LUA_VERSION,
             curl_version_info(CURLVERSION_NOW)->version);
    if (sx_buf_adds(&c->auth, o->api == SX_API_REST ? "X-Team-ApiKey: " : "api_key: ") != 0 ||
        sx_buf_adds(&c->auth, o->api_key) != 0 || sx_buf_cstr(&c->auth) != 0)
        MEMERR(L);
    copy_cstr(L, &c->ua, o->user_agent ? o->user_agent : ua,
              strlen(o->user_agent ? o->user_agent : ua));
    co.auth_header = c->auth.data;
    co.user_agent = c->ua.data;
    co.ca_file = o->ca_file;
    co.proxy = o->proxy;
    co.no_env_proxy = o->plain_http; /* see check_options */
    co.timeout_ms = o->timeout_ms;
    co.connect_timeout_ms = o->connect_timeout_ms;
    co.max_retry_wait_ms = o->max_retry_wait_ms;
    co.retries = o->retries;
    opened = sx_conn_open(&c->conn, &co);
    if (opened != 0)
        luaL_error(L, "sendx: libcurl could not be initialised");
    c->open = 1;
    c->api = o->api;
    c->timeout_ms = o->timeout_ms;
    c->connect_timeout_ms = o->connect_timeout_ms;
    c->has_ca_file = o->ca_file != NULL;
    c->has_proxy = o->proxy != NULL;
    c->aopts.max_in_flight = (int)o->max_in_flight;
    c->aopts.max_queue = o->max_queue;
    c->aopts.max_bytes = (size_t)o->max_queue_bytes;
    c->aopts.retries = o->retries;
    c->aopts.max_retry_wait_ms = o->max_retry_wait_ms;
    set_key_tail(c, o->api_key);
}

/* Pushes a new client built from the options table at idx. With `lazy`
 * (the module's default client) missing credentials are reported when the
 * client is used, not now. */
static sx_client *client_new(lua_State *L, int idx, int arg, int lazy)
{
    options o;
    const char *missing = NULL;
    sx_client *c;
    read_options(L, idx, arg, lazy, &o);
    check_options(L, arg, &o);
    if (o.api_key == NULL)
        missing = "api_key";
    else if (o.team_id == NULL && o.api == SX_API_LEGACY)
        missing = "team_id";
    if (missing != NULL && !lazy)
        sx_argerror(L, arg, "%s: required%s", missing,
                    o.api == SX_API_LEGACY ? "" : " for api 'rest'");
    c = lua_newuserdata(L, sizeof *c);
    memset(c, 0, sizeof *c);
    c->on_error_ref = LUA_NOREF;
    luaL_setmetatable(L, CLIENT_MT);
    if (get_option(L, idx, "on_error")) {
        c->on_error_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    } else {
        lua_pop(L, 1);
    }
    if (missing == NULL)
        client_open(L, c, &o);
    else
        c->missing = missing[0] == 'a'
            ? "sendx: no API key: call sendx.configure{ api_key = ..., team_id = ... } "
              "or set SENDX_API_KEY and SENDX_TEAM_ID"
            : "sendx: no team id: call sendx.configure{ team_id = ... } or set SENDX_TEAM_ID";
    return c;
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

/* {base}/contact/{what}, with team_id (and email) in the query for legacy. */
static const char *build_url(lua_State *L, sx_client *c, const char *what, const char *email,
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

static const char *const kind_names[] = { "ok", "network", "timeout", "tls", "http", "api", "decode",
                                           "shutdown" };

/* Decodes the body string (or nil) at `body` with lua-cjson and pushes the
 * value; returns 0 when it is not JSON, with cjson's message pushed instead. */
static int decode_body(lua_State *L, int body)
{
    lua_pushvalue(L, UV_DECODE);
    lua_pushvalue(L, body);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_pushliteral(L, "");
    }
    return lua_pcall(L, 1, 1, 0) == 0;
}

/* 1 when the JSON text at idx is an object (its first non-blank byte is '{'). */
static int is_object(lua_State *L, int idx)
{
    size_t len, i = 0;
    const char *s = lua_tolstring(L, idx, &len);
    while (i < len && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r' || s[i] == '\n'))
        i++;
    return i < len && s[i] == '{';
}

/* The server's own words from a decoded body at the top, or NULL. */
static const char *server_message(lua_State *L)
{
    static const char *const keys[] = { "message", "error" };
    int i;
    if (!lua_istable(L, -1))
        return NULL;
    for (i = 0; i < 2; i++) {
        lua_getfield(L, -1, keys[i]);
        if (lua_type(L, -1) == LUA_TSTRING) {
            const char *s = lua_tostring(L, -1);
            lua_pop(L, 1); /* still referenced by the table */
            return s;
        }
        lua_pop(L, 1);
    }
    return NULL;
}

static int status_is_200(lua_State *L)
{
    int ok;
    lua_getfield(L, -1, "status");
    ok = (lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), "200") == 0) ||
         (lua_type(L, -1) == LUA_TNUMBER && lua_tonumber(L, -1) == 200);
    lua_pop(L, 1);
    return ok;
}

/* Pushes nil, message, info. Expects the decoded response (or nil) on top,
 * and leaves it as info.response; `body` is the raw body's stack index. */
static int push_failure(lua_State *L, const sx_result *r, sx_kind kind, const char *detail,
                        int body)
{
    int response = lua_gettop(L);
    lua_pushnil(L);
    if (kind == SX_HTTP && r->code == CURLE_OK)
        lua_pushfstring(L, "sendx: HTTP %d%s%s", (int)r->status, detail ? ": " : "",
                        detail ? detail : "");
    else
        lua_pushfstring(L, "sendx: %s error: %s", kind_names[kind], detail ? detail : "unknown");
    if (r->attempts > 1) {
        lua_pushfstring(L, " (after %d attempts)", r->attempts);
        lua_concat(L, 2);
    }
    lua_createtable(L, 0, 7);
    lua_pushstring(L, kind_names[kind]);
    lua_setfield(L, -2, "kind");
    if (r->status > 0) {
        lua_pushinteger(L, (lua_Integer)r->status);
        lua_setfield(L, -2, "status");
    }
    lua_pushvalue(L, body);
    lua_setfield(L, -2, "body");
    lua_pushvalue(L, response);
    lua_setfield(L, -2, "response");
    lua_pushboolean(L, r->retryable);
    lua_setfield(L, -2, "retryable");
    lua_pushinteger(L, r->attempts);
    lua_setfield(L, -2, "attempts");
    return 3;
}

/* Turns what a transport saw into the call's results; `body` is the index of
 * the raw body (a string, or nil when none came). */
static int push_result(lua_State *L, int body, const sx_result *r)
{
    int msg;
    lua_pushstring(L, r->message); /* nil when NULL */
    msg = lua_gettop(L);
    lua_pushnil(L); /* no decoded response (yet) */
    if (r->kind != SX_OK && r->kind != SX_HTTP)
        return push_failure(L, r, r->kind, lua_tostring(L, msg), body);
    if (r->code != CURLE_OK) /* the body outgrew its cap */
        return push_failure(L, r, SX_HTTP, lua_tostring(L, msg), body);
    lua_pop(L, 1);
    if (!decode_body(L, body)) {
        lua_pushfstring(L, "response is not JSON (%s)", lua_tostring(L, -1));
        lua_pushnil(L);
        return push_failure(L, r, r->kind == SX_HTTP ? SX_HTTP : SX_DECODE,
                            r->kind == SX_HTTP ? NULL : lua_tostring(L, -2), body);
    }
    if (!is_object(L, body)) { /* cjson decodes [] and {} alike: look at the text */
        if (r->kind == SX_HTTP)
            return push_failure(L, r, SX_HTTP, NULL, body);
        lua_pushfstring(L, "response is JSON but not an object (%s)", luaL_typename(L, -1));
        lua_pushnil(L);
        return push_failure(L, r, SX_DECODE, lua_tostring(L, -2), body);
    }
    if (r->kind == SX_HTTP)
        return push_failure(L, r, SX_HTTP, server_message(L), body);
    if (!status_is_200(L))
        return push_failure(L, r, SX_API, server_message(L), body);
    return 1;
}

/* The body and libcurl's message are copied into Lua strings before anything
 * else: a finalizer run by a later allocation may use (or close) this client. */
static int push_outcome(lua_State *L, sx_client *c, const sx_result *r)
{
    const sx_buf *raw = &c->conn.response;
    if (raw->len > 0 && !c->conn.too_large) /* a truncated body is of no use */
        lua_pushlstring(L, raw->data, raw->len);
    else
        lua_pushnil(L);
    return push_result(L, lua_gettop(L), r);
}

static int send_request(lua_State *L, sx_client *c, const char *url, int idempotent)
{
    sx_result r;
    if (sx_conn_after_fork(&c->conn) != 0)
        return MEMERR(L);
    sx_conn_post(&c->conn, url, c->body.data, c->body.len, idempotent, &r);
    return push_outcome(L, c, &r);
}

static int do_identify(lua_State *L, sx_client *c, int arg)
{
    int incr = sx_encode_identify(L, arg, arg, c->api, &c->body);
    return send_request(L, c, build_url(L, c, "identify", NULL, 0), !incr);
}

static int do_track(lua_State *L, sx_client *c, int arg)
{
    size_t elen;
    const char *email = sx_check_email(L, arg, arg, &elen);
    sx_encode_track(L, arg + 1, arg + 1, c->api == SX_API_REST ? email : NULL, elen, &c->body);
    return send_request(L, c, build_url(L, c, "track", email, elen), 1);
}

/* ---------------------------------------------------------------------------
 * Asynchronous delivery: the Lua side of src/async.c
 * ------------------------------------------------------------------------ */

/* The client's worker, started on first use; in a forked child the parent's
 * is let go and a fresh one started (see drop_async). */
static sx_async *ensure_async(lua_State *L, sx_client *c)
{
    if (c->async != NULL && sx_async_pid(c->async) != getpid())
        drop_async(L, c);
    if (c->async == NULL) {
        if (sx_conn_after_fork(&c->conn) != 0 ||
            (c->async = sx_async_new(c->conn.curl, &c->aopts)) == NULL)
            luaL_error(L, "sendx: the background worker could not be started");
    }
    return c->async;
}

/* Queues the request built in c->url and c->body, with the callback at cb
 * (nil or none: no callback). Returns true, or nil, "queue full". */
static int submit(lua_State *L, sx_client *c, int cb, int idempotent)
{
    sx_async *a = ensure_async(L, c);
    int ref = LUA_NOREF;
    sx_job *j;
    if (!lua_isnoneornil(L, cb)) {
        lua_pushvalue(L, cb);
        ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    if ((j = sx_job_new(c->url.data, c->body.data, c->body.len, idempotent)) == NULL) {
        luaL_unref(L, LUA_REGISTRYINDEX, ref);
        return MEMERR(L);
    }
    j->ref = ref;
    if (sx_async_submit(a, j) != 0) {
        luaL_unref(L, LUA_REGISTRYINDEX, ref);
        sx_job_free(j);
        lua_pushnil(L);
        lua_pushliteral(L, "queue full");
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

static void check_callback(lua_State *L, int idx)
{
    if (!lua_isnoneornil(L, idx) && !lua_isfunction(L, idx))
        sx_argerror(L, idx, "callback: expected function, got %s", luaL_typename(L, idx));
}

static int do_identify_async(lua_State *L, sx_client *c, int arg)
{
    int incr;
    check_callback(L, arg + 1);
    incr = sx_encode_identify(L, arg, arg, c->api, &c->body);
    build_url(L, c, "identify", NULL, 0);
    return submit(L, c, arg + 1, !incr);
}

static int do_track_async(lua_State *L, sx_client *c, int arg)
{
    size_t elen;
    const char *email = sx_check_email(L, arg, arg, &elen);
    check_callback(L, arg + 2);
    sx_encode_track(L, arg + 1, arg + 1, c->api == SX_API_REST ? email : NULL, elen, &c->body);
    build_url(L, c, "track", email, elen);
    return submit(L, c, arg + 2, 1);
}

/* A callback raised the error on top: on_error gets it, else it goes to the
 * table at errs (or to stderr when errs is 0). Pops it. */
static void report_error(lua_State *L, sx_client *c, int errs)
{
    if (c->on_error_ref != LUA_NOREF) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, c->on_error_ref);
        lua_insert(L, -2);
        if (lua_pcall(L, 1, 0, 0) == 0)
            return;
    }
    if (errs != 0) {
        lua_rawseti(L, errs, (int)lua_rawlen(L, errs) + 1);
    } else {
        fprintf(stderr, "sendx: callback error: %s\n",
                lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : luaL_typename(L, -1));
        lua_pop(L, 1);
    }
}

static void unlink_limbo(sx_client *c, sx_job *j)
{
    sx_job **p;
    for (p = &c->limbo; *p != NULL; p = &(*p)->next)
        if (*p == j) {
            *p = j->next;
            return;
        }
}

/* Runs the callbacks of completed calls, one job at a time (a callback may
 * poll, queue or close). Returns how many calls completed. */
static int run_done(lua_State *L, sx_client *c, int errs)
{
    int n = 0;
    sx_job *j;
    while (c->async != NULL && sx_async_pid(c->async) == getpid() &&
           (j = sx_async_take(c->async)) != NULL) {
        int base = lua_gettop(L), nres, ref = j->ref;
        sx_result r = j->r; /* copied: a finalizer run by the pushes may close c */
        char message[CURL_ERROR_SIZE];
        if (r.message != NULL) {
            snprintf(message, sizeof message, "%s", r.message);
            r.message = message;
        }
        j->next = c->limbo; /* freed by close if a Lua error escapes from here */
        c->limbo = j;
        c->running++;
        lua_rawgeti(L, LUA_REGISTRYINDEX, ref); /* nil for LUA_NOREF */
        if (j->response != NULL)
            lua_pushlstring(L, j->response, j->response_len);
        else
            lua_pushnil(L);
        c->running--;
        unlink_limbo(c, j);
        sx_job_free(j); /* before push_result: its allocations may run finalizers */
        luaL_unref(L, LUA_REGISTRYINDEX, ref);
        nres = push_result(L, base + 2, &r); /* leaves scratch values below */
        lua_pushvalue(L, base + 1);
        lua_insert(L, -(nres + 1)); /* callback, results */
        n++;
        if (!lua_isnil(L, base + 1) && lua_pcall(L, nres, 0, 0) != 0)
            report_error(L, c, errs);
        lua_settop(L, base);
    }
    return n;
}

/* Pushes true, or nil, "timeout"; then the table at errs when not empty. */
static int flush_client(lua_State *L, sx_client *c, double timeout, int errs)
{
    double deadline = timeout >= 0 ? now_seconds() + timeout : 0;
    int nret;
    if (c->async != NULL && sx_async_pid(c->async) != getpid())
        drop_async(L, c); /* a forked child: the parent's calls are the parent's to send */
    for (;;) {
        double left = deadline - now_seconds();
        run_done(L, c, errs);
        if (c->async == NULL || sx_async_outstanding(c->async) == 0) {
            lua_pushboolean(L, 1);
            nret = 1;
            break;
        }
        if (timeout >= 0 && left <= 0) {
            lua_pushnil(L);
            lua_pushliteral(L, "timeout");
            nret = 2;
            break;
        }
        sx_async_wait(c->async, timeout >= 0 && left < 1.0 ? (long)(left * 1000) + 1 : 1000);
    }
    if (errs != 0 && lua_rawlen(L, errs) > 0) {
        if (nret == 1)
            lua_pushnil(L); /* keeps the errors in third place */
        lua_pushvalue(L, errs);
        return 3;
    }
    return nret;
}

/* close and __gc: flush (bounded), stop the worker, report what was cut
 * short as kind "shutdown", release. quiet: no caller to return errors to. */
static int close_client(lua_State *L, sx_client *c, double timeout, int quiet)
{
    int errs = 0, nret = 0, top = lua_gettop(L);
    if (!quiet) {
        lua_newtable(L);
        errs = lua_gettop(L);
    }
    if (c->async != NULL) {
        nret = flush_client(L, c, timeout, errs);
        if (c->async != NULL) { /* a callback may have closed the client */
            sx_async_stop(c->async);
            run_done(L, c, errs);
        }
    }
    client_release(L, c);
    if (quiet) {
        lua_settop(L, top); /* callers such as set_default keep using the stack */
        return 0;
    }
    if (nret == 0) { /* nothing was queued */
        lua_pushboolean(L, 1);
        nret = 1;
    }
    return nret;
}

/* client:identify_async(contact [, callback]) -> true | nil, "queue full" */
static int l_client_identify_async(lua_State *L)
{
    return do_identify_async(L, check_client(L, 1), 2);
}

/* client:track_async(email, changes [, callback]) -> true | nil, "queue full" */
static int l_client_track_async(lua_State *L)
{
    return do_track_async(L, check_client(L, 1), 2);
}

/* Pushes the number of completed calls, then their callbacks' errors if any. */
static int poll_client(lua_State *L, sx_client *c)
{
    int errs, n;
    lua_newtable(L);
    errs = lua_gettop(L);
    n = c->async != NULL && sx_async_pid(c->async) == getpid() ? run_done(L, c, errs) : 0;
    lua_pushinteger(L, n);
    if (lua_rawlen(L, errs) == 0)
        return 1;
    lua_pushvalue(L, errs);
    return 2;
}

/* client:poll() -> count [, errors]; never blocks */
static int l_client_poll(lua_State *L)
{
    return poll_client(L, check_client(L, 1));
}

/* flush_client with a fresh table for the callbacks' errors. */
static int flush_call(lua_State *L, sx_client *c, double timeout)
{
    lua_newtable(L);
    return flush_client(L, c, timeout, lua_gettop(L));
}

/* client:flush([timeout]) -> true | nil, "timeout" [, errors] */
static int l_client_flush(lua_State *L)
{
    return flush_call(L, check_client(L, 1), luaL_optnumber(L, 2, -1));
}

/* client:stats() -> { queued, in_flight, sent, failed, retried, dropped } */
static int l_client_stats(lua_State *L)
{
    sx_client *c = check_client(L, 1);
    sx_stats st;
    memset(&st, 0, sizeof st);
    if (c->async != NULL && sx_async_pid(c->async) == getpid())
        sx_async_stats(c->async, &st);
    lua_createtable(L, 0, 6);
    lua_pushinteger(L, st.queued);
    lua_setfield(L, -2, "queued");
    lua_pushinteger(L, st.in_flight);
    lua_setfield(L, -2, "in_flight");
    lua_pushinteger(L, st.sent);
    lua_setfield(L, -2, "sent");
    lua_pushinteger(L, st.failed);
    lua_setfield(L, -2, "failed");
    lua_pushinteger(L, st.retried);
    lua_setfield(L, -2, "retried");
    lua_pushinteger(L, st.dropped);
    lua_setfield(L, -2, "dropped");
    return 1;
}

/* client:fd() -> a descriptor that is readable while callbacks are ready */
static int l_client_fd(lua_State *L)
{
    lua_pushinteger(L, sx_async_fd(ensure_async(L, check_client(L, 1))));
    return 1;
}

/* ---------------------------------------------------------------------------
 * Lua-visible functions
 * ------------------------------------------------------------------------ */

static sx_buf *scratch(lua_State *L)
{
    return lua_touserdata(L, UV_SCRATCH);
}

/* client:identify(contact) -> res | nil, message, info */
static int l_client_identify(lua_State *L)
{
    return do_identify(L, check_client(L, 1), 2);
}

/* client:track(email, changes) -> res | nil, message, info */
static int l_client_track(lua_State *L)
{
    return do_track(L, check_client(L, 1), 2);
}

/* client:encode_identify(contact) -> the JSON body this client would send */
static int l_client_encode_identify(lua_State *L)
{
    sx_client *c = check_client(L, 1);
    sx_buf *b = scratch(L);
    sx_encode_identify(L, 2, 2, c->api, b);
    lua_pushlstring(L, b->data, b->len);
    return 1;
}

/* client:encode_track(email, changes) -> the JSON body this client would send */
static int l_client_encode_track(lua_State *L)
{
    sx_client *c = check_client(L, 1);
    sx_buf *b = scratch(L);
    size_t elen;
    const char *email = sx_check_email(L, 2, 2, &elen);
    sx_encode_track(L, 3, 3, c->api == SX_API_REST ? email : NULL, elen, b);
    lua_pushlstring(L, b->data, b->len);
    return 1;
}

/* client:close([timeout]) -> true | nil, "timeout" (and callback errors);
 * idempotent. Waits up to timeout (5 s) for queued calls, then releases. */
static int l_client_close(lua_State *L)
{
    sx_client *c = luaL_checkudata(L, 1, CLIENT_MT);
    double timeout = luaL_optnumber(L, 2, 5.0);
    lua_settop(L, 1);
    return close_client(L, c, timeout, 0);
}

/* __gc and __close: close with the default bound; callback errors that no
 * on_error takes are written to stderr, since nobody can receive them. */
static int l_client_gc(lua_State *L)
{
    sx_client *c = luaL_checkudata(L, 1, CLIENT_MT);
    lua_settop(L, 1);
    close_client(L, c, 5.0, 1);
    return 0;
}

/* tostring(client) */
static int l_client_tostring(lua_State *L)
{
    sx_client *c = luaL_checkudata(L, 1, CLIENT_MT);
    if (!c->open)
        lua_pushstring(L, c->missing ? "sendx.client (no credentials)" : "sendx.client (closed)");
    else
        lua_pushfstring(L, "sendx.client (%s, team '%s', key '%s')",
                        c->api == SX_API_REST ? "rest" : "legacy",
                        c->team.len ? c->team.data : "-", c->key_tail);
    return 1;
}

/* sendx.new(options) -> client */
static int l_new(lua_State *L)
{
    lua_settop(L, 1);
    client_new(L, 1, 1, 0);
    return 1;
}

/* Replaces (and closes) the default client by one made from the options at
 * idx; arg 0 reports bad options as plain errors, not argument errors. */
static void set_default(lua_State *L, int idx, int arg)
{
    sx_client *old;
    client_new(L, idx, arg, 1);
    lua_getfield(L, LUA_REGISTRYINDEX, DEFAULT_KEY);
    if ((old = luaL_testudata(L, -1, CLIENT_MT)) != NULL)
        close_client(L, old, 5.0, 1);
    lua_pop(L, 1);
    lua_setfield(L, LUA_REGISTRYINDEX, DEFAULT_KEY);
}

/* sendx.configure(options) -- the defaults of the module-level calls */
static int l_configure(lua_State *L)
{
    lua_settop(L, 1);
    set_default(L, 1, 1);
    return 0;
}

/* Pushes the default client, configured from the environment on first use. */
static void push_default(lua_State *L)
{
    lua_getfield(L, LUA_REGISTRYINDEX, DEFAULT_KEY);
    if (lua_isnil(L, -1)) {
        set_default(L, lua_gettop(L), 0);
        lua_pop(L, 1);
        lua_getfield(L, LUA_REGISTRYINDEX, DEFAULT_KEY);
    }
}

static sx_client *default_client(lua_State *L)
{
    push_default(L);
    return check_client(L, -1);
}

/* sendx.identify(contact) -> res | nil, message, info */
static int l_identify(lua_State *L)
{
    sx_client *c;
    lua_settop(L, 1);
    c = default_client(L);
    return do_identify(L, c, 1);
}

/* sendx.track(email, changes) -> res | nil, message, info */
static int l_track(lua_State *L)
{
    sx_client *c;
    lua_settop(L, 2);
    c = default_client(L);
    return do_track(L, c, 1);
}

/* sendx.identify_async(contact [, callback]) -- on the default client */
static int l_identify_async(lua_State *L)
{
    sx_client *c;
    lua_settop(L, 2);
    c = default_client(L);
    return do_identify_async(L, c, 1);
}

/* sendx.track_async(email, changes [, callback]) -- on the default client */
static int l_track_async(lua_State *L)
{
    sx_client *c;
    lua_settop(L, 3);
    c = default_client(L);
    return do_track_async(L, c, 1);
}

/* sendx.poll() -> count [, errors] -- on the default client */
static int l_poll(lua_State *L)
{
    lua_settop(L, 0);
    return poll_client(L, default_client(L));
}

/* sendx.flush([timeout]) -> true | nil, "timeout" [, errors] */
static int l_flush(lua_State *L)
{
    double timeout = luaL_optnumber(L, 1, -1);
    lua_settop(L, 1);
    return flush_call(L, default_client(L), timeout);
}

/* sendx.encode_identify(contact) -> the legacy JSON body; no network */
static int l_encode_identify(lua_State *L)
{
    sx_buf *b = scratch(L);
    sx_encode_identify(L, 1, 1, SX_API_LEGACY, b);
    lua_pushlstring(L, b->data, b->len);
    return 1;
}

/* sendx.encode_track(changes) -> the legacy JSON body; no network */
static int l_encode_track(lua_State *L)
{
    sx_buf *b = scratch(L);
    sx_encode_track(L, 1, 1, NULL, 0, b);
    lua_pushlstring(L, b->data, b->len);
    return 1;
}

static int l_buffer_gc(lua_State *L)
{
    sx_buf_free(luaL_checkudata(L, 1, BUFFER_MT));
    return 0;
}

/* ---------------------------------------------------------------------------
 * The OpenResty bridge: what src/sendx/resty.lua needs to send requests over
 * nginx cosockets with this module's validation, encoder, retry policy and
 * results. Handed to that file only, never put in the module table.
 * ------------------------------------------------------------------------ */

/* bridge.default() -> the module's default client */
static int l_bridge_default(lua_State *L)
{
    lua_settop(L, 0);
    push_default(L);
    check_client_at(L, -1, 2);
    return 1;
}

/* bridge.target(client) -> table: where and how this client connects */
static int l_bridge_target(lua_State *L)
{
    sx_client *c = check_client(L, 1);
    CURLU *u = curl_url();
    char *host = NULL, *port = NULL, *scheme = NULL;
    int ok = u != NULL && curl_url_set(u, CURLUPART_URL, c->base.data, 0) == CURLUE_OK &&
             curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
             curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
             curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) == CURLUE_OK;
    if (ok) {
        lua_createtable(L, 0, 12);
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
    if (!ok)
        return MEMERR(L);
    lua_pushlstring(L, c->base.data + c->path_off, c->base.len - c->path_off);
    lua_setfield(L, -2, "base_path");
    lua_pushlstring(L, c->auth.data, c->auth.len);
    lua_setfield(L, -2, "auth");
    lua_pushlstring(L, c->ua.data, c->ua.len);
    lua_setfield(L, -2, "user_agent");
    lua_pushinteger(L, c->timeout_ms);
    lua_setfield(L, -2, "timeout_ms");
    lua_pushinteger(L, c->connect_timeout_ms);
    lua_setfield(L, -2, "connect_timeout_ms");
    lua_pushinteger(L, c->conn.retries);
    lua_setfield(L, -2, "retries");
    lua_pushboolean(L, c->has_ca_file);
    lua_setfield(L, -2, "ca_file");
    lua_pushboolean(L, c->has_proxy);
    lua_setfield(L, -2, "proxy");
    lua_pushinteger(L, c->aopts.max_queue);
    lua_setfield(L, -2, "max_queue");
    lua_pushinteger(L, c->aopts.max_in_flight);
    lua_setfield(L, -2, "max_in_flight");
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
    sx_client *c = check_client_at(L, 1, 2);
    int arg = lua_toboolean(L, 3) ? SX_ARG_IDENTIFY_ASYNC(1) : SX_ARG_IDENTIFY(1);
    int incr = sx_encode_identify(L, 2, arg, c->api, &c->body);
    build_url(L, c, "identify", NULL, 0);
    push_path(L, c);
    lua_pushlstring(L, c->body.data, c->body.len);
    lua_pushboolean(L, !incr);
    return 3;
}

/* bridge.track(client, email, changes [, async]) -> path, body */
static int l_bridge_track(lua_State *L)
{
    sx_client *c = check_client_at(L, 1, 2);
    int async = lua_toboolean(L, 4);
    size_t elen;
    const char *email = sx_check_email(L, 2, async ? SX_ARG_TRACK_ASYNC(1) : SX_ARG_TRACK(1), &elen);
    sx_encode_track(L, 3, async ? SX_ARG_TRACK_ASYNC(2) : SX_ARG_TRACK(2),
                    c->api == SX_API_REST ? email : NULL, elen, &c->body);
    build_url(L, c, "track", email, elen);
    push_path(L, c);
    lua_pushlstring(L, c->body.data, c->body.len);
    return 2;
}

static const char *const bridge_kinds[] = { "ok", "network", "timeout", "tls", "too_large", NULL };

/* bridge.outcome(kind, status, body, message, attempts, retryable) -> the
 * call's results. kind "ok" means a response came; its status decides. */
static int l_bridge_outcome(lua_State *L)
{
    static const sx_kind kinds[] = { SX_OK, SX_NETWORK, SX_TIMEOUT, SX_TLS, SX_HTTP };
    sx_result r;
    int k = luaL_checkoption(L, 1, NULL, bridge_kinds);
    memset(&r, 0, sizeof r);
    r.kind = kinds[k];
    r.status = (long)luaL_optinteger(L, 2, 0);
    r.code = k == 4 ? CURLE_WRITE_ERROR : CURLE_OK;
    if (k == 0 && !(r.status >= 200 && r.status < 300))
        r.kind = SX_HTTP;
    r.message = luaL_optstring(L, 4, NULL);
    r.attempts = (int)luaL_checkinteger(L, 5);
    r.retryable = lua_toboolean(L, 6);
    lua_settop(L, 6); /* argument 4 stays: r.message points into it */
    return push_result(L, 3, &r);
}

/* bridge.retryable(kind, status, not_sent, idempotent) -> boolean */
static int l_bridge_retryable(lua_State *L)
{
    static const sx_kind kinds[] = { SX_OK, SX_NETWORK, SX_TIMEOUT, SX_TLS, SX_HTTP };
    int k = luaL_checkoption(L, 1, NULL, bridge_kinds);
    long status = (long)luaL_optinteger(L, 2, 0);
    sx_kind kind = k == 0 && !(status >= 200 && status < 300) ? SX_HTTP : kinds[k];
    lua_pushboolean(L, k != 4 && kind != SX_OK &&
                           sx_retryable(kind, status, lua_toboolean(L, 3), lua_toboolean(L, 4)));
    return 1;
}

/* bridge.backoff(client, attempt, retry_after) -> seconds to wait before
 * the next attempt; retry_after is the response's header value, or nil */
static int l_bridge_backoff(lua_State *L)
{
    /* not check_client: a call in flight may outlive a close or configure */
    sx_client *c = luaL_checkudata(L, 1, CLIENT_MT);
    int attempt = (int)luaL_checkinteger(L, 2);
    size_t len = 0;
    const char *ra = luaL_optlstring(L, 3, NULL, &len);
    long ms = sx_backoff_ms(attempt, ra ? sx_retry_after_ms(ra, len) : -1,
                            c->conn.max_retry_wait_ms, &c->conn.rng);
    lua_pushnumber(L, (lua_Number)ms / 1000.0);
    return 1;
}

static const luaL_Reg bridge_functions[] = {
    { "default", l_bridge_default },
    { "target", l_bridge_target },
    { "identify", l_bridge_identify },
    { "track", l_bridge_track },
    { "outcome", l_bridge_outcome },
    { "retryable", l_bridge_retryable },
    { "backoff", l_bridge_backoff },
    { NULL, NULL },
};

/* Inside nginx (an `ngx` table with cosockets), hands the module table, the
 * client methods and the bridge to sendx.resty, which installs the
 * non-blocking calls. Expects the module table on top, upvalues below it. */
static void install_resty(lua_State *L)
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
    lua_newtable(L);
    lua_pushvalue(L, module - 2); /* the shared upvalues */
    lua_pushvalue(L, module - 1);
    luaL_setfuncs(L, bridge_functions, 2);
    lua_call(L, 3, 0);
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
    { NULL, NULL },
};

/* Pushes the two shared upvalues: the scratch buffer and cjson's decode. */
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

SENDX_EXPORT int luaopen_sendx(lua_State *L);
SENDX_EXPORT int luaopen_sendx(lua_State *L)
{
    if (sx_transport_global_init() != 0)
        return luaL_error(L, "sendx: curl_global_init failed");
    push_upvalues(L);
    create_metatable(L);
    lua_newtable(L);
    lua_pushvalue(L, -3);
    lua_pushvalue(L, -3);
    luaL_setfuncs(L, module_functions, 2);
    lua_pushliteral(L, SENDX_VERSION);
    lua_setfield(L, -2, "version");
    install_resty(L);
    return 1;
}
