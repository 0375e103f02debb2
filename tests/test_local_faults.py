"""Local faults (issue 19, docs/RELIABILITY.md): the input cannot be read, the output
cannot be written. Neither is an end of stream: the connection is reset, so the peer
does not take a truncated stream for a complete one; both ends say so and exit 1.

Before, ``tou connect`` took a failed read of its stdin for EOF (the listener exited 0
with a stream that looked complete), exited 0 when the reader of its standard output
went away, and a full disk under ``tou listen > file`` ended in a traceback.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from test_nc_e2e import ENV, ROOT, TOU, free_port, listener, secure_env, tou, wait_listening


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


def test_standard_output_closed_early_fails_and_resets_the_sender(procs, tmp_path) -> None:
    """``tou connect ... | head -c 10``: the reader goes away; tou says so, exits 1,
    and the listener, in the middle of sending 20 MB, is reset and exits 1."""
    big = tmp_path / "big"
    big.write_bytes(os.urandom(20_000_000))
    port = free_port()
    with open(big, "rb") as stdin:
        lst = tou("listen", "127.0.0.1", str(port), env=secure_env(), stdin=stdin, stdout=subprocess.DEVNULL)
    procs.append(lst)
    wait_listening(port, lst)
    start = time.monotonic()
    cli = subprocess.Popen([*TOU, "connect", "127.0.0.1", str(port)], cwd=ROOT, env=secure_env(),
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    procs.append(cli)
    head = subprocess.run(["head", "-c", "10"], stdin=cli.stdout, capture_output=True, timeout=30)
    cli.stdout.close()
    err = cli.stderr.read().decode()
    assert cli.wait(timeout=30) == 1, err
    assert len(head.stdout) == 10
    assert "writing the output failed: its reader went away" in err and "was reset" in err, err
    _, lerr = lst.communicate(timeout=15)
    assert lst.returncode == 1 and b"connection reset by" in lerr, lerr
    assert b"Traceback" not in lerr and "Traceback" not in err
    took = time.monotonic() - start
    assert took < 10
    print(f"\nstdout closed: both ends exited 1 within {took:.2f} s of the client's start")


@pytest.mark.linux
@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None, reason="mounts a tmpfs (root)")
def test_a_full_disk_on_the_receiver_fails_and_resets_the_sender(procs, tmp_path) -> None:
    """``tou listen > file`` on a 1 MiB tmpfs, 5 MB sent: the listener says the disk is
    full, exits 1 (no traceback) and resets the sender, which exits 1 too."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True, timeout=10)
    try:
        port = free_port()
        with open(mnt / "out.bin", "wb") as out:
            lst = tou("listen", "-d", "127.0.0.1", str(port), env=secure_env(), stdout=out)
        procs.append(lst)
        wait_listening(port, lst)
        start = time.monotonic()
        cli = subprocess.run([*TOU, "connect", "127.0.0.1", str(port)], cwd=ROOT, env=secure_env(),
                             input=os.urandom(5_000_000), capture_output=True, timeout=30)
        _, lerr = lst.communicate(timeout=15)
        took = time.monotonic() - start
        assert lst.returncode == 1, lerr
        assert b"writing the output failed: No space left on device" in lerr and b"was reset" in lerr, lerr
        assert b"Traceback" not in lerr
        assert cli.returncode == 1 and b"connection reset by" in cli.stderr, cli.stderr
        assert took < 10, took
        print(f"\ndisk full: both ends exited 1 within {took:.2f} s of the client's start")
    finally:
        subprocess.run(["umount", "-l", str(mnt)], timeout=10)
