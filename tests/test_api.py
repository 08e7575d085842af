"""The user's API and outputs (issue 16): Separator on every kind of input against the command
line's float output of the same file; several inputs at once; names that say which model made
them and never collide; clip control."""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import run_ffmpeg
from separator.errors import CIError
from separator.media import load_audio, probe

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
MIX = DATA / "mixtures" / "vocadito-vibeace" / "mixture.flac"


def cli(*args: str, cwd: Path | None = None):
    return subprocess.run([sys.executable, "-m", "separator", *args], capture_output=True, text=True,
                          cwd=cwd or REPO, env=dict(os.environ), timeout=600)


@pytest.fixture(scope="module")
def sep():
    from separator import Separator
    return Separator(device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    """A real 44.1 kHz mixture as 16-bit wav; the same resampled to 48 kHz; and as 24-bit."""
    d = tmp_path_factory.mktemp("clips")
    out = {"44k": d / "song44.wav", "48k": d / "song48.wav", "s24": d / "song24.wav"}
    run_ffmpeg("-i", str(MIX), "-c:a", "pcm_s16le", str(out["44k"]))
    run_ffmpeg("-i", str(MIX), "-ar", "48000", "-c:a", "pcm_s16le", str(out["48k"]))
    run_ffmpeg("-i", str(MIX), "-c:a", "pcm_s24le", str(out["s24"]))
    return out


def cli_float(path: Path, rate: int, tmp: Path, mode: str = "AudioAndBackground") -> dict[str, np.ndarray]:
    """The command line's float output of ``path`` at ``rate``: ``{role: (channels, frames)}``."""
    proc = cli("separate", str(path), "-o", str(tmp), "--codec", "wav", "--sample-format", "f32",
               "--samplerate", str(rate), "--mode", mode, "--precision", "fp32", "--filename", "{role}.{ext}", "-q")
    assert proc.returncode == 0, proc.stderr
    ch = probe(path).channels
    return {p.stem: load_audio(p, rate, ch).T for p in tmp.glob("*.wav")}


@pytest.mark.parametrize("rate", ["44k", "48k"])
def test_every_input_form_equals_the_cli_float_output(sep, clips, tmp_path, rate):
    path = clips[rate]
    sr = probe(path).samplerate
    want = cli_float(path, sr, tmp_path / "cli")
    decoded = load_audio(path, sr, 2).T                     # what the file holds, (channels, frames)
    forms = {
        "path": sep.separate(path),
        "str": sep.separate(str(path)),
        "bytes": sep.separate(path.read_bytes()),
        "file object": sep.separate(io.BytesIO(path.read_bytes())),
        "numpy": sep.separate(decoded, samplerate=sr),
        "float64": sep.separate(decoded.astype(np.float64), samplerate=sr),
    }
    torch = pytest.importorskip("torch")
    forms["torch"] = sep.separate(torch.from_numpy(decoded.copy()), samplerate=sr)
    for form, stems in forms.items():
        assert stems.samplerate == sr and list(stems) == ["vocals", "background"], form
        for role in stems:
            got = stems[role]
            assert got.dtype == np.float32 and got.shape == decoded.shape, (form, role, got.shape)
            n = min(got.shape[1], want[role].shape[1])
            assert np.array_equal(got[:, :n], want[role][:, :n]), (form, role)


def test_an_array_keeps_its_rate_and_channels(sep, clips):
    x = load_audio(clips["48k"], 48000, 1).T[:, :48000]      # 1 s of mono at 48 kHz
    stems = sep.separate(x, samplerate=48000, mode="IsAudio")
    assert list(stems) == ["vocals"] and stems["vocals"].shape == (1, 48000) and stems.samplerate == 48000
    mono = sep.separate(x[0], samplerate=48000)              # (frames,) is mono too
    assert mono["vocals"].shape == (1, 48000)
    x44 = load_audio(clips["44k"], 44100, 1).T[:, :44100]   # at the model's rate the roles sum exactly
    both = sep.separate(x44, samplerate=44100)
    assert np.abs(both["vocals"] + both["background"] - x44).max() < 1e-5
    six = np.repeat(load_audio(clips["44k"], 44100, 2).T[:, :44100], 3, axis=0)   # 5.1 by ffmpeg's order
    stems = sep.separate(six, samplerate=44100, layout="5.1")
    assert stems["vocals"].shape == (6, 44100)
    assert np.abs(stems["vocals"][3]).max() == 0.0                                   # the LFE is background
    assert np.abs(stems["vocals"] + stems["background"] - six).max() < 1e-5


@pytest.mark.parametrize("audio, kwargs, words", [
    (np.zeros((44100, 2), np.float32), {"samplerate": 44100}, "pass array.T"),
    (np.zeros((2, 100), np.int16), {"samplerate": 44100}, "divide int16 PCM by 32768"),
    (np.zeros((2, 2, 100), np.float32), {"samplerate": 44100}, "shape (channels, frames)"),
    (np.zeros((2, 100), np.float32), {}, "needs samplerate="),
    (np.zeros((2, 100), np.float32), {"samplerate": -1}, "needs samplerate="),
    (str(MIX), {"samplerate": 44100}, "applies to arrays"),
    ([0.0, 0.1], {"samplerate": 44100}, "cannot separate a list"),
    (b"this is not audio" * 10, {}, "not a readable media file"),
])
def test_mistakes_are_ciErrors_that_say_what_was_expected(sep, audio, kwargs, words):
    with pytest.raises(CIError) as err:
        sep.separate(audio, **kwargs)
    assert err.value.code in ("InvalidArgument", "InvalidInput") and words in err.value.message


def test_progress_counts_seconds_of_audio(sep, clips):
    seen: list[tuple[float, float]] = []
    stems = sep.separate(clips["44k"], progress=lambda done, total: seen.append((done, total)))
    assert seen and all(b[0] >= a[0] for a, b in zip(seen, seen[1:]))
    assert seen[-1][0] == pytest.approx(stems.duration, abs=0.01) and seen[-1][1] == pytest.approx(stems.duration, abs=0.01)


def test_the_model_is_loaded_once(monkeypatch, clips):
    from separator import Separator
    from separator.core import registry
    loads = []
    real = registry.load_model
    monkeypatch.setattr(registry, "load_model", lambda *a, **k: loads.append(a) or real(*a, **k))
    s = Separator(device="cpu")
    for _ in range(3):
        s.separate(clips["44k"])
    assert len(loads) == 1


def test_separate_files_names_files_as_the_command_line_does(sep, clips, tmp_path):
    got = sep.separate_files([clips["44k"], clips["s24"]], tmp_path / "api", codec="flac")
    assert [sorted(p.relative_to(tmp_path / "api").as_posix() for p in d.values()) for d in got] == [
        ["spleeter-2stems/song44/background.flac", "spleeter-2stems/song44/vocals.flac"],
        ["spleeter-2stems/song24/background.flac", "spleeter-2stems/song24/vocals.flac"]]
    proc = cli("separate", str(clips["44k"]), str(clips["s24"]), "-o", str(tmp_path / "cli"), "--codec", "flac",
               "--precision", "fp32", "-q")
    assert proc.returncode == 0, proc.stderr
    for d in got:
        for path in d.values():
            twin = tmp_path / "cli" / path.relative_to(tmp_path / "api")
            assert hashlib.md5(twin.read_bytes()).digest() == hashlib.md5(path.read_bytes()).digest()
    assert probe(got[1]["vocals"]).audio.sample_format == "s24"      # 24-bit in, 24-bit flac out


def test_the_old_one_call_form_keeps_its_layout(clips, tmp_path):
    import separator
    out = separator.separate(clips["44k"], tmp_path, codec="wav")
    assert out == {"vocals": tmp_path / "song44" / "vocals.wav", "background": tmp_path / "song44" / "background.wav"}


def test_public_names_and_types():
    import separator
    assert {"Separator", "Stems", "separate", "run_request", "CIError"} <= set(dir(separator))
    assert (REPO / "separator" / "py.typed").is_file()
    code = "import separator, sys; separator.Separator; print('numpy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", "import separator, sys; print('torch' in sys.modules)"],
                          capture_output=True, text=True, cwd=REPO).stdout.strip() == "False"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO).stdout.strip() == "True"


