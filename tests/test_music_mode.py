"""MusicMode end to end with a Demucs model: four outputs with the right codecs, that sum back
to the input; the Model extension node; the default model choice; CLI knobs."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import demucs_fixtures as fx
from conftest import run_ffmpeg
from separator.core import registry
from separator.jobs.engine import separate_file
from separator.media import load_audio, probe
from separator.request import AudioConfig

REPO = Path(__file__).resolve().parents[1]
BUCKET = "test-1234567890"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return fx.tiny_model_dir(tmp_path_factory.mktemp("models"), "music")


@pytest.fixture(scope="module")
def clip(data_file, tmp_path_factory) -> Path:
    src = data_file("stem_mp4")
    out = tmp_path_factory.mktemp("clip") / "rock.wav"
    run_ffmpeg("-t", "3", "-i", str(src), "-map", "0:a:0", "-c:a", "pcm_s16le", str(out))
    return out


def test_music_mode_four_outputs_sum_to_input(clip, model_dir, tmp_path):
    targets = {r: tmp_path / f"{r}.wav" for r in ("vocals", "background", "bass", "drums")}
    result = separate_file(clip, targets, mode="MusicMode", model="tiny_htdemucs",
                           audio_config=AudioConfig(codec="wav", samplerate=8000, channels=1),
                           model_options={"model_dir": str(model_dir)})
    assert list(result.outputs) == ["vocals", "background", "bass", "drums"]
    mix = load_audio(clip, 44100, 2)
    parts = [load_audio(targets[r], 44100, 2) for r in targets]
    # MusicMode ignores Samplerate/Channels: the defaults (44100, source channels) apply
    for r in targets:
        s = probe(targets[r]).audio_streams[0]
        assert (s.codec, s.samplerate, s.channels) == ("pcm_s16le", 44100, 2)
    err = mix - np.sum(parts, axis=0)
    snr = 10 * np.log10(np.sum(mix ** 2) / np.sum(err ** 2))
    assert snr > 30, snr


def test_music_mode_through_separator_run(clip, model_dir, tmp_path):
    import xmltodict

    root = tmp_path / "storage"
    (root / BUCKET / "in").mkdir(parents=True)
    run_ffmpeg("-i", str(clip), "-c:a", "aac", "-b:a", "128k", str(root / BUCKET / "in" / "rock.m4a"))
    body = f"""<Request><Tag>VoiceSeparate</Tag><Input><Object>in/rock.m4a</Object></Input>
      <Operation><VoiceSeparate><AudioMode>MusicMode</AudioMode><AudioConfig><Codec>MP3</Codec>
      </AudioConfig><Model>tiny_htdemucs</Model></VoiceSeparate><Output><Region>ap-guangzhou</Region>
      <Bucket>{BUCKET}</Bucket><Object>out/bg.${{ext}}</Object><AuObject>out/vocal.${{ext}}</AuObject>
      <BassObject>out/bass.${{ext}}</BassObject><DrumObject>out/drum.${{ext}}</DrumObject></Output>
      </Operation></Request>"""
    req = tmp_path / "req.xml"
    req.write_text(body)
    env = dict(os.environ, SEPARATOR_MODEL_DIR=str(model_dir))
    proc = subprocess.run([sys.executable, "-m", "separator", "run", str(req), "--storage", str(root),
                           "--bucket", BUCKET, "--region", "ap-guangzhou"], capture_output=True,
                          text=True, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    detail = xmltodict.parse(proc.stdout)["Response"]["JobsDetail"]
    assert detail["State"] == "Success"
    names = detail["Operation"]["MediaResult"]["OutputFile"]["ObjectName"]
    assert names == ["out/vocal.mp3", "out/bg.mp3", "out/bass.mp3", "out/drum.mp3"]
    assert detail["Operation"]["SeparatorModel"] == "tiny_htdemucs"
    for name in names:
        s = probe(root / BUCKET / name).audio_streams[0]
        assert s.codec == "mp3" and s.samplerate == 44100


def test_music_mode_without_a_four_stem_model_says_what_to_install(clip, tmp_path, monkeypatch):
    monkeypatch.setenv("SEPARATOR_MODEL_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("SEPARATOR_OFFLINE", "1")
    targets = {r: tmp_path / f"{r}.mp3" for r in ("vocals", "background")}
    from separator.errors import CIError
    with pytest.raises(CIError) as exc:
        separate_file(clip, targets, mode="MusicMode", audio_config=AudioConfig(codec="mp3"))
    assert exc.value.code == "ModelUnavailable"
    assert "htdemucs" in exc.value.message and "copy" in exc.value.message
    assert not any(tmp_path.glob("*.mp3"))


def test_default_model_prefers_installed_demucs(model_dir, tmp_path):
    # Nothing of the catalogue installed: the bundled model for 2-stem modes.
    assert registry.default_model("AudioAndBackground", str(tmp_path)) == "spleeter-2stems"
    # Pretend htdemucs is installed: it becomes the default for both kinds of mode.
    from separator.core.demucs.catalogue import demucs_catalogue
    repo = tmp_path / "demucs"
    repo.mkdir()
    for f in demucs_catalogue()["htdemucs"].files:
        (repo / f.file).write_bytes(b"x")
    assert registry.default_model("AudioAndBackground", str(tmp_path)) == "htdemucs"
    assert registry.default_model("MusicMode", str(tmp_path)) == "htdemucs"


def test_two_stem_mode_with_demucs_background_is_everything_else(clip, model_dir, tmp_path):
    targets = {"vocals": tmp_path / "v.flac", "background": tmp_path / "b.flac"}
    separate_file(clip, targets, mode="AudioAndBackground", model="tiny_htdemucs",
                  audio_config=AudioConfig(codec="flac"), model_options={"model_dir": str(model_dir)})
    mix = load_audio(clip, 44100, 2)
    total = load_audio(targets["vocals"], 44100, 2) + load_audio(targets["background"], 44100, 2)
    snr = 10 * np.log10(np.sum(mix ** 2) / np.sum((mix - total) ** 2))
    assert snr > 30, snr


def test_segment_beyond_the_model_is_refused(clip, model_dir, tmp_path):
    from separator.errors import CIError
    with pytest.raises(CIError) as exc:
        separate_file(clip, {"vocals": tmp_path / "v.mp3"}, mode="IsAudio", model="tiny_htdemucs",
                      model_options={"model_dir": str(model_dir), "segment": 1000.0})
    assert exc.value.code == "InvalidArgument" and "segment" in exc.value.message
    assert not (tmp_path / "v.mp3").exists()
