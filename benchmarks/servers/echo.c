/*
 * Baseline: a plain C epoll echo server (TCP, UDP, Unix stream), one thread,
 * level-triggered, non-blocking. benchmarks/run.py compiles it with the
 * system's cc into a temporary directory at run time:
 *
 *     cc -O2 -o echo echo.c && ./echo --tcp 0 --udp 0 --unix /tmp/x.sock
 *
 * Prints one line, "READY tcp=P udp=P unix=PATH", once everything listens;
 * runs until killed. A connection whose peer is not reading keeps what could
 * not be sent and stops reading until it has sent it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define BUF (64 * 1024)
#define MAXFD 65536

struct conn { char *pending; size_t len, off; };
static struct conn *conns[MAXFD];
static int tcp_fd = -1, udp_fd = -1, unix_fd = -1, ep;
static char buf[BUF];

static void die(const char *what) { perror(what); exit(1); }

static int inet_socket(int type, int port) {
    int fd = socket(AF_INET, type | SOCK_NONBLOCK, 0), one = 1;
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
    if (fd < 0) die("socket");
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) die("bind");
    if (type == SOCK_STREAM && listen(fd, 4096) < 0) die("listen");
    return fd;
}

static int bound_port(int fd) {
    struct sockaddr_in a; socklen_t n = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &n);
    return ntohs(a.sin_port);
}

static void add(int fd, unsigned events) {
    struct epoll_event e = { .events = events, .data.fd = fd };
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e) < 0) die("epoll_ctl");
}

static void set_events(int fd, unsigned events) {
    struct epoll_event e = { .events = events, .data.fd = fd };
    epoll_ctl(ep, EPOLL_CTL_MOD, fd, &e);
}

static void close_conn(int fd) {
    if (conns[fd]) { free(conns[fd]->pending); free(conns[fd]); conns[fd] = NULL; }
    close(fd);
}

static void accept_all(int lfd, int tcp) {
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK), one = 1;
        if (fd < 0) return;
        if (fd >= MAXFD) { close(fd); continue; }
        if (tcp) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        conns[fd] = calloc(1, sizeof(struct conn));
        add(fd, EPOLLIN);
    }
}

/* Send what is pending; 1 if all sent, 0 if some left, -1 on error. */
static int flush_pending(int fd, struct conn *c) {
    while (c->off < c->len) {
        ssize_t n = send(fd, c->pending + c->off, c->len - c->off, MSG_NOSIGNAL);
        if (n < 0) return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
        c->off += n;
    }
    c->len = c->off = 0;
    return 1;
}

static void on_stream(int fd, unsigned events) {
    struct conn *c = conns[fd];
    if (c->len) {
        int r = flush_pending(fd, c);
        if (r < 0) { close_conn(fd); return; }
        if (r == 0) return;
        set_events(fd, EPOLLIN);
        if (!(events & (EPOLLIN | EPOLLHUP | EPOLLERR))) return;
    }
    ssize_t n = recv(fd, buf, BUF, 0);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) { close_conn(fd); return; }
    if (n < 0) return;
    ssize_t sent = 0;
    while (sent < n) {
        ssize_t w = send(fd, buf + sent, n - sent, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK) { close_conn(fd); return; }
            c->pending = realloc(c->pending, n - sent);
            memcpy(c->pending, buf + sent, n - sent);
            c->len = n - sent; c->off = 0;
            set_events(fd, EPOLLOUT);
            return;
        }
        sent += w;
    }
}

static void on_udp(void) {
    for (int i = 0; i < 64; i++) {
        struct sockaddr_storage from; socklen_t len = sizeof from;
        ssize_t n = recvfrom(udp_fd, buf, BUF, 0, (struct sockaddr *)&from, &len);
        if (n < 0) return;
        sendto(udp_fd, buf, n, 0, (struct sockaddr *)&from, len);
    }
}

int main(int argc, char **argv) {
    const char *unix_path = NULL;
    int tcp_port = -1, udp_port = -1;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--tcp")) tcp_port = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--udp")) udp_port = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--unix")) unix_path = argv[i + 1];
        else { fprintf(stderr, "usage: echo [--tcp PORT] [--udp PORT] [--unix PATH]\n"); return 2; }
    }
    ep = epoll_create1(0);
    printf("READY");
    if (tcp_port >= 0) {
        tcp_fd = inet_socket(SOCK_STREAM, tcp_port);
        add(tcp_fd, EPOLLIN);
        printf(" tcp=%d", bound_port(tcp_fd));
    }
    if (udp_port >= 0) {
        udp_fd = inet_socket(SOCK_DGRAM, udp_port);
        add(udp_fd, EPOLLIN);
        printf(" udp=%d", bound_port(udp_fd));
    }
    if (unix_path) {
        struct sockaddr_un a = { .sun_family = AF_UNIX };
        strncpy(a.sun_path, unix_path, sizeof a.sun_path - 1);
        unix_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
        unlink(unix_path);
        if (bind(unix_fd, (struct sockaddr *)&a, sizeof a) < 0) die("bind unix");
        if (listen(unix_fd, 4096) < 0) die("listen unix");
        add(unix_fd, EPOLLIN);
        printf(" unix=%s", unix_path);
    }
    printf("\n");
    fflush(stdout);
    struct epoll_event events[256];
    for (;;) {
        int n = epoll_wait(ep, events, 256, -1);
        if (n < 0 && errno != EINTR) die("epoll_wait");
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd == tcp_fd) accept_all(fd, 1);
            else if (fd == unix_fd) accept_all(fd, 0);
            else if (fd == udp_fd) on_udp();
            else if (conns[fd]) on_stream(fd, events[i].events);
        }
    }
}
