"""The engine end to end: every AudioMode x every codec on real decoded audio, the seed
examples through `separator run`, and bad input that must fail cleanly and write nothing."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from separator.codecs import AMR_NB_BITRATES, CODECS
from separator.errors import CIError
from separator.jobs.engine import separate_file
from separator.media import load_audio, probe
from separator.request import AudioConfig, parse_job_request
from separator.storage import LocalStorage

from conftest import mixture_path, run_ffmpeg

REPO = Path(__file__).resolve().parents[1]
BUCKET = "test-1234567890"
CLIP_SECONDS = 4


@pytest.fixture(scope="module")
def song_clip(tmp_path_factory) -> Path:
    """4 s of real singing over real music (the committed mixture tests/data/mixtures/vocadito-vibeace)."""
    out = tmp_path_factory.mktemp("clip") / "vocadito_vibeace.wav"
    run_ffmpeg("-t", str(CLIP_SECONDS), "-i", str(mixture_path("vocadito-vibeace")), "-c:a", "pcm_s16le", str(out))
    return out


def _expected_codec_name(codec: str) -> str:
    return {"aac": "aac", "mp3": "mp3", "flac": "flac", "amr": "amr_nb", "wav": "pcm_s16le"}[codec]


CASES = {
    # codec: (samplerate, channels, bitrate kbps)
    "aac": (48000, 1, 96),
    "mp3": (32000, 2, 128),
    "flac": (22050, 2, None),
    "amr": (8000, 1, 12),
    "wav": (11025, 2, None),
}
TWO_STEM_MODES = {"IsAudio": ["vocals"], "IsBackground": ["background"],
                  "AudioAndBackground": ["vocals", "background"]}


@pytest.mark.parametrize("codec", sorted(CODECS))
@pytest.mark.parametrize("mode", sorted(TWO_STEM_MODES))
def test_every_mode_and_codec(song_clip, tmp_path, mode, codec):
    sr, ch, kbps = CASES[codec]
    cfg = AudioConfig(codec=codec, samplerate=sr, channels=ch, bitrate=kbps)
    ext = CODECS[codec].ext
    # Name all four nodes: the mode must write exactly the ones it produces.
    targets = {r: tmp_path / f"{r}.{ext}" for r in ("vocals", "background", "bass", "drums")}
    result = separate_file(song_clip, targets, mode=mode, audio_config=cfg)
    assert list(result.outputs) == TWO_STEM_MODES[mode]
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted(f"{r}.{ext}" for r in TWO_STEM_MODES[mode])
    for role in TWO_STEM_MODES[mode]:
        info = probe(targets[role])
        stream = info.audio_streams[0]
        assert stream.codec == _expected_codec_name(codec)
        assert stream.samplerate == sr
        assert stream.channels == ch
        decoded = load_audio(targets[role], sr, ch)
        assert abs(len(decoded) / sr - CLIP_SECONDS) < 0.1
        if codec in ("aac", "mp3"):
            assert stream.bitrate_kbps and abs(stream.bitrate_kbps - kbps) / kbps < 0.2, stream.bitrate_kbps
        if codec == "amr":
            # 12 kbps maps to the highest AMR-NB mode not above it: 10.2 kbps
            mode = max(b for b in AMR_NB_BITRATES if b <= kbps * 1000)
            measured = info.size * 8 / (len(decoded) / sr)
            assert mode == 10200 and abs(measured - mode * 1.06) / mode < 0.1, measured


def test_outputs_reconstruct_the_input(song_clip, tmp_path):
    """Lossless outputs at the model's rate: vocals + background == input (SNR >= 30 dB)."""
    targets = {"vocals": tmp_path / "v.wav", "background": tmp_path / "b.wav"}
    separate_file(song_clip, targets, mode="AudioAndBackground",
                  audio_config=AudioConfig(codec="flac", samplerate=44100, channels=2))
    mix = load_audio(song_clip, 44100, 2)
    v, b = load_audio(targets["vocals"], 44100, 2), load_audio(targets["background"], 44100, 2)
    assert v.shape == b.shape == mix.shape
    err = mix - (v + b)
    snr = 10 * np.log10(np.sum(mix ** 2) / np.sum(err ** 2))
    assert snr > 30, snr  # limited by 16-bit quantisation of the two outputs, not the model
    # and the separation is not trivial: the vocals are neither silent nor the mixture
    assert 0.01 < np.sum(v ** 2) / np.sum(mix ** 2) < 0.9


