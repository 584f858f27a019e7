/*
 * inproc_fds: in-process numbers changed behind the shim's back or
 * replaced, under serval-run --in-process.
 *
 *   inproc_fds SID [stale|replaced]   (a stream-server for SID, for 3
 *                                      connections, 2 or 1, must be
 *                                      listening)
 *   inproc_fds SID closed             (a stream-server for SID, for 2
 *                                      connections)
 *   inproc_fds SID listener           (nothing listens on SID)
 *   inproc_fds SID shutdown           (nothing listens on SID)
 *   inproc_fds SID stdio              (a stream-server for SID, for 2
 *                                      connections)
 *   inproc_fds SID refused            (a stream-server for SID, for 1
 *                                      connection; sald's buffers under
 *                                      20,000 bytes)
 *   inproc_fds SID stat               (a stream-server for SID, for 2
 *                                      connections)
 *
 * 1. A connected number closed by syscall(SYS_close), then by
 *    close_range: a pipe opened next gets the number, and read and write
 *    on it are the pipe's, not the stream's.
 * 2. dup2 of a pipe onto a connected number registered in epoll: the
 *    registration goes with the number (the stream, still open through a
 *    dup, gets its echo, and epoll_wait reports nothing of it); dup2 of
 *    a number onto itself changes nothing; a dup of an in-process number
 *    is close-on-exec in the kernel, while F_GETFD answers what dup
 *    asked for (not close-on-exec).
 *
 * 1b. (closed) A connected number closed by syscall(SYS_close) and
 *    given to another file, which the program then closes with close(),
 *    no other call on the number between: the close is that file's (a
 *    pipe's read end: the number is free after it, and the write end
 *    gets EPIPE), and the stream is let go of (the server sees its end).
 *    Then a socket the shim makes on such a number (a placeholder, with
 *    a peer end of the shim's): its close leaves no socket behind.
 * 3. (listener) accept at EMFILE leaves the flow queued: the next accept,
 *    with a descriptor free, gets it and it echoes; a fork while a thread
 *    waits in accept hands the listener to sald, and both processes
 *    accept from it (one flow each).
 * 4. (shutdown) shutdown(SHUT_RD) of a stream, from another thread,
 *    wakes a thread blocked in read with end of file, after the bytes
 *    already queued; shutdown of a listener wakes a thread blocked in
 *    accept with EINVAL, and later accepts fail at once, in a forked
 *    child too and after the fork.
 * 5. (stdio) fdopen and sendfile hand an in-process stream to sald
 *    first: stdio's lines and a file's bytes echo intact.
 * 6. (refused) a flow sald refuses to adopt at a fork comes back to the
 *    engine: every byte, then the flow goes on.
 * 7. (stat) fstat, fstatat and statx of in-process numbers (eventfds in
 *    the kernel) answer as for TCP sockets: S_ISSOCK, mode 0777, the
 *    device of every socket, the program's user, an inode of each
 *    socket's own that its dup shares; a pipe's answer is a pipe's.
 *
 * Exits 0 when all held.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "check.h"
#include "fd_name.h"
#include "serval.h"
#include "sv_addr.h"


static int connected(const struct sockaddr_sv *sa) {
    int fd = socket(AF_SERVAL, SOCK_STREAM, 0);
    if (fd < 0) { perror("socket"); exit(2); }
    if (connect(fd, (const struct sockaddr *)sa, sizeof *sa) < 0) { perror("connect"); exit(2); }
    return fd;
}

/* Closes the connected number FD behind the shim's back (HOW: "syscall"
 * or "close_range"), opens a pipe on it and checks the pipe's ends. */
static int stale(const struct sockaddr_sv *sa, const char *how) {
    int fd = connected(sa);
    /* One echo first: the number really is the stream. */
    char buf[16];
    if (write(fd, "ping", 4) != 4 || read(fd, buf, sizeof buf) != 4) {
        fprintf(stderr, "%s: no echo before\n", how);
        return 1;
    }
    if (strcmp(how, "syscall") == 0) {
        if (syscall(SYS_close, fd) != 0) { perror("SYS_close"); return 1; }
    } else if (syscall(SYS_close_range, (unsigned)fd, (unsigned)fd, 0) != 0) {
        perror("close_range");
        return 1;
    }
    int p[2];
    if (pipe(p) != 0) { perror("pipe"); return 1; }
    if (p[0] != fd && p[1] != fd) {
        fprintf(stderr, "%s: the pipe did not get number %d (%d %d)\n", how, fd, p[0], p[1]);
        return 1;
    }
    alarm(10);
    if (write(p[1], "pipe!", 5) != 5) {
        fprintf(stderr, "%s: write on the pipe's number: %s\n", how, strerror(errno));
        return 1;
    }
    memset(buf, 0, sizeof buf);
    ssize_t n = read(p[0], buf, sizeof buf);
    if (n != 5 || memcmp(buf, "pipe!", 5) != 0) {
        fprintf(stderr, "%s: read on the pipe's number got %zd (%s)\n", how, n,
                n < 0 ? strerror(errno) : "wrong bytes");
        return 1;
    }
    alarm(0);
    close(p[0]);
    close(p[1]);
    return 0;
}

