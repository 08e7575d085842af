"""Process-wide settings that must be in place before torch is imported.

OpenMP wait policy.  torch's CPU kernels run on an OpenMP (libgomp) thread pool whose idle
threads *spin* for a while after every parallel region, waiting for the next one.  In the
separation engine the model shares the cores with the ffmpeg decoder and encoders, and
those spinning threads take CPU time from the encoders: on the 2-core development machine
a 10-minute mp3 → 2 mp3 job used ~35 % more CPU time in the Python process and ran 15-20 %
longer (benchmarks/RESULTS.md).  ``OMP_WAIT_POLICY=PASSIVE`` makes idle threads sleep at
once.  Pure in-memory inference is ~5 % slower with it, which the overlap more than repays.

libgomp reads the variable once, when it is loaded (with torch), so :func:`prefer_passive_openmp`
only acts when torch has not been imported yet; it never overrides a value the user set.
``SEPARATOR_OMP_PASSIVE=0`` leaves the variable alone.
"""
from __future__ import annotations

import os
import sys

OFF = ("0", "false", "no", "off")


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


__all__ = ["prefer_passive_openmp", "switched_off"]
