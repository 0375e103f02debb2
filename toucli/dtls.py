"""One DTLS 1.2 handshake run by OpenSSL (via pyOpenSSL) over memory BIOs, sans-I/O.

* Contexts (:func:`make_context`): DTLS 1.2 only, ECDHE with AEAD suites only
  (:data:`CIPHER_LIST`), no renegotiation, no tickets, mutual certificate
  authentication where the certificate is a throwaway wrapper around a tou key
  and the peer is judged by a policy callback on its public key alone.
* Stateless cookies (RFC 6347 §4.2.1): :func:`listen` answers a ClientHello
  without a valid cookie with a HelloVerifyRequest it writes itself, byte for byte
  as OpenSSL's ``DTLSv1_listen`` would (:func:`hello_cookie`,
  :func:`hello_verify_request`), so nothing per peer is kept and a flood of
  ClientHellos costs no OpenSSL object each; only a ClientHello whose cookie
  verifies reaches OpenSSL. Cookies are an HMAC of the peer address under a
  secret that rotates (:class:`CookieJar`).
* Retransmission (RFC 6347 §4.2.4) is driven by ``now``, not by OpenSSL's own
  clock: :class:`Handshake` keeps the last flight it sent and resends it when its
  timer expires (doubling, capped). The timer starts at 1 s; once a flight that was
  not resent has been answered (Karn's rule), a new flight's timer is three times
  that round trip, at least 100 ms and at most 1 s (RFC 9147 §5.8.2 leaves
  shorter timers to profiles; 3x a first sample is RFC 9002 §6.2's probe timeout
  before any variance is known). Unprotected (epoch 0) records get fresh
  record sequence numbers on every send, as OpenSSL's own retransmissions would;
  the protected Finished record is resent byte for byte. The side that sent the
  final flight resends it when the peer's Finished arrives again.
* Keys (:func:`record_keys`): the record keys OpenSSL uses are derived from the
  master secret and randoms with the TLS 1.2 PRF (RFC 5246 §5, §6.3), so tou's fast
  path (:mod:`toucli.record`) writes records OpenSSL itself accepts. Renegotiation
  is off, so each association has exactly one protected epoch, 1.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any, Callable

from OpenSSL import SSL, crypto

from .keys import PrivateKey, PublicKey
from .record import (AES_128_GCM, AES_256_GCM, CHACHA20_POLY1305, CT_ALERT, CT_HANDSHAKE, RecordProtection,
                     parse_record_header, split_records)

DTLS1_2_VERSION = 0xFEFD
DTLS1_0_VERSION = 0xFEFF      # what a HelloVerifyRequest says (RFC 6347 §4.2.1)
MT_CLIENT_HELLO = 1
MT_HELLO_VERIFY_REQUEST = 3
CIPHER_LIST = (b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:"
               b"ECDHE-ECDSA-AES256-GCM-SHA384")
HANDSHAKE_MTU = 1400          # ciphertext bytes OpenSSL may put in one datagram
APPLICATION_EPOCH = 1
RTO_INITIAL = 1.0             # RFC 6347 §4.2.4.1
RTO_FLOOR = 0.1               # a timer derived from a measured round trip is at least this
RTO_MAX = 8.0                 # capped lower than the RFC's 60 s: tou gives up after a few tries
SEQ0_AHEAD = 64               # epoch-0 record numbers further ahead than this are damage (feed)
SEEN_LIMIT = 128              # received handshake records remembered for duplicate detection

# TLS alert descriptions (RFC 5246 §7.2) that tou interprets.
ALERT_CLOSE_NOTIFY = 0
ALERT_BAD_CERTIFICATE = 42
ALERT_CERTIFICATE_UNKNOWN = 46
ALERT_UNKNOWN_CA = 48
ALERT_ACCESS_DENIED = 49
ALERT_HANDSHAKE_FAILURE = 40
REJECTION_ALERTS = frozenset({ALERT_BAD_CERTIFICATE, ALERT_CERTIFICATE_UNKNOWN,
                              ALERT_UNKNOWN_CA, ALERT_ACCESS_DENIED})

_SUITES = {  # OpenSSL name -> (cipher, key length, IV length, PRF hash)
    "ECDHE-ECDSA-AES128-GCM-SHA256": (AES_128_GCM, 16, 4, hashlib.sha256),
    "ECDHE-ECDSA-AES256-GCM-SHA384": (AES_256_GCM, 32, 4, hashlib.sha384),
    "ECDHE-ECDSA-CHACHA20-POLY1305": (CHACHA20_POLY1305, 32, 12, hashlib.sha256),
}

PeerPolicy = Callable[[PublicKey | None], "str | None"]   # -> rejection reason, or None to accept


def make_context(server: bool, key: PrivateKey, policy: PeerPolicy) -> SSL.Context:
    """A DTLS 1.2 context presenting ``key`` and judging the peer's key with ``policy``.

    ``policy`` gets the peer's public key (None if it is not P-256) and returns a
    rejection reason, or None to accept. A :class:`Handshake` may carry its own
    policy, which then wins; the verdict is recorded on the handshake.
    """
    ctx = SSL.Context(SSL.DTLS_SERVER_METHOD if server else SSL.DTLS_CLIENT_METHOD)
    ctx.set_min_proto_version(DTLS1_2_VERSION)
    ctx.set_max_proto_version(DTLS1_2_VERSION)
    ctx.set_cipher_list(CIPHER_LIST)
    ctx.set_options(SSL.OP_NO_QUERY_MTU | SSL.OP_NO_RENEGOTIATION | SSL.OP_NO_TICKET
                    | SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE)
    ctx.use_certificate(key.certificate())
    ctx.use_privatekey(key.key)

    def verify(conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int) -> bool:
        if depth != 0:          # a tou peer sends exactly one self-signed certificate
            return False
        owner = conn.get_app_data()
        try:
            c = cert.to_cryptography()
            c.verify_directly_issued_by(c)
        except Exception:
            # Not signed by its own key: damaged on the path (handshake records are not
            # protected until Finished) or forged. Judging its key would turn a flipped
            # bit into "key not authorized"; the transcript check (CertificateVerify,
            # Finished) fails the handshake instead, and it is never accepted.
            if isinstance(owner, Handshake):
                owner.damaged_certificate = True
                return True
            return False
        try:
            peer: PublicKey | None = PublicKey.from_cryptography(c.public_key())
        except Exception:
            peer = None
        reason = (getattr(owner, "policy", None) or policy)(peer)
        if isinstance(owner, Handshake):
            owner.peer_key = peer
            owner.rejection = reason
        return reason is None

    ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, verify)
    if server:
        ctx.set_options(SSL.OP_COOKIE_EXCHANGE)
        # OpenSSL checks the cookie again when the handshake proper starts, by which
        # time the connection's app data is the Handshake; it keeps the listen info.
        ctx.set_cookie_generate_callback(lambda conn: _listen_info(conn).make_cookie())
        ctx.set_cookie_verify_callback(lambda conn, cookie: _listen_info(conn).check_cookie(cookie))
    return ctx


class CookieJar:
    """Stateless HelloVerifyRequest cookies (RFC 6347 §4.2.1): HMAC(secret, address).

    The secret changes every ``lifetime`` seconds; a cookie from the previous
    secret is still accepted.
    """

    def __init__(self, rng: Callable[[int], bytes], lifetime: float = 60.0) -> None:
        self._rng = rng
        self.lifetime = lifetime
        self._secrets: list[bytes] = [rng(32), rng(32)]   # current, previous
        self._rotated_at: float | None = None

    def _rotate(self, now: float) -> None:
        if self._rotated_at is None:
            self._rotated_at = now
        while now - self._rotated_at >= self.lifetime:
            self._secrets = [self._rng(32), self._secrets[0]]
            self._rotated_at += self.lifetime

    def make(self, addr: Any, now: float) -> bytes:
        self._rotate(now)
        return hmac.new(self._secrets[0], repr(addr).encode(), hashlib.sha256).digest()[:16]

    def check(self, cookie: bytes, addr: Any, now: float) -> bool:
        self._rotate(now)
        msg = repr(addr).encode()
        return any(hmac.compare_digest(cookie, hmac.new(s, msg, hashlib.sha256).digest()[:16])
                   for s in self._secrets)


class _ListenInfo:
    __slots__ = ("jar", "addr", "now", "policy")

    def __init__(self, jar: CookieJar, addr: Any, now: float) -> None:
        self.jar, self.addr, self.now, self.policy = jar, addr, now, None

    def make_cookie(self) -> bytes:
        return self.jar.make(self.addr, self.now)

    def check_cookie(self, cookie: bytes) -> bool:
        return self.jar.check(cookie, self.addr, self.now)


def _listen_info(conn: SSL.Connection) -> _ListenInfo:
    owner = conn.get_app_data()
    return owner if isinstance(owner, _ListenInfo) else owner.listen_info


def _drain(conn: SSL.Connection) -> bytes:
    out = b""
    while True:
        try:
            chunk = conn.bio_read(65536)
        except SSL.WantReadError:
            return out
        if not chunk:
            return out
        out += chunk


def hello_cookie(record: bytes | memoryview) -> bytes | None:
    """The cookie of the ClientHello in ``record`` (empty when it has none), or None when
    ``record`` is no ClientHello a listening server takes: the checks of OpenSSL's
    ``DTLSv1_listen``, which drops such a record without an answer.

    A handshake record (RFC 6347 §4.1: type 22, version major ``fe``, epoch 0, a length
    that fits; data after it is ignored) holding exactly one handshake fragment
    (§4.2.2: 12-byte header) that is a ClientHello (type 1) with message_seq 0 or 1,
    starting at offset 0 and no longer than the message (§4.2.1: a ClientHello whose
    cookie is not in its first fragment cannot be answered statelessly); its body
    (RFC 5246 §7.4.1.2) reaches past the random, the session ID and the cookie.
    """
    n = len(record)
    if n < 25 or record[0] != CT_HANDSHAKE or record[1] != 0xFE or record[3] or record[4]:
        return None
    end = 13 + (record[11] << 8 | record[12])
    if end > n or record[13] != MT_CLIENT_HELLO:
        return None
    msg_len = int.from_bytes(record[14:17], "big")
    frag_len = int.from_bytes(record[22:25], "big")
    if (record[17] << 8 | record[18]) > 1 or record[19:22] != b"\0\0\0" or frag_len > msg_len \
            or 25 + frag_len != end:
        return None
    at = 25 + 2 + 32                   # client_version, random
    if at >= end:
        return None
    at += 1 + record[at]               # session_id<0..32>
    if at >= end:
        return None
    cookie_end = at + 1 + record[at]   # cookie<0..2^8-1>
    if cookie_end > end:
        return None
    return bytes(record[at + 1:cookie_end])


def client_hello_random(record: bytes | memoryview) -> bytes | None:
    """The 32-byte random of the ClientHello in ``record`` (None when :func:`hello_cookie`
    takes it for none). A client's new attempt has a new random; its retransmissions keep it."""
    if hello_cookie(record) is None:
        return None
    return bytes(record[25 + 2:25 + 2 + 32])      # headers, client_version (RFC 5246 §7.4.1.2)


