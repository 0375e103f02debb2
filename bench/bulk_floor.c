/* The bulk floor of the tunnel's process layout: two relays that move a pipe's bytes
 * in UDP datagrams of tou's size and write them out, doing nothing else.
 *
 *   cc -O2 -o bulk_floor bulk_floor.c
 *   cat FILE | bulk_floor send UDP_PORT PEER_UDP_PORT [DATAGRAM_BYTES]
 *   bulk_floor recv UDP_PORT PEER_UDP_PORT > OUT
 *
 * Like tou: stdin is read into the datagrams, which leave in UDP GSO batches of up to
 * 64000 bytes (UDP_SEGMENT) and arrive in GRO buffers (UDP_GRO); the receiver writes
 * each buffer's payloads with one writev and answers with one 8-byte acknowledgement
 * per buffer. No TCP, no encryption, no retransmission: the sender keeps at most
 * WINDOW datagrams unacknowledged (a loss on loopback would stall it, and the receiver
 * then exits 1 naming the gap). Each datagram starts with its 8-byte index; the last
 * one has the top bit set. Every wait is bounded (10 s without progress ends it).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef UDP_GRO
#define UDP_GRO 104
#endif

#define HDR 8
#define GSO_BYTES 65000
#define WINDOW 256
#define LAST (1ULL << 63)
#define STALL_MS 10000

static struct sockaddr_in loopback(int port) {
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

static int fail(const char *what) {
    perror(what);
    return 1;
}

/* Fill buf with up to n bytes of stdin; returns the count (short only at EOF), -1 on error. */
static ssize_t read_full(char *buf, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(0, buf + got, n - got);
        if (r < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (r == 0) break;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

static void put64(char *p, uint64_t v) {
    for (int i = 7; i >= 0; i--) { p[i] = (char)(v & 0xff); v >>= 8; }
}

static uint64_t get64(const char *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = v << 8 | (unsigned char)p[i];
    return v;
}

static int do_send(int fd, size_t size) {
    size_t per = GSO_BYTES / size;
    if (per < 1) per = 1;
    if (per > 64) per = 64;
    char *batch = malloc(per * size);
    if (!batch) return fail("malloc");
    uint64_t next = 0, acked = 0;
    int done = 0;
    while (!done) {
        /* wait for room in the window, reading acknowledgements */
        for (;;) {
            char ack[HDR];
            ssize_t r = recv(fd, ack, sizeof ack, next - acked + per > WINDOW ? 0 : MSG_DONTWAIT);
            if (r == HDR) {
                uint64_t v = get64(ack);
                if (v > acked) acked = v;
                continue;
            }
            if (r < 0 && errno == EAGAIN && next - acked + per <= WINDOW) break;
            if (r < 0 && errno == EAGAIN) {
                fprintf(stderr, "bulk_floor send: no acknowledgement for %d ms\n", STALL_MS);
                return 1;
            }
            if (r < 0 && errno != EINTR) return fail("recv");
        }
        size_t k = 0, last_len = size;
        while (k < per) {
            char *d = batch + k * size;
            ssize_t n = read_full(d + HDR, size - HDR);
            if (n < 0) return fail("read");
            uint64_t idx = next + k;
            if ((size_t)n < size - HDR) {
                put64(d, idx | LAST);
                last_len = (size_t)n + HDR;
                k++;
                done = 1;
                break;
            }
            put64(d, idx);
            k++;
        }
        size_t bytes = (k - 1) * size + last_len;
        char ctl[CMSG_SPACE(sizeof(uint16_t))];
        struct iovec iov = {batch, bytes};
        struct msghdr m = {0};
        m.msg_iov = &iov;
        m.msg_iovlen = 1;
        if (k > 1) {
            memset(ctl, 0, sizeof ctl);
            m.msg_control = ctl;
            m.msg_controllen = sizeof ctl;
            struct cmsghdr *c = CMSG_FIRSTHDR(&m);
            c->cmsg_level = SOL_UDP;
            c->cmsg_type = UDP_SEGMENT;
            c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
            uint16_t seg = (uint16_t)size;
            memcpy(CMSG_DATA(c), &seg, sizeof seg);
        }
        for (;;) {
            if (sendmsg(fd, &m, 0) >= 0) break;
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == ENOBUFS) { poll(NULL, 0, 1); continue; }
            return fail("sendmsg");
        }
        next += k;
    }
    /* wait until everything is acknowledged */
    while (acked < next) {
        char ack[HDR];
        ssize_t r = recv(fd, ack, sizeof ack, 0);
        if (r == HDR) {
            uint64_t v = get64(ack);
            if (v > acked) acked = v;
        } else if (r < 0 && errno != EINTR) {
            fprintf(stderr, "bulk_floor send: %llu of %llu datagrams acknowledged\n",
                    (unsigned long long)acked, (unsigned long long)next);
            return 1;
        }
    }
    return 0;
}

static int do_recv(int fd) {
    int on = 1;
    setsockopt(fd, SOL_UDP, UDP_GRO, &on, sizeof on);
    static char buf[65536];
    struct iovec out[64];
    uint64_t expect = 0;
    for (;;) {
        char ctl[CMSG_SPACE(sizeof(int))];
        struct iovec iov = {buf, sizeof buf};
        struct msghdr m = {0};
        m.msg_iov = &iov;
        m.msg_iovlen = 1;
        m.msg_control = ctl;
        m.msg_controllen = sizeof ctl;
        ssize_t n = recvmsg(fd, &m, 0);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) {
                fprintf(stderr, "bulk_floor recv: nothing for %d ms after %llu datagrams\n",
                        STALL_MS, (unsigned long long)expect);
                return 1;
            }
            return fail("recvmsg");
        }
        size_t seg = (size_t)n;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
            if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO) {
                int s;
                memcpy(&s, CMSG_DATA(c), sizeof s);
                seg = (size_t)s;
            }
        }
        int parts = 0, last = 0;
        for (size_t off = 0; off < (size_t)n; off += seg) {
            size_t len = (size_t)n - off < seg ? (size_t)n - off : seg;
            if (len < HDR) continue;
            uint64_t idx = get64(buf + off);
            last = (idx & LAST) != 0;
            idx &= ~LAST;
            if (idx != expect) {
                fprintf(stderr, "bulk_floor recv: datagram %llu where %llu was due (lost or reordered)\n",
                        (unsigned long long)idx, (unsigned long long)expect);
                return 1;
            }
            expect++;
            out[parts].iov_base = buf + off + HDR;
            out[parts].iov_len = len - HDR;
            parts++;
        }
        struct iovec *o = out;
        while (parts > 0) {
            ssize_t w = writev(1, o, parts);
            if (w < 0) {
                if (errno == EINTR) continue;
                return fail("writev");
            }
            while (parts > 0 && (size_t)w >= o->iov_len) {
                w -= (ssize_t)o->iov_len;
                o++;
                parts--;
            }
            if (parts > 0) {
                o->iov_base = (char *)o->iov_base + w;
                o->iov_len -= (size_t)w;
            }
        }
        char ack[HDR];
        put64(ack, expect);
        send(fd, ack, sizeof ack, 0);
        if (last) return 0;
    }
}

int main(int argc, char **argv) {
    if (argc < 4 || (strcmp(argv[1], "send") && strcmp(argv[1], "recv"))) {
        fprintf(stderr, "usage: %s send|recv UDP_PORT PEER_UDP_PORT [DATAGRAM_BYTES]\n", argv[0]);
        return 2;
    }
    size_t size = argc > 4 ? (size_t)atoi(argv[4]) : 16433;
    if (size <= HDR || size > 65000) {
        fprintf(stderr, "DATAGRAM_BYTES must be within %d..65000\n", HDR + 1);
        return 2;
    }
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) return fail("socket");
    int bufsize = 4 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bufsize, sizeof bufsize);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bufsize, sizeof bufsize);
    struct timeval tv = {STALL_MS / 1000, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_in me = loopback(atoi(argv[2])), peer = loopback(atoi(argv[3]));
    if (bind(fd, (struct sockaddr *)&me, sizeof me) < 0) return fail("bind");
    if (connect(fd, (struct sockaddr *)&peer, sizeof peer) < 0) return fail("connect");
    if (!strcmp(argv[1], "recv")) {
        fprintf(stderr, "ready\n");
        return do_recv(fd);
    }
    return do_send(fd, size);
}
