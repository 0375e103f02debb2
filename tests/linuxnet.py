"""Test harness: the Linux kernel's TCP on one side of a TUN device, tou's engine on the other.

``Netns`` creates a private network namespace and a TUN device (IFF_TUN |
IFF_NO_PI) whose file descriptor stays in this process; the device is moved
into the namespace and addressed there as a point-to-point link::

    namespace: 10.77.0.2 (KERNEL_ADDR)  <-- TUN -->  this process: 10.77.0.1 (ENGINE_ADDR)

Every packet the kernel routes to 10.77.0.1 comes out of the fd; every IPv4
packet written to the fd enters the namespace's stack. Nothing leaves the
namespace. ``Relay`` connects the fd to a sans-I/O :class:`Endpoint`:
IPv4 (RFC 791) wrapping and unwrapping, the real-address TCP checksum (RFC 9293
§3.1; the kernel verifies it), seeded loss and reordering, a ring of recent
segments for failure reports, and a record of both sides' SYN options.

Also here: a minimal IPv4 codec and a raw TCP header builder/parser that do not
depend on the engine's codec, for crafting packets by hand (plumbing test) and
inspecting options exactly as they travel on the wire.
"""

from __future__ import annotations

import collections
import fcntl
import os
import random
import select
import shutil
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

from toucli.stack.checksum import internet_checksum, tcp_checksum

KERNEL_ADDR = "10.77.0.2"
ENGINE_ADDR = "10.77.0.1"
KERNEL_IP = socket.inet_aton(KERNEL_ADDR)
ENGINE_IP = socket.inet_aton(ENGINE_ADDR)
KERNEL_PEER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernel_peer.py")

# linux/if_tun.h
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000

PROTO_TCP = 6

# TCP flags (RFC 9293 §3.1) and option kinds (RFC 9293 §3.2, RFC 7323, RFC 2018).
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
OPT_EOL, OPT_NOP, OPT_MSS, OPT_WSCALE, OPT_SACK_PERM, OPT_SACK, OPT_TS = 0, 1, 2, 3, 4, 5, 8


# --------------------------------------------------------------------------- IPv4 (RFC 791)

_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IP_DF = 0x4000


class IPv4Packet(NamedTuple):
    src: bytes
    dst: bytes
    proto: int
    ttl: int
    flags_frag: int
    payload: bytes


def ipv4_build(src: bytes, dst: bytes, payload: bytes, ident: int = 0, proto: int = PROTO_TCP,
               ttl: int = 64) -> bytes:
    """An IPv4 packet with a 20-byte header, DF set and a correct header checksum (RFC 791 §3.1)."""
    hdr = bytearray(20)
    _IPV4.pack_into(hdr, 0, 0x45, 0, 20 + len(payload), ident & 0xFFFF, _IP_DF, ttl, proto, 0, src, dst)
    struct.pack_into("!H", hdr, 10, internet_checksum(hdr))
    return bytes(hdr) + payload


def ipv4_parse(packet: bytes) -> IPv4Packet | None:
    """Header fields and payload of an IPv4 packet, or None for anything else (IPv6, junk,
    fragments, bad header checksum)."""
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    vihl, _tos, total, _ident, ff, ttl, proto, _csum, src, dst = _IPV4.unpack_from(packet)
    ihl = (vihl & 0x0F) * 4
    if ihl < 20 or total < ihl or total > len(packet):
        return None
    if ff & 0x3FFF:  # a fragment (MF or offset): not expected on this link
        return None
    if internet_checksum(memoryview(packet)[:ihl]) not in (0, 0xFFFF):
        return None
    return IPv4Packet(src, dst, proto, ttl, ff, packet[ihl:total])


# --------------------------------------------------------------------------- raw TCP (RFC 9293 §3.1)

_TCP = struct.Struct("!HHIIBBHHH")


class TcpHeader(NamedTuple):
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    wnd: int
    options: dict[int, Any]  # kind -> value (MSS int, WS int, SACK_PERM True, TS (val, ecr), SACK blocks)
    payload_len: int