/* How many kernel sockets the process has open (the engine's eventfds,
 * which a stream's close may close or keep, are not counted). */
static int sockets_open(void) {
    int n = 0;
    for (int fd = 0; fd < 1024; fd++) n += kernel_socket(fd);
    return n;
}

/* Closes a connected number behind the shim's back, lets another file
 * take it, and closes that with close() at once (see 1b). */
static int stale_close(const struct sockaddr_sv *sa) {
    signal(SIGPIPE, SIG_IGN);
    int fd = connected(sa);
    char buf[16];
    alarm(10);
    if (write(fd, "ping", 4) != 4 || read(fd, buf, sizeof buf) != 4) {
        fprintf(stderr, "closed: no echo before\n");
        return 1;
    }
    if (syscall(SYS_close, fd) != 0) { perror("SYS_close"); return 1; }
    int p[2];
    if (pipe(p) != 0) { perror("pipe"); return 1; }
    if (p[0] != fd) {
        fprintf(stderr, "closed: the pipe's read end is %d, not %d\n", p[0], fd);
        return 1;
    }
    if (close(fd) != 0) { perror("close of the pipe's read end"); return 1; }
    if (fcntl(fd, F_GETFD) != -1 || errno != EBADF) {
        fprintf(stderr, "closed: number %d still open after close\n", fd);
        return 1;
    }
    if (write(p[1], "x", 1) != -1 || errno != EPIPE) {
        fprintf(stderr, "closed: the pipe's read end is still open\n");
        return 1;
    }
    close(p[1]);

    int again = connected(sa);
    if (syscall(SYS_close, again) != 0) { perror("SYS_close"); return 1; }
    int before = sockets_open();
    int s = socket(AF_SERVAL, SOCK_STREAM, 0);
    if (s != again) {
        fprintf(stderr, "closed: the socket is %d, not %d\n", s, again);
        return 1;
    }
    if (close(s) != 0) { perror("close of the socket"); return 1; }
    int after = sockets_open();
    if (after != before) {
        for (int i = 0; i < 1024; i++) {
            char path[64], link[256];
            if (!kernel_socket(i)) continue;
            snprintf(path, sizeof path, "/proc/self/fd/%d", i);
            ssize_t n = readlink(path, link, sizeof link - 1);
            link[n < 0 ? 0 : n] = 0;
            fprintf(stderr, "closed: socket at %d: %s\n", i, link);
        }
        fprintf(stderr, "closed: %d sockets open after socket and close, %d before\n",
                after, before);
        return 1;
    }
    alarm(0);
    return 0;
}

static int replaced(const struct sockaddr_sv *sa) {
    int fd = connected(sa);
    int keep = dup(fd);
    if (keep < 0) { perror("dup"); return 1; }
    int bad = 0;
    /* The program sees the flag it asked for (none, from dup); the
     * kernel's stays set, so that a bare eventfd never crosses exec. */
    if (fcntl(keep, F_GETFD) != 0) {
        fprintf(stderr, "F_GETFD of a dup is not what dup asked for\n");
        bad = 1;
    }
    long kernel = syscall(SYS_fcntl, keep, F_GETFD);
    if (kernel < 0 || !(kernel & FD_CLOEXEC)) {
        fprintf(stderr, "dup of an in-process number is not close-on-exec in the kernel\n");
        bad = 1;
    }
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 77};
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0) { perror("epoll"); return 1; }
    int p[2];
    if (pipe(p) != 0) { perror("pipe"); return 1; }
    if (dup2(p[0], fd) != fd) { perror("dup2"); return 1; }
    if (dup2(keep, keep) != keep) { perror("dup2 onto itself"); return 1; }
    if (write(keep, "after", 5) != 5) { perror("write"); return 1; }
    struct epoll_event got[4];
    int n = epoll_wait(ep, got, 4, 1500);
    for (int i = 0; i < n; i++) {
        fprintf(stderr, "epoll_wait: event %#x data %llu of a replaced number\n", got[i].events,
                (unsigned long long)got[i].data.u64);
    }
    if (n != 0) return 1;
    char buf[16];
    alarm(10);
    size_t have = 0;
    while (have < 5) {
        ssize_t r = read(keep, buf + have, sizeof buf - have);
        if (r <= 0) { perror("read of the echo"); return 1; }
        have += (size_t)r;
    }
    alarm(0);
    if (memcmp(buf, "after", 5) != 0) { fprintf(stderr, "echo differs\n"); return 1; }
    close(fd);
    close(p[1]);
    close(keep);
    close(ep);
    return bad;
}

