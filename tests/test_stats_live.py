"""``tou connect --stats`` in a real terminal (a tmux pane) while data flows.

The dashboard is captured from the pane twice: its numbers move. Keys sent to
the pane sort, select, open the detail view and hide the dashboard. The
payload on stdout stays byte-exact. Without a terminal, ``--stats`` prints
iperf3-style interval lines and ``--stats-json`` one JSON object per interval.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
from procs import ROOT, TOU, feed, wait_for
from procs import free_udp_port as free_port

TMUX = shutil.which("tmux")


def wait_bound(port: int, proc: subprocess.Popen) -> None:
    hexport = f":{port:04X} "
    wait_for(lambda: hexport in Path("/proc/net/udp").read_text() or proc.poll() is not None,
             what="the listener")
    assert proc.poll() is None, proc.stderr.read().decode()


@pytest.fixture
def workdir():
    d = Path(tempfile.mkdtemp(prefix="tou-live-"))
    os.chmod(d, 0o700)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def base_env(workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOU_", "TMUX"))}
    env["XDG_CONFIG_HOME"] = "/nonexistent-tou-test-config"
    env["XDG_RUNTIME_DIR"] = str(workdir)
    return env


class Tmux:
    """A private tmux server (its own socket) with one detached session of a fixed size."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.sock = str(workdir / "tmux.sock")
        self.env = env

    def __call__(self, *args: str) -> str:
        res = subprocess.run([TMUX, "-S", self.sock, *args], capture_output=True, text=True, env=self.env,
                             timeout=20)
        assert res.returncode == 0, res.stderr
        return res.stdout

    def start(self, command: str) -> None:
        self("new-session", "-d", "-s", "t", "-x", "150", "-y", "45", command)

    def capture(self) -> str:
        return self("capture-pane", "-p", "-t", "t")

    def keys(self, *keys: str) -> None:
        self("send-keys", "-t", "t", *keys)

    def kill(self) -> None:
        subprocess.run([TMUX, "-S", self.sock, "kill-server"], capture_output=True, env=self.env, timeout=20)


def down_total(screen: str) -> float:
    """The "down" line's total, in bytes."""
    m = re.search(r"│ down .*?([0-9.]+) (B|kB|MB|GB) total", screen)
    assert m, screen
    return float(m.group(1)) * {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}[m.group(2)]


