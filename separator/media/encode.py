"""Encode float32 PCM to the file an ``AudioConfig`` asks for.

:func:`resolve_encoding` turns an AudioConfig (any field may be absent) plus the probed source into
concrete :class:`EncodeSettings` following spec §1.6 and the codec table in
:mod:`separator.codecs`.  :class:`Encoder` streams blocks into one ffmpeg process::

    ffmpeg -f f32le -ar IN_SR -ac IN_CH -i pipe: -af aresample=resampler=soxr -ac C -ar R
           -c:a ENCODER [-b:a B] [codec flags] -map_metadata -1 -fflags +bitexact
           -flags:a +bitexact -f CONTAINER file:OUT

Choices (see the README's media notes):

* Samples are ``nan_to_num``'d and hard-clipped to [-1, 1] before they reach ffmpeg, for every
  codec but float wav: the integer formats would saturate there anyway, and a lossy encoder fed
  > 0 dBFS produces files that clip on every player.  No normalisation (it would need two passes).
* ``-fflags +bitexact -flags:a +bitexact -map_metadata -1``: no encoder-version strings and no
  copied tags, so identical input gives identical bytes (and identical ``Md5``) for a given
  ffmpeg build.  mp3 keeps its Xing/LAME header (exact duration for players and for probing).
* aac goes into the ``ipod`` muxer (``.m4a``) with ``-movflags +faststart`` (moov first, playable
  while downloading).  flac and wav are 16-bit (``s16``) like the cloud's PCM, unless the source
  holds more (24-bit or float: kept where the codec can hold it) or ``SampleFormat`` says.
"""
from __future__ import annotations

import os
import queue
import subprocess
import threading
from dataclasses import dataclass
from typing import Any

import ffmpeg as ffmpeg_python
import numpy as np

from ..codecs import AMR_NB_BITRATES, BITRATE_RANGE_KBPS, DEFAULT_CODEC, MUSIC_MODE_CODECS, get_codec
from ..errors import CIError, invalid_argument
from .decode import _reap, _resample_filter, _StderrDrain, popen_child
from .ffmpeg import ffmpeg_exe, has_encoder
from .probe import MediaProbe, _file_url

__all__ = ["EncodeSettings", "resolve_encoding", "Encoder", "encode_array", "DEFAULT_BITRATE_KBPS"]

DEFAULT_BITRATE_KBPS = 128  # mp3/aac when the source's bitrate is unknown
WAV_ENCODERS = {"s16": "pcm_s16le", "s24": "pcm_s24le", "f32": "pcm_f32le"}

# Bitrates LAME can write (kbps) per MPEG version; libmp3lame snaps a request to the nearest one.
_MP3_MPEG1 = (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320)       # 32/44.1/48 kHz
_MP3_MPEG2 = (8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160)           # 16/22.05/24 kHz
_MP3_MPEG25 = (8, 16, 24, 32, 40, 48, 56, 64)                                      # 8/11.025/12 kHz


def _mp3_bitrates(samplerate: int) -> tuple[int, ...]:
    if samplerate >= 32000:
        return _MP3_MPEG1
    if samplerate >= 16000:
        return _MP3_MPEG2
    return _MP3_MPEG25


def _snap_nearest(value: float, allowed: tuple[int, ...]) -> int:
    return min(allowed, key=lambda a: (abs(a - value), a))  # ties -> lower (as LAME does)


def amr_mode_bps(kbps: float) -> int:
    """AMR-NB mode for a requested bitrate: the highest mode not above it (floor: 4.75 kbps)."""
    bps = kbps * 1000
    fitting = [m for m in AMR_NB_BITRATES if m <= bps]
    return max(fitting) if fitting else AMR_NB_BITRATES[0]


