"""Secure TOU sessions: DTLS 1.2 over GUE, found by session ID, sans-I/O.

The wire format is specified in docs/PROTOCOL.md §5-§8. This module holds no
sockets and reads no clock: the caller passes ``now`` (seconds, any monotonic
origin) and moves datagrams. Randomness comes from the ``rng`` callable.

API for the runtime (one :class:`SecureEndpoint` per UDP socket)::

    ep = SecureEndpoint("client" | "server", auth, rng=os.urandom, config=SecureConfig())
    session = ep.connect(addr, now)                 # client: starts a handshake
    for session, segment in ep.datagram_received(data, addr, now):
        ...                                         # decrypted TCP segments, in order received
    datagram = ep.seal_segment(session, segment)    # bytes, or None: do not send now
    for datagram, addr in ep.datagrams_to_send(now): sock.sendto(datagram, addr)
    ep.handle_timer(now)                            # when now >= ep.next_deadline()
    event = ep.next_event()                         # or None
    ep.close(session, now)                          # close_notify, then datagrams_to_send
    ep.counters                                     # dict of ints

* ``auth``: :meth:`Auth.keys` (key pairs; the client needs ``peer_key``, the server
  ``authorized``) or :meth:`Auth.secret` (shared secret). See :class:`Auth`.
* ``datagram_received`` never raises: handshake and control records are handled
  inside; anything that does not authenticate is dropped and counted.
* ``seal_segment`` returns the datagram to send to ``session.peer_addr`` for one
  TCP segment, or None when the session is not established (or is being closed)
  or when sending would break the 3x amplification limit towards an unverified
  new address (TCP retransmits later).
* After every call that may produce output (``connect``, ``datagram_received``,
  ``handle_timer``, ``close``), call ``datagrams_to_send`` and ``next_event``.
* Events: :class:`SessionEstablished` (data may flow), :class:`AuthenticationFailed`
  (one-line ``reason``, one of the ``REASON_*`` constants; the client exits 3),
  :class:`SessionClosed`, :class:`PeerAddressChanged` (server: the reply address
  moved), :class:`SessionRekeyed`. After an :class:`AuthenticationFailed` that
  concerns a session, a :class:`SessionClosed` with the same reason follows.
* :attr:`Session.peer_addr` is where the runtime sends this session's datagrams;
  :attr:`Session.overhead` is the bytes added to a TCP segment above UDP (for MSS).
* The client keeps pinging an idle session (NAT refresh, liveness); a client that
  hears nothing authenticated for ``config.dead_after`` seconds closes the session
  with :data:`REASON_PEER_DEAD` so the runtime can reconnect. A server closes a
  session silent for ``config.idle_timeout``.

Design (docs/PROTOCOL.md): a *session* survives rekeys and address changes; each
DTLS handshake makes an *association* with its own 32-bit ID, chosen by the
server and carried in the GUE session-ID field. A client's datagrams carry ID 0
until its handshake completes; the server finds those by address (the cookie
exchange verified it). Every association starts with a proof exchange (client
proof, server proof) before data flows: it binds the shared secret (secret mode)
or the previous association (rekey) to this association's RFC 5705 exporter value.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Hashable

from .dtls import (ALERT_ACCESS_DENIED, ALERT_CLOSE_NOTIFY, APPLICATION_EPOCH, HANDSHAKE_MTU, REJECTION_ALERTS,
                   CookieJar, Handshake, client_hello_random, listen, make_context, record_keys)
from .keys import AuthorizedKeys, PrivateKey, PublicKey, SharedSecret
from .record import (CT_ALERT, CT_APPLICATION_DATA, CT_HANDSHAKE, RECORD_HEADER_LEN, RecordDrop,
                     RecordProtection, split_records)
from .stack import gue
from .stack.errors import LocalError

Addr = Hashable
Rng = Callable[[int], bytes]

CLIENT = "client"
SERVER = "server"

GUE_HEADER_LEN = 12                  # base 4 + transform 4 + session ID 4
MIN_TCP_SEGMENT = 20                 # shorter app-data plaintexts are control messages

# Control messages (docs/PROTOCOL.md §7): plaintext of an application-data record
# shorter than any TCP header.
MSG_CLIENT_PROOF = 0x01              # prev_id(4) mac(14)
MSG_SERVER_PROOF = 0x02              # prev_id(4) mac(14)
MSG_PING = 0x03
MSG_PONG = 0x04
MSG_PATH_CHALLENGE = 0x05            # data(8)
MSG_PATH_RESPONSE = 0x06             # data(8)
PROOF_MAC_LEN = 14
HANDSHAKE_ATTEMPTS = 3               # client: fresh handshakes after a damaged one, then give up
EARLY_RECORDS = 16                   # segments an association holds until its proofs are done
EXPORTER_BINDING = b"EXPORTER-tou-channel-binding"
EXPORTER_REKEY = b"EXPORTER-tou-rekey"
PROOF_LABEL = b"tou proof v1"
KEYS_MODE_PROOF_KEY = b""            # key mode: the proof only confirms; certificates authenticate

REASON_SERVER_KEY_MISMATCH = "authentication failed: server key does not match {source}"
REASON_CLIENT_KEY_REJECTED = "authentication failed: the server does not accept this client's key"
REASON_UNKNOWN_CLIENT = "authentication failed: client key is not in the authorized keys"
REASON_SERVER_KEY_REJECTED = "authentication failed: the client does not accept this server's key"
REASON_SECRET_MISMATCH = "authentication failed: shared secret does not match"
REASON_SECRET_REJECTED = ("authentication failed: the server rejected this client "
                          "(it expects a key pair, not a shared secret)")
REASON_HANDSHAKE_TIMEOUT = "handshake timed out"
REASON_PEER_DEAD = "peer not responding"
REASON_IDLE = "idle timeout"
REASON_CLOSED_LOCALLY = "closed"
REASON_CLOSED_BY_PEER = "closed by peer"
REASON_CANCELED_BY_PEER = "the peer exited with connections unfinished"
ALERT_USER_CANCELED = 90             # RFC 5246 §7.2.2; tou sends it fatal, on an unclean exit
REASON_KEY_LIMIT = "key usage limit reached without rekey"

_PROOF = struct.Struct("!BI14s")
_ALERT = struct.Struct("!BB")
_U32 = struct.Struct("!I")

COUNTER_NAMES = (
    "datagrams_in", "datagrams_out", "bytes_in", "bytes_out", "segments_in", "segments_out",
    "handshakes_started", "handshakes_completed", "handshakes_failed", "handshakes_restarted",
    "hello_verify_sent",
    "handshake_retransmissions", "rekeys", "auth_failures", "address_changes",
    "drop_malformed", "drop_unknown_session", "drop_replay", "drop_auth", "drop_not_established",
    "drop_amplification", "drop_nonce_guard", "drop_stale_handshake", "early_held",
)


# --- configuration ------------------------------------------------------------------

class Auth:
    """How an endpoint authenticates itself and judges its peer.

    * ``Auth.keys(private_key, peer_key=..., peer_key_source="--peer-key")`` for a
      client that pins the server's key (``peer_key_source`` names where the pin came
      from in the failure message);
    * ``Auth.keys(private_key, authorized=AuthorizedKeys(...))`` for a server;
    * ``Auth.secret(shared_secret)`` for either side (a :class:`SharedSecret` or its
      32-byte stretched key). A throwaway key pair is made for the certificates.
    """

    def __init__(self, mode: str, key: PrivateKey, peer_key: PublicKey | None = None,
                 peer_key_source: str = "--peer-key", authorized: AuthorizedKeys | None = None,
                 secret_key: bytes | SharedSecret | None = None) -> None:
        self.mode = mode
        self.key = key
        self.peer_key = peer_key
        self.peer_key_source = peer_key_source
        self.authorized = authorized
        self._secret = secret_key

    @property
    def has_secret(self) -> bool:
        return bool(self._secret)

    @property
    def secret_key(self) -> bytes | None:
        """The shared secret's proof key (a :class:`SharedSecret` is stretched by now or waited for)."""
        secret = self._secret
        return secret.key if isinstance(secret, SharedSecret) else secret

    @classmethod
    def keys(cls, key: PrivateKey, *, peer_key: PublicKey | None = None,
             peer_key_source: str = "--peer-key", authorized: AuthorizedKeys | None = None) -> Auth:
        return cls("keys", key, peer_key, peer_key_source, authorized)

    @classmethod
    def secret(cls, secret: SharedSecret | bytes) -> Auth:
        key = secret if isinstance(secret, SharedSecret) else bytes(secret)
        return cls("secret", PrivateKey.generate(), secret_key=key)


