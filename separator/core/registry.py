"""The models the engine knows, which one a job gets by default, and loading them.

A model family is a package under :mod:`separator.core` listed in :data:`FAMILIES`; it
exposes

* ``specs(model_dir=None, *, include_local=False) -> list[ModelSpec]``: its models (cheap:
  no weights; with ``include_local``, also models found only in the local model directory);
* ``installed(model_dir=None) -> set[str]``: the names whose weights are on this machine
  (cheap: file names only);
* ``load(spec, device, **options) -> LoadedModel``: a model ready to run;
* ``listing(model_dir=None) -> list[InstalledModel]``: the rows ``separator models list``
  shows, installed or not;

and, when its weights are downloaded rather than bundled, a ``repo`` module with
``catalogue_names()``, ``pull(name, model_dir, progress=, force=)`` and ``verify(model_dir,
names)`` (see :func:`weight_repos`).

A new family is one new folder plus an entry in :data:`FAMILIES` (and its rows in
:data:`PREFERENCE` if it should ever be a default).  The pipeline only calls
:func:`load_model`, :func:`get_spec`, :func:`list_models`, :func:`installed_models`,
:func:`default_model` and :func:`resolve_device`.

Loaded models are kept per process in a least-recently-used cache of
``$SEPARATOR_MODEL_CACHE`` entries (default :data:`DEFAULT_CACHE_SIZE`; 0 keeps none), so a
long-running worker does not keep every model a client ever asked for: a model that falls
out is freed once the jobs still running it are done.
"""
from __future__ import annotations

import importlib
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from types import ModuleType

import torch

from ..errors import CIError, ModelUnavailable
from . import demucs, roformer, spleeter
from .base import LoadedModel, ModelSpec
from .weights import InstalledModel

log = logging.getLogger(__name__)

Factory = Callable[..., LoadedModel]

#: the model families, in listing order
FAMILIES = (spleeter, demucs, roformer)

DEFAULT_MODEL = spleeter.SPEC.name

#: The one preference table.  Per use, a job that names no model gets the installed model with
#: the best rank in that use's column (1 = best; None: never that use's default).
#: Vocals/background: the strongest installed RoFormer vocal model (the published SDRs put them
#: 3-4 dB above htdemucs_ft), then any other RoFormer model with vocals installed in the model
#: directory (the ``roformer:*`` row), then the strongest Demucs model, else the bundled model
#: (always installed); htdemucs_6s, demucs' experimental 6-source model, comes after every
#: 4-stem one.  MusicMode needs separate bass and drums: an installed RoFormer with those stems,
#: then Demucs, htdemucs_6s after the two htdemucs.  Listing order (:func:`list_models`)
#: follows the rows.
PREFERENCE: tuple[tuple[str, int | None, int | None], ...] = (
    # name                                          vocals/background  MusicMode
    ("model_bs_roformer_ep_317_sdr_12.9755",       1,                 None),
    ("vocals_mel_band_roformer_kj",                2,                 None),
    ("model_mel_band_roformer_ep_3005_sdr_11.4360", 3,                None),
    ("roformer:*",                                 4,                 1),
    ("htdemucs_ft",                                5,                 2),
    ("htdemucs",                                   6,                 3),
    ("htdemucs_6s",                                12,                4),
    ("hdemucs_mmi",                                7,                 5),
    ("mdx_extra",                                  8,                 6),
    ("mdx",                                        9,                 7),
    ("mdx_extra_q",                                10,                8),
    ("mdx_q",                                      11,                9),
    (DEFAULT_MODEL,                                13,                None),
)

ENV_MODEL_CACHE = "SEPARATOR_MODEL_CACHE"
#: loaded models kept per process unless ``$SEPARATOR_MODEL_CACHE`` says otherwise
DEFAULT_CACHE_SIZE = 2

_SPECS: dict[str, ModelSpec] = {}
_FACTORIES: dict[str, Factory] = {}
_LOADED: OrderedDict[tuple, LoadedModel] = OrderedDict()   # least recently used first
_LOCK = threading.Lock()


def register(spec: ModelSpec, factory: Factory) -> None:
    """Make ``spec.name`` loadable (``factory(spec, device, **options)`` builds it)."""
    _SPECS[spec.name] = spec
    _FACTORIES[spec.name] = factory


def _order(use: int) -> list[str]:
    """The names of :data:`PREFERENCE` that ``use`` (1: vocals/background, 2: MusicMode) may
    pick, best first."""
    rows = sorted((row for row in PREFERENCE if row[use] is not None), key=lambda row: row[use])
    return [row[0] for row in rows]


def list_models() -> list[ModelSpec]:
    """Every known model: family by family, each in :data:`PREFERENCE`'s row order, then by name."""
    families = [f.FAMILY for f in FAMILIES]
    rows = {row[0]: i for i, row in enumerate(PREFERENCE)}

    def key(spec: ModelSpec):
        family = families.index(spec.family) if spec.family in families else len(families)
        return family, rows.get(spec.name, len(rows)), spec.name

    return sorted(_SPECS.values(), key=key)


