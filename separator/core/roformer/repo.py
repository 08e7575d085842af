"""Where RoFormer weights live, and how they get there: list, pull, verify.

Layout::

    <model_dir>/roformer/<name>.ckpt         the MSST checkpoint (a torch state dict)
    <model_dir>/roformer/<name>.yaml         its config, as shipped
    <model_dir>/roformer/<name>.ckpt.sha256  the digest ``pull`` saw, when none is published

A model outside the model directory is named by its config's path (``--model
path/to/<name>.yaml``), with the checkpoint beside it.  Offline, nothing waits on the
network: a pull fails within seconds, naming the files to put where.
"""
from __future__ import annotations

import os
from pathlib import Path

from ...errors import ModelUnavailable
from ..weights import FileCheck, InstalledModel, model_dir, sha256, unreachable
from .catalogue import RoformerEntry, roformer_catalogue

SUBDIR = "roformer"


def roformer_dir(root: str | os.PathLike | None = None) -> Path:
    return model_dir(root) / SUBDIR


def pair(folder: Path, name: str) -> tuple[Path, Path]:
    """The checkpoint and config of model ``name`` in ``folder``."""
    return folder / f"{name}.ckpt", folder / f"{name}.yaml"


def local_names(root: str | os.PathLike | None = None) -> list[str]:
    """Models whose checkpoint and config are both in the model directory."""
    folder = roformer_dir(root)
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.ckpt") if (folder / f"{p.stem}.yaml").is_file())


def catalogue_names() -> set[str]:
    """The models :func:`pull` can fetch."""
    return set(roformer_catalogue())


def list_installed(root: str | os.PathLike | None = None) -> list[InstalledModel]:
    """Every catalogued model (installed or not) and the other pairs found in the model
    directory.  Cheap: file names and sizes, and the yaml of a model outside the catalogue."""
    from .config import read_config
    from .errors import RoformerConfigError

    folder = roformer_dir(root)
    cat = roformer_catalogue()
    local = set(local_names(root))
    out: list[InstalledModel] = []

    def size(name: str) -> float:
        return round(sum(p.stat().st_size for p in pair(folder, name)) / 1e6, 1)

    for name, e in sorted(cat.items()):
        here = name in local
        out.append(InstalledModel(
            name=name, family="roformer", sources=e.stems, installed=here, size_mb=size(name) if here else None,
            location=str(folder) if here else f"{e.checkpoint.url} (not installed)", origin="catalogue",
            description=e.description, missing=[] if here else [p.name for p in pair(folder, name) if not p.is_file()]))
    for name in sorted(local - set(cat)):
        try:
            cfg = read_config(pair(folder, name)[1])
            stems, what = tuple(s.lower() for s in cfg.stems), cfg.architecture.replace("_", " ")
        except RoformerConfigError as err:
            stems, what = (), f"unreadable config: {err}"
        out.append(InstalledModel(name=name, family="roformer", sources=stems, installed=bool(stems),
                                  size_mb=size(name), location=str(folder), origin="local",
                                  description=f"local {what}"))
    return out


def copy_instructions(entry: RoformerEntry, folder: Path) -> str:
    """What to do without a network, in one line."""
    ckpt, cfg = pair(folder, entry.name)
    return (f"put {entry.checkpoint.url} at {ckpt} and {entry.config.url} at {cfg} (from a machine "
            f"with network access), then run `separator models verify {entry.name}`; or, with network "
            f"access, `separator models pull {entry.name}`")


def _entry(name: str) -> RoformerEntry:
    cat = roformer_catalogue()
    if name not in cat:
        raise ModelUnavailable(f"unknown RoFormer model {name!r}; catalogued: {', '.join(sorted(cat)) or 'none'}")
    return cat[name]


def pull(name: str, root: str | os.PathLike | None = None, *, progress: bool = False,
         force: bool = False) -> list[Path]:
    """Download catalogued model ``name`` into the model directory (checking the published
    digests; where none is published, recording the one downloaded).  Returns its two files."""
    from ...storage.local import created_folders, writable_folder_problem
    from ..weights import download

    entry = _entry(name)
    folder = roformer_dir(root)
    ckpt, cfg = pair(folder, name)
    if not force and ckpt.is_file() and cfg.is_file() and all(c.ok for c in verify(root, [name])):
        return [ckpt, cfg]
    problem = writable_folder_problem(folder)
    if problem:
        raise ModelUnavailable(f"cannot install RoFormer model {name!r} into {folder}: {problem}; "
                               "choose another --model-dir")
    reason = unreachable(entry.checkpoint.url) or unreachable(entry.config.url)
    if reason:
        raise ModelUnavailable(f"cannot download RoFormer model {name!r}: {reason}. " + copy_instructions(entry, folder))
    try:
        with created_folders([ckpt, cfg]):
            download(entry.config.url, cfg, sha256=entry.config.sha256)
            got = download(entry.checkpoint.url, ckpt, sha256=entry.checkpoint.sha256, progress=progress)
            if not entry.checkpoint.sha256:      # nothing published: remember what we verified against
                Path(f"{ckpt}.sha256").write_text(got + "\n")
    except ModelUnavailable as err:              # the transfer failed, or the bytes are not the file
        raise ModelUnavailable(f"{err.message}. " + copy_instructions(entry, folder)) from None
    return [ckpt, cfg]


def verify(root: str | os.PathLike | None = None, names: list[str] | None = None) -> list[FileCheck]:
    """Check installed RoFormer models (or those of ``names``): both files present, the
    checkpoint's sha256 the published one (or the one recorded at pull), the config readable."""
    from .config import read_config
    from .errors import RoformerConfigError

    folder = roformer_dir(root)
    cat = roformer_catalogue()
    out: list[FileCheck] = []
    for name in names if names else local_names(root):
        ckpt, cfg = pair(folder, name)
        if not ckpt.is_file() or not cfg.is_file():
            missing = [p for p in (ckpt, cfg) if not p.is_file()]
            out.extend(FileCheck(p, "missing", "file not found") for p in missing)
            continue
        recorded = Path(f"{ckpt}.sha256")
        want = (cat[name].checkpoint.sha256 if name in cat else None) or \
            (recorded.read_text().strip() if recorded.is_file() else None)
        if want is None:
            out.append(FileCheck(ckpt, "unchecked", "no published or recorded sha256"))
        else:
            got = sha256(ckpt)
            out.append(FileCheck(ckpt, "ok" if got == want else "corrupt",
                                 "" if got == want else f"sha256 {got[:16]}… != {want[:16]}…"))
        try:
            read_config(cfg)
            out.append(FileCheck(cfg, "ok"))
        except RoformerConfigError as err:
            out.append(FileCheck(cfg, "unreadable", str(err)))
    return out


__all__ = ["catalogue_names", "copy_instructions", "list_installed", "local_names", "pair", "pull",
           "roformer_dir", "verify"]
