/*
 * async.c - the background worker: a queue, a thread, a libcurl multi
 * handle with up to max_in_flight transfers, and the retry policy of the
 * synchronous calls (backoff, Retry-After, the ++N rule via sx_conn_finish).
 *
 * The lock guards the lists and counters shared with the caller's thread;
 * the multi handle, the slots and the retry list belong to the worker.
 */
#define _GNU_SOURCE      /* dladdr, on glibc */
#define _DARWIN_C_SOURCE /* dladdr, on macOS, despite _POSIX_C_SOURCE */
#if defined(__FreeBSD__) || defined(__NetBSD__) || defined(__OpenBSD__) || defined(__DragonFly__)
#undef _POSIX_C_SOURCE   /* the BSDs hide dladdr under it */
#endif
#include "async_impl.h"

#include <dlfcn.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

long long sx_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---------------------------------------------------------------------------
 * Jobs and lists
 * ------------------------------------------------------------------------ */

sx_job *sx_job_new(const char *url, const char *body, size_t len, int idempotent)
{
    size_t ulen = strlen(url);
    sx_job *j = malloc(sizeof *j + ulen + 1 + len + 1);
    if (j == NULL)
        return NULL;
    memset(j, 0, sizeof *j);
    j->url = (char *)(j + 1);
    memcpy(j->url, url, ulen + 1);
    j->body = j->url + ulen + 1;
    memcpy(j->body, body, len);
    j->body[len] = '\0';
    j->len = len;
    j->idempotent = idempotent;
    j->keep = 1;
    return j;
}

void sx_job_free(sx_job *j)
{
    int i;
    if (j != NULL) {
        free(j->response);
        for (i = 0; i < j->nrecs; i++)
            free(j->recs[i].response);
        free(j->recs);
    }
    free(j);
}

/* Moves the slot's record of the attempt that ended to j. */
static void take_record(sx_job *j, sx_conn *slot)
{
    if (slot->nrecs == 0)
        return;
    if (j->recs == NULL && (j->recs = calloc(SX_MAX_RECS, sizeof *j->recs)) == NULL)
        return;
    if (j->nrecs < SX_MAX_RECS) {
        j->recs[j->nrecs] = slot->recs[0];
        j->recs[j->nrecs++].attempt = j->attempts;
        slot->recs[0].response = NULL; /* j's now */
    }
    sx_conn_clear_recs(slot);
}

void sx_append(sx_job **head, sx_job **tail, sx_job *j)
{
    j->next = NULL;
    if (*tail != NULL)
        (*tail)->next = j;
    else
        *head = j;
    *tail = j;
}

static sx_job *pop(sx_job **head, sx_job **tail)
{
    sx_job *j = *head;
    if (j != NULL) {
        *head = j->next;
        if (*head == NULL)
            *tail = NULL;
        j->next = NULL;
    }
    return j;
}

static void free_list(sx_job *j)
{
    while (j != NULL) {
        sx_job *next = j->next;
        sx_job_free(j);
        j = next;
    }
}

/* ---------------------------------------------------------------------------
 * The caller's side
 * ------------------------------------------------------------------------ */

int sx_async_submit(sx_async *a, sx_job *j)
{
    int rc = 0;
    pthread_mutex_lock(&a->mu);
    if (a->stopping)
        rc = SX_SUBMIT_CLOSING;
    else if (j->len > a->o.max_bytes)
        rc = SX_SUBMIT_TOO_LARGE;
    else if (a->npending + a->nwaiting + a->ndone >= a->o.max_queue ||
             a->pending_bytes + a->done_bytes + j->len > a->o.max_bytes)
        rc = SX_SUBMIT_FULL;
    if (rc == 0) {
        j->t_submit_ms = sx_now_ms();
        sx_append(&a->pending, &a->pending_tail, j);
        a->npending++;
        a->pending_bytes += j->len;
    } else {
        a->dropped++;
    }
    pthread_mutex_unlock(&a->mu);
    if (rc == 0)
        curl_multi_wakeup(a->multi);
    return rc;
}

void sx_async_spooled(sx_async *a, int accepted)
{
    int wake;
    pthread_mutex_lock(&a->mu);
    if (accepted > 0) {
        a->spooled++;
        a->own++;
    } else if (accepted == 0) {
        a->dropped++;
    }
    /* once per look, and only when a slot could take the call */
    wake = !a->spool_dirty && a->nin_flight + a->npending < a->nslots;
    a->spool_dirty = 1;
    pthread_mutex_unlock(&a->mu);
    if (wake)
        curl_multi_wakeup(a->multi);
}

