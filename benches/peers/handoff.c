/* The hand-off design in C for the load harness, in the seed article's shape: one
 * listener process blocks in accept and passes each connection (SCM_RIGHTS, one per
 * message) to the next of N forked workers in turn, then closes its copy; each
 * worker serves HTTP with one epoll loop over its channel and its connections. No
 * acknowledgements: a connection in flight to a worker that dies is lost.
 *
 *     cc -O2 -o handoff handoff.c && ./handoff PORT WORKERS */
#include "http.h"
#include <arpa/inet.h>
#include <netinet/in.h>

static int channels[64][2];
static int listener, nworkers;

/* Receives one descriptor from `ch`; -1 at the end of the channel. */
static int recv_fd(int ch) {
    char byte;
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    union {
        struct cmsghdr h;
        char space[CMSG_SPACE(sizeof(int))];
    } u;
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.space,
                       .msg_controllen = sizeof u.space};
    if (recvmsg(ch, &m, MSG_CMSG_CLOEXEC) <= 0) return -1;
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    if (!c || c->cmsg_type != SCM_RIGHTS) return -2;
    int fd;
    memcpy(&fd, CMSG_DATA(c), sizeof fd);
    return fd;
}

static void send_fd(int ch, int fd) {
    char byte = 0;
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    union {
        struct cmsghdr h;
        char space[CMSG_SPACE(sizeof(int))];
    } u;
    memset(&u, 0, sizeof u);
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.space,
                       .msg_controllen = sizeof u.space};
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof fd);
    sendmsg(ch, &m, MSG_NOSIGNAL);
}

static int channel;

/* Takes the next connection from the listener process; exits when it is gone. */
static void take(int ep) {
    int fd = recv_fd(channel);
    if (fd == -1) _exit(0);
    if (fd >= 0) conn_add(ep, fd);
}

static void work(int i) {
    /* Only its own end: the channel then ends when the listener process does. */
    close(listener);
    for (int j = 0; j < nworkers; j++) {
        close(channels[j][0]);
        if (j != i) close(channels[j][1]);
    }
    channel = channels[i][1];
    /* The listener process may close its copy after this worker closes its own. */
    del_before_close = 1;
    serve(channel, take);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: handoff PORT WORKERS\n");
        return 2;
    }
    int workers = atoi(argv[2]);
    if (workers < 1 || workers > 64) workers = 1;
    nworkers = workers;
    int l = listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(l, (struct sockaddr *)&a, sizeof a) < 0 || listen(l, 1024) < 0) die("listen");
    for (int i = 0; i < workers; i++)
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, channels[i]) < 0) die("socketpair");
    run_workers(workers, work);
    for (int i = 0; i < workers; i++) close(channels[i][1]);
    for (unsigned next = 0;; next++) {
        /* Non-blocking for the worker from the start: the flag is the open file's. */
        int fd = accept4(l, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) continue;
        send_fd(channels[next % (unsigned)workers][0], fd);
        close(fd);
    }
}
