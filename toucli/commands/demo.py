"""``tou demo``: both ends of a tunnel in one process over loopback UDP, moving random data.

The tunnel is what ``tou connect`` and ``tou listen`` build by default: the secure
channel (DTLS, here with a shared secret drawn at random), or cleartext TOU with
``--insecure``. With ``--rtt``, ``--loss`` or ``--rate`` the datagrams go through an
emulated path (:class:`toucli.link.Link`, one per direction, driven by real time)
before they reach the real socket. The sender hashes what it writes, the receiver
what it reads; the one-line summary says whether the SHA-256 of both agree. Exit 0
when they do.

Both ends share one event loop, so the data and the hashes are kept off it: the data
is an AES-CTR keystream (a few µs per 256 KiB chunk where ``random.randbytes`` took
0.8 ms) and each side's SHA-256 runs in a thread of its own (hashlib lets go of the
GIL), on the machine's other core when it has one.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import click
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from toucli.commands.connect import DURATION, MTU, finish, opt
from toucli.commands.stats import ObserveOptions, Observer
from toucli.link import Link
from toucli.tunnel import (
    DEFAULT_CC, EXIT_FAILURE, EXIT_OK, Channel, PlainTransport, SecureTransport, Signals, Transport, Tunnel,
    TunnelError, cc_names, engine_config, run,
)
from toucli.udp import Address, UdpSocket

CHUNK = 256 << 10             # what the sender writes at a time
RECEIVE_CHUNK = 1 << 20       # what the receiver reads at most


class LinkedUdpSocket(UdpSocket):
    """A UDP socket whose outgoing datagrams cross an emulated :class:`Link` first.

    The emulated path has an Ethernet MTU (:attr:`mtu`), not loopback's 64 KiB, so
    path-MTU discovery finds what it would on a real wide-area path.
    """

    mtu = 1500

    def __init__(self, sock: socket.socket, link: Link, **kw: bool) -> None:
        super().__init__(sock, gso=False, **kw)
        self.link = link
        self.dest: Address | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")

    def send(self, datagrams: list[tuple[bytes, Address]]) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for data, addr in datagrams:
            self.dest = addr
            self.link.send(data, now)
        self._arm(loop)

    def route_mtu(self, addr: Address) -> int:
        return self.mtu

    def send_probe(self, data: bytes, addr: Address) -> bool:
        """Path-MTU probes cross the emulated path like any datagram."""
        self.send([(data, addr)])
        return True

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        t = self.link.next_delivery()
        if t is not None and t < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = t
            self._timer = loop.call_at(t, self._deliver)

    def _deliver(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer, self._timer_at = None, float("inf")
        if self.sock.fileno() == -1:
            return
        packets = self.link.deliver(loop.time())
        if packets:
            UdpSocket.send(self, [(p, self.dest) for p in packets])
        self._arm(loop)


@click.command("demo")
@opt("--rtt", type=click.FloatRange(0), default=0.0, show_default=True, metavar="MS",
     help="Round-trip time of the emulated path, milliseconds.")
@opt("--loss", type=click.FloatRange(0, 100), default=0.0, show_default=True, metavar="PCT",
     help="Random loss per direction, percent.")
@opt("--rate", type=click.FloatRange(0, min_open=True), metavar="MBIT",
     help="Bottleneck rate per direction, Mbit/s (default: unlimited).")
@opt("--seconds", type=DURATION, default=5.0, show_default=True, metavar="N", help="How long to send.")
@opt("--seed", type=int, default=1, show_default=True, help="Seed of the data and of the emulated loss.")
@opt("--cc", type=click.Choice(cc_names(), case_sensitive=False), metavar="NAME",
     help=f"Congestion control: {', '.join(cc_names())} (default {DEFAULT_CC}).")
@opt("--mtu", type=MTU, metavar="N",
     help="Path MTU in bytes: fixes the segment size, no path-MTU discovery (default: discover).")
@opt("--insecure", is_flag=True, help="Cleartext TOU instead of the secure channel (as --insecure does).")
@opt("--stats/--no-stats", default=None,
     help="Show the live statistics dashboard on stderr (default: when stderr is a terminal).")
@opt("-v", "--verbose", count=True, help="Also print transport counters.")
@click.option("--config", metavar="FILE", type=click.Path(dir_okay=False),
              help="Config file (default $XDG_CONFIG_HOME/tou/config.toml; env TOU_CONFIG).")
@click.pass_context
def demo(ctx: click.Context, **_: Any) -> None:
    """Show tou working: a tunnel over loopback with both ends in this process.

    Random data flows one way for --seconds; the summary gives goodput,
    retransmissions and whether the bytes arrived intact (SHA-256). Optionally
    the datagrams cross an emulated path with --rtt, --loss and --rate.
    """
    from toucli import config as configuration

    p = configuration.resolve(ctx, ctx.params.get("config"))
    code = run(lambda sig: _demo(sig, p), verbose=p.get("verbose") or 0)
    finish(code)


def _transports(insecure: bool) -> tuple[Transport, Transport]:
    """Client and server transports: cleartext, or the secure channel with a fresh shared secret."""
    if insecure:
        return PlainTransport(), PlainTransport()
    from toucli.session import CLIENT, SERVER, Auth, SecureEndpoint

    secret = os.urandom(32)
    return (SecureTransport(SecureEndpoint(CLIENT, Auth.secret(secret))),
            SecureTransport(SecureEndpoint(SERVER, Auth.secret(secret))))


def _describe_path(p: dict) -> str:
    channel = "cleartext" if p.get("insecure") else "DTLS"
    if not (p["rtt"] or p["loss"] or p.get("rate")):
        return f"loopback, {channel}"
    parts = [f"rtt {p['rtt']:g} ms"]
    if p["loss"]:
        parts.append(f"loss {p['loss']:g}%")
    if p.get("rate"):
        parts.append(f"rate {p['rate']:g} Mbit/s")
    return "emulated path: " + ", ".join(parts) + f"; {channel}"


def _open(p: dict, rng: random.Random) -> UdpSocket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    if not (p["rtt"] or p["loss"] or p.get("rate")):
        return UdpSocket(sock)
    rate = p["rate"] * 1e6 if p.get("rate") else None
    delay = p["rtt"] / 2000.0
    queue = None
    if rate is not None:
        queue = max(int(rate * max(p["rtt"], 20.0) / 1000.0 / 8.0), 64 << 10)   # about one BDP
    link = Link(rng, delay, rate_bps=rate, queue_bytes=queue, loss=p["loss"] / 100.0, overhead=28)
    return LinkedUdpSocket(sock, link)


async def _demo(sig: Signals, p: dict) -> int:
    loop = asyncio.get_running_loop()
    seed = p["seed"]
    rng = random.Random(seed)
    a_sock, b_sock = _open(p, random.Random(rng.random())), _open(p, random.Random(rng.random()))
    buffer = None
    if p.get("rate"):
        # Keep the tail short: what sits in buffers after --seconds still has to cross the path.
        bdp = int(p["rate"] * 1e6 / 8 * max(p["rtt"], 20.0) / 1000.0)
        buffer = max(4 * bdp, 256 << 10)
    client_tr, server_tr = _transports(bool(p.get("insecure")))
    cfg = engine_config(socket.AF_INET, client_tr.overhead, buffer=buffer, cc=p.get("cc"), mtu=p.get("mtu"))
    pmtu = p.get("mtu") is None
    accepted: asyncio.Future[Channel] = loop.create_future()

    def on_accept(ch: Channel) -> None:
        if not accepted.done():
            accepted.set_result(ch)

    server = Tunnel(b_sock, server_tr, cfg, on_accept=on_accept, pmtu=pmtu)
    server.listen()
    tty = sys.stderr.isatty()
    dashboard = tty if p.get("stats") is None else bool(p["stats"])
    obs = Observer(ObserveOptions(stats=dashboard), "demo", stdin_is_payload=False)
    client = Tunnel(a_sock, obs.tap(client_tr, a_sock), cfg, pmtu=pmtu)
    try:
        await obs.start(client)
        ch = client.connect(b_sock.local_address())
        ch.label = "demo (sender)"
        work = asyncio.ensure_future(_transfer(p, ch, accepted, tty and not dashboard))
        done, _ = await asyncio.wait({work, sig.stopping}, return_when=asyncio.FIRST_COMPLETED)
        if work not in done:
            work.cancel()
            if tty:
                print(file=sys.stderr)
            return sig.stopping.result()
        sent_hash, recv_hash, received, elapsed, retrans, segs = work.result()
    finally:
        obs.stop()
        client.close()
        server.close()
    ok = sent_hash == recv_hash
    rate = received * 8 / elapsed / 1e6 if elapsed > 0 else 0.0
    share = 100.0 * retrans / segs if segs else 0.0
    verdict = f"{received:,} bytes verified (SHA-256 match)" if ok else "SHA-256 MISMATCH: data corrupted"
    print(f"tou demo ({_describe_path(p)}): {received / 1e6:.1f} MB in {elapsed:.2f} s, "
          f"goodput {rate:.1f} Mbit/s, {retrans} retransmitted segments ({share:.2f}%), {verdict}")
    if p.get("verbose"):
        print(f"  congestion control: {cfg.congestion_control}", file=sys.stderr)
        for name, t in (("sender", client), ("receiver", server)):
            print(f"  {name}: {t.stats()}", file=sys.stderr)
    return EXIT_OK if ok else EXIT_FAILURE


async def _transfer(p: dict, ch: Channel, accepted: asyncio.Future[Channel], tty: bool):
    loop = asyncio.get_running_loop()
    await asyncio.wait_for(asyncio.shield(ch.connected), 10.0)
    peer = await asyncio.wait_for(accepted, 10.0)
    keystream = Cipher(algorithms.AES(hashlib.sha256(b"tou demo %d" % p["seed"]).digest()[:16]),
                       modes.CTR(bytes(16))).encryptor()
    zeros = bytes(CHUNK)
    sent = hashlib.sha256()
    recv = hashlib.sha256()
    # One thread per hash: each hash's updates stay in order, and neither holds the loop.
    send_hasher, recv_hasher = ThreadPoolExecutor(1), ThreadPoolExecutor(1)
    start = loop.time()
    end = start + p["seconds"]
    received = 0

    async def send() -> None:
        hashed: asyncio.Future | None = None
        while loop.time() < end:
            chunk = keystream.update(zeros)
            hashed = loop.run_in_executor(send_hasher, sent.update, chunk)
            await ch.write(chunk)
            await hashed
        ch.write_eof()

    async def receive() -> int:
        nonlocal received
        pending: asyncio.Future | None = None
        while True:
            data = await peer.read(RECEIVE_CHUNK)
            if not data:
                break
            if pending is not None:
                await pending
            pending = loop.run_in_executor(recv_hasher, recv.update, data)
            received += len(data)
        if pending is not None:
            await pending
        peer.write_eof()
        return received

    async def progress() -> None:
        last_t, last_b = start, 0
        while True:
            await asyncio.sleep(0.5)
            now = loop.time()
            rate = (received - last_b) * 8 / (now - last_t) / 1e6
            last_t, last_b = now, received
            st = ch.conn.stats()
            print(f"\r  {received / 1e6:8.1f} MB  {rate:8.1f} Mbit/s  retransmitted {st['retransmitted_segments']}"
                  f"  rtt {1000 * (st['srtt'] or 0):.1f} ms  ", end="", file=sys.stderr, flush=True)

    tasks = [asyncio.ensure_future(send()), asyncio.ensure_future(receive())]
    prog = asyncio.ensure_future(progress()) if tty else None
    try:
        await asyncio.gather(*tasks)
        elapsed = loop.time() - start
        await asyncio.wait_for(asyncio.shield(ch.done), 5.0)
    except asyncio.TimeoutError:
        raise TunnelError("the demo connection did not close in time") from None
    finally:
        for t in tasks:
            t.cancel()
        send_hasher.shutdown(cancel_futures=True)
        recv_hasher.shutdown(cancel_futures=True)
        if prog is not None:
            prog.cancel()
            print(file=sys.stderr)
    st = ch.conn.stats()
    return sent.digest(), recv.digest(), received, elapsed, st["retransmitted_segments"], st["segs_out"]
