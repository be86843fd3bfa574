/* The HTTP worker both C peers share: one epoll loop over many connections, each
 * request answered with 200 "Hello, world!", keep-alive unless the client asks to
 * close. Level-triggered epoll, a read per readiness, as the seed design's
 * data_worker does. Benchmark peers only: no timeouts, no request bodies. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define BUF 4096
#define EVENTS 256

static const char REPLY_KEEP[] =
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, world!";
static const char REPLY_CLOSE[] =
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n"
    "Connection: close\r\n\r\nHello, world!";

/* Set where a connection's descriptor may have another copy (hand-off): its last
 * close then need not be this process's, so it leaves epoll explicitly. */
static int del_before_close;
static int epfd;

struct conn {
    int fd;
    size_t len;
    char buf[BUF];
};

static void die(const char *what) {
    perror(what);
    exit(1);
}

/* Takes a new connection into the loop `ep`. */
static void conn_add(int ep, int fd) {
    struct conn *c = malloc(sizeof *c);
    if (!c) die("malloc");
    c->fd = fd;
    c->len = 0;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
        close(fd);
        free(c);
    }
}

static void conn_close(struct conn *c) {
    if (del_before_close) epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd); /* otherwise the last descriptor: it leaves epoll with it */
    free(c);
}

/* Reads what is there and answers every complete request in it. */
static void conn_ready(struct conn *c) {
    ssize_t n = recv(c->fd, c->buf + c->len, BUF - 1 - c->len, 0);
    if (n <= 0) {
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
        conn_close(c);
        return;
    }
    c->len += (size_t)n;
    c->buf[c->len] = 0;
    for (;;) {
        char *end = strstr(c->buf, "\r\n\r\n");
        if (!end) {
            if (c->len == BUF - 1) conn_close(c); /* a head too large */
            return;
        }
        *end = 0;
        int close_after = strcasestr(c->buf, "\r\nconnection: close") != NULL;
        const char *r = close_after ? REPLY_CLOSE : REPLY_KEEP;
        size_t rlen = close_after ? sizeof REPLY_CLOSE - 1 : sizeof REPLY_KEEP - 1;
        if (send(c->fd, r, rlen, MSG_NOSIGNAL) != (ssize_t)rlen || close_after) {
            conn_close(c);
            return;
        }
        size_t used = (size_t)(end + 4 - c->buf);
        memmove(c->buf, c->buf + used, c->len - used + 1);
        c->len -= used;
    }
}

/* A worker's loop: serves its connections, and calls `take(ep)` whenever `source`
 * (its listener, or its channel from the listener process) is readable. */
static void serve(int source, void (*take)(int ep)) {
    int ep = epfd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, source, &ev) < 0) die("epoll");
    struct epoll_event evs[EVENTS];
    for (;;) {
        int n = epoll_wait(ep, evs, EVENTS, -1);
        for (int k = 0; k < n; k++) {
            if (evs[k].data.ptr)
                conn_ready(evs[k].data.ptr);
            else
                take(ep);
        }
    }
}

/* Forks `workers` children running `work(i)`, then waits; SIGTERM or SIGINT stops
 * them all. */
static pid_t children[64];
static int nchildren;

static void stop_all(int sig) {
    (void)sig;
    for (int i = 0; i < nchildren; i++) kill(children[i], SIGTERM);
    while (wait(NULL) > 0) {}
    _exit(0);
}

static void run_workers(int workers, void (*work)(int)) {
    if (workers < 1 || workers > 64) workers = 1;
    for (int i = 0; i < workers; i++) {
        pid_t p = fork();
        if (p < 0) die("fork");
        if (p == 0) {
            signal(SIGTERM, SIG_DFL);
            work(i);
            _exit(0);
        }
        children[nchildren++] = p;
    }
    signal(SIGTERM, stop_all);
    signal(SIGINT, stop_all);
}
