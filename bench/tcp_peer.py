"""Small TCP programs the benchmarks run at either end of a tunnel (stdlib only).

Each prints one JSON line on stdout with what it measured, and stops by
itself (every wait is bounded by ``--timeout``)::

    python bench/tcp_peer.py echo PORT                   # echo server, any number of clients
    python bench/tcp_peer.py pingpong HOST PORT -n 1000 --size 64
    python bench/tcp_peer.py first-byte-target PORT      # prints when each connection's 1st byte arrives
    python bench/tcp_peer.py first-byte HOST PORT        # connect, send 1 byte; prints when connect began
    python bench/tcp_peer.py many HOST PORT -n 1000 --size 1024 --hold 5
    cat FILE | python bench/tcp_peer.py send HOST PORT [--cc bbr]   # netcat-like: stdin -> TCP
    python bench/tcp_peer.py recv PORT > OUT                      # one connection -> stdout

Times are ``time.monotonic()``, which every network namespace of one machine
shares, so a start printed in one namespace and an arrival printed in another
can be subtracted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import selectors
import socket
import sys
import time


def _nodelay(s: socket.socket) -> None:
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _listen(port: int, host: str = "127.0.0.1") -> socket.socket:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((host, port))
    srv.listen(4096)
    return srv


def echo(args: argparse.Namespace) -> None:
    """Echo everything back on every connection (one selector loop), until --timeout."""
    srv = _listen(args.port, args.host)
    srv.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(srv, selectors.EVENT_READ)
    print(json.dumps({"listening": args.port}), flush=True)
    deadline = time.monotonic() + args.timeout
    served = 0
    while time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.5):
            s = key.fileobj
            if s is srv:
                try:
                    c, _ = srv.accept()
                except BlockingIOError:
                    continue
                _nodelay(c)
                c.setblocking(False)
                sel.register(c, selectors.EVENT_READ)
                served += 1
                continue
            try:
                data = s.recv(65536)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                sel.unregister(s)
                s.close()
                continue
            s.setblocking(True)
            try:
                s.sendall(data)
            except OSError:
                sel.unregister(s)
                s.close()
                continue
            s.setblocking(False)
    print(json.dumps({"served": served}), flush=True)


def pingpong(args: argparse.Namespace) -> None:
    """``-n`` round trips of ``--size`` bytes after ``--warmup`` unmeasured ones; µs figures."""
    s = socket.create_connection((args.host, args.port), timeout=args.timeout)
    _nodelay(s)
    msg = b"p" * args.size
    times = []
    for i in range(args.warmup + args.n):
        t = time.perf_counter()
        s.sendall(msg)
        got = 0
        while got < args.size:
            d = s.recv(65536)
            if not d:
                raise SystemExit("connection closed during ping-pong")
            got += len(d)
        if i >= args.warmup:
            times.append((time.perf_counter() - t) * 1e6)
    s.close()
    times.sort()
    print(json.dumps({"n": len(times), "median_us": times[len(times) // 2],
                      "p99_us": times[min(len(times) - 1, int(0.99 * len(times)))],
                      "min_us": times[0], "max_us": times[-1]}), flush=True)


def first_byte_target(args: argparse.Namespace) -> None:
    """Accept connections; print the monotonic time each one's first byte arrived."""
    srv = _listen(args.port, args.host)
    srv.settimeout(args.timeout)
    print(json.dumps({"listening": args.port}), flush=True)
    deadline = time.monotonic() + args.timeout
    for _ in range(args.count):
        srv.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            c, _ = srv.accept()
        except OSError:
            break
        c.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            d = c.recv(1)
        except OSError:
            d = b""
        print(json.dumps({"first_byte": time.monotonic() if d else None}), flush=True)
        try:
            c.sendall(b"k")
        except OSError:
            pass
        c.close()


