"""toucli.heap: freed read buffers are reused, not faulted in again (glibc only)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from procs import ENV, ROOT

# A send buffer filling with 256 KiB reads (8 MiB) and then acknowledged, 40 times over:
# the page faults it costs, in a fresh interpreter.
_CHURN = """
import ctypes, os, resource, sys
ctypes.CDLL(None).prctl(41, 1, 0, 0, 0)      # PR_SET_THP_DISABLE: count 4 KiB pages, not huge ones
from toucli.heap import keep_freed_memory
if sys.argv[1] == "on" and not keep_freed_memory():
    sys.exit("mallopt refused")
fd = os.open("/dev/zero", os.O_RDONLY)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):
    held = [os.read(fd, 256 << 10) for _ in range(32)]
    del held
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _CHURN, mode], capture_output=True, text=True,
                         env=ENV, cwd=ROOT, timeout=60, check=True)
    return int(out.stdout)


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_freed_read_buffers_are_reused_instead_of_faulted_in_again() -> None:
    pages_moved = 40 * 32 * 64                    # 4 KiB pages the reads fill
    off, on = _faults("off"), _faults("on")
    assert on < pages_moved // 20, on             # kept: only the first round faults
    assert off > 4 * on, (off, on)                # glibc's defaults: much of it fresh each round
