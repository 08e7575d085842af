"""ffprobe a media file: what the pipeline needs (:class:`MediaProbe`) and the CI ``MediaInfo`` dict.

``probe(path)`` raises :class:`~separator.errors.InputError` (code ``InvalidInput``) for a missing
path, an empty file, a file ffprobe cannot read, a file without an audio stream and a file of zero
duration, with a message saying which.
"""
from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..errors import InputError
from .ffmpeg import ffprobe_exe

__all__ = ["probe", "MediaProbe", "AudioStream", "media_info", "outputs_media_info"]

PROBE_TIMEOUT_S = 120
# ffmpeg logs this when a demuxer has no frame count / index and guesses the length from the
# bitrate (e.g. an mp3 without a Xing header).  Such a duration is not used to detect truncation.
_ESTIMATED = "Estimating duration from bitrate"


def _f(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if x == x else None  # NaN -> None


def _i(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class AudioStream:
    index: int                  # stream index in the file
    codec: str                  # ffprobe codec_name (mp3, aac, vorbis, pcm_s16le, ...)
    samplerate: int
    channels: int
    channel_layout: str
    bitrate_kbps: float | None  # stream bit_rate, None if ffprobe does not know it
    duration: float | None      # seconds
    #: "s16", "s24" or "f32" for a lossless stream (what its samples hold); None for lossy codecs
    sample_format: str | None = None


@dataclass(frozen=True)
class MediaProbe:
    path: str
    size: int                   # bytes
    duration: float             # seconds: the first audio stream's duration, else the container's
    duration_estimated: bool    # ffmpeg guessed the duration from the bitrate (not exact)
    format_name: str
    format_long_name: str
    audio_streams: tuple[AudioStream, ...]
    has_video: bool             # a real video stream (cover art / attached pictures do not count)
    declared_duration: float | None = None  # what the header promises (None: unknown/estimated)
    raw: dict = field(default_factory=dict, compare=False, hash=False, repr=False)  # ffprobe JSON

    # -- the first audio stream, which is the one decoded ------------------------------------
    @property
    def audio(self) -> AudioStream:
        return self.audio_streams[0]

    @property
    def samplerate(self) -> int:
        return self.audio.samplerate

    @property
    def channels(self) -> int:
        return self.audio.channels

    @property
    def codec(self) -> str:
        return self.audio.codec

    @property
    def bitrate(self) -> float | None:
        """The first audio stream's bitrate in kbps.

        Falls back to the container's overall bitrate when the file holds exactly one stream
        (flac, some wav); ``None`` when unknown.
        """
        if self.audio.bitrate_kbps:
            return self.audio.bitrate_kbps
        fmt = self.raw.get("format", {})
        if _i(fmt.get("nb_streams")) == 1:
            br = _f(fmt.get("bit_rate"))
            if br:
                return br / 1000.0
        return None

    def media_info(self) -> dict:
        """The CI ``MediaInfo`` dict (spec §2.3): all values strings, ffprobe-style."""
        return _media_info(self.raw)


# --------------------------------------------------------------------------------------------
def _run_ffprobe(path: str) -> tuple[dict, str]:
    cmd = [ffprobe_exe(), "-hide_banner", "-v", "warning", "-of", "json",
           "-show_format", "-show_streams", _file_url(path)]
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise InputError(f"input {Path(path).name!r}: ffprobe timed out after {PROBE_TIMEOUT_S} s")
    err = proc.stderr.decode("utf-8", "replace")
    if proc.returncode != 0:
        raise InputError(f"input {Path(path).name!r} is not a readable media file: "
                         f"{_tail(err) or 'ffprobe failed'}")
    try:
        return json.loads(proc.stdout.decode("utf-8", "replace") or "{}"), err
    except json.JSONDecodeError:
        raise InputError(f"input {Path(path).name!r}: ffprobe returned unreadable output")


def _file_url(path: str) -> str:
    """``file:`` URL so names with ``:`` or a leading ``-`` are never read as protocols/options."""
    return "file:" + os.path.abspath(path)


def _tail(text: str, lines: int = 3) -> str:
    kept = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(kept[-lines:])


#: codecs whose decoded samples are exactly what the file holds
_LOSSLESS = ("pcm_", "flac", "alac", "wavpack", "ape", "tta", "mlp", "truehd", "wmalossless", "shorten")


def _sample_format(stream: dict) -> str | None:
    """What a lossless stream's samples hold (24 bits and more count as s24; float as f32)."""
    codec = str(stream.get("codec_name", ""))
    if not codec.startswith(_LOSSLESS):
        return None
    if codec.startswith("pcm_f") or stream.get("sample_fmt") in ("flt", "fltp", "dbl", "dblp"):
        return "f32"
    bits = _i(stream.get("bits_per_raw_sample")) or _i(stream.get("bits_per_sample")) or 16
    return "s24" if bits > 16 else "s16"


def probe(path: str | os.PathLike) -> MediaProbe:
    """Probe ``path`` with ffprobe; raise :class:`InputError` when it cannot be separated."""
    path = os.fspath(path)
    name = Path(path).name
    if not os.path.exists(path):
        raise InputError(f"input file not found: {path}")
    if not os.path.isfile(path):
        raise InputError(f"input {name!r} is not a regular file")
    size = os.path.getsize(path)
    if size == 0:
        raise InputError(f"input {name!r} is empty (0 bytes)")
    data, err = _run_ffprobe(path)
    streams = data.get("streams") or []
    fmt = data.get("format") or {}
    if not fmt and not streams:
        raise InputError(f"input {name!r} is not a readable media file")

    audio = []
    has_video = False
    for s in streams:
        kind = s.get("codec_type")
        if kind == "video" and not (s.get("disposition") or {}).get("attached_pic"):
            has_video = True
        if kind != "audio":
            continue
        sr, ch = _i(s.get("sample_rate")), _i(s.get("channels"))
        if not sr or not ch:
            continue  # an audio stream ffmpeg cannot decode parameters for
        br = _f(s.get("bit_rate"))
        audio.append(AudioStream(
            index=_i(s.get("index")) or 0, codec=str(s.get("codec_name", "")),
            samplerate=sr, channels=ch, channel_layout=str(s.get("channel_layout", "")),
            bitrate_kbps=br / 1000.0 if br else None, duration=_f(s.get("duration")),
            sample_format=_sample_format(s)))
    if not audio:
        kinds = ", ".join(f"{s.get('codec_type')}:{s.get('codec_name')}" for s in streams) or "none"
        raise InputError(f"input {name!r} has no audio stream (streams: {kinds})")

    duration = audio[0].duration or _f(fmt.get("duration")) or 0.0
    if duration <= 0:
        raise InputError(f"input {name!r} has zero duration (no audio samples)")
    estimated = _ESTIMATED in err
    format_name = str(fmt.get("format_name", ""))
    declared = None if estimated else duration
    if format_name == "wav":  # ffmpeg sizes a cut-off wav by the file; its header knows better
        declared = _wav_declared_duration(path) or declared
    return MediaProbe(
        path=path, size=size, duration=duration, duration_estimated=estimated,
        format_name=format_name, format_long_name=str(fmt.get("format_long_name", "")),
        audio_streams=tuple(audio), has_video=has_video, declared_duration=declared, raw=data)


def _wav_declared_duration(path: str) -> float | None:
    """Seconds promised by a RIFF/WAVE header's ``data`` chunk size (None if absent, RF64 or a
    streaming placeholder size)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(1 << 16)
    except OSError:
        return None
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos, byte_rate = 12, 0
    while pos + 8 <= len(head):
        cid, size = head[pos:pos + 4], int.from_bytes(head[pos + 4:pos + 8], "little")
        if cid == b"fmt " and pos + 16 <= len(head):
            byte_rate = int.from_bytes(head[pos + 16:pos + 20], "little")
        elif cid == b"data":
            if byte_rate <= 0 or size in (0, 0xFFFFFFFF) or size >= 0xFFFFF000:
                return None
            return size / byte_rate
        pos += 8 + size + (size & 1)
    return None


# -- MediaInfo (spec §2.3) -------------------------------------------------------------------
def _s(value: Any) -> str:
    return "" if value is None else str(value)


def _secs(value: Any) -> str:
    x = _f(value)
    return "" if x is None else f"{x:.6f}"


def _kbps(value: Any) -> str:
    x = _f(value)
    return "" if x is None else f"{x / 1000.0:.6f}"


def _lang(s: dict) -> str:
    return _s((s.get("tags") or {}).get("language"))


def _fps(rate: Any) -> str:
    try:
        num, den = str(rate).split("/")
        return f"{int(num) / int(den):.6f}" if int(den) else ""
    except (ValueError, ZeroDivisionError):
        return ""


def _audio_entry(s: dict) -> dict:
    sr = _i(s.get("sample_rate"))
    return {
        "Bitrate": _kbps(s.get("bit_rate")),
        "Channel": _s(s.get("channels")),
        "ChannelLayout": _s(s.get("channel_layout")),
        "CodecLongName": _s(s.get("codec_long_name")),
        "CodecName": _s(s.get("codec_name")),
        "CodecTag": _s(s.get("codec_tag")),
        "CodecTagString": _s(s.get("codec_tag_string")),
        # ffprobe >= 5 no longer prints codec_time_base; for audio it is 1/sample_rate
        "CodecTimeBase": _s(s.get("codec_time_base")) or (f"1/{sr}" if sr else ""),
        "Duration": _secs(s.get("duration")),
        "Index": _s(s.get("index")),
        "Language": _lang(s),
        "SampleFmt": _s(s.get("sample_fmt")),
        "SampleRate": _s(s.get("sample_rate")),
        "StartTime": _secs(s.get("start_time")),
        "Timebase": _s(s.get("time_base")),
    }


def _video_entry(s: dict) -> dict:
    return {
        "AvgFps": _s(s.get("avg_frame_rate")),
        "Bitrate": _kbps(s.get("bit_rate")),
        "CodecLongName": _s(s.get("codec_long_name")),
        "CodecName": _s(s.get("codec_name")),
        "CodecTag": _s(s.get("codec_tag")),
        "CodecTagString": _s(s.get("codec_tag_string")),
        "CodecTimeBase": _s(s.get("codec_time_base")) or _s(s.get("time_base")),
        "ColorPrimaries": _s(s.get("color_primaries")),
        "ColorRange": _s(s.get("color_range")),
        "ColorTransfer": _s(s.get("color_transfer")),
        "Dar": _s(s.get("display_aspect_ratio")),
        "Duration": _secs(s.get("duration")),
        "FieldOrder": _s(s.get("field_order")),
        "Fps": _fps(s.get("r_frame_rate")),
        "HasBFrame": _s(s.get("has_b_frames")),
        "Height": _s(s.get("height")),
        "Index": _s(s.get("index")),
        "Language": _lang(s),
        "Level": _s(s.get("level")),
        "NumFrames": _s(s.get("nb_frames")),
        "PixFormat": _s(s.get("pix_fmt")),
        "Profile": _s(s.get("profile")),
        "RefFrames": _s(s.get("refs")),
        "Sar": _s(s.get("sample_aspect_ratio")),
        "StartTime": _secs(s.get("start_time")),
        "Timebase": _s(s.get("time_base")),
        "Width": _s(s.get("width")),
    }


def _format_entry(fmt: dict) -> dict:
    return {
        "Bitrate": _kbps(fmt.get("bit_rate")),
        "Duration": _secs(fmt.get("duration")),
        "FormatLongName": _s(fmt.get("format_long_name")),
        "FormatName": _s(fmt.get("format_name")),
        "NumProgram": _s(fmt.get("nb_programs", 0)),
        "NumStream": _s(fmt.get("nb_streams")),
        "Size": _s(fmt.get("size")),
        "StartTime": _secs(fmt.get("start_time")),
    }


def _media_info(raw: dict) -> dict:
    streams = raw.get("streams") or []
    audio = [_audio_entry(s) for s in streams if s.get("codec_type") == "audio"]
    video = [_video_entry(s) for s in streams if s.get("codec_type") == "video"]
    subs = [{"Index": _s(s.get("index")), "Language": _lang(s)}
            for s in streams if s.get("codec_type") == "subtitle"]
    return {
        "Format": _format_entry(raw.get("format") or {}),
        "Stream": {"Audio": audio, "Subtitle": subs or "", "Video": video or ""},
    }


def media_info(path: str | os.PathLike) -> dict:
    """``MediaInfo`` of one file (input or output); :class:`InputError` if it is not usable media."""
    return probe(path).media_info()


def outputs_media_info(paths: Iterable[str | os.PathLike], *, source: MediaProbe | None = None) -> dict:
    """``MediaInfo`` for a job's outputs, as in the official callback example: one ``Audio``
    entry per output file (in the given order; ``Index`` is the stream's index in its own file),
    ``Video`` empty, and ``Format`` describing ``source`` (the job's input) when given, else the
    first output."""
    infos = [media_info(p) for p in paths]
    if not infos:
        raise ValueError("outputs_media_info needs at least one path")
    audio = [a for info in infos for a in info["Stream"]["Audio"]]
    fmt = source.media_info()["Format"] if source is not None else infos[0]["Format"]
    return {"Format": fmt, "Stream": {"Audio": audio, "Subtitle": "", "Video": ""}}
