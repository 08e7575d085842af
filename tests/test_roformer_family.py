"""The RoFormer family in the engine, the registry and the command line (issue 18): installed and
found like the other families, pulled from a (local) mirror, the default for the voice modes when
a vocal model is installed, MusicMode from a multi-stem checkpoint, equal to the streaming
separator it wraps."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from roformer_ref import randomize, small_raw, write_yaml
from separator.core.roformer import BS_ROFORMER, MEL_BAND_ROFORMER, build_model, parse_config
from separator.media import load_audio

REPO = Path(__file__).resolve().parents[1]
MIX = Path(__file__).resolve().parent / "data" / "mixtures" / "vocadito-vibeace" / "mixture.flac"
SR = 44100


def cli(*args: str, env: dict | None = None, cwd: Path | None = None):
    return subprocess.run([sys.executable, "-m", "separator", *args], capture_output=True, text=True,
                          cwd=cwd or REPO, env={**os.environ, "SEPARATOR_OFFLINE": "1", **(env or {})}, timeout=600)


def make_model(folder: Path, name: str, arch: str = BS_ROFORMER, stems=("vocals", "other"), seed: int = 0) -> Path:
    """A random-init RoFormer with a published band layout, saved as MSST ships them."""
    raw = small_raw(arch, stems=stems)
    model = build_model(parse_config(raw))
    randomize(model, seed)
    folder.mkdir(parents=True, exist_ok=True)
    write_yaml(folder / f"{name}.yaml", raw)
    torch.save(model.state_dict(), folder / f"{name}.ckpt")
    return folder / f"{name}.yaml"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    make_model(root / "roformer", "tiny_bs")
    make_model(root / "roformer", "tiny_mel", MEL_BAND_ROFORMER, seed=1)
    return root


@pytest.fixture(scope="module")
def song(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("song") / "song.wav"
    subprocess.run([sys.executable, "-c", "import sys"], check=True)
    from conftest import run_ffmpeg
    run_ffmpeg("-t", "4", "-i", str(MIX), "-c:a", "pcm_f32le", str(out))
    return out


@pytest.mark.parametrize("name", ["tiny_bs", "tiny_mel"])
def test_separate_with_a_roformer_from_the_model_dir(models, song, tmp_path, name):
    proc = cli("separate", str(song), "-o", str(tmp_path), "--model", name, "--model-dir", str(models),
               "--codec", "wav", "--sample-format", "f32", "-q")
    assert proc.returncode == 0, proc.stderr
    v, b = (load_audio(tmp_path / name / "song" / f"{r}.wav", SR, 2) for r in ("vocals", "background"))
    x = load_audio(song, SR, 2)
    assert v.shape == x.shape and np.abs(v + b - x).max() < 1e-5      # background = mixture - vocals
    assert np.abs(v).max() > 1e-4                                      # the model did something


def test_the_engine_equals_the_streaming_separator_it_wraps(models, song):
    from separator.core import registry
    from separator.jobs.engine import FileInput, separate_audio
    loaded = registry.load_model("tiny_bs", device="cpu", model_dir=str(models))
    got = separate_audio(FileInput(song), model=loaded)
    x = load_audio(song, SR, 2)
    want = loaded.separator.separate(x)["vocals"]
    assert np.array_equal(got.roles["vocals"], want)


def test_a_yaml_path_names_a_model_outside_the_model_dir(tmp_path, song):
    yaml_path = make_model(tmp_path / "elsewhere", "mine", seed=3)
    proc = cli("separate", str(song), "-o", str(tmp_path / "out"), "--model", str(yaml_path), "--codec", "wav", "-q")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "mine" / "song" / "vocals.wav").is_file()
    yaml_path.with_suffix(".ckpt").unlink()
    bad = cli("separate", str(song), "-o", str(tmp_path / "out2"), "--model", str(yaml_path))
    assert bad.returncode == 2 and "no checkpoint beside it" in bad.stderr and bad.stderr.count("\n") == 1


def test_an_installed_vocal_roformer_is_the_default_for_the_voice_modes(models, tmp_path):
    from separator.core import registry
    assert registry.default_model("AudioAndBackground", str(models)) in ("tiny_bs", "tiny_mel")
    assert registry.default_model("IsAudio", str(models)) in ("tiny_bs", "tiny_mel")
    assert registry.default_model("MusicMode", str(models)) != "tiny_bs"       # no bass and drums
    assert registry.default_model("AudioAndBackground", str(tmp_path / "empty")) == "spleeter-2stems"
    listed = cli("models", "list", "--model-dir", str(models))
    assert listed.returncode == 0, listed.stderr
    assert "IsAudio, IsBackground, AudioAndBackground: tiny_" in listed.stdout
    assert "model_bs_roformer_ep_317_sdr_12.9755" in listed.stdout


def test_a_four_stem_roformer_serves_music_mode(tmp_path, song):
    models = tmp_path / "models"
    make_model(models / "roformer", "tiny4", stems=("vocals", "bass", "drums", "other"), seed=4)
    from separator.core import registry
    assert registry.default_model("MusicMode", str(models)) == "tiny4"
    proc = cli("separate", str(song), "-o", str(tmp_path / "out"), "--mode", "MusicMode", "--codec", "wav",
               "--model-dir", str(models), "-q")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "out" / "tiny4" / "song").iterdir()) == [
        "bass.wav", "drums.wav", "other.wav", "vocals.wav"]


@pytest.fixture
def mirror(tmp_path) -> tuple[Path, dict]:
    """A local mirror (file: URLs) and a catalogue that lists its model, as an internal one would."""
    src = tmp_path / "mirror"
    yaml_path = make_model(src, "tiny_pub", seed=5)
    ckpt = yaml_path.with_suffix(".ckpt")
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    cat = {"family": "roformer", "models": {"tiny_pub": {
        "architecture": "bs_roformer", "stems": ["vocals", "other"], "description": "test model",
        "checkpoint": {"url": ckpt.as_uri(), "sha256": digest, "size": ckpt.stat().st_size},
        "config": {"url": yaml_path.as_uri(), "sha256": None}, "licence": "test",
        "published_sdr": {}}}}
    path = tmp_path / "catalogue.yaml"
    path.write_text(yaml.safe_dump(cat))
    return path, cat


def test_models_pull_from_a_local_mirror_installs_a_model_that_separates(mirror, tmp_path, song):
    catalogue, cat = mirror
    env = {"SEPARATOR_ROFORMER_CATALOGUE": str(catalogue)}
    models = tmp_path / "models"
    pulled = cli("models", "pull", "tiny_pub", "--model-dir", str(models), env=env)
    assert pulled.returncode == 0, pulled.stderr
    assert sorted(p.name for p in (models / "roformer").iterdir()) == ["tiny_pub.ckpt", "tiny_pub.yaml"]
    ok = cli("models", "verify", "tiny_pub", "--model-dir", str(models), env=env)
    assert ok.returncode == 0 and ok.stdout.count("ok") == 2, ok.stdout
    proc = cli("separate", str(song), "-o", str(tmp_path / "out"), "--model", "tiny_pub", "--model-dir",
               str(models), "--codec", "wav", "-q", env=env)
    assert proc.returncode == 0, proc.stderr
    with open(models / "roformer" / "tiny_pub.ckpt", "r+b") as fh:     # a damaged file is caught
        fh.seek(100)
        fh.write(b"\0" * 16)
    bad = cli("models", "verify", "--model-dir", str(models), env=env)
    assert bad.returncode == 1 and "corrupt" in bad.stdout


def test_a_checkpoint_unlike_the_published_one_is_refused(mirror, tmp_path):
    catalogue, cat = mirror
    cat["models"]["tiny_pub"]["checkpoint"]["sha256"] = "0" * 64
    catalogue.write_text(yaml.safe_dump(cat))
    models = tmp_path / "models"
    proc = cli("models", "pull", "tiny_pub", "--model-dir", str(models), env={"SEPARATOR_ROFORMER_CATALOGUE": str(catalogue)})
    assert proc.returncode == 2 and "is not the published file" in proc.stderr
    assert not (models / "roformer" / "tiny_pub.ckpt").exists() and not list((models / "roformer").glob("*.part"))


def test_without_a_published_digest_pull_records_the_one_it_saw(mirror, tmp_path):
    catalogue, cat = mirror
    cat["models"]["tiny_pub"]["checkpoint"]["sha256"] = None
    catalogue.write_text(yaml.safe_dump(cat))
    env = {"SEPARATOR_ROFORMER_CATALOGUE": str(catalogue)}
    models = tmp_path / "models"
    assert cli("models", "pull", "tiny_pub", "--model-dir", str(models), env=env).returncode == 0
    recorded = (models / "roformer" / "tiny_pub.ckpt.sha256").read_text().strip()
    assert recorded == hashlib.sha256((models / "roformer" / "tiny_pub.ckpt").read_bytes()).hexdigest()


def test_offline_a_missing_model_fails_at_once_saying_what_to_put_where(tmp_path, song):
    started = time.monotonic()
    proc = cli("separate", str(song), "--model", "model_bs_roformer_ep_317_sdr_12.9755", "--model-dir",
               str(tmp_path / "m"), "-o", str(tmp_path / "o"))
    assert time.monotonic() - started < 30
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "model_bs_roformer_ep_317_sdr_12.9755.ckpt" in proc.stderr and str(tmp_path / "m" / "roformer") in proc.stderr
    pulled = cli("models", "pull", "model_bs_roformer_ep_317_sdr_12.9755", "--model-dir", str(tmp_path / "m"))
    assert pulled.returncode == 2 and "SEPARATOR_OFFLINE is set" in pulled.stderr


def test_options_that_do_not_apply_are_refused(models, song, tmp_path):
    proc = cli("separate", str(song), "--model", "tiny_bs", "--model-dir", str(models), "--shifts", "2",
               "-o", str(tmp_path))
    assert proc.returncode == 2 and "shifts does not apply to RoFormer" in proc.stderr
