"""Where model weights live, and how they get there: list, pull, verify.

Layout (see ``models/README.md``)::

    <model_dir>/                 $SEPARATOR_MODEL_DIR, the CLI's --model-dir, or
                                 $XDG_CACHE_HOME/separator/models (~/.cache/separator/models)
        demucs/                  a demucs "local repo", usable as-is with `demucs --repo`
            955717e8-8726e21a.th     <sig>-<sha256[:8]>.th, demucs.states.save_with_checksum format
            htdemucs.yaml            bag definition (models / weights / segment)

If ``<model_dir>/demucs`` does not exist but ``<model_dir>`` itself holds ``.th``
files, ``<model_dir>`` is used as the demucs repo (so an existing ``demucs --repo``
folder can be pointed at directly).

Weights are never fetched behind the user's back without a fast connectivity
check: when the download host cannot be reached within a few seconds, every
entry point raises :class:`~separator.errors.ModelUnavailable` with the exact
files to copy and where.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

from separator.errors import ModelUnavailable

from ..weights import (ENV_MODEL_DIR, ENV_OFFLINE, FileCheck, InstalledModel,  # noqa: F401 - shared
                       model_dir, sha256, unreachable)
from .catalogue import DEMUCS_URL_ROOT, CatalogueModel, WeightFile, demucs_catalogue

#: Replaces https://dl.fbaipublicfiles.com/demucs/ (an internal mirror, or a dead address in tests).
ENV_DEMUCS_MIRROR = "SEPARATOR_DEMUCS_MIRROR"



# --------------------------------------------------------------------------- locations

def demucs_repo(root: str | os.PathLike | None = None) -> Path:
    """The demucs local repo inside the model directory (see module doc)."""
    base = model_dir(root)
    sub = base / "demucs"
    if not sub.is_dir() and base.is_dir() and any(base.glob("*.th")):
        return base
    return sub


def _url(f: WeightFile) -> str:
    mirror = os.environ.get(ENV_DEMUCS_MIRROR)
    if mirror:
        return mirror.rstrip("/") + "/" + f.url[len(DEMUCS_URL_ROOT):]
    return f.url


# --------------------------------------------------------------------------- checks

def split_name(path: Path) -> tuple[str, str | None]:
    """``<sig>-<checksum>.th`` -> (sig, checksum); ``<sig>.th`` -> (sig, None)."""
    stem = path.stem
    if "-" in stem:
        sig, checksum = stem.rsplit("-", 1)
        return sig, checksum
    return stem, None


def check_file(path: Path, expected: str | None = None) -> FileCheck:
    """Verify one weight file: its sha256 prefix must match the checksum in its name
    (and ``expected`` from the catalogue, if given); a torch zip archive that cannot be
    opened is reported as truncated."""
    in_name = split_name(path)[1]
    expected = expected or in_name
    if not path.is_file():
        return FileCheck(path, "missing", "file not found", expected=expected)
    size = path.stat().st_size
    digest = sha256(path)
    actual = digest[: len(expected)] if expected else digest[:8]
    if in_name and expected and in_name != expected:
        return FileCheck(path, "corrupt", f"file name says checksum {in_name}, catalogue says {expected}",
                         expected=expected, actual=actual, size=size)
    # torch.save writes a zip archive; a cut-off download loses its central directory.
    try:
        with zipfile.ZipFile(path) as zf:
            zf.infolist()
        readable = True
    except (zipfile.BadZipFile, OSError, ValueError):
        readable = False
    if expected is None:
        if readable:
            return FileCheck(path, "unchecked", "no checksum in the file name", actual=actual, size=size)
        return FileCheck(path, "truncated", "not a readable torch archive (truncated?)", actual=actual, size=size)
    if actual == expected:
        return FileCheck(path, "ok", expected=expected, actual=actual, size=size)
    status = "corrupt" if readable else "truncated"
    return FileCheck(path, status, f"sha256 prefix {actual} != {expected}" +
                     ("" if readable else " and not a readable torch archive (truncated download?)"),
                     expected=expected, actual=actual, size=size)


# --------------------------------------------------------------------------- network

def copy_instructions(entry: CatalogueModel, repo: Path, missing: list[WeightFile] | None = None) -> str:
    """What to do without a network, in one line: which files to copy where, from where."""
    files = entry.files if missing is None else missing
    listed = ", ".join(f"{f.file} (from {_url(f)})" for f in files)
    return (f"copy {listed} into {repo}/ (from a machine with network access, another demucs repo "
            f"or the torch hub cache ~/.cache/torch/hub/checkpoints/), then run `separator models "
            f"verify`; or, with network access, `separator models pull {entry.name}`.")


def catalogue_names() -> set[str]:
    """The models :func:`pull` can fetch."""
    return set(demucs_catalogue())


def _catalogue_entry(name: str) -> CatalogueModel:
    cat = demucs_catalogue()
    if name not in cat:
        raise ModelUnavailable(f"unknown Demucs model {name!r}; known models: {', '.join(sorted(cat))}")
    return cat[name]


def write_bag_yaml(entry: CatalogueModel, repo: Path) -> Path:
    """Write ``<name>.yaml`` into ``repo`` (a byte copy of the one demucs ships, if available)."""
    target = repo / entry.bag_file
    try:
        import demucs.pretrained
        src = demucs.pretrained.REMOTE_ROOT / entry.bag_file
        text = src.read_text() if src.is_file() else entry.bag_yaml()
    except Exception:  # noqa: BLE001 - the catalogue is enough
        text = entry.bag_yaml()
    repo.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    tmp.write_text(text)
    os.replace(tmp, target)
    return target


def pull(name: str, root: str | os.PathLike | None = None, *, progress: bool = False,
         force: bool = False) -> list[Path]:
    """Download (if needed) every file of catalogue model ``name`` into the demucs repo of
    ``root`` and verify checksums.  Returns the paths of the model's files.

    Offline, fails within ~``CONNECT_TIMEOUT_S`` seconds with :class:`ModelUnavailable`
    naming the files to copy and where."""
    entry = _catalogue_entry(name)
    repo = demucs_repo(root)
    todo: list[WeightFile] = []
    for f in entry.files:
        chk = check_file(repo / f.file, f.checksum)
        if force or chk.status != "ok":
            todo.append(f)
    if todo:
        from ...storage.local import writable_folder_problem
        problem = writable_folder_problem(repo)
        if problem:
            raise ModelUnavailable(f"cannot install Demucs model {name!r} into {repo}: {problem}; "
                                   "choose another --model-dir")
        reason = unreachable(_url(todo[0]))
        if reason:
            raise ModelUnavailable(
                f"cannot download Demucs model {name!r}: {reason}. " + copy_instructions(entry, repo, todo))
        from ...storage.local import created_folders
        from ..weights import download
        # a failed or interrupted pull leaves no partial file and no folder it created
        with created_folders([repo / f.file for f in todo]):
            for f in todo:
                try:
                    download(_url(f), repo / f.file, sha256=f.checksum, progress=progress)
                except ModelUnavailable as err:     # the transfer failed, or the bytes are not the file
                    raise ModelUnavailable(f"{err.message}. " + copy_instructions(entry, repo, [f])) from None
    write_bag_yaml(entry, repo)
    return [repo / f.file for f in entry.files]


# --------------------------------------------------------------------------- listing / verify

def _local_extras(repo: Path, known: set[str]) -> list[str]:
    if not repo.is_dir():
        return []
    return sorted(p.stem for p in repo.glob("*.yaml") if p.stem not in known)


def list_installed(root: str | os.PathLike | None = None) -> list[InstalledModel]:
    """Every catalogue model (installed or not) plus extra bags found in the local repo.
    Cheap: looks at file names and sizes only (use :func:`verify` for checksums)."""
    repo = demucs_repo(root)
    out: list[InstalledModel] = []
    cat = demucs_catalogue()
    for name, entry in sorted(cat.items()):
        missing = [f.file for f in entry.files if not (repo / f.file).is_file()]
        installed = not missing
        size = sum((repo / f.file).stat().st_size for f in entry.files) / 1e6 if installed else None
        out.append(InstalledModel(
            name=name, family="demucs", sources=entry.sources, installed=installed,
            size_mb=None if size is None else round(size, 1),
            location=str(repo) if installed else f"{DEMUCS_URL_ROOT} (not installed)",
            origin="catalogue", description=entry.description, missing=missing,
            requires=entry.requires))
    for name in _local_extras(repo, set(cat)):
        import yaml
        try:
            sigs = yaml.safe_load((repo / f"{name}.yaml").read_text())["models"]
        except Exception:  # noqa: BLE001
            sigs = []
        files = {split_name(p)[0]: p for p in repo.glob("*.th")}
        missing = [s for s in sigs if s not in files]
        size = sum(files[s].stat().st_size for s in set(sigs) if s in files) / 1e6
        out.append(InstalledModel(
            name=name, family="demucs", sources=(), installed=bool(sigs) and not missing,
            size_mb=round(size, 1), location=str(repo), origin="local",
            description="local bag (not in the catalogue)", missing=missing))
    return out


def verify(root: str | os.PathLike | None = None, names: list[str] | None = None) -> list[FileCheck]:
    """Check every ``.th`` file in the demucs repo (or only those of ``names``): the
    sha256 prefix must match the checksum in the file name and in the catalogue;
    truncated and corrupt files are reported, never silently accepted."""
    repo = demucs_repo(root)
    cat = demucs_catalogue()
    by_file = {f.file: f for e in cat.values() for f in e.files}
    by_sig = {f.sig: f for e in cat.values() for f in e.files}
    if names:
        paths = []
        for n in names:
            entry = _catalogue_entry(n)
            paths += [repo / f.file for f in entry.files]
    else:
        paths = sorted(repo.glob("*.th")) if repo.is_dir() else []
    results = []
    for p in paths:
        expected = None
        if p.name in by_file:
            expected = by_file[p.name].checksum
        elif split_name(p)[0] in by_sig and split_name(p)[1] is None:
            expected = by_sig[split_name(p)[0]].checksum
        results.append(check_file(p, expected))
    return results


def remove(name: str, root: str | os.PathLike | None = None) -> list[Path]:
    """Delete a catalogue model's files that no other installed bag needs."""
    entry = _catalogue_entry(name)
    repo = demucs_repo(root)
    keep = {f.file for e in demucs_catalogue().values() if e.name != name
            and all((repo / g.file).is_file() for g in e.files) for f in e.files}
    removed = []
    for f in entry.files:
        p = repo / f.file
        if p.is_file() and f.file not in keep:
            p.unlink()
            removed.append(p)
    y = repo / entry.bag_file
    if y.is_file():
        y.unlink()
        removed.append(y)
    return removed


__all__ = [
    "ENV_MODEL_DIR", "ENV_DEMUCS_MIRROR", "ENV_OFFLINE", "model_dir", "demucs_repo", "pull",
    "catalogue_names", "list_installed", "verify", "remove", "check_file", "FileCheck", "InstalledModel",
    "copy_instructions", "write_bag_yaml",
]
