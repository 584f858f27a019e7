/*
 * inproc_fork: two streams connected under serval-run --in-process, then
 * fork while one thread waits in read on the first and another in poll on
 * the second. The fork hands both flows to sald first, so:
 *
 *   - the child uses both (it sends on each), and a socket it makes of its
 *     own works (a fresh engine);
 *   - the waiting read and poll go on across the hand-over: each gets the
 *     echo of what the child sent, no error, no spurious event;
 *   - close-on-exec stays as the program set it (F_GETFD), set on the
 *     first stream, clear on the second and on a dup of it;
 *   - the parent goes on with both: select for writability, then
 *     readability, then an echo, then end of file after its shutdown.
 *
 *   inproc_fork SID     (a stream-server for SID serving 3 must be listening)
 *
 * Exits 0 when everything behaved.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
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

static int failures;

#define CHECK(cond, what)                                                  \
    do {                                                                   \
        if (!(cond)) {                                                     \
            fprintf(stderr, "FAIL %s:%d: %s (errno %d: %s)\n", __FILE__,   \
                    __LINE__, (what), errno, strerror(errno));             \
            failures++;                                                    \
        }                                                                  \
    } while (0)

struct waiter {
    int fd;
    int use_poll;
    short revents;
    ssize_t n;
    int err;
    char got[4];
};

/* Waits for 4 bytes on w->fd: in read, or in poll first. */
static void *wait_thread(void *arg) {
    struct waiter *w = arg;
    if (w->use_poll) {
        struct pollfd p = {.fd = w->fd, .events = POLLIN};
        if (poll(&p, 1, 20000) != 1) {
            w->n = -2;
            return NULL;
        }
        w->revents = p.revents;
    }
    size_t got = 0;
    while (got < sizeof w->got) {
        ssize_t n = read(w->fd, w->got + got, sizeof w->got - got);
        if (n <= 0) {
            w->n = n;
            w->err = errno;
            return NULL;
        }
        got += (size_t)n;
    }
    w->n = (ssize_t)got;
    return NULL;
}

static int connect_to(const struct sockaddr_sv *sa) {
    int fd = socket(AF_SERVAL, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (const struct sockaddr *)sa, sizeof *sa) < 0) {
        perror("connect");
        exit(2);
    }
    return fd;
}

/* Echoes `msg` through `fd`, waiting with select for writability and
 * readability first, then shuts down and expects end of file. */
static void echo_after_select(int fd, const char *msg) {
    size_t len = strlen(msg);
    char back[64];
    fd_set set;
    FD_ZERO(&set);
    FD_SET(fd, &set);
    struct timeval tv = {.tv_sec = 10, .tv_usec = 0};
    CHECK(select(fd + 1, NULL, &set, NULL, &tv) == 1 && FD_ISSET(fd, &set), "writable");
    CHECK(write(fd, msg, len) == (ssize_t)len, "write");
    FD_ZERO(&set);
    FD_SET(fd, &set);
    tv.tv_sec = 10;
    CHECK(select(fd + 1, &set, NULL, NULL, &tv) == 1 && FD_ISSET(fd, &set), "readable");
    size_t got = 0;
    while (got < len) {
        ssize_t n = read(fd, back + got, len - got);
        if (n <= 0) break;
        got += (size_t)n;
    }
    CHECK(got == len && memcmp(msg, back, len) == 0, "the echo");
    CHECK(shutdown(fd, SHUT_WR) == 0, "shutdown");
    CHECK(read(fd, back, sizeof back) == 0, "end of file after the echo");
    CHECK(close(fd) == 0, "close");
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: inproc_fork SID\n");
        return 2;
    }
    struct sockaddr_sv sa = sv_addr(argv[1]);
    int a = connect_to(&sa), b = connect_to(&sa);
    CHECK(fcntl(a, F_SETFD, FD_CLOEXEC) == 0, "F_SETFD");
    CHECK(fcntl(a, F_GETFD) == FD_CLOEXEC, "close-on-exec set");
    CHECK(fcntl(b, F_GETFD) == 0, "close-on-exec clear");
    int early = dup(b); /* a second number of the stream, handed over with it */
    CHECK(early >= 0 && fcntl(early, F_GETFD) == 0, "an in-process dup is not close-on-exec");

    struct waiter wa = {.fd = a}, wb = {.fd = b, .use_poll = 1};
    pthread_t ta, tb;
    pthread_create(&ta, NULL, wait_thread, &wa);
    pthread_create(&tb, NULL, wait_thread, &wb);
    usleep(200 * 1000); /* both wait by now */

    pid_t pid = fork();
    if (pid < 0) { perror("fork"); return 2; }
    if (pid == 0) {
        int bad = send(a, "ping", 4, MSG_NOSIGNAL) != 4 || send(b, "pong", 4, MSG_NOSIGNAL) != 4;
        if (bad) perror("child: send");
        /* A socket of its own works in the child: made fresh. */
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
    CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "the child sends on both streams");
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    CHECK(wa.n == 4 && memcmp(wa.got, "ping", 4) == 0, "a read waiting across the fork gets its echo");
    if (wa.n != 4) fprintf(stderr, "read: %zd, errno %d\n", wa.n, wa.err);
    CHECK(wb.revents == POLLIN, "a poll waiting across the fork reports input alone");
    CHECK(wb.n == 4 && memcmp(wb.got, "pong", 4) == 0, "and its read gets the echo");
    if (wb.n != 4) fprintf(stderr, "poll/read: %zd, revents %#x, errno %d\n", wb.n, wb.revents, wb.err);

    CHECK(fcntl(a, F_GETFD) == FD_CLOEXEC, "close-on-exec still set");
    CHECK(fcntl(b, F_GETFD) == 0, "close-on-exec still clear");
    int copy = dup(b);
    CHECK(copy >= 0 && fcntl(copy, F_GETFD) == 0, "a dup is not close-on-exec");
    close(copy);
    CHECK(fcntl(early, F_GETFD) == 0, "nor the dup made before the fork");
    CHECK(write(early, "x", 1) == 1, "which reaches the same flow");
    char x;
    CHECK(read(b, &x, 1) == 1 && x == 'x', "echoed on the stream");
    close(early);

    echo_after_select(a, "still mine");
    echo_after_select(b, "mine too");
    if (failures) return 1;
    printf("ok\n");
    return 0;
}
