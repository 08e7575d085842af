"""Scoring separations and loading the development songs.

:func:`score` gives, per source, the SiSEC/MUSDB framewise SDR (museval BSS Eval v4 on
1 s windows, median over frames ignoring NaN) and the whole-item "global" SDR.
:func:`dev_songs` builds the 7 reference items of ``shared/reference/spleeter-reference.md``
exactly as described there (ffmpeg-decoded, 44.1 kHz stereo float32, mixture :=
vocals + accompaniment as decoded).  museval is a dev dependency, imported lazily.
"""
from __future__ import annotations

import importlib.util
import math
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

SR = 44100
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MIXTURE_NAMES = ("mixture", "mix")
ACC_ALIASES = ("accompaniment", "background", "instrumental", "no_vocals", "novocals")
AUDIO_EXT = {".wav", ".flac", ".mp3", ".m4a", ".aac", ".ogg", ".opus", ".aif", ".aiff", ".mp4", ".wma"}


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


# --------------------------------------------------------------------------- songs
def detect_layout(data_dir: Path) -> str:
    if (data_dir / "sisec2011-music-dev-pyroomacoustics").is_dir() or \
            (data_dir / "waveunet-musdb18-examples").is_dir():
        return "dev"
    return "folders"


def _audio_files(folder: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for f in sorted(folder.iterdir()):
        if f.is_file() and f.suffix.lower() in AUDIO_EXT and not f.name.startswith("."):
            out.setdefault(f.stem.lower(), f)
    return out


def folder_songs(data_dir: Path, sr: int) -> Iterator[tuple[str, np.ndarray, dict[str, np.ndarray]]]:
    """``(name, mixture, {stem: audio})`` for every ``DATA_DIR/<song>/`` with stems."""
    for song in sorted(p for p in data_dir.iterdir() if p.is_dir()):
        files = _audio_files(song)
        mix_key = next((k for k in MIXTURE_NAMES if k in files), None)
        stem_files = {k: v for k, v in files.items() if k != mix_key}
        if not stem_files:
            continue
        stems = {k: decode(v, sr=sr) for k, v in stem_files.items()}
        n = min(len(a) for a in stems.values())
        if mix_key is not None:
            mix = decode(files[mix_key], sr=sr)
            n = min(n, len(mix))
            mix = mix[:n]
        else:
            mix = np.zeros((n, 2), np.float32)
            for a in stems.values():
                mix += a[:n]
        yield song.name, mix, {k: a[:n] for k, a in stems.items()}


def songs_for(data_dir: Path, layout: str, sr: int):
    if layout == "auto":
        layout = detect_layout(data_dir)
    if layout == "dev":
        return layout, dev_songs(data_dir)
    return layout, folder_songs(data_dir, sr)


# --------------------------------------------------------------------------- matching stems
def _canon(stem: str) -> str:
    return "accompaniment" if stem in ACC_ALIASES else stem


def match(reference: dict[str, np.ndarray], estimate: dict[str, np.ndarray]
          ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Pair ground-truth stems with model sources (see the module doc for ``accompaniment``)."""
    ref = {_canon(k): v for k, v in reference.items()}
    est = {_canon(k): v for k, v in estimate.items()}
    refs, ests = {}, {}
    for stem, audio in ref.items():
        if stem in est:
            refs[stem], ests[stem] = audio, est[stem]
    has_voc = "vocals" in ref and "vocals" in est
    if has_voc and "accompaniment" not in refs:
        rest_ref = [v for k, v in ref.items() if k != "vocals"]
        rest_est = [v for k, v in est.items() if k != "vocals"]
        if rest_ref and rest_est:
            refs["accompaniment"] = rest_ref[0] if len(rest_ref) == 1 else np.sum(rest_ref, axis=0)
            ests["accompaniment"] = rest_est[0] if len(rest_est) == 1 else np.sum(rest_est, axis=0)
    order = [s for s in ("vocals", "accompaniment", "drums", "bass", "other") if s in refs]
    order += sorted(s for s in refs if s not in order)
    return {s: refs[s] for s in order}, {s: ests[s] for s in order}


# --------------------------------------------------------------------------- model loading
def load(name: str, device: str | None, options: dict):
    """The model ``name`` with ``options``; an option this model family does not take is
    ``InvalidArgument`` (the registry finds catalogue and local models alike)."""
    from .core import registry
    from .errors import CIError
    try:
        return registry.load_model(name, device=device, **options)
    except TypeError as exc:   # an option this model family does not take
        raise CIError("InvalidArgument", f"model {name!r} does not take these options "
                      f"{sorted(options)}: {exc}") from None


# --------------------------------------------------------------------------- evaluation
def _stat(rows: list[dict], stem: str, key: str, fn) -> float:
    vals = [r["scores"][stem][key] for r in rows if stem in r["scores"]]
    vals = [v for v in vals if v is not None and math.isfinite(v)]
    return float(fn(vals)) if vals else float("nan")


def summarise(rows: list[dict], field: str = "scores") -> dict:
    stems: list[str] = []
    for r in rows:
        for s in r.get(field) or {}:
            if s not in stems:
                stems.append(s)
    rr = [{"scores": r[field]} for r in rows if r.get(field)]
    return {
        "median": {s: {k: _stat(rr, s, k, np.median) for k in ("museval", "global")} for s in stems},
        "mean": {s: {k: _stat(rr, s, k, np.mean) for k in ("museval", "global")} for s in stems},
    }


def evaluate_model(model, songs, *, baseline: bool = False, limit: int | None = None,
                   log=None) -> dict:
    """Separate and score every song; returns the JSON-ready report (without header fields)."""
    rows: list[dict] = []
    sep_total = audio_total = score_total = 0.0
    for i, (name, mix, ref) in enumerate(songs):
        if limit is not None and i >= limit:
            break
        seconds = len(mix) / model.samplerate
        t0 = time.perf_counter()
        est = model.separate(mix)
        t_sep = time.perf_counter() - t0
        refs, ests = match(ref, est)
        if not refs:
            raise SystemExit(f"separator eval: song {name!r}: none of its stems {sorted(ref)} matches "
                             f"the model's sources {list(model.sources)}")
        t1 = time.perf_counter()
        row = {"song": name, "seconds": round(seconds, 3), "separate_s": round(t_sep, 3),
               "scores": score(refs, ests, model.samplerate)}
        if baseline:
            row["baseline"] = score(refs, {s: mix[: len(refs[s])] for s in refs}, model.samplerate)
        score_total += time.perf_counter() - t1
        sep_total += t_sep
        audio_total += seconds
        rows.append(row)
        if log:
            log(row)
    out = {"songs": rows, **summarise(rows)}
    if baseline:
        out["baseline"] = summarise(rows, "baseline")
    out.update({"audio_s": round(audio_total, 3), "separate_s": round(sep_total, 3),
                "score_s": round(score_total, 3),
                "x_realtime": round(audio_total / sep_total, 2) if sep_total else None})
    return out
