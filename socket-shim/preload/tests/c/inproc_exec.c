/*
 * inproc_exec: in-process sockets across exec, under serval-run
 * --in-process. An exec replaces the process's memory, the engine with it,
 * so the shim hands every in-process socket to sald first; then:
 *
 *   - a vfork child's exec hands nothing over (it shares the parent's
 *     memory): the parent's stream stays in-process and works;
 *   - posix_spawn hands over the sockets with a number that is not
 *     close-on-exec, and leaves the others in-process;
 *   - an exec that fails leaves the sockets on the daemon path, working;
 *   - a listener, a stream and an accepted stream that are not
 *     close-on-exec cross into the new image at their numbers (passed on
 *     the command line, as inetd-style programs pass them) and work there;
 *     a close-on-exec stream is closed at exec, its peer sees its bytes
 *     then end of file; a stream the program closed just before the exec
 *     still delivers all its bytes (the exec waits for them, as the kernel
 *     would send them after it: its reader pauses until the exec, so the
 *     stream's send buffer is full then); a stream kept across the exec
 *     with its send buffer full crosses, bytes in flight included;
 *   - the peers of the streams the program accepts and of the one it
 *     closes are a helper process forked first (a flow whose two ends are
 *     both in one process cannot move to sald whole: sald takes no flow
 *     whose peer is itself), which checks what it gets;
 *   - execl with more arguments than registers, and execle's environment,
 *     reach the new image as given.
 *
 *   inproc_exec SID OWN HELPER  (a stream-server for SID serving 2 must
 *                                be listening; OWN and HELPER are services
 *                                this program and its helper bind)
 *
 * Exits 0 when everything behaved.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "fd_name.h"
#include "serval.h"
#include "sv_addr.h"

/* The most bytes the stream closed just before exec is given: as many as
 * it takes without blocking while its reader pauses, so that its send
 * buffer is full when the exec comes. */
#define CLOSED_MOST (16 << 20)

static void die(const char *what) {
    fprintf(stderr, "FAIL %s: %s\n", what, strerror(errno));
    exit(2);
}

static int connect_to(const char *sid, int flags) {
    int fd = socket(AF_SERVAL, SOCK_STREAM | flags, 0);
    if (fd < 0) die("socket");
    struct sockaddr_sv sa = sv_addr(sid);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) die("connect");
    return fd;
}

static int read_full(int fd, char *buf, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        got += (size_t)r;
    }
    return 0;
}

static int write_full(int fd, const char *buf, size_t n) {
    size_t sent = 0;
    while (sent < n) {
        ssize_t w = write(fd, buf + sent, n - sent);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        sent += (size_t)w;
    }
    return 0;
}

/* Sends MSG on FD and checks its echo. */
static void echo(int fd, const char *msg, const char *what) {
    char got[64] = {0};
    size_t n = strlen(msg);
    CHECK(write_full(fd, msg, n) == 0 && read_full(fd, got, n) == 0 && !memcmp(got, msg, n), what);
}

/* Whether FD is a kernel socket (an in-process number is an eventfd,
 * though fstat says socket). */
static int is_socket(int fd) { return kernel_socket(fd); }

static int cloexec(int fd) {
    int flags = fcntl(fd, F_GETFD);
    return flags < 0 ? -1 : (flags & FD_CLOEXEC) != 0;
}

static char pattern(size_t i) { return (char)(i * 7 + 3); }

static int connect_retry(const char *sid) {
    for (int i = 0; i < 500; i++) {
        int fd = socket(AF_SERVAL, SOCK_STREAM, 0);
        if (fd < 0) die("socket");
        struct sockaddr_sv sa = sv_addr(sid);
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) return fd;
        close(fd);
        usleep(10000);
    }
    die("connect (retried)");
    return -1;
}

/* A stream read to its end: COUNT bytes of the pattern, then TRAILER. */
struct expected {
    int fd;
    size_t count;
    const char *trailer;
    size_t got, wrong;
    int ended;
};

