"""``tou forward`` as real processes over loopback: -L, -D (curl), -R, permits, 200 connections, restarts.

Every process has a timeout and is killed by PID at the end; every test stops by itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOU = [sys.executable, "-m", "toucli"]
ENV = {k: v for k, v in os.environ.items() if not k.startswith("TOU_")}
ENV["XDG_CONFIG_HOME"] = "/nonexistent-tou-test-config"
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# ----------------------------------------------------------------- helpers
def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bound(port: int, tcp: bool) -> bool:
    """Is something bound to ``port`` (TCP: in LISTEN state), per /proc/net."""
    names = ("/proc/net/tcp", "/proc/net/tcp6") if tcp else ("/proc/net/udp", "/proc/net/udp6")
    for name in names:
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if int(f[1].rsplit(":", 1)[1], 16) == port and (not tcp or f[3] == "0A"):
                return True
    return False


def wait_bound(port: int, proc: subprocess.Popen | None, tcp: bool, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if bound(port, tcp):
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode}: {proc.stderr.read().decode()}")
        time.sleep(0.02)
    raise AssertionError(f"nothing listens on {'TCP' if tcp else 'UDP'} port {port}")


def tou(*args: str, env: dict | None = None, stderr: Any = subprocess.PIPE) -> subprocess.Popen:
    return subprocess.Popen([*TOU, *args], cwd=ROOT, env=env or ENV, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=stderr)


def stop(p: subprocess.Popen, timeout: float = 15) -> tuple[int, str]:
    """SIGTERM and collect (status, stderr)."""
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=timeout)
    return p.returncode, err.decode()


def server(procs, *args: str, port: int | None = None, env: dict | None = None,
           secure: bool = False) -> tuple[subprocess.Popen, int]:
    port = port or free_port(socket.SOCK_DGRAM)
    auth = () if secure else ("--insecure",)
    p = tou("forward", "--serve", f"127.0.0.1:{port}", *auth, *args, env=env)
    procs.append(p)
    wait_bound(port, p, tcp=False)
    return p, port


def client(procs, udp_port: int, *args: str, wait_tcp: tuple[int, ...] = (), env: dict | None = None,
           secure: bool = False, **kw) -> subprocess.Popen:
    auth = () if secure else ("--insecure",)
    p = tou("forward", f"127.0.0.1:{udp_port}", *auth, *args, env=env, **kw)
    procs.append(p)
    for port in wait_tcp:
        wait_bound(port, p, tcp=True)
    return p


@pytest.fixture
def web(procs, tmp_path):
    """``python -m http.server`` on 127.0.0.1 serving a text file and 1 MB of random bytes."""
    (tmp_path / "hello.txt").write_bytes(b"hello through tou\n")
    blob = os.urandom(1 << 20)
    (tmp_path / "blob.bin").write_bytes(blob)
    port = free_port()
    p = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                          "--directory", str(tmp_path)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    procs.append(p)
    wait_bound(port, p, tcp=True)
    return port, blob


def fetch(port: int, path: str, timeout: float = 20) -> bytes:
    with NO_PROXY.open(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
        return r.read()


# ---------------------------------------------------------------------- -L
def test_local_forward_to_a_web_server(procs, web) -> None:
    http_port, blob = web
    _, udp = server(procs)
    lport = free_port()
    cli = client(procs, udp, "-L", f"{lport}:127.0.0.1:{http_port}", wait_tcp=(lport,))
    assert fetch(lport, "/hello.txt") == b"hello through tou\n"
    assert fetch(lport, "/blob.bin") == blob
    code, err = stop(cli)
    assert code == 0, err                  # SIGTERM: graceful, exit 0


def test_local_forward_binds_loopback_only_by_default(procs, web) -> None:
    http_port, _ = web
    _, udp = server(procs)
    lport = free_port()
    client(procs, udp, "-L", f"{lport}:127.0.0.1:{http_port}", wait_tcp=(lport,))
    addrs = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(name).read_text().splitlines()[1:]:
            f = line.split()
            local = f[1]
            if int(local.split(":")[1], 16) == lport and f[3] == "0A":
                addrs.add(local.split(":")[0])
    # 127.0.0.1 is 0100007F; ::1 is ...00000000000000000000000001000000
    assert addrs and addrs <= {"0100007F", "00000000000000000000000001000000"}, addrs


# ---------------------------------------------------------------------- -D
def test_dynamic_forward_with_curl_socks5_hostname(procs, web) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.fail("curl is missing: apt-get install -y curl (.ci/run does)")
    http_port, blob = web
    srv, udp = server(procs, "--permit-open", f"localhost:{http_port}")
    dport = free_port()
    client(procs, udp, "-D", str(dport), wait_tcp=(dport,))
    # --socks5-hostname: the name 'localhost' travels to the server, which resolves it
    res = subprocess.run([curl, "-sS", "--max-time", "20", "--socks5-hostname", f"127.0.0.1:{dport}",
                          f"http://localhost:{http_port}/blob.bin"], capture_output=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert res.stdout == blob
    # the same server by IP is not permitted (the rule names 'localhost'): SOCKS reply 0x02
    res = subprocess.run([curl, "-sS", "--max-time", "20", "--socks5-hostname", f"127.0.0.1:{dport}",
                          f"http://127.0.0.1:{http_port}/hello.txt"], capture_output=True, timeout=30)
    assert res.returncode == 97, res        # curl: "Can't complete SOCKS5 connection"
    assert b"(2)" in res.stderr, res.stderr
    assert stop(srv)[0] == 0


def socks_request(port: int, request: bytes) -> bytes:
    """Greeting (no auth) + ``request``; the 10-byte reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(b"\x05\x01\x00")
        assert s.recv(2) == b"\x05\x00"
        s.sendall(request)
        reply = b""
        while len(reply) < 10:
            chunk = s.recv(10 - len(reply))
            if not chunk:
                break
            reply += chunk
        return reply


