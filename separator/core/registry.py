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


def get_spec(name: str) -> ModelSpec:
    try:
        return _SPECS[name]
    except KeyError:
        raise CIError("InvalidArgument", f"unknown model {name!r}; known models: {', '.join(_SPECS)}") from None


def default_model(mode: str | None = None) -> str:
    """The model used when a job names none: a 4-stem model for MusicMode if one is registered."""
    if mode == "MusicMode":
        for spec in _SPECS.values():
            if {"vocals", "bass", "drums"} <= set(spec.sources):
                return spec.name
    return DEFAULT_MODEL


def resolve_device(device: str | None) -> str:
    """None -> 'cuda' when available, else 'cpu'.  A CUDA device without CUDA is an error."""
    if device is None or device == "":
        return "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)  # raises on nonsense
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelUnavailable(f"device {device!r} was requested but CUDA is not available")
    return str(dev)


def load_model(name: str = DEFAULT_MODEL, device: str | None = None, **options) -> LoadedModel:
    """The loaded model ``name`` on ``device``; built once per (name, device, options) per process."""
    spec = get_spec(name)
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


def _register_builtin() -> None:
    from .spleeter import SPEC as SPLEETER_SPEC
    register(SPLEETER_SPEC, _spleeter_factory)


_register_builtin()
