/*
 * powerloss: an LD_PRELOAD shim that keeps, beside one file, a copy of it
 * as it stood at its last completed sync, for the power-loss suite
 * (test/integration/test_powerloss.py).
 *
 * POWERLOSS_FILE names the file (an absolute path without symbolic links,
 * compared with the target of /proc/self/fd/N), POWERLOSS_SHADOW the copy.
 * After every successful fsync or fdatasync of the file, and after every
 * successful write to it through a descriptor opened with O_DSYNC or
 * O_SYNC (LMDB writes its meta page so), the whole file is copied to
 * POWERLOSS_SHADOW (through a temporary name and rename, so a copy is
 * always whole). What the process wrote and did not sync is in the file only, as
 * in a page cache: after kill -9, putting the copy in the file's place is
 * what a power cut would have left on the disk.
 *
 * Intercepted: write, pwrite, pwrite64, writev, pwritev, pwritev64, fsync,
 * fdatasync (what LMDB uses without MDB_WRITEMAP). Every call passes
 * through unchanged; the shim only copies after it. Under AddressSanitizer
 * the process needs ASAN_OPTIONS=verify_asan_link_order=0.
 */
#define _GNU_SOURCE
#undef _FILE_OFFSET_BITS      /* pwrite and pwrite64 are two symbols here */

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#include "shim.h"

#define EXPORT __attribute__((visibility("default")))

typedef ssize_t (*pwrite_fn)(int, const void *, size_t, off_t);
typedef ssize_t (*pwrite64_fn)(int, const void *, size_t, off64_t);
typedef ssize_t (*writev_fn)(int, const struct iovec *, int);
typedef ssize_t (*pwritev_fn)(int, const struct iovec *, int, off_t);
typedef ssize_t (*pwritev64_fn)(int, const struct iovec *, int, off64_t);
typedef int (*sync_fn)(int);

/* Is fd the watched file? */
static bool is_watched(int fd)
{
    return shim_fd_is(fd, getenv("POWERLOSS_FILE"), NULL);
}

static bool is_sync_fd(int fd)
{
    int flags = fcntl(fd, F_GETFL);
    return flags >= 0 && (flags & (O_DSYNC | O_SYNC)) != 0;
}

/* Copy the file to the shadow, whole (a temporary name, then rename). */
static void snapshot(void)
{
    const char *file = getenv("POWERLOSS_FILE"), *shadow = getenv("POWERLOSS_SHADOW");
    if (file == NULL || shadow == NULL)
        return;
    int saved = errno;
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s.tmp", shadow);
    NEXT(write_fn, "write", real_write);
    int in = open(file, O_RDONLY | O_CLOEXEC);
    int out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    bool ok = in >= 0 && out >= 0 && real_write != NULL;
    char buf[65536];
    ssize_t n;
    while (ok && (n = read(in, buf, sizeof buf)) > 0)
        ok = real_write(out, buf, (size_t)n) == n;
    if (in >= 0)
        close(in);
    if (out >= 0)
        close(out);
    if (ok)
        rename(tmp, shadow);
    errno = saved;
}

static void after_write(int fd, ssize_t rc)
{
    if (rc >= 0 && is_watched(fd) && is_sync_fd(fd))
        snapshot();
}

EXPORT ssize_t write(int fd, const void *buf, size_t n)
{
    NEXT(write_fn, "write", real);
    ssize_t rc = real(fd, buf, n);
    after_write(fd, rc);
    return rc;
}

EXPORT ssize_t pwrite(int fd, const void *buf, size_t n, off_t off)
{
    NEXT(pwrite_fn, "pwrite", real);
    ssize_t rc = real(fd, buf, n, off);
    after_write(fd, rc);
    return rc;
}

EXPORT ssize_t pwrite64(int fd, const void *buf, size_t n, off64_t off)
{
    NEXT(pwrite64_fn, "pwrite64", real);
    ssize_t rc = real(fd, buf, n, off);
    after_write(fd, rc);
    return rc;
}

EXPORT ssize_t writev(int fd, const struct iovec *iov, int cnt)
{
    NEXT(writev_fn, "writev", real);
    ssize_t rc = real(fd, iov, cnt);
    after_write(fd, rc);
    return rc;
}

EXPORT ssize_t pwritev(int fd, const struct iovec *iov, int cnt, off_t off)
{
    NEXT(pwritev_fn, "pwritev", real);
    ssize_t rc = real(fd, iov, cnt, off);
    after_write(fd, rc);
    return rc;
}

EXPORT ssize_t pwritev64(int fd, const struct iovec *iov, int cnt, off64_t off)
{
    NEXT(pwritev64_fn, "pwritev64", real);
    ssize_t rc = real(fd, iov, cnt, off);
    after_write(fd, rc);
    return rc;
}

EXPORT int fsync(int fd)
{
    NEXT(sync_fn, "fsync", real);
    int rc = real(fd);
    if (rc == 0 && is_watched(fd))
        snapshot();
    return rc;
}

EXPORT int fdatasync(int fd)
{
    NEXT(sync_fn, "fdatasync", real);
    int rc = real(fd);
    if (rc == 0 && is_watched(fd))
        snapshot();
    return rc;
}
