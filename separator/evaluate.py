"""Scoring separations and loading the development songs.

:func:`score` gives, per source, the SiSEC/MUSDB framewise SDR (museval BSS Eval v4 on
1 s windows, median over frames ignoring NaN) and the whole-item "global" SDR.
:func:`dev_songs` builds the 7 reference items of ``shared/reference/spleeter-reference.md``
exactly as described there (ffmpeg-decoded, 44.1 kHz stereo float32, mixture :=
vocals + accompaniment as decoded).  museval is a dev dependency, imported lazily.
"""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

SR = 44100


def global_sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """10·log10(Σs² / Σ(s−ŝ)²) over the whole item, all channels together."""
    ref = reference.astype(np.float64)
    err = ref - estimate.astype(np.float64)
    num, den = float(np.sum(ref ** 2)), float(np.sum(err ** 2))
    if den == 0.0:
        return float("inf")
    return float(10.0 * np.log10(max(num, 1e-300) / den))


def score(reference: Mapping[str, np.ndarray], estimate: Mapping[str, np.ndarray], sr: int = SR
          ) -> dict[str, dict[str, float]]:
    """``{source: {"museval": median framewise SDR, "global": global SDR}}`` for the common sources.

    Arrays are ``(frames, channels)``.  museval: ``evaluate(mode='v4', win=sr, hop=sr,
    padding=True)``, median over the 1 s frames ignoring NaN (silent reference frames).
    """
    import museval

    names = [s for s in reference if s in estimate]
    n = min(min(len(reference[s]) for s in names), min(len(estimate[s]) for s in names))
    refs = np.stack([reference[s][:n] for s in names]).astype(np.float64)
    ests = np.stack([estimate[s][:n] for s in names]).astype(np.float64)
    sdr, _isr, _sir, _sar = museval.evaluate(refs, ests, win=sr, hop=sr, mode="v4", padding=True)
    return {s: {"museval": float(np.nanmedian(sdr[i])), "global": float(global_sdr(refs[i], ests[i]))}
            for i, s in enumerate(names)}


# --------------------------------------------------------------------------- decoding
def decode(path: str | Path, *, stream: int = 0, sr: int = SR, channels: int = 2) -> np.ndarray:
    """Decode audio stream ``stream`` of ``path`` with ffmpeg -> ``(frames, channels)`` float32."""
    ffmpeg = shutil.which("ffmpeg") or "/usr/bin/ffmpeg"
    cmd = [ffmpeg, "-nostdin", "-v", "error", "-i", str(path), "-map", f"0:a:{stream}",
           "-f", "f32le", "-acodec", "pcm_f32le", "-ac", str(channels), "-ar", str(sr), "-"]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed on {path}: {proc.stderr.decode(errors='replace')[-500:]}")
    return np.frombuffer(proc.stdout, dtype=np.float32).reshape(-1, channels).copy()


def _sum(arrays: Sequence[np.ndarray]) -> np.ndarray:
    n = min(len(a) for a in arrays)
    out = np.zeros((n, arrays[0].shape[1]), np.float32)
    for a in arrays:
        out += a[:n]
    return out


def _item(vocals: np.ndarray, accompaniment: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    n = min(len(vocals), len(accompaniment))
    v, a = vocals[:n], accompaniment[:n]
    return v + a, {"vocals": v, "accompaniment": a}


def falcon69_path() -> Path | None:
    """The MUSDB18 preview "The Easton Ellises - Falcon 69" shipped as stempeg's test data."""
    spec = importlib.util.find_spec("stempeg")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(next(iter(spec.submodule_search_locations))) / "data" / "The Easton Ellises - Falcon 69.stem.mp4"
    return p if p.is_file() else None


DEV_SONG_NAMES = (
    "Bearlin - Roads", "Ultimate NZ Tour", "Cristina Vane - So Easy", "The Mountaineering Club - Mallory",
    "Triviul feat. The Fiend - Widow", "Music Delta - 80s Rock", "The Easton Ellises - Falcon 69",
)


def dev_songs(data_dir: str | Path) -> Iterator[tuple[str, np.ndarray, dict[str, np.ndarray]]]:
    """Yield ``(name, mixture, {"vocals", "accompaniment"})`` for the 7 reference items.

    * SiSEC 2011 dev: vocals = the vocals track; accompaniment = sum of the other tracks;
    * Wave-U-Net MUSDB examples: ``vocals_true.mp3`` + ``accompaniment_true.mp3``;
    * NI stems (80s Rock from the data folder, Falcon 69 from the ``stempeg`` package):
      vocals = stream 4, accompaniment = streams 1 + 2 + 3.

    Items whose files are missing are skipped (Falcon 69 needs ``stempeg`` installed).
    """
    root = Path(data_dir)
    sisec = root / "sisec2011-music-dev-pyroomacoustics"
    for name, tracks in (("Bearlin - Roads", sisec / "Bearlin_Roads" / "dev1__bearlin-roads__tracks"),
                         ("Ultimate NZ Tour", sisec / "Ultimate NZ Tour" / "Tracks")):
        files = sorted(tracks.glob("*.wav"))
        if not files:
            continue
        voc = [f for f in files if f.name.endswith("__vocals.wav")]
        rest = [f for f in files if f not in voc]
        yield (name, *_item(decode(voc[0]), _sum([decode(f) for f in rest])))
    wu = root / "waveunet-musdb18-examples"
    for name in DEV_SONG_NAMES[2:5]:
        d = wu / name
        if (d / "vocals_true.mp3").is_file():
            yield (name, *_item(decode(d / "vocals_true.mp3"), decode(d / "accompaniment_true.mp3")))
    for name, path in (("Music Delta - 80s Rock", root / "museval-musdb18-80srock" / "Music Delta - 80s Rock.stem.mp4"),
                       ("The Easton Ellises - Falcon 69", falcon69_path())):
        if path is not None and path.is_file():
            yield (name, *_item(decode(path, stream=4), _sum([decode(path, stream=s) for s in (1, 2, 3)])))
