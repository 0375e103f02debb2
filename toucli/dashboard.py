"""The live statistics view: a rich dashboard on a terminal, interval lines elsewhere.

Everything here *shows* a snapshot made by :mod:`toucli.stats` (schema in
docs/STATS.md); no figure is derived from protocol state here, only formatted.

* :class:`Dashboard` holds the view state (sort order, selected row, detail
  view, hidden) and renders a snapshot into a rich renderable: a header (peer,
  key fingerprint, uptime, path RTT, MTU, wire overhead, loss, total rates with
  sparklines), a table with one row per inner connection and a totals row, or
  the detail view of one connection with its RTT and cwnd over the last minute.
* :class:`LiveView` puts that on a terminal with ``rich.live.Live`` (stderr:
  stdout may carry the payload).
* :class:`IntervalPrinter` writes iperf3-style lines when stderr is no terminal.
* :class:`KeyReader` reads single keys from the controlling terminal.
"""

from __future__ import annotations

import atexit
import os
from typing import Any, Callable, TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from toucli.stats import connection_rows

SORTS = ("id", "up", "down", "rtt", "retrans", "age")
SPARK = "▁▂▃▄▅▆▇█"
LIMIT_NAMES = {"app": "app", "rwnd": "recv window", "cwnd": "congestion", "pacing": "pacing",
               "sndbuf": "send buffer"}

# Key names KeyReader produces and Dashboard.handle_key understands.
KEY_UP, KEY_DOWN, KEY_ENTER, KEY_ESC = "up", "down", "enter", "esc"


# ------------------------------------------------------------------ formatting
def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def fmt_rate(bps: Any) -> str:
    """Bits per second with a decimal prefix: ``0 bit/s``, ``950 kbit/s``, ``12.3 Mbit/s``."""
    if not _is_num(bps):
        return "-"
    for unit, scale in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bps >= scale:
            v = bps / scale
            return f"{v:.3g} {unit}" if v < 1000 else f"{v:.0f} {unit}"
    return f"{bps:.0f} bit/s"


def fmt_bytes(n: Any) -> str:
    """Bytes with a decimal prefix: ``512 B``, ``64.0 kB``, ``1.25 MB``."""
    if not _is_num(n):
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            v = n / scale
            return f"{v:.3g} {unit}" if v < 1000 else f"{v:.0f} {unit}"
    return f"{int(n)} B"


def fmt_ms(seconds: Any) -> str:
    """A duration in milliseconds: ``0.42 ms``, ``12.3 ms``, ``250 ms``; ``-`` when unknown."""
    if not _is_num(seconds):
        return "-"
    ms = seconds * 1000.0
    return f"{ms:.2f} ms" if ms < 10 else f"{ms:.1f} ms" if ms < 100 else f"{ms:.0f} ms"


def fmt_age(seconds: Any) -> str:
    """``42s``, ``3m05s``, ``2h07m``."""
    if not _is_num(seconds):
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def fmt_pct(p: Any) -> str:
    if not _is_num(p):
        return "-"
    return f"{p:.1f}%" if p < 10 else f"{p:.0f}%"


def sparkline(values: list[Any], width: int) -> str:
    """The last ``width`` values as block characters, scaled to their maximum (unknowns as spaces)."""
    vals = list(values)[-width:]
    peak = max((v for v in vals if _is_num(v)), default=0) or 0
    out = []
    for v in vals:
        if not _is_num(v):
            out.append(" ")
        elif peak <= 0:
            out.append(SPARK[0])
        else:
            out.append(SPARK[min(len(SPARK) - 1, int(v / peak * (len(SPARK) - 1) + 0.5))])
    return "".join(out).rjust(width)


