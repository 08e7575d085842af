"""Which ffmpeg / ffprobe binaries the media layer runs.

* ``ffmpeg_exe()``: ``$SEPARATOR_FFMPEG`` if set; else imageio-ffmpeg's static build (it has
  libopencore_amrnb, which Debian's ffmpeg lacks, so ``amr`` output works out of the box); else
  ``ffmpeg`` on ``PATH``.
* ``ffprobe_exe()``: ``$SEPARATOR_FFPROBE`` if set; else ``ffprobe`` on ``PATH`` (imageio-ffmpeg
  ships no ffprobe); else next to the chosen ffmpeg.  Missing -> a clear ``RuntimeError``.
* ``has_encoder(name)`` / ``has_soxr()``: cached capability checks of the chosen ffmpeg.
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

__all__ = ["ffmpeg_exe", "ffprobe_exe", "has_encoder", "has_soxr", "FFmpegNotFound"]

_INSTALL_HINT = (
    "install ffmpeg (Debian/Ubuntu: `apt-get install ffmpeg`, macOS: `brew install ffmpeg`) "
    "or point {var} at the binary"
)


class FFmpegNotFound(RuntimeError):
    """No usable ffmpeg / ffprobe binary."""


def _from_env(var: str) -> str | None:
    value = os.environ.get(var, "").strip()
    if not value:
        return None
    found = shutil.which(value)
    if found is None:
        raise FFmpegNotFound(f"{var}={value!r} is not an executable; " + _INSTALL_HINT.format(var=var))
    return found


@functools.lru_cache(maxsize=None)
def _ffmpeg_exe_cached(env_value: str) -> str:
    if env_value:
        return _from_env("SEPARATOR_FFMPEG")  # type: ignore[return-value]
    try:
        import imageio_ffmpeg

        exe = imageio_ffmpeg.get_ffmpeg_exe()
        if exe and os.access(exe, os.X_OK):
            return exe
    except Exception:  # not installed, or no binary for this platform
        pass
    found = shutil.which("ffmpeg")
    if found:
        return found
    raise FFmpegNotFound("no ffmpeg binary found; " + _INSTALL_HINT.format(var="SEPARATOR_FFMPEG"))


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary to run (see module docstring for the order)."""
    return _ffmpeg_exe_cached(os.environ.get("SEPARATOR_FFMPEG", "").strip())


@functools.lru_cache(maxsize=None)
def _ffprobe_exe_cached(env_value: str) -> str:
    if env_value:
        return _from_env("SEPARATOR_FFPROBE")  # type: ignore[return-value]
    found = shutil.which("ffprobe")
    if found:
        return found
    try:  # an ffprobe installed beside the ffmpeg we use
        sibling = Path(ffmpeg_exe()).with_name("ffprobe")
        if sibling.is_file() and os.access(sibling, os.X_OK):
            return str(sibling)
    except FFmpegNotFound:
        pass
    raise FFmpegNotFound(
        "ffprobe not found (imageio-ffmpeg does not ship one); "
        + _INSTALL_HINT.format(var="SEPARATOR_FFPROBE")
    )


def ffprobe_exe() -> str:
    """Path of the ffprobe binary to run."""
    return _ffprobe_exe_cached(os.environ.get("SEPARATOR_FFPROBE", "").strip())


@functools.lru_cache(maxsize=None)
def _encoders(exe: str) -> frozenset[str]:
    out = subprocess.run([exe, "-hide_banner", "-nostdin", "-encoders"],
                         capture_output=True, text=True, timeout=30).stdout
    names = set()
    started = False
    for line in out.splitlines():
        if line.strip().startswith("------"):
            started = True
            continue
        parts = line.split()
        if started and len(parts) >= 2:
            names.add(parts[1])
    return frozenset(names)


def has_encoder(name: str) -> bool:
    """Whether the chosen ffmpeg has encoder ``name`` (e.g. ``libopencore_amrnb``)."""
    return name in _encoders(ffmpeg_exe())


@functools.lru_cache(maxsize=None)
def _buildconf(exe: str) -> str:
    return subprocess.run([exe, "-hide_banner", "-nostdin", "-version"],
                          capture_output=True, text=True, timeout=30).stdout


def has_soxr() -> bool:
    """Whether the chosen ffmpeg's libswresample can use the SoX resampler."""
    return "--enable-libsoxr" in _buildconf(ffmpeg_exe())
