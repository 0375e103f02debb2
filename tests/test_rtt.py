"""RttEstimator: RFC 6298 SRTT/RTTVAR/RTO, backoff, RFC 7323 App. G, windowed min-RTT."""

from __future__ import annotations

import pytest

from toucli.stack.errors import LocalError
from toucli.stack.rtt import RttEstimator


def test_initial_state_uses_initial_rto() -> None:
    e = RttEstimator()
    assert e.srtt is None and e.latest is None and e.min_rtt is None
    assert e.rttvar == 0.0
    assert e.rto == 1.0
    assert e.backoffs == 0


def test_first_sample_sets_srtt_and_half_rttvar() -> None:
    e = RttEstimator()
    e.on_sample(0.1, now=5.0)
    assert e.srtt == pytest.approx(0.1)
    assert e.rttvar == pytest.approx(0.05)
    assert e.latest == 0.1
    assert e.min_rtt == 0.1
    # RTO = SRTT + max(G, 4*RTTVAR) = 0.1 + 0.2
    assert e.rto == pytest.approx(0.3)


def test_granularity_term_wins_when_rttvar_is_tiny() -> None:
    e = RttEstimator(min_rto=1e-4, granularity=0.5)
    e.on_sample(0.1, now=0.0)
    assert e.rto == pytest.approx(0.1 + 0.5)


def test_rto_clamped_to_min_and_max() -> None:
    e = RttEstimator()
    e.on_sample(0.01, now=0.0)          # 0.01 + 0.02 = 0.03 < 0.2
    assert e.rto == pytest.approx(0.2)
    e2 = RttEstimator()
    e2.on_sample(100.0, now=0.0)        # 100 + 200 > 60
    assert e2.rto == pytest.approx(60.0)


def test_second_sample_updates_rttvar_with_old_srtt() -> None:
    e = RttEstimator()
    e.on_sample(0.1, now=0.0)
    e.on_sample(0.2, now=0.1)
    # RTTVAR = 3/4 * 0.05 + 1/4 * |0.1 - 0.2|; SRTT = 7/8 * 0.1 + 1/8 * 0.2
    assert e.rttvar == pytest.approx(0.0625)
    assert e.srtt == pytest.approx(0.1125)
    assert e.rto == pytest.approx(0.1125 + 4 * 0.0625)
    assert e.latest == 0.2
    assert e.min_rtt == 0.1


def test_samples_per_window_divides_gains() -> None:
    """RFC 7323 App. G: alpha' = alpha / ExpectedSamples, beta' = beta / ExpectedSamples."""
    e = RttEstimator()
    e.on_sample(0.1, now=0.0, samples_per_window=4)   # first sample: §2.2 regardless
    assert e.srtt == pytest.approx(0.1) and e.rttvar == pytest.approx(0.05)
    e.on_sample(0.2, now=0.01, samples_per_window=4)
    assert e.rttvar == pytest.approx(15 / 16 * 0.05 + 1 / 16 * 0.1)
    assert e.srtt == pytest.approx(31 / 32 * 0.1 + 1 / 32 * 0.2)


def test_backoff_doubles_and_clamps_to_max() -> None:
    e = RttEstimator()
    e.on_sample(0.1, now=0.0)
    assert e.rto == pytest.approx(0.3)
    expected = [0.6, 1.2, 2.4, 4.8, 9.6, 19.2, 38.4, 60.0, 60.0]
    for n, want in enumerate(expected, start=1):
        e.backoff()
        assert e.backoffs == n
        assert e.rto == pytest.approx(want)
    for _ in range(200):                # no overflow with absurd counts
        e.backoff()
    assert e.rto == 60.0
    e.reset_backoff()
    assert e.backoffs == 0
    assert e.rto == pytest.approx(0.3)


def test_backoff_before_any_sample() -> None:
    e = RttEstimator(initial_rto=1.0)
    e.backoff()
    e.backoff()
    assert e.rto == pytest.approx(4.0)


