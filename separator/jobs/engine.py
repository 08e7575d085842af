"""The separation engine: one input in, one output per requested role out.

``decode (ffmpeg) → model.separate_stream (chunked) → combine into roles → encode (ffmpeg)``,
streamed block by block, so memory is bounded by the model's chunk and not by the input.
The input is a file (:class:`FileInput`) or audio already in memory (:class:`ArrayInput`,
resampled by the same ffmpeg filters a file would be); the outputs are encoded files
(:func:`separate_file`) or arrays at the input's rate (:func:`separate_audio`).

* **Channels.** The model hears one channel group of the input at a time
  (:mod:`separator.media.layout`): a stereo or mono input is one group; a 5.1 input is its
  front pair, its centre (the dialogue) and its surround pair, each separated on its own, with
  the LFE going to the background whole.  The outputs keep the input's layout, and in every
  channel the roles a mode writes add up to that input channel.  When the job asks for one or
  two channels from an input with more, each role is downmixed after separation.
* **Atomic outputs.** Every output is encoded to a temporary file and only when *all* of them
  have been encoded successfully are they renamed into place.  A bad input, a model error, an
  encoder error or a Ctrl-C therefore leaves nothing behind: no partial file, and no folder
  this job created.  No output may be the input itself.
* **Clipping.** A file of integer samples (or a lossy one) cannot hold a stem past full scale.
  ``clip_mode="clamp"`` (the default) clips those samples, so the outputs keep the input's
  level and are encoded while they are separated; ``"rescale"`` scales all the stems of a job
  by one factor so that none clips and they still sum to the scaled input: they are spooled
  (float, on disk) while encoded, and encoded again from the spool when a peak passed full
  scale.  Float wav holds every value as it is.
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core import registry
from ..core.base import LoadedModel
from ..errors import CIError, invalid_argument
from ..media import Encoder, EncodeSettings, MediaProbe, decode_stream, probe, resolve_encoding
from ..media.probe import AudioStream
from ..media.resample import resample_stream
from ..media.layout import ChannelGroup, channel_groups, channel_names, downmix_matrix, layout_name
from ..request.model import AudioConfig
from ..storage import atomic_file
from ..storage.local import created_folders, writable_folder_problem
from ..protocol import ROLES, roles_for_mode
from .roles import check_model_supports, combine

log = logging.getLogger(__name__)

Progress = Callable[[float, float], None]  # (seconds of audio separated, seconds in all)

BLOCK_FRAMES = 1 << 18         # an in-memory input goes to the model in blocks of this many frames
CLIP_MODES = ("clamp", "rescale")


def _in_thread(fn: Callable, *args) -> Future:
    """``fn(*args)`` on a new daemon thread (one per call: nothing shared that a forked
    worker process could inherit half-alive)."""
    fut: Future = Future()

    def run() -> None:
        if fut.set_running_or_notify_cancel():
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                fut.set_exception(exc)

    threading.Thread(target=run, name="separator-probe", daemon=True).start()
    return fut


class _ProbeAhead:
    """Stands in for the input's :class:`MediaProbe` while ffprobe still runs: the decoder
    starts as for a stereo input, and its truncation check (at the end of the stream) reads
    the declared duration from the probe, known by then."""

    channels = 2

    def __init__(self, probing: Future) -> None:
        self._probing = probing

    @property
    def declared_duration(self) -> float | None:
        return self._probing.result().declared_duration


@dataclass(frozen=True)
class Decoded:
    """Channels of the input as a *re-iterable* stream of float32 blocks: each iteration
    decodes it again (decoding costs little next to separating).  Models that need
    whole-track statistics before separating (Demucs normalises by the track's mean/std) make
    a first pass instead of holding the track in memory; the separation pass is the last (the
    model hands back the mixture with its stems).  ``pick``: the input channel of each
    decoded channel (None: the input as it is, or a mono input duplicated)."""

    path: str | Path
    samplerate: int
    channels: int
    info: MediaProbe | _ProbeAhead | None = None
    pick: tuple[int, ...] | None = None

    def __iter__(self):
        return decode_stream(self.path, self.samplerate, self.channels, info=self.info, pick=self.pick)


class FileInput:
    """A media file: ffprobe runs on a thread beside the model's start (it is needed only by
    the encoders, and by an input that is not stereo, whose streams are then started again);
    ffmpeg decodes it."""

    def __init__(self, path: str | Path) -> None:
        self.path = path
        self.probing = _in_thread(probe, path)

    def info_ahead(self) -> MediaProbe | _ProbeAhead:
        return _ProbeAhead(self.probing)

    def info(self) -> MediaProbe:
        """The probe (``InputError`` for a missing or non-media file)."""
        return self.probing.result()

    @property
    def duration(self) -> float | None:
        if self.probing.done() and self.probing.exception() is None:
            return self.probing.result().duration
        return None

    def decoded(self, info, samplerate: int, channels: int, pick: tuple[int, ...] | None):
        return Decoded(self.path, samplerate, channels, info, pick)


@dataclass(frozen=True)
class _ArrayStream:
    """Channels of an in-memory input at the model's rate (re-iterable, like :class:`Decoded`)."""

    audio: np.ndarray
    rate: int
    samplerate: int
    pick: tuple[int, ...] | None

    def __iter__(self):
        pieces = (self.audio[at:at + BLOCK_FRAMES] for at in range(0, len(self.audio), BLOCK_FRAMES))
        return resample_stream(pieces, self.rate, self.audio.shape[1], self.samplerate, pick=self.pick)


