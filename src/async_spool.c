/*
 * async_spool.c - the worker's side of the durable spool: claiming due calls
 * into the queue, settling each attempt on disk (delivered: deleted; a
 * retry: due again later; final failure: a dead letter), giving claims back
 * when the client closes. The policy is the one of every transport
 * (sx_policy_next), without an attempt limit and with waits up to 5 minutes;
 * spool_max_age ends the retries.
 */
#include "async_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SPOOL_MAX_WAIT_MS 300000L /* backoff and Retry-After: at most 5 minutes */
#define EXCERPT_MAX 1024          /* of a failed answer's body, kept with a dead letter */
#define LOOK_EVERY_MS 1000        /* for calls other processes left, or that fell due */
#define DONE_RECHECK_MS 50        /* while results wait for poll: has it taken them? */
#define CLAIM_GAP_MS 2            /* between claims while calls keep coming */

static int retry_unsettled(sx_async *a);

static double now_epoch(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

void sx_spool_slot_policy(sx_policy *p)
{
    p->retries = -1;
    p->max_backoff_ms = SPOOL_MAX_WAIT_MS;
    p->max_retry_wait_ms = SPOOL_MAX_WAIT_MS;
}

/* ---------------------------------------------------------------------------
 * Claiming
 * ------------------------------------------------------------------------ */

typedef struct feed {
    sx_async *a;
    sx_job *head, *tail;
    long n;
    size_t bytes;
    int failed; /* out of memory: the claim stays until its lease ends */
} feed;

/* One claimed row becomes a job (url = base + path). */
static void take_row(void *ud, const sx_spool_row *row)
{
    feed *f = ud;
    size_t blen = strlen(f->a->base), plen = strlen(row->path);
    char *url = malloc(blen + plen + 1);
    sx_job *j;
    if (url == NULL) {
        f->failed = 1;
        return;
    }
    memcpy(url, f->a->base, blen);
    memcpy(url + blen, row->path, plen + 1);
    j = sx_job_new(url, row->body, row->len, row->idempotent);
    free(url);
    if (j == NULL) {
        f->failed = 1;
        return;
    }
    j->spool_id = row->id;
    /* its latency counts from when it was spooled, by whichever process */
    j->t_submit_ms = sx_now_ms() - (long long)((now_epoch() - row->created) * 1000);
    j->attempts = row->attempts;
    j->created = row->created;
    j->mine = row->mine;
    j->ref = row->cb_ref;
    /* this client's calls come back when they have a callback; recovered
     * ones when they fail and on_error wants them (see sx_spool_decide);
     * all of them for the request log */
    j->keep = f->a->o.logging || (row->mine ? row->cb_ref >= 0 : f->a->o.report);
    sx_append(&f->head, &f->tail, j);
    f->n++;
    f->bytes += j->len;
}

void sx_spool_feed(sx_async *a)
{
    long long now = sx_now_ms();
    double next_due = 0;
    int room, n, lost = 0, look;
    feed f;
    sx_spool_upkeep(a->o.spool);
    pthread_mutex_lock(&a->mu);
    room = a->nslots - (int)a->nin_flight - (int)a->npending;
    if (a->ndone >= a->o.max_queue || a->done_bytes >= a->o.max_bytes) {
        /* results wait for poll (callbacks, the request log): no claims
         * until they are taken, as the in-memory queue refuses calls */
        room = 0;
        if (a->next_look_ms < now + DONE_RECHECK_MS)
            a->next_look_ms = now + DONE_RECHECK_MS;
    }
    /* a call just added is claimed at once when the worker is idle, else
     * with those that follow it within CLAIM_GAP_MS: one transaction for many */
    look = !a->stopping && room > 0 &&
           (now >= a->next_look_ms ||
            (a->spool_dirty && (room == a->nslots || now >= a->last_claim_ms + CLAIM_GAP_MS)));
    if (look)
        a->spool_dirty = 0;
    else if (a->spool_dirty && room > 0 && a->next_look_ms > a->last_claim_ms + CLAIM_GAP_MS)
        a->next_look_ms = a->last_claim_ms + CLAIM_GAP_MS;
    pthread_mutex_unlock(&a->mu);
    if (!look)
        return;
    a->last_claim_ms = now;
    if (retry_unsettled(a) != 0) { /* no new claims while the disk refuses */
        a->next_look_ms = now + LOOK_EVERY_MS;
        return;
    }
    memset(&f, 0, sizeof f);
    f.a = a;
    n = sx_spool_claim(a->o.spool, room, a->o.lease_s, take_row, &f, &next_due, &lost);
    pthread_mutex_lock(&a->mu);
    if (n >= 0 && f.head != NULL) {
        if (a->pending_tail != NULL)
            a->pending_tail->next = f.head;
        else
            a->pending = f.head;
        a->pending_tail = f.tail;
        a->npending += f.n;
        a->pending_bytes += f.bytes;
    } else {
        while (f.head != NULL) { /* the claim was rolled back */
            sx_job *j = f.head;
            f.head = j->next;
            sx_job_free(j);
        }
    }
    a->failed += lost;
    pthread_mutex_unlock(&a->mu);
    a->next_look_ms = now + LOOK_EVERY_MS; /* also after an error */
    if (n >= 0 && !f.failed && n == room)
        a->next_look_ms = now; /* more may be due: look when a slot frees */
    else if (n >= 0 && !f.failed && next_due > 0 && (next_due - now_epoch()) * 1000 < LOOK_EVERY_MS)
        a->next_look_ms = now + (long long)((next_due - now_epoch()) * 1000) + 1;
}

long sx_spool_sleep_ms(sx_async *a, long ms)
{
    long long left = a->next_look_ms - sx_now_ms();
    int room = a->nslots - (int)a->nin_flight;
    if (room <= 0)
        return ms;
    if (left < 0)
        left = 0;
    return left < ms ? (long)left : ms;
}

/* ---------------------------------------------------------------------------
 * Settling
 * ------------------------------------------------------------------------ */

/* "HTTP 404", with the answer's JSON "message" after it when there is one
 * (the words the synchronous call's message would show). */
static void http_words(const sx_job *j, char *buf, size_t size)
{
    const char *p = j->response, *end = p + j->response_len, *key = NULL;
    size_t used;
    snprintf(buf, size, "HTTP %ld", j->r.status);
    for (; p != NULL && p + 10 < end && key == NULL; p++)
        if (memcmp(p, "\"message\"", 9) == 0)
            key = p + 9;
    if (key == NULL)
        return;
    while (key < end && (*key == ' ' || *key == ':'))
        key++;
    if (key >= end || *key++ != '"')
        return;
    used = strlen(buf);
    if (used + 3 < size) {
        buf[used++] = ':';
        buf[used++] = ' ';
    }
    while (key < end && *key != '"' && *key != '\\' && used + 1 < size)
        buf[used++] = *key++;
    buf[used] = '\0';
}

/* What a final failure leaves in the dead letter. */
static int bury(sx_async *a, sx_job *j, sx_kind kind)
{
    size_t n = j->response_len < EXCERPT_MAX ? j->response_len : EXCERPT_MAX;
    const char *msg = j->r.message;
    char buf[200];
    if (msg == NULL) {
        http_words(j, buf, sizeof buf);
        msg = buf;
    }
    return sx_spool_bury(a->o.spool, j->spool_id, j->attempts, sx_kind_name(kind), j->r.status,
                         msg, j->response, n);
}

/* The retries ran past spool_max_age: the call is dead with its last error. */
static void expire(sx_job *j)
{
    char last[sizeof j->message];
    if (j->r.message != NULL)
        snprintf(last, sizeof last, "%s", j->r.message);
    else
        http_words(j, last, sizeof last);
    snprintf(j->message, sizeof j->message, "gave up after spool_max_age: %.200s", last);
    j->r.message = j->message;
    j->r.retryable = 0;
}

enum { SETTLE_DELIVERED = 1, SETTLE_RETRY, SETTLE_BURY };

/* Records j's outcome on disk; 0 on success. */
static int record(sx_async *a, sx_job *j)
{
    switch (j->settle) {
    case SETTLE_DELIVERED:
        return sx_spool_delivered(a->o.spool, j->spool_id);
    case SETTLE_RETRY:
        return sx_spool_retry(a->o.spool, j->spool_id, j->attempts, j->retry_at);
    default:
        return bury(a, j, j->r.kind == SX_OK ? sx_policy_judge_body(j->response ? j->response : "",
                                                                    j->response_len)
                                             : j->r.kind);
    }
}

/* Under mu, once recorded: counted, and handed back (or freed). */
static void settled(sx_async *a, sx_job *j)
{
    if (j->settle == SETTLE_RETRY) {
        a->retried++;
        sx_job_free(j);
        return;
    }
    if (j->mine)
        a->own--;
    sx_complete(a, j);
}

void sx_spool_decide(sx_async *a, sx_job *j, long wait)
{
    sx_kind final = j->r.kind;
    double now = now_epoch();
    if (final == SX_OK)
        final = sx_policy_judge_body(j->response ? j->response : "", j->response_len);
    if (final == SX_OK) {
        j->settle = SETTLE_DELIVERED;
        if (!j->mine && !a->o.logging)
            j->keep = 0; /* a recovered call reports failures only */
    } else if (wait >= 0 && now + wait / 1000.0 - j->created <= a->o.max_age) {
        j->settle = SETTLE_RETRY;
        j->retry_at = now + wait / 1000.0;
    } else {
        j->settle = SETTLE_BURY;
        if (wait >= 0)
            expire(j);
    }
}

void sx_spool_settle(sx_async *a, sx_job *list)
{
    sx_job *j, *next;
    int ok = sx_spool_batch(a->o.spool) == 0, n = 0;
    for (j = list; j != NULL && ok; j = j->next)
        ok = record(a, j) == 0;
    if (list != NULL && (sx_spool_batch_end(a->o.spool, ok) != 0 || !ok))
        ok = 0;
    pthread_mutex_lock(&a->mu);
    for (j = list; j != NULL; j = next) {
        next = j->next;
        n++;
        if (ok)
            settled(a, j);
    }
    a->nin_flight -= n;
    pthread_mutex_unlock(&a->mu);
    if (!ok) { /* the disk refused (full?): tried again, one by one, before any claim */
        for (j = list; j != NULL; j = next) {
            next = j->next;
            j->next = a->unsettled;
            a->unsettled = j;
        }
    }
}

/* The outcomes the disk refused, again; 0 when none is left. */
static int retry_unsettled(sx_async *a)
{
    while (a->unsettled != NULL) {
        sx_job *j = a->unsettled;
        if (record(a, j) != 0)
            return -1;
        a->unsettled = j->next;
        pthread_mutex_lock(&a->mu);
        settled(a, j);
        pthread_mutex_unlock(&a->mu);
    }
    return 0;
}

void sx_spool_cut(sx_async *a, sx_job *j, int sent)
{
    if (sent && !j->idempotent) {
        /* it may have arrived: never sent twice, and its callback says so */
        j->r.kind = SX_UNKNOWN_OUTCOME;
        j->r.status = 0;
        j->r.retryable = 0;
        j->r.attempts = j->attempts;
        j->r.message = SX_MSG_UNKNOWN_OUTCOME;
        if (sx_spool_bury(a->o.spool, j->spool_id, j->attempts, "unknown_outcome", 0,
                          SX_MSG_UNKNOWN_OUTCOME, NULL, 0) == 0) {
            if (j->mine)
                a->own--;
            sx_complete(a, j);
            return;
        }
    } else {
        sx_spool_unclaim(a->o.spool, j->spool_id);
    }
    sx_job_free(j); /* stays on disk; the client's release frees its callback */
}
