"""What a separation model is, as the pipeline sees it.

:class:`ModelSpec` describes a model (static facts, no weights loaded);
:class:`LoadedModel` is a model ready to run on one device.  The pipeline only uses
``samplerate`` / ``audio_channels`` / ``sources`` and :meth:`LoadedModel.separate_stream`,
whose blocks are :class:`Separated`: the stems, and the input frames they came from.  A new
family is a package that subclasses :class:`LoadedModel`, listed in
:mod:`separator.core.registry` (the bundled model streams on its STFT frame grid,
:mod:`separator.core.stft_stream`; Demucs with its own overlap-add,
:mod:`separator.core.demucs`).
"""
from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ModelSpec:
    name: str                  # registry key, e.g. "spleeter-2stems"
    family: str                # "spleeter" | "demucs"
    sources: tuple[str, ...]   # stem names, in output order
    samplerate: int            # the rate the model runs at (input must be resampled to it)
    audio_channels: int        # the channel count the model runs with
    description: str
    weights: str               # where the weights come from
    location: str | None = None  # a model outside the model directory: the file it was named by


@dataclass(frozen=True)
class Separated:
    """One block of a separation: the stems, and the mixture they were separated from.

    ``stems``: ``{source: (frames, audio_channels) float32}``; ``mixture``: ``(frames,
    audio_channels)`` float32, exactly the input frames those stems came from, as the model
    heard them (in its channels: a mono block given to a stereo model is duplicated; never
    normalised).  The pipeline takes the residual ("everything but the vocals") from it, so it
    need not read its input again."""

    stems: dict[str, np.ndarray]
    mixture: np.ndarray

    @property
    def frames(self) -> int:
        return len(self.mixture)


class LoadedModel(abc.ABC):
    """A model with its weights on ``device``.  Holds no per-stream state: concurrent streams are fine."""

    def __init__(self, spec: ModelSpec, device: str) -> None:
        self.spec = spec
        self.device = device

    @property
    def samplerate(self) -> int:
        return self.spec.samplerate

    @property
    def audio_channels(self) -> int:
        return self.spec.audio_channels

    @property
    def sources(self) -> tuple[str, ...]:
        return self.spec.sources

    @abc.abstractmethod
    def separate_stream(self, blocks: Iterable[np.ndarray], *,
                        progress: Callable[[int], None] | None = None) -> Iterator[Separated]:
        """Separate a stream of ``(frames, audio_channels)`` float32 blocks at ``samplerate``.

        Yields :class:`Separated` blocks in order whose total length is the input's: their
        mixtures, joined, are the input.  ``progress(n)`` is called with the number of *new*
        input frames whose output has been produced (the calls sum to the input length).
        """

    def separate(self, audio: np.ndarray) -> dict[str, np.ndarray]:
        """Convenience: separate a whole ``(frames, audio_channels)`` array into its stems."""
        parts: dict[str, list[np.ndarray]] = {s: [] for s in self.sources}
        for block in self.separate_stream([audio]):
            for s in self.sources:
                parts[s].append(block.stems[s])
        return {s: (np.concatenate(p, axis=0) if p else np.zeros((0, self.audio_channels), np.float32))
                for s, p in parts.items()}


__all__ = ["LoadedModel", "ModelSpec", "Separated"]
