/* The latency floor of the tunnel's process layout, compiled: the same TCP <-> UDP
 * relay as relay_floor.py (same arguments, same "open" datagram, prints "ready"),
 * with no interpreter in the way. Two of these between a TCP client and server show
 * what the layout's syscalls and wake-ups cost before any tunnel work is done.
 *
 *   cc -O2 -o relay_floor relay_floor.c
 *   relay_floor server TARGET_PORT UDP_PORT PEER_UDP_PORT [BUSY_POLL_USEC]
 *   relay_floor client LISTEN_PORT UDP_PORT PEER_UDP_PORT [BUSY_POLL_USEC]
 *
 * BUSY_POLL_USEC > 0 polls that long after each message before blocking, as
 * `tou --busy-poll` does.
 * Ends when its TCP connection does, or after 120 s without traffic.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static struct sockaddr_in loopback(int port) {
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

static int send_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = send(fd, p, n, 0);
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static int fail(const char *what) {
    perror(what);
    return 1;
}

int main(int argc, char **argv) {
    if ((argc != 5 && argc != 6) || (strcmp(argv[1], "client") && strcmp(argv[1], "server"))) {
        fprintf(stderr, "usage: %s client|server TCP_PORT UDP_PORT PEER_UDP_PORT [BUSY_POLL_USEC]\n", argv[0]);
        return 2;
    }
    long long spin_ns = argc == 6 ? atoll(argv[5]) * 1000 : 0;
    int client = !strcmp(argv[1], "client"), one = 1;
    static char buf[65536];
    struct sockaddr_in a = loopback(atoi(argv[3]));
    int udp = socket(AF_INET, SOCK_DGRAM, 0);
    if (udp < 0 || bind(udp, (struct sockaddr *)&a, sizeof a)) return fail("udp bind");
    a = loopback(atoi(argv[4]));
    if (connect(udp, (struct sockaddr *)&a, sizeof a)) return fail("udp connect");
    int tcp;
    a = loopback(atoi(argv[2]));
    if (client) {
        int lsn = socket(AF_INET, SOCK_STREAM, 0);
        setsockopt(lsn, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(lsn, (struct sockaddr *)&a, sizeof a) || listen(lsn, 1)) return fail("tcp listen");
        printf("ready\n");
        fflush(stdout);
        if ((tcp = accept(lsn, NULL, NULL)) < 0) return fail("accept");
        send(udp, "open", 4, 0);             /* the server side dials its target on this */
    } else {
        printf("ready\n");
        fflush(stdout);
        if (recv(udp, buf, 16, 0) < 0) return fail("udp recv");
        tcp = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(tcp, (struct sockaddr *)&a, sizeof a)) return fail("tcp connect");
    }
    setsockopt(tcp, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN};
    ev.data.fd = tcp;
    epoll_ctl(ep, EPOLL_CTL_ADD, tcp, &ev);
    ev.data.fd = udp;
    epoll_ctl(ep, EPOLL_CTL_ADD, udp, &ev);
    for (;;) {
        struct epoll_event got[2];
        int n = 0;
        if (spin_ns) {                       /* look without blocking for up to spin_ns first */
            long long until = now_ns() + spin_ns;
            while ((n = epoll_wait(ep, got, 2, 0)) == 0 && now_ns() < until)
                sched_yield();
        }
        if (n == 0) n = epoll_wait(ep, got, 2, 120000);
        if (n <= 0) return 0;
        for (int i = 0; i < n; i++) {
            ssize_t r;
            if (got[i].data.fd == tcp) {
                if ((r = recv(tcp, buf, sizeof buf, 0)) <= 0) return 0;
                send(udp, buf, (size_t)r, 0);
            } else if ((r = recv(udp, buf, sizeof buf, 0)) > 0 && send_all(tcp, buf, (size_t)r)) {
                return 0;
            }
        }
    }
}
