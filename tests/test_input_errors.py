"""A read error on the input is not an end of input (issue 19, local faults).

Before, ``tou connect`` took a failed read of its stdin for EOF and closed the
connection with FIN: the listener exited 0 with a stream that looked complete. Now
the connection is reset, both ends say so and exit 1.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from test_nc_e2e import ENV, TOU, listener


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/PID/mem")
def test_an_input_that_fails_to_read_resets_the_connection(procs) -> None:
    lst, port = listener(procs)
    start = time.monotonic()
    # Another process's memory at offset 0 (never mapped): every read() fails with EIO.
    fd = os.open("/proc/self/mem", os.O_RDONLY)
    try:
        cli = subprocess.run([*TOU, "connect", "--insecure", "127.0.0.1", str(port)], stdin=fd,
                             capture_output=True, timeout=30, env=ENV)
    finally:
        os.close(fd)
    out, err = lst.communicate(timeout=15)
    took = time.monotonic() - start
    assert cli.returncode == 1, cli.stderr
    assert b"reading the input failed: Input/output error" in cli.stderr and b"was reset" in cli.stderr
    assert lst.returncode == 1 and b"connection reset by" in err, err     # told by the RST
    assert out == b""
    assert took < 10, took
