"""DTLS 1.2 record protection fast path (RFC 6347 §4.1, RFC 5288, RFC 7905).

After OpenSSL has finished a handshake, tou seals and opens records itself with
``cryptography``'s AEAD objects, keyed with the very keys OpenSSL negotiated
(:func:`toucli.dtls.record_keys`). The records are ordinary DTLS 1.2 records: an
OpenSSL connection with the same keys accepts them and produces records this
module accepts (``tests/test_record.py``).

Record (RFC 6347 §4.1)::

    type(1) fe fd epoch(2) seq(6) length(2) | [explicit nonce(8)] ciphertext tag(16)

* AES-GCM (RFC 5288 §3): nonce = the 4-byte write IV + an 8-byte explicit nonce
  carried in the record. tou's explicit nonce is the record's own ``epoch || seq``.
* ChaCha20-Poly1305 (RFC 7905 §2): nonce = 12-byte write IV XOR ``epoch || seq``
  left-padded with zeros; no explicit nonce.
* Additional data (RFC 5246 §6.2.3.3 with RFC 6347 §4.1.2.1): ``epoch || seq ||
  type || version || plaintext length``.

Nonce uniqueness against OpenSSL, which shares the keys of an epoch: the 48-bit
sequence space is split. OpenSSL numbers its records (Finished, alerts, handshake
retransmissions) from 0 and never reaches :data:`FAST_PATH_SEQ_BASE` (2^47); the
fast path numbers its records from there. ChaCha20 nonces follow the sequence
number, so they cannot collide. OpenSSL picks AES-GCM explicit nonces from a random
start, so every record OpenSSL writes in the epoch is shown to
:meth:`RecordProtection.note_openssl_record`: the fast path skips such a nonce, and
an OpenSSL record whose nonce the fast path already used is reported so it is never
sent. Each half of the sequence space has its own anti-replay window (RFC 6347
§4.1.2.6), because each half is written by one sender in increasing order.
"""

from __future__ import annotations

import struct
from enum import IntEnum

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

CT_CHANGE_CIPHER_SPEC = 20
CT_ALERT = 21
CT_HANDSHAKE = 22
CT_APPLICATION_DATA = 23
DTLS12 = 0xFEFD

RECORD_HEADER_LEN = 13
TAG_LEN = 16
MAX_PLAINTEXT = 1 << 14      # RFC 5246 §6.2.1 (RFC 6347 §4.1): a record's plaintext is at most 2^14 bytes
FAST_PATH_SEQ_BASE = 1 << 47
SEQ_SPACE = 1 << 48
REPLAY_WINDOW = 256          # bits; RFC 6347 §4.1.2.6 asks for at least 32

AES_128_GCM = "AES-128-GCM"
AES_256_GCM = "AES-256-GCM"
CHACHA20_POLY1305 = "CHACHA20-POLY1305"

_SEQ_MASK = SEQ_SPACE - 1
_HEADER = struct.Struct("!BHQH")           # type, version, epoch||seq, length
_HEADER_EXPLICIT = struct.Struct("!BHQHQ")  # ... plus the 8-byte explicit nonce
_AAD = struct.Struct("!QBHH")              # epoch||seq, type, version, plaintext length


class RecordDrop(IntEnum):
    """Why a record was not opened."""

    TRUNCATED = 1        # shorter than header + nonce + tag, or length field != bytes present
    BAD_VERSION = 2      # version is not DTLS 1.2
    WRONG_EPOCH = 3      # not this key set's epoch
    REPLAY = 4           # sequence number already seen or left of the window
    AUTH = 5             # AEAD tag does not verify
    OVERFLOW = 6         # plaintext would exceed 2^14 bytes (RFC 5246 §6.2.3, record_overflow)


class ReplayWindow:
    """Anti-replay sliding window (RFC 6347 §4.1.2.6) over a Python int bitmap.

    Bit ``i`` of ``bits`` stands for sequence number ``top - i``. ``check`` is done
    before decryption, ``update`` only after the record authenticated.
    """

    __slots__ = ("top", "bits", "size", "_mask")

    def __init__(self, size: int = REPLAY_WINDOW) -> None:
        self.top = -1
        self.bits = 0
        self.size = size
        self._mask = (1 << size) - 1

    def check(self, seq: int) -> bool:
        """True if ``seq`` is new: right of the window, or inside it and unseen."""
        diff = self.top - seq
        if diff < 0:
            return True
        return diff < self.size and not (self.bits >> diff) & 1

    def update(self, seq: int) -> bool:
        """Mark ``seq`` received; True if it is the highest received so far."""
        diff = self.top - seq
        if diff < 0:
            self.bits = ((self.bits << -diff) | 1) & self._mask
            self.top = seq
            return True
        self.bits |= 1 << diff
        return False


