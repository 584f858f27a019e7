/*
 * check.h: the C test programs' CHECK. A condition that does not hold is
 * reported (where, what, and errno) and counted in `failures`; the
 * program runs on and exits non-zero at the end if any failed.
 */
#ifndef SERVAL_TEST_CHECK_H
#define SERVAL_TEST_CHECK_H

#include <errno.h>
#include <stdio.h>
#include <string.h>

static int failures;

#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        if (!(cond)) {                                                     \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);           \
            fprintf(stderr, __VA_ARGS__);                                  \
            fprintf(stderr, " (errno %d: %s)\n", errno, strerror(errno));  \
            failures++;                                                    \
        }                                                                  \
    } while (0)

#endif
