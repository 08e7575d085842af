"""Process-wide settings for a process that separates: applied by the entry points, never on import.

:func:`configure_process` is called by the ``separator`` command (before anything imports
torch) and by every worker process; importing :mod:`separator` or loading a model changes
nothing process-wide.  A program that uses the Python API may call it itself, first thing.

* **OpenMP wait policy.**  torch's CPU kernels run on an OpenMP (libgomp) thread pool whose
  idle threads *spin* for a while after every parallel region, waiting for the next one.  In
  the separation engine the model shares the cores with the ffmpeg decoder and encoders, and
  spinning threads take CPU time from the encoders.  ``OMP_WAIT_POLICY=PASSIVE`` makes idle
  threads sleep at once (see benchmarks/RESULTS.md for what it saves end to end and what it
  costs in-memory).  libgomp reads the variable once, when it is loaded (with torch), so it
  is set only when torch has not been imported yet, and never over a value the user set.
  ``SEPARATOR_OMP_PASSIVE=0`` leaves it alone.
* **malloc.**  glibc's malloc serves large requests (above a threshold that grows to at most
  32 MiB) with ``mmap`` and gives them back with ``munmap`` on free, and trims the heap top
  above 128 KiB.  A model's activations are tens of MiB each and are freed and allocated
  again on every forward pass, so with the defaults every pass maps fresh pages that the
  kernel zero-fills.  :func:`tune_malloc` raises both thresholds so freed activations stay in
  the heap and are reused; peak RSS is then the heap's high-water mark, which the streaming
  engine bounds by its chunk size.  ``SEPARATOR_MALLOC_TUNING=0`` leaves malloc alone; other
  C libraries (musl, macOS) are left as they are.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform
import sys
import threading

log = logging.getLogger(__name__)

OFF = ("0", "false", "no", "off")

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 30          # requests up to 1 GiB come from the heap
TRIM_THRESHOLD = (1 << 31) - 1    # never trim the heap top (int max)

_malloc_lock = threading.Lock()
_malloc_state: bool | None = None


def switched_off(name: str) -> bool:
    """True when the environment variable ``name`` turns a default-on behaviour off (0/false/no/off)."""
    return os.environ.get(name, "1").strip().lower() in OFF


def prefer_passive_openmp() -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` for this process (and its children) if it can still
    take effect and nobody chose otherwise.  True when the variable now says PASSIVE."""
    if switched_off("SEPARATOR_OMP_PASSIVE"):
        return False
    if "OMP_WAIT_POLICY" not in os.environ and "torch" not in sys.modules:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE"


def tune_malloc() -> bool:
    """Apply the malloc settings once per process; True when they are in effect."""
    global _malloc_state
    with _malloc_lock:
        if _malloc_state is not None:
            return _malloc_state
        _malloc_state = False
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
        _malloc_state = ok
        return ok


def configure_process() -> None:
    """The settings above, for a process whose job is separating (an entry point calls it)."""
    prefer_passive_openmp()
    tune_malloc()


__all__ = ["configure_process", "prefer_passive_openmp", "switched_off", "tune_malloc"]