struct accepter {
    int listener;
    int *accepted;
};

/* Accepts one flow on a->listener into *a->accepted. */
static void *accept_thread(void *arg) {
    struct accepter *a = arg;
    *a->accepted = accept(a->listener, NULL, NULL);
    return NULL;
}

static int listener(const struct sockaddr_sv *sa) {
    int l = socket(AF_SERVAL, SOCK_STREAM, 0);
    if (l < 0 || bind(l, (const struct sockaddr *)sa, sizeof *sa) != 0 || listen(l, 8) != 0) {
        perror("listener");
        return 1;
    }
    /* At the limit, first with room for the program's number but not for
     * the engine's descriptor of the flow (its readable eventfd: the
     * engine's own descriptors live high in the table, and under a limit
     * this low stay where they were made; with no spare eventfds yet, and
     * an accepted flow's writable eventfd made only when it waits for
     * room), then with no room at all: accept fails with EMFILE, and the
     * flow must stay queued. */
    static const int rooms[] = {1, 0};
    int a = -1, c = -1;
    for (size_t r = 0; r < sizeof rooms / sizeof rooms[0]; r++) {
        if (a >= 0) close(a);
        if (c >= 0) close(c);
        c = connected(sa);
        struct rlimit was, tight;
        int probe = dup(0);
        close(probe);
        getrlimit(RLIMIT_NOFILE, &was);
        tight = was;
        tight.rlim_cur = (rlim_t)probe + (rlim_t)rooms[r];
        if (setrlimit(RLIMIT_NOFILE, &tight) != 0) { perror("setrlimit"); return 1; }
        a = accept(l, NULL, NULL);
        int e = errno;
        setrlimit(RLIMIT_NOFILE, &was);
        if (a != -1 || e != EMFILE) {
            fprintf(stderr, "accept at the limit (room %d): %d (%s), not EMFILE\n", rooms[r], a,
                    strerror(e));
            return 1;
        }
        alarm(10);
        a = accept(l, NULL, NULL);
        if (a < 0) { perror("accept after EMFILE: the flow was lost"); return 1; }
        char buf[8];
        if (write(c, "queued", 6) != 6 || read(a, buf, sizeof buf) != 6 || memcmp(buf, "queued", 6)) {
            fprintf(stderr, "the flow accepted after EMFILE does not carry bytes\n");
            return 1;
        }
        alarm(0);
    }
    /* fork while a thread waits in accept: the listener goes to sald
     * first, and both processes accept from it, as from a kernel listener
     * that a prefork server shares. */
    int waited = -1;
    pthread_t t;
    pthread_create(&t, NULL, accept_thread, (void *)&(struct accepter){l, &waited});
    usleep(100 * 1000);
    pid_t pid = fork();
    if (pid < 0) { perror("fork"); return 1; }
    if (pid == 0) {
        alarm(10);
        int x = accept(l, NULL, NULL);
        if (x < 0) { perror("child: accept on the inherited listener"); _exit(1); }
        int bad = write(x, "child!", 6) != 6;
        close(x);
        if (close(l) != 0) { perror("child: close"); bad = 1; }
        _exit(bad);
    }
    alarm(10);
    int c2 = connected(sa), c3 = connected(sa);
    int status;
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "child failed: status %#x\n", status);
        return 1;
    }
    pthread_join(t, NULL);
    if (waited < 0 || write(waited, "parent", 6) != 6) {
        fprintf(stderr, "the accept waiting across the fork failed\n");
        return 1;
    }
    close(waited);
    char one[6], two[6];
    if (read(c2, one, 6) != 6 || read(c3, two, 6) != 6) { perror("read"); return 1; }
    int child_first = !memcmp(one, "child!", 6) && !memcmp(two, "parent", 6);
    int parent_first = !memcmp(one, "parent", 6) && !memcmp(two, "child!", 6);
    if (!child_first && !parent_first) {
        fprintf(stderr, "not one flow accepted by each process\n");
        return 1;
    }
    alarm(0);
    close(c2);
    close(c3);
    close(a);
    close(c);
    close(l);
    return 0;
}

