"""The control socket: permissions, protocol, stale files, and attaching from another process."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from procs import ROOT, TOU, feed, wait_for
from procs import free_udp_port as free_port

from toucli.control import (
    ABSENT, LIVE, STALE, ControlClient, ControlError, ControlServer, ensure_dir, find, list_instances, probe,
    runtime_dir, sweep,
)



def _stats_command() -> list[str]:
    """``tou stats``; before it is registered as a subcommand, its module run directly."""
    from toucli.commands import COMMANDS

    if any(c.name == "stats" for c in COMMANDS):
        return [*TOU, "stats"]
    return [sys.executable, "-W", "ignore::RuntimeWarning", "-m", "toucli.commands.stats"]


STATS = _stats_command()


@pytest.fixture
def rundir():
    d = Path(tempfile.mkdtemp(prefix="tou-ctl-"))     # short: Unix socket paths are limited to 107 bytes
    os.chmod(d, 0o700)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def env_for(rundir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOU_")}
    env["XDG_CONFIG_HOME"] = "/nonexistent-tou-test-config"
    env["XDG_RUNTIME_DIR"] = str(rundir)
    return env


# ------------------------------------------------------------------ in process
def test_runtime_dir_follows_xdg_and_falls_back_to_tmp(rundir) -> None:
    assert runtime_dir({"XDG_RUNTIME_DIR": str(rundir)}) == rundir / "tou"
    assert runtime_dir({}) == Path(f"/tmp/tou-{os.getuid()}")
    assert runtime_dir({"XDG_RUNTIME_DIR": "relative/dir"}) == Path(f"/tmp/tou-{os.getuid()}")
    assert runtime_dir({"XDG_RUNTIME_DIR": str(rundir / "missing")}) == Path(f"/tmp/tou-{os.getuid()}")


def test_ensure_dir_creates_0700_and_refuses_foreign_directories(rundir) -> None:
    d = ensure_dir(rundir / "tou")
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    loose = rundir / "loose"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)
    ensure_dir(loose)
    assert stat.S_IMODE(os.stat(loose).st_mode) == 0o700
    (rundir / "file").write_text("x")
    with pytest.raises(ControlError, match="not a directory"):
        ensure_dir(rundir / "file")
    (rundir / "link").symlink_to(d)
    with pytest.raises(ControlError, match="not a directory"):
        ensure_dir(rundir / "link")
    if os.getuid() == 0:
        foreign = rundir / "foreign"
        foreign.mkdir(mode=0o700)
        os.chown(foreign, 65534, 65534)
        with pytest.raises(ControlError, match="another user"):
            ensure_dir(foreign)


def test_server_socket_is_0600_serves_json_lines_and_is_removed(rundir) -> None:
    async def main() -> None:
        calls = []

        def handler(req: dict) -> dict:
            calls.append(req)
            if req.get("get") == "boom":
                raise RuntimeError("kaput")
            return {"echo": req}

        server = ControlServer(handler, name="unit", directory=rundir / "tou")
        path = await server.start()
        assert path == rundir / "tou" / "unit.sock"
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(rundir / "tou").st_mode) == 0o700

        def client() -> list:
            with ControlClient(path) as c:
                out = [c.request({"get": "snapshot", "history": True}), c.request({"get": "boom"})]
            s = socket.socket(socket.AF_UNIX)
            s.connect(str(path))
            s.sendall(b"\nnot json\n[1]\n")
            f = s.makefile("rb")
            out += [json.loads(f.readline()) for _ in range(3)]
            s.close()
            return out

        results = await asyncio.get_running_loop().run_in_executor(None, client)
        assert results[0] == {"echo": {"get": "snapshot", "history": True}}
        assert results[1] == {"error": "RuntimeError: kaput"}
        assert results[2] == {"echo": {"get": "snapshot"}}      # an empty line asks for a snapshot
        assert results[3] == {"error": "request is not JSON"}
        assert results[4] == {"error": "request must be a JSON object"}
        assert probe(path) == LIVE
        server.close()
        assert not path.exists()
        assert probe(path) == ABSENT

    asyncio.run(main())


def test_a_live_name_is_refused_and_a_stale_one_taken_over(rundir) -> None:
    async def main() -> None:
        d = rundir / "tou"
        first = ControlServer(lambda r: {}, name="dup", directory=d)
        await first.start()
        second = ControlServer(lambda r: {}, name="dup", directory=d)
        with pytest.raises(ControlError, match="another tou is running with --name dup"):
            await second.start()
        first.close()
        # A socket file nobody listens on: what a killed process leaves behind.
        dead = socket.socket(socket.AF_UNIX)
        dead.bind(str(d / "dup.sock"))
        dead.close()
        assert probe(d / "dup.sock") == STALE
        third = ControlServer(lambda r: {"ok": 1}, name="dup", directory=d)
        path = await third.start()
        assert await asyncio.get_running_loop().run_in_executor(
            None, lambda: ControlClient(path).request({})) == {"ok": 1}
        third.close()

    asyncio.run(main())


def test_find_by_name_pid_and_path_and_stale_cleanup(rundir) -> None:
    d = rundir / "tou"
    ensure_dir(d)
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(d / "ghost.sock"))
    dead.close()
    with pytest.raises(ControlError, match="not running any more"):
        find("ghost", d)
    assert not (d / "ghost.sock").exists()
    with pytest.raises(ControlError, match="no running tou named 'nobody'"):
        find("nobody", d)
    with pytest.raises(ControlError, match="no running tou found"):
        find(None, d)
    (d / "plain.sock").write_text("not a socket")
    with pytest.raises(ControlError, match="not a socket"):
        find("plain", d)
    assert (d / "plain.sock").exists()                 # never deleted: it is not ours


def test_starting_sweeps_stale_pid_sockets_of_dead_processes(rundir) -> None:
    d = ensure_dir(rundir / "tou")
    dead = subprocess.Popen(["true"])
    dead.wait()                                            # a PID that no longer runs
    for stem in (str(dead.pid), str(os.getpid()), "named"):
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(d / f"{stem}.sock"))
        s.close()
    assert sweep(d) == 1
    assert not (d / f"{dead.pid}.sock").exists()
    assert (d / f"{os.getpid()}.sock").exists()            # its process runs: left to probe()
    assert (d / "named.sock").exists()                     # names are only replaced by their owner
    os.unlink(d / f"{os.getpid()}.sock")

    async def main() -> None:
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(d / f"{dead.pid}.sock"))
        s.close()
        server = ControlServer(lambda r: {}, name="fresh", directory=d)
        await server.start()
        assert not (d / f"{dead.pid}.sock").exists()
        server.close()

    asyncio.run(main())


# ------------------------------------------------------------------ processes
def stats_cmd(rundir: Path, *args: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run([*STATS, *args], cwd=ROOT, env=env_for(rundir), capture_output=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


@pytest.mark.slow
def test_attach_from_a_second_process_while_data_flows(procs, rundir, tmp_path) -> None:
    env = env_for(rundir)
    port = free_port()
    data = random.Random(5).randbytes(3_000_000)
    lst = subprocess.Popen([*TOU, "listen", "--insecure", "--quiet", "--name", "srv", "127.0.0.1", str(port)],
                           cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
    procs.append(lst)
    sock_dir = rundir / "tou"
    wait_for(lambda: (sock_dir / "srv.sock").exists(), what="the listener's control socket")
    out_file = tmp_path / "received"
    with open(out_file, "wb") as out:
        cli = subprocess.Popen([*TOU, "connect", "--insecure", "--quiet", "--name", "cli", "--stats-interval",
                                "0.2", "127.0.0.1", str(port)], cwd=ROOT, env=env, stdin=subprocess.PIPE,
                               stdout=out, stderr=subprocess.PIPE)   # stdin open: no FIN from us yet
        procs.append(cli)
        feeder = feed(lst, data, 3.0)
        wait_for(lambda: (sock_dir / "cli.sock").exists(), what="the client's control socket")
        time.sleep(1.0)
        stream = subprocess.Popen([*STATS, "--json", "--interval", "0.2", "cli"], cwd=ROOT, env=env,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        procs.append(stream)
        text = stats_cmd(rundir, "--once", "cli")
        res = stats_cmd(rundir, "--once", "--json", "cli")
        assert res.returncode == 0, res.stderr
        snap = json.loads(res.stdout)
        by_pid = json.loads(stats_cmd(rundir, "--once", "--json", str(cli.pid)).stdout)
        by_path = json.loads(stats_cmd(rundir, "--once", "--json", str(sock_dir / "cli.sock")).stdout)
        listing = stats_cmd(rundir, "--list", "--json")
        srv = json.loads(stats_cmd(rundir, "--once", "--json", "srv").stdout)
        cli.stdin.close()
        feeder.join(timeout=20)
        assert cli.wait(timeout=30) == 0, cli.stderr.read().decode()
        assert lst.wait(timeout=30) == 0, lst.stderr.read().decode()
        streamed, _ = stream.communicate(timeout=20)              # ends with the instance
        assert stream.returncode == 0
    # The snapshot describes the running connection.
    assert snap["version"] == 1
    bp = snap["instance"].pop("busy_poll")                  # the default: adaptive polling
    assert bp["mode"] == "adaptive" and bp["window_us"] == 200 and bp["spin_seconds"] >= 0
    assert snap["instance"] == {"pid": cli.pid, "name": "cli", "command": "connect",
                                "control": str(sock_dir / "cli.sock"), "coalesced": 0}   # loopback: never
    (row,) = snap["connections"]
    assert row["state"] == "ESTABLISHED" and row["open"] is True
    assert row["peer"] == f"127.0.0.1:{port}" and row["remote_port"] == 1
    assert 0 < row["bytes_received"] < len(data)            # mid-transfer
    assert snap["totals"]["bytes_down"] == row["bytes_received"]
    assert snap["peers"][0]["address"] == f"127.0.0.1:{port}"
    assert snap["transport"]["name"] == "cleartext"
    assert by_pid["instance"]["pid"] == cli.pid and by_path["instance"]["name"] == "cli"
    # The listener's view of the same connection: its peer is the client's UDP address.
    (srow,) = srv["connections"]
    assert srow["local_port"] == 1 and srow["remote_port"] == row["local_port"]
    assert 0 < srow["bytes_sent"] <= len(data)
    if srv["time"] >= snap["time"]:     # each instance answers with its latest sample, up to an interval old
        assert srow["bytes_sent"] >= row["bytes_received"]
    # The same, as a dashboard printed once, and as a stream of JSON lines until the instance ended.
    assert text.returncode == 0
    assert "tou connect 'cli'" in text.stdout.decode() and "ESTABLISHED" in text.stdout.decode()
    lines = [json.loads(line) for line in streamed.splitlines()]
    assert len(lines) >= 3 and all(x["instance"]["name"] == "cli" for x in lines)
    downs = [x["totals"]["bytes_down"] for x in lines]
    assert downs == sorted(downs) and downs[-1] > downs[0]
    names = sorted(i["name"] for i in json.loads(listing.stdout))
    assert names == ["cli", "srv"]
    # Payload intact and the sockets gone with their processes.
    assert hashlib.sha256(out_file.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert not (sock_dir / "cli.sock").exists() and not (sock_dir / "srv.sock").exists()


def test_a_killed_instance_leaves_a_stale_socket_that_is_handled(procs, rundir) -> None:
    env = env_for(rundir)
    sock = rundir / "tou" / "victim.sock"

    def start() -> subprocess.Popen:
        p = subprocess.Popen([*TOU, "listen", "--insecure", "--quiet", "-k", "--name", "victim", "127.0.0.1",
                              str(free_port())], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(p)
        wait_for(lambda: probe(sock) == LIVE, what="the control socket")
        return p

    p = start()
    assert stat.S_IMODE(os.lstat(sock).st_mode) == 0o600
    # A second instance may not take a name in use.
    dup = subprocess.run([*TOU, "listen", "--insecure", "-k", "--name", "victim", "127.0.0.1", str(free_port())],
                         cwd=ROOT, env=env, capture_output=True, timeout=20, stdin=subprocess.DEVNULL)
    assert dup.returncode == 1
    assert b"another tou is running with --name victim" in dup.stderr
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=10)
    assert sock.exists() and probe(sock) == STALE
    # A new instance takes the name over.
    p2 = start()
    p2.send_signal(signal.SIGKILL)
    p2.wait(timeout=10)
    assert sock.exists()
    # tou stats --list does not show it and removes the file.
    res = stats_cmd(rundir, "--list")
    assert res.returncode == 0
    assert "victim" not in res.stdout.decode()
    assert not sock.exists()
    # Attaching to a dead instance fails with exit 1.
    p3 = start()
    p3.send_signal(signal.SIGKILL)
    p3.wait(timeout=10)
    res = stats_cmd(rundir, "--once", "--json", "victim")
    assert res.returncode == 1
    assert b"not running any more" in res.stderr
    assert not sock.exists()
    assert list_instances(rundir / "tou") == []


def test_sigterm_removes_the_socket_and_pid_names_by_default(procs, rundir) -> None:
    env = env_for(rundir)
    p = subprocess.Popen([*TOU, "listen", "--insecure", "--quiet", "-k", "127.0.0.1", str(free_port())],
                         cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    procs.append(p)
    sock = rundir / "tou" / f"{p.pid}.sock"
    wait_for(lambda: probe(sock) == LIVE, what="the PID-named control socket")
    res = stats_cmd(rundir, "--list")
    assert res.returncode == 0
    assert str(p.pid) in res.stdout.decode() and "listen" in res.stdout.decode()
    res = stats_cmd(rundir, "--once", "--json")                # the only instance: no target needed
    snap = json.loads(res.stdout)
    assert snap["instance"]["pid"] == p.pid and snap["instance"]["name"] is None
    assert snap["connections"] == []
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=10) == 0
    assert not sock.exists()


def test_invalid_name_is_a_usage_error(rundir) -> None:
    res = subprocess.run([*TOU, "listen", "--insecure", "--name", "../evil", "127.0.0.1", "9"], cwd=ROOT,
                         env=env_for(rundir), capture_output=True, timeout=20, stdin=subprocess.DEVNULL)
    assert res.returncode == 2
    assert b"--name" in res.stderr
