"""The RFC 8899 path-MTU state machine (toucli/stack/pmtu.py), driven in virtual time."""

from __future__ import annotations

import pytest

from toucli.stack.pmtu import (BASE_PLPMTU_V4, BASE_PLPMTU_V6, MIN_PLPMTU, PmtuState, Plpmtud,
                               udp_payload_limit)


class Path:
    """A path that delivers datagrams up to ``mtu`` bytes, answering after ``rtt``."""

    def __init__(self, mtu: int, rtt: float = 0.1) -> None:
        self.mtu = mtu
        self.rtt = rtt

    def run(self, pm: Plpmtud, now: float, until: float) -> tuple[float, list[int]]:
        """Probe as the runtime would: send, wait for the answer or the probe timer."""
        sent = []
        while now < until:
            size = pm.probe_size(now)
            if size is not None:
                sent.append(size)
                if size <= self.mtu:
                    now += self.rtt
                    pm.probe_acked(size, now)
                continue
            d = pm.next_deadline()
            if d is None or d > until:
                break
            now = max(now, d)
            pm.handle_timer(now)
        return now, sent


def test_base_sizes():
    assert BASE_PLPMTU_V4 == 1200 and BASE_PLPMTU_V6 == 1232
    assert udp_payload_limit(1500, False) == 1472 and udp_payload_limit(1500, True) == 1452
    assert Plpmtud(0.0, ipv6=True, max_plpmtu=1452).plpmtu == 1232
    with pytest.raises(ValueError):
        Plpmtud(0.0, max_plpmtu=1000)


def test_a_1500_byte_path_is_found_with_one_probe_beyond_base():
    pm = Plpmtud(0.0, max_plpmtu=1472)
    assert pm.state is PmtuState.BASE and pm.plpmtu == 1200
    now, sent = Path(1472).run(pm, 0.0, 5.0)
    assert sent == [1200, 1472]                    # confirm base, then the largest at once
    assert pm.state is PmtuState.SEARCH_COMPLETE and pm.plpmtu == 1472 and pm.changed
    assert pm.next_deadline() == pytest.approx(0.2 + 600.0)


def test_binary_search_after_the_largest_size_fails_three_times():
    pm = Plpmtud(0.0, max_plpmtu=1472, probe_timeout=1.0)
    now, sent = Path(1400).run(pm, 0.0, 100.0)
    assert sent[:5] == [1200, 1472, 1472, 1472, 1336]   # MAX_PROBES = 3 losses of 1472, then the middle
    assert pm.state is PmtuState.SEARCH_COMPLETE
    assert 1400 - 16 <= pm.plpmtu <= 1400
    assert all(s <= 1400 for s in sent[5:] if s == pm.plpmtu)


def test_probe_lost_signal_counts_like_the_timer():
    pm = Plpmtud(0.0, max_plpmtu=1472)
    assert pm.probe_size(0.0) == 1200
    pm.probe_acked(1200, 0.1)
    assert pm.state is PmtuState.SEARCHING
    for k in range(3):
        assert pm.probe_size(0.2 + k) == 1472
        assert pm.probe_size(0.2 + k) is None      # one probe outstanding at a time
        pm.probe_lost(1472, 0.3 + k)
    assert pm.search_high == 1471 and pm.probe_size(5.0) == 1336
    pm.probe_acked(1200, 5.1)                      # a stale answer for another size: ignored
    assert pm.plpmtu == 1200


def test_base_that_never_gets_through_is_an_error_and_recovers():
    pm = Plpmtud(0.0, max_plpmtu=1472, probe_timeout=2.0)
    now, sent = Path(1000).run(pm, 0.0, 6.5)
    assert sent == [1200, 1200, 1200, 1200]
    assert pm.state is PmtuState.ERROR and pm.plpmtu == MIN_PLPMTU
    # the path heals: the next base probe is acknowledged and the search starts over
    assert pm.probe_size(now) is None
    pm.probe_acked(1200, now + 0.1)
    assert pm.state is PmtuState.SEARCHING and pm.plpmtu == 1200


def test_black_hole_falls_back_to_base_and_searches_again():
    pm = Plpmtud(0.0, max_plpmtu=1472)
    now, _ = Path(1472).run(pm, 0.0, 5.0)
    assert pm.plpmtu == 1472
    pm.changed = False
    for _ in range(5):
        pm.full_size_lost(now)
    pm.full_size_acked(now)                        # one full-sized delivery resets the count
    for _ in range(5):
        pm.full_size_lost(now)
    assert pm.plpmtu == 1472
    pm.full_size_lost(now)
    assert pm.state is PmtuState.BASE and pm.plpmtu == 1200 and pm.changed and pm.black_holes == 1
    now, sent = Path(1300).run(pm, now, now + 200.0)
    assert sent[0] == 1200 and pm.state is PmtuState.SEARCH_COMPLETE and 1284 <= pm.plpmtu <= 1300


