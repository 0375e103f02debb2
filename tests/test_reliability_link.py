"""Reliability matrix (docs/RELIABILITY.md): the real commands across a faulty path.

``tou connect`` reaches ``tou listen`` through :class:`faultlink.FaultLink`, a UDP
relay on loopback that loses, reorders, duplicates, corrupts or delays datagrams
(seeded), and that can move the client to a new port or address, or replay its
datagrams from elsewhere, mid-transfer. Every run is a shared-secret DTLS session;
the client sends a random file, the listener's program reads it to EOF and answers
with its SHA-256 and a reply of its own, which the client checks byte for byte.

``TOU_LINK_SEEDS`` sets the seeds per kind of impairment (default 20).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from faultlink import Impairment, FaultLink
from reply_after_eof import payload
from procs import feed
from test_nc_e2e import ROOT, TOU, free_port, secure_env, tou, wait_listening

SIZE = 1_000_000            # bytes each way
MTU = "1400"                # Ethernet-sized datagrams: many per run, as on a real path
SEEDS = range(1, int(os.environ.get("TOU_LINK_SEEDS", "20")) + 1)
KINDS = {
    "loss 10%": Impairment(loss=0.10),
    "reorder 5%": Impairment(reorder=0.05),
    "duplicate 1%": Impairment(duplicate=0.01),
    "corrupt 0.1%": Impairment(corrupt=0.001),
    "jitter 4ms": Impairment(jitter=0.004),
}
REPLY = [sys.executable, str(ROOT / "tests" / "reply_after_eof.py")]


def start_listener(procs, seed: int, *extra: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    prog = " ".join([*REPLY, str(SIZE), str(seed)])
    lst = tou("listen", "--mtu", MTU, "-e", prog, *extra, "127.0.0.1", str(port), env=secure_env())
    procs.append(lst)
    wait_listening(port, lst)
    return lst, port


def check_reply(out: bytes, sent: bytes, seed: int) -> None:
    """The listener read exactly ``sent`` (its SHA-256 came back) and its reply arrived whole."""
    line, _, rest = out.partition(b"\n")
    assert line.decode() == hashlib.sha256(sent).hexdigest(), "the listener did not get the client's bytes"
    assert len(rest) == SIZE, f"reply {len(rest)} of {SIZE} bytes"
    assert hashlib.sha256(rest).digest() == hashlib.sha256(payload(SIZE, seed)).digest(), "reply corrupted"


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", KINDS)
def test_every_byte_crosses_an_impaired_link_both_ways(kind, seed, procs, tmp_path) -> None:
    lst, port = start_listener(procs, seed)
    sent = random.Random(-seed).randbytes(SIZE)
    (tmp_path / "in").write_bytes(sent)
    start = time.monotonic()
    with FaultLink(("127.0.0.1", port), KINDS[kind], seed=seed) as link, open(tmp_path / "in", "rb") as stdin:
        cli = subprocess.run([*TOU, "connect", "--mtu", MTU, "127.0.0.1", str(link.port)], cwd=ROOT,
                             env=secure_env(), stdin=stdin, capture_output=True, timeout=90)
        counts = {way: vars(c) for way, c in link.counts.items()}
    took = time.monotonic() - start
    assert cli.returncode == 0, cli.stderr.decode()
    check_reply(cli.stdout, sent, seed)
    assert lst.wait(timeout=30) == 0, lst.stderr.read().decode()
    print(f"\n{kind} seed {seed}: {took:.2f} s, path {json.dumps(counts)}")


CLOSE_ALERT_DATAGRAM = 12 + 13 + 8 + 2 + 16     # GUE, record header, nonce, alert, tag
REPLY_SMALL = 2000                              # fits the first window: needs no ACK to leave


def _exit_with_last_acks_lost(procs, tmp_path, client_args: tuple[str, ...] = (), delay: float = 0.5):
    """The listener answers after a pause; from then on every client datagram but the
    smallest (sealed alerts) is lost, so the client's ACKs of the reply and its FIN
    never arrive. Returns the client's result, the listener and how long it took to exit."""
    ready = tmp_path / "eof-read"
    port = free_port()
    prog = " ".join([*REPLY, str(REPLY_SMALL), "5", str(ready), str(delay)])
    lst = tou("listen", "-e", prog, "127.0.0.1", str(port), env=secure_env())
    procs.append(lst)
    wait_listening(port, lst)
    sent = os.urandom(100_000)
    with FaultLink(("127.0.0.1", port)) as link:
        cli = subprocess.Popen([*TOU, "connect", *client_args, "127.0.0.1", str(link.port)], cwd=ROOT,
                               env=secure_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
        procs.append(cli)
        cli.stdin.write(sent)
        cli.stdin.close()
        cli.stdin = None
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert time.monotonic() < deadline and lst.poll() is None, "the listener never read EOF"
            time.sleep(0.01)
        link.keep_c2s = lambda d: len(d) <= CLOSE_ALERT_DATAGRAM
        out, err = cli.communicate(timeout=30)
        t_client = time.monotonic()
        lst.wait(timeout=40)
        took = time.monotonic() - t_client
    return sent, cli.returncode, out, err, lst, took


@pytest.mark.slow
def test_the_listener_ends_cleanly_when_the_clients_last_acks_are_lost(procs, tmp_path) -> None:
    """Without TIME-WAIT lingering in the client, the ACK of the listener's FIN is the
    client's last word; lost, the listener waited out a keepalive (30 s) and exited 1.
    The client's close_notify (three copies) tells it the exchange completed."""
    sent, rc, out, err, lst, took = _exit_with_last_acks_lost(procs, tmp_path)
    assert rc == 0, err.decode()
    line, _, rest = out.partition(b"\n")
    assert line.decode() == hashlib.sha256(sent).hexdigest()
    assert rest == payload(REPLY_SMALL, 5)
    assert lst.returncode == 0, lst.stderr.read().decode()
    assert took < 3.0, took
    print(f"\nlast ACKs lost: the listener exited 0 {took:.2f} s after the client")


@pytest.mark.slow
def test_a_client_that_quits_early_resets_the_listener_even_if_its_rst_is_lost(procs, tmp_path) -> None:
    """``-q 1`` quits a second after EOF, before the reply: the client resets the
    connection, and its RST is lost; its user_canceled alert ends the listener's
    connection at once (exit 1, saying why) instead of after a keepalive timeout."""
    sent, rc, out, err, lst, took = _exit_with_last_acks_lost(procs, tmp_path, ("-q", "1"), delay=2.0)
    assert rc == 0, err.decode()                     # -q: quitting is what the user asked for
    assert out == b""
    assert lst.returncode == 1
    assert b"the peer exited with connections unfinished" in lst.stderr.read()
    assert took < 2.5, took
    print(f"\nRST lost: the listener exited 1 {took:.2f} s after the client")


def _last_stats(path: Path) -> dict:
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    assert lines, "no statistics written"
    return json.loads(lines[-1])


def _moving_transfer(procs, tmp_path, size: int, during) -> tuple[bytes, Path, dict, FaultLink]:
    """``size`` random bytes fed to ``tou connect`` over 3 s, through a FaultLink, into
    ``tou listen -d > file``; ``during(link, written)`` is called as the file grows."""
    data = os.urandom(size)
    out, stats = tmp_path / "out.bin", tmp_path / "stats.jsonl"
    port = free_port()
    with open(out, "wb") as sink:
        lst = tou("listen", "-d", "--stats-json", str(stats), "--stats-interval", "0.1",
                  "127.0.0.1", str(port), env=secure_env(), stdout=sink)
    procs.append(lst)
    wait_listening(port, lst)
    link = FaultLink(("127.0.0.1", port), capture=400)
    try:
        cli = subprocess.Popen([*TOU, "connect", "127.0.0.1", str(link.port)], cwd=ROOT, env=secure_env(),
                               stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(cli)
        feed(cli, data, 3.0)
        deadline = time.monotonic() + 60
        while cli.poll() is None and time.monotonic() < deadline:
            during(link, out.stat().st_size)
            time.sleep(0.01)
        assert cli.wait(timeout=30) == 0, cli.stderr.read().decode()
        assert lst.wait(timeout=30) == 0, lst.stderr.read().decode()
    finally:
        link.close()
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(data).digest(), "stream corrupted"
    return data, out, _last_stats(stats), link


@pytest.mark.slow
def test_the_connection_survives_the_client_moving_to_a_new_port_then_a_new_address(procs, tmp_path) -> None:
    """NAT rebinding, then a new address, mid-transfer: the relay sends from a new socket
    (the old one closed: what the listener still sends there is lost). The listener
    moves its replies only after an authenticated datagram from the new address."""
    moves: list[tuple[str, int]] = []

    def during(link: FaultLink, written: int) -> None:
        if not moves and written > 2_000_000:
            moves.append(link.rebind("127.0.0.1"))          # new port
        elif len(moves) == 1 and written > 6_000_000:
            moves.append(link.rebind("127.0.0.2"))          # new address
    _, _, snap, _ = _moving_transfer(procs, tmp_path, 12_000_000, during)
    assert len(moves) == 2 and moves[1][0] == "127.0.0.2"
    assert snap["secure"]["address_changes"] == 2, snap["secure"]
    print(f"\nmoved to {moves}; listener counters: {snap['secure']}")


def _forged(datagram: bytes) -> bytes:
    """A record number never used (after the 12-byte GUE header: type, version, epoch,
    then 6 bytes of number) and one bit of the tag flipped: fails authentication."""
    b = bytearray(datagram)
    seq = int.from_bytes(b[17:23], "big") + 1_000_000
    b[17:23] = seq.to_bytes(6, "big")
    b[-1] ^= 1
    return bytes(b)


@pytest.mark.slow
def test_records_replayed_from_another_address_do_not_move_the_session(procs, tmp_path) -> None:
    """An attacker on the path sends 300 of the client's records, already delivered, from
    127.0.0.3, and 300 with a new record number and a changed tag from 127.0.0.4: each is
    dropped (a replay; a failed tag), nothing is sent to the attackers, the session
    stays where it is and the transfer is intact."""
    replays = []

    def during(link: FaultLink, written: int) -> None:
        if not replays and written > 4_000_000 and len(link.captured) >= 400:
            records = link.captured[100:400]
            replays.append(link.replay_from("127.0.0.3", records))
            replays.append(link.replay_from("127.0.0.4", [_forged(r) for r in records]))
    _, _, snap, _ = _moving_transfer(procs, tmp_path, 10_000_000, during)
    assert replays, "nothing was replayed"
    for rp in replays:
        assert rp.received == [], f"the listener sent {len(rp.received)} datagrams to an attacker"
    assert snap["secure"]["address_changes"] == 0, snap["secure"]
    assert snap["secure"]["drop_replay"] >= 300 and snap["secure"]["drop_auth"] >= 300, snap["secure"]
