"""What the user gets out: sample formats (16/24-bit and float), on the command line and as the
request's ``AudioConfig.SampleFormat`` extension."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import run_ffmpeg
from separator.errors import CIError
from separator.media import load_audio, probe
from separator.request import parse_job_request, render_response

REPO = Path(__file__).resolve().parents[1]
SR = 44100


def cli(*args: str, cwd: Path | None = None):
    return subprocess.run([sys.executable, "-m", "separator", *args], capture_output=True, text=True,
                          cwd=cwd or REPO, env=dict(os.environ), timeout=300)


@pytest.fixture(scope="module")
def sources(tmp_path_factory, noise_music) -> dict[str, Path]:
    """The same 6 s of music as 16-bit, 24-bit and float wav, and as mp3."""
    x, sr = noise_music
    d = tmp_path_factory.mktemp("formats")
    raw = d / "x.f32"
    raw.write_bytes(np.ascontiguousarray(x, np.float32).tobytes())
    out = {}
    for name, codec in (("s16", "pcm_s16le"), ("s24", "pcm_s24le"), ("f32", "pcm_f32le"), ("mp3", "libmp3lame")):
        path = d / f"{name}.{'mp3' if name == 'mp3' else 'wav'}"
        run_ffmpeg("-f", "f32le", "-ar", str(sr), "-ac", "2", "-i", str(raw), "-c:a", codec, str(path))
        out[name] = path
    return out


def _codec(path: Path) -> tuple[str, str | None]:
    s = probe(path).audio
    return s.codec, s.sample_format


@pytest.mark.parametrize("source, codec, want", [
    ("s16", "wav", ("pcm_s16le", "s16")),
    ("s24", "wav", ("pcm_s24le", "s24")),       # 24-bit wav in -> 24-bit wav out
    ("f32", "wav", ("pcm_f32le", "f32")),
    ("mp3", "wav", ("pcm_s16le", "s16")),       # a lossy source has no format of its own: 16-bit
    ("s24", "flac", ("flac", "s24")),
    ("f32", "flac", ("flac", "s16")),           # flac cannot hold float: 16-bit
])
def test_lossless_outputs_keep_the_source_format_by_default(sources, tmp_path, source, codec, want):
    proc = cli("separate", str(sources[source]), "-o", str(tmp_path), "--codec", codec, "-q")
    assert proc.returncode == 0, proc.stderr
    for role in ("vocals", "background"):
        assert _codec(next(tmp_path.rglob(f"{role}.{codec}"))) == want


@pytest.mark.parametrize("fmt, codec, want", [("s24", "wav", "pcm_s24le"), ("f32", "wav", "pcm_f32le"),
                                              ("s16", "flac", "flac"), ("s24", "flac", "flac")])
def test_sample_format_option(sources, tmp_path, fmt, codec, want):
    proc = cli("separate", str(sources["s16"]), "-o", str(tmp_path), "--codec", codec, "--sample-format", fmt, "-q")
    assert proc.returncode == 0, proc.stderr
    assert _codec(next(tmp_path.rglob(f"vocals.{codec}"))) == (want, fmt)


def test_float_wav_is_exact_and_holds_values_past_full_scale(sources, tmp_path):
    """f32 output is the engine's float result itself: vocals + background = the input, exactly
    to float rounding, and nothing is clipped at full scale."""
    loud = tmp_path / "loud.wav"
    x = load_audio(sources["f32"], SR, 2) * 4.0           # peaks well past 1.0
    raw = tmp_path / "loud.f32"
    raw.write_bytes(x.astype("<f4").tobytes())
    run_ffmpeg("-f", "f32le", "-ar", str(SR), "-ac", "2", "-i", str(raw), "-c:a", "pcm_f32le", str(loud))
    proc = cli("separate", str(loud), "-o", str(tmp_path / "out"), "--codec", "wav", "-q")
    assert proc.returncode == 0, proc.stderr
    v, b = (load_audio(next((tmp_path / "out").rglob(f"{r}.wav")), SR, 2) for r in ("vocals", "background"))
    assert np.abs(v + b - x).max() < 1e-5
    assert max(np.abs(v).max(), np.abs(b).max()) > 1.0


@pytest.mark.parametrize("codec, fmt, ok", [("wav", "f32", True), ("flac", "s24", True), ("flac", "f32", False),
                                            ("mp3", "s16", False), ("wav", "s8", False)])
def test_request_sample_format_extension(codec, fmt, ok):
    body = f"""<Request><Tag>VoiceSeparate</Tag><Input><Object>in.wav</Object></Input><Operation>
      <VoiceSeparate><AudioMode>IsAudio</AudioMode><AudioConfig><Codec>{codec}</Codec>
      <SampleFormat>{fmt.upper()}</SampleFormat></AudioConfig></VoiceSeparate>
      <Output><Region>ap-guangzhou</Region><Bucket>test-1250000000</Bucket><AuObject>v.${{ext}}</AuObject>
      </Output></Operation></Request>"""
    if not ok:
        with pytest.raises(CIError) as err:
            parse_job_request(body)
        assert err.value.code == "InvalidArgument" and "SampleFormat" in err.value.message
        return
    req, _ = parse_job_request(body)
    assert req.params.audio_config.sample_format == fmt
    from separator.jobs.job import new_record
    rendered = render_response([new_record(req, bucket="test-1250000000", region="ap-guangzhou")]).decode()
    assert f"<SampleFormat>{fmt}</SampleFormat>" in rendered


def test_sample_format_is_left_out_of_the_response_when_not_asked():
    body = """<Request><Tag>VoiceSeparate</Tag><Input><Object>in.wav</Object></Input><Operation>
      <VoiceSeparate><AudioMode>IsAudio</AudioMode><AudioConfig><Codec>wav</Codec></AudioConfig></VoiceSeparate>
      <Output><Region>ap-guangzhou</Region><Bucket>test-1250000000</Bucket><AuObject>v.${ext}</AuObject>
      </Output></Operation></Request>"""
    req, _ = parse_job_request(body)
    from separator.jobs.job import new_record
    assert b"SampleFormat" not in render_response([new_record(req, bucket="test-1250000000", region="x")])
