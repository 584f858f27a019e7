/*
 * inproc_recycle: the kernel TCP sockets that in-process connects leave
 * behind are handed out again by socket(), as new, under
 * serval-run --in-process --map PORT=SERVICE.
 *
 *   inproc_recycle PORT   (an echo server for the service PORT maps to,
 *                          e.g. benches/c/connrate.c's, must be listening)
 *
 * 1. A socket with TCP_NODELAY, SO_KEEPALIVE and SO_REUSEADDR set
 *    connects in process and is closed: the next socket() (SOCK_NONBLOCK)
 *    is that kernel socket again (same inode), at the lowest free number,
 *    with the options off, O_NONBLOCK on and close-on-exec off; after it
 *    connected non-blocking, one made with SOCK_CLOEXEC has close-on-exec
 *    on, O_NONBLOCK off, and is not bound.
 * 2. A socket copied with dup, made before a fork, registered in an epoll
 *    set, or with TCP_QUICKACK set is not handed out again: the next
 *    socket() is a new one.
 * 3. A socket handed out again works on the kernel's path: it connects to
 *    a kernel listener on a port that is not mapped, and bytes go both
 *    ways; a child forked while it was kept holds no copy of it (its
 *    close is an end of file to the peer at once).
 * 4. When every number below the kept one is taken, socket() gives the
 *    kept number itself, close-on-exec off (the kept copy is out of the
 *    program's numbers, as the engine's descriptors are: the program
 *    takes every free number up to 24 below its limit, 2048 at most).
 *
 * Exits 0 when all held.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"

static struct sockaddr_in mapped;

static ino_t inode(int fd) {
    struct stat st;
    if (fstat(fd, &st) < 0) return 0;
    return st.st_ino;
}

static int option(int fd, int level, int name) {
    int value = -1;
    socklen_t len = sizeof value;
    if (getsockopt(fd, level, name, &value, &len) < 0) return -1;
    return value;
}

/* The number the kernel would give a new file now. */
static int lowest_free(void) {
    int fd = open("/dev/null", O_RDONLY);
    close(fd);
    return fd;
}

/* Connects `fd` to the mapped service (in process) and echoes a line. */
static int echo_through(int fd, const struct sockaddr_in *to) {
    if (connect(fd, (const struct sockaddr *)to, sizeof *to) < 0) return -1;
    char out[64], in[64];
    memset(out, 'r', sizeof out);
    if (write(fd, out, sizeof out) != (ssize_t)sizeof out) return -1;
    size_t got = 0;
    while (got < sizeof in) {
        ssize_t n = read(fd, in + got, sizeof in - got);
        if (n <= 0) return -1;
        got += (size_t)n;
    }
    return memcmp(in, out, sizeof in) == 0 ? 0 : -1;
}

/* A blocking socket that connects in process, echoes and is closed;
 * returns its inode. */
static ino_t used_in_process(int fd) {
    ino_t ino = inode(fd);
    CHECK(echo_through(fd, &mapped) == 0, "echo in process");
    close(fd);
    return ino;
}

