"""Emulated WAN: kernel TCP (CUBIC, BBR), kcptun and tou over the same emulated link.

Each run gets a fresh :class:`wanlink.WanPath` (two namespaces, the emulator
process between them; RTT, loss per packet and direction, 100 Mbit/s, drop-tail
queue of one BDP) and moves data A -> B for ``--seconds``:

* **kernel CUBIC / BBR**: ``iperf3 -C cubic|bbr -t SECS``; goodput from the
  receiver, retransmitted share = retransmits x MSS / bytes sent (iperf3's
  sender counters, the kernel's ``tcpi_total_retrans``).
* **kcptun** (tuned / default): iperf3 through ``kcptun-client`` (namespace A)
  -> ``kcptun-server`` (namespace B); retransmitted share = RetransSegs /
  OutSegs from the client's ``--snmplog``.
* **tou** (and **tou --cc bbr** when the CLI has ``--cc``): ``tou connect`` (stdin from /dev/zero) -> ``tou listen -d`` (DTLS,
  shared secret); goodput = bytes the listener wrote in the ``SECS`` after its
  first byte; retransmitted share = ``bytes_retrans / (bytes_sent +
  bytes_retrans)`` from the sender's ``--stats-json``.

Every row also has ``wire/goodput``: bytes the sender side offered to the
emulated link (A -> B, IP packets, headers, FEC and retransmissions included)
per byte the receiving application got over the whole run, the cost of moving one useful byte on this path for each
contender. Each run is bounded (``SECS`` + 40 s); the emulator's CPU time and
its worst delivery lateness are recorded so its own ceiling shows.

    python bench/wan.py --quick                 # 4 cells, 10 s each
    python bench/wan.py --seconds 20            # the full 3 x 4 matrix
    python bench/wan.py --cells 100:2 --contenders tou,bbr
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from contenders import iperf3_client, iperf3_figures, iperf3_server, kcptun  # noqa: E402
from harness import TOU, PipeSink, Procs, tou_env  # noqa: E402
from wanlink import B_ADDR, WanPath  # noqa: E402

RATE = 100e6
FULL_CELLS = [(rtt, loss) for rtt in (20, 100, 300) for loss in (0, 1, 2, 5)]
QUICK_CELLS = [(20, 0), (100, 0), (100, 2), (300, 1)]
CONTENDERS = ["cubic", "bbr", "kcptun-tuned", "tou", "tou-cubic"]
QUICK_CONTENDERS = ["cubic", "bbr", "kcptun-tuned", "tou"]
LABELS = {"cubic": "kernel CUBIC", "bbr": "kernel BBR", "kcptun-tuned": "kcptun tuned",
          "kcptun-default": "kcptun default", "tou": "tou (BBR)", "tou-cubic": "tou --cc cubic",
          "tou-bbr": "tou --cc bbr"}   # kcptun-default and tou-bbr: saved runs of older suites


def bbr_available() -> bool:
    try:
        return "bbr" in Path("/proc/sys/net/ipv4/tcp_available_congestion_control").read_text().split()
    except OSError:
        return False


def _wire(path: WanPath, goodput_bytes: float) -> float | None:
    st = path.stats
    if not st or not goodput_bytes:
        return None
    return st["a_to_b"]["sent_bytes"] / goodput_bytes


def run_kernel(path: WanPath, cc: str, seconds: float) -> dict[str, Any]:
    with Procs() as ps:
        srv = iperf3_server(ps, 5201, netns=path.ns_b)
        cli, j = iperf3_client(ps, B_ADDR, 5201, seconds=seconds, cc=cc, netns=path.ns_a, timeout=seconds + 40)
        ps.reap(srv, 5)
        return iperf3_figures(j)


def run_kcptun(path: WanPath, mode: str, seconds: float) -> dict[str, Any]:
    snmp = Path(tempfile.mkdtemp(prefix="toubench-kcp-")) / "client.csv"
    with Procs() as ps:
        iperf3_server(ps, 5201, netns=path.ns_b)
        kc, ks = kcptun(ps, mode, server_listen=f"{B_ADDR}:29900", target="127.0.0.1:5201",
                        client_listen="127.0.0.1:12948", remote=f"{B_ADDR}:29900",
                        netns_client=path.ns_a, netns_server=path.ns_b,
                        client_extra=["--snmplog", str(snmp), "--snmpperiod", "1"])
        time.sleep(0.3)
        cli, j = iperf3_client(ps, "127.0.0.1", 12948, seconds=seconds, netns=path.ns_a, timeout=seconds + 40)
        time.sleep(1.1)         # one more snmp period
        f = iperf3_figures(j)
        f["retrans_share"] = None
        try:
            lines = snmp.read_text().splitlines()
            head, last = lines[0].split(","), lines[-1].split(",")
            row = dict(zip(head, map(int, last)))
            if row.get("OutSegs"):
                f["retrans_share"] = row["RetransSegs"] / row["OutSegs"]
        except (OSError, IndexError, ValueError):
            pass
        snmp.unlink(missing_ok=True)
        snmp.parent.rmdir()
        return f


def run_tou(path: WanPath, seconds: float, extra: list[str] | None = None) -> dict[str, Any]:
    env = tou_env()
    sj = Path(tempfile.mkdtemp(prefix="toubench-wan-")) / "connect.json"
    with Procs() as ps:
        lis = ps.start("tou listen", [*TOU, "listen", "-d", "--quiet", *(extra or []), B_ADDR, "9000"],
                       netns=path.ns_b, env=env, stdout=subprocess.PIPE)
        sink = PipeSink(lis.popen.stdout, stop_after=seconds)
        sink.start()
        time.sleep(1.0)
        with open("/dev/zero", "rb") as zero:
            con = ps.start("tou connect", [*TOU, "connect", "--quiet", "--stats-json", str(sj),
                                           "--stats-interval", "0.5", *(extra or []), B_ADDR, "9000"],
                           netns=path.ns_a, env=env, stdin=zero)
        t0 = time.monotonic()
        limit = seconds + 40
        while time.monotonic() - t0 < limit and sink.counted_at_stop is None and con.popen.poll() is None:
            time.sleep(0.2)
        got = sink.counted_at_stop
        row: dict[str, Any] = {}
        try:
            last = json.loads(sj.read_text().splitlines()[-1])
            row = (last.get("connections") or [{}])[0]
        except (OSError, IndexError, ValueError):
            pass
        err = ps.stderr_tail(con) + ps.stderr_tail(lis)
        ps.stop(con, signal.SIGKILL)      # no graceful drain: the sender stops now, like iperf3 -t
        time.sleep(0.5)
        ps.stop(lis)
        sink.join(2)
        app_bytes = sink.bytes
        sj.unlink(missing_ok=True)
        sj.parent.rmdir()
    if got is None:
        # the transfer did not last SECS: goodput over what it did
        secs = sink.seconds()
        if not sink.bytes or secs <= 0:
            return {"error": f"tou moved nothing: {err.strip()[-300:]}"}
        got, seconds = sink.bytes, secs
    sent = row.get("bytes_sent") or 0
    retx = row.get("bytes_retrans") or 0
    return {"mbps": got * 8 / seconds / 1e6, "bytes": app_bytes,
            "retrans_share": retx / (sent + retx) if sent + retx else None,
            "cc": row.get("congestion_control")}


def run_cell(rtt_ms: float, loss_pct: float, contender: str, seconds: float, seed: int = 1) -> dict[str, Any]:
    """One contender on one cell, on a fresh emulated path."""
    if contender == "bbr" and not bbr_available():
        return {"error": "tcp_bbr not available in this kernel (modprobe tcp_bbr)"}
    with WanPath(rtt_ms / 1000, loss_pct / 100, RATE, seed=seed) as path:
        c0 = time.monotonic()
        try:
            if contender in ("cubic", "bbr"):
                res = run_kernel(path, contender, seconds)
            elif contender.startswith("kcptun-"):
                res = run_kcptun(path, contender.split("-", 1)[1], seconds)
            elif contender == "tou":
                res = run_tou(path, seconds)
            elif contender == "tou-cubic":
                res = run_tou(path, seconds, ["--cc", "cubic"])
            else:
                raise ValueError(contender)
        except Exception as exc:
            res = {"error": f"{type(exc).__name__}: {exc}"}
        emu_cpu = path.emulator_cpu()
        wall = time.monotonic() - c0
    if "error" not in res:
        res["wire_per_goodput"] = _wire(path, res["bytes"])
    st = path.stats or {}
    res["emulator"] = {"cpu_share": emu_cpu / wall if wall else None,
                       "max_lateness_ms": 1000 * st.get("max_lateness", 0.0),
                       "queue_drops": st.get("a_to_b", {}).get("dropped_queue"),
                       "loss_drops": st.get("a_to_b", {}).get("dropped_loss")}
    return res


def emulator_ceiling(seconds: float = 5) -> dict[str, Any]:
    """Kernel TCP through the emulator with no delay, loss or rate limit: what it can carry."""
    with WanPath(0.0, 0.0, None) as path:
        res = run_kernel(path, "cubic", seconds)
        cpu = path.emulator_cpu()
    st = path.stats or {}
    res["emulator_cpu_s"] = cpu
    res["packets_per_s"] = (st.get("a_to_b", {}).get("sent", 0) + st.get("b_to_a", {}).get("sent", 0)) / \
        max(st.get("elapsed", 1.0), 1e-9)
    return res


def matrix(cells: list[tuple[float, float]], contenders: list[str], seconds: float, runs: int = 1,
           log: Callable[[str], None] = print) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for rtt, loss in cells:
        for name in contenders:
            rs = []
            for r in range(runs):
                res = run_cell(rtt, loss, name, seconds, seed=r + 1)
                rs.append(res)
                shown = (f"{res['mbps']:7.2f} Mbit/s, retx {_pct(res.get('retrans_share'))}, "
                         f"wire/goodput {res.get('wire_per_goodput') or 0:.3f}" if "error" not in res
                         else "ERROR " + res["error"][:160])
                log(f"  WAN {rtt:3g} ms {loss:g}% {LABELS[name]:15s} run {r + 1}: {shown}; emulator "
                    f"{100 * (res['emulator']['cpu_share'] or 0):.0f}% CPU, max late "
                    f"{res['emulator']['max_lateness_ms']:.1f} ms")
            out[f"{rtt:g}/{loss:g}/{name}"] = _merge(rs)
    return out


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def _merge(rs: list[dict]) -> dict[str, Any]:
    from harness import median

    good = [r for r in rs if "error" not in r]
    if not good:
        return rs[-1]
    return {"mbps": median([r["mbps"] for r in good]),
            "retrans_share": median([r.get("retrans_share") for r in good]),
            "wire_per_goodput": median([r.get("wire_per_goodput") for r in good]),
            "runs": len(good), "all_mbps": [round(r["mbps"], 2) for r in good],
            "emulator_cpu_share": max((r["emulator"]["cpu_share"] or 0) for r in good),
            "emulator_max_late_ms": max(r["emulator"]["max_lateness_ms"] for r in good),
            "cc": good[0].get("cc")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--cells", help="comma list of RTT_MS:LOSS_PCT (default: the matrix)")
    ap.add_argument("--contenders", help=f"comma list of {','.join(CONTENDERS)}")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("wan.py needs root (network namespaces, TUN devices)")
    cells = ([tuple(float(x) for x in c.split(":")) for c in a.cells.split(",")] if a.cells
             else QUICK_CELLS if a.quick else FULL_CELLS)
    cont = a.contenders.split(",") if a.contenders else QUICK_CONTENDERS if a.quick else CONTENDERS
    seconds = a.seconds or (10 if a.quick else 20)
    print("emulator ceiling:", emulator_ceiling(3))
    res = matrix(cells, cont, seconds, a.runs)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
