"""Keep freed memory for reuse: glibc's ``mallopt`` thresholds for a bulk data path.

Every read from a pipe or socket makes a fresh bytes object (256 KiB for the input,
``READ_CHUNK`` in :mod:`toucli.tunnel`), held by the send buffer until the peer
acknowledges it. glibc serves blocks of that size with ``mmap`` and gives them back
with ``munmap`` on free, or trims the top of the heap once 128 KiB is free there, so
the next read faults in fresh pages: 125,000 page faults per 2 GB sent, a third of
the sender's system time on a VM whose host reclaims the pages the guest frees.
With the thresholds raised, freed blocks stay in the heap and the next read reuses
them (19,000 faults; measured with ``/usr/bin/time -v`` on ``tou connect``).

Bounds: blocks above 4 MiB still come from ``mmap``; at most 64 MiB of free heap is
kept before trimming. Elsewhere than glibc (musl, macOS) nothing happens.
"""

from __future__ import annotations

import sys

M_TRIM_THRESHOLD = -1         # glibc <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 4 << 20
TRIM_THRESHOLD = 64 << 20

_done = False


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; True if glibc took them."""
    global _done
    if _done or not sys.platform.startswith("linux"):
        return False
    _done = True
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
