"""Loopback comparisons: bulk throughput of one connection, and 64-byte round trips.

Bulk (one connection, one direction, all on 127.0.0.1):

* **kernel TCP**: ``iperf3 -t SECS``; CPU = both iperf3 processes.
* **tou**: ``head -c N /dev/zero | tou connect`` to ``tou listen -d`` (DTLS with a
  shared secret); the listener's stdout is read by this process, and Mbit/s is
  bytes / (last byte - first byte). CPU = both tou processes.
* **kcptun** default and tuned: ``iperf3 -t SECS`` through ``kcptun-client`` ->
  ``kcptun-server`` -> iperf3 server; Mbit/s from iperf3's receiver; CPU = both
  kcptun processes (iperf3 is the application there, not counted).
* **aioquic**: ``bench/quic_peer.py``, one stream of N bytes; CPU = both processes.

CPU seconds per GB = (user + system seconds of the counted processes, from
``wait4``) / GB moved. Each contender runs ``--runs`` times, interleaved
(round-robin, so a noisy moment hits all of them); medians are printed.

Round trips: ``tcp_peer.py pingpong`` (64 bytes, TCP_NODELAY, 100 warm-up
round trips then ``-n``) against ``tcp_peer.py echo``: directly, through two bare
relays (``relay_floor.py`` and ``relay_floor.c``: the layout's floor), through
kcptun (default and tuned) and through ``tou forward -L`` (a warm session); the
relays once blocking in ``epoll_wait`` and once busy-polling, tou as it comes
(adaptive polling), with ``--busy-poll 0`` (blocking) and with a fixed window.

``--profile`` runs the tou bulk transfer once more with both tou processes
under cProfile and prints the functions with the most own time, then profiles
the round trips the same way (``profile_latency``: CPU per round trip by part).

    python bench/loopback.py [--quick] [--runs 3] [--profile]
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from contenders import iperf3_client, iperf3_figures, iperf3_server, kcptun, read_json_line, tcp_peer, tou_forward  # noqa: E402
from harness import BENCH, PY, PipeSink, Procs, free_port, median, tou_env  # noqa: E402


def _per_gb(cpu: float, nbytes: float) -> float | None:
    return cpu / (nbytes / 1e9) if nbytes else None


# ---------------------------------------------------------------- bulk contenders
def bulk_kernel(seconds: float) -> dict[str, Any]:
    with Procs() as ps:
        port = free_port()
        srv = iperf3_server(ps, port)
        cli, j = iperf3_client(ps, "127.0.0.1", port, seconds=seconds)
        ps.reap(srv, 10)
        f = iperf3_figures(j)
        if "error" in f:
            return f
        cpu = (cli.cpu or 0) + (srv.cpu or 0)
        return {"mbps": f["mbps"], "bytes": f["bytes"], "cpu": cpu, "cpu_per_gb": _per_gb(cpu, f["bytes"])}


def bulk_tou(nbytes: int, *, profile_dir: Path | None = None, timeout: float = 120.0) -> dict[str, Any]:
    env = tou_env()
    with Procs() as ps:
        port = free_port(kind=2)
        pre_l: list[str] = []
        pre_c: list[str] = []
        if profile_dir is not None:
            pre_l = ["-m", "cProfile", "-o", str(profile_dir / "listen.prof")]
            pre_c = ["-m", "cProfile", "-o", str(profile_dir / "connect.prof")]
        lis = ps.start("tou listen", [PY, *pre_l, "-m", "toucli", "listen", "-d", "--quiet", "127.0.0.1", str(port)],
                       env=env, stdout=subprocess.PIPE)
        sink = PipeSink(lis.popen.stdout)
        sink.start()
        time.sleep(0.6)
        head = ps.start("head", ["head", "-c", str(nbytes), "/dev/zero"], stdout=subprocess.PIPE)
        con = ps.start("tou connect", [PY, *pre_c, "-m", "toucli", "connect", "--quiet", "127.0.0.1", str(port)],
                       env=env, stdin=head.popen.stdout)
        head.popen.stdout.close()
        ok = ps.reap(con, timeout) and ps.reap(lis, 20)
        sink.join(5)
        if not ok or sink.bytes < nbytes:
            err = ps.stderr_tail(con) + ps.stderr_tail(lis)
            return {"error": f"tou moved {sink.bytes} of {nbytes} bytes: {err.strip()[-300:]}"}
        cpu = (con.cpu or 0) + (lis.cpu or 0)
        secs = sink.seconds()
        return {"mbps": sink.bytes * 8 / secs / 1e6, "bytes": sink.bytes, "cpu": cpu,
                "cpu_per_gb": _per_gb(cpu, sink.bytes)}


def bulk_kcptun(mode: str, seconds: float) -> dict[str, Any]:
    with Procs() as ps:
        target, kport, lport = free_port(), free_port(kind=2), free_port()
        srv = iperf3_server(ps, target)
        kc, ks = kcptun(ps, mode, server_listen=f"127.0.0.1:{kport}", target=f"127.0.0.1:{target}",
                        client_listen=f"127.0.0.1:{lport}", remote=f"127.0.0.1:{kport}")
        time.sleep(0.3)
        cli, j = iperf3_client(ps, "127.0.0.1", lport, seconds=seconds, timeout=seconds + 60)
        ps.reap(srv, 10)
        ps.stop(kc)
        ps.stop(ks)
        f = iperf3_figures(j)
        if "error" in f:
            return f
        cpu = (kc.cpu or 0) + (ks.cpu or 0)
        return {"mbps": f["mbps"], "bytes": f["bytes"], "cpu": cpu, "cpu_per_gb": _per_gb(cpu, f["bytes"])}


def bulk_quic(nbytes: int, certdir: Path, timeout: float = 180.0) -> dict[str, Any]:
    with Procs() as ps:
        port = free_port(kind=2)
        srv = ps.start("quic server", [PY, str(BENCH / "quic_peer.py"), "--timeout", str(timeout), "server",
                                       str(port), str(certdir)], stdout=subprocess.PIPE)
        if read_json_line(srv, 20) is None:
            return {"error": "aioquic server did not start: " + ps.stderr_tail(srv)}
        cli = ps.start("quic client", [PY, str(BENCH / "quic_peer.py"), "--timeout", str(timeout), "client",
                                       str(port), str(nbytes)], stdout=subprocess.PIPE)
        res = read_json_line(srv, timeout)
        ps.reap(srv, 10)
        ps.reap(cli, 10) or ps.stop(cli)
        if not res or res.get("bytes") != nbytes:
            return {"error": f"aioquic: {res} {ps.stderr_tail(cli)} {ps.stderr_tail(srv)}"}
        cpu = (cli.cpu or 0) + (srv.cpu or 0)
        secs = res["last"] - res["first"]
        return {"mbps": nbytes * 8 / secs / 1e6, "bytes": nbytes, "cpu": cpu, "cpu_per_gb": _per_gb(cpu, nbytes)}


def bulk_suite(quick: bool, runs: int, log: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """All bulk contenders, ``runs`` rounds interleaved; medians per contender."""
    seconds = 3 if quick else 6
    tou_bytes = 1_000_000_000 if quick else 2_000_000_000   # seconds at Gbit/s, like the others
    quic_bytes = 30_000_000 if quick else 80_000_000
    tmp = Path(tempfile.mkdtemp(prefix="toubench-quic-"))
    subprocess.run([PY, str(BENCH / "quic_peer.py"), "cert", str(tmp)], check=True, timeout=30)
    contenders: dict[str, Callable[[], dict]] = {
        "kernel TCP (iperf3)": lambda: bulk_kernel(seconds),
        "tou (DTLS, shared secret)": lambda: bulk_tou(tou_bytes),
        "kcptun default": lambda: bulk_kcptun("default", seconds),
        "kcptun tuned": lambda: bulk_kcptun("tuned", seconds),
        "aioquic (1 stream)": lambda: bulk_quic(quic_bytes, tmp),
    }
    raw: dict[str, list[dict]] = {k: [] for k in contenders}
    for r in range(runs):
        for name, fn in contenders.items():
            try:
                res = fn()
            except Exception as exc:  # a contender failing must not stop the others
                res = {"error": f"{type(exc).__name__}: {exc}"}
            raw[name].append(res)
            shown = (f"{res['mbps']:9.1f} Mbit/s, {res['cpu_per_gb']:6.2f} CPU s/GB" if "error" not in res
                     else "ERROR " + res["error"][:200])
            log(f"  bulk run {r + 1}/{runs} {name:28s} {shown}")
    shutil.rmtree(tmp, ignore_errors=True)
    out: dict[str, dict[str, Any]] = {}
    for name, rs in raw.items():
        good = [x for x in rs if "error" not in x]
        if not good:
            out[name] = {"error": rs[-1].get("error", "failed"), "runs": 0}
            continue
        out[name] = {"mbps": median([x["mbps"] for x in good]),
                     "cpu_per_gb": median([x["cpu_per_gb"] for x in good]),
                     "runs": len(good), "all_mbps": [round(x["mbps"], 1) for x in good]}
    return out


def profile_tou(nbytes: int, top: int = 12) -> dict[str, str]:
    """One tou bulk transfer with both processes under cProfile: top functions by own time."""
    tmp = Path(tempfile.mkdtemp(prefix="toubench-prof-"))
    res = bulk_tou(nbytes, profile_dir=tmp)
    out = {"result": json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in res.items()})}
    for side in ("connect", "listen"):
        f = tmp / f"{side}.prof"
        if not f.exists():
            out[side] = "no profile written"
            continue
        buf = io.StringIO()
        st = pstats.Stats(str(f), stream=buf)
        st.sort_stats("tottime").print_stats(top)
        out[side] = buf.getvalue()
        # shares of the busy time: the event loop's wait in epoll is idle, not work
        idle = sum(v[2] for (file, line, fn), v in st.stats.items() if "poll" in fn and "epoll" in fn)
        busy = max(1e-9, st.total_tt - idle)
        rows = [f"idle in epoll {100 * idle / st.total_tt:.0f}% of {st.total_tt:.1f} s"]
        ranked = sorted(((k, v) for k, v in st.stats.items() if not ("poll" in k[2] and "epoll" in k[2])),
                        key=lambda kv: -kv[1][2])
        for (file, line, fn), (cc, nc, tt, ct, callers) in ranked[:6]:
            rows.append(f"`{Path(file).name}:{fn}` {100 * tt / busy:.0f}%")
        out[side + "_top"] = ", ".join(rows)
    return out


# Where a round trip's CPU goes, by what the code is. Own time; a built-in function's
# time goes to the part of the Python function that called it, except for system calls
# and AES-GCM, which are parts of their own. Waiting in epoll is idle, not a part.
LAT_PARTS = ("TCP engine (toucli/stack)", "DTLS records and sessions", "AES-GCM (OpenSSL)",
             "tunnel runtime (tunnel, udp)", "asyncio event loop", "system calls (socket, read, write)",
             "other")


@functools.cache
def _compiled_names() -> frozenset[str]:
    """Classes and functions of the engine's modules: compiled by mypyc, cProfile sees
    them as built-ins (``<method 'receive' of 'Endpoint' objects>``)."""
    import importlib
    import inspect

    sys.path.insert(0, str(BENCH.parent))
    from toucli.stack.compiled import MODULES, PACKAGE
    names = set()
    for name in MODULES:
        mod = importlib.import_module(f"{PACKAGE}.{name}")
        names.update(n for n, v in vars(mod).items()
                     if (inspect.isclass(v) or callable(v)) and getattr(v, "__module__", "") == mod.__name__)
    return frozenset(names)


def _is_compiled_engine(fn: str) -> bool:
    if fn.startswith("<method '") and fn.endswith("' objects>"):
        return fn.split(" of '")[-1][:-len("' objects>")] in _compiled_names()
    if fn.startswith("<built-in method "):
        return fn[len("<built-in method "):-1] in _compiled_names()
    return False


def _lat_part(key: tuple[str, int, str]) -> str | None:
    file, _, fn = key
    if file == "~":
        if "epoll" in fn and "poll" in fn:
            return None
        if "_socket.socket" in fn or fn in ("<built-in method posix.read>", "<built-in method posix.write>"):
            return LAT_PARTS[5]
        if "AESGCM" in fn:
            return LAT_PARTS[2]
        if _is_compiled_engine(fn):
            return LAT_PARTS[0]
        return "built-in"
    path = file.replace("\\", "/")
    if "/toucli/stack/" in path:
        return LAT_PARTS[0]
    if path.endswith(("/toucli/record.py", "/toucli/session.py", "/toucli/dtls.py")):
        return LAT_PARTS[1]
    if "/toucli/" in path:
        return LAT_PARTS[3]
    if "/asyncio/" in path or path.endswith("/selectors.py"):
        return LAT_PARTS[4]
    return LAT_PARTS[6]


def _per_round_trip(long: pstats.Stats, short: pstats.Stats, extra: int) -> tuple[dict[str, float], dict[str, float]]:
    """µs per round trip by part and by function: ``long`` minus ``short``, counting only
    functions called more often in ``long`` (start-up and shutdown run once in each)."""
    parts = dict.fromkeys(LAT_PARTS, 0.0)
    funcs: dict[str, float] = {}
    for key, (_, nc, tt, _, callers) in long.stats.items():    # type: ignore[attr-defined]
        before = short.stats.get(key, (0, 0, 0.0, 0.0, {}))    # type: ignore[attr-defined]
        part = _lat_part(key)
        if part is None or nc <= before[1]:
            continue
        us = (tt - before[2]) / extra * 1e6
        name = key[2] if key[0] == "~" else f"{Path(key[0]).name}:{key[2]}"
        funcs[name] = funcs.get(name, 0.0) + us
        if part != "built-in":
            parts[part] += us
            continue
        for caller, (cnc, _, ctt, _) in callers.items():
            c0 = before[4].get(caller, (0, 0, 0.0, 0.0))
            if cnc > c0[0]:
                cpart = _lat_part(caller)
                parts[LAT_PARTS[6] if cpart in (None, "built-in") else cpart] += (ctt - c0[2]) / extra * 1e6
    return parts, funcs


def profile_latency(n: int = 3000, top: int = 8) -> dict[str, Any]:
    """tou's CPU per 64-byte round trip through a warm ``tou forward`` (blocking,
    ``--busy-poll 0``: polling would add its own calls to the profile), by part: both processes under cProfile for a ping-pong of 1 and one of ``n``
    round trips; the difference of the two profiles over the ``n - 1`` extra round trips
    leaves start-up and shutdown out. The profiler inflates Python calls, so the shares
    are what counts, not the absolute µs."""
    runs: dict[int, dict[str, Any]] = {}
    for count in (1, n):
        tmp = Path(tempfile.mkdtemp(prefix="toubench-latprof-"))
        with Procs() as ps:
            eport = free_port()
            echo = tcp_peer(ps, "--timeout", "300", "echo", str(eport))
            read_json_line(echo, 10)
            uport, lport = free_port(kind=2), free_port()
            try:
                fc, fs = tou_forward(ps, serve=f"127.0.0.1:{uport}", local=f"{lport}:127.0.0.1:{eport}",
                                     peer=f"127.0.0.1:{uport}", profile_dir=tmp, extra=["--busy-poll", "0"])
            except Exception as exc:
                return {"error": f"not available: {exc}"}
            res = _pingpong(ps, lport, count)
            ps.stop(fc)
            ps.stop(fs)
        files = [tmp / "client.prof", tmp / "serve.prof"]
        if "median_us" not in res or not all(f.exists() for f in files):
            return {"error": res.get("error", "no profile written")}
        runs[count] = {"stats": [pstats.Stats(str(f)) for f in files], "cpu": (fc.cpu or 0) + (fs.cpu or 0)}
        shutil.rmtree(tmp, ignore_errors=True)
    extra = n - 1
    parts = dict.fromkeys(LAT_PARTS, 0.0)
    funcs: dict[str, float] = {}
    for long, short in zip(runs[n]["stats"], runs[1]["stats"]):
        p, f = _per_round_trip(long, short, extra)
        for k, v in p.items():
            parts[k] += v
        for k, v in f.items():
            funcs[k] = funcs.get(k, 0.0) + v
    total = sum(parts.values())
    ranked = sorted(funcs.items(), key=lambda kv: -kv[1])[:top]
    return {"round_trips": extra, "profiled_us_per_rt": total,
            "cpu_us_per_rt_profiled": (runs[n]["cpu"] - runs[1]["cpu"]) / extra * 1e6,
            "share": {name: v / total for name, v in parts.items()} if total > 0 else {},
            "top_us_per_rt": {name: round(v, 1) for name, v in ranked}}


# ---------------------------------------------------------------- round trips
def _pingpong(ps: Procs, port: int, n: int) -> dict[str, Any]:
    p = tcp_peer(ps, "--timeout", "60", "pingpong", "127.0.0.1", str(port), "-n", str(n), "--size", "64")
    res = read_json_line(p, 90)
    ps.reap(p, 5) or ps.stop(p)
    return res or {"error": "ping-pong failed: " + ps.stderr_tail(p)}


def _relay_floor(ps: Procs, target: int, n: int, relay: list[str], extra: list[str]) -> dict[str, Any]:
    """Ping-pong through two relay processes (``relay_floor.py`` or ``relay_floor.c``):
    the layout's cost without tou's work."""
    su, cu, lport = free_port(kind=2), free_port(kind=2), free_port()
    srv = ps.start("relay server", [*relay, "server", str(target), str(su), str(cu), *extra], stdout=subprocess.PIPE)
    cli = ps.start("relay client", [*relay, "client", str(lport), str(cu), str(su), *extra], stdout=subprocess.PIPE)
    for p in (srv, cli):
        if p.popen.stdout.readline().strip() != b"ready":
            return {"error": "relay did not start: " + ps.stderr_tail(p)}
    res = _pingpong(ps, lport, n)
    ps.stop(cli)
    ps.stop(srv)
    return res


BUSY_POLL_US = 1000     # tou --busy-poll for the latency rows that use it: longer than a round trip
TOU_ROW = "tou forward (warm)"                       # as it comes: adaptive polling
TOU_OFF_ROW = "tou forward (warm, --busy-poll 0)"     # blocking in epoll_wait
TOU_BUSY_ROW = f"tou forward (warm, --busy-poll {BUSY_POLL_US})"


def latency_suite(n: int = 1000, log: Callable[[str], None] = print, rounds: int = 3) -> dict[str, dict[str, Any]]:
    """Ping-pong through every path, ``rounds`` times round-robin (one run is ±30 % on a
    shared VM): direct TCP, the relay floors (blocking and busy-polling), kcptun and tou
    forward (as it comes, ``--busy-poll 0`` and ``--busy-poll 1000``). Per path: the median of the runs' medians and
    of their p99s, and each run's median."""
    paths: dict[str, Callable[[], dict[str, Any]]] = {}
    with Procs() as ps:
        eport = free_port()
        echo = tcp_peer(ps, "--timeout", "600", "echo", str(eport))
        read_json_line(echo, 10)
        paths["direct TCP"] = lambda: _pingpong(ps, eport, n)
        py_relay = [PY, str(BENCH / "relay_floor.py")]
        compiler = shutil.which("cc") or shutil.which("gcc")
        exe = Path(tempfile.mkdtemp(prefix="tou-relay-")) / "relay_floor"
        built = (subprocess.run([compiler, "-O2", "-o", str(exe), str(BENCH / "relay_floor.c")],
                                capture_output=True, text=True, timeout=60) if compiler else None)
        c_error = ("no C compiler" if built is None else
                   "relay_floor.c did not build: " + built.stderr[-300:] if built.returncode else None)
        for busy in (0, BUSY_POLL_US):
            tail = f", busy-poll {busy} µs" if busy else ""
            paths[f"floor: two bare Python relays{tail}"] = (
                lambda busy=busy: _relay_floor(ps, eport, n, py_relay, ["--busy-poll", str(busy)]))
            paths[f"floor: two C relays{tail}"] = (
                (lambda: {"error": c_error}) if c_error else
                (lambda busy=busy: _relay_floor(ps, eport, n, [str(exe)], [str(busy)])))
        for mode in ("default", "tuned"):
            paths[f"kcptun {mode}"] = lambda mode=mode: _kcptun_pingpong(ps, mode, eport, n)
        for name, tou_busy in ((TOU_ROW, None), (TOU_OFF_ROW, 0), (TOU_BUSY_ROW, BUSY_POLL_US)):
            paths[name] = lambda tou_busy=tou_busy: _tou_pingpong(ps, tou_busy, eport, n)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in paths}
        for r in range(rounds):
            for name, measure in paths.items():
                res = measure()
                runs[name].append(res)
                log(f"  64-byte RTT {name} (round {r + 1}): {res}")
        shutil.rmtree(exe.parent, ignore_errors=True)
    out: dict[str, dict[str, Any]] = {}
    for name, results in runs.items():
        good = [x for x in results if "median_us" in x]
        if not good:
            out[name] = results[-1]
            continue
        out[name] = {"n": n, "runs": len(good), "median_us": median([x["median_us"] for x in good]),
                     "p99_us": median([x["p99_us"] for x in good]),
                     "run_medians_us": [round(x["median_us"]) for x in good]}
        cpu = [x["cpu_us_per_rt"] for x in good if "cpu_us_per_rt" in x]
        if cpu:
            out[name]["cpu_us_per_rt"] = median(cpu)
    return out


