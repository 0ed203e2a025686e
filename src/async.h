/*
 * async.h - background delivery: a bounded queue of requests and one worker
 * thread per client that sends them with libcurl's multi interface.
 *
 * Knows nothing of Lua: the worker never enters Lua. Jobs go in with
 * sx_async_submit and come back, completed (or cut short at shutdown), with
 * sx_async_take; the caller turns them into Lua values on its own thread.
 */
#ifndef SENDX_ASYNC_H
#define SENDX_ASYNC_H

#include "transport.h"
#include "spool.h"
#include "metrics.h"

typedef struct sx_job {
    struct sx_job *next;
    char *url, *body;     /* in the same allocation as the job */
    size_t len;
    int idempotent;
    int keep;             /* 0: nobody reads the results: freed once counted */
    int claimed;          /* the caller's: its results are being built */
    int ref;              /* the caller's (a Lua registry ref); never read here */
    long long spool_id;   /* a spooled call's row, 0 when in memory only */
    int mine;             /* spooled by this client (else recovered from the spool) */
    double created;       /* spooled: when (epoch seconds) */
    int settle;           /* spooled: what the disk must record (see async_spool.c) */
    double retry_at;      /* spooled: when a retry is due (epoch seconds) */
    int attempts;
    long long due_ms;     /* a retry waits until then (monotonic clock) */
    long long t_submit_ms; /* when the call was made (monotonic): its latency */
    /* the outcome, once completed */
    sx_result r;          /* r.message points into message[] or is NULL */
    char message[CURL_ERROR_SIZE];
    char *response;       /* the body (malloc'ed), NULL when none */
    size_t response_len;
    sx_attempt_rec *recs; /* the request log's records (malloc'ed), NULL when none */
    int nrecs;
} sx_job;

typedef struct sx_stats {
    long queued, in_flight, sent, failed, retried, dropped;
    long spooled;         /* calls committed to the spool by this client */
} sx_stats;

typedef struct sx_async sx_async;

typedef struct sx_async_opts {
    int max_in_flight;
    long max_queue;        /* jobs waiting (not in flight) */
    size_t max_bytes;      /* bytes of bodies waiting */
    int retries;
    long max_retry_wait_ms;
    /* durable delivery (see spool.h); spool NULL: in memory only */
    sx_spool *spool;       /* the worker's own connection, owned once started */
    const char *base;      /* the base URL spooled paths follow (copied) */
    double lease_s;        /* how long a claim holds */
    double max_age;        /* spool_max_age */
    int report;            /* recovered calls that fail come back (on_error) */
    int logging;           /* records of each attempt come back (sx_conn.logging) */
} sx_async_opts;

/* Starts the worker. Its handles are duplicates of `model` (options, no
 * connections). NULL when memory, libcurl or the thread failed. o->spool,
 * when set, is the worker's from here on (closed with it, or at once on
 * failure). */
sx_async *sx_async_new(CURL *model, const sx_async_opts *o);

/* A job carrying copies of url and body; NULL when out of memory. */
sx_job *sx_job_new(const char *url, const char *body, size_t len, int idempotent);
void sx_job_free(sx_job *j);

/* Queues j: 0; SX_SUBMIT_FULL when the queue is full (max_queue calls or
 * max_bytes bytes, completed calls not yet taken back included),
 * SX_SUBMIT_TOO_LARGE when j alone passes max_bytes, SX_SUBMIT_CLOSING once
 * the worker stops (j is not taken; each counts in `dropped`). */
#define SX_SUBMIT_FULL (-1)
#define SX_SUBMIT_TOO_LARGE (-2)
#define SX_SUBMIT_CLOSING (-3)
int sx_async_submit(sx_async *a, sx_job *j);


/* The worker looks at the spool now. accepted 1: this client committed a
 * call (counted in `spooled`, and outstanding until settled); 0: the spool
 * refused one (counted in `dropped`); -1: dead letters were put back. */
void sx_async_spooled(sx_async *a, int accepted);

/* The oldest completed job, or NULL. Drains the readiness descriptor when
 * nothing is left. */
sx_job *sx_async_take(sx_async *a);

void sx_async_stats(sx_async *a, sx_stats *s);

/* Adds the worker's counts (failed calls by kind) and latencies. */
void sx_async_metrics(sx_async *a, sx_counts *counts, sx_hist *hist);

/* Jobs submitted and not yet taken back. */
long sx_async_outstanding(sx_async *a);

/* Readable while completed jobs wait to be taken. */
int sx_async_fd(sx_async *a);

/* Waits up to ms (or until a job completes). */
void sx_async_wait(sx_async *a, long ms);

/* Stops the worker: what is queued or in flight comes back (sx_async_take)
 * with kind SX_SHUTDOWN, counted as failed. Returns when the thread ended. */
void sx_async_stop(sx_async *a);

/* Frees a stopped worker's state (jobs not taken are freed too). */
void sx_async_free(sx_async *a);

/* In a forked child: lets go of the parent's worker state without touching
 * its lock, thread or connections (they are the parent's; the memory is
 * leaked, once per fork). */
void sx_async_disown(sx_async *a);

/* The process that created a. */
pid_t sx_async_pid(const sx_async *a);

#endif
