"""The bulk floor in Python: ``bulk_floor.c``'s protocol and layout with the interpreter in the way.

Same arguments and wire format as the C program (8-byte datagram index, top bit on
the last; an 8-byte acknowledgement per GRO buffer; at most WINDOW datagrams
unacknowledged; GSO batches on send)::

    cat FILE | python bench/bulk_floor.py send UDP_PORT PEER_UDP_PORT [DATAGRAM_BYTES]
    python bench/bulk_floor.py recv UDP_PORT PEER_UDP_PORT > OUT

What a Python program with tou's process layout pays to move the bytes, before any
TCP, encryption or event loop: one ``readv`` into the datagrams, one ``sendmsg`` per
GSO batch, one ``recvmsg_into`` and one ``writev`` per GRO buffer.
"""

from __future__ import annotations

import os
import socket
import struct
import sys

HDR = 8
GSO_BYTES = 65000
WINDOW = 256
LAST = 1 << 63
STALL = 10.0
SOL_UDP, UDP_SEGMENT, UDP_GRO = 17, 103, 104
_U64 = struct.Struct("!Q")
_U16 = struct.Struct("=H")
_INT = struct.Struct("=i")


def send(sock: socket.socket, size: int) -> int:
    per = max(1, min(64, GSO_BYTES // size))
    batch = bytearray(per * size)
    view = memoryview(batch)
    payloads = [view[k * size + HDR:(k + 1) * size] for k in range(per)]
    anc = [(SOL_UDP, UDP_SEGMENT, _U16.pack(size))]
    nxt = acked = 0
    done = False
    while not done:
        while True:                               # room in the window, acknowledgements read
            full = nxt - acked + per > WINDOW
            sock.settimeout(STALL if full else 0.0)
            try:
                ack = sock.recv(HDR)
            except BlockingIOError:
                break
            except socket.timeout:
                print(f"bulk_floor send: no acknowledgement for {STALL:g} s", file=sys.stderr)
                return 1
            acked = max(acked, _U64.unpack(ack)[0])
        k = 0
        length = per * size
        while k < per:
            want = size - HDR
            got = 0
            while got < want:
                n = os.readv(0, [payloads[k][got:]])
                if n == 0:
                    break
                got += n
            if got < want:
                _U64.pack_into(batch, k * size, (nxt + k) | LAST)
                length = k * size + HDR + got
                k += 1
                done = True
                break
            _U64.pack_into(batch, k * size, nxt + k)
            k += 1
        else:
            length = k * size
        sock.settimeout(STALL)
        sock.sendmsg([view[:length]], anc if k > 1 else [])
        nxt += k
    sock.settimeout(STALL)
    while acked < nxt:
        try:
            acked = max(acked, _U64.unpack(sock.recv(HDR))[0])
        except socket.timeout:
            print(f"bulk_floor send: {acked} of {nxt} datagrams acknowledged", file=sys.stderr)
            return 1
    return 0


def recv(sock: socket.socket) -> int:
    sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    buf = bytearray(65536)
    view = memoryview(buf)
    expect = 0
    cmsg_space = socket.CMSG_SPACE(_INT.size)
    while True:
        try:
            n, anc, _flags, _addr = sock.recvmsg_into([buf], cmsg_space)
        except socket.timeout:
            print(f"bulk_floor recv: nothing for {STALL:g} s after {expect} datagrams", file=sys.stderr)
            return 1
        seg = n
        for level, kind, data in anc:
            if level == SOL_UDP and kind == UDP_GRO:
                seg = _INT.unpack(data[:_INT.size])[0]
        parts = []
        last = False
        for off in range(0, n, seg):
            end = min(n, off + seg)
            idx = _U64.unpack_from(buf, off)[0]
            last = bool(idx & LAST)
            idx &= ~LAST
            if idx != expect:
                print(f"bulk_floor recv: datagram {idx} where {expect} was due", file=sys.stderr)
                return 1
            expect += 1
            parts.append(view[off + HDR:end])
        while parts:
            w = os.writev(1, parts)
            while parts and w >= len(parts[0]):
                w -= len(parts.pop(0))
            if parts and w:
                parts[0] = parts[0][w:]
        sock.send(_U64.pack(expect))
        if last:
            return 0


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[0] not in ("send", "recv"):
        print(__doc__, file=sys.stderr)
        return 2
    size = int(argv[3]) if len(argv) > 3 else 16433
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        sock.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
    sock.bind(("127.0.0.1", int(argv[1])))
    sock.connect(("127.0.0.1", int(argv[2])))
    sock.settimeout(STALL)
    if argv[0] == "recv":
        print("ready", file=sys.stderr, flush=True)
        return recv(sock)
    return send(sock, size)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