@dataclass
class SecureConfig:
    """Timers and limits of the secure channel (seconds, records)."""

    handshake_rto: float = 1.0           # RFC 6347 §4.2.4.1 initial timer
    handshake_rto_max: float = 2.0       # capped well below RFC 6347's 60 s: loss, not congestion
    handshake_timeout: float = 30.0      # give up a handshake (and its proofs) after this
    rekey_after_records: int = 1 << 23   # sealed + opened on one association
    rekey_after_seconds: float = 3600.0
    hard_record_limit: int = 1 << 24     # a server closes a session the client did not rekey
    previous_linger: float = 10.0        # old association still opens records this long
    ping_interval: float = 2.0           # client pings when it heard nothing for this long
    dead_after: float = 8.0              # client gives the peer up after this much silence
    idle_timeout: float = 60.0           # server drops a session silent this long
    tombstone: float = 10.0              # a rejected association answers with its alert this long
    cookie_lifetime: float = 60.0
    amplification_factor: int = 3


# --- events -------------------------------------------------------------------------

@dataclass(frozen=True)
class PeerIdentity:
    """Who the peer proved to be: a public key (with its authorized-keys name), or a secret holder."""

    mode: str
    key: PublicKey | None = None
    name: str | None = None

    def __str__(self) -> str:
        if self.key is None:
            return "shared secret"
        return self.key.fingerprint() + (f" ({self.name})" if self.name else "")


@dataclass(frozen=True, eq=False)
class SessionEstablished:
    session: Session
    peer_identity: PeerIdentity


@dataclass(frozen=True, eq=False)
class AuthenticationFailed:
    addr: Addr
    reason: str
    fingerprint: str | None
    session: Session | None = None


@dataclass(frozen=True, eq=False)
class SessionClosed:
    session: Session
    reason: str


@dataclass(frozen=True, eq=False)
class PeerAddressChanged:
    session: Session
    old: Addr
    new: Addr


@dataclass(frozen=True, eq=False)
class SessionRekeyed:
    session: Session


# --- associations and sessions --------------------------------------------------------

HANDSHAKE = "handshake"
PROOF = "proof"          # handshake done, proofs not yet exchanged
LINKED = "linked"        # server, rekey: proof verified, waiting for the client to use it
READY = "ready"
FAILED = "failed"


class _Association:
    """One DTLS handshake's worth of keys under one session ID."""

    def __init__(self, hs: Handshake, addr: Addr, now: float, assoc_id: int = 0) -> None:
        self.hs = hs
        self.addr = addr                  # where its handshake datagrams go until a session owns it
        self.id = assoc_id
        self.prefix = _gue_prefix(assoc_id)
        self.keys: RecordProtection | None = None
        self.state = HANDSHAKE
        self.started = now
        self.ready_at = now
        self.session: Session | None = None
        self.prev_id = 0                  # client: the association this one replaces
        self.proof_deadline: float | None = None
        self.proof_rto = 1.0
        self.link_key: bytes | None = None
        self.tombstone_until = 0.0
        self.counted_rtx = 0
        self.alert_datagram: bytes | None = None
        self.hello_random: bytes | None = None   # server: the ClientHello that made it
        self.attempt = 1                  # client: this session's handshake attempt (HANDSHAKE_ATTEMPTS)
        self.server_sid = 0               # client: the ID the server's handshake datagrams carry
        # Segments that overtook a proof (the SYN behind the client proof, the SYN-ACK
        # behind the server's; PROTOCOL.md §8.1), opened and held until the proofs are done.
        self.early_segments: list[bytes] = []
        # Datagrams of the application epoch that came before the keys existed (a client
        # proof that overtook the Finished flight), opened once they do.
        self.early_datagrams: list[tuple[bytes, Addr]] = []
        self.early_proof: bytes | None = None     # client: a server proof that overtook its Finished

    def set_id(self, assoc_id: int) -> None:
        self.id = assoc_id
        self.prefix = _gue_prefix(assoc_id)

    @property
    def dest(self) -> Addr:
        return self.session.peer_addr if self.session is not None else self.addr


def _without_payload(segment: bytes | bytearray | memoryview) -> bool:
    """True for an encoded TCP segment that is all header (its data offset covers it)."""
    return len(segment) >= MIN_TCP_SEGMENT and (segment[12] >> 4) * 4 >= len(segment)


def _gue_prefix(assoc_id: int) -> bytes:
    return gue.encode_header(gue.PROTO_NONE, {
        gue.FLAG_T: bytes((gue.TRANSFORM_DTLS, gue.PROTO_TCP, 0, 0)),
        gue.FLAG_SESSION_ID: _U32.pack(assoc_id),
    })


_PREFIX_NO_ID = _gue_prefix(0)   # handshake datagrams before an association has an ID (§5.1)
_HEAD = _PREFIX_NO_ID[:8]        # 02 3b 04 02 01 06 00 00: all but the session ID
assert len(_gue_prefix(0)) == GUE_HEADER_LEN


