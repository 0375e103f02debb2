"""``tou stats``: attach to a running tou; and the statistics options of the tunnel commands.

Two halves:

* :func:`observe_options` and :class:`Observer` give ``connect``, ``listen`` (and
  ``forward``) ``--stats``, ``--stats-json FILE``, ``--stats-interval``,
  ``--name`` and ``--pcap FILE``, and run, beside the tunnel, the sampler
  (:class:`toucli.stats.Collector`), the control socket (:mod:`toucli.control`,
  always on), the dashboard or interval lines (:mod:`toucli.dashboard`), the
  JSON lines and the packet capture (:mod:`toucli.pcap`).
* the ``tou stats [NAME|PID|PATH]`` command: the same dashboard fed from a
  control socket, ``--once --json`` for scripts, ``--list`` for what runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TextIO

import click

from toucli import __version__
from toucli.busypoll import of_loop
from toucli.control import ControlClient, ControlError, ControlServer, check_name, find, list_instances
from toucli.stats import Collector

# toucli.dashboard (and rich with it) is imported only when something is shown.

DEFAULT_INTERVAL = 1.0
TEXT_WIDTH = 140            # tou stats --once into a file or pipe: wide enough for every column
EXIT_OK, EXIT_FAILURE = 0, 1


# ------------------------------------------------------------------ options
def _opt(*decls: str, **kw: Any) -> Callable:
    """A click option that also reads ``TOU_<LONG_NAME>`` (like the other tunnel options)."""
    from toucli.config import env_name

    long = next(d for d in decls if d.startswith("--"))
    kw.setdefault("envvar", env_name(long))
    kw.setdefault("show_envvar", True)
    return click.option(*decls, **kw)


def observe_options(fn: Callable) -> Callable:
    """``--stats``, ``--stats-json``, ``--stats-interval``, ``--name``, ``--pcap`` (each also ``TOU_*``)."""
    decorators = [
        _opt("--stats", is_flag=True,
             help="Show live statistics on stderr: a dashboard on a terminal, interval lines otherwise."),
        _opt("--stats-json", metavar="FILE",
             help="Append one JSON statistics object per interval to FILE ('-' for stderr; docs/STATS.md)."),
        _opt("--stats-interval", type=click.FloatRange(0.05), default=DEFAULT_INTERVAL, show_default=True,
             metavar="SECS",
             help="Sampling interval of --stats, --stats-json and the control socket."),
        _opt("--name", metavar="NAME",
             help="Name of this instance's control socket, for 'tou stats NAME' (default: the PID)."),
        _opt("--pcap", metavar="FILE", type=click.Path(dir_okay=False),
             help="Write the decrypted inner TCP segments to FILE (pcap, raw IP; Wireshark, tshark)."),
    ]
    for d in reversed(decorators):
        fn = d(fn)
    return fn


@dataclass
class ObserveOptions:
    stats: bool = False
    stats_json: str | None = None
    stats_interval: float = DEFAULT_INTERVAL
    name: str | None = None
    pcap: str | None = None

    @classmethod
    def from_params(cls, p: dict) -> "ObserveOptions":
        """From a command's resolved parameters; bad combinations are usage errors (exit 2)."""
        o = cls(stats=bool(p.get("stats")), stats_json=p.get("stats_json") or None,
                stats_interval=p.get("stats_interval") or DEFAULT_INTERVAL, name=p.get("name") or None,
                pcap=p.get("pcap") or None)
        if o.name is not None:
            try:
                check_name(o.name)
            except ControlError as exc:
                raise click.BadParameter(str(exc), param_hint="--name") from None
        if o.stats and o.stats_json == "-":
            raise click.UsageError("--stats and --stats-json - both write to stderr; give --stats-json a FILE")
        return o


