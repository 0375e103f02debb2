"""TCP Fast Open (RFC 7413) in the engine: crafted segments for every path, and a
simulated connection showing the first byte arriving after 0.5 RTT with a cookie."""

from __future__ import annotations

import random

import pytest

from harness import LOCAL_PORT, PEER, REMOTE_PORT, Harness, test_config
from toucli.link import Link
from toucli.stack.connection import State
from toucli.stack.endpoint import Endpoint
from toucli.stack.events import Closed, Connected, Readable
from toucli.stack.segment import ACK, PSH, SYN
from toucli.stack.tcp import decode_segment, encode_segment

ISS, IRS = 1000, 5000
S, R = ISS + 1, IRS + 1
W = 64000
COOKIE = b"\x11\x22\x33\x44\x55\x66\x77\x88"


def client(**cfg) -> Harness:
    return Harness(test_config(fast_open=True, **cfg), iss=ISS)


def syn(t: Harness, **kw):
    kw.setdefault("mss", 1000)
    kw.setdefault("sack_perm", True)
    return t.out(ISS, 0, SYN, W, **kw)


def connect(t: Harness, data: bytes = b"", *, then_send: bytes = b"", port: int = LOCAL_PORT):
    """Active open with ``data`` (Endpoint.connect(data=)) and ``then_send`` queued by
    conn.send() before the SYN leaves (both before the harness collects output)."""
    def go():
        conn = t.ep.connect(PEER, port, REMOTE_PORT, t.now, data=data)
        if then_send:
            conn.send(then_send)
        return conn
    conn = t.call(go)
    if t.conn is None:
        t.conn = conn
    return conn


# ---------------------------------------------------------------- client
def test_cold_client_requests_a_cookie_and_caches_it():
    t = client()
    connect(t, b"hello")
    t.expect(syn(t, tfo_cookie=b""))                       # empty option: a cookie request
    t.recv(t.inp(IRS, S, SYN | ACK, W, mss=900, sack_perm=True, tfo_cookie=COOKIE), at=0.1)
    t.expect(t.out(S, R, ACK | PSH, W, b"hello"))          # the data after the handshake
    t.expect_events(Connected)
    assert t.ep.tfo_cookies[PEER] == (COOKIE, 900)
    assert t.conn.stats()["fast_open"] is False


def test_warm_client_puts_data_in_the_syn():
    t = client()
    t.ep.tfo_cookies[PEER] = (COOKIE, 1000)
    connect(t, b"hello", then_send=b" world")
    t.expect(syn(t, tfo_cookie=COOKIE, payload=b"hello world"))
    assert t.conn.snd_max == 12
    t.recv(t.inp(IRS, S + 11, SYN | ACK, W, mss=1000, sack_perm=True), at=0.1)
    t.expect(t.out(S + 11, R, ACK, W))
    t.expect_events(Connected)
    c = t.conn
    assert (c.snd_una, c.snd_max, c.stats()["bytes_acked"], c.stats()["bytes_sent"]) == (12, 12, 11, 11)
    assert c.stats()["fast_open"] is True and c.stats()["tfo_syn_data"] == 11
    t.send(b"more", at=0.2)
    t.expect(t.out(S + 11, R, ACK | PSH, W, b"more"))


def test_syn_data_is_capped_at_the_cached_mss():
    t = client()
    t.ep.tfo_cookies[PEER] = (COOKIE, 600)
    data = bytes(range(256)) * 8                            # 2048 bytes
    connect(t, data)
    # RFC 9293 §3.7.1: payload plus options within the MSS; this SYN's options (MSS,
    # SACK-permitted, the cookie) take 20 bytes
    t.expect(syn(t, tfo_cookie=COOKIE, payload=data[:580]))
    t.recv(t.inp(IRS, S + 580, SYN | ACK, W, mss=600, sack_perm=True), at=0.1)
    t.expect(t.out(S + 580, R, ACK, W, data[580:1180]), t.out(S + 1180, R, ACK, W, data[1180:1780]),
             t.out(S + 1780, R, ACK | PSH, W, data[1780:]))


def test_refused_syn_data_is_sent_again_at_once():
    """RFC 7413 §4.1.3: the SYN-ACK acknowledges only the SYN (bad cookie, or the
    server has no Fast Open): the data goes out again right after the handshake."""
    t = client()
    t.ep.tfo_cookies[PEER] = (b"stale!!!", 1000)
    connect(t, b"hello")
    t.expect(syn(t, tfo_cookie=b"stale!!!", payload=b"hello"))
    t.recv(t.inp(IRS, S, SYN | ACK, W, mss=1000, sack_perm=True, tfo_cookie=COOKIE), at=0.1)
    t.expect(t.out(S, R, ACK | PSH, W, b"hello"), at=0.1)
    t.expect_events(Connected)
    assert t.ep.tfo_cookies[PEER] == (COOKIE, 1000)       # the fresh cookie replaces the stale one
    assert t.conn.stats()["fast_open"] is False and t.conn.stats()["bytes_sent"] == 5
    t.recv(t.inp(R, S + 5, ACK, W), at=0.2)
    assert t.conn.snd_una == 6