def test_defaults_follow_the_source(song_clip, tmp_path):
    """No AudioConfig at all: aac (.m4a), 44100 Hz, the source's channel count."""
    targets = {"vocals": tmp_path / "v.m4a"}
    separate_file(song_clip, targets, mode="IsAudio")
    s = probe(targets["vocals"]).audio_streams[0]
    assert (s.codec, s.samplerate, s.channels) == ("aac", 44100, 2)


def test_music_mode_needs_a_four_stem_model(song_clip, tmp_path):
    targets = {r: tmp_path / f"{r}.mp3" for r in ("vocals", "background", "bass", "drums")}
    with pytest.raises(CIError) as exc:
        separate_file(song_clip, targets, mode="MusicMode", audio_config=AudioConfig(codec="mp3"),
                      model="spleeter-2stems")
    assert exc.value.code == "ModelUnavailable" and "4-stem" in exc.value.message
    assert list(tmp_path.iterdir()) == []


# -- the probe runs beside the first decode and the model's first chunk ---------------------

def test_probe_runs_beside_the_first_chunk(song_clip, tmp_path, monkeypatch):
    """ffprobe no longer holds up decoding and the model: the probe does not return until the
    decoder has started (an event, not a timing window), and the outputs are the same as
    without that wait."""
    import threading
    from separator.jobs import engine

    cfg = AudioConfig(codec="wav", samplerate=44100, channels=2)
    fast = {"vocals": tmp_path / "fast_v.wav", "background": tmp_path / "fast_b.wav"}
    separate_file(song_clip, fast, mode="AudioAndBackground", audio_config=cfg)
    decoding = threading.Event()
    seen: dict[str, bool] = {}
    real_probe, real_iter = engine.probe, engine.Decoded.__iter__

    def waiting_probe(path):
        seen["decoding_before_the_probe_returned"] = decoding.wait(timeout=60)
        return real_probe(path)

    def first_iter(self):
        decoding.set()
        return real_iter(self)

    monkeypatch.setattr(engine, "probe", waiting_probe)
    monkeypatch.setattr(engine.Decoded, "__iter__", first_iter)
    slow = {"vocals": tmp_path / "slow_v.wav", "background": tmp_path / "slow_b.wav"}
    separate_file(song_clip, slow, mode="AudioAndBackground", audio_config=cfg)
    assert seen["decoding_before_the_probe_returned"]
    for role in fast:
        assert slow[role].read_bytes() == fast[role].read_bytes()


def test_mono_input_is_decoded_again_at_unity_gain(song_clip, tmp_path):
    """The first decode assumes a stereo input; a mono one is decoded again with its channel
    duplicated (not ffmpeg's -3 dB upmix), so its vocals are the separation of that, averaged
    back to the one channel (Channels=2 then duplicates it)."""
    from separator.core import registry
    mono = tmp_path / "mono.wav"
    run_ffmpeg("-i", str(song_clip), "-ac", "1", "-c:a", "pcm_f32le", str(mono))
    targets = {"vocals": tmp_path / "v.wav"}
    separate_file(mono, targets, mode="IsAudio", audio_config=AudioConfig(codec="wav", samplerate=44100, channels=2),
                  model="spleeter-2stems", device="cpu")
    got = load_audio(targets["vocals"], 44100, 2)
    dup = np.repeat(load_audio(mono, 44100, 1), 2, axis=1)
    stereo = registry.load_model("spleeter-2stems", device="cpu").separate(dup)["vocals"]
    want = np.repeat(stereo.mean(axis=1, keepdims=True), 2, axis=1)
    assert got.shape == want.shape
    assert np.abs(got - want).max() < 2e-4          # 16-bit wav output
    assert np.abs(want).max() > 0.05