class RecordProtection:
    """One epoch's keys in both directions, with counters and replay windows.

    ``seal`` numbers records from :data:`FAST_PATH_SEQ_BASE`; ``open`` accepts
    records from either half of the sequence space (see the module docstring).
    """

    __slots__ = ("cipher", "epoch", "_epoch_hi", "_explicit", "_overhead", "_seal_aead",
                 "_open_aead", "_write_iv", "_read_iv", "_write_iv_int", "_read_iv_int",
                 "next_seq", "_avoid", "_used_by_openssl", "_window_fast", "_window_openssl",
                 "sealed", "opened")

    def __init__(self, cipher: str, epoch: int, write_key: bytes, write_iv: bytes,
                 read_key: bytes, read_iv: bytes) -> None:
        if cipher in (AES_128_GCM, AES_256_GCM):
            self._seal_aead, self._open_aead = AESGCM(write_key), AESGCM(read_key)
            self._explicit = 8
            if len(write_iv) != 4 or len(read_iv) != 4:
                raise ValueError("AES-GCM needs 4-byte write IVs (RFC 5288 §3)")
        elif cipher == CHACHA20_POLY1305:
            self._seal_aead, self._open_aead = ChaCha20Poly1305(write_key), ChaCha20Poly1305(read_key)
            self._explicit = 0
            if len(write_iv) != 12 or len(read_iv) != 12:
                raise ValueError("ChaCha20-Poly1305 needs 12-byte IVs (RFC 7905 §2)")
        else:
            raise ValueError(f"unsupported cipher {cipher!r}")
        self.cipher = cipher
        self.epoch = epoch
        self._epoch_hi = epoch << 48
        self._overhead = self._explicit + TAG_LEN
        self._write_iv, self._read_iv = bytes(write_iv), bytes(read_iv)
        self._write_iv_int = int.from_bytes(write_iv, "big")
        self._read_iv_int = int.from_bytes(read_iv, "big")
        self.next_seq = FAST_PATH_SEQ_BASE
        self._avoid: set[int] = set()           # OpenSSL GCM nonces inside the fast-path range
        self._used_by_openssl: set[int] = set()
        self._window_fast = ReplayWindow()
        self._window_openssl = ReplayWindow()
        self.sealed = 0
        self.opened = 0

    @property
    def overhead(self) -> int:
        """Bytes a record adds to its plaintext: header, explicit nonce, tag."""
        return RECORD_HEADER_LEN + self._overhead

    # --- sending -----------------------------------------------------------------

    def has_sealed(self, epoch_seq: int) -> bool:
        """True when ``epoch_seq`` (epoch << 48 | sequence number) lies in what :meth:`seal` has used."""
        seq = epoch_seq & _SEQ_MASK
        return epoch_seq >> 48 == self.epoch and FAST_PATH_SEQ_BASE <= seq < self.next_seq

    def seal(self, plaintext: bytes | bytearray | memoryview, prefix: bytes = b"",
             content_type: int = CT_APPLICATION_DATA) -> bytes:
        """``prefix`` + one record holding ``plaintext``. Raises OverflowError when the
        sequence space is spent (the session rekeys long before), ValueError when
        ``plaintext`` is longer than :data:`MAX_PLAINTEXT`."""
        n = len(plaintext)
        if n > MAX_PLAINTEXT:
            raise ValueError(f"record plaintext of {n} bytes exceeds {MAX_PLAINTEXT} (RFC 5246 §6.2.1)")
        seq = self.next_seq
        if self._avoid:
            while self._epoch_hi | seq in self._avoid:
                seq += 1
        if seq >= SEQ_SPACE:
            raise OverflowError("DTLS sequence numbers exhausted for this epoch")
        self.next_seq = seq + 1
        self.sealed += 1
        es = self._epoch_hi | seq
        if self._explicit:
            # GCM nonce = 4-byte IV || 8-byte explicit nonce, and the explicit nonce is es
            ct = self._seal_aead.encrypt((self._write_iv_int << 64 | es).to_bytes(12, "big"), plaintext,
                                         _AAD.pack(es, content_type, DTLS12, n))
            return prefix + _HEADER_EXPLICIT.pack(content_type, DTLS12, es, n + 24, es) + ct
        ct = self._seal_aead.encrypt((self._write_iv_int ^ es).to_bytes(12, "big"), plaintext,
                                     _AAD.pack(es, content_type, DTLS12, n))
        return prefix + _HEADER.pack(content_type, DTLS12, es, n + 16) + ct

    def note_openssl_record(self, record: bytes | memoryview) -> bool:
        """Account for a record OpenSSL wrote with these keys (this epoch).

        Returns False if the record must not be sent because its AES-GCM nonce was
        already used by the fast path; True otherwise.
        """
        if len(record) < RECORD_HEADER_LEN + 8 or not self._explicit:
            return True
        _t, _v, es, _l, nonce = _HEADER_EXPLICIT.unpack_from(record, 0)
        if es >> 48 != self.epoch:
            return True
        if nonce >> 48 == self.epoch and nonce & _SEQ_MASK >= FAST_PATH_SEQ_BASE:
            if nonce & _SEQ_MASK < self.next_seq:
                return False
            self._avoid.add(nonce)
        self._used_by_openssl.add(nonce)
        return True

    # --- receiving ---------------------------------------------------------------

    def open(self, data: bytes | bytearray | memoryview, offset: int = 0
             ) -> tuple[int, bytes, bool] | RecordDrop:
        """Open the one record at ``data[offset:]`` (it must run to the end).

        Returns ``(content type, plaintext, newest)`` where ``newest`` says the
        record has the highest sequence number received so far from its sender, or
        a :class:`RecordDrop`. Never raises.
        """
        avail = len(data) - offset - RECORD_HEADER_LEN
        if avail < self._overhead:
            return RecordDrop.TRUNCATED
        if self._explicit:
            ctype, version, es, length, explicit = _HEADER_EXPLICIT.unpack_from(data, offset)
        else:
            ctype, version, es, length = _HEADER.unpack_from(data, offset)
        if version != DTLS12:
            return RecordDrop.BAD_VERSION
        if es >> 48 != self.epoch:
            return RecordDrop.WRONG_EPOCH
        if length != avail:
            return RecordDrop.TRUNCATED
        if avail - self._overhead > MAX_PLAINTEXT:
            return RecordDrop.OVERFLOW
        seq = es & _SEQ_MASK
        window = self._window_fast if seq >= FAST_PATH_SEQ_BASE else self._window_openssl
        diff = window.top - seq                     # RFC 6347 §4.1.2.6, before the MAC check
        if diff >= 0 and (diff >= window.size or (window.bits >> diff) & 1):
            return RecordDrop.REPLAY
        try:
            if self._explicit:
                pt = self._open_aead.decrypt((self._read_iv_int << 64 | explicit).to_bytes(12, "big"),
                                             data[offset + 21:], _AAD.pack(es, ctype, version, length - 24))
            else:
                pt = self._open_aead.decrypt((self._read_iv_int ^ es).to_bytes(12, "big"),
                                             data[offset + 13:], _AAD.pack(es, ctype, version, length - 16))
        except InvalidTag:
            return RecordDrop.AUTH
        self.opened += 1
        # window update, after authentication
        if diff < 0:
            window.bits = ((window.bits << -diff) | 1) & window._mask
            window.top = seq
            return ctype, pt, True
        window.bits |= 1 << diff
        return ctype, pt, False


def parse_record_header(data: bytes | bytearray | memoryview, offset: int = 0
                        ) -> tuple[int, int, int, int] | None:
    """``(type, version, epoch, seq)`` of the record at ``data[offset:]``, or None if too short."""
    if len(data) - offset < RECORD_HEADER_LEN:
        return None
    ctype, version, es, _length = _HEADER.unpack_from(data, offset)
    return ctype, version, es >> 48, es & _SEQ_MASK


def split_records(data: bytes) -> list[bytes]:
    """Split a byte stream of DTLS records (OpenSSL's memory-BIO output) into records.

    A trailing partial record is dropped (OpenSSL never writes one).
    """
    out: list[bytes] = []
    i, n = 0, len(data)
    while n - i >= RECORD_HEADER_LEN:
        end = i + RECORD_HEADER_LEN + int.from_bytes(data[i + 11:i + 13], "big")
        if end > n:
            break
        out.append(data[i:end])
        i = end
    return out
