/*
 * policy_probe.c - asks src/policy.c for its verdicts, for spec/13-policy_spec.lua.
 * Reads lines "KIND STATUS TOO_LARGE NOT_SENT RETRY_AFTER_MS ATTEMPT IDEMPOTENT
 * RETRIES MAX_WAIT_MS SEED" (MAX_WAIT_MS "default": the module's default) or
 * "retry-after TEXT" or "judge HEXBODY", and prints "KIND RETRYABLE WAIT_MS
 * MESSAGE", the ms, or the kind the body makes of a 2xx answer.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "policy.h"

static sx_kind kind_of(const char *s)
{
    int k;
    for (k = 0; k < SX_KIND_COUNT; k++)
        if (strcmp(sx_kind_name((sx_kind)k), s) == 0)
            return (sx_kind)k;
    return SX_KIND_COUNT;
}

int main(void)
{
    char line[1024], kind[32], wait[32];
    while (fgets(line, sizeof line, stdin) != NULL) {
        sx_policy p;
        sx_attempt a;
        sx_result r;
        int attempt, idempotent, retries;
        unsigned seed;
        long w;
        if (strncmp(line, "judge ", 6) == 0) { /* the body in hex: any bytes */
            char body[200];
            size_t n = 0;
            unsigned byte;
            const char *h = line + 6;
            while (n < sizeof body && sscanf(h, "%2x", &byte) == 1) {
                body[n++] = (char)byte;
                h += 2;
            }
            printf("%s\n", sx_kind_name(sx_policy_judge_body(body, n)));
            continue;
        }
        if (strncmp(line, "retry-after ", 12) == 0) {
            size_t n = strlen(line + 12);
            if (n > 0 && line[12 + n - 1] == '\n')
                n--;
            printf("%ld\n", sx_retry_after_ms(line + 12, n));
            continue;
        }
        memset(&a, 0, sizeof a);
        if (sscanf(line, "%31s %ld %d %d %ld %d %d %d %31s %u", kind, &a.status, &a.too_large,
                   &a.not_sent, &a.retry_after_ms, &attempt, &idempotent, &retries, wait,
                   &seed) != 10 || (a.kind = kind_of(kind)) == SX_KIND_COUNT) {
            printf("bad input\n");
            continue;
        }
        sx_policy_init(&p, retries, strcmp(wait, "default") == 0 ? SX_MAX_RETRY_WAIT_MS : atol(wait));
        a.message = "transport words";
        w = sx_policy_next(&p, &a, attempt, idempotent, &seed, &r);
        printf("%s %d %ld %s\n", sx_kind_name(r.kind), r.retryable, w,
               r.message ? r.message : "-");
    }
    return 0;
}