def plot(times: list[Any], values: list[Any], *, width: int = 60, height: int = 8, span: float = 60.0,
         fmt: Callable[[float], str] = str) -> list[str]:
    """A column chart of ``values`` at ``times`` (seconds, <= 0 = now) over the last ``span`` s.

    One column per ``span / width`` seconds (the latest value in it, held until the
    next), eighth-block
    resolution, y axis labelled with the maximum and zero, x axis ``-60s .. now``.
    """
    cols: list[float | None] = [None] * width
    for t, v in zip(times, values):
        if not _is_num(t) or not _is_num(v) or t < -span:
            continue
        i = min(width - 1, int((t + span) / span * width))
        cols[i] = v
    last = None
    for i, v in enumerate(cols):          # a value holds until the next sample
        if v is None:
            cols[i] = last
        else:
            last = v
    top = max((v for v in cols if v is not None), default=0.0)
    label_max, label_min = fmt(top), fmt(0)
    lw = max(len(label_max), len(label_min))
    levels = height * 8
    rows = []
    for r in range(height - 1, -1, -1):
        line = []
        for v in cols:
            if v is None or top <= 0:
                line.append(" ")
                continue
            level = int(round(v / top * levels))
            fill = level - r * 8
            line.append("█" if fill >= 8 else SPARK[fill - 1] if fill > 0 else " ")
        label = label_max if r == height - 1 else label_min if r == 0 else ""
        rows.append(f"{label:>{lw}} ┤{''.join(line)}")
    axis = f"-{span:g}s"
    rows.append(" " * lw + " └" + "─" * width)
    rows.append(" " * (lw + 2) + axis + "now".rjust(width - len(axis)))
    return rows


def endpoint(row: dict) -> str:
    """A connection's endpoints: the label (e.g. a forwarded target) or peer and inner ports."""
    if row.get("label"):
        return str(row["label"])
    return f"{row.get('peer', '?')} {row.get('local_port', '?')}→{row.get('remote_port', '?')}"


def limit_name(limit: Any) -> str:
    return LIMIT_NAMES.get(limit, str(limit)) if limit else "-"


