"""SecureEndpoint: handshakes, authentication failures, data path, replay, rekey, roaming, close."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securenet import (CLIENT_ADDR, CLIENT_KEY, OTHER_KEY, SERVER_ADDR, SERVER_KEY, Net, connect,
                       key_pair_endpoints, secret_endpoints, segment)
from toucli.record import FAST_PATH_SEQ_BASE, split_records
from toucli.session import (REASON_CLIENT_KEY_REJECTED, REASON_CLOSED_BY_PEER, REASON_KEY_LIMIT, REASON_PEER_DEAD,
                            REASON_SECRET_MISMATCH, REASON_SERVER_KEY_REJECTED, REASON_UNKNOWN_CLIENT,
                            AuthenticationFailed, PeerAddressChanged, SecureConfig, SecureEndpoint,
                            SessionClosed, SessionEstablished, SessionRekeyed)
from toucli import dtls
from toucli.session import _gue_prefix as gue_prefix
from toucli.stack import gue

NEW_ADDR = ("198.51.100.7", 51000)


def auth_failures(events: list) -> list[AuthenticationFailed]:
    return [e for e in events if isinstance(e, AuthenticationFailed)]


# --- handshakes ------------------------------------------------------------------------

def test_key_pair_handshake_and_identities() -> None:
    net, cs, ss = connect(*key_pair_endpoints())
    assert cs.established and ss.established
    assert cs.id == ss.id != 0
    client_ev = next(e for e in net.client_events if isinstance(e, SessionEstablished))
    server_ev = next(e for e in net.server_events if isinstance(e, SessionEstablished))
    assert client_ev.peer_identity.key == SERVER_KEY.public
    assert server_ev.peer_identity.key == CLIENT_KEY.public and server_ev.peer_identity.name == "laptop"
    assert str(server_ev.peer_identity) == f"{CLIENT_KEY.public.fingerprint()} (laptop)"
    assert ss.peer_addr == CLIENT_ADDR and cs.peer_addr == SERVER_ADDR
    assert net.server.counters["hello_verify_sent"] == 1
    assert net.client.counters["handshakes_completed"] == net.server.counters["handshakes_completed"] == 1


def test_secret_handshake() -> None:
    net, cs, ss = connect(*secret_endpoints())
    assert str(net.server_events[0].peer_identity) == "shared secret"
    assert cs.established and ss.established


def test_wire_layout_of_a_data_datagram() -> None:
    net, cs, ss = connect(*key_pair_endpoints())
    seg = segment(1, 60)
    data = net.client.seal_segment(cs, seg)
    assert data is not None
    # GUE: Hlen 2, Proto 59, flags T|session-ID, transform 01 06 00 00, session ID
    assert data[:8] == bytes.fromhex("023b0402 01060000")
    assert data[8:12] == cs.id.to_bytes(4, "big")
    # DTLS 1.2 application-data record, epoch 1, fast-path sequence numbers
    assert data[12:15] == bytes.fromhex("17fefd")
    epoch_seq = int.from_bytes(data[15:23], "big")
    assert epoch_seq >> 48 == 1 and epoch_seq & ((1 << 48) - 1) >= FAST_PATH_SEQ_BASE
    assert int.from_bytes(data[23:25], "big") == len(data) - 25 == 8 + 60 + 16
    assert data[25:33] == data[15:23]              # explicit nonce = epoch || seq (AES-GCM)
    assert seg not in data
    assert len(data) == cs.overhead + 60 == 49 + 60
    assert net.server.datagram_received(data, CLIENT_ADDR, net.now) == [(ss, seg)]


def test_cookie_exchange_before_any_server_state() -> None:
    client, server = key_pair_endpoints()
    client.connect(SERVER_ADDR, 0.0)
    [(hello, addr)] = client.datagrams_to_send(0.0)
    assert addr == SERVER_ADDR
    assert server.datagram_received(hello, CLIENT_ADDR, 0.0) == []
    [(hvr, to)] = server.datagrams_to_send(0.0)
    assert to == CLIENT_ADDR and hvr[12] == 22 and hvr[25] == 3      # HelloVerifyRequest (type 3)
    assert len(hvr) <= 3 * len(hello)
    # no per-peer state of any kind
    assert server._by_id == {} and server._by_addr == {} and server.sessions() == []
    assert server.next_deadline() is None
    # the same ClientHello again: still stateless
    server.datagram_received(hello, CLIENT_ADDR, 0.5)
    assert server._by_id == {} and server._by_addr == {}
    assert server.counters["hello_verify_sent"] == 2


def test_a_client_hello_flood_keeps_no_state_and_makes_no_openssl_object(monkeypatch) -> None:
    """A thousand copies of a ClientHello from a thousand addresses: each gets its
    HelloVerifyRequest (RFC 6347 §4.2.1) from tou itself; no OpenSSL connection is made,
    nothing is kept, and a real client still completes its handshake after them."""
    client, server = key_pair_endpoints()
    client.connect(SERVER_ADDR, 0.0)
    [(hello, _)] = client.datagrams_to_send(0.0)
    made = []
    real_connection = dtls.SSL.Connection
    monkeypatch.setattr(dtls.SSL, "Connection", lambda *a: made.append(a) or real_connection(*a))
    for i in range(1000):
        forged = hello[:39] + i.to_bytes(32, "big") + hello[71:]       # its own client random
        assert server.datagram_received(forged, (f"127.{i // 250}.{i % 250}.1", 1024 + i), 0.5) == []
    replies = server.datagrams_to_send(0.5)
    assert len(replies) == 1000 and {len(d) for d, _ in replies} == {12 + 13 + 12 + 3 + 16}
    assert made == []
    assert server._by_id == {} and server._by_addr == {} and server.sessions() == []
    assert server.next_deadline() is None
    assert server.counters["hello_verify_sent"] == 1000 and server.counters["handshakes_started"] == 0
    monkeypatch.undo()
    net = Net(client, server)
    net.now = 0.5
    assert server.datagram_received(hello, CLIENT_ADDR, 0.5) == []
    net.deliver()
    net.advance(5.0)
    cs, ss = net.established()
    assert server.counters["handshakes_started"] == 1


def _client_hellos(client: SecureEndpoint, server: SecureEndpoint) -> tuple[bytes, bytes]:
    """The client's first ClientHello datagram and, once the server's HelloVerifyRequest
    is in, the one with the cookie (the server has not seen that one)."""
    client.connect(SERVER_ADDR, 0.0)
    [(first, _)] = client.datagrams_to_send(0.0)
    server.datagram_received(first, CLIENT_ADDR, 0.0)
    [(hvr, _)] = server.datagrams_to_send(0.0)
    client.datagram_received(hvr, SERVER_ADDR, 0.0)
    [(second, _)] = client.datagrams_to_send(0.0)
    return first, second


def test_a_lost_hello_verify_request_costs_one_client_hello_timer_and_no_more() -> None:
    """The first HelloVerifyRequest is lost and the client's resend is answered after
    more than a second of real time, so OpenSSL's own (wall-clock) timer has run out and
    it resends its ClientHello before writing the one with the cookie. The stale copy is
    not sent ahead of it (the server would answer it with another HelloVerifyRequest, each
    time), and the server numbers its ServerHello from that ClientHello's record number
    (RFC 6347 §4.2.1), above the second HelloVerifyRequest the client's replay window has
    seen. The handshake completes within the resend's round trip: one resend, two
    HelloVerifyRequests."""
    import time
    client, server = secret_endpoints()
    net = Net(client, server)
    net.mangle = lambda way, n, data: None if (way, n) == ("s2c", 1) else data
    client.connect(SERVER_ADDR, 0.0)
    net.deliver()
    time.sleep(1.1)                           # OpenSSL's timer is real time, not Net's
    net.advance(1.5)
    assert [type(e).__name__ for e in net.client_events] == ["SessionEstablished"]
    assert client.counters["handshake_retransmissions"] == 1
    assert server.counters["hello_verify_sent"] == 2 and server.counters["handshakes_started"] == 1
    hellos = [d for way, d, _ in net.sent if way == "c2s"
              and any(r[0] == 22 and r[3:5] == b"\0\0" and r[13] == 1 for r in split_records(d[12:]))]
    assert [len(split_records(d[12:])) for d in hellos] == [1, 1, 1]


def test_the_newest_client_hello_of_a_datagram_is_answered() -> None:
    """A datagram with a stale ClientHello (no cookie) ahead of the one with the cookie,
    as another DTLS stack may send after a HelloVerifyRequest: the server answers the
    last one with its flight, not the first with another HelloVerifyRequest."""
    client, server = secret_endpoints()
    first, second = _client_hellos(client, server)
    assert server.datagram_received(second[:12] + first[12:] + second[12:], CLIENT_ADDR, 0.2) == []
    replies = server.datagrams_to_send(0.2)
    assert [r[13] for d, _ in replies for r in split_records(d[12:])][:1] == [2]     # ServerHello
    assert server.counters["hello_verify_sent"] == 1 and server.counters["handshakes_started"] == 1


def test_a_handshake_record_that_is_no_client_hello_is_malformed() -> None:
    client, server = key_pair_endpoints()
    garbage = gue_prefix(0) + bytes.fromhex("16fefd 0000 000000000007 0010") + bytes(16)
    assert server.datagram_received(garbage, CLIENT_ADDR, 0.0) == []
    assert server.datagrams_to_send(0.0) == []
    assert server.counters["drop_malformed"] == 1 and server.counters["hello_verify_sent"] == 0


def test_handshake_records_after_the_handshake_are_counted_unless_they_repeat_it() -> None:
    """A handshake-type record for a finished association that changes nothing (a
    forgery, silently discarded, RFC 6347 §4.1.2.7) is counted; the client's Finished
    again still gets the server's last flight again (§4.2.4) and is not."""
    net, cs, ss = connect(*key_pair_endpoints())
    [finished] = [d[:12] + rec for way, d, _ in net.sent if way == "c2s"
                  for rec in split_records(d[12:]) if rec[0] == 22 and rec[3:5] == b"\0\x01"]
    sid = ss.id.to_bytes(4, "big")
    forged = [gue_prefix(0)[:8] + sid + bytes.fromhex(h) + bytes(32)
              for h in ("16fefd 0001 000000000009 0020", "16fefd 0000 000000000009 0020",
                        "14fefd 0000 00000000000a 0020", "16fefd 0002 000000000001 0020")]
    for data in forged:
        assert net.server.datagram_received(data, ("203.0.113.9", 999), net.now) == []
    assert net.server.datagrams_to_send(net.now) == []
    assert net.server.counters["drop_stale_handshake"] == 4
    again = finished[:8] + sid + finished[12:]       # under the ID, as the association's own record
    assert net.server.datagram_received(again, CLIENT_ADDR, net.now) == []
    assert len(net.server.datagrams_to_send(net.now)) >= 1          # its CCS and Finished again
    assert net.server.counters["drop_stale_handshake"] == 4
    assert ss.established and net.send_c2s(cs, segment(3)) is not None and net.to_server[-1] == (ss, segment(3))


