"""The asyncio runtime in one process: two tunnels over loopback UDP, cleartext transport."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket

import pytest

from toucli.stack.gue import PLAIN_HEADER
from toucli.stack.segment import ACK, SYN, Segment
from toucli.stack.tcp import encode_segment
from toucli.tunnel import (
    BATCH_PER_CONNECTION, Channel, FdStream, PlainTransport, Tunnel, TunnelError, engine_config, mss_for,
    splice,
)
from toucli.udp import UdpSocket


def test_mss_from_the_path() -> None:
    # 1500 - IP - UDP 8 - GUE 4 - TCP 20; options come out of the MSS (RFC 9293 §3.7.1)
    assert mss_for(socket.AF_INET, 4) == 1500 - 20 - 8 - 4 - 20 == 1448
    assert mss_for(socket.AF_INET6, 4) == 1428
    assert mss_for(socket.AF_INET, 53) == 1399     # DTLS 1.2 AES-GCM overhead


def test_keepalive_finds_a_dead_peer_within_the_setting() -> None:
    cfg = engine_config(socket.AF_INET, 4, keepalive=30)
    assert cfg.keepalive_idle + cfg.keepalive_probes * cfg.keepalive_interval == pytest.approx(30)
    assert cfg.user_timeout == 30
    assert engine_config(socket.AF_INET, 4, keepalive=0).keepalive_idle is None


def test_plain_transport_round_trip_and_drops() -> None:
    tr = PlainTransport()
    seg = Segment(40000, 1, 123, 0, SYN, 65535, mss=1408)
    data, addr = tr.encode(("127.0.0.1", 9), seg)
    assert data[:4] == PLAIN_HEADER == b"\x00\x06\x00\x00" and addr == ("127.0.0.1", 9)
    out: list = []
    tr.decode(memoryview(data), ("127.0.0.1", 9), 0.0, out)
    assert out == [(("127.0.0.1", 9), seg)]
    for bad in (b"\x00\x06", b"\x40" + data[1:], b"\x00\x11\x00\x00" + data[4:], data[:-1] + b"\x00" * 0 + b"!"):
        tr.decode(memoryview(bad), ("127.0.0.1", 9), 0.0, out)
    assert len(out) == 1 and tr.drops == 4


class Pair:
    """A listening and a connecting tunnel on two loopback sockets."""

    def __init__(self, **cfg_kw) -> None:
        self.accepted: asyncio.Queue[Channel] = asyncio.Queue()
        cfg = engine_config(socket.AF_INET, 4, **cfg_kw)
        self.server = Tunnel(UdpSocket.bind("127.0.0.1", 0), PlainTransport(), cfg,
                             on_accept=self.accepted.put_nowait)
        self.server.listen()
        self.client = Tunnel(UdpSocket.bind("127.0.0.1", 0), PlainTransport(), cfg)

    @property
    def address(self):
        return self.server.usock.local_address()

    async def open(self) -> tuple[Channel, Channel]:
        ch = self.client.connect(self.address)
        await asyncio.wait_for(ch.connected, 5)
        return ch, await asyncio.wait_for(self.accepted.get(), 5)

    def close(self) -> None:
        self.client.close()
        self.server.close()


async def read_all(ch: Channel) -> bytes:
    parts = []
    while data := await ch.read():
        parts.append(data)
    return b"".join(parts)


def test_bulk_both_ways_with_half_close() -> None:
    async def main() -> None:
        p = Pair()
        try:
            a, b = await p.open()
            up, down = os.urandom(3_000_000), os.urandom(2_000_000)

            async def send(ch: Channel, data: bytes) -> None:
                await ch.write(data)
                ch.write_eof()

            results = await asyncio.gather(send(a, up), send(b, down), read_all(a), read_all(b))
            assert results[3] == up and results[2] == down
            await asyncio.wait_for(asyncio.gather(a.wait_closed(), b.wait_closed()), 5)
            assert a.finished and b.finished
        finally:
            p.close()

    asyncio.run(main())


@pytest.mark.python_engine
def test_at_most_16_segments_per_connection_between_drains() -> None:
    async def main() -> None:
        p = Pair()
        fed: list[int] = []
        count = 0
        ep = p.server.ep
        real_receive, real_output = ep.receive, p.server._output

        def receive(peer, seg, now):
            nonlocal count
            count += 1
            real_receive(peer, seg, now)

        def output(now):
            nonlocal count
            fed.append(count)
            count = 0
            real_output(now)

        ep.receive = receive
        p.server._output = output
        try:
            a, b = await p.open()
            await a.write(os.urandom(2_000_000))
            a.write_eof()
            assert len(await read_all(b)) == 2_000_000
        finally:
            p.close()
        assert max(fed) <= BATCH_PER_CONNECTION
        assert max(fed) == BATCH_PER_CONNECTION     # batches do reach the limit on a bulk transfer

    asyncio.run(main())


def test_slow_reader_stops_the_writer_and_memory_stays_bounded() -> None:
    buffer = 256 << 10

    async def main() -> None:
        p = Pair(buffer=buffer)
        try:
            a, b = await p.open()
            sent = hashlib.sha256()
            total = 0

            async def writer() -> None:
                nonlocal total
                while True:
                    chunk = os.urandom(64 << 10)
                    sent.update(chunk)
                    await a.write(chunk)
                    total += len(chunk)

            w = asyncio.ensure_future(writer())
            await asyncio.sleep(0.5)               # the reader reads nothing for a while
            stalled_at = total
            # Everything written sits in the two engine buffers and the chunk being written.
            slack = 4 * a.conn.eff_mss            # window probes may push a few bytes past the window
            held = len(a.conn.snd_buf) + b.conn.readable
            assert held <= 2 * buffer + slack
            assert total <= 2 * buffer + slack + (64 << 10)
            await asyncio.sleep(0.3)
            assert total == stalled_at             # the writer is blocked, not buffering
            # Now read slowly: the writer moves exactly as fast as the reader.
            got = hashlib.sha256()
            received = 0
            while received < 4 * buffer:
                data = await b.read(16 << 10)
                got.update(data)
                received += len(data)
                await asyncio.sleep(0.001)
                assert total - received <= 2 * buffer + slack + (64 << 10)
            w.cancel()
        finally:
            p.close()

    asyncio.run(main())


def test_connect_to_a_port_nobody_listens_on_is_refused() -> None:
    async def main() -> None:
        p = Pair()
        try:
            ch = p.client.connect(p.address, remote_port=4242)
            with pytest.raises(TunnelError, match="connection refused by 127.0.0.1"):
                await asyncio.wait_for(ch.connected, 5)
        finally:
            p.close()

    asyncio.run(main())


def test_abort_resets_the_peer() -> None:
    async def main() -> None:
        p = Pair()
        try:
            a, b = await p.open()
            a.abort()
            with pytest.raises(TunnelError, match="reset"):
                await asyncio.wait_for(b.read(), 5)
        finally:
            p.close()

    asyncio.run(main())


def test_close_all_sends_fin_on_every_channel() -> None:
    async def main() -> None:
        p = Pair()
        try:
            pairs = [await p.open() for _ in range(3)]
            closing = asyncio.ensure_future(p.client.close_all(timeout=5))
            for _, b in pairs:
                assert await asyncio.wait_for(b.read(), 5) == b""   # FIN, not a reset
                b.write_eof()
            await closing
            assert all(a.finished and a.error is None for a, _ in pairs)
        finally:
            p.close()

    asyncio.run(main())


def test_one_timer_drives_retransmission_of_a_lost_syn() -> None:
    async def main() -> None:
        p = Pair()
        try:
            lost = []
            real = p.client.usock.send

            def lose_first(datagrams):
                if not lost:
                    lost.append(datagrams)
                    return
                real(datagrams)

            p.client.usock.send = lose_first
            ch = p.client.connect(p.address)
            await asyncio.wait_for(ch.connected, 5)   # the SYN went again after the RTO
            assert lost and ch.conn.stats()["retransmitted_segments"] >= 1
        finally:
            p.close()

    asyncio.run(main())


def test_garbage_datagrams_are_ignored() -> None:
    async def main() -> None:
        p = Pair()
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                for junk in (b"", b"\xff" * 50, PLAIN_HEADER + b"\x00" * 10,
                             PLAIN_HEADER + encode_segment(Segment(1, 1, 0, 0, ACK, 0))[:-2] + b"zz"):
                    s.sendto(junk, p.address)
            a, b = await p.open()
            await a.write(b"still fine")
            a.write_eof()
            assert await read_all(b) == b"still fine"
            assert p.server.transport.drops >= 3
        finally:
            p.close()

    asyncio.run(main())


# ------------------------------------------------------------------ Pump (splice)
def _small_socketpair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    for s in (a, b):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return a, b


def test_splice_moves_exact_bytes_both_ways_past_a_slow_local_reader() -> None:
    """Local socket <-> channel through a Pump, like ``forward``: the local reader is
    slow, so the pump's writes would block; nothing is lost or reordered, the peer's
    writer is held back by the closed window, and half-close travels both ways."""
    async def main() -> None:
        p = Pair(buffer=256 << 10)
        loop = asyncio.get_running_loop()
        try:
            a, b = await p.open()
            near, far = _small_socketpair()
            far.setblocking(False)
            up, down = os.urandom(1_000_000), os.urandom(3_000_000)
            pump = asyncio.ensure_future(splice(a, FdStream(near.fileno(), sock=near),
                                                FdStream(near.fileno(), sock=near)))

            async def remote() -> bytes:             # the far channel: send down, collect up
                sender = asyncio.ensure_future(b.write(down))
                got = await read_all(b)
                await sender
                b.write_eof()
                return got

            async def local() -> bytes:              # a slow local application on the other end
                await loop.sock_sendall(far, up)
                far.shutdown(socket.SHUT_WR)
                parts = []
                while True:
                    await asyncio.sleep(0.002)
                    data = await loop.sock_recv(far, 16384)
                    if not data:
                        return b"".join(parts)
                    parts.append(data)

            got_up, got_down = await asyncio.wait_for(asyncio.gather(remote(), local()), 60)
            await asyncio.wait_for(pump, 10)
            assert hashlib.sha256(got_up).digest() == hashlib.sha256(up).digest()
            assert hashlib.sha256(got_down).digest() == hashlib.sha256(down).digest()
            assert a.finished
            far.close()
        finally:
            p.close()

    asyncio.run(main())


async def _two_waiting_messages(p: Pair, *, eof: bool) -> tuple[Channel, Channel, Channel]:
    """Two connections whose accepted ends hold 20000 x "A" and 20000 x "B" unread
    (and the FIN after them with ``eof``); returns the first sender and both receivers."""
    (a1, b1), (a2, b2) = await p.open(), await p.open()
    await a1.write(b"A" * 20000)
    await a2.write(b"B" * 20000)
    if eof:
        a1.write_eof()
        a2.write_eof()
    while (len(b1.conn.rcv_buf) < 20000 or len(b2.conn.rcv_buf) < 20000
           or (eof and not (b1.at_eof and b2.at_eof))):
        await asyncio.sleep(0.01)
    return a1, b1, b2


def _one_page_pipe() -> tuple[int, int]:
    import fcntl

    r, w = os.pipe()
    fcntl.fcntl(w, 1031, 4096)                       # F_SETPIPE_SZ: a one-page pipe
    os.set_blocking(r, False)
    return r, w


async def _read_pipe(r: int, seconds: float, until: int | None = None) -> bytes:
    """What a slow reader gets from ``r`` in ``seconds`` (or once it has ``until`` bytes)."""
    loop = asyncio.get_running_loop()
    out = bytearray()
    deadline = loop.time() + seconds
    while (until is None or len(out) < until) and loop.time() < deadline:
        await asyncio.sleep(0.005)
        try:
            out += os.read(r, 1000)
        except BlockingIOError:
            pass
    return bytes(out)


def test_pumps_sharing_a_sink_write_whole_chunks_in_turn() -> None:
    """``listen -k`` shares stdout: when one pump's chunk is cut short by a full pipe
    it owns the sink until the rest is out; the other waits instead of writing into
    the middle of it (or stealing its writability callback)."""
    async def main() -> None:
        p = Pair()
        r, w = _one_page_pipe()
        try:
            _a1, b1, b2 = await _two_waiting_messages(p, eof=True)
            sink = FdStream(w)
            pumps = [asyncio.ensure_future(splice(b, None, sink, close_sink=False)) for b in (b1, b2)]
            out = await _read_pipe(r, 10, until=40000)
            await asyncio.wait_for(asyncio.gather(*pumps), 10)
            assert out in (b"A" * 20000 + b"B" * 20000, b"B" * 20000 + b"A" * 20000)
        finally:
            os.close(r)
            os.close(w)
            p.close()

    asyncio.run(main())


def test_a_local_reader_that_goes_away_resets_the_connection_quietly() -> None:
    """A forwarded socket's application closes: the copy ends without an error (the local
    side chose to stop) and the peer learns it from a reset. (``tou connect | head -c 10``
    fails instead, ``reader_gone_ok=False``: tests/test_local_faults.py.)"""
    async def main() -> None:
        p = Pair()
        try:
            a, b = await p.open()
            r, w = os.pipe()
            os.close(r)                                # the reader is gone before anything arrives
            pump = asyncio.ensure_future(splice(a, None, FdStream(w)))
            await b.write(b"x" * 100_000)
            await asyncio.wait_for(pump, 5)            # returns; raises nothing
            with pytest.raises(TunnelError, match="reset"):
                await asyncio.wait_for(asyncio.shield(b.done), 5)
            os.close(w)
        finally:
            p.close()

    asyncio.run(main())


def test_a_cancelled_pump_leaves_the_shared_sink_alone() -> None:
    """A ``listen -k`` connection ended by ``-i`` while its chunk waits behind another
    pump's: after the owner finishes, nothing of the ended connection is written."""
    async def main() -> None:
        p = Pair()
        r, w = _one_page_pipe()
        try:
            a1, b1, b2 = await _two_waiting_messages(p, eof=False)
            sink = FdStream(w)
            first = asyncio.ensure_future(splice(b1, None, sink, close_sink=False))
            await asyncio.sleep(0)                   # b1's chunk fills the pipe: b1 owns the sink
            second = asyncio.ensure_future(splice(b2, None, sink, close_sink=False))
            await asyncio.sleep(0.05)
            assert sink.owner is not None and sink.waiting
            second.cancel()
            with pytest.raises(asyncio.CancelledError):
                await second
            assert not sink.waiting
            assert await _read_pipe(r, 3) == b"A" * 20000
            a1.write_eof()
            await asyncio.wait_for(first, 10)
        finally:
            os.close(r)
            os.close(w)
            p.close()

    asyncio.run(main())


