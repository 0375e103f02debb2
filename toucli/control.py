"""The control socket: every running tou serves its statistics on a Unix socket.

Location: ``$XDG_RUNTIME_DIR/tou/`` when that variable names a directory, else
``/tmp/tou-$UID/``. The directory is created mode 0700 and must belong to us
(a directory someone else made in /tmp is refused, not used); the socket is
mode 0600. It is named ``NAME.sock`` after ``--name``, else ``PID.sock``.

Protocol: newline-delimited JSON, one request and one response per line on a
stream connection that may carry any number of them.

* ``{"get": "snapshot"}`` (also an empty line) -> the latest snapshot
  (docs/STATS.md); ``{"get": "snapshot", "history": true}`` adds the last
  minute of RTT, cwnd and rates.
* ``{"get": "info"}`` -> ``{"pid", "name", "command", "uptime", "peers", "connections"}``.
* anything else -> ``{"error": "..."}``.

A socket file whose process is gone (killed, so nobody removed it) refuses
connections: :func:`probe` reports it stale and the caller removes it, both
when a new tou wants that name and when ``tou stats`` looks for instances.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import re
import socket
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

MAX_REQUEST = 4096
NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@+-]{0,63}")
SUFFIX = ".sock"
CONNECT_TIMEOUT = 2.0


class ControlError(Exception):
    """The control socket cannot be set up or reached; the message says why."""


# ------------------------------------------------------------------ paths
def runtime_dir(environ: dict[str, str] | None = None) -> Path:
    """Where control sockets live (see the module docstring); not created here."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_RUNTIME_DIR")
    if base and os.path.isabs(base) and os.path.isdir(base):
        return Path(base) / "tou"
    return Path(f"/tmp/tou-{os.getuid()}")


def ensure_dir(path: Path) -> Path:
    """Create ``path`` mode 0700, or check an existing one is a directory of ours that others cannot use."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ControlError(f"cannot create {path}: {exc.strerror}") from None
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise ControlError(f"{path} is not a directory")
    if st.st_uid != os.getuid():
        raise ControlError(f"{path} belongs to another user")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def check_name(name: str) -> str:
    """``name`` if it can name a control socket (letters, digits, ``_.@+-``, at most 64)."""
    if not NAME_RE.fullmatch(name):
        raise ControlError(f"invalid --name {name!r}: use up to 64 letters, digits and _.@+- "
                           "(not starting with . or -)")
    return name


def socket_path(name: str | None = None, pid: int | None = None, directory: Path | None = None) -> Path:
    d = directory or runtime_dir()
    return d / f"{check_name(name) if name else (pid or os.getpid())}{SUFFIX}"


# ------------------------------------------------------------------ probing
LIVE, STALE, ABSENT, OTHER = "live", "stale", "absent", "other"


def probe(path: Path, timeout: float = CONNECT_TIMEOUT) -> str:
    """``live`` (something accepts connections), ``stale`` (a dead socket file), ``absent``, or
    ``other`` (a file that is no socket)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return ABSENT
    if not stat.S_ISSOCK(st.st_mode):
        return OTHER    # never ours to delete
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return STALE
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return STALE
        return LIVE        # e.g. a full backlog: someone is there
    finally:
        s.close()
    return LIVE


def remove_stale(path: Path) -> bool:
    """Remove ``path`` if it is a stale socket file; True if it was removed."""
    if probe(path) == STALE:
        try:
            os.unlink(path)
            return True
        except FileNotFoundError:
            return True
        except OSError:
            return False
    return False


def sweep(directory: Path) -> int:
    """Remove the stale ``PID.sock`` files of processes that no longer exist; returns how many.

    Cheap enough for every start: a PID that still runs is left alone without
    connecting to it.
    """
    removed = 0
    try:
        entries = list(directory.iterdir())
    except OSError:
        return 0
    for path in entries:
        stem = path.name[:-len(SUFFIX)] if path.name.endswith(SUFFIX) else ""
        if not stem.isdigit():
            continue
        try:
            os.kill(int(stem), 0)
            continue                      # running (or not ours to signal): keep
        except ProcessLookupError:
            pass
        except (PermissionError, OverflowError):
            continue
        if remove_stale(path):
            removed += 1
    return removed


