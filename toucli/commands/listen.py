"""``tou listen [ADDR] PORT``: a netcat-style server on UDP PORT (docs: man/tou-listen.1).

Without ``-k`` it serves one connection with stdin/stdout, then exits with
that connection's status. With ``-k`` it serves any number at once, forever:
each runs the ``-e``/``-c`` program, or without one sends what it receives to
stdout (stdin is not read: there is no sensible way to share it).
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import click

from toucli.commands.connect import (
    PORT, Settings, common_options, finish, make_transport, opt, session, session_options, settings_from,
    summary,
)
from toucli.commands.stats import ObserveOptions, Observer, observe_options
from toucli.tunnel import (
    EXIT_FAILURE, EXIT_OK, Channel, FdStream, Signals, Transport, Tunnel, TunnelError, engine_config,
    format_address, work_or_signal,
)
from toucli.session import REASON_UNKNOWN_CLIENT, AuthenticationFailed
from toucli.udp import UdpSocket


@click.command("listen")
@click.argument("args", nargs=-1, metavar="[ADDR] PORT")
@session_options
@opt("-k", "--keep-open", is_flag=True, help="Serve many connections at once and keep listening.")
@opt("-m", "--max-conns", type=click.IntRange(1), default=100, show_default=True,
     help="With -k: connections served at once; more are refused.")
@observe_options
@common_options
@click.pass_context
def listen(ctx: click.Context, args: tuple[str, ...], **_: Any) -> None:
    """Listen on UDP PORT (on ADDR, default all addresses) for tou connections.

    Copies the connection to stdout and stdin to the connection; end of stdin
    sends FIN, and tou exits when both directions have ended. Exit status: 0
    after a clean close, 1 network or peer failure, 2 usage error, 3
    authentication failure, 130 interrupted; with -k it runs until stopped
    (SIGTERM: exit 0).
    """
    if not 1 <= len(args) <= 2:
        raise click.UsageError("expected [ADDR] PORT")
    addr = args[0] if len(args) == 2 else None
    try:
        port = PORT.convert(args[-1], None, ctx)
    except click.BadParameter as exc:
        raise click.BadParameter(exc.message, ctx, param_hint="PORT") from None
    s = settings_from(ctx)
    transport = make_transport(s, server=True)
    keep = bool(ctx.params.get("keep_open"))
    max_conns = ctx.params.get("max_conns") or 100
    code = s.run(lambda sig: _listen(sig, s, transport, addr, port, keep, max_conns))
    finish(code)


def _bind(s: Settings, addr: str | None, port: int) -> UdpSocket:
    family = s.family
    try:
        if addr is None:
            if family == socket.AF_INET:
                return UdpSocket.bind("0.0.0.0", port, socket.AF_INET)
            try:
                return UdpSocket.bind("::", port, socket.AF_INET6)
            except OSError:
                if family == socket.AF_INET6:
                    raise
                return UdpSocket.bind("0.0.0.0", port, socket.AF_INET)
        infos = socket.getaddrinfo(addr, port, family, socket.SOCK_DGRAM, 0, socket.AI_PASSIVE)
        fam, _, _, _, sa = infos[0]
        return UdpSocket.bind(sa[0], port, fam)
    except socket.gaierror as exc:
        raise TunnelError(f"cannot resolve {addr}: {exc.strerror}") from None
    except OSError as exc:
        where = f"{addr or '*'}:{port}"
        raise TunnelError(f"cannot listen on UDP {where}: {exc.strerror}") from None


async def _listen(sig: Signals, s: Settings, transport: Transport, addr: str | None, port: int,
                  keep: bool, max_conns: int) -> int:
    usock = _bind(s, addr, port)
    family = usock.family
    loop = asyncio.get_running_loop()
    first: asyncio.Future[Channel] = loop.create_future()
    active: set[asyncio.Task] = set()
    stdout = FdStream(1)

    def on_accept(ch: Channel) -> None:
        if not keep:
            if first.done():
                ch.abort("busy")
                return
            tunnel.unlisten()
            first.set_result(ch)
            return
        if len(active) >= max_conns:
            s.info(f"refusing {ch.describe()}: {max_conns} connections already (-m)")
            ch.abort("too many connections")
            return
        task = asyncio.ensure_future(_serve_one(s, ch, stdout))
        active.add(task)
        task.add_done_callback(active.discard)

    def on_event(ev: object) -> None:
        # Issue 3: the server names every rejected peer (address and key) and keeps serving.
        if isinstance(ev, AuthenticationFailed):
            key = f" (key {ev.fingerprint})" if ev.fingerprint and ev.reason == REASON_UNKNOWN_CLIENT else ""
            s.info(f"rejected {format_address(ev.addr)}{key}: {ev.reason}", level=0)

    obs = Observer(s.observe or ObserveOptions(), "listen",
                   stdin_is_payload=not keep and s.argv is None and not s.recv_only, warn=s.warn)
    tunnel = Tunnel(usock, obs.tap(transport, usock),
                    engine_config(family, transport.overhead, keepalive=s.keepalive, cc=s.cc, mtu=s.mtu),
                    on_accept=on_accept, on_event=on_event, pmtu=s.mtu is None)
    tunnel.listen()
    s.info(f"listening on UDP {format_address(usock.local_address())} ({transport.name})")
    try:
        await obs.start(tunnel)
        if keep:
            code = await sig.stopping
            for t in list(active):
                t.cancel()
            await tunnel.close_all()
            return code
        return await work_or_signal(_serve_single(s, first, stdout), sig, tunnel)
    finally:
        stdout.close()
        tunnel.close()
        obs.stop()


async def _serve_single(s: Settings, first: asyncio.Future[Channel], stdout: FdStream) -> int:
    ch = await first
    s.info(f"connection from {ch.describe()}")
    stdin = FdStream(0)
    try:
        await session(s, ch, stdin, stdout)
    finally:
        stdin.close()
        s.info(summary(ch))
        ch.tunnel.flush()
    return EXIT_OK


async def _serve_one(s: Settings, ch: Channel, stdout: FdStream) -> None:
    """One connection of ``-k``: failures are reported and end only this connection."""
    s.info(f"connection from {ch.describe()}")
    try:
        await session(s, ch, None, stdout, close_sink=False)   # stdout is shared: whole chunks (Pump)
        s.info(f"{ch.describe()}: {summary(ch)}")
    except TunnelError as exc:
        s.warn(str(exc)) if s.verbose else None
    except Exception as exc:   # one connection's local trouble must not end the listener
        s.warn(f"{ch.describe()}: {exc}")


__all__ = ["listen", "EXIT_FAILURE"]