def test_cookie_from_another_address_is_refused() -> None:
    client, server = key_pair_endpoints()
    _hello, hello2 = _client_hellos(client, server)
    server.datagram_received(hello2, NEW_ADDR, 0.0)      # cookie was made for CLIENT_ADDR
    assert server._by_id == {} and server._by_addr == {}
    server.datagram_received(hello2, CLIENT_ADDR, 0.0)
    assert len(server._by_id) == 1


@pytest.mark.parametrize("seed", range(5))
def test_handshake_completes_under_30_percent_loss(seed: int) -> None:
    client, server = key_pair_endpoints()
    net = Net(client, server, loss=0.3, seed=seed)
    client.connect(SERVER_ADDR, 0.0)
    while net.now < 29.0 and len([e for e in net.client_events + net.server_events
                                  if isinstance(e, SessionEstablished)]) < 2:
        net.advance(net.now + 0.25)
    cs, ss = net.established()
    assert cs.established and ss.established
    net.loss = 0.0
    assert net.send_c2s(cs, segment(7)) is not None
    assert net.to_server == [(ss, segment(7))]


def test_lossy_handshake_retransmits() -> None:
    client, server = secret_endpoints()
    net = Net(client, server, loss=0.3, seed=3)
    client.connect(SERVER_ADDR, 0.0)
    net.advance(29.0)
    net.established()
    assert client.counters["handshake_retransmissions"] + server.counters["handshake_retransmissions"] > 0


