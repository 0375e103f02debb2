"""Hostile traffic for the reliability tests (issue 19): a capturing UDP relay, builders of
bad datagrams, a datagram fuzzer and a ClientHello flood.

``tests/test_reliability_hostile.py`` uses the :class:`Relay` in-process and runs the
senders as a separate process, so that they do not share the test's interpreter::

    python tests/hostile.py fuzz --target 127.0.0.1:PORT --control SOCK --pid PID --count N
    python tests/hostile.py flood --target 127.0.0.1:PORT --hello HEXFILE --count N [--pid PID]

``fuzz`` relays a live client (it prints ``relay PORT``, then the client connects to that
port), captures the client's records and, once data flows, sends ``--count`` datagrams at
the target in phases, one phase per kind (:data:`KINDS`). Between phases it waits until
the target has read everything and reads the target's counters from its control socket
(docs/STATS.md), so each kind's effect on the counters is measured apart. It prints one
JSON line with the figures and goes on relaying until its stdin closes.

``flood`` sends copies of a captured ClientHello datagram (fresh random and record
sequence number in each) from many source addresses in 127.0.0.0/8 and ports, at least
``--count`` of them and on until its stdin closes; it prints ``flooding`` once it has
started and one JSON line at the end.

Only 127.0.0.0/8 is ever addressed; every loop is bounded by a count or a deadline.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import select
import selectors
import socket
import struct
import sys
import threading
import time
from collections import deque

GUE_HEAD = bytes.fromhex("023b0402 01060000")     # docs/PROTOCOL.md §5: all but the session ID
GUE_LEN = 12
RECORD_HEADER = 13
CT_CCS, CT_ALERT, CT_HANDSHAKE, CT_APP = 20, 21, 22, 23
MAX_UDP = 65507
FAST_PATH_SEQ_BASE = 1 << 47                     # toucli/record.py: the fast path's half of the space

# Fuzz kinds: name -> the drop counter (docs/STATS.md ``drops``) each datagram of it must
# add 1 to, and its share of --count.
KINDS: dict[str, tuple[str, float]] = {
    "random": ("malformed", 0.19),            # random bytes, 1..1500 of them
    "truncated": ("malformed", 0.12),         # a real datagram cut short: 1..len-1 bytes
    "gue_bitflip": ("malformed", 0.12),       # a real datagram with one bit of the GUE header flipped
    "sid_bitflip": ("unknown_session", 0.08), # ... one bit of the session ID flipped
    "bad_tag": ("auth", 0.14),                # application-data record, live session ID, fresh sequence number
    "bad_tag_alert": ("auth", 0.04),          # the same as an alert record
    "bad_handshake": ("stale_handshake", 0.05),  # handshake-type records with the live session ID
    "bad_hello": ("malformed", 0.02),         # handshake records with session ID 0 that are no ClientHello
    "replay": ("replay", 0.17),               # copies of the client's records, captured by the relay
    "oversized": ("malformed", 0.01),         # 65507 bytes (random, or a record claiming all of it)
    "empty": ("malformed", 0.06),             # zero bytes
}
WATCHED = ("malformed", "unknown_session", "auth", "stale_handshake", "replay", "not_established",
           "amplification")
FROM_CLIENT_SHARE = 8        # every 8th datagram of a kind leaves from the client's own address (the relay)


# ------------------------------------------------------------------ observing the target
def udp_socket_state(port: int, host: str = "127.0.0.1") -> tuple[int, int] | None:
    """``(rx_queue bytes, drops)`` of the IPv4 UDP socket bound to ``host:port``
    (/proc/net/udp, proc(5)); None when there is none."""
    local = "%08X:%04X" % (struct.unpack("=I", socket.inet_aton(host))[0], port)
    try:
        with open("/proc/net/udp") as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[1] == local:
                    return int(fields[4].split(":")[1], 16), int(fields[-1])
    except OSError:
        return None
    return None


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB (proc(5))."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def snapshot(control: str, timeout: float = 5.0) -> dict:
    """The latest statistics snapshot of a running tou, from its control socket
    (docs/STATS.md: JSON lines over a Unix stream socket)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(control)
        s.sendall(b'{"get": "snapshot"}\n')
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            buf += chunk
    return json.loads(buf)


def drops_of(snap: dict) -> dict[str, int]:
    d = snap.get("drops") or {}
    return {k: int(d.get(k, 0)) for k in WATCHED}