def first_byte(args: argparse.Namespace) -> None:
    """Connect and send one byte at once; print when connect() was called and when it returned."""
    t0 = time.monotonic()
    s = socket.create_connection((args.host, args.port), timeout=args.timeout)
    t1 = time.monotonic()
    _nodelay(s)
    s.sendall(b"x")
    try:
        s.recv(1)        # the target's answer: the connection is done with
    except OSError:
        pass
    t2 = time.monotonic()
    s.close()
    print(json.dumps({"connect_start": t0, "connected": t1, "answer": t2}), flush=True)


COPY_CHUNK = 1 << 20


def send(args: argparse.Namespace) -> None:
    """Copy stdin into one TCP connection (``--cc`` picks its congestion control), then
    half-close and wait for the peer's close: the sending half of ``nc HOST PORT``."""
    s = socket.socket()
    if args.cc:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, args.cc.encode())
    s.settimeout(args.timeout)
    s.connect((args.host, args.port))
    fd = sys.stdin.fileno()
    while True:
        data = os.read(fd, COPY_CHUNK)
        if not data:
            break
        s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    while s.recv(65536):
        pass
    s.close()


def recv(args: argparse.Namespace) -> None:
    """Accept one TCP connection and copy it to stdout until its FIN: ``nc -l PORT > OUT``."""
    srv = _listen(args.port, args.host)
    srv.settimeout(args.timeout)
    print(json.dumps({"listening": args.port}), file=sys.stderr, flush=True)
    c, _ = srv.accept()
    c.settimeout(args.timeout)
    buf = bytearray(COPY_CHUNK)
    view = memoryview(buf)
    out = sys.stdout.fileno()
    while True:
        n = c.recv_into(buf)
        if not n:
            break
        done = 0
        while done < n:
            done += os.write(out, view[done:n])
    c.close()


async def _many(args: argparse.Namespace) -> dict:
    payload = b"m" * args.size
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    errors = 0
    opened = 0

    async def one() -> None:
        nonlocal errors, opened
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection(args.host, args.port), args.timeout)
            w.write(payload)
            await w.drain()
            got = 0
            while got < len(payload):
                d = await asyncio.wait_for(r.read(65536), args.timeout)
                if not d:
                    raise ConnectionError("closed early")
                got += len(d)
            conns.append((r, w))
            opened += 1
        except (OSError, asyncio.TimeoutError, ConnectionError):
            errors += 1

    t0 = time.monotonic()
    sem = asyncio.Semaphore(args.parallel)

    async def gated() -> None:
        async with sem:
            await one()

    await asyncio.gather(*(gated() for _ in range(args.n)))
    t1 = time.monotonic()
    print(json.dumps({"phase": "all_open", "open": opened, "errors": errors, "seconds": t1 - t0}), flush=True)
    await asyncio.sleep(args.hold)
    for _, w in conns:
        w.close()
    return {"phase": "done", "open": opened, "errors": errors, "seconds": t1 - t0}


def many(args: argparse.Namespace) -> None:
    """Open ``-n`` connections, each sends ``--size`` bytes and reads the echo; hold them ``--hold`` s."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    print(json.dumps(asyncio.run(_many(args))), flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--timeout", type=float, default=60.0)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("echo")
    p.add_argument("port", type=int)
    p.add_argument("--host", default="127.0.0.1")
    p = sub.add_parser("pingpong")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("-n", type=int, default=1000)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--warmup", type=int, default=100)
    p = sub.add_parser("first-byte-target")
    p.add_argument("port", type=int)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--count", type=int, default=10)
    p = sub.add_parser("first-byte")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p = sub.add_parser("many")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("-n", type=int, default=1000)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--hold", type=float, default=3.0)
    p.add_argument("--parallel", type=int, default=100)
    p = sub.add_parser("send")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("--cc", help="TCP_CONGESTION of the connection (cubic, bbr)")
    p = sub.add_parser("recv")
    p.add_argument("port", type=int)
    p.add_argument("--host", default="127.0.0.1")
    args = ap.parse_args(argv)
    {"echo": echo, "pingpong": pingpong, "first-byte-target": first_byte_target,
     "first-byte": first_byte, "many": many, "send": send, "recv": recv}[args.cmd](args)


if __name__ == "__main__":
    main(sys.argv[1:])
