"""Issue 6 in the runtime: --cc, --mtu and path-MTU discovery, Fast Open in forward, sender stats."""

from __future__ import annotations

import asyncio
import errno
import importlib
import random
import socket

import pytest
from click.testing import CliRunner

from toucli import tunnel as tunnel_mod
from toucli import udp as udp_mod
from toucli.cli import main
from toucli.stack.config import ConnectionConfig
from toucli.stack.connection import State
from toucli.stack.endpoint import Endpoint
from toucli.session import Auth, SecureEndpoint
from toucli.stack.pmtu import PmtuState
from toucli.tunnel import (
    DEFAULT_CC, EXIT_USAGE, Channel, PlainTransport, SecureTransport, Tunnel, TunnelError, engine_config,
    mss_for,
)
from toucli.udp import UdpSocket

from procs import free_udp_port
from securenet import secret


# ------------------------------------------------------------------ --cc / engine_config
def test_engine_config_congestion_control_and_mtu() -> None:
    assert DEFAULT_CC == "bbr"
    assert engine_config(socket.AF_INET, 4).congestion_control == "bbr"
    assert engine_config(socket.AF_INET, 4, cc="CUBIC").congestion_control == "cubic"
    assert engine_config(socket.AF_INET, 4, cc="newreno").congestion_control == "newreno"
    with pytest.raises(TunnelError) as err:
        engine_config(socket.AF_INET, 4, cc="vegas")
    assert err.value.exit_code == EXIT_USAGE and "bbr, cubic, newreno" in str(err.value)
    assert engine_config(socket.AF_INET, 4).mss == mss_for(socket.AF_INET, 4) == 1448
    assert engine_config(socket.AF_INET, 53, mtu=1280).mss == 1280 - 20 - 8 - 53 - 20
    assert engine_config(socket.AF_INET, 4).fast_open is False
    assert engine_config(socket.AF_INET, 4, fast_open=True).fast_open is True
    assert ConnectionConfig().congestion_control == "cubic"     # the engine's own default is unchanged
    bbr, cubic = engine_config(socket.AF_INET, 4), engine_config(socket.AF_INET, 4, cc="cubic")
    # Linux's RTO and RTT rules, and a send buffer for long paths, with BBR only
    assert (bbr.rto_min_var, bbr.rto_restart_on_head_resend, bbr.rtt_sack_samples) == (0.2, True, True)
    assert (cubic.rto_min_var, cubic.rto_restart_on_head_resend, cubic.rtt_sack_samples) == (0.0, False, False)
    assert (bbr.send_buffer, cubic.send_buffer, bbr.recv_buffer, cubic.recv_buffer) == (16 << 20, 4 << 20, 16 << 20, 16 << 20)


@pytest.fixture
def captured(monkeypatch):
    """Run `tou connect` up to the runtime and keep its resolved settings."""
    connect_mod = importlib.import_module("toucli.commands.connect")

    seen = {}
    real = connect_mod.settings_from

    def spy(ctx):
        seen["s"] = real(ctx)
        return seen["s"]

    monkeypatch.setattr(connect_mod, "settings_from", spy)
    monkeypatch.setattr(connect_mod, "run", lambda *a, **k: seen.update(run=k) or 0)
    for name in ("TOU_CC", "TOU_MTU", "TOU_BUSY_POLL"):
        monkeypatch.delenv(name, raising=False)
    return seen


def _connect(args: list[str], env: dict | None = None):
    return CliRunner().invoke(main, ["connect", "--insecure", "--quiet", *args, "127.0.0.1", "9"], env=env)


