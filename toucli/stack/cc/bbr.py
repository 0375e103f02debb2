"""BBR v1 congestion control (draft-cardwell-iccrg-bbr-congestion-control-00).

BBR models the path by two numbers measured from delivery-rate samples
(:class:`~toucli.stack.rate.RateSample`, handed over after every ACK through
``on_rate_sample``) instead of reacting to loss:

* BtlBw, the bottleneck bandwidth: the windowed maximum of the delivery rate over
  the last ``BTLBW_FILTER_LEN`` (10) round trips (§4.1.1); samples taken while the
  application limited the sender count only if they raise the maximum.
* RTprop, the round-trip propagation time: the minimum RTT of the last
  ``RTPROP_FILTER_LEN`` (10) seconds (§4.1.2).

It paces at ``pacing_gain * BtlBw`` (§4.2.1) and caps what is in flight at
``cwnd_gain * BtlBw * RTprop`` plus three send quanta (§4.2.3), moving through
the states of §4.3:

* STARTUP: pacing gain 2/ln 2 until BtlBw has grown by less than 25 % in three
  non-application-limited rounds ("filled pipe", §4.3.2.2); cwnd gain 2, BBRv3's
  (v1's 2/ln 2 overfills a one-BDP queue in each of those three rounds);
* DRAIN: pacing gain ln 2 / 2 until in-flight data is down to one BDP (§4.3.3);
* PROBE_BW: pacing gain cycling 5/4, 3/4, 1 x 6, one phase per RTprop, starting at
  a random phase other than 3/4 (§4.3.4); the 5/4 phase lasts until in flight
  reaches 5/4 BDP or a loss, the 3/4 phase ends early once in flight is at one BDP;
* PROBE_RTT: when RTprop was not refreshed for 10 s, cwnd drops to 4 segments for
  at least 200 ms and one round trip, then RTprop is re-measured (§4.3.5).

Loss recovery (§4.2.3.4): newly lost bytes are taken off cwnd; outside STARTUP,
entering fast recovery also holds cwnd at what is in flight plus what each ACK
delivered ("packet conservation") for one round trip; on leaving recovery the
cwnd of before is restored. STARTUP keeps growing through a recovery: under
random loss a conservation round came every other round and start-up took
twice the rounds (300 ms / 2 % on the emulated path: 54-58 instead of 46-48
Mbit/s), and its cwnd gain of 2 already bounds what it has in flight.
A retransmission timeout sets cwnd to one segment and saves the old one;
it then grows by what each ACK delivers, up to the BBR target, and is restored
when the recovery ends. BBR does its own recovery arithmetic, so the engine runs no
PRR for it (``manages_recovery``), and it must pace (``requires_pacing``).
"""

from __future__ import annotations

import math
import random
from collections import deque
from typing import Final, Any

from ..pacer import MAX_SEGMENTS, MIN_SEGMENTS, QUANTUM_TIME
from .base import INITIAL_SSTHRESH, MAX_CWND, CongestionControl

STARTUP: Final = "STARTUP"
DRAIN: Final = "DRAIN"
PROBE_BW: Final = "PROBE_BW"
PROBE_RTT: Final = "PROBE_RTT"

HIGH_GAIN: Final = 2.0 / math.log(2.0)            # §4.3.2.1: 2/ln 2 ~ 2.885
DRAIN_GAIN: Final = 1.0 / HIGH_GAIN               # §4.3.3
CWND_GAIN: Final = 2.0                            # §4.3.4
STARTUP_CWND_GAIN: Final = 2.0                    # BBRv3 (draft-cardwell-iccrg-bbr-congestion-control-02 §5.3.1.1)
PACING_GAIN_CYCLE = (1.25, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)   # §4.3.4.3
BTLBW_FILTER_LEN: Final = 10                      # rounds (§4.1.1)
RTPROP_FILTER_LEN: Final = 10.0                   # seconds (§4.1.2)
PROBE_RTT_DURATION: Final = 0.200                 # seconds (§4.3.5)
MIN_PIPE_CWND_SEGMENTS: Final = 4                 # §4.2.3.3
FULL_BW_THRESH: Final = 1.25                      # §4.3.2.2
FULL_BW_COUNT: Final = 3
PACING_MARGIN: Final = 0.01                       # pace 1 % below the estimate (Linux bbr_pacing_margin_percent)
QUEUE_RTT_FLOOR: Final = 0.002                    # RTT above RTprop by this much (or a quarter of it) is a standing queue


