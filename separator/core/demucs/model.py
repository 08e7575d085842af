"""Demucs (v2/v3/v4, single models and bags) through the streaming pipeline.

This is ``demucs.api.Separator.separate_tensor`` + ``demucs.apply.apply_model``
re-expressed as a stream, so the result equals what ``python -m demucs.separate``
writes (``--clip-mode none --float32``) to float rounding, while memory is bounded
by a few segments whatever the input length:

* **Normalisation** by the whole track's mean / std (:mod:`.stream`).  A stream cannot know
  these before its end, so :meth:`DemucsModel.separate_stream` gets them (a) from ``stats=``
  (compute them with :func:`~.stream.mix_stats` during a cheap first decode pass), else (b) by
  iterating ``blocks`` twice when it is re-iterable (a list, or an object whose ``__iter__``
  decodes again), else (c) by spooling the one-shot stream to a temporary raw float32 file
  (disk = input size, memory still bounded).
* **Chunking** exactly as ``apply_model(split=True)`` (:class:`~.stream.Unit`); output is
  yielded as soon as it is final.
* **Shifts** (the shift trick): per (sub-model, shift) an independent chunk stream of
  ``zeros(max_shift - offset) + mix``, averaged.  Offsets come from :mod:`random` (or
  ``random.Random(seed)``); for one model and ``shifts=1`` they are drawn as demucs
  draws them, so ``random.seed(s)`` reproduces demucs exactly.  Beyond that, demucs'
  draws interleave with the transformer's own ``random`` calls inside each forward,
  which a stream running all passes side by side cannot replay: same distribution,
  not the same numbers.
* **Bags**: every sub-model runs its own stream (its own segment), outputs are
  weighted per source by the bag's ``weights`` and divided by their per-source sums.

Loading (safe unpickling, bags) is :mod:`.loader`; where weights live, :mod:`.repo`.
"""
from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction

import numpy as np
import torch

from separator.errors import ModelUnavailable, invalid_argument

from ..base import LoadedModel, ModelSpec, Separated
from ..blocks import BlockQueue
from ..oom import OomFallback, module_copy
from ..precision import PRECISIONS, autocast_dtype
from . import speed
from .catalogue import CatalogueModel
from .loader import load_bag, resolve_repo
from .stream import MixStats, Spool, Unit, mix_stats, to_model_channels

#: chunks per forward pass on a GPU unless ``batch`` says otherwise (1 on a CPU): one chunk
#: at a time leaves a large GPU idle between the host's steps (benchmarks/RESULTS.md, section 5)
CUDA_BATCH = 8

def spec_for(entry: CatalogueModel) -> ModelSpec:
    """The :class:`ModelSpec` of a catalogue model (no weights needed)."""
    files = ", ".join(f.file for f in entry.files)
    return ModelSpec(
        name=entry.name, family="demucs", sources=tuple(entry.sources),
        samplerate=entry.samplerate, audio_channels=entry.audio_channels,
        description=entry.description,
        weights=f"demucs repo <model_dir>/demucs: {files} + {entry.bag_file} ({entry.files[0].url.rsplit('/', 2)[0]}/)",
    )


def _cpu_model(model: torch.nn.Module) -> torch.nn.Module:
    return module_copy(model, "cpu", torch.float32)


