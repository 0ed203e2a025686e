/*
 * client_async.c - asynchronous delivery, the Lua side of src/async.c:
 * starting the client's worker, queueing identify_async/track_async calls,
 * running their callbacks in poll/flush/close, stats and the readiness fd.
 * Lua is only ever entered here, on the caller's thread.
 */
#include "client.h"
#include "results.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Jobs not handed back are freed with their callbacks. */
void sx_drop_async(lua_State *L, sx_client *c)
{
    sx_async *a = c->async;
    sx_job *j;
    if (a == NULL)
        return;
    c->async = NULL;
    if (sx_async_pid(a) != getpid()) {
        sx_async_disown(a);
        return;
    }
    sx_async_stop(a);
    while ((j = sx_async_take(a)) != NULL) {
        luaL_unref(L, LUA_REGISTRYINDEX, j->ref);
        sx_job_free(j);
    }
    sx_async_free(a);
}

/* The client's worker, started on first use; in a forked child the parent's
 * is let go and a fresh one started (see sx_drop_async). */
sx_async *sx_ensure_async(lua_State *L, sx_client *c)
{
    if (c->async != NULL && sx_async_pid(c->async) != getpid())
        sx_drop_async(L, c);
    if (c->async == NULL) {
        sx_worker_spool(L, c, &c->aopts); /* its own connection, when there is a spool */
        if (sx_conn_after_fork(&c->conn) != 0 ||
            (c->async = sx_async_new(c->conn.curl, &c->aopts)) == NULL)
            luaL_error(L, "sendx: the background worker could not be started");
    }
    return c->async;
}

/* ---------------------------------------------------------------------------
 * Queueing
 * ------------------------------------------------------------------------ */

/* Queues the request built in c->url and c->body, with the callback at cb
 * (nil or none: no callback); with a spool, commits it there (op and the
 * contact's email go with it). Pushes true, or nil, "queue full" (or "too
 * large for max_queue_bytes"). [-0, +1|2] */
