"""Busy polling: look at the sockets for a moment before going to sleep on them.

A process blocked in ``epoll_wait`` pays for its wake-up when a datagram arrives:
the kernel has to schedule it, and on a virtual machine an idle vCPU first has to
be brought out of its halt by the hypervisor. On the 2-core VM tou is developed on
that costs tens of microseconds per hop, and a round trip through a tunnel has
four hops more than a direct connection. Linux offers the same trade for its own
sockets (``SO_BUSY_POLL``, ``net.core.busy_poll``, in microseconds): spend CPU
polling to skip the sleep.

:class:`BusyPollSelector` is an epoll selector for the asyncio loop that polls
without blocking for a while before it blocks. Between looks it yields the CPU, so
a process woken on the same CPU (the application at either end, on a small
machine) runs at once. It never returns later than the timeout the loop asked for.
How long it polls:

- **fixed** (``--busy-poll USEC``): ``window`` seconds after a wait that returned
  events. A tunnel that has gone quiet (its last wait timed out) sleeps at once.
- **adaptive** (the default, ``--busy-poll auto``): the spin follows the gaps
  between events, up to ``window``, sized the way KVM sizes its halt polling, and
  kept apart for each descriptor: the gap after an event on descriptor F is
  predicted from the gaps that followed F's earlier events. That is what
  request/response traffic looks like from a tunnel process: after it forwards a
  request (an event on the local socket) the reply comes within a round trip,
  while after it delivers the reply (an event on the UDP socket) the next request
  comes when the application's user or program gets to it. A wait that blocked
  and got an event within ``window`` widens the spin after that descriptor to a
  little more than the wait, so the next such gap is caught by polling; a wait
  that got nothing within ``window`` halves it, down to none. So the short gaps
  are bridged, the long ones (think time, an idle tunnel) cost no polling after
  a few halvings, and each gap the spin fails to bridge costs at most its
  current, halving window of CPU. A bulk transfer paced at tens of Mbit/s also
  has short gaps, but nobody waits on them: spinning through them cost a third
  more CPU for the same goodput. So the runtime marks the selector ``bulk`` while
  its datagrams are mostly full-size (:meth:`note_traffic`), and a bulk selector
  does not spin; a wait that times out (the tunnel went quiet) clears the mark.

With ``window`` 0 (``--busy-poll 0``) it never spins.

**Coalesced wake-ups.** The opposite trade, for bulk traffic on a long path. A
datagram every 120 µs (100 Mbit/s of full-size packets) woke the receiving process
for each one, and the loop turn around it (the wait, the timers, the engine's
service, the ACK decision) cost about as much as the datagram's own work: reading
several per wake-up halved the receiver's CPU there (bench/RESULTS.md). While the
selector is ``bulk`` and :attr:`coalesce` is set, a blocking wait first sleeps that
long, so one wake-up reads what arrived meanwhile, as a NIC's interrupt moderation does. The runtime sets it from the path's round-trip
time (:func:`coalesce_delay`): a sixty-fourth of it, at most 1 ms, none below 50 µs.
So what it adds to an ACK's delay is under 2 % of the round trip, and on loopback or a
LAN it never applies. The sleep, too, never outlasts the loop's timeout, so timers
(pacing, retransmission) fire on time.
"""

from __future__ import annotations

import os
import selectors
import time
from typing import Any

MAX_WINDOW = 0.1        # seconds; a longer spin is a misconfiguration, not a latency choice
ADAPTIVE_WINDOW = 200e-6   # seconds: the adaptive spin's ceiling (the default: ``--busy-poll auto``)
GROW = 1.25             # adaptive: the spin covers the last bridgeable wait with this margin
MIN_SPIN = 10e-6        # adaptive: a halved spin below this is no spin
BULK_DATAGRAM = 512     # bytes: datagrams averaging more than this (sent and received) are bulk
BULK_JUDGED_OVER = 32   # datagrams between two judgements of the average
COALESCE_SHARE = 1 / 64     # coalesced wake-ups: this share of the path's round trip ...
COALESCE_MAX = 1e-3         # ... at most this long (seconds)
COALESCE_MIN = 50e-6        # a shorter delay saves nothing (the kernel's timer slack is 50 µs)


def coalesce_delay(rtt: float | None) -> float:
    """Seconds a bulk wait sleeps before it looks, on a path of round-trip time ``rtt``."""
    if rtt is None:
        return 0.0
    delay = min(COALESCE_MAX, rtt * COALESCE_SHARE)
    return delay if delay >= COALESCE_MIN else 0.0