class DemucsModel(LoadedModel):
    """A loaded Demucs model or bag, separating streams like ``demucs.separate``.

    Knobs (fixed at load time, part of the registry's cache key):

    * ``shifts`` (default 0): runs the whole separation ``shifts`` times on randomly
      shifted input (0..0.5 s) and averages: ``shifts`` x the compute, for a little SDR.
    * ``overlap`` (default 0.25): fraction of each segment shared with the next;
      compute grows as ``1 / (1 - overlap)`` (0.25 -> 1.33x, 0.5 -> 2x).
    * ``segment`` (seconds, default: the model's / bag's own): shorter lowers peak
      memory, costs more chunks (more overlap overhead) and context; HTDemucs models
      cannot go above their training segment (7.8 s): InvalidArgument.
    * ``jobs`` (default 1): chunks computed concurrently in a thread pool (demucs'
      ``-j``); each in-flight chunk adds its activations to peak memory.  Intra-op threads are torch's process-wide setting (``torch.set_num_threads``).
    * ``batch`` (default 1 on a CPU, :data:`CUDA_BATCH` on a GPU): chunks stacked into one
      forward pass.  On a GPU this keeps the device busy; on a CPU one chunk already keeps
      every core busy, so batching buys nothing and adds the batch's activations to peak
      memory.  Results equal unbatched ones to float rounding.  Out of memory, a batch is
      split (see :mod:`..oom`).
    * ``precision`` (default fp32): ``fp16`` (CUDA only) or ``bf16`` run the forward passes
      under autocast (see :func:`..precision.autocast`); inputs go to a GPU through pinned memory.
    """

    def __init__(self, spec: ModelSpec, device: str, bag, *, shifts: int = 0, overlap: float = 0.25,
                 segment: float | None = None, jobs: int = 1, transition_power: float = 1.0,
                 seed: int | None = None, batch: int | None = None, precision: str = "fp32") -> None:
        super().__init__(spec, device)
        if batch is None:
            batch = CUDA_BATCH if torch.device(device).type == "cuda" else 1
        self.batch = max(1, int(batch))
        self.precision = precision
        self.dtype = autocast_dtype(precision)     # of the forward passes (None: plain float32)
        from demucs.apply import BagOfModels
        self.bag = bag
        if isinstance(bag, BagOfModels):
            self.models = list(bag.models)
            self.weights = [list(w) for w in bag.weights]
        else:
            self.models = [bag]
            self.weights = [[1.0] * len(bag.sources)]
        self.shifts = int(shifts)
        self.overlap = float(overlap)
        self.segment = segment
        self.jobs = int(jobs)
        self.transition_power = float(transition_power)
        # shift offsets: the global `random` (as demucs) unless a seed makes every call identical
        self.seed = seed
        self._device = torch.device(device)
        self.bag.to(self._device)
        # out of memory: smaller batches of chunks, then a CPU copy of that sub-model (see ..oom);
        # one chain per sub-model, shared by all the streams and shifts that run it
        self.oom: list[OomFallback[torch.nn.Module]] = [
            OomFallback(self._device, batch=self.batch, cpu_copy=_cpu_model,
                        name=spec.name if len(self.models) == 1 else f"{spec.name} model {i + 1}/{len(self.models)}")
            for i in range(len(self.models))]

    @property
    def max_segment(self) -> float:
        from demucs.htdemucs import HTDemucs
        segs = [float(m.segment) for m in self.models if isinstance(m, HTDemucs)]
        return min(segs) if segs else math.inf

    def chunk_segments(self) -> list[int]:
        """Segment length in samples of each sub-model (after bag / user overrides)."""
        return [int(m.samplerate * (self.segment if self.segment is not None else m.segment))
                for m in self.models]

    # ------------------------------------------------------------------ streaming
    def separate_stream(self, blocks: Iterable[np.ndarray], *,
                        progress: Callable[[int], None] | None = None,
                        stats: MixStats | None = None) -> Iterator[Separated]:
        """Separate ``blocks`` (see :meth:`LoadedModel.separate_stream`); ``stats``: the
        input's normalisation statistics when known (see the module doc)."""
        spool = None
        try:
            if stats is None:
                if iter(blocks) is not blocks:            # re-iterable: two passes, no copy
                    stats = mix_stats(blocks, self.audio_channels)
                else:
                    spool = Spool(blocks, self.audio_channels)
                    stats, blocks = spool.stats, spool
            run = _Pass(self, stats, progress)
            try:
                for block in blocks:
                    yield from run.feed(block)
                yield from run.finish()
            finally:
                run.close()
        finally:
            if spool is not None:
                spool.close()


