"""Blocks of audio as the streaming code passes them: ``(frames, channels)`` float32 numpy arrays.

:class:`BlockQueue` is the FIFO streaming code keeps of its input: the frame-grid chunker's
pending samples (:mod:`.stft_stream`), and the input a model has not yet handed back as the
mixture of a :class:`~separator.core.base.Separated` block (Demucs, RoFormer).
"""
from __future__ import annotations

import numpy as np


class BlockQueue:
    """FIFO of ``(frames, channels)`` numpy blocks with cheap "the first n samples" (a view when
    they lie in one block, else one concatenate)."""

    def __init__(self, channels: int) -> None:
        self.channels = channels
        self.blocks: list[np.ndarray] = []
        self.size = 0

    def push(self, block: np.ndarray) -> None:
        if len(block):
            self.blocks.append(block)
            self.size += len(block)

    def peek(self, n: int) -> np.ndarray:
        """The first ``min(n, size)`` samples as one array."""
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


def as_block(block: np.ndarray, channels: int) -> np.ndarray:
    arr = np.asarray(block)
    if arr.ndim != 2 or arr.shape[1] != channels:
        raise ValueError(f"expected audio blocks of shape (frames, {channels}), got {arr.shape}")
    return arr if arr.dtype == np.float32 else arr.astype(np.float32)


__all__ = ["BlockQueue", "as_block"]