_HVR_VERSION = DTLS1_0_VERSION.to_bytes(2, "big")


def hello_verify_request(record: bytes, cookie: bytes) -> bytes:
    """The HelloVerifyRequest answering the ClientHello ``record`` (RFC 6347 §4.2.1), as
    OpenSSL's ``DTLSv1_listen`` writes it: version ``fe ff`` in the record and the
    message, the ClientHello's record sequence number, message_seq 0, one fragment."""
    body = _HVR_VERSION + bytes((len(cookie),)) + cookie
    n = len(body).to_bytes(3, "big")
    msg = bytes((MT_HELLO_VERIFY_REQUEST,)) + n + b"\0\0\0\0\0" + n + body
    return bytes((CT_HANDSHAKE,)) + _HVR_VERSION + bytes(record[3:11]) + len(msg).to_bytes(2, "big") + msg


def listen(ctx: SSL.Context, jar: CookieJar, record: bytes, addr: Any, now: float
           ) -> tuple[SSL.Connection | None, list[bytes]]:
    """Offer one ClientHello record; state only if its cookie verifies.

    Returns ``(None, records)``: the records (a HelloVerifyRequest, or nothing for
    anything that is not a ClientHello, :func:`hello_cookie`) go back to ``addr``, and
    no state is kept; or ``(conn, [])`` when the cookie verified: ``conn``, a fresh
    server connection that took the ClientHello, is ready for :class:`Handshake`.
    """
    cookie = hello_cookie(record)
    if cookie is None:
        return None, []
    if not cookie or not jar.check(cookie, addr, now):
        return None, [hello_verify_request(record, jar.make(addr, now))]
    if int.from_bytes(record[5:11], "big") > SEQ0_AHEAD:
        return None, []         # a client numbers from 0: damaged (see Handshake.feed)
    conn = SSL.Connection(ctx, None)
    conn.set_accept_state()
    conn.set_ciphertext_mtu(HANDSHAKE_MTU)
    conn.set_app_data(_ListenInfo(jar, addr, now))
    conn.bio_write(record)
    try:
        conn.DTLSv1_listen()
    except SSL.WantReadError:
        return None, split_records(_drain(conn))
    except SSL.Error:
        return None, []
    return conn, []


