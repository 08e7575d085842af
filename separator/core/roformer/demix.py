"""Chunked inference, streaming: MSST's ``demix`` (generic mode) one block at a time.

MSST's ``utils.model_utils.demix`` on a whole ``(channels, L)`` mix, with ``C = chunk_size``,
``step = C // num_overlap``, ``border = C - step``, ``fade = C // 10``:

1. when ``L > 2 * border`` and ``border > 0``, reflect-pad ``border`` samples at both ends
   (the padded length is ``M``; else ``M = L``);
2. chunks start at ``0, step, 2 * step, ...`` while the start is ``< M``; a chunk that runs past
   ``M`` is padded to ``C``, by reflection when more than ``C // 2`` samples remain, with zeros
   otherwise;
3. chunks go to the model ``batch_size`` at a time; each output is weighted by a window that is
   1 with a linear fade-in and fade-out of ``fade`` samples (``torch.linspace(0, 1, fade)``).
   The window is chosen per batch: when the batch's last chunk is the first chunk, no fade-in;
   else when the batch is the last one, no fade-out (for all chunks of that batch);
4. weighted outputs and weights are summed (float32), divided, NaN (0/0) set to 0, and the
   padding trimmed.

A chunk that starts inside the end padding (at or after ``M - border``) adds only to samples
step 4 trims: MSST runs it and throws its output away; here it is not run (``num_overlap - 1``
chunks fewer per padded input when ``num_overlap`` divides ``chunk_size``: the same output,
less work).

:class:`RoformerSeparator` produces the same numbers from a stream: blocks are buffered until
the first ``2 * border + 1`` samples (or the end) tell whether step 1 pads; chunks lying wholly
in what has been received, in batches that cannot be the last one, are run as soon as they are
complete; output samples no later chunk can touch are yielded at once.  The end padding needs the
last ``border + 1`` input samples, so the final chunks wait for the end of the stream.  Blocks
are taken at most a chunk at a time, so the buffers stay within a few chunks (at most
``(3 + batch_size / num_overlap) * chunk_size`` frames of input and of output) whatever the
input length or block sizes.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from ..base import Separated
from ..blocks import BlockQueue
from ..precision import PRECISIONS, autocast, autocast_dtype
from .config import RoformerConfig


def msst_window(chunk_size: int, fade_size: int) -> np.ndarray:
    """MSST's ``_getWindowingArray``: ones, linear fade-in and fade-out of ``fade_size`` samples."""
    window = torch.ones(chunk_size)
    window[-fade_size:] = torch.linspace(1, 0, fade_size)
    window[:fade_size] = torch.linspace(0, 1, fade_size)
    return window.numpy()


class NormStats:
    """Mean and (population) standard deviation of the channel-averaged mix, as MSST's
    ``normalize_audio`` computes them, for configs with ``inference.normalize: true``.  Feed
    every ``(frames, channels)`` block with :meth:`update` (e.g. in a first decoding pass), or
    use :meth:`of` on a whole array."""

    def __init__(self):
        self.n = 0
        self._sum = 0.0
        self._sumsq = 0.0

    @classmethod
    def of(cls, audio: np.ndarray) -> "NormStats":
        stats = cls()
        stats.update(audio)
        return stats

    def update(self, block: np.ndarray) -> None:
        mono = np.asarray(block, dtype=np.float64).reshape(len(block), -1).mean(axis=1)
        self.n += mono.size
        self._sum += float(mono.sum())
        self._sumsq += float(np.square(mono).sum())

    @property
    def mean(self) -> float:
        return self._sum / self.n if self.n else 0.0

    @property
    def std(self) -> float:
        if not self.n:
            return 1.0
        return math.sqrt(max(self._sumsq / self.n - self.mean ** 2, 0.0))


