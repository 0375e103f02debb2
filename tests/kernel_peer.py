#!/usr/bin/env python3
"""Kernel-side TCP peer for the Linux parity test (tests/test_linux_parity.py).

Runs inside the test's network namespace (``ip netns exec NS python3
kernel_peer.py ...``) and uses the Linux TCP stack through ordinary sockets.

Modes:
  listen  bind + listen, print ``READY``, then wait for stdin EOF (plumbing test)
  server  bind + listen, print ``READY``, accept one connection, transfer
  client  connect to the engine, transfer

A transfer sends ``--send-bytes`` bytes of ``pattern(n, --seed)`` while it
receives until EOF, then half-closes, closes and prints one JSON line with the
SHA-256 of what was sent and of what was received, the namespace's TCP sysctls
and the kernel's TCP_INFO for the connection. Exit status 0 on success, 1 on a
socket error; SIGALRM bounds the whole run.

Standard library only: it must run under any python3 inside the namespace.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import signal
import socket
import struct
import sys
import threading
import time

SYSCTLS = ("tcp_sack", "tcp_window_scaling", "tcp_timestamps")

# struct tcp_info (include/uapi/linux/tcp.h): 8 bytes of u8 fields, then u32s.
_TCP_INFO = struct.Struct("=BBBBBBBB24I")
_TCPI_OPT_TIMESTAMPS = 1
_TCPI_OPT_SACK = 2
_TCPI_OPT_WSCALE = 4


def pattern(n: int, seed: int) -> bytes:
    """The deterministic pseudo-random payload both sides agree on."""
    return random.Random(seed).randbytes(n)


def read_sysctls() -> dict[str, int]:
    """The namespace's values of the TCP option sysctls (/proc/sys is per netns)."""
    out = {}
    for name in SYSCTLS:
        with open(f"/proc/sys/net/ipv4/{name}") as f:
            out[name] = int(f.read().split()[0])
    return out


def read_netstat() -> dict[str, int]:
    """Non-zero Tcp and TcpExt MIB counters of the namespace (/proc/net is per netns)."""
    out: dict[str, int] = {}
    for path in ("/proc/net/snmp", "/proc/net/netstat"):
        with open(path) as f:
            lines = f.read().splitlines()
        for names, values in zip(lines[::2], lines[1::2]):
            prefix, _, names = names.partition(": ")
            if prefix not in ("Tcp", "TcpExt"):
                continue
            for k, v in zip(names.split(), values.split()[1:]):
                if v not in ("0", "-1") and k not in ("RtoAlgorithm", "RtoMin", "RtoMax", "MaxConn"):
                    out[f"{prefix}.{k}"] = int(v)
    return out


def tcp_info(sock: socket.socket) -> dict[str, int | bool]:
    """The fields of TCP_INFO this test reports (options negotiated, retransmits)."""
    raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO.size)
    raw = raw.ljust(_TCP_INFO.size, b"\0")
    f = _TCP_INFO.unpack(raw)
    options, wscales, u32 = f[5], f[6], f[8:]
    return {
        "timestamps": bool(options & _TCPI_OPT_TIMESTAMPS),
        "sack": bool(options & _TCPI_OPT_SACK),
        "wscale": bool(options & _TCPI_OPT_WSCALE),
        "snd_wscale": wscales & 0x0F,
        "rcv_wscale": wscales >> 4,
        "snd_mss": u32[2],
        "rcv_mss": u32[3],
        "rtt_us": u32[15],
        "snd_cwnd": u32[18],
        "total_retrans": u32[23],
    }


def transfer(sock: socket.socket, send_bytes: int, seed: int) -> dict:
    """Send the pattern while receiving until EOF; return hashes and counters."""
    data = pattern(send_bytes, seed)
    sent_sha = hashlib.sha256(data).hexdigest()
    errors: list[str] = []

    def sender() -> None:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError as e:
            errors.append(f"send: {e!r}")

    t0 = time.monotonic()
    th = threading.Thread(target=sender, daemon=True)
    th.start()
    h = hashlib.sha256()
    received = 0
    buf = bytearray(1 << 18)
    view = memoryview(buf)
    try:
        while True:
            k = sock.recv_into(buf)
            if k == 0:
                break
            h.update(view[:k])
            received += k
    except OSError as e:
        errors.append(f"recv after {received} bytes: {e!r}")
    th.join(sock.gettimeout())
    info = tcp_info(sock)
    elapsed = time.monotonic() - t0
    return {
        "sent": send_bytes if not errors else None,
        "sent_sha256": sent_sha,
        "received": received,
        "received_sha256": h.hexdigest(),
        "elapsed": round(elapsed, 3),
        "tcp_info": info,
        "errors": errors,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=("listen", "server", "client"))
    p.add_argument("--addr", default="10.77.0.2", help="local address to bind")
    p.add_argument("--port", type=int, default=5001, help="server: local port; client: engine's port")
    p.add_argument("--peer", default="10.77.0.1", help="client: the engine's address")
    p.add_argument("--send-bytes", type=int, default=0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=50.0, help="bound on the whole run, seconds")
    a = p.parse_args(argv)

    signal.alarm(int(a.timeout) + 5)  # hard stop even if a socket call hangs
    report: dict = {"mode": a.mode, "sysctl": read_sysctls()}
    if a.mode == "client":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(a.timeout)
        sock.bind((a.addr, 0))
        try:
            sock.connect((a.peer, a.port))
        except OSError as e:
            report["errors"] = [f"connect: {e!r}"]
            print(json.dumps(report), flush=True)
            return 1
    else:
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind((a.addr, a.port))
        lsock.listen(8)
        print("READY", flush=True)
        if a.mode == "listen":
            sys.stdin.read()  # the test closes our stdin (or kills us) when done
            lsock.close()
            print(json.dumps(report), flush=True)
            return 0
        lsock.settimeout(a.timeout)
        try:
            sock, _ = lsock.accept()
        except OSError as e:
            report["errors"] = [f"accept: {e!r}"]
            print(json.dumps(report), flush=True)
            return 1
        lsock.close()
        sock.settimeout(a.timeout)
    report.update(transfer(sock, a.send_bytes, a.seed))
    sock.close()
    report["netstat"] = read_netstat()
    print(json.dumps(report), flush=True)
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
