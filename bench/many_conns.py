"""Many concurrent forwarded connections: memory (RSS) and CPU of both tou processes.

On loopback: ``tou forward --serve`` and ``tou forward -L PORT:127.0.0.1:ECHO``
with ``tcp_peer.py echo`` as the target. ``tcp_peer.py many`` opens ``-n``
connections through the local port (100 at a time), each sends ``--size``
bytes and reads them back, and then holds all of them open. While they are all
open this script samples VmRSS of both tou processes (and their peak, VmHWM)
and the CPU seconds each used since start (start-up and the session handshake
included).

    python bench/many_conns.py [-n 1000] [--size 1024]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from contenders import read_json_line, tcp_peer, tou_forward  # noqa: E402
from harness import Proc, Procs, free_port  # noqa: E402


def _hwm_kb(p: Proc) -> int:
    try:
        for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def measure(n: int = 1000, size: int = 1024, hold: float = 4.0, log: Callable[[str], None] = print) -> dict[str, Any]:
    with Procs() as ps:
        eport, uport, lport = free_port(), free_port(kind=2), free_port()
        echo = tcp_peer(ps, "--timeout", "600", "echo", str(eport))
        read_json_line(echo, 10)
        try:
            fc, fs = tou_forward(ps, serve=f"127.0.0.1:{uport}", local=f"{lport}:127.0.0.1:{eport}",
                                 peer=f"127.0.0.1:{uport}")
        except Exception as exc:
            return {"error": f"tou forward not available: {exc}"}
        time.sleep(0.5)
        base = {"client_rss_mb": fc.rss_kb() / 1024, "server_rss_mb": fs.rss_kb() / 1024}
        t0 = time.monotonic()
        drv = tcp_peer(ps, "--timeout", "120", "many", "127.0.0.1", str(lport), "-n", str(n), "--size", str(size),
                       "--hold", str(hold))
        opened = read_json_line(drv, 180)
        elapsed = time.monotonic() - t0
        if not opened:
            return {"error": "driver did not report: " + ps.stderr_tail(drv) + ps.stderr_tail(fc)}
        time.sleep(min(1.0, hold / 2))
        res = {
            "connections": n, "open": opened.get("open"), "errors": opened.get("errors"),
            "open_seconds": opened.get("seconds"),
            "idle_rss_mb": base,
            "client_rss_mb": fc.rss_kb() / 1024, "server_rss_mb": fs.rss_kb() / 1024,
            "client_peak_mb": _hwm_kb(fc) / 1024, "server_peak_mb": _hwm_kb(fs) / 1024,
            "client_cpu_s": fc.cpu_now(), "server_cpu_s": fs.cpu_now(), "wall_s": elapsed,
        }
        res["total_rss_mb"] = res["client_rss_mb"] + res["server_rss_mb"]
        res["total_peak_mb"] = res["client_peak_mb"] + res["server_peak_mb"]
        log(f"  {n} connections: {res}")
        ps.reap(drv, hold + 30) or ps.stop(drv)
        return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--size", type=int, default=1024)
    a = ap.parse_args()
    measure(a.n, a.size)


if __name__ == "__main__":
    main()
