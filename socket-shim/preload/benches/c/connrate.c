/*
 * connrate: connection setup cost, the same program on kernel TCP and
 * (under serval-run --map) on Serval streams.
 *
 *   connrate server PORT THREADS
 *       listens on PORT; THREADS threads each accept a connection, echo
 *       what it sends until end of file, close it, and accept the next.
 *   connrate client ADDR PORT PARALLEL MILLIS [nonblock]
 *       PARALLEL threads, each for MILLIS ms: socket, connect, write 64
 *       bytes, read the 64 bytes back, close. With "nonblock" the connect
 *       is non-blocking: EINPROGRESS, poll for POLLOUT, SO_ERROR, then the
 *       echo on the socket made blocking again. Prints one line:
 *       "done N errors E p50_us X p99_us Y elapsed_us Z"
 *       where the percentiles are of connect + echo, per connection.
 *
 * Plain POSIX sockets (AF_INET), no Serval API: the point is an unmodified
 * program.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MESSAGE 64
#define MAX_SAMPLES (1 << 20)

static uint64_t now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static int full_write(int fd, const char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

static int full_read(int fd, char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = read(fd, buf, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

/* --- server ------------------------------------------------------------ */

static void *serve(void *arg) {
    int listener = *(int *)arg;
    char buf[4096];
    for (;;) {
        int fd = accept(listener, NULL, NULL);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED || errno == EMFILE) continue;
            perror("accept");
            return NULL;
        }
        for (;;) {
            ssize_t n = read(fd, buf, sizeof buf);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0 || full_write(fd, buf, (size_t)n) < 0) break;
        }
        close(fd);
    }
}

static int server(int port, int threads) {
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    if (listener < 0) { perror("socket"); return 1; }
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    if (bind(listener, (struct sockaddr *)&sin, sizeof sin) < 0) { perror("bind"); return 1; }
    if (listen(listener, 1024) < 0) { perror("listen"); return 1; }
    printf("listening\n");
    fflush(stdout);
    pthread_t tid;
    for (int i = 1; i < threads; i++) pthread_create(&tid, NULL, serve, &listener);
    serve(&listener);
    return 1;
}

/* --- client ------------------------------------------------------------ */

struct worker {
    pthread_t tid;
    int nonblock;
    struct sockaddr_in to;
    uint64_t until;
    uint32_t *samples;
    size_t count, cap, errors;
};

/* connect(2) the way an event-driven program does: non-blocking, then
 * wait for writability and read SO_ERROR. Leaves the socket blocking. */
static int connect_nonblocking(int fd, const struct sockaddr_in *to) {
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) return -1;
    if (connect(fd, (const struct sockaddr *)to, sizeof *to) == 0) return fcntl(fd, F_SETFL, flags);
    if (errno != EINPROGRESS) return -1;
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    int n;
    do n = poll(&p, 1, 10000); while (n < 0 && errno == EINTR);
    if (n != 1) return -1;
    int err = -1;
    socklen_t len = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err != 0) return -1;
    return fcntl(fd, F_SETFL, flags);
}

static void *run(void *arg) {
    struct worker *w = arg;
    char out[MESSAGE], in[MESSAGE];
    memset(out, 'x', sizeof out);
    while (now_us() < w->until) {
        uint64_t start = now_us();
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0) { w->errors++; continue; }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        int ok = (w->nonblock ? connect_nonblocking(fd, &w->to)
                              : connect(fd, (struct sockaddr *)&w->to, sizeof w->to)) == 0
            && full_write(fd, out, sizeof out) == 0
            && full_read(fd, in, sizeof in) == 0
            && memcmp(in, out, sizeof in) == 0;
        close(fd);
        if (!ok) { w->errors++; continue; }
        if (w->count < w->cap) w->samples[w->count] = (uint32_t)(now_us() - start);
        w->count++;
    }
    return NULL;
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static int client(const char *addr, int port, int parallel, int millis, int nonblock) {
    struct worker *workers = calloc((size_t)parallel, sizeof *workers);
    size_t cap = MAX_SAMPLES / (size_t)parallel;
    uint64_t start = now_us();
    for (int i = 0; i < parallel; i++) {
        struct worker *w = &workers[i];
        w->nonblock = nonblock;
        w->to.sin_family = AF_INET;
        w->to.sin_port = htons((uint16_t)port);
        if (inet_pton(AF_INET, addr, &w->to.sin_addr) != 1) { fprintf(stderr, "bad address\n"); return 2; }
        w->until = start + (uint64_t)millis * 1000u;
        w->cap = cap;
        w->samples = malloc(cap * sizeof *w->samples);
        pthread_create(&w->tid, NULL, run, w);
    }
    size_t done = 0, errors = 0, kept = 0;
    for (int i = 0; i < parallel; i++) {
        pthread_join(workers[i].tid, NULL);
        done += workers[i].count;
        errors += workers[i].errors;
    }
    uint64_t elapsed = now_us() - start;
    uint32_t *all = malloc((done + 1) * sizeof *all);
    for (int i = 0; i < parallel; i++) {
        size_t n = workers[i].count < workers[i].cap ? workers[i].count : workers[i].cap;
        memcpy(all + kept, workers[i].samples, n * sizeof *all);
        kept += n;
    }
    qsort(all, kept, sizeof *all, cmp_u32);
    uint32_t p50 = kept ? all[kept / 2] : 0, p99 = kept ? all[kept * 99 / 100] : 0;
    printf("done %zu errors %zu p50_us %u p99_us %u elapsed_us %llu\n", done, errors, p50, p99,
           (unsigned long long)elapsed);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 4 && strcmp(argv[1], "server") == 0)
        return server(atoi(argv[2]), atoi(argv[3]));
    if ((argc == 6 || (argc == 7 && strcmp(argv[6], "nonblock") == 0)) && strcmp(argv[1], "client") == 0)
        return client(argv[2], atoi(argv[3]), atoi(argv[4]), atoi(argv[5]), argc == 7);
    fprintf(stderr, "usage: connrate server PORT THREADS | client ADDR PORT PARALLEL MILLIS [nonblock]\n");
    return 2;
}
