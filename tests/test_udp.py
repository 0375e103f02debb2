"""Batched UDP I/O: GSO batches, GRO splitting, the plain fallback, queueing when blocked."""

from __future__ import annotations

import errno
import socket
import time

import pytest

from toucli.udp import IP_RECVERR, SO_EE_ORIGIN_ICMP, SO_EE_ORIGIN_ICMP6, SO_EE_ORIGIN_LOCAL, IcmpReport, UdpSocket


def pair(**kw: bool) -> tuple[UdpSocket, UdpSocket]:
    a = UdpSocket.bind("127.0.0.1", 0, **kw)
    b = UdpSocket.bind("127.0.0.1", 0, **kw)
    return a, b


def drain(sock: UdpSocket, expect: int, timeout: float = 5.0) -> list[tuple[bytes, tuple]]:
    got: list[tuple[bytes, tuple]] = []
    deadline = time.monotonic() + timeout
    while len(got) < expect and time.monotonic() < deadline:
        if not sock.receive(lambda d, a: got.append((bytes(d), a))):
            time.sleep(0.001)
    return got


def datagrams(n: int, size: int, last: int | None = None) -> list[bytes]:
    out = [bytes([i % 256]) * size for i in range(n)]
    if last is not None:
        out.append(b"\xee" * last)
    return out


@pytest.mark.parametrize("offload", [True, False], ids=["gso-gro", "plain"])
def test_datagrams_arrive_intact_and_in_order(offload: bool) -> None:
    a, b = pair(gso=offload, gro=offload)
    try:
        dest = b.local_address()
        sent = datagrams(20, 1200, last=300)
        a.send([(d, dest) for d in sent])
        got = drain(b, len(sent))
        assert [d for d, _ in got] == sent
        assert all(addr == a.local_address() for _, addr in got)
        if offload and a.gso:
            assert a.send_calls == 1          # one sendmsg for the whole run
            assert b.recv_calls < len(sent)   # GRO handed the batch over in fewer reads
        else:
            assert a.send_calls == len(sent)
        assert a.datagrams_out == b.datagrams_in == len(sent)
    finally:
        a.close()
        b.close()


def test_a_batch_breaks_at_a_longer_datagram_and_at_an_address_change() -> None:
    a, b = pair()
    c = UdpSocket.bind("127.0.0.1", 0)
    try:
        if not a.gso:
            pytest.skip("kernel without UDP GSO")
        db, dc = b.local_address(), c.local_address()
        batch = [(b"x" * 500, db), (b"y" * 500, db), (b"z" * 800, db), (b"w" * 800, dc), (b"v" * 800, dc)]
        a.send(batch)
        assert a.send_calls == 3       # [x y] [z] [w v]
        assert [d for d, _ in drain(b, 3)] == [b"x" * 500, b"y" * 500, b"z" * 800]
        assert [d for d, _ in drain(c, 2)] == [b"w" * 800, b"v" * 800]
    finally:
        for s in (a, b, c):
            s.close()


class RefusingGso(socket.socket):
    """A socket whose kernel (or device) refuses UDP_SEGMENT, as a NIC without checksum offload does."""

    def sendmsg(self, *args, **kw):  # type: ignore[override]
        if len(args) > 1 and args[1]:
            raise OSError(errno.EIO, "Input/output error")
        return super().sendmsg(*args, **kw)


def test_gso_refused_falls_back_to_plain_sends_for_good() -> None:
    raw = RefusingGso(socket.AF_INET, socket.SOCK_DGRAM)
    raw.bind(("127.0.0.1", 0))
    a = UdpSocket(raw)
    b = UdpSocket.bind("127.0.0.1", 0)
    try:
        a.gso = True
        sent = datagrams(5, 700)
        a.send([(d, b.local_address()) for d in sent])
        assert a.gso is False
        assert [d for d, _ in drain(b, 5)] == sent
        a.send([(d, b.local_address()) for d in sent])
        assert [d for d, _ in drain(b, 5)] == sent
    finally:
        a.close()
        b.close()


class Blocking(socket.socket):
    """A socket whose send buffer is full until ``open`` is set."""

    open = False

    def sendto(self, *args):  # type: ignore[override]
        if not self.open:
            raise BlockingIOError(errno.EAGAIN, "would block")
        return super().sendto(*args)