# ------------------------------------------------------------------------------ relay
class Relay:
    """A UDP relay between one client and ``target``, in a thread.

    The client sends to :attr:`port`; its datagrams leave for ``target`` from another
    socket (:attr:`upstream`, the address the target sees as the client's), and the
    target's answers go back to the client. Every client datagram that carries an
    application-data record of a session (docs/PROTOCOL.md §5) is kept, with the time
    it was forwarded, in :attr:`captured` (the latest ``capture`` of them).
    """

    def __init__(self, target: tuple[str, int], host: str = "127.0.0.1", capture: int = 4096) -> None:
        self.target = target
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.front.bind((host, 0))
        self.upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.upstream.bind((host, 0))
        for s in (self.front, self.upstream):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            s.setblocking(False)
        self.port = self.front.getsockname()[1]
        self.client: tuple[str, int] | None = None
        self.first_datagram: float | None = None        # time.monotonic() of the client's first
        self.first_datagram_data: bytes | None = None
        self.captured: deque[tuple[float, bytes]] = deque(maxlen=capture)
        self.session_id: int | None = None
        self.top_seq = 0                                 # highest client record sequence number seen
        self.forwarded = [0, 0]                          # client -> target, target -> client
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="relay", daemon=True)

    def start(self) -> "Relay":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.front.close()
        self.upstream.close()

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.front, selectors.EVENT_READ)
        sel.register(self.upstream, selectors.EVENT_READ)
        while not self._stop.is_set():
            for key, _ in sel.select(0.05):
                sock = key.fileobj
                for _ in range(256):
                    try:
                        data, addr = sock.recvfrom(65536)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:            # an ICMP error reported through the read
                        continue
                    try:
                        if sock is self.front:
                            self._from_client(data, addr)
                        elif addr == self.target and self.client is not None:
                            self.front.sendto(data, self.client)
                            self.forwarded[1] += 1
                    except OSError:
                        pass
        sel.close()

    def _from_client(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.client is None:
            self.client = addr
            self.first_datagram = time.monotonic()
            self.first_datagram_data = data
        if addr != self.client:
            return
        self.upstream.sendto(data, self.target)
        self.forwarded[0] += 1
        if len(data) > GUE_LEN + RECORD_HEADER + 24 and data[:8] == GUE_HEAD and data[GUE_LEN] == CT_APP:
            sid = int.from_bytes(data[8:12], "big")
            if sid:
                self.session_id = sid
                self.top_seq = max(self.top_seq, int.from_bytes(data[GUE_LEN + 5:GUE_LEN + 11], "big"))
                self.captured.append((time.monotonic(), data))


# --------------------------------------------------------------------------- builders
def record(sid: int, ctype: int, epoch: int, seq: int, fragment: bytes) -> bytes:
    """A datagram as tou frames it (docs/PROTOCOL.md §5): GUE header, session ID, one DTLS
    1.2 record header ``type fe fd epoch seq length`` and ``fragment``."""
    return (GUE_HEAD + sid.to_bytes(4, "big") + bytes((ctype, 0xFE, 0xFD)) + epoch.to_bytes(2, "big")
            + seq.to_bytes(6, "big") + len(fragment).to_bytes(2, "big") + fragment)


def flip_bit(data: bytes, lo: int, hi: int, rng: random.Random) -> bytes:
    """``data`` with one random bit flipped in bytes ``lo..hi-1``."""
    b = bytearray(data)
    i = rng.randrange(lo, hi)
    b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def bad_tag_record(sid: int, seq: int, rng: random.Random, ctype: int = CT_APP) -> bytes:
    """An epoch-1 AES-GCM-shaped record of session ``sid`` whose tag cannot verify:
    explicit nonce = epoch || seq as tou writes it (§7.2), random ciphertext and tag."""
    es = (1 << 48) | seq
    body = es.to_bytes(8, "big") + rng.randbytes(rng.randrange(20, 1400)) + rng.randbytes(16)
    return record(sid, ctype, 1, seq, body)


def build_pool(kind: str, rng: random.Random, sid: int, top_seq: int, captured: list[bytes],
               size: int = 512) -> list[bytes]:
    """``size`` datagrams of one fuzz kind (:data:`KINDS`), cycled through by the sender."""
    def real() -> bytes:
        return rng.choice(captured)

    if kind == "random":
        return [rng.randbytes(rng.randrange(1, 1501)) for _ in range(size)]
    if kind == "truncated":
        out = []
        for _ in range(size):
            d = real()
            n = rng.randrange(1, GUE_LEN + RECORD_HEADER + 24) if rng.random() < 0.5 else rng.randrange(1, len(d))
            out.append(d[:n])
        return out
    if kind == "gue_bitflip":
        return [flip_bit(real(), 0, 8, rng) for _ in range(size)]
    if kind == "sid_bitflip":
        return [flip_bit(real(), 8, 12, rng) for _ in range(size)]
    if kind == "bad_tag":
        # Far right of the anti-replay window (RFC 6347 §4.1.2.6), so the window lets
        # them through to the tag check; a record that fails it never moves the window.
        return [bad_tag_record(sid, top_seq + (1 << 30) + i, rng) for i in range(size)]
    if kind == "bad_tag_alert":
        return [bad_tag_record(sid, top_seq + (1 << 31) + i, rng, CT_ALERT) for i in range(size)]
    if kind == "bad_handshake":
        out = []
        for i in range(size):
            pick = i % 4
            if pick == 0:      # epoch 1 (the protected Finished's epoch), in OpenSSL's half
                out.append(record(sid, CT_HANDSHAKE, 1, rng.randrange(1 << 20), rng.randbytes(rng.randrange(40, 1400))))
            elif pick == 1:    # epoch 0: a plaintext handshake message
                out.append(record(sid, CT_HANDSHAKE, 0, rng.randrange(1 << 20), rng.randbytes(rng.randrange(12, 1400))))
            elif pick == 2:    # ChangeCipherSpec
                out.append(record(sid, CT_CCS, 0, rng.randrange(1 << 20), b"\x01"))
            else:              # a later epoch (no renegotiation in tou)
                out.append(record(sid, CT_HANDSHAKE, 2, rng.randrange(1 << 20), rng.randbytes(rng.randrange(40, 1400))))
        return out
    if kind == "bad_hello":
        out = []
        for i in range(size):
            body = rng.randbytes(rng.randrange(0, 300))
            if i % 2:          # a handshake header claiming a ClientHello, lengths that do not add up
                body = b"\x01" + rng.randbytes(11) + body
            out.append(record(0, CT_HANDSHAKE, 0, rng.randrange(1 << 20), body))
        return out
    if kind == "replay":
        return list(captured[-size:])
    if kind == "oversized":
        frag = MAX_UDP - GUE_LEN - RECORD_HEADER
        return [rng.randbytes(MAX_UDP),
                record(sid, CT_APP, 1, top_seq + (1 << 32), rng.randbytes(frag)),
                rng.randbytes(MAX_UDP),
                record(sid, CT_APP, 1, top_seq + (1 << 32) + 1, rng.randbytes(frag))]
    if kind == "empty":
        return [b""]
    raise ValueError(kind)


# ------------------------------------------------------------------------------ fuzz
class Pacer:
    """Keeps the target's receive queue short (reads it from /proc every 64 KiB or 128
    datagrams sent): a hostile sender that overflows the socket only measures the
    kernel's drops. Kernel drops are still counted, and accounted for by the caller."""

    def __init__(self, port: int, limit: int = 256 << 10) -> None:
        self.port = port
        self.limit = limit
        self._bytes = 0
        self._count = 0
        self.waits = 0

    def sent(self, n: int) -> None:
        self._bytes += n + 1024            # roughly the skb's truesize
        self._count += 1
        if self._bytes < (64 << 10) and self._count < 128:
            return
        self._bytes = self._count = 0
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            st = udp_socket_state(self.port)
            if st is None or st[0] < self.limit:
                return
            self.waits += 1
            time.sleep(0.0005)


def wait_drained(port: int, control: str, before: dict[str, int], expected: int,
                 timeout: float = 15.0) -> dict:
    """After a phase: wait until the target has read its socket and the counters of a
    fresh snapshot account for ``expected`` new drops (or stopped moving), and return it."""
    deadline = time.monotonic() + timeout
    last: dict | None = None
    still = 0
    while time.monotonic() < deadline:
        st = udp_socket_state(port)
        if st is not None and st[0] > 0:
            time.sleep(0.01)
            continue
        time.sleep(0.12)                       # one --stats-interval 0.1 sample after the read
        snap = snapshot(control)
        d = drops_of(snap)
        moved = sum(d[k] - before[k] for k in WATCHED)
        if moved >= expected:
            return snap
        if last is not None and drops_of(last) == d:
            still += 1
            if still >= 4:
                return snap
        else:
            still = 0
        last = snap
    return last if last is not None else snapshot(control)


def fuzz(args: argparse.Namespace) -> dict:
    host, port = args.target.rsplit(":", 1)
    target = (host, int(port))
    rng = random.Random(args.seed)
    relay = Relay(target).start()
    print(f"relay {relay.port}", flush=True)
    deadline = time.monotonic() + 30
    while (relay.session_id is None or len(relay.captured) < 64) and time.monotonic() < deadline:
        time.sleep(0.02)
    if relay.session_id is None or len(relay.captured) < 64:
        raise SystemExit("hostile fuzz: no live session through the relay within 30 s")

    socks = []
    for i in range(16):        # other sources: 127.0.0.1 and a few more of 127/8
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((("127.0.0.1", "127.0.0.2", "127.3.2.1", "127.250.0.9")[i % 4], 0))
        socks.append(s)
    senders = [s.sendto for s in socks]
    from_client = relay.upstream.sendto
    pacer = Pacer(target[1])
    total = args.count
    counts = {k: max(1, int(total * share)) for k, (_c, share) in KINDS.items()}
    counts["random"] += total - sum(counts.values())

    rss_before = rss_kib(args.pid) if args.pid else None
    snap0 = wait_drained(target[1], args.control, drops_of(snapshot(args.control)), 0, timeout=2)
    drops0 = drops_of(snap0)
    kernel0 = (udp_socket_state(target[1]) or (0, 0))[1]
    phases = []
    t_start = time.monotonic()
    send_seconds = 0.0
    for kind, (counter, _share) in KINDS.items():
        n = counts[kind]
        now = time.monotonic()
        captured = [d for t, d in relay.captured if now - t > 0.1] or [d for _t, d in relay.captured]
        pool = build_pool(kind, rng, relay.session_id, relay.top_seq, captured)
        before = drops_of(snapshot(args.control))
        k_before = (udp_socket_state(target[1]) or (0, 0))[1]
        t0 = time.monotonic()
        plen = len(pool)
        nsend = len(senders)
        for i in range(n):
            d = pool[i % plen]
            try:
                if i % FROM_CLIENT_SHARE == 0:
                    from_client(d, target)
                else:
                    senders[i % nsend](d, target)
            except OSError:
                pass
            pacer.sent(len(d))
        t1 = time.monotonic()
        send_seconds += t1 - t0
        snap = wait_drained(target[1], args.control, before, n)
        after = drops_of(snap)
        k_after = (udp_socket_state(target[1]) or (0, 0))[1]
        phases.append({"kind": kind, "counter": counter, "sent": n, "seconds": round(t1 - t0, 3),
                       "kernel_drops": k_after - k_before,
                       "deltas": {k: after[k] - before[k] for k in WATCHED}})
    elapsed = time.monotonic() - t_start
    final = snapshot(args.control)
    rss_after = rss_kib(args.pid) if args.pid else None
    for s in socks:
        s.close()
    result = {
        "count": total, "seconds": round(elapsed, 2), "send_seconds": round(send_seconds, 2),
        "rate": round(total / send_seconds) if send_seconds else None, "pacer_waits": pacer.waits,
        "session_id": relay.session_id, "captured": len(relay.captured),
        "kernel_drops": (udp_socket_state(target[1]) or (0, 0))[1] - kernel0,
        "rss_kib_before": rss_before, "rss_kib_after": rss_after,
        "drops_before": drops0, "drops_after": drops_of(final),
        "peers_after": len(final.get("peers") or []),
        "phases": phases,
    }
    print(json.dumps(result), flush=True)
    # Keep relaying the live transfer until told to stop.
    wait_stdin_eof(deadline=time.monotonic() + 600)
    relay.stop()
    return result


def wait_stdin_eof(deadline: float) -> None:
    while time.monotonic() < deadline:
        r, _, _ = select.select([sys.stdin], [], [], 0.2)
        if r and not os.read(sys.stdin.fileno(), 4096):
            return


# ----------------------------------------------------------------------------- flood
HELLO_RANDOM = GUE_LEN + RECORD_HEADER + 12 + 2      # GUE, record header, handshake header, client_version


def flood(args: argparse.Namespace) -> dict:
    host, port = args.target.rsplit(":", 1)
    target = (host, int(port))
    with open(args.hello) as f:
        hello = bytearray(bytes.fromhex(f.read().strip()))
    if not (hello[:12] == GUE_HEAD + bytes(4) and hello[GUE_LEN] == CT_HANDSHAKE and hello[GUE_LEN + RECORD_HEADER] == 1):
        raise SystemExit("hostile flood: --hello is not a ClientHello datagram with session ID 0")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    rng = random.Random(args.seed)
    # 4096 source addresses in 127.0.0.0/8; each socket sends --per-source hellos, is kept
    # open 0.5 s more to swallow the HelloVerifyRequests (no ICMP back at the target), then
    # closed and replaced by one on a new address and port.
    addresses = [f"127.{1 + i // 4096}.{(i // 16) % 256}.{1 + i % 16 * 15}" for i in range(4096)]
    active: list[socket.socket] = []
    retiring: deque[tuple[float, socket.socket]] = deque()
    sources = 0
    replies = 0
    next_addr = 0

    def new_socket() -> socket.socket:
        nonlocal sources, next_addr
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((addresses[next_addr % len(addresses)], 0))
        s.setblocking(False)
        next_addr += 1
        sources += 1
        return s

    def drain(s: socket.socket) -> None:
        nonlocal replies
        while True:
            try:
                s.recv(2048)
                replies += 1
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return

    width = args.sockets
    active = [new_socket() for _ in range(width)]
    uses = [0] * width
    rss_before = rss_kib(args.pid) if args.pid else None
    kernel0 = (udp_socket_state(target[1]) or (0, 0))[1]
    sent = 0
    stdin_open = True
    seq = 0
    t0 = time.monotonic()
    hard_deadline = t0 + args.max_seconds
    print("flooding", flush=True)
    while (sent < args.count or (args.until_eof and stdin_open)) and time.monotonic() < hard_deadline:
        for j in range(width):
            hello[HELLO_RANDOM:HELLO_RANDOM + 32] = rng.randbytes(32)
            hello[GUE_LEN + 5:GUE_LEN + 11] = seq.to_bytes(6, "big")
            seq += 1
            try:
                active[j].sendto(hello, target)
            except OSError:
                pass
            sent += 1
            uses[j] += 1
            if uses[j] >= args.per_source:
                retiring.append((time.monotonic(), active[j]))
                active[j] = new_socket()
                uses[j] = 0
        now = time.monotonic()
        while retiring and now - retiring[0][0] > 0.5:
            _t, s = retiring.popleft()
            drain(s)
            s.close()
        if args.rate:
            ahead = sent / args.rate - (now - t0)
            if ahead > 0:
                time.sleep(ahead)
        if args.until_eof and stdin_open and sent >= args.count:
            r, _, _ = select.select([sys.stdin], [], [], 0)
            if r and not os.read(sys.stdin.fileno(), 4096):
                stdin_open = False
    elapsed = time.monotonic() - t0
    time.sleep(0.5)
    for s in active:
        drain(s)
        s.close()
    for _t, s in retiring:
        drain(s)
        s.close()
    result = {"sent": sent, "seconds": round(elapsed, 2), "rate": round(sent / elapsed) if elapsed else None,
              "sources": sources, "addresses": min(next_addr, len(addresses)), "hello_verify_received": replies,
              "kernel_drops": (udp_socket_state(target[1]) or (0, 0))[1] - kernel0,
              "rss_kib_before": rss_before, "rss_kib_after": rss_kib(args.pid) if args.pid else None}
    print(json.dumps(result), flush=True)
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="hostile.py", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fuzz", help="relay a client and fuzz the target")
    f.add_argument("--target", required=True, help="HOST:PORT of the tou listener (127/8)")
    f.add_argument("--control", required=True, help="the listener's control socket")
    f.add_argument("--pid", type=int, default=0, help="the listener's PID (RSS before/after)")
    f.add_argument("--count", type=int, default=20000)
    f.add_argument("--seed", type=int, default=19)
    h = sub.add_parser("flood", help="ClientHellos from many sources")
    h.add_argument("--target", required=True)
    h.add_argument("--hello", required=True, help="file with the captured ClientHello datagram, hex")
    h.add_argument("--pid", type=int, default=0)
    h.add_argument("--count", type=int, default=10000)
    h.add_argument("--rate", type=float, default=0.0, help="hellos per second (0: as fast as possible)")
    h.add_argument("--sockets", type=int, default=64, help="sources sending at once")
    h.add_argument("--per-source", type=int, default=8, help="hellos from each (address, port)")
    h.add_argument("--until-eof", action="store_true", help="after --count, go on until stdin closes")
    h.add_argument("--max-seconds", type=float, default=300.0)
    h.add_argument("--seed", type=int, default=19)
    args = p.parse_args(argv)
    if not args.target.startswith("127."):
        raise SystemExit("hostile.py sends to 127.0.0.0/8 only")
    sys.setswitchinterval(0.001)          # the relay thread must not wait 5 ms for the sender
    (fuzz if args.cmd == "fuzz" else flood)(args)


if __name__ == "__main__":
    main()