def _kcptun_pingpong(ps: Procs, mode: str, eport: int, n: int) -> dict[str, Any]:
    try:
        kport, lport = free_port(kind=2), free_port()
        kc, ks = kcptun(ps, mode, server_listen=f"127.0.0.1:{kport}", target=f"127.0.0.1:{eport}",
                        client_listen=f"127.0.0.1:{lport}", remote=f"127.0.0.1:{kport}")
    except Exception as exc:
        return {"error": str(exc)}
    res = _pingpong(ps, lport, n)
    ps.stop(kc)
    ps.stop(ks)
    return res


def _tou_pingpong(ps: Procs, busy_poll: int | None, eport: int, n: int) -> dict[str, Any]:
    """Through a warm ``tou forward -L``; also the CPU (user + system) of both tou
    processes per round trip."""
    try:
        uport, lport = free_port(kind=2), free_port()
        fc, fs = tou_forward(ps, serve=f"127.0.0.1:{uport}", local=f"{lport}:127.0.0.1:{eport}",
                             peer=f"127.0.0.1:{uport}",
                             extra=[] if busy_poll is None else ["--busy-poll", str(busy_poll)])
    except Exception as exc:
        return {"error": f"not available: {exc}"}
    cpu0 = fc.cpu_now() + fs.cpu_now()
    res = _pingpong(ps, lport, n)
    if "median_us" in res:
        res["cpu_us_per_rt"] = (fc.cpu_now() + fs.cpu_now() - cpu0) / (n + 100) * 1e6   # 100 warm-up
    ps.stop(fc)
    ps.stop(fs)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()
    res = bulk_suite(a.quick, a.runs)
    for name, r in res.items():
        print(name, r)
    print(latency_suite())
    if a.profile:
        prof = profile_tou(150_000_000)
        print(prof["result"])
        print(prof["connect"])
        print(prof["listen"])
        print(json.dumps(profile_latency(), indent=1))


if __name__ == "__main__":
    main()
