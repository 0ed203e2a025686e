/*
 * spool.c - the durable spool: one SQLite table of calls (WAL mode).
 *
 * A row is a call: what to send (path after the base URL, body), whether it
 * may be sent twice (idempotent), its origin (the client that added it: a
 * random token, with its process's pid and start time) and, while a process
 * sends it, a claim (pid, start time, lease). Dead letters stay in the table
 * with dead = 1 and why. The size limit counts the database's pages in use,
 * so that it holds across processes. Only the worker's connection
 * checkpoints the WAL: adding a call never waits for the disk.
 */
#include "spool.h"
#include "policy.h" /* SX_MSG_UNKNOWN_OUTCOME */

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#define SPOOL_APP_ID 0x73656e78 /* "senx" in PRAGMA application_id */
#define SPOOL_VERSION 1
#define BUSY_MS 5000
/* Calls are refused while the disk has less free space than this: what is
 * left lets delivered calls be deleted (WAL frames, checkpoints) so that the
 * spool drains instead of sticking on a full disk. */
#define DISK_RESERVE (4L << 20)
#define ALIVE_CACHE 8
#define CHECKPOINT_PAGES 1000 /* SQLite's own default, run by the worker instead */

enum { ST_ADD, ST_CLAIM_SELECT, ST_CLAIM, ST_NEXT_DUE, ST_DELIVERED, ST_RETRY, ST_BURY,
       ST_UNCLAIM, ST_USED, ST_COUNT };

typedef struct alive_entry {
    long long pid, start;
    int alive;
} alive_entry;

struct sx_spool {
    sqlite3 *db;
    long long page_size;
    long long used;                 /* bytes in use: an estimate that only errs high */
    int used_known;                 /* used was read since the last resync */
    int adds;                       /* since the free space was checked */
    int low_space;                  /* the last check found little */
    int in_batch;                   /* sx_spool_batch: the lock is held already */
    sqlite3_stmt *st[ST_COUNT];
    sx_spool_opts o;
    unsigned long long token;
    pid_t pid;
    long long start;
    alive_entry cache[ALIVE_CACHE]; /* sx_alive's answers during one claim */
    int ncache;
    char *path;
    char err[512];
};

static const char *const sql[ST_COUNT] = {
    "INSERT INTO calls(op, email, path, body, idempotent, created, due, origin_tok, origin_pid,"
    " origin_start, cb_ref) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7, ?8, ?9, ?10)",
    /* ST_CLAIM_SELECT: due, this client's or nobody's (a closed client's, a
     * dead process's), not in flight elsewhere, the oldest of its contact */
    "SELECT id, path, body, idempotent, attempts, created, origin_tok = ?2, cb_ref,"
    " claim_pid IS NOT NULL FROM calls AS c"
    " WHERE dead = 0 AND due <= ?1"
    " AND (origin_tok = ?2 OR origin_tok IS NULL OR NOT sx_alive(origin_pid, origin_start))"
    " AND (claim_pid IS NULL OR lease_until < ?1 OR NOT sx_alive(claim_pid, claim_start))"
    " AND NOT EXISTS (SELECT 1 FROM calls AS e WHERE e.email = c.email AND e.id < c.id"
    " AND e.dead = 0) ORDER BY id LIMIT ?3",
    /* ST_CLAIM: a call taken over from another client loses its callback */
    "UPDATE calls SET claim_pid = ?2, claim_start = ?3, lease_until = ?4,"
    " cb_ref = CASE WHEN origin_tok = ?5 THEN cb_ref END,"
    " origin_tok = CASE WHEN origin_tok = ?5 THEN origin_tok END WHERE id = ?1",
    "SELECT min(due) FROM calls WHERE dead = 0 AND due > ?1",
    "DELETE FROM calls WHERE id = ?1",
    "UPDATE calls SET attempts = ?2, due = ?3, claim_pid = NULL, claim_start = NULL,"
    " lease_until = NULL WHERE id = ?1",
    "UPDATE calls SET dead = 1, attempts = ?2, kind = ?3, status = ?4, message = ?5,"
    " excerpt = ?6, failed_at = ?7, claim_pid = NULL, claim_start = NULL, lease_until = NULL,"
    " origin_tok = NULL, cb_ref = NULL WHERE id = ?1",
    "UPDATE calls SET claim_pid = NULL, claim_start = NULL, lease_until = NULL WHERE id = ?1",
    /* ST_USED: the bytes of the pages in use */
    "SELECT ((SELECT page_count FROM pragma_page_count()) -"
    " (SELECT freelist_count FROM pragma_freelist_count())) *"
    " (SELECT page_size FROM pragma_page_size())",
};

