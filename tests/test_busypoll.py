"""BusyPollSelector: spins only after activity, catches what arrives while spinning,
never outlasts the loop's timeout, and sleeps at once once the tunnel is quiet."""

from __future__ import annotations

import selectors
import socket
import threading
import time

import pytest

from toucli.busypoll import COALESCE_MAX, MAX_WINDOW, BusyPollSelector, coalesce_delay


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    sel = BusyPollSelector(0.02)
    sel.register(b, selectors.EVENT_READ)
    yield a, b, sel
    sel.close()
    a.close()
    b.close()


def _activity(a: socket.socket, b: socket.socket, sel: BusyPollSelector) -> None:
    """One message through: the selector has now seen traffic."""
    a.send(b"x")
    assert sel.select(1.0)
    b.recv(16)


@pytest.mark.parametrize("window", [-1e-6, -1.0, MAX_WINDOW * 2])
def test_window_out_of_range_is_refused(window) -> None:
    with pytest.raises(ValueError, match="busy-poll window"):
        BusyPollSelector(window)


def test_a_zero_window_never_spins(pair) -> None:
    a, b, sel = pair
    sel.window = 0.0                            # --busy-poll 0
    _activity(a, b, sel)
    assert sel.select(0.05) == [] and sel.spun == 0.0


def test_a_quiet_selector_sleeps_without_spinning(pair) -> None:
    a, b, sel = pair
    cpu0, t0 = time.process_time(), time.monotonic()
    assert sel.select(0.1) == []
    assert time.monotonic() - t0 >= 0.09
    assert sel.spun == 0.0 and time.process_time() - cpu0 < 0.05


def test_after_traffic_it_spins_for_the_window_then_sleeps_and_stops_spinning(pair) -> None:
    a, b, sel = pair
    _activity(a, b, sel)
    assert sel.active
    t0 = time.monotonic()
    assert sel.select(0.1) == []
    elapsed = time.monotonic() - t0
    assert 0.09 <= elapsed < 0.2                      # the loop's timeout holds, spin included
    assert 0.02 <= sel.spun < 0.1                     # spun for the 20 ms window, not the whole wait
    assert not sel.active                             # that wait timed out: the tunnel is quiet
    spun = sel.spun
    assert sel.select(0.05) == [] and sel.spun == spun


def test_what_arrives_during_the_spin_is_returned_without_sleeping(pair) -> None:
    a, b, sel = pair
    sel.window = 0.5
    _activity(a, b, sel)
    timer = threading.Timer(0.01, lambda: a.send(b"y"))
    timer.start()
    t0 = time.monotonic()
    ready = sel.select(5.0)
    timer.join()
    assert [key.fileobj for key, _ in ready] == [b]
    assert time.monotonic() - t0 < 0.4 and sel.caught == 1 and sel.active


def test_a_timeout_shorter_than_the_window_bounds_the_spin(pair) -> None:
    a, b, sel = pair
    sel.window = 0.5
    _activity(a, b, sel)
    t0 = time.monotonic()
    assert sel.select(0.01) == []
    assert time.monotonic() - t0 < 0.2


def test_a_zero_timeout_look_neither_spins_nor_forgets_the_activity(pair) -> None:
    a, b, sel = pair
    _activity(a, b, sel)
    assert sel.select(0) == [] and sel.spun == 0.0 and sel.active


# ---- adaptive (the default, ``--busy-poll auto``)
@pytest.fixture
def adaptive():
    a, b = socket.socketpair()
    sel = BusyPollSelector(0.08, adaptive=True)
    sel.register(b, selectors.EVENT_READ)
    yield a, b, sel
    sel.close()
    a.close()
    b.close()


def _send_later(a: socket.socket, delay: float) -> threading.Timer:
    timer = threading.Timer(delay, lambda: a.send(b"x"))
    timer.start()
    return timer


def _event_after(a: socket.socket, b: socket.socket, sel: BusyPollSelector, delay: float) -> None:
    """A message ``delay`` s from now; the selector returns it, and it is read."""
    timer = _send_later(a, delay)
    assert [key.fileobj for key, _ in sel.select(1.0)] == [b]
    timer.join()
    b.recv(16)


def test_adaptive_starts_asleep_and_a_gap_within_the_window_sizes_its_spin(adaptive) -> None:
    a, b, sel = adaptive
    _event_after(a, b, sel, 0.0)
    assert sel.spin_after(b.fileno()) == 0.0 and sel.spun == 0.0
    _event_after(a, b, sel, 0.03)               # slept through: 30 ms after an event on b ...
    assert sel.caught == 0 and sel.spun == 0.0
    assert 1.25 * 0.03 <= sel.spin_after(b.fileno()) <= 0.08   # ... so the spin after b now covers it


def test_adaptive_catches_the_next_such_gap_by_polling(adaptive) -> None:
    a, b, sel = adaptive
    _event_after(a, b, sel, 0.0)
    _event_after(a, b, sel, 0.03)
    spin = sel.spin_after(b.fileno())
    _event_after(a, b, sel, 0.005)
    assert sel.caught == 1 and 0 < sel.spun < 0.03 and sel.spin_after(b.fileno()) == spin


def test_adaptive_halves_its_spin_on_gaps_beyond_the_window_down_to_none(adaptive) -> None:
    a, b, sel = adaptive
    _event_after(a, b, sel, 0.0)
    _event_after(a, b, sel, 0.06)
    spin = sel.spin_after(b.fileno())
    assert spin == pytest.approx(0.075, abs=0.005)
    _event_after(a, b, sel, 0.12)               # later than the window: the spin failed
    assert sel.spin_after(b.fileno()) == pytest.approx(spin / 2)
    for _ in range(12):                         # 37 ms to under 10 µs takes 12 halvings
        _event_after(a, b, sel, 0.09)
    assert sel.spin_after(b.fileno()) == 0.0
    spun = sel.spun
    _event_after(a, b, sel, 0.09)               # asleep again: no polling at all
    assert sel.spun == spun


