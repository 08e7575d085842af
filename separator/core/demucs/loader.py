"""Demucs weights from a local repo to a model: safe unpickling, building, bags, headers.

Weights are loaded from a demucs local repo (see :mod:`.repo`) with torch's *weights-only*
unpickler and an allow-list of the demucs model classes, after checking the sha256 prefix
every file carries in its name; a file that cannot be read is a
:class:`~separator.errors.ModelUnavailable`, never a raw exception.  This is
``demucs.pretrained.get_model(name, repo=...)`` (``demucs.repo`` + ``demucs.states``)
with safe unpickling.
"""
from __future__ import annotations

import importlib.util
import inspect
import logging
import os
import warnings
from fractions import Fraction
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

from separator.errors import ModelUnavailable

from . import repo as model_repo
from .catalogue import CatalogueModel, demucs_catalogue

log = logging.getLogger(__name__)


def _model_classes() -> list:
    from demucs.demucs import Demucs
    from demucs.hdemucs import HDemucs
    from demucs.htdemucs import HTDemucs
    return [Demucs, HDemucs, HTDemucs]


def read_package(path: Path, trusted: bool, *, mmap: bool = False) -> dict:
    """torch.load with the weights-only unpickler (demucs classes + Fraction allowed).
    ``trusted`` (a catalogue file whose checksum matched) may fall back to demucs's own
    full unpickling if it needs a global outside the allow-list.  ``mmap``: tensors are
    mapped, not read (for a look at the header)."""
    import pickle
    try:
        with torch.serialization.safe_globals([*_model_classes(), Fraction]):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc) and trusted:
            log.warning("%s needs globals outside the allow-list; loading it with demucs's "
                        "loader (checksum verified against the catalogue)", path.name)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return torch.load(path, map_location="cpu", weights_only=False)
        raise


#: torch.nn.init's random fills: the constructors call them, then the checkpoint overwrites
#: every parameter (demucs.states.load_model loads the state strictly).
_RANDOM_INITS = ("uniform_", "normal_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_",
                 "xavier_uniform_", "xavier_normal_", "orthogonal_", "sparse_")
#: the Tensor methods those fills (and code that fills by hand) end in
_RANDOM_FILLS = ("uniform_", "normal_")


class _ZeroInit(TorchFunctionMode):
    """While active, in the thread that entered it only, the random fills of
    :data:`_RANDOM_INITS` and :data:`_RANDOM_FILLS` fill with zeros instead; every other
    torch function runs unchanged.  Building a model does not need random parameters that
    the checkpoint overwrites right after, and the random fills of a full-size HTDemucs are
    most of its construction time.  A torch function mode is thread-local: nothing
    process-wide changes, and a model built on another thread meanwhile is not affected."""

    def __init__(self) -> None:
        super().__init__()
        init = torch.nn.init
        self._fills = frozenset([*(getattr(init, n) for n in _RANDOM_INITS if hasattr(init, n)),
                                 *(getattr(torch.Tensor, n) for n in _RANDOM_FILLS)])

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self._fills:
            tensor = args[0] if args else kwargs["tensor"]
            with torch.no_grad():
                return tensor.zero_()
        return func(*args, **kwargs)


