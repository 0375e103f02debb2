"""StreamBuffer: the engine's send and receive buffers behave as one bytearray would."""

from __future__ import annotations

from hypothesis import given, strategies as st

from toucli.stack.streambuf import PACK_BELOW, PACK_CHUNK, StreamBuffer

SIZES = st.sampled_from([0, 1, 7, PACK_BELOW - 1, PACK_BELOW, 5000, 16384, 70000])
KINDS = st.sampled_from(["bytes", "bytearray", "view", "part-view", "writable-view"])
OPS = st.one_of(
    st.tuples(st.just("append"), SIZES, KINDS),
    st.tuples(st.just("discard"), st.integers(-5, 100_000)),
    st.tuples(st.just("peek"), st.integers(-5, 100_000), st.integers(0, 40_000)),
    st.tuples(st.just("take"), st.sampled_from([-1, 0, 1, 3000, 16384, 100_000])),
    st.tuples(st.just("take_chunks"), st.sampled_from([0, 1, 3000, 16384, 1 << 20])),
)


@given(st.lists(OPS, max_size=60), st.integers(0, 255))
def test_matches_a_bytearray(ops: list, fill: int) -> None:
    buf, model = StreamBuffer(), bytearray()
    counter = fill
    for op in ops:
        if op[0] == "append":
            _, n, kind = op
            data = bytes((counter + i) & 0xFF for i in range(n))
            counter += 1
            arg = {"bytes": data, "bytearray": bytearray(data), "view": memoryview(data),
                   "part-view": memoryview(data + b"tail")[:n],
                   "writable-view": memoryview(bytearray(data))}[kind]
            buf.append(arg)
            model += data
            if kind in ("bytearray", "writable-view"):
                arg[:] = bytes(len(arg))       # the caller reuses its buffer: what was sent stays
        elif op[0] == "discard":
            buf.discard(op[1])
            del model[:max(op[1], 0)]
        elif op[0] == "peek":
            a, n = max(op[1], 0), op[2]
            assert buf.peek(op[1], op[1] + n) == bytes(model[a:max(op[1] + n, 0)])
        elif op[0] == "take":
            n = op[1]
            want = bytes(model) if n < 0 else bytes(model[:n])
            got = buf.take(n)
            assert type(got) is bytes and got == want
            del model[:len(want)]
        else:
            want = bytes(model[:op[1]])
            got = buf.take_chunks(op[1])
            assert b"".join(got) == want
            del model[:len(want)]
        assert len(buf) == len(model) and bool(buf) == bool(model)


def test_a_large_chunk_is_kept_not_copied() -> None:
    data = bytes(range(256)) * 64
    buf = StreamBuffer()
    buf.append(data)
    assert buf.take_chunks(len(data))[0] is data
    buf.append(data)
    assert buf.take(len(data)) is data


def test_small_appends_share_one_chunk() -> None:
    """A peer's one-byte segments cost no object each (memory stays bounded by bytes)."""
    buf = StreamBuffer()
    for _ in range(10_000):
        buf.append(b"x")
    assert len(buf._chunks) == 1 and len(buf) == 10_000
    for _ in range(PACK_CHUNK):
        buf.append(b"y")
    assert len(buf._chunks) == 2


def test_consumed_chunks_are_released() -> None:
    buf = StreamBuffer()
    for _ in range(1000):
        buf.append(bytes(4096))
        buf.discard(4096 - 1)
        buf.take(1)
    assert len(buf) == 0 and buf._chunks == []
    for _ in range(1000):
        buf.append(bytes(4096))
        buf.discard(4000)
    assert len(buf._chunks) < 200          # compacted as the front moves, not kept forever