@dataclass(frozen=True)
class HandshakeFailure:
    """Why a handshake stopped.

    ``kind`` is ``"rejected_peer"`` (our policy refused the peer's key),
    ``"peer_alert"`` (the peer sent a fatal alert, ``alert`` says which) or
    ``"protocol"`` (anything else OpenSSL objected to; ``detail`` has its words).
    """

    kind: str
    alert: int | None
    detail: str


class Handshake:
    """One OpenSSL DTLS connection through its handshake, fed and drained by the caller.

    Client: ``Handshake.client(ctx, now)`` (it writes the ClientHello at once).
    Server: ``Handshake(conn, True, now)`` with a connection from :func:`listen`,
    then :meth:`step` (listen already consumed the ClientHello). Received records go
    in through :meth:`feed`, records to send come out of :meth:`take_output`.
    """

    def __init__(self, conn: SSL.Connection, server: bool, now: float, policy: PeerPolicy | None = None,
                 rto: float = RTO_INITIAL, rto_max: float = RTO_MAX, first_seq: int | None = None) -> None:
        self.conn = conn
        self.server = server
        self.policy = policy
        self.rejection: str | None = None    # set by a policy that refused the peer
        self.damaged_certificate = False     # the peer's certificate failed its own signature
        self.peer_key: PublicKey | None = None
        self.listen_info = conn.get_app_data()
        conn.set_app_data(self)
        self.complete = False
        # Client: its Finished has been written, so the master secret, record keys and
        # exporter are settled although the server's Finished has not been seen yet.
        self.finished_sent = False
        self.failure: HandshakeFailure | None = None
        self.rto_initial = rto
        self.rto = rto
        self.rto_max = rto_max
        self.deadline: float | None = None
        self.rtt: float | None = None          # round trip of the latest flight answered without a resend
        self._flight_sent: float | None = None  # when the current flight went; None once resent or answered
        self.flight: list[bytes] = []
        self.outbox: list[bytes] = []
        self.retransmissions = 0
        self._seen: set[bytes] = set()
        self._final_flight = False
        self._peer_alert: int | None = None
        # Next epoch-0 record number (see _send). A server starts at its ClientHello's
        # (RFC 6347 §4.2.1): above every HelloVerifyRequest it sent, which echo the numbers
        # of earlier ClientHellos, so the client's replay window does not drop the ServerHello.
        self._seq0: int | None = first_seq
        self._peer_seq0 = 0                  # highest epoch-0 record number taken from the peer
        self._cookie: bytes | None = None    # client: the first HelloVerifyRequest's body
        self.damaged = 0                     # records dropped as damaged (epoch-0 number far ahead)
        self.started = now

    @classmethod
    def client(cls, ctx: SSL.Context, now: float, policy: PeerPolicy | None = None,
               rto: float = RTO_INITIAL, rto_max: float = RTO_MAX) -> Handshake:
        conn = SSL.Connection(ctx, None)
        conn.set_connect_state()
        conn.set_ciphertext_mtu(HANDSHAKE_MTU)
        hs = cls(conn, False, now, policy, rto, rto_max)
        hs.step(now)
        return hs

    def feed(self, record: bytes, now: float) -> None:
        """Hand one received record to OpenSSL (duplicates handled here, see module doc)."""
        if self.failure is not None:
            return
        if record[3:5] == b"\0\0" and len(record) >= 11:
            # An epoch-0 record number is not protected: one flipped high bit would
            # move OpenSSL's replay window (RFC 6347 §4.1.2.6) past every genuine
            # record to come and stall the handshake. A peer numbers its records
            # from 0, one by one, so a number far ahead of the last one seen is damage.
            seq = int.from_bytes(record[5:11], "big")
            if seq > self._peer_seq0 + SEQ0_AHEAD:
                self.damaged += 1
                return
            self._peer_seq0 = max(self._peer_seq0, seq)
        if (not self.server and record[0] == CT_HANDSHAKE and record[3:5] == b"\0\0" and len(record) > 25
                and record[13] == MT_HELLO_VERIFY_REQUEST):
            # HelloVerifyRequest (RFC 6347 §4.2.1; epoch 0: in the encrypted Finished,
            # byte 13 is ciphertext and is 3 one time in 256). OpenSSL answers only the first; if a
            # later one carries another cookie, the one we echo was damaged on the way
            # (or the server's cookie secret turned): this attempt cannot complete.
            if self._cookie is None:
                self._cookie = bytes(record[25:])
            elif bytes(record[25:]) != self._cookie:
                self.failure = HandshakeFailure("protocol", None, "the server keeps asking for a new cookie")
                self.deadline = None
                return
        if record in self._seen:
            if self._final_flight and self.flight:
                self._send(self.flight)
                self.retransmissions += 1
            return
        if len(self._seen) < SEEN_LIMIT and not self.complete:
            self._seen.add(record)     # after completion, only the handshake's own records need spotting
        if self._flight_sent is not None:      # the first new record answering the flight
            self.rtt = now - self._flight_sent
            self._flight_sent = None
        hdr = parse_record_header(record)
        if hdr is not None and hdr[0] == CT_ALERT and hdr[2] == 0 and len(record) >= 15:
            if record[13] == 2:
                self._peer_alert = record[14]
        self.conn.bio_write(record)
        if self.complete:
            # Records after completion (e.g. a late duplicate with a new sequence number)
            # may make OpenSSL resend its last flight; collect whatever it writes.
            try:
                self.conn.recv(65536)
            except SSL.Error:
                pass
            self._collect(now, after_complete=True)
            return
        self.step(now)

    def step(self, now: float) -> None:
        """Let OpenSSL make progress and collect what it writes."""
        try:
            self.conn.do_handshake()
        except SSL.WantReadError:
            pass
        except SSL.Error as exc:
            self._fail(exc)
        else:
            if self.damaged_certificate:     # cannot happen without a forger: never accept it
                self.failure = HandshakeFailure("protocol", None, "peer certificate not self-signed")
                self.deadline = None
            else:
                self.complete = True
                self.peer_key = self.peer_key or _peer_key(self.conn)
        self._collect(now)

    def _fail(self, exc: SSL.Error) -> None:
        detail = "; ".join(str(e[2]) for e in exc.args[0]) if exc.args and isinstance(exc.args[0], list) \
            else str(exc)
        if self.rejection is not None:
            self.failure = HandshakeFailure("rejected_peer", None, self.rejection)
        elif self._peer_alert is not None or "alert" in detail:
            self.failure = HandshakeFailure("peer_alert", self._peer_alert, detail)
        else:
            self.failure = HandshakeFailure("protocol", None, detail or "handshake failed")
        self.deadline = None

    def _collect(self, now: float, after_complete: bool = False) -> None:
        records = split_records(_drain(self.conn))
        if records and self.flight:
            # OpenSSL keeps a timer of its own (real time, 1 s): when it has expired by the
            # time the peer's answer is read, OpenSSL first resends the current flight and
            # then writes the next one. The stale copy goes nowhere: ahead of a ClientHello
            # with the cookie it would be answered with another HelloVerifyRequest, every
            # time. A drain that is only a repeat (an answer to the peer's resend) stays.
            sent = {rec[11:] for rec in self.flight}
            fresh = [rec for rec in records if rec[11:] not in sent]
            if fresh and len(fresh) < len(records):
                records = fresh
        if records:
            if not self.server and records[-1][3:5] == b"\0\x01":
                self.finished_sent = True
            self.flight = records
            self._send(records)
            self._final_flight = self.complete
        if self.complete or self.failure is not None:
            self.deadline = None
        elif records:
            self.rto = self.flight_rto()
            self.deadline = now + self.rto
            self._flight_sent = now

    def flight_rto(self) -> float:
        """The timer for a new flight: 1 s, or 3x the measured round trip (module doc)."""
        if self.rtt is None:
            return self.rto_initial
        return min(self.rto_initial, max(RTO_FLOOR, 3.0 * self.rtt))

    def handle_timer(self, now: float) -> None:
        """Resend the last flight if its timer expired (RFC 6347 §4.2.4.1 back-off)."""
        if self.deadline is None or now < self.deadline:
            return
        self._flight_sent = None                # Karn: an answer now is no round-trip sample
        self._send(self.flight)
        self.retransmissions += 1
        self.rto = min(self.rto * 2, self.rto_max)
        self.deadline = now + self.rto

    def _send(self, records: list[bytes]) -> None:
        """Queue records, giving every epoch-0 record a fresh sequence number.

        Epoch-0 records carry no MAC, so renumbering them is invisible to the peer
        except that it cannot mistake a retransmission for a replay: OpenSSL marks
        a record number seen even when it discards the message inside (an early
        ChangeCipherSpec, say), so an identical copy would never get in.
        Protected (epoch 1) records are resent unchanged.
        """
        for rec in records:
            if rec[3:5] == b"\x00\x00":
                if self._seq0 is None:
                    self._seq0 = int.from_bytes(rec[5:11], "big")
                rec = rec[:5] + self._seq0.to_bytes(6, "big") + rec[11:]
                self._seq0 += 1
            self.outbox.append(rec)

    def take_output(self) -> list[bytes]:
        out, self.outbox = self.outbox, []
        return out

    def export(self, label: bytes, length: int = 32) -> bytes:
        """RFC 5705 keying-material exporter (no context)."""
        return self.conn.export_keying_material(label, length)


