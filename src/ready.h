/*
 * ready.h - the worker's readiness signal: a descriptor that is readable
 * while completed calls wait to be taken back (client:fd()).
 *
 * An eventfd on Linux; a pipe elsewhere, or when built with
 * -DSENDX_NO_EVENTFD (what `make test-portable` does, so that the path the
 * other systems take runs in CI too). Both ends are non-blocking and
 * close-on-exec. The read end stays open while the worker may write (it is
 * closed after the thread is joined, or in a forked child where no worker
 * runs): no write ever raises SIGPIPE.
 */
#ifndef SENDX_READY_H
#define SENDX_READY_H

#if defined(__linux__) && !defined(SENDX_NO_EVENTFD)
#define SX_READY_EVENTFD 1
#endif

typedef struct sx_ready {
    int rfd;  /* polled and drained by the caller's thread */
    int wfd;  /* written by the worker; the same as rfd for an eventfd */
} sx_ready;

/* Opens the signal, not set: 0, or -1 (errno set) with both ends -1. */
int sx_ready_open(sx_ready *r);

/* Makes rfd readable (already readable: stays so). Never blocks. */
void sx_ready_set(sx_ready *r);

/* Makes rfd unreadable again. Never blocks. */
void sx_ready_clear(sx_ready *r);

/* Closes what is open; a second call is harmless. In a forked child it
 * closes the child's copies only. */
void sx_ready_close(sx_ready *r);

#endif
