"""Process-wide memory allocator settings for walrusfs processes.

Encoding and serving blobs allocates and frees many buffers of 64 KiB to a few MiB (symbols,
slivers). glibc serves buffers above its mmap threshold (128 KiB, adjusted dynamically) with
fresh ``mmap`` pages and trims freed heap memory back to the kernel, so every such buffer is
page-faulted in again. On small VMs a page fault costs several microseconds; measured here,
that made Reed-Solomon encoding 6x and sliver assembly 25x slower than the work itself, and
halved codec throughput. Raising both thresholds keeps freed buffers in the heap for reuse,
at the price of the process keeping up to ``trim_threshold`` bytes (1 GiB; a 256 MiB
blob passes through about that much memory) of freed memory.

Worker threads (trio's and the codec pool's) would each get a malloc arena of their own,
whose heaps are at most 64 MiB and are unmapped as soon as they are empty, so slivers
allocated in threads were faulted in afresh on every blob however the thresholds are set:
one arena for the whole process keeps them reusable (measured: a 64 MiB encode at n = 7
went from 158 MiB of page faults and 0.32 s of CPU per call to none and 0.26 s). Python
allocates small objects itself, so the shared arena's lock is taken only for large buffers.

Entry points (the CLI, benchmarks) call ``tune_allocator`` once; the pure core never does.
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
#: glibc's ceiling for the mmap threshold on 64-bit systems.
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 1 << 30


def tune_allocator(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Keep large freed buffers in the heap for reuse; True if the allocator accepted it (glibc only)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return (bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))
            and bool(mallopt(_M_ARENA_MAX, 1)))