def test_socks_reply_codes_from_the_real_proxy(procs, web) -> None:
    http_port, _ = web
    _, udp = server(procs)
    dport = free_port()
    client(procs, udp, "-D", f"127.0.0.1:{dport}", wait_tcp=(dport,))
    closed = free_port()                   # nothing listens there
    v4 = lambda p: b"\x01\x7f\x00\x00\x01" + struct.pack("!H", p)   # noqa: E731
    assert socks_request(dport, b"\x05\x01\x00" + v4(closed))[1] == 0x05              # refused
    assert socks_request(dport, b"\x05\x02\x00" + v4(http_port))[1] == 0x07            # BIND
    assert socks_request(dport, b"\x05\x03\x00" + v4(http_port))[1] == 0x07            # UDP ASSOCIATE
    assert socks_request(dport, b"\x05\x01\x00\x03\x0cno-such.test" + struct.pack("!H", 80))[1] == 0x04
    # IPv6 literal CONNECT (to ::1, where nothing listens on that port): refused, not 0x08
    assert socks_request(dport, b"\x05\x01\x00\x04" + bytes(15) + b"\x01" + struct.pack("!H", closed))[1] in (
        0x05, 0x03, 0x04)
    ok = socks_request(dport, b"\x05\x01\x00" + v4(http_port))
    assert ok == b"\x05\x00\x00\x01" + bytes(6)
    if socket.has_ipv6:                    # IPv6 literal CONNECT that succeeds
        with socket.socket(socket.AF_INET6) as v6:
            v6.bind(("::1", 0))
            v6.listen()
            reply = socks_request(dport, b"\x05\x01\x00\x04" + bytes(15) + b"\x01"
                                  + struct.pack("!H", v6.getsockname()[1]))
            assert reply[1] == 0x00


