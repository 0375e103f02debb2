"""How each contender is started: iperf3 (kernel TCP), kcptun, tou forward, tou connect/listen.

Functions take a :class:`harness.Procs` (which owns and reaps the processes)
and optional namespace names (None: the current namespace, loopback), and
return the started :class:`harness.Proc` objects. Nothing here measures.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from harness import PY, BENCH, TOU, Proc, Procs, tou_env, wait_tcp

KCPTUN_KEY = "tou-bench-kcptun-key"
# the tuned profile: no FEC, no compression, big windows, AES
KCPTUN_TUNED = ["--crypt", "aes", "--nocomp", "--datashard", "0", "--parityshard", "0",
                "--sndwnd", "1024", "--rcvwnd", "1024"]
KCPTUN_MODES = {"default": [], "tuned": KCPTUN_TUNED}


def iperf3_server(ps: Procs, port: int, netns: str | None = None, bind: str | None = None) -> Proc:
    argv = ["iperf3", "-s", "-1", "-p", str(port)]
    if bind:
        argv += ["-B", bind]
    p = ps.start("iperf3 -s", argv, netns=netns)
    wait_tcp(bind or "127.0.0.1", port, netns=netns)
    return p


def iperf3_client(ps: Procs, host: str, port: int, *, seconds: float | None = None, nbytes: int | None = None,
                  cc: str | None = None, netns: str | None = None, timeout: float = 120.0) -> tuple[Proc, dict]:
    """Run an iperf3 client to the end (bounded) and return it with its JSON report."""
    argv = ["iperf3", "-c", host, "-p", str(port), "-J"]
    if seconds is not None:
        argv += ["-t", f"{seconds:g}"]
    if nbytes is not None:
        argv += ["-n", str(nbytes)]
    if cc:
        argv += ["-C", cc]
    p = ps.start("iperf3 -c", argv, netns=netns, stdout=subprocess.PIPE)
    out = ps.output(p, timeout)
    if out is None:
        ps.stop(p)
        return p, {"error": f"iperf3 client did not finish within {timeout:g} s"}
    ps.reap(p, 5)
    try:
        return p, json.loads(out)
    except ValueError:
        return p, {"error": out.decode(errors="replace")[-300:]}


def iperf3_figures(j: dict) -> dict[str, Any]:
    """Goodput (receiver side), bytes, and the sender's retransmitted share from an iperf3 report."""
    if "error" in j or "end" not in j:
        return {"error": j.get("error", "no report")}
    end = j["end"]
    recv = end.get("sum_received", {})
    sent = end.get("sum_sent", {})
    mss = j.get("start", {}).get("tcp_mss_default") or 1448
    retx = sent.get("retransmits")
    sent_bytes = sent.get("bytes") or 0
    share = None
    if retx is not None and sent_bytes:
        share = retx * mss / (sent_bytes + retx * mss)
    return {"mbps": recv.get("bits_per_second", 0) / 1e6, "bytes": recv.get("bytes", 0),
            "seconds": recv.get("seconds"), "retrans_share": share, "retransmits": retx}


def kcptun(ps: Procs, mode: str, *, server_listen: str, target: str, client_listen: str, remote: str,
           netns_client: str | None = None, netns_server: str | None = None,
           client_extra: list[str] | None = None) -> tuple[Proc, Proc]:
    """kcptun-server (forwarding to ``target``) and kcptun-client (listening on ``client_listen``)."""
    extra = KCPTUN_MODES[mode]
    srv = ps.start(f"kcptun-server {mode}", ["kcptun-server", "--quiet", "--key", KCPTUN_KEY, "-l", server_listen,
                                             "-t", target, *extra], netns=netns_server)
    cli = ps.start(f"kcptun-client {mode}", ["kcptun-client", "--quiet", "--key", KCPTUN_KEY, "-l", client_listen,
                                             "-r", remote, *extra, *(client_extra or [])], netns=netns_client)
    host, port = client_listen.rsplit(":", 1)
    wait_tcp(host or "127.0.0.1", int(port), netns=netns_client)
    return cli, srv


def tou_forward(ps: Procs, *, serve: str, local: str, peer: str, netns_client: str | None = None,
                netns_server: str | None = None, extra: list[str] | None = None,
                env: dict[str, str] | None = None, wait: bool = True,
                profile_dir: Path | None = None) -> tuple[Proc, Proc]:
    """``tou forward --serve`` and a ``tou forward -L local PEER`` client (shared secret, DTLS).
    With ``profile_dir``, both run under cProfile and write ``serve.prof`` / ``client.prof``
    there when stopped."""
    env = env or tou_env()

    def tou(side: str) -> list[str]:
        if profile_dir is None:
            return TOU
        return [PY, "-m", "cProfile", "-o", str(profile_dir / f"{side}.prof"), *TOU[1:]]

    srv = ps.start("tou forward --serve", [*tou("serve"), "forward", "--quiet", "--serve", serve, *(extra or [])],
                   netns=netns_server, env=env)
    time.sleep(0.3)
    cli = ps.start("tou forward -L", [*tou("client"), "forward", "--quiet", "-L", local, *(extra or []), peer],
                   netns=netns_client, env=env)
    if wait:
        parts = local.split(":")
        bind, port = (parts[0], parts[1]) if len(parts) == 5 else ("127.0.0.1", parts[0])
        wait_tcp(bind, int(port), timeout=20, netns=netns_client)
    return cli, srv


def tcp_peer(ps: Procs, *args: str, netns: str | None = None, stdout: Any = subprocess.PIPE) -> Proc:
    """Start ``bench/tcp_peer.py ARGS`` (echo server, ping-pong client, ...)."""
    return ps.start(f"tcp_peer {args[0]}", [PY, str(BENCH / "tcp_peer.py"), *args], netns=netns, stdout=stdout)


def read_json_line(p: Proc, timeout: float) -> dict | None:
    """The next JSON line the process prints on stdout (bounded), or None."""
    import os
    import select

    f = p.popen.stdout
    deadline = time.monotonic() + timeout
    buf = b""
    fd = f.fileno()
    poll = select.poll()          # not select.select: a bench may hold over 1024 descriptors
    poll.register(fd, select.POLLIN)
    while time.monotonic() < deadline:
        if not poll.poll(max(0.0, deadline - time.monotonic()) * 1000):
            break
        ch = os.read(fd, 1)
        if not ch:
            break
        if ch == b"\n":
            try:
                return json.loads(buf)
            except ValueError:
                buf = b""
                continue
        buf += ch
    return None
