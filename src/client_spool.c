/*
 * client_spool.c - the Lua side of the durable spool (src/spool.c): opening
 * it from the options, committing identify_async/track_async calls, and
 * spool_stats, dead_letters, retry_dead, purge_dead.
 */
#include "client.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* A random token naming this client in the rows it adds. */
static unsigned long long new_token(void)
{
    unsigned long long t = 0;
    struct timespec ts;
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        if (read(fd, &t, sizeof t) != (ssize_t)sizeof t)
            t = 0;
        close(fd);
    }
    clock_gettime(CLOCK_REALTIME, &ts);
    t ^= ((unsigned long long)getpid() << 32) ^ (unsigned long long)ts.tv_nsec ^
         (unsigned long long)ts.tv_sec;
    return (t & 0x7fffffffffffffffULL) | 1; /* a positive SQLite integer */
}

/* A connection to the client's spool: the caller's, or the worker's. */
static sx_spool *open_or_raise(lua_State *L, sx_client *c, int worker)
{
    char err[600];
    sx_spool_opts o = c->sopts;
    sx_spool *s;
    o.worker = worker;
    o.lock = &c->spool_mu;
    o.wal_pages = &c->wal_pages;
    s = sx_spool_open(c->spool_path.data, &o, c->token, err, sizeof err);
    if (s == NULL)
        luaL_error(L, "%s", err);
    return s;
}

void sx_open_spool(lua_State *L, sx_client *c, const char *path, const sx_config *o)
{
    sx_buf_reset(&c->spool_path);
    if (sx_buf_adds(&c->spool_path, path) != 0 || sx_buf_cstr(&c->spool_path) != 0)
        MEMERR(L);
    c->sopts.max_bytes = (long long)o->spool_max_bytes;
    c->sopts.max_age = o->spool_max_age_ms / 1000.0;
    c->sopts.sync_full = o->spool_sync;
    c->spool_deliver = o->spool_deliver;
    c->token = new_token();
    if (pthread_mutex_init(&c->spool_mu, NULL) != 0)
        luaL_error(L, "sendx: spool: no mutex");
    c->has_spool_mu = 1;
    c->spool = open_or_raise(L, c, 0);
    c->spool_pid = getpid();
}

sx_spool *sx_caller_spool(lua_State *L, sx_client *c)
{
    if (c->spool_path.len == 0)
        return NULL;
    if (c->spool != NULL && c->spool_pid != getpid()) {
        sx_spool_disown(c->spool); /* the parent's: SQLite's must not cross fork */
        c->spool = NULL;
    }
    if (c->spool == NULL) {
        c->token = new_token(); /* a forked child is another client */
        /* the parent's lock, copied unlocked (its worker holds still
         * outside the spool at fork: see async.c) */
        pthread_mutex_init(&c->spool_mu, NULL);
        c->spool = open_or_raise(L, c, 0);
        c->spool_pid = getpid();
    }
    return c->spool;
}

void sx_worker_spool(lua_State *L, sx_client *c, sx_async_opts *o)
{
    o->spool = NULL;
    if (sx_caller_spool(L, c) == NULL || !c->spool_deliver) /* inspecting: no claims */
        return;
    o->spool = open_or_raise(L, c, 1);
    o->base = c->base.data;
    /* a claim outlives any attempt; then a dead process's calls are taken */
    o->lease_s = 2.0 * (c->timeout_ms + c->connect_timeout_ms) / 1000.0 + 30.0;
    o->max_age = c->sopts.max_age;
    o->report = c->on_error_ref != LUA_NOREF;
}

static void unref(void *ud, int ref)
{
    luaL_unref((lua_State *)ud, LUA_REGISTRYINDEX, ref);
}

void sx_close_spool(lua_State *L, sx_client *c)
{
    if (c->spool != NULL) {
        if (c->spool_pid == getpid()) {
            sx_spool_release(c->spool, unref, L);
            sx_spool_close(c->spool);
        } else {
            sx_spool_disown(c->spool);
        }
        c->spool = NULL;
    }
    if (c->has_spool_mu && c->spool_pid == getpid()) /* the worker's connection is closed */
        pthread_mutex_destroy(&c->spool_mu);
    c->has_spool_mu = 0;
    sx_buf_free(&c->spool_path);
}

/* ---------------------------------------------------------------------------
 * Committing a call
 * ------------------------------------------------------------------------ */

