"""Safe loading of model weights: the helpers every family can use.

A checkpoint is never unpickled with ``weights_only=False``: :func:`load_numpy_checkpoint`
reads a torch zip file whose pickle is a plain ``dict[str, numpy.ndarray]`` (what the
bundled model's released files are, :mod:`separator.core.spleeter.weights`) with torch's
weights-only unpickler and *exactly* the four numpy globals such a file needs (plus the
float32 dtype class numpy 2 pickles), so a file that references anything else
(``os.system``, ``builtins.eval``...) is refused before any of it runs.
:func:`validate_state` checks a loaded state against the model's own parameter names and
shapes; :func:`read_cached` / :func:`write_cached` keep a verified copy as ``safetensors``
(no pickle at all) under :func:`cache_dir`.
"""
from __future__ import annotations

import codecs
import logging
import os
import pickle
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from ..errors import ModelUnavailable
from ..filehash import file_digest

log = logging.getLogger(__name__)


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


def sha256(path: Path) -> str:
    return file_digest(path, "sha256")


def read_cached(path: Path) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        from safetensors.numpy import load_file
        return load_file(str(path))
    except Exception as exc:  # a damaged cache entry is simply rebuilt
        log.warning("ignoring damaged weights cache %s: %s", path, exc)
        return None


def write_cached(path: Path, state: Mapping[str, np.ndarray]) -> None:
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


__all__ = ["cache_dir", "load_numpy_checkpoint", "read_cached", "sha256", "validate_state", "write_cached"]
