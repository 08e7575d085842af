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
import socket
import tempfile
import threading
import urllib.parse
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import ModelUnavailable
from ..filehash import file_digest

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- where weights live

ENV_MODEL_DIR = "SEPARATOR_MODEL_DIR"
#: Set to 1 to never touch the network (pulls and automatic downloads fail at once).
ENV_OFFLINE = "SEPARATOR_OFFLINE"
CONNECT_TIMEOUT_S = 3.0
DOWNLOAD_TIMEOUT_S = 60.0


def model_dir(override: str | os.PathLike | None = None) -> Path:
    """The model directory: ``override`` > ``$SEPARATOR_MODEL_DIR`` >
    ``$XDG_CACHE_HOME/separator/models`` > ``~/.cache/separator/models``."""
    if override:
        return Path(override).expanduser()
    env = os.environ.get(ENV_MODEL_DIR)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "separator" / "models"


def unreachable(url: str, timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """None when ``url`` can be fetched now (a local ``file:`` URL, or a host that accepts a TCP
    connection within ``timeout`` seconds), else a short reason.  ``$SEPARATOR_OFFLINE`` makes
    every network URL unreachable.  DNS resolution runs in a thread so it cannot hang us."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file":
        return None
    if os.environ.get(ENV_OFFLINE, "").strip() not in ("", "0"):
        return f"{ENV_OFFLINE} is set"
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    result: list[str | None] = []

    def attempt():
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(None)
        except OSError as exc:
            result.append(f"cannot reach {host}:{port} ({exc.__class__.__name__}: {exc})")

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    if not result:
        return f"cannot reach {host}:{port} (timed out after {timeout:g}s)"
    return result[0]


@dataclass
class FileCheck:
    """One weight file checked: ``status`` ok | missing | corrupt | truncated | unreadable |
    unchecked (present, but nothing to check it against)."""
    path: Path
    status: str
    detail: str = ""
    expected: str | None = None     # the digest (or digest prefix) it should have
    actual: str | None = None       # what its bytes hash to (None: not read)
    size: int = 0

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "unchecked")


@dataclass
class InstalledModel:
    """A row of ``separator models list``: a model of some family, installed or not."""
    name: str
    family: str
    sources: tuple[str, ...]
    installed: bool
    size_mb: float | None               # on-disk size of its weight files when installed
    location: str                       # the folder, or where to get it
    origin: str                         # "bundled" | "catalogue" | "local"
    description: str = ""
    missing: list[str] = field(default_factory=list)
    requires: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return {
            "name": self.name, "family": self.family, "sources": list(self.sources),
            "installed": self.installed, "size_mb": self.size_mb, "location": self.location,
            "origin": self.origin, "description": self.description, "missing": list(self.missing),
            "requires": list(self.requires),
        }


def download(url: str, dest: Path, *, sha256: str | None = None, progress: bool = False) -> str:
    """Fetch ``url`` (http(s) or ``file:``) to ``dest``: streamed to ``dest.part``, hashed on
    the way, checked against ``sha256`` when given (the whole digest, or its first characters:
    Demucs names its files by an 8-character prefix), then renamed into place.  Returns the
    sha256.  A failure or a Ctrl-C leaves neither file.  A transfer that fails or a wrong digest
    is ``ModelUnavailable`` naming the URL (the caller adds what to do instead)."""
    import hashlib
    import http.client
    import urllib.request

    from tqdm import tqdm

    part = dest.with_name(dest.name + ".part")
    digest = hashlib.sha256()
    try:
        try:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, open(part, "wb") as out, \
                    tqdm(total=int(response.headers.get("Content-Length") or 0) or None, unit="B", unit_scale=True,
                         desc=dest.name, leave=False, disable=not progress) as bar:
                while chunk := response.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
                    bar.update(len(chunk))
        except (OSError, ValueError, http.client.HTTPException) as err:   # URLError is an OSError
            raise ModelUnavailable(f"download of {url} failed ({err.__class__.__name__}: {err})") from None
        got = digest.hexdigest()
        if sha256 and not got.startswith(sha256.lower()):
            raise ModelUnavailable(f"{url} is not the published file: its sha256 hash is {got[:16]}…, expected "
                                   f"{sha256[:16]}…; nothing was installed")
        os.replace(part, dest)
        return got
    finally:
        part.unlink(missing_ok=True)


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


__all__ = ["ENV_MODEL_DIR", "ENV_OFFLINE", "FileCheck", "InstalledModel", "cache_dir", "download",
           "model_dir", "unreachable", "load_numpy_checkpoint", "read_cached", "sha256", "validate_state", "write_cached"]