struct blocked {
    int fd;
    int listening;
    ssize_t result;
    int error;
    char buf[16];
};

/* A thread blocked in accept (listening) or read on FD. */
static void *block(void *arg) {
    struct blocked *b = arg;
    if (b->listening) {
        b->result = accept(b->fd, NULL, NULL);
    } else {
        b->result = read(b->fd, b->buf, sizeof b->buf);
    }
    b->error = errno;
    return NULL;
}

/* Runs block() on FD, waits 100 ms, shuts FD down with HOW and returns
 * what the blocked call returned (errno in *error). */
static ssize_t woken(int fd, int listening, int how, int *error) {
    struct blocked b = {.fd = fd, .listening = listening};
    pthread_t tid;
    pthread_create(&tid, NULL, block, &b);
    usleep(100 * 1000);
    if (shutdown(fd, how) != 0) { perror("shutdown"); exit(1); }
    pthread_join(tid, NULL);
    *error = b.error;
    return b.result;
}

static int shut(const struct sockaddr_sv *sa) {
    int l = socket(AF_SERVAL, SOCK_STREAM, 0);
    if (l < 0 || bind(l, (const struct sockaddr *)sa, sizeof *sa) != 0 || listen(l, 8) != 0) {
        perror("listener");
        return 1;
    }
    alarm(10);
    int c = connected(sa);
    int a = accept(l, NULL, NULL);
    if (a < 0) { perror("accept"); return 1; }
    /* Bytes queued before SHUT_RD are read first, then end of file. */
    if (write(c, "queued", 6) != 6) { perror("write"); return 1; }
    struct pollfd p = {.fd = a, .events = POLLIN};
    if (poll(&p, 1, 2000) != 1) { fprintf(stderr, "nothing came\n"); return 1; }
    if (shutdown(a, SHUT_RD) != 0) { perror("shutdown(SHUT_RD)"); return 1; }
    char buf[16];
    ssize_t n = read(a, buf, sizeof buf);
    if (n != 6 || memcmp(buf, "queued", 6) != 0) {
        fprintf(stderr, "after SHUT_RD: read %zd, not the queued bytes\n", n);
        return 1;
    }
    if ((n = read(a, buf, sizeof buf)) != 0) {
        fprintf(stderr, "after SHUT_RD and the queued bytes: read %zd, not end of file\n", n);
        return 1;
    }
    close(a);
    close(c);
    /* A blocked reader, woken by SHUT_RD from another thread. */
    c = connected(sa);
    a = accept(l, NULL, NULL);
    if (a < 0) { perror("accept"); return 1; }
    int e = 0;
    if ((n = woken(a, 0, SHUT_RD, &e)) != 0) {
        fprintf(stderr, "a read blocked at SHUT_RD: %zd (%s), not end of file\n", n, strerror(e));
        return 1;
    }
    close(a);
    close(c);
    /* A blocked accept, woken by the listener's shutdown. */
    if ((n = woken(l, 1, SHUT_RDWR, &e)) != -1 || e != EINVAL) {
        fprintf(stderr, "an accept blocked at shutdown: %zd (%s), not EINVAL\n", n, strerror(e));
        return 1;
    }
    if (accept(l, NULL, NULL) != -1 || errno != EINVAL) {
        fprintf(stderr, "accept after shutdown: errno %d, not EINVAL\n", errno);
        return 1;
    }
    /* A fork does not bring it back (the hand-over to sald leaves a
     * stopped listener alone): accept still fails, in both processes. */
    pid_t pid = fork();
    if (pid < 0) { perror("fork"); return 1; }
    if (pid == 0) _exit(accept(l, NULL, NULL) == -1 && errno == EINVAL ? 0 : 1);
    int status = -1;
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0 ||
        accept(l, NULL, NULL) != -1 || errno != EINVAL) {
        fprintf(stderr, "a stopped listener listens again after fork (status %#x)\n", status);
        return 1;
    }
    alarm(0);
    close(l);
    return 0;
}

