"""FileWriter: a regular file written from a thread, in order, with back-pressure and errors kept."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import select

import pytest

from toucli.filewriter import QUEUE_LIMIT, FileWriter
from toucli.tunnel import FdStream, TunnelError, splice
from test_tunnel import Pair


def test_bytes_arrive_in_order(tmp_path) -> None:
    async def main() -> None:
        path = tmp_path / "out"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT)
        w = FileWriter(fd, asyncio.get_running_loop())
        want = hashlib.sha256()
        for i in range(300):
            piece = bytes([i & 0xFF]) * (1000 + 37 * i)
            view = memoryview(piece + b"!")[:-1]
            want.update(piece)
            w.put([piece[:500], view[500:]])
        w.close()
        os.close(fd)
        assert w.error is None and w.idle
        assert hashlib.sha256(path.read_bytes()).digest() == want.digest()

    asyncio.run(main())


def _read_within(fd: int, timeout: float) -> bytes:
    """Up to 1 MiB from ``fd`` if it becomes readable within ``timeout`` s, else b""."""
    ready, _, _ = select.select([fd], [], [], timeout)
    return os.read(fd, 1 << 20) if ready else b""


def test_full_until_the_thread_catches_up_then_called_back() -> None:
    """A writer stuck on a full pipe is ``full`` past QUEUE_LIMIT; the callback comes when it drains."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        r, wfd = os.pipe()
        w = FileWriter(wfd, loop)
        chunk = bytes(1 << 20)
        while not w.full:
            w.put([chunk])
        called = loop.create_future()
        w.notify(lambda: called.set_result(True))
        await asyncio.sleep(0.1)
        assert not called.done()                      # nobody reads: no room yet
        total = 0
        while not called.done():
            # A bounded read: the callback may still be on its way to the loop when the
            # pipe is already empty, and a blocking read would then wait forever.
            total += len(await loop.run_in_executor(None, _read_within, r, 0.1))
        assert total >= QUEUE_LIMIT // 2
        while not w.idle:
            total += len(os.read(r, 1 << 20))
        w.close()
        os.close(wfd)
        os.close(r)

    asyncio.run(main())


def test_a_write_error_is_kept_and_ends_the_writing() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        fd = os.open("/dev/full", os.O_WRONLY)
        w = FileWriter(fd, loop)
        w.put([b"x" * 4096])
        failed = loop.create_future()
        while w.error is None:
            await asyncio.sleep(0.01)
        w.notify(lambda: failed.set_result(True))
        assert await asyncio.wait_for(failed, 2)
        assert w.error.errno == errno.ENOSPC and w.idle
        w.put([b"more"])                              # dropped, not raised
        w.close()
        os.close(fd)

    asyncio.run(main())


def test_a_transfer_into_a_full_disk_fails_with_enospc() -> None:
    """``tou listen > file`` on a full disk: the copy stops with the error, the connection is
    reset (the command then exits 1)."""
    async def main() -> None:
        p = Pair()
        try:
            a, b = await p.open()
            fd = os.open("/dev/full", os.O_WRONLY)
            sink = FdStream(fd, owned=True)
            assert sink.kind == "file"
            pump = asyncio.ensure_future(splice(a, None, sink))
            writer = asyncio.ensure_future(b.write(b"y" * 200_000))
            with pytest.raises(TunnelError, match="No space left on device") as info:
                await asyncio.wait_for(pump, 5)
            assert info.value.__cause__.errno == errno.ENOSPC
            writer.cancel()
            sink.close()
        finally:
            p.close()

    asyncio.run(main())