def test_handshake_gives_up_when_nobody_answers() -> None:
    client, server = key_pair_endpoints()
    net = Net(client, server)
    net.block_client_to_server = True
    session = client.connect(SERVER_ADDR, 0.0)
    net.advance(60.0)
    assert [e.reason for e in net.client_events if isinstance(e, SessionClosed)] == ["handshake timed out"]
    assert session.state == "closed"
    assert client.counters["handshake_retransmissions"] >= 3


# --- authentication failures -------------------------------------------------------------

def test_wrong_server_key() -> None:
    client, server = key_pair_endpoints(pinned=OTHER_KEY)
    net = Net(client, server)
    session = client.connect(SERVER_ADDR, 0.0)
    net.advance(2.0)
    [cf] = auth_failures(net.client_events)
    assert cf.reason == "authentication failed: server key does not match --peer-key"
    assert cf.fingerprint == SERVER_KEY.public.fingerprint() and cf.addr == SERVER_ADDR
    assert cf.session is session and session.state == "closed"
    assert any(isinstance(e, SessionClosed) and e.reason == cf.reason for e in net.client_events)
    [sf] = auth_failures(net.server_events)
    assert sf.reason == REASON_SERVER_KEY_REJECTED and sf.addr == CLIENT_ADDR
    assert server.sessions() == [] and server._by_id == {}


def test_peer_key_source_names_the_known_peers_file() -> None:
    from toucli.keys import AuthorizedKeys
    from toucli.session import Auth
    server = SecureEndpoint("server", Auth.keys(SERVER_KEY, authorized=AuthorizedKeys({CLIENT_KEY.public: None})))
    client = SecureEndpoint("client", Auth.keys(CLIENT_KEY, peer_key=OTHER_KEY.public,
                                                peer_key_source="the known-peers entry"))
    net = Net(client, server)
    client.connect(SERVER_ADDR, 0.0)
    net.advance(1.0)
    [cf] = auth_failures(net.client_events)
    assert cf.reason == "authentication failed: server key does not match the known-peers entry"


def test_unknown_client() -> None:
    client, server = key_pair_endpoints(client_key=OTHER_KEY)
    net = Net(client, server)
    client.connect(SERVER_ADDR, 0.0)
    net.advance(2.0)
    [sf] = auth_failures(net.server_events)
    assert sf.reason == REASON_UNKNOWN_CLIENT == "authentication failed: client key is not in the authorized keys"
    assert sf.addr == CLIENT_ADDR and sf.fingerprint == OTHER_KEY.public.fingerprint()
    [cf] = auth_failures(net.client_events)
    assert cf.reason == REASON_CLIENT_KEY_REJECTED
    assert cf.fingerprint == OTHER_KEY.public.fingerprint()
    assert server.sessions() == [] and server._by_id == {} and server._by_addr == {}


def test_server_keeps_serving_after_rejecting_a_client() -> None:
    bad_client, server = key_pair_endpoints(client_key=OTHER_KEY)
    net = Net(bad_client, server)
    bad_client.connect(SERVER_ADDR, 0.0)
    net.advance(1.0)
    good_client, _ = key_pair_endpoints()
    net.client = good_client
    good_client.connect(SERVER_ADDR, net.now)
    net.advance(3.0)
    assert any(isinstance(e, SessionEstablished) for e in net.server_events)


def test_wrong_secret() -> None:
    net = Net(*secret_endpoints(client_secret=b"one long and quite random secret 8134",
                                server_secret=b"another long and random secret 99171"))
    session = net.client.connect(SERVER_ADDR, 0.0)
    net.advance(2.0)
    [cf] = auth_failures(net.client_events)
    [sf] = auth_failures(net.server_events)
    assert cf.reason == sf.reason == REASON_SECRET_MISMATCH == "authentication failed: shared secret does not match"
    assert sf.addr == CLIENT_ADDR
    assert session.state == "closed" and net.server.sessions() == []
    assert not any(isinstance(e, SessionEstablished) for e in net.client_events + net.server_events)


def test_wrong_secret_detected_when_the_first_alert_is_lost() -> None:
    net = Net(*secret_endpoints(client_secret=b"one long and quite random secret 8134",
                                server_secret=b"another long and random secret 99171"))
    net.client.connect(SERVER_ADDR, 0.0)
    # let the handshake through, then lose the server's first access_denied alert
    original = net.server.datagrams_to_send

    def lossy(now: float):
        out = original(now)
        if net.server.counters["auth_failures"] and not getattr(lossy, "dropped", False):
            lossy.dropped = True  # type: ignore[attr-defined]
            return []
        return out
    net.server.datagrams_to_send = lossy  # type: ignore[method-assign]
    net.advance(2.0)
    assert [e.reason for e in auth_failures(net.client_events)] == [REASON_SECRET_MISMATCH]


