/*
 * inproc_epoll: epoll on a stream connected under serval-run --in-process
 * (where EPOLLOUT is carried by a second, tagged registration that
 * epoll_wait translates back). One connection to a stream-server (echo)
 * for SID, then one of:
 *
 *   inproc_epoll oneshot SID  EPOLLONESHOT|EPOLLIN|EPOLLOUT: one event per
 *                             arming (the writable part's firing disarms
 *                             the readable part), until EPOLL_CTL_MOD
 *   inproc_epoll merged SID   level-triggered EPOLLIN|EPOLLOUT with data
 *                             queued: one event with both flags, each time
 *   inproc_epoll race SID     a thread toggles EPOLLOUT with EPOLL_CTL_MOD
 *                             (and DEL/ADD) while another sits in
 *                             epoll_wait for 0.5 s: every event carries the
 *                             program's data and flags it may have asked for
 *   inproc_epoll race-rewait SID
 *                             the same, and no epoll_wait (1 s timeout)
 *                             returns empty-handed: one whose events were
 *                             all dropped as stale waits again
 *   inproc_epoll hygiene SID  a writable part that cannot be registered
 *                             (no descriptor left) fails the ADD, which
 *                             leaves nothing registered; 300 short-lived
 *                             sets leave no descriptor behind, and a
 *                             long-lived set keeps working
 *   inproc_epoll fork SID     a forked child closes its copy of the number
 *                             and exits: the parent's registration still
 *                             reports EPOLLIN and EPOLLOUT
 *
 * Exits 0 when every check held.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "serval.h"
#include "sv_addr.h"
#include "check.h"



static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Writes a few bytes and waits (poll, 10 s at most) until their echo is
 * readable: the stream is then both readable and writable. */
static void make_readable(int fd) {
    if (write(fd, "ping", 4) != 4) { perror("write"); exit(2); }
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 10000) != 1 || !(p.revents & POLLIN)) {
        fprintf(stderr, "the echo never came\n");
        exit(2);
    }
}

static int ctl(int epfd, int op, int fd, uint32_t events, uint64_t data) {
    struct epoll_event ev = {.events = events, .data.u64 = data};
    return epoll_ctl(epfd, op, fd, &ev);
}

/* epoll_wait for up to `ms`, the events in `out` (8 at most). */
static int wait_for(int epfd, struct epoll_event *out, int ms) {
    int n;
    do n = epoll_wait(epfd, out, 8, ms); while (n < 0 && errno == EINTR);
    return n;
}

static void oneshot(int fd) {
    const uint32_t both = EPOLLIN | EPOLLOUT;
    struct epoll_event ev[8];
    int epfd = epoll_create1(EPOLL_CLOEXEC);
    CHECK(ctl(epfd, EPOLL_CTL_ADD, fd, EPOLLONESHOT | both, 0xabc) == 0, "ADD: %s", strerror(errno));
    /* Nothing to read: the writable part fires, once. */
    int n = wait_for(epfd, ev, 2000);
    CHECK(n == 1 && ev[0].data.u64 == 0xabc && ev[0].events == EPOLLOUT,
          "first arming: n %d events %#x data %#llx", n, n > 0 ? ev[0].events : 0,
          n > 0 ? (unsigned long long)ev[0].data.u64 : 0ULL);
    n = wait_for(epfd, ev, 300);
    CHECK(n == 0, "a second event of one arming (n %d, events %#x)", n, n > 0 ? ev[0].events : 0);
    /* Data comes: the readable part was disarmed with the writable one. */
    make_readable(fd);
    n = wait_for(epfd, ev, 300);
    CHECK(n == 0, "the readable part fired after the writable one (n %d, events %#x)", n,
          n > 0 ? ev[0].events : 0);
    /* Re-armed: both ready, one event with both flags, then nothing. */
    CHECK(ctl(epfd, EPOLL_CTL_MOD, fd, EPOLLONESHOT | both, 0xdef) == 0, "MOD: %s", strerror(errno));
    n = wait_for(epfd, ev, 2000);
    CHECK(n == 1 && ev[0].data.u64 == 0xdef && ev[0].events == both,
          "re-armed: n %d events %#x data %#llx", n, n > 0 ? ev[0].events : 0,
          n > 0 ? (unsigned long long)ev[0].data.u64 : 0ULL);
    n = wait_for(epfd, ev, 300);
    CHECK(n == 0, "a second event after re-arming (n %d, events %#x)", n, n > 0 ? ev[0].events : 0);
    /* Re-armed for input only: EPOLLIN alone, once. */
    CHECK(ctl(epfd, EPOLL_CTL_MOD, fd, EPOLLONESHOT | EPOLLIN, 0x123) == 0, "MOD: %s", strerror(errno));
    n = wait_for(epfd, ev, 2000);
    CHECK(n == 1 && ev[0].data.u64 == 0x123 && ev[0].events == EPOLLIN,
          "input only: n %d events %#x", n, n > 0 ? ev[0].events : 0);
    n = wait_for(epfd, ev, 300);
    CHECK(n == 0, "a second event for input only (n %d)", n);
    /* Output only, with data waiting: EPOLLOUT alone, once. */
    CHECK(ctl(epfd, EPOLL_CTL_MOD, fd, EPOLLONESHOT | EPOLLOUT, 0x456) == 0, "MOD: %s", strerror(errno));
    n = wait_for(epfd, ev, 2000);
    CHECK(n == 1 && ev[0].data.u64 == 0x456 && ev[0].events == EPOLLOUT,
          "output only: n %d events %#x", n, n > 0 ? ev[0].events : 0);
    n = wait_for(epfd, ev, 300);
    CHECK(n == 0, "a second event for output only (n %d)", n);
    close(epfd);
}

