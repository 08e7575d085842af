"""Decode the first audio stream of any file ffmpeg reads to float32 PCM, streamed in blocks.

In the spirit of Whisper's ``load_audio``: one explicit ffmpeg command, raw ``f32le`` on stdout::

    ffmpeg -nostdin -v error -i file:IN -map 0:a:0 -vn -sn -dn -af aresample=resampler=soxr
           -ac C -ar R -f f32le pipe:

Truncated / corrupt input policy (measured with ffmpeg 5.1 and 9.0; ffmpeg exits 0 on most
damaged files, and ``-xerror`` would also reject files that merely have a glitch):

* ffmpeg exits non-zero, or decodes no samples at all -> :class:`InputError`;
* the decoded audio is shorter than the duration the file's header declares by more than
  ``max(0.5 s, 2 %)`` -> :class:`InputError` ("truncated or corrupt").  This catches a cut-off
  flac / wav / m4a / mp3-with-Xing-header and a hole in a flac or wav (for wav the ``data``
  chunk size is read from the RIFF header, since ffmpeg sizes a cut wav by the file).  Durations that ffmpeg only
  *estimated* from the bitrate (mp3 without a Xing header) are not trusted, so such a truncated
  mp3 decodes as a shorter file; so does a cut-off ogg (its duration comes from its last page);
* decoder errors that do not shorten the audio (a damaged frame in the middle of an mp3) are
  tolerated: the audio plays through, as in the cloud's ffmpeg-based pipeline.  They are logged
  as a warning.

The verdict needs the whole stream, so the error is raised by the generator's final ``next()``,
after the last block: a consumer must exhaust the generator before trusting its output.
"""
from __future__ import annotations

import collections
import logging
import os
import subprocess
import threading
from typing import Iterator

import ffmpeg as ffmpeg_python
import numpy as np

from ..errors import InputError
from .ffmpeg import ffmpeg_exe, has_soxr
from .probe import MediaProbe, _file_url, probe

__all__ = ["decode_stream", "load_audio", "popen_child"]

log = logging.getLogger(__name__)

DEFAULT_BLOCK_FRAMES = 262144
TRUNCATION_TOLERANCE_S = 0.5
TRUNCATION_TOLERANCE_FRAC = 0.02


