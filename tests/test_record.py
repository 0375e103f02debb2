"""DTLS 1.2 record fast path: layout, AEAD nonces, anti-replay window, nonce guard against OpenSSL."""

from __future__ import annotations

import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from toucli.record import (AES_128_GCM, AES_256_GCM, CHACHA20_POLY1305, CT_ALERT, FAST_PATH_SEQ_BASE,
                           MAX_PLAINTEXT,                            RecordDrop, RecordProtection, ReplayWindow, parse_record_header,
                           split_records)

K1, K2 = bytes(range(16)), bytes(range(16, 32))
IV1, IV2 = b"\x01\x02\x03\x04", b"\x05\x06\x07\x08"


def gcm_pair() -> tuple[RecordProtection, RecordProtection]:
    a = RecordProtection(AES_128_GCM, 1, K1, IV1, K2, IV2)
    b = RecordProtection(AES_128_GCM, 1, K2, IV2, K1, IV1)
    return a, b


def chacha_pair() -> tuple[RecordProtection, RecordProtection]:
    k1, k2, i1, i2 = bytes(32), bytes([1]) * 32, bytes(range(12)), bytes(range(12, 24))
    return (RecordProtection(CHACHA20_POLY1305, 1, k1, i1, k2, i2),
            RecordProtection(CHACHA20_POLY1305, 1, k2, i2, k1, i1))


def test_gcm_record_layout_and_nonce() -> None:
    a, _b = gcm_pair()
    rec = a.seal(b"hello", prefix=b"PFX")
    assert rec[:3] == b"PFX"
    rec = rec[3:]
    es = (1 << 48) | FAST_PATH_SEQ_BASE
    assert rec[:13] == bytes([23, 0xFE, 0xFD]) + es.to_bytes(8, "big") + (8 + 5 + 16).to_bytes(2, "big")
    assert rec[13:21] == es.to_bytes(8, "big")                       # explicit nonce = epoch || seq
    aad = es.to_bytes(8, "big") + bytes([23, 0xFE, 0xFD]) + (5).to_bytes(2, "big")
    assert AESGCM(K1).decrypt(IV1 + rec[13:21], rec[21:], aad) == b"hello"
    assert a.overhead == 13 + 8 + 16


def test_chacha_record_layout_and_nonce() -> None:
    a, _b = chacha_pair()
    rec = a.seal(b"hello")
    es = (1 << 48) | FAST_PATH_SEQ_BASE
    assert rec[:13] == bytes([23, 0xFE, 0xFD]) + es.to_bytes(8, "big") + (5 + 16).to_bytes(2, "big")
    nonce = (int.from_bytes(bytes(range(12)), "big") ^ es).to_bytes(12, "big")
    aad = es.to_bytes(8, "big") + bytes([23, 0xFE, 0xFD]) + (5).to_bytes(2, "big")
    assert ChaCha20Poly1305(bytes(32)).decrypt(nonce, rec[13:], aad) == b"hello"
    assert a.overhead == 13 + 16