/* Takes what one read gives of E (its number polled readable). */
static void take(struct expected *e) {
    static char buf[65536];
    ssize_t n = read(e->fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) return;
    CHECK(n >= 0, "reading a stream to its end");
    if (n <= 0) {
        /* Closed at once: the writer's end waits for this one (its
         * linger, before exec, for our end of stream). */
        e->ended = 1;
        close(e->fd);
        return;
    }
    size_t extra = strlen(e->trailer);
    for (ssize_t i = 0; i < n; i++) {
        size_t at = e->got + (size_t)i;
        char want = at < e->count ? pattern(at) : at - e->count < extra ? e->trailer[at - e->count] : 0;
        e->wrong += buf[i] != want;
    }
    e->got += (size_t)n;
}

/* Reads both streams to their ends at once (each one's bytes may wait on
 * the other's), 10 s at most without a byte; whether each was right. */
static void take_both(struct expected *a, struct expected *b) {
    while (!a->ended || !b->ended) {
        struct pollfd p[2] = {{.fd = a->ended ? -1 : a->fd, .events = POLLIN},
                              {.fd = b->ended ? -1 : b->fd, .events = POLLIN}};
        int n = poll(p, 2, 10000);
        CHECK(n > 0, "the streams go on");
        if (n <= 0) return;
        if (p[0].revents) take(a);
        if (p[1].revents) take(b);
    }
}

/* Whether E was the pattern then its trailer, whole. */
static int whole(const struct expected *e) {
    size_t want = e->count + strlen(e->trailer);
    if (e->got != want) fprintf(stderr, "got %zu of %zu bytes\n", e->got, want);
    return e->ended && e->got == want && e->wrong == 0;
}

/* The helper: the peer of two streams the main program accepts (one it
 * makes close-on-exec and writes to, one that crosses exec and echoes) and
 * of two it makes to the helper's own listener: one it closes just before
 * exec, one it keeps across exec with more bytes than sald takes at once. */
static int helper(const char *own, const char *helper_sid, int ready, int count) {
    alarm(25); /* bounded, whatever happens to its peers */
    int l = socket(AF_SERVAL, SOCK_STREAM, 0);
    if (l < 0) die("socket");
    struct sockaddr_sv sa = sv_addr(helper_sid);
    if (bind(l, (struct sockaddr *)&sa, sizeof sa) < 0) die("bind (helper)");
    if (listen(l, 4) < 0) die("listen (helper)");
    if (write(ready, "r", 1) != 1) die("write (ready)");
    close(ready);
    int to_cloexec = connect_retry(own);
    int to_crossing = connect_retry(own);
    int closed = accept(l, NULL, NULL);
    int full = accept(l, NULL, NULL);
    if (closed < 0 || full < 0) die("accept (helper)");
    struct timeval patience = {.tv_sec = 10};
    setsockopt(closed, SOL_SOCKET, SO_RCVTIMEO, &patience, sizeof patience);
    setsockopt(full, SOL_SOCKET, SO_RCVTIMEO, &patience, sizeof patience);
    /* Nothing read for a while: the writer's buffers fill, and it execs
     * with its bytes still to send. */
    usleep(300000);
    size_t sent[2] = {0, 0};
    CHECK(read(count, sent, sizeof sent) == sizeof sent, "the streams' counts");
    struct expected a = {.fd = closed, .count = sent[0], .trailer = ""};
    struct expected b = {.fd = full, .count = sent[1], .trailer = "tail"};
    take_both(&a, &b);
    CHECK(sent[0] > 0 && whole(&a), "every byte of the stream closed before exec, then its end of stream");
    CHECK(sent[1] > 0 && whole(&b),
          "every byte of the stream kept across exec, then what the image after sent");

    char word[16] = {0};
    CHECK(read_full(to_cloexec, word, 10) == 0 && !memcmp(word, "three-data", 10),
          "the close-on-exec stream's bytes");
    CHECK(read(to_cloexec, word, 1) == 0, "then its end of stream, at exec");
    close(to_cloexec);
    static char buf[65536];
    for (;;) {
        ssize_t n = read(to_crossing, buf, sizeof buf);
        if (n <= 0 || write_full(to_crossing, buf, (size_t)n) < 0) break;
    }
    close(to_crossing);
    return failures ? 1 : 0;
}

/* Writes the pattern to FD, non-blocking, as long as it takes it (its
 * reader pausing: until it stops for 50 ms), CLOSED_MOST at most. */