sx_job *sx_async_take(sx_async *a)
{
    sx_job *j;
    pthread_mutex_lock(&a->mu);
    j = pop(&a->done, &a->done_tail);
    if (j != NULL) {
        a->ndone--;
        a->done_bytes -= j->len + j->response_len;
    }
    if (a->done == NULL)
        sx_ready_clear(&a->ready);
    pthread_mutex_unlock(&a->mu);
    return j;
}

void sx_async_stats(sx_async *a, sx_stats *s)
{
    pthread_mutex_lock(&a->mu);
    s->queued = a->npending + a->nwaiting;
    if (a->o.spool != NULL) /* this client's calls on disk, not being sent */
        s->queued = a->own > a->nin_flight ? a->own - a->nin_flight : 0;
    s->in_flight = a->nin_flight;
    s->spooled = a->spooled;
    s->sent = a->sent;
    s->failed = a->failed;
    s->retried = a->retried;
    s->dropped = a->dropped;
    pthread_mutex_unlock(&a->mu);
}

void sx_async_metrics(sx_async *a, sx_counts *counts, sx_hist *hist)
{
    pthread_mutex_lock(&a->mu);
    sx_counts_merge(counts, &a->counts);
    sx_hist_merge(hist, &a->hist);
    pthread_mutex_unlock(&a->mu);
}

long sx_async_outstanding(sx_async *a)
{
    long n;
    pthread_mutex_lock(&a->mu);
    n = a->npending + a->nwaiting + a->nin_flight + a->ndone;
    if (a->o.spool != NULL) /* this client's calls not settled, and those to take back */
        n = a->own + a->ndone;
    pthread_mutex_unlock(&a->mu);
    return n;
}

int sx_async_fd(sx_async *a)
{
    return a->ready.rfd;
}

pid_t sx_async_pid(const sx_async *a)
{
    return a->pid;
}

void sx_async_wait(sx_async *a, long ms)
{
    struct pollfd p;
    p.fd = a->ready.rfd;
    p.events = POLLIN;
    p.revents = 0;
    while (poll(&p, 1, (int)ms) < 0 && errno == EINTR)
        ;
}

/* ---------------------------------------------------------------------------
 * The worker
 * ------------------------------------------------------------------------ */

/* Under mu: counts j where the policy says (a 2xx answer's body decides
 * between ok, api and decode), then hands it back to the caller, or frees it
 * when nobody will read its results. */
void sx_complete(sx_async *a, sx_job *j)
{
    sx_kind final = j->r.kind;
    if (final == SX_OK)
        final = sx_policy_judge_body(j->response ? j->response : "", j->response_len);
    if (sx_policy_bucket(final) == SX_BUCKET_SENT)
        a->sent++;
    else
        a->failed++;
    sx_counts_add(&a->counts, final, j->attempts);
    sx_hist_add(&a->hist, (double)(sx_now_ms() - j->t_submit_ms));
    if (!j->keep) {
        sx_job_free(j);
        return;
    }
    sx_append(&a->done, &a->done_tail, j);
    a->ndone++;
    a->done_bytes += j->len + j->response_len;
    if (a->ndone == 1) /* under mu, like the clear in sx_async_take */
        sx_ready_set(&a->ready);
}

/* The oldest retry that is due, or NULL. */
static sx_job *due_retry(sx_async *a, long long now)
{
    sx_job **p;
    for (p = &a->waiting; *p != NULL; p = &(*p)->next) {
        if ((*p)->due_ms <= now) {
            sx_job *j = *p;
            *p = j->next;
            j->next = NULL;
            return j;
        }
    }
    return NULL;
}

/* Under mu: fills free slots with due retries, then with queued jobs. */
static void start_ready(sx_async *a)
{
    long long now = sx_now_ms();
    int i;
    for (i = 0; i < a->nslots; i++) {
        sx_job *j;
        if (a->busy[i] != NULL)
            continue;
        if ((j = due_retry(a, now)) != NULL) {
            a->nwaiting--;
        } else if ((j = pop(&a->pending, &a->pending_tail)) != NULL) {
            a->npending--;
            a->pending_bytes -= j->len;
        } else {
            break;
        }
        sx_conn_start(&a->slots[i], j->url, j->body, j->len, j->idempotent);
        j->attempts++;
        if (curl_multi_add_handle(a->multi, a->slots[i].curl) != CURLM_OK) {
            j->r.kind = SX_NETWORK;
            j->r.attempts = j->attempts;
            j->r.message = "libcurl could not start the transfer";
            sx_complete(a, j);
            continue;
        }
        a->busy[i] = j;
        a->nin_flight++;
    }
}