def test_input_errors_come_before_model_errors(synth, tmp_path):
    """An unusable input with an unknown model reports the input, as when it was probed first;
    nothing is written."""
    out = tmp_path / "out"
    with pytest.raises(CIError) as exc:
        separate_file(synth("text_mp3"), {"vocals": out / "v.mp3"}, mode="IsAudio", model="no-such-model")
    assert exc.value.code == "InvalidInput"
    with pytest.raises(CIError) as exc:
        separate_file(tmp_path / "missing.mp3", {"vocals": out / "v.mp3"}, mode="IsAudio", model="no-such-model")
    assert exc.value.code == "InvalidInput"
    assert not out.exists()


# -- bad input: a clear error, nothing written --------------------------------------------

@pytest.mark.parametrize("kind", ["empty", "text_mp3", "video_only_mp4", "truncated", "missing"])
def test_bad_input_fails_cleanly(kind, synth, song_clip, tmp_path):
    if kind == "truncated":
        src = tmp_path / "in" / "cut.flac"
        src.parent.mkdir()
        run_ffmpeg("-i", str(song_clip), "-c:a", "flac", str(tmp_path / "full.flac"))
        data = (tmp_path / "full.flac").read_bytes()
        src.write_bytes(data[: len(data) // 3])
    elif kind == "missing":
        src = tmp_path / "nope.mp3"
    else:
        src = synth(kind)
    out = tmp_path / "out"
    targets = {"vocals": out / "v.mp3", "background": out / "b.mp3"}
    with pytest.raises(CIError) as exc:
        separate_file(src, targets, mode="AudioAndBackground", audio_config=AudioConfig(codec="mp3"))
    assert exc.value.code and exc.value.message
    assert not out.exists() or list(out.iterdir()) == []


def test_encoder_failure_leaves_nothing(song_clip, tmp_path, monkeypatch):
    """If the second encoder fails, the first output is not left behind either."""
    from separator.media import encode

    real_close = encode.Encoder.close
    calls = {"n": 0}

    def failing_close(self):
        calls["n"] += 1
        if calls["n"] == 2:
            raise CIError("InternalError", "simulated encoder failure")
        return real_close(self)

    monkeypatch.setattr(encode.Encoder, "close", failing_close)
    targets = {"vocals": tmp_path / "v.mp3", "background": tmp_path / "b.mp3"}
    with pytest.raises(CIError):
        separate_file(song_clip, targets, mode="AudioAndBackground", audio_config=AudioConfig(codec="mp3"))
    assert list(tmp_path.iterdir()) == []


# -- the seed's request examples through `separator run` -----------------------------------

def _storage_with_input(tmp_path: Path, clip: Path) -> Path:
    root = tmp_path / "storage"
    dst = root / BUCKET / "input" / "demo.mp3"
    dst.parent.mkdir(parents=True)
    run_ffmpeg("-i", str(clip), "-c:a", "libmp3lame", "-b:a", "192k", str(dst))
    return root


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "separator", *args], capture_output=True, text=True,
                          cwd=REPO)


def test_examples_parse():
    for name in ("request-inline.xml", "request-template.xml", "request-inline.json"):
        req, fmt = parse_job_request((REPO / "examples" / name).read_bytes())
        assert req.input_object == "input/demo.mp3"
        assert fmt == ("json" if name.endswith(".json") else "xml")


def test_inline_example_runs_end_to_end(song_clip, tmp_path):
    import xmltodict

    root = _storage_with_input(tmp_path, song_clip)
    proc = _run_cli("run", str(REPO / "examples" / "request-inline.xml"), "--storage", str(root),
                    "--bucket", BUCKET, "--region", "ap-chongqing")
    assert proc.returncode == 0, proc.stderr + proc.stdout
    detail = xmltodict.parse(proc.stdout)["Response"]["JobsDetail"]
    assert detail["State"] == "Success" and detail["Code"] == "Success"
    files = detail["Operation"]["MediaResult"]["OutputFile"]
    assert files["ObjectName"] == ["output/vocal.mp3", "output/background.mp3"]  # vocals first
    storage = LocalStorage(root)
    for md5 in files["Md5Info"]:
        assert storage.md5(BUCKET, md5["ObjectName"]) == md5["Md5"]
        info = probe(storage.object_path(BUCKET, md5["ObjectName"])).audio_streams[0]
        assert (info.codec, info.samplerate, info.channels) == ("mp3", 44100, 2)
    audio = detail["Operation"]["MediaInfo"]["Stream"]["Audio"]
    assert len(audio) == 2 and audio[0]["CodecName"] == "mp3"


