"""Datagram packetization-layer path MTU discovery (RFC 8899), sans-I/O.

Sizes are UDP payload bytes (the "PL datagram" of RFC 8899 §6.1 for a protocol
over UDP): what the runtime may put in one datagram. The runtime turns the
current :attr:`Plpmtud.plpmtu` into an MSS by subtracting its own overhead (GUE,
DTLS record, TCP header and options) and calls ``Connection.set_mss``.

States (RFC 8899 §5.2): BASE (confirm that ``base`` gets through) -> SEARCHING
(probe bigger sizes) -> SEARCH_COMPLETE (the largest size that worked is used;
re-probe after ``raise_interval``, 600 s, §5.1.1 PMTU_RAISE_TIMER); ERROR when
even ``base`` does not get through (use ``min_plpmtu`` and keep trying ``base``).
A black hole (repeated loss of full-sized datagrams while the path otherwise
works, §4.3/§5.2) sends the machine back to BASE with ``plpmtu = base``.

Search (§5.3): first the largest candidate (``max_plpmtu``, the local interface's
limit, which most paths carry, or the size a Packet Too Big message named,
§4.6.2), then the common sizes of ``common`` (a search table as RFC 4821 §7.7
suggests: jumbo and Ethernet frames, so a path from a large-MTU interface across
an Ethernet link settles in a few probes), then a binary search
between the largest size acknowledged and the smallest size that failed, down to
``granularity`` bytes. A size fails after ``max_probes``
(MAX_PROBES = 3, §5.1.2) unacknowledged probes. A probe is unacknowledged when the
runtime says so (:meth:`probe_lost`) or when ``probe_timeout`` passes
(PROBE_TIMER, §5.1.1). One probe is outstanding at a time.

Driving it::

    size = pm.probe_size(now)          # None: no probe wanted now
    ... send a probe datagram of exactly ``size`` bytes ...
    pm.probe_acked(size, now) / pm.probe_lost(size, now)
    pm.full_size_lost(now) / pm.full_size_acked(now)   # black-hole detection
    pm.handle_timer(now) at pm.next_deadline()
    pm.plpmtu                          # the size to use; ``changed`` tells when it moved
"""

from __future__ import annotations

from typing import Final

import enum

BASE_PLPMTU_V4: Final = 1200        # RFC 8899 §5.1.2 recommends 1200 bytes for IPv4 and IPv6
BASE_PLPMTU_V6: Final = 1280 - 48   # IPv6 minimum MTU 1280 minus IPv6 (40) and UDP (8) headers
MIN_PLPMTU: Final = 548             # used in ERROR: 576-byte IPv4 datagram minus IP and UDP headers
MAX_PROBES: Final = 3               # RFC 8899 §5.1.2
PROBE_TIMEOUT: Final = 15.0         # RFC 8899 §5.1.1 PROBE_TIMER: longer than any probe's answer
RAISE_INTERVAL: Final = 600.0       # RFC 8899 §5.1.1 PMTU_RAISE_TIMER
BLACK_HOLE_LOSSES: Final = 6        # consecutive full-size losses with no full-size delivery
GRANULARITY: Final = 16             # stop searching when the bounds are this close


class PmtuState(enum.Enum):
    BASE = "BASE"
    SEARCHING = "SEARCHING"
    SEARCH_COMPLETE = "SEARCH_COMPLETE"
    ERROR = "ERROR"


def udp_payload_limit(interface_mtu: int, ipv6: bool) -> int:
    """Largest UDP payload an interface MTU allows (IP header 20 or 40, UDP 8)."""
    return interface_mtu - (48 if ipv6 else 28)


COMMON_MTUS = (9000, 1500)   # jumbo and Ethernet frames: the search table's entries