# --------------------------------------------------------------------------- the command line
def test_several_inputs_and_a_folder_share_one_model(clips, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(clips["44k"], folder / "a.wav")
    shutil.copy(clips["48k"], folder / "b.wav")
    (folder / "notes.txt").write_text("not media")
    proc = cli("separate", str(folder), str(clips["s24"]), "-o", str(tmp_path / "out"), "--codec", "mp3")
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.mp3"))
    assert names == [f"spleeter-2stems/{t}/{s}.mp3" for t in ("a", "b", "song24") for s in ("background", "vocals")]
    assert proc.stderr.splitlines()[-1].startswith("3 inputs: 3 separated, 0 failed: ")


def test_a_bad_input_among_several_is_reported_and_the_others_go_on(clips, tmp_path):
    bad = tmp_path / "bad.mp3"
    bad.write_text("not audio")
    proc = cli("separate", str(bad), str(clips["44k"]), "-o", str(tmp_path / "out"), "-q")
    assert proc.returncode == 2
    assert [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")] == [
        f"error: {bad}: input 'bad.mp3' is not a readable media file: " + proc.stderr.split("media file: ", 1)[1].splitlines()[0]]
    assert (tmp_path / "out" / "spleeter-2stems" / "song44" / "vocals.m4a").is_file()


def test_names_never_collide(clips, tmp_path):
    for d in ("x", "y"):
        (tmp_path / d).mkdir()
        shutil.copy(clips["44k"], tmp_path / d / "song.wav")
    proc = cli("separate", str(tmp_path / "x" / "song.wav"), str(tmp_path / "y" / "song.wav"), "-o", str(tmp_path / "o"))
    assert proc.returncode == 2 and "would both write" in proc.stderr and "separator batch" in proc.stderr
    assert not (tmp_path / "o").exists()
    ok = cli("separate", str(tmp_path / "x" / "song.wav"), "-o", str(tmp_path / "o"), "--codec", "wav",
             "--filename", "{track}-{model}-{stem}.{ext}", "-q")
    assert ok.returncode == 0, ok.stderr
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["song-spleeter-2stems-background.wav",
                                                                   "song-spleeter-2stems-vocals.wav"]
    bad = cli("separate", str(tmp_path / "x" / "song.wav"), "-o", str(tmp_path / "o"), "--filename", "{track}.{ext}")
    assert bad.returncode == 2 and "has no {stem}" in bad.stderr


def test_mode_spellings(clips, tmp_path):
    for i, args in enumerate((["--mode", "isaudio"], ["--mode", "ISAUDIO"], ["--two-stems", "vocals"])):
        proc = cli("separate", str(clips["44k"]), "-o", str(tmp_path / str(i)), "--codec", "wav", *args, "-q")
        assert proc.returncode == 0, proc.stderr
        want = ["vocals"] if "vocals" not in args else ["background", "vocals"]
        assert sorted(p.stem for p in (tmp_path / str(i)).rglob("*.wav")) == want
    bad = cli("separate", str(clips["44k"]), "--mode", "karaoke")
    assert bad.returncode == 2 and "not one of IsAudio" in bad.stderr


def test_music_mode_names_its_background_other(clips, tmp_path, tmp_path_factory):
    import demucs_fixtures as fx
    models = fx.tiny_model_dir(tmp_path_factory.mktemp("models"), "m")
    proc = cli("separate", str(clips["44k"]), "-o", str(tmp_path), "--mode", "MusicMode", "--codec", "wav",
               "--model", "tiny_htdemucs", "--model-dir", str(models), "-q")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "tiny_htdemucs" / "song44").iterdir()) == [
        "bass.wav", "drums.wav", "other.wav", "vocals.wav"]
    assert "background\t" in proc.stdout and "other.wav" in proc.stdout     # the role, and its file