# ------------------------------------------------------------------ the view
class Dashboard:
    """View state and rendering of snapshots (see the module docstring)."""

    def __init__(self, *, attached: bool = False) -> None:
        self.sort = 0                    # index into SORTS
        self.selected: int | None = None  # connection id
        self.detail = False
        self.hidden = False
        self.quit = False                # attached view: q leaves
        self.attached = attached
        self._order: list[int] = []      # connection ids as last rendered

    # ---- keys
    def handle_key(self, key: str) -> None:
        """``q`` hides (attached: quits), ``s`` cycles the sort, up/down select, enter toggles details."""
        if key == "q":
            if self.attached:
                self.quit = True
            else:
                self.hidden = not self.hidden
            return
        if self.hidden:
            return
        if key == "s":
            self.sort = (self.sort + 1) % len(SORTS)
        elif key in (KEY_UP, KEY_DOWN):
            if not self._order:
                return
            if self.selected not in self._order:
                self.selected = self._order[0 if key == KEY_DOWN else -1]
            else:
                i = self._order.index(self.selected) + (1 if key == KEY_DOWN else -1)
                self.selected = self._order[max(0, min(len(self._order) - 1, i))]
        elif key == KEY_ENTER:
            if self.detail:
                self.detail = False
            elif self._order:
                if self.selected not in self._order:
                    self.selected = self._order[0]
                self.detail = True
        elif key == KEY_ESC:
            self.detail = False

    @property
    def sort_name(self) -> str:
        return SORTS[self.sort]

    def sorted_rows(self, snap: dict) -> list[dict]:
        rows = connection_rows(snap)
        key = self.sort_name

        def k(r: dict) -> Any:
            if key == "id":
                return r.get("id") or 0
            if key == "up":
                return -(r.get("up_bps") or 0)
            if key == "down":
                return -(r.get("down_bps") or 0)
            if key == "rtt":
                return -(r.get("srtt") or 0)
            if key == "retrans":
                return -(r.get("retrans_pct") or 0)
            return -(r.get("age") or 0)

        return sorted(rows, key=lambda r: (not r.get("open", True), k(r), r.get("id") or 0))

    # ---- rendering
    def render(self, snap: dict) -> RenderableType:
        rows = self.sorted_rows(snap)
        self._order = [r.get("id") for r in rows]
        if self.selected is not None and self.selected not in self._order:
            self.selected = None
            self.detail = False
        if self.detail and self.selected is not None:
            row = next(r for r in rows if r.get("id") == self.selected)
            return Group(self.header(snap), self.details(snap, row), self.footer())
        return Group(self.header(snap), self.table(snap, rows), self.footer())

    def header(self, snap: dict) -> RenderableType:
        inst = snap.get("instance") or {}
        path = snap.get("path") or {}
        tot = snap.get("totals") or {}
        tr = snap.get("transport") or {}
        peers = snap.get("peers") or []
        title = f"tou {inst.get('command') or ''}".rstrip()
        if inst.get("name"):
            title += f" '{inst['name']}'"
        title += f"  pid {inst.get('pid')}"
        grid = Table.grid(padding=(0, 2))
        grid.add_column()
        grid.add_column()
        if len(peers) == 1:
            p = peers[0]
            who = p.get("fingerprint") or p.get("identity") or ("cleartext, no key" if tr.get("name") == "cleartext"
                                                                  else "-")
            if p.get("fingerprint") and p.get("key_name"):
                who += f" ({p['key_name']})"
            peer_line = f"{p.get('address')}  key {who}"
        elif peers:
            peer_line = f"{len(peers)} peers"
        else:
            peer_line = "no peer yet"
        grid.add_row(Text("peer", style="bold"), Text(peer_line))
        grid.add_row(Text("path", style="bold"), Text(
            f"{tr.get('name') or '-'}  up {fmt_age(snap.get('uptime'))}  rtt {fmt_ms(path.get('rtt'))}"
            f" (min {fmt_ms(path.get('min_rtt'))})  mtu {path.get('mtu') or '-'}  mss {path.get('mss') or '-'}"
            f"  overhead {fmt_pct(path.get('overhead_pct'))}  loss {fmt_pct(path.get('loss_pct'))}"
            f" (total {fmt_pct(path.get('loss_pct_total'))})  drops {sum((snap.get('drops') or {}).values())}"))
        hist = (snap.get("history") or {}).get("totals") or {}
        width = 30
        grid.add_row(Text("up", style="bold green"), Text(
            f"{fmt_rate(tot.get('up_bps')):>12}  {sparkline(hist.get('up_bps') or [tot.get('up_bps')], width)}"
            f"  {fmt_bytes(tot.get('bytes_up'))} total"))
        grid.add_row(Text("down", style="bold cyan"), Text(
            f"{fmt_rate(tot.get('down_bps')):>12}  {sparkline(hist.get('down_bps') or [tot.get('down_bps')], width)}"
            f"  {fmt_bytes(tot.get('bytes_down'))} total"))
        return Panel(grid, title=title, title_align="left", expand=True)

    def table(self, snap: dict, rows: list[dict]) -> RenderableType:
        t = Table(expand=True, box=None, header_style="bold", pad_edge=False, show_footer=True)
        tot = snap.get("totals") or {}
        n = tot.get("connections", sum(1 for r in rows if r.get("open", True)))
        cols = [
            ("ID", "right", "Σ"), ("Endpoint", "left", f"{n} open"), ("State", "left", ""),
            ("Age", "right", fmt_age(snap.get("uptime"))), ("RTT", "right", fmt_ms((snap.get("path") or {}).get("rtt"))),
            ("Cwnd", "right", fmt_bytes(tot.get("cwnd"))), ("In flight", "right", fmt_bytes(tot.get("in_flight"))),
            ("Retr", "right", fmt_pct(tot.get("retrans_pct"))), ("Up", "right", fmt_rate(tot.get("up_bps"))),
            ("Down", "right", fmt_rate(tot.get("down_bps"))), ("Limit", "left", ""),
        ]
        sort_col = {"id": "ID", "up": "Up", "down": "Down", "rtt": "RTT", "retrans": "Retr", "age": "Age"}[
            self.sort_name]
        for name, justify, foot in cols:
            header = name + (" ▾" if name == sort_col else "")
            t.add_column(header, justify=justify, footer=foot, no_wrap=True,
                         overflow="ellipsis", ratio=3 if name == "Endpoint" else None)
        for r in rows:
            style = "reverse" if r.get("id") == self.selected else "dim" if not r.get("open", True) else None
            t.add_row(
                str(r.get("id")), endpoint(r), str(r.get("state") or "-"), fmt_age(r.get("age")),
                fmt_ms(r.get("srtt")), fmt_bytes(r.get("cwnd")), fmt_bytes(r.get("in_flight")),
                fmt_pct(r.get("retrans_pct")), fmt_rate(r.get("up_bps")), fmt_rate(r.get("down_bps")),
                limit_name(r.get("limited_by")), style=style)
        if not rows:
            t.add_row("", "no connections", *[""] * 9)
        return t

    def details(self, snap: dict, row: dict) -> RenderableType:
        hist = ((snap.get("history") or {}).get("connections") or {}).get(str(row.get("id"))) or {}
        info = Table.grid(padding=(0, 2))
        for _ in range(4):
            info.add_column()
        pairs = [
            ("state", row.get("state")), ("congestion control", row.get("congestion_control")),
            ("srtt", fmt_ms(row.get("srtt"))), ("rttvar", fmt_ms(row.get("rttvar"))),
            ("min rtt", fmt_ms(row.get("min_rtt"))), ("rto", fmt_ms(row.get("rto"))),
            ("cwnd", fmt_bytes(row.get("cwnd"))), ("ssthresh", fmt_bytes(row.get("ssthresh"))),
            ("in flight", fmt_bytes(row.get("in_flight"))), ("mss", row.get("mss")),
            ("peer window", fmt_bytes(row.get("snd_wnd"))), ("our window", fmt_bytes(row.get("rcv_wnd"))),
            ("sent", fmt_bytes(row.get("bytes_sent"))), ("acked", fmt_bytes(row.get("bytes_acked"))),
            ("received", fmt_bytes(row.get("bytes_received"))), ("retransmitted", fmt_bytes(row.get("bytes_retrans"))),
            ("segments out", row.get("segs_out")), ("retransmitted segs", row.get("retransmitted_segments")),
            ("RTO expiries", row.get("rto_count")), ("SACK recoveries", row.get("sack_recoveries")),
            ("pacing rate", fmt_rate(row.get("pacing_rate_bps"))),
            ("delivery rate", fmt_rate(row.get("delivery_rate_bps"))),
            ("up", fmt_rate(row.get("up_bps"))), ("down", fmt_rate(row.get("down_bps"))),
            ("limited by", limit_name(row.get("limited_by"))), ("age", fmt_age(row.get("age"))),
        ]
        for i in range(0, len(pairs), 2):
            (a, av), (b, bv) = pairs[i], pairs[i + 1]
            info.add_row(Text(a, style="bold"), str(av if av is not None else "-"),
                         Text(b, style="bold"), str(bv if bv is not None else "-"))
        times = hist.get("t") or []
        rtt_plot = plot(times, hist.get("srtt") or [], width=60, height=6, fmt=fmt_ms)
        cwnd_plot = plot(times, hist.get("cwnd") or [], width=60, height=6, fmt=fmt_bytes)
        body = Group(info, Text(""), Text("RTT, last minute", style="bold"), Text("\n".join(rtt_plot)),
                     Text("cwnd, last minute", style="bold"), Text("\n".join(cwnd_plot)))
        return Panel(body, title=f"connection {row.get('id')}: {endpoint(row)}", title_align="left")

    def footer(self) -> RenderableType:
        q = "q quit" if self.attached else "q hide"
        back = "enter/esc back" if self.detail else "enter details"
        return Text(f"{q}  s sort ({self.sort_name})  ↑↓ select  {back}", style="dim")