@dataclass(frozen=True)
class EncodeSettings:
    codec: str                  # protocol name: aac, mp3, flac, amr, wav
    ext: str                    # what ${ext} becomes
    encoder: str                # ffmpeg encoder
    container: str              # ffmpeg muxer
    samplerate: int
    channels: int
    bitrate_kbps: float | None  # None for lossless; AMR: the mode (e.g. 12.2)
    #: what was changed from the request to fit the encoder (shown to the user, not an error)
    notes: tuple[str, ...] = ()
    #: lossless codecs: "s16", "s24" or "f32" (wav); None for lossy ones
    sample_format: str | None = None

    @property
    def floating(self) -> bool:
        """Float samples: the file can hold values past full scale, nothing clips."""
        return self.sample_format == "f32"

    @property
    def bitrate_bps(self) -> int | None:
        return None if self.bitrate_kbps is None else int(round(self.bitrate_kbps * 1000))

    def describe(self) -> str:
        br = "lossless" if self.bitrate_kbps is None else f"{self.bitrate_kbps:g} kbps"
        return (f"{self.codec} ({self.encoder} in {self.container}, .{self.ext}): "
                f"{self.samplerate} Hz, {self.channels} ch, {br}")

    def output_args(self) -> dict[str, Any]:
        """ffmpeg output options (ffmpeg-python keyword form)."""
        args: dict[str, Any] = {"acodec": self.encoder, "ar": self.samplerate, "ac": self.channels,
                                "format": self.container, "map_metadata": -1,
                                "fflags": "+bitexact", "flags:a": "+bitexact"}
        if self.bitrate_bps is not None:
            args["b:a"] = self.bitrate_bps
        if self.codec == "flac" and self.sample_format == "s24":
            args["sample_fmt"], args["bits_per_raw_sample"] = "s32", 24
        elif self.codec in ("flac", "amr"):
            args["sample_fmt"] = "s16"
        if self.codec == "aac":
            args["movflags"] = "+faststart"
        return args


def _as_int(name: str, value: Any) -> int | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        return int(str(value).strip())
    except ValueError:
        raise invalid_argument(f"AudioConfig.{name} must be an integer, got {value!r}")


def _default_channels(source_channels: int, allowed: tuple[int, ...]) -> int:
    """The largest channel count the codec allows that does not exceed the source's (never upmix)."""
    fitting = [c for c in allowed if c <= source_channels]
    return max(fitting) if fitting else min(allowed)


def resolve_encoding(codec: str | None, samplerate: int | None, bitrate_kbps: int | None,
                     channels: int | None, *, source: MediaProbe,
                     music_mode: bool = False, sample_format: str | None = None) -> EncodeSettings:
    """Concrete output settings for an AudioConfig (spec §1.6 defaults).

    * codec: ``aac`` when absent (case-insensitive);
    * samplerate: 44100 when absent (amr: 8000);
    * channels: the source's channel count, lowered to the largest the codec allows
      (3 -> 2, 7 -> 6; amr always 1);
    * bitrate: the source's bitrate when absent (unknown: 128 kbps), clamped to the codec's
      ceiling (``max_bitrate_kbps``; aac also to its 6144 bits/frame/channel limit); mp3 snapped
      to the nearest bitrate LAME writes at that sample rate; amr mapped to the highest AMR-NB
      mode not above it (>= 12.2 -> 12.2); lossless codecs: none;
    * MusicMode: Samplerate, Bitrate and Channels are ignored (the defaults above are used).

    Validating requests is the request layer's job; this is only a guard: a value the codec
    table forbids raises ``CIError('InvalidArgument')``.
    """
    name = (codec or DEFAULT_CODEC).strip().lower() or DEFAULT_CODEC
    try:
        spec = get_codec(name)
    except KeyError:
        raise invalid_argument(f"AudioConfig.Codec {codec!r} is not supported")
    if music_mode:
        if spec.name not in MUSIC_MODE_CODECS:
            raise invalid_argument(f"AudioConfig.Codec {codec!r} is not allowed with MusicMode")
        samplerate = bitrate_kbps = channels = None
    sr = _as_int("Samplerate", samplerate)
    br = _as_int("Bitrate", bitrate_kbps)
    ch = _as_int("Channels", channels)

    if sr is None:
        sr = spec.default_samplerate
    elif sr not in spec.samplerates:
        raise invalid_argument(f"AudioConfig.Samplerate {sr} is not allowed for {spec.name}")
    if ch is None:
        ch = _default_channels(source.channels, spec.channels)
    elif ch not in spec.channels:
        raise invalid_argument(f"AudioConfig.Channels {ch} is not allowed for {spec.name}")
    if br is not None and not (BITRATE_RANGE_KBPS[0] <= br <= BITRATE_RANGE_KBPS[1]):
        raise invalid_argument(f"AudioConfig.Bitrate {br} is outside {BITRATE_RANGE_KBPS} kbps")

    kbps: float | None
    notes: list[str] = []
    if spec.lossless:
        kbps = None
        if br is not None:
            notes.append(f"Bitrate {br} kbps does not apply to lossless {spec.name}: ignored")
    else:
        want = float(br) if br is not None else (source.bitrate or float(DEFAULT_BITRATE_KBPS))
        if spec.name == "amr":
            kbps = amr_mode_bps(want) / 1000.0
        else:
            ceiling = float(spec.max_bitrate_kbps or BITRATE_RANGE_KBPS[1])
            if spec.name == "aac":  # 6144 bits per 1024-sample frame per channel
                ceiling = min(ceiling, 6.0 * sr * ch / 1000)
            want = max(float(BITRATE_RANGE_KBPS[0]), min(want, ceiling))
            if spec.name == "mp3":
                kbps = float(_snap_nearest(want, _mp3_bitrates(sr)))
            else:
                kbps = float(int(want))
        if br is not None and abs(kbps - br) > 1e-9:
            why = {"amr": "the highest AMR-NB mode not above it",
                   "mp3": f"the nearest bitrate LAME writes at {sr} Hz"}.get(
                       spec.name, f"the most {spec.encoder} encodes at {sr} Hz, {ch} channel(s)")
            notes.append(f"Bitrate {br} kbps is not one {spec.name} can use: {kbps:g} kbps ({why})")
    fmt = None
    if spec.sample_formats:
        if sample_format is not None and sample_format not in spec.sample_formats:
            raise invalid_argument(f"AudioConfig.SampleFormat {sample_format!r} is not allowed for {spec.name}")
        own = source.audio.sample_format
        fmt = sample_format or (own if own in spec.sample_formats else "s16")
    elif sample_format is not None:
        raise invalid_argument(f"AudioConfig.SampleFormat applies to wav and flac, not {spec.name}")
    encoder = WAV_ENCODERS[fmt] if spec.name == "wav" else spec.encoder
    return EncodeSettings(codec=spec.name, ext=spec.ext, encoder=encoder,
                          container=spec.container, samplerate=sr, channels=ch, bitrate_kbps=kbps,
                          notes=tuple(notes), sample_format=fmt)