def test_cc_precedence_cli_env_config_default(captured, tmp_path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text('cc = "newreno"\nmtu = 1400\n')
    r = _connect(["--config", str(conf)])
    assert r.exit_code == 0, r.output
    assert captured["s"].cc == "newreno" and captured["s"].mtu == 1400
    r = _connect(["--config", str(conf)], env={"TOU_CC": "cubic"})
    assert r.exit_code == 0 and captured["s"].cc == "cubic"
    r = _connect(["--config", str(conf), "--cc", "bbr"], env={"TOU_CC": "cubic"})
    assert r.exit_code == 0 and captured["s"].cc == "bbr"
    r = _connect([], env={"XDG_CONFIG_HOME": str(tmp_path / "empty")})
    assert r.exit_code == 0 and captured["s"].cc is None and captured["s"].mtu is None


def test_busy_poll_comes_from_the_config_or_environment_and_reaches_the_loop(captured, tmp_path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text("[connect]\nbusy-poll = 250\n")
    r = _connect(["--config", str(conf)])
    assert r.exit_code == 0, r.output
    assert captured["s"].busy_poll == 250 and captured["run"]["busy_poll"] == pytest.approx(250e-6)
    r = _connect(["--config", str(conf)], env={"TOU_BUSY_POLL": "40"})
    assert r.exit_code == 0 and captured["run"]["busy_poll"] == pytest.approx(40e-6)
    r = _connect(["--config", str(conf)], env={"TOU_BUSY_POLL": "0"})
    assert r.exit_code == 0 and captured["run"]["busy_poll"] == 0.0
    r = _connect([], env={"XDG_CONFIG_HOME": str(tmp_path / "empty")})
    assert r.exit_code == 0 and captured["s"].busy_poll is None and captured["run"]["busy_poll"] is None
    conf.write_text('[connect]\nbusy-poll = "auto"\n')
    r = _connect(["--config", str(conf), "--busy-poll", "300"])
    assert r.exit_code == 0 and captured["run"]["busy_poll"] == pytest.approx(300e-6)
    r = _connect(["--config", str(conf)])
    assert r.exit_code == 0 and captured["run"]["busy_poll"] is None


@pytest.mark.parametrize("value", ["fast", "-1", "100001", "1.5"])
def test_busy_poll_refuses_anything_but_auto_or_microseconds(captured, value) -> None:
    r = _connect(["--busy-poll", value])
    assert r.exit_code == 2 and "--busy-poll" in r.output and "auto" in r.output
    assert "run" not in captured


@pytest.mark.parametrize("command", [["connect", "--insecure", "127.0.0.1", "9"],
                                     ["listen", "--insecure", "9"],
                                     ["forward", "--insecure", "--serve", "9"],
                                     ["demo"]])
def test_unknown_cc_is_a_usage_error_naming_the_choices(command) -> None:
    r = CliRunner().invoke(main, [command[0], "--cc", "vegas", *command[1:]])
    assert r.exit_code == 2
    assert "vegas" in r.output and "bbr" in r.output and "cubic" in r.output and "newreno" in r.output


@pytest.mark.parametrize("command", [["connect", "127.0.0.1", "9"], ["listen", "127.0.0.1", "PORT"],
                                     ["forward", "--serve", "127.0.0.1:PORT"],
                                     ["forward", "-L", "PORT:127.0.0.1:9", "127.0.0.1:9"]])
def test_mtu_flag_turns_path_mtu_discovery_off(monkeypatch, command) -> None:
    """Every command discovers the path MTU unless ``--mtu`` fixes it (the tunnel is
    stopped as it is built)."""
    seen = []

    def tunnel(*args, **kwargs):
        seen.append((kwargs["pmtu"], args[2].mss))
        raise TunnelError("stopped by the test")

    for name in ("connect", "listen", "forward"):
        monkeypatch.setattr(importlib.import_module(f"toucli.commands.{name}"), "Tunnel", tunnel)
    monkeypatch.delenv("TOU_MTU", raising=False)
    for extra in ([], ["--mtu", "1300"]):
        port = str(free_udp_port())
        args = [a.replace("PORT", port) for a in command]
        r = CliRunner().invoke(main, [args[0], "--insecure", *extra, *args[1:]])
        assert r.exit_code == 1 and "stopped by the test" in r.output, r.output
    assert seen == [(True, 1448), (False, 1300 - 20 - 8 - 4 - 20)]


def test_mtu_out_of_range_and_bad_config_value_are_usage_errors(tmp_path) -> None:
    r = CliRunner().invoke(main, ["connect", "--insecure", "--mtu", "100", "127.0.0.1", "9"])
    assert r.exit_code == 2 and "--mtu" in r.output
    conf = tmp_path / "c.toml"
    conf.write_text('[connect]\ncc = "reno2"\n')
    r = CliRunner().invoke(main, ["connect", "--insecure", "--config", str(conf), "127.0.0.1", "9"])
    assert r.exit_code == 2 and "reno2" in r.output


# ------------------------------------------------------------------ path-MTU probes in the engine
def _pump(a: Endpoint, b: Endpoint, now: float, drop=lambda seg: False) -> None:
    """Deliver what each endpoint sends to the other until both are quiet."""
    for _ in range(50):
        moved = False
        for src, dst in ((a, b), (b, a)):
            for peer, seg in src.segments_to_send(now):
                moved = True
                if not drop(seg):
                    dst.receive("A" if src is a else "B", seg, now)
        if not moved:
            return


def _established(**cfg) -> tuple[Endpoint, Endpoint, object, object]:
    a = Endpoint(ConnectionConfig(**cfg), b"a" * 32)
    b = Endpoint(ConnectionConfig(**cfg), b"b" * 32)
    b.listen(1)
    ca = a.connect("B", 40000, 1, 0.0)
    _pump(a, b, 0.0)
    cb = next(iter(b.connections.values()))
    ca.send(b"x" * 5000)
    _pump(a, b, 0.01)
    assert cb.recv() == b"x" * 5000 and ca.snd_una == 5001
    return a, b, ca, cb


def test_mtu_probe_is_answered_by_a_dsack_and_counts_as_nothing_else() -> None:
    a, b, ca, cb = _established()
    seg = ca.mtu_probe(1300, 0.02)
    assert len(seg.payload) == 1300 and seg.tsval is not None and seg.sack is None
    assert seg.seq == (ca.iss + 5001 - 1300) & 0xFFFFFFFF
    b.receive("A", seg, 0.02)
    answers = [s for _, s in b.segments_to_send(0.02)]
    assert len(answers) == 1 and answers[0].sack == ((seg.seq, (seg.seq + 1300) & 0xFFFFFFFF),)
    assert cb.recv() == b"" and cb.stats()["dup_segs_in"] == 1     # the stream is unchanged
    a.receive("B", answers[0], 0.03)
    assert ca.mtu_probe_answered
    st = ca.stats()
    assert st["dsacks_in"] == 0 and not st["reordering_seen"] and st["mtu_probes"] == 1
    # the stream goes on as before
    ca.send(b"y" * 100)
    _pump(a, b, 0.04)
    assert cb.recv() == b"y" * 100


def test_a_probe_reaches_below_the_initial_sequence_number() -> None:
    """Probing needs no data sent yet: sequence space before the ISN is just as old."""
    a = Endpoint(ConnectionConfig(), b"a" * 32)
    b = Endpoint(ConnectionConfig(), b"b" * 32)
    b.listen(1)
    ca = a.connect("B", 40000, 1, 0.0)
    _pump(a, b, 0.0)
    seg = ca.mtu_probe(1400, 0.01)
    b.receive("A", seg, 0.01)
    for _, s in b.segments_to_send(0.01):
        a.receive("B", s, 0.02)
    assert ca.mtu_probe_answered and ca.stats()["dsacks_in"] == 0


def test_no_probe_without_sack_or_before_the_handshake() -> None:
    a = Endpoint(ConnectionConfig(), b"a" * 32)
    ca = a.connect("B", 40000, 1, 0.0)
    assert ca.mtu_probe(1000, 0.0) is None
    a, b, ca, cb = _established(sack=False)
    assert ca.mtu_probe(1000, 0.1) is None


# ------------------------------------------------------------------ path-MTU discovery in the runtime
class NarrowSocket(UdpSocket):
    """Loopback UDP that silently drops datagrams longer than ``limit`` bytes (a router with DF set)."""

    limit = 65535

    data_dropped = 0
    probes_dropped = 0

    def send(self, datagrams):
        keep = [(d, a) for d, a in datagrams if len(d) <= self.limit]
        self.data_dropped += len(datagrams) - len(keep)
        if keep:
            super().send(keep)

    def send_probe(self, data, addr) -> bool:
        if len(data) > self.limit:
            self.probes_dropped += 1
            return True                       # gone without a trace
        return super().send_probe(data, addr)


def _narrow(limit: int) -> NarrowSocket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    u = NarrowSocket(s, gso=False)
    u.limit = limit
    return u


def _secure(role: str) -> SecureTransport:
    return SecureTransport(SecureEndpoint(role, Auth.secret(secret(b"path mtu test secret words"))))


async def _pmtu_pair(limit: int, transfer: int = 400_000, secure: bool = False, sock=None, then=None):
    """Move ``transfer`` bytes over a pair of tunnels whose sockets carry ``limit`` bytes, and
    wait for both searches to end: each side's (PLPMTU, state, MSS), client, server; or what
    ``await then(client, ch, peer)`` returns, run before the tunnels close."""
    server_t, client_t = (_secure("server"), _secure("client")) if secure else (PlainTransport(), PlainTransport())
    cfg = engine_config(socket.AF_INET, server_t.overhead)
    accepted: asyncio.Queue[Channel] = asyncio.Queue()
    sock = sock or (lambda: _narrow(limit))
    server = Tunnel(sock(), server_t, cfg, on_accept=accepted.put_nowait, pmtu=True)
    server.listen()
    client = Tunnel(sock(), client_t, cfg, pmtu=True)
    try:
        ch = client.connect(server.usock.local_address())
        await asyncio.wait_for(ch.connected, 5)
        peer = await asyncio.wait_for(accepted.get(), 5)
        data = bytes(range(256)) * (transfer // 256)
        got = bytearray()

        async def reader():
            while len(got) < len(data):
                chunk = await peer.read()
                if not chunk:
                    break
                got.extend(chunk)

        r = asyncio.ensure_future(reader())
        await ch.write(data)
        await asyncio.wait_for(r, 20)
        assert bytes(got) == data
        loop = asyncio.get_running_loop()
        end = loop.time() + 10
        paths = lambda: [t.paths.get(c.peer) for t, c in ((client, ch), (server, peer))]   # noqa: E731
        while loop.time() < end and not all(p is not None and p.pm.state is PmtuState.SEARCH_COMPLETE
                                             for p in paths()):
            await asyncio.sleep(0.05)
        if then is not None:
            return await then(client, ch, peer)
        return [(p.pm.plpmtu, p.pm.state, c.conn.eff_mss) for p, c in zip(paths(), (ch, peer))], client, server
    finally:
        client.close()
        server.close()


def test_discovery_finds_the_loopback_interface_limit() -> None:
    """Loopback's MTU (65535, from IP_MTU) bounds the search: the first probe beyond
    the base size carries the largest UDP payload, and the data follows."""
    assert UdpSocket.bind("127.0.0.1", 0).route_mtu(("127.0.0.1", 9)) == 65535
    result, client, server = asyncio.run(_pmtu_pair(65535, transfer=2_000_000))
    for plpmtu, state, mss in result:
        assert state is PmtuState.SEARCH_COMPLETE and plpmtu == 65507
        assert mss == 65507 - 4 - 20 - 12               # GUE, TCP header, timestamps
    assert client.usock.df and server.usock.df
    assert client.path_mtu == server.path_mtu == 65535 and client.stats()["pmtu_probes"] == 2   # base, then max
    assert client.usock.data_dropped == server.usock.data_dropped == 0


@pytest.mark.parametrize("secure", [False, True], ids=["cleartext", "dtls"])
def test_packet_too_big_is_validated_against_what_was_sent(secure: bool) -> None:
    """RFC 8899 §4.6.1: a Packet Too Big counts only when its quote is a datagram this end
    sent to that peer. Forged ones (another address, session ID or port, a record or
    sequence number never sent, a quote too short to tell) change nothing; a genuine one
    naming less than the PLPMTU lowers it at once, the MSS follows, the same message
    again is no news, and data still flows."""
    ICMP = udp_mod.SO_EE_ORIGIN_ICMP

    async def then(client: Tunnel, ch: Channel, peer: Channel):
        sent: list[bytes] = []
        send_one = client.usock._send_one
        client.usock._send_one = lambda d, a: (sent.append(bytes(d[:udp_mod.QUOTE_BYTES])), send_one(d, a))[1]
        await ch.write(b"x" * 100_000)
        got = 0
        while got < 100_000:
            got += len(await asyncio.wait_for(peer.read(), 5))
        path = client.paths[ch.peer]
        dest = client.transport.address(ch.peer)
        genuine = sent[-1]
        hdr = 12 if secure else 4

        def flip(at: int) -> bytes:
            return genuine[:at] + bytes([genuine[at] ^ 0xFF]) + genuine[at + 1:]

        forged = [(("127.0.0.2", dest[1]), genuine),          # to another address
                  (dest, genuine[:8]),                         # too short to validate
                  (dest, flip(hdr - 1) if secure else flip(hdr + 1)),  # session ID / source port
                  (dest, flip(hdr + 5) if secure else flip(hdr + 4))]  # record epoch+seq / sequence number
        before = (path.pm.plpmtu, path.pm.search_high)
        for addr, quoted in forged:
            client._on_icmp(udp_mod.IcmpReport(errno.EMSGSIZE, ICMP, 3, 4, 1300, addr, quoted))
        await asyncio.sleep(0.05)
        after_forged = (client.ptb_ignored, client.ptb_accepted, (path.pm.plpmtu, path.pm.search_high) == before)
        client._on_icmp(udp_mod.IcmpReport(errno.EMSGSIZE, ICMP, 3, 4, 1300, dest, genuine))
        await asyncio.sleep(0.05)
        lowered = (client.ptb_accepted, path.pm.plpmtu, ch.conn.eff_mss)
        client._on_icmp(udp_mod.IcmpReport(errno.EMSGSIZE, ICMP, 3, 4, 1300, dest, genuine))   # again: no news
        loop = asyncio.get_running_loop()
        end = loop.time() + 5
        while loop.time() < end and path.pm.state is not PmtuState.SEARCH_COMPLETE:
            await asyncio.sleep(0.05)
        await ch.write(b"y" * 50_000)
        tail = bytearray()
        while len(tail) < 50_000:
            tail += await asyncio.wait_for(peer.read(), 5)
        return after_forged, lowered, client.ptb_ignored, path.pm.state, path.pm.plpmtu, bytes(tail)

    after_forged, lowered, ignored, state, plpmtu, tail = asyncio.run(
        _pmtu_pair(65535, transfer=1_000_000, secure=secure, then=then))
    assert after_forged == (4, 0, True)
    overhead = 12 + 13 + 8 + 16 if secure else 4
    assert lowered == (1, 1272, 1272 - overhead - 20 - 12)
    assert ignored == 5 and state is PmtuState.SEARCH_COMPLETE and plpmtu == 1272
    assert tail == b"y" * 50_000


def test_secure_discovery_stops_at_one_full_record() -> None:
    """DTLS records hold at most 2^14 bytes (RFC 6347 §4.1), so the secure transport's
    largest datagram is one full record: the search ends there, the MSS follows, and
    the SYN announces it."""
    result, client, server = asyncio.run(_pmtu_pair(65535, transfer=2_000_000, secure=True))
    largest = client.transport.max_datagram
    assert largest == 12 + 13 + 8 + 16384 + 16
    for plpmtu, state, mss in result:
        assert state is PmtuState.SEARCH_COMPLETE and plpmtu == largest
        assert mss == largest - client.transport.overhead - 20 - 12
    assert client.config.mss == largest - client.transport.overhead - 20
    assert client.config.send_mss == mss_for(socket.AF_INET, client.transport.overhead)


def test_black_hole_needs_two_ticks_of_timeouts_with_nothing_delivered_on_the_path() -> None:
    """RFC 8899 §4.3 signals per peer, not per connection: two connections timing out
    in the same tick are one loss, a delivery on any connection clears the count, and a
    connection with less than a segment in flight (a lost keystroke) says nothing."""
    from toucli.tunnel import PathMtu

    class FakeConn:                              # what _pmtu_tick reads of a connection
        def __init__(self) -> None:
            self.state, self.rto_count, self.bytes_acked = State.ESTABLISHED, 0, 0
            self.flight, self.eff_mss, self.sack_ok, self.ts_ok = 5000, 1000, False, False
            self.mss_set: list[int] = []

        def set_mss(self, mss: int, now: float | None = None) -> None:
            self.mss_set.append(mss)

    conn = FakeConn

    async def run():
        tun = Tunnel(_narrow(65535), PlainTransport(), engine_config(socket.AF_INET, 4), pmtu=True)
        try:
            path = tun.paths["p"] = PathMtu("p", 0.0, 9000, False)
            path.pm.probe_acked(path.pm.probe_size(0.0), 0.0)       # base confirmed
            path.pm.probe_acked(path.pm.probe_size(0.0), 0.0)       # 9000 confirmed: searching done
            assert path.pm.plpmtu == 9000
            a, b = conn(), conn()
            path.rtos = {a: (0, 0), b: (0, 0)}
            a.rto_count = b.rto_count = 1                            # tick 1: both time out
            tun._pmtu_tick()
            assert path.pm.plpmtu == 9000 and path.pm.black_holes == 0
            a.rto_count, b.bytes_acked = 2, 1000                     # tick 2: b delivered
            tun._pmtu_tick()
            a.rto_count, a.flight = 3, 10                            # tick 3: a keystroke timed out
            tun._pmtu_tick()
            assert path.pm.black_holes == 0
            a.rto_count, a.flight = 4, 5000                          # ticks 4, 5: full segments time out
            tun._pmtu_tick()
            a.rto_count = 5
            tun._pmtu_tick()
            assert a.mss_set[-1] == b.mss_set[-1] == tun.mss_for_datagram(1200)   # both follow the fallback
            return path.pm.black_holes, path.pm.plpmtu
        finally:
            tun.close()

    assert asyncio.run(run()) == (1, 1200)


def test_the_demo_path_emulator_is_an_ethernet_path() -> None:
    """``tou demo --rtt/--loss/--rate`` emulates a wide-area path: discovery stops at a
    1500-byte MTU there, however large loopback's is."""
    result, client, server = asyncio.run(_pmtu_pair(0, sock=lambda: _delayed_socket(0.001)))
    for plpmtu, state, _mss in result:
        assert state is PmtuState.SEARCH_COMPLETE and plpmtu == 1472
    assert client.path_mtu == 1500


def test_mtu_option_larger_than_a_record_is_capped() -> None:
    """``--mtu 65535`` on the secure transport cannot make segments a record cannot hold."""
    async def run():
        t = _secure("client")
        tun = Tunnel(_narrow(65535), t, engine_config(socket.AF_INET, t.overhead, mtu=65535))
        try:
            return tun.config.mss, tun.mss_for_datagram(t.max_datagram)
        finally:
            tun.close()
    mss, cap = asyncio.run(run())
    assert mss == cap


def test_discovery_settles_below_a_narrow_path_and_data_flows(monkeypatch) -> None:
    monkeypatch.setattr(tunnel_mod, "PMTU_PROBE_TIMEOUT", 0.2)
    monkeypatch.setattr(tunnel_mod, "PMTU_TICK", 0.05)
    result, client, server = asyncio.run(_pmtu_pair(1350))
    for plpmtu, state, mss in result:
        assert state is PmtuState.SEARCH_COMPLETE
        assert 1350 - 16 <= plpmtu <= 1350
        assert mss == plpmtu - 4 - 20 - 12
    # data segments start at the base size (1200) and only grow to what probes confirmed
    assert client.usock.data_dropped == server.usock.data_dropped == 0
    assert client.usock.probes_dropped + server.usock.probes_dropped >= 3     # 1472 failed three times
    assert client.path_mtu == result[0][0] + 28


def test_a_path_that_shrinks_mid_transfer_is_a_black_hole_and_the_data_survives() -> None:
    """The path silently stops carrying big datagrams mid-transfer (a route change, no
    ICMP): two retransmission timeouts with nothing acknowledged send the search back to
    the base size (RFC 8899 §4.3), retransmissions are cut to the new MSS, the transfer
    completes intact, and the search settles below the new limit."""
    import hashlib

    async def run():
        cfg = engine_config(socket.AF_INET, PlainTransport.overhead)
        accepted: asyncio.Queue[Channel] = asyncio.Queue()
        server = Tunnel(_narrow(65535), PlainTransport(), cfg, on_accept=accepted.put_nowait, pmtu=True)
        server.listen()
        client = Tunnel(_narrow(65535), PlainTransport(), cfg, pmtu=True)
        loop = asyncio.get_running_loop()
        try:
            ch = client.connect(server.usock.local_address())
            await asyncio.wait_for(ch.connected, 5)
            peer = await asyncio.wait_for(accepted.get(), 5)
            data = random.Random(7).randbytes(12_000_000)
            got = bytearray()
            shrunk_at = None
            rtos_then: list[int] = []

            async def reader():
                nonlocal shrunk_at
                while len(got) < len(data):
                    chunk = await peer.read()
                    if not chunk:
                        break
                    got.extend(chunk)
                    if shrunk_at is None and len(got) > 2_000_000:
                        path = client.paths[ch.peer]
                        assert path.pm.plpmtu == 65507    # big datagrams were flowing
                        shrunk_at = loop.time()
                        rtos_then.append(ch.conn.stats()["rto_count"])
                        client.usock.limit = server.usock.limit = 1400

            r = asyncio.ensure_future(reader())
            await ch.write(data)
            await asyncio.wait_for(r, 60)
            done_at = loop.time()
            path = client.paths[ch.peer]
            end = loop.time() + 20
            while loop.time() < end and path.pm.state is not PmtuState.SEARCH_COMPLETE:
                await asyncio.sleep(0.05)
            return (hashlib.sha256(got).digest() == hashlib.sha256(data).digest(), path.pm.black_holes,
                    path.pm.plpmtu, path.pm.state, done_at - shrunk_at, client.usock.data_dropped,
                    ch.conn.stats()["rto_count"] - rtos_then[0])
        finally:
            client.close()
            server.close()

    same, black_holes, plpmtu, state, stall, dropped, timeouts = asyncio.run(run())
    print(f"stall {stall:.2f} s, {timeouts} retransmission timeouts")
    assert same
    assert black_holes == 1 and dropped > 0
    assert state is PmtuState.SEARCH_COMPLETE and 1400 - 16 <= plpmtu <= 1400
    # Two timeouts with nothing acknowledged declare the black hole at the runtime's next
    # look (PMTU_TICK), and everything unacknowledged goes out again at the new size at once;
    # a third timeout may fire first if the look comes late. Counted in timeouts, not
    # seconds: a loaded machine stretches the RTO (a 10.8 s stall under two CPU burners), not
    # the number of them. Here: 2 timeouts, 1.0 s.
    assert 2 <= timeouts <= 3, (timeouts, stall)


def test_syn_room_follows_the_size_the_engine_puts_in_a_syn() -> None:
    """What ``forward`` pipelines into a SYN is what the engine's SYN carries: the
    starting segment size (not the larger MSS a discovering tunnel announces), the
    server's MSS, and the path size validated so far."""
    from toucli.forward import syn_room
    from toucli.tunnel import PathMtu

    async def run():
        tun = Tunnel(_narrow(65535), PlainTransport(), engine_config(socket.AF_INET, 4, fast_open=True), pmtu=True)
        try:
            peer = ("127.0.0.1", 9)
            assert syn_room(tun, peer) == 0                         # no cookie: nothing rides in the SYN
            tun.ep.tfo_cookies[peer] = (b"cookie!!", 60000)
            first = syn_room(tun, peer)
            tun.ep.connect(peer, 40000, 1, 0.0, data=b"x" * 70000)
            syn = [seg for _, seg in tun.ep.segments_to_send(0.0)]
            assert len(syn) == 1 and len(syn[0].payload) == first   # byte for byte what the engine sends
            tun.ep.tfo_cookies[peer] = (b"cookie!!", 1000)
            small_server = syn_room(tun, peer)
            tun.ep.tfo_cookies[peer] = (b"cookie!!", 60000)
            tun.paths[peer] = PathMtu(peer, 0.0, 1200, False)       # only the base size validated
            base = syn_room(tun, peer)
            return first, small_server, base, tun.config, tun.mss_for_datagram(1200)
        finally:
            tun.close()

    first, small_server, base, cfg, mss_1200 = asyncio.run(run())
    syn_options = 4 + 12 + 4 + 12          # MSS; SACK-permitted + timestamps; window scale; the cookie
    assert cfg.mss > 60000 and first == cfg.send_mss - syn_options == mss_for(socket.AF_INET, 4) - syn_options
    assert small_server == 1000 - syn_options
    assert base == mss_1200 - syn_options


async def _first_connection_on_a_new_session(rtt: float) -> dict:
    """A secure tunnel over a path of ``rtt``; the first inner connection opens while the
    DTLS handshake runs. Its stats once established."""
    server_t, client_t = _secure("server"), _secure("client")
    cfg = engine_config(socket.AF_INET, server_t.overhead)
    accepted: asyncio.Queue[Channel] = asyncio.Queue()
    server = Tunnel(_delayed_socket(rtt / 2), server_t, cfg, on_accept=accepted.put_nowait)
    server.listen()
    client = Tunnel(_delayed_socket(rtt / 2), client_t, cfg)
    try:
        ch = client.connect(server.usock.local_address())
        await asyncio.wait_for(ch.connected, 10)
        return ch.conn.stats()
    finally:
        client.close()
        server.close()


def test_the_first_syn_waits_for_the_secure_session_and_is_timed_from_then() -> None:
    """The DTLS handshake takes round trips of its own; the SYN leaves when it is done, so
    the handshake's RTT sample is the path's, not the session set-up plus the path's."""
    rtt = 0.3
    st = asyncio.run(_first_connection_on_a_new_session(rtt))
    assert rtt <= st["srtt"] < rtt + 0.1, st["srtt"]
    assert st["retransmitted_segments"] == 0 and st["rto_count"] == 0


async def _new_session_exchange(rtt: float, *, cookie: bool = False) -> tuple[float, dict, bytes, dict]:
    """Open the first connection of a new secure session over a path of ``rtt`` (with a
    Fast Open cookie already cached for the session when ``cookie``), send a request and
    read it back on the server: (seconds to connected, client stats, bytes the server
    got, client endpoint counters)."""
    server_t, client_t = _secure("server"), _secure("client")
    cfg = engine_config(socket.AF_INET, server_t.overhead, fast_open=True)
    accepted: asyncio.Queue[Channel] = asyncio.Queue()
    server = Tunnel(_delayed_socket(rtt / 2), server_t, cfg, on_accept=accepted.put_nowait)
    server.listen()
    client = Tunnel(_delayed_socket(rtt / 2), client_t, cfg)
    request = b"GET / HTTP/1.0\r\n\r\n" * 50
    try:
        addr = server.usock.local_address()
        start = asyncio.get_running_loop().time()
        session = client_t.open(addr, start)
        if cookie:
            client.ep.tfo_cookies[session] = (b"\x01" * 8, 1400)   # as after an earlier connection
        ch = client.connect(addr, peer=session, data=request)
        await asyncio.wait_for(ch.connected, 10)
        took = asyncio.get_running_loop().time() - start
        peer_ch = await asyncio.wait_for(accepted.get(), 10)
        got = b""
        while len(got) < len(request):
            got += await asyncio.wait_for(peer_ch.read(), 10)
        return took, ch.conn.stats(), got, dict(client_t.ep.counters)
    finally:
        client.close()
        server.close()


def test_the_first_syn_rides_behind_the_client_proof() -> None:
    """Three round trips to a connection on a new session, not five: the cookie exchange,
    the key exchange, then the client's Finished flight with its proof and the SYN right
    behind it (PROTOCOL.md §8.1), answered by the server's Finished, its proof and the
    SYN-ACK. The proofs no longer wait for the server's Finished, nor the SYN for the
    server's proof."""
    rtt = 0.3
    took, st, got, counters = asyncio.run(_new_session_exchange(rtt))
    assert 3 * rtt <= took < 3.6 * rtt, took
    assert got == b"GET / HTTP/1.0\r\n\r\n" * 50
    assert st["retransmitted_segments"] == 0 and st["rto_count"] == 0
    assert counters["drop_not_established"] == 0


def test_a_fast_open_syn_before_the_server_proof_goes_without_its_data() -> None:
    """With a cookie cached, the SYN would carry the request; before the server's proof
    no data may leave (PROTOCOL.md §8.1), so the SYN goes alone and the request follows
    the handshake: nothing dropped, nothing waits for a retransmission timeout."""
    rtt = 0.2
    took, st, got, counters = asyncio.run(_new_session_exchange(rtt, cookie=True))
    assert got == b"GET / HTTP/1.0\r\n\r\n" * 50
    assert counters["drop_not_established"] == 0 and st["rto_count"] == 0
    assert took < 3.6 * rtt, took


def test_the_first_syn_is_timed_from_the_round_trip_the_handshake_measured() -> None:
    """A lost first SYN waited 1 s (RFC 6298's initial RTO); the DTLS handshake had just
    measured the path, so the SYN's timer starts from that round trip instead
    (Endpoint.rtt_hint): SRTT 0.2 s and RTTVAR 0.1 s give 0.2 + 4 x 0.1 = 0.6 s."""
    rtt = 0.2

    async def run() -> tuple[float | None, float | None]:
        server_t, client_t = _secure("server"), _secure("client")
        cfg = engine_config(socket.AF_INET, server_t.overhead)
        server = Tunnel(_delayed_socket(rtt / 2), server_t, cfg)
        server.listen()
        client = Tunnel(_delayed_socket(rtt / 2), client_t, cfg)
        try:
            ch = client.connect(server.usock.local_address())
            seen = None
            while not ch.connected.done():
                if ch.conn.state == State.SYN_SENT and seen is None and ch.peer.opening:
                    seen = ch.conn.rtt.rto
                await asyncio.sleep(0.005)
            return seen, ch.peer.handshake_rtt
        finally:
            client.close()
            server.close()

    syn_rto, measured = asyncio.run(run())
    assert measured is not None and rtt <= measured < rtt + 0.05, measured
    assert syn_rto is not None and syn_rto == pytest.approx(measured + 4 * measured / 2)


# ------------------------------------------------------------------ Fast Open in forward
@pytest.mark.parametrize("args, env, expected", [
    ([], {}, True),
    (["--no-fast-open"], {}, False),
    ([], {"TOU_FAST_OPEN": "0"}, False),
    (["--fast-open"], {"TOU_FAST_OPEN": "0"}, True),
])
@pytest.mark.parametrize("side", ["client", "serve"])
def test_forward_fast_open_switch_reaches_the_engine(monkeypatch, tmp_path, args, env, expected, side) -> None:
    """``--no-fast-open`` (or TOU_FAST_OPEN=0) turns RFC 7413 off in both forward roles."""
    forward_mod = importlib.import_module("toucli.commands.forward")
    seen = {}

    def spy(*a, **k):
        seen["fast_open"] = k["fast_open"]
        raise tunnel_mod.TunnelError("stop here")         # the tunnel is not needed

    monkeypatch.setattr(forward_mod, "engine_config", spy)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    where = ["--serve", f"127.0.0.1:{free}"] if side == "serve" else ["-L", "40999:127.0.0.1:9", "127.0.0.1:9"]
    r = CliRunner().invoke(main, ["forward", "--insecure", "--quiet", *args, *where],
                           env={"XDG_CONFIG_HOME": str(tmp_path), **env})
    assert "stop here" in r.output and r.exit_code == 1
    assert seen["fast_open"] is expected


def _delayed_socket(delay: float):
    import random

    from toucli.commands.demo import LinkedUdpSocket
    from toucli.link import Link as PathLink

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    return LinkedUdpSocket(s, PathLink(random.Random(1), delay))


async def _close_forward(srv, link, client, ctunnel, stunnel, server=None) -> None:
    """Tear down a target server, a forward client (and server) and their two tunnels."""
    srv.close()
    link.close()
    await client.close()
    if server is not None:
        for t in list(server.tasks):
            t.cancel()
        await asyncio.gather(*server.tasks, return_exceptions=True)
    ctunnel.close()
    stunnel.close()


async def _forward_twice(rtt: float):
    """A forward server and client (cleartext, Fast Open on as `tou forward` sets it) over a path
    of ``rtt``; two CONNECTs to a local TCP target. Returns per connection: (time the client's
    handshake completed, time the target accepted), both relative to the open() call."""
    from toucli.forward import TYPE_CONNECT, ForwardClient, ForwardServer, Link, Log, Permits

    loop = asyncio.get_running_loop()
    cfg = engine_config(socket.AF_INET, PlainTransport.overhead, fast_open=True)
    stunnel = Tunnel(_delayed_socket(rtt / 2), PlainTransport(), cfg, pmtu=True)
    ForwardServer(stunnel, Permits([]), Log())
    ctunnel = Tunnel(_delayed_socket(rtt / 2), PlainTransport(), cfg, pmtu=True)
    addr = stunnel.usock.local_address()
    link = Link(ctunnel, addr, Log(), secure=False)
    client = ForwardClient(ctunnel, link, Log(), wait=5.0)
    link.start()
    accepted: asyncio.Queue[float] = asyncio.Queue()

    async def target(reader, writer):
        accepted.put_nowait(loop.time())
        writer.write(await reader.read(5))
        await writer.drain()
        writer.close()

    srv = await asyncio.start_server(target, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    out = []
    try:
        for _ in range(2):
            start = loop.time()
            ch = await client.open(TYPE_CONNECT, "127.0.0.1", port)
            conn_stats = ch.conn.stats()
            t_accept = await asyncio.wait_for(accepted.get(), 5)
            await ch.write(b"hello")
            assert await ch.read() == b"hello"
            out.append((conn_stats, t_accept - start))
            ch.write_eof()
            await asyncio.wait_for(ch.wait_closed(), 5)
        return out, stunnel.ep.stats(), ctunnel.ep.stats()
    finally:
        await _close_forward(srv, link, client, ctunnel, stunnel)


def test_forward_request_rides_in_the_syn_on_a_warm_session() -> None:
    rtt = 0.2
    (first, second), sstats, cstats = asyncio.run(_forward_twice(rtt))
    # the first connection learns the cookie; the second brings the request in its SYN
    assert cstats["tfo_cookies"] == 1
    assert sstats["tfo_accepted"] == 1 and sstats["tfo_refused"] == 0
    assert first[0]["tfo_syn_data"] == 0 and second[0]["tfo_syn_data"] > 0 and second[0]["fast_open"]
    # without Fast Open the target is dialled after 1.5 RTT, with it after 0.5 RTT
    assert first[1] >= 1.5 * rtt - 0.01
    assert second[1] < 1.0 * rtt


def _recording_echo(loop, arrivals: asyncio.Queue):
    """An echo server's handler that queues (time of the first byte, every byte) per connection."""

    async def echo(reader, writer):
        got = bytearray()
        first = None
        while data := await reader.read(65536):
            if first is None:
                first = loop.time()
            got += data
            writer.write(data)
            await writer.drain()
        writer.close()
        arrivals.put_nowait((first, bytes(got)))

    return echo


async def _timed_echo(loop, port: int, payload: bytes, arrivals: asyncio.Queue) -> tuple[float, bool, bool]:
    """Send ``payload`` through the forward on ``port`` and read the echo: (time until the
    target saw its first byte, target got the payload, the echo equals the payload)."""
    start = loop.time()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(payload)
    await writer.drain()
    writer.write_eof()
    echoed = await asyncio.wait_for(reader.read(-1), 20)
    writer.close()
    first, got = await asyncio.wait_for(arrivals.get(), 5)
    return first - start, got == payload, echoed == payload


async def _pipelined_local_forward(rtt: float, sizes: list[int]):
    """``-L`` through a forward client and server (Fast Open on, as `tou forward` sets it) over a
    path of ``rtt``: for each size a local application connects, writes that many bytes at once
    and reads the echo; then one connection to a target the server does not permit. Returns
    per connection (first bytes at the target - local connect, bytes the target got, echo),
    the refused connection's read, the client's log lines, the server endpoint's stats and the
    refused port."""
    import hashlib

    from toucli.forward import ForwardClient, ForwardServer, Link, LocalForward, Log, Permits

    loop = asyncio.get_running_loop()
    arrivals: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    srv = await asyncio.start_server(_recording_echo(loop, arrivals), "127.0.0.1", 0)
    tport = srv.sockets[0].getsockname()[1]
    other = socket.socket()
    other.bind(("127.0.0.1", 0))
    oport = other.getsockname()[1]             # bound, not listening, and not permitted anyway
    cfg = engine_config(socket.AF_INET, PlainTransport.overhead, fast_open=True)
    stunnel = Tunnel(_delayed_socket(rtt / 2), PlainTransport(), cfg, pmtu=True)
    ForwardServer(stunnel, Permits([f"127.0.0.1:{tport}"]), Log())
    ctunnel = Tunnel(_delayed_socket(rtt / 2), PlainTransport(), cfg, pmtu=True)
    lines: list[str] = []
    link = Link(ctunnel, stunnel.usock.local_address(), Log(), secure=False)
    client = ForwardClient(ctunnel, link, Log(write=lines.append), wait=5.0)
    link.start()
    good = client.listen_local(LocalForward(None, 0, "127.0.0.1", tport, "good"))[0].getsockname()[1]
    bad = client.listen_local(LocalForward(None, 0, "127.0.0.1", oport, "bad"))[0].getsockname()[1]
    out = []
    try:
        for i, size in enumerate(sizes):
            payload = b"".join(hashlib.sha256(bytes([i, j % 256, j // 256])).digest()
                               for j in range(size // 32 + 1))[:size]
            out.append(await _timed_echo(loop, good, payload, arrivals))
            await asyncio.sleep(0.05)
        reader, writer = await asyncio.open_connection("127.0.0.1", bad)
        refused = await asyncio.wait_for(reader.read(100), 5)
        writer.close()
        await asyncio.sleep(0.1)
        return out, refused, lines, stunnel.ep.stats(), oport
    finally:
        other.close()
        await _close_forward(srv, link, client, ctunnel, stunnel)


def test_local_forward_pipelines_the_first_bytes_into_the_syn() -> None:
    rtt = 0.2
    out, refused, lines, sstats, oport = asyncio.run(_pipelined_local_forward(rtt, [5000, 300_000, 1]))
    (cold, *_), (warm, *_), (tiny, *_) = out
    # every byte arrives, in both directions
    assert all(ok_up and ok_down for _, ok_up, ok_down in out)
    # cold: handshake first (no cookie yet), then the request and data: 1.5 RTT
    assert cold >= 1.5 * rtt - 0.01
    # warm: request + first bytes in the SYN, the server dials at once: half a round trip
    assert warm <= 0.5 * rtt + 0.05 and tiny <= 0.5 * rtt + 0.05
    assert sstats["tfo_accepted"] >= 2 and sstats["tfo_refused"] == 0
    # a target the server refuses still closes the local connection, with one log line
    assert refused == b""
    assert lines == [f"tou: -L bad: server: 127.0.0.1:{oport} is not permitted (--permit-open)"]




async def _pipelined_remote_forward(rtt: float, sizes: list[int]) -> list[tuple[float, bool, bool]]:
    """``-R`` over a path of ``rtt`` (Fast Open on): the server listens, each local application
    connects there, writes ``size`` bytes and reads the echo from the client side's target.
    Per connection: (first bytes at the target - connect, target got them all, echo intact)."""
    from toucli.forward import ForwardClient, ForwardServer, Link, Log, Permits, RemoteForward

    loop = asyncio.get_running_loop()
    arrivals: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    srv = await asyncio.start_server(_recording_echo(loop, arrivals), "127.0.0.1", 0)
    tport = srv.sockets[0].getsockname()[1]
    cfg = engine_config(socket.AF_INET, PlainTransport.overhead, fast_open=True)
    stunnel = Tunnel(_delayed_socket(rtt / 2), PlainTransport(), cfg, pmtu=True)
    server = ForwardServer(stunnel, Permits([]), Log(), allow_listen=True)
    ctunnel = Tunnel(_delayed_socket(rtt / 2), PlainTransport(), cfg, pmtu=True)
    link = Link(ctunnel, stunnel.usock.local_address(), Log(), secure=False)
    client = ForwardClient(ctunnel, link, Log(), wait=5.0)
    link.start()
    out = []
    try:
        rport = await asyncio.wait_for(client.register(RemoteForward("127.0.0.1", 0, "127.0.0.1", tport, "r")), 5)
        for i, size in enumerate(sizes):
            payload = bytes((i + j) % 251 for j in range(size))
            out.append(await _timed_echo(loop, rport, payload, arrivals))
            await asyncio.sleep(0.05)
        return out
    finally:
        await _close_forward(srv, link, client, ctunnel, stunnel, server)


def test_remote_forward_pipelines_the_first_bytes_into_the_syn() -> None:
    rtt = 0.2
    out = asyncio.run(_pipelined_remote_forward(rtt, [3000, 100_000]))
    (cold, *_), (warm, *_) = out
    assert all(ok_up and ok_down for _, ok_up, ok_down in out)
    assert cold >= 1.5 * rtt - 0.01           # the server has no cookie of the client yet
    assert warm <= 0.5 * rtt + 0.05


async def _forwarded_before_the_listen_reply(reply_delay: float) -> tuple[bytes, list[str]]:
    """``-R`` on a fixed port, where the server's reply with the port reaches the client
    ``reply_delay`` s late: an application connects as soon as the server listens, so its
    FORWARDED connection reaches the client before the reply. Returns the echo it reads and
    the client's log."""
    from toucli.forward import TYPE_LISTEN, ForwardClient, ForwardServer, Link, Log, Permits, RemoteForward

    async def echo(reader, writer):
        writer.write(await reader.read(100))
        await writer.drain()
        writer.close()

    srv = await asyncio.start_server(echo, "127.0.0.1", 0)
    tport = srv.sockets[0].getsockname()[1]
    cfg = engine_config(socket.AF_INET, PlainTransport.overhead, fast_open=True)
    stunnel = Tunnel(_delayed_socket(0.01), PlainTransport(), cfg, pmtu=True)
    server = ForwardServer(stunnel, Permits([]), Log(), allow_listen=True)
    ctunnel = Tunnel(_delayed_socket(0.01), PlainTransport(), cfg, pmtu=True)
    lines: list[str] = []
    link = Link(ctunnel, stunnel.usock.local_address(), Log(), secure=False)
    client = ForwardClient(ctunnel, link, Log(write=lines.append), wait=5.0)
    plain_open = client.open

    async def open_with_a_late_reply(rtype, host, port, *args, **kw):
        ch = await plain_open(rtype, host, port, *args, **kw)
        if rtype == TYPE_LISTEN:
            read = ch.read

            async def late_read(n=-1):
                await asyncio.sleep(reply_delay)
                return await read(n)
            ch.read = late_read
        return ch

    client.open = open_with_a_late_reply
    link.start()
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    rport = probe.getsockname()[1]
    probe.close()
    try:
        reg = asyncio.ensure_future(client.register(RemoteForward("127.0.0.1", rport, "127.0.0.1", tport, "r")))
        while True:                                      # connect the moment the server listens
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", rport)
                break
            except ConnectionRefusedError:
                await asyncio.sleep(0.005)
        assert not reg.done()
        writer.write(b"early bird")
        await writer.drain()
        try:
            got = await asyncio.wait_for(reader.read(100), 5)
        except ConnectionResetError:
            got = b"(reset)"
        writer.close()
        assert await asyncio.wait_for(reg, 5) == rport
        return got, lines
    finally:
        await _close_forward(srv, link, client, ctunnel, stunnel, server)


def test_a_forwarded_connection_that_overtakes_the_listen_reply_is_served() -> None:
    got, lines = asyncio.run(_forwarded_before_the_listen_reply(0.3))
    assert got == b"early bird"
    assert not any("refused" in line for line in lines), lines


def _window_after_reading(amounts: tuple[int, ...]) -> int:
    """A receiver starting at a 256 KiB window gets and reads ``amounts`` bytes in
    successive 100 ms round trips; its window target once the next one begins."""
    b = Endpoint(ConnectionConfig(timestamps=False, initial_recv_window=256 << 10), b"b" * 32)
    b.listen(1)
    a = Endpoint(ConnectionConfig(timestamps=False, pacing=False), b"a" * 32)
    ca = a.connect("B", 40000, 1, 0.0)
    _pump(a, b, 0.0)
    cb = next(iter(b.connections.values()))
    assert cb.rcv_space == 256 << 10
    now, off, mss = 0.0, 0, 1000
    for amount in amounts:
        now += 0.1
        for _ in range(amount // mss):
            b.receive("A", _data_from(ca, cb, off, mss), now)
            off += mss
            cb.recv()
            b.segments_to_send(now)
    b.receive("A", _data_from(ca, cb, off, mss), now + 0.1)    # the next round trip's first arrival measures
    return cb.rcv_space


def test_receive_window_keeps_ahead_of_a_doubling_sender() -> None:
    """Dynamic right-sizing (as Linux's tcp_rcv_space_adjust): per RTT the window is three
    times what the application read, plus the growth of that amount, so a sender doubling
    its rate per round trip is not held by the window."""
    space = _window_after_reading((100_000, 200_000))
    # The first round trip read 100 kB against a start of one initial window (14 kB):
    # want = 3 x 100 kB + 16 x 1400, grown by 2 x want x 86/14: 4.28 MB. The second
    # (200 kB, doubling) asks for less, and the window never shrinks.
    want = 3 * 100_000 + 16 * 1400
    assert space == want + 2 * want * 86_000 // 14_000 == 4_283_314, space


def test_receive_window_grows_from_the_first_round_trips() -> None:
    """The measure starts from one initial window (Linux's rcvq_space), so a sender's
    first doublings already grow the window: at 100 ms, 30 then 60 kB per round trip
    (2.4 and 4.8 Mbit/s) take it past its 256 KiB start. Measured from half the start
    instead, it stayed there until the sender reached 10 Mbit/s, and BBR's start-up,
    held by the window for a few rounds, took that for a full pipe."""
    space = _window_after_reading((30_000, 60_000))
    assert space > 300_000, space


def _data_from(src, dst, off: int, n: int):
    from toucli.stack.segment import ACK, Segment

    return Segment(src.local_port, src.remote_port, (dst.irs + 1 + off) & 0xFFFFFFFF,
                   (dst.iss + 1) & 0xFFFFFFFF, ACK, 65535, bytes(n))


def test_a_full_send_buffer_is_not_an_application_limit() -> None:
    """The application writes faster than the send buffer drains: with everything in the
    buffer sent, the sender waits on its own buffer, not on the application, so rate
    samples stay valid for BBR's full-pipe test and the reason shows as ``sndbuf``."""
    b = Endpoint(ConnectionConfig(), b"b" * 32)
    b.listen(1)

    def sender(port: int, write: int):
        a = Endpoint(ConnectionConfig(pacing=False, send_buffer=64_000), b"a" * 32)
        ca = a.connect("B", port, 1, 0.0)
        _pump(a, b, 0.0)
        ca.send(b"w" * 1000)                 # a first exchange ends the idle start's app-limited phase
        _pump(a, b, 0.05)
        _pump(a, b, 0.1)
        marked = ca._app_limited_until        # (set when that first write was all sent)
        ca.cc.cwnd = 200_000
        taken = ca.send(b"z" * write)
        a.segments_to_send(0.2)              # everything buffered goes out; nothing is acked yet
        return ca, taken, marked

    full, taken, marked = sender(40000, 100_000)
    assert taken < 100_000 and full.stats()["unsent_bytes"] == 0
    assert full.stats()["limited_by"] == "sndbuf" and full._app_limited_until == marked
    idle, taken, marked = sender(40001, 10_000)
    assert taken == 10_000
    assert idle.stats()["limited_by"] == "app" and idle._app_limited_until > marked


# ------------------------------------------------------------------ sender statistics
def test_unsent_bytes_limited_by_and_bytes_acked_without_syn_fin() -> None:
    a = Endpoint(ConnectionConfig(pacing=False, initial_window_segments=2), b"a" * 32)
    b = Endpoint(ConnectionConfig(), b"b" * 32)
    b.listen(1)
    ca = a.connect("B", 40000, 1, 0.0)
    _pump(a, b, 0.0)
    cb = next(iter(b.connections.values()))
    st = ca.stats()
    assert st["bytes_acked"] == 0 and st["unsent_bytes"] == 0 and st["limited_by"] == "app"
    ca.send(b"z" * 10_000)
    assert ca.stats()["unsent_bytes"] == 10_000
    sent = [s for _, s in a.segments_to_send(0.01)]
    mss = ca.eff_mss
    assert sum(len(s.payload) for s in sent) == 2 * mss               # the initial window of two segments
    st = ca.stats()
    assert st["unsent_bytes"] == 10_000 - 2 * mss and st["limited_by"] == "cwnd"
    # a receiver whose window is nearly closed: the peer's window limits
    a2 = Endpoint(ConnectionConfig(pacing=False), b"a" * 32)
    b2 = Endpoint(ConnectionConfig(recv_buffer=4096, initial_recv_window=4096, window_scaling=False), b"b" * 32)
    b2.listen(1)
    c2 = a2.connect("B", 40000, 1, 0.0)
    _pump(a2, b2, 0.0)
    c2.send(b"w" * 20_000)
    for _, s in a2.segments_to_send(0.1):
        pass                                                       # lost: the window stays full
    assert c2.stats()["limited_by"] == "rwnd" and c2.stats()["unsent_bytes"] > 0
    # the FIN is not a byte: 10 000 bytes and a FIN acknowledged count 10 000
    for s in sent:
        b.receive("A", s, 0.02)
    _pump(a, b, 0.03)
    ca.shutdown()
    for t in (0.04, 0.1, 0.2, 0.3, 0.4):
        _pump(a, b, t)
        cb.recv()
    assert ca.snd_una == ca.fin_off + 1
    st = ca.stats()
    assert st["bytes_acked"] == 10_000 and st["unsent_bytes"] == 0 and st["limited_by"] == "app"
    # pacing holds a burst back
    p = Endpoint(ConnectionConfig(pacing=True), b"p" * 32)
    q = Endpoint(ConnectionConfig(), b"q" * 32)
    q.listen(1)
    cp = p.connect("B", 40000, 1, 0.0)
    _pump(p, q, 0.0)
    _pump(p, q, 0.05)
    cp.send(b"p" * 200_000)
    p.segments_to_send(0.06)
    assert cp.stats()["limited_by"] in ("pacing", "cwnd")
