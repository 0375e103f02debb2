"""Reliability matrix (issue 19), hostile rows: a real ``tou listen`` under a datagram fuzz
and under a ClientHello flood, with a real ``tou connect`` session through it.

The hostile senders run as their own process (``tests/hostile.py``). By default they
send the issue's counts, 1,000,000 datagrams and 100,000 ClientHellos (about 35 s and
10 s on the 2-core test VM); ``TOU_FUZZ_DATAGRAMS`` and ``TOU_FLOOD_HELLOS`` change them,
``TOU_FLOOD_RATE`` the flood's ClientHellos per second (0: unpaced).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hostile import KINDS, WATCHED, Relay, rss_kib, snapshot
from test_nc_e2e import ENV, ROOT, free_port, secure_env, tou, wait_listening

HOSTILE = Path(__file__).resolve().parent / "hostile.py"
FUZZ_DATAGRAMS = int(os.environ.get("TOU_FUZZ_DATAGRAMS", "1000000"))
FLOOD_HELLOS = int(os.environ.get("TOU_FLOOD_HELLOS", "100000"))
# ClientHellos per second. One Python sender reaches some 200,000/s on loopback, more than
# any tou listener reads (the kernel then drops datagrams at random, the real client's
# too); 20,000/s is past what a listener answered before HelloVerifyRequests were written
# without OpenSSL (about 15,000/s on the 2-core test VM), and half of what it answers now.
FLOOD_RATE = float(os.environ.get("TOU_FLOOD_RATE", "20000"))
RSS_GROWTH_LIMIT_KIB = 8 << 10        # what the listener may grow by while attacked (measured: < 1 MiB)
CONNECT_BUDGET = 2.0                  # issue 19: a real client connects and is answered within 2 s


def read_line(proc: subprocess.Popen, timeout: float, what: str) -> str:
    """The next line of ``proc``'s stdout, or fail after ``timeout`` s (or if it exits)."""
    deadline = time.monotonic() + timeout
    buf = b""
    fd = proc.stdout.fileno()
    while time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], 0.2)
        if r:
            chunk = os.read(fd, 1)
            if not chunk:
                break
            buf += chunk
            if chunk == b"\n":
                return buf.decode()
    err = proc.stderr.read().decode() if proc.poll() is not None else ""
    raise AssertionError(f"no {what} within {timeout} s (got {buf!r}); {err}")


def hostile(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(HOSTILE), *args], cwd=ROOT, env=ENV,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def secure_listener(procs, tmp_path: Path, name: str, *args: str, **kw) -> tuple[subprocess.Popen, int, str]:
    """A shared-secret ``tou listen -k`` on 127.0.0.1 with its control socket under tmp_path."""
    env = {**secure_env(), "XDG_RUNTIME_DIR": str(tmp_path)}
    port = free_port()
    lst = tou("listen", "-k", "--name", name, "--stats-interval", "0.1", *args, "127.0.0.1", str(port),
              env=env, **kw)
    procs.append(lst)
    wait_listening(port, lst)
    control = tmp_path / "tou" / f"{name}.sock"
    deadline = time.monotonic() + 10
    while not control.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert control.exists(), "no control socket"
    return lst, port, str(control)


def stop_listener(lst: subprocess.Popen) -> str:
    lst.send_signal(signal.SIGTERM)
    _, err = lst.communicate(timeout=15)
    text = err.decode(errors="replace")
    assert lst.returncode == 0, text
    assert "Traceback" not in text, text
    return text