# ------------------------------------------------------------------ observer
class Observer:
    """Statistics and capture beside a running tunnel (see the module docstring).

    Use: ``transport = obs.tap(transport, usock)`` before making the tunnel, then
    ``await obs.start(tunnel)``; ``obs.stop()`` when done (idempotent, synchronous).
    ``stdin_is_payload``: keys are read from the terminal only when stdin is not
    that terminal carrying the payload.
    """

    def __init__(self, opts: ObserveOptions, command: str, *, stdin_is_payload: bool = True,
                 warn: Callable[[str], None] | None = None, stderr: TextIO | None = None) -> None:
        self.opts = opts
        self.command = command
        self.stdin_is_payload = stdin_is_payload
        self.warn = warn or (lambda m: click.echo(f"tou: warning: {m}", err=True))
        self.stderr = stderr or sys.stderr
        self.collector = Collector(command=command, name=opts.name)
        self.control: ControlServer | None = None
        self.pcap = None
        self.view: Any = None          # dashboard.LiveView
        self.printer: Any = None       # dashboard.IntervalPrinter
        self.keys: Any = None          # dashboard.KeyReader
        self._json: TextIO | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = False

    def tap(self, transport: Any, usock: Any) -> Any:
        """``transport``, wrapped to copy segments to the ``--pcap`` file when one was asked for."""
        if not self.opts.pcap:
            return transport
        from toucli.pcap import PcapWriter, TapTransport
        from toucli.tunnel import TunnelError

        try:
            self.pcap = PcapWriter(self.opts.pcap, local=usock.local_address)
        except OSError as exc:
            raise TunnelError(f"--pcap {self.opts.pcap}: {exc.strerror}") from None
        return TapTransport(transport, self.pcap)

    def add(self, tunnel: Any) -> None:
        self.collector.add(tunnel)

    async def start(self, *tunnels: Any) -> None:
        from toucli.tunnel import TunnelError

        loop = self._loop = asyncio.get_running_loop()
        for t in tunnels:
            self.collector.add(t)
        c = self.collector
        c.started = loop.time()
        c.started_wall = time.time()
        c.busy_poll = of_loop(loop)
        self.control = ControlServer(self._handle, name=self.opts.name)
        try:
            path = await self.control.start()
            c.control = str(path)
        except ControlError as exc:
            self.control = None
            if self.opts.name:
                raise TunnelError(f"control socket: {exc}") from None
            self.warn(f"no control socket: {exc}")
        if self.opts.stats_json:
            if self.opts.stats_json == "-":
                self._json = self.stderr
            else:
                try:
                    self._json = open(self.opts.stats_json, "a", buffering=1)
                except OSError as exc:
                    raise TunnelError(f"--stats-json {self.opts.stats_json}: {exc.strerror}") from None
        if self.opts.stats:
            from toucli.dashboard import Dashboard, IntervalPrinter, KeyReader, LiveView

            if self.stderr.isatty():
                self.view = LiveView(Dashboard(), self.stderr)
                if not (self.stdin_is_payload and os.isatty(0)):
                    self.keys = KeyReader.open_tty()
                    if self.keys is not None:
                        loop.add_reader(self.keys.fileno(), self._on_keys)
            else:
                self.printer = IntervalPrinter(self._line)
        c.sample(loop.time(), time.time())          # the baseline of the first interval
        self._task = asyncio.ensure_future(self._run())

    def _line(self, text: str) -> None:
        try:
            self.stderr.write(text + "\n")
            self.stderr.flush()
        except (OSError, ValueError):
            pass

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.opts.stats_interval
        next_t = loop.time() + interval
        while True:
            await asyncio.sleep(max(0.0, next_t - loop.time()))
            next_t += interval
            if next_t < loop.time():
                next_t = loop.time() + interval
            self._tick(loop.time())

    def _tick(self, now: float) -> None:
        snap = self.collector.sample(now, time.time())
        try:
            if self.view is not None:
                self.view.update(self.collector.snapshot(history=True))
            if self.printer is not None:
                self.printer.update(snap)
            if self._json is not None:
                self._json.write(json.dumps(snap, separators=(",", ":")) + "\n")
                self._json.flush()
        except (OSError, ValueError):
            pass
        if self.pcap is not None:
            self.pcap.flush()

    def _on_keys(self) -> None:
        if self.keys is None or self.view is None:
            return
        for k in self.keys.read():
            self.view.dashboard.handle_key(k)
        self.view.update(self.collector.snapshot(history=True))

    def _handle(self, request: dict) -> dict:
        what = request.get("get", "snapshot")
        c = self.collector
        if what == "snapshot":
            snap = c.snapshot(history=bool(request.get("history")))
            if snap is None and self._loop is not None:
                c.sample(self._loop.time(), time.time())
                snap = c.snapshot(history=bool(request.get("history")))
            return snap or {"error": "no snapshot yet"}
        if what == "info":
            snap = c.latest or {}
            return {
                "version": snap.get("version"), "pid": c.pid, "name": c.name, "command": c.command,
                "tou_version": __version__, "uptime": (self._loop.time() - c.started) if self._loop else None,
                "peers": [p.get("address") for p in snap.get("peers") or []],
                "connections": (snap.get("totals") or {}).get("connections", 0),
            }
        return {"error": f"unknown request {what!r} (known: snapshot, info)"}

    def stop(self) -> None:
        """Final sample and outputs, then close everything (the tunnel may already be closed)."""
        if self._stopped:
            return
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                self._tick(loop.time())
            except Exception:
                pass
        if self.keys is not None:
            try:
                if loop is not None:
                    loop.remove_reader(self.keys.fileno())
            except Exception:
                pass
            self.keys.close()
            self.keys = None
        if self.view is not None:
            self.view.stop()
        if self.control is not None:
            self.control.close()
        if self._json is not None and self._json is not self.stderr:
            self._json.close()
        self._json = None
        if self.pcap is not None:
            self.pcap.close()


