/*
 * transport.h - sending one request with libcurl, with the retry policy.
 *
 * Knows nothing of Lua: it fills an sx_result that the module glue turns
 * into Lua values after libcurl has returned.
 */
#ifndef SENDX_TRANSPORT_H
#define SENDX_TRANSPORT_H

#include <curl/curl.h>
#include <sys/types.h>
#include "buffer.h"
#include "policy.h"

/* What the caller chooses; strings are copied by sx_conn_open. */
typedef struct sx_conn_opts {
    const char *auth_header; /* "api_key: KEY" or "X-Team-ApiKey: KEY" */
    const char *user_agent;
    const char *ca_file;     /* NULL: the system's trust store */
    const char *proxy;       /* NULL: the environment's proxy settings */
    int no_env_proxy;        /* ignore the environment's proxies */
    long timeout_ms, connect_timeout_ms, max_retry_wait_ms;
    int retries;
} sx_conn_opts;

/* One attempt, for the request log (option log, SENDX_DEBUG). */
typedef struct sx_attempt_rec {
    sx_kind kind;           /* what this attempt ended as (a 2xx: judged by its body) */
    long status;            /* 0 when no response came */
    int attempt;            /* 1 for the first */
    double ms;              /* how long it took */
    long long bytes_out, bytes_in; /* request and response bodies on the wire */
    char *response;         /* with log_bodies: a copy of the answer (malloc'ed) */
    size_t response_len;
} sx_attempt_rec;

#define SX_MAX_RECS 11      /* a call's attempts: retries is at most 10 */

typedef struct sx_conn {
    CURL *curl;
    struct curl_slist *headers;
    sx_policy policy;       /* retries, waits: see policy.h */
    unsigned rng;           /* jitter state, per connection: no globals */
    sx_buf response;        /* body of the last response */
    long retry_after_ms;    /* from the last response, -1 when absent */
    int too_large;          /* the last body passed SX_MAX_RESPONSE */
    pid_t pid;              /* the process whose connections the handle holds */
    int logging;            /* keep a record of each attempt (2: with the answers) */
    int nrecs;              /* records of the current call (since sx_conn_start) */
    sx_attempt_rec recs[SX_MAX_RECS];
    char errbuf[CURL_ERROR_SIZE];
} sx_conn;

/* Initialises libcurl once per process; 0 on success. Thread-safe. */
int sx_transport_global_init(void);

/* 0 on success, -1 when libcurl or memory failed (c is then closed). */
int sx_conn_open(sx_conn *c, const sx_conn_opts *o);
void sx_conn_close(sx_conn *c);

/* POSTs body to url, retrying per the delivery policy (policy.h). `idempotent` is 0 for requests
 * that must not run twice (increments): those are retried only when the
 * request surely never reached the server. The body must stay alive until
 * the call returns. */
void sx_conn_post(sx_conn *c, const char *url, const char *body, size_t len,
                  int idempotent, sx_result *r);

/* The steps of sx_conn_post, for a caller that runs the transfer itself
 * (a multi handle): sx_conn_start sets the request up, sx_conn_clear_answer
 * forgets the last answer before a new attempt, and sx_conn_finish judges
 * the attempt that ended with `rc` (sx_policy_next): it returns the wait in
 * ms before the next attempt, or -1 when the call is over. */
void sx_conn_start(sx_conn *c, const char *url, const char *body, size_t len, int idempotent);
void sx_conn_clear_answer(sx_conn *c);
long sx_conn_finish(sx_conn *c, CURLcode rc, int idempotent, int attempt, sx_result *r);

/* Frees the records' copies of the answers and forgets them. */
void sx_conn_clear_recs(sx_conn *c);

/* In a child process after fork(), swaps the handle for a duplicate without
 * the parent's connections. 0 when nothing was needed or it worked. */
int sx_conn_after_fork(sx_conn *c);


#endif
