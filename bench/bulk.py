"""Bulk transfer as users run it: a pipe into ``tou connect``, ``tou listen`` into a file or a pipe.

Every contender moves the same bytes through the same layout of separate processes
on loopback::

    python bench/gen.py N | SENDER            RECEIVER > out.bin      (sink "file")
                                              RECEIVER | hashing sink (sink "pipe")

``bench/gen.py`` writes N pseudo-random bytes (AES-CTR keystream; its SHA-256 is known
in advance), so order and content are both checked: the file is hashed after the run,
the pipe by the sink as it reads (Python's hashlib, the cost a consumer of the pipe
adds). A run whose SHA-256 differs is reported as a failure, never as a figure.

Contenders (``--only`` picks some):

* ``tou``: ``tou connect 127.0.0.1 P`` into ``tou listen -d 127.0.0.1 P``, DTLS with
  a shared secret, as installed (the ``tou`` script beside this Python);
* ``tou-insecure``: the same with ``--insecure`` (cleartext TOU: what the DTLS part costs);
* ``kcptun``: kcptun tuned (AES, no compression, no FEC, windows 1024) between
  ``tcp_peer.py send`` and ``tcp_peer.py recv`` (netcat-like ends);
* ``tcp``: those two ends over kernel TCP directly (what the source and sink cost);
* ``floor-c``, ``floor-py``: two bare relays (``bulk_floor.c``/``.py``) moving the
  datagrams tou moves (16,433 bytes, GSO/GRO), with no TCP and no encryption: the
  floor of the layout;
* ``demo``: ``tou demo`` (both ends in one process), its own printed goodput.

Figures per run: **goodput** = bytes / (listener exit - connect start), the time a
user waits, start-up included; **steady** = the rate while the receiver wrote the
middle 80 % of the bytes (from ``/proc/PID/io``, sampled every 20 ms); **CPU s/GB** =
user + system seconds of both ends (``wait4``; for kcptun: both kcptun processes and
both netcat-like ends, which is what the two tou processes do) per GB moved. The
source and the sink are not counted (they are the same for everybody); their CPU is
printed apart.

This machine (a VM whose host takes back memory the guest frees, and DAMON paging
out what has been idle for seconds) makes writing a file much dearer when the
page cache needs memory that was freed a while ago. So before each file-sink run
the previous output is deleted and the machine left alone for ``--settle`` seconds:
every file run starts from the same (cold) state. ``sink-alone`` (gen | cat > file)
shows what that sink costs without any network.

    python bench/bulk.py [--runs 5] [--bytes 2000000000] [--sinks file,pipe] [--only tou,kcptun]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from contenders import KCPTUN_KEY, KCPTUN_TUNED  # noqa: E402
from harness import BENCH, PY, Proc, Procs, free_port, machine, tou_env  # noqa: E402

import gen  # noqa: E402

SAMPLE = 0.02
DATAGRAM = 16433          # tou's datagram on loopback: one full DTLS record (docs/PROTOCOL.md §3.3)


def tou_argv() -> list[str]:
    """How a user runs tou: the installed script beside this interpreter (else ``python -m``)."""
    script = Path(PY).parent / "tou"
    return [str(script)] if script.exists() else [PY, "-m", "toucli"]


def user_env() -> dict[str, str]:
    """tou's environment: the benchmark secret, no configuration file; no PYTHONPATH when the
    installed script runs, so it runs the install it belongs to (another checkout's venv too)."""
    env = tou_env()
    if tou_argv()[0] != PY:
        env.pop("PYTHONPATH", None)
    return env


def wait_udp(port: int, timeout: float = 15.0) -> None:
    """Until something is bound to UDP ``port`` (asked of ``ss``, so no datagram is sent)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = subprocess.run(["ss", "-Huan", f"sport = :{port}"], capture_output=True, text=True, timeout=5)
        if r.stdout.strip():
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing bound UDP port {port} within {timeout} s")


def wait_tcp(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, timeout=5)
        if r.stdout.strip():
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on TCP port {port} within {timeout} s")


def written(pid: int) -> int | None:
    """Bytes the process has written so far (``/proc/PID/io`` wchar)."""
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


class Sampler(threading.Thread):
    """Samples what a process has written, every :data:`SAMPLE` s, until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[tuple[float, int]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            n = written(self.pid)
            if n is None:
                break
            self.samples.append((time.monotonic(), n))
            self.halt.wait(SAMPLE)

    def steady_mbps(self, total: int) -> float | None:
        """Rate while the count went from 10 % to 90 % of ``total`` (interpolated)."""
        def when(level: float) -> float | None:
            prev = None
            for t, n in self.samples:
                if n >= level:
                    if prev is None or n == prev[1]:
                        return t
                    return prev[0] + (t - prev[0]) * (level - prev[1]) / (n - prev[1])
                prev = (t, n)
            return None
        a, b = when(0.1 * total), when(0.9 * total)
        if a is None or b is None or b <= a:
            return None
        return 0.8 * total * 8 / (b - a) / 1e6


class HashSink(threading.Thread):
    """Reads a pipe to its end, hashing (SHA-256) and counting."""

    def __init__(self, fd: int) -> None:
        super().__init__(daemon=True)
        self.fd = fd
        self.h = hashlib.sha256()
        self.bytes = 0
        self.cpu = 0.0

    def run(self) -> None:
        t = time.thread_time()
        while True:
            data = os.read(self.fd, 1 << 20)
            if not data:
                break
            self.h.update(data)
            self.bytes += len(data)
        self.cpu = time.thread_time() - t


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


class Layout:
    """One run of gen | SENDER ... RECEIVER > sink, with the timing and checks."""

    def __init__(self, nbytes: int, expect: str, sink: str, workdir: Path, timeout: float) -> None:
        self.nbytes = nbytes
        self.expect = expect
        self.sink = sink
        self.out = workdir / "out.bin"
        self.timeout = timeout

    def run(self, ps: Procs, receiver: tuple[str, list[str], dict | None], ready: Callable[[], None],
            sender: tuple[str, list[str], dict | None], extra: list[Proc] = ()) -> dict[str, Any]:
        """Start the receiver (stdout to the sink), wait for ``ready``, then gen | sender.

        ``extra`` are processes already running (kcptun) whose CPU counts as the tunnel's.
        """
        out_f = None
        sinker = None
        if self.sink == "file":
            out_f = self.out.open("wb")
            rname, rargv, renv = receiver
            rp = ps.start(rname, rargv, env=renv, stdout=out_f)
        else:
            rname, rargv, renv = receiver
            rp = ps.start(rname, rargv, env=renv, stdout=subprocess.PIPE)
            sinker = HashSink(rp.popen.stdout.fileno())
            sinker.start()
        try:
            ready()
            sname, sargv, senv = sender
            t0 = time.monotonic()
            g = ps.start("gen", [PY, str(BENCH / "gen.py"), str(self.nbytes)], stdout=subprocess.PIPE)
            sp = ps.start(sname, sargv, env=senv, stdin=g.popen.stdout)
            g.popen.stdout.close()
            sampler = Sampler(rp.pid)
            sampler.start()
            ok = ps.reap(rp, self.timeout)
            t1 = time.monotonic()
            sampler.halt.set()
            ok = ps.reap(sp, 20) and ok
            ps.reap(g, 10)
        finally:
            if out_f is not None:
                out_f.close()
        if not ok:
            return {"error": f"timed out after {self.timeout:g} s: " + (ps.stderr_tail(sp) + ps.stderr_tail(rp))[-300:]}
        if sp.status or rp.status:
            return {"error": f"exit {sp.status}/{rp.status}: " + (ps.stderr_tail(sp) + ps.stderr_tail(rp))[-300:]}
        if sinker is not None:
            sinker.join(10)
            got, digest, sink_cpu = sinker.bytes, sinker.h.hexdigest(), sinker.cpu
        else:
            got, digest, sink_cpu = self.out.stat().st_size, file_sha256(self.out), 0.0
        if got != self.nbytes or digest != self.expect:
            return {"error": f"DATA MISMATCH: {got} of {self.nbytes} bytes, sha256 {digest[:16]}"}
        cpu = (sp.cpu or 0) + (rp.cpu or 0) + sum(p.cpu_now() for p in extra)
        gb = self.nbytes / 1e9
        return {"mbps": self.nbytes * 8 / (t1 - t0) / 1e6, "steady": sampler.steady_mbps(self.nbytes),
                "cpu_per_gb": cpu / gb, "sender_cpu": sp.cpu, "receiver_cpu": rp.cpu,
                "source_cpu_per_gb": (g.cpu or 0) / gb, "sink_cpu_per_gb": sink_cpu / gb,
                "seconds": t1 - t0}


# ------------------------------------------------------------------ contenders
def run_tou(lay: Layout, insecure: bool = False) -> dict[str, Any]:
    env = user_env()
    flags = ["--quiet"]
    if insecure:
        env.pop("TOU_SECRET")
        flags.append("--insecure")
    port = free_port(kind=2)
    with Procs() as ps:
        return lay.run(ps, ("tou listen", [*tou_argv(), "listen", "-d", *flags, "127.0.0.1", str(port)], env),
                       lambda: wait_udp(port),
                       ("tou connect", [*tou_argv(), "connect", *flags, "127.0.0.1", str(port)], env))


def run_tcp(lay: Layout) -> dict[str, Any]:
    port = free_port()
    with Procs() as ps:
        return lay.run(ps, ("tcp recv", [PY, str(BENCH / "tcp_peer.py"), "recv", str(port)], None),
                       lambda: wait_tcp(port),
                       ("tcp send", [PY, str(BENCH / "tcp_peer.py"), "send", "127.0.0.1", str(port)], None))


def run_kcptun(lay: Layout) -> dict[str, Any]:
    target, kport, lport = free_port(), free_port(kind=2), free_port()
    with Procs() as ps:
        srv = ps.start("kcptun-server", ["kcptun-server", "--quiet", "--key", KCPTUN_KEY, "-l", f"127.0.0.1:{kport}",
                                         "-t", f"127.0.0.1:{target}", *KCPTUN_TUNED])
        cli = ps.start("kcptun-client", ["kcptun-client", "--quiet", "--key", KCPTUN_KEY, "-l", f"127.0.0.1:{lport}",
                                         "-r", f"127.0.0.1:{kport}", *KCPTUN_TUNED])

        def ready() -> None:
            wait_tcp(target)
            wait_tcp(lport)
        return lay.run(ps, ("tcp recv", [PY, str(BENCH / "tcp_peer.py"), "recv", str(target)], None), ready,
                       ("tcp send", [PY, str(BENCH / "tcp_peer.py"), "send", "127.0.0.1", str(lport)], None),
                       extra=[srv, cli])


def run_floor(lay: Layout, prog: list[str]) -> dict[str, Any]:
    a, b = free_port(kind=2), free_port(kind=2)
    with Procs() as ps:
        return lay.run(ps, ("floor recv", [*prog, "recv", str(b), str(a)], None), lambda: wait_udp(b),
                       ("floor send", [*prog, "send", str(a), str(b), str(DATAGRAM)], None))


def run_sink_alone(lay: Layout) -> dict[str, Any]:
    """``gen | cat > out.bin``: the source and the file sink with nothing between."""
    with Procs() as ps, lay.out.open("wb") as out_f:
        t0 = time.monotonic()
        g = ps.start("gen", [PY, str(BENCH / "gen.py"), str(lay.nbytes)], stdout=subprocess.PIPE)
        c = ps.start("cat", ["cat"], stdin=g.popen.stdout, stdout=out_f)
        g.popen.stdout.close()
        sampler = Sampler(c.pid)
        sampler.start()
        ok = ps.reap(c, lay.timeout)
        t1 = time.monotonic()
        sampler.halt.set()
        ps.reap(g, 10)
    if not ok or file_sha256(lay.out) != lay.expect:
        return {"error": "gen | cat > file failed or differs"}
    gb = lay.nbytes / 1e9
    return {"mbps": lay.nbytes * 8 / (t1 - t0) / 1e6, "steady": sampler.steady_mbps(lay.nbytes),
            "cpu_per_gb": (c.cpu or 0) / gb, "source_cpu_per_gb": (g.cpu or 0) / gb, "sink_cpu_per_gb": 0.0}


def run_demo(seconds: float) -> dict[str, Any]:
    with Procs() as ps:
        p = ps.start("tou demo", [*tou_argv(), "demo", "--no-stats", "--seconds", f"{seconds:g}"], env=user_env(),
                     stdout=subprocess.PIPE)
        out = ps.output(p, seconds + 60)
        ps.reap(p, 10)
    text = (out or b"").decode(errors="replace")
    if p.status != 0 or "SHA-256 match" not in text:
        return {"error": f"tou demo exit {p.status}: {text[-200:]}"}
    mbps = float(text.split("goodput ", 1)[1].split(" Mbit/s", 1)[0])
    mb = float(text.split(": ", 1)[1].split(" MB", 1)[0])
    return {"mbps": mbps, "steady": None, "cpu_per_gb": (p.cpu or 0) / (mb / 1e3)}


def build_floor(workdir: Path) -> list[str] | None:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    exe = workdir / "bulk_floor"
    r = subprocess.run([cc, "-O2", "-o", str(exe), str(BENCH / "bulk_floor.c")], capture_output=True, text=True)
    return [str(exe)] if r.returncode == 0 else None


# ------------------------------------------------------------------ report
def summarize(rs: list[dict]) -> dict[str, Any]:
    good = [r for r in rs if "error" not in r]
    out: dict[str, Any] = {"runs": len(good), "failed": len(rs) - len(good),
                           "errors": [r["error"] for r in rs if "error" in r][:3]}
    for key in ("mbps", "steady", "cpu_per_gb", "source_cpu_per_gb", "sink_cpu_per_gb"):
        xs = [r[key] for r in good if r.get(key) is not None]
        if xs:
            out[key] = statistics.median(xs)
            out[key + "_min"], out[key + "_max"] = min(xs), max(xs)
            out[key + "_all"] = [round(x, 1) for x in xs]
    return out


def fmt(s: dict[str, Any], key: str, digits: int = 0) -> str:
    if key not in s:
        return "–"
    return f"{s[key]:,.{digits}f} ({s[key + '_min']:,.{digits}f}–{s[key + '_max']:,.{digits}f})"


def table(results: dict[str, dict[str, Any]], names: list[str]) -> str:
    rows = ["| contender | goodput Mbit/s, median (min–max) | steady Mbit/s | CPU s/GB, both ends | runs |",
            "|---|---|---|---|---|"]
    for name in names:
        s = results.get(name)
        if s is None:
            continue
        runs = f"{s['runs']}" + (f" ({s['failed']} failed: {s['errors'][0][:80]})" if s["failed"] else "")
        rows.append(f"| {name} | {fmt(s, 'mbps')} | {fmt(s, 'steady')} | {fmt(s, 'cpu_per_gb', 2)} | {runs} |")
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--bytes", type=int, default=2_000_000_000, help="bytes per tou and floor run")
    ap.add_argument("--kcptun-bytes", type=int, default=400_000_000, help="bytes per kcptun run (it is slow)")
    ap.add_argument("--sinks", default="file,pipe")
    ap.add_argument("--only", default="tou,tou-insecure,kcptun,tcp,floor-c,floor-py,sink-alone,demo")
    ap.add_argument("--settle", type=float, default=12.0, help="idle seconds before each file-sink run")
    ap.add_argument("--demo-seconds", type=float, default=5.0)
    ap.add_argument("--json", type=Path, help="write the raw runs here")
    a = ap.parse_args()
    only = a.only.split(",")
    sinks = a.sinks.split(",")
    workdir = Path(tempfile.mkdtemp(prefix="toubench-bulk-"))
    print(f"# bulk as users run it, {time.strftime('%Y-%m-%d %H:%M')}\n\n{machine()}; load {os.getloadavg()}; "
          f"tou: {' '.join(tou_argv())}", flush=True)
    try:
        digests = {n: gen.digest(n, 1) for n in {a.bytes, a.kcptun_bytes}}
        floor_c = build_floor(workdir) if "floor-c" in only else None
        plan: list[tuple[str, str, Callable[[Layout], dict]]] = []
        for sink in sinks:
            for name in only:
                fn: Callable[[Layout], dict] | None = {
                    "tou": run_tou, "tou-insecure": lambda lay: run_tou(lay, insecure=True),
                    "kcptun": run_kcptun if shutil.which("kcptun-client") else None, "tcp": run_tcp,
                    "floor-c": (lambda lay: run_floor(lay, floor_c)) if floor_c else None,
                    "floor-py": lambda lay: run_floor(lay, [PY, str(BENCH / "bulk_floor.py")]),
                    "sink-alone": run_sink_alone if sink == "file" else None,
                }.get(name)
                if fn is not None:
                    plan.append((name, sink, fn))
        raw: dict[str, list[dict]] = {}
        for r in range(a.runs):
            for name, sink, fn in plan:
                n = a.kcptun_bytes if name == "kcptun" else a.bytes
                lay = Layout(n, digests[n], sink, workdir, timeout=300)
                if sink == "file":
                    lay.out.unlink(missing_ok=True)
                    time.sleep(a.settle)
                try:
                    res = fn(lay)
                except Exception as exc:                  # one contender failing must not stop the rest
                    res = {"error": f"{type(exc).__name__}: {exc}"}
                lay.out.unlink(missing_ok=True)
                raw.setdefault(f"{name} > {sink}", []).append(res)
                shown = "ERROR " + res["error"][:160] if "error" in res else (
                    f"{res['mbps']:8.1f} Mbit/s, steady {res['steady'] or 0:8.1f}, {res['cpu_per_gb']:5.2f} CPU s/GB")
                print(f"  run {r + 1}/{a.runs} {name + ' > ' + sink:24s} {shown}", flush=True)
            if "demo" in only:
                res = run_demo(a.demo_seconds)
                raw.setdefault("tou demo", []).append(res)
                print(f"  run {r + 1}/{a.runs} tou demo                 "
                      + (f"{res['mbps']:8.1f} Mbit/s, {res['cpu_per_gb']:5.2f} CPU s/GB" if "error" not in res
                         else "ERROR " + res["error"][:160]), flush=True)
        results = {k: summarize(v) for k, v in raw.items()}
        names = [f"{n} > {s}" for s in sinks for n in only] + ["tou demo"]
        print("\n" + table(results, names))
        for k, s in results.items():
            if "source_cpu_per_gb" in s:
                print(f"  {k}: source {s['source_cpu_per_gb']:.2f} CPU s/GB, hashing sink {s.get('sink_cpu_per_gb', 0):.2f}")
        tou_s, kcp_s = results.get("tou > file"), results.get("kcptun > file")
        if tou_s and kcp_s and "mbps" in tou_s and "mbps" in kcp_s:
            print(f"\ntou / kcptun tuned (file sink, goodput medians): {tou_s['mbps'] / kcp_s['mbps']:.1f}x")
        if a.json:
            a.json.write_text(json.dumps({"raw": raw, "summary": results}, indent=1))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
