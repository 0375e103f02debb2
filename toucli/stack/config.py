"""Knobs of the TCP engine. Defaults suit a tunnel: interactive, long fat paths."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ConnectionConfig:
    mss: int = 1400                    # largest payload we accept (announced in the SYN) and send
    send_mss: int | None = None        # what we send until set_mss() changes it (e.g. Fast Open SYN data); None: mss
    send_buffer: int = 4 << 20         # cap on unacknowledged + unsent bytes we hold
    recv_buffer: int = 16 << 20        # cap on received bytes held for the application (and window)
    initial_recv_window: int = 1 << 20    # auto-tuning grows the window from here up to recv_buffer
    window_scaling: bool = True        # RFC 7323 §2
    timestamps: bool = True            # RFC 7323 §3-§5
    sack: bool = True                  # RFC 2018
    nagle: bool = False                # RFC 896; off: tunnels are interactive
    congestion_control: str = "cubic"   # "cubic" (RFC 9438), "newreno" (RFC 5681) or "bbr" (BBR v1)
    rack: bool = True                  # RACK-TLP loss detection (RFC 8985) when SACK is on
    tlp: bool = True                   # tail loss probes (RFC 8985 §7); needs rack
    prr: bool = True                   # proportional rate reduction in recovery (RFC 6937)
    undo: bool = True                  # undo spurious reductions (D-SACK RFC 3708, Eifel RFC 3522)
    pacing: bool = True                # token-bucket pacing at gain * cwnd / SRTT 
    hystart: bool = True               # HyStart++ slow-start exit (RFC 9406), CUBIC and NewReno
    fast_open: bool = False            # TCP Fast Open (RFC 7413): cookies, data in the SYN
    initial_window_segments: int = 10  # RFC 6928
    delayed_ack: float = 0.025         # RFC 9293 §3.8.6.3 (must be < 0.5 s)
    sack_compression: bool = True      # out of order: ACK at once only for new holes (Linux tcp_comp_sack)
    rto_initial: float = 1.0           # RFC 6298 §2.1
    rto_min: float = 0.2               # Linux's floor; RFC 6298 allows below 1 s
    rto_min_var: float = 0.0           # least variance term (Linux: 0.2, so RTO >= SRTT + 0.2 s)
    rto_restart_on_head_resend: bool = False   # Linux: resending SND.UNA restarts the RTO
    rtt_sack_samples: bool = False     # Linux: RTT samples from SACKs too, each at full gain (no RFC 7323 App. G)
    rto_max: float = 60.0              # RFC 6298 §2.5
    user_timeout: float = 60.0         # give up when data stays unacknowledged this long (RFC 9293 §3.8.3)
    syn_retries: int = 6
    time_wait: float = 2.0             # short TIME-WAIT: the tunnel's sessions are not reused quickly
    keepalive_idle: float | None = None  # None = off; seconds of silence before the first probe
    keepalive_interval: float = 5.0
    keepalive_probes: int = 4
    challenge_ack_limit: int = 10      # per second (RFC 5961 §7)
    ooo_segments: int | None = None    # cap on out-of-order pieces kept (memory bound); None: recv_buffer / 512, at least 4096
    persist_min: float = 0.2
    persist_max: float = 60.0
