"""Many clients on one server: does a packet cost the server more when it has many sessions?

``tou forward --serve`` and ``tou forward -L`` on loopback, as for the round trips of
``loopback.latency_suite``, plus N other clients that each hold a secure session of
their own with the server and stay idle. This script plays those clients: one
:class:`~toucli.session.SecureEndpoint` and one UDP socket each, with the suite's
shared secret. For every N it times 64-byte round trips through the ``-L`` client
(``tcp_peer.py pingpong``) and reads the server's CPU per round trip, and it reports how
long the N handshakes took (``BATCH`` at a time) and the server's CPU per handshake. The counts are
measured round-robin (the idle sessions are opened, then closed with close_notify),
``--rounds`` times; medians are printed.

    python bench/many_sessions.py [--sessions 0,1000] [--rounds 2] [-n 1000]
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from contenders import read_json_line, tcp_peer, tou_forward  # noqa: E402
from harness import SECRET, Procs, free_port  # noqa: E402
from toucli.keys import SharedSecret  # noqa: E402
from toucli.session import Auth, SecureEndpoint, Session  # noqa: E402

BATCH = 50            # handshakes in flight at once
OPEN_TIMEOUT = 120.0  # seconds for all idle sessions to come up


class IdleClients:
    """N client sessions that handshake with the server and then say nothing."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.auth = Auth.secret(SharedSecret(SECRET.encode()))   # scrypt once for all
        self.sel = selectors.DefaultSelector()
        self.clients: list[tuple[socket.socket, SecureEndpoint, Session]] = []

    def _flush(self, sock: socket.socket, ep: SecureEndpoint, now: float) -> None:
        for data, addr in ep.datagrams_to_send(now):
            sock.sendto(data, addr)
        while ep.next_event() is not None:
            pass

    def _pump(self, group: list[tuple[socket.socket, SecureEndpoint, Session]], until: float) -> None:
        """Move datagrams and timers until every session of ``group`` is up (or ``until``)."""
        while time.monotonic() < until and not all(s.established for _, _, s in group):
            for key, _ in self.sel.select(0.02):
                sock, ep = key.data
                now = time.monotonic()
                while True:
                    try:
                        data, addr = sock.recvfrom(65535)
                    except BlockingIOError:
                        break
                    ep.datagram_received(data, addr, now)
                self._flush(sock, ep, now)
            now = time.monotonic()
            for sock, ep, _ in group:
                d = ep.next_deadline()
                if d is not None and d <= now:
                    ep.handle_timer(now)
                    self._flush(sock, ep, now)

    def open(self, n: int) -> int:
        """Open ``n`` sessions, ``BATCH`` handshakes at a time; returns how many came up."""
        until = time.monotonic() + OPEN_TIMEOUT
        for start in range(0, n, BATCH):
            group = []
            for _ in range(min(BATCH, n - start)):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.bind(("127.0.0.1", 0))
                sock.setblocking(False)
                ep = SecureEndpoint("client", self.auth)
                session = ep.connect(self.server, time.monotonic())
                self._flush(sock, ep, time.monotonic())
                self.sel.register(sock, selectors.EVENT_READ, (sock, ep))
                group.append((sock, ep, session))
            self._pump(group, until)
            self.clients.extend(group)
        return sum(s.established for _, _, s in self.clients)

    def close(self) -> None:
        """close_notify on every session, then the sockets."""
        now = time.monotonic()
        for sock, ep, session in self.clients:
            ep.close(session, now)
            self._flush(sock, ep, now)
            self.sel.unregister(sock)
            sock.close()
        self.clients = []


def measure(counts: list[int], rounds: int = 2, n: int = 1000) -> dict[str, Any]:
    runs: dict[int, list[dict[str, Any]]] = {c: [] for c in counts}
    with Procs() as ps:
        eport, uport, lport = free_port(), free_port(kind=2), free_port()
        echo = tcp_peer(ps, "--timeout", "900", "echo", str(eport))
        read_json_line(echo, 10)
        fc, fs = tou_forward(ps, serve=f"127.0.0.1:{uport}", local=f"{lport}:127.0.0.1:{eport}",
                             peer=f"127.0.0.1:{uport}")
        idle = IdleClients(("127.0.0.1", uport))
        for r in range(rounds):
            for count in counts:
                cpu0, t0 = fs.cpu_now(), time.monotonic()
                up = idle.open(count)
                opened = {"open_seconds": time.monotonic() - t0,
                          "server_cpu_ms_per_handshake": (fs.cpu_now() - cpu0) / count * 1e3 if count else None}
                time.sleep(0.5)
                cpu0 = fs.cpu_now()
                p = tcp_peer(ps, "--timeout", "120", "pingpong", "127.0.0.1", str(lport), "-n", str(n),
                             "--size", "64")
                res = read_json_line(p, 150) or {"error": "ping-pong failed: " + ps.stderr_tail(p)}
                ps.reap(p, 5) or ps.stop(p)
                res["server_cpu_us_per_rt"] = (fs.cpu_now() - cpu0) / (n + 100) * 1e6   # 100 warm-up
                res["idle_sessions_up"] = up
                res.update(opened)
                runs[count].append(res)
                print(f"round {r + 1}, {count} idle sessions ({up} up): {json.dumps(res)}", flush=True)
                idle.close()
                time.sleep(0.5)
    out: dict[str, Any] = {}
    for count, results in runs.items():
        good = [x for x in results if "median_us" in x]
        if not good:
            out[str(count)] = results[-1]
            continue
        out[str(count)] = {"median_us": statistics.median(x["median_us"] for x in good),
                           "server_cpu_us_per_rt": statistics.median(x["server_cpu_us_per_rt"] for x in good),
                           "sessions_up": min(x["idle_sessions_up"] for x in good), "runs": len(good),
                           "open_seconds": statistics.median(x["open_seconds"] for x in good)}
        if count:
            out[str(count)]["server_cpu_ms_per_handshake"] = statistics.median(
                x["server_cpu_ms_per_handshake"] for x in good)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", default="0,1000", help="idle session counts, comma-separated")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("-n", type=int, default=1000, help="round trips per measurement")
    a = ap.parse_args()
    res = measure([int(x) for x in a.sessions.split(",")], a.rounds, a.n)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
