/*
 * spool.h - durable delivery: calls kept in an SQLite database (WAL mode)
 * until they are delivered or become dead letters.
 *
 * Knows nothing of Lua or libcurl. One sx_spool is one connection: the
 * caller's thread adds calls and reads the dead letters on its own, the
 * worker thread claims and settles calls on another. Several processes may
 * share a file; a claim names its process (pid and start time) and carries a
 * lease, so that calls of a process that died are taken over.
 */
#ifndef SENDX_SPOOL_H
#define SENDX_SPOOL_H

#include <pthread.h>
#include <stddef.h>
#include <sys/types.h>

typedef struct sx_spool sx_spool;

typedef struct sx_spool_opts {
    long long max_bytes;  /* bodies on disk: spool_max_bytes */
    double max_age;       /* seconds a call may wait before it is dead */
    int sync_full;        /* synchronous = FULL (power loss), else NORMAL */
    int worker;           /* the worker's connection: it checkpoints the WAL */
    int *wal_pages;       /* the WAL's size after the last commit of either
                           * connection (under lock) */
    pthread_mutex_t *lock; /* shared by the connections of one client: their
                           * writes take turns here rather than in SQLite's
                           * sleeping busy handler; NULL: none */
} sx_spool_opts;

/* A call handed to the worker by sx_spool_claim. Strings are valid until
 * the callback returns. */
typedef struct sx_spool_row {
    long long id;
    const char *path;     /* after the base URL: "/contact/identify?..." */
    const char *body;
    size_t len;
    int idempotent;
    int attempts;         /* attempts made before, by any process */
    double created;       /* epoch seconds */
    int mine;             /* added by this client (its token) */
    int cb_ref;           /* mine: the callback's registry ref */
} sx_spool_row;

/* A dead letter, for sx_spool_dead_each. */
typedef struct sx_spool_dead {
    long long id;
    const char *op, *email, *kind, *message, *excerpt, *request;
    size_t excerpt_len, request_len;
    long status;
    double failed_at;
    int attempts;
} sx_spool_dead;

typedef struct sx_spool_stats {
    long long pending, dead, bytes;
    double oldest_age;    /* seconds, 0 when nothing is pending */
} sx_spool_stats;

#define SX_SPOOL_FULL (-1)
#define SX_SPOOL_ERROR (-2)

/* Opens (creating it, mode 0600) the spool at path for the client whose
 * token is `token`. NULL with err filled (naming the path) when the file
 * cannot be opened or is not a spool. */
sx_spool *sx_spool_open(const char *path, const sx_spool_opts *o, unsigned long long token,
                        char *err, size_t errlen);
void sx_spool_close(sx_spool *s);

/* In a forked child: lets go of the parent's connection without using it
 * (SQLite connections must not cross fork). */
void sx_spool_disown(sx_spool *s);

/* The last error, naming the path. */
const char *sx_spool_error(const sx_spool *s);

/* Commits one call: 0 (its id in *id), SX_SPOOL_FULL, or SX_SPOOL_ERROR. */
int sx_spool_add(sx_spool *s, const char *op, const char *email, size_t elen, const char *path,
                 const char *body, size_t len, int idempotent, int cb_ref, long long *id);

/* Claims up to max due calls for this process (oldest first, one call per
 * contact at a time) with a lease of lease_s seconds, calling fn for each.
 * Calls that a dead process left in flight are taken over; an increment
 * among them is buried with kind "unknown_outcome" instead (and counted in
 * *lost). Returns how many were claimed (-1 on error); *next_due: when the
 * next call not yet due is (epoch seconds, 0 when none). */
int sx_spool_claim(sx_spool *s, int max, double lease_s,
                   void (*fn)(void *ud, const sx_spool_row *row), void *ud,
                   double *next_due, int *lost);

/* The worker's upkeep, outside any lock that the caller's thread takes: a
 * checkpoint once the WAL has grown (no commit waits for one). */
void sx_spool_upkeep(sx_spool *s);

/* Settling claimed calls: one transaction for the calls settled between
 * sx_spool_batch and sx_spool_batch_end (ok 0: rolled back); 0 when it
 * committed. */
int sx_spool_batch(sx_spool *s);
int sx_spool_batch_end(sx_spool *s, int ok);

/* Settling a claimed call. */
int sx_spool_delivered(sx_spool *s, long long id);
int sx_spool_retry(sx_spool *s, long long id, int attempts, double due);
int sx_spool_bury(sx_spool *s, long long id, int attempts, const char *kind, long status,
                  const char *message, const char *excerpt, size_t excerpt_len);
/* Gives a claim back untouched (the worker stops). */
int sx_spool_unclaim(sx_spool *s, long long id);

/* The client closes: its calls left on disk become anyone's; fn gets the
 * callback refs they held. */
int sx_spool_release(sx_spool *s, void (*fn)(void *ud, int ref), void *ud);

int sx_spool_get_stats(sx_spool *s, sx_spool_stats *st);
/* Dead letters, oldest first (limit <= 0: all). */
int sx_spool_dead_each(sx_spool *s, long limit, void (*fn)(void *ud, const sx_spool_dead *d),
                       void *ud);
/* Dead letters back in the queue (ids NULL: all); returns how many, or -1. */
long sx_spool_retry_dead(sx_spool *s, const long long *ids, size_t n);
long sx_spool_purge_dead(sx_spool *s, const long long *ids, size_t n);


#endif
