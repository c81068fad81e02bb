"""Keep large CPU buffers in the process heap between training steps (glibc only).

By default glibc serves every allocation above a threshold (128 KB, adapting up to 32 MB) with a
fresh ``mmap`` and gives it back with ``munmap`` when freed. A training step allocates and frees
the same few hundred activation and gradient buffers every time, so each step pays the kernel for
new zero-filled pages. Raising the mmap and trim thresholds lets freed blocks be reused instead
(``benchmarks/bench_train.py`` measures the step time with and without it). The cost is that the
process keeps its peak heap until it exits.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import platform

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_LIMIT = 1 << 30  # blocks up to 1 GiB come from the heap and stay there when freed
_applied = False


def _mallopt():
    """glibc's ``mallopt``, or None elsewhere (musl, macOS, Windows)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        return ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return None


def keep_heap_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process. Returns whether it was applied
    (False where the C library is not glibc). Idempotent."""
    global _applied
    if _applied:
        return True
    mallopt = _mallopt()
    if mallopt is None:
        return False
    _applied = bool(mallopt(_M_MMAP_THRESHOLD, _LIMIT)) and bool(mallopt(_M_TRIM_THRESHOLD, _LIMIT))
    return _applied
