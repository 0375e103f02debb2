"""``tou forward``: ssh-style port forwarding over a tou tunnel (docs: man/tou-forward.1).

Client: ``tou forward PEER -L [bind:]port:host:hostport -R ... -D [bind:]port``.
Server: ``tou forward --serve [ADDR:]PORT [--permit-open HOST:PORT] [--allow-remote-listen]``.
The logic lives in :mod:`toucli.forward`; this module turns options into it.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from typing import Any, Callable

import click
from click.core import ParameterSource

from toucli.commands.connect import (
    DURATION, Settings, common_options, finish, make_transport, opt, resolve, settings_from,
)
from toucli.commands.listen import _bind as bind_udp
from toucli.commands.stats import ObserveOptions, Observer, observe_options
from toucli.forward import (
    DynamicForward, ForwardClient, ForwardServer, Link, LocalForward, Log, Permits, Refused, RemoteForward,
    SpecError, parse_dynamic, parse_endpoint, parse_local, parse_permit, parse_remote,
)
from toucli.tunnel import (
    PlainTransport, Signals, Transport, Tunnel, TunnelError, engine_config, format_address,
)
from toucli.udp import UdpSocket

DEFAULT_WAIT = 10.0


class SpecType(click.ParamType):
    """A click type from one of the spec parsers (a bad spec is a usage error, exit 2)."""

    def __init__(self, name: str, parse: Callable[[str], Any]) -> None:
        self.name = name
        self.parse = parse

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return self.parse(value)
        except SpecError as exc:
            self.fail(str(exc), param, ctx)


LOCAL = SpecType("[bind:]port:host:hostport", parse_local)
REMOTE = SpecType("[bind:]port:host:hostport", parse_remote)
DYNAMIC = SpecType("[bind:]port", parse_dynamic)


def _permit_rule(text: str) -> str:
    """Check one --permit-open rule; :class:`Permits` takes the text."""
    if text.strip() not in ("any", "none"):
        parse_permit(text)
    return text


PERMIT = SpecType("HOST:PORT", _permit_rule)


@click.command("forward")
@click.argument("peer", required=False, metavar="[PEER]")
@opt("-L", "--local-forward", multiple=True, type=LOCAL, metavar="[BIND:]PORT:HOST:HOSTPORT",
     help="Listen on local PORT; each connection is carried to the server, which connects to HOST:HOSTPORT.")
@opt("-R", "--remote-forward", multiple=True, type=REMOTE, metavar="[BIND:]PORT:HOST:HOSTPORT",
     help="The server listens on PORT (0: it picks one); each connection comes back here to HOST:HOSTPORT.")
@opt("-D", "--dynamic-forward", multiple=True, type=DYNAMIC, metavar="[BIND:]PORT",
     help="A local SOCKS5 proxy on PORT; the server resolves and connects.")
@opt("-g", "--gateway-ports", is_flag=True,
     help="Let other hosts use the local ports (bind all interfaces when no BIND is given).")
@opt("-w", "--wait", type=DURATION, default=DEFAULT_WAIT, show_default=True, metavar="SECS",
     help="How long a connection may wait for the server (and the server for its target).")
@opt("--serve", metavar="[ADDR:]PORT", help="Be the server: listen on UDP PORT for forward clients.")
@opt("--permit-open", multiple=True, type=PERMIT, metavar="HOST:PORT",
     help="Server: targets clients may connect to ('*' for any host or port; 'any', 'none'). Default: any.")
@opt("--allow-remote-listen", is_flag=True, help="Server: let clients listen on this host's ports (-R).")
@opt("--fast-open/--no-fast-open", default=True,
     help="TCP Fast Open inside the tunnel (RFC 7413). Without it every new connection waits a round "
          "trip for the handshake before its request and first bytes go out. Default: on.")
@observe_options
@common_options
@click.pass_context
def forward(ctx: click.Context, peer: str | None, **_: Any) -> None:
    """Forward TCP ports over a tou tunnel, like ssh -L, -R and -D.

    PEER is HOST:PORT of a 'tou forward --serve' server's UDP port ([::1]:PORT
    for IPv6). Local ports listen on loopback unless -g or a BIND address is
    given; every option may repeat. With TCP Fast Open inside the tunnel (the
    default), a new -L or -R connection on a warm session sends its target
    request and first bytes in the SYN, so they reach the target half a round
    trip after the local connect (-D waits one round trip for the server's
    answer, as SOCKS needs it first). Exit status: 0 after SIGTERM, 1 network or peer failure
    (e.g. a port that cannot be bound), 2 usage error, 3 authentication failure,
    130 interrupted.
    """
    s = settings_from(ctx)
    p = ctx.params
    serve = p.get("serve")
    local = tuple(p.get("local_forward") or ())
    remote = tuple(p.get("remote_forward") or ())
    dynamic = tuple(p.get("dynamic_forward") or ())
    wait = p.get("wait") if p.get("wait") is not None else DEFAULT_WAIT
    if serve is not None:
        if peer is not None:
            raise click.UsageError("--serve takes no PEER (clients name this server)")
        if any(_given(ctx, n) for n in ("local_forward", "remote_forward", "dynamic_forward")):
            raise click.UsageError("-L, -R and -D belong to the client, not to --serve")
        try:
            addr, port = parse_endpoint(serve, host_required=False)
            permits = Permits(list(p.get("permit_open") or ()))
        except SpecError as exc:
            raise click.BadParameter(str(exc), ctx, param_hint="'--serve' / '--permit-open'") from None
        transport = make_transport(s, server=True)
        if isinstance(transport, PlainTransport) and permits.any:
            s.warn("--insecure without --permit-open: anyone who can send to this port may connect anywhere "
                   "this host can reach")
        code = s.run(lambda sig: _serve(sig, s, transport, addr, port, permits, bool(p.get("allow_remote_listen")),
                                        wait, p.get("fast_open", True)))
        finish(code)
    if peer is None:
        raise click.UsageError("PEER (HOST:PORT of the tou server) is required, or --serve [ADDR:]PORT")
    if _given(ctx, "permit_open") or _given(ctx, "allow_remote_listen"):
        raise click.UsageError("--permit-open and --allow-remote-listen are server options (--serve)")
    if not (local or remote or dynamic):
        raise click.UsageError("nothing to forward: give -L, -R or -D")
    try:
        host, port = parse_endpoint(peer)
    except SpecError as exc:
        raise click.BadParameter(str(exc), ctx, param_hint="PEER") from None
    transport = make_transport(s, server=False)
    code = s.run(lambda sig: _client(sig, s, transport, host or "", port, local, remote, dynamic, wait,
                                     bool(p.get("gateway_ports")), p.get("fast_open", True)))
    finish(code)


def _given(ctx: click.Context, name: str) -> bool:
    """Set on the command line or in the environment (a shared config file may hold the other role's keys)."""
    return ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


def _log(s: Settings) -> Log:
    return Log(s.verbose, s.quiet, write=lambda line: click.echo(line, err=True))


async def _serve(sig: Signals, s: Settings, transport: Transport, addr: str | None, port: int,
                 permits: Permits, allow_listen: bool, wait: float, fast_open: bool) -> int:
    usock = bind_udp(s, addr, port)
    obs = Observer(s.observe or ObserveOptions(), "forward", stdin_is_payload=False, warn=s.warn)
    tunnel = Tunnel(usock, obs.tap(transport, usock),
                    engine_config(usock.family, transport.overhead, keepalive=s.keepalive, cc=s.cc,
                                  mtu=s.mtu, fast_open=fast_open), pmtu=s.mtu is None)
    log = _log(s)
    server = ForwardServer(tunnel, permits, log, allow_listen=allow_listen, dial_timeout=wait)
    log.info(f"serving forwards on UDP {format_address(usock.local_address())} ({transport.name}); "
             f"permit-open: {permits.describe()}; remote listen: {'allowed' if allow_listen else 'not allowed'}")
    try:
        await obs.start(tunnel)
        return await sig.stopping
    finally:
        for t in list(server.tasks):
            t.cancel()
        await asyncio.gather(*server.tasks, return_exceptions=True)
        await tunnel.close_all()
        tunnel.close()
        obs.stop()


async def _client(sig: Signals, s: Settings, transport: Transport, host: str, port: int,
                  local: tuple[LocalForward, ...], remote: tuple[RemoteForward, ...],
                  dynamic: tuple[DynamicForward, ...], wait: float, gateway: bool, fast_open: bool) -> int:
    family, addr = resolve(host, port, s.family)
    try:
        usock = UdpSocket.bind("::" if family == socket.AF_INET6 else "0.0.0.0", 0, family)
        usock.connect(addr)
    except OSError as exc:
        raise TunnelError(f"cannot open a UDP socket to {format_address(addr)}: {exc.strerror}") from None
    obs = Observer(s.observe or ObserveOptions(), "forward", stdin_is_payload=False, warn=s.warn)
    tunnel = Tunnel(usock, obs.tap(transport, usock),
                    engine_config(family, transport.overhead, keepalive=s.keepalive, cc=s.cc, mtu=s.mtu,
                                  fast_open=fast_open), pmtu=s.mtu is None)
    log = _log(s)
    link = Link(tunnel, addr, log, secure=not isinstance(transport, PlainTransport))
    client = ForwardClient(tunnel, link, log, wait=wait, gateway=gateway)
    try:
        for spec in (*local, *dynamic):
            client.listen_local(spec)          # a failed bind is fatal (exit 1), before any traffic
        await obs.start(tunnel)
        link.start()
        if link.secure:
            await _first_session(link, tunnel, wait)
        for spec in remote:
            try:
                await client.register(spec)
            except Refused as exc:
                raise TunnelError(f"-R {spec.text}: {exc.reason or exc}") from None
            except TunnelError as exc:
                raise TunnelError(f"-R {spec.text}: {exc}") from None
        log.info(f"forwarding via {format_address(addr)} ({transport.name})")
        done, _ = await asyncio.wait({sig.stopping, link.fatal}, return_when=asyncio.FIRST_COMPLETED)
        if link.fatal in done:
            link.fatal.result()
        return sig.stopping.result()
    finally:
        link.close()
        await client.close()
        await tunnel.close_all()
        tunnel.close()
        obs.stop()


async def _first_session(link: Link, tunnel: Tunnel, wait: float) -> None:
    """Startup: the secure session must come up within ``wait`` s (auth failure: exit 3).

    A refused first datagram (ICMP port unreachable) is not final: the handshake is
    retransmitted, so a server started at the same moment is still found.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    tunnel.udp_error = None
    while not link.up.is_set():
        if link.fatal.done():
            link.fatal.result()
        if loop.time() >= deadline:
            err = tunnel.udp_error     # the handshake is retransmitted: a server may start after us
            if err is not None and err.errno == errno.ECONNREFUSED:
                raise TunnelError(f"connection refused: nothing listens on UDP {link.where} "
                                  f"(waited {wait:g} s)")
            raise TunnelError(f"cannot reach the tou server at {link.where}: no handshake within {wait:g} s")
        try:
            await asyncio.wait_for(link.up.wait(), 0.05)
        except asyncio.TimeoutError:
            pass


__all__ = ["forward"]