class RoformerSeparator:
    """Runs a RoFormer net over audio of any length, as MSST's ``demix`` does.

    ``model`` is a net from :func:`..build_model` with its weights loaded; ``cfg`` its config.
    ``device``: ``'cpu'``, ``'cuda'`` or ``'cuda:N'``.  ``precision``: ``'fp32'``, ``'bf16'``
    (autocast, CPU or CUDA) or ``'fp16'`` (autocast, CUDA only); the STFT, masking, iSTFT and
    overlap-add are float32 regardless.  ``batch_size`` (chunks per model call) and
    ``num_overlap`` override the yaml's ``inference`` values; ``normalize`` overrides
    ``inference.normalize``.  ``extract_instrumental`` adds a stem ``'instrumental'`` = input
    minus the ``'vocals'`` stem (or the first stem), like MSST's ``--extract_instrumental``.

    ``samplerate`` (Hz), ``audio_channels`` and ``sources`` (stem names, in output order)
    describe the audio the separator takes and gives.
    """

    def __init__(self, model: nn.Module, cfg: RoformerConfig, device: str | torch.device = "cpu",
                 precision: str = "fp32", batch_size: int | None = None,
                 num_overlap: int | None = None, normalize: bool | None = None,
                 extract_instrumental: bool = False):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
        self.device = torch.device(device)
        if self.device.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
        if precision == "fp16" and self.device.type != "cuda":
            raise ValueError("precision 'fp16' needs a CUDA device; use 'bf16' or 'fp32' on the CPU")
        self.precision = precision
        self.cfg = cfg
        self.model = model.to(self.device).eval()
        self.samplerate = cfg.samplerate
        self.audio_channels = cfg.audio_channels
        self.chunk_size = cfg.chunk_size
        self.num_overlap = int(num_overlap if num_overlap is not None else cfg.num_overlap)
        self.batch_size = int(batch_size if batch_size is not None else cfg.batch_size)
        if self.num_overlap < 1 or self.chunk_size // self.num_overlap < 1:
            raise ValueError(f"num_overlap must be between 1 and chunk_size ({self.chunk_size}), "
                             f"got {self.num_overlap}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        self.normalize = cfg.normalize if normalize is None else bool(normalize)
        self.step = self.chunk_size // self.num_overlap
        self.border = self.chunk_size - self.step
        self.fade_size = self.chunk_size // 10
        self._window = msst_window(self.chunk_size, self.fade_size)
        self.model_sources = tuple(cfg.stems)
        self._residual_of = None
        if extract_instrumental:
            self._residual_of = self.model_sources.index("vocals") if "vocals" in self.model_sources else 0
        self.sources = self.model_sources + (("instrumental",) if extract_instrumental else ())

    # -------------------------------------------------------------------------------- public

    def separate(self, audio: np.ndarray, progress: Callable[[int], None] | None = None
                 ) -> dict[str, np.ndarray]:
        """Separate a whole ``(frames, channels)`` array: ``{stem: (frames, channels) float32}``."""
        audio = np.asarray(audio, dtype=np.float32)
        stats = NormStats.of(self._channels(audio)) if self.normalize else None
        parts: dict[str, list[np.ndarray]] = {s: [] for s in self.sources}
        for out in self.separate_stream([audio], progress=progress, norm_stats=stats):
            for s, a in out.stems.items():
                parts[s].append(a)
        return {s: (np.concatenate(p) if p else np.zeros((0, self.audio_channels), np.float32))
                for s, p in parts.items()}

    def separate_stream(self, blocks: Iterable[np.ndarray],
                        progress: Callable[[int], None] | None = None,
                        norm_stats: NormStats | None = None) -> Iterator[Separated]:
        """Separate a stream of ``(frames, channels)`` float32 blocks (any lengths).

        Yields :class:`~separator.core.base.Separated` blocks as soon as output is final:
        ``stems`` = ``{stem: (frames, channels) float32}`` and ``mixture`` = the input frames
        they came from (un-normalised); their frames add up to the input's.  ``progress(n)`` is called with the number of input
        frames newly finalised.  A mono block given to a stereo model is duplicated to both
        channels (as MSST does); output then has the model's channels.  When the config asks
        for ``normalize``, pass ``norm_stats`` (a :class:`NormStats` of the whole input).
        """
        if self.normalize and norm_stats is None:
            raise ValueError("this model's config sets inference.normalize, which needs the mean "
                             "and deviation of the whole input: pass norm_stats=NormStats.of(audio) "
                             "(or NormStats fed every block beforehand), or normalize=False")
        return _Stream(self, progress, norm_stats if self.normalize else None).run(blocks)

    # ------------------------------------------------------------------------------ helpers

    def _channels(self, block: np.ndarray) -> np.ndarray:
        block = np.asarray(block, dtype=np.float32)
        if block.ndim == 1:
            block = block[:, None]
        if block.ndim != 2:
            raise ValueError(f"audio blocks must be (frames, channels), got shape {block.shape}")
        ch = block.shape[1]
        if ch == self.audio_channels:
            return block
        if ch == 1 and self.audio_channels == 2:
            return np.repeat(block, 2, axis=1)
        raise ValueError(f"this model takes {self.audio_channels} channel(s); got a block with {ch}")

    def _run_model(self, chunks: list[np.ndarray]) -> np.ndarray:
        """``chunks``: (channels, chunk_size) float32 each -> (n, stems, channels, chunk_size)."""
        batch = torch.from_numpy(np.stack(chunks))
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        with torch.inference_mode(), autocast(self.device, autocast_dtype(self.precision)):
            out = self.model(batch)
        return out.float().cpu().numpy()


class _Stream:
    """One pass of MSST's demix over a stream (see the module doc).  Positions ``p`` are in the
    padded signal ``P`` (input position + ``border`` once padding is decided on)."""

    def __init__(self, sep: RoformerSeparator, progress, norm: NormStats | None):
        self.sep = sep
        self.progress = progress
        self.norm = norm
        self.C, self.step, self.border = sep.chunk_size, sep.step, sep.border
        self.B, self.fade = sep.batch_size, sep.fade_size
        ch, n_stems = sep.audio_channels, len(sep.model_sources)
        self.ch = ch
        self.padded: bool | None = None if self.border > 0 else False
        self.head: list[np.ndarray] = []          # input before the padding decision
        self.head_len = 0
        self.length = 0                           # input frames received
        self.tail = np.zeros((ch, 0), np.float32)  # last border + 1 input frames
        self.buf = np.zeros((ch, 0), np.float32)   # P[buf_start : buf_start + buf.shape[1]]
        self.buf_start = 0
        self.acc = np.zeros((n_stems, ch, 0), np.float32)  # weighted sums from acc_start on
        self.cnt = np.zeros(0, np.float32)                 # summed weights
        self.acc_start = 0
        self.k_done = 0                           # chunks run so far
        self.emit_p = 0                           # next position of P to emit (or discard)
        self.raw = BlockQueue(ch)                 # input frames (un-normalised) not yet emitted

    # ---------------------------------------------------------------------------- stream

    def run(self, blocks: Iterable[np.ndarray]) -> Iterator[Separated]:
        for block in blocks:
            block = self.sep._channels(block)
            # at most one chunk at a time, so a huge block does not grow the buffers
            for start in range(0, block.shape[0], self.C):
                self.raw.push(block[start:start + self.C])
                yield from self._push(block[start:start + self.C].T)
        yield from self._finish()

    def _push(self, x: np.ndarray) -> Iterator[Separated]:
        """Take ``x`` (channels, frames) of input and run what it completes."""
        if self.norm is not None:
            x = ((x.astype(np.float64) - self.norm.mean) / self.norm.std).astype(np.float32)
        self.length += x.shape[1]
        self.tail = np.concatenate([self.tail, x], axis=1)[:, -(self.border + 1):]
        if self.padded is None:
            self.head.append(x)
            self.head_len += x.shape[1]
            if self.head_len <= 2 * self.border:
                return
            x = np.concatenate(self.head, axis=1)
            self.head = []
            self.padded = True
            self.emit_p = self.border
            # reflect padding at the start: P[j] = x[border - j]
            self.buf = np.concatenate([x[:, self.border:0:-1], x], axis=1)
        else:
            self.buf = np.concatenate([self.buf, x], axis=1)
        yield from self._advance()

    def _advance(self) -> Iterator[Separated]:
        """Run every full batch of complete chunks that cannot be the last batch."""
        known_end = self.buf_start + self.buf.shape[1]
        while True:
            last = self.k_done + self.B - 1
            s_last = last * self.step
            if not (s_last + self.C <= known_end and s_last + self.step < known_end):
                return
            starts = [k * self.step for k in range(self.k_done, last + 1)]
            window = self._window(first=(last == 0), final=False)
            self._run(starts, [self.C] * len(starts), [self._slice(s, self.C) for s in starts], window)
            self.k_done = last + 1
            yield from self._emit(self.k_done * self.step)

    def _finish(self) -> Iterator[Separated]:
        if self.length == 0:
            return
        if self.padded is None:       # short input: MSST does not pad
            self.padded = False
            self.buf = np.concatenate(self.head, axis=1)
            self.head = []
        if self.padded:
            # reflect padding at the end: P[L + border + j] = x[L - 2 - j]
            pad = self.tail[:, -2:-(self.border + 2):-1]
            self.buf = np.concatenate([self.buf, pad], axis=1)
        total = self.length + (2 * self.border if self.padded else 0)   # M
        n_chunks = -(-total // self.step)
        while self.k_done < n_chunks:
            ks = list(range(self.k_done, min(self.k_done + self.B, n_chunks)))
            starts = [k * self.step for k in ks]
            lens = [min(self.C, total - s) for s in starts]
            parts = []
            for s, n in zip(starts, lens):
                part = self._slice(s, n)
                if n < self.C:
                    mode = "reflect" if n > self.C // 2 else "constant"
                    part = np.pad(part, ((0, 0), (0, self.C - n)), mode=mode)
                parts.append(part)
            final = starts[-1] + self.step >= total
            window = self._window(first=(ks[-1] == 0), final=final)
            # a chunk wholly inside the end padding only adds to samples that are trimmed:
            # MSST runs it, its output is thrown away, so it is not run (equal output)
            keep = [j for j, s in enumerate(starts) if not (self.padded and s >= total - self.border)]
            if keep:
                self._run([starts[j] for j in keep], [lens[j] for j in keep], [parts[j] for j in keep], window)
            self.k_done = ks[-1] + 1
            end = total if final else self.k_done * self.step
            yield from self._emit(end, total=total)

    # ---------------------------------------------------------------------------- pieces

    def _window(self, first: bool, final: bool) -> np.ndarray:
        window = self.sep._window.copy()
        if first:
            window[:self.fade] = 1
        elif final:
            window[-self.fade:] = 1
        return window

    def _slice(self, start: int, n: int) -> np.ndarray:
        a = start - self.buf_start
        return self.buf[:, a:a + n]

    def _run(self, starts: list[int], lens: list[int], parts: list[np.ndarray], window: np.ndarray) -> None:
        out = self.sep._run_model([np.ascontiguousarray(p) for p in parts])
        end = starts[-1] + lens[-1]
        grow = end - (self.acc_start + self.cnt.shape[0])
        if grow > 0:
            self.acc = np.concatenate([self.acc, np.zeros(self.acc.shape[:2] + (grow,), np.float32)], axis=2)
            self.cnt = np.concatenate([self.cnt, np.zeros(grow, np.float32)])
        for j, (s, n) in enumerate(zip(starts, lens)):
            a = s - self.acc_start
            self.acc[:, :, a:a + n] += out[j, :, :, :n] * window[:n]
            self.cnt[a:a + n] += window[:n]

    def _emit(self, upto: int, total: int | None = None) -> Iterator[Separated]:
        """Yield the final output up to (not including) P position ``upto``; drop what no
        later chunk needs."""
        lo, hi = self.emit_p, upto
        if total is not None and self.padded:
            hi = min(hi, total - self.border)
        if hi > lo:
            a, b = lo - self.acc_start, hi - self.acc_start
            with np.errstate(divide="ignore", invalid="ignore"):
                est = self.acc[:, :, a:b] / self.cnt[a:b]
            np.nan_to_num(est, copy=False, nan=0.0)
            if self.norm is not None:
                est = (est * self.norm.std + self.norm.mean).astype(np.float32)
            out = {name: np.ascontiguousarray(est[i].T) for i, name in enumerate(self.sep.model_sources)}
            mix = np.ascontiguousarray(self.raw.peek(hi - lo))
            self.raw.drop(hi - lo)
            if self.sep._residual_of is not None:
                out["instrumental"] = np.ascontiguousarray(
                    (mix.T - est[self.sep._residual_of]).T.astype(np.float32))
            self.emit_p = hi
            if self.progress is not None:
                self.progress(hi - lo)
            yield Separated(out, mix)
        # forget what is behind both the emitted output and the next chunk's start
        keep = min(self.emit_p, self.k_done * self.step)
        if keep > self.acc_start:
            d = keep - self.acc_start
            self.acc = self.acc[:, :, d:].copy()
            self.cnt = self.cnt[d:].copy()
            self.acc_start = keep
        if keep > self.buf_start:
            d = min(keep - self.buf_start, self.buf.shape[1])
            self.buf = self.buf[:, d:].copy()
            self.buf_start += d