/* 5. (stdio) glibc's stdio and sendfile on in-process streams: fdopen
 * hands the stream to sald first (its number becomes a kernel socket), so
 * fprintf and fgets carry the bytes, where stdio's internal reads would
 * have read the eventfd's counter; sendfile from a file, on a second
 * stream, likewise. */
static int stdio_and_sendfile(const struct sockaddr_sv *sa) {
    alarm(10);
    int fd = connected(sa);
    FILE *f = fdopen(fd, "r+");
    if (!f) { perror("fdopen"); return 1; }
    char line[64] = "";
    if (fprintf(f, "line one\n") < 0 || fflush(f) != 0 || !fgets(line, sizeof line, f) ||
        strcmp(line, "line one\n") != 0) {
        fprintf(stderr, "stdio: the echo came back as \"%s\"\n", line);
        return 1;
    }
    fclose(f);
    int s = connected(sa);
    char path[] = "/tmp/inproc_fds_XXXXXX";
    int file = mkstemp(path);
    if (file < 0) { perror("mkstemp"); return 1; }
    unlink(path);
    if (write(file, "from a file", 11) != 11) { perror("write"); return 1; }
    off_t off = 0;
    if (sendfile(s, file, &off, 11) != 11) { perror("sendfile"); return 1; }
    close(file);
    char back[16];
    size_t got = 0;
    while (got < 11) {
        ssize_t n = read(s, back + got, 11 - got);
        if (n <= 0) break;
        got += (size_t)n;
    }
    if (got != 11 || memcmp(back, "from a file", 11) != 0) {
        fprintf(stderr, "sendfile: %zu bytes came back\n", got);
        return 1;
    }
    shutdown(s, SHUT_WR);
    if (read(s, back, sizeof back) != 0) { fprintf(stderr, "no end of file\n"); return 1; }
    close(s);
    alarm(0);
    return 0;
}

/* 6. (refused) A stream whose 20,000 unread bytes sald will not adopt
 * (its buffers are smaller): the fork hands it over, sald refuses, and the
 * engine takes the flow back, so the parent reads every byte and goes on. */
static int refused(const struct sockaddr_sv *sa) {
    alarm(10);
    int fd = connected(sa);
    static unsigned char out[20000], back[20000];
    for (size_t i = 0; i < sizeof out; i++) out[i] = (unsigned char)(i * 7);
    if (write(fd, out, sizeof out) != (ssize_t)sizeof out) { perror("write"); return 1; }
    /* The echo waits unread. */
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 5000) != 1) { fprintf(stderr, "no echo\n"); return 1; }
    usleep(100 * 1000);
    pid_t pid = fork();
    if (pid < 0) { perror("fork"); return 1; }
    if (pid == 0) _exit(0);
    int status;
    waitpid(pid, &status, 0);
    size_t got = 0;
    while (got < sizeof back) {
        ssize_t n = read(fd, back + got, sizeof back - got);
        if (n <= 0) { fprintf(stderr, "read after the refused hand-over: %zd (%s)\n", n, strerror(errno)); return 1; }
        got += (size_t)n;
    }
    if (memcmp(out, back, sizeof out) != 0) { fprintf(stderr, "the echo differs\n"); return 1; }
    if (write(fd, "more", 4) != 4 || read(fd, back, 4) != 4 || memcmp(back, "more", 4) != 0) {
        fprintf(stderr, "the flow does not go on\n");
        return 1;
    }
    shutdown(fd, SHUT_WR);
    if (read(fd, back, 4) != 0) { fprintf(stderr, "no end of file\n"); return 1; }
    close(fd);
    alarm(0);
    return 0;
}

/* glibc's fstat of programs built before 2.33 (still exported). */
extern int __fxstat(int version, int fd, struct stat *buf);
extern int __fxstat64(int version, int fd, struct stat64 *buf);