class Encoder:
    """Stream float32 ``(frames, in_channels)`` blocks at ``in_samplerate`` into an encoded file.

    Use as a context manager.  ``close()`` (called by a clean ``with`` exit) waits for ffmpeg
    and raises ``CIError('InternalError', status=500)`` with ffmpeg's stderr tail on failure.  On
    any failure, or an exception inside the ``with`` block, ffmpeg is killed and the partial
    output deleted.  Only ``out_path`` is written (the caller renames it into place).
    """

    PIECE_FRAMES = 1 << 16   # 1.5 s at 44.1 kHz
    QUEUE_PIECES = 4         # at most ~6 s (2 MiB of stereo float32) waiting per encoder

    def __init__(self, out_path: str | os.PathLike, settings: EncodeSettings,
                 in_samplerate: int, in_channels: int, in_layout: str | None = None):
        if in_samplerate <= 0 or in_channels <= 0:
            raise ValueError("in_samplerate and in_channels must be positive")
        if not has_encoder(settings.encoder):
            raise CIError("InternalError", f"the ffmpeg in use ({ffmpeg_exe()}) has no "
                          f"{settings.encoder} encoder needed for {settings.codec} output",
                          status=500)
        self.out_path = os.fspath(out_path)
        self.settings = settings
        self.in_samplerate = in_samplerate
        self.in_channels = in_channels
        self.frames_written = 0
        self._closed = False
        # ``in_layout`` (past two channels): the channels keep their names, and a file of the
        # same channel count keeps that layout instead of ffmpeg's default one for the count
        layout = {"ch_layout": in_layout} if in_layout else {"ac": in_channels}
        out_args = settings.output_args()
        if in_layout and settings.channels == in_channels:
            del out_args["ac"]
            out_args["ch_layout"] = in_layout
        stream = ffmpeg_python.input("pipe:", format="f32le", ar=in_samplerate, **layout)
        out = stream.output(_file_url(self.out_path), af=_resample_filter(in_channels, settings.channels),
                            **out_args)
        cmd = out.global_args("-nostdin", "-hide_banner", "-v", "error").overwrite_output() \
                 .compile(cmd=ffmpeg_exe())
        self._proc = popen_child(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._drain = _StderrDrain(self._proc.stderr)
        # A feeder thread writes to ffmpeg's stdin, so that encoding runs while the caller
        # computes the next block (a pipe holds only ~0.2 s of audio: writing directly would
        # make separation wait for the encoder).  Blocks are queued in pieces of at most
        # PIECE_FRAMES and the queue holds QUEUE_PIECES of them: what waits for a slow encoder
        # is a few seconds of audio, whatever size of block the caller writes.
        self._queue: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=self.QUEUE_PIECES)
        self._feed_error: BaseException | None = None
        self._feeder = threading.Thread(target=self._feed, name="encoder-feed", daemon=True)
        self._feeder.start()

    def _feed(self) -> None:
        while True:
            data = self._queue.get()
            if data is None:
                return
            if self._feed_error is not None:
                continue  # keep draining so that a producer blocked on put() wakes up
            try:
                self._proc.stdin.write(memoryview(data).cast("B"))
            except (BrokenPipeError, OSError, ValueError) as err:
                self._feed_error = err

    # -- streaming ------------------------------------------------------------------------
    def write(self, block: np.ndarray) -> None:
        if self._closed:
            raise ValueError("write() on a closed Encoder")
        a = np.asarray(block, dtype=np.float32)
        if a.ndim == 1 and self.in_channels == 1:
            a = a[:, None]
        if a.ndim != 2 or a.shape[1] != self.in_channels:
            raise ValueError(f"expected a (frames, {self.in_channels}) block, got shape {a.shape}")
        if a.shape[0] == 0:
            return
        for start in range(0, a.shape[0], self.PIECE_FRAMES):
            if self._feed_error is not None:
                self._fail("ffmpeg stopped accepting audio")
            piece = a[start:start + self.PIECE_FRAMES]
            # a new C-contiguous little-endian buffer that the feeder thread owns: two passes
            pcm = np.empty(piece.shape, dtype="<f4")
            if self.settings.floating:                  # float samples hold what they are given
                pcm[...] = piece
                np.nan_to_num(pcm, copy=False, nan=0.0, posinf=1.0, neginf=-1.0)
            else:
                np.clip(piece, -1.0, 1.0, out=pcm)      # +-inf -> +-1 (NaN stays NaN)
                np.nan_to_num(pcm, copy=False, nan=0.0)  # NaN -> 0
            self._queue.put(pcm)
        self.frames_written += a.shape[0]

    def close(self) -> None:
        """Finish the file; raise ``CIError('InternalError')`` if ffmpeg failed."""
        if self._closed:
            return
        self._queue.put(None)
        self._feeder.join()
        try:
            self._proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        rc = self._proc.wait()
        self._drain.join(timeout=10)
        self._closed = True
        if rc != 0:
            self._fail(f"ffmpeg exited with {rc}")
        if self._feed_error is not None:
            self._fail(f"ffmpeg stopped accepting audio ({self._feed_error})")
        if self.frames_written == 0:
            self._fail("no audio was written")

    def abort(self) -> None:
        """Kill ffmpeg and delete the partial output."""
        self._closed = True
        _reap(self._proc, self._drain)
        feeder = getattr(self, "_feeder", None)
        if feeder is not None and feeder.is_alive() and feeder is not threading.current_thread():
            self._feed_error = self._feed_error or RuntimeError("aborted")
            while True:  # make room for the stop marker: queued audio is not wanted any more
                try:
                    self._queue.put_nowait(None)
                    break
                except queue.Full:
                    try:
                        self._queue.get_nowait()
                    except queue.Empty:
                        pass
            feeder.join(timeout=10)
        try:
            os.unlink(self.out_path)
        except FileNotFoundError:
            pass

    def _fail(self, what: str) -> None:
        tail = self._drain.tail() if self._drain.count else ""
        self.abort()
        raise CIError("InternalError", f"encoding {self.settings.codec} to "
                      f"{os.path.basename(self.out_path)!r} failed: {what}"
                      + (f": {tail}" if tail else ""), status=500)

    def __enter__(self) -> "Encoder":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()

    def __del__(self):  # last resort: never leave an ffmpeg behind
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()


def encode_array(path: str | os.PathLike, audio: np.ndarray, sr: int, settings: EncodeSettings,
                 block_frames: int = 262144) -> None:
    """Encode a whole float32 ``(frames, channels)`` (or 1-D mono) array at ``sr`` to ``path``."""
    a = np.asarray(audio, dtype=np.float32)
    if a.ndim == 1:
        a = a[:, None]
    with Encoder(path, settings, sr, a.shape[1]) as enc:
        for start in range(0, a.shape[0], block_frames):
            enc.write(a[start:start + block_frames])