/* Keeps what the caller needs once the slot is reused. */
static void keep_outcome(sx_job *j, sx_conn *slot)
{
    if (j->r.message != NULL) {
        size_t n = strlen(j->r.message);
        if (n >= sizeof j->message)
            n = sizeof j->message - 1;
        memcpy(j->message, j->r.message, n);
        j->message[n] = '\0';
        j->r.message = j->message;
    }
    if (slot->response.len > 0 && !slot->too_large &&
        (j->response = malloc(slot->response.len)) != NULL) {
        memcpy(j->response, slot->response.data, slot->response.len);
        j->response_len = slot->response.len;
    }
}

/* Collects finished transfers: retries them later or completes them.
 * Returns how many slots it freed. */
static int collect(sx_async *a)
{
    CURLMsg *m;
    sx_job *spooled = NULL; /* settled on disk together, after the loop */
    int left, i, freed = 0;
    while ((m = curl_multi_info_read(a->multi, &left)) != NULL) {
        sx_job *j;
        long wait;
        CURLcode rc = m->data.result; /* m does not outlive the removal */
        if (m->msg != CURLMSG_DONE)
            continue;
        for (i = 0; i < a->nslots && a->slots[i].curl != m->easy_handle; i++)
            ;
        if (i == a->nslots || (j = a->busy[i]) == NULL)
            continue;
        curl_multi_remove_handle(a->multi, a->slots[i].curl);
        a->busy[i] = NULL;
        freed++;
        wait = sx_conn_finish(&a->slots[i], rc, j->idempotent, j->attempts, &j->r);
        take_record(j, &a->slots[i]);
        if (j->spool_id != 0) {
            keep_outcome(j, &a->slots[i]);
            sx_spool_decide(a, j, wait);
            j->next = spooled;
            spooled = j;
            continue;
        }
        pthread_mutex_lock(&a->mu);
        a->nin_flight--;
        if (wait >= 0 && !a->stopping) {
            j->due_ms = sx_now_ms() + wait;
            j->next = a->waiting;
            a->waiting = j;
            a->nwaiting++;
            a->retried++;
        } else {
            keep_outcome(j, &a->slots[i]);
            sx_complete(a, j);
        }
        pthread_mutex_unlock(&a->mu);
    }
    if (spooled != NULL)
        sx_spool_settle(a, spooled);
    return freed;
}

/* How long the worker's poll may wait: until the next retry is due (when a
 * slot is free to take it), at most 1 s; transfers and wakeups end it sooner. */
static int poll_timeout_ms(sx_async *a)
{
    long long now = sx_now_ms(), next = now + 1000;
    sx_job *j;
    int i, free_slot = 0;
    for (i = 0; i < a->nslots && !free_slot; i++)
        free_slot = a->busy[i] == NULL;
    if (free_slot)
        for (j = a->waiting; j != NULL; j = j->next)
            if (j->due_ms < next)
                next = j->due_ms;
    if (a->o.spool != NULL)
        return (int)sx_spool_sleep_ms(a, next > now ? (long)(next - now) : 0);
    return next > now ? (int)(next - now) : 0;
}

static void shut_down(sx_async *a, sx_job *j)
{
    j->r.kind = SX_SHUTDOWN;
    j->r.status = 0;
    j->r.retryable = 0;
    j->r.attempts = j->attempts;
    j->r.message = SX_MSG_SHUTDOWN;
    sx_complete(a, j);
}

/* Under mu, once stopping: every call not completed goes back as shut down. */
static void cut_all(sx_async *a)
{
    sx_job *j;
    int i;
    for (i = 0; i < a->nslots; i++) {
        if ((j = a->busy[i]) == NULL)
            continue;
        curl_multi_remove_handle(a->multi, a->slots[i].curl);
        a->busy[i] = NULL;
        a->nin_flight--;
        if (j->spool_id != 0)
            sx_spool_cut(a, j, 1);
        else
            shut_down(a, j);
    }
    while ((j = a->waiting) != NULL) {
        a->waiting = j->next;
        a->nwaiting--;
        shut_down(a, j);
    }
    while ((j = pop(&a->pending, &a->pending_tail)) != NULL) {
        a->npending--;
        a->pending_bytes -= j->len;
        if (j->spool_id != 0)
            sx_spool_cut(a, j, 0);
        else
            shut_down(a, j);
    }
}

