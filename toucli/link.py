"""A one-direction network link model, sans-I/O (time and randomness passed in).

The model follows what a bottleneck router followed by a long wire does, the
way Linux ``netem`` + ``tbf`` are used to emulate a path:

* **Serialization.** At ``rate_bps`` each packet occupies the transmitter for
  ``(len + overhead) * 8 / rate_bps`` seconds; packets leave in FIFO order.
  ``rate_bps=None`` is an infinitely fast transmitter.
* **Drop-tail queue.** A packet is refused when the bytes still waiting or in
  service plus its own size exceed ``queue_bytes`` (an empty queue always
  takes a packet). ``queue_bytes=None`` is an unbounded queue.
* **Loss on the wire.** A packet that got through the queue is lost with
  probability ``loss``; it still used the transmitter. With ``burst_loss =
  (p_good_to_bad, p_bad_to_good)`` a Gilbert-Elliott chain decides: in the
  good state the loss probability is ``loss``, in the bad state every packet is
  lost. The chain steps once per packet, before the loss draw.
* **Propagation.** Arrival = departure + ``delay`` + uniform(0, ``jitter``);
  jitter larger than the gap between packets reorders them.
* **Duplication.** With probability ``duplicate`` a delivered packet arrives a
  second time, with its own jitter draw (a copy made after the bottleneck).

All randomness comes from the ``random.Random`` given, so a seed fixes the
whole history of the link.
"""

from __future__ import annotations

import heapq
import random
from collections import deque

__all__ = ["Link"]


class Link:
    """One direction of a path between two hosts (see the module docstring)."""

    __slots__ = (
        "rng", "delay", "jitter", "rate_bps", "queue_bytes", "loss", "burst_loss", "duplicate",
        "overhead", "_heap", "_order", "_queue", "_backlog", "_busy_until", "_bad",
        "sent", "sent_bytes", "delivered", "delivered_bytes", "dropped_queue", "dropped_loss",
        "duplicated", "max_backlog", "serialized_bytes",
    )

    def __init__(
        self,
        rng: random.Random,
        delay: float,
        jitter: float = 0.0,
        rate_bps: float | None = None,
        queue_bytes: int | None = None,
        loss: float = 0.0,
        burst_loss: tuple[float, float] | None = None,
        duplicate: float = 0.0,
        overhead: int = 0,
    ) -> None:
        if delay < 0 or jitter < 0:
            raise ValueError("delay and jitter must be >= 0")
        if rate_bps is not None and rate_bps <= 0:
            raise ValueError("rate_bps must be > 0 (or None for an infinitely fast link)")
        if queue_bytes is not None and queue_bytes < 0:
            raise ValueError("queue_bytes must be >= 0 (or None for an unbounded queue)")
        if not 0.0 <= loss <= 1.0 or not 0.0 <= duplicate <= 1.0:
            raise ValueError("loss and duplicate are probabilities in [0, 1]")
        if burst_loss is not None and not all(0.0 <= p <= 1.0 for p in burst_loss):
            raise ValueError("burst_loss transition probabilities must be in [0, 1]")
        self.rng = rng
        self.delay = delay
        self.jitter = jitter
        self.rate_bps = rate_bps
        self.queue_bytes = queue_bytes
        self.loss = loss
        self.burst_loss = burst_loss
        self.duplicate = duplicate
        self.overhead = overhead          # bytes added per packet on the wire (e.g. IP+UDP+GUE)
        self._heap: list[tuple[float, int, bytes]] = []   # (arrival, order, packet)
        self._order = 0                   # tie-breaker: equal arrival times keep send order
        self._queue: deque[tuple[float, int]] = deque()   # (departure, wire size) still queued
        self._backlog = 0                 # bytes in _queue
        self._busy_until = 0.0            # when the transmitter finishes its last packet
        self._bad = False                 # Gilbert-Elliott state
        # counters
        self.sent = 0                     # packets offered to send()
        self.sent_bytes = 0
        self.delivered = 0                # packets handed out by deliver(), duplicates included
        self.delivered_bytes = 0
        self.dropped_queue = 0            # refused by the drop-tail queue
        self.dropped_loss = 0             # lost on the wire (random or burst)
        self.duplicated = 0               # extra copies scheduled
        self.max_backlog = 0              # largest queue occupancy seen, bytes
        self.serialized_bytes = 0         # wire bytes the transmitter sent (wire losses too, not queue drops)

    def backlog(self, now: float) -> int:
        """Bytes waiting in or being serialized by the transmitter at ``now``."""
        q = self._queue
        while q and q[0][0] <= now:
            self._backlog -= q.popleft()[1]
        return self._backlog

    def send(self, packet: bytes, now: float) -> bool:
        """Offer ``packet`` at time ``now``; False if the queue or the wire dropped it."""
        self.sent += 1
        self.sent_bytes += len(packet)
        rng = self.rng
        if self.rate_bps is None:
            departure = now
        else:
            wire = len(packet) + self.overhead
            backlog = self.backlog(now)
            if self.queue_bytes is not None and backlog and backlog + wire > self.queue_bytes:
                self.dropped_queue += 1
                return False
            departure = max(now, self._busy_until) + wire * 8.0 / self.rate_bps
            self._busy_until = departure
            self.serialized_bytes += wire
            self._queue.append((departure, wire))
            self._backlog = backlog + wire
            if self._backlog > self.max_backlog:
                self.max_backlog = self._backlog
        if self.burst_loss is not None:
            p_gb, p_bg = self.burst_loss
            if self._bad:
                if rng.random() < p_bg:
                    self._bad = False
            elif rng.random() < p_gb:
                self._bad = True
            if self._bad:
                self.dropped_loss += 1
                return False
        if self.loss and rng.random() < self.loss:
            self.dropped_loss += 1
            return False
        self._schedule(packet, departure)
        if self.duplicate and rng.random() < self.duplicate:
            self.duplicated += 1
            self._schedule(packet, departure)
        return True

    def _schedule(self, packet: bytes, departure: float) -> None:
        arrival = departure + self.delay
        if self.jitter:
            arrival += self.rng.uniform(0.0, self.jitter)
        self._order += 1
        heapq.heappush(self._heap, (arrival, self._order, packet))

    def next_delivery(self) -> float | None:
        """Arrival time of the earliest packet in flight, or None if none is."""
        return self._heap[0][0] if self._heap else None

    def deliver(self, now: float) -> list[bytes]:
        """Packets whose arrival time is <= ``now``, in arrival order."""
        heap = self._heap
        out: list[bytes] = []
        while heap and heap[0][0] <= now:
            out.append(heapq.heappop(heap)[2])
        if out:
            self.delivered += len(out)
            self.delivered_bytes += sum(map(len, out))
        return out

    def in_flight(self) -> int:
        """Packets scheduled for arrival and not yet delivered."""
        return len(self._heap)

    def stats(self) -> dict[str, int]:
        """Counters as a dict (for reports and assertions)."""
        return {
            "sent": self.sent,
            "sent_bytes": self.sent_bytes,
            "delivered": self.delivered,
            "delivered_bytes": self.delivered_bytes,
            "dropped_queue": self.dropped_queue,
            "dropped_loss": self.dropped_loss,
            "duplicated": self.duplicated,
            "max_backlog": self.max_backlog,
            "serialized_bytes": self.serialized_bytes,
        }
