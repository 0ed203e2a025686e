/*
 * policy.c - the delivery policy shared by every transport (see policy.h):
 * the final kind of an attempt, the retry rule (transient failures only; a
 * call that must not run twice is repeated only when it surely never reached
 * the server, or was refused with 429), exponential backoff with jitter,
 * Retry-After as a floor (clamped), and the stats bucket.
 */
#include "policy.h"

#include <curl/curl.h> /* curl_getdate */

#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *const kind_names[] = {
    "ok", "network", "timeout", "tls", "http", "api", "decode", "shutdown", "unknown_outcome",
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
    r->too_large = a->too_large;
    if (a->too_large) {
        r->kind = SX_HTTP;
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

/* ---------------------------------------------------------------------------
 * The body of a 2xx answer: ok, api or decode, as the results code will find
 * it with lua-cjson, without building a Lua value (the worker thread judges
 * calls whose results nobody will read). RFC 8259, with lua-cjson's one
 * leniency that answers show: raw control characters inside strings.
 * ------------------------------------------------------------------------ */

#define MAX_DEPTH 1000 /* lua-cjson's default decode depth */

typedef struct scan {
    const char *p, *end;
    int depth;
} scan;

static void skip_ws(scan *s)
{
    while (s->p < s->end && is_ows(*s->p))
        s->p++;
}

/* A string at s->p; sets raw and rawlen to its contents when it has no escapes. */
static int scan_string(scan *s, const char **raw, size_t *rawlen)
{
    const char *start = ++s->p;
    int escaped = 0;
    while (s->p < s->end && *s->p != '"') {
        if (*s->p == '\\') { /* raw control characters pass, as lua-cjson lets them */
            escaped = 1;
            if (++s->p == s->end)
                return 0;
            if (*s->p == 'u') {
                int i;
                for (i = 1; i <= 4; i++)
                    if (s->p + i >= s->end || !strchr("0123456789abcdefABCDEF", s->p[i]))
                        return 0;
                s->p += 4;
            } else if (!strchr("\"\\/bfnrt", *s->p)) {
                return 0;
            }
        }
        s->p++;
    }
    if (s->p == s->end)
        return 0;
    if (raw != NULL) {
        *raw = escaped ? NULL : start;
        *rawlen = (size_t)(s->p - start);
    }
    s->p++;
    return 1;
}

/* A number, read as lua-cjson reads it: whatever strtod takes at a '-', a
 * digit, or (inf, nan) an i or n that does not start a literal. */
static int scan_number(scan *s, double *v)
{
    char tmp[64], *end;
    size_t n = 0;
    double d;
    while (s->p + n < s->end && n < sizeof tmp - 1 &&
           strchr("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.+-",
                  s->p[n]) != NULL && s->p[n] != '\0')
        n++;
    memcpy(tmp, s->p, n);
    tmp[n] = '\0';
    d = strtod(tmp, &end);
    if (end == tmp)
        return 0;
    if (v != NULL)
        *v = d;
    s->p += end - tmp;
    return 1;
}

static int scan_value(scan *s);

static int scan_literal(scan *s, const char *word);

/* Where lua-cjson starts a number token. */
static int starts_number(const scan *s)
{
    char ch = *s->p;
    size_t left = (size_t)(s->end - s->p);
    if (ch == '-' || (ch >= '0' && ch <= '9') || ch == 'i' || ch == 'I' || ch == 'N')
        return 1;
    return ch == 'n' && !(left >= 4 && memcmp(s->p, "null", 4) == 0);
}

static int scan_literal(scan *s, const char *word)
{
    size_t n = strlen(word);
    if ((size_t)(s->end - s->p) < n || memcmp(s->p, word, n) != 0)
        return 0;
    s->p += n;
    return 1;
}

/* An object or array at s->p; for the top-level object, *status_ok tells
 * whether its last "status" member is "200" or 200. */
static int scan_container(scan *s, int *status_ok)
{
    char close = *s->p == '{' ? '}' : ']';
    int object = close == '}', first = 1;
    if (++s->depth > MAX_DEPTH)
        return 0;
    s->p++;
    for (;;) {
        const char *key = NULL;
        size_t keylen = 0;
        skip_ws(s);
        if (s->p == s->end)
            return 0;
        if (*s->p == close && first)
            break;
        if (!first) {
            if (*s->p == close)
                break;
            if (*s->p != ',')
                return 0;
            s->p++;
            skip_ws(s);
        }
        first = 0;
        if (object) {
            if (s->p == s->end || *s->p != '"' || !scan_string(s, &key, &keylen))
                return 0;
            skip_ws(s);
            if (s->p == s->end || *s->p != ':')
                return 0;
            s->p++;
            skip_ws(s);
        }
        if (status_ok != NULL && key != NULL && keylen == 6 && memcmp(key, "status", 6) == 0) {
            const char *v = NULL;
            size_t vlen = 0;
            double d = 0;
            if (s->p < s->end && *s->p == '"') {
                if (!scan_string(s, &v, &vlen))
                    return 0;
                *status_ok = v != NULL && vlen == 3 && memcmp(v, "200", 3) == 0;
            } else if (s->p < s->end && starts_number(s)) {
                if (!scan_number(s, &d))
                    return 0;
                *status_ok = d == 200.0;
            } else {
                if (!scan_value(s))
                    return 0;
                *status_ok = 0;
            }
        } else if (!scan_value(s)) {
            return 0;
        }
    }
    s->p++;
    s->depth--;
    return 1;
}

static int scan_value(scan *s)
{
    if (s->p == s->end)
        return 0;
    switch (*s->p) {
    case '{':
    case '[':
        return scan_container(s, NULL);
    case '"':
        return scan_string(s, NULL, NULL);
    case 't':
        return scan_literal(s, "true");
    case 'f':
        return scan_literal(s, "false");
    case 'n':
        return starts_number(s) ? scan_number(s, NULL) : scan_literal(s, "null");
    default:
        return starts_number(s) && scan_number(s, NULL);
    }
}

sx_kind sx_policy_judge_body(const char *body, size_t len)
{
    scan s;
    int status_ok = 0;
    s.p = body;
    s.end = body + len;
    s.depth = 0;
    skip_ws(&s);
    if (s.p == s.end || *s.p != '{' || !scan_container(&s, &status_ok))
        return SX_DECODE;
    skip_ws(&s);
    if (s.p != s.end)
        return SX_DECODE;
    return status_ok ? SX_OK : SX_API;
}
