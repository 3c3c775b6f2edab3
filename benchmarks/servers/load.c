/*
 * A C load generator with the semantics of `netecho bench` (one thread,
 * epoll, one message in flight per connection, every echo compared byte for
 * byte). benchmarks/run.py compiles it with the system's cc into a temporary
 * directory at run time and uses it instead of the Python loop, whose own
 * per-round-trip cost (a few microseconds) would otherwise cap what the
 * fastest servers can show:
 *
 *     cc -O2 -o load load.c
 *     ./load tcp 127.0.0.1 1234 --connections 10 --size 1024 --duration 3 --warmup 0.3
 *     ./load udp 127.0.0.1 1234 ...      ./load unix /path/to/sock ...
 *
 * Prints one JSON object, with the keys `netecho bench --json` prints
 * (round_trips_per_s, latency_ms {p50,p90,p99,max}, errors, error_kinds...).
 * Exits 100 with one line on stderr when the target cannot be reached.
 *
 * Errors, never counted as round trips: "reset", "closed", "corrupt",
 * "long" (more bytes than were sent), "timeout" (stream: no complete echo in
 * --timeout), "connect"; UDP: "lost" (no echo in --timeout), "short", "long",
 * "corrupt", "refused". An errored stream connection is closed and opened
 * again. A late UDP echo of a datagram already counted lost (same bytes,
 * older sequence number) is ignored. Every payload is pseudo-random and
 * different per connection, with a sequence number in its first 8 bytes.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAXCONN 10000
#define HIST_US 2000000 /* latency histogram: 1 us buckets up to 2 s */

enum { TCP, UDP, UNIX_ };
enum { E_RESET, E_CLOSED, E_CORRUPT, E_LONG, E_TIMEOUT, E_CONNECT, E_LOST, E_SHORT, E_REFUSED, E_N };
static const char *error_names[E_N] = {"reset", "closed", "corrupt", "long", "timeout",
                                       "connect", "lost", "short", "refused"};

struct conn {
    int fd, dead;
    uint64_t seq;
    unsigned char *body, *expect, *buf;
    size_t got, unsent_off; /* stream: bytes received; bytes of expect sent */
    double t0;
};

static int transport, nconn = 10, ep;
static size_t size = 1024, stamp;
static double duration = 3, warmup = 0.3, timeout_s = -1;
static struct sockaddr_storage addr;
static socklen_t addrlen;
static char target[300];
static struct conn conns[MAXCONN];
static uint32_t *hist;
static double max_latency;
static uint64_t round_trips, errors[E_N];
static int counting;
static unsigned char udpbuf[65536];

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void fail_usage(const char *what) {
    fprintf(stderr, "load: %s\nusage: load tcp|udp HOST PORT | unix PATH [--connections C] [--size S] "
            "[--duration D] [--warmup W] [--timeout T]\n", what);
    exit(2);
}

static void error_(int kind) { if (counting) errors[kind]++; }

static void record(double seconds) {
    if (!counting) return;
    round_trips++;
    long us = (long)(seconds * 1e6);
    if (us < 0) us = 0;
    if (us >= HIST_US) us = HIST_US - 1;
    hist[us]++;
    if (seconds > max_latency) max_latency = seconds;
}

/* xorshift, seeded per connection: every connection's bytes differ. */
static void fill(unsigned char *p, size_t n, uint64_t seed) {
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        p[i] = (unsigned char)(x >> 24);
    }
}

static void restamp(struct conn *c) {
    c->seq++;
    memcpy(c->expect, c->body, size);
    for (size_t i = 0; i < stamp; i++) c->expect[i] = (unsigned char)(c->seq >> (8 * i));
}

static int open_socket(void) {
    int type = transport == UDP ? SOCK_DGRAM : SOCK_STREAM;
    int fd = socket(addr.ss_family, type, 0), one = 1;
    if (fd < 0) return -1;
    for (int tries = 0;; tries++) {
        if (connect(fd, (struct sockaddr *)&addr, addrlen) == 0) break;
        /* A Unix socket's full backlog answers EAGAIN at once: retry (bounded). */
        if (errno == EAGAIN && tries < 5000) { usleep(1000); continue; }
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    if (transport == TCP) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0) { close(fd); return -1; }
    return fd;
}

static void arm(struct conn *c, unsigned events, int op) {
    struct epoll_event e = {.events = events, .data.ptr = c};
    epoll_ctl(ep, op, c->fd, &e);
}

static void drop(struct conn *c) {
    if (c->dead) return;
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->dead = 1;
}