def test_secret_client_against_key_server() -> None:
    client, _ = secret_endpoints()
    _, server = key_pair_endpoints()
    net = Net(client, server)
    client.connect(SERVER_ADDR, 0.0)
    net.advance(2.0)
    [cf] = auth_failures(net.client_events)
    assert cf.reason.startswith("authentication failed: ")


# --- data path, replay, tampering ----------------------------------------------------------

def test_segments_both_ways() -> None:
    net, cs, ss = connect(*key_pair_endpoints())
    for i in range(50):
        net.send_c2s(cs, segment(i))
        net.send_s2c(ss, segment(1000 + i))
    assert net.to_server == [(ss, segment(i)) for i in range(50)]
    assert net.to_client == [(cs, segment(1000 + i)) for i in range(50)]


def test_replayed_datagram_is_dropped_and_counted() -> None:
    net, cs, ss = connect(*key_pair_endpoints())
    data = net.client.seal_segment(cs, segment(1))
    assert net.server.datagram_received(data, CLIENT_ADDR, 1.0) == [(ss, segment(1))]
    before = net.server.counters["drop_replay"]
    assert net.server.datagram_received(data, CLIENT_ADDR, 1.0) == []
    assert net.server.counters["drop_replay"] == before + 1


def test_reordered_datagrams_inside_the_window_are_accepted() -> None:
    net, cs, ss = connect(*key_pair_endpoints())
    datagrams = [net.client.seal_segment(cs, segment(i)) for i in range(10)]
    got = []
    for d in reversed(datagrams):
        got += net.server.datagram_received(d, CLIENT_ADDR, 1.0)
    assert [seg for _, seg in got] == [segment(i) for i in reversed(range(10))]


def test_every_flipped_bit_is_rejected() -> None:
    net, cs, ss = connect(*key_pair_endpoints())
    data = net.client.seal_segment(cs, segment(5, 40))
    assert data is not None
    for i in range(len(data)):
        for bit in range(8):
            bad = bytearray(data)
            bad[i] ^= 1 << bit
            assert net.server.datagram_received(bytes(bad), CLIENT_ADDR, 1.0) == []
    # the genuine one still gets through afterwards: nothing was marked seen
    assert net.server.datagram_received(data, CLIENT_ADDR, 1.0) == [(ss, segment(5, 40))]
    assert net.server.counters["drop_auth"] > 0


def test_truncated_and_unknown_session_datagrams() -> None:
    net, cs, ss = connect(*key_pair_endpoints())
    data = net.client.seal_segment(cs, segment(5))
    counters = net.server.counters
    for cut in (0, 3, 11, 12, 20, 30, len(data) - 1):
        assert net.server.datagram_received(data[:cut], CLIENT_ADDR, 1.0) == []
    assert counters["drop_malformed"] >= 5
    other = bytearray(data)
    other[8:12] = ((cs.id + 1) & 0xFFFFFFFF).to_bytes(4, "big")
    before = counters["drop_unknown_session"]
    assert net.server.datagram_received(bytes(other), CLIENT_ADDR, 1.0) == []
    assert counters["drop_unknown_session"] == before + 1
    cleartext = gue.PLAIN_HEADER + segment(1)
    assert net.server.datagram_received(cleartext, CLIENT_ADDR, 1.0) == []


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_raise(data: bytes) -> None:
    server = _FUZZ_SERVER
    assert server.datagram_received(data, CLIENT_ADDR, 1.0) == []
    # with a plausible header in front too
    assert server.datagram_received(_FUZZ_PREFIX + data, CLIENT_ADDR, 1.0) == []


_FUZZ_NET, _FUZZ_CS, _FUZZ_SS = connect(*key_pair_endpoints())
_FUZZ_SERVER = _FUZZ_NET.server
_FUZZ_PREFIX = _FUZZ_NET.client.seal_segment(_FUZZ_CS, segment(0))[:25]   # GUE + record header


def test_segments_before_established_are_not_sealed() -> None:
    client, server = key_pair_endpoints()
    session = client.connect(SERVER_ADDR, 0.0)
    assert client.seal_segment(session, segment(1)) is None
    assert client.counters["drop_not_established"] == 1


# --- rekey ------------------------------------------------------------------------------

def test_rekey_while_segments_flow_loses_nothing() -> None:
    config = SecureConfig(rekey_after_records=200)
    net, cs, ss = connect(*key_pair_endpoints(config=config))
    first_id = cs.id
    sent_c, sent_s = [], []
    for i in range(600):
        sent_c.append(segment(i))
        net.send_c2s(cs, segment(i))
        sent_s.append(segment(10000 + i))
        net.send_s2c(ss, segment(10000 + i))
        net.now += 0.001
        if net.client.next_deadline() is not None and net.client.next_deadline() <= net.now:
            net.client.handle_timer(net.now)
        net.deliver()
    assert [s for _, s in net.to_server] == sent_c
    assert [s for _, s in net.to_client] == sent_s
    assert net.client.counters["rekeys"] >= 2 and net.server.counters["rekeys"] >= 2
    assert cs.id != first_id and cs.id == ss.id
    assert sum(isinstance(e, SessionRekeyed) for e in net.client_events) >= 2
    assert not any(isinstance(e, SessionClosed) for e in net.client_events + net.server_events)


def test_per_session_counters() -> None:
    """Issue 5: datagrams, bytes, drops and handshakes are counted per session."""
    net, cs, ss = connect(*key_pair_endpoints())
    assert cs.handshakes == 1 and ss.handshakes == 1
    for i in range(5):
        net.send_c2s(cs, segment(i))
    net.deliver()
    assert cs.datagrams_out == 5 and ss.datagrams_in >= 5
    assert ss.bytes_in >= cs.bytes_out > 5 * 100
    replayed = net.client.seal_segment(cs, segment(99))
    assert net.server.datagram_received(replayed, CLIENT_ADDR, net.now) == [(ss, segment(99))]
    assert net.server.datagram_received(replayed, CLIENT_ADDR, net.now) == []
    assert ss.drop_replay == 1
    tampered = bytearray(net.client.seal_segment(cs, segment(100)))
    tampered[-1] ^= 1
    assert net.server.datagram_received(bytes(tampered), CLIENT_ADDR, net.now) == []
    assert ss.drop_auth == 1
    net.client.rekey(cs, net.now)
    net.deliver()
    assert cs.handshakes == 2 and ss.handshakes == 2