# ------------------------------------------------------------------ drivers
class LiveView:
    """A :class:`Dashboard` kept on a terminal with ``rich.live.Live``, hidden and shown on ``q``."""

    def __init__(self, dashboard: Dashboard, file: TextIO, *, console: Console | None = None) -> None:
        self.dashboard = dashboard
        self.console = console or Console(file=file, stderr=True)
        self.live: Live | None = None
        self.snap: dict | None = None

    def update(self, snap: dict | None = None) -> None:
        if snap is not None:
            self.snap = snap
        if self.snap is None:
            return
        if self.dashboard.hidden:
            if self.live is not None:
                self.live.transient = True
                self.live.stop()
                self.live = None
            return
        renderable = self.dashboard.render(self.snap)
        if self.live is None:
            self.live = Live(renderable, console=self.console, auto_refresh=False, transient=False,
                             redirect_stdout=False, redirect_stderr=False, vertical_overflow="crop")
            self.live.start(refresh=True)
        else:
            self.live.update(renderable, refresh=True)

    def stop(self) -> None:
        """Leave the last frame on screen."""
        if self.live is not None:
            self.live.stop()
            self.live = None


class IntervalPrinter:
    """iperf3-style lines: one per connection per interval, plus ``[SUM]`` when there are several."""

    HEADER = (f"{'[ ID]':<6}{'Interval':>16}       {'Up':>9} {'Bitrate':>13}   {'Down':>9} {'Bitrate':>13}"
              f" {'Retr':>5} {'Cwnd':>9} {'RTT':>9}  Limit")

    def __init__(self, write: Callable[[str], None]) -> None:
        self.write = write
        self._header_done = False

    def lines(self, snap: dict) -> list[str]:
        end = snap.get("uptime") or 0.0
        start = max(0.0, end - (snap.get("interval") or 0.0))
        out = []
        if not self._header_done:
            out.append(self.HEADER)
            self._header_done = True
        rows = [r for r in connection_rows(snap) if r.get("open", True) or r.get("interval_bytes_up")
                or r.get("interval_bytes_down")]
        for r in sorted(rows, key=lambda r: r.get("id") or 0):
            out.append(self._line(f"[{r.get('id'):>3}]", start, end, r.get("interval_bytes_up"), r.get("up_bps"),
                                  r.get("interval_bytes_down"), r.get("down_bps"),
                                  r.get("interval_retransmitted_segments"), r.get("cwnd"), r.get("srtt"),
                                  limit_name(r.get("limited_by"))))
        if len(rows) > 1:
            t = snap.get("totals") or {}
            out.append(self._line("[SUM]", start, end, t.get("interval_bytes_up"), t.get("up_bps"),
                                  t.get("interval_bytes_down"), t.get("down_bps"),
                                  t.get("interval_retransmitted_segments"), t.get("cwnd"),
                                  (snap.get("path") or {}).get("rtt"), ""))
        return out

    @staticmethod
    def _line(tag: str, start: float, end: float, up: Any, up_bps: Any, down: Any, down_bps: Any,
              retr: Any, cwnd: Any, rtt: Any, limit: str) -> str:
        return (f"{tag:<6}{start:>7.2f}-{end:<7.2f} sec  {fmt_bytes(up or 0):>9} {fmt_rate(up_bps or 0):>13}   "
                f"{fmt_bytes(down or 0):>9} {fmt_rate(down_bps or 0):>13} {retr or 0:>5} {fmt_bytes(cwnd):>9}"
                f" {fmt_ms(rtt):>9}  {limit}").rstrip()

    def update(self, snap: dict) -> None:
        for line in self.lines(snap):
            self.write(line)