static void send_next(struct conn *c) {
    restamp(c);
    c->got = 0;
    c->unsent_off = 0;
    c->t0 = now();
    if (transport == UDP) {
        if (send(c->fd, c->expect, size, 0) < 0 && errno != EAGAIN && errno != ECONNREFUSED) error_(E_RESET);
        return;
    }
    ssize_t n = send(c->fd, c->expect, size, MSG_NOSIGNAL);
    if (n < 0) {
        if (errno != EAGAIN) { error_(E_RESET); drop(c); return; }
        n = 0;
    }
    c->unsent_off = (size_t)n;
    if (c->unsent_off < size) arm(c, EPOLLIN | EPOLLOUT, EPOLL_CTL_MOD);
}

static int open_conn(struct conn *c) {
    c->fd = open_socket();
    if (c->fd < 0) return -1;
    c->dead = 0;
    arm(c, EPOLLIN, EPOLL_CTL_ADD);
    return 0;
}

static void on_stream(struct conn *c, unsigned events) {
    if ((events & EPOLLOUT) && c->unsent_off < size) {
        ssize_t n = send(c->fd, c->expect + c->unsent_off, size - c->unsent_off, MSG_NOSIGNAL);
        if (n < 0 && errno != EAGAIN) { error_(E_RESET); drop(c); return; }
        if (n > 0) c->unsent_off += (size_t)n;
        if (c->unsent_off == size) arm(c, EPOLLIN, EPOLL_CTL_MOD);
    }
    if (!(events & (EPOLLIN | EPOLLHUP | EPOLLERR))) return;
    /* Read one byte more than is missing: a longer echo is an error. */
    ssize_t n = recv(c->fd, c->buf + c->got, size + 1 - c->got, 0);
    if (n < 0) {
        if (errno == EAGAIN) return;
        error_(E_RESET); drop(c); return;
    }
    if (n == 0) { error_(E_CLOSED); drop(c); return; }
    c->got += (size_t)n;
    if (c->got > size) { error_(E_LONG); drop(c); return; }
    if (c->got < size) return;
    if (memcmp(c->buf, c->expect, size) != 0) { error_(E_CORRUPT); drop(c); return; }
    record(now() - c->t0);
    send_next(c);
}

static void on_udp(struct conn *c) {
    for (int i = 0; i < 64; i++) {
        ssize_t n = recv(c->fd, udpbuf, sizeof udpbuf, MSG_TRUNC);
        if (n < 0) {
            if (errno == EAGAIN) return;
            if (errno == ECONNREFUSED) { error_(E_REFUSED); send_next(c); return; }
            error_(E_RESET);
            return;
        }
        if ((size_t)n == size && memcmp(udpbuf, c->expect, size) == 0) {
            record(now() - c->t0);
            send_next(c);
            continue;
        }
        if ((size_t)n == size && memcmp(udpbuf + stamp, c->body + stamp, size - stamp) == 0 &&
            memcmp(udpbuf, c->expect, stamp) != 0)
            continue; /* the late echo of a datagram already counted lost */
        error_((size_t)n < size ? E_SHORT : (size_t)n > size ? E_LONG : E_CORRUPT);
        send_next(c);
    }
}

static double percentile(double q) {
    if (!round_trips) return 0;
    uint64_t rank = (uint64_t)(q / 100.0 * (double)(round_trips - 1)), seen = 0;
    for (long us = 0; us < HIST_US; us++) {
        seen += hist[us];
        if (seen > rank) return (us + 0.5) / 1000.0;
    }
    return max_latency * 1000;
}

static void resolve(const char *host, const char *port) {
    if (transport == UNIX_) {
        struct sockaddr_un *u = (struct sockaddr_un *)&addr;
        if (strlen(host) >= sizeof u->sun_path) fail_usage("unix path too long");
        u->sun_family = AF_UNIX;
        strcpy(u->sun_path, host);
        addrlen = sizeof *u;
        snprintf(target, sizeof target, "%s", host);
        return;
    }
    struct addrinfo hints = {.ai_socktype = transport == UDP ? SOCK_DGRAM : SOCK_STREAM}, *res;
    if (getaddrinfo(host, port, &hints, &res) != 0) {
        fprintf(stderr, "dial %s: lookup %s: no such host\n", transport == UDP ? "udp" : "tcp", host);
        exit(100);
    }
    memcpy(&addr, res->ai_addr, res->ai_addrlen);
    addrlen = res->ai_addrlen;
    snprintf(target, sizeof target, strchr(host, ':') ? "[%s]:%s" : "%s:%s", host, port);
    freeaddrinfo(res);
}

