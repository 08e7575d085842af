"""The model catalogue: what models exist, their stems, files and checksums.

The catalogue lives in plain YAML files under ``models/`` at the project root,
one per family (``models/demucs.yaml``, ``models/spleeter.yaml``, ...), and is
committed to the repository.  It never contains weights, only metadata: names,
stems, sample rate, bag composition, file names, download URLs and the sha256
prefix every Demucs weight file carries in its name (``<sig>-<sha256[:8]>.th``).

``models/demucs.yaml`` is generated from the metadata shipped inside the
installed ``demucs`` package (``demucs/remote/files.txt`` and
``demucs/remote/*.yaml``) plus a small hand-written table of stems and
descriptions::

    python -m separator.core.demucs catalogue > models/demucs.yaml

When the ``models/`` folder is not available (e.g. an installed wheel), the
Demucs catalogue is rebuilt in memory from the same package metadata, so the
two can never disagree.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

#: Root folder holding the catalogue files (``models/`` at the project root).
CATALOGUE_DIR = Path(__file__).resolve().parents[3] / "models"

DEMUCS_URL_ROOT = "https://dl.fbaipublicfiles.com/demucs/"

FOUR_STEMS = ("drums", "bass", "other", "vocals")
SIX_STEMS = ("drums", "bass", "other", "vocals", "guitar", "piano")

# Hand-written knowledge the package metadata does not carry (from demucs's README).
# name -> (sources, architecture, max_segment seconds (None: unbounded), requires, description)
_DEMUCS_META: dict[str, tuple[tuple[str, ...], str, float | None, tuple[str, ...], str]] = {
    "htdemucs": (FOUR_STEMS, "HTDemucs", 7.8, (),
                 "Hybrid Transformer Demucs v4, trained on MusDB + 800 songs. Demucs' default model."),
    "htdemucs_ft": (FOUR_STEMS, "HTDemucs", 7.8, (),
                    "Fine-tuned htdemucs: a bag of 4 specialised models, one per stem. "
                    "About 4x slower than htdemucs, slightly better."),
    "htdemucs_6s": (SIX_STEMS, "HTDemucs", 7.8, (),
                    "6-stem htdemucs, adds guitar and piano (piano is weak)."),
    "hdemucs_mmi": (FOUR_STEMS, "HDemucs", None, (),
                    "Hybrid Demucs v3, retrained on MusDB + 800 songs."),
    "mdx": (FOUR_STEMS, "Demucs+HDemucs", None, (),
            "Bag of 4 Demucs v3 models (time-domain and hybrid) trained on MusDB HQ only; "
            "winner of MDX 2021 track A."),
    "mdx_extra": (FOUR_STEMS, "Demucs+HDemucs", None, (),
                  "Bag of 4 Demucs v3 models trained with extra data; 2nd on MDX 2021 track B."),
    "mdx_q": (FOUR_STEMS, "Demucs+HDemucs", None, ("diffq",),
              "DiffQ-quantized mdx: smaller files, slightly lower quality. Needs the diffq package."),
    "mdx_extra_q": (FOUR_STEMS, "Demucs+HDemucs", None, ("diffq",),
                    "DiffQ-quantized mdx_extra: smaller files, slightly lower quality. "
                    "Needs the diffq package."),
    "repro_mdx_a": (FOUR_STEMS, "Demucs+HDemucs", None, (),
                    "Reproduction of mdx from the Demucs training grid (time-only + hybrid)."),
    "repro_mdx_a_hybrid_only": (FOUR_STEMS, "HDemucs", None, (),
                                "Reproduction of mdx, hybrid models only."),
    "repro_mdx_a_time_only": (FOUR_STEMS, "Demucs", None, (),
                              "Reproduction of mdx, time-domain models only."),
}


@dataclass(frozen=True)
class WeightFile:
    """One ``.th`` file of demucs's model repository."""
    sig: str
    file: str            # "<sig>-<checksum>.th"
    checksum: str        # sha256 hex prefix encoded in the file name
    url: str


@dataclass(frozen=True)
class CatalogueModel:
    """A named model (always a bag in demucs's layout, possibly of one model)."""
    name: str
    family: str
    sources: tuple[str, ...]
    samplerate: int
    audio_channels: int
    description: str
    architecture: str = ""
    max_segment: float | None = None
    requires: tuple[str, ...] = ()
    bag_models: tuple[str, ...] = ()                  # signatures, in bag order (may repeat)
    bag_weights: tuple[tuple[float, ...], ...] | None = None
    bag_segment: float | None = None
    files: tuple[WeightFile, ...] = ()              # unique files needed, in first-use order
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def bag_file(self) -> str:
        return f"{self.name}.yaml"

    def bag_yaml(self) -> str:
        """The bag definition, in the exact format demucs's ``BagOnlyRepo`` reads."""
        data: dict[str, Any] = {"models": list(self.bag_models)}
        if self.bag_weights is not None:
            data["weights"] = [list(w) for w in self.bag_weights]
        if self.bag_segment is not None:
            data["segment"] = self.bag_segment
        return yaml.safe_dump(data, default_flow_style=None, sort_keys=False)


