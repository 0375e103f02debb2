"""CPU of one 64-byte message through the engine and the secure session, in one process.

Two engines (``Endpoint``) joined by two DTLS session endpoints on virtual time, no
sockets and no event loop: each message is queued (``send``), made into a segment
(``segs``), sealed (``encode``), opened and parsed (``decode``), taken in by the peer's
engine (``receive``), announced (``events``) and read (``recv``). The reply goes back
the same way, so every message also carries the ACK of the one before, as in an
interactive session. Prints the median µs of each step for the engine that runs
(``tou --version``); ``--both`` also runs it on the Python engine, in a child process::

    python bench/engine_pass.py [--messages 20000] [--cc bbr] [--both]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

STEPS = ("send", "segs", "encode", "decode", "receive", "events", "recv")


def measure(messages: int, cc: str) -> dict:
    from securenet import CLIENT_ADDR, SERVER_ADDR, connect, secret_endpoints
    from toucli.stack import ENGINE
    from toucli.stack.endpoint import Endpoint
    from toucli.tunnel import SecureTransport, engine_config

    client_sec, server_sec = secret_endpoints()
    net, cs, ss = connect(client_sec, server_sec)
    ctr, srv = SecureTransport(client_sec), SecureTransport(server_sec)
    cfg = lambda: engine_config(socket.AF_INET, ctr.overhead, cc=cc, fast_open=True)   # noqa: E731
    cep, sep = Endpoint(cfg(), secret=b"c" * 16), Endpoint(cfg(), secret=b"s" * 16)
    sep.listen(80)
    now = net.now

    def carry(src, src_tr, dst, dst_tr, addr) -> None:
        for peer, seg in src.segments_to_send(now):
            rx: list = []
            dst_tr.decode(memoryview(src_tr.encode(peer, seg)[0]), addr, now, rx)
            for p, s in rx:
                dst.receive(p, s, now)

    conn = cep.connect(cs, 5000, 80, now)
    for _ in range(5):                                   # handshake
        now += 0.0002
        carry(cep, ctr, sep, srv, CLIENT_ADDR)
        carry(sep, srv, cep, ctr, SERVER_ADDR)
    while cep.next_event() is not None:
        pass
    peer_conn = None
    while (ev := sep.next_event()) is not None:
        peer_conn = ev.conn
    msg = b"p" * 64
    times: dict[str, list[float]] = {k: [] for k in STEPS}
    clock = time.perf_counter_ns

    def one(c, a_ep, a_tr, b_ep, b_tr, addr) -> None:
        nonlocal now
        now += 0.0002
        t0 = clock()
        c.send(msg)
        t1 = clock()
        segs = a_ep.segments_to_send(now)
        t2 = clock()
        datagrams = [a_tr.encode(p, s) for p, s in segs]
        t3 = clock()
        now += 0.0002
        rx: list = []
        for d, _ in datagrams:
            b_tr.decode(memoryview(d), addr, now, rx)
        t4 = clock()
        for p, s in rx:
            b_ep.receive(p, s, now)
        t5 = clock()
        got = None
        while (ev := b_ep.next_event()) is not None:
            got = ev.conn
        t6 = clock()
        data = got.recv(65536) if got is not None else b""
        t7 = clock()
        if len(datagrams) != 1 or data != msg:
            raise SystemExit(f"unexpected: {len(datagrams)} datagrams, {len(data)} bytes read")
        for k, v in zip(STEPS, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5, t7 - t6)):
            times[k].append(v / 1000)

    for _ in range(messages // 2):
        one(conn, cep, ctr, sep, srv, CLIENT_ADDR)
        one(peer_conn, sep, srv, cep, ctr, SERVER_ADDR)
    steps = {k: statistics.median(v) for k, v in times.items()}
    return {"engine": ENGINE, "cc": cc, "messages": messages, "us": steps, "total_us": sum(steps.values())}


def show(res: dict) -> None:
    print(f"{res['engine']}, --cc {res['cc']}, {res['messages']} messages: median µs per step")
    print("  " + "  ".join(f"{k} {v:.2f}" for k, v in res["us"].items()) + f"  | total {res['total_us']:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--cc", default="bbr")
    ap.add_argument("--both", action="store_true", help="also on the Python engine (TOU_PURE_PYTHON=1)")
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    res = measure(a.messages, a.cc)
    if a.json:
        print(json.dumps(res))
        return
    show(res)
    if a.both:
        out = subprocess.run([sys.executable, __file__, "--messages", str(a.messages), "--cc", a.cc, "--json"],
                             env={**os.environ, "TOU_PURE_PYTHON": "1"}, capture_output=True, text=True, check=True)
        show(json.loads(out.stdout))


if __name__ == "__main__":
    main()