class Plpmtud:
    """The RFC 8899 state machine for one path (one UDP peer)."""

    def __init__(self, now: float, *, max_plpmtu: int = 1472, ipv6: bool = False,
                 base: int | None = None, min_plpmtu: int = MIN_PLPMTU,
                 max_probes: int = MAX_PROBES, probe_timeout: float = PROBE_TIMEOUT,
                 raise_interval: float = RAISE_INTERVAL, black_hole_losses: int = BLACK_HOLE_LOSSES,
                 granularity: int = GRANULARITY, common: tuple[int, ...] | None = None) -> None:
        base = base if base is not None else (BASE_PLPMTU_V6 if ipv6 else BASE_PLPMTU_V4)
        if common is None:
            common = tuple(udp_payload_limit(m, ipv6) for m in COMMON_MTUS)
        if not min_plpmtu <= base <= max_plpmtu:
            raise ValueError(f"need min_plpmtu <= base <= max_plpmtu, got {min_plpmtu}, {base}, {max_plpmtu}")
        self.base = base
        self.min_plpmtu = min_plpmtu
        self.max_plpmtu = max_plpmtu
        self.max_probes = max_probes
        self.probe_timeout = probe_timeout
        self.raise_interval = raise_interval
        self.black_hole_losses = black_hole_losses
        self.granularity = granularity
        self.common = tuple(sorted(common, reverse=True))   # tried after the largest, before bisecting
        self.state = PmtuState.BASE
        self.plpmtu = base            # the size in use (RFC 8899: PLPMTU)
        self.changed = False          # plpmtu moved since the caller last cleared this
        self.probed_size: int | None = None   # the size being confirmed or tried
        self.probe_count = 0          # unacknowledged probes of ``probed_size``
        self.search_high = max_plpmtu # largest size not known to fail (the search's upper bound)
        self._outstanding: float | None = None   # send time of the probe in flight
        self._raise_at: float | None = None
        self._full_losses = 0
        self.probes_sent = 0
        self.black_holes = 0

    # ------------------------------------------------------------ output
    def probe_size(self, now: float) -> int | None:
        """The size of a probe to send now (and it counts as sent), or None."""
        if self._outstanding is not None:
            return None
        if self.state == PmtuState.SEARCH_COMPLETE:
            if self._raise_at is None or now < self._raise_at:
                return None
            self._start_search(now)       # §5.2: PMTU_RAISE_TIMER: search again
        size = self._candidate(now)
        if size is None:
            return None
        self.probed_size = size
        self._outstanding = now
        self.probes_sent += 1
        return size

    def _candidate(self, now: float) -> int | None:
        st = self.state
        if st in (PmtuState.BASE, PmtuState.ERROR):
            return self.base
        if self.probed_size is not None and self.probed_size > self.plpmtu:
            return self.probed_size       # keep trying the same size until MAX_PROBES
        lo, hi = self.plpmtu, self.search_high
        if hi - lo <= self.granularity:
            self._complete(now)
            return None
        if self._high_untried:
            return hi                     # the largest size (or a PTB's size) first
        for size in self.common:          # a common size neither confirmed nor failed yet
            if lo < size <= hi:
                return size
        return (lo + hi + 1) // 2

    def next_deadline(self) -> float | None:
        if self._outstanding is not None:
            return self._outstanding + self.probe_timeout
        if self.state == PmtuState.SEARCH_COMPLETE:
            return self._raise_at
        return None

    def handle_timer(self, now: float) -> None:
        """The probe timer expired (the probe counts as lost) or the raise timer (re-probe)."""
        if self._outstanding is not None and now >= self._outstanding + self.probe_timeout:
            assert self.probed_size is not None
            self.probe_lost(self.probed_size, now)

    # ------------------------------------------------------------ input
    def probe_acked(self, size: int, now: float) -> None:
        """A probe of ``size`` bytes was acknowledged: that size works (§4.1)."""
        if size != self.probed_size or self._outstanding is None:
            return
        self._outstanding = None
        self.probe_count = 0
        self._full_losses = 0
        st = self.state
        if st in (PmtuState.BASE, PmtuState.ERROR):
            self._set(self.base)
            self._start_search(now)
            return
        if size > self.plpmtu:
            self._set(size)
        if size >= self.search_high:
            self._complete(now)

    def probe_lost(self, size: int, now: float) -> None:
        """A probe of ``size`` bytes got no acknowledgment; MAX_PROBES of them: it fails."""
        if size != self.probed_size or self._outstanding is None:
            return
        self._outstanding = None
        self.probe_count += 1
        if self.probe_count < self.max_probes:
            return
        self.probe_count = 0
        self.probed_size = None
        st = self.state
        if st == PmtuState.BASE:
            self.state = PmtuState.ERROR          # §5.2: even the base size is not confirmed
            self._set(min(self.min_plpmtu, self.plpmtu))
        elif st == PmtuState.SEARCHING:
            self._high_untried = False
            self.search_high = size - 1
            if self.search_high - self.plpmtu <= self.granularity:
                self._complete(now)

    def full_size_acked(self, now: float) -> None:
        """A datagram of the current PLPMTU was delivered: no black hole."""
        self._full_losses = 0

    def full_size_lost(self, now: float) -> None:
        """A datagram of the current PLPMTU was lost (e.g. a retransmission timeout
        of a full-sized segment). Enough in a row with no full-sized delivery
        between means a black hole (§4.3): back to BASE."""
        if self.state not in (PmtuState.SEARCHING, PmtuState.SEARCH_COMPLETE) or self.plpmtu <= self.base:
            return
        self._full_losses += 1
        if self._full_losses >= self.black_hole_losses:
            self.black_holes += 1
            self._full_losses = 0
            self.state = PmtuState.BASE
            self._set(self.base)
            self.search_high = self.max_plpmtu
            self.probed_size = None
            self.probe_count = 0
            self._outstanding = None
            self._raise_at = None

    def packet_too_big(self, mtu: int, now: float) -> bool:
        """A validated ICMP Packet Too Big / Fragmentation Needed naming a UDP payload
        limit (§4.6.2). It only ever lowers: the PLPMTU when that is larger (the path
        shrank), and the search bound, whose new value is the next probe (a PTB's
        size is a candidate, not a confirmed size). A probe in flight that was larger
        is lost. False when the message changes nothing (at or above the bound, or
        below ``min_plpmtu``: inconsistent, discarded)."""
        if mtu < self.min_plpmtu or mtu >= self.search_high:
            return False
        self.search_high = mtu
        if mtu < self.plpmtu:
            self._set(mtu)
            if mtu < self.base:
                self.state = PmtuState.ERROR   # §4.6.2: below the base size
            elif self.state == PmtuState.SEARCH_COMPLETE:
                self._complete(now)            # the smaller size is in use; re-probe later
        elif self.state == PmtuState.SEARCH_COMPLETE:
            self.state = PmtuState.SEARCHING   # something between the PLPMTU and the bound
            self._raise_at = None
        self._high_untried = mtu > self.plpmtu
        if self.probed_size is not None and self.probed_size > mtu:
            self.probed_size = None
            self.probe_count = 0
            self._outstanding = None
        return True

    # ------------------------------------------------------------ helpers
    _high_untried = False

    def _start_search(self, now: float) -> None:
        self.state = PmtuState.SEARCHING
        self.search_high = self.max_plpmtu
        self._high_untried = True
        self.probed_size = None
        self.probe_count = 0
        self._raise_at = None
        if self.plpmtu >= self.max_plpmtu:
            self._complete(now)

    def _complete(self, now: float) -> None:
        """SEARCH_COMPLETE; the raise timer re-probes after ``raise_interval``."""
        self.state = PmtuState.SEARCH_COMPLETE
        self.probed_size = None
        self.probe_count = 0
        self._outstanding = None
        self._raise_at = now + self.raise_interval

    def _set(self, size: int) -> None:
        if size != self.plpmtu:
            self.plpmtu = size
            self.changed = True
