"""``tou connect HOST PORT``: a netcat-style client; stdin to the peer, the peer to stdout.

Also the options and the session logic ``tou listen`` shares (ncat semantics,
docs: man/tou-connect.1): stdin EOF sends FIN and the program keeps reading
until the peer's FIN (half-close); ``-e``/``-c`` put a program's stdio on the
connection; ``-w`` bounds the handshake, ``-i`` idleness, ``-q`` the time
after stdin EOF.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import socket
import sys
from dataclasses import dataclass
from typing import Any, Callable

import click

from toucli import busypoll
from toucli import config as configuration
from toucli.commands.stats import ObserveOptions, Observer, observe_options
from toucli.tunnel import (
    DEFAULT_CC, DEFAULT_KEEPALIVE, EXIT_FAILURE, EXIT_OK, EXIT_USAGE, Channel, FdStream, PlainTransport,
    Signals, Transport, Tunnel, TunnelError, cc_names, engine_config, format_address, run, splice,
    work_or_signal,
)
from toucli.udp import UdpSocket


# ------------------------------------------------------------- option types
class Duration(click.ParamType):
    """Seconds, optionally with a unit: ``1.5``, ``500ms``, ``2s``, ``3m``, ``1h``."""

    name = "secs"
    _UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "": 1.0}

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            seconds = float(value)
        else:
            m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h|)\s*", str(value))
            if not m:
                self.fail(f"{value!r} is not a duration (e.g. 5, 1.5s, 500ms, 2m)", param, ctx)
            seconds = float(m.group(1)) * self._UNITS[m.group(2)]
        if seconds < 0:
            self.fail("must not be negative", param, ctx)
        return seconds


class BusyPoll(click.ParamType):
    """``auto`` (adaptive polling, the default), or a fixed window in microseconds (0: off).

    Converts to ``None`` for ``auto``, else the microseconds (see :func:`toucli.tunnel.run`).
    """

    name = "usec|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | None:
        if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
            return None
        if isinstance(value, bool):
            self.fail(f"{value!r} is not auto or a number of microseconds", param, ctx)
        try:
            usec = int(str(value).strip())
        except ValueError:
            self.fail(f"{value!r} is not auto or a number of microseconds", param, ctx)
        if not 0 <= usec <= MAX_BUSY_POLL_US:
            self.fail(f"{usec} is not in the range 0 to {MAX_BUSY_POLL_US} (microseconds), or auto", param, ctx)
        return usec


DURATION = Duration()
MAX_BUSY_POLL_US = round(busypoll.MAX_WINDOW * 1e6)
PORT = click.IntRange(1, 65535)
MTU = click.IntRange(576, 65535)   # 576: the smallest IPv4 datagram every host must take


def transport_options(fn: Callable) -> Callable:
    """Options of the TCP inside the tunnel: congestion control and path MTU (every tunnel command)."""
    decorators = [
        opt("--cc", type=click.Choice(cc_names(), case_sensitive=False), metavar="NAME",
            help=f"Congestion control: {', '.join(cc_names())} (default {DEFAULT_CC})."),
        opt("--mtu", type=MTU, metavar="N",
            help="Path MTU in bytes (IP packet size): fixes the segment size and turns path-MTU "
                 "discovery off (default: discover, up to the local interface's MTU)."),
        opt("--busy-poll", type=BusyPoll(), default="auto", metavar="USEC|auto",
            help="Poll the sockets before sleeping: lower latency for small messages, paid in CPU. "
                 "auto (the default): as long as the gaps between messages, up to "
                 f"{round(busypoll.ADAPTIVE_WINDOW * 1e6)} µs; USEC: that long after traffic; 0: off."),
    ]
    for d in reversed(decorators):
        fn = d(fn)
    return fn


def opt(*decls: str, **kw: Any) -> Callable:
    """A click option that also reads ``TOU_<LONG_NAME>`` from the environment."""
    long = next(d for d in decls if d.startswith("--")).split("/")[0]     # "--stats/--no-stats": TOU_STATS
    kw.setdefault("envvar", configuration.env_name(long))
    kw.setdefault("show_envvar", True)
    return click.option(*decls, **kw)


def common_options(fn: Callable) -> Callable:
    """Options every tunnel command has: address family, verbosity, keepalive, security, config."""
    decorators = [
        opt("-4", "--ipv4", "ipv4", is_flag=True, help="Use IPv4 only."),
        opt("-6", "--ipv6", "ipv6", is_flag=True, help="Use IPv6 only."),
        opt("-v", "--verbose", count=True, help="More diagnostics on stderr (repeatable)."),
        opt("--quiet", is_flag=True, help="No diagnostics except errors (not even the --insecure warning)."),
        opt("--keepalive", type=DURATION, default=DEFAULT_KEEPALIVE, show_default=True,
            help="Declare a silent peer dead after this long (0 turns keepalive off)."),
        opt("--insecure", is_flag=True,
            help="Cleartext TOU: no encryption, no authentication (a warning is printed)."),
        opt("--peer-key", metavar="KEY", help="Public key the peer must prove (secure channel)."),
        opt("--authorized-keys", metavar="FILE", type=click.Path(dir_okay=False),
            help="File of public keys allowed to connect (secure channel)."),
        opt("--secret-file", metavar="FILE", type=click.Path(dir_okay=False),
            help="Shared secret for the secure channel (or TOU_SECRET)."),
        opt("--key-file", metavar="FILE", type=click.Path(dir_okay=False),
            help="Our private key (secure channel)."),
        click.option("--config", metavar="FILE", type=click.Path(dir_okay=False),
                     help="Config file (default $XDG_CONFIG_HOME/tou/config.toml; env TOU_CONFIG)."),
    ]
    for d in reversed(decorators):
        fn = d(fn)
    return transport_options(fn)


def session_options(fn: Callable) -> Callable:
    """Options of a netcat-style session (connect and listen)."""
    decorators = [
        opt("-e", "--exec", "exec_", metavar="PROG",
            help="Run PROG (split like a shell would, not run by one) with its stdin/stdout on the connection."),
        opt("-c", "--sh-exec", metavar="CMD", help="Run CMD with /bin/sh -c, its stdin/stdout on the connection."),
        opt("-i", "--idle-timeout", type=DURATION, metavar="SECS",
            help="Fail when no data moved in either direction for SECS."),
        opt("-q", "--linger", type=DURATION, metavar="SECS",
            help="After stdin EOF, wait at most SECS for the peer, then quit (exit 0)."),
        opt("-d", "--recv-only", is_flag=True, help="Do not read stdin: send FIN at once, only receive."),
    ]
    for d in reversed(decorators):
        fn = d(fn)
    return fn


# ----------------------------------------------------------------- settings
@dataclass
class Settings:
    family: int
    verbose: int
    quiet: bool
    keepalive: float
    insecure: bool
    exec_: str | None = None
    sh_exec: str | None = None
    idle_timeout: float | None = None
    linger: float | None = None
    recv_only: bool = False
    peer_key: str | None = None
    authorized_keys: str | None = None
    secret_file: str | None = None
    key_file: str | None = None
    observe: ObserveOptions | None = None    # --stats, --stats-json, --name, --pcap
    cc: str | None = None                    # --cc (None: the runtime default, DEFAULT_CC)
    mtu: int | None = None                   # --mtu (None: path-MTU discovery)
    busy_poll: int | None = None             # --busy-poll, microseconds (None: auto, 0: off)

    def info(self, message: str, level: int = 1) -> None:
        if self.verbose >= level and not self.quiet:
            click.echo(f"tou: {message}", err=True)

    def warn(self, message: str) -> None:
        if not self.quiet:
            click.echo(f"tou: warning: {message}", err=True)

    def run(self, main: Callable[[Signals], Any]) -> int:
        """Run the command's coroutine with this command line's runtime settings."""
        return run(main, verbose=self.verbose,
                   busy_poll=None if self.busy_poll is None else self.busy_poll / 1e6)

    @property
    def argv(self) -> list[str] | None:
        if self.exec_:
            return shlex.split(self.exec_)
        if self.sh_exec is not None:
            return ["/bin/sh", "-c", self.sh_exec]
        return None


def settings_from(ctx: click.Context) -> Settings:
    """Resolve config/env/command line and check the combinations (usage errors exit 2)."""
    p = configuration.resolve(ctx, ctx.params.get("config"))
    if p.get("ipv4") and p.get("ipv6"):
        raise click.UsageError("-4 and -6 exclude each other")
    if p.get("exec_") and p.get("sh_exec") is not None:
        raise click.UsageError("-e/--exec and -c/--sh-exec exclude each other")
    family = socket.AF_INET if p.get("ipv4") else socket.AF_INET6 if p.get("ipv6") else socket.AF_UNSPEC
    s = Settings(family=family, verbose=p.get("verbose") or 0, quiet=bool(p.get("quiet")),
                 keepalive=p.get("keepalive", DEFAULT_KEEPALIVE), insecure=bool(p.get("insecure")),
                 exec_=p.get("exec_"), sh_exec=p.get("sh_exec"), idle_timeout=p.get("idle_timeout"),
                 linger=p.get("linger"), recv_only=bool(p.get("recv_only")), peer_key=p.get("peer_key"),
                 authorized_keys=p.get("authorized_keys"), secret_file=p.get("secret_file"),
                 key_file=p.get("key_file"), observe=ObserveOptions.from_params(p),
                 cc=p.get("cc"), mtu=p.get("mtu"), busy_poll=p.get("busy_poll"))
    if s.exec_ is not None:
        try:
            argv = shlex.split(s.exec_)
        except ValueError as exc:
            raise click.UsageError(f"-e/--exec {s.exec_!r}: {exc}") from None
        if not argv or shutil.which(argv[0]) is None:
            raise click.UsageError(f"-e/--exec: program not found: {argv[0] if argv else s.exec_!r}")
    return s


def make_transport(s: Settings, *, server: bool) -> Transport:
    """The transport below TCP: cleartext with --insecure, else the secure channel.

    Without any authentication configured tou refuses to start (exit 2) rather than
    fall back to cleartext silently.
    """
    secure = s.peer_key or s.authorized_keys or s.secret_file or os.environ.get("TOU_SECRET") or s.key_file
    if s.insecure:
        if secure:
            raise click.UsageError("--insecure cannot be combined with keys or secrets")
        s.warn("--insecure: traffic is neither encrypted nor authenticated (cleartext TOU)")
        return PlainTransport()
    if not secure:
        how = ("--authorized-keys FILE (public keys of allowed clients) or a shared secret"
               if server else "--peer-key KEY (the server's public key) or a shared secret")
        raise click.UsageError(
            "no authentication configured. Set up a key pair with 'tou key gen -o FILE' and pass "
            f"{how} (TOU_SECRET or --secret-file FILE), or pass --insecure for cleartext")
    return secure_transport(s, server=server)


def secure_transport(s: Settings, *, server: bool) -> Transport:
    """The secure channel's transport (toucli/session.py) from the key and secret options.

    Key pairs win over a shared secret: ``--peer-key`` (client) or
    ``--authorized-keys`` (server) select key mode, with our key from ``--key-file``
    (default: the one ``tou key gen`` writes). Otherwise ``--secret-file`` or
    ``TOU_SECRET`` select shared-secret mode. A bad file is a usage error (exit 2).
    """
    from toucli import keys as k
    from toucli.session import CLIENT, SERVER, Auth, SecureEndpoint

    try:
        if (s.peer_key and not server) or (s.authorized_keys and server):
            key_file = s.key_file
            if key_file is None:
                from toucli.commands.key import default_key_path
                key_file = str(default_key_path())
                if not os.path.exists(key_file):
                    from toucli.tunnel import AuthenticationError
                    other = "server" if not server else "clients"
                    raise AuthenticationError(
                        f"authentication failed: no private key of our own ({key_file} does not exist); "
                        f"create it with 'tou key gen' and give its public key ('tou key pub') to the "
                        f"{other}, or pass --key-file FILE")
            private = k.PrivateKey.load(key_file)
            if server:
                auth = Auth.keys(private, authorized=k.AuthorizedKeys.load(s.authorized_keys))
            else:
                auth = Auth.keys(private, peer_key=k.PublicKey.parse(s.peer_key))
        else:
            secret = k.load_shared_secret(s.secret_file)
            if secret is None:
                need = "--authorized-keys FILE" if server else "--peer-key KEY"
                raise click.UsageError(f"{need}, or a shared secret (TOU_SECRET or --secret-file), is needed "
                                       f"{'on a listener' if server else 'to connect'}")
            if secret.warning and not s.quiet:
                click.echo(f"tou: {secret.warning}", err=True)
            auth = Auth.secret(secret)
    except k.KeyFileError as exc:
        raise click.UsageError(str(exc)) from None
    from toucli.tunnel import SecureTransport
    return SecureTransport(SecureEndpoint(SERVER if server else CLIENT, auth))


def resolve(host: str, port: int, family: int, *, passive: bool = False) -> tuple[int, Any]:
    """First address for ``host``/``port`` (UDP)."""
    try:
        infos = socket.getaddrinfo(host, port, family, socket.SOCK_DGRAM, 0,
                                   socket.AI_PASSIVE if passive else 0)
    except socket.gaierror as exc:
        raise TunnelError(f"cannot resolve {host}: {exc.strerror}") from None
    fam, _, _, _, addr = infos[0]
    return fam, addr


# ------------------------------------------------------------------ session
async def spawn(s: Settings, ch: Channel) -> tuple[FdStream, asyncio.subprocess.Process]:
    """Start the -e/-c program with its stdin and stdout on one end of a socket pair."""
    ours, theirs = socket.socketpair()
    peer = ch.peer
    env = dict(os.environ)
    if isinstance(peer, tuple):
        host = str(peer[0])
        env["TOU_REMOTE_ADDR"] = host[7:] if host.startswith("::ffff:") and "." in host else host
        env["TOU_REMOTE_PORT"] = str(peer[1])
    try:
        proc = await asyncio.create_subprocess_exec(*s.argv, stdin=theirs, stdout=theirs, env=env)
    except OSError as exc:
        ours.close()
        theirs.close()
        raise TunnelError(f"cannot run {s.argv[0]}: {exc.strerror}") from None
    finally:
        if theirs.fileno() != -1:
            theirs.close()
    return FdStream(ours.fileno(), sock=ours), proc


async def session(s: Settings, ch: Channel, source: FdStream | None, sink: FdStream | None, *,
                  close_sink: bool = True) -> None:
    """One netcat session on an established channel; raises TunnelError on failure."""
    loop = asyncio.get_running_loop()
    proc = None
    if s.argv is not None:
        stream, proc = await spawn(s, ch)
        source = sink = stream
        close_sink = True
    elif s.recv_only:
        source = None
    linger_fut: asyncio.Future[None] = loop.create_future()

    def source_eof() -> None:
        if s.linger is not None:
            loop.call_later(s.linger, lambda: linger_fut.done() or linger_fut.set_result(None))

    tasks = {asyncio.ensure_future(splice(ch, source, sink, on_source_eof=source_eof, close_sink=close_sink,
                                          reader_gone_ok=False)),
             linger_fut}
    idle = None
    if s.idle_timeout:
        idle = asyncio.ensure_future(_idle_watch(ch, s.idle_timeout))
        tasks.add(idle)
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            if t is not linger_fut:
                t.result()
        if linger_fut in done and not ch.finished:
            s.info(f"-q {s.linger:g}: quitting {s.linger:g} s after end of input")
            ch.abort("quit after end of input (-q)")
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()
        if proc is not None:
            if source is not None:
                source.close()
            try:
                await asyncio.wait_for(proc.wait(), 5.0)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()


async def _idle_watch(ch: Channel, limit: float) -> None:
    loop = asyncio.get_running_loop()
    while True:
        left = ch.last_activity + limit - loop.time()
        if left <= 0:
            ch.abort("idle timeout")
            raise TunnelError(f"idle timeout: nothing moved for {limit:g} s")
        await asyncio.sleep(left)


def summary(ch: Channel) -> str:
    elapsed = ch.tunnel.loop.time() - ch.started
    return f"{ch.bytes_out} bytes sent, {ch.bytes_in} bytes received in {elapsed:.2f} s"


def finish(code: int) -> None:
    """Leave with ``code``; click would otherwise print nothing and exit 0."""
    sys.stdout.flush() if not sys.stdout.closed else None
    raise click.exceptions.Exit(code)


# ------------------------------------------------------------------ command
@click.command("connect")
@click.argument("host")
@click.argument("port", type=PORT)
@session_options
@opt("-w", "--wait", type=DURATION, metavar="SECS", help="Give up if the connection is not set up within SECS.")
@opt("-s", "--source", metavar="ADDR", help="Send from this local address.")
@opt("-p", "--source-port", type=PORT, metavar="PORT", help="Send from this local UDP port.")
@observe_options
@common_options
@click.pass_context
def connect(ctx: click.Context, host: str, port: int, **_: Any) -> None:
    """Connect to a tou listener at HOST PORT (UDP) and copy stdin/stdout over it.

    Like ncat: end of stdin sends FIN and tou keeps printing what the peer sends
    until the peer closes, so `echo hi | tou connect HOST PORT` gets the reply.
    Exit status: 0 after a clean close, 1 network or peer failure, 2 usage error,
    3 authentication failure, 130 interrupted.
    """
    s = settings_from(ctx)
    p = ctx.params
    transport = make_transport(s, server=False)
    code = s.run(lambda sig: _connect(sig, s, transport, host, port, p.get("wait"), p.get("source"),
                                      p.get("source_port")))
    finish(code)


async def _connect(sig: Signals, s: Settings, transport: Transport, host: str, port: int,
                   wait: float | None, source: str | None, source_port: int | None) -> int:
    family, addr = resolve(host, port, s.family)
    try:
        bind_host = source or ("::" if family == socket.AF_INET6 else "0.0.0.0")
        usock = UdpSocket.bind(bind_host, source_port or 0, family)
        usock.connect(addr)
    except OSError as exc:
        raise TunnelError(f"cannot open a UDP socket to {format_address(addr)}: {exc.strerror}") from None
    obs = Observer(s.observe or ObserveOptions(), "connect", stdin_is_payload=s.argv is None and not s.recv_only,
                   warn=s.warn)
    tunnel = Tunnel(usock, obs.tap(transport, usock),
                    engine_config(family, transport.overhead, keepalive=s.keepalive, cc=s.cc, mtu=s.mtu),
                    pmtu=s.mtu is None)
    try:
        await obs.start(tunnel)
        s.info(f"connecting to {format_address(addr)} ({transport.name})")
        ch = tunnel.connect(addr)
        return await work_or_signal(_client(s, ch, wait), sig, tunnel)
    finally:
        tunnel.close()
        obs.stop()


async def _client(s: Settings, ch: Channel, wait: float | None) -> int:
    try:
        await asyncio.wait_for(asyncio.shield(ch.connected), wait)
    except asyncio.TimeoutError:
        ch.abort("connect timeout")
        raise TunnelError(f"connection to {ch.describe()} timed out after {wait:g} s") from None
    s.info(f"connected to {ch.describe()}")
    stdin, stdout = FdStream(0), FdStream(1)
    try:
        await session(s, ch, stdin, stdout)
    finally:
        stdin.close()
        stdout.close()
        s.info(summary(ch))
        ch.tunnel.flush()
    return EXIT_OK


__all__ = ["connect", "Settings", "settings_from", "session", "common_options", "session_options",
           "make_transport", "resolve", "DURATION", "PORT", "EXIT_FAILURE", "EXIT_USAGE"]