class ArrayInput:
    """Audio already in memory: ``(frames, channels)`` float32 at ``samplerate``.  Past two
    channels, ``layout`` names them (ffmpeg's names, e.g. ``5.1``; default: ffmpeg's layout for
    the count).  It goes to the model through the same ffmpeg filters a decoded file would."""

    def __init__(self, audio: np.ndarray, samplerate: int, layout: str | None = None) -> None:
        self.audio = audio
        self.samplerate = int(samplerate)
        channels = audio.shape[1]
        self._info = MediaProbe(
            path="<array>", size=audio.nbytes, duration=len(audio) / self.samplerate,
            duration_estimated=False, format_name="array", format_long_name="audio in memory",
            audio_streams=(AudioStream(0, "pcm_f32le", self.samplerate, channels,
                                       layout or "", None, len(audio) / self.samplerate, "f32"),),
            has_video=False)

    def info_ahead(self) -> MediaProbe:
        return self._info

    def info(self) -> MediaProbe:
        return self._info

    @property
    def duration(self) -> float:
        return self._info.duration

    def decoded(self, info, samplerate: int, channels: int, pick: tuple[int, ...] | None):
        if pick is None:
            pick = tuple(range(self.audio.shape[1])) if self.audio.shape[1] == channels else (0,) * channels
        return _ArrayStream(self.audio, self.samplerate, samplerate, pick)


class Reblocker:
    """Hands out ``n`` frames at a time from a stream of arbitrarily sized blocks: arrays
    ``(frames, …)``, or dicts of them (fewer than ``n`` frames only at the end of the stream)."""

    def __init__(self, blocks):
        self._blocks = iter(blocks)
        self._source = blocks
        self._buf: list = []
        self._have = 0

    def take(self, n: int, *, exact: bool = True):
        while self._have < n:
            block = next(self._blocks, None)
            if block is None:
                if exact:
                    raise RuntimeError(f"stream ended {n - self._have} frames early")
                break
            self._buf.append(block)
            self._have += _frames(block)
        if not self._have:
            return None
        joined = self._buf[0] if len(self._buf) == 1 else _concat(self._buf)
        k = min(n, self._have)
        out, rest = _cut(joined, 0, k), _cut(joined, k, None)
        self._have -= k
        self._buf = [rest] if self._have else []
        return out

    def close(self) -> None:
        close = getattr(self._source, "close", None) or getattr(self._blocks, "close", None)
        if close is not None:
            close()  # stops the decoder subprocess