static void merged(int fd) {
    struct epoll_event ev[8];
    make_readable(fd);
    int epfd = epoll_create1(EPOLL_CLOEXEC);
    CHECK(ctl(epfd, EPOLL_CTL_ADD, fd, EPOLLIN | EPOLLOUT, 0x55) == 0, "ADD: %s", strerror(errno));
    for (int i = 0; i < 20; i++) {
        int n = wait_for(epfd, ev, 2000);
        CHECK(n == 1 && ev[0].data.u64 == 0x55 && ev[0].events == (EPOLLIN | EPOLLOUT),
              "round %d: n %d events %#x", i, n, n > 0 ? ev[0].events : 0);
    }
    /* A second registration of the same socket (a copy of the number)
     * with the same data stays a second event, as the kernel's would. */
    int copy = dup(fd);
    CHECK(copy >= 0 && ctl(epfd, EPOLL_CTL_ADD, copy, EPOLLIN | EPOLLOUT, 0x55) == 0, "ADD copy: %s",
          strerror(errno));
    int n = wait_for(epfd, ev, 2000);
    CHECK(n == 2 && ev[0].events == (EPOLLIN | EPOLLOUT) && ev[1].events == (EPOLLIN | EPOLLOUT),
          "two numbers: n %d", n);
    close(copy);
    n = wait_for(epfd, ev, 2000);
    CHECK(n == 1 && ev[0].events == (EPOLLIN | EPOLLOUT), "after closing the copy: n %d", n);
    close(epfd);
}

struct race {
    int epfd, fd, ms;
    volatile int stop;
    long events, empty, bad;
};

static void *waiter(void *arg) {
    struct race *r = arg;
    struct epoll_event ev[8];
    while (!r->stop) {
        int n = wait_for(r->epfd, ev, r->ms);
        if (n < 0) { perror("epoll_wait"); r->bad++; return NULL; }
        if (n == 0) r->empty++;
        for (int i = 0; i < n; i++) {
            r->events++;
            if (ev[i].data.u64 != 0x77 || (ev[i].events & ~(uint32_t)(EPOLLIN | EPOLLOUT))) {
                if (r->bad++ < 5)
                    fprintf(stderr, "FAIL: event data %#llx events %#x\n",
                            (unsigned long long)ev[i].data.u64, ev[i].events);
            }
        }
    }
    return NULL;
}

/* `strict`: no wait may come back empty (with the level-triggered
 * EPOLLIN always ready, only a result emptied by dropping stale events
 * would). */
static void race(int fd, int strict) {
    make_readable(fd);
    struct race r = {.epfd = epoll_create1(EPOLL_CLOEXEC), .fd = fd, .ms = strict ? 1000 : 20};
    CHECK(ctl(r.epfd, EPOLL_CTL_ADD, fd, EPOLLIN, 0x77) == 0, "ADD: %s", strerror(errno));
    pthread_t threads[2];
    for (int i = 0; i < 2; i++) pthread_create(&threads[i], NULL, waiter, &r);
    double end = now() + 0.5;
    long mods = 0;
    while (now() < end) {
        uint32_t events = mods % 2 ? EPOLLIN : EPOLLIN | EPOLLOUT;
        if (mods % 16 == 15) {
            CHECK(epoll_ctl(r.epfd, EPOLL_CTL_DEL, fd, NULL) == 0, "DEL: %s", strerror(errno));
            CHECK(ctl(r.epfd, EPOLL_CTL_ADD, fd, events, 0x77) == 0, "ADD: %s", strerror(errno));
        } else {
            CHECK(ctl(r.epfd, EPOLL_CTL_MOD, fd, events, 0x77) == 0, "MOD: %s", strerror(errno));
        }
        mods++;
    }
    r.stop = 1;
    for (int i = 0; i < 2; i++) pthread_join(threads[i], NULL);
    CHECK(r.bad == 0, "%ld events carried data or flags not registered", r.bad);
    CHECK(r.events > 0, "no event at all");
    CHECK(!strict || r.empty == 0, "%ld waits came back empty", r.empty);
    printf("race: %ld changes, %ld events, %ld empty waits\n", mods, r.events, r.empty);
    close(r.epfd);
}