# ------------------------------------------------------------------- datagram fuzz
@pytest.mark.slow
def test_datagram_fuzz_leaves_the_live_transfer_intact_and_counts_every_kind(procs, tmp_path) -> None:
    """Issue 19, datagram fuzz: while a session carries a stream, the listener gets
    FUZZ_DATAGRAMS datagrams of every kind in hostile.KINDS (random bytes, truncated and
    bit-flipped GUE headers and session IDs, records of the live session with bad tags,
    handshake records, replays of the client's own records, 65507-byte and empty
    datagrams), from other sockets and from the client's own address. The stream arrives
    intact, nothing crashes or prints a traceback, RSS stays bounded, and each kind shows
    up, datagram for datagram, in the drop counter hostile.KINDS names for it (measured
    kind by kind, docs/STATS.md), and in no other."""
    out_path = tmp_path / "received"
    with open(out_path, "wb") as out:
        lst, port, control = secure_listener(procs, tmp_path, "fuzzed", stdout=out)
    fz = hostile("fuzz", "--target", f"127.0.0.1:{port}", "--control", control, "--pid", str(lst.pid),
                 "--count", str(FUZZ_DATAGRAMS))
    procs.append(fz)
    relay_port = int(read_line(fz, 10, "relay port").split()[1])
    cli = tou("connect", "127.0.0.1", str(relay_port), env=secure_env(), stdin=subprocess.PIPE,
              stdout=subprocess.DEVNULL)
    procs.append(cli)

    # The stream: pseudo-random bytes at about 4 MB/s, on until the fuzz is over (and 4 MB at least).
    digest = hashlib.sha256()
    sent = [0]
    stop = threading.Event()

    def feed() -> None:
        gen = random.Random(1919)
        try:
            while not (stop.is_set() and sent[0] >= 4_000_000):
                chunk = gen.randbytes(1 << 16)
                cli.stdin.write(chunk)
                cli.stdin.flush()
                digest.update(chunk)
                sent[0] += len(chunk)
                time.sleep(0.016)
            cli.stdin.close()
        except (BrokenPipeError, ValueError):
            pass

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        result = json.loads(read_line(fz, 60 + FUZZ_DATAGRAMS / 2000, "fuzz result"))
    finally:
        stop.set()
    feeder.join(timeout=60)
    assert cli.wait(timeout=60) == 0, cli.stderr.read().decode()
    assert b"Traceback" not in cli.stderr.read()
    deadline = time.monotonic() + 30
    while out_path.stat().st_size < sent[0] and time.monotonic() < deadline:
        time.sleep(0.05)
    received = hashlib.sha256(out_path.read_bytes()).hexdigest()
    fz.stdin.close()
    fz.wait(timeout=15)
    final = snapshot(control)
    err = stop_listener(lst)

    print(f"\nfuzz: {result['count']} datagrams in {result['send_seconds']} s of sending "
          f"({result['rate']}/s; {result['seconds']} s with the pauses between kinds), "
          f"kernel drops {result['kernel_drops']}, pacer waits {result['pacer_waits']}")
    print(f"listener RSS {result['rss_kib_before']} KiB -> {result['rss_kib_after']} KiB; "
          f"stream {sent[0]} bytes, SHA-256 {'intact' if received == digest.hexdigest() else 'DIFFERS'}")
    for ph in result["phases"]:
        moved = {k: v for k, v in ph["deltas"].items() if v}
        print(f"  {ph['kind']:14} sent {ph['sent']:7}  kernel drops {ph['kernel_drops']:5}  counted {moved}")
    print(f"  drops at the end: {final['drops']}")

    assert received == digest.hexdigest(), (out_path.stat().st_size, sent[0])
    assert "Traceback" not in err
    assert result["rss_kib_after"] - result["rss_kib_before"] < RSS_GROWTH_LIMIT_KIB
    assert result["kernel_drops"] <= result["count"] // 100      # the pacing kept the socket from overflowing
    assert [ph["kind"] for ph in result["phases"]] == list(KINDS)
    for ph in result["phases"]:
        kd, n = ph["kernel_drops"], ph["sent"]
        counted = ph["deltas"][ph["counter"]]
        assert n - kd <= counted <= n, ph
        others = {k: v for k, v in ph["deltas"].items() if k != ph["counter"] and v}
        assert not others, ph
    assert set(WATCHED) >= {c for c, _ in KINDS.values()}


