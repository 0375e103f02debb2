"""Time to first byte of a new forwarded connection across an emulated 100 ms RTT path.

On a :class:`wanlink.WanPath` (RTT 100 ms, 100 Mbit/s, no loss) ``tou forward
--serve`` runs in namespace B and ``tou forward -L`` in namespace A; the target
(``tcp_peer.py first-byte-target``) listens on B's loopback. A client in A
connects to the local port and sends one byte at once; the figure is the
target's arrival time of that byte minus the time the client called
``connect()`` (one monotonic clock for both namespaces).

* **cold session**: a new ``tou forward -L`` process, the client connects as
  soon as the local port listens (``ss`` polled every 50 ms), so the secure
  session's handshake is (at least partly) on the path;
* **warm session**: later connections through the same process, 0.3 s apart;
  the "tou" rows run with ``--no-fast-open``, the "tou fast open" rows with
  ``tou forward``'s default, Fast Open (a cold connection has no cookie yet, so
  only the warm ones can use it);
* **direct kernel TCP** for reference: 1.5 RTT (SYN, SYN-ACK, then the data).

    python bench/first_byte.py [--samples 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from contenders import read_json_line, tcp_peer, tou_forward  # noqa: E402
from harness import Procs, median  # noqa: E402
from wanlink import B_ADDR, WanPath  # noqa: E402

RTT = 0.100


def _probe(ps: Procs, target: Any, netns: str, host: str, port: int) -> float | None:
    c = tcp_peer(ps, "--timeout", "20", "first-byte", host, str(port), netns=netns)
    start = read_json_line(c, 25)
    arrival = read_json_line(target, 5)
    ps.reap(c, 5) or ps.stop(c)
    if not start or not arrival or arrival.get("first_byte") is None:
        return None
    return arrival["first_byte"] - start["connect_start"]


def measure(samples: int = 5, log: Callable[[str], None] = print) -> dict[str, Any]:
    out: dict[str, Any] = {"rtt_ms": RTT * 1000}
    with WanPath(RTT, 0.0, 100e6) as path, Procs() as ps:
        tport = 7000
        target = tcp_peer(ps, "--timeout", "600", "first-byte-target", str(tport), "--host", "0.0.0.0",
                          "--count", "1000", netns=path.ns_b)
        read_json_line(target, 10)
        # direct kernel TCP across the same path
        direct = [_probe(ps, target, path.ns_a, B_ADDR, tport) for _ in range(samples)]
        out["direct kernel TCP"] = direct
        log(f"  first byte, direct TCP: {direct}")
        for label, extra in (("tou", ["--no-fast-open"]), ("tou fast open", [])):
            cold, warm = [], []
            for i in range(samples):
                sport = 9000 + i
                lport = 8000 + i
                try:
                    fc, fs = tou_forward(ps, serve=f"{B_ADDR}:{sport}", local=f"{lport}:127.0.0.1:{tport}",
                                         peer=f"{B_ADDR}:{sport}", netns_client=path.ns_a,
                                         netns_server=path.ns_b, extra=extra)
                except Exception as exc:
                    out[f"{label} cold"] = out[f"{label} warm"] = f"not available: {exc}"
                    break
                cold.append(_probe(ps, target, path.ns_a, "127.0.0.1", lport))
                if i == 0:
                    for _ in range(samples):
                        time.sleep(0.3)
                        warm.append(_probe(ps, target, path.ns_a, "127.0.0.1", lport))
                ps.stop(fc)
                ps.stop(fs)
            else:
                out[f"{label} cold"] = cold
                out[f"{label} warm"] = warm
            log(f"  first byte, {label}: cold {out[f'{label} cold']} warm {out[f'{label} warm']}")
    summary = {}
    for k, v in out.items():
        if isinstance(v, list):
            summary[k] = median([x * 1000 for x in v if x is not None])
    out["median_ms"] = summary
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=5)
    a = ap.parse_args()
    r = measure(a.samples)
    print(r["median_ms"])


if __name__ == "__main__":
    main()
