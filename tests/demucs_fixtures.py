"""Helpers for the Demucs tests (no conftest): tiny model repos, real audio, ffmpeg decode."""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"          # committed real audio (tests/data/README.md)
SR = 44100

REAL_CLIPS = [
    DATA / "mixtures" / "vocadito-vibeace" / "mixture.flac",     # 7.5 s: singing over jazz
]


def _script():
    spec = importlib.util.spec_from_file_location("make_tiny_demucs", ROOT / "scripts" / "make_tiny_demucs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


make_tiny = _script()


@lru_cache(maxsize=None)
def _master_repo(base: str) -> Path:
    repo = Path(base) / "master" / "demucs"
    make_tiny.make_tiny_repo(repo)
    return repo


def tiny_model_dir(tmp_root: Path, name: str) -> Path:
    """A fresh model dir (``<dir>/demucs`` = the tiny repo), copied from a per-session master."""
    master = _master_repo(str(tmp_root))
    target = Path(tmp_root) / name
    shutil.copytree(master, target / "demucs")
    return target


def real_clip() -> Path | None:
    for p in REAL_CLIPS:
        if p.is_file():
            return p
    return None


def decode(path: Path, seconds: float | None = None, start: float = 0.0) -> np.ndarray:
    """ffmpeg decode to (frames, 2) float32 at 44.1 kHz."""
    cmd = ["ffmpeg", "-v", "error", "-nostdin", "-ss", str(start), "-i", str(path)]
    if seconds is not None:
        cmd += ["-t", str(seconds)]
    cmd += ["-map", "0:a:0", "-f", "f32le", "-ac", "2", "-ar", str(SR), "-"]
    raw = subprocess.run(cmd, capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.float32).reshape(-1, 2).copy()


def write_f32_wav(path: Path, audio: np.ndarray) -> None:
    """Lossless float32 WAV (via ffmpeg), so the demucs CLI reads exactly ``audio``."""
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", "-f", "f32le", "-ar", str(SR), "-ac", "2",
                    "-i", "-", "-c:a", "pcm_f32le", str(path)], input=audio.astype(np.float32).tobytes(),
                   check=True)


def read_f32_wav(path: Path) -> np.ndarray:
    raw = subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-i", str(path), "-f", "f32le", "-"],
                         capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.float32).reshape(-1, 2).copy()


def blocks(audio: np.ndarray, sizes=(1000, 4096, 333)):
    """A one-shot generator of irregular blocks."""
    i, k = 0, 0
    while i < len(audio):
        n = sizes[k % len(sizes)]
        yield audio[i:i + n]
        i += n
        k += 1


def collect(stream, sources, mixture: list | None = None) -> dict[str, np.ndarray]:
    """The stems of a ``separate_stream``, joined (and its blocks' mixtures appended to ``mixture``)."""
    parts = {s: [] for s in sources}
    for b in stream:
        for s in sources:
            parts[s].append(b.stems[s])
        if mixture is not None:
            mixture.append(b.mixture)
    return {s: np.concatenate(p) if p else np.zeros((0, 2), np.float32) for s, p in parts.items()}


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((int(seconds * SR), 2)) * 0.1).astype(np.float32)


def count_decoders(monkeypatch, path: Path) -> list:
    """Record every ffmpeg decoder launched on ``path`` (encoders and ffprobe are not counted:
    they start their processes through their own modules)."""
    from separator.media import decode as decode_module
    launches: list = []
    real = decode_module.popen_child

    def popen_child(cmd, **kwargs):
        if any(str(path) in arg for arg in cmd):
            launches.append(cmd)
        return real(cmd, **kwargs)

    monkeypatch.setattr(decode_module, "popen_child", popen_child)
    return launches
