"""The whole comparison suite in one command; writes a dated section at the top of bench/RESULTS.md.

    python bench/run_all.py --quick          # ~10 minutes: WAN subset, shorter transfers
    python bench/run_all.py                  # everything; the WAN matrix alone is ~25 minutes per run
    nohup python bench/run_all.py > /tmp/tou-bench.log 2>&1 &     # in the background

It installs nothing: it checks for iperf3, kcptun and aioquic and says how to
install what is missing (a missing tool's rows read "not measured"). The WAN,
first-byte parts need root (network namespaces, TUN devices). What it runs:

1. loopback bulk, one connection (``loopback.bulk_suite``), medians of
   ``--runs`` interleaved rounds, and one cProfile'd tou transfer (step "profile",
   which also profiles tou's 64-byte round trips for target 5);
2. the emulated WAN matrix (``wan.matrix``) and the emulator's own ceiling;
3. time to first byte of a forwarded connection at 100 ms RTT (``first_byte``);
4. 1000 concurrent forwarded connections (``many_conns``);
5. 64-byte round trips on loopback (``loopback.latency_suite``).

Raw figures go to bench/last_run.json; ``--no-write`` leaves RESULTS.md alone.
Network traffic stays on loopback and inside the namespaces the suite makes;
every child is killed by PID and every namespace deleted when a step ends.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import first_byte  # noqa: E402
import loopback  # noqa: E402
import many_conns  # noqa: E402
import wan  # noqa: E402
from harness import BENCH, machine, missing_tools  # noqa: E402

RESULTS = BENCH / "RESULTS.md"
RAW = BENCH / "last_run.json"
STEPS = ["bulk", "profile", "wan", "first_byte", "conns", "latency"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def step(name: str, fn: Callable[[], Any]) -> Any:
    log(f"== {name}")
    t0 = time.monotonic()
    try:
        res = fn()
    except Exception as exc:
        traceback.print_exc()
        res = {"error": f"{type(exc).__name__}: {exc}"}
    log(f"== {name} done in {time.monotonic() - t0:.0f} s")
    return res


# ---------------------------------------------------------------- formatting
def f1(x: float | None, unit: str = "") -> str:
    return "—" if x is None else f"{x:,.1f}{unit}"


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f} %"


def met(ok: bool | None) -> str:
    return "not measured" if ok is None else ("**met**" if ok else "**not met**")


def why(r: Any) -> str:
    """Why a part has no figures: not run this time, or its error."""
    if not r:
        return "not run in this invocation"
    return f"not measured: {r.get('error') if isinstance(r, dict) else r}"


def bulk_table(b: dict) -> list[str]:
    rows = ["| contender | Mbit/s (median) | runs (Mbit/s) | CPU s per GB (both ends) | vs tou |", "|---|---|---|---|---|"]
    tou = b.get("tou (DTLS, shared secret)", {}).get("mbps")
    for name, r in b.items():
        if "error" in r:
            rows.append(f"| {name} | not measured: {r['error'][:120]} | | | |")
            continue
        ratio = f"{tou / r['mbps']:.2f}x" if tou and r["mbps"] else "—"
        rows.append(f"| {name} | {f1(r['mbps'])} | {', '.join(map(str, r['all_mbps']))} | "
                    f"{f1(r['cpu_per_gb'])} | tou is {ratio} |")
    return rows


def wan_table(w: dict, cells: list, contenders: list) -> list[str]:
    head = "| RTT / loss | " + " | ".join(wan.LABELS[c] for c in contenders) + " |"
    rows = [head, "|---|" + "---|" * len(contenders)]
    for rtt, loss in cells:
        cols = []
        for c in contenders:
            r = w.get(f"{rtt:g}/{loss:g}/{c}")
            if r is None:
                cols.append("—")
            elif "error" in r:
                cols.append("n/a: " + r["error"][:60])
            else:
                wire = r.get("wire_per_goodput")
                cols.append(f"{r['mbps']:.2f} Mbit/s; retx {pct(r.get('retrans_share'))}; "
                            f"wire {wire:.2f}x" if wire else f"{r['mbps']:.2f} Mbit/s; retx {pct(r.get('retrans_share'))}")
        rows.append(f"| {rtt:g} ms / {loss:g} % | " + " | ".join(cols) + " |")
    return rows


def section(data: dict) -> str:
    quick = data["quick"]
    L: list[str] = []
    cmd = data.get("argv") or ("--quick" if quick else "")
    L.append(f"## {data['date']} — comparison suite (`python bench/run_all.py {cmd}`, issue 6)".replace(" `,", "`,"))
    L.append("")
    L.append(f"Machine: {data['machine']}. Load average at start: {data['loadavg']}. "
             f"Run took {data['minutes']:.0f} min. Steps run: {', '.join(data['steps'])}.")
    if data["missing"]:
        L.append("Missing tools (rows not measured): " +
                 "; ".join(f"{k} (`{v}`)" for k, v in data["missing"].items()) + ".")
    L.append("")
    res = data["results"]
    b = res.get("bulk") or {}
    w = res.get("wan") or {}
    fb = res.get("first_byte") or {}
    mc = res.get("conns") or {}
    lat = res.get("latency") or {}
    prof = res.get("profile") or {}
    lprof = res.get("latency_profile") or {}

    # ---- targets
    tou_bulk = b.get("tou (DTLS, shared secret)", {}).get("mbps")
    kcp_tuned = b.get("kcptun tuned", {}).get("mbps")
    t1_ok = None if tou_bulk is None else (tou_bulk >= 1500 and (kcp_tuned is None or tou_bulk >= 5 * kcp_tuned))
    c_tou = w.get("100/2/tou", {})
    c_bbr = w.get("100/2/bbr", {})
    c_cub = w.get("100/2/cubic", {})
    t2_ok = None
    t2_val = "not measured"
    if "mbps" in c_tou:
        checks = [c_tou["mbps"] >= c_bbr.get("mbps", float("inf")) if "mbps" in c_bbr else False,
                  c_tou["mbps"] >= 50 * c_cub["mbps"] if "mbps" in c_cub else False,
                  (c_tou.get("retrans_share") or 1) <= 0.02 + 0.03]
        t2_ok = all(checks)
        t2_val = (f"tou {c_tou['mbps']:.2f} Mbit/s vs BBR {f1(c_bbr.get('mbps'))}, CUBIC {c_cub.get('mbps', 0):.2f} "
                  f"(tou = {c_tou['mbps'] / c_cub['mbps']:.1f}x CUBIC); tou retransmitted {pct(c_tou.get('retrans_share'))}"
                  if c_cub.get("mbps") else f"tou {c_tou['mbps']:.2f} Mbit/s")
    med = fb.get("median_ms", {}) if isinstance(fb, dict) else {}
    tfo_ms = med.get("tou fast open warm")
    t3_ok = None if tfo_ms is None else tfo_ms <= 0.5 * 100 + 10
    t3_val = f1(tfo_ms, " ms")
    rss = mc.get("total_peak_mb")
    t4_ok = None if rss is None or mc.get("open") != mc.get("connections") else rss <= 300
    tou_rtt = lat.get(loopback.TOU_ROW, {}).get("median_us")          # as it comes: what target 5 is
    tou_off = lat.get(loopback.TOU_OFF_ROW, {}).get("median_us")
    tou_busy = lat.get(loopback.TOU_BUSY_ROW, {}).get("median_us")
    t5_ok = None if tou_rtt is None else tou_rtt <= 150
    ran = set(data["steps"])
    T: list[str] = []      # target rows of the parts that ran
    lim1 = (f"cProfile, sender: {prof.get('connect_top', '—')}; receiver: {prof.get('listen_top', '—')}"
            if prof else "not profiled")
    if "bulk" in ran:
        T.append(f"| 1 | ≥ 1.5 Gbit/s encrypted on loopback and ≥ 5x kcptun tuned | "
             f"{f1(tou_bulk, ' Mbit/s')}; kcptun tuned {f1(kcp_tuned, ' Mbit/s')} "
             f"({'—' if not (tou_bulk and kcp_tuned) else f'{tou_bulk / kcp_tuned:.1f}x'}) | {met(t1_ok)} | {lim1} |")
    lim2 = (f"tou's congestion control here is `{c_tou.get('cc')}`: a loss-based window shrinks at every random "
            "loss, as kernel CUBIC's does; a model-based controller (BBR) keeps sending at the measured rate"
            if c_tou.get("cc") and c_tou.get("cc") != "bbr" else "see the WAN table")
    if "wan" in ran and "100/2/tou" in w:
        T.append(f"| 2 | 100 Mbit/s, 100 ms, 2 % loss: ≥ kernel BBR, ≥ 50x kernel CUBIC, retransmitted ≤ loss + 3 points | "
             f"{t2_val} | {met(t2_ok)} | {lim2} |")
    lim3 = (f"the request and the app's first bytes ride in the SYN and the client does not wait for the "
            f"status: {tfo_ms:.1f} ms = {tfo_ms / 100:.2f} RTT, of which up to 10 ms is the client's wait for the "
            f"app's first bytes; warm without Fast Open (`--no-fast-open`) {f1(med.get('tou warm'), ' ms')} (the "
            f"SYN's round trip first); cold {f1(med.get('tou fast open cold'), ' ms')} (session handshake, cookie "
            f"request); direct kernel TCP {f1(med.get('direct kernel TCP'), ' ms')}" if tfo_ms else "—")
    if "first_byte" in ran:
        T.append(f"| 3 | warm session with Fast Open: first byte ≤ 0.5 RTT + 10 ms (60 ms at 100 ms) | {t3_val} | "
             f"{met(t3_ok)} | {lim3} |")
    per_conn = None
    if rss is not None and isinstance(mc.get("idle_rss_mb"), dict):
        idle = sum(mc["idle_rss_mb"].values())
        per_conn = (mc["client_rss_mb"] + mc["server_rss_mb"] - idle) * 1024 / max(1, mc["connections"])
    if rss is None:
        t4_val = "—"
    else:
        t4_val = f"{rss:.0f} MB peak (both tou processes; {mc.get('open')} of {mc.get('connections')} open)"
    t4_lim = "—"
    if per_conn is not None:
        idle_mb = sum(mc["idle_rss_mb"].values())
        t4_lim = (f"about {per_conn:.0f} kB per connection over both processes, on top of ~{idle_mb:.0f} MB "
                  "of interpreter and modules")
    if "conns" in ran:
        T.append(f"| 4 | 1000 connections within 300 MB RSS | {t4_val} | {met(t4_ok)} | {t4_lim} |")
    direct = lat.get("direct TCP", {}).get("median_us")
    def floor(kind: str, busy: bool) -> str:
        key = f"floor: two {kind} relays" + (f", busy-poll {loopback.BUSY_POLL_US} µs" if busy else "")
        return f1(lat.get(key, {}).get("median_us"), " µs")

    lim5 = "—"
    if tou_rtt and direct:
        lim5 = (f"direct TCP {f1(direct, ' µs')}. The layout alone, two TCP↔UDP relays doing no tunnel work "
                f"(`bench/relay_floor.py` and `.c`): Python {floor('bare Python', False)}, C {floor('C', False)} "
                f"blocking in `epoll_wait`; busy-polling, Python {floor('bare Python', True)}, C "
                f"{floor('C', True)}. Blocked, each of the layout's extra hops pays a wake-up, which busy "
                "polling removes. What stays is tou's Python work per message in each process (event-loop "
                "turn, TCP engine receive and send, seal/open, codec; four passes per round trip")
        cpu = lat.get(loopback.TOU_OFF_ROW, {}).get("cpu_us_per_rt")
        lim5 += f", {cpu:.0f} µs of CPU per round trip in the two processes without busy polling)" if cpu else ")"
        if lprof.get("share"):
            lim5 += (". Where that CPU goes, cProfile of both processes: " +
                     ", ".join(f"{name} {share:.0%}" for name, share in lprof["share"].items()))
    if "latency" in ran:
        shown = (f1(tou_rtt, ' µs') + " as it comes (adaptive polling)"
                 + (f"; {tou_off:.0f} µs with `--busy-poll 0`" if tou_off else "")
                 + (f"; {tou_busy:.0f} µs with `--busy-poll {loopback.BUSY_POLL_US}`" if tou_busy else ""))
        T.append(f"| 5 | 64-byte round trip on loopback: median ≤ 150 µs | {shown} | {met(t5_ok)} | {lim5} |")
    if T:
        L.extend(["### Targets", "", "| # | target | measured | result | what limits it |", "|---|---|---|---|---|", *T, ""])

    # ---- 1. bulk
    L.append("### 1. Loopback bulk, one connection")
    L.append("")
    if b and "error" not in b:
        L.extend(bulk_table(b))
        L.append("")
        L.append("tou: `head -c N /dev/zero | tou connect` -> `tou listen -d` with a shared secret (DTLS, "
                 "AES-128-GCM records), Mbit/s from first to last byte at the receiver; kernel TCP and kcptun: "
                 "iperf3 (through kcptun-client/-server for kcptun; kcptun's CPU only); aioquic: "
                 "`bench/quic_peer.py`, one stream. CPU = user + system of both ends.")
    else:
        L.append(why(b))
    L.append("")
    if prof and "error" not in prof:
        L.append(f"Profile of one tou transfer under cProfile ({prof.get('result', '')}), own time share:")
        L.append("")
        L.append(f"- sender (`tou connect`): {prof.get('connect_top')}")
        L.append(f"- receiver (`tou listen`): {prof.get('listen_top')}")
        L.append("")

    # ---- 2. WAN
    L.append("### 2. Emulated WAN (100 Mbit/s bottleneck, drop-tail queue of one BDP, loss on both directions)")
    L.append("")
    ceil = res.get("emulator_ceiling") or {}
    if "mbps" in ceil:
        L.append("The emulator is one Python process moving IP packets between the two TUN devices through "
                 "`toucli.link.Link` (one per direction) on the real clock. ")
        L.append(f"Emulator ceiling (no delay, loss or rate limit, kernel TCP): {ceil['mbps']:.0f} Mbit/s, "
                 f"{ceil.get('packets_per_s', 0):,.0f} packets/s through it, so 100 Mbit/s does not strain it. "
                 f"Worst delivery lateness seen in the matrix: {max((r.get('emulator_max_late_ms', 0) for r in w.values() if isinstance(r, dict)), default=0):.1f} ms "
                 "(the machine has 2 cores shared by the emulator and both ends).")
        L.append("")
    if w and "error" not in w:
        cells = data["wan_cells"]
        conts = data["wan_contenders"]
        L.append(f"{data['wan_seconds']:g} s per run, {data['wan_runs']} run(s) per cell (median). Each cell: goodput; "
                 "retransmitted share of bytes sent (kernel: iperf3 retransmits x MSS; kcptun: RetransSegs/OutSegs; "
                 "tou: bytes_retrans from --stats-json); wire = bytes the sender put on the link per byte delivered "
                 "(headers, FEC, retransmissions).")
        L.append("")
        L.extend(wan_table(w, cells, conts))
    else:
        L.append(why(w))
    L.append("")

    # ---- 3. first byte
    L.append("### 3. Time to first byte of a new forwarded connection, 100 ms RTT")
    L.append("")
    if med:
        L.append("\"tou\" rows: `tou forward --no-fast-open`; \"tou fast open\" rows: `tou forward` as it "
                 "comes (Fast Open on; a cold session has no cookie yet).")
        L.append("")
        L.append("| path | median ms | samples (ms) |")
        L.append("|---|---|---|")
        for k in ("direct kernel TCP", "tou cold", "tou warm", "tou fast open cold", "tou fast open warm"):
            v = fb.get(k)
            if isinstance(v, list):
                L.append(f"| {k} | {f1(med.get(k))} | {', '.join(f'{x * 1000:.1f}' for x in v if x is not None)} |")
            else:
                L.append(f"| {k} | {v or 'not available'} | |")
    else:
        L.append(why(fb))
    L.append("")

    # ---- 4. many
    L.append("### 4. 1000 concurrent forwarded connections (loopback, 1 KiB echoed on each, then held open)")
    L.append("")
    if "error" not in mc and mc:
        L.append(f"{mc['open']} of {mc['connections']} open ({mc['errors']} errors) in {mc['open_seconds']:.2f} s. "
                 f"RSS with all open: client {mc['client_rss_mb']:.0f} MB, server {mc['server_rss_mb']:.0f} MB "
                 f"(peaks {mc['client_peak_mb']:.0f} / {mc['server_peak_mb']:.0f} MB; idle "
                 f"{mc['idle_rss_mb']['client_rss_mb']:.0f} / {mc['idle_rss_mb']['server_rss_mb']:.0f} MB). "
                 f"CPU since start: client {mc['client_cpu_s']:.2f} s, server {mc['server_cpu_s']:.2f} s.")
    else:
        L.append(why(mc))
    L.append("")

    # ---- 5. latency
    if "latency" in ran:
        L.append("### 5. Interactive latency: 64-byte round trips on loopback (1000 after 100 warm-up)")
        L.append("")
        L.append("Every path measured in each of the rounds, round-robin; median µs and p99 µs are the "
                 "medians over the rounds.")
        L.append("")
        L.append("| path | median µs | p99 µs | vs direct | each round's median µs |")
        L.append("|---|---|---|---|---|")
        for k, r in lat.items():
            if not isinstance(r, dict) or "median_us" not in r:
                L.append(f"| {k} | not measured: {r.get('error') if isinstance(r, dict) else r} | | | |")
                continue
            vs = f"{r['median_us'] / direct:.1f}x" if direct else "—"
            each = ", ".join(str(v) for v in r.get("run_medians_us", []))
            L.append(f"| {k} | {r['median_us']:.0f} | {r['p99_us']:.0f} | {vs} | {each} |")
        L.append("")
        if lprof.get("share"):
            L.append(f"Where tou's CPU goes per round trip (`loopback.profile_latency`): both `tou forward` processes "
                     f"under cProfile, blocking; a ping-pong of 1 round trip subtracted from one of "
                     f"{lprof['round_trips'] + 1}, so start-up is left out. {lprof['profiled_us_per_rt']:.0f} µs of "
                     f"own time per round trip under the profiler ({lprof['cpu_us_per_rt_profiled']:.0f} µs of CPU); "
                     "the profiler adds a fixed cost to every call, which weighs on short Python functions far "
                     "more than on system calls, so the shares matter, not the µs.")
            L.append("")
            L.append("| part | share |")
            L.append("|---|---|")
            L.extend(f"| {name} | {share:.0%} |" for name, share in lprof["share"].items())
            L.append("")
            L.append("Top functions by own time, µs per round trip under the profiler: " +
                     ", ".join(f"`{name}` {us}" for name, us in lprof.get("top_us_per_rt", {}).items()) + ".")
            L.append("")
        elif lprof:
            L.append(f"Round-trip profile: {why(lprof)}")
            L.append("")
    L.append("Not measured by this suite: aioquic on the emulated WAN, kcptun with 1000 connections.")
    L.append("")
    # leave out the parts this invocation did not run
    chunks = "\n".join(L).split("\n### ")
    return "\n### ".join(c for c in chunks if "not run in this invocation" not in c)


def write_results(text: str) -> None:
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\n"
    i = old.find("\n## ")
    if i < 0:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        new = old[:i + 1] + text + "\n" + old[i + 1:]
    RESULTS.write_text(new)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="WAN subset, shorter transfers, fewer runs")
    ap.add_argument("--runs", type=int, help="bulk rounds (default 3 quick, 5 full)")
    ap.add_argument("--wan-seconds", type=float, help="seconds per WAN run (default 10 quick, 20 full)")
    ap.add_argument("--wan-runs", type=int, default=1, help="runs per WAN cell (median)")
    ap.add_argument("--wan-cells", help="comma list of RTT_MS:LOSS_PCT instead of the matrix")
    ap.add_argument("--only", help=f"comma list of steps: {','.join(STEPS)}")
    ap.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    ap.add_argument("--from-json", metavar="FILE", help="only render a saved run (bench/last_run.json)")
    a = ap.parse_args()
    if a.from_json:
        text = section(json.loads(Path(a.from_json).read_text()))
        print(text)
        if not a.no_write:
            write_results(text)
        return
    steps = a.only.split(",") if a.only else STEPS
    missing = missing_tools()
    for tool, how in missing.items():
        log(f"missing: {tool} -- install with: {how}")
    root = os.geteuid() == 0
    t0 = time.monotonic()
    data: dict[str, Any] = {
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "machine": machine(),
        "loadavg": " ".join(Path("/proc/loadavg").read_text().split()[:3]), "quick": a.quick,
        "missing": missing, "steps": steps, "results": {}, "argv": " ".join(sys.argv[1:]),
        "wan_cells": ([tuple(float(x) for x in c.split(":")) for c in a.wan_cells.split(",")] if a.wan_cells
                      else wan.QUICK_CELLS if a.quick else wan.FULL_CELLS),
        "wan_contenders": [c for c in (wan.QUICK_CONTENDERS if a.quick else wan.CONTENDERS)
                           if not (c.startswith("kcptun") and "kcptun" in missing)],
        "wan_seconds": a.wan_seconds or (10 if a.quick else 20), "wan_runs": a.wan_runs,
    }
    R = data["results"]
    runs = a.runs or (3 if a.quick else 5)
    if "bulk" in steps:
        R["bulk"] = step("1. loopback bulk", lambda: loopback.bulk_suite(a.quick, runs, log=log))
    if "profile" in steps:
        R["profile"] = step("1b. tou bulk under cProfile", lambda: loopback.profile_tou(1_000_000_000))
        for side in ("connect", "listen"):
            print(R["profile"].get(side, ""))
        R["latency_profile"] = step("5b. tou round trips under cProfile", loopback.profile_latency)
        log(f"round-trip profile: {R['latency_profile']}")
    if "wan" in steps:
        if not root or "ip" in missing:
            R["wan"] = {"error": "needs root and iproute2 (network namespaces, TUN)"}
        else:
            R["emulator_ceiling"] = step("2a. emulator ceiling", lambda: wan.emulator_ceiling(3))
            log(f"emulator ceiling: {R['emulator_ceiling']}")
            R["wan"] = step("2. emulated WAN", lambda: wan.matrix(data["wan_cells"], data["wan_contenders"],
                                                                  data["wan_seconds"], a.wan_runs, log=log))
    if "first_byte" in steps:
        R["first_byte"] = ({"error": "needs root (network namespaces, TUN)"} if not root else
                           step("3. first byte at 100 ms RTT", lambda: first_byte.measure(3 if a.quick else 5, log=log)))
    if "conns" in steps:
        R["conns"] = step("4. 1000 forwarded connections", lambda: many_conns.measure(1000, 1024, log=log))
    if "latency" in steps:
        R["latency"] = step("5. 64-byte round trips", lambda: loopback.latency_suite(1000, log=log))
    data["minutes"] = (time.monotonic() - t0) / 60
    RAW.write_text(json.dumps(data, indent=1, default=str))
    text = section(data)
    print(text)
    if not a.no_write:
        write_results(text)
        log(f"wrote {RESULTS} (and {RAW})")


if __name__ == "__main__":
    main()