/* How many descriptors the process has open. */
static int open_fds(void) {
    DIR *dir = opendir("/proc/self/fd");
    if (!dir) { perror("opendir"); exit(2); }
    int n = 0;
    while (readdir(dir)) n++;
    closedir(dir);
    return n;
}

static void hygiene(int fd) {
    struct epoll_event ev[8];
    /* No descriptor left for the writable part's copy: the ADD fails
     * and leaves the number unregistered. */
    int epfd = epoll_create1(EPOLL_CLOEXEC);
    struct rlimit was;
    getrlimit(RLIMIT_NOFILE, &was);
    int lowest = dup(0);
    close(lowest);
    struct rlimit tight = {.rlim_cur = (rlim_t)lowest, .rlim_max = was.rlim_max};
    CHECK(setrlimit(RLIMIT_NOFILE, &tight) == 0, "setrlimit: %s", strerror(errno));
    int r = ctl(epfd, EPOLL_CTL_ADD, fd, EPOLLIN | EPOLLOUT, 1);
    int e = errno;
    setrlimit(RLIMIT_NOFILE, &was);
    CHECK(r == -1 && e == EMFILE, "ADD without a descriptor for EPOLLOUT: %d (%s)", r, strerror(e));
    CHECK(ctl(epfd, EPOLL_CTL_ADD, fd, EPOLLIN | EPOLLOUT, 2) == 0, "ADD after the failed one: %s",
          strerror(errno));
    int n = wait_for(epfd, ev, 2000);
    CHECK(n == 1 && ev[0].data.u64 == 2 && ev[0].events == EPOLLOUT, "long-lived set: n %d", n);
    /* Sets closed by the program (at varying numbers) leave nothing
     * open behind them. */
    int before = open_fds();
    for (int i = 0; i < 300; i++) {
        int pad = i % 2 ? dup(0) : -1;
        int ep = epoll_create1(EPOLL_CLOEXEC);
        CHECK(ctl(ep, EPOLL_CTL_ADD, fd, EPOLLIN | EPOLLOUT, 3) == 0, "ADD %d: %s", i, strerror(errno));
        close(ep);
        if (pad >= 0) close(pad);
    }
    int after = open_fds();
    CHECK(after - before < 5, "300 closed sets left %d descriptors open", after - before);
    /* The long-lived set still has both parts. */
    make_readable(fd);
    n = wait_for(epfd, ev, 2000);
    CHECK(n == 1 && ev[0].data.u64 == 2 && ev[0].events == (EPOLLIN | EPOLLOUT),
          "long-lived set after: n %d events %#x", n, n > 0 ? ev[0].events : 0);
    close(epfd);
}

static void forked(int fd) {
    struct epoll_event ev[8];
    int epfd = epoll_create1(0);
    CHECK(ctl(epfd, EPOLL_CTL_ADD, fd, EPOLLIN | EPOLLOUT, 7) == 0, "ADD: %s", strerror(errno));
    pid_t pid = fork();
    if (pid < 0) { perror("fork"); exit(2); }
    if (pid == 0) {
        /* The child's copies: closing them must not touch the set it
         * shares with its parent. */
        int bad = close(fd) != 0;
        close(epfd);
        _exit(bad);
    }
    int status;
    CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "child failed");
    int n = wait_for(epfd, ev, 2000);
    CHECK(n == 1 && ev[0].data.u64 == 7 && ev[0].events == EPOLLOUT,
          "writable after the child's close: n %d events %#x", n, n > 0 ? ev[0].events : 0);
    make_readable(fd);
    n = wait_for(epfd, ev, 2000);
    CHECK(n == 1 && ev[0].data.u64 == 7 && ev[0].events == (EPOLLIN | EPOLLOUT),
          "readable after the child's close: n %d events %#x", n, n > 0 ? ev[0].events : 0);
    close(epfd);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: inproc_epoll oneshot|merged|race|race-rewait|hygiene|fork SID\n");
        return 2;
    }
    int fd = socket(AF_SERVAL, SOCK_STREAM, 0);
    if (fd < 0) { perror("socket"); return 2; }
    struct sockaddr_sv sa = sv_addr(argv[2]);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) { perror("connect"); return 2; }
    const char *mode = argv[1];
    if (!strcmp(mode, "oneshot")) oneshot(fd);
    else if (!strcmp(mode, "merged")) merged(fd);
    else if (!strcmp(mode, "race")) race(fd, 0);
    else if (!strcmp(mode, "race-rewait")) race(fd, 1);
    else if (!strcmp(mode, "fork")) forked(fd);
    else if (!strcmp(mode, "hygiene")) hygiene(fd);
    else { fprintf(stderr, "unknown mode %s\n", mode); return 2; }
    shutdown(fd, SHUT_WR);
    close(fd);
    if (failures) return 1;
    printf("ok\n");
    return 0;
}
