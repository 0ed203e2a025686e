/*
 * transport.c - one keep-alive libcurl easy handle per client, the retry
 * policy, and the classification of failures.
 *
 * Callbacks only append to C buffers: nothing here calls Lua, so no Lua error
 * can ever unwind through libcurl's frames.
 */
#include "transport.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

/* ---------------------------------------------------------------------------
 * Process-wide initialisation
 * ------------------------------------------------------------------------ */

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static CURLcode global_rc = CURLE_FAILED_INIT; /* written once, under global_once */

static void global_init(void)
{
    global_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

int sx_transport_global_init(void)
{
    pthread_once(&global_once, global_init);
    return global_rc == CURLE_OK ? 0 : -1;
}

/* ---------------------------------------------------------------------------
 * libcurl callbacks
 * ------------------------------------------------------------------------ */

static size_t on_body(char *data, size_t size, size_t n, void *ud)
{
    sx_conn *c = ud;
    size_t len = size * n;
    if (c->response.len + len > SX_MAX_RESPONSE) {
        c->too_large = 1;
        return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
    }
    return sx_buf_add(&c->response, data, len) == 0 ? len : 0;
}

static size_t on_header(char *data, size_t size, size_t n, void *ud)
{
    static const char name[] = "retry-after:";
    sx_conn *c = ud;
    size_t len = size * n;
    if (len >= 5 && memcmp(data, "HTTP/", 5) == 0)
        c->retry_after_ms = -1; /* a new response (after 100, or a proxy's) */
    else if (len > sizeof name - 1 && strncasecmp(data, name, sizeof name - 1) == 0)
        c->retry_after_ms = sx_retry_after_ms(data + sizeof name - 1, len - (sizeof name - 1));
    return len;
}

/* ---------------------------------------------------------------------------
 * The handle
 * ------------------------------------------------------------------------ */

static int add_header(sx_conn *c, const char *h)
{
    struct curl_slist *l = curl_slist_append(c->headers, h);
    if (l == NULL)
        return -1;
    c->headers = l;
    return 0;
}

#define SETOPT(opt, val) ok = ok && curl_easy_setopt(c->curl, opt, val) == CURLE_OK

static int set_options(sx_conn *c, const sx_conn_opts *o)
{
    int ok = 1;
    SETOPT(CURLOPT_NOSIGNAL, 1L);
    SETOPT(CURLOPT_POST, 1L);
    SETOPT(CURLOPT_HTTPHEADER, c->headers);
    SETOPT(CURLOPT_USERAGENT, o->user_agent);
    SETOPT(CURLOPT_TIMEOUT_MS, o->timeout_ms);
    SETOPT(CURLOPT_CONNECTTIMEOUT_MS, o->connect_timeout_ms);
    SETOPT(CURLOPT_SSL_VERIFYPEER, 1L);
    SETOPT(CURLOPT_SSL_VERIFYHOST, 2L);
    SETOPT(CURLOPT_FOLLOWLOCATION, 0L);
    SETOPT(CURLOPT_ERRORBUFFER, c->errbuf);
    SETOPT(CURLOPT_WRITEFUNCTION, on_body);
    SETOPT(CURLOPT_WRITEDATA, c);
    SETOPT(CURLOPT_HEADERFUNCTION, on_header);
    SETOPT(CURLOPT_HEADERDATA, c);
#if LIBCURL_VERSION_NUM >= 0x075500
    SETOPT(CURLOPT_PROTOCOLS_STR, "http,https");
#else
    SETOPT(CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    if (o->ca_file != NULL) { /* instead of the system's store, not besides it */
        SETOPT(CURLOPT_CAINFO, o->ca_file);
        SETOPT(CURLOPT_CAPATH, (char *)NULL);
    }
    if (o->proxy != NULL)
        SETOPT(CURLOPT_PROXY, o->proxy);
    else if (o->no_env_proxy)
        SETOPT(CURLOPT_NOPROXY, "*");
    return ok ? 0 : -1;
}

int sx_conn_open(sx_conn *c, const sx_conn_opts *o)
{
    memset(c, 0, sizeof *c);
    sx_policy_init(&c->policy, o->retries, o->max_retry_wait_ms);
    c->rng = (unsigned)time(NULL) ^ (unsigned)(size_t)c;
    c->pid = getpid();
    if (sx_transport_global_init() != 0 || (c->curl = curl_easy_init()) == NULL)
        return -1;
    if (add_header(c, "Content-Type: application/json") != 0 ||
        add_header(c, "Accept: application/json") != 0 ||
        add_header(c, "Expect:") != 0 || add_header(c, o->auth_header) != 0 ||
        set_options(c, o) != 0) {
        sx_conn_close(c);
        return -1;
    }
    return 0;
}

void sx_conn_close(sx_conn *c)
{
    sx_conn_clear_recs(c);
    if (c->curl != NULL)
        curl_easy_cleanup(c->curl);
    curl_slist_free_all(c->headers);
    sx_buf_free(&c->response);
    c->curl = NULL;
    c->headers = NULL;
}

/* ---------------------------------------------------------------------------
 * Attempts, judged by the delivery policy (policy.c)
 * ------------------------------------------------------------------------ */

/* Waits ms milliseconds, across signals. */
static void pause_ms(long ms)
{
    struct timespec ts;
    ts.tv_sec = ms / 1000;
    ts.tv_nsec = (ms % 1000) * 1000000L;
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static int is_tls_error(CURLcode rc)
{
    switch (rc) {
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_ENGINE_INITFAILED:
    case CURLE_USE_SSL_FAILED:
        return 1;
    default:
        return 0;
    }
}

/* What the attempt that ended with rc saw, for the policy to judge. */
static void observe(sx_conn *c, CURLcode rc, sx_attempt *a)
{
    long sent = 0;
    memset(a, 0, sizeof *a);
    a->retry_after_ms = c->retry_after_ms;
    if (rc == CURLE_OK || (rc == CURLE_WRITE_ERROR && c->too_large)) {
        curl_easy_getinfo(c->curl, CURLINFO_RESPONSE_CODE, &a->status);
        a->kind = SX_OK;
        a->too_large = rc != CURLE_OK;
        return;
    }
    a->message = c->errbuf[0] ? c->errbuf : curl_easy_strerror(rc);
    a->kind = rc == CURLE_OPERATION_TIMEDOUT ? SX_TIMEOUT
              : is_tls_error(rc)             ? SX_TLS
                                             : SX_NETWORK;
    if (rc == CURLE_SSL_CONNECT_ERROR) {
        long os_errno = 0; /* a reset during the handshake is the network's doing */
        curl_easy_getinfo(c->curl, CURLINFO_OS_ERRNO, &os_errno);
        if (os_errno != 0)
            a->kind = SX_NETWORK;
    }
    if (rc == CURLE_COULDNT_RESOLVE_HOST || rc == CURLE_COULDNT_RESOLVE_PROXY ||
        rc == CURLE_COULDNT_CONNECT) {
        a->not_sent = 1;
        return;
    }
    curl_easy_getinfo(c->curl, CURLINFO_REQUEST_SIZE, &sent);
    a->not_sent = sent == 0;
}

void sx_conn_clear_recs(sx_conn *c)
{
    int i;
    for (i = 0; i < c->nrecs; i++)
        free(c->recs[i].response);
    c->nrecs = 0;
}

/* Keeps a record of the attempt that just ended (as r judged it). */
static void keep_record(sx_conn *c, int attempt, const sx_result *r)
{
    sx_attempt_rec *rec;
    curl_off_t t = 0, up = 0, down = 0;
    if (!c->logging || c->nrecs >= SX_MAX_RECS)
        return;
    rec = &c->recs[c->nrecs++];
    memset(rec, 0, sizeof *rec);
    rec->kind = r->kind;
    if (r->kind == SX_OK)
        rec->kind = sx_policy_judge_body(c->response.data ? c->response.data : "", c->response.len);
    rec->status = r->status;
    rec->attempt = attempt;
    curl_easy_getinfo(c->curl, CURLINFO_TOTAL_TIME_T, &t);
    curl_easy_getinfo(c->curl, CURLINFO_SIZE_UPLOAD_T, &up);
    curl_easy_getinfo(c->curl, CURLINFO_SIZE_DOWNLOAD_T, &down);
    rec->ms = (double)t / 1000.0;
    rec->bytes_out = (long long)up;
    rec->bytes_in = (long long)down;
    if (c->logging > 1 && c->response.len > 0 && (rec->response = malloc(c->response.len)) != NULL) {
        memcpy(rec->response, c->response.data, c->response.len);
        rec->response_len = c->response.len;
    }
}

void sx_conn_start(sx_conn *c, const char *url, const char *body, size_t len, int idempotent)
{
    sx_conn_clear_recs(c);
    if (c->response.cap > (size_t)64 * 1024)
        sx_buf_free(&c->response); /* a large answer is not kept around */
    curl_easy_setopt(c->curl, CURLOPT_URL, url);
    /* libcurl silently resends a request whose reused connection died before
     * an answer came; the server may have acted on it already. A request
     * that must not run twice gets a connection of its own. */
    curl_easy_setopt(c->curl, CURLOPT_FRESH_CONNECT, idempotent ? 0L : 1L);
    curl_easy_setopt(c->curl, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c->curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    sx_conn_clear_answer(c);
}

void sx_conn_clear_answer(sx_conn *c)
{
    sx_buf_reset(&c->response);
    c->too_large = 0;
    c->retry_after_ms = -1;
    c->errbuf[0] = '\0';
}

long sx_conn_finish(sx_conn *c, CURLcode rc, int idempotent, int attempt, sx_result *r)
{
    sx_attempt a;
    long wait;
    observe(c, rc, &a);
    wait = sx_policy_next(&c->policy, &a, attempt, idempotent, &c->rng, r);
    keep_record(c, attempt, r);
    return wait;
}

void sx_conn_post(sx_conn *c, const char *url, const char *body, size_t len,
                  int idempotent, sx_result *r)
{
    int attempt = 0;
    long wait;
    sx_conn_start(c, url, body, len, idempotent);
    for (;;) {
        attempt++;
        if (attempt > 1)
            sx_conn_clear_answer(c);
        wait = sx_conn_finish(c, curl_easy_perform(c->curl), idempotent, attempt, r);
        if (wait < 0)
            return;
        pause_ms(wait);
    }
}

int sx_conn_after_fork(sx_conn *c)
{
    CURL *fresh;
    if (c->curl == NULL || c->pid == getpid())
        return 0;
    /* The handle's cached connections share their sockets (and TLS state)
     * with the parent: closing them here would send on the parent's
     * connections. The old handle is left alone (leaked, once per fork);
     * a duplicate carries the options and no connections. */
    if ((fresh = curl_easy_duphandle(c->curl)) == NULL)
        return -1;
    c->curl = fresh;
    c->pid = getpid();
    return 0;
}