def test_raise_timer_reprobes_after_600_seconds():
    pm = Plpmtud(0.0, max_plpmtu=1472, probe_timeout=1.0)
    path = Path(1300)
    now, _ = path.run(pm, 0.0, 100.0)
    found = pm.plpmtu
    assert pm.probe_size(now + 599.0) is None
    path.mtu = 1472                                # the path got better
    now, sent = path.run(pm, now + 600.0, now + 700.0)
    assert sent == [1472] and pm.plpmtu == 1472 and found < 1472


def test_packet_too_big_lowers_the_size_and_the_bound():
    pm = Plpmtud(0.0, max_plpmtu=1472)
    Path(1472).run(pm, 0.0, 5.0)
    assert pm.packet_too_big(1380, 10.0)
    assert pm.plpmtu == 1380 and pm.search_high == 1380 and pm.state is PmtuState.SEARCH_COMPLETE
    assert not pm.packet_too_big(1500, 10.0)       # never raises
    assert not pm.packet_too_big(1380, 10.0)       # the same news again
    assert not pm.packet_too_big(100, 10.0)        # absurd: ignored
    assert pm.plpmtu == 1380
    assert pm.next_deadline() == 10.0 + 600.0      # searched again after the raise timer


def test_packet_too_big_during_the_search_is_the_next_probe():
    """§4.6.2: the probe of the largest size meets a smaller link; the PTB ends that probe
    at once (no probe timer), and its size is probed next and confirmed."""
    pm = Plpmtud(0.0, max_plpmtu=1472, probe_timeout=15.0)
    assert pm.probe_size(0.0) == 1200
    pm.probe_acked(1200, 0.1)
    assert pm.probe_size(0.1) == 1472
    assert pm.packet_too_big(1372, 0.102)
    assert pm.plpmtu == 1200 and pm.next_deadline() is None    # the 1472 probe is over
    assert pm.probe_size(0.102) == 1372
    pm.probe_acked(1372, 0.2)
    assert pm.state is PmtuState.SEARCH_COMPLETE and pm.plpmtu == 1372 and pm.probes_sent == 3


def test_a_packet_too_big_that_is_not_confirmed_falls_back_to_the_search():
    """A PTB size is a candidate, not a confirmed size: when its probes fail too, the
    search goes on below it."""
    pm = Plpmtud(0.0, max_plpmtu=1472, probe_timeout=1.0)
    pm.probe_acked(pm.probe_size(0.0), 0.1)
    pm.probe_size(0.1)
    pm.packet_too_big(1400, 0.1)
    now, sent = Path(1300).run(pm, 0.1, 60.0)
    assert sent[:3] == [1400, 1400, 1400] and 1300 - 16 <= pm.plpmtu <= 1300
    assert pm.state is PmtuState.SEARCH_COMPLETE


def _probe_sizes(pm: Plpmtud, path: int, now: float = 0.0, limit: int = 200) -> list[int]:
    """Drive ``pm`` over a path carrying datagrams up to ``path`` bytes; the sizes probed."""
    sizes = []
    for _ in range(limit):
        size = pm.probe_size(now)
        if size is None:
            break
        sizes.append(size)
        if size <= path:
            pm.probe_acked(size, now)
        else:
            pm.probe_lost(size, now)
        now += 0.1
    return sizes


def test_search_table_finds_ethernet_behind_a_loopback_sized_interface():
    """Largest first (the interface's 65507), then jumbo and Ethernet sizes from the
    table, then bisection above the confirmed size (RFC 4821 §7.7, RFC 8899 §5.3)."""
    pm = Plpmtud(0.0, max_plpmtu=65507)
    sizes = _probe_sizes(pm, 1472)
    assert sizes[:10] == [1200, 65507, 65507, 65507, 8972, 8972, 8972, 1472, (1472 + 8971 + 1) // 2,
                          (1472 + 8971 + 1) // 2]
    assert pm.state is PmtuState.SEARCH_COMPLETE and pm.plpmtu == 1472
    assert len(sizes) < 40


def test_search_table_jumbo_path_and_sizes_outside_the_bounds_are_skipped():
    pm = Plpmtud(0.0, max_plpmtu=65507)
    assert _probe_sizes(pm, 8972)[:6] == [1200, 65507, 65507, 65507, 8972, (8972 + 65506 + 1) // 2]
    pm = Plpmtud(0.0, max_plpmtu=1472)               # an Ethernet interface: 8972 is never tried
    assert _probe_sizes(pm, 1472) == [1200, 1472]
