/*
 * async_impl.h - private to async.c and async_spool.c: the worker's state.
 *
 * The lock (mu) guards the lists and counters shared with the caller's
 * thread; the multi handle, the slots, the retry list and the spool
 * connection belong to the worker thread.
 */
#ifndef SENDX_ASYNC_IMPL_H
#define SENDX_ASYNC_IMPL_H

#include "async.h"
#include "ready.h"

#include <pthread.h>

#define MAX_SLOTS 64

struct sx_async {
    pthread_mutex_t mu;
    pthread_t thread;
    pid_t pid;
    sx_ready ready;                /* readable while done is not empty (ready.h) */
    CURLM *multi;
    sx_async_opts o;
    int has_mutex;                 /* mu and cv were initialised */
    pthread_cond_t cv;             /* fork: the worker holds still (see before_fork) */
    int hold, held, exited;        /* under mu */
    struct sx_async *next_live;    /* the process's live workers (registry) */
    /* under mu */
    sx_job *pending, *pending_tail;
    sx_job *done, *done_tail;
    long npending, nwaiting, nin_flight, ndone;
    size_t pending_bytes;          /* bodies waiting for their first attempt */
    size_t done_bytes;             /* bodies and answers of calls not yet taken back */
    long sent, failed, retried, dropped;
    long spooled, own;             /* spool: calls this client added; of those, not settled */
    sx_counts counts;              /* completed calls by kind (the stats' "kinds") */
    sx_hist hist;                  /* their latencies, from the call to its outcome */
    int spool_dirty;               /* spool: a call was added since the worker looked */
    int stopping;
    int joined;                    /* the caller's: the thread was joined */
    /* the worker's own */
    sx_job *waiting;               /* retries, until their due time */
    int nslots;
    sx_conn slots[MAX_SLOTS];
    sx_job *busy[MAX_SLOTS];
    long long next_look_ms;        /* spool: when to look for due calls again */
    long long last_claim_ms;       /* spool: when it last claimed */
    sx_job *unsettled;             /* spool: outcomes the disk refused, tried again */
    char *base;                    /* spool: the base URL (o.base, copied) */
};

long long sx_now_ms(void);
void sx_append(sx_job **head, sx_job **tail, sx_job *j);

/* Under mu: counts j (sent or failed) and hands it back to the caller, or
 * frees it when nobody will read its results. */
void sx_complete(sx_async *a, sx_job *j);

/* ---- async_spool.c: the worker's side of the spool ---- */

/* The spool slot policy: no attempt limit, backoff up to 5 minutes. */
void sx_spool_slot_policy(sx_policy *p);

/* Before the worker fills its slots: claims due calls into pending, when
 * a slot would be free for them and it is time to look. */
void sx_spool_feed(sx_async *a);

/* A spooled call's attempt finished (wait: the policy's verdict, < 0 when
 * final): decides whether it is delivered, due again later, or buried. */
void sx_spool_decide(sx_async *a, sx_job *j, long wait);

/* Records the decided calls of list (linked by next) on disk in one
 * transaction, then counts them and hands them back or frees them. Takes
 * mu. */
void sx_spool_settle(sx_async *a, sx_job *list);

/* Under mu, stopping: a claimed call goes back to the spool (an increment
 * already sent is buried as "unknown_outcome"); the job is freed. */
void sx_spool_cut(sx_async *a, sx_job *j, int sent);

/* How long the worker may sleep before it looks at the spool again. */
long sx_spool_sleep_ms(sx_async *a, long ms);

#endif
