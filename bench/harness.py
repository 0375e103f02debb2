"""Shared plumbing of the comparison benchmarks: processes, CPU, ports, tools, medians.

Every process a benchmark starts goes through :class:`Procs`, which remembers
its PID, reaps it with ``os.wait4`` (so the CPU seconds it used are exactly
known, from the kernel's rusage of that one child) and kills what is still
running at the end, by PID only. ``tou`` is run as ``python -m toucli`` from
this checkout, so nothing has to be installed for it.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PY = sys.executable
TOU = [PY, "-m", "toucli"]
SECRET = "benchmark-secret-0123456789abcdefghijklmnopqrstuvwxyzABCD"   # fixed: runs are comparable

INSTALL_HINTS = {
    "iperf3": "apt-get install -y iperf3",
    "kcptun": "apt-get install -y kcptun",
    "aioquic": "pip install aioquic",
    "ip": "apt-get install -y iproute2",
}


def tou_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for tou children: the shared secret, this checkout on the path, no config file."""
    env = dict(os.environ)
    env["TOU_SECRET"] = SECRET
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("TOU_CONFIG", None)
    # Users' Pythons keep compiled bytecode (__pycache__); a shell with this set (the dev
    # sandbox has it) would compile every module at every start: 70 ms more per process.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["XDG_CONFIG_HOME"] = "/nonexistent-tou-bench"   # never pick up a user's configuration
    if extra:
        env.update(extra)
    return env


def missing_tools() -> dict[str, str]:
    """Tools the suite uses that are not installed here -> how to install them."""
    out: dict[str, str] = {}
    if shutil.which("iperf3") is None:
        out["iperf3"] = INSTALL_HINTS["iperf3"]
    if shutil.which("kcptun-client") is None or shutil.which("kcptun-server") is None:
        out["kcptun"] = INSTALL_HINTS["kcptun"]
    import importlib.util

    if importlib.util.find_spec("aioquic") is None:
        out["aioquic"] = INSTALL_HINTS["aioquic"]
    if shutil.which("ip") is None:
        out["ip"] = INSTALL_HINTS["ip"]
    return out


def machine() -> str:
    """One line naming the machine: CPU model, cores, kernel, Python."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{model}, {os.cpu_count()} cores, Linux {platform.release()}, "
            f"{platform.python_implementation()} {platform.python_version()}")


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port number free on loopback right now (for TCP or UDP)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_tcp(host: str, port: int, timeout: float = 10.0, netns: str | None = None) -> None:
    """Wait until a TCP socket listens on ``port`` (bounded). Asks ``ss`` rather than
    connecting: a probe connection would be taken for a client (iperf3 -1, kcptun)."""
    deadline = time.monotonic() + timeout
    pre = ["ip", "netns", "exec", netns] if netns else []
    while time.monotonic() < deadline:
        r = subprocess.run([*pre, "ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, timeout=5)
        if r.stdout.strip():
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s")


def median(xs: Sequence[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def percentile(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(round(q * (len(s) - 1)))))]


# ------------------------------------------------------------------ processes
@dataclass
class Proc:
    """A started child: its Popen, name, and after :meth:`Procs.reap` its CPU seconds."""

    name: str
    popen: subprocess.Popen
    cpu: float | None = None          # user + system seconds, known once reaped
    maxrss_kb: int | None = None
    status: int | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def cpu_now(self) -> float:
        """CPU seconds used so far (from /proc/PID/stat while it runs)."""
        if self.cpu is not None:
            return self.cpu
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return 0.0

    def rss_kb(self) -> int:
        """Resident set size now (VmRSS), kB."""
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0


class Procs:
    """Children of one benchmark step; a context manager that kills and reaps them all."""

    def __init__(self) -> None:
        self.items: list[Proc] = []

    def __enter__(self) -> "Procs":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self, name: str, argv: list[str], *, netns: str | None = None, env: dict | None = None,
              stdin: Any = subprocess.DEVNULL, stdout: Any = subprocess.DEVNULL,
              stderr: Any = subprocess.PIPE, cwd: Path | None = ROOT) -> Proc:
        """Start argv (inside ``netns`` via ``ip netns exec``, which execs it: same PID)."""
        if netns is not None:
            argv = ["ip", "netns", "exec", netns, *argv]
        p = subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=stderr, env=env, cwd=cwd,
                             start_new_session=True)
        proc = Proc(name, p)
        self.items.append(proc)
        return proc

    def reap(self, proc: Proc, timeout: float | None = None) -> bool:
        """Wait (bounded) for ``proc`` to exit and record its CPU; False on timeout."""
        if proc.cpu is not None:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            except ChildProcessError:      # reaped elsewhere: CPU unknown
                proc.cpu = 0.0
                proc.status = proc.popen.returncode
                return True
            if pid == proc.pid:
                proc.cpu = ru.ru_utime + ru.ru_stime
                proc.maxrss_kb = ru.ru_maxrss
                proc.status = os.waitstatus_to_exitcode(status)
                proc.popen.returncode = proc.status
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    def stop(self, proc: Proc, sig: int = signal.SIGTERM, grace: float = 3.0) -> None:
        """Signal ``proc`` (by PID), wait ``grace`` seconds, then SIGKILL it; always reaps."""
        if proc.cpu is not None:
            return
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass
        if not self.reap(proc, grace):
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.reap(proc, 5.0)

    def close(self) -> None:
        for proc in reversed(self.items):
            self.stop(proc, signal.SIGTERM, 1.0)
            for f in (proc.popen.stdin, proc.popen.stdout, proc.popen.stderr):
                if f is not None:
                    try:
                        f.close()
                    except OSError:
                        pass

    def output(self, proc: Proc, timeout: float) -> bytes | None:
        """Everything ``proc`` writes on stdout until it closes it (bounded; None on timeout)."""
        import select

        fd = proc.popen.stdout.fileno()
        chunks = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                continue
            data = os.read(fd, 1 << 16)
            if not data:
                return b"".join(chunks)
            chunks.append(data)

    def stderr_tail(self, proc: Proc, n: int = 600) -> str:
        f = proc.popen.stderr
        if f is None:
            return ""
        try:
            os.set_blocking(f.fileno(), False)
            data = f.read() or b""
        except (OSError, ValueError):
            return ""
        return data.decode(errors="replace")[-n:]


class PipeSink(threading.Thread):
    """Reads a child's stdout to the end: byte count and the times of the first and last byte."""

    def __init__(self, fileobj: Any, stop_after: float | None = None) -> None:
        super().__init__(daemon=True)
        self.fd = fileobj.fileno()
        self.bytes = 0
        self.first: float | None = None
        self.last: float | None = None
        self.stop_after = stop_after          # stop counting this long after the first byte
        self.counted_at_stop: int | None = None
        self.done = threading.Event()

    def run(self) -> None:
        fd = self.fd
        try:
            while True:
                data = os.read(fd, 1 << 20)
                if not data:
                    break
                now = time.monotonic()
                if self.first is None:
                    self.first = now
                self.bytes += len(data)
                self.last = now
                if self.stop_after is not None and self.counted_at_stop is None \
                        and now - self.first >= self.stop_after:
                    self.counted_at_stop = self.bytes
        except OSError:
            pass
        self.done.set()

    def seconds(self) -> float:
        return (self.last - self.first) if self.first is not None and self.last is not None else 0.0


@dataclass
class Result:
    """One measured figure set of one contender, as printed and written to RESULTS.md."""

    name: str
    values: dict[str, Any] = field(default_factory=dict)
    note: str = ""
