/*
 * failio: an LD_PRELOAD shim that makes the broker's store fail on demand,
 * for the fault suite (test/integration/test_room.py).
 *
 * While the file named by FAILIO_TRIGGER exists, every write or sync of the
 * file named by FAILIO_FILE (an absolute path without symbolic links,
 * compared with the target of /proc/self/fd/N) fails with FAILIO_ERRNO
 * ("EIO", the default, or "ENOSPC") and writes nothing. Intercepted: write,
 * pwrite, pwrite64, writev, pwritev, pwritev64, fsync, fdatasync: what LMDB
 * (without MDB_WRITEMAP, so without msync) uses to write and sync its pages
 * and its meta page. FAILIO_CALLS, when set, names the calls that fail
 * (e.g. "fsync,fdatasync": the pages are written, the sync fails). Every
 * other call and every other file passes through. With FAILIO_DELAY_MS set,
 * the disk is slow instead of failing: each such call waits that many
 * milliseconds, then goes through (a turn's commit made long on purpose).
 *
 * It must never fail a call while the trigger is absent, and never touch a
 * file other than FAILIO_FILE. Under AddressSanitizer the process needs
 * ASAN_OPTIONS=verify_asan_link_order=0: this library comes ahead of the
 * ASan runtime in the preload order.
 */
#define _GNU_SOURCE
#undef _FILE_OFFSET_BITS      /* pwrite and pwrite64 are two symbols here */

#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "shim.h"

#define EXPORT __attribute__((visibility("default")))

typedef ssize_t (*pwrite_fn)(int, const void *, size_t, off_t);
typedef ssize_t (*pwrite64_fn)(int, const void *, size_t, off64_t);
typedef ssize_t (*writev_fn)(int, const struct iovec *, int);
typedef ssize_t (*pwritev_fn)(int, const struct iovec *, int, off_t);
typedef ssize_t (*pwritev64_fn)(int, const struct iovec *, int, off64_t);
typedef int (*sync_fn)(int);

/* Is name one of the comma-separated names in list? */
static bool is_listed(const char *list, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = list; *p != '\0';) {
        const char *end = strchr(p, ',');
        size_t len = end != NULL ? (size_t)(end - p) : strlen(p);
        if (len == n && strncmp(p, name, n) == 0)
            return true;
        p += len + (end != NULL);
    }
    return false;
}

/* Should this call on fd fail? Then errno is set and the call's name is
 * reported once per call on stderr. */
static bool should_fail(int fd, const char *call)
{
    const char *trigger = getenv("FAILIO_TRIGGER");
    const char *file = getenv("FAILIO_FILE");
    const char *calls = getenv("FAILIO_CALLS");
    if (trigger == NULL || file == NULL || fd < 0 || access(trigger, F_OK) != 0)
        return false;
    if (calls != NULL && calls[0] != '\0' && !is_listed(calls, call))
        return false;
    char target[PATH_MAX];
    if (!shim_fd_is(fd, file, target))
        return false;
    const char *delay = getenv("FAILIO_DELAY_MS");
    if (delay != NULL && delay[0] != '\0') {
        long ms = strtol(delay, NULL, 10);
        struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = ms % 1000 * 1000000L};
        while (ms > 0 && nanosleep(&ts, &ts) != 0 && errno == EINTR) {
        }
        return false;
    }
    const char *name = getenv("FAILIO_ERRNO");
    int err = name != NULL && strcmp(name, "ENOSPC") == 0 ? ENOSPC : EIO;
    char msg[PATH_MAX + 96];
    int len = snprintf(msg, sizeof msg, "failio: %s on %s fails with %s\n", call, target,
                       err == ENOSPC ? "ENOSPC" : "EIO");
    NEXT(write_fn, "write", real_write);
    if (len > 0)
        (void)!real_write(2, msg, (size_t)len < sizeof msg ? (size_t)len : sizeof msg - 1);
    errno = err;
    return true;
}

EXPORT ssize_t write(int fd, const void *buf, size_t len)
{
    NEXT(write_fn, "write", real);
    return should_fail(fd, "write") ? -1 : real(fd, buf, len);
}

EXPORT ssize_t pwrite(int fd, const void *buf, size_t len, off_t at)
{
    NEXT(pwrite_fn, "pwrite", real);
    return should_fail(fd, "pwrite") ? -1 : real(fd, buf, len, at);
}

EXPORT ssize_t pwrite64(int fd, const void *buf, size_t len, off64_t at)
{
    NEXT(pwrite64_fn, "pwrite64", real);
    return should_fail(fd, "pwrite64") ? -1 : real(fd, buf, len, at);
}

EXPORT ssize_t writev(int fd, const struct iovec *iov, int n)
{
    NEXT(writev_fn, "writev", real);
    return should_fail(fd, "writev") ? -1 : real(fd, iov, n);
}

EXPORT ssize_t pwritev(int fd, const struct iovec *iov, int n, off_t at)
{
    NEXT(pwritev_fn, "pwritev", real);
    return should_fail(fd, "pwritev") ? -1 : real(fd, iov, n, at);
}

EXPORT ssize_t pwritev64(int fd, const struct iovec *iov, int n, off64_t at)
{
    NEXT(pwritev64_fn, "pwritev64", real);
    return should_fail(fd, "pwritev64") ? -1 : real(fd, iov, n, at);
}

EXPORT int fsync(int fd)
{
    NEXT(sync_fn, "fsync", real);
    return should_fail(fd, "fsync") ? -1 : real(fd);
}

EXPORT int fdatasync(int fd)
{
    NEXT(sync_fn, "fdatasync", real);
    return should_fail(fd, "fdatasync") ? -1 : real(fd);
}
