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
