/*
 * inproc_fork: two streams connected under serval-run --in-process, then
 * fork while one thread waits in read on the first and another in poll on
 * the second. The fork hands both flows to sald first, so:
 *
 *   - the child uses both (it sends on each), and a socket it makes of its
 *     own works (a fresh engine);
 *   - the waiting read and poll go on across the hand-over: each gets the
 *     echo of what the child sent, no error, no spurious event;
 *   - close-on-exec stays as the program set it (F_GETFD, F_SETFD, FIOCLEX,
 *     FIONCLEX), set on the first stream, clear on the second and on a
 *     dup of it;
 *   - a third stream's epoll registration follows it: a thread waiting in
 *     epoll_wait across the fork gets its input, once, with the program's
 *     data and no error, and EPOLL_CTL_DEL then finds one registration;
 *   - the parent goes on with both: select for writability, then
 *     readability, then an echo, then end of file after its shutdown.
 *
 *   inproc_fork SID     (a stream-server for SID serving 4 must be listening)
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
#include <sys/epoll.h>
#include <sys/ioctl.h>
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

struct epoll_waiter {
    int ep;
    int n;
    struct epoll_event events[4];
};

/* Waits in epoll_wait on w->ep (20 s at most). */
static void *epoll_thread(void *arg) {
    struct epoll_waiter *w = arg;
    w->n = epoll_wait(w->ep, w->events, 4, 20000);
    return NULL;
}

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
    int a = connect_to(&sa), b = connect_to(&sa), e = connect_to(&sa);
    CHECK(fcntl(a, F_SETFD, FD_CLOEXEC) == 0, "F_SETFD");
    CHECK(fcntl(a, F_GETFD) == FD_CLOEXEC, "close-on-exec set");
    CHECK(fcntl(b, F_GETFD) == 0, "close-on-exec clear");
    CHECK(ioctl(b, FIOCLEX) == 0 && fcntl(b, F_GETFD) == FD_CLOEXEC, "FIOCLEX");
    CHECK(ioctl(b, FIONCLEX) == 0 && fcntl(b, F_GETFD) == 0, "FIONCLEX");
    /* A third stream in an epoll set, with a thread waiting on the set. */
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 42};
    CHECK(ep >= 0 && epoll_ctl(ep, EPOLL_CTL_ADD, e, &ev) == 0, "epoll_ctl");
    struct epoll_waiter we = {.ep = ep};
    pthread_t te;
    pthread_create(&te, NULL, epoll_thread, &we);
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
        int bad = send(a, "ping", 4, MSG_NOSIGNAL) != 4 || send(b, "pong", 4, MSG_NOSIGNAL) != 4 ||
                  send(e, "epol", 4, MSG_NOSIGNAL) != 4;
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
    pthread_join(te, NULL);
    CHECK(we.n == 1 && we.events[0].data.u64 == 42 && we.events[0].events == EPOLLIN,
          "an epoll_wait waiting across the fork reports the stream's input alone");
    if (we.n != 1) fprintf(stderr, "epoll_wait: %d events\n", we.n);
    char four[4];
    CHECK(read(e, four, 4) == 4 && memcmp(four, "epol", 4) == 0, "the epoll stream's echo");
    /* The registration is the program's still: once more, with nothing. */
    CHECK(epoll_wait(ep, we.events, 4, 100) == 0, "nothing more on the set");
    CHECK(epoll_ctl(ep, EPOLL_CTL_DEL, e, NULL) == 0, "one registration to delete");
    close(ep);
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
    echo_after_select(e, "and this");
    if (failures) return 1;
    printf("ok\n");
    return 0;
}
