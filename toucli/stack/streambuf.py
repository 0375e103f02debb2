"""The bytes one direction of a connection holds, kept as the chunks they came in.

The send buffer holds what the application wrote until the peer acknowledges it
(RFC 9293 §3.8: the "send buffer" of the user interface), the receive buffer what
arrived in order until the application reads it. Both are FIFOs: bytes enter at the
back and leave from the front, and the sender copies segments out of the middle.

A ``bytearray`` does the first two badly: CPython deletes from its front by moving
a start offset, and the next append that needs room copies everything still held
to a new block. With a send buffer of megabytes, every few appends copied the whole
buffer (23 % of a sender's time, bench/RESULTS.md 2026-12-06). Here no byte is
moved once stored: immutable chunks are kept as they are (the ``bytes`` a read
returned, a decoded segment's payload), appends of small pieces are packed into one
``bytearray`` chunk so that tiny writes cost no object each, and the front moves by
an offset. Copies happen only where bytes leave: a segment's payload, a read.
"""

from __future__ import annotations

from typing import Final

from bisect import bisect_right

from .segment import Buffer

PACK_BELOW: Final = 2048       # appends shorter than this are copied into a packing chunk ...
PACK_CHUNK: Final = 64 << 10   # ... which takes them until it holds this many bytes
_COMPACT_AT: Final = 64        # chunks consumed before the lists drop them


class StreamBuffer:
    """A byte FIFO of chunks: append at the back, peek anywhere, consume from the front.

    Chunks are ``bytes``, read-only ``memoryview``s of ``bytes`` (both stored as
    given), or packing ``bytearray``s that never leave this object. Positions are
    counted from the front (index 0 is the oldest byte held).
    """

    def __init__(self) -> None:
        self._chunks: list[Buffer] = []
        self._ends: list[int] = []      # running end position of each chunk (since creation)
        self._head = 0                  # index of the first chunk still held
        self._front = 0                 # running position of the first byte still held
        self._back = 0                  # running position one past the last byte

    def __len__(self) -> int:
        return self._back - self._front

    def __bool__(self) -> bool:
        return self._back != self._front

    def append(self, data: Buffer) -> None:
        """Add ``data`` at the back. Mutable buffers are copied; immutable ones are kept."""
        n = len(data)
        if n == 0:
            return
        chunks = self._chunks
        if n < PACK_BELOW:
            if chunks and len(chunks) > self._head:
                last = chunks[-1]
                if isinstance(last, bytearray) and len(last) < PACK_CHUNK:
                    last += data
                    self._back += n
                    self._ends[-1] = self._back
                    return
            chunk: Buffer = bytearray(data)
        elif isinstance(data, bytes):
            chunk = data
        elif isinstance(data, memoryview) and data.readonly and isinstance(data.obj, bytes) \
                and data.contiguous and data.itemsize == 1:
            chunk = data
        else:
            chunk = bytes(data)
        chunks.append(chunk)
        self._back += n
        self._ends.append(self._back)

    def _index(self, pos: int) -> int:
        """Index of the chunk holding running position ``pos`` (front <= pos < back)."""
        return bisect_right(self._ends, pos, self._head)

    def peek(self, start: int, end: int) -> Buffer:
        """The bytes ``[start, end)`` counted from the front (clipped to what is held): a
        read-only view when they lie in one immutable chunk, else a copy."""
        a = self._front + max(start, 0)
        b = min(self._front + end, self._back)
        if b <= a:
            return b""
        chunks, ends = self._chunks, self._ends
        i = self._index(a)
        chunk = chunks[i]
        c_end = ends[i]
        c_start = c_end - len(chunk)
        if b <= c_end:
            if isinstance(chunk, bytearray):
                return bytes(memoryview(chunk)[a - c_start: b - c_start])
            if a == c_start and b == c_end:
                return chunk
            return memoryview(chunk)[a - c_start: b - c_start]
        parts: list[Buffer] = [memoryview(chunk)[a - c_start:]]
        while True:
            i += 1
            chunk = chunks[i]
            c_end = ends[i]
            if b <= c_end:
                parts.append(memoryview(chunk)[: len(chunk) - (c_end - b)])
                break
            parts.append(chunk)
        return b"".join(parts)

    def discard(self, n: int) -> None:
        """Drop ``n`` bytes (at most all) from the front."""
        front = min(self._front + max(n, 0), self._back)
        self._front = front
        ends = self._ends
        head = self._head
        last = len(ends)
        while head < last and ends[head] <= front:
            self._chunks[head] = b""
            head += 1
        if head == last:
            self._chunks.clear()
            ends.clear()
            head = 0
        elif head >= _COMPACT_AT and 2 * head >= last:
            del self._chunks[:head]
            del ends[:head]
            head = 0
        self._head = head

    def take(self, max_bytes: int = -1) -> bytes:
        """Remove and return up to ``max_bytes`` from the front (all when negative)."""
        n = len(self) if max_bytes < 0 else min(max_bytes, len(self))
        if n <= 0:
            return b""
        if self._head < len(self._chunks):
            chunk = self._chunks[self._head]
            if isinstance(chunk, bytes) and self._ends[self._head] - len(chunk) == self._front \
                    and len(chunk) == n:
                self.discard(n)
                return chunk                # a whole stored chunk leaves uncopied
        data = self.peek(0, n)
        self.discard(n)
        return data if isinstance(data, bytes) else bytes(data)

    def take_chunks(self, max_bytes: int) -> list[Buffer]:
        """Remove up to ``max_bytes`` from the front as a list of buffers (for ``writev``).

        A chunk that leaves whole goes as it is, or as a view of the part not yet
        consumed (a packing chunk that leaves is never appended to again); a chunk
        that stays goes as a copy of the part that leaves.
        """
        out: list[Buffer] = []
        if max_bytes <= 0 or not self:
            return out
        stop = min(self._front + max_bytes, self._back)
        pos = self._front
        chunks, ends = self._chunks, self._ends
        i = self._head
        while pos < stop:
            chunk = chunks[i]
            c_end = ends[i]
            c_start = c_end - len(chunk)
            if c_end > stop:
                out.append(bytes(memoryview(chunk)[pos - c_start: stop - c_start]))
                break
            out.append(chunk if pos == c_start else memoryview(chunk)[pos - c_start:])
            pos = c_end
            i += 1
        self.discard(stop - self._front)
        return out

    def clear(self) -> None:
        self._chunks.clear()
        self._ends.clear()
        self._head = 0
        self._front = self._back