def tcp_options(mss: int | None = None, wscale: int | None = None, sack_perm: bool = False,
                ts: tuple[int, int] | None = None) -> bytes:
    """Option bytes in the order Linux uses, NOP-padded to a multiple of 4."""
    out = b""
    if mss is not None:
        out += struct.pack("!BBH", OPT_MSS, 4, mss)
    if sack_perm and ts is not None:
        out += struct.pack("!BBBBII", OPT_SACK_PERM, 2, OPT_TS, 10, *ts)
    else:
        if sack_perm:
            out += bytes((OPT_NOP, OPT_NOP, OPT_SACK_PERM, 2))
        if ts is not None:
            out += struct.pack("!BBBBII", OPT_NOP, OPT_NOP, OPT_TS, 10, *ts)
    if wscale is not None:
        out += bytes((OPT_NOP, OPT_WSCALE, 3, wscale))
    return out + bytes(-len(out) % 4)


def tcp_build(src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, flags: int,
              wnd: int, options: bytes = b"", payload: bytes = b"", *, corrupt: bool = False) -> bytes:
    """A TCP segment with the real-address checksum (``corrupt`` flips it, for negative tests)."""
    assert len(options) % 4 == 0
    seg = bytearray(20 + len(options) + len(payload))
    _TCP.pack_into(seg, 0, sport, dport, seq, ack, (5 + len(options) // 4) << 4, flags, wnd, 0, 0)
    seg[20:20 + len(options)] = options
    seg[20 + len(options):] = payload
    csum = tcp_checksum(seg, src, dst)
    struct.pack_into("!H", seg, 16, csum ^ (0x5555 if corrupt else 0))
    return bytes(seg)


def tcp_parse(seg: bytes) -> TcpHeader | None:
    """Header fields and parsed options of a raw TCP segment (None if malformed)."""
    if len(seg) < 20:
        return None
    sport, dport, seq, ack, off, flags, wnd, _csum, _urg = _TCP.unpack_from(seg)
    hlen = (off >> 4) * 4
    if hlen < 20 or hlen > len(seg):
        return None
    opts: dict[int, Any] = {}
    i = 20
    while i < hlen:
        kind = seg[i]
        if kind == OPT_EOL:
            break
        if kind == OPT_NOP:
            i += 1
            continue
        if i + 1 >= hlen or seg[i + 1] < 2 or i + seg[i + 1] > hlen:
            return None
        ln = seg[i + 1]
        body = seg[i + 2:i + ln]
        if kind == OPT_MSS and ln == 4:
            opts[kind] = struct.unpack("!H", body)[0]
        elif kind == OPT_WSCALE and ln == 3:
            opts[kind] = body[0]
        elif kind == OPT_SACK_PERM and ln == 2:
            opts[kind] = True
        elif kind == OPT_TS and ln == 10:
            opts[kind] = struct.unpack("!II", body)
        elif kind == OPT_SACK and (ln - 2) % 8 == 0:
            opts[kind] = tuple(struct.unpack_from("!II", body, j) for j in range(0, ln - 2, 8))
        else:
            opts[kind] = bytes(body)
        i += ln
    return TcpHeader(sport, dport, seq, ack, flags, wnd, opts, len(seg) - hlen)


def flag_str(flags: int) -> str:
    return "".join(c for b, c in ((SYN, "S"), (FIN, "F"), (RST, "R"), (PSH, "P"), (ACK, ".")) if flags & b) or "-"


# --------------------------------------------------------------------------- namespace + TUN

def unavailable_reason() -> str | None:
    """Why the namespace tests cannot run here, or None when they can."""
    if not sys.platform.startswith("linux"):
        return "needs Linux"
    if os.geteuid() != 0:
        return "needs root (creates a network namespace and a TUN device)"
    if shutil.which("ip") is None:
        return "needs the `ip` command (iproute2)"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    if probe.returncode != 0:
        return f"`ip netns` unavailable: {probe.stderr.strip()}"
    return None


def run_ip(*args: str) -> None:
    """``ip ARGS`` (iproute2); RuntimeError with its message when it fails."""
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")


class Netns:
    """A network namespace holding the kernel end of a TUN link whose fd is ours.

    Use as a context manager (or call :meth:`close`): it kills the processes it
    spawned (by PID), closes the fd (destroying the device) and deletes the
    namespace.
    """

    _count = 0

    def __init__(self, mtu: int = 1500) -> None:
        Netns._count += 1
        pid = os.getpid()
        self.name = f"tou-parity-{pid}-{Netns._count}"
        self.dev = f"toup{pid % 100000}x{Netns._count}"[:15]
        self.fd = -1
        self.procs: list[subprocess.Popen] = []
        self._ns_made = False
        try:
            self._ip("netns", "add", self.name)
            self._ns_made = True
            self.fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
            ifr = struct.pack("16sH22x", self.dev.encode(), IFF_TUN | IFF_NO_PI)
            ifr = fcntl.ioctl(self.fd, TUNSETIFF, ifr)
            self.dev = ifr[:16].rstrip(b"\0").decode()
            self._ip("link", "set", self.dev, "netns", self.name)
            self._ip("-n", self.name, "addr", "add", f"{KERNEL_ADDR}/32", "peer", ENGINE_ADDR, "dev", self.dev)
            self._ip("-n", self.name, "link", "set", self.dev, "mtu", str(mtu), "txqueuelen", "10000", "up")
            self._ip("-n", self.name, "link", "set", "lo", "up")
            os.set_blocking(self.fd, False)
        except BaseException:
            self.close()
            raise

    _ip = staticmethod(run_ip)

    def __enter__(self) -> "Netns":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def spawn(self, argv: list[str], **kw: Any) -> subprocess.Popen:
        """Start ``argv`` inside the namespace; it is killed (by PID) at close."""
        p = subprocess.Popen(["ip", "netns", "exec", self.name, *argv], **kw)
        self.procs.append(p)
        return p

    def spawn_peer(self, *args: str) -> subprocess.Popen:
        """Start tests/kernel_peer.py inside the namespace, stdin/stdout/stderr piped (text)."""
        return self.spawn([sys.executable, KERNEL_PEER, *args], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def run(self, argv: list[str]) -> str:
        """Run a short command inside the namespace and return its stdout."""
        r = subprocess.run(["ip", "netns", "exec", self.name, *argv], capture_output=True, text=True, timeout=10)
        if r.returncode != 0:
            raise RuntimeError(f"{argv}: {r.stderr.strip()}")
        return r.stdout

    def read_packets(self, limit: int = 256) -> list[bytes]:
        """Packets waiting on the TUN fd (non-blocking, at most ``limit``)."""
        out = []
        for _ in range(limit):
            try:
                out.append(os.read(self.fd, 65536))
            except BlockingIOError:
                break
        return out

    def write_packet(self, packet: bytes) -> None:
        os.write(self.fd, packet)

    def wait_readable(self, timeout: float) -> bool:
        r, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        return bool(r)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            try:
                p.communicate(timeout=5)
            except Exception:  # pragma: no cover - best effort cleanup
                pass
        self.procs.clear()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self._ns_made:
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=10)
            self._ns_made = False


def wait_line(proc: subprocess.Popen, expect: str, timeout: float) -> None:
    """Wait until ``proc`` prints the line ``expect`` on stdout (bounded).

    Reads the pipe's fd byte by byte, so nothing is left in a Python buffer that
    a later ``communicate()`` would miss.
    """
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    line = b""
    while time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not r:
            continue
        ch = os.read(fd, 1)
        if not ch:
            break
        if ch != b"\n":
            line += ch
            continue
        if line.decode(errors="replace").strip() == expect:
            return
        line = b""
    if proc.poll() is None:
        proc.kill()
    _, err = proc.communicate(timeout=5)
    raise TimeoutError(f"kernel peer did not print {expect!r} within {timeout}s (rc={proc.returncode}): {err}")


# --------------------------------------------------------------------------- impairment

@dataclass
class LossyLink:
    """Seeded impairment of one direction: drop ``drop_rate`` of packets and swap
    neighbours in a batch with probability ``reorder_rate``."""

    seed: int
    drop_rate: float = 0.0
    reorder_rate: float = 0.0
    passed: int = 0
    dropped: int = 0
    reordered: int = 0
    rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def drop(self) -> bool:
        """Decide the fate of one packet: True means drop it."""
        if self.drop_rate and self.rng.random() < self.drop_rate:
            self.dropped += 1
            return True
        self.passed += 1
        return False

    def reorder(self, batch: list) -> list:
        """Swap adjacent items of ``batch`` at random (in place; returned for chaining)."""
        if self.reorder_rate and len(batch) > 1:
            i = 0
            while i < len(batch) - 1:
                if self.rng.random() < self.reorder_rate:
                    batch[i], batch[i + 1] = batch[i + 1], batch[i]
                    self.reordered += 1
                    i += 2
                else:
                    i += 1
        return batch


# --------------------------------------------------------------------------- relay

class TraceEntry(NamedTuple):
    t: float
    direction: str  # "k>e" kernel to engine, "e>k" engine to kernel
    fate: str       # "" delivered, "DROP" dropped by the impairment, "BAD" undecodable
    flags: int
    seq: int
    ack: int
    wnd: int
    length: int
    sack: Any
    ts: Any

    def __str__(self) -> str:
        s = (f"{self.t:9.4f} {self.direction} {self.fate:4} [{flag_str(self.flags):3}] "
             f"seq={self.seq} ack={self.ack} wnd={self.wnd} len={self.length}")
        if self.sack:
            s += f" sack={self.sack}"
        if self.ts:
            s += f" ts={self.ts}"
        return s


class Relay:
    """Moves segments between the TUN fd and a sans-I/O Endpoint.

    Call :meth:`step` in a loop; it runs due timers, drains the engine's output
    onto the wire, waits (bounded) for the kernel and feeds what arrived into
    the engine. ``peer`` is the opaque peer name the engine uses for the kernel.
    ``drop_rate``/``reorder_rate`` impair both directions, seeded from ``seed``.
    """

    def __init__(self, net: Netns, ep: Any, *, peer: str = KERNEL_ADDR, seed: int = 1,
                 drop_rate: float = 0.0, reorder_rate: float = 0.0, trace_len: int = 400,
                 flush_every: int = 1) -> None:
        from toucli.stack.tcp import decode_segment, encode_segment

        self._decode = decode_segment
        self._encode = encode_segment
        self.net = net
        self.ep = ep
        # Drain the engine's output after this many delivered segments. 1 behaves like a
        # NIC without GRO: the engine can answer each segment (its ACKs carry fresh SACK
        # blocks). Larger values let it coalesce ACKs over a whole batch, which starves a
        # sender of SACK information when a batch holds more than 3 holes.
        self.flush_every = flush_every
        self.peer = peer
        self.to_engine = LossyLink(seed * 2 + 1, drop_rate, reorder_rate)
        self.to_kernel = LossyLink(seed * 2 + 2, drop_rate, reorder_rate)
        self.trace: collections.deque[TraceEntry] = collections.deque(maxlen=trace_len)
        self.t0 = time.monotonic()
        self.ident = 0
        self.syns: dict[str, list[TcpHeader]] = {"kernel": [], "engine": []}
        self.sack_segments = {"kernel": 0, "engine": 0}
        self.missing_ts = {"kernel": 0, "engine": 0}  # non-RST segments without a timestamp option
        self.rst_segments = {"kernel": 0, "engine": 0}
        # Spurious retransmissions: data segments whose starting sequence number was
        # already delivered to the other side with at least as many bytes.
        self.spurious = {"kernel": 0, "engine": 0}
        self._delivered: dict[str, dict[int, int]] = {"kernel": {}, "engine": {}}
        self.packets_in = 0
        self.packets_out = 0
        self.bad_in = 0
        self.ignored_in = 0

    # -- helpers
    def _record(self, direction: str, fate: str, raw: bytes) -> TcpHeader | None:
        h = tcp_parse(raw)
        if h is None:
            self.trace.append(TraceEntry(time.monotonic() - self.t0, direction, "BAD", 0, 0, 0, 0, len(raw), None, None))
            return None
        side = "kernel" if direction == "k>e" else "engine"
        if h.flags & SYN:
            self.syns[side].append(h)
        sack = h.options.get(OPT_SACK)
        if sack:
            self.sack_segments[side] += 1
        ts = h.options.get(OPT_TS)
        if h.flags & RST:
            self.rst_segments[side] += 1
        elif ts is None:
            self.missing_ts[side] += 1
        if h.payload_len:
            delivered = self._delivered[side]
            if delivered.get(h.seq, 0) >= h.payload_len:
                self.spurious[side] += 1
            elif not fate:
                delivered[h.seq] = h.payload_len
        self.trace.append(TraceEntry(time.monotonic() - self.t0, direction, fate, h.flags, h.seq, h.ack,
                                     h.wnd, h.payload_len, sack, ts))
        return h

    def format_trace(self, last: int = 80) -> str:
        items = list(self.trace)[-last:]
        return "\n".join(str(e) for e in items)

    def counters(self) -> dict[str, int]:
        return {
            "packets_in": self.packets_in, "packets_out": self.packets_out,
            "dropped_to_engine": self.to_engine.dropped, "dropped_to_kernel": self.to_kernel.dropped,
            "reordered_to_engine": self.to_engine.reordered, "reordered_to_kernel": self.to_kernel.reordered,
            "bad_in": self.bad_in, "ignored_in": self.ignored_in,
            "kernel_sack_segments": self.sack_segments["kernel"],
            "engine_sack_segments": self.sack_segments["engine"],
            "kernel_missing_ts": self.missing_ts["kernel"], "engine_missing_ts": self.missing_ts["engine"],
            "kernel_rst": self.rst_segments["kernel"], "engine_rst": self.rst_segments["engine"],
            "kernel_spurious_retx": self.spurious["kernel"], "engine_spurious_retx": self.spurious["engine"],
        }

    # -- the pump
    def flush(self, now: float) -> None:
        """Write the engine's pending segments to the TUN (through the impairment)."""
        out = self.ep.segments_to_send(now)
        if not out:
            return
        packets = []
        for peer, seg in out:
            dst = socket.inet_aton(peer) if isinstance(peer, str) else KERNEL_IP
            raw = bytes(self._encode(seg, src=ENGINE_IP, dst=dst))
            fate = "DROP" if self.to_kernel.drop() else ""
            self._record("e>k", fate, raw)
            if not fate:
                self.ident += 1
                packets.append(ipv4_build(ENGINE_IP, dst, raw, self.ident))
        for p in self.to_kernel.reorder(packets):
            self.net.write_packet(p)
            self.packets_out += 1

    def pull(self, now: float) -> int:
        """Read what the kernel sent and feed it to the engine; returns segments delivered."""
        packets = self.net.read_packets()
        delivered = 0
        for pkt in self.to_engine.reorder(packets):
            now = time.monotonic()  # answering a batch takes milliseconds: keep RTT samples honest
            ip = ipv4_parse(pkt)
            if ip is None or ip.proto != PROTO_TCP or ip.dst != ENGINE_IP:
                self.ignored_in += 1  # IPv6 neighbour discovery, ICMP, ...
                continue
            self.packets_in += 1
            fate = "DROP" if self.to_engine.drop() else ""
            self._record("k>e", fate, ip.payload)
            if fate:
                continue
            seg = self._decode(ip.payload, src=ip.src, dst=ip.dst)
            if not hasattr(seg, "flags"):  # a TcpDrop reason
                self.bad_in += 1
                self.trace.append(TraceEntry(now - self.t0, "k>e", "BAD", 0, 0, 0, 0, len(ip.payload), str(seg), None))
                continue
            self.ep.receive(self.peer, seg, now)
            delivered += 1
            if self.flush_every and delivered % self.flush_every == 0:
                self.flush(now)
        return delivered

    def step(self, max_wait: float = 0.01, app: Callable[[float], None] | None = None) -> None:
        """One round: timers, application callback, output, bounded wait, input."""
        now = time.monotonic()
        dl = self.ep.next_deadline()
        if dl is not None and now >= dl:
            self.ep.handle_timer(now)
        if app is not None:
            app(now)
        self.flush(now)
        dl = self.ep.next_deadline()
        wait = max_wait if dl is None else min(max_wait, dl - time.monotonic())
        if wait > 0:
            self.net.wait_readable(wait)
        now = time.monotonic()
        if self.pull(now):
            if app is not None:
                app(now)
            self.flush(now)
