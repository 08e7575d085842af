"""The models the engine knows, and loading them (cached per process).

A family registers a :class:`ModelSpec` and a factory ``(spec, device, **options) ->
LoadedModel`` with :func:`register`; the pipeline only calls :func:`load_model`,
:func:`get_spec`, :func:`list_models` and :func:`default_model`.
"""
from __future__ import annotations

import threading
from collections.abc import Callable

import torch

from ..errors import CIError, ModelUnavailable
from .base import LoadedModel, ModelSpec

Factory = Callable[..., LoadedModel]

_SPECS: dict[str, ModelSpec] = {}
_FACTORIES: dict[str, Factory] = {}
_LOADED: dict[tuple, LoadedModel] = {}
_LOCK = threading.Lock()

DEFAULT_MODEL = "spleeter-2stems"


def register(spec: ModelSpec, factory: Factory) -> None:
    """Make ``spec.name`` loadable (``factory(spec, device, **options)`` builds it)."""
    _SPECS[spec.name] = spec
    _FACTORIES[spec.name] = factory


def list_models() -> list[ModelSpec]:
    return list(_SPECS.values())


def get_spec(name: str, model_dir: str | None = None) -> ModelSpec:
    """The spec of ``name``: a registered model, or a bag found in the local Demucs repo."""
    spec = _SPECS.get(name)
    if spec is not None:
        return spec
    try:
        from . import demucs
        for local in demucs.specs(model_dir, include_local=True):
            if local.name == name:
                register(local, _demucs_factory)
                return local
    except ModelUnavailable:
        pass
    raise CIError("InvalidArgument", f"unknown model {name!r}; known models: {', '.join(_SPECS)}",
                  resource="Model")


# Best first.  Vocals/background: the strongest installed Demucs model, else the bundled
# model (always installed).  MusicMode needs separate bass and drums: Demucs only.
PREFERENCE_2STEM = ("htdemucs_ft", "htdemucs", "hdemucs_mmi", "mdx_extra", "mdx", "mdx_extra_q",
                    "mdx_q", "htdemucs_6s", DEFAULT_MODEL)
PREFERENCE_MUSIC = ("htdemucs_ft", "htdemucs", "htdemucs_6s", "hdemucs_mmi", "mdx_extra", "mdx",
                    "mdx_extra_q", "mdx_q")


def installed_models(model_dir: str | None = None) -> set[str]:
    """Names of the models whose weights are on this machine (cheap: file names only)."""
    names = {DEFAULT_MODEL}
    try:
        from .demucs.repo import list_installed
        names |= {m.name for m in list_installed(model_dir) if m.installed}
    except Exception:  # noqa: BLE001 - an unreadable model dir means "nothing installed"
        pass
    return names


def default_model(mode: str | None = None, model_dir: str | None = None) -> str:
    """The model used when a job names none: the best installed one for ``mode``.

    MusicMode with no 4-stem model installed still returns the best 4-stem name, so that
    loading it fails with a message saying how to install it.
    """
    installed = installed_models(model_dir)
    order = PREFERENCE_MUSIC if mode == "MusicMode" else PREFERENCE_2STEM
    for name in order:
        if name in installed and name in _SPECS:
            return name
    return order[0] if mode == "MusicMode" else DEFAULT_MODEL


def resolve_device(device: str | None) -> str:
    """None -> 'cuda' when available, else 'cpu'.  A CUDA device without CUDA is an error."""
    if device is None or device == "":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise CIError("InvalidArgument", f"device {device!r} is not cpu, cuda or cuda:N",
                      resource="device") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelUnavailable(f"device {device!r} was requested but CUDA is not available")
    return str(dev)


def load_model(name: str = DEFAULT_MODEL, device: str | None = None, **options) -> LoadedModel:
    """The loaded model ``name`` on ``device``; built once per (name, device, options) per process."""
    spec = get_spec(name, options.get("model_dir"))
    dev = resolve_device(device)
    key = (name, dev, tuple(sorted(options.items())))
    with _LOCK:
        model = _LOADED.get(key)
        if model is None:
            model = _FACTORIES[name](spec, dev, **options)
            _LOADED[key] = model
    return model


def clear_cache() -> None:
    """Forget loaded models (tests, or to free memory)."""
    with _LOCK:
        _LOADED.clear()


def _spleeter_factory(spec: ModelSpec, device: str, **options) -> LoadedModel:
    from . import spleeter  # imported lazily: listing models loads no weights
    return spleeter.load(spec, device, **options)


def _demucs_factory(spec: ModelSpec, device: str, **options) -> LoadedModel:
    from . import demucs
    return demucs.load(spec, device, **options)


def _register_builtin() -> None:
    from .spleeter import SPEC as SPLEETER_SPEC
    register(SPLEETER_SPEC, _spleeter_factory)
    from . import demucs  # the catalogue only: no weights, no network
    for spec in demucs.specs():
        register(spec, _demucs_factory)


_register_builtin()