def test_adaptive_keeps_the_gaps_after_each_descriptor_apart(adaptive) -> None:
    """Request/response: after the request (an event on b) the reply comes quickly (on d);
    after the reply, the next request only after think time. The quick gap is bridged
    by polling; the long one is slept through without polling."""
    a, b, sel = adaptive
    c, d = socket.socketpair()
    sel.register(d, selectors.EVENT_READ)
    try:
        for _ in range(6):
            _event_after(a, b, sel, 0.1)        # the next request, after think time
            _event_after(c, d, sel, 0.01)       # its reply
        assert sel.spin_after(d.fileno()) == 0.0 and sel.spin_after(b.fileno()) >= 1.25 * 0.01
        assert sel.caught >= 4                  # every reply after the first is caught
        assert sel.spun < 6 * 0.02              # and only the short gaps were spun through
        sel.unregister(b)                       # its number may come back for another socket
        assert sel.spin_after(b.fileno()) == 0.0
    finally:
        c.close()
        d.close()


def test_adaptive_does_not_spin_while_the_traffic_is_bulk(adaptive) -> None:
    """Full-size datagrams on average (a paced transfer): the gaps are short but nobody
    waits on them, so no spinning; small ones, or a quiet spell, bring the spin back."""
    a, b, sel = adaptive
    _event_after(a, b, sel, 0.0)
    _event_after(a, b, sel, 0.03)
    assert sel.spin_after(b.fileno()) > 0
    sel.note_traffic(7, 31, 31 * 1400)          # fewer than 32 datagrams: not judged yet
    assert not sel.bulk
    sel.note_traffic(7, 40, 40 * 1400)
    assert sel.bulk
    spun = sel.spun
    _event_after(a, b, sel, 0.005)              # would have been caught by the spin
    assert sel.spun == spun and sel.caught == 0
    sel.note_traffic(7, 80, 40 * 1400 + 40 * 120)    # the next 40 are small: interactive again
    assert not sel.bulk
    sel.note_traffic(7, 120, 40 * 1400 + 40 * 120 + 40 * 1400)
    assert sel.bulk
    assert sel.select(0.01) == [] and not sel.bulk   # quiet: judged afresh
    _event_after(a, b, sel, 0.0)
    caught = sel.caught
    _event_after(a, b, sel, 0.005)
    assert sel.caught == caught + 1             # what it learned before the bulk still holds


# ---- coalesced wake-ups (bulk traffic on a long path)
@pytest.mark.parametrize("rtt, delay", [(None, 0.0), (0.0002, 0.0), (0.003, 0.0), (0.004, 0.004 / 64),
                                        (0.02, 0.02 / 64), (0.064, 0.001), (0.1, COALESCE_MAX), (2.0, COALESCE_MAX)])
def test_the_coalescing_delay_is_a_64th_of_the_round_trip_capped_and_none_on_short_paths(rtt, delay) -> None:
    assert coalesce_delay(rtt) == pytest.approx(delay)


def _bulk(sel: BusyPollSelector, coalesce: float) -> None:
    assert sel.note_traffic(7, 40, 40 * 1400) and sel.bulk
    sel.coalesce = coalesce


def test_a_bulk_wait_sleeps_first_and_then_reads_everything_that_arrived_meanwhile(adaptive) -> None:
    a, b, sel = adaptive
    c, d = socket.socketpair()
    sel.register(d, selectors.EVENT_READ)
    try:
        _bulk(sel, 0.05)
        a.send(b"x")                            # ready at once ...
        timer = threading.Timer(0.02, lambda: c.send(b"y"))   # ... and another one 20 ms later
        timer.start()
        t0 = time.monotonic()
        ready = sel.select(1.0)
        elapsed = time.monotonic() - t0
        timer.join()
        assert 0.05 <= elapsed < 0.5            # slept the delay instead of waking for the first
        assert {key.fileobj for key, _ in ready} == {b, d}    # one wake-up for both
        assert sel.coalesced == 1 and sel.spun == 0.0 and sel.bulk
    finally:
        c.close()
        d.close()


def test_a_bulk_wait_never_sleeps_past_the_loops_timeout(adaptive) -> None:
    a, b, sel = adaptive
    _bulk(sel, 0.5)
    t0 = time.monotonic()
    assert sel.select(0.02) == []               # a timer is due in 20 ms: it is not delayed
    assert time.monotonic() - t0 < 0.2
    assert not sel.bulk and sel.coalesced == 1  # that wait found nothing: quiet, judged afresh
    a.send(b"x")
    t0 = time.monotonic()
    assert sel.select(1.0) and time.monotonic() - t0 < 0.2    # not bulk: no sleep


def test_without_a_delay_or_when_not_bulk_nothing_is_coalesced(adaptive) -> None:
    a, b, sel = adaptive
    _bulk(sel, 0.0)                             # bulk on a short path: the runtime sets no delay
    a.send(b"x")
    t0 = time.monotonic()
    assert sel.select(1.0) and time.monotonic() - t0 < 0.03 and sel.coalesced == 0
    b.recv(16)
    sel.coalesce = 0.5
    sel.note_traffic(7, 80, 40 * 1400 + 40 * 100)    # small datagrams: interactive
    assert not sel.bulk
    a.send(b"x")
    t0 = time.monotonic()
    assert sel.select(1.0) and time.monotonic() - t0 < 0.2 and sel.coalesced == 0
