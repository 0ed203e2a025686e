/*
 * client.h - private to the module glue: the client object (struct
 * sx_client, the userdata behind "sendx.client") and the functions that
 * sendx.c, client.c, client_async.c, results.c and bridge.c share.
 */
#ifndef SENDX_CLIENT_H
#define SENDX_CLIENT_H

#include "compat.h"
#include "argcheck.h"
#include "async.h"
#include "encode.h"
#include "transport.h"
#include "options.h"

#define SENDX_VERSION "1.0.0"
#define CLIENT_MT "sendx.client"
#define DEFAULT_KEY "sendx.default" /* registry: the module's default client */
#define BUILD_JOB_KEY "sendx.build_job" /* registry: client_async.c's result builder */
#define BRIDGE_KEY "sendx.bridge"    /* registry: bridge.c's table of functions */
#define MODULE_KEY "sendx.module"    /* registry: the module table */

/* Upvalues shared by every module function and method (and the bridge). */
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
    int custom_ua;       /* ua is the user_agent option's */
    size_t path_off;     /* where the path starts in base ("https://host" before) */
    long timeout_ms, connect_timeout_ms;
    long pool_size;      /* idle keep-alive connections per nginx worker (OpenResty) */
    int has_ca_file, has_proxy;
    sx_async_opts aopts; /* for the background worker, started on first use */
    sx_async *async;
    sx_job *limbo;       /* completed jobs taken from the worker whose callbacks
                          * have not run yet */
    int running;         /* jobs being built by run_done (a callback may nest one) */
    int on_error_ref;    /* on_error option (registry ref), or LUA_NOREF */
    int log_ref;         /* log option (registry ref), or LUA_NOREF */
    int log_bodies;      /* log_bodies option */
    int debug;           /* SENDX_DEBUG: attempts printed to stderr */
    sx_counts sync_counts; /* the synchronous calls (any transport) */
    sx_counts resty_counts; /* the async calls made inside nginx (kinds only) */
    sx_hist hist;        /* latencies of the calls not counted by the worker */
    /* durable delivery (client_spool.c): the caller's connection, NULL: none */
    sx_spool *spool;
    pid_t spool_pid;     /* the process that opened it */
    unsigned long long token; /* this client, in the rows it adds */
    sx_buf spool_path;   /* NUL-terminated; empty: no spool */
    sx_spool_opts sopts;
    int spool_deliver;   /* 0: this client only inspects the spool (no worker) */
    pthread_mutex_t spool_mu; /* the writes of the caller's and the worker's connections */
    int wal_pages;       /* under spool_mu: see sx_spool_opts */
    int has_spool_mu;
    char key_tail[8];    /* what tostring may show of the key */
    const char *missing; /* default client without credentials: why */
} sx_client;

/* ---- client.c: lifecycle, URLs, the synchronous calls ---- */

/* The open client at idx, or an error blamed on the code `level` frames up
 * (1: the caller of this C function; 2: for the OpenResty bridge, whose
 * caller is a Lua wrapper). [-0, +0] */
sx_client *sx_check_client_at(lua_State *L, int idx, int level);
sx_client *sx_check_client(lua_State *L, int idx);
/* The client at idx, open or not; else raise "sendx.client expected ... (use
 * client:method(...))" (method NULL: the name from the debug info). */
sx_client *sx_to_client(lua_State *L, int idx, const char *method);
/* The open client of a method call (argument 1); errors name the method. */
sx_client *sx_check_method(lua_State *L, const char *method);

/* Pushes a new client built from the options table at idx. With `lazy`
 * (the module's default client) missing credentials are reported when the
 * client is used, not now, and absent options come from the environment.
 * [-0, +1] */
sx_client *sx_client_new(lua_State *L, int idx, int arg, int lazy);

/* Frees every resource of c (worker, jobs, libcurl, buffers); idempotent.
 * [-0, +0] */
void sx_client_release(lua_State *L, sx_client *c);

/* Replaces (and closes) the default client by one made from the options at
 * idx; arg 0 reports bad options as plain errors. [-0, +0] */
void sx_set_default(lua_State *L, int idx, int arg);

/* Pushes the default client, configured from the environment on first use.
 * [-0, +1] */
void sx_push_default(lua_State *L);

/* sx_push_default, checked (raises without credentials). [-0, +1] */
sx_client *sx_default_client(lua_State *L);

/* Pushes what tostring(client) shows. [-0, +1] */
void sx_client_describe(lua_State *L, sx_client *c);

/* Builds {base}/contact/{what} in c->url, with team_id (and email) in the
 * query for legacy; returns c->url's text. [-0, +0] */
const char *sx_build_url(lua_State *L, sx_client *c, const char *what, const char *email,
                         size_t email_len);