# ---------------------------------------------------------------------- -R
def test_remote_forward(procs, web) -> None:
    http_port, blob = web
    srv, udp = server(procs, "--allow-remote-listen")
    rport = free_port()
    cli = client(procs, udp, "-R", f"{rport}:127.0.0.1:{http_port}")
    wait_bound(rport, cli, tcp=True)       # the server listens on it
    assert fetch(rport, "/blob.bin") == blob
    assert fetch(rport, "/hello.txt") == b"hello through tou\n"
    assert stop(cli)[0] == 0
    deadline = time.monotonic() + 10      # the client's FIN on the LISTEN connection closes the port
    while bound(rport, tcp=True) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not bound(rport, tcp=True)
    assert srv.poll() is None


def stderr_line(p: subprocess.Popen, words: str, timeout: float = 20) -> str:
    """The first stderr line containing ``words`` (reading with a deadline, never blocking past it)."""
    import selectors
    deadline = time.monotonic() + timeout
    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(p.stderr, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                break
            chunk = os.read(p.stderr.fileno(), 4096)
            if not chunk:
                break
            buf += chunk
            for line in buf.decode(errors="replace").splitlines():
                if words in line:
                    return line
    raise AssertionError(f"no stderr line with {words!r}: {buf.decode(errors='replace')}")


def test_remote_forward_port_zero_is_allocated_and_reported(procs, web) -> None:
    http_port, _ = web
    _, udp = server(procs, "--allow-remote-listen")
    cli = client(procs, udp, "-R", f"0:127.0.0.1:{http_port}")
    line = stderr_line(cli, "the server listens on")
    assert line.startswith(f"tou: -R 0:127.0.0.1:{http_port}: the server listens on localhost:"), line
    port = int(line.rsplit(":", 1)[1])
    assert port != 0
    assert fetch(port, "/hello.txt") == b"hello through tou\n"


def test_remote_forward_needs_allow_remote_listen(procs) -> None:
    srv, udp = server(procs)
    cli = client(procs, udp, "-R", f"{free_port()}:127.0.0.1:80")
    _, err = cli.communicate(timeout=20)
    assert cli.returncode == 1
    assert "--allow-remote-listen" in err.decode() and "Traceback" not in err.decode()
    assert srv.poll() is None


# ------------------------------------------------------------------ permits
def test_not_permitted_target_is_refused_and_others_still_work(procs, web) -> None:
    http_port, _ = web
    other = free_port()
    srv, udp = server(procs, "--permit-open", f"127.0.0.1:{http_port}")
    good, bad = free_port(), free_port()
    cli = client(procs, udp, "-L", f"{good}:127.0.0.1:{http_port}", "-L", f"{bad}:127.0.0.1:{other}",
                 wait_tcp=(good, bad))
    with socket.create_connection(("127.0.0.1", bad), timeout=20) as s:
        s.settimeout(20)
        assert s.recv(100) == b""              # closed without data
    assert fetch(good, "/hello.txt") == b"hello through tou\n"
    assert srv.poll() is None and cli.poll() is None
    _, cli_err = stop(cli)
    _, srv_err = stop(srv)
    lines = [ln for ln in cli_err.splitlines() if "warning" not in ln]      # --insecure warns
    assert lines == [f"tou: -L {bad}:127.0.0.1:{other}: server: 127.0.0.1:{other} is not permitted "
                     "(--permit-open)"], cli_err
    assert f"refused 127.0.0.1:{other}" in srv_err and "not permitted" in srv_err


# ---------------------------------------------------------- concurrency
async def _echo_and_clients(echo_port: int, lport: int, n: int, size: int) -> float:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    srv = await asyncio.start_server(echo, "127.0.0.1", echo_port, backlog=1024)

    async def one(i: int) -> None:
        payload = hashlib.sha256(i.to_bytes(4, "big")).digest() * (size // 32)
        reader, writer = await asyncio.open_connection("127.0.0.1", lport)

        async def send() -> None:
            writer.write(payload)
            await writer.drain()
            writer.write_eof()

        sender = asyncio.ensure_future(send())
        got = bytearray()
        while data := await reader.read(65536):
            got += data
        await sender
        writer.close()
        assert bytes(got) == payload, f"connection {i}: {len(got)} of {len(payload)} bytes, or different"

    start = time.monotonic()
    async with srv:
        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(n))), 120)
    return time.monotonic() - start