def test_syn_data_acknowledged_in_part_sends_the_rest_at_once():
    """RFC 7413 §4.1.3: the SYN-ACK may acknowledge only part of the SYN's data (a server
    that took fewer bytes); the rest goes out as new data right after the handshake."""
    t = client()
    t.ep.tfo_cookies[PEER] = (COOKIE, 1000)
    connect(t, b"hello world")
    t.expect(syn(t, tfo_cookie=COOKIE, payload=b"hello world"))
    t.recv(t.inp(IRS, S + 5, SYN | ACK, W, mss=1000, sack_perm=True), at=0.1)
    t.expect(t.out(S + 5, R, ACK | PSH, W, b" world"), at=0.1)
    t.expect_events(Connected)
    st = t.conn.stats()
    assert (st["bytes_acked"], st["bytes_sent"], st["tfo_syn_data"]) == (5, 11, 11)
    assert st["fast_open"] is True and st["rto_count"] == 0
    t.recv(t.inp(R, S + 11, ACK, W), at=0.2)
    assert t.conn.snd_una == t.conn.snd_max == 12


def test_lost_syn_with_data_is_retransmitted_plain():
    t = client()
    t.ep.tfo_cookies[PEER] = (COOKIE, 1000)
    connect(t, b"hello")
    t.expect(syn(t, tfo_cookie=COOKIE, payload=b"hello"))
    t.advance(to=1.0)                                       # initial RTO
    t.expect(syn(t), at=1.0)                                # no option, no data
    t.recv(t.inp(IRS, S, SYN | ACK, W, mss=1000, sack_perm=True), at=1.1)
    t.expect(t.out(S, R, ACK | PSH, W, b"hello"))


def test_syn_ack_for_the_data_of_a_syn_already_retransmitted_plain():
    """The first SYN (with data) was only slow: its SYN-ACK covers the data even
    though the retransmitted SYN carried none. Accept it, do not reset."""
    t = client()
    t.ep.tfo_cookies[PEER] = (COOKIE, 1000)
    connect(t, b"hello")
    t.pop_output()
    t.advance(to=1.0)
    t.pop_output()
    t.recv(t.inp(IRS, S + 5, SYN | ACK, W, mss=1000, sack_perm=True), at=1.05)
    t.expect(t.out(S + 5, R, ACK, W))
    t.expect_events(Connected)
    assert t.conn.snd_una == t.conn.snd_max == 6


def test_fast_open_off_sends_no_option():
    t = Harness(test_config(), iss=ISS)
    t.ep.tfo_cookies[PEER] = (COOKIE, 1000)
    connect(t, b"hello")
    t.expect(syn(t))


# ---------------------------------------------------------------- server
def server(max_tfo_pending: int = 256) -> Harness:
    t = Harness(test_config(fast_open=True), iss=ISS, local_port=80, remote_port=40000)
    t.ep.max_tfo_pending = max_tfo_pending
    t.listen()
    return t


def syn_in(t: Harness, port: int = 40000, **kw):
    kw.setdefault("mss", 1000)
    kw.setdefault("sack_perm", True)
    return t.inp(IRS, 0, SYN, W, sport=port, **kw)


def synack(t: Harness, ack: int, port: int = 40000, wnd: int = W, **kw):
    return t.out(ISS, ack, SYN | ACK, wnd, mss=1000, sack_perm=True, dport=port, **kw)


def test_server_hands_out_a_cookie_on_request():
    t = server()
    t.recv(syn_in(t, tfo_cookie=b""))
    cookie = t.ep.tfo_cookie(PEER)
    assert len(cookie) == 8 and cookie != t.ep.tfo_cookie("another peer")
    t.expect(synack(t, R, tfo_cookie=cookie))
    t.expect_events()


def test_server_accepts_syn_data_with_a_valid_cookie():
    t = server()
    cookie = t.ep.tfo_cookie(PEER)
    t.recv(syn_in(t, tfo_cookie=cookie, payload=b"GET /"))
    t.expect(synack(t, R + 5, wnd=W - 5))                   # acknowledges the data; no new cookie
    t.expect_events(Connected, Readable)                    # at SYN time, before the handshake ends
    assert t.conn.state == State.SYN_RECEIVED and t.read() == b"GET /"
    assert t.ep.stats()["tfo_pending"] == 1
    t.recv(t.inp(R + 5, S, ACK, W), at=0.1)
    t.expect_state(State.ESTABLISHED)
    t.expect_events()                                       # no second Connected
    assert t.ep.stats()["tfo_pending"] == 0 and t.ep.stats()["tfo_accepted"] == 1
    assert t.conn.stats()["fast_open"] is True


