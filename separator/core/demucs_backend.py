"""Demucs (v2/v3/v4, single models and bags) through the streaming pipeline.

This is ``demucs.api.Separator.separate_tensor`` + ``demucs.apply.apply_model``
re-expressed as a stream, so the result equals what ``python -m demucs.separate``
writes (``--clip-mode none --float32``) to float rounding, while memory is bounded
by a few segments whatever the input length:

* **Normalisation.** Demucs normalises the whole track by the mean / std of its mono
  mix (``ref = wav.mean(0); (wav - ref.mean()) / (ref.std() + 1e-8)``) and undoes it on
  the output.  A stream cannot know these before its end, so :meth:`DemucsModel.separate_stream`
  gets them (a) from ``stats=`` (compute them with :func:`mix_stats` during a cheap first
  decode pass), else (b) by iterating ``blocks`` twice when it is re-iterable (a list,
  or an object whose ``__iter__`` decodes again), else (c) by spooling the one-shot
  stream to a temporary raw float32 file (disk = input size, memory still bounded).
* **Chunking** exactly as ``apply_model(split=True)``: chunks of ``segment`` seconds
  every ``stride = int((1 - overlap) * segment_length)`` samples; each chunk is padded
  to the model's valid length by taking *neighbouring samples* centred on the chunk
  (zeros only outside the track), run, centre-trimmed, weighted by the triangular window
  ``(w / max w) ** transition_power`` and overlap-added, then divided by the sum of weights.
  Output up to the next chunk's offset is final after each chunk and is yielded at once.
* **Shifts** (the shift trick): per (sub-model, shift) an independent chunk stream of
  ``zeros(max_shift - offset) + mix``, averaged.  Offsets come from :mod:`random` (or
  ``random.Random(seed)``); for one model and ``shifts=1`` they are drawn as demucs
  draws them, so ``random.seed(s)`` reproduces demucs exactly.  Beyond that, demucs'
  draws interleave with the transformer's own ``random`` calls inside each forward,
  which a stream running all passes side by side cannot replay: same distribution,
  not the same numbers.
* **Bags**: every sub-model runs its own stream (its own segment), outputs are
  weighted per source by the bag's ``weights`` and divided by their per-source sums.

Weights are loaded from a demucs local repo (see :mod:`separator.core.model_store`)
with torch's *weights-only* unpickler and an allow-list of the demucs model classes,
after checking the sha256 prefix every file carries in its name; a file that cannot be
read is a :class:`~separator.errors.ModelUnavailable`, never a raw exception.
"""
from __future__ import annotations

import contextlib
import importlib.util
import inspect
import logging
import math
import os
import random
import tempfile
import threading
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from separator.errors import ModelUnavailable, invalid_argument

from . import demucs_speed, model_store
from .base import LoadedModel, ModelSpec
from .catalogue import CatalogueModel, demucs_catalogue
from .oom import OomFallback, module_copy
from .transfer import to_device, to_host

log = logging.getLogger(__name__)

SPOOL_BLOCK = 1 << 16     # frames per block read back from the spool file
#: listing order (registry.default_model picks the first 4-stem model: htdemucs, demucs' default)
PREFERRED_ORDER = ("htdemucs", "htdemucs_ft", "htdemucs_6s", "hdemucs_mmi", "mdx_extra", "mdx",
                   "mdx_extra_q", "mdx_q")


# =========================================================================== specs

def _spec_for(entry: CatalogueModel) -> ModelSpec:
    files = ", ".join(f.file for f in entry.files)
    return ModelSpec(
        name=entry.name, family="demucs", sources=tuple(entry.sources),
        samplerate=entry.samplerate, audio_channels=entry.audio_channels,
        description=entry.description,
        weights=f"demucs repo <model_dir>/demucs: {files} + {entry.bag_file} ({entry.files[0].url.rsplit('/', 2)[0]}/)",
    )