@pytest.mark.slow
def test_200_concurrent_connections_byte_for_byte(procs) -> None:
    _, udp = server(procs)
    echo_port, lport = free_port(), free_port()
    client(procs, udp, "-L", f"{lport}:127.0.0.1:{echo_port}", wait_tcp=(lport,))
    n, size = 200, 64 << 10
    elapsed = asyncio.run(_echo_and_clients(echo_port, lport, n, size))
    print(f"\n{n} concurrent forwarded connections, {size >> 10} KiB each way each: {elapsed:.2f} s")


# ------------------------------------------------------------- bad input
def test_failed_bind_is_fatal_exit_1(procs) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = subprocess.run([*TOU, "forward", "127.0.0.1:9", "--insecure", "--quiet", "-L",
                              f"127.0.0.1:{port}:localhost:80"], cwd=ROOT, env=ENV, capture_output=True,
                             timeout=20, stdin=subprocess.DEVNULL)
    assert res.returncode == 1
    assert res.stderr.decode().strip() == (f"tou: -L 127.0.0.1:{port}:localhost:80: cannot listen on "
                                           f"127.0.0.1:{port}: Address already in use")


@pytest.mark.parametrize("args, words", [
    (["-L", "8080:localhost"], "-L '8080:localhost': expected [bind_address:]port:host:hostport"),
    (["-L", "8080:localhost:99999"], "hostport 99999 out of range"),
    (["-D", "1:2:3"], "-D '1:2:3': expected [bind_address:]port"),
    (["-R", "x:h:1"], "port 'x' is not a number"),
    ([], "nothing to forward"),
])
def test_bad_forward_specs_exit_2(args: list[str], words: str) -> None:
    res = subprocess.run([*TOU, "forward", "127.0.0.1:9", "--insecure", *args], cwd=ROOT, env=ENV,
                         capture_output=True, timeout=20, stdin=subprocess.DEVNULL)
    assert res.returncode == 2, res
    assert words in res.stderr.decode(), res.stderr


@pytest.mark.parametrize("args, words", [
    (["--serve", "7000", "--insecure", "--permit-open", "localhost"], "expected HOST:PORT"),
    (["--serve", "7000", "--insecure", "-L", "1:h:2"], "belong to the client"),
    (["127.0.0.1:7000", "--insecure", "-L", "1:h:2", "--permit-open", "h:2"], "server options"),
    (["127.0.0.1", "--insecure", "-L", "1:h:2"], "expected HOST:PORT"),
    (["--insecure", "-L", "1:h:2"], "PEER"),
])
def test_bad_server_and_peer_options_exit_2(args: list[str], words: str) -> None:
    res = subprocess.run([*TOU, "forward", *args], cwd=ROOT, env=ENV, capture_output=True, timeout=20,
                         stdin=subprocess.DEVNULL)
    assert res.returncode == 2, res
    assert words in res.stderr.decode(), res.stderr