def test_new_sample_collapses_backoff() -> None:
    e = RttEstimator()
    e.on_sample(0.1, now=0.0)
    e.backoff()
    e.backoff()
    e.on_sample(0.1, now=3.0)
    assert e.backoffs == 0
    # RTTVAR = 3/4 * 0.05, SRTT unchanged
    assert e.rto == pytest.approx(0.1 + 4 * 0.0375)


def test_min_rtt_tracks_minimum_and_expires_after_window() -> None:
    e = RttEstimator()
    e.on_sample(0.10, now=0.0)
    e.on_sample(0.05, now=10.0)
    e.on_sample(0.20, now=20.0)
    assert e.min_rtt == 0.05
    e.on_sample(0.30, now=299.0)        # 0.05 is 289 s old: still inside the window
    assert e.min_rtt == 0.05
    e.on_sample(0.30, now=341.0)        # every sample of the first bucket is > 300 s old
    assert e.min_rtt == 0.30
    e.on_sample(0.25, now=342.0)
    assert e.min_rtt == 0.25


def test_min_rtt_sample_survives_at_most_window_plus_bucket() -> None:
    e = RttEstimator()
    e.on_sample(0.01, now=0.0)
    e.on_sample(0.5, now=329.0)
    assert e.min_rtt == 0.01            # kept until 300..330 s
    e.on_sample(0.5, now=330.0)
    assert e.min_rtt == 0.5


def test_syn_timeout_fallback_only_without_sample() -> None:
    e = RttEstimator()
    e.backoff()
    e.fallback_after_syn_timeout()
    assert e.rto == pytest.approx(3.0) and e.backoffs == 0
    e.on_sample(0.1, now=1.0)
    e.fallback_after_syn_timeout()
    assert e.rto == pytest.approx(0.3)


@pytest.mark.parametrize("bad", [-0.001, float("nan")])
def test_invalid_sample_raises(bad: float) -> None:
    e = RttEstimator()
    with pytest.raises(LocalError):
        e.on_sample(bad, now=0.0)
    assert e.srtt is None


def test_invalid_arguments_raise() -> None:
    with pytest.raises(LocalError):
        RttEstimator(min_rto=2.0, max_rto=1.0)
    with pytest.raises(LocalError):
        RttEstimator(initial_rto=0.0)
    e = RttEstimator()
    with pytest.raises(LocalError):
        e.on_sample(0.1, now=0.0, samples_per_window=0)


def test_min_var_keeps_the_rto_that_far_above_srtt() -> None:
    """Linux's floor is on the variance term: a 100 ms path with a steady RTT gets an RTO
    of 300 ms, where RFC 6298's sum floor would give 200 ms."""
    plain, linux = RttEstimator(), RttEstimator(min_var=0.2)
    for i in range(50):
        plain.on_sample(0.1, now=i * 0.1)
        linux.on_sample(0.1, now=i * 0.1)
    assert plain.rto == pytest.approx(0.2)
    assert linux.rto == pytest.approx(0.3, abs=1e-6)
    short = RttEstimator(min_var=0.2)
    short.on_sample(0.001, now=0.0)
    assert short.rto == pytest.approx(0.001 + 0.2, abs=1e-3)


def test_seed_from_the_path_sets_only_the_rto_before_the_first_sample() -> None:
    """RFC 9040 §5/§6: another connection's SRTT/RTTVAR give the RTO; the first sample of
    this connection still sets SRTT = R and RTTVAR = R/2 (RFC 6298 §2.2)."""
    e = RttEstimator()
    e.seed(0.1, 0.01)
    assert e.srtt is None
    assert e.rto == pytest.approx(0.2)          # 0.1 + 4 * 0.01, clamped to min_rto 0.2
    e.seed(0.5, 0.1)
    assert e.rto == pytest.approx(0.9)          # the newest path estimate wins before a sample
    e.on_sample(0.3, now=1.0)
    assert e.srtt == pytest.approx(0.3) and e.rttvar == pytest.approx(0.15)
    e.seed(0.01, 0.0)                           # after a sample of its own: ignored
    assert e.rto == pytest.approx(0.9)
    with pytest.raises(LocalError):
        RttEstimator().seed(-1.0, 0.0)