@pytest.fixture(scope="module")
def loud(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A float wav whose mixture passes full scale (x1.6): its stems cannot fit 16 bits."""
    x = load_audio(MIX, 44100, 2) * 1.6
    d = tmp_path_factory.mktemp("loud")
    raw = d / "loud.f32"
    raw.write_bytes(x.astype("<f4").tobytes())
    run_ffmpeg("-f", "f32le", "-ar", "44100", "-ac", "2", "-i", str(raw), "-c:a", "pcm_f32le", str(d / "loud.wav"))
    return d / "loud.wav", x


def test_clip_mode_rescale_keeps_the_sum_and_clamp_keeps_the_level(loud, tmp_path):
    path, x = loud
    out = {}
    for mode in ("clamp", "rescale"):
        proc = cli("separate", str(path), "-o", str(tmp_path / mode), "--codec", "wav", "--sample-format", "s16",
                   "--clip-mode", mode, "--filename", "{stem}.{ext}")
        assert proc.returncode == 0, proc.stderr
        out[mode] = {r: load_audio(tmp_path / mode / f"{r}.wav", 44100, 2) for r in ("vocals", "background")}
        if mode == "rescale":
            assert "all stems scaled by" in proc.stderr
    lsb = 1 / 32768
    clamp, rescale = out["clamp"], out["rescale"]
    peak_clamped = max(np.abs(a).max() for a in clamp.values())
    assert peak_clamped >= 1 - lsb                                   # full-scale samples: clipped
    clipped = np.abs(clamp["vocals"] + clamp["background"] - x).max()
    assert clipped > 8 * lsb                                         # the sum broke where it clipped
    peak = max(np.abs(a).max() for a in rescale.values())
    assert peak <= 1.0 and peak > 0.99                               # scaled just enough
    residual = rescale["vocals"] + rescale["background"]
    k = float(np.dot(residual.ravel(), x.ravel()) / np.dot(x.ravel(), x.ravel()))   # the common factor
    assert 0.3 < k < 1.0
    assert np.abs(residual - k * x).max() <= 3 * lsb                 # they still sum to the scaled input


def test_batch_templates_take_track_and_music_mode_other(clips, tmp_path, tmp_path_factory):
    import demucs_fixtures as fx
    models = fx.tiny_model_dir(tmp_path_factory.mktemp("models"), "b")
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(clips["44k"], src / "song.wav")
    proc = cli("batch", str(src), str(tmp_path / "out"), "--mode", "MusicMode", "--codec", "wav", "--model",
               "tiny_htdemucs", "--model-dir", str(models), "--workers", "0", "-q",
               "--name-template", "{model}/{track}/{stem}.{ext}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(p.name for p in (tmp_path / "out" / "tiny_htdemucs" / "song").iterdir()) == [
        "bass.wav", "drums.wav", "other.wav", "vocals.wav"]