def test_would_block_queues_and_resumes() -> None:
    raw = Blocking(socket.AF_INET, socket.SOCK_DGRAM)
    raw.bind(("127.0.0.1", 0))
    a = UdpSocket(raw, gso=False)
    b = UdpSocket.bind("127.0.0.1", 0)
    blocked = []
    a.on_blocked = lambda: blocked.append(True)
    try:
        dest = b.local_address()
        a.send([(b"one", dest), (b"two", dest)])
        a.send([(b"three", dest)])              # behind the queue, never ahead of it
        assert blocked == [True]
        assert len(a.pending) == 3
        raw.open = True
        assert a.flush_pending() is True
        assert [d for d, _ in drain(b, 3)] == [b"one", b"two", b"three"]
    finally:
        a.close()
        b.close()


def test_receive_stops_after_max_calls() -> None:
    a, b = pair(gso=False, gro=False)
    try:
        a.send([(b"d%d" % i, b.local_address()) for i in range(10)])
        time.sleep(0.05)
        got: list[bytes] = []
        assert b.receive(lambda d, _: got.append(bytes(d)), max_calls=4) == 4
        assert b.receive(lambda d, _: got.append(bytes(d)), max_calls=100) == 6
        assert got == [b"d%d" % i for i in range(10)]
    finally:
        a.close()
        b.close()


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tmp:
        tmp.bind(("127.0.0.1", 0))
        return tmp.getsockname()[1]


@pytest.mark.parametrize("connected", [True, False])
def test_icmp_port_unreachable_comes_from_the_error_queue(connected: bool) -> None:
    """ip(7) IP_RECVERR: the refusal arrives as a report naming the destination and quoting
    the datagram, on a connected socket and (unlike without the option) an unconnected one;
    the read that hears of it drains the queue instead of failing."""
    port = _closed_port()
    a = UdpSocket.bind("127.0.0.1", 0)
    reports: list = []
    a.on_error = reports.append
    try:
        assert a.recverr
        if connected:
            a.connect(("127.0.0.1", port))
        a.send([(b"hello", ("127.0.0.1", port))])
        time.sleep(0.05)
        assert a.receive(lambda d, _: None) == 0
        assert len(reports) == 1 and a.icmp_in == 1
        rep = reports[0]
        assert (rep.errno, rep.origin, rep.type, rep.code) == (errno.ECONNREFUSED, SO_EE_ORIGIN_ICMP, 3, 3)
        assert rep.dest[:2] == ("127.0.0.1", port) and rep.quoted == b"hello"
        assert rep.packet_too_big is None
        a.send([(b"again", ("127.0.0.1", port))])     # the pending error does not eat this send
        time.sleep(0.05)
        assert a.receive(lambda d, _: None) == 0
        assert [r.quoted for r in reports] == [b"hello", b"again"] and a.send_drops == 0
    finally:
        a.close()


def test_without_the_error_queue_a_connected_socket_still_reports_refusal() -> None:
    port = _closed_port()
    a = UdpSocket.bind("127.0.0.1", 0)
    try:
        a.sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 0)
        a.recverr = False
        a.connect(("127.0.0.1", port))
        a.send([(b"hello", ("127.0.0.1", port))])
        time.sleep(0.05)
        with pytest.raises(ConnectionRefusedError):
            a.receive(lambda d, _: None)
    finally:
        a.close()


def test_packet_too_big_report() -> None:
    rep = IcmpReport(errno.EMSGSIZE, SO_EE_ORIGIN_ICMP, 3, 4, 1400, ("10.0.0.1", 1), b"")
    assert rep.packet_too_big == 1400
    assert rep._replace(origin=SO_EE_ORIGIN_ICMP6, type=2, code=0).packet_too_big == 1400
    assert rep._replace(origin=SO_EE_ORIGIN_LOCAL).packet_too_big is None   # our own oversize send
    assert rep._replace(info=0).packet_too_big is None


def test_dual_stack_listener_accepts_ipv4() -> None:
    try:
        b = UdpSocket.bind("::", 0, socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6")
    a = UdpSocket.bind("127.0.0.1", 0)
    try:
        a.send([(b"v4", ("127.0.0.1", b.local_address()[1]))])
        got = drain(b, 1)
        assert got and got[0][0] == b"v4" and got[0][1][0] == "::ffff:127.0.0.1"
    finally:
        a.close()
        b.close()
