"""The streaming half of ``demucs.apply.apply_model``: normalisation statistics and the chunker.

* **Normalisation.** Demucs normalises the whole track by the mean / std of its mono mix
  (``ref = wav.mean(0); (wav - ref.mean()) / (ref.std() + 1e-8)``) and undoes it on the
  output.  :func:`mix_stats` computes them in one pass over a stream (Chan's parallel
  algorithm in float64, :class:`_StatsAcc`); :class:`Spool` does so while writing a one-shot
  stream to a temporary file it can read back.
* **Chunking** exactly as ``apply_model(split=True)``, by :class:`Unit`: chunks of
  ``segment`` seconds every ``stride = int((1 - overlap) * segment_length)`` samples; each
  chunk is padded to the model's valid length by taking *neighbouring samples* centred on
  the chunk (zeros only outside the track), run, centre-trimmed, weighted by the triangular
  window ``(w / max w) ** transition_power`` and overlap-added, then divided by the sum of
  weights.  Output up to the next chunk's offset is final after each chunk.
"""
from __future__ import annotations

import math
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from separator.errors import invalid_argument

from ..oom import OomFallback
from ..precision import autocast
from ..transfer import to_device, to_host

SPOOL_BLOCK = 1 << 16     # frames per block read back from the spool file


@dataclass(frozen=True)
class MixStats:
    """Mean and std of the mono mix (``wav.mean(0)``), as demucs.api normalises with."""
    mean: float
    std: float
    frames: int


class _StatsAcc:
    """Chan's parallel mean / M2 in float64 over the float32 mono mix."""

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0

    def add(self, x: torch.Tensor) -> None:           # x: (C, n) float32
        if x.shape[-1] == 0:
            return
        ref = x.mean(0).double()
        nb = ref.numel()
        mb = float(ref.mean())
        m2b = float(((ref - mb) ** 2).sum())
        n = self.n + nb
        delta = mb - self.mean
        self.mean += delta * nb / n
        self.m2 += m2b + delta * delta * self.n * nb / n
        self.n = n

    def result(self) -> MixStats:
        std = math.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else 0.0
        return MixStats(self.mean, std, self.n)


def to_model_channels(block: np.ndarray, channels: int) -> torch.Tensor:
    """(frames, c) array -> (channels, frames) float32 tensor, as demucs.audio.convert_audio_channels."""
    arr = np.asarray(block, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"expected (frames, channels) audio blocks, got shape {arr.shape}")
    x = torch.from_numpy(np.ascontiguousarray(arr.T))
    src = x.shape[0]
    if src == channels:
        return x
    if channels == 1:
        return x.mean(dim=0, keepdim=True)
    if src == 1:
        return x.expand(channels, -1).contiguous()
    if src > channels:
        return x[:channels].contiguous()
    raise ValueError(f"cannot map {src}-channel audio to {channels} channels")


def mix_stats(blocks: Iterable[np.ndarray], channels: int = 2) -> MixStats:
    """The normalisation statistics demucs would compute on the whole track (first pass)."""
    acc = _StatsAcc()
    for b in blocks:
        acc.add(to_model_channels(b, channels))
    return acc.result()


class Spool:
    """A one-shot stream written to a temporary raw float32 file while its stats are computed."""

    def __init__(self, blocks: Iterable[np.ndarray], channels: int) -> None:
        self.channels = channels
        self.fh = tempfile.TemporaryFile(prefix="separator-demucs-", suffix=".f32")
        acc = _StatsAcc()
        for b in blocks:
            x = to_model_channels(b, channels)
            acc.add(x)
            self.fh.write(x.T.contiguous().numpy().tobytes())
        self.stats = acc.result()

    def __iter__(self) -> Iterator[np.ndarray]:
        self.fh.seek(0)
        frame_bytes = 4 * self.channels
        while True:
            buf = self.fh.read(SPOOL_BLOCK * frame_bytes)
            if not buf:
                break
            yield np.frombuffer(buf, dtype=np.float32).reshape(-1, self.channels)

    def close(self) -> None:
        self.fh.close()


