"""RoFormer source separation models (BS-RoFormer, Mel-Band RoFormer) as the community ships
them: ZFTurbo's Music-Source-Separation-Training (MSST) checkpoints, a ``<name>.ckpt`` torch
state dict next to a ``<name>.yaml`` config.  Needs torch, numpy and PyYAML only.

Typical use::

    cfg = read_config("model.yaml")                  # RoformerConfigError when unusable
    model = load_weights(build_model(cfg), "model.ckpt")   # RoformerWeightsError
    sep = RoformerSeparator(model, cfg, device="cuda", precision="bf16")
    for out in sep.separate_stream(blocks):          # blocks: (frames, channels) float32
        ...                                          # out.stems: {stem: (frames, channels) float32},
                                                     # out.mixture: the input frames they came from

Units: ``samplerate`` in Hz; chunk sizes, steps and block lengths in frames (samples per
channel); nothing here works in seconds.

As a family of the registry (:mod:`separator.core.registry`): :func:`specs` (the catalogue,
``models/roformer.yaml``, and the models found in ``<model_dir>/roformer/``), :func:`installed`,
:func:`spec_for_path` (``--model path/to/<name>.yaml``, the checkpoint beside it) and
:func:`load`; :mod:`.repo` lists, pulls and verifies.  The DC bin is kept unless the yaml asks
(``zero_dc: true``): the classes the published checkpoints were trained with keep it.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from torch import nn

from ...errors import CIError, ModelUnavailable, invalid_argument
from ..base import LoadedModel, ModelSpec, Separated
from ..weights import InstalledModel

from .config import (ARCHITECTURES, BS_ROFORMER, MEL_BAND_ROFORMER, RoformerConfig,
                     parse_config, read_config)
from .errors import RoformerConfigError, RoformerWeightsError
from .weights import load_weights, read_state_dict
from .model import BSRoformer, MelBandRoformer

__all__ = [
    "FAMILY", "RoformerModel", "installed", "listing", "load", "spec_for_path", "specs",
    "ARCHITECTURES", "BS_ROFORMER", "MEL_BAND_ROFORMER", "BSRoformer", "MelBandRoformer",
    "NormStats", "RoformerConfig", "RoformerConfigError", "RoformerSeparator",
    "RoformerWeightsError", "build_model", "load_weights", "parse_config", "read_config",
    "read_state_dict",
]


def build_model(cfg: RoformerConfig) -> nn.Module:
    """A randomly initialised net of the config's architecture and size, in eval mode (load
    weights with :func:`load_weights`)."""
    cls = BSRoformer if cfg.architecture == BS_ROFORMER else MelBandRoformer
    try:
        model = cls(**cfg.model_kwargs)
    except ValueError as e:  # the config checks should have caught it; keep the error typed
        raise RoformerConfigError(f"{cfg.source or 'the model config'}: {e}") from None
    return model.eval()


def __getattr__(name: str):
    # the streaming separator lives in .demix; imported on first use
    if name in ("RoformerSeparator", "NormStats"):
        from . import demix
        return getattr(demix, name)
    raise AttributeError(name)


# ----------------------------------------------------------------------------- the family

FAMILY = "roformer"


def _stems(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(str(n).lower() for n in names)


def _local_spec(name: str, yaml_path: Path, location: str | None = None) -> ModelSpec:
    try:
        cfg = read_config(yaml_path)
    except RoformerConfigError as err:
        raise ModelUnavailable(str(err)) from None
    return ModelSpec(name, FAMILY, _stems(cfg.stems), cfg.samplerate, cfg.audio_channels,
                     f"{cfg.architecture.replace('_', ' ')} ({len(cfg.stems)} stem(s))",
                     f"{yaml_path.with_suffix('.ckpt')}", location)


def specs(model_dir: str | os.PathLike | None = None, *, include_local: bool = False) -> list[ModelSpec]:
    """The catalogued checkpoints (cheap: their stems come from the catalogue) and, with
    ``include_local``, the pairs found in ``<model_dir>/roformer/``."""
    from .catalogue import roformer_catalogue
    from .repo import local_names, roformer_dir

    cat = roformer_catalogue()
    out = [ModelSpec(e.name, FAMILY, e.stems, 44100, 2, e.description, e.checkpoint.url) for e in cat.values()]
    if include_local:
        folder = roformer_dir(model_dir)
        out += [_local_spec(n, folder / f"{n}.yaml") for n in local_names(model_dir) if n not in cat]
    return out


def installed(model_dir: str | os.PathLike | None = None) -> set[str]:
    """Names whose checkpoint and config are both in ``<model_dir>/roformer/``."""
    from .repo import local_names
    return set(local_names(model_dir))


def listing(model_dir: str | os.PathLike | None = None) -> list[InstalledModel]:
    """The rows of ``separator models list``: every catalogued model, and local pairs."""
    from . import repo
    return repo.list_installed(model_dir)


def spec_for_path(path: str | os.PathLike) -> ModelSpec | None:
    """``path/to/<name>.yaml`` with ``<name>.ckpt`` beside it (None: not such a pair)."""
    p = Path(path)
    if p.suffix.lower() not in (".yaml", ".yml") or not p.is_file():
        return None
    if not p.with_suffix(".ckpt").is_file():
        raise ModelUnavailable(f"{p} has no checkpoint beside it: put the weights at {p.with_suffix('.ckpt')}")
    return _local_spec(p.stem, p, str(p))


class RoformerModel(LoadedModel):
    """A RoFormer checkpoint on a device, separating streams as MSST's ``demix`` does."""

    def __init__(self, spec: ModelSpec, device: str, separator) -> None:
        super().__init__(spec, device)
        self.separator = separator

    def separate_stream(self, blocks, *, progress=None) -> Iterator[Separated]:
        norm = None
        if self.separator.normalize:    # whole-input statistics first (a re-iterable input is read twice)
            from .demix import NormStats
            if iter(blocks) is blocks:
                blocks = list(blocks)
            norm = NormStats()
            for block in blocks:
                norm.update(self.separator._channels(block))
        for out in self.separator.separate_stream(blocks, progress=progress, norm_stats=norm):
            yield Separated({k.lower(): v for k, v in out.stems.items()}, out.mixture)


