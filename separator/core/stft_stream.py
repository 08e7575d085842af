"""Streaming STFT-domain separation that equals separating the whole signal in one piece.

Spleeter's U-Net sees the magnitude STFT in fixed groups of frames (512-frame segments, no
context across them), so there is no need to cut the *signal* into overlapping chunks and
cross-fade them: cut the whole signal's *frame grid* instead.  A chunk is ``frames`` frames
(whole segments) of the whole-signal framing; the model analyses exactly those frames,
masks them and synthesises them; the synthesis is overlap-added with its neighbours' as one
inverse STFT of the whole signal would be.  The result equals the one-piece result (float
rounding aside) whatever the chunk size, and nothing is computed twice: consecutive chunks
share only ``L - H`` input samples (3072 for Spleeter), where a cross-fade would recompute
seconds.

Framing (TensorFlow Spleeter's, :func:`separator.core.spleeter.model.tf_stft`): frame ``k``
covers samples ``[kH - L, kH)`` of the signal (zeros outside ``[0, N)``), for
``k = 0 .. K-1``, ``K = ceil((N + L) / H)``.  Chunk ``c`` holds frames ``[k0, k1)`` and reads
samples ``[k0 H - L, (k1 - 1) H)``; after it, every sample before ``k1 H - L`` has all of its
``L / H`` frames and is final, and the last ``L - H`` samples of its synthesis are carried
into the next chunk.

Memory is bounded by the chunk (plus one incoming block), never by the stream.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch

from .blocks import BlockQueue, as_block
from .transfer import to_device, to_host

#: ``fn(x[C, (m - 1) H + L]) -> y[S, C, (m - 1) H + L]``: the overlap-added synthesis of the
#: ``m`` frames of ``x`` (window and scaling applied, not cropped), for ``S`` outputs.
SynthesisFn = Callable[[torch.Tensor], torch.Tensor]


def stft_frame_stream(
    blocks: Iterable[np.ndarray],
    fn: SynthesisFn,
    *,
    frame_length: int,
    hop: int,
    chunk_frames: int,
    channels: int,
    first_chunk_frames: int | None = None,
    device: str | torch.device = "cpu",
    progress: Callable[[int], None] | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Run ``fn`` over the stream ``chunk_frames`` frames at a time (the first chunk
    ``first_chunk_frames``, when given: a small first chunk gets output to the consumer sooner);
    yield ``(out, mix)`` for consecutive final sample ranges: ``out[S, n, C]`` float32 and the
    input's ``mix[n, C]`` over the same samples.  The ranges cover the input exactly (total
    ``n`` = its length).  ``progress(n)`` is called after every yield."""
    L, H, M = int(frame_length), int(hop), int(first_chunk_frames or chunk_frames)
    if H <= 0 or L < H or L % H or M <= 0 or chunk_frames <= 0:
        raise ValueError(f"need 0 < hop <= frame_length, frame_length % hop == 0 and chunk sizes > 0, got "
                         f"frame_length={L} hop={H} chunk_frames={chunk_frames} first_chunk_frames={first_chunk_frames}")
    queue = BlockQueue(channels)
    queue.push(np.zeros((L, channels), np.float32))   # frame 0 starts L samples before the signal
    pos = -L                               # signal index of queue[0] (= k0 H - L)
    carry: np.ndarray | None = None        # (S, L - H, C): the next chunk's head, partly summed
    it = iter(blocks)
    ended = False

    while True:
        need = (M - 1) * H + L             # input samples of a full chunk
        while not ended and queue.size <= need:    # one sample more than a chunk: frames follow it
            try:
                queue.push(as_block(next(it), channels))
            except StopIteration:
                ended = True
        if ended:
            n_total = pos + queue.size
            if n_total <= max(pos, 0):             # empty stream (or nothing left: not reached)
                return
            frames = -(-(n_total + L) // H) - (pos + L) // H     # K - k0
            n_in = (frames - 1) * H + L
            end = n_total                           # everything left is final
        else:
            frames, n_in, end = M, need, pos + M * H
        x = queue.peek(n_in)
        if len(x) < n_in:
            x = np.concatenate([x, np.zeros((n_in - len(x), channels), np.float32)], axis=0)
        t = to_device(torch.from_numpy(np.ascontiguousarray(x.T)), device)
        y = to_host(fn(t).float()).numpy().transpose(0, 2, 1)    # (S, n_in, C)
        if carry is not None:
            y[:, : L - H] += carry
        start = max(pos, 0)
        yield y[:, start - pos: end - pos], x[start - pos: end - pos]
        if progress is not None:
            progress(end - start)
        if ended:
            return
        carry = y[:, M * H: M * H + L - H].copy()
        queue.drop(M * H)
        pos += M * H
        M = int(chunk_frames)


__all__ = ["SynthesisFn", "stft_frame_stream"]
