"""The dashboard renders a known snapshot: rich console capture at a fixed size, exact fields."""

from __future__ import annotations

import copy
import io
import re

from rich.console import Console

from toucli.dashboard import (
    Dashboard, IntervalPrinter, LiveView, fmt_age, fmt_bytes, fmt_ms, fmt_pct, fmt_rate, parse_keys, plot,
    sparkline,
)


def conn(**kw) -> dict:
    row = {
        "id": 1, "peer": "192.0.2.7:4500", "local_port": 50000, "remote_port": 1, "label": None,
        "state": "ESTABLISHED", "open": True, "age": 75.0, "srtt": 0.0123, "rttvar": 0.002, "min_rtt": 0.010,
        "rto": 0.2, "cwnd": 64000, "ssthresh": 50000, "in_flight": 32000, "snd_wnd": 1000000, "rcv_wnd": 262144,
        "mss": 1396, "congestion_control": "cubic", "pacing_rate_bps": 80e6, "delivery_rate_bps": None,
        "bytes_sent": 12_000_000, "bytes_acked": 11_900_000, "bytes_received": 3000, "bytes_retrans": 180_000,
        "segs_out": 8600, "segs_in": 4300, "retransmitted_segments": 129, "retrans_pct": 1.5,
        "retrans_bytes_pct": 1.5, "rto_count": 1, "sack_recoveries": 4, "up_bps": 96e6, "down_bps": 24e3,
        "limited_by": "cwnd", "interval_bytes_up": 12_000_000, "interval_bytes_down": 3000,
        "interval_retransmitted_segments": 7, "tcp": {},
    }
    row.update(kw)
    return row


SNAPSHOT = {
    "version": 1, "time": 1_700_000_000.0, "uptime": 125.0, "interval": 1.0,
    "instance": {"pid": 4242, "name": "web", "command": "connect", "control": "/run/user/1/tou/web.sock"},
    "transport": {"name": "DTLS", "overhead": 41, "local": "198.51.100.1:40000"},
    "peers": [{"address": "192.0.2.7:4500", "identity": "SHA256:q1w2e3r4t5 (server)",
               "fingerprint": "SHA256:q1w2e3r4t5", "key_name": "server", "auth": "keys",
               "state": "established", "session_id": 7, "age": 125.0}],
    "path": {"rtt": 0.0123, "min_rtt": 0.010, "mtu": 1500, "mss": 1396, "loss_pct": 2.0, "loss_pct_total": 1.25,
             "overhead_pct": 5.1},
    "totals": {"connections": 3, "up_bps": 100.5e6, "down_bps": 2.5e6, "bytes_up": 250_000_000,
               "bytes_down": 9_000_000, "cwnd": 200_000, "in_flight": 90_000, "retrans_pct": 1.25,
               "interval_bytes_up": 12_562_500, "interval_bytes_down": 312_500,
               "interval_retransmitted_segments": 9},
    "drops": {"replay": 2, "auth": 1},
    "secure": {},
    "connections": [
        conn(),
        conn(id=2, label="example.com:443", srtt=0.045, cwnd=100_000, in_flight=50_000, up_bps=4.5e6,
             down_bps=2.476e6, limited_by="rwnd", retrans_pct=0.0, age=30.0),
        conn(id=3, srtt=0.002, cwnd=36_000, in_flight=8000, up_bps=0.0, down_bps=0.0, limited_by="app",
             retrans_pct=0.0, age=5.0, state="CLOSE_WAIT"),
    ],
    "history": {
        "totals": {"t": [-2.0, -1.0, 0.0], "up_bps": [50e6, 100e6, 100.5e6], "down_bps": [0, 1e6, 2.5e6]},
        "connections": {"2": {"t": [-60.0, -30.0, 0.0], "srtt": [0.010, 0.030, 0.045],
                              "cwnd": [20_000, 60_000, 100_000]}},
    },
}

WIDTH = 140


def render(dash: Dashboard, snap: dict = SNAPSHOT) -> str:
    console = Console(width=WIDTH, height=60, file=io.StringIO(), record=True, color_system=None)
    console.print(dash.render(snap))
    return console.export_text()


