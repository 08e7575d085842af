"""The Demucs family: pretrained Demucs v2/v3/v4 models and bags, through the streaming pipeline.

Laid out as demucs keeps its own apart: :mod:`.catalogue` (what models exist, generated
from the ``demucs`` package's metadata into ``models/demucs.yaml``), :mod:`.repo` (where
weights live: list, pull, verify), :mod:`.loader` (safe unpickling, building, bags),
:mod:`.stream` (normalisation statistics, the chunker), :mod:`.model` (:class:`DemucsModel`,
``apply_model`` as a stream) and :mod:`.speed` (inference-only rewrites).

The registry (:mod:`separator.core.registry`) uses :func:`specs` and :func:`load`.
"""
from __future__ import annotations

import os

from separator.errors import ModelUnavailable, invalid_argument

from ..base import ModelSpec
from ..weights import InstalledModel
from . import repo
from .catalogue import demucs_catalogue
from .loader import local_meta, resolve_repo
from .model import DemucsModel, load_demucs, spec_for
from .stream import MixStats, mix_stats

FAMILY = "demucs"


def specs(model_dir: str | os.PathLike | None = None, *, include_local: bool = False) -> list[ModelSpec]:
    """A :class:`ModelSpec` for every Demucs model of the catalogue (cheap: loads no
    weights).  With ``include_local``, extra bags found in the local repo of ``model_dir`` are
    added (their sources are read from the first weight file's header, see
    :func:`.loader.local_meta`)."""
    out = [spec_for(e) for e in demucs_catalogue().values()]
    if include_local:
        where = repo.demucs_repo(model_dir)
        for info in repo.list_installed(model_dir):
            if info.origin != "local" or not info.installed:
                continue
            try:
                sources, samplerate, channels = local_meta(info.name, where)
            except ModelUnavailable:
                continue
            out.append(ModelSpec(info.name, FAMILY, sources, samplerate, channels,
                                 info.description, f"demucs repo {where}"))
    return out


def installed(model_dir: str | os.PathLike | None = None) -> set[str]:
    """Names of the Demucs models whose weights are in the local repo (file names only)."""
    return {m.name for m in repo.list_installed(model_dir) if m.installed}


def listing(model_dir: str | os.PathLike | None = None) -> list[InstalledModel]:
    """The rows of ``separator models list``: every catalogued model, and local bags."""
    return repo.list_installed(model_dir)


def load(spec: ModelSpec, device: str, **options) -> DemucsModel:
    """Registry factory: ``spec`` on ``device`` with the engine's knobs (see :func:`load_demucs`)."""
    if options.pop("wiener", None) not in (None, False):
        raise invalid_argument(f"wiener applies to the bundled spleeter-2stems model, "
                               f"not to Demucs model {spec.name}")
    return load_demucs(spec.name, device, spec=spec, **options)


__all__ = ["DemucsModel", "FAMILY", "MixStats", "installed", "listing", "load", "load_demucs", "mix_stats",
           "resolve_repo", "specs"]
