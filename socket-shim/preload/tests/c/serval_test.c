/*
 * serval_test: exercises the Serval socket interface (serval.h) the way a C
 * program written for it would. Built by tests/c_api.rs and run under
 * serval-run (LD_PRELOAD). Every subcommand exits 0 on success and prints
 * what failed otherwise.
 *
 *   stream-server SID COUNT [fork|nonblock|close-others]
 *                                             echo COUNT connections (close-others:
 *                                             close 3..63 but the listener first)
 *   stream-client SID SIZE                    send SIZE bytes, check the echo
 *   nonblock-client SID SIZE                  same, non-blocking, epoll + poll
 *   nonblock-fail SID                         non-blocking connect, expect EHOSTUNREACH via SO_ERROR
 *   nonblock-orphan SID                       non-blocking connect that waits while sald
 *                                             goes away: ECONNRESET; the next one fails
 *                                             too (ENETDOWN, or ECONNRESET while sald stops)
 *   nonblock-many SID N SIZE                  N non-blocking connects in flight at once
 *                                             (at most one thread of the shim's), then
 *                                             SIZE bytes echoed on each; then one more
 *                                             from a forked child (N + 1 connections)
 *   fork-storm SID FORKS                      FORKS forks while two threads keep
 *                                             non-blocking connects to SID (not bound:
 *                                             EHOSTUNREACH) in flight; each child makes
 *                                             two such connects of its own
 *   many SID N SIZE                           N concurrent clients (threads)
 *   reuse-client SID SIZE                     five connects (the shim keeps its control
 *                                             connection between them), one after closing
 *                                             every descriptor and reusing the numbers, one
 *                                             from a forked child
 *   dgram-server SID COUNT                    echo COUNT datagrams
 *   dgram-client SID COUNT                    send COUNT datagrams, check replies
 *   dgram-msg-server SID COUNT                echo COUNT datagrams with recvmsg/sendmsg only
 *                                             (scattered in, gathered out, to msg_name)
 *   dgram-msg-client SID                      unconnected datagrams with sendmsg/recvmsg only
 *                                             (and readv): the sender's address, MSG_TRUNC
 *                                             in msg_flags and as a flag, EDESTADDRREQ
 *   dgram-flow-server SID [COUNT]             bind, listen, accept COUNT datagram flows, echo
 *                                             each upper-cased until its end (the
 *                                             reference's udp_server_user)
 *   dgram-flow-client SID [bind|sendto]       connect a datagram flow, check the echo (sent
 *                                             with send, then sendmmsg; received with recvmsg,
 *                                             then recvmmsg, each naming the peer); first
 *                                             bind the socket or send a datagram from it
 *   dgram-listener SID                        a listening datagram socket's reads and
 *                                             writes fail (ENOTCONN), before and while a
 *                                             flow (from a thread) waits, which poll,
 *                                             select and epoll still show; accept takes
 *                                             it, a datagram each way (recvmsg names
 *                                             the peer)
 *   dgram-mmsg-server SID COUNT               echo COUNT datagrams in batches (recvmmsg with
 *                                             MSG_WAITFORONE, sendmmsg to the senders)
 *   dgram-mmsg-client SID                     unconnected datagrams in batches (against
 *                                             dgram-mmsg-server, COUNT 6): counts, msg_len,
 *                                             senders; a batch cut by an error; timeouts
 *   retry DEAD LIVE                           non-blocking connect to DEAD fails; the same
 *                                             socket then connects to LIVE and echoes
 *   inet-client PORT SIZE                     inet mode (PORT mapped to a live service):
 *                                             epoll registration and SO_RCVTIMEO made
 *                                             before connect hold for the flow
 *   inet-retry DEAD LIVE                      inet mode, ports DEAD and LIVE mapped: a
 *                                             failed connect wakes epoll, the same socket
 *                                             connects again through the SAL, or to an
 *                                             unmapped port through the kernel
 *   dup SID                                   copies (dup, dup2, fcntl F_DUPFD) of a
 *                                             listener and of a flow mean what the
 *                                             original means; the last close unbinds
 *   backlog SID BACKLOG [AGAIN]               listen(BACKLOG) (then listen(AGAIN)), never
 *                                             accept; connect until refused, print how many
 *                                             were not
 *   listen-fork SID FORKS                     FORKS forks while a thread keeps calling
 *                                             listen() on a listener; each child calls
 *                                             listen() on it too; then one accept
 *   reset-server SID MODE COUNT               accept COUNT flows one by one; reset: reply,
 *                                             close with the request unread (a reset);
 *                                             clean: read the request, reply, close;
 *                                             fin-reset: reply, close (the request comes
 *                                             after: a reset after the FIN); shut-rd-fin:
 *                                             as fin-reset with 512 KiB, then accept a
 *                                             second flow and close it
 *   reset-client SID MODE HOW                 HOW: read|recv|recvfrom|recvmsg|readv|recvmmsg;
 *                                             request, reply; MODE reset: ECONNRESET once,
 *                                             then end of file (HOW batch: reply and reset in
 *                                             one recvmmsg, the reset from the next read);
 *                                             clean, clean-shut (after shutdown(SHUT_WR)),
 *                                             clean-dup-shut (through a copy), clean-fork-shut
 *                                             (in a forked child): end of file;
 *                                             fin-reset: reply, end of file, request, then
 *                                             end of file and EPIPE; fin-reset-unread (against
 *                                             fin-reset): FIN and reset in before any read:
 *                                             reply, end of file, EPIPE; shut-rd-reset (against
 *                                             reset): shutdown(SHUT_RD) after the reply, end
 *                                             of file, then ECONNRESET once at the reset;
 *                                             shut-rd-fin (against shut-rd-fin):
 *                                             shutdown(SHUT_RD) while sald has more to
 *                                             write, FIN, reset: end of file;
 *                                             shut-wr-reset (against reset): SHUT_WR after
 *                                             the request: the reply, ECONNRESET once;
 *                                             so-error (against reset, HOW read; against
 *                                             fin-reset, HOW fin): SO_ERROR ECONNRESET
 *                                             (EPIPE after the FIN) once
 *   connect-eintr S1 PORT S3 HOLE             blocking connects that wait as TCP's do
 *                                             (each service unreachable until the test
 *                                             starts a host for it: S1 after "connecting",
 *                                             the one inet mode maps PORT to after
 *                                             "restart", S3 after "fresh"; HOLE
 *                                             never answers): EINTR from a handler without
 *                                             SA_RESTART and the connect goes on (EALREADY,
 *                                             not writable); close while another thread
 *                                             waits; with SA_RESTART a later connect waits
 *                                             for the outcome, a write waits for the
 *                                             connect, a fresh connect rides out signals;
 *                                             then echoes on each
 *   connect-timeout S1 PORT HOLE DEAD         blocking connects on sockets with SO_SNDTIMEO
 *                                             (S1, and the PORT inet mode maps to it,
 *                                             unreachable until the test starts a host for
 *                                             it after "connecting"; HOLE never answers;
 *                                             DEAD has no route: the error, and SO_RCVTIMEO
 *                                             reads as set):
 *                                             EINPROGRESS after that long and the connect
 *                                             goes on (EALREADY, a blocking connect, write
 *                                             or read waits the timeout, then EALREADY or
 *                                             EAGAIN); EINTR from any signal, SA_RESTART
 *                                             or not; a negative timeout gives up at once;
 *                                             once connected, connect 0 then EISCONN (the
 *                                             first on a dup for one); then echoes on each;
 *                                             a connect with SO_SNDTIMEO LONG_MAX s echoes
 *   connect-timeout-many HOLE N               N blocking connects with SO_SNDTIMEO left in
 *                                             flight after EINPROGRESS: one connector
 *                                             thread and connection for them all
 *   connect-waits S1 PORT HOLE                a blocking connect on a socket whose
 *                                             non-blocking connect is in flight waits
 *                                             for it (SO_SNDTIMEO at most: EALREADY);
 *                                             SIGSTOP and SIGCONT end a wait with a
 *                                             timeout (connect, write, read: EINTR);
 *                                             SO_SNDTIMEO 1e15 s is a timeout, 1e17 s
 *                                             none; S1 (and the PORT inet mode maps to
 *                                             it) unreachable until the test starts a
 *                                             host for it after "connecting"
 *   connect-checks LIVE HOLE                  connect's checks in Linux's order: EFAULT and
 *                                             EINVAL at once (on a socket whose connect is in
 *                                             flight too), AF_UNSPEC disconnects (a waiting
 *                                             connect gets EPIPE, the socket connects again
 *                                             to LIVE), then EALREADY (or a wait) and EISCONN,
 *                                             then the address; SO_RCVTIMEO set during a
 *                                             connect leaves untimed waits restartable
 *   connect-twice S1 PORT S2                  two threads' blocking connects on one socket
 *                                             (and on one TCP socket inet mode maps PORT of):
 *                                             the second waits for the first, both return 0;
 *                                             to S2, which the host lacks: EHOSTUNREACH,
 *                                             then EPIPE (S1
 *                                             and S2 unreachable until the test starts a host
 *                                             for S1 after "connecting")
 *   rcvtimeo-connecting HOLE                  SO_RCVTIMEO reads as set (as a kernel TCP
 *                                             socket reads the same value) while a timed,
 *                                             interrupted or non-blocking connect is in
 *                                             flight
 *   connect-race SID N                        N non-blocking connects, each then connected
 *                                             again until not EALREADY: 0, then EISCONN
 *   read-timeout-connecting SID               a blocking read with SO_RCVTIMEO on a socket
 *                                             whose non-blocking connect is in flight
 *                                             waits that long in all (SID unreachable
 *                                             until the test starts a host after
 *                                             "connecting")
 *   fork-connecting HOLE                      a forked child's copy of a socket whose
 *                                             non-blocking connect is in flight (which
 *                                             nothing completes in the child): its reads
 *                                             and writes fail with ENOTCONN, blocking or
 *                                             not, rather than EAGAIN for good
 *   hz-emfile HOLE                            SO_RCVTIMEO reads as the kernel rounds it
 *                                             while a connect is in flight, after the
 *                                             shim first needed HZ with no descriptor free
 *   accept-timeout SID PORT SID2              accept with SO_RCVTIMEO (set before or after
 *                                             listen; inet mode, PORT mapped to SID2): EAGAIN
 *                                             after that long, EINTR from any signal; reads
 *                                             of a flow with SO_RCVTIMEO: EAGAIN
 *   exec-listener SID COUNT MODE              bind, listen, exec this program as
 *                                             exec-accept: MODE plain (the listener crosses
 *                                             exec), fork (a close-on-exec listener; a forked
 *                                             child clears close-on-exec and execs;
 *                                             fork-ioctl: with ioctl FIONCLEX),
 *                                             fork-dup2 (the child dup2s it to 40 and
 *                                             execs), cloexec (closed at exec:
 *                                             exec-rebind binds SID again)
 *                                             twice (plain, and the exec'd image execs
 *                                             again: exec-again), twice-dup2 (the same,
 *                                             the middle image moving it to 41 with dup2)
 *   exec-again SID COUNT FD DUP               the listener at FD, from the image before, is
 *                                             known; (DUP 1: dup2 it to 41, close FD) exec
 *                                             this program again as exec-accept
 *   exec-full-dup SID                         a listener, then 255 unbound datagram sockets
 *                                             (the record full), a dup of the listener (not
 *                                             carried), the listener closed; exec this
 *                                             program as exec-full-dup-check
 *   exec-full-dup-check SID D                 the copy D is a plain socket, and SID binds
 *                                             again (its control connection did not cross)
 *   exec-carried-check SID D                  (in-process) D crossed as a listener; closed,
 *                                             SID binds again
 *   exec-accept SID COUNT FD                  the listener at FD, from the image before:
 *                                             named, listening, echo COUNT connections
 *   exec-rebind SID COUNT FD                  FD is closed; SID binds again
 *   exec-dgram SID COUNT                      a bound datagram socket, and an unbound one
 *                                             that sent it a datagram, then had SO_SNDTIMEO
 *                                             set; exec this program as exec-dgram-echo (which
 *                                             ends with a connect of the unbound one: the
 *                                             option crossed exec with it)
 *   exec-many-dgram SID                       a bound datagram socket and 300 unbound ones
 *                                             that sent it a datagram each; exec this
 *                                             program as exec-many-dgram-check: the bound
 *                                             one and the first unbound ones cross, the
 *                                             last (made while the shim's record carried
 *                                             its most, 256) is a plain socket after it
 *   exec-dgram-echo SID COUNT FD U            both from the image before: the datagram
 *                                             arrives, a reply reaches U; echo COUNT
 *   exec-garbage -                            records of the shim's (memfds) that do not
 *                                             check out (noise, cut short, not sealed,
 *                                             another socket's inode), then exec
 *   exec-garbage-check FD LAST                the socket FD they named is plain, no record
 *                                             is left open, a socket can be made
 *   exec-orphan SID                           a forked child binds and listens on SID,
 *                                             posix_spawns exec-orphan-hold without its
 *                                             listener (but with its control connection),
 *                                             and exits: SID is unbound, and binds again
 *   exec-orphan-hold FD                       holds what it got until FD (a pipe) ends
 *   exec-stdio SID COUNT                      bind, listen, close stdin, clear close-on-exec
 *                                             (the record is written again): stdin opens at
 *                                             0 again; exec this program as exec-accept
 *   exec-listen-race SID                      listen on a bound datagram socket while the
 *                                             record's last place is filled between its two
 *                                             steps (sald stopped); exec as exec-rebind
 *   exec-spawn-moved SID COUNT TARGET         bind, listen, posix_spawn exec-accept with the
 *                                             listener moved to TARGET (file actions)
 *   exec-spawn-moved-dgram SID COUNT          the same for exec-dgram-echo, its two datagram
 *                                             sockets moved to 20 and 21
 *   exec-dup2-over SID                        bind, listen, dup2 /dev/null over the listener;
 *                                             exec as exec-dup2-over-check (a plain file
 *                                             there, SID binds again)
 *   misuse SID                                error paths (SID is not bound)
 *   low-fds SID                               with 0-2 closed: the program's sockets take
 *                                             the lowest numbers, the shim's own never 0-2
 *   dup2-listener SID dup2|dup3               a copy over a listener's last number unbinds
 *                                             it, while a forked child holds copies
 *   unspec SID                                connect(AF_UNSPEC) disconnects a connected
 *                                             stream, which may connect again
 *   unspec-epoll SID                          connect(AF_UNSPEC) on a connected stream that
 *                                             has a copy leaves one epoll registration
 *   unspec-reader SID                         connect(AF_UNSPEC) while another thread waits
 *                                             in read: EPIPE there, then ECONNRESET
 *   unspec-peer SID                           connect(AF_UNSPEC) on a connected stream resets
 *                                             its flow: the peer reads ECONNRESET (also after
 *                                             its own SHUT_WR)
 *   unspec-listener SID                       connect(AF_UNSPEC) on a listener stops it
 *                                             listening, bound still; listen again
 *   unspec-race SID N                         connect(AF_UNSPEC) N times while a non-blocking
 *                                             connect completes: always disconnected
 *   shut-rd-close SID                         a close after SHUT_RD with bytes come since
 *                                             resets the flow
 *   nodaemon SID                              sald not running
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>

#include "serval.h"
#include "sv_addr.h"
#include "check.h"


#define EXPECT_ERR(call, err)                                              \
    do {                                                                   \
        errno = 0;                                                         \
        long rc_ = (long)(call);                                           \
        int e_ = errno;                                                    \
        if (rc_ != -1 || e_ != (err)) {                                    \
            fprintf(stderr, "FAIL %s:%d: %s returned %ld errno %d (%s), "  \
                    "expected errno %d (%s)\n", __FILE__, __LINE__, #call, \
                    rc_, e_, strerror(e_), (err), strerror(err));          \
            failures++;                                                    \
        }                                                                  \
    } while (0)

static void die(const char *what) {
    perror(what);
    exit(2);
}


static unsigned char pattern(size_t i) { return (unsigned char)(i * 131 + 7); }

static int write_all(int fd, const unsigned char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Reads to end of file, echoing everything back; then half-closes. */
static void echo_stream(int fd) {
    unsigned char buf[65536];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        if (write_all(fd, buf, (size_t)n) < 0) break;
    }
    shutdown(fd, SHUT_WR);
    close(fd);
}

static void *echo_thread(void *arg) {
    echo_stream((int)(long)arg);
    return NULL;
}

static int stream_server(const char *sid, int count, const char *mode) {
    int nonblock = mode && strcmp(mode, "nonblock") == 0;
    int forking = mode && strcmp(mode, "fork") == 0;
    int closing = mode && strcmp(mode, "close-others") == 0;
    int fd = socket(AF_SERVAL, SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    struct sockaddr_sv sa = sv_addr(sid);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) die("bind");
    if (listen(fd, 64) < 0) die("listen");
    struct sockaddr_sv me;
    socklen_t melen = sizeof me;
    CHECK(getsockname(fd, (struct sockaddr *)&me, &melen) == 0 && melen == sizeof me &&
              me.sv_family == AF_SERVAL && memcmp(&me.sv_srvid, &sa.sv_srvid, SERVICE_ID_LEN) == 0,
          "getsockname of the listener");
    if (nonblock) {
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        EXPECT_ERR(accept(fd, NULL, NULL), EAGAIN);
    }
    if (closing) {
        /* A daemon closing every number it does not know of, up to a
         * bound: the library's own descriptors must not be among them. */
        for (int other = 3; other < 64; other++)
            if (other != fd) close(other);
    }
    printf("ready\n");
    fflush(stdout);
    pthread_t *threads = calloc((size_t)count, sizeof *threads);
    int nthreads = 0;
    for (int i = 0; i < count; i++) {
        struct sockaddr_sv peer;
        socklen_t len = sizeof peer;
        if (nonblock) {
            struct pollfd p = {.fd = fd, .events = POLLIN};
            if (poll(&p, 1, 20000) != 1 || !(p.revents & POLLIN)) die("poll on listener");
        }
        int c = accept(fd, (struct sockaddr *)&peer, &len);
        if (c < 0) die("accept");
        CHECK(len == sizeof peer && peer.sv_family == AF_SERVAL, "accept address");
        CHECK(memcmp(&peer.sv_srvid, &sa.sv_srvid, SERVICE_ID_LEN) == 0, "accepted service");
        if (forking) {
            pid_t pid = fork();
            if (pid < 0) die("fork");
            if (pid == 0) {
                close(fd);
                echo_stream(c);
                _exit(0);
            }
            close(c);
        } else {
            pthread_create(&threads[nthreads++], NULL, echo_thread, (void *)(long)c);
        }
    }
    for (int i = 0; i < nthreads; i++) pthread_join(threads[i], NULL);
    if (forking) {
        int status;
        while (wait(&status) > 0)
            CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "forked child status");
    }
    CHECK(close(fd) == 0, "close listener");
    return failures ? 1 : 0;
}

struct writer { int fd; size_t size; };

static void *writer_thread(void *arg) {
    struct writer *w = arg;
    unsigned char buf[65536];
    size_t off = 0;
    while (off < w->size) {
        size_t n = w->size - off < sizeof buf ? w->size - off : sizeof buf;
        for (size_t i = 0; i < n; i++) buf[i] = pattern(off + i);
        if (write_all(w->fd, buf, n) < 0) {
            perror("write");
            return (void *)1;
        }
        off += n;
    }
    shutdown(w->fd, SHUT_WR);
    return NULL;
}

/* Sends SIZE bytes from a thread and checks the echo; returns 0 if exact. */
static int echo_check(int fd, size_t size) {
    struct writer w = {fd, size};
    pthread_t t;
    pthread_create(&t, NULL, writer_thread, &w);
    unsigned char buf[65536];
    size_t got = 0;
    int bad = 0;
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) {
            struct pollfd p = {.fd = fd, .events = POLLIN};
            poll(&p, 1, 10000);
            continue;
        }
        if (n <= 0) break;
        for (ssize_t i = 0; i < n; i++)
            if (buf[i] != pattern(got + (size_t)i)) bad = 1;
        got += (size_t)n;
    }
    void *wres;
    pthread_join(t, &wres);
    if (got != size || bad || wres) {
        fprintf(stderr, "echo: got %zu of %zu bytes, %s\n", got, size, bad ? "corrupt" : "intact");
        return 1;
    }
    return 0;
}

static int stream_client(const char *sid, size_t size) {
    int fd = socket(AF_SERVAL, SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    struct sockaddr_sv sa = sv_addr(sid);
    /* A receive timeout set before connect holds for the flow (the server
     * says nothing until it has our bytes). */
    struct timeval short_wait = {.tv_sec = 0, .tv_usec = 200000};
    CHECK(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &short_wait, sizeof short_wait) == 0, "SO_RCVTIMEO");
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) die("connect");
    char nothing;
    EXPECT_ERR(read(fd, &nothing, 1), EAGAIN);
    struct timeval no_wait = {0, 0};
    CHECK(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &no_wait, sizeof no_wait) == 0, "SO_RCVTIMEO off");
    struct sockaddr_sv peer;
    socklen_t len = sizeof peer;
    CHECK(getpeername(fd, (struct sockaddr *)&peer, &len) == 0 && len == sizeof peer &&
              memcmp(&peer.sv_srvid, &sa.sv_srvid, SERVICE_ID_LEN) == 0,
          "getpeername");
    int type = 0;
    socklen_t tlen = sizeof type;
    CHECK(getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tlen) == 0 && type == SOCK_STREAM, "SO_TYPE");
    int one = 1;
    CHECK(setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one) == 0, "SO_KEEPALIVE");
    CHECK(setsockopt(fd, IPPROTO_TCP, 1 /* TCP_NODELAY */, &one, sizeof one) == 0, "TCP_NODELAY");
    CHECK(echo_check(fd, size) == 0, "stream echo");
    CHECK(close(fd) == 0, "close");
    return failures ? 1 : 0;
}

/* ioctl's queue counts, as TCP's: FIONREAD (SIOCINQ) the bytes received
 * and not read, SIOCOUTQ those written and not acknowledged yet, EFAULT
 * without a place for the count; on a listener (bound to OWN), EINVAL.
 * SO_SNDBUF, SO_RCVBUF and TCP_MAXSEG as Linux answers them, SIOCOUTQNSD
 * and SIOCATMARK (0, a listener's too); with SERVAL_TEST_IN_ENGINE set
 * (in-process), a TCP_MAXSEG of the flow's own. Against a stream-server
 * for SID (an echo). */
static int stream_queues(const char *sid, const char *own) {
    int fd = socket(AF_SERVAL, SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    struct sockaddr_sv sa = sv_addr(sid);
    /* TCP_MAXSEG: TCP's default MSS before a connect, a segment size after
     * (never 0: a program may divide by it). */
    int mss = 0;
    socklen_t mlen = sizeof mss;
    CHECK(getsockopt(fd, IPPROTO_TCP, 2 /* TCP_MAXSEG */, &mss, &mlen) == 0 && mss == 536,
          "TCP_MAXSEG before connect");
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) die("connect");
    mss = 0;
    CHECK(getsockopt(fd, IPPROTO_TCP, 2 /* TCP_MAXSEG */, &mss, &mlen) == 0 && mss >= 536 &&
              mss < 65536,
          "TCP_MAXSEG of a connected stream");
    /* In-process, the engine's flow answers: its own segment size, above
     * the floor the daemon path answers. */
    int in_engine = getenv("SERVAL_TEST_IN_ENGINE") != NULL;
    if (in_engine) CHECK(mss > 536, "TCP_MAXSEG is the flow's");
    int n = -1;
    CHECK(ioctl(fd, FIONREAD, &n) == 0 && n == 0, "FIONREAD of a fresh stream");
    char buf[1000];
    memset(buf, 'q', sizeof buf);
    CHECK(write_all(fd, (const unsigned char *)buf, sizeof buf) == 0, "write");
    /* The echo comes in segments: counted as they arrive. */
    for (int i = 0; i < 500 && (ioctl(fd, FIONREAD, &n) != 0 || n < 1000); i++) usleep(10000);
    CHECK(n == 1000, "FIONREAD counts the echo's 1000 bytes");
    CHECK(read(fd, buf, 400) == 400, "read 400");
    CHECK(ioctl(fd, FIONREAD, &n) == 0 && n == 600, "FIONREAD after reading 400");
    /* What the server echoed, it had: acknowledged (at the latest with
     * the echo's own segments). */
    for (int i = 0; i < 500 && (ioctl(fd, TIOCOUTQ, &n) != 0 || n != 0); i++) usleep(10000);
    CHECK(n == 0, "SIOCOUTQ: nothing unacknowledged");
    n = -1;
    CHECK(ioctl(fd, 0x894B /* SIOCOUTQNSD */, &n) == 0 && n == 0, "SIOCOUTQNSD: nothing unsent");
    n = -1;
    CHECK(ioctl(fd, 0x8905 /* SIOCATMARK */, &n) == 0 && n == 0, "SIOCATMARK: not at a mark");
    CHECK(sockatmark(fd) == 0, "sockatmark: not at a mark");
    EXPECT_ERR(ioctl(fd, FIONREAD, NULL), EFAULT);
    /* Buffer sizes: never 0 (a program may size its reads by them), and
     * twice what was set, as Linux keeps them. */
    int size = 0;
    socklen_t slen = sizeof size;
    CHECK(getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, &slen) == 0 && size > 0, "SO_SNDBUF");
    CHECK(getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, &slen) == 0 && size > 0, "SO_RCVBUF");
    size = 65536;
    CHECK(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size) == 0, "set SO_RCVBUF");
    CHECK(getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, &slen) == 0 && size == 131072,
          "SO_RCVBUF reads back twice what was set");
    close(fd);
    int l = socket(AF_SERVAL, SOCK_STREAM, 0);
    struct sockaddr_sv lsa = sv_addr(own);
    if (l < 0 || bind(l, (struct sockaddr *)&lsa, sizeof lsa) < 0 || listen(l, 4) < 0) die("listener");
    EXPECT_ERR(ioctl(l, FIONREAD, &n), EINVAL);
    n = -1;
    CHECK(ioctl(l, 0x8905 /* SIOCATMARK */, &n) == 0 && n == 0, "SIOCATMARK of a listener: 0");
    EXPECT_ERR(ioctl(l, 0x894B /* SIOCOUTQNSD */, &n), EINVAL);
    close(l);
    return failures ? 1 : 0;
}

static int nonblock_client(const char *sid, size_t size) {
    int fd = socket(AF_SERVAL, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) die("socket");
    struct sockaddr_sv sa = sv_addr(sid);
    /* Registered before the connect; then two calls that fail change
     * nothing, in the kernel or in what the shim re-adds once the flow
     * takes the placeholder's place. */
    int early = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event early_ev = {.events = EPOLLOUT, .data.fd = fd};
    CHECK(epoll_ctl(early, EPOLL_CTL_ADD, fd, &early_ev) == 0, "epoll_ctl before connect");
    EXPECT_ERR(epoll_ctl(early, EPOLL_CTL_ADD, fd, &early_ev), EEXIST);
    EXPECT_ERR(epoll_ctl(early, EPOLL_CTL_MOD, fd, NULL), EFAULT);
    EXPECT_ERR(connect(fd, (struct sockaddr *)&sa, sizeof sa), EINPROGRESS);
    /* Registered while the connect is in flight: must still fire. */
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLOUT, .data.fd = fd};
    CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) == 0, "epoll_ctl");
    struct epoll_event out;
    int n = epoll_wait(ep, &out, 1, 10000);
    CHECK(n == 1 && (out.events & EPOLLOUT), "epoll_wait for connect: %d events %x", n, n == 1 ? out.events : 0);
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    CHECK(poll(&p, 1, 10000) == 1 && (p.revents & POLLOUT), "poll for connect");
    int err = -1;
    socklen_t len = sizeof err;
    CHECK(getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0, "SO_ERROR %d", err);
    /* As TCP's: the first connect after it connected says so, the next
     * one is EISCONN. */
    CHECK(connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0, "connect once connected");
    EXPECT_ERR(connect(fd, (struct sockaddr *)&sa, sizeof sa), EISCONN);
    CHECK(fcntl(fd, F_GETFL) & O_NONBLOCK, "still non-blocking after connect");
    char c;
    EXPECT_ERR(recv(fd, &c, 1, 0), EAGAIN);
    close(ep);
    n = epoll_wait(early, &out, 1, 10000);
    CHECK(n == 1 && (out.events & EPOLLOUT), "the registration made before connect: %d events %x", n,
          n == 1 ? out.events : 0);
    close(early);
    /* The echo: a blocking writer thread on a non-blocking socket would spin,
     * so switch to blocking for the bulk transfer. */
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    CHECK(echo_check(fd, size) == 0, "non-blocking stream echo");
    close(fd);
    return failures ? 1 : 0;
}