def table_rows(text: str) -> list[str]:
    """Lines of the connection table (after the header row)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("ID") or " Endpoint " in line)
    return [line for line in lines[start + 1:] if line.strip() and not line.startswith("q ")
            and line.split()[0] != "Σ"]


# ------------------------------------------------------------------ main view
def test_header_shows_peer_key_uptime_path_and_rates() -> None:
    text = render(Dashboard())
    assert "tou connect 'web'  pid 4242" in text
    assert "192.0.2.7:4500  key SHA256:q1w2e3r4t5 (server)" in text
    assert "DTLS  up 2m05s  rtt 12.3 ms (min 10.0 ms)  mtu 1500  mss 1396  overhead 5.1%  loss 2.0%" in text
    assert "(total 1.2%)" in text or "(total 1.3%)" in text
    assert "drops 3" in text
    up = next(line for line in text.splitlines() if "│ up " in line)
    assert "100 Mbit/s" in up and "250 MB total" in up
    assert "▄██" in up                     # the sparkline: 50, 100, 100.5 Mbit/s
    down = next(line for line in text.splitlines() if "│ down " in line)
    assert "2.5 Mbit/s" in down and "9 MB total" in down


def test_one_row_per_connection_with_its_figures() -> None:
    text = render(Dashboard())
    rows = table_rows(text)
    assert len(rows) == 3
    r1, r2, r3 = rows
    for piece in ("192.0.2.7:4500 50000→1", "ESTABLISHED", "1m15s", "12.3 ms", "64 kB", "32 kB", "1.5%",
                  "96 Mbit/s", "24 kbit/s", "congestion"):
        assert piece in r1, (piece, r1)
    for piece in ("example.com:443", "30s", "45.0 ms", "100 kB", "50 kB", "4.5 Mbit/s", "2.48 Mbit/s",
                  "recv window"):
        assert piece in r2, (piece, r2)
    for piece in ("CLOSE_WAIT", "5s", "2.00 ms", "36 kB", "app"):
        assert piece in r3, (piece, r3)
    assert r1.split()[0] == "1" and r2.split()[0] == "2" and r3.split()[0] == "3"


def test_totals_row() -> None:
    text = render(Dashboard())
    total = next(line for line in text.splitlines() if line.lstrip().startswith("Σ"))
    for piece in ("3 open", "200 kB", "90 kB", "1.2%", "100 Mbit/s", "2.5 Mbit/s"):
        assert piece in total, (piece, total)


def test_s_cycles_the_sort() -> None:
    dash = Dashboard()
    assert dash.sort_name == "id"
    dash.handle_key("s")
    assert dash.sort_name == "up"
    ids = [r.split()[0] for r in table_rows(render(dash))]
    assert ids == ["1", "2", "3"]          # 96 > 4.5 > 0 Mbit/s
    dash.handle_key("s")
    assert dash.sort_name == "down"
    assert [r.split()[0] for r in table_rows(render(dash))] == ["2", "1", "3"]
    dash.handle_key("s")
    assert dash.sort_name == "rtt"
    text = render(dash)
    assert [r.split()[0] for r in table_rows(text)] == ["2", "1", "3"]
    assert "RTT ▾" in text
    for _ in range(3):
        dash.handle_key("s")
    assert dash.sort_name == "id"


def test_arrows_select_and_enter_opens_the_detail_view_with_plots() -> None:
    dash = Dashboard()
    render(dash)
    dash.handle_key("down")
    assert dash.selected == 1
    dash.handle_key("down")
    assert dash.selected == 2
    dash.handle_key("enter")
    assert dash.detail
    text = render(dash)
    assert "connection 2: example.com:443" in text
    assert "RTT, last minute" in text and "cwnd, last minute" in text
    assert "45.0 ms ┤" in text            # the RTT plot's top is the largest sample
    assert "100 kB ┤" in text
    assert "-60s" in text and "now" in text
    assert re.search(r"limited by\s+recv window", text)
    assert re.search(r"SACK recoveries\s+4", text)
    dash.handle_key("esc")
    assert not dash.detail
    dash.handle_key("up")
    assert dash.selected == 1


def test_selection_of_a_vanished_connection_is_dropped() -> None:
    dash = Dashboard()
    render(dash)
    dash.handle_key("up")                  # from nothing: the last row
    assert dash.selected == 3
    dash.handle_key("enter")
    snap = copy.deepcopy(SNAPSHOT)
    snap["connections"] = snap["connections"][:2]
    text = render(dash, snap)
    assert dash.selected is None and not dash.detail
    assert "Endpoint" in text


def test_q_hides_locally_and_quits_when_attached() -> None:
    dash = Dashboard()
    dash.handle_key("q")
    assert dash.hidden and not dash.quit
    dash.handle_key("s")                   # ignored while hidden
    assert dash.sort_name == "id"
    dash.handle_key("q")
    assert not dash.hidden
    attached = Dashboard(attached=True)
    attached.handle_key("q")
    assert attached.quit
    assert "q quit" in render(attached)


def test_no_connections_and_cleartext_peer() -> None:
    snap = copy.deepcopy(SNAPSHOT)
    snap["connections"] = []
    snap["totals"]["connections"] = 0
    snap["transport"]["name"] = "cleartext"
    snap["peers"] = [{"address": "127.0.0.1:9", "fingerprint": None, "identity": None}]
    text = render(Dashboard(), snap)
    assert "no connections" in text
    assert "127.0.0.1:9  key cleartext, no key" in text


def test_live_view_hides_and_shows_on_a_terminal() -> None:
    out = io.StringIO()
    console = Console(width=WIDTH, height=50, file=out, force_terminal=True, color_system=None)
    view = LiveView(Dashboard(), out, console=console)
    view.update(SNAPSHOT)
    assert view.live is not None and "example.com:443" in out.getvalue()
    view.dashboard.handle_key("q")
    view.update()
    assert view.live is None
    view.dashboard.handle_key("q")
    view.update()
    assert view.live is not None
    view.stop()
    assert view.live is None


# ------------------------------------------------------------------ interval lines
def test_interval_lines_like_iperf3() -> None:
    lines: list[str] = []
    printer = IntervalPrinter(lines.append)
    printer.update(SNAPSHOT)
    assert lines[0].startswith("[ ID]") and "Interval" in lines[0] and "Retr" in lines[0]
    assert len(lines) == 1 + 3 + 1
    one = lines[1].split()
    assert one[:3] == ["[", "1]", "124.00-125.00"]
    assert "12 MB" in lines[1] and "96 Mbit/s" in lines[1] and "3 kB" in lines[1]
    assert lines[1].split()[-1] == "congestion"
    assert " 7 " in lines[1]               # retransmitted in this interval
    assert lines[-1].startswith("[SUM]") and "12.6 MB" in lines[-1] and "100 Mbit/s" in lines[-1]
    printer.update(SNAPSHOT)
    assert len(lines) == 5 + 4             # the header only once


# ------------------------------------------------------------------ helpers
def test_formatting() -> None:
    assert [fmt_rate(0), fmt_rate(950), fmt_rate(12_340), fmt_rate(96e6), fmt_rate(2.5e9)] == \
        ["0 bit/s", "950 bit/s", "12.3 kbit/s", "96 Mbit/s", "2.5 Gbit/s"]
    assert [fmt_bytes(0), fmt_bytes(999), fmt_bytes(64_000), fmt_bytes(1_250_000)] == ["0 B", "999 B", "64 kB",
                                                                                        "1.25 MB"]
    assert [fmt_ms(None), fmt_ms(0.00042), fmt_ms(0.0123), fmt_ms(0.25)] == ["-", "0.42 ms", "12.3 ms", "250 ms"]
    assert [fmt_age(42), fmt_age(185), fmt_age(7620)] == ["42s", "3m05s", "2h07m"]
    assert [fmt_pct(None), fmt_pct(1.25), fmt_pct(12.5)] == ["-", "1.2%", "12%"]


def test_sparkline_scales_to_the_maximum() -> None:
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7], 8) == "▁▂▃▄▅▆▇█"
    assert sparkline([5, 5], 4) == "  ██"
    assert sparkline([0, 0, 0], 3) == "▁▁▁"
    assert sparkline([None, 1], 2) == " █"


def test_plot_columns_hold_their_value_until_the_next_sample() -> None:
    rows = plot([-4.0, -2.0], [1.0, 2.0], width=4, height=2, span=4.0, fmt=lambda v: f"{v:g}")
    assert rows[0] == "2 ┤  ██"
    assert rows[1] == "0 ┤████"
    assert rows[2] == "  └────"
    assert rows[3] == "   -4snow"


def test_parse_keys() -> None:
    assert parse_keys(b"q") == ["q"]
    assert parse_keys(b"s\x1b[A\x1b[B\r") == ["s", "up", "down", "enter"]
    assert parse_keys(b"\x1bOA\x1bOBjk\n") == ["up", "down", "down", "up", "enter"]
    assert parse_keys(b"\x1b") == ["esc"]
    assert parse_keys(b"\x1b[15~x") == []          # F5 and an unbound key