def _files(spec: ModelSpec, model_dir) -> tuple[Path, Path]:
    from .catalogue import roformer_catalogue
    from .repo import copy_instructions, pair, roformer_dir

    if spec.location:
        cfg = Path(spec.location)
        return cfg.with_suffix(".ckpt"), cfg
    folder = roformer_dir(model_dir)
    ckpt, cfg = pair(folder, spec.name)
    if not (ckpt.is_file() and cfg.is_file()):
        entry = roformer_catalogue().get(spec.name)
        how = copy_instructions(entry, folder) if entry else f"put {ckpt.name} and {cfg.name} in {folder}"
        raise ModelUnavailable(f"RoFormer model {spec.name!r} is not installed: {how}")
    return ckpt, cfg


def load(spec: ModelSpec, device: str, *, model_dir: str | None = None, precision: str | None = None,
         batch: int | None = None, overlap: float | None = None, **options) -> RoformerModel:
    """Registry factory.  ``precision`` ``auto`` (default): fp16 autocast on CUDA when the yaml's
    ``training.use_amp`` says so (as MSST runs it), else fp32; ``batch``: chunks per forward
    pass (the yaml's ``inference.batch_size`` by default); ``overlap``: the fraction of a chunk
    shared with the next, as MSST's ``num_overlap`` = 1 / (1 - overlap) (the yaml's by default;
    outputs equal MSST's demix only with the yaml's)."""
    from .demix import RoformerSeparator

    for knob in ("shifts", "jobs", "segment", "wiener"):
        if options.pop(knob, None) not in (None, 0, False):
            raise invalid_argument(f"{knob} does not apply to RoFormer model {spec.name}", resource=knob)
    if options:
        raise invalid_argument(f"RoFormer model {spec.name} takes no option {', '.join(sorted(options))}")
    ckpt, cfg_path = _files(spec, model_dir)
    try:
        cfg = read_config(cfg_path)
        model = load_weights(build_model(cfg), ckpt)
    except (RoformerConfigError, RoformerWeightsError) as err:
        raise ModelUnavailable(str(err)) from None
    dev = device
    precision = precision or "auto"
    if precision == "auto":
        precision = "fp16" if dev.startswith("cuda") and cfg.use_amp else "fp32"
    num_overlap = None
    if overlap is not None:
        if not 0 <= overlap < 1:
            raise invalid_argument(f"overlap must be in [0, 1), got {overlap}", resource="overlap")
        num_overlap = max(1, round(1 / (1 - overlap)))
    try:
        sep = RoformerSeparator(model, cfg, device=dev, precision=precision, batch_size=batch,
                                num_overlap=num_overlap)
    except ValueError as err:
        raise CIError("InvalidArgument", str(err)) from None
    return RoformerModel(spec, dev, sep)
