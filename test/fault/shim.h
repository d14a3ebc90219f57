/*
 * shim: what the LD_PRELOAD shims of the fault suite share (failio.c,
 * powerloss.c): the next definition of an intercepted call, and whether a
 * descriptor is one given file.
 */
#ifndef REF_TEST_SHIM_H
#define REF_TEST_SHIM_H

#include <dlfcn.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef ssize_t (*write_fn)(int, const void *, size_t);

/* The next definition of name (libc's, or a sanitizer's interceptor). A
 * data pointer becomes a function pointer through memcpy (ISO C has no
 * cast between them). */
#define NEXT(type, name, var)                                   \
    static type var;                                            \
    if (var == NULL) {                                          \
        void *p_ = dlsym(RTLD_NEXT, name);                      \
        if (p_ == NULL)                                         \
            abort();                                            \
        memcpy(&var, &p_, sizeof var);                          \
    }

/* Is fd open on file (an absolute path without symbolic links, compared
 * with the target of /proc/self/fd/N)? target (PATH_MAX bytes) gets the
 * target when not NULL. */
static inline bool shim_fd_is(int fd, const char *file, char *target)
{
    char link[64], buf[PATH_MAX];
    char *t = target != NULL ? target : buf;
    if (file == NULL || file[0] == '\0' || fd < 0)
        return false;
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, t, PATH_MAX - 1);
    if (n <= 0)
        return false;
    t[n] = '\0';
    return strcmp(t, file) == 0;
}

#endif