class BusyPollSelector(selectors.EpollSelector):
    """``selectors.EpollSelector`` that polls before sleeping: for ``window`` seconds
    after activity, or (``adaptive``) for a spin that follows the gaps, up to ``window``."""

    def __init__(self, window: float, adaptive: bool = False) -> None:
        if not 0.0 <= window <= MAX_WINDOW:
            raise ValueError(f"busy-poll window must be in [0, {MAX_WINDOW}] seconds, not {window!r}")
        super().__init__()
        self.window = window
        self.adaptive = adaptive
        self._spins: dict[int, float] = {}   # adaptive: the spin after an event on each descriptor
        self._after = -1             # adaptive: descriptor of the last event seen (-1: a wait timed out)
        self.active = False          # fixed: did the last blocking wait return events?
        self.spun = 0.0              # seconds spent polling (CPU the option costs)
        self.caught = 0              # waits that spinning answered without a sleep
        self.bulk = False            # traffic is bulk (note_traffic): no spin, coalesced waits
        self.coalesce = 0.0          # seconds a bulk wait sleeps before it looks (set by the runtime)
        self.coalesced = 0           # waits that did
        self._seen: dict[int, tuple[int, int]] = {}   # note_traffic: datagrams and bytes judged, per socket

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, Any]]:
        poll = super().select
        if timeout is not None and timeout <= 0:          # a look, not a wait: says nothing of quiet
            ready = poll(0)
            if ready:
                self.active = True
                self._after = ready[0][0].fd
            return ready
        if self.bulk and self.coalesce > 0.0:
            return self._coalesced(timeout)
        adaptive = self.adaptive
        after = self._after
        if adaptive:
            learned = self._spins.get(after, 0.0)      # kept while bulk, used again after it
            spin = 0.0 if self.bulk else learned
        else:
            spin = self.window if self.active else 0.0
        clock = time.monotonic
        start = clock()
        if spin > 0.0:
            yield_cpu = os.sched_yield    # a spinner gives way to whatever else wants this CPU
            end = start + (spin if timeout is None else min(spin, timeout))
            while True:
                yield_cpu()
                ready = poll(0)
                now = clock()
                if ready:
                    self.spun += now - start
                    self.caught += 1
                    self._after = ready[0][0].fd
                    return ready
                if now >= end:
                    break
            self.spun += now - start
            if timeout is not None:
                timeout = max(0.0, timeout - (now - start))
        ready = poll(timeout)
        if not adaptive:
            self.active = bool(ready)
            return ready
        if not ready:
            self.bulk = False             # quiet: what comes next is judged afresh
        if ready and (waited := clock() - start) <= self.window:
            self._spins[after] = min(self.window, max(learned, GROW * waited, MIN_SPIN))
        elif learned / 2 >= MIN_SPIN:
            self._spins[after] = learned / 2
        else:
            self._spins.pop(after, None)
        self._after = ready[0][0].fd if ready else -1
        return ready

    def _coalesced(self, timeout: float | None) -> list[tuple[selectors.SelectorKey, Any]]:
        """A bulk wait: sleep :attr:`coalesce` (never past ``timeout``), then wait as usual."""
        delay = self.coalesce if timeout is None else min(self.coalesce, timeout)
        time.sleep(delay)
        self.coalesced += 1
        ready = super().select(None if timeout is None else max(0.0, timeout - delay))
        if ready:
            self.active = True
            self._after = ready[0][0].fd
        else:
            self.active = self.bulk = False      # quiet: what comes next is judged afresh
            self._after = -1
        return ready

    def note_traffic(self, fd: int, datagrams: int, nbytes: int) -> bool:
        """Running totals of the UDP datagrams and bytes socket ``fd`` sent and received:
        every ``BULK_JUDGED_OVER`` datagrams, their average size decides :attr:`bulk`.
        True when it judged (the caller may then set :attr:`coalesce`)."""
        seen_n, seen_b = self._seen.get(fd, (0, 0))
        n = datagrams - seen_n
        if n < BULK_JUDGED_OVER:
            return False
        self.bulk = nbytes - seen_b > BULK_DATAGRAM * n
        self._seen[fd] = (datagrams, nbytes)
        return True

    def spin_after(self, fd: int) -> float:
        """Adaptive: seconds the selector polls in a wait that follows an event on ``fd``."""
        return self._spins.get(fd, 0.0)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        key = super().unregister(fileobj)
        self._spins.pop(key.fd, None)     # a descriptor number is reused; its gaps are not
        self._seen.pop(key.fd, None)
        return key


def of_loop(loop: Any) -> BusyPollSelector | None:
    """The busy-polling selector ``loop`` runs on, if it runs on one (for statistics)."""
    selector = getattr(loop, "_selector", None)      # asyncio's selector event loops keep it here
    return selector if isinstance(selector, BusyPollSelector) else None
