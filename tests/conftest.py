"""Shared fixtures: the real audio committed in ``tests/data`` (see its README.md: short
excerpts of public-domain / CC BY recordings, and mixtures with exact stems), the optional
research-only dev set in ``../shared/data`` (skipped when absent), and small synthetic media
made with ffmpeg in a session temp dir."""
from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

TEST_DATA = Path(__file__).resolve().parent / "data"          # committed, built by scripts/make_test_data.py
MIXTURES = TEST_DATA / "mixtures"                               # <name>/{mixture,vocals,accompaniment}.flac
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"   # not committed (research licences)

# tests/ importable in every process the tests start (servers, their workers, Ray nodes), for
# the fake engine their configs name (``fake_engine:fake_engine``)
TESTS = str(Path(__file__).resolve().parent)
if TESTS not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (TESTS, os.environ.get("PYTHONPATH")) if p)

# Real files used by the tests (relative to TEST_DATA); see tests/data/README.md.
DATA_FILES = {
    "ogg": "formats/song.ogg",                                  # 8 s song with vocals, 44.1k stereo vorbis
    "ogg_cover": "formats/cover.ogg",                           # vorbis + an attached mjpeg cover picture
    "ogg_16k_mono": "formats/speech_16k_mono.ogg",              # speech, 16 kHz mono
    "flac": "mixtures/vocadito-vibeace/mixture.flac",           # 7.5 s, 44.1k stereo 16-bit
    "mp3": "formats/song.mp3",                                  # 6 s, 128 kbps CBR with a Xing/LAME header
    "stem_mp4": "formats/song.stem.mp4",                        # NI-stems-like: 5 aac streams
}
# WAV inputs are written on first use from committed FLAC (the same samples): (source, ffmpeg args).
DERIVED_FILES = {
    "wav": ("mixtures/librispeech-brahms/mixture.flac", ["-c:a", "pcm_s16le"]),          # 44.1k stereo
    "wav_mono": ("mixtures/ljspeech-sugarplum/vocals.flac",                              # 44.1k mono:
                 ["-af", "pan=mono|c0=c0", "-c:a", "pcm_s16le"]),                        # (left = right)
}


def data_path(key: str) -> Path:
    """A committed file of ``DATA_FILES`` (a missing one is an error, not a skip)."""
    p = TEST_DATA / DATA_FILES[key]
    if not p.is_file():
        raise FileNotFoundError(f"committed test file missing: {p} (rebuild: scripts/make_test_data.py)")
    return p


def mixture_path(name: str, stem: str = "mixture") -> Path:
    return MIXTURES / name / f"{stem}.flac"


def mixture_names() -> list[str]:
    return sorted(p.name for p in MIXTURES.iterdir() if (p / "mixture.flac").is_file())


