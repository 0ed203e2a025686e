/*
 * options.h - the options of sendx.new and sendx.configure, from one list.
 *
 * SX_OPTIONS is the only place an option is declared: its name, type, range,
 * default and environment variable. The accepted names, the "did you mean"
 * suggestions, the reading and checking, the defaults and the fields of
 * sx_config all derive from it; adding an option is one line here (and using
 * it where it matters).
 */
#ifndef SENDX_OPTIONS_H
#define SENDX_OPTIONS_H

#include <lua.h>
#include "encode.h" /* sx_api */
#include "policy.h" /* SX_MAX_RETRY_WAIT_MS */

/* Types: STRING (non-empty, no CR, LF or NUL), API ('legacy' or 'rest'),
 * SECONDS (a number within [min, max], kept in ms: sx_config.NAME_ms),
 * INTEGER (within [min, max]), FUNCTION, SYNC ('normal' or 'full'), BOOLEAN. Defaults are in seconds for
 * SECONDS; strings have none (NULL). env: the variable sendx.configure falls
 * back to when the option is absent (0: none). The order is the order of the
 * suggestions (the first of equally near names wins) and of the checks. */
#define SX_OPTIONS(X)                                                                  \
    /* name          type      min    max         default                env */       \
    X(api_key,         STRING,   0,     0,          0,                     "SENDX_API_KEY") \
    X(team_id,         STRING,   0,     0,          0,                     "SENDX_TEAM_ID") \
    X(base_url,        STRING,   0,     0,          0,                     "SENDX_BASE_URL") \
    X(api,             API,      0,     0,          SX_API_LEGACY,         0)          \
    X(timeout,         SECONDS,  0.001, 3600,       10,                    0)          \
    X(connect_timeout, SECONDS,  0.001, 3600,       3,                     0)          \
    X(retries,         INTEGER,  0,     10,         2,                     0)          \
    X(user_agent,      STRING,   0,     0,          0,                     0)          \
    X(ca_file,         STRING,   0,     0,          0,                     0)          \
    X(proxy,           STRING,   0,     0,          0,                     0)          \
    X(max_retry_wait,  SECONDS,  0,     30,   SX_MAX_RETRY_WAIT_MS / 1000.0, 0)        \
    X(max_queue,       INTEGER,  1,     1000000,    10000,                 0)          \
    X(max_in_flight,   INTEGER,  1,     64,         16,                    0)          \
    X(max_queue_bytes, INTEGER,  1024,  1073741824, 16777216,              0)          \
    X(on_error,        FUNCTION, 0,     0,          0,                     0)          \
    X(pool_size,       INTEGER,  1,     10000,      32,                    0)          \
    X(spool,           STRING,   0,     0,          0,                     "SENDX_SPOOL") \
    X(spool_max_bytes, INTEGER,  65536, 1099511627776.0, 268435456,        0)          \
    X(spool_max_age,   SECONDS,  1,     31536000,   604800,                0)          \
    X(spool_sync,      SYNC,     0,     0,          0,                     0)          \
    X(spool_deliver,   BOOLEAN,  0,     0,          1,                     0)          \
    X(log,             FUNCTION, 0,     0,          0,                     0)          \
    X(log_bodies,      BOOLEAN,  0,     0,          0,                     0)

/* SX_OPT_api_key, ...: an option's place in the list. */
#define SX_OPT_ENUM(name, type, min, max, def, env) SX_OPT_##name,
enum sx_option { SX_OPTIONS(SX_OPT_ENUM) SX_OPT_COUNT };
#undef SX_OPT_ENUM

/* The C type each option type is kept as. */
#define SX_OPT_FIELD_STRING(name) const char *name;
#define SX_OPT_FIELD_API(name) sx_api name;
#define SX_OPT_FIELD_SECONDS(name) long name##_ms;
#define SX_OPT_FIELD_INTEGER(name) long name;
#define SX_OPT_FIELD_FUNCTION(name) int name; /* 1 when given (it stays in the table) */
#define SX_OPT_FIELD_SYNC(name) int name;     /* 1: 'full', 0: 'normal' */
#define SX_OPT_FIELD_BOOLEAN(name) int name;
#define SX_OPT_FIELD(name, type, min, max, def, env) SX_OPT_FIELD_##type(name)

/* The options of one client, read and checked. Strings point into the
 * options table (or the environment): valid while that table is. */
typedef struct sx_config {
    SX_OPTIONS(SX_OPT_FIELD)
    const char *from[SX_OPT_COUNT]; /* where each came from: its name or its variable */
    int plain_http;                 /* base_url is http:// (loopback) */
} sx_config;

/* Reads and checks the options table at idx (argument `arg`; 0 for plain
 * errors), which may be nil when use_env; a nil is replaced by an empty
 * table. use_env: absent options fall back to their environment variables.
 * Checks the names, the types and ranges, the URLs, the proxy and the CA
 * file. Raises on any problem. [-0, +0] */
void sx_read_config(lua_State *L, int idx, int arg, int use_env, sx_config *cfg);

/* Pushes the option `name` of the options table at idx (nil when absent);
 * returns whether it is present. [-0, +1] */
int sx_get_option(lua_State *L, int idx, const char *name);

#endif
