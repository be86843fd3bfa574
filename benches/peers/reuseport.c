/* A shared-listener server in C for the load harness: N forked workers, each with
 * its own SO_REUSEPORT listener on the same port and one epoll loop that accepts
 * (non-blocking and close-on-exec from accept4, until EAGAIN) and serves HTTP.
 *
 *     cc -O2 -o reuseport reuseport.c && ./reuseport PORT WORKERS */
#include "http.h"
#include <arpa/inet.h>
#include <netinet/in.h>

static int port, listener;

/* Accepts until the queue is empty. */
static void take(int ep) {
    int fd;
    while ((fd = accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) conn_add(ep, fd);
}

static void work(int i) {
    (void)i;
    int l = listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(l, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(l, (struct sockaddr *)&a, sizeof a) < 0 || listen(l, 1024) < 0) die("listen");
    serve(l, take);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: reuseport PORT WORKERS\n");
        return 2;
    }
    port = atoi(argv[1]);
    run_workers(atoi(argv[2]), work);
    for (;;) pause();
}