# ------------------------------------------------------------------ tou stats
@click.command("stats")
@click.argument("target", required=False, metavar="[NAME|PID|PATH]")
@click.option("--once", is_flag=True, help="Print one snapshot and exit.")
@click.option("--json", "as_json", is_flag=True,
              help="JSON instead of the dashboard: one object (with --once) or one line per interval.")
@click.option("--list", "list_", is_flag=True, help="List the running tou instances and exit.")
@click.option("--interval", type=click.FloatRange(0.05), default=DEFAULT_INTERVAL, show_default=True,
              metavar="SECS", help="Seconds between updates.")
def stats(target: str | None, once: bool, as_json: bool, list_: bool, interval: float) -> None:
    """Show the live statistics of a running tou (its NAME, PID or control socket PATH).

    Without a target the only running instance is used. Keys in the dashboard:
    q quits, s cycles the sort, up/down select a connection, enter shows its
    details. Exit status: 0, or 1 when no such instance runs.
    """
    try:
        if list_:
            _list(as_json)
            return
        path = find(target)
        code = _attach(path, once=once, as_json=as_json, interval=interval)
    except ControlError as exc:
        click.echo(f"tou: {exc}", err=True)
        raise click.exceptions.Exit(EXIT_FAILURE) from None
    raise click.exceptions.Exit(code)


def _list(as_json: bool) -> None:
    from toucli.dashboard import fmt_age

    found = list_instances()
    if as_json:
        click.echo(json.dumps([dict(i.info, socket=str(i.path)) for i in found], indent=2))
        return
    if not found:
        click.echo("no running tou instances", err=True)
        return
    rows = [("NAME", "PID", "COMMAND", "PEERS", "CONNS", "UPTIME", "SOCKET")]
    for i in found:
        info = i.info
        rows.append((str(info.get("name") or "-"), str(info.get("pid")), str(info.get("command") or "-"),
                     ",".join(info.get("peers") or []) or "-", str(info.get("connections", 0)),
                     fmt_age(info.get("uptime")), str(i.path)))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())


def _attach(path: Path, *, once: bool, as_json: bool, interval: float) -> int:
    from toucli.dashboard import Dashboard, IntervalPrinter

    client = ControlClient(path)
    try:
        if once:
            snap = client.request({"get": "snapshot", "history": not as_json})
            if "error" in snap:
                raise ControlError(f"{path}: {snap['error']}")
            if as_json:
                click.echo(json.dumps(snap, indent=2))
            else:
                from rich.console import Console

                width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else TEXT_WIDTH
                Console(file=sys.stdout, width=width).print(Dashboard(attached=True).render(snap))
            return EXIT_OK
        if as_json or not sys.stdout.isatty():
            printer = IntervalPrinter(lambda line: (click.echo(line), sys.stdout.flush()))
            while True:
                try:
                    snap = client.request({"get": "snapshot"})
                except ControlError:
                    return EXIT_OK          # the instance ended
                if as_json:
                    click.echo(json.dumps(snap, separators=(",", ":")))
                    sys.stdout.flush()
                else:
                    printer.update(snap)
                time.sleep(interval)
        return _attach_live(client, interval)
    except (BrokenPipeError, KeyboardInterrupt):
        return EXIT_OK
    finally:
        client.close()


def _attach_live(client: ControlClient, interval: float) -> int:
    from toucli.dashboard import Dashboard, KeyReader, LiveView

    dash = Dashboard(attached=True)
    view = LiveView(dash, sys.stdout)
    keys = KeyReader.open_tty()
    try:
        while not dash.quit:
            try:
                snap = client.request({"get": "snapshot", "history": True})
            except ControlError:
                view.stop()
                click.echo("tou: the instance ended", err=True)
                return EXIT_OK
            view.update(snap)
            deadline = time.monotonic() + interval
            while not dash.quit:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                if keys is None:
                    time.sleep(left)
                    break
                ready, _, _ = select.select([keys.fileno()], [], [], left)
                if ready:
                    for k in keys.read():
                        dash.handle_key(k)
                    view.update()
        return EXIT_OK
    finally:
        view.stop()
        if keys is not None:
            keys.close()


__all__ = ["stats", "observe_options", "ObserveOptions", "Observer"]

if __name__ == "__main__":   # python -m toucli.commands.stats (before it is registered as a subcommand)
    stats(prog_name="tou stats")
