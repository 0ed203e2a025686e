/*
 * spool_open_probe.c - processes opening one new spool at the same moment,
 * for spec/78-spool_spec.lua. Usage: spool_open_probe DIR ROUNDS PROCS.
 * Each round, PROCS processes wait for the same instant and open DIR/rN.spool
 * (which does not exist yet) with src/spool.c; each prints a line for an
 * open that failed, or a file left outside WAL mode. Prints "opened N" at
 * the end: the opens that worked.
 */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "spool.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* The journal mode the file is in, read with a connection of our own. */
static int in_wal(const char *path)
{
    sqlite3 *db;
    sqlite3_stmt *st;
    int wal = 0;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL) == SQLITE_OK &&
        sqlite3_busy_timeout(db, 5000) == SQLITE_OK &&
        sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, NULL) == SQLITE_OK) {
        int rc = sqlite3_step(st);
        wal = rc == SQLITE_ROW && strcmp((const char *)sqlite3_column_text(st, 0), "wal") == 0;
        sqlite3_finalize(st);
    }
    sqlite3_close(db);
    return wal;
}

static int open_at(const char *path, double at)
{
    sx_spool_opts o;
    char err[512];
    sx_spool *s;
    memset(&o, 0, sizeof o);
    o.max_bytes = 1 << 20;
    o.max_age = 60;
    while (now() < at)
        ;
    s = sx_spool_open(path, &o, (unsigned long long)getpid(), err, sizeof err);
    if (s == NULL) {
        printf("failed: %s\n", err);
        fflush(stdout);
        return 1;
    }
    sx_spool_close(s);
    if (!in_wal(path)) {
        printf("not in WAL mode: %s\n", path);
        fflush(stdout);
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    int rounds, procs, r, i, status, opened = 0;
    if (argc != 4) {
        fprintf(stderr, "usage: spool_open_probe DIR ROUNDS PROCS\n");
        return 2;
    }
    rounds = atoi(argv[2]);
    procs = atoi(argv[3]);
    for (r = 0; r < rounds; r++) {
        char path[4096];
        double at = now() + 0.005;
        snprintf(path, sizeof path, "%s/r%d.spool", argv[1], r);
        fflush(stdout);
        for (i = 0; i < procs; i++)
            if (fork() == 0)
                _exit(open_at(path, at)); /* open_at flushed what it printed */
        while (wait(&status) > 0)
            if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
                opened++;
        for (i = 0; i < 3; i++) { /* the round's files: r.spool, -wal, -shm */
            char f[4200];
            snprintf(f, sizeof f, "%s%s", path, i == 0 ? "" : i == 1 ? "-wal" : "-shm");
            unlink(f);
        }
    }
    printf("opened %d\n", opened);
    return 0;
}