class _Pass:
    """One stream through a :class:`DemucsModel`: its (sub-model, shift) units, the chunks
    waiting to be batched, the thread pool, the normalisation of this input, and the input
    (un-normalised) whose output is not out yet: the mixture each yielded block carries.

    Chunks wait per unit until ``batch`` of them can go through the model together.  Grouping
    depends only on each unit's own chunk sequence, never on how the input arrived, so the
    output is identical whatever the block sizes."""

    def __init__(self, model: DemucsModel, stats: MixStats, progress: Callable[[int], None] | None) -> None:
        self.model = model
        self.progress = progress
        self.channels = model.audio_channels
        self.mean = torch.tensor(stats.mean, dtype=torch.float32)
        self.std = torch.tensor(stats.std, dtype=torch.float32) + 1e-8
        max_shift = int(0.5 * model.samplerate)
        rng = random if model.seed is None else random.Random(model.seed)
        self.groups: list[list[Unit]] = []
        for sub, oom in zip(model.models, model.oom):      # draw order = demucs' (model-major)
            if model.shifts:
                offsets = [rng.randint(0, max_shift) for _ in range(model.shifts)]
                prefixes = [max_shift - off for off in offsets]
            else:
                prefixes = [0]
            self.groups.append([Unit(sub, segment=model.segment, overlap=model.overlap,
                                     transition_power=model.transition_power, prefix=p,
                                     channels=self.channels, device=model._device, oom=oom,
                                     dtype=model.dtype) for p in prefixes])
        self.units = [u for g in self.groups for u in g]
        self.totals = [0.0] * len(model.sources)
        for ws in model.weights:
            for k, w in enumerate(ws):
                self.totals[k] += w
        self.pool = ThreadPoolExecutor(model.jobs) if model.jobs > 1 else None
        self.queued: list[list] = []
        self.waiting: dict[int, list] = {id(u): [] for u in self.units}
        self.mixture = BlockQueue(self.channels)

    def feed(self, block: np.ndarray) -> Iterator[Separated]:
        """Take one input block; run the chunks it completes once ``jobs`` groups are queued."""
        x = to_model_channels(block, self.channels)
        if not x.shape[-1]:
            return
        self.mixture.push(x.numpy().T)
        x = (x - self.mean) / self.std
        for u in self.units:
            u.feed(x)
        for u in self.units:
            self.waiting[id(u)] += u.ready()
        self.queued += self._take_groups(final=False)
        if len(self.queued) >= max(1, self.model.jobs):
            self._run(self.queued)
            self.queued = []
            yield from self._emit()

    def finish(self) -> Iterator[Separated]:
        """The end of the input: run every chunk left."""
        for u in self.units:
            u.finish()
            self.waiting[id(u)] += u.ready()
        self._run(self.queued + self._take_groups(final=True))
        self.queued = []
        yield from self._emit()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def _take_groups(self, final: bool) -> list[list]:
        batch = self.model.batch
        groups = []
        for u in self.units:
            q = self.waiting[id(u)]
            while len(q) >= batch or (final and q):
                group = [q.pop(0)]
                while q and len(group) < batch and q[0][3].shape == group[0][3].shape:
                    group.append(q.pop(0))
                groups.append(group)
        return groups

    @staticmethod
    def _forward(group: list) -> list[torch.Tensor]:
        return group[0][0].forward_batch([t[3] for t in group], [t[2] for t in group])

    def _run(self, groups: list[list]) -> None:
        outs = list(map(self._forward, groups) if self.pool is None else self.pool.map(self._forward, groups))
        for group, ys in zip(groups, outs):
            for (u, o, n, _), y in zip(group, ys):
                u.consume(o, n, y)

    def _emit(self) -> Iterator[Separated]:
        n = min(u.out_n for u in self.units)
        if n <= 0:
            return
        model = self.model
        est = None
        for g, ws in zip(self.groups, model.weights):
            if model.shifts:
                out = 0.
                for u in g:
                    out = out + u.pop(n)
                out = out / model.shifts
            else:
                out = g[0].pop(n)
            for k, w in enumerate(ws):
                out[k] *= w
            est = out if est is None else est + out
        for k in range(est.shape[0]):
            est[k] /= self.totals[k]
        est = est * self.std + self.mean
        mixture = np.ascontiguousarray(self.mixture.peek(n))
        self.mixture.drop(n)
        yield Separated({s: est[k].T.contiguous().numpy() for k, s in enumerate(model.sources)}, mixture)
        if self.progress is not None:
            self.progress(n)