# --------------------------------------------------------------------------- generation

def _demucs_remote_root() -> Path:
    import demucs.pretrained
    return demucs.pretrained.REMOTE_ROOT


def build_demucs_catalogue() -> dict[str, Any]:
    """The Demucs catalogue as a plain dict, built from the installed package's metadata."""
    import demucs
    from demucs.pretrained import ROOT_URL, _parse_remote_files

    root = _demucs_remote_root()
    urls = _parse_remote_files(root / "files.txt")          # sig -> full URL
    files: dict[str, dict[str, str]] = {}
    for sig, url in sorted(urls.items()):
        fname = url.rsplit("/", 1)[1]
        files[sig] = {"file": fname, "sha256_prefix": Path(fname).stem.rsplit("-", 1)[1], "url": url}
    models: dict[str, Any] = {}
    for yml in sorted(root.glob("*.yaml")):
        bag = yaml.safe_load(yml.read_text())
        name = yml.stem
        sources, arch, max_seg, requires, desc = _DEMUCS_META.get(
            name, (FOUR_STEMS, "unknown", None, (), "Pretrained Demucs model."))
        for sig in bag["models"]:
            if sig not in files:
                raise ValueError(f"{yml}: signature {sig} not in files.txt")
        models[name] = {
            "description": desc,
            "sources": list(sources),
            "samplerate": 44100,
            "audio_channels": 2,
            "architecture": arch,
            "max_segment": max_seg,
            "requires": list(requires),
            "bag": {
                "models": list(bag["models"]),
                "weights": bag.get("weights"),
                "segment": bag.get("segment"),
            },
        }
    return {
        "family": "demucs",
        "generated_from": f"demucs {getattr(demucs, '__version__', '?')} (demucs/remote/files.txt, "
                          "demucs/remote/*.yaml)",
        "url_root": ROOT_URL,
        "layout": "demucs local repo: <sig>-<sha256[:8]>.th files + <name>.yaml bags, "
                  "in <model_dir>/demucs/",
        "models": models,
        "files": files,
    }


def dump_demucs_catalogue() -> str:
    header = ("# Demucs model catalogue: generated by `python -m separator.core.demucs catalogue`\n"
              "# from the installed demucs package's remote metadata. Metadata only, never weights.\n"
              "# files.<sig>.sha256_prefix is the checksum demucs encodes in the file name\n"
              "# (<sig>-<sha256[:8]>.th); bag.weights are per-model, per-source weights.\n")
    return header + yaml.safe_dump(build_demucs_catalogue(), sort_keys=False,
                                   default_flow_style=None, width=100)


# --------------------------------------------------------------------------- loading

def _parse_demucs(data: dict[str, Any]) -> dict[str, CatalogueModel]:
    files = {
        sig: WeightFile(sig=sig, file=f["file"], checksum=str(f["sha256_prefix"]), url=f["url"])
        for sig, f in data["files"].items()
    }
    out: dict[str, CatalogueModel] = {}
    for name, m in data["models"].items():
        bag = m["bag"]
        sigs = tuple(str(s) for s in bag["models"])
        uniq: list[WeightFile] = []
        for sig in sigs:
            if files[sig] not in uniq:
                uniq.append(files[sig])
        weights = bag.get("weights")
        out[name] = CatalogueModel(
            name=name, family="demucs", sources=tuple(m["sources"]),
            samplerate=int(m["samplerate"]), audio_channels=int(m["audio_channels"]),
            description=m.get("description", ""), architecture=m.get("architecture", ""),
            max_segment=m.get("max_segment"), requires=tuple(m.get("requires") or ()),
            bag_models=sigs,
            bag_weights=None if weights is None else tuple(tuple(float(x) for x in w) for w in weights),
            bag_segment=bag.get("segment"),
            files=tuple(uniq),
        )
    return out


@lru_cache(maxsize=None)
def _load_family(family: str, catalogue_dir: str | None) -> dict[str, Any] | None:
    base = Path(catalogue_dir) if catalogue_dir else CATALOGUE_DIR
    path = base / f"{family}.yaml"
    if path.is_file():
        return yaml.safe_load(path.read_text())
    return None


def load_family(family: str, catalogue_dir: Path | None = None) -> dict[str, Any] | None:
    """Raw catalogue dict of one family (``models/<family>.yaml``), or None if absent."""
    return _load_family(family, str(catalogue_dir) if catalogue_dir else None)


def demucs_catalogue(catalogue_dir: Path | None = None) -> dict[str, CatalogueModel]:
    """All Demucs models of the catalogue, by name (falls back to the package's metadata)."""
    data = load_family("demucs", catalogue_dir)
    if data is None:
        data = build_demucs_catalogue()
    return _parse_demucs(data)