static int nonblock_fail(const char *sid) {
    int fd = socket(AF_SERVAL, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) die("socket");
    struct sockaddr_sv sa = sv_addr(sid);
    EXPECT_ERR(connect(fd, (struct sockaddr *)&sa, sizeof sa), EINPROGRESS);
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    CHECK(poll(&p, 1, 10000) == 1, "poll wakes on a failed connect");
    int err = 0;
    socklen_t len = sizeof err;
    CHECK(getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == EHOSTUNREACH,
          "SO_ERROR %d, expected EHOSTUNREACH", err);
    close(fd);
    /* Learning the outcome by calling connect again, as Ruby's
     * connect_nonblock does: the pending error, once. */
    fd = socket(AF_SERVAL, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) die("socket");
    EXPECT_ERR(connect(fd, (struct sockaddr *)&sa, sizeof sa), EINPROGRESS);
    p.fd = fd;
    CHECK(poll(&p, 1, 10000) == 1, "poll wakes on a failed connect");
    EXPECT_ERR(connect(fd, (struct sockaddr *)&sa, sizeof sa), EHOSTUNREACH);
    err = -1;
    CHECK(getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0,
          "SO_ERROR %d after connect reported it", err);
    close(fd);
    return failures ? 1 : 0;
}

/* A non-blocking connect that waits (nobody answers at SID's address)
 * while sald goes away: it fails with ECONNRESET, and the next one, with
 * sald still gone, fails at once with ENETDOWN. In-process the connect
 * is the program's own, its SYN sent to sald's UDP port: the SYN sent
 * again once sald is gone is refused there (ECONNREFUSED, as TCP's to a
 * port nobody listens on). The next connect does not depend on sald
 * there: by the route the program's host may have learnt meanwhile (the
 * hole's address, sald's answer to its resolver) it is a connect to a
 * host that never answers, which waits out its SYNs as TCP's would; not
 * looked at. */
static int in_process(void);

static int nonblock_orphan(const char *sid) {
    int gone = in_process() ? ECONNREFUSED : ECONNRESET;
    struct sockaddr_sv sa = sv_addr(sid);
    int fd = socket(AF_SERVAL, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) die("socket");
    EXPECT_ERR(connect(fd, (struct sockaddr *)&sa, sizeof sa), EINPROGRESS);
    printf("pending\n");
    fflush(stdout);
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    CHECK(poll(&p, 1, 20000) == 1, "poll wakes when sald goes");
    int err = 0;
    socklen_t len = sizeof err;
    CHECK(getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == gone,
          "SO_ERROR %d, expected %d", err, gone);
    close(fd);
    if (in_process()) return failures ? 1 : 0;
    /* The next connect opens a new connector connection. sald may still be
     * shutting down (its control socket accepting, then closing): then the
     * connect is in progress and fails like the first; once sald is gone
     * it fails at once with ENETDOWN. Either way it fails, and soon. */
    fd = socket(AF_SERVAL, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int rc = connect(fd, (struct sockaddr *)&sa, sizeof sa);
    if (rc < 0 && errno == EINPROGRESS) {
        p.fd = fd;
        CHECK(poll(&p, 1, 20000) == 1, "poll wakes for the second connect");
        err = 0;
        CHECK(getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == ECONNRESET,
              "second connect: SO_ERROR %d, expected ECONNRESET", err);
    } else {
        CHECK(rc < 0 && errno == ENETDOWN, "second connect: %d errno %d, expected ENETDOWN", rc, errno);
    }
    close(fd);
    return failures ? 1 : 0;
}

/* The threads of this process, from /proc/self/status. */
static int thread_count(void) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) die("/proc/self/status");
    char line[256];
    int threads = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "Threads: %d", &threads) == 1) break;
    fclose(f);
    return threads;
}

/* Whether the program runs in the in-process mode (serval-run
 * --in-process): its streams are the SAL engine's in the process, with
 * its own threads (a driver and a resolver) and, per stream, the
 * engine's eventfds beside the program's number, instead of a connector
 * thread and a placeholder's peer end. */
static int in_process(void) {
    const char *mode = getenv("SERVAL_SHIM_INPROC");
    return mode && !strcmp(mode, "1");
}

/* The descriptors this process has open. */
static int fd_count(void) {
    DIR *d = opendir("/proc/self/fd");
    if (!d) die("/proc/self/fd");
    int n = 0;
    while (readdir(d)) n++;
    closedir(d);
    return n - 3; /* ".", ".." and the directory's own */
}

/* n non-blocking connects in flight at once, completed through one epoll
 * set: the shim must not take a thread or a control connection per
 * connect (one connector thread and connection for the process), and
 * every flow must then echo intact. */
static int nonblock_many(const char *sid, int n, size_t size) {
    int *fds = calloc((size_t)n, sizeof *fds);
    struct sockaddr_sv sa = sv_addr(sid);
    int before = fd_count();
    int ep = epoll_create1(EPOLL_CLOEXEC);
    for (int i = 0; i < n; i++) {
        fds[i] = socket(AF_SERVAL, SOCK_STREAM | SOCK_NONBLOCK, 0);
        if (fds[i] < 0) die("socket");
        EXPECT_ERR(connect(fds[i], (struct sockaddr *)&sa, sizeof sa), EINPROGRESS);
        struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = (uint32_t)i};
        CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev) == 0, "epoll_ctl %d", i);
    }
    int threads = thread_count();
    int most_threads = in_process() ? 3 : 2;
    CHECK(threads >= 1 && threads <= most_threads, "%d threads with %d connects in flight", threads, n);
    /* Each socket and its placeholder's peer end (kept by the shim), the
     * epoll set, the connector's connection (two descriptors of one
     * socket), and slack for a pooled control connection or two: not one
     * more connection per connect in flight. In-process: each socket, the
     * engine's two eventfds and the epoll set's copy of the one for
     * output, and the engine's own (its socket, timerfd, wake-ups). */
    int opened = fd_count() - before;
    int most = in_process() ? 4 * n + 1 + 12 : 2 * n + 1 + 4;
    CHECK(opened <= most, "%d descriptors for %d connects in flight", opened, n);
    int done = 0;
    while (done < n) {
        struct epoll_event out[16];
        int k = epoll_wait(ep, out, 16, 10000);
        if (k <= 0) {
            CHECK(0, "epoll_wait: %d of %d connects completed", done, n);
            break;
        }
        for (int j = 0; j < k; j++) {
            int fd = fds[out[j].data.u32];
            CHECK(out[j].events & EPOLLOUT, "connect %u: events %x", out[j].data.u32, out[j].events);
            CHECK(epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL) == 0, "epoll_ctl del");
            int err = -1;
            socklen_t len = sizeof err;
            CHECK(getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0, "SO_ERROR %d", err);
            done++;
        }
    }
    close(ep);
    for (int i = 0; i < n; i++) {
        fcntl(fds[i], F_SETFL, fcntl(fds[i], F_GETFL) & ~O_NONBLOCK);
        CHECK(echo_check(fds[i], size) == 0, "echo on connect %d", i);
        close(fds[i]);
    }
    free(fds);
    /* A forked child has the parent's connector state but not its thread:
     * its own non-blocking connect must still complete. */
    pid_t child = fork();
    if (child < 0) die("fork");
    if (child == 0) {
        alarm(20); /* a child stuck on a connect that never completes dies */
        failures = 0;
        _exit(nonblock_client(sid, size));
    }
    int status = 0;
    CHECK(waitpid(child, &status, 0) == child && WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "non-blocking connect in a forked child: status %x", status);
    return failures ? 1 : 0;
}

/* A batch of non-blocking connects to SID, which is not bound: each must
 * be in progress, then fail with EHOSTUNREACH through SO_ERROR. Returns
 * how many did not. */
static int refused_batch(const char *sid, int n) {
    struct sockaddr_sv sa = sv_addr(sid);
    int fds[16], bad = 0;
    if (n > 16) n = 16;
    for (int i = 0; i < n; i++) {
        fds[i] = socket(AF_SERVAL, SOCK_STREAM | SOCK_NONBLOCK, 0);
        if (fds[i] < 0 || connect(fds[i], (struct sockaddr *)&sa, sizeof sa) == 0 ||
            errno != EINPROGRESS) {
            fprintf(stderr, "connect %d: not in progress (errno %d)\n", i, errno);
            bad++;
        }
    }
    for (int i = 0; i < n; i++) {
        if (fds[i] < 0) continue;
        struct pollfd p = {.fd = fds[i], .events = POLLOUT};
        int err = 0;
        socklen_t len = sizeof err;
        if (poll(&p, 1, 10000) != 1 ||
            getsockopt(fds[i], SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != EHOSTUNREACH) {
            fprintf(stderr, "connect %d: SO_ERROR %d, expected EHOSTUNREACH\n", i, err);
            bad++;
        }
        close(fds[i]);
    }
    return bad;
}

struct storm_arg { const char *sid; int stop; int connects; int bad; };

static void *storm_thread(void *arg) {
    struct storm_arg *s = arg;
    while (!__atomic_load_n(&s->stop, __ATOMIC_ACQUIRE)) {
        s->bad += refused_batch(s->sid, 8);
        __atomic_add_fetch(&s->connects, 8, __ATOMIC_RELEASE);
    }
    return NULL;
}

/* Forks while other threads are inside the shim's connect path (writing
 * requests on the connector connection, or installing answers on the
 * connector's thread): the fork must neither deadlock (the shim's locks
 * taken in the wrong order in its fork handlers) nor leave the child a
 * lock held by a thread it does not have (its connects would hang). */
static int fork_storm(const char *sid, int forks) {
    alarm(25); /* a deadlocked fork ends the test instead of hanging it */
    struct storm_arg s[2] = {{sid, 0, 0, 0}, {sid, 0, 0, 0}};
    pthread_t t[2];
    for (int i = 0; i < 2; i++) pthread_create(&t[i], NULL, storm_thread, &s[i]);
    while (__atomic_load_n(&s[0].connects, __ATOMIC_ACQUIRE) +
               __atomic_load_n(&s[1].connects, __ATOMIC_ACQUIRE) < 16)
        usleep(1000);
    for (int i = 0; i < forks; i++) {
        pid_t pid = fork();
        if (pid < 0) die("fork");
        if (pid == 0) {
            alarm(10); /* a child stuck on an inherited lock dies */
            _exit(refused_batch(sid, 1) + refused_batch(sid, 4) == 0 ? 0 : 1);
        }
        int status = 0;
        CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "fork %d: child status %x", i, status);
    }
    for (int i = 0; i < 2; i++) {
        __atomic_store_n(&s[i].stop, 1, __ATOMIC_RELEASE);
        pthread_join(t[i], NULL);
        CHECK(s[i].bad == 0, "thread %d: %d of %d connects went wrong", i, s[i].bad, s[i].connects);
    }
    printf("%d forks during %d connects\n", forks, s[0].connects + s[1].connects);
    return failures ? 1 : 0;
}

struct many_arg { const char *sid; size_t size; int rc; };

static void *many_thread(void *arg) {
    struct many_arg *m = arg;
    int fd = socket(AF_SERVAL, SOCK_STREAM, 0);
    struct sockaddr_sv sa = sv_addr(m->sid);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        perror("many: connect");
        m->rc = 1;
        return NULL;
    }
    m->rc = echo_check(fd, m->size);
    close(fd);
    return NULL;
}

static int many(const char *sid, int n, size_t size) {
    pthread_t *t = calloc((size_t)n, sizeof *t);
    struct many_arg *a = calloc((size_t)n, sizeof *a);
    for (int i = 0; i < n; i++) {
        a[i] = (struct many_arg){sid, size, 0};
        pthread_create(&t[i], NULL, many_thread, &a[i]);
    }
    for (int i = 0; i < n; i++) {
        pthread_join(t[i], NULL);
        CHECK(a[i].rc == 0, "client %d", i);
    }
    return failures ? 1 : 0;
}

/* One blocking connect, SIZE bytes echoed, close. */
static int stream_once(const char *sid, size_t size) {
    int fd = socket(AF_SERVAL, SOCK_STREAM, 0);
    if (fd < 0) return 1;
    struct sockaddr_sv sa = sv_addr(sid);
    int rc = connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0 ? echo_check(fd, size) : 1;
    close(fd);
    return rc;
}

static int reuse_client(const char *sid, size_t size) {
    /* The second connect goes over the control connection the first kept. */
    CHECK(stream_once(sid, size) == 0, "first connect");
    CHECK(stream_once(sid, size) == 0, "second connect");
    /* The program closes every descriptor behind the shim's back and reuses
     * the numbers: the kept connection must not be written to. */
    for (int fd = 3; fd < 64; fd++) close(fd);
    int p[2];
    if (pipe(p) < 0) die("pipe");
    for (int fd = p[1] + 1; fd < 16; fd++) dup2(p[1], fd);
    CHECK(stream_once(sid, size) == 0, "connect after the descriptors were closed and reused");
    fcntl(p[0], F_SETFL, fcntl(p[0], F_GETFL) | O_NONBLOCK);
    char c;
    CHECK(read(p[0], &c, 1) < 0 && errno == EAGAIN, "nothing was written into the program's pipe");
    /* A forked child connects on its own control connection. */
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) _exit(stream_once(sid, size));
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "connect in a forked child");
    CHECK(stream_once(sid, size) == 0, "connect in the parent after the fork");
    return failures ? 1 : 0;
}

/* The sender's address as recvfrom and recvmsg give it (as the
 * reference's recvfrom): the sender's service ID, then its IPv4 address
 * when there is room for both; sendto and sendmsg take both. */
struct sv_from {
    struct sockaddr_sv sv;
    struct sockaddr_in in;
};

/* A datagram socket bound to SID (and listening if `listening`), after
 * which the program says "ready". */
static int bound_dgram(const char *sid, int listening) {
    int fd = socket(AF_SERVAL, SOCK_DGRAM, 0);
    if (fd < 0) die("socket");
    struct sockaddr_sv sa = sv_addr(sid);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) die("bind");
    if (listening && listen(fd, 5) < 0) die("listen");
    printf("ready\n");
    fflush(stdout);
    return fd;
}

static int dgram_server(const char *sid, int count) {
    int fd = bound_dgram(sid, 0);
    for (int i = 0; i < count; i++) {
        char buf[2048];
        struct sv_from from;
        socklen_t len = i % 2 ? sizeof from : sizeof from.sv;
        ssize_t n = recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&from, &len);
        if (n < 0) die("recvfrom");
        CHECK(from.sv.sv_family == AF_SERVAL && from.sv.sv_flags == 0, "recvfrom address");
        if (i % 2)
            CHECK(len == sizeof from && from.in.sin_family == AF_INET, "sockaddr_in after sockaddr_sv");
        else
            CHECK(len == sizeof from.sv, "sockaddr_sv alone");
        if (sendto(fd, buf, (size_t)n, 0, (struct sockaddr *)&from, len) != n) die("sendto");
    }
    close(fd);
    return failures ? 1 : 0;
}

/* Accepts a datagram flow on `fd` and echoes it upper-cased until its end. */
static void dgram_flow_echo(int fd) {
    int c = accept(fd, NULL, NULL);
    if (c < 0) die("accept");
    int type = 0;
    socklen_t tl = sizeof type;
    CHECK(getsockopt(c, SOL_SOCKET, SO_TYPE, &type, &tl) == 0 && type == SOCK_DGRAM, "SOCK_DGRAM flow");
    char buf[2048];
    ssize_t n;
    int echoed = 0;
    while ((n = recv(c, buf, sizeof buf, 0)) > 0) {
        for (ssize_t i = 0; i < n; i++)
            if (buf[i] >= 'a' && buf[i] <= 'z') buf[i] -= 32;
        if (send(c, buf, (size_t)n, 0) != n) die("send");
        echoed++;
    }
    CHECK(n == 0, "end of the flow");
    CHECK(echoed == 3, "%d datagrams echoed", echoed);
    close(c);
}

static int dgram_flow_server(const char *sid, int count) {
    int fd = bound_dgram(sid, 1);
    for (int i = 0; i < count; i++) dgram_flow_echo(fd);
    close(fd);
    return failures ? 1 : 0;
}

/* One datagram on a connected flow and its echo: with send and recvmsg
 * (`how` 0), sendmmsg and recvmmsg of one message (1), or sendto with no
 * address and recvfrom (2); each receive names the sender, the service
 * connected to. Returns the echo's length. */
static ssize_t flow_exchange(int fd, const struct sockaddr_sv *peer, const char *msg, char *back,
                             size_t room, int how) {
    static const char *const calls[] = {"recvmsg", "recvmmsg", "recvfrom"};
    struct iovec out = {(void *)msg, strlen(msg)};
    struct mmsghdr sm = {.msg_hdr = {.msg_iov = &out, .msg_iovlen = 1}};
    ssize_t sent = how == 1   ? (sendmmsg(fd, &sm, 1, 0) == 1 ? (ssize_t)sm.msg_len : -1)
                   : how == 2 ? sendto(fd, msg, strlen(msg), 0, NULL, 0)
                              : send(fd, msg, strlen(msg), 0);
    if (sent != (ssize_t)strlen(msg)) die("send");
    struct sv_from from;
    memset(&from, 0, sizeof from);
    struct iovec in = {back, room};
    struct mmsghdr rm = {.msg_hdr = {.msg_name = &from, .msg_namelen = sizeof from, .msg_iov = &in, .msg_iovlen = 1}};
    ssize_t n = how == 1   ? (recvmmsg(fd, &rm, 1, 0, NULL) == 1 ? (ssize_t)rm.msg_len : -1)
                : how == 2 ? recvfrom(fd, back, room, 0, (struct sockaddr *)&from, &rm.msg_hdr.msg_namelen)
                           : recvmsg(fd, &rm.msg_hdr, 0);
    CHECK(rm.msg_hdr.msg_namelen == sizeof from.sv && from.sv.sv_family == AF_SERVAL &&
              !memcmp(&from.sv.sv_srvid, &peer->sv_srvid, SERVICE_ID_LEN),
          "the flow's peer named by %s (namelen %u)", calls[how], (unsigned)rm.msg_hdr.msg_namelen);
    return n;
}

static int dgram_flow_client(const char *sid, const char *before) {
    int fd = socket(AF_SERVAL, SOCK_DGRAM, 0);
    if (fd < 0) die("socket");
    struct sockaddr_sv sa = sv_addr(sid), mine = sv_addr("d0b1"), nobody = sv_addr("dead0d");
    int bound = before && !strcmp(before, "bind");
    /* As UDP, a socket bound or sent from already may connect. */
    if (bound) CHECK(bind(fd, (struct sockaddr *)&mine, sizeof mine) == 0, "bind before connect");
    if (before && !strcmp(before, "sendto"))
        CHECK(sendto(fd, "x", 1, 0, (struct sockaddr *)&nobody, sizeof nobody) == 1, "sendto before connect");
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) die("connect");
    EXPECT_ERR(connect(fd, (struct sockaddr *)&sa, sizeof sa), EISCONN);
    struct sockaddr_sv me;
    socklen_t melen = sizeof me;
    CHECK(getsockname(fd, (struct sockaddr *)&me, &melen) == 0 &&
              (!bound || !memcmp(&me.sv_srvid, &mine.sv_srvid, SERVICE_ID_LEN)),
          "getsockname after connect");
    const char *msgs[] = {"hello serval", "again", "quit"};
    const char *want[] = {"HELLO SERVAL", "AGAIN", "QUIT"};
    for (int i = 0; i < 3; i++) {
        char back[64] = {0};
        ssize_t n = flow_exchange(fd, &sa, msgs[i], back, sizeof back, i);
        CHECK(n == (ssize_t)strlen(want[i]) && memcmp(back, want[i], (size_t)n) == 0, "echo %d", i);
    }
    /* Our FIN; the server's comes back as the end of the flow. */
    if (shutdown(fd, SHUT_WR) < 0) die("shutdown");
    char rest[16];
    CHECK(recv(fd, rest, sizeof rest, 0) == 0, "the server's FIN");
    close(fd);
    return failures ? 1 : 0;
}

/* The client of dgram_listener: a datagram flow to `arg` (a SID) that
 * sends "ping" and expects "PING" back (giving up after 10 s). */
static void *dgram_ping_thread(void *arg) {
    struct sockaddr_sv sa = sv_addr((const char *)arg);
    int fd = socket(AF_SERVAL, SOCK_DGRAM, 0);
    struct timeval wait = {.tv_sec = 10};
    char back[8] = {0};
    long ok = fd >= 0 && setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &wait, sizeof wait) == 0 &&
              connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0 && send(fd, "ping", 4, 0) == 4 &&
              recv(fd, back, sizeof back, 0) == 4 && !memcmp(back, "PING", 4);
    close(fd);
    return (void *)ok;
}

/* Every data call on a listening datagram socket `l` is refused, as on a
 * listening SOCK_SEQPACKET socket of Linux's (ENOTCONN; a destination
 * given changes nothing), without taking anything off its accept queue.
 * `l` is non-blocking: a read that reached the queue would not wait. */
static void dgram_listener_refuses(int l, const struct sockaddr_sv *to) {
    char buf[64];
    struct sv_from from;
    socklen_t flen = sizeof from;
    struct iovec iov = {buf, sizeof buf};
    struct msghdr m = {.msg_name = &from, .msg_namelen = sizeof from, .msg_iov = &iov, .msg_iovlen = 1};
    struct mmsghdr mm = {.msg_hdr = m};
    EXPECT_ERR(read(l, buf, sizeof buf), ENOTCONN);
    EXPECT_ERR(recv(l, buf, sizeof buf, 0), ENOTCONN);
    EXPECT_ERR(recvfrom(l, buf, sizeof buf, MSG_DONTWAIT, (struct sockaddr *)&from, &flen), ENOTCONN);
    EXPECT_ERR(recvmsg(l, &m, MSG_DONTWAIT), ENOTCONN);
    EXPECT_ERR(readv(l, &iov, 1), ENOTCONN);
    EXPECT_ERR(recvmmsg(l, &mm, 1, MSG_DONTWAIT, NULL), ENOTCONN);
    EXPECT_ERR(write(l, "x", 1), ENOTCONN);
    EXPECT_ERR(send(l, "x", 1, 0), ENOTCONN);
    EXPECT_ERR(writev(l, &iov, 1), ENOTCONN);
    EXPECT_ERR(sendto(l, "x", 1, 0, (const struct sockaddr *)to, sizeof *to), ENOTCONN);
    m.msg_name = (void *)to;
    m.msg_namelen = sizeof *to;
    EXPECT_ERR(sendmsg(l, &m, 0), ENOTCONN);
    m.msg_name = NULL;
    m.msg_namelen = 0;
    EXPECT_ERR(sendmsg(l, &m, 0), ENOTCONN);
    mm.msg_hdr = m;
    EXPECT_ERR(sendmmsg(l, &mm, 1, 0), ENOTCONN);
}

/* Whether `l` polls readable (a flow waits to be accepted) through poll,
 * select and epoll (`ep`, where `l` is registered), within `ms`. */
static int pending(int l, int ep, int ms) {
    struct pollfd p = {.fd = l, .events = POLLIN};
    if (poll(&p, 1, ms) != 1 || !(p.revents & POLLIN)) return 0;
    fd_set in;
    FD_ZERO(&in);
    FD_SET(l, &in);
    struct timeval now = {0, 0};
    struct epoll_event out;
    return select(l + 1, &in, NULL, NULL, &now) == 1 && FD_ISSET(l, &in) &&
           epoll_wait(ep, &out, 1, 0) == 1 && out.data.fd == l && (out.events & EPOLLIN);
}

/* A listening datagram socket has no data of its own: a non-blocking
 * recv fails (ENOTCONN) before a client connects and while its flow
 * waits, and so does every other read and write; none takes the flow,
 * which poll, select and epoll still show, and accept then takes (its
 * recvmsg naming the peer accept named). */
static int dgram_listener(const char *sid) {
    struct sockaddr_sv sa = sv_addr(sid);
    int l = socket(AF_SERVAL, SOCK_DGRAM, 0);
    if (l < 0) die("socket");
    if (bind(l, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(l, 5) < 0) die("bind and listen");
    char c;
    EXPECT_ERR(recv(l, &c, 1, MSG_DONTWAIT), ENOTCONN);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = l};
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, l, &ev) < 0) die("epoll");
    pthread_t t;
    pthread_create(&t, NULL, dgram_ping_thread, (void *)sid);
    CHECK(pending(l, ep, 10000), "the client's flow is pending");
    EXPECT_ERR(recv(l, &c, 1, MSG_DONTWAIT), ENOTCONN);
    if (fcntl(l, F_SETFL, fcntl(l, F_GETFL) | O_NONBLOCK) < 0) die("O_NONBLOCK");
    dgram_listener_refuses(l, &sa);
    CHECK(pending(l, ep, 0), "the flow is still pending after the refused calls");
    struct sockaddr_sv peer;
    socklen_t plen = sizeof peer;
    int f = accept(l, (struct sockaddr *)&peer, &plen);
    CHECK(f >= 0 && plen == sizeof peer && peer.sv_family == AF_SERVAL, "accept the flow");
    if (f >= 0) {
        /* The accepted flow's recvmsg names its peer, as accept did. */
        char buf[8] = {0};
        struct sockaddr_sv from;
        memset(&from, 0, sizeof from);
        struct iovec iov = {buf, sizeof buf};
        struct msghdr m = {.msg_name = &from, .msg_namelen = sizeof from, .msg_iov = &iov, .msg_iovlen = 1};
        CHECK(recvmsg(f, &m, 0) == 4 && !memcmp(buf, "ping", 4), "the client's datagram");
        CHECK(m.msg_namelen == sizeof from && !memcmp(&from, &peer, sizeof peer),
              "recvmsg names the flow's peer (namelen %u)", (unsigned)m.msg_namelen);
        CHECK(send(f, "PING", 4, 0) == 4, "the reply");
        close(f);
    }
    void *ok = NULL;
    pthread_join(t, &ok);
    CHECK(ok, "the client got the reply");
    EXPECT_ERR(recv(l, &c, 1, MSG_DONTWAIT), ENOTCONN);
    close(ep);
    close(l);
    return failures ? 1 : 0;
}

static int dgram_client(const char *sid, int count) {
    int fd = socket(AF_SERVAL, SOCK_DGRAM, 0);
    if (fd < 0) die("socket");
    struct sockaddr_sv sa = sv_addr(sid);
    for (int i = 0; i < count; i++) {
        char msg[1360], back[2048];
        size_t len = 1 + (size_t)(i * 97) % sizeof msg;
        for (size_t j = 0; j < len; j++) msg[j] = (char)pattern(j + (size_t)i);
        ssize_t n = -1;
        for (int attempt = 0; attempt < 5 && n < 0; attempt++) {
            if (sendto(fd, msg, len, 0, (struct sockaddr *)&sa, sizeof sa) != (ssize_t)len) die("sendto");
            struct pollfd p = {.fd = fd, .events = POLLIN};
            if (poll(&p, 1, 2000) == 1) n = recv(fd, back, sizeof back, 0);
        }
        CHECK(n == (ssize_t)len && memcmp(msg, back, len) == 0, "datagram %d: %zd of %zu bytes", i, n, len);
    }
    close(fd);
    return failures ? 1 : 0;
}

/* Echoes COUNT datagrams through recvmsg (into two iovecs, the sender's
 * address in msg_name) and sendmsg (three iovecs, to that address). */
static int dgram_msg_server(const char *sid, int count) {
    int fd = bound_dgram(sid, 0);
    for (int i = 0; i < count; i++) {
        char buf[2048];
        struct sv_from from;
        char control[64];
        struct iovec in[2] = {{buf, 7}, {buf + 7, sizeof buf - 7}};
        struct msghdr m = {.msg_name = &from,
                           .msg_namelen = i % 2 ? sizeof from : sizeof from.sv,
                           .msg_iov = in,
                           .msg_iovlen = 2,
                           .msg_control = control,
                           .msg_controllen = sizeof control,
                           .msg_flags = -1};
        ssize_t n = recvmsg(fd, &m, 0);
        if (n < 0) die("recvmsg");
        CHECK(m.msg_flags == 0 && m.msg_controllen == 0, "recvmsg flags %#x, controllen %zu",
              m.msg_flags, (size_t)m.msg_controllen);
        CHECK(from.sv.sv_family == AF_SERVAL && from.sv.sv_flags == 0, "recvmsg address");
        if (i % 2)
            CHECK(m.msg_namelen == sizeof from && from.in.sin_family == AF_INET,
                  "sockaddr_in after sockaddr_sv");
        else
            CHECK(m.msg_namelen == sizeof from.sv, "sockaddr_sv alone");
        size_t third = (size_t)n / 3;
        struct iovec out[3] = {{buf, third}, {buf + third, third}, {buf + 2 * third, (size_t)n - 2 * third}};
        struct msghdr r = {.msg_name = &from, .msg_namelen = m.msg_namelen, .msg_iov = out, .msg_iovlen = 3};
        if (sendmsg(fd, &r, 0) != n) die("sendmsg");
    }
    close(fd);
    return failures ? 1 : 0;
}

/* Sends `len` bytes of pattern(i + j) with sendmsg from three iovecs to
 * `sa`, and receives the reply with recvmsg into iovecs of `room` bytes
 * (7, then the rest) with `flags`; returns what recvmsg returned, the
 * reply in `back`, its sender in `from` and the message's flags. */