def _peer_key(conn: SSL.Connection) -> PublicKey | None:
    cert = conn.get_peer_certificate()
    if cert is None:
        return None
    try:
        return PublicKey.from_cryptography(cert.to_cryptography().public_key())
    except Exception:
        return None


def _prf(secret: bytes, label: bytes, seed: bytes, length: int, digest: Any) -> bytes:
    """TLS 1.2 PRF, P_hash with the suite's hash (RFC 5246 §5)."""
    seed = label + seed
    out, a = b"", seed
    while len(out) < length:
        a = hmac.new(secret, a, digest).digest()
        out += hmac.new(secret, a + seed, digest).digest()
    return out[:length]


def record_keys(conn: SSL.Connection, server: bool) -> RecordProtection:
    """The epoch-1 record keys of a finished handshake as a :class:`RecordProtection`.

    key_block = PRF(master_secret, "key expansion", server_random + client_random),
    split into client key, server key, client IV, server IV (RFC 5246 §6.3).
    """
    name = conn.get_cipher_name()
    if name not in _SUITES:
        raise ValueError(f"negotiated cipher {name!r} is not one tou offers")
    cipher, klen, ivlen, digest = _SUITES[name]
    block = _prf(conn.master_key(), b"key expansion", conn.server_random() + conn.client_random(),
                 2 * klen + 2 * ivlen, digest)
    ck, sk = block[:klen], block[klen:2 * klen]
    civ, siv = block[2 * klen:2 * klen + ivlen], block[2 * klen + ivlen:]
    if server:
        return RecordProtection(cipher, APPLICATION_EPOCH, sk, siv, ck, civ)
    return RecordProtection(cipher, APPLICATION_EPOCH, ck, civ, sk, siv)
