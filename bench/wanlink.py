"""An emulated WAN between two network namespaces: TUN devices and a userspace link emulator.

::

    namespace A: 10.78.0.1 (tunA) --fd--> [ emulator process ] --fd--> (tunB) 10.78.0.2 :namespace B
                                           Link A->B, Link B->A

:class:`WanPath` creates both namespaces and a point-to-point TUN device in
each (the device's fd stays outside, so every IP packet either side routes to
the other comes out of an fd), then starts this module as the emulator process
with both fds. The emulator moves packets through one :class:`toucli.link.Link`
per direction, driven by the real monotonic clock: one-way delay (RTT/2),
uniform jitter, a bottleneck rate with a drop-tail queue (one bandwidth-delay
product by default, at least 64 kB) and random loss, applied in both directions
(the ACK path too). Everything stays inside the two namespaces; ``close()``
stops the emulator (by PID), which destroys the devices, and deletes the
namespaces. In each namespace TCP buffers may grow to 32 MB so the kernel's
TCP is not window-limited at 300 ms x 100 Mbit/s.

Run directly it measures nothing by itself; ``python bench/wanlink.py relay
...`` is how :class:`WanPath` starts it, and on SIGTERM it writes both links'
counters and its own loop statistics as JSON to ``--stats-out``.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import random
import select
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

A_ADDR = "10.78.0.1"
B_ADDR = "10.78.0.2"
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


def _ip(*args: str) -> None:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")


def _tun(name: str) -> tuple[int, str]:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    ifr = fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd, ifr[:16].rstrip(b"\0").decode()


class WanPath:
    """Two namespaces joined through the emulator process (a context manager).

    ``rtt`` seconds, ``loss`` a probability per packet and direction, ``rate_bps``
    None for no bottleneck, ``queue_bytes`` None for one BDP (>= 64 kB).
    """

    _count = 0

    def __init__(self, rtt: float, loss: float = 0.0, rate_bps: float | None = 100e6,
                 jitter: float = 0.0, queue_bytes: int | None = None, seed: int = 1, mtu: int = 1500) -> None:
        WanPath._count += 1
        tag = f"{os.getpid() % 100000}x{WanPath._count}"
        self.ns_a, self.ns_b = f"toubench-{tag}-a", f"toubench-{tag}-b"
        self.rtt, self.loss, self.rate_bps, self.jitter = rtt, loss, rate_bps, jitter
        if queue_bytes is None and rate_bps is not None:
            queue_bytes = max(64_000, int(rate_bps * rtt / 8))
        self.queue_bytes = queue_bytes
        self.stats: dict[str, Any] | None = None
        self._made: list[str] = []
        self.emulator: subprocess.Popen | None = None
        self._stats_file = Path(f"/tmp/toubench-wan-{tag}.json")
        fds: list[int] = []
        try:
            for ns in (self.ns_a, self.ns_b):
                _ip("netns", "add", ns)
                self._made.append(ns)
            for ns, dev, local, peer in ((self.ns_a, f"tbA{tag}", A_ADDR, B_ADDR),
                                         (self.ns_b, f"tbB{tag}", B_ADDR, A_ADDR)):
                fd, dev = _tun(dev[:15])
                fds.append(fd)
                _ip("link", "set", dev, "netns", ns)
                _ip("-n", ns, "addr", "add", f"{local}/32", "peer", peer, "dev", dev)
                _ip("-n", ns, "link", "set", dev, "mtu", str(mtu), "txqueuelen", "10000", "up")
                _ip("-n", ns, "link", "set", "lo", "up")
                for key, val in (("net.ipv4.tcp_rmem", "4096 131072 33554432"),
                                 ("net.ipv4.tcp_wmem", "4096 65536 33554432"),
                                 ("net.core.rmem_max", "33554432"), ("net.core.wmem_max", "33554432")):
                    subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", f"{key}={val}"],
                                   capture_output=True, timeout=10)
            argv = [sys.executable, __file__, "relay", "--fd-a", str(fds[0]), "--fd-b", str(fds[1]),
                    "--delay", repr(rtt / 2), "--jitter", repr(jitter), "--loss", repr(loss),
                    "--seed", str(seed), "--stats-out", str(self._stats_file)]
            if rate_bps is not None:
                argv += ["--rate", repr(rate_bps)]
            if queue_bytes is not None:
                argv += ["--queue", str(queue_bytes)]
            self.emulator = subprocess.Popen(argv, pass_fds=fds, stdout=subprocess.PIPE,
                                             stderr=subprocess.PIPE, start_new_session=True)
            line = self.emulator.stdout.readline()       # "ready" once both fds are in its loop
            if b"ready" not in line:
                raise RuntimeError(f"emulator did not start: {self.emulator.stderr.read(2000)!r}")
        except BaseException:
            for fd in fds:
                os.close(fd)
            self.close()
            raise
        for fd in fds:
            os.close(fd)       # the emulator holds them now; closing there destroys the devices

    def __enter__(self) -> "WanPath":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def emulator_cpu(self) -> float:
        """CPU seconds the emulator used so far."""
        if self.emulator is None:
            return 0.0
        try:
            f = Path(f"/proc/{self.emulator.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return 0.0

    def close(self) -> dict[str, Any] | None:
        """Stop the emulator (its counters land in ``self.stats``) and delete the namespaces."""
        if self.emulator is not None:
            if self.emulator.poll() is None:
                self.emulator.send_signal(signal.SIGTERM)
                try:
                    self.emulator.wait(5)
                except subprocess.TimeoutExpired:
                    self.emulator.kill()
                    self.emulator.wait(5)
            for f in (self.emulator.stdout, self.emulator.stderr):
                if f is not None:
                    f.close()
            self.emulator = None
            try:
                self.stats = json.loads(self._stats_file.read_text())
            except (OSError, ValueError):
                self.stats = None
            self._stats_file.unlink(missing_ok=True)
        for ns in self._made:
            # processes still inside (a benchmark's leftovers) were started and are killed by
            # their owner by PID; deleting the name is enough here
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        self._made.clear()
        return self.stats


# ------------------------------------------------------------------ the emulator process
def relay(a: argparse.Namespace) -> None:
    from toucli.link import Link

    fd_a, fd_b = a.fd_a, a.fd_b
    os.set_blocking(fd_a, False)
    os.set_blocking(fd_b, False)
    rng = random.Random(a.seed)
    ab = Link(random.Random(rng.random()), a.delay, a.jitter, a.rate, a.queue, a.loss)
    ba = Link(random.Random(rng.random()), a.delay, a.jitter, a.rate, a.queue, a.loss)
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    clock = time.monotonic
    loops = wakeups_late = 0
    late_total = 0.0
    late_max = 0.0
    read, write = os.read, os.write
    pairs = ((fd_a, ab), (fd_b, ba))
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    t0 = clock()
    while not stop:
        now = clock()
        for link, out in ((ab, fd_b), (ba, fd_a)):
            nd = link.next_delivery()
            if nd is not None and nd <= now:
                lateness = now - nd
                if lateness > 0.001:
                    wakeups_late += 1
                late_total += lateness
                if lateness > late_max:
                    late_max = lateness
                for pkt in link.deliver(now):
                    try:
                        write(out, pkt)
                    except OSError:
                        pass
        nds = [d for d in (ab.next_delivery(), ba.next_delivery()) if d is not None]
        timeout = max(0.0, min(nds) - clock()) if nds else 0.2
        try:
            ready, _, _ = select.select([fd_a, fd_b], [], [], min(timeout, 0.2))
        except InterruptedError:
            continue
        loops += 1
        if not ready:
            continue
        now = clock()
        for fd, link in pairs:
            if fd not in ready:
                continue
            for _ in range(256):
                try:
                    pkt = read(fd, 65536)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break
                link.send(pkt, now)
    elapsed = clock() - t0
    out = {"a_to_b": ab.stats(), "b_to_a": ba.stats(), "loops": loops, "elapsed": elapsed,
           "late_deliveries_over_1ms": wakeups_late, "max_lateness": late_max,
           "cpu": sum(os.times()[:2])}
    Path(a.stats_out).write_text(json.dumps(out))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("relay")
    p.add_argument("--fd-a", type=int, required=True)
    p.add_argument("--fd-b", type=int, required=True)
    p.add_argument("--delay", type=float, required=True, help="one-way delay, s")
    p.add_argument("--jitter", type=float, default=0.0)
    p.add_argument("--rate", type=float, default=None, help="bit/s")
    p.add_argument("--queue", type=int, default=None, help="drop-tail queue, bytes")
    p.add_argument("--loss", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--stats-out", required=True)
    a = ap.parse_args(argv)
    relay(a)


if __name__ == "__main__":
    main(sys.argv[1:])