def _load_single(sig: str, files: dict[str, Path], trusted_files: dict[str, str]) -> torch.nn.Module:
    """One model: checksum check (as demucs.repo.LocalRepo), safe load, demucs.states.load_model."""
    from demucs.states import load_model
    path = files.get(sig)
    if path is None:
        raise ModelUnavailable(f"weights for signature {sig!r} not found")
    chk = model_repo.check_file(path, trusted_files.get(path.name))
    if not chk.ok:
        raise ModelUnavailable(
            f"weight file {path} is {chk.status} ({chk.detail}); it is never used as is: delete it and "
            f"copy it again or run `separator models pull`")
    trusted = path.name in trusted_files and chk.status == "ok"
    try:
        pkg = read_package(path, trusted)
    except ModelUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated zip, refused global, bad pickle...
        raise ModelUnavailable(f"cannot read weight file {path}: {exc.__class__.__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    if not isinstance(pkg, dict) or not {"klass", "args", "kwargs", "state"} <= set(pkg):
        raise ModelUnavailable(f"{path} is not a demucs model package (klass/args/kwargs/state)")
    try:
        with warnings.catch_warnings(), _ZeroInit():
            warnings.simplefilter("ignore")
            model = load_model(pkg)
    except SystemExit:  # demucs.states._check_diffq calls sys.exit when diffq is missing
        raise ModelUnavailable(f"{path.name} is a DiffQ-quantized model: install the `diffq` package") from None
    except ImportError as exc:
        raise ModelUnavailable(f"{path.name} needs a missing package ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - state/shape mismatch etc.
        raise ModelUnavailable(f"cannot build the model in {path}: {exc.__class__.__name__}: {exc}") from None
    return model


def scan_repo(repo: Path) -> dict[str, Path]:
    """sig -> file, as demucs.repo.LocalRepo.scan (duplicate signatures are an error)."""
    files: dict[str, Path] = {}
    if not repo.is_dir():
        return files
    for p in sorted(repo.iterdir()):
        if p.suffix == ".th":
            sig = model_repo.split_name(p)[0]
            if sig in files:
                raise ModelUnavailable(f"two weight files for signature {sig} in {repo}: "
                                       f"{files[sig].name} and {p.name}; delete all but one")
            files[sig] = p
    return files


def read_bag(yml: Path) -> tuple[dict, list[str]]:
    """A bag file: its content and its models' signatures (``ModelUnavailable`` when unreadable)."""
    import yaml
    try:
        bag = yaml.safe_load(yml.read_text())
        return bag, [str(s) for s in bag["models"]]
    except Exception as exc:  # noqa: BLE001
        raise ModelUnavailable(f"bad bag file {yml}: {exc}") from None


def load_bag(name: str, repo: Path, entry: CatalogueModel | None):
    """``name`` -> BagOfModels (or a single model for a bare signature), as
    demucs.pretrained.get_model(name, repo=repo) does, but with safe unpickling."""
    from demucs.apply import BagOfModels
    files = scan_repo(repo)
    trusted = {f.file: f.checksum for e in demucs_catalogue().values() for f in e.files}
    if name in files:
        model = _load_single(name, files, trusted)
        model.eval()
        return model
    yml = repo / f"{name}.yaml"
    if not yml.is_file():
        raise ModelUnavailable(f"{name!r} is neither a weight signature nor a bag (.yaml) in {repo}")
    bag, sigs = read_bag(yml)
    if entry is not None and (tuple(sigs) != entry.bag_models):
        raise ModelUnavailable(f"{yml} does not match the catalogue's composition of {name} "
                               f"({sigs} != {list(entry.bag_models)}); delete it to have it rewritten")
    models = [_load_single(s, files, trusted) for s in sigs]
    try:
        out = BagOfModels(models, bag.get("weights"), bag.get("segment"))
    except AssertionError:
        raise ModelUnavailable(f"bag {yml}: models disagree on sources / rate / channels, "
                               f"or weights have the wrong shape") from None
    out.eval()
    return out


def _diffq_missing(entry: CatalogueModel | None) -> bool:
    return entry is not None and "diffq" in entry.requires and importlib.util.find_spec("diffq") is None


def resolve_repo(name: str, model_dir: str | os.PathLike | None = None, *,
                 allow_download: bool = True) -> tuple[Path, CatalogueModel | None]:
    """Make sure ``name``'s files are in the local repo (downloading them if allowed and
    online); returns (repo, catalogue entry or None for a local-only model)."""
    repo = model_repo.demucs_repo(model_dir)
    entry = demucs_catalogue().get(name)
    if entry is None:
        if (repo / f"{name}.yaml").is_file() or any(model_repo.split_name(p)[0] == name
                                                     for p in repo.glob("*.th")):
            return repo, None
        raise ModelUnavailable(f"unknown Demucs model {name!r}: not in the catalogue "
                               f"({', '.join(sorted(demucs_catalogue()))}) nor in {repo}")
    if _diffq_missing(entry):
        raise ModelUnavailable(f"{name} is a DiffQ-quantized model and needs the `diffq` package "
                               f"(pip install diffq); or use {name.replace('_q', '')} instead")
    missing = [f for f in entry.files if not (repo / f.file).is_file()]
    if missing:
        if not allow_download:
            raise ModelUnavailable(f"Demucs model {name!r} is not installed in {repo}: "
                                   + model_repo.copy_instructions(entry, repo, missing))
        model_repo.pull(name, model_dir)          # fails fast offline, with instructions
    elif not (repo / entry.bag_file).is_file():
        try:
            model_repo.write_bag_yaml(entry, repo)
        except OSError as exc:
            raise ModelUnavailable(f"{repo / entry.bag_file} is missing and cannot be written ({exc}); "
                                   f"copy demucs/remote/{entry.bag_file} there") from None
    return repo, entry


# --------------------------------------------------------------------------- headers

def _package_meta(path: Path) -> tuple[tuple[str, ...], int, int] | None:
    """(sources, samplerate, audio_channels) from a weight file's class and constructor
    arguments, without reading its tensors (memory-mapped, safe unpickler); None when the file
    does not say (an old non-zip file, an unknown layout)."""
    try:
        pkg = read_package(path, trusted=False, mmap=True)
        bound = inspect.signature(pkg["klass"]).bind_partial(*pkg["args"], **pkg["kwargs"])
        bound.apply_defaults()
        a = bound.arguments
        return tuple(str(x) for x in a["sources"]), int(a["samplerate"]), int(a["audio_channels"])
    except Exception:  # noqa: BLE001 - any doubt: the caller builds the model instead
        return None


def local_meta(name: str, repo: Path) -> tuple[tuple[str, ...], int, int]:
    """A local model's (sources, samplerate, audio_channels), for listing it: read from its
    (first) weight file's header, or by loading it when the header does not say."""
    files = scan_repo(repo)
    sig = name
    if name not in files:
        try:
            sig = read_bag(repo / f"{name}.yaml")[1][0]
        except (ModelUnavailable, IndexError):   # a bad bag: loading it says what is wrong
            sig = ""
    meta = _package_meta(files[sig]) if sig in files else None
    if meta is None:
        bag = load_bag(name, repo, entry=None)
        meta = (tuple(bag.sources), int(bag.samplerate), int(bag.audio_channels))
    return meta


__all__ = ["load_bag", "local_meta", "read_bag", "read_package", "resolve_repo", "scan_repo"]
