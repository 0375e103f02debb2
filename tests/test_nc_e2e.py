"""``tou listen`` / ``tou connect`` as real processes over loopback UDP (cleartext, --insecure).

Every process gets a timeout; every test stops by itself.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOU = [sys.executable, "-m", "toucli"]
ENV = {k: v for k, v in os.environ.items() if not k.startswith("TOU_")}
ENV["XDG_CONFIG_HOME"] = "/nonexistent-tou-test-config"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tou(*args: str, **kw) -> subprocess.Popen:
    kw.setdefault("stdin", subprocess.DEVNULL)
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    kw.setdefault("env", ENV)
    return subprocess.Popen([*TOU, *args], cwd=ROOT, **kw)


def run(*args: str, input: bytes | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([*TOU, *args], cwd=ROOT, env=ENV, input=input, capture_output=True,
                          timeout=timeout, stdin=None if input is not None else subprocess.DEVNULL)


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 10) -> None:
    """Until a UDP socket is bound to ``port`` (read from /proc/net/udp{,6})."""
    deadline = time.monotonic() + timeout
    hexport = f":{port:04X} "
    while time.monotonic() < deadline:
        for name in ("/proc/net/udp", "/proc/net/udp6"):
            try:
                if hexport in Path(name).read_text():
                    return
            except OSError:
                pass
        if proc.poll() is not None:
            raise AssertionError(f"listener exited {proc.returncode}: {proc.stderr.read().decode()}")
        time.sleep(0.02)
    raise AssertionError("listener did not bind")


def close_stdin(p: subprocess.Popen) -> None:
    """EOF on the process's stdin (and let communicate() know not to touch it)."""
    p.stdin.close()
    p.stdin = None


def listener(procs, *args: str, **kw) -> tuple[subprocess.Popen, int]:
    port = free_port()
    p = tou("listen", "--insecure", *args, "127.0.0.1", str(port), **kw)
    procs.append(p)
    wait_listening(port, p)
    return p, port


# ------------------------------------------------------------------- data
@pytest.mark.slow
def test_50_mb_each_direction_at_once(procs, tmp_path) -> None:
    size = 50_000_000
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(os.urandom(size))
    b.write_bytes(os.urandom(size))
    a_out, b_out = tmp_path / "a.out", tmp_path / "b.out"
    with open(a, "rb") as ain, open(a_out, "wb") as aout, open(b, "rb") as bin_, open(b_out, "wb") as bout:
        lst, port = listener(procs, "--quiet", stdin=ain, stdout=aout)
        start = time.monotonic()
        cli = tou("connect", "--insecure", "--quiet", "127.0.0.1", str(port), stdin=bin_, stdout=bout)
        procs.append(cli)
        assert cli.wait(timeout=120) == 0, cli.stderr.read().decode()
        assert lst.wait(timeout=30) == 0, lst.stderr.read().decode()
        elapsed = time.monotonic() - start
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()   # noqa: E731
    assert digest(a_out) == digest(b)        # client's stdin arrived on the listener's stdout
    assert digest(b_out) == digest(a)
    print(f"\n50 MB each way at once: {elapsed:.2f} s, {2 * size * 8 / elapsed / 1e6:.0f} Mbit/s in total")


def test_pipes_carry_binary_bytes_exactly(procs) -> None:
    data = bytes(range(256)) * 4000 + b"\x00\r\n\xff"
    lst, port = listener(procs, "--quiet", "-d")
    cli = tou("connect", "--insecure", "--quiet", "127.0.0.1", str(port), stdin=subprocess.PIPE)
    procs.append(cli)
    # The listener's stdout is a pipe: read it while the client sends, or backpressure stalls both.
    result = {}
    t = threading.Thread(target=lambda: result.update(cli=cli.communicate(data, timeout=30)))
    t.start()
    out, err = lst.communicate(timeout=30)
    t.join(timeout=30)
    assert cli.returncode == 0, result
    assert lst.returncode == 0, err
    assert out == data


def test_busy_polling_ends_carry_the_bytes_and_the_reply(procs) -> None:
    """--busy-poll changes when the processes sleep, not what they carry."""
    data = os.urandom(300_000)
    lst, port = listener(procs, "--busy-poll", "500", "-c", "sha256sum")
    res = run("connect", "--insecure", "--busy-poll", "500", "127.0.0.1", str(port), input=data)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()
    assert lst.wait(timeout=20) == 0


