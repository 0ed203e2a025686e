/*
 * metrics.h - what a client counts: calls by outcome and kind, and a
 * latency histogram of fixed size (log-scale buckets) for p50/p90/p99.
 *
 * Knows nothing of Lua; the caller serialises access (the Lua thread owns a
 * client's sync counts; the worker's are under its lock).
 */
#ifndef SENDX_METRICS_H
#define SENDX_METRICS_H

#include "policy.h" /* sx_kind */

/* Bucket i holds latencies in [SX_HIST_BASE_MS * G^i, SX_HIST_BASE_MS * G^(i+1))
 * with G = 1.1: 0.01 ms to about half an hour in 200 buckets, each quantile
 * within 10 % of the truth. */
#define SX_HIST_BUCKETS 200
#define SX_HIST_BASE_MS 0.01

typedef struct sx_hist {
    unsigned long n[SX_HIST_BUCKETS];
    unsigned long count;
    double max_ms;
} sx_hist;

typedef struct sx_counts {
    long calls, ok, failed, retried;
    long kinds[SX_KIND_COUNT]; /* failed calls by kind */
} sx_counts;

void sx_hist_add(sx_hist *h, double ms);
void sx_hist_merge(sx_hist *into, const sx_hist *from);

/* The latency under which a fraction q of the calls fell (the upper edge of
 * its bucket, at most the largest seen); 0 when none. */
double sx_hist_quantile(const sx_hist *h, double q);

/* Counts one finished call: its final kind and how many attempts it made. */
void sx_counts_add(sx_counts *c, sx_kind final, int attempts);
void sx_counts_merge(sx_counts *into, const sx_counts *from);

#endif
