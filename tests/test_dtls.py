"""OpenSSL DTLS 1.2 through memory BIOs: cookies, retransmission, and fast-path interop."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from OpenSSL import SSL

from toucli import dtls
from toucli.keys import PrivateKey
from toucli.record import CT_APPLICATION_DATA, FAST_PATH_SEQ_BASE, parse_record_header

SERVER_KEY = PrivateKey.generate()
CLIENT_KEY = PrivateKey.generate()
ADDR = ("192.0.2.1", 40000)


def handshake(cipher: bytes | None = None, before_key_exchange=None):
    """Run a full handshake; returns (client Handshake, server Handshake).
    ``before_key_exchange(client)`` runs once the server has accepted the cookie."""
    sctx = dtls.make_context(True, SERVER_KEY, lambda p: None if p == CLIENT_KEY.public else "no")
    cctx = dtls.make_context(False, CLIENT_KEY, lambda p: None if p == SERVER_KEY.public else "no")
    if cipher is not None:
        cctx.set_cipher_list(cipher)
    jar = dtls.CookieJar(os.urandom)
    client = dtls.Handshake.client(cctx, 0.0)
    [hello] = client.take_output()
    conn, hvr = dtls.listen(sctx, jar, hello, ADDR, 0.0)
    assert conn is None and len(hvr) == 1
    for rec in hvr:
        client.feed(rec, 0.0)
    [hello2] = client.take_output()
    conn, none = dtls.listen(sctx, jar, hello2, ADDR, 0.0)
    assert conn is not None and none == []
    if before_key_exchange is not None:
        before_key_exchange(client)
    server = dtls.Handshake(conn, True, 0.0)
    server.step(0.0)
    for _ in range(4):
        for rec in server.take_output():
            client.feed(rec, 0.0)
        for rec in client.take_output():
            server.feed(rec, 0.0)
    assert client.complete and server.complete
    return client, server


def drain(conn: SSL.Connection) -> bytes:
    out = b""
    while True:
        try:
            out += conn.bio_read(65536)
        except SSL.WantReadError:
            return out


CIPHERS = [
    (b"ECDHE-ECDSA-AES128-GCM-SHA256", "AES-128-GCM"),
    (b"ECDHE-ECDSA-AES256-GCM-SHA384", "AES-256-GCM"),
    (b"ECDHE-ECDSA-CHACHA20-POLY1305", "CHACHA20-POLY1305"),
]


@pytest.mark.parametrize(("suite", "cipher"), CIPHERS)
def test_fast_path_interoperates_with_openssl_both_ways(suite: bytes, cipher: str) -> None:
    client, server = handshake(suite)
    cfast = dtls.record_keys(client.conn, server=False)
    sfast = dtls.record_keys(server.conn, server=True)
    assert cfast.cipher == sfast.cipher == cipher
    nonces: list[bytes] = []
    explicit = cipher != "CHACHA20-POLY1305"
    for i in range(20):
        # OpenSSL seals, our fast path opens (same epoch)
        server.conn.send(b"from openssl %d" % i)
        [rec] = dtls.split_records(drain(server.conn))
        assert cfast.note_openssl_record(rec)
        hdr = parse_record_header(rec)
        assert hdr[0] == CT_APPLICATION_DATA and hdr[2] == 1 and hdr[3] < FAST_PATH_SEQ_BASE
        nonces.append(rec[13:21] if explicit else rec[3:11])
        assert cfast.open(rec)[:2] == (CT_APPLICATION_DATA, b"from openssl %d" % i)
        # our fast path seals, OpenSSL opens (same epoch, same direction as above)
        ours = cfast.seal(b"from fast path %d" % i)
        assert parse_record_header(ours)[3] == FAST_PATH_SEQ_BASE + i
        server.conn.bio_write(ours)
        assert server.conn.recv(100) == b"from fast path %d" % i
        ours_back = sfast.seal(b"server fast %d" % i)
        nonces.append(ours_back[13:21] if explicit else ours_back[3:11])
        client.conn.bio_write(ours_back)
        assert client.conn.recv(100) == b"server fast %d" % i
    # the server's writes came from OpenSSL and from the fast path: no nonce twice
    assert len(set(nonces)) == len(nonces) == 40


def test_same_keys_and_exporter_on_both_sides() -> None:
    client, server = handshake()
    assert client.export(b"EXPORTER-tou-channel-binding") == server.export(b"EXPORTER-tou-channel-binding")
    assert client.export(b"EXPORTER-a") != client.export(b"EXPORTER-b")
    assert client.peer_key == SERVER_KEY.public and server.peer_key == CLIENT_KEY.public
    assert client.conn.get_protocol_version_name() == "DTLSv1.2"


def test_only_ecdhe_aead_suites_are_offered() -> None:
    ctx = dtls.make_context(False, CLIENT_KEY, lambda p: None)
    conn = SSL.Connection(ctx, None)
    names = conn.get_cipher_list()
    assert names and all(n.startswith("ECDHE-") and ("GCM" in n or "CHACHA20" in n) for n in names
                         if not n.startswith("TLS_"))


def test_cookie_jar_rotation() -> None:
    jar = dtls.CookieJar(os.urandom, lifetime=10.0)
    c0 = jar.make(ADDR, 0.0)
    assert jar.check(c0, ADDR, 5.0)
    assert not jar.check(c0, ("192.0.2.9", 40000), 5.0)
    assert jar.check(c0, ADDR, 15.0)        # previous secret still accepted
    assert not jar.check(c0, ADDR, 25.0)    # two rotations later: expired


def test_listen_ignores_garbage() -> None:
    sctx = dtls.make_context(True, SERVER_KEY, lambda p: None)
    conn, out = dtls.listen(sctx, dtls.CookieJar(os.urandom), b"\x16\xfe\xfd" + bytes(20), ADDR, 0.0)
    assert conn is None and out == []


def _openssl_listen(ctx: SSL.Context, jar: dtls.CookieJar, record: bytes, now: float) -> tuple[str, list[bytes]]:
    """What OpenSSL's own DTLSv1_listen makes of ``record`` (what :func:`dtls.listen` did
    before it wrote HelloVerifyRequests itself): ("reply", records), ("drop", []) or ("accept", [])."""
    conn = SSL.Connection(ctx, None)
    conn.set_accept_state()
    conn.set_app_data(dtls._ListenInfo(jar, ADDR, now))
    conn.bio_write(record)
    try:
        conn.DTLSv1_listen()
    except SSL.WantReadError:
        out = dtls.split_records(drain(conn))
        return ("reply", out) if out else ("drop", [])
    except SSL.Error:
        return "drop", []
    return "accept", []


def _tou_listen(ctx: SSL.Context, jar: dtls.CookieJar, record: bytes, now: float) -> tuple[str, list[bytes]]:
    conn, out = dtls.listen(ctx, jar, record, ADDR, now)
    if conn is not None:
        return "accept", []
    return ("reply", out) if out else ("drop", [])


def _hellos() -> tuple[SSL.Context, dtls.CookieJar, bytes, bytes]:
    """A server context, its cookie jar, and a client's first ClientHello (no cookie) and
    second one (with the cookie the jar made for ADDR)."""
    sctx = dtls.make_context(True, SERVER_KEY, lambda p: None)
    cctx = dtls.make_context(False, CLIENT_KEY, lambda p: None)
    jar = dtls.CookieJar(os.urandom)
    client = dtls.Handshake.client(cctx, 0.0)
    [hello] = client.take_output()
    _conn, hvr = dtls.listen(sctx, jar, hello, ADDR, 0.0)
    client.feed(hvr[0], 0.0)
    [hello2] = client.take_output()
    return sctx, jar, hello, hello2


SCTX, JAR, HELLO, HELLO_WITH_COOKIE = _hellos()


def test_hello_verify_request_is_byte_for_byte_openssls() -> None:
    """tou writes the HelloVerifyRequest without an OpenSSL object (RFC 6347 §4.2.1): the
    same bytes as OpenSSL's DTLSv1_listen, for a ClientHello without a cookie, with a
    cookie made for another address, and with one from two secrets ago."""
    stale = dtls.CookieJar(os.urandom)
    cookie_at = 25 + 2 + 32 + 1 + HELLO_WITH_COOKIE[25 + 2 + 32]
    other = HELLO_WITH_COOKIE[:cookie_at + 1] + stale.make(ADDR, 0.0) + HELLO_WITH_COOKIE[cookie_at + 17:]
    for record in (HELLO, other):
        ours, theirs = _tou_listen(SCTX, JAR, record, 1.0), _openssl_listen(SCTX, JAR, record, 1.0)
        assert ours[0] == "reply" and ours == theirs
        [hvr] = ours[1]
        assert hvr[:3] == b"\x16\xfe\xff" and hvr[3:11] == record[3:11]     # the ClientHello's sequence number
        assert hvr[-16:] == JAR.make(ADDR, 1.0) and len(hvr) < len(record)
    assert _tou_listen(SCTX, JAR, HELLO_WITH_COOKIE, 1.0)[0] == "accept"
    late = 2 * JAR.lifetime + 1.0                        # the cookie's secret has been replaced twice
    assert _tou_listen(SCTX, JAR, HELLO_WITH_COOKIE, late) == _openssl_listen(SCTX, JAR, HELLO_WITH_COOKIE, late)


@settings(max_examples=400)
@given(base=st.sampled_from([HELLO, HELLO_WITH_COOKIE]),
       edits=st.lists(st.tuples(st.integers(0, 80), st.integers(0, 255)), max_size=3),
       cut=st.integers(0, 400), tail=st.binary(max_size=8))
def test_listen_treats_a_damaged_client_hello_as_openssl_does(base: bytes, edits: list, cut: int,
                                                             tail: bytes) -> None:
    """Whatever the bytes (headers edited, the record cut or followed by more), tou's
    stateless answer is OpenSSL's: the same HelloVerifyRequest, the same silence, or the
    same acceptance of a valid cookie."""
    record = bytearray(base)
    for at, value in edits:
        if at < len(record):
            record[at] = value
    record = bytes(record[:max(cut, 1)]) + tail if cut < len(record) else bytes(record) + tail
    assert _tou_listen(SCTX, JAR, record, 0.5) == _openssl_listen(SCTX, JAR, record, 0.5)


def test_a_finished_handshake_forgets_no_record_and_remembers_no_new_one() -> None:
    """After completion only the handshake's own records need spotting (a repeated last
    flight is answered); other records no longer pile up in memory (at most 128 of up
    to 64 KiB each before)."""
    client, server = handshake()
    seen = len(server._seen)
    for i in range(200):
        server.feed(b"\x16\xfe\xfd\x00\x01" + i.to_bytes(6, "big") + b"\x04\x00" + os.urandom(1024), 1.0)
    assert len(server._seen) == seen
    assert server.take_output() == []


def test_an_encrypted_record_is_never_taken_for_a_second_hello_verify_request() -> None:
    """The client gives up an attempt whose server sends a second HelloVerifyRequest with
    another cookie; byte 13 of an encrypted (epoch 1) record is ciphertext, 3 one time
    in 256 with ChaCha20-Poly1305, and once made 0.5 % of clean handshakes start over."""
    def inject(client: dtls.Handshake) -> None:
        body = b"\x03" + os.urandom(60)
        client.feed(b"\x16\xfe\xfd\x00\x01" + (0).to_bytes(6, "big") + len(body).to_bytes(2, "big") + body, 0.0)
        assert client.failure is None

    client, server = handshake(before_key_exchange=inject)
    assert client.complete and server.complete and client.failure is None


def test_flight_is_retransmitted_with_fresh_epoch0_sequence_numbers() -> None:
    cctx = dtls.make_context(False, CLIENT_KEY, lambda p: None)
    client = dtls.Handshake.client(cctx, 10.0, rto=1.0, rto_max=2.0)
    [first] = client.take_output()
    assert client.deadline == 11.0
    client.handle_timer(10.5)
    assert client.take_output() == []
    client.handle_timer(11.0)
    [again] = client.take_output()
    assert again[13:] == first[13:] and parse_record_header(again)[3] == parse_record_header(first)[3] + 1
    assert client.deadline == 13.0
    client.handle_timer(13.0)
    assert client.deadline == 15.0           # capped at rto_max
    assert client.retransmissions == 2


def _answered_hello(rtt: float, resend_first: bool = False) -> dtls.Handshake:
    """A client whose ClientHello the server answers (HelloVerifyRequest) ``rtt`` later,
    after the client resent it once if ``resend_first``."""
    sctx = dtls.make_context(True, SERVER_KEY, lambda p: None)
    cctx = dtls.make_context(False, CLIENT_KEY, lambda p: None)
    client = dtls.Handshake.client(cctx, 0.0)
    [hello] = client.take_output()
    if resend_first:
        client.handle_timer(1.0)
        [hello] = client.take_output()
    _conn, hvr = dtls.listen(sctx, dtls.CookieJar(os.urandom), hello, ADDR, 0.0)
    for rec in hvr:
        client.feed(rec, rtt)
    return client


def test_after_a_clean_round_trip_a_flight_is_timed_from_it() -> None:
    """The ClientHello took 1 s of timer (nothing known yet); once it is answered in
    0.2 s, the next flight's timer is 3 x 0.2 s (module doc, RFC 9147 §5.8.2)."""
    client = _answered_hello(0.2)
    assert client.rtt == pytest.approx(0.2)
    [_hello2] = client.take_output()
    assert client.deadline == pytest.approx(0.2 + 0.6)
    client.handle_timer(0.8)                            # lost: resent, doubling from there
    assert len(client.take_output()) == 1 and client.deadline == pytest.approx(0.8 + 1.2)


