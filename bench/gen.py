"""Deterministic pseudo-random bytes on stdout, fast: the source of the bulk benchmarks.

    python bench/gen.py BYTES [--seed N] | tou connect HOST PORT

The stream is the AES-128-CTR keystream under a key derived from the seed, written in
1 MiB pieces (about 4 GB/s of keystream on a core with AES-NI, so the source costs
little beside what it feeds). Unlike ``/dev/zero``, every position carries different
bytes, so the SHA-256 of what arrives proves order as well as content; unlike a file,
it does not depend on what the page cache kept. ``--sha256`` prints the digest of the
stream instead of the stream.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

PIECE = 1 << 20


def stream(nbytes: int, seed: int):
    """The pieces of the stream, in order: views of one buffer, valid until the next."""
    key = hashlib.sha256(f"tou-bench-{seed}".encode()).digest()[:16]
    enc = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    zeros = memoryview(bytes(PIECE))
    buf = bytearray(PIECE + 15)           # update_into wants room for a block more
    out = memoryview(buf)
    left = nbytes
    while left > 0:
        n = min(PIECE, left)
        enc.update_into(zeros[:n], buf)
        yield out[:n]
        left -= n


def digest(nbytes: int, seed: int) -> str:
    h = hashlib.sha256()
    for piece in stream(nbytes, seed):
        h.update(piece)
    return h.hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bytes", type=int)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--sha256", action="store_true", help="print the stream's SHA-256 instead")
    a = ap.parse_args()
    if a.sha256:
        print(digest(a.bytes, a.seed))
        return 0
    fd = sys.stdout.fileno()
    try:
        for piece in stream(a.bytes, a.seed):
            view = memoryview(piece)
            while view:
                view = view[os.write(fd, view):]
    except BrokenPipeError:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
