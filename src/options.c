/*
 * options.c - reading and checking the options of sendx.new and
 * sendx.configure (listed once, in options.h), the environment fallback of
 * sendx.configure, and the checks that need more than a type: base_url, the
 * proxy, the CA file.
 */
#include "options.h"
#include "argcheck.h"
#include "compat.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <sys/stat.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef enum opt_type { OPT_STRING, OPT_API, OPT_SECONDS, OPT_INTEGER, OPT_FUNCTION, OPT_SYNC, OPT_BOOLEAN } opt_type;

typedef struct opt_desc {
    const char *name;
    opt_type type;
    double min, max, def;
    const char *env; /* NULL: none */
    size_t offset;   /* of the field in sx_config */
} opt_desc;

#define OPT_OFFSET_STRING(name) offsetof(sx_config, name)
#define OPT_OFFSET_API(name) offsetof(sx_config, name)
#define OPT_OFFSET_SECONDS(name) offsetof(sx_config, name##_ms)
#define OPT_OFFSET_INTEGER(name) offsetof(sx_config, name)
#define OPT_OFFSET_FUNCTION(name) offsetof(sx_config, name)
#define OPT_OFFSET_SYNC(name) offsetof(sx_config, name)
#define OPT_OFFSET_BOOLEAN(name) offsetof(sx_config, name)
#define OPT_DESC(name, type, min, max, def, env) \
    { #name, OPT_##type, (min), (max), (def), (env), OPT_OFFSET_##type(name) },
#define OPT_NAME(name, type, min, max, def, env) #name,

static const opt_desc option_list[] = { SX_OPTIONS(OPT_DESC) };
static const char *const option_names[] = { SX_OPTIONS(OPT_NAME) NULL };

SX_STATIC_ASSERT(sizeof option_list / sizeof option_list[0] == SX_OPT_COUNT, one_desc_per_option);

int sx_get_option(lua_State *L, int idx, const char *name)
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

/* The string option, or NULL when absent. [-0, +0] */
static const char *opt_string(lua_State *L, int idx, int arg, const char *name)
{
    size_t len;
    const char *s;
    if (!sx_get_option(L, idx, name)) {
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

/* The option, or else (for the module's defaults) its environment variable,
 * checked the same way; *from names where it came from. [-0, +0] */
static const char *opt_or_env(lua_State *L, int idx, int arg, const opt_desc *d, int use_env,
                              const char **from)
{
    const char *v = opt_string(L, idx, arg, d->name), *e;
    *from = d->name;
    if (v != NULL || !use_env || d->env == NULL || (e = getenv(d->env)) == NULL || *e == '\0')
        return v;
    *from = d->env;
    return check_text(L, arg, d->env, e, strlen(e));
}

/* A number of seconds within [min, max], as milliseconds. [-0, +0] */
static long opt_seconds(lua_State *L, int idx, int arg, const opt_desc *d)
{
    double v;
    if (!sx_get_option(L, idx, d->name)) {
        lua_pop(L, 1);
        return (long)(d->def * 1000.0);
    }
    v = lua_type(L, -1) == LUA_TNUMBER ? (double)lua_tonumber(L, -1) : -1.0;
    if (!(v >= d->min && v <= d->max))
        sx_argerror(L, arg, "%s: expected a number of seconds %s %d", d->name,
                    d->min > 0 ? "above 0, at most" : "from 0 to", (int)d->max);
    lua_pop(L, 1);
    return v > 0 && v < 0.001 ? 1 : (long)(v * 1000.0);
}

/* An integer within [min, max]. [-0, +0] */
static long opt_integer(lua_State *L, int idx, int arg, const opt_desc *d)
{
    double v = d->def;
    if (sx_get_option(L, idx, d->name)) {
        v = lua_type(L, -1) == LUA_TNUMBER ? (double)lua_tonumber(L, -1) : -1.0;
        if (!(v >= d->min && v <= d->max) || v != (double)(long)v) {
            char range[64];
            snprintf(range, sizeof range, "from %.0f to %.0f", d->min, d->max);
            sx_argerror(L, arg, "%s: expected an integer %s", d->name, range);
        }
    }
    lua_pop(L, 1);
    return (long)v;
}

/* 'legacy' (the default) or 'rest'. [-0, +0] */
static sx_api opt_api(lua_State *L, int idx, int arg, const opt_desc *d)
{
    const char *s = opt_string(L, idx, arg, d->name);
    if (s == NULL || strcmp(s, "legacy") == 0)
        return SX_API_LEGACY;
    if (strcmp(s, "rest") == 0)
        return SX_API_REST;
    return (sx_api)sx_argerror(L, arg, "api: expected 'legacy' or 'rest', got '%s'", s);
}

/* spool_sync: 'normal' (the default: survives a crash of the process) or
 * 'full' (survives power loss). [-0, +0] */
static int opt_sync(lua_State *L, int idx, int arg, const opt_desc *d)
{
    const char *s = opt_string(L, idx, arg, d->name);
    if (s == NULL || strcmp(s, "normal") == 0)
        return 0;
    if (strcmp(s, "full") == 0)
        return 1;
    return sx_argerror(L, arg, "%s: expected 'normal' or 'full', got '%s'", d->name, s);
}

/* true or false (absent: the default). [-0, +0] */
static int opt_boolean(lua_State *L, int idx, int arg, const opt_desc *d)
{
    int v = d->def != 0;
    if (sx_get_option(L, idx, d->name)) {
        if (!lua_isboolean(L, -1))
            sx_argerror(L, arg, "%s: expected boolean, got %s", d->name, luaL_typename(L, -1));
        v = lua_toboolean(L, -1);
    }
    lua_pop(L, 1);
    return v;
}

/* 1 when a function is given, 0 when absent. [-0, +0] */
static int opt_function(lua_State *L, int idx, int arg, const opt_desc *d)
{
    int given = sx_get_option(L, idx, d->name);
    if (given && !lua_isfunction(L, -1))
        sx_argerror(L, arg, "%s: expected function, got %s", d->name, luaL_typename(L, -1));
    lua_pop(L, 1);
    return given;
}

/* Reads option d into its field of cfg. [-0, +0] */
static void read_option(lua_State *L, int idx, int arg, int use_env, const opt_desc *d,
                        sx_config *cfg)
{
    char *field = (char *)cfg + d->offset;
    const char **from = &cfg->from[d - option_list];
    *from = d->name;
    switch (d->type) {
    case OPT_STRING:
        *(const char **)(void *)field = opt_or_env(L, idx, arg, d, use_env, from);
        break;
    case OPT_API:
        *(sx_api *)(void *)field = opt_api(L, idx, arg, d);
        break;
    case OPT_SECONDS:
        *(long *)(void *)field = opt_seconds(L, idx, arg, d);
        break;
    case OPT_INTEGER:
        *(long *)(void *)field = opt_integer(L, idx, arg, d);
        break;
    case OPT_FUNCTION:
        *(int *)(void *)field = opt_function(L, idx, arg, d);
        break;
    case OPT_SYNC:
        *(int *)(void *)field = opt_sync(L, idx, arg, d);
        break;
    case OPT_BOOLEAN:
        *(int *)(void *)field = opt_boolean(L, idx, arg, d);
        break;
    }
}

/* Every key of the options table at idx must name an option. [-0, +0] */
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
static void check_config(lua_State *L, int arg, sx_config *cfg)
{
    const char *why;
    FILE *f;
    cfg->plain_http = 0;
    if (cfg->base_url != NULL && (why = base_url_problem(cfg->base_url, &cfg->plain_http)) != NULL)
        sx_argerror(L, arg, "%s: %s", cfg->from[SX_OPT_base_url], why);
    /* plain http is allowed so that the key never leaves the machine in clear:
     * a proxy elsewhere would defeat that */
    if (cfg->plain_http && cfg->proxy != NULL && proxy_on_loopback(cfg->proxy) != 1)
        sx_argerror(L, arg, "proxy: must be on loopback when base_url is plain http");
    if (cfg->ca_file != NULL) {
        struct stat st;
        if (stat(cfg->ca_file, &st) == 0 && !S_ISREG(st.st_mode))
            sx_argerror(L, arg, "ca_file: '%s' is not a file (a PEM bundle of CA certificates)",
                        cfg->ca_file);
        if ((f = fopen(cfg->ca_file, "rb")) != NULL)
            fclose(f);
        else
            sx_argerror(L, arg, "ca_file: cannot open '%s'", cfg->ca_file);
    }
}

/* Replaces the table at idx by a shallow copy that only this call sees: the
 * strings sx_config points to stay referenced even if a finalizer (run by
 * any allocation) clears or changes the caller's table. [-0, +0] */
static void private_copy(lua_State *L, int idx)
{
    lua_newtable(L);
    lua_pushnil(L);
    while (lua_next(L, idx) != 0) {
        lua_pushvalue(L, -2);
        lua_insert(L, -2);
        lua_rawset(L, -4);
    }
    lua_replace(L, idx);
}

void sx_read_config(lua_State *L, int idx, int arg, int use_env, sx_config *cfg)
{
    size_t i;
    idx = lua_absindex(L, idx);
    if (lua_isnoneornil(L, idx) && use_env) {
        lua_newtable(L);
        lua_replace(L, idx);
    }
    if (!lua_istable(L, idx))
        sx_argerror(L, arg, "options: expected table, got %s", luaL_typename(L, idx));
    private_copy(L, idx);
    check_option_names(L, idx, arg);
    memset(cfg, 0, sizeof *cfg);
    for (i = 0; i < SX_OPT_COUNT; i++)
        read_option(L, idx, arg, use_env, &option_list[i], cfg);
    check_config(L, arg, cfg);
}