int sx_spool_submit(lua_State *L, sx_client *c, sx_async *a, const char *op, const char *email,
                    size_t elen, int cb, int idempotent)
{
    sx_spool *s = sx_caller_spool(L, c);
    int ref = LUA_NOREF, rc;
    long long id;
    if (!lua_isnoneornil(L, cb)) {
        lua_pushvalue(L, cb);
        ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    rc = sx_spool_add(s, op, email, elen, c->url.data + c->base.len, c->body.data, c->body.len,
                      idempotent, ref, &id);
    sx_buf_shrink(&c->body);
    sx_buf_shrink(&c->url);
    if (rc != 0) {
        luaL_unref(L, LUA_REGISTRYINDEX, ref);
        sx_async_spooled(a, 0);
        lua_pushnil(L);
        lua_pushstring(L, rc == SX_SPOOL_FULL ? SX_MSG_SPOOL_FULL : sx_spool_error(s));
        return 2;
    }
    sx_async_spooled(a, 1);
    lua_pushboolean(L, 1);
    return 1;
}

/* ---------------------------------------------------------------------------
 * spool_stats, dead_letters, retry_dead, purge_dead
 * ------------------------------------------------------------------------ */

static sx_spool *need_spool(lua_State *L, sx_client *c)
{
    sx_spool *s = sx_caller_spool(L, c);
    if (s == NULL)
        luaL_error(L, "sendx: this client has no spool (option spool)");
    return s;
}

static void set_number(lua_State *L, const char *k, lua_Number v)
{
    lua_pushnumber(L, v);
    lua_setfield(L, -2, k);
}

static void set_integer(lua_State *L, const char *k, long long v)
{
    lua_pushinteger(L, (lua_Integer)v);
    lua_setfield(L, -2, k);
}

/* client:spool_stats() -> { pending, dead, bytes, oldest_age } */
int sx_do_spool_stats(lua_State *L, sx_client *c)
{
    sx_spool *s = need_spool(L, c);
    sx_spool_stats st;
    if (sx_spool_get_stats(s, &st) != 0)
        return luaL_error(L, "%s", sx_spool_error(s));
    lua_createtable(L, 0, 4);
    set_integer(L, "pending", st.pending);
    set_integer(L, "dead", st.dead);
    set_integer(L, "bytes", st.bytes);
    set_number(L, "oldest_age", st.oldest_age);
    return 1;
}

/* The dead letters read from the database, copied: no Lua code runs while
 * SQLite steps (a finalizer could close this client, and its spool, under
 * the statement), and an error raised while the list is built cannot leave
 * a statement unfinished. */
typedef struct {
    sx_spool_dead *rows;
    size_t n, cap;
    int oom;
} dead_list;

/* A copy of the n bytes at p; NULL for NULL, and *oom set when memory
 * could not be had. */
static char *dup_bytes(const char *p, size_t n, int *oom)
{
    char *q = p != NULL ? sx_memdup(p, n) : NULL;
    if (p != NULL && q == NULL)
        *oom = 1;
    return q;
}

static void free_dead(dead_list *l)
{
    size_t i;
    for (i = 0; i < l->n; i++) {
        sx_spool_dead *d = &l->rows[i];
        free((char *)d->op);
        free((char *)d->email);
        free((char *)d->kind);
        free((char *)d->message);
        free((char *)d->excerpt);
        free((char *)d->request);
    }
    free(l->rows);
}

static void copy_dead(void *ud, const sx_spool_dead *d)
{
    dead_list *l = ud;
    sx_spool_dead *c;
    if (l->oom)
        return;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        sx_spool_dead *rows = realloc(l->rows, cap * sizeof *rows);
        if (rows == NULL) {
            l->oom = 1;
            return;
        }
        l->rows = rows;
        l->cap = cap;
    }
    c = &l->rows[l->n++];
    *c = *d;
    c->op = dup_bytes(d->op, strlen(d->op), &l->oom);
    c->email = dup_bytes(d->email, strlen(d->email), &l->oom);
    c->kind = dup_bytes(d->kind, strlen(d->kind), &l->oom);
    c->message = dup_bytes(d->message, strlen(d->message), &l->oom);
    c->excerpt = dup_bytes(d->excerpt, d->excerpt_len, &l->oom);
    c->request = dup_bytes(d->request, d->request_len, &l->oom);
}

#define DEAD_LIST_KEY "sendx.dead_list"

