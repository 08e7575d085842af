"""Audio already in memory, through the same ffmpeg filters as a decoded file.

:func:`resample_stream` turns a stream of float32 ``(frames, channels)`` blocks at one rate
into blocks at another, with the channel selection and the resampler that
:func:`separator.media.decode_stream` applies to a file (``pan`` at unity gain, then soxr when
ffmpeg has it).  So an array separated in memory goes through exactly the arithmetic its file
would: the results equal those of the file.  When nothing is to be done (same rate, no
channel change) the blocks pass through untouched, without ffmpeg.
"""
from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterable, Iterator

import numpy as np

from .decode import _reap, _resample_filter, _StderrDrain, popen_child
from .ffmpeg import ffmpeg_exe

BLOCK_FRAMES = 1 << 16


def pick_channels(block: np.ndarray, pick: tuple[int, ...] | None) -> np.ndarray:
    """The channels ``pick`` names, in that order (a channel may be named twice)."""
    return block if pick is None else np.ascontiguousarray(block[:, list(pick)])


def resample_stream(blocks: Iterable[np.ndarray], in_rate: int, in_channels: int, out_rate: int,
                    out_channels: int | None = None, *, pick: tuple[int, ...] | None = None
                    ) -> Iterator[np.ndarray]:
    """``blocks`` (``(frames, in_channels)`` float32 at ``in_rate``) at ``out_rate``, with the
    channels ``pick`` names (else ``out_channels`` by ffmpeg's mixing, as :func:`decode_stream`)."""
    width = len(pick) if pick is not None else (out_channels or in_channels)
    if in_rate == out_rate and (pick is not None or width == in_channels):
        for block in blocks:
            yield pick_channels(np.asarray(block, np.float32), pick)
        return
    af = _resample_filter(in_channels, width, pick)
    cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-v", "error", "-f", "f32le", "-ar", str(in_rate),
           "-ac", str(in_channels), "-i", "pipe:", "-af", af, "-f", "f32le", "-acodec", "pcm_f32le",
           "-ar", str(out_rate), "-ac", str(width), "pipe:"]
    proc = popen_child(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    drain = _StderrDrain(proc.stderr)
    failure: list[BaseException] = []

    def feed() -> None:
        try:
            for block in blocks:
                proc.stdin.write(np.ascontiguousarray(block, dtype="<f4").tobytes())
        except BaseException as err:  # noqa: BLE001 - handed to the reader
            failure.append(err)
        finally:
            try:
                proc.stdin.close()
            except OSError:
                pass

    feeder = threading.Thread(target=feed, name="resample-feed", daemon=True)
    feeder.start()
    frame_bytes = 4 * width
    try:
        while True:
            raw = proc.stdout.read(BLOCK_FRAMES * frame_bytes)
            if not raw:
                break
            usable = len(raw) - len(raw) % frame_bytes
            if usable:
                yield np.frombuffer(raw[:usable], dtype=np.float32).reshape(-1, width)
        feeder.join()
        rc = proc.wait()
    finally:
        _reap(proc, drain)
        feeder.join(timeout=10)
    if failure and not isinstance(failure[0], (BrokenPipeError, OSError)):
        raise failure[0]
    if rc != 0:
        raise RuntimeError(f"ffmpeg could not resample {in_rate} -> {out_rate} Hz: {drain.tail()}")


__all__ = ["pick_channels", "resample_stream"]