# ---------------------------------------------------------------- handshake flood
def capture_client_hello(tmp_path: Path) -> Path:
    """The first datagram of a real ``tou connect`` (a ClientHello, session ID 0), caught
    by a socket that never answers; written as hex to a file."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as hole:
        hole.bind(("127.0.0.1", 0))
        hole.settimeout(15)
        cli = subprocess.Popen([sys.executable, "-m", "toucli", "connect", "-w", "2", "127.0.0.1",
                                str(hole.getsockname()[1])], cwd=ROOT, env=secure_env(),
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            data, _ = hole.recvfrom(65536)
        finally:
            cli.kill()
            cli.wait(timeout=10)
    path = tmp_path / "hello.hex"
    path.write_text(data.hex())
    return path


def connect_through_relay(port: int, message: bytes) -> tuple[float, float]:
    """One real ``tou connect`` (through a relay, which sees its first datagram) that sends
    ``message`` to an echoing listener. Returns (seconds from the client's first datagram
    to the echo, seconds from the process start to the echo)."""
    relay = Relay(("127.0.0.1", port)).start()
    try:
        start = time.monotonic()
        cli = tou("connect", "127.0.0.1", str(relay.port), env=secure_env(), stdin=subprocess.PIPE)
        try:
            cli.stdin.write(message)
            cli.stdin.flush()
            line = read_line(cli, 15, "echo")
            done = time.monotonic()
            assert line.encode() == message
            cli.stdin.close()
            cli.stdin = None
            _, err = cli.communicate(timeout=15)
            assert cli.returncode == 0, err
            assert b"Traceback" not in err
        finally:
            if cli.poll() is None:
                cli.kill()
                cli.wait(timeout=10)
        assert relay.first_datagram is not None
        return done - relay.first_datagram, done - start
    finally:
        relay.stop()


@pytest.mark.slow
def test_client_hello_flood_keeps_no_state_and_a_real_client_connects(procs, tmp_path) -> None:
    """Issue 19, handshake flood: FLOOD_HELLOS copies of a real ClientHello (fresh random
    and sequence number each) from thousands of (address, port) sources in 127.0.0.0/8.
    Each gets a HelloVerifyRequest and nothing else: the listener starts no handshake and
    keeps no session for them (stats), its RSS stays flat, and a real client, started
    during the flood, connects and gets its message echoed within 2 s."""
    lst, port, control = secure_listener(procs, tmp_path, "flooded", "-c", "cat")
    hello = capture_client_hello(tmp_path)
    quiet_connect, quiet_total = connect_through_relay(port, b"before the flood\n")

    time.sleep(0.3)
    snap0 = snapshot(control)
    rss0 = rss_kib(lst.pid)
    fl = hostile("flood", "--target", f"127.0.0.1:{port}", "--hello", str(hello), "--pid", str(lst.pid),
                 "--count", str(FLOOD_HELLOS), "--rate", str(FLOOD_RATE), "--until-eof")
    procs.append(fl)
    read_line(fl, 10, "flood start")
    time.sleep(0.5)                                  # in full swing
    flood_connect, flood_total = connect_through_relay(port, b"during the flood\n")
    fl.stdin.close()
    result = json.loads(read_line(fl, 120 + FLOOD_HELLOS / 1000, "flood result"))
    fl.wait(timeout=15)
    time.sleep(0.5)
    snap1 = snapshot(control)
    rss1 = rss_kib(lst.pid)
    err = stop_listener(lst)

    sec0, sec1 = snap0["secure"], snap1["secure"]
    hvr = sec1["hello_verify_sent"] - sec0["hello_verify_sent"]
    started = sec1["handshakes_started"] - sec0["handshakes_started"]
    print(f"\nflood: {result['sent']} ClientHellos in {result['seconds']} s ({result['rate']}/s) from "
          f"{result['sources']} sources on {result['addresses']} addresses; kernel drops {result['kernel_drops']}; "
          f"HelloVerifyRequests sent {hvr}, received back {result['hello_verify_received']}")
    print(f"listener RSS {rss0} -> {rss1} KiB (flood alone: {result['rss_kib_before']} -> "
          f"{result['rss_kib_after']}); sessions {len(snap0['peers'])} -> {len(snap1['peers'])}; "
          f"handshakes started during the flood {started}")
    print(f"real client: echo {flood_connect:.3f} s after its first datagram ({flood_total:.3f} s after its start) "
          f"during the flood; {quiet_connect:.3f} s ({quiet_total:.3f} s) before it")

    assert "Traceback" not in err
    assert result["sent"] >= FLOOD_HELLOS
    assert result["sources"] >= FLOOD_HELLOS // 8
    assert flood_connect < CONNECT_BUDGET
    # No state for a ClientHello without a valid cookie (RFC 6347 §4.2.1): the one
    # handshake started is the real client's, the flood only drew HelloVerifyRequests.
    assert started == 1
    assert result["sent"] - result["kernel_drops"] <= hvr <= result["sent"] + 4
    # Sessions: the real clients' (127.0.0.1, through the relay; the server may keep a
    # closed client's session until it times out), none from the flood's addresses.
    assert len(snap1["peers"]) <= len(snap0["peers"]) + 1
    assert all(p["address"].startswith("127.0.0.1:") for p in snap1["peers"]), snap1["peers"]
    assert rss1 - rss0 < RSS_GROWTH_LIMIT_KIB
