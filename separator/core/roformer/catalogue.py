"""The RoFormer catalogue: well-known published checkpoints (``models/roformer.yaml``).

Metadata only: names, architecture, stems, where the ``.ckpt`` and its ``.yaml`` come from,
their digests where published, the licence and the published SDR.  ``$SEPARATOR_ROFORMER_CATALOGUE``
names another catalogue file in the same format (an internal mirror's, or a test's).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ...errors import ModelUnavailable

CATALOGUE_FILE = Path(__file__).resolve().parents[3] / "models" / "roformer.yaml"
ENV_CATALOGUE = "SEPARATOR_ROFORMER_CATALOGUE"


@dataclass(frozen=True)
class RemoteFile:
    url: str
    sha256: str | None = None
    size: int | None = None


@dataclass(frozen=True)
class RoformerEntry:
    name: str
    architecture: str
    stems: tuple[str, ...]
    description: str
    checkpoint: RemoteFile
    config: RemoteFile
    licence: str = ""
    published_sdr: dict[str, float] = field(default_factory=dict, compare=False)
    musdb18hq_median_sdr: dict[str, float] = field(default_factory=dict, compare=False)


def _remote(d: Any, where: str) -> RemoteFile:
    if not isinstance(d, dict) or not d.get("url"):
        raise ModelUnavailable(f"RoFormer catalogue: {where} needs a url")
    return RemoteFile(str(d["url"]), d.get("sha256") or None, d.get("size") or None)


def roformer_catalogue() -> dict[str, RoformerEntry]:
    """Every catalogued RoFormer checkpoint, by name."""
    path = Path(os.environ.get(ENV_CATALOGUE) or CATALOGUE_FILE)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        return {}
    except (OSError, yaml.YAMLError) as err:
        raise ModelUnavailable(f"cannot read the RoFormer catalogue {path}: {err}") from None
    out: dict[str, RoformerEntry] = {}
    for name, m in (data.get("models") or {}).items():
        out[str(name)] = RoformerEntry(
            name=str(name), architecture=str(m["architecture"]), stems=tuple(str(s).lower() for s in m["stems"]),
            description=str(m.get("description", "")), checkpoint=_remote(m.get("checkpoint"), f"{name}.checkpoint"),
            config=_remote(m.get("config"), f"{name}.config"), licence=str(m.get("licence", "")),
            published_sdr=dict(m.get("published_sdr") or {}), musdb18hq_median_sdr=dict(m.get("musdb18hq_median_sdr") or {}))
    return out


__all__ = ["CATALOGUE_FILE", "ENV_CATALOGUE", "RemoteFile", "RoformerEntry", "roformer_catalogue"]
