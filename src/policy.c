/*
 * policy.c - the delivery policy shared by every transport (see policy.h):
 * the final kind of an attempt, the retry rule (transient failures only; a
 * call that must not run twice is repeated only when it surely never reached
 * the server, or was refused with 429), exponential backoff with jitter,
 * Retry-After as a floor (clamped), and the stats bucket.
 */
#include "policy.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *const kind_names[] = {
    "ok", "network", "timeout", "tls", "http", "api", "decode", "shutdown",
};

/* One name per kind: the table follows the enum. */
typedef char kind_names_follow_the_enum[(sizeof kind_names / sizeof kind_names[0] ==
                                         SX_KIND_COUNT) ? 1 : -1];

const char *sx_kind_name(sx_kind kind)
{
    return (unsigned)kind < SX_KIND_COUNT ? kind_names[kind] : "unknown";
}

void sx_policy_init(sx_policy *p, int retries, long max_retry_wait_ms)
{
    p->retries = retries;
    p->max_retry_wait_ms = max_retry_wait_ms;
    p->max_backoff_ms = SX_MAX_BACKOFF_MS;
}

sx_bucket sx_policy_bucket(sx_kind kind)
{
    return kind == SX_OK ? SX_BUCKET_SENT : SX_BUCKET_FAILED;
}

static int is_ows(char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n';
}

long sx_retry_after_ms(const char *v, size_t len)
{
    char tmp[64];
    char *end;
    long secs;
    time_t when;
    while (len > 0 && is_ows(v[len - 1]))
        len--;
    while (len > 0 && is_ows(*v))
        v++, len--;
    if (len == 0 || len >= sizeof tmp)
        return -1;
    memcpy(tmp, v, len);
    tmp[len] = '\0';
    if (tmp[0] >= '0' && tmp[0] <= '9') { /* delta-seconds: digits only */
        secs = strtol(tmp, &end, 10);
        if (*end != '\0')
            return -1;
        return secs > 86400 ? 86400000L : secs * 1000;
    }
    when = curl_getdate(tmp, NULL);
    if (when == (time_t)-1)
        return -1;
    secs = (long)(when - time(NULL));
    return secs < 0 ? 0 : (secs > 86400 ? 86400000L : secs * 1000);
}

static unsigned next_random(unsigned *s)
{
    unsigned x = *s ? *s : 0x9e3779b9u;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return *s = x;
}

/* The wait before attempt `attempt + 1`: 200 ms doubling per attempt up to
 * the ceiling, half of it jitter; never below Retry-After (clamped). */
static long backoff_ms(const sx_policy *p, int attempt, long retry_after_ms, unsigned *rng)
{
    long base = p->max_backoff_ms, wait;
    if (attempt < 20 && (200L << (attempt - 1)) < base)
        base = 200L << (attempt - 1);
    wait = base / 2 + (long)(next_random(rng) % (unsigned long)(base / 2 + 1));
    if (retry_after_ms > p->max_retry_wait_ms)
        retry_after_ms = p->max_retry_wait_ms;
    return wait > retry_after_ms ? wait : retry_after_ms;
}

/* Another try could succeed (a transient failure) and is safe to make. */
static int retryable(sx_kind kind, long status, int not_sent, int idempotent)
{
    int transient = kind == SX_NETWORK || kind == SX_TIMEOUT ||
                    (kind == SX_HTTP &&
                     (status == 408 || status == 429 || (status >= 500 && status <= 599)));
    if (!transient)
        return 0;
    return idempotent || not_sent || status == 429;
}

long sx_policy_next(const sx_policy *p, const sx_attempt *a, int attempt, int idempotent,
                    unsigned *rng, sx_result *r)
{
    r->status = a->status;
    r->attempts = attempt;
    r->message = a->message;
    r->code = CURLE_OK;
    if (a->too_large) {
        r->kind = SX_HTTP;
        r->code = CURLE_WRITE_ERROR;
        r->message = SX_MSG_TOO_LARGE;
    } else if (a->kind == SX_OK) {
        r->kind = a->status >= 200 && a->status <= 299 ? SX_OK : SX_HTTP;
        r->message = NULL;
    } else {
        r->kind = a->kind;
    }
    r->retryable = !a->too_large && r->kind != SX_OK &&
                   retryable(r->kind, r->status, a->not_sent, idempotent);
    if (!r->retryable || (p->retries >= 0 && attempt > p->retries))
        return -1;
    return backoff_ms(p, attempt, a->retry_after_ms, rng);
}
