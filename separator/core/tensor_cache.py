"""Caches of tensors derived from parameters (e.g. a re-arranged or pre-packed conv kernel).

A derived tensor is valid while its sources are the same storage, unmodified in place
(``load_state_dict`` copies in place), with the same dtype and device.
"""
from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

import torch

T = TypeVar("T")


def source_key(*tensors: torch.Tensor | None) -> tuple:
    """Changes whenever any of ``tensors`` is replaced, moved, cast or modified in place."""
    return tuple(None if t is None else
                 (t.data_ptr(), -1 if t.is_inference() else t._version, t.dtype, t.device)
                 for t in tensors)


class Derived(Generic[T]):
    """One value derived from some tensors, rebuilt when any of them changes (or ``extra`` does).

    A module keeps one per derived kernel.  Copies (``copy.deepcopy``, pickling) start empty:
    the copy's parameters have new storage anyway, and some derived tensors (oneDNN's opaque
    pre-packed kernels) cannot be copied."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._value: T | None = None

    def get(self, sources: tuple[torch.Tensor | None, ...], build: Callable[[], T],
            extra: Hashable = None) -> T:
        key = (source_key(*sources), extra)
        if self._key != key:
            self._value = build()
            self._key = key
        return self._value  # type: ignore[return-value]

    def __deepcopy__(self, memo) -> "Derived[T]":
        return type(self)()

    def __getstate__(self) -> dict:
        return {"_key": None, "_value": None}


__all__ = ["Derived", "source_key"]