static ssize_t msg_exchange(int fd, const struct sockaddr_sv *sa, size_t len, int i, size_t room,
                            int flags, char *back, struct sv_from *from, int *msg_flags) {
    char msg[1400];
    for (size_t j = 0; j < len; j++) msg[j] = (char)pattern(j + (size_t)i);
    struct iovec out[3] = {{msg, len / 2}, {NULL, 0}, {msg + len / 2, len - len / 2}};
    struct msghdr m = {.msg_name = (void *)sa, .msg_namelen = sizeof *sa, .msg_iov = out, .msg_iovlen = 3};
    if (sendmsg(fd, &m, 0) != (ssize_t)len) die("sendmsg");
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 10000) != 1) return -2;
    char control[64];
    struct iovec in[2] = {{back, room < 7 ? room : 7}, {back + 7, room < 7 ? 0 : room - 7}};
    struct msghdr r = {.msg_name = from,
                       .msg_namelen = sizeof *from,
                       .msg_iov = in,
                       .msg_iovlen = 2,
                       .msg_control = control,
                       .msg_controllen = sizeof control,
                       .msg_flags = -1};
    ssize_t n = recvmsg(fd, &r, flags);
    CHECK(r.msg_controllen == 0, "no ancillary data (%zu)", (size_t)r.msg_controllen);
    CHECK(r.msg_namelen == sizeof *from && from->sv.sv_family == AF_SERVAL &&
              !memcmp(&from->sv.sv_srvid, &sa->sv_srvid, SERVICE_ID_LEN) &&
              from->in.sin_family == AF_INET,
          "the reply's sender (namelen %u)", (unsigned)r.msg_namelen);
    CHECK(n < 0 || !memcmp(back, msg, (size_t)n < room ? (size_t)n : room), "reply %d's bytes", i);
    *msg_flags = r.msg_flags;
    return n;
}

/* Unconnected datagrams through sendmsg and recvmsg only (against
 * dgram-msg-server, COUNT 8): gathered out, scattered in, the sender's
 * address; a reply longer than the iovecs is cut to them with MSG_TRUNC
 * in msg_flags (and reported whole with the MSG_TRUNC flag); readv reads
 * a datagram's payload. */
static int dgram_msg_client(const char *sid) {
    int fd = socket(AF_SERVAL, SOCK_DGRAM, 0);
    if (fd < 0) die("socket");
    struct sockaddr_sv sa = sv_addr(sid);
    char back[2048];
    struct sv_from from;
    int flags;
    /* As UDP: nowhere to send without an address. */
    struct iovec one = {"x", 1};
    struct msghdr none = {.msg_iov = &one, .msg_iovlen = 1};
    EXPECT_ERR(sendmsg(fd, &none, 0), EDESTADDRREQ);
    for (int i = 0; i < 5; i++) {
        size_t len = 1 + (size_t)(i * 277) % 1360;
        ssize_t n = msg_exchange(fd, &sa, len, i, sizeof back, 0, back, &from, &flags);
        CHECK(n == (ssize_t)len && flags == 0, "datagram %d: %zd of %zu bytes, flags %#x", i, n, len, flags);
    }
    ssize_t n = msg_exchange(fd, &sa, 100, 5, 40, 0, back, &from, &flags);
    CHECK(n == 40 && flags == MSG_TRUNC, "truncated: %zd bytes, flags %#x", n, flags);
    n = msg_exchange(fd, &sa, 100, 6, 40, MSG_TRUNC, back, &from, &flags);
    CHECK(n == 100 && flags == MSG_TRUNC, "MSG_TRUNC: %zd bytes, flags %#x", n, flags);
    /* Still nowhere to send without an address, now the socket is open. */
    EXPECT_ERR(sendmsg(fd, &none, 0), EDESTADDRREQ);
    /* readv: the payload alone. */
    struct iovec out = {"readv!", 6};
    struct msghdr m = {.msg_name = &sa, .msg_namelen = sizeof sa, .msg_iov = &out, .msg_iovlen = 1};
    CHECK(sendmsg(fd, &m, 0) == 6, "sendmsg for readv");
    struct pollfd p = {.fd = fd, .events = POLLIN};
    CHECK(poll(&p, 1, 10000) == 1, "the reply to readv");
    memset(back, 0, sizeof back);
    struct iovec in[2] = {{back, 2}, {back + 2, 10}};
    n = readv(fd, in, 2);
    CHECK(n == 6 && !memcmp(back, "readv!", 6), "readv: %zd bytes", n);
    /* As the kernel's sockets: a read of nothing reads nothing (it neither
     * waits nor takes the queued datagram); a review found both blocking
     * and both taking it. */
    CHECK(readv(fd, NULL, 0) == 0 && read(fd, back, 0) == 0, "reads of nothing, queue empty");
    CHECK(sendmsg(fd, &m, 0) == 6 && poll(&p, 1, 10000) == 1, "another reply");
    struct iovec nothing = {back, 0};
    CHECK(readv(fd, &nothing, 1) == 0 && read(fd, back, 0) == 0, "reads of nothing, one queued");
    CHECK(poll(&p, 1, 0) == 1, "the datagram is still queued");
    /* The iovecs are read once, before the datagram is scattered: here the
     * first buffer overlays the second iovec, as the kernel reads them. */
    struct iovec list[2];
    char first[sizeof list[1]] = {0}, second[8] = {0}, elsewhere[8] = {0};
    list[0] = (struct iovec){(char *)&list[1], sizeof list[1]};
    list[1] = (struct iovec){second, sizeof second};
    struct iovec *overlay = (struct iovec *)first;
    overlay->iov_base = elsewhere;
    overlay->iov_len = sizeof elsewhere;
    size_t head = sizeof list[1];
    char payload[sizeof list[1] + 4];
    memcpy(payload, first, head);
    memcpy(payload + head, "tail", 4);
    (void)recv(fd, back, sizeof back, 0);
    struct iovec sent = {payload, sizeof payload};
    struct msghdr sm = {.msg_name = &sa, .msg_namelen = sizeof sa, .msg_iov = &sent, .msg_iovlen = 1};
    CHECK(sendmsg(fd, &sm, 0) == (ssize_t)sizeof payload && poll(&p, 1, 10000) == 1, "the overlay's echo");
    n = readv(fd, list, 2);
    CHECK(n == (ssize_t)sizeof payload && !memcmp(second, "tail", 4) && elsewhere[0] == 0,
          "scattered by the iovecs as they were: %zd bytes, second \"%.4s\"", n, second);
    close(fd);
    return failures ? 1 : 0;
}

#define BATCH 4

/* A batch of BATCH messages, one iovec of `room` bytes each from `bufs`,
 * and room for each sender's address in `from` (NULL: none). */
static void batch_init(struct mmsghdr *v, struct iovec *iov, char (*bufs)[2048], size_t room,
                       struct sv_from *from) {
    memset(v, 0, BATCH * sizeof *v);
    for (int i = 0; i < BATCH; i++) {
        iov[i] = (struct iovec){bufs[i], room};
        v[i].msg_hdr.msg_iov = &iov[i];
        v[i].msg_hdr.msg_iovlen = 1;
        if (from) {
            v[i].msg_hdr.msg_name = &from[i];
            v[i].msg_hdr.msg_namelen = sizeof from[i];
        }
    }
}

/* Echoes COUNT datagrams in batches: recvmmsg takes one or more
 * (MSG_WAITFORONE: at least one, then what is queued), sendmmsg sends
 * each back to its sender. */
static int dgram_mmsg_server(const char *sid, int count) {
    int fd = bound_dgram(sid, 0);
    for (int echoed = 0; echoed < count;) {
        char bufs[BATCH][2048];
        struct sv_from from[BATCH];
        struct iovec iov[BATCH];
        struct mmsghdr v[BATCH];
        batch_init(v, iov, bufs, sizeof bufs[0], from);
        int n = recvmmsg(fd, v, BATCH, MSG_WAITFORONE, NULL);
        if (n <= 0) die("recvmmsg");
        for (int i = 0; i < n; i++) {
            CHECK(v[i].msg_hdr.msg_namelen == sizeof from[i] && from[i].sv.sv_family == AF_SERVAL &&
                      from[i].in.sin_family == AF_INET,
                  "sender of message %d (namelen %u)", i, (unsigned)v[i].msg_hdr.msg_namelen);
            iov[i].iov_len = v[i].msg_len;
        }
        int sent = sendmmsg(fd, v, (unsigned)n, 0);
        CHECK(sent == n, "sendmmsg sent %d of %d", sent, n);
        for (int i = 0; i < sent; i++)
            CHECK(v[i].msg_len == iov[i].iov_len, "echo %d: %u of %zu bytes", i, v[i].msg_len, iov[i].iov_len);
        echoed += n;
    }
    close(fd);
    return failures ? 1 : 0;
}

/* Receives the echoes of the datagrams whose lengths `sizes` gives (each
 * filled with its index, see mmsg_send), in batches, checking each
 * one's length, bytes and sender; returns how many came. */
static int mmsg_collect(int fd, const struct sockaddr_sv *sa, const size_t *sizes, int count) {
    int seen = 0;
    while (seen < count) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 10000) != 1) break;
        char bufs[BATCH][2048];
        struct sv_from from[BATCH];
        struct iovec iov[BATCH];
        struct mmsghdr v[BATCH];
        batch_init(v, iov, bufs, sizeof bufs[0], from);
        int n = recvmmsg(fd, v, BATCH, MSG_WAITFORONE, NULL);
        CHECK(n >= 1, "recvmmsg: %d", n);
        if (n < 1) break;
        for (int i = 0; i < n; i++) {
            int tag = bufs[i][0];
            CHECK(tag >= 0 && tag < count && v[i].msg_len == sizes[tag] &&
                      bufs[i][v[i].msg_len - 1] == tag,
                  "echo %d: tag %d, %u bytes", i, tag, v[i].msg_len);
            CHECK(v[i].msg_hdr.msg_namelen == sizeof from[i] &&
                      !memcmp(&from[i].sv.sv_srvid, &sa->sv_srvid, SERVICE_ID_LEN),
                  "echo %d's sender (namelen %u)", i, (unsigned)v[i].msg_hdr.msg_namelen);
        }
        seen += n;
    }
    return seen;
}

/* Sends, with one sendmmsg, `count` datagrams of the lengths `sizes`
 * gives, each filled with its index, to `sa` (the one at `unnamed` without
 * an address, if it is below `count`); returns what sendmmsg did, each
 * message's msg_len checked. */
static int mmsg_send(int fd, const struct sockaddr_sv *sa, const size_t *sizes, int count, int unnamed) {
    static char bufs[BATCH][2048];
    struct iovec iov[BATCH];
    struct mmsghdr v[BATCH];
    batch_init(v, iov, bufs, 0, NULL);
    for (int i = 0; i < count; i++) {
        memset(bufs[i], i, sizes[i]);
        iov[i].iov_len = sizes[i];
        if (i != unnamed) {
            v[i].msg_hdr.msg_name = (void *)sa;
            v[i].msg_hdr.msg_namelen = sizeof *sa;
        }
    }
    int sent = sendmmsg(fd, v, (unsigned)count, 0);
    for (int i = 0; i < sent; i++)
        CHECK(v[i].msg_len == sizes[i], "sendmmsg: message %d's msg_len %u", i, v[i].msg_len);
    return sent;
}

/* Unconnected datagrams in batches, against dgram-mmsg-server (COUNT 6):
 * sendmmsg sends each message to its msg_name; recvmmsg receives each
 * echo with its sender; a message that fails ends the batch (the error is
 * the batch's only if it was the first); MSG_DONTWAIT; the timeout, as
 * Linux's, is looked at after each message and gets the time left. */
static int dgram_mmsg_client(const char *sid) {
    int fd = socket(AF_SERVAL, SOCK_DGRAM, 0);
    if (fd < 0) die("socket");
    struct sockaddr_sv sa = sv_addr(sid);
    const size_t sizes[BATCH] = {100, 1, 1360, 7};
    CHECK(mmsg_send(fd, &sa, sizes, 3, -1) == 3, "three datagrams in one sendmmsg");
    CHECK(mmsg_collect(fd, &sa, sizes, 3) == 3, "their three echoes");
    /* The second message has no address: the batch ends after the first. */
    CHECK(mmsg_send(fd, &sa, sizes, 3, 1) == 1, "a batch cut by its second message");
    CHECK(mmsg_collect(fd, &sa, sizes, 1) == 1, "the echo of its first");
    errno = 0;
    CHECK(mmsg_send(fd, &sa, sizes, 2, 0) == -1 && errno == EDESTADDRREQ,
          "a batch whose first message fails fails (errno %d)", errno);
    char bufs[BATCH][2048];
    struct iovec iov[BATCH];
    struct mmsghdr v[BATCH];
    batch_init(v, iov, bufs, sizeof bufs[0], NULL);
    EXPECT_ERR(recvmmsg(fd, v, BATCH, MSG_DONTWAIT, NULL), EAGAIN);
    CHECK(recvmmsg(fd, v, 0, 0, NULL) == 0, "a batch of none");
    struct timespec bad = {0, 1000000000};
    EXPECT_ERR(recvmmsg(fd, v, BATCH, 0, &bad), EINVAL);
    /* Two echoes queued, a timeout of a nanosecond: one message (the
     * timeout is over after it), and no time left. */
    CHECK(mmsg_send(fd, &sa, sizes, 2, -1) == 2, "two more datagrams");
    struct pollfd p = {.fd = fd, .events = POLLIN};
    CHECK(poll(&p, 1, 10000) == 1, "an echo");
    usleep(300000);
    struct timespec brief = {0, 1};
    batch_init(v, iov, bufs, sizeof bufs[0], NULL);
    CHECK(recvmmsg(fd, v, BATCH, 0, &brief) == 1 && brief.tv_sec == 0 && brief.tv_nsec == 0,
          "one message within the timeout, none left (%ld.%09ld)", (long)brief.tv_sec, brief.tv_nsec);
    int first = bufs[0][0];
    batch_init(v, iov, bufs, sizeof bufs[0], NULL);
    CHECK(recvmmsg(fd, v, BATCH, MSG_DONTWAIT, NULL) == 1 && (first == 0 || first == 1) &&
              first + bufs[0][0] == 1 && v[0].msg_len == sizes[(int)bufs[0][0]],
          "the other echo (tag %d, %u bytes)", bufs[0][0], v[0].msg_len);
    close(fd);
    return failures ? 1 : 0;
}

static void unconnected(void);

/* Replaces this program with itself running `cmd` (the shim comes again
 * through the environment, as for any exec'd program). */
static void exec_self(const char *cmd, const char *sid, const char *n, int fd, int fd2) {
    char fdarg[16], fd2arg[16];
    snprintf(fdarg, sizeof fdarg, "%d", fd);
    snprintf(fd2arg, sizeof fd2arg, "%d", fd2);
    execl("/proc/self/exe", "serval_test", cmd, sid, n, fdarg, fd2arg, (char *)NULL);
    die("exec");
}

/* A listener made by the previous program image: named, listening, its
 * data calls refused, COUNT connections accepted and echoed. */
static int exec_accept(const char *sid, int count, int fd) {
    struct sockaddr_sv sa = sv_addr(sid), me;
    socklen_t melen = sizeof me;
    CHECK(getsockname(fd, (struct sockaddr *)&me, &melen) == 0 && melen == sizeof me &&
              me.sv_family == AF_SERVAL && memcmp(&me.sv_srvid, &sa.sv_srvid, SERVICE_ID_LEN) == 0,
          "getsockname of the inherited listener");
    int on = 0;
    socklen_t len = sizeof on;
    CHECK(getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &on, &len) == 0 && on == 1,
          "SO_ACCEPTCONN of the inherited listener");
    char b;
    EXPECT_ERR(recv(fd, &b, 1, MSG_DONTWAIT), ENOTCONN);
    printf("ready\n");
    fflush(stdout);
    for (int i = 0; i < count; i++) {
        struct sockaddr_sv peer;
        socklen_t plen = sizeof peer;
        int c = accept(fd, (struct sockaddr *)&peer, &plen);
        if (c < 0) die("accept on the inherited listener");
        CHECK(plen == sizeof peer && peer.sv_family == AF_SERVAL, "accept address");
        echo_stream(c);
    }
    CHECK(close(fd) == 0, "close the inherited listener");
    return failures ? 1 : 0;
}

static int exec_rebind(const char *sid, int fd);

/* The middle image of three: the listener at FD, from the image before,
 * is one to the shim here too; it crosses the next exec as well (at FD,
 * or moved to 41 with dup2 when DUP is 1). */
static int exec_again(const char *sid, const char *count, int fd, int dup) {
    int on = 0;
    socklen_t len = sizeof on;
    CHECK(getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &on, &len) == 0 && on == 1,
          "SO_ACCEPTCONN of the listener in the middle image");
    if (failures) return 1;
    if (dup) {
        if (dup2(fd, 41) != 41) die("dup2");
        CHECK(close(fd) == 0, "close the original");
        fd = 41;
    }
    exec_self("exec-accept", sid, count, fd, -1);
    return 1;
}

/* A listener copied while the record carried its most (255 unbound
 * datagram sockets and the listener): the copy is not carried, and once
 * the original is closed nothing the record carries holds the listener's
 * control connection, which must not cross exec then (the service would
 * stay bound in an image that does not know it). In-process, the
 * listener and its copy are the engine's, in no record, until the exec
 * hands the listener to sald: the record then has room for it, and the
 * copy crosses as a listener, as Linux's would (exec-carried-check). */
static int exec_full_dup(const char *sid) {
    int fd = socket(AF_SERVAL, SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    struct sockaddr_sv sa = sv_addr(sid), dsa = sv_addr("d2e");
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) die("bind");
    if (listen(fd, 16) < 0) die("listen");
    int sink = socket(AF_SERVAL, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (sink < 0) die("socket");
    if (bind(sink, (struct sockaddr *)&dsa, sizeof dsa) < 0) die("bind datagram");
    for (int i = 0; i < 254; i++) {
        int u = socket(AF_SERVAL, SOCK_DGRAM, 0);
        if (u < 0) die("socket");
        if (sendto(u, "ping", 4, 0, (struct sockaddr *)&dsa, sizeof dsa) != 4) die("sendto");
    }
    int d = dup(fd);
    if (d < 0) die("dup");
    CHECK(close(fd) == 0, "close the original listener");
    char darg[16];
    snprintf(darg, sizeof darg, "%d", d);
    exec_self(in_process() ? "exec-carried-check" : "exec-full-dup-check", sid, darg, -1, -1);
    return 1;
}

/* In-process, after exec_full_dup or exec_listen_race: the listener at D
 * crossed exec (the record had room at the hand-over); closed, it lets
 * its service go, which binds again. */
static int exec_carried_check(const char *sid, int d) {
    int on = -1;
    socklen_t len = sizeof on;
    CHECK(getsockopt(d, SOL_SOCKET, SO_ACCEPTCONN, &on, &len) == 0 && on == 1,
          "the listener crossed exec (SO_ACCEPTCONN %d)", on);
    CHECK(close(d) == 0, "close the listener");
    return exec_rebind(sid, -1);
}

static int exec_full_dup_check(const char *sid, int d) {
    int on = -1;
    socklen_t len = sizeof on;
    CHECK(getsockopt(d, SOL_SOCKET, SO_ACCEPTCONN, &on, &len) == 0 && on == 0,
          "the copy made past the record's most is a plain socket (SO_ACCEPTCONN %d)", on);
    return exec_rebind(sid, -1);
}

/* Binds an exec'd program's service again: the close-on-exec listener of
 * the image before was unbound when its control connection closed. */
static int exec_rebind(const char *sid, int fd) {
    CHECK(fcntl(fd, F_GETFD) == -1 && errno == EBADF, "close-on-exec listener closed");
    int s = socket(AF_SERVAL, SOCK_STREAM, 0);
    if (s < 0) die("socket");
    struct sockaddr_sv sa = sv_addr(sid);
    int rc = -1;
    for (int i = 0; i < 250 && rc < 0; i++) {
        rc = bind(s, (struct sockaddr *)&sa, sizeof sa);
        if (rc < 0 && errno != EADDRINUSE) die("bind");
        if (rc < 0) usleep(20000);
    }
    CHECK(rc == 0, "bind again after exec");
    close(s);
    return failures ? 1 : 0;
}

/* bind, listen, exec: plain (the listener crosses exec), fork (inetd: a
 * close-on-exec listener; a forked child clears close-on-exec with fcntl
 * and execs, the parent keeps its copy until the child is done),
 * fork-ioctl (the same with ioctl(FIONCLEX), as Python's
 * os.set_inheritable), fork-dup2 (the child copies it with dup2 to 40
 * instead, which crosses exec while the original does not), cloexec (the
 * listener is closed at exec, and the service unbound). */
static int exec_listener(const char *sid, const char *count, const char *mode) {
    int cloexec = strcmp(mode, "plain") && strncmp(mode, "twice", 5) ? SOCK_CLOEXEC : 0;
    int fd = socket(AF_SERVAL, SOCK_STREAM | cloexec, 0);
    if (fd < 0) die("socket");
    struct sockaddr_sv sa = sv_addr(sid);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) die("bind");
    if (listen(fd, 16) < 0) die("listen");
    if (!strcmp(mode, "plain")) exec_self("exec-accept", sid, count, fd, -1);
    if (!strcmp(mode, "twice")) exec_self("exec-again", sid, count, fd, 0);
    if (!strcmp(mode, "twice-dup2")) exec_self("exec-again", sid, count, fd, 1);
    if (!strcmp(mode, "cloexec")) exec_self("exec-rebind", sid, count, fd, -1);
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
        if (!strcmp(mode, "fork-dup2")) {
            if (dup2(fd, 40) != 40) die("dup2");
            exec_self("exec-accept", sid, count, 40, -1);
        }
        if (!strcmp(mode, "fork-ioctl")) {
            if (ioctl(fd, FIONCLEX) < 0) die("FIONCLEX");
        } else if (fcntl(fd, F_SETFD, 0) < 0) {
            die("F_SETFD");
        }
        exec_self("exec-accept", sid, count, fd, -1);
    }
    int status;
    if (waitpid(pid, &status, 0) != pid) die("waitpid");
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "exec'd child status");
    CHECK(close(fd) == 0, "close listener");
    return failures ? 1 : 0;
}

/* A bound and an unbound (sent from) datagram socket made by the previous
 * image: what the unbound one sent before the exec reaches the bound one
 * after it, the reply comes back framed as before; then COUNT datagrams
 * echoed. */
static int exec_dgram_echo(const char *sid, int count, int fd, int u) {
    struct sockaddr_sv sa = sv_addr(sid), me;
    socklen_t melen = sizeof me;
    CHECK(getsockname(fd, (struct sockaddr *)&me, &melen) == 0 && melen == sizeof me &&
              me.sv_family == AF_SERVAL && memcmp(&me.sv_srvid, &sa.sv_srvid, SERVICE_ID_LEN) == 0,
          "getsockname of the inherited datagram socket");
    int type = 0;
    socklen_t tl = sizeof type;
    CHECK(getsockopt(u, SOL_SOCKET, SO_TYPE, &type, &tl) == 0 && type == SOCK_DGRAM,
          "SOCK_DGRAM of the inherited unbound socket");
    char buf[2048];
    struct sv_from from;
    socklen_t len = sizeof from.sv;
    ssize_t n = recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&from, &len);
    CHECK(n == 4 && !memcmp(buf, "ping", 4), "the datagram sent before exec (%zd bytes)", n);
    CHECK(len == sizeof from.sv && from.sv.sv_family == AF_SERVAL, "its sender");
    if (sendto(fd, "pong", 4, 0, (struct sockaddr *)&from, len) != 4) die("sendto");
    struct timeval tv = {.tv_sec = 10};
    CHECK(setsockopt(u, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) == 0, "SO_RCVTIMEO");
    len = sizeof from.sv;
    n = recvfrom(u, buf, sizeof buf, 0, (struct sockaddr *)&from, &len);
    CHECK(n == 4 && !memcmp(buf, "pong", 4), "the reply on the unbound socket (%zd bytes)", n);
    CHECK(len == sizeof from.sv && from.sv.sv_family == AF_SERVAL &&
              memcmp(&from.sv.sv_srvid, &sa.sv_srvid, SERVICE_ID_LEN) == 0,
          "the reply's sender");
    printf("ready\n");
    fflush(stdout);
    for (int i = 0; i < count; i++) {
        len = sizeof from.sv;
        n = recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&from, &len);
        if (n < 0) die("recvfrom");
        if (sendto(fd, buf, (size_t)n, 0, (struct sockaddr *)&from, len) != n) die("sendto");
    }
    /* The send timeout the image before set on U after its first send
     * crossed with it: a connect swaps a flow in, with the options. */
    CHECK(connect(u, (struct sockaddr *)&sa, sizeof sa) == 0, "connect the inherited unbound socket");
    struct timeval got = {0};
    socklen_t gl = sizeof got;
    CHECK(getsockopt(u, SOL_SOCKET, SO_SNDTIMEO, &got, &gl) == 0 && got.tv_sec == 7,
          "SO_SNDTIMEO set before exec: %ld s", (long)got.tv_sec);
    close(u);
    close(fd);
    return failures ? 1 : 0;
}

/* A record carries at most 256 sockets (the shim's `inherit::MAX_CARRIED`):
 * the bound datagram socket FD and the first unbound one FIRST, made
 * before the others, crossed exec; LAST, made when 256 were open, did not
 * (a plain socket: not SOCK_DGRAM to the program). */
static int exec_many_dgram_check(const char *sid, int last, int fd, int first) {
    struct sockaddr_sv sa = sv_addr(sid), me;
    socklen_t melen = sizeof me;
    CHECK(getsockname(fd, (struct sockaddr *)&me, &melen) == 0 && melen == sizeof me &&
              me.sv_family == AF_SERVAL && memcmp(&me.sv_srvid, &sa.sv_srvid, SERVICE_ID_LEN) == 0,
          "getsockname of the inherited bound datagram socket");
    int type = 0;
    socklen_t tl = sizeof type;
    CHECK(getsockopt(first, SOL_SOCKET, SO_TYPE, &type, &tl) == 0 && type == SOCK_DGRAM,
          "the first unbound socket crossed exec (SO_TYPE %d)", type);
    type = 0;
    tl = sizeof type;
    CHECK(getsockopt(last, SOL_SOCKET, SO_TYPE, &type, &tl) == 0 && type != SOCK_DGRAM,
          "the unbound socket past the record's most did not (SO_TYPE %d)", type);
    char buf[64];
    struct sv_from from;
    socklen_t len = sizeof from.sv;
    ssize_t n = recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&from, &len);
    CHECK(n == 4 && !memcmp(buf, "ping", 4), "a datagram sent before exec (%zd bytes)", n);
    return failures ? 1 : 0;
}

static int exec_many_dgram(const char *sid) {
    int fd = socket(AF_SERVAL, SOCK_DGRAM, 0);
    if (fd < 0) die("socket");
    struct sockaddr_sv sa = sv_addr(sid);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) die("bind");
    int first = -1, last = -1;
    for (int i = 0; i < 300; i++) {
        int u = socket(AF_SERVAL, SOCK_DGRAM, 0);
        if (u < 0) die("socket");
        if (sendto(u, "ping", 4, 0, (struct sockaddr *)&sa, sizeof sa) != 4) die("sendto");
        if (first < 0) first = u;
        last = u;
    }
    char lastarg[16];
    snprintf(lastarg, sizeof lastarg, "%d", last);
    exec_self("exec-many-dgram-check", sid, lastarg, fd, first);
    return 1;
}

static int exec_dgram(const char *sid, const char *count) {
    int fd = socket(AF_SERVAL, SOCK_DGRAM, 0);
    if (fd < 0) die("socket");
    struct sockaddr_sv sa = sv_addr(sid);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) die("bind");
    int u = socket(AF_SERVAL, SOCK_DGRAM, 0);
    if (u < 0) die("socket");
    if (sendto(u, "ping", 4, 0, (struct sockaddr *)&sa, sizeof sa) != 4) die("sendto");
    /* Set after the record was written (at the first send): it must
     * reach the new image too, which sets it again on the flow a connect
     * swaps in. */
    struct timeval seven = {.tv_sec = 7};
    if (setsockopt(u, SOL_SOCKET, SO_SNDTIMEO, &seven, sizeof seven) < 0) die("SO_SNDTIMEO");
    exec_self("exec-dgram-echo", sid, count, fd, u);
    return 1;
}

/* A record (see the shim's `inherit` module) naming `fd` a listener whose
 * control connection is `cfd`, with their real device and inode (or `bad`
 * ones). */
static size_t listener_record(unsigned char *out, int fd, int cfd, int bad) {
    struct stat st, cst;
    if (fstat(fd, &st) < 0 || fstat(cfd, &cst) < 0) die("fstat");
    uint64_t v64;
    uint32_t v32;
    size_t at = 0;
#define PUT(v) (memcpy(out + at, &(v), sizeof(v)), at += sizeof(v))
    memcpy(out, "SVSHEX01", 8);
    at = 8;
    v32 = 1, PUT(v32);
    v32 = (uint32_t)fd, PUT(v32);
    v64 = st.st_dev, PUT(v64);
    v64 = st.st_ino + (uint64_t)bad, PUT(v64);
    out[at++] = 1;                              /* stream */
    v32 = AF_SERVAL, PUT(v32);
    out[at++] = 1;                              /* listening */
    v32 = (uint32_t)getpid(), PUT(v32);
    v32 = (uint32_t)cfd, PUT(v32);
    v64 = cst.st_dev, PUT(v64);
    v64 = cst.st_ino, PUT(v64);
    v64 = 1, PUT(v64);                          /* listener id */
    out[at++] = 0;                              /* no address */
    out[at++] = 0;                              /* no options */
#undef PUT
    return at;
}

