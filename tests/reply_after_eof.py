"""``tou listen -e`` program of the reliability tests: the half-close reply.

Reads its stdin (the connection) to EOF, then answers with the SHA-256 of what it
read (one hex line) followed by SIZE bytes drawn from ``random.Random(SEED)``.
Usage: ``reply_after_eof.py SIZE SEED``.
"""

import hashlib
import random
import sys
import time
from pathlib import Path


def payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def main() -> None:
    size, seed = int(sys.argv[1]), int(sys.argv[2])
    h = hashlib.sha256()
    while chunk := sys.stdin.buffer.read1(1 << 16):
        h.update(chunk)
    if len(sys.argv) > 4:
        Path(sys.argv[3]).touch()
        time.sleep(float(sys.argv[4]))
    out = sys.stdout.buffer
    out.write(h.hexdigest().encode() + b"\n")
    out.write(payload(size, seed))
    out.flush()


if __name__ == "__main__":
    main()
