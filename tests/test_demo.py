"""``tou demo``: both ends in one process; the summary reports verified bytes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV = {k: v for k, v in os.environ.items() if not k.startswith("TOU_")}
ENV["XDG_CONFIG_HOME"] = "/nonexistent-tou-test-config"


def demo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "toucli", "demo", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=60)


SUMMARY = re.compile(r"^tou demo \((?P<path>[^)]*)\): (?P<mb>[\d.]+) MB in (?P<secs>[\d.]+) s, "
                     r"goodput (?P<rate>[\d.]+) Mbit/s, (?P<retr>\d+) retransmitted segments \([\d.]+%\), "
                     r"(?P<bytes>[\d,]+) bytes verified \(SHA-256 match\)$")


def test_demo_two_seconds_verifies_the_bytes() -> None:
    res = demo("--seconds", "2")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 1
    m = SUMMARY.match(lines[0])
    assert m, lines[0]
    assert m["path"] == "loopback, DTLS"        # what tou connect/listen use by default
    assert int(m["bytes"].replace(",", "")) > 1_000_000
    assert 1.9 < float(m["secs"]) < 10
    assert res.stderr == ""                     # not a TTY: no progress line


def test_demo_through_an_emulated_lossy_path() -> None:
    res = demo("--seconds", "1", "--rtt", "10", "--loss", "2", "--rate", "20")
    assert res.returncode == 0, res.stderr
    m = SUMMARY.match(res.stdout.strip())
    assert m, res.stdout
    assert m["path"] == "emulated path: rtt 10 ms, loss 2%, rate 20 Mbit/s; DTLS"
    assert int(m["retr"]) > 0                   # 2 % loss each way forces retransmissions
    assert float(m["rate"]) < 20                # the bottleneck holds


def test_demo_insecure_is_cleartext_and_verifies_too() -> None:
    res = demo("--seconds", "1", "--insecure")
    assert res.returncode == 0, res.stderr
    m = SUMMARY.match(res.stdout.strip())
    assert m, res.stdout
    assert m["path"] == "loopback, cleartext"


def test_demo_rejects_bad_values() -> None:
    res = demo("--loss", "150")
    assert res.returncode == 2
    assert "--loss" in res.stderr