def _frames(block) -> int:
    return len(next(iter(block.values()))) if isinstance(block, dict) else len(block)


def _cut(block, lo: int, hi: int | None):
    if isinstance(block, dict):
        return {k: v[lo:hi] for k, v in block.items()}
    return block[lo:hi]


def _concat(blocks: list):
    if isinstance(blocks[0], dict):
        return {k: np.concatenate([b[k] for b in blocks], axis=0) for k in blocks[0]}
    return np.concatenate(blocks, axis=0)


class _GroupStream:
    """One channel group of the input through the model: ``{role: (frames, width)}`` blocks.

    The background is the residual: the mixture each of the model's blocks carries (the input
    frames its stems came from) minus the sources the mode writes.  A mono channel in a stereo
    model is fed to both sides and the outputs averaged; an LFE channel is not separated: all
    of it is background."""

    def __init__(self, loaded, decoded: Decoded, group: ChannelGroup, roles: tuple[str, ...],
                 mode: str, on_progress: Callable[[int], None]) -> None:
        self.group = group
        self.roles = roles
        self.mode = mode
        self.collapse = len(group.pick) > group.width
        self.mixture: Reblocker | None = None
        self.stems = None
        if group.lfe:
            self.mixture = Reblocker(decoded)
            return
        self.stems = loaded.separate_stream(decoded, progress=on_progress)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        if self.stems is None:                       # LFE: the background is the channel itself
            while (mix := self.mixture.take(Encoder.PIECE_FRAMES, exact=False)) is not None:
                yield {r: mix if r == "background" else np.zeros_like(mix) for r in self.roles}
            return
        for block in self.stems:
            outs = combine(block.stems, self.roles, self.mode, block.mixture)
            if self.collapse:
                outs = {r: a.mean(axis=1, keepdims=True) for r, a in outs.items()}
            yield outs

    def close(self) -> None:
        for part in (self.stems, self.mixture):
            if part is not None:
                part.close()


def _plan(source: MediaProbe | _ProbeAhead, model_channels: int) -> tuple[tuple[str, ...], tuple[ChannelGroup, ...]]:
    layout = getattr(source, "audio", None)
    names = channel_names(layout.channel_layout if layout else "stereo", source.channels)
    return names, channel_groups(names, model_channels)


