/* Prelude of the hostile C programs of tests/integration/test_isolation_*.py.
 *
 * Every check prints exactly one line, "name:OK" or "name:FAIL <detail>", and flushes
 * it at once: a program killed by a later check still reports what it did before.
 * The test asserts each line by name, so a failure names the promise that broke.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

__attribute__((unused)) static void ok(const char *name) { printf("%s:OK\n", name); fflush(stdout); }

__attribute__((unused)) static void fail(const char *name, const char *fmt, ...) {
    va_list ap;
    printf("%s:FAIL ", name);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
}

__attribute__((unused)) static const char *errname(int e) {
    const char *n = strerrorname_np(e);
    return n ? n : "?";
}

/* The call must have failed (-1) with errno `want` or `alt` (pass 0 for no alternative). */
__attribute__((unused)) static void expect_errno(const char *name, long ret, int err, int want, int alt) {
    if (ret == -1 && (err == want || (alt != 0 && err == alt)))
        ok(name);
    else if (ret == -1)
        fail(name, "errno=%s want %s%s%s", errname(err), errname(want), alt ? "|" : "",
             alt ? errname(alt) : "");
    else
        fail(name, "succeeded (returned %ld), want errno %s", ret, errname(want));
}

#define EXPECT_ERRNO(name, expr, want, alt)                                              \
    do {                                                                                 \
        errno = 0;                                                                       \
        long ret_ = (long)(expr);                                                        \
        expect_errno((name), ret_, errno, (want), (alt));                                \
    } while (0)

/* The call must succeed (not return -1). */
#define EXPECT_OK(name, expr)                                                            \
    do {                                                                                 \
        errno = 0;                                                                       \
        long ret_ = (long)(expr);                                                        \
        if (ret_ == -1)                                                                  \
            fail((name), "failed: errno=%s", errname(errno));                            \
        else                                                                             \
            ok(name);                                                                    \
    } while (0)