class Session:
    """A secure channel to one peer; survives rekeys and (server side) address changes.

    Public, read-only for the runtime: ``role``, ``peer_addr``, ``peer_identity``
    (None until established), ``state`` ("handshake", "established", "closed"),
    ``id`` (the session ID currently used for sending, 0 before it is known),
    ``overhead``.
    """

    def __init__(self, role: str, peer_addr: Addr, now: float) -> None:
        self.role = role
        self.peer_addr = peer_addr
        self.peer_identity: PeerIdentity | None = None
        self.state = "handshake"
        # Client: it sent the proof of its first association and waits for the server's.
        # Segments without payload (an inner SYN) may go now, behind the proof, so the
        # SYN's round trip overlaps the proofs' (docs/PROTOCOL.md §8.1); data may not.
        self.opening = False
        self.handshake_rtt: float | None = None   # the first association's round trip (dtls.Handshake.rtt)
        self.created = now
        self._current: _Association | None = None     # used for sending
        self._previous: _Association | None = None    # still opens records until _previous_until
        self._previous_until = 0.0
        self._pending: _Association | None = None     # handshake/proof in progress (initial or rekey)
        self._rekey_wanted = False
        self._rekey_retry_at: float | None = None
        self._abandoned: set[int] = set()   # client: server IDs of handshake attempts given up
        self.last_rx = now
        self._last_ping = now
        self._addr_verified = True
        self._budget = 0
        self._challenge: bytes | None = None
        # Per-session counters for statistics (the endpoint's ``counters`` add up all
        # sessions plus what no session can be blamed for, e.g. unknown session IDs).
        self.datagrams_in = 0
        self.datagrams_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.drop_replay = 0
        self.drop_auth = 0
        self.handshakes = 0      # associations that became current: the first one plus rekeys

    @property
    def id(self) -> int:
        assoc = self._current or self._pending
        return assoc.id if assoc is not None else 0

    @property
    def established(self) -> bool:
        return self.state == "established"

    @property
    def overhead(self) -> int:
        """Bytes above UDP added to each TCP segment (GUE 12 + DTLS record overhead)."""
        assoc = self._current
        if assoc is None or assoc.keys is None:
            return GUE_HEADER_LEN + RECORD_HEADER_LEN + 8 + 16
        return GUE_HEADER_LEN + assoc.keys.overhead

    def __repr__(self) -> str:
        return f"Session({self.role}, id={self.id:#010x}, peer={self.peer_addr!r}, {self.state})"


# --- the endpoint ----------------------------------------------------------------------