def get_spec(name: str, model_dir: str | None = None) -> ModelSpec:
    """The spec of ``name``: a registered model, a model file a family recognises by its path
    (``path/to/<name>.yaml`` for RoFormer), or one found in a family's local model folder."""
    spec = _SPECS.get(name)
    if spec is not None:
        return spec
    for family in FAMILIES:
        from_path = getattr(family, "spec_for_path", None)
        found = from_path(name) if from_path is not None else None
        if found is not None:
            _SPECS[name] = found
            _FACTORIES[name] = family.load
            return found
    for family in FAMILIES:
        try:
            for local in family.specs(model_dir, include_local=True):
                if local.name == name:
                    register(local, family.load)
                    return local
        except ModelUnavailable:
            pass
    raise CIError("InvalidArgument", f"unknown model {name!r}; known models: "
                  f"{', '.join(s.name for s in list_models())}", resource="Model")


def listings(model_dir: str | None = None) -> list[InstalledModel]:
    """Every model of every family, installed or not (cheap: file names and sizes)."""
    return [row for family in FAMILIES for row in family.listing(model_dir)]


def weight_repos() -> dict[str, ModuleType]:
    """Family name -> its ``repo`` module, for the families whose weights are downloaded."""
    out = {}
    for family in FAMILIES:
        try:
            out[family.FAMILY] = importlib.import_module(".repo", family.__name__)
        except ModuleNotFoundError as err:
            if err.name != f"{family.__name__}.repo":
                raise
    return out


def installed_models(model_dir: str | None = None) -> set[str]:
    """Names of the models whose weights are on this machine (cheap: file names only)."""
    names: set[str] = set()
    for family in FAMILIES:
        try:
            names |= family.installed(model_dir)
        except Exception:  # noqa: BLE001 - an unreadable model dir means "nothing installed"
            pass
    return names


def default_model(mode: str | None = None, model_dir: str | None = None) -> str:
    """The model used when a job names none: the best installed one for ``mode`` (a
    ``family:*`` row of :data:`PREFERENCE` stands for any other installed model of that family
    with the stems the mode needs).

    MusicMode with no 4-stem model installed still returns the best 4-stem name, so that
    loading it fails with a message saying how to install it.
    """
    installed = installed_models(model_dir)
    music = mode == "MusicMode"
    needed = {"vocals", "bass", "drums"} if music else {"vocals"}
    named = {row[0] for row in PREFERENCE}
    for name in _order(2 if music else 1):
        if name.endswith(":*"):
            family = name[:-2]
            for other in sorted(installed - named):
                try:
                    spec = get_spec(other, model_dir)
                except CIError:
                    continue
                if spec.family == family and needed <= set(spec.sources):
                    return other
        elif name in installed and name in _SPECS:
            return name
    order = [n for n in _order(2 if music else 1) if not n.endswith(":*")]
    return order[0] if music else DEFAULT_MODEL


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


def cache_size() -> int:
    """How many loaded models the process keeps: ``$SEPARATOR_MODEL_CACHE`` (an integer >= 0),
    else :data:`DEFAULT_CACHE_SIZE`."""
    value = os.environ.get(ENV_MODEL_CACHE, "").strip()
    if not value:
        return DEFAULT_CACHE_SIZE
    try:
        size = int(value)
        if size < 0:
            raise ValueError(value)
    except ValueError:
        log.warning("%s=%r is not an integer >= 0; keeping %d loaded models", ENV_MODEL_CACHE, value,
                    DEFAULT_CACHE_SIZE)
        return DEFAULT_CACHE_SIZE
    return size


def loaded_models() -> list[tuple]:
    """The cache keys ``(name, device, options)`` of the models kept loaded, least recently used first."""
    with _LOCK:
        return list(_LOADED)


def load_model(name: str = DEFAULT_MODEL, device: str | None = None, **options) -> LoadedModel:
    """The loaded model ``name`` on ``device``: built once per (name, device, options) and kept
    while it is among the :func:`cache_size` most recently used."""
    spec = get_spec(name, options.get("model_dir"))
    dev = resolve_device(device)
    key = (spec.location or name, dev, tuple(sorted(options.items())))
    with _LOCK:
        model = _LOADED.pop(key, None)
        if model is None:
            model = _FACTORIES[name](spec, dev, **options)
        _LOADED[key] = model
        size = cache_size()
        while len(_LOADED) > size:
            evicted, _ = _LOADED.popitem(last=False)
            log.debug("model cache: dropping %s on %s", evicted[0], evicted[1])
    return model


def _register_builtin() -> None:
    for family in FAMILIES:          # the catalogues only: no weights, no network
        for spec in family.specs():
            register(spec, family.load)


_register_builtin()