static size_t fill(int fd) {
    fcntl(fd, F_SETFL, O_NONBLOCK);
    static char chunk[65536];
    size_t sent = 0;
    while (sent < CLOSED_MOST) {
        for (size_t i = 0; i < sizeof chunk; i++) chunk[i] = pattern(sent + i);
        ssize_t w = write(fd, chunk, sizeof chunk);
        if (w > 0) {
            sent += (size_t)w;
            continue;
        }
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        if (w < 0 && errno == EAGAIN && poll(&p, 1, 50) == 1) continue;
        CHECK(w < 0 && errno == EAGAIN, "writes block, at most");
        break;
    }
    return sent;
}

static int start(const char *sid, const char *own, const char *helper_sid) {
    /* The helper first: a fork hands this process's in-process sockets to
     * sald, and there are none yet. */
    int ready[2], count[2];
    if (pipe(ready) < 0 || pipe2(count, O_CLOEXEC) < 0) die("pipe");
    pid_t child = fork();
    if (child < 0) die("fork");
    if (child == 0) {
        close(ready[0]);
        close(count[1]);
        _exit(helper(own, helper_sid, ready[1], count[0]));
    }
    close(ready[1]);
    close(count[0]);
    char r;
    if (read(ready[0], &r, 1) != 1) die("the helper's listener");
    close(ready[0]);

    int l = socket(AF_SERVAL, SOCK_STREAM, 0);
    if (l < 0) die("socket");
    struct sockaddr_sv sa = sv_addr(own);
    if (bind(l, (struct sockaddr *)&sa, sizeof sa) < 0) die("bind");
    if (listen(l, 16) < 0) die("listen");
    int s1 = connect_to(sid, 0);
    int s4 = connect_to(sid, SOCK_CLOEXEC);
    int a3 = accept4(l, NULL, NULL, SOCK_CLOEXEC);
    if (a3 < 0) die("accept4");
    int a6 = accept(l, NULL, NULL);
    if (a6 < 0) die("accept");
    echo(s1, "one", "an echo on the first stream");
    echo(s4, "four", "an echo on the close-on-exec stream");
    CHECK(!is_socket(s1) && !is_socket(a3), "the streams are in-process (not kernel sockets)");

    /* A vfork child's exec: nothing handed over. */
    pid_t pid = vfork();
    if (pid < 0) die("vfork");
    if (pid == 0) {
        execl("/bin/true", "true", (char *)NULL);
        _exit(127);
    }
    int status;
    CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "the vfork child ran /bin/true");
    CHECK(!is_socket(s1), "a vfork child's exec handed nothing over");
    echo(s1, "two", "an echo after the vfork child's exec");

    /* posix_spawn: the sockets the new program may inherit (a number not
     * close-on-exec) go to sald first; close-on-exec ones stay here. */
    char *truth[] = {"true", NULL};
    extern char **environ;
    CHECK(posix_spawn(&pid, "/bin/true", NULL, NULL, truth, environ) == 0 &&
              waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "posix_spawn ran /bin/true");
    CHECK(is_socket(l) && is_socket(s1) && is_socket(a6), "posix_spawn handed the inheritable sockets over");
    CHECK(!is_socket(s4) && !is_socket(a3), "close-on-exec sockets stayed in-process at posix_spawn");
    echo(s1, "two more", "an echo after posix_spawn");
    echo(s4, "four more", "an echo on the close-on-exec stream after posix_spawn");

    /* A failed exec: the sockets are sald's now, and work. */
    char *none[] = {"inproc_exec", NULL};
    errno = 0;
    CHECK(execv("/nonexistent/inproc_exec", none) == -1 && errno == ENOENT,
          "an exec of nothing fails with ENOENT");
    CHECK(is_socket(l) && is_socket(s1) && is_socket(s4) && is_socket(a3) && is_socket(a6),
          "the sockets went to sald at the failed exec");
    echo(s1, "three", "an echo after the failed exec");
    CHECK(cloexec(s1) == 0 && cloexec(a6) == 0 && cloexec(s4) == 1 && cloexec(a3) == 1 &&
              cloexec(l) == 0,
          "close-on-exec as the program set it, after the hand-over");
    int on = 0;
    socklen_t len = sizeof on;
    CHECK(getsockopt(l, SOL_SOCKET, SO_ACCEPTCONN, &on, &len) == 0 && on == 1,
          "the listener listens after the failed exec");
    CHECK(write_full(a3, "three-data", 10) == 0, "bytes on the close-on-exec stream");

    /* A fresh in-process stream, closed with its bytes still on their way
     * just before the exec, and one kept across it with its send buffer
     * full (when that holds more than an Adopt frame carries, 252 KiB, as
     * it may once the buffer grew, the exec waits for it to drain). */
    int s5 = connect_to(helper_sid, 0);
    int s7 = connect_to(helper_sid, 0);
    CHECK(!is_socket(s5) && !is_socket(s7), "streams made after the failed exec are in-process");
    size_t sent[2] = {fill(s5), fill(s7)};
    CHECK(write(count[1], sent, sizeof sent) == sizeof sent, "the counts to the helper");
    CHECK(close(s5) == 0, "close the stream before exec");
    fcntl(s7, F_SETFL, 0);

    char n[7][16];
    int args[7] = {l, s1, a6, s4, a3, child, s7};
    for (int i = 0; i < 7; i++) snprintf(n[i], sizeof n[i], "%d", args[i]);
    if (failures) return 1;
    /* Eleven arguments after the path: past the six registers. */
    execl("/proc/self/exe", "inproc_exec", "after", sid, own, n[0], n[1], n[2], n[3], n[4], n[5],
          n[6], (char *)NULL);
    die("exec");
    return 1;
}

