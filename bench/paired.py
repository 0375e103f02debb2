"""Paired comparison of two checkouts on one emulated WAN cell: is a change a gain?

Medians of separate runs move by a few percent between sets on this machine, more
than most engine changes. This runs both versions on the same seed (the same loss
pattern), seed after seed, alternating which goes first, and prints each pair and
both medians::

    git worktree add /tmp/before HEAD~1
    python bench/paired.py /tmp/before --cell 100:2 --seeds 6
    python bench/paired.py /tmp/before --cell 20:1 --who bbr   # any wan.py contender

The checkout this script lives in is "after". Each run is one
``wan.run_cell`` of that checkout, in its own process (bounded like every WAN
run); needs root, like ``wan.py``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent

_RUN = """
import json, sys
sys.path.insert(0, {bench!r})
import wan
print("RESULT", json.dumps(wan.run_cell({rtt}, {loss}, {who!r}, {seconds}, seed={seed})))
"""


def run(root: Path, rtt: float, loss: float, who: str, seconds: float, seed: int) -> dict:
    code = _RUN.format(bench=str(root / "bench"), rtt=rtt, loss=loss, who=who, seconds=seconds, seed=seed)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=seconds + 120).stdout
    line = next((ln for ln in out.splitlines() if ln.startswith("RESULT ")), None)
    return json.loads(line[7:]) if line else {"error": out[-300:] or "no result"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("before", type=Path, help="the other checkout (e.g. a git worktree)")
    ap.add_argument("--cell", default="100:2", help="RTT_MS:LOSS_PCT (default 100:2)")
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--who", default="tou", help="contender (default tou)")
    a = ap.parse_args(argv)
    if not (a.before / "bench" / "wan.py").exists():
        ap.error(f"{a.before} is not a tou checkout (no bench/wan.py)")
    rtt, loss = (float(x) for x in a.cell.split(":"))
    sides = {"before": a.before.resolve(), "after": HERE}
    got: dict[str, list[float]] = {"before": [], "after": []}
    wins = 0
    for seed in range(1, a.seeds + 1):
        order = ("before", "after") if seed % 2 else ("after", "before")
        pair = {}
        for side in order:
            res = run(sides[side], rtt, loss, a.who, a.seconds, seed)
            pair[side] = res
            if "error" not in res:
                got[side].append(res["mbps"])
        shown = "  ".join(
            f"{s} {pair[s]['mbps']:6.2f} Mbit/s retx {100 * (pair[s].get('retrans_share') or 0):4.2f} %"
            if "error" not in pair[s] else f"{s} ERROR {pair[s]['error'][:80]}" for s in ("before", "after"))
        if all("error" not in pair[s] for s in pair):
            wins += pair["after"]["mbps"] > pair["before"]["mbps"]
        print(f"seed {seed}: {shown}", flush=True)
    for side in ("before", "after"):
        v = got[side]
        print(f"{side}: median {statistics.median(v):.2f} Mbit/s over {len(v)} runs" if v else f"{side}: no runs")
    print(f"after is better in {wins} of {a.seeds} pairs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
