/*
 * ready.c - the worker's readiness signal (see ready.h): an eventfd on
 * Linux, a self-pipe on the systems without one.
 */
#include "ready.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#ifdef SX_READY_EVENTFD
#include <stdint.h>
#include <sys/eventfd.h>

int sx_ready_open(sx_ready *r)
{
    r->rfd = r->wfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    return r->rfd < 0 ? -1 : 0;
}

void sx_ready_set(sx_ready *r)
{
    uint64_t one = 1;
    if (write(r->wfd, &one, sizeof one) < 0) {
        /* EAGAIN only at a counter of 2^64 - 2: readiness stays set */
    }
}

void sx_ready_clear(sx_ready *r)
{
    uint64_t n;
    while (read(r->rfd, &n, sizeof n) > 0) /* one read resets the counter */
        ;
}

#else /* a pipe */

/* pipe2() would set both flags at once, but macOS has none: another thread
 * that forks and execs between pipe() and fcntl() can inherit the two
 * descriptors (an fd leak in that program, nothing worse). */
static int set_flags(int fd)
{
    int fl = fcntl(fd, F_GETFL), fdfl = fcntl(fd, F_GETFD);
    if (fl < 0 || fdfl < 0)
        return -1;
    if (fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 || fcntl(fd, F_SETFD, fdfl | FD_CLOEXEC) < 0)
        return -1;
    return 0;
}

int sx_ready_open(sx_ready *r)
{
    int p[2];
    r->rfd = r->wfd = -1;
    if (pipe(p) < 0)
        return -1;
    if (set_flags(p[0]) < 0 || set_flags(p[1]) < 0) {
        int e = errno;
        close(p[0]);
        close(p[1]);
        errno = e;
        return -1;
    }
    r->rfd = p[0];
    r->wfd = p[1];
    return 0;
}

void sx_ready_set(sx_ready *r)
{
    char one = 1;
    if (write(r->wfd, &one, 1) < 0) {
        /* EAGAIN: the pipe is full, so it is readable already */
    }
}

void sx_ready_clear(sx_ready *r)
{
    char buf[64];
    while (read(r->rfd, buf, sizeof buf) > 0) /* non-blocking: until empty */
        ;
}

#endif

void sx_ready_close(sx_ready *r)
{
    if (r->rfd >= 0)
        close(r->rfd);
    if (r->wfd >= 0 && r->wfd != r->rfd) /* a pipe's other end */
        close(r->wfd);
    r->rfd = r->wfd = -1;
}