def test_json_request_gets_json_response(song_clip, tmp_path):
    root = _storage_with_input(tmp_path, song_clip)
    proc = _run_cli("run", str(REPO / "examples" / "request-inline.json"), "--storage", str(root),
                    "--bucket", BUCKET, "--region", "ap-chongqing")
    assert proc.returncode == 0, proc.stderr
    detail = json.loads(proc.stdout)["Response"]["JobsDetail"]
    detail = detail[0] if isinstance(detail, list) else detail
    assert detail["State"] == "Success"


def test_template_example_fails_cleanly_without_service(song_clip, tmp_path):
    import xmltodict

    root = _storage_with_input(tmp_path, song_clip)
    proc = _run_cli("run", str(REPO / "examples" / "request-template.xml"), "--storage", str(root),
                    "--bucket", BUCKET, "--region", "ap-chongqing")
    assert proc.returncode == 1
    detail = xmltodict.parse(proc.stdout)["Response"]["JobsDetail"]
    assert detail["State"] == "Failed" and "separator serve" in detail["Message"]
    assert not (root / BUCKET / "output").exists()


@pytest.mark.parametrize("body,code", [
    (b"", "MissingContent"),
    (b"<Request><Tag>VoiceSeparate</Tag>", "InvalidContent"),
    (b"<Request><Tag>VoiceSeparate</Tag><Input><Object>input/demo.mp3</Object></Input><Operation>"
     b"<VoiceSeparate><AudioMode>KaraokeMode</AudioMode></VoiceSeparate><Output><Region>ap-chongqing"
     b"</Region><Bucket>test-1234567890</Bucket><Object>o.mp3</Object></Output></Operation></Request>",
     "InvalidArgument"),
    (b"<Request><Tag>VoiceSeparate</Tag><Input><Object>input/demo.mp3</Object></Input><Operation>"
     b"<VoiceSeparate><AudioMode>IsAudio</AudioMode><AudioConfig><Codec>mp3</Codec><Bitrate>5000"
     b"</Bitrate></AudioConfig></VoiceSeparate><Output><Region>ap-chongqing</Region><Bucket>"
     b"test-1234567890</Bucket><AuObject>v.mp3</AuObject></Output></Operation></Request>",
     "InvalidArgument"),
])
def test_refused_requests_print_the_error_body(tmp_path, body, code):
    import xmltodict

    req = tmp_path / "req.xml"
    req.write_bytes(body)
    proc = _run_cli("run", str(req), "--storage", str(tmp_path / "st"), "--bucket", BUCKET,
                    "--region", "ap-chongqing")
    assert proc.returncode == 1
    err = xmltodict.parse(proc.stdout)["Error"]
    assert err["Code"] == code and err["Message"] and err["RequestId"] and err["Resource"]
    assert not (tmp_path / "st").exists() or not any((tmp_path / "st").rglob("*.mp3"))


def test_missing_input_object_fails_the_job(tmp_path):
    import xmltodict

    proc = _run_cli("run", str(REPO / "examples" / "request-inline.xml"), "--storage", str(tmp_path),
                    "--bucket", BUCKET, "--region", "ap-chongqing")
    assert proc.returncode == 1
    detail = xmltodict.parse(proc.stdout)["Response"]["JobsDetail"]
    assert detail["State"] == "Failed" and detail["Code"] == "ResourceNotFound"


def test_cli_separate_writes_named_files(song_clip, tmp_path):
    proc = _run_cli("separate", str(song_clip), "-o", str(tmp_path), "--mode", "IsAudio",
                    "--codec", "MP3", "--bitrate", "96", "-q")
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "spleeter-2stems" / song_clip.stem / "vocals.mp3"
    assert out.is_file() and proc.stdout.strip() == f"vocals\t{out}"
    # the command ends with os._exit: the file is nevertheless complete
    assert probe(out).duration == pytest.approx(probe(song_clip).duration, abs=0.06)
    bad = _run_cli("separate", str(song_clip), "-o", str(tmp_path / "x"), "--codec", "mp3",
                   "--samplerate", "96000", "-q")
    assert bad.returncode == 2 and "Samplerate" in bad.stderr
    assert not (tmp_path / "x").exists()