def test_rekey_in_flight_records_of_the_old_keys_still_open() -> None:
    net, cs, ss = connect(*key_pair_endpoints())
    late = net.client.seal_segment(cs, segment(1))
    net.client.rekey(cs, net.now)
    net.deliver()
    assert net.client.counters["rekeys"] == 1
    assert net.server.datagram_received(late, CLIENT_ADDR, net.now) == [(ss, segment(1))]
    # after the linger time the old association is gone
    net.advance(net.now + 30.0)
    before = net.server.counters["drop_unknown_session"]
    assert net.server.datagram_received(late, CLIENT_ADDR, net.now) == []
    assert net.server.counters["drop_unknown_session"] == before + 1


def test_secret_mode_rekey() -> None:
    net, cs, ss = connect(*secret_endpoints())
    net.client.rekey(cs, net.now)
    net.deliver()
    assert net.client.counters["rekeys"] == net.server.counters["rekeys"] == 1
    net.send_c2s(cs, segment(3))
    assert net.to_server[-1] == (ss, segment(3))


def test_rekey_after_time_limit() -> None:
    net, cs, ss = connect(*key_pair_endpoints(config=SecureConfig(rekey_after_seconds=30.0)))
    net.advance(70.0)
    assert net.client.counters["rekeys"] == 2
    assert ss.established and cs.established


def test_rekey_when_only_received_records_reach_the_limit() -> None:
    """A client that only downloads still rekeys: the records it opens count, and its
    kept timer deadline comes forward when they reach the limit."""
    net, cs, ss = connect(*key_pair_endpoints(config=SecureConfig(rekey_after_records=50)))
    for i in range(60):
        net.send_s2c(ss, segment(i))
    net.now += 0.01
    assert net.client.next_deadline() <= net.now
    net.advance(net.now + 0.5)
    assert net.client.counters["rekeys"] == 1 and cs.established and ss.established


def test_server_ends_a_session_that_outlives_the_hard_record_limit() -> None:
    config = SecureConfig(rekey_after_records=1 << 30, hard_record_limit=40)
    net, cs, ss = connect(*key_pair_endpoints(config=config))
    for i in range(45):
        net.send_c2s(cs, segment(i))
    assert net.server.next_deadline() <= net.now
    net.advance(net.now + 0.1)
    [closed] = [e for e in net.server_events if isinstance(e, SessionClosed)]
    assert closed.reason == REASON_KEY_LIMIT and ss.state == "closed"


def test_many_sessions_data_records_do_not_rescan_timers(monkeypatch) -> None:
    """With 200 clients, a data record, a timer call that finds nothing due, a new
    handshake and the next-deadline question cost the same as with one: the server's
    earliest deadline is kept, a handshake brings it forward to its own timers, and only
    a timer that does work leads to a full scan."""
    server = SecureEndpoint("server", key_pair_endpoints()[1].auth)
    clients = []
    now = 0.0
    for i in range(200):
        client = SecureEndpoint("client", key_pair_endpoints()[0].auth)
        addr = ("192.0.2.50", 20000 + i)
        cs = client.connect(SERVER_ADDR, now)
        for _ in range(8):
            for data, _a in client.datagrams_to_send(now):
                server.datagram_received(data, addr, now)
            for data, a in server.datagrams_to_send(now):
                if a == addr:
                    client.datagram_received(data, SERVER_ADDR, now)
        assert cs.established
        clients.append((client, cs, addr))
    scans = []
    real = SecureEndpoint._compute_deadline
    monkeypatch.setattr(SecureEndpoint, "_compute_deadline", lambda self: scans.append(1) or real(self))
    first = server.next_deadline()
    assert len(scans) == 1 and first is not None
    now = 1.0
    for client, cs, addr in clients:
        got = server.datagram_received(client.seal_segment(cs, segment(7)), addr, now)
        assert [seg for _, seg in got] == [segment(7)]
        server.handle_timer(now)                 # as the runtime does at an engine timer
        assert server.next_deadline() == first   # a kept deadline is early, never late
    assert len(scans) == 1
    late = SecureEndpoint("client", key_pair_endpoints()[0].auth)
    late.connect(SERVER_ADDR, now)
    for data, _a in late.datagrams_to_send(now):      # a ClientHello: only a stateless cookie
        server.datagram_received(data, ("192.0.2.51", 1), now)
    server.next_deadline()
    assert len(scans) == 1
    for data, _a in server.datagrams_to_send(now):
        late.datagram_received(data, SERVER_ADDR, now)
    for data, _a in late.datagrams_to_send(now):      # with the cookie: a handshake, a timer
        server.datagram_received(data, ("192.0.2.51", 1), now)
    assert server.next_deadline() <= now + SecureConfig().handshake_rto   # its retransmission
    assert len(scans) == 1                            # brought forward without a scan
    server.handle_timer(server.next_deadline())      # a timer that does work: one full scan after
    server.next_deadline()
    assert len(scans) == 2


# --- roaming ----------------------------------------------------------------------------