/* A memfd named as the shim's record, holding `len` bytes, sealed or not. */
static int fake_record(const unsigned char *bytes, size_t len, int sealed) {
    int fd = memfd_create("serval-shim-exec", MFD_ALLOW_SEALING);
    if (fd < 0) die("memfd_create");
    if (write(fd, bytes, len) != (ssize_t)len) die("write");
    if (sealed && fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0)
        die("F_ADD_SEALS");
    return fd;
}

/* Records that do not check out, across exec: exec-garbage-check finds
 * them closed and the sockets they name plain. */
static int exec_garbage(void) {
    int sp[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sp) < 0) die("socketpair");
    unsigned char buf[4096];
    for (size_t i = 0; i < sizeof buf; i++) buf[i] = (unsigned char)(i * 7919 + 13);
    fake_record(buf, sizeof buf, 1);                        /* noise */
    memcpy(buf, "SVSHEX01\xff\xff\xff\xff", 12);
    fake_record(buf, 40, 1);                                /* a count past the end */
    size_t n = listener_record(buf, sp[0], sp[1], 0);
    fake_record(buf, n - 1, 1);                             /* cut short */
    fake_record(buf, n, 0);                                 /* not sealed */
    n = listener_record(buf, sp[0], sp[1], 1);
    int last = fake_record(buf, n, 1);                      /* another socket's inode */
    char a[16], b[16];
    snprintf(a, sizeof a, "%d", sp[0]);
    snprintf(b, sizeof b, "%d", last);
    execl("/proc/self/exe", "serval_test", "exec-garbage-check", a, b, (char *)NULL);
    die("exec");
    return 1;
}

static int exec_garbage_check(int s, int last) {
    int on = -1;
    socklen_t len = sizeof on;
    CHECK(getsockopt(s, SOL_SOCKET, SO_ACCEPTCONN, &on, &len) == 0 && on == 0,
          "a socket a bad record names stays plain");
    for (int fd = 0; fd <= last; fd++) {
        char path[64], link[256];
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        ssize_t n = readlink(path, link, sizeof link - 1);
        if (n < 0) continue;
        link[n] = 0;
        CHECK(strstr(link, "serval-shim-exec") == NULL, "record %d left open: %s", fd, link);
    }
    int t = socket(AF_SERVAL, SOCK_STREAM, 0);
    CHECK(t >= 0, "a socket after bad records");
    close(t);
    return failures ? 1 : 0;
}

/* A listener's control connection that crossed exec without the listener
 * (posix_spawn with the listener closed in its file actions, which runs
 * no fork handler and no interposed close): once the process that
 * listened is gone, nothing holds the listener, and its service must be
 * unbound, as a TCP port is once no process holds its listener. */
static int exec_orphan(const char *sid) {
    int p[2];
    if (pipe(p) < 0 || fcntl(p[1], F_SETFD, FD_CLOEXEC) < 0) die("pipe");
    struct sockaddr_sv sa = sv_addr(sid);
    pid_t owner = fork();
    if (owner < 0) die("fork");
    if (owner == 0) {
        int fd = socket(AF_SERVAL, SOCK_STREAM, 0);
        if (fd < 0) die("socket");
        if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) die("bind");
        if (listen(fd, 16) < 0) die("listen");
        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_addclose(&fa, fd);
        char arg[16];
        snprintf(arg, sizeof arg, "%d", p[0]);
        char *argv[] = {"serval_test", "exec-orphan-hold", arg, NULL};
        extern char **environ;
        pid_t holder;
        if (posix_spawn(&holder, "/proc/self/exe", &fa, NULL, argv, environ) != 0) die("posix_spawn");
        _exit(0); /* without closing the listener */
    }
    close(p[0]);
    int status;
    if (waitpid(owner, &status, 0) != owner) die("waitpid");
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the listening child's status");
    int s = socket(AF_SERVAL, SOCK_STREAM, 0);
    if (s < 0) die("socket");
    int rc = -1;
    for (int i = 0; i < 150 && rc < 0; i++) {
        rc = bind(s, (struct sockaddr *)&sa, sizeof sa);
        if (rc < 0 && errno != EADDRINUSE) die("bind");
        if (rc < 0) usleep(20000);
    }
    CHECK(rc == 0, "bind again once the process that listened is gone (its control "
                   "connection is held by a child that has no listener)");
    close(s);
    close(p[1]);
    return failures ? 1 : 0;
}

static int exec_orphan_hold(int fd) {
    alarm(30);
    char b;
    while (read(fd, &b, 1) > 0) {
    }
    return 0;
}

/* A daemon that closed its standard input and opens it again: the record
 * of what crosses exec, written again meanwhile (close-on-exec cleared
 * once more), must not take descriptor 0, where the program's open (and
 * a dup2 onto 0 that makes sure of it) would put /dev/null over it; the
 * listener then crosses exec as before. */
static int exec_stdio(const char *sid, const char *count) {
    int fd = socket(AF_SERVAL, SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    struct sockaddr_sv sa = sv_addr(sid);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) die("bind");
    if (listen(fd, 16) < 0) die("listen");
    if (close(0) < 0) die("close stdin");
    if (fcntl(fd, F_SETFD, 0) < 0) die("F_SETFD");
    for (int i = 0; i < 3; i++) {
        char path[64], link[256];
        snprintf(path, sizeof path, "/proc/self/fd/%d", i);
        ssize_t n = readlink(path, link, sizeof link - 1);
        if (n < 0) continue;
        link[n] = 0;
        CHECK(strstr(link, "serval-shim-exec") == NULL, "the record at descriptor %d", i);
    }
    int null = open("/dev/null", O_RDONLY);
    CHECK(null == 0, "stdin opened again at 0 (got %d)", null);
    if (null > 0) {
        if (dup2(null, 0) != 0) die("dup2");
        close(null);
    }
    exec_self("exec-accept", sid, count, fd, -1);
    return 1;
}

/* The pid of sald, which answers at $SERVAL_CONTROL (SO_PEERCRED). */
static pid_t sald_pid(void) {
    const char *path = getenv("SERVAL_CONTROL");
    if (!path) die("SERVAL_CONTROL");
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un un = {.sun_family = AF_UNIX};
    snprintf(un.sun_path, sizeof un.sun_path, "%s", path);
    if (s < 0 || connect(s, (struct sockaddr *)&un, sizeof un) < 0) die("connect to sald");
    struct ucred cred;
    socklen_t len = sizeof cred;
    if (getsockopt(s, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) die("SO_PEERCRED");
    close(s);
    return cred.pid;
}

/* The inode of the shim's record among this process's descriptors (0:
 * none). */
static ino_t record_inode(void) {
    for (int fd = 0; fd < 1024; fd++) {
        char path[64], link[256];
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        ssize_t n = readlink(path, link, sizeof link - 1);
        if (n < 0) continue;
        link[n] = 0;
        struct stat st;
        if (strstr(link, "serval-shim-exec") && fstat(fd, &st) == 0) return st.st_ino;
    }
    return 0;
}

static void *listen_thread(void *arg) {
    int fd = *(int *)arg;
    *(int *)arg = listen(fd, 16);
    return NULL;
}

/* listen on a bound datagram socket whose control connection crosses
 * exec, while another thread fills the record's last place between the
 * two steps of that listen (sald stopped meanwhile, so that the listen
 * waits there): the listener is not in the record then, so its control
 * connection must not cross exec (the service would stay bound in an
 * image that does not know it). In-process, the copy that fills the
 * record is the engine's listener's, in no record: the listener at D has
 * its place, and crosses exec as Linux's would (exec-carried-check). */
static int exec_listen_race(const char *sid) {
    struct sockaddr_sv sa = sv_addr(sid), other = sv_addr("e7ecf");
    int d = socket(AF_SERVAL, SOCK_DGRAM, 0);
    if (d < 0) die("socket");
    if (bind(d, (struct sockaddr *)&sa, sizeof sa) < 0) die("bind datagram");
    int l = socket(AF_SERVAL, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (l < 0) die("socket");
    if (bind(l, (struct sockaddr *)&other, sizeof other) < 0) die("bind");
    if (listen(l, 16) < 0) die("listen");
    /* 254 more: the record carries its most, 256. */
    for (int i = 0; i < 254; i++) {
        int u = socket(AF_SERVAL, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (u < 0) die("socket");
        if (sendto(u, "ping", 4, 0, (struct sockaddr *)&sa, sizeof sa) != 4) die("sendto");
    }
    pid_t sald = sald_pid();
    ino_t before = record_inode();
    CHECK(before != 0, "a record");
    if (kill(sald, SIGSTOP) < 0) die("SIGSTOP sald");
    pthread_t t;
    int arg = d;
    if (pthread_create(&t, NULL, listen_thread, &arg) != 0) die("pthread_create");
    /* The listen's first step wrote the record again without the
     * datagram socket (the only socket that crosses: no record then); it
     * then waits for sald. */
    ino_t now = before;
    for (int i = 0; i < 500 && now == before; i++) {
        usleep(10000);
        now = record_inode();
    }
    CHECK(now != before, "the record written again by listen");
    int copy = dup(l); /* the record's last place */
    kill(sald, SIGCONT);
    if (copy < 0) die("dup");
    if (pthread_join(t, NULL) != 0) die("pthread_join");
    CHECK(arg == 0, "listen on the bound datagram socket");
    if (failures) return 1;
    if (in_process()) {
        char darg[16];
        snprintf(darg, sizeof darg, "%d", d);
        exec_self("exec-carried-check", sid, darg, -1, -1);
    }
    exec_self("exec-rebind", sid, "0", -1, -1);
    return 1;
}

/* A listener moved by what the shim does not see: posix_spawn's file
 * actions (glibc's own dup2 and close) put it at TARGET and close the
 * original, whose number the record names; the spawned program finds it
 * at TARGET by its device and inode and accepts COUNT connections. */
static int exec_spawn_moved(const char *sid, const char *count, int target) {
    int hold = open("/dev/null", O_RDONLY); /* the listener is not at 3 */
    int fd = socket(AF_SERVAL, SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    struct sockaddr_sv sa = sv_addr(sid);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) die("bind");
    if (listen(fd, 16) < 0) die("listen");
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fd, target);
    posix_spawn_file_actions_addclose(&fa, fd);
    char arg[16];
    snprintf(arg, sizeof arg, "%d", target);
    char *argv[] = {"serval_test", "exec-accept", (char *)sid, (char *)count, arg, NULL};
    extern char **environ;
    pid_t pid;
    if (posix_spawn(&pid, "/proc/self/exe", &fa, NULL, argv, environ) != 0) die("posix_spawn");
    posix_spawn_file_actions_destroy(&fa);
    /* The spawned program takes the connections (this process's close,
     * the one that listened, unbinds the service: after it is done). */
    int status;
    if (waitpid(pid, &status, 0) != pid) die("waitpid");
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the spawned program's status");
    CHECK(close(fd) == 0, "close the listener");
    if (hold >= 0) close(hold);
    return failures ? 1 : 0;
}

/* The same for a bound and an unbound (sent from) datagram socket, moved
 * to 20 and 21: the spawned program echoes as exec-dgram-echo. */
static int exec_spawn_moved_dgram(const char *sid, const char *count) {
    int fd = socket(AF_SERVAL, SOCK_DGRAM, 0);
    if (fd < 0) die("socket");
    struct sockaddr_sv sa = sv_addr(sid);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) die("bind");
    int u = socket(AF_SERVAL, SOCK_DGRAM, 0);
    if (u < 0) die("socket");
    if (sendto(u, "ping", 4, 0, (struct sockaddr *)&sa, sizeof sa) != 4) die("sendto");
    struct timeval seven = {.tv_sec = 7};
    if (setsockopt(u, SOL_SOCKET, SO_SNDTIMEO, &seven, sizeof seven) < 0) die("SO_SNDTIMEO");
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fd, 20);
    posix_spawn_file_actions_adddup2(&fa, u, 21);
    posix_spawn_file_actions_addclose(&fa, fd);
    posix_spawn_file_actions_addclose(&fa, u);
    char *argv[] = {"serval_test", "exec-dgram-echo", (char *)sid, (char *)count, "20", "21", NULL};
    extern char **environ;
    pid_t pid;
    if (posix_spawn(&pid, "/proc/self/exe", &fa, NULL, argv, environ) != 0) die("posix_spawn");
    posix_spawn_file_actions_destroy(&fa);
    int status;
    if (waitpid(pid, &status, 0) != pid) die("waitpid");
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the spawned program's status");
    close(u);
    close(fd);
    return failures ? 1 : 0;
}

/* A dup2 over a listener's number closes it: the record no longer names
 * it, the new image finds a plain file there, and the service binds
 * again. */
static int exec_dup2_over(const char *sid) {
    int fd = socket(AF_SERVAL, SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    struct sockaddr_sv sa = sv_addr(sid);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) die("bind");
    if (listen(fd, 16) < 0) die("listen");
    int null = open("/dev/null", O_RDONLY);
    if (null < 0 || dup2(null, fd) != fd) die("dup2");
    close(null);
    exec_self("exec-dup2-over-check", sid, "0", fd, -1);
    return 1;
}

static int exec_dup2_over_check(const char *sid, int fd) {
    int on = 0;
    socklen_t len = sizeof on;
    EXPECT_ERR(getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &on, &len), ENOTSOCK);
    return exec_rebind(sid, -1);
}

static int misuse(const char *sid) {
    struct sockaddr_sv sa = sv_addr(sid);
    EXPECT_ERR(socket(AF_SERVAL, SOCK_RAW, 0), ESOCKTNOSUPPORT);
    EXPECT_ERR(socket(AF_SERVAL, SOCK_STREAM, 99), EPROTONOSUPPORT);
    EXPECT_ERR(socket(AF_SERVAL, SOCK_STREAM | 0x40000000, 0), EINVAL);

    int fd = socket(AF_SERVAL, SOCK_STREAM, 0);
    CHECK(fd >= 0, "socket");
    EXPECT_ERR(connect(fd, (struct sockaddr *)&sa, 10), EINVAL);
    struct sockaddr_in in = {.sin_family = AF_INET, .sin_port = htons(80)};
    EXPECT_ERR(connect(fd, (struct sockaddr *)&in, sizeof in), EAFNOSUPPORT);
    EXPECT_ERR(bind(fd, (struct sockaddr *)&sa, 20), EINVAL);
    EXPECT_ERR(bind(fd, (struct sockaddr *)&in, sizeof in), EAFNOSUPPORT);
    EXPECT_ERR(connect(fd, NULL, sizeof sa), EFAULT);
    EXPECT_ERR(accept(fd, NULL, NULL), EINVAL);
    EXPECT_ERR(listen(fd, 5), EDESTADDRREQ);
    struct sockaddr_sv peer;
    socklen_t len = sizeof peer;
    EXPECT_ERR(getpeername(fd, (struct sockaddr *)&peer, &len), ENOTCONN);
    EXPECT_ERR(connect(fd, (struct sockaddr *)&sa, sizeof sa), EHOSTUNREACH);
    CHECK(close(fd) == 0, "close");
    EXPECT_ERR(connect(fd, (struct sockaddr *)&sa, sizeof sa), EBADF);
    EXPECT_ERR(send(fd, "x", 1, 0), EBADF);
    EXPECT_ERR(accept(fd, NULL, NULL), EBADF);
    EXPECT_ERR(close(fd), EBADF);

    /* Two binds of one service: the second is refused. */
    int a = socket(AF_SERVAL, SOCK_STREAM, 0);
    int b = socket(AF_SERVAL, SOCK_STREAM, 0);
    CHECK(bind(a, (struct sockaddr *)&sa, sizeof sa) == 0, "first bind");
    EXPECT_ERR(bind(b, (struct sockaddr *)&sa, sizeof sa), EADDRINUSE);
    EXPECT_ERR(bind(a, (struct sockaddr *)&sa, sizeof sa), EINVAL);
    close(a);
    /* Closing unregistered it: binding again works. */
    int c = -1;
    for (int i = 0; i < 50; i++) {
        c = socket(AF_SERVAL, SOCK_STREAM, 0);
        if (bind(c, (struct sockaddr *)&sa, sizeof sa) == 0) break;
        close(c);
        c = -1;
        usleep(20000);
    }
    CHECK(c >= 0, "bind after the first socket closed");
    if (c >= 0) close(c);
    close(b);

    int d = socket(AF_SERVAL, SOCK_DGRAM, 0);
    EXPECT_ERR(send(d, "x", 1, 0), EDESTADDRREQ);
    EXPECT_ERR(sendto(d, "x", 1, 0, NULL, 0), EDESTADDRREQ);
    static char big[2000];
    EXPECT_ERR(sendto(d, big, sizeof big, 0, (struct sockaddr *)&sa, sizeof sa), EMSGSIZE);
    EXPECT_ERR(listen(d, 5), EDESTADDRREQ);
    EXPECT_ERR(sendto(d, "x", 1, 0, (struct sockaddr *)&sa, 8), EINVAL);
    /* sendmsg checks as sendto does, and its iovecs as the kernel does. */
    struct iovec bigv[2] = {{big, 1000}, {big, 1000}};
    struct msghdr bigm = {.msg_name = &sa, .msg_namelen = sizeof sa, .msg_iov = bigv, .msg_iovlen = 2};
    EXPECT_ERR(sendmsg(d, &bigm, 0), EMSGSIZE);
    bigm.msg_namelen = 8;
    EXPECT_ERR(sendmsg(d, &bigm, 0), EINVAL);
    bigm.msg_namelen = sizeof sa;
    bigm.msg_iovlen = 1025;
    EXPECT_ERR(sendmsg(d, &bigm, 0), EMSGSIZE);
    EXPECT_ERR(sendmsg(d, NULL, 0), EFAULT);
    EXPECT_ERR(writev(d, bigv, 1), EDESTADDRREQ);
    close(d);

    /* getsockopt answered by the shim writes one int, whatever room the
     * caller offers, and refuses a negative length, as Linux does. */
    int s = socket(AF_SERVAL, SOCK_STREAM, 0);
    struct { int v; unsigned char canary[4]; } o = {0, {0x43, 0x43, 0x43, 0x43}};
    socklen_t ol = sizeof o;
    CHECK(getsockopt(s, SOL_SOCKET, SO_DOMAIN, &o, &ol) == 0 && o.v == AF_SERVAL &&
              ol == sizeof(int) && o.canary[0] == 0x43 && o.canary[3] == 0x43,
          "getsockopt writes one int (v=%d len=%u canary=%#x)\n", o.v, ol, o.canary[0]);
    ol = (socklen_t)-1;
    EXPECT_ERR(getsockopt(s, SOL_SOCKET, SO_DOMAIN, &o, &ol), EINVAL);
    /* A failed dup2 onto our socket leaves it ours. */
    EXPECT_ERR(dup2(12345, s), EBADF);
    int dom = 0;
    socklen_t dl = sizeof dom;
    CHECK(getsockopt(s, SOL_SOCKET, SO_DOMAIN, &dom, &dl) == 0 && dom == AF_SERVAL,
          "still a Serval socket after a failed dup2 (domain %d)\n", dom);
    close(s);
    /* A datagram socket closed behind the shim's back (as close_range or
     * fclose do): a pipe that reuses its number reads as a pipe. */
    int g = socket(AF_SERVAL, SOCK_DGRAM, 0);
    syscall(SYS_close, g);
    int pp[2];
    CHECK(pipe(pp) == 0 && pp[0] == g, "the pipe reuses the number\n");
    CHECK(write(pp[1], "hi", 2) == 2, "pipe write\n");
    char two[2] = {0};
    errno = 0;
    CHECK(read(pp[0], two, 2) == 2 && memcmp(two, "hi", 2) == 0,
          "read from the reused number (errno %d)\n", errno);
    close(pp[0]);
    close(pp[1]);
    /* A count past what any buffer can be is clamped as the kernel does,
     * not made into an impossible one. */
    int h = socket(AF_SERVAL, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    char small[64];
    errno = 0;
    CHECK(recv(h, small, (size_t)-1, MSG_DONTWAIT) == -1 && (errno == EAGAIN || errno == EFAULT),
          "recv(SIZE_MAX) fails cleanly (errno %d)\n", errno);
    close(h);

    /* Other families pass straight through to libc. */
    int t = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in lo = {.sin_family = AF_INET, .sin_port = htons(1), .sin_addr.s_addr = htonl(0x7f000001)};
    EXPECT_ERR(connect(t, (struct sockaddr *)&lo, sizeof lo), ECONNREFUSED);
    close(t);
    int u[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, u) == 0 && write(u[0], "hi", 2) == 2, "unix socketpair");
    char hi[2];
    CHECK(read(u[1], hi, 2) == 2 && memcmp(hi, "hi", 2) == 0, "unix read");
    close(u[0]);
    close(u[1]);
    unconnected();
    return failures ? 1 : 0;
}

/* Waits for one event on `fd` registered (before the connect) in `ep`. */
static unsigned wait_event(int ep, int fd) {
    struct epoll_event out;
    int n = epoll_wait(ep, &out, 1, 10000);
    CHECK(n == 1 && out.data.fd == fd, "epoll_wait: %d events", n);
    return n == 1 ? out.events : 0;
}

static int retry(const char *dead, const char *live) {
    struct sockaddr_sv to_dead = sv_addr(dead), to_live = sv_addr(live);
    int fd = socket(AF_SERVAL, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) die("socket");
    EXPECT_ERR(connect(fd, (struct sockaddr *)&to_dead, sizeof to_dead), EINPROGRESS);
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    CHECK(poll(&p, 1, 10000) == 1, "poll wakes on a failed connect");
    /* The pending error once (here from read). Then, in the in-process
     * mode, as Linux's TCP (measured, 6.18): end of file, and a connect
     * reports the failure it had not reported (ECONNABORTED) before the
     * socket may connect anew. The daemon path answers ENOTCONN, and
     * connects at once. */
    char c;
    EXPECT_ERR(read(fd, &c, 1), EHOSTUNREACH);
    if (getenv("SERVAL_SHIM_INPROC")) {
        CHECK(read(fd, &c, 1) == 0, "end of file after a failed connect's error");
        EXPECT_ERR(connect(fd, (struct sockaddr *)&to_live, sizeof to_live), ECONNABORTED);
    } else {
        EXPECT_ERR(read(fd, &c, 1), ENOTCONN);
    }
    /* Connecting again: the socket polls as not ready until the flow is
     * in, not as the failed attempt's hang-up. */
    EXPECT_ERR(connect(fd, (struct sockaddr *)&to_live, sizeof to_live), EINPROGRESS);
    p.revents = 0;
    CHECK(poll(&p, 1, 10000) == 1 && (p.revents & POLLOUT) && !(p.revents & POLLHUP),
          "poll after the second connect: revents %#x", p.revents);
    int err = -1;
    socklen_t len = sizeof err;
    CHECK(getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0, "SO_ERROR %d", err);
    struct sockaddr_sv peer;
    socklen_t plen = sizeof peer;
    CHECK(getpeername(fd, (struct sockaddr *)&peer, &plen) == 0 &&
              memcmp(&peer.sv_srvid, &to_live.sv_srvid, SERVICE_ID_LEN) == 0,
          "getpeername names the live service");
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    CHECK(echo_check(fd, 1000) == 0, "echo after the retry");
    close(fd);
    return failures ? 1 : 0;
}

static struct sockaddr_in inet_addr_port(uint32_t ip, int port) {
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(ip)};
    return sa;
}

/* Inet mode: what a program sets on its TCP socket before connecting it
 * (nginx registers upstream sockets with epoll first) holds for the flow. */
static int inet_client(int port, size_t size) {
    struct sockaddr_in sa = inet_addr_port(0x0a090909, port);
    struct timeval short_wait = {.tv_sec = 0, .tv_usec = 200000};
    char c;
    for (int nonblock = 0; nonblock < 2; nonblock++) {
        int fd = socket(AF_INET, SOCK_STREAM | (nonblock ? SOCK_NONBLOCK : 0), 0);
        if (fd < 0) die("socket");
        CHECK(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &short_wait, sizeof short_wait) == 0,
              "SO_RCVTIMEO");
        int ep = epoll_create1(EPOLL_CLOEXEC);
        struct epoll_event ev = {.events = EPOLLOUT, .data.fd = fd};
        CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) == 0, "epoll_ctl before connect");
        if (nonblock) {
            EXPECT_ERR(connect(fd, (struct sockaddr *)&sa, sizeof sa), EINPROGRESS);
        } else {
            CHECK(connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0, "blocking connect");
        }
        unsigned events = wait_event(ep, fd);
        CHECK((events & EPOLLOUT) && !(events & EPOLLHUP), "connected: events %#x", events);
        int err = -1;
        socklen_t len = sizeof err;
        CHECK(getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0, "SO_ERROR %d", err);
        struct sockaddr_in peer;
        socklen_t plen = sizeof peer;
        CHECK(getpeername(fd, (struct sockaddr *)&peer, &plen) == 0 && peer.sin_family == AF_INET &&
                  peer.sin_port == sa.sin_port,
              "getpeername is the address connected to");
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
        EXPECT_ERR(read(fd, &c, 1), EAGAIN);
        struct timeval no_wait = {0, 0};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &no_wait, sizeof no_wait);
        CHECK(echo_check(fd, size) == 0, "echo (non-blocking connect: %d)", nonblock);
        close(ep);
        close(fd);
    }
    /* An unmapped port stays the kernel's, options and all. */
    int t = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    CHECK(setsockopt(t, IPPROTO_TCP, 1 /* TCP_NODELAY */, &one, sizeof one) == 0, "TCP_NODELAY");
    struct sockaddr_in lo = inet_addr_port(0x7f000001, 1);
    EXPECT_ERR(connect(t, (struct sockaddr *)&lo, sizeof lo), ECONNREFUSED);
    close(t);
    return failures ? 1 : 0;
}

/* Inet mode: a failed connect to a mapped port, then the same socket
 * connects again, through the SAL or the kernel, as TCP allows. */
static int inet_retry(int dead, int live) {
    struct sockaddr_in to_dead = inet_addr_port(0x0a090909, dead);
    struct sockaddr_in to_live = inet_addr_port(0x0a090909, live);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) die("socket");
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLOUT, .data.fd = fd};
    CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) == 0, "epoll_ctl before connect");
    EXPECT_ERR(connect(fd, (struct sockaddr *)&to_dead, sizeof to_dead), EINPROGRESS);
    unsigned events = wait_event(ep, fd);
    CHECK(events & (EPOLLHUP | EPOLLERR), "a failed connect wakes epoll: events %#x", events);
    EXPECT_ERR(connect(fd, (struct sockaddr *)&to_dead, sizeof to_dead), EHOSTUNREACH);
    EXPECT_ERR(connect(fd, (struct sockaddr *)&to_live, sizeof to_live), EINPROGRESS);
    events = wait_event(ep, fd);
    CHECK((events & EPOLLOUT) && !(events & EPOLLHUP), "connected again: events %#x", events);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    CHECK(echo_check(fd, 1000) == 0, "echo after the retry");
    close(fd);

    /* Blocking: after the failure, an unmapped address is the kernel's. */
    fd = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) == 0 || errno == EEXIST, "epoll_ctl");
    EXPECT_ERR(connect(fd, (struct sockaddr *)&to_dead, sizeof to_dead), EHOSTUNREACH);
    struct sockaddr_in lo = inet_addr_port(0x7f000001, 1);
    EXPECT_ERR(connect(fd, (struct sockaddr *)&lo, sizeof lo), ECONNREFUSED);
    int domain = 0;
    socklen_t dl = sizeof domain;
    CHECK(getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &dl) == 0 && domain == AF_INET,
          "a TCP socket again (domain %d)", domain);
    close(fd);
    close(ep);
    return failures ? 1 : 0;
}

static void *hello_thread(void *arg) {
    struct sockaddr_sv sa = sv_addr((const char *)arg);
    int fd = socket(AF_SERVAL, SOCK_STREAM, 0);
    char back[5] = {0};
    long ok = fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
              write(fd, "hello", 5) == 5 && read(fd, back, 5) == 5 && !memcmp(back, "hello", 5);
    close(fd);
    return (void *)ok;
}

