"""Writing a regular file from a thread of its own, so that the event loop never waits on it.

A regular file cannot be polled (``write`` on it blocks until the page cache has taken
the bytes, and on a full or slow disk, longer), so written from the loop it would hold
up everything else: the ACKs of the connection being written, keepalives, other
connections. Here the loop only queues what arrived (the engine's buffers, uncopied)
and a thread writes it with ``writev``; the GIL is let go meanwhile, so on a machine
with a second core the copy into the page cache runs beside the protocol work.

Back-pressure: a writer holding :data:`QUEUE_LIMIT` bytes is :attr:`full`; the pump
stops taking data from the connection, whose receive window then closes, and asks to
be called back when half of it has been written. A write error (``ENOSPC``, ``EIO``)
is kept in :attr:`error` and ends the writing: what was queued after it is dropped,
what came before it is in the file.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Callable

from toucli.stack.segment import Buffer

QUEUE_LIMIT = 8 << 20       # bytes queued before the pump stops taking data
IOV_MAX = 1024              # buffers per writev (Linux UIO_MAXIOV)


class FileWriter:
    """A regular file's writes, done by a daemon thread in the order they were queued."""

    def __init__(self, fd: int, loop: asyncio.AbstractEventLoop) -> None:
        self.fd = fd
        self.loop = loop
        self.error: OSError | None = None
        self.written = 0
        self._queue: list[Buffer] = []
        self._queued = 0                  # bytes queued and not yet written (the thread's batch too)
        self._waiting: list[Callable[[], None]] = []
        self._cond = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None

    @property
    def full(self) -> bool:
        return self._queued >= QUEUE_LIMIT

    @property
    def idle(self) -> bool:
        """Everything queued is written (or the writer failed)."""
        return self._queued == 0 or self.error is not None

    def put(self, bufs: list[Buffer]) -> None:
        """Queue ``bufs`` (the loop's thread). After a failure they are dropped."""
        if self.error is not None:
            return
        n = sum(map(len, bufs))
        with self._cond:
            self._queue.extend(bufs)
            self._queued += n
            self._cond.notify()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tou-file-writer", daemon=True)
            self._thread.start()

    def notify(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once on the loop when room opens, the queue empties or writing fails."""
        with self._cond:
            if self._queued <= QUEUE_LIMIT // 2 or self.error is not None:
                ready = True
            else:
                ready = False
                if callback not in self._waiting:
                    self._waiting.append(callback)
        if ready:
            self.loop.call_soon(callback)

    def close(self, timeout: float | None = None) -> None:
        """Write what is queued, then end the thread (blocks up to ``timeout`` s)."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while not self._queue and not self._closing:
                    cond.wait()
                if not self._queue:
                    return
                batch, self._queue = self._queue, []
            n = sum(map(len, batch))
            if self.error is None:
                try:
                    self._write(batch)
                    self.written += n
                except OSError as exc:
                    self.error = exc
            with cond:
                self._queued -= n
                wake = self._waiting and (self._queued <= QUEUE_LIMIT // 2 or self.error is not None)
                waiting = self._waiting if wake else []
                if wake:
                    self._waiting = []
            for callback in waiting:
                try:
                    self.loop.call_soon_threadsafe(callback)
                except RuntimeError:          # the loop is closed: nobody is waiting any more
                    pass

    def _write(self, bufs: list[Buffer]) -> None:
        fd = self.fd
        i = 0
        while i < len(bufs):
            part = bufs[i:i + IOV_MAX]
            n = os.writev(fd, part)
            done = 0
            while done < len(part) and n >= len(part[done]):
                n -= len(part[done])
                done += 1
            i += done
            if n:                             # a short write inside a buffer: the rest of it next
                bufs[i] = memoryview(bufs[i])[n:]