def test_half_close_gets_the_reply_after_eof(procs) -> None:
    # wc -c answers only once it has read EOF: the FIN must cross, the reply come back.
    lst, port = listener(procs, "-c", "wc -c")
    res = run("connect", "--insecure", "127.0.0.1", str(port), input=b"hello world")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == b"11"
    assert lst.wait(timeout=20) == 0


def test_echo_hi_gets_the_answer_from_a_stdio_listener(procs) -> None:
    """The listener's own stdin is the reply; it is sent after the request arrived."""
    lst, port = listener(procs, stdin=subprocess.PIPE)
    cli = tou("connect", "--insecure", "127.0.0.1", str(port), stdin=subprocess.PIPE)
    procs.append(cli)
    cli.stdin.write(b"hi\n")
    close_stdin(cli)                                   # client FIN
    assert lst.stdout.readline() == b"hi\n"
    lst.stdin.write(b"hello back\n")
    close_stdin(lst)                                   # listener FIN
    out, err = cli.communicate(timeout=20)
    assert cli.returncode == 0, err
    assert out == b"hello back\n"
    assert lst.wait(timeout=20) == 0


def test_keep_open_serves_several_clients_at_once(procs) -> None:
    lst, port = listener(procs, "-k", "-c", "tr a-z A-Z")
    clients = [tou("connect", "--insecure", "127.0.0.1", str(port), stdin=subprocess.PIPE) for _ in range(5)]
    procs.extend(clients)
    # All five are connected before any sends EOF: the listener serves them concurrently.
    for i, c in enumerate(clients):
        c.stdin.write(f"client {i} says hello\n".encode())
        c.stdin.flush()
    for i, c in enumerate(clients):
        close_stdin(c)
        out, err = c.communicate(timeout=20)
        assert c.returncode == 0, err
        assert out == f"CLIENT {i} SAYS HELLO\n".encode()
    assert lst.poll() is None                          # -k keeps listening
    lst.send_signal(signal.SIGTERM)
    assert lst.wait(timeout=10) == 0


def test_keep_open_without_a_program_collects_to_stdout(procs) -> None:
    lst, port = listener(procs, "-k")
    for i in range(3):
        res = run("connect", "--insecure", "127.0.0.1", str(port), input=f"line {i}\n".encode())
        assert res.returncode == 0, res.stderr
    lst.send_signal(signal.SIGTERM)
    out, _ = lst.communicate(timeout=10)
    assert lst.returncode == 0
    assert sorted(out.splitlines()) == [b"line 0", b"line 1", b"line 2"]


def test_exec_runs_a_program_without_a_shell(procs) -> None:
    lst, port = listener(procs, "-e", "tr a-z A-Z")
    res = run("connect", "--insecure", "127.0.0.1", str(port), input=b"shout\n")
    assert res.returncode == 0, res.stderr
    assert res.stdout == b"SHOUT\n"
    assert lst.wait(timeout=20) == 0


def test_exec_on_the_connecting_side_sees_the_peer_address(procs) -> None:
    lst, port = listener(procs, "--quiet", stdin=subprocess.DEVNULL)
    res = run("connect", "--insecure", "-c", 'echo "peer $TOU_REMOTE_ADDR $TOU_REMOTE_PORT"',
              "127.0.0.1", str(port))
    assert res.returncode == 0, res.stderr
    out, _ = lst.communicate(timeout=20)
    assert out == f"peer 127.0.0.1 {port}\n".encode()


