"""The latency floor of the tunnel's process layout: a TCP <-> UDP relay with nothing in it.

Two of these, like two tou processes, sit between a TCP client and server on
loopback: the client side accepts one TCP connection and relays its bytes in UDP
datagrams to the server side, which relays them into a TCP connection to the
target, and back. No TCP engine, no encryption, no event-loop library: one
``epoll`` and a read and a write per message. The round trip through this pair
is what any Python tunnel with this layout costs at least (``loopback.latency_suite``)::

    python bench/relay_floor.py server TARGET_PORT UDP_PORT PEER_UDP_PORT
    python bench/relay_floor.py client LISTEN_PORT UDP_PORT PEER_UDP_PORT

It prints ``ready`` when set up and ends when its TCP connection does, or after
``--timeout`` seconds. ``--busy-poll USEC`` polls for up to USEC microseconds after
each message before blocking, as ``tou --busy-poll`` does.
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["client", "server"])
    ap.add_argument("tcp_port", type=int, help="client: port to listen on; server: target port")
    ap.add_argument("udp_port", type=int)
    ap.add_argument("peer_udp_port", type=int)
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--busy-poll", type=int, default=0, metavar="USEC")
    a = ap.parse_args()
    end = time.monotonic() + a.timeout
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", a.udp_port))
    udp.connect(("127.0.0.1", a.peer_udp_port))
    udp.settimeout(a.timeout)
    if a.mode == "client":
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", a.tcp_port))
        srv.listen(1)
        srv.settimeout(a.timeout)
        print("ready", flush=True)
        tcp, _ = srv.accept()
        udp.send(b"open")                     # the server side dials its target on this
    else:
        print("ready", flush=True)
        udp.recv(16)
        tcp = socket.create_connection(("127.0.0.1", a.tcp_port), timeout=a.timeout)
    tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    tcp.setblocking(True)
    ep = select.epoll()
    ep.register(tcp.fileno(), select.EPOLLIN)
    ep.register(udp.fileno(), select.EPOLLIN)
    tcp_fd = tcp.fileno()
    spin = a.busy_poll / 1e6
    while time.monotonic() < end:
        ready = []
        if spin:                          # look without blocking for up to ``spin`` s first
            until = time.monotonic() + spin
            while not (ready := ep.poll(0)) and time.monotonic() < until:
                os.sched_yield()
        for fd, _ in ready or ep.poll(1.0):
            if fd == tcp_fd:
                data = tcp.recv(65536)
                if not data:
                    return
                udp.send(data)
            else:
                tcp.sendall(udp.recv(65536))


if __name__ == "__main__":
    main()