/* id: no AUTOINCREMENT (its bookkeeping costs a page per call); a new id is
 * above every id in the table, so ids keep the order calls came in, and an
 * id is reused only after its row is gone. */
static const char schema[] =
    "CREATE TABLE calls ("
    " id INTEGER PRIMARY KEY, op TEXT NOT NULL, email TEXT NOT NULL,"
    " path TEXT NOT NULL, body BLOB NOT NULL, idempotent INTEGER NOT NULL,"
    " created REAL NOT NULL, due REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,"
    " origin_tok INTEGER, origin_pid INTEGER, origin_start INTEGER, cb_ref INTEGER,"
    " claim_pid INTEGER, claim_start INTEGER, lease_until REAL,"
    " dead INTEGER NOT NULL DEFAULT 0, kind TEXT, status INTEGER, message TEXT,"
    " excerpt BLOB, failed_at REAL);"
    "CREATE INDEX calls_contact ON calls(email, id);";

static void lock(sx_spool *s)
{
    if (s->o.lock != NULL && !s->in_batch)
        pthread_mutex_lock(s->o.lock);
}

static void unlock(sx_spool *s)
{
    if (s->o.lock != NULL && !s->in_batch)
        pthread_mutex_unlock(s->o.lock);
}

static double now_epoch(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Records the connection's error (a full disk says so); SX_SPOOL_ERROR. */
static int fail(sx_spool *s, const char *what)
{
    snprintf(s->err, sizeof s->err, "sendx: spool '%s': %s%s%s", s->path, what ? what : "",
             what ? ": " : "", s->db != NULL ? sqlite3_errmsg(s->db) : "out of memory");
    return SX_SPOOL_ERROR;
}

/* ---------------------------------------------------------------------------
 * Processes: who is alive
 * ------------------------------------------------------------------------ */

/* From /proc/<pid>/stat: the process's state letter ('Z' a zombie) and start
 * time (clock ticks since boot). 0 when unknown (no /proc): then a pid alone
 * names a process. */
static long long proc_stat(pid_t pid, char *state)
{
    char name[64], buf[1024];
    const char *p;
    long long v = 0;
    int field;
    size_t n;
    FILE *f;
    *state = '?';
    snprintf(name, sizeof name, "/proc/%ld/stat", (long)pid);
    if ((f = fopen(name, "r")) == NULL)
        return 0;
    n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    if ((p = strrchr(buf, ')')) == NULL)
        return 0;
    if (p[1] == ' ' && p[2] != '\0')
        *state = p[2]; /* field 3 */
    for (field = 2; field < 22 && *p != '\0'; p++) /* field 22: starttime */
        if (*p == ' ')
            field++;
    if (field == 22)
        v = strtoll(p, NULL, 10);
    return v;
}

/* This process, as claims name it. */
static void me(pid_t *pid, long long *start)
{
    char state;
    *pid = getpid();
    *start = proc_stat(*pid, &state);
}

/* Whether the process that started at start still runs as pid. A zombie has
 * exited: its parent has not reaped it yet, which may take long (a container
 * whose init does not reap orphans, nginx's workers after their master was
 * killed), and kill(pid, 0) still succeeds on it. */
static int process_alive(long long pid, long long start)
{
    long long now_start;
    char state;
    if (pid <= 0 || (kill((pid_t)pid, 0) != 0 && errno != EPERM))
        return 0;
    now_start = proc_stat((pid_t)pid, &state);
    if (state == 'Z' || state == 'X' || state == 'x')
        return 0;
    return start == 0 || now_start == 0 || now_start == start; /* else the pid was reused */
}

/* sx_alive(pid, start) in SQL, cached during one claim. */
static void sql_alive(sqlite3_context *ctx, int argc, sqlite3_value **argv)
{
    sx_spool *s = sqlite3_user_data(ctx);
    long long pid = sqlite3_value_int64(argv[0]), start = sqlite3_value_int64(argv[1]);
    int i, alive;
    (void)argc;
    for (i = 0; i < s->ncache; i++)
        if (s->cache[i].pid == pid && s->cache[i].start == start) {
            sqlite3_result_int(ctx, s->cache[i].alive);
            return;
        }
    alive = process_alive(pid, start);
    if (s->ncache < ALIVE_CACHE) {
        s->cache[s->ncache].pid = pid;
        s->cache[s->ncache].start = start;
        s->cache[s->ncache++].alive = alive;
    }
    sqlite3_result_int(ctx, alive);
}

/* ---------------------------------------------------------------------------
 * Opening
 * ------------------------------------------------------------------------ */

static int pragma_int(sqlite3 *db, const char *q, long long *v)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(db, q, -1, &st, NULL);
    if (rc != SQLITE_OK)
        return rc;
    rc = sqlite3_step(st);
    *v = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
    sqlite3_finalize(st);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* The error of a first read: a file that is no SQLite database says so. */
static int not_a_database(sx_spool *s)
{
    if (sqlite3_errcode(s->db) != SQLITE_NOTADB)
        return fail(s, NULL);
    snprintf(s->err, sizeof s->err,
             "sendx: spool '%s': not a sendx spool (not an SQLite database)", s->path);
    return SX_SPOOL_ERROR;
}

/* A new file gets the schema; an existing one must be a spool. */
static int check_or_create(sx_spool *s)
{
    long long app = 0, tables = 0, version = 0;
    int rc;
    if (sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        return not_a_database(s);
    if (pragma_int(s->db, "PRAGMA application_id", &app) != SQLITE_OK ||
        pragma_int(s->db, "SELECT count(*) FROM sqlite_master", &tables) != SQLITE_OK ||
        pragma_int(s->db, "PRAGMA user_version", &version) != SQLITE_OK) {
        rc = not_a_database(s);
    } else if (app == 0 && tables == 0) {
        char set[96];
        snprintf(set, sizeof set, "PRAGMA application_id = %d; PRAGMA user_version = %d;",
                 SPOOL_APP_ID, SPOOL_VERSION);
        rc = sqlite3_exec(s->db, schema, NULL, NULL, NULL) == SQLITE_OK &&
                     sqlite3_exec(s->db, set, NULL, NULL, NULL) == SQLITE_OK
                 ? 0 : fail(s, "creating");
    } else if (app != SPOOL_APP_ID) {
        snprintf(s->err, sizeof s->err,
                 "sendx: spool '%s': not a sendx spool (another SQLite database)", s->path);
        rc = SX_SPOOL_ERROR;
    } else if (version > SPOOL_VERSION) {
        snprintf(s->err, sizeof s->err, "sendx: spool '%s': made by a newer sendx (format %lld)",
                 s->path, version);
        rc = SX_SPOOL_ERROR;
    } else {
        rc = 0;
    }
    if (rc == 0 && sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        rc = fail(s, NULL);
    if (rc != 0)
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
}

/* Creates the file with mode 0600 (it holds contact data) before SQLite
 * does (SQLite's default follows the umask); its -wal and -shm files take
 * the same mode. An existing file is never opened here: closing a
 * descriptor of it would drop every POSIX lock this process holds on it,
 * those of its open connections too (the other connection of this client,
 * other clients). Another process could then take the file as unused:
 * delete the WAL under them, or switch the journal mode, and the spool
 * would be corrupt. */
static int create_private(sx_spool *s)
{
    int fd = open(s->path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd >= 0) {
        close(fd); /* new: no connection of this process has it open */
        return 0;
    }
    if (errno == EEXIST && access(s->path, R_OK | W_OK) == 0)
        return 0;
    snprintf(s->err, sizeof s->err, "sendx: spool '%s': %s", s->path, strerror(errno));
    return -1;
}

/* Runs stmts, and again while it fails with SQLITE_BUSY, until BUSY_MS have
 * passed (by the clock: an attempt may itself wait in the busy handler).
 * The busy timeout does not cover every wait: a connection that holds a read
 * lock and needs a write lock gets SQLITE_BUSY at once when another holds
 * the write lock (SQLite's guard against a deadlock). Switching a new file
 * to WAL is such a case, when other processes open the same new spool. */
static int exec_busy(sx_spool *s, const char *stmts)
{
    struct timespec pause = { 0, 2000000L }, t0, t; /* 2 ms between attempts */
    int rc;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (((rc = sqlite3_exec(s->db, stmts, NULL, NULL, NULL)) & 0xff) == SQLITE_BUSY) {
        clock_gettime(CLOCK_MONOTONIC, &t);
        if ((t.tv_sec - t0.tv_sec) * 1000L + (t.tv_nsec - t0.tv_nsec) / 1000000L >= BUSY_MS)
            break;
        nanosleep(&pause, NULL);
    }
    return rc;
}

/* After each commit (under lock): how large the WAL is. */
static int wal_hook(void *ud, sqlite3 *db, const char *name, int pages)
{
    sx_spool *s = ud;
    (void)db;
    (void)name;
    if (s->o.wal_pages != NULL)
        *s->o.wal_pages = pages;
    return SQLITE_OK;
}

void sx_spool_upkeep(sx_spool *s)
{
    int pages, log = 0, done = 0;
    if (s->o.wal_pages == NULL)
        return;
    lock(s);
    pages = *s->o.wal_pages;
    unlock(s);
    if (pages < CHECKPOINT_PAGES)
        return;
    /* PASSIVE: copies what no reader needs, never waits for a writer */
    if (sqlite3_wal_checkpoint_v2(s->db, NULL, SQLITE_CHECKPOINT_PASSIVE, &log, &done) ==
            SQLITE_OK && done == log) {
        lock(s);
        if (*s->o.wal_pages == pages)
            *s->o.wal_pages = 0; /* the next commit starts the WAL over */
        unlock(s);
    }
}

static int prepare_all(sx_spool *s)
{
    int i;
    sqlite3_wal_hook(s->db, wal_hook, s);
    if (sqlite3_create_function(s->db, "sx_alive", 2, SQLITE_UTF8, s, sql_alive, NULL, NULL) !=
        SQLITE_OK)
        return fail(s, NULL);
    for (i = 0; i < ST_COUNT; i++)
        if (sqlite3_prepare_v2(s->db, sql[i], -1, &s->st[i], NULL) != SQLITE_OK)
            return fail(s, NULL);
    return 0;
}

sx_spool *sx_spool_open(const char *path, const sx_spool_opts *o, unsigned long long token,
                        char *err, size_t errlen)
{
    sx_spool *s = calloc(1, sizeof *s);
    char pragmas[192];
    int ok;
    if (s == NULL || (s->path = strdup(path)) == NULL) {
        free(s);
        snprintf(err, errlen, "sendx: spool '%s': out of memory", path);
        return NULL;
    }
    s->o = *o;
    s->token = token;
    me(&s->pid, &s->start);
    snprintf(pragmas, sizeof pragmas,
             "PRAGMA journal_mode = WAL; PRAGMA synchronous = %s; PRAGMA wal_autocheckpoint = 0;"
             " PRAGMA journal_size_limit = 16777216;",
             o->sync_full ? "FULL" : "NORMAL");
    ok = create_private(s) == 0;
    if (ok && sqlite3_open_v2(path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) !=
                  SQLITE_OK) {
        fail(s, NULL);
        ok = 0;
    }
    if (ok) {
        sqlite3_busy_timeout(s->db, BUSY_MS);
        ok = check_or_create(s) == 0;
    }
    if (ok && exec_busy(s, pragmas) != SQLITE_OK) {
        fail(s, NULL);
        ok = 0;
    }
    ok = ok && prepare_all(s) == 0 &&
         pragma_int(s->db, "PRAGMA page_size", &s->page_size) == SQLITE_OK;
    if (!ok) {
        snprintf(err, errlen, "%s", s->err);
        sx_spool_close(s);
        return NULL;
    }
    return s;
}

void sx_spool_close(sx_spool *s)
{
    int i;
    if (s == NULL)
        return;
    for (i = 0; i < ST_COUNT; i++)
        sqlite3_finalize(s->st[i]);
    sqlite3_close(s->db);
    free(s->path);
    free(s);
}

void sx_spool_disown(sx_spool *s)
{
    (void)s; /* the parent's: its memory is leaked, once per fork */
}

const char *sx_spool_error(const sx_spool *s)
{
    return s->err;
}

/* ---------------------------------------------------------------------------
 * Adding
 * ------------------------------------------------------------------------ */

/* The bytes of the pages in use, read now. */
static int used_bytes(sx_spool *s, long long *used)
{
    sqlite3_stmt *st = s->st[ST_USED];
    int rc = sqlite3_step(st);
    *used = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
    sqlite3_reset(st);
    return rc == SQLITE_ROW ? 0 : -1;
}

int sx_spool_add(sx_spool *s, const char *op, const char *email, size_t elen, const char *path,
                 const char *body, size_t len, int idempotent, int cb_ref, long long *id)
{
    sqlite3_stmt *st = s->st[ST_ADD];
    struct statvfs fs;
    long long need = (long long)len + (long long)strlen(path);
    long long cost = 2 * (need + (long long)elen + 96);
    int rc;
    if ((s->low_space || ++s->adds >= 64) && statvfs(s->path, &fs) == 0) {
        unsigned long long avail = (unsigned long long)fs.f_bavail * fs.f_frsize;
        s->adds = 0;
        s->used_known = 0; /* the worker deleted meanwhile: read it again */
        s->low_space = avail < 4 * (unsigned long long)DISK_RESERVE; /* then every time */
        if (avail < DISK_RESERVE) {
            snprintf(s->err, sizeof s->err, "sendx: spool '%s': the disk is full (less than "
                     "%ld MiB free)", s->path, DISK_RESERVE >> 20);
            return SX_SPOOL_ERROR;
        }
    }
    sqlite3_bind_text(st, 1, op, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, email, (int)elen, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, path, -1, SQLITE_STATIC);
    sqlite3_bind_blob(st, 4, body, (int)len, SQLITE_STATIC);
    sqlite3_bind_int(st, 5, idempotent);
    sqlite3_bind_double(st, 6, now_epoch());
    sqlite3_bind_int64(st, 7, (sqlite3_int64)s->token);
    sqlite3_bind_int64(st, 8, s->pid);
    sqlite3_bind_int64(st, 9, s->start);
    if (cb_ref >= 0)
        sqlite3_bind_int(st, 10, cb_ref);
    else
        sqlite3_bind_null(st, 10);
    lock(s);
    if (!s->used_known || s->used + cost > s->o.max_bytes) { /* near the limit: exactly */
        if (used_bytes(s, &s->used) != 0) {
            unlock(s);
            sqlite3_reset(st);
            sqlite3_clear_bindings(st);
            return fail(s, NULL);
        }
        s->used_known = 1;
        if (s->used + need > s->o.max_bytes) {
            unlock(s);
            sqlite3_reset(st);
            sqlite3_clear_bindings(st);
            return SX_SPOOL_FULL;
        }
    }
    s->used += cost;
    rc = sqlite3_step(st);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    rc = rc == SQLITE_DONE ? 0 : fail(s, NULL);
    *id = sqlite3_last_insert_rowid(s->db);
    unlock(s);
    return rc;
}

/* ---------------------------------------------------------------------------
 * The worker's side
 * ------------------------------------------------------------------------ */

static int bury_row(sx_spool *s, long long id, int attempts, const char *kind, long status,
                    const char *message, const char *excerpt, size_t excerpt_len);

static int step_done(sx_spool *s, sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc == SQLITE_DONE ? 0 : fail(s, NULL);
}

static int begin(sx_spool *s)
{
    return sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) == SQLITE_OK ? 0 : fail(s, NULL);
}

static int commit(sx_spool *s)
{
    if (sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) == SQLITE_OK)
        return 0;
    fail(s, NULL);
    sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
    return SX_SPOOL_ERROR;
}


/* Claims one selected row (the select's current row) or buries it. */
static int claim_row(sx_spool *s, sqlite3_stmt *sel, double now, double lease_s,
                     void (*fn)(void *, const sx_spool_row *), void *ud, int *lost)
{
    sqlite3_stmt *st = s->st[ST_CLAIM];
    sx_spool_row row;
    row.id = sqlite3_column_int64(sel, 0);
    row.idempotent = sqlite3_column_int(sel, 3);
    row.attempts = sqlite3_column_int(sel, 4);
    if (sqlite3_column_int(sel, 8) && !row.idempotent) { /* taken over mid-send */
        (*lost)++;
        return bury_row(s, row.id, row.attempts, "unknown_outcome", 0, SX_MSG_UNKNOWN_OUTCOME,
                        NULL, 0);
    }
    sqlite3_bind_int64(st, 1, row.id);
    sqlite3_bind_int64(st, 2, s->pid);
    sqlite3_bind_int64(st, 3, s->start);
    sqlite3_bind_double(st, 4, now + lease_s);
    sqlite3_bind_int64(st, 5, (sqlite3_int64)s->token);
    if (step_done(s, st) != 0)
        return SX_SPOOL_ERROR;
    row.path = (const char *)sqlite3_column_text(sel, 1);
    row.body = sqlite3_column_blob(sel, 2);
    row.len = (size_t)sqlite3_column_bytes(sel, 2);
    row.created = sqlite3_column_double(sel, 5);
    row.mine = sqlite3_column_int(sel, 6);
    row.cb_ref = row.mine && sqlite3_column_type(sel, 7) != SQLITE_NULL
                     ? sqlite3_column_int(sel, 7) : -1;
    if (row.path == NULL)
        row.path = "";
    if (row.body == NULL)
        row.body = "";
    fn(ud, &row);
    return 1;
}

static int claim(sx_spool *s, int max, double lease_s,
                 void (*fn)(void *ud, const sx_spool_row *row), void *ud, double *next_due,
                 int *lost)
{
    sqlite3_stmt *sel = s->st[ST_CLAIM_SELECT], *nd = s->st[ST_NEXT_DUE];
    double now = now_epoch();
    int n = 0, rc;
    *next_due = 0;
    s->ncache = 0;
    if (begin(s) != 0)
        return -1;
    sqlite3_bind_double(sel, 1, now);
    sqlite3_bind_int64(sel, 2, (sqlite3_int64)s->token);
    sqlite3_bind_int(sel, 3, max);
    while ((rc = sqlite3_step(sel)) == SQLITE_ROW) {
        int got = claim_row(s, sel, now, lease_s, fn, ud, lost);
        if (got < 0)
            break;
        n += got;
    }
    sqlite3_reset(sel);
    sqlite3_clear_bindings(sel);
    if (rc != SQLITE_DONE && rc != SQLITE_ROW) /* ROW: claim_row failed */
        fail(s, NULL);
    if (rc == SQLITE_DONE) {
        sqlite3_bind_double(nd, 1, now);
        if (sqlite3_step(nd) == SQLITE_ROW)
            *next_due = sqlite3_column_double(nd, 0);
        sqlite3_reset(nd);
    }
    if (rc != SQLITE_DONE) {
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
        return -1; /* the callbacks' jobs are the caller's to give back */
    }
    return commit(s) == 0 ? n : -1;
}

int sx_spool_batch(sx_spool *s)
{
    lock(s);
    if (begin(s) != 0) {
        unlock(s);
        return SX_SPOOL_ERROR;
    }
    s->in_batch = 1;
    return 0;
}

int sx_spool_batch_end(sx_spool *s, int ok)
{
    int rc = 0;
    s->in_batch = 0;
    if (ok)
        rc = commit(s);
    else
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
    unlock(s);
    return ok ? rc : SX_SPOOL_ERROR;
}

int sx_spool_claim(sx_spool *s, int max, double lease_s,
                   void (*fn)(void *ud, const sx_spool_row *row), void *ud,
                   double *next_due, int *lost)
{
    int n;
    lock(s);
    n = claim(s, max, lease_s, fn, ud, next_due, lost);
    unlock(s);
    return n;
}

/* Runs statement k, whose one parameter is a call's id. */
static int by_id(sx_spool *s, int k, long long id)
{
    int rc;
    lock(s);
    sqlite3_bind_int64(s->st[k], 1, id);
    rc = step_done(s, s->st[k]);
    unlock(s);
    return rc;
}

int sx_spool_delivered(sx_spool *s, long long id)
{
    return by_id(s, ST_DELIVERED, id);
}

int sx_spool_retry(sx_spool *s, long long id, int attempts, double due)
{
    sqlite3_stmt *st = s->st[ST_RETRY];
    int rc;
    lock(s);
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_int(st, 2, attempts);
    sqlite3_bind_double(st, 3, due);
    rc = step_done(s, st);
    unlock(s);
    return rc;
}

int sx_spool_bury(sx_spool *s, long long id, int attempts, const char *kind, long status,
                  const char *message, const char *excerpt, size_t excerpt_len)
{
    int rc;
    lock(s);
    rc = bury_row(s, id, attempts, kind, status, message, excerpt, excerpt_len);
    unlock(s);
    return rc;
}

static int bury_row(sx_spool *s, long long id, int attempts, const char *kind, long status,
                    const char *message, const char *excerpt, size_t excerpt_len)
{
    sqlite3_stmt *st = s->st[ST_BURY];
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_int(st, 2, attempts);
    sqlite3_bind_text(st, 3, kind, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, status);
    sqlite3_bind_text(st, 5, message ? message : "", -1, SQLITE_STATIC);
    if (excerpt != NULL)
        sqlite3_bind_blob(st, 6, excerpt, (int)excerpt_len, SQLITE_STATIC);
    else
        sqlite3_bind_null(st, 6);
    sqlite3_bind_double(st, 7, now_epoch());
    return step_done(s, st);
}

int sx_spool_unclaim(sx_spool *s, long long id)
{
    return by_id(s, ST_UNCLAIM, id);
}

/* ---------------------------------------------------------------------------
 * The caller's side: release, stats, dead letters
 * ------------------------------------------------------------------------ */

/* Runs q (one-off) with the int64 bindings given; for each row, fn(ud, st). */
static int query(sx_spool *s, const char *q, const long long *args, int nargs,
                 void (*fn)(void *ud, sqlite3_stmt *st), void *ud)
{
    sqlite3_stmt *st;
    int rc, i;
    if (sqlite3_prepare_v2(s->db, q, -1, &st, NULL) != SQLITE_OK)
        return fail(s, NULL);
    for (i = 0; i < nargs; i++)
        sqlite3_bind_int64(st, i + 1, args[i]);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        if (fn != NULL)
            fn(ud, st);
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? 0 : fail(s, NULL);
}

typedef struct ref_sink {
    void (*fn)(void *ud, int ref);
    void *ud;
} ref_sink;

static void each_ref(void *ud, sqlite3_stmt *st)
{
    ref_sink *k = ud;
    k->fn(k->ud, sqlite3_column_int(st, 0));
}

static int release(sx_spool *s, void (*fn)(void *ud, int ref), void *ud)
{
    long long tok = (long long)s->token;
    ref_sink k;
    int rc;
    k.fn = fn;
    k.ud = ud;
    if (begin(s) != 0)
        return SX_SPOOL_ERROR;
    rc = query(s, "SELECT cb_ref FROM calls WHERE origin_tok = ?1 AND cb_ref IS NOT NULL",
               &tok, 1, each_ref, &k);
    if (rc == 0)
        rc = query(s, "UPDATE calls SET origin_tok = NULL, cb_ref = NULL WHERE origin_tok = ?1",
                   &tok, 1, NULL, NULL);
    if (rc != 0) {
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
        return rc;
    }
    return commit(s);
}

static void read_stats(void *ud, sqlite3_stmt *st)
{
    sx_spool_stats *out = ud;
    double oldest = sqlite3_column_double(st, 2);
    out->pending = sqlite3_column_int64(st, 0);
    out->dead = sqlite3_column_int64(st, 1);
    out->oldest_age = sqlite3_column_type(st, 2) == SQLITE_NULL ? 0 : now_epoch() - oldest;
    if (out->oldest_age < 0)
        out->oldest_age = 0;
}

int sx_spool_release(sx_spool *s, void (*fn)(void *ud, int ref), void *ud)
{
    int rc;
    lock(s);
    rc = release(s, fn, ud);
    unlock(s);
    return rc;
}

int sx_spool_get_stats(sx_spool *s, sx_spool_stats *st)
{
    memset(st, 0, sizeof *st);
    int rc = query(s, "SELECT (SELECT count(*) FROM calls WHERE dead = 0),"
                      " (SELECT count(*) FROM calls WHERE dead = 1),"
                      " (SELECT min(created) FROM calls WHERE dead = 0)", NULL, 0, read_stats, st);
    return rc != 0 ? rc : used_bytes(s, &st->bytes) == 0 ? 0 : fail(s, NULL);
}

typedef struct dead_sink {
    void (*fn)(void *ud, const sx_spool_dead *d);
    void *ud;
} dead_sink;

static const char *text_or(sqlite3_stmt *st, int col, const char *dflt)
{
    const char *t = (const char *)sqlite3_column_text(st, col);
    return t != NULL ? t : dflt;
}

static void each_dead(void *ud, sqlite3_stmt *st)
{
    dead_sink *k = ud;
    sx_spool_dead d;
    d.id = sqlite3_column_int64(st, 0);
    d.op = text_or(st, 1, "");
    d.email = text_or(st, 2, "");
    d.kind = text_or(st, 3, "");
    d.status = (long)sqlite3_column_int64(st, 4);
    d.message = text_or(st, 5, "");
    d.excerpt = sqlite3_column_blob(st, 6);
    d.excerpt_len = (size_t)sqlite3_column_bytes(st, 6);
    d.failed_at = sqlite3_column_double(st, 7);
    d.attempts = sqlite3_column_int(st, 8);
    d.request = sqlite3_column_blob(st, 9);
    d.request_len = (size_t)sqlite3_column_bytes(st, 9);
    k->fn(k->ud, &d);
}

int sx_spool_dead_each(sx_spool *s, long limit, void (*fn)(void *ud, const sx_spool_dead *d),
                       void *ud)
{
    long long lim = limit > 0 ? limit : -1;
    dead_sink k;
    k.fn = fn;
    k.ud = ud;
    return query(s, "SELECT id, op, email, kind, status, message, excerpt, failed_at, attempts,"
                    " body FROM calls WHERE dead = 1 ORDER BY id LIMIT ?1", &lim, 1, each_dead, &k);
}

/* Runs q for every id (all when ids is NULL) in one transaction; the number
 * of rows changed, or -1. */
static long for_ids_locked(sx_spool *s, const char *all, const char *one, const long long *ids,
                           size_t n, double now)
{
    sqlite3_stmt *st;
    long changed = 0;
    size_t i;
    if (begin(s) != 0)
        return -1;
    if (sqlite3_prepare_v2(s->db, ids ? one : all, -1, &st, NULL) != SQLITE_OK) {
        fail(s, NULL);
        sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
        return -1;
    }
    for (i = 0; i < (ids ? n : 1); i++) {
        sqlite3_bind_double(st, 1, now);
        if (ids)
            sqlite3_bind_int64(st, 2, ids[i]);
        if (sqlite3_step(st) != SQLITE_DONE) {
            fail(s, NULL);
            sqlite3_finalize(st);
            sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
            return -1;
        }
        changed += sqlite3_changes(s->db);
        sqlite3_reset(st);
    }
    sqlite3_finalize(st);
    return commit(s) == 0 ? changed : -1;
}

static long for_ids(sx_spool *s, const char *all, const char *one, const long long *ids, size_t n,
                    double now)
{
    long changed;
    lock(s);
    changed = for_ids_locked(s, all, one, ids, n, now);
    unlock(s);
    return changed;
}

#define REVIVE "UPDATE calls SET dead = 0, due = ?1, created = ?1, attempts = 0, kind = NULL," \
               " status = NULL, message = NULL, excerpt = NULL, failed_at = NULL WHERE dead = 1"

long sx_spool_retry_dead(sx_spool *s, const long long *ids, size_t n)
{
    return for_ids(s, REVIVE " AND ?1 = ?1", REVIVE " AND id = ?2", ids, n, now_epoch());
}

long sx_spool_purge_dead(sx_spool *s, const long long *ids, size_t n)
{
    return for_ids(s, "DELETE FROM calls WHERE dead = 1 AND ?1 = ?1",
                   "DELETE FROM calls WHERE dead = 1 AND ?1 = ?1 AND id = ?2", ids, n, now_epoch());
}
