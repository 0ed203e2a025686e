/*
 * policy.h - the delivery policy: what a finished attempt means, whether to
 * try again and after how long, and where the call is counted.
 *
 * Decided here once for every transport: the synchronous loop
 * (transport.c), the background worker (async.c) and the OpenResty
 * transport (src/sendx/resty.lua, through bridge.c). A transport reports
 * what it saw in an sx_attempt; sx_policy_next answers. Knows nothing of Lua
 * and of libcurl's handles.
 */
#ifndef SENDX_POLICY_H
#define SENDX_POLICY_H

#include <stddef.h>

#define SX_MAX_RESPONSE ((size_t)1024 * 1024) /* bytes of response body kept */
#define SX_MAX_RETRY_WAIT_MS 30000            /* Retry-After is clamped to this by default */
#define SX_MAX_BACKOFF_MS 5000                /* the backoff's ceiling by default */

#define SX_MESSAGE_MAX 256 /* bytes of a transport's message kept (CURL_ERROR_SIZE) */

/* The words the transports share. */
#define SX_MSG_TOO_LARGE "response body larger than 1 MiB"
#define SX_MSG_SHUTDOWN "the client was closed before the call completed"
#define SX_MSG_QUEUE_FULL "queue full"
#define SX_MSG_TOO_LARGE_FOR_QUEUE "too large for max_queue_bytes"
#define SX_MSG_CLOSING "client is closing"
#define SX_MSG_SPOOL_FULL "spool full"
#define SX_MSG_UNKNOWN_OUTCOME "cut mid-send (the process stopped or the client closed); " \
    "a call that increments is never sent twice"

typedef enum sx_kind {
    SX_OK = 0,
    SX_NETWORK,
    SX_TIMEOUT,
    SX_TLS,
    SX_HTTP,
    SX_API,
    SX_DECODE,
    SX_SHUTDOWN, /* async: the client closed (or nginx exited) before the call completed */
    SX_UNKNOWN_OUTCOME, /* spool: an increment was cut mid-send: it may have arrived */
    SX_KIND_COUNT
} sx_kind;

/* The outcome of a call as the transports hand it to the results code. */
typedef struct sx_result {
    sx_kind kind;   /* SX_OK (2xx), SX_HTTP (another status, or a body over the
                     * cap), or the transport-level failure */
    int too_large;  /* the body passed SX_MAX_RESPONSE (kind SX_HTTP) */
    long status;    /* HTTP status of the last response, 0 when none came */
    int attempts;
    int retryable;  /* another try could succeed and is safe to make */
    const char *message; /* the transport's words when kind is not SX_OK/SX_HTTP */
} sx_result;

typedef struct sx_policy {
    int retries;            /* attempts after the first; -1: no limit */
    long max_retry_wait_ms; /* Retry-After is clamped to this */
    long max_backoff_ms;    /* the exponential backoff stops growing here */
} sx_policy;

/* What one attempt saw, as its transport reports it. */
typedef struct sx_attempt {
    sx_kind kind;         /* SX_OK when a whole response came, whatever its
                           * status; else SX_NETWORK, SX_TIMEOUT or SX_TLS */
    long status;          /* 0 when no response came */
    int too_large;        /* the response body passed SX_MAX_RESPONSE */
    int not_sent;         /* the request surely never reached the server */
    long retry_after_ms;  /* the response's Retry-After, -1 when none */
    const char *message;  /* the transport's words, or NULL */
} sx_attempt;

/* The policy of a client: retries (0-10), max_retry_wait_ms; the backoff's
 * ceiling is SX_MAX_BACKOFF_MS. */
void sx_policy_init(sx_policy *p, int retries, long max_retry_wait_ms);

/* The verdict on attempt number `attempt` (1 for the first) of a call;
 * `idempotent` is 0 for calls that must not run twice (++N/--N increments).
 * Fills r: the kind (SX_OK for a 2xx answer; SX_HTTP for another status or a
 * body over the cap; else the transport's kind), message, retryable,
 * attempts. Returns the wait in ms before the next attempt, or -1 when the
 * call is over. `rng` is the caller's jitter state. */
long sx_policy_next(const sx_policy *p, const sx_attempt *a, int attempt, int idempotent,
                    unsigned *rng, sx_result *r);

typedef enum sx_bucket { SX_BUCKET_SENT, SX_BUCKET_FAILED } sx_bucket;

/* Where a call that ended with `kind` (after the response was read: api and
 * decode failures included) is counted in the stats. */
sx_bucket sx_policy_bucket(sx_kind kind);

/* What a 2xx answer's body makes of the call, as the results code will see
 * it: SX_OK (a JSON object whose "status" is "200" or 200), SX_API (another
 * object) or SX_DECODE (not a JSON object). For callers that cannot build
 * Lua values (the worker thread). */
sx_kind sx_policy_judge_body(const char *body, size_t len);

/* A Retry-After value (delta-seconds or HTTP-date, optional whitespace
 * around it) in ms, at most a day; -1 when unusable. */
long sx_retry_after_ms(const char *v, size_t len);

/* The name of a kind, as info.kind shows it. */
const char *sx_kind_name(sx_kind kind);

#endif
