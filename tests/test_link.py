"""The one-direction link model (toucli.link): rate, queue, loss, jitter, duplication."""

from __future__ import annotations

import random

import pytest

from toucli.link import Link


def _drain(link: Link) -> list[tuple[float, bytes]]:
    """Deliver everything, one arrival time at a time: [(arrival, packet)]."""
    out = []
    while (t := link.next_delivery()) is not None:
        out.extend((t, p) for p in link.deliver(t))
    return out


def test_pure_delay_keeps_order_and_time():
    link = Link(random.Random(1), delay=0.010)
    assert link.next_delivery() is None
    assert link.send(b"a", 1.0) and link.send(b"b", 1.5)
    assert link.next_delivery() == pytest.approx(1.010)
    assert link.deliver(1.0099) == []
    assert link.deliver(1.010) == [b"a"]
    assert link.deliver(2.0) == [b"b"]
    assert link.deliver(3.0) == []
    assert link.next_delivery() is None
    assert link.stats()["delivered"] == 2 and link.stats()["delivered_bytes"] == 2


def test_same_arrival_time_keeps_send_order():
    link = Link(random.Random(1), delay=0.0)
    for i in range(50):
        link.send(bytes([i]), 0.0)
    assert link.deliver(0.0) == [bytes([i]) for i in range(50)]


def test_rate_serializes_back_to_back_packets():
    # 100 packets of 1000 bytes at 8 Mbit/s: 1 ms each, last one leaves at 100 ms.
    link = Link(random.Random(1), delay=0.005, rate_bps=8e6)
    for i in range(100):
        assert link.send(bytes([i]) * 1000, 0.0)
    got = _drain(link)
    assert [p[0] for _, p in got] == list(range(100))
    assert got[0][0] == pytest.approx(0.001 + 0.005)
    assert got[-1][0] == pytest.approx(100 * 1000 * 8 / 8e6 + 0.005)
    gaps = {round(b[0] - a[0], 9) for a, b in zip(got, got[1:])}
    assert gaps == {0.001}


def test_overhead_counts_in_serialization():
    link = Link(random.Random(1), delay=0.0, rate_bps=8e6, overhead=36)
    link.send(bytes(964), 0.0)
    assert link.next_delivery() == pytest.approx(0.001)
    assert link.serialized_bytes == 1000


def test_idle_link_does_not_bank_capacity():
    link = Link(random.Random(1), delay=0.0, rate_bps=8e6)
    link.send(bytes(1000), 0.0)
    link.deliver(1.0)
    link.send(bytes(1000), 5.0)  # transmitter idle since 0.001: starts at 5.0
    assert link.next_delivery() == pytest.approx(5.001)


def test_drop_tail_queue_overflow():
    # queue of 5000 bytes at 8 Mbit/s; 10 packets of 1000 bytes offered at once:
    # 5 fit (the one in service counts), the other 5 are dropped.
    link = Link(random.Random(1), delay=0.0, rate_bps=8e6, queue_bytes=5000)
    accepted = [link.send(bytes([i]) * 1000, 0.0) for i in range(10)]
    assert accepted == [True] * 5 + [False] * 5
    assert link.dropped_queue == 5 and link.dropped_loss == 0
    assert link.backlog(0.0) == 5000 and link.max_backlog == 5000
    # after 2 ms two packets have left: room for two more, not three
    assert link.backlog(0.002) == 3000
    assert [link.send(b"x" * 1000, 0.002) for _ in range(3)] == [True, True, False]
    assert [p[0] for _, p in _drain(link)] == [0, 1, 2, 3, 4, ord("x"), ord("x")]
    # the transmitter carried the 7 accepted packets, not the 6 the queue refused
    assert link.serialized_bytes == 7000


def test_empty_queue_always_takes_a_packet():
    link = Link(random.Random(1), delay=0.0, rate_bps=8e6, queue_bytes=100)
    assert link.send(bytes(1500), 0.0)
    assert not link.send(bytes(10), 0.0)