# ----------------------------------------------------------------- restarts
@pytest.mark.slow
def test_secure_server_restart_reconnects(procs, web) -> None:
    """SIGKILL the server, start it again on the same port: -L and -R work again, the client never exited."""
    http_port, _ = web
    env = dict(ENV, TOU_SECRET="correct horse battery staple forward test")
    srv, udp = server(procs, "--allow-remote-listen", env=env, secure=True)
    lport, rport = free_port(), free_port()
    cli = client(procs, udp, "-L", f"{lport}:127.0.0.1:{http_port}", "-R", f"{rport}:127.0.0.1:{http_port}",
                 wait_tcp=(lport,), env=env, secure=True)
    wait_bound(rport, cli, tcp=True)
    assert fetch(lport, "/hello.txt") == b"hello through tou\n"
    assert fetch(rport, "/hello.txt") == b"hello through tou\n"
    srv.kill()
    srv.wait(timeout=10)
    start = time.monotonic()
    srv2, _ = server(procs, "--allow-remote-listen", port=udp, env=env, secure=True)
    wait_bound(rport, cli, tcp=True, timeout=40)         # re-registered on the new server
    ok = False
    while time.monotonic() - start < 40 and not ok:
        try:
            ok = fetch(lport, "/hello.txt", timeout=15) == b"hello through tou\n"
        except OSError:
            time.sleep(0.2)
    assert ok, "no -L connection worked after the restart"
    assert fetch(rport, "/hello.txt") == b"hello through tou\n"
    print(f"\nreconnected {time.monotonic() - start:.1f} s after the restart")
    assert cli.poll() is None
    code, err = stop(cli)
    assert code == 0, err
    assert "reconnecting" in err and "reconnected" in err, err


@pytest.mark.slow
def test_cleartext_server_restart_reregisters_remote_forward(procs, web) -> None:
    http_port, _ = web
    srv, udp = server(procs, "--allow-remote-listen")
    rport = free_port()
    cli = client(procs, udp, "--keepalive", "3", "-R", f"{rport}:127.0.0.1:{http_port}")
    wait_bound(rport, cli, tcp=True)
    srv.kill()
    srv.wait(timeout=10)
    server(procs, "--allow-remote-listen", port=udp)
    wait_bound(rport, cli, tcp=True, timeout=30)
    assert fetch(rport, "/hello.txt") == b"hello through tou\n"
    code, err = stop(cli)
    assert code == 0, err
    assert "registering again" in err and "registered again" in err, err


def test_bad_spec_in_the_config_file_exits_2(tmp_path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text('[forward]\nlocal-forward = ["8080:localhost"]\n')
    res = subprocess.run([*TOU, "forward", "127.0.0.1:9", "--insecure", "--config", str(cfg)], cwd=ROOT,
                         env=ENV, capture_output=True, timeout=20, stdin=subprocess.DEVNULL)
    assert res.returncode == 2, res
    assert "local-forward" in res.stderr.decode() and "8080:localhost" in res.stderr.decode(), res.stderr


# ------------------------------------------------------- auth and signals
def test_wrong_secret_exits_3(procs) -> None:
    _, udp = server(procs, env=dict(ENV, TOU_SECRET="the server's secret, long enough"), secure=True)
    cli = client(procs, udp, "-L", f"{free_port()}:localhost:80",
                 env=dict(ENV, TOU_SECRET="another secret, also long enough"), secure=True)
    _, err = cli.communicate(timeout=30)
    assert cli.returncode == 3, err
    assert "authentication failed" in err.decode() and "Traceback" not in err.decode()


def test_sigint_exits_130_without_aborted(procs) -> None:
    _, udp = server(procs)
    lport = free_port()
    cli = client(procs, udp, "-L", f"{lport}:localhost:80", wait_tcp=(lport,))
    cli.send_signal(signal.SIGINT)
    _, err = cli.communicate(timeout=20)
    assert cli.returncode == 130
    assert "Aborted" not in err.decode() and "Traceback" not in err.decode()


def test_forwards_from_the_config_file(procs, web, tmp_path) -> None:
    http_port, _ = web
    lport = free_port()
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'insecure = true\n[forward]\nlocal-forward = ["{lport}:127.0.0.1:{http_port}"]\n'
                   f'permit-open = ["127.0.0.1:{http_port}"]\n')
    _, udp = server(procs, "--config", str(cfg))
    client(procs, udp, "--config", str(cfg), wait_tcp=(lport,))
    assert fetch(lport, "/hello.txt") == b"hello through tou\n"
