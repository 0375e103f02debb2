"""``--pcap``: decrypted inner segments as a pcap that tshark reads as a clean TCP conversation."""

from __future__ import annotations

import asyncio
import io
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from toucli.pcap import LINKTYPE_RAW, PcapWriter, TapTransport, ipv4_header
from toucli.stack.checksum import ones_sum, tcp_checksum_ok
from toucli.stack.segment import ACK, PSH, SYN, Segment

ROOT = Path(__file__).resolve().parent.parent
TOU = [sys.executable, "-m", "toucli"]
TSHARK = shutil.which("tshark")
needs_tshark = pytest.mark.skipif(TSHARK is None, reason="tshark is not installed (Debian: tshark)")


def records(blob: bytes) -> list[tuple[float, bytes]]:
    magic, major, minor, _zone, _sig, snaplen, link = struct.unpack_from("<IHHiIII", blob)
    assert (magic, major, minor, link) == (0xA1B2C3D4, 2, 4, LINKTYPE_RAW)
    out, off = [], 24
    while off < len(blob):
        sec, usec, incl, orig = struct.unpack_from("<IIII", blob, off)
        assert incl == orig
        out.append((sec + usec / 1e6, blob[off + 16:off + 16 + incl]))
        off += 16 + incl
    assert off == len(blob)
    return out


# ------------------------------------------------------------------ format
def test_file_header_and_an_ipv4_record() -> None:
    buf = io.BytesIO()
    w = PcapWriter(buf, local=("10.0.0.1", 5555), clock=lambda: 1_700_000_000.25)
    seg = Segment(50000, 1, seq=1000, ack=2000, flags=ACK | PSH, wnd=512, payload=b"hello", tsval=7, tsecr=9)
    w.write_segment(seg, ("10.0.0.2", 4500), outgoing=True)
    w.write_segment(seg, ("10.0.0.2", 4500), outgoing=False)
    blob = buf.getvalue()
    assert blob[:24] == bytes.fromhex("d4c3b2a1 0200 0400 00000000 00000000 00000400 65000000")
    (t1, p1), (_, p2) = records(blob)
    assert t1 == 1_700_000_000.25
    assert p1[0] == 0x45 and p1[9] == 6 and struct.unpack_from("!H", p1, 2)[0] == len(p1)
    assert p1[12:16] == bytes([10, 0, 0, 1]) and p1[16:20] == bytes([10, 0, 0, 2])
    assert p2[12:16] == bytes([10, 0, 0, 2]) and p2[16:20] == bytes([10, 0, 0, 1])
    assert ones_sum(p1[:20]) in (0, 0xFFFF)                   # the IPv4 header checksum verifies
    tcp = p1[20:]
    assert struct.unpack_from("!HHII", tcp) == (50000, 1, 1000, 2000)
    assert tcp.endswith(b"hello")
    assert tcp_checksum_ok(tcp, p1[12:16], p1[16:20])
    # The checksum uses the real addresses, not TOU's address-free form.
    assert ones_sum(tcp, 6 + len(tcp)) != 0


def test_ipv6_and_mapped_addresses() -> None:
    buf = io.BytesIO()
    w = PcapWriter(buf, local=("2001:db8::1", 1))
    w.write_segment(Segment(1, 2, flags=SYN, wnd=100, mss=1400), ("2001:db8::2", 9), outgoing=True)
    w2buf = io.BytesIO()
    w2 = PcapWriter(w2buf, local=("::", 1))
    w2.write_segment(Segment(1, 2, flags=SYN, wnd=100), ("::ffff:127.0.0.1", 9), outgoing=False)
    (_, p6), = records(buf.getvalue())
    assert p6[0] >> 4 == 6 and p6[6] == 6 and struct.unpack_from("!H", p6, 4)[0] == len(p6) - 40
    assert p6[8:24] == socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    assert tcp_checksum_ok(p6[40:], p6[8:24], p6[24:40])
    (_, p4), = records(w2buf.getvalue())
    assert p4[0] == 0x45 and p4[12:16] == bytes([127, 0, 0, 1])
    assert p4[16:20] == bytes([127, 0, 0, 1])                  # unspecified local: the route's source


def test_ipv4_header_checksum_known_value() -> None:
    hdr = ipv4_header(bytes([192, 168, 0, 1]), bytes([192, 168, 0, 199]), 20, 0x1c46)
    # Total length 40, DF, TTL 64, TCP; checksum worked by hand: ~(sum of the words, folded) = 0x9c71.
    assert hdr.hex() == "450000281c46400040069c71c0a80001c0a800c7"
    assert ones_sum(hdr) in (0, 0xFFFF)


# ------------------------------------------------------------------ tshark
def tshark(*args: str) -> str:
    res = subprocess.run([TSHARK, *args], capture_output=True, timeout=120, text=True,
                         env=dict(os.environ, HOME=tempfile.gettempdir()))
    assert res.returncode == 0, res.stderr
    return res.stdout


def followed(path: Path) -> tuple[bytes, bytes]:
    """The reassembled stream, both directions (node 0 -> 1, node 1 -> 0), as tshark follows it."""
    out = tshark("-r", str(path), "-q", "-z", "follow,tcp,raw,0")
    a, b = bytearray(), bytearray()
    body = out.split("Node 1:", 1)[1].split("\n", 1)[1]
    for line in body.splitlines():
        if line.startswith("====="):
            break
        if line.startswith("\t"):
            b += bytes.fromhex(line.strip())
        elif line.strip():
            a += bytes.fromhex(line.strip())
    return bytes(a), bytes(b)