class WindowedMax:
    """Maximum of the samples of the last ``window`` time units (here: round trips).

    A monotone deque: each entry is ``(time, value)`` and values decrease from the
    front, so the front is the maximum and old entries leave from the front.
    """

    __slots__ = ("window", "_q")

    def __init__(self, window: int) -> None:
        self.window = window
        self._q: deque[tuple[int, float]] = deque()

    def update(self, value: float, t: int) -> float:
        q = self._q
        while q and q[-1][1] <= value:
            q.pop()
        q.append((t, value))
        self.expire(t)
        return q[0][1]

    def expire(self, t: int) -> None:
        """Forget samples older than the window, but keep the newest one (no sample is
        better than an old one only when a new one replaces it)."""
        q = self._q
        while len(q) > 1 and q[0][0] <= t - self.window:
            q.popleft()

    @property
    def value(self) -> float:
        return self._q[0][1] if self._q else 0.0

    def reset(self) -> None:
        self._q.clear()


class Bbr(CongestionControl):
    """BBR v1: pacing at the measured bottleneck rate, cwnd at twice the measured BDP."""

    name = "bbr"
    wants_rate_samples = True
    manages_recovery = True
    requires_pacing = True
    supports_hystart = False

    def __init__(self, mss: int, now: float, initial_window: int | None = None) -> None:
        super().__init__(mss, now, initial_window)
        self.initial_cwnd = self.cwnd
        self.mode = STARTUP
        self.btl_bw_filter = WindowedMax(BTLBW_FILTER_LEN)
        self.rtprop: float | None = None
        self.last_rtt = -1.0                  # the newest RTT sample (seconds; -1 before one)
        self.rtprop_stamp = now
        self.rtprop_expired = False
        self.round_count = 0
        self.round_start = False
        self.next_round_delivered = 0
        self.filled_pipe = False
        self.full_bw = 0.0
        self.full_bw_count = 0
        self.pacing_gain = HIGH_GAIN
        self.cwnd_gain = STARTUP_CWND_GAIN
        self.pacing_rate = 0.0
        self.cycle_index = 0
        self.cycle_stamp = now
        self.probe_rtt_done_stamp: float | None = None
        self.probe_rtt_round_done = False
        self.want_app_limited = False
        self.idle_restart = False
        self.prior_cwnd = 0
        self.packet_conservation = False
        self._start_round_now = False
        self.target_cwnd = self.cwnd
        self._rng = random.Random(0)

    def set_initial_window(self, cwnd: int) -> None:
        """The initial window also sizes BBR's first pacing rate and its BDP before any
        estimate (§4.2.1, §4.2.3.2), so it must be the one in segments of the real MSS."""
        super().set_initial_window(cwnd)
        self.initial_cwnd = self.target_cwnd = self.cwnd

    def seed(self, value: int) -> None:
        """Seed the choice of the first PROBE_BW phase (the engine passes its ISN)."""
        self._rng.seed(value)

    # ------------------------------------------------------------ the model
    @property
    def btl_bw(self) -> float:
        """BBR.BtlBw, bytes per second (0.0 before the first sample)."""
        return self.btl_bw_filter.value

    @property
    def in_slow_start(self) -> bool:
        return self.mode == STARTUP

    def bdp(self, gain: float = 1.0) -> int:
        """§4.2.3.2 BBRInflight: gain * BtlBw * RTprop; the initial window before any estimate."""
        if self.rtprop is None or self.btl_bw <= 0.0:
            return int(gain * self.initial_cwnd) if gain < 1.0 else self.initial_cwnd
        return int(gain * self.btl_bw * self.rtprop)

    def queue_standing(self) -> bool:
        """The newest RTT sample is above RTprop by a quarter of it (at least 2 ms)."""
        rtprop = self.rtprop
        if rtprop is None or self.last_rtt < 0.0:
            return False
        return self.last_rtt > rtprop + max(rtprop / 4, QUEUE_RTT_FLOOR)

    def send_quantum(self) -> int:
        """The pacer's burst at the current rate (its quantum: about 1 ms, 4 to 44 segments)."""
        q = int(self.pacing_rate * QUANTUM_TIME)
        lo, hi = MIN_SEGMENTS * self.mss, MAX_SEGMENTS * self.mss
        return lo if q < lo else hi if q > hi else q

    def _target(self, gain: float) -> int:
        """§4.2.3.2: cwnd target = gain * BDP plus room for three send quanta."""
        t = self.bdp(gain) + 3 * self.send_quantum()
        if self.mode == PROBE_BW and self.cycle_index == 0:
            t += 2 * self.mss   # Linux: room to actually reach 5/4 BDP in the probing phase
        return t

    # ------------------------------------------------------------ per ACK
    def on_rate_sample(self, rs: Any, now: float, in_flight: int) -> None:
        """§4.3 BBRUpdateOnACK: update the model and the state, then pacing rate and cwnd."""
        self._touched = True
        if self._start_round_now:
            self._start_round_now = False
            self.next_round_delivered = rs.delivered_total
        self._update_round(rs)
        self._update_btl_bw(rs)
        self._check_cycle_phase(rs, now)
        self._check_full_pipe(rs)
        self._check_drain(now, in_flight)
        self._update_rtprop(rs, now)
        self._check_probe_rtt(rs, now, in_flight)
        self._set_pacing_rate(self.pacing_gain)
        self._set_cwnd(rs, in_flight)

    def _update_round(self, rs: Any) -> None:
        """§4.1.1.3: a round trip ends when a packet sent after the last round's end is delivered."""
        self.round_start = False
        if rs.prior_time is not None and rs.prior_delivered >= self.next_round_delivered:
            self.next_round_delivered = rs.delivered_total
            self.round_count += 1
            self.round_start = True
            self.packet_conservation = False

    def _update_btl_bw(self, rs: Any) -> None:
        """§4.1.1.5: app-limited samples count only when they raise the estimate."""
        if not rs.valid:
            return
        if rs.delivery_rate >= self.btl_bw or not rs.is_app_limited:
            self.btl_bw_filter.update(rs.delivery_rate, self.round_count)
        else:
            self.btl_bw_filter.expire(self.round_count)

    def _update_rtprop(self, rs: Any, now: float) -> None:
        """§4.1.2.3: min RTT over 10 s; an expired estimate takes the next sample."""
        self.rtprop_expired = now > self.rtprop_stamp + RTPROP_FILTER_LEN
        if rs.rtt >= 0.0:
            self.last_rtt = rs.rtt
        if rs.rtt >= 0.0 and (self.rtprop is None or rs.rtt <= self.rtprop or self.rtprop_expired):
            self.rtprop = rs.rtt
            self.rtprop_stamp = now

    def _check_full_pipe(self, rs: Any) -> None:
        """§4.3.2.2: the pipe is full when BtlBw grew < 25 % over three rounds."""
        if self.filled_pipe or not self.round_start or rs.is_app_limited:
            return
        bw = self.btl_bw
        if bw >= self.full_bw * FULL_BW_THRESH:
            self.full_bw = bw
            self.full_bw_count = 0
            return
        self.full_bw_count += 1
        if self.full_bw_count >= FULL_BW_COUNT:
            self.filled_pipe = True

    def _check_drain(self, now: float, in_flight: int) -> None:
        """§4.3.3: STARTUP -> DRAIN once the pipe is full; DRAIN -> PROBE_BW at one BDP."""
        if self.mode == STARTUP and self.filled_pipe:
            self.mode = DRAIN
            self.pacing_gain = DRAIN_GAIN
            self.cwnd_gain = HIGH_GAIN
        if self.mode == DRAIN and in_flight <= self.bdp(1.0):
            self._enter_probe_bw(now)

    def _enter_probe_bw(self, now: float) -> None:
        """§4.3.4.3: start the gain cycle at a random phase, never the 3/4 one."""
        self.mode = PROBE_BW
        self.pacing_gain = 1.0
        self.cwnd_gain = CWND_GAIN
        n = len(PACING_GAIN_CYCLE)
        self.cycle_index = n - 1 - self._rng.randrange(n - 1)
        self._advance_cycle_phase(now)

    def _advance_cycle_phase(self, now: float) -> None:
        self.cycle_index = (self.cycle_index + 1) % len(PACING_GAIN_CYCLE)
        self.cycle_stamp = now
        self.pacing_gain = PACING_GAIN_CYCLE[self.cycle_index]

    def _check_cycle_phase(self, rs: Any, now: float) -> None:
        """§4.3.4.3 BBRIsNextCyclePhase."""
        if self.mode != PROBE_BW:
            return
        gain = self.pacing_gain
        full_length = self.rtprop is not None and now - self.cycle_stamp > self.rtprop
        if gain == 1.0:
            advance = full_length
        elif gain > 1.0:
            advance = full_length and (rs.losses > 0 or rs.prior_in_flight >= self.bdp(gain))
        else:
            advance = full_length or rs.prior_in_flight <= self.bdp(1.0)
        if advance:
            self._advance_cycle_phase(now)

    def _check_probe_rtt(self, rs: Any, now: float, in_flight: int) -> None:
        """§4.3.5: enter PROBE_RTT when RTprop expired; leave after 200 ms and a round."""
        if self.mode != PROBE_RTT and self.rtprop_expired and not self.idle_restart:
            self.mode = PROBE_RTT
            self.pacing_gain = 1.0
            self.cwnd_gain = 1.0
            self._save_cwnd()
            self.probe_rtt_done_stamp = None
        if self.mode == PROBE_RTT:
            self.want_app_limited = True
            if self.probe_rtt_done_stamp is None and in_flight <= self.min_pipe_cwnd:
                self.probe_rtt_done_stamp = now + PROBE_RTT_DURATION
                self.probe_rtt_round_done = False
                self.next_round_delivered = rs.delivered_total
            elif self.probe_rtt_done_stamp is not None:
                if self.round_start:
                    self.probe_rtt_round_done = True
                if self.probe_rtt_round_done and now > self.probe_rtt_done_stamp:
                    self._exit_probe_rtt(now)
        if rs.acked_sacked > 0:
            self.idle_restart = False

    def _exit_probe_rtt(self, now: float) -> None:
        """§4.3.5: RTprop re-measured: restore cwnd, back to PROBE_BW (or STARTUP)."""
        self.rtprop_stamp = now
        self.cwnd = max(self.cwnd, self.prior_cwnd)
        self.want_app_limited = False
        self.probe_rtt_done_stamp = None
        if self.filled_pipe:
            self._enter_probe_bw(now)
        else:
            self.mode = STARTUP
            self.pacing_gain = HIGH_GAIN
            self.cwnd_gain = STARTUP_CWND_GAIN

    @property
    def min_pipe_cwnd(self) -> int:
        return MIN_PIPE_CWND_SEGMENTS * self.mss

    def _set_pacing_rate(self, gain: float) -> None:
        """§4.2.1: pace at gain * BtlBw; before the pipe is full, never lower the rate.

        The rate starts at high_gain * initial cwnd / RTT (BBRInitPacingRate), so a
        first bandwidth sample taken from the initial window's burst, lower than
        that, does not slow the start-up's first rounds.
        """
        if self.pacing_rate == 0.0 and self.rtprop:
            self.pacing_rate = HIGH_GAIN * self.initial_cwnd / self.rtprop
        bw = self.btl_bw
        if bw <= 0.0:
            return
        rate = gain * bw * (1.0 - PACING_MARGIN)
        if self.filled_pipe or rate > self.pacing_rate:
            self.pacing_rate = rate

    def _set_cwnd(self, rs: Any, in_flight: int) -> None:
        """§4.2.3: cwnd towards cwnd_gain * BDP + quanta; recovery and PROBE_RTT limits."""
        acked = rs.acked_sacked
        mss = self.mss
        self.target_cwnd = target = self._target(self.cwnd_gain)
        cwnd = self.cwnd
        conserving = False
        if self.in_recovery:
            # §4.2.3.4 BBRModulateCwndForRecovery
            if rs.losses > 0:
                cwnd = max(cwnd - rs.losses, mss)
            if self.packet_conservation:
                cwnd = max(cwnd, in_flight + acked)
                conserving = True
        if not conserving:
            if self.filled_pipe:
                cwnd = min(cwnd + acked, target)
            elif cwnd < target or rs.delivered_total < self.initial_cwnd:
                cwnd = cwnd + acked
            if cwnd < self.min_pipe_cwnd:
                cwnd = self.min_pipe_cwnd
        if self.mode == PROBE_RTT and cwnd > self.min_pipe_cwnd:
            cwnd = self.min_pipe_cwnd     # §4.2.3.5
        self.cwnd = min(cwnd, MAX_CWND)

    def _save_cwnd(self) -> None:
        """§4.2.3.4 BBRSaveCwnd."""
        if not self.in_recovery and self.mode != PROBE_RTT:
            self.prior_cwnd = self.cwnd
        else:
            self.prior_cwnd = max(self.prior_cwnd, self.cwnd)

    # ------------------------------------------------------------ engine events
    def on_ack(self, acked: int, now: float, rtt: float | None, in_flight: int,
               app_limited: bool = False) -> None:
        """BBR sizes cwnd in ``on_rate_sample``; the Reno arithmetic does not apply."""
        if acked > 0:
            self._touched = True
            self._rto_episode = False
        self._clock_mark = now

    def on_rtt_sample(self, rtt: float, now: float, ack: int, snd_nxt: int) -> None:
        """No HyStart: BBR leaves STARTUP on its own bandwidth-plateau test."""

    def on_congestion_event(self, now: float, in_flight: int) -> None:
        """§4.2.3.4: fast recovery begins: packet conservation for one round trip,
        except in STARTUP (see the module's docstring)."""
        self._touched = True
        if self.in_recovery:
            return
        self._save_cwnd()
        self.in_recovery = True
        if self.mode != STARTUP:
            self.packet_conservation = True
            self._start_round_now = True   # conservation lasts until the next round starts

    def on_recovery_exit(self, now: float) -> None:
        """§4.2.3.4: recovery is over: restore the cwnd of before."""
        if not self.in_recovery:
            return
        self.in_recovery = False
        self.packet_conservation = False
        self.cwnd = max(self.cwnd, self.prior_cwnd)
        self._clock_mark = now

    def on_rto(self, now: float, in_flight: int) -> None:
        """A timeout: everything is resent from one segment up, growing per ACK (§4.2.3.4)."""
        self._touched = True
        if not self._rto_episode:
            self._save_cwnd()
        self._rto_episode = True
        self.in_recovery = True
        self.packet_conservation = False
        self.full_bw = 0.0          # Linux: a timeout ends any bandwidth-growth streak
        self.full_bw_count = 0
        self.cwnd = self.mss

    def on_spurious_congestion(self, now: float) -> None:
        """The reduction was spurious (D-SACK, Eifel): leave recovery with the old cwnd."""
        self.in_recovery = False
        self.packet_conservation = False
        self._rto_episode = False
        self.cwnd = max(self.cwnd, self.prior_cwnd)
        self._clock_mark = now

    def _on_idle(self, now: float, idle: float) -> None:
        """Restart after idle (Linux CA_EVENT_TX_START): no PROBE_RTT for it, pace at 1 x BtlBw."""
        self.idle_restart = True
        if self.mode == PROBE_BW:
            self._set_pacing_rate(1.0)
        elif self.mode == PROBE_RTT and self.probe_rtt_done_stamp is not None \
                and now >= self.probe_rtt_done_stamp:
            # Linux: the idle time was the PROBE_RTT; do not wait for a round trip to end it.
            self._exit_probe_rtt(now)

    def stats(self) -> dict:
        d = super().stats()
        d.update(
            mode=self.mode,
            btl_bw=self.btl_bw,
            rtprop=self.rtprop,
            pacing_gain=self.pacing_gain,
            cwnd_gain=self.cwnd_gain,
            pacing_rate=self.pacing_rate,
            filled_pipe=self.filled_pipe,
            round_count=self.round_count,
            target_cwnd=self.target_cwnd,
        )
        return d


__all__ = ["Bbr", "WindowedMax", "STARTUP", "DRAIN", "PROBE_BW", "PROBE_RTT", "INITIAL_SSTHRESH"]
