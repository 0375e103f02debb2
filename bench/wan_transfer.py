"""A file across the emulated WAN, sent the way users send one: tou against kernel TCP, paired.

Each run makes a fresh :class:`wanlink.WanPath` (two network namespaces and the
userspace emulator between them: RTT, loss per packet and direction, optional
uniform jitter, a 100 Mbit/s bottleneck with a drop-tail queue of one BDP) and
sends N bytes from namespace A to a file in namespace B::

    gen N | tou connect B PORT                 tou listen -d B PORT > out.bin
    gen N | tcp_peer.py send B PORT --cc bbr   tcp_peer.py recv PORT > out.bin

Goodput = N / (sender's start - receiver's exit): what the user waits for, the
handshake, start-up and the close included. Steady = the rate while the receiver
wrote the middle 80 % (sampled from ``/proc/PID/io``). Retransmitted = share of the
sender's segments sent again (tou: ``--stats-json``; kernel TCP: the namespace's
``TcpRetransSegs`` / ``TcpOutSegs``). CPU s/GB = both ends (``wait4``). Link busy =
the seconds the bottleneck's transmitter spent on the data direction's packets (the
emulator's own count of the bytes it serialized: headers, retransmissions and packets
lost on the wire included, queue drops not). Floor = N / (first byte + link busy): the
goodput had the link carried this contender's packets back to back from its first
byte on (no start-up ramp, no idle tail), so goodput / floor is how much of the path
the contender's start-up and recovery left unused. Every output
file is checked against the known SHA-256 of the stream (``bench/gen.py``). A run
still going after ``--cap`` seconds (kernel CUBIC at 2 % loss) is stopped there; its
goodput is what arrived by then, and those bytes are checked against the stream's prefix.

Paired, alternating: round r runs every contender once, all on seed r (the same
emulator seed, so the same loss and jitter draws per packet number), in an order
that rotates from round to round, so a slow or noisy moment of the machine falls on
each in turn. Medians and spreads per contender, and how many rounds tou won against
each, are printed at the end. Needs root (namespaces, TUN devices)::

    python bench/wan_transfer.py --cell 100:2 --rounds 5 --jitter 0,4 --bytes 60000000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gen  # noqa: E402
from bulk import Sampler, file_sha256, tou_argv, user_env, written  # noqa: E402
from harness import BENCH, PY, Procs, machine  # noqa: E402
from wanlink import B_ADDR, WanPath  # noqa: E402

RATE = 100e6
MARKS = (0.001, 0.01, 0.1, 0.25, 0.5, 0.9, 0.99, 1.0)   # --marks: when these shares of the file were written
PORT = 9000
CONTENDERS = {"tou": "tou (BBR)", "bbr": "kernel BBR", "cubic": "kernel CUBIC", "tou-cubic": "tou --cc cubic",
              "tou-nopoll": "tou --busy-poll 0"}


def _snmp(ns: str) -> dict[str, int]:
    out = subprocess.run(["ip", "netns", "exec", ns, "nstat", "-az", "TcpRetransSegs", "TcpOutSegs"],
                         capture_output=True, text=True, timeout=10).stdout
    got = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].startswith("Tcp"):
            got[parts[0]] = int(parts[1])
    return got


def _wait_bound(ns: str, port: int, proto: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    flag = "-Hlun" if proto == "udp" else "-Hltn"
    while time.monotonic() < deadline:
        r = subprocess.run(["ip", "netns", "exec", ns, "ss", flag, f"sport = :{port}"],
                           capture_output=True, text=True, timeout=5)
        if r.stdout.strip():
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing bound {proto} port {port} in {ns}")


def run_one(path: WanPath, who: str, nbytes: int, expect: str, out: Path, cap: float) -> dict[str, Any]:
    """One transfer; a run still going after ``cap`` s is stopped there and counts the
    bytes that arrived in order by then (checked against the stream's prefix)."""
    timeout = cap + 60
    env = user_env()
    stats = out.with_suffix(".json")
    tou = who.startswith("tou")
    extra = {"tou-cubic": ["--cc", "cubic"], "tou-nopoll": ["--busy-poll", "0"]}.get(who, [])
    if tou:
        recv_argv = [*tou_argv(), "listen", "-d", "--quiet", *extra, B_ADDR, str(PORT)]
        send_argv = [*tou_argv(), "connect", "--quiet", "--stats-json", str(stats), "--stats-interval", "0.5",
                     *extra, B_ADDR, str(PORT)]
    else:
        recv_argv = [PY, str(BENCH / "tcp_peer.py"), "--timeout", str(timeout), "recv", str(PORT), "--host", B_ADDR]
        send_argv = [PY, str(BENCH / "tcp_peer.py"), "--timeout", str(timeout), "send", B_ADDR, str(PORT),
                     "--cc", who]
    with Procs() as ps, out.open("wb") as out_f:
        rp = ps.start("receiver", recv_argv, netns=path.ns_b, env=env, stdout=out_f)
        _wait_bound(path.ns_b, PORT, "udp" if tou else "tcp")
        before = _snmp(path.ns_a) if not tou else {}
        t0 = time.monotonic()
        g = ps.start("gen", [PY, str(BENCH / "gen.py"), str(nbytes)], stdout=subprocess.PIPE)
        sp = ps.start("sender", send_argv, netns=path.ns_a, env=env, stdin=g.popen.stdout)
        g.popen.stdout.close()
        base = written(rp.pid) or 0        # what the receiver wrote before any data (bytecode caches)
        sampler = Sampler(rp.pid)
        sampler.start()
        capped = not ps.reap(rp, cap)
        t1 = time.monotonic()
        sampler.halt.set()
        if capped:
            cpu = sp.cpu_now() + rp.cpu_now()
            ps.close()
            got = out.stat().st_size
            if not got or file_sha256(out) != gen.digest(got, 1):
                return {"error": f"DATA MISMATCH in the {got} bytes that arrived within the {cap:g} s cap"}
            retx = None
            if not tou:
                after = _snmp(path.ns_a)
                segs = after.get("TcpOutSegs", 0) - before.get("TcpOutSegs", 0)
                retx = (after.get("TcpRetransSegs", 0) - before.get("TcpRetransSegs", 0)) / segs if segs else None
            return {"mbps": got * 8 / (t1 - t0) / 1e6, "steady": None, "retrans": retx,
                    "cpu_per_gb": cpu / (got / 1e9), "seconds": t1 - t0, "capped": got}
        ok = ps.reap(sp, 20)
        ps.reap(g, 5)
        err = (ps.stderr_tail(sp) + ps.stderr_tail(rp))[-300:]
    if not ok or sp.status or rp.status:
        return {"error": f"exit {sp.status}/{rp.status} (ok={ok}): {err}"}
    if out.stat().st_size != nbytes or file_sha256(out) != expect:
        return {"error": f"DATA MISMATCH: {out.stat().st_size} of {nbytes} bytes"}
    retx = None
    if tou:
        try:
            row = (json.loads(stats.read_text().splitlines()[-1]).get("connections") or [{}])[0]
            sent, again = row.get("segs_out") or 0, row.get("retransmitted_segments") or 0
            retx = again / sent if sent else None
        except (OSError, IndexError, ValueError):
            pass
        stats.unlink(missing_ok=True)
    else:
        after = _snmp(path.ns_a)
        segs = after.get("TcpOutSegs", 0) - before.get("TcpOutSegs", 0)
        again = after.get("TcpRetransSegs", 0) - before.get("TcpRetransSegs", 0)
        retx = again / segs if segs else None
    marks = {share: next((t - t0 for t, n in sampler.samples if n - base >= share * nbytes), None)
             for share in MARKS}
    first = next((t for t, n in sampler.samples if n > base), None)
    last = marks[1.0]
    return {"mbps": nbytes * 8 / (t1 - t0) / 1e6, "steady": sampler.steady_mbps(nbytes), "retrans": retx,
            "cpu_per_gb": ((sp.cpu or 0) + (rp.cpu or 0)) / (nbytes / 1e9), "seconds": t1 - t0,
            "first_byte": None if first is None else first - t0, "after_last": None if last is None else t1 - t0 - last,
            "marks": marks}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cell", default="100:2", help="RTT_MS:LOSS_PCT")
    ap.add_argument("--jitter", default="0", help="comma list of jitter values, ms (uniform 0..J per packet)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--bytes", type=int, default=60_000_000)
    ap.add_argument("--contenders", default="tou,bbr,cubic")
    ap.add_argument("--cap", type=float, default=60.0,
                    help="stop a run after this many seconds and count what arrived (CUBIC at 2 %% loss "
                         "moves about 1 Mbit/s: 60 MB would take 8 minutes)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--marks", action="store_true",
                    help="also print, per run, the seconds from the sender's start at which 0.1 %%, 1 %%, "
                         "10 %%, 25 %%, 50 %%, 90 %%, 99 %% and all of the file had been written")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("wan_transfer.py needs root (network namespaces, TUN devices)")
    rtt, loss = (float(x) for x in a.cell.split(":"))
    who = a.contenders.split(",")
    expect = gen.digest(a.bytes, 1)
    print(f"# {a.bytes / 1e6:g} MB across {rtt:g} ms / {loss:g} % / 100 Mbit/s, {time.strftime('%Y-%m-%d %H:%M')}; "
          f"{machine()}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="toubench-wanx-"))
    results: dict[str, dict[str, list[dict]]] = {}
    try:
        for jitter in (float(j) for j in a.jitter.split(",")):
            per = results.setdefault(f"{jitter:g}", {w: [] for w in who})
            for r in range(a.rounds):
                order = who[r % len(who):] + who[:r % len(who)]
                for w in order:
                    with WanPath(rtt / 1000, loss / 100, RATE, jitter=jitter / 1000, seed=r + 1) as path:
                        try:
                            res = run_one(path, w, a.bytes, expect, work / "out.bin", a.cap)
                        except Exception as exc:           # one failing run must not stop the rest
                            res = {"error": f"{type(exc).__name__}: {exc}"}
                    (work / "out.bin").unlink(missing_ok=True)
                    ab = (path.stats or {}).get("a_to_b") or {}
                    if "serialized_bytes" in ab and "error" not in res:
                        res["busy"] = ab["serialized_bytes"] * 8 / RATE
                        if res.get("first_byte") is not None:
                            res["floor"] = a.bytes * 8 / (res["first_byte"] + res["busy"]) / 1e6
                    res["round"] = r + 1
                    per[w].append(res)
                    shown = ("ERROR " + res["error"][:150] if "error" in res else
                             f"{res['mbps']:6.2f} Mbit/s, steady "
                             + (f"{res['steady']:6.2f}" if res["steady"] else "     –") + ", retx "
                             + (f"{100 * res['retrans']:5.2f} %" if res["retrans"] is not None else "    – ")
                             + f", {res['cpu_per_gb']:6.2f} CPU s/GB"
                             + (f" (stopped at the cap: {res['capped'] / 1e6:.1f} MB, intact)" if "capped" in res else
                                f"; first byte {res['first_byte'] or 0:.2f} s, exit {res['after_last'] or 0:.2f} s "
                                f"after the last"))
                    if "busy" in res:
                        shown += f"; link busy {res['busy']:.2f} s" + (
                            f", floor {res['floor']:.2f} Mbit/s" if "floor" in res else "")
                    print(f"  jitter {jitter:g} ms round {r + 1} {CONTENDERS.get(w, w):14s} {shown}", flush=True)
                    if a.marks and res.get("marks"):
                        print("    written by: " + ", ".join(
                            f"{100 * k:g} % {v:.2f} s" for k, v in res["marks"].items() if v is not None), flush=True)
    finally:
        for f in work.iterdir():
            f.unlink()
        work.rmdir()
    for jitter, per in results.items():
        print(f"\n## jitter {jitter} ms: medians over {a.rounds} paired rounds (min–max)\n")
        print("| contender | goodput Mbit/s | steady Mbit/s | retransmitted | CPU s/GB | first byte, s | link busy, s "
              "| floor Mbit/s |\n|---|---|---|---|---|---|---|---|")
        med: dict[str, float] = {}
        for w, rs in per.items():
            good = [x for x in rs if "error" not in x]
            if not good:
                print(f"| {CONTENDERS.get(w, w)} | failed: {rs[0].get('error', '')[:80]} | | | | | | |")
                continue

            def span(key: str, scale: float = 1.0, digits: int = 2) -> str:
                xs = [x[key] * scale for x in good if x.get(key) is not None]
                if not xs:
                    return "–"
                return f"{statistics.median(xs):.{digits}f} ({min(xs):.{digits}f}–{max(xs):.{digits}f})"
            med[w] = statistics.median(x["mbps"] for x in good)
            capped = sum(1 for x in good if "capped" in x)
            retx = span('retrans', 100)
            print(f"| {CONTENDERS.get(w, w)} | {span('mbps')} | {span('steady')} | {retx}{' %' if retx != '–' else ''} | "
                  f"{span('cpu_per_gb')} | {span('first_byte')} | {span('busy')} | {span('floor')} |"
                  + (f" {len(rs) - len(good)} failed" if len(good) < len(rs) else "")
                  + (f" {capped} stopped at the {a.cap:g} s cap" if capped else ""))
        if "tou" in per:
            for w in per:
                if w == "tou" or w not in med or "tou" not in med:
                    continue
                wins = sum(1 for t, o in zip(per["tou"], per[w]) if "error" not in t and "error" not in o
                           and t["mbps"] > o["mbps"])
                print(f"\ntou / {CONTENDERS.get(w, w)}: {med['tou'] / med[w]:.2f}x (medians); tou faster in "
                      f"{wins} of {a.rounds} rounds")
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