def test_client_address_change_moves_the_server_after_authentication() -> None:
    net, cs, ss = connect(*key_pair_endpoints())
    net.client_addr = NEW_ADDR
    # a spoofed datagram from the new address with a bad tag does not move the session
    good = net.client.seal_segment(cs, segment(1))
    forged = bytearray(good)
    forged[-1] ^= 1
    assert net.server.datagram_received(bytes(forged), NEW_ADDR, net.now) == []
    assert ss.peer_addr == CLIENT_ADDR
    # a replay of an old genuine datagram from another address does not move it either
    assert net.server.datagram_received(good, CLIENT_ADDR, net.now) == [(ss, segment(1))]
    assert net.server.datagram_received(good, NEW_ADDR, net.now) == []
    assert ss.peer_addr == CLIENT_ADDR
    # the first authenticated datagram from the new address does
    net.send_c2s(cs, segment(2))
    assert net.to_server[-1] == (ss, segment(2)) and ss.peer_addr == NEW_ADDR
    net.deliver()
    [moved] = [e for e in net.server_events if isinstance(e, PeerAddressChanged)]
    assert (moved.old, moved.new) == (CLIENT_ADDR, NEW_ADDR)
    # path challenge answered from the new address: verified, no amplification limit
    assert ss._addr_verified
    for i in range(20):
        net.send_s2c(ss, segment(100 + i, 1000))
    assert [s for _, s in net.to_client] == [segment(100 + i, 1000) for i in range(20)]


def test_older_datagram_from_the_old_address_does_not_move_back() -> None:
    net, cs, ss = connect(*key_pair_endpoints())
    old = net.client.seal_segment(cs, segment(1))
    net.client_addr = NEW_ADDR
    net.send_c2s(cs, segment(2))
    assert ss.peer_addr == NEW_ADDR
    assert net.server.datagram_received(old, CLIENT_ADDR, net.now) == [(ss, segment(1))]
    assert ss.peer_addr == NEW_ADDR


def test_unverified_new_address_gets_at_most_three_times_its_bytes() -> None:
    net, cs, ss = connect(*key_pair_endpoints())
    data = net.client.seal_segment(cs, segment(1, 100))
    net.server.datagram_received(data, NEW_ADDR, net.now)   # e.g. relayed by an attacker
    assert ss.peer_addr == NEW_ADDR and not ss._addr_verified
    challenge = net.server.datagrams_to_send(net.now)
    sent = 0
    for i in range(50):
        out = net.server.seal_segment(ss, segment(i, 1000))
        if out is not None:
            sent += len(out)
    assert sent <= 3 * len(data)
    assert net.server.counters["drop_amplification"] > 0
    assert challenge and all(addr == NEW_ADDR for _, addr in challenge)


def test_transfer_continues_across_port_and_address_changes() -> None:
    net, cs, ss = connect(*key_pair_endpoints())
    received = []
    for i, addr in enumerate([CLIENT_ADDR, (CLIENT_ADDR[0], 40001), NEW_ADDR]):
        net.client_addr = addr
        for j in range(30):
            net.send_c2s(cs, segment(100 * i + j))
            net.deliver()
            net.send_s2c(ss, segment(5000 + 100 * i + j))
        received.append(ss.peer_addr)
    assert received == [CLIENT_ADDR, (CLIENT_ADDR[0], 40001), NEW_ADDR]
    assert len(net.to_server) == 90 and len(net.to_client) == 90


# --- liveness and close ---------------------------------------------------------------------

def test_close_notify() -> None:
    net, cs, ss = connect(*key_pair_endpoints())
    net.client.close(cs, net.now)
    net.deliver()
    assert cs.state == "closed" and ss.state == "closed"
    assert [e.reason for e in net.server_events if isinstance(e, SessionClosed)] == [REASON_CLOSED_BY_PEER]
    assert net.server.sessions() == []
    assert net.client.seal_segment(cs, segment(1)) is None


def test_forged_close_notify_is_ignored() -> None:
    net, cs, ss = connect(*key_pair_endpoints())
    net.client.close(cs, net.now)
    [(alert, _)] = net.client.datagrams_to_send(net.now)
    forged = bytearray(alert)
    forged[-3] ^= 0x40
    net.server.datagram_received(bytes(forged), CLIENT_ADDR, net.now)
    assert ss.established


def test_idle_session_pings_and_stays_up() -> None:
    net, cs, ss = connect(*key_pair_endpoints())
    net.advance(120.0)
    assert cs.established and ss.established


def test_dead_server_is_detected() -> None:
    net, cs, ss = connect(*key_pair_endpoints())
    net.block_server_to_client = True
    start = net.now
    net.advance(start + 20.0)
    [closed] = [e for e in net.client_events if isinstance(e, SessionClosed)]
    assert closed.reason == REASON_PEER_DEAD
    assert cs.state == "closed"


def test_restarted_server_is_detected_and_a_new_session_works() -> None:
    net, cs, ss = connect(*key_pair_endpoints())
    _, fresh_server = key_pair_endpoints()
    net.server = fresh_server                      # the old process and its keys are gone
    net.send_c2s(cs, segment(1))
    assert fresh_server.counters["drop_unknown_session"] >= 1
    net.advance(net.now + 12.0)
    assert any(isinstance(e, SessionClosed) and e.reason == REASON_PEER_DEAD for e in net.client_events)
    new = net.client.connect(SERVER_ADDR, net.now)
    net.advance(net.now + 3.0)
    assert new.established


def test_server_switching_on_a_data_record_keeps_its_deadline_for_the_old_keys() -> None:
    """After a rekey the server switches when the client first uses the new keys. When the
    client's switch ping is lost, that is a data record; the old association's linger end
    must still become the server's next deadline (the kept deadline comes forward)."""
    net, cs, ss = connect(*key_pair_endpoints(config=SecureConfig(previous_linger=0.1)))
    net.client.rekey(cs, net.now)
    old = cs._current
    for _ in range(10):
        for data, _a in net.client.datagrams_to_send(net.now):
            if cs._current is old:                # once the client switched: its ping is lost
                net.server.datagram_received(data, CLIENT_ADDR, net.now)
        for data, _a in net.server.datagrams_to_send(net.now):
            net.client.datagram_received(data, SERVER_ADDR, net.now)
    assert cs._current is not old and ss._current is not cs._current   # server not switched yet
    assert net.server.datagram_received(net.client.seal_segment(cs, segment(1)), CLIENT_ADDR,
                                        net.now) == [(ss, segment(1))]
    assert ss._current.id == cs._current.id and ss._previous is not None
    assert net.server.next_deadline() <= net.now + 0.1