def test_the_last_ack_grace_starts_only_once_our_fin_has_left(monkeypatch) -> None:
    """All data acknowledged and the peer's FIN in, but our FIN not yet sent
    (CLOSE-WAIT): the grace must not end the wait, or the session's close_notify reaches
    a receiver that never got the FIN (it exits 1). Once the FIN has left (LAST-ACK),
    the grace ends the wait as before."""
    import asyncio
    import types

    from toucli import tunnel
    from toucli.stack.connection import State

    monkeypatch.setattr(tunnel, "LAST_ACK_GRACE", 0.02)

    async def wait(state: State) -> bool:
        done = asyncio.get_running_loop().create_future()
        ch = types.SimpleNamespace(finished=False, error=None, done=done, all_data_acked=True,
                                   peer_closed=True, conn=types.SimpleNamespace(state=state))
        try:
            await asyncio.wait_for(tunnel._until_finished(ch), 0.3)
            return True
        except asyncio.TimeoutError:
            return False

    assert asyncio.run(wait(State.CLOSE_WAIT)) is False      # still waiting for the FIN to go
    assert asyncio.run(wait(State.LAST_ACK)) is True          # only its ACK is missing


def test_a_session_ended_by_the_peer_in_time_wait_is_a_clean_end() -> None:
    """Seen in bench/bulk.py (`tou listen -d > file`, 1 run in 15): the listener's FIN
    went first and was acknowledged; the client's FIN arrived behind the last data and
    was answered at once, and on loopback the client's close_notify came back within the
    same wake-up, while megabytes still waited for the slow file. Both FINs were in and
    ours acknowledged (TIME-WAIT): the end is clean, and every buffered byte still goes out."""
    from toucli.stack.connection import State
    from toucli.tunnel import SessionEndedByPeer

    class EndingTransport(PlainTransport):
        """Reports the client's session ended, in the dispatch where TIME-WAIT began."""
        tunnel: Tunnel
        ended = False

        def next_event(self):
            if not self.ended and any(c.state == State.TIME_WAIT for c in self.tunnel.ep.connections.values()):
                self.ended = True
                return "ended"
            return None

        def failure(self, event):
            peer = next(iter(self.tunnel.ep.connections.values())).peer
            return peer, SessionEndedByPeer("secure session ended: closed by peer")

    async def main() -> None:
        accepted: asyncio.Queue[Channel] = asyncio.Queue()
        cfg = engine_config(socket.AF_INET, 4)
        tr = EndingTransport()
        server = Tunnel(UdpSocket.bind("127.0.0.1", 0), tr, cfg, on_accept=accepted.put_nowait)
        tr.tunnel = server
        server.listen()
        client = Tunnel(UdpSocket.bind("127.0.0.1", 0), PlainTransport(), cfg)
        try:
            a = client.connect(server.usock.local_address())
            await asyncio.wait_for(a.connected, 5)
            b = await asyncio.wait_for(accepted.get(), 5)
            b.write_eof()                                 # `listen -d`: our FIN at once
            data = os.urandom(600_000)                    # b reads it only afterwards
            await a.write(data)
            a.write_eof()
            for _ in range(500):
                if tr.ended:
                    break
                await asyncio.sleep(0.01)
            assert tr.ended, "the listener never reached TIME-WAIT"
            assert len(b.conn.rcv_buf) > 0                # the session ended with data unread
            got = await asyncio.wait_for(read_all(b), 5)
            assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
            await asyncio.wait_for(b.wait_closed(), 5)
            assert b.error is None
        finally:
            client.close()
            server.close()

    asyncio.run(main())