# ---------------------------------------------------------------- failures
@pytest.mark.parametrize("args, needle", [
    (["connect", "127.0.0.1", "9"], "no authentication configured"),
    (["listen", "9"], "--insecure"),
    (["connect", "--insecure", "-4", "-6", "127.0.0.1", "9"], "exclude each other"),
    (["connect", "--insecure", "127.0.0.1", "70000"], "70000"),
    (["listen", "--insecure", "0"], "PORT"),
    (["listen", "--insecure", "a", "b", "c"], "[ADDR] PORT"),
    (["listen", "--insecure", "-e", "no-such-program-tou", "9"], "program not found"),
    (["connect", "--insecure", "-w", "soon", "127.0.0.1", "9"], "not a duration"),
    (["connect", "--insecure", "-e", "cat", "-c", "cat", "127.0.0.1", "9"], "exclude each other"),
    (["connect", "--no-such-option", "127.0.0.1", "9"], "No such option"),
    (["connect", "--insecure", "--busy-poll", "-5", "127.0.0.1", "9"], "--busy-poll"),
    (["listen", "--insecure", "--busy-poll", "200000", "9"], "--busy-poll"),
])
def test_usage_errors_exit_2(args, needle) -> None:
    res = run(*args, timeout=20)
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert needle in res.stderr.decode()
    assert b"Traceback" not in res.stderr


def test_insecure_warns_on_every_start(procs) -> None:
    res = run("connect", "--insecure", "-w", "0.2", "127.0.0.1", str(free_port()))
    assert b"warning: --insecure" in res.stderr


def test_connection_refused_exits_1_quickly() -> None:
    start = time.monotonic()
    res = run("connect", "--insecure", "-w", "5", "127.0.0.1", str(free_port()))
    assert res.returncode == 1
    assert time.monotonic() - start < 5
    err = res.stderr.decode()
    assert "connection refused" in err
    assert err.count("\n") == 2 and "Traceback" not in err   # the warning and one error line


def test_silent_peer_times_out_within_w() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as hole:   # bound, never answers
        hole.bind(("127.0.0.1", 0))
        start = time.monotonic()
        res = run("connect", "--insecure", "-w", "1", "127.0.0.1", str(hole.getsockname()[1]))
        elapsed = time.monotonic() - start
    assert res.returncode == 1
    assert "timed out after 1 s" in res.stderr.decode()
    assert 0.9 < elapsed < 10


def test_idle_timeout_exits_1(procs) -> None:
    lst, port = listener(procs, stdin=subprocess.PIPE)
    cli = tou("connect", "--insecure", "-i", "0.5", "127.0.0.1", str(port), stdin=subprocess.PIPE)
    procs.append(cli)
    _, err = cli.communicate(timeout=20)
    assert cli.returncode == 1
    assert b"idle timeout" in err


def test_linger_quits_after_eof(procs) -> None:
    lst, port = listener(procs, stdin=subprocess.PIPE)   # never closes its side
    start = time.monotonic()
    res = run("connect", "--insecure", "-q", "0.5", "127.0.0.1", str(port), input=b"bye\n")
    assert res.returncode == 0, res.stderr
    assert 0.4 < time.monotonic() - start < 10


# ----------------------------------------------------------------- signals
def test_ctrl_c_on_a_waiting_listener_exits_130(procs) -> None:
    lst, port = listener(procs)
    lst.send_signal(signal.SIGINT)
    _, err = lst.communicate(timeout=10)
    assert lst.returncode == 130
    assert b"Aborted" not in err and b"Traceback" not in err


def test_ctrl_c_mid_session_closes_gracefully(procs) -> None:
    lst, port = listener(procs, "-c", "cat")
    cli = tou("connect", "--insecure", "127.0.0.1", str(port), stdin=subprocess.PIPE)
    procs.append(cli)
    cli.stdin.write(b"partial\n")
    cli.stdin.flush()
    assert cli.stdout.readline() == b"partial\n"     # echoed: the session is up
    cli.send_signal(signal.SIGINT)
    _, err = cli.communicate(timeout=10)
    assert cli.returncode == 130, err
    assert b"Aborted" not in err and b"Traceback" not in err
    # The listener got a FIN, not a reset: cat ended, and it exits cleanly.
    assert lst.wait(timeout=10) == 0, lst.stderr.read()


def test_second_ctrl_c_does_not_wait(procs) -> None:
    lst, port = listener(procs, stdin=subprocess.PIPE)   # never answers the FIN
    cli = tou("connect", "--insecure", "127.0.0.1", str(port), stdin=subprocess.PIPE)
    procs.append(cli)
    cli.stdin.write(b"x\n")
    cli.stdin.flush()
    assert lst.stdout.readline() == b"x\n"
    start = time.monotonic()
    cli.send_signal(signal.SIGINT)
    time.sleep(0.2)
    cli.send_signal(signal.SIGINT)
    cli.communicate(timeout=10)
    assert cli.returncode == 130
    assert time.monotonic() - start < 1.5      # the graceful close would wait 2 s