class _Streams:
    """The input's channel groups through the model, merged back into the input's channels:
    ``{role: (frames, input channels)}`` blocks.  Started once as for a stereo input (so the
    model starts while ffprobe still runs) and restarted when the probe says otherwise."""

    def __init__(self, inp: FileInput | ArrayInput, loaded, mode: str, roles: tuple[str, ...],
                 progress: Progress | None) -> None:
        self.input, self.loaded, self.mode, self.roles = inp, loaded, mode, roles
        self.progress = progress
        self.groups: list[_GroupStream] = []
        self.names: tuple[str, ...] = ("FL", "FR")
        self.plan: tuple[ChannelGroup, ...] = ()
        self.first: dict[str, np.ndarray] | None = None
        self.done = 0

    def start(self, source: MediaProbe | _ProbeAhead) -> None:
        """Open a stream per channel group and run the model up to its first output."""
        self.close()
        self.done = 0
        sr, mc = self.loaded.samplerate, self.loaded.audio_channels
        self.names, self.plan = _plan(source, mc)
        for group in self.plan:
            plain = group.pick == tuple(range(source.channels)) and len(group.pick) == mc
            decoded = self.input.decoded(source, sr, 1 if group.lfe else mc,
                                         None if plain else (group.channels if group.lfe else group.pick))
            self.groups.append(_GroupStream(self.loaded, decoded, group, self.roles, self.mode,
                                            self._on_progress))
        self._blocks = self._merged()
        self.first = next(self._blocks, None)

    def restart_for(self, source: MediaProbe) -> None:
        """Start again if ``source``'s channels are not those the streams were started for."""
        if _plan(source, self.loaded.audio_channels)[1] != self.plan:
            self.start(source)

    def blocks(self) -> Iterator[dict[str, np.ndarray]]:
        if self.first is not None:
            first, self.first = self.first, None
            yield first
        yield from self._blocks

    def _merged(self) -> Iterator[dict[str, np.ndarray]]:
        if len(self.groups) == 1 and self.groups[0].group.width == len(self.names):   # stereo, mono
            yield from self.groups[0]
            return
        parts = [Reblocker(g) for g in self.groups]
        width = len(self.names)
        while True:
            got = [p.take(Encoder.PIECE_FRAMES, exact=False) for p in parts]
            if all(g is None for g in got):
                return
            sizes = {None if g is None else _frames(g) for g in got}
            if len(sizes) != 1:
                raise RuntimeError("the channel groups of one input decoded to different lengths")
            n = sizes.pop()
            out = {r: np.empty((n, width), np.float32) for r in self.roles}
            for stream, block in zip(self.groups, got):
                for r in self.roles:
                    out[r][:, list(stream.group.channels)] = block[r]
            yield out

    def _on_progress(self, frames: int) -> None:
        """Seconds of audio done (every channel group counts for its share) and in all."""
        self.done += frames
        duration = self.input.duration
        if self.progress and duration is not None:
            groups = sum(1 for g in self.plan if not g.lfe) or 1
            done = self.done / groups / self.loaded.samplerate
            self.progress(done, max(duration, done))

    def close(self) -> None:
        for g in self.groups:
            g.close()
        self.groups = []


@dataclass
class SeparationResult:
    model: str
    device: str
    source: MediaProbe
    settings: EncodeSettings
    outputs: dict[str, Path]              # role -> final path, vocals first
    seconds: float = 0.0
    #: the common factor the stems were scaled by (``clip_mode="rescale"``; 1.0: unchanged)
    scale: float = 1.0


@dataclass
class SeparatedAudio:
    """:func:`separate_audio`'s result: ``{role: (frames, channels) float32}`` at the input's
    rate and channel count."""
    model: str
    device: str
    samplerate: int
    roles: dict[str, np.ndarray]
    seconds: float = 0.0


def _roles_to_write(mode: str, targets: Mapping[str, object]) -> tuple[str, ...]:
    roles = tuple(r for r in ROLES if r in roles_for_mode(mode) and targets.get(r))
    if not roles:
        raise CIError("InvalidArgument", f"AudioMode {mode} produces {', '.join(roles_for_mode(mode))}, "
                      "but no output object was named for any of them")
    return roles


def check_outputs(input_path: str | Path, outputs: Mapping[str, Path]) -> None:
    """Refuse outputs that would overwrite the input, each other or a folder, or that cannot be
    written, before any work is done (``CIError`` InvalidArgument)."""
    src = os.path.realpath(input_path)
    seen: dict[str, str] = {}
    for role, path in outputs.items():
        real = os.path.realpath(path)
        if real == src or (os.path.isfile(path) and os.path.isfile(input_path)
                           and os.path.samefile(path, input_path)):
            raise CIError("InvalidArgument", f"the {role} output {path} is the input file itself, "
                          "which would be overwritten; write the outputs to another folder")
        if real in seen:
            raise CIError("InvalidArgument", f"the {seen[real]} and {role} outputs are the same file {path}")
        seen[real] = role
        if os.path.isdir(path):
            raise CIError("InvalidArgument", f"the {role} output {path} is a folder; it cannot be "
                          "replaced by a file")
        problem = writable_folder_problem(Path(path).parent)
        if problem:
            raise CIError("InvalidArgument", f"cannot write the {role} output {path}: {problem}")


