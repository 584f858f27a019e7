/*
 * fd_name.h: what /proc says a descriptor's file is, for the C test
 * programs: an in-process number's fstat says socket, but its file is an
 * eventfd ("anon_inode:[eventfd]"), and a kernel socket's is
 * "socket:[INODE]".
 */
#ifndef SERVAL_TEST_FD_NAME_H
#define SERVAL_TEST_FD_NAME_H

#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* Whether the name /proc gives FD's file starts with PREFIX. */
static int fd_name_starts(int fd, const char *prefix) {
    char path[64], link[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(path, link, sizeof link - 1);
    link[n < 0 ? 0 : n] = 0;
    return strncmp(link, prefix, strlen(prefix)) == 0;
}

/* Whether FD is a kernel socket. */
static inline int kernel_socket(int fd) { return fd_name_starts(fd, "socket:["); }

/* Whether FD's file is an eventfd (an in-process number's). */
static inline int eventfd_file(int fd) { return fd_name_starts(fd, "anon_inode:[eventfd]"); }

#endif
