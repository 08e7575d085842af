"""The separation engine: one input file in, one encoded file per requested role out.

``decode (ffmpeg) → model.separate_stream (chunked) → combine into roles → encode (ffmpeg)``,
streamed block by block, so memory is bounded by the model's chunk and not by the input.
Outputs are written atomically: every output is encoded to a temporary file and only
when *all* of them have been encoded successfully are they renamed into place.  A bad
input, a model error or an encoder error therefore leaves nothing behind.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core import registry
from ..media import Encoder, EncodeSettings, MediaProbe, decode_stream, probe, resolve_encoding, same_decode
from ..request.model import AudioConfig
from ..storage import atomic_file
from .roles import ROLE_ORDER, check_model_supports, combine, roles_for_mode

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (frames done, frames total)

_END = object()


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
    starts as for an input of ``channels`` channels, and its truncation check (at the end of
    the stream) reads the declared duration from the probe, known by then."""

    def __init__(self, probing: Future, channels: int) -> None:
        self._probing = probing
        self.channels = channels

    @property
    def declared_duration(self) -> float | None:
        return self._probing.result().declared_duration


@dataclass(frozen=True)
class Decoded:
    """The input as a *re-iterable* stream of float32 blocks: each iteration decodes it again
    (ffmpeg decodes at hundreds of times realtime).  Models that need whole-track statistics
    before separating (Demucs normalises by the track's mean/std) make a cheap first pass
    instead of holding the track in memory."""

    path: str | Path
    samplerate: int
    channels: int
    info: MediaProbe | None = None

    def __iter__(self):
        return decode_stream(self.path, self.samplerate, self.channels, info=self.info)


class Reblocker:
    """Hands out exactly ``n`` frames at a time from a stream of arbitrarily sized blocks."""

    def __init__(self, blocks):
        self._blocks = blocks
        self._buf: list[np.ndarray] = []
        self._have = 0

    def take(self, n: int) -> np.ndarray:
        while self._have < n:
            block = next(self._blocks, None)
            if block is None:
                raise RuntimeError(f"mixture stream ended {n - self._have} frames early")
            self._buf.append(block)
            self._have += len(block)
        joined = self._buf[0] if len(self._buf) == 1 else np.concatenate(self._buf, axis=0)
        out, rest = joined[:n], joined[n:]
        self._buf = [rest] if len(rest) else []
        self._have = len(rest)
        return out

    def close(self) -> None:
        close = getattr(self._blocks, "close", None)
        if close is not None:
            close()  # stops the decoder subprocess


@dataclass
class SeparationResult:
    model: str
    device: str
    source: MediaProbe
    settings: EncodeSettings
    outputs: dict[str, Path]              # role -> final path, vocals first
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)


def separate_file(
    input_path: str | Path,
    targets: Mapping[str, str | Path],
    *,
    mode: str = "AudioAndBackground",
    audio_config: AudioConfig | None = None,
    model: str | None = None,
    device: str | None = None,
    progress: Progress | None = None,
    model_options: Mapping[str, object] | None = None,
) -> SeparationResult:
    """Separate ``input_path`` and write each role of ``mode`` to ``targets[role]``.

    ``targets`` may name more roles than the mode produces: the extra ones are ignored
    (a mode writes only what it produces).  Raises :class:`~separator.errors.CIError`
    for every user-caused failure; nothing is written in that case.
    """
    started = time.perf_counter()
    roles = [r for r in ROLE_ORDER if r in roles_for_mode(mode) and targets.get(r)]
    if not roles:
        from ..errors import CIError
        raise CIError("InvalidArgument", f"AudioMode {mode} produces {', '.join(roles_for_mode(mode))}, "
                      "but no output object was named for any of them")
    cfg = audio_config or AudioConfig()

    def checked_input() -> tuple[MediaProbe, EncodeSettings]:
        source = probing.result()                    # InputError for a missing / non-media file
        return source, resolve_encoding(cfg.codec, cfg.samplerate, cfg.bitrate, cfg.channels,
                                        source=source, music_mode=(mode == "MusicMode"))

    # ffprobe (~0.06 s, mostly loading its libraries) runs beside the model load, the first
    # decode and the model's first chunk: the probe is needed only by the encoders (and the
    # decoder of a mono input, which is then restarted).  The input's own errors still come
    # first, as if it had been probed first.
    probing = _in_thread(probe, input_path)
    done = 0

    def on_progress(frames: int) -> None:
        nonlocal done
        done += frames
        if progress and probing.done() and probing.exception() is None:
            dur = probing.result().duration
            progress(done, max(int(round(dur * sr)) if dur else 0, done))

    stream = None

    def start(info) -> tuple[Decoded, object]:
        """Decode with ``info`` and run the model up to its first output."""
        nonlocal stream
        decoded = Decoded(input_path, sr, ch, info)
        stream = loaded.separate_stream(decoded, progress=on_progress)
        return decoded, next(stream, _END)

    try:
        name = model or registry.default_model(mode)
        loaded = registry.load_model(name, device=device, **dict(model_options or {}))
        check_model_supports(mode, loaded.sources, name)
        sr, ch = loaded.samplerate, loaded.audio_channels
        decoded, first = start(_ProbeAhead(probing, ch))
        source, settings = checked_input()
        if not same_decode(source.channels, ch, ch):   # a mono input: decode it again, duplicated
            stream.close()
            done = 0
            decoded, first = start(source)
    except BaseException as exc:
        if stream is not None:
            stream.close()
        if isinstance(exc, Exception):      # not for Ctrl-C: that stays an interruption
            checked_input()
        raise

    final = {r: Path(targets[r]) for r in roles}
    with contextlib.ExitStack() as stack:
        stack.callback(stream.close)
        tmp = {r: stack.enter_context(atomic_file(final[r])) for r in roles}
        encoders = {r: stack.enter_context(Encoder(tmp[r], settings, sr, ch)) for r in roles}
        # The mixture again, frame-aligned with the model's output, for the residual background
        # (not needed when the model's sources already sum to its input).
        need_mix = "background" in roles and not loaded.sources_sum_to_input
        mixture = Reblocker(iter(decoded)) if need_mix else None
        if mixture is not None:
            stack.callback(mixture.close)
        for block in itertools.chain(() if first is _END else (first,), stream):
            frames = len(next(iter(block.values())))
            mix = mixture.take(frames) if mixture is not None else None
            outs = combine(block, roles, mode, mix)
            # piece by piece, in turn: every encoder gets work while the others' queues are full
            for start in range(0, frames, Encoder.PIECE_FRAMES):
                for role, audio in outs.items():
                    encoders[role].write(audio[start:start + Encoder.PIECE_FRAMES])
        # Close (and check) every encoder *inside* the stack, so that one failing encoder
        # removes all temporaries before any of them is renamed into place.
        for enc in encoders.values():
            enc.close()
    seconds = time.perf_counter() - started
    log.info("separated %s (%.1f s of audio) with %s on %s in %.2f s", input_path,
             source.duration or 0.0, name, loaded.device, seconds)
    return SeparationResult(name, loaded.device, source, settings, final, seconds)