static int dup_copies(const char *sid) {
    struct sockaddr_sv sa = sv_addr(sid);
    int l = socket(AF_SERVAL, SOCK_STREAM, 0);
    CHECK(bind(l, (struct sockaddr *)&sa, sizeof sa) == 0 && listen(l, 5) == 0, "bind and listen");
    /* A forked child's copies of the listener, closed, leave it bound. */
    pid_t child = fork();
    if (child == 0) {
        int mine = dup(l);
        close(l);
        close(mine);
        _exit(0);
    }
    waitpid(child, NULL, 0);
    int copy = dup(l);
    CHECK(copy >= 0, "dup");
    /* The copy still holds the service. */
    close(l);
    pthread_t t;
    pthread_create(&t, NULL, hello_thread, (void *)sid);
    struct pollfd waiting = {.fd = copy, .events = POLLIN};
    CHECK(poll(&waiting, 1, 5000) == 1, "a connection arrives (still bound)");
    int c = accept(copy, NULL, NULL);
    CHECK(c >= 0, "accept on the copy of the listener");
    int on = 0;
    socklen_t ol = sizeof on;
    CHECK(getsockopt(copy, SOL_SOCKET, SO_ACCEPTCONN, &on, &ol) == 0 && on == 1, "SO_ACCEPTCONN");
    int c2 = fcntl(c, F_DUPFD_CLOEXEC, 100);
    CHECK(c2 >= 100, "F_DUPFD_CLOEXEC");
    int c3 = dup2(c, 200);
    CHECK(c3 == 200, "dup2");
    for (int i = 0; i < 2; i++) {
        int fd = i ? c3 : c2;
        struct sockaddr_sv peer;
        socklen_t plen = sizeof peer;
        CHECK(getpeername(fd, (struct sockaddr *)&peer, &plen) == 0 && plen == sizeof peer &&
                  memcmp(&peer.sv_srvid, &sa.sv_srvid, SERVICE_ID_LEN) == 0,
              "getpeername on copy %d", i);
    }
    close(c);
    close(c2);
    char buf[5];
    CHECK(read(c3, buf, 5) == 5 && write(c3, buf, 5) == 5, "echo through the last copy");
    void *ok = NULL;
    pthread_join(t, &ok);
    CHECK(ok, "the client's echo");
    close(c3);
    /* Closing the last number unbinds the service. */
    close(copy);
    int unbound = 0;
    for (int i = 0; i < 50 && !unbound; i++) {
        int fd = socket(AF_SERVAL, SOCK_STREAM, 0);
        unbound = connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0 && errno == EHOSTUNREACH;
        close(fd);
        if (!unbound) usleep(20000);
    }
    CHECK(unbound, "the service is unbound after the last copy closed");
    return failures ? 1 : 0;
}

#define REQUEST "the request"
#define REPLY "the reply"

/* What a shut-rd-fin server writes on each flow: more than the client's
 * socket takes, and more than the flow's window. */
#define BIG_REPLY (512 * 1024)

/* Accepts COUNT connections one after the other. "reset": replies, waits
 * until the client's request is in, and closes without reading it (sald
 * then resets the flow, as TCP does). "clean": reads the request,
 * replies, closes. "fin-reset": replies and closes (a FIN); the request
 * comes after, to a flow nobody reads, and sald resets it. "shut-rd-fin":
 * as fin-reset with a BIG_REPLY, then accepts a second connection from
 * the same client and closes it, which tells the client the first is
 * closed (its FIN on its way). */
static int reset_server(const char *sid, const char *mode, int count) {
    int reset = !strcmp(mode, "reset"), fin_reset = !strcmp(mode, "fin-reset");
    int shut_rd_fin = !strcmp(mode, "shut-rd-fin");
    int fd = socket(AF_SERVAL, SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    struct sockaddr_sv sa = sv_addr(sid);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) die("bind");
    if (listen(fd, 8) < 0) die("listen");
    printf("ready\n");
    fflush(stdout);
    for (int i = 0; i < count; i++) {
        int c = accept(fd, NULL, NULL);
        if (c < 0) die("accept");
        if (reset) {
            CHECK(write_all(c, (const unsigned char *)REPLY, strlen(REPLY)) == 0, "reply");
            struct pollfd p = {.fd = c, .events = POLLIN};
            CHECK(poll(&p, 1, 20000) == 1 && (p.revents & POLLIN), "the request arrives");
            /* The reply leaves before the reset does. */
            usleep(200000);
        } else if (fin_reset) {
            CHECK(write_all(c, (const unsigned char *)REPLY, strlen(REPLY)) == 0, "reply");
        } else if (shut_rd_fin) {
            static unsigned char big[BIG_REPLY];
            CHECK(write_all(c, big, sizeof big) == 0, "the big reply");
            CHECK(close(c) == 0, "close the flow");
            c = accept(fd, NULL, NULL);
            if (c < 0) die("accept the second flow");
        } else {
            char req[sizeof REQUEST - 1];
            size_t got = 0;
            while (got < sizeof req) {
                ssize_t n = read(c, req + got, sizeof req - got);
                if (n < 0 && errno == EINTR) continue;
                if (n <= 0) break;
                got += (size_t)n;
            }
            CHECK(got == sizeof req && !memcmp(req, REQUEST, sizeof req), "request (%zu bytes)", got);
            CHECK(write_all(c, (const unsigned char *)REPLY, strlen(REPLY)) == 0, "reply");
        }
        CHECK(close(c) == 0, "close the flow");
    }
    close(fd);
    return failures ? 1 : 0;
}

/* A read of `fd` with `how`: read, recv, recvfrom, recvmsg, readv or
 * recvmmsg of one message (the last three into two iovecs). */
static ssize_t read_with(const char *how, int fd, char *buf, size_t len) {
    if (!strcmp(how, "recv")) return recv(fd, buf, len, 0);
    if (!strcmp(how, "recvfrom")) return recvfrom(fd, buf, len, 0, NULL, NULL);
    struct iovec iov[2] = {{buf, len / 2}, {buf + len / 2, len - len / 2}};
    if (!strcmp(how, "readv")) return readv(fd, iov, 2);
    if (!strcmp(how, "recvmsg")) {
        struct sockaddr_storage from;
        struct msghdr m = {.msg_name = &from, .msg_namelen = sizeof from, .msg_iov = iov, .msg_iovlen = 2};
        ssize_t n = recvmsg(fd, &m, 0);
        /* A stream names no sender, as TCP's recvmsg does not. */
        CHECK(n < 0 || m.msg_namelen == 0, "recvmsg on a stream left namelen %u", (unsigned)m.msg_namelen);
        return n;
    }
    if (!strcmp(how, "recvmmsg")) {
        struct mmsghdr m = {.msg_hdr = {.msg_iov = iov, .msg_iovlen = 2}};
        int got = recvmmsg(fd, &m, 1, 0, NULL);
        return got == 1 ? (ssize_t)m.msg_len : -1;
    }
    return read(fd, buf, len);
}

/* A blocking stream connected to `sid`. */
static int stream_to(const char *sid) {
    int fd = socket(AF_SERVAL, SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    struct sockaddr_sv sa = sv_addr(sid);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) die("connect");
    return fd;
}

/* A stream socket listening for `sid` (backlog 4). */
static int stream_listener(const char *sid) {
    struct sockaddr_sv sa = sv_addr(sid);
    int l = socket(AF_SERVAL, SOCK_STREAM, 0);
    CHECK(bind(l, (struct sockaddr *)&sa, sizeof sa) == 0 && listen(l, 4) == 0, "listen");
    return l;
}

/* Reads REPLY from `fd` with `how`, checking it came whole. */
static void read_reply(const char *how, int fd) {
    char buf[64];
    size_t got = 0;
    while (got < strlen(REPLY)) {
        ssize_t n = read_with(how, fd, buf + got, sizeof buf - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        got += (size_t)n;
    }
    CHECK(got == strlen(REPLY) && !memcmp(buf, REPLY, got), "the reply (%zu bytes)", got);
}

/* Waits `ms` milliseconds at most for `fd` to hang up; returns whether it
 * did. */
static int hung_up(int fd, int ms) {
    struct pollfd p = {.fd = fd, .events = 0};
    return poll(&p, 1, ms) == 1 && (p.revents & POLLHUP);
}

/* Against a fin-reset server: the server's FIN, read as end of file, then
 * a reset (the request, sent after it, reaches a flow nobody reads). As
 * from TCP, whose reads give 0 once its FIN came, reads go on giving end
 * of file, and a write fails with EPIPE. */
static int fin_reset_client(const char *sid, const char *how) {
    int fd = stream_to(sid);
    read_reply(how, fd);
    char buf[64];
    CHECK(read_with(how, fd, buf, sizeof buf) == 0, "the server's FIN");
    CHECK(!hung_up(fd, 0), "no reset before the request");
    CHECK(write_all(fd, (const unsigned char *)REQUEST, strlen(REQUEST)) == 0, "request");
    CHECK(hung_up(fd, 20000), "the reset's hang-up");
    CHECK(read_with(how, fd, buf, sizeof buf) == 0, "end of file after the FIN and the reset");
    CHECK(read_with(how, fd, buf, sizeof buf) == 0, "end of file again");
    EXPECT_ERR(send(fd, "x", 1, MSG_NOSIGNAL), EPIPE);
    CHECK(close(fd) == 0, "close");
    return failures ? 1 : 0;
}

static volatile sig_atomic_t sigpipes;
static void count_sigpipe(int sig) {
    (void)sig;
    sigpipes++;
}

/* Against a fin-reset server, reading nothing until both the server's FIN
 * and the reset (the request, sent after the FIN, reaches a flow nobody
 * reads) are in. As from TCP, whose reset in CLOSE_WAIT leaves what was
 * received and the FIN to be read: the reply, then end of file for good;
 * a write then fails with EPIPE (and SIGPIPE, unless MSG_NOSIGNAL). */
static int fin_reset_unread_client(const char *sid, const char *how) {
    signal(SIGPIPE, count_sigpipe);
    int fd = stream_to(sid);
    /* The FIN is in (sald shut the socket for writing) when the request
     * leaves: the reset comes after it. */
    struct pollfd p = {.fd = fd, .events = POLLRDHUP};
    CHECK(poll(&p, 1, 20000) == 1 && (p.revents & POLLRDHUP), "the server's FIN");
    CHECK(write_all(fd, (const unsigned char *)REQUEST, strlen(REQUEST)) == 0, "request");
    CHECK(hung_up(fd, 20000), "the reset's hang-up");
    /* A stream names no sender, as TCP's recvfrom does not. */
    char buf[64];
    struct sockaddr_storage from;
    socklen_t fromlen = sizeof from;
    CHECK(recvfrom(fd, buf, 1, MSG_PEEK, (struct sockaddr *)&from, &fromlen) == 1 && fromlen == 0,
          "recvfrom on a stream named a sender (length %u)", (unsigned)fromlen);
    /* A peek over two iovecs fills both from the first unread byte. */
    char head[4], body[60];
    struct iovec two[2] = {{head, sizeof head}, {body, sizeof body}};
    struct msghdr peek = {.msg_iov = two, .msg_iovlen = 2};
    ssize_t peeked = recvmsg(fd, &peek, MSG_PEEK);
    CHECK(peeked == (ssize_t)strlen(REPLY) && !memcmp(head, REPLY, sizeof head) &&
              !memcmp(body, REPLY + sizeof head, strlen(REPLY) - sizeof head),
          "a peek over two iovecs (%zd bytes)", peeked);
    read_reply(how, fd);
    CHECK(read_with(how, fd, buf, sizeof buf) == 0, "end of file after the reply, FIN and reset");
    CHECK(read_with(how, fd, buf, sizeof buf) == 0, "end of file again");
    EXPECT_ERR(send(fd, "x", 1, MSG_NOSIGNAL), EPIPE);
    CHECK(sigpipes == 0, "MSG_NOSIGNAL raised none (%d)", (int)sigpipes);
    EXPECT_ERR(write(fd, "x", 1), EPIPE);
    CHECK(sigpipes == 1, "write raised SIGPIPE (%d)", (int)sigpipes);
    CHECK(read_with(how, fd, buf, sizeof buf) == 0, "end of file after the write");
    CHECK(close(fd) == 0, "close");
    return failures ? 1 : 0;
}

/* Against a reset server: the reply and the reset taken in one recvmmsg
 * batch of two. The batch ends with the reply; the reset that ended it
 * comes from the next read, as Linux keeps a batch's later error for the
 * socket's next call. */
static int reset_batch_client(const char *sid) {
    int fd = stream_to(sid);
    CHECK(write_all(fd, (const unsigned char *)REQUEST, strlen(REQUEST)) == 0, "request");
    CHECK(hung_up(fd, 20000), "hang-up");
    char bufs[2][64];
    struct iovec iov[2] = {{bufs[0], sizeof bufs[0]}, {bufs[1], sizeof bufs[1]}};
    struct mmsghdr m[2] = {{.msg_hdr = {.msg_iov = &iov[0], .msg_iovlen = 1}},
                           {.msg_hdr = {.msg_iov = &iov[1], .msg_iovlen = 1}}};
    CHECK(recvmmsg(fd, m, 2, 0, NULL) == 1 && m[0].msg_len == strlen(REPLY) &&
              !memcmp(bufs[0], REPLY, strlen(REPLY)),
          "the reply alone (%u bytes)", m[0].msg_len);
    EXPECT_ERR(read(fd, bufs[0], sizeof bufs[0]), ECONNRESET);
    CHECK(read(fd, bufs[0], sizeof bufs[0]) == 0, "end of file after the reset");
    CHECK(close(fd) == 0, "close");
    return failures ? 1 : 0;
}

/* Sends the request and reads the reply with `how`, then, as from TCP:
 * "reset" (a reset-server reset): ECONNRESET once, then end of file (in a
 * copy too); "clean": end of file; "clean-shut": the same after
 * shutdown(SHUT_WR) following the request ("clean-dup-shut": shut down
 * through a copy, since closed; "clean-fork-shut": by a forked child,
 * which Linux measured gives the same: the reply, then 0). "fin-reset", and "reset" with HOW
 * "batch": see fin_reset_client and reset_batch_client. */
/* Against a reset server: the client shuts its reading down after the
 * reply, so its reads give end of file at once (as TCP's after
 * shutdown(SHUT_RD)); the reset that comes after is still ECONNRESET
 * once, as from TCP, where no FIN came: that end of file was no peer's
 * end of stream. */
static int shut_rd_reset_client(const char *sid, const char *how) {
    int fd = stream_to(sid);
    CHECK(write_all(fd, (const unsigned char *)REQUEST, strlen(REQUEST)) == 0, "request");
    read_reply(how, fd);
    CHECK(shutdown(fd, SHUT_RD) == 0, "shutdown(SHUT_RD)");
    char buf[64];
    CHECK(read_with(how, fd, buf, sizeof buf) == 0, "end of file after SHUT_RD");
    CHECK(hung_up(fd, 20000), "the reset's hang-up");
    EXPECT_ERR(read_with(how, fd, buf, sizeof buf), ECONNRESET);
    CHECK(read_with(how, fd, buf, sizeof buf) == 0, "end of file after the reset");
    CHECK(close(fd) == 0, "close");
    return failures ? 1 : 0;
}

/* Against a shut-rd-fin server: the client shuts its reading down while
 * sald still has bytes of the reply to write into its socket, reads what
 * the socket held, then, once the server closed the flow (its FIN after
 * the rest of the reply), sends the request, which reaches a flow nobody
 * reads: a reset after the FIN. As from TCP, which measured over
 * loopback gives what it received and then 0 (SHUT_RD, FIN, RST: the
 * FIN came first): end of file, for good, not ECONNRESET. (TCP's reads
 * also give the bytes that come after SHUT_RD; the socket here takes no
 * more, and sald throws them away to reach the FIN.) sald used to end
 * its writing at the failed write, so the FIN was never delivered, the
 * flow's window stayed shut, and the reset read as ECONNRESET. */
static int shut_rd_fin_client(const char *sid, const char *how) {
    int fd = stream_to(sid);
    struct pollfd p = {.fd = fd, .events = POLLIN};
    CHECK(poll(&p, 1, 20000) == 1, "the reply starts");
    /* The socket fills; the rest waits in sald. */
    usleep(300000);
    CHECK(shutdown(fd, SHUT_RD) == 0, "shutdown(SHUT_RD)");
    static char buf[64 * 1024];
    size_t got = 0;
    ssize_t n;
    while ((n = read_with(how, fd, buf, sizeof buf)) > 0) got += (size_t)n;
    /* The in-process engine, as TCP, takes what comes after SHUT_RD: all
     * of it then. */
    const char *inproc = getenv("SERVAL_SHIM_INPROC");
    size_t most = inproc && !strcmp(inproc, "1") ? BIG_REPLY : BIG_REPLY - 1;
    CHECK(n == 0 && got > 0 && got <= most, "what the socket held (%zu bytes), then end of file (%zd)", got, n);
    /* The server closed the first flow before it took this one. */
    int side = stream_to(sid);
    CHECK(read(side, buf, 1) == 0, "the second flow's end");
    close(side);
    CHECK(write_all(fd, (const unsigned char *)REQUEST, strlen(REQUEST)) == 0, "request");
    CHECK(hung_up(fd, 20000), "the reset's hang-up");
    CHECK(read_with(how, fd, buf, sizeof buf) == 0, "end of file after SHUT_RD, the FIN and the reset (errno %d)", errno);
    CHECK(read_with(how, fd, buf, sizeof buf) == 0, "end of file again");
    CHECK(close(fd) == 0, "close");
    return failures ? 1 : 0;
}

/* Against a reset server: the client shuts its writing down after the
 * request (the server's close then finds the request unread and resets
 * the flow). As from TCP (measured over loopback, Linux 6.18: SHUT_WR,
 * the peer's RST, and reads give what came, then ECONNRESET, then 0): the
 * reply, ECONNRESET once, then end of file. Here the reset's hang-up
 * looks as a finished flow's once this end shut its writing down, and
 * read as end of file: sald's mark tells them apart. */
static int shut_wr_reset_client(const char *sid, const char *how) {
    int fd = stream_to(sid);
    CHECK(write_all(fd, (const unsigned char *)REQUEST, strlen(REQUEST)) == 0, "request");
    CHECK(shutdown(fd, SHUT_WR) == 0, "shutdown(SHUT_WR)");
    read_reply(how, fd);
    CHECK(hung_up(fd, 20000), "the reset's hang-up");
    char buf[64];
    EXPECT_ERR(read_with(how, fd, buf, sizeof buf), ECONNRESET);
    CHECK(read_with(how, fd, buf, sizeof buf) == 0, "end of file after the reset");
    CHECK(close(fd) == 0, "close");
    return failures ? 1 : 0;
}

/* SO_ERROR of `fd`. */
static int so_error(int fd) {
    int e = -1;
    socklen_t len = sizeof e;
    CHECK(getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &len) == 0, "SO_ERROR");
    return e;
}

/* SO_ERROR after a reset, as TCP's (measured over loopback, Linux 6.18):
 * against a reset server, ECONNRESET once, taken as a read takes it (the
 * reads then give the reply and end of file); against a fin-reset server
 * (the server's FIN, then a reset), EPIPE once, the reads the reply and
 * end of file, a write EPIPE. SO_ERROR used to be 0 in both. */
static int so_error_client(const char *sid, int after_fin) {
    int fd = stream_to(sid);
    CHECK(so_error(fd) == 0, "SO_ERROR of an open flow");
    if (after_fin) {
        struct pollfd p = {.fd = fd, .events = POLLRDHUP};
        CHECK(poll(&p, 1, 20000) == 1 && (p.revents & POLLRDHUP), "the server's FIN");
    }
    CHECK(write_all(fd, (const unsigned char *)REQUEST, strlen(REQUEST)) == 0, "request");
    CHECK(hung_up(fd, 20000), "the reset's hang-up");
    int first = so_error(fd);
    CHECK(first == (after_fin ? EPIPE : ECONNRESET), "SO_ERROR after the reset: %d", first);
    CHECK(so_error(fd) == 0, "SO_ERROR once");
    read_reply("read", fd);
    char buf[64];
    CHECK(read(fd, buf, sizeof buf) == 0, "end of file: SO_ERROR took the reset");
    EXPECT_ERR(send(fd, "x", 1, MSG_NOSIGNAL), EPIPE);
    CHECK(close(fd) == 0, "close");
    return failures ? 1 : 0;
}

static int reset_client(const char *sid, const char *mode, const char *how) {
    if (!strcmp(mode, "shut-wr-reset")) return shut_wr_reset_client(sid, how);
    if (!strcmp(mode, "so-error")) return so_error_client(sid, !strcmp(how, "fin"));
    if (!strcmp(mode, "fin-reset")) return fin_reset_client(sid, how);
    if (!strcmp(mode, "shut-rd-fin")) return shut_rd_fin_client(sid, how);
    if (!strcmp(mode, "fin-reset-unread")) return fin_reset_unread_client(sid, how);
    if (!strcmp(mode, "shut-rd-reset")) return shut_rd_reset_client(sid, how);
    if (!strcmp(how, "batch")) return reset_batch_client(sid);
    int reset = !strcmp(mode, "reset");
    int fd = stream_to(sid);
    CHECK(write_all(fd, (const unsigned char *)REQUEST, strlen(REQUEST)) == 0, "request");
    int shut = 0;
    if (!strcmp(mode, "clean-shut")) {
        CHECK(shutdown(fd, SHUT_WR) == 0, "shutdown");
        shut = 1;
    } else if (!strcmp(mode, "clean-dup-shut")) {
        int d = dup(fd);
        CHECK(d >= 0 && shutdown(d, SHUT_WR) == 0, "shutdown through a copy");
        close(d);
        shut = 1;
    } else if (!strcmp(mode, "clean-fork-shut")) {
        /* Shut down in another process that shares the socket, whose shim
         * this one's does not hear from. */
        pid_t child = fork();
        if (child == 0) _exit(shutdown(fd, SHUT_WR) == 0 ? 0 : 1);
        int status = -1;
        CHECK(child > 0 && waitpid(child, &status, 0) == child && WIFEXITED(status) &&
                  WEXITSTATUS(status) == 0,
              "shutdown in a forked child");
        shut = 1;
    }
    int copy = reset ? dup(fd) : -1;
    char buf[64];
    read_reply(how, fd);
    /* A reset, and a flow finished after this end shut its writing down,
     * both look like a hang-up to poll. */
    if (reset || shut) CHECK(hung_up(fd, 20000), "hang-up");
    if (reset) {
        CHECK(read_with(how, fd, buf, 0) == 0, "a read of nothing reports nothing");
        EXPECT_ERR(read_with(how, fd, buf, sizeof buf), ECONNRESET);
        CHECK(read_with(how, fd, buf, sizeof buf) == 0, "end of file after the reset");
        CHECK(read(copy, buf, sizeof buf) == 0, "end of file from a copy: the reset was reported");
        close(copy);
    } else {
        CHECK(read_with(how, fd, buf, sizeof buf) == 0, "end of file");
        CHECK(read_with(how, fd, buf, sizeof buf) == 0, "end of file again");
    }
    CHECK(close(fd) == 0, "close");
    return failures ? 1 : 0;
}

/* Data calls on a stream that is not connected answer as TCP's do. */
static void unconnected(void) {
    /* Neither is bound by anyone else (misuse's own SID may still be
     * unbinding). */
    struct sockaddr_sv sa = sv_addr("dead0e"), mine = sv_addr("dead0f");
    signal(SIGPIPE, count_sigpipe);
    char c;
    int fd = socket(AF_SERVAL, SOCK_STREAM, 0);
    EXPECT_ERR(read(fd, &c, 1), ENOTCONN);
    EXPECT_ERR(recv(fd, &c, 1, 0), ENOTCONN);
    EXPECT_ERR(recvfrom(fd, &c, 1, 0, NULL, NULL), ENOTCONN);
    EXPECT_ERR(write(fd, "x", 1), EPIPE);
    CHECK(sigpipes == 1, "write raised SIGPIPE (%d)", (int)sigpipes);
    EXPECT_ERR(send(fd, "x", 1, MSG_NOSIGNAL), EPIPE);
    EXPECT_ERR(sendto(fd, "x", 1, MSG_NOSIGNAL, NULL, 0), EPIPE);
    struct iovec iov = {&c, 1};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
    EXPECT_ERR(sendmsg(fd, &m, MSG_NOSIGNAL), EPIPE);
    CHECK(sigpipes == 1, "MSG_NOSIGNAL raised none (%d)", (int)sigpipes);
    EXPECT_ERR(writev(fd, &iov, 1), EPIPE);
    CHECK(sigpipes == 2, "writev raised SIGPIPE (%d)", (int)sigpipes);
    EXPECT_ERR(recvmsg(fd, &m, 0), ENOTCONN);
    EXPECT_ERR(readv(fd, &iov, 1), ENOTCONN);
    /* A failed blocking connect reports its error from connect itself. */
    EXPECT_ERR(connect(fd, (struct sockaddr *)&sa, sizeof sa), EHOSTUNREACH);
    EXPECT_ERR(read(fd, &c, 1), ENOTCONN);
    EXPECT_ERR(send(fd, "x", 1, MSG_NOSIGNAL), EPIPE);
    close(fd);
    /* A listener has no data either; its accept queue keeps its flows. */
    int l = socket(AF_SERVAL, SOCK_STREAM, 0);
    CHECK(bind(l, (struct sockaddr *)&mine, sizeof mine) == 0, "bind");
    EXPECT_ERR(read(l, &c, 1), ENOTCONN);
    CHECK(listen(l, 5) == 0, "listen");
    EXPECT_ERR(read(l, &c, 1), ENOTCONN);
    EXPECT_ERR(send(l, "x", 1, MSG_NOSIGNAL), EPIPE);
    /* The errno Linux gives a TCP listener's misuse. */
    EXPECT_ERR(connect(l, (struct sockaddr *)&sa, sizeof sa), EISCONN);
    EXPECT_ERR(accept4(l, NULL, NULL, 0x1), EINVAL);
    struct sockaddr_sv from;
    EXPECT_ERR(accept(l, (struct sockaddr *)&from, NULL), EFAULT);
    close(l);
    signal(SIGPIPE, SIG_IGN);

    /* Option levels a TCP socket has are accepted; others are not. */
    int s = socket(AF_SERVAL, SOCK_STREAM, 0);
    int one = 1, v = -1;
    socklen_t vl = sizeof v;
    CHECK(setsockopt(s, IPPROTO_IP, IP_TOS, &one, sizeof one) == 0, "IP_TOS");
    CHECK(setsockopt(s, IPPROTO_TCP, 1 /* TCP_NODELAY */, &one, sizeof one) == 0, "TCP_NODELAY");
    EXPECT_ERR(setsockopt(s, 9999, 1, &one, sizeof one), ENOPROTOOPT);
    EXPECT_ERR(getsockopt(s, 9999, 1, &v, &vl), ENOPROTOOPT);
    EXPECT_ERR(getsockopt(s, IPPROTO_UDP, 1, &v, &vl), ENOPROTOOPT);
    close(s);
}

static int nodaemon(const char *sid) {
    struct sockaddr_sv sa = sv_addr(sid);
    int fd = socket(AF_SERVAL, SOCK_STREAM, 0);
    CHECK(fd >= 0, "socket works without sald");
    EXPECT_ERR(connect(fd, (struct sockaddr *)&sa, sizeof sa), ENETDOWN);
    EXPECT_ERR(bind(fd, (struct sockaddr *)&sa, sizeof sa), ENETDOWN);
    close(fd);
    /* A non-blocking connect whose request cannot go out fails at once. */
    fd = socket(AF_SERVAL, SOCK_STREAM | SOCK_NONBLOCK, 0);
    EXPECT_ERR(connect(fd, (struct sockaddr *)&sa, sizeof sa), ENETDOWN);
    int err = -1;
    socklen_t len = sizeof err;
    CHECK(getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0,
          "SO_ERROR after a failed connect call: %d", err);
    close(fd);
    int d = socket(AF_SERVAL, SOCK_DGRAM, 0);
    EXPECT_ERR(sendto(d, "x", 1, 0, (struct sockaddr *)&sa, sizeof sa), ENETDOWN);
    close(d);
    return failures ? 1 : 0;
}

static volatile sig_atomic_t alarms;
static void count_alarm(int sig) {
    (void)sig;
    alarms++;
}

/* SIGALRM runs count_alarm (sigaction flags `flags`) every `usec`
 * microseconds (below a second) from now, or once if `once`; `usec` 0
 * stops the timer. */
static void alarm_in(int flags, long usec, int once) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = count_alarm;
    sa.sa_flags = flags;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval it = {{0, once ? 0 : usec}, {0, usec}};
    setitimer(ITIMER_REAL, &it, NULL);
}

static double seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* A peer killed outright (SIGKILL: no FIN, no RST): after an echo with
 * the stream-server for SID, kills the server (PID), then writes every
 * 50 ms until a write fails. In-process, the first packet after the kill
 * comes back as port unreachable (once sald let go of its copy of the
 * killed engine's socket) and the flow is reset about a second later: the
 * write fails with ECONNRESET (or EPIPE after it) within 10 s, not after
 * the 30 s peer timeout. */
static int write_until_reset(const char *sid, pid_t server) {
    signal(SIGPIPE, SIG_IGN);
    struct sockaddr_sv sa = sv_addr(sid);
    int fd = socket(AF_SERVAL, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) die("connect");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, 1 /* TCP_NODELAY */, &one, sizeof one);
    unsigned char buf[100];
    memset(buf, 'k', sizeof buf);
    CHECK(write_all(fd, buf, 64) == 0, "write before the kill");
    size_t got = 0;
    while (got < 64) {
        ssize_t n = read(fd, buf, 64 - got);
        if (n <= 0) die("echo before the kill");
        got += (size_t)n;
    }
    if (kill(server, SIGKILL) != 0) die("kill");
    double killed = seconds();
    int err = 0;
    while (seconds() - killed < 20) {
        if (write(fd, buf, sizeof buf) < 0) {
            err = errno;
            break;
        }
        usleep(50000);
    }
    double took = seconds() - killed;
    printf("write failed with errno %d after %.2f s\n", err, took);
    CHECK(err == ECONNRESET || err == EPIPE, "a write fails as reset");
    CHECK(took < 10, "within 10 s of the kill");
    close(fd);
    return failures ? 1 : 0;
}