@pytest.mark.parametrize("pair", [gcm_pair, chacha_pair])
def test_record_size_limit(pair) -> None:
    """2^14 plaintext bytes seal and open; one more is refused locally, and a peer's
    oversized record is dropped before decryption (RFC 5246 §6.2.1, §6.2.3)."""
    a, b = pair()
    full = bytes(range(256)) * (MAX_PLAINTEXT // 256)
    assert b.open(a.seal(full))[1] == full
    with pytest.raises(ValueError, match="exceeds"):
        a.seal(full + b"x")
    # a peer that seals more than the limit (forged with the same keys): dropped as overflow
    big = pair()[0]
    big.next_seq = a.next_seq + 5
    aead = big._seal_aead
    es = (1 << 48) | big.next_seq
    n = MAX_PLAINTEXT + 1
    aad = es.to_bytes(8, "big") + bytes([23, 0xFE, 0xFD]) + n.to_bytes(2, "big")
    if big._explicit:
        ct = aead.encrypt(IV1 + es.to_bytes(8, "big"), bytes(n), aad)
        rec = bytes([23, 0xFE, 0xFD]) + es.to_bytes(8, "big") + (n + 24).to_bytes(2, "big") + es.to_bytes(8, "big") + ct
    else:
        nonce = (int.from_bytes(bytes(range(12)), "big") ^ es).to_bytes(12, "big")
        ct = aead.encrypt(nonce, bytes(n), aad)
        rec = bytes([23, 0xFE, 0xFD]) + es.to_bytes(8, "big") + (n + 16).to_bytes(2, "big") + ct
    assert b.open(rec) is RecordDrop.OVERFLOW


@pytest.mark.parametrize("pair", [gcm_pair, chacha_pair])
def test_roundtrip_sequence_and_content_type(pair) -> None:
    a, b = pair()
    r1 = a.seal(b"x" * 1400)
    r2 = a.seal(b"\x01\x00", content_type=CT_ALERT)
    assert parse_record_header(r1)[3] == FAST_PATH_SEQ_BASE
    assert parse_record_header(r2)[3] == FAST_PATH_SEQ_BASE + 1
    assert b.open(r1) == (23, b"x" * 1400, True)
    assert b.open(r2) == (CT_ALERT, b"\x01\x00", True)
    assert b.open(r1) is RecordDrop.REPLAY
    assert a.sealed == 2 and b.opened == 2


@pytest.mark.parametrize("pair", [gcm_pair, chacha_pair])
def test_damage_is_detected(pair) -> None:
    a, b = pair()
    rec = a.seal(b"segment bytes " * 3)
    for i in range(len(rec)):
        bad = bytearray(rec)
        bad[i] ^= 0x80
        assert isinstance(b.open(bytes(bad)), RecordDrop)
    assert b.open(rec[:-1]) is RecordDrop.TRUNCATED
    assert b.open(rec + b"\x00") is RecordDrop.TRUNCATED
    assert b.open(rec[:12]) is RecordDrop.TRUNCATED
    assert b.open(rec)[1] == b"segment bytes " * 3      # nothing above marked it seen


def test_specific_drop_reasons() -> None:
    a, b = gcm_pair()
    rec = bytearray(a.seal(b"data"))
    v = bytearray(rec); v[1] = 0xFE; v[2] = 0xFF
    assert b.open(bytes(v)) is RecordDrop.BAD_VERSION
    e = bytearray(rec); e[4] = 2
    assert b.open(bytes(e)) is RecordDrop.WRONG_EPOCH
    t = bytearray(rec); t[-1] ^= 1
    assert b.open(bytes(t)) is RecordDrop.AUTH


def test_replay_window_rfc6347() -> None:
    w = ReplayWindow(size=64)
    assert w.check(10)
    assert w.update(10) is True
    assert not w.check(10)
    assert w.check(9) and w.update(9) is False
    assert not w.check(9)
    assert w.update(100) is True
    assert w.check(37) and not w.check(36)          # 100 - 63 is the left edge
    assert w.check(99) and w.update(99) is False
    assert not w.check(99)
    assert w.check(1000)


def test_each_half_of_the_sequence_space_has_its_own_window() -> None:
    a, b = gcm_pair()
    fast = a.seal(b"fast path")
    assert b.open(fast)[0] == 23
    # a record OpenSSL wrote (low sequence number, random explicit nonce) still opens
    es = (1 << 48) | 3
    aad = struct.pack("!QBHH", es, 23, 0xFEFD, 4)
    nonce = bytes.fromhex("1122334455667788")
    ct = AESGCM(K1).encrypt(IV1 + nonce, b"ossl", aad)
    low = struct.pack("!BHQH", 23, 0xFEFD, es, 8 + len(ct)) + nonce + ct
    assert b.open(low) == (23, b"ossl", True)
    assert b.open(low) is RecordDrop.REPLAY


def _openssl_record(es: int, nonce: int) -> bytes:
    return struct.pack("!BHQHQ", 21, 0xFEFD, es, 8 + 2 + 16, nonce) + bytes(18)


def test_nonce_guard_skips_a_nonce_openssl_used() -> None:
    a, _ = gcm_pair()
    epoch_hi = 1 << 48
    ahead = epoch_hi | (FAST_PATH_SEQ_BASE + 1)
    assert a.note_openssl_record(_openssl_record(epoch_hi | 1, ahead)) is True
    n1 = a.seal(b"a")[13:21]
    n2 = a.seal(b"b")[13:21]
    assert int.from_bytes(n1, "big") == epoch_hi | FAST_PATH_SEQ_BASE
    assert int.from_bytes(n2, "big") == epoch_hi | (FAST_PATH_SEQ_BASE + 2)   # skipped OpenSSL's
    # an OpenSSL record reusing a nonce the fast path already used must not be sent
    assert a.note_openssl_record(_openssl_record(epoch_hi | 2, epoch_hi | FAST_PATH_SEQ_BASE)) is False
    # OpenSSL's usual random nonces are fine
    assert a.note_openssl_record(_openssl_record(epoch_hi | 3, 0x85BB17E013A41686)) is True


def test_split_records() -> None:
    a, _ = gcm_pair()
    r1, r2 = a.seal(b"one"), a.seal(b"two!")
    assert split_records(r1 + r2) == [r1, r2]
    assert split_records(r1 + r2[:-1]) == [r1]
    assert split_records(b"") == []


def test_bad_key_material_is_refused() -> None:
    with pytest.raises(ValueError):
        RecordProtection(AES_256_GCM, 1, bytes(32), bytes(12), bytes(32), bytes(12))
    with pytest.raises(ValueError):
        RecordProtection("RC4", 1, K1, IV1, K2, IV2)