def demucs_specs(model_dir: str | os.PathLike | None = None, *, include_local: bool = False) -> list[ModelSpec]:
    """A :class:`ModelSpec` for every Demucs model of the catalogue (cheap: loads no
    weights).  With ``include_local``, extra bags found in the local repo are added
    (their sources are read from the first weight file's header, see :func:`_local_meta`)."""
    cat = demucs_catalogue()
    order = {n: i for i, n in enumerate(PREFERRED_ORDER)}
    specs = [_spec_for(e) for e in sorted(cat.values(), key=lambda e: (order.get(e.name, len(order)), e.name))]
    if include_local:
        repo = model_store.demucs_repo(model_dir)
        for info in model_store.list_installed(model_dir):
            if info.origin != "local" or not info.installed:
                continue
            try:
                sources, samplerate, channels = _local_meta(info.name, repo)
            except ModelUnavailable:
                continue
            specs.append(ModelSpec(info.name, "demucs", sources, samplerate, channels,
                                   info.description, f"demucs repo {repo}"))
    return specs


def _package_meta(path: Path) -> tuple[tuple[str, ...], int, int] | None:
    """(sources, samplerate, audio_channels) from a weight file's class and constructor
    arguments, without reading its tensors (memory-mapped, safe unpickler); None when the file
    does not say (an old non-zip file, an unknown layout)."""
    try:
        pkg = _read_package(path, trusted=False, mmap=True)
        bound = inspect.signature(pkg["klass"]).bind_partial(*pkg["args"], **pkg["kwargs"])
        bound.apply_defaults()
        a = bound.arguments
        return tuple(str(x) for x in a["sources"]), int(a["samplerate"]), int(a["audio_channels"])
    except Exception:  # noqa: BLE001 - any doubt: the caller builds the model instead
        return None


def _local_meta(name: str, repo: Path) -> tuple[tuple[str, ...], int, int]:
    """A local model's (sources, samplerate, audio_channels), for listing it: read from its
    (first) weight file's header, or by loading it when the header does not say."""
    files = _scan_repo(repo)
    sig = name
    if name not in files:
        try:
            sig = _read_bag(repo / f"{name}.yaml")[1][0]
        except (ModelUnavailable, IndexError):   # a bad bag: loading it says what is wrong
            sig = ""
    meta = _package_meta(files[sig]) if sig in files else None
    if meta is None:
        bag = _load_bag(name, repo, entry=None)
        meta = (tuple(bag.sources), int(bag.samplerate), int(bag.audio_channels))
    return meta


# =========================================================================== loading

def _model_classes() -> list:
    from demucs.demucs import Demucs
    from demucs.hdemucs import HDemucs
    from demucs.htdemucs import HTDemucs
    return [Demucs, HDemucs, HTDemucs]


def _read_package(path: Path, trusted: bool, *, mmap: bool = False) -> dict:
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


_INIT_LOCK = threading.Lock()
#: torch.nn.init's random fills: the constructors call them, then the checkpoint overwrites
#: every parameter (demucs.states.load_model loads the state strictly).
_RANDOM_INITS = ("uniform_", "normal_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_",
                 "xavier_uniform_", "xavier_normal_", "orthogonal_", "sparse_")


