"""Process-wide malloc settings for inference on CPU.

glibc's malloc serves large requests (above a threshold that grows to at most 32 MiB) with
``mmap`` and gives them back with ``munmap`` on free, and trims the heap top above 128 KiB.
A model's activations are tens of MiB each and are freed and allocated again on every
forward pass, so with the defaults every pass maps fresh pages and the kernel zero-fills
them: on a full-size HTDemucs this is ~1 M page faults and ~20 % of the process's CPU
time spent in the kernel (``sys``) per 7.8 s segment.

:func:`tune` raises both thresholds so freed activations stay in the heap and are reused.
Peak RSS is then the high-water mark of the heap (it is not handed back until the process
exits), which for the streaming engine is bounded by the chunk size, not the input
length (see benchmarks/RESULTS.md).  Set ``SEPARATOR_MALLOC_TUNING=0`` to leave malloc
alone.  Other C libraries (musl, macOS) are left as they are.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform
import threading

from ..runtime import switched_off

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 30          # requests up to 1 GiB come from the heap
TRIM_THRESHOLD = (1 << 31) - 1    # never trim the heap top (int max)

_lock = threading.Lock()
_state: bool | None = None


def tune() -> bool:
    """Apply the settings once per process; True when they are in effect."""
    global _state
    with _lock:
        if _state is not None:
            return _state
        _state = False
        if switched_off("SEPARATOR_MALLOC_TUNING"):
            return False
        if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
            return False
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and \
                bool(libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
        except (OSError, AttributeError):
            ok = False
        if not ok:
            log.debug("mallopt not available; malloc left at its defaults")
        _state = ok
        return ok


__all__ = ["tune"]
