"""Reliability matrix (docs/RELIABILITY.md): peers that die, restart or come in hundreds.

All processes are real ``tou`` commands on loopback with a shared secret. Where a
peer is killed the traffic goes through :class:`faultlink.FaultLink`, so no ICMP
port-unreachable reaches the survivor (on a real path the dead host sends none):
what ends the survivor is tou's own liveness rules, and the test states the bound.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from faultlink import FaultLink
from test_forward_e2e import client as forward_client
from test_forward_e2e import free_port as free_tcp_port
from test_forward_e2e import server as forward_server
from test_forward_e2e import wait_bound
from test_nc_e2e import ROOT, TOU, free_port, secure_env, tou, wait_listening

KEEPALIVE = 6.0
# Both ends run with --keepalive 6: a silent peer is declared dead after 3 s of quiet
# plus 3 probes 1 s apart; data unacknowledged for max(6, 10) s fails the connection
# (the user timeout); a client whose session hears nothing for 8 s gives it up.
# With the default --keepalive 30 the bounds are 30 s and max(30, 10) s.
DEAD_BOUND = 12.0


def _stream(proc: subprocess.Popen, stop: threading.Event) -> threading.Thread:
    """Write 64 KiB blocks to ``proc``'s stdin until ``stop`` or a broken pipe."""
    def run() -> None:
        block = os.urandom(1 << 16)
        try:
            while not stop.is_set():
                proc.stdin.write(block)
                proc.stdin.flush()
                time.sleep(0.005)
        except (BrokenPipeError, ValueError, OSError):
            pass
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["connect", "listen"])
def test_a_peer_killed_mid_transfer_ends_the_other_within_the_bound(victim, procs) -> None:
    """kill -9 one end while data flows: the other says the peer is gone and exits 1
    within :data:`DEAD_BOUND` s; it does not hang."""
    port = free_port()
    ka = ("--keepalive", str(KEEPALIVE))
    lst = tou("listen", "-d", *ka, "127.0.0.1", str(port), env=secure_env(), stdout=subprocess.DEVNULL)
    procs.append(lst)
    wait_listening(port, lst)
    stop = threading.Event()
    with FaultLink(("127.0.0.1", port)) as link:
        cli = subprocess.Popen([*TOU, "connect", *ka, "127.0.0.1", str(link.port)], cwd=ROOT, env=secure_env(),
                               stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(cli)
        feeder = _stream(cli, stop)
        deadline = time.monotonic() + 20
        while link.counts["c2s"].seen < 500:                 # data is flowing
            assert time.monotonic() < deadline and cli.poll() is None and lst.poll() is None
            time.sleep(0.02)
        dead, survivor = (cli, lst) if victim == "connect" else (lst, cli)
        dead.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        try:
            # Not communicate(): it would close the client's stdin, and an end of input
            # whose data was all acknowledged before the kill is a clean end (LAST_ACK_GRACE).
            survivor.wait(timeout=DEAD_BOUND + 20)
        finally:
            stop.set()
        took = time.monotonic() - killed
        feeder.join(timeout=5)
        err = survivor.stderr.read()
    text = err.decode()
    assert survivor.returncode == 1, text
    assert "Traceback" not in text
    assert any(w in text for w in ("peer unresponsive", "peer not responding", "timed out")), text
    assert took < DEAD_BOUND, f"{took:.1f} s: {text}"
    print(f"\nkilled {victim}; the other exited 1 after {took:.1f} s: {text.strip()}")


def _echo_server(port: int, stop: threading.Event) -> threading.Thread:
    """A TCP echo server on 127.0.0.1:``port`` (one thread per connection)."""
    srv = socket.create_server(("127.0.0.1", port))
    srv.settimeout(0.2)

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def run() -> None:
        with srv:
            while not stop.is_set():
                try:
                    conn, _ = srv.accept()
                except socket.timeout:
                    continue
                threading.Thread(target=serve, args=(conn,), daemon=True).start()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _echo_once(port: int, msg: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(msg)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while data := s.recv(65536):
            got += data
        return got


RESTART_BOUND = 15.0     # the session's 8 s of silence (dead_after), then a new handshake


def _client_story(log: Path, stats: Path) -> str:
    """What the -L client logged, its secure-session counters and its connections' states
    at the last statistics snapshot: the failure message of a test that waited in vain."""
    snap = _last_snapshot(stats) or {}
    conns = [(c.get("id"), c.get("state"), c.get("age")) for c in snap.get("connections") or []]
    return (f"\nclient log:\n{log.read_text(errors='replace')[-3000:]}\nsecure: {snap.get('secure')}"
            f"\nconnections (id, state, age): {conns}")


@pytest.mark.slow
def test_a_forward_server_restart_resets_old_connections_and_new_ones_work(procs, tmp_path) -> None:
    """``tou forward --serve`` is killed and started again while a ``-L`` client runs, with
    a forwarded connection open: that connection is reset (the application sees an
    error, not an end of stream), new connections work again, both within
    :data:`RESTART_BOUND` s, and the client never exits."""
    env = secure_env()
    stop = threading.Event()
    echo_port, lport = free_tcp_port(), free_tcp_port()
    _echo_server(echo_port, stop)
    log, stats = tmp_path / "client.log", tmp_path / "client.jsonl"
    try:
        srv, udp = forward_server(procs, env=env, secure=True)
        with log.open("wb") as err:      # a file, not a pipe that nobody reads while it runs
            cli = forward_client(procs, udp, "-v", "--stats-json", str(stats), "--stats-interval", "0.5",
                                 "-L", f"{lport}:127.0.0.1:{echo_port}", wait_tcp=(lport,), env=env,
                                 secure=True, stderr=err)
        assert _echo_once(lport, b"before") == b"before"
        old = socket.create_connection(("127.0.0.1", lport), timeout=5)
        old.sendall(b"ping")
        assert old.recv(16) == b"ping"                      # open and working through the tunnel
        srv.kill()
        srv.wait(timeout=10)
        restarted = time.monotonic()
        forward_server(procs, port=udp, env=env, secure=True)
        old.settimeout(RESTART_BOUND + 10)
        try:
            while old.recv(65536):
                pass
            pytest.fail("the old connection ended cleanly, it was not reset" + _client_story(log, stats))
        except ConnectionResetError:
            pass
        except TimeoutError:
            pytest.fail("the old connection was neither reset nor closed" + _client_story(log, stats))
        reset_after = time.monotonic() - restarted
        old.close()
        works_after = None
        while time.monotonic() - restarted < RESTART_BOUND + 10:
            try:
                if _echo_once(lport, b"after", timeout=3) == b"after":
                    works_after = time.monotonic() - restarted
                    break
            except OSError:
                time.sleep(0.1)
        assert works_after is not None, "no new connection worked after the restart" + _client_story(log, stats)
        assert reset_after < RESTART_BOUND and works_after < RESTART_BOUND, \
            f"{reset_after:.1f} s, {works_after:.1f} s" + _client_story(log, stats)
        assert cli.poll() is None, _client_story(log, stats)
        print(f"\nold connection reset {reset_after:.1f} s, a new one worked {works_after:.1f} s after the restart")
    finally:
        stop.set()


PEERS = int(os.environ.get("TOU_PEERS", "200"))


def _last_snapshot(path: Path) -> dict | None:
    try:
        lines = [ln for ln in path.read_text().split("\n")[:-1] if ln.strip()]   # whole lines only
    except OSError:
        return None
    return json.loads(lines[-1]) if lines else None


@pytest.mark.slow
def test_many_clients_at_once_to_one_listener(procs, tmp_path) -> None:
    """:data:`PEERS` ``tou connect`` processes connect to one ``tou listen -k -m PEERS -c
    sha256sum``; once the listener holds all :data:`PEERS` connections, each client gets
    its own 32 KiB on stdin at the same moment, and must get back the SHA-256 of exactly
    that. The listener's peak RSS and CPU are printed."""
    from toucli.keys import PrivateKey

    server_key, client_key = PrivateKey.generate(), PrivateKey.generate()
    server_key.save(tmp_path / "srv.key")
    client_key.save(tmp_path / "cli.key")
    (tmp_path / "authorized").write_text(client_key.public.text() + " fleet\n")
    stats = tmp_path / "stats.jsonl"
    port = free_port()
    lst = tou("listen", "-k", "-m", str(PEERS), "-c", "sha256sum", "--key-file", str(tmp_path / "srv.key"),
              "--authorized-keys", str(tmp_path / "authorized"), "--stats-json", str(stats),
              "--stats-interval", "0.5", "127.0.0.1", str(port))
    procs.append(lst)
    wait_listening(port, lst)
    payloads = [hashlib.sha256(i.to_bytes(4, "big")).digest() * 1024 for i in range(PEERS)]
    clients = []
    for _ in range(PEERS):
        p = subprocess.Popen([*TOU, "connect", "-w", "120", "--key-file", str(tmp_path / "cli.key"),
                              "--peer-key", server_key.public.text(), "127.0.0.1", str(port)],
                             cwd=ROOT, env=secure_env(""), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        procs.append(p)
        clients.append(p)
    deadline = time.monotonic() + 240
    while True:
        snap = _last_snapshot(stats)
        if snap is not None and snap["totals"]["connections"] >= PEERS:
            break
        assert time.monotonic() < deadline, f"only {snap and snap['totals']['connections']} of {PEERS} connected"
        assert all(p.poll() is None for p in clients), "a client exited before sending"
        time.sleep(0.2)
    start = time.monotonic()
    results: list = [None] * PEERS

    def talk(i: int) -> None:
        results[i] = clients[i].communicate(payloads[i], timeout=120)
    threads = [threading.Thread(target=talk, args=(i,)) for i in range(PEERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=150)
    took = time.monotonic() - start
    failures = [(i, p.returncode, results[i] and results[i][1].decode()[-300:]) for i, p in enumerate(clients)
                if p.returncode != 0 or results[i] is None
                or results[i][0].split()[:1] != [hashlib.sha256(payloads[i]).hexdigest().encode()]]
    status = Path(f"/proc/{lst.pid}/status").read_text()
    peak_kb = int(next(ln for ln in status.splitlines() if ln.startswith("VmHWM:")).split()[1])
    fields = Path(f"/proc/{lst.pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    lst.send_signal(signal.SIGTERM)
    lst.communicate(timeout=20)
    assert not failures, f"{len(failures)} of {PEERS} clients failed, first: {failures[0]}"
    print(f"\n{PEERS} clients connected at once, then all sent together: all intact in {took:.1f} s; "
          f"listener peak RSS {peak_kb / 1024:.0f} MiB, CPU {cpu:.1f} s in all")