int main(int argc, char **argv) {
    if (argc < 3) fail_usage("missing arguments");
    const char *name = argv[1];
    int i;
    if (!strcmp(name, "tcp")) transport = TCP;
    else if (!strcmp(name, "udp")) transport = UDP;
    else if (!strcmp(name, "unix")) transport = UNIX_;
    else fail_usage("transport must be tcp, udp or unix");
    if (transport == UNIX_) { resolve(argv[2], NULL); i = 3; }
    else { if (argc < 4) fail_usage("missing port"); resolve(argv[2], argv[3]); i = 4; }
    for (; i < argc; i += 2) {
        if (i + 1 >= argc) fail_usage("option without a value");
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--connections")) nconn = atoi(v);
        else if (!strcmp(k, "--size")) size = (size_t)atol(v);
        else if (!strcmp(k, "--duration")) duration = atof(v);
        else if (!strcmp(k, "--warmup")) warmup = atof(v);
        else if (!strcmp(k, "--timeout")) timeout_s = atof(v);
        else fail_usage("unknown option");
    }
    if (nconn < 1 || nconn > MAXCONN) fail_usage("--connections must be 1-10000");
    if (size < 1 || size > (transport == UDP ? 65507 : 16 * 1024 * 1024)) fail_usage("--size out of range");
    if (!(duration > 0 && duration <= 600) || !(warmup >= 0 && warmup <= 60)) fail_usage("bad --duration/--warmup");
    if (timeout_s < 0) timeout_s = transport == UDP ? 1.0 : 5.0;
    stamp = size < 8 ? size : 8;
    hist = calloc(HIST_US, sizeof *hist);
    ep = epoll_create1(0);
    if (!hist || ep < 0) { perror("load"); return 1; }

    for (int c = 0; c < nconn; c++) {
        struct conn *k = &conns[c];
        k->body = malloc(size);
        k->expect = malloc(size);
        k->buf = malloc(size + 1);
        fill(k->body, size, (uint64_t)c + 1);
        if (open_conn(k) < 0) {
            char why[200];
            snprintf(why, sizeof why, "%s", strerror(errno));
            why[0] = (char)tolower((unsigned char)why[0]); /* as netecho's clients say it */
            fprintf(stderr, "dial %s %s: %s\n", transport == UDP ? "udp" : transport == TCP ? "tcp" : "unix",
                    target, why);
            return 100;
        }
    }
    double start = now(), measure_from = start + warmup, end = measure_from + duration;
    counting = warmup == 0;
    for (int c = 0; c < nconn; c++) send_next(&conns[c]);
    double next_tick = start + 0.05;
    struct epoll_event events[256];
    for (;;) {
        int n = epoll_wait(ep, events, 256, 50);
        for (int e = 0; e < n; e++) {
            struct conn *c = events[e].data.ptr;
            if (c->dead) continue;
            if (transport == UDP) on_udp(c);
            else on_stream(c, events[e].events);
        }
        double t = now();
        if (t >= end) break;
        if (!counting && t >= measure_from) counting = 1;
        if (t < next_tick) continue;
        next_tick = t + 0.05;
        for (int c = 0; c < nconn; c++) {
            struct conn *k = &conns[c];
            if (k->dead) {
                if (open_conn(k) < 0) error_(E_CONNECT);
                else send_next(k);
            } else if (t - k->t0 > timeout_s) {
                if (transport == UDP) { error_(E_LOST); send_next(k); }
                else { error_(E_TIMEOUT); drop(k); }
            }
        }
    }
    uint64_t total = 0;
    for (int e = 0; e < E_N; e++) total += errors[e];
    printf("{\"transport\": \"%s\", \"target\": \"%s\", \"connections\": %d, \"size\": %zu, "
           "\"duration\": %g, \"warmup\": %g, \"processes\": 1, \"client\": \"c\", "
           "\"round_trips\": %llu, \"round_trips_per_s\": %.1f, \"mb_per_s\": %.3f, "
           "\"latency_ms\": {\"p50\": %.4f, \"p90\": %.4f, \"p99\": %.4f, \"max\": %.4f}, "
           "\"errors\": %llu, \"error_kinds\": {",
           name, target, nconn, size, duration, warmup, (unsigned long long)round_trips,
           round_trips / duration, round_trips * (double)size / duration / 1e6,
           percentile(50), percentile(90), percentile(99), max_latency * 1000, (unsigned long long)total);
    int first = 1;
    for (int e = 0; e < E_N; e++)
        if (errors[e]) {
            printf("%s\"%s\": %llu", first ? "" : ", ", error_names[e], (unsigned long long)errors[e]);
            first = 0;
        }
    printf("}}\n");
    for (int c = 0; c < nconn; c++) if (!conns[c].dead) close(conns[c].fd);
    return 0;
}