/* Pushes the list of the dead_list at slot 1; run under lua_pcall. */
static int push_dead_list(lua_State *L)
{
    const dead_list *l = lua_touserdata(L, 1);
    size_t i;
    lua_createtable(L, (int)l->n, 0);
    for (i = 0; i < l->n; i++) {
        const sx_spool_dead *d = &l->rows[i];
        lua_createtable(L, 0, 10);
        set_integer(L, "id", d->id);
        lua_pushstring(L, d->op);
        lua_setfield(L, -2, "op");
        lua_pushstring(L, d->email);
        lua_setfield(L, -2, "email");
        lua_pushstring(L, d->kind);
        lua_setfield(L, -2, "kind");
        set_integer(L, "status", d->status);
        lua_pushstring(L, d->message);
        lua_setfield(L, -2, "message");
        lua_pushlstring(L, d->excerpt ? d->excerpt : "", d->excerpt_len);
        lua_setfield(L, -2, "body");
        lua_pushlstring(L, d->request ? d->request : "", d->request_len);
        lua_setfield(L, -2, "request");
        set_number(L, "failed_at", d->failed_at);
        set_integer(L, "attempts", d->attempts);
        lua_rawseti(L, -2, (int)i + 1);
    }
    return 1;
}

void sx_spool_lua_init(lua_State *L)
{
    lua_pushcfunction(L, push_dead_list);
    lua_setfield(L, LUA_REGISTRYINDEX, DEAD_LIST_KEY);
}

/* client:dead_letters([limit]) -> { { id, op, email, kind, status, message,
 * body, request, failed_at, attempts }, ... } */
int sx_do_dead_letters(lua_State *L, sx_client *c)
{
    lua_Integer limit = luaL_optinteger(L, 2, 0);
    sx_spool *s = need_spool(L, c);
    dead_list l;
    int rc;
    memset(&l, 0, sizeof l);
    if (sx_spool_dead_each(s, (long)limit, copy_dead, &l) != 0) {
        free_dead(&l);
        return luaL_error(L, "%s", sx_spool_error(s));
    }
    if (l.oom) {
        free_dead(&l);
        return MEMERR(L);
    }
    lua_getfield(L, LUA_REGISTRYINDEX, DEAD_LIST_KEY);
    lua_pushlightuserdata(L, &l);
    rc = lua_pcall(L, 1, 1, 0);
    free_dead(&l);
    return rc == 0 ? 1 : lua_error(L);
}

/* The ids at slot 2 (nil or none: all): a malloc'ed array in *out, its
 * length returned; raises on anything but a list of integers. */
static size_t read_ids(lua_State *L, long long **out)
{
    size_t n, i;
    long long *ids;
    *out = NULL;
    if (lua_isnoneornil(L, 2))
        return 0;
    luaL_checktype(L, 2, LUA_TTABLE);
    n = (size_t)lua_rawlen(L, 2);
    ids = lua_newuserdata(L, (n ? n : 1) * sizeof *ids); /* freed by the collector */
    for (i = 0; i < n; i++) {
        lua_rawgeti(L, 2, (int)i + 1);
        if (!lua_isnumber(L, -1))
            sx_argerror(L, 2, "ids[%d]: expected an id (number), got %s", (int)i + 1,
                        luaL_typename(L, -1));
        ids[i] = (long long)lua_tonumber(L, -1);
        lua_pop(L, 1);
    }
    *out = ids;
    return n;
}

static int dead_op(lua_State *L, sx_client *c, int retry)
{
    sx_spool *s = need_spool(L, c);
    long long *ids;
    size_t n = read_ids(L, &ids);
    long changed;
    if (ids != NULL && n == 0) {
        lua_pushinteger(L, 0);
        return 1;
    }
    changed = retry ? sx_spool_retry_dead(s, ids, n) : sx_spool_purge_dead(s, ids, n);
    if (changed < 0)
        return luaL_error(L, "%s", sx_spool_error(s));
    if (retry && changed > 0 && c->spool_deliver)
        sx_async_spooled(sx_ensure_async(L, c), -1);
    lua_pushinteger(L, changed);
    return 1;
}

/* client:retry_dead([ids]) -> n */
int sx_do_retry_dead(lua_State *L, sx_client *c)
{
    return dead_op(L, c, 1);
}

/* client:purge_dead([ids]) -> n */
int sx_do_purge_dead(lua_State *L, sx_client *c)
{
    return dead_op(L, c, 0);
}
