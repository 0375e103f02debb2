"""Helpers for the tests that run tou as real processes on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
TOU = [sys.executable, "-m", "toucli"]
# No TOU_* settings from the developer's shell leak into the processes under test.
ENV = {k: v for k, v in os.environ.items() if not k.startswith("TOU_")}


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred: Callable[[], Any], timeout: float = 15.0, what: str = "condition", step: float = 0.02) -> Any:
    """Poll ``pred`` until it returns something true (returned), or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")


def feed(proc: subprocess.Popen, data: bytes, seconds: float, chunks: int = 40) -> threading.Thread:
    """Write ``data`` to ``proc``'s stdin spread over ``seconds``, then close it."""
    def run() -> None:
        step = -(-len(data) // chunks)
        try:
            for i in range(0, len(data), step):
                proc.stdin.write(data[i:i + step])
                proc.stdin.flush()
                time.sleep(seconds / chunks)
            proc.stdin.close()
        except (BrokenPipeError, ValueError):
            pass
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t
