"""The command line as a new user meets it: every mistake ends in one line (exit 2), Ctrl-C in
exit 130 with nothing left behind, no command writes over its input, multichannel input keeps
its dialogue, outputs do not depend on the process, options are checked, AAC lengths are exact,
and the progress bars say what runs."""
from __future__ import annotations

import fcntl
import hashlib
import http.server
import os
import pty
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import demucs_fixtures as fx
from conftest import run_ffmpeg
from separator.media import load_audio, probe
from separator.media.layout import channel_names, downmix_matrix

REPO = Path(__file__).resolve().parents[1]
SR = 44100


def cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300):
    return subprocess.run([sys.executable, "-m", "separator", *args], capture_output=True, text=True,
                          cwd=cwd or REPO, env={**os.environ, **(env or {})}, timeout=timeout)


def one_line_error(proc: subprocess.CompletedProcess, rc: int = 2) -> str:
    """The command failed with ``rc`` and said so in exactly one line, without a traceback."""
    assert proc.returncode == rc, (proc.returncode, proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "error" in lines[0], proc.stderr
    return lines[0]


def write_wav(path: Path, audio: np.ndarray, sr: int = SR, layout: str | None = None) -> Path:
    args = ["-f", "f32le", "-ar", str(sr)]
    args += ["-ch_layout", layout] if layout else ["-ac", str(audio.shape[1])]
    raw = path.with_suffix(".f32")
    raw.write_bytes(np.ascontiguousarray(audio, np.float32).tobytes())
    run_ffmpeg(*args, "-i", str(raw), "-c:a", "pcm_s16le", str(path))
    raw.unlink()
    return path


@pytest.fixture(scope="module")
def song(tmp_path_factory, noise_music) -> Path:
    x, sr = noise_music
    return write_wav(tmp_path_factory.mktemp("song") / "song.wav", x, sr)


@pytest.fixture(scope="module")
def long_song(tmp_path_factory, noise_music) -> Path:
    """A minute of audio: long enough to be interrupted while it is being separated."""
    x, sr = noise_music
    return write_wav(tmp_path_factory.mktemp("long") / "long.wav", np.tile(x, (10, 1)), sr)


# --------------------------------------------------------------------------- 1. one-line errors
def test_user_mistakes_end_in_one_line(song, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    cases = [
        (["separate", str(song), "-o", str(afile / "out")], "is a file, not a folder"),
        (["separate", str(tmp_path / "nosuch.mp3"), "-o", str(tmp_path / "o")], "not found"),
        (["separate", str(afile), "-o", str(tmp_path / "o")], "not a readable media file"),
        (["run", str(tmp_path / "nosuch.xml"), "--storage", str(tmp_path / "s"), "--bucket", "a-1",
          "--region", "ap-x"], "not found"),
        (["run", str(tmp_path), "--storage", str(tmp_path / "s"), "--bucket", "a-1", "--region", "ap-x"],
         "is a folder"),
        (["run", str(REPO / "examples" / "request-inline.xml"), "--storage", str(afile), "--bucket",
          "test-1234567890", "--region", "ap-chongqing"], "is a file"),
        (["models", "pull", "htdemucs", "--model-dir", str(afile / "m")], "is a file, not a folder"),
        (["models", "pull", "htdemucs", "--model-dir", str(tmp_path / "m")], "SEPARATOR_OFFLINE is set"),
        (["eval", str(afile)], "is a file"),
        (["eval", str(tmp_path), "--json", str(afile / "x.json")], "is a file"),
        (["batch", str(song), str(afile)], "OUTPUT"),
        (["separate", str(song), "--overlap", "0.95"], "0.95 is outside 0..0.9"),
        (["separate"], "required"),
    ]
    for args, words in cases:
        line = one_line_error(cli(*args, env={"SEPARATOR_OFFLINE": "1"}))
        assert words in line, (args, line)
    assert not (tmp_path / "o").exists() and afile.read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_output_folder_is_one_line(song, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        line = one_line_error(cli("separate", str(song), "-o", str(ro / "out")))
        assert "no permission" in line
    finally:
        ro.chmod(0o755)


def test_debug_prints_the_traceback(tmp_path):
    proc = cli("--debug", "run", str(tmp_path / "nosuch.xml"), "--storage", str(tmp_path),
               "--bucket", "a-1", "--region", "ap-x")
    assert proc.returncode == 2 and "Traceback" in proc.stderr


# --------------------------------------------------------------------------- 2. Ctrl-C
def _interrupt(args: list[str], ready, *, env=None, cwd=None, timeout: float = 120) -> tuple[int, str]:
    """Start the command in its own process group, wait until ``ready()``, then Ctrl-C the whole
    group as a terminal does.  Returns (exit status, stderr) once every process of the group
    has ended."""
    proc = subprocess.Popen([sys.executable, "-m", "separator", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, cwd=cwd or REPO,
                            env={**os.environ, **(env or {})})
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the command never got going"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:          # its ffmpeg children are gone too
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("processes of the interrupted command are still running")
    return proc.returncode, err


def _no_traceback_one_line(err: str) -> None:
    assert "Traceback" not in err and "Fatal Python error" not in err, err
    assert [ln for ln in err.splitlines() if ln.strip()] == ["interrupted"], err


def _temps(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(".separator-tmp-")]


def test_ctrl_c_during_separate_leaves_nothing(long_song, tmp_path):
    out = tmp_path / "out"
    rc, err = _interrupt(["separate", str(long_song), "-o", str(out)], lambda: out.exists() and _temps(out))
    assert rc == 130
    _no_traceback_one_line(err)
    assert not out.exists()


def test_ctrl_c_during_run_leaves_nothing(long_song, tmp_path):
    bucket = "test-1234567890"
    (tmp_path / "st" / bucket / "input").mkdir(parents=True)
    shutil.copy(long_song, tmp_path / "st" / bucket / "input" / "demo.mp3")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    rc, err = _interrupt(["run", str(REPO / "examples" / "request-inline.xml"), "--storage",
                          str(tmp_path / "st"), "--bucket", bucket, "--region", "ap-chongqing"],
                         lambda: bool(_temps(tmp_path / "st")))
    assert rc == 130
    _no_traceback_one_line(err)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_ctrl_c_during_eval_writes_no_report(long_song, tmp_path, noise_music):
    song = tmp_path / "data" / "song"
    song.mkdir(parents=True)
    x, _ = noise_music
    write_wav(song / "vocals.wav", np.tile(x, (20, 1)) * 0.5)
    write_wav(song / "accompaniment.wav", np.tile(x[::-1], (20, 1)) * 0.5)
    report = tmp_path / "report.json"
    started = time.monotonic()
    rc, err = _interrupt(["eval", str(tmp_path / "data"), "--json", str(report)],
                         lambda: time.monotonic() - started > 8)
    assert rc == 130
    _no_traceback_one_line(err)
    assert not report.exists() and not _temps(tmp_path)


class _SlowFile(http.server.BaseHTTPRequestHandler):
    """Serves an endless download, slowly (a weight file that takes forever)."""

    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", str(100 << 20))
        self.end_headers()
        try:
            while True:
                self.wfile.write(b"\0" * 4096)
                time.sleep(0.05)
        except OSError:
            pass

    def log_message(self, *args):
        pass


def test_ctrl_c_during_models_pull_leaves_nothing(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowFile)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        models = tmp_path / "models"
        env = {"SEPARATOR_DEMUCS_MIRROR": f"http://127.0.0.1:{server.server_port}/demucs",
               "SEPARATOR_OFFLINE": "0"}
        rc, err = _interrupt(["models", "pull", "htdemucs", "--model-dir", str(models)],
                             lambda: models.exists() and any(models.rglob("*")), env=env)
    finally:
        server.shutdown()
    assert rc == 130
    _no_traceback_one_line(err)
    assert not models.exists()


# --------------------------------------------------------------------------- 3. never the input
def test_separate_never_writes_over_its_input(song, tmp_path):
    (tmp_path / "vocals").mkdir()
    victim = tmp_path / "vocals" / "vocals.wav"
    shutil.copy(song, victim)
    digest = hashlib.md5(victim.read_bytes()).hexdigest()
    line = one_line_error(cli("separate", "vocals/vocals.wav", "-o", ".", "--codec", "wav",
                              "--filename", "{track}/{stem}.{ext}", cwd=tmp_path))
    assert "is an input" in line
    assert hashlib.md5(victim.read_bytes()).hexdigest() == digest
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["vocals", "vocals.wav"]
    # an output path that is a hard link to the input is the input too
    (tmp_path / "other" / "vocals").mkdir(parents=True)
    os.link(victim, tmp_path / "other" / "vocals" / "vocals.wav")
    line = one_line_error(cli("separate", "vocals/vocals.wav", "-o", "other", "--codec", "wav",
                              "--mode", "IsAudio", "--filename", "{track}/{stem}.{ext}", cwd=tmp_path))
    assert "input file itself" in line
    assert hashlib.md5(victim.read_bytes()).hexdigest() == digest


def test_outputs_of_an_earlier_run_are_replaced(song, tmp_path):
    first = cli("separate", str(song), "-o", str(tmp_path), "--codec", "wav", "-q")
    assert first.returncode == 0, first.stderr
    vocals = tmp_path / "spleeter-2stems" / "song" / "vocals.wav"
    vocals.write_bytes(b"stale")
    again = cli("separate", str(song), "-o", str(tmp_path), "--codec", "wav", "-q")
    assert again.returncode == 0, again.stderr
    assert probe(vocals).duration == pytest.approx(probe(song).duration, abs=0.01)


# --------------------------------------------------------------------------- 4. 5.1
@pytest.fixture(scope="module")
def film(data_file, tmp_path_factory, noise_music):
    """8 s of 5.1(side) at 44.1 kHz: real speech alone in the centre, loud music in the fronts and
    surrounds (a stereo downmix at the standard coefficients would clip), a 50 Hz LFE."""
    speech = load_audio(data_file("ogg_16k_mono"), SR, 1)[:, 0]
    n = 8 * SR
    speech = np.pad(speech, (0, max(0, n - len(speech))))[:n] * 0.9 / max(1e-6, np.abs(speech[:n]).max())
    x, _ = noise_music
    music = np.tile(x, (2, 1))[:n]
    music = music / np.abs(music).max() * 0.7
    t = np.arange(n) / SR
    lfe = 0.5 * np.sin(2 * np.pi * 50 * t)
    audio = np.stack([music[:, 0], music[:, 1], speech, lfe, music[:, 0], music[:, 1]], axis=1)
    path = write_wav(tmp_path_factory.mktemp("film") / "film.wav", audio, SR, "5.1(side)")
    return path, speech


def test_five_one_keeps_its_dialogue_and_layout(film, tmp_path):
    path, speech = film
    proc = cli("separate", str(path), "-o", str(tmp_path), "--codec", "wav", "-q")
    assert proc.returncode == 0, proc.stderr
    out = {r: tmp_path / "spleeter-2stems" / "film" / f"{r}.wav" for r in ("vocals", "background")}
    for p in out.values():
        s = probe(p).audio
        assert (s.channels, s.channel_layout) == (6, "5.1(side)")
    x = load_audio(path, SR, 6)
    v, b = (load_audio(out[r], SR, 6) for r in ("vocals", "background"))
    assert v.shape == x.shape == b.shape
    # every channel: vocals + background rebuild the input channel (16-bit output: 2 LSB)
    assert np.abs(x - v - b).max() <= 2 / 32768
    # the centre's vocals are the speech; the LFE is all background
    corr = np.corrcoef(v[:, 2], speech[: len(v)])[0, 1]
    assert corr > 0.95, corr
    assert np.abs(v[:, 3]).max() == 0.0
    for other in (0, 1, 4, 5):                        # the dialogue stays in its own channel
        assert abs(np.corrcoef(v[:, other], speech[: len(v)])[0, 1]) < 0.1


@pytest.mark.parametrize("channels", [2, 1])
def test_five_one_downmix_after_separation_does_not_clip(film, tmp_path, channels):
    path, _ = film
    proc = cli("separate", str(path), "-o", str(tmp_path), "--codec", "flac", "--channels",
               str(channels), "-q")
    assert proc.returncode == 0, proc.stderr
    x = load_audio(path, SR, 6)
    m = downmix_matrix(channel_names("5.1(side)", 6), channels)
    naive = x @ np.array([[1, 0], [0, 1], [0.7071, 0.7071], [0, 0], [0.7071, 0], [0, 0.7071]])
    assert np.abs(naive).max() > 1.0                 # the standard coefficients alone would clip
    v, b = (load_audio(tmp_path / "spleeter-2stems" / "film" / f"{r}.flac", SR, channels)
            for r in ("vocals", "background"))
    assert np.abs(v + b - x @ m.T).max() <= 3 / 32768
    for stem in (v, b):
        assert np.abs(stem).max() < 0.999


# --------------------------------------------------------------------------- 5. MusicMode bytes
def _set_orders() -> dict[int, list[str]]:
    """How a set of the three owned sources iterates under a few hash seeds."""
    code = "print(','.join(frozenset({'vocals', 'bass', 'drums'})))"
    return {seed: subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout.strip()
            for seed in range(8)}


def test_music_mode_is_byte_identical_across_processes(song, tmp_path_factory):
    orders = _set_orders()
    seeds = [next(iter(orders))]
    seeds.append(next(s for s, o in orders.items() if o != orders[seeds[0]]))
    model_dir = fx.tiny_model_dir(tmp_path_factory.mktemp("models"), "music")
    digests = []
    for seed in seeds:
        out = tmp_path_factory.mktemp(f"seed{seed}")
        proc = cli("separate", str(song), "-o", str(out), "--mode", "MusicMode", "--codec", "wav",
                   "--model", "tiny_htdemucs", "--model-dir", str(model_dir), "-q",
                   env={"PYTHONHASHSEED": str(seed)})
        assert proc.returncode == 0, proc.stderr
        digests.append({p.name: hashlib.md5(p.read_bytes()).hexdigest()
                        for p in (out / "tiny_htdemucs" / "song").iterdir()})
    assert sorted(digests[0]) == ["bass.wav", "drums.wav", "other.wav", "vocals.wav"]
    assert digests[0] == digests[1]


# --------------------------------------------------------------------------- 6. options
def test_options_that_do_not_apply_or_are_out_of_range_are_refused(song, tmp_path):
    line = one_line_error(cli("separate", str(song), "-o", str(tmp_path), "--jobs", "2",
                              "--model", "spleeter-2stems"))
    assert "jobs applies to Demucs models" in line
    line = one_line_error(cli("separate", str(song), "-o", str(tmp_path), "--overlap", "0.5",
                              "--model", "spleeter-2stems"))
    assert "overlap applies to Demucs models" in line
    assert not any(tmp_path.iterdir())


def test_a_changed_bitrate_is_said(song, tmp_path):
    proc = cli("separate", str(song), "-o", str(tmp_path), "--codec", "mp3", "--bitrate", "1000", "-q")
    assert proc.returncode == 0, proc.stderr
    assert "note: Bitrate 1000 kbps" in proc.stderr and "320 kbps" in proc.stderr
    assert probe(tmp_path / "spleeter-2stems" / "song" / "vocals.mp3").audio.bitrate_kbps == pytest.approx(320, rel=0.05)


# --------------------------------------------------------------------------- 7. AAC length
def _boxes(data: bytes, start: int, end: int, path: str = ""):
    while start + 8 <= end:
        size, kind = struct.unpack(">I4s", data[start:start + 8])
        name = f"{path}/{kind.decode('latin1')}"
        yield name, data[start + 8:start + size]
        if kind in (b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts"):
            yield from _boxes(data, start + 8, start + size, name)
        start += size


@pytest.mark.parametrize("frames", [44100, 100000, 132300 + 17])
def test_aac_outputs_carry_the_exact_length(tmp_path, noise_music, frames):
    """The m4a's edit list ends at the input's last sample (the encoder's priming and its last
    frame's padding are outside it): a decoder that applies mp4 edit lists, as the one we use
    does, decodes exactly the input's length."""
    x, _ = noise_music
    src = write_wav(tmp_path / "in.wav", np.tile(x, (4, 1))[:frames])
    proc = cli("separate", str(src), "-o", str(tmp_path), "--codec", "aac", "-q")
    assert proc.returncode == 0, proc.stderr
    for role in ("vocals", "background"):
        out = tmp_path / "spleeter-2stems" / "in" / f"{role}.m4a"
        assert len(load_audio(out, SR, 2)) == frames
        boxes = dict(_boxes(out.read_bytes(), 0, out.stat().st_size))
        elst = boxes["/moov/trak/edts/elst"]
        duration, media_time = struct.unpack(">Ii", elst[8:16])
        assert duration == frames and media_time > 0    # movie timescale = sample rate here


# --------------------------------------------------------------------------- 8. progress
def _on_a_terminal(args: list[str], timeout: float = 120, cwd: Path | None = None) -> tuple[int, str]:
    """Run with stderr on a pseudo-terminal; return (exit status, what the terminal showed)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))   # 160 columns
    proc = subprocess.Popen([sys.executable, "-m", "separator", *args], stdout=subprocess.PIPE,
                            stderr=slave, cwd=cwd or REPO)
    os.close(slave)
    shown = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
        elif proc.poll() is not None:
            break
    proc.wait(timeout=30)
    os.close(master)
    return proc.returncode, shown.decode("utf-8", "replace")


def test_separate_bar_names_model_and_device_and_ends_with_a_summary(long_song, tmp_path):
    rc, shown = _on_a_terminal(["separate", str(long_song), "-o", str(tmp_path)])
    assert rc == 0, shown
    assert "spleeter-2stems on cpu" in shown and "s of audio" in shown, shown
    last = [ln for ln in shown.replace("\r", "\n").splitlines() if ln.strip()][-1]
    assert last.startswith("long.wav: 1:00 of audio in ") and "x realtime), spleeter-2stems on cpu" in last


def test_run_shows_a_bar_on_a_terminal(long_song, tmp_path):
    bucket = "test-1234567890"
    (tmp_path / bucket / "input").mkdir(parents=True)
    shutil.copy(long_song, tmp_path / bucket / "input" / "demo.mp3")
    rc, shown = _on_a_terminal(["run", str(REPO / "examples" / "request-inline.xml"), "--storage",
                                str(tmp_path), "--bucket", bucket, "--region", "ap-chongqing"])
    assert rc == 0, shown
    assert "spleeter-2stems on cpu" in shown and "s of audio" in shown, shown
    last = [ln for ln in shown.replace("\r", "\n").splitlines() if ln.strip()][-1]
    assert last.startswith("job ") and "1:00 of audio in " in last, last


def test_batch_counts_audio_seconds(long_song, song, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(long_song, src / "a.wav")
    shutil.copy(song, src / "b.wav")
    rc, shown = _on_a_terminal(["batch", str(src), str(tmp_path / "out"), "--progress", "bar"])
    assert rc == 0, shown
    assert "/66 s of audio" in shown, shown          # 60 s + 6 s, counted in seconds, not files
    assert "spleeter-2stems" in shown and "cpu" in shown