def check_clean(path: Path) -> int:
    """No malformed packet, no bad checksum; returns the number of packets."""
    assert tshark("-r", str(path), "-Y", "_ws.malformed") == ""
    assert tshark("-r", str(path), "-o", "tcp.check_checksum:TRUE", "-o", "ip.check_checksum:TRUE",
                  "-Y", 'tcp.checksum.status == "Bad" || ip.checksum.status == "Bad"') == ""
    assert tshark("-r", str(path), "-Y", "_ws.expert.severity == error") == ""
    return len(tshark("-r", str(path), "-T", "fields", "-e", "frame.number").split())


def lossy_transfer(data: bytes, client_pcap: Path, server_pcap: Path, loss: float) -> dict:
    """Client sends ``data`` to a server over an emulated lossy path, both tapped; returns engine stats."""
    from toucli.commands.demo import LinkedUdpSocket
    from toucli.link import Link
    from toucli.tunnel import PlainTransport, Tunnel, engine_config

    async def main() -> dict:
        loop = asyncio.get_running_loop()
        rng = random.Random(11)

        def sock() -> LinkedUdpSocket:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            return LinkedUdpSocket(s, Link(random.Random(rng.random()), 0.005, loss=loss, overhead=28))

        a, b = sock(), sock()
        cw = PcapWriter(str(client_pcap), local=a.local_address)
        sw = PcapWriter(str(server_pcap), local=b.local_address)
        cfg = engine_config(socket.AF_INET, PlainTransport.overhead)
        accepted: asyncio.Future = loop.create_future()
        server = Tunnel(b, TapTransport(PlainTransport(), sw), cfg,
                        on_accept=lambda ch: accepted.done() or accepted.set_result(ch))
        server.listen()
        client = Tunnel(a, TapTransport(PlainTransport(), cw), cfg)
        try:
            ch = client.connect(b.local_address())
            await asyncio.wait_for(asyncio.shield(ch.connected), 10)
            peer = await asyncio.wait_for(accepted, 10)
            got = bytearray()

            async def reader() -> None:
                while True:
                    chunk = await peer.read()
                    if not chunk:
                        break
                    got.extend(chunk)
                peer.write_eof()

            r = asyncio.ensure_future(reader())
            await ch.write(data)
            ch.write_eof()
            await asyncio.wait_for(r, 60)
            await asyncio.wait_for(asyncio.shield(ch.done), 10)
            await asyncio.sleep(0.1)
            assert bytes(got) == data
            return ch.conn.stats()
        finally:
            client.close()
            server.close()
            cw.close()
            sw.close()

    return asyncio.run(main())


@pytest.mark.slow
@needs_tshark
def test_lossy_transfer_reads_back_as_the_bytes_sent(tmp_path) -> None:
    data = random.Random(3).randbytes(600_000)
    cp, sp = tmp_path / "client.pcap", tmp_path / "server.pcap"
    st = lossy_transfer(data, cp, sp, loss=0.03)
    assert st["retransmitted_segments"] > 0                   # the path really lost segments
    n_client, n_server = check_clean(cp), check_clean(sp)
    assert n_client > n_server                                 # the client saw its lost segments leave
    # Wireshark sees what happened: retransmissions and SACK blocks.
    assert tshark("-r", str(cp), "-Y", "tcp.analysis.retransmission || tcp.analysis.fast_retransmission")
    assert tshark("-r", str(cp), "-Y", "tcp.options.sack_le")
    assert tshark("-r", str(sp), "-Y", "tcp.flags.syn == 1 && tcp.flags.ack == 1")
    for path in (cp, sp):
        up, down = followed(path)
        assert up == data, path.name
        assert down == b""


# ------------------------------------------------------------------ the commands
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@needs_tshark
@pytest.mark.parametrize("secure", [False, True], ids=["cleartext", "dtls"])
def test_connect_and_listen_write_decrypted_captures(tmp_path, secure: bool) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOU_")}
    env["XDG_CONFIG_HOME"] = "/nonexistent-tou-test-config"
    env["XDG_RUNTIME_DIR"] = str(tmp_path)
    if secure:
        env["TOU_SECRET"] = subprocess.run([*TOU, "key", "secret"], capture_output=True, text=True,
                                           env=env, timeout=20, cwd=ROOT).stdout.strip()
        mode: list[str] = []
    else:
        mode = ["--insecure"]
    port = free_port()
    up = random.Random(1).randbytes(300_000)
    down = b"reply " * 1000
    lp, cp = tmp_path / "listen.pcap", tmp_path / "connect.pcap"
    lst = subprocess.Popen([*TOU, "listen", *mode, "--quiet", "--pcap", str(lp), "127.0.0.1", str(port)],
                           cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while f":{port:04X} " not in Path("/proc/net/udp").read_text():
            assert time.monotonic() < deadline and lst.poll() is None
            time.sleep(0.02)
        result: dict = {}
        t = threading.Thread(target=lambda: result.update(lst=lst.communicate(down, timeout=60)))
        t.start()
        cli = subprocess.run([*TOU, "connect", *mode, "--quiet", "--pcap", str(cp), "127.0.0.1", str(port)],
                             cwd=ROOT, env=env, input=up, capture_output=True, timeout=60)
        t.join(timeout=60)
    finally:
        if lst.poll() is None:
            lst.kill()
        lst.wait(timeout=10)
    assert cli.returncode == 0, cli.stderr
    assert lst.returncode == 0, result
    assert cli.stdout == down and result["lst"][0] == up
    for path in (cp, lp):
        check_clean(path)
        # Node 0 is the first SYN's sender, the client, in both captures.
        assert followed(path) == (up, down), path.name