/* A blocking stream socket whose connect to `sid` a signal without
 * SA_RESTART interrupted (EINTR), and goes on. */
static int interrupted_connect(const char *sid) {
    struct sockaddr_sv sa = sv_addr(sid);
    int fd = socket(AF_SERVAL, SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    alarms = 0;
    double start = seconds();
    alarm_in(0, 200000, 1);
    EXPECT_ERR(connect(fd, (struct sockaddr *)&sa, sizeof sa), EINTR);
    CHECK(alarms == 1 && seconds() - start < 5, "connect to %s interrupted by the signal (%d, after %.1f s)",
          sid, (int)alarms, seconds() - start);
    return fd;
}

/* The same, the handler installed the classic way: signal(), then
 * siginterrupt() to clear SA_RESTART (glibc does both through its own
 * sigaction, which an interposer cannot see: the shim interposes
 * siginterrupt). The program's first handler: nothing else has told the
 * shim yet that connects may be interrupted. */
static int interrupted_connect_siginterrupt(const char *sid) {
    struct sockaddr_sv sa = sv_addr(sid);
    int fd = socket(AF_SERVAL, SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    alarms = 0;
    signal(SIGALRM, count_alarm);
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    siginterrupt(SIGALRM, 1);
#pragma GCC diagnostic pop
    struct itimerval it = {{0, 0}, {0, 200000}};
    setitimer(ITIMER_REAL, &it, NULL);
    EXPECT_ERR(connect(fd, (struct sockaddr *)&sa, sizeof sa), EINTR);
    CHECK(alarms == 1, "connect to %s interrupted by a siginterrupt signal (%d)", sid, (int)alarms);
    return fd;
}

/* The same for a TCP socket connecting to PORT, which inet mode maps to
 * a service (the program's own socket is at the number until then). */
static int interrupted_tcp_connect(int port) {
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sin.sin_addr.s_addr = htonl(0x0a090909); /* 10.9.9.9: any address will do */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    alarms = 0;
    alarm_in(0, 200000, 1);
    EXPECT_ERR(connect(fd, (struct sockaddr *)&sin, sizeof sin), EINTR);
    CHECK(alarms == 1, "TCP connect to port %d interrupted by the signal", port);
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    CHECK(poll(&p, 1, 0) == 0, "TCP connect in progress, not writable (revents %#x)", p.revents);
    return fd;
}

struct waiting {
    int fd;
    const char *sid;
    int rc, err;
    volatile int done;
};

static void *connect_thread(void *arg) {
    struct waiting *w = arg;
    struct sockaddr_sv sa = sv_addr(w->sid);
    w->rc = connect(w->fd, (struct sockaddr *)&sa, sizeof sa);
    w->err = errno;
    w->done = 1;
    return NULL;
}

static void say(const char *marker) {
    printf("%s\n", marker);
    fflush(stdout);
}

/* As a blocking TCP connect: a signal whose handler has no SA_RESTART
 * interrupts it (EINTR) and the connect goes on; with SA_RESTART the call
 * goes on waiting. See the top of the file for the services. */
static int connect_eintr(const char *s1, int port, const char *s3, const char *hole) {
    struct sockaddr_sv sa1 = sv_addr(s1), sa3 = sv_addr(s3);
    int a = interrupted_connect_siginterrupt(s1), b = interrupted_connect(s1);
    /* Both go on: not writable yet; a non-blocking connect is EALREADY. */
    struct pollfd p = {.fd = a, .events = POLLOUT};
    CHECK(poll(&p, 1, 0) == 0, "in progress, not writable (revents %#x)", p.revents);
    fcntl(a, F_SETFL, fcntl(a, F_GETFL) | O_NONBLOCK);
    EXPECT_ERR(connect(a, (struct sockaddr *)&sa1, sizeof sa1), EALREADY);
    fcntl(a, F_SETFL, fcntl(a, F_GETFL) & ~O_NONBLOCK);

    /* Closing a socket while another thread waits for its connect ends the
     * wait (the connect to HOLE would take sald's 31.5 s) on the daemon
     * path. In-process, as Linux's TCP (measured, 6.18), the wait goes on
     * (to the connect's own outcome; the thread is left to it). */
    struct waiting w = {.fd = interrupted_connect(hole), .sid = hole};
    pthread_t t;
    pthread_create(&t, NULL, connect_thread, &w);
    usleep(200000);
    CHECK(!w.done, "a blocking connect waits for the interrupted one (rc %d errno %d)", w.rc, w.err);
    close(w.fd);
    for (int i = 0; i < 200 && !w.done; i++) usleep(10000);
    if (in_process())
        CHECK(!w.done, "close leaves another thread's wait as Linux's (rc %d errno %d)", w.rc, w.err);
    else
        CHECK(w.done && w.rc == -1, "close ends the wait of another thread (rc %d errno %d)", w.rc, w.err);
    if (w.done) pthread_join(t, NULL);

    say("connecting");
    /* With SA_RESTART, signals do not interrupt a blocking connect, which
     * waits for the outcome of the one in flight. */
    alarms = 0;
    alarm_in(SA_RESTART, 100000, 0);
    CHECK(connect(a, (struct sockaddr *)&sa1, sizeof sa1) == 0, "blocking connect waits for the outcome");
    CHECK(alarms >= 2, "%d signals while it waited", (int)alarms);
    EXPECT_ERR(connect(a, (struct sockaddr *)&sa1, sizeof sa1), EISCONN);
    /* The other polls writable once connected, as TCP. */
    alarm_in(0, 0, 1);
    p.fd = b;
    p.revents = 0;
    CHECK(poll(&p, 1, 20000) == 1 && (p.revents & POLLOUT), "the other one connects (revents %#x)", p.revents);
    int err = -1;
    socklen_t len = sizeof err;
    CHECK(getsockopt(b, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0, "SO_ERROR %d", err);

    /* A write after an interrupted connect waits for the connect, then
     * writes to the flow (the placeholder would say EPIPE). Inet mode
     * (PORT maps to S2): a placeholder takes the TCP socket's place. */
    int d = interrupted_tcp_connect(port);
    say("restart");
    alarms = 0;
    alarm_in(SA_RESTART, 100000, 0);
    char ping = pattern(0);
    CHECK(write(d, &ping, 1) == 1, "write waits for the interrupted connect");
    CHECK(alarms >= 2, "%d signals while the write waited", (int)alarms);

    /* A fresh blocking connect rides out SA_RESTART signals. */
    int c = socket(AF_SERVAL, SOCK_STREAM, 0);
    if (c < 0) die("socket");
    say("fresh");
    alarms = 0;
    CHECK(connect(c, (struct sockaddr *)&sa3, sizeof sa3) == 0, "blocking connect with SA_RESTART");
    CHECK(alarms >= 2, "%d signals while it connected", (int)alarms);
    alarm_in(0, 0, 1);

    char back = 0;
    CHECK(read(d, &back, 1) == 1 && back == ping, "echo of the write");
    close(d);
    int fds[3] = {a, b, c};
    for (int i = 0; i < 3; i++) {
        CHECK(echo_check(fds[i], 100000) == 0, "echo on connect %d", i);
        close(fds[i]);
    }
    return failures ? 1 : 0;
}

/* Sets `opt` (SO_SNDTIMEO or SO_RCVTIMEO) of `fd` to `usec` microseconds
 * (0: no timeout). */
static void set_timeout(int fd, int opt, long usec) {
    struct timeval tv = {.tv_sec = usec / 1000000, .tv_usec = usec % 1000000};
    CHECK(setsockopt(fd, SOL_SOCKET, opt, &tv, sizeof tv) == 0, "setsockopt %d", opt);
}

/* Whether `call` took between `low` and `high` seconds (`start` being
 * when it began), saying so if not. */
static int took(const char *call, double start, double low, double high) {
    double t = seconds() - start;
    CHECK(t >= low && t < high, "%s took %.2f s, not %.2f to %.2f", call, t, low, high);
    return t >= low && t < high;
}

/* A connect that completed in the background (poll shows it writable,
 * SO_ERROR 0): as TCP's, the next connect returns 0, the one after
 * EISCONN; with `copy`, the first goes on a dup of the descriptor (the
 * state is the socket's, shared by its copies), the later ones on both. */
static void connected_in_background(int fd, const struct sockaddr *sa, socklen_t len, const char *what, int copy) {
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    CHECK(poll(&p, 1, 20000) == 1 && (p.revents & POLLOUT) && !(p.revents & POLLHUP),
          "%s connects (revents %#x)", what, p.revents);
    int err = -1;
    socklen_t elen = sizeof err;
    CHECK(getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) == 0 && err == 0, "%s: SO_ERROR %d", what, err);
    int first = copy ? dup(fd) : fd;
    CHECK(connect(first, sa, len) == 0, "%s: the first connect after it connected", what);
    EXPECT_ERR(connect(fd, sa, len), EISCONN);
    if (copy) {
        EXPECT_ERR(connect(first, sa, len), EISCONN);
        close(first);
    }
}

/* As a blocking TCP connect on a socket with SO_SNDTIMEO: it waits that
 * long, then fails with EINPROGRESS and the connect goes on, as a
 * non-blocking one (see the top of the file for the services). */
static int connect_timeout(const char *s1, int port, const char *hole, const char *dead) {
    struct sockaddr_sv sa1 = sv_addr(s1), sah = sv_addr(hole);
    int a = socket(AF_SERVAL, SOCK_STREAM, 0);
    if (a < 0) die("socket");
    set_timeout(a, SO_SNDTIMEO, 300000);
    double start = seconds();
    EXPECT_ERR(connect(a, (struct sockaddr *)&sa1, sizeof sa1), EINPROGRESS);
    took("connect with SO_SNDTIMEO 0.3 s", start, 0.25, 3);
    /* It goes on: not writable; a non-blocking connect is EALREADY, a
     * blocking one waits SO_SNDTIMEO for the outcome, then is EALREADY;
     * a write waits SO_SNDTIMEO, a read SO_RCVTIMEO, then EAGAIN. */
    struct pollfd p = {.fd = a, .events = POLLOUT};
    CHECK(poll(&p, 1, 0) == 0, "in progress, not writable (revents %#x)", p.revents);
    fcntl(a, F_SETFL, fcntl(a, F_GETFL) | O_NONBLOCK);
    EXPECT_ERR(connect(a, (struct sockaddr *)&sa1, sizeof sa1), EALREADY);
    fcntl(a, F_SETFL, fcntl(a, F_GETFL) & ~O_NONBLOCK);
    start = seconds();
    EXPECT_ERR(connect(a, (struct sockaddr *)&sa1, sizeof sa1), EALREADY);
    took("a second blocking connect", start, 0.25, 3);
    start = seconds();
    EXPECT_ERR(write(a, "x", 1), EAGAIN);
    took("a write while it connects", start, 0.25, 3);
    set_timeout(a, SO_RCVTIMEO, 200000);
    char c;
    start = seconds();
    EXPECT_ERR(read(a, &c, 1), EAGAIN);
    took("a read while it connects (SO_RCVTIMEO 0.2 s)", start, 0.15, 3);
    set_timeout(a, SO_RCVTIMEO, 0);
    /* With a timeout, any signal interrupts the wait, SA_RESTART or not
     * (TCP's connect is restarted only when it has no timeout). */
    set_timeout(a, SO_SNDTIMEO, 5000000);
    alarms = 0;
    alarm_in(SA_RESTART, 200000, 1);
    start = seconds();
    EXPECT_ERR(connect(a, (struct sockaddr *)&sa1, sizeof sa1), EINTR);
    CHECK(alarms == 1, "a signal came (%d)", (int)alarms);
    took("a blocking connect a SA_RESTART signal interrupts", start, 0.1, 3);
    int b = socket(AF_SERVAL, SOCK_STREAM, 0);
    if (b < 0) die("socket");
    set_timeout(b, SO_SNDTIMEO, 5000000);
    alarms = 0;
    alarm_in(SA_RESTART, 200000, 1);
    start = seconds();
    EXPECT_ERR(connect(b, (struct sockaddr *)&sa1, sizeof sa1), EINTR);
    CHECK(alarms == 1, "a signal came (%d)", (int)alarms);
    took("a fresh connect a SA_RESTART signal interrupts", start, 0.1, 3);
    /* A negative timeout reads back as none, but gives up at once. */
    int h = socket(AF_SERVAL, SOCK_STREAM, 0);
    if (h < 0) die("socket");
    struct timeval negative = {.tv_sec = -1};
    CHECK(setsockopt(h, SOL_SOCKET, SO_SNDTIMEO, &negative, sizeof negative) == 0, "SO_SNDTIMEO -1 s");
    start = seconds();
    EXPECT_ERR(connect(h, (struct sockaddr *)&sah, sizeof sah), EINPROGRESS);
    took("a connect with a negative SO_SNDTIMEO", start, 0, 0.2);
    close(h);
    /* One that fails within its wait reports the error, and leaves the
     * receive timeout as the program set it. */
    struct sockaddr_sv sad = sv_addr(dead);
    int f = socket(AF_SERVAL, SOCK_STREAM, 0);
    if (f < 0) die("socket");
    set_timeout(f, SO_SNDTIMEO, 5000000);
    set_timeout(f, SO_RCVTIMEO, 200000);
    EXPECT_ERR(connect(f, (struct sockaddr *)&sad, sizeof sad), EHOSTUNREACH);
    struct timeval rt = {0, 0};
    socklen_t rlen = sizeof rt;
    CHECK(getsockopt(f, SOL_SOCKET, SO_RCVTIMEO, &rt, &rlen) == 0 && rt.tv_sec == 0 && rt.tv_usec > 150000 &&
              rt.tv_usec < 250000,
          "SO_RCVTIMEO after a failed timed connect (%ld.%06ld)", (long)rt.tv_sec, (long)rt.tv_usec);
    close(f);
    /* Inet mode (PORT maps to S1 too): the program's TCP socket. */
    struct sockaddr_in sin = inet_addr_port(0x0a090909, port);
    int d = socket(AF_INET, SOCK_STREAM, 0);
    if (d < 0) die("socket");
    set_timeout(d, SO_SNDTIMEO, 300000);
    start = seconds();
    EXPECT_ERR(connect(d, (struct sockaddr *)&sin, sizeof sin), EINPROGRESS);
    took("TCP connect with SO_SNDTIMEO 0.3 s", start, 0.25, 3);
    p.fd = d;
    p.revents = 0;
    CHECK(poll(&p, 1, 0) == 0, "TCP connect in progress, not writable (revents %#x)", p.revents);

    say("connecting");
    connected_in_background(a, (struct sockaddr *)&sa1, sizeof sa1, "the timed-out connect", 0);
    connected_in_background(b, (struct sockaddr *)&sa1, sizeof sa1, "the interrupted connect, seen by a dup", 1);
    connected_in_background(d, (struct sockaddr *)&sin, sizeof sin, "the timed-out TCP connect", 0);
    /* A send timeout too long to matter (Linux takes one this long as
     * none, and reads it back as 0) lets the connect finish. */
    int e = socket(AF_SERVAL, SOCK_STREAM, 0);
    if (e < 0) die("socket");
    struct timeval forever = {.tv_sec = LONG_MAX};
    CHECK(setsockopt(e, SOL_SOCKET, SO_SNDTIMEO, &forever, sizeof forever) == 0, "SO_SNDTIMEO LONG_MAX s");
    CHECK(connect(e, (struct sockaddr *)&sa1, sizeof sa1) == 0, "connect with SO_SNDTIMEO LONG_MAX s");
    CHECK(echo_check(e, 1000) == 0, "echo on the connect with SO_SNDTIMEO LONG_MAX s");
    close(e);
    int fds[3] = {a, b, d};
    for (int i = 0; i < 3; i++) {
        /* The flow has the timeout too; the echo's writes may wait longer. */
        struct timeval tv = {0, 1};
        socklen_t len = sizeof tv;
        CHECK(getsockopt(fds[i], SOL_SOCKET, SO_SNDTIMEO, &tv, &len) == 0 && (tv.tv_sec || tv.tv_usec > 1),
              "the flow's SO_SNDTIMEO (%ld.%06ld)", (long)tv.tv_sec, (long)tv.tv_usec);
        set_timeout(fds[i], SO_SNDTIMEO, 0);
        CHECK(echo_check(fds[i], 100000) == 0, "echo on connect %d", i);
        close(fds[i]);
    }
    return failures ? 1 : 0;
}

/* N blocking connects with a send timeout (20 ms) to HOLE, each left in
 * flight after EINPROGRESS: they go on as non-blocking ones do, through
 * the process's one connector (one thread and one control connection),
 * not a thread and a connection each. */
static int connect_timeout_many(const char *hole, int n) {
    int *fds = calloc((size_t)n, sizeof *fds);
    struct sockaddr_sv sa = sv_addr(hole);
    int before = fd_count();
    for (int i = 0; i < n; i++) {
        fds[i] = socket(AF_SERVAL, SOCK_STREAM, 0);
        if (fds[i] < 0) die("socket");
        set_timeout(fds[i], SO_SNDTIMEO, 20000);
        EXPECT_ERR(connect(fds[i], (struct sockaddr *)&sa, sizeof sa), EINPROGRESS);
    }
    int threads = thread_count();
    int most_threads = in_process() ? 3 : 2;
    CHECK(threads >= 1 && threads <= most_threads, "%d threads with %d timed-out connects in flight",
          threads, n);
    /* Each socket and its placeholder's peer end, the connector's
     * connection (two descriptors), slack for a pooled connection.
     * In-process: each socket and the engine's two eventfds, and the
     * engine's own. */
    int opened = fd_count() - before;
    int most = in_process() ? 3 * n + 12 : 2 * n + 2 + 4;
    CHECK(opened <= most, "%d descriptors for %d timed-out connects in flight", opened, n);
    for (int i = 0; i < n; i++) close(fds[i]);
    free(fds);
    return failures ? 1 : 0;
}

/* As accept on a TCP listener with SO_RCVTIMEO: EAGAIN once that long has
 * passed without a connection (set before listen or after it, and in inet
 * mode, PORT mapped to SID2), EINTR from any signal meanwhile; a flow that
 * comes is accepted. And a flow's reads give up after SO_RCVTIMEO. */
static int accept_timeout(const char *sid, int port, const char *sid2) {
    struct sockaddr_sv sa = sv_addr(sid);
    int l = socket(AF_SERVAL, SOCK_STREAM, 0);
    if (l < 0) die("socket");
    set_timeout(l, SO_RCVTIMEO, 300000);
    CHECK(bind(l, (struct sockaddr *)&sa, sizeof sa) == 0 && listen(l, 8) == 0, "bind and listen");
    double start = seconds();
    EXPECT_ERR(accept(l, NULL, NULL), EAGAIN);
    took("accept with SO_RCVTIMEO 0.3 s set before listen", start, 0.25, 3);
    set_timeout(l, SO_RCVTIMEO, 200000);
    start = seconds();
    EXPECT_ERR(accept4(l, NULL, NULL, SOCK_CLOEXEC), EAGAIN);
    took("accept4 with SO_RCVTIMEO 0.2 s set after listen", start, 0.15, 3);
    set_timeout(l, SO_RCVTIMEO, 5000000);
    alarms = 0;
    alarm_in(SA_RESTART, 200000, 1);
    start = seconds();
    EXPECT_ERR(accept(l, NULL, NULL), EINTR);
    took("accept a SA_RESTART signal interrupts", start, 0.1, 3);
    int c = stream_to(sid);
    int a = accept(l, NULL, NULL);
    CHECK(a >= 0, "accept takes the flow that came");
    /* A read on either end waits SO_RCVTIMEO, set before connect (see
     * stream-client) or after. */
    set_timeout(c, SO_RCVTIMEO, 200000);
    char byte;
    start = seconds();
    EXPECT_ERR(read(c, &byte, 1), EAGAIN);
    took("read with SO_RCVTIMEO 0.2 s", start, 0.15, 3);
    set_timeout(a, SO_RCVTIMEO, 200000);
    start = seconds();
    EXPECT_ERR(recv(a, &byte, 1, 0), EAGAIN);
    took("recv on the accepted flow with SO_RCVTIMEO 0.2 s", start, 0.15, 3);
    close(a);
    close(c);
    close(l);

    struct sockaddr_in sin = inet_addr_port(0, port);
    int t = socket(AF_INET, SOCK_STREAM, 0);
    if (t < 0) die("socket");
    set_timeout(t, SO_RCVTIMEO, 300000);
    CHECK(bind(t, (struct sockaddr *)&sin, sizeof sin) == 0 && listen(t, 8) == 0, "inet bind and listen");
    start = seconds();
    EXPECT_ERR(accept(t, NULL, NULL), EAGAIN);
    took("inet-mode accept with SO_RCVTIMEO 0.3 s", start, 0.25, 3);
    c = stream_to(sid2);
    a = accept(t, NULL, NULL);
    CHECK(a >= 0, "inet-mode accept takes the flow that came");
    close(a);
    close(c);
    close(t);
    return failures ? 1 : 0;
}

/* Binds, listens with BACKLOG (then again with AGAIN, if not negative)
 * and never accepts; connects (blocking, from this process, keeping every
 * flow) until one is refused, and prints how many were not: the accept
 * queue's socket holds some, the listener's backlog in sald the rest. */
static int backlog_fill(const char *sid, int backlog, int again) {
    struct rlimit most;
    if (getrlimit(RLIMIT_NOFILE, &most) == 0) {
        most.rlim_cur = most.rlim_max;
        setrlimit(RLIMIT_NOFILE, &most);
    }
    struct sockaddr_sv sa = sv_addr(sid);
    int l = socket(AF_SERVAL, SOCK_STREAM, 0);
    CHECK(bind(l, (struct sockaddr *)&sa, sizeof sa) == 0 && listen(l, backlog) == 0 &&
              (again < 0 || listen(l, again) == 0),
          "bind and listen");
    int opened = 0;
    for (; opened < 5000; opened++) {
        int fd = socket(AF_SERVAL, SOCK_STREAM, 0);
        if (fd < 0) die("socket");
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
            CHECK(errno == ECONNREFUSED, "refused, not %s", strerror(errno));
            close(fd);
            break;
        }
    }
    CHECK(opened < 5000, "no connect was refused");
    printf("%d\n", opened);
    return failures ? 1 : 0;
}

struct relisten_arg { int fd; int stop; int listens; int bad; };

/* listen() on a listener, again and again (each sends the new backlog to
 * sald on the listener's control connection). */
static void *relisten_thread(void *arg) {
    struct relisten_arg *r = arg;
    while (!__atomic_load_n(&r->stop, __ATOMIC_ACQUIRE)) {
        int n = __atomic_load_n(&r->listens, __ATOMIC_RELAXED);
        if (listen(r->fd, 8 + n % 2) != 0) r->bad++;
        __atomic_store_n(&r->listens, n + 1, __ATOMIC_RELEASE);
    }
    return NULL;
}

/* Forks while a thread keeps calling listen() on a listener: a child's own
 * listen() on the listener it inherited returns (it must not wait on a
 * lock the thread held at the fork, nor read the parent's answers), and
 * the parent's go on answering; the listener still accepts. */
static int listen_fork(const char *sid, int forks) {
    alarm(25); /* a thread that lost its answer ends the test */
    struct sockaddr_sv sa = sv_addr(sid);
    int l = socket(AF_SERVAL, SOCK_STREAM, 0);
    if (l < 0) die("socket");
    if (bind(l, (struct sockaddr *)&sa, sizeof sa) < 0) die("bind");
    if (listen(l, 8) < 0) die("listen");
    struct relisten_arg r = {l, 0, 0, 0};
    pthread_t t;
    pthread_create(&t, NULL, relisten_thread, &r);
    while (__atomic_load_n(&r.listens, __ATOMIC_ACQUIRE) < 16) usleep(1000);
    for (int i = 0; i < forks; i++) {
        pid_t pid = fork();
        if (pid < 0) die("fork");
        if (pid == 0) {
            alarm(5); /* a child stuck on an inherited lock dies */
            _exit(listen(l, 9) == 0 && listen(l, 10) == 0 ? 0 : 1);
        }
        int status = 0;
        CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "fork %d: child status %x", i, status);
    }
    __atomic_store_n(&r.stop, 1, __ATOMIC_RELEASE);
    pthread_join(t, NULL);
    CHECK(r.bad == 0, "%d of %d listens failed", r.bad, r.listens);
    int c = stream_to(sid);
    int a = accept(l, NULL, NULL);
    CHECK(a >= 0, "the listener accepts");
    close(a);
    close(c);
    close(l);
    printf("%d forks during %d listens\n", forks, r.listens);
    return failures ? 1 : 0;
}

/* Stops this process for 0.2 s, `delay` microseconds from now: a child
 * sends SIGSTOP, then SIGCONT (no handler for either). Returns the child,
 * for the caller to reap. */
static pid_t stop_and_continue(long delay) {
    pid_t me = getpid();
    pid_t child = fork();
    if (child < 0) die("fork");
    if (child == 0) {
        usleep((useconds_t)delay);
        kill(me, SIGSTOP);
        usleep(200000);
        kill(me, SIGCONT);
        _exit(0);
    }
    return child;
}

static void blocking_mode(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK); }

struct blocking {
    int fd;
    const struct sockaddr *sa;
    socklen_t len;
    int rc, err;
};

static void *blocking_connect(void *arg) {
    struct blocking *b = arg;
    b->rc = connect(b->fd, b->sa, b->len);
    b->err = errno;
    return NULL;
}

/* As TCP's: a blocking connect on a socket whose non-blocking connect is
 * in flight waits for its outcome (SO_SNDTIMEO at most, then EALREADY);
 * a stop and continue (SIGSTOP, SIGCONT, no handler) ends a wait with a
 * timeout (connect, write, read) with EINTR, and one without a timeout
 * goes on; a send timeout of 1e15 s is one (a SA_RESTART signal
 * interrupts it), one of 1e17 s none (Linux takes any over LONG_MAX / HZ
 * s as none). See the top of the file for the services. */