/* client:identify / client:track with the contact (email, changes) from
 * stack slot arg: pushes res, or nil, message, info. [-0, +1|3] */
int sx_do_identify(lua_State *L, sx_client *c, int arg);
int sx_do_track(lua_State *L, sx_client *c, int arg);

/* ---- client_async.c: the Lua side of the background worker ---- */

/* Lets go of the worker: stopped and freed, or disowned in a forked child.
 * [-0, +0] */
void sx_drop_async(lua_State *L, sx_client *c);

/* identify_async / track_async with the contact (email, changes) from slot
 * arg and the callback after it: pushes true, or nil, "queue full".
 * [-0, +1|2] */
int sx_do_identify_async(lua_State *L, sx_client *c, int arg);
int sx_do_track_async(lua_State *L, sx_client *c, int arg);

/* poll: pushes the number of completed calls, then their callbacks' errors
 * if any. [-0, +1|2] */
int sx_poll_client(lua_State *L, sx_client *c);

/* flush: pushes true, or nil, "timeout"; then the callbacks' errors if any.
 * timeout < 0: no bound. [-0, +1..3] (a table of errors is left below) */
int sx_flush_call(lua_State *L, sx_client *c, double timeout);

/* close, __gc and __close: flush (bounded), stop the worker, report what
 * was cut short as kind "shutdown", release. quiet: no caller to return
 * errors to (nothing is pushed). [-0, +0|1..3] */
int sx_close_client(lua_State *L, sx_client *c, double timeout, int quiet);

/* Counts a finished call made outside the C worker (a sync call, or an
 * async one inside nginx). */
void sx_count_call(sx_client *c, int async, sx_kind final, int attempts, double ms);

/* Pushes { queued, in_flight, sent, failed, retried, dropped, spooled,
 * sync = {...}, kinds = {...}, latency = {...} }. [-0, +1] */
void sx_push_stats(lua_State *L, sx_client *c);

/* The worker's readiness descriptor (the worker is started if need be). */
int sx_client_fd(lua_State *L, sx_client *c);

/* The client's worker, started if need be (after a fork: a fresh one). */
sx_async *sx_ensure_async(lua_State *L, sx_client *c);

/* ---- client_log.c: the request log ---- */

/* Whether c logs its attempts (a log function, or SENDX_DEBUG): 2 with the
 * bodies, 1 without, 0 not at all. */
int sx_log_level(const sx_client *c);

/* Registers the log's protected step; luaopen_sendx calls it. [-0, +0] */
void sx_log_init(lua_State *L);

/* Hands the records of one call to url (their answers are freed) to the log
 * function and to stderr under SENDX_DEBUG; errors the log raises go to
 * stderr. body: the request, for log_bodies. Never raises. [-0, +0] */
void sx_log_call(lua_State *L, sx_client *c, const char *url, const char *body, size_t len,
                 sx_attempt_rec *recs, int n);

/* ---- client_spool.c: the Lua side of the durable spool ---- */

/* Registers the protected step that lists dead letters; luaopen_sendx calls
 * it. [-0, +0] */
void sx_spool_lua_init(lua_State *L);

/* Opens the spool the options name (raises when it cannot). [-0, +0] */
void sx_open_spool(lua_State *L, sx_client *c, const char *path, const sx_config *o);

/* The caller's spool connection (reopened in a forked child), or NULL. */
sx_spool *sx_caller_spool(lua_State *L, sx_client *c);

/* The worker's options for the spool: a connection of its own. [-0, +0] */
void sx_worker_spool(lua_State *L, sx_client *c, sx_async_opts *o);

/* Commits the call in c->url/c->body (op, the contact's email) with the
 * callback at cb: pushes true, or nil, message. [-0, +1|2] */
int sx_spool_submit(lua_State *L, sx_client *c, sx_async *a, const char *op, const char *email,
                    size_t elen, int cb, int idempotent);

/* The client lets go: its calls stay on disk for others, their callbacks
 * are released. [-0, +0] */
void sx_close_spool(lua_State *L, sx_client *c);

/* client:spool_stats(), dead_letters([limit]), retry_dead([ids]),
 * purge_dead([ids]) on the client at slot 1. */
int sx_do_spool_stats(lua_State *L, sx_client *c);
int sx_do_dead_letters(lua_State *L, sx_client *c);
int sx_do_retry_dead(lua_State *L, sx_client *c);
int sx_do_purge_dead(lua_State *L, sx_client *c);

/* ---- bridge.c ---- */

/* sendx.recorder([options]) -> a recorder (src/sendx/recorder.lua, given
 * the module and the bridge). A module function: the shared upvalues. */
int sx_recorder(lua_State *L);

/* Inside nginx, hands the module to sendx.resty (see bridge.c). Expects the
 * module table on top, the two shared upvalues below it. [-0, +0] */
void sx_install_resty(lua_State *L);

#endif
