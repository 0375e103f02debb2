"""Engine throughput: two tou engines in one process, segments handed straight across.

A bulk transfer A->B with no link in between (zero delay, no loss): A's
segments go to B's ``receive`` and B's ACKs back to A's, the application on
B reads everything. Time is the real monotonic clock, so timers behave as on a
loopback path. Three modes:

* ``engine``: ``Segment`` objects are passed as they are (the engine alone);
* ``aead``: each segment is encoded and decoded without the TCP checksum, as in
  the encrypted profile where the AEAD tag protects the segment;
* ``codec``: encoded and decoded with the checksum (the cleartext profile).

By default B sees everything A emitted in one call before it answers (a
receive loop draining a batch of datagrams); ``--batch 2`` makes B answer
after every two segments instead, so the ACK work is what a per-datagram loop
would cause. Printed per mode: data segments per second (A->B segments carrying payload;
the ACKs B sends and A processes are part of the work measured), all segments
per second, payload Mbit/s, and whether the target of 150k data segments/s
was met. ``--profile`` runs the chosen mode(s) under cProfile and prints the
functions with the most own time.

    python bench/engine.py                    # all modes, 200 MB or 10 s each
    python bench/engine.py --mode codec --bytes 50e6
    python bench/engine.py --profile --mode engine --seconds 5
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from toucli.stack.config import ConnectionConfig  # noqa: E402
from toucli.stack.endpoint import Endpoint  # noqa: E402
from toucli.stack.events import Readable  # noqa: E402
from toucli.stack.tcp import decode_segment, encode_segment  # noqa: E402

TARGET_SEGMENTS_PER_S = 150_000
CHUNK = bytes(range(256)) * 1024     # 256 KiB offered to send() at a time


def run(mode: str, total_bytes: int, max_seconds: float, mss: int = 1400, batch: int = 0) -> dict:
    """One bulk transfer; returns counters and the elapsed wall time."""
    cfg = ConnectionConfig(mss=mss)
    a = Endpoint(cfg, b"bench-secret-a" * 3)
    b = Endpoint(cfg, b"bench-secret-b" * 3)
    b.listen(80)
    clock = time.perf_counter
    codec = mode in ("codec", "aead")
    csum = mode == "codec"   # the encrypted profile skips the TCP checksum (the AEAD covers it)
    start = clock()
    conn_a = a.connect("B", 40000, 80, 0.0)
    offered = 0
    received = 0
    data_segs = 0
    ack_segs = 0
    chunk = memoryview(CHUNK)
    deadline = start + max_seconds
    now = 0.0
    while received < total_bytes:
        now = clock() - start
        if now + start > deadline:
            break
        # the sender's application keeps the send buffer full
        while offered < total_bytes:
            n = conn_a.send(chunk[:min(len(chunk), total_bytes - offered)])
            if n <= 0:
                break
            offered += n
        # A -> B, B's reactions -> A (after every ``batch`` segments, or after all)
        out = a.segments_to_send(now)
        step = batch or len(out) or 1
        for i in range(0, max(len(out), 1), step):
            for peer, seg in out[i:i + step]:
                if seg.payload:
                    data_segs += 1
                if codec:
                    seg = decode_segment(encode_segment(seg, checksum=csum), verify_checksum=csum)
                b.receive("A", seg, now)
            while (ev := b.next_event()) is not None:
                if isinstance(ev, Readable):
                    received += len(ev.conn.recv())
            for peer, seg in b.segments_to_send(now):
                ack_segs += 1
                if codec:
                    seg = decode_segment(encode_segment(seg, checksum=csum), verify_checksum=csum)
                a.receive("B", seg, now)
        while a.next_event() is not None:
            pass
        for ep in (a, b):
            d = ep.next_deadline()
            if d is not None and d <= now:
                ep.handle_timer(now)
    elapsed = clock() - start
    return {
        "mode": mode,
        "elapsed": elapsed,
        "received": received,
        "data_segments": data_segs,
        "ack_segments": ack_segs,
        "retransmitted": conn_a.stats()["retransmitted_segments"],
        "complete": received >= total_bytes,
    }


def report(r: dict) -> None:
    el = r["elapsed"]
    segs = r["data_segments"] / el
    label = {"engine": "engine only", "codec": "engine + codec", "aead": "engine + codec, no csum"}[r["mode"]]
    print(f"{label:23s} {r['received'] / 1e6:8.1f} MB in {el:6.2f} s: "
          f"{segs:9,.0f} data segments/s, {(r['data_segments'] + r['ack_segments']) / el:9,.0f} segments/s "
          f"(ACKs {r['ack_segments']:,}), {r['received'] * 8 / el / 1e6:7.1f} Mbit/s payload, "
          f"retransmitted {r['retransmitted']}; target {TARGET_SEGMENTS_PER_S:,}/s: "
          f"{'MET' if segs >= TARGET_SEGMENTS_PER_S else 'not met'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=("engine", "codec", "aead", "all"), default="all")
    ap.add_argument("--bytes", type=float, default=200e6, help="bytes to transfer per mode (default 200e6)")
    ap.add_argument("--seconds", type=float, default=10.0, help="stop a mode after this long (default 10)")
    ap.add_argument("--mss", type=int, default=1400)
    ap.add_argument("--batch", type=int, default=0,
                    help="hand B this many segments before it answers (0: all A emitted at once; "
                         "2 makes B answer like a receiver that ACKs every second segment)")
    ap.add_argument("--profile", action="store_true", help="run under cProfile, print the top functions")
    ap.add_argument("--top", type=int, default=25, help="functions to list with --profile")
    args = ap.parse_args(argv)
    modes = ("engine", "aead", "codec") if args.mode == "all" else (args.mode,)
    for mode in modes:
        if args.profile:
            prof = cProfile.Profile()
            r = prof.runcall(run, mode, int(args.bytes), args.seconds, args.mss, args.batch)
            report(r)
            print("  (under cProfile: figures are slower than without it)")
            out = io.StringIO()
            pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(args.top)
            print(out.getvalue())
        else:
            report(run(mode, int(args.bytes), args.seconds, args.mss, args.batch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
