"""Coalesced wake-ups (toucli/busypoll.py) through the real commands: a bulk transfer on a
path with a 40 ms round trip sleeps before its waits (counted in ``instance.coalesced``)
and arrives intact; straight over loopback both ends measure a path too short for it."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
from contextlib import nullcontext
from pathlib import Path

import pytest

from faultlink import FaultLink, Impairment
from test_nc_e2e import ROOT, TOU, free_port, secure_env, tou, wait_listening
from toucli.busypoll import coalesce_delay

SIZE = 6_000_000


def _coalesced(stats: Path) -> tuple[int, float | None]:
    """Waits that slept, and the connection's last measured min RTT."""
    lines = [json.loads(ln) for ln in stats.read_text().split("\n") if ln.strip()]
    rtts = [c["min_rtt"] for ln in lines for c in ln["connections"] if c["min_rtt"] is not None]
    return lines[-1]["instance"]["coalesced"], rtts[-1] if rtts else None


@pytest.mark.slow
@pytest.mark.parametrize("one_way", [0.02, None])     # through a relay adding 20 ms each way; straight
def test_a_bulk_transfer_coalesces_its_wakeups_only_on_a_long_path(one_way, procs, tmp_path) -> None:
    data = random.Random(7).randbytes(SIZE)
    (tmp_path / "in").write_bytes(data)
    port = free_port()
    lstats, cstats = tmp_path / "listen.jsonl", tmp_path / "connect.jsonl"
    with (tmp_path / "out").open("wb") as out:
        lst = tou("listen", "-d", "--mtu", "1400", "--stats-json", str(lstats), "--stats-interval", "0.1",
                  "127.0.0.1", str(port), env=secure_env(), stdout=out)
    procs.append(lst)
    wait_listening(port, lst)
    relay = nullcontext() if one_way is None else FaultLink(("127.0.0.1", port), Impairment(delay=one_way))
    with relay as link, (tmp_path / "in").open("rb") as stdin:
        cli = subprocess.run([*TOU, "connect", "--mtu", "1400", "--stats-json", str(cstats), "--stats-interval",
                              "0.1", "127.0.0.1", str(port if link is None else link.port)], cwd=ROOT,
                             env=secure_env(), stdin=stdin, capture_output=True, timeout=90)
    assert cli.returncode == 0, cli.stderr.decode()
    assert lst.wait(timeout=30) == 0, lst.stderr.read().decode()
    assert hashlib.sha256((tmp_path / "out").read_bytes()).digest() == hashlib.sha256(data).digest()
    (receiver, receiver_rtt), (sender, sender_rtt) = _coalesced(lstats), _coalesced(cstats)
    if one_way is None:
        # The receiver times the path from its data's echoed timestamps, not only from the
        # handshake (which a loaded host can stretch past the threshold): coalescing is off.
        # At most the first flight, which echoes the SYN-ACK, may have slept.
        assert coalesce_delay(receiver_rtt) == 0.0 and coalesce_delay(sender_rtt) == 0.0, (receiver_rtt, sender_rtt)
        assert receiver <= 8 and sender <= 8, (receiver, sender)
    else:
        assert receiver > 20 and sender > 20, (receiver, sender)
    print(f"\none-way delay {one_way}: coalesced waits: receiver {receiver}, sender {sender}")