@pytest.mark.parametrize(("rtt", "timer"), [(0.0005, dtls.RTO_FLOOR), (0.5, dtls.RTO_INITIAL)])
def test_a_measured_flight_timer_stays_between_100_ms_and_1_s(rtt: float, timer: float) -> None:
    client = _answered_hello(rtt)
    assert client.deadline == pytest.approx(rtt + timer)


def test_an_answer_to_a_resent_flight_is_no_round_trip_sample() -> None:
    """Karn's rule: after a resend, which copy was answered is unknown."""
    client = _answered_hello(1.3, resend_first=True)
    assert client.rtt is None
    assert client.deadline == pytest.approx(1.3 + dtls.RTO_INITIAL)


def test_rejected_peer_is_reported() -> None:
    sctx = dtls.make_context(True, SERVER_KEY, lambda p: "client key is not in the authorized keys")
    cctx = dtls.make_context(False, CLIENT_KEY, lambda p: None)
    jar = dtls.CookieJar(os.urandom)
    client = dtls.Handshake.client(cctx, 0.0)
    conn, hvr = dtls.listen(sctx, jar, client.take_output()[0], ADDR, 0.0)
    client.feed(hvr[0], 0.0)
    conn, _ = dtls.listen(sctx, jar, client.take_output()[0], ADDR, 0.0)
    server = dtls.Handshake(conn, True, 0.0)
    server.step(0.0)
    for _ in range(3):
        for rec in server.take_output():
            client.feed(rec, 0.0)
        for rec in client.take_output():
            server.feed(rec, 0.0)
    assert server.failure == dtls.HandshakeFailure("rejected_peer", None,
                                                   "client key is not in the authorized keys")
    assert server.peer_key == CLIENT_KEY.public
    assert client.failure is not None and client.failure.kind == "peer_alert"
    assert client.failure.alert in dtls.REJECTION_ALERTS
