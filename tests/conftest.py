"""Shared fixtures: the real audio in ``../shared/data`` (skipped when absent) and small synthetic
media made with ffmpeg in a session temp dir."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# Real files used by the tests (relative to SHARED_DATA); see its INVENTORY.tsv.
DATA_FILES = {
    "ogg": "librosa-data/Karissa_Hobbs_-_Lets_Go_Fishin.hq.ogg",          # 133 s, 44.1k stereo vorbis
    "ogg_cover": "librosa-data/Kevin_MacLeod_-_Vibe_Ace.hq.ogg",           # vorbis + mjpeg cover art
    "ogg_16k_mono": "librosa-data/198-209-0000.hq.ogg",                    # speech, 16 kHz mono
    "wav": "mirdata-test-resources/brid/BRID_1.0/Data/Acoustic Mixtures/4 Instruments/[0001] M4-01-SA.wav",
    "wav_mono": "mirdata-test-resources/ballroom/B_1.0/audio/Waltz/Media-105901.wav",
    "flac": "mirdata-test-resources/cuidado/C_1.0/audio/cuidado_FallaCancion.flac",
    "mp3": "waveunet-musdb18-examples/Cristina Vane - So Easy/accompaniment_estimate.mp3",
    "stem_mp4": "museval-musdb18-80srock/Music Delta - 80s Rock.stem.mp4",  # 5 aac streams
}


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared test audio not found at {SHARED_DATA} (expected ../shared/data "
                    "next to the repository)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def data_file(shared_data):
    """``data_file('ogg')`` -> Path of a real file, skipping the test if it is missing."""
    def get(key: str) -> Path:
        p = shared_data / DATA_FILES[key]
        if not p.is_file():
            pytest.skip(f"shared test file missing: {p}")
        return p
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
