/*
 * inproc_fork: a stream connected under serval-run --in-process, then
 * fork. The child's copy of the socket is reset (read and write fail with
 * ECONNRESET, close works); the parent's goes on: it echoes through a
 * stream-server afterwards, waiting with select for writability and
 * readability first.
 *
 *   inproc_fork SID     (a stream-server for SID must be listening)
 *
 * Exits 0 when both sides behaved.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "serval.h"
#include "sv_addr.h"


int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: inproc_fork SID\n");
        return 2;
    }
    int fd = socket(AF_SERVAL, SOCK_STREAM, 0);
    if (fd < 0) { perror("socket"); return 2; }
    struct sockaddr_sv sa = sv_addr(argv[1]);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) { perror("connect"); return 2; }
    pid_t pid = fork();
    if (pid < 0) { perror("fork"); return 2; }
    if (pid == 0) {
        char c;
        int bad = 0;
        if (read(fd, &c, 1) != -1 || errno != ECONNRESET) {
            fprintf(stderr, "child: read did not fail with ECONNRESET (errno %d)\n", errno);
            bad = 1;
        }
        if (send(fd, "x", 1, MSG_NOSIGNAL) != -1 || errno != ECONNRESET) {
            fprintf(stderr, "child: send did not fail with ECONNRESET (errno %d)\n", errno);
            bad = 1;
        }
        if (close(fd) != 0) { perror("child: close"); bad = 1; }
        /* A socket of its own still works in the child: made fresh. */
        int mine = socket(AF_SERVAL, SOCK_STREAM, 0);
        if (mine < 0 || connect(mine, (struct sockaddr *)&sa, sizeof sa) < 0) {
            perror("child: connect");
            bad = 1;
        } else {
            close(mine);
        }
        _exit(bad);
    }
    int status;
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "child failed\n");
        return 1;
    }
    const char msg[] = "still mine";
    char back[sizeof msg];
    fd_set set;
    FD_ZERO(&set);
    FD_SET(fd, &set);
    struct timeval tv = {.tv_sec = 10, .tv_usec = 0};
    if (select(fd + 1, NULL, &set, NULL, &tv) != 1 || !FD_ISSET(fd, &set)) {
        fprintf(stderr, "select: not writable\n");
        return 1;
    }
    if (write(fd, msg, sizeof msg) != (ssize_t)sizeof msg) { perror("write"); return 1; }
    FD_ZERO(&set);
    FD_SET(fd, &set);
    tv.tv_sec = 10;
    if (select(fd + 1, &set, NULL, NULL, &tv) != 1 || !FD_ISSET(fd, &set)) {
        fprintf(stderr, "select: not readable\n");
        return 1;
    }
    size_t got = 0;
    while (got < sizeof back) {
        ssize_t n = read(fd, back + got, sizeof back - got);
        if (n <= 0) { perror("read"); return 1; }
        got += (size_t)n;
    }
    if (memcmp(msg, back, sizeof msg) != 0) { fprintf(stderr, "echo differs\n"); return 1; }
    shutdown(fd, SHUT_WR);
    close(fd);
    printf("ok\n");
    return 0;
}
