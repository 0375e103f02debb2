"""A UDP relay on loopback that impairs what it carries: the faulty path of the reliability tests.

``tou connect`` sends to :attr:`FaultLink.port`; the relay forwards to the listener
from its own *back* socket, the way a NAT would, and returns the listener's
datagrams to wherever the client last sent from. Each direction drops, reorders,
duplicates, corrupts (one bit flipped) and delays datagrams with the
probabilities of an :class:`Impairment`, drawn from one seeded generator, so a
failing seed replays the same path.

Beyond impairments the relay can act as the network does to a roaming client or
as an attacker on the path: :meth:`FaultLink.rebind` moves the back socket to a
new port or address (NAT rebinding, a client's new address), and
:meth:`FaultLink.replay_from` sends captured client datagrams to the listener
from another address and keeps what comes back there.

Everything runs in one daemon thread; :meth:`FaultLink.close` stops it. Only
127.0.0.0/8 addresses are used.
"""

from __future__ import annotations

import heapq
import random
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

C2S, S2C = "c2s", "s2c"


@dataclass(frozen=True)
class Impairment:
    """Per-datagram probabilities (each direction alike) and delays in seconds."""

    loss: float = 0.0
    reorder: float = 0.0            # held back by ``reorder_delay``, so later ones overtake it
    duplicate: float = 0.0          # delivered twice
    corrupt: float = 0.0            # one random bit flipped
    jitter: float = 0.0             # every datagram delayed uniformly in [0, jitter]
    delay: float = 0.0              # and by this much (one way: the round trip gains twice it)
    reorder_delay: float = 0.004


@dataclass
class Counts:
    seen: int = 0
    dropped: int = 0
    reordered: int = 0
    duplicated: int = 0
    corrupted: int = 0


@dataclass
class _Replay:
    sock: socket.socket
    received: list[bytes] = field(default_factory=list)


class FaultLink:
    """Relay ``127.0.0.1:port`` to ``server`` through :class:`Impairment` ``imp``."""

    def __init__(self, server: tuple[str, int], imp: Impairment = Impairment(), seed: int = 1,
                 capture: int = 0) -> None:
        self.server = server
        self.imp = imp
        self.rand = random.Random(seed)
        self.counts = {C2S: Counts(), S2C: Counts()}
        self.capture_limit = capture
        # ``keep_c2s(data)``: False drops that client datagram (after the impairments' draws)
        self.keep_c2s: Callable[[bytes], bool] | None = None
        self.captured: list[bytes] = []          # the client's first ``capture`` datagrams, as sent
        self._sel = selectors.DefaultSelector()
        self._front = self._bound("127.0.0.1")
        self.port = self._front.getsockname()[1]
        self._sel.register(self._front, selectors.EVENT_READ, C2S)
        self._back = self._bound("127.0.0.1")
        self._sel.register(self._back, selectors.EVENT_READ, S2C)
        self.client: tuple[str, int] | None = None
        self._queue: list[tuple[float, int, str, bytes]] = []
        self._n = 0
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="faultlink", daemon=True)
        self._thread.start()

    # ----------------------------------------------------------- controls
    @property
    def back_addr(self) -> tuple[str, int]:
        """Where the listener sees the client's datagrams come from."""
        return self._back.getsockname()

    def rebind(self, host: str = "127.0.0.1") -> tuple[str, int]:
        """Send from a new back socket on ``host`` (new port); the old one is closed, and
        what the listener still sends to it is lost, as after a NAT's rebinding."""
        new = self._bound(host)
        with self._lock:
            self._sel.unregister(self._back)
            self._back.close()
            self._back = new
            self._sel.register(new, selectors.EVENT_READ, S2C)
        return new.getsockname()

    def replay_from(self, host: str, datagrams: list[bytes]) -> _Replay:
        """Send ``datagrams`` to the listener from a new socket on ``host``; what the
        listener sends back to that socket is kept in the result's ``received``."""
        rp = _Replay(self._bound(host))
        with self._lock:
            self._sel.register(rp.sock, selectors.EVENT_READ, rp)
        for d in datagrams:
            rp.sock.sendto(d, self.server)
        return rp

    def close(self) -> None:
        self._stop = True
        self._thread.join(timeout=5)
        for key in list(self._sel.get_map().values()):
            key.fileobj.close()
        self._sel.close()

    def __enter__(self) -> "FaultLink":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------- relay
    @staticmethod
    def _bound(host: str) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        s.bind((host, 0))
        s.setblocking(False)
        return s

    def _impair(self, way: str, data: bytes, now: float) -> None:
        imp, r, c = self.imp, self.rand, self.counts[way]
        c.seen += 1
        if imp.loss and r.random() < imp.loss:
            c.dropped += 1
            return
        copies = 1
        if imp.duplicate and r.random() < imp.duplicate:
            c.duplicated += 1
            copies = 2
        for _ in range(copies):
            out = data
            if imp.corrupt and out and r.random() < imp.corrupt:
                c.corrupted += 1
                bit = r.randrange(len(out) * 8)
                buf = bytearray(out)
                buf[bit >> 3] ^= 1 << (bit & 7)
                out = bytes(buf)
            delay = imp.delay + (r.uniform(0.0, imp.jitter) if imp.jitter else 0.0)
            if imp.reorder and r.random() < imp.reorder:
                c.reordered += 1
                delay += imp.reorder_delay
            self._n += 1
            heapq.heappush(self._queue, (now + delay, self._n, way, out))

    def _deliver_due(self, now: float) -> None:
        q = self._queue
        while q and q[0][0] <= now:
            _, _, way, data = heapq.heappop(q)
            try:
                if way == C2S:
                    self._back.sendto(data, self.server)
                elif self.client is not None:
                    self._front.sendto(data, self.client)
            except OSError:
                pass            # a full buffer or an unreachable port is a loss, as on a path

    def _run(self) -> None:
        while not self._stop:
            now = time.monotonic()
            timeout = 0.05 if not self._queue else max(0.0, min(0.05, self._queue[0][0] - now))
            with self._lock:
                events = self._sel.select(timeout)
                now = time.monotonic()
                for key, _ in events:
                    self._drain(key, now)
                self._deliver_due(time.monotonic())

    def _drain(self, key: selectors.SelectorKey, now: float) -> None:
        sock = key.fileobj
        for _ in range(256):
            try:
                data, addr = sock.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return      # ICMP port unreachable reported on the socket: nothing to relay
            if isinstance(key.data, _Replay):
                key.data.received.append(data)
            elif key.data == C2S:
                self.client = addr
                if len(self.captured) < self.capture_limit:
                    self.captured.append(data)
                if self.keep_c2s is not None and not self.keep_c2s(data):
                    self.counts[C2S].seen += 1
                    self.counts[C2S].dropped += 1
                    continue
                self._impair(C2S, data, now)
            elif addr == self.server:
                self._impair(S2C, data, now)