def _start(inp: FileInput | ArrayInput, mode: str, roles: tuple[str, ...], model: str | LoadedModel | None,
           device: str | None, progress: Progress | None, model_options: Mapping[str, object] | None,
           settle: Callable[[MediaProbe], object] = lambda source: None):
    """Load the model and run it up to its first output while the input is still being probed,
    then ``settle(source)`` (the encoding settings, for a file) and start again if the input is
    not the stereo it was assumed to be.  The input's own errors come first, as if it had been
    probed first.  Returns (model name, loaded model, streams, source, settle's result)."""
    streams: _Streams | None = None
    try:
        if isinstance(model, LoadedModel):       # a caller that keeps its model loaded
            name, loaded = model.spec.name, model
        else:
            name = model or registry.default_model(mode)
            loaded = registry.load_model(name, device=device, **dict(model_options or {}))
        check_model_supports(mode, loaded.sources, name)
        streams = _Streams(inp, loaded, mode, roles, progress)
        streams.start(inp.info_ahead())
        source = inp.info()
        settled = settle(source)
        streams.restart_for(source)
    except BaseException as exc:
        if streams is not None:
            streams.close()
        if isinstance(exc, Exception):      # not for Ctrl-C: that stays an interruption
            settle(inp.info())
        raise
    return name, loaded, streams, source, settled


def separate_audio(inp: FileInput | ArrayInput, *, mode: str = "AudioAndBackground",
                   model: str | LoadedModel | None = None, device: str | None = None,
                   progress: Progress | None = None,
                   model_options: Mapping[str, object] | None = None) -> SeparatedAudio:
    """Separate ``inp`` in memory: every role of ``mode`` as a float32 ``(frames, channels)``
    array at the input's rate and with its channels (nothing clipped).  An array comes back
    exactly as long as it went in; a file as long as ffmpeg decodes it at its own rate."""
    started = time.perf_counter()
    roles = roles_for_mode(mode)
    name, loaded, streams, source, _ = _start(inp, mode, roles, model, device, progress, model_options)
    parts: dict[str, list[np.ndarray]] = {r: [] for r in roles}
    try:
        for block in streams.blocks():
            for r in roles:
                parts[r].append(block[r])
    finally:
        streams.close()
    width, rate, model_rate = len(streams.names), source.samplerate, loaded.samplerate
    out: dict[str, np.ndarray] = {}
    for r in roles:
        audio = np.concatenate(parts.pop(r), axis=0) if parts.get(r) else np.zeros((0, width), np.float32)
        if rate != model_rate:
            audio = np.concatenate(list(resample_stream([audio], model_rate, width, rate)) or
                                   [np.zeros((0, width), np.float32)], axis=0)
        if isinstance(inp, ArrayInput):         # exactly the input's length
            n = len(inp.audio)
            audio = audio[:n] if len(audio) >= n else np.pad(audio, ((0, n - len(audio)), (0, 0)))
        out[r] = np.ascontiguousarray(audio, dtype=np.float32)
    return SeparatedAudio(name, loaded.device, rate, out, time.perf_counter() - started)


class _Spool:
    """The float stems of a job on disk, for a second encode (``clip_mode="rescale"``)."""

    def __init__(self, roles: tuple[str, ...], width: int) -> None:
        self.width = width
        self.files = {r: tempfile.TemporaryFile(prefix="separator-spool-") for r in roles}
        self.peak = 0.0

    def write(self, role: str, audio: np.ndarray) -> None:
        if len(audio):
            self.peak = max(self.peak, float(np.nanmax(np.abs(audio))))
            self.files[role].write(np.ascontiguousarray(audio, dtype="<f4").tobytes())

    def read(self, role: str) -> Iterator[np.ndarray]:
        fh = self.files[role]
        fh.seek(0)
        while chunk := fh.read(Encoder.PIECE_FRAMES * 4 * self.width):
            yield np.frombuffer(chunk, dtype="<f4").reshape(-1, self.width)

    def close(self) -> None:
        for fh in self.files.values():
            fh.close()