/* 7. (stat) See the header. */
static int stat_as_socket(const struct sockaddr_sv *sa) {
    alarm(10);
    int before = failures;
    int a = connected(sa), b = connected(sa);
    CHECK(eventfd_file(a) && eventfd_file(b), "the streams are not in-process");
    int pair[2], pipes[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, pair) < 0 || pipe(pipes) < 0) {
        perror("socketpair, pipe");
        return 1;
    }
    struct stat sta, stb, std_, stk, stp, stat_at;
    CHECK(fstat(a, &sta) == 0 && fstat(b, &stb) == 0 && fstat(pair[0], &stk) == 0, "fstat");
    CHECK(S_ISSOCK(sta.st_mode) && S_ISSOCK(stb.st_mode), "not S_ISSOCK: %o", sta.st_mode);
    CHECK((sta.st_mode & 07777) == 0777, "mode %o, not a socket's 0777", sta.st_mode & 07777);
    CHECK(sta.st_dev == stk.st_dev, "device %lx, a socket's is %lx", (unsigned long)sta.st_dev,
          (unsigned long)stk.st_dev);
    CHECK(sta.st_uid == geteuid() && sta.st_gid == getegid(), "owner %u", sta.st_uid);
    CHECK(sta.st_ino != stb.st_ino, "two sockets, one inode (%lu)", (unsigned long)sta.st_ino);
    CHECK(sta.st_ino != stk.st_ino && sta.st_ino >= 1ULL << 47, "a kernel socket's inode");
    int d = dup(a);
    CHECK(d >= 0 && fstat(d, &std_) == 0 && std_.st_ino == sta.st_ino && S_ISSOCK(std_.st_mode),
          "a dup is another socket");
    CHECK(fstatat(a, "", &stat_at, AT_EMPTY_PATH) == 0 && S_ISSOCK(stat_at.st_mode) &&
              stat_at.st_ino == sta.st_ino,
          "fstatat(AT_EMPTY_PATH)");
    struct statx stx;
    CHECK(statx(a, "", AT_EMPTY_PATH, STATX_BASIC_STATS, &stx) == 0 && S_ISSOCK(stx.stx_mode) &&
              (stx.stx_mode & 07777) == 0777 && stx.stx_ino == sta.st_ino &&
              makedev(stx.stx_dev_major, stx.stx_dev_minor) == stk.st_dev,
          "statx: mode %o", stx.stx_mode);
    struct stat st_old;
    struct stat64 st64, st64_old;
    CHECK(fstat64(a, &st64) == 0 && S_ISSOCK(st64.st_mode) && st64.st_ino == sta.st_ino,
          "fstat64");
    CHECK(__fxstat(1, a, &st_old) == 0 && S_ISSOCK(st_old.st_mode) && st_old.st_ino == sta.st_ino,
          "__fxstat");
    CHECK(__fxstat64(1, a, &st64_old) == 0 && S_ISSOCK(st64_old.st_mode) &&
              st64_old.st_ino == sta.st_ino,
          "__fxstat64");
    CHECK(isfdtype(a, S_IFSOCK) == 1 && isfdtype(pipes[0], S_IFSOCK) == 0, "isfdtype");
    CHECK(fstat(pipes[0], &stp) == 0 && S_ISFIFO(stp.st_mode), "a pipe is no pipe");
    /* The streams are what they were. */
    char back[4];
    CHECK(write(d, "ping", 4) == 4 && read(a, back, 4) == 4 && memcmp(back, "ping", 4) == 0,
          "no echo");
    close(d), close(a), close(b);
    close(pair[0]), close(pair[1]), close(pipes[0]), close(pipes[1]);
    alarm(0);
    return failures != before;
}

int main(int argc, char **argv) {
    if (argc != 2 && argc != 3) {
        fprintf(stderr, "usage: inproc_fds SID [stale|replaced|closed|listener|shutdown|stdio|refused|stat]\n");
        return 2;
    }
    struct sockaddr_sv sa = sv_addr(argv[1]);
    const char *only = argc == 3 ? argv[2] : "";
    if (strcmp(only, "listener") == 0 || strcmp(only, "shutdown") == 0) {
        int bad = strcmp(only, "listener") == 0 ? listener(&sa) : shut(&sa);
        if (!bad) printf("ok\n");
        return bad;
    }
    if (strcmp(only, "refused") == 0) {
        int bad = refused(&sa);
        if (!bad) printf("ok\n");
        return bad;
    }
    if (strcmp(only, "stat") == 0) {
        int bad = stat_as_socket(&sa);
        if (!bad) printf("ok\n");
        return bad;
    }
    if (strcmp(only, "stdio") == 0) {
        int bad = stdio_and_sendfile(&sa);
        if (!bad) printf("ok\n");
        return bad;
    }
    if (strcmp(only, "closed") == 0) {
        int bad = stale_close(&sa);
        if (!bad) printf("ok\n");
        return bad;
    }
    int bad = 0;
    if (strcmp(only, "replaced") != 0) {
        bad |= stale(&sa, "syscall");
        bad |= stale(&sa, "close_range");
    }
    if (strcmp(only, "stale") != 0) bad |= replaced(&sa);
    if (!bad) printf("ok\n");
    return bad;
}