# =========================================================================== loading

def _precision(precision: str | None, device: str) -> str:
    """``auto`` (or None) -> fp32: half precision is an explicit choice for Demucs (its effect
    on trained weights' SDR is not measured here); fp16 needs a CUDA device."""
    precision = precision or "auto"
    if precision == "auto":
        return "fp32"
    if precision not in PRECISIONS:
        raise invalid_argument(f"precision must be fp32, fp16, bf16 or auto, got {precision!r}")
    if precision == "fp16" and torch.device(device).type != "cuda":
        raise invalid_argument("fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    return precision


#: past this, each sample would be computed more than 10 times (compute grows as 1 / (1 - overlap))
MAX_OVERLAP = 0.9


def _validate(shifts, overlap, segment, jobs) -> None:
    if not isinstance(shifts, int) or isinstance(shifts, bool) or shifts < 0:
        raise invalid_argument(f"shifts must be an integer >= 0, got {shifts!r}")
    if not isinstance(overlap, (int, float)) or not 0.0 <= float(overlap) <= MAX_OVERLAP:
        raise invalid_argument(f"overlap must be between 0 and {MAX_OVERLAP} (a fraction of a chunk), "
                               f"got {overlap!r}")
    if segment is not None and (not isinstance(segment, (int, float, Fraction)) or not segment > 0
                                or not math.isfinite(float(segment))):
        raise invalid_argument(f"segment must be a positive number of seconds, got {segment!r}")
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise invalid_argument(f"jobs must be an integer >= 1, got {jobs!r}")


def load_demucs(name: str, device: str | None = None, *, model_dir: str | os.PathLike | None = None,
                shifts: int = 0, overlap: float = 0.25, segment: float | None = None, jobs: int = 1,
                transition_power: float = 1.0, seed: int | None = None, allow_download: bool = True,
                spec: ModelSpec | None = None, batch: int | None = None, precision: str | None = None) -> DemucsModel:
    """Load Demucs model / bag ``name`` from the local repo of ``model_dir`` (downloading
    it first when missing, allowed and online).  Raises ModelUnavailable (not installed,
    corrupt, needs diffq...) or CIError InvalidArgument (bad knobs)."""
    _validate(shifts, overlap, segment, jobs)
    if transition_power < 1:
        raise invalid_argument("transition_power must be >= 1")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    precision = _precision(precision, device)
    repo, entry = resolve_repo(name, model_dir, allow_download=allow_download)
    bag = load_bag(name, repo, entry)
    for sub in getattr(bag, "models", [bag]):
        speed.optimize(sub, device)   # same function, less time (see .speed)
    if spec is None:
        spec = spec_for(entry) if entry is not None else ModelSpec(
            name=name, family="demucs", sources=tuple(bag.sources), samplerate=int(bag.samplerate),
            audio_channels=int(bag.audio_channels), description="local Demucs model",
            weights=f"demucs repo {repo}")
    if tuple(bag.sources) != tuple(spec.sources):
        raise ModelUnavailable(f"{name}: weights have sources {list(bag.sources)}, "
                               f"catalogue says {list(spec.sources)}")
    model = DemucsModel(spec, device, bag, shifts=shifts, overlap=float(overlap), segment=segment,
                        jobs=max(1, jobs), transition_power=transition_power, seed=seed,
                        batch=batch, precision=precision)
    if segment is not None and float(segment) > model.max_segment:
        raise invalid_argument(
            f"segment {segment} s is longer than model {name} allows: Transformer models cannot "
            f"use a longer segment than they were trained for (max {model.max_segment:g} s)")
    return model


__all__ = ["CUDA_BATCH", "DemucsModel", "load_demucs", "spec_for"]
