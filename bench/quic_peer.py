"""QUIC contender (aioquic, RFC 9000): one bidirectional stream carries a bulk transfer.

    python bench/quic_peer.py cert DIR                  # self-signed P-256 certificate into DIR
    python bench/quic_peer.py server PORT DIR           # receive one stream, print JSON, exit
    python bench/quic_peer.py client PORT BYTES

The server counts the stream's bytes, notes the times of the first and the last
byte (``time.monotonic()``), answers ``done`` and prints one JSON line. aioquic's
default settings are used (its NewReno, TLS 1.3 with AES-128-GCM); the client
skips certificate verification (loopback, a throwaway certificate). Bounded by
``--timeout``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import sys
import time
from pathlib import Path

ALPN = ["tou-bench"]


def make_cert(directory: str) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    d = Path(directory)
    (d / "quic.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
    (d / "quic.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


async def server(port: int, directory: str, timeout: float) -> None:
    from aioquic.asyncio import QuicConnectionProtocol, serve
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.events import StreamDataReceived

    finished: asyncio.Future = asyncio.get_running_loop().create_future()
    state = {"bytes": 0, "first": None, "last": None}

    class Sink(QuicConnectionProtocol):
        def quic_event_received(self, event: object) -> None:
            if isinstance(event, StreamDataReceived):
                now = time.monotonic()
                if state["first"] is None:
                    state["first"] = now
                state["bytes"] += len(event.data)
                state["last"] = now
                if event.end_stream:
                    self._quic.send_stream_data(event.stream_id, b"done", end_stream=True)
                    self.transmit()
                    if not finished.done():
                        finished.set_result(None)

    cfg = QuicConfiguration(is_client=False, alpn_protocols=ALPN)
    cfg.load_cert_chain(str(Path(directory) / "quic.crt"), str(Path(directory) / "quic.key"))
    srv = await serve("127.0.0.1", port, configuration=cfg, create_protocol=Sink)
    print(json.dumps({"listening": port}), flush=True)
    try:
        await asyncio.wait_for(finished, timeout)
        await asyncio.sleep(0.2)      # let the answer leave
    finally:
        srv.close()
        print(json.dumps(state), flush=True)


async def client(port: int, nbytes: int, timeout: float) -> None:
    import ssl

    from aioquic.asyncio import connect
    from aioquic.quic.configuration import QuicConfiguration

    cfg = QuicConfiguration(is_client=True, alpn_protocols=ALPN, verify_mode=ssl.CERT_NONE)
    data = bytes(nbytes)
    t0 = time.monotonic()
    async with connect("127.0.0.1", port, configuration=cfg) as conn:
        reader, writer = await conn.create_stream()
        writer.write(data)
        writer.write_eof()
        answer = await asyncio.wait_for(reader.read(), timeout)
    print(json.dumps({"answer": answer.decode(errors="replace"), "seconds": time.monotonic() - t0}), flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--timeout", type=float, default=120.0)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("cert")
    p.add_argument("dir")
    p = sub.add_parser("server")
    p.add_argument("port", type=int)
    p.add_argument("dir")
    p = sub.add_parser("client")
    p.add_argument("port", type=int)
    p.add_argument("bytes", type=int)
    a = ap.parse_args(argv)
    if a.cmd == "cert":
        make_cert(a.dir)
    elif a.cmd == "server":
        asyncio.run(server(a.port, a.dir, a.timeout))
    else:
        asyncio.run(client(a.port, a.bytes, a.timeout))


if __name__ == "__main__":
    main(sys.argv[1:])