class Unit:
    """One (sub-model, shift) pass of apply_model(split=True) over a stream.

    Timeline: ``prefix`` zeros then the (normalised) mix; chunk ``k`` starts at
    ``k * stride``.  Output of this timeline minus its first ``prefix`` samples goes to
    ``self.out`` (a FIFO of (S, C, n) tensors).  Forward passes go through ``oom``, the
    sub-model's out-of-memory fall-back chain (shared by every stream and shift that runs it)."""

    def __init__(self, model, *, segment: float | None, overlap: float, transition_power: float,
                 prefix: int, channels: int, device: torch.device, oom: OomFallback[torch.nn.Module],
                 dtype: torch.dtype | None = None) -> None:
        from demucs.htdemucs import HTDemucs
        self.model = model
        self.device = device
        self.oom = oom
        self.dtype = dtype
        self.channels = channels
        self.nsrc = len(model.sources)
        seg = segment if segment is not None else model.segment
        self.seg = int(model.samplerate * seg)
        self.stride = int((1 - overlap) * self.seg)
        if self.seg <= 0 or self.stride <= 0:
            raise invalid_argument(f"segment/overlap give an empty chunk or stride "
                                   f"(segment {self.seg} samples, stride {self.stride})")
        w = torch.cat([torch.arange(1, self.seg // 2 + 1), torch.arange(self.seg - self.seg // 2, 0, -1)])
        self.weight = (w / w.max()) ** transition_power
        if isinstance(model, HTDemucs) and segment is not None:
            fixed = int(segment * model.samplerate)
            self.vlen = lambda n: fixed
        elif hasattr(model, "valid_length"):
            self.vlen = model.valid_length
        else:
            self.vlen = lambda n: n
        vfull = self.vlen(self.seg)
        self.right_ctx = (vfull - self.seg) - (vfull - self.seg) // 2
        self.keep = max(vfull, self.seg)                 # history kept before next_off
        # input
        self.pending: list[torch.Tensor] = []
        self.buf = torch.zeros(channels, 0)
        self.buf_start = 0
        self.avail = 0
        self.total: int | None = None
        self.next_off = 0
        # output
        self.acc = torch.zeros(self.nsrc, channels, 0)
        self.wsum = torch.zeros(0)
        self.acc_start = 0
        self.trim = prefix
        self.out: list[torch.Tensor] = []
        self.out_n = 0
        if prefix:
            self.feed(torch.zeros(channels, prefix))

    # ---- input side
    def feed(self, x: torch.Tensor) -> None:
        if x.shape[-1]:
            self.pending.append(x)
            self.avail += x.shape[-1]

    def finish(self) -> None:
        self.total = self.avail

    def _window(self, start: int, end: int) -> torch.Tensor:
        if self.pending:
            self.buf = torch.cat([self.buf, *self.pending], dim=-1)
            self.pending = []
        limit = self.total if self.total is not None else self.avail
        lo, hi = max(start, 0), min(end, limit)
        assert lo >= self.buf_start or lo >= hi, "history trimmed too early"
        if hi <= lo:
            return torch.zeros(self.channels, end - start)
        part = self.buf[:, lo - self.buf_start: hi - self.buf_start]
        if lo - start or end - hi:
            part = torch.nn.functional.pad(part, (lo - start, end - hi))
        return part

    def ready(self) -> list[tuple["Unit", int, int, torch.Tensor]]:
        """Chunks computable now: (unit, offset, length, padded input window)."""
        tasks = []
        while True:
            o = self.next_off
            if self.total is not None:
                if o >= self.total:
                    break
                n = min(self.total - o, self.seg)
            elif self.avail >= o + self.seg + self.right_ctx:
                n = self.seg
            else:
                break
            target = self.vlen(n)
            start = o - (target - n) // 2
            tasks.append((self, o, n, self._window(start, start + target)))
            self.next_off += self.stride
        drop = self.next_off - self.keep - self.buf_start
        if drop > 0 and self.buf.shape[-1]:
            drop = min(drop, self.buf.shape[-1])
            self.buf = self.buf[:, drop:].clone()
            self.buf_start += drop
        return tasks

    # ---- compute
    def forward(self, window: torch.Tensor, n: int) -> torch.Tensor:
        return self.forward_batch([window], [n])[0]

    def forward_batch(self, windows: list[torch.Tensor], ns: list[int]) -> list[torch.Tensor]:
        """Several equally long windows of this unit in one forward pass (split into smaller
        ones, or run on a CPU copy of the model, when out of memory: see :mod:`..oom`)."""
        from demucs.utils import center_trim
        x = torch.stack(windows)
        done: dict[int, torch.Tensor] = {}

        def step(model: torch.nn.Module, device: torch.device, lo: int, hi: int) -> None:
            with torch.inference_mode(), autocast(device, self.dtype if model is self.model else None):
                out = model(to_device(x[lo:hi], device))
                if len(set(ns[lo:hi])) == 1:            # trimmed on the device: less to copy
                    out = center_trim(out, ns[lo])
                out = to_host(out.float())
            done.update((lo + i, center_trim(out[i:i + 1], ns[lo + i])[0]) for i in range(hi - lo))

        self.oom.run(self.model, len(windows), step)
        return [done[i] for i in range(len(windows))]

    # ---- output side
    def consume(self, o: int, n: int, chunk_out: torch.Tensor) -> None:
        end = o + n
        have = self.acc_start + self.acc.shape[-1]
        if end > have:
            self.acc = torch.cat([self.acc, torch.zeros(self.nsrc, self.channels, end - have)], -1)
            self.wsum = torch.cat([self.wsum, torch.zeros(end - have)])
        rel = o - self.acc_start
        w = self.weight[:n]
        self.acc[..., rel:rel + n] += w * chunk_out
        self.wsum[rel:rel + n] += w
        if self.total is not None and o + self.stride >= self.total:
            final = self.total
        else:
            final = o + self.stride
        k = final - self.acc_start
        if k > 0:
            done = self.acc[..., :k] / self.wsum[:k]
            self.acc = self.acc[..., k:].clone()
            self.wsum = self.wsum[k:].clone()
            self.acc_start = final
            if self.trim:
                cut = min(self.trim, done.shape[-1])
                done = done[..., cut:]
                self.trim -= cut
            if done.shape[-1]:
                self.out.append(done)
                self.out_n += done.shape[-1]

    def pop(self, n: int) -> torch.Tensor:
        parts, got = [], 0
        while got < n:
            head = self.out[0]
            take = min(n - got, head.shape[-1])
            parts.append(head[..., :take])
            if take == head.shape[-1]:
                self.out.pop(0)
            else:
                self.out[0] = head[..., take:]
            got += take
        self.out_n -= n
        return parts[0] if len(parts) == 1 else torch.cat(parts, -1)


__all__ = ["MixStats", "Spool", "Unit", "mix_stats", "to_model_channels"]
