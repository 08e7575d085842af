"""Keys for caches of tensors derived from parameters (e.g. a re-arranged conv kernel).

A derived tensor is valid while its sources are the same storage, unmodified in place
(``load_state_dict`` copies in place), with the same dtype and device.
"""
from __future__ import annotations

import torch


def source_key(*tensors: torch.Tensor | None) -> tuple:
    """Changes whenever any of ``tensors`` is replaced, moved, cast or modified in place."""
    return tuple(None if t is None else
                 (t.data_ptr(), -1 if t.is_inference() else t._version, t.dtype, t.device)
                 for t in tensors)


__all__ = ["source_key"]