/* ---------------------------------------------------------------------------
 * fork(): no worker may be inside libcurl or OpenSSL when the process forks,
 * or the child inherits a lock that nobody will release (a sync call or a
 * close in the child would hang). Before fork, every live worker of the
 * process is asked to hold still at the top of its loop, where it holds no
 * lock but mu (released while it waits); after fork the parent's go on.
 * ------------------------------------------------------------------------ */

static pthread_mutex_t registry_mu = PTHREAD_MUTEX_INITIALIZER;
static sx_async *registry;           /* under registry_mu */
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

/* Under mu: waits while a fork is under way. */
static void hold_still(sx_async *a)
{
    while (a->hold) {
        a->held = 1;
        pthread_cond_broadcast(&a->cv);
        pthread_cond_wait(&a->cv, &a->mu);
    }
    a->held = 0;
}

static void before_fork(void)
{
    sx_async *a;
    pthread_mutex_lock(&registry_mu); /* held across fork: no worker comes or goes */
    for (a = registry; a != NULL; a = a->next_live) {
        pthread_mutex_lock(&a->mu);
        a->hold = 1;
        pthread_mutex_unlock(&a->mu);
        curl_multi_wakeup(a->multi);
        pthread_mutex_lock(&a->mu);
        while (!a->held && !a->exited)
            pthread_cond_wait(&a->cv, &a->mu);
        pthread_mutex_unlock(&a->mu);
    }
}

static void after_fork_parent(void)
{
    sx_async *a;
    for (a = registry; a != NULL; a = a->next_live) {
        pthread_mutex_lock(&a->mu);
        a->hold = 0;
        pthread_cond_broadcast(&a->cv);
        pthread_mutex_unlock(&a->mu);
    }
    pthread_mutex_unlock(&registry_mu);
}

static void after_fork_child(void)
{
    registry = NULL; /* the workers stayed in the parent */
    pthread_mutex_unlock(&registry_mu);
}

/* The handlers live in this library: it must stay loaded once they are
 * registered, even after lua_close unloads C modules. */
