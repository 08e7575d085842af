"""Generic streaming overlap-add chunker, shared by every model family.

The input arrives as an iterator of ``(frames, channels)`` float32 blocks of any size.
It is cut into chunks of ``segment`` samples starting every ``stride`` samples
(``stride = segment - overlap``); each chunk goes through ``fn(chunk[C, T]) ->
out[S, C, T]``; the chunk outputs are blended with the triangular weights of demucs'
``apply.py`` (``1, 2, ..., seg/2, ..., 2, 1`` raised to ``transition_power``) and
divided by the sum of the weights, so the blend is an exact convex combination: a linear
cross-fade across each overlap, and unity where only one chunk contributes.

Properties the callers rely on:

* total output frames == total input frames (the last partial chunk is zero-padded to
  ``segment`` -- or passed short with ``pad_last=False`` -- and the result cropped);
* memory is bounded by ``segment`` (plus one incoming block), never by the stream;
* the output does not depend on how the input is split into blocks: chunk boundaries
  depend only on the sample positions and the total length;
* a chunk whose predecessor already reached the end of the stream is not computed, so
  an input shorter than ``segment`` is exactly one ``fn`` call on the whole input.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

ChunkFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ChunkPlan:
    """How a stream is cut: ``segment`` samples every ``stride`` samples."""

    segment: int
    stride: int
    transition_power: float = 1.0
    pad_last: bool = True  # zero-pad the final partial chunk to ``segment`` before ``fn``

    def __post_init__(self) -> None:
        if self.segment <= 0 or not 0 < self.stride <= self.segment:
            raise ValueError(f"need 0 < stride <= segment, got segment={self.segment} stride={self.stride}")

    @classmethod
    def from_overlap(cls, segment: int, overlap: float = 0.25, **kw) -> "ChunkPlan":
        """``overlap`` is the fraction of ``segment`` shared by consecutive chunks (demucs' convention)."""
        if not 0.0 <= overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        return cls(segment=segment, stride=max(1, int((1.0 - overlap) * segment)), **kw)

    def weights(self) -> np.ndarray:
        """Triangular cross-fade weights (never zero), as in demucs ``apply.py``."""
        half = self.segment // 2
        w = np.concatenate([np.arange(1, half + 1), np.arange(self.segment - half, 0, -1)]).astype(np.float64)
        w = (w / w.max()) ** self.transition_power
        return w.astype(np.float32)


class _BlockQueue:
    """FIFO of numpy blocks with cheap "take the first n samples" (views, one concatenate)."""

    def __init__(self, channels: int) -> None:
        self.channels = channels
        self.blocks: list[np.ndarray] = []
        self.size = 0

    def push(self, block: np.ndarray) -> None:
        if len(block):
            self.blocks.append(block)
            self.size += len(block)

    def peek(self, n: int) -> np.ndarray:
        """The first ``min(n, size)`` samples as one array (a view when possible)."""
        n = min(n, self.size)
        if self.blocks and len(self.blocks[0]) >= n:
            return self.blocks[0][:n]
        parts, got = [], 0
        for b in self.blocks:
            if got >= n:
                break
            parts.append(b[: n - got])
            got += len(parts[-1])
        return np.concatenate(parts, axis=0) if parts else np.zeros((0, self.channels), np.float32)

    def drop(self, n: int) -> None:
        n = min(n, self.size)
        self.size -= n
        while n:
            head = self.blocks[0]
            if len(head) <= n:
                n -= len(head)
                self.blocks.pop(0)
            else:
                self.blocks[0] = head[n:]
                n = 0


def _as_block(block: np.ndarray, channels: int) -> np.ndarray:
    arr = np.asarray(block)
    if arr.ndim != 2 or arr.shape[1] != channels:
        raise ValueError(f"expected audio blocks of shape (frames, {channels}), got {arr.shape}")
    return arr if arr.dtype == np.float32 else arr.astype(np.float32)


def overlap_add_stream(
    blocks: Iterable[np.ndarray],
    fn: ChunkFn,
    plan: ChunkPlan,
    *,
    channels: int,
    device: str | torch.device = "cpu",
    progress: Callable[[int], None] | None = None,
) -> Iterator[np.ndarray]:
    """Run ``fn`` over the stream chunk by chunk; yield ``(S, frames, C)`` float32 output blocks.

    ``progress`` is called after every yielded block with the number of *new* input
    frames whose output is complete (the sum over calls is the input length).
    """
    seg, stride = plan.segment, plan.stride
    weight = plan.weights()
    queue = _BlockQueue(channels)
    it = iter(blocks)
    ended = False
    acc: np.ndarray | None = None       # (S, seg, C) weighted sum of chunk outputs, from the chunk start
    wsum = np.zeros(seg, np.float32)    # sum of weights, same positions
    pos = 0                             # absolute start of the current chunk
    total: int | None = None            # stream length, once known
    to_cuda = torch.cuda.is_available() and torch.device(device).type == "cuda"

    def fill() -> None:
        nonlocal ended, total
        while not ended and queue.size < seg:
            try:
                queue.push(_as_block(next(it), channels))
            except StopIteration:
                ended = True
                total = pos + queue.size

    while True:
        fill()
        if ended and pos > 0 and pos - stride + seg >= total:
            # the previous chunk already reached the end: flush what is left, compute nothing
            rest = total - pos
            if rest > 0:
                yield acc[:, :rest] / wsum[:rest, None]
                if progress is not None:
                    progress(rest)
            return
        n = queue.size if ended else seg           # valid samples in this chunk
        if n == 0:                                 # empty stream
            return
        chunk = queue.peek(n)
        if n < seg and plan.pad_last:
            chunk = np.concatenate([chunk, np.zeros((seg - n, channels), np.float32)], axis=0)
        x = torch.from_numpy(np.ascontiguousarray(chunk.T))
        if to_cuda:   # page-locked staging: an asynchronous copy, ordered before fn's kernels
            x = x.pin_memory().to(device, non_blocking=True)
        else:
            x = x.to(device)
        y = fn(x)
        y = y[..., :n].to("cpu", torch.float32).numpy().transpose(0, 2, 1)  # (S, n, C)
        if acc is None:
            acc = np.zeros((y.shape[0], seg, channels), np.float32)
        acc[:, :n] += y * weight[:n, None]
        wsum[:n] += weight[:n]
        last = ended                               # an ended stream fits in this chunk
        emit = n if last else stride
        yield acc[:, :emit] / wsum[:emit, None]
        if progress is not None:
            progress(emit)
        if last:
            return
        # shift the accumulators and the input by one stride
        acc[:, : seg - stride] = acc[:, stride:]
        acc[:, seg - stride:] = 0.0
        wsum[: seg - stride] = wsum[stride:]
        wsum[seg - stride:] = 0.0
        queue.drop(stride)
        pos += stride