def test_loss_rate_near_setting():
    link = Link(random.Random(42), delay=0.0, loss=0.1)
    n = 20000
    ok = sum(link.send(b"p", 0.0) for _ in range(n))
    assert link.dropped_loss == n - ok
    assert 0.09 * n < link.dropped_loss < 0.11 * n
    assert len(link.deliver(0.0)) == ok


def test_loss_uses_the_transmitter():
    # a packet lost on the wire has still been serialized
    link = Link(random.Random(1), delay=0.0, rate_bps=8e6, loss=1.0)
    assert not link.send(bytes(1000), 0.0)
    link.loss = 0.0
    assert link.send(bytes(1000), 0.0)
    assert link.next_delivery() == pytest.approx(0.002)
    assert link.serialized_bytes == 2000


def test_burst_loss_comes_in_runs():
    # Gilbert-Elliott: good->bad 1%, bad->good 25%: mean burst 4 packets,
    # stationary loss 0.01 / (0.01 + 0.25) ~ 3.8 %.
    link = Link(random.Random(7), delay=0.0, burst_loss=(0.01, 0.25))
    n = 50000
    outcome = [link.send(b"p", 0.0) for _ in range(n)]
    lost = outcome.count(False)
    assert 0.03 * n < lost < 0.047 * n
    runs, run = [], 0
    for ok in outcome:
        if not ok:
            run += 1
        elif run:
            runs.append(run)
            run = 0
    mean_run = sum(runs) / len(runs)
    assert 3.3 < mean_run < 4.7
    # independent loss at the same rate would give runs of ~1.04
    indep = Link(random.Random(7), delay=0.0, loss=lost / n)
    outcome = [indep.send(b"p", 0.0) for _ in range(n)]
    runs2 = sum(1 for a, b in zip(outcome, outcome[1:]) if a and not b)
    assert outcome.count(False) / runs2 < 1.2


def test_duplication():
    link = Link(random.Random(3), delay=0.001, duplicate=0.05)
    n = 10000
    for i in range(n):
        assert link.send(i.to_bytes(4, "big"), 0.0)
    got = link.deliver(1.0)
    assert len(got) == n + link.duplicated
    assert 0.04 * n < link.duplicated < 0.06 * n
    counts: dict[bytes, int] = {}
    for p in got:
        counts[p] = counts.get(p, 0) + 1
    assert set(counts) == {i.to_bytes(4, "big") for i in range(n)}
    assert sorted(set(counts.values())) == [1, 2]


def test_jitter_reorders_within_bounds():
    link = Link(random.Random(5), delay=0.010, jitter=0.005)
    for i in range(1000):
        link.send(i.to_bytes(2, "big"), i * 0.0001)
    got = _drain(link)
    order = [int.from_bytes(p, "big") for _, p in got]
    assert sorted(order) == list(range(1000))
    assert order != list(range(1000))          # some reordering happened
    for t, p in got:
        sent_at = int.from_bytes(p, "big") * 0.0001
        assert sent_at + 0.010 <= t <= sent_at + 0.015
    times = [t for t, _ in got]
    assert times == sorted(times)


def test_same_seed_same_history():
    def run(seed: int) -> list[tuple[float, bytes]]:
        link = Link(random.Random(seed), delay=0.02, jitter=0.01, rate_bps=1e6, queue_bytes=20000,
                    loss=0.05, burst_loss=(0.02, 0.3), duplicate=0.03)
        for i in range(2000):
            link.send(i.to_bytes(4, "big") * 50, i * 0.0005)
        return _drain(link)

    assert run(11) == run(11)
    assert run(11) != run(12)


def test_invalid_parameters():
    with pytest.raises(ValueError):
        Link(random.Random(), delay=-1)
    with pytest.raises(ValueError):
        Link(random.Random(), delay=0, loss=1.5)
    with pytest.raises(ValueError):
        Link(random.Random(), delay=0, rate_bps=0)
    with pytest.raises(ValueError):
        Link(random.Random(), delay=0, burst_loss=(0.1, 2.0))