def separate_file(
    input_path: str | Path,
    targets: Mapping[str, str | Path],
    *,
    mode: str = "AudioAndBackground",
    audio_config: AudioConfig | None = None,
    model: str | LoadedModel | None = None,
    device: str | None = None,
    progress: Progress | None = None,
    model_options: Mapping[str, object] | None = None,
    clip_mode: str = "clamp",
) -> SeparationResult:
    """Separate ``input_path`` and write each role of ``mode`` to ``targets[role]``.

    ``targets`` may name more roles than the mode produces: the extra ones are ignored
    (a mode writes only what it produces).  ``clip_mode``: see the module doc.  Raises
    :class:`~separator.errors.CIError` for every user-caused failure; nothing is written in
    that case.
    """
    started = time.perf_counter()
    if clip_mode not in CLIP_MODES:
        raise invalid_argument(f"clip mode {clip_mode!r} is not one of {', '.join(CLIP_MODES)}",
                               resource="clip_mode")
    roles = _roles_to_write(mode, targets)
    final = {r: Path(targets[r]) for r in roles}
    check_outputs(input_path, final)
    cfg = audio_config or AudioConfig()

    def settings_for(source: MediaProbe) -> EncodeSettings:
        return resolve_encoding(cfg.codec, cfg.samplerate, cfg.bitrate, cfg.channels, source=source,
                                music_mode=(mode == "MusicMode"), sample_format=cfg.sample_format)

    name, loaded, streams, source, settings = _start(FileInput(input_path), mode, roles, model, device,
                                                      progress, model_options, settings_for)
    names = streams.names
    mix = downmix_matrix(names, settings.channels).T if len(names) > 2 and settings.channels < 3 else None
    width = settings.channels if mix is not None else len(names)
    in_layout = layout_name(names) if width > 2 else None
    spool = _Spool(roles, width) if clip_mode == "rescale" and not settings.floating else None
    scale = 1.0
    with contextlib.ExitStack() as stack:
        stack.callback(streams.close)
        if spool is not None:
            stack.callback(spool.close)
        stack.enter_context(created_folders(final.values()))
        tmp = {r: stack.enter_context(atomic_file(final[r])) for r in roles}

        def open_encoders() -> dict[str, Encoder]:
            return {r: stack.enter_context(Encoder(tmp[r], settings, loaded.samplerate, width, in_layout))
                    for r in roles}

        encoders = open_encoders()
        for block in streams.blocks():
            if mix is not None:
                block = {r: a @ mix for r, a in block.items()}
            frames = _frames(block)
            # piece by piece, in turn: every encoder gets work while the others' queues are full
            for at in range(0, frames, Encoder.PIECE_FRAMES):
                for role, audio in block.items():
                    piece = audio[at:at + Encoder.PIECE_FRAMES]
                    encoders[role].write(piece)
                    if spool is not None:
                        spool.write(role, piece)
        if spool is not None and spool.peak > 1.0:
            # a stem passed full scale: encode the spooled stems again, all scaled alike
            for enc in encoders.values():
                enc.abort()
            scale = 1.0 / spool.peak
            encoders = open_encoders()
            for role in roles:
                for piece in spool.read(role):
                    encoders[role].write(piece * scale)
        # Close (and check) every encoder *inside* the stack, so that one failing encoder
        # removes all temporaries before any of them is renamed into place.
        for enc in encoders.values():
            enc.close()
    seconds = time.perf_counter() - started
    log.info("separated %s (%.1f s of audio) with %s on %s in %.2f s", input_path,
             source.duration or 0.0, name, loaded.device, seconds)
    return SeparationResult(name, loaded.device, source, settings, final, seconds, scale)