def _kept_deadline_is_never_late(ep: SecureEndpoint) -> None:
    kept, true = ep.next_deadline(), ep._compute_deadline()
    if true is not None:
        assert kept is not None and kept <= true + 1e-9, (kept, true)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(["c2s", "s2c", "tick", "timers", "rekey", "lossy", "clean", "roam"]),
                max_size=40), st.integers(0, 2**16))
def test_kept_deadline_is_never_later_than_a_fresh_one(steps: list[str], seed: int) -> None:
    """Whatever happens (data both ways, timers, rekeys by time, records and hand, loss,
    a client that moves), each side's kept deadline is at or before the one a full scan
    gives, so :meth:`handle_timer` never skips due work."""
    config = SecureConfig(rekey_after_records=12, hard_record_limit=1 << 20, ping_interval=2.0,
                          dead_after=30.0, idle_timeout=30.0, rekey_after_seconds=3.0,
                          previous_linger=0.1, handshake_rto=0.2)
    net, cs, ss = connect(*key_pair_endpoints(config=config), seed=seed)
    for i, step in enumerate(steps):
        for ep in (net.client, net.server):    # start each step from a fresh scan, so that
            ep._deadline_stale = True           # what the step itself did is what is checked
            ep.next_deadline()
        if step == "c2s" and cs.established:
            net.send_c2s(cs, segment(i))
        elif step == "s2c" and ss.established:
            net.send_s2c(ss, segment(i))
        elif step == "tick":
            net.advance(net.now + 0.3)
        elif step == "timers":
            d = min(x for x in (net.client.next_deadline(), net.server.next_deadline(), net.now + 5)
                    if x is not None)
            net.advance(max(d, net.now))
        elif step == "rekey" and cs.established and cs._pending is None:
            net.client.rekey(cs, net.now)
        elif step in ("lossy", "clean"):
            net.loss = 0.3 if step == "lossy" else 0.0
        elif step == "roam":
            net.client_addr = (net.client_addr[0], net.client_addr[1] + 1)
        net.deliver()
        _kept_deadline_is_never_late(net.client)
        _kept_deadline_is_never_late(net.server)


# --- damaged handshake datagrams (issue 19, lossy links) ---------------------------------

def _handshake_datagrams(make) -> dict[str, int]:
    """How many datagrams each direction sends until both ends are established, undamaged."""
    client, server = make()
    net = Net(client, server)
    client.connect(SERVER_ADDR, 0.0)
    net.advance(5.0)
    net.established()
    return {way: sum(1 for w, _, _ in net.sent if w == way) for way in ("c2s", "s2c")}


# Where the bit flips, in a datagram of L bytes: the first record's number (a high and
# the lowest byte; GUE header 12 bytes, then type 1, version 2, epoch 2, number 6),
# the middle of the record, its last byte.
FLIPS = {"number high": lambda n: 19, "number low": lambda n: 22, "middle": lambda n: n // 2 + 1,
         "last": lambda n: n - 1}


@pytest.mark.parametrize("where", FLIPS)
@pytest.mark.parametrize("make", [key_pair_endpoints, secret_endpoints], ids=["keys", "secret"])
def test_a_bit_flipped_in_any_handshake_datagram_costs_a_retry_not_the_session(make, where) -> None:
    """A damaged handshake record breaks the DTLS transcript (the Finished check or a
    decode error), which OpenSSL reports like an attack: the client starts a fresh
    handshake and the server, seeing its new ClientHello, forgets the broken one. A
    damaged certificate is not judged as a key, and a damaged record number does not
    move the replay window (dtls.Handshake.feed)."""
    counts = _handshake_datagrams(make)
    assert counts["c2s"] >= 3 and counts["s2c"] >= 3, counts
    for way, total in counts.items():
        for n in range(1, total + 1):
            def flip(w: str, i: int, data: bytes, way=way, n=n) -> bytes:
                if w != way or i != n:
                    return data
                bad = bytearray(data)
                bad[FLIPS[where](len(bad))] ^= 0x10
                return bytes(bad)
            client, server = make()
            net = Net(client, server)
            net.mangle = flip
            client.connect(SERVER_ADDR, 0.0)
            net.advance(10.0)
            cs, ss = net.established()
            assert net.send_c2s(cs, segment(3)) is not None, (way, n)
            assert net.to_server == [(ss, segment(3))], (way, n)
            assert not [e for e in net.client_events if isinstance(e, SessionClosed)], (way, n)


# --- segments that overtake a proof -------------------------------------------------------

_BARE_SYN = bytes(12) + b"\x50\x02" + bytes(6)      # a TCP header with no payload


