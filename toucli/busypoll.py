"""Busy polling: look at the sockets for a moment before going to sleep on them.

A process blocked in ``epoll_wait`` pays for its wake-up when a datagram arrives:
the kernel has to schedule it, and on a virtual machine an idle vCPU first has to
be brought out of its halt by the hypervisor. On the 2-core VM tou is developed on
that costs tens of microseconds per hop, and a round trip through a tunnel has
four hops more than a direct connection. Linux offers the same trade for its own
sockets (``SO_BUSY_POLL``, ``net.core.busy_poll``, in microseconds): spend CPU
polling to skip the sleep.

:class:`BusyPollSelector` is an epoll selector for the asyncio loop that, after a
wait that returned events, polls without blocking for up to ``window`` seconds
before it blocks. Between looks it yields the CPU, so a process woken on the same
CPU (the application at either end, on a small machine) runs at once. A tunnel
that has gone quiet (its last wait timed out) sleeps at once, so an idle tunnel
costs no CPU; one that is exchanging small messages keeps its processes awake
between them. It never returns later than the timeout the loop asked for.
"""

from __future__ import annotations

import os
import selectors
import time
from typing import Any

MAX_WINDOW = 0.1        # seconds; a longer spin is a misconfiguration, not a latency choice


class BusyPollSelector(selectors.EpollSelector):
    """``selectors.EpollSelector`` that spins for ``window`` seconds after activity."""

    def __init__(self, window: float) -> None:
        if not 0.0 < window <= MAX_WINDOW:
            raise ValueError(f"busy-poll window must be in (0, {MAX_WINDOW}] seconds, not {window!r}")
        super().__init__()
        self.window = window
        self.active = False          # did the last blocking wait return events?
        self.spun = 0.0              # seconds spent polling (CPU the option costs)
        self.caught = 0              # waits that spinning answered without a sleep

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, Any]]:
        poll = super().select
        if timeout is not None and timeout <= 0:          # a look, not a wait: says nothing of quiet
            ready = poll(0)
            self.active = self.active or bool(ready)
            return ready
        if not self.active:
            ready = poll(timeout)
            self.active = bool(ready)
            return ready
        clock = time.monotonic
        yield_cpu = os.sched_yield        # a spinner gives way to whatever else wants this CPU
        start = clock()
        end = start + (self.window if timeout is None else min(self.window, timeout))
        while True:
            yield_cpu()
            ready = poll(0)
            now = clock()
            if ready:
                self.spun += now - start
                self.caught += 1
                return ready
            if now >= end:
                break
        self.spun += now - start
        ready = poll(None if timeout is None else max(0.0, timeout - (now - start)))
        self.active = bool(ready)
        return ready


def of_loop(loop: Any) -> BusyPollSelector | None:
    """The busy-polling selector ``loop`` runs on, if it runs on one (for statistics)."""
    selector = getattr(loop, "_selector", None)      # asyncio's selector event loops keep it here
    return selector if isinstance(selector, BusyPollSelector) else None
