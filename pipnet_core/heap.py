"""Keep freed tensor memory in the process while training, instead of unmapping and re-faulting it every step.

glibc's ``malloc`` serves every block above its mmap threshold with a fresh ``mmap`` and gives it back
with ``munmap`` when it is freed. The threshold adapts, but never above 32 MiB on 64-bit systems
(``DEFAULT_MMAP_THRESHOLD_MAX``, mallopt(3)), and a 256 px ResNet-18 batch of 16 has activations of
64 MiB each (16 x 64 x 128 x 128 float32 after the stem). So every training step maps those blocks,
zero-fills them page by page on first touch (a minor page fault per 4 KiB) and unmaps them again:
measured 61,500 minor faults and 0.20 s of kernel CPU per step on 2 cores (bench/RESULTS.md, "On an
idle machine"). Raising ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` with ``mallopt`` (mallopt(3):
parameters -3 and -1) keeps those blocks in the heap, where the next step reuses them: ~1,500 faults
per step and 1.13x the steps per second, for a third more resident memory while training. On
leaving, the settings go back to glibc's defaults (128 KiB each) and ``malloc_trim(0)`` returns the
freed memory to the system.

It changes where memory comes from, never a number computed: weights are bit-identical either way
(tests/unit/test_train.py). Nothing happens off glibc Linux, or when the process was started with
glibc's malloc tunables (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_TOP_PAD_``
or ``GLIBC_TUNABLES``): the user's choice stands. glibc reads them once, at start, so they are read
from the environment the process started with (``/proc/self/environ``), not from ``os.environ``:
Dask's ``LocalCluster`` sets ``MALLOC_TRIM_THRESHOLD_`` there for the workers it spawns, which
changes nothing in this process.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import sys
import threading
from collections.abc import Iterator

__all__ = ["reused_memory", "supported"]

_M_TRIM_THRESHOLD = -1  # mallopt(3) parameter numbers, <malloc.h>
_M_MMAP_THRESHOLD = -3
_KEEP = 1 << 30  # blocks up to 1 GiB stay in the heap; nothing the step frees is trimmed below that
_DEFAULT = 128 * 1024  # glibc's initial M_MMAP_THRESHOLD and M_TRIM_THRESHOLD
_USER_TUNABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")

_lock = threading.Lock()
_depth = 0  # nested or concurrent training runs in one process: the last one out restores


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def _started_with_tunables() -> bool:
    """Whether this process was started with one of glibc's malloc tunables in its environment."""
    try:
        with open("/proc/self/environ", "rb") as f:
            names = {item.split(b"=", 1)[0].decode(errors="replace") for item in f.read().split(b"\0") if item}
    except OSError:
        names = set(os.environ)
    return any(k in names for k in _USER_TUNABLES)


def supported() -> bool:
    """Whether :func:`reused_memory` changes anything here (glibc Linux, started without malloc tunables)."""
    return _libc() is not None and not _started_with_tunables()


@contextlib.contextmanager
def reused_memory(enabled: bool = True) -> Iterator[bool]:
    """Within the block, freed large blocks stay in the process for reuse; yields whether that is in effect."""
    libc = _libc() if enabled else None
    if libc is None or _started_with_tunables():
        yield False
        return
    global _depth
    with _lock:
        if _depth == 0:
            libc.mallopt(_M_MMAP_THRESHOLD, _KEEP)
            libc.mallopt(_M_TRIM_THRESHOLD, _KEEP)
        _depth += 1
    try:
        yield True
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                libc.mallopt(_M_MMAP_THRESHOLD, _DEFAULT)
                libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT)
                libc.malloc_trim(0)