# ------------------------------------------------------------------ keys
class KeyReader:
    """Single keys from a terminal in cbreak mode (no echo, no line buffering; Ctrl-C still works).

    The terminal's settings are restored by :meth:`close` (and at exit).
    """

    def __init__(self, fd: int) -> None:
        import termios
        import tty

        self.fd = fd
        self._saved = termios.tcgetattr(fd)
        tty.setcbreak(fd, termios.TCSANOW)
        self._pending = b""
        atexit.register(self.close)

    @classmethod
    def open_tty(cls) -> "KeyReader | None":
        """A reader on the controlling terminal, or None when there is none."""
        try:
            fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError:
            return None
        try:
            reader = cls(fd)
        except Exception:
            os.close(fd)
            return None
        reader._owned = True
        return reader

    def fileno(self) -> int:
        return self.fd

    def read(self) -> list[str]:
        """Keys available now (non-blocking fd) or from one blocking read."""
        try:
            data = os.read(self.fd, 64)
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:
            return []
        return parse_keys(data)

    def close(self) -> None:
        if self._saved is None:
            return
        import termios

        try:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
        except Exception:
            pass
        self._saved = None
        if getattr(self, "_owned", False):
            try:
                os.close(self.fd)
            except OSError:
                pass
        atexit.unregister(self.close)


_ESCAPES = {b"\x1b[A": KEY_UP, b"\x1bOA": KEY_UP, b"\x1b[B": KEY_DOWN, b"\x1bOB": KEY_DOWN}


def parse_keys(data: bytes) -> list[str]:
    """Key names in ``data``: ``q``, ``s``, ``up``, ``down``, ``enter``, ``esc`` (others dropped)."""
    keys = []
    i = 0
    while i < len(data):
        for seq, name in _ESCAPES.items():
            if data.startswith(seq, i):
                keys.append(name)
                i += len(seq)
                break
        else:
            c = data[i:i + 1]
            i += 1
            if c == b"\x1b":
                if data[i:i + 1] in (b"[", b"O"):   # another escape sequence: skip it
                    i += 1
                    while i < len(data) and not 0x40 <= data[i] <= 0x7E:
                        i += 1
                    i += 1
                else:
                    keys.append(KEY_ESC)
            elif c in (b"\r", b"\n"):
                keys.append(KEY_ENTER)
            elif c in (b"k",):
                keys.append(KEY_UP)
            elif c in (b"j",):
                keys.append(KEY_DOWN)
            elif c in (b"q", b"Q"):
                keys.append("q")
            elif c in (b"s", b"S"):
                keys.append("s")
            elif c in (b"\x7f", b"\x08"):
                keys.append(KEY_ESC)
    return keys


__all__ = ["Dashboard", "LiveView", "IntervalPrinter", "KeyReader", "parse_keys", "fmt_rate", "fmt_bytes",
           "fmt_ms", "fmt_age", "fmt_pct", "sparkline", "plot", "SORTS"]