/* The same for a non-blocking socket: it connects non-blocking. */
static ino_t used_nonblocking(int fd) {
    ino_t ino = inode(fd);
    int rc = connect(fd, (const struct sockaddr *)&mapped, sizeof mapped);
    CHECK(rc == 0 || errno == EINPROGRESS, "non-blocking connect");
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    CHECK(poll(&p, 1, 5000) == 1 && (p.revents & POLLOUT), "connected");
    CHECK(fcntl(fd, F_SETFL, 0) == 0, "blocking");
    char out[64], in[64];
    memset(out, 'n', sizeof out);
    CHECK(write(fd, out, sizeof out) == (ssize_t)sizeof out, "write");
    size_t got = 0;
    while (got < sizeof in) {
        ssize_t n = read(fd, in + got, sizeof in - got);
        if (n <= 0) break;
        got += (size_t)n;
    }
    CHECK(got == sizeof in && memcmp(in, out, sizeof in) == 0, "echo in process");
    close(fd);
    return ino;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: inproc_recycle PORT\n");
        return 2;
    }
    mapped.sin_family = AF_INET;
    mapped.sin_port = htons((uint16_t)atoi(argv[1]));
    mapped.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int one = 1;

    /* 1. */
    int a = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(a >= 0, "socket");
    CHECK(setsockopt(a, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) == 0, "TCP_NODELAY");
    CHECK(setsockopt(a, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one) == 0, "SO_KEEPALIVE");
    CHECK(setsockopt(a, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) == 0, "SO_REUSEADDR");
    ino_t ino_a = used_in_process(a);
    int expected = lowest_free();
    int b = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    CHECK(b == expected, "socket() gave %d, not the lowest free number %d", b, expected);
    CHECK(inode(b) == ino_a, "not the kernel socket the connect left");
    CHECK(option(b, IPPROTO_TCP, TCP_NODELAY) == 0, "TCP_NODELAY still on");
    CHECK(option(b, SOL_SOCKET, SO_KEEPALIVE) == 0, "SO_KEEPALIVE still on");
    CHECK(option(b, SOL_SOCKET, SO_REUSEADDR) == 0, "SO_REUSEADDR still on");
    CHECK(fcntl(b, F_GETFL) & O_NONBLOCK, "SOCK_NONBLOCK not honoured");
    CHECK((fcntl(b, F_GETFD) & FD_CLOEXEC) == 0, "close-on-exec not asked for");
    ino_t ino_b = used_nonblocking(b);
    int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(inode(c) == ino_b, "the second is not handed out again");
    CHECK(fcntl(c, F_GETFD) & FD_CLOEXEC, "SOCK_CLOEXEC not honoured");
    CHECK((fcntl(c, F_GETFL) & O_NONBLOCK) == 0, "O_NONBLOCK left on");
    struct sockaddr_in name;
    socklen_t len = sizeof name;
    CHECK(getsockname(c, (struct sockaddr *)&name, &len) == 0 && name.sin_port == 0,
          "a socket handed out again is bound");

    /* 2. */
    int copy = dup(c);
    CHECK(copy >= 0, "dup");
    close(copy);
    ino_t ino_c = used_in_process(c);
    int d = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(inode(d) != ino_c, "a socket copied by dup was handed out again");
    pid_t child = fork();
    if (child == 0) _exit(0);
    int status = 0;
    CHECK(child > 0 && waitpid(child, &status, 0) == child, "fork");
    ino_t ino_d = used_in_process(d);
    int e = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(inode(e) != ino_d, "a socket made before a fork was handed out again");
    int g = socket(AF_INET, SOCK_STREAM, 0);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = g};
    CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, g, &ev) == 0, "epoll_ctl");
    ino_t ino_g = used_in_process(g);
    int h = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(inode(h) != ino_g, "a socket registered in epoll was handed out again");
    close(h);
    close(ep);
    int q = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(setsockopt(q, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof one) == 0, "TCP_QUICKACK");
    ino_t ino_q = used_in_process(q);
    int r = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(inode(r) != ino_q, "a socket with TCP_QUICKACK set was handed out again");
    close(r);

    /* 3. */
    ino_t ino_e = used_in_process(e);
    pid_t holder = fork();
    if (holder == 0) {
        pause();
        _exit(0);
    }
    CHECK(holder > 0, "fork");
    int f = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(inode(f) == ino_e, "not handed out again after a fork");
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in local = {.sin_family = AF_INET};
    local.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(bind(listener, (struct sockaddr *)&local, sizeof local) == 0, "bind");
    len = sizeof local;
    CHECK(getsockname(listener, (struct sockaddr *)&local, &len) == 0, "getsockname");
    CHECK(listen(listener, 4) == 0, "listen");
    CHECK(connect(f, (struct sockaddr *)&local, sizeof local) == 0, "kernel connect");
    int accepted = accept(listener, NULL, NULL);
    CHECK(accepted >= 0, "accept");
    CHECK(write(f, "ping", 4) == 4, "write");
    char buf[4] = {0};
    CHECK(read(accepted, buf, 4) == 4 && memcmp(buf, "ping", 4) == 0, "read");
    CHECK(write(accepted, "pong", 4) == 4, "write back");
    CHECK(read(f, buf, 4) == 4 && memcmp(buf, "pong", 4) == 0, "read back");
    close(f);
    struct pollfd end = {.fd = accepted, .events = POLLIN};
    CHECK(poll(&end, 1, 2000) == 1 && read(accepted, buf, 4) == 0,
          "the close reached the peer (no copy in the child forked while it was kept)");
    close(accepted);
    close(listener);
    kill(holder, SIGKILL);
    waitpid(holder, &status, 0);

    /* 4. */
    int j = socket(AF_INET, SOCK_STREAM, 0);
    ino_t ino_j = used_in_process(j);
    /* The kept copy is out of the program's numbers (at most 512): every
     * free number up to past that is taken. */
    struct rlimit nofile;
    if (getrlimit(RLIMIT_NOFILE, &nofile) != 0 || nofile.rlim_cur < 1024) {
        CHECK(0, "a soft limit of 1024 or more");
        return 1;
    }
    enum { MOST = 2048 };
    static char filled[MOST];
    int fill = nofile.rlim_cur - 24 < MOST ? (int)nofile.rlim_cur - 24 : MOST;
    int kept = -1;
    for (int n = 3; n < fill && kept < 0; n++)
        if (fcntl(n, F_GETFD) >= 0 && inode(n) == ino_j) kept = n;
    CHECK(kept >= 64, "the kept copy is out of the program's numbers (at %d)", kept);
    int devnull = open("/dev/null", O_RDONLY);
    CHECK(devnull >= 0, "open /dev/null");
    for (int n = 3; n < fill; n++)
        if (fcntl(n, F_GETFD) < 0) filled[n] = dup2(devnull, n) == n;
    int k = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(inode(k) == ino_j, "not handed out again below full numbers");
    CHECK(k >= 0 && k < fill && (fcntl(k, F_GETFD) & FD_CLOEXEC) == 0, "the kept number, not close-on-exec");
    close(k);
    for (int n = 3; n < fill; n++)
        if (filled[n]) close(n);
    close(devnull);

    if (failures) return 1;
    printf("recycled\n");
    return 0;
}