def _zero_fill(tensor: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return tensor.zero_()


@contextlib.contextmanager
def _zero_init():
    """Build modules with zero-filled instead of random parameters (the random fills of a
    full-size HTDemucs take ~0.2 s and are overwritten by the checkpoint right after).  Patches
    :mod:`torch.nn.init` for the duration, under a lock (model loads are serialised anyway)."""
    init = torch.nn.init
    with _INIT_LOCK:
        saved = {n: getattr(init, n) for n in _RANDOM_INITS if hasattr(init, n)}
        try:
            for n in saved:
                setattr(init, n, _zero_fill)
            yield
        finally:
            for n, f in saved.items():
                setattr(init, n, f)


def _load_single(sig: str, files: dict[str, Path], trusted_files: dict[str, str]) -> torch.nn.Module:
    """One model: checksum check (as demucs.repo.LocalRepo), safe load, demucs.states.load_model."""
    from demucs.states import load_model
    path = files.get(sig)
    if path is None:
        raise ModelUnavailable(f"weights for signature {sig!r} not found")
    chk = model_store.check_file(path, trusted_files.get(path.name))
    if not chk.ok:
        raise ModelUnavailable(
            f"weight file {path} is {chk.status} ({chk.detail}); it is never used as is: delete it and "
            f"copy it again or run `separator models pull`")
    trusted = path.name in trusted_files and chk.status == "ok"
    try:
        pkg = _read_package(path, trusted)
    except ModelUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - truncated zip, refused global, bad pickle...
        raise ModelUnavailable(f"cannot read weight file {path}: {exc.__class__.__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    if not isinstance(pkg, dict) or not {"klass", "args", "kwargs", "state"} <= set(pkg):
        raise ModelUnavailable(f"{path} is not a demucs model package (klass/args/kwargs/state)")
    try:
        with warnings.catch_warnings(), _zero_init():
            warnings.simplefilter("ignore")
            model = load_model(pkg)
    except SystemExit:  # demucs.states._check_diffq calls sys.exit when diffq is missing
        raise ModelUnavailable(f"{path.name} is a DiffQ-quantized model: install the `diffq` package") from None
    except ImportError as exc:
        raise ModelUnavailable(f"{path.name} needs a missing package ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - state/shape mismatch etc.
        raise ModelUnavailable(f"cannot build the model in {path}: {exc.__class__.__name__}: {exc}") from None
    return model


def _scan_repo(repo: Path) -> dict[str, Path]:
    """sig -> file, as demucs.repo.LocalRepo.scan (duplicate signatures are an error)."""
    files: dict[str, Path] = {}
    if not repo.is_dir():
        return files
    for p in sorted(repo.iterdir()):
        if p.suffix == ".th":
            sig = model_store.split_name(p)[0]
            if sig in files:
                raise ModelUnavailable(f"two weight files for signature {sig} in {repo}: "
                                       f"{files[sig].name} and {p.name}; delete all but one")
            files[sig] = p
    return files


def _read_bag(yml: Path) -> tuple[dict, list[str]]:
    """A bag file: its content and its models' signatures (``ModelUnavailable`` when unreadable)."""
    import yaml
    try:
        bag = yaml.safe_load(yml.read_text())
        return bag, [str(s) for s in bag["models"]]
    except Exception as exc:  # noqa: BLE001
        raise ModelUnavailable(f"bad bag file {yml}: {exc}") from None


def _load_bag(name: str, repo: Path, entry: CatalogueModel | None):
    """``name`` -> BagOfModels (or a single model for a bare signature), as
    demucs.pretrained.get_model(name, repo=repo) does, but with safe unpickling."""
    from demucs.apply import BagOfModels
    files = _scan_repo(repo)
    trusted = {f.file: f.checksum for e in demucs_catalogue().values() for f in e.files}
    if name in files:
        model = _load_single(name, files, trusted)
        model.eval()
        return model
    yml = repo / f"{name}.yaml"
    if not yml.is_file():
        raise ModelUnavailable(f"{name!r} is neither a weight signature nor a bag (.yaml) in {repo}")
    bag, sigs = _read_bag(yml)
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
    repo = model_store.demucs_repo(model_dir)
    entry = demucs_catalogue().get(name)
    if entry is None:
        if (repo / f"{name}.yaml").is_file() or any(model_store.split_name(p)[0] == name
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
                                   + model_store.copy_instructions(entry, repo, missing))
        model_store.pull(name, model_dir)          # fails fast offline, with instructions
    elif not (repo / entry.bag_file).is_file():
        try:
            model_store.write_bag_yaml(entry, repo)
        except OSError as exc:
            raise ModelUnavailable(f"{repo / entry.bag_file} is missing and cannot be written ({exc}); "
                                   f"copy demucs/remote/{entry.bag_file} there") from None
    return repo, entry


# =========================================================================== streaming core

@dataclass(frozen=True)
class MixStats:
    """Mean and std of the mono mix (``wav.mean(0)``), as demucs.api normalises with."""
    mean: float
    std: float
    frames: int


class _StatsAcc:
    """Chan's parallel mean / M2 in float64 over the float32 mono mix."""

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0

    def add(self, x: torch.Tensor) -> None:           # x: (C, n) float32
        if x.shape[-1] == 0:
            return
        ref = x.mean(0).double()
        nb = ref.numel()
        mb = float(ref.mean())
        m2b = float(((ref - mb) ** 2).sum())
        n = self.n + nb
        delta = mb - self.mean
        self.mean += delta * nb / n
        self.m2 += m2b + delta * delta * self.n * nb / n
        self.n = n

    def result(self) -> MixStats:
        std = math.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else 0.0
        return MixStats(self.mean, std, self.n)


def _to_model_channels(block: np.ndarray, channels: int) -> torch.Tensor:
    """(frames, c) array -> (channels, frames) float32 tensor, as demucs.audio.convert_audio_channels."""
    arr = np.asarray(block, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"expected (frames, channels) audio blocks, got shape {arr.shape}")
    x = torch.from_numpy(np.ascontiguousarray(arr.T))
    src = x.shape[0]
    if src == channels:
        return x
    if channels == 1:
        return x.mean(dim=0, keepdim=True)
    if src == 1:
        return x.expand(channels, -1).contiguous()
    if src > channels:
        return x[:channels].contiguous()
    raise ValueError(f"cannot map {src}-channel audio to {channels} channels")


def mix_stats(blocks: Iterable[np.ndarray], channels: int = 2) -> MixStats:
    """The normalisation statistics demucs would compute on the whole track (first pass)."""
    acc = _StatsAcc()
    for b in blocks:
        acc.add(_to_model_channels(b, channels))
    return acc.result()


class _Spool:
    """A one-shot stream written to a temporary raw float32 file while its stats are computed."""

    def __init__(self, blocks: Iterable[np.ndarray], channels: int) -> None:
        self.channels = channels
        self.fh = tempfile.TemporaryFile(prefix="separator-demucs-", suffix=".f32")
        acc = _StatsAcc()
        for b in blocks:
            x = _to_model_channels(b, channels)
            acc.add(x)
            self.fh.write(x.T.contiguous().numpy().tobytes())
        self.stats = acc.result()

    def __iter__(self) -> Iterator[np.ndarray]:
        self.fh.seek(0)
        frame_bytes = 4 * self.channels
        while True:
            buf = self.fh.read(SPOOL_BLOCK * frame_bytes)
            if not buf:
                break
            yield np.frombuffer(buf, dtype=np.float32).reshape(-1, self.channels)

    def close(self) -> None:
        self.fh.close()


#: each sub-model's out-of-memory fall-back chain (smaller batches, then a CPU copy), shared
#: by all the streams and shifts that run it; set up by DemucsModel
_OOM: weakref.WeakKeyDictionary[torch.nn.Module, OomFallback[torch.nn.Module]] = weakref.WeakKeyDictionary()


def _cpu_model(model: torch.nn.Module) -> torch.nn.Module:
    return module_copy(model, "cpu", torch.float32)


def _track_oom(model: torch.nn.Module, device: torch.device, batch: int, name: str) -> OomFallback[torch.nn.Module]:
    fallback = _OOM[model] = OomFallback(device, batch=batch, cpu_copy=_cpu_model, name=name)
    return fallback


#: chunks per forward pass on a GPU unless ``batch`` says otherwise (1 on a CPU): on an H200,
#: 60 s of HTDemucs took 0.46 s one chunk at a time, 0.33 s eight at a time (2.8 GB peak)
CUDA_BATCH = 8

#: ``precision`` -> autocast dtype of the forward passes (None: plain float32)
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def _autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed precision for one forward pass on ``device``: convolutions, linear layers and
    attention in ``dtype``; autocast keeps the norms, softmax and the STFT / iSTFT in float32
    (HTDemucs de-normalises in float32 before its masks, so the complex spectrograms stay
    complex64).  A plain context for float32 (and for the float32 CPU copy of the
    out-of-memory fall-back)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


class _Unit:
    """One (sub-model, shift) pass of apply_model(split=True) over a stream.

    Timeline: ``prefix`` zeros then the (normalised) mix; chunk ``k`` starts at
    ``k * stride``.  Output of this timeline minus its first ``prefix`` samples goes to
    ``self.out`` (a FIFO of (S, C, n) tensors)."""

    def __init__(self, model, *, segment: float | None, overlap: float, transition_power: float,
                 prefix: int, channels: int, device: torch.device, dtype: torch.dtype | None = None) -> None:
        from demucs.htdemucs import HTDemucs
        self.model = model
        self.device = device
        self.dtype = dtype
        self.channels = channels
        self.nsrc = len(model.sources)
        seg = segment if segment is not None else model.segment
        self.seg = int(model.samplerate * seg)
        self.stride = int((1 - overlap) * self.seg)
        if self.seg <= 0 or self.stride <= 0:
            raise invalid_argument(f"segment/overlap give an empty chunk or stride "
                                   f"(segment {self.seg} samples, stride {self.stride})")
        w = torch.cat([torch.arange(1, self.seg // 2 + 1), torch.arange(self.seg - self.seg // 2, 0, -1)])
        self.weight = (w / w.max()) ** transition_power
        if isinstance(model, HTDemucs) and segment is not None:
            fixed = int(segment * model.samplerate)
            self.vlen = lambda n: fixed
        elif hasattr(model, "valid_length"):
            self.vlen = model.valid_length
        else:
            self.vlen = lambda n: n
        vfull = self.vlen(self.seg)
        self.right_ctx = (vfull - self.seg) - (vfull - self.seg) // 2
        self.keep = max(vfull, self.seg)                 # history kept before next_off
        # input
        self.pending: list[torch.Tensor] = []
        self.buf = torch.zeros(channels, 0)
        self.buf_start = 0
        self.avail = 0
        self.total: int | None = None
        self.next_off = 0
        # output
        self.acc = torch.zeros(self.nsrc, channels, 0)
        self.wsum = torch.zeros(0)
        self.acc_start = 0
        self.trim = prefix
        self.out: list[torch.Tensor] = []
        self.out_n = 0
        if prefix:
            self.feed(torch.zeros(channels, prefix))

    # ---- input side
    def feed(self, x: torch.Tensor) -> None:
        if x.shape[-1]:
            self.pending.append(x)
            self.avail += x.shape[-1]

    def finish(self) -> None:
        self.total = self.avail

    def _window(self, start: int, end: int) -> torch.Tensor:
        if self.pending:
            self.buf = torch.cat([self.buf, *self.pending], dim=-1)
            self.pending = []
        limit = self.total if self.total is not None else self.avail
        lo, hi = max(start, 0), min(end, limit)
        assert lo >= self.buf_start or lo >= hi, "history trimmed too early"
        if hi <= lo:
            return torch.zeros(self.channels, end - start)
        part = self.buf[:, lo - self.buf_start: hi - self.buf_start]
        if lo - start or end - hi:
            part = torch.nn.functional.pad(part, (lo - start, end - hi))
        return part

    def ready(self) -> list[tuple["_Unit", int, int, torch.Tensor]]:
        """Chunks computable now: (unit, offset, length, padded input window)."""
        tasks = []
        while True:
            o = self.next_off
            if self.total is not None:
                if o >= self.total:
                    break
                n = min(self.total - o, self.seg)
            elif self.avail >= o + self.seg + self.right_ctx:
                n = self.seg
            else:
                break
            target = self.vlen(n)
            start = o - (target - n) // 2
            tasks.append((self, o, n, self._window(start, start + target)))
            self.next_off += self.stride
        drop = self.next_off - self.keep - self.buf_start
        if drop > 0 and self.buf.shape[-1]:
            drop = min(drop, self.buf.shape[-1])
            self.buf = self.buf[:, drop:].clone()
            self.buf_start += drop
        return tasks

    # ---- compute
    def forward(self, window: torch.Tensor, n: int) -> torch.Tensor:
        return self.forward_batch([window], [n])[0]

    def forward_batch(self, windows: list[torch.Tensor], ns: list[int]) -> list[torch.Tensor]:
        """Several equally long windows of this unit in one forward pass (split into smaller
        ones, or run on a CPU copy of the model, when out of memory: see :mod:`.oom`)."""
        from demucs.utils import center_trim
        x = torch.stack(windows)
        done: dict[int, torch.Tensor] = {}

        def step(model: torch.nn.Module, device: torch.device, lo: int, hi: int) -> None:
            with torch.inference_mode(), _autocast(device, self.dtype if model is self.model else None):
                out = model(to_device(x[lo:hi], device))
                if len(set(ns[lo:hi])) == 1:            # trimmed on the device: less to copy
                    out = center_trim(out, ns[lo])
                out = to_host(out.float())
            done.update((lo + i, center_trim(out[i:i + 1], ns[lo + i])[0]) for i in range(hi - lo))

        fallback = _OOM.get(self.model) or _track_oom(self.model, self.device, len(windows),
                                                      type(self.model).__name__)
        fallback.run(self.model, len(windows), step)
        return [done[i] for i in range(len(windows))]

    # ---- output side
    def consume(self, o: int, n: int, chunk_out: torch.Tensor) -> None:
        end = o + n
        have = self.acc_start + self.acc.shape[-1]
        if end > have:
            self.acc = torch.cat([self.acc, torch.zeros(self.nsrc, self.channels, end - have)], -1)
            self.wsum = torch.cat([self.wsum, torch.zeros(end - have)])
        rel = o - self.acc_start
        w = self.weight[:n]
        self.acc[..., rel:rel + n] += w * chunk_out
        self.wsum[rel:rel + n] += w
        if self.total is not None and o + self.stride >= self.total:
            final = self.total
        else:
            final = o + self.stride
        k = final - self.acc_start
        if k > 0:
            done = self.acc[..., :k] / self.wsum[:k]
            self.acc = self.acc[..., k:].clone()
            self.wsum = self.wsum[k:].clone()
            self.acc_start = final
            if self.trim:
                cut = min(self.trim, done.shape[-1])
                done = done[..., cut:]
                self.trim -= cut
            if done.shape[-1]:
                self.out.append(done)
                self.out_n += done.shape[-1]

    def pop(self, n: int) -> torch.Tensor:
        parts, got = [], 0
        while got < n:
            head = self.out[0]
            take = min(n - got, head.shape[-1])
            parts.append(head[..., :take])
            if take == head.shape[-1]:
                self.out.pop(0)
            else:
                self.out[0] = head[..., take:]
            got += take
        self.out_n -= n
        return parts[0] if len(parts) == 1 else torch.cat(parts, -1)


class DemucsModel(LoadedModel):
    """A loaded Demucs model or bag, separating streams like ``demucs.separate``.

    Knobs (fixed at load time, part of the registry's cache key):

    * ``shifts`` (default 0): runs the whole separation ``shifts`` times on randomly
      shifted input (0..0.5 s) and averages: ``shifts`` x the compute, + ~0.2 dB SDR.
    * ``overlap`` (default 0.25): fraction of each segment shared with the next;
      compute grows as ``1 / (1 - overlap)`` (0.25 -> 1.33x, 0.5 -> 2x).
    * ``segment`` (seconds, default: the model's / bag's own): shorter lowers peak
      memory, costs more chunks (more overlap overhead) and context; HTDemucs models
      cannot go above their training segment (7.8 s): InvalidArgument.
    * ``jobs`` (default 1): chunks computed concurrently in a thread pool (demucs'
      ``-j``); each in-flight chunk adds its activations (~0.3-1 GB for htdemucs) to peak
      memory.  Intra-op threads are torch's process-wide setting (``torch.set_num_threads``).
    * ``batch`` (default 1 on a CPU, :data:`CUDA_BATCH` on a GPU): chunks stacked into one
      forward pass.  On a GPU this keeps the device busy; on a 2-core CPU it buys nothing for HTDemucs (two windows: 2.76 s batched
      vs 2.73 s one by one, with the malloc settings of :mod:`.allocator`; without them
      batching was slower from page faults) and adds ~400 MB of peak memory.  Results equal
      unbatched ones to float rounding.  Out of memory, a batch is split (see :mod:`.oom`).
    * ``precision`` (default fp32): ``fp16`` (CUDA only) or ``bf16`` run the forward passes
      under autocast (see :func:`_autocast`); inputs go to a GPU through pinned memory.
    """

    def __init__(self, spec: ModelSpec, device: str, bag, *, shifts: int = 0, overlap: float = 0.25,
                 segment: float | None = None, jobs: int = 1, transition_power: float = 1.0,
                 seed: int | None = None, batch: int | None = None, precision: str = "fp32") -> None:
        super().__init__(spec, device)
        if batch is None:
            batch = CUDA_BATCH if torch.device(device).type == "cuda" else 1
        self.batch = max(1, int(batch))
        self.precision = precision
        self.dtype = PRECISIONS[precision]
        from demucs.apply import BagOfModels
        self.bag = bag
        if isinstance(bag, BagOfModels):
            self.models = list(bag.models)
            self.weights = [list(w) for w in bag.weights]
        else:
            self.models = [bag]
            self.weights = [[1.0] * len(bag.sources)]
        self.shifts = int(shifts)
        self.overlap = float(overlap)
        self.segment = segment
        self.jobs = int(jobs)
        self.transition_power = float(transition_power)
        # shift offsets: the global `random` (as demucs) unless a seed makes every call identical
        self.seed = seed
        self._device = torch.device(device)
        self.bag.to(self._device)
        # out of memory: smaller batches of chunks, then a CPU copy of that sub-model (see .oom)
        self.oom = [_track_oom(m, self._device, self.batch,
                               spec.name if len(self.models) == 1 else f"{spec.name} model {i + 1}/{len(self.models)}")
                    for i, m in enumerate(self.models)]

    @property
    def max_segment(self) -> float:
        from demucs.htdemucs import HTDemucs
        segs = [float(m.segment) for m in self.models if isinstance(m, HTDemucs)]
        return min(segs) if segs else math.inf

    def chunk_segments(self) -> list[int]:
        """Segment length in samples of each sub-model (after bag / user overrides)."""
        return [int(m.samplerate * (self.segment if self.segment is not None else m.segment))
                for m in self.models]

    # ------------------------------------------------------------------ streaming
    def separate_stream(self, blocks: Iterable[np.ndarray], *,
                        progress: Callable[[int], None] | None = None,
                        stats: MixStats | None = None) -> Iterator[dict[str, np.ndarray]]:
        spool = None
        try:
            if stats is None:
                if iter(blocks) is not blocks:            # re-iterable: two passes, no copy
                    stats = mix_stats(blocks, self.audio_channels)
                else:
                    spool = _Spool(blocks, self.audio_channels)
                    stats, blocks = spool.stats, spool
            yield from self._run(blocks, stats, progress)
        finally:
            if spool is not None:
                spool.close()

    def _run(self, blocks, stats: MixStats, progress) -> Iterator[dict[str, np.ndarray]]:
        C = self.audio_channels
        mean = torch.tensor(stats.mean, dtype=torch.float32)
        std = torch.tensor(stats.std, dtype=torch.float32) + 1e-8
        max_shift = int(0.5 * self.samplerate)
        rng = random if self.seed is None else random.Random(self.seed)
        groups: list[list[_Unit]] = []
        for model in self.models:                       # draw order = demucs' (model-major)
            if self.shifts:
                offsets = [rng.randint(0, max_shift) for _ in range(self.shifts)]
                prefixes = [max_shift - off for off in offsets]
            else:
                prefixes = [0]
            groups.append([_Unit(model, segment=self.segment, overlap=self.overlap,
                                 transition_power=self.transition_power, prefix=p, channels=C,
                                 device=self._device, dtype=self.dtype) for p in prefixes])
        units = [u for g in groups for u in g]
        totals = [0.0] * len(self.sources)
        for ws in self.weights:
            for k, w in enumerate(ws):
                totals[k] += w
        pool = ThreadPoolExecutor(self.jobs) if self.jobs > 1 else None
        queued: list = []

        # Chunks wait per unit until ``batch`` of them can go through the model together.
        # Grouping depends only on each unit's own chunk sequence, never on how the input
        # arrived, so the output is identical whatever the block sizes.
        waiting: dict[int, list] = {id(u): [] for u in units}

        def take_groups(final: bool) -> list[list]:
            groups = []
            for u in units:
                q = waiting[id(u)]
                while len(q) >= self.batch or (final and q):
                    group = [q.pop(0)]
                    while q and len(group) < self.batch and q[0][3].shape == group[0][3].shape:
                        group.append(q.pop(0))
                    groups.append(group)
            return groups

        def forward(group):
            return group[0][0].forward_batch([t[3] for t in group], [t[2] for t in group])

        def run(groups):
            outs = list(map(forward, groups) if pool is None else pool.map(forward, groups))
            for group, ys in zip(groups, outs):
                for (u, o, n, _), y in zip(group, ys):
                    u.consume(o, n, y)

        def emit() -> Iterator[dict[str, np.ndarray]]:
            n = min(u.out_n for u in units)
            if n <= 0:
                return
            est = None
            for g, ws in zip(groups, self.weights):
                if self.shifts:
                    out = 0.
                    for u in g:
                        out = out + u.pop(n)
                    out = out / self.shifts
                else:
                    out = g[0].pop(n)
                for k, w in enumerate(ws):
                    out[k] *= w
                est = out if est is None else est + out
            for k in range(est.shape[0]):
                est[k] /= totals[k]
            est = est * std + mean
            res = {s: est[k].T.contiguous().numpy() for k, s in enumerate(self.sources)}
            yield res
            if progress is not None:
                progress(n)

        try:
            for block in blocks:
                x = _to_model_channels(block, C)
                if not x.shape[-1]:
                    continue
                x = (x - mean) / std
                for u in units:
                    u.feed(x)
                for u in units:
                    waiting[id(u)] += u.ready()
                queued += take_groups(final=False)
                if len(queued) >= max(1, self.jobs):
                    run(queued)
                    queued = []
                    yield from emit()
            for u in units:
                u.finish()
                waiting[id(u)] += u.ready()
            run(queued + take_groups(final=True))
            queued = []
            yield from emit()
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)


# =========================================================================== entry point

def _precision(precision: str | None, device: str) -> str:
    """``auto`` (or None) -> fp32: half precision is an explicit choice for Demucs (its effect
    on trained weights' SDR is not measured here); fp16 needs a CUDA device."""
    precision = precision or "auto"
    if precision == "auto":
        return "fp32"
    if precision not in PRECISIONS:
        raise invalid_argument(f"precision must be fp32, fp16, bf16 or auto, got {precision!r}")
    if precision == "fp16" and torch.device(device).type != "cuda":
        raise invalid_argument("fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    return precision


#: past this, each sample would be computed more than 10 times (compute grows as 1 / (1 - overlap))
MAX_OVERLAP = 0.9


def _validate(shifts, overlap, segment, jobs) -> None:
    if not isinstance(shifts, int) or isinstance(shifts, bool) or shifts < 0:
        raise invalid_argument(f"shifts must be an integer >= 0, got {shifts!r}")
    if not isinstance(overlap, (int, float)) or not 0.0 <= float(overlap) <= MAX_OVERLAP:
        raise invalid_argument(f"overlap must be between 0 and {MAX_OVERLAP} (a fraction of a chunk), "
                               f"got {overlap!r}")
    if segment is not None and (not isinstance(segment, (int, float, Fraction)) or not segment > 0
                                or not math.isfinite(float(segment))):
        raise invalid_argument(f"segment must be a positive number of seconds, got {segment!r}")
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise invalid_argument(f"jobs must be an integer >= 1, got {jobs!r}")


def load_demucs(name: str, device: str | None = None, *, model_dir: str | os.PathLike | None = None,
                shifts: int = 0, overlap: float = 0.25, segment: float | None = None, jobs: int = 1,
                transition_power: float = 1.0, seed: int | None = None, allow_download: bool = True,
                spec: ModelSpec | None = None, batch: int | None = None, precision: str | None = None) -> DemucsModel:
    """Load Demucs model / bag ``name`` from the local repo of ``model_dir`` (downloading
    it first when missing, allowed and online).  Raises ModelUnavailable (not installed,
    corrupt, needs diffq...) or CIError InvalidArgument (bad knobs)."""
    _validate(shifts, overlap, segment, jobs)
    if transition_power < 1:
        raise invalid_argument("transition_power must be >= 1")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    precision = _precision(precision, device)
    repo, entry = resolve_repo(name, model_dir, allow_download=allow_download)
    bag = _load_bag(name, repo, entry)
    for sub in getattr(bag, "models", [bag]):
        demucs_speed.optimize(sub, device)   # same function, less time (see .demucs_speed)
    if spec is None:
        spec = _spec_for(entry) if entry is not None else ModelSpec(
            name=name, family="demucs", sources=tuple(bag.sources), samplerate=int(bag.samplerate),
            audio_channels=int(bag.audio_channels), description="local Demucs model",
            weights=f"demucs repo {repo}")
    if tuple(bag.sources) != tuple(spec.sources):
        raise ModelUnavailable(f"{name}: weights have sources {list(bag.sources)}, "
                               f"catalogue says {list(spec.sources)}")
    model = DemucsModel(spec, device, bag, shifts=shifts, overlap=float(overlap), segment=segment,
                        jobs=max(1, jobs), transition_power=transition_power, seed=seed,
                        batch=batch, precision=precision)
    if segment is not None and float(segment) > model.max_segment:
        raise invalid_argument(
            f"segment {segment} s is longer than model {name} allows: Transformer models cannot "
            f"use a longer segment than they were trained for (max {model.max_segment:g} s)")
    return model


def load(spec: ModelSpec, device: str, **options) -> DemucsModel:
    """Registry factory: ``register(spec, load)``."""
    if options.pop("wiener", None) not in (None, False):
        raise invalid_argument(f"wiener applies to the bundled spleeter-2stems model, "
                               f"not to Demucs model {spec.name}")
    return load_demucs(spec.name, device, spec=spec, **options)


__all__ = ["demucs_specs", "load_demucs", "load", "DemucsModel", "MixStats", "mix_stats",
           "resolve_repo"]