@pytest.mark.slow
@pytest.mark.skipif(TMUX is None, reason="tmux is not installed")
def test_dashboard_in_a_terminal_moves_and_keeps_stdout_exact(workdir) -> None:
    env = base_env(workdir)
    port = free_port()
    up = random.Random(1).randbytes(1_000_000)
    down = random.Random(2).randbytes(4_000_000)
    (workdir / "up.bin").write_bytes(up)
    out, rc = workdir / "out.bin", workdir / "rc"
    lst = subprocess.Popen([*TOU, "listen", "--insecure", "--quiet", "127.0.0.1", str(port)], cwd=ROOT, env=env,
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    received: dict = {}
    tmux = Tmux(workdir, env)
    try:
        wait_bound(port, lst)
        reader = threading.Thread(target=lambda: received.update(out=lst.stdout.read()), daemon=True)
        reader.start()
        connect = " ".join(shlex.quote(a) for a in [
            *TOU, "connect", "--insecure", "--stats", "--stats-interval", "0.25", "--name", "live",
            "127.0.0.1", str(port)])
        tmux.start(f"cd {shlex.quote(str(ROOT))} && {connect} < {workdir / 'up.bin'} > {out}; "
                   f"echo $? > {rc}; sleep 30")
        wait_for(lambda: (workdir / "tou" / "live.sock").exists(), what="tou connect to start")
        feeder = feed(lst, down, 6.0)

        first = wait_for(lambda: (lambda s: s if "ESTABLISHED" in s or "FIN_WAIT" in s else None)(tmux.capture()),
                         what="the dashboard")
        time.sleep(1.0)
        second = tmux.capture()
        for screen in (first, second):
            assert "tou connect 'live'" in screen
            assert "127.0.0.1:" + str(port) in screen
            assert "Endpoint" in screen and "Cwnd" in screen and "Limit" in screen
            assert re.search(r"rtt [0-9.]+ ms", screen)
            assert re.search(r"mtu (1500|65535)\b", screen) and "overhead" in screen   # discovery: loopback's MTU
        assert "mtu 65535" in second
        assert down_total(second) > down_total(first) > 0, (first, second)

        # Keys: s sorts, down + enter opens the detail view, enter goes back, q hides, q shows.
        tmux.keys("s")
        wait_for(lambda: "s sort (up)" in tmux.capture(), what="the sort to change")
        tmux.keys("Down", "Enter")
        detail = wait_for(lambda: (lambda s: s if "RTT, last minute" in s else None)(tmux.capture()),
                          what="the detail view")
        assert "connection 1:" in detail and "cwnd, last minute" in detail
        tmux.keys("Enter")
        wait_for(lambda: "Endpoint" in tmux.capture(), what="the table again")
        tmux.keys("q")
        wait_for(lambda: "Endpoint" not in tmux.capture(), what="the dashboard to hide")
        tmux.keys("q")
        wait_for(lambda: "Endpoint" in tmux.capture(), what="the dashboard to come back")

        feeder.join(timeout=30)
        wait_for(lambda: rc.exists() and rc.read_text().strip(), timeout=60, what="tou connect to finish")
        assert rc.read_text().strip() == "0", tmux.capture()
        assert lst.wait(timeout=30) == 0
        reader.join(timeout=10)
    finally:
        tmux.kill()
        if lst.poll() is None:
            lst.kill()
        lst.wait(timeout=10)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == hashlib.sha256(down).hexdigest()
    assert received["out"] == up


def _download(workdir, data: bytes, after: float, *connect_args: str, timeout: float = 30):
    """``tou listen`` sends ``data`` (fed ``after`` s in) to a ``tou connect CONNECT_ARGS``;
    both must exit 0. Returns the connect's CompletedProcess."""
    env = base_env(workdir)
    port = free_port()
    lst = subprocess.Popen([*TOU, "listen", "--insecure", "--quiet", "127.0.0.1", str(port)], cwd=ROOT, env=env,
                           stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_bound(port, lst)
        feeder = feed(lst, data, after)        # the listener reads stdin once connected
        cli = subprocess.run([*TOU, "connect", "--insecure", "--quiet", *connect_args, "127.0.0.1", str(port)],
                             cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
        feeder.join(timeout=30)
        assert lst.wait(timeout=30) == 0
    finally:
        if lst.poll() is None:
            lst.kill()
        lst.wait(timeout=10)
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout == data                                   # stdout untouched by the statistics
    return cli


@pytest.mark.slow
def test_without_a_terminal_stats_prints_interval_lines_and_json(workdir) -> None:
    down = random.Random(4).randbytes(2_000_000)
    jsonl = workdir / "stats.jsonl"
    cli = _download(workdir, down, 2.0, "--stats", "--stats-json", str(jsonl), "--stats-interval", "0.2", timeout=60)
    lines = cli.stderr.decode().splitlines()
    assert lines[0].startswith("[ ID]") and "Interval" in lines[0]
    rows = [line for line in lines[1:] if line.startswith("[  1]")]
    assert len(rows) >= 5
    assert all(re.match(r"\[  1\]\s+\d+\.\d\d-\d+\.\d\d\s+sec", r) for r in rows)
    assert sum(1 for r in rows if " 0 bit/s" not in r.split("sec", 1)[1][40:]) >= 2   # data moved down
    snaps = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(snaps) >= 5 and all(s["version"] == 1 for s in snaps)
    totals = [s["totals"]["bytes_down"] for s in snaps]
    assert totals == sorted(totals) and totals[-1] == len(down)
    assert max(s["totals"]["down_bps"] for s in snaps) > 0
    assert snaps[-1]["connections"][0]["bytes_received"] == len(down)


def test_stats_json_dash_writes_to_stderr_and_excludes_stats(workdir) -> None:
    env = base_env(workdir)
    res = subprocess.run([*TOU, "connect", "--insecure", "--stats", "--stats-json", "-", "127.0.0.1", "9"],
                         cwd=ROOT, env=env, capture_output=True, timeout=20, stdin=subprocess.DEVNULL)
    assert res.returncode == 2 and b"--stats-json" in res.stderr
    cli = _download(workdir, b"x" * 100_000, 0.5, "--stats-json", "-")
    snaps = [json.loads(line) for line in cli.stderr.decode().splitlines()]
    assert snaps and snaps[-1]["totals"]["bytes_down"] == 100_000
    bp = snaps[-1]["instance"]["busy_poll"]               # the default: adaptive, up to 200 µs
    assert bp["mode"] == "adaptive" and bp["window_us"] == 200
    off = _download(workdir, b"x" * 1000, 0.5, "--stats-json", "-", "--busy-poll", "0")
    assert json.loads(off.stderr.decode().splitlines()[-1])["instance"]["busy_poll"] is None


def test_busy_poll_reports_its_window_and_the_time_it_spun(workdir) -> None:
    data = random.Random(7).randbytes(300_000)
    cli = _download(workdir, data, 0.5, "--busy-poll", "2000", "--stats-json", "-", "--stats-interval", "0.2")
    bp = [json.loads(line)["instance"]["busy_poll"] for line in cli.stderr.decode().splitlines()]
    assert bp and all(b["window_us"] == 2000 and b["mode"] == "fixed" for b in bp)
    assert bp[-1]["spin_seconds"] > 0 and bp[-1]["caught"] >= 0
    assert [b["spin_seconds"] for b in bp] == sorted(b["spin_seconds"] for b in bp)