static int after(const char *own, int l, int s1, int a6, int s4, int a3, pid_t helper_pid,
                 int s7) {
    CHECK(is_socket(l) && is_socket(s1) && is_socket(a6) && is_socket(s7),
          "the sockets crossed exec at their numbers");
    CHECK(write_full(s7, "tail", 4) == 0 && close(s7) == 0,
          "more bytes on the stream that was too full to go at once");
    errno = 0;
    CHECK(fcntl(s4, F_GETFD) == -1 && errno == EBADF, "the close-on-exec stream was closed");
    errno = 0;
    CHECK(fcntl(a3, F_GETFD) == -1 && errno == EBADF, "the close-on-exec accepted stream was closed");
    echo(s1, "five", "an echo on the stream that crossed exec");
    echo(a6, "six", "an echo on the accepted stream that crossed exec");
    close(a6);
    int status;
    CHECK(waitpid(helper_pid, &status, 0) == helper_pid && WIFEXITED(status) &&
              WEXITSTATUS(status) == 0,
          "the helper got what it should have");

    /* The listener serves this image. */
    int c = connect_to(own, 0);
    int a = accept(l, NULL, NULL);
    char got[4] = {0};
    CHECK(a >= 0, "accept on the listener that crossed exec");
    if (a >= 0) {
        CHECK(write_full(c, "six", 3) == 0 && read_full(a, got, 3) == 0 && !memcmp(got, "six", 3),
              "bytes through the listener that crossed exec");
        close(a);
    }
    close(c);

    /* execle: its environment is the one given. */
    extern char **environ;
    size_t count = 0;
    while (environ[count]) count++;
    char **env = calloc(count + 2, sizeof *env);
    if (!env) die("calloc");
    memcpy(env, environ, count * sizeof *env);
    env[count] = "INPROC_EXEC_MARK=yes";
    char ln[16];
    snprintf(ln, sizeof ln, "%d", l);
    if (failures) return 1;
    execle("/proc/self/exe", "inproc_exec", "last", own, ln, (char *)NULL, env);
    die("execle");
    return 1;
}

static int last(int l) {
    const char *mark = getenv("INPROC_EXEC_MARK");
    CHECK(mark && !strcmp(mark, "yes"), "execle's environment");
    int on = 0;
    socklen_t len = sizeof on;
    CHECK(getsockopt(l, SOL_SOCKET, SO_ACCEPTCONN, &on, &len) == 0 && on == 1,
          "the listener crossed a second exec");
    return failures ? 1 : 0;
}

int main(int argc, char **argv) {
    if (argc == 4 && !strcmp(argv[1], "last")) return last(atoi(argv[3]));
    if (argc == 4) return start(argv[1], argv[2], argv[3]);
    if (argc == 11 && !strcmp(argv[1], "after"))
        return after(argv[3], atoi(argv[4]), atoi(argv[5]), atoi(argv[6]), atoi(argv[7]),
                     atoi(argv[8]), atoi(argv[9]), atoi(argv[10]));
    fprintf(stderr, "usage: inproc_exec SID OWN HELPER\n");
    return 2;
}