class SecureEndpoint:
    """All secure sessions of one UDP socket (see the module docstring for the API)."""

    def __init__(self, role: str, auth: Auth, *, rng: Rng = os.urandom,
                 config: SecureConfig | None = None) -> None:
        if role not in (CLIENT, SERVER):
            raise LocalError(f"role must be {CLIENT!r} or {SERVER!r}")
        if auth.mode == "keys" and role == CLIENT and auth.peer_key is None:
            raise LocalError("a client with a key pair needs the server's public key")
        if auth.mode == "keys" and role == SERVER and auth.authorized is None:
            raise LocalError("a server with a key pair needs authorized client keys")
        if auth.mode == "secret" and not auth.has_secret:
            raise LocalError("shared-secret mode needs a secret")
        self.role = role
        self.auth = auth
        self.rng = rng
        self.config = config or SecureConfig()
        self.counters: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
        self._ctx = make_context(role == SERVER, auth.key, self._judge_peer)
        self._cookies = CookieJar(rng, self.config.cookie_lifetime)
        self._by_id: dict[int, _Association] = {}
        self._by_addr: dict[Addr, _Association] = {}   # handshakes addressed with ID 0
        self._sessions: set[Session] = set()
        self._outbox: list[tuple[bytes, Addr]] = []
        self._events: deque[Any] = deque()
        # next_deadline() is asked after every service round and handle_timer() at every
        # engine timer, so both must not walk every session each time (a server with a
        # thousand clients). The earliest deadline is kept: a data record only moves its
        # session's deadlines later (last_rx), anything else that concerns one association
        # brings the kept deadline forward to that association's and its session's
        # (_touch), and a timer that did work means a full scan. A kept deadline is never
        # late, at worst early.
        self._deadline: float | None = None
        self._deadline_stale = True
        self._record_limit = (self.config.rekey_after_records if role == CLIENT
                              else self.config.hard_record_limit)

    # --- peer judgement (called from OpenSSL's verify callback) ----------------------

    def _judge_peer(self, peer: PublicKey | None) -> str | None:
        auth = self.auth
        if auth.mode == "secret":
            return None
        if self.role == CLIENT:
            if peer is None or peer != auth.peer_key:
                return REASON_SERVER_KEY_MISMATCH.format(source=auth.peer_key_source)
            return None
        if peer is None or auth.authorized is None or auth.authorized.lookup(peer) is None:
            return REASON_UNKNOWN_CLIENT
        return None

    def _identity(self, assoc: _Association) -> PeerIdentity:
        if self.auth.mode == "secret":
            return PeerIdentity("secret")
        key = assoc.hs.peer_key
        name = self.auth.authorized.lookup(key) if (self.role == SERVER and key is not None
                                                    and self.auth.authorized is not None) else None
        return PeerIdentity("keys", key, name or None)

    # --- public API ------------------------------------------------------------------

    def connect(self, addr: Addr, now: float) -> Session:
        """Client: start a session with the server at ``addr``."""
        if self.role != CLIENT:
            raise LocalError("only a client endpoint connects")
        session = Session(CLIENT, addr, now)
        self._sessions.add(session)
        self._start_client_handshake(session, now, prev=None)
        self._touch(session._pending)
        return session

    def close(self, session: Session, now: float, reason: str = REASON_CLOSED_LOCALLY, copies: int = 1,
              alert: int = ALERT_CLOSE_NOTIFY) -> None:
        """Send ``alert`` (sealed; close_notify as a warning, anything else as fatal) in
        ``copies`` records, so that one lost datagram does not leave the peer waiting,
        and forget the session; emits SessionClosed."""
        if session.state == "closed":
            return
        assoc = session._current
        if assoc is not None and assoc.keys is not None:
            level = 1 if alert == ALERT_CLOSE_NOTIFY else 2
            for _ in range(copies):
                self._send_record(assoc, _ALERT.pack(level, alert), CT_ALERT, force=True)
        self._end_session(session, reason)
        self._deadline_stale = True

    def seal_segment(self, session: Session, segment: bytes | bytearray | memoryview) -> bytes | None:
        """One datagram carrying ``segment`` for ``session.peer_addr``, or None (see module doc)."""
        assoc = session._current
        if session.state != "established" or assoc is None or assoc.keys is None:
            assoc = session._pending
            if not (session.opening and assoc is not None and assoc.keys is not None
                    and _without_payload(segment)):
                self.counters["drop_not_established"] += 1
                return None
        keys = assoc.keys
        if not session._addr_verified:
            size = len(assoc.prefix) + keys.overhead + len(segment)
            if session._budget < size:
                self.counters["drop_amplification"] += 1
                return None
            session._budget -= size
        out = keys.seal(segment, assoc.prefix)
        if keys.sealed + keys.opened >= self._record_limit:
            self._records_spent(session)
        self.counters["datagrams_out"] += 1
        self.counters["segments_out"] += 1
        self.counters["bytes_out"] += len(out)
        session.datagrams_out += 1
        session.bytes_out += len(out)
        return out

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Addr]]:
        """Handshake flights, control messages and alerts queued since the last call."""
        out, self._outbox = self._outbox, []
        for data, _addr in out:
            self.counters["datagrams_out"] += 1
            self.counters["bytes_out"] += len(data)
        return out

    def next_event(self) -> Any:
        """The oldest pending event, or None."""
        return self._events.popleft() if self._events else None

    def sessions(self) -> list[Session]:
        return list(self._sessions)

    def session_for_quote(self, addr: Addr, quoted: bytes) -> Session | None:
        """The session that sent the datagram an ICMP error quotes, or None when the quote
        does not prove it (RFC 8899 §4.6.1): tou's GUE header with the session ID of
        one of the session's associations, and a record that association has sealed
        (its epoch, a sequence number it has used) going to the session's address."""
        if len(quoted) < GUE_HEADER_LEN + RECORD_HEADER_LEN or quoted[:8] != _HEAD:
            return None
        assoc = self._by_id.get(_U32.unpack_from(quoted, 8)[0])
        if assoc is None or assoc.session is None or assoc.keys is None:
            return None
        if tuple(assoc.dest[:2]) != tuple(addr[:2]):
            return None
        es = int.from_bytes(quoted[GUE_HEADER_LEN + 3:GUE_HEADER_LEN + 11], "big")
        if not assoc.keys.has_sealed(es):
            return None
        return assoc.session

    # --- receive path ----------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: Addr, now: float) -> list[tuple[Session, bytes]]:
        """Process one UDP payload from ``addr``; return the TCP segments it carried."""
        counters = self.counters
        counters["datagrams_in"] += 1
        counters["bytes_in"] += len(data)
        out: list[tuple[Session, bytes]] = []
        try:
            self._touch(self._receive(data, addr, now, out))
        except Exception:  # a bug or an OpenSSL surprise must not reach the runtime
            counters["drop_malformed"] += 1
            self._deadline_stale = True
        return out

    def _receive(self, data: bytes, addr: Addr, now: float,
                 out: list[tuple[Session, bytes]]) -> _Association | None:
        """Returns the association whose timers may have moved (None for a data record or a drop)."""
        counters = self.counters
        # The GUE header is not authenticated, so only tou's exact layout is accepted
        # (PROTOCOL.md §5.2): a flipped bit in it drops the datagram.
        if len(data) < GUE_HEADER_LEN + RECORD_HEADER_LEN or data[:8] != _HEAD:
            counters["drop_malformed"] += 1
            return None
        off = GUE_HEADER_LEN
        sid = _U32.unpack_from(data, 8)[0]
        ctype = data[off]
        epoch = int.from_bytes(data[off + 3:off + 5], "big")
        record = data[off:]

        assoc = self._by_id.get(sid) if sid else None
        if assoc is None:
            assoc = self._by_addr.get(addr)
            if assoc is None or (sid and assoc.id and assoc.id != sid):
                if sid == 0 and self.role == SERVER and ctype == CT_HANDSHAKE and epoch == 0:
                    return self._listen(record, addr, now)
                counters["drop_unknown_session"] += 1
                return None
        if sid and not assoc.id and assoc.session is not None and sid in assoc.session._abandoned:
            counters["drop_unknown_session"] += 1     # a late flight of an attempt given up
            return None
        if sid and self.role == SERVER and assoc.state in (READY, LINKED) and self._by_addr.get(assoc.addr) is assoc:
            del self._by_addr[assoc.addr]          # the client knows the ID, and its proof (ID 0) is in
        if not sid and self.role == SERVER and ctype == CT_HANDSHAKE and epoch == 0 and addr == assoc.addr:
            fresh = client_hello_random(record)
            if fresh is not None and (assoc.state == FAILED or fresh != assoc.hello_random):
                return self._restarted(assoc, record, addr, now)
        if assoc.state == FAILED:
            if assoc.alert_datagram is not None and addr == assoc.addr:
                self._outbox.append((assoc.alert_datagram, addr))
            return None
        if assoc.keys is not None and epoch == APPLICATION_EPOCH and ctype != CT_HANDSHAKE:
            return self._open(assoc, data, off, addr, now, out)
        if sid == 0 and addr != assoc.addr:
            counters["drop_unknown_session"] += 1
            return None
        if epoch == APPLICATION_EPOCH and ctype == CT_APPLICATION_DATA and assoc.state == HANDSHAKE:
            if len(assoc.early_datagrams) < EARLY_RECORDS:
                assoc.early_datagrams.append((bytes(data), addr))
                counters["early_held"] += 1
            else:
                counters["drop_not_established"] += 1
            return None
        records = split_records(bytes(record))     # a flight's records share datagrams
        if not records:
            counters["drop_malformed"] += 1
            return None
        for rec in records:
            self._feed_handshake(assoc, rec, sid, now)
        if assoc.keys is not None and assoc.early_datagrams:
            held, assoc.early_datagrams = assoc.early_datagrams, []
            for d, a in held:
                self._open(assoc, d, GUE_HEADER_LEN, a, now, out)
        self._release_early(assoc, out)
        return assoc

    def _release_early(self, assoc: _Association, out: list[tuple[Session, bytes]]) -> None:
        """Hand the segments ``assoc`` held to TCP once its proofs are done."""
        owner = assoc.session
        if assoc.early_segments and assoc.state == READY and owner is not None \
                and owner.state == "established":
            held, assoc.early_segments = assoc.early_segments, []
            self.counters["segments_in"] += len(held)
            out.extend((owner, seg) for seg in held)

    def _listen(self, record: bytes, addr: Addr, now: float) -> _Association | None:
        """Server: stateless cookie exchange; state (the association returned) only once
        the cookie verifies. Of several records in the datagram, the last is the client's
        newest ClientHello (a stale one may travel ahead of it)."""
        records = split_records(bytes(record))
        hello = records[-1] if records else bytes(record)
        conn, reply = listen(self._ctx, self._cookies, hello, addr, now)
        if conn is None:
            if not reply:                  # not a ClientHello (dtls.hello_cookie)
                self.counters["drop_malformed"] += 1
            for rec in reply:
                self._outbox.append((_PREFIX_NO_ID + rec, addr))
                self.counters["hello_verify_sent"] += 1
            return None
        hs = Handshake(conn, True, now, rto=self.config.handshake_rto,
                       rto_max=self.config.handshake_rto_max, first_seq=int.from_bytes(hello[5:11], "big"))
        assoc = _Association(hs, addr, now, self._new_id())
        assoc.hello_random = client_hello_random(hello)
        self._by_id[assoc.id] = assoc
        self._by_addr[addr] = assoc
        self.counters["handshakes_started"] += 1
        hs.step(now)
        self._after_handshake_io(assoc, now)
        return assoc

    def _restarted(self, old: _Association, record: bytes | memoryview, addr: Addr,
                   now: float) -> _Association | None:
        """Server: a new ClientHello from an address whose handshake failed or is still
        going (the client gave that attempt up). The cookie exchange runs as for any
        new client; only a verified cookie replaces the old association."""
        new = self._listen(bytes(record), addr, now)
        if new is not None:
            self.counters["handshakes_restarted"] += 1
            if old.state != FAILED:
                old.state = FAILED
                self.counters["handshakes_failed"] += 1
            self._drop_association(old)
        return new

    def _new_id(self) -> int:
        while True:
            candidate = _U32.unpack(self.rng(4))[0]
            if candidate and candidate not in self._by_id:
                return candidate

    def _feed_handshake(self, assoc: _Association, record: bytes, sid: int, now: float) -> None:
        hs = assoc.hs
        was_complete = hs.complete
        if sid and not assoc.server_sid:
            assoc.server_sid = sid
        damaged = hs.damaged
        hs.feed(record, now)
        if hs.damaged != damaged and not was_complete:
            self.counters["drop_malformed"] += 1      # an epoch-0 record number far ahead (dtls)
        elif was_complete and not hs.outbox:
            # After the handshake a handshake-type record either repeats the peer's last
            # flight (answered with ours, RFC 6347 §4.2.4) or changes nothing: a late
            # copy, or a forgery OpenSSL discarded (§4.1.2.7).
            self.counters["drop_stale_handshake"] += 1
        if self.role == CLIENT and not was_complete and hs.complete and sid:
            # the datagram that completed the handshake is the server's: adopt its ID
            self._by_addr.pop(assoc.addr, None)
            assoc.set_id(sid)
            self._by_id[sid] = assoc
        self._after_handshake_io(assoc, now)

    def _after_handshake_io(self, assoc: _Association, now: float) -> None:
        hs = assoc.hs
        # A flight leaves in as few datagrams as HANDSHAKE_MTU allows (PROTOCOL.md §5): one
        # record per datagram let a path that reorders deliver a ChangeCipherSpec ahead
        # of the records it follows, which OpenSSL drops, costing a retransmission.
        datagram = bytearray()
        for rec in hs.take_output():
            if assoc.keys is not None and not assoc.keys.note_openssl_record(rec):
                self.counters["drop_nonce_guard"] += 1
                continue
            if datagram and len(datagram) + len(rec) > HANDSHAKE_MTU:
                self._outbox.append((assoc.prefix + bytes(datagram), assoc.dest))
                datagram.clear()
            datagram += rec
        if datagram:
            self._outbox.append((assoc.prefix + bytes(datagram), assoc.dest))
        rtx = hs.retransmissions - assoc.counted_rtx
        if rtx:
            self.counters["handshake_retransmissions"] += rtx
            assoc.counted_rtx = hs.retransmissions
        if hs.failure is not None and assoc.state != FAILED:
            self._handshake_failed(assoc, now)
            return
        if assoc.state != HANDSHAKE:
            return
        if assoc.keys is None and (hs.complete or hs.finished_sent):
            assoc.keys = record_keys(hs.conn, self.role == SERVER)
        if hs.complete:
            self.counters["handshakes_completed"] += 1
            assoc.state = PROOF
            if self.role == CLIENT:
                if assoc.proof_deadline is None:
                    self._send_client_proof(assoc, now)
                elif assoc.early_proof is not None:
                    msg, assoc.early_proof = assoc.early_proof, None
                    self._handle_server_proof(assoc, msg, now)
        elif hs.finished_sent and self.role == CLIENT and assoc.proof_deadline is None:
            # The proof (and a bare SYN behind it) leaves with the Finished flight, a
            # round trip before the server's Finished could be seen (PROTOCOL.md §8.1).
            self._send_client_proof(assoc, now)

    def _handshake_failed(self, assoc: _Association, now: float) -> None:
        failure = assoc.hs.failure
        assert failure is not None
        self.counters["handshakes_failed"] += 1
        assoc.state = FAILED
        peer_fp = assoc.hs.peer_key.fingerprint() if assoc.hs.peer_key is not None else None
        own_fp = self.auth.key.public.fingerprint() if self.auth.mode == "keys" else None
        reason: str | None = None
        fingerprint: str | None = None
        if failure.kind == "rejected_peer":
            reason, fingerprint = failure.detail, peer_fp
        elif failure.kind == "peer_alert" and failure.alert in REJECTION_ALERTS:
            if self.role == SERVER:
                reason = REASON_SERVER_KEY_REJECTED
            else:
                reason = REASON_CLIENT_KEY_REJECTED if self.auth.mode == "keys" else REASON_SECRET_REJECTED
            fingerprint = own_fp
        self._drop_association(assoc)
        session = assoc.session
        if reason is not None:
            self.counters["auth_failures"] += 1
            self._events.append(AuthenticationFailed(assoc.dest, reason, fingerprint, session))
        if session is not None:
            if session._pending is assoc:
                session._pending = None
            if (reason is None and self.role == CLIENT and session.state == "handshake"
                    and assoc.attempt < HANDSHAKE_ATTEMPTS):
                # Not a rejection: a datagram damaged on the path breaks the transcript
                # (RFC 6347 §4.1.2.7: records are not authenticated until the handshake
                # is done). Start over, as a client whose first attempt timed out would.
                self.counters["handshakes_restarted"] += 1
                if assoc.server_sid:
                    session._abandoned.add(assoc.server_sid)
                self._start_client_handshake(session, now, prev=None, attempt=assoc.attempt + 1)
                return
            if session.state != "established" or reason is not None:
                self._end_session(session, reason or f"handshake failed: {failure.detail}")

    # --- proofs (docs/PROTOCOL.md §8) -------------------------------------------------

    def _proof_key(self, prev_id: int) -> bytes | None:
        if prev_id:
            prev = self._by_id.get(prev_id)
            return prev.link_key if prev is not None else None
        if self.auth.mode == "secret":
            return self.auth.secret_key
        return KEYS_MODE_PROOF_KEY

    @staticmethod
    def _proof_mac(key: bytes, assoc: _Association, role_byte: int, prev_id: int) -> bytes:
        exporter = assoc.hs.export(EXPORTER_BINDING, 32)
        msg = PROOF_LABEL + bytes((role_byte,)) + _U32.pack(prev_id) + exporter
        return hmac.new(key, msg, hashlib.sha256).digest()[:PROOF_MAC_LEN]

    def _send_client_proof(self, assoc: _Association, now: float) -> None:
        key = self._proof_key(assoc.prev_id)
        if key is None:             # the association to link to is gone
            self._handshake_abandon(assoc, "rekey target vanished")
            return
        mac = self._proof_mac(key, assoc, MSG_CLIENT_PROOF, assoc.prev_id)
        self._send_record(assoc, _PROOF.pack(MSG_CLIENT_PROOF, assoc.prev_id, mac), force=True)
        session = assoc.session
        if session is not None and session.state == "handshake" and session._pending is assoc:
            session.opening = True
            session.handshake_rtt = assoc.hs.rtt
        if assoc.proof_deadline is None:       # the first proof: timed like a flight (dtls module doc)
            assoc.proof_rto = assoc.hs.flight_rto()
        assoc.proof_deadline = now + assoc.proof_rto
        assoc.proof_rto = min(assoc.proof_rto * 2, self.config.handshake_rto_max)

    def _handle_client_proof(self, assoc: _Association, msg: bytes, now: float) -> None:
        """Server side (§8.2)."""
        _t, prev_id, mac = _PROOF.unpack(msg)
        if assoc.state in (LINKED, READY):
            if prev_id == assoc.prev_id:       # a retransmission: our proof was lost
                self._send_server_proof(assoc)
            return
        if assoc.state != PROOF:
            return
        key = self._proof_key(prev_id)
        prev = self._by_id.get(prev_id) if prev_id else None
        if key is None or (prev_id and (prev is None or prev.session is None)) or not hmac.compare_digest(
                mac, self._proof_mac(key, assoc, MSG_CLIENT_PROOF, prev_id)):
            self._reject_proof(assoc, now)
            return
        assoc.prev_id = prev_id
        assoc.link_key = assoc.hs.export(EXPORTER_REKEY, 32)
        assoc.ready_at = now
        if prev is not None and prev.session is not None:       # rekey of an existing session
            assoc.session = prev.session
            assoc.state = LINKED
            prev.session._pending = assoc
        else:
            session = Session(SERVER, assoc.addr, now)
            session.peer_identity = self._identity(assoc)
            session.state = "established"
            session._current = assoc
            session.handshakes += 1
            assoc.session = session
            assoc.state = READY
            self._sessions.add(session)
            self._events.append(SessionEstablished(session, session.peer_identity))
        self._send_server_proof(assoc)

    def _send_server_proof(self, assoc: _Association) -> None:
        key = self._proof_key(assoc.prev_id) if assoc.prev_id else self._proof_key(0)
        if assoc.prev_id and key is None:
            return
        mac = self._proof_mac(key or b"", assoc, MSG_SERVER_PROOF, assoc.prev_id)
        self._send_record(assoc, _PROOF.pack(MSG_SERVER_PROOF, assoc.prev_id, mac), force=True)

    def _reject_proof(self, assoc: _Association, now: float) -> None:
        """A proof did not verify: fatal access_denied alert, tombstone, event."""
        self.counters["auth_failures"] += 1
        self.counters["handshakes_failed"] += 1
        alert = self._seal(assoc, _ALERT.pack(2, ALERT_ACCESS_DENIED), CT_ALERT)
        self._outbox.append((alert, assoc.dest))
        assoc.alert_datagram = alert
        assoc.state = FAILED
        assoc.tombstone_until = now + self.config.tombstone
        session = assoc.session
        self._events.append(AuthenticationFailed(assoc.dest, REASON_SECRET_MISMATCH, None, session))
        if session is not None and session._pending is assoc:
            session._pending = None
            if session.state != "established":
                self._end_session(session, REASON_SECRET_MISMATCH)

    def _handle_server_proof(self, assoc: _Association, msg: bytes, now: float) -> None:
        """Client side (§8.2)."""
        if assoc.state == HANDSHAKE and assoc.early_proof is None:
            assoc.early_proof = bytes(msg)      # judged once the server's Finished is in
            return
        if assoc.state != PROOF:
            return
        _t, prev_id, mac = _PROOF.unpack(msg)
        key = self._proof_key(assoc.prev_id)
        if prev_id != assoc.prev_id or key is None or not hmac.compare_digest(
                mac, self._proof_mac(key, assoc, MSG_SERVER_PROOF, assoc.prev_id)):
            self._reject_proof(assoc, now)
            return
        session = assoc.session
        assert session is not None
        assoc.state = READY
        assoc.ready_at = now
        assoc.proof_deadline = None
        assoc.link_key = assoc.hs.export(EXPORTER_REKEY, 32)
        session._pending = None
        session.last_rx = now
        if session._current is None:
            session._current = assoc
            session.handshakes += 1
            session.opening = False
            if session.handshake_rtt is None:
                session.handshake_rtt = assoc.hs.rtt
            session.state = "established"
            session.peer_identity = self._identity(assoc)
            self._events.append(SessionEstablished(session, session.peer_identity))
        else:
            self._switch(session, assoc, now)
            self._send_record(assoc, bytes((MSG_PING,)))   # tells the server to switch too

    def _switch(self, session: Session, assoc: _Association, now: float) -> None:
        """Make ``assoc`` the sending association; the old one lingers for late records."""
        old = session._current
        if old is not None and old is not assoc:
            if session._previous is not None:
                self._drop_association(session._previous)
            session._previous = old
            session._previous_until = now + self.config.previous_linger
        session._current = assoc
        session.handshakes += 1
        if session._pending is assoc:
            session._pending = None
        session._rekey_wanted = False
        session._rekey_retry_at = None
        assoc.state = READY
        self.counters["rekeys"] += 1
        self._events.append(SessionRekeyed(session))

    # --- fast path receive ------------------------------------------------------------

    def _open(self, assoc: _Association, data: bytes, off: int, addr: Addr, now: float,
              out: list[tuple[Session, bytes]]) -> _Association | None:
        """Open an application-epoch record; the association if a timer may have moved (see _receive)."""
        keys = assoc.keys
        assert keys is not None
        res = keys.open(data, off)
        counters = self.counters
        session = assoc.session
        if type(res) is not tuple:
            if res is RecordDrop.REPLAY:
                counters["drop_replay"] += 1
                if session is not None:
                    session.drop_replay += 1
            elif res is RecordDrop.AUTH:
                counters["drop_auth"] += 1
                if session is not None:
                    session.drop_auth += 1
            else:
                counters["drop_malformed"] += 1
            return None
        ctype, pt, newest = res
        touched: _Association | None = None      # set when a timer may have moved
        if session is not None:
            session.last_rx = now          # moves its deadlines later only
            session.datagrams_in += 1
            session.bytes_in += len(data) - off
            if addr != session.peer_addr and newest and self.role == SERVER:
                self._peer_moved(session, addr, now)
                touched = assoc
            if not session._addr_verified and addr == session.peer_addr:
                session._budget += self.config.amplification_factor * len(data)
            if keys.sealed + keys.opened >= self._record_limit:
                self._records_spent(session)
        if ctype == CT_APPLICATION_DATA:
            if len(pt) >= MIN_TCP_SEGMENT:
                if assoc.state == LINKED and session is not None:
                    self._switch(session, assoc, now)
                    touched = assoc
                if assoc.state != READY or session is None or session.state != "established":
                    if assoc.state in (HANDSHAKE, PROOF) and len(assoc.early_segments) < EARLY_RECORDS:
                        assoc.early_segments.append(bytes(pt))   # delivered when the proofs are done
                        counters["early_held"] += 1
                    else:
                        counters["drop_not_established"] += 1
                    return touched
                counters["segments_in"] += 1
                out.append((session, pt))
                return touched
            self._control(assoc, pt, addr, now)
            self._release_early(assoc, out)
        elif ctype == CT_ALERT and len(pt) == 2:
            self._alert(assoc, pt[0], pt[1], now)
        else:
            counters["drop_malformed"] += 1
            return touched
        return assoc

    def _control(self, assoc: _Association, pt: bytes, addr: Addr, now: float) -> None:
        kind = pt[0] if pt else 0
        if kind == MSG_CLIENT_PROOF and self.role == SERVER and len(pt) == _PROOF.size:
            self._handle_client_proof(assoc, pt, now)
            return
        if kind == MSG_SERVER_PROOF and self.role == CLIENT and len(pt) == _PROOF.size:
            self._handle_server_proof(assoc, pt, now)
            return
        session = assoc.session
        if session is None or assoc.state not in (READY, LINKED):
            self.counters["drop_not_established"] += 1
            return
        if assoc.state == LINKED:
            self._switch(session, assoc, now)
        if kind == MSG_PING and len(pt) == 1:
            self._send_record(assoc, bytes((MSG_PONG,)))
        elif kind == MSG_PONG and len(pt) == 1:
            pass
        elif kind == MSG_PATH_CHALLENGE and len(pt) == 9:
            self._send_record(assoc, bytes((MSG_PATH_RESPONSE,)) + pt[1:], dest=addr)
        elif kind == MSG_PATH_RESPONSE and len(pt) == 9:
            if session._challenge is not None and pt[1:] == session._challenge and addr == session.peer_addr:
                session._addr_verified = True
                session._challenge = None
        else:
            self.counters["drop_malformed"] += 1

    def _alert(self, assoc: _Association, level: int, desc: int, now: float) -> None:
        session = assoc.session
        if desc == ALERT_ACCESS_DENIED and (assoc.state == PROOF or (
                assoc.state == HANDSHAKE and assoc.proof_deadline is not None)):   # our proof was refused
            self.counters["auth_failures"] += 1
            assoc.state = FAILED
            self._drop_association(assoc)
            self._events.append(AuthenticationFailed(assoc.dest, REASON_SECRET_MISMATCH, None, session))
            if session is not None and session.state != "established":
                self._end_session(session, REASON_SECRET_MISMATCH)
            elif session is not None:
                session._pending = None
            return
        if session is None:
            return
        if desc == ALERT_CLOSE_NOTIFY or level == 2:
            if assoc is session._current or session._current is None:
                self._end_session(session, REASON_CLOSED_BY_PEER if desc == ALERT_CLOSE_NOTIFY
                                  else REASON_CANCELED_BY_PEER if desc == ALERT_USER_CANCELED
                                  else f"peer sent fatal alert {desc}")

    def _peer_moved(self, session: Session, addr: Addr, now: float) -> None:
        """Roaming (§9): switch the reply address after an authenticated, newest record."""
        old = session.peer_addr
        session.peer_addr = addr
        session._addr_verified = False
        session._budget = 0
        session._challenge = self.rng(8)
        self.counters["address_changes"] += 1
        self._events.append(PeerAddressChanged(session, old, addr))
        assoc = session._current
        if assoc is not None and assoc.keys is not None:
            self._send_record(assoc, bytes((MSG_PATH_CHALLENGE,)) + session._challenge, force=True)

    # --- sending helpers --------------------------------------------------------------

    def _seal(self, assoc: _Association, plaintext: bytes, ctype: int = CT_APPLICATION_DATA) -> bytes:
        assert assoc.keys is not None
        return assoc.keys.seal(plaintext, assoc.prefix, ctype)

    def _send_record(self, assoc: _Association, plaintext: bytes, ctype: int = CT_APPLICATION_DATA,
                     *, force: bool = False, dest: Addr | None = None) -> None:
        """Queue one sealed control record; ``force`` ignores the amplification budget
        (small, bounded messages: proofs, path challenges, close_notify)."""
        if assoc.keys is None:
            return
        datagram = self._seal(assoc, plaintext, ctype)
        session = assoc.session
        target = dest if dest is not None else assoc.dest
        if session is not None and not session._addr_verified and target == session.peer_addr and not force:
            if session._budget < len(datagram):
                self.counters["drop_amplification"] += 1
                return
            session._budget -= len(datagram)
        self._outbox.append((datagram, target))

    # --- client handshakes and rekeying ---------------------------------------------

    def _start_client_handshake(self, session: Session, now: float, prev: _Association | None,
                                attempt: int = 1) -> None:
        hs = Handshake.client(self._ctx, now, rto=self.config.handshake_rto,
                              rto_max=self.config.handshake_rto_max)
        assoc = _Association(hs, session.peer_addr, now)
        assoc.session = session
        assoc.attempt = attempt
        assoc.prev_id = prev.id if prev is not None else 0
        session._pending = assoc
        self._by_addr[session.peer_addr] = assoc
        self.counters["handshakes_started"] += 1
        self._after_handshake_io(assoc, now)

    def _handshake_abandon(self, assoc: _Association, reason: str) -> None:
        self.counters["handshakes_failed"] += 1
        assoc.state = FAILED
        self._drop_association(assoc)
        session = assoc.session
        if session is not None and session._pending is assoc:
            session._pending = None
            if session.state != "established":
                self._end_session(session, reason)

    # --- timers ------------------------------------------------------------------------

    def _records_spent(self, session: Session) -> None:
        """An association reached its record limit: a client wants a rekey, a server
        ends the session at its next timer (both through :meth:`handle_timer`)."""
        if self.role == CLIENT:
            session._rekey_wanted = True
        self._touch(None, session)

    def _touch(self, assoc: _Association | None, session: Session | None = None) -> None:
        """``assoc`` (and its session), or ``session``, changed: bring the kept deadline
        forward to theirs. Nothing else changed, so the kept one stays right otherwise."""
        if self._deadline_stale or (assoc is None and session is None):
            return
        times: list[float] = []
        if assoc is not None:
            self._association_times(assoc, times.append)
            session = assoc.session
        if session is not None:
            self._session_times(session, times.append)
        if times:
            t = min(times)
            if self._deadline is None or t < self._deadline:
                self._deadline = t

    def next_deadline(self) -> float | None:
        """The earliest time :meth:`handle_timer` has work to do, or None (kept between
        calls; see ``_deadline_stale``)."""
        if self._deadline_stale:
            self._deadline = self._compute_deadline()
            self._deadline_stale = False
        return self._deadline

    def _compute_deadline(self) -> float | None:
        """The full scan: every association and session."""
        times: list[float] = []
        add = times.append
        for table in (self._by_id, self._by_addr):
            for assoc in table.values():
                self._association_times(assoc, add)
        for session in self._sessions:
            self._session_times(session, add)
        return min(times) if times else None

    def _association_times(self, assoc: _Association, add: Callable[[float], None]) -> None:
        """The times :meth:`handle_timer` has work for ``assoc``: handshake retransmission,
        proof retransmission, handshake timeout, end of a tombstone."""
        st = assoc.state
        if st == FAILED:
            add(assoc.tombstone_until)
        elif st == HANDSHAKE or st == PROOF:
            if assoc.hs.deadline is not None:
                add(assoc.hs.deadline)
            if assoc.proof_deadline is not None:
                add(assoc.proof_deadline)
            add(assoc.started + self.config.handshake_timeout)

    def _session_times(self, session: Session, add: Callable[[float], None]) -> None:
        """The times :meth:`handle_timer` has work for ``session``: the old association's
        end, and a client's rekey, ping and dead peer, or a server's idle timeout and key
        limit."""
        if session.state != "established":
            return
        cfg = self.config
        if session._previous is not None:
            add(session._previous_until)
        cur = session._current
        if self.role == CLIENT:
            if session._rekey_wanted and session._pending is None:
                add(session._rekey_retry_at or 0.0)
            last_rx = session.last_rx
            add(max(last_rx, session._last_ping) + cfg.ping_interval)
            add(last_rx + cfg.dead_after)
            if cur is not None and session._pending is None:
                # handle_timer starts no rekey before the retry time of a failed one
                add(max(cur.ready_at + cfg.rekey_after_seconds, session._rekey_retry_at or 0.0))
        else:
            add(session.last_rx + cfg.idle_timeout)
            if cur is not None and cur.keys is not None and \
                    cur.keys.sealed + cur.keys.opened >= cfg.hard_record_limit:
                add(0.0)

    def handle_timer(self, now: float) -> None:
        """Retransmit, time out, ping, rekey and expire whatever is due at ``now``."""
        if not self._deadline_stale and (self._deadline is None or now < self._deadline):
            return                     # the runtime calls this at every engine timer too
        self._deadline_stale = True
        cfg = self.config
        seen: set[int] = set()
        for assoc in list(self._by_id.values()) + list(self._by_addr.values()):
            if id(assoc) in seen:
                continue
            seen.add(id(assoc))
            if assoc.state == FAILED:
                if now >= assoc.tombstone_until:
                    self._drop_association(assoc)
                continue
            if assoc.state not in (HANDSHAKE, PROOF):
                continue
            if now >= assoc.started + cfg.handshake_timeout:
                self._timeout_association(assoc)
                continue
            assoc.hs.handle_timer(now)
            self._after_handshake_io(assoc, now)
            if self.role == CLIENT and assoc.state in (HANDSHAKE, PROOF) and assoc.proof_deadline is not None \
                    and now >= assoc.proof_deadline:
                self._send_client_proof(assoc, now)
        for session in list(self._sessions):
            if session.state != "established":
                continue
            if session._previous is not None and now >= session._previous_until:
                self._drop_association(session._previous)
                session._previous = None
            cur = session._current
            if cur is None or cur.keys is None:
                continue
            if self.role == CLIENT:
                if now >= session.last_rx + cfg.dead_after:
                    self._end_session(session, REASON_PEER_DEAD)
                    continue
                if now >= max(session.last_rx, session._last_ping) + cfg.ping_interval:
                    session._last_ping = now
                    self._send_record(cur, bytes((MSG_PING,)))
                if now >= cur.ready_at + cfg.rekey_after_seconds:
                    session._rekey_wanted = True
                if cur.keys.sealed + cur.keys.opened >= cfg.rekey_after_records:
                    session._rekey_wanted = True
                if session._rekey_wanted and session._pending is None and (
                        session._rekey_retry_at is None or now >= session._rekey_retry_at):
                    session._rekey_retry_at = now + cfg.handshake_timeout
                    self._start_client_handshake(session, now, prev=cur)
            else:
                if now >= session.last_rx + cfg.idle_timeout:
                    self._end_session(session, REASON_IDLE)
                elif cur.keys.sealed + cur.keys.opened >= cfg.hard_record_limit:
                    self._end_session(session, REASON_KEY_LIMIT)

    def rekey(self, session: Session, now: float) -> None:
        """Client: start a rekey now (normally the record/time limits do this)."""
        if self.role != CLIENT:
            raise LocalError("the client starts rekeys")
        if session.state == "established" and session._pending is None:
            session._rekey_wanted = True
            session._rekey_retry_at = now + self.config.handshake_timeout
            self._start_client_handshake(session, now, prev=session._current)
            self._touch(session._pending)

    def _timeout_association(self, assoc: _Association) -> None:
        self.counters["handshakes_failed"] += 1
        session = assoc.session
        assoc.state = FAILED
        self._drop_association(assoc)
        if session is not None and session._pending is assoc:
            session._pending = None
            if session.state != "established":
                self._end_session(session, REASON_HANDSHAKE_TIMEOUT)

    # --- bookkeeping ----------------------------------------------------------------------

    def _drop_association(self, assoc: _Association) -> None:
        if assoc.id and self._by_id.get(assoc.id) is assoc:
            del self._by_id[assoc.id]
        if self._by_addr.get(assoc.addr) is assoc:
            del self._by_addr[assoc.addr]

    def _end_session(self, session: Session, reason: str) -> None:
        if session.state == "closed":
            return
        session.state = "closed"
        for assoc in (session._current, session._previous, session._pending):
            if assoc is not None and assoc.state != FAILED:
                self._drop_association(assoc)
        session._pending = None
        self._sessions.discard(session)
        self._events.append(SessionClosed(session, reason))