static void install_atfork(void)
{
    Dl_info self;
    if (dladdr((void *)install_atfork, &self) != 0 && self.dli_fname != NULL) {
#if defined(RTLD_NODELETE) && defined(RTLD_NOLOAD)
        (void)dlopen(self.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
#else
        (void)dlopen(self.dli_fname, RTLD_NOW); /* a reference never let go */
#endif
    }
    pthread_atfork(before_fork, after_fork_parent, after_fork_child);
}

static void register_worker(sx_async *a)
{
    pthread_once(&atfork_once, install_atfork);
    pthread_mutex_lock(&registry_mu);
    a->next_live = registry;
    registry = a;
    pthread_mutex_unlock(&registry_mu);
}

static void unregister_worker(sx_async *a)
{
    sx_async **p;
    pthread_mutex_lock(&registry_mu);
    for (p = &registry; *p != NULL; p = &(*p)->next_live)
        if (*p == a) {
            *p = a->next_live;
            break;
        }
    pthread_mutex_unlock(&registry_mu);
}

static void *worker(void *arg)
{
    sx_async *a = arg;
    for (;;) {
        int running, stop;
        if (a->o.spool != NULL)
            sx_spool_feed(a);
        pthread_mutex_lock(&a->mu);
        hold_still(a);
        stop = a->stopping;
        if (stop) {
            cut_all(a);
            a->exited = 1;
            pthread_cond_broadcast(&a->cv);
        } else {
            start_ready(a);
        }
        pthread_mutex_unlock(&a->mu);
        if (stop)
            return NULL;
        curl_multi_perform(a->multi, &running);
        if (collect(a) > 0)
            continue; /* fill the freed slots before sleeping */
        if (curl_multi_poll(a->multi, NULL, 0, poll_timeout_ms(a), NULL) != CURLM_OK) {
            struct timespec ts = { 0, 10000000 }; /* no busy loop on a broken poll */
            nanosleep(&ts, NULL);
        }
    }
}

/* ---------------------------------------------------------------------------
 * Life cycle
 * ------------------------------------------------------------------------ */

static void free_slots(sx_async *a)
{
    int i;
    for (i = 0; i < a->nslots; i++) {
        a->slots[i].headers = NULL; /* the client's, not ours */
        sx_conn_close(&a->slots[i]);
    }
}

/* A slot: a duplicate of the model with its callbacks pointed at itself. */
static int open_slot(sx_conn *s, CURL *model, const sx_async_opts *o)
{
    int ok;
    memset(s, 0, sizeof *s);
    if ((s->curl = curl_easy_duphandle(model)) == NULL)
        return -1;
    ok = curl_easy_setopt(s->curl, CURLOPT_WRITEDATA, s) == CURLE_OK &&
         curl_easy_setopt(s->curl, CURLOPT_HEADERDATA, s) == CURLE_OK &&
         curl_easy_setopt(s->curl, CURLOPT_ERRORBUFFER, s->errbuf) == CURLE_OK;
#if LIBCURL_VERSION_NUM >= 0x075700
    /* close() must not wait for a DNS lookup in flight */
    ok = ok && curl_easy_setopt(s->curl, CURLOPT_QUICK_EXIT, 1L) == CURLE_OK;
#endif
    sx_policy_init(&s->policy, o->retries, o->max_retry_wait_ms);
    s->logging = o->logging;
    if (o->spool != NULL)
        sx_spool_slot_policy(&s->policy);
    s->retry_after_ms = -1;
    s->rng = (unsigned)time(NULL) ^ (unsigned)(size_t)s;
    s->pid = getpid();
    return ok ? 0 : -1;
}

/* The one way out: frees whatever sx_async_new made (the thread, if any,
 * has ended). */
static void teardown(sx_async *a)
{
    unregister_worker(a);
    free_list(a->done);
    free_list(a->unsettled); /* still claimed on disk: sent again once the lease ends */
    if (a->has_mutex) {
        pthread_cond_destroy(&a->cv);
        pthread_mutex_destroy(&a->mu);
    }
    free_slots(a); /* the slots not opened are zeroed: closing them is a no-op */
    if (a->multi != NULL)
        curl_multi_cleanup(a->multi);
    sx_ready_close(&a->ready);
    sx_spool_close(a->o.spool);
    free(a->base);
    free(a);
}

sx_async *sx_async_new(CURL *model, const sx_async_opts *o)
{
    sx_async *a = calloc(1, sizeof *a);
    int i;
    if (a == NULL)
        return NULL;
    a->o = *o;
    a->o.base = NULL; /* the caller's; a->base is the copy */
    a->pid = getpid();
    a->nslots = o->max_in_flight < 1 ? 1 : o->max_in_flight > MAX_SLOTS ? MAX_SLOTS : o->max_in_flight;
    if (sx_ready_open(&a->ready) != 0)
        a->ready.rfd = a->ready.wfd = -1; /* refused below */
    a->multi = curl_multi_init();
    if (pthread_mutex_init(&a->mu, NULL) == 0) {
        if (pthread_cond_init(&a->cv, NULL) == 0)
            a->has_mutex = 1;
        else
            pthread_mutex_destroy(&a->mu);
    }
    for (i = 0; i < a->nslots; i++)
        if (open_slot(&a->slots[i], model, o) != 0)
            break;
    if (o->spool != NULL && (a->base = strdup(o->base)) == NULL)
        i = -1;
    if (i < a->nslots || a->ready.rfd < 0 || a->multi == NULL || !a->has_mutex) {
        teardown(a);
        return NULL;
    }
    /* connections kept for reuse: enough for every slot */
    curl_multi_setopt(a->multi, CURLMOPT_MAXCONNECTS, (long)a->nslots);
    if (pthread_create(&a->thread, NULL, worker, a) != 0) {
        teardown(a);
        return NULL;
    }
    register_worker(a);
    return a;
}

void sx_async_stop(sx_async *a)
{
    if (a->joined)
        return;
    a->joined = 1;
    pthread_mutex_lock(&a->mu);
    a->stopping = 1;
    pthread_mutex_unlock(&a->mu);
    curl_multi_wakeup(a->multi);
    pthread_join(a->thread, NULL);
}

void sx_async_free(sx_async *a)
{
    teardown(a);
}

void sx_async_disown(sx_async *a)
{
    /* Our copies of the descriptors only; the parent's stay open. The spool
     * connection is not touched either (SQLite's must not cross fork). */
    sx_ready_close(&a->ready);
}