def test_a_segment_that_overtakes_a_proof_is_held_until_the_proofs_are_done() -> None:
    """On a path that reorders, the inner SYN sent right behind the client proof, and the
    SYN-ACK right behind the server's, can arrive first; they wait for the proof (at
    most EARLY_RECORDS per association) instead of being dropped and costing each side
    a retransmission timeout."""
    client, server = key_pair_endpoints()
    net = Net(client, server)
    held: dict[str, bytes] = {}

    def hold_first_proof(way: str, n: int, data: bytes) -> bytes | None:
        is_app_record = data[12] == 23 and data[15:17] == b"\x00\x01"
        if is_app_record and way not in held:
            held[way] = data
            return None
        return data

    net.mangle = hold_first_proof
    cs = client.connect(SERVER_ADDR, net.now)
    net.deliver()
    assert "c2s" in held and cs.state == "handshake"
    # the SYN leaves behind the (held) proof and reaches the server first
    assert net.server.datagram_received(client.seal_segment(cs, _BARE_SYN), CLIENT_ADDR, net.now) == []
    assert server.counters["early_held"] == 1 and server.counters["drop_not_established"] == 0
    got = server.datagram_received(held["c2s"], CLIENT_ADDR, net.now)
    assert [seg for _s, seg in got] == [_BARE_SYN]
    net.deliver()
    ss = [e.session for e in net.server_events if isinstance(e, SessionEstablished)][0]
    assert got[0][0] is ss and "s2c" in held and cs.state == "handshake"
    # the SYN-ACK overtakes the server proof the same way
    syn_ack = bytes(12) + b"\x50\x12" + bytes(6)
    assert client.datagram_received(server.seal_segment(ss, syn_ack), SERVER_ADDR, net.now) == []
    assert client.counters["early_held"] == 1
    got = client.datagram_received(held["s2c"], SERVER_ADDR, net.now)
    assert got == [(cs, syn_ack)] and cs.state == "established"
    assert client.counters["drop_not_established"] == server.counters["drop_not_established"] == 0


def test_early_segments_are_bounded_and_never_delivered_without_the_proof() -> None:
    from toucli.session import EARLY_RECORDS
    client, server = key_pair_endpoints()
    net = Net(client, server)
    net.mangle = lambda way, n, data: None if way == "c2s" and data[12] == 23 else data
    cs = client.connect(SERVER_ADDR, net.now)
    net.deliver()
    for _ in range(EARLY_RECORDS + 5):
        assert server.datagram_received(client.seal_segment(cs, _BARE_SYN), CLIENT_ADDR, net.now) == []
    assert server.counters["early_held"] == EARLY_RECORDS
    assert server.counters["drop_not_established"] == 5
    assert not [e for e in net.server_events if isinstance(e, SessionEstablished)]


def test_each_flight_is_one_datagram_so_a_reordering_path_cannot_split_it() -> None:
    """One record per datagram let a path that reorders deliver the client's
    ChangeCipherSpec ahead of its CertificateVerify; OpenSSL drops such a CCS and the
    flight had to be resent (3 round trips of timer on a 100 ms path)."""
    net, cs, ss = connect(*key_pair_endpoints())
    shake = [(way, split_records(d[12:])) for way, d, _ in net.sent if d[12] in (20, 22)]
    assert [way for way, _recs in shake] == ["c2s", "s2c", "c2s", "s2c", "c2s", "s2c"]
    assert [len(recs) for _way, recs in shake] == [1, 1, 1, 5, 5, 2]   # CH, HVR, CH, SH..SHD, Cert..Fin, CCS Fin
    assert all(len(d) <= 12 + dtls.HANDSHAKE_MTU for _w, d, _a in net.sent)
    assert net.client.counters["handshake_retransmissions"] == net.server.counters["handshake_retransmissions"] == 0


def test_the_client_proof_leaves_with_the_finished_flight() -> None:
    """The client's keys and exporter are settled once it has written its Finished, so
    its proof goes right behind that flight instead of a round trip later, when the
    server's Finished is in (like TLS False Start, RFC 7918, for the proof and a bare
    SYN only: data still waits for the server proof)."""
    net, cs, ss = connect(*secret_endpoints())
    order = [(way, d[12]) for way, d, _ in net.sent][:8]
    assert order == [("c2s", 22), ("s2c", 22),            # ClientHello, HelloVerifyRequest
                     ("c2s", 22), ("s2c", 22),            # ClientHello, ServerHello..ServerHelloDone
                     ("c2s", 22), ("c2s", 23),            # Certificate..Finished, client proof
                     ("s2c", 20), ("s2c", 23)]            # ChangeCipherSpec+Finished, server proof
    assert net.send_c2s(cs, segment(1)) is not None and net.to_server[-1] == (ss, segment(1))


def test_a_server_proof_that_overtakes_the_servers_finished_waits_for_it() -> None:
    client, server = secret_endpoints()
    net = Net(client, server)
    held: list[bytes] = []

    def hold_final_flight(way: str, n: int, data: bytes) -> bytes | None:
        if way == "s2c" and data[12] == 20 and not held:
            held.append(data)             # the server's CCS + Finished
            return None
        return data

    net.mangle = hold_final_flight
    cs = client.connect(SERVER_ADDR, net.now)
    net.deliver()
    assert held and cs.state == "handshake" and client.counters["auth_failures"] == 0
    assert client.datagram_received(held[0], SERVER_ADDR, net.now) == []
    net.deliver()
    assert cs.state == "established" and client.counters["handshake_retransmissions"] == 0


def test_a_client_proof_that_overtakes_the_clients_flight_is_opened_once_the_keys_exist() -> None:
    client, server = secret_endpoints()
    net = Net(client, server)
    held: list[bytes] = []

    def hold_finished_flight(way: str, n: int, data: bytes) -> bytes | None:
        if way == "c2s" and not held and any(r[0] == 20 for r in split_records(data[12:])):
            held.append(data)             # Certificate..ChangeCipherSpec, Finished
            return None
        return data

    net.mangle = hold_finished_flight
    cs = client.connect(SERVER_ADDR, net.now)
    net.deliver()
    assert held and server.counters["early_held"] == 1     # the proof, before any keys
    net.to_server += server.datagram_received(held[0], CLIENT_ADDR, net.now)
    net.deliver()
    assert cs.state == "established" and len(server.sessions()) == 1
    assert client.counters["handshake_retransmissions"] == server.counters["handshake_retransmissions"] == 0
    assert server.counters["drop_not_established"] == 0