def test_sigterm_exits_0(procs) -> None:
    lst, port = listener(procs)
    lst.send_signal(signal.SIGTERM)
    _, err = lst.communicate(timeout=10)
    assert lst.returncode == 0, err


# ------------------------------------------------------------ secure channel
SECRET = "Zk3q9-Vx2LmTq8RwYp4nHs7JdKb5Ce1AfGu6WiOyNt0"


def secure_env(secret: str = SECRET) -> dict[str, str]:
    return {**ENV, "TOU_SECRET": secret}


def test_shared_secret_session_carries_the_reply(procs) -> None:
    port = free_port()
    lst = tou("listen", "-c", "wc -c", "127.0.0.1", str(port), env=secure_env())
    procs.append(lst)
    wait_listening(port, lst)
    res = subprocess.run([*TOU, "connect", "127.0.0.1", str(port)], cwd=ROOT, env=secure_env(),
                         input=b"over dtls", capture_output=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == b"9"
    assert b"warning" not in res.stderr
    assert lst.wait(timeout=20) == 0


def test_wrong_secret_exits_3(procs) -> None:
    port = free_port()
    lst = tou("listen", "127.0.0.1", str(port), env=secure_env())
    procs.append(lst)
    wait_listening(port, lst)
    res = subprocess.run([*TOU, "connect", "127.0.0.1", str(port)], cwd=ROOT,
                         env=secure_env("another-secret-entirely-Qw8Lp2Zr7Xc4Vb9"),
                         stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    assert res.returncode == 3
    assert b"authentication failed" in res.stderr
    assert lst.poll() is None                  # a failed attempt does not end the listener


def test_key_pairs(procs, tmp_path) -> None:
    from toucli.keys import PrivateKey

    server, client = PrivateKey.generate(), PrivateKey.generate()
    server.save(tmp_path / "srv.key")
    client.save(tmp_path / "cli.key")
    (tmp_path / "authorized").write_text(client.public.text() + " laptop\n")
    port = free_port()
    lst = tou("listen", "-d", "--key-file", str(tmp_path / "srv.key"), "--authorized-keys",
              str(tmp_path / "authorized"), "127.0.0.1", str(port))
    procs.append(lst)
    wait_listening(port, lst)
    res = run("connect", "--key-file", str(tmp_path / "cli.key"), "--peer-key", server.public.text(),
              "127.0.0.1", str(port), input=b"signed and sealed")
    assert res.returncode == 0, res.stderr
    out, _ = lst.communicate(timeout=20)
    assert out == b"signed and sealed"
    # The wrong pin: exit 3, naming the option the pin came from.
    lst2 = tou("listen", "--key-file", str(tmp_path / "srv.key"), "--authorized-keys",
               str(tmp_path / "authorized"), "127.0.0.1", str(port))
    procs.append(lst2)
    wait_listening(port, lst2)
    res = run("connect", "--key-file", str(tmp_path / "cli.key"), "--peer-key", client.public.text(),
              "127.0.0.1", str(port))
    assert res.returncode == 3
    assert b"--peer-key" in res.stderr


def test_unreadable_key_file_is_a_usage_error(tmp_path) -> None:
    res = run("connect", "--key-file", str(tmp_path / "missing.key"), "--peer-key",
              "tou-p256 AnZvVq9ulLhqVpbNV0r1HGNF3dHsmrdfOHtI1cSdWNJ2", "127.0.0.1", "9")
    assert res.returncode == 2
    assert b"missing.key" in res.stderr


def test_authentication_failures_are_quick_one_line_and_logged_by_the_server(procs, tmp_path) -> None:
    """Issue 3: the client exits 3 with one clear line within 2 s (measured after start-up,
    with a warm listener); the server logs the address and key fingerprint and keeps serving."""
    from toucli.keys import PrivateKey

    server, client, stranger = PrivateKey.generate(), PrivateKey.generate(), PrivateKey.generate()
    for name, key in (("srv", server), ("cli", client), ("stranger", stranger)):
        key.save(tmp_path / f"{name}.key")
    (tmp_path / "authorized").write_text(client.public.text() + " laptop\n")
    port = free_port()
    lst = tou("listen", "-k", "-d", "-v", "--key-file", str(tmp_path / "srv.key"),
              "--authorized-keys", str(tmp_path / "authorized"), "127.0.0.1", str(port))
    procs.append(lst)
    wait_listening(port, lst)
    cases = [
        (("--key-file", str(tmp_path / "stranger.key")),
         "authentication failed: the server does not accept this client's key"),
        (("--key-file", str(tmp_path / "cli.key"), "--peer-key", client.public.text()),
         "authentication failed: server key does not match --peer-key"),
    ]
    for extra, line in cases:
        if "--peer-key" not in extra:
            extra = (*extra, "--peer-key", server.public.text())
        start = time.monotonic()
        res = run("connect", *extra, "127.0.0.1", str(port))
        elapsed = time.monotonic() - start
        assert res.returncode == 3, res.stderr
        lines = [ln for ln in res.stderr.decode().splitlines() if ln.strip()]
        assert any(ln.endswith(line) for ln in lines), lines
        assert len([ln for ln in lines if "authentication failed" in ln]) == 1
        assert "Traceback" not in res.stderr.decode()
        assert elapsed < 2.0 + 1.5, elapsed      # 2 s budget plus interpreter start-up
    # A client with no key of its own (none at the default place) says so before sending anything.
    start = time.monotonic()
    res = subprocess.run([*TOU, "connect", "--peer-key", server.public.text(), "127.0.0.1", str(port)],
                         cwd=ROOT, env={**ENV, "XDG_CONFIG_HOME": str(tmp_path / "empty")},
                         stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    assert res.returncode == 3, res.stderr
    assert res.stderr.decode().startswith(
        f"tou: authentication failed: no private key of our own ({tmp_path / 'empty' / 'tou' / 'key'} does not exist)")
    assert time.monotonic() - start < 2.0 + 1.5
    # The legitimate client still gets through after the failures.
    res = run("connect", "--key-file", str(tmp_path / "cli.key"), "--peer-key",
              server.public.text(), "127.0.0.1", str(port), input=b"still serving")
    assert res.returncode == 0, res.stderr
    lst.send_signal(signal.SIGTERM)
    out, err = lst.communicate(timeout=10)
    assert out == b"still serving"
    text = err.decode()
    assert stranger.public.fingerprint() in text   # rejected key logged by fingerprint
    assert "127.0.0.1" in text                     # and the address it came from



@pytest.mark.parametrize("sink", ["pipe", "file"])
def test_a_slow_sink_gets_every_byte_after_the_sender_has_gone(procs, tmp_path, sink) -> None:
    """The sender's FIN is acknowledged as soon as it arrives in sequence, so a sender
    whose data still waits in the receiver (for a pipe nobody reads yet; for a file
    opened O_SYNC, whose every write waits for the disk) finishes, closes its secure
    session and exits 0 before the receiver has written everything. The receiver must
    still write all of it and exit 0: the session's close_notify comes after both FINs."""
    size = 6_000_000
    data = os.urandom(size)
    port = free_port()
    out_path = tmp_path / "out.bin"
    fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_SYNC, 0o600) if sink == "file" else None
    try:
        lst = tou("listen", "--quiet", "-d", "127.0.0.1", str(port), env=secure_env(),
                  stdout=fd if fd is not None else subprocess.PIPE)
    finally:
        if fd is not None:
            os.close(fd)
    procs.append(lst)
    wait_listening(port, lst)
    res = subprocess.run([*TOU, "connect", "--quiet", "127.0.0.1", str(port)], cwd=ROOT, env=secure_env(),
                         input=data, capture_output=True, timeout=60)
    assert res.returncode == 0, res.stderr
    if sink == "pipe":
        time.sleep(0.5)                          # the close_notify has reached the listener by now
        out, err = lst.communicate(timeout=30)   # only now does anyone read the listener's stdout
    else:
        _, err = lst.communicate(timeout=60)
        out = out_path.read_bytes()
    assert lst.returncode == 0, err.decode()
    assert len(out) == size and hashlib.sha256(out).digest() == hashlib.sha256(data).digest()
