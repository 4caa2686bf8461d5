"""The process-wide host allocator choice: keep freed batch-sized buffers in the process instead of
returning them to the kernel.

glibc serves allocations above its mmap threshold (at most 32 MiB) with fresh mmap'd pages and
unmaps them on free. A normalized float32 batch of 64 x 3 x 224 x 224 is 38.5 MiB, so on a CPU
device every batch page-faults and the kernel zeroes all of it: measured 4.5x the cost of the
normalization itself (bench/stages.py, "normalize"). Raising the thresholds lets the heap keep
and reuse those pages. What tcmalloc/jemalloc do for PyTorch on CPU, here with glibc's own knob.

It lives with the device facts, not in a loader, because it is one setting for the whole
process: the loaders' normalization and the profiler's calibration both ask for it.
"""
from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
LARGE = 1 << 30  # bytes: above any batch; freed memory stays in the heap for the next batch

_kept: bool | None = None  # decided once per process: None until then


def keep_batch_buffers() -> bool:
    """Once per process, on glibc: serve and keep large buffers from the heap. False elsewhere,
    and False (glibc's defaults kept) after leave_defaults()."""
    global _kept
    if _kept is None:
        _kept = _mallopt()
    return _kept


def leave_defaults() -> None:
    """Keep glibc's defaults for the rest of this process (a benchmark's "before" row: every batch
    on fresh mmap'd pages). Refused once the heap already keeps large buffers: it cannot be undone."""
    global _kept
    if _kept:
        raise RuntimeError("leave_defaults(): this process already keeps batch buffers in the heap; "
                           "call it before the first batch is normalized")
    _kept = False


def _mallopt() -> bool:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, LARGE // 2)) and bool(libc.mallopt(M_TRIM_THRESHOLD, LARGE))
    except (OSError, AttributeError):  # not glibc (musl, macOS): leave the allocator alone
        return False