def test_server_refuses_data_with_a_wrong_cookie_and_sends_the_right_one():
    t = server()
    t.recv(syn_in(t, tfo_cookie=b"\x00" * 8, payload=b"GET /"))
    t.expect(synack(t, R, tfo_cookie=t.ep.tfo_cookie(PEER)))
    t.expect_events()
    t.recv(t.inp(R, S, ACK, W), at=0.1)
    t.expect_events(Connected)
    t.recv(t.inp(R, S, ACK | PSH, W, b"GET /"), at=0.1)    # the client's fallback
    t.expect_events(Readable)
    assert t.read() == b"GET /"
    assert t.ep.stats()["tfo_refused"] == 1


def test_server_without_fast_open_ignores_cookie_and_data():
    t = Harness(test_config(), iss=ISS, local_port=80, remote_port=40000)
    t.listen()
    t.recv(syn_in(t, tfo_cookie=t.ep.tfo_cookie(PEER), payload=b"GET /"))
    t.expect(synack(t, R))
    t.expect_events()


def test_pending_fast_open_connections_are_capped():
    t = server(max_tfo_pending=1)
    cookie = t.ep.tfo_cookie(PEER)
    t.recv(syn_in(t, 40000, tfo_cookie=cookie, payload=b"a"))
    t.expect(synack(t, R + 1, 40000, wnd=W - 1))
    t.ep.iss_override = ISS
    t.recv(syn_in(t, 40001, tfo_cookie=cookie, payload=b"b"))
    t.expect(synack(t, R, 40001))                          # over the cap: only the SYN
    assert [type(e) for e in t.pop_events()] == [Connected, Readable]
    t.recv(t.inp(R + 1, S, ACK, W, sport=40000), at=0.1)   # the first completes
    t.ep.iss_override = ISS
    t.recv(syn_in(t, 40002, tfo_cookie=cookie, payload=b"c"), at=0.2)
    t.expect(synack(t, R + 1, 40002, wnd=W - 1))
    assert t.ep.stats()["tfo_refused"] == 1 and t.ep.stats()["tfo_accepted"] == 2


def test_reset_of_an_accepted_syn_is_reported():
    t = server()
    t.recv(syn_in(t, tfo_cookie=t.ep.tfo_cookie(PEER), payload=b"x"))
    t.pop_output()
    t.pop_events()
    from toucli.stack.segment import RST
    t.recv(t.inp(R + 1, 0, RST, 0), at=0.1)
    assert [type(e).__name__ for e in t.pop_events()] == ["Reset", "Closed"]
    assert t.ep.stats()["tfo_pending"] == 0


# ---------------------------------------------------------------- simulated path
RTT = 0.1


def _first_byte_delay(client_ep: Endpoint, server_ep: Endpoint, port: int, start: float) -> float:
    """Open a connection at ``start`` with 100 bytes; time until the server can read them."""
    rng = random.Random(port)
    ab = Link(rng, delay=RTT / 2, rate_bps=100e6)
    ba = Link(rng, delay=RTT / 2, rate_bps=100e6)
    now = start
    conn = client_ep.connect("server", port, 80, now, data=b"q" * 100)
    got_at = None
    for _ in range(10_000):
        for _p, seg in client_ep.segments_to_send(now):
            ab.send(encode_segment(seg), now)
        for _p, seg in server_ep.segments_to_send(now):
            ba.send(encode_segment(seg), now)
        while (ev := server_ep.next_event()) is not None:
            if isinstance(ev, Readable) and got_at is None:
                assert ev.conn.recv() == b"q" * 100
                got_at = now
                ev.conn.shutdown()
        while (ev := client_ep.next_event()) is not None:
            if isinstance(ev, Connected):
                pass
            elif isinstance(ev, Closed):
                return got_at - start
            elif ev.conn.state == State.CLOSE_WAIT:
                conn.shutdown()
        times = [x for x in (ab.next_delivery(), ba.next_delivery(), client_ep.next_deadline(),
                             server_ep.next_deadline()) if x is not None]
        now = max(now, min(times))
        for pkt in ab.deliver(now):
            server_ep.receive("client", decode_segment(pkt), now)
        for pkt in ba.deliver(now):
            client_ep.receive("server", decode_segment(pkt), now)
        client_ep.handle_timer(now)
        server_ep.handle_timer(now)
    raise AssertionError("connection did not finish")


def test_first_byte_after_half_an_rtt_with_a_warm_cookie():
    from toucli.stack.config import ConnectionConfig
    cfg = ConnectionConfig(fast_open=True)
    cli = Endpoint(cfg, b"c" * 32)
    srv = Endpoint(cfg, b"s" * 32)
    srv.listen(80)
    cold = _first_byte_delay(cli, srv, 40000, 0.0)
    assert "server" in cli.tfo_cookies
    warm = _first_byte_delay(cli, srv, 40001, 10.0)
    assert cold == pytest.approx(1.5 * RTT, abs=0.002)
    assert warm == pytest.approx(0.5 * RTT, abs=0.002)
    assert srv.stats()["tfo_accepted"] == 1
