/*
 * metrics.c - call counts and the latency histogram (see metrics.h).
 */
#include "metrics.h"

#include <math.h>

#define GROWTH 1.1

void sx_hist_add(sx_hist *h, double ms)
{
    int i = 0;
    if (ms > SX_HIST_BASE_MS)
        i = (int)(log(ms / SX_HIST_BASE_MS) / log(GROWTH));
    if (i >= SX_HIST_BUCKETS)
        i = SX_HIST_BUCKETS - 1;
    if (i < 0)
        i = 0;
    h->n[i]++;
    h->count++;
    if (ms > h->max_ms)
        h->max_ms = ms;
}

void sx_hist_merge(sx_hist *into, const sx_hist *from)
{
    int i;
    for (i = 0; i < SX_HIST_BUCKETS; i++)
        into->n[i] += from->n[i];
    into->count += from->count;
    if (from->max_ms > into->max_ms)
        into->max_ms = from->max_ms;
}

double sx_hist_quantile(const sx_hist *h, double q)
{
    unsigned long rank, seen = 0;
    int i;
    if (h->count == 0)
        return 0;
    rank = (unsigned long)ceil(q * (double)h->count);
    if (rank < 1)
        rank = 1;
    for (i = 0; i < SX_HIST_BUCKETS; i++) {
        seen += h->n[i];
        if (seen >= rank) {
            double edge = SX_HIST_BASE_MS * pow(GROWTH, i + 1);
            return edge < h->max_ms ? edge : h->max_ms;
        }
    }
    return h->max_ms;
}

void sx_counts_add(sx_counts *c, sx_kind final, int attempts)
{
    c->calls++;
    if (sx_policy_bucket(final) == SX_BUCKET_SENT) {
        c->ok++;
    } else {
        c->failed++;
        if ((unsigned)final < SX_KIND_COUNT)
            c->kinds[final]++;
    }
    if (attempts > 1)
        c->retried += attempts - 1;
}

void sx_counts_merge(sx_counts *into, const sx_counts *from)
{
    int i;
    into->calls += from->calls;
    into->ok += from->ok;
    into->failed += from->failed;
    into->retried += from->retried;
    for (i = 0; i < SX_KIND_COUNT; i++)
        into->kinds[i] += from->kinds[i];
}
