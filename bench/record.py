"""Secure-channel costs: fast-path seal+open per 1400-byte segment vs bare AEAD calls,
OpenSSL seal+open through pyOpenSSL for comparison, and handshakes per second.

Run: python bench/record.py   (prints µs per record and handshakes/s)
"""

from __future__ import annotations

import os
import sys
import time
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305  # noqa: E402

from toucli.record import FAST_PATH_SEQ_BASE, RecordProtection  # noqa: E402

N = 50_000
SEG = os.urandom(1400)


def best(fn, n: int = N) -> float:
    return min(timeit.repeat(fn, number=n, repeat=5)) / n * 1e6


def bare(aead, nonce_len: int) -> float:
    nonce, aad = os.urandom(nonce_len), os.urandom(13)
    ct = aead.encrypt(nonce, SEG, aad)
    return best(lambda: (aead.encrypt(nonce, SEG, aad), aead.decrypt(nonce, ct, aad)))


def fast(cipher: str, klen: int, ivlen: int, prefix: bytes) -> float:
    k1, k2, i1, i2 = os.urandom(klen), os.urandom(klen), os.urandom(ivlen), os.urandom(ivlen)
    tx = RecordProtection(cipher, 1, k1, i1, k2, i2)
    rx = RecordProtection(cipher, 1, k2, i2, k1, i1)
    plen = len(prefix)

    def one() -> None:
        rec = tx.seal(SEG, prefix)
        rx.open(rec, plen)
    return best(one)


def openssl_roundtrip() -> float:
    client, server = _handshake()
    def one() -> None:
        client.conn.send(SEG)
        data = client.conn.bio_read(65536)
        server.conn.bio_write(data)
        server.conn.recv(65536)
    return best(one, 20_000)


def _handshake():
    from test_dtls import handshake  # the test helper runs a full in-memory handshake
    return handshake(b"ECDHE-ECDSA-AES128-GCM-SHA256")


def handshakes_per_second(seconds: float = 2.0) -> float:
    from securenet import SERVER_ADDR, Net, key_pair_endpoints
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        client, server = key_pair_endpoints()
        net = Net(client, server)
        client.connect(SERVER_ADDR, 0.0)
        net.deliver()
        assert len(net.server_events) == 1
        count += 1
    return count / (time.perf_counter() - start)


def endpoint_roundtrip() -> float:
    """SecureEndpoint.seal_segment + datagram_received (what the runtime pays per segment)."""
    from securenet import CLIENT_ADDR, connect, key_pair_endpoints
    net, cs, _ss = connect(*key_pair_endpoints())
    client, server = net.client, net.server

    def one() -> None:
        server.datagram_received(client.seal_segment(cs, SEG), CLIENT_ADDR, 1.0)
    return best(one)


def main() -> None:
    prefix = bytes(12)
    rows = [
        ("AES-128-GCM", AESGCM(os.urandom(16)), 12, ("AES-128-GCM", 16, 4)),
        ("AES-256-GCM", AESGCM(os.urandom(32)), 12, ("AES-256-GCM", 32, 4)),
        ("ChaCha20-Poly1305", ChaCha20Poly1305(os.urandom(32)), 12, ("CHACHA20-POLY1305", 32, 12)),
    ]
    print(f"seal+open of one 1400-byte segment (µs, best of 5 x {N}):")
    for name, aead, nlen, spec in rows:
        b = bare(aead, nlen)
        f = fast(*spec, prefix)
        print(f"  {name:18s} bare encrypt+decrypt {b:5.2f}   tou fast path {f:5.2f}   ratio {f / b:4.2f}x"
              f"   overhead {f - b:4.2f}")
    print(f"  OpenSSL via pyOpenSSL (AES-128-GCM, send+bio_read+bio_write+recv): {openssl_roundtrip():5.2f}")
    print(f"  SecureEndpoint seal_segment + datagram_received (AES-128-GCM): {endpoint_roundtrip():5.2f}")
    print(f"full handshakes (key pairs, in memory, both ends in this process): "
          f"{handshakes_per_second():.0f}/s")
    assert FAST_PATH_SEQ_BASE


if __name__ == "__main__":
    main()