static int connect_waits(const char *s1, int port, const char *hole) {
    struct sockaddr_sv sa1 = sv_addr(s1), sah = sv_addr(hole);
    int a = socket(AF_SERVAL, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (a < 0) die("socket");
    EXPECT_ERR(connect(a, (struct sockaddr *)&sah, sizeof sah), EINPROGRESS);
    blocking_mode(a);
    set_timeout(a, SO_SNDTIMEO, 300000);
    double start = seconds();
    EXPECT_ERR(connect(a, (struct sockaddr *)&sah, sizeof sah), EALREADY);
    took("a blocking connect while a non-blocking one is in flight", start, 0.25, 3);
    /* Stopped and continued: TCP's waits with a timeout end (EINTR). */
    set_timeout(a, SO_SNDTIMEO, 5000000);
    set_timeout(a, SO_RCVTIMEO, 5000000);
    pid_t child = stop_and_continue(300000);
    start = seconds();
    EXPECT_ERR(connect(a, (struct sockaddr *)&sah, sizeof sah), EINTR);
    took("a blocking connect waiting for a non-blocking one, stopped", start, 0.3, 3);
    waitpid(child, NULL, 0);
    child = stop_and_continue(300000);
    start = seconds();
    EXPECT_ERR(write(a, "x", 1), EINTR);
    took("a write waiting for the connect, stopped", start, 0.3, 3);
    waitpid(child, NULL, 0);
    char byte;
    child = stop_and_continue(300000);
    start = seconds();
    EXPECT_ERR(read(a, &byte, 1), EINTR);
    took("a read waiting for the connect, stopped", start, 0.3, 3);
    waitpid(child, NULL, 0);
    close(a);
    int t = socket(AF_SERVAL, SOCK_STREAM, 0);
    if (t < 0) die("socket");
    set_timeout(t, SO_SNDTIMEO, 5000000);
    child = stop_and_continue(300000);
    start = seconds();
    EXPECT_ERR(connect(t, (struct sockaddr *)&sah, sizeof sah), EINTR);
    took("a connect with SO_SNDTIMEO, stopped", start, 0.3, 3);
    waitpid(child, NULL, 0);
    close(t);
    /* 1e15 s is a timeout: a SA_RESTART signal interrupts its wait. */
    int h = socket(AF_SERVAL, SOCK_STREAM, 0);
    if (h < 0) die("socket");
    struct timeval long_one = {.tv_sec = 1000000000000000L};
    CHECK(setsockopt(h, SOL_SOCKET, SO_SNDTIMEO, &long_one, sizeof long_one) == 0, "SO_SNDTIMEO 1e15 s");
    alarms = 0;
    alarm_in(SA_RESTART, 200000, 1);
    EXPECT_ERR(connect(h, (struct sockaddr *)&sah, sizeof sah), EINTR);
    CHECK(alarms == 1, "a signal came (%d)", (int)alarms);
    close(h);

    /* Waits for connects that complete once the host comes up: blocking
     * connects (in threads) on sockets whose non-blocking connects are in
     * flight, one inet mode maps (PORT), and a fresh one with a send
     * timeout of 1e17 s, through SA_RESTART signals and a stop. */
    int b = socket(AF_SERVAL, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (b < 0) die("socket");
    EXPECT_ERR(connect(b, (struct sockaddr *)&sa1, sizeof sa1), EINPROGRESS);
    blocking_mode(b);
    struct sockaddr_in sin = inet_addr_port(0x0a090909, port);
    int c = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (c < 0) die("socket");
    EXPECT_ERR(connect(c, (struct sockaddr *)&sin, sizeof sin), EINPROGRESS);
    blocking_mode(c);
    int e = socket(AF_SERVAL, SOCK_STREAM, 0);
    if (e < 0) die("socket");
    struct timeval none = {.tv_sec = 100000000000000000L};
    CHECK(setsockopt(e, SOL_SOCKET, SO_SNDTIMEO, &none, sizeof none) == 0, "SO_SNDTIMEO 1e17 s");
    struct blocking wb = {b, (struct sockaddr *)&sa1, sizeof sa1, -2, 0};
    struct blocking wc = {c, (struct sockaddr *)&sin, sizeof sin, -2, 0};
    pthread_t tb, tc;
    pthread_create(&tb, NULL, blocking_connect, &wb);
    pthread_create(&tc, NULL, blocking_connect, &wc);
    alarms = 0;
    alarm_in(SA_RESTART, 100000, 0);
    say("connecting");
    child = stop_and_continue(300000);
    CHECK(connect(e, (struct sockaddr *)&sa1, sizeof sa1) == 0, "a connect with SO_SNDTIMEO 1e17 s (none)");
    pthread_join(tb, NULL);
    pthread_join(tc, NULL);
    alarm_in(0, 0, 1);
    waitpid(child, NULL, 0);
    CHECK(alarms >= 2, "%d signals while they waited", (int)alarms);
    errno = wb.err;
    CHECK(wb.rc == 0, "a blocking connect waits for the non-blocking one in flight (rc %d)", wb.rc);
    errno = wc.err;
    CHECK(wc.rc == 0, "the same on a TCP socket inet mode maps (rc %d)", wc.rc);
    EXPECT_ERR(connect(b, (struct sockaddr *)&sa1, sizeof sa1), EISCONN);
    EXPECT_ERR(connect(c, (struct sockaddr *)&sin, sizeof sin), EISCONN);
    int fds[3] = {b, c, e};
    for (int i = 0; i < 3; i++) {
        CHECK(echo_check(fds[i], 10000) == 0, "echo on connect %d", i);
        close(fds[i]);
    }
    return failures ? 1 : 0;
}

/* SO_RCVTIMEO of `fd`, in microseconds. */
static long receive_timeout(int fd) {
    struct timeval tv = {-1, -1};
    socklen_t len = sizeof tv;
    if (getsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, &len) != 0) return -1;
    return (long)tv.tv_sec * 1000000 + (long)tv.tv_usec;
}

/* SO_RCVTIMEO reads as the program set it (as the kernel rounds it, read
 * from a TCP socket of the kernel's given the same value) while a
 * connect is in flight: timed out, interrupted, or non-blocking. HOLE
 * never answers. */
static int rcvtimeo_connecting(const char *hole) {
    struct sockaddr_sv sa = sv_addr(hole);
    int k = socket(AF_INET, SOCK_STREAM, 0);
    if (k < 0) die("socket");
    long values[] = {200000, 1, 1234567};
    for (int i = 0; i < 3; i++) {
        set_timeout(k, SO_RCVTIMEO, values[i]);
        long kernel = receive_timeout(k);
        CHECK(kernel > 0, "the kernel's reading of %ld us: %ld", values[i], kernel);
        int a = socket(AF_SERVAL, SOCK_STREAM, 0);
        if (a < 0) die("socket");
        set_timeout(a, SO_RCVTIMEO, values[i]);
        set_timeout(a, SO_SNDTIMEO, 100000);
        EXPECT_ERR(connect(a, (struct sockaddr *)&sa, sizeof sa), EINPROGRESS);
        long got = receive_timeout(a);
        CHECK(got == kernel, "SO_RCVTIMEO %ld us while a timed connect is in flight: %ld, not %ld", values[i], got,
              kernel);
        int b = socket(AF_SERVAL, SOCK_STREAM, 0);
        if (b < 0) die("socket");
        set_timeout(b, SO_RCVTIMEO, values[i]);
        alarms = 0;
        alarm_in(0, 200000, 1);
        EXPECT_ERR(connect(b, (struct sockaddr *)&sa, sizeof sa), EINTR);
        got = receive_timeout(b);
        CHECK(got == kernel, "SO_RCVTIMEO %ld us while an interrupted connect is in flight: %ld, not %ld", values[i],
              got, kernel);
        int c = socket(AF_SERVAL, SOCK_STREAM | SOCK_NONBLOCK, 0);
        if (c < 0) die("socket");
        set_timeout(c, SO_RCVTIMEO, values[i]);
        EXPECT_ERR(connect(c, (struct sockaddr *)&sa, sizeof sa), EINPROGRESS);
        got = receive_timeout(c);
        CHECK(got == kernel, "SO_RCVTIMEO %ld us while a non-blocking connect is in flight: %ld, not %ld",
              values[i], got, kernel);
        if (i == 0) {
            /* It still bounds a read that waits for the connect. */
            blocking_mode(c);
            char byte;
            double start = seconds();
            EXPECT_ERR(read(c, &byte, 1), EAGAIN);
            took("a read waiting for a non-blocking connect (SO_RCVTIMEO 0.2 s)", start, 0.15, 3);
        }
        close(a);
        close(b);
        close(c);
    }
    close(k);
    return failures ? 1 : 0;
}

/* N non-blocking connects to SID (a stream-server for N), each followed
 * by connects until one is not EALREADY: as TCP's, that one returns 0
 * (it used to be EISCONN when the connect completed within the call),
 * the next EISCONN. */
static int connect_race(const char *sid, int n) {
    struct sockaddr_sv sa = sv_addr(sid);
    for (int i = 0; i < n; i++) {
        int fd = socket(AF_SERVAL, SOCK_STREAM | SOCK_NONBLOCK, 0);
        if (fd < 0) die("socket");
        EXPECT_ERR(connect(fd, (struct sockaddr *)&sa, sizeof sa), EINPROGRESS);
        int rc;
        while ((rc = connect(fd, (struct sockaddr *)&sa, sizeof sa)) == -1 && errno == EALREADY) {
        }
        CHECK(rc == 0, "connect %d: the first connect once connected returned %d", i, rc);
        EXPECT_ERR(connect(fd, (struct sockaddr *)&sa, sizeof sa), EISCONN);
        close(fd);
    }
    return failures ? 1 : 0;
}

/* A blocking read on a socket whose non-blocking connect is in flight
 * waits SO_RCVTIMEO in all, as TCP's (whose read counts one timeout down
 * across the connect and the wait for data): SID is unreachable until the
 * test starts a host for it a second after "connecting", the connect
 * completes once that host is up (a second or more in), the server sends
 * nothing, and the read fails with EAGAIN 4 s after it began (it waited
 * 4 s more for data once connected). Then the socket is connected: a
 * byte echoes. */
static int read_timeout_connecting(const char *sid) {
    struct sockaddr_sv sa = sv_addr(sid);
    int fd = socket(AF_SERVAL, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) die("socket");
    set_timeout(fd, SO_RCVTIMEO, 4000000);
    EXPECT_ERR(connect(fd, (struct sockaddr *)&sa, sizeof sa), EINPROGRESS);
    blocking_mode(fd);
    say("connecting");
    double start = seconds();
    char byte;
    EXPECT_ERR(read(fd, &byte, 1), EAGAIN);
    took("a read waiting for a connect, then for data (SO_RCVTIMEO 4 s)", start, 3.8, 4.7);
    CHECK(write(fd, "x", 1) == 1, "a write once connected");
    CHECK(read(fd, &byte, 1) == 1 && byte == 'x', "the echo");
    close(fd);
    return failures ? 1 : 0;
}

/* SO_RCVTIMEO of a socket whose non-blocking connect to HOLE is in flight
 * reads as the kernel rounds it even when the shim's first look at the
 * kernel's clock rate came while the process had no descriptor to spare
 * (EMFILE): once one is free again, it reads as a TCP socket's. */
static int hz_emfile(const char *hole) {
    struct sockaddr_sv sa = sv_addr(hole);
    int k = socket(AF_INET, SOCK_STREAM, 0);
    if (k < 0) die("socket");
    set_timeout(k, SO_RCVTIMEO, 1);
    long kernel = receive_timeout(k);
    close(k);
    int a = socket(AF_SERVAL, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (a < 0) die("socket");
    set_timeout(a, SO_RCVTIMEO, 1);
    EXPECT_ERR(connect(a, (struct sockaddr *)&sa, sizeof sa), EINPROGRESS);
    struct rlimit was, low;
    if (getrlimit(RLIMIT_NOFILE, &was) != 0) die("getrlimit");
    low = was;
    low.rlim_cur = 256;
    if (setrlimit(RLIMIT_NOFILE, &low) != 0) die("setrlimit");
    int fds[256], n = 0;
    while (n < 256 && (fds[n] = dup(0)) >= 0) n++;
    CHECK(n < 256 && errno == EMFILE, "no descriptor left (%d dups)", n);
    long busy = receive_timeout(a);
    while (n > 0) close(fds[--n]);
    setrlimit(RLIMIT_NOFILE, &was);
    long got = receive_timeout(a);
    CHECK(got == kernel, "SO_RCVTIMEO 1 us reads %ld us (%ld with no descriptor free), not %ld", got, busy, kernel);
    close(a);
    return failures ? 1 : 0;
}

/* A forked child's copy of a socket whose non-blocking connect to HOLE
 * is in flight polls as hung up and never connects (the parent's
 * connector completes the parent's copy only): its reads and writes must
 * fail, non-blocking ones too, or an event loop spins on EAGAIN. */
static int fork_connecting(const char *hole) {
    struct sockaddr_sv sa = sv_addr(hole);
    int a = socket(AF_SERVAL, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (a < 0) die("socket");
    EXPECT_ERR(connect(a, (struct sockaddr *)&sa, sizeof sa), EINPROGRESS);
    pid_t child = fork();
    if (child < 0) die("fork");
    if (child == 0) {
        alarm(10);
        char buf[8];
        failures = 0;
        EXPECT_ERR(read(a, buf, sizeof buf), ENOTCONN);
        EXPECT_ERR(recv(a, buf, sizeof buf, MSG_DONTWAIT), ENOTCONN);
        EXPECT_ERR(send(a, "x", 1, MSG_DONTWAIT), ENOTCONN);
        EXPECT_ERR(write(a, "x", 1), ENOTCONN);
        fcntl(a, F_SETFL, fcntl(a, F_GETFL) & ~O_NONBLOCK);
        EXPECT_ERR(read(a, buf, sizeof buf), ENOTCONN);
        _exit(failures ? 1 : 0);
    }
    int status = 0;
    CHECK(waitpid(child, &status, 0) == child && WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "the child's copy: status %x", status);
    /* The parent's own is still connecting (non-blocking again: the
     * child's fcntl changed the description both share). */
    fcntl(a, F_SETFL, fcntl(a, F_GETFL) | O_NONBLOCK);
    char buf[8];
    EXPECT_ERR(read(a, buf, sizeof buf), EAGAIN);
    close(a);
    return failures ? 1 : 0;
}

/* Whether `call` returned at once (within 0.15 s), saying so if not. */
static void at_once(const char *call, double start) {
    double t = seconds() - start;
    CHECK(t < 0.15, "%s took %.2f s, not at once", call, t);
}

/* Ends another thread's wait on FD, USEC microseconds from now: a close
 * on the daemon path; in-process, as on Linux, where a close leaves
 * another thread's connect waiting, an AF_UNSPEC connect first. */
struct late_close { int fd; long usec; };
static void *late_close_thread(void *arg) {
    struct late_close *c = arg;
    sigset_t alrm;
    sigemptyset(&alrm);
    sigaddset(&alrm, SIGALRM);
    pthread_sigmask(SIG_BLOCK, &alrm, NULL);
    usleep((useconds_t)c->usec);
    if (in_process()) {
        struct sockaddr unspec = {.sa_family = AF_UNSPEC};
        connect(c->fd, &unspec, sizeof unspec);
    }
    close(c->fd);
    return NULL;
}

/* As Linux's TCP (checked against it, its SYNs dropped): connect checks
 * what it can without the socket first (a NULL address is EFAULT, a
 * length below 2 or above sizeof(struct sockaddr_storage) EINVAL), at
 * once, also on a socket whose connect is in flight, where a blocking
 * one would wait; an AF_UNSPEC address disconnects; then the socket's
 * state (EALREADY, waiting for the connect in flight, EISCONN), and only
 * a socket that may connect has its address looked at (EINVAL for a
 * short one, EAFNOSUPPORT for another family). AF_UNSPEC on a socket
 * whose connect is in flight ends it: 0, reads ECONNRESET once (SO_ERROR
 * the same), then ENOTCONN, writes EPIPE; another thread waiting for the
 * connect gets EPIPE; the socket connects again (LIVE), with no error left
 * over. A receive timeout set while a connect is in flight does not make
 * a later untimed wait for it interruptible by a SA_RESTART signal. HOLE
 * never answers. */
static int connect_checks(const char *live, const char *hole) {
    struct sockaddr_sv sa = sv_addr(live), sah = sv_addr(hole);
    struct sockaddr_in in = {.sin_family = AF_INET, .sin_port = htons(80)};
    struct sockaddr unspec = {.sa_family = AF_UNSPEC};
    int f = socket(AF_SERVAL, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (f < 0) die("socket");
    EXPECT_ERR(connect(f, NULL, sizeof sa), EFAULT);
    EXPECT_ERR(connect(f, NULL, 0), EINVAL);
    EXPECT_ERR(connect(f, (struct sockaddr *)&sa, 1), EINVAL);
    EXPECT_ERR(connect(f, (struct sockaddr *)&sah, sizeof(struct sockaddr_storage) + 1), EINVAL);
    EXPECT_ERR(connect(f, (struct sockaddr *)&sah, (socklen_t)-1), EINVAL);
    EXPECT_ERR(connect(f, (struct sockaddr *)&sa, 10), EINVAL);
    EXPECT_ERR(connect(f, (struct sockaddr *)&in, sizeof in), EAFNOSUPPORT);
    CHECK(connect(f, &unspec, sizeof unspec) == 0, "AF_UNSPEC on a fresh socket");
    CHECK(connect(f, &unspec, 2) == 0, "AF_UNSPEC, the family alone");
    EXPECT_ERR(connect(f, &unspec, 1), EINVAL);

    /* A non-blocking connect in flight. */
    int c = socket(AF_SERVAL, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (c < 0) die("socket");
    EXPECT_ERR(connect(c, (struct sockaddr *)&sah, sizeof sah), EINPROGRESS);
    EXPECT_ERR(connect(c, NULL, sizeof sa), EFAULT);
    EXPECT_ERR(connect(c, NULL, 0), EINVAL);
    EXPECT_ERR(connect(c, (struct sockaddr *)&sah, 1), EINVAL);
    EXPECT_ERR(connect(c, (struct sockaddr *)&sah, sizeof(struct sockaddr_storage) + 1), EINVAL);
    EXPECT_ERR(connect(c, (struct sockaddr *)&sah, 10), EALREADY);
    EXPECT_ERR(connect(c, (struct sockaddr *)&in, sizeof in), EALREADY);
    /* Blocking now: what fails without the socket fails at once; the
     * rest waits for the connect in flight (its send timeout here). */
    blocking_mode(c);
    set_timeout(c, SO_SNDTIMEO, 300000);
    double start = seconds();
    EXPECT_ERR(connect(c, NULL, sizeof sa), EFAULT);
    at_once("a blocking connect to NULL", start);
    start = seconds();
    EXPECT_ERR(connect(c, NULL, 0), EINVAL);
    at_once("a blocking connect to NULL, length 0", start);
    start = seconds();
    EXPECT_ERR(connect(c, (struct sockaddr *)&sah, 1), EINVAL);
    at_once("a blocking connect, length 1", start);
    start = seconds();
    EXPECT_ERR(connect(c, (struct sockaddr *)&sah, sizeof(struct sockaddr_storage) + 1), EINVAL);
    at_once("a blocking connect, length 129", start);
    start = seconds();
    EXPECT_ERR(connect(c, (struct sockaddr *)&in, sizeof in), EALREADY);
    took("a blocking connect to another family, waiting", start, 0.25, 3);
    start = seconds();
    EXPECT_ERR(connect(c, (struct sockaddr *)&sah, 10), EALREADY);
    took("a blocking connect, length 10, waiting", start, 0.25, 3);

    /* A receive timeout set meanwhile: an untimed blocking connect and
     * write still ride out SA_RESTART signals (they wait until another
     * thread ends them: late_close_thread). */
    set_timeout(c, SO_SNDTIMEO, 0);
    set_timeout(c, SO_RCVTIMEO, 100000);
    for (int i = 0; i < 2; i++) {
        int w = socket(AF_SERVAL, SOCK_STREAM | SOCK_NONBLOCK, 0);
        if (w < 0) die("socket");
        EXPECT_ERR(connect(w, (struct sockaddr *)&sah, sizeof sah), EINPROGRESS);
        blocking_mode(w);
        set_timeout(w, SO_RCVTIMEO, 100000);
        struct late_close lc = {w, 800000};
        pthread_t t;
        pthread_create(&t, NULL, late_close_thread, &lc);
        alarms = 0;
        alarm_in(SA_RESTART, 150000, 0);
        start = seconds();
        errno = 0;
        long rc = i == 0 ? connect(w, (struct sockaddr *)&sah, sizeof sah) : write(w, "x", 1);
        int e = errno;
        double waited = seconds() - start;
        alarm_in(0, 0, 1);
        pthread_join(t, NULL);
        CHECK(rc == -1 && e != EINTR && waited > 0.7,
              "%s waiting for a connect with SO_RCVTIMEO set meanwhile: rc %ld errno %s after %.2f s (%d signals)",
              i == 0 ? "a blocking connect" : "a write", rc, strerror(e), waited, (int)alarms);
    }
    set_timeout(c, SO_RCVTIMEO, 0);

    /* AF_UNSPEC ends the connect in flight; a thread waiting for it
     * gets EPIPE. */
    struct blocking b = {c, (struct sockaddr *)&sah, sizeof sah, -2, 0};
    pthread_t t;
    pthread_create(&t, NULL, blocking_connect, &b);
    usleep(200000);
    CHECK(b.rc == -2, "a blocking connect waits for the one in flight (rc %d)", b.rc);
    CHECK(connect(c, &unspec, sizeof unspec) == 0, "AF_UNSPEC on a socket whose connect is in flight");
    for (int i = 0; i < 100 && b.rc == -2; i++) usleep(10000);
    errno = b.err;
    CHECK(b.rc == -1 && b.err == EPIPE, "the waiting connect ends with EPIPE (rc %d)", b.rc);
    if (b.rc != -2) pthread_join(t, NULL);
    struct pollfd p = {.fd = c, .events = POLLOUT};
    CHECK(poll(&p, 1, 0) == 1 && (p.revents & POLLHUP), "disconnected: hung up (revents %#x)", p.revents);
    char byte;
    EXPECT_ERR(read(c, &byte, 1), ECONNRESET);
    EXPECT_ERR(read(c, &byte, 1), ENOTCONN);
    EXPECT_ERR(write(c, "x", 1), EPIPE);
    CHECK(connect(c, &unspec, sizeof unspec) == 0, "AF_UNSPEC again");
    /* It connects again, with no error left over. */
    CHECK(connect(c, (struct sockaddr *)&sa, sizeof sa) == 0, "a connect after AF_UNSPEC");
    int err = -1;
    socklen_t len = sizeof err;
    CHECK(getsockopt(c, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0, "SO_ERROR %d", err);
    CHECK(echo_check(c, 1000) == 0, "echo after AF_UNSPEC and a connect");
    /* Connected: the state answers first. */
    EXPECT_ERR(connect(c, (struct sockaddr *)&in, sizeof in), EISCONN);
    EXPECT_ERR(connect(c, (struct sockaddr *)&sa, 10), EISCONN);
    EXPECT_ERR(connect(c, NULL, sizeof sa), EFAULT);
    EXPECT_ERR(connect(c, (struct sockaddr *)&sa, 1), EINVAL);
    close(c);

    /* A non-blocking connect that AF_UNSPEC ended: its SO_ERROR is
     * ECONNRESET, and the socket connects again (non-blocking). */
    int d = socket(AF_SERVAL, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (d < 0) die("socket");
    EXPECT_ERR(connect(d, (struct sockaddr *)&sah, sizeof sah), EINPROGRESS);
    CHECK(connect(d, &unspec, sizeof unspec) == 0, "AF_UNSPEC on a non-blocking connect in flight");
    EXPECT_ERR(connect(d, (struct sockaddr *)&sa, sizeof sa), EINPROGRESS);
    connected_in_background(d, (struct sockaddr *)&sa, sizeof sa, "a connect after AF_UNSPEC", 0);
    close(d);

    /* A listener: EISCONN, whatever the address. */
    struct sockaddr_sv mine = sv_addr("c4ec4e");
    int l = socket(AF_SERVAL, SOCK_STREAM, 0);
    CHECK(bind(l, (struct sockaddr *)&mine, sizeof mine) == 0 && listen(l, 4) == 0, "bind and listen");
    EXPECT_ERR(connect(l, (struct sockaddr *)&in, sizeof in), EISCONN);
    EXPECT_ERR(connect(l, (struct sockaddr *)&sa, sizeof sa), EISCONN);
    close(l);
    return failures ? 1 : 0;
}

struct counted { struct blocking b; double t; };
static void *timed_connect(void *arg) {
    struct counted *c = arg;
    double start = seconds();
    blocking_connect(&c->b);
    c->t = seconds() - start;
    return NULL;
}

/* Two threads' blocking connects on one socket, neither with a timeout
 * (the first waits in its own thread for sald's answer): the second waits
 * for the first's outcome, as TCP's (checked against it), through
 * SA_RESTART signals; both return 0 once connected; also on a TCP socket
 * inet mode maps (PORT), which has no placeholder. Two to S2, which the
 * host does not have (and two waiting for a non-blocking connect to it):
 * one gets the error, the other EPIPE, as Linux's (checked against it,
 * with a reset for the SYN). S1 (and
 * the service PORT maps to) and S2 are unreachable until the test starts
 * a host for S1 after "connecting". */
static int connect_twice(const char *s1, int port, const char *s2) {
    struct sockaddr_sv sa1 = sv_addr(s1), sar = sv_addr(s2);
    struct sockaddr_in sin = inet_addr_port(0x0a090909, port);
    int a = socket(AF_SERVAL, SOCK_STREAM, 0), c = socket(AF_INET, SOCK_STREAM, 0);
    int r = socket(AF_SERVAL, SOCK_STREAM, 0), q = socket(AF_SERVAL, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (a < 0 || c < 0 || r < 0 || q < 0) die("socket");
    EXPECT_ERR(connect(q, (struct sockaddr *)&sar, sizeof sar), EINPROGRESS);
    blocking_mode(q);
    struct counted w[8] = {
        {{a, (struct sockaddr *)&sa1, sizeof sa1, -2, 0}, 0},
        {{a, (struct sockaddr *)&sa1, sizeof sa1, -2, 0}, 0},
        {{c, (struct sockaddr *)&sin, sizeof sin, -2, 0}, 0},
        {{c, (struct sockaddr *)&sin, sizeof sin, -2, 0}, 0},
        {{r, (struct sockaddr *)&sar, sizeof sar, -2, 0}, 0},
        {{r, (struct sockaddr *)&sar, sizeof sar, -2, 0}, 0},
        {{q, (struct sockaddr *)&sar, sizeof sar, -2, 0}, 0},
        {{q, (struct sockaddr *)&sar, sizeof sar, -2, 0}, 0},
    };
    pthread_t t[8];
    alarms = 0;
    alarm_in(SA_RESTART, 100000, 0);
    for (int i = 0; i < 8; i += 2) {
        pthread_create(&t[i], NULL, timed_connect, &w[i]);
        usleep(200000);
        pthread_create(&t[i + 1], NULL, timed_connect, &w[i + 1]);
    }
    usleep(300000);
    for (int i = 0; i < 8; i++)
        CHECK(w[i].b.rc == -2, "connect %d waits (rc %d, errno %s)", i, w[i].b.rc, strerror(w[i].b.err));
    say("connecting");
    for (int i = 0; i < 8; i++) pthread_join(t[i], NULL);
    alarm_in(0, 0, 1);
    CHECK(alarms >= 2, "%d signals while they waited", (int)alarms);
    for (int i = 0; i < 4; i++) {
        errno = w[i].b.err;
        CHECK(w[i].b.rc == 0, "connect %d returns 0 once connected (rc %d after %.2f s)", i, w[i].b.rc, w[i].t);
    }
    /* A connect that fails (the host has no such service): one of the
     * two reports the error, the other gets EPIPE, as Linux's (which one
     * is a race). */
    int failed_pipes = (w[4].b.err == EPIPE) + (w[5].b.err == EPIPE);
    int failed_unreach = (w[4].b.err == EHOSTUNREACH) + (w[5].b.err == EHOSTUNREACH);
    CHECK(w[4].b.rc == -1 && w[5].b.rc == -1 && failed_pipes == 1 && failed_unreach == 1,
          "two failed blocking connects: %s and %s", strerror(w[4].b.err), strerror(w[5].b.err));
    close(r);
    /* The same for two waiting for a non-blocking connect, in either
     * order (it was ECONNABORTED for the second). */
    int pipes = (w[6].b.err == EPIPE) + (w[7].b.err == EPIPE);
    int unreach = (w[6].b.err == EHOSTUNREACH) + (w[7].b.err == EHOSTUNREACH);
    CHECK(w[6].b.rc == -1 && w[7].b.rc == -1 && pipes == 1 && unreach == 1,
          "two waiting for a failed non-blocking connect: %s and %s", strerror(w[6].b.err), strerror(w[7].b.err));
    close(q);
    EXPECT_ERR(connect(a, (struct sockaddr *)&sa1, sizeof sa1), EISCONN);
    EXPECT_ERR(connect(c, (struct sockaddr *)&sin, sizeof sin), EISCONN);
    CHECK(echo_check(a, 10000) == 0, "echo on the Serval socket");
    CHECK(echo_check(c, 10000) == 0, "echo on the TCP socket");
    close(a);
    close(c);
    return failures ? 1 : 0;
}

/* The lowest free descriptor number. */
static int lowest_free(void) {
    int fd = open("/dev/null", O_RDONLY);
    if (fd >= 0) close(fd);
    return fd;
}

/* A program that closed its standard streams gets them back from its own
 * calls, as from the kernel's (measured: with 0 and 1 closed, socket()
 * is 0 and the next open() 1); the shim's own descriptors (a
 * placeholder's peer end, control connections for bind, a blocking
 * connect and the connector of non-blocking ones) never take 0-2. What
 * the checks find is kept until stderr is back. */
static int low_fds(const char *sid) {
    int err = fcntl(2, F_DUPFD_CLOEXEC, 100);
    if (err < 0) die("save stderr");
    struct sockaddr_sv sa = sv_addr(sid);
    close(0);
    close(1);
    close(2);
    int l = socket(AF_SERVAL, SOCK_STREAM, 0);
    int after_socket = lowest_free();
    int listening = bind(l, (struct sockaddr *)&sa, sizeof sa) == 0 && listen(l, 4) == 0;
    int after_listen = lowest_free();
    int c = socket(AF_SERVAL, SOCK_STREAM, 0);
    int connected = connect(c, (struct sockaddr *)&sa, sizeof sa) == 0;
    int after_connect = lowest_free();
    int s = accept(l, NULL, NULL);
    char ch = 0;
    int moved = write(c, "x", 1) == 1 && read(s, &ch, 1) == 1 && ch == 'x';
    /* Two numbers free below 3 again: one for the socket, one the
     * connector's connection would take. */
    close(c);
    close(s);
    int d = socket(AF_SERVAL, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int started = connect(d, (struct sockaddr *)&sa, sizeof sa) < 0 && errno == EINPROGRESS;
    int after_nonblock = lowest_free();
    struct pollfd p = {.fd = d, .events = POLLOUT};
    int done = poll(&p, 1, 20000) == 1;
    int e = -1;
    socklen_t el = sizeof e;
    getsockopt(d, SOL_SOCKET, SO_ERROR, &e, &el);
    if (dup2(err, 2) != 2) _exit(3);
    CHECK(l == 0, "socket takes the lowest number (%d)", l);
    CHECK(after_socket == 1, "socket left 1 free (the lowest is %d)", after_socket);
    CHECK(listening, "bind and listen");
    CHECK(after_listen == 1, "bind and listen left 1 free (the lowest is %d)", after_listen);
    CHECK(c == 1 && connected, "the client at 1 connected (%d)", c);
    CHECK(after_connect == 2, "connect left 2 free (the lowest is %d)", after_connect);
    CHECK(s == 2 && moved, "the accepted flow at 2 carries a byte (%d)", s);
    CHECK(d == 1 && started, "a non-blocking connect at 1 started (%d)", d);
    CHECK(after_nonblock == 2, "the connector left 2 free (the lowest is %d)", after_nonblock);
    CHECK(done && e == 0, "the non-blocking connect completed (SO_ERROR %d)", e);
    close(d);
    close(l);
    return failures ? 1 : 0;
}

/* dup2 (or dup3) over the last number of a listener does what close
 * does: the service is unbound at once, though a forked child still holds
 * copies of what the listener's number held (the shim's close shuts the
 * listener's control connection down for that: the process that listened
 * closed it). dup2 used to close the number's file and forget it, so the
 * child's copy of the control connection kept the service bound. */
static int dup2_listener(const char *sid, const char *how) {
    struct sockaddr_sv sa = sv_addr(sid);
    int l = socket(AF_SERVAL, SOCK_STREAM, 0);
    CHECK(bind(l, (struct sockaddr *)&sa, sizeof sa) == 0 && listen(l, 4) == 0, "listen");
    pid_t child = fork();
    if (child == 0) {
        pause();
        _exit(0);
    }
    int other = open("/dev/null", O_RDONLY);
    int over = !strcmp(how, "dup3") ? dup3(other, l, O_CLOEXEC) : dup2(other, l);
    CHECK(over == l, "%s over the listener", how);
    close(other);
    int unbound = 0;
    for (int i = 0; i < 50 && !unbound; i++) {
        int fd = socket(AF_SERVAL, SOCK_STREAM, 0);
        unbound = connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0 && errno == EHOSTUNREACH;
        close(fd);
        if (!unbound) usleep(20000);
    }
    CHECK(unbound, "the service is unbound after %s over the listener's last number", how);
    close(l);
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    return failures ? 1 : 0;
}

/* connect(AF_UNSPEC) on a connected stream disconnects it, as TCP's
 * (measured over loopback): it returns 0; the next read is ECONNRESET,
 * then ENOTCONN; a write is EPIPE (MSG_NOSIGNAL); SO_ERROR is then 0;
 * getpeername is ENOTCONN; poll shows it hung up; the peer's flow ends
 * (with a reset, as TCP's: see unspec_peer); a second AF_UNSPEC returns 0;
 * and the socket connects again. It used to be EISCONN, the flow left as
 * it was. */
static int unspec(const char *sid) {
    struct sockaddr_sv sa = sv_addr(sid);
    int l = socket(AF_SERVAL, SOCK_STREAM, 0);
    CHECK(bind(l, (struct sockaddr *)&sa, sizeof sa) == 0 && listen(l, 4) == 0, "listen");
    int c = stream_to(sid);
    int s = accept(l, NULL, NULL);
    CHECK(s >= 0, "accept");
    CHECK(write_all(s, (const unsigned char *)REPLY, strlen(REPLY)) == 0, "reply");
    struct pollfd p = {.fd = c, .events = POLLIN};
    CHECK(poll(&p, 1, 20000) == 1, "the reply arrives");
    struct sockaddr un = {.sa_family = AF_UNSPEC};
    CHECK(connect(c, &un, sizeof un) == 0, "connect(AF_UNSPEC) on a connected stream (errno %d)", errno);
    p.events = POLLIN | POLLOUT;
    CHECK(poll(&p, 1, 0) == 1 && (p.revents & POLLHUP), "hung up (revents %#x)", p.revents);
    char buf[64];
    EXPECT_ERR(read(c, buf, sizeof buf), ECONNRESET);
    EXPECT_ERR(read(c, buf, sizeof buf), ENOTCONN);
    EXPECT_ERR(send(c, "x", 1, MSG_NOSIGNAL), EPIPE);
    int e = -1;
    socklen_t el = sizeof e;
    CHECK(getsockopt(c, SOL_SOCKET, SO_ERROR, &e, &el) == 0 && e == 0, "SO_ERROR %d", e);
    struct sockaddr_sv peer;
    socklen_t pl = sizeof peer;
    EXPECT_ERR(getpeername(c, (struct sockaddr *)&peer, &pl), ENOTCONN);
    p.fd = s;
    p.events = POLLIN;
    CHECK(poll(&p, 1, 20000) == 1, "the peer's flow ends");
    CHECK(read(s, buf, sizeof buf) <= 0, "the peer reads the end");
    close(s);
    CHECK(connect(c, &un, sizeof un) == 0, "a second connect(AF_UNSPEC)");
    CHECK(connect(c, (struct sockaddr *)&sa, sizeof sa) == 0, "connect again (errno %d)", errno);
    int s2 = accept(l, NULL, NULL);
    CHECK(s2 >= 0, "accept the new flow");
    CHECK(write_all(c, (const unsigned char *)REQUEST, strlen(REQUEST)) == 0, "request");
    size_t got = 0;
    while (got < strlen(REQUEST)) {
        ssize_t n = read(s2, buf + got, sizeof buf - got);
        if (n <= 0) break;
        got += (size_t)n;
    }
    CHECK(got == strlen(REQUEST) && !memcmp(buf, REQUEST, got), "the new flow carries the request");
    close(s2);
    close(c);
    close(l);
    return failures ? 1 : 0;
}

/* connect(AF_UNSPEC) on a connected stream registered with epoll while a
 * copy of it (dup here; a forked child's does the same) keeps its flow
 * open: epoll reports the number once, and EPOLL_CTL_DEL leaves nothing,
 * as for TCP's, whose socket the disconnect keeps. The swap that puts the
 * placeholder at the number re-added the registration for the placeholder
 * but left the flow's, which epoll keeps while a copy holds the flow: a
 * second event for the number, hung up for good, with the program's data,
 * which no EPOLL_CTL_DEL on the number could remove. */
static int unspec_epoll(const char *sid) {
    int l = stream_listener(sid);
    int c = stream_to(sid);
    int s = accept(l, NULL, NULL);
    CHECK(s >= 0, "accept");
    int copy = dup(c);
    CHECK(copy >= 0, "dup");
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 0x5eed};
    CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev) == 0, "EPOLL_CTL_ADD");
    CHECK(write_all(s, (const unsigned char *)REPLY, strlen(REPLY)) == 0, "reply");
    struct epoll_event got[8];
    CHECK(epoll_wait(ep, got, 8, 20000) == 1, "the reply arrives");
    struct sockaddr un = {.sa_family = AF_UNSPEC};
    CHECK(connect(c, &un, sizeof un) == 0, "connect(AF_UNSPEC) (errno %d)", errno);
    int n = epoll_wait(ep, got, 8, 0);
    CHECK(n == 1 && got[0].data.u64 == 0x5eed, "one event for the number (%d)", n);
    CHECK(epoll_ctl(ep, EPOLL_CTL_DEL, c, NULL) == 0, "EPOLL_CTL_DEL (errno %d)", errno);
    n = epoll_wait(ep, got, 8, 0);
    CHECK(n == 0, "nothing registered after EPOLL_CTL_DEL (%d)", n);
    close(ep);
    close(copy);
    close(s);
    close(c);
    close(l);
    return failures ? 1 : 0;
}

static int unspec_reader_fd;
static ssize_t unspec_reader_got;
static int unspec_reader_errno;

static void *unspec_reader_thread(void *arg) {
    (void)arg;
    char buf[64];
    unspec_reader_got = read(unspec_reader_fd, buf, sizeof buf);
    unspec_reader_errno = errno;
    return NULL;
}

/* connect(AF_UNSPEC) on a connected stream while another thread waits in
 * read on it: that read fails with EPIPE, the next is ECONNRESET, then
 * ENOTCONN, as TCP's (measured over loopback, Linux 6.18: sk_wait_data
 * fails a wait that a tcp_disconnect interrupted, and sk_err stays for
 * the next read). The waiting read used to return 0, as at the peer's end
 * of stream. (A reader that had not reached its read yet reads
 * ECONNRESET, then ENOTCONN, which the checks below allow.) */
static int unspec_reader(const char *sid) {
    int l = stream_listener(sid);
    int c = stream_to(sid);
    int s = accept(l, NULL, NULL);
    CHECK(s >= 0, "accept");
    unspec_reader_fd = c;
    pthread_t t;
    pthread_create(&t, NULL, unspec_reader_thread, NULL);
    usleep(200 * 1000);
    struct sockaddr un = {.sa_family = AF_UNSPEC};
    CHECK(connect(c, &un, sizeof un) == 0, "connect(AF_UNSPEC) (errno %d)", errno);
    pthread_join(t, NULL);
    CHECK(unspec_reader_got == -1 && (unspec_reader_errno == EPIPE || unspec_reader_errno == ECONNRESET),
          "the waiting read: %zd, errno %d", unspec_reader_got, unspec_reader_errno);
    char buf[64];
    if (unspec_reader_errno == EPIPE) EXPECT_ERR(read(c, buf, sizeof buf), ECONNRESET);
    EXPECT_ERR(read(c, buf, sizeof buf), ENOTCONN);
    close(s);
    close(c);
    close(l);
    return failures ? 1 : 0;
}

/* connect(AF_UNSPEC) on a connected stream resets the flow, as TCP's
 * (measured over loopback, Linux 6.18: the peer's poll shows POLLERR, its
 * read is ECONNRESET, then 0, a write EPIPE), also when the peer shut its
 * writing down first (its FIN read: the client in CLOSE_WAIT). The peer
 * used to read end of file (sald finished the flow with a FIN), and after
 * its own shutdown could not have read a reset either. */
static int unspec_peer(const char *sid) {
    int l = stream_listener(sid);
    for (int closing = 0; closing < 2; closing++) {
        int c = stream_to(sid);
        int s = accept(l, NULL, NULL);
        CHECK(s >= 0, "accept");
        char buf[64];
        if (closing) {
            CHECK(shutdown(s, SHUT_WR) == 0, "the peer's shutdown(SHUT_WR)");
            CHECK(read(c, buf, sizeof buf) == 0, "the peer's FIN");
        }
        struct sockaddr un = {.sa_family = AF_UNSPEC};
        CHECK(connect(c, &un, sizeof un) == 0, "connect(AF_UNSPEC) (errno %d)", errno);
        CHECK(hung_up(s, 20000), "the peer's flow ends");
        EXPECT_ERR(read(s, buf, sizeof buf), ECONNRESET);
        CHECK(read(s, buf, sizeof buf) == 0, "then end of file");
        EXPECT_ERR(send(s, "x", 1, MSG_NOSIGNAL), EPIPE);
        close(s);
        close(c);
    }
    close(l);
    return failures ? 1 : 0;
}

static int unspec_acceptor_fd;
static int unspec_acceptor_got;
static int unspec_acceptor_errno;

static void *unspec_acceptor(void *arg) {
    (void)arg;
    unspec_acceptor_got = accept(unspec_acceptor_fd, NULL, NULL);
    unspec_acceptor_errno = errno;
    return NULL;
}

/* connect(AF_UNSPEC) on a listener, as TCP's (measured over loopback,
 * Linux 6.18): 0, and the listener stops listening and stays bound: an
 * accept waiting in another thread fails with EINVAL, and so does any
 * accept after; the flows it held established but not accepted are reset
 * (their reads: ECONNRESET), whether they sent anything or not;
 * SO_ACCEPTCONN is 0; the name stays; a read is ENOTCONN, a write EPIPE;
 * poll shows it hung up; another bind of its service is EADDRINUSE; a
 * connect to it is refused (ECONNREFUSED); a connect from it is EINVAL, a
 * second AF_UNSPEC 0; and listen makes it listen again, also for its
 * copy (dup). It used to be EISCONN, the listener left listening. */
static int unspec_listener(const char *sid) {
    struct sockaddr_sv sa = sv_addr(sid);
    int l = socket(AF_SERVAL, SOCK_STREAM, 0);
    CHECK(bind(l, (struct sockaddr *)&sa, sizeof sa) == 0 && listen(l, 8) == 0, "listen");
    struct sockaddr un = {.sa_family = AF_UNSPEC};
    /* At once after listen, and listen at once after, before sald's
     * feeder of the accept queue may have run. */
    for (int i = 0; i < 3; i++) {
        CHECK(connect(l, &un, sizeof un) == 0, "connect(AF_UNSPEC) at once (%d, errno %d)", i, errno);
        CHECK(hung_up(l, 5000), "the accept queue hangs up (%d)", i);
        CHECK(listen(l, 8) == 0, "listen again at once (%d, errno %d)", i, errno);
    }
    unspec_acceptor_fd = l;
    pthread_t t;
    pthread_create(&t, NULL, unspec_acceptor, NULL);
    usleep(200 * 1000);
    CHECK(connect(l, &un, sizeof un) == 0, "connect(AF_UNSPEC) on a listener (errno %d)", errno);
    pthread_join(t, NULL);
    CHECK(unspec_acceptor_got == -1 && unspec_acceptor_errno == EINVAL,
          "the waiting accept: %d, errno %d", unspec_acceptor_got, unspec_acceptor_errno);
    CHECK(listen(l, 8) == 0, "listen again (errno %d)", errno);
    int copy = dup(l);
    int talker = stream_to(sid);
    CHECK(write_all(talker, (const unsigned char *)REQUEST, strlen(REQUEST)) == 0, "request");
    int silent = stream_to(sid);
    struct pollfd p = {.fd = l, .events = POLLIN};
    CHECK(poll(&p, 1, 20000) == 1, "flows wait to be accepted");
    usleep(100 * 1000);
    CHECK(connect(l, &un, sizeof un) == 0, "connect(AF_UNSPEC) with flows queued (errno %d)", errno);
    char buf[64];
    CHECK(hung_up(talker, 20000), "the queued flow that sent is reset");
    EXPECT_ERR(read(talker, buf, sizeof buf), ECONNRESET);
    CHECK(hung_up(silent, 20000), "the silent queued flow is reset");
    EXPECT_ERR(read(silent, buf, sizeof buf), ECONNRESET);
    close(talker);
    close(silent);
    int on = -1;
    socklen_t len = sizeof on;
    CHECK(getsockopt(l, SOL_SOCKET, SO_ACCEPTCONN, &on, &len) == 0 && on == 0, "SO_ACCEPTCONN %d", on);
    struct sockaddr_sv name;
    len = sizeof name;
    CHECK(getsockname(l, (struct sockaddr *)&name, &len) == 0 && !memcmp(&name.sv_srvid, &sa.sv_srvid, sizeof sa.sv_srvid),
          "the name stays");
    EXPECT_ERR(accept(l, NULL, NULL), EINVAL);
    EXPECT_ERR(accept(copy, NULL, NULL), EINVAL);
    EXPECT_ERR(read(l, buf, sizeof buf), ENOTCONN);
    EXPECT_ERR(send(l, "x", 1, MSG_NOSIGNAL), EPIPE);
    CHECK(hung_up(l, 20000), "poll shows the listener hung up");
    int other = socket(AF_SERVAL, SOCK_STREAM, 0);
    EXPECT_ERR(bind(other, (struct sockaddr *)&sa, sizeof sa), EADDRINUSE);
    close(other);
    int refused = socket(AF_SERVAL, SOCK_STREAM, 0);
    EXPECT_ERR(connect(refused, (struct sockaddr *)&sa, sizeof sa), ECONNREFUSED);
    close(refused);
    EXPECT_ERR(connect(l, (struct sockaddr *)&sa, sizeof sa), EINVAL);
    CHECK(connect(l, &un, sizeof un) == 0, "a second connect(AF_UNSPEC)");
    CHECK(listen(l, 8) == 0, "listen again (errno %d)", errno);
    on = -1;
    len = sizeof on;
    CHECK(getsockopt(l, SOL_SOCKET, SO_ACCEPTCONN, &on, &len) == 0 && on == 1, "SO_ACCEPTCONN %d", on);
    for (int i = 0; i < 2; i++) {
        int c = stream_to(sid);
        int s = accept(i ? copy : l, NULL, NULL);
        CHECK(s >= 0, "accept once listening again (%s)", i ? "the copy" : "the listener");
        char ch = 0;
        CHECK(write(c, "x", 1) == 1 && read(s, &ch, 1) == 1 && ch == 'x', "the new flow carries a byte");
        close(s);
        close(c);
    }
    close(copy);
    close(l);
    return failures ? 1 : 0;
}

static int unspec_race_listener;

static void *unspec_race_acceptor(void *arg) {
    (void)arg;
    for (;;) {
        int s = accept(unspec_race_listener, NULL, NULL);
        if (s < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            return NULL;
        }
        close(s);
    }
}

/* While set, a SIGALRM stalls the main thread where it lands (10 ms), for
 * a connect in flight to complete there. */
static volatile sig_atomic_t stretching;
static volatile sig_atomic_t stretched;

static void stretch(int sig) {
    (void)sig;
    if (!stretching) return;
    stretched++;
    struct timespec ts = {0, 10 * 1000 * 1000};
    nanosleep(&ts, NULL);
}

/* connect(AF_UNSPEC) on a socket whose non-blocking connect is in flight,
 * N times, each stalled (a signal handler that sleeps 10 ms, long enough
 * for the connect to complete meanwhile) at a point that moves through
 * the call, 0 to 40 us in: it disconnects the socket whatever it found
 * (0, then getpeername is ENOTCONN), as TCP's. A connect that completed
 * between the shim's look at the socket and its lock found no placeholder
 * made for a connected socket, and the call was answered as a connected
 * socket's connect (0 from the first after a background connect, EISCONN
 * after), the socket left connected. */
static int unspec_race(const char *sid, int n) {
    struct sockaddr_sv sa = sv_addr(sid);
    int l = socket(AF_SERVAL, SOCK_STREAM, 0);
    CHECK(bind(l, (struct sockaddr *)&sa, sizeof sa) == 0 && listen(l, 64) == 0, "listen");
    /* The signal is for this thread alone: the others (the acceptor, and
     * the shim's connector, started by the first connect below) block it. */
    sigset_t alarm_set;
    sigemptyset(&alarm_set);
    sigaddset(&alarm_set, SIGALRM);
    pthread_sigmask(SIG_BLOCK, &alarm_set, NULL);
    unspec_race_listener = l;
    pthread_t t;
    pthread_create(&t, NULL, unspec_race_acceptor, NULL);
    int first = socket(AF_SERVAL, SOCK_STREAM | SOCK_NONBLOCK, 0);
    EXPECT_ERR(connect(first, (struct sockaddr *)&sa, sizeof sa), EINPROGRESS);
    struct pollfd p = {.fd = first, .events = POLLOUT};
    CHECK(poll(&p, 1, 20000) == 1, "the first connect completes");
    close(first);
    struct sigaction act = {.sa_handler = stretch, .sa_flags = SA_RESTART};
    sigaction(SIGALRM, &act, NULL);
    pthread_sigmask(SIG_UNBLOCK, &alarm_set, NULL);
    for (int i = 0; i < n; i++) {
        int fd = socket(AF_SERVAL, SOCK_STREAM | SOCK_NONBLOCK, 0);
        if (fd < 0) die("socket");
        EXPECT_ERR(connect(fd, (struct sockaddr *)&sa, sizeof sa), EINPROGRESS);
        struct sockaddr un = {.sa_family = AF_UNSPEC};
        struct itimerval at = {.it_value = {0, 1 + i % 40}};
        stretching = 1;
        setitimer(ITIMER_REAL, &at, NULL);
        errno = 0;
        int rc = connect(fd, &un, sizeof un);
        stretching = 0;
        CHECK(rc == 0, "connect(AF_UNSPEC) %d: %d (errno %d)", i, rc, errno);
        struct sockaddr_sv peer;
        socklen_t pl = sizeof peer;
        int named = getpeername(fd, (struct sockaddr *)&peer, &pl) == 0;
        CHECK(!named, "connect(AF_UNSPEC) %d left the socket connected", i);
        close(fd);
        if (failures > 5) break;
    }
    printf("%d of %d calls stalled\n", (int)stretched, n);
    /* The accept waiting in the thread ends with the listener's shutdown
     * (a close alone leaves it waiting on Linux's TCP, and in-process). */
    shutdown(l, SHUT_RDWR);
    close(l);
    pthread_join(t, NULL);
    return failures ? 1 : 0;
}

/* shutdown(SHUT_RD), then the peer sends, then close: the flow is reset,
 * as TCP's (measured over loopback: the peer's next read is ECONNRESET),
 * whose close finds the bytes unread. sald threw them away (the socket
 * takes no more after SHUT_RD) and closed the flow with a FIN, so the
 * peer read end of file, as if they had been read. */
static int shut_rd_close(const char *sid) {
    int l = stream_listener(sid);
    int c = stream_to(sid);
    int s = accept(l, NULL, NULL);
    CHECK(s >= 0, "accept");
    CHECK(shutdown(c, SHUT_RD) == 0, "SHUT_RD");
    CHECK(write_all(s, (const unsigned char *)REPLY, strlen(REPLY)) == 0, "reply");
    /* The reply reaches the client's socket, which takes no more. */
    usleep(200 * 1000);
    CHECK(close(c) == 0, "close");
    struct pollfd p = {.fd = s, .events = POLLIN};
    CHECK(poll(&p, 1, 20000) == 1, "the flow ends");
    char buf[64];
    EXPECT_ERR(read(s, buf, sizeof buf), ECONNRESET);
    close(s);
    close(l);
    return failures ? 1 : 0;
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    if (argc < 3) {
        fprintf(stderr, "usage: see the top of serval_test.c\n");
        return 2;
    }
    const char *cmd = argv[1], *sid = argv[2];
    long n = argc > 3 ? atol(argv[3]) : 1;
    if (!strcmp(cmd, "stream-server")) return stream_server(sid, (int)n, argc > 4 ? argv[4] : NULL);
    if (!strcmp(cmd, "stream-client")) return stream_client(sid, (size_t)n);
    if (!strcmp(cmd, "nonblock-client")) return nonblock_client(sid, (size_t)n);
    if (!strcmp(cmd, "stream-queues") && argc > 3) return stream_queues(sid, argv[3]);
    if (!strcmp(cmd, "nonblock-fail")) return nonblock_fail(sid);
    if (!strcmp(cmd, "nonblock-orphan")) return nonblock_orphan(sid);
    if (!strcmp(cmd, "nonblock-many")) return nonblock_many(sid, (int)n, argc > 4 ? (size_t)atol(argv[4]) : 1000);
    if (!strcmp(cmd, "reuse-client")) return reuse_client(sid, (size_t)n);
    if (!strcmp(cmd, "fork-storm")) return fork_storm(sid, (int)n);
    if (!strcmp(cmd, "many")) return many(sid, (int)n, argc > 4 ? (size_t)atol(argv[4]) : 1000);
    if (!strcmp(cmd, "dgram-server")) return dgram_server(sid, (int)n);
    if (!strcmp(cmd, "dgram-client")) return dgram_client(sid, (int)n);
    if (!strcmp(cmd, "dgram-msg-server")) return dgram_msg_server(sid, (int)n);
    if (!strcmp(cmd, "dgram-msg-client")) return dgram_msg_client(sid);
    if (!strcmp(cmd, "dgram-flow-server")) return dgram_flow_server(sid, (int)n);
    if (!strcmp(cmd, "dgram-mmsg-server")) return dgram_mmsg_server(sid, (int)n);
    if (!strcmp(cmd, "dgram-mmsg-client")) return dgram_mmsg_client(sid);
    if (!strcmp(cmd, "dgram-flow-client")) return dgram_flow_client(sid, argc > 3 ? argv[3] : NULL);
    if (!strcmp(cmd, "dgram-listener")) return dgram_listener(sid);
    if (!strcmp(cmd, "retry") && argc > 3) return retry(sid, argv[3]);
    if (!strcmp(cmd, "inet-client")) return inet_client(atoi(sid), argc > 3 ? (size_t)n : 1000);
    if (!strcmp(cmd, "inet-retry") && argc > 3) return inet_retry(atoi(sid), atoi(argv[3]));
    if (!strcmp(cmd, "dup")) return dup_copies(sid);
    if (!strcmp(cmd, "listen-fork")) return listen_fork(sid, (int)n);
    if (!strcmp(cmd, "backlog")) return backlog_fill(sid, (int)n, argc > 4 ? atoi(argv[4]) : -1);
    if (!strcmp(cmd, "reset-server") && argc > 4) return reset_server(sid, argv[3], atoi(argv[4]));
    if (!strcmp(cmd, "reset-client") && argc > 4) return reset_client(sid, argv[3], argv[4]);
    if (!strcmp(cmd, "write-until-reset") && argc > 3)
        return write_until_reset(sid, (pid_t)atoi(argv[3]));
    if (!strcmp(cmd, "connect-eintr") && argc > 5) return connect_eintr(sid, atoi(argv[3]), argv[4], argv[5]);
    if (!strcmp(cmd, "connect-timeout") && argc > 5) return connect_timeout(sid, atoi(argv[3]), argv[4], argv[5]);
    if (!strcmp(cmd, "connect-timeout-many")) return connect_timeout_many(sid, (int)n);
    if (!strcmp(cmd, "connect-checks") && argc > 3) return connect_checks(sid, argv[3]);
    if (!strcmp(cmd, "connect-twice") && argc > 4) return connect_twice(sid, atoi(argv[3]), argv[4]);
    if (!strcmp(cmd, "connect-waits") && argc > 4) return connect_waits(sid, atoi(argv[3]), argv[4]);
    if (!strcmp(cmd, "rcvtimeo-connecting")) return rcvtimeo_connecting(sid);
    if (!strcmp(cmd, "connect-race")) return connect_race(sid, (int)n);
    if (!strcmp(cmd, "read-timeout-connecting")) return read_timeout_connecting(sid);
    if (!strcmp(cmd, "hz-emfile")) return hz_emfile(sid);
    if (!strcmp(cmd, "fork-connecting")) return fork_connecting(sid);
    if (!strcmp(cmd, "accept-timeout") && argc > 4) return accept_timeout(sid, atoi(argv[3]), argv[4]);
    if (!strcmp(cmd, "exec-listener") && argc > 4) return exec_listener(sid, argv[3], argv[4]);
    if (!strcmp(cmd, "exec-accept") && argc > 4) return exec_accept(sid, (int)n, atoi(argv[4]));
    if (!strcmp(cmd, "exec-rebind") && argc > 4) return exec_rebind(sid, atoi(argv[4]));
    if (!strcmp(cmd, "exec-again") && argc > 5) return exec_again(sid, argv[3], atoi(argv[4]), atoi(argv[5]));
    if (!strcmp(cmd, "exec-full-dup")) return exec_full_dup(sid);
    if (!strcmp(cmd, "exec-full-dup-check") && argc > 3) return exec_full_dup_check(sid, atoi(argv[3]));
    if (!strcmp(cmd, "exec-carried-check") && argc > 3) return exec_carried_check(sid, atoi(argv[3]));
    if (!strcmp(cmd, "exec-dgram")) return exec_dgram(sid, argc > 3 ? argv[3] : "1");
    if (!strcmp(cmd, "exec-many-dgram")) return exec_many_dgram(sid);
    if (!strcmp(cmd, "exec-many-dgram-check") && argc > 5)
        return exec_many_dgram_check(sid, atoi(argv[3]), atoi(argv[4]), atoi(argv[5]));
    if (!strcmp(cmd, "exec-dgram-echo") && argc > 5)
        return exec_dgram_echo(sid, (int)n, atoi(argv[4]), atoi(argv[5]));
    if (!strcmp(cmd, "exec-garbage")) return exec_garbage();
    if (!strcmp(cmd, "exec-garbage-check")) return exec_garbage_check(atoi(sid), atoi(argv[3]));
    if (!strcmp(cmd, "exec-orphan")) return exec_orphan(sid);
    if (!strcmp(cmd, "exec-orphan-hold")) return exec_orphan_hold(atoi(sid));
    if (!strcmp(cmd, "exec-stdio")) return exec_stdio(sid, argc > 3 ? argv[3] : "1");
    if (!strcmp(cmd, "exec-listen-race")) return exec_listen_race(sid);
    if (!strcmp(cmd, "exec-spawn-moved") && argc > 4) return exec_spawn_moved(sid, argv[3], atoi(argv[4]));
    if (!strcmp(cmd, "exec-spawn-moved-dgram") && argc > 3) return exec_spawn_moved_dgram(sid, argv[3]);
    if (!strcmp(cmd, "exec-dup2-over")) return exec_dup2_over(sid);
    if (!strcmp(cmd, "exec-dup2-over-check") && argc > 4) return exec_dup2_over_check(sid, atoi(argv[4]));
    if (!strcmp(cmd, "misuse")) return misuse(sid);
    if (!strcmp(cmd, "low-fds")) return low_fds(sid);
    if (!strcmp(cmd, "dup2-listener") && argc > 3) return dup2_listener(sid, argv[3]);
    if (!strcmp(cmd, "unspec")) return unspec(sid);
    if (!strcmp(cmd, "unspec-epoll")) return unspec_epoll(sid);
    if (!strcmp(cmd, "unspec-reader")) return unspec_reader(sid);
    if (!strcmp(cmd, "unspec-peer")) return unspec_peer(sid);
    if (!strcmp(cmd, "unspec-listener")) return unspec_listener(sid);
    if (!strcmp(cmd, "unspec-race")) return unspec_race(sid, (int)n);
    if (!strcmp(cmd, "shut-rd-close")) return shut_rd_close(sid);
    if (!strcmp(cmd, "nodaemon")) return nodaemon(sid);
    fprintf(stderr, "unknown subcommand %s\n", cmd);
    return 2;
}
