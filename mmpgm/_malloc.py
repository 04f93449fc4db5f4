r"""Keep freed heap memory in the process instead of handing it back to the kernel (glibc only).

Why
---
The batched recursions of :mod:`mmpgm.ops` allocate a few large tensors per call (stacks over
all frames: at ``benchmarks/lds_speed.py`` config B10k, ``N = 64``, ``T = 10,000``, some 300 MB
per smoother call) and free them at its end. glibc's ``malloc`` returns the freed top of the
heap to the kernel once it exceeds its trim threshold (and serves large requests with fresh
``mmap`` s), so the next call touches the same amount of new pages and pays one page fault per
4 KiB page. Measured on a 2-core VM, one thread, float64 (``minor faults`` from
``getrusage``): the RTS smoother at config B10k made 75,000 page faults per call and took 0.46 s;
with the freed memory retained it made none and took 0.28 s (config B: 1,470 faults, 20 ms ->
16 ms).

What
----
:func:`retain_freed_memory` raises glibc's trim threshold (freed memory stays in the heap, ready
for the next call) and fixes the ``mmap`` threshold at its largest value (32 MiB on 64-bit
systems), the same settings as the ``MALLOC_TRIM_THRESHOLD_`` / ``MALLOC_MMAP_THRESHOLD_``
environment variables, applied to the running process through ``mallopt(3)``. The price is a
resident set that stays near the process' peak. PyTorch's CPU performance guide recommends the
same effect by preloading jemalloc or tcmalloc; this needs no preload. It is process-global, so
the library never calls it on its own: the ``mmpgm`` command line and the speed benchmarks do,
and a user may. Written by hand (a ctypes call of ``mallopt``): neither torch nor the standard
library exposes it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

from ._validation import check_int

__all__ = ["retain_freed_memory"]

# mallopt(3) parameter numbers (glibc's <malloc.h>)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MAX_MMAP_THRESHOLD_MIB = 32
"""glibc refuses an ``mmap`` threshold above ``HEAP_MAX_SIZE / 2`` (32 MiB on 64-bit systems)."""


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it (not musl and others)
    except (OSError, AttributeError):
        return None
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.mallopt.restype = ctypes.c_int
    return libc


def retain_freed_memory(*, trim_threshold_mib: int = 1024, mmap_threshold_mib: int = 32) -> bool:
    """Keep up to ``trim_threshold_mib`` MiB of freed memory in this process' heap (glibc).

    Parameters
    ----------
    trim_threshold_mib : int, default 1024
        Freed memory at the top of the heap beyond this is still returned to the kernel.
    mmap_threshold_mib : int, default 32
        Requests from this size up get their own ``mmap`` (fresh pages every time); at most
        :data:`MAX_MMAP_THRESHOLD_MIB`.

    Returns
    -------
    bool
        True where the settings were applied (Linux with glibc); False, changing nothing,
        elsewhere (macOS, Windows, musl).

    Notes
    -----
    Process-global and not undone; call it once at the start of a program that runs mmpgm's
    batched recursions many times (training, benchmarks). See the module docstring for what it
    saves and costs.
    """
    check_int("trim_threshold_mib", trim_threshold_mib)
    check_int("mmap_threshold_mib", mmap_threshold_mib)
    if mmap_threshold_mib > MAX_MMAP_THRESHOLD_MIB:
        raise ValueError(
            f"mmap_threshold_mib: expected at most {MAX_MMAP_THRESHOLD_MIB} (glibc's limit), got "
            f"{mmap_threshold_mib}"
        )
    if trim_threshold_mib >= 2048:
        raise ValueError(
            f"trim_threshold_mib: expected less than 2048 (mallopt takes a C int of bytes), got "
            f"{trim_threshold_mib}"
        )
    libc = _glibc()
    if libc is None:
        return False
    ok_trim = libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold_mib * 2**20)
    ok_mmap = libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold_mib * 2**20)
    return bool(ok_trim and ok_mmap)