class _StderrDrain(threading.Thread):
    """Reads a process's stderr to the end so ffmpeg can never block on a full pipe."""

    def __init__(self, pipe, keep: int = 40):
        super().__init__(daemon=True)
        self.pipe = pipe
        self.lines: collections.deque[str] = collections.deque(maxlen=keep)
        self.count = 0
        self.start()

    def run(self) -> None:
        try:
            for raw in iter(self.pipe.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip()
                if line:
                    self.lines.append(line)
                    self.count += 1
        except (OSError, ValueError):
            pass

    def tail(self, n: int = 5) -> str:
        return " | ".join(list(self.lines)[-n:])


def _reap(proc: subprocess.Popen, drain: _StderrDrain | None) -> None:
    """Kill (if still running) and wait for ``proc``; close its pipes."""
    if proc.poll() is None:
        proc.kill()
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            try:
                pipe.close()
            except OSError:
                pass
    proc.wait()
    if drain is not None:
        drain.join(timeout=5)
    if proc.stderr is not None:
        try:
            proc.stderr.close()
        except OSError:
            pass


def popen_child(cmd: list[str], **kwargs) -> subprocess.Popen:
    """Start an ffmpeg child in its own process group: a Ctrl-C at the terminal reaches only
    us, and we end the children ourselves (:func:`_reap`) after removing what they wrote."""
    return subprocess.Popen(cmd, start_new_session=True, **kwargs)


def _resample_filter(in_channels: int | None = None, out_channels: int | None = None,
                     pick: tuple[int, ...] | None = None) -> str:
    """The ``-af`` chain: the channels to keep, then soxr resampling when ffmpeg has it.

    ``pick`` names the input channel of each output channel, at unity gain (``(2, 2)``: the
    third channel, twice; ``(4, 5)``: a surround pair).  Without it a mono input that becomes
    stereo is duplicated at unity gain too: ffmpeg's default mono -> stereo upmix puts the
    channel at -3 dB in each side, so a mono source would come back 3 dB quieter after a
    stereo separation and a mono encode.  Other channel changes use ffmpeg's default matrix
    (``-ac``).
    """
    chain = []
    if pick is None and in_channels == 1 and out_channels == 2:
        pick = (0, 0)
    if pick is not None:
        layout = {1: "mono", 2: "stereo"}.get(len(pick), f"{len(pick)}c")
        chain.append(f"pan={layout}|" + "|".join(f"c{i}=c{k}" for i, k in enumerate(pick)))
    chain.append("aresample=resampler=soxr" if has_soxr() else "aresample")
    return ",".join(chain)


def _decode_cmd(path: str, samplerate: int, channels: int, in_channels: int,
                pick: tuple[int, ...] | None = None) -> list[str]:
    stream = ffmpeg_python.input(_file_url(path))
    out = stream.output("pipe:", format="f32le", acodec="pcm_f32le", ac=channels, ar=samplerate,
                        map="0:a:0", af=_resample_filter(in_channels, channels, pick),
                        vn=None, sn=None, dn=None)
    return out.global_args("-nostdin", "-hide_banner", "-v", "error").compile(cmd=ffmpeg_exe())


def decode_stream(path: str | os.PathLike, samplerate: int = 44100, channels: int = 2,
                  block_frames: int = DEFAULT_BLOCK_FRAMES, *,
                  info: MediaProbe | None = None,
                  pick: tuple[int, ...] | None = None) -> Iterator[np.ndarray]:
    """Yield the first audio stream of ``path`` as float32 ``(frames, channels)`` blocks.

    Every block has ``block_frames`` frames except the last.  ffmpeg resamples to ``samplerate``
    and up/down-mixes to ``channels`` (mono -> stereo duplicates the channel at unity gain), or,
    with ``pick``, takes the input channels it names, one per output channel.  Only one block
    is in memory at a time.  ``info`` is the file's :func:`probe` result (probed here when not
    given; the probe also turns a missing, empty or non-media file into an :class:`InputError`
    before ffmpeg starts).  Closing the generator early kills and reaps ffmpeg.
    """
    if samplerate <= 0 or channels <= 0 or block_frames <= 0:
        raise ValueError("samplerate, channels and block_frames must be positive")
    if pick is not None and len(pick) != channels:
        raise ValueError(f"pick names {len(pick)} channels, the output has {channels}")
    path = os.fspath(path)
    if info is None:
        info = probe(path)
    return _decode_gen(path, samplerate, channels, block_frames, info, pick)


def _decode_gen(path: str, samplerate: int, channels: int, block_frames: int,
                info: MediaProbe, pick: tuple[int, ...] | None) -> Iterator[np.ndarray]:
    frame_bytes = 4 * channels
    block_bytes = block_frames * frame_bytes
    cmd = _decode_cmd(path, samplerate, channels, info.channels, pick)
    proc = popen_child(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    drain = _StderrDrain(proc.stderr)
    total = 0
    name = os.path.basename(path)
    try:
        while True:
            buf = bytearray(block_bytes)
            view = memoryview(buf)
            got = 0
            while got < block_bytes:
                n = proc.stdout.readinto(view[got:])
                if not n:
                    break
                got += n
            got -= got % frame_bytes
            if got:
                total += got // frame_bytes
                yield np.frombuffer(buf, dtype=np.float32, count=got // 4).reshape(-1, channels)
            if got < block_bytes:
                break
        rc = proc.wait()
        drain.join(timeout=10)
    finally:
        _reap(proc, drain)

    if rc != 0:
        raise InputError(f"cannot decode {name!r} (ffmpeg exit {rc}): {drain.tail() or 'no message'}")
    if total == 0:
        raise InputError(f"cannot decode {name!r}: no audio samples decoded "
                         f"{('(' + drain.tail() + ')') if drain.count else ''}".rstrip())
    decoded_s = total / samplerate
    declared = info.declared_duration
    if declared:
        short = declared - decoded_s
        if short > max(TRUNCATION_TOLERANCE_S, TRUNCATION_TOLERANCE_FRAC * declared):
            raise InputError(
                f"input {name!r} is truncated or corrupt: its header declares {declared:.2f} s "
                f"but only {decoded_s:.2f} s could be decoded"
                + (f" ({drain.tail(3)})" if drain.count else ""))
    if drain.count:
        log.warning("decoding %s: ffmpeg reported %d error line(s), audio kept (%.2f s): %s",
                    name, drain.count, decoded_s, drain.tail(3))


def load_audio(path: str | os.PathLike, samplerate: int = 44100, channels: int = 2) -> np.ndarray:
    """The whole first audio stream as one float32 ``(frames, channels)`` array."""
    blocks = list(decode_stream(path, samplerate, channels))
    return np.concatenate(blocks, axis=0)