# ------------------------------------------------------------------ server
class ControlServer:
    """Serves ``handler(request) -> response`` (dicts) as JSON lines on a Unix socket."""

    def __init__(self, handler: Callable[[dict], dict], *, name: str | None = None,
                 directory: Path | None = None) -> None:
        self.handler = handler
        self.name = name
        self.directory = directory
        self.path: Path | None = None
        self._server: asyncio.AbstractServer | None = None
        self._inode: tuple[int, int] | None = None

    async def start(self) -> Path:
        """Bind and listen. Raises :class:`ControlError` when the name is taken by a running tou."""
        directory = ensure_dir(self.directory or runtime_dir())
        sweep(directory)
        path = socket_path(self.name, directory=directory)
        state = probe(path)
        if state == OTHER:
            raise ControlError(f"{path} exists and is not a socket")
        if state == LIVE:
            who = f"--name {self.name}" if self.name else f"PID {os.getpid()}"
            raise ControlError(f"another tou is running with {who} ({path})")
        if state == STALE:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)            # the file is created 0600: no window with wider permissions
        try:
            sock.bind(str(path))
        except OSError as exc:
            sock.close()
            raise ControlError(f"cannot bind {path}: {exc.strerror}") from None
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        sock.listen(16)
        sock.setblocking(False)
        st = os.stat(path)
        self._inode = (st.st_dev, st.st_ino)
        self._server = await asyncio.start_unix_server(self._client, sock=sock, limit=MAX_REQUEST)
        self.path = path
        return path

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    writer.write(b'{"error": "request too long"}\n')
                    break
                if not line:
                    break
                response = self.respond(line)
                writer.write(json.dumps(response, separators=(",", ":")).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    def respond(self, line: bytes) -> dict:
        text = line.strip()
        try:
            request = json.loads(text) if text else {"get": "snapshot"}
        except ValueError:
            return {"error": "request is not JSON"}
        if not isinstance(request, dict):
            return {"error": "request must be a JSON object"}
        try:
            return self.handler(request)
        except Exception as exc:     # a bad request must not end the tunnel
            return {"error": f"{type(exc).__name__}: {exc}"}

    def close(self) -> None:
        """Stop serving and remove the socket file (only if it still is ours)."""
        if self._server is not None:
            self._server.close()
            self._server = None
        if self.path is not None:
            try:
                st = os.stat(self.path)
                if (st.st_dev, st.st_ino) == self._inode:
                    os.unlink(self.path)
            except OSError:
                pass
            self.path = None


# ------------------------------------------------------------------ client
class ControlClient:
    """A blocking connection to a control socket."""

    def __init__(self, path: Path, timeout: float = CONNECT_TIMEOUT) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(str(path))
        except OSError as exc:
            self.sock.close()
            raise ControlError(f"cannot attach to {path}: {exc.strerror or exc}") from None
        self._file = self.sock.makefile("rb")

    def request(self, req: dict) -> dict:
        try:
            self.sock.sendall(json.dumps(req).encode() + b"\n")
            line = self._file.readline()
        except OSError as exc:
            raise ControlError(f"{self.path}: {exc.strerror or exc}") from None
        if not line:
            raise ControlError(f"{self.path}: the tou instance went away")
        try:
            resp = json.loads(line)
        except ValueError:
            raise ControlError(f"{self.path}: not a tou control socket") from None
        if not isinstance(resp, dict):
            raise ControlError(f"{self.path}: not a tou control socket")
        return resp

    def close(self) -> None:
        try:
            self._file.close()
        finally:
            self.sock.close()

    def __enter__(self) -> "ControlClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@dataclass
class Instance:
    path: Path
    info: dict


def list_instances(directory: Path | None = None) -> list[Instance]:
    """Running instances, asking each for its ``info``; stale socket files are removed on the way."""
    d = directory or runtime_dir()
    out: list[Instance] = []
    try:
        entries = sorted(d.iterdir())
    except OSError:
        return out
    for path in entries:
        if not path.name.endswith(SUFFIX):
            continue
        state = probe(path)
        if state == STALE:
            remove_stale(path)
            continue
        if state != LIVE:
            continue
        try:
            with ControlClient(path) as c:
                info = c.request({"get": "info"})
        except ControlError:
            continue
        if "error" in info:
            continue
        out.append(Instance(path, info))
    return out


def find(target: str | None, directory: Path | None = None) -> Path:
    """The socket for ``NAME``, ``PID`` or a path; without a target the only running instance."""
    d = directory or runtime_dir()
    if target is None:
        found = list_instances(d)
        if not found:
            raise ControlError(f"no running tou found (in {d})")
        if len(found) > 1:
            names = ", ".join(str(i.info.get("name") or i.info.get("pid")) for i in found)
            raise ControlError(f"several tou instances are running ({names}); name one")
        return found[0].path
    if "/" in target or target.endswith(SUFFIX):
        path = Path(target)
    else:
        path = d / f"{target}{SUFFIX}"
        if not path.exists() and target.isdigit():
            for inst in list_instances(d):
                if str(inst.info.get("pid")) == target:
                    return inst.path
    state = probe(path)
    if state == OTHER:
        raise ControlError(f"{path} is not a socket")
    if state == ABSENT:
        raise ControlError(f"no running tou named {target!r} (no {path})")
    if state == STALE:
        remove_stale(path)
        raise ControlError(f"tou {target!r} is not running any more (removed its stale socket {path})")
    return path


__all__ = ["ControlServer", "ControlClient", "ControlError", "Instance", "list_instances", "find", "probe",
           "remove_stale", "sweep", "runtime_dir", "socket_path", "check_name", "LIVE", "STALE", "ABSENT"]