static int submit(lua_State *L, sx_client *c, int cb, int idempotent, const char *op,
                  const char *email, size_t elen)
{
    sx_async *a;
    int ref = LUA_NOREF, rc;
    sx_job *j;
    if (c->spool_path.len > 0 && !c->spool_deliver)
        return luaL_error(L, "sendx: this client only inspects its spool (spool_deliver = false)");
    a = sx_ensure_async(L, c);
    if (c->spool_path.len > 0)
        return sx_spool_submit(L, c, a, op, email, elen, cb, idempotent);
    if (!lua_isnoneornil(L, cb)) {
        lua_pushvalue(L, cb);
        ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    j = sx_job_new(c->url.data, c->body.data, c->body.len, idempotent);
    sx_buf_shrink(&c->body);
    sx_buf_shrink(&c->url);
    if (j == NULL) {
        luaL_unref(L, LUA_REGISTRYINDEX, ref);
        return MEMERR(L);
    }
    j->ref = ref;
    /* else nobody reads its results: only counted */
    j->keep = ref != LUA_NOREF || sx_log_level(c) > 0;
    if ((rc = sx_async_submit(a, j)) != 0) {
        luaL_unref(L, LUA_REGISTRYINDEX, ref);
        sx_job_free(j);
        lua_pushnil(L);
        lua_pushstring(L, rc == SX_SUBMIT_TOO_LARGE ? SX_MSG_TOO_LARGE_FOR_QUEUE
                          : rc == SX_SUBMIT_CLOSING ? SX_MSG_CLOSING : SX_MSG_QUEUE_FULL);
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

int sx_do_identify_async(lua_State *L, sx_client *c, int arg)
{
    int incr;
    size_t elen = 0;
    const char *email;
    check_callback(L, arg + 1);
    lua_settop(L, arg + 1); /* the callback's slot exists: the email goes above it */
    incr = sx_encode_identify(L, arg, arg, c->api, &c->body);
    sx_build_url(L, c, "identify", NULL, 0);
    lua_pushliteral(L, "email"); /* checked by the encoder; kept on the stack */
    lua_rawget(L, arg);
    email = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &elen) : "";
    return submit(L, c, arg + 1, !incr, "identify", email, elen);
}

int sx_do_track_async(lua_State *L, sx_client *c, int arg)
{
    size_t elen;
    const char *email = sx_check_email(L, arg, arg, &elen);
    check_callback(L, arg + 2);
    sx_encode_track(L, arg + 1, arg + 1, c->api == SX_API_REST ? email : NULL, elen, &c->body);
    sx_build_url(L, c, "track", email, elen);
    return submit(L, c, arg + 2, 1, "track", email, elen);
}

/* ---------------------------------------------------------------------------
 * Callbacks
 * ------------------------------------------------------------------------ */

/* A callback raised the error on top: on_error gets it, else it goes to the
 * table at errs (or to stderr when errs is 0). [-1, +0] */
static void report_error(lua_State *L, sx_client *c, int errs)
{
    if (c->on_error_ref != LUA_NOREF) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, c->on_error_ref);
        lua_insert(L, -2);
        if (sx_call_user(L, 1) == 0)
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

/* build_job(job) -> callback, results: in a protected call (with the
 * module's upvalues: sx_push_result decodes with UV_DECODE). */
static int build_job(lua_State *L)
{
    sx_job *j = lua_touserdata(L, 1);
    int n;
    lua_settop(L, 0);
    lua_rawgeti(L, LUA_REGISTRYINDEX, j->ref); /* nil for LUA_NOREF */
    if (j->response != NULL)
        lua_pushlstring(L, j->response, j->response_len);
    else
        lua_pushnil(L);
    n = sx_push_result(L, 2, &j->r);
    lua_remove(L, 2); /* the raw body */
    return 1 + n;
}

/* Pushes build_job, made once per Lua state. [-0, +1] */
static void push_builder(lua_State *L)
{
    lua_getfield(L, LUA_REGISTRYINDEX, BUILD_JOB_KEY);
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_pushvalue(L, lua_upvalueindex(1));
        lua_pushvalue(L, lua_upvalueindex(2));
        lua_pushcclosure(L, build_job, 2);
        lua_pushvalue(L, -1);
        lua_setfield(L, LUA_REGISTRYINDEX, BUILD_JOB_KEY);
    }
}

/* The next completed call whose callback is due: one left in limbo by an
 * error, else one from the worker (put in limbo until its callback runs,
 * so that an error escaping from here loses nothing: the next poll, flush
 * or close takes it again). */
static sx_job *next_job(sx_client *c)
{
    sx_job *j;
    for (j = c->limbo; j != NULL; j = j->next)
        if (!j->claimed)
            return j;
    if (c->async == NULL || sx_async_pid(c->async) != getpid() ||
        (j = sx_async_take(c->async)) == NULL)
        return NULL;
    j->next = c->limbo;
    c->limbo = j;
    return j;
}

/* Runs the callbacks of completed calls, one job at a time (a callback may
 * poll, queue or close). Every call's callback runs exactly once: the
 * results are built in a protected call, again when a finalizer's error
 * (Lua 5.1-5.3 and LuaJIT raise them at the allocation) cut it short.
 * Returns how many calls completed. [-0, +0] */
static int run_done(lua_State *L, sx_client *c, int errs)
{
    int n = 0;
    sx_job *j;
    while ((j = next_job(c)) != NULL) {
        int base = lua_gettop(L), tries = 0, ref = j->ref;
        int recovered = j->spool_id != 0 && !j->mine; /* from the spool, made elsewhere */
        j->claimed = 1;
        c->running++; /* close leaves a claimed job alone */
        push_builder(L);
        lua_pushlightuserdata(L, j);
        while (lua_pcall(L, 1, LUA_MULTRET, 0) != 0) {
            if (++tries == 8) { /* not a finalizer: out of memory */
                j->claimed = 0;
                c->running--;
                lua_error(L);
            }
            lua_settop(L, base);
            push_builder(L);
            lua_pushlightuserdata(L, j);
        }
        c->running--;
        unlink_limbo(c, j);
        if (j->nrecs > 0) {
            sx_attempt_rec *recs = j->recs;
            int nrecs = j->nrecs;
            j->recs = NULL; /* the log frees their answers */
            j->nrecs = 0;
            sx_log_call(L, c, j->url, j->body, j->len, recs, nrecs);
            free(recs);
        }
        sx_job_free(j);
        luaL_unref(L, LUA_REGISTRYINDEX, ref);
        n++;
        if (!lua_isnil(L, base + 1)) {
            if (sx_call_user(L, lua_gettop(L) - base - 1) != 0)
                report_error(L, c, errs);
        } else if (recovered && c->on_error_ref != LUA_NOREF && lua_gettop(L) >= base + 4) {
            /* a call recovered from the spool failed: on_error(message, info) */
            lua_rawgeti(L, LUA_REGISTRYINDEX, c->on_error_ref);
            lua_pushvalue(L, base + 3);
            lua_pushvalue(L, base + 4);
            if (sx_call_user(L, 2) != 0)
                report_error(L, c, errs);
        }
        lua_settop(L, base);
    }
    return n;
}

/* ---------------------------------------------------------------------------
 * poll, flush, close
 * ------------------------------------------------------------------------ */

/* Pushes true, or nil, "timeout"; then the table at errs when not empty.
 * [-0, +1..3] */
static int flush_client(lua_State *L, sx_client *c, double timeout, int errs)
{
    double deadline = timeout >= 0 ? now_seconds() + timeout : 0;
    int nret;
    if (c->async != NULL && sx_async_pid(c->async) != getpid())
        sx_drop_async(L, c); /* a forked child: the parent's calls are the parent's to send */
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

int sx_flush_call(lua_State *L, sx_client *c, double timeout)
{
    int errs, n;
    lua_newtable(L);
    errs = lua_gettop(L);
    n = flush_client(L, c, timeout, errs);
    lua_remove(L, errs);
    return n;
}

int sx_close_client(lua_State *L, sx_client *c, double timeout, int quiet)
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
    sx_client_release(L, c);
    if (quiet) {
        lua_settop(L, top); /* callers such as sx_set_default keep using the stack */
        return 0;
    }
    if (nret == 0) { /* nothing was queued */
        lua_pushboolean(L, 1);
        nret = 1;
    }
    lua_remove(L, errs);
    return nret;
}

int sx_poll_client(lua_State *L, sx_client *c)
{
    int errs, n;
    lua_newtable(L);
    errs = lua_gettop(L);
    n = c->async != NULL && sx_async_pid(c->async) == getpid() ? run_done(L, c, errs) : 0;
    lua_pushinteger(L, n);
    if (lua_rawlen(L, errs) == 0) {
        lua_remove(L, errs);
        return 1;
    }
    lua_insert(L, errs); /* count, errors */
    return 2;
}

/* ---------------------------------------------------------------------------
 * stats, fd
 * ------------------------------------------------------------------------ */

void sx_count_call(sx_client *c, int async, sx_kind final, int attempts, double ms)
{
    sx_counts_add(async ? &c->resty_counts : &c->sync_counts, final, attempts);
    sx_hist_add(&c->hist, ms);
}

static void set_int(lua_State *L, const char *k, lua_Integer v)
{
    lua_pushinteger(L, v);
    lua_setfield(L, -2, k);
}

/* Pushes { network = n, ... }: the failed calls of k by kind (kinds with
 * none left out). [-0, +1] */
static void push_kinds(lua_State *L, const sx_counts *k)
{
    int i;
    lua_newtable(L);
    for (i = 0; i < SX_KIND_COUNT; i++)
        if (k->kinds[i] > 0)
            set_int(L, sx_kind_name((sx_kind)i), k->kinds[i]);
}

/* Sets sync, kinds and latency in the table on top. [-0, +0] */
static void push_metrics(lua_State *L, sx_client *c)
{
    sx_counts async;
    sx_hist hist = c->hist;
    memset(&async, 0, sizeof async);
    sx_counts_merge(&async, &c->resty_counts);
    if (c->async != NULL && sx_async_pid(c->async) == getpid())
        sx_async_metrics(c->async, &async, &hist);
    lua_createtable(L, 0, 5);
    set_int(L, "calls", c->sync_counts.calls);
    set_int(L, "ok", c->sync_counts.ok);
    set_int(L, "failed", c->sync_counts.failed);
    set_int(L, "retried", c->sync_counts.retried);
    push_kinds(L, &c->sync_counts);
    lua_setfield(L, -2, "kinds");
    lua_setfield(L, -2, "sync");
    push_kinds(L, &async);
    lua_setfield(L, -2, "kinds");
    lua_createtable(L, 0, 5);
    set_int(L, "count", (lua_Integer)hist.count);
    lua_pushnumber(L, sx_hist_quantile(&hist, 0.50));
    lua_setfield(L, -2, "p50");
    lua_pushnumber(L, sx_hist_quantile(&hist, 0.90));
    lua_setfield(L, -2, "p90");
    lua_pushnumber(L, sx_hist_quantile(&hist, 0.99));
    lua_setfield(L, -2, "p99");
    lua_pushnumber(L, hist.max_ms);
    lua_setfield(L, -2, "max");
    lua_setfield(L, -2, "latency");
}

void sx_push_stats(lua_State *L, sx_client *c)
{
    sx_stats st;
    memset(&st, 0, sizeof st);
    if (c->async != NULL && sx_async_pid(c->async) == getpid())
        sx_async_stats(c->async, &st);
    lua_createtable(L, 0, 10);
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
    lua_pushinteger(L, st.spooled);
    lua_setfield(L, -2, "spooled");
    push_metrics(L, c);
}

int sx_client_fd(lua_State *L, sx_client *c)
{
    return sx_async_fd(sx_ensure_async(L, c));
}