@functools.lru_cache(maxsize=None)
def _load_mixture(name: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    from separator.evaluate import decode
    stems = {s: decode(mixture_path(name, s)) for s in ("vocals", "accompaniment")}
    mix = decode(mixture_path(name))
    # the mixture is defined as the exact sum of the stems (stored as their integer sum)
    assert np.array_equal(mix, stems["vocals"] + stems["accompaniment"]), name
    return mix, stems


def committed_mixtures() -> list[tuple[str, np.ndarray, dict[str, np.ndarray]]]:
    """``[(name, mixture, {"vocals", "accompaniment"})]``: the committed real mixtures, decoded
    to 44.1 kHz stereo float32 (fresh copies of a cached decode); mixture == vocals + accompaniment."""
    out = []
    for n in mixture_names():
        mix, stems = _load_mixture(n)
        out.append((n, mix.copy(), {s: a.copy() for s, a in stems.items()}))
    return out


def long_mixture(seconds: float, first: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``seconds`` of the committed mixtures played one after the other, starting with the
    ``first``-th (repeated if they are shorter), with their stems: still an exact sum."""
    items = committed_mixtures()
    n = int(round(seconds * 44100))
    mixes, stems, total, i = [], {"vocals": [], "accompaniment": []}, 0, first
    while total < n:
        _name, mix, refs = items[i % len(items)]
        mixes.append(mix)
        for s in stems:
            stems[s].append(refs[s])
        total += len(mix)
        i += 1
    return (np.concatenate(mixes)[:n], {s: np.concatenate(v)[:n] for s, v in stems.items()})


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The research-only dev set (not redistributable, so not committed): only for the few
    checks against figures measured on it (``shared/reference``)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared test audio not found at {SHARED_DATA} (expected ../shared/data "
                    "next to the repository)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def data_file(media_dir):
    """``data_file('ogg')`` -> Path of a real file: committed in tests/data, or (``wav``,
    ``wav_mono``) written losslessly from a committed FLAC on first use."""
    made: dict[str, Path] = {}

    def get(key: str) -> Path:
        if key in DERIVED_FILES:
            if key not in made:
                src, args = DERIVED_FILES[key]
                dst = media_dir / f"data_{key}.wav"
                run_ffmpeg("-i", str(TEST_DATA / src), *args, "-fflags", "+bitexact", "-map_metadata", "-1",
                           str(dst))
                made[key] = dst
            return made[key]
        return data_path(key)
    return get


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("media")


def run_ffmpeg(*args: str) -> None:
    from separator.media import ffmpeg_exe

    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-y", *args],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg {' '.join(args)} failed: {proc.stderr[-500:]}")


@pytest.fixture(scope="session")
def synth(media_dir):
    """Small synthetic media made with ffmpeg, created on first use; ``synth('mono_wav')``."""
    recipes = {
        # 3 s, 44.1 kHz stereo, 440 Hz left / 660 Hz right
        "stereo_wav": ("stereo.wav", ["-f", "lavfi", "-i", "sine=f=440:d=3", "-f", "lavfi", "-i",
                                      "sine=f=660:d=3", "-filter_complex", "[0][1]amerge=inputs=2",
                                      "-c:a", "pcm_s16le"]),
        "mono_wav": ("mono.wav", ["-f", "lavfi", "-i", "sine=f=440:d=3:sample_rate=22050",
                                  "-c:a", "pcm_s16le"]),
        "six_ch_wav": ("six.wav", ["-f", "lavfi", "-i",
                                   "aevalsrc=" + "|".join(f"0.2*sin({300 + 100 * k}*2*PI*t)" for k in range(6))
                                   + ":s=48000:d=2:c=5.1", "-c:a", "pcm_s16le"]),
        "three_ch_wav": ("three.wav", ["-f", "lavfi", "-i",
                                       "aevalsrc=0.2*sin(300*2*PI*t)|0.2*sin(400*2*PI*t)|0.2*sin(500*2*PI*t)"
                                       ":s=44100:d=2:c=3.0", "-c:a", "pcm_s16le"]),
        # 4 s mp4: a video track first, then 440 Hz aac audio
        "video_mp4": ("video.mp4", ["-f", "lavfi", "-i", "testsrc=d=4:s=160x120:r=10",
                                    "-f", "lavfi", "-i", "sine=f=440:d=4",
                                    "-map", "0:v", "-map", "1:a", "-c:v", "mpeg4", "-c:a", "aac",
                                    "-b:a", "96k", "-shortest"]),
        "video_only_mp4": ("video_only.mp4", ["-f", "lavfi", "-i", "testsrc=d=2:s=160x120:r=10",
                                              "-c:v", "mpeg4"]),
        "zero_wav": ("zero.wav", ["-f", "lavfi", "-i", "anullsrc=r=44100:cl=stereo", "-t", "0",
                                  "-c:a", "pcm_s16le"]),
        # mp3 without a Xing header: ffmpeg can only estimate its duration from the bitrate
        "noxing_mp3": ("noxing.mp3", ["-f", "lavfi", "-i", "sine=f=440:d=10", "-ac", "2",
                                      "-c:a", "libmp3lame", "-b:a", "128k", "-write_xing", "0"]),
    }
    made: dict[str, Path] = {}

    def get(key: str) -> Path:
        if key not in made:
            if key == "empty":
                p = media_dir / "empty.mp3"
                p.write_bytes(b"")
            elif key == "text_mp3":
                p = media_dir / "text.mp3"
                p.write_text("this is a text file, not an mp3\n" * 40)
            else:
                name, args = recipes[key]
                p = media_dir / name
                run_ffmpeg(*args, str(p))
            made[key] = p
        return made[key]
    return get


def _cut(src: Path, dst: Path, keep: float = 1 / 3, hole: bool = False) -> Path:
    """Write the first ``keep`` of ``src`` to ``dst`` (or, with ``hole``, drop its middle third)."""
    data = src.read_bytes()
    n = len(data)
    if hole:
        dst.write_bytes(data[: n // 3] + data[2 * n // 3:])
    else:
        dst.write_bytes(data[: int(n * keep)])
    return dst


@pytest.fixture(scope="session")
def cut():
    """``cut(src, dst, keep=1/3, hole=False)``: a truncated (or middle-removed) copy of a file."""
    return _cut


@pytest.fixture(scope="session")
def noise_music():
    """6 s of deterministic 44.1 kHz stereo test audio (tones + noise), hard for lossy codecs."""
    rng = np.random.default_rng(1234)
    sr = 44100
    t = np.arange(6 * sr) / sr
    tones = 0.2 * np.sin(2 * np.pi * 220 * t) + 0.1 * np.sin(2 * np.pi * 1760 * t * (1 + 0.1 * t))
    noise = 0.08 * rng.standard_normal((t.size, 2))
    x = (tones[:, None] + noise).astype(np.float32)
    return x, sr
